//! envd messages (`process.Process` and `filesystem.Filesystem`) in proto3
//! canonical JSON: lowerCamelCase names with snake_case accepted on input,
//! defaults omitted, `bytes` as base64, `int64` as strings, enums by name,
//! oneofs as a single member object.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::json::{self, b64, i64_str};
use crate::proto_enum;

/// Version reported to clients; the SDKs gate features on it (see the
/// compatibility notes), so it claims the envd feature level Airlock implements.
pub const ENVD_VERSION: &str = "0.6.13";

/// Port numbers the E2B clients address the agent's services by.
pub const ENVD_PORT: u16 = 49983;
pub const CODE_INTERPRETER_PORT: u16 = 49999;

/// Header carrying a sandbox's `envdAccessToken` on sandbox traffic.
pub const ACCESS_TOKEN_HEADER: &str = "x-access-token";
/// Header carrying a sandbox's `trafficAccessToken`. The official
/// code-interpreter SDKs send it (and not `X-Access-Token`) on every
/// port-49999 call but `/execute`, so that is how those calls authenticate.
pub const TRAFFIC_TOKEN_HEADER: &str = "e2b-traffic-access-token";

/// The `trafficAccessToken` of a sandbox whose `envdAccessToken` is
/// `access_token`. Derived rather than stored so the agent can check it
/// without another secret: hex SHA-256 over a fixed label and the token,
/// which reveals nothing about the access token itself. It grants only the
/// code-interpreter routes, never envd.
/// Whether `a` and `b` are equal, in time that depends only on their
/// lengths, so a wrong token reveals nothing of the right one.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub fn traffic_token(access_token: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("airlock-traffic-token-v1:{access_token}").as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------- process

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessConfig {
    #[serde(default)]
    pub cmd: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub envs: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PtySize {
    #[serde(default, deserialize_with = "json::lenient_u32")]
    pub cols: u32,
    #[serde(default, deserialize_with = "json::lenient_u32")]
    pub rows: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pty {
    #[serde(default)]
    pub size: Option<PtySize>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StartRequest {
    #[serde(default)]
    pub process: ProcessConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pty: Option<Pty>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Absent means true, for clients older than the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ProcessSelector {
    #[serde(deserialize_with = "json::lenient_u32")]
    Pid(u32),
    Tag(String),
}

impl std::fmt::Display for ProcessSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProcessSelector::Pid(p) => write!(f, "process with pid {p}"),
            ProcessSelector::Tag(t) => write!(f, "process with tag {t}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ProcessInput {
    Stdin(#[serde(with = "b64")] Vec<u8>),
    Pty(#[serde(with = "b64")] Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessInfo {
    pub config: ProcessConfig,
    pub pid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ListRequest {}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ListResponse {
    #[serde(default)]
    pub processes: Vec<ProcessInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectRequest {
    pub process: ProcessSelector,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateRequest {
    pub process: ProcessSelector,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pty: Option<Pty>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SendInputRequest {
    pub process: ProcessSelector,
    pub input: ProcessInput,
}

proto_enum!(
    /// `process.Signal`.
    Signal {
        Unspecified = 0 => "SIGNAL_UNSPECIFIED",
        Sigterm = 15 => "SIGNAL_SIGTERM",
        Sigkill = 9 => "SIGNAL_SIGKILL",
    }
);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SendSignalRequest {
    pub process: ProcessSelector,
    #[serde(default)]
    pub signal: Signal,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CloseStdinRequest {
    pub process: ProcessSelector,
}

/// Client-stream message of `StreamInput`. Its oneof sits directly in the
/// message, so on the wire it is `{"start":{...}}`, `{"data":{...}}` or
/// `{"keepalive":{}}` (unlike `ProcessEvent`, which is a field).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamInputRequest {
    #[serde(flatten)]
    pub event: StreamInputEvent,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum StreamInputEvent {
    Start { process: ProcessSelector },
    Data { input: ProcessInput },
    Keepalive {},
}

/// Empty response message shared by the unary RPCs that return nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DataOutput {
    Stdout(#[serde(with = "b64")] Vec<u8>),
    Stderr(#[serde(with = "b64")] Vec<u8>),
    Pty(#[serde(with = "b64")] Vec<u8>),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndEvent {
    #[serde(default, skip_serializing_if = "json::is_zero_i32", alias = "exit_code")]
    pub exit_code: i32,
    #[serde(default, skip_serializing_if = "json::is_false")]
    pub exited: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ProcessEventKind {
    Start {
        #[serde(default, deserialize_with = "json::lenient_u32")]
        pid: u32,
    },
    Data(DataOutput),
    End(EndEvent),
    Keepalive {},
}

/// `StartResponse` and `ConnectResponse` share this shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessEvent {
    pub event: ProcessEventKind,
}

// ------------------------------------------------------------- filesystem

proto_enum!(
    /// `filesystem.FileType`.
    FileType {
        Unspecified = 0 => "FILE_TYPE_UNSPECIFIED",
        File = 1 => "FILE_TYPE_FILE",
        Directory = 2 => "FILE_TYPE_DIRECTORY",
        Symlink = 3 => "FILE_TYPE_SYMLINK",
    }
);

proto_enum!(
    /// `filesystem.EventType`.
    EventType {
        Unspecified = 0 => "EVENT_TYPE_UNSPECIFIED",
        Create = 1 => "EVENT_TYPE_CREATE",
        Write = 2 => "EVENT_TYPE_WRITE",
        Remove = 3 => "EVENT_TYPE_REMOVE",
        Rename = 4 => "EVENT_TYPE_RENAME",
        Chmod = 5 => "EVENT_TYPE_CHMOD",
    }
);

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EntryInfo {
    pub name: String,
    #[serde(rename = "type")]
    pub file_type: FileType,
    pub path: String,
    #[serde(with = "i64_str", default)]
    pub size: i64,
    #[serde(default)]
    pub mode: u32,
    #[serde(default)]
    pub permissions: String,
    #[serde(default)]
    pub owner: String,
    #[serde(default)]
    pub group: String,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "modified_time")]
    pub modified_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "symlink_target")]
    pub symlink_target: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "json::is_false", alias = "is_symlink")]
    pub is_symlink: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PathRequest {
    #[serde(default)]
    pub path: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EntryResponse {
    pub entry: EntryInfo,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MoveRequest {
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub destination: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ListDirRequest {
    #[serde(default)]
    pub path: String,
    #[serde(default, deserialize_with = "json::lenient_u32")]
    pub depth: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ListDirResponse {
    #[serde(default)]
    pub entries: Vec<EntryInfo>,
}

/// `WatchDirRequest` and `CreateWatcherRequest`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WatchRequest {
    #[serde(default)]
    pub path: String,
    #[serde(default)]
    pub recursive: bool,
    #[serde(default, alias = "include_entry")]
    pub include_entry: bool,
    #[serde(default, alias = "allow_network_mounts")]
    pub allow_network_mounts: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FilesystemEvent {
    pub name: String,
    #[serde(rename = "type")]
    pub event_type: EventType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry: Option<EntryInfo>,
}

// The event variant is much larger than the markers, but each value lives
// only while one message is encoded or decoded: boxing it would cost an
// allocation per event for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum WatchEventKind {
    Start {},
    Filesystem(FilesystemEvent),
    Keepalive {},
}

/// Its oneof sits directly in the message: `{"start":{}}`,
/// `{"filesystem":{...}}`, `{"keepalive":{}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WatchDirResponse {
    #[serde(flatten)]
    pub event: WatchEventKind,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WatcherId {
    #[serde(alias = "watcher_id", default)]
    pub watcher_id: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GetWatcherEventsResponse {
    #[serde(default)]
    pub events: Vec<FilesystemEvent>,
}

/// One element of the `/files` upload response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WrittenFile {
    pub path: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
}

/// Plain-HTTP error body of envd's `/files` endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpError {
    pub code: u16,
    pub message: String,
}

/// The signature of a `/files` URL, as the SDKs compute it for
/// `download_url`/`upload_url` and envd verifies it: `v1_` + unpadded
/// standard base64 of SHA-256 over `path:operation:username:token[:expiration]`.
pub fn file_signature(path: &str, operation: &str, username: &str, token: &str, expiration: Option<i64>) -> String {
    use base64::Engine;
    use sha2::Digest;
    let mut raw = format!("{path}:{operation}:{username}:{token}");
    if let Some(e) = expiration {
        raw.push_str(&format!(":{e}"));
    }
    let digest = sha2::Sha256::digest(raw.as_bytes());
    format!("v1_{}", base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tokens_compare_exactly() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn start_request_from_python_sdk() {
        let r: StartRequest = serde_json::from_value(json!({
            "process": {"cmd": "/bin/bash", "args": ["-l", "-c", "echo hello"], "envs": {"A": "1"}},
            "stdin": false
        }))
        .expect("parse");
        assert_eq!(r.process.args[2], "echo hello");
        assert_eq!(r.stdin, Some(false));
        assert!(r.pty.is_none());
    }

    #[test]
    fn events_have_canonical_shape() {
        let start = ProcessEvent { event: ProcessEventKind::Start { pid: 42 } };
        assert_eq!(serde_json::to_value(&start).expect("ser"), json!({"event":{"start":{"pid":42}}}));
        let data = ProcessEvent { event: ProcessEventKind::Data(DataOutput::Stdout(b"hello\n".to_vec())) };
        assert_eq!(serde_json::to_value(&data).expect("ser"), json!({"event":{"data":{"stdout":"aGVsbG8K"}}}));
        let end = ProcessEvent { event: ProcessEventKind::End(EndEvent { exit_code: 0, exited: true, status: "exit status 0".into(), error: None }) };
        assert_eq!(serde_json::to_value(&end).expect("ser"), json!({"event":{"end":{"exited":true,"status":"exit status 0"}}}));
        let ka = ProcessEvent { event: ProcessEventKind::Keepalive {} };
        assert_eq!(serde_json::to_value(&ka).expect("ser"), json!({"event":{"keepalive":{}}}));
    }

    #[test]
    fn enums_accept_names_and_numbers() {
        let r: SendSignalRequest = serde_json::from_value(json!({"process":{"pid":3},"signal":"SIGNAL_SIGKILL"})).expect("name");
        assert_eq!(r.signal, Signal::Sigkill);
        let r: SendSignalRequest = serde_json::from_value(json!({"process":{"pid":"3"},"signal":15})).expect("number");
        assert_eq!(r.signal, Signal::Sigterm);
        assert_eq!(r.process, ProcessSelector::Pid(3));
        assert!(serde_json::from_value::<SendSignalRequest>(json!({"process":{"pid":3},"signal":"SIGHUP"})).is_err());
    }

    #[test]
    fn entry_info_size_is_a_string() {
        let e = EntryInfo { name: "a".into(), file_type: FileType::File, path: "/a".into(), size: 5, ..Default::default() };
        let v = serde_json::to_value(&e).expect("ser");
        assert_eq!(v["size"], "5");
        assert_eq!(v["type"], "FILE_TYPE_FILE");
        let back: EntryInfo = serde_json::from_value(json!({"name":"a","type":1,"path":"/a","size":7})).expect("de");
        assert_eq!(back.size, 7);
    }

    #[test]
    fn stream_input_oneof_sits_in_the_message() {
        let s: StreamInputRequest = serde_json::from_value(json!({"start":{"process":{"pid":9}}})).expect("start");
        assert!(matches!(s.event, StreamInputEvent::Start { process: ProcessSelector::Pid(9) }));
        let d: StreamInputRequest = serde_json::from_value(json!({"data":{"input":{"stdin":"aGk="}}})).expect("data");
        assert!(matches!(d.event, StreamInputEvent::Data { input: ProcessInput::Stdin(ref b) } if b == b"hi"));
        let k: StreamInputRequest = serde_json::from_value(json!({"keepalive":{}})).expect("keepalive");
        assert!(matches!(k.event, StreamInputEvent::Keepalive {}));
    }

    #[test]
    fn watch_responses_have_the_oneof_at_top_level() {
        let w = WatchDirResponse { event: WatchEventKind::Start {} };
        assert_eq!(serde_json::to_value(&w).expect("ser"), json!({"start":{}}));
        let f = WatchDirResponse { event: WatchEventKind::Filesystem(FilesystemEvent { name: "a".into(), event_type: EventType::Create, entry: None }) };
        assert_eq!(serde_json::to_value(&f).expect("ser"), json!({"filesystem":{"name":"a","type":"EVENT_TYPE_CREATE"}}));
    }
}
