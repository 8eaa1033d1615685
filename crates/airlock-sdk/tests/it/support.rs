//! A real `airlock serve` per test, and small helpers.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use airlock_sdk::{Client, Config, Sandbox};

/// `e2b_` + 40 hex characters, the key format every SDK accepts.
pub(crate) const KEY: &str = "e2b_5dk0000000000000000000000000000000000042";

/// The `airlock` binary built from this workspace.
pub(crate) fn airlock_bin() -> PathBuf {
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

pub(crate) struct Server {
    child: Child,
    pub port: u16,
    pub data: PathBuf,
    log: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Server {
    pub(crate) fn start() -> Self {
        Self::start_with(&[])
    }

    /// A server with extra `airlock serve` flags, ready when this returns.
    pub(crate) fn start_with(extra: &[&str]) -> Self {
        let uid = std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(u32::MAX);
        assert_eq!(uid, 0, "the SDK integration tests start a real server that creates sandboxes: run them as root");
        let tmp = tempfile::Builder::new().prefix("airlock-sdk-").tempdir().expect("tmp");
        let data = tmp.path().join("data");
        let log = tmp.path().join("server.log");
        let port = free_port();
        let child = Command::new(airlock_bin())
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(&data)
            .args(["--api-key", KEY])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("spawn airlock serve");
        let s = Self { child, port, data, log, _tmp: tmp };
        s.wait_ready();
        s
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if health(self.port) == Some(200) {
                return;
            }
            assert!(Instant::now() < deadline, "server did not start:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub(crate) fn config(&self) -> Config {
        Config::new(self.url(), KEY)
    }

    pub(crate) fn client(&self) -> Client {
        Client::new(self.config()).expect("client")
    }

    /// A sandbox for a test: no internet (no veth pair to set up), two
    /// minutes to live.
    pub(crate) async fn sandbox(&self) -> Sandbox {
        Sandbox::builder().client(&self.client()).allow_internet_access(false).timeout(Duration::from_secs(120)).create().await.expect("create sandbox")
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
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Sandboxes outlive the server by design: remove what a test left.
        if let Ok(o) = Command::new(airlock_bin()).args(["runtime", "list", "--data-dir"]).arg(&self.data).stderr(Stdio::null()).output() {
            for line in String::from_utf8_lossy(&o.stdout).lines() {
                if let Some(id) = line.split('\t').next().filter(|s| !s.is_empty()) {
                    let _ = Command::new(airlock_bin()).args(["runtime", "destroy", "--data-dir"]).arg(&self.data).arg(id).stderr(Stdio::null()).output();
                }
            }
        }
    }
}

/// Polls `f` until it returns true or `secs` pass.
pub(crate) async fn eventually(secs: u64, mut f: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
