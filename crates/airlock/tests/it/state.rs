//! Snapshots, forks and the filesystem-only pause at the edges the SDK
//! tests do not reach: a disk that fills up mid-snapshot, what a stopped
//! sandbox still holds on the host, layer collection, and chains of
//! snapshots of snapshots.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::server::Server;

fn id(v: &Value) -> String {
    v["sandboxID"].as_str().expect("sandboxID").to_string()
}

/// Layer directories taken of sandboxes, and half-made ones.
fn snapshot_layers(data: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(data.join("templates/layers"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("snap-") || n.starts_with(".snap-") || n.starts_with(".export-"))
        .collect();
    v.sort();
    v
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A small ext4 filesystem on a loop device, unmounted when dropped (after
/// the server using it); the directory it sits in goes with it. Not a
/// tmpfs: before Linux 6.3 a tmpfs cannot be idmapped, and the server
/// refuses a data directory its layers cannot be mounted from.
struct SmallFs(PathBuf, #[allow(dead_code)] tempfile::TempDir);

impl SmallFs {
    fn new(mb: u64) -> Self {
        let t = tempfile::Builder::new().prefix("airlock-smallfs-").tempdir().expect("tmp");
        let (img, p) = (t.path().join("disk.img"), t.path().join("data"));
        std::fs::create_dir(&p).expect("mkdir");
        // No blocks reserved for root: the server runs as root, and the
        // disk must be full for it too.
        let st = std::process::Command::new("mkfs.ext4").args(["-q", "-F", "-m", "0"]).arg(&img).arg(format!("{mb}M")).status().expect("mkfs.ext4");
        assert!(st.success(), "making an ext4 image");
        let st = std::process::Command::new("mount").args(["-o", "loop"]).arg(&img).arg(&p).status().expect("mount");
        assert!(st.success(), "mounting the ext4 image");
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o700)).expect("chmod");
        Self(p, t)
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test]
async fn a_snapshot_that_fills_the_disk_fails_cleanly_and_harms_nothing() {
    let fs = SmallFs::new(160);
    let srv = Server::start_at(&fs.0, &["--default-disk-mb", "0", "--no-network"]).await;
    let sbx = srv.create(json!({"templateID": "base", "timeout": 300, "allow_internet_access": false})).await;
    let sid = id(&sbx);
    // 100 MiB of real blocks: the copy needs as much again, the disk has ~60 left.
    let (_, out) = srv.run(&sbx, "head -c 100M /dev/urandom > /home/user/big && sha256sum /home/user/big | cut -c1-64").await;
    let sum = out.trim().to_string();
    assert_eq!(sum.len(), 64, "{out}");
    let (s, v) = srv.api("POST", &format!("/sandboxes/{sid}/snapshots"), Some(json!({}))).await;
    assert_eq!(s, 507, "a full disk is its own error: {v}");
    assert!(v["message"].as_str().unwrap_or("").contains("disk is full"), "{v}");
    assert_eq!(snapshot_layers(&fs.0), Vec::<String>::new(), "no half snapshot is left behind");
    let (s, list) = srv.api("GET", "/snapshots", None).await;
    assert_eq!((s, list.as_array().map(Vec::len)), (200, Some(0)), "{list}");
    // The source runs on, thawed, its files whole.
    let (_, out) = srv.run(&sbx, "sha256sum /home/user/big | cut -c1-64").await;
    assert_eq!(out.trim(), sum);
    let (s, v) = srv.api("GET", &format!("/sandboxes/{sid}"), None).await;
    assert_eq!((s, v["state"].as_str()), (200, Some("running")));
    // Forks hit the same wall, and say so.
    let (s, v) = srv.api("POST", &format!("/sandboxes/{sid}/fork"), Some(json!({"count": 2}))).await;
    assert_eq!(s, 507, "{v}");
    // With room again, the same snapshot works.
    srv.run(&sbx, "rm /home/user/big; echo small > /home/user/small").await;
    let (s, v) = srv.api("POST", &format!("/sandboxes/{sid}/snapshots"), Some(json!({}))).await;
    assert_eq!(s, 201, "{v}");
    srv.api("DELETE", &format!("/sandboxes/{sid}"), None).await;
}

#[tokio::test]
async fn a_filesystem_paused_sandbox_holds_no_process_cgroup_or_disk_mount() {
    let srv = Server::start(&[]).await;
    let sbx = srv.create(json!({"templateID": "base", "timeout": 300, "diskMB": 64})).await;
    let sid = id(&sbx);
    srv.run(&sbx, "echo kept > /home/user/f; (sleep 1000 &)").await;
    let dir = srv.data.join("sandboxes").join(&sid);
    let mounted = |p: &Path| std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default().lines().any(|l| l.split_whitespace().nth(4) == Some(&*p.to_string_lossy()));
    let cgroups = || -> Vec<PathBuf> {
        ["/sys/fs/cgroup/memory/airlock", "/sys/fs/cgroup/pids/airlock", "/sys/fs/cgroup/airlock"].iter().map(|r| Path::new(r).join(&sid)).filter(|p| p.exists()).collect()
    };
    assert!(mounted(&dir.join("upper")), "a running sandbox's disk is mounted");
    assert!(!cgroups().is_empty());
    let (s, v) = srv.api("POST", &format!("/sandboxes/{sid}/pause"), Some(json!({"memory": false}))).await;
    assert_eq!(s, 204, "{v}");
    assert_eq!(cgroups(), Vec::<PathBuf>::new(), "no cgroup: no memory charged");
    assert!(!mounted(&dir.join("upper")), "the disk image is detached (no loop device held)");
    let (s, v) = srv.api("GET", &format!("/sandboxes/{sid}/metrics"), None).await;
    assert_eq!(s, 200, "{v}");
    // Sandbox traffic to a stopped sandbox is refused, not hung.
    let (s, _) = srv.run(&sbx, "true").await;
    assert_ne!(s, 200);
    let (s, v) = srv.api("POST", &format!("/sandboxes/{sid}/connect"), Some(json!({"timeout": 60}))).await;
    assert_eq!(s, 201, "{v}");
    let (_, out) = srv.run(&sbx, "cat /home/user/f; pgrep -c sleep || true").await;
    assert_eq!(out, "kept\n0\n");
    // A snapshot of a stopped sandbox works too (its disk mounted for the copy).
    srv.api("POST", &format!("/sandboxes/{sid}/pause"), Some(json!({"memory": false}))).await;
    let (s, v) = srv.api("POST", &format!("/sandboxes/{sid}/snapshots"), Some(json!({}))).await;
    assert_eq!(s, 201, "{v}");
    assert!(!mounted(&dir.join("upper")), "and detached again");
    let from = srv.create(json!({"templateID": v["snapshotID"], "timeout": 60})).await;
    let (_, out) = srv.run(&from, "cat /home/user/f").await;
    assert_eq!(out, "kept\n");
}

#[tokio::test]
async fn snapshot_layers_live_exactly_as_long_as_something_uses_them() {
    let srv = Server::start(&[]).await;
    let sbx = srv.create(json!({"templateID": "base", "timeout": 300})).await;
    let sid = id(&sbx);
    srv.run(&sbx, "echo 1 > /home/user/g").await;
    let (s, forks) = srv.api("POST", &format!("/sandboxes/{sid}/fork"), Some(json!({"count": 2, "timeout": 120}))).await;
    assert_eq!(s, 201, "{forks}");
    let forks: Vec<String> = forks.as_array().expect("list").iter().map(|f| id(&f["sandbox"])).collect();
    assert_eq!(snapshot_layers(&srv.data).len(), 1, "one layer for all the forks");
    let (s, snap) = srv.api("POST", &format!("/sandboxes/{sid}/snapshots"), Some(json!({}))).await;
    assert_eq!(s, 201, "{snap}");
    let snap_id = snap["snapshotID"].as_str().expect("id").to_string();
    assert_eq!(snapshot_layers(&srv.data).len(), 2);
    srv.api("DELETE", &format!("/sandboxes/{}", forks[0]), None).await;
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(snapshot_layers(&srv.data).len(), 2, "the other fork still runs on it");
    srv.api("DELETE", &format!("/sandboxes/{}", forks[1]), None).await;
    wait_for("the forks' layer to go", || snapshot_layers(&srv.data).len() == 1);
    // The snapshot's own layer stays while the snapshot exists, even with its
    // source killed, and goes with it.
    srv.api("DELETE", &format!("/sandboxes/{sid}"), None).await;
    let from = srv.create(json!({"templateID": snap_id, "timeout": 60})).await;
    let (s, v) = srv.api("DELETE", &format!("/templates/{}", snap_id.replace(':', "%3A")), None).await;
    assert_eq!(s, 409, "in use by a sandbox: {v}");
    srv.api("DELETE", &format!("/sandboxes/{}", id(&from)), None).await;
    let (s, v) = srv.api("DELETE", &format!("/templates/{}", snap_id.replace(':', "%3A")), None).await;
    assert_eq!(s, 204, "{v}");
    wait_for("the snapshot's layer to go", || snapshot_layers(&srv.data).is_empty());
    // Garbage collection never touches the template it came from.
    let from = srv.create(json!({"templateID": "base", "timeout": 60})).await;
    let (_, out) = srv.run(&from, "echo fine").await;
    assert_eq!(out, "fine\n");
}

#[tokio::test]
async fn snapshots_of_snapshots_stack_and_each_generation_sees_the_last() {
    let srv = Server::start(&[]).await;
    let mut cur = srv.create(json!({"templateID": "base", "timeout": 300})).await;
    let mut snaps = Vec::new();
    for g in 0..8 {
        // Each generation adds a file, changes one and deletes one.
        let rm = if g > 0 { format!("rm /home/user/gen{}", g - 1) } else { String::new() };
        srv.run(&cur, &format!("echo {g} > /home/user/gen{g}; echo {g} > /home/user/latest; {rm}")).await;
        let (s, snap) = srv.api("POST", &format!("/sandboxes/{}/snapshots", id(&cur)), Some(json!({}))).await;
        assert_eq!(s, 201, "{snap}");
        snaps.push(snap["snapshotID"].as_str().expect("id").to_string());
        srv.api("DELETE", &format!("/sandboxes/{}", id(&cur)), None).await;
        cur = srv.create(json!({"templateID": snap["snapshotID"], "timeout": 300})).await;
    }
    let (_, out) = srv.run(&cur, "ls /home/user | tr '\\n' ' '; cat /home/user/latest").await;
    assert_eq!(out, "gen7 latest 7\n", "only the last generation's file is left");
    let (s, v) = srv.api("GET", &format!("/templates/{}", snaps[7].replace(':', "%3A")), None).await;
    assert_eq!((s, v["layers"].as_u64()), (200, Some(10)), "base's two layers and one per generation: {v}");
    // A snapshot with snapshots stacked on it cannot be deleted from under them.
    let (s, v) = srv.api("DELETE", &format!("/templates/{}", snaps[3].replace(':', "%3A")), None).await;
    assert_eq!(s, 409, "{v}");
    assert!(v["message"].as_str().unwrap_or("").contains("snapshot"), "{v}");
}

/// Hardening: a sandbox that filled the data disk once took every agent and
/// the store down with it. Now the one that filled it gets the errors, the
/// rest keep working (reads, their agents, their state changes), new work
/// is refused with 507, and everything recovers once there is room.
#[tokio::test]
async fn a_full_data_disk_is_an_error_for_what_filled_it_and_nobody_else() {
    let fs = SmallFs::new(200);
    let srv = Server::start_at(&fs.0, &["--default-disk-mb", "0", "--no-network"]).await;
    let off = json!({"templateID": "base", "timeout": 300, "allow_internet_access": false});
    let filler = srv.create(off.clone()).await;
    let bystander = srv.create(off.clone()).await;
    let (fid, bid) = (id(&filler), id(&bystander));
    srv.run(&bystander, "echo precious > /home/user/keep").await;
    wait_for("the data disk's reserve", || fs.0.join(".disk-reserve").exists());

    let (_, out) = srv.run(&filler, "head -c 400M /dev/zero 2>&1 > /home/user/fill; echo rc=$?").await;
    assert!(out.contains("No space left") && !out.contains("rc=0"), "the writer is told: {out}");

    // The bystander's agent lives and its files read back.
    let (s, out) = srv.run(&bystander, "cat /home/user/keep").await;
    assert_eq!((s, out.as_str()), (200, "precious\n"));
    // A write of its own fails cleanly: 507, the SDKs' NotEnoughSpaceException.
    let tok = bystander["envdAccessToken"].as_str().expect("token");
    let (s, _, body) = srv
        .req(
            "POST",
            "/files?path=/home/user/more&username=user",
            &[("e2b-sandbox-id", &bid), ("x-access-token", tok), ("content-type", "application/octet-stream")],
            vec![7u8; 8 << 20].into(),
        )
        .await
        .expect("upload");
    assert_eq!(s, 507, "{}", String::from_utf8_lossy(&body));
    // State changes of existing sandboxes are still recorded.
    let (s, v) = srv.api("POST", &format!("/sandboxes/{bid}/timeout"), Some(json!({"timeout": 600}))).await;
    assert_eq!(s, 204, "{v}");
    let (s, v) = srv.api("POST", &format!("/sandboxes/{bid}/pause"), Some(json!({}))).await;
    assert_eq!(s, 204, "{v}");
    let (s, v) = srv.api("POST", &format!("/sandboxes/{bid}/connect"), Some(json!({"timeout": 600}))).await;
    assert_eq!(s, 201, "{v}");
    // New work is refused, with the reason.
    let (s, v) = srv.api("POST", "/v2/sandboxes", Some(off.clone())).await;
    assert_eq!(s, 507, "{v}");
    assert!(v["message"].as_str().unwrap_or("").contains("disk space"), "{v}");
    let (s, v) = srv.api("POST", &format!("/sandboxes/{bid}/snapshots"), Some(json!({}))).await;
    assert_eq!(s, 507, "{v}");

    // Room again: everything works, and nothing was lost.
    let (s, _) = srv.run(&filler, "rm /home/user/fill").await;
    assert_eq!(s, 200, "the filler's agent survived too");
    let deadline = Instant::now() + Duration::from_secs(20);
    let third = loop {
        let (s, v) = srv.api("POST", "/v2/sandboxes", Some(off.clone())).await;
        if s == 201 {
            break v;
        }
        assert!(Instant::now() < deadline, "creates never came back: {s} {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(srv.run(&third, "echo up").await.1, "up\n");
    assert_eq!(srv.run(&bystander, "cat /home/user/keep").await.1, "precious\n");
    let (s, list) = srv.api("GET", "/v2/sandboxes", None).await;
    assert_eq!((s, list.as_array().map(Vec::len)), (200, Some(3)), "{list}");
    wait_for("the reserve to be taken again", || fs.0.join(".disk-reserve").exists());
    for sbx in [&fid, &bid, &id(&third)] {
        srv.api("DELETE", &format!("/sandboxes/{sbx}"), None).await;
    }
}

/// Hardening: a sandbox whose PID 1 died (the OOM killer, a kill from the
/// host) was cleaned up and then only 404. Now it says why.
#[tokio::test]
async fn a_sandbox_whose_pid_1_died_says_why() {
    let srv = Server::start(&["--no-network"]).await;
    let off = json!({"templateID": "base", "timeout": 300, "allow_internet_access": false, "memoryMB": 64});
    let shot = srv.create(off.clone()).await;
    let starved = srv.create(off.clone()).await;
    let pid_of = |sbx: &Value| -> i32 {
        let st: Value = serde_json::from_slice(&std::fs::read(srv.data.join("sandboxes").join(id(sbx)).join("state.json")).expect("state.json")).expect("json");
        st["pid"].as_i64().expect("pid") as i32
    };
    // SAFETY: kill(2) of the test's own sandbox's PID 1.
    assert_eq!(unsafe { libc::kill(pid_of(&shot), libc::SIGKILL) }, 0);
    // Run out of memory with PID 1 the OOM killer's first choice: the
    // memory goes to a tmpfs file, which no process's size counts, and PID
    // 1's score is raised from the host (lowering others' would need
    // CAP_SYS_RESOURCE, which root here may lack).
    std::fs::write(format!("/proc/{}/oom_score_adj", pid_of(&starved)), "1000").expect("oom_score_adj");
    let payload = serde_json::to_vec(&json!({"process": {"cmd": "/bin/bash", "args": ["-c", "head -c 100M /dev/zero > /dev/shm/fill"]}})).expect("json");
    let tok = starved["envdAccessToken"].as_str().expect("token");
    let sid = id(&starved);
    let headers = [("e2b-sandbox-id", sid.as_str()), ("x-access-token", tok), ("content-type", "application/connect+json")];
    // The stream breaks when PID 1 goes: that is the point.
    let _ = srv.req("POST", "/process.Process/Start", &headers, airlock_proto::connect::envelope(0, &payload)).await;
    for (sbx, cause) in [(&shot, "exited or was killed"), (&starved, "out of memory")] {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (s, v) = srv.api("GET", &format!("/sandboxes/{}", id(sbx)), None).await;
            if s == 404 {
                let m = v["message"].as_str().unwrap_or("").to_string();
                assert!(m.contains("died at") && m.contains(cause), "{m}");
                break;
            }
            assert!(Instant::now() < deadline, "{} was never noticed dead: {s} {v}", id(sbx));
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    let (s, list) = srv.api("GET", "/v2/sandboxes?state=dead", None).await;
    assert_eq!(s, 200, "{list}");
    let listed = list.as_array().expect("list");
    assert_eq!(listed.len(), 2, "{list}");
    assert!(listed.iter().all(|d| d["state"] == "dead" && d["death"].is_string()), "{list}");
    let (s, v) = srv.api("GET", "/v2/sandboxes", None).await;
    assert_eq!((s, v.as_array().map(Vec::len)), (200, Some(0)), "not in the default list: {v}");
    let (s, _) = srv.run(&shot, "true").await;
    assert_ne!(s, 200);
    assert!(!srv.data.join("sandboxes").join(id(&shot)).exists(), "its resources are gone");
    let (s, _) = srv.api("DELETE", &format!("/sandboxes/{}", id(&shot)), None).await;
    assert_eq!(s, 204, "killing a dead one forgets it");
    let (s, v) = srv.api("GET", &format!("/sandboxes/{}", id(&shot)), None).await;
    assert!(s == 404 && !v["message"].as_str().unwrap_or("").contains("died"), "{v}");
}
