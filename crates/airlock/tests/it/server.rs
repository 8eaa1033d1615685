//! `airlock serve` as a real process, driven over HTTP: the control API,
//! the proxy, deadlines, pause/resume, and surviving a SIGKILL of the server.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value};

pub(crate) use airlock_testkit::KEY;

/// The shared test server (airlock-testkit) on this package's binary.
pub(crate) struct Server(airlock_testkit::Server);

impl std::ops::Deref for Server {
    type Target = airlock_testkit::Server;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Server {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Server {
    pub(crate) async fn start(extra: &[&str]) -> Self {
        // The shared backend first: it installs the host firewall once,
        // before servers of parallel tests swap their rules in.
        let _ = crate::support::harness();
        Self(airlock_testkit::Server::start(Path::new(env!("CARGO_BIN_EXE_airlock")), extra))
    }

    /// A server on a data directory the test prepared.
    pub(crate) async fn start_at(data: &Path, extra: &[&str]) -> Self {
        let _ = crate::support::harness();
        Self(airlock_testkit::Server::start_at(Path::new(env!("CARGO_BIN_EXE_airlock")), Some(data), extra))
    }

    /// Kills the server with SIGKILL (no clean-up) and starts a new one on the same data.
    pub(crate) async fn crash_and_restart(&mut self) {
        self.0.crash_and_restart();
    }
}

#[tokio::test]
async fn sandboxes_and_deadlines_survive_a_server_crash() {
    let mut srv = Server::start(&[]).await;
    let long = srv.create(json!({"templateID": "base", "timeout": 600, "metadata": {"name": "long"}})).await;
    let short = srv.create(json!({"templateID": "base", "timeout": 3})).await;
    let (_, out) = srv.run(&long, "echo state > /tmp/f; cat /tmp/f").await;
    assert_eq!(out, "state\n");
    srv.crash_and_restart().await;
    // The long one is still there, with its processes and files.
    let (s, v) = srv.api("GET", &format!("/sandboxes/{}", long["sandboxID"].as_str().expect("id")), None).await;
    assert_eq!((s, v["state"].as_str()), (200, Some("running")), "{v}");
    assert_eq!(v["metadata"]["name"], "long");
    let (_, out) = srv.run(&long, "cat /tmp/f").await;
    assert_eq!(out, "state\n");
    // The short one's deadline still fires after the restart.
    let sid = short["sandboxID"].as_str().expect("id").to_string();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (s, _) = srv.api("GET", &format!("/sandboxes/{sid}"), None).await;
        if s == 404 {
            break;
        }
        assert!(Instant::now() < deadline, "short sandbox was not killed at its deadline");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (s, _) = srv.run(&short, "true").await;
    assert_eq!(s, 502, "traffic to a timed-out sandbox is refused");
}

#[tokio::test]
async fn pause_resume_and_auto_pause() {
    let srv = Server::start(&[]).await;
    let sbx = srv.create(json!({"templateID": "base", "timeout": 600})).await;
    let id = sbx["sandboxID"].as_str().expect("id");
    srv.run(&sbx, "echo kept > /home/user/f; (sleep 1000 &)").await;
    assert_eq!(srv.api("POST", &format!("/sandboxes/{id}/pause"), Some(json!({}))).await.0, 204);
    assert_eq!(srv.api("POST", &format!("/sandboxes/{id}/pause"), Some(json!({}))).await.0, 409, "second pause conflicts");
    let (_, v) = srv.api("GET", &format!("/sandboxes/{id}"), None).await;
    assert_eq!(v["state"], "paused");
    let (s, _) = srv.run(&sbx, "true").await;
    assert_eq!(s, 502, "no traffic while paused");
    let (_, list) = srv.api("GET", "/v2/sandboxes?state=paused", None).await;
    assert!(list.as_array().expect("array").iter().any(|s| s["sandboxID"] == id));
    let (s, v) = srv.api("POST", &format!("/v2/sandboxes/{id}/connect"), Some(json!({"timeout": 60}))).await;
    assert_eq!(s, 201, "connect resumes: {v}");
    let (_, out) = srv.run(&sbx, "cat /home/user/f; pgrep -c sleep").await;
    assert_eq!(out, "kept\n1\n", "files and processes survive pause");
    let (s, _) = srv.api("POST", &format!("/v2/sandboxes/{id}/connect"), Some(json!({"timeout": 1}))).await;
    assert_eq!(s, 200, "connect to a running sandbox");
    let (_, v) = srv.api("GET", &format!("/sandboxes/{id}"), None).await;
    let end = airlock_proto::time::parse_rfc3339(v["endAt"].as_str().expect("endAt")).expect("rfc3339");
    assert!(end > std::time::SystemTime::now() + Duration::from_secs(30), "connect must not shorten the deadline");

    // autoPause: at the deadline the sandbox is paused, not killed.
    let ap = srv.create(json!({"templateID": "base", "timeout": 1, "autoPause": true})).await;
    let apid = ap["sandboxID"].as_str().expect("id");
    srv.run(&ap, "echo x > /home/user/x").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, v) = srv.api("GET", &format!("/sandboxes/{apid}"), None).await;
        if v["state"] == "paused" {
            break;
        }
        assert!(Instant::now() < deadline, "not auto-paused: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (s, _) = srv.api("POST", &format!("/sandboxes/{apid}/resume"), Some(json!({"timeout": 60}))).await;
    assert_eq!(s, 201);
    assert_eq!(srv.run(&ap, "cat /home/user/x").await.1, "x\n");
}

#[tokio::test]
async fn api_errors_are_json_with_the_right_status() {
    let srv = Server::start(&["--max-sandboxes", "2"]).await;
    let (s, _, b) = srv.req("GET", "/v2/sandboxes", &[("x-api-key", "e2b_wrong")], Bytes::new()).await.expect("req");
    assert_eq!(s, 401);
    assert_eq!(serde_json::from_slice::<Value>(&b).expect("json")["code"], 401);
    let (s, _, _) = srv.req("GET", "/v2/sandboxes", &[], Bytes::new()).await.expect("req");
    assert_eq!(s, 401, "missing key");
    let (s, v) = srv.api("GET", "/sandboxes/doesnotexist", None).await;
    assert_eq!((s, v["code"].as_i64()), (404, Some(404)));
    assert!(v["message"].as_str().expect("message").contains("doesnotexist"));
    assert_eq!(srv.api("DELETE", "/sandboxes/doesnotexist", None).await.0, 404);
    assert_eq!(srv.api("POST", "/sandboxes/doesnotexist/timeout", Some(json!({"timeout": 5}))).await.0, 404);
    let (s, _, b) = srv.req("POST", "/v2/sandboxes", &[("x-api-key", KEY)], Bytes::from_static(b"{\"templateID\": ")).await.expect("req");
    assert_eq!(s, 400);
    assert!(String::from_utf8_lossy(&b).contains("invalid JSON"));
    let (s, v) = srv.api("POST", "/v2/sandboxes", Some(json!({"templateID": "base", "timeout": -1}))).await;
    assert_eq!(s, 400, "{v}");
    let (s, _) = srv.api("POST", "/v2/sandboxes", Some(json!({"templateID": "nope"}))).await;
    assert_eq!(s, 404);
    let (s, _) = srv.api("GET", "/v2/sandboxes?limit=1000", None).await;
    assert_eq!(s, 400);
    // The sandbox limit answers 429.
    srv.create(json!({"templateID": "base"})).await;
    srv.create(json!({"templateID": "base"})).await;
    let (s, v) = srv.api("POST", "/v2/sandboxes", Some(json!({"templateID": "base"}))).await;
    assert_eq!(s, 429, "{v}");
    // Regression: an unparsable port was sent to envd instead of refused.
    let (s, _, b) = srv.req("GET", "/health", &[("e2b-sandbox-id", "nosuchsandbox"), ("e2b-sandbox-port", "envd")], Bytes::new()).await.expect("req");
    assert_eq!(s, 400);
    assert!(String::from_utf8_lossy(&b).contains("E2b-Sandbox-Port"));
    let (s, v) = srv.api("POST", "/v2/sandboxes", Some(json!({"templateID": "base", "cpuCount": 0}))).await;
    assert_eq!(s, 400);
    assert!(v["message"].as_str().is_some_and(|m| m.contains("more than 0")), "{v}");
    let (s, _, b) = srv.req("GET", "/", &[("e2b-sandbox-id", "nosuchsandbox")], Bytes::new()).await.expect("req");
    assert_eq!(s, 502);
    let v: Value = serde_json::from_slice(&b).expect("json");
    assert_eq!(v["sandboxId"], "nosuchsandbox");
    assert!(v["message"].as_str().expect("msg").contains("was not found"));
}

#[tokio::test]
async fn rate_limit_answers_429() {
    let srv = Server::start(&["--rate-limit", "3"]).await;
    let mut codes = Vec::new();
    for _ in 0..10 {
        codes.push(srv.api("GET", "/v2/sandboxes", None).await.0);
    }
    assert!(codes.contains(&200) && codes.contains(&429), "{codes:?}");
}

#[tokio::test]
async fn list_filters_and_pages() {
    let srv = Server::start(&[]).await;
    for i in 0..3 {
        srv.create(json!({"templateID": "base", "metadata": {"group": "g1", "i": i.to_string()}})).await;
    }
    srv.create(json!({"templateID": "base", "metadata": {"group": "g2"}})).await;
    let (_, all) = srv.api("GET", "/v2/sandboxes?metadata=group%3Dg1", None).await;
    assert_eq!(all.as_array().expect("array").len(), 3);
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let path = format!("/v2/sandboxes?metadata=group%3Dg1&limit=1{}", if token.is_empty() { String::new() } else { format!("&nextToken={token}") });
        let (s, h, b) = srv.req("GET", &path, &[("x-api-key", KEY)], Bytes::new()).await.expect("req");
        assert_eq!(s, 200);
        let page: Value = serde_json::from_slice(&b).expect("json");
        assert_eq!(page.as_array().expect("array").len(), 1);
        seen.push(page[0]["metadata"]["i"].as_str().expect("i").to_string());
        match h.get("x-next-token").and_then(|v| v.to_str().ok()) {
            Some(t) if !t.is_empty() => token = t.to_string(),
            _ => break,
        }
    }
    assert_eq!(seen, vec!["2", "1", "0"], "newest first, as E2B lists");
    let (_, asc) = srv.api("GET", "/v2/sandboxes?metadata=group%3Dg1&order=asc", None).await;
    let asc: Vec<&str> = asc.as_array().expect("array").iter().map(|s| s["metadata"]["i"].as_str().unwrap_or_default()).collect();
    assert_eq!(asc, vec!["0", "1", "2"]);
    let (_, v1) = srv.api("GET", "/sandboxes?metadata=group%3Dg2", None).await;
    assert_eq!(v1.as_array().expect("array").len(), 1);
}

#[tokio::test]
async fn ports_inside_are_reachable_through_the_proxy() {
    let srv = Server::start(&["--domain", "sbx.test"]).await;
    let sbx = srv.create(json!({"templateID": "base", "allow_internet_access": false})).await;
    let id = sbx["sandboxID"].as_str().expect("id");
    srv.run(&sbx, "mkdir -p /tmp/www && echo served-from-inside > /tmp/www/index.html && (cd /tmp/www && nohup python3 -m http.server 8000 --bind 127.0.0.1 >/dev/null 2>&1 &)")
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        let (s, _, b) = srv.req("GET", "/index.html", &[("e2b-sandbox-id", id), ("e2b-sandbox-port", "8000")], Bytes::new()).await.expect("req");
        if s == 200 {
            break b;
        }
        assert!(Instant::now() < deadline, "port 8000 never answered (last status {s})");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(&body[..], b"served-from-inside\n");
    // Host-name routing for browsers.
    let host = format!("8000-{id}.sbx.test");
    let (s, _, b) = srv.req("GET", "/index.html", &[("host", &host)], Bytes::new()).await.expect("req");
    assert_eq!((s, &b[..]), (200, &b"served-from-inside\n"[..]));
    // A closed port says so.
    let (s, _, b) = srv.req("GET", "/", &[("e2b-sandbox-id", id), ("e2b-sandbox-port", "9")], Bytes::new()).await.expect("req");
    assert_eq!(s, 502);
    assert!(String::from_utf8_lossy(&b).contains("port is not open"));
}

#[tokio::test]
async fn signed_file_urls_work_without_sandbox_headers() {
    let srv = Server::start(&[]).await;
    let sbx = srv.create(json!({"templateID": "base"})).await;
    let tok = sbx["envdAccessToken"].as_str().expect("token");
    srv.run(&sbx, "echo signed-content > /home/user/s.txt").await;
    let sig = airlock_proto::envd::file_signature("/home/user/s.txt", "read", "user", tok, None);
    let enc: String = sig.bytes().map(|b| if b.is_ascii_alphanumeric() || b == b'_' { (b as char).to_string() } else { format!("%{b:02X}") }).collect();
    let (s, _, b) = srv.req("GET", &format!("/files?path=%2Fhome%2Fuser%2Fs.txt&username=user&signature={enc}"), &[], Bytes::new()).await.expect("req");
    assert_eq!((s, &b[..]), (200, &b"signed-content\n"[..]));
    let (s, _, _) = srv.req("GET", "/files?path=%2Fhome%2Fuser%2Fs.txt&username=user&signature=v1_forged", &[], Bytes::new()).await.expect("req");
    assert_eq!(s, 401);
}

#[tokio::test]
async fn keys_cli_creates_lists_and_revokes() {
    let srv = Server::start(&[]).await;
    let bin = env!("CARGO_BIN_EXE_airlock");
    let out = Command::new(bin).args(["keys", "create", "--name", "ci", "--data-dir"]).arg(&srv.data).output().expect("keys create");
    assert!(out.status.success());
    let key = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(key.starts_with("e2b_") && key.len() == 44, "{key}");
    let (s, _, _) = srv.req("GET", "/v2/sandboxes", &[("x-api-key", &key)], Bytes::new()).await.expect("req");
    assert_eq!(s, 200, "a key created while the server runs works at once");
    let list = Command::new(bin).args(["keys", "list", "--data-dir"]).arg(&srv.data).output().expect("list");
    assert!(String::from_utf8_lossy(&list.stdout).contains("ci"));
    assert!(!String::from_utf8_lossy(&list.stdout).contains(&key), "full keys are never listed");
    let rev = Command::new(bin).args(["keys", "revoke", "--data-dir"]).arg(&srv.data).arg(&key[..10]).output().expect("revoke");
    assert!(rev.status.success());
    let (s, _, _) = srv.req("GET", "/v2/sandboxes", &[("x-api-key", &key)], Bytes::new()).await.expect("req");
    assert_eq!(s, 401);
}

#[tokio::test]
async fn sigterm_stops_cleanly_and_a_reboot_resumes_over_the_same_files() {
    let mut srv = Server::start(&[]).await;
    let sbx = srv.create(json!({"templateID": "base", "timeout": 600})).await;
    let id = sbx["sandboxID"].as_str().expect("id").to_string();
    srv.run(&sbx, "echo survives-reboot > /home/user/keep").await;
    // SIGTERM: exit 0, sandbox untouched.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(srv.child.id() as i32, libc::SIGTERM) };
    let status = srv.child.wait().expect("wait");
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
    let info = {
        use airlock_runtime::Backend;
        let b = airlock_runtime::NamespaceBackend::new(airlock_runtime::namespace::Options {
            root: srv.data.clone(),
            binary: PathBuf::from(env!("CARGO_BIN_EXE_airlock")),
            network: true,
        })
        .expect("backend");
        b.get(&id).expect("still running after the server stopped")
    };
    // Simulate a host reboot: every process of the sandbox is gone, its files stay.
    // SAFETY: killing the sandbox's PID 1, which takes its pid namespace down.
    unsafe { libc::kill(info.pid as i32, libc::SIGKILL) };
    let gone = Instant::now() + Duration::from_secs(5);
    while std::path::Path::new(&format!("/proc/{}", info.pid)).exists() && Instant::now() < gone {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A new server on the same data (the old one already exited).
    srv.crash_and_restart().await;
    let (_, v) = srv.api("GET", &format!("/sandboxes/{id}"), None).await;
    assert_eq!(v["state"], "paused", "a sandbox whose processes died is shown paused: {v}");
    let (s, _) = srv.api("POST", &format!("/v2/sandboxes/{id}/connect"), Some(json!({"timeout": 60}))).await;
    assert_eq!(s, 201, "connect resumes it");
    let (s, out) = srv.run(&sbx, "cat /home/user/keep").await;
    assert_eq!((s, out.as_str()), (200, "survives-reboot\n"), "files survive, a fresh agent serves them");
}

#[tokio::test]
async fn template_cli_builds_with_context_start_and_ready_and_guards_delete() {
    let srv = Server::start(&[]).await;
    let ctx = tempfile::tempdir().expect("ctx");
    std::fs::create_dir_all(ctx.path().join("site")).expect("mkdir");
    std::fs::write(ctx.path().join("site/index.html"), "<h1>from the context</h1>\n").expect("write");
    std::fs::write(
        ctx.path().join("Airlockfile"),
        "FROM base\nCOPY --chown=user:user site/ /srv/site/\nWORKDIR /srv/site\nSTART python3 -m http.server 8080 --bind 127.0.0.1\nREADY bash -c 'exec 3<>/dev/tcp/127.0.0.1/8080'\n",
    )
    .expect("recipe");
    let cli = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_airlock")).args(args).env("AIRLOCK_URL", format!("http://127.0.0.1:{}", srv.port)).env("AIRLOCK_API_KEY", KEY).output().expect("run cli")
    };
    let out = cli(&["template", "build", "-t", "web", ctx.path().to_str().expect("utf8")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("[2/5] COPY") && err.contains("built web"), "{err}");
    let out = cli(&["template", "list", "--json"]);
    let list: Value = serde_json::from_slice(&out.stdout).expect("json list");
    assert!(list.as_array().expect("array").iter().any(|t| t["name"] == "web"));
    // A sandbox from it is handed out only once READY passes: the START'd server answers at once.
    let sbx = srv.create(json!({"templateID": "web"})).await;
    let id = sbx["sandboxID"].as_str().expect("id");
    let (s, _, b) = srv.req("GET", "/index.html", &[("e2b-sandbox-id", id), ("e2b-sandbox-port", "8080")], Bytes::new()).await.expect("req");
    assert_eq!((s, String::from_utf8_lossy(&b).as_ref()), (200, "<h1>from the context</h1>\n"));
    let (_, logs) = srv.api("GET", &format!("/sandboxes/{id}/logs"), None).await;
    assert!(logs["logs"].as_array().expect("logs").iter().any(|l| l["line"].as_str().is_some_and(|s| s.starts_with("ready:"))), "{logs}");
    let out = cli(&["template", "delete", "web"]);
    assert!(!out.status.success(), "refused while used");
    assert!(String::from_utf8_lossy(&out.stderr).contains("used by 1 sandbox"));
    assert_eq!(srv.api("DELETE", &format!("/sandboxes/{id}"), None).await.0, 204);
    assert!(cli(&["template", "delete", "web"]).status.success());
    let (s, _) = srv.api("POST", "/v2/sandboxes", Some(json!({"templateID": "web"}))).await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn create_time_setup_runs_before_create_returns_and_failures_are_clear() {
    let srv = Server::start(&[]).await;
    let sbx = srv.create(json!({"templateID": "base", "startupScript": "echo configured > /etc/airlock-setup; echo setup-output"})).await;
    let (_, out) = srv.run(&sbx, "cat /etc/airlock-setup").await;
    assert_eq!(out, "configured\n");
    let id = sbx["sandboxID"].as_str().expect("id");
    let (_, logs) = srv.api("GET", &format!("/sandboxes/{id}/logs"), None).await;
    assert!(logs["logs"].as_array().expect("logs").iter().any(|l| l["line"] == "setup-output"), "{logs}");
    let (s, v) = srv.api("POST", "/v2/sandboxes", Some(json!({"templateID": "base", "startupScript": "echo failing-step; exit 7"}))).await;
    assert_eq!(s, 400, "{v}");
    let msg = v["message"].as_str().expect("message");
    assert!(msg.contains("exit code 7") && msg.contains("failing-step"), "{msg}");
    let (s, v) = srv.api("POST", "/v2/sandboxes", Some(json!({"templateID": "base", "installPackages": {"pip": ["ok; rm -rf /"]}}))).await;
    assert_eq!(s, 400, "{v}");
    let (_, list) = srv.api("GET", "/v2/sandboxes", None).await;
    assert_eq!(list.as_array().expect("array").len(), 1, "failed creates leave nothing running");
}

#[tokio::test]
async fn the_config_file_sets_defaults_and_refuses_unknown_keys() {
    let dir = tempfile::tempdir().expect("tmp");
    let conf = dir.path().join("airlock.toml");
    std::fs::write(&conf, "# limits\nmax-sandboxes = 1\ndefault_timeout = 77\n").expect("write");
    let conf_s = conf.display().to_string();
    let srv = Server::start(&["--config", &conf_s]).await;
    let sbx = srv.create(json!({"templateID": "base"})).await;
    let (_, v) = srv.api("GET", &format!("/sandboxes/{}", sbx["sandboxID"].as_str().expect("id")), None).await;
    let secs = |k: &str| airlock_proto::time::parse_rfc3339(v[k].as_str().expect("time")).expect("rfc3339").duration_since(std::time::UNIX_EPOCH).expect("epoch").as_secs() as i64;
    let ttl = secs("endAt") - secs("startedAt");
    assert!((76..=78).contains(&ttl), "default_timeout from the file: {ttl} s");
    let (s, _) = srv.api("POST", "/v2/sandboxes", Some(json!({"templateID": "base"}))).await;
    assert_eq!(s, 429, "max-sandboxes from the file");
    // A typo is an error at start, not a silently ignored setting.
    std::fs::write(&conf, "max_sandboxs = 5\n").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_airlock"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config", &conf_s, "--data-dir"])
        .arg(dir.path().join("data2"))
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_sandboxs") && err.contains("airlock.toml"), "the error names the key and the file: {err}");
}

/// Every template layer is an idmapped mount: a data directory whose
/// filesystem cannot take them (ramfs anywhere; tmpfs before Linux 6.3,
/// found on Debian 12's kernel) once started "ready" and then failed every
/// create with a bare 500.
#[tokio::test]
async fn a_data_dir_that_cannot_be_idmapped_is_refused_at_start() {
    let dir = tempfile::Builder::new().prefix("airlock-ramfs-").tempdir().expect("tmp");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("mkdir");
    assert!(Command::new("mount").args(["-t", "ramfs", "ramfs"]).arg(&data).status().expect("mount").success(), "mounting a ramfs");
    let mut child = Command::new(env!("CARGO_BIN_EXE_airlock"))
        .args(["serve", "--listen", "127.0.0.1:0", "--no-network", "--data-dir"])
        .arg(&data)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err).expect("read");
    let _ = Command::new("umount").arg("-l").arg(&data).status();
    assert!(status.is_some_and(|s| !s.success()), "the server must refuse to start: {err}");
    assert!(err.contains("cannot idmap") && err.contains("ramfs") && err.contains("ext4"), "the error names the cause and the fix: {err}");
}

#[tokio::test]
async fn openapi_document_lists_every_route_the_server_answers() {
    let srv = Server::start(&[]).await;
    let (s, _, b) = srv.req("GET", "/openapi.json", &[], Bytes::new()).await.expect("req");
    assert_eq!(s, 200, "the document is public");
    let doc: Value = serde_json::from_slice(&b).expect("json");
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "{}", doc["openapi"]);
    let mut documented = std::collections::BTreeSet::new();
    for (path, ops) in doc["paths"].as_object().expect("paths") {
        for method in ops.as_object().expect("operations").keys() {
            documented.insert((method.to_uppercase(), path.clone()));
        }
    }
    // The router is built from the same table the document is.
    let served: std::collections::BTreeSet<(String, String)> = airlock_server::api::ROUTES.iter().map(|(m, p)| (m.to_uppercase(), p.to_string())).collect();
    assert_eq!(documented, served, "document and router list the same routes");
    // What the official SDKs call is in it.
    for (m, p) in [
        ("POST", "/v2/sandboxes"),
        ("POST", "/sandboxes"),
        ("GET", "/v2/sandboxes"),
        ("GET", "/sandboxes/{id}"),
        ("DELETE", "/sandboxes/{id}"),
        ("POST", "/sandboxes/{id}/timeout"),
        ("POST", "/sandboxes/{id}/pause"),
        ("POST", "/v2/sandboxes/{id}/connect"),
        ("GET", "/sandboxes/{id}/metrics"),
    ] {
        assert!(documented.contains(&(m.to_string(), p.to_string())), "{m} {p} is documented");
    }
    // And every documented route is answered by its handler, not by the
    // router's fallback.
    for (m, p) in &documented {
        let mut path = p.replace("{id}", "doesnotexist").replace("{name}", "doesnotexist");
        if path == "/events" {
            // An endless stream once it starts: a bad resume point is
            // answered (400) by the handler at once.
            path.push_str("?lastEventId=bogus");
        }
        let (s, _, body) = srv.req(m, &path, &[("x-api-key", KEY), ("content-type", "application/json")], Bytes::from_static(b"{}")).await.expect("req");
        let text = String::from_utf8_lossy(&body);
        assert!(s != 405 && !text.contains("no such endpoint"), "{m} {p} is routed: {s} {text}");
    }
    let (s, _, body) = srv.req("GET", "/no/such/route", &[("x-api-key", KEY)], Bytes::new()).await.expect("req");
    assert_eq!(s, 404);
    assert!(String::from_utf8_lossy(&body).contains("no such endpoint"));
    // Requests carry an id in their response.
    let (_, h, _) = srv.req("GET", "/v2/sandboxes", &[("x-api-key", KEY)], Bytes::new()).await.expect("req");
    assert!(h.get("x-request-id").is_some_and(|v| v.len() == 16));
}

#[tokio::test]
async fn sandbox_health_reports_each_check() {
    let srv = Server::start(&["--no-network"]).await;
    let sbx = srv.create(json!({"templateID": "base", "timeout": 120, "allow_internet_access": false})).await;
    let sid = sbx["sandboxID"].as_str().expect("id");
    let (s, h) = srv.api("GET", &format!("/sandboxes/{sid}/health"), None).await;
    assert_eq!((s, h["healthy"].as_bool(), h["state"].as_str()), (200, Some(true), Some("running")), "{h}");
    let names: Vec<&str> = h["checks"].as_array().expect("checks").iter().map(|c| c["name"].as_str().unwrap_or("")).collect();
    assert_eq!(names, ["agent", "disk", "memory"], "{h}");
    let q = "check=echo%20fine&check=test%20-f%20/nope";
    let (s, h) = srv.api("GET", &format!("/sandboxes/{sid}/health?{q}"), None).await;
    assert_eq!((s, h["healthy"].as_bool()), (200, Some(false)), "a failing check makes it unhealthy: {h}");
    let checks = h["checks"].as_array().expect("checks");
    assert_eq!((checks[3]["name"].as_str(), checks[3]["ok"].as_bool()), (Some("echo fine"), Some(true)), "{h}");
    assert!(checks[3]["detail"].as_str().unwrap_or("").contains("fine"), "{h}");
    assert_eq!((checks[4]["name"].as_str(), checks[4]["ok"].as_bool()), (Some("test -f /nope"), Some(false)), "{h}");
    srv.api("POST", &format!("/sandboxes/{sid}/pause"), Some(json!({}))).await;
    let (s, h) = srv.api("GET", &format!("/sandboxes/{sid}/health"), None).await;
    assert_eq!((s, h["healthy"].as_bool(), h["state"].as_str()), (200, Some(false), Some("paused")), "{h}");
    let (s, _) = srv.api("GET", "/sandboxes/nosuchsandbox0000000/health", None).await;
    assert_eq!(s, 404);
}

/// curl against the server's listener by name (`--resolve`, no DNS), trusting `ca`.
fn curl(port: u16, host: &str, ca: Option<&Path>, args: &[&str]) -> (bool, String, String) {
    let mut c = Command::new("curl");
    c.args(["-sS", "--max-time", "30", "--resolve", &format!("{host}:{port}:127.0.0.1"), "-w", "\n%{http_code} %{http_version}"]);
    if let Some(ca) = ca {
        c.arg("--cacert").arg(ca);
    }
    let out = c.args(args).output().expect("curl (apt install curl)");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test]
async fn https_for_a_domain_on_the_same_listener_over_http2_and_http1() {
    let dir = tempfile::Builder::new().prefix("airlock-tls-").tempdir().expect("tmp");
    let out = Command::new(env!("CARGO_BIN_EXE_airlock")).args(["tls", "init", "--domain", "airlock.test", "--data-dir"]).arg(dir.path()).output().expect("tls init");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ca = dir.path().join("tls-ca/ca.pem");
    assert!(String::from_utf8_lossy(&out.stdout).contains(&ca.display().to_string()));
    let srv = Server::start_at(dir.path(), &["--domain", "airlock.test"]).await;
    let port = srv.addr().port();
    let api = "api.airlock.test";
    let url = |host: &str, path: &str| format!("https://{host}:{port}{path}");
    // The control API by name, HTTP/2 (ALPN) and HTTP/1.1; plain HTTP still answers on the same port.
    let (ok, body, err) = curl(port, api, Some(&ca), &["-H", &format!("X-API-KEY: {KEY}"), &url(api, "/sandboxes")]);
    assert!(ok && body.ends_with("200 2"), "{body} {err}");
    let (ok, body, err) = curl(port, api, Some(&ca), &["--http1.1", &url(api, "/health")]);
    assert!(ok && body.ends_with("200 1.1") && body.contains("\"status\":\"ok\""), "{body} {err}");
    let (s, _, _) = srv.req("GET", "/health", &[], Bytes::new()).await.expect("plain");
    assert_eq!(s, 200);
    // A sandbox's envd at {port}-{id}.{domain}: a file up and down over HTTP/2.
    let sbx = srv.create(json!({"templateID": "base", "timeout": 120})).await;
    let id = sbx["sandboxID"].as_str().expect("id");
    let token = sbx["envdAccessToken"].as_str().map(|t| format!("X-Access-Token: {t}")).unwrap_or_default();
    let host = format!("49983-{id}.airlock.test");
    let src = dir.path().join("up.txt");
    std::fs::write(&src, "over h2\n").expect("w");
    let form = format!("file=@{}", src.display());
    let (ok, body, err) = curl(port, &host, Some(&ca), &["-H", &token, "-F", &form, &url(&host, "/files?path=/home/user/up.txt&username=user")]);
    assert!(ok && body.ends_with("200 2"), "{body} {err}");
    let (ok, body, err) = curl(port, &host, Some(&ca), &["-H", &token, &url(&host, "/files?path=/home/user/up.txt&username=user")]);
    assert!(ok && body == "over h2\n\n200 2", "{body:?} {err}");
    let (ok, body, _) = curl(port, &host, Some(&ca), &["--http1.1", "-H", &token, &url(&host, "/files?path=/home/user/up.txt&username=user")]);
    assert!(ok && body == "over h2\n\n200 1.1", "{body:?}");
    // Unknown sandboxes by name are E2B's 502 with its body, not the API.
    let ghost = "49983-nosuchsandbox00000000.airlock.test";
    let (_, body, _) = curl(port, ghost, Some(&ca), &[&url(ghost, "/health")]);
    assert!(body.ends_with("502 2") && body.contains("nosuchsandbox"), "{body}");
    // Without the CA the certificate is refused; a name it does not cover too.
    let (ok, _, err) = curl(port, api, None, &[&url(api, "/health")]);
    assert!(!ok && err.contains("certificate"), "{err}");
    let other = "api.other.test";
    let (ok, _, err) = curl(port, other, Some(&ca), &[&url(other, "/health")]);
    assert!(!ok && err.contains("certificate"), "{err}");
    // A broken handshake (a TLS record header, then junk) costs its connection only.
    {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(srv.addr()).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(15))).expect("timeout");
        s.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5]).expect("write");
        let mut b = Vec::new();
        let _ = s.read_to_end(&mut b);
    }
    let (ok, body, _) = curl(port, api, Some(&ca), &[&url(api, "/health")]);
    assert!(ok && body.ends_with("200 2"), "{body}");
    let (s, _) = srv.api("DELETE", &format!("/sandboxes/{id}"), None).await;
    assert_eq!(s, 204);
}

#[tokio::test]
async fn a_bad_tls_certificate_stops_the_start_with_its_reason() {
    let dir = tempfile::Builder::new().prefix("airlock-tls-bad-").tempdir().expect("tmp");
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").expect("w");
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_airlock"))
            .args(["serve", "--listen", "127.0.0.1:0", "--no-network", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(args)
            .output()
            .expect("run");
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let j = junk.to_str().expect("utf-8");
    let (ok, err) = run(&["--domain", "airlock.test", "--tls-cert", j, "--tls-key", j]);
    assert!(!ok && err.contains("junk.pem") && err.contains("no PEM certificate"), "{err}");
    let (ok, err) = run(&["--tls-cert", j, "--tls-key", j]);
    assert!(!ok && err.contains("need --domain"), "{err}");
    let (ok, err) = run(&["--domain", "airlock.test", "--tls-cert", j]);
    assert!(!ok && err.contains("--tls-key"), "{err}");
}

#[tokio::test]
async fn a_burst_beyond_the_create_limit_waits_in_line_instead_of_429() {
    // Two at once, twenty asked for: all are made, none refused.
    let srv = Server::start(&["--max-concurrent-creates", "2"]).await;
    let creates = (0..20)
        .map(|_| srv.req("POST", "/v2/sandboxes", &[("x-api-key", KEY), ("content-type", "application/json")], Bytes::from_static(br#"{"templateID":"base","timeout":120}"#)));
    let answers = futures_util::future::join_all(creates).await;
    let mut ids = Vec::new();
    for a in answers {
        let (s, _, b) = a.expect("answer");
        assert_eq!(s, 201, "{}", String::from_utf8_lossy(&b));
        let v: Value = serde_json::from_slice(&b).expect("json");
        ids.push(v["sandboxID"].as_str().expect("id").to_string());
    }
    for id in &ids {
        let (s, _) = srv.api("DELETE", &format!("/sandboxes/{id}"), None).await;
        assert_eq!(s, 204);
    }
    // Past the line's places (16 per running create), a clear 429.
    let srv = Server::start(&["--max-concurrent-creates", "1"]).await;
    let creates = (0..40)
        .map(|_| srv.req("POST", "/v2/sandboxes", &[("x-api-key", KEY), ("content-type", "application/json")], Bytes::from_static(br#"{"templateID":"base","timeout":120}"#)));
    let answers = futures_util::future::join_all(creates).await;
    let mut made = Vec::new();
    let mut refused = 0;
    for a in answers {
        let (s, _, b) = a.expect("answer");
        match s {
            201 => made.push(serde_json::from_slice::<Value>(&b).expect("json")["sandboxID"].as_str().expect("id").to_string()),
            429 => {
                refused += 1;
                assert!(String::from_utf8_lossy(&b).contains("waiting"), "{}", String::from_utf8_lossy(&b));
            }
            other => panic!("{other}: {}", String::from_utf8_lossy(&b)),
        }
    }
    assert!(made.len() >= 17 && refused >= 1, "made {}, refused {refused}", made.len());
    for id in &made {
        srv.api("DELETE", &format!("/sandboxes/{id}"), None).await;
    }
}
