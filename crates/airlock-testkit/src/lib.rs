//! What Airlock's integration tests share: a real `airlock serve` per test
//! (a fresh data directory, a free port on loopback, one API key, and on
//! drop the sandboxes it leaves, which outlive servers by design, cleaned
//! up), and a raw HTTP/1.1 client for its API and sandbox traffic, for
//! tests that must see exact statuses, headers and bodies; and an envd
//! client for an agent's unix socket (`envd`). `airlock-bench` starts
//! and stops its server here too, through `Builder::try_start` and
//! `Server::stop`, so tests and benchmark run the server the same way.
//!
//! It is test code: it asserts and panics instead of returning errors,
//! except on the way to a started server (`StartError`), which the
//! benchmark must survive to clean up.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

pub mod envd;

/// `e2b_` + 40 hex characters, the key format every SDK accepts.
pub const KEY: &str = "e2b_00000000000000000000000000000000000000aa";

/// The `airlock` binary built from this workspace: `$AIRLOCK_BIN`, else
/// `$CARGO_TARGET_DIR/debug/airlock`, else the workspace's `target/`.
pub fn airlock_bin() -> PathBuf {
    let p = if let Some(p) = std::env::var_os("AIRLOCK_BIN") {
        PathBuf::from(p)
    } else if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        PathBuf::from(t).join("debug/airlock")
    } else {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/airlock")
    };
    assert!(p.exists(), "{} does not exist: run `cargo build --workspace --bins` first (or set AIRLOCK_BIN)", p.display());
    p
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// How long a server may take to answer `/health` after it is spawned.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("airlock serve creates sandboxes: run as root")]
    NotRoot,
    #[error("creating a temporary directory")]
    TempDir(#[source] std::io::Error),
    #[error("finding a free port")]
    Port(#[source] std::io::Error),
    #[error("opening the server log {path}")]
    Log {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("starting {bin} serve")]
    Spawn {
        bin: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("airlock serve exited ({status}) before answering /health; its log ends:\n{tail}")]
    Exited { status: std::process::ExitStatus, tail: String },
    #[error("airlock serve did not answer GET /health with 200 within {secs} s; its log ends:\n{tail}")]
    NotReady { secs: u64, tail: String },
}

/// How to start a server: `Server::builder(bin)`, the options, then
/// `try_start` (for a program that must clean up after a failure, like
/// the benchmark) or `start` (tests: it panics).
#[derive(Debug, Clone)]
pub struct Builder {
    bin: PathBuf,
    data: Option<PathBuf>,
    log: Option<PathBuf>,
    key: String,
    env: Vec<(String, String)>,
    extra: Vec<String>,
    own_group: bool,
}

impl Builder {
    /// The data directory (default: a fresh one in a temporary directory
    /// removed on drop). A given one is left in place.
    pub fn data_dir(mut self, data: impl Into<PathBuf>) -> Self {
        self.data = Some(data.into());
        self
    }

    /// Where the server's stdout and stderr go, appended (default: a file
    /// in the temporary directory). A given file is left in place.
    pub fn log_file(mut self, log: impl Into<PathBuf>) -> Self {
        self.log = Some(log.into());
        self
    }

    /// The API key the server accepts and `Server::api` sends (default `KEY`).
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.key = key.into();
        self
    }

    /// An environment variable for the server (`RUST_LOG` is `info` unless set here).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Extra `airlock serve` flags.
    pub fn args(mut self, extra: &[&str]) -> Self {
        self.extra.extend(extra.iter().map(|s| s.to_string()));
        self
    }

    /// Runs the server in a process group of its own, so a Ctrl-C at the
    /// terminal reaches only the caller, which then stops the server
    /// itself after its own clean-up (the benchmark deletes its sandboxes
    /// through the API first). Tests leave it in theirs: a test run
    /// interrupted before its drops would otherwise leave servers behind.
    pub fn own_process_group(mut self) -> Self {
        self.own_group = true;
        self
    }

    /// Spawns the server and waits until its `/health` answers 200. On
    /// failure the server, if it was spawned, is killed and cleaned up as
    /// on drop.
    pub fn try_start(self) -> Result<Server, StartError> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(StartError::NotRoot);
        }
        let tmp = if self.data.is_none() || self.log.is_none() { Some(tempfile::Builder::new().prefix("airlock-srv-").tempdir().map_err(StartError::TempDir)?) } else { None };
        let under_tmp = |name: &str| tmp.as_ref().map(|t| t.path().join(name)).unwrap_or_default();
        let data = self.data.clone().unwrap_or_else(|| under_tmp("data"));
        let log = self.log.clone().unwrap_or_else(|| under_tmp("server.log"));
        let port = free_port().map_err(StartError::Port)?;
        let child = self.spawn(&data, &log, port)?;
        let mut s = Server { child, port, data, log, cfg: self, stopped: false, _tmp: tmp };
        // On an error `s` drops here, which kills and cleans up after it.
        s.wait_ready()?;
        Ok(s)
    }

    /// As `try_start`, panicking on failure.
    pub fn start(self) -> Server {
        self.try_start().unwrap_or_else(|e| panic!("{e}"))
    }

    fn spawn(&self, data: &Path, log: &Path, port: u16) -> Result<Child, StartError> {
        use std::os::unix::process::CommandExt;
        let log_err = |source| StartError::Log { path: log.to_path_buf(), source };
        let out = std::fs::OpenOptions::new().create(true).append(true).open(log).map_err(log_err)?;
        let err = out.try_clone().map_err(log_err)?;
        let mut cmd = Command::new(&self.bin);
        cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(data)
            .args(["--api-key", &self.key])
            .args(&self.extra)
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        if self.own_group {
            cmd.process_group(0);
        }
        cmd.spawn().map_err(|source| StartError::Spawn { bin: self.bin.clone(), source })
    }
}

/// A running `airlock serve`, killed (and its sandboxes destroyed) on drop.
pub struct Server {
    pub child: Child,
    pub port: u16,
    pub data: PathBuf,
    log: PathBuf,
    cfg: Builder,
    stopped: bool,
    _tmp: Option<tempfile::TempDir>,
}

impl Server {
    /// The options of a server from `bin`; see `Builder`.
    pub fn builder(bin: &Path) -> Builder {
        Builder { bin: bin.to_path_buf(), data: None, log: None, key: KEY.to_string(), env: Vec::new(), extra: Vec::new(), own_group: false }
    }

    /// A server from `bin` with extra `airlock serve` flags, ready (its
    /// `/health` answering 200) when this returns.
    pub fn start(bin: &Path, extra: &[&str]) -> Self {
        Self::start_at(bin, None, extra)
    }

    /// As `start`, on the data directory `data` when given (a test that
    /// needs it on a filesystem of its own, say a small one that fills up).
    pub fn start_at(bin: &Path, data: Option<&Path>, extra: &[&str]) -> Self {
        let b = Self::builder(bin).args(extra);
        match data {
            Some(d) => b.data_dir(d),
            None => b,
        }
        .start()
    }

    fn wait_ready(&mut self) -> Result<(), StartError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        while health(self.port) != Some(200) {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(StartError::Exited { status, tail: self.log_tail() });
            }
            if Instant::now() > deadline {
                return Err(StartError::NotReady { secs: READY_TIMEOUT.as_secs(), tail: self.log_tail() });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Kills the server with SIGKILL (no clean-up) and starts a new one on
    /// the same data directory and flags, on a new port.
    pub fn crash_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.port = free_port().expect("free port");
        self.child = self.cfg.spawn(&self.data, &self.log, self.port).expect("restart airlock serve");
        self.wait_ready().expect("restarted server ready");
    }

    /// Stops the server gracefully (SIGTERM, SIGKILL after 10 s), then
    /// destroys the sandboxes it left and unmounts its volumes. True when
    /// no sandbox is left. Dropping the server does the same after a
    /// SIGKILL.
    pub fn stop(&mut self) -> bool {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: signalling our own child by pid; it has not been reaped yet.
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.clean_up()
    }

    /// Kills the server (a no-op once it exited), destroys what it left.
    fn clean_up(&mut self) -> bool {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stopped = true;
        let clean = self.destroy_leftovers();
        self.unmount_volumes();
        clean
    }

    /// Sandboxes outlive the server by design: `airlock runtime list`,
    /// then `destroy` each; true when none is left.
    fn destroy_leftovers(&self) -> bool {
        if !self.data.join("sandboxes").is_dir() {
            return true;
        }
        let list = || -> Option<Vec<String>> {
            let out = Command::new(&self.cfg.bin).args(["runtime", "list", "--data-dir"]).arg(&self.data).stderr(Stdio::null()).output().ok()?;
            let ids = String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.split('\t').next()).filter(|s| !s.is_empty()).map(str::to_string).collect();
            out.status.success().then_some(ids)
        };
        let Some(mut ids) = list() else { return false };
        // A create or kill cut short by a SIGKILLed server (the faults
        // test) leaves a directory the runtime does not list (no agent),
        // maybe with its disk image mounted: destroy those too, or the
        // mount keeps the temporary directory from being removed.
        let listed = ids.clone();
        if let Ok(rd) = std::fs::read_dir(self.data.join("sandboxes")) {
            ids.extend(rd.flatten().filter(|e| e.path().is_dir()).filter_map(|e| e.file_name().into_string().ok()).filter(|n| !listed.contains(n)));
        }
        for id in &ids {
            let _ = Command::new(&self.cfg.bin).args(["runtime", "destroy", "--data-dir"]).arg(&self.data).arg(id).stdout(Stdio::null()).stderr(Stdio::null()).status();
        }
        listed.is_empty() || list().is_some_and(|v| v.is_empty())
    }

    /// Volumes' images stay mounted while a server runs (and after, by
    /// design): unmount them before anyone removes the data directory.
    fn unmount_volumes(&self) {
        if let Ok(rd) = std::fs::read_dir(self.data.join("volumes")) {
            for e in rd.flatten() {
                if let Ok(c) = std::ffi::CString::new(e.path().join("data").as_os_str().as_encoded_bytes()) {
                    // SAFETY: umount2 with a NUL-terminated path; failure (nothing mounted) is fine.
                    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
                }
            }
        }
    }

    /// What the server wrote to stdout and stderr.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// The file the server logs to.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The API key it accepts.
    pub fn key(&self) -> &str {
        &self.cfg.key
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        (std::net::Ipv4Addr::LOCALHOST, self.port).into()
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// One HTTP/1.1 request on a fresh connection: (status, headers, body).
    pub async fn req(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Bytes) -> Result<(u16, http::HeaderMap, Bytes), String> {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.map_err(|e| e.to_string())?;
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let mut b = http::Request::builder().method(method).uri(path);
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            b = b.header("host", format!("127.0.0.1:{}", self.port));
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let resp = tx.send_request(b.body(Full::new(body)).map_err(|e| e.to_string())?).await.map_err(|e| e.to_string())?;
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok((parts.status.as_u16(), parts.headers, bytes))
    }

    /// A control-API call with the key and a JSON body: (status, JSON).
    pub async fn api(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let b = body.map(|v| Bytes::from(serde_json::to_vec(&v).expect("json"))).unwrap_or_default();
        let (s, _, bytes) = self.req(method, path, &[("x-api-key", self.key()), ("content-type", "application/json")], b).await.expect("request");
        (s, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    /// `POST /v2/sandboxes`, which must answer 201: the `Sandbox` body.
    pub async fn create(&self, body: Value) -> Value {
        let (s, v) = self.api("POST", "/v2/sandboxes", Some(body)).await;
        assert_eq!(s, 201, "create: {v}");
        v
    }

    /// Runs `bash -c cmd` in a sandbox through the proxy with its token:
    /// (HTTP status, stdout).
    pub async fn run(&self, sbx: &Value, cmd: &str) -> (u16, String) {
        let payload = serde_json::to_vec(&json!({"process": {"cmd": "/bin/bash", "args": ["-c", cmd]}, "stdin": false})).expect("json");
        let id = sbx["sandboxID"].as_str().expect("id");
        let tok = sbx["envdAccessToken"].as_str().unwrap_or("");
        let (s, _, bytes) = self
            .req(
                "POST",
                "/process.Process/Start",
                &[("e2b-sandbox-id", id), ("x-access-token", tok), ("content-type", "application/connect+json")],
                airlock_proto::connect::envelope(0, &payload),
            )
            .await
            .expect("run");
        if s != 200 {
            return (s, String::from_utf8_lossy(&bytes).into_owned());
        }
        let mut dec = airlock_proto::connect::EnvelopeDecoder::new();
        dec.push(&bytes);
        let mut out = String::new();
        while let Ok(Some(env)) = dec.next_envelope() {
            let v: Value = serde_json::from_slice(&env.payload).unwrap_or(Value::Null);
            if let Some(o) = v["event"]["data"]["stdout"].as_str() {
                out.push_str(&String::from_utf8_lossy(&base64::engine::general_purpose::STANDARD.decode(o).expect("base64")));
            }
        }
        (s, out)
    }
}

fn health(port: u16) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    buf.split_whitespace().nth(1)?.parse().ok()
}

impl Drop for Server {
    fn drop(&mut self) {
        if !self.stopped {
            self.clean_up();
        }
    }
}
