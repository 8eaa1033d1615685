//! Lifecycle through the SDK: create with every option, connect, info,
//! list with filters and paging, timeouts, pause/resume, kill, metrics,
//! and the typed errors.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use airlock_sdk::{Client, Config, Error, Sandbox, SandboxState};
use futures_util::StreamExt;

use crate::support::{eventually, Server, KEY};

fn rfc3339_secs(s: &str) -> i64 {
    // "2026-01-02T03:04:05.678Z" -> seconds since the epoch (UTC).
    let (date, time) = s.split_once('T').expect("T");
    let d: Vec<i64> = date.split('-').map(|x| x.parse().expect("date")).collect();
    let t: Vec<i64> = time.trim_end_matches('Z').split(':').map(|x| x.split('.').next().unwrap_or("0").parse().expect("time")).collect();
    let (y, m) = if d[1] <= 2 { (d[0] - 1, d[1] + 9) } else { (d[0], d[1] - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d[2] - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146097 + doe - 719468) * 86400 + t[0] * 3600 + t[1] * 60 + t[2]
}

fn now_secs() -> i64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).expect("clock").as_secs() as i64
}

#[tokio::test]
async fn create_with_every_option_shows_in_info_and_inside() {
    let srv = Server::start();
    let sbx = Sandbox::builder()
        .config(srv.config())
        .template("base")
        .timeout(Duration::from_secs(90))
        .metadata("owner", "sdk-test")
        .metadata("purpose", "a b&c=d")
        .env("GREETING", "hello from env")
        .cpu_count(1.0)
        .memory_mb(256)
        .allow_internet_access(false)
        .auto_pause(true)
        .create()
        .await
        .expect("create");
    assert_eq!(sbx.id().len(), 20);
    assert_eq!(sbx.template_id(), "base");
    assert!(sbx.access_token().is_some(), "v2 sandboxes are secured");

    let info = sbx.info().await.expect("info");
    assert_eq!(info.sandbox_id, sbx.id());
    assert_eq!(info.state, "running");
    assert_eq!(info.metadata.get("owner").map(String::as_str), Some("sdk-test"));
    assert_eq!(info.metadata.get("purpose").map(String::as_str), Some("a b&c=d"));
    assert_eq!(info.cpu_count, 1);
    assert_eq!(info.memory_mb, 256);
    assert_eq!(info.allow_internet_access, Some(false));
    assert_eq!(info.lifecycle.on_timeout, "pause");
    let ttl = rfc3339_secs(&info.end_at) - now_secs();
    assert!((80..=91).contains(&ttl), "end_at is ~90 s away, got {ttl}");

    let out = sbx.commands().run("echo \"$GREETING\"; nproc").await.expect("run");
    assert_eq!(out.stdout.lines().next(), Some("hello from env"));
    let m = sbx.metrics().await.expect("metrics");
    assert_eq!(m.last().expect("sample").mem_total, 256 << 20, "the memory limit is the sandbox's");
    sbx.kill().await.expect("kill");
}

#[tokio::test]
async fn connect_by_id_gives_a_working_handle() {
    let srv = Server::start();
    let sbx = srv.sandbox().await;
    sbx.files().write("/tmp/marker", "here").await.expect("write");

    let client = srv.client();
    let again = client.connect(sbx.id()).await.expect("connect");
    assert_eq!(again.id(), sbx.id());
    assert_eq!(again.access_token(), sbx.access_token());
    assert_eq!(again.files().read_to_string("/tmp/marker").await.expect("read"), "here");

    // get() builds a handle from info, without extending the timeout.
    let before = sbx.info().await.expect("info").end_at;
    let got = client.get(sbx.id()).await.expect("get");
    assert_eq!(got.commands().run("echo ok").await.expect("run").stdout, "ok\n");
    assert_eq!(sbx.info().await.expect("info").end_at, before);

    assert!(matches!(client.connect("doesnotexist000000000").await, Err(Error::NotFound(_))));
}

#[tokio::test]
async fn list_filters_by_metadata_and_state_and_pages() {
    let srv = Server::start();
    let client = srv.client();
    let mut ids = Vec::new();
    for i in 0..3 {
        let s = Sandbox::builder().client(&client).allow_internet_access(false).metadata("suite", "paging").metadata("n", i.to_string()).create().await.expect("create");
        ids.push(s.id().to_string());
    }
    let other = srv.sandbox().await;
    assert!(client.pause(&ids[2]).await.expect("pause"));

    // Pages of one: three pages, each with a next token but the last.
    let pages: Vec<_> = client.list().metadata("suite", "paging").limit(1).pages().collect().await;
    assert_eq!(pages.len(), 3, "{pages:?}");
    let pages: Vec<_> = pages.into_iter().map(|p| p.expect("page")).collect();
    assert!(pages.iter().all(|p| p.sandboxes.len() == 1));
    assert!(pages[0].next_token.is_some() && pages[2].next_token.is_none());
    let seen: HashSet<String> = pages.iter().map(|p| p.sandboxes[0].sandbox_id.clone()).collect();
    assert_eq!(seen, ids.iter().cloned().collect());

    // Items across pages, and the filters.
    let all: Vec<String> = client.list().limit(2).items().map(|s| s.expect("item").sandbox_id).collect().await;
    assert_eq!(all.len(), 4);
    assert!(all.contains(&other.id().to_string()));
    let running = client.list().metadata("suite", "paging").state(SandboxState::Running).all().await.expect("list");
    assert_eq!(running.len(), 2);
    let paused = client.list().metadata("suite", "paging").state(SandboxState::Paused).all().await.expect("list");
    assert_eq!(paused.iter().map(|s| s.sandbox_id.as_str()).collect::<Vec<_>>(), vec![ids[2].as_str()]);
    assert_eq!(paused[0].state, "paused");
    let one = client.list().metadata("suite", "paging").metadata("n", "1").all().await.expect("list");
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].sandbox_id, ids[1]);
    assert!(client.list().metadata("suite", "nothing-has-this").all().await.expect("list").is_empty());

    // A bad page size is the server's 400, not a panic or an empty list.
    let e = client.list().limit(0).all().await.expect_err("limit 0");
    assert!(matches!(e, Error::Http { status: 400, .. }), "{e:?}");
}

#[tokio::test]
async fn set_timeout_moves_the_deadline_both_ways() {
    let srv = Server::start();
    let sbx = srv.sandbox().await;
    sbx.set_timeout(Duration::from_secs(600)).await.expect("extend");
    let ttl = rfc3339_secs(&sbx.info().await.expect("info").end_at) - now_secs();
    assert!(ttl > 500, "extended to ~600 s, got {ttl}");

    sbx.set_timeout(Duration::from_secs(1)).await.expect("shorten");
    let gone = eventually(15, async || matches!(sbx.info().await, Err(Error::NotFound(_)))).await;
    assert!(gone, "the sandbox is killed at its new deadline");
    assert!(!sbx.is_running().await.expect("health"));
    assert!(matches!(sbx.set_timeout(Duration::from_secs(5)).await, Err(Error::NotFound(_))));
}

#[tokio::test]
async fn pause_and_resume_keep_processes_and_files() {
    let srv = Server::start();
    let sbx = srv.sandbox().await;
    sbx.files().write("/home/user/state.txt", "kept").await.expect("write");
    let bg = sbx.commands().command("sleep 600").no_timeout().spawn().await.expect("spawn");
    let pid = bg.pid();
    drop(bg);

    assert!(sbx.pause().await.expect("pause"), "first pause pauses");
    assert!(!sbx.pause().await.expect("pause again"), "second pause reports it was already paused");
    assert_eq!(sbx.info().await.expect("info").state, "paused");
    assert!(!sbx.is_running().await.expect("health"), "a paused sandbox does not answer");
    let e = sbx.commands().run("true").await.expect_err("paused");
    assert!(matches!(e, Error::NotFound(ref m) if m.contains("paused")), "{e:?}");

    sbx.resume(Some(Duration::from_secs(120))).await.expect("resume");
    assert_eq!(sbx.info().await.expect("info").state, "running");
    assert!(sbx.is_running().await.expect("health"));
    assert_eq!(sbx.files().read_to_string("state.txt").await.expect("read"), "kept");
    let procs = sbx.commands().list().await.expect("list");
    assert!(procs.iter().any(|p| p.pid == pid), "the background process survived the pause: {procs:?}");
}

#[tokio::test]
async fn kill_removes_the_sandbox_and_is_an_error_twice() {
    let srv = Server::start();
    let sbx = srv.sandbox().await;
    assert!(sbx.is_running().await.expect("health"));
    sbx.kill().await.expect("kill");
    assert!(matches!(sbx.info().await, Err(Error::NotFound(_))));
    assert!(matches!(sbx.kill().await, Err(Error::NotFound(_))));
    assert!(!sbx.is_running().await.expect("health"));
    let e = sbx.commands().run("true").await.expect_err("killed");
    assert!(e.is_not_found(), "{e:?}");
    assert!(srv.client().list().all().await.expect("list").is_empty());
}

#[tokio::test]
async fn metrics_report_usage() {
    let srv = Server::start();
    let sbx = srv.sandbox().await;
    sbx.commands().run("head -c 20000000 /dev/zero > /tmp/fill").await.expect("fill");
    let m = sbx.metrics().await.expect("metrics");
    assert!(!m.is_empty(), "at least one sample");
    let last = m.last().expect("sample");
    assert!(last.cpu_count >= 1);
    assert!(last.mem_used > 0, "{last:?}");
    assert!(last.mem_total >= last.mem_used);
    let now = SystemTime::now();
    let window = sbx.metrics_between(now - Duration::from_secs(3600), now + Duration::from_secs(5)).await.expect("window");
    assert!(!window.is_empty());
    let past = sbx.metrics_between(now - Duration::from_secs(7200), now - Duration::from_secs(3600)).await.expect("past");
    assert!(past.is_empty(), "no samples an hour ago");
    assert!(matches!(srv.client().metrics("nosuchsandbox", None, None).await, Err(Error::NotFound(_))));
}

#[tokio::test]
async fn auth_errors_are_typed() {
    let srv = Server::start();
    let bad = Client::new(Config::new(srv.url(), "e2b_ffffffffffffffffffffffffffffffffffffffff")).expect("client");
    let e = bad.list().all().await.expect_err("bad key");
    assert!(matches!(e, Error::Auth(_)), "{e:?}");
    let e = Sandbox::builder().client(&bad).create().await.expect_err("bad key");
    assert!(matches!(e, Error::Auth(_)), "{e:?}");

    let none = Client::new(Config { api_key: None, ..srv.config() }).expect("client");
    assert!(matches!(none.info("x").await, Err(Error::Auth(ref m)) if m.contains("AIRLOCK_API_KEY")));

    // The sandbox's access token guards sandbox traffic.
    let sbx = srv.sandbox().await;
    let e = tokenless(&srv, sbx.id()).await.commands().run("true").await.expect_err("no token");
    assert!(matches!(e, Error::Auth(_)), "{e:?}");
}

/// A handle on a sandbox that lost its access token.
async fn tokenless(srv: &Server, id: &str) -> Sandbox {
    let info = srv.client().info(id).await.expect("info");
    let json = serde_json::json!({
        "templateID": info.template_id, "sandboxID": info.sandbox_id, "clientID": "x", "envdVersion": info.envd_version,
    });
    fake_connect(srv, json).await
}

async fn fake_connect(srv: &Server, body: serde_json::Value) -> Sandbox {
    // A one-shot HTTP server that answers connect with `body`, so the SDK
    // builds a handle exactly as it would from a real response.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let payload = serde_json::to_vec(&body).expect("json");
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        if let Ok((mut s, _)) = listener.accept().await {
            let mut buf = vec![0u8; 4096];
            let _ = s.read(&mut buf).await;
            let head = format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", payload.len());
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(&payload).await;
        }
    });
    let cfg = Config { api_url: format!("http://{addr}"), sandbox_url: srv.url(), ..Config::new("http://unused", KEY) };
    Client::new(cfg).expect("client").connect("any").await.expect("fake connect")
}

#[tokio::test]
async fn rate_limits_and_capacity_are_typed() {
    let srv = Server::start_with(&["--rate-limit", "1"]);
    let client = Client::new(srv.config().with_retries(0)).expect("client");
    let mut limited = None;
    for _ in 0..5 {
        if let Err(e) = client.list().all().await {
            limited = Some(e);
            break;
        }
    }
    assert!(matches!(limited, Some(Error::RateLimited { .. })), "{limited:?}");
    // With retries the SDK waits out Retry-After and succeeds.
    let patient = Client::new(srv.config().with_retries(3)).expect("client");
    for _ in 0..3 {
        patient.list().all().await.expect("retried past the limit");
    }
    drop(srv);

    let srv = Server::start_with(&["--max-sandboxes", "1"]);
    let client = Client::new(srv.config().with_retries(0)).expect("client");
    let _one = Sandbox::builder().client(&client).allow_internet_access(false).create().await.expect("first");
    let e = Sandbox::builder().client(&client).allow_internet_access(false).create().await.expect_err("over capacity");
    assert!(matches!(e, Error::RateLimited { .. }), "{e:?}");
}

#[tokio::test]
async fn bad_requests_and_unreachable_servers_are_typed() {
    let srv = Server::start();
    let client = srv.client();
    let e = Sandbox::builder().client(&client).template("no-such-template").create().await.expect_err("template");
    assert!(matches!(e, Error::NotFound(ref m) if m.contains("no-such-template")), "{e:?}");
    let e = Sandbox::builder().client(&client).memory_mb(1).allow_internet_access(false).create().await.expect_err("memory");
    assert!(matches!(e, Error::Http { status: 400, ref message } if message.contains("memoryMB")), "{e:?}");
    assert!(matches!(client.info("nosuchsandbox").await, Err(Error::NotFound(_))));

    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let dead = Client::new(Config::new(format!("http://127.0.0.1:{port}"), KEY)).expect("client");
    let e = dead.list().all().await.expect_err("nobody listens");
    assert!(matches!(e, Error::Connection { .. }), "{e:?}");
    assert!(e.to_line().contains(&port.to_string()), "{}", e.to_line());
}

#[tokio::test]
async fn startup_script_runs_before_create_returns_and_is_logged() {
    let srv = Server::start();
    let sbx = Sandbox::builder().client(&srv.client()).allow_internet_access(false).startup_script("echo set-up-$((2+3)); id -un > /tmp/set-up-by").create().await.expect("create");
    assert_eq!(sbx.files().read_to_string("/tmp/set-up-by").await.expect("read"), "root\n", "ran as root, before create returned");
    let logs = sbx.logs().await.expect("logs");
    assert!(logs.iter().any(|l| l.line.contains("set-up-5")), "{logs:?}");

    let e = Sandbox::builder().client(&srv.client()).allow_internet_access(false).startup_script("echo broken >&2; exit 7").create().await.expect_err("failing script");
    assert!(matches!(e, Error::Http { status: 400, ref message } if message.contains("exit code 7")), "{e:?}");
    assert!(matches!(srv.client().logs("nosuchsandbox").await, Err(Error::NotFound(_))));
}
