//! Volumes through the real server: files that outlive sandboxes, a server
//! crash and a host reboot (processes gone, the volume's mount gone), a
//! restarted sandbox that keeps its mount, deletes refused while mounted,
//! and size limits that refuse a too-large upload without leaving a file.

use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value};

use crate::server::{Server, KEY};

async fn create_volume(srv: &Server, name: &str, mb: u64) -> Value {
    let (s, v) = srv.api("POST", "/volumes", Some(json!({"name": name, "sizeMB": mb}))).await;
    assert_eq!(s, 201, "create volume: {v}");
    v
}

async fn upload(srv: &Server, id: &str, path: &str, body: Bytes) -> (u16, Value) {
    let (s, _, b) =
        srv.req("PUT", &format!("/volumes/{id}/files/upload?path={path}"), &[("x-api-key", KEY), ("content-type", "application/octet-stream")], body).await.expect("upload");
    (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
}

async fn download(srv: &Server, id: &str, path: &str) -> (u16, Bytes) {
    let (s, _, b) = srv.req("GET", &format!("/volumes/{id}/files/download?path={path}"), &[("x-api-key", KEY)], Bytes::new()).await.expect("download");
    (s, b)
}

fn mounted(p: &std::path::Path) -> bool {
    let p = p.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo").lines().any(|l| l.split_whitespace().nth(4) == Some(p.as_str()))
}

#[tokio::test]
async fn volumes_outlive_sandboxes_a_server_crash_and_a_reboot() {
    let mut srv = Server::start(&[]).await;
    let vol = create_volume(&srv, "keep", 64).await;
    let vid = vol["volumeID"].as_str().expect("id").to_string();
    let data = srv.data.join("volumes").join(&vid).join("data");
    let enforced = vol["limitEnforced"].as_bool().expect("flag");
    assert_eq!(enforced, mounted(&data), "an enforced volume is its own mounted filesystem");

    let sbx = srv.create(json!({"templateID": "base", "timeout": 600, "volumeMounts": [{"name": "keep", "path": "/mnt/v"}]})).await;
    let sid = sbx["sandboxID"].as_str().expect("id").to_string();
    let (_, out) = srv.run(&sbx, "setpriv --reuid 1000 --regid 1000 --keep-groups bash -c 'echo one > /mnt/v/f && stat -c %U /mnt/v/f' 2>&1").await;
    assert_eq!(out, "user\n", "the sandbox's user writes the volume");
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(data.join("f")).expect("on the host");
    assert_eq!((md.uid(), md.gid()), (1000, 1000), "canonical ids on disk");

    // A server crash leaves volume and sandbox as they were.
    srv.crash_and_restart().await;
    assert_eq!(srv.run(&sbx, "cat /mnt/v/f").await.1, "one\n");
    let (s, v) = srv.api("DELETE", &format!("/volumes/{vid}"), None).await;
    assert_eq!(s, 409, "mounted: {v}");
    assert!(v["message"].as_str().expect("msg").contains(&sid), "{v}");

    // A host reboot: the sandbox's processes and the volume's mount are gone.
    let pid: u32 = {
        let st: Value = serde_json::from_slice(&std::fs::read(srv.data.join("sandboxes").join(&sid).join("state.json")).expect("state")).expect("json");
        st["pid"].as_u64().expect("pid") as u32
    };
    // SAFETY: killing the sandbox's PID 1, which takes its pid namespace down.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let gone = Instant::now() + Duration::from_secs(5);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < gone {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // SAFETY: killing our own child server.
    unsafe { libc::kill(srv.child.id() as i32, libc::SIGKILL) };
    let _ = srv.child.wait();
    if enforced {
        let c = std::ffi::CString::new(data.to_string_lossy().as_bytes()).expect("path");
        // SAFETY: umount2 with a NUL-terminated path.
        assert_eq!(unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) }, 0, "unmount the volume as a reboot would");
        assert!(!mounted(&data));
    }
    srv.crash_and_restart().await;
    assert_eq!(enforced, mounted(&data), "the server mounts the volume again at start");
    let (s, b) = download(&srv, &vid, "/f").await;
    assert_eq!((s, &b[..]), (200, &b"one\n"[..]));
    // The sandbox restarts over its files, with its volume.
    let (s, v) = srv.api("POST", &format!("/v2/sandboxes/{sid}/connect"), Some(json!({"timeout": 60}))).await;
    assert_eq!(s, 201, "connect restarts it: {v}");
    let (_, out) = srv.run(&sbx, "cat /mnt/v/f; echo two >> /mnt/v/f").await;
    assert_eq!(out, "one\n");

    // A second sandbox shares it, and sees the first one's writes at once.
    let other = srv.create(json!({"templateID": "base", "timeout": 600, "volumeMounts": [{"name": vid, "path": "/data/shared"}]})).await;
    assert_eq!(srv.run(&other, "cat /data/shared/f").await.1, "one\ntwo\n");

    for s in [&sbx, &other] {
        let (st, _) = srv.api("DELETE", &format!("/sandboxes/{}", s["sandboxID"].as_str().expect("id")), None).await;
        assert_eq!(st, 204);
    }
    let (s, _) = srv.api("DELETE", &format!("/volumes/{vid}"), None).await;
    assert_eq!(s, 204);
    assert!(!mounted(&data) && !srv.data.join("volumes").join(&vid).exists(), "nothing of it left");
    assert_eq!(srv.api("GET", &format!("/volumes/{vid}"), None).await.0, 404);
}

#[tokio::test]
async fn an_upload_past_the_limit_is_refused_and_leaves_no_file() {
    let srv = Server::start(&[]).await;
    let vol = create_volume(&srv, "small", 16).await;
    let vid = vol["volumeID"].as_str().expect("id").to_string();
    let (s, v) = upload(&srv, &vid, "/ok.bin", Bytes::from(vec![7u8; 1 << 20])).await;
    assert_eq!((s, v["size"].as_u64()), (201, Some(1 << 20)), "{v}");
    if !vol["limitEnforced"].as_bool().expect("flag") {
        eprintln!("no loop devices here: the limit is not enforced, nothing more to check");
        return;
    }
    let (s, v) = upload(&srv, &vid, "/big.bin", Bytes::from(vec![1u8; 20 << 20])).await;
    assert_eq!(s, 413, "{v}");
    assert!(v["message"].as_str().expect("msg").contains("16 MiB"), "{v}");
    let (_, list) = srv.api("GET", &format!("/volumes/{vid}/files?path=/"), None).await;
    let names: Vec<&str> = list["files"].as_array().expect("files").iter().filter_map(|f| f["name"].as_str()).collect();
    assert_eq!(names, vec!["ok.bin"], "no partial file, no temporary left behind");
    assert_eq!(download(&srv, &vid, "/ok.bin").await.1.len(), 1 << 20);
    // Sizes outside the configured range are refused.
    let (s, _) = srv.api("POST", "/volumes", Some(json!({"name": "tiny", "sizeMB": 1}))).await;
    assert_eq!(s, 400);
}

#[tokio::test]
async fn paths_that_escape_are_refused() {
    let srv = Server::start(&[]).await;
    let vol = create_volume(&srv, "esc", 16).await;
    let vid = vol["volumeID"].as_str().expect("id").to_string();
    for p in ["/../etc/passwd", "/a/../../etc/passwd", "..%2Fetc"] {
        let (s, _) = download(&srv, &vid, p).await;
        assert_eq!(s, 400, "{p}");
        let (s, _) = upload(&srv, &vid, p, Bytes::from_static(b"x")).await;
        assert_eq!(s, 400, "{p}");
    }
    let tok = vol["token"].as_str().expect("token");
    let auth = format!("Bearer {tok}");
    let (s, _, _) = srv.req("GET", &format!("/volumecontent/{vid}/file?path=/../../etc/passwd"), &[("authorization", &auth)], Bytes::new()).await.expect("req");
    assert_eq!(s, 400);
    let (s, _, _) = srv.req("GET", &format!("/volumecontent/{vid}/dir?path=/"), &[("x-api-key", KEY)], Bytes::new()).await.expect("req");
    assert_eq!(s, 401, "the content API takes the volume's token, not the API key");
    // Mount paths.
    for p in ["/", "/proc", "/etc", "/mnt/../etc", "rel"] {
        let (s, v) = srv.api("POST", "/v2/sandboxes", Some(json!({"templateID": "base", "volumeMounts": [{"name": "esc", "path": p}]}))).await;
        assert_eq!(s, 400, "{p}: {v}");
    }
    let (s, _) = srv.api("POST", "/sandboxes", Some(json!({"templateID": "base", "volumeId": vid, "volumeMountPath": "/tmp/x"}))).await;
    assert_eq!(s, 400, "Moru's prefixes");
}
