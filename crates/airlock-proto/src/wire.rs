//! The names on the wire that are not message fields: headers, ports and
//! the envd RPC paths. One definition for the server, the agent, the SDK,
//! the CLI and the tests.

/// Routes a request to a sandbox (E2B's edge proxy and SDKs).
pub const SANDBOX_ID_HEADER: &str = "e2b-sandbox-id";
/// The port inside the sandbox a request is for (default: envd's).
pub const SANDBOX_PORT_HEADER: &str = "e2b-sandbox-port";
/// The same two as Moru's SDK names them.
pub const MORU_SANDBOX_ID_HEADER: &str = "moru-sandbox-id";
pub const MORU_SANDBOX_PORT_HEADER: &str = "moru-sandbox-port";
/// Control-API authentication.
pub const API_KEY_HEADER: &str = "x-api-key";
/// Set by Airlock's proxy only (a client's is removed): tells the agent a
/// request is for the code interpreter (E2B's port 49999).
pub const AGENT_PORT_HEADER: &str = "x-airlock-port";
/// The agent's claim route (`POST`: a pooled sandbox gets its user's
/// environment and access token). Only the server calls it, on the
/// agent's socket; the proxy refuses it from outside.
pub const AGENT_INIT_PATH: &str = "/init";
/// The agent's execution log (`GET`, `?after=<seq>&wait=<ms>`), which the
/// server reads on the agent's socket; the proxy refuses it from outside.
pub const AGENT_LOG_PATH: &str = "/airlock/log";
/// The agent's environment change (`POST`: variables to set and to unset
/// in what every new command gets), for the server's configure.
pub const AGENT_ENV_PATH: &str = "/airlock/env";
/// Every agent route under this prefix is the server's own: the proxy
/// refuses them from outside.
pub const AGENT_PRIVATE_PREFIX: &str = "/airlock/";

pub use crate::envd::{ACCESS_TOKEN_HEADER, CODE_INTERPRETER_PORT, ENVD_PORT, TRAFFIC_TOKEN_HEADER};

/// The envd RPCs, by Connect path (`/{package}.{Service}/{Method}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rpc {
    ProcessList,
    ProcessStart,
    ProcessConnect,
    ProcessUpdate,
    ProcessStreamInput,
    ProcessSendInput,
    ProcessSendSignal,
    ProcessCloseStdin,
    FsStat,
    FsMakeDir,
    FsMove,
    FsListDir,
    FsRemove,
    FsWatchDir,
    FsCreateWatcher,
    FsGetWatcherEvents,
    FsRemoveWatcher,
}

impl Rpc {
    pub const ALL: [Rpc; 17] = [
        Rpc::ProcessList,
        Rpc::ProcessStart,
        Rpc::ProcessConnect,
        Rpc::ProcessUpdate,
        Rpc::ProcessStreamInput,
        Rpc::ProcessSendInput,
        Rpc::ProcessSendSignal,
        Rpc::ProcessCloseStdin,
        Rpc::FsStat,
        Rpc::FsMakeDir,
        Rpc::FsMove,
        Rpc::FsListDir,
        Rpc::FsRemove,
        Rpc::FsWatchDir,
        Rpc::FsCreateWatcher,
        Rpc::FsGetWatcherEvents,
        Rpc::FsRemoveWatcher,
    ];

    /// `service/method`, without the leading slash: `process.Process/Start`.
    pub fn path(self) -> &'static str {
        match self {
            Rpc::ProcessList => "process.Process/List",
            Rpc::ProcessStart => "process.Process/Start",
            Rpc::ProcessConnect => "process.Process/Connect",
            Rpc::ProcessUpdate => "process.Process/Update",
            Rpc::ProcessStreamInput => "process.Process/StreamInput",
            Rpc::ProcessSendInput => "process.Process/SendInput",
            Rpc::ProcessSendSignal => "process.Process/SendSignal",
            Rpc::ProcessCloseStdin => "process.Process/CloseStdin",
            Rpc::FsStat => "filesystem.Filesystem/Stat",
            Rpc::FsMakeDir => "filesystem.Filesystem/MakeDir",
            Rpc::FsMove => "filesystem.Filesystem/Move",
            Rpc::FsListDir => "filesystem.Filesystem/ListDir",
            Rpc::FsRemove => "filesystem.Filesystem/Remove",
            Rpc::FsWatchDir => "filesystem.Filesystem/WatchDir",
            Rpc::FsCreateWatcher => "filesystem.Filesystem/CreateWatcher",
            Rpc::FsGetWatcherEvents => "filesystem.Filesystem/GetWatcherEvents",
            Rpc::FsRemoveWatcher => "filesystem.Filesystem/RemoveWatcher",
        }
    }

    /// The RPC a request path (`/process.Process/Start`) names.
    pub fn from_path(path: &str) -> Option<Rpc> {
        let p = path.strip_prefix('/').unwrap_or(path);
        Rpc::ALL.into_iter().find(|r| r.path() == p)
    }

    /// Server-streaming (Start, Connect, WatchDir) or client-streaming
    /// (StreamInput): framed as `application/connect+json`.
    pub fn is_stream(self) -> bool {
        matches!(self, Rpc::ProcessStart | Rpc::ProcessConnect | Rpc::FsWatchDir | Rpc::ProcessStreamInput)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_round_trip_and_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for r in Rpc::ALL {
            assert!(seen.insert(r.path()));
            assert_eq!(Rpc::from_path(&format!("/{}", r.path())), Some(r));
        }
        assert_eq!(Rpc::from_path("/process.Process/Nope"), None);
        assert!(Rpc::ProcessStart.is_stream() && !Rpc::FsStat.is_stream());
    }
}
