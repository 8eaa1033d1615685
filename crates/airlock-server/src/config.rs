//! Server configuration, resolved once at start-up (flags > `AIRLOCK_*`
//! environment > config file > defaults) by the binary and passed down.

use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Keys accepted in addition to those in the store.
    pub api_keys: Vec<String>,
    /// Wildcard domain for `Host: {port}-{id}.{domain}` routing.
    pub domain: Option<String>,
    /// Timeout of a sandbox whose create request gives none, in seconds.
    pub default_timeout_s: i64,
    /// Longest timeout a request may ask for, in seconds.
    pub max_timeout_s: i64,
    /// Sandboxes (running or paused) allowed at once; more → 429.
    pub max_sandboxes: usize,
    /// Creations in flight at once; more → 429.
    pub max_concurrent_creates: usize,
    /// Control-API requests per second per key (burst: one second's worth); 0 = unlimited.
    pub rate_limit: f64,
    pub default_cpus: f64,
    pub default_memory_mb: u64,
    pub max_memory_mb: u64,
    pub pids_limit: u64,
    /// Per-sandbox disk bandwidth (bytes/s, read and write each); 0 = none.
    pub io_bps: u64,
    /// Per-sandbox disk operations per second (read and write each); 0 = none.
    pub io_iops: u64,
    /// Default writable-layer limit in MiB; 0 = none (bounded by the host
    /// disk, and by its inodes: one sandbox could exhaust them).
    pub default_disk_mb: u64,
    pub max_disk_mb: u64,
    /// The `airlock` binary, executed as `airlock __init` for each sandbox.
    pub binary: PathBuf,
    /// Install the host firewall/NAT so sandboxes can have internet access.
    pub network: bool,
}

impl Config {
    pub fn new(data_dir: PathBuf, binary: PathBuf) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 3000)),
            data_dir,
            api_keys: Vec::new(),
            domain: None,
            default_timeout_s: 300,
            max_timeout_s: 24 * 3600,
            max_sandboxes: 1000,
            max_concurrent_creates: 64,
            rate_limit: 0.0,
            default_cpus: 2.0,
            default_memory_mb: 512,
            max_memory_mb: 16 * 1024,
            pids_limit: 1024,
            // Enough for any build or package install, low enough that one
            // sandbox cannot take a disk from the host and its neighbours.
            io_bps: 256 * 1024 * 1024,
            io_iops: 8192,
            default_disk_mb: 10 * 1024,
            max_disk_mb: 1024 * 1024,
            binary,
            network: true,
        }
    }
}
