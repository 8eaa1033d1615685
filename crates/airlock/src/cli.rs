//! Command-line interface: the server (`serve`), host-side administration
//! (`keys`, `runtime`), and the client commands (`sandbox`, `exec`,
//! `shell`, `cp`, `run`, `logs`) that talk to a server through the Rust
//! SDK, configured like the SDK (`AIRLOCK_URL`/`AIRLOCK_API_KEY`, falling
//! back to the E2B variables) plus `--url` and `--api-key`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

mod client;
mod events;
mod mcp;
mod network;
mod ops;
mod progress;
mod secret;
mod shell;
mod state;
mod template;
mod volume;
mod webhook;

const MAIN_EXAMPLES: &str = "\
Examples:
  airlock serve                                  # the server on 127.0.0.1:3000
  export AIRLOCK_API_KEY=e2b_...                 # the key `serve` printed
  airlock sandbox create --template base         # prints the new sandbox's id
  airlock exec <id> -- python3 -c 'print(1)'     # streams output, exits with its code
  airlock shell <id>                             # interactive terminal, like ssh
  airlock cp ./data.csv <id>:/home/user/         # files both ways
  airlock run base -- uname -a                   # create, run, kill in one";

#[derive(Parser)]
#[command(name = "airlock", version, about = "Self-hosted sandboxes for untrusted code, E2B-compatible", after_help = MAIN_EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the server: the E2B-compatible API and sandbox proxy on one port.
    #[command(after_help = "Example:\n  airlock serve --listen 127.0.0.1:3000 --data-dir /var/lib/airlock")]
    Serve(Box<ServeArgs>),
    /// Manage API keys in the data directory's store (works while the server runs).
    #[command(subcommand, after_help = "Examples:\n  airlock keys create --name ci\n  airlock keys list\n  airlock keys revoke <id>")]
    Keys(KeysCmd),
    /// Build, list, show, alias and delete templates on a server.
    #[command(after_help = template::EXAMPLES)]
    Template(template::TemplateArgs),
    /// The local CA that signs the server's HTTPS certificate for `--domain`.
    #[command(subcommand, after_help = "Example:\n  airlock tls init --domain sandbox.internal\n  airlock serve --domain sandbox.internal --listen 0.0.0.0:443")]
    Tls(TlsCmd),
    /// Remove what Airlock leaves on the host once no sandbox needs it: its
    /// firewall chains and NAT rule, and slot files of sandboxes that are gone.
    #[command(after_help = "Examples:\n  airlock cleanup            # refused while any sandbox has a network interface\n  airlock cleanup --dry-run")]
    Cleanup {
        /// Say what would go, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Low-level sandbox operations on this host (no server needed).
    #[command(subcommand, after_help = "Examples:\n  airlock runtime create --template base\n  airlock runtime list\n  airlock runtime destroy <id>")]
    Runtime(RuntimeCmd),
    /// Volumes that outlive sandboxes: create, list, rm, and their files (ls, cp).
    #[command(alias = "vol", after_help = volume::EXAMPLES)]
    Volume(volume::VolumeArgs),
    /// Create, list, inspect, pause, resume and kill sandboxes on a server.
    #[command(alias = "sbx", after_help = client::SANDBOX_EXAMPLES)]
    Sandbox(client::SandboxArgs),
    /// Snapshot sandboxes' filesystems; list and delete snapshots.
    #[command(subcommand_required = true, after_help = state::SNAPSHOT_EXAMPLES)]
    Snapshot(state::SnapshotArgs),
    /// Warm pools: ready sandboxes a matching create takes (list, set, delete).
    #[command(subcommand_required = true, after_help = ops::POOL_EXAMPLES)]
    Pool(ops::PoolArgs),
    /// A cluster's nodes: list them, drain and undrain one.
    #[command(subcommand_required = true, after_help = ops::NODE_EXAMPLES)]
    Node(ops::NodeArgs),
    /// Follow sandboxes' lifecycle events (created, paused, killed, ...) as they happen.
    #[command(after_help = events::EXAMPLES)]
    Events(events::EventsArgs),
    /// Sandbox networks (create, list, show, rm, join, leave) and broadcast commands.
    #[command(alias = "networks", after_help = network::EXAMPLES)]
    Network(network::NetworkArgs),
    /// Lifecycle webhooks: URLs the server POSTs events to (create, list, show, rm).
    #[command(alias = "webhooks", after_help = webhook::EXAMPLES)]
    Webhook(webhook::WebhookArgs),
    /// Secrets injected into sandboxes' outbound requests (create, list, get, update, delete).
    #[command(alias = "secrets", after_help = secret::EXAMPLES)]
    Secret(secret::SecretArgs),
    /// Fork a sandbox: new running sandboxes with its files, environment and metadata.
    #[command(after_help = state::FORK_EXAMPLES)]
    Fork(state::ForkArgs),
    /// Run a command in a sandbox, streaming its output; exits with its exit code.
    #[command(after_help = client::EXEC_EXAMPLES)]
    Exec(client::ExecArgs),
    /// Open an interactive terminal in a sandbox (like ssh; Ctrl-D or `exit` leaves).
    #[command(after_help = client::SHELL_EXAMPLES)]
    Shell(client::ShellArgs),
    /// Copy a file between this machine and a sandbox (`<id>:/path` names a sandbox file).
    #[command(after_help = client::CP_EXAMPLES)]
    Cp(client::CpArgs),
    /// Create a sandbox, run one command in it, and kill it.
    #[command(after_help = client::RUN_EXAMPLES)]
    Run(client::RunArgs),
    /// Show a sandbox's set-up log and processes, or one process's output.
    ///
    /// Without a process: the server's set-up log (start command, package
    /// installs, startup script output) and the processes the sandbox's
    /// agent runs (pid, tag, command). With a pid or tag: that process's
    /// recent output (up to 1 MiB), followed live until it exits. With
    /// --exec (or --follow, --level, --lines, --since): the execution log,
    /// every command and code run with its output lines and outcome plus
    /// lifecycle events, and the execution counts.
    #[command(after_help = client::LOGS_EXAMPLES)]
    Logs(client::LogsArgs),
    /// Serve the MCP tools (sandbox_create, sandbox_execute, ...) on stdio, for MCP clients.
    #[command(after_help = mcp::MCP_EXAMPLES)]
    Mcp(mcp::McpArgs),
    /// Print a shell completion script.
    #[command(
        after_help = "Examples:\n  airlock completions bash > /etc/bash_completion.d/airlock\n  airlock completions zsh > \"${fpath[1]}/_airlock\"\n  airlock completions fish > ~/.config/fish/completions/airlock.fish"
    )]
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

#[derive(clap::Args, Debug, Default)]
struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:3000].
    #[arg(long, env = "AIRLOCK_LISTEN")]
    listen: Option<std::net::SocketAddr>,
    /// Where the store, templates and sandboxes live [default: /var/lib/airlock].
    #[arg(long, env = "AIRLOCK_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Configuration file (flat `key = value` TOML) [default: <data-dir>/airlock.toml if it exists].
    #[arg(long, env = "AIRLOCK_CONFIG")]
    config: Option<PathBuf>,
    /// Accept this API key (repeatable); also `AIRLOCK_API_KEY`.
    #[arg(long = "api-key", env = "AIRLOCK_API_KEY", value_delimiter = ',')]
    api_keys: Vec<String>,
    /// Wildcard domain for `{port}-{id}.<domain>` host routing.
    #[arg(long, env = "AIRLOCK_DOMAIN")]
    domain: Option<String>,
    /// TLS certificate chain (PEM) for the listener, covering `api.<domain>`
    /// and `*.<domain>`; without it, the CA of `airlock tls init` signs one.
    #[arg(long, env = "AIRLOCK_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of `--tls-cert`.
    #[arg(long, env = "AIRLOCK_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Most sandboxes at once [default: 1000].
    #[arg(long, env = "AIRLOCK_MAX_SANDBOXES")]
    max_sandboxes: Option<usize>,
    /// Creations running at once; more wait in line (16 per place, a minute at most), then 429 [default: 4 per CPU, 4 to 64].
    #[arg(long, env = "AIRLOCK_MAX_CONCURRENT_CREATES")]
    max_concurrent_creates: Option<usize>,
    /// Control-API requests per second per key; 0 = unlimited [default: 0].
    #[arg(long, env = "AIRLOCK_RATE_LIMIT")]
    rate_limit: Option<f64>,
    /// Default sandbox timeout in seconds [default: 300].
    #[arg(long, env = "AIRLOCK_DEFAULT_TIMEOUT")]
    default_timeout: Option<i64>,
    /// Default CPU cores per sandbox [default: 2].
    #[arg(long, env = "AIRLOCK_DEFAULT_CPUS")]
    default_cpus: Option<f64>,
    /// Default memory per sandbox in MiB [default: 512].
    #[arg(long, env = "AIRLOCK_DEFAULT_MEMORY_MB")]
    default_memory_mb: Option<u64>,
    /// Default size limit of a sandbox's writable layer in MiB (its own sparse
    /// ext4 image, which also bounds its inodes); 0 = none [default: 10240].
    #[arg(long, env = "AIRLOCK_DEFAULT_DISK_MB")]
    default_disk_mb: Option<u64>,
    /// Size limit of a volume created without one, in MiB (its own sparse
    /// ext4 image where the host has loop devices) [default: 1024].
    #[arg(long, env = "AIRLOCK_DEFAULT_VOLUME_MB")]
    default_volume_mb: Option<u64>,
    /// Largest size limit a volume may ask for, in MiB [default: 1048576].
    #[arg(long, env = "AIRLOCK_MAX_VOLUME_MB")]
    max_volume_mb: Option<u64>,
    /// Disk bandwidth per sandbox in bytes/s, read and write each, on the
    /// data directory's disk; 0 = none [default: 268435456 on cgroup v2, none on v1].
    #[arg(long, env = "AIRLOCK_IO_BPS")]
    io_bps: Option<u64>,
    /// Disk operations per second per sandbox, read and write each; 0 = none [default: 8192 on cgroup v2, none on v1].
    #[arg(long, env = "AIRLOCK_IO_IOPS")]
    io_iops: Option<u64>,
    /// Seconds a frozen (memory-keeping) paused sandbox waits before its
    /// processes stop and only its files are kept, releasing its memory;
    /// 0 = never [default: never].
    #[arg(long, env = "AIRLOCK_RELEASE_PAUSED_AFTER")]
    release_paused_after: Option<i64>,
    /// Connections served at once; past it (and a small reserve that still
    /// answers /health) a 503 and close [default: from RLIMIT_NOFILE, about
    /// (limit - limit/4) / 2, at most 16384].
    #[arg(long, env = "AIRLOCK_MAX_CONNECTIONS", value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: Option<u64>,
    /// Connections served at once for one client (an IPv4 address or an IPv6
    /// /64; all local SDKs share one) [default: half of --max-connections].
    #[arg(long, env = "AIRLOCK_MAX_CONNECTIONS_PER_CLIENT", value_parser = clap::value_parser!(u64).range(1..))]
    max_connections_per_client: Option<u64>,
    /// Seconds a client has from the first byte of a request head to its
    /// end; 0 = none [default: 10].
    #[arg(long, env = "AIRLOCK_HEADER_TIMEOUT")]
    header_timeout: Option<u64>,
    /// Seconds a connection may wait for its next request with nothing
    /// sent, or a response for a client that reads nothing; requests
    /// waiting on a sandbox and tunnels are never idle; 0 = none [default: 75].
    #[arg(long, env = "AIRLOCK_IDLE_TIMEOUT")]
    idle_timeout: Option<u64>,
    /// Keep ready sandboxes for fast creates (repeatable):
    /// TEMPLATE=SIZE[,cpu=N][,memory=MB][,disk=MB][,internet=BOOL][,name=NAME];
    /// a create asking for that template and shape takes one.
    #[arg(long = "pool", env = "AIRLOCK_POOL", value_delimiter = ';')]
    pools: Vec<String>,
    /// Seconds between usage samples of running sandboxes (metrics
    /// history, resource alerts) [default: 5].
    #[arg(long, env = "AIRLOCK_SAMPLE_INTERVAL")]
    sample_interval: Option<f64>,
    /// CA certificates (PEM) to trust for https:// webhook receivers, beyond
    /// the system's CA bundle (for a private CA).
    #[arg(long, env = "AIRLOCK_WEBHOOK_CA")]
    webhook_ca: Option<PathBuf>,
    /// Name servers (IP or IP:PORT, repeatable) the egress resolver asks
    /// for sandboxes with an egress policy [default: the host's, from
    /// /etc/resolv.conf].
    #[arg(long = "dns-upstream", env = "AIRLOCK_DNS_UPSTREAM", value_delimiter = ',')]
    dns_upstream: Vec<String>,
    /// CA certificates (PEM) the egress proxy trusts, beyond the system's,
    /// for HTTPS servers whose requests it rewrites (secret injection).
    #[arg(long, env = "AIRLOCK_UPSTREAM_CA")]
    upstream_ca: Option<PathBuf>,
    /// Do not install the host firewall/NAT (sandboxes get loopback only).
    #[arg(long, env = "AIRLOCK_NO_NETWORK")]
    no_network: bool,
    /// Join a cluster whose shared state is in etcd (v3):
    /// etcd://HOST:PORT[,HOST:PORT...]. Without it, a single host.
    #[arg(long, env = "AIRLOCK_CLUSTER", requires_all = ["advertise", "cluster_secret_file"])]
    cluster: Option<String>,
    /// With --cluster: the URL the other nodes reach this node's listener at (http://ADDR:PORT).
    #[arg(long, env = "AIRLOCK_ADVERTISE", requires = "cluster")]
    advertise: Option<String>,
    /// With --cluster: this node's name, unique in the cluster [default: the host name].
    #[arg(long, env = "AIRLOCK_NODE_NAME", requires = "cluster")]
    node_name: Option<String>,
    /// With --cluster: a file holding the secret every node shares (at least 32 characters);
    /// node-to-node requests carry it.
    #[arg(long, env = "AIRLOCK_CLUSTER_SECRET_FILE", requires = "cluster")]
    cluster_secret_file: Option<PathBuf>,
    /// With --cluster: seconds a node stays in the cluster without a heartbeat; after it, its
    /// sandboxes are reported lost [default: 10].
    #[arg(long, env = "AIRLOCK_CLUSTER_LEASE", requires = "cluster", value_parser = clap::value_parser!(i64).range(2..=300))]
    cluster_lease: Option<i64>,
    /// Log format: text or json.
    #[arg(long, env = "AIRLOCK_LOG_FORMAT", default_value = "text")]
    log_format: String,
}

#[derive(Subcommand)]
enum KeysCmd {
    /// Create a key and print it (shown once).
    Create {
        #[arg(long, env = "AIRLOCK_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        #[arg(long, default_value = "")]
        name: String,
    },
    /// List keys (ids and visible prefixes only).
    List {
        #[arg(long, env = "AIRLOCK_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
    },
    /// Revoke a key by id or prefix.
    Revoke {
        #[arg(long, env = "AIRLOCK_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        id: String,
    },
}

const DEFAULT_DATA_DIR: &str = "/var/lib/airlock";

#[derive(Subcommand)]
enum TlsCmd {
    /// Make the local CA (once; again prints it) and say how to trust it.
    /// `airlock serve --domain D` then serves HTTPS for D, api.D and *.D
    /// with a certificate it signs at each start.
    Init {
        #[arg(long, env = "AIRLOCK_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// The domain the server will serve (shown in the instructions).
        #[arg(long, env = "AIRLOCK_DOMAIN")]
        domain: Option<String>,
    },
}

/// `airlock tls init`: the CA, its path, and how clients come to trust it.
fn tls_init(data_dir: &std::path::Path, domain: Option<&str>) -> anyhow::Result<()> {
    let (ca, made) = airlock_server::tls::init_local_ca(data_dir)?;
    let path = ca.cert_path();
    let p = path.display();
    println!("{} {p}", if made { "created the local CA" } else { "the local CA is" });
    let d = domain.unwrap_or("<domain>");
    println!(
        "\nServe with it:\n  airlock serve --data-dir {} --domain {d} --listen 0.0.0.0:443\n\
         Point DNS at the server: api.{d} and *.{d} (a wildcard record; for a\n\
         test, /etc/hosts lines for api.{d} and each <port>-<sandbox-id>.{d}).\n\
         \nTrust the CA on client machines:\n\
         \x20 Debian/Ubuntu: cp {p} /usr/local/share/ca-certificates/airlock.crt && update-ca-certificates\n\
         \x20 Python SDKs:   export SSL_CERT_FILE={p}   (or a bundle that includes it)\n\
         \x20 Node SDKs:     export NODE_EXTRA_CA_CERTS={p}\n\
         \x20 curl:          curl --cacert {p} https://api.{d}/health\n\
         \nThen E2B clients need only E2B_DOMAIN={d} and E2B_API_KEY.",
        data_dir.display()
    );
    Ok(())
}

#[derive(Subcommand)]
enum RuntimeCmd {
    /// Create a sandbox and print its id and agent socket.
    Create {
        #[arg(long, env = "AIRLOCK_DATA_DIR", default_value = "/var/lib/airlock")]
        data_dir: PathBuf,
        #[arg(long, default_value = "base")]
        template: String,
        #[arg(long)]
        no_internet: bool,
    },
    /// List running sandboxes.
    List {
        #[arg(long, env = "AIRLOCK_DATA_DIR", default_value = "/var/lib/airlock")]
        data_dir: PathBuf,
    },
    /// Kill a sandbox and remove every trace of it.
    Destroy {
        #[arg(long, env = "AIRLOCK_DATA_DIR", default_value = "/var/lib/airlock")]
        data_dir: PathBuf,
        id: String,
    },
}

pub(crate) fn main() -> ExitCode {
    let cli = Cli::parse();
    let json_logs = matches!(&cli.command, Cmd::Serve(a) if a.log_format == "json");
    // `airlock mcp` runs under an MCP client that shows its stderr to
    // people: only warnings unless RUST_LOG asks for more.
    let default_level = if matches!(&cli.command, Cmd::Mcp(_)) { "warn" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default_level.into());
    if json_logs {
        let _ = tracing_subscriber::fmt().json().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    } else {
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).try_init();
    }
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // One line, whatever the cause chain holds.
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

/// `airlock cleanup`: the host-wide leftovers. The firewall goes only when
/// no sandbox interface exists on the host (a running sandbox of any data
/// directory needs it); stale slot files go in any case.
fn cleanup(dry_run: bool) -> anyhow::Result<u8> {
    let ifs = airlock_runtime::network::sandbox_interfaces();
    if dry_run {
        println!("sandbox interfaces: {}", if ifs.is_empty() { "none".to_string() } else { ifs.join(" ") });
        println!("would remove the firewall rules: {}", if ifs.is_empty() { "yes" } else { "no (sandboxes use them)" });
        return Ok(0);
    }
    let slots = airlock_runtime::namespace::remove_stale_slots();
    for s in &slots {
        println!("removed stale slot {s}");
    }
    if !ifs.is_empty() {
        eprintln!(
            "airlock cleanup: {} sandbox interface(s) exist ({}): their firewall stays; kill those sandboxes (or stop their servers' sandboxes) first",
            ifs.len(),
            ifs.join(" ")
        );
        return Ok(1);
    }
    let mut removed = airlock_runtime::network::remove_host_rules()?;
    // Egress tables of servers that are gone (a running server re-creates
    // its own at its next start).
    for t in airlock_runtime::nft::tables() {
        if airlock_runtime::nft::remove_table(&t).is_ok() {
            removed.push(format!("nftables table {t}"));
        }
    }
    if removed.is_empty() && slots.is_empty() {
        println!("nothing to clean up");
    }
    for r in removed {
        println!("removed {r}");
    }
    Ok(0)
}

fn backend(data_dir: PathBuf) -> anyhow::Result<airlock_runtime::NamespaceBackend> {
    let binary = std::env::current_exe()?;
    Ok(airlock_runtime::NamespaceBackend::new(airlock_runtime::namespace::Options { root: data_dir, binary, network: true })?)
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    use airlock_runtime::Backend;
    match cli.command {
        Cmd::Serve(args) => serve(*args)?,
        Cmd::Keys(k) => keys(k)?,
        Cmd::Template(a) => return template::run(a),
        Cmd::Volume(a) => return volume::run(a),
        Cmd::Pool(a) => return ops::run(a),
        Cmd::Node(a) => return ops::run_node(a),
        Cmd::Cleanup { dry_run } => return cleanup(dry_run),
        Cmd::Tls(TlsCmd::Init { data_dir, domain }) => tls_init(&data_dir, domain.as_deref())?,
        Cmd::Webhook(a) => return webhook::run(a),
        Cmd::Network(a) => return network::run(a),
        Cmd::Secret(a) => return secret::run(a),
        Cmd::Sandbox(a) => return client::run(client::Command::Sandbox(a)),
        Cmd::Snapshot(a) => return client::run(client::Command::Snapshot(a)),
        Cmd::Fork(a) => return client::run(client::Command::Fork(a)),
        Cmd::Events(a) => return client::run(client::Command::Events(a)),
        Cmd::Exec(a) => return client::run(client::Command::Exec(a)),
        Cmd::Shell(a) => return client::run(client::Command::Shell(a)),
        Cmd::Cp(a) => return client::run(client::Command::Cp(a)),
        Cmd::Run(a) => return client::run(client::Command::Run(a)),
        Cmd::Logs(a) => return client::run(client::Command::Logs(a)),
        Cmd::Mcp(a) => return mcp::run(a),
        Cmd::Completions { shell } => clap_complete::generate(shell, &mut Cli::command(), "airlock", &mut std::io::stdout()),
        Cmd::Runtime(RuntimeCmd::Create { data_dir, template, no_internet }) => {
            let store = airlock_template::Store::new(data_dir.join("templates"));
            let b = backend(data_dir)?;
            store.ensure_base()?;
            let tpl = store.get(&template)?;
            let mut spec = airlock_runtime::SandboxSpec::new(new_id()?, tpl.rootfs());
            spec.internet = !no_internet;
            let t = std::time::Instant::now();
            let info = b.create(&spec)?;
            println!("{}\t{}\t{:?}", info.id, info.socket.display(), t.elapsed());
        }
        Cmd::Runtime(RuntimeCmd::List { data_dir }) => {
            for s in backend(data_dir)?.list()? {
                println!("{}\tpid={}\tfrozen={}\t{}", s.id, s.pid, s.frozen, s.socket.display());
            }
        }
        Cmd::Runtime(RuntimeCmd::Destroy { data_dir, id }) => {
            backend(data_dir)?.destroy(&id)?;
            // Its directory and slot are removed in the background: finish
            // before this process ends.
            airlock_runtime::namespace::settle(std::time::Duration::from_secs(30));
        }
    }
    Ok(0)
}

/// A 20-character lowercase alphanumeric id, as E2B's are.
pub(crate) fn new_id() -> anyhow::Result<String> {
    Ok(airlock_server::ids::sandbox_id()?)
}

fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let data_dir = a.data_dir.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    let file_path = a.config.clone().or_else(|| Some(data_dir.join("airlock.toml")).filter(|p| p.exists()));
    let file = match &file_path {
        Some(p) => airlock_server::config::FileConfig::load(p)?,
        None => Default::default(),
    };
    let mut cfg = airlock_server::Config::new(data_dir, std::env::current_exe()?);
    // Flags (and their AIRLOCK_* environment variables, which clap reads)
    // win over the file, which wins over the defaults.
    macro_rules! pick {
        ($field:ident, $flag:expr, $file:expr) => {
            if let Some(v) = $flag.or($file) {
                cfg.$field = v;
            }
        };
    }
    pick!(listen, a.listen, file.listen);
    pick!(max_sandboxes, a.max_sandboxes, file.max_sandboxes);
    pick!(max_concurrent_creates, a.max_concurrent_creates, file.max_concurrent_creates);
    pick!(rate_limit, a.rate_limit, file.rate_limit);
    pick!(default_timeout_s, a.default_timeout, file.default_timeout);
    pick!(default_cpus, a.default_cpus, file.default_cpus);
    pick!(default_memory_mb, a.default_memory_mb, file.default_memory_mb);
    pick!(default_disk_mb, a.default_disk_mb, file.default_disk_mb);
    pick!(default_volume_mb, a.default_volume_mb, file.default_volume_mb);
    pick!(max_volume_mb, a.max_volume_mb, file.max_volume_mb);
    cfg.io_default = a.io_bps.or(file.io_bps).is_none() && a.io_iops.or(file.io_iops).is_none();
    pick!(io_bps, a.io_bps, file.io_bps);
    pick!(io_iops, a.io_iops, file.io_iops);
    cfg.domain = a.domain.clone().or(file.domain.clone());
    cfg.tls_cert = a.tls_cert.clone().or(file.tls_cert.clone());
    cfg.tls_key = a.tls_key.clone().or(file.tls_key.clone());
    cfg.api_keys = a.api_keys.iter().map(|k| k.trim().to_string()).filter(|k| !k.is_empty()).collect();
    cfg.api_keys.extend(file.api_key.iter().chain(&file.api_keys).map(|k| k.trim().to_string()).filter(|k| !k.is_empty()));
    cfg.network = !(a.no_network || file.no_network == Some(true));
    pick!(header_timeout_s, a.header_timeout, file.header_timeout);
    pick!(idle_timeout_s, a.idle_timeout, file.idle_timeout);
    cfg.max_connections = a.max_connections.map(|n| n as usize).or(file.max_connections).filter(|n| *n > 0);
    cfg.max_connections_per_client = a.max_connections_per_client.map(|n| n as usize).or(file.max_connections_per_client).filter(|n| *n > 0);
    cfg.fs_pause_after_s = a.release_paused_after.or(file.release_paused_after).filter(|s| *s > 0);
    for p in a.pools.iter().chain(&file.pool).filter(|p| !p.trim().is_empty()) {
        let (name, spec) = airlock_server::pools::parse_flag(p.trim()).map_err(anyhow::Error::msg)?;
        cfg.pools.retain(|(n, _)| *n != name);
        cfg.pools.push((name, spec));
    }
    cfg.webhook_ca = a.webhook_ca.clone().or(file.webhook_ca.clone());
    if let Some(ca) = &cfg.webhook_ca {
        // A bad CA file is an error at start, not at the first delivery.
        airlock_server::webhooks::tls_client(Some(ca)).map_err(|e| anyhow::anyhow!("webhook CA: {e}"))?;
    }
    for d in a.dns_upstream.iter().chain(&file.dns_upstream).filter(|d| !d.trim().is_empty()) {
        let d = d.trim();
        let addr = d.parse::<std::net::SocketAddr>().or_else(|_| d.parse::<std::net::IpAddr>().map(|ip| std::net::SocketAddr::new(ip, 53)));
        cfg.dns_upstream.push(addr.map_err(|_| anyhow::anyhow!("--dns-upstream: {d:?} is not an IP address or IP:PORT"))?);
    }
    cfg.upstream_ca = a.upstream_ca.clone().or(file.upstream_ca.clone());
    if let Some(s) = a.sample_interval.or(file.sample_interval) {
        anyhow::ensure!((0.1..=3600.0).contains(&s), "--sample-interval must be between 0.1 and 3600 seconds, got {s}");
        cfg.sample_interval_ms = (s * 1000.0) as u64;
    }

    if let Some(etcd) = &a.cluster {
        cfg.cluster = Some(cluster_config(&a, etcd, cfg.listen)?);
    }

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let server = airlock_server::Server::bind(cfg).await?;
        let addr = server.local_addr()?;
        // The MCP endpoint calls this server's own API on loopback with
        // each caller's key (see airlock_mcp::http_service for why).
        let own = match addr.ip() {
            std::net::IpAddr::V4(ip) if ip.is_unspecified() => std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, addr.port())),
            std::net::IpAddr::V6(ip) if ip.is_unspecified() => std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port())),
            _ => addr,
        };
        let server = server.with_routes(axum::Router::new().route_service("/mcp", airlock_mcp::http_service(format!("http://{own}"))));
        // The SandboxSDK endpoint, the same way (its key is in the Socket.IO handshake).
        let sio = airlock_socketio::service(format!("http://{own}"));
        let server = server.with_public_routes(axum::Router::new().route_service("/socket.io/", sio.clone()).route_service("/socket.io", sio));
        if let Some(key) = &server.new_key {
            println!("Created an API key (shown once; manage keys with `airlock keys`):\n");
            println!("  export E2B_API_URL=http://{addr}");
            println!("  export E2B_SANDBOX_URL=http://{addr}");
            println!("  export E2B_API_KEY={key}\n");
        }
        tracing::info!(%addr, "airlock serve ready");
        eprintln!("listening on http://{addr}");
        server.run(shutdown_signal()).await;
        anyhow::Ok(())
    })
}

/// `--cluster` and its companions, checked before anything starts.
fn cluster_config(a: &ServeArgs, etcd: &str, listen: std::net::SocketAddr) -> anyhow::Result<airlock_server::cluster::ClusterConfig> {
    airlock_server::cluster::Etcd::new(etcd).map_err(|e| anyhow::anyhow!("--cluster: {e}"))?;
    let advertise = a.advertise.clone().unwrap_or_default().trim_end_matches('/').to_string();
    anyhow::ensure!(
        airlock_server::cluster::forward::authority(&advertise).is_some(),
        "--advertise must be http://HOST:PORT (where the other nodes reach this one), got {advertise:?}"
    );
    anyhow::ensure!(
        !listen.ip().is_loopback() || advertise.contains("127.") || advertise.contains("localhost"),
        "--advertise {advertise} but --listen {listen} is loopback only: the other nodes could not reach it"
    );
    let path = a.cluster_secret_file.as_ref().ok_or_else(|| anyhow::anyhow!("--cluster needs --cluster-secret-file"))?;
    let secret = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("--cluster-secret-file {}: {e}", path.display()))?.trim().to_string();
    anyhow::ensure!(
        secret.len() >= airlock_server::cluster::MIN_SECRET && secret.chars().all(|c| c.is_ascii_graphic()),
        "--cluster-secret-file {}: the secret must be at least {} printable characters (head -c 32 /dev/urandom | base64)",
        path.display(),
        airlock_server::cluster::MIN_SECRET
    );
    let node = match &a.node_name {
        Some(n) => n.clone(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "node".into()),
    };
    anyhow::ensure!(
        !node.is_empty() && node.len() <= 63 && node.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'),
        "--node-name {node:?}: letters, digits, '-', '_' and '.', at most 63"
    );
    Ok(airlock_server::cluster::ClusterConfig { etcd: etcd.to_string(), advertise, node, secret, lease_s: a.cluster_lease.unwrap_or(10) })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}

fn keys(k: KeysCmd) -> anyhow::Result<()> {
    match k {
        KeysCmd::Create { data_dir, name } => {
            let store = airlock_server::server::open_store(&data_dir)?;
            let key = airlock_server::ids::api_key()?;
            let id = airlock_server::ids::sandbox_id()?[..8].to_string();
            store.add_key(&id, &key, &name, airlock_server::service::now_ms())?;
            println!("{key}");
            eprintln!("key id {id}; it is not shown again");
        }
        KeysCmd::List { data_dir } => {
            let store = airlock_server::server::open_store(&data_dir)?;
            println!("{:<10} {:<12} {:<25} NAME", "ID", "PREFIX", "CREATED");
            for k in store.keys()? {
                println!("{:<10} {:<12} {:<25} {}", k.id, format!("{}…", k.prefix), airlock_server::service::rfc3339_ms(k.created_at), k.name);
            }
        }
        KeysCmd::Revoke { data_dir, id } => {
            let store = airlock_server::server::open_store(&data_dir)?;
            match store.revoke_key(&id)? {
                0 => anyhow::bail!("no key with id or prefix {id:?}"),
                n => eprintln!("revoked {n} key(s)"),
            }
        }
    }
    Ok(())
}
