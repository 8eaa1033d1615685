//! Airlock's Socket.IO endpoint (`/socket.io/` on `airlock serve`): the
//! operations of the SandboxSDK TypeScript SDK (sandboxes, templates, code
//! execution with streamed output, terminal commands, files, code
//! contexts, batch jobs) as Socket.IO v4 events, over WebSocket or HTTP
//! long-polling.
//!
//! A client authenticates in the handshake (`auth: { apiKey }`, or an
//! `X-API-KEY` header on the handshake request); a wrong key is a
//! `connect_error`. Every operation is an event with an acknowledgement:
//! the client emits `"sandbox:create"` with its arguments and a callback,
//! and gets `{ ok: true, data }` or `{ ok: false, error: { code, message,
//! status?, retryAfter? } }`. Streamed output arrives as events
//! (`code:stdout`, `terminal:stderr`, `batch:result`, ...) before the
//! acknowledgement of the operation they belong to. `docs/socketio.md`
//! lists every event and payload.
//!
//! Like the MCP endpoint, this crate is built on the Rust SDK and talks
//! HTTP to the server it is mounted in, with each socket's API key: the
//! REST API's checks and limits (the per-key rate limit with its 429 and
//! `Retry-After`, sandbox caps, body limits) apply to Socket.IO calls as
//! to any client, and nothing here touches the store, the runtime or an
//! agent.

mod error;
mod ops;
mod runs;
mod state;
mod streams;
mod templates;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airlock_sdk::{Client, Config, Sandbox};
use engineioxide::service::NotFoundService;
use serde_json::Value;
use socketioxide::extract::{AckSender, SocketRef, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::service::SocketIoService;
use socketioxide::SocketIo;

pub use error::GwError;

/// The largest Socket.IO message: file contents and code travel in one.
/// Above it the transport itself gives up on the connection, so the
/// operations' own limits (code, files) sit below it and answer with a
/// clear error instead.
pub const MAX_PAYLOAD: u64 = 32 * 1024 * 1024;

/// How long an operation's call to the server may wait for an answer
/// (creating a sandbox with packages, building a template): executions
/// stream and are bounded by their own timeouts.
const CALL_TIMEOUT: Duration = Duration::from_secs(600);

/// How long a checked API key is trusted before the next connection
/// checks it again.
const KEY_TRUST: Duration = Duration::from_secs(30);
/// Keys whose clients are kept; past it the cache starts over.
const MAX_CACHED_KEYS: usize = 64;

/// Shared by every socket.
pub(crate) struct Gateway {
    url: String,
    clients: Mutex<HashMap<String, (Client, Instant)>>,
    pub(crate) runs: runs::Registry,
}

impl Gateway {
    /// A client for `key` (no retries on 429: the caller sees the limit
    /// and decides), checked against the server when not seen lately.
    async fn client(&self, key: &str) -> Result<Client, GwError> {
        let cached = {
            let m = self.clients.lock().unwrap_or_else(|p| p.into_inner());
            m.get(key).filter(|(_, t)| t.elapsed() < KEY_TRUST).map(|(c, _)| c.clone())
        };
        if let Some(c) = cached {
            return Ok(c);
        }
        let c = Client::new(Config::new(self.url.clone(), key.to_string()).with_request_timeout(CALL_TIMEOUT).with_retries(0)).map_err(GwError::from)?;
        // Any authenticated call proves the key; the pool list is small.
        // The server checks the key before its rate limit, so a 429 proves
        // it too (and refusing the connection for it would be final).
        match c.pools().await {
            Ok(_) | Err(airlock_sdk::Error::RateLimited { .. }) => {}
            Err(e) => return Err(GwError::from(e)),
        }
        let mut m = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= MAX_CACHED_KEYS {
            m.clear();
        }
        m.insert(key.to_string(), (c.clone(), Instant::now()));
        Ok(c)
    }
}

/// One connected socket: its key, its client and the sandboxes it has
/// touched (their access tokens, so each call is not a lookup first).
pub(crate) struct Session {
    pub key: String,
    pub client: Client,
    sandboxes: Mutex<HashMap<String, Sandbox>>,
    pub gw: Arc<Gateway>,
    /// Event and metrics subscriptions, ended with the socket.
    pub(crate) subs: streams::Subscriptions,
}

/// Sandboxes a session remembers; past it the cache starts over.
const MAX_SESSION_SANDBOXES: usize = 256;

impl Session {
    pub(crate) async fn sandbox(&self, id: &str) -> Result<Sandbox, GwError> {
        ops::check_id("sandboxId", id)?;
        if let Some(s) = self.sandboxes.lock().unwrap_or_else(|p| p.into_inner()).get(id) {
            return Ok(s.clone());
        }
        let s = self.client.get(id).await.map_err(GwError::from)?;
        self.remember(&s);
        Ok(s)
    }

    pub(crate) fn remember(&self, s: &Sandbox) {
        let mut m = self.sandboxes.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= MAX_SESSION_SANDBOXES {
            m.clear();
        }
        m.insert(s.id().to_string(), s.clone());
    }

    pub(crate) fn forget(&self, id: &str) {
        self.sandboxes.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }
}

/// Why a connection was refused (the client's `connect_error` message).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Refused(String);

/// The handshake's API key: `auth.apiKey` (or `auth.token`), else the
/// handshake request's `X-API-KEY`.
fn handshake_key(s: &SocketRef, auth: &Result<Value, socketioxide::ParserError>) -> Option<String> {
    let from_auth = auth.as_ref().ok().and_then(|a| a.get("apiKey").or_else(|| a.get("token"))).and_then(Value::as_str).map(str::trim).filter(|k| !k.is_empty());
    if let Some(k) = from_auth {
        return Some(k.to_string());
    }
    s.req_parts().headers.get(airlock_proto::wire::API_KEY_HEADER).and_then(|v| v.to_str().ok()).map(str::trim).filter(|k| !k.is_empty()).map(str::to_string)
}

/// The endpoint as a tower service for `/socket.io/`; every operation
/// goes to `api_url` (the server's own listen address) with the socket's
/// API key.
pub fn service(api_url: impl Into<String>) -> SocketIoService<NotFoundService> {
    let gw = Arc::new(Gateway { url: api_url.into(), clients: Mutex::new(HashMap::new()), runs: runs::Registry::default() });
    let (svc, io) = SocketIo::builder().req_path("/socket.io").max_payload(MAX_PAYLOAD).ack_timeout(Duration::from_secs(30)).build_svc();
    let auth_gw = gw.clone();
    let check = move |s: SocketRef, TryData(auth): TryData<Value>| {
        let gw = auth_gw.clone();
        async move {
            let key = handshake_key(&s, &auth).ok_or_else(|| Refused("no API key: connect with auth: { apiKey }".into()))?;
            match gw.client(&key).await {
                Ok(_) => Ok(()),
                Err(e) if e.code == "UNAUTHORIZED" => Err(Refused("Invalid API key".into())),
                Err(e) => Err(Refused(format!("checking the API key: {}", e.message))),
            }
        }
    };
    let on_connect = move |s: SocketRef, TryData(auth): TryData<Value>| {
        let gw = gw.clone();
        async move {
            let Some(key) = handshake_key(&s, &auth) else { return };
            let client = match gw.client(&key).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "a checked key failed at connect");
                    let _ = s.disconnect();
                    return;
                }
            };
            let sess = Arc::new(Session { key, client, sandboxes: Mutex::new(HashMap::new()), gw, subs: Default::default() });
            tracing::debug!(sid = %s.id, "socket.io client connected");
            ops::register(&s, &sess);
            state::register(&s, &sess);
            streams::register(&s, &sess);
        }
    };
    io.ns("/", on_connect.with(check));
    svc
}

/// Registers `f` as the handler of `event`: its payload is the event's
/// first argument, its answer the acknowledgement.
pub(crate) fn on<F, Fut>(s: &SocketRef, event: &'static str, sess: &Arc<Session>, f: F)
where
    F: Fn(Arc<Session>, SocketRef, Value) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Value, GwError>> + Send + 'static,
{
    let sess = sess.clone();
    s.on(event, move |s: SocketRef, TryData(data): TryData<Value>, ack: AckSender| {
        let (f, sess) = (f.clone(), sess.clone());
        async move {
            let started = Instant::now();
            let r = match data {
                Ok(v) => f(sess, s, v).await,
                Err(e) => Err(GwError::invalid(format!("{event}: the payload is not JSON: {e}"))),
            };
            if let Err(e) = &r {
                tracing::debug!(event, code = e.code, error = %e.message, "socket.io operation failed");
            }
            tracing::debug!(event, elapsed_ms = started.elapsed().as_secs_f64() * 1e3, "socket.io operation");
            let _ = ack.send(&error::envelope(r));
        }
    });
}

/// Emits on `s`, waiting a little when its send buffer is full; `false`
/// once the socket is gone.
pub(crate) async fn emit(s: &SocketRef, event: &str, payload: &Value) -> bool {
    for attempt in 0..200u32 {
        if !s.connected() {
            return false;
        }
        match s.emit(event, payload) {
            Ok(()) => return true,
            Err(socketioxide::SendError::Serialize(e)) => {
                tracing::warn!(event, error = %e, "an event could not be encoded");
                return true;
            }
            // The buffer is full (a slow client): give it time to drain.
            Err(_) => tokio::time::sleep(Duration::from_millis(5 * u64::from(attempt.min(20) + 1))).await,
        }
    }
    tracing::warn!(event, "a socket.io client did not read its events; dropping it");
    let _ = s.clone().disconnect();
    false
}
