//! What Airlock's integration tests share: a real `airlock serve` per test
//! (a fresh data directory, a free port on loopback, one API key, and on
//! drop the sandboxes it leaves, which outlive servers by design, cleaned
//! up), and a raw HTTP/1.1 client for its API and sandbox traffic, for
//! tests that must see exact statuses, headers and bodies; and an envd
//! client for an agent's unix socket (`envd`).
//!
//! It is test code: it asserts and panics instead of returning errors.

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

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A running `airlock serve`, killed (and its sandboxes destroyed) on drop.
pub struct Server {
    pub child: Child,
    pub port: u16,
    pub data: PathBuf,
    bin: PathBuf,
    log: PathBuf,
    extra: Vec<String>,
    _tmp: tempfile::TempDir,
}

impl Server {
    /// A server from `bin` with extra `airlock serve` flags, ready (its
    /// `/health` answering 200) when this returns.
    pub fn start(bin: &Path, extra: &[&str]) -> Self {
        Self::start_at(bin, None, extra)
    }

    /// As `start`, on the data directory `data` when given (a test that
    /// needs it on a filesystem of its own, say a small one that fills up).
    pub fn start_at(bin: &Path, data: Option<&Path>, extra: &[&str]) -> Self {
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        assert_eq!(uid, 0, "the integration tests start a real server that creates sandboxes: run them as root");
        let tmp = tempfile::Builder::new().prefix("airlock-srv-").tempdir().expect("tmp");
        let data = data.map(Path::to_path_buf).unwrap_or_else(|| tmp.path().join("data"));
        let log = tmp.path().join("server.log");
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let port = free_port();
        let child = spawn(bin, &data, &log, port, &extra);
        let s = Self { child, port, data, bin: bin.to_path_buf(), log, extra, _tmp: tmp };
        s.wait_ready();
        s
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while health(self.port) != Some(200) {
            assert!(Instant::now() < deadline, "server did not start:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the server with SIGKILL (no clean-up) and starts a new one on
    /// the same data directory and flags, on a new port.
    pub fn crash_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.port = free_port();
        self.child = spawn(&self.bin, &self.data, &self.log, self.port, &self.extra);
        self.wait_ready();
    }

    /// What the server wrote to stderr.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
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
        let (s, _, bytes) = self.req(method, path, &[("x-api-key", KEY), ("content-type", "application/json")], b).await.expect("request");
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

fn spawn(bin: &Path, data: &Path, log: &Path, port: u16, extra: &[String]) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("log");
    Command::new(bin)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(data)
        .args(["--api-key", KEY])
        .args(extra)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn airlock serve")
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
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Sandboxes outlive the server by design: remove what a test left.
        if let Ok(o) = Command::new(&self.bin).args(["runtime", "list", "--data-dir"]).arg(&self.data).stderr(Stdio::null()).output() {
            for line in String::from_utf8_lossy(&o.stdout).lines() {
                if let Some(id) = line.split('\t').next().filter(|s| !s.is_empty()) {
                    let _ = Command::new(&self.bin).args(["runtime", "destroy", "--data-dir"]).arg(&self.data).arg(id).stderr(Stdio::null()).output();
                }
            }
        }
        // Volumes' images stay mounted while a server runs (and after, by
        // design): unmount them before the temporary directory goes.
        if let Ok(rd) = std::fs::read_dir(self.data.join("volumes")) {
            for e in rd.flatten() {
                if let Ok(c) = std::ffi::CString::new(e.path().join("data").as_os_str().as_encoded_bytes()) {
                    // SAFETY: umount2 with a NUL-terminated path; failure (nothing mounted) is fine.
                    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
                }
            }
        }
    }
}
