//! Sandbox isolation for Airlock.
//!
//! This crate turns a `SandboxSpec` into a running sandbox and back into
//! nothing: the namespace backend (`namespace`) creates user, pid, mount,
//! uts, ipc, net and cgroup namespaces in a freshly executed `airlock`
//! process (`init`), builds the root filesystem from read-only template
//! layers and a per-sandbox writable layer (`rootfs`, `template`), applies
//! cgroup limits on v1 or v2 (`cgroup`), capabilities, `no_new_privs` and a
//! seccomp filter (`seccomp`), wires the network (`network`, `netlink`) and
//! then hands PID 1 to the agent.
//!
//! It never speaks HTTP and never decides policy (timeouts, who may create
//! what): that belongs to the server. Everything a backend needs is behind
//! the `Backend` trait so a microVM backend can sit beside this one.

pub mod cgroup;
pub mod disk;
pub mod init;
pub mod mntns;
pub mod namespace;
pub mod netlink;
pub mod network;
pub mod nft;
pub mod rootfs;
pub mod seccomp;
pub mod shim;
pub mod state;

use std::collections::BTreeMap;
use std::path::PathBuf;

pub use namespace::NamespaceBackend;

/// Resources a sandbox may use.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Resources {
    /// CPU bandwidth, in cores (fractions allowed).
    pub cpus: f64,
    pub memory_mb: u64,
    /// Maximum number of tasks (processes and threads).
    pub pids: u64,
    /// Disk bandwidth, bytes per second, each of read and write, on the
    /// device holding the data directory; 0 = unlimited.
    #[serde(default)]
    pub io_bps: u64,
    /// Disk operations per second, each of read and write; 0 = unlimited.
    #[serde(default)]
    pub io_iops: u64,
}

impl Default for Resources {
    fn default() -> Self {
        Self { cpus: 2.0, memory_mb: 512, pids: 1024, io_bps: 0, io_iops: 0 }
    }
}

/// What a sandbox starts from: layers, never a template name.
pub use airlock_template::RootFs;

/// Bounds every backend enforces, so callers can check requests against
/// the same numbers.
pub mod limits {
    pub const MAX_CPUS: f64 = 256.0;
    pub const MIN_MEMORY_MB: u64 = 16;
    pub const MIN_PIDS: u64 = 8;
}

impl Resources {
    /// Checks the bounds of `limits`.
    pub fn validate(&self) -> Result<(), Error> {
        if !(self.cpus > 0.0 && self.cpus <= limits::MAX_CPUS) || self.memory_mb < limits::MIN_MEMORY_MB || self.pids < limits::MIN_PIDS {
            return Err(Error::InvalidSpec(format!("resources: cpus must be in (0, {}], memory_mb >= {}, pids >= {}", limits::MAX_CPUS, limits::MIN_MEMORY_MB, limits::MIN_PIDS)));
        }
        Ok(())
    }
}

/// What to create.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SandboxSpec {
    /// Lowercase alphanumeric, as E2B ids are (no `-` or `.`: they appear in host names).
    pub id: String,
    pub rootfs: RootFs,
    pub resources: Resources,
    pub internet: bool,
    /// Sandbox-wide environment for commands.
    pub env: BTreeMap<String, String>,
    /// When set, the agent requires it in `X-Access-Token`.
    pub access_token: Option<String>,
    pub hostname: Option<String>,
    /// Size of the writable layer in MiB; `None` = bounded only by the host disk.
    #[serde(default)]
    pub disk_mb: Option<u64>,
    /// Host directories bound into the sandbox (volumes).
    #[serde(default)]
    pub volumes: Vec<VolumeMount>,
    /// Read-only root layers above the template's (and the `sudo` shim),
    /// topmost first: files the server adds to every sandbox of a kind,
    /// such as the egress CA's trust layer. Not part of the template: a
    /// snapshot does not take them, and a layer holding canonical ids
    /// (owned by host root) shows as root's inside.
    #[serde(default)]
    pub top_layers: Vec<PathBuf>,
}

impl SandboxSpec {
    pub fn new(id: impl Into<String>, rootfs: RootFs) -> Self {
        Self {
            id: id.into(),
            rootfs,
            resources: Resources::default(),
            internet: true,
            env: BTreeMap::new(),
            access_token: None,
            hostname: None,
            disk_mb: None,
            volumes: Vec::new(),
            top_layers: Vec::new(),
        }
    }
}

/// A host directory holding canonical ids (0, 1000), bound read-write (or
/// read-only) into the sandbox at `target` through an idmapped mount, so
/// the sandbox's ids map onto the canonical ones on disk. Two sandboxes
/// given one `source` share it: one filesystem, POSIX semantics.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VolumeMount {
    pub source: PathBuf,
    /// Absolute path inside the sandbox; created if missing.
    pub target: String,
    #[serde(default)]
    pub read_only: bool,
}

/// What a caller needs to reach a running sandbox.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxInfo {
    pub id: String,
    /// Host pid of the sandbox's PID 1 (the agent).
    pub pid: u32,
    /// The agent's unix socket on the host.
    pub socket: PathBuf,
    pub frozen: bool,
    /// The sandbox's address on its veth, when it has network access.
    pub ip: Option<std::net::Ipv4Addr>,
}

/// What `Backend::snapshot` made.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The source's layers with the new one on top (parts with nothing in
    /// them are left out), and its defaults (its whole environment).
    pub rootfs: RootFs,
    /// Bytes of file data copied.
    pub bytes: u64,
}

/// Resource usage read from the kernel.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    pub cpu_usage_ns: u64,
    pub memory_bytes: u64,
    pub memory_limit_bytes: u64,
    pub pids: u64,
    pub disk_bytes: u64,
    /// The writable layer's size limit, 0 when unlimited.
    pub disk_limit_bytes: u64,
    /// Memory the sandbox cannot give back without an OOM kill: its usage
    /// less the inactive file cache the kernel reclaims first (what a
    /// lower limit must leave room for).
    pub memory_working_bytes: u64,
    /// Bytes the sandbox received and sent over its network interface
    /// (0 without one: loopback is not counted).
    pub net_rx_bytes: u64,
    pub net_tx_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("sandbox {0} not found")]
    NotFound(String),
    #[error("sandbox {0} already exists")]
    AlreadyExists(String),
    #[error("invalid sandbox spec: {0}")]
    InvalidSpec(String),
    #[error("sandbox failed to start at stage '{stage}': {message}")]
    Boot { stage: String, message: String, errno: Option<i32> },
    #[error("cgroup: {0}")]
    Cgroup(#[from] cgroup::CgroupError),
    #[error("network: {0}")]
    Network(#[from] network::NetworkError),
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("this host cannot run sandboxes: {0}")]
    Unsupported(String),
}

impl Error {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io { what: what.into(), source }
    }
}

/// A way of running sandboxes. Calls block (they do system calls and wait
/// for processes); async callers use `spawn_blocking`.
pub trait Backend: Send + Sync {
    fn create(&self, spec: &SandboxSpec) -> Result<SandboxInfo, Error>;
    /// Finds a sandbox by id, re-reading liveness from the kernel.
    fn get(&self, id: &str) -> Result<SandboxInfo, Error>;
    /// Every sandbox whose state is on disk and whose PID 1 is alive.
    fn list(&self) -> Result<Vec<SandboxInfo>, Error>;
    fn freeze(&self, id: &str) -> Result<(), Error>;
    fn thaw(&self, id: &str) -> Result<(), Error>;
    /// Kills every process and removes every trace: mounts, cgroups, veth, directories.
    fn destroy(&self, id: &str) -> Result<(), Error>;
    fn usage(&self, id: &str) -> Result<Usage, Error>;
    /// Why a sandbox whose PID 1 is gone died, read before `destroy` (which
    /// removes the evidence): the OOM killer's count in its memory group.
    fn oom_kills(&self, id: &str) -> u64;
    /// Starts a fresh PID 1 over a sandbox's existing writable layer, for a
    /// sandbox whose processes are gone (the host rebooted). Its files
    /// survive; its processes and memory do not.
    fn restart(&self, id: &str) -> Result<SandboxInfo, Error>;
    /// Stops a sandbox and turns its writable layer into a read-only
    /// template layer at `dest` (`dest/root`, `dest/usr`) with canonical
    /// ownership, then removes the sandbox. Used by the template builder.
    fn capture(&self, id: &str, dest: &std::path::Path) -> Result<(), Error>;
    /// Copies a sandbox's writable layer, consistently (a running sandbox
    /// is frozen while it is copied, then thawed; a paused one stays as it
    /// was), into a new read-only layer at `dest` with canonical ownership,
    /// and returns the root filesystem it makes: that layer on top of the
    /// sandbox's own layers, with its defaults. The cost is what the
    /// sandbox wrote, never its template's size. On error nothing is left
    /// at `dest` and the sandbox is as it was.
    fn snapshot(&self, id: &str, dest: &std::path::Path) -> Result<Snapshot, Error>;
    /// Stops every process and releases the sandbox's memory, cgroups,
    /// network interface and disk mount, keeping its files and identity:
    /// `restart` boots a fresh PID 1 over them.
    fn stop(&self, id: &str) -> Result<(), Error>;
    /// Kills every process of a running sandbox except its agent (PID 1),
    /// which keeps serving; files stay.
    fn kill_processes(&self, id: &str) -> Result<(), Error>;
    /// Back to the layers it was created from: its writable layer is
    /// emptied and a fresh PID 1 boots, under the same id, token and
    /// address.
    fn reset(&self, id: &str) -> Result<SandboxInfo, Error>;
    /// Changes what a stopped sandbox's next start gets: environment
    /// variables merged over its own, and resources.
    fn reconfigure(&self, id: &str, env: &BTreeMap<String, String>, resources: Option<Resources>) -> Result<(), Error>;
    /// Changes a running sandbox's limits in place: CPU and memory in its
    /// cgroups at once, and its disk limit grown online (the image, its loop
    /// device and the ext4 filesystem on it); its next boot gets them too.
    /// A disk limit never shrinks (ext4 cannot, mounted) and a sandbox made
    /// without one cannot gain one: both are `InvalidSpec`.
    fn resize(&self, id: &str, resources: &Resources, disk_mb: Option<u64>) -> Result<(), Error>;
    /// Replaces the environment and access token a running sandbox's next
    /// boot gets (a pooled sandbox claimed: the agent was told the same),
    /// so a restart does not bring back the pool's.
    fn rekey(&self, id: &str, env: &BTreeMap<String, String>, access_token: Option<&str>) -> Result<(), Error>;
    /// Whether sandboxes can be given internet access on this host.
    fn network_available(&self) -> bool;
    /// Whether sandboxes can be given disk limits (`SandboxSpec::disk_mb`).
    fn disk_limits_available(&self) -> bool;
}
