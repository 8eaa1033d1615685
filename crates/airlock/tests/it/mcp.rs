//! The MCP server end to end without an MCP SDK: `/mcp` on `airlock serve`
//! (authentication, a JSON-RPC exchange over Streamable HTTP) and `airlock
//! mcp` on stdio. The official Python SDK drives every tool in
//! `compat/python/test_mcp.py`; these check the wiring from the Rust side.

use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::server::Server;

const ACCEPT: (&str, &str) = ("accept", "application/json, text/event-stream");
const JSON: (&str, &str) = ("content-type", "application/json");

fn initialize() -> Bytes {
    Bytes::from(
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "it", "version": "1"}}})
            .to_string(),
    )
}

/// The JSON-RPC messages of a Streamable HTTP answer (SSE or plain JSON).
fn messages(body: &[u8]) -> Vec<Value> {
    let text = String::from_utf8_lossy(body);
    if let Ok(v) = serde_json::from_str::<Value>(&text) {
        return vec![v];
    }
    text.lines().filter_map(|l| l.strip_prefix("data:")).filter_map(|d| serde_json::from_str(d.trim()).ok()).collect()
}

async fn post(srv: &Server, headers: &[(&str, &str)], body: Bytes) -> (u16, http::HeaderMap, Vec<Value>) {
    let (s, h, b) = tokio::time::timeout(Duration::from_secs(30), srv.req("POST", "/mcp", headers, body)).await.expect("answered in time").expect("request");
    (s, h, messages(&b))
}

#[tokio::test]
async fn mcp_over_http_wants_the_api_key_and_lists_the_tools() {
    let srv = Server::start(&["--no-network"]).await;
    for headers in [vec![], vec![("x-api-key", "wrong")], vec![("authorization", "Bearer wrong")], vec![("authorization", "Basic d3Jvbmc6")]] {
        let mut h = headers.clone();
        h.extend([ACCEPT, JSON]);
        let (s, _, _) = post(&srv, &h, initialize()).await;
        assert_eq!(s, 401, "{headers:?}");
    }
    let bearer = format!("Bearer {}", srv.key());
    let (s, h, msgs) = post(&srv, &[("authorization", bearer.as_str()), ACCEPT, JSON], initialize()).await;
    assert_eq!(s, 200, "{msgs:?}");
    assert_eq!(msgs.last().map(|m| m["result"]["serverInfo"]["name"].clone()), Some(json!("airlock")), "{msgs:?}");
    let session = h.get("mcp-session-id").and_then(|v| v.to_str().ok()).expect("a session").to_string();
    let common = [("x-api-key", srv.key()), ("mcp-session-id", session.as_str()), ("mcp-protocol-version", "2025-06-18"), ACCEPT, JSON];
    let (s, _, _) = post(&srv, &common, Bytes::from(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string())).await;
    assert!(s == 202 || s == 200, "{s}");
    let (s, _, msgs) = post(&srv, &common, Bytes::from(json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}).to_string())).await;
    assert_eq!(s, 200);
    let tools: Vec<String> =
        msgs.last().and_then(|m| m["result"]["tools"].as_array().cloned()).unwrap_or_default().iter().filter_map(|t| t["name"].as_str().map(str::to_string)).collect();
    assert!(tools.len() >= 12 && tools.iter().any(|t| t == "sandbox_execute"), "{tools:?}");
    // A call with an unknown sandbox is a tool error with Flow Nexus's code, not a protocol error.
    let call = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "sandbox_status", "arguments": {"sandbox_id": "nosuchsandbox"}}});
    let (_, _, msgs) = post(&srv, &common, Bytes::from(call.to_string())).await;
    let r = &msgs.last().expect("answer")["result"];
    assert_eq!((r["isError"].as_bool(), r["structuredContent"]["error"]["code"].as_str()), (Some(true), Some("SANDBOX_NOT_FOUND")), "{msgs:?}");
}

/// One JSON-RPC line to `airlock mcp`, and the answer with the same id.
async fn rpc(stdin: &mut tokio::process::ChildStdin, out: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>, msg: Value) -> Option<Value> {
    stdin.write_all(format!("{msg}\n").as_bytes()).await.expect("write");
    let id = msg.get("id")?.clone();
    loop {
        let line = tokio::time::timeout(Duration::from_secs(30), out.next_line()).await.expect("answered in time").expect("read")?;
        let v: Value = serde_json::from_str(&line).expect("stdout carries JSON-RPC only");
        if v["id"] == id {
            return Some(v);
        }
    }
}

#[tokio::test]
async fn airlock_mcp_serves_the_tools_on_stdio() {
    let srv = Server::start(&["--no-network"]).await;
    for (key, wants) in [(srv.key().to_string(), None), ("e2b_wrongkey".to_string(), Some("PERMISSION_DENIED"))] {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_airlock"))
            .arg("mcp")
            .env("AIRLOCK_URL", srv.url())
            .env("AIRLOCK_API_KEY", &key)
            .env_remove("RUST_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn airlock mcp");
        let mut stdin = child.stdin.take().expect("stdin");
        let mut out = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "it", "version": "1"}}});
        let r = rpc(&mut stdin, &mut out, init).await.expect("initialize");
        assert_eq!(r["result"]["serverInfo"]["name"], "airlock", "{r}");
        rpc(&mut stdin, &mut out, json!({"jsonrpc": "2.0", "method": "notifications/initialized"})).await;
        let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "sandbox_list", "arguments": {}}});
        let r = rpc(&mut stdin, &mut out, call).await.expect("call");
        match wants {
            None => assert_eq!(r["result"]["isError"], false, "{r}"),
            Some(code) => assert_eq!(r["result"]["structuredContent"]["error"]["code"], code, "{r}"),
        }
        drop(stdin);
        let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await.expect("exits when stdin closes").expect("wait");
        assert!(status.success(), "{status}");
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = tokio::io::AsyncReadExt::read_to_string(&mut e, &mut err).await;
        }
        assert!(!err.contains(" INFO "), "quiet on stderr by default: {err}");
    }
    // Without a key it says so and exits, before any MCP traffic.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_airlock"))
        .arg("mcp")
        .env_remove("AIRLOCK_API_KEY")
        .env_remove("E2B_API_KEY")
        .env("AIRLOCK_URL", srv.url())
        .output()
        .await
        .expect("run");
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no API key"), "{out:?}");
}

/// An initialized Streamable HTTP session: the headers its requests carry.
async fn session(srv: &Server) -> String {
    let (s, h, msgs) = post(srv, &[("x-api-key", srv.key()), ACCEPT, JSON], initialize()).await;
    assert_eq!(s, 200, "{msgs:?}");
    let id = h.get("mcp-session-id").and_then(|v| v.to_str().ok()).expect("a session").to_string();
    let common = [("x-api-key", srv.key()), ("mcp-session-id", id.as_str()), ("mcp-protocol-version", "2025-06-18"), ACCEPT, JSON];
    post(srv, &common, Bytes::from(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string())).await;
    id
}

async fn tool(srv: &Server, session: &str, id: u64, name: &str, args: Value) -> Value {
    let common = [("x-api-key", srv.key()), ("mcp-session-id", session), ("mcp-protocol-version", "2025-06-18"), ACCEPT, JSON];
    let call = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": name, "arguments": args}});
    let (_, _, msgs) = post(srv, &common, Bytes::from(call.to_string())).await;
    msgs.into_iter().find(|m| m["id"] == id).expect("the answer")["result"].clone()
}

#[tokio::test]
async fn the_sandbox_limit_is_quota_exceeded() {
    let srv = Server::start(&["--no-network", "--max-sandboxes", "1"]).await;
    let s = session(&srv).await;
    let first = tool(&srv, &s, 2, "sandbox_create", json!({"timeout": 60})).await;
    assert_eq!(first["isError"], false, "{first}");
    let second = tool(&srv, &s, 3, "sandbox_create", json!({"timeout": 60})).await;
    assert_eq!((second["isError"].as_bool(), second["structuredContent"]["error"]["code"].as_str()), (Some(true), Some("QUOTA_EXCEEDED")), "{second}");
    let id = first["structuredContent"]["sandbox_id"].as_str().expect("id");
    let gone = tool(&srv, &s, 4, "sandbox_delete", json!({"sandbox_id": id})).await;
    assert_eq!(gone["structuredContent"]["deleted"], true, "{gone}");
    let again = tool(&srv, &s, 5, "sandbox_create", json!({"timeout": 60})).await;
    assert_eq!(again["isError"], false, "a deleted sandbox frees its place: {again}");
}
