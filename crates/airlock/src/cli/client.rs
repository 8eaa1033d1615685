//! The client commands: everything that talks to a server through the SDK.
//! Human-readable output by default, `--json` for scripts; errors are
//! returned to `cli::main`, which prints them on one line.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, SystemTime};

use airlock_sdk::{AlertThresholds, Client, CommandEvent, Config, EndEvent, Error, Sandbox, SandboxDetail, SandboxState, Signal};
use anyhow::{anyhow, bail, Context};
use futures_util::StreamExt;

use super::progress::Progress;

pub(super) const SANDBOX_EXAMPLES: &str = "\
Examples:
  airlock sandbox create --template base --timeout 600 --metadata owner=me
  airlock sbx list --state running --metadata owner=me
  airlock sbx info <id> --json
  airlock sbx timeout <id> 3600
  airlock sbx pause <id> && airlock sbx resume <id>
  airlock sbx pause <id> --filesystem          # memory released; resume boots afresh
  airlock sbx reset <id> [--hard]              # kill its processes [or go back to its template]
  airlock sbx export <id> -o state.tar.zst && airlock sbx import state.tar.zst
  airlock sbx kill <id> <id2>";
pub(super) const EXEC_EXAMPLES: &str = "\
Examples:
  airlock exec <id> -- python3 -c 'print(1)'
  airlock exec <id> -- sh -c 'exit 3'; echo $?        # prints 3
  airlock exec -w /tmp -e DEBUG=1 <id> -- ls -la
  airlock exec -i <id> -- wc -l < local-file.txt       # forward stdin
  airlock exec -d <id> -- python3 -m http.server       # background; prints the pid
The command runs as given (no shell): use `sh -c '...'` for pipes and variables.";
pub(super) const SHELL_EXAMPLES: &str = "\
Examples:
  airlock shell <id>
  airlock shell --user root <id>
  airlock shell <id> -- python3                        # any program on the terminal";
pub(super) const CP_EXAMPLES: &str = "\
Examples:
  airlock cp ./model.bin <id>:/home/user/               # upload into a directory
  airlock cp <id>:/home/user/out.csv ./results.csv      # download
  airlock cp <id>:/etc/os-release -                     # to stdout
  tar c src | airlock cp - <id>:/tmp/src.tar            # from stdin
A sandbox path is `<id>:<path>`; relative sandbox paths are under the user's home.";
pub(super) const RUN_EXAMPLES: &str = "\
Examples:
  airlock run base -- uname -a
  airlock run --env N=3 base -- sh -c 'seq $N'
  airlock run --no-internet --memory-mb 256 base -- python3 -c 'print(2**64)'";
pub(super) const LOGS_EXAMPLES: &str = "\
Examples:
  airlock logs <id>                                     # set-up log and the agent's processes
  airlock logs <id> 42                                  # output of pid 42, followed
  airlock logs <id> web                                 # output of the process tagged `web`
  airlock logs <id> --exec -n 50 --level warn           # the execution log: runs, output, outcomes
  airlock logs <id> -f                                  # follow the execution log";

/// Where the server is and how to talk to it; every client command has these.
#[derive(clap::Args, Debug, Clone)]
pub(super) struct ClientArgs {
    /// Server URL [default: $AIRLOCK_URL, then $E2B_API_URL, then http://127.0.0.1:3000].
    #[arg(long, global = true)]
    url: Option<String>,
    /// API key [default: $AIRLOCK_API_KEY, then $E2B_API_KEY].
    #[arg(long = "api-key", global = true)]
    api_key: Option<String>,
    /// Print JSON instead of tables and text.
    #[arg(long, global = true)]
    pub(super) json: bool,
}

impl ClientArgs {
    pub(super) fn client(&self) -> anyhow::Result<Client> {
        api_client(self.url.as_deref(), self.api_key.as_deref())
    }
}

/// A client from the environment, with `--url` and `--api-key` over it;
/// every client command builds its client here.
pub(super) fn api_client(url: Option<&str>, api_key: Option<&str>) -> anyhow::Result<Client> {
    let mut cfg = Config::from_env();
    if let Some(u) = url {
        cfg = cfg.with_url(u.to_string());
    }
    if let Some(k) = api_key {
        cfg.api_key = Some(k.to_string());
    }
    if cfg.api_key.is_none() {
        bail!("no API key: set AIRLOCK_API_KEY or E2B_API_KEY, or pass --api-key");
    }
    Ok(Client::new(cfg)?)
}

#[derive(clap::Args, Debug)]
pub(super) struct SandboxArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    cmd: SandboxCmd,
}

pub(super) fn kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// Options that describe a new sandbox (shared by `sandbox create` and `run`).
#[derive(clap::Args, Debug, Clone)]
pub(super) struct CreateOpts {
    /// Seconds the sandbox lives before it is killed (or paused with --auto-pause) [default: the server's, 300].
    #[arg(long)]
    timeout: Option<u64>,
    /// Metadata KEY=VALUE (repeatable).
    #[arg(long = "metadata", short = 'm', value_parser = kv)]
    metadata: Vec<(String, String)>,
    /// Environment variable KEY=VALUE for every command (repeatable).
    #[arg(long = "env", short = 'e', value_parser = kv)]
    env: Vec<(String, String)>,
    /// CPU cores (fractions allowed) [default: the server's].
    #[arg(long)]
    cpus: Option<f64>,
    /// Memory limit in MiB [default: the server's].
    #[arg(long = "memory-mb")]
    memory_mb: Option<u64>,
    /// No internet access (loopback only).
    #[arg(long)]
    no_internet: bool,
    /// Egress allowed to this IP, CIDR or domain (`*.` for subdomains;
    /// repeatable); with --deny-out 0.0.0.0/0, only these are reachable.
    #[arg(long = "allow-out", value_delimiter = ',')]
    allow_out: Vec<String>,
    /// Egress denied to this IP, CIDR or domain (repeatable; 0.0.0.0/0:
    /// everything not allowed).
    #[arg(long = "deny-out", value_delimiter = ',')]
    deny_out: Vec<String>,
    /// Join a sandbox network, NETWORK or NETWORK=NAME (the name the others
    /// reach it by; default its id); repeatable.
    #[arg(long = "join-network")]
    join_networks: Vec<String>,
    /// Pause instead of kill when the timeout expires.
    #[arg(long)]
    auto_pause: bool,
    /// With --auto-pause: keep only the files (processes stop, memory is
    /// released; resuming boots the sandbox afresh) instead of freezing it.
    #[arg(long, requires = "auto_pause")]
    auto_pause_filesystem: bool,
    /// Mount a volume, NAME:/path/inside (name or vol_ id; repeatable).
    #[arg(long = "volume", value_parser = volume_mount)]
    volumes: Vec<(String, String)>,
}

/// `NAME:/mount/path` of `--volume`.
fn volume_mount(s: &str) -> Result<(String, String), String> {
    match s.split_once(':') {
        Some((n, p)) if !n.is_empty() && p.starts_with('/') => Ok((n.to_string(), p.to_string())),
        _ => Err(format!("expected NAME:/mount/path, got {s:?}")),
    }
}

impl CreateOpts {
    fn builder(&self, client: &Client, template: &str) -> airlock_sdk::SandboxBuilder {
        let mut b = Sandbox::builder().client(client).template(template);
        if let Some(t) = self.timeout {
            b = b.timeout(Duration::from_secs(t));
        }
        for (k, v) in &self.metadata {
            b = b.metadata(k, v);
        }
        b = b.envs(self.env.iter().cloned());
        if let Some(c) = self.cpus {
            b = b.cpu_count(c);
        }
        if let Some(m) = self.memory_mb {
            b = b.memory_mb(m);
        }
        if self.no_internet {
            b = b.allow_internet_access(false);
        }
        for j in &self.join_networks {
            b = match j.split_once('=') {
                Some((net, name)) => b.join_network(net, Some(name)),
                None => b.join_network(j.as_str(), None),
            };
        }
        if !self.allow_out.is_empty() || !self.deny_out.is_empty() {
            b = b.network(&airlock_proto::api::NetworkOptions { allow_out: self.allow_out.clone(), deny_out: self.deny_out.clone(), ..Default::default() });
        }
        if self.auto_pause {
            b = b.auto_pause(true);
        }
        if self.auto_pause_filesystem {
            b = b.auto_pause_memory(false);
        }
        for (name, path) in &self.volumes {
            b = b.volume(name, path);
        }
        b
    }
}

#[derive(clap::Subcommand, Debug)]
enum SandboxCmd {
    /// Create a sandbox and print its id.
    #[command(
        after_help = "Examples:\n  airlock sandbox create\n  id=$(airlock sbx create --template base --timeout 600 -m owner=me -e API_URL=http://x)\n  airlock sbx create --cpus 0.5 --memory-mb 256 --no-internet --json"
    )]
    Create {
        /// Template to start from.
        #[arg(long, short = 't', default_value = airlock_sdk::DEFAULT_TEMPLATE)]
        template: String,
        #[command(flatten)]
        opts: CreateOpts,
    },
    /// List sandboxes (running and paused unless --state says otherwise).
    #[command(alias = "ls", after_help = "Examples:\n  airlock sbx list\n  airlock sbx list --state paused\n  airlock sbx list --metadata owner=me --json")]
    List {
        /// Only these states (comma-separated: running, paused).
        #[arg(long, value_delimiter = ',')]
        state: Vec<String>,
        /// Only sandboxes with this metadata KEY=VALUE (repeatable; all must match).
        #[arg(long = "metadata", short = 'm', value_parser = kv)]
        metadata: Vec<(String, String)>,
        /// Show at most this many.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Show one sandbox's details.
    #[command(after_help = "Examples:\n  airlock sbx info <id>\n  airlock sbx info <id> --json | jq -r .endAt")]
    Info { id: String },
    /// Kill sandboxes and delete everything in them.
    #[command(alias = "rm", after_help = "Examples:\n  airlock sbx kill <id>\n  airlock sbx kill <id1> <id2>")]
    Kill {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Pause a sandbox: processes frozen, memory and files kept; with
    /// --filesystem, processes stopped and memory released, files kept.
    #[command(after_help = "Examples:\n  airlock sbx pause <id>\n  airlock sbx pause <id> --filesystem   # resume boots it afresh")]
    Pause {
        id: String,
        /// Keep only the files (resume boots a fresh agent over them).
        #[arg(long)]
        filesystem: bool,
    },
    /// Check that a sandbox works: its agent runs a command, disk and memory
    /// below 95%, and any --check commands succeed. Exits 1 when unhealthy.
    #[command(after_help = "Examples:\n  airlock sbx health <id>\n  airlock sbx health <id> --check 'curl -sf localhost:8080/ready'")]
    Health {
        id: String,
        /// A shell command that must exit 0 (repeatable).
        #[arg(long)]
        check: Vec<String>,
    },
    /// Run a batch of code jobs one after another in the sandbox's code
    /// interpreter, highest priority first, each with its own timeout; a
    /// job that fails or times out does not stop the rest. Exits 1 when
    /// any job failed.
    #[command(
        after_help = "The file is JSON: a list of jobs, or {\"jobs\": [...]}; each job is\n{\"id\", \"code\", \"language\"?, \"timeout\"? (ms), \"priority\"?, \"envs\"?}.\n\nExamples:\n  airlock sbx batch <id> jobs.json\n  echo '[{\"id\":\"a\",\"code\":\"print(1)\"}]' | airlock sbx batch <id> - --json"
    )]
    Batch {
        id: String,
        /// The jobs (`-` reads standard input).
        file: std::path::PathBuf,
    },
    /// Change a running sandbox's environment (every later command sees
    /// it), install packages, run set-up commands (output in the set-up log).
    #[command(
        after_help = "Examples:\n  airlock sbx configure <id> --env API_URL=http://127.0.0.1:8080 --pip requests\n  airlock sbx configure <id> --run 'git config --global user.name bot' --restart"
    )]
    Configure(super::mcp::ConfigureArgs),
    /// Change a running sandbox's limits in place (memory below what it
    /// holds is refused; the disk limit only grows).
    #[command(after_help = "Examples:\n  airlock sbx resources <id> --memory-mb 2048\n  airlock sbx resources <id> --cpus 4 --disk-mb 20480")]
    Resources {
        id: String,
        #[arg(long)]
        cpus: Option<f64>,
        #[arg(long = "memory-mb")]
        memory_mb: Option<u64>,
        #[arg(long = "disk-mb")]
        disk_mb: Option<u64>,
    },
    /// Set resource alert thresholds in percent (none given: remove them);
    /// crossing one records a `resource_alert` event.
    #[command(after_help = "Examples:\n  airlock sbx alerts <id> --memory 90 --disk 80\n  airlock events --sandbox <id> --type resource_alert")]
    Alerts {
        id: String,
        #[arg(long)]
        cpu: Option<f64>,
        #[arg(long)]
        memory: Option<f64>,
        #[arg(long)]
        disk: Option<f64>,
    },
    /// Running sandboxes' CPU, memory, disk and network, refreshed; with an
    /// id, that sandbox's live readings.
    #[command(after_help = "Examples:\n  airlock sbx top\n  airlock sbx top <id> --interval 1\n  airlock sbx top --once --json")]
    Top {
        id: Option<String>,
        /// Seconds between readings (0.5 to 60).
        #[arg(long, default_value_t = 2.0)]
        interval: f64,
        /// One reading, then exit.
        #[arg(long)]
        once: bool,
    },
    /// Soft reset (every process but the agent killed, files kept) or, with
    /// --hard, back to the template or snapshot it came from (same id).
    #[command(after_help = "Examples:\n  airlock sbx reset <id>\n  airlock sbx reset <id> --hard")]
    Reset {
        id: String,
        #[arg(long)]
        hard: bool,
    },
    /// Restart: a fresh agent over the same files, optionally with more
    /// environment variables or new resources.
    #[command(after_help = "Examples:\n  airlock sbx restart <id>\n  airlock sbx restart <id> -e MODE=prod --memory-mb 1024")]
    Restart {
        id: String,
        /// Environment variable KEY=VALUE merged over the sandbox's (repeatable).
        #[arg(long = "env", short = 'e', value_parser = kv)]
        env: Vec<(String, String)>,
        #[arg(long)]
        cpus: Option<f64>,
        #[arg(long = "memory-mb")]
        memory_mb: Option<u64>,
    },
    /// Write a sandbox's state (its files over its template) to one archive
    /// (tar + zstd), to move it to another host.
    #[command(after_help = "Examples:\n  airlock sbx export <id> -o state.tar.zst\n  airlock sbx export <id> | ssh other 'airlock sbx import -'")]
    Export {
        id: String,
        /// Output file [default: standard output].
        #[arg(long, short = 'o')]
        output: Option<std::path::PathBuf>,
    },
    /// Create a sandbox from an export archive (`-` reads standard input);
    /// the template it names must exist on the server.
    #[command(after_help = "Examples:\n  airlock sbx import state.tar.zst\n  airlock sbx import state.tar.zst --force   # the template changed since")]
    Import {
        file: std::path::PathBuf,
        /// Seconds the new sandbox lives [default: the server's].
        #[arg(long)]
        timeout: Option<u64>,
        /// Accept a template that changed since the export.
        #[arg(long)]
        force: bool,
    },
    /// Resume a paused sandbox.
    #[command(after_help = "Examples:\n  airlock sbx resume <id>\n  airlock sbx resume <id> --timeout 600")]
    Resume {
        id: String,
        /// Seconds to live from now [default: the server's].
        #[arg(long)]
        timeout: Option<u64>,
    },
    /// Set how long a sandbox lives from now (shorter or longer).
    #[command(after_help = "Examples:\n  airlock sbx timeout <id> 3600\n  airlock sbx timeout <id> 0     # kill (or pause) it now")]
    Timeout {
        id: String,
        /// Seconds from now.
        seconds: u64,
    },
    /// Show resource usage samples (CPU, memory, disk).
    #[command(after_help = "Example:\n  airlock sbx metrics <id>")]
    Metrics { id: String },
}

/// Options of a command run in a sandbox (shared by `exec` and `run`).
#[derive(clap::Args, Debug, Clone)]
pub(super) struct ExecOpts {
    /// Working directory in the sandbox.
    #[arg(long = "cwd", short = 'w')]
    cwd: Option<String>,
    /// Run as this sandbox user [default: the template's, `user`].
    #[arg(long, short = 'u')]
    user: Option<String>,
    /// Kill the command after this many seconds [default: no limit].
    #[arg(long = "cmd-timeout")]
    cmd_timeout: Option<u64>,
    /// Forward this terminal's stdin to the command.
    #[arg(long, short = 'i')]
    interactive: bool,
    /// Environment variable KEY=VALUE for the command (repeatable).
    #[arg(long = "env", short = 'e', value_parser = kv)]
    env: Vec<(String, String)>,
}

#[derive(clap::Args, Debug)]
pub(super) struct ExecArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(flatten)]
    opts: ExecOpts,
    /// Start the command in the background and print its pid.
    #[arg(long, short = 'd')]
    detach: bool,
    /// Tag for a background command, to find it again (`airlock logs <id> <tag>`).
    #[arg(long)]
    tag: Option<String>,
    /// Sandbox id.
    id: String,
    /// The program and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    cmd: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub(super) struct ShellArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Log in as this sandbox user.
    #[arg(long, short = 'u')]
    user: Option<String>,
    /// Start in this directory.
    #[arg(long = "cwd", short = 'w')]
    cwd: Option<String>,
    /// Sandbox id.
    id: String,
    /// Program to run instead of a login shell.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    cmd: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub(super) struct CpArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Act as this sandbox user (owner of uploaded files, base of relative paths).
    #[arg(long, short = 'u')]
    user: Option<String>,
    /// No progress bar.
    #[arg(long, short = 'q')]
    quiet: bool,
    /// Source: a local path, `-` for stdin, or `<id>:<path>`.
    src: String,
    /// Destination: a local path, `-` for stdout, or `<id>:<path>`.
    dst: String,
}

#[derive(clap::Args, Debug)]
pub(super) struct RunArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(flatten)]
    create: CreateOpts,
    /// Working directory in the sandbox.
    #[arg(long = "cwd", short = 'w')]
    cwd: Option<String>,
    /// Run as this sandbox user.
    #[arg(long, short = 'u')]
    user: Option<String>,
    /// Forward this terminal's stdin to the command.
    #[arg(long, short = 'i')]
    interactive: bool,
    /// Keep the sandbox afterwards (and print its id on stderr).
    #[arg(long)]
    keep: bool,
    /// Template to start from.
    template: String,
    /// The program and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    cmd: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub(super) struct LogsArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Sandbox id.
    id: String,
    /// A process's pid or tag: show its output.
    process: Option<String>,
    /// Show the execution log: every command and code run, its output and outcome.
    #[arg(long = "exec")]
    exec: bool,
    /// Follow the execution log until the sandbox stops.
    #[arg(short, long)]
    follow: bool,
    /// Only entries at this level and above (debug, info, warn, error).
    #[arg(long)]
    level: Option<String>,
    /// The newest this many entries.
    #[arg(short = 'n', long)]
    lines: Option<u32>,
    /// Only entries at or after this RFC 3339 time.
    #[arg(long)]
    since: Option<String>,
}

pub(super) enum Command {
    Sandbox(SandboxArgs),
    Snapshot(super::state::SnapshotArgs),
    Fork(super::state::ForkArgs),
    Events(super::events::EventsArgs),
    Exec(ExecArgs),
    Shell(ShellArgs),
    Cp(CpArgs),
    Run(RunArgs),
    Logs(LogsArgs),
}

/// Runs a client command on a fresh runtime; returns the exit code.
pub(super) fn run(cmd: Command) -> anyhow::Result<u8> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let r = rt.block_on(async move {
        match cmd {
            Command::Sandbox(a) => sandbox(a).await,
            Command::Snapshot(a) => super::state::snapshot(a).await,
            Command::Fork(a) => super::state::fork(a).await,
            Command::Events(a) => super::events::events(a).await,
            Command::Exec(a) => exec(a).await,
            Command::Shell(a) => super::shell::shell(a.client.client()?, &a.id, a.user, a.cwd, a.cmd).await,
            Command::Cp(a) => cp(a).await,
            Command::Run(a) => run_cmd(a).await,
            Command::Logs(a) => logs(a).await,
        }
    });
    // Threads blocked reading this terminal must not hold up the exit.
    rt.shutdown_timeout(Duration::from_millis(100));
    r
}

pub(super) fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Columns padded to their widest cell; the last column is not padded.
pub(super) fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(headers.to_vec());
    for r in rows {
        out.push('\n');
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

/// `3m 12s ago` / `in 4m 30s` relative to now.
fn relative(rfc3339: &str) -> String {
    let Some(t) = airlock_proto::time::parse_rfc3339(rfc3339) else { return rfc3339.to_string() };
    let now = SystemTime::now();
    let (d, future) = match t.duration_since(now) {
        Ok(d) => (d, true),
        Err(e) => (e.duration(), false),
    };
    let s = d.as_secs();
    let text = match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {}s", s / 60, s % 60),
        3600..=86399 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {}h", s / 86400, (s % 86400) / 3600),
    };
    if future {
        format!("in {text}")
    } else {
        format!("{text} ago")
    }
}

fn metadata_text(m: &BTreeMap<String, String>) -> String {
    m.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

fn print_detail(d: &SandboxDetail) {
    let rows = [
        ("Sandbox ID", d.sandbox_id.clone()),
        ("Template", d.template_id.clone()),
        ("State", d.state.clone()),
        ("Started", format!("{} ({})", d.started_at, relative(&d.started_at))),
        ("Ends", format!("{} ({})", d.end_at, relative(&d.end_at))),
        ("On timeout", d.lifecycle.on_timeout.clone()),
        ("CPUs", d.cpu_count.to_string()),
        ("Memory", format!("{} MiB", d.memory_mb)),
        ("Internet", d.allow_internet_access.map(|b| if b { "yes" } else { "no" }).unwrap_or("unknown").to_string()),
        ("Metadata", metadata_text(&d.metadata)),
        ("Agent", format!("envd {}", d.envd_version)),
    ];
    for (k, v) in rows {
        println!("{k:<12} {v}");
    }
}

async fn sandbox(a: SandboxArgs) -> anyhow::Result<u8> {
    let json = a.client.json;
    let client = a.client.client()?;
    match a.cmd {
        SandboxCmd::Create { template, opts } => {
            let sbx = opts.builder(&client, &template).create().await?;
            let d = client.info(sbx.id()).await?;
            if !opts.no_internet && d.allow_internet_access == Some(false) {
                eprintln!("warning: {} has no internet access: the server's host has no firewall tool (install iptables there and restart `airlock serve`)", sbx.id());
            }
            if json {
                print_json(&d)?;
            } else {
                println!("{}", sbx.id());
            }
        }
        SandboxCmd::List { state, metadata, limit } => {
            let mut list = client.list();
            for s in &state {
                list = list.state(s.parse::<SandboxState>()?);
            }
            for (k, v) in metadata {
                list = list.metadata(k, v);
            }
            let mut items = list.items();
            let mut all = Vec::new();
            while let Some(s) = items.next().await {
                all.push(s?);
                if limit.is_some_and(|l| all.len() >= l) {
                    break;
                }
            }
            if json {
                print_json(&all)?;
            } else if all.is_empty() {
                eprintln!("no sandboxes");
            } else {
                let rows: Vec<Vec<String>> = all
                    .iter()
                    .map(|d| {
                        vec![
                            d.sandbox_id.clone(),
                            d.template_id.clone(),
                            d.state.clone(),
                            d.cpu_count.to_string(),
                            format!("{} MiB", d.memory_mb),
                            relative(&d.started_at),
                            relative(&d.end_at),
                            metadata_text(&d.metadata),
                        ]
                    })
                    .collect();
                println!("{}", table(&["SANDBOX ID", "TEMPLATE", "STATE", "CPUS", "MEMORY", "STARTED", "ENDS", "METADATA"], &rows));
            }
        }
        SandboxCmd::Info { id } => {
            let d = client.info(&id).await?;
            if json {
                print_json(&d)?;
            } else {
                print_detail(&d);
            }
        }
        SandboxCmd::Kill { ids } => {
            let mut killed = Vec::new();
            let mut failed = Vec::new();
            for id in &ids {
                match client.kill(id).await {
                    Ok(()) => killed.push(id.clone()),
                    Err(e) => failed.push(format!("{id}: {}", e.to_line())),
                }
            }
            if json {
                print_json(&serde_json::json!({ "killed": killed }))?;
            } else {
                for id in &killed {
                    println!("{id}");
                }
            }
            if !failed.is_empty() {
                bail!("{}", failed.join("; "));
            }
        }
        SandboxCmd::Health { id, check } => {
            let checks: Vec<&str> = check.iter().map(String::as_str).collect();
            let h = client.health(&id, &checks).await?;
            if json {
                print_json(&h)?;
            } else {
                for c in &h.checks {
                    println!("{:<4} {:<24} {}", if c.ok { "ok" } else { "FAIL" }, c.name, c.detail);
                }
                println!("{}", if h.healthy { "healthy" } else { "unhealthy" });
            }
            if !h.healthy {
                return Ok(1);
            }
        }
        SandboxCmd::Batch { id, file } => return batch(&client, &id, &file, json).await,
        SandboxCmd::Configure(a) => super::mcp::configure(&client, a, json).await?,
        SandboxCmd::Resources { id, cpus, memory_mb, disk_mb } => super::ops::resources(&client, &id, cpus, memory_mb, disk_mb, json).await?,
        SandboxCmd::Alerts { id, cpu, memory, disk } => super::ops::alerts(&client, &id, AlertThresholds { cpu_pct: cpu, memory_pct: memory, disk_pct: disk }, json).await?,
        SandboxCmd::Top { id, interval, once } => super::ops::top(&client, id.as_deref(), interval, once, json).await?,
        SandboxCmd::Reset { id, hard } => super::state::reset(&client, &id, hard, json).await?,
        SandboxCmd::Restart { id, env, cpus, memory_mb } => super::state::restart(&client, &id, env, cpus, memory_mb, json).await?,
        SandboxCmd::Export { id, output } => super::state::export(&client, &id, output.as_deref()).await?,
        SandboxCmd::Import { file, timeout, force } => super::state::import(&client, &file, timeout, force, json).await?,
        SandboxCmd::Pause { id, filesystem } => {
            let paused = client.pause_with(&id, !filesystem).await?;
            if json {
                print_json(&serde_json::json!({ "sandboxID": id, "paused": paused }))?;
            } else if paused {
                println!("{id}");
            } else {
                eprintln!("{id} was already paused");
            }
        }
        SandboxCmd::Resume { id, timeout } => {
            client.connect_with_timeout(&id, timeout.map(Duration::from_secs)).await?;
            if json {
                print_json(&client.info(&id).await?)?;
            } else {
                println!("{id}");
            }
        }
        SandboxCmd::Timeout { id, seconds } => {
            client.set_timeout(&id, Duration::from_secs(seconds)).await?;
            if json {
                let d = client.info(&id).await;
                match d {
                    Ok(d) => print_json(&serde_json::json!({ "sandboxID": id, "endAt": d.end_at }))?,
                    // A zero timeout may have removed it already.
                    Err(Error::NotFound(_)) => print_json(&serde_json::json!({ "sandboxID": id, "endAt": null }))?,
                    Err(e) => return Err(e.into()),
                }
            } else {
                println!("{id}");
            }
        }
        SandboxCmd::Metrics { id } => {
            let m = client.metrics(&id, None, None).await?;
            if json {
                print_json(&m)?;
            } else {
                let rows: Vec<Vec<String>> = m
                    .iter()
                    .map(|s| {
                        vec![
                            s.timestamp.clone(),
                            format!("{:.1}%", s.cpu_used_pct),
                            format!("{:.1} MiB", s.mem_used as f64 / 1048576.0),
                            format!("{:.0} MiB", s.mem_total as f64 / 1048576.0),
                            format!("{:.1} MiB", s.disk_used as f64 / 1048576.0),
                            format!("{} / {}", s.net_rx_bytes, s.net_tx_bytes),
                        ]
                    })
                    .collect();
                println!("{}", table(&["TIME", "CPU", "MEMORY", "LIMIT", "DISK", "NET IN / OUT (bytes)"], &rows));
            }
        }
    }
    Ok(0)
}

/// The shell's convention for a command's status: its exit code, or 128 +
/// the signal that killed it.
pub(super) fn exit_status(end: &EndEvent) -> u8 {
    if end.exited || end.exit_code >= 0 && !end.status.starts_with("signal") {
        return u8::try_from(end.exit_code).unwrap_or(255);
    }
    let sig = match end.status.trim_start_matches("signal: ") {
        "hangup" => 1,
        "interrupt" => 2,
        "quit" => 3,
        "aborted" => 6,
        "killed" => 9,
        "segmentation fault" => 11,
        "broken pipe" => 13,
        "terminated" => 15,
        _ => return 255,
    };
    128 + sig
}

/// Local stdin, read on a dedicated thread (an async read of a terminal
/// would hold up the runtime's shutdown) and sent as chunks; `None` marks
/// the end of input.
pub(super) fn stdin_pump(tx: tokio::sync::mpsc::Sender<Option<Vec<u8>>>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            // SAFETY: reading into a buffer we own, of its length.
            let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                if tx.blocking_send(Some(buf[..n as usize].to_vec())).is_err() {
                    return;
                }
            } else if n == 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                let _ = tx.blocking_send(None);
                return;
            }
        }
    });
}

/// Streams a started command to this terminal; Ctrl-C sends SIGTERM, a
/// second one gives up. Returns the command's status for `exit`.
pub(super) async fn stream_command(mut s: airlock_sdk::CommandStream, interactive: bool, json: bool) -> anyhow::Result<u8> {
    let process = s.process().clone();
    let mut input = None;
    if interactive {
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        stdin_pump(tx);
        let p = process.clone();
        input = Some(tokio::spawn(async move {
            while let Some(chunk) = rx.recv().await {
                let r = match chunk {
                    Some(d) => p.send_stdin(d).await,
                    None => {
                        let _ = p.close_stdin().await;
                        return;
                    }
                };
                if r.is_err() {
                    return;
                }
            }
        }));
    }
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut interrupts = 0;
    let code = loop {
        let ev = tokio::select! {
            ev = s.next() => ev,
            _ = tokio::signal::ctrl_c() => {
                interrupts += 1;
                if interrupts > 1 {
                    break 130;
                }
                eprintln!("\r(interrupt: stopping the command; press Ctrl-C again to leave it running)");
                let _ = process.signal(Signal::Sigterm).await;
                continue;
            }
        };
        match ev {
            None => bail!("the command's output ended without an exit status"),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(CommandEvent::Stdout(d) | CommandEvent::Pty(d))) => {
                if json {
                    out.extend(d);
                } else {
                    let mut o = std::io::stdout().lock();
                    o.write_all(&d)?;
                    o.flush()?;
                }
            }
            Some(Ok(CommandEvent::Stderr(d))) => {
                if json {
                    err.extend(d);
                } else {
                    let mut e = std::io::stderr().lock();
                    e.write_all(&d)?;
                    e.flush()?;
                }
            }
            Some(Ok(CommandEvent::Exit(end))) => {
                if json {
                    print_json(&serde_json::json!({
                        "pid": process.pid(),
                        "exitCode": end.exit_code,
                        "status": end.status,
                        "stdout": String::from_utf8_lossy(&out),
                        "stderr": String::from_utf8_lossy(&err),
                    }))?;
                }
                break exit_status(&end);
            }
        }
    };
    if let Some(i) = input {
        i.abort();
    }
    Ok(code)
}

fn command_builder(sbx: &Sandbox, cmd: &[String], o: &ExecOpts) -> anyhow::Result<airlock_sdk::CommandBuilder> {
    let (program, args) = cmd.split_first().ok_or_else(|| anyhow!("no command given"))?;
    let mut b = sbx.commands().exec(program.clone(), args.iter().cloned()).envs(o.env.iter().cloned()).stdin(o.interactive);
    b = match o.cmd_timeout {
        Some(t) if t > 0 => b.timeout(Duration::from_secs(t)),
        _ => b.no_timeout(),
    };
    if let Some(c) = &o.cwd {
        b = b.cwd(c.clone());
    }
    if let Some(u) = &o.user {
        b = b.user(u.clone());
    }
    Ok(b)
}

async fn exec(a: ExecArgs) -> anyhow::Result<u8> {
    let client = a.client.client()?;
    let sbx = client.get(&a.id).await?;
    let mut b = command_builder(&sbx, &a.cmd, &a.opts)?;
    if let Some(t) = &a.tag {
        b = b.tag(t.clone());
    }
    let s = b.stream().await?;
    if a.detach {
        if a.client.json {
            print_json(&serde_json::json!({ "pid": s.pid() }))?;
        } else {
            println!("{}", s.pid());
        }
        return Ok(0);
    }
    stream_command(s, a.opts.interactive, a.client.json).await
}

async fn run_cmd(a: RunArgs) -> anyhow::Result<u8> {
    let client = a.client.client()?;
    let sbx = a.create.builder(&client, &a.template).create().await?;
    let opts = ExecOpts { cwd: a.cwd, user: a.user, cmd_timeout: None, interactive: a.interactive, env: Vec::new() };
    let r = async {
        let s = command_builder(&sbx, &a.cmd, &opts)?.stream().await?;
        stream_command(s, opts.interactive, a.client.json).await
    }
    .await;
    if a.keep {
        eprintln!("sandbox {} kept", sbx.id());
    } else if let Err(e) = sbx.kill().await {
        eprintln!("warning: killing sandbox {}: {}", sbx.id(), e.to_line());
    }
    r
}

async fn logs(a: LogsArgs) -> anyhow::Result<u8> {
    let client = a.client.client()?;
    if a.process.is_none() && (a.exec || a.follow || a.level.is_some() || a.lines.is_some() || a.since.is_some()) {
        let f = super::mcp::LogFlags { follow: a.follow, level: a.level, lines: a.lines, since: a.since };
        super::mcp::execution_log(&client, &a.id, f, a.client.json).await?;
        return Ok(0);
    }
    let sbx = client.get(&a.id).await?;
    let Some(sel) = a.process else {
        let setup = match sbx.logs().await {
            Ok(l) => l,
            // A server without the set-up log endpoint: show what the agent has.
            Err(Error::NotFound(m)) if m.contains("no such endpoint") => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        let procs = sbx.commands().list().await?;
        if a.client.json {
            print_json(&serde_json::json!({ "setup": setup, "processes": procs }))?;
            return Ok(0);
        }
        if !setup.is_empty() {
            println!("Set-up log:");
            for l in &setup {
                println!("{} {}", l.timestamp, l.line);
            }
            println!();
        }
        if procs.is_empty() {
            eprintln!("no processes");
        } else {
            let rows: Vec<Vec<String>> = procs
                .iter()
                .map(|p| {
                    let mut cmd = vec![p.config.cmd.clone()];
                    cmd.extend(p.config.args.iter().cloned());
                    vec![p.pid.to_string(), p.tag.clone().unwrap_or_default(), cmd.join(" ")]
                })
                .collect();
            println!("{}", table(&["PID", "TAG", "COMMAND"], &rows));
        }
        return Ok(0);
    };
    let s = match sel.parse::<u32>() {
        Ok(pid) => sbx.commands().connect(pid).await,
        Err(_) => sbx.commands().connect_tag(sel.clone()).await,
    }
    .with_context(|| format!("process {sel}"))?;
    stream_command(s, false, a.client.json).await?;
    Ok(0)
}

/// One side of a copy.
#[derive(Debug, PartialEq, Eq)]
enum Place {
    Local(std::path::PathBuf),
    Std,
    Remote { id: String, path: String },
}

fn place(s: &str) -> Place {
    if s == "-" {
        return Place::Std;
    }
    if let Some((id, path)) = s.split_once(':') {
        if !id.is_empty() && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
            return Place::Remote { id: id.to_string(), path: path.to_string() };
        }
    }
    Place::Local(s.into())
}

fn basename(p: &str) -> &str {
    p.trim_end_matches('/').rsplit('/').next().unwrap_or(p)
}

/// Bars for copies of at least this size, when stderr is a terminal.
const PROGRESS_MIN: u64 = 1 << 20;

fn stderr_is_tty() -> bool {
    // SAFETY: isatty has no preconditions.
    unsafe { libc::isatty(2) == 1 }
}

async fn cp(a: CpArgs) -> anyhow::Result<u8> {
    let client = a.client.client()?;
    let bar = |label: String, total: Option<u64>| {
        let on = !a.quiet && !a.client.json && stderr_is_tty() && total.is_none_or(|t| t >= PROGRESS_MIN);
        Progress::new(label, total, on)
    };
    let user = a.user.clone();
    let files = |sbx: &Sandbox| match &user {
        Some(u) => sbx.files().user(u.clone()),
        None => sbx.files(),
    };
    let (bytes, dst) = match (place(&a.src), place(&a.dst)) {
        (Place::Remote { .. }, Place::Remote { .. }) => bail!("copying between two sandboxes is not supported: copy to a local file first"),
        (Place::Local(_) | Place::Std, Place::Local(_) | Place::Std) => bail!("neither {:?} nor {:?} is a sandbox path (`<id>:<path>`)", a.src, a.dst),
        (src, Place::Remote { id, path }) => {
            let sbx = client.get(&id).await?;
            let f = files(&sbx);
            let src_name = match &src {
                Place::Local(p) => p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                _ => String::new(),
            };
            // Into a directory: keep the source's name.
            let mut path = if path.is_empty() { ".".to_string() } else { path };
            let is_dir = path.ends_with('/') || f.stat(&path).await.map(|e| e.file_type == airlock_sdk::FileType::Directory).unwrap_or(false);
            if is_dir {
                if src_name.is_empty() {
                    bail!("{id}:{path} is a directory: name the destination file");
                }
                path = format!("{}/{src_name}", path.trim_end_matches('/'));
            }
            let written = match src {
                Place::Local(p) => {
                    let file = tokio::fs::File::open(&p).await.with_context(|| format!("opening {}", p.display()))?;
                    let meta = file.metadata().await?;
                    if meta.is_dir() {
                        bail!("{} is a directory (only files can be copied)", p.display());
                    }
                    let len = meta.len();
                    let mut progress = bar(format!("{} → {id}:{path}", p.display()), Some(len));
                    let stream = reader_stream(file).map(move |chunk| {
                        if let Ok(c) = &chunk {
                            progress.add(c.len() as u64);
                        }
                        chunk
                    });
                    f.write_stream(&path, stream, Some(len)).await?
                }
                _ => f.write_reader(&path, tokio::io::stdin(), None).await?,
            };
            let size = f.stat(&written.path).await.map(|e| e.size as u64).unwrap_or(0);
            (size, format!("{id}:{}", written.path))
        }
        (Place::Remote { id, path }, dst) => {
            let sbx = client.get(&id).await?;
            let f = files(&sbx);
            let entry = f.stat(&path).await?;
            if entry.file_type == airlock_sdk::FileType::Directory {
                bail!("{id}:{path} is a directory (only files can be copied)");
            }
            let total = entry.size.max(0) as u64;
            let mut stream = f.read_stream(&path).await?;
            let mut written = 0u64;
            let shown = match dst {
                Place::Std => {
                    let mut out = std::io::stdout().lock();
                    while let Some(c) = stream.next().await {
                        let c = c?;
                        out.write_all(&c)?;
                        written += c.len() as u64;
                    }
                    out.flush()?;
                    "stdout".to_string()
                }
                Place::Local(mut p) => {
                    if p.is_dir() || a.dst.ends_with('/') {
                        p = p.join(basename(&entry.path));
                    }
                    // Write beside the target and rename, so a failed copy
                    // never leaves a half-written file under its name.
                    let tmp = p.with_file_name(format!(".{}.airlock-part", p.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()));
                    let mut progress = bar(format!("{id}:{} → {}", entry.path, p.display()), Some(total));
                    let r: anyhow::Result<()> = async {
                        use tokio::io::AsyncWriteExt;
                        let mut out = tokio::fs::File::create(&tmp).await.with_context(|| format!("creating {}", tmp.display()))?;
                        while let Some(c) = stream.next().await {
                            let c = c?;
                            out.write_all(&c).await?;
                            written += c.len() as u64;
                            progress.add(c.len() as u64);
                        }
                        out.flush().await?;
                        out.sync_all().await?;
                        Ok(())
                    }
                    .await;
                    progress.finish();
                    if let Err(e) = r {
                        let _ = std::fs::remove_file(&tmp);
                        return Err(e);
                    }
                    std::fs::rename(&tmp, &p).with_context(|| format!("renaming to {}", p.display()))?;
                    p.display().to_string()
                }
                Place::Remote { .. } => unreachable!("handled above"),
            };
            if written != total {
                bail!("copied {written} bytes but the file has {total}: it changed during the copy?");
            }
            (written, shown)
        }
    };
    if a.client.json {
        print_json(&serde_json::json!({ "destination": dst, "bytes": bytes }))?;
    }
    Ok(0)
}

/// A local file as a stream of 256 KiB chunks.
fn reader_stream(file: tokio::fs::File) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static {
    futures_util::stream::unfold(Some(file), |f| async move {
        use tokio::io::AsyncReadExt;
        let mut f = f?;
        let mut buf = vec![0u8; 256 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(bytes::Bytes::from(buf)), Some(f)))
            }
            Err(e) => Some((Err(e), None)),
        }
    })
}

/// `airlock sbx batch`: streams each job's outcome as it finishes.
async fn batch(client: &Client, id: &str, file: &std::path::Path, json: bool) -> anyhow::Result<u8> {
    use airlock_sdk::batch::{BatchEvent, BatchJob};
    let text = if file == std::path::Path::new("-") {
        std::io::read_to_string(std::io::stdin()).context("reading the jobs from standard input")?
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?
    };
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Jobs {
        List(Vec<BatchJob>),
        Wrapped { jobs: Vec<BatchJob> },
    }
    let jobs = match serde_json::from_str::<Jobs>(&text).with_context(|| format!("{}: not a list of jobs ({{\"id\", \"code\", ...}})", file.display()))? {
        Jobs::List(j) | Jobs::Wrapped { jobs: j } => j,
    };
    let mut stream = client.batch_stream(id, jobs).await?;
    let mut results = Vec::new();
    while let Some(ev) = stream.next().await {
        match ev? {
            BatchEvent::Job(r) => {
                if !json {
                    let mark = if r.success {
                        "ok"
                    } else if r.timed_out {
                        "TIMEOUT"
                    } else {
                        "FAIL"
                    };
                    println!("{mark:<8} {:<24} {:>7} ms", r.job_id, r.duration);
                    for line in r.output.lines() {
                        println!("    {line}");
                    }
                    if let Some(e) = r.error.as_deref().filter(|_| !r.success) {
                        for line in e.lines() {
                            println!("    ! {line}");
                        }
                    }
                }
                results.push(r);
            }
            BatchEvent::Done(d) => {
                if json {
                    print_json(&serde_json::json!({ "results": results, "succeeded": d.succeeded, "failed": d.failed, "duration": d.duration }))?;
                } else {
                    println!("{} succeeded, {} failed in {} ms", d.succeeded, d.failed, d.duration);
                }
                return Ok(if d.failed > 0 { 1 } else { 0 });
            }
        }
    }
    bail!("the batch's stream ended before its summary (did the server stop?)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_places_are_recognised() {
        assert_eq!(place("abc123:/tmp/x"), Place::Remote { id: "abc123".into(), path: "/tmp/x".into() });
        assert_eq!(place("abc123:"), Place::Remote { id: "abc123".into(), path: "".into() });
        assert_eq!(place("./a:b"), Place::Local("./a:b".into()));
        assert_eq!(place("/tmp/a:b"), Place::Local("/tmp/a:b".into()));
        assert_eq!(place("Dir:x"), Place::Local("Dir:x".into()));
        assert_eq!(place("-"), Place::Std);
        assert_eq!(basename("/a/b/c.txt"), "c.txt");
    }

    #[test]
    fn statuses_follow_the_shell() {
        let end = |code: i32, exited: bool, status: &str| EndEvent { exit_code: code, exited, status: status.into(), error: None };
        assert_eq!(exit_status(&end(0, true, "exit status 0")), 0);
        assert_eq!(exit_status(&end(3, true, "exit status 3")), 3);
        assert_eq!(exit_status(&end(-1, false, "signal: killed")), 137);
        assert_eq!(exit_status(&end(-1, false, "signal: terminated")), 143);
        assert_eq!(exit_status(&end(-1, false, "signal: user defined signal 1")), 255);
    }

    #[test]
    fn tables_line_up() {
        let t = table(&["A", "BB"], &[vec!["xxx".into(), "y".into()], vec!["z".into(), "".into()]]);
        assert_eq!(t, "A    BB\nxxx  y\nz");
    }
}
