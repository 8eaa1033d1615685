//! Files through the SDK: bytes and text, streamed uploads and downloads,
//! the filesystem RPCs, watches, signed URLs, users, and errors.

use std::io::{Read, Write};
use std::time::Duration;

use airlock_sdk::{Code, Error, EventType, FileType};
use bytes::Bytes;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use crate::support::Server;

#[tokio::test]
async fn write_and_read_bytes_and_text() {
    let srv = Server::start();
    let sbx = srv.sandbox().await;
    let f = sbx.files();
    let all: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let w = f.write("/tmp/bin/deep/all.bin", all.clone()).await.expect("write");
    assert_eq!((w.path.as_str(), w.name.as_str(), w.kind.as_str()), ("/tmp/bin/deep/all.bin", "all.bin", "file"));
    assert_eq!(f.read("/tmp/bin/deep/all.bin").await.expect("read"), all);

    // Relative paths are under the user's home, and the file is the user's.
    f.write("notes.txt", "héllo\n").await.expect("write text");
    assert_eq!(f.read_to_string("/home/user/notes.txt").await.expect("read"), "héllo\n");
    let st = f.stat("notes.txt").await.expect("stat");
    assert_eq!((st.owner.as_str(), st.size, st.file_type), ("user", 7, FileType::File));
    let r = sbx.commands().run("cat ~/notes.txt").await.expect("cat");
    assert_eq!(r.stdout, "héllo\n");

    // Empty files and overwrites.
    f.write("notes.txt", Bytes::new()).await.expect("truncate");
    assert_eq!(f.read("notes.txt").await.expect("read"), b"");
}

#[tokio::test]
async fn streamed_upload_and_download_of_a_large_file() {
    let srv = Server::start();
    let sbx = srv.sandbox().await;
    const MIB: usize = 1 << 20;
    const SIZE: usize = 24 * MIB;
    let mut want = Sha256::new();
    let chunks: Vec<Bytes> = (0..SIZE / MIB)
        .map(|i| {
            let c: Vec<u8> = (0..MIB).map(|j| ((i * 7 + j * 13) % 251) as u8).collect();
            want.update(&c);
            Bytes::from(c)
        })
        .collect();
    let want = want.finalize();
    let up = futures_util::stream::iter(chunks.into_iter().map(Ok));
    sbx.files().write_stream("/tmp/big.bin", up, Some(SIZE as u64)).await.expect("upload");
    assert_eq!(sbx.files().stat("/tmp/big.bin").await.expect("stat").size, SIZE as i64);

    let mut down = sbx.files().read_stream("/tmp/big.bin").await.expect("download");
    let (mut got, mut n, mut pieces) = (Sha256::new(), 0usize, 0);
    while let Some(c) = down.next().await {
        let c = c.expect("chunk");
        n += c.len();
        pieces += 1;
        got.update(&c);
    }
    assert_eq!(n, SIZE);
    assert!(pieces > 1, "downloaded chunk by chunk");
    assert_eq!(got.finalize(), want);
    let r = sbx.commands().run("sha256sum /tmp/big.bin").await.expect("sum");
    assert!(r.stdout.starts_with(&format!("{want:x}")), "{}", r.stdout);

    // Without a length (chunked), from a reader.
    let tmp = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(tmp.path(), b"from a local file").expect("local");
    let file = tokio::fs::File::open(tmp.path()).await.expect("open");
    sbx.files().write_reader("/tmp/from-reader", file, None).await.expect("reader");
    assert_eq!(sbx.files().read("/tmp/from-reader").await.expect("read"), b"from a local file");

    // A stream that fails half-way leaves no file behind.
    let failing = futures_util::stream::iter(vec![Ok(Bytes::from_static(b"partial")), Err(std::io::Error::other("disk on fire"))]);
    let e = sbx.files().write_stream("/tmp/broken", failing, None).await.expect_err("broken upload");
    assert!(matches!(e, Error::Connection { .. } | Error::Http { .. }), "{e:?}");
    let gone = crate::support::eventually(5, async || !sbx.files().exists("/tmp/broken").await.expect("exists")).await;
    assert!(gone, "a failed upload leaves no partial file");
}

#[tokio::test]
async fn filesystem_operations() {
    let srv = Server::start();
    let sbx = srv.sandbox().await;
    let f = sbx.files();
    assert!(f.make_dir("/tmp/t/a/b").await.expect("mkdir"), "creates with parents");
    assert!(!f.make_dir("/tmp/t/a/b").await.expect("mkdir again"), "false when it exists");
    f.write("/tmp/t/top.txt", "1").await.expect("write");
    f.write("/tmp/t/a/mid.txt", "22").await.expect("write");
    f.write("/tmp/t/a/b/low.txt", "333").await.expect("write");

    let names = |v: Vec<airlock_sdk::EntryInfo>| {
        let mut n: Vec<String> = v.into_iter().map(|e| e.path).collect();
        n.sort();
        n
    };
    assert_eq!(names(f.list("/tmp/t").await.expect("list")), vec!["/tmp/t/a", "/tmp/t/top.txt"]);
    assert_eq!(names(f.list_depth("/tmp/t", 3).await.expect("deep")), vec!["/tmp/t/a", "/tmp/t/a/b", "/tmp/t/a/b/low.txt", "/tmp/t/a/mid.txt", "/tmp/t/top.txt"]);
    assert!(matches!(f.list_depth("/tmp/t", 0).await, Err(Error::Config(_))));
    let d = f.stat("/tmp/t/a").await.expect("stat dir");
    assert_eq!((d.file_type, d.name.as_str()), (FileType::Directory, "a"));
    assert!(d.permissions.starts_with('d'), "{d:?}");

    assert!(f.exists("/tmp/t/top.txt").await.expect("exists"));
    assert!(!f.exists("/tmp/t/nope").await.expect("exists"));
    let moved = f.rename("/tmp/t/top.txt", "/tmp/t/a/renamed.txt").await.expect("rename");
    assert_eq!(moved.path, "/tmp/t/a/renamed.txt");
    assert!(!f.exists("/tmp/t/top.txt").await.expect("exists"));
    assert_eq!(f.read_to_string("/tmp/t/a/renamed.txt").await.expect("read"), "1");
    f.remove("/tmp/t/a").await.expect("remove tree");
    assert!(!f.exists("/tmp/t/a/b/low.txt").await.expect("exists"));

    // Errors.
    assert!(matches!(f.read("/tmp/t/nope").await, Err(Error::NotFound(_))));
    assert!(matches!(f.stat("/tmp/t/nope").await, Err(Error::NotFound(_))));
    assert!(matches!(f.list("/tmp/t/nope").await, Err(Error::NotFound(_))));
    assert!(matches!(f.rename("/tmp/t/nope", "/tmp/t/x").await, Err(Error::NotFound(_))));
    let e = f.read("/tmp/t").await.expect_err("read a directory");
    assert_eq!(e.status(), Some(400), "{e:?}");
    f.write("/tmp/t/file", "x").await.expect("write");
    let e = f.make_dir("/tmp/t/file").await.expect_err("mkdir over a file");
    assert!(matches!(e, Error::Sandbox(ref c) if c.code == Code::InvalidArgument), "{e:?}");
}

#[tokio::test]
async fn users_decide_what_is_allowed() {
    let srv = Server::start();
    let sbx = srv.sandbox().await;
    // Like envd, the agent writes on the user's behalf and hands the file to them.
    sbx.files().write("/tmp/mine", "x").await.expect("write");
    assert_eq!(sbx.files().stat("/tmp/mine").await.expect("stat").owner, "user");
    let root = sbx.files().user("root");
    root.write("/root/secret", "x").await.expect("root can");
    assert_eq!(root.stat("/root/secret").await.expect("stat").owner, "root");
    assert_eq!(root.read_to_string("/root/secret").await.expect("read"), "x");
    // Relative paths follow the acting user's home.
    root.write("rel.txt", "r").await.expect("write");
    assert!(root.exists("/root/rel.txt").await.expect("exists"));
    assert!(!sbx.files().exists("/home/user/rel.txt").await.expect("exists"));
    let e = sbx.files().user("nobody-here").read("/tmp/mine").await.expect_err("unknown user");
    assert!(matches!(e, Error::Auth(_) | Error::Http { .. } | Error::Sandbox(_)), "{e:?}");
}

#[tokio::test]
async fn watch_streams_events_recursively() {
    let srv = Server::start();
    let sbx = srv.sandbox().await;
    let f = sbx.files();
    f.make_dir("/tmp/w").await.expect("mkdir");
    let mut w = f.watch("/tmp/w").recursive(true).start().await.expect("watch");
    f.write("/tmp/w/one.txt", "1").await.expect("write");
    f.make_dir("/tmp/w/sub").await.expect("mkdir");
    // Give the watcher a moment to add the new directory.
    tokio::time::sleep(Duration::from_millis(300)).await;
    f.write("/tmp/w/sub/two.txt", "2").await.expect("write");
    f.remove("/tmp/w/one.txt").await.expect("remove");

    let mut seen = Vec::new();
    let want = |seen: &Vec<(String, EventType)>| {
        seen.iter().any(|(n, t)| n == "one.txt" && *t == EventType::Create)
            && seen.iter().any(|(n, t)| n == "sub/two.txt" && matches!(t, EventType::Create | EventType::Write))
            && seen.iter().any(|(n, t)| n == "one.txt" && *t == EventType::Remove)
    };
    while !want(&seen) {
        match tokio::time::timeout(Duration::from_secs(10), w.next()).await {
            Ok(Some(ev)) => {
                let ev = ev.expect("event");
                seen.push((ev.name, ev.event_type));
            }
            other => panic!("watch ended or stalled ({other:?}); saw {seen:?}"),
        }
    }
    drop(w);

    let e = f.watch("/tmp/not-there").start().await.expect_err("missing dir");
    assert!(e.is_not_found(), "{e:?}");
}

/// A plain HTTP request with no SDK headers at all.
fn raw(port: u16, method: &str, path_and_query: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let head = format!(
        "{method} {path_and_query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).expect("head");
    s.write_all(body).expect("body");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).expect("read");
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n").expect("headers") + 4;
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status");
    let mut body = buf[split..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    (status, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else { return out };
        let n = usize::from_str_radix(std::str::from_utf8(&b[..eol]).expect("size").trim(), 16).expect("hex");
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[eol + 2 + n + 2..];
    }
}

#[tokio::test]
async fn signed_urls_work_without_headers() {
    let srv = Server::start();
    let sbx = srv.sandbox().await;
    sbx.files().write("/tmp/shared.txt", "for anyone with the link").await.expect("write");
    let url = sbx.files().download_url("/tmp/shared.txt", None);
    let pq = url.strip_prefix(&srv.url()).expect("same base");
    assert!(pq.contains("signature=v1_"), "{url}");
    let port = srv.port;
    let pq2 = pq.to_string();
    let (status, body) = tokio::task::spawn_blocking(move || raw(port, "GET", &pq2, b"")).await.expect("join");
    assert_eq!((status, body.as_slice()), (200, b"for anyone with the link".as_slice()));

    let up = sbx.files().upload_url("/tmp/uploaded.txt", Some(Duration::from_secs(60)));
    let up_pq = up.strip_prefix(&srv.url()).expect("base").to_string();
    assert!(up_pq.contains("signature_expiration="), "{up}");
    let (status, _) = tokio::task::spawn_blocking(move || raw(port, "POST", &up_pq, b"posted")).await.expect("join");
    assert_eq!(status, 200);
    assert_eq!(sbx.files().read("/tmp/uploaded.txt").await.expect("read"), b"posted");

    // A read signature does not allow writing, and a tampered one nothing.
    let wrong_op = pq.replace("shared.txt", "uploaded.txt");
    let (status, _) = tokio::task::spawn_blocking(move || raw(port, "GET", &wrong_op, b"")).await.expect("join");
    assert_eq!(status, 401);
    // An expired signature is refused.
    let short = sbx.files().download_url("/tmp/shared.txt", Some(Duration::from_secs(1)));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let short_pq = short.strip_prefix(&srv.url()).expect("base").to_string();
    let (status, body) = tokio::task::spawn_blocking(move || raw(port, "GET", &short_pq, b"")).await.expect("join");
    assert_eq!(status, 401, "{}", String::from_utf8_lossy(&body));
}
