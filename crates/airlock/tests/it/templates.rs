//! Templates built from recipes: every instruction, the layer cache, a
//! failing step, `FROM` an OCI archive made here, `FROM` debootstrapped
//! Debian, and sandboxes started from each.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use airlock_runtime::{Backend, NamespaceBackend, SandboxSpec};
use airlock_server::builder::{BuildError, BuildEvent, Builder};
use airlock_testkit::envd::*;
use tokio::sync::mpsc;

use crate::support::*;

struct Env {
    backend: Arc<NamespaceBackend>,
    root: PathBuf,
    _tmp: tempfile::TempDir,
}

/// A backend of its own: builds write templates into its data directory.
fn env() -> &'static Env {
    static E: OnceLock<Env> = OnceLock::new();
    E.get_or_init(|| {
        let _ = harness();
        let tmp = tempfile::Builder::new().prefix("airlock-tpl-").tempdir().expect("tmp");
        let root = tmp.path().to_path_buf();
        let backend = NamespaceBackend::new(airlock_runtime::namespace::Options { root: root.clone(), binary: PathBuf::from(env!("CARGO_BIN_EXE_airlock")), network: true })
            .expect("backend");
        airlock_template::Store::new(root.join("templates")).ensure_base().expect("base template");
        Env { backend: Arc::new(backend), root, _tmp: tmp }
    })
}

fn builder() -> Builder {
    let e = env();
    Builder { backend: e.backend.clone(), store: airlock_template::Store::new(e.root.join("templates")), io_bps: 0, io_iops: 0 }
}

async fn build(name: &str, recipe: &str, args: &[(&str, &str)], ctx: Option<&std::path::Path>) -> (Result<airlock_template::Template, BuildError>, Vec<BuildEvent>) {
    let (tx, mut rx) = mpsc::channel(1024);
    let collector = tokio::spawn(async move {
        let mut v = Vec::new();
        while let Some(e) = rx.recv().await {
            v.push(e);
        }
        v
    });
    let args: BTreeMap<String, String> = args.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let r = builder().build(name, recipe, &args, ctx, &tx).await;
    drop(tx);
    (r, collector.await.expect("collector"))
}

fn steps(ev: &[BuildEvent]) -> Vec<(String, bool)> {
    ev.iter()
        .filter_map(|e| match e {
            BuildEvent::Step { text, cached, .. } => Some((text.clone(), *cached)),
            _ => None,
        })
        .collect()
}

/// A sandbox from a template of the test backend, destroyed on drop.
struct TSandbox {
    id: String,
    envd: Envd,
}

impl TSandbox {
    fn new(template: &str) -> Self {
        let tpl = builder().store.get(template).expect("template exists");
        let spec = SandboxSpec::new(new_id(), tpl.rootfs());
        let info = env().backend.create(&spec).expect("create from template");
        Self { id: spec.id, envd: Envd { socket: info.socket, token: None, user: None } }
    }
}

impl Drop for TSandbox {
    fn drop(&mut self) {
        let _ = env().backend.destroy(&self.id);
    }
}

#[tokio::test]
async fn recipe_with_every_instruction_builds_caches_and_rebuilds_one_step() {
    let ctx = tempfile::tempdir().expect("ctx");
    std::fs::create_dir_all(ctx.path().join("app")).expect("mkdir");
    std::fs::write(ctx.path().join("app/hello.txt"), "hello from the context\n").expect("write");
    let recipe = |last: &str| {
        format!(
            "ARG GREETING=hi\nFROM base\nENV A=1 B=\"two words\"\nWORKDIR /opt/app\nCOPY --chown=user:user app/ /opt/app/\n\
             RUN echo \"$A $GREETING\" > /opt/built.txt && id -un > /opt/builder.txt\nUSER user\nRUN {last}\n"
        )
    };
    let t0 = Instant::now();
    let (r, ev) = build("tpl-every", &recipe("echo first > /home/user/step.txt"), &[("GREETING", "hello")], Some(ctx.path())).await;
    let t = r.unwrap_or_else(|e| panic!("build failed: {e}\n{ev:?}"));
    assert!(t0.elapsed() < Duration::from_secs(120));
    assert_eq!(t.default_user, "user");
    assert_eq!(t.workdir.as_deref(), Some("/opt/app"));
    assert_eq!(t.env.get("B").map(String::as_str), Some("two words"));
    assert!(ev.iter().any(|e| matches!(e, BuildEvent::Done { .. })));

    let sbx = TSandbox::new("tpl-every");
    let r = sbx.envd.run("pwd; cat hello.txt /opt/built.txt /opt/builder.txt /home/user/step.txt; stat -c %U /opt/app/hello.txt; echo \"$A|$B\"; id -un").await;
    assert_eq!(r.stdout, "/opt/app\nhello from the context\n1 hello\nroot\nfirst\nuser\n1|two words\nuser\n", "{r:#?}");

    // Unchanged recipe: every step from cache, well under a second.
    let t0 = Instant::now();
    let (r, ev) = build("tpl-every", &recipe("echo first > /home/user/step.txt"), &[("GREETING", "hello")], Some(ctx.path())).await;
    r.expect("rebuild");
    let elapsed = t0.elapsed();
    assert!(steps(&ev).iter().all(|(_, cached)| *cached), "all cached: {:?}", steps(&ev));
    assert!(elapsed < Duration::from_secs(1), "cached rebuild took {elapsed:?}");

    // Changing the last step rebuilds only that step.
    let (r, ev) = build("tpl-every", &recipe("echo second > /home/user/step.txt"), &[("GREETING", "hello")], Some(ctx.path())).await;
    r.expect("rebuild with a change");
    let s = steps(&ev);
    let rebuilt: Vec<&String> = s.iter().filter(|(_, c)| !c).map(|(t, _)| t).collect();
    assert_eq!(rebuilt.len(), 1, "only the changed step runs: {s:?}");
    assert!(rebuilt[0].contains("second"));
    let sbx2 = TSandbox::new("tpl-every");
    assert_eq!(sbx2.envd.run("cat /home/user/step.txt /opt/built.txt").await.stdout, "second\n1 hello\n");
    // A changed context file invalidates COPY and what follows.
    std::fs::write(ctx.path().join("app/hello.txt"), "changed\n").expect("write");
    let (r, ev) = build("tpl-every", &recipe("echo second > /home/user/step.txt"), &[("GREETING", "hello")], Some(ctx.path())).await;
    r.expect("rebuild after context change");
    assert!(steps(&ev).iter().any(|(t, c)| t.starts_with("COPY") && !c), "{:?}", steps(&ev));
    drop(sbx);
    drop(sbx2);
}

#[tokio::test]
async fn a_failing_step_reports_output_and_leaves_no_template() {
    let (r, _) = build("tpl-fails", "FROM base\nRUN echo about to fail; echo oops >&2; exit 3\n", &[], None).await;
    match r {
        Err(BuildError::StepFailed { step, exit_code, output, .. }) => {
            assert_eq!((step, exit_code), (2, 3));
            assert!(output.contains("about to fail") && output.contains("oops"), "{output}");
        }
        other => panic!("expected a failed step, got {other:?}"),
    }
    assert!(builder().store.get("tpl-fails").is_err(), "no half-built template");
    let (r, _) = build("tpl-bad", "FROM base\nFROBNICATE\n", &[], None).await;
    assert!(matches!(r, Err(BuildError::Parse { line: 2, .. })), "{r:?}");
    let (r, _) = build("tpl-nofrom", "FROM no-such-template\n", &[], None).await;
    assert!(matches!(r, Err(BuildError::NotFound(_))), "{r:?}");
    let ctx = tempfile::tempdir().expect("ctx");
    let (r, _) = build("tpl-escape", "FROM base\nCOPY ../../etc/passwd /x\n", &[], Some(ctx.path())).await;
    assert!(matches!(r, Err(BuildError::Invalid(ref m)) if m.contains("leaves the build context")), "{r:?}");
}

fn tar_bytes(entries: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        match data {
            Some(d) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(d.len() as u64);
                h.set_mode(0o644);
                h.set_cksum();
                b.append_data(&mut h, path, *d).expect("append");
            }
            None => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                h.set_mode(0o755);
                h.set_cksum();
                b.append_data(&mut h, path, std::io::empty()).expect("append dir");
            }
        }
    }
    b.into_inner().expect("tar")
}

fn sha(b: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

/// An OCI image layout archive with two layers; the second deletes a file
/// and empties a directory with whiteouts.
fn oci_archive(path: &std::path::Path) {
    let l1 = tar_bytes(&[
        ("etc/", None),
        ("etc/passwd", Some(b"root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n")),
        ("data/", None),
        ("data/a.txt", Some(b"from layer one\n")),
        ("data/b.txt", Some(b"deleted by layer two\n")),
        ("data/dir/", None),
        ("data/dir/x.txt", Some(b"hidden by an opaque dir\n")),
    ]);
    let l2 = tar_bytes(&[("data/.wh.b.txt", Some(b"")), ("data/dir/", None), ("data/dir/.wh..wh..opq", Some(b"")), ("data/dir/y.txt", Some(b"from layer two\n"))]);
    let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#.to_vec();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{}", sha(&config)), "size": config.len()},
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": format!("sha256:{}", sha(&l1)), "size": l1.len()},
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": format!("sha256:{}", sha(&l2)), "size": l2.len()},
        ]
    }))
    .expect("json");
    let index = serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": format!("sha256:{}", sha(&manifest)), "size": manifest.len()}]})).expect("json");
    let mut outer: Vec<(String, Vec<u8>)> = vec![("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()), ("index.json".into(), index)];
    for blob in [config, manifest, l1, l2] {
        outer.push((format!("blobs/sha256/{}", sha(&blob)), blob));
    }
    let entries: Vec<(&str, Option<&[u8]>)> = outer.iter().map(|(p, d)| (p.as_str(), Some(d.as_slice()))).collect();
    std::fs::write(path, tar_bytes(&entries)).expect("write archive");
}

#[tokio::test]
async fn from_an_oci_archive_applies_layers_and_whiteouts() {
    let dir = tempfile::tempdir().expect("tmp");
    let archive = dir.path().join("image.tar");
    oci_archive(&archive);
    let (r, ev) = build("tpl-oci", &format!("FROM {}\n", archive.display()), &[], None).await;
    r.unwrap_or_else(|e| panic!("build failed: {e}\n{ev:?}"));
    // The image has no shell: look at its files through the agent's file API.
    let sbx = TSandbox::new("tpl-oci");
    let get = |p: &'static str| {
        let envd = sbx.envd.clone();
        async move {
            let r = envd.request("GET", &format!("/files?path={p}&username=root"), &[], "").await;
            let status = r.status;
            (status, String::from_utf8_lossy(&r.bytes().await).into_owned())
        }
    };
    assert_eq!(get("/data/a.txt").await, (200, "from layer one\n".to_string()));
    assert_eq!(get("/data/dir/y.txt").await, (200, "from layer two\n".to_string()));
    assert_eq!(get("/data/b.txt").await.0, 404, "whiteout deleted b.txt");
    assert_eq!(get("/data/dir/x.txt").await.0, 404, "opaque directory hid x.txt");
    assert_eq!(get("/usr/bin/bash").await.0, 404, "nothing of the host's /usr");
    let (r, ev) = build("tpl-oci", &format!("FROM {}\n", archive.display()), &[], None).await;
    r.expect("rebuild");
    assert!(steps(&ev).iter().all(|(_, c)| *c), "the unpacked image is cached");
}

#[tokio::test]
async fn from_debootstrapped_debian_owes_nothing_to_the_host() {
    if std::process::Command::new("debootstrap").arg("--version").output().is_err() {
        panic!("debootstrap is required for this test (scripts/test installs it)");
    }
    let t0 = Instant::now();
    let (r, ev) = build("tpl-debian", "FROM debian:bookworm\nRUN echo built-on-debian > /etc/airlock-marker\n", &[], None).await;
    r.unwrap_or_else(|e| panic!("build failed after {:?}: {e}\n{:?}", t0.elapsed(), ev.iter().rev().take(10).collect::<Vec<_>>()));
    let sbx = TSandbox::new("tpl-debian");
    let r = sbx.envd.run("cat /etc/debian_version /etc/airlock-marker; test -e /usr/bin/gcc && echo host-gcc || echo no-gcc; id -un").await;
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert!(lines.first().is_some_and(|v| v.starts_with("12")), "{r:#?}");
    assert_eq!(&lines[1..], ["built-on-debian", "no-gcc", "user"], "{r:#?}");
}

#[tokio::test]
async fn a_full_disk_limit_is_enospc_inside_and_nothing_outside() {
    use airlock_runtime::Backend;
    let h = harness();
    let limited = Sandbox::with(|s| s.disk_mb = Some(64));
    let neighbour = Sandbox::new();
    let r = limited.sh("dd if=/dev/zero of=/home/user/fill bs=1M count=200 2>&1; echo dd=$?; df -m / | tail -1").await;
    assert!(r.stdout.contains("No space left on device"), "{r:#?}");
    assert!(r.stdout.contains("dd=1"), "{r:#?}");
    let u = h.backend.usage(limited.id()).expect("usage");
    assert!(u.disk_limit_bytes >= 50 << 20 && u.disk_limit_bytes <= 64 << 20, "limit reported: {u:?}");
    assert!(u.disk_bytes >= 40 << 20, "usage reported: {u:?}");
    // The neighbour writes happily; the host lost at most the image's size.
    let n = neighbour.sh("dd if=/dev/zero of=/home/user/ok bs=1M count=100 2>&1 >/dev/null; echo dd=$?; rm /home/user/ok").await;
    assert!(n.stdout.contains("dd=0"), "{n:#?}");
    // What the sandbox can take from the host is its image's allocated
    // blocks, whatever it writes. (Host-wide free space is no measure here:
    // other tests write to the same filesystem in parallel.)
    let img = h.root.join("sandboxes").join(limited.id()).join("disk.img");
    let allocated = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&img).expect("disk image")) * 512;
    assert!(allocated <= 64 << 20, "the host lost at most the 64 MiB image: {allocated} bytes allocated");
    // After deleting, the sandbox can write again, and destroy leaves no mount.
    let r = limited.sh("rm /home/user/fill && echo more > /home/user/x && cat /home/user/x").await;
    assert_eq!(r.stdout, "more\n");
    let dir = h.root.join("sandboxes").join(limited.id());
    drop(limited);
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(!mounts.contains(&dir.display().to_string()), "no mount left behind");
    assert!(!dir.exists());
}
