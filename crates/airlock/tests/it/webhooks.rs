//! Lifecycle webhooks against a receiver the test runs on 127.0.0.1:
//! signed deliveries (both signatures checked independently), a retry
//! after a 500, events in order, E2B's paths and names, E2B's events API
//! over the same events, and a delivery interrupted by a server crash
//! finished after the restart without repeating what was delivered.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::server::Server;

const SECRET: &str = "s3cret-for-tests";

/// One request the receiver got, and what it answered.
#[derive(Clone, Debug)]
struct Got {
    path: String,
    headers: http::HeaderMap,
    body: Bytes,
    status: u16,
}

impl Got {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("delivery JSON")
    }
    fn header(&self, k: &str) -> &str {
        self.headers.get(k).and_then(|v| v.to_str().ok()).unwrap_or_default()
    }
}

/// A webhook receiver: answers `/hook` with 500 the first time and while
/// `failing` is set, everything else with 200.
struct Receiver {
    port: u16,
    got: Arc<Mutex<Vec<Got>>>,
    failing: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    async fn start() -> Self {
        Self::start_with(None).await
    }

    /// The same receiver behind TLS.
    async fn start_with(tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let fail_next = Arc::new(AtomicU32::new(1));
        let failing = Arc::new(AtomicBool::new(false));
        let (g, f, a) = (got.clone(), fail_next.clone(), failing.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (g, f, a, tls) = (g.clone(), f.clone(), a.clone(), tls.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (g, f, a) = (g.clone(), f.clone(), a.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            let path = parts.uri.path().to_string();
                            let fail = path == "/hook" && (a.load(Ordering::SeqCst) || f.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok());
                            let status = if fail { 500 } else { 200 };
                            g.lock().expect("lock").push(Got { path, headers: parts.headers, body, status });
                            let mut resp = http::Response::new(http_body_util::Full::new(Bytes::from_static(b"ok")));
                            *resp.status_mut() = http::StatusCode::from_u16(status).expect("status");
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    match tls {
                        None => {
                            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                        }
                        // A handshake the client refuses (an untrusted
                        // certificate) ends here, before any request.
                        Some(t) => {
                            if let Ok(s) = t.accept(stream).await {
                                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc).await;
                            }
                        }
                    }
                });
            }
        });
        Self { port, got, failing, task }
    }

    fn got(&self, path: &str) -> Vec<Got> {
        self.got.lock().expect("lock").iter().filter(|g| g.path == path).cloned().collect()
    }

    /// Waits (up to 40 s) until the requests to `path` satisfy `done`.
    async fn wait(&self, path: &str, what: &str, done: impl Fn(&[Got]) -> bool) -> Vec<Got> {
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let got = self.got(path);
            if done(&got) {
                return got;
            }
            assert!(Instant::now() < deadline, "{what}: got {:?}", got.iter().map(|g| (g.status, g.json())).collect::<Vec<_>>());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// HMAC-SHA256 written out (RFC 2104), so the server's is checked against
/// an implementation that is not its own.
fn hmac_sha256(key: &[u8], msg: &[u8]) -> String {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let pad = |b: u8| k.iter().map(|x| x ^ b).collect::<Vec<u8>>();
    let inner = Sha256::digest([pad(0x36).as_slice(), msg].concat());
    let outer = Sha256::digest([pad(0x5c).as_slice(), inner.as_slice()].concat());
    outer.iter().map(|b| format!("{b:02x}")).collect()
}

/// Both signatures of a delivery are right for its exact body.
fn assert_signed(g: &Got) {
    let e2b = base64::engine::general_purpose::STANDARD.encode(Sha256::digest([SECRET.as_bytes(), &g.body].concat()));
    assert_eq!(g.header("e2b-signature"), e2b.trim_end_matches('='), "E2B's signature");
    assert_eq!(g.header("e2b-signature-version"), "v1");
    assert_eq!(g.header("x-airlock-signature"), format!("sha256={}", hmac_sha256(SECRET.as_bytes(), &g.body)), "the HMAC");
}

/// Polls a webhook (up to 20 s) until its state satisfies `done`: the
/// server records an outcome just after the receiver has answered.
async fn wait_hook(srv: &Server, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (s, h) = srv.api("GET", &format!("/webhooks/{id}"), None).await;
        assert_eq!(s, 200, "{h}");
        if done(&h) {
            return h;
        }
        assert!(Instant::now() < deadline, "webhook state: {h}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn types(got: &[Got]) -> Vec<(u16, String, String)> {
    got.iter().map(|g| (g.status, g.json()["type"].as_str().unwrap_or_default().to_string(), g.json()["sandboxId"].as_str().unwrap_or_default().to_string())).collect()
}

#[tokio::test]
async fn webhooks_deliver_signed_events_in_order_retry_and_survive_a_crash() {
    let rx = Receiver::start().await;
    let mut srv = Server::start(&["--no-network"]).await;
    let url = format!("http://127.0.0.1:{}/hook", rx.port);

    // Registration is checked, and never shows the secret again.
    for (body, needle) in [
        (json!({"url": "ftp://receiver.test/"}), "http://"),
        (json!({"url": ""}), "url is required"),
        (json!({"url": url, "events": ["exploded"]}), "unknown event type"),
        (json!({"url": url, "name": "n".repeat(200)}), "name"),
    ] {
        let (s, v) = srv.api("POST", "/webhooks", Some(body.clone())).await;
        assert_eq!(s, 400, "{body}: {v}");
        assert!(v["message"].as_str().unwrap_or_default().contains(needle), "{body}: {v}");
    }
    // Both spellings: E2B's created (Airlock's ready) and Airlock's killed.
    let (s, hook) = srv.api("POST", "/webhooks", Some(json!({"url": url, "events": ["sandbox.lifecycle.created", "killed"], "secret": SECRET, "name": "ours"}))).await;
    assert_eq!(s, 201, "{hook}");
    assert!(!hook.to_string().contains(SECRET), "the secret is never echoed: {hook}");
    assert_eq!((hook["signed"].as_bool(), hook["enabled"].as_bool(), hook["name"].as_str()), (Some(true), Some(true), Some("ours")), "{hook}");
    let hid = hook["id"].as_str().expect("id").to_string();
    // E2B's registration, with E2B's names, delivering elsewhere.
    let e2b_url = format!("http://127.0.0.1:{}/e2b", rx.port);
    let body = json!({"name": "e2b", "url": e2b_url, "enabled": true, "events": ["sandbox.lifecycle.created", "sandbox.lifecycle.killed"], "signatureSecret": SECRET});
    let (s, e2b) = srv.api("POST", "/events/webhooks", Some(body)).await;
    assert_eq!(s, 201, "{e2b}");
    assert!(!e2b.to_string().contains(SECRET));
    let eid = e2b["id"].as_str().expect("id").to_string();
    let (s, list) = srv.api("GET", "/events/webhooks", None).await;
    assert_eq!(s, 200);
    assert_eq!(list.as_array().map(Vec::len), Some(2), "{list}");
    assert_eq!(srv.api("GET", "/webhooks/wh_nosuchwebhook", None).await.0, 404);
    assert_eq!(srv.api("DELETE", "/webhooks/wh_nosuchwebhook", None).await.0, 404);
    let (s, v) = srv.api("PATCH", &format!("/webhooks/{hid}"), Some(json!({"events": ["sandbox.lifecycle.exploded"]}))).await;
    assert_eq!(s, 400, "{v}");

    // A sandbox's life: the first delivery is answered 500 and retried.
    let sbx = srv.create(json!({"templateID": "base", "timeout": 60, "allow_internet_access": false, "metadata": {"run": "webhooks"}})).await;
    let sid = sbx["sandboxID"].as_str().expect("id").to_string();
    assert_eq!(srv.api("DELETE", &format!("/sandboxes/{sid}"), None).await.0, 204);
    let got = rx.wait("/hook", "created (500, then 200) and killed", |g| g.iter().filter(|g| g.status == 200).count() >= 2).await;
    let created = "sandbox.lifecycle.created".to_string();
    let killed = "sandbox.lifecycle.killed".to_string();
    assert_eq!(types(&got), [(500, created.clone(), sid.clone()), (200, created.clone(), sid.clone()), (200, killed.clone(), sid.clone())], "created and destroyed are not wanted");
    for g in &got {
        assert_signed(g);
        assert_eq!(g.header("e2b-webhook-id"), hid);
        assert_eq!(g.header("x-airlock-webhook"), hid);
    }
    let (first, retry, last) = (&got[0], &got[1], &got[2]);
    assert_eq!(first.body, retry.body, "a retry sends the same event");
    assert_eq!((first.header("x-airlock-attempt"), retry.header("x-airlock-attempt")), ("1", "2"));
    assert_eq!(first.header("x-airlock-delivery"), retry.header("x-airlock-delivery"), "one delivery id per event");
    assert_ne!(first.header("e2b-delivery-id"), retry.header("e2b-delivery-id"), "E2B's is per attempt");
    assert_eq!((retry.header("x-airlock-event"), last.header("x-airlock-event")), ("ready", "killed"));
    let (c, k) = (retry.json(), last.json());
    assert!(c["id"].as_str().expect("id").parse::<i64>().expect("seq") < k["id"].as_str().expect("id").parse::<i64>().expect("seq"), "in order");
    assert_eq!((c["version"].as_str(), c["sandboxTemplateId"].as_str(), c["airlockType"].as_str()), (Some("v2"), Some("base"), Some("ready")), "{c}");
    assert_eq!(c["eventData"]["sandbox_metadata"]["run"], "webhooks", "{c}");
    assert_eq!(k["eventData"]["by"], "api", "{k}");
    for f in ["sandboxBuildId", "sandboxExecutionId", "sandboxTeamId", "timestamp"] {
        assert!(c[f].as_str().is_some_and(|v| !v.is_empty()), "{f} in {c}");
    }
    let e2b_got = rx.wait("/e2b", "E2B's webhook got created and killed", |g| g.len() >= 2).await;
    assert_eq!(types(&e2b_got), [(200, created.clone(), sid.clone()), (200, killed.clone(), sid.clone())]);
    assert_signed(&e2b_got[0]);

    // The webhook's delivery state.
    let h = wait_hook(&srv, &hid, |h| h["delivery"]["delivered"].as_u64() >= Some(2)).await;
    let d = &h["delivery"];
    assert_eq!((d["delivered"].as_u64(), d["failed"].as_u64(), d["lastStatus"].as_u64(), d["attempts"].as_u64()), (Some(2), Some(0), Some(200), Some(1)), "{h}");
    assert!(d["lastError"].is_null() && d["lastAttemptAt"].is_string(), "{h}");
    let killed_seq: i64 = k["id"].as_str().expect("id").parse().expect("seq");
    assert!(d["lastEventId"].as_i64().expect("cursor") >= killed_seq, "{h}");

    // E2B's events API answers from the same store.
    let (s, evs) = srv.api("GET", &format!("/events/sandboxes/{sid}?orderAsc=true"), None).await;
    assert_eq!(s, 200, "{evs}");
    let listed: Vec<(&str, &str)> = evs.as_array().expect("array").iter().map(|e| (e["type"].as_str().unwrap_or(""), e["id"].as_str().unwrap_or(""))).collect();
    assert_eq!(listed, [(created.as_str(), c["id"].as_str().expect("id")), (killed.as_str(), k["id"].as_str().expect("id"))], "{evs}");
    assert_eq!(evs[0], c, "a listed event is the delivered one");
    let (_, newest) = srv.api("GET", &format!("/events/sandboxes/{sid}"), None).await;
    assert_eq!(newest[0]["type"], killed.as_str(), "newest first by default");
    let (_, ours) = srv.api("GET", &format!("/events/sandboxes/{sid}?orderAsc=true&types=killed,destroyed"), None).await;
    assert_eq!(ours.as_array().expect("array").iter().map(|e| e["airlockType"].as_str().unwrap_or("")).collect::<Vec<_>>(), ["killed", "destroyed"], "{ours}");
    let (_, one) = srv.api("GET", "/events/sandboxes?limit=1", None).await;
    assert_eq!(one.as_array().map(Vec::len), Some(1));
    assert_eq!(srv.api("GET", "/events/sandboxes?limit=0", None).await.0, 400);
    assert_eq!(srv.api("GET", "/events/sandboxes/nosuchsandbox0000000", None).await, (200, json!([])));

    wait_hook(&srv, &eid, |h| h["delivery"]["delivered"].as_u64() == Some(2)).await;
    let (_, _, metrics) = srv.req("GET", "/metrics", &[("x-api-key", crate::server::KEY)], Bytes::new()).await.expect("metrics");
    let metrics = String::from_utf8_lossy(&metrics).to_string();
    let counter = |name: &str| metrics.lines().find_map(|l| l.strip_prefix(&format!("{name} "))).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    assert!(counter("airlock_webhook_deliveries_total") >= 4 && counter("airlock_webhook_retries_total") >= 1, "{metrics}");

    // E2B's delete answers 200; the webhook is gone.
    assert_eq!(srv.api("DELETE", &format!("/events/webhooks/{eid}"), None).await.0, 200);
    assert_eq!(srv.api("GET", &format!("/events/webhooks/{eid}"), None).await.0, 404);

    // A delivery the server crashes in the middle of is finished after the
    // restart, and nothing delivered before it is sent again.
    rx.failing.store(true, Ordering::SeqCst);
    let other = srv.create(json!({"templateID": "base", "timeout": 60, "allow_internet_access": false})).await;
    let oid = other["sandboxID"].as_str().expect("id").to_string();
    rx.wait("/hook", "the failing attempt", |g| g.iter().any(|g| g.status == 500 && g.json()["sandboxId"] == oid.as_str())).await;
    srv.crash_and_restart().await;
    rx.failing.store(false, Ordering::SeqCst);
    let after = rx.wait("/hook", "the interrupted delivery, after the restart", |g| g.iter().any(|g| g.status == 200 && g.json()["sandboxId"] == oid.as_str())).await;
    let delivered: Vec<i64> = after.iter().filter(|g| g.status == 200).map(|g| g.json()["id"].as_str().and_then(|i| i.parse().ok()).unwrap_or(0)).collect();
    assert!(delivered.len() == 3 && delivered.windows(2).all(|w| w[0] < w[1]), "each event delivered once, in order: {:?}", types(&after));
    wait_hook(&srv, &hid, |h| h["delivery"]["delivered"].as_u64() == Some(3)).await;
    assert_eq!(srv.api("DELETE", &format!("/sandboxes/{oid}"), None).await.0, 204);
    assert_eq!(srv.api("DELETE", &format!("/webhooks/{hid}"), None).await.0, 204);
    assert_eq!(srv.api("GET", "/webhooks", None).await, (200, json!([])));
}

/// A CA and a certificate it signs for 127.0.0.1, made with `openssl` in
/// `dir` under `name`: (the CA's PEM path, a TLS acceptor serving the
/// certificate).
fn test_ca(dir: &std::path::Path, name: &str) -> (std::path::PathBuf, tokio_rustls::TlsAcceptor) {
    use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
    let f = |x: &str| dir.join(format!("{name}-{x}"));
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let run = |args: &[&str]| {
        let o = std::process::Command::new("openssl").args(args).output().expect("openssl");
        assert!(o.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    };
    let p = |x: &str| f(x).to_string_lossy().into_owned();
    let mut a = vec!["req", "-x509"];
    a.extend(ec);
    let (cak, cap, subj) = (p("ca.key"), p("ca.pem"), format!("/CN=airlock test CA {name}"));
    a.extend(["-keyout", &cak, "-out", &cap, "-days", "2", "-subj", &subj, "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
    run(&a);
    let (sk, csr, sp, ext) = (p("srv.key"), p("srv.csr"), p("srv.pem"), p("ext"));
    std::fs::write(&ext, "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n").expect("ext");
    let mut a = vec!["req"];
    a.extend(ec);
    a.extend(["-keyout", &sk, "-out", &csr, "-subj", "/CN=127.0.0.1"]);
    run(&a);
    run(&["x509", "-req", "-in", &csr, "-CA", &cap, "-CAkey", &cak, "-CAcreateserial", "-out", &sp, "-days", "2", "-extfile", &ext]);
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&sp).expect("cert").map(|c| c.expect("cert")).collect();
    let key = PrivateKeyDer::from_pem_file(&sk).expect("key");
    let cfg = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
    (f("ca.pem"), tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(cfg)))
}

#[tokio::test]
async fn https_receivers_get_signed_deliveries_and_untrusted_ones_none() {
    let dir = tempfile::tempdir().expect("tmp");
    let (ca, trusted) = test_ca(dir.path(), "good");
    let (_, untrusted) = test_ca(dir.path(), "rogue");
    let good = Receiver::start_with(Some(trusted)).await;
    let rogue = Receiver::start_with(Some(untrusted)).await;
    let srv = Server::start(&["--no-network", "--webhook-ca", ca.to_str().expect("path")]).await;
    let mut ids = Vec::new();
    for r in [&good, &rogue] {
        let (s, h) = srv.api("POST", "/webhooks", Some(json!({"url": format!("https://127.0.0.1:{}/ok", r.port), "events": ["killed"], "secret": SECRET}))).await;
        assert_eq!(s, 201, "{h}");
        ids.push(h["id"].as_str().expect("id").to_string());
    }
    let sbx = srv.create(json!({"templateID": "base", "timeout": 60})).await;
    let sid = sbx["sandboxID"].as_str().expect("id").to_string();
    assert_eq!(srv.api("DELETE", &format!("/sandboxes/{sid}"), None).await.0, 204);
    let got = good.wait("/ok", "a delivery over TLS", |g| !g.is_empty()).await;
    assert_signed(&got[0]);
    assert_eq!(got[0].json()["sandboxId"], sid.as_str(), "{:?}", got[0].json());
    // The rogue receiver's certificate is from a CA nobody trusts: every
    // attempt fails at the handshake, and the webhook says why.
    let h = wait_hook(&srv, &ids[1], |h| h["delivery"]["lastError"].as_str().is_some_and(|e| !e.is_empty())).await;
    assert!(h["delivery"]["lastError"].as_str().unwrap_or_default().contains("invalid peer certificate: UnknownIssuer"), "{h}");
    assert!(rogue.got("/ok").is_empty(), "no request reached the untrusted receiver");
    // A CA file that is not one is refused at start.
    let bad = dir.path().join("not-a-ca.pem");
    std::fs::write(&bad, "hello").expect("write");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_airlock"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--webhook-ca")
        .arg(&bad)
        .output()
        .expect("serve");
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("webhook CA"), "{}", String::from_utf8_lossy(&o.stderr));
}
