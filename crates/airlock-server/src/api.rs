//! The control API: requests parsed into a closed set of typed routes and
//! handed to the service layer. Authenticated by `X-API-KEY`; every error is
//! JSON `{"code", "message"}`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use airlock_proto::api::{AliasTemplate, BuildTemplate, NewSandbox, RefreshBody, TimeoutBody};
use http::{Method, Request};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::de::DeserializeOwned;

use crate::http::{self as h, Resp};
use crate::service::{ApiError, ListFilter, Service};
use crate::store::State;

/// Request bodies of the control API are small JSON documents.
const MAX_BODY: usize = 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Health,
    Create { v2: bool },
    ListV1,
    ListV2,
    Get(String),
    Kill(String),
    SetTimeout(String),
    Refresh(String),
    Pause(String),
    Resume(String),
    Connect(String),
    Metrics(String),
    Logs(String),
    ListTemplates,
    GetTemplate(String),
    BuildTemplate,
    AliasTemplate(String),
    DeleteTemplate(String),
}

pub fn route(method: &Method, path: &str) -> Option<Route> {
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let r = match (method.as_str(), segs.as_slice()) {
        ("GET", ["health"]) => Route::Health,
        ("POST", ["sandboxes"]) => Route::Create { v2: false },
        ("POST", ["v2", "sandboxes"]) => Route::Create { v2: true },
        ("GET", ["sandboxes"]) => Route::ListV1,
        ("GET", ["v2", "sandboxes"]) => Route::ListV2,
        ("GET", ["sandboxes", id]) => Route::Get(id.to_string()),
        ("DELETE", ["sandboxes", id]) => Route::Kill(id.to_string()),
        ("POST", ["sandboxes", id, "timeout"]) => Route::SetTimeout(id.to_string()),
        ("POST", ["sandboxes", id, "refreshes"]) => Route::Refresh(id.to_string()),
        ("POST", ["sandboxes", id, "pause"]) => Route::Pause(id.to_string()),
        ("POST", ["sandboxes", id, "resume"]) => Route::Resume(id.to_string()),
        ("POST", ["sandboxes", id, "connect"]) | ("POST", ["v2", "sandboxes", id, "connect"]) => Route::Connect(id.to_string()),
        ("GET", ["sandboxes", id, "metrics"]) => Route::Metrics(id.to_string()),
        ("GET", ["sandboxes", id, "logs"]) | ("GET", ["v2", "sandboxes", id, "logs"]) => Route::Logs(id.to_string()),
        ("GET", ["templates"]) => Route::ListTemplates,
        ("POST", ["templates"]) => Route::BuildTemplate,
        ("GET", ["templates", name]) => Route::GetTemplate(name.to_string()),
        ("DELETE", ["templates", name]) => Route::DeleteTemplate(name.to_string()),
        ("POST", ["templates", name, "aliases"]) => Route::AliasTemplate(name.to_string()),
        _ => return None,
    };
    Some(r)
}

/// Per-key token buckets for the configurable request rate limit.
#[derive(Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// Takes a token for `key`; false when the bucket is empty.
    pub fn allow(&self, key: &str, rate: f64) -> bool {
        if rate <= 0.0 {
            return true;
        }
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let e = b.entry(crate::store::hash_key(key)).or_insert((rate, now));
        e.0 = (e.0 + now.duration_since(e.1).as_secs_f64() * rate).min(rate.max(1.0));
        e.1 = now;
        if e.0 >= 1.0 {
            e.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

pub use airlock_proto::query::pairs as query_pairs;
use airlock_proto::query::decode as percent_decode_strict;

async fn body<T: DeserializeOwned + Default>(req: Request<Incoming>) -> Result<T, ApiError> {
    body_limited(req, MAX_BODY).await
}

/// Template builds carry their build context (a tar.gz) in the body.
const MAX_BUILD_BODY: usize = 256 * 1024 * 1024;

async fn body_limited<T: DeserializeOwned + Default>(req: Request<Incoming>, max: usize) -> Result<T, ApiError> {
    let mut b = req.into_body();
    let mut buf = Vec::new();
    while let Some(frame) = b.frame().await {
        let frame = frame.map_err(|e| ApiError::BadRequest(format!("reading body: {e}")))?;
        if let Ok(d) = frame.into_data() {
            if buf.len() + d.len() > max {
                return Err(ApiError::BadRequest(format!("request body exceeds {max} bytes")));
            }
            buf.extend_from_slice(&d);
        }
    }
    if buf.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&buf).map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}

/// Streams a build's events as NDJSON; the last line is `done` or `error`.
fn build_stream(svc: Arc<Service>, b: BuildTemplate) -> Resp {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<crate::builder::BuildEvent>(256);
    let (btx, brx) = tokio::sync::mpsc::channel::<Result<http_body::Frame<bytes::Bytes>, crate::http::BoxError>>(256);
    tokio::spawn(async move {
        let forward = {
            let btx = btx.clone();
            tokio::spawn(async move {
                while let Some(ev) = rx.recv().await {
                    let mut line = serde_json::to_vec(&ev).unwrap_or_default();
                    line.push(b'\n');
                    if btx.send(Ok(http_body::Frame::data(line.into()))).await.is_err() {
                        // The client left; the build goes on and is cached.
                        while rx.recv().await.is_some() {}
                        return;
                    }
                }
            })
        };
        let r = match unpack_context(b.context.as_deref()).await {
            Ok(ctx) => svc.build_template(&b.name, &b.recipe, &b.build_args, ctx.as_ref().map(|d| d.path()), &tx).await,
            Err(e) => Err(e),
        };
        if let Err(e) = r {
            let _ = tx.send(crate::builder::BuildEvent::Error { message: e.to_string() }).await;
        }
        drop(tx);
        let _ = forward.await;
    });
    let body = http_body_util::StreamBody::new(futures_util::stream::unfold(brx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) }));
    let mut r = http::Response::new(http_body_util::BodyExt::boxed_unsync(body));
    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/x-ndjson"));
    r
}

/// Unpacks a base64 tar.gz build context into a temporary directory
/// (entries that would land outside it are refused by the tar reader).
async fn unpack_context(b64: Option<&str>) -> Result<Option<tempfile::TempDir>, ApiError> {
    let Some(b64) = b64.filter(|s| !s.is_empty()) else { return Ok(None) };
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD.decode(b64.trim()).map_err(|e| ApiError::BadRequest(format!("context is not base64: {e}")))?;
    tokio::task::spawn_blocking(move || {
        let dir = tempfile::Builder::new().prefix("airlock-context-").tempdir().map_err(|e| ApiError::Internal(e.to_string()))?;
        let mut a = tar::Archive::new(flate2::read::GzDecoder::new(&raw[..]));
        a.set_preserve_ownerships(false);
        for entry in a.entries().map_err(|e| ApiError::BadRequest(format!("context is not a tar.gz: {e}")))? {
            let mut entry = entry.map_err(|e| ApiError::BadRequest(format!("context: {e}")))?;
            entry.unpack_in(dir.path()).map_err(|e| ApiError::BadRequest(format!("context: {e}")))?;
        }
        Ok(Some(dir))
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
}

fn err(e: ApiError) -> Resp {
    if let ApiError::Internal(detail) = &e {
        tracing::error!(error = %detail, "internal error");
        return h::error(500, "internal server error");
    }
    let mut r = h::error(e.status(), e.to_string());
    if e.status() == 429 {
        r.headers_mut().insert("retry-after", http::HeaderValue::from_static("1"));
    }
    r
}

fn parse_list_filter(query: &str, v2: bool) -> Result<ListFilter, ApiError> {
    let mut f = ListFilter { limit: if v2 { 100 } else { 0 }, ..Default::default() };
    if !v2 {
        f.states = Some(vec![State::Running]);
    }
    for (k, v) in query_pairs(query) {
        match k.as_str() {
            "metadata" | "query" => {
                // The SDKs percent-encode each key and value, then encode the
                // whole `k=v&...` string as the parameter: one more decode.
                for (mk, mv) in query_pairs(&v) {
                    f.metadata.insert(percent_decode_strict(&mk), percent_decode_strict(&mv));
                }
            }
            "state" if v2 => {
                let mut states = Vec::new();
                for s in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    states.push(State::parse(s).ok_or_else(|| ApiError::BadRequest(format!("invalid state {s:?}: use running or paused")))?);
                }
                if !states.is_empty() {
                    f.states = Some(states);
                }
            }
            "limit" if v2 => {
                let n: usize = v.parse().map_err(|_| ApiError::BadRequest(format!("invalid limit {v:?}")))?;
                if !(1..=100).contains(&n) {
                    return Err(ApiError::BadRequest(format!("limit must be between 1 and 100, got {n}")));
                }
                f.limit = n;
            }
            "nextToken" if v2 => f.next_token = Some(v),
            "order" if v2 => {
                f.descending = match v.as_str() {
                    "asc" | "" => false,
                    "desc" => true,
                    o => return Err(ApiError::BadRequest(format!("invalid order {o:?}: use asc or desc"))),
                }
            }
            "template" if v2 && !v.is_empty() => f.template = Some(v),
            _ => {}
        }
    }
    Ok(f)
}

fn int_param(query: &str, name: &str) -> Result<Option<i64>, ApiError> {
    match query_pairs(query).into_iter().find(|(k, _)| k == name) {
        Some((_, v)) if !v.is_empty() => v.parse().map(Some).map_err(|_| ApiError::BadRequest(format!("invalid {name} {v:?}"))),
        _ => Ok(None),
    }
}

/// Authenticates, rate-limits and serves one control-API request.
pub async fn handle(svc: &Arc<Service>, limiter: &RateLimiter, req: Request<Incoming>) -> Resp {
    let Some(r) = route(req.method(), req.uri().path()) else {
        return h::error(404, format!("no such endpoint: {} {}", req.method(), req.uri().path()));
    };
    if r == Route::Health {
        return h::json(200, &serde_json::json!({"status": "ok"}));
    }
    let key = req.headers().get(airlock_proto::wire::API_KEY_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("").trim().to_string();
    match (key.is_empty(), svc.key_valid(&key).await) {
        (false, Ok(true)) => {}
        (_, Err(e)) => return err(e),
        _ => return h::error(401, "Invalid API key"),
    }
    if !limiter.allow(&key, svc.cfg.rate_limit) {
        return err(ApiError::TooManyRequests(format!("rate limit of {} requests per second exceeded", svc.cfg.rate_limit)));
    }
    let query = req.uri().query().unwrap_or("").to_string();
    let res: Result<Resp, ApiError> = async {
        Ok(match r {
            Route::Health => h::json(200, &serde_json::json!({"status": "ok"})),
            Route::Create { v2 } => {
                let b: NewSandbox = body(req).await?;
                let row = svc.create(b, v2).await?;
                h::json(201, &svc.sandbox_body(&row))
            }
            Route::ListV1 => {
                let page = svc.list(parse_list_filter(&query, false)?).await?;
                h::json(200, &page.items)
            }
            Route::ListV2 => {
                let page = svc.list(parse_list_filter(&query, true)?).await?;
                let mut resp = h::json(200, &page.items);
                if let Some(t) = page.next_token {
                    if let Ok(v) = t.parse() {
                        resp.headers_mut().insert("x-next-token", v);
                    }
                }
                if let Ok(v) = page.running.to_string().parse() {
                    resp.headers_mut().insert("x-total-running", v);
                }
                resp
            }
            Route::Get(id) => h::json(200, &svc.get(&id).await?),
            Route::Kill(id) => {
                svc.kill(&id).await?;
                h::empty(204)
            }
            Route::SetTimeout(id) => {
                let b: TimeoutBody = body(req).await?;
                let t = b.timeout.ok_or_else(|| ApiError::BadRequest("timeout is required".into()))?;
                svc.set_timeout(&id, t).await?;
                h::empty(204)
            }
            Route::Refresh(id) => {
                let b: RefreshBody = body(req).await?;
                svc.refresh(&id, b.duration.unwrap_or(svc.cfg.default_timeout_s)).await?;
                h::empty(204)
            }
            Route::Pause(id) => {
                let _: BTreeMap<String, serde_json::Value> = body(req).await?;
                svc.pause(&id).await?;
                h::empty(204)
            }
            Route::Resume(id) => {
                let b: TimeoutBody = body(req).await?;
                let row = svc.resume(&id, b.timeout).await?;
                h::json(201, &svc.sandbox_body(&row))
            }
            Route::Connect(id) => {
                let b: TimeoutBody = body(req).await?;
                let (row, resumed) = svc.connect(&id, b.timeout).await?;
                h::json(if resumed { 201 } else { 200 }, &svc.sandbox_body(&row))
            }
            Route::Metrics(id) => {
                let (start, end) = (int_param(&query, "start")?, int_param(&query, "end")?);
                h::json(200, &svc.metrics(&id, start, end).await?)
            }
            Route::Logs(id) => h::json(200, &svc.logs(&id).await?),
            Route::ListTemplates => h::json(200, &svc.templates().await?),
            Route::GetTemplate(name) => h::json(200, &svc.template(&name).await?),
            Route::DeleteTemplate(name) => {
                let force = query_pairs(&query).iter().any(|(k, v)| k == "force" && (v == "true" || v == "1"));
                svc.delete_template(&name, force).await?;
                h::empty(204)
            }
            Route::AliasTemplate(name) => {
                let b: AliasTemplate = body(req).await?;
                svc.alias_template(&name, &b.alias).await?;
                h::empty(204)
            }
            Route::BuildTemplate => {
                let b: BuildTemplate = body_limited(req, MAX_BUILD_BODY).await?;
                build_stream(svc.clone(), b)
            }
        })
    }
    .await;
    res.unwrap_or_else(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_typed() {
        assert_eq!(route(&Method::POST, "/v2/sandboxes"), Some(Route::Create { v2: true }));
        assert_eq!(route(&Method::POST, "/v2/sandboxes/abc/connect"), Some(Route::Connect("abc".into())));
        assert_eq!(route(&Method::DELETE, "/sandboxes/abc"), Some(Route::Kill("abc".into())));
        assert_eq!(route(&Method::GET, "/sandboxes/abc/metrics"), Some(Route::Metrics("abc".into())));
        assert_eq!(route(&Method::PUT, "/sandboxes/abc"), None);
        assert_eq!(route(&Method::GET, "/nope"), None);
    }

    #[test]
    fn list_filters_parse_like_the_sdk_sends_them() {
        // Python: metadata=urlencode({"user":"a b","k":"v"}) sent as one value.
        // Python: urlencode({k: quote(v)}) of {"user": "a b", "k": "v"}, then the query encoding.
        let f = parse_list_filter("metadata=user%3Da%252520b%26k%3Dv&state=running,paused&limit=1&order=desc", true).expect("parse");
        assert_eq!(f.metadata.get("user").map(String::as_str), Some("a b"));
        assert_eq!(f.metadata.get("k").map(String::as_str), Some("v"));
        assert_eq!(f.states, Some(vec![State::Running, State::Paused]));
        assert_eq!((f.limit, f.descending), (1, true));
        assert!(parse_list_filter("limit=0", true).is_err());
        assert!(parse_list_filter("state=dead", true).is_err());
        assert_eq!(parse_list_filter("", false).expect("v1").states, Some(vec![State::Running]));
    }

    #[test]
    fn percent_decoding_handles_edges() {
        let one = |q: &str| query_pairs(&format!("k={q}")).pop().map(|(_, v)| v).unwrap_or_default();
        assert_eq!(one("a%20b+c%"), "a b c%");
        assert_eq!(one("%zz"), "%zz");
        assert_eq!(one("%41"), "A");
        assert_eq!(percent_decode_strict("a+b%2B"), "a+b+");
    }

    #[test]
    fn rate_limiter_refuses_bursts() {
        let l = RateLimiter::default();
        assert!(l.allow("k", 2.0));
        assert!(l.allow("k", 2.0));
        assert!(!l.allow("k", 2.0));
        assert!(l.allow("other", 2.0));
        assert!(l.allow("k", 0.0), "0 means unlimited");
    }
}
