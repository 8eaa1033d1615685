//! The HTTP side of the SDK: one pooled HTTP/1.1 client per [`Client`],
//! control-API calls (`X-API-KEY`, JSON, retries on 429), and sandbox calls
//! routed by `E2b-Sandbox-Id` to the agent: Connect unary and
//! server-streaming RPCs with JSON, and envd's plain-HTTP `/files`.
//!
//! Plain `http://` only: TLS is left to a reverse proxy in front of the
//! server for now (the workspace carries no TLS stack).

use std::sync::Arc;
use std::time::Duration;

use airlock_proto::connect::{self, CONTENT_TYPE_JSON, CONTENT_TYPE_STREAM_JSON};
use airlock_proto::envd::ENVD_PORT;
use base64::Engine;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{self, BoxError, Error, Result};
use crate::stream::ConnectStream;
use crate::Config;

pub(crate) type ReqBody = UnsyncBoxBody<Bytes, BoxError>;

const USER_AGENT: &str = concat!("airlock-rust-sdk/", env!("CARGO_PKG_VERSION"));
/// How often the agent should send keepalives on an idle stream, as the
/// official SDKs ask.
const KEEPALIVE_SECS: &str = "50";

pub(crate) fn full(b: impl Into<Bytes>) -> ReqBody {
    Full::new(b.into()).map_err(|e| match e {}).boxed_unsync()
}

/// A connection to one server: configuration plus a pool of HTTP/1.1
/// connections. Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: Config,
    http: hyper_util::client::legacy::Client<HttpConnector, ReqBody>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("config", &self.inner.cfg).finish()
    }
}

/// The sandbox a call is for: its id and the access token its agent wants.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub id: String,
    pub token: Option<String>,
}

/// A fully read response.
pub(crate) struct Reply {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

fn check_url(what: &str, url: &str) -> Result<()> {
    let uri: http::Uri = url.parse().map_err(|e| Error::Config(format!("{what} {url:?} is not a URL: {e}")))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(Error::Config(format!("{what} {url:?} uses https, which this SDK does not speak yet: use http:// (for example through a local TLS-terminating proxy)")))
        }
        _ => return Err(Error::Config(format!("{what} {url:?} must start with http://"))),
    }
    if uri.host().is_none() {
        return Err(Error::Config(format!("{what} {url:?} has no host")));
    }
    Ok(())
}

/// Percent-encodes a query component (RFC 3986 unreserved characters stay).
pub(crate) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn basic_user(user: &str) -> Result<HeaderValue> {
    let v = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:")));
    HeaderValue::from_str(&v).map_err(|_| Error::Config(format!("invalid user name {user:?}")))
}

fn header_value(what: &str, v: &str) -> Result<HeaderValue> {
    HeaderValue::from_str(v).map_err(|_| Error::Config(format!("invalid {what} {v:?}")))
}

impl Client {
    /// A client for the server `cfg` names. Fails if the URLs cannot work.
    pub fn new(cfg: Config) -> Result<Self> {
        check_url("API URL", &cfg.api_url)?;
        check_url("sandbox URL", &cfg.sandbox_url)?;
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        conn.set_connect_timeout(Some(cfg.request_timeout));
        let http = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(60)).build(conn);
        Ok(Self { inner: Arc::new(Inner { cfg, http }) })
    }

    /// A client configured from the environment (see [`Config::from_env`]).
    pub fn from_env() -> Result<Self> {
        Self::new(Config::from_env())
    }

    pub fn config(&self) -> &Config {
        &self.inner.cfg
    }

    /// Sends a request, bounding the wait for the response headers.
    pub(crate) async fn send(&self, req: Request<ReqBody>) -> Result<Response<Incoming>> {
        let url = req.uri().to_string();
        let t = self.inner.cfg.request_timeout;
        match tokio::time::timeout(t, self.inner.http.request(req)).await {
            Err(_) => Err(Error::Timeout(format!("no response from {url} within {t:?}"))),
            Ok(Err(e)) => Err(Error::Connection { url, source: Box::new(e) }),
            Ok(Ok(r)) => Ok(r),
        }
    }

    /// Reads a whole (small) response body within the request timeout.
    pub(crate) async fn read_body(&self, body: Incoming, url: &str) -> Result<Bytes> {
        let t = self.inner.cfg.request_timeout;
        match tokio::time::timeout(t, body.collect()).await {
            Err(_) => Err(Error::Timeout(format!("reading the response of {url} took longer than {t:?}"))),
            Ok(Err(e)) => Err(Error::Connection { url: url.to_string(), source: Box::new(e) }),
            Ok(Ok(c)) => Ok(c.to_bytes()),
        }
    }

    // ---------------------------------------------------------- control API

    /// One control-API call; non-2xx answers become errors. Retries 429s.
    pub(crate) async fn api(&self, method: Method, path: &str, body: Option<serde_json::Value>) -> Result<Reply> {
        let key = self.inner.cfg.api_key.as_deref().ok_or_else(|| Error::Auth("no API key: set AIRLOCK_API_KEY (or E2B_API_KEY), or pass one in the Config".to_string()))?;
        let url = format!("{}{}", self.inner.cfg.api_url.trim_end_matches('/'), path);
        let payload = body.map(|b| Bytes::from(serde_json::to_vec(&b).unwrap_or_default()));
        let mut attempt = 0;
        loop {
            let mut b = Request::builder()
                .method(method.clone())
                .uri(&url)
                .header(airlock_proto::wire::API_KEY_HEADER, header_value("API key", key)?)
                .header(header::USER_AGENT, USER_AGENT);
            if payload.is_some() {
                b = b.header(header::CONTENT_TYPE, CONTENT_TYPE_JSON);
            }
            let req = b.body(full(payload.clone().unwrap_or_default())).map_err(|e| Error::Config(format!("building request to {url}: {e}")))?;
            let resp = self.send(req).await?;
            let (parts, body) = resp.into_parts();
            let bytes = self.read_body(body, &url).await?;
            if parts.status.is_success() {
                return Ok(Reply { status: parts.status, headers: parts.headers, body: bytes });
            }
            if parts.status == StatusCode::TOO_MANY_REQUESTS && attempt < self.inner.cfg.retries {
                attempt += 1;
                let wait = parts
                    .headers
                    .get(header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs)
                    .unwrap_or(Duration::from_millis(200 * u64::from(attempt)))
                    .min(Duration::from_secs(10));
                tokio::time::sleep(wait).await;
                continue;
            }
            return Err(error::from_api_status(parts.status.as_u16(), &bytes).with_retry_after(&parts.headers));
        }
    }

    /// A control-API call whose successful answer is a stream (a template
    /// build's NDJSON): the body is handed back unread, with no read
    /// timeout, for as long as the server keeps writing.
    pub(crate) async fn api_stream(&self, method: Method, path: &str, body: &impl Serialize) -> Result<Incoming> {
        let key = self.inner.cfg.api_key.as_deref().ok_or_else(|| Error::Auth("no API key: set AIRLOCK_API_KEY (or E2B_API_KEY), or pass one in the Config".to_string()))?;
        let url = format!("{}{}", self.inner.cfg.api_url.trim_end_matches('/'), path);
        let payload = serde_json::to_vec(body).map_err(|e| Error::Config(format!("encoding request to {url}: {e}")))?;
        let req = Request::builder()
            .method(method)
            .uri(&url)
            .header(airlock_proto::wire::API_KEY_HEADER, header_value("API key", key)?)
            .header(header::USER_AGENT, USER_AGENT)
            .header(header::CONTENT_TYPE, CONTENT_TYPE_JSON)
            // Routes that answer either way (a batch) stream when asked.
            .header(header::ACCEPT, "application/x-ndjson")
            .body(full(payload))
            .map_err(|e| Error::Config(format!("building request to {url}: {e}")))?;
        let resp = self.send(req).await?;
        let (parts, body) = resp.into_parts();
        if parts.status.is_success() {
            return Ok(body);
        }
        let bytes = self.read_body(body, &url).await?;
        Err(error::from_api_status(parts.status.as_u16(), &bytes).with_retry_after(&parts.headers))
    }

    /// A control-API call with a raw body (an upload, an import), whose
    /// successful answer is handed back unread (a download, an export). No
    /// retries: the body is consumed.
    pub(crate) async fn api_raw(&self, method: Method, path: &str, body: ReqBody, content_type: &str, len: Option<u64>) -> Result<Response<Incoming>> {
        let key = self.inner.cfg.api_key.as_deref().ok_or_else(|| Error::Auth("no API key: set AIRLOCK_API_KEY (or E2B_API_KEY), or pass one in the Config".to_string()))?;
        let url = format!("{}{}", self.inner.cfg.api_url.trim_end_matches('/'), path);
        let mut b = Request::builder()
            .method(method)
            .uri(&url)
            .header(airlock_proto::wire::API_KEY_HEADER, header_value("API key", key)?)
            .header(header::USER_AGENT, USER_AGENT)
            .header(header::CONTENT_TYPE, header_value("content type", content_type)?);
        if let Some(n) = len {
            b = b.header(header::CONTENT_LENGTH, n);
        }
        let req = b.body(body).map_err(|e| Error::Config(format!("building request to {url}: {e}")))?;
        let resp = self.send(req).await?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let (parts, body) = resp.into_parts();
        let bytes = self.read_body(body, &url).await?;
        Err(error::from_api_status(parts.status.as_u16(), &bytes).with_retry_after(&parts.headers))
    }

    pub(crate) async fn api_json<T: DeserializeOwned>(&self, method: Method, path: &str, body: Option<serde_json::Value>) -> Result<(StatusCode, http::HeaderMap, T)> {
        let r = self.api(method, path, body).await?;
        let v = serde_json::from_slice(&r.body).map_err(|e| Error::protocol(format!("{path}: {e}: {}", String::from_utf8_lossy(&r.body))))?;
        Ok((r.status, r.headers, v))
    }

    // ------------------------------------------------------- sandbox traffic

    /// A request to the sandbox's agent, with routing and auth headers.
    pub(crate) fn envd(&self, t: &Target, method: Method, path_and_query: &str, user: Option<&str>) -> Result<http::request::Builder> {
        self.sandbox_port(t, ENVD_PORT, method, path_and_query, user)
    }

    /// A request to `port` in the sandbox (envd's, or the code
    /// interpreter's), with routing and auth headers.
    pub(crate) fn sandbox_port(&self, t: &Target, port: u16, method: Method, path_and_query: &str, user: Option<&str>) -> Result<http::request::Builder> {
        let url = format!("{}{}", self.inner.cfg.sandbox_url.trim_end_matches('/'), path_and_query);
        let mut b = Request::builder()
            .method(method)
            .uri(url)
            .header(airlock_proto::wire::SANDBOX_ID_HEADER, header_value("sandbox id", &t.id)?)
            .header(airlock_proto::wire::SANDBOX_PORT_HEADER, port.to_string())
            .header(header::USER_AGENT, USER_AGENT);
        if let Some(tok) = &t.token {
            b = b.header(airlock_proto::wire::ACCESS_TOKEN_HEADER, header_value("access token", tok)?);
        }
        if let Some(u) = user {
            b = b.header(header::AUTHORIZATION, basic_user(u)?);
        }
        Ok(b)
    }

    /// A unary Connect RPC with the JSON codec.
    pub(crate) async fn unary<Req: Serialize, Res: DeserializeOwned>(&self, t: &Target, rpc: &str, req: &Req, user: Option<&str>) -> Result<Res> {
        let payload = serde_json::to_vec(req).map_err(|e| Error::protocol(format!("encoding {rpc}: {e}")))?;
        let ms = self.inner.cfg.request_timeout.as_millis().to_string();
        let req = self
            .envd(t, Method::POST, &format!("/{rpc}"), user)?
            .header(header::CONTENT_TYPE, CONTENT_TYPE_JSON)
            .header("connect-protocol-version", "1")
            .header("connect-timeout-ms", ms)
            .body(full(payload))
            .map_err(|e| Error::Config(format!("building {rpc} request: {e}")))?;
        let resp = self.send(req).await?;
        let (parts, body) = resp.into_parts();
        let bytes = self.read_body(body, rpc).await?;
        if parts.status != StatusCode::OK {
            return Err(error::from_sandbox_status(&t.id, parts.status.as_u16(), &bytes));
        }
        let bytes = if bytes.is_empty() { Bytes::from_static(b"{}") } else { bytes };
        serde_json::from_slice(&bytes).map_err(|e| Error::protocol(format!("{rpc} response: {e}")))
    }

    /// A server-streaming Connect RPC. `lifetime` goes into
    /// `Connect-Timeout-Ms`, which envd takes as the process lifetime for
    /// `Process.Start`; `None` means unlimited.
    pub(crate) async fn server_stream<Req: Serialize, Ev: DeserializeOwned>(
        &self,
        t: &Target,
        rpc: &str,
        req: &Req,
        user: Option<&str>,
        lifetime: Option<Duration>,
    ) -> Result<ConnectStream<Ev>> {
        let mut b = self
            .envd(t, Method::POST, &format!("/{rpc}"), user)?
            .header(header::CONTENT_TYPE, CONTENT_TYPE_STREAM_JSON)
            .header("connect-protocol-version", "1")
            .header("connect-accept-encoding", "identity")
            .header("keepalive-ping-interval", KEEPALIVE_SECS);
        if let Some(l) = lifetime.filter(|l| !l.is_zero()) {
            b = b.header("connect-timeout-ms", l.as_millis().max(1).to_string());
        }
        let req = b.body(full(connect::json_envelope(req))).map_err(|e| Error::Config(format!("building {rpc} request: {e}")))?;
        let resp = self.send(req).await?;
        let (parts, body) = resp.into_parts();
        if parts.status != StatusCode::OK {
            let bytes = self.read_body(body, rpc).await?;
            return Err(error::from_sandbox_status(&t.id, parts.status.as_u16(), &bytes));
        }
        Ok(ConnectStream::new(body, format!("{}/{rpc}", self.inner.cfg.sandbox_url)))
    }

    /// `GET /files`: the response, once it is known to be a success.
    pub(crate) async fn files_get(&self, t: &Target, path: &str, user: Option<&str>) -> Result<Response<Incoming>> {
        let req = self.envd(t, Method::GET, &files_query(path, user), None)?.body(full(Bytes::new())).map_err(|e| Error::Config(format!("building download request: {e}")))?;
        let resp = self.send(req).await?;
        if resp.status() != StatusCode::OK {
            let status = resp.status().as_u16();
            let bytes = self.read_body(resp.into_body(), "/files").await?;
            return Err(error::from_sandbox_status(&t.id, status, &bytes));
        }
        Ok(resp)
    }

    /// `POST /files` with a raw `application/octet-stream` body.
    pub(crate) async fn files_post(&self, t: &Target, path: &str, user: Option<&str>, body: ReqBody, len: Option<u64>) -> Result<Vec<airlock_proto::envd::WrittenFile>> {
        let mut b = self.envd(t, Method::POST, &files_query(path, user), None)?.header(header::CONTENT_TYPE, "application/octet-stream");
        if let Some(n) = len {
            b = b.header(header::CONTENT_LENGTH, n);
        }
        let req = b.body(body).map_err(|e| Error::Config(format!("building upload request: {e}")))?;
        // An upload may legitimately take longer than the request timeout:
        // only the connection set-up is bounded here.
        let resp = match self.inner.http.request(req).await {
            Ok(r) => r,
            Err(e) => {
                // A failing body stream (a local read error) surfaces here.
                return Err(Error::Connection { url: format!("{}/files", self.inner.cfg.sandbox_url), source: Box::new(e) });
            }
        };
        let status = resp.status();
        let bytes = self.read_body(resp.into_body(), "/files").await?;
        if status != StatusCode::OK {
            return Err(error::from_sandbox_status(&t.id, status.as_u16(), &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|e| Error::protocol(format!("upload response: {e}")))
    }
}

pub(crate) fn files_query(path: &str, user: Option<&str>) -> String {
    let mut q = format!("/files?path={}", encode(path));
    if let Some(u) = user {
        q.push_str("&username=");
        q.push_str(&encode(u));
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn client_is_shareable_across_tasks() {
        assert_send_sync::<Client>();
    }

    #[test]
    fn urls_are_checked_up_front() {
        assert!(matches!(Client::new(Config::new("https://api.example.com", "k")), Err(Error::Config(m)) if m.contains("https")));
        assert!(matches!(Client::new(Config::new("127.0.0.1:3000", "k")), Err(Error::Config(_))));
        assert!(Client::new(Config::new("http://127.0.0.1:3000/", "k")).is_ok());
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(files_query("/home/user/a b&c.txt", Some("root")), "/files?path=/home/user/a%20b%26c.txt&username=root");
        assert_eq!(encode("k=v+1"), "k%3Dv%2B1");
    }
}
