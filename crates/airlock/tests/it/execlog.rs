//! Configuring running sandboxes and their execution log, through the Rust
//! SDK against a real `airlock serve`: what the REST API and the MCP tools
//! stand on.

use std::collections::BTreeMap;
use std::time::Duration;

use airlock_sdk::{Client, Config, ConfigureSandbox, InstallPackages, LogLevel, LogQuery, LogSource, Sandbox};
use futures_util::StreamExt;

use crate::server::Server;

fn client(srv: &Server) -> Client {
    Client::new(Config::new(srv.url(), srv.key())).expect("client")
}

async fn sandbox(c: &Client) -> Sandbox {
    Sandbox::builder().client(c).timeout(Duration::from_secs(120)).env("FIRST", "1").create().await.expect("create")
}

#[tokio::test]
async fn configured_variables_reach_later_commands_and_survive_a_restart() {
    let srv = Server::start(&["--no-network"]).await;
    let c = client(&srv);
    let sbx = sandbox(&c).await;
    let env: BTreeMap<String, String> = [("SECOND".to_string(), "2".to_string()), ("FIRST".to_string(), String::new())].into();
    let r = sbx
        .configure(&ConfigureSandbox { env_vars: env, run_commands: vec!["echo from-configure".into(), "exit 4".into(), "echo never".into()], ..Default::default() })
        .await
        .expect("configure");
    assert_eq!(r.env_vars_updated, ["FIRST", "SECOND"]);
    assert_eq!(r.commands_executed.iter().map(|x| x.exit_code).collect::<Vec<_>>(), [0, 4], "the failing command stops the rest");
    assert_eq!(r.commands_executed[0].output, "from-configure\n");
    assert!(r.restart_required && !r.restarted);
    let out = sbx.commands().run("echo [$FIRST] [$SECOND]").await.expect("run");
    assert_eq!(out.stdout, "[] [2]\n", "an empty value removes a variable");
    let setup: Vec<String> = sbx.logs().await.expect("set-up log").into_iter().map(|l| l.line).collect();
    assert!(setup.iter().any(|l| l == "from-configure"), "configure commands' output is in the set-up log: {setup:?}");
    let log = sbx.execution_log(&LogQuery::default()).await.expect("log");
    let configured = log.log_entries.iter().find(|e| e.source == LogSource::System && e.message.starts_with("configured {")).expect("a configured event");
    assert!(configured.message.contains("SECOND"), "{configured:?}");

    // launch.json and the row were changed too: a restart keeps them.
    sbx.configure(&ConfigureSandbox { env_vars: [("THIRD".to_string(), "3".to_string())].into(), restart: true, ..Default::default() }).await.expect("restart");
    let sbx = c.get(sbx.id()).await.expect("get");
    let out = sbx.commands().run("echo [$FIRST] [$SECOND] [$THIRD]").await.expect("run");
    assert_eq!(out.stdout, "[] [2] [3]\n");

    // Bad input is refused before anything runs; a paused sandbox is not configured.
    let bad = ConfigureSandbox { install_packages: Some(InstallPackages { pip: vec!["x; rm -rf /".into()], ..Default::default() }), ..Default::default() };
    assert!(matches!(sbx.configure(&bad).await, Err(airlock_sdk::Error::Http { status: 400, .. })));
    for (k, v) in [("A=B", "x"), ("", "x"), ("NUL", "a\0b")] {
        let bad = ConfigureSandbox { env_vars: [(k.to_string(), v.to_string())].into(), ..Default::default() };
        assert!(matches!(sbx.configure(&bad).await, Err(airlock_sdk::Error::Http { status: 400, .. })), "{k:?}={v:?}");
    }
    sbx.pause().await.expect("pause");
    assert!(matches!(c.configure(sbx.id(), &ConfigureSandbox::default()).await, Err(airlock_sdk::Error::Http { status: 409, .. })));
    assert!(matches!(c.configure("nosuchsandbox", &ConfigureSandbox::default()).await, Err(e) if e.is_not_found()));
    c.kill(sbx.id()).await.expect("kill");
}

#[tokio::test]
async fn every_execution_through_the_proxy_is_logged_with_its_outcome() {
    let srv = Server::start(&["--no-network"]).await;
    let c = client(&srv);
    let sbx = sandbox(&c).await;
    sbx.commands().run("echo one; echo two >&2").await.expect("run");
    let failed = sbx.commands().run("python3 -c 'x = bytearray(32 << 20); import sys; sys.exit(5)'").await;
    assert!(matches!(failed, Err(airlock_sdk::Error::CommandExit { exit_code: 5, .. })));
    let log = sbx.execution_log(&LogQuery::default()).await.expect("log");
    let msgs: Vec<(LogSource, &str)> = log.log_entries.iter().map(|e| (e.source, e.message.as_str())).collect();
    assert!(msgs.contains(&(LogSource::Stdout, "one")) && msgs.contains(&(LogSource::Stderr, "two")), "{msgs:?}");
    assert!(msgs.iter().any(|(s, m)| *s == LogSource::System && m.starts_with("created")), "lifecycle events are merged: {msgs:?}");
    let end = log.log_entries.iter().find(|e| e.exit_code == Some(5)).expect("the failed run's end");
    assert_eq!(end.level, LogLevel::Error);
    assert!(end.max_rss_bytes.is_some_and(|b| b >= 32 << 20), "peak memory from wait4: {end:?}");
    assert!(end.cpu_ms.is_some() && end.duration_ms.is_some());
    assert_eq!((log.stats.total, log.stats.successful, log.stats.failed, log.stats.running), (2, 1, 1, 0), "{:?}", log.stats);

    // Filters: level and the newest lines.
    let errors = sbx.execution_log(&LogQuery { level: Some(LogLevel::Error), ..Default::default() }).await.expect("log");
    assert!(!errors.log_entries.is_empty() && errors.log_entries.iter().all(|e| e.level == LogLevel::Error));
    let last = sbx.execution_log(&LogQuery { lines: Some(1), ..Default::default() }).await.expect("log");
    assert_eq!(last.log_entries.len(), 1);
    assert!(last.total_lines as usize >= log.log_entries.len());

    // The agent's own routes are the server's only.
    for (method, path, body) in [("GET", "/airlock/log", ""), ("POST", "/airlock/env", r#"{"set":{"PATH":"/evil"}}"#), ("GET", "/airlock/anything", "")] {
        let headers = [("e2b-sandbox-id", sbx.id()), ("x-access-token", sbx.access_token().unwrap_or("")), ("content-type", "application/json")];
        let (s, _, _) = srv.req(method, path, &headers, bytes::Bytes::from(body)).await.expect("req");
        assert_eq!(s, 404, "the proxy refuses {method} {path}");
    }

    // A follower gets the backlog, then new entries, then the end.
    let mut follow = sbx.follow_log(&LogQuery { lines: Some(3), ..Default::default() }).await.expect("follow");
    for _ in 0..3 {
        follow.next().await.expect("backlog entry").expect("entry");
    }
    sbx.commands().run("echo live").await.expect("run");
    let mut seen = Vec::new();
    // Each entry within 5 s: lifecycle events and a new agent cut the
    // follower's long wait on the agent short (regression: a restart left
    // it waiting 15 s on the old agent's connection, then on the new
    // agent with the old sequence number).
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_secs(5), follow.next()).await {
        let e = e.expect("entry");
        seen.push(e.message.clone());
        if e.message == "live" {
            // A restart boots a new agent, whose log starts over: the
            // follower reads it from its start.
            c.restart(sbx.id(), airlock_sdk::RestartOptions::default()).await.expect("restart");
            let again = c.get(sbx.id()).await.expect("get");
            again.commands().run("echo after-restart").await.expect("run");
        }
        if e.message == "after-restart" {
            c.kill(sbx.id()).await.expect("kill");
        }
        if e.message.starts_with("end of log stream") {
            break;
        }
    }
    assert!(seen.iter().any(|m| m == "live") && seen.iter().any(|m| m == "after-restart"), "{seen:?}");
    assert!(seen.iter().any(|m| m.starts_with("restarted")), "the restart is a system entry: {seen:?}");
    assert!(seen.last().is_some_and(|m| m.starts_with("end of log stream")), "{seen:?}");
}

#[tokio::test]
async fn the_agents_log_route_wants_the_token() {
    let sbx = crate::support::Sandbox::with(|s| s.access_token = Some("the-token".into()));
    sbx.sh("echo logged").await;
    let mut bare = sbx.envd.clone();
    for token in [None, Some("wrong".to_string()), Some(String::new())] {
        bare.token = token.clone();
        let r = bare.request("GET", airlock_proto::wire::AGENT_LOG_PATH, &[], bytes::Bytes::new()).await;
        assert_eq!(r.status, 401, "token {token:?}");
    }
    let r = sbx.envd.request("GET", &format!("{}?wait=0", airlock_proto::wire::AGENT_LOG_PATH), &[], bytes::Bytes::new()).await;
    assert_eq!(r.status, 200);
    let log: airlock_proto::execlog::AgentLog = serde_json::from_slice(&r.bytes().await).expect("json");
    assert!(log.entries.iter().any(|e| e.message == "logged"), "{:?}", log.entries);
    let r = sbx.envd.request("GET", &format!("{}?after=x", airlock_proto::wire::AGENT_LOG_PATH), &[], bytes::Bytes::new()).await;
    assert_eq!(r.status, 400, "a bad query is a clear error");

    // The environment route: the token, checked names, a merge that keeps
    // what it does not name.
    let change = |body: &'static str| bytes::Bytes::from(body);
    let ct = [("content-type", "application/json".to_string())];
    bare.token = None;
    assert_eq!(bare.request("POST", airlock_proto::wire::AGENT_ENV_PATH, &ct, change(r#"{"set":{"A":"1"}}"#)).await.status, 401);
    assert_eq!(sbx.envd.request("POST", airlock_proto::wire::AGENT_ENV_PATH, &ct, change(r#"{"set":{"A=B":"1"}}"#)).await.status, 400);
    assert_eq!(sbx.envd.request("POST", airlock_proto::wire::AGENT_ENV_PATH, &ct, change("not json")).await.status, 400);
    let r = sbx.envd.request("POST", airlock_proto::wire::AGENT_ENV_PATH, &ct, change(r#"{"set":{"A":"1","B":"2"}}"#)).await;
    assert_eq!(r.status, 200);
    let r = sbx.envd.request("POST", airlock_proto::wire::AGENT_ENV_PATH, &ct, change(r#"{"unset":["A"]}"#)).await;
    let env: airlock_proto::execlog::AgentEnv = serde_json::from_slice(&r.bytes().await).expect("json");
    assert_eq!((env.env.get("A"), env.env.get("B").map(String::as_str)), (None, Some("2")));
    assert_eq!(sbx.sh("echo [$A] [$B]").await.stdout, "[] [2]\n", "new commands get it");
}

/// Regression: configure replaced the agent's whole environment with the
/// sandbox's own variables, dropping the template's `ENV`s.
#[tokio::test]
async fn configure_keeps_the_templates_variables() {
    let srv = Server::start(&["--no-network"]).await;
    let c = client(&srv);
    let name = format!("envtpl{}", &crate::support::new_id()[1..9]);
    let mut build =
        c.templates().build(&airlock_sdk::BuildTemplate { name: name.clone(), recipe: "FROM base\nENV FROM_TEMPLATE=kept\n".into(), ..Default::default() }).await.expect("build");
    while let Some(ev) = build.next().await {
        if let airlock_sdk::BuildEvent::Error { message } = ev.expect("event") {
            panic!("build failed: {message}");
        }
    }
    let sbx = Sandbox::builder().client(&c).template(name.clone()).timeout(Duration::from_secs(120)).create().await.expect("create");
    assert_eq!(sbx.commands().run("echo $FROM_TEMPLATE").await.expect("run").stdout, "kept\n");
    sbx.configure(&ConfigureSandbox { env_vars: [("ADDED".to_string(), "1".to_string())].into(), ..Default::default() }).await.expect("configure");
    assert_eq!(sbx.commands().run("echo $FROM_TEMPLATE $ADDED").await.expect("run").stdout, "kept 1\n");
    sbx.restart(airlock_sdk::RestartOptions::default()).await.expect("restart");
    let sbx = c.get(sbx.id()).await.expect("get");
    assert_eq!(sbx.commands().run("echo $FROM_TEMPLATE $ADDED").await.expect("run").stdout, "kept 1\n", "and so does the next boot");
    c.kill(sbx.id()).await.expect("kill");
    let _ = c.templates().delete(&name, true).await;
}
