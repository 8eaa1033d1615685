//! A small client for a sandbox agent's envd API over its unix socket,
//! used by the server itself: template build steps and create-time set-up
//! run commands this way and stream their output.

use std::collections::BTreeMap;
use std::path::Path;

use airlock_proto::connect::{self, StreamError};
use airlock_proto::envd::{DataOutput, ProcessConfig, ProcessEvent, ProcessEventKind, StartRequest};
use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("connecting to the sandbox agent")]
    Connect(#[source] std::io::Error),
    #[error("talking to the sandbox agent: {0}")]
    Http(String),
    #[error("the sandbox agent refused the command: {0}")]
    Rpc(String),
}

/// Output of a finished command.
#[derive(Debug, Clone, Default)]
pub struct Finished {
    pub exit_code: i32,
    pub status: String,
}

/// One command to start: `bash -c script` as `user`, optionally tagged.
struct Launch<'a> {
    socket: &'a Path,
    token: Option<&'a str>,
    user: &'a str,
    script: &'a str,
    env: &'a BTreeMap<String, String>,
    cwd: Option<&'a str>,
    tag: Option<&'a str>,
}

fn stream_err(e: StreamError) -> AgentError {
    match e {
        StreamError::Remote(e) => AgentError::Rpc(e.message),
        other => AgentError::Http(airlock_runtime::init::chain(&other)),
    }
}

/// Sends `Process.Start` and returns the response, whose body is the event stream.
async fn start(l: Launch<'_>) -> Result<hyper::Response<hyper::body::Incoming>, AgentError> {
    let stream = tokio::net::UnixStream::connect(l.socket).await.map_err(AgentError::Connect)?;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| AgentError::Http(e.to_string()))?;
    tokio::spawn(conn);
    let req = StartRequest {
        process: ProcessConfig { cmd: "/bin/bash".into(), args: vec!["-c".into(), l.script.into()], envs: l.env.clone(), cwd: l.cwd.map(Into::into) },
        pty: None,
        tag: l.tag.map(Into::into),
        stdin: Some(false),
    };
    let mut b = http::Request::builder()
        .method("POST")
        .uri(format!("/{}", airlock_proto::wire::Rpc::ProcessStart.path()))
        .header("host", "sandbox")
        .header("content-type", connect::CONTENT_TYPE_STREAM_JSON)
        .header("authorization", format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{}:", l.user))));
    if let Some(t) = l.token {
        b = b.header(airlock_proto::wire::ACCESS_TOKEN_HEADER, t);
    }
    let body = Full::new(connect::json_envelope(&req));
    tx.send_request(b.body(body).map_err(|e| AgentError::Http(e.to_string()))?).await.map_err(|e| AgentError::Http(e.to_string()))
}

/// Runs `bash -c script` in the sandbox as `user`, calling `on_output`
/// with each chunk (`true` for stderr), and returns its exit status.
pub async fn run(
    socket: &Path,
    token: Option<&str>,
    user: &str,
    script: &str,
    env: &BTreeMap<String, String>,
    cwd: Option<&str>,
    mut on_output: impl FnMut(&[u8], bool),
) -> Result<Finished, AgentError> {
    let resp = start(Launch { socket, token, user, script, env, cwd, tag: None }).await?;
    if !resp.status().is_success() {
        let bytes = resp.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
        return Err(AgentError::Rpc(String::from_utf8_lossy(&bytes).into_owned()));
    }
    let mut reader = connect::MessageReader::new(resp.into_body());
    let mut done: Option<Finished> = None;
    while let Some(ev) = reader.next_message::<ProcessEvent>().await {
        match ev.map_err(stream_err)?.event {
            ProcessEventKind::Data(DataOutput::Stdout(b)) | ProcessEventKind::Data(DataOutput::Pty(b)) => on_output(&b, false),
            ProcessEventKind::Data(DataOutput::Stderr(b)) => on_output(&b, true),
            ProcessEventKind::End(e) => done = Some(Finished { exit_code: e.exit_code, status: e.status }),
            _ => {}
        }
    }
    done.ok_or_else(|| AgentError::Http("the command's stream ended without an exit status".into()))
}

/// Starts `bash -c script` in the background (tagged), returning its pid
/// once the agent has started it; the process outlives this call.
pub async fn spawn(socket: &Path, token: Option<&str>, user: &str, script: &str, env: &BTreeMap<String, String>, cwd: Option<&str>, tag: &str) -> Result<u32, AgentError> {
    let resp = start(Launch { socket, token, user, script, env, cwd, tag: Some(tag) }).await?;
    let mut reader = connect::MessageReader::new(resp.into_body());
    while let Some(ev) = reader.next_message::<ProcessEvent>().await {
        if let ProcessEventKind::Start { pid } = ev.map_err(stream_err)?.event {
            // Dropping the stream detaches; the agent keeps the process.
            return Ok(pid);
        }
    }
    if reader.end.is_some() {
        return Err(AgentError::Rpc("process ended before starting".into()));
    }
    Err(AgentError::Http("stream ended before the start event".into()))
}

/// Claims a pooled sandbox: from now on its agent gives commands `env`
/// (all of it) and wants `new_token` (`None`: no token). `token` is the
/// pool's, which the agent wants until then.
pub async fn init(socket: &Path, token: Option<&str>, env: &BTreeMap<String, String>, new_token: Option<&str>) -> Result<(), AgentError> {
    let stream = tokio::net::UnixStream::connect(socket).await.map_err(AgentError::Connect)?;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| AgentError::Http(e.to_string()))?;
    tokio::spawn(conn);
    let body = serde_json::json!({"envVars": env, "accessToken": new_token.unwrap_or("")});
    let mut b = http::Request::builder().method("POST").uri(airlock_proto::wire::AGENT_INIT_PATH).header("host", "sandbox").header("content-type", "application/json");
    if let Some(t) = token {
        b = b.header(airlock_proto::wire::ACCESS_TOKEN_HEADER, t);
    }
    let req = b.body(Full::new(bytes::Bytes::from(body.to_string()))).map_err(|e| AgentError::Http(e.to_string()))?;
    let resp = tx.send_request(req).await.map_err(|e| AgentError::Http(e.to_string()))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let bytes = resp.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
        return Err(AgentError::Rpc(format!("{status}: {}", String::from_utf8_lossy(&bytes))));
    }
    Ok(())
}

/// Reads the agent's execution log: entries after `after` (all: `None`),
/// waiting up to `wait_ms` for a first new one.
/// `boot` is the start time of the agent `after` came from.
pub async fn read_log(socket: &Path, token: Option<&str>, after: Option<u64>, wait_ms: u64, boot: i64) -> Result<airlock_proto::execlog::AgentLog, AgentError> {
    let stream = tokio::net::UnixStream::connect(socket).await.map_err(AgentError::Connect)?;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| AgentError::Http(e.to_string()))?;
    tokio::spawn(conn);
    let mut uri = format!("{}?wait={wait_ms}", airlock_proto::wire::AGENT_LOG_PATH);
    if let Some(a) = after {
        uri.push_str(&format!("&after={a}&boot={}", boot.max(0)));
    }
    let mut b = http::Request::builder().method("GET").uri(uri).header("host", "sandbox");
    if let Some(t) = token {
        b = b.header(airlock_proto::wire::ACCESS_TOKEN_HEADER, t);
    }
    let req = b.body(Full::new(bytes::Bytes::new())).map_err(|e| AgentError::Http(e.to_string()))?;
    let resp = tx.send_request(req).await.map_err(|e| AgentError::Http(e.to_string()))?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await.map(|c| c.to_bytes()).map_err(|e| AgentError::Http(e.to_string()))?;
    if !status.is_success() {
        return Err(AgentError::Rpc(format!("{status}: {}", String::from_utf8_lossy(&bytes))));
    }
    serde_json::from_slice(&bytes).map_err(|e| AgentError::Http(format!("reading the execution log: {e}")))
}

/// Sets and unsets sandbox-wide variables in the agent; returns what every
/// new command gets from now on (the template's variables included).
pub async fn update_env(socket: &Path, token: Option<&str>, change: &airlock_proto::execlog::AgentEnvChange) -> Result<BTreeMap<String, String>, AgentError> {
    let stream = tokio::net::UnixStream::connect(socket).await.map_err(AgentError::Connect)?;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| AgentError::Http(e.to_string()))?;
    tokio::spawn(conn);
    let body = serde_json::to_vec(change).map_err(|e| AgentError::Http(e.to_string()))?;
    let mut b = http::Request::builder().method("POST").uri(airlock_proto::wire::AGENT_ENV_PATH).header("host", "sandbox").header("content-type", "application/json");
    if let Some(t) = token {
        b = b.header(airlock_proto::wire::ACCESS_TOKEN_HEADER, t);
    }
    let req = b.body(Full::new(bytes::Bytes::from(body))).map_err(|e| AgentError::Http(e.to_string()))?;
    let resp = tx.send_request(req).await.map_err(|e| AgentError::Http(e.to_string()))?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await.map(|c| c.to_bytes()).map_err(|e| AgentError::Http(e.to_string()))?;
    if !status.is_success() {
        return Err(AgentError::Rpc(format!("{status}: {}", String::from_utf8_lossy(&bytes))));
    }
    let env: airlock_proto::execlog::AgentEnv = serde_json::from_slice(&bytes).map_err(|e| AgentError::Http(format!("reading the environment: {e}")))?;
    Ok(env.env)
}

// ------------------------------------------------------ the code interpreter

/// A request to the agent's code interpreter (E2B's port-49999 API, which
/// the agent serves on the same socket when `x-airlock-port` says 49999).
async fn interpreter(socket: &Path, token: Option<&str>, method: &str, path: &str, body: Option<serde_json::Value>) -> Result<hyper::Response<hyper::body::Incoming>, AgentError> {
    let stream = tokio::net::UnixStream::connect(socket).await.map_err(AgentError::Connect)?;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| AgentError::Http(e.to_string()))?;
    tokio::spawn(conn);
    let mut b = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "sandbox")
        .header(airlock_proto::wire::AGENT_PORT_HEADER, airlock_proto::wire::CODE_INTERPRETER_PORT.to_string())
        .header("content-type", "application/json");
    if let Some(t) = token {
        b = b.header(airlock_proto::wire::ACCESS_TOKEN_HEADER, t);
    }
    let body = body.map(|v| bytes::Bytes::from(v.to_string())).unwrap_or_default();
    let req = b.body(Full::new(body)).map_err(|e| AgentError::Http(e.to_string()))?;
    let resp = tx.send_request(req).await.map_err(|e| AgentError::Http(e.to_string()))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let bytes = resp.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
        return Err(AgentError::Rpc(format!("{status}: {}", String::from_utf8_lossy(&bytes).trim())));
    }
    Ok(resp)
}

/// Makes a code context for `language`; returns its id.
pub async fn create_context(socket: &Path, token: Option<&str>, language: &str) -> Result<String, AgentError> {
    let resp = interpreter(socket, token, "POST", "/contexts", Some(serde_json::json!({ "language": language }))).await?;
    let bytes = resp.into_body().collect().await.map(|c| c.to_bytes()).map_err(|e| AgentError::Http(e.to_string()))?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| AgentError::Http(format!("reading the new context: {e}")))?;
    v["id"].as_str().map(str::to_string).ok_or_else(|| AgentError::Http("the new context has no id".into()))
}

/// Removes a context, stopping its kernel.
pub async fn delete_context(socket: &Path, token: Option<&str>, id: &str) -> Result<(), AgentError> {
    interpreter(socket, token, "DELETE", &format!("/contexts/{id}"), None).await.map(drop)
}

/// Stops a context's kernel (even mid-execution); its next execution starts a new one.
pub async fn restart_context(socket: &Path, token: Option<&str>, id: &str) -> Result<(), AgentError> {
    interpreter(socket, token, "POST", &format!("/contexts/{id}/restart"), None).await.map(drop)
}

/// Runs `code` in context `context`, calling `on_event` with each line of
/// the execution's stream (`stdout`, `stderr`, `result`, `error`,
/// `number_of_executions`; keepalives are skipped) until
/// `end_of_execution`. Dropping the future disconnects, which the agent
/// takes as an interrupt.
pub async fn execute(
    socket: &Path,
    token: Option<&str>,
    context: &str,
    code: &str,
    env: &BTreeMap<String, String>,
    mut on_event: impl FnMut(serde_json::Value),
) -> Result<(), AgentError> {
    let body = serde_json::json!({ "code": code, "context_id": context, "env_vars": env });
    let resp = interpreter(socket, token, "POST", "/execute", Some(body)).await?;
    let mut body = resp.into_body();
    let mut pending: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| AgentError::Http(format!("reading the execution: {e}")))?;
        let Ok(data) = frame.into_data() else { continue };
        pending.extend_from_slice(&data);
        while let Some(nl) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=nl).collect();
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&line) else { continue };
            match v["type"].as_str() {
                Some("end_of_execution") => return Ok(()),
                Some("keepalive") => {}
                _ => on_event(v),
            }
        }
    }
    Err(AgentError::Http("the execution's stream ended before the execution did (the sandbox stopped?)".into()))
}
