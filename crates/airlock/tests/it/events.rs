//! Lifecycle events over server-sent events: a sandbox's whole life in
//! order, filters, and a stream resumed with `Last-Event-ID` after a server
//! crash losing nothing.

use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

use crate::server::{Server, KEY};

/// Reads an SSE stream until `done` says so (or 90 s pass): the events'
/// JSON payloads, in order.
pub(crate) async fn read_events(port: u16, path: &str, last_event_id: Option<i64>, mut done: impl FnMut(&[Value]) -> bool) -> Vec<Value> {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("handshake");
    tokio::spawn(conn);
    let mut b = http::Request::builder().uri(path).header("host", "127.0.0.1").header("x-api-key", KEY);
    if let Some(id) = last_event_id {
        b = b.header("last-event-id", id.to_string());
    }
    let resp = tx.send_request(b.body(http_body_util::Empty::<bytes::Bytes>::new()).expect("request")).await.expect("send");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    let (mut buf, mut events) = (String::new(), Vec::new());
    // Generous: a passing run never waits for it, and an emulated VM (the
    // cgroup-v2 run) is many times slower than a host.
    let deadline = Instant::now() + Duration::from_secs(90);
    while !done(&events) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "timed out with {events:?}");
        let Ok(Some(Ok(frame))) = tokio::time::timeout(left, body.frame()).await else { panic!("the stream ended or stalled with {events:?}") };
        if let Ok(d) = frame.into_data() {
            buf.push_str(&String::from_utf8_lossy(&d));
        }
        while let Some(end) = buf.find("\n\n") {
            let msg: String = buf.drain(..end + 2).collect();
            if let Some(data) = msg.lines().find_map(|l| l.strip_prefix("data: ")) {
                events.push(serde_json::from_str(data).expect("event JSON"));
            }
        }
    }
    events
}

pub(crate) fn kinds(events: &[Value], sid: &str) -> Vec<String> {
    events.iter().filter(|e| e["sandboxID"] == sid).map(|e| e["type"].as_str().unwrap_or_default().to_string()).collect()
}

#[tokio::test]
async fn a_sandbox_life_streams_in_order_and_resumes_across_a_crash() {
    let mut srv = Server::start(&["--no-network"]).await;
    let port = srv.port;
    let watch = tokio::spawn(read_events(port, "/events?metadata=run%3Devents-test", None, |e| e.iter().any(|e| e["type"] == "destroyed")));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let other = srv.create(json!({"templateID": "base", "timeout": 60, "allow_internet_access": false})).await;
    let sbx = srv.create(json!({"templateID": "base", "timeout": 60, "allow_internet_access": false, "metadata": {"run": "events-test"}})).await;
    let sid = sbx["sandboxID"].as_str().expect("id").to_string();
    for (method, path, body) in [
        ("POST", format!("/sandboxes/{sid}/pause"), json!({})),
        ("POST", format!("/sandboxes/{sid}/connect"), json!({"timeout": 120})),
        ("POST", format!("/sandboxes/{sid}/timeout"), json!({"timeout": 300})),
        ("DELETE", format!("/sandboxes/{sid}"), json!(null)),
    ] {
        let (s, v) = srv.api(method, &path, (!body.is_null()).then_some(body)).await;
        assert!((200..300).contains(&s), "{method} {path}: {s} {v}");
    }
    let seen = watch.await.expect("watcher");
    let want = ["created", "ready", "paused", "resumed", "timeout_changed", "killed", "destroyed"];
    assert_eq!(kinds(&seen, &sid), want, "{seen:?}");
    assert!(kinds(&seen, other["sandboxID"].as_str().expect("id")).is_empty(), "the metadata filter holds");
    let ids: Vec<i64> = seen.iter().map(|e| e["id"].as_i64().expect("id")).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");
    assert_eq!(seen[2]["data"]["memory"], true);

    // After a crash, resuming after `paused` gives the rest, nothing twice.
    srv.crash_and_restart().await;
    let paused_id = seen[2]["id"].as_i64().expect("id");
    let rest = read_events(srv.port, &format!("/sandboxes/{sid}/events"), Some(paused_id), |e| e.len() >= 4).await;
    assert_eq!(kinds(&rest, &sid), ["resumed", "timeout_changed", "killed", "destroyed"], "{rest:?}");
    // Type filters, and the query form of the resume point.
    let killed = read_events(srv.port, "/events?type=killed,destroyed&lastEventId=0", None, |e| kinds(e, &sid).len() >= 2).await;
    assert_eq!(kinds(&killed, &sid), ["killed", "destroyed"]);
    // Live events reach a stream opened after a restart.
    let live = tokio::spawn(read_events(srv.port, "/events?type=created", Some(ids[ids.len() - 1]), |e| !e.is_empty()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let late = srv.create(json!({"templateID": "base", "timeout": 60, "allow_internet_access": false})).await;
    let got = live.await.expect("live");
    assert!(got.iter().any(|e| e["sandboxID"] == late["sandboxID"]), "{got:?}");

    let (s, _, _) = srv.req("GET", "/events", &[("x-api-key", KEY), ("last-event-id", "yesterday")], Default::default()).await.expect("req");
    assert_eq!(s, 400);
    let (s, _, _) = srv.req("GET", "/sandboxes/nosuchsandbox0000000/events", &[("x-api-key", KEY)], Default::default()).await.expect("req");
    assert_eq!(s, 404);
}

/// A timeout of 0 is E2B's "this life ends now" (its schema allows 0, and
/// its API keeps the sandbox for no time): a create answers 201 and the
/// sandbox is then ended by its deadline, with a `timeout` event saying
/// so; a running sandbox given a timeout of 0 ends the same way, and one
/// created with autoPause is paused instead of killed.
#[tokio::test]
async fn a_timeout_of_zero_ends_the_sandbox_now_as_e2b_does() {
    let srv = Server::start(&["--no-network"]).await;
    let ended = |sid: String| {
        let port = srv.port;
        async move {
            let life = read_events(port, &format!("/sandboxes/{sid}/events"), Some(0), |e| e.iter().any(|e| e["type"] == "destroyed")).await;
            let k = kinds(&life, &sid);
            let t = life.iter().find(|e| e["type"] == "timeout").unwrap_or_else(|| panic!("a timeout event: {k:?}"));
            assert_eq!(t["data"]["action"], "kill", "{t}");
            assert!(k.iter().position(|x| x == "timeout") < k.iter().position(|x| x == "destroyed"), "{k:?}");
        }
    };
    let a = srv.create(json!({"templateID": "base", "timeout": 0})).await;
    let ida = a["sandboxID"].as_str().expect("id").to_string();
    ended(ida.clone()).await;
    assert_eq!(srv.api("GET", &format!("/sandboxes/{ida}"), None).await.0, 404);

    let b = srv.create(json!({"templateID": "base", "timeout": 300})).await;
    let idb = b["sandboxID"].as_str().expect("id").to_string();
    let (s, v) = srv.api("POST", &format!("/sandboxes/{idb}/timeout"), Some(json!({"timeout": 0}))).await;
    assert_eq!(s, 204, "{v}");
    ended(idb.clone()).await;

    let c = srv.create(json!({"templateID": "base", "timeout": 0, "autoPause": true})).await;
    let idc = c["sandboxID"].as_str().expect("id").to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (s, v) = srv.api("GET", &format!("/sandboxes/{idc}"), None).await;
        assert_eq!(s, 200, "an auto-paused sandbox stays: {v}");
        if v["state"] == "paused" {
            break;
        }
        assert!(Instant::now() < deadline, "still {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (s, v) = srv.api("POST", "/sandboxes", Some(json!({"templateID": "base", "timeout": -1}))).await;
    assert_eq!(s, 400, "{v}");
}
