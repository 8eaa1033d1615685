//! Operating sandboxes: warm pools, live resource changes, resource
//! alerts, OOM events, metric history and streams, and the server's health.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::events::{kinds, read_events};
use crate::server::{Server, KEY};

async fn wait_until<F, Fut>(what: &str, secs: u64, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn pool(srv: &Server, name: &str) -> Value {
    let (s, v) = srv.api("GET", &format!("/pools/{name}"), None).await;
    assert_eq!(s, 200, "{v}");
    v
}

fn sid(v: &Value) -> String {
    v["sandboxID"].as_str().expect("sandboxID").to_string()
}

#[tokio::test]
async fn pooled_creates_carry_the_request_and_nothing_of_each_other() {
    let srv = Server::start(&["--no-network", "--pool", "base=2", "--max-sandboxes", "5"]).await;
    let ready = |n: u64| {
        let srv = &srv;
        move || async move { pool(srv, "base").await["ready"] == n }
    };
    wait_until("the pool to fill", 60, ready(2)).await;
    let watch = tokio::spawn(read_events(srv.port, "/events?metadata=run%3Dpool-test", None, |e| e.iter().filter(|e| e["type"] == "ready").count() >= 2));
    tokio::time::sleep(Duration::from_millis(200)).await;

    let a = srv.create(json!({"templateID": "base", "timeout": 60, "envVars": {"FOO": "from-a"}, "metadata": {"run": "pool-test", "who": "a"}})).await;
    let (_, out) = srv.run(&a, "echo $FOO; echo secret > /tmp/mark; ls /tmp").await;
    assert_eq!(out, "from-a\nmark\n");
    let b = srv.create(json!({"templateID": "base", "timeout": 60, "metadata": {"run": "pool-test", "who": "b"}})).await;
    let (_, out) = srv.run(&b, "echo [$FOO]; ls -A /tmp").await;
    assert_eq!(out, "[]\n", "the second claim has neither the first's environment nor its files");
    assert_ne!(a["envdAccessToken"], b["envdAccessToken"]);
    let p = pool(&srv, "base").await;
    assert_eq!((p["claims"].as_u64(), p["misses"].as_u64()), (Some(2), Some(0)), "{p}");

    // It is what a fresh sandbox is: its own token, its metadata, listed
    // newest last, running with a deadline from the claim.
    let (s, d) = srv.api("GET", &format!("/sandboxes/{}", sid(&a)), None).await;
    assert_eq!((s, d["state"].as_str(), d["metadata"]["who"].as_str()), (200, Some("running"), Some("a")), "{d}");
    let (s, _, _) = srv.req("POST", "/process.Process/List", &[("e2b-sandbox-id", &sid(&a)), ("content-type", "application/json")], "{}".into()).await.expect("req");
    assert_eq!(s, 401, "the claim's token is required");
    let (s, _, _) = srv
        .req("POST", "/init", &[("e2b-sandbox-id", &sid(&a)), ("x-access-token", a["envdAccessToken"].as_str().unwrap_or("")), ("content-type", "application/json")], "{}".into())
        .await
        .expect("req");
    assert_eq!(s, 404, "the claim route is not reachable through the proxy");
    let (_, list) = srv.api("GET", "/v2/sandboxes?metadata=run%3Dpool-test", None).await;
    assert_eq!(list.as_array().map(Vec::len), Some(2), "{list}");
    let seen = watch.await.expect("watcher");
    assert_eq!(kinds(&seen, &sid(&a)), ["created", "ready"], "{seen:?}");
    assert_eq!(seen[0]["data"]["pool"], "base");

    // Another shape is not the pool's; the pool refills (to the limit).
    let (_, before) = srv.api("GET", "/pools/base", None).await;
    let c = srv.create(json!({"templateID": "base", "timeout": 60, "memoryMB": 256})).await;
    assert_eq!(pool(&srv, "base").await["claims"], before["claims"], "a different shape boots");
    let (_, d) = srv.api("GET", &format!("/sandboxes/{}", sid(&c)), None).await;
    assert_eq!(d["memoryMB"], 256);
    // At the sandbox limit a create discards a pooled sandbox rather than fail.
    wait_until("the pool to refill to the limit", 60, || async { pool(&srv, "base").await["ready"].as_u64() >= Some(1) }).await;
    srv.create(json!({"templateID": "base", "timeout": 60, "memoryMB": 256})).await;
    srv.create(json!({"templateID": "base", "timeout": 60, "memoryMB": 256})).await;
    let (s, v) = srv.api("POST", "/v2/sandboxes", Some(json!({"templateID": "base", "timeout": 60}))).await;
    assert_eq!(s, 429, "five of the user's own is the limit: {v}");

    // Pools through the API: made, listed, refused when bad, deleted.
    let (s, v) = srv.api("PUT", "/pools/small", Some(json!({"templateID": "base", "size": 0, "memoryMB": 128}))).await;
    assert_eq!((s, v["name"].as_str(), v["size"].as_u64()), (200, Some("small"), Some(0)), "{v}");
    let (s, v) = srv.api("PUT", "/pools/bad", Some(json!({"templateID": "no-such-template", "size": 1}))).await;
    assert_eq!(s, 404, "{v}");
    let (s, v) = srv.api("PUT", "/pools/a%2Fb", Some(json!({"templateID": "base", "size": 1}))).await;
    assert_eq!(s, 400, "{v}");
    let (_, all) = srv.api("GET", "/pools", None).await;
    assert_eq!(
        all.as_array().map(|a| a.iter().map(|p| p["name"].as_str().unwrap_or_default().to_string()).collect::<Vec<_>>()),
        Some(vec!["base".to_string(), "small".to_string()])
    );
    assert_eq!(srv.api("DELETE", "/pools/small", None).await.0, 204);
    assert_eq!(srv.api("DELETE", "/pools/small", None).await.0, 404);
    assert_eq!(srv.api("DELETE", "/pools/base", None).await.0, 409, "a --pool pool is the flag's");
    let (_, _, metrics) = srv.req("GET", "/metrics", &[("x-api-key", KEY)], Default::default()).await.expect("metrics");
    let text = String::from_utf8_lossy(&metrics);
    assert!(text.contains("airlock_pool_size{pool=\"base\"} 2") && text.contains("airlock_pool_claims_total 2"), "{text}");
}

#[tokio::test]
async fn resources_change_live_and_the_life_records_oom_and_alerts() {
    let srv = Server::start(&["--no-network", "--sample-interval", "0.3"]).await;
    let sbx = srv.create(json!({"templateID": "base", "timeout": 120, "memoryMB": 64, "metadata": {"run": "ops-life"}, "alerts": {"memoryPct": 60}})).await;
    let id = sid(&sbx);
    let (port, path) = (srv.port, format!("/sandboxes/{id}/events"));
    let watch = tokio::spawn(async move { read_events(port, &path, Some(0), |e| e.iter().any(|e| e["type"] == "destroyed")).await });

    // 100 MiB in one process does not fit in 64 MiB: the OOM killer takes it.
    let hog = "head -c 100M /dev/zero | tail > /dev/null; echo rc=$?";
    let (_, out) = srv.run(&sbx, hog).await;
    assert!(out.contains("rc=137"), "the hog was killed: {out}");
    // The sampler notices the kill (it looks every 0.3 s).
    let oom = read_events(srv.port, &format!("/sandboxes/{id}/events?type=oom"), Some(0), |e| !e.is_empty()).await;
    assert!(oom[0]["data"]["kills"].as_u64() >= Some(1), "{oom:?}");
    let (s, v) = srv.api("PATCH", &format!("/sandboxes/{id}/resources"), Some(json!({"memoryMB": 256, "cpuCount": 1}))).await;
    assert_eq!((s, v["memoryMB"].as_u64(), v["cpuCount"].as_u64()), (200, Some(256), Some(1)), "{v}");
    let (_, out) = srv.run(&sbx, hog).await;
    assert_eq!(out.trim(), "rc=0", "with more memory the same process succeeds");

    // Memory a process holds (its working set) cannot be taken away; the
    // alert fires once while usage stays above 60%, and again on the next
    // crossing.
    let hold = "rm -f /tmp/held; setsid nohup python3 -c 'import time, os; b = b\"x\" * (170 << 20); open(\"/tmp/held\", \"w\").close(); time.sleep(2.5)' \
                >/dev/null 2>&1 </dev/null & for i in $(seq 100); do [ -e /tmp/held ] && break; sleep 0.1; done; ls /tmp/held";
    let (_, out) = srv.run(&sbx, hold).await;
    assert_eq!(out.trim(), "/tmp/held", "the holder started");
    let (s, v) = srv.api("PATCH", &format!("/sandboxes/{id}/resources"), Some(json!({"memoryMB": 128}))).await;
    assert_eq!(s, 409, "{v}");
    assert!(v["message"].as_str().unwrap_or_default().contains("cannot go below"), "{v}");
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let (_, out) = srv.run(&sbx, hold).await;
    assert_eq!(out.trim(), "/tmp/held", "the holder started again");
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // The disk limit grows where the server may grow a mounted ext4.
    let (s, v) = srv.api("PATCH", &format!("/sandboxes/{id}/resources"), Some(json!({"diskSizeMB": 20 * 1024}))).await;
    // The test runs as root with the server's capabilities.
    if airlock_runtime::disk::can_grow() {
        assert_eq!((s, v["diskSizeMB"].as_u64()), (200, Some(20 * 1024)), "{v}");
        let (_, out) = srv.run(&sbx, "df -m --output=size / | tail -1").await;
        assert!(out.trim().parse::<u64>().unwrap_or(0) > 15 * 1024, "the sandbox sees the room: {out}");
    } else {
        assert_eq!(s, 409, "{v}");
        assert!(v["message"].as_str().unwrap_or_default().contains("CAP_SYS_RESOURCE"), "{v}");
    }
    let (s, v) = srv.api("PATCH", &format!("/sandboxes/{id}/resources"), Some(json!({"diskSizeMB": 16}))).await;
    assert_eq!(s, 409, "a disk limit never shrinks: {v}");
    let (s, v) = srv.api("PATCH", &format!("/sandboxes/{id}/resources"), Some(json!({"memoryMB": 1}))).await;
    assert_eq!(s, 400, "{v}");
    let (s, _) = srv.api("PATCH", "/sandboxes/nosuchsandbox0000000/resources", Some(json!({"memoryMB": 128}))).await;
    assert_eq!(s, 404);
    let (s, v) = srv.api("PUT", &format!("/sandboxes/{id}/alerts"), Some(json!({"cpuPct": 250}))).await;
    assert_eq!(s, 400, "{v}");

    // History: the sampler's readings, in order, and the bulk form.
    let (_, hist) = srv.api("GET", &format!("/sandboxes/{id}/metrics"), None).await;
    let hist = hist.as_array().cloned().unwrap_or_default();
    assert!(hist.len() >= 5, "{hist:?}");
    let t: Vec<i64> = hist.iter().map(|m| m["timestampUnix"].as_i64().unwrap_or(0)).collect();
    assert!(t.windows(2).all(|w| w[0] <= w[1]), "oldest first: {t:?}");
    assert!(hist.iter().any(|m| m["memUsed"].as_u64() > Some(100 << 20)), "the held memory shows: {hist:?}");
    assert_eq!(hist.last().map(|m| m["memTotal"].clone()), Some(json!(256u64 << 20)));
    let (_, bulk) = srv.api("GET", &format!("/sandboxes/metrics?sandbox_ids={id},nosuchsandbox0000000"), None).await;
    assert_eq!(bulk["sandboxes"].as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()), Some(vec![id.clone()]), "{bulk}");

    assert_eq!(srv.api("DELETE", &format!("/sandboxes/{id}"), None).await.0, 204);
    let life = watch.await.expect("events");
    let k = kinds(&life, &id);
    let count = |t: &str| k.iter().filter(|x| *x == t).count();
    assert_eq!(&k[..2], ["created", "ready"], "{k:?}");
    assert!(count("oom") >= 1, "the OOM kill is an event: {k:?}");
    // The memory and CPU change, and the disk's growth where the host
    // let the server grow it (found in the cgroup-v2 VM, which does).
    let changes = if airlock_runtime::disk::can_grow() { 2 } else { 1 };
    assert_eq!(count("resources_changed"), changes, "{k:?}");
    // One per holder (each stays above the threshold for many samples);
    // the hog filling 64 MiB may have made one more before the resize,
    // if a sample caught it.
    let resized = k.iter().position(|x| x == "resources_changed").unwrap_or(0);
    assert_eq!(k[resized + 1..].iter().filter(|x| *x == "resource_alert").count(), 2, "one alert per crossing: {k:?}");
    assert!(count("resource_alert") <= 3, "{k:?}");
    assert_eq!(&k[k.len() - 2..], ["killed", "destroyed"], "{k:?}");
    let oom_at = k.iter().position(|x| x == "oom").unwrap_or(usize::MAX);
    let resized_at = k.iter().position(|x| x == "resources_changed").unwrap_or(0);
    assert!(oom_at < resized_at, "the OOM came before the resize: {k:?}");
    let alert = life.iter().find(|e| e["type"] == "resource_alert").expect("alert");
    assert_eq!((alert["data"]["resource"].as_str(), alert["data"]["thresholdPct"].as_f64()), (Some("memory"), Some(60.0)), "{alert}");
}

/// Reads a server-sent-events stream until `done` says so (30 s at most):
/// the status and the text.
async fn sse_text(port: u16, path: &str, done: impl Fn(&str) -> bool) -> (u16, String) {
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    let (mut tx, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.expect("handshake");
    tokio::spawn(conn);
    let req = http::Request::builder().uri(path).header("host", "127.0.0.1").header("x-api-key", KEY).body(http_body_util::Empty::<bytes::Bytes>::new()).expect("request");
    let resp = tx.send_request(req).await.expect("send");
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done(&text) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, body.frame()).await {
            Ok(Some(Ok(f))) => {
                if let Ok(d) = f.into_data() {
                    text.push_str(&String::from_utf8_lossy(&d));
                }
            }
            _ => break,
        }
    }
    (status, text)
}

#[tokio::test]
async fn metrics_stream_live_and_history_survives_a_restart() {
    let mut srv = Server::start(&["--no-network", "--sample-interval", "0.5"]).await;
    let sbx = srv.create(json!({"templateID": "base", "timeout": 120})).await;
    let id = sid(&sbx);
    let (s, v) = srv.api("GET", &format!("/sandboxes/{id}/metrics/stream?interval=0.1"), None).await;
    assert_eq!(s, 400, "{v}");
    // A stream at 0.5 s: readings, then `end` once the sandbox is killed.
    let port = srv.port;
    let stream = tokio::spawn(async move { sse_text(port, &format!("/sandboxes/{id}/metrics/stream?interval=0.5"), |t| t.contains("event: end")).await });
    srv.run(&sbx, "for i in $(seq 1 200000); do :; done").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let id = sid(&sbx);
    let (_, before) = srv.api("GET", &format!("/sandboxes/{id}/metrics"), None).await;
    let n = before.as_array().map(Vec::len).unwrap_or(0);
    assert!(n >= 2, "{before}");
    srv.crash_and_restart().await;
    let (_, after) = srv.api("GET", &format!("/sandboxes/{id}/metrics"), None).await;
    assert!(after.as_array().map(Vec::len).unwrap_or(0) >= n, "history survives the restart: {after}");
    let first = before[0]["timestampUnix"].as_i64().unwrap_or(0);
    let (_, ranged) = srv.api("GET", &format!("/sandboxes/{id}/metrics?start={first}&end={first}"), None).await;
    assert!(ranged.as_array().is_some_and(|a| !a.is_empty() && a.iter().all(|m| m["timestampUnix"] == first)), "{ranged}");
    assert_eq!(srv.api("DELETE", &format!("/sandboxes/{id}"), None).await.0, 204);
    let (s, text) = stream.await.expect("stream");
    assert_eq!(s, 200);
    let readings: Vec<Value> = text
        .split("\n\n")
        .filter(|m| m.contains("event: metrics"))
        .filter_map(|m| m.lines().find_map(|l| l.strip_prefix("data: ")).and_then(|d| serde_json::from_str(d).ok()))
        .collect();
    assert!(readings.len() >= 2, "{text}");
    assert!(readings.iter().any(|m| m["cpuUsedPct"].as_f64() > Some(0.0)), "the busy loop shows: {text}");
    assert!(readings.iter().all(|m| m.get("netRxBytes").is_some() && m["memTotal"].as_u64() > Some(0)), "{text}");

    // The server's own health and what it depends on.
    let (s, h) = srv.api("GET", "/health", None).await;
    assert_eq!((s, h["status"].as_str(), h["checks"]["store"].as_bool(), h["checks"]["disk"].as_bool()), (200, Some("ok"), Some(true), Some(true)), "{h}");
    assert!(h["checks"].get("network").is_some() && h["checks"]["disk"].get("freeBytes").is_none(), "no figures without a key: {h}");
    let (s, d) = srv.api("GET", "/health/details", None).await;
    assert_eq!(s, 200);
    assert!(d["checks"]["disk"]["freeBytes"].as_u64() > Some(0) && d["checks"]["store"]["ok"] == true, "{d}");
    let (s, _, _) = srv.req("GET", "/health/details", &[], Default::default()).await.expect("req");
    assert_eq!(s, 401);
}
