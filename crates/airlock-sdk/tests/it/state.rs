//! Snapshots, forks, the filesystem-only pause, resets, restart and
//! export/import through the SDK.

use std::time::Duration;

use airlock_sdk::{Error, RestartOptions, Sandbox};

use crate::support::Server;

const BOOT_ID: &str = "cat /proc/sys/kernel/random/boot_id";

#[tokio::test]
async fn snapshot_fork_and_filesystem_pause_through_the_sdk() {
    let srv = Server::start();
    let client = srv.client();
    let sbx = srv.sandbox().await;
    sbx.files().write("/home/user/f", "v1").await.expect("write");
    let snap = sbx.snapshot(Some("sdk-snap")).await.expect("snapshot");
    assert_eq!(snap.snapshot_id, "sdk-snap:default");
    assert_eq!(snap.mode, "filesystem");
    let listed = client.snapshots(Some(sbx.id())).await.expect("list");
    assert_eq!(listed.iter().map(|s| s.snapshot_id.as_str()).collect::<Vec<_>>(), vec!["sdk-snap:default"]);

    let from = Sandbox::builder().client(&client).template(&snap.snapshot_id).allow_internet_access(false).create().await.expect("from snapshot");
    assert_eq!(from.files().read_to_string("/home/user/f").await.expect("read"), "v1");

    let forks = sbx.fork(2, Some(Duration::from_secs(60))).await.expect("fork");
    assert_eq!(forks.len(), 2);
    for f in &forks {
        let f = f.as_ref().expect("fork started");
        assert_eq!(f.files().read_to_string("/home/user/f").await.expect("read"), "v1");
    }
    assert!(matches!(sbx.fork(0, None).await, Err(Error::Http { status: 400, .. })));

    let boot = sbx.commands().run(BOOT_ID).await.expect("boot id").stdout;
    assert!(sbx.pause_filesystem().await.expect("pause"));
    assert!(!sbx.pause_filesystem().await.expect("again"), "already paused");
    sbx.resume(None).await.expect("resume");
    assert_ne!(sbx.commands().run(BOOT_ID).await.expect("boot id").stdout, boot);
    assert_eq!(sbx.files().read_to_string("/home/user/f").await.expect("read"), "v1");

    assert!(!client.delete_snapshot("nosuch:default").await.expect("delete unknown"));
    assert!(matches!(client.delete_snapshot(&snap.snapshot_id).await, Err(Error::Http { status: 409, .. })), "in use");
    from.kill().await.expect("kill");
    assert!(client.delete_snapshot(&snap.snapshot_id).await.expect("delete"));
}

#[tokio::test]
async fn reset_restart_and_export_import_through_the_sdk() {
    let srv = Server::start();
    let client = srv.client();
    let sbx = srv.sandbox().await;
    sbx.files().write("/home/user/keep", "x").await.expect("write");
    sbx.commands().run("sleep 600 &").await.expect("background");
    sbx.reset(false).await.expect("soft reset");
    assert_eq!(sbx.commands().run("pgrep -c sleep || true").await.expect("pgrep").stdout, "0\n");
    assert_eq!(sbx.files().read_to_string("/home/user/keep").await.expect("read"), "x");

    let mut opts = RestartOptions { memory_mb: Some(256), ..Default::default() };
    opts.envs.insert("AFTER".into(), "restart".into());
    sbx.restart(opts).await.expect("restart");
    assert_eq!(sbx.commands().run("echo $AFTER").await.expect("env").stdout, "restart\n");
    assert_eq!(sbx.info().await.expect("info").memory_mb, 256);

    let mut archive = Vec::new();
    let n = sbx.export(&mut archive).await.expect("export");
    assert_eq!(n as usize, archive.len());
    let copy = client.import(std::io::Cursor::new(archive), Some(Duration::from_secs(60)), false).await.expect("import");
    assert_ne!(copy.id(), sbx.id());
    assert_eq!(copy.files().read_to_string("/home/user/keep").await.expect("read"), "x");
    assert!(matches!(client.import(std::io::Cursor::new(b"junk".to_vec()), None, false).await, Err(Error::Http { status: 400, .. })));

    sbx.reset(true).await.expect("hard reset");
    assert!(!sbx.files().exists("/home/user/keep").await.expect("exists"), "back to the template");
}

#[tokio::test]
async fn events_follow_a_sandbox_and_resume_after_an_id() {
    use futures_util::StreamExt;
    let srv = Server::start();
    let client = srv.client();
    let sbx = srv.sandbox().await;
    let id = sbx.id().to_string();
    sbx.pause().await.expect("pause");
    sbx.kill().await.expect("kill");
    let q = airlock_sdk::EventQuery { sandbox: Some(id.clone()), ..Default::default() };
    let mut s = client.events(&q).await.expect("events");
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let e = tokio::time::timeout(Duration::from_secs(10), s.next()).await.expect("in time").expect("open").expect("event");
        assert_eq!(e.sandbox_id, id);
        seen.push(e);
    }
    assert_eq!(seen.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(), ["created", "ready", "paused", "killed", "destroyed"]);
    let q = airlock_sdk::EventQuery { sandbox: Some(id.clone()), after: Some(seen[2].id), kinds: vec!["destroyed".into()], ..Default::default() };
    let mut s = client.events(&q).await.expect("events");
    let e = tokio::time::timeout(Duration::from_secs(10), s.next()).await.expect("in time").expect("open").expect("event");
    assert_eq!((e.kind.as_str(), e.id), ("destroyed", seen[4].id));
}
