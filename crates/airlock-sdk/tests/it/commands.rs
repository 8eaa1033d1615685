//! Commands and PTYs through the SDK: results and exit codes, options,
//! callbacks, event streams, background handles with stdin and kill,
//! reattach by pid and tag, timeouts, and errors.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airlock_sdk::{Code, CommandEvent, Error, PtySize, Signal};
use futures_util::StreamExt;

use crate::support::Server;

#[tokio::test]
async fn run_returns_output_and_nonzero_exit_is_a_typed_error() {
    let srv = Server::start();
    let sbx = srv.sandbox().await;
    let r = sbx.commands().run("echo out; echo err >&2").await.expect("run");
    assert_eq!((r.exit_code, r.stdout.as_str(), r.stderr.as_str()), (0, "out\n", "err\n"));

    match sbx.commands().run("echo partial; echo oops >&2; exit 3").await {
        Err(Error::CommandExit { exit_code, stdout, stderr }) => {
            assert_eq!((exit_code, stdout.as_str(), stderr.as_str()), (3, "partial\n", "oops\n"));
        }
        other => panic!("expected CommandExit, got {other:?}"),
    }
    // The stream's wait() reports the code without turning it into an error.
    let r = sbx.commands().command("exit 7").stream().await.expect("start").wait().await.expect("wait");
    assert_eq!(r.exit_code, 7);
    assert!(r.error.as_deref().is_some_and(|e| e.contains('7')), "{r:?}");

    // Large output arrives whole.
    let r = sbx.commands().run("seq 1 200000").await.expect("seq");
    assert_eq!(r.stdout.lines().count(), 200000);
    assert_eq!(r.stdout.lines().last(), Some("200000"));
}

#[tokio::test]
async fn env_cwd_user_and_argv() {
    let srv = Server::start();
    let sbx = srv.sandbox().await;
    let r = sbx.commands().command("echo \"$A $B\"; pwd; id -un").env("A", "1").envs([("B", "two words")]).cwd("/tmp").run().await.expect("run");
    assert_eq!(r.stdout, "1 two words\n/tmp\nuser\n");
    let r = sbx.commands().command("id -un; echo ~").user("root").run().await.expect("root");
    assert_eq!(r.stdout, "root\n/root\n");
    // exec() passes arguments as they are, no shell in between.
    let r = sbx.commands().exec("printf", ["%s|", "a b", "$HOME", "c"]).run().await.expect("exec");
    assert_eq!(r.stdout, "a b|$HOME|c|");
}

#[tokio::test]
async fn callbacks_see_output_as_it_comes_with_whole_characters() {
    let srv = Server::start();
    let sbx = srv.sandbox().await;
    let out = Arc::new(Mutex::new(Vec::<(Instant, String)>::new()));
    let err = Arc::new(Mutex::new(String::new()));
    let (o, e) = (out.clone(), err.clone());
    // Each € is 3 bytes, written one byte at a time: callbacks never see half of one.
    let cmd = "for i in 1 2 3; do printf '\\342'; sleep 0.05; printf '\\202\\254'; echo \" $i\"; sleep 0.3; done; echo bad >&2";
    let r = sbx
        .commands()
        .command(cmd)
        .on_stdout(move |s| o.lock().expect("lock").push((Instant::now(), s.to_string())))
        .on_stderr(move |s| e.lock().expect("lock").push_str(s))
        .run()
        .await
        .expect("run");
    assert_eq!(r.stdout, "€ 1\n€ 2\n€ 3\n");
    let chunks = out.lock().expect("lock").clone();
    let joined: String = chunks.iter().map(|(_, s)| s.as_str()).collect();
    assert_eq!(joined, r.stdout);
    assert!(!joined.contains('\u{fffd}'), "no replacement characters: {chunks:?}");
    assert!(chunks.len() >= 3, "output arrived in pieces: {chunks:?}");
    let spread = chunks.last().expect("last").0 - chunks[0].0;
    assert!(spread >= Duration::from_millis(500), "callbacks ran while the command ran ({spread:?})");
    assert_eq!(*err.lock().expect("lock"), "bad\n");
}

#[tokio::test]
async fn event_stream_yields_output_then_exit() {
    let srv = Server::start();
    let sbx = srv.sandbox().await;
    let mut s = sbx.commands().command("echo one; sleep 0.5; echo two >&2; exit 4").stream().await.expect("stream");
    assert!(s.pid() > 1);
    let t0 = Instant::now();
    let mut events = Vec::new();
    while let Some(ev) = s.next().await {
        events.push((t0.elapsed(), ev.expect("event")));
    }
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(events[0].1, CommandEvent::Stdout(b"one\n".to_vec()));
    assert_eq!(events[1].1, CommandEvent::Stderr(b"two\n".to_vec()));
    assert!(events[0].0 + Duration::from_millis(300) < events[1].0, "the first chunk came before the command ended");
    match &events[2].1 {
        CommandEvent::Exit(end) => assert_eq!((end.exit_code, end.exited), (4, true)),
        other => panic!("last event {other:?}"),
    }
}

#[tokio::test]
async fn background_handles_take_stdin_and_can_be_killed() {
    let srv = Server::start();
    let sbx = srv.sandbox().await;
    let h = sbx.commands().command("read line; echo got:$line; cat").stdin(true).spawn().await.expect("spawn");
    h.send_stdin("hello\n").await.expect("stdin");
    h.send_stdin("rest of it").await.expect("stdin");
    h.close_stdin().await.expect("close");
    let r = h.wait().await.expect("wait");
    assert_eq!(r.stdout, "got:hello\nrest of it");

    let h = sbx.commands().command("sleep 600").no_timeout().spawn().await.expect("spawn");
    let pid = h.pid();
    let listed = sbx.commands().list().await.expect("list");
    let me = listed.iter().find(|p| p.pid == pid).expect("listed");
    assert_eq!(me.config.args.last().map(String::as_str), Some("sleep 600"));
    h.kill().await.expect("kill");
    match h.wait().await {
        Err(Error::CommandExit { exit_code, .. }) => assert_eq!(exit_code, -1, "killed by a signal"),
        other => panic!("expected CommandExit, got {other:?}"),
    }
    // SIGTERM through the process handle.
    let h = sbx.commands().command("sleep 600").spawn().await.expect("spawn");
    h.process().signal(Signal::Sigterm).await.expect("term");
    let r = tokio::time::timeout(Duration::from_secs(10), h.wait()).await.expect("ended");
    assert!(matches!(r, Err(Error::CommandExit { .. })), "{r:?}");

    // Dropping a handle does not block and does not kill the process.
    let h = sbx.commands().command("sleep 600").no_timeout().spawn().await.expect("spawn");
    let pid = h.pid();
    let t = Instant::now();
    drop(h);
    assert!(t.elapsed() < Duration::from_millis(100));
    assert!(sbx.commands().list().await.expect("list").iter().any(|p| p.pid == pid));
    sbx.commands().kill(pid).await.expect("kill by pid");
}

#[tokio::test]
async fn reattach_by_pid_and_tag_replays_and_follows() {
    let srv = Server::start();
    let sbx = srv.sandbox().await;
    let h = sbx.commands().command("for i in 1 2 3 4 5; do echo tick$i; sleep 0.3; done").tag("ticker").spawn().await.expect("spawn");
    let pid = h.pid();
    tokio::time::sleep(Duration::from_millis(500)).await;
    h.disconnect();

    // Reattached mid-run: earlier output is replayed, the rest follows.
    let r = sbx.commands().connect(pid).await.expect("connect").wait().await.expect("wait");
    assert_eq!(r.stdout, "tick1\ntick2\ntick3\ntick4\ntick5\n");
    assert_eq!(r.exit_code, 0);
    // After the end, reattaching replays output and the end again.
    let s = sbx.commands().connect_tag("ticker").await.expect("by tag");
    assert_eq!(s.pid(), pid);
    assert_eq!(s.wait().await.expect("wait").stdout, r.stdout);

    // A second watcher on a live process, by tag, with callbacks.
    let h = sbx.commands().command("sleep 1; echo late").tag("late").spawn().await.expect("spawn");
    let seen = Arc::new(Mutex::new(String::new()));
    let s2 = seen.clone();
    let h2 = sbx.commands().connect_tag("late").await.expect("attach").into_handle_with_callbacks(move |s| s2.lock().expect("lock").push_str(s), |_| {});
    assert_eq!(h2.pid(), h.pid());
    assert_eq!(h2.wait().await.expect("wait").stdout, "late\n");
    assert_eq!(*seen.lock().expect("lock"), "late\n");
    assert_eq!(h.wait().await.expect("wait").stdout, "late\n");

    assert!(matches!(sbx.commands().connect(999_999).await, Err(Error::NotFound(_))));
    assert!(matches!(sbx.commands().connect_tag("nobody").await, Err(Error::NotFound(_))));
}

#[tokio::test]
async fn timeouts_and_start_errors_are_typed() {
    let srv = Server::start();
    let sbx = srv.sandbox().await;
    let t = Instant::now();
    let e = sbx.commands().command("sleep 30").timeout(Duration::from_secs(1)).run().await.expect_err("timeout");
    assert!(matches!(e, Error::Timeout(_)), "{e:?}");
    assert!(t.elapsed() < Duration::from_secs(10));

    let e = sbx.commands().command("true").cwd("/does/not/exist").run().await.expect_err("cwd");
    assert!(matches!(e, Error::Sandbox(ref c) if c.code == Code::InvalidArgument && c.message.contains("/does/not/exist")), "{e:?}");
    let e = sbx.commands().exec("/no/such/program", Vec::<String>::new()).run().await.expect_err("exe");
    assert!(matches!(e, Error::Sandbox(ref c) if c.message.contains("not found")), "{e:?}");
    assert!(matches!(sbx.commands().kill(999_999).await, Err(Error::NotFound(_))));
    assert!(matches!(sbx.commands().send_stdin(999_999, "x").await, Err(Error::NotFound(_))));
    let e = sbx.commands().command("true").user("nobody-here").run().await.expect_err("user");
    assert!(matches!(e, Error::Auth(_) | Error::Sandbox(_)), "{e:?}");
}

#[tokio::test]
async fn pty_takes_input_resizes_and_exits() {
    let srv = Server::start();
    let sbx = srv.sandbox().await;
    let screen = Arc::new(Mutex::new(Vec::<u8>::new()));
    let sc = screen.clone();
    let h = sbx.pty().create(PtySize { cols: 80, rows: 24 }).on_pty(move |b| sc.lock().expect("lock").extend_from_slice(b)).spawn().await.expect("pty");
    let pid = h.pid();
    let wait_for = |needle: &'static str| {
        let screen = screen.clone();
        async move {
            for _ in 0..100 {
                if String::from_utf8_lossy(&screen.lock().expect("lock")).contains(needle) {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            false
        }
    };
    sbx.pty().send_input(pid, "echo tty-$((6*7)); tty\n").await.expect("input");
    assert!(wait_for("tty-42").await, "{}", String::from_utf8_lossy(&screen.lock().expect("lock")));
    assert!(wait_for("/dev/pts/").await, "a real terminal");
    sbx.pty().resize(pid, PtySize { cols: 123, rows: 45 }).await.expect("resize");
    sbx.pty().send_input(pid, "stty size\n").await.expect("input");
    assert!(wait_for("45 123").await, "{}", String::from_utf8_lossy(&screen.lock().expect("lock")));
    sbx.pty().send_input(pid, "exit 5\n").await.expect("exit");
    match tokio::time::timeout(Duration::from_secs(10), h.wait()).await.expect("ended") {
        Err(Error::CommandExit { exit_code, .. }) => assert_eq!(exit_code, 5),
        other => panic!("{other:?}"),
    }

    // The stream form: PTY output arrives as Pty events.
    let mut s = sbx.pty().create_command("/bin/sh", ["-c", "printf 'a\\nb'"], PtySize { cols: 10, rows: 5 }).stream().await.expect("stream");
    let mut out = Vec::new();
    while let Some(ev) = s.next().await {
        match ev.expect("event") {
            CommandEvent::Pty(d) => out.extend(d),
            CommandEvent::Exit(end) => assert_eq!(end.exit_code, 0),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(out, b"a\r\nb", "the terminal turns \\n into \\r\\n");
}
