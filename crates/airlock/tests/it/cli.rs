//! The `airlock` client commands as a user runs them: the real binary
//! against a real server (`server::Server`), configured through the
//! environment like a shell session would be.

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::server::Server;

const BIN: &str = env!("CARGO_BIN_EXE_airlock");

/// A server and a key for it, made with `airlock keys create` as an
/// operator would.
struct Cli {
    srv: Server,
    key: String,
}

impl Cli {
    async fn start() -> Self {
        let srv = Server::start(&[]).await;
        let out = Command::new(BIN).args(["keys", "create", "--name", "cli-tests", "--data-dir"]).arg(&srv.data).output().expect("keys create");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let key = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(key.starts_with("e2b_"), "{key}");
        Self { srv, key }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.srv.port)
    }

    /// The CLI with AIRLOCK_URL and AIRLOCK_API_KEY set, nothing else.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .env("AIRLOCK_URL", self.url())
            .env("AIRLOCK_API_KEY", &self.key)
            .env_remove("E2B_API_URL")
            .env_remove("E2B_SANDBOX_URL")
            .env_remove("E2B_API_KEY")
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run airlock")
    }

    /// Stdout of a command that must succeed.
    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(o.status.success(), "airlock {args:?} failed ({:?}): {}", o.status.code(), String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// `--json` output of a command that must succeed.
    fn json(&self, args: &[&str]) -> Value {
        let (code, v) = self.json_any(args);
        assert_eq!(code, Some(0), "airlock {args:?}: {v}");
        v
    }

    /// Exit code and `--json` output (the flag goes right after the
    /// subcommand, before any `--`).
    fn json_any(&self, args: &[&str]) -> (Option<i32>, Value) {
        let mut a = args.to_vec();
        a.insert(1, "--json");
        let o = self.run(&a);
        let out = String::from_utf8_lossy(&o.stdout);
        let v = serde_json::from_str(&out).unwrap_or_else(|e| panic!("airlock {a:?} printed invalid JSON ({e}): {out} {}", stderr_line(&o)));
        (o.status.code(), v)
    }

    /// A sandbox without internet (no veth to set up), by id.
    fn sandbox(&self) -> String {
        let v = self.json(&["sandbox", "create", "--no-internet", "--timeout", "300"]);
        v["sandboxID"].as_str().expect("sandboxID").to_string()
    }
}

fn stderr_line(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test]
async fn exec_passes_exit_codes_and_streams_through() {
    let cli = Cli::start().await;
    let id = cli.sandbox();

    let o = cli.run(&["exec", &id, "--", "sh", "-c", "exit 3"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr_line(&o));
    let o = cli.run(&["exec", &id, "--", "sh", "-c", "echo to-out; echo to-err >&2"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "to-out\n");
    assert_eq!(String::from_utf8_lossy(&o.stderr), "to-err\n");
    // Killed by a signal: 128 + the signal, as a shell reports it.
    let o = cli.run(&["exec", &id, "--", "sh", "-c", "kill -9 $$"]);
    assert_eq!(o.status.code(), Some(137));
    // Options: working directory, environment, user, and stdin.
    let out = cli.ok(&["exec", "-w", "/tmp", "-e", "X=1 2", "-u", "root", &id, "--", "sh", "-c", "pwd; echo $X; id -un"]);
    assert_eq!(out, "/tmp\n1 2\nroot\n");
    let mut child = cli.cmd(&["exec", "-i", &id, "--", "wc", "-c"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("spawn");
    child.stdin.take().expect("stdin").write_all(&[b'x'; 100_000]).expect("write");
    let o = child.wait_with_output().expect("wait");
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "100000");

    // Errors: one line on stderr and exit code 1.
    let o = cli.run(&["exec", "nosuchsandbox", "--", "true"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr_line(&o);
    assert!(err.starts_with("error: ") && err.trim_end().lines().count() == 1 && err.contains("nosuchsandbox"), "{err}");
    let o = cli.run(&["exec", &id, "--", "/no/such/program"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr_line(&o).contains("not found"), "{}", stderr_line(&o));
    let o = cli.cmd(&["sandbox", "list"]).env("AIRLOCK_API_KEY", "e2b_0000000000000000000000000000000000000bad").output().expect("run");
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr_line(&o).contains("authentication failed"), "{}", stderr_line(&o));
    let o = cli.cmd(&["sandbox", "list"]).env_remove("AIRLOCK_API_KEY").output().expect("run");
    assert!(stderr_line(&o).contains("AIRLOCK_API_KEY"), "{}", stderr_line(&o));
}

#[tokio::test]
async fn json_output_parses_for_every_command() {
    let cli = Cli::start().await;
    let created = cli.json(&["sandbox", "create", "--no-internet", "-m", "team=cli", "-e", "GREETING=hi", "--cpus", "1", "--memory-mb", "256"]);
    let id = created["sandboxID"].as_str().expect("id").to_string();
    assert_eq!((created["cpuCount"].as_u64(), created["memoryMB"].as_u64()), (Some(1), Some(256)));
    let other = cli.sandbox();

    let list = cli.json(&["sandbox", "list"]);
    assert_eq!(list.as_array().expect("array").len(), 2);
    let mine = cli.json(&["sbx", "list", "--metadata", "team=cli"]);
    assert_eq!(mine.as_array().expect("array").len(), 1);
    assert_eq!(mine[0]["sandboxID"], id.as_str());
    let info = cli.json(&["sbx", "info", &id]);
    assert_eq!((info["state"].as_str(), info["metadata"]["team"].as_str()), (Some("running"), Some("cli")));

    let (code, ran) = cli.json_any(&["exec", &id, "--", "sh", "-c", "echo $GREETING; exit 2"]);
    assert_eq!((code, ran["exitCode"].as_i64(), ran["stdout"].as_str()), (Some(2), Some(2), Some("hi\n")));

    let bg = cli.json(&["exec", "-d", "--tag", "sleeper", &id, "--", "sleep", "600"]);
    let pid = bg["pid"].as_u64().expect("pid");
    let logs = cli.json(&["logs", &id]);
    assert!(logs["setup"].is_array(), "{logs}");
    let procs = &logs["processes"];
    assert!(procs.as_array().expect("array").iter().any(|p| p["pid"].as_u64() == Some(pid) && p["tag"] == "sleeper"), "{procs}");

    let t = cli.json(&["sbx", "timeout", &id, "1200"]);
    assert!(t["endAt"].is_string(), "{t}");
    let m = cli.json(&["sbx", "metrics", &id]);
    assert!(m.as_array().is_some_and(|a| !a.is_empty()), "{m}");

    let p = cli.json(&["sbx", "pause", &id]);
    assert_eq!(p["paused"], true);
    assert_eq!(cli.json(&["sbx", "pause", &id])["paused"], false, "already paused");
    let paused = cli.json(&["sbx", "list", "--state", "paused"]);
    assert_eq!(paused.as_array().expect("array").len(), 1);
    let r = cli.json(&["sbx", "resume", &id, "--timeout", "300"]);
    assert_eq!(r["state"], "running");

    let k = cli.json(&["sbx", "kill", &id, &other]);
    assert_eq!(k["killed"].as_array().expect("array").len(), 2);
    assert_eq!(cli.json(&["sbx", "list"]), Value::Array(vec![]));
    let o = cli.run(&["sbx", "kill", &id]);
    assert_eq!(o.status.code(), Some(1), "killing twice is an error");
}

#[tokio::test]
async fn human_output_flags_env_fallback_help_and_completions() {
    let cli = Cli::start().await;
    let id = cli.ok(&["sandbox", "create", "--no-internet", "-m", "who=me"]).trim().to_string();
    assert_eq!(id.len(), 20, "create prints just the id: {id:?}");
    let table = cli.ok(&["sbx", "ls"]);
    let mut lines = table.lines();
    assert!(lines.next().is_some_and(|h| h.starts_with("SANDBOX ID") && h.contains("STATE")), "{table}");
    assert!(lines.next().is_some_and(|l| l.starts_with(&id) && l.contains("running") && l.contains("who=me")), "{table}");
    let info = cli.ok(&["sandbox", "info", &id]);
    assert!(info.contains("State        running"), "{info}");

    // --url/--api-key win over the environment; the E2B variables are the fallback.
    let o = Command::new(BIN).args(["sbx", "list", "--json", "--url", &cli.url(), "--api-key", &cli.key]).env("AIRLOCK_URL", "http://127.0.0.1:9").output().expect("run");
    assert!(o.status.success(), "{}", stderr_line(&o));
    let o = Command::new(BIN)
        .args(["sbx", "list", "--json"])
        .env_remove("AIRLOCK_URL")
        .env_remove("AIRLOCK_API_KEY")
        .env("E2B_API_URL", cli.url())
        .env("E2B_API_KEY", &cli.key)
        .output()
        .expect("run");
    assert!(o.status.success(), "{}", stderr_line(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains(&id));

    // Every command's help shows an example.
    for cmd in [
        vec!["serve"],
        vec!["keys"],
        vec!["runtime"],
        vec!["sandbox"],
        vec!["sandbox", "create"],
        vec!["sandbox", "list"],
        vec!["sandbox", "info"],
        vec!["sandbox", "kill"],
        vec!["sandbox", "pause"],
        vec!["sandbox", "resume"],
        vec!["sandbox", "timeout"],
        vec!["sandbox", "metrics"],
        vec!["exec"],
        vec!["shell"],
        vec!["cp"],
        vec!["run"],
        vec!["logs"],
        vec!["mcp"],
        vec!["sandbox", "configure"],
        vec!["completions"],
    ] {
        let mut args = cmd.clone();
        args.push("--help");
        let help = cli.ok(&args);
        assert!(help.contains("Example"), "`airlock {}` help has no example:\n{help}", cmd.join(" "));
    }
    let bash = cli.ok(&["completions", "bash"]);
    assert!(bash.contains("_airlock()") && bash.contains("sandbox"), "bash completion script");
    assert!(cli.ok(&["completions", "zsh"]).contains("#compdef airlock"));
    // The server-side commands are unchanged.
    assert!(cli.ok(&["keys", "list", "--data-dir", cli.srv.data.to_str().expect("utf-8")]).contains("cli-tests"));
}

#[tokio::test]
async fn cp_round_trips_a_50_mib_binary_file() {
    let cli = Cli::start().await;
    let id = cli.sandbox();
    let dir = tempfile::tempdir().expect("tmp");
    let src = dir.path().join("blob.bin");
    // 50 MiB of bytes without structure (a xorshift stream).
    let mut data = vec![0u8; 50 << 20];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    std::fs::write(&src, &data).expect("write");
    let want = format!("{:x}", Sha256::digest(&data));

    let out = cli.json(&["cp", src.to_str().expect("utf-8"), &format!("{id}:/home/user/")]);
    assert_eq!(out["destination"], format!("{id}:/home/user/blob.bin"));
    assert_eq!(out["bytes"].as_u64(), Some(50 << 20));
    let inside = cli.ok(&["exec", &id, "--", "sha256sum", "/home/user/blob.bin"]);
    assert!(inside.starts_with(&want), "{inside} vs {want}");

    let back = dir.path().join("back.bin");
    cli.ok(&["cp", &format!("{id}:blob.bin"), back.to_str().expect("utf-8")]);
    let got = std::fs::read(&back).expect("read back");
    assert_eq!(got.len(), data.len());
    assert_eq!(format!("{:x}", Sha256::digest(&got)), want, "byte for byte");

    // Into a local directory keeps the name; stdin and stdout work too.
    cli.ok(&["cp", &format!("{id}:/home/user/blob.bin"), &format!("{}/", dir.path().display())]);
    assert_eq!(std::fs::metadata(dir.path().join("blob.bin")).expect("stat").len(), 50 << 20);
    let mut child = cli.cmd(&["cp", "-", &format!("{id}:/tmp/piped.txt")]).stdin(Stdio::piped()).spawn().expect("spawn");
    child.stdin.take().expect("stdin").write_all(b"through a pipe").expect("write");
    assert!(child.wait().expect("wait").success());
    assert_eq!(cli.ok(&["cp", &format!("{id}:/tmp/piped.txt"), "-"]), "through a pipe");

    let o = cli.run(&["cp", &format!("{id}:/no/such/file"), back.to_str().expect("utf-8")]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr_line(&o).contains("not found"), "{}", stderr_line(&o));
    assert_eq!(std::fs::read(&back).expect("still there").len(), 50 << 20, "a failed copy leaves the old file alone");
}

#[tokio::test]
async fn run_creates_executes_and_kills() {
    let cli = Cli::start().await;
    let o = cli.run(&["run", "--no-internet", "-e", "N=3", "base", "--", "sh", "-c", "seq $N; exit 5"]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr_line(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "1\n2\n3\n");
    assert_eq!(cli.json(&["sbx", "list"]), Value::Array(vec![]), "the sandbox is gone");

    // logs: a tagged background process's output, followed to its end.
    let id = cli.sandbox();
    // It waits for a file, so it is still running when listed however
    // slow the host (an emulated VM takes seconds to start the CLI).
    cli.ok(&["exec", "-d", "--tag", "job", &id, "--", "sh", "-c", "echo first; while [ ! -e /tmp/go ]; do sleep 0.1; done; echo second"]);
    let table = cli.ok(&["logs", &id]);
    assert!(table.starts_with("PID") && table.contains("job"), "{table}");
    cli.ok(&["exec", &id, "--", "touch", "/tmp/go"]);
    assert_eq!(cli.ok(&["logs", &id, "job"]), "first\nsecond\n");
}

/// Reads a PTY master on a thread into a shared buffer.
fn pump(master: OwnedFd) -> Arc<Mutex<Vec<u8>>> {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let b = buf.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        loop {
            // SAFETY: reading into a buffer we own, of its length.
            let n = unsafe { libc::read(master.as_raw_fd(), chunk.as_mut_ptr().cast(), chunk.len()) };
            if n <= 0 {
                return;
            }
            b.lock().expect("lock").extend_from_slice(&chunk[..n as usize]);
        }
    });
    buf
}

fn wait_for(buf: &Arc<Mutex<Vec<u8>>>, needle: &str, secs: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if String::from_utf8_lossy(&buf.lock().expect("lock")).contains(needle) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn lflag(fd: i32) -> libc::tcflag_t {
    // SAFETY: tcgetattr fills the struct we pass.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    assert_eq!(unsafe { libc::tcgetattr(fd, &mut t) }, 0);
    t.c_lflag
}

#[tokio::test]
async fn shell_works_under_a_pseudo_terminal() {
    let cli = Cli::start().await;
    let id = cli.sandbox();
    let (mut m, mut s) = (-1, -1);
    let ws = libc::winsize { ws_row: 33, ws_col: 101, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: openpty writes two fds into the ints we pass.
    assert_eq!(unsafe { libc::openpty(&mut m, &mut s, std::ptr::null_mut(), std::ptr::null(), &ws) }, 0);
    // SAFETY: both fds were just opened and are owned from here on.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(m), OwnedFd::from_raw_fd(s)) };
    let cooked = lflag(slave.as_raw_fd());
    assert!(cooked & libc::ICANON != 0 && cooked & libc::ECHO != 0);

    let mut cmd = cli.cmd(&["shell", &id]);
    cmd.stdin(Stdio::from(slave.try_clone().expect("dup"))).stdout(Stdio::from(slave.try_clone().expect("dup"))).stderr(Stdio::from(slave.try_clone().expect("dup")));
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            // Its own session with the PTY as controlling terminal, as a login would.
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn shell");
    let out = pump(master.try_clone().expect("dup"));
    let write = |s: &str| {
        // SAFETY: writing a buffer we own, of its length.
        let n = unsafe { libc::write(master.as_raw_fd(), s.as_ptr().cast(), s.len()) };
        assert_eq!(n, s.len() as isize);
    };

    assert!(wait_for(&out, "$ ", 20), "no prompt: {}", String::from_utf8_lossy(&out.lock().expect("lock")));
    let raw = lflag(slave.as_raw_fd());
    assert!(raw & libc::ICANON == 0 && raw & libc::ECHO == 0, "the local terminal is in raw mode while the shell runs");
    write("echo hi-$((6*7))\n");
    assert!(wait_for(&out, "hi-42", 20), "{}", String::from_utf8_lossy(&out.lock().expect("lock")));
    write("stty size\n");
    assert!(wait_for(&out, "33 101", 10), "the remote terminal has the local size: {}", String::from_utf8_lossy(&out.lock().expect("lock")));
    write("exit\n");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        assert!(Instant::now() < deadline, "shell did not exit");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0));
    assert_eq!(lflag(slave.as_raw_fd()), cooked, "the terminal is restored on exit");
}

#[tokio::test]
async fn snapshot_fork_reset_and_export_commands() {
    let cli = Cli::start().await;
    let id = cli.ok(&["sbx", "create", "--no-internet", "--timeout", "120"]).trim().to_string();
    cli.ok(&["exec", &id, "--", "sh", "-c", "echo hi > /home/user/f"]);
    let snap = cli.ok(&["snapshot", "create", &id, "--name", "cli-snap"]).trim().to_string();
    assert_eq!(snap, "cli-snap:default");
    let list = cli.json(&["snapshot", "list", "--sandbox", &id]);
    assert_eq!(list[0]["snapshotID"], "cli-snap:default", "{list}");
    let from = cli.ok(&["sbx", "create", "--template", &snap, "--no-internet"]).trim().to_string();
    assert_eq!(cli.ok(&["exec", &from, "--", "cat", "/home/user/f"]), "hi\n");

    let forks = cli.ok(&["fork", &id, "-n", "2", "--timeout", "60"]);
    let forks: Vec<&str> = forks.lines().collect();
    assert_eq!(forks.len(), 2, "{forks:?}");
    assert_eq!(cli.ok(&["exec", forks[1], "--", "cat", "/home/user/f"]), "hi\n");
    let o = cli.run(&["fork", &id, "-n", "0"]);
    assert!(!o.status.success() && stderr_line(&o).contains("count"), "{}", stderr_line(&o));

    cli.ok(&["sbx", "pause", &id, "--filesystem"]);
    assert_eq!(cli.json(&["sbx", "info", &id])["state"], "paused");
    cli.ok(&["sbx", "resume", &id]);
    assert_eq!(cli.ok(&["exec", &id, "--", "cat", "/home/user/f"]), "hi\n");

    let dir = tempfile::tempdir().expect("tmp");
    let archive = dir.path().join("state.tar.zst");
    cli.ok(&["sbx", "export", &id, "-o", archive.to_str().expect("path")]);
    let imported = cli.ok(&["sbx", "import", archive.to_str().expect("path"), "--timeout", "60"]).trim().to_string();
    assert_eq!(cli.ok(&["exec", &imported, "--", "cat", "/home/user/f"]), "hi\n");

    assert!(cli.ok(&["sbx", "health", &id, "--check", "test -f /home/user/f"]).contains("healthy"));
    let o = cli.run(&["sbx", "health", &id, "--check", "false"]);
    assert_eq!(o.status.code(), Some(1), "unhealthy exits 1");
    cli.ok(&["sbx", "reset", &id, "--hard"]);
    let o = cli.run(&["exec", &id, "--", "cat", "/home/user/f"]);
    assert!(!o.status.success(), "the file is gone after a hard reset");

    let o = cli.run(&["snapshot", "rm", &snap]);
    assert!(!o.status.success(), "in use by {from}");
    cli.ok(&["sbx", "kill", &from]);
    assert_eq!(cli.ok(&["snapshot", "rm", &snap]).trim(), snap);
    let o = cli.run(&["snapshot", "rm", &snap]);
    assert!(stderr_line(&o).contains("no such snapshot"), "{}", stderr_line(&o));
}

#[tokio::test]
async fn volume_commands_create_copy_both_ways_mount_and_remove() {
    let cli = Cli::start().await;
    let id = cli.ok(&["volume", "create", "clivol", "--size-mb", "32"]).trim().to_string();
    assert!(id.starts_with("vol_"), "{id}");
    let list = cli.json(&["volume", "list"]);
    assert_eq!(list[0]["name"], "clivol");
    let dir = tempfile::tempdir().expect("tmp");
    let src = dir.path().join("in.bin");
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&src, &data).expect("write");
    cli.ok(&["volume", "cp", src.to_str().expect("utf8"), "vol:clivol:/sub/in.bin"]);
    let ls = cli.ok(&["volume", "ls", "clivol", "/sub"]);
    assert!(ls.contains("/sub/in.bin") && ls.contains("3000000"), "{ls}");
    // Mounted in a sandbox, it is the same file.
    let sbx = cli.json(&["sandbox", "create", "--volume", "clivol:/mnt/v"]);
    let sid = sbx["sandboxID"].as_str().or(sbx["id"].as_str()).expect("id").to_string();
    let out = cli.ok(&["exec", &sid, "--", "sha256sum", "/mnt/v/sub/in.bin"]);
    assert!(out.starts_with(&format!("{:x}", Sha256::digest(&data))), "{out}");
    assert!(!cli.run(&["volume", "rm", "clivol"]).status.success(), "refused while mounted");
    cli.ok(&["sandbox", "kill", &sid]);
    let back = dir.path().join("out.bin");
    cli.ok(&["volume", "cp", &format!("vol:{id}:/sub/in.bin"), back.to_str().expect("utf8")]);
    assert_eq!(std::fs::read(&back).expect("read"), data);
    cli.ok(&["volume", "rm", "clivol:/sub", "-r"]);
    assert_eq!(cli.ok(&["volume", "ls", "clivol"]), "");
    cli.ok(&["volume", "rm", "clivol"]);
    assert!(!cli.run(&["volume", "ls", "clivol"]).status.success(), "gone");
}

#[tokio::test]
async fn pool_resources_alerts_and_top_commands() {
    let cli = Cli::start().await;
    let p = cli.json(&["pool", "set", "small", "--template", "base", "--size", "1", "--memory-mb", "128", "--no-internet"]);
    assert_eq!((p["name"].as_str(), p["size"].as_u64()), (Some("small"), Some(1)), "{p}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while cli.json(&["pool", "list"])[0]["ready"] != 1 {
        assert!(Instant::now() < deadline, "the pool did not fill");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(cli.ok(&["pool", "list"]).contains("1/1"));
    // A create of the pool's shape is served from it.
    let id = cli.ok(&["sbx", "create", "--no-internet", "--memory-mb", "128", "-e", "FROM=cli"]).trim().to_string();
    assert_eq!(cli.ok(&["exec", &id, "--", "sh", "-c", "echo $FROM"]), "cli\n");
    assert_eq!(cli.json(&["pool", "list"])[0]["claims"], 1);

    let d = cli.json(&["sbx", "resources", &id, "--memory-mb", "256", "--cpus", "1"]);
    assert_eq!((d["memoryMB"].as_u64(), d["cpuCount"].as_u64()), (Some(256), Some(1)), "{d}");
    let o = cli.run(&["sbx", "resources", &id]);
    assert!(!o.status.success() && stderr_line(&o).contains("nothing to change"), "{}", stderr_line(&o));
    assert!(cli.ok(&["sbx", "alerts", &id, "--memory", "90"]).contains("memory 90%"));
    assert_eq!(cli.json(&["sbx", "info", &id])["alerts"]["memoryPct"], 90.0);
    assert!(cli.ok(&["sbx", "alerts", &id]).contains("no alerts"));

    let top = cli.ok(&["sbx", "top", "--once"]);
    assert!(top.contains(&id) && top.contains("NET IN / OUT"), "{top}");
    let one = cli.ok(&["sbx", "top", &id, "--once", "--interval", "0.5"]);
    assert!(one.contains("MiB"), "{one}");
    assert_eq!(cli.ok(&["pool", "delete", "small"]).trim(), "small");
    let o = cli.run(&["pool", "delete", "small"]);
    assert!(!o.status.success(), "gone");
}

#[tokio::test]
async fn webhook_commands_create_list_show_and_remove() {
    let cli = Cli::start().await;
    // No sandbox runs here, so nothing is ever delivered to the URL.
    let mut c = cli.cmd(&["webhook", "create", "http://127.0.0.1:9/hook", "--event", "created,sandbox.lifecycle.killed", "--name", "cli"]);
    let o = c.env("AIRLOCK_WEBHOOK_SECRET", "from-the-env").output().expect("run");
    assert!(o.status.success(), "{}", stderr_line(&o));
    let id = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert!(id.starts_with("wh_"), "{id}");
    let list = cli.json(&["webhook", "list"]);
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!((list[0]["id"].as_str(), list[0]["signed"].as_bool()), (Some(id.as_str()), Some(true)), "the secret came from the environment: {list}");
    assert!(!list.to_string().contains("from-the-env"), "never shown: {list}");
    let show = cli.ok(&["webhook", "show", &id]);
    assert!(show.contains("created,sandbox.lifecycle.killed") && show.contains("delivered:  0"), "{show}");
    let table = cli.ok(&["webhooks", "ls"]);
    assert!(table.contains(&id) && table.contains("http://127.0.0.1:9/hook"), "{table}");
    let o = cli.run(&["webhook", "create", "ftp://127.0.0.1:9/hook"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr_line(&o).contains("https://"), "{}", stderr_line(&o));
    let o = cli.run(&["webhook", "create", "http://127.0.0.1:9/hook", "-e", "exploded"]);
    assert!(stderr_line(&o).contains("unknown event type"), "{}", stderr_line(&o));
    cli.ok(&["webhook", "rm", &id]);
    assert_eq!(cli.json(&["webhook", "list"]), Value::Array(vec![]));
    assert_eq!(cli.run(&["webhook", "rm", &id]).status.code(), Some(1), "removing twice is an error");
}

/// Sandbox networks from the CLI: two sandboxes join one at create (by
/// name) and talk by name on a port of their own; a third, outside, cannot;
/// broadcast reaches the members and reports each exit code.
#[tokio::test]
async fn network_commands_connect_members_and_broadcast() {
    let cli = Cli::start().await;
    let a = cli.ok(&["sbx", "create", "--join-network", "lab=alpha", "-m", "team=lab"]).trim().to_string();
    let b = cli.ok(&["sbx", "create", "--join-network", "lab=beta", "-m", "team=lab"]).trim().to_string();
    let c = cli.ok(&["sbx", "create"]).trim().to_string();
    let show = cli.json(&["network", "show", "lab"]);
    let names: Vec<&str> = show["members"].as_array().expect("members").iter().filter_map(|m| m["name"].as_str()).collect();
    assert_eq!(names.len(), 2, "{show}");
    assert!(names.contains(&"alpha") && names.contains(&"beta"), "{show}");
    // A listener in beta, on a port nothing else uses.
    let serve = "import socket\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('0.0.0.0', 7777)); s.listen(8)\nwhile True:\n    c,_=s.accept(); c.sendall(b'beta-here'); c.close()";
    cli.ok(&["exec", &b, "-d", "--", "python3", "-c", serve]);
    let dial = |host: &str| {
        format!("import socket,time\nfor i in range(50):\n    try:\n        s=socket.create_connection(('{host}',7777),timeout=3); print(s.recv(64).decode()); break\n    except Exception as e:\n        err=type(e).__name__; time.sleep(0.1)\nelse:\n    print('ERR', err)")
    };
    assert_eq!(cli.ok(&["exec", &a, "--", "python3", "-c", &dial("beta.lab")]).trim(), "beta-here");
    assert_eq!(cli.ok(&["exec", &a, "--", "python3", "-c", &dial("beta")]).trim(), "beta-here");
    let ip = show["members"].as_array().and_then(|m| m.iter().find(|m| m["name"] == "beta")).and_then(|m| m["ip"].as_str()).expect("beta's ip").to_string();
    let once = |host: &str| {
        format!("import socket\ntry:\n    s=socket.create_connection(('{host}',7777),timeout=3); print(s.recv(64).decode())\nexcept Exception as e:\n    print('ERR', type(e).__name__)")
    };
    assert!(cli.ok(&["exec", &c, "--", "python3", "-c", &once(&ip)]).starts_with("ERR"), "an outsider reaches a member by address");
    assert!(cli.ok(&["exec", &c, "--", "python3", "-c", &once("beta.lab")]).starts_with("ERR"), "an outsider resolves a member's name");
    // Broadcast by network, then by metadata; a failing run is reported and sets the exit code.
    let out = cli.ok(&["network", "broadcast", "--network", "lab", "--", "echo", "from-$(hostname | cut -c1-4)"]);
    assert_eq!(out.matches("from-").count(), 2, "{out}");
    let (code, res) = cli.json_any(&["network", "broadcast", "-m", "team=lab", "--", "exit 4"]);
    assert_eq!(code, Some(1), "a failed run sets the exit code: {res}");
    assert_eq!(res.as_array().map(|r| r.iter().filter(|x| x["exitCode"] == 4).count()), Some(2), "{res}");
    assert_eq!(cli.run(&["network", "rm", "lab"]).status.code(), Some(1), "not while it has members");
    cli.ok(&["network", "leave", "lab", &a]);
    cli.ok(&["sbx", "kill", &b]);
    assert_eq!(cli.json(&["network", "show", "lab"])["members"], Value::Array(vec![]));
    cli.ok(&["network", "rm", "lab"]);
    assert_eq!(cli.json(&["network", "list"]), Value::Array(vec![]));
    cli.ok(&["sbx", "kill", &a]);
    cli.ok(&["sbx", "kill", &c]);
}

/// `airlock cleanup` in a network namespace of the test's own (so the
/// host's rules, which other tests' sandboxes use, are never touched):
/// refused while a sandbox interface exists, then Airlock's chains and
/// jumps go and a rule of someone else's stays.
#[test]
fn cleanup_removes_the_firewall_only_when_no_sandbox_needs_it() {
    let ns = format!("t-cleanup-{}", std::process::id());
    let sh = |script: &str| Command::new("ip").args(["netns", "exec", &ns, "sh", "-c", script]).output().expect("ip netns exec");
    assert!(Command::new("ip").args(["netns", "add", &ns]).status().expect("ip").success());
    struct Del(String);
    impl Drop for Del {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    let _del = Del(ns.clone());
    let o = sh("iptables -N AIRLOCK-FORWARD && iptables -A AIRLOCK-FORWARD -j ACCEPT && iptables -I FORWARD 1 -i alk+ -j AIRLOCK-FORWARD \
                && iptables -A FORWARD -s 203.0.113.9 -j DROP && ip link add alk77777 type veth peer name peer77777");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = sh(&format!("{BIN} cleanup"));
    assert_eq!(o.status.code(), Some(1), "refused while alk77777 exists");
    assert!(String::from_utf8_lossy(&o.stderr).contains("alk77777"), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&sh("iptables -S").stdout).contains("AIRLOCK-FORWARD"), "kept");
    let o = sh(&format!("ip link del alk77777 && {BIN} cleanup"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("removed chain AIRLOCK-FORWARD"), "{}", String::from_utf8_lossy(&o.stdout));
    let rules = String::from_utf8_lossy(&sh("iptables -S").stdout).into_owned();
    assert!(!rules.contains("AIRLOCK") && rules.contains("203.0.113.9"), "{rules}");
    assert!(String::from_utf8_lossy(&sh(&format!("{BIN} cleanup")).stdout).contains("nothing to clean up"));
}

#[tokio::test]
async fn batch_runs_jobs_from_a_file_or_stdin_and_exits_1_when_one_failed() {
    let cli = Cli::start().await;
    let id = cli.sandbox();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("jobs.json");
    std::fs::write(
        &file,
        r#"{"jobs": [
            {"id": "later", "code": "print('later')", "priority": 1},
            {"id": "first", "code": "print('first')", "priority": 9},
            {"id": "bad", "code": "1/0", "priority": 5},
            {"id": "slow", "code": "import time; time.sleep(30)", "timeout": 500, "priority": 4}
        ]}"#,
    )
    .expect("write jobs");
    let o = cli.run(&["sbx", "batch", &id, file.to_str().expect("utf-8 path")]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr_line(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let marks: Vec<(&str, &str)> =
        out.lines().filter(|l| !l.starts_with(' ') && !l.contains("succeeded")).filter_map(|l| l.split_whitespace().next().zip(l.split_whitespace().nth(1))).collect();
    assert_eq!(marks, [("ok", "first"), ("FAIL", "bad"), ("TIMEOUT", "slow"), ("ok", "later")], "{out}");
    assert!(out.contains("    first\n") && out.contains("ZeroDivisionError"), "{out}");
    assert!(out.ends_with("2 succeeded, 2 failed in ") || out.lines().last().is_some_and(|l| l.starts_with("2 succeeded, 2 failed in ")), "{out}");

    // A bare list on standard input, with --json; all succeed, so exit 0.
    let mut c = cli.cmd(&["sbx", "--json", "batch", &id, "-"]);
    c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn");
    child.stdin.take().expect("stdin").write_all(br#"[{"id": "a", "code": "echo $X", "language": "bash", "envs": {"X": "from env"}}]"#).expect("write stdin");
    let o = child.wait_with_output().expect("wait");
    assert_eq!(o.status.code(), Some(0), "{}", stderr_line(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["results"][0]["jobId"], "a", "{v}");
    assert_eq!(v["results"][0]["output"], "from env\n", "{v}");
    assert_eq!(v["succeeded"], 1);

    // Bad input: a clear error, nothing run.
    std::fs::write(&file, r#"[{"id": "x", "code": "1"}, {"id": "x", "code": "2"}]"#).expect("write");
    let o = cli.run(&["sbx", "batch", &id, file.to_str().expect("utf-8 path")]);
    assert_ne!(o.status.code(), Some(0));
    assert!(stderr_line(&o).contains("\"x\""), "{}", stderr_line(&o));
    std::fs::write(&file, "not json").expect("write");
    let o = cli.run(&["sbx", "batch", &id, file.to_str().expect("utf-8 path")]);
    assert!(stderr_line(&o).contains("not a list of jobs"), "{}", stderr_line(&o));
}

#[tokio::test]
async fn template_build_takes_a_sandboxsdk_spec() {
    let cli = Cli::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = dir.path().join("spec.json");
    std::fs::write(&spec, r#"{"name": "fromspec", "language": "bash", "installCommand": "echo built > /opt/marker", "defaultEnvVars": {"MODE": "spec mode"}}"#)
        .expect("write spec");
    let spec_path = spec.to_str().expect("utf-8 path");
    cli.ok(&["template", "build", "--spec", spec_path]);
    let id = cli.ok(&["sbx", "create", "--template", "fromspec", "--no-internet"]).trim().to_string();
    assert_eq!(cli.ok(&["exec", &id, "--", "sh", "-c", "cat /opt/marker; echo \"$MODE\""]), "built\nspec mode\n");
    // -t renames; an unchanged spec rebuilds from cache.
    cli.ok(&["template", "build", "--spec", spec_path, "-t", "fromspec2"]);
    assert!(cli.ok(&["template", "show", "fromspec2"]).contains("fromspec2"));

    // The listing pages by name (what the Socket.IO gateway's template:list
    // uses), with the total beside each page.
    let c = airlock_sdk::Client::new(airlock_sdk::Config::new(cli.srv.url(), &cli.key)).expect("client");
    let all: Vec<String> = c.templates().list().await.expect("list").into_iter().map(|t| t.name).collect();
    let mut sorted = all.clone();
    sorted.sort();
    let mut paged = Vec::new();
    for page in 1.. {
        let (items, total) = c.templates().page(page, 2).await.expect("page");
        assert_eq!(total as usize, all.len());
        if items.is_empty() {
            break;
        }
        assert!(items.len() <= 2);
        paged.extend(items.into_iter().map(|t| t.name));
    }
    assert_eq!(paged, sorted, "pages of two, in order, cover every template once");
    assert!(paged.iter().any(|n| n == "fromspec") && paged.iter().any(|n| n == "fromspec2"));
    for bad in ["page=0", "pageSize=101", "pageSize=x"] {
        let (s, v) = cli.srv.api("GET", &format!("/templates?{bad}"), None).await;
        assert_eq!(s, 400, "{bad}: {v}");
    }

    // A bad spec is refused before anything builds, naming what is wrong.
    std::fs::write(&spec, r#"{"name": "badspec", "language": "cobol"}"#).expect("write spec");
    let o = cli.run(&["template", "build", "--spec", spec_path]);
    assert_ne!(o.status.code(), Some(0));
    assert!(stderr_line(&o).contains("cobol"), "{}", stderr_line(&o));
    std::fs::write(&spec, r#"{"name": "badspec", "language": "python", "dependencies": ["x; rm -rf /"]}"#).expect("write spec");
    let o = cli.run(&["template", "build", "--spec", spec_path]);
    assert!(stderr_line(&o).contains("not a package name"), "{}", stderr_line(&o));
    assert_ne!(cli.run(&["template", "show", "badspec"]).status.code(), Some(0));
    let o = cli.run(&["template", "build", "--spec", spec_path, "-f", spec_path]);
    assert_ne!(o.status.code(), Some(0), "--spec and -f together");
}
