//! Batch execution (`POST /sandboxes/{id}/batch`) through the Rust SDK and
//! the raw API against a real `airlock serve`: priority order, per-job
//! timeouts, failures that do not stop the rest, refusals before anything
//! runs, a client that leaves and a sandbox killed mid-batch.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use airlock_sdk::batch::{BatchEvent, BatchJob};
use airlock_sdk::{Client, Config, Sandbox};
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::server::Server;

fn client(srv: &Server) -> Client {
    Client::new(Config::new(srv.url(), srv.key())).expect("client")
}

async fn sandbox(c: &Client) -> Sandbox {
    Sandbox::builder().client(c).timeout(Duration::from_secs(300)).create().await.expect("create")
}

fn job(id: &str, priority: i64, code: &str) -> BatchJob {
    BatchJob { id: id.into(), code: code.into(), priority, ..Default::default() }
}

/// The sandbox's code contexts, through the proxy as E2B's SDK asks.
async fn contexts(srv: &Server, sbx: &Sandbox) -> Vec<Value> {
    let tok = sbx.access_token().unwrap_or("").to_string();
    let (s, _, b) =
        srv.req("GET", "/contexts", &[("e2b-sandbox-id", sbx.id()), ("e2b-sandbox-port", "49999"), ("x-access-token", &tok)], Default::default()).await.expect("contexts");
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&b));
    serde_json::from_slice::<Vec<Value>>(&b).expect("context list")
}

async fn wait_for_contexts(srv: &Server, sbx: &Sandbox, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = contexts(srv, sbx).await;
        if now.len() == n {
            return;
        }
        assert!(Instant::now() < deadline, "the batch's contexts were not removed: {now:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_batch_runs_by_priority_with_its_own_timeouts_and_failures_do_not_stop_it() {
    let srv = Server::start(&["--no-network"]).await;
    let c = client(&srv);
    let sbx = sandbox(&c).await;
    let before = contexts(&srv, &sbx).await.len();

    let mut slow = job("slow", 3, "import time\ntime.sleep(60)\nprint('never')");
    slow.timeout = Some(1000);
    let mut sh = job("shell", 1, "echo \"[$JOBVAR]\"");
    sh.language = Some("bash".into());
    sh.envs = BTreeMap::from([("JOBVAR".into(), "per-job".into())]);
    let jobs = vec![
        job("last-expression", 0, "6 * 7"),
        sh,
        job("after-timeout", 2, "print('after', 'x' in globals())"),
        slow,
        job("fails", 5, "raise ValueError('boom')"),
        job("uses-state", 7, "print('uses', x + 1)"),
        job("first", 10, "x = 41\nprint('first')"),
    ];
    let t0 = Instant::now();
    let mut stream = sbx.batch_stream(jobs).await.expect("batch");
    let mut seen = Vec::new();
    let mut summary = None;
    while let Some(ev) = stream.next().await {
        match ev.expect("event") {
            BatchEvent::Job(r) => {
                assert!(summary.is_none(), "results come before the summary");
                seen.push(r);
            }
            BatchEvent::Done(d) => summary = Some(d),
        }
    }
    let order: Vec<&str> = seen.iter().map(|r| r.job_id.as_str()).collect();
    assert_eq!(order, ["first", "uses-state", "fails", "slow", "after-timeout", "shell", "last-expression"], "highest priority first, ties as given");
    let by = |id: &str| seen.iter().find(|r| r.job_id == id).expect(id);
    assert!(by("first").success && by("first").output == "first\n", "{:?}", by("first"));
    assert_eq!(by("uses-state").output, "uses 42\n", "jobs of one language share the batch's context");
    let f = by("fails");
    assert!(!f.success && !f.timed_out, "{f:?}");
    assert!(f.error.as_deref().is_some_and(|e| e.contains("ValueError") && e.contains("boom")), "{f:?}");
    let s = by("slow");
    assert!(!s.success && s.timed_out && s.output.is_empty(), "{s:?}");
    assert!(s.duration >= 1000 && s.duration < 20_000, "the job's own timeout ended it: {s:?}");
    assert_eq!(by("after-timeout").output, "after False\n", "a timed-out job's context starts again from a fresh kernel");
    assert_eq!(by("shell").output, "[per-job]\n", "per-job variables");
    let last = by("last-expression");
    assert!(last.success && last.results.first().and_then(|r| r["text"].as_str()) == Some("42"), "{last:?}");
    let d = summary.expect("a summary line");
    assert_eq!((d.succeeded, d.failed), (5, 2), "{d:?}");
    assert!(d.results.is_empty(), "the summary line does not repeat the results");
    assert!(t0.elapsed() < Duration::from_secs(60), "the 60 s sleep did not hold up the batch");

    // The batch's contexts are gone; the sandbox's own were not touched.
    wait_for_contexts(&srv, &sbx, before).await;

    // JSON in one answer (no Accept), as the REST API documents it.
    let (st, v) =
        srv.api("POST", &format!("/sandboxes/{}/batch", sbx.id()), Some(json!({"jobs": [{"id": "a", "code": "print(1)"}, {"id": "b", "code": "1/0", "priority": 1}]}))).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["results"].as_array().map(|r| r.iter().map(|x| x["jobId"].as_str().unwrap_or("")).collect::<Vec<_>>()), Some(vec!["b", "a"]), "{v}");
    assert_eq!((v["succeeded"].as_u64(), v["failed"].as_u64()), (Some(1), Some(1)), "{v}");
    assert!(v["results"][0]["error"].as_str().is_some_and(|e| e.contains("ZeroDivisionError")), "{v}");
    assert_eq!(v["results"][1]["output"], "1\n");
    c.kill(sbx.id()).await.expect("kill");
}

#[tokio::test]
async fn bad_batches_are_refused_before_anything_runs_and_nothing_hangs() {
    let srv = Server::start(&["--no-network"]).await;
    let c = client(&srv);
    let sbx = sandbox(&c).await;
    let before = contexts(&srv, &sbx).await.len();
    let mark = "open('/tmp/ran', 'w').write('x')";
    let refused = |r: airlock_sdk::Result<airlock_sdk::batch::BatchResults>, what: &str| match r {
        Err(airlock_sdk::Error::Http { status: 400, message, .. }) => assert!(message.contains(what), "{what}: {message}"),
        other => panic!("{what}: expected a 400, got {other:?}"),
    };
    refused(sbx.batch(vec![job("a", 0, mark), job("a", 1, "1")]).await, "duplicate job id \"a\"");
    let mut cobol = job("old", 0, "DISPLAY 'HI'.");
    cobol.language = Some("cobol".into());
    refused(sbx.batch(vec![job("a", 0, mark), cobol]).await, "job \"old\"");
    refused(sbx.batch(vec![job("a", 0, mark), job("huge", 0, &"#".repeat(10 * 1024 * 1024))]).await, "job \"huge\": its code is");
    refused(sbx.batch(vec![]).await, "at least one job");
    let mut zero = job("z", 0, mark);
    zero.timeout = Some(0);
    refused(sbx.batch(vec![zero]).await, "timeout must be");
    let (st, v) = srv.api("POST", &format!("/sandboxes/{}/batch", sbx.id()), None).await;
    assert_eq!(st, 400, "an empty body is an empty batch: {v}");
    let (st, _, b) =
        srv.req("POST", &format!("/sandboxes/{}/batch", sbx.id()), &[("x-api-key", srv.key()), ("content-type", "application/json")], "{\"jobs\": [".into()).await.expect("req");
    assert_eq!(st, 400, "{}", String::from_utf8_lossy(&b));
    assert!(matches!(c.batch("nosuchsandbox", vec![job("a", 0, "1")]).await, Err(e) if e.is_not_found()));
    let r = sbx.commands().run("test -e /tmp/ran && echo ran || echo clean").await.expect("run");
    assert_eq!(r.stdout, "clean\n", "no refused batch ran a job");
    wait_for_contexts(&srv, &sbx, before).await;

    // A client that leaves mid-job stops the batch: its kernel is
    // interrupted and its contexts removed; the next batch runs at once.
    let mut long = job("long", 0, "import time\ntime.sleep(120)");
    long.timeout = Some(300_000);
    let stream = sbx.batch_stream(vec![long, job("next", -1, mark)]).await.expect("batch");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    drop(stream);
    wait_for_contexts(&srv, &sbx, before).await;
    let t0 = Instant::now();
    let r = sbx.batch(vec![job("quick", 0, "print('quick')")]).await.expect("batch after a client left");
    assert_eq!(r.results[0].output, "quick\n", "{r:?}");
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
    let r = sbx.commands().run("test -e /tmp/ran && echo ran || echo clean").await.expect("run");
    assert_eq!(r.stdout, "clean\n", "the job after the one interrupted never ran");

    // A sandbox killed mid-batch: the running job and the rest fail, the
    // stream ends with its summary.
    let mut sleeper = job("sleeper", 1, "import time\ntime.sleep(120)");
    sleeper.timeout = Some(300_000);
    let mut stream = sbx.batch_stream(vec![sleeper, job("pending", 0, "print('never')")]).await.expect("batch");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.kill(sbx.id()).await.expect("kill");
    let done = tokio::time::timeout(Duration::from_secs(30), async {
        let mut jobs = Vec::new();
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(BatchEvent::Job(r)) => jobs.push(r),
                Ok(BatchEvent::Done(d)) => return (jobs, Some(d)),
                Err(_) => break,
            }
        }
        (jobs, None)
    })
    .await
    .expect("the stream ends after the kill");
    let (jobs, summary) = done;
    assert!(jobs.iter().all(|r| !r.success && r.error.is_some()), "{jobs:?}");
    if let Some(d) = summary {
        assert_eq!((d.succeeded, d.failed), (0, 2), "{d:?}");
        assert_eq!(jobs.len(), 2);
        assert!(jobs[1].error.as_deref().is_some_and(|e| e.contains("no longer running")), "{jobs:?}");
    }
    // Paused sandboxes do not take batches.
    let sbx = sandbox(&c).await;
    sbx.pause().await.expect("pause");
    assert!(matches!(sbx.batch(vec![job("a", 0, "1")]).await, Err(airlock_sdk::Error::Http { status: 409, .. })));
    c.kill(sbx.id()).await.expect("kill");
}
