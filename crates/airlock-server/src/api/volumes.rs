//! The volume routes: E2B's control API (`/volumes`, `X-API-KEY`) and
//! content API (`/volumecontent/{id}/...`, `Authorization: Bearer <volume
//! token>` and no API key, as the E2B SDK sends it), and Moru's file API
//! (`/volumes/{id}/files...`, `X-API-KEY`). Bodies of uploads and
//! downloads are streamed, never held whole.

use airlock_proto::volume as vw;
use bytes::Bytes;
use tokio::io::AsyncReadExt;

use super::*;
use crate::service::{entry_stat, file_info};

type Query = Vec<(String, String)>;

fn query(q: Option<String>) -> Query {
    query_pairs(q.as_deref().unwrap_or(""))
}

fn get<'a>(q: &'a Query, k: &str) -> Option<&'a str> {
    q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
}

fn path_param(q: &Query) -> Result<String, ApiError> {
    get(q, "path").map(str::to_string).ok_or_else(|| ApiError::BadRequest("the path query parameter is required".into()))
}

fn flag(q: &Query, k: &str) -> Option<bool> {
    get(q, k).map(|v| v == "true" || v == "1")
}

fn num(q: &Query, k: &str) -> Result<Option<u32>, ApiError> {
    match get(q, k) {
        Some(v) if !v.is_empty() => v.parse().map(Some).map_err(|_| ApiError::BadRequest(format!("invalid {k} {v:?}"))),
        _ => Ok(None),
    }
}

fn content_length(h: &http::HeaderMap) -> Option<u64> {
    h.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok())
}

/// A file's bytes as a streamed body.
fn file_body(f: std::fs::File, len: u64, name: &str) -> Resp {
    let file = tokio::fs::File::from_std(f);
    let stream = futures_util::stream::unfold(Some(file), |state| async move {
        let mut f = state?;
        let mut buf = vec![0u8; 64 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(http_body::Frame::data(Bytes::from(buf))), Some(f)))
            }
            // The status is sent already: end the body early, the client
            // sees a short read against Content-Length.
            Err(e) => Some((Err(Box::new(e) as crate::http::BoxError), None)),
        }
    });
    let mut r = http::Response::new(http_body_util::BodyExt::boxed_unsync(http_body_util::StreamBody::new(stream)));
    let hs = r.headers_mut();
    hs.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/octet-stream"));
    if let Ok(v) = http::HeaderValue::from_str(&len.to_string()) {
        hs.insert(http::header::CONTENT_LENGTH, v);
    }
    let safe: String = name.chars().filter(|c| c.is_ascii_graphic() && *c != '"' && *c != '\\').collect();
    if let Ok(v) = http::HeaderValue::from_str(&format!("attachment; filename=\"{safe}\"")) {
        hs.insert(http::header::CONTENT_DISPOSITION, v);
    }
    r
}

// ------------------------------------------------------ volumes (both SDKs)

/// Create a volume (E2B: 201 with its content-API token; Moru reads the same body).
#[utoipa::path(post, path = "/volumes", tag = "volumes", request_body = vw::NewVolume,
    responses((status = 201, body = vw::Volume), (status = 400, body = wire::ApiError), (status = 401, body = wire::ApiError), (status = 409, description = "the name is taken", body = wire::ApiError)))]
pub(super) async fn create_volume(State(s): State<AppState>, body: axum::body::Body) -> ApiResult {
    let b: vw::NewVolume = read_json(body, MAX_BODY).await?;
    Ok(h::json(201, &s.svc.create_volume(b).await?))
}

/// Every volume (no tokens).
#[utoipa::path(get, path = "/volumes", tag = "volumes", responses((status = 200, body = Vec<vw::Volume>), (status = 401, body = wire::ApiError)))]
pub(super) async fn list_volumes(State(s): State<AppState>) -> ApiResult {
    Ok(h::json(200, &s.svc.list_volumes().await?))
}

/// One volume by id or name, with its token.
#[utoipa::path(get, path = "/volumes/{id}", tag = "volumes", params(("id" = String, Path, description = "vol_... id or name")),
    responses((status = 200, body = vw::Volume), (status = 404, body = wire::ApiError)))]
pub(super) async fn get_volume(State(s): State<AppState>, Param(id): Param) -> ApiResult {
    Ok(h::json(200, &s.svc.get_volume(&id).await?))
}

/// Delete a volume and its files; 409 while a sandbox mounts it.
#[utoipa::path(delete, path = "/volumes/{id}", tag = "volumes", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = wire::ApiError), (status = 409, description = "mounted by sandboxes (their ids in the message)", body = wire::ApiError)))]
pub(super) async fn delete_volume(State(s): State<AppState>, Param(id): Param) -> ApiResult {
    s.svc.delete_volume(&id).await?;
    Ok(h::empty(204))
}

// ---------------------------------------------------- Moru's file API

/// A directory's entries (Moru `FileInfo`); paged by `limit` (1-1000) and `nextToken`.
#[utoipa::path(get, path = "/volumes/{id}/files", tag = "volumes",
    params(("id" = String, Path), ("path" = Option<String>, Query, description = "default /"), ("limit" = Option<u32>, Query), ("nextToken" = Option<String>, Query)),
    responses((status = 200, body = vw::FileList), (status = 400, body = wire::ApiError), (status = 404, body = wire::ApiError)))]
pub(super) async fn list_files(State(s): State<AppState>, Param(id): Param, RawQuery(q): RawQuery) -> ApiResult {
    let q = query(q);
    let v = s.svc.volume_for_files(&id).await?;
    let limit = num(&q, "limit")?.unwrap_or(1000) as usize;
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::BadRequest(format!("limit must be between 1 and 1000, got {limit}")));
    }
    let offset: usize = match get(&q, "nextToken").filter(|t| !t.is_empty()) {
        Some(t) => t.parse().map_err(|_| ApiError::BadRequest("invalid nextToken".into()))?,
        None => 0,
    };
    let all = s.svc.volume_list(&v, get(&q, "path").unwrap_or("/"), 1).await?;
    let files: Vec<vw::FileInfo> = all.iter().skip(offset).take(limit).map(file_info).collect();
    let next_token = (offset + files.len() < all.len()).then(|| (offset + files.len()).to_string());
    Ok(h::json(200, &vw::FileList { files, next_token }))
}

/// Upload a file (raw body, streamed; parents created; replaces). 413 when the volume is full.
#[utoipa::path(put, path = "/volumes/{id}/files/upload", tag = "volumes", params(("id" = String, Path), ("path" = String, Query)),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, body = vw::Uploaded), (status = 400, body = wire::ApiError), (status = 404, body = wire::ApiError), (status = 413, body = wire::ApiError)))]
pub(super) async fn upload_file(State(s): State<AppState>, Param(id): Param, RawQuery(q): RawQuery, headers: http::HeaderMap, body: axum::body::Body) -> ApiResult {
    let q = query(q);
    let v = s.svc.volume_for_files(&id).await?;
    let e = s.svc.volume_write(&v, &path_param(&q)?, body, content_length(&headers), true, None, None, None).await?;
    Ok(h::json(201, &vw::Uploaded { path: e.path.display(), size: e.size }))
}

/// Download a file (streamed).
#[utoipa::path(get, path = "/volumes/{id}/files/download", tag = "volumes", params(("id" = String, Path), ("path" = String, Query)),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>), (status = 400, body = wire::ApiError), (status = 404, body = wire::ApiError)))]
pub(super) async fn download_file(State(s): State<AppState>, Param(id): Param, RawQuery(q): RawQuery) -> ApiResult {
    let q = query(q);
    let v = s.svc.volume_for_files(&id).await?;
    let path = path_param(&q)?;
    let (f, len) = s.svc.volume_read(&v, &path).await?;
    Ok(file_body(f, len, path.rsplit('/').next().unwrap_or("file")))
}

/// Delete a file, or a directory (non-empty only with `recursive=true`); 204 also when missing.
#[utoipa::path(delete, path = "/volumes/{id}/files", tag = "volumes", params(("id" = String, Path), ("path" = String, Query), ("recursive" = Option<bool>, Query)),
    responses((status = 204), (status = 400, body = wire::ApiError), (status = 404, body = wire::ApiError)))]
pub(super) async fn delete_file(State(s): State<AppState>, Param(id): Param, RawQuery(q): RawQuery) -> ApiResult {
    let q = query(q);
    let v = s.svc.volume_for_files(&id).await?;
    s.svc.volume_remove(&v, &path_param(&q)?, flag(&q, "recursive").unwrap_or(false), true).await?;
    Ok(h::empty(204))
}

// ------------------------------------------------- E2B's content API

async fn bearer(s: &AppState, id: &str, headers: &http::HeaderMap) -> Result<crate::volumes::store::VolumeRow, ApiError> {
    s.svc.volume_with_token(id, headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok())).await
}

/// List a directory (`depth` levels, default 1).
#[utoipa::path(get, path = "/volumecontent/{id}/dir", tag = "volume content", params(("id" = String, Path), ("path" = String, Query), ("depth" = Option<u32>, Query)),
    security(("volume_token" = [])),
    responses((status = 200, body = Vec<vw::EntryStat>), (status = 401, body = wire::ApiError), (status = 404, body = wire::ApiError)))]
pub(super) async fn vc_list(State(s): State<AppState>, Param(id): Param, RawQuery(q): RawQuery, headers: http::HeaderMap) -> ApiResult {
    let v = bearer(&s, &id, &headers).await?;
    let q = query(q);
    let entries = s.svc.volume_list(&v, &path_param(&q)?, num(&q, "depth")?.unwrap_or(1)).await?;
    Ok(h::json(200, &entries.iter().map(entry_stat).collect::<Vec<_>>()))
}

/// Make a directory (`force`: parents too).
#[utoipa::path(post, path = "/volumecontent/{id}/dir", tag = "volume content",
    params(("id" = String, Path), ("path" = String, Query), ("uid" = Option<u32>, Query), ("gid" = Option<u32>, Query), ("mode" = Option<u32>, Query), ("force" = Option<bool>, Query)),
    security(("volume_token" = [])),
    responses((status = 201, body = vw::EntryStat), (status = 401, body = wire::ApiError), (status = 404, body = wire::ApiError), (status = 409, body = wire::ApiError)))]
pub(super) async fn vc_mkdir(State(s): State<AppState>, Param(id): Param, RawQuery(q): RawQuery, headers: http::HeaderMap) -> ApiResult {
    let v = bearer(&s, &id, &headers).await?;
    let q = query(q);
    let e = s.svc.volume_mkdir(&v, &path_param(&q)?, flag(&q, "force").unwrap_or(false), num(&q, "uid")?, num(&q, "gid")?, num(&q, "mode")?).await?;
    Ok(h::json(201, &entry_stat(&e)))
}

/// Write a file (raw body, streamed; parents created; an existing file
/// only with `force=true`, else 409).
#[utoipa::path(put, path = "/volumecontent/{id}/file", tag = "volume content",
    params(("id" = String, Path), ("path" = String, Query), ("uid" = Option<u32>, Query), ("gid" = Option<u32>, Query), ("mode" = Option<u32>, Query), ("force" = Option<bool>, Query)),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"), security(("volume_token" = [])),
    responses((status = 201, body = vw::EntryStat), (status = 401, body = wire::ApiError), (status = 409, body = wire::ApiError), (status = 413, body = wire::ApiError)))]
pub(super) async fn vc_write(State(s): State<AppState>, Param(id): Param, RawQuery(q): RawQuery, headers: http::HeaderMap, body: axum::body::Body) -> ApiResult {
    let v = bearer(&s, &id, &headers).await?;
    let q = query(q);
    let e =
        s.svc.volume_write(&v, &path_param(&q)?, body, content_length(&headers), flag(&q, "force").unwrap_or(false), num(&q, "uid")?, num(&q, "gid")?, num(&q, "mode")?).await?;
    Ok(h::json(201, &entry_stat(&e)))
}

/// Read a file (streamed).
#[utoipa::path(get, path = "/volumecontent/{id}/file", tag = "volume content", params(("id" = String, Path), ("path" = String, Query)),
    security(("volume_token" = [])),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>), (status = 401, body = wire::ApiError), (status = 404, body = wire::ApiError)))]
pub(super) async fn vc_read(State(s): State<AppState>, Param(id): Param, RawQuery(q): RawQuery, headers: http::HeaderMap) -> ApiResult {
    let v = bearer(&s, &id, &headers).await?;
    let q = query(q);
    let path = path_param(&q)?;
    let (f, len) = s.svc.volume_read(&v, &path).await?;
    Ok(file_body(f, len, path.rsplit('/').next().unwrap_or("file")))
}

/// Stat one entry (a symlink is shown as one, with its target).
#[utoipa::path(get, path = "/volumecontent/{id}/path", tag = "volume content", params(("id" = String, Path), ("path" = String, Query)),
    security(("volume_token" = [])),
    responses((status = 200, body = vw::EntryStat), (status = 401, body = wire::ApiError), (status = 404, body = wire::ApiError)))]
pub(super) async fn vc_stat(State(s): State<AppState>, Param(id): Param, RawQuery(q): RawQuery, headers: http::HeaderMap) -> ApiResult {
    let v = bearer(&s, &id, &headers).await?;
    let q = query(q);
    Ok(h::json(200, &entry_stat(&s.svc.volume_stat(&v, &path_param(&q)?).await?)))
}

/// Change owner and mode.
#[utoipa::path(patch, path = "/volumecontent/{id}/path", tag = "volume content", params(("id" = String, Path), ("path" = String, Query)),
    request_body = vw::MetadataPatch, security(("volume_token" = [])),
    responses((status = 200, body = vw::EntryStat), (status = 400, body = wire::ApiError), (status = 401, body = wire::ApiError), (status = 404, body = wire::ApiError)))]
pub(super) async fn vc_patch(State(s): State<AppState>, Param(id): Param, RawQuery(q): RawQuery, headers: http::HeaderMap, body: axum::body::Body) -> ApiResult {
    let v = bearer(&s, &id, &headers).await?;
    let q = query(q);
    let patch: vw::MetadataPatch = read_json(body, MAX_BODY).await?;
    Ok(h::json(200, &entry_stat(&s.svc.volume_set_meta(&v, &path_param(&q)?, patch).await?)))
}

/// Remove a file, link or directory (a directory with everything in it).
#[utoipa::path(delete, path = "/volumecontent/{id}/path", tag = "volume content", params(("id" = String, Path), ("path" = String, Query)),
    security(("volume_token" = [])),
    responses((status = 204), (status = 401, body = wire::ApiError), (status = 404, body = wire::ApiError)))]
pub(super) async fn vc_remove(State(s): State<AppState>, Param(id): Param, RawQuery(q): RawQuery, headers: http::HeaderMap) -> ApiResult {
    let v = bearer(&s, &id, &headers).await?;
    let q = query(q);
    s.svc.volume_remove(&v, &path_param(&q)?, true, false).await?;
    Ok(h::empty(204))
}
