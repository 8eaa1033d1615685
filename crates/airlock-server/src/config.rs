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
    /// The listener's certificate chain and key (PEM) for `domain`; without
    /// them, the local CA of `airlock tls init` signs one when it exists.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Timeout of a sandbox whose create request gives none, in seconds.
    pub default_timeout_s: i64,
    /// Longest timeout a request may ask for, in seconds.
    pub max_timeout_s: i64,
    /// Sandboxes (running or paused) allowed at once; more → 429.
    pub max_sandboxes: usize,
    /// Creations running at once; more wait in line (16 per place, up to a
    /// minute), in arrival order, then 429.
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
    /// `io_bps`/`io_iops` are the defaults, not the operator's choice: they
    /// apply on cgroup v2 only. On v1 the blkio hierarchy is one more
    /// cgroup attach per create, an RCU grace period (5 ms here), so there
    /// they must be asked for.
    pub io_default: bool,
    /// Default writable-layer limit in MiB; 0 = none (bounded by the host
    /// disk, and by its inodes: one sandbox could exhaust them).
    pub default_disk_mb: u64,
    pub max_disk_mb: u64,
    /// Size limit of a volume created without `sizeMB`, in MiB.
    pub default_volume_mb: u64,
    /// Largest `sizeMB` a volume create may ask for.
    pub max_volume_mb: u64,
    /// The `airlock` binary, executed as `airlock __init` for each sandbox.
    pub binary: PathBuf,
    /// Install the host firewall/NAT so sandboxes can have internet access.
    pub network: bool,
    /// Frozen (memory-keeping) paused sandboxes become filesystem-paused
    /// after this many seconds, releasing their memory; `None` = never.
    pub fs_pause_after_s: Option<i64>,
    /// How long the record of a sandbox that died on its own is kept.
    pub dead_retention_s: i64,
    /// Connections served at once; `None` = derived from `RLIMIT_NOFILE`
    /// (see `server::conn::default_max`). Past it, 503 and close.
    pub max_connections: Option<usize>,
    /// Connections served at once for one client (an IPv4 address or an
    /// IPv6 /64); `None` = half of `max_connections`.
    pub max_connections_per_client: Option<usize>,
    /// Seconds from a request head's first byte to its end; 0 = none.
    pub header_timeout_s: u64,
    /// Seconds a connection may wait for the next request with nothing
    /// sent, and a response wait for a client that reads nothing; 0 = none.
    pub idle_timeout_s: u64,
    /// Warm pools from `--pool` (name, what to keep ready), written to the
    /// store at start; pools made through the API are kept there too.
    pub pools: Vec<(String, airlock_proto::api::PoolSpec)>,
    /// How often running sandboxes' usage is sampled (history, alerts).
    pub sample_interval_ms: u64,
    /// Extra CA certificates (PEM) trusted for `https://` webhook receivers.
    pub webhook_ca: Option<PathBuf>,
    /// Name servers the egress resolver asks for policed sandboxes; empty:
    /// the host's own (`/etc/resolv.conf`).
    pub dns_upstream: Vec<SocketAddr>,
    /// Extra CA certificates (PEM) the egress proxy trusts for HTTPS
    /// servers whose requests it rewrites (secret injection).
    pub upstream_ca: Option<PathBuf>,
    /// `--cluster`: join a cluster on etcd (none: a single host).
    pub cluster: Option<crate::cluster::ClusterConfig>,
}

impl Config {
    pub fn new(data_dir: PathBuf, binary: PathBuf) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 3000)),
            data_dir,
            api_keys: Vec::new(),
            domain: None,
            tls_cert: None,
            tls_key: None,
            default_timeout_s: 300,
            max_timeout_s: 24 * 3600,
            max_sandboxes: 1000,
            // Past a few per CPU, parallel creates only contend: the burst
            // takes as long, and every create in it takes longer.
            max_concurrent_creates: std::thread::available_parallelism().map_or(8, |n| (4 * n.get()).clamp(4, 64)),
            rate_limit: 0.0,
            default_cpus: 2.0,
            default_memory_mb: 512,
            max_memory_mb: 16 * 1024,
            pids_limit: 1024,
            // Enough for any build or package install, low enough that one
            // sandbox cannot take a disk from the host and its neighbours.
            io_bps: 256 * 1024 * 1024,
            io_iops: 8192,
            io_default: true,
            default_disk_mb: 10 * 1024,
            max_disk_mb: 1024 * 1024,
            default_volume_mb: 1024,
            max_volume_mb: 1024 * 1024,
            binary,
            network: true,
            fs_pause_after_s: None,
            dead_retention_s: 3600,
            max_connections: None,
            max_connections_per_client: None,
            // Generous for any real client (SDKs send a head in one write),
            // short enough that a slow-loris holds a slot for little time.
            header_timeout_s: 10,
            // Above the Rust SDK's 60 s pool idle timeout (and far above
            // undici's 4 s and httpx's 5 s), so a pooled connection is
            // dropped by its client first and never raced by our close.
            idle_timeout_s: 75,
            pools: Vec::new(),
            sample_interval_ms: 5000,
            webhook_ca: None,
            dns_upstream: Vec::new(),
            upstream_ca: None,
            cluster: None,
        }
    }
}

/// The configuration file (`<data-dir>/airlock.toml` or `--config`) as
/// written: every key optional, unknown keys refused (a typo is an error,
/// not a silently ignored setting). Keys are the long flags' names, with
/// `-` or `_`. Stage one of two: `airlock serve` then lays flags and
/// environment over it into a `Config`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub domain: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub api_key: Option<String>,
    #[serde(default)]
    pub api_keys: Vec<String>,
    pub max_sandboxes: Option<usize>,
    pub max_concurrent_creates: Option<usize>,
    pub rate_limit: Option<f64>,
    pub default_timeout: Option<i64>,
    pub default_cpus: Option<f64>,
    pub default_memory_mb: Option<u64>,
    pub default_disk_mb: Option<u64>,
    pub default_volume_mb: Option<u64>,
    pub max_volume_mb: Option<u64>,
    pub io_bps: Option<u64>,
    pub io_iops: Option<u64>,
    pub no_network: Option<bool>,
    /// Seconds a frozen paused sandbox waits before it keeps only its files.
    pub release_paused_after: Option<i64>,
    pub max_connections: Option<usize>,
    pub max_connections_per_client: Option<usize>,
    /// Seconds; 0 = none.
    pub header_timeout: Option<u64>,
    /// Seconds; 0 = none.
    pub idle_timeout: Option<u64>,
    /// Warm pools, as `--pool` takes them (`base=8,cpu=1`).
    #[serde(default)]
    pub pool: Vec<String>,
    /// Seconds between usage samples (may be fractional).
    pub sample_interval: Option<f64>,
    /// PEM file of extra CAs for https:// webhook receivers.
    pub webhook_ca: Option<PathBuf>,
    /// Name servers for the egress resolver (`ip` or `ip:port`).
    #[serde(default)]
    pub dns_upstream: Vec<String>,
    /// PEM file of extra CAs the egress proxy trusts upstream.
    pub upstream_ca: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
}

impl FileConfig {
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Self::parse(&text).map_err(|source| ConfigError::Parse { path: path.to_path_buf(), source })
    }

    pub fn parse(text: &str) -> Result<Self, toml::de::Error> {
        // Keys may be spelled like the flags (`max-sandboxes`) or with
        // underscores: normalise before the typed pass.
        let raw: toml::Table = toml::from_str(text)?;
        let table: toml::Table = raw.into_iter().map(|(k, v)| (k.replace('-', "_"), v)).collect();
        toml::Value::Table(table).try_into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_keys_are_typed_and_checked() {
        let f = FileConfig::parse("listen = \"127.0.0.1:4000\"\nmax-sandboxes = 5\ndefault_cpus = 1.5\nno_network = true\napi_keys = [\"e2b_1\"]\n").expect("parse");
        assert_eq!(f.listen, Some("127.0.0.1:4000".parse().expect("addr")));
        assert_eq!((f.max_sandboxes, f.default_cpus, f.no_network), (Some(5), Some(1.5), Some(true)));
        assert_eq!(f.api_keys, vec!["e2b_1".to_string()]);
        let f = FileConfig::parse("max-connections = 100\nmax_connections_per_client = 10\nheader-timeout = 5\nidle_timeout = 0\n").expect("parse");
        assert_eq!((f.max_connections, f.max_connections_per_client, f.header_timeout, f.idle_timeout), (Some(100), Some(10), Some(5), Some(0)));
        assert!(FileConfig::parse("max_sandboxs = 5").is_err(), "a typo is an error");
        assert!(FileConfig::parse("max_sandboxes = \"many\"").is_err(), "so is a wrong type");
        assert!(FileConfig::parse("listen = \"nowhere\"").is_err());
    }
}
