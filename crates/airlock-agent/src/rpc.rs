//! Connect request decoding: unary bodies (bare JSON) and the single
//! enveloped request of a server-streaming call, plus per-request context
//! (the calling user, deadline and keepalive interval) taken from headers.

use std::sync::Arc;
use std::time::Duration;

use airlock_proto::connect::{ConnectError, EnvelopeDecoder};
use base64::Engine;
use http::HeaderMap;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::de::DeserializeOwned;

use crate::users::{self, User};
use crate::Agent;

/// Unary request bodies are small JSON messages; anything bigger is refused.
pub const MAX_UNARY: usize = 4 * 1024 * 1024;

/// What every RPC handler knows about its caller.
#[derive(Debug, Clone)]
pub struct RequestCtx {
    /// The user the request acts as (`Authorization: Basic user:`, else the default).
    pub user: User,
    /// `Connect-Timeout-Ms`, if sent. For `Process.Start` it bounds the process's lifetime.
    pub timeout: Option<Duration>,
    /// `Keepalive-Ping-Interval`, else the default.
    pub keepalive: Duration,
}

impl RequestCtx {
    pub fn from_headers(agent: &Arc<Agent>, headers: &HeaderMap) -> Result<Self, ConnectError> {
        let name = basic_user(headers).unwrap_or_else(|| agent.config.default_user.clone());
        let user = users::lookup(&name).map_err(|e| ConnectError::new(airlock_proto::connect::Code::Unauthenticated, e.to_string()))?;
        let timeout = headers
            .get("connect-timeout-ms")
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|ms| *ms > 0.0 && ms.is_finite())
            .map(|ms| Duration::from_millis(ms as u64));
        let keepalive = headers
            .get("keepalive-ping-interval")
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|s| *s >= 1.0 && s.is_finite())
            .map(Duration::from_secs_f64)
            .unwrap_or(crate::DEFAULT_KEEPALIVE);
        Ok(Self { user, timeout, keepalive })
    }
}

/// `Authorization: Basic base64("<user>:")` → user name.
pub fn basic_user(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let b64 = v.strip_prefix("Basic ").or_else(|| v.strip_prefix("basic "))?;
    let raw = base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok()?;
    let s = String::from_utf8(raw).ok()?;
    let user = s.split(':').next()?.to_string();
    (!user.is_empty()).then_some(user)
}

/// Decodes a unary request: bare JSON (an empty body means the empty message).
pub async fn unary<T: DeserializeOwned>(body: Incoming) -> Result<T, ConnectError> {
    let bytes = crate::http::read_limited(body, MAX_UNARY).await.map_err(|e| ConnectError::invalid_argument(e.to_string()))?;
    decode_unary(&bytes)
}

/// `unary` once the body is read.
pub fn decode_unary<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ConnectError> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) { b"{}" } else { bytes };
    serde_json::from_slice(bytes).map_err(|e| ConnectError::invalid_argument(format!("invalid request message: {e}")))
}

/// Decodes the request of a server-streaming call: exactly one envelope.
/// Some clients send the bare JSON message instead; accept that too.
pub async fn stream_request<T: DeserializeOwned>(body: Incoming) -> Result<T, ConnectError> {
    let bytes = crate::http::read_limited(body, MAX_UNARY).await.map_err(|e| ConnectError::invalid_argument(e.to_string()))?;
    decode_stream_request(bytes)
}

/// `stream_request` once the body is read: one envelope, or bare JSON.
pub fn decode_stream_request<T: DeserializeOwned>(bytes: bytes::Bytes) -> Result<T, ConnectError> {
    let payload = if bytes.first() == Some(&b'{') {
        bytes
    } else {
        let mut d = EnvelopeDecoder::with_limit(MAX_UNARY);
        d.push(&bytes);
        match d.next_envelope() {
            Ok(Some(env)) => env.payload,
            Ok(None) => return Err(ConnectError::invalid_argument("request envelope is incomplete")),
            Err(e) => return Err(ConnectError::invalid_argument(e.to_string())),
        }
    };
    serde_json::from_slice(&payload).map_err(|e| ConnectError::invalid_argument(format!("invalid request message: {e}")))
}

/// Reads the envelopes of a client-streaming body one at a time.
pub struct EnvelopeStream {
    body: Incoming,
    dec: EnvelopeDecoder,
    done: bool,
}

impl EnvelopeStream {
    pub fn new(body: Incoming) -> Self {
        Self { body, dec: EnvelopeDecoder::with_limit(MAX_UNARY), done: false }
    }

    /// The next message, `Ok(None)` at the end of the body or at an
    /// end-of-stream envelope.
    pub async fn next<T: DeserializeOwned>(&mut self) -> Result<Option<T>, ConnectError> {
        loop {
            match self.dec.next_envelope() {
                Ok(Some(env)) if env.is_end_stream() => return Ok(None),
                Ok(Some(env)) => {
                    return serde_json::from_slice(&env.payload).map(Some).map_err(|e| ConnectError::invalid_argument(format!("invalid request message: {e}")));
                }
                Ok(None) => {}
                Err(e) => return Err(ConnectError::invalid_argument(e.to_string())),
            }
            if self.done {
                self.dec.finish().map_err(|e| ConnectError::invalid_argument(e.to_string()))?;
                return Ok(None);
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.dec.push(&data);
                    }
                }
                Some(Err(e)) => return Err(ConnectError::new(airlock_proto::connect::Code::Canceled, format!("reading request: {e}"))),
                None => self.done = true,
            }
        }
    }
}
