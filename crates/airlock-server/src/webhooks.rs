//! Lifecycle webhooks: each registered URL is POSTed every lifecycle event
//! it asked for, in order, as E2B's `SandboxEvent` JSON, signed both as
//! E2B signs (`e2b-signature`: unpadded base64 of SHA-256 over the secret
//! then the body) and with an HMAC-SHA256 of the body
//! (`X-Airlock-Signature: sha256=<hex>`).
//!
//! Deliveries never hold up a sandbox: events are already in the store
//! when they are broadcast, and each webhook has its own task that reads
//! them from there after its cursor (the last event it handled, persisted
//! in the `webhooks` table), so a slow or dead receiver delays only its own
//! deliveries and a restarted server resumes where it stopped. Each event
//! is tried up to `MAX_ATTEMPTS` times with doubling back-off; a 2xx ends
//! it, anything else (another status, a refused connection, a timeout) is
//! tried again, and after the last attempt it is given up and the next one
//! goes.
//!
//! `http://` and `https://` (rustls; the system's CA bundle, or
//! `SSL_CERT_FILE`, plus `--webhook-ca` for a private CA; certificates are
//! always verified). Redirects are never followed (the status
//! is the answer). There are no address rules beyond the scheme: a
//! receiver inside a sandbox's network is a fine target.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use hmac::Mac;
use hyper_util::rt::TokioIo;
use rusqlite::{params, Connection, OptionalExtension};
use sha2::{Digest, Sha256};
use tokio::sync::broadcast::error::RecvError;

use crate::events::Event;
use crate::service::{now_ms, Service};
use crate::store::{Store, StoreError};
use crate::telemetry::TELEMETRY;

/// Attempts per event: the first and four retries, 1, 2, 4 and 8 s apart.
pub const MAX_ATTEMPTS: u32 = 5;
/// One attempt, from connecting to the response's head.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// The most webhooks a server keeps.
pub const MAX_WEBHOOKS: usize = 100;
/// The most events a webhook catches up on after being away (a server that
/// was down, a receiver that was slow): older ones are skipped, so a
/// returning server does not replay days of history.
pub const BACKLOG: i64 = 1000;
pub const MAX_URL: usize = 2048;
pub const MAX_NAME: usize = 128;
pub const MAX_SECRET: usize = 256;
pub const MAX_TYPES: usize = 64;

/// Events read from the store at a time.
const PAGE: usize = 100;

// ------------------------------------------------------------------ store

/// One stored webhook. Times are unix milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookRow {
    pub id: String,
    pub name: String,
    pub url: String,
    /// As registered (either spelling); empty: every event.
    pub events: Vec<String>,
    /// Signs deliveries; empty: unsigned. Kept in clear, since signing
    /// needs it (the store is root's alone).
    pub secret: String,
    pub enabled: bool,
    pub created_at: i64,
    /// The last event handled: deliveries resume after it.
    pub cursor: i64,
    /// The last attempt: its HTTP status (0: no answer), why it failed
    /// (empty: it did not), when, and the how-manieth for its event.
    pub last_status: u16,
    pub last_error: String,
    pub last_attempt_at: i64,
    pub attempts: u32,
    pub delivered: u64,
    pub failed: u64,
}

pub(crate) fn migrate(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS webhooks (
             id TEXT PRIMARY KEY,
             name TEXT NOT NULL,
             url TEXT NOT NULL,
             events TEXT NOT NULL,
             secret TEXT NOT NULL,
             enabled INTEGER NOT NULL,
             created_at INTEGER NOT NULL,
             cursor INTEGER NOT NULL,
             last_status INTEGER NOT NULL DEFAULT 0,
             last_error TEXT NOT NULL DEFAULT '',
             last_attempt_at INTEGER NOT NULL DEFAULT 0,
             attempts INTEGER NOT NULL DEFAULT 0,
             delivered INTEGER NOT NULL DEFAULT 0,
             failed INTEGER NOT NULL DEFAULT 0
         );",
    )?;
    Ok(())
}

const COLS: &str = "id, name, url, events, secret, enabled, created_at, cursor, last_status, last_error, last_attempt_at, attempts, delivered, failed";

fn webhook_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<WebhookRow> {
    let events: String = r.get(3)?;
    Ok(WebhookRow {
        id: r.get(0)?,
        name: r.get(1)?,
        url: r.get(2)?,
        events: serde_json::from_str(&events).unwrap_or_default(),
        secret: r.get(4)?,
        enabled: r.get(5)?,
        created_at: r.get(6)?,
        cursor: r.get(7)?,
        last_status: r.get::<_, i64>(8)?.clamp(0, u16::MAX as i64) as u16,
        last_error: r.get(9)?,
        last_attempt_at: r.get(10)?,
        attempts: r.get::<_, i64>(11)?.max(0) as u32,
        delivered: r.get::<_, i64>(12)?.max(0) as u64,
        failed: r.get::<_, i64>(13)?.max(0) as u64,
    })
}

/// How one attempt went, for `Store::record_attempt`.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub status: u16,
    pub error: String,
    pub at: i64,
    pub number: u32,
}

impl Store {
    /// Inserts a webhook unless `max` exist already (false then).
    pub fn insert_webhook(&self, w: &WebhookRow, max: usize) -> Result<bool, StoreError> {
        let events = serde_json::to_string(&w.events).unwrap_or_else(|_| "[]".into());
        let n = self.c().execute(
            "INSERT INTO webhooks (id, name, url, events, secret, enabled, created_at, cursor)
             SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8 WHERE (SELECT COUNT(*) FROM webhooks) < ?9",
            params![w.id, w.name, w.url, events, w.secret, w.enabled, w.created_at, w.cursor, max as i64],
        )?;
        Ok(n > 0)
    }

    pub fn webhook(&self, id: &str) -> Result<Option<WebhookRow>, StoreError> {
        Ok(self.c().query_row(&format!("SELECT {COLS} FROM webhooks WHERE id = ?1"), params![id], webhook_row).optional()?)
    }

    /// Every webhook, oldest first.
    pub fn webhooks(&self) -> Result<Vec<WebhookRow>, StoreError> {
        let c = self.c();
        let mut st = c.prepare(&format!("SELECT {COLS} FROM webhooks ORDER BY created_at, id"))?;
        let rows = st.query_map([], webhook_row)?.collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Replaces what a user may change (and the cursor, when a disabled
    /// webhook is enabled again); false for an unknown id.
    pub fn update_webhook(&self, w: &WebhookRow) -> Result<bool, StoreError> {
        let events = serde_json::to_string(&w.events).unwrap_or_else(|_| "[]".into());
        let n = self.c().execute(
            "UPDATE webhooks SET name = ?2, url = ?3, events = ?4, secret = ?5, enabled = ?6, cursor = ?7 WHERE id = ?1",
            params![w.id, w.name, w.url, events, w.secret, w.enabled, w.cursor],
        )?;
        Ok(n > 0)
    }

    pub fn delete_webhook(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self.c().execute("DELETE FROM webhooks WHERE id = ?1", params![id])? > 0)
    }

    pub fn record_attempt(&self, id: &str, a: &Attempt) -> Result<(), StoreError> {
        self.c().execute(
            "UPDATE webhooks SET last_status = ?2, last_error = ?3, last_attempt_at = ?4, attempts = ?5 WHERE id = ?1",
            params![id, a.status as i64, a.error, a.at, a.number as i64],
        )?;
        Ok(())
    }

    /// Moves a webhook's cursor past event `seq` (never back), counting
    /// it delivered (`Some(true)`), given up on (`Some(false)`) or not
    /// wanted (`None`).
    pub fn webhook_handled(&self, id: &str, seq: i64, outcome: Option<bool>) -> Result<(), StoreError> {
        let (ok, failed) = match outcome {
            Some(true) => (1, 0),
            Some(false) => (0, 1),
            None => (0, 0),
        };
        self.c().execute("UPDATE webhooks SET cursor = MAX(cursor, ?2), delivered = delivered + ?3, failed = failed + ?4 WHERE id = ?1", params![id, seq, ok, failed])?;
        Ok(())
    }
}

// ------------------------------------------------------------- validation

/// Why a webhook's settings were refused (the API's 400 message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("url is required")]
    NoUrl,
    #[error("url is longer than {MAX_URL} bytes")]
    UrlTooLong,
    #[error("url {0:?} is not a URL: {1}")]
    BadUrl(String, String),
    #[error("url {0:?} must be http:// or https://host[:port]/path")]
    Scheme(String),
    #[error("url {0:?} has no host")]
    NoHost(String),
    #[error("url {0:?} must not carry a user name or password")]
    UserInfo(String),
    #[error("name is longer than {MAX_NAME} characters")]
    NameTooLong,
    #[error("the secret is longer than {MAX_SECRET} bytes")]
    SecretTooLong,
    #[error("at most {MAX_TYPES} event types")]
    TooManyTypes,
    #[error("{0}")]
    Type(String),
}

/// Where deliveries go: a checked `http://` or `https://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub tls: bool,
    /// Without IPv6 brackets: what a socket address takes.
    pub host: String,
    pub port: u16,
    /// The `Host` header.
    pub authority: String,
    pub path: String,
}

impl Target {
    pub fn parse(url: &str) -> Result<Self, Invalid> {
        if url.is_empty() {
            return Err(Invalid::NoUrl);
        }
        if url.len() > MAX_URL {
            return Err(Invalid::UrlTooLong);
        }
        let uri: http::Uri = url.parse().map_err(|e: http::uri::InvalidUri| Invalid::BadUrl(url.to_string(), e.to_string()))?;
        let tls = match uri.scheme_str() {
            Some(s) if s.eq_ignore_ascii_case("http") => false,
            Some(s) if s.eq_ignore_ascii_case("https") => true,
            _ => return Err(Invalid::Scheme(url.to_string())),
        };
        let Some(auth) = uri.authority() else { return Err(Invalid::NoHost(url.to_string())) };
        if auth.as_str().contains('@') {
            return Err(Invalid::UserInfo(url.to_string()));
        }
        let host = auth.host().trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(Invalid::NoHost(url.to_string()));
        }
        Ok(Target {
            tls,
            host: host.to_string(),
            port: auth.port_u16().unwrap_or(if tls { 443 } else { 80 }),
            authority: auth.as_str().to_string(),
            path: uri.path_and_query().map(|p| p.as_str().to_string()).filter(|p| !p.is_empty()).unwrap_or_else(|| "/".into()),
        })
    }
}

/// Checks what a user registers or changes.
pub fn check(url: &str, name: &str, secret: &str, events: &[String]) -> Result<(), Invalid> {
    Target::parse(url)?;
    if name.chars().count() > MAX_NAME {
        return Err(Invalid::NameTooLong);
    }
    if secret.len() > MAX_SECRET {
        return Err(Invalid::SecretTooLong);
    }
    if events.len() > MAX_TYPES {
        return Err(Invalid::TooManyTypes);
    }
    crate::events::check_types(events).map_err(Invalid::Type)
}

/// Whether a webhook wants this event.
pub fn wants(events: &[String], e: &Event) -> bool {
    events.is_empty() || events.iter().any(|n| crate::events::type_matches(n, &e.kind, &e.data))
}

// ---------------------------------------------------------------- signing

/// E2B's `e2b-signature`: SHA-256 over the secret then the body, base64
/// without its `=` padding.
pub fn e2b_signature(secret: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(secret.as_bytes());
    h.update(body);
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(h.finalize())
}

/// `X-Airlock-Signature`: `sha256=` and the hex HMAC-SHA256 of the body
/// keyed with the secret (GitHub's form), which unlike E2B's resists
/// length extension.
pub fn hmac_signature(secret: &str, body: &[u8]) -> String {
    // HMAC takes a key of any length: this cannot fail.
    let mut m = match hmac::Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    m.update(body);
    let tag = m.finalize().into_bytes();
    format!("sha256={}", tag.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// The headers of one delivery attempt.
pub fn headers(hook: &WebhookRow, e: &Event, body: &[u8], attempt: u32, delivery_id: &str, now_s: i64) -> Vec<(&'static str, String)> {
    let mut h = vec![
        ("content-type", "application/json".to_string()),
        ("user-agent", concat!("airlock-webhooks/", env!("CARGO_PKG_VERSION")).to_string()),
        ("e2b-webhook-id", hook.id.clone()),
        ("e2b-delivery-id", delivery_id.to_string()),
        ("x-airlock-webhook", hook.id.clone()),
        ("x-airlock-event", e.kind.clone()),
        ("x-airlock-event-id", e.id.to_string()),
        // The same for every attempt at one event: what receivers dedupe on.
        ("x-airlock-delivery", format!("{}-{}", hook.id, e.id)),
        ("x-airlock-attempt", attempt.to_string()),
        ("x-airlock-timestamp", now_s.to_string()),
    ];
    if !hook.secret.is_empty() {
        h.push(("e2b-signature-version", "v1".into()));
        h.push(("e2b-signature", e2b_signature(&hook.secret, body)));
        h.push(("x-airlock-signature", hmac_signature(&hook.secret, body)));
    }
    h
}

// --------------------------------------------------------------- delivery

/// Why an attempt got no answer.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("invalid webhook url")]
    Url(#[source] Invalid),
    #[error("connecting to {addr}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP exchange with {addr}")]
    Http {
        addr: String,
        #[source]
        source: hyper::Error,
    },
    #[error("building the request")]
    Request(#[source] http::Error),
    #[error("no answer within {}s", ATTEMPT_TIMEOUT.as_secs())]
    Timeout,
    #[error("TLS with {addr}")]
    Tls {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    TlsSetup(String),
}

/// Where Linux distributions keep their CA bundle.
const SYSTEM_BUNDLES: [&str; 3] = ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem"];

/// The TLS client for `https://` receivers, built once per process: the
/// system's CA bundle (`SSL_CERT_FILE` first) and the `--webhook-ca` file.
pub fn tls_client(extra_ca: Option<&std::path::Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    static TLS: std::sync::OnceLock<Result<Arc<rustls::ClientConfig>, String>> = std::sync::OnceLock::new();
    TLS.get_or_init(|| build_tls(extra_ca)).clone()
}

pub(crate) fn build_tls(extra_ca: Option<&std::path::Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    let system = std::env::var_os("SSL_CERT_FILE").map(std::path::PathBuf::from).into_iter().chain(SYSTEM_BUNDLES.iter().map(std::path::PathBuf::from)).find(|p| p.is_file());
    if let Some(p) = &system {
        if let Ok(certs) = CertificateDer::pem_file_iter(p) {
            // A bundle with a certificate rustls cannot parse still gives the rest.
            let (added, _) = roots.add_parsable_certificates(certs.flatten());
            tracing::debug!(bundle = %p.display(), added, "CA bundle for webhook deliveries");
        }
    }
    if let Some(p) = extra_ca {
        let certs = CertificateDer::pem_file_iter(p).map_err(|e| format!("reading the CA file {}: {e}", p.display()))?;
        let mut n = 0;
        for c in certs {
            let c = c.map_err(|e| format!("the CA file {}: {e}", p.display()))?;
            roots.add(c).map_err(|e| format!("the CA file {}: {e}", p.display()))?;
            n += 1;
        }
        if n == 0 {
            return Err(format!("the CA file {} holds no certificate", p.display()));
        }
    }
    if roots.is_empty() {
        return Err("no trusted CA certificates for https:// webhooks: install the system's CA bundle (ca-certificates) or pass --webhook-ca".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// POSTs `body` to the target; the status of the answer. Redirects are
/// answers like any other: nothing is followed.
async fn post(t: &Target, headers: &[(&'static str, String)], body: Bytes, extra_ca: Option<&std::path::Path>) -> Result<u16, DeliveryError> {
    let addr = if t.host.contains(':') { format!("[{}]:{}", t.host, t.port) } else { format!("{}:{}", t.host, t.port) };
    let stream = tokio::net::TcpStream::connect((t.host.as_str(), t.port)).await.map_err(|source| DeliveryError::Connect { addr: addr.clone(), source })?;
    let _ = stream.set_nodelay(true);
    if !t.tls {
        return exchange(stream, t, headers, body, addr).await;
    }
    let cfg = tls_client(extra_ca).map_err(DeliveryError::TlsSetup)?;
    let name = rustls::pki_types::ServerName::try_from(t.host.clone()).map_err(|e| DeliveryError::TlsSetup(format!("{}: not a TLS server name: {e}", t.host)))?;
    let tls = tokio_rustls::TlsConnector::from(cfg).connect(name, stream).await.map_err(|source| DeliveryError::Tls { addr: addr.clone(), source })?;
    exchange(tls, t, headers, body, addr).await
}

/// The HTTP/1.1 request and its answer's status, over either stream.
async fn exchange<I>(io: I, t: &Target, headers: &[(&'static str, String)], body: Bytes, addr: String) -> Result<u16, DeliveryError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await.map_err(|source| DeliveryError::Http { addr: addr.clone(), source })?;
    // The connection lives until the answer's head is in; its body is
    // never read, so the connection goes with this task.
    let conn = tokio::spawn(conn);
    let mut b = http::Request::builder().method(http::Method::POST).uri(t.path.as_str()).header(http::header::HOST, t.authority.as_str());
    for (k, v) in headers {
        b = b.header(*k, v.as_str());
    }
    let req = b.header(http::header::CONTENT_LENGTH, body.len()).body(http_body_util::Full::new(body)).map_err(DeliveryError::Request)?;
    let r = tx.send_request(req).await;
    conn.abort();
    r.map(|resp| resp.status().as_u16()).map_err(|source| DeliveryError::Http { addr, source })
}

/// One attempt with its timeout: the status, or why there was none.
async fn attempt(url: &str, headers: &[(&'static str, String)], body: Bytes, extra_ca: Option<&std::path::Path>) -> Result<u16, DeliveryError> {
    let t = Target::parse(url).map_err(DeliveryError::Url)?;
    tokio::time::timeout(ATTEMPT_TIMEOUT, post(&t, headers, body, extra_ca)).await.unwrap_or(Err(DeliveryError::Timeout))
}

use airlock_runtime::init::chain;

/// A random id for one attempt (`e2b-delivery-id`), UUID-shaped like E2B's.
fn delivery_id() -> String {
    let t = crate::ids::access_token().unwrap_or_default();
    if t.len() < 32 {
        return t;
    }
    format!("{}-{}-{}-{}-{}", &t[..8], &t[8..12], &t[12..16], &t[16..20], &t[20..32])
}

/// Delivers one event to one webhook with retries; whether it got a 2xx.
async fn deliver(svc: &Service, hook: &WebhookRow, e: &Event) -> bool {
    let body = Bytes::from(serde_json::to_vec(&crate::events::sandbox_event(e)).unwrap_or_default());
    let mut last_error = String::new();
    for n in 1..=MAX_ATTEMPTS {
        let h = headers(hook, e, &body, n, &delivery_id(), now_ms() / 1000);
        let r = attempt(&hook.url, &h, body.clone(), svc.cfg.webhook_ca.as_deref()).await;
        let (status, error) = match &r {
            Ok(s) if (200..300).contains(s) => (*s, String::new()),
            Ok(s) => (*s, format!("the receiver answered {s}")),
            Err(err) => (0, chain(err)),
        };
        let a = Attempt { status, error: error.clone(), at: now_ms(), number: n };
        let store = svc.store().clone();
        let id = hook.id.clone();
        if let Ok(Err(err)) = svc.blocking(move || store.record_attempt(&id, &a)).await {
            tracing::warn!(webhook_id = %hook.id, error = %err, "recording a delivery attempt failed");
        }
        if error.is_empty() {
            TELEMETRY.webhook_deliveries.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(webhook_id = %hook.id, event_id = e.id, attempt = n, status, "webhook delivered");
            return true;
        }
        if n == MAX_ATTEMPTS {
            last_error = error;
            break;
        }
        TELEMETRY.webhook_retries.fetch_add(1, Ordering::Relaxed);
        tracing::info!(webhook_id = %hook.id, event_id = e.id, attempt = n, status, error = %error, "webhook delivery failed; retrying");
        tokio::time::sleep(Duration::from_secs(1 << (n - 1))).await;
    }
    TELEMETRY.webhook_failures.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(webhook_id = %hook.id, event_id = e.id, attempts = MAX_ATTEMPTS, error = %last_error, "webhook delivery given up");
    false
}

async fn load(svc: &Service, id: &str) -> Option<WebhookRow> {
    let store = svc.store().clone();
    let id2 = id.to_string();
    match svc.blocking(move || store.webhook(&id2)).await {
        Ok(Ok(row)) => row,
        Ok(Err(e)) => {
            // A store error is not the webhook's end: the supervisor
            // starts it again.
            tracing::warn!(webhook_id = %id, error = %e, "reading a webhook failed");
            None
        }
        Err(e) => {
            tracing::warn!(webhook_id = %id, error = %e, "reading a webhook failed");
            None
        }
    }
}

/// One webhook's deliveries: the stored events after its cursor, in
/// order, then live ones as they are stored. Returns when the webhook is
/// deleted or disabled.
async fn worker(svc: Arc<Service>, id: String) {
    // Subscribed before the store is read: nothing falls between the two.
    let mut live = svc.subscribe();
    let Some(hook) = load(&svc, &id).await else { return };
    let store = svc.store().clone();
    if let Ok(Ok(last)) = svc.blocking(move || store.last_event_id()).await {
        if last - hook.cursor > BACKLOG {
            tracing::warn!(webhook_id = %id, skipped = last - BACKLOG - hook.cursor, "webhook far behind: older events are skipped");
            let store = svc.store().clone();
            let id2 = id.clone();
            let _ = svc.blocking(move || store.webhook_handled(&id2, last - BACKLOG, None)).await;
        }
    }
    loop {
        let Some(hook) = load(&svc, &id).await.filter(|h| h.enabled) else { return };
        let page = match svc.events_after(hook.cursor, None, PAGE).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(webhook_id = %id, error = %e, "reading events for a webhook failed");
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            }
        };
        if page.is_empty() {
            // A lagging receiver only means events to read from the store.
            tokio::select! {
                r = live.recv() => if let Err(RecvError::Closed) = r { return },
                _ = tokio::time::sleep(Duration::from_secs(30)) => {}
            }
            continue;
        }
        for e in page {
            // Settings changed since (a PATCH) apply from the next event on.
            let Some(hook) = load(&svc, &id).await.filter(|h| h.enabled) else { return };
            let outcome = if wants(&hook.events, &e) { Some(deliver(&svc, &hook, &e).await) } else { None };
            let store = svc.store().clone();
            let id2 = id.clone();
            match svc.blocking(move || store.webhook_handled(&id2, e.id, outcome)).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => tracing::warn!(webhook_id = %id, error = %err, "recording a webhook's progress failed"),
                Err(err) => tracing::warn!(webhook_id = %id, error = %err, "recording a webhook's progress failed"),
            }
        }
    }
}

/// Wakes the supervisor when webhooks are added, changed or removed.
#[derive(Default)]
pub struct Hub {
    changed: tokio::sync::Notify,
}

impl Hub {
    pub fn changed(&self) {
        // A permit is kept when the supervisor is busy: none is lost.
        self.changed.notify_one();
    }
}

/// The workers of the supervisor; dropping it (the server stops) stops them.
struct Workers(HashMap<String, tokio::task::JoinHandle<()>>);

impl Drop for Workers {
    fn drop(&mut self) {
        for h in self.0.values() {
            h.abort();
        }
    }
}

/// Runs one worker per enabled webhook, started and stopped as webhooks
/// come and go (and started again should one end early), until aborted.
pub async fn run(svc: Arc<Service>) {
    let mut workers = Workers(HashMap::new());
    loop {
        let store = svc.store().clone();
        match svc.blocking(move || store.webhooks()).await {
            Ok(Ok(rows)) => {
                let wanted: std::collections::HashSet<String> = rows.into_iter().filter(|r| r.enabled).map(|r| r.id).collect();
                workers.0.retain(|id, h| {
                    let keep = wanted.contains(id) && !h.is_finished();
                    if !keep {
                        h.abort();
                    }
                    keep
                });
                for id in wanted {
                    if !workers.0.contains_key(&id) {
                        tracing::debug!(webhook_id = %id, "webhook deliveries started");
                        workers.0.insert(id.clone(), tokio::spawn(worker(svc.clone(), id)));
                    }
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "reading webhooks failed"),
            Err(e) => tracing::warn!(error = %e, "reading webhooks failed"),
        }
        tokio::select! {
            _ = svc.webhook_hub().changed.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(30)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        // RFC 4231, test case 2.
        assert_eq!(hmac_signature("Jefe", b"what do ya want for nothing?"), "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }

    #[test]
    fn e2b_signature_is_unpadded_base64_of_sha256_over_secret_then_body() {
        // python3 -c 'import hashlib,base64;print(base64.b64encode(hashlib.sha256(b"secret"+b"{\"a\":1}").digest()).decode().rstrip("="))'
        assert_eq!(e2b_signature("secret", br#"{"a":1}"#), "N7005LKS7534v+cOP1BSYTkklJDDwllM8gF1unZl4B0");
        assert!(!e2b_signature("s", b"").ends_with('='));
    }

    #[test]
    fn urls_are_checked() {
        let t = Target::parse("http://127.0.0.1:8080/hook?x=1").expect("url");
        assert_eq!((t.host.as_str(), t.port, t.authority.as_str(), t.path.as_str()), ("127.0.0.1", 8080, "127.0.0.1:8080", "/hook?x=1"));
        let t = Target::parse("http://[::1]/").expect("v6");
        assert_eq!((t.host.as_str(), t.port), ("::1", 80));
        assert_eq!(Target::parse("http://receiver.test").expect("bare").path, "/");
        assert!(matches!(Target::parse(""), Err(Invalid::NoUrl)));
        let t = Target::parse("https://receiver.test/hook").expect("https");
        assert_eq!((t.tls, t.port, t.path.as_str()), (true, 443, "/hook"));
        assert!(matches!(Target::parse("ftp://receiver.test/"), Err(Invalid::Scheme(_))));
        assert!(matches!(Target::parse("/relative"), Err(Invalid::Scheme(_))));
        assert!(matches!(Target::parse("http://user:pw@receiver.test/"), Err(Invalid::UserInfo(_))));
        assert!(matches!(Target::parse("http://exa mple/"), Err(Invalid::BadUrl(..))));
        assert!(matches!(Target::parse(&format!("http://receiver.test/{}", "a".repeat(MAX_URL))), Err(Invalid::UrlTooLong)));
        assert!(Invalid::Scheme("u".into()).to_string().contains("https://"));
        assert!(check("http://receiver.test/", "n", "s", &["created".into(), "sandbox.lifecycle.killed".into()]).is_ok());
        assert!(matches!(check("http://receiver.test/", "n", "s", &["exploded".into()]), Err(Invalid::Type(m)) if m.contains("exploded")));
        assert!(matches!(check("http://receiver.test/", &"n".repeat(MAX_NAME + 1), "", &[]), Err(Invalid::NameTooLong)));
        assert!(matches!(check("http://receiver.test/", "", &"s".repeat(MAX_SECRET + 1), &[]), Err(Invalid::SecretTooLong)));
    }

    fn hook(secret: &str, events: &[&str]) -> WebhookRow {
        WebhookRow {
            id: "wh_1".into(),
            name: "n".into(),
            url: "http://receiver.test/".into(),
            events: events.iter().map(|s| s.to_string()).collect(),
            secret: secret.into(),
            enabled: true,
            created_at: 1,
            cursor: 0,
            last_status: 0,
            last_error: String::new(),
            last_attempt_at: 0,
            attempts: 0,
            delivered: 0,
            failed: 0,
        }
    }

    fn event(kind: &str, data: serde_json::Value) -> Event {
        Event { id: 42, kind: kind.into(), sandbox_id: "s".into(), timestamp: "t".into(), metadata: Default::default(), data, template_id: "base".into() }
    }

    #[test]
    fn deliveries_are_signed_both_ways_and_filtered_in_either_spelling() {
        let e = event("killed", serde_json::json!({}));
        let h = headers(&hook("k", &[]), &e, b"body", 2, "d-1", 100);
        let get = |k: &str| h.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("e2b-signature"), Some(e2b_signature("k", b"body").as_str()));
        assert_eq!(get("x-airlock-signature"), Some(hmac_signature("k", b"body").as_str()));
        assert_eq!((get("e2b-webhook-id"), get("e2b-delivery-id"), get("e2b-signature-version")), (Some("wh_1"), Some("d-1"), Some("v1")));
        assert_eq!(
            (get("x-airlock-event"), get("x-airlock-delivery"), get("x-airlock-attempt"), get("x-airlock-timestamp")),
            (Some("killed"), Some("wh_1-42"), Some("2"), Some("100"))
        );
        let unsigned = headers(&hook("", &[]), &e, b"body", 1, "d", 1);
        assert!(!unsigned.iter().any(|(k, _)| k.contains("signature")), "no secret, no signature");
        assert!(wants(&[], &e));
        assert!(wants(&["sandbox.lifecycle.killed".into()], &e) && wants(&["killed".into()], &e));
        assert!(wants(&["sandbox.lifecycle.killed".into()], &event("timeout", serde_json::json!({"action": "kill"}))));
        assert!(!wants(&["created".into(), "sandbox.lifecycle.paused".into()], &e));
        assert_eq!(delivery_id().len(), 36);
    }

    #[tokio::test]
    async fn an_attempt_posts_the_exact_body_and_follows_no_redirect() {
        use http_body_util::BodyExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let seen = seen2.clone();
                let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        let host = parts.headers.get("host").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
                        seen.lock().unwrap_or_else(|p| p.into_inner()).push((parts.method.to_string(), parts.uri.to_string(), host, body));
                        // Somewhere else: a client that follows would ask again.
                        let mut r = http::Response::new(http_body_util::Full::new(Bytes::new()));
                        *r.status_mut() = http::StatusCode::FOUND;
                        r.headers_mut().insert("location", http::HeaderValue::from_static("/elsewhere"));
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
                tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc));
            }
        });
        let body = Bytes::from_static(br#"{"id":"1"}"#);
        let r = attempt(&format!("http://127.0.0.1:{port}/hook?x=1"), &[("x-airlock-event", "created".into())], body.clone(), None).await;
        assert_eq!(r.expect("an answer"), 302, "a redirect is the answer");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let seen = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
        assert_eq!(seen, [("POST".to_string(), "/hook?x=1".to_string(), format!("127.0.0.1:{port}"), body)], "one request, not followed");

        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = closed.local_addr().expect("addr").port();
        drop(closed);
        let err = attempt(&format!("http://127.0.0.1:{port}/"), &[], Bytes::new(), None).await.expect_err("refused");
        assert!(chain(&err).starts_with(&format!("connecting to 127.0.0.1:{port}: ")), "{}", chain(&err));
    }

    #[test]
    fn webhooks_are_stored_bounded_and_resume_from_their_cursor() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = Store::open(&dir.path().join("db")).expect("open");
        let mut w = hook("k", &["created"]);
        w.cursor = 5;
        assert!(s.insert_webhook(&w, 2).expect("insert"));
        assert!(s.insert_webhook(&WebhookRow { id: "wh_2".into(), ..w.clone() }, 2).expect("insert"));
        assert!(!s.insert_webhook(&WebhookRow { id: "wh_3".into(), ..w.clone() }, 2).expect("insert"), "the limit holds");
        s.record_attempt("wh_1", &Attempt { status: 500, error: "the receiver answered 500".into(), at: 9, number: 1 }).expect("attempt");
        s.webhook_handled("wh_1", 7, Some(true)).expect("handled");
        s.webhook_handled("wh_1", 6, None).expect("an older one");
        s.webhook_handled("wh_1", 8, Some(false)).expect("gave up");
        let got = s.webhook("wh_1").expect("get").expect("there");
        assert_eq!((got.cursor, got.delivered, got.failed), (8, 1, 1), "the cursor never goes back");
        assert_eq!((got.last_status, got.last_error.as_str(), got.attempts, got.last_attempt_at), (500, "the receiver answered 500", 1, 9));
        assert_eq!((got.events.as_slice(), got.secret.as_str()), (["created".to_string()].as_slice(), "k"));
        let mut changed = got.clone();
        changed.url = "http://other.test/".into();
        changed.enabled = false;
        assert!(s.update_webhook(&changed).expect("update"));
        assert_eq!(s.webhook("wh_1").expect("get").expect("there").url, "http://other.test/");
        assert_eq!(s.webhooks().expect("list").len(), 2);
        assert!(s.delete_webhook("wh_1").expect("delete"));
        assert!(!s.delete_webhook("wh_1").expect("again"));
        assert!(s.webhook("wh_1").expect("get").is_none());
    }
}
