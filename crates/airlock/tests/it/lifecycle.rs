//! Creating, finding, freezing and destroying sandboxes.

use airlock_runtime::Backend;
use airlock_testkit::envd::*;

use crate::support::*;

#[tokio::test]
async fn create_run_and_destroy_leaves_nothing_behind() {
    let h = harness();
    let sbx = Sandbox::new();
    let r = sbx.sh("echo hello; echo oops >&2; exit 3").await;
    assert_eq!(r.stdout, "hello\n");
    assert_eq!(r.stderr, "oops\n");
    assert_eq!(r.exit_code, 3);
    assert_eq!(r.end["status"], "exit status 3");
    let id = sbx.id().to_string();
    let info = h.backend.get(&id).expect("found");
    let slot = slot_of(&id);
    let veth = format!("/sys/class/net/alk{slot}");
    let slot_file = std::path::Path::new(airlock_runtime::namespace::SLOTS_DIR).join(slot.to_string());
    assert!(std::fs::read_to_string(&slot_file).expect("host-wide slot file").ends_with(&format!("\n{id}")), "the slot is reserved host-wide");
    assert!(std::path::Path::new(&veth).exists(), "veth {veth} exists while running");
    drop(sbx);
    assert!(h.backend.get(&id).is_err(), "gone after destroy");
    assert!(!h.root.join("sandboxes").join(&id).exists(), "directory removed");
    // The veth goes with the network namespace, which the kernel tears
    // down in the background, and the slot is freed after it (never
    // before: its addresses are the slot's), within a few seconds.
    let ours = || std::fs::read_to_string(&slot_file).map(|s| s.ends_with(&format!("\n{id}"))).unwrap_or(false);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (veth_there, slot_held) = (std::path::Path::new(&veth).exists(), ours());
        assert!(!veth_there || slot_held, "the slot was freed while its veth {veth} still exists");
        if !veth_there && !slot_held {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "veth {veth} removed ({}) and slot released ({}) in time", !veth_there, !slot_held);
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // Dead: gone, or a zombie the host's init has not collected yet.
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", info.pid)).unwrap_or_default();
    let state = stat.rsplit_once(") ").and_then(|(_, rest)| rest.split_whitespace().next()).unwrap_or("gone");
    assert!(stat.is_empty() || !stat.contains("airlock") || state == "Z", "PID 1 is dead, got state {state}: {stat}");
    for c in ["memory", "pids", "freezer", "cpu"] {
        let v1 = format!("/sys/fs/cgroup/{c}/airlock/{id}");
        assert!(!std::path::Path::new(&v1).exists(), "cgroup {v1} removed");
    }
    assert!(!std::path::Path::new(&format!("/sys/fs/cgroup/airlock/{id}")).exists());
}

#[tokio::test]
async fn health_answers_204() {
    let sbx = Sandbox::new();
    let r = sbx.envd.request("GET", "/health", &[], "").await;
    assert_eq!(r.status, 204);
}

#[tokio::test]
async fn sandbox_outlives_its_creator_and_is_found_again() {
    // Create with the CLI in a separate process that then exits: the
    // sandbox must keep running and be found by this process.
    let h = harness();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_airlock")).args(["runtime", "create", "--data-dir"]).arg(&h.root).output().expect("run cli");
    assert!(out.status.success(), "cli create: {}", String::from_utf8_lossy(&out.stderr));
    let id = String::from_utf8_lossy(&out.stdout).split('\t').next().expect("id").to_string();
    let info = h.backend.get(&id).expect("found after creator exited");
    assert!(h.backend.list().expect("list").iter().any(|s| s.id == id));
    let envd = Envd { socket: info.socket.clone(), token: None, user: None };
    assert_eq!(envd.run("echo alive").await.stdout, "alive\n");
    h.backend.destroy(&id).expect("destroy");
}

#[tokio::test]
async fn freeze_stops_the_clock_and_thaw_resumes() {
    let h = harness();
    let sbx = Sandbox::new();
    let mut s = sbx
        .envd
        .stream("process.Process", "Start", serde_json::json!({"process": {"cmd": "/bin/bash", "args": ["-c", "while true; do date +%s%N; sleep 0.05; done"]}, "stdin": false}))
        .await;
    s.next_event().await.expect("start");
    s.next_event().await.expect("first output");
    h.backend.freeze(sbx.id()).expect("freeze");
    assert!(h.backend.get(sbx.id()).expect("get").frozen);
    // While frozen, no output arrives (keepalives may).
    let quiet = tokio::time::timeout(std::time::Duration::from_millis(600), async {
        loop {
            let m = s.next().await.expect("stream open");
            if m["event"].get("data").is_some() {
                return m;
            }
        }
    })
    .await;
    assert!(quiet.is_err(), "no output while frozen: {quiet:?}");
    h.backend.thaw(sbx.id()).expect("thaw");
    assert!(!h.backend.get(sbx.id()).expect("get").frozen);
    let m = tokio::time::timeout(std::time::Duration::from_secs(5), s.next_event()).await.expect("output resumes");
    assert!(m.expect("event")["event"].get("data").is_some());
}

#[tokio::test]
async fn unknown_ids_and_bad_specs_are_errors() {
    let h = harness();
    assert!(matches!(h.backend.get("nosuchsandbox"), Err(airlock_runtime::Error::NotFound(_))));
    assert!(matches!(h.backend.get("../etc"), Err(airlock_runtime::Error::NotFound(_))));
    assert!(matches!(h.backend.destroy("nosuchsandbox"), Err(airlock_runtime::Error::NotFound(_))));
    let mut spec = airlock_runtime::SandboxSpec::new("Bad-Id", h.base.clone());
    assert!(matches!(h.backend.create(&spec), Err(airlock_runtime::Error::InvalidSpec(_))));
    // The backend takes layers: no layers is a bad spec, and so is a layer
    // that does not exist.
    spec.id = new_id();
    spec.rootfs.root_layers.clear();
    assert!(matches!(h.backend.create(&spec), Err(airlock_runtime::Error::InvalidSpec(_))));
    assert!(!h.root.join("sandboxes").join(&spec.id).exists(), "failed create cleans up");
    spec.id = new_id();
    spec.rootfs.root_layers = vec![h.root.join("templates/layers/no-such-layer")];
    assert!(h.backend.create(&spec).is_err());
    assert!(!h.root.join("sandboxes").join(&spec.id).exists(), "failed create cleans up");
}

/// Regression: slots (host uid ranges, /30s, interface names) were counted
/// per data directory, so a second backend beside a running one handed out
/// the same ones: sandboxes of two servers could share host uids.
#[tokio::test]
async fn two_backends_on_one_host_never_share_a_slot() {
    let h = harness();
    let tmp = tempfile::Builder::new().prefix("airlock-second-").tempdir().expect("tmp");
    let second = airlock_runtime::NamespaceBackend::new(airlock_runtime::namespace::Options {
        root: tmp.path().to_path_buf(),
        binary: std::path::PathBuf::from(env!("CARGO_BIN_EXE_airlock")),
        network: true,
    })
    .expect("second backend");
    // The same ids in both: slot search starts where the id hashes to, so
    // per-data-directory slots would give each pair the same one.
    let mut ids = Vec::new();
    for i in 0..6 {
        let id = if i % 2 == 0 { new_id() } else { ids.last().map(|(_, id): &(usize, String)| id.clone()).expect("previous id") };
        let b: &dyn Backend = if i % 2 == 0 { &h.backend } else { &second };
        let mut spec = airlock_runtime::SandboxSpec::new(id, h.base.clone());
        spec.internet = i < 2;
        b.create(&spec).expect("create");
        ids.push((i % 2, spec.id));
    }
    let base_of = |root: &std::path::Path, id: &str| -> u64 {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(root.join("sandboxes").join(id).join("launch.json")).expect("launch.json")).expect("json");
        v["id_base"].as_u64().expect("id_base")
    };
    let bases: Vec<u64> = ids.iter().map(|(which, id)| base_of(if *which == 0 { &h.root } else { tmp.path() }, id)).collect();
    let unique: std::collections::BTreeSet<u64> = bases.iter().copied().collect();
    assert_eq!(unique.len(), bases.len(), "every sandbox of both backends has its own host id range: {bases:?}");
    for (which, id) in &ids {
        let b: &dyn Backend = if *which == 0 { &h.backend } else { &second };
        b.destroy(id).expect("destroy");
    }
}
