//! `airlock-bench`: how fast sandboxes start and how much an idle one costs.
//!
//! Measures, in one run and against a fresh data directory:
//!
//! * create-to-ready: from `Backend::create` to the agent answering
//!   `GET /health` with 204 on its unix socket, sequentially and with many
//!   creations at once, with and without internet (veth + NAT); destroy
//!   times and the CPU time a creation costs alongside;
//! * the floor: a bare namespaced process spawn with `unshare` (and `bwrap`
//!   when installed), so the create figures can be read as a ratio, and two
//!   pieces of a creation timed alone (cgroup attach, fsync'd state write);
//! * idle memory: cgroup usage, the agent's RSS, PSS and USS, and the host's
//!   `/proc/meminfo` changes, per sandbox;
//! * command round trip: `process.Process/Start` of `/bin/true` on a warm
//!   sandbox, straight to the agent.
//!
//! With `--server` it measures the full HTTP path instead, as the official
//! SDKs use it: it starts `airlock serve` as a child process and times, over
//! pooled HTTP/1.1 keep-alive connections, `POST /v2/sandboxes` (sequential
//! and all at once), `commands.run` (`process.Process/Start` with the
//! envelope the SDK sends, read to end-of-stream; also straight to the
//! agent's socket for comparison), and the code interpreter (`/execute` on a
//! warm and on fresh contexts, after the template's first build), with the
//! server's own log times and the CPU spent by server, sandbox and client.
//!
//! The server is started and stopped through airlock-testkit, as the
//! integration tests start theirs; the requests straight to an agent's
//! socket use the small blocking client below, not testkit's async envd
//! client, because the create-to-ready probe runs on plain threads (the
//! concurrent creates) and every series straight to the agent, in both
//! modes, must cost the client the same for the figures to compare.
//!
//! It needs root. Build with `cargo build --release -p airlock -p
//! airlock-bench` (it runs the `airlock` next to it) and run
//! `./target/release/airlock-bench` (`--help` for the knobs, `--json` for
//! machine-readable output, `--render FILE` to print a saved report).
//! Progress goes to stderr, results to stdout. BENCHMARKS.md has results.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use airlock_runtime::namespace::Options;
use airlock_runtime::{Backend, NamespaceBackend, SandboxInfo, SandboxSpec};
use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use serde_json::{json, Value};

#[derive(Parser, Debug)]
#[command(name = "airlock-bench", about = "Measures sandbox create-to-ready time, idle memory and command round trips (needs root)")]
struct Args {
    /// Sequential creations per network mode (also the number of floor spawns).
    #[arg(long, default_value_t = 20)]
    n: usize,
    /// Simultaneous creations per network mode (0 skips the concurrent phase).
    #[arg(long, default_value_t = 20)]
    concurrency: usize,
    /// Sandboxes kept idle for the memory measurement (0 skips it).
    #[arg(long, default_value_t = 10)]
    idle: usize,
    /// Seconds the idle sandboxes rest before memory is read.
    #[arg(long, default_value_t = 1.0)]
    idle_secs: f64,
    /// `process.Process/Start` round trips on a warm sandbox (0 skips them).
    #[arg(long, default_value_t = 200)]
    cmd_runs: usize,
    /// Untimed creations (and spawns) before each measured series.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Which network modes to measure.
    #[arg(long, value_enum, default_value_t = NetMode::Both)]
    network: NetMode,
    /// The `airlock` binary (default: next to this one).
    #[arg(long)]
    binary: Option<PathBuf>,
    /// Data directory (default: a fresh one under the temp dir, removed afterwards).
    #[arg(long)]
    root: Option<PathBuf>,
    /// Print one JSON document instead of tables.
    #[arg(long)]
    json: bool,
    /// Print the tables of a report saved earlier with --json, and exit (no root needed).
    #[arg(long, value_name = "FILE")]
    render: Option<PathBuf>,
    /// Measure through the HTTP API instead: start `airlock serve` and use it
    /// as the SDKs do (create, commands.run, concurrent creates, run_code).
    /// `--n` and `--concurrency` default to 50 here; `--root` is the server's
    /// data directory (reuse one to keep the code-interpreter template).
    #[arg(long)]
    server: bool,
    /// Server mode: warm `run_code("1+1")` round trips (0 with
    /// --interp-contexts 0 skips the code interpreter and its template build).
    #[arg(long, default_value_t = 100)]
    interp_runs: usize,
    /// Server mode: fresh Python contexts timed to their first result.
    #[arg(long, default_value_t = 5)]
    interp_contexts: usize,
    /// Server mode: runs of each state operation (snapshot, create from a
    /// snapshot, fork, filesystem pause and resume); 0 skips them.
    #[arg(long, default_value_t = 10)]
    state_runs: usize,
    /// Server mode: pooled and cold creates each (a warm pool of 8 is set
    /// up for it), and rounds of event fan-out to `--subscribers`; 0 skips.
    #[arg(long, default_value_t = 50)]
    ops_runs: usize,
    /// Server mode: plain and policed (a 50-entry egress policy) creates
    /// each, alternating, and a 100 MB download from a test host of the
    /// bench's own (a network namespace on a documentation range) with and
    /// without the egress proxy in the path; 0 skips.
    #[arg(long, default_value_t = 30)]
    egress_runs: usize,
    /// Server mode: event-stream subscribers for the fan-out measurement.
    #[arg(long, default_value_t = 100)]
    subscribers: usize,
    /// Server mode: instead of the measurements, a soak of this many
    /// seconds: `--concurrency` workers (at most 16) loop create, exec,
    /// upload, download, kill; errors, latencies and the server's memory
    /// and descriptors over time are reported.
    #[arg(long, default_value_t = 0)]
    soak: u64,
    /// Server mode: instead of the measurements, the scale scenarios: the
    /// bwrap floor, a growth curve of create latency up to this many live
    /// idle sandboxes (their host memory and the server's), commands.run and
    /// kill latency with them alive, then concurrency sweeps of 1/10/50/100.
    #[arg(long, default_value_t = 0)]
    scale: usize,
    /// Instead of starting a server, measure a running cluster of at least
    /// two nodes (their URLs, http://HOST:PORT, comma-separated, with
    /// `--api-key`): creates placed on the node asked vs forwarded to
    /// another, commands.run on a sandbox through its node vs through
    /// another, and a download through each (`scripts/bench-cluster` makes
    /// a cluster and runs this). `--n` runs of each.
    #[arg(long, value_delimiter = ',')]
    cluster: Vec<String>,
    /// The API key for `--cluster`.
    #[arg(long, env = "AIRLOCK_API_KEY")]
    api_key: Option<String>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq)]
enum NetMode {
    Off,
    On,
    Both,
}

const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Set by SIGINT/SIGTERM: the run stops at the next sandbox and still
/// destroys what it made.
static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

fn main() {
    let matches = <Args as clap::CommandFactory>::command().get_matches();
    let mut args = match <Args as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    if args.server {
        let default = |name: &str| matches.value_source(name) == Some(clap::parser::ValueSource::DefaultValue);
        if default("n") {
            args.n = 50;
        }
        if default("concurrency") {
            args.concurrency = 50;
        }
    }
    if let Some(path) = &args.render {
        match std::fs::read(path).map_err(anyhow::Error::from).and_then(|b| serde_json::from_slice::<Value>(&b).map_err(anyhow::Error::from)) {
            Ok(report) => print_report(&report),
            Err(e) => {
                eprintln!("airlock-bench: reading {}: {e:#}", path.display());
                std::process::exit(1);
            }
        }
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("airlock-bench: must run as root (it creates real sandboxes: namespaces, cgroups, veth pairs).");
        eprintln!("  try: sudo ./target/release/airlock-bench");
        std::process::exit(1);
    }
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t) };
    }
    let result = if !args.cluster.is_empty() {
        run_cluster_mode(&args)
    } else if args.server {
        run_server_mode(&args)
    } else {
        run(&args)
    };
    match result {
        Ok(report) => {
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
            } else {
                print_report(&report);
            }
        }
        Err(e) => {
            eprintln!("airlock-bench: {e:#}");
            std::process::exit(1);
        }
    }
}

// ---------------------------------------------------------------------------
// Setup and teardown

struct Bench<'a> {
    backend: &'a NamespaceBackend,
    base: airlock_runtime::RootFs,
    root: &'a Path,
    live: Mutex<Vec<String>>,
    counter: AtomicUsize,
    tag: String,
}

impl Bench<'_> {
    fn new_id(&self, phase: &str) -> String {
        format!("b{}{}x{}", phase, self.counter.fetch_add(1, Ordering::Relaxed), self.tag)
    }

    fn create(&self, phase: &str, internet: bool) -> Result<SandboxInfo> {
        check_interrupted()?;
        let mut spec = SandboxSpec::new(self.new_id(phase), self.base.clone());
        spec.internet = internet;
        self.live.lock().unwrap_or_else(|p| p.into_inner()).push(spec.id.clone());
        self.backend.create(&spec).with_context(|| format!("creating sandbox {}", spec.id))
    }

    fn destroy(&self, id: &str) -> Result<()> {
        self.backend.destroy(id).with_context(|| format!("destroying sandbox {id}"))?;
        self.live.lock().unwrap_or_else(|p| p.into_inner()).retain(|x| x != id);
        Ok(())
    }

    /// Destroys whatever is left (after an error midway).
    fn cleanup(&self) {
        let ids: Vec<String> = std::mem::take(&mut *self.live.lock().unwrap_or_else(|p| p.into_inner()));
        for id in ids {
            let _ = self.backend.destroy(&id);
        }
    }
}

fn agent_binary(args: &Args) -> Result<PathBuf> {
    let p = match &args.binary {
        Some(p) => p.clone(),
        None => {
            std::env::current_exe().context("locating this executable")?.parent().map(|d| d.join("airlock")).ok_or_else(|| anyhow!("no parent directory for this executable"))?
        }
    };
    if !p.is_file() {
        bail!("agent binary {} not found: build it next to the bench with `cargo build --release -p airlock -p airlock-bench` (or pass --binary)", p.display());
    }
    Ok(p)
}

fn run(args: &Args) -> Result<Value> {
    let binary = agent_binary(args)?;
    let (root, owned_root) = match &args.root {
        Some(r) => (r.clone(), false),
        None => (std::env::temp_dir().join(format!("airlock-bench-{}", std::process::id())), true),
    };
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let result = run_in(args, &binary, &root);
    if owned_root {
        if let Err(e) = std::fs::remove_dir_all(&root) {
            eprintln!("warning: removing {}: {e}", root.display());
        }
    }
    result
}

fn run_in(args: &Args, binary: &Path, root: &Path) -> Result<Value> {
    let want_net = args.network != NetMode::Off;
    progress("starting the namespace backend");
    let backend = NamespaceBackend::new(Options { root: root.to_path_buf(), binary: binary.to_path_buf(), network: want_net }).context("starting the namespace backend")?;
    let base = airlock_template::Store::new(root.join("templates")).ensure_base().context("preparing the base template")?.rootfs();
    let bench = Bench { backend: &backend, base, root, live: Mutex::new(Vec::new()), counter: AtomicUsize::new(0), tag: std::process::id().to_string() };
    let r = measure(args, binary, &bench);
    bench.cleanup();
    r
}

fn measure(args: &Args, binary: &Path, b: &Bench) -> Result<Value> {
    let load_before = loadavg();
    let started = unix_now();
    let mut notes: Vec<String> = Vec::new();

    let mut modes = Vec::new();
    if args.network != NetMode::On {
        modes.push(false);
    }
    if args.network != NetMode::Off {
        if b.backend.network_available() {
            modes.push(true);
        } else {
            notes.push("internet on: the host firewall/NAT could not be installed, so sandboxes with internet were skipped".into());
        }
    }

    // The floor first, then the sandboxes, so both see the same host.
    let floor = measure_floor(args, binary, &mut notes);
    let components = measure_components(args, b.root, &mut notes);

    let mut create = serde_json::Map::new();
    for &internet in &modes {
        let name = if internet { "internet_on" } else { "internet_off" };
        let mut m = serde_json::Map::new();
        progress(&format!("{name}: {} warm-up creations", args.warmup));
        for _ in 0..args.warmup {
            let info = b.create("w", internet)?;
            wait_ready(&info.socket)?;
            b.destroy(&info.id)?;
        }
        if args.n > 0 {
            progress(&format!("{name}: {} sequential creations", args.n));
            m.insert("sequential".into(), sequential(b, args.n, internet)?);
        }
        if args.concurrency > 0 {
            progress(&format!("{name}: {} concurrent creations", args.concurrency));
            m.insert("concurrent".into(), concurrent(b, args.concurrency, internet)?);
        }
        create.insert(name.into(), Value::Object(m));
    }

    // Ratios against the namespace floors.
    let mut ratios = serde_json::Map::new();
    for (fname, f) in floor.as_object().into_iter().flatten().filter(|(k, _)| ["unshare", "unshare_no_net", "bwrap"].contains(&k.as_str())) {
        let Some(fp50) = f.pointer("/p50_ms").and_then(Value::as_f64) else { continue };
        for (cname, c) in &create {
            if let Some(cp50) = c.pointer("/sequential/ready/p50_ms").and_then(Value::as_f64) {
                ratios.insert(format!("{cname}_p50 / {fname}_p50"), json!(round(cp50 / fp50, 2)));
            }
        }
    }

    let idle_internet = modes.last().copied().unwrap_or(false);
    let memory = if args.idle > 0 {
        progress(&format!("idle memory: {} sandboxes (internet {})", args.idle, on_off(idle_internet)));
        Some(idle_memory(b, args.idle, args.idle_secs, idle_internet)?)
    } else {
        None
    };

    let command = if args.cmd_runs > 0 {
        progress(&format!("command round trip: {} runs", args.cmd_runs));
        Some(command_round_trip(b, args.cmd_runs, idle_internet)?)
    } else {
        None
    };

    Ok(json!({
        "started_unix": started,
        "host": host_info(&load_before),
        "params": {
            "n": args.n, "concurrency": args.concurrency, "idle": args.idle, "idle_secs": args.idle_secs,
            "cmd_runs": args.cmd_runs, "warmup": args.warmup,
        },
        "floor": floor,
        "components": components,
        "create": Value::Object(create),
        "ratios": Value::Object(ratios),
        "memory": memory,
        "command": command,
        "notes": notes,
    }))
}

// ---------------------------------------------------------------------------
// Create-to-ready

fn sequential(b: &Bench, n: usize, internet: bool) -> Result<Value> {
    let (mut created, mut ready, mut destroyed) = (Vec::new(), Vec::new(), Vec::new());
    let (mut cpu_cg, mut cpu_launcher) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let r0 = children_cpu();
        let t0 = Instant::now();
        let info = b.create("s", internet)?;
        let t1 = Instant::now();
        wait_ready(&info.socket)?;
        let t2 = Instant::now();
        // CPU time, to tell work from waiting: the launcher (a child of
        // this process, so in RUSAGE_CHILDREN) and everything charged to
        // the sandbox's cgroup until ready (launcher after it joined, PID 1).
        cpu_launcher.push(children_cpu().saturating_sub(r0));
        cpu_cg.push(Duration::from_nanos(b.backend.usage(&info.id).map(|u| u.cpu_usage_ns).unwrap_or(0)));
        let t3 = Instant::now();
        b.destroy(&info.id)?;
        destroyed.push(t3.elapsed());
        created.push(t1 - t0);
        ready.push(t2 - t0);
    }
    Ok(json!({
        "create_returned": stats(&created),
        "ready": stats(&ready),
        "destroy": stats(&destroyed),
        "cpu_launcher_rusage": stats(&cpu_launcher),
        "cpu_sandbox_cgroup_at_ready": stats(&cpu_cg),
    }))
}

/// User + system CPU of waited-for children so far.
fn children_cpu() -> Duration {
    // SAFETY: getrusage fills the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn concurrent(b: &Bench, n: usize, internet: bool) -> Result<Value> {
    let barrier = Barrier::new(n + 1);
    type Created = Result<(SandboxInfo, Duration, Duration, Instant)>;
    let (start, results): (Instant, Vec<Created>) = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|_| {
                s.spawn(|| -> Created {
                    barrier.wait();
                    let t0 = Instant::now();
                    let info = b.create("c", internet)?;
                    let t1 = Instant::now();
                    wait_ready(&info.socket)?;
                    let t2 = Instant::now();
                    Ok((info, t1 - t0, t2 - t0, t2))
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        (start, handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow!("creation thread panicked")))).collect())
    });
    let mut infos = Vec::new();
    let (mut created, mut ready) = (Vec::new(), Vec::new());
    let mut last = start;
    let mut first_err = None;
    for r in results {
        match r {
            Ok((info, c, rd, end)) => {
                infos.push(info);
                created.push(c);
                ready.push(rd);
                last = last.max(end);
            }
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    let wall = last - start;

    // Destroy them all at once too.
    let t0 = Instant::now();
    let destroyed: Vec<Result<Duration>> = std::thread::scope(|s| {
        let hs: Vec<_> = infos
            .iter()
            .map(|info| {
                s.spawn(move || {
                    let t = Instant::now();
                    b.destroy(&info.id).map(|_| t.elapsed())
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow!("destroy thread panicked")))).collect()
    });
    let destroy_wall = t0.elapsed();
    if let Some(e) = first_err {
        return Err(e);
    }
    let destroyed: Vec<Duration> = destroyed.into_iter().collect::<Result<_>>()?;
    Ok(json!({
        "create_returned": stats(&created),
        "ready": stats(&ready),
        "wall_ms": ms(wall),
        "per_sandbox_wall_ms": round(ms(wall) / n as f64, 2),
        "destroy": stats(&destroyed),
        "destroy_wall_ms": ms(destroy_wall),
    }))
}

/// Blocks until the agent answers `GET /health` with 204. The socket is
/// bound and listening when `create` returns, so the first attempt simply
/// waits in the listen backlog until the agent serves it; retries only
/// cover an agent that closes the connection early.
fn wait_ready(socket: &Path) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        match http(socket, b"GET /health HTTP/1.1\r\nHost: sandbox\r\nConnection: close\r\n\r\n") {
            Ok(r) if r.status == 204 => return Ok(()),
            Ok(r) => bail!("GET /health answered {} (wanted 204)", r.status),
            Err(e) if Instant::now() > deadline => return Err(e).with_context(|| format!("agent at {} never became ready", socket.display())),
            Err(_) => std::thread::sleep(Duration::from_micros(200)),
        }
    }
}

// ---------------------------------------------------------------------------
// The floor

fn measure_floor(args: &Args, binary: &Path, notes: &mut Vec<String>) -> Value {
    let n = args.n.max(5);
    let mut out = serde_json::Map::new();
    let bin = binary.to_string_lossy().to_string();
    // (name, program, arguments, expected exit code)
    let mut series: Vec<(&str, &str, Vec<&str>, i32)> = vec![
        ("spawn_true", "/bin/true", vec![], 0),
        // The agent binary's own exec + startup: `__init` with a missing
        // config reads nothing and exits 2.
        ("exec_airlock", &bin, vec!["__init", "/nonexistent/launch.json"], 2),
        ("unshare", "unshare", vec!["--user", "--map-root-user", "--pid", "--fork", "--mount", "--uts", "--ipc", "--net", "--cgroup", "true"], 0),
        ("unshare_no_net", "unshare", vec!["--user", "--map-root-user", "--pid", "--fork", "--mount", "--uts", "--ipc", "--cgroup", "true"], 0),
    ];
    if which("bwrap").is_some() {
        series.push((
            "bwrap",
            "bwrap",
            vec![
                "--unshare-all",
                "--ro-bind",
                "/usr",
                "/usr",
                "--symlink",
                "usr/bin",
                "/bin",
                "--symlink",
                "usr/lib",
                "/lib",
                "--symlink",
                "usr/lib64",
                "/lib64",
                "--proc",
                "/proc",
                "--dev",
                "/dev",
                "true",
            ],
            0,
        ));
    } else {
        notes.push("bwrap is not installed: its floor was skipped".into());
    }
    for (name, prog, argv, code) in series {
        progress(&format!("floor: {n} x {name}"));
        let run = || -> Result<Duration> {
            let t = Instant::now();
            let st = Command::new(prog).args(&argv).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).output().with_context(|| format!("running {prog}"))?;
            let d = t.elapsed();
            if st.status.code() != Some(code) {
                bail!("{prog} {} failed ({}): {}", argv.join(" "), st.status, String::from_utf8_lossy(&st.stderr).trim());
            }
            Ok(d)
        };
        let r: Result<Vec<Duration>> = (0..args.warmup).map(|_| run()).chain((0..n).map(|_| check_interrupted().and_then(|_| run()))).collect();
        match r {
            Ok(v) => {
                out.insert(name.into(), stats(&v[args.warmup..]));
            }
            Err(e) => notes.push(format!("floor {name} skipped: {e:#}")),
        }
    }
    Value::Object(out)
}

/// Two pieces of every creation, timed on their own: moving a process into
/// a fresh sandbox cgroup (what the launcher does first), and the durable
/// write of a small JSON file in the data directory (`launch.json` and
/// `state.json` are written that way).
fn measure_components(args: &Args, root: &Path, notes: &mut Vec<String>) -> Value {
    let n = args.n.max(5);
    let mut out = serde_json::Map::new();
    progress(&format!("components: {n} x cgroup attach, {n} x fsync'd write"));
    match cgroup_attach(n, args.warmup) {
        Ok(v) => {
            out.insert("cgroup_attach".into(), stats(&v));
        }
        Err(e) => notes.push(format!("cgroup attach probe skipped: {e:#}")),
    }
    let run = || -> Result<Duration> {
        let (tmp, dst) = (root.join("bench-probe.tmp"), root.join("bench-probe.json"));
        let t = Instant::now();
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&[b' '; 400])?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &dst)?;
        let d = t.elapsed();
        std::fs::remove_file(&dst)?;
        Ok(d)
    };
    match (0..n).map(|_| run()).collect::<Result<Vec<_>>>() {
        Ok(v) => {
            out.insert("fsync_write_json".into(), stats(&v));
        }
        Err(e) => notes.push(format!("fsync probe skipped: {e:#}")),
    }
    Value::Object(out)
}

/// Times `SandboxCgroup::add_pid` of a fresh `sleep` into a probe cgroup
/// made by the runtime's own code, 50 ms apart (a sandbox creation's
/// cadence, long enough for the kernel's cgroup rwsem to go back to its
/// fast mode, as it does between creations).
fn cgroup_attach(n: usize, warmup: usize) -> Result<Vec<Duration>> {
    let cgs = airlock_runtime::cgroup::Cgroups::detect()?;
    let id = format!("benchprobe{}", std::process::id());
    let cg = cgs.create(&id, &airlock_runtime::Resources::default())?;
    let mut v = Vec::new();
    let r = (|| -> Result<()> {
        for i in 0..warmup + n {
            let mut child = Command::new("sleep").arg("30").stdin(Stdio::null()).spawn().context("spawning sleep")?;
            std::thread::sleep(Duration::from_millis(50));
            let t = Instant::now();
            let res = cg.add_pid(child.id());
            let d = t.elapsed();
            let _ = child.kill();
            let _ = child.wait();
            res?;
            if i >= warmup {
                v.push(d);
            }
        }
        Ok(())
    })();
    let _ = cg.remove();
    r.map(|_| v)
}

fn which(prog: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join(prog)).find(|p| p.is_file()))
}

// ---------------------------------------------------------------------------
// Idle memory

fn idle_memory(b: &Bench, k: usize, idle_secs: f64, internet: bool) -> Result<Value> {
    settle();
    let before = meminfo_all();
    let mut infos = Vec::new();
    let res = (|| -> Result<Value> {
        for _ in 0..k {
            let info = b.create("m", internet)?;
            wait_ready(&info.socket)?;
            infos.push(info);
        }
        std::thread::sleep(Duration::from_secs_f64(idle_secs));
        let after = meminfo_all();
        let (mut cg, mut rss, mut pss, mut uss, mut anon, mut file, mut kmem, mut pids) = (vec![], vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
        for info in &infos {
            let u = b.backend.usage(&info.id)?;
            cg.push(u.memory_bytes as f64);
            pids.push(u.pids as f64);
            let sm = smaps_rollup(info.pid).with_context(|| format!("reading /proc/{}/smaps_rollup", info.pid))?;
            rss.push(sm.0 as f64 * 1024.0);
            pss.push(sm.1 as f64 * 1024.0);
            uss.push(sm.2 as f64 * 1024.0);
            if let Some(st) = memcg_stat(info.pid) {
                anon.push(st.0 as f64);
                file.push(st.1 as f64);
                if let Some(k) = st.2 {
                    kmem.push(k as f64);
                }
            }
        }
        // Host-wide /proc/meminfo changes per sandbox, in MiB: a drop in
        // MemAvailable/MemFree, growth in everything else.
        let mut host = serde_json::Map::new();
        for key in HOST_KEYS {
            if let (Some(a), Some(b)) = (before.get(*key), after.get(*key)) {
                let d = if key.starts_with("Mem") { *a as f64 - *b as f64 } else { *b as f64 - *a as f64 };
                host.insert((*key).into(), json!(round(d * 1024.0 / k as f64 / MIB, 3)));
            }
        }
        let delta = host.get("MemAvailable").cloned();
        Ok(json!({
            "sandboxes": k,
            "internet": internet,
            "cgroup_memory": mib_stats(&cg),
            "cgroup_anon": mib_stats(&anon),
            "cgroup_file": mib_stats(&file),
            "cgroup_kmem": mib_stats(&kmem),
            "agent_rss": mib_stats(&rss),
            "agent_pss": mib_stats(&pss),
            "agent_uss": mib_stats(&uss),
            "tasks": mean_max(&pids, 1.0),
            "host_memavailable_delta_per_sandbox_mib": delta,
            "host_meminfo_delta_per_sandbox_mib": Value::Object(host),
            "host_memavailable_after_kib": after.get("MemAvailable"),
        }))
    })();
    // In parallel: a destroy waits for PID 1 to be reaped, which can be slow.
    std::thread::scope(|s| {
        for chunk in infos.chunks(infos.len().div_ceil(16).max(1)) {
            s.spawn(move || {
                for info in chunk {
                    let _ = b.destroy(&info.id);
                }
            });
        }
    });
    // The same figure the other way round: what destroying gave back. A
    // large mismatch with the drop on creation means other processes moved
    // MemAvailable meanwhile and neither figure is trustworthy.
    let mut res = res;
    if let Ok(Value::Object(m)) = &mut res {
        std::thread::sleep(Duration::from_secs(1));
        if let (Some(a), Some(b)) = (meminfo_all().get("MemAvailable"), m.get("host_memavailable_after_kib").and_then(Value::as_u64)) {
            m.insert("host_memavailable_released_per_sandbox_mib".into(), json!(round((*a as f64 - b as f64) * 1024.0 / k as f64 / MIB, 2)));
        }
        m.remove("host_memavailable_after_kib");
    }
    res
}

/// Lets the page cache and slab settle a little before a host-wide reading.
fn settle() {
    std::thread::sleep(Duration::from_millis(300));
}

/// (Rss, Pss, Uss = Private_Clean + Private_Dirty) in KiB.
fn smaps_rollup(pid: u32) -> Result<(u64, u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    let field = |name: &str| s.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok()));
    let uss = field("Private_Clean:").unwrap_or(0) + field("Private_Dirty:").unwrap_or(0);
    Ok((field("Rss:").ok_or_else(|| anyhow!("no Rss"))?, field("Pss:").ok_or_else(|| anyhow!("no Pss"))?, uss))
}

/// (anon, file, kmem) bytes from the memory cgroup of `pid`, v1 or v2.
fn memcg_stat(pid: u32) -> Option<(u64, u64, Option<u64>)> {
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let stat_of = |dir: &Path| -> Option<Vec<(String, u64)>> {
        let s = std::fs::read_to_string(dir.join("memory.stat")).ok()?;
        Some(s.lines().filter_map(|l| l.split_once(' ').and_then(|(k, v)| v.trim().parse().ok().map(|v| (k.to_string(), v)))).collect())
    };
    let get = |st: &[(String, u64)], k: &str| st.iter().find(|(n, _)| n == k).map(|(_, v)| *v);
    for line in cg.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrl, path) = (parts.next()?, parts.next()?, parts.next()?);
        if ctrl.split(',').any(|c| c == "memory") {
            let dir = Path::new("/sys/fs/cgroup/memory").join(path.trim_start_matches('/'));
            let st = stat_of(&dir)?;
            let kmem = std::fs::read_to_string(dir.join("memory.kmem.usage_in_bytes")).ok().and_then(|s| s.trim().parse().ok());
            return Some((get(&st, "rss")?, get(&st, "cache")?, kmem));
        }
        if ctrl.is_empty() && Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            let dir = Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/'));
            let st = stat_of(&dir)?;
            return Some((get(&st, "anon")?, get(&st, "file")?, get(&st, "kernel")));
        }
    }
    None
}

// ---------------------------------------------------------------------------
// Command round trip

fn command_round_trip(b: &Bench, runs: usize, internet: bool) -> Result<Value> {
    let info = b.create("r", internet)?;
    let res = (|| -> Result<Value> {
        wait_ready(&info.socket)?;
        let health = |_: usize| -> Result<Duration> {
            let t = Instant::now();
            let r = http(&info.socket, b"GET /health HTTP/1.1\r\nHost: sandbox\r\nConnection: close\r\n\r\n")?;
            if r.status != 204 {
                bail!("GET /health answered {}", r.status);
            }
            Ok(t.elapsed())
        };
        let body = airlock_proto::connect::envelope(0, br#"{"process":{"cmd":"/bin/true"},"stdin":false}"#);
        let mut req = format!(
            "POST /process.Process/Start HTTP/1.1\r\nHost: sandbox\r\nContent-Type: application/connect+json\r\nConnect-Protocol-Version: 1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(&body);
        let start = |_: usize| -> Result<Duration> {
            check_interrupted()?;
            let t = Instant::now();
            let r = http(&info.socket, &req)?;
            let d = t.elapsed();
            check_process_stream(&r)?;
            Ok(d)
        };
        for i in 0..5 {
            start(i)?;
            health(i)?;
        }
        let h: Vec<Duration> = (0..runs).map(health).collect::<Result<_>>()?;
        let s: Vec<Duration> = (0..runs).map(start).collect::<Result<_>>()?;
        Ok(json!({ "start_bin_true": stats(&s), "health": stats(&h) }))
    })();
    let _ = b.destroy(&info.id);
    res
}

/// Checks a `process.Process/Start` response: 200, a start event, an end
/// event with exit code 0, and an end-of-stream message without error.
fn check_process_stream(r: &HttpResp) -> Result<()> {
    if r.status != 200 {
        bail!("Start answered {}: {}", r.status, String::from_utf8_lossy(&r.body));
    }
    let mut dec = airlock_proto::connect::EnvelopeDecoder::new();
    dec.push(&r.body);
    let (mut started, mut exit) = (false, None);
    while let Some(env) = dec.next_envelope().context("bad Connect framing")? {
        let v: Value = serde_json::from_slice(&env.payload).context("Connect message is not JSON")?;
        if env.is_end_stream() {
            if let Some(e) = v.get("error") {
                bail!("stream ended with error: {e}");
            }
            return match (started, exit) {
                (true, Some(0)) => Ok(()),
                _ => bail!("stream ended without start and a zero exit (started {started}, exit {exit:?})"),
            };
        }
        let ev = &v["event"];
        if ev.get("start").is_some() {
            started = true;
        }
        if let Some(e) = ev.get("end") {
            exit = Some(e["exitCode"].as_i64().unwrap_or(0));
        }
    }
    dec.finish().context("truncated Connect envelope")?;
    bail!("stream ended without an end-of-stream message")
}

// ---------------------------------------------------------------------------
// A tiny HTTP/1.1 client over a unix socket

struct HttpResp {
    status: u16,
    body: Vec<u8>,
}

/// Sends `req` (which must ask for `Connection: close`) and reads the
/// response to end of file.
fn http(socket: &Path, req: &[u8]) -> Result<HttpResp> {
    let mut s = UnixStream::connect(socket).with_context(|| format!("connecting to {}", socket.display()))?;
    s.set_read_timeout(Some(READY_TIMEOUT))?;
    s.write_all(req)?;
    let mut buf = Vec::with_capacity(1024);
    s.read_to_end(&mut buf)?;
    let end = find(&buf, b"\r\n\r\n").ok_or_else(|| anyhow!("incomplete HTTP response ({} bytes)", buf.len()))?;
    let head = std::str::from_utf8(&buf[..end]).context("HTTP head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|c| c.parse().ok()).ok_or_else(|| anyhow!("bad status line"))?;
    let chunked = lines.any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding:") && l.to_ascii_lowercase().contains("chunked"));
    let raw = &buf[end + 4..];
    let body = if chunked { dechunk(raw).ok_or_else(|| anyhow!("bad chunked body"))? } else { raw.to_vec() };
    Ok(HttpResp { status, body })
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let i = find(b, b"\r\n")?;
        let size = usize::from_str_radix(std::str::from_utf8(&b[..i]).ok()?.split(';').next()?.trim(), 16).ok()?;
        b = &b[i + 2..];
        if size == 0 {
            return Some(out);
        }
        if b.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

// ---------------------------------------------------------------------------
// Server mode: the full HTTP path, as the official SDKs use it
//
// `airlock serve` runs as a child process (in its own process group, so a
// Ctrl-C reaches only this program, which then cleans up in order: DELETE
// what it created while the server still runs, stop the server, destroy
// leftovers with `airlock runtime list/destroy`). All traffic goes to the
// server's one TCP port over HTTP/1.1 keep-alive connections from a pool,
// as the SDKs' httpx / undici clients keep them; sandbox traffic carries
// `E2b-Sandbox-Id` / `E2b-Sandbox-Port` / `X-Access-Token` exactly like
// the SDKs with `E2B_SANDBOX_URL` pointed at the server.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

/// Long enough for the code interpreter's first build (a pip install of
/// the data stack from PyPI).
const BUILD_TIMEOUT: Duration = Duration::from_secs(30 * 60);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A pool of keep-alive HTTP/1.1 connections to one address.
struct Pool {
    addr: std::net::SocketAddr,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
    opened: AtomicUsize,
}

/// A response read to its end, with the arrival time of every data frame
/// (as the body length after it), so times to a given message can be read.
struct Reply {
    status: u16,
    body: Vec<u8>,
    frames: Vec<(usize, Instant)>,
    done: Instant,
}

impl Reply {
    /// When the byte at `offset` (exclusive end) had arrived.
    fn time_at(&self, offset: usize) -> Instant {
        self.frames.iter().find(|(len, _)| *len >= offset).map(|(_, t)| *t).unwrap_or(self.done)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).chars().take(500).collect()
    }
}

impl Pool {
    fn new(addr: std::net::SocketAddr) -> Self {
        Self { addr, idle: Mutex::new(Vec::new()), opened: AtomicUsize::new(0) }
    }

    async fn checkout(&self) -> Result<SendRequest<Full<Bytes>>> {
        loop {
            let s = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let Some(mut s) = s else { break };
            if !s.is_closed() && s.ready().await.is_ok() {
                return Ok(s);
            }
        }
        let tcp = tokio::net::TcpStream::connect(self.addr).await.with_context(|| format!("connecting to {}", self.addr))?;
        tcp.set_nodelay(true)?;
        let (s, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(tcp)).await.context("HTTP handshake")?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        self.opened.fetch_add(1, Ordering::Relaxed);
        Ok(s)
    }

    /// Sends `req` on a pooled connection and reads the whole response.
    async fn send(&self, req: http::Request<Full<Bytes>>, limit: Duration) -> Result<Reply> {
        let what = format!("{} {}", req.method(), req.uri());
        tokio::time::timeout(limit, self.send_inner(req)).await.map_err(|_| anyhow!("{what}: no complete answer within {limit:?}"))?.with_context(|| what)
    }

    async fn send_inner(&self, req: http::Request<Full<Bytes>>) -> Result<Reply> {
        let mut s = self.checkout().await?;
        let resp = s.send_request(req).await?;
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        let (mut buf, mut frames) = (Vec::new(), Vec::new());
        while let Some(fr) = body.frame().await {
            if let Ok(d) = fr?.into_data() {
                buf.extend_from_slice(&d);
                frames.push((buf.len(), Instant::now()));
            }
        }
        let done = Instant::now();
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).push(s);
        Ok(Reply { status, body: buf, frames, done })
    }

    /// Opens connections until `n` are idle in the pool (untimed), so a
    /// burst of requests does not pay for TCP set-up.
    async fn prewarm(&self, n: usize, host: &str) -> Result<()> {
        let have = self.idle.lock().unwrap_or_else(|p| p.into_inner()).len();
        let reqs = (have..n).map(|_| self.send(build_req("GET", "/health", host, &[], Vec::new()), REQUEST_TIMEOUT));
        for r in futures_util::future::join_all(reqs).await {
            r?;
        }
        Ok(())
    }
}

fn build_req(method: &str, path: &str, host: &str, headers: &[(&str, &str)], body: Vec<u8>) -> http::Request<Full<Bytes>> {
    let mut b = http::Request::builder().method(method).uri(path).header("host", host);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::from(body))).unwrap_or_else(|_| http::Request::new(Full::new(Bytes::new())))
}

/// A sandbox created through the API.
#[derive(Clone)]
struct Sbx {
    id: String,
    token: String,
}

struct Srv {
    server: airlock_testkit::Server,
    pool: Pool,
    host: String,
    live: Mutex<Vec<String>>,
    loads: Mutex<Vec<(String, String)>>,
    server_pid: u32,
}

impl Srv {
    fn api_headers(&self) -> Vec<(&str, &str)> {
        vec![("x-api-key", self.server.key()), ("content-type", "application/json"), ("user-agent", "e2b-python-sdk/2.63.0")]
    }

    fn note_load(&self, phase: &str) {
        let l = loadavg();
        progress(&format!("{phase} (load average {l})"));
        self.loads.lock().unwrap_or_else(|p| p.into_inner()).push((phase.to_string(), l));
    }

    /// Server log size: phases remember it to read their own lines later.
    fn log_mark(&self) -> u64 {
        std::fs::metadata(self.server.log_path()).map(|m| m.len()).unwrap_or(0)
    }

    /// `POST /v2/sandboxes` until 201; the elapsed time is the SDK's create.
    async fn create(&self, template: &str, internet: bool, limit: Duration) -> Result<(Sbx, Duration)> {
        let mut body = json!({"templateID": template, "timeout": 300});
        if !internet {
            body["allow_internet_access"] = json!(false);
        }
        let req = build_req("POST", "/v2/sandboxes", &self.host, &self.api_headers(), body.to_string().into_bytes());
        let t = Instant::now();
        let r = self.pool.send(req, limit).await?;
        let d = r.done - t;
        if r.status != 201 {
            bail!("create answered {}: {}", r.status, r.text());
        }
        let v: Value = serde_json::from_slice(&r.body).context("create response is not JSON")?;
        let id = v["sandboxID"].as_str().ok_or_else(|| anyhow!("no sandboxID in {v}"))?.to_string();
        let token = v["envdAccessToken"].as_str().unwrap_or_default().to_string();
        self.live.lock().unwrap_or_else(|p| p.into_inner()).push(id.clone());
        Ok((Sbx { id, token }, d))
    }

    /// A control-API call that must answer `want`: its JSON and latency.
    async fn call(&self, method: &str, path: &str, body: Value, want: u16) -> Result<(Value, Duration)> {
        let req = build_req(method, path, &self.host, &self.api_headers(), if body.is_null() { Vec::new() } else { body.to_string().into_bytes() });
        let t = Instant::now();
        let r = self.pool.send(req, REQUEST_TIMEOUT).await?;
        let d = r.done - t;
        if r.status != want {
            bail!("{method} {path} answered {} (wanted {want}): {}", r.status, r.text());
        }
        Ok((serde_json::from_slice(&r.body).unwrap_or(Value::Null), d))
    }

    async fn kill(&self, id: &str) -> Result<Duration> {
        let req = build_req("DELETE", &format!("/sandboxes/{id}"), &self.host, &self.api_headers(), Vec::new());
        let t = Instant::now();
        let r = self.pool.send(req, REQUEST_TIMEOUT).await?;
        let d = r.done - t;
        if r.status != 204 {
            bail!("DELETE /sandboxes/{id} answered {}: {}", r.status, r.text());
        }
        self.live.lock().unwrap_or_else(|p| p.into_inner()).retain(|x| x != id);
        Ok(d)
    }

    /// Deletes whatever this run still has (after an error or Ctrl-C).
    async fn kill_live(&self) {
        let ids: Vec<String> = self.live.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if !ids.is_empty() {
            progress(&format!("deleting {} sandbox(es) left by this run", ids.len()));
        }
        for chunk in ids.chunks(16) {
            let _ = futures_util::future::join_all(chunk.iter().map(|id| self.kill(id))).await;
        }
    }

    /// Headers of sandbox traffic, as the SDKs send them through `E2B_SANDBOX_URL`.
    fn sandbox_headers<'a>(&self, s: &'a Sbx, port: &'a str) -> Vec<(&'a str, &'a str)> {
        let mut h = vec![("e2b-sandbox-id", s.id.as_str()), ("e2b-sandbox-port", port)];
        if !s.token.is_empty() {
            h.push(("x-access-token", s.token.as_str()));
        }
        h
    }

    /// `commands.run(...)`: one `process.Process/Start` stream, read to the
    /// end-of-stream envelope. Returns the time to that envelope.
    async fn start(&self, s: &Sbx, body: &[u8]) -> Result<Duration> {
        let mut h = self.sandbox_headers(s, "49983");
        h.extend([
            ("content-type", "application/connect+json"),
            ("connect-protocol-version", "1"),
            ("connect-timeout-ms", "60000"),
            ("connect-accept-encoding", "identity"),
            ("connect-content-encoding", "identity"),
            ("keepalive-ping-interval", "50"),
            ("user-agent", "connectrpc/0.12.1"),
        ]);
        process_start(&self.pool, &self.host, &h, body).await
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)], want: u16) -> Result<Duration> {
        let req = build_req("GET", path, &self.host, headers, Vec::new());
        let t = Instant::now();
        let r = self.pool.send(req, REQUEST_TIMEOUT).await?;
        if r.status != want {
            bail!("GET {path} answered {} (wanted {want}): {}", r.status, r.text());
        }
        Ok(r.done - t)
    }

    /// `run_code`: `POST /execute` on port 49999, NDJSON read to
    /// `end_of_execution`. Returns (time to the first result, time to the end).
    async fn execute(&self, s: &Sbx, code: &str, context: Option<&str>, want_text: Option<&str>, limit: Duration) -> Result<(Option<Duration>, Duration)> {
        let mut h = self.sandbox_headers(s, "49999");
        h.extend([("content-type", "application/json"), ("user-agent", "e2b-code-interpreter-python/2.11.5")]);
        let body = json!({"code": code, "context_id": context, "language": Value::Null, "env_vars": Value::Null}).to_string().into_bytes();
        let req = build_req("POST", "/execute", &self.host, &h, body);
        let t = Instant::now();
        let r = self.pool.send(req, limit).await?;
        if r.status != 200 {
            bail!("/execute answered {}: {}", r.status, r.text());
        }
        let (first, end) = ndjson_offsets(&r.body, want_text)?;
        Ok((first.map(|o| r.time_at(o) - t), r.time_at(end) - t))
    }

    /// `create_code_context(language="python")`.
    async fn new_context(&self, s: &Sbx) -> Result<(String, Duration)> {
        let mut h = self.sandbox_headers(s, "49999");
        h.push(("content-type", "application/json"));
        let req = build_req("POST", "/contexts", &self.host, &h, br#"{"language":"python"}"#.to_vec());
        let t = Instant::now();
        let r = self.pool.send(req, REQUEST_TIMEOUT).await?;
        let d = r.done - t;
        if r.status != 200 {
            bail!("POST /contexts answered {}: {}", r.status, r.text());
        }
        let v: Value = serde_json::from_slice(&r.body).context("context is not JSON")?;
        Ok((v["id"].as_str().ok_or_else(|| anyhow!("no context id in {v}"))?.to_string(), d))
    }

    async fn delete_context(&self, s: &Sbx, id: &str) -> Result<()> {
        let h = self.sandbox_headers(s, "49999");
        let r = self.pool.send(build_req("DELETE", &format!("/contexts/{id}"), &self.host, &h, Vec::new()), REQUEST_TIMEOUT).await?;
        if r.status / 100 != 2 {
            bail!("DELETE /contexts/{id} answered {}", r.status);
        }
        Ok(())
    }

    /// The agent's socket, for the same requests without the server.
    fn agent_socket(&self, s: &Sbx) -> PathBuf {
        self.server.data.join("sandboxes").join(&s.id).join("agent.sock")
    }

    /// The sandbox's PID 1 (its agent), from the runtime's state file.
    fn agent_pid(&self, s: &Sbx) -> Option<u32> {
        let st: Value = serde_json::from_slice(&std::fs::read(self.server.data.join("sandboxes").join(&s.id).join("state.json")).ok()?).ok()?;
        st["pid"].as_u64().map(|p| p as u32)
    }

    fn cpu(&self, s: &Sbx) -> Cpu {
        Cpu::now(self.server_pid, self.agent_pid(s))
    }

    /// Server-side times from the JSON log between two marks: the API
    /// handler's `elapsed_ms` for 201 creates, the service's `sandbox
    /// created` (runtime create + template start + store insert) and the
    /// runtime's own `sandbox created` (`Backend::create`, logged at debug).
    fn server_times(&self, from: u64, to: u64) -> Value {
        let Ok(all) = std::fs::read(self.server.log_path()) else { return Value::Null };
        let seg = &all[(from as usize).min(all.len())..(to as usize).min(all.len())];
        let (mut handler, mut created, mut runtime) = (Vec::new(), Vec::new(), Vec::new());
        for line in seg.split(|b| *b == b'\n') {
            let Ok(v) = serde_json::from_slice::<Value>(line) else { continue };
            let f = &v["fields"];
            if let (Some("sandbox created"), Some(us)) = (f["message"].as_str(), f["elapsed_us"].as_u64()) {
                runtime.push(Duration::from_micros(us));
                continue;
            }
            let Some(ms) = f["elapsed_ms"].as_f64() else { continue };
            let d = Duration::from_secs_f64(ms / 1000.0);
            match f["message"].as_str() {
                Some("sandbox created") => created.push(d),
                // The path is a field of the request's span (`api`), or of
                // the event itself in older servers.
                Some("api request") if (f["path"] == "/v2/sandboxes" || v["span"]["path"] == "/v2/sandboxes") && f["status"] == 201 => handler.push(d),
                _ => {}
            }
        }
        json!({ "api_handler": stats(&handler), "service_create": stats(&created), "runtime_create": stats(&runtime) })
    }
}

/// `process.Process/Start` with `headers`, read to its end-of-stream
/// envelope: the time to it.
async fn process_start(pool: &Pool, host: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<Duration> {
    let req = build_req("POST", "/process.Process/Start", host, headers, body.to_vec());
    let t = Instant::now();
    let r = pool.send(req, REQUEST_TIMEOUT).await?;
    check_process_stream(&HttpResp { status: r.status, body: r.body.clone() })?;
    let eos = connect_eos_offset(&r.body).ok_or_else(|| anyhow!("no end-of-stream envelope"))?;
    Ok(r.time_at(eos) - t)
}

/// Byte offset just past the end-of-stream envelope of a Connect stream.
fn connect_eos_offset(body: &[u8]) -> Option<usize> {
    let mut dec = airlock_proto::connect::EnvelopeDecoder::new();
    dec.push(body);
    let mut off = 0;
    while let Ok(Some(env)) = dec.next_envelope() {
        // Each envelope is its flag byte, its length and its payload.
        off += 5 + env.payload.len();
        if env.is_end_stream() {
            return Some(off);
        }
    }
    None
}

/// Offsets (line ends) of the first `result` line and of `end_of_execution`
/// in an /execute NDJSON body; an `error` line fails, and so does a main
/// result other than `want_text`.
fn ndjson_offsets(body: &[u8], want_text: Option<&str>) -> Result<(Option<usize>, usize)> {
    let (mut off, mut first) = (0, None);
    for line in body.split_inclusive(|b| *b == b'\n') {
        off += line.len();
        let Ok(v) = serde_json::from_slice::<Value>(line) else { continue };
        match v["type"].as_str() {
            Some("result") => {
                if let (Some(w), true) = (want_text, v["is_main_result"].as_bool().unwrap_or(false)) {
                    if v["text"].as_str() != Some(w) {
                        bail!("main result {:?}, wanted {w:?}", v["text"]);
                    }
                }
                first.get_or_insert(off);
            }
            Some("error") => bail!("execution failed: {} {}", v["name"], v["value"]),
            Some("end_of_execution") => return Ok((first, off)),
            _ => {}
        }
    }
    bail!("no end_of_execution line in {}", String::from_utf8_lossy(body).chars().take(300).collect::<String>())
}

/// CPU time (ns) of every live thread of `pid`, from `/proc/<pid>/task/*/schedstat`
/// (threads that exited in between are not counted).
fn task_cpu_ns(pid: u32) -> u64 {
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    rd.flatten().filter_map(|e| std::fs::read_to_string(e.path().join("schedstat")).ok()).filter_map(|s| s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok())).sum()
}

/// CPU time (ns) charged to the cgroup of `pid` (a sandbox's agent: the
/// agent and every process it ran, exited ones included).
fn cgroup_cpu_ns(pid: u32) -> Option<u64> {
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    for line in cg.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrl, path) = (parts.next()?, parts.next()?, parts.next()?);
        let path = path.trim_start_matches('/');
        if ctrl.split(',').any(|c| c == "cpuacct") {
            return std::fs::read_to_string(Path::new("/sys/fs/cgroup/cpuacct").join(path).join("cpuacct.usage")).ok()?.trim().parse().ok();
        }
        if ctrl.is_empty() && Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            let st = std::fs::read_to_string(Path::new("/sys/fs/cgroup").join(path).join("cpu.stat")).ok()?;
            return st.lines().find_map(|l| l.strip_prefix("usage_usec ")).and_then(|v| v.trim().parse::<u64>().ok()).map(|us| us * 1000);
        }
    }
    None
}

/// CPU used so far by the server, the sandbox and this client.
#[derive(Clone, Copy)]
struct Cpu {
    server: u64,
    sandbox: Option<u64>,
    client: u64,
}

impl Cpu {
    fn now(server_pid: u32, agent_pid: Option<u32>) -> Self {
        Cpu { server: task_cpu_ns(server_pid), sandbox: agent_pid.and_then(cgroup_cpu_ns), client: task_cpu_ns(std::process::id()) }
    }
}

/// Host-wide CPU from `/proc/stat` plus the server's own: its live
/// threads and its reaped children (the per-sandbox launchers).
struct HostCpu {
    busy: u64,
    total: u64,
    server_threads_ns: u64,
    server_children_ticks: u64,
    at: Instant,
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

impl HostCpu {
    fn now(server_pid: u32) -> Self {
        let st = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let v: Vec<u64> = st.lines().next().unwrap_or("").split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
        // user nice system idle iowait irq softirq steal
        let get = |i: usize| v.get(i).copied().unwrap_or(0);
        let total = (0..8).map(get).sum();
        let busy = total - get(3) - get(4);
        let pst = std::fs::read_to_string(format!("/proc/{server_pid}/stat")).unwrap_or_default();
        let after: Vec<u64> = pst.rsplit_once(')').map(|(_, r)| r.split_whitespace().filter_map(|x| x.parse().ok()).collect()).unwrap_or_default();
        // After the comm: state(skipped, not a number) ppid ... utime(13th field → index 10 here) stime cutime cstime.
        let children = after.get(12).copied().unwrap_or(0) + after.get(13).copied().unwrap_or(0);
        HostCpu { busy, total, server_threads_ns: task_cpu_ns(server_pid), server_children_ticks: children, at: Instant::now() }
    }

    /// CPU spent between `before` and now: host-wide, by the server and by
    /// its launchers, with the share of all CPUs that was busy.
    fn since(&self, before: &HostCpu, n: usize) -> Value {
        let hz = clock_ticks();
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
        let wall_ms = (self.at - before.at).as_secs_f64() * 1000.0;
        let host_busy_ms = self.busy.saturating_sub(before.busy) as f64 / hz * 1000.0;
        let total_ms = self.total.saturating_sub(before.total) as f64 / hz * 1000.0;
        let server_ms = self.server_threads_ns.saturating_sub(before.server_threads_ns) as f64 / 1e6;
        let launchers_ms = self.server_children_ticks.saturating_sub(before.server_children_ticks) as f64 / hz * 1000.0;
        json!({
            "wall_ms": round(wall_ms, 1),
            "host_busy_pct": if total_ms > 0.0 { round(100.0 * host_busy_ms / total_ms, 1) } else { 0.0 },
            "host_busy_cpu_ms": round(host_busy_ms, 1),
            "host_capacity_cpu_ms": round(wall_ms * cpus, 1),
            "server_threads_cpu_ms": round(server_ms, 1),
            "launchers_cpu_ms": round(launchers_ms, 1),
            "server_and_launchers_per_create_ms": round((server_ms + launchers_ms) / n.max(1) as f64, 2),
        })
    }
}

fn start_envelope(cmd: &str, args: &[&str]) -> Vec<u8> {
    let mut p = json!({"cmd": cmd});
    if !args.is_empty() {
        p["args"] = json!(args);
    }
    airlock_proto::connect::json_envelope(&json!({"process": p, "stdin": false})).to_vec()
}

fn random_hex(n: usize) -> Result<String> {
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf)).context("reading /dev/urandom")?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn run_server_mode(args: &Args) -> Result<Value> {
    let binary = agent_binary(args)?;
    let (data, owned) = match &args.root {
        Some(r) => (r.clone(), false),
        None => (std::env::temp_dir().join(format!("airlock-bench-server-{}", std::process::id())), true),
    };
    std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
    let log = std::env::temp_dir().join(format!("airlock-bench-server-{}.log", std::process::id()));
    let key = format!("e2b_{}", random_hex(20)?);
    progress(&format!("starting `airlock serve`, data dir {}, log {}", data.display(), log.display()));
    let t_spawn = Instant::now();
    let started = airlock_testkit::Server::builder(&binary)
        .data_dir(&data)
        .log_file(&log)
        .api_key(key)
        .args(&["--log-format", "json"])
        // The growth curve may go past the default limit of 1,000.
        .args(&["--max-sandboxes", &(args.scale + 200).max(1000).to_string()])
        // The runtime logs its own create time at debug level.
        .env("RUST_LOG", "info,airlock_runtime::namespace=debug")
        .own_process_group()
        .try_start();
    let startup = t_spawn.elapsed();
    let (result, clean) = match started {
        Ok(server) => serve_and_measure(args, server, startup),
        // testkit has already stopped the failed server and destroyed what it left.
        Err(e) => (Err(anyhow::Error::new(e).context("starting the server")), true),
    };
    if result.is_err() {
        eprintln!("[bench] server log kept at {}", log.display());
    } else {
        let _ = std::fs::remove_file(&log);
    }
    if owned {
        if clean && !has_mounts_under(&data) {
            if let Err(e) = std::fs::remove_dir_all(&data) {
                eprintln!("warning: removing {}: {e}", data.display());
            }
        } else {
            eprintln!("warning: leaving {} in place: sandboxes or mounts remain under it", data.display());
        }
    }
    result
}

/// Measures against a started server, then stops it: the report, and
/// whether no sandbox was left behind.
fn serve_and_measure(args: &Args, server: airlock_testkit::Server, startup: Duration) -> (Result<Value>, bool) {
    let addr = server.addr();
    progress(&format!("`airlock serve` on {addr} answered /health after {:.0} ms", ms(startup)));
    let mut srv = Srv { pool: Pool::new(addr), host: addr.to_string(), live: Mutex::new(Vec::new()), loads: Mutex::new(Vec::new()), server_pid: server.pid(), server };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            let clean = srv.server.stop();
            return (Err(anyhow::Error::new(e).context("starting the client runtime")), clean);
        }
    };
    let result = rt.block_on(async {
        let interrupted = async {
            while !INTERRUPTED.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        let work = async {
            if args.soak > 0 {
                soak(args, &srv).await
            } else if args.scale > 0 {
                scale(args, &srv).await
            } else {
                measure_server(args, &srv, startup).await
            }
        };
        let r = tokio::select! {
            r = work => r,
            _ = interrupted => Err(anyhow!("interrupted")),
        };
        // Delete what this run made while the server still runs (a second
        // Ctrl-C is ignored here; the runtime sweep below catches the rest).
        tokio::time::timeout(Duration::from_secs(60), srv.kill_live()).await.ok();
        r
    });
    drop(rt);
    progress("stopping the server; destroying leftover sandboxes with `airlock runtime destroy`");
    let clean = srv.server.stop();
    (result, clean)
}

fn has_mounts_under(dir: &Path) -> bool {
    let d = dir.to_string_lossy().to_string();
    std::fs::read_to_string("/proc/self/mountinfo").map(|m| m.lines().any(|l| l.split(' ').nth(4).is_some_and(|p| p == d || p.starts_with(&format!("{d}/"))))).unwrap_or(true)
}

/// What a report says of the machine it ran on.
fn host_info(load_before: &str) -> Value {
    json!({
        "kernel": kernel(),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cgroup": cgroup_flavor(),
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
        "mem_total_kib": meminfo("MemTotal"),
    })
}

/// The server process's resident memory (KiB) and open descriptors.
fn server_footprint(pid: u32) -> (u64, usize) {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("VmRSS:").and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())))
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0);
    (rss, fds)
}

/// One soak iteration: create, a command, a 256 KiB upload and its
/// download, two more commands, kill. Each step's latency goes to `lat`.
async fn soak_once(srv: &Srv, internet: bool, lat: &Mutex<std::collections::BTreeMap<&'static str, Vec<Duration>>>) -> Result<()> {
    let rec = |k: &'static str, d: Duration| lat.lock().unwrap_or_else(|p| p.into_inner()).entry(k).or_default().push(d);
    let (s, d) = srv.create("base", internet, REQUEST_TIMEOUT).await?;
    rec("create", d);
    let r = async {
        rec("exec", srv.start(&s, &start_envelope("/bin/bash", &["-c", "echo soak"])).await?);
        let payload: Vec<u8> = (0..256 * 1024u32).map(|i| (i % 251) as u8).collect();
        let mut h = srv.sandbox_headers(&s, "49983");
        h.push(("content-type", "application/octet-stream"));
        let req = build_req("POST", "/files?path=/home/user/soak.bin&username=user", &srv.host, &h, payload.clone());
        let t = Instant::now();
        let up = srv.pool.send(req, REQUEST_TIMEOUT).await?;
        if up.status != 200 {
            bail!("upload answered {}: {}", up.status, up.text());
        }
        rec("upload_256k", up.done - t);
        let req = build_req("GET", "/files?path=/home/user/soak.bin&username=user", &srv.host, &srv.sandbox_headers(&s, "49983"), Vec::new());
        let t = Instant::now();
        let down = srv.pool.send(req, REQUEST_TIMEOUT).await?;
        if down.status != 200 || down.body[..] != payload[..] {
            bail!("download answered {} with {} bytes (wanted the 262144 uploaded)", down.status, down.body.len());
        }
        rec("download_256k", down.done - t);
        for _ in 0..2 {
            rec("exec", srv.start(&s, &start_envelope("/bin/true", &[])).await?);
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    let k = srv.kill(&s.id).await;
    r?;
    rec("kill", k?);
    Ok(())
}

/// `--soak`: mixed work for a while against one server; what failed, how
/// long things took, and whether its memory stayed flat.
async fn soak(args: &Args, srv: &Srv) -> Result<Value> {
    let workers = args.concurrency.clamp(1, 16);
    let internet = args.network != NetMode::Off;
    let until = Instant::now() + Duration::from_secs(args.soak);
    let started = Instant::now();
    srv.note_load(&format!("soak: {workers} workers for {} s (create, exec, upload, download, kill)", args.soak));
    let lat = Mutex::new(std::collections::BTreeMap::<&'static str, Vec<Duration>>::new());
    let errors = Mutex::new(Vec::<String>::new());
    let iterations = std::sync::atomic::AtomicUsize::new(0);
    let samples = Mutex::new(Vec::<Value>::new());
    let sampler = async {
        while Instant::now() < until {
            let (rss, fds) = server_footprint(srv.server_pid);
            samples
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(json!({"t_s": started.elapsed().as_secs(), "rss_kib": rss, "fds": fds, "iterations": iterations.load(Ordering::Relaxed)}));
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    };
    let work = futures_util::future::join_all((0..workers).map(|_| async {
        while Instant::now() < until && !INTERRUPTED.load(Ordering::SeqCst) {
            match soak_once(srv, internet, &lat).await {
                Ok(()) => {
                    iterations.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => errors.lock().unwrap_or_else(|p| p.into_inner()).push(format!("{e:#}")),
            }
        }
    }));
    tokio::join!(sampler, work);
    // Memory after the work, once connections closed.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss_end, fds_end) = server_footprint(srv.server_pid);
    let samples = samples.into_inner().unwrap_or_else(|p| p.into_inner());
    let errors = errors.into_inner().unwrap_or_else(|p| p.into_inner());
    let lat = lat.into_inner().unwrap_or_else(|p| p.into_inner());
    // Flat: the last samples within 20% (plus 8 MiB) of the first after warm-up.
    let warm = samples.get(2).or(samples.last()).and_then(|v| v["rss_kib"].as_u64()).unwrap_or(0);
    let flat = rss_end <= warm + warm / 5 + 8 * 1024;
    Ok(json!({
        "mode": "soak",
        "seconds": args.soak,
        "workers": workers,
        "iterations": iterations.load(Ordering::Relaxed),
        "errors": errors.len(),
        "first_errors": errors.iter().take(10).collect::<Vec<_>>(),
        "latency": lat.iter().map(|(k, v)| (k.to_string(), stats(v))).collect::<serde_json::Map<_, _>>(),
        "server_memory": samples,
        "server_after": {"rss_kib": rss_end, "fds": fds_end},
        "memory_flat": flat,
        "host": {"kernel": kernel(), "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0), "loadavg_after": loadavg()},
    }))
}

/// `--server --scale N`: what users feel at scale (see `Args::scale`).
async fn scale(args: &Args, srv: &Srv) -> Result<Value> {
    let n = args.scale;
    let load_before = loadavg();
    let mut notes = Vec::new();
    // The floor, in the same run: a bare bwrap (and unshare) spawn.
    let floor = measure_floor(args, &agent_binary(args)?, &mut notes);
    srv.pool.prewarm(8, &srv.host).await?;
    // Growth curve: sequential creates, all kept alive and idle.
    let mem_before = meminfo("MemAvailable").unwrap_or(0);
    let (rss_before, _) = server_footprint(srv.server_pid);
    let mut lat = Vec::with_capacity(n);
    let mut made = Vec::with_capacity(n);
    srv.note_load(&format!("growth: {n} sequential creates, kept alive"));
    for i in 0..n {
        check_interrupted()?;
        let (s, d) = srv.create("base", false, REQUEST_TIMEOUT).await.with_context(|| format!("create #{} (with {i} live)", i + 1))?;
        lat.push(d);
        made.push(s);
        if (i + 1) % 250 == 0 {
            progress(&format!("  {} live; last 100 p50 {:.1} ms", i + 1, f64_at(&stats(&lat[lat.len().saturating_sub(100)..]), "/p50_ms")));
        }
    }
    let buckets: Vec<Value> = lat.chunks(100).enumerate().map(|(i, c)| json!({"live_from": i * 100, "live_to": i * 100 + c.len(), "create": stats(c)})).collect();
    let edge = 50.min(n);
    // Idle density: what the live sandboxes hold once settled.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mem_after = meminfo("MemAvailable").unwrap_or(0);
    let (rss_after, fds_after) = server_footprint(srv.server_pid);
    let host_kib = mem_before.saturating_sub(mem_after) as f64 / n.max(1) as f64;
    // With them alive: commands.run("true") on one, and a create more.
    let mut cmd = Vec::new();
    for _ in 0..100 {
        cmd.push(srv.start(&made[0], &start_envelope("/bin/true", &[])).await?);
    }
    // Kill latency as the caller sees it, one at a time, all of them.
    srv.note_load(&format!("kill: {n} sequential DELETEs"));
    let t_kill = Instant::now();
    let mut kills = Vec::with_capacity(n);
    for s in &made {
        check_interrupted()?;
        kills.push(srv.kill(&s.id).await?);
    }
    let kill_wall = t_kill.elapsed();
    // Concurrency sweeps, from nothing live.
    let mut sweeps = Vec::new();
    for c in [1usize, 10, 50, 100] {
        check_interrupted()?;
        srv.note_load(&format!("sweep: {c} creates at once"));
        srv.pool.prewarm(c, &srv.host).await?;
        let t = Instant::now();
        let rs = futures_util::future::join_all((0..c).map(|_| srv.create("base", false, REQUEST_TIMEOUT))).await;
        let wall = t.elapsed();
        let mut ok = Vec::new();
        let mut errors = Vec::new();
        for r in rs {
            match r {
                Ok(x) => ok.push(x),
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        let bin_true = start_envelope("/bin/true", &[]);
        let usable = futures_util::future::join_all(ok.iter().map(|(s, _)| srv.start(s, &bin_true))).await.iter().filter(|r| r.is_ok()).count();
        let t = Instant::now();
        let ks = futures_util::future::join_all(ok.iter().map(|(s, _)| srv.kill(&s.id))).await;
        let kill_wall = t.elapsed();
        let creates: Vec<Duration> = ok.iter().map(|(_, d)| *d).collect();
        let kill_lat: Vec<Duration> = ks.into_iter().filter_map(|r| r.ok()).collect();
        sweeps.push(json!({
            "concurrency": c, "wall_ms": round(ms(wall), 1), "create": stats(&creates), "errors": errors.len(), "first_errors": errors.iter().take(3).collect::<Vec<_>>(),
            "usable": usable, "kill": stats(&kill_lat), "kill_wall_ms": round(ms(kill_wall), 1),
        }));
    }
    Ok(json!({
        "mode": "scale",
        "host": host_info(&load_before),
        "live": n,
        "floor": floor,
        "growth": {
            "buckets": buckets,
            "first": stats(&lat[..edge]),
            "last": stats(&lat[n - edge..]),
            "all": stats(&lat),
        },
        "idle": {
            "host_kib_per_sandbox": round(host_kib, 1),
            "server_rss_kib_before": rss_before,
            "server_rss_kib_with_all": rss_after,
            "server_fds_with_all": fds_after,
        },
        "commands_run_true_with_all_live": stats(&cmd),
        "kill": {"sequential": stats(&kills), "wall_ms": round(ms(kill_wall), 1)},
        "sweeps": sweeps,
        "loads": srv.loads.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
        "notes": notes,
    }))
}

fn f64_at(v: &Value, ptr: &str) -> f64 {
    v.pointer(ptr).and_then(Value::as_f64).unwrap_or(0.0)
}

fn print_host(r: &Value) {
    println!(
        "  host: kernel {}, {} cpus, cgroup {}, load {} -> {}",
        f(r, "/host/kernel"),
        f(r, "/host/cpus"),
        f(r, "/host/cgroup"),
        f(r, "/host/loadavg_before"),
        f(r, "/host/loadavg_after")
    );
}

fn print_floor(r: &Value, title: &str) {
    println!("{title}");
    println!("{}", header());
    for (name, s) in r["floor"].as_object().into_iter().flatten() {
        println!("{}", stats_row(name, s));
    }
}

fn print_scale(r: &Value) {
    println!("airlock-bench --server --scale {} (through `airlock serve`, HTTP/1.1 keep-alive)", f(r, "/live"));
    print_host(r);
    println!();
    print_floor(r, "Floor (bare namespaced process spawn), same run");
    println!();
    println!("Growth: sequential creates (POST /v2/sandboxes to 201), all kept alive");
    println!("{}", header());
    println!("{}", stats_row("first 50", &r["growth"]["first"]));
    println!("{}", stats_row("last 50", &r["growth"]["last"]));
    println!("{}", stats_row("all", &r["growth"]["all"]));
    for b in r["growth"]["buckets"].as_array().into_iter().flatten() {
        println!("{}", stats_row(&format!("  live {}-{}", f(b, "/live_from"), f(b, "/live_to")), &b["create"]));
    }
    println!();
    println!(
        "Idle: {} KiB of host memory per sandbox; server RSS {} KiB before, {} KiB with all live ({} descriptors)",
        f(r, "/idle/host_kib_per_sandbox"),
        f(r, "/idle/server_rss_kib_before"),
        f(r, "/idle/server_rss_kib_with_all"),
        f(r, "/idle/server_fds_with_all")
    );
    println!("{}", header());
    println!("{}", stats_row("commands.run /bin/true, all live", &r["commands_run_true_with_all_live"]));
    println!("{}", stats_row("DELETE, one at a time", &r["kill"]["sequential"]));
    println!();
    println!("Concurrency sweeps (from none live): wall until the last 201, per-request latency, all usable?");
    println!("{}", header());
    for s in r["sweeps"].as_array().into_iter().flatten() {
        println!(
            "{}",
            stats_row(&format!("{} at once (wall {} ms, {} errors, {} usable)", f(s, "/concurrency"), f(s, "/wall_ms"), f(s, "/errors"), f(s, "/usable")), &s["create"])
        );
        println!("{}", stats_row(&format!("  their DELETEs at once (wall {} ms)", f(s, "/kill_wall_ms")), &s["kill"]));
    }
    for n in r["notes"].as_array().into_iter().flatten() {
        println!("  note: {}", n.as_str().unwrap_or_default());
    }
}

fn print_soak(r: &Value) {
    println!("airlock-bench --server --soak {} ({} workers, create/exec/upload/download/kill)", f(r, "/seconds"), f(r, "/workers"));
    println!("  iterations {}, errors {}", f(r, "/iterations"), f(r, "/errors"));
    for e in r["first_errors"].as_array().into_iter().flatten() {
        println!("    error: {}", e.as_str().unwrap_or_default());
    }
    println!("{}", header());
    for (k, v) in r["latency"].as_object().into_iter().flatten() {
        println!("{}", stats_row(k, v));
    }
    println!("  server memory over time (t s: RSS MiB, fds, iterations):");
    let line: Vec<String> = r["server_memory"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| format!("{}: {:.1}, {}, {}", f(s, "/t_s"), s["rss_kib"].as_f64().unwrap_or(0.0) / 1024.0, f(s, "/fds"), f(s, "/iterations")))
        .collect();
    for chunk in line.chunks(6) {
        println!("    {}", chunk.join("  |  "));
    }
    println!(
        "  after the work: RSS {:.1} MiB, {} fds; memory flat: {}",
        r["server_after"]["rss_kib"].as_f64().unwrap_or(0.0) / 1024.0,
        f(r, "/server_after/fds"),
        if r["memory_flat"].as_bool().unwrap_or(false) { "yes" } else { "NO" }
    );
}

async fn measure_server(args: &Args, srv: &Srv, startup: Duration) -> Result<Value> {
    let load_before = loadavg();
    let started = unix_now();
    let mut notes: Vec<String> = Vec::new();

    // The HTTP floor: the API's own /health on a warm connection.
    srv.note_load("server: GET /health (HTTP floor)");
    for _ in 0..20 {
        srv.get("/health", &[], 200).await?;
    }
    let mut h = Vec::new();
    for _ in 0..args.cmd_runs.max(50) {
        h.push(srv.get("/health", &[], 200).await?);
    }
    let api_health = stats(&h);

    // Create, sequential and concurrent, per network mode (SDK default: on).
    let mut modes = Vec::new();
    if args.network != NetMode::Off {
        modes.push(true);
    }
    if args.network != NetMode::On {
        modes.push(false);
    }
    let mut create = serde_json::Map::new();
    for &internet in &modes {
        let name = if internet { "internet_on" } else { "internet_off" };
        let mut m = serde_json::Map::new();
        if args.n > 0 {
            srv.note_load(&format!("server {name}: {} warm-up + {} sequential creates (each deleted before the next)", args.warmup, args.n));
            for _ in 0..args.warmup {
                let (s, _) = srv.create("base", internet, REQUEST_TIMEOUT).await?;
                srv.kill(&s.id).await?;
            }
            let mark = srv.log_mark();
            let h0 = HostCpu::now(srv.server_pid);
            let (mut c, mut d) = (Vec::new(), Vec::new());
            for _ in 0..args.n {
                let (s, t) = srv.create("base", internet, REQUEST_TIMEOUT).await?;
                c.push(t);
                d.push(srv.kill(&s.id).await?);
            }
            let cpu = HostCpu::now(srv.server_pid).since(&h0, args.n);
            let server = srv.server_times(mark, srv.log_mark());
            m.insert("sequential".into(), json!({ "create": stats(&c), "delete": stats(&d), "server": server, "cpu_create_and_delete": cpu }));
        }
        if args.concurrency > 0 {
            srv.note_load(&format!("server {name}: {} concurrent creates", args.concurrency));
            srv.pool.prewarm(args.concurrency, &srv.host).await?;
            let mark = srv.log_mark();
            let h0 = HostCpu::now(srv.server_pid);
            let t0 = Instant::now();
            let results = futures_util::future::join_all((0..args.concurrency).map(|_| async {
                let r = srv.create("base", internet, REQUEST_TIMEOUT).await;
                (r, Instant::now())
            }))
            .await;
            let mut last = t0;
            let (mut lat, mut made, mut first_err) = (Vec::new(), Vec::new(), None);
            for (r, end) in results {
                match r {
                    Ok((s, d)) => {
                        lat.push(d);
                        made.push(s);
                        last = last.max(end);
                    }
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
            let wall = last - t0;
            let cpu = HostCpu::now(srv.server_pid).since(&h0, args.concurrency);
            let server = srv.server_times(mark, srv.log_mark());
            let load_after = loadavg();
            let td = Instant::now();
            let dels = futures_util::future::join_all(made.iter().map(|s| srv.kill(&s.id))).await;
            let delete_wall = td.elapsed();
            if let Some(e) = first_err {
                return Err(e.context(format!("{} of {} concurrent creates failed", args.concurrency - made.len(), args.concurrency)));
            }
            let dels: Vec<Duration> = dels.into_iter().collect::<Result<_>>()?;
            m.insert(
                "concurrent".into(),
                json!({
                    "n": args.concurrency,
                    "wall_ms": ms(wall),
                    "create": stats(&lat),
                    "server": server,
                    "cpu_until_last_201": cpu,
                    "delete": stats(&dels),
                    "delete_wall_ms": ms(delete_wall),
                    "loadavg_after": load_after,
                }),
            );
        }
        if !m.is_empty() {
            create.insert(name.into(), Value::Object(m));
        }
    }

    // commands.run on a warm sandbox, through the server and straight to the agent.
    let commands = if args.cmd_runs > 0 {
        srv.note_load(&format!("server: commands.run round trips, {} each", args.cmd_runs));
        let (s, _) = srv.create("base", true, REQUEST_TIMEOUT).await?;
        let r = commands_series(args.cmd_runs, srv, &s).await;
        srv.kill(&s.id).await?;
        Some(r?)
    } else {
        None
    };

    let interpreter = if args.interp_runs > 0 || args.interp_contexts > 0 { Some(interpreter_series(args, srv, &mut notes).await?) } else { None };

    let state = if args.state_runs > 0 { Some(state_series(args, srv, modes.first().copied().unwrap_or(true)).await?) } else { None };

    let ops = if args.ops_runs > 0 { Some(ops_series(args, srv, modes.first().copied().unwrap_or(true)).await?) } else { None };

    let egress = if args.egress_runs > 0 { Some(egress_series(args, srv).await?) } else { None };

    let mut targets = Vec::new();
    let p50 = |v: &Value, p: &str| v.pointer(p).and_then(Value::as_f64);
    let on = create.get("internet_on").or_else(|| create.get("internet_off")).cloned().unwrap_or(Value::Null);
    let mut target = |name: &str, value: Option<f64>, limit: f64| {
        if let Some(x) = value {
            targets.push(json!({"target": name, "value_ms": x, "limit_ms": limit, "met": x < limit}));
        }
    };
    target("create p50 < 30 ms (sequential, SDK default internet on)", p50(&on, "/sequential/create/p50_ms"), 30.0);
    target("commands.run(\"true\") p50 < 5 ms (bash -l -c true via server)", commands.as_ref().and_then(|c| p50(c, "/via_server/bash_l_true/p50_ms")), 5.0);
    target(&format!("{} concurrent creates within 1 s (wall)", args.concurrency), p50(&on, "/concurrent/wall_ms"), 1000.0);
    target("run_code(\"1+1\") warm p50 < 5 ms", interpreter.as_ref().and_then(|c| p50(c, "/warm/end/p50_ms")), 5.0);
    if let Some(o) = &ops {
        target("pooled create p50 < 3 ms (HTTP API)", p50(o, "/create_pooled/p50_ms"), 3.0);
    }
    if let Some(e) = &egress {
        let plain = p50(e, "/create_plain/p50_ms");
        target("create with a 50-entry egress policy p50 < 1.2x a plain create", p50(e, "/create_policed/p50_ms"), plain.map_or(f64::INFINITY, |p| p * 1.2));
    }
    if let Some(st) = &state {
        let plain = p50(st, "/create_plain/p50_ms");
        target("create from a snapshot p50 < 1.5x a plain create", p50(st, "/create_from_snapshot/p50_ms"), plain.map_or(f64::INFINITY, |p| p * 1.5));
        target("fork x1 of an idle sandbox p50 < 100 ms", p50(st, "/fork_x1/p50_ms"), 100.0);
        target("snapshot of code-interpreter-v1 with 1 MB written p50 < 100 ms", p50(st, "/snapshot_code_interpreter_1mb/p50_ms"), 100.0);
    }

    Ok(json!({
        "mode": "server",
        "started_unix": started,
        "host": host_info(&load_before),
        "params": {
            "n": args.n, "concurrency": args.concurrency, "cmd_runs": args.cmd_runs, "warmup": args.warmup,
            "interp_runs": args.interp_runs, "interp_contexts": args.interp_contexts,
        },
        "server": {
            "startup_to_health_ms": ms(startup),
            "api_health": api_health,
            "connections_opened": srv.pool.opened.load(Ordering::Relaxed),
        },
        "create": Value::Object(create),
        "commands": commands,
        "interpreter": interpreter,
        "state": state,
        "operations": ops,
        "egress": egress,
        "loadavg_by_phase": srv.loads.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(p, l)| json!({"phase": p, "loadavg": l})).collect::<Vec<_>>(),
        "targets": targets,
        "notes": notes,
    }))
}

/// A stand-in internet host for the download measurement: a network
/// namespace behind a transit /30, with 203.0.113.10 on its loopback routed
/// to it (so it is a routed destination, not a network the host is on),
/// serving `GET /bytes/N` on port 80. Removed on drop.
struct TestHost {
    ns: String,
    host_if: String,
    server: Option<std::process::Child>,
}

const TEST_HOST_IP: &str = "203.0.113.10";

impl TestHost {
    fn up() -> Result<TestHost> {
        let addrs = std::process::Command::new("ip").args(["-4", "addr"]).output().context("ip -4 addr")?;
        if String::from_utf8_lossy(&addrs.stdout).contains("inet 203.0.113.") || String::from_utf8_lossy(&addrs.stdout).contains("inet 198.51.100.24") {
            bail!("this host has an address in the documentation range the egress bench uses for its test host");
        }
        let tag = random_hex(3)?;
        let (ns, host_if) = (format!("airlock-bench-{tag}"), format!("altbench{tag}"));
        let me = TestHost { ns: ns.clone(), host_if: host_if.clone(), server: None };
        let sh = |cmd: String| -> Result<()> {
            let o = std::process::Command::new("sh").arg("-c").arg(&cmd).output()?;
            if !o.status.success() {
                bail!("{cmd}: {}", String::from_utf8_lossy(&o.stderr).trim());
            }
            Ok(())
        };
        sh(format!(
            "ip netns add {ns} && ip link add {host_if} type veth peer name eth0 netns {ns} && ip addr add 198.51.100.245/30 dev {host_if} && ip link set {host_if} up && \
             ip netns exec {ns} ip addr add 198.51.100.246/30 dev eth0 && ip netns exec {ns} ip link set eth0 up && ip netns exec {ns} ip link set lo up && \
             ip netns exec {ns} ip addr add {TEST_HOST_IP}/32 dev lo && ip netns exec {ns} ip route add default via 198.51.100.245 && ip route add {TEST_HOST_IP}/32 via 198.51.100.246"
        ))?;
        let server = r#"
import socket, threading
def one(c):
    try:
        req = b""
        while b"\r\n\r\n" not in req:
            d = c.recv(65536)
            if not d:
                return
            req += d
        n = int(req.split(b" ")[1].split(b"/")[-1])
        c.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % n)
        chunk = b"x" * 262144
        while n > 0:
            k = min(n, len(chunk)); c.sendall(chunk[:k]); n -= k
    finally:
        c.close()
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("0.0.0.0", 80)); s.listen(64)
print("ready", flush=True)
while True:
    c, _ = s.accept(); threading.Thread(target=one, args=(c,), daemon=True).start()
"#;
        let mut me = me;
        let mut child = std::process::Command::new("ip")
            .args(["netns", "exec", &ns, "python3", "-u", "-c", server])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("starting the test host's server")?;
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().context("stdout")?), &mut line)?;
        me.server = Some(child);
        if line.trim() != "ready" {
            bail!("the test host's server did not start");
        }
        Ok(me)
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        if let Some(mut c) = self.server.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::process::Command::new("sh").arg("-c").arg(format!("ip route del {TEST_HOST_IP}/32; ip link del {}; ip netns del {}", self.host_if, self.ns)).output();
    }
}

/// Egress policy costs: creates with a 50-entry policy against plain
/// ones (alternating, so both see the same host), and the download rate
/// from a test host with and without the egress proxy in the path. A
/// download is timed from the host as a whole command; a 1-byte download
/// in the same sandbox is the fixed cost taken off.
async fn egress_series(args: &Args, srv: &Srv) -> Result<Value> {
    let n = args.egress_runs;
    srv.note_load(&format!("server: egress: {n} plain and {n} policed creates, alternating"));
    let mut allow: Vec<String> = (1..=48).map(|i| format!("203.0.113.{i}/32")).collect();
    allow.extend(["api.bench.test".to_string(), "*.svc.bench.test".to_string()]);
    let policy = json!({"allow_out": allow, "deny_out": ["0.0.0.0/0"]});
    let (mut plain, mut policed) = (Vec::new(), Vec::new());
    for _ in 0..n {
        check_interrupted()?;
        let (v, d) = srv.call("POST", "/v2/sandboxes", json!({"templateID": "base", "timeout": 300}), 201).await?;
        plain.push(d);
        srv.kill(v["sandboxID"].as_str().unwrap_or_default()).await?;
        let (v, d) = srv.call("POST", "/v2/sandboxes", json!({"templateID": "base", "timeout": 300, "network": policy}), 201).await?;
        policed.push(d);
        srv.kill(v["sandboxID"].as_str().unwrap_or_default()).await?;
    }
    srv.note_load("server: egress: 100 MB downloads, direct and through the egress proxy");
    let host = TestHost::up()?;
    const SIZE: u64 = 100 << 20;
    let fetch = |bytes: u64| {
        format!(
            "import socket\ns=socket.create_connection(('{TEST_HOST_IP}',80),timeout=30)\ns.sendall(b'GET /bytes/{bytes} HTTP/1.1\\r\\nHost: {TEST_HOST_IP}\\r\\n\\r\\n')\nn=0\nwhile True:\n    d=s.recv(1<<20)\n    if not d: break\n    n+=len(d)\nassert n>{bytes}, n\n"
        )
    };
    let rate = |label: &'static str, network: Value| {
        let net = network.clone();
        async move {
            let mut body = json!({"templateID": "base", "timeout": 300});
            if !net.is_null() {
                body["network"] = net;
            }
            let (v, _) = srv.call("POST", "/v2/sandboxes", body, 201).await?;
            let s = Sbx { id: v["sandboxID"].as_str().unwrap_or_default().to_string(), token: v["envdAccessToken"].as_str().unwrap_or_default().to_string() };
            let r: Result<f64> = async {
                let (mut small, mut big) = (Vec::new(), Vec::new());
                for _ in 0..3 {
                    small.push(srv.start(&s, &start_envelope("python3", &["-c", &fetch(1)])).await?.as_secs_f64());
                    big.push(srv.start(&s, &start_envelope("python3", &["-c", &fetch(SIZE)])).await?.as_secs_f64());
                }
                let best = |v: &[f64]| v.iter().cloned().fold(f64::INFINITY, f64::min);
                let t = (best(&big) - best(&small)).max(1e-3);
                Ok(SIZE as f64 / (1 << 20) as f64 / t)
            }
            .await;
            srv.kill(&s.id).await?;
            r.with_context(|| format!("the {label} download"))
        }
    };
    let direct = rate("direct", Value::Null).await?;
    let proxied = rate("proxied", json!({"allow_out": [TEST_HOST_IP], "deny_out": ["0.0.0.0/0"]})).await?;
    drop(host);
    Ok(json!({
        "policy_entries": 50,
        "create_plain": stats(&plain),
        "create_policed": stats(&policed),
        "download": {
            "bytes": SIZE,
            "direct_mb_s": round(direct, 1),
            "proxied_mb_s": round(proxied, 1),
            "proxied_pct_of_direct": round(proxied / direct * 100.0, 1),
        },
    }))
}

/// Warm pools (a create of the pool's shape against one of another shape,
/// each killed before the next, the pool refilled in between so every
/// pooled create is a claim) and event fan-out (the time from an API call
/// to each of `--subscribers` SSE streams receiving its event).
async fn ops_series(args: &Args, srv: &Srv, internet: bool) -> Result<Value> {
    const POOL: usize = 8;
    let n = args.ops_runs;
    srv.note_load(&format!("server: warm pool of {POOL}: {n} pooled and {n} cold creates, alternating"));
    srv.call("PUT", "/pools/bench", json!({"templateID": "base", "size": POOL, "allow_internet_access": internet}), 200).await?;
    let level = || async {
        let (v, _) = srv.call("GET", "/pools/bench", Value::Null, 200).await?;
        Ok::<_, anyhow::Error>((v["ready"].as_u64().unwrap_or(0) as usize, v["claims"].as_u64().unwrap_or(0)))
    };
    let full = || async {
        let t = Instant::now();
        loop {
            check_interrupted()?;
            if level().await?.0 >= POOL {
                return Ok::<_, anyhow::Error>(());
            }
            if t.elapsed() > Duration::from_secs(120) {
                bail!("the warm pool did not fill within 120 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    full().await?;
    let claims0 = level().await?.1;
    let cold_body = |internet: bool| {
        let mut b = json!({"templateID": "base", "timeout": 300, "memoryMB": 768});
        if !internet {
            b["allow_internet_access"] = json!(false);
        }
        b
    };
    let (mut pooled, mut cold) = (Vec::new(), Vec::new());
    for _ in 0..n {
        check_interrupted()?;
        full().await?;
        let (s, d) = srv.create("base", internet, REQUEST_TIMEOUT).await?;
        pooled.push(d);
        srv.kill(&s.id).await?;
        full().await?;
        let (v, d) = srv.call("POST", "/v2/sandboxes", cold_body(internet), 201).await?;
        cold.push(d);
        srv.kill(v["sandboxID"].as_str().unwrap_or_default()).await?;
    }
    let claims = level().await?.1 - claims0;
    if claims as usize != n {
        bail!("{claims} of {n} pooled creates were served from the pool");
    }
    srv.call("DELETE", "/pools/bench", Value::Null, 204).await?;

    // Event fan-out: every subscriber follows one sandbox's events; each
    // round moves its deadline (one `timeout_changed` event).
    let subs = args.subscribers;
    srv.note_load(&format!("server: event fan-out to {subs} subscribers, {n} rounds"));
    let (s, _) = srv.create("base", internet, REQUEST_TIMEOUT).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, i64, Instant)>();
    let mut tasks = Vec::new();
    for i in 0..subs {
        let (addr, host, key, id, tx) = (srv.pool.addr, srv.host.clone(), srv.server.key().to_string(), s.id.clone(), tx.clone());
        tasks.push(tokio::spawn(async move {
            let r: Result<()> = async {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                let (mut send, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(tcp)).await?;
                tokio::spawn(conn);
                let req = build_req("GET", &format!("/sandboxes/{id}/events?type=timeout_changed"), &host, &[("x-api-key", &key)], Vec::new());
                let mut body = send.send_request(req).await?.into_body();
                let mut buf = String::new();
                while let Some(f) = body.frame().await {
                    if let Ok(d) = f?.into_data() {
                        buf.push_str(&String::from_utf8_lossy(&d));
                    }
                    while let Some(end) = buf.find("\n\n") {
                        let msg: String = buf.drain(..end + 2).collect();
                        if let Some(eid) = msg.lines().find_map(|l| l.strip_prefix("id: ")).and_then(|v| v.trim().parse().ok()) {
                            let _ = tx.send((i, eid, Instant::now()));
                        }
                    }
                }
                Ok(())
            }
            .await;
            if let Err(e) = r {
                progress(&format!("event subscriber {i}: {e:#}"));
            }
        }));
    }
    drop(tx);
    // Rounds: one event each; wait until every subscriber has it. Round 0
    // warms up (a subscriber still connecting replays it from the store);
    // an id at or below the last round's is such a replay.
    let (mut delivery, mut last_of_round) = (Vec::new(), Vec::new());
    let mut last_round_id = 0i64;
    for round in 0..=n {
        check_interrupted()?;
        let t0 = Instant::now();
        srv.call("POST", &format!("/sandboxes/{}/timeout", s.id), json!({"timeout": 300 + round}), 204).await?;
        let (mut got, mut round_id, mut slowest) = (std::collections::BTreeSet::new(), last_round_id, Duration::ZERO);
        while got.len() < subs {
            let Ok(Some((i, eid, at))) = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await else {
                bail!("round {round}: {} of {subs} subscribers received the event within 10 s", got.len());
            };
            if eid <= last_round_id || !got.insert(i) {
                continue;
            }
            round_id = round_id.max(eid);
            if round > 0 {
                delivery.push(at - t0);
                slowest = slowest.max(at - t0);
            }
        }
        if round > 0 {
            last_of_round.push(slowest);
        }
        last_round_id = round_id;
    }
    for t in tasks {
        t.abort();
    }
    srv.kill(&s.id).await?;
    Ok(json!({
        "pool_size": POOL,
        "create_pooled": stats(&pooled),
        "create_cold": stats(&cold),
        "event_subscribers": subs,
        "event_delivery": stats(&delivery),
        "event_last_subscriber": stats(&last_of_round),
    }))
}

/// Snapshots, creates from them, forks and the filesystem-only pause,
/// through the API as the SDKs call them.
async fn state_series(args: &Args, srv: &Srv, internet: bool) -> Result<Value> {
    let n = args.state_runs;
    let mut out = serde_json::Map::new();
    let write = |mb: usize| start_envelope("/bin/bash", &["-c", &format!("head -c {mb}M /dev/urandom > /home/user/blob-$RANDOM")]);
    let enc = |id: &str| id.replace(':', "%3A");

    // What a snapshot costs, by what the sandbox wrote.
    let snap_of = |label: &'static str, template: &'static str, mb: usize, runs: usize| {
        let write = write(mb);
        async move {
            srv.note_load(&format!("server: {runs} snapshots of a {template} sandbox that wrote {mb} MB"));
            let (s, _) = srv.create(template, internet, Duration::from_secs(600)).await?;
            srv.start(&s, &write).await?;
            let (mut lat, mut ids) = (Vec::new(), Vec::new());
            for _ in 0..runs {
                check_interrupted()?;
                let (v, d) = srv.call("POST", &format!("/sandboxes/{}/snapshots", s.id), json!({}), 201).await?;
                lat.push(d);
                ids.push(v["snapshotID"].as_str().unwrap_or_default().to_string());
            }
            for id in &ids {
                srv.call("DELETE", &format!("/templates/{}", enc(id)), Value::Null, 204).await?;
            }
            srv.kill(&s.id).await?;
            Ok::<_, anyhow::Error>((label, stats(&lat)))
        }
    };
    for (label, template, mb, runs) in [("snapshot_1mb", "base", 1, n), ("snapshot_100mb", "base", 100, n.clamp(1, 5))] {
        let (l, v) = snap_of(label, template, mb, runs).await?;
        out.insert(l.into(), v);
    }
    // The 326 MB template: the snapshot must cost what was written, not the template.
    let have_ci = srv.call("GET", "/templates/code-interpreter-v1", Value::Null, 200).await.is_ok();
    if have_ci {
        let (l, v) = snap_of("snapshot_code_interpreter_1mb", "code-interpreter-v1", 1, n).await?;
        out.insert(l.into(), v);
    }

    // Create from a snapshot against a plain create, alternating.
    srv.note_load(&format!("server: {n} creates from a snapshot and {n} plain creates, alternating"));
    let (src, _) = srv.create("base", internet, REQUEST_TIMEOUT).await?;
    srv.start(&src, &write(1)).await?;
    let (v, _) = srv.call("POST", &format!("/sandboxes/{}/snapshots", src.id), json!({}), 201).await?;
    let snap = v["snapshotID"].as_str().unwrap_or_default().to_string();
    let (mut from, mut plain) = (Vec::new(), Vec::new());
    for _ in 0..n {
        check_interrupted()?;
        let (s, d) = srv.create(&snap, internet, REQUEST_TIMEOUT).await?;
        from.push(d);
        srv.kill(&s.id).await?;
        let (s, d) = srv.create("base", internet, REQUEST_TIMEOUT).await?;
        plain.push(d);
        srv.kill(&s.id).await?;
    }
    out.insert("create_from_snapshot".into(), stats(&from));
    out.insert("create_plain".into(), stats(&plain));
    srv.call("DELETE", &format!("/templates/{}", enc(&snap)), Value::Null, 204).await?;

    // Fork of an idle sandbox (it wrote 1 MB), one and ten at a time.
    for (label, count, runs) in [("fork_x1", 1, n), ("fork_x10", 10, n.div_ceil(2))] {
        srv.note_load(&format!("server: {runs} forks x{count}"));
        let mut lat = Vec::new();
        for _ in 0..runs {
            check_interrupted()?;
            let (v, d) = srv.call("POST", &format!("/sandboxes/{}/fork", src.id), json!({"count": count, "timeout": 120}), 201).await?;
            lat.push(d);
            let ids: Vec<String> = v.as_array().into_iter().flatten().filter_map(|r| r["sandbox"]["sandboxID"].as_str().map(str::to_string)).collect();
            if ids.len() != count {
                bail!("fork x{count} started {} sandboxes: {v}", ids.len());
            }
            for chunk in ids.chunks(10) {
                futures_util::future::join_all(chunk.iter().map(|id| srv.kill(id))).await.into_iter().collect::<Result<Vec<_>>>()?;
            }
        }
        out.insert(label.into(), stats(&lat));
    }

    // Filesystem-only pause and the resume that boots it again, and the
    // freeze for comparison.
    srv.note_load(&format!("server: {n} filesystem pauses and resumes, {n} freezes and thaws"));
    let (mut fsp, mut fsr, mut frp, mut frr) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        check_interrupted()?;
        let (_, d) = srv.call("POST", &format!("/sandboxes/{}/pause", src.id), json!({"memory": false}), 204).await?;
        fsp.push(d);
        let (_, d) = srv.call("POST", &format!("/v2/sandboxes/{}/connect", src.id), json!({"timeout": 300}), 201).await?;
        fsr.push(d);
        let (_, d) = srv.call("POST", &format!("/sandboxes/{}/pause", src.id), json!({}), 204).await?;
        frp.push(d);
        let (_, d) = srv.call("POST", &format!("/v2/sandboxes/{}/connect", src.id), json!({"timeout": 300}), 201).await?;
        frr.push(d);
    }
    // A volume mounted at create, against the same create without it.
    srv.note_load(&format!("server: {n} creates with a volume mounted and {n} without, alternating"));
    let vname = format!("bench-{}", random_hex(4)?);
    let (vol, _) = srv.call("POST", "/volumes", json!({"name": vname}), 201).await?;
    let vid = vol["volumeID"].as_str().unwrap_or_default().to_string();
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for _ in 0..n {
        check_interrupted()?;
        let mut body = json!({"templateID": "base", "timeout": 300, "volumeMounts": [{"name": vname, "path": "/mnt/data"}]});
        if !internet {
            body["allow_internet_access"] = json!(false);
        }
        let (v, d) = srv.call("POST", "/v2/sandboxes", body, 201).await?;
        with.push(d);
        srv.kill(v["sandboxID"].as_str().unwrap_or_default()).await?;
        let (s, d) = srv.create("base", internet, REQUEST_TIMEOUT).await?;
        without.push(d);
        srv.kill(&s.id).await?;
    }
    srv.call("DELETE", &format!("/volumes/{vid}"), Value::Null, 204).await?;
    out.insert("create_with_volume".into(), stats(&with));
    out.insert("create_without_volume".into(), stats(&without));

    out.insert("pause_filesystem".into(), stats(&fsp));
    out.insert("resume_filesystem".into(), stats(&fsr));
    out.insert("pause_freeze".into(), stats(&frp));
    out.insert("resume_freeze".into(), stats(&frr));
    srv.kill(&src.id).await?;
    Ok(Value::Object(out))
}

/// Requests per block: the series of a comparison alternate in blocks of
/// this many, so a change in the host's load hits them all alike.
const BLOCK: usize = 20;

/// CPU time summed over blocks of one series.
#[derive(Default)]
struct CpuSum {
    server: u64,
    sandbox: Option<u64>,
    client: u64,
    runs: usize,
}

impl CpuSum {
    fn add(&mut self, before: &Cpu, after: &Cpu, runs: usize) {
        self.server += after.server.saturating_sub(before.server);
        self.client += after.client.saturating_sub(before.client);
        if let (Some(a), Some(b)) = (after.sandbox, before.sandbox) {
            self.sandbox = Some(self.sandbox.unwrap_or(0) + a.saturating_sub(b));
        }
        self.runs += runs;
    }

    /// Milliseconds of CPU per run.
    fn per_run(&self) -> Value {
        let per = |ns: u64| round(ns as f64 / 1e6 / self.runs.max(1) as f64, 3);
        json!({ "server_ms": per(self.server), "sandbox_ms": self.sandbox.map(per), "client_ms": per(self.client) })
    }
}

/// Sends `req` (with `Connection: close`) straight to the agent's socket.
fn direct_start(sock: &Path, token: &str, body: &[u8]) -> Result<Duration> {
    let mut req = format!(
        "POST /process.Process/Start HTTP/1.1\r\nHost: sandbox\r\nContent-Type: application/connect+json\r\nConnect-Protocol-Version: 1\r\nX-Access-Token: {token}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    let t = Instant::now();
    let r = http(sock, &req)?;
    let d = t.elapsed();
    check_process_stream(&r)?;
    Ok(d)
}

fn direct_health(sock: &Path) -> Result<Duration> {
    let t = Instant::now();
    let r = http(sock, b"GET /health HTTP/1.1\r\nHost: sandbox\r\nConnection: close\r\n\r\n")?;
    let d = t.elapsed();
    if r.status != 204 {
        bail!("agent GET /health answered {}", r.status);
    }
    Ok(d)
}

/// `commands.run` through the server, and the same requests straight to
/// the agent's socket with a fresh connection each (which is what the
/// server's proxy does per request), alternating in blocks.
async fn commands_series(runs: usize, srv: &Srv, s: &Sbx) -> Result<Value> {
    let bash = start_envelope("/bin/bash", &["-l", "-c", "true"]);
    let bin_true = start_envelope("/bin/true", &[]);
    let health_h = srv.sandbox_headers(s, "49983");
    let sock = srv.agent_socket(s);
    const NAMES: [&str; 6] = ["via_server_bash_l_true", "via_server_bin_true", "via_server_envd_health", "direct_bash_l_true", "direct_bin_true", "direct_health"];
    let one = |kind: usize| {
        let (bash, bin_true, health_h, sock) = (&bash, &bin_true, &health_h, &sock);
        async move {
            match kind {
                0 => srv.start(s, bash).await,
                1 => srv.start(s, bin_true).await,
                2 => srv.get("/health", health_h, 204).await,
                3 => direct_start(sock, &s.token, bash),
                4 => direct_start(sock, &s.token, bin_true),
                _ => direct_health(sock),
            }
        }
    };
    for _ in 0..5 {
        for kind in 0..NAMES.len() {
            one(kind).await?;
        }
    }
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); NAMES.len()];
    let mut cpu: Vec<CpuSum> = (0..NAMES.len()).map(|_| CpuSum::default()).collect();
    let mut left = runs;
    while left > 0 {
        let k = left.min(BLOCK);
        for kind in 0..NAMES.len() {
            let c0 = srv.cpu(s);
            for _ in 0..k {
                times[kind].push(one(kind).await?);
            }
            cpu[kind].add(&c0, &srv.cpu(s), k);
        }
        left -= k;
    }
    let st = |i: usize| stats(&times[i]);
    Ok(json!({
        "via_server": { "bash_l_true": st(0), "bin_true": st(1), "envd_health": st(2) },
        "direct_agent": { "bash_l_true": st(3), "bin_true": st(4), "health": st(5) },
        "cpu_per_run": NAMES.iter().zip(&cpu).map(|(n, c)| (n.to_string(), c.per_run())).collect::<serde_json::Map<_, _>>(),
    }))
}

async fn interpreter_series(args: &Args, srv: &Srv, notes: &mut Vec<String>) -> Result<Value> {
    const T: &str = "code-interpreter-v1";
    let existed = srv.get(&format!("/templates/{T}"), &srv.api_headers(), 200).await.is_ok();
    srv.note_load(&format!("interpreter: first create of {T} ({})", if existed { "template already built" } else { "builds the template; a minute or more" }));
    let (s, first_create) = srv.create(T, true, BUILD_TIMEOUT).await?;
    if !existed {
        notes.push(format!("the {T} template was built on first use during this run: the first create took {:.1} s", first_create.as_secs_f64()));
    }
    let r = async {
        // A second sandbox from the now-built template, for the create cost alone.
        let (s2, second) = srv.create(T, true, REQUEST_TIMEOUT).await?;
        srv.kill(&s2.id).await?;
        srv.note_load("interpreter: first run_code (starts the default context's kernel)");
        let (fr, fe) = srv.execute(&s, "1+1", None, Some("2"), Duration::from_secs(120)).await?;
        srv.note_load(&format!("interpreter: {} warm run_code(\"1+1\"), through the server and straight to the agent", args.interp_runs));
        // Straight to the agent: a fresh connection each, as the proxy does.
        let sock = srv.agent_socket(&s);
        let body = json!({"code": "1+1", "context_id": null, "language": null, "env_vars": null}).to_string();
        let req = format!(
            "POST /execute HTTP/1.1\r\nHost: sandbox\r\nx-airlock-port: 49999\r\nContent-Type: application/json\r\nX-Access-Token: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            s.token,
            body.len()
        );
        let direct = || -> Result<Duration> {
            let t = Instant::now();
            let r = http(&sock, req.as_bytes())?;
            let d = t.elapsed();
            if r.status != 200 {
                bail!("agent /execute answered {}", r.status);
            }
            ndjson_offsets(&r.body, Some("2"))?;
            Ok(d)
        };
        for _ in 0..5 {
            srv.execute(&s, "1+1", None, Some("2"), REQUEST_TIMEOUT).await?;
            direct()?;
        }
        let (mut first, mut end, mut direct_end) = (Vec::new(), Vec::new(), Vec::new());
        let (mut cpu_via, mut cpu_direct) = (CpuSum::default(), CpuSum::default());
        let mut left = args.interp_runs;
        while left > 0 {
            let k = left.min(BLOCK);
            let c0 = srv.cpu(&s);
            for _ in 0..k {
                let (f, e) = srv.execute(&s, "1+1", None, Some("2"), REQUEST_TIMEOUT).await?;
                first.extend(f);
                end.push(e);
            }
            let c1 = srv.cpu(&s);
            for _ in 0..k {
                direct_end.push(direct()?);
            }
            cpu_via.add(&c0, &c1, k);
            cpu_direct.add(&c1, &srv.cpu(&s), k);
            left -= k;
        }
        // Diagnosis: IPython saves every cell to its SQLite history with
        // fsyncs, on a thread that holds the lock the next cell's
        // `store_inputs` needs. The same series with those writes deferred
        // (the cache never fills) shows what they cost.
        let mut history_off = Vec::new();
        if args.interp_runs > 0 {
            srv.execute(&s, "get_ipython().history_manager.db_cache_size = 10**9", None, None, REQUEST_TIMEOUT).await?;
            for _ in 0..args.interp_runs {
                history_off.push(srv.execute(&s, "1+1", None, Some("2"), REQUEST_TIMEOUT).await?.1);
            }
        }
        srv.note_load(&format!("interpreter: {} fresh Python contexts", args.interp_contexts));
        let mut fresh = Vec::new();
        for _ in 0..args.interp_contexts {
            let t0 = Instant::now();
            let (ctx, cd) = srv.new_context(&s).await?;
            let t1 = Instant::now();
            let (f, e) = srv.execute(&s, "1+1", Some(&ctx), Some("2"), Duration::from_secs(120)).await?;
            fresh.push(json!({
                "create_context_ms": ms(cd),
                "first_result_ms": f.map(|f| ms(t1 - t0 + f)),
                "end_ms": ms(t1 - t0 + e),
            }));
            srv.delete_context(&s, &ctx).await?;
        }
        Ok::<Value, anyhow::Error>(json!({
            "template_prebuilt": existed,
            "first_create_ms": ms(first_create),
            "second_create_ms": ms(second),
            "first_execute_default_context": { "first_result_ms": fr.map(ms), "end_ms": ms(fe) },
            "warm": { "first_result": stats(&first), "end": stats(&end) },
            "direct_agent_warm_end": stats(&direct_end),
            "warm_history_writes_off_end": stats(&history_off),
            "cpu_per_run": { "via_server": cpu_via.per_run(), "direct": cpu_direct.per_run() },
            "fresh_contexts": fresh,
        }))
    }
    .await;
    srv.kill(&s.id).await?;
    r
}

fn print_host_cpu(label: &str, c: &Value) {
    if c.is_null() {
        return;
    }
    println!(
        "  CPU, {label}: host {}% busy ({} of {} CPU-ms); server threads {} ms, launchers {} ms = {} ms per sandbox",
        f(c, "/host_busy_pct"),
        f(c, "/host_busy_cpu_ms"),
        f(c, "/host_capacity_cpu_ms"),
        f(c, "/server_threads_cpu_ms"),
        f(c, "/launchers_cpu_ms"),
        f(c, "/server_and_launchers_per_create_ms")
    );
}

fn print_cpu(c: &Value) {
    let Some(m) = c.as_object().filter(|m| !m.is_empty()) else { return };
    println!("  CPU per request, ms: {:<28} {:>9} {:>9} {:>9}", "", "server", "sandbox", "client");
    for (k, v) in m {
        println!("    {:<46} {:>9} {:>9} {:>9}", k, f(v, "/server_ms"), f(v, "/sandbox_ms"), f(v, "/client_ms"));
    }
}

fn print_server_tables(r: &Value) {
    println!("airlock-bench --server (through `airlock serve`, HTTP/1.1 keep-alive, as the SDKs)");
    print_host(r);
    println!("  server start to GET /health 200: {} ms; {} client connections opened in all", f(r, "/server/startup_to_health_ms"), f(r, "/server/connections_opened"));
    println!();
    println!("HTTP floor");
    println!("{}", header());
    println!("{}", stats_row("API GET /health (warm connection)", &r["server"]["api_health"]));
    for (mode, c) in r["create"].as_object().into_iter().flatten() {
        println!();
        println!("Create (POST /v2/sandboxes until 201), {}", mode.replace('_', " "));
        println!("{}", header());
        if let Some(s) = c.get("sequential") {
            println!("{}", stats_row("sequential: client", &s["create"]));
            println!("{}", stats_row("  server: API handler", &s["server"]["api_handler"]));
            println!("{}", stats_row("  server: service create", &s["server"]["service_create"]));
            println!("{}", stats_row("  server: runtime Backend::create", &s["server"]["runtime_create"]));
            println!("{}", stats_row("sequential: DELETE", &s["delete"]));
            print_host_cpu("sequential create+delete", &s["cpu_create_and_delete"]);
        }
        if let Some(s) = c.get("concurrent") {
            println!("{}", stats_row("concurrent: client, per request", &s["create"]));
            println!("{}", stats_row("  server: API handler", &s["server"]["api_handler"]));
            println!("{}", stats_row("  server: service create", &s["server"]["service_create"]));
            println!("{}", stats_row("  server: runtime Backend::create", &s["server"]["runtime_create"]));
            println!("{}", stats_row("concurrent: DELETE", &s["delete"]));
            println!(
                "  concurrent: {} at once, wall {} ms until the last 201; delete wall {} ms (load after: {})",
                f(s, "/n"),
                f(s, "/wall_ms"),
                f(s, "/delete_wall_ms"),
                f(s, "/loadavg_after")
            );
            print_host_cpu("concurrent, until the last 201", &s["cpu_until_last_201"]);
        }
    }
    let c = &r["commands"];
    if !c.is_null() {
        println!();
        println!("commands.run on a warm sandbox (process.Process/Start to end-of-stream)");
        println!("{}", header());
        println!("{}", stats_row("via server: bash -l -c true", &c["via_server"]["bash_l_true"]));
        println!("{}", stats_row("via server: /bin/true", &c["via_server"]["bin_true"]));
        println!("{}", stats_row("via server: envd GET /health", &c["via_server"]["envd_health"]));
        println!("{}", stats_row("agent socket: bash -l -c true", &c["direct_agent"]["bash_l_true"]));
        println!("{}", stats_row("agent socket: /bin/true", &c["direct_agent"]["bin_true"]));
        println!("{}", stats_row("agent socket: GET /health", &c["direct_agent"]["health"]));
        print_cpu(&c["cpu_per_run"]);
    }
    let i = &r["interpreter"];
    if !i.is_null() {
        println!();
        println!("Code interpreter (template code-interpreter-v1)");
        let built = if i["template_prebuilt"].as_bool().unwrap_or(false) { "template already built" } else { "includes building the template" };
        println!("  first create: {} ms ({built}); second create: {} ms", f(i, "/first_create_ms"), f(i, "/second_create_ms"));
        println!(
            "  first run_code in the sandbox (starts the kernel): first result {} ms, end {} ms",
            f(i, "/first_execute_default_context/first_result_ms"),
            f(i, "/first_execute_default_context/end_ms")
        );
        println!("{}", header());
        println!("{}", stats_row("warm run_code(\"1+1\"): to end", &i["warm"]["end"]));
        println!("{}", stats_row("warm run_code(\"1+1\"): to result", &i["warm"]["first_result"]));
        println!("{}", stats_row("agent socket: /execute to end", &i["direct_agent_warm_end"]));
        println!("{}", stats_row("via server, IPython history off", &i["warm_history_writes_off_end"]));
        print_cpu(&i["cpu_per_run"]);
        for (n, c) in i["fresh_contexts"].as_array().into_iter().flatten().enumerate() {
            println!("  fresh context #{}: POST /contexts {} ms, first result {} ms, end {} ms", n + 1, f(c, "/create_context_ms"), f(c, "/first_result_ms"), f(c, "/end_ms"));
        }
    }
    let st = &r["state"];
    if !st.is_null() {
        println!();
        println!("State: snapshots, forks, pauses (the source wrote 1 MB unless said)");
        println!("{}", header());
        for (k, label) in [
            ("snapshot_1mb", "snapshot, base, wrote 1 MB"),
            ("snapshot_100mb", "snapshot, base, wrote 100 MB"),
            ("snapshot_code_interpreter_1mb", "snapshot, code-interpreter-v1, 1 MB"),
            ("create_from_snapshot", "create from a snapshot"),
            ("create_plain", "plain create (alternating with it)"),
            ("fork_x1", "fork x1 (until 201)"),
            ("fork_x10", "fork x10 (until 201)"),
            ("create_with_volume", "create with a volume mounted"),
            ("create_without_volume", "create without (alternating)"),
            ("pause_filesystem", "pause, filesystem only"),
            ("resume_filesystem", "resume after it (a fresh boot)"),
            ("pause_freeze", "pause, freeze"),
            ("resume_freeze", "resume after it (a thaw)"),
        ] {
            if !st[k].is_null() {
                println!("{}", stats_row(label, &st[k]));
            }
        }
    }
    let o = &r["operations"];
    if !o.is_null() {
        println!();
        println!("Operations: warm pool of {} vs cold creates; events to {} subscribers", f(o, "/pool_size"), f(o, "/event_subscribers"));
        println!("{}", header());
        for (k, label) in [
            ("create_pooled", "create served from the pool"),
            ("create_cold", "cold create (alternating)"),
            ("event_delivery", "event: API call to each subscriber"),
            ("event_last_subscriber", "event: API call to the last one"),
        ] {
            if !o[k].is_null() {
                println!("{}", stats_row(label, &o[k]));
            }
        }
    }
    let e = &r["egress"];
    if !e.is_null() {
        println!();
        println!("Egress: plain vs policed creates (50-entry policy); 100 MB download from a local test host");
        println!("{}", header());
        for (k, label) in [("create_plain", "create, no policy (alternating)"), ("create_policed", "create, 50-entry policy")] {
            if !e[k].is_null() {
                println!("{}", stats_row(label, &e[k]));
            }
        }
        println!(
            "  download: direct (NAT) {} MB/s, through the egress proxy {} MB/s ({}% of direct)",
            f(e, "/download/direct_mb_s"),
            f(e, "/download/proxied_mb_s"),
            f(e, "/download/proxied_pct_of_direct")
        );
    }
    if let Some(t) = r["targets"].as_array().filter(|t| !t.is_empty()) {
        println!();
        println!("Targets");
        for x in t {
            println!("  {:<62} {:>9} ms  {}", f(x, "/target"), f(x, "/value_ms"), if x["met"].as_bool().unwrap_or(false) { "met" } else { "NOT MET" });
        }
    }
    if let Some(l) = r["loadavg_by_phase"].as_array().filter(|t| !t.is_empty()) {
        println!();
        println!("Load average at the start of each phase");
        for x in l {
            println!("  {:<14} {}", f(x, "/loadavg"), f(x, "/phase"));
        }
    }
    if let Some(notes) = r["notes"].as_array().filter(|n| !n.is_empty()) {
        println!();
        println!("Notes");
        for n in notes {
            println!("  - {}", n.as_str().unwrap_or_default());
        }
    }
}

// ---------------------------------------------------------------------------
// Statistics and host facts

const MIB: f64 = 1024.0 * 1024.0;

fn ms(d: Duration) -> f64 {
    round(d.as_secs_f64() * 1000.0, 3)
}

fn round(x: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (x * p).round() / p
}

/// Nearest-rank percentile of sorted values.
fn pct(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

fn stats(v: &[Duration]) -> Value {
    if v.is_empty() {
        return Value::Null;
    }
    let mut x: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    x.sort_by(|a, b| a.total_cmp(b));
    let mean = x.iter().sum::<f64>() / x.len() as f64;
    json!({
        "n": x.len(),
        "min_ms": round(x[0], 3),
        "p50_ms": round(pct(&x, 50.0), 3),
        "p99_ms": round(pct(&x, 99.0), 3),
        "max_ms": round(x[x.len() - 1], 3),
        "mean_ms": round(mean, 3),
    })
}

fn mean_max(v: &[f64], scale: f64) -> Value {
    if v.is_empty() {
        return Value::Null;
    }
    let mean = v.iter().sum::<f64>() / v.len() as f64 / scale;
    let max = v.iter().copied().fold(f64::MIN, f64::max) / scale;
    json!({ "mean": round(mean, 2), "max": round(max, 2) })
}

fn mib_stats(v: &[f64]) -> Value {
    if v.is_empty() {
        return Value::Null;
    }
    let mean = v.iter().sum::<f64>() / v.len() as f64 / MIB;
    let max = v.iter().copied().fold(f64::MIN, f64::max) / MIB;
    json!({ "mean_mib": round(mean, 2), "max_mib": round(max, 2) })
}

/// /proc/meminfo fields whose change per sandbox is reported.
const HOST_KEYS: &[&str] = &["MemAvailable", "MemFree", "AnonPages", "Cached", "Shmem", "Slab", "SReclaimable", "SUnreclaim", "KernelStack", "PageTables", "Percpu"];

fn meminfo_all() -> std::collections::BTreeMap<String, u64> {
    let s = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    s.lines().filter_map(|l| l.split_once(':').and_then(|(k, v)| v.trim().trim_end_matches("kB").trim().parse().ok().map(|v| (k.to_string(), v)))).collect()
}

fn meminfo(key: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    s.lines().find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()))
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")).unwrap_or_default()
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}

fn cgroup_flavor() -> &'static str {
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        "v2"
    } else if Path::new("/sys/fs/cgroup/unified/cgroup.controllers").exists() {
        "v1 (hybrid, v2 mounted at /sys/fs/cgroup/unified)"
    } else {
        "v1"
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

fn progress(msg: &str) {
    eprintln!("[bench] {msg}");
}

// ---------------------------------------------------------------------------
// Tables

fn f(v: &Value, path: &str) -> String {
    match v.pointer(path) {
        Some(Value::Number(n)) => {
            let x = n.as_f64().unwrap_or(0.0);
            if n.is_u64() || n.is_i64() {
                format!("{x}")
            } else {
                format!("{x:.2}")
            }
        }
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        _ => "-".into(),
    }
}

fn stats_row(label: &str, s: &Value) -> String {
    format!("  {:<34} {:>4} {:>9} {:>9} {:>9} {:>9}", label, f(s, "/n"), f(s, "/min_ms"), f(s, "/p50_ms"), f(s, "/p99_ms"), f(s, "/max_ms"))
}

fn header() -> String {
    format!("  {:<34} {:>4} {:>9} {:>9} {:>9} {:>9}", "", "n", "min ms", "p50 ms", "p99 ms", "max ms")
}

fn print_report(r: &Value) {
    if r["mode"] == "cluster" {
        print_cluster(r);
    } else if r["mode"] == "scale" {
        print_scale(r);
    } else if r["mode"] == "soak" {
        print_soak(r);
    } else if r["mode"] == "server" {
        print_server_tables(r);
    } else {
        print_tables(r);
    }
}

fn print_tables(r: &Value) {
    println!("airlock-bench");
    print_host(r);
    println!();
    print_floor(r, "Floor (bare namespaced process spawn)");
    if let Some(c) = r["components"].as_object().filter(|m| !m.is_empty()) {
        println!();
        println!("Components of a creation, timed alone");
        println!("{}", header());
        for (name, s) in c {
            let label = match name.as_str() {
                "cgroup_attach" => "cgroup attach (write cgroup.procs)",
                "fsync_write_json" => "small file write+fsync+rename",
                other => other,
            };
            println!("{}", stats_row(label, s));
        }
    }
    for (mode, c) in r["create"].as_object().into_iter().flatten() {
        println!();
        println!("Create-to-ready, {}", mode.replace('_', " "));
        println!("{}", header());
        if let Some(s) = c.get("sequential") {
            println!("{}", stats_row("sequential: create() returned", &s["create_returned"]));
            println!("{}", stats_row("sequential: ready (GET /health 204)", &s["ready"]));
            println!("{}", stats_row("sequential: destroy", &s["destroy"]));
            println!("{}", stats_row("sequential: CPU, launcher process", &s["cpu_launcher_rusage"]));
            println!("{}", stats_row("sequential: CPU, sandbox cgroup", &s["cpu_sandbox_cgroup_at_ready"]));
        }
        if let Some(s) = c.get("concurrent") {
            println!("{}", stats_row("concurrent: create() returned", &s["create_returned"]));
            println!("{}", stats_row("concurrent: ready", &s["ready"]));
            println!("{}", stats_row("concurrent: destroy", &s["destroy"]));
            println!(
                "  concurrent: wall {} ms for {} sandboxes ({} ms each); destroy wall {} ms",
                f(s, "/wall_ms"),
                f(s, "/ready/n"),
                f(s, "/per_sandbox_wall_ms"),
                f(s, "/destroy_wall_ms")
            );
        }
    }
    if let Some(rat) = r["ratios"].as_object().filter(|m| !m.is_empty()) {
        println!();
        println!("Ratios (sequential create-to-ready p50 / floor p50)");
        for (k, v) in rat {
            println!("  {:<50} {:>6}x", k, f(v, ""));
        }
    }
    let m = &r["memory"];
    if !m.is_null() {
        println!();
        println!(
            "Idle memory per sandbox ({} sandboxes, internet {}, after {} s idle)",
            f(m, "/sandboxes"),
            on_off(m["internet"].as_bool().unwrap_or(false)),
            f(r, "/params/idle_secs")
        );
        println!("  {:<46} {:>9} {:>9}", "", "mean MiB", "max MiB");
        for (label, key) in [
            ("cgroup memory usage (incl. page cache)", "cgroup_memory"),
            ("  of which anon/rss", "cgroup_anon"),
            ("  of which file/cache", "cgroup_file"),
            ("  kernel memory (kmem)", "cgroup_kmem"),
            ("agent RSS", "agent_rss"),
            ("agent PSS", "agent_pss"),
            ("agent USS (private pages)", "agent_uss"),
        ] {
            println!("  {:<46} {:>9} {:>9}", label, f(m, &format!("/{key}/mean_mib")), f(m, &format!("/{key}/max_mib")));
        }
        println!("  {:<46} {:>9} {:>9}", "tasks in the sandbox", f(m, "/tasks/mean"), f(m, "/tasks/max"));
        println!(
            "  host MemAvailable drop per sandbox: {} MiB on creation, {} MiB given back on destroy",
            f(m, "/host_memavailable_delta_per_sandbox_mib"),
            f(m, "/host_memavailable_released_per_sandbox_mib")
        );
        let parts: Vec<String> = m["host_meminfo_delta_per_sandbox_mib"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| k.as_str() != "MemAvailable")
            .map(|(k, v)| format!("{k} {}", f(v, "")))
            .collect();
        println!("  host /proc/meminfo change per sandbox (MiB; Mem* = drop): {}", parts.join(", "));
    }
    let c = &r["command"];
    if !c.is_null() {
        println!();
        println!("Command round trip on a warm sandbox (agent only, fresh connection each)");
        println!("{}", header());
        println!("{}", stats_row("process.Process/Start /bin/true", &c["start_bin_true"]));
        println!("{}", stats_row("GET /health", &c["health"]));
    }
    if let Some(notes) = r["notes"].as_array().filter(|n| !n.is_empty()) {
        println!();
        println!("Notes");
        for n in notes {
            println!("  - {}", n.as_str().unwrap_or_default());
        }
    }
}

// ---------------------------------------------------------------------------
// Cluster mode: what a hop to another node costs

/// One node of the cluster under measurement.
struct Node {
    name: String,
    pool: Pool,
    host: String,
}

fn run_cluster_mode(args: &Args) -> Result<Value> {
    anyhow::ensure!(args.cluster.len() >= 2, "--cluster needs two node URLs or more");
    let key = args.api_key.clone().ok_or_else(|| anyhow!("--cluster needs --api-key (or AIRLOCK_API_KEY)"))?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(cluster_bench(args, &key))
}

impl Node {
    fn headers<'a>(&self, key: &'a str) -> Vec<(&'static str, &'a str)> {
        vec![("x-api-key", key), ("content-type", "application/json")]
    }

    async fn call(&self, key: &str, method: &str, path: &str, body: Value, want: u16) -> Result<(Value, Duration)> {
        let req = build_req(method, path, &self.host, &self.headers(key), if body.is_null() { Vec::new() } else { body.to_string().into_bytes() });
        let t = Instant::now();
        let r = self.pool.send(req, REQUEST_TIMEOUT).await?;
        let d = r.done - t;
        if r.status != want {
            bail!("{} {method} {path} answered {} (wanted {want}): {}", self.name, r.status, r.text());
        }
        Ok((serde_json::from_slice(&r.body).unwrap_or(Value::Null), d))
    }

    /// `commands.run("true")`: the time to the end-of-stream envelope.
    async fn run_true(&self, s: &Sbx, body: &[u8]) -> Result<Duration> {
        let h = [
            ("e2b-sandbox-id", s.id.as_str()),
            ("e2b-sandbox-port", "49983"),
            ("x-access-token", s.token.as_str()),
            ("content-type", "application/connect+json"),
            ("connect-protocol-version", "1"),
        ];
        process_start(&self.pool, &self.host, &h, body).await
    }

    /// `files.read(path)`, whole: bytes and time.
    async fn download(&self, s: &Sbx, path: &str) -> Result<(usize, Duration)> {
        let h = [("e2b-sandbox-id", s.id.as_str()), ("e2b-sandbox-port", "49983"), ("x-access-token", s.token.as_str())];
        let req = build_req("GET", &format!("/files?path={path}&username=user"), &self.host, &h, Vec::new());
        let t = Instant::now();
        let r = self.pool.send(req, REQUEST_TIMEOUT).await?;
        if r.status != 200 {
            bail!("download answered {}: {}", r.status, r.text());
        }
        Ok((r.body.len(), r.done - t))
    }
}

async fn cluster_bench(args: &Args, key: &str) -> Result<Value> {
    let mut nodes = Vec::new();
    for url in &args.cluster {
        let a = url.trim().trim_start_matches("http://").trim_end_matches('/');
        let addr: std::net::SocketAddr = a.parse().with_context(|| format!("--cluster: {url:?} is not http://IP:PORT"))?;
        nodes.push(Node { name: String::new(), pool: Pool::new(addr), host: a.to_string() });
    }
    // Names, and that every URL is a node of one cluster.
    let (list, _) = nodes[0].call(key, "GET", "/nodes", Value::Null, 200).await?;
    for n in nodes.iter_mut() {
        let found = list.as_array().into_iter().flatten().find(|x| x["url"].as_str().map(|u| u.trim_start_matches("http://").trim_end_matches('/')) == Some(n.host.as_str()));
        n.name = found.and_then(|x| x["name"].as_str()).ok_or_else(|| anyhow!("{} is not a node of the cluster at {}", n.host, args.cluster[0]))?.to_string();
    }
    let all: Vec<String> = list.as_array().into_iter().flatten().filter_map(|x| x["name"].as_str().map(str::to_string)).collect();
    let (a, b) = (&nodes[0], &nodes[1]);
    let n = args.n.max(5);
    let mut made: Vec<(Sbx, &Node)> = Vec::new();
    async fn create(via: &Node, key: &str) -> Result<(Sbx, Duration)> {
        let body = json!({"templateID": "base", "timeout": 600, "allow_internet_access": false});
        let (v, d) = via.call(key, "POST", "/v2/sandboxes", body, 201).await?;
        let id = v["sandboxID"].as_str().ok_or_else(|| anyhow!("no sandboxID"))?.to_string();
        let token = v["envdAccessToken"].as_str().unwrap_or_default().to_string();
        Ok((Sbx { id, token }, d))
    }
    let result = async {
        // Every node but A drained: A places on itself. Then A drained
        // and B open: every create through A is forwarded to B.
        for m in all.iter().filter(|m| **m != a.name) {
            a.call(key, "POST", &format!("/nodes/{m}/drain"), Value::Null, 204).await?;
        }
        progress(&format!("{n} creates through {} placed on itself", a.name));
        let mut local = Vec::new();
        for i in 0..n + 2 {
            let (s, d) = create(a, key).await?;
            if i >= 2 {
                local.push(d);
            }
            made.push((s, a));
        }
        a.call(key, "POST", &format!("/nodes/{}/undrain", b.name), Value::Null, 204).await?;
        a.call(key, "POST", &format!("/nodes/{}/drain", a.name), Value::Null, 204).await?;
        let (states, _) = a.call(key, "GET", "/nodes", Value::Null, 200).await?;
        let states: Vec<String> = states.as_array().into_iter().flatten().map(|x| format!("{} {}", x["name"].as_str().unwrap_or(""), x["state"].as_str().unwrap_or(""))).collect();
        progress(&format!("{n} creates through {} forwarded to {} (nodes: {})", a.name, b.name, states.join(", ")));
        let mut remote = Vec::new();
        for i in 0..n + 2 {
            let (s, d) = create(a, key).await?;
            let (v, _) = a.call(key, "GET", &format!("/sandboxes/{}", s.id), Value::Null, 200).await?;
            anyhow::ensure!(v["clientID"] == b.name.as_str(), "a create through drained {} went to {} instead of {}", a.name, v["clientID"], b.name);
            if i >= 2 {
                remote.push(d);
            }
            made.push((s, b));
        }
        // A sandbox on B, through B and through A.
        let on_b = made.last().map(|(s, _)| s.clone()).ok_or_else(|| anyhow!("no sandbox"))?;
        let body = start_envelope("/bin/true", &[]);
        let (mut direct, mut hop) = (Vec::new(), Vec::new());
        progress(&format!("{n} commands.run on a sandbox of {}: through it and through {}", b.name, a.name));
        for i in 0..n + 5 {
            let d1 = b.run_true(&on_b, &body).await?;
            let d2 = a.run_true(&on_b, &body).await?;
            if i >= 5 {
                direct.push(d1);
                hop.push(d2);
            }
        }
        // 64 MiB through each.
        let mib = 64usize;
        let fill = start_envelope("/bin/sh", &["-c", &format!("head -c {}M /dev/urandom > /tmp/big", mib)]);
        b.run_true(&on_b, &fill).await?;
        let (mut dl_direct, mut dl_hop) = (Vec::new(), Vec::new());
        progress(&format!("downloads of {mib} MiB through {} and through {}", b.name, a.name));
        for _ in 0..3 {
            let (len1, d1) = b.download(&on_b, "/tmp/big").await?;
            let (len2, d2) = a.download(&on_b, "/tmp/big").await?;
            anyhow::ensure!(len1 == mib << 20 && len2 == len1, "downloads of {len1} and {len2} bytes, wanted {}", mib << 20);
            dl_direct.push(d1);
            dl_hop.push(d2);
        }
        // A template of 64 MiB built on B, created through A with only A
        // open: A fetches its layer from B and checks it before the create.
        let tpl = format!("bench-move-{}", std::process::id());
        progress(&format!("a {mib} MiB template built on {}, then created on {} (which fetches it), twice", b.name, a.name));
        let recipe = format!("FROM base\nRUN head -c {mib}M /dev/urandom > /opt/blob\n");
        b.call(key, "POST", "/templates", json!({"name": tpl, "recipe": recipe}), 200).await?;
        let published = Instant::now();
        while a.call(key, "GET", &format!("/templates/{tpl}"), Value::Null, 200).await.is_err() {
            anyhow::ensure!(published.elapsed() < Duration::from_secs(60), "template {tpl} was not published within 60 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        a.call(key, "POST", &format!("/nodes/{}/undrain", a.name), Value::Null, 204).await?;
        a.call(key, "POST", &format!("/nodes/{}/drain", b.name), Value::Null, 204).await?;
        let mut moved = Vec::new();
        for _ in 0..2 {
            let body = json!({"templateID": tpl, "timeout": 600, "allow_internet_access": false});
            let (v, d) = a.call(key, "POST", "/v2/sandboxes", body, 201).await?;
            let id = v["sandboxID"].as_str().ok_or_else(|| anyhow!("no sandboxID"))?.to_string();
            let (where_, _) = a.call(key, "GET", &format!("/sandboxes/{id}"), Value::Null, 200).await?;
            anyhow::ensure!(where_["clientID"] == a.name.as_str(), "the template's create went to {} instead of {}", where_["clientID"], a.name);
            made.push((Sbx { id, token: v["envdAccessToken"].as_str().unwrap_or_default().to_string() }, a));
            moved.push(d);
        }
        let _ = a.call(key, "DELETE", &format!("/templates/{tpl}?force=true"), Value::Null, 204).await;
        let per_mib = |v: &[Duration]| {
            let best = v.iter().min().copied().unwrap_or_default();
            json!({ "best_ms": ms(best), "ms_per_mib": round(ms(best) / mib as f64, 3), "mib_per_s": round(mib as f64 / best.as_secs_f64().max(1e-9), 1) })
        };
        anyhow::Ok(json!({
            "mode": "cluster",
            "nodes": nodes.iter().map(|n| n.name.clone()).collect::<Vec<_>>(),
            "asked": a.name,
            "other": b.name,
            "create": { "placed_here": stats(&local), "forwarded": stats(&remote) },
            "commands_run_true": { "through_its_node": stats(&direct), "through_another": stats(&hop) },
            "download_64mib": { "through_its_node": per_mib(&dl_direct), "through_another": per_mib(&dl_hop) },
            "template_64mib": { "first_create_fetching_ms": ms(moved[0]), "next_create_ms": ms(moved[1]) },
        }))
    }
    .await;
    // Undrain everything and remove what was made, whatever happened.
    for m in &all {
        let _ = a.call(key, "POST", &format!("/nodes/{m}/undrain"), Value::Null, 204).await;
    }
    for (s, _) in &made {
        let _ = a.call(key, "DELETE", &format!("/sandboxes/{}", s.id), Value::Null, 204).await;
    }
    result
}

fn print_cluster(r: &Value) {
    println!("airlock-bench --cluster (nodes {}; asked {}, the other {})", r["nodes"], r["asked"].as_str().unwrap_or(""), r["other"].as_str().unwrap_or(""));
    let row = |label: &str, v: &Value| println!("  {label:<44} p50 {:>8.2} ms  p99 {:>8.2} ms  (n={})", f64_at(v, "/p50_ms"), f64_at(v, "/p99_ms"), v["n"]);
    row("create, placed on the node asked", &r["create"]["placed_here"]);
    row("create, forwarded to another node", &r["create"]["forwarded"]);
    row("commands.run(true), through its node", &r["commands_run_true"]["through_its_node"]);
    row("commands.run(true), through another node", &r["commands_run_true"]["through_another"]);
    for (label, k) in [("through its node", "through_its_node"), ("through another node", "through_another")] {
        let v = &r["download_64mib"][k];
        println!("  download 64 MiB, {label:<27} {:>8.1} ms  {:>6.3} ms/MiB  {:>7.1} MiB/s", f64_at(v, "/best_ms"), f64_at(v, "/ms_per_mib"), f64_at(v, "/mib_per_s"));
    }
    let t = &r["template_64mib"];
    println!(
        "  create from a 64 MiB template another node built: {:>8.1} ms (fetching and verifying it), then {:>6.1} ms",
        f64_at(t, "/first_create_fetching_ms"),
        f64_at(t, "/next_create_ms")
    );
}
