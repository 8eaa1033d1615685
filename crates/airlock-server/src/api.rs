//! The control API on axum: one typed handler per route, each a call into
//! the service layer, behind tower layers for request ids and tracing and,
//! on every route but `/health` and `/openapi.json`, `X-API-KEY`
//! authentication and the per-key rate limit. Every error is JSON
//! `{"code", "message"}`. The OpenAPI 3 document (`/openapi.json`) is
//! generated from the handlers' annotations, and the router is built from
//! the same table (`routes!`), so the two cannot drift.
//!
//! Sandbox traffic never comes here: the server hands it to the streaming
//! proxy on hyper first.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use airlock_proto::api::{self as wire, AliasTemplate, BuildTemplate, NewSandbox, RefreshBody, TimeoutBody};
use axum::extract::{FromRequestParts, Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;
use utoipa::OpenApi;

use crate::http::{self as h, Resp};

mod e2b_templates;
mod networks;
mod secrets;
mod volumes;
mod webhooks;
use crate::service::{ApiError, ListFilter, Service};
use crate::store::State as SandboxState;
use e2b_templates::*;
use networks::*;
use secrets::*;
use volumes::*;
use webhooks::*;

/// Request bodies of the control API are small JSON documents.
const MAX_BODY: usize = 1024 * 1024;
/// Template builds carry their build context (a tar.gz) in the body.
const MAX_BUILD_BODY: usize = 256 * 1024 * 1024;

#[derive(Clone)]
pub struct AppState {
    svc: Arc<Service>,
    limiter: Arc<RateLimiter>,
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

use airlock_proto::query::decode as percent_decode_strict;
pub use airlock_proto::query::pairs as query_pairs;

async fn read_json<T: DeserializeOwned + Default>(body: axum::body::Body, max: usize) -> Result<T, ApiError> {
    let mut b = body;
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

/// A path parameter (`{id}`, `{name}`), its rejection an API error.
struct Param(String);

impl<S: Send + Sync> FromRequestParts<S> for Param {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<String>::from_request_parts(parts, state).await.map(|Path(p)| Param(p)).map_err(|e| ApiError::BadRequest(e.body_text()))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        err(self).into_response()
    }
}

type ApiResult = Result<Resp, ApiError>;

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
    crate::telemetry::TELEMETRY.api_errors.record(e.kind());
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
    // Newest first unless asked otherwise, as E2B lists.
    let mut f = ListFilter { limit: if v2 { 100 } else { 0 }, descending: true, ..Default::default() };
    if !v2 {
        f.states = Some(vec![SandboxState::Running]);
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
                    states.push(match s {
                        "running" => SandboxState::Running,
                        "paused" => SandboxState::Paused,
                        // Airlock's: sandboxes whose PID 1 died, with the cause.
                        "dead" => SandboxState::Dead,
                        _ => return Err(ApiError::BadRequest(format!("invalid state {s:?}: use running, paused or dead"))),
                    });
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
                    "asc" => false,
                    "desc" | "" => true,
                    o => return Err(ApiError::BadRequest(format!("invalid order {o:?}: use asc or desc"))),
                }
            }
            "template" if v2 && !v.is_empty() => f.template = Some(v),
            "startedAfter" | "started_after" | "startedBefore" | "started_before" if v2 && !v.is_empty() => {
                let t = airlock_proto::time::parse_rfc3339(&v).ok_or_else(|| ApiError::BadRequest(format!("invalid {k} {v:?}: an RFC 3339 time, e.g. 2026-01-02T03:04:05Z")))?;
                let ms = match t.duration_since(std::time::UNIX_EPOCH) {
                    Ok(d) => d.as_millis().min(i64::MAX as u128) as i64,
                    Err(e) => -(e.duration().as_millis().min(i64::MAX as u128) as i64),
                };
                if k.contains("fter") {
                    f.started_after = Some(ms);
                } else {
                    f.started_before = Some(ms);
                }
            }
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

// ------------------------------------------------------------- handlers
// The `responses` of each annotation are the statuses the SDKs branch on.

/// Health of the server (no authentication): `ok`, or `degraded` with
/// 503 when its store fails or its data disk is too full for creates; each
/// dependency's verdict under `checks` (details at `/health/details`).
#[utoipa::path(get, path = "/health", tag = "server", responses((status = 200, description = "the server is up and can create sandboxes"), (status = 503, description = "degraded")))]
async fn health(State(s): State<AppState>) -> Resp {
    let full = s.svc.server_health().await;
    let checks: serde_json::Map<String, serde_json::Value> = full["checks"].as_object().map(|m| m.iter().map(|(k, v)| (k.clone(), v["ok"].clone())).collect()).unwrap_or_default();
    let status = if full["status"] == "ok" { 200 } else { 503 };
    h::json(status, &serde_json::json!({"status": full["status"], "checks": checks}))
}

/// The server's health with details: the store's answer time, the data
/// disk's free space and create floor, what the host offers sandboxes.
#[utoipa::path(get, path = "/health/details", tag = "server", responses((status = 200, description = "health with details")))]
async fn health_details(State(s): State<AppState>) -> ApiResult {
    Ok(h::json(200, &s.svc.server_health().await))
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "server", responses((status = 200, description = "the OpenAPI 3 document")))]
async fn openapi_json() -> Resp {
    h::json(200, &ApiDoc::openapi())
}

async fn create(svc: &Service, body: axum::body::Body, v2: bool) -> ApiResult {
    let b: NewSandbox = read_json(body, MAX_BODY).await?;
    let fallback = b.allow_internet_access.is_none() && !svc.backend().network_available();
    let row = svc.create(b, v2).await?;
    let mut r = h::json(201, &svc.sandbox_body(&row));
    if fallback {
        // The SDKs ignore unknown headers; people and logs see it.
        let msg = format!("the sandbox has no internet access: {}", crate::service::NO_FIREWALL_HINT);
        if let Ok(v) = http::HeaderValue::from_str(&msg) {
            r.headers_mut().insert("x-airlock-warning", v);
        }
    }
    Ok(r)
}

/// Create a sandbox (SDKs up to 2.50; `secure` honoured).
#[utoipa::path(post, path = "/sandboxes", tag = "sandboxes", request_body = NewSandbox,
    responses((status = 201, body = wire::Sandbox), (status = 400, body = wire::ApiError), (status = 401, body = wire::ApiError), (status = 404, description = "unknown template", body = wire::ApiError), (status = 429, body = wire::ApiError)))]
async fn create_v1(State(s): State<AppState>, body: axum::body::Body) -> ApiResult {
    create(&s.svc, body, false).await
}

/// Create a sandbox (SDKs 2.51+; always secured).
#[utoipa::path(post, path = "/v2/sandboxes", tag = "sandboxes", request_body = NewSandbox,
    responses((status = 201, body = wire::Sandbox), (status = 400, body = wire::ApiError), (status = 401, body = wire::ApiError), (status = 404, description = "unknown template", body = wire::ApiError), (status = 429, body = wire::ApiError)))]
async fn create_v2(State(s): State<AppState>, body: axum::body::Body) -> ApiResult {
    create(&s.svc, body, true).await
}

/// Running sandboxes (v1: no paging).
#[utoipa::path(get, path = "/sandboxes", tag = "sandboxes", params(("metadata" = Option<String>, Query, description = "url-encoded k=v&k2=v2, all must match")),
    responses((status = 200, body = Vec<wire::SandboxDetail>)))]
async fn list_v1(State(s): State<AppState>, RawQuery(q): RawQuery) -> ApiResult {
    let page = s.svc.list(parse_list_filter(q.as_deref().unwrap_or(""), false)?).await?;
    Ok(h::json(200, &page.items))
}

/// Sandboxes with filters and paging; the next page's token is in `X-Next-Token`.
#[utoipa::path(get, path = "/v2/sandboxes", tag = "sandboxes",
    params(
        ("metadata" = Option<String>, Query, description = "url-encoded k=v&k2=v2, all must match"),
        ("state" = Option<String>, Query, description = "comma-separated: running, paused"),
        ("order" = Option<String>, Query, description = "asc (default) or desc"),
        ("template" = Option<String>, Query),
        ("limit" = Option<u32>, Query, description = "1-100, default 100"),
        ("nextToken" = Option<String>, Query)),
    responses((status = 200, body = Vec<wire::SandboxDetail>, headers(("x-next-token" = String), ("x-total-running" = u64))), (status = 400, body = wire::ApiError)))]
async fn list_v2(State(s): State<AppState>, RawQuery(q): RawQuery) -> ApiResult {
    let page = s.svc.list(parse_list_filter(q.as_deref().unwrap_or(""), true)?).await?;
    let mut resp = h::json(200, &page.items);
    if let Some(t) = page.next_token {
        if let Ok(v) = t.parse() {
            resp.headers_mut().insert("x-next-token", v);
        }
    }
    if let Ok(v) = page.running.to_string().parse() {
        resp.headers_mut().insert("x-total-running", v);
    }
    Ok(resp)
}

/// One sandbox.
#[utoipa::path(get, path = "/sandboxes/{id}", tag = "sandboxes", params(("id" = String, Path)),
    responses((status = 200, body = wire::SandboxDetail), (status = 404, body = wire::ApiError)))]
async fn get_sandbox(State(s): State<AppState>, Param(id): Param) -> ApiResult {
    Ok(h::json(200, &s.svc.get(&id).await?))
}

/// Kill a sandbox.
#[utoipa::path(delete, path = "/sandboxes/{id}", tag = "sandboxes", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = wire::ApiError)))]
async fn kill(State(s): State<AppState>, Param(id): Param) -> ApiResult {
    s.svc.kill(&id).await?;
    Ok(h::empty(204))
}

/// Set the deadline to now + timeout seconds.
#[utoipa::path(post, path = "/sandboxes/{id}/timeout", tag = "sandboxes", params(("id" = String, Path)), request_body = TimeoutBody,
    responses((status = 204), (status = 400, body = wire::ApiError), (status = 404, body = wire::ApiError)))]
async fn set_timeout(State(s): State<AppState>, Param(id): Param, body: axum::body::Body) -> ApiResult {
    let b: TimeoutBody = read_json(body, MAX_BODY).await?;
    let t = b.timeout.ok_or_else(|| ApiError::BadRequest("timeout is required".into()))?;
    s.svc.set_timeout(&id, t).await?;
    Ok(h::empty(204))
}

/// Extend the deadline (never shortens it).
#[utoipa::path(post, path = "/sandboxes/{id}/refreshes", tag = "sandboxes", params(("id" = String, Path)), request_body = RefreshBody,
    responses((status = 204), (status = 404, body = wire::ApiError)))]
async fn refresh(State(s): State<AppState>, Param(id): Param, body: axum::body::Body) -> ApiResult {
    let b: RefreshBody = read_json(body, MAX_BODY).await?;
    s.svc.refresh(&id, b.duration.unwrap_or(s.svc.cfg.default_timeout_s)).await?;
    Ok(h::empty(204))
}

/// Pause a sandbox; 409 when it already is. `memory: false` stops its
/// processes and keeps only its files (memory released; resume boots it
/// afresh); otherwise it is frozen with its memory held.
#[utoipa::path(post, path = "/sandboxes/{id}/pause", tag = "sandboxes", params(("id" = String, Path)), request_body = wire::PauseRequest,
    responses((status = 204), (status = 404, body = wire::ApiError), (status = 409, body = wire::ApiError), (status = 503, body = wire::ApiError)))]
async fn pause(State(s): State<AppState>, Param(id): Param, body: axum::body::Body) -> ApiResult {
    let b: wire::PauseRequest = read_json(body, MAX_BODY).await?;
    let memory = b.memory.unwrap_or(true);
    s.svc.pause_checked(&id, memory, b.require_healthy_guest.unwrap_or(false) || !memory).await?;
    Ok(h::empty(204))
}

/// Snapshot a sandbox's filesystem (the sandbox is frozen while it is
/// copied, then continues). Filesystem only: `memory` is not honoured on
/// this host, and the reply's `mode` says so.
#[utoipa::path(post, path = "/sandboxes/{id}/snapshots", tag = "snapshots", params(("id" = String, Path)), request_body = wire::SnapshotRequest,
    responses((status = 201, body = wire::SnapshotInfo), (status = 400, body = wire::ApiError), (status = 404, body = wire::ApiError), (status = 409, body = wire::ApiError), (status = 507, body = wire::ApiError)))]
async fn create_snapshot(State(s): State<AppState>, Param(id): Param, body: axum::body::Body) -> ApiResult {
    let b: wire::SnapshotRequest = read_json(body, MAX_BODY).await?;
    Ok(h::json(201, &s.svc.snapshot(&id, b).await?))
}

/// Snapshots, newest first; the next page's token is in `X-Next-Token`.
/// Delete one with `DELETE /templates/{snapshotID}`; create sandboxes from
/// one by passing its id as the template.
#[utoipa::path(get, path = "/snapshots", tag = "snapshots",
    params(("sandboxID" = Option<String>, Query), ("name" = Option<String>, Query), ("limit" = Option<u32>, Query, description = "1-100, default 100"), ("nextToken" = Option<String>, Query)),
    responses((status = 200, body = Vec<wire::SnapshotInfo>, headers(("x-next-token" = String))), (status = 400, body = wire::ApiError)))]
async fn list_snapshots(State(s): State<AppState>, RawQuery(q): RawQuery) -> ApiResult {
    let q = query_pairs(q.as_deref().unwrap_or(""));
    let get = |k: &str| q.iter().find(|(n, v)| n == k && !v.is_empty()).map(|(_, v)| v.clone());
    let limit = match get("limit") {
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=100).contains(&n) => n,
            _ => return Err(ApiError::BadRequest(format!("limit must be between 1 and 100, got {v:?}"))),
        },
        None => 100,
    };
    let (items, next) = s.svc.snapshots(get("sandboxID").as_deref(), get("name").as_deref(), limit, get("nextToken").as_deref()).await?;
    let mut resp = h::json(200, &items);
    if let Some(v) = next.and_then(|t| http::HeaderValue::from_str(&t).ok()) {
        resp.headers_mut().insert("x-next-token", v);
    }
    Ok(resp)
}

/// Fork: `count` (1-20) new running sandboxes with the source's files,
/// environment, metadata and resources; the source keeps running. Each
/// entry of the reply holds a sandbox or that fork's error.
#[utoipa::path(post, path = "/sandboxes/{id}/fork", tag = "sandboxes", params(("id" = String, Path)), request_body = wire::ForkRequest,
    responses((status = 201, body = Vec<wire::ForkResult>), (status = 400, body = wire::ApiError), (status = 404, body = wire::ApiError), (status = 507, body = wire::ApiError)))]
async fn fork(State(s): State<AppState>, Param(id): Param, body: axum::body::Body) -> ApiResult {
    let b: wire::ForkRequest = read_json(body, MAX_BODY).await?;
    Ok(h::json(201, &s.svc.fork(&id, b).await?))
}

/// Soft reset (default: every process but the agent killed, files kept)
/// or hard reset (`hard: true`: back to the template or snapshot it came
/// from, same id and token).
#[utoipa::path(post, path = "/sandboxes/{id}/reset", tag = "sandboxes", params(("id" = String, Path)), request_body = wire::ResetRequest,
    responses((status = 200, body = wire::SandboxDetail), (status = 404, body = wire::ApiError), (status = 409, body = wire::ApiError)))]
async fn reset(State(s): State<AppState>, Param(id): Param, body: axum::body::Body) -> ApiResult {
    let b: wire::ResetRequest = read_json(body, MAX_BODY).await?;
    let row = s.svc.reset(&id, b.hard).await?;
    Ok(h::json(200, &s.svc.detail(&row)))
}

/// Restart: a fresh agent over the same files, optionally with more
/// environment variables or new CPU and memory limits.
#[utoipa::path(post, path = "/sandboxes/{id}/restart", tag = "sandboxes", params(("id" = String, Path)), request_body = wire::RestartRequest,
    responses((status = 200, body = wire::SandboxDetail), (status = 400, body = wire::ApiError), (status = 404, body = wire::ApiError)))]
async fn restart(State(s): State<AppState>, Param(id): Param, body: axum::body::Body) -> ApiResult {
    let b: wire::RestartRequest = read_json(body, MAX_BODY).await?;
    let row = s.svc.restart(&id, b).await?;
    Ok(h::json(200, &s.svc.detail(&row)))
}

/// Resume a paused sandbox (SDKs 2.0-2.3).
#[utoipa::path(post, path = "/sandboxes/{id}/resume", tag = "sandboxes", params(("id" = String, Path)), request_body = TimeoutBody,
    responses((status = 201, body = wire::Sandbox), (status = 404, body = wire::ApiError), (status = 409, body = wire::ApiError)))]
async fn resume(State(s): State<AppState>, Param(id): Param, body: axum::body::Body) -> ApiResult {
    let b: TimeoutBody = read_json(body, MAX_BODY).await?;
    let row = s.svc.resume(&id, b.timeout).await?;
    Ok(h::json(201, &s.svc.sandbox_body(&row)))
}

async fn connect(svc: &Service, id: &str, body: axum::body::Body) -> ApiResult {
    let b: TimeoutBody = read_json(body, MAX_BODY).await?;
    let (row, resumed) = svc.connect(id, b.timeout).await?;
    Ok(h::json(if resumed { 201 } else { 200 }, &svc.sandbox_body(&row)))
}

/// Connect: resume if paused (201), else extend the deadline if longer (200).
#[utoipa::path(post, path = "/sandboxes/{id}/connect", tag = "sandboxes", params(("id" = String, Path)), request_body = TimeoutBody,
    responses((status = 200, body = wire::Sandbox), (status = 201, body = wire::Sandbox), (status = 404, body = wire::ApiError)))]
async fn connect_v1(State(s): State<AppState>, Param(id): Param, body: axum::body::Body) -> ApiResult {
    connect(&s.svc, &id, body).await
}

/// Connect (SDKs 2.51+).
#[utoipa::path(post, path = "/v2/sandboxes/{id}/connect", tag = "sandboxes", params(("id" = String, Path)), request_body = TimeoutBody,
    responses((status = 200, body = wire::Sandbox), (status = 201, body = wire::Sandbox), (status = 404, body = wire::ApiError)))]
async fn connect_v2(State(s): State<AppState>, Param(id): Param, body: axum::body::Body) -> ApiResult {
    connect(&s.svc, &id, body).await
}

/// Usage history (a sample every 5 s by default, kept a day, network bytes
/// included), optionally between two Unix times; readable for a while
/// after a sandbox died.
#[utoipa::path(get, path = "/sandboxes/{id}/metrics", tag = "sandboxes",
    params(("id" = String, Path), ("start" = Option<i64>, Query, description = "Unix seconds"), ("end" = Option<i64>, Query, description = "Unix seconds")),
    responses((status = 200, body = Vec<wire::SandboxMetric>), (status = 404, body = wire::ApiError)))]
async fn metrics(State(s): State<AppState>, Param(id): Param, RawQuery(q): RawQuery) -> ApiResult {
    let q = q.unwrap_or_default();
    let (start, end) = (int_param(&q, "start")?, int_param(&q, "end")?);
    Ok(h::json(200, &s.svc.metrics(&id, start, end).await?))
}

/// Moru's sandbox runs: live and ended sandboxes the event store
/// remembers, newest first; `status` (repeatable or comma separated:
/// running, paused, stopped, error), `limit` (1 to 100, default 100) and
/// `nextToken` (from `X-Next-Token`).
#[utoipa::path(get, path = "/v2/sandbox-runs", tag = "sandboxes",
    params(("status" = Option<String>, Query), ("limit" = Option<u32>, Query), ("nextToken" = Option<String>, Query)),
    responses((status = 200, body = Vec<wire::SandboxRun>), (status = 400, body = wire::ApiError)))]
async fn sandbox_runs(State(s): State<AppState>, RawQuery(q): RawQuery) -> ApiResult {
    let (mut statuses, mut limit, mut token) = (Vec::new(), 100usize, None);
    for (k, v) in query_pairs(q.as_deref().unwrap_or("")) {
        match k.as_str() {
            "status" => statuses.extend(v.split(',').map(str::trim).filter(|x| !x.is_empty()).map(str::to_string)),
            "limit" => {
                limit = v.parse().ok().filter(|n| (1..=100).contains(n)).ok_or_else(|| ApiError::BadRequest(format!("limit must be between 1 and 100, got {v:?}")))?;
            }
            "nextToken" => token = Some(v),
            _ => {}
        }
    }
    let (runs, next) = s.svc.sandbox_runs(statuses, limit, token).await?;
    let mut r = h::json(200, &runs);
    if let Some(t) = next.and_then(|t| http::HeaderValue::from_str(&t).ok()) {
        r.headers_mut().insert("x-next-token", t);
    }
    Ok(r)
}

/// E2B's bulk metrics: the newest sample of each sandbox named in
/// `sandbox_ids` (comma separated, at most 100); unknown ids are left out.
#[utoipa::path(get, path = "/sandboxes/metrics", tag = "sandboxes", params(("sandbox_ids" = String, Query, description = "comma-separated sandbox ids")),
    responses((status = 200, body = wire::SandboxesWithMetrics), (status = 400, body = wire::ApiError)))]
async fn metrics_bulk(State(s): State<AppState>, RawQuery(q): RawQuery) -> ApiResult {
    let ids: Vec<String> = query_pairs(q.as_deref().unwrap_or(""))
        .into_iter()
        .filter(|(k, _)| k == "sandbox_ids" || k == "sandboxIds")
        .flat_map(|(_, v)| v.split(',').map(|x| x.trim().to_string()).filter(|x| !x.is_empty()).collect::<Vec<_>>())
        .collect();
    Ok(h::json(200, &s.svc.metrics_bulk(ids).await?))
}

/// A live stream of a sandbox's usage as server-sent events (`metrics`,
/// one fresh reading every `interval` seconds, 0.5 to 60, default 5),
/// ending with an `end` event when the sandbox stops running.
#[utoipa::path(get, path = "/sandboxes/{id}/metrics/stream", tag = "sandboxes", params(("id" = String, Path), ("interval" = Option<f64>, Query, description = "seconds")),
    responses((status = 200, description = "text/event-stream of SandboxMetric", content_type = "text/event-stream"), (status = 404, body = wire::ApiError)))]
async fn metrics_stream(State(s): State<AppState>, Param(id): Param, RawQuery(q): RawQuery) -> ApiResult {
    let interval = match query_pairs(q.as_deref().unwrap_or("")).into_iter().find(|(k, _)| k == "interval") {
        Some((_, v)) => v.parse::<f64>().ok().filter(|x| (0.5..=60.0).contains(x)).ok_or_else(|| ApiError::BadRequest(format!("interval must be 0.5 to 60 seconds, got {v:?}")))?,
        None => 5.0,
    };
    s.svc.get(&id).await?;
    let svc = s.svc.clone();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<http_body::Frame<bytes::Bytes>, crate::http::BoxError>>(4);
    tokio::spawn(async move {
        let mut prev = None;
        let mut tick = tokio::time::interval(std::time::Duration::from_secs_f64(interval));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let text = match svc.live_sample(&id, prev.as_ref()).await {
                Ok(Some(sample)) => {
                    let m = crate::service::metric(&sample);
                    prev = Some(sample);
                    format!("event: metrics\ndata: {}\n\n", serde_json::to_string(&m).unwrap_or_default())
                }
                Ok(None) => {
                    let _ = tx.send(Ok(http_body::Frame::data(format!("event: end\ndata: {{\"sandboxID\":\"{id}\"}}\n\n").into()))).await;
                    return;
                }
                Err(e) => {
                    tracing::warn!(sandbox_id = %id, error = %e, "reading usage for a stream failed");
                    return;
                }
            };
            if tx.send(Ok(http_body::Frame::data(text.into()))).await.is_err() {
                return;
            }
        }
    });
    Ok(sse_response(rx))
}

/// E2B's network update: `allow_public_traffic` and `mask_request_host`
/// change at once; egress rules and internet access are refused (400/409)
/// until the server can enforce a change.
#[utoipa::path(put, path = "/sandboxes/{id}/network", tag = "sandboxes", params(("id" = String, Path)),
    responses((status = 204), (status = 400, body = wire::ApiError), (status = 404, body = wire::ApiError), (status = 409, body = wire::ApiError)))]
async fn update_network(State(s): State<AppState>, Param(id): Param, body: axum::body::Body) -> ApiResult {
    let b: serde_json::Value = read_json(body, MAX_BODY).await?;
    if !b.is_object() && !b.is_null() {
        return Err(ApiError::BadRequest("the network update is a JSON object".into()));
    }
    s.svc.update_network(&id, b).await?;
    Ok(h::empty(204))
}

/// Changes a running sandbox's limits in place: CPU, memory (refused
/// below what its processes hold) and disk (it only grows).
#[utoipa::path(patch, path = "/sandboxes/{id}/resources", tag = "sandboxes", params(("id" = String, Path)), request_body = wire::ResourceChange,
    responses((status = 200, body = wire::SandboxDetail), (status = 400, body = wire::ApiError), (status = 404, body = wire::ApiError), (status = 409, body = wire::ApiError)))]
async fn set_resources(State(s): State<AppState>, Param(id): Param, body: axum::body::Body) -> ApiResult {
    let b: wire::ResourceChange = read_json(body, MAX_BODY).await?;
    Ok(h::json(200, &s.svc.set_resources(&id, b).await?))
}

/// Sets a sandbox's resource alert thresholds (replacing any; `{}`
/// removes them). Crossing one records a `resource_alert` event.
#[utoipa::path(put, path = "/sandboxes/{id}/alerts", tag = "sandboxes", params(("id" = String, Path)), request_body = wire::AlertThresholds,
    responses((status = 200, body = wire::SandboxDetail), (status = 400, body = wire::ApiError), (status = 404, body = wire::ApiError)))]
async fn set_alerts(State(s): State<AppState>, Param(id): Param, body: axum::body::Body) -> ApiResult {
    let b: wire::AlertThresholds = read_json(body, MAX_BODY).await?;
    Ok(h::json(200, &s.svc.set_alerts(&id, b).await?))
}

/// The nodes of the cluster this server is in, with their load.
#[utoipa::path(get, path = "/nodes", tag = "cluster", responses((status = 200, body = Vec<wire::ClusterNode>), (status = 404, body = wire::ApiError), (status = 503, body = wire::ApiError)))]
async fn list_nodes(State(s): State<AppState>) -> ApiResult {
    let c = cluster_of(&s)?;
    Ok(h::json(200, &c.nodes().await.map_err(|e| crate::cluster::unavailable("listing nodes", &e))?))
}

/// Drains a node: it keeps its sandboxes but takes no new ones.
#[utoipa::path(post, path = "/nodes/{name}/drain", tag = "cluster", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = wire::ApiError), (status = 503, body = wire::ApiError)))]
async fn drain_node(State(s): State<AppState>, Param(name): Param) -> ApiResult {
    set_drained(&s, &name, true).await
}

/// Undoes a drain.
#[utoipa::path(post, path = "/nodes/{name}/undrain", tag = "cluster", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = wire::ApiError), (status = 503, body = wire::ApiError)))]
async fn undrain_node(State(s): State<AppState>, Param(name): Param) -> ApiResult {
    set_drained(&s, &name, false).await
}

fn cluster_of(s: &AppState) -> Result<Arc<crate::cluster::Cluster>, ApiError> {
    s.svc.cluster().cloned().ok_or_else(|| ApiError::NotFound("this server is a single host, not in a cluster (start it with --cluster)".into()))
}

async fn set_drained(s: &AppState, name: &str, drained: bool) -> ApiResult {
    let c = cluster_of(s)?;
    match c.set_drained(name, drained).await {
        Ok(true) => Ok(h::empty(204)),
        Ok(false) => Err(ApiError::NotFound(format!("no node {name:?} in the cluster"))),
        Err(e) => Err(crate::cluster::unavailable("draining", &e)),
    }
}

/// Warm pools with their levels and counters.
#[utoipa::path(get, path = "/pools", tag = "pools", responses((status = 200, body = Vec<wire::PoolInfo>)))]
async fn list_pools(State(s): State<AppState>) -> ApiResult {
    Ok(h::json(200, &s.svc.list_pools().await?))
}

#[utoipa::path(get, path = "/pools/{name}", tag = "pools", params(("name" = String, Path)), responses((status = 200, body = wire::PoolInfo), (status = 404, body = wire::ApiError)))]
async fn get_pool(State(s): State<AppState>, Param(name): Param) -> ApiResult {
    Ok(h::json(200, &s.svc.get_pool(&name).await?))
}

/// Creates or changes a warm pool: `size` ready sandboxes of a template
/// and shape; creates asking for that shape are served from it.
#[utoipa::path(put, path = "/pools/{name}", tag = "pools", params(("name" = String, Path)), request_body = wire::PoolSpec,
    responses((status = 200, body = wire::PoolInfo), (status = 400, body = wire::ApiError), (status = 404, body = wire::ApiError)))]
async fn put_pool(State(s): State<AppState>, Param(name): Param, body: axum::body::Body) -> ApiResult {
    let b: wire::PoolSpec = read_json(body, MAX_BODY).await?;
    Ok(h::json(200, &s.svc.put_pool(&name, b).await?))
}

/// Deletes a pool made through the API; its ready sandboxes are discarded.
#[utoipa::path(delete, path = "/pools/{name}", tag = "pools", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = wire::ApiError), (status = 409, body = wire::ApiError)))]
async fn delete_pool(State(s): State<AppState>, Param(name): Param) -> ApiResult {
    s.svc.delete_pool(&name).await?;
    Ok(h::empty(204))
}

/// The sandbox's log: E2B's `logs` (the set-up log: start command, ready
/// check, create-time set-up, configure) and Airlock's `logEntries` (every
/// command and code execution with its output lines and outcome, lifecycle
/// events, the set-up log; each with a level and a source) with `stats`.
/// `lines`: the newest that many (default 1000); `level`: that level and
/// above; `since`: RFC 3339 or Unix ms (E2B's `start`); `follow=true`:
/// NDJSON, one entry per line, the backlog then live entries until the
/// sandbox stops running.
#[utoipa::path(get, path = "/sandboxes/{id}/logs", tag = "sandboxes", params(("id" = String, Path), ("lines" = Option<u64>, Query), ("level" = Option<String>, Query), ("since" = Option<String>, Query), ("follow" = Option<bool>, Query)),
    responses((status = 200, body = airlock_proto::execlog::ExecutionLog), (status = 400, body = wire::ApiError), (status = 404, body = wire::ApiError)))]
async fn logs_v1(State(s): State<AppState>, Param(id): Param, RawQuery(q): RawQuery) -> ApiResult {
    logs(s, id, q.as_deref().unwrap_or("")).await
}

/// The sandbox's log (v2 path); see `GET /sandboxes/{id}/logs`.
#[utoipa::path(get, path = "/v2/sandboxes/{id}/logs", tag = "sandboxes", params(("id" = String, Path), ("lines" = Option<u64>, Query), ("level" = Option<String>, Query), ("since" = Option<String>, Query), ("follow" = Option<bool>, Query)),
    responses((status = 200, body = airlock_proto::execlog::ExecutionLog), (status = 400, body = wire::ApiError), (status = 404, body = wire::ApiError)))]
async fn logs_v2(State(s): State<AppState>, Param(id): Param, RawQuery(q): RawQuery) -> ApiResult {
    let q = q.unwrap_or_default();
    let pairs = query_pairs(&q);
    let get = |k: &str| pairs.iter().find(|(n, v)| n == k && !v.is_empty()).map(|(_, v)| v.clone());
    if get("follow").is_some_and(|v| v == "true" || v == "1") {
        return logs(s, id, &q).await;
    }
    // E2B's v2 query: `cursor` (Unix ms to start from), `limit`,
    // `direction` (forward: oldest first, the default; backward: newest
    // first), `level`, `search` (a substring of the message).
    let (mut query, _) = log_query(&q)?;
    if let Some(c) = get("cursor") {
        query.since_ms = Some(c.parse().map_err(|_| ApiError::BadRequest(format!("invalid cursor {c:?}: Unix milliseconds")))?);
    }
    let backward = match get("direction").as_deref() {
        None | Some("forward") => false,
        Some("backward") => true,
        Some(d) => return Err(ApiError::BadRequest(format!("invalid direction {d:?}: forward or backward"))),
    };
    let search = get("search");
    let mut log = s.svc.execution_log(&id, &query).await?;
    let mut entries: Vec<serde_json::Value> = log
        .log_entries
        .iter()
        .filter(|e| search.as_ref().is_none_or(|x| e.message.contains(x.as_str())))
        .map(|e| {
            let mut fields = serde_json::Map::new();
            fields.insert("source".into(), serde_json::to_value(e.source).unwrap_or_default());
            for (k, v) in [("pid", e.pid.map(|v| v.to_string())), ("exitCode", e.exit_code.map(|v| v.to_string())), ("durationMs", e.duration_ms.map(|v| v.to_string()))] {
                if let Some(v) = v {
                    fields.insert(k.into(), v.into());
                }
            }
            serde_json::json!({"timestamp": e.timestamp, "message": e.message, "level": e.level, "fields": fields})
        })
        .collect();
    if backward {
        entries.reverse();
    }
    // E2B's v2 shape: `logs` are entries with level and fields.
    log.logs.clear();
    let mut v = serde_json::to_value(&log).map_err(|e| ApiError::Internal(e.to_string()))?;
    v["logs"] = serde_json::Value::Array(entries);
    Ok(h::json(200, &v))
}

async fn logs(s: AppState, id: String, q: &str) -> ApiResult {
    let (query, follow) = log_query(q)?;
    if !follow {
        return Ok(h::json(200, &s.svc.execution_log(&id, &query).await?));
    }
    let rx = s.svc.follow_log(&id, query).await?;
    let body = http_body_util::StreamBody::new(futures_util::stream::unfold(rx, |mut rx| async move {
        let e = rx.recv().await?;
        let mut line = serde_json::to_vec(&e).unwrap_or_default();
        line.push(b'\n');
        Some((Ok::<_, crate::http::BoxError>(http_body::Frame::data(bytes::Bytes::from(line))), rx))
    }));
    let mut r = http::Response::new(http_body_util::BodyExt::boxed_unsync(body));
    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/x-ndjson"));
    Ok(r)
}

/// `lines`/`limit`, `level`, `since`/`start`, `follow`.
fn log_query(q: &str) -> Result<(crate::service::LogQuery, bool), ApiError> {
    let mut out = crate::service::LogQuery::default();
    let mut follow = false;
    for (k, v) in query_pairs(q) {
        if v.is_empty() {
            continue;
        }
        match k.as_str() {
            "lines" | "limit" => {
                let n: usize = v.parse().map_err(|_| ApiError::BadRequest(format!("invalid {k} {v:?}")))?;
                // E2B's `limit` may be 0 (nothing); `lines` asks for some.
                let min = usize::from(k == "lines");
                if !(min..=100_000).contains(&n) {
                    return Err(ApiError::BadRequest(format!("{k} must be between {min} and 100000, got {n}")));
                }
                out.lines = Some(n);
            }
            "level" => {
                out.level = Some(airlock_proto::execlog::LogLevel::parse(&v).ok_or_else(|| ApiError::BadRequest(format!("invalid level {v:?}: use debug, info, warn or error")))?)
            }
            "since" | "start" => {
                let ms = match v.parse::<i64>() {
                    Ok(n) => n,
                    Err(_) => airlock_proto::time::parse_rfc3339(&v)
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map(|d| d.as_millis() as i64)
                        .ok_or_else(|| ApiError::BadRequest(format!("invalid {k} {v:?}: use RFC 3339 or Unix milliseconds")))?,
                };
                out.since_ms = Some(ms);
            }
            "follow" => {
                follow = match v.as_str() {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    o => return Err(ApiError::BadRequest(format!("invalid follow {o:?}: use true or false"))),
                }
            }
            _ => {}
        }
    }
    Ok((out, follow))
}

/// Changes a running sandbox: environment variables that every later
/// command and new code context sees, packages (pip, npm, apt; names
/// checked), commands whose output goes to the set-up log, and a restart.
#[utoipa::path(post, path = "/sandboxes/{id}/configure", tag = "sandboxes", params(("id" = String, Path)), request_body = airlock_proto::execlog::ConfigureSandbox,
    responses((status = 200, body = airlock_proto::execlog::ConfigureResult), (status = 400, body = wire::ApiError), (status = 404, body = wire::ApiError), (status = 409, body = wire::ApiError)))]
async fn configure(State(s): State<AppState>, Param(id): Param, body: axum::body::Body) -> ApiResult {
    let b: airlock_proto::execlog::ConfigureSandbox = read_json(body, MAX_BODY).await?;
    Ok(h::json(200, &s.svc.configure(&id, b).await?))
}

/// Batch execution: code jobs run one after another in the sandbox's code
/// interpreter, highest priority first, each with its own timeout; a job
/// that fails or times out does not stop the rest. JSON answers once at
/// the end; `Accept: application/x-ndjson` streams each job's result as it
/// ends, then the summary.
#[utoipa::path(post, path = "/sandboxes/{id}/batch", tag = "sandboxes", params(("id" = String, Path)), request_body = airlock_proto::api::BatchRequest,
    responses((status = 200, body = airlock_proto::api::BatchResults, description = "every job's result; with Accept: application/x-ndjson, one BatchJobResult per line then the summary"),
        (status = 400, body = wire::ApiError), (status = 404, body = wire::ApiError), (status = 409, body = wire::ApiError)))]
async fn batch(State(s): State<AppState>, Param(id): Param, headers: http::HeaderMap, body: axum::body::Body) -> ApiResult {
    let b: airlock_proto::api::BatchRequest = read_json(body, crate::service::MAX_BATCH_BYTES).await?;
    let plan = s.svc.batch_plan(&id, b).await?;
    let stream = headers.get(http::header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("ndjson"));
    if !stream {
        return Ok(h::json(200, &s.svc.run_batch(plan, None).await));
    }
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let svc = s.svc.clone();
    let run = tokio::spawn(async move { svc.run_batch(plan, Some(tx)).await });
    fn line<T: serde::Serialize>(v: &T) -> Result<http_body::Frame<bytes::Bytes>, crate::http::BoxError> {
        let mut l = serde_json::to_vec(v).unwrap_or_default();
        l.push(b'\n');
        Ok(http_body::Frame::data(bytes::Bytes::from(l)))
    }
    let body = http_body_util::StreamBody::new(futures_util::stream::unfold((rx, Some(run)), |(mut rx, run)| async move {
        if let Some(r) = rx.recv().await {
            return Some((line(&r), (rx, run)));
        }
        // Every result is out: the summary, once.
        let mut summary = run?.await.ok()?;
        summary.results.clear();
        Some((line(&summary), (rx, None)))
    }));
    let mut r = http::Response::new(http_body_util::BodyExt::boxed_unsync(body));
    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/x-ndjson"));
    Ok(r)
}

/// E2B's default templates: `base` and the shipped recipes, in E2B's
/// `Template` shape.
#[utoipa::path(get, path = "/default-templates", tag = "templates", responses((status = 200, description = "E2B Template objects")))]
async fn default_templates(State(s): State<AppState>) -> ApiResult {
    Ok(h::json(200, &s.svc.default_templates().await?))
}

/// Templates by name: every one, or with `page` (from 1) and/or `pageSize`
/// (1-100, default 20) one page of them. Either way `X-Total-Count` says
/// how many there are, so a client knows when it has seen the last page.
#[utoipa::path(get, path = "/templates", tag = "templates",
    params(("page" = Option<u32>, Query, description = "from 1"), ("pageSize" = Option<u32>, Query, description = "1-100, default 20 when paging")),
    responses((status = 200, body = Vec<wire::TemplateInfo>, headers(("x-total-count" = u64))), (status = 400, body = wire::ApiError)))]
async fn list_templates(State(s): State<AppState>, RawQuery(q): RawQuery) -> ApiResult {
    let q = query_pairs(q.as_deref().unwrap_or(""));
    let get = |k: &str| q.iter().find(|(n, v)| n == k && !v.is_empty()).map(|(_, v)| v.clone());
    let num = |k: &str, v: String, max: usize| match v.parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(ApiError::BadRequest(format!("{k} must be between 1 and {max}, got {v:?}"))),
    };
    let paging = match (get("page"), get("pageSize")) {
        (None, None) => None,
        (page, size) => Some((page.map(|v| num("page", v, u32::MAX as usize)).transpose()?.unwrap_or(1), size.map(|v| num("pageSize", v, 100)).transpose()?.unwrap_or(20))),
    };
    let mut all = s.svc.templates().await?;
    all.sort_by(|a, b| a.name.cmp(&b.name));
    let total = all.len();
    let items: Vec<_> = match paging {
        Some((page, size)) => all.into_iter().skip((page - 1).saturating_mul(size)).take(size).collect(),
        None => all,
    };
    let mut resp = h::json(200, &items);
    resp.headers_mut().insert("x-total-count", http::HeaderValue::from(total as u64));
    Ok(resp)
}

/// Build a template; the response streams `BuildEvent`s as NDJSON.
#[utoipa::path(post, path = "/templates", tag = "templates", request_body = BuildTemplate,
    responses((status = 200, description = "one BuildEvent per line, the last `done` or `error`", body = wire::BuildEvent, content_type = "application/x-ndjson"), (status = 400, body = wire::ApiError)))]
async fn build_template(State(s): State<AppState>, body: axum::body::Body) -> ApiResult {
    let mut b: BuildTemplate = read_json(body, MAX_BUILD_BODY).await?;
    if let Some(spec) = b.spec.take() {
        if !b.recipe.trim().is_empty() {
            return Err(ApiError::BadRequest("give a recipe or a spec, not both".into()));
        }
        if b.name.is_empty() {
            b.name = spec.name.clone();
        }
        // A spec is checked whole before the build starts: its errors are
        // 400s, not a stream that fails.
        b.recipe = crate::template_spec::recipe(&spec)?;
    }
    Ok(build_stream(s.svc.clone(), b))
}

/// One template, by name or alias.
#[utoipa::path(get, path = "/templates/{name}", tag = "templates", params(("name" = String, Path)),
    responses((status = 200, body = wire::TemplateInfo), (status = 404, body = wire::ApiError)))]
async fn get_template(State(s): State<AppState>, Param(name): Param) -> ApiResult {
    Ok(h::json(200, &s.svc.template(&name).await?))
}

/// Delete a template; refused (409) while sandboxes use it unless `force`.
#[utoipa::path(delete, path = "/templates/{name}", tag = "templates", params(("name" = String, Path), ("force" = Option<bool>, Query)),
    responses((status = 204), (status = 404, body = wire::ApiError), (status = 409, body = wire::ApiError)))]
async fn delete_template(State(s): State<AppState>, Param(name): Param, RawQuery(q): RawQuery) -> ApiResult {
    let force = query_pairs(q.as_deref().unwrap_or("")).iter().any(|(k, v)| k == "force" && (v == "true" || v == "1"));
    s.svc.delete_template(&name, force).await?;
    Ok(h::empty(204))
}

/// Give a template another name.
#[utoipa::path(post, path = "/templates/{name}/aliases", tag = "templates", params(("name" = String, Path)), request_body = AliasTemplate,
    responses((status = 204), (status = 400, body = wire::ApiError), (status = 404, body = wire::ApiError)))]
async fn alias_template(State(s): State<AppState>, Param(name): Param, body: axum::body::Body) -> ApiResult {
    let b: AliasTemplate = read_json(body, MAX_BODY).await?;
    s.svc.alias_template(&name, &b.alias).await?;
    Ok(h::empty(204))
}

/// Server-sent events: the stored events after `after` that match, then
/// live ones, each once and in order, with a comment every 15 s so proxies
/// and idle timeouts see a stream that lives. Ends when the client goes.
fn event_stream(svc: Arc<Service>, filter: crate::events::EventFilter, after: i64) -> Resp {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<http_body::Frame<bytes::Bytes>, crate::http::BoxError>>(64);
    tokio::spawn(async move {
        let send = |text: String| {
            let tx = tx.clone();
            async move { tx.send(Ok(http_body::Frame::data(text.into()))).await.is_ok() }
        };
        // Subscribed before the store is read: nothing falls between the two.
        let mut live = svc.subscribe();
        let mut last = after;
        loop {
            // The backlog (again after a lagging subscriber missed some).
            loop {
                let page = match svc.events_after(last, filter.sandbox.clone(), 1000).await {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::warn!(error = %e, "reading events failed");
                        return;
                    }
                };
                let n = page.len();
                for e in page {
                    last = e.id;
                    if filter.matches(&e) && !send(crate::events::sse(&e)).await {
                        return;
                    }
                }
                if n < 1000 {
                    break;
                }
            }
            loop {
                tokio::select! {
                    r = live.recv() => match r {
                        Ok(e) if e.id <= last => {}
                        Ok(e) => {
                            last = e.id;
                            if filter.matches(&e) && !send(crate::events::sse(&e)).await {
                                return;
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            crate::telemetry::TELEMETRY.event_stream_lagged.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    },
                    _ = tokio::time::sleep(std::time::Duration::from_secs(15)) => {
                        if !send(": keepalive\n\n".to_string()).await {
                            return;
                        }
                    }
                }
            }
        }
    });
    sse_response(rx)
}

/// A text/event-stream response fed by a channel.
fn sse_response(rx: tokio::sync::mpsc::Receiver<Result<http_body::Frame<bytes::Bytes>, crate::http::BoxError>>) -> Resp {
    let body = http_body_util::StreamBody::new(futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) }));
    let mut r = http::Response::new(http_body_util::BodyExt::boxed_unsync(body));
    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/event-stream"));
    r.headers_mut().insert(http::header::CACHE_CONTROL, http::HeaderValue::from_static("no-cache"));
    r
}

/// The filter and resume point of an events request: `type` (comma
/// separated), `metadata` (as the list filter takes it), and where to
/// resume, from `Last-Event-ID` or `lastEventId`.
fn event_request(headers: &http::HeaderMap, query: &str, sandbox: Option<String>) -> Result<(crate::events::EventFilter, i64), ApiError> {
    let mut f = crate::events::EventFilter { sandbox, ..Default::default() };
    let mut after = headers.get("last-event-id").and_then(|v| v.to_str().ok()).map(str::to_string);
    for (k, v) in query_pairs(query) {
        match k.as_str() {
            "type" => f.kinds.extend(v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string)),
            "metadata" => {
                for (mk, mv) in query_pairs(&v) {
                    f.metadata.insert(percent_decode_strict(&mk), percent_decode_strict(&mv));
                }
            }
            "lastEventId" if !v.is_empty() => after = Some(v),
            _ => {}
        }
    }
    let after = match after {
        Some(a) => a.trim().parse::<i64>().map_err(|_| ApiError::BadRequest(format!("invalid Last-Event-ID {a:?}: it is an event's id")))?,
        None => 0,
    };
    Ok((f, after))
}

/// Lifecycle events of every sandbox, as server-sent events (`id`,
/// `event`: its type, `data`: the event as JSON). Resumes after
/// `Last-Event-ID` with no gap, across server restarts (the newest 100,000
/// events are kept); without it, starts from the oldest kept.
#[utoipa::path(get, path = "/events", tag = "events",
    params(("type" = Option<String>, Query, description = "comma-separated event types"), ("metadata" = Option<String>, Query, description = "url-encoded k=v&k2=v2, all must match"), ("lastEventId" = Option<i64>, Query, description = "or the Last-Event-ID header")),
    responses((status = 200, description = "an endless text/event-stream", content_type = "text/event-stream"), (status = 400, body = wire::ApiError)))]
async fn events(State(s): State<AppState>, headers: http::HeaderMap, RawQuery(q): RawQuery) -> ApiResult {
    let (f, after) = event_request(&headers, q.as_deref().unwrap_or(""), None)?;
    Ok(event_stream(s.svc.clone(), f, after))
}

/// One sandbox's lifecycle events, as `/events` streams them; its history
/// stays readable after it was killed.
#[utoipa::path(get, path = "/sandboxes/{id}/events", tag = "events", params(("id" = String, Path), ("type" = Option<String>, Query), ("lastEventId" = Option<i64>, Query)),
    responses((status = 200, description = "an endless text/event-stream", content_type = "text/event-stream"), (status = 404, body = wire::ApiError)))]
async fn sandbox_events(State(s): State<AppState>, Param(id): Param, headers: http::HeaderMap, RawQuery(q): RawQuery) -> ApiResult {
    let known = s.svc.get(&id).await.is_ok() || !s.svc.events_after(0, Some(id.clone()), 1).await?.is_empty();
    if !known {
        return Err(ApiError::NotFound(format!("sandbox {id} not found")));
    }
    let (f, after) = event_request(&headers, q.as_deref().unwrap_or(""), Some(id))?;
    Ok(event_stream(s.svc.clone(), f, after))
}

/// Whether a sandbox works (its agent runs a command, disk and memory are
/// below 95%), plus any `check` commands given (repeatable; each must exit
/// 0 within 10 s). Always 200 for a sandbox that exists; `healthy` says.
#[utoipa::path(get, path = "/sandboxes/{id}/health", tag = "sandboxes", params(("id" = String, Path), ("check" = Option<String>, Query, description = "a shell command that must succeed; repeatable")),
    responses((status = 200, body = wire::SandboxHealth), (status = 404, body = wire::ApiError)))]
async fn sandbox_health(State(s): State<AppState>, Param(id): Param, RawQuery(q): RawQuery) -> ApiResult {
    let checks: Vec<String> = query_pairs(q.as_deref().unwrap_or("")).into_iter().filter(|(k, v)| k == "check" && !v.is_empty()).map(|(_, v)| v).take(16).collect();
    Ok(h::json(200, &s.svc.health(&id, checks).await?))
}

/// The server's metrics in the Prometheus text format: sandboxes by
/// state, create and kill latency histograms, responses by status class
/// (API and sandbox traffic), events. Needs the API key, like every
/// private route (Prometheus sends it with `http_headers`).
#[utoipa::path(get, path = "/metrics", tag = "server", responses((status = 200, description = "Prometheus text exposition format 0.0.4", content_type = "text/plain")))]
async fn prometheus(State(s): State<AppState>) -> ApiResult {
    let store = s.svc.store().clone();
    let rows = s.svc.blocking(move || store.sandboxes()).await??;
    let mut by: std::collections::BTreeMap<&'static str, usize> =
        ["creating", "running", "pausing", "paused", "resuming", "killing", "dead", "pooled"].into_iter().map(|k| (k, 0)).collect();
    for r in &rows {
        *by.entry(r.state.as_str()).or_default() += 1;
    }
    let pools = s.svc.pool_levels().await;
    let mut body = crate::telemetry::render(&by.into_iter().collect::<Vec<_>>(), &pools);
    if let Some(eg) = s.svc.egress() {
        eg.render_metrics(&mut body);
    }
    let mut r = http::Response::new(h::full(body));
    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    Ok(r)
}

/// A `Write` that hands what is written to a response body, chunk by
/// chunk, from a blocking thread; it fails once the client is gone.
pub(crate) struct BodyWriter(pub(crate) tokio::sync::mpsc::Sender<Result<http_body::Frame<bytes::Bytes>, crate::http::BoxError>>);

impl std::io::Write for BodyWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.blocking_send(Ok(http_body::Frame::data(bytes::Bytes::copy_from_slice(buf)))).map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Export: the sandbox's state as one archive (tar + zstd: the manifest
/// `airlock-export.json` naming its template, then its writable layer),
/// streamed. The sandbox is frozen only while its layer is copied aside.
#[utoipa::path(get, path = "/sandboxes/{id}/export", tag = "sandboxes", params(("id" = String, Path)),
    responses((status = 200, description = "the archive", content_type = "application/zstd"), (status = 404, body = wire::ApiError), (status = 507, body = wire::ApiError)))]
async fn export(State(s): State<AppState>, Param(id): Param) -> ApiResult {
    let (manifest, dir) = s.svc.export_prepare(&id).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::task::spawn_blocking(move || {
        let r = airlock_template::archive::write(&dir, &manifest, std::io::BufWriter::with_capacity(256 * 1024, BodyWriter(tx.clone())))
            .and_then(|w| w.into_inner().map_err(|e| e.into_error()).map(|_| ()));
        if let Err(e) = r {
            tracing::warn!(sandbox_id = %id, error = %e, "export stream ended early");
            let _ = tx.blocking_send(Err(Box::new(e)));
        }
        let _ = std::fs::remove_dir_all(&dir);
    });
    let body = http_body_util::StreamBody::new(futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) }));
    let mut r = http::Response::new(http_body_util::BodyExt::boxed_unsync(body));
    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/zstd"));
    Ok(r)
}

/// Import: a new sandbox from an export archive (the request body), on
/// this host's copy of the template its manifest names; 409 when that
/// template changed since, unless `force`.
#[utoipa::path(post, path = "/sandboxes/import", tag = "sandboxes", params(("timeout" = Option<i64>, Query), ("force" = Option<bool>, Query)),
    request_body(content = Vec<u8>, content_type = "application/zstd"),
    responses((status = 201, body = wire::Sandbox), (status = 400, body = wire::ApiError), (status = 404, body = wire::ApiError), (status = 409, body = wire::ApiError), (status = 413, body = wire::ApiError)))]
async fn import(State(s): State<AppState>, RawQuery(q): RawQuery, body: axum::body::Body) -> ApiResult {
    let q = q.unwrap_or_default();
    let timeout = int_param(&q, "timeout")?;
    let force = query_pairs(&q).iter().any(|(k, v)| k == "force" && (v == "true" || v == "1"));
    s.svc.check_disk("an import")?;
    let path = receive_upload(&s.svc, body, crate::service::import_limit_bytes(&s.svc.cfg)).await?;
    let row = s.svc.import(path, timeout, force).await?;
    Ok(h::json(201, &s.svc.sandbox_body(&row)))
}

/// Streams a request body into a new private file under the data
/// directory, refusing more than `max` bytes (nothing is left behind).
async fn receive_upload(svc: &Service, body: axum::body::Body, max: u64) -> Result<std::path::PathBuf, ApiError> {
    use tokio::io::AsyncWriteExt;
    let dir = svc.cfg.data_dir.join("uploads");
    tokio::fs::create_dir_all(&dir).await.map_err(|e| ApiError::Internal(format!("creating {}: {e}", dir.display())))?;
    let path = dir.join(crate::ids::sandbox_id()?);
    let mut f = tokio::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).await.map_err(|e| ApiError::Internal(format!("creating the upload: {e}")))?;
    let mut b = body;
    let mut n = 0u64;
    let r: Result<(), ApiError> = async {
        while let Some(frame) = b.frame().await {
            let frame = frame.map_err(|e| ApiError::BadRequest(format!("reading body: {e}")))?;
            if let Ok(d) = frame.into_data() {
                n += d.len() as u64;
                if n > max {
                    return Err(ApiError::TooLarge(format!("the upload exceeds {max} bytes")));
                }
                f.write_all(&d).await.map_err(|e| {
                    if e.kind() == std::io::ErrorKind::StorageFull {
                        ApiError::InsufficientStorage("the host's disk is full".into())
                    } else {
                        ApiError::Internal(format!("writing the upload: {e}"))
                    }
                })?;
            }
        }
        f.flush().await.map_err(|e| ApiError::Internal(format!("writing the upload: {e}")))
    }
    .await;
    if let Err(e) = r {
        let _ = tokio::fs::remove_file(&path).await;
        return Err(e);
    }
    Ok(path)
}

// ----------------------------------------------------------- the router

/// The route table: builds the router and lists what it serves, so a test
/// can check the OpenAPI document against it. `public` routes skip
/// authentication and the rate limit.
macro_rules! routes {
    (public: [$($pm:ident $pp:literal => $ph:ident),* $(,)?], private: [$($m:ident $p:literal => $h:ident),* $(,)?]) => {
        /// Every `(method, path)` the control API answers.
        pub const ROUTES: &[(&str, &str)] = &[$((stringify!($pm), $pp),)* $((stringify!($m), $p),)*];

        fn public_routes() -> axum::Router<AppState> {
            axum::Router::new()$(.route($pp, axum::routing::$pm($ph)))*
        }

        fn private_routes() -> axum::Router<AppState> {
            axum::Router::new()$(.route($p, axum::routing::$m($h)))*
        }

        #[derive(OpenApi)]
        #[openapi(
            info(title = "Airlock control API", description = "E2B-compatible sandbox control plane. Sandbox traffic (envd, the code interpreter, ports) is routed by the E2b-Sandbox-Id header and is not part of this document."),
            paths($($ph,)* $($h,)*),
            components(schemas(wire::NewSandbox, wire::InstallPackages, wire::Sandbox, wire::SandboxDetail, wire::Lifecycle, wire::SandboxMetric, wire::TimeoutBody, wire::RefreshBody, wire::ApiError, wire::SandboxLogs, wire::LogLine, airlock_proto::execlog::ExecutionLog, airlock_proto::execlog::LogEntry, airlock_proto::execlog::ExecutionStats,
                airlock_proto::execlog::ConfigureSandbox, airlock_proto::execlog::ConfigureResult, airlock_proto::execlog::CommandOutcome, wire::TemplateInfo, wire::BuildTemplate, wire::TemplateSpec, wire::AliasTemplate, wire::BuildEvent,
                wire::PauseRequest, wire::SnapshotRequest, wire::SnapshotInfo, wire::ForkRequest, wire::ForkResult, wire::ResetRequest, wire::RestartRequest, wire::ExportManifest, wire::SandboxHealth, wire::HealthCheck, wire::Event,
                wire::SandboxEvent, wire::NewWebhook, wire::WebhookPatch, wire::Webhook, wire::WebhookDelivery, wire::NewSecret, wire::SecretUpdate, wire::Secret, wire::NewNetwork, wire::NetworkMember, wire::SandboxNetwork, wire::JoinNetwork, wire::Broadcast, wire::BroadcastResult, wire::BroadcastResults, airlock_proto::api::BatchRequest, airlock_proto::api::BatchJob, airlock_proto::api::BatchJobResult, airlock_proto::api::BatchResults, wire::NodeInfo, wire::ClusterNode,
                airlock_proto::volume::NewVolume, airlock_proto::volume::Volume, airlock_proto::volume::VolumeMount, airlock_proto::volume::EntryStat,
                airlock_proto::volume::MetadataPatch, airlock_proto::volume::FileInfo, airlock_proto::volume::FileList, airlock_proto::volume::Uploaded)),
            modifiers(&ApiKeyAuth),
            security(("api_key" = []))
        )]
        pub struct ApiDoc;
    };
}

routes! {
    public: [
        get "/health" => health,
        get "/openapi.json" => openapi_json,
        // E2B's volume content API: the volume's bearer token, no API key.
        get "/volumecontent/{id}/dir" => vc_list,
        post "/volumecontent/{id}/dir" => vc_mkdir,
        put "/volumecontent/{id}/file" => vc_write,
        get "/volumecontent/{id}/file" => vc_read,
        get "/volumecontent/{id}/path" => vc_stat,
        patch "/volumecontent/{id}/path" => vc_patch,
        delete "/volumecontent/{id}/path" => vc_remove,
    ],
    private: [
        post "/sandboxes" => create_v1,
        post "/v2/sandboxes" => create_v2,
        get "/sandboxes" => list_v1,
        get "/v2/sandboxes" => list_v2,
        get "/sandboxes/{id}" => get_sandbox,
        delete "/sandboxes/{id}" => kill,
        post "/sandboxes/{id}/timeout" => set_timeout,
        post "/sandboxes/{id}/refreshes" => refresh,
        post "/sandboxes/{id}/pause" => pause,
        post "/sandboxes/{id}/resume" => resume,
        post "/sandboxes/{id}/snapshots" => create_snapshot,
        get "/snapshots" => list_snapshots,
        post "/sandboxes/{id}/fork" => fork,
        post "/sandboxes/{id}/reset" => reset,
        post "/sandboxes/{id}/restart" => restart,
        get "/sandboxes/{id}/export" => export,
        get "/events" => events,
        get "/metrics" => prometheus,
        get "/sandboxes/{id}/health" => sandbox_health,
        get "/sandboxes/{id}/events" => sandbox_events,
        get "/events/sandboxes" => e2b_events,
        get "/events/sandboxes/{id}" => e2b_sandbox_events,
        post "/networks" => create_network,
        get "/networks" => list_networks,
        get "/networks/{name}" => get_network,
        delete "/networks/{name}" => delete_network,
        post "/networks/{name}/members" => join_network,
        delete "/networks/{name}/members/{id}" => leave_network,
        post "/sandboxes/broadcast" => broadcast,
        post "/sandboxes/{id}/batch" => batch,
        post "/webhooks" => create_webhook,
        get "/webhooks" => list_webhooks,
        get "/webhooks/{id}" => get_webhook,
        patch "/webhooks/{id}" => patch_webhook,
        delete "/webhooks/{id}" => delete_webhook,
        post "/events/webhooks" => e2b_create_webhook,
        get "/events/webhooks" => e2b_list_webhooks,
        get "/events/webhooks/{id}" => e2b_get_webhook,
        patch "/events/webhooks/{id}" => e2b_patch_webhook,
        delete "/events/webhooks/{id}" => e2b_delete_webhook,
        post "/secrets" => create_secret,
        get "/secrets" => list_secrets,
        get "/secrets/{id}" => get_secret,
        post "/secrets/{id}" => update_secret,
        delete "/secrets/{id}" => delete_secret,
        post "/sandboxes/import" => import,
        post "/sandboxes/{id}/connect" => connect_v1,
        post "/v2/sandboxes/{id}/connect" => connect_v2,
        get "/sandboxes/{id}/metrics" => metrics,
        get "/sandboxes/metrics" => metrics_bulk,
        get "/v2/sandbox-runs" => sandbox_runs,
        get "/sandboxes/{id}/metrics/stream" => metrics_stream,
        patch "/sandboxes/{id}/resources" => set_resources,
        put "/sandboxes/{id}/network" => update_network,
        put "/sandboxes/{id}/alerts" => set_alerts,
        get "/nodes" => list_nodes,
        post "/nodes/{name}/drain" => drain_node,
        post "/nodes/{name}/undrain" => undrain_node,
        get "/pools" => list_pools,
        get "/pools/{name}" => get_pool,
        put "/pools/{name}" => put_pool,
        delete "/pools/{name}" => delete_pool,
        get "/health/details" => health_details,
        get "/sandboxes/{id}/logs" => logs_v1,
        get "/v2/sandboxes/{id}/logs" => logs_v2,
        post "/sandboxes/{id}/configure" => configure,
        get "/templates" => list_templates,
        get "/default-templates" => default_templates,
        post "/v3/templates" => request_build,
        get "/templates/{name}/files/{hash}" => file_link,
        put "/templates/{name}/files/{hash}" => file_upload,
        post "/v2/templates/{id}/builds/{build}" => start_build,
        get "/templates/{name}/builds/{build}/status" => build_status,
        get "/templates/{name}/builds/{build}/logs" => build_logs,
        get "/templates/aliases/{alias}" => template_alias,
        post "/templates/tags" => assign_tags,
        delete "/templates/tags" => remove_tags,
        get "/templates/{name}/tags" => template_tags,
        get "/v2/templates" => list_templates_v2,
        patch "/templates/{name}" => patch_template,
        patch "/v2/templates/{name}" => patch_template_v2,
        post "/templates" => build_template,
        get "/templates/{name}" => get_template,
        delete "/templates/{name}" => delete_template,
        post "/templates/{name}/aliases" => alias_template,
        post "/volumes" => create_volume,
        get "/volumes" => list_volumes,
        get "/volumes/{id}" => get_volume,
        delete "/volumes/{id}" => delete_volume,
        get "/volumes/{id}/files" => list_files,
        delete "/volumes/{id}/files" => delete_file,
        put "/volumes/{id}/files/upload" => upload_file,
        get "/volumes/{id}/files/download" => download_file,
    ]
}

struct ApiKeyAuth;

impl utoipa::Modify for ApiKeyAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme("api_key", SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-KEY"))));
        components.add_security_scheme("volume_token", SecurityScheme::Http(utoipa::openapi::security::Http::new(utoipa::openapi::security::HttpAuthScheme::Bearer)));
    }
}

/// `X-API-KEY`, then the per-key rate limit.
async fn authenticate(State(s): State<AppState>, req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    // Forwarded by another node of the cluster, which checked the key and
    // its rate limit (the secret was checked and removed by dispatch).
    if req.extensions().get::<crate::cluster::Trusted>().is_some() {
        return next.run(req).await;
    }
    let key = req.headers().get(airlock_proto::wire::API_KEY_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("").trim().to_string();
    match (key.is_empty(), s.svc.key_valid(&key).await) {
        (false, Ok(true)) => {}
        (_, Err(e)) => return e.into_response(),
        _ => return h::error(401, "Invalid API key").into_response(),
    }
    if !s.limiter.allow(&key, s.svc.cfg.rate_limit) {
        return ApiError::TooManyRequests(format!("rate limit of {} requests per second exceeded", s.svc.cfg.rate_limit)).into_response();
    }
    next.run(req).await
}

/// One span per request, with an id the response carries (`X-Request-Id`)
/// and the logs share.
async fn trace(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let started = Instant::now();
    let id = crate::ids::access_token().map(|t| t[..16].to_string()).unwrap_or_default();
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let span = tracing::info_span!("api", request_id = %id, %method, %path);
    let mut resp = tracing::Instrument::instrument(next.run(req), span.clone()).await;
    crate::telemetry::TELEMETRY.api_responses.record(resp.status().as_u16());
    if let Ok(v) = http::HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    span.in_scope(|| tracing::info!(status = resp.status().as_u16(), elapsed_ms = started.elapsed().as_secs_f64() * 1e3, "api request"));
    resp
}

async fn not_found(method: http::Method, uri: http::Uri) -> Resp {
    h::error(404, format!("no such endpoint: {method} {}", uri.path()))
}

/// The control API as a tower service.
pub fn router(svc: Arc<Service>, limiter: Arc<RateLimiter>) -> axum::Router {
    router_with(svc, limiter, None, None)
}

/// The control API with `extra` routes (the MCP endpoint) mounted behind
/// the same authentication and rate limit, which take the key from
/// `X-API-KEY` or, on these routes only, `Authorization: Bearer` (what
/// remote MCP clients are configured to send). `public` routes (the
/// Socket.IO endpoint) check keys themselves.
pub fn router_with(svc: Arc<Service>, limiter: Arc<RateLimiter>, extra: Option<axum::Router>, public: Option<axum::Router>) -> axum::Router {
    let dashboard = crate::dashboard::router(svc.cfg.domain.clone());
    let state = AppState { svc, limiter };
    let private = private_routes().route_layer(axum::middleware::from_fn_with_state(state.clone(), authenticate));
    let mut api = public_routes().merge(private).with_state(state.clone());
    if let Some(extra) = extra {
        api = api.merge(extra.route_layer(axum::middleware::from_fn_with_state(state, authenticate)).route_layer(axum::middleware::from_fn(bearer_key)));
    }
    if let Some(public) = public {
        api = api.merge(public);
    }
    api.merge(dashboard).fallback(not_found).method_not_allowed_fallback(not_found).layer(axum::middleware::from_fn(trace))
}

/// `Authorization: Bearer <key>` as `X-API-KEY` when that is absent.
async fn bearer_key(mut req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if !req.headers().contains_key(airlock_proto::wire::API_KEY_HEADER) {
        let bearer = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(s, _)| s.eq_ignore_ascii_case("bearer"))
            .map(|(_, k)| k.trim().to_string());
        if let Some(v) = bearer.and_then(|k| http::HeaderValue::from_str(&k).ok()) {
            req.headers_mut().insert(airlock_proto::wire::API_KEY_HEADER, v);
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_filters_parse_like_the_sdk_sends_them() {
        // Python: metadata=urlencode({"user":"a b","k":"v"}) sent as one value.
        // Python: urlencode({k: quote(v)}) of {"user": "a b", "k": "v"}, then the query encoding.
        let f = parse_list_filter("metadata=user%3Da%252520b%26k%3Dv&state=running,paused&limit=1&order=desc", true).expect("parse");
        assert_eq!(f.metadata.get("user").map(String::as_str), Some("a b"));
        assert_eq!(f.metadata.get("k").map(String::as_str), Some("v"));
        assert_eq!(f.states, Some(vec![SandboxState::Running, SandboxState::Paused]));
        assert_eq!((f.limit, f.descending), (1, true));
        assert!(parse_list_filter("limit=0", true).is_err());
        assert!(parse_list_filter("state=zombie", true).is_err());
        assert_eq!(parse_list_filter("state=dead", true).expect("dead").states, Some(vec![SandboxState::Dead]), "Airlock's own state");
        assert_eq!(parse_list_filter("", false).expect("v1").states, Some(vec![SandboxState::Running]));
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
