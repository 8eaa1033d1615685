//! A small envd client: Connect (unary calls and server streams, in
//! proto3 JSON) and plain HTTP/1.1 over an agent's unix socket, one fresh
//! connection per request, as the server's proxy opens them. Framing and
//! stream decoding are airlock-proto's (`connect::json_envelope`,
//! `connect::MessageReader`), the same code the SDK and the server use, so
//! the tests check the agent against the decoder clients really run.
//!
//! It knows nothing of how the sandbox was made: anything with an agent
//! socket (a runtime backend's sandbox, a server's `<data>/sandboxes/<id>/
//! agent.sock`) will do. Test code: it panics on transport failures.

use std::path::PathBuf;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

/// What a process stream told, read to its end by `collect`: the start
/// event's pid, the output (PTY output counts as stdout) and the end event.
#[derive(Debug, Clone, Default)]
pub struct CmdResult {
    pub pid: u32,
    pub stdout: String,
    pub stderr: String,
    pub exit_code: i32,
    pub end: Value,
}

/// A Connect error or HTTP failure as the client saw it.
#[derive(Debug, Clone)]
pub struct RpcError {
    pub status: u16,
    pub code: String,
    pub message: String,
}

/// A client for one agent: its socket, and the token and user (HTTP
/// Basic, as the E2B SDKs send it) its requests carry.
#[derive(Debug, Clone)]
pub struct Envd {
    pub socket: PathBuf,
    pub token: Option<String>,
    pub user: Option<String>,
}

/// A response whose body has not been read yet (streams stay open).
pub struct Response {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: hyper::body::Incoming,
}

impl Response {
    pub async fn bytes(self) -> Bytes {
        self.body.collect().await.expect("body").to_bytes()
    }
}

impl Envd {
    /// A client for the agent listening on `socket`, with no token or user.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self { socket: socket.into(), token: None, user: None }
    }

    pub fn as_user(&self, user: &str) -> Self {
        Self { user: Some(user.into()), ..self.clone() }
    }

    /// Sends one HTTP/1.1 request over a fresh connection to the socket.
    pub async fn request(&self, method: &str, path: &str, headers: &[(&str, String)], body: impl Into<Bytes>) -> Response {
        self.request_body(method, path, headers, Full::new(body.into())).await
    }

    pub async fn request_body<B>(&self, method: &str, path: &str, headers: &[(&str, String)], body: B) -> Response
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let stream = tokio::net::UnixStream::connect(&self.socket).await.expect("connect to agent socket");
        let (mut sender, conn) = http1::handshake(TokioIo::new(stream)).await.expect("handshake");
        tokio::spawn(conn);
        let mut req = http::Request::builder().method(method).uri(format!("http://sandbox{path}")).header("host", "sandbox");
        if let Some(t) = &self.token {
            req = req.header("x-access-token", t);
        }
        if let Some(u) = &self.user {
            req = req.header("authorization", format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{u}:"))));
        }
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let resp = sender.send_request(req.body(body).expect("request")).await.expect("send request");
        let (parts, body) = resp.into_parts();
        Response { status: parts.status.as_u16(), headers: parts.headers, body }
    }

    /// A unary Connect call: `service` like "process.Process", `method` like "List".
    pub async fn unary(&self, service: &str, method: &str, msg: Value) -> Result<Value, RpcError> {
        let r = self
            .request(
                "POST",
                &format!("/{service}/{method}"),
                &[("content-type", "application/json".into()), ("connect-protocol-version", "1".into())],
                serde_json::to_vec(&msg).expect("json"),
            )
            .await;
        let status = r.status;
        let body = r.bytes().await;
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if status == 200 {
            Ok(v)
        } else {
            Err(RpcError { status, code: v["code"].as_str().unwrap_or_default().to_string(), message: v["message"].as_str().unwrap_or_default().to_string() })
        }
    }

    /// Opens a server stream; read messages with `Stream::next`.
    pub async fn stream(&self, service: &str, method: &str, msg: Value) -> Stream {
        let env = airlock_proto::connect::json_envelope(&msg);
        let r = self
            .request(
                "POST",
                &format!("/{service}/{method}"),
                &[("content-type", "application/connect+json".into()), ("connect-protocol-version", "1".into()), ("keepalive-ping-interval", "1".into())],
                env,
            )
            .await;
        assert_eq!(r.status, 200, "streams answer 200");
        assert_eq!(r.headers.get("content-type").and_then(|v| v.to_str().ok()), Some("application/connect+json"));
        Stream { reader: airlock_proto::connect::MessageReader::new(r.body), end: None }
    }

    /// Starts `/bin/bash -l -c cmd` like the E2B SDK and collects its events.
    pub async fn run(&self, cmd: &str) -> CmdResult {
        self.run_with(json!({"process": {"cmd": "/bin/bash", "args": ["-l", "-c", cmd]}, "stdin": false})).await
    }

    pub async fn run_with(&self, req: Value) -> CmdResult {
        let mut s = self.stream("process.Process", "Start", req).await;
        collect(&mut s).await
    }
}

/// Reads a process stream to its end.
pub async fn collect(s: &mut Stream) -> CmdResult {
    let mut r = CmdResult::default();
    let first = s.next().await.expect("first message");
    if let Some(err) = s.end.as_ref().and_then(|e| e.get("error")) {
        panic!("stream failed: {err}");
    }
    r.pid = first["event"]["start"]["pid"].as_u64().expect("first event is start") as u32;
    while let Some(m) = s.next().await {
        let ev = &m["event"];
        if let Some(d) = ev.get("data") {
            for k in ["stdout", "stderr", "pty"] {
                if let Some(b) = d.get(k).and_then(|v| v.as_str()) {
                    let text = String::from_utf8_lossy(&b64(b)).to_string();
                    if k == "stderr" {
                        r.stderr.push_str(&text)
                    } else {
                        r.stdout.push_str(&text)
                    }
                }
            }
        } else if let Some(e) = ev.get("end") {
            r.exit_code = e["exitCode"].as_i64().unwrap_or(0) as i32;
            r.end = e.clone();
        }
    }
    assert!(s.end.as_ref().is_some_and(|e| e.get("error").is_none()), "stream ends cleanly: {:?}", s.end);
    r
}

pub fn b64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(s).expect("base64")
}

pub fn enc(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

pub struct Stream {
    reader: airlock_proto::connect::MessageReader<hyper::body::Incoming>,
    /// The end-of-stream payload, once read.
    pub end: Option<Value>,
}

impl Stream {
    /// Next data message (keepalives included); None at end of stream,
    /// whose payload is then in `end`.
    pub async fn next(&mut self) -> Option<Value> {
        let r = self.reader.next_message::<Value>().await;
        if let Some(end) = &self.reader.end {
            self.end = Some(serde_json::to_value(end).expect("end-of-stream as JSON"));
        }
        match r {
            Some(Ok(v)) => Some(v),
            // A stream cut off (a killed sandbox, a closed connection)
            // simply ends, with no end payload.
            Some(Err(airlock_proto::connect::StreamError::Remote(_) | airlock_proto::connect::StreamError::Body(_) | airlock_proto::connect::StreamError::Unterminated)) | None => {
                None
            }
            Some(Err(e)) => panic!("malformed stream: {e}"),
        }
    }

    /// Next message that is not a keepalive.
    pub async fn next_event(&mut self) -> Option<Value> {
        loop {
            let m = self.next().await?;
            // Process streams nest the oneof in `event`; watch streams do not.
            if m["event"].get("keepalive").is_none() && m.get("keepalive").is_none() {
                return Some(m);
            }
        }
    }
}
