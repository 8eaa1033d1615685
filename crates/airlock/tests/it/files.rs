//! `filesystem.Filesystem` RPCs and the plain-HTTP `/files` endpoint,
//! driven against a real sandbox's agent.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use airlock_testkit::envd::*;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::support::*;

// ---------------------------------------------------------------- helpers

async fn fs(sbx: &Sandbox, method: &str, msg: Value) -> Result<Value, RpcError> {
    sbx.envd.unary("filesystem.Filesystem", method, msg).await
}

async fn stat(sbx: &Sandbox, path: &str) -> Result<Value, RpcError> {
    fs(sbx, "Stat", json!({ "path": path })).await.map(|v| v["entry"].clone())
}

/// Runs `cmd` as `user` and insists it succeeds; returns its stdout.
async fn ok(sbx: &Sandbox, cmd: &str) -> String {
    let r = sbx.sh(cmd).await;
    assert_eq!(r.exit_code, 0, "`{cmd}` failed: {}", r.stderr);
    r.stdout
}

/// Whether `path` exists inside the sandbox.
async fn exists(sbx: &Sandbox, path: &str) -> bool {
    sbx.sh(&format!("test -e {path}")).await.exit_code == 0
}

/// Query-string encoding of a value (everything but unreserved characters).
fn qenc(s: &str) -> String {
    s.bytes().map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

fn files_url(path: &str) -> String {
    format!("/files?path={}&username=user", qenc(path))
}

async fn upload(envd: &Envd, path: &str, data: impl Into<Bytes>) -> (u16, Value) {
    let r = envd.request("POST", &files_url(path), &[("content-type", "application/octet-stream".into())], data).await;
    let status = r.status;
    (status, serde_json::from_slice(&r.bytes().await).unwrap_or(Value::Null))
}

async fn download(envd: &Envd, path: &str) -> (u16, http::HeaderMap, Bytes) {
    let r = envd.request("GET", &files_url(path), &[], "").await;
    let (status, headers) = (r.status, r.headers.clone());
    (status, headers, r.bytes().await)
}

fn header<'a>(h: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

const BOUNDARY: &str = "airlock-test-boundary-7d1f";

/// A multipart/form-data body: `(field name, filename, data)` per part.
fn multipart(parts: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, filename, data) in parts {
        out.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        match filename {
            Some(f) => out.extend_from_slice(format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\n").as_bytes()),
            None => out.extend_from_slice(format!("Content-Disposition: form-data; name=\"{name}\"\r\n").as_bytes()),
        }
        out.extend_from_slice(b"Content-Type: application/octet-stream\r\n\r\n");
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    out
}

fn multipart_type() -> String {
    format!("multipart/form-data; boundary={BOUNDARY}")
}

fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Deterministic incompressible-looking bytes (xorshift64*).
struct Noise(u64);

impl Noise {
    fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }

    fn bytes(seed: u64, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        Noise(seed).fill(&mut v);
        v
    }
}

/// envd's URL signature, computed independently of the agent's code.
fn sign(path: &str, op: &str, user: &str, token: &str, expiration: Option<i64>) -> String {
    let mut s = format!("{path}:{op}:{user}:{token}");
    if let Some(e) = expiration {
        s.push_str(&format!(":{e}"));
    }
    format!("v1_{}", base64::engine::general_purpose::STANDARD_NO_PAD.encode(Sha256::digest(s.as_bytes())))
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64
}

/// Reads watch-stream events until every `(name, type)` in `want` has been
/// seen; returns everything seen. Fails after 10 s.
async fn wait_for_events(s: &mut Stream, want: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut seen = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if want.iter().all(|(n, t)| seen.iter().any(|(sn, st): &(String, String)| sn == n && st == t)) {
                return;
            }
            let m = s.next_event().await.unwrap_or_else(|| panic!("watch stream ended: {:?}; seen {seen:?}", s.end));
            let ev = &m["filesystem"];
            assert!(ev.is_object(), "a filesystem event: {m}");
            seen.push((ev["name"].as_str().expect("name").to_string(), ev["type"].as_str().expect("type").to_string()));
        }
    })
    .await;
    assert!(r.is_ok(), "timed out waiting for {want:?}; seen {seen:?}");
    seen
}

/// Host-side resident memory of a process, in KiB.
fn vm_rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("agent status");
    s.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).expect("VmRSS")
}

/// Samples a process's RSS every 20 ms until stopped; yields the maximum.
struct RssWatch {
    max: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl RssWatch {
    fn start(pid: u32) -> Self {
        let max = Arc::new(AtomicU64::new(vm_rss_kib(pid)));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, st) = (max.clone(), stop.clone());
        let task = tokio::spawn(async move {
            while !st.load(Ordering::Relaxed) {
                m.fetch_max(vm_rss_kib(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        Self { max, stop, task }
    }

    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("rss sampler");
        self.max.load(Ordering::Relaxed)
    }
}

// ------------------------------------------------------------------- Stat

#[tokio::test]
async fn stat_describes_files_directories_and_symlinks() {
    let sbx = Sandbox::new();
    ok(&sbx, "mkdir -p ~/st/dir && printf hello > ~/st/a.txt && chmod 640 ~/st/a.txt && ln -s a.txt ~/st/link && ln -s nowhere ~/st/dangling").await;

    let f = stat(&sbx, "/home/user/st/a.txt").await.expect("stat file");
    assert_eq!(f["name"], "a.txt");
    assert_eq!(f["type"], "FILE_TYPE_FILE");
    assert_eq!(f["path"], "/home/user/st/a.txt");
    assert_eq!(f["size"], "5", "int64 size is a JSON string");
    assert_eq!(f["permissions"], "-rw-r-----");
    assert_eq!(f["mode"], 0o640);
    assert_eq!(f["owner"], "user");
    assert_eq!(f["group"], "user");
    assert!(f.get("symlinkTarget").is_none() && f.get("isSymlink").is_none(), "{f}");
    let mtime = f["modifiedTime"].as_str().expect("modifiedTime");
    assert!(mtime.ends_with('Z') && mtime.as_bytes()[10] == b'T', "RFC 3339 in UTC: {mtime}");
    let parsed = airlock_proto::time::parse_rfc3339(mtime).expect("parses as RFC 3339");
    let secs = parsed.duration_since(std::time::UNIX_EPOCH).expect("after epoch").as_secs();
    let inside: u64 = ok(&sbx, "stat -c %Y ~/st/a.txt").await.trim().parse().expect("stat -c %Y");
    assert_eq!(secs, inside, "modifiedTime is the file's mtime");

    let d = stat(&sbx, "/home/user/st/dir").await.expect("stat dir");
    assert_eq!(d["name"], "dir");
    assert_eq!(d["type"], "FILE_TYPE_DIRECTORY");
    assert_eq!(d["permissions"], "drwxr-xr-x");
    assert_eq!(d["owner"], "user");

    // A symlink is described as the link, typed as its target.
    let l = stat(&sbx, "/home/user/st/link").await.expect("stat symlink");
    assert_eq!(l["name"], "link");
    assert_eq!(l["path"], "/home/user/st/link");
    assert_eq!(l["type"], "FILE_TYPE_FILE");
    assert_eq!(l["permissions"], "lrwxrwxrwx");
    assert_eq!(l["symlinkTarget"], "/home/user/st/a.txt");
    assert_eq!(l["isSymlink"], true);
    let dl = stat(&sbx, "/home/user/st/dangling").await.expect("stat dangling symlink");
    assert_eq!(dl["type"], "FILE_TYPE_SYMLINK");

    let e = stat(&sbx, "/home/user/st/missing").await.expect_err("missing file");
    assert_eq!(e.status, 404);
    assert_eq!(e.code, "not_found");
    assert!(e.message.contains("/home/user/st/missing"), "{}", e.message);
}

// ---------------------------------------------------------------- MakeDir

#[tokio::test]
async fn make_dir_creates_parents_owned_by_user_and_refuses_existing() {
    let sbx = Sandbox::new();
    let r = fs(&sbx, "MakeDir", json!({"path": "/home/user/md/a/b/c"})).await.expect("make dir");
    assert_eq!(r["entry"]["path"], "/home/user/md/a/b/c");
    assert_eq!(r["entry"]["name"], "c");
    assert_eq!(r["entry"]["type"], "FILE_TYPE_DIRECTORY");
    assert_eq!(r["entry"]["owner"], "user");
    assert_eq!(ok(&sbx, "stat -c %U:%G ~/md ~/md/a ~/md/a/b ~/md/a/b/c").await, "user:user\n".repeat(4));
    // The user can work in what was created for them.
    ok(&sbx, "touch ~/md/a/b/c/mine").await;

    let e = fs(&sbx, "MakeDir", json!({"path": "/home/user/md/a"})).await.expect_err("exists");
    assert_eq!((e.status, e.code.as_str()), (409, "already_exists"));
    assert!(e.message.contains("already exists"), "{}", e.message);

    ok(&sbx, "echo x > ~/md/file").await;
    let e = fs(&sbx, "MakeDir", json!({"path": "/home/user/md/file"})).await.expect_err("over a file");
    assert_eq!((e.status, e.code.as_str()), (400, "invalid_argument"));
    assert_eq!(ok(&sbx, "cat ~/md/file").await, "x\n", "the file is untouched");
}

// ------------------------------------------------------------------- Move

#[tokio::test]
async fn move_renames_and_reports_missing_source() {
    let sbx = Sandbox::new();
    ok(&sbx, "mkdir ~/mv && printf moved > ~/mv/src.txt").await;
    let r = fs(&sbx, "Move", json!({"source": "/home/user/mv/src.txt", "destination": "/home/user/mv/dst.txt"})).await.expect("move");
    assert_eq!(r["entry"]["path"], "/home/user/mv/dst.txt");
    assert_eq!(r["entry"]["name"], "dst.txt");
    assert_eq!(r["entry"]["size"], "5");
    assert!(!exists(&sbx, "~/mv/src.txt").await, "source is gone");
    assert_eq!(ok(&sbx, "cat ~/mv/dst.txt").await, "moved");

    // Into directories that do not exist yet: they are created for the user.
    fs(&sbx, "Move", json!({"source": "mv/dst.txt", "destination": "mv/new/deeper/x.txt"})).await.expect("move into new dirs");
    assert_eq!(ok(&sbx, "cat ~/mv/new/deeper/x.txt").await, "moved");
    assert_eq!(ok(&sbx, "stat -c %U ~/mv/new ~/mv/new/deeper").await, "user\nuser\n");

    let e = fs(&sbx, "Move", json!({"source": "/home/user/mv/nope", "destination": "/home/user/mv/other"})).await.expect_err("missing source");
    assert_eq!((e.status, e.code.as_str()), (404, "not_found"));
    assert!(!exists(&sbx, "~/mv/other").await);
}

// ---------------------------------------------------------------- ListDir

#[tokio::test]
async fn list_dir_honours_depth() {
    let sbx = Sandbox::new();
    ok(&sbx, "mkdir -p ~/ls/d1/d2/d3 && echo > ~/ls/a.txt && echo > ~/ls/d1/b.txt && echo > ~/ls/d1/d2/c.txt && echo > ~/ls/d1/d2/d3/e.txt").await;
    let list = |depth: u32| {
        let sbx = &sbx;
        async move {
            let r = fs(sbx, "ListDir", json!({"path": "/home/user/ls", "depth": depth})).await.expect("list");
            r["entries"].as_array().expect("entries").iter().map(|e| e["path"].as_str().expect("path").to_string()).collect::<BTreeSet<_>>()
        }
    };
    let set = |v: &[&str]| v.iter().map(|p| format!("/home/user/ls/{p}")).collect::<BTreeSet<_>>();

    assert_eq!(list(1).await, set(&["a.txt", "d1"]));
    assert_eq!(list(0).await, set(&["a.txt", "d1"]), "depth 0 means 1");
    assert_eq!(list(3).await, set(&["a.txt", "d1", "d1/b.txt", "d1/d2", "d1/d2/c.txt", "d1/d2/d3"]));
    assert_eq!(list(4).await, set(&["a.txt", "d1", "d1/b.txt", "d1/d2", "d1/d2/c.txt", "d1/d2/d3", "d1/d2/d3/e.txt"]));

    let r = fs(&sbx, "ListDir", json!({"path": "ls", "depth": 1})).await.expect("relative list");
    let d1 = r["entries"].as_array().expect("entries").iter().find(|e| e["name"] == "d1").expect("d1 listed").clone();
    assert_eq!(d1["type"], "FILE_TYPE_DIRECTORY");
    assert_eq!(d1["path"], "/home/user/ls/d1");

    let e = fs(&sbx, "ListDir", json!({"path": "/home/user/nodir", "depth": 1})).await.expect_err("missing dir");
    assert_eq!((e.status, e.code.as_str()), (404, "not_found"));
    let e = fs(&sbx, "ListDir", json!({"path": "/home/user/ls/a.txt"})).await.expect_err("a file");
    assert_eq!(e.code, "invalid_argument");
}

// ----------------------------------------------------------------- Remove

#[tokio::test]
async fn remove_deletes_files_and_non_empty_directories() {
    let sbx = Sandbox::new();
    ok(&sbx, "mkdir -p ~/rm/tree/sub && echo > ~/rm/f.txt && echo > ~/rm/tree/sub/g.txt && echo > ~/rm/keep").await;
    assert_eq!(fs(&sbx, "Remove", json!({"path": "/home/user/rm/f.txt"})).await.expect("remove file"), json!({}));
    assert!(!exists(&sbx, "~/rm/f.txt").await);
    fs(&sbx, "Remove", json!({"path": "rm/tree"})).await.expect("remove tree");
    assert!(!exists(&sbx, "~/rm/tree").await);
    assert!(exists(&sbx, "~/rm/keep").await, "siblings stay");
    // Like envd (os.RemoveAll), removing what is not there succeeds.
    fs(&sbx, "Remove", json!({"path": "/home/user/rm/never"})).await.expect("remove missing");
    assert_eq!(stat(&sbx, "/home/user/rm/tree").await.expect_err("gone").code, "not_found");
}

// ------------------------------------------------------------------ paths

#[tokio::test]
async fn paths_resolve_under_home_and_never_climb_out_of_the_sandbox() {
    let sbx = Sandbox::with(|s| s.hostname = Some("jailedhost".into()));
    ok(&sbx, "echo rel > ~/rel.txt").await;
    assert_eq!(stat(&sbx, "rel.txt").await.expect("relative")["path"], "/home/user/rel.txt");
    assert_eq!(stat(&sbx, "~/rel.txt").await.expect("tilde")["path"], "/home/user/rel.txt");
    assert_eq!(stat(&sbx, "./x/../rel.txt").await.expect("cleaned")["path"], "/home/user/rel.txt");
    assert_eq!(stat(&sbx, "~").await.expect("home")["path"], "/home/user");

    // `..` stops at the sandbox's root: this is the sandbox's own hostname file.
    let e = stat(&sbx, "../../../../etc/hostname").await.expect("stat hostname");
    assert_eq!(e["path"], "/etc/hostname");
    let (status, _, body) = download(&sbx.envd, "../../../../etc/hostname").await;
    assert_eq!(status, 200);
    assert_eq!(&body[..], b"jailedhost\n");
    let host = std::fs::read("/etc/hostname").unwrap_or_default();
    assert_ne!(&body[..], &host[..], "not the host's file");

    // A file that only exists inside the sandbox is reachable that way,
    // and writes through `..` land inside, never on the host.
    let marker = format!("airlock-marker-{}", new_id());
    let r = sbx.sh_as("root", &format!("echo inside > /etc/{marker}")).await;
    assert_eq!(r.exit_code, 0, "{}", r.stderr);
    let (status, _, body) = download(&sbx.envd, &format!("../../../../../etc/{marker}")).await;
    assert_eq!((status, &body[..]), (200, &b"inside\n"[..]));
    assert!(!std::path::Path::new(&format!("/etc/{marker}")).exists());

    let (status, v) = upload(&sbx.envd, &format!("../../../../../../tmp/{marker}"), "escaped?").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v[0]["path"], format!("/tmp/{marker}"));
    assert_eq!(ok(&sbx, &format!("cat /tmp/{marker}")).await, "escaped?");
    assert!(!std::path::Path::new(&format!("/tmp/{marker}")).exists(), "nothing written on the host");
    let r = fs(&sbx, "MakeDir", json!({"path": format!("/../../tmp/{marker}.d")})).await.expect("mkdir");
    assert_eq!(r["entry"]["path"], format!("/tmp/{marker}.d"));
    assert!(!std::path::Path::new(&format!("/tmp/{marker}.d")).exists());
}

// --------------------------------------------------------------- WatchDir

#[tokio::test]
async fn watch_dir_streams_events_recursively() {
    let sbx = Sandbox::new();
    ok(&sbx, "mkdir ~/w").await;
    let mut s = sbx.envd.stream("filesystem.Filesystem", "WatchDir", json!({"path": "/home/user/w", "recursive": true})).await;
    let first = s.next().await.expect("first message");
    assert_eq!(first, json!({"start": {}}), "first message is start, the oneof at top level as envd sends it");
    // Quiet for longer than the requested 1 s keepalive interval.
    let m = tokio::time::timeout(Duration::from_secs(5), s.next()).await.expect("keepalive in time");
    assert_eq!(m, Some(json!({"keepalive": {}})), "watch messages carry the oneof at top level");

    ok(&sbx, "echo hi > ~/w/f.txt").await;
    wait_for_events(&mut s, &[("f.txt", "EVENT_TYPE_CREATE"), ("f.txt", "EVENT_TYPE_WRITE")]).await;

    // A subdirectory created after the watch started is followed.
    ok(&sbx, "mkdir ~/w/sub && echo x > ~/w/sub/g.txt").await;
    wait_for_events(&mut s, &[("sub", "EVENT_TYPE_CREATE"), ("sub/g.txt", "EVENT_TYPE_CREATE")]).await;
    ok(&sbx, "echo more >> ~/w/sub/g.txt").await;
    wait_for_events(&mut s, &[("sub/g.txt", "EVENT_TYPE_WRITE")]).await;

    ok(&sbx, "mv ~/w/f.txt ~/w/h.txt").await;
    wait_for_events(&mut s, &[("f.txt", "EVENT_TYPE_RENAME"), ("h.txt", "EVENT_TYPE_CREATE")]).await;
    ok(&sbx, "chmod 600 ~/w/h.txt").await;
    wait_for_events(&mut s, &[("h.txt", "EVENT_TYPE_CHMOD")]).await;
    ok(&sbx, "rm ~/w/sub/g.txt").await;
    let seen = wait_for_events(&mut s, &[("sub/g.txt", "EVENT_TYPE_REMOVE")]).await;
    assert!(seen.iter().all(|(n, _)| !n.starts_with('/')), "names are relative: {seen:?}");

    // A renamed directory is followed under its new name only.
    ok(&sbx, "mv ~/w/sub ~/w/moved").await;
    wait_for_events(&mut s, &[("sub", "EVENT_TYPE_RENAME"), ("moved", "EVENT_TYPE_CREATE")]).await;
    ok(&sbx, "echo z > ~/w/moved/z.txt").await;
    let seen = wait_for_events(&mut s, &[("moved/z.txt", "EVENT_TYPE_CREATE")]).await;
    assert!(seen.iter().all(|(n, _)| !n.starts_with("sub/")), "no stale names: {seen:?}");
    ok(&sbx, "rm -r ~/w/moved").await;
    wait_for_events(&mut s, &[("moved/z.txt", "EVENT_TYPE_REMOVE"), ("moved", "EVENT_TYPE_REMOVE")]).await;
}

#[tokio::test]
async fn flat_watch_ignores_subdirectories() {
    let sbx = Sandbox::new();
    ok(&sbx, "mkdir -p ~/fw/sub").await;
    let mut s = sbx.envd.stream("filesystem.Filesystem", "WatchDir", json!({"path": "fw"})).await;
    assert!(s.next().await.expect("start").get("start").is_some());
    ok(&sbx, "echo x > ~/fw/sub/inner && echo y > ~/fw/top").await;
    let seen = wait_for_events(&mut s, &[("top", "EVENT_TYPE_CREATE"), ("top", "EVENT_TYPE_WRITE")]).await;
    // A change inside a child directory is nothing the parent's watch reports.
    assert!(seen.iter().all(|(n, _)| n == "top"), "nothing from inside sub: {seen:?}");
}

#[tokio::test]
async fn watch_dir_on_missing_dir_ends_with_not_found() {
    let sbx = Sandbox::new();
    let mut s = sbx.envd.stream("filesystem.Filesystem", "WatchDir", json!({"path": "/home/user/absent"})).await;
    assert!(s.next().await.is_none(), "no messages, only the end of the stream");
    let end = s.end.clone().expect("end-of-stream message");
    assert_eq!(end["error"]["code"], "not_found", "{end}");
    assert!(end["error"]["message"].as_str().expect("message").contains("/home/user/absent"), "{end}");
}

/// The agent's open inotify instances, seen from the host.
fn inotify_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("agent fds")
        .flatten()
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy() == "anon_inode:inotify"))
        .count()
}

/// Polls `f` for up to 5 s until it holds.
async fn eventually(mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..100 {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f()
}

#[tokio::test]
async fn watches_release_their_inotify_instances() {
    let sbx = Sandbox::new();
    let pid = sbx.info.pid;
    ok(&sbx, "mkdir -p ~/rel/a/b").await;
    let base = inotify_fds(pid);
    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut s = sbx.envd.stream("filesystem.Filesystem", "WatchDir", json!({"path": "rel", "recursive": true})).await;
        assert!(s.next().await.expect("start").get("start").is_some());
        streams.push(s);
    }
    let id = fs(&sbx, "CreateWatcher", json!({"path": "rel", "recursive": true})).await.expect("create")["watcherId"].as_str().expect("id").to_string();
    assert_eq!(inotify_fds(pid), base + 4, "one inotify instance per watch");
    // A client that goes away ends its stream's watch.
    drop(streams);
    assert!(eventually(|| inotify_fds(pid) == base + 1).await, "stream watches closed: {} open", inotify_fds(pid));
    fs(&sbx, "RemoveWatcher", json!({"watcherId": id})).await.expect("remove");
    assert!(eventually(|| inotify_fds(pid) == base).await, "polling watch closed: {} open", inotify_fds(pid));
}

// ------------------------------------------------- polling watchers

#[tokio::test]
async fn polling_watcher_accumulates_and_drains_events() {
    let sbx = Sandbox::new();
    ok(&sbx, "mkdir ~/pw").await;
    let r = fs(&sbx, "CreateWatcher", json!({"path": "/home/user/pw", "includeEntry": true})).await.expect("create watcher");
    let id = r["watcherId"].as_str().expect("watcherId").to_string();
    assert!(id.starts_with('w') && id.len() > 8, "{id}");

    ok(&sbx, "echo 1 > ~/pw/a && echo 2 > ~/pw/b").await;
    // Nothing is taken until asked: one call gets both files' events.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ev = fs(&sbx, "GetWatcherEvents", json!({"watcherId": id})).await.expect("events");
    let events = ev["events"].as_array().expect("events").clone();
    let has = |n: &str, t: &str| events.iter().any(|e| e["name"] == n && e["type"] == t);
    assert!(has("a", "EVENT_TYPE_CREATE") && has("b", "EVENT_TYPE_CREATE"), "{events:?}");
    assert!(has("a", "EVENT_TYPE_WRITE") && has("b", "EVENT_TYPE_WRITE"), "{events:?}");
    let a = events.iter().find(|e| e["name"] == "a" && e["type"] == "EVENT_TYPE_CREATE").expect("a");
    assert_eq!(a["entry"]["path"], "/home/user/pw/a", "includeEntry adds the entry");

    // Drained: the next call returns nothing new.
    let again = fs(&sbx, "GetWatcherEvents", json!({"watcherId": id})).await.expect("events");
    assert_eq!(again["events"].as_array().map_or(0, Vec::len), 0, "{again}");

    ok(&sbx, "rm ~/pw/a").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ev = fs(&sbx, "GetWatcherEvents", json!({"watcher_id": id})).await.expect("events (snake_case)");
    assert_eq!(ev["events"], json!([{"name": "a", "type": "EVENT_TYPE_REMOVE"}]));

    assert_eq!(fs(&sbx, "RemoveWatcher", json!({"watcherId": id})).await.expect("remove"), json!({}));
    let e = fs(&sbx, "GetWatcherEvents", json!({"watcherId": id})).await.expect_err("removed watcher");
    assert_eq!((e.status, e.code.as_str()), (404, "not_found"));
    let e = fs(&sbx, "RemoveWatcher", json!({"watcherId": "wnosuchwatcher"})).await.expect_err("unknown watcher");
    assert_eq!(e.code, "not_found");
    let e = fs(&sbx, "CreateWatcher", json!({"path": "/home/user/nope"})).await.expect_err("missing dir");
    assert_eq!(e.code, "not_found");
}

// ----------------------------------------------------------------- /files

#[tokio::test]
async fn multipart_upload_writes_files_owned_by_user() {
    let sbx = Sandbox::new();
    let bin = Noise::bytes(1, 200_000);
    // No `path`: each part's filename is its destination; other fields are ignored.
    let body = multipart(&[("file", Some("/home/user/up/a.txt"), b"alpha\n"), ("note", None, b"not a file"), ("file", Some("up/nested/deep/b.bin"), &bin)]);
    let r = sbx.envd.request("POST", "/files?username=user", &[("content-type", multipart_type())], body).await;
    assert_eq!(r.status, 200);
    assert_eq!(header(&r.headers, "content-type"), Some("application/json"));
    let v: Value = serde_json::from_slice(&r.bytes().await).expect("json");
    assert_eq!(
        v,
        json!([
            {"path": "/home/user/up/a.txt", "name": "a.txt", "type": "file"},
            {"path": "/home/user/up/nested/deep/b.bin", "name": "b.bin", "type": "file"},
        ])
    );
    assert_eq!(ok(&sbx, "cat ~/up/a.txt").await, "alpha\n");
    assert_eq!(ok(&sbx, "sha256sum < ~/up/nested/deep/b.bin").await.split_whitespace().next(), Some(sha256_hex(&bin).as_str()));
    assert_eq!(ok(&sbx, "stat -c %U:%G:%a ~/up ~/up/nested ~/up/nested/deep ~/up/a.txt ~/up/nested/deep/b.bin").await, "user:user:755\n".repeat(3) + &"user:user:644\n".repeat(2));
    // The user can overwrite what was uploaded for them.
    ok(&sbx, "echo mine > ~/up/a.txt").await;

    // With `path`, the single part goes there whatever its filename.
    let body = multipart(&[("file", Some("ignored.txt"), b"by path")]);
    let r = sbx.envd.request("POST", &files_url("~/up/by-path.txt"), &[("content-type", multipart_type())], body).await;
    assert_eq!(r.status, 200);
    assert_eq!(ok(&sbx, "cat ~/up/by-path.txt").await, "by path");
    assert!(!exists(&sbx, "~/ignored.txt").await);

    // Two parts for the same destination are refused.
    let body = multipart(&[("file", Some("up/dup"), b"1"), ("file", Some("/home/user/up/dup"), b"2")]);
    let r = sbx.envd.request("POST", "/files", &[("content-type", multipart_type())], body).await;
    assert_eq!(r.status, 400);
    let v: Value = serde_json::from_slice(&r.bytes().await).expect("json");
    assert_eq!(v["code"], 400);
    assert!(v["message"].as_str().expect("message").contains("same path"), "{v}");

    // Uploading over a directory is refused.
    let (status, v) = upload(&sbx.envd, "/home/user/up", "x").await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["message"], "path '/home/user/up' is a directory");
}

#[tokio::test]
async fn octet_stream_upload_and_exact_download() {
    let sbx = Sandbox::new();
    let data = Noise::bytes(2, 300_001);
    let (status, v) = upload(&sbx.envd, "/home/user/oct/sub/data.bin", data.clone()).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v, json!([{"path": "/home/user/oct/sub/data.bin", "name": "data.bin", "type": "file"}]));
    assert_eq!(ok(&sbx, "stat -c %U:%G ~/oct ~/oct/sub ~/oct/sub/data.bin").await, "user:user\n".repeat(3));
    assert_eq!(ok(&sbx, "stat -c %s ~/oct/sub/data.bin").await, "300001\n");

    let (status, headers, body) = download(&sbx.envd, "/home/user/oct/sub/data.bin").await;
    assert_eq!(status, 200);
    assert_eq!(body.len(), data.len());
    assert!(body[..] == data[..], "downloaded bytes are exact");
    assert_eq!(header(&headers, "content-disposition"), Some("inline; filename=\"data.bin\""));
    assert_eq!(header(&headers, "content-length"), Some("300001"));
    assert_eq!(header(&headers, "content-type"), Some("application/octet-stream"));
    assert!(headers.get("content-encoding").is_none());

    // Overwriting replaces the content entirely; empty files work.
    let (status, _) = upload(&sbx.envd, "oct/sub/data.bin", "short").await;
    assert_eq!(status, 200);
    assert_eq!(&download(&sbx.envd, "~/oct/sub/data.bin").await.2[..], b"short");
    let (status, _) = upload(&sbx.envd, "oct/empty", "").await;
    assert_eq!(status, 200);
    let (status, headers, body) = download(&sbx.envd, "oct/empty").await;
    assert_eq!((status, body.len()), (200, 0));
    assert_eq!(header(&headers, "content-length"), Some("0"));

    // `path` is required for a raw body.
    let r = sbx.envd.request("POST", "/files?username=user", &[("content-type", "application/octet-stream".into())], "x").await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn uploaded_metadata_is_reported_by_stat() {
    let sbx = Sandbox::new();
    let r = sbx
        .envd
        .request(
            "POST",
            &files_url("/home/user/meta.txt"),
            &[("content-type", "application/octet-stream".into()), ("x-metadata-author", "mish".into()), ("x-metadata-purpose", "test upload".into())],
            "with metadata",
        )
        .await;
    assert_eq!(r.status, 200);
    let v: Value = serde_json::from_slice(&r.bytes().await).expect("json");
    assert_eq!(v[0]["metadata"], json!({"author": "mish", "purpose": "test upload"}));
    let e = stat(&sbx, "/home/user/meta.txt").await.expect("stat");
    assert_eq!(e["metadata"], json!({"author": "mish", "purpose": "test upload"}));
    let listed = fs(&sbx, "ListDir", json!({"path": "/home/user"})).await.expect("list");
    let m = listed["entries"].as_array().expect("entries").iter().find(|e| e["name"] == "meta.txt").expect("listed").clone();
    assert_eq!(m["metadata"]["author"], "mish");

    // A later upload's headers replace the metadata.
    let r = sbx
        .envd
        .request("POST", &files_url("/home/user/meta.txt"), &[("content-type", "application/octet-stream".into()), ("x-metadata-author", "someone else".into())], "v2")
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(stat(&sbx, "meta.txt").await.expect("stat")["metadata"], json!({"author": "someone else"}));
    let (status, _) = upload(&sbx.envd, "/home/user/meta.txt", "v3").await;
    assert_eq!(status, 200);
    assert!(stat(&sbx, "meta.txt").await.expect("stat").get("metadata").is_none(), "no headers, no metadata");

    // Invalid metadata is refused before anything is written.
    let r = sbx.envd.request("POST", &files_url("/home/user/meta2.txt"), &[("content-type", "application/octet-stream".into()), ("x-metadata-big", "v".repeat(5000))], "x").await;
    assert_eq!(r.status, 400);
    assert!(!exists(&sbx, "~/meta2.txt").await);
}

#[tokio::test]
async fn gzip_upload_and_download() {
    let sbx = Sandbox::new();
    // Compressible, and large enough for several compressed chunks.
    let data: Vec<u8> = (0..400_000u32).flat_map(|i| format!("line {i} of {}\n", i % 97).into_bytes()).collect();
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(&data).expect("gzip");
    let gz = enc.finish().expect("gzip");
    assert!(gz.len() < data.len() / 4);

    let r = sbx.envd.request("POST", &files_url("/home/user/gz/text.txt"), &[("content-type", "application/octet-stream".into()), ("content-encoding", "gzip".into())], gz).await;
    assert_eq!(r.status, 200);
    assert_eq!(ok(&sbx, "stat -c %s:%U ~/gz/text.txt").await, format!("{}:user\n", data.len()), "stored decompressed");
    assert_eq!(ok(&sbx, "sha256sum < ~/gz/text.txt").await.split_whitespace().next(), Some(sha256_hex(&data).as_str()));

    // Multipart bodies can be gzip-encoded too.
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(&multipart(&[("file", Some("gz/part.txt"), b"from a gzipped form")])).expect("gzip");
    let r = sbx.envd.request("POST", "/files", &[("content-type", multipart_type()), ("content-encoding", "gzip".into())], enc.finish().expect("gzip")).await;
    assert_eq!(r.status, 200);
    assert_eq!(ok(&sbx, "cat ~/gz/part.txt").await, "from a gzipped form");

    let r = sbx.envd.request("GET", &files_url("/home/user/gz/text.txt"), &[("accept-encoding", "gzip".into())], "").await;
    assert_eq!(r.status, 200);
    assert_eq!(header(&r.headers, "content-encoding"), Some("gzip"));
    let compressed = r.bytes().await;
    assert!(compressed.len() < data.len() / 2, "really compressed: {} bytes", compressed.len());
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(&compressed[..]).read_to_end(&mut plain).expect("valid gzip");
    assert!(plain == data, "gzip download decompresses to the file");

    // Without asking, no compression; an unsupported coding only → 406.
    let (status, headers, body) = download(&sbx.envd, "/home/user/gz/text.txt").await;
    assert_eq!((status, body.len()), (200, data.len()));
    assert!(headers.get("content-encoding").is_none());
    let r = sbx.envd.request("GET", &files_url("/home/user/gz/text.txt"), &[("accept-encoding", "br".into())], "").await;
    assert_eq!(r.status, 406);

    // A corrupt gzip body fails and leaves no file behind.
    let r = sbx
        .envd
        .request("POST", &files_url("/home/user/gz/bad.txt"), &[("content-type", "application/octet-stream".into()), ("content-encoding", "gzip".into())], "definitely not gzip")
        .await;
    assert_eq!(r.status, 400);
    assert!(!exists(&sbx, "~/gz/bad.txt").await);
}

#[tokio::test]
async fn download_errors_are_envd_json() {
    let sbx = Sandbox::new();
    let r = sbx.envd.request("GET", &files_url("/home/user/nope.txt"), &[], "").await;
    assert_eq!(r.status, 404);
    assert_eq!(header(&r.headers, "content-type"), Some("application/json"));
    let v: Value = serde_json::from_slice(&r.bytes().await).expect("json");
    assert_eq!(v, json!({"code": 404, "message": "path '/home/user/nope.txt' does not exist"}));

    let r = sbx.envd.request("GET", &files_url("/home/user"), &[], "").await;
    assert_eq!(r.status, 400);
    let v: Value = serde_json::from_slice(&r.bytes().await).expect("json");
    assert_eq!(v, json!({"code": 400, "message": "path '/home/user' is a directory"}));

    // An unknown user is refused.
    let r = sbx.envd.request("GET", "/files?path=%2Fetc%2Fhostname&username=nobody-here", &[], "").await;
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn upload_as_root_is_owned_by_root() {
    let sbx = Sandbox::new();
    let r = sbx.envd.request("POST", "/files?path=%2Froot%2Fr%2Fx&username=root", &[("content-type", "application/octet-stream".into())], "r").await;
    assert_eq!(r.status, 200);
    let r = sbx.sh_as("root", "stat -c %U:%G /root/r /root/r/x").await;
    assert_eq!(r.stdout, "root:root\nroot:root\n", "{}", r.stderr);
    // `~` is the uploading user's home.
    let r = sbx.envd.request("POST", "/files?path=~%2Fhomed&username=root", &[("content-type", "application/octet-stream".into())], "h").await;
    assert_eq!(r.status, 200);
    let v: Value = serde_json::from_slice(&r.bytes().await).expect("json");
    assert_eq!(v[0]["path"], "/root/homed");
}

/// Streams `total` bytes of noise as the body of an upload, 1 MiB at a
/// time; the hash of what was sent comes back from the returned task.
fn noise_body(seed: u64, total: usize) -> (StreamBody<impl futures_util::Stream<Item = Result<Frame<Bytes>, std::io::Error>>>, tokio::task::JoinHandle<String>) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(2);
    let producer = tokio::spawn(async move {
        let mut noise = Noise(seed);
        let mut h = Sha256::new();
        let mut left = total;
        while left > 0 {
            let mut chunk = vec![0u8; left.min(1 << 20)];
            noise.fill(&mut chunk);
            h.update(&chunk);
            left -= chunk.len();
            if tx.send(Bytes::from(chunk)).await.is_err() {
                break;
            }
        }
        hex(&h.finalize())
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (Ok(Frame::data(c)), rx)) });
    (StreamBody::new(stream), producer)
}

#[tokio::test]
async fn hundred_mib_streams_both_ways_in_bounded_agent_memory() {
    const SIZE: usize = 100 << 20;
    let sbx = Sandbox::new();
    let pid = sbx.info.pid;
    // The process measured is the agent: PID 1 of the sandbox, serving the socket.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let nspid = status.lines().find_map(|l| l.strip_prefix("NSpid:")).expect("NSpid");
    assert_eq!(nspid.split_whitespace().last(), Some("1"), "{nspid}");
    let before = vm_rss_kib(pid);

    let rss = RssWatch::start(pid);
    let (body, producer) = noise_body(42, SIZE);
    let r = sbx.envd.request_body("POST", &files_url("/home/user/big.bin"), &[("content-type", "application/octet-stream".into())], body).await;
    let status = r.status;
    let v: Value = serde_json::from_slice(&r.bytes().await).unwrap_or(Value::Null);
    assert_eq!(status, 200, "{v}");
    let sent_hash = producer.await.expect("producer");
    let upload_peak = rss.finish().await;

    let inside = ok(&sbx, "stat -c %s ~/big.bin && sha256sum ~/big.bin").await;
    assert_eq!(inside, format!("{SIZE}\n{sent_hash}  /home/user/big.bin\n"));

    let rss = RssWatch::start(pid);
    let r = sbx.envd.request("GET", &files_url("/home/user/big.bin"), &[], "").await;
    assert_eq!(r.status, 200);
    assert_eq!(header(&r.headers, "content-length"), Some(SIZE.to_string().as_str()));
    let mut body = r.body;
    let (mut n, mut h) = (0usize, Sha256::new());
    while let Some(f) = body.frame().await {
        if let Ok(d) = f.expect("download frame").into_data() {
            n += d.len();
            h.update(&d);
        }
    }
    let download_peak = rss.finish().await;
    assert_eq!(n, SIZE);
    assert_eq!(hex(&h.finalize()), sent_hash);

    let after = vm_rss_kib(pid);
    eprintln!("agent RSS: before {before} KiB, upload peak {upload_peak} KiB, download peak {download_peak} KiB, after {after} KiB");
    // Streaming means the agent never holds more than a few chunks.
    for (what, kib) in [("upload", upload_peak), ("download", download_peak), ("after", after)] {
        assert!(kib < 40 * 1024, "agent RSS during {what}: {kib} KiB");
        assert!(kib < before + 24 * 1024, "agent RSS grew by {} KiB during {what}", kib.saturating_sub(before));
    }
}

#[tokio::test]
async fn hundred_mib_multipart_upload_streams_in_bounded_agent_memory() {
    // The JS SDK always uploads multipart: the part must be streamed too.
    const SIZE: usize = 100 << 20;
    let sbx = Sandbox::new();
    let pid = sbx.info.pid;
    let before = vm_rss_kib(pid);
    let head =
        Bytes::from(format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"/home/user/mp/big.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n"));
    let tail = Bytes::from(format!("\r\n--{BOUNDARY}--\r\n"));
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(2);
    let producer = tokio::spawn(async move {
        let (mut noise, mut h, mut left) = (Noise(7), Sha256::new(), SIZE);
        tx.send(head).await.expect("send head");
        while left > 0 {
            let mut chunk = vec![0u8; left.min(1 << 20)];
            noise.fill(&mut chunk);
            h.update(&chunk);
            left -= chunk.len();
            tx.send(Bytes::from(chunk)).await.expect("send chunk");
        }
        tx.send(tail).await.expect("send tail");
        hex(&h.finalize())
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (Ok::<_, std::io::Error>(Frame::data(c)), rx)) });
    let rss = RssWatch::start(pid);
    let r = sbx.envd.request_body("POST", "/files?username=user", &[("content-type", multipart_type())], StreamBody::new(stream)).await;
    let status = r.status;
    let v: Value = serde_json::from_slice(&r.bytes().await).unwrap_or(Value::Null);
    let peak = rss.finish().await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v, json!([{"path": "/home/user/mp/big.bin", "name": "big.bin", "type": "file"}]));
    let sent = producer.await.expect("producer");
    assert_eq!(ok(&sbx, "stat -c %s ~/mp/big.bin && sha256sum < ~/mp/big.bin").await, format!("{SIZE}\n{sent}  -\n"));
    eprintln!("agent RSS: before {before} KiB, multipart upload peak {peak} KiB");
    assert!(peak < 40 * 1024 && peak < before + 24 * 1024, "agent RSS peaked at {peak} KiB (from {before} KiB)");
}

#[tokio::test]
async fn upload_below_a_file_is_refused() {
    let sbx = Sandbox::new();
    ok(&sbx, "echo f > ~/plain").await;
    let (status, v) = upload(&sbx.envd, "/home/user/plain/inside.txt", "x").await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["code"], 400);
    assert_eq!(ok(&sbx, "cat ~/plain").await, "f\n");
}

// ------------------------------------------------------------------- auth

#[tokio::test]
async fn access_token_guards_rpc_and_files() {
    let sbx = Sandbox::with(|s| s.access_token = Some("tok".into()));
    let anon = Envd { token: None, ..sbx.envd.clone() };
    let wrong = Envd { token: Some("nope".into()), ..sbx.envd.clone() };

    let e = anon.unary("filesystem.Filesystem", "Stat", json!({"path": "/home/user"})).await.expect_err("no token");
    assert_eq!((e.status, e.code.as_str()), (401, "unauthenticated"));
    let e = wrong.unary("filesystem.Filesystem", "ListDir", json!({"path": "/home/user"})).await.expect_err("wrong token");
    assert_eq!((e.status, e.code.as_str()), (401, "unauthenticated"));
    let r = anon.request("POST", "/filesystem.Filesystem/WatchDir", &[("content-type", "application/connect+json".into())], &b"\0\0\0\0\x02{}"[..]).await;
    assert_eq!(r.status, 401);

    let r = anon.request("POST", &files_url("/home/user/t.txt"), &[("content-type", "application/octet-stream".into())], "x").await;
    assert_eq!(r.status, 401);
    assert_eq!(&r.bytes().await[..], br#"{"code":401,"message":"missing signature query parameter"}"#);
    assert!(!exists(&sbx, "~/t.txt").await, "refused upload wrote nothing");
    let r = wrong.request("GET", &files_url("/etc/hostname"), &[], "").await;
    assert_eq!(r.status, 401);
    let r = anon.request("GET", &files_url("/etc/hostname"), &[], "").await;
    assert_eq!(r.status, 401);
    // Health needs no token.
    assert_eq!(anon.request("GET", "/health", &[], "").await.status, 204);

    // With the token, everything works.
    stat(&sbx, "/home/user").await.expect("stat with token");
    let (status, _) = upload(&sbx.envd, "/home/user/t.txt", "tok ok").await;
    assert_eq!(status, 200);
    let (status, _, body) = download(&sbx.envd, "/home/user/t.txt").await;
    assert_eq!((status, &body[..]), (200, &b"tok ok"[..]));
}

#[tokio::test]
async fn signed_urls_replace_the_token_for_files() {
    let token = "s3cret-token";
    let sbx = Sandbox::with(|s| s.access_token = Some(token.into()));
    let anon = Envd { token: None, ..sbx.envd.clone() };
    let path = "/home/user/signed.txt";
    let url = |sig: &str, exp: Option<i64>| {
        let mut u = format!("{}&signature={}", files_url(path), qenc(sig));
        if let Some(e) = exp {
            u.push_str(&format!("&signature_expiration={e}"));
        }
        u
    };
    let octet = [("content-type", "application/octet-stream".to_string())];

    let w = sign(path, "write", "user", token, None);
    let r = anon.request("POST", &url(&w, None), &octet, "signed upload").await;
    assert_eq!(r.status, 200);
    assert_eq!(ok(&sbx, "cat ~/signed.txt").await, "signed upload");

    let rd = sign(path, "read", "user", token, None);
    let r = anon.request("GET", &url(&rd, None), &[], "").await;
    assert_eq!(r.status, 200);
    assert_eq!(&r.bytes().await[..], b"signed upload");

    let invalid = br#"{"code":401,"message":"invalid signature"}"#;
    // A read signature does not allow writing, nor a wrong token or path.
    for (method, sig) in [
        ("POST", rd.clone()),
        ("GET", w.clone()),
        ("GET", sign(path, "read", "user", "other-token", None)),
        ("GET", sign("/home/user/other.txt", "read", "user", token, None)),
        ("GET", "v1_garbage".to_string()),
    ] {
        let r = anon.request(method, &url(&sig, None), &octet, "nope").await;
        assert_eq!(r.status, 401, "{method} with {sig}");
        assert_eq!(&r.bytes().await[..], invalid);
    }
    assert_eq!(ok(&sbx, "cat ~/signed.txt").await, "signed upload", "refused writes changed nothing");

    // Expiring signatures: valid before, refused after.
    let later = unix_now() + 600;
    let r = anon.request("GET", &url(&sign(path, "read", "user", token, Some(later)), Some(later)), &[], "").await;
    assert_eq!(r.status, 200);
    let past = unix_now() - 10;
    let r = anon.request("GET", &url(&sign(path, "read", "user", token, Some(past)), Some(past)), &[], "").await;
    assert_eq!(r.status, 401);
    assert_eq!(&r.bytes().await[..], br#"{"code":401,"message":"signature is already expired"}"#);
    // The expiration is part of what is signed.
    let r = anon.request("GET", &url(&sign(path, "read", "user", token, Some(past)), Some(later)), &[], "").await;
    assert_eq!(r.status, 401);
    assert_eq!(&r.bytes().await[..], invalid);
}

// ------------------------------------------------------------ robustness

#[tokio::test]
async fn client_disconnecting_mid_transfer_does_not_break_the_agent() {
    let sbx = Sandbox::new();

    // An upload whose client vanishes after 1 MiB of a promised 64 MiB.
    let mut sock = tokio::net::UnixStream::connect(&sbx.envd.socket).await.expect("connect");
    let head = format!("POST {} HTTP/1.1\r\nHost: sandbox\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n", files_url("/home/user/partial.bin"), 64 << 20);
    tokio::io::AsyncWriteExt::write_all(&mut sock, head.as_bytes()).await.expect("write head");
    tokio::io::AsyncWriteExt::write_all(&mut sock, &Noise::bytes(3, 1 << 20)).await.expect("write some body");
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(sock);

    // The same through hyper, with a chunked body that errors out mid-way:
    // hyper then closes the connection without the terminating chunk.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(2);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
    let sock = tokio::net::UnixStream::connect(&sbx.envd.socket).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(sock)).await.expect("handshake");
    let conn = tokio::spawn(conn);
    let req = http::Request::post(format!("http://sandbox{}", files_url("/home/user/partial2.bin")))
        .header("host", "sandbox")
        .header("content-type", "application/octet-stream")
        .body(StreamBody::new(stream))
        .expect("request");
    let sending = tokio::spawn(async move { sender.send_request(req).await.map(|r| r.status()) });
    tx.send(Ok(Frame::data(Bytes::from(Noise::bytes(4, 1 << 20))))).await.expect("send chunk");
    tx.send(Err(std::io::Error::other("client gave up"))).await.expect("send error");
    drop(tx);
    let sent = tokio::time::timeout(Duration::from_secs(20), sending).await.expect("request settles").expect("task");
    assert!(sent.is_err(), "the request failed on the client side: {sent:?}");
    let _ = conn.await;

    // A multipart upload cut off inside its second part: the first file is
    // complete and stays, the half-written second one is removed.
    let mut sock = tokio::net::UnixStream::connect(&sbx.envd.socket).await.expect("connect");
    let mut body = multipart(&[("file", Some("/home/user/mp-first.txt"), b"complete")]);
    body.truncate(body.len() - format!("--{BOUNDARY}--\r\n").len());
    body.extend_from_slice(format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"/home/user/mp-second.bin\"\r\n\r\n").as_bytes());
    body.extend_from_slice(&Noise::bytes(5, 1 << 20));
    let head = format!("POST /files HTTP/1.1\r\nHost: sandbox\r\nContent-Type: {}\r\nContent-Length: {}\r\n\r\n", multipart_type(), 32 << 20);
    tokio::io::AsyncWriteExt::write_all(&mut sock, head.as_bytes()).await.expect("write head");
    tokio::io::AsyncWriteExt::write_all(&mut sock, &body).await.expect("write some body");
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(sock);

    // A download abandoned after the first chunk.
    ok(&sbx, "head -c 50000000 /dev/zero > ~/zeros.bin").await;
    let r = sbx.envd.request("GET", &files_url("/home/user/zeros.bin"), &[], "").await;
    assert_eq!(r.status, 200);
    let mut body = r.body;
    body.frame().await.expect("first frame").expect("data");
    drop(body);

    // The agent carries on, and the half-written files it created are gone.
    for _ in 0..50 {
        if ["partial.bin", "partial2.bin", "mp-second.bin"].iter().all(|f| !std::path::Path::new(&format!("/proc/{}/root/home/user/{f}", sbx.info.pid)).exists()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for f in ["partial.bin", "partial2.bin", "mp-second.bin"] {
        assert!(!exists(&sbx, &format!("~/{f}")).await, "aborted upload of {f} removed");
    }
    assert_eq!(ok(&sbx, "cat ~/mp-first.txt").await, "complete", "the finished part stays");
    let (status, _) = upload(&sbx.envd, "/home/user/after.txt", "still fine").await;
    assert_eq!(status, 200);
    let (status, _, body) = download(&sbx.envd, "/home/user/after.txt").await;
    assert_eq!((status, &body[..]), (200, &b"still fine"[..]));
    assert_eq!(stat(&sbx, "zeros.bin").await.expect("stat")["size"], "50000000");
    assert_eq!(sbx.sh("echo alive").await.stdout, "alive\n");
}
