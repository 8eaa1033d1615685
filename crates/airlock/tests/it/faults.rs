//! Fault injection: the server is SIGKILLed at varying points while
//! creates, uploads, snapshots, pauses and kills are in flight, then
//! restarted on the same data. Every operation it acknowledged must hold,
//! and nothing it did not finish may leak: no sandbox directory, process,
//! cgroup, slot or half-made layer without a sandbox the API shows.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

use crate::server::{Server, KEY};

/// One request on a fresh connection to `port`, not borrowing the server
/// (which the test kills meanwhile): (status, JSON) or why it failed.
async fn call(port: u16, method: &str, path: &str, headers: &[(&str, String)], body: Bytes) -> Result<(u16, Value), String> {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| e.to_string())?;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut b = http::Request::builder().method(method).uri(path).header("host", "127.0.0.1").header("x-api-key", KEY).header("content-type", "application/json");
    for (k, v) in headers {
        b = b.header(*k, v);
    }
    let resp = tx.send_request(b.body(Full::new(body)).map_err(|e| e.to_string())?).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((status, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
}

fn json_body(v: Value) -> Bytes {
    Bytes::from(serde_json::to_vec(&v).expect("json"))
}

fn dir_ids(data: &Path) -> BTreeSet<String> {
    std::fs::read_dir(data.join("sandboxes")).into_iter().flatten().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()
}

/// Slot files naming a sandbox of this data directory.
fn slot_ids(data: &Path) -> BTreeSet<String> {
    let root = data.canonicalize().unwrap_or_else(|_| data.to_path_buf());
    std::fs::read_dir(airlock_runtime::namespace::SLOTS_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|s| s.split_once('\n').filter(|(r, _)| Path::new(r) == root).map(|(_, id)| id.to_string()))
        .collect()
}

fn cgroup_exists(id: &str) -> bool {
    ["/sys/fs/cgroup/memory/airlock", "/sys/fs/cgroup/pids/airlock", "/sys/fs/cgroup/airlock"].iter().any(|r| Path::new(r).join(id).exists())
}

#[tokio::test]
async fn a_server_killed_mid_operation_keeps_what_it_acknowledged_and_leaks_nothing() {
    let mut srv = Server::start(&["--no-network"]).await;
    let off = json!({"templateID": "base", "timeout": 600, "allow_internet_access": false});
    for (round, delay_ms) in [0u64, 3, 8, 15, 25, 40, 70, 140].into_iter().enumerate() {
        // Sandboxes the in-flight operations act on.
        let up = srv.create(off.clone()).await;
        let snap_src = srv.create(off.clone()).await;
        let to_kill = srv.create(off.clone()).await;
        let to_pause = srv.create(off.clone()).await;
        let port = srv.port;
        let mut tasks = Vec::new();
        for _ in 0..3 {
            tasks.push((
                "create",
                tokio::spawn(
                    async move { call(port, "POST", "/v2/sandboxes", &[], json_body(json!({"templateID": "base", "timeout": 600, "allow_internet_access": false}))).await },
                ),
            ));
        }
        let (uid, utok) = (up["sandboxID"].as_str().expect("id").to_string(), up["envdAccessToken"].as_str().expect("token").to_string());
        let content = format!("round {round}: ").repeat(50_000);
        let c2 = content.clone();
        tasks.push((
            "upload",
            tokio::spawn(async move {
                let h = [("e2b-sandbox-id", uid), ("x-access-token", utok), ("content-type", "application/octet-stream".to_string())];
                call(port, "POST", "/files?path=/home/user/up.txt&username=user", &h, Bytes::from(c2)).await
            }),
        ));
        let sid = snap_src["sandboxID"].as_str().expect("id").to_string();
        tasks.push(("snapshot", tokio::spawn(async move { call(port, "POST", &format!("/sandboxes/{sid}/snapshots"), &[], json_body(json!({}))).await })));
        let kid = to_kill["sandboxID"].as_str().expect("id").to_string();
        tasks.push(("kill", tokio::spawn(async move { call(port, "DELETE", &format!("/sandboxes/{kid}"), &[], Bytes::new()).await })));
        let pid = to_pause["sandboxID"].as_str().expect("id").to_string();
        tasks.push(("pause", tokio::spawn(async move { call(port, "POST", &format!("/sandboxes/{pid}/pause"), &[], json_body(json!({"memory": false}))).await })));

        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        let _ = srv.child.kill();
        let _ = srv.child.wait();
        let on_disk_at_crash = dir_ids(&srv.data);
        let mut acked: Vec<(&str, Value)> = Vec::new();
        for (what, t) in tasks {
            if let Ok(Ok((s, v))) = t.await {
                if (200..300).contains(&s) {
                    acked.push((what, v));
                }
            }
        }
        srv.crash_and_restart().await;

        // What was acknowledged holds.
        for (what, v) in &acked {
            match *what {
                "create" => {
                    let (s, out) = srv.run(v, "echo alive").await;
                    assert_eq!((s, out.as_str()), (200, "alive\n"), "round {round}: an acknowledged create works after the crash");
                }
                "upload" => {
                    let (s, out) = srv.run(&up, "cat /home/user/up.txt").await;
                    assert_eq!(s, 200);
                    assert!(out == content, "round {round}: an acknowledged upload is whole ({} of {} bytes)", out.len(), content.len());
                }
                "snapshot" => {
                    let from = srv.create(json!({"templateID": v["snapshotID"], "timeout": 60, "allow_internet_access": false})).await;
                    assert_eq!(srv.run(&from, "echo from-snapshot").await.1, "from-snapshot\n", "round {round}");
                }
                "kill" => {
                    let (s, _) = srv.api("GET", &format!("/sandboxes/{}", to_kill["sandboxID"].as_str().expect("id")), None).await;
                    assert_eq!(s, 404, "round {round}: an acknowledged kill stays done");
                }
                "pause" => {
                    let (s, d) = srv.api("GET", &format!("/sandboxes/{}", to_pause["sandboxID"].as_str().expect("id")), None).await;
                    assert_eq!((s, d["state"].as_str()), (200, Some("paused")), "round {round}: an acknowledged pause stays: {d}");
                }
                _ => unreachable!(),
            }
        }
        // Everything the API shows works; everything else is gone.
        let (s, list) = srv.api("GET", "/v2/sandboxes?limit=100", None).await;
        assert_eq!(s, 200, "{list}");
        let shown: BTreeSet<String> = list.as_array().expect("list").iter().map(|d| d["sandboxID"].as_str().expect("id").to_string()).collect();
        for d in list.as_array().expect("list") {
            let sid = d["sandboxID"].as_str().expect("id");
            let (s, c) = srv.api("POST", &format!("/sandboxes/{sid}/connect"), Some(json!({"timeout": 600}))).await;
            assert!(s == 200 || s == 201, "round {round}: {sid} is listed but cannot be connected to: {c}");
            let out = srv.run(&c, "echo ok").await.1;
            if out != "ok\n" {
                let dir = srv.data.join("sandboxes").join(sid);
                let agent_log = std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default();
                let st = std::fs::read_to_string(dir.join("state.json")).unwrap_or_default();
                let again = srv.run(&c, "echo ok").await;
                panic!(
                    "round {round}: {sid} answers ({s}): {out}; was {d}; again: {again:?}; state.json {st}; agent.log:\n{agent_log}\nserver:\n{}",
                    srv.log().lines().filter(|l| l.contains(sid)).collect::<Vec<_>>().join("\n")
                );
            }
        }
        let dirs = dir_ids(&srv.data);
        let leaked: Vec<String> = dirs
            .difference(&shown)
            .map(|id| {
                let files: Vec<String> =
                    std::fs::read_dir(srv.data.join("sandboxes").join(id)).into_iter().flatten().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
                format!("{id}: {files:?}")
            })
            .collect();
        assert!(
            leaked.is_empty() && dirs.len() == shown.len(),
            "round {round}: a sandbox directory for every listed sandbox and no other; left: {leaked:?}; acknowledged: {:?}\n{}",
            acked.iter().map(|(w, _)| *w).collect::<Vec<_>>(),
            srv.log().lines().filter(|l| !l.contains("api request")).rev().take(30).collect::<Vec<_>>().join("\n")
        );
        assert_eq!(slot_ids(&srv.data), shown, "round {round}: a slot for every listed sandbox and no other");
        for lost in on_disk_at_crash.difference(&shown) {
            assert!(!cgroup_exists(lost), "round {round}: {lost} was undone but its cgroup is left");
        }
        let half_made: Vec<String> = std::fs::read_dir(srv.data.join("templates/layers"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(half_made.is_empty(), "round {round}: half-made layers left: {half_made:?}");
        for sid in &shown {
            srv.api("DELETE", &format!("/sandboxes/{sid}"), None).await;
        }
    }
}

/// A sandbox's PID 1 SIGKILLed from the host while an upload streams into
/// it through the server: that upload ends in an error (not a hang, and
/// never a 2xx for bytes that did not all land), the sandbox is recorded
/// dead and its directory, cgroup, slot and mounts go, and the other
/// sandbox takes an upload whole right after.
#[tokio::test]
async fn a_pid_1_killed_mid_upload_fails_that_upload_and_nothing_else() {
    let srv = Server::start(&["--no-network"]).await;
    let off = json!({"templateID": "base", "timeout": 300, "allow_internet_access": false});
    let victim = srv.create(off.clone()).await;
    let other = srv.create(off.clone()).await;
    let id_of = |v: &Value| v["sandboxID"].as_str().expect("id").to_string();
    let (vid, oid) = (id_of(&victim), id_of(&other));
    let st: Value = serde_json::from_slice(&std::fs::read(srv.data.join("sandboxes").join(&vid).join("state.json")).expect("state.json")).expect("json");
    let pid = st["pid"].as_i64().expect("pid") as i32;

    // 1 MiB now; the rest only once PID 1 is gone.
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let body =
        http_body_util::StreamBody::new(futures_util::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|c| (Ok::<_, std::io::Error>(hyper::body::Frame::data(c)), rx)) },
        ));
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", srv.port)).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("handshake");
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method("POST")
        .uri("/files?path=/home/user/big&username=user")
        .header("host", "127.0.0.1")
        .header("e2b-sandbox-id", &vid)
        .header("x-access-token", victim["envdAccessToken"].as_str().expect("token"))
        .header("content-type", "application/octet-stream")
        .body(body)
        .expect("request");
    let upload = tokio::spawn(async move {
        match sender.send_request(req).await {
            Ok(r) => {
                let s = r.status().as_u16();
                let _ = r.into_body().collect().await;
                Some(s)
            }
            Err(_) => None,
        }
    });
    tx.send(Bytes::from(vec![7u8; 1 << 20])).await.expect("first chunk");
    // The agent has started writing: the file exists inside.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (s, out) = srv.run(&victim, "stat -c %s /home/user/big 2>/dev/null || echo none").await;
        if s == 200 && out.trim() != "none" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the upload never reached the sandbox: {s} {out}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // SAFETY: kill(2) of the test's own sandbox's PID 1.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    tokio::spawn(async move {
        for _ in 0..63 {
            if tx.send(Bytes::from(vec![7u8; 1 << 20])).await.is_err() {
                break;
            }
        }
    });
    let status = tokio::time::timeout(Duration::from_secs(60), upload).await.expect("the upload must end, not hang").expect("join");
    eprintln!("the cut upload's answer: {status:?} (None: the connection was closed)");
    assert!(status.is_none_or(|s| s >= 500), "a cut upload is never acknowledged: {status:?}");

    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (s, v) = srv.api("GET", &format!("/sandboxes/{vid}"), None).await;
        if s == 404 {
            assert!(v["message"].as_str().unwrap_or("").contains("died at"), "{v}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{vid} was never noticed dead: {s} {v}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(!dir_ids(&srv.data).contains(&vid), "its directory is gone");
    assert!(!cgroup_exists(&vid), "its cgroup is gone");
    assert!(!slot_ids(&srv.data).contains(&vid), "its slot is free");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(!mounts.contains(&vid), "nothing of it is mounted");

    let (s, _, b) = srv
        .req(
            "POST",
            "/files?path=/home/user/f&username=user",
            &[("e2b-sandbox-id", &oid), ("x-access-token", other["envdAccessToken"].as_str().expect("token")), ("content-type", "application/octet-stream")],
            vec![9u8; 4 << 20].into(),
        )
        .await
        .expect("upload");
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&b));
    let (s, out) = srv.run(&other, "stat -c %s /home/user/f").await;
    assert_eq!((s, out.trim()), (200, "4194304"));
}
