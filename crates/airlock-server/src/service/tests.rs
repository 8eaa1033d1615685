//! The lifecycle rules, over the in-memory backend and a real SQLite store
//! in a temporary directory: no root, no sandboxes.

use std::sync::Arc;

use airlock_proto::api::NewSandbox;

use super::fake::FakeBackend;
use super::*;

struct World {
    svc: Arc<Service>,
    fake: Arc<FakeBackend>,
    _tmp: tempfile::TempDir,
}

fn world() -> World {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().to_path_buf();
    let templates = airlock_template::Store::new(data.join("templates"));
    templates
        .save(&airlock_template::Template { name: "base".into(), root_layers: vec![data.join("templates/layers/base/root")], default_user: "user".into(), ..Default::default() })
        .expect("base template");
    let store = Arc::new(Store::open(&data.join("airlock.db")).expect("store"));
    let fake = Arc::new(FakeBackend::default());
    let cfg = Config::new(data, "/nonexistent/airlock".into());
    let svc = Service::new(cfg, store, fake.clone());
    World { svc, fake, _tmp: tmp }
}

fn req(timeout: i64) -> NewSandbox {
    NewSandbox { template_id: "base".into(), timeout: Some(timeout), ..Default::default() }
}

impl World {
    async fn create(&self, r: NewSandbox) -> SandboxRow {
        self.svc.create(r, true).await.expect("create")
    }

    fn row(&self, id: &str) -> Option<SandboxRow> {
        self.svc.store().sandbox(id).expect("store")
    }

    /// Moves a sandbox's deadline into the past, as time would.
    fn expire(&self, id: &str) {
        self.svc.store().set_end(id, now_ms() - 1).expect("set_end");
    }
}

#[tokio::test]
async fn create_hands_the_backend_resolved_layers_and_the_limits() {
    let w = world();
    let r = w.create(NewSandbox { cpu_count: Some(1.5), memory_mb: Some(256), ..req(60) }).await;
    let spec = w.fake.spec(&r.id).expect("backend has it");
    assert_eq!(spec.rootfs.root_layers.len(), 1, "the template's layers, resolved by the service");
    assert!(spec.rootfs.root_layers[0].ends_with("layers/base/root"));
    assert_eq!(spec.rootfs.default_user, "user");
    assert_eq!((spec.resources.cpus, spec.resources.memory_mb), (1.5, 256));
    assert!(spec.access_token.is_some(), "v2 sandboxes are always secured");
    assert_eq!(r.access_token, spec.access_token);
}

#[tokio::test]
async fn bad_requests_create_nothing() {
    let w = world();
    for bad in [NewSandbox { cpu_count: Some(0.0), ..req(60) }, NewSandbox { memory_mb: Some(1), ..req(60) }, req(-5), NewSandbox { template_id: "no-such".into(), ..req(60) }] {
        let e = w.svc.create(bad, true).await.expect_err("refused");
        assert!(matches!(e, ApiError::BadRequest(_) | ApiError::NotFound(_)), "{e:?}");
    }
    assert!(w.fake.list().expect("list").is_empty());
    assert_eq!(w.svc.store().count().expect("count"), 0);
}

#[tokio::test]
async fn connect_never_shortens_a_deadline() {
    let w = world();
    let r = w.create(req(600)).await;
    let (row, resumed) = w.svc.connect(&r.id, Some(10)).await.expect("connect");
    assert!(!resumed, "it was running: 200, not 201");
    assert_eq!(row.end_at, r.end_at, "a shorter timeout leaves the deadline alone");
    let (row, _) = w.svc.connect(&r.id, Some(1200)).await.expect("connect");
    assert!(row.end_at >= r.end_at + 500_000, "a longer one extends it");
    // set_timeout, unlike connect, sets it (E2B's semantics).
    w.svc.set_timeout(&r.id, 5).await.expect("set_timeout");
    assert!(w.row(&r.id).expect("row").end_at < r.end_at);
}

#[tokio::test]
async fn at_the_deadline_auto_pause_pauses_and_the_rest_are_killed() {
    let w = world();
    let keep = w.create(NewSandbox { auto_pause: Some(true), ..req(600) }).await;
    let kill = w.create(req(600)).await;
    let later = w.create(req(600)).await;
    w.expire(&keep.id);
    w.expire(&kill.id);
    assert_eq!(w.svc.expire_due().await.expect("expire"), 2);
    let kept = w.row(&keep.id).expect("auto-pause keeps the row");
    assert_eq!(kept.state, State::Paused);
    assert!(w.fake.frozen(&keep.id), "and freezes the sandbox");
    assert!(w.row(&kill.id).is_none() && !w.fake.exists(&kill.id), "the other is gone from store and backend");
    assert_eq!(w.row(&later.id).expect("untouched").state, State::Running);
    // A paused sandbox's clock is stopped: no second action on it.
    assert_eq!(w.svc.expire_due().await.expect("expire"), 0);
    // Connect resumes it (201) with a fresh deadline.
    let (row, resumed) = w.svc.connect(&keep.id, Some(60)).await.expect("resume");
    assert!(resumed && row.state == State::Running && !w.fake.frozen(&keep.id));
    assert!(row.end_at > now_ms());
}

#[tokio::test]
async fn pause_twice_conflicts_and_unknown_ids_are_not_found() {
    let w = world();
    let r = w.create(req(600)).await;
    w.svc.pause(&r.id, true).await.expect("pause");
    assert!(matches!(w.svc.pause(&r.id, true).await, Err(ApiError::Conflict(_))));
    assert!(matches!(w.svc.route(&r.id).await, Err(ApiError::Conflict(_))), "no traffic to a paused sandbox");
    for e in [w.svc.kill("nosuch").await.err(), w.svc.pause("nosuch", true).await.err(), w.svc.set_timeout("nosuch", 5).await.err(), w.svc.connect("nosuch", None).await.err()] {
        assert!(matches!(e, Some(ApiError::NotFound(_))), "{e:?}");
    }
    w.svc.kill(&r.id).await.expect("kill a paused one");
    assert!(!w.fake.exists(&r.id));
}

#[tokio::test]
async fn reconcile_after_a_restart_keeps_the_store_and_the_kernel_agreeing() {
    let w = world();
    let rebooted = w.create(req(600)).await;
    let fine = w.create(req(600)).await;
    // The host rebooted under one; a crash left an orphan the store never had.
    w.fake.lose_processes(&rebooted.id);
    let orphan_spec = w.fake.spec(&fine.id).expect("spec");
    w.fake.adopt("orphan", orphan_spec);
    w.svc.reconcile().await.expect("reconcile");
    assert!(!w.fake.exists("orphan"), "a sandbox unknown to the store is destroyed");
    assert_eq!(w.row(&rebooted.id).expect("kept").state, State::Paused, "one whose processes are gone is shown paused");
    assert_eq!(w.row(&fine.id).expect("kept").state, State::Running);
    // Connect restarts it over its files.
    let (_, resumed) = w.svc.connect(&rebooted.id, Some(60)).await.expect("connect");
    assert!(resumed);
    assert_eq!(w.fake.restarts(&rebooted.id), 1);
    assert!(w.svc.route(&rebooted.id).await.is_ok());
}

#[tokio::test]
async fn list_pages_cover_everything_once_and_filters_combine() {
    let w = world();
    let mut ids = Vec::new();
    for i in 0..5 {
        let group = if i % 2 == 0 { "even" } else { "odd" };
        let md: BTreeMap<String, String> = [("group".to_string(), group.to_string()), ("i".to_string(), i.to_string())].into();
        ids.push(w.create(NewSandbox { metadata: Some(md), ..req(600) }).await.id);
    }
    w.svc.pause(&ids[1], true).await.expect("pause");
    for descending in [false, true] {
        let mut seen = Vec::new();
        let mut token = None;
        loop {
            let page = w.svc.list(ListFilter { limit: 2, next_token: token.clone(), descending, ..Default::default() }).await.expect("list");
            assert!(page.items.len() <= 2);
            seen.extend(page.items.iter().map(|d| d.sandbox_id.clone()));
            match page.next_token {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        let mut want = ids.clone();
        if descending {
            want.reverse();
        }
        assert_eq!(seen, want, "pages in order, each sandbox once (descending: {descending})");
    }
    let even = w.svc.list(ListFilter { metadata: [("group".to_string(), "even".to_string())].into(), ..Default::default() }).await.expect("list");
    assert_eq!(even.items.len(), 3);
    let odd_paused =
        w.svc.list(ListFilter { metadata: [("group".to_string(), "odd".to_string())].into(), states: Some(vec![State::Paused]), ..Default::default() }).await.expect("list");
    assert_eq!(odd_paused.items.iter().map(|d| d.sandbox_id.as_str()).collect::<Vec<_>>(), vec![ids[1].as_str()]);
    assert!(matches!(w.svc.list(ListFilter { next_token: Some("garbage".into()), ..Default::default() }).await, Err(ApiError::BadRequest(_))));
}

#[tokio::test]
async fn the_sandbox_limit_answers_too_many_requests() {
    let mut w = world();
    let svc = Arc::get_mut(&mut w.svc).expect("sole owner");
    svc.cfg.max_sandboxes = 2;
    w.create(req(60)).await;
    w.create(req(60)).await;
    assert!(matches!(w.svc.create(req(60), true).await, Err(ApiError::TooManyRequests(_))));
    assert_eq!(w.fake.list().expect("list").len(), 2);
}

/// Regression: 40,000 metadata keys were accepted (and stored, and sent
/// back by every list).
#[tokio::test]
async fn metadata_is_bounded() {
    let w = world();
    let many: BTreeMap<String, String> = (0..65).map(|i| (format!("k{i}"), "v".to_string())).collect();
    let big: BTreeMap<String, String> = [("k".to_string(), "x".repeat(20_000))].into();
    let empty_key: BTreeMap<String, String> = [(String::new(), "v".to_string())].into();
    for md in [many, big, empty_key] {
        assert!(matches!(w.svc.create(NewSandbox { metadata: Some(md), ..req(60) }, true).await, Err(ApiError::BadRequest(_))));
    }
    let fine: BTreeMap<String, String> = (0..64).map(|i| (format!("k{i}"), "v".to_string())).collect();
    w.create(NewSandbox { metadata: Some(fine), ..req(60) }).await;
    assert_eq!(w.fake.list().expect("list").len(), 1);
}

#[tokio::test]
async fn a_filesystem_auto_pause_stops_the_sandbox_and_connect_boots_it() {
    let w = world();
    let r = w.create(NewSandbox { auto_pause: Some(true), auto_pause_memory: Some(false), ..req(600) }).await;
    w.expire(&r.id);
    assert_eq!(w.svc.expire_due().await.expect("expire"), 1);
    let row = w.row(&r.id).expect("kept");
    assert_eq!((row.state, row.paused_memory), (State::Paused, false));
    assert!(w.fake.exists(&r.id) && !w.fake.alive(&r.id), "stopped: files kept, no processes");
    let (_, resumed) = w.svc.connect(&r.id, Some(60)).await.expect("connect");
    assert!(resumed && w.fake.alive(&r.id));
    assert_eq!(w.fake.restarts(&r.id), 1, "a fresh boot over its files");
}

#[tokio::test]
async fn long_frozen_sandboxes_give_their_memory_back() {
    let mut w = world();
    Arc::get_mut(&mut w.svc).expect("only owner").cfg.fs_pause_after_s = Some(60);
    let old = w.create(req(600)).await;
    let recent = w.create(req(600)).await;
    w.svc.pause(&old.id, true).await.expect("pause");
    w.svc.pause(&recent.id, true).await.expect("pause");
    let end = w.row(&old.id).expect("row").end_at;
    w.svc.store().set_paused(&old.id, end, true, now_ms() - 61_000).expect("age it");
    assert_eq!(w.svc.release_idle().await.expect("release"), 1);
    assert!(!w.fake.alive(&old.id), "the long-paused one is stopped");
    assert!(!w.row(&old.id).expect("row").paused_memory);
    assert!(w.fake.frozen(&recent.id), "the recent one stays frozen");
    assert_eq!(w.svc.release_idle().await.expect("release"), 0, "once");
}

#[tokio::test]
async fn forks_copy_the_source_and_bad_counts_fork_nothing() {
    let w = world();
    let src = w.create(NewSandbox { env_vars: Some([("K".to_string(), "v".to_string())].into()), memory_mb: Some(256), ..req(600) }).await;
    for count in [0, 21, -1] {
        let e = w.svc.fork(&src.id, airlock_proto::api::ForkRequest { count: Some(count), timeout: None }).await.expect_err("refused");
        assert!(matches!(e, ApiError::BadRequest(_)), "{e:?}");
    }
    assert!(matches!(w.svc.fork("nosuch", Default::default()).await, Err(ApiError::NotFound(_))));
    let out = w.svc.fork(&src.id, airlock_proto::api::ForkRequest { count: Some(3), timeout: Some(30) }).await.expect("fork");
    assert_eq!(out.len(), 3);
    for f in &out {
        let sbx = f.sandbox.as_ref().expect("started");
        let spec = w.fake.spec(&sbx.sandbox_id).expect("backend has it");
        assert_eq!(spec.resources.memory_mb, 256);
        assert_eq!(spec.env.get("K").map(String::as_str), Some("v"));
        assert_eq!(spec.rootfs.root_layers.len(), 2, "the fork layer over the template's");
        let row = w.row(&sbx.sandbox_id).expect("row");
        assert!(row.end_at <= now_ms() + 31_000, "the fork's own timeout");
        assert_eq!(row.layers, spec.rootfs.root_layers.iter().chain(&spec.rootfs.usr_layers).cloned().collect::<Vec<_>>());
    }
    assert!(w.fake.alive(&src.id), "the source keeps running");
}

#[tokio::test]
async fn soft_reset_keeps_the_sandbox_and_hard_reset_boots_it_afresh() {
    let w = world();
    let r = w.create(req(600)).await;
    w.svc.reset(&r.id, false).await.expect("soft");
    assert_eq!(w.fake.resets(&r.id), (1, 0));
    w.svc.reset(&r.id, true).await.expect("hard");
    assert_eq!(w.fake.resets(&r.id), (1, 1));
    w.svc.pause(&r.id, true).await.expect("pause");
    assert!(matches!(w.svc.reset(&r.id, false).await, Err(ApiError::Conflict(_))), "a paused sandbox has no processes to kill");
    let row = w.svc.reset(&r.id, true).await.expect("hard reset of a paused one");
    assert_eq!(row.state, State::Running);
}

#[tokio::test]
async fn a_failed_create_leaves_no_row_and_frees_its_admission() {
    let w = world();
    w.fake.fail_creates(true);
    assert!(matches!(w.svc.create(req(60), true).await, Err(ApiError::Internal(_))));
    assert_eq!(w.svc.store().count().expect("count"), 0, "no row, not even a creating one");
    w.fake.fail_creates(false);
    w.create(req(60)).await;
}

#[test]
fn admission_counts_creates_in_flight_and_every_sandbox() {
    let w = world();
    let row = |id: &str, state: State| SandboxRow {
        id: id.into(),
        template: "base".into(),
        state,
        started_at: 0,
        end_at: 0,
        auto_pause: false,
        metadata: Default::default(),
        env: Default::default(),
        access_token: None,
        internet: false,
        cpus: 1.0,
        memory_mb: 64,
        disk_mb: 0,
        seq: 0,
        layers: vec![],
        auto_pause_memory: true,
        paused_memory: true,
        paused_at: 0,
        died_at: 0,
        death: String::new(),
        alerts: Default::default(),
        pool: String::new(),
        auto_resume: false,
        timeout_s: 300,
        public_traffic: true,
        mask_host: String::new(),
    };
    let s = w.svc.store();
    assert_eq!(s.admit(&row("a", State::Creating), &[], 2, 3).expect("admit"), Ok(()));
    assert_eq!(s.admit(&row("b", State::Creating), &[], 2, 3).expect("admit"), Ok(()));
    assert_eq!(s.admit(&row("c", State::Creating), &[], 2, 3).expect("admit"), Err(Refusal::Busy(2)), "two in flight");
    assert!(s.finish_create("a", 1, 2, State::Running).expect("finish"));
    assert!(!s.finish_create("a", 1, 2, State::Running).expect("finish"), "only a creating row goes live");
    assert_eq!(s.admit(&row("c", State::Creating), &[], 2, 3).expect("admit"), Ok(()));
    assert_eq!(s.admit(&row("d", State::Creating), &[], 5, 3).expect("admit"), Err(Refusal::Full(3)), "three in all");
    assert!(s.sandbox("d").expect("read").is_none(), "a refused create writes nothing");
}

#[tokio::test]
async fn start_up_settles_what_a_crash_interrupted() {
    let w = world();
    let creating = w.create(req(600)).await;
    let killing = w.create(req(600)).await;
    let pausing_frozen = w.create(req(600)).await;
    let pausing_running = w.create(req(600)).await;
    let resuming_dead = w.create(req(600)).await;
    let stopping = w.create(req(600)).await;
    let snapshotting = w.create(req(600)).await;
    let s = w.svc.store();
    // A filesystem pause cut short (its PID 1 may be frozen, a SIGKILL
    // pending), and a snapshot's freeze the crash never undid.
    s.set_pausing(&stopping.id, false).expect("pausing");
    w.fake.freeze(&stopping.id).expect("freeze");
    w.fake.freeze(&snapshotting.id).expect("freeze");
    // What the rows would say had the server died in the middle of each.
    for (r, st) in
        [(&creating, State::Creating), (&killing, State::Killing), (&pausing_frozen, State::Pausing), (&pausing_running, State::Pausing), (&resuming_dead, State::Resuming)]
    {
        s.set_state(&r.id, st, r.end_at).expect("state");
    }
    w.fake.freeze(&pausing_frozen.id).expect("freeze");
    w.fake.lose_processes(&resuming_dead.id);
    // Invisible while being made or destroyed.
    assert!(matches!(w.svc.get(&creating.id).await, Err(ApiError::NotFound(_))));
    assert!(matches!(w.svc.kill(&killing.id).await, Err(ApiError::NotFound(_))));
    let listed: Vec<String> = w.svc.list(ListFilter::default()).await.expect("list").items.into_iter().map(|d| d.sandbox_id).collect();
    assert!(!listed.contains(&creating.id) && !listed.contains(&killing.id) && listed.contains(&pausing_frozen.id), "{listed:?}");

    w.svc.reconcile().await.expect("reconcile");
    for gone in [&creating, &killing] {
        assert!(w.row(&gone.id).is_none() && !w.fake.exists(&gone.id), "{} is undone", gone.id);
    }
    let p = w.row(&pausing_frozen.id).expect("row");
    assert_eq!((p.state, p.paused_memory), (State::Paused, true), "frozen: the pause got there");
    assert_eq!(w.row(&pausing_running.id).expect("row").state, State::Running, "not frozen: it never paused");
    let r = w.row(&resuming_dead.id).expect("row");
    assert_eq!((r.state, r.paused_memory), (State::Paused, false), "no processes: files only, booted on connect");
    assert_eq!(w.svc.get(&pausing_running.id).await.expect("get").state, "running");
    let st = w.row(&stopping.id).expect("row");
    assert_eq!((st.state, st.paused_memory), (State::Paused, false), "the filesystem pause is finished, not taken for a freeze");
    assert!(!w.fake.alive(&stopping.id), "and its processes are gone");
    assert_eq!(w.row(&snapshotting.id).expect("row").state, State::Running);
    assert!(!w.fake.frozen(&snapshotting.id), "a freeze nobody asked to keep is undone");
}

/// Hardening: on a host without iptables every default create failed with
/// a message naming an API field. Now a default create gets loopback only
/// (the API adds a warning), and one that insists on internet is told how
/// to get it.
#[tokio::test]
async fn without_a_firewall_default_creates_get_loopback_and_explicit_ones_a_hint() {
    let w = world();
    w.fake.lose_firewall();
    let r = w.create(req(60)).await;
    assert!(!r.internet && !w.fake.spec(&r.id).expect("spec").internet, "loopback only");
    let e = w.svc.create(NewSandbox { allow_internet_access: Some(true), ..req(60) }, true).await.expect_err("refused");
    assert!(matches!(&e, ApiError::BadRequest(m) if m.contains("apt install iptables") && m.contains("--no-internet")), "{e:?}");
    w.create(NewSandbox { allow_internet_access: Some(false), ..req(60) }).await;
}

/// Hardening: a sandbox whose PID 1 died was cleaned up and then only 404.
/// Now its record says when and why, in info, in list (when asked for)
/// and to its traffic, for a while.
#[tokio::test]
async fn a_sandbox_that_died_says_why() {
    let mut w = world();
    let oom = w.create(req(600)).await;
    let shot = w.create(req(600)).await;
    let fine = w.create(req(600)).await;
    w.fake.oom_kill(&oom.id);
    w.fake.lose_processes(&shot.id);
    w.svc.sample_all().await;
    assert!(!w.fake.exists(&oom.id) && !w.fake.exists(&shot.id), "their resources are released");
    let e = w.svc.get(&oom.id).await.expect_err("dead");
    assert!(matches!(&e, ApiError::NotFound(m) if m.contains("out of memory") && m.contains("died at")), "{e:?}");
    let e = w.svc.route(&shot.id).await.expect_err("dead");
    assert!(matches!(&e, ApiError::NotFound(m) if m.contains("exited or was killed")), "{e:?}");
    let ids = |p: Page| p.items.into_iter().map(|d| d.sandbox_id).collect::<Vec<_>>();
    assert_eq!(ids(w.svc.list(ListFilter::default()).await.expect("list")), vec![fine.id.clone()], "not listed unless asked");
    let dead = w.svc.list(ListFilter { states: Some(vec![State::Dead]), ..Default::default() }).await.expect("list");
    assert_eq!(dead.items.len(), 2);
    assert!(dead.items.iter().all(|d| d.state == "dead" && d.death.is_some()));
    // They count against nothing, and killing one forgets it.
    w.svc.kill(&shot.id).await.expect("kill a dead one");
    assert!(matches!(w.svc.get(&shot.id).await, Err(ApiError::NotFound(m)) if !m.contains("died")));
    Arc::get_mut(&mut w.svc).expect("only owner").cfg.dead_retention_s = 0;
    std::thread::sleep(std::time::Duration::from_millis(5));
    assert_eq!(w.svc.purge_dead().await.expect("purge"), 1);
    assert!(w.row(&oom.id).is_none());
}

/// Found by schemathesis against /openapi.json: metrics with a start of
/// i64::MIN overflowed (a panic in debug builds).
#[tokio::test]
async fn metrics_take_any_time_range() {
    let w = world();
    let r = w.create(req(600)).await;
    for (start, end) in [(Some(i64::MIN), Some(i64::MAX)), (Some(i64::MAX), None), (None, Some(i64::MIN))] {
        w.svc.metrics(&r.id, start, end).await.expect("metrics");
    }
}
