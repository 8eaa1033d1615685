//! `process.Process` against a real sandbox: commands, users, environment,
//! background processes and reattach, stdin, signals, PTYs.

use std::time::Duration;

use airlock_testkit::envd::*;
use serde_json::json;

use crate::support::*;

fn start_req(cmd: &str) -> serde_json::Value {
    json!({"process": {"cmd": "/bin/bash", "args": ["-l", "-c", cmd]}, "stdin": false})
}

#[tokio::test]
async fn commands_run_as_user_with_the_documented_environment() {
    let sbx = Sandbox::with(|s| s.env = env_map(&[("GLOBAL_VAR", "from-create")]));
    let r = sbx.sh("id -un; echo $HOME; echo $USER; pwd; echo $GLOBAL_VAR").await;
    assert_eq!(r.stdout, "user\n/home/user\nuser\n/home/user\nfrom-create\n");
    let r = sbx.sh_as("root", "id -u; echo $HOME").await;
    assert_eq!(r.stdout, "0\n/root\n");
    let r = sbx
        .envd
        .run_with(json!({"process": {"cmd": "/bin/bash", "args": ["-c", "echo $GLOBAL_VAR $MINE; pwd"], "envs": {"MINE": "x", "GLOBAL_VAR": "overridden"}, "cwd": "/tmp"}}))
        .await;
    assert_eq!(r.stdout, "overridden x\n/tmp\n");
}

#[tokio::test]
async fn unknown_user_missing_cwd_and_missing_binary_are_clear_errors() {
    let sbx = Sandbox::new();
    let mut s = sbx.envd.as_user("mallory").stream("process.Process", "Start", start_req("true")).await;
    assert!(s.next().await.is_none());
    assert_eq!(s.end.as_ref().expect("end")["error"]["code"], "unauthenticated");
    let mut s = sbx.envd.stream("process.Process", "Start", json!({"process": {"cmd": "/bin/true", "cwd": "/does/not/exist"}})).await;
    assert!(s.next().await.is_none());
    let end = s.end.expect("end");
    assert_eq!(end["error"]["code"], "invalid_argument");
    assert!(end["error"]["message"].as_str().expect("msg").contains("/does/not/exist"));
    let mut s = sbx.envd.stream("process.Process", "Start", json!({"process": {"cmd": "/no/such/binary"}})).await;
    assert!(s.next().await.is_none());
    assert_eq!(s.end.expect("end")["error"]["code"], "invalid_argument");
    // Regression: an argument longer than exec takes (E2BIG) was an
    // internal error.
    let long = "x".repeat(200 * 1024);
    let mut s = sbx.envd.stream("process.Process", "Start", json!({"process": {"cmd": "/bin/echo", "args": [long]}})).await;
    assert!(s.next().await.is_none());
    let end = s.end.expect("end");
    assert_eq!(end["error"]["code"], "invalid_argument", "{end}");
    assert!(end["error"]["message"].as_str().expect("msg").contains("too long"));
    // Malformed JSON in a unary call.
    let r = sbx.envd.request("POST", "/process.Process/List", &[("content-type", "application/json".into())], "{not json").await;
    assert_eq!(r.status, 400);
    let body: serde_json::Value = serde_json::from_slice(&r.bytes().await).expect("json error");
    assert_eq!(body["code"], "invalid_argument");
}

#[tokio::test]
async fn exit_statuses_follow_envd_conventions() {
    let sbx = Sandbox::new();
    let ok = sbx.sh("true").await;
    assert_eq!((ok.exit_code, ok.end["exited"].as_bool(), ok.end.get("error").is_none()), (0, Some(true), true));
    let killed = sbx.sh("kill -9 $$").await;
    assert_eq!(killed.exit_code, -1);
    assert_eq!(killed.end["status"], "signal: killed");
    assert_eq!(killed.end["error"], "signal: killed");
}

#[tokio::test]
async fn large_output_streams_completely_and_in_order() {
    let sbx = Sandbox::new();
    // 8 MiB through stdout: bigger than any buffer on the way.
    let r = sbx.sh("head -c 8388608 /dev/zero | tr '\\0' 'a'; echo; echo done >&2").await;
    assert_eq!(r.stdout.len(), 8 * 1024 * 1024 + 1);
    assert!(r.stdout.bytes().take(8 * 1024 * 1024).all(|b| b == b'a'));
    assert_eq!(r.stderr, "done\n");
}

#[tokio::test]
async fn background_process_keeps_running_and_reattach_replays_output() {
    let sbx = Sandbox::new();
    let mut s = sbx
        .envd
        .stream(
            "process.Process",
            "Start",
            json!({"process": {"cmd": "/bin/bash", "args": ["-c", "echo first; read line; echo got:$line; sleep 0.2; echo last"]}, "stdin": true, "tag": "job-1"}),
        )
        .await;
    let pid = s.next_event().await.expect("start")["event"]["start"]["pid"].as_u64().expect("pid");
    let first = s.next_event().await.expect("data");
    assert_eq!(b64(first["event"]["data"]["stdout"].as_str().expect("stdout")), b"first\n");
    // The client goes away; the process must not.
    drop(s);
    let list = sbx.envd.unary("process.Process", "List", json!({})).await.expect("list");
    let procs = list["processes"].as_array().expect("array");
    let me = procs.iter().find(|p| p["pid"].as_u64() == Some(pid)).expect("still listed");
    assert_eq!(me["tag"], "job-1");
    assert_eq!(me["config"]["cmd"], "/bin/bash");
    // Reattach by tag: missed output is replayed.
    let mut s = sbx.envd.stream("process.Process", "Connect", json!({"process": {"tag": "job-1"}})).await;
    assert_eq!(s.next_event().await.expect("start")["event"]["start"]["pid"].as_u64(), Some(pid));
    let replay = s.next_event().await.expect("replayed");
    assert_eq!(b64(replay["event"]["data"]["stdout"].as_str().expect("stdout")), b"first\n");
    sbx.envd.unary("process.Process", "SendInput", json!({"process": {"pid": pid}, "input": {"stdin": enc(b"hello\n")}})).await.expect("send input");
    let r = collect_rest(&mut s).await;
    assert_eq!(r.0, "got:hello\nlast\n");
    assert_eq!(r.1["exited"], true);
    // Reattach to the finished process: full output and its end again.
    let mut s = sbx.envd.stream("process.Process", "Connect", json!({"process": {"pid": pid}})).await;
    s.next_event().await.expect("start");
    let r = collect_rest(&mut s).await;
    assert_eq!(r.0, "first\ngot:hello\nlast\n");
    // Finished processes are no longer listed as running.
    let list = sbx.envd.unary("process.Process", "List", json!({})).await.expect("list");
    assert!(!list["processes"].as_array().expect("array").iter().any(|p| p["pid"].as_u64() == Some(pid)));
}

/// Reads data until the end event: (stdout text, end event).
async fn collect_rest(s: &mut Stream) -> (String, serde_json::Value) {
    let mut out = String::new();
    while let Some(m) = s.next_event().await {
        if let Some(d) = m["event"].get("data") {
            for k in ["stdout", "pty"] {
                if let Some(b) = d.get(k).and_then(|v| v.as_str()) {
                    out.push_str(&String::from_utf8_lossy(&b64(b)));
                }
            }
        } else if let Some(e) = m["event"].get("end") {
            let e = e.clone();
            assert!(s.next().await.is_none(), "end is the last event");
            return (out, e);
        }
    }
    panic!("stream ended without an end event: {:?}", s.end);
}

#[tokio::test]
async fn stdin_close_and_stream_input() {
    let sbx = Sandbox::new();
    let mut s = sbx.envd.stream("process.Process", "Start", json!({"process": {"cmd": "/usr/bin/wc", "args": ["-c"]}, "stdin": true})).await;
    let pid = s.next_event().await.expect("start")["event"]["start"]["pid"].as_u64().expect("pid");
    // Client-streaming input: start, two data messages, end of body.
    let mut body = Vec::new();
    for m in [
        json!({"start": {"process": {"pid": pid}}}),
        json!({"data": {"input": {"stdin": enc(b"12345")}}}),
        json!({"keepalive": {}}),
        json!({"data": {"input": {"stdin": enc(b"678")}}}),
    ] {
        body.extend_from_slice(&airlock_proto::connect::json_envelope(&m));
    }
    let r = sbx.envd.request("POST", "/process.Process/StreamInput", &[("content-type", "application/connect+json".into())], body).await;
    assert_eq!(r.status, 200);
    sbx.envd.unary("process.Process", "CloseStdin", json!({"process": {"pid": pid}})).await.expect("close stdin");
    let (out, end) = collect_rest(&mut s).await;
    assert_eq!(out.trim(), "8");
    assert_eq!(end["exited"], true);
    // Input to a process started without stdin is refused.
    let r = sbx.sh("true").await;
    let e = sbx.envd.unary("process.Process", "SendInput", json!({"process": {"pid": r.pid}, "input": {"stdin": enc(b"x")}})).await.expect_err("finished process");
    assert_eq!(e.code, "not_found");
}

#[tokio::test]
async fn signals_kill_the_whole_process_group() {
    let sbx = Sandbox::new();
    let mut s = sbx.envd.stream("process.Process", "Start", start_req("sleep 300 & sleep 301; echo never")).await;
    let pid = s.next_event().await.expect("start")["event"]["start"]["pid"].as_u64().expect("pid");
    sbx.envd.unary("process.Process", "SendSignal", json!({"process": {"pid": pid}, "signal": "SIGNAL_SIGKILL"})).await.expect("signal");
    let (out, end) = tokio::time::timeout(Duration::from_secs(10), collect_rest(&mut s)).await.expect("ends promptly");
    assert_eq!(out, "");
    assert_eq!(end["status"], "signal: killed");
    let ps = sbx.sh("ps -eo comm | grep -c '^sleep' || true").await;
    assert_eq!(ps.stdout.trim(), "0", "no sleep left behind");
    let e = sbx.envd.unary("process.Process", "SendSignal", json!({"process": {"pid": 99999}, "signal": "SIGNAL_SIGTERM"})).await.expect_err("unknown pid");
    assert_eq!((e.status, e.code.as_str()), (404, "not_found"));
    assert!(e.message.contains("99999"));
}

#[tokio::test]
async fn connect_timeout_bounds_the_process_lifetime() {
    let sbx = Sandbox::new();
    let body = airlock_proto::connect::json_envelope(&start_req("sleep 30"));
    let t = std::time::Instant::now();
    let r = sbx.envd.request("POST", "/process.Process/Start", &[("content-type", "application/connect+json".into()), ("connect-timeout-ms", "500".into())], body).await;
    let bytes = r.bytes().await;
    assert!(t.elapsed() < Duration::from_secs(10), "killed at the deadline, not after 30 s");
    assert!(String::from_utf8_lossy(&bytes).contains("signal: killed"));
}

#[tokio::test]
async fn pty_sessions_echo_input_and_resize() {
    let sbx = Sandbox::new();
    let mut s = sbx
        .envd
        .stream("process.Process", "Start", json!({"process": {"cmd": "/bin/bash", "args": ["-i", "-l"], "envs": {"PS1": "prompt$ "}}, "pty": {"size": {"cols": 80, "rows": 24}}}))
        .await;
    let pid = s.next_event().await.expect("start")["event"]["start"]["pid"].as_u64().expect("pid");
    let send = |data: &'static [u8]| {
        let envd = sbx.envd.clone();
        async move { envd.unary("process.Process", "SendInput", json!({"process": {"pid": pid}, "input": {"pty": enc(data)}})).await.expect("input") }
    };
    send(b"tty; stty size\n").await;
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !(seen.contains("/dev/pts/") && seen.contains("24 80")) {
        let m = tokio::time::timeout_at(deadline, s.next_event()).await.expect("pty output in time").expect("event");
        if let Some(p) = m["event"]["data"]["pty"].as_str() {
            seen.push_str(&String::from_utf8_lossy(&b64(p)));
        }
    }
    sbx.envd.unary("process.Process", "Update", json!({"process": {"pid": pid}, "pty": {"size": {"cols": 132, "rows": 43}}})).await.expect("resize");
    send(b"stty size; exit 7\n").await;
    let (out, end) = tokio::time::timeout(Duration::from_secs(10), collect_rest(&mut s)).await.expect("exits");
    assert!(out.contains("43 132"), "resized: {out:?}");
    assert_eq!(end["exitCode"], 7);
    // Resizing a non-PTY process is refused.
    let r = sbx.sh("true").await;
    let e = sbx.envd.unary("process.Process", "Update", json!({"process": {"pid": r.pid}, "pty": {"size": {"cols": 1, "rows": 1}}})).await.expect_err("no pty");
    assert_eq!(e.code, "failed_precondition");
}

#[tokio::test]
async fn orphans_are_reaped_by_pid1() {
    let sbx = Sandbox::new();
    // The shell exits immediately, leaving its child to PID 1.
    sbx.sh("(sleep 0.2 &) ; true").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let r = sbx.sh("ps -eo stat,comm | awk '$1 ~ /^Z/' | wc -l").await;
    assert_eq!(r.stdout.trim(), "0", "no zombies");
}

#[tokio::test]
async fn keepalives_flow_on_idle_streams() {
    let sbx = Sandbox::new();
    // The harness asks for a 1 s keepalive interval.
    let mut s = sbx.envd.stream("process.Process", "Start", start_req("sleep 2.5")).await;
    s.next().await.expect("start");
    let m = tokio::time::timeout(Duration::from_secs(2), s.next()).await.expect("message within 2 s").expect("open");
    assert!(m["event"].get("keepalive").is_some(), "got {m}");
}
