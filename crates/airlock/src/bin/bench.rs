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
//! It needs root. Build with `cargo build --release -p airlock` and run
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
    let args = Args::parse();
    if let Some(path) = &args.render {
        match std::fs::read(path).map_err(anyhow::Error::from).and_then(|b| serde_json::from_slice::<Value>(&b).map_err(anyhow::Error::from)) {
            Ok(report) => print_tables(&report),
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
    match run(&args) {
        Ok(report) => {
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
            } else {
                print_tables(&report);
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
        let mut spec = SandboxSpec::new(self.new_id(phase));
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
        None => std::env::current_exe().context("locating this executable")?.parent().map(|d| d.join("airlock")).ok_or_else(|| anyhow!("no parent directory for this executable"))?,
    };
    if !p.is_file() {
        bail!("agent binary {} not found: build it next to the bench with `cargo build --release -p airlock` (or pass --binary)", p.display());
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
    let bench = Bench { backend: &backend, root, live: Mutex::new(Vec::new()), counter: AtomicUsize::new(0), tag: std::process::id().to_string() };
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
        "host": {
            "kernel": kernel(),
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "cgroup": cgroup_flavor(),
            "loadavg_before": load_before,
            "loadavg_after": loadavg(),
            "mem_total_kib": meminfo("MemTotal"),
        },
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
            vec!["--unshare-all", "--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64", "--proc", "/proc", "--dev", "/dev", "true"],
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
        let payload = br#"{"process":{"cmd":"/bin/true"},"stdin":false}"#;
        let mut body = vec![0u8];
        body.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        body.extend_from_slice(payload);
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
    let mut b = &r.body[..];
    let (mut started, mut exit) = (false, None);
    while b.len() >= 5 {
        let flags = b[0];
        let len = u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
        if b.len() < 5 + len {
            bail!("truncated Connect envelope");
        }
        let v: Value = serde_json::from_slice(&b[5..5 + len]).context("Connect message is not JSON")?;
        b = &b[5 + len..];
        if flags & 2 != 0 {
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
    s.lines()
        .filter_map(|l| l.split_once(':').and_then(|(k, v)| v.trim().trim_end_matches("kB").trim().parse().ok().map(|v| (k.to_string(), v))))
        .collect()
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
    format!(
        "  {:<34} {:>4} {:>9} {:>9} {:>9} {:>9}",
        label,
        f(s, "/n"),
        f(s, "/min_ms"),
        f(s, "/p50_ms"),
        f(s, "/p99_ms"),
        f(s, "/max_ms")
    )
}

fn header() -> String {
    format!("  {:<34} {:>4} {:>9} {:>9} {:>9} {:>9}", "", "n", "min ms", "p50 ms", "p99 ms", "max ms")
}

fn print_tables(r: &Value) {
    println!("airlock-bench");
    println!(
        "  host: kernel {}, {} cpus, cgroup {}, load {} -> {}",
        f(r, "/host/kernel"),
        f(r, "/host/cpus"),
        f(r, "/host/cgroup"),
        f(r, "/host/loadavg_before"),
        f(r, "/host/loadavg_after")
    );
    println!();
    println!("Floor (bare namespaced process spawn)");
    println!("{}", header());
    for (name, s) in r["floor"].as_object().into_iter().flatten() {
        println!("{}", stats_row(name, s));
    }
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
            println!("  concurrent: wall {} ms for {} sandboxes ({} ms each); destroy wall {} ms", f(s, "/wall_ms"), f(s, "/ready/n"), f(s, "/per_sandbox_wall_ms"), f(s, "/destroy_wall_ms"));
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
        println!("Idle memory per sandbox ({} sandboxes, internet {}, after {} s idle)", f(m, "/sandboxes"), on_off(m["internet"].as_bool().unwrap_or(false)), f(r, "/params/idle_secs"));
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
