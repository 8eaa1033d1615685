//! E2B's template build routes, as the SDK's `Template.build` calls them
//! (see `service::e2b_builds`).

use super::*;

type Pair = Path<(String, String)>;

fn pair_err(e: axum::extract::rejection::PathRejection) -> ApiError {
    ApiError::BadRequest(e.body_text())
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct BuildRequest {
    #[serde(default)]
    name: Option<String>,
    /// Deprecated by E2B for `name`.
    #[serde(default)]
    alias: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
}

/// Requests a template build (E2B's `POST /v3/templates`): the template and
/// build ids the steps are then posted to.
#[utoipa::path(post, path = "/v3/templates", tag = "templates", responses((status = 202, description = "E2B TemplateRequestResponseV3"), (status = 400, body = wire::ApiError)))]
pub(super) async fn request_build(State(s): State<AppState>, body: axum::body::Body) -> ApiResult {
    let b: BuildRequest = read_json(body, MAX_BODY).await?;
    let name = b.name.or(b.alias).filter(|n| !n.trim().is_empty()).ok_or_else(|| ApiError::BadRequest("a template name is needed".into()))?;
    Ok(h::json(202, &s.svc.request_build(name.trim(), b.tags).await?))
}

/// Whether a COPY step's files (by content hash) are here, and where to
/// `PUT` them (with the API key) if not.
#[utoipa::path(get, path = "/templates/{name}/files/{hash}", tag = "templates", params(("name" = String, Path), ("hash" = String, Path)),
    responses((status = 201, description = "E2B TemplateBuildFileUpload"), (status = 400, body = wire::ApiError)))]
pub(super) async fn file_link(State(s): State<AppState>, p: Result<Pair, axum::extract::rejection::PathRejection>, headers: http::HeaderMap) -> ApiResult {
    let Path((id, hash)) = p.map_err(pair_err)?;
    let host = headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| !h.is_empty() && !h.contains('/'))
        .ok_or_else(|| ApiError::BadRequest("a Host header is needed".into()))?;
    let key = headers.get("x-api-key").and_then(|v| v.to_str().ok()).unwrap_or_default();
    Ok(h::json(201, &s.svc.file_upload_link(&id, &hash, &format!("http://{host}"), key).await?))
}

/// Receives a COPY step's files (a tar, gzipped or not), streamed.
#[utoipa::path(put, path = "/templates/{name}/files/{hash}", tag = "templates", params(("name" = String, Path), ("hash" = String, Path)),
    responses((status = 200), (status = 400, body = wire::ApiError), (status = 413, body = wire::ApiError)))]
pub(super) async fn file_upload(State(s): State<AppState>, p: Result<Pair, axum::extract::rejection::PathRejection>, body: axum::body::Body) -> ApiResult {
    let Path((_id, hash)) = p.map_err(pair_err)?;
    if !crate::service::e2b_builds::valid_hash(&hash) {
        return Err(ApiError::BadRequest(format!("invalid files hash {hash:?}")));
    }
    let tmp = receive_upload(&s.svc, body, crate::service::e2b_builds::MAX_UPLOAD).await?;
    s.svc.store_upload(&hash, tmp).await?;
    Ok(h::empty(200))
}

/// Starts a requested build with its steps (E2B's `TemplateBuildStartV2`).
#[utoipa::path(post, path = "/v2/templates/{id}/builds/{build}", tag = "templates", params(("id" = String, Path), ("build" = String, Path)),
    responses((status = 202), (status = 400, body = wire::ApiError), (status = 404, body = wire::ApiError)))]
pub(super) async fn start_build(State(s): State<AppState>, p: Result<Pair, axum::extract::rejection::PathRejection>, body: axum::body::Body) -> ApiResult {
    let Path((id, build)) = p.map_err(pair_err)?;
    let b: crate::service::e2b_builds::BuildStart = read_json(body, 16 << 20).await?;
    s.svc.start_e2b_build(&id, &build, b).await?;
    Ok(h::empty(202))
}

/// A build's status and its log from `logsOffset` (at most `limit`, 100).
#[utoipa::path(get, path = "/templates/{name}/builds/{build}/status", tag = "templates",
    params(("name" = String, Path), ("build" = String, Path), ("logsOffset" = Option<u32>, Query), ("limit" = Option<u32>, Query)),
    responses((status = 200, description = "E2B TemplateBuildInfo"), (status = 404, body = wire::ApiError)))]
pub(super) async fn build_status(State(s): State<AppState>, p: Result<Pair, axum::extract::rejection::PathRejection>, RawQuery(q): RawQuery) -> ApiResult {
    let Path((id, build)) = p.map_err(pair_err)?;
    let q = q.unwrap_or_default();
    let offset = int_param(&q, "logsOffset")?.unwrap_or(0).max(0) as usize;
    let limit = int_param(&q, "limit")?.unwrap_or(100).clamp(1, 100) as usize;
    Ok(h::json(200, &s.svc.e2b_build_status(&id, &build, offset, limit).await?))
}

/// All of a build's log.
#[utoipa::path(get, path = "/templates/{name}/builds/{build}/logs", tag = "templates", params(("name" = String, Path), ("build" = String, Path)),
    responses((status = 200, description = "E2B TemplateBuildLogsResponse"), (status = 404, body = wire::ApiError)))]
pub(super) async fn build_logs(State(s): State<AppState>, p: Result<Pair, axum::extract::rejection::PathRejection>) -> ApiResult {
    let Path((id, build)) = p.map_err(pair_err)?;
    Ok(h::json(200, &s.svc.e2b_build_logs(&id, &build).await?))
}

/// Whether a template of that name exists (the SDK's `Template.exists`).
#[utoipa::path(get, path = "/templates/aliases/{alias}", tag = "templates", params(("alias" = String, Path)),
    responses((status = 200, description = "E2B TemplateAliasResponse"), (status = 404, body = wire::ApiError)))]
pub(super) async fn template_alias(State(s): State<AppState>, Param(alias): Param) -> ApiResult {
    Ok(h::json(200, &s.svc.template_alias(&alias).await?))
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct AssignTags {
    /// `name:tag` (or `name`, its default build).
    #[serde(default)]
    target: String,
    #[serde(default)]
    tags: Vec<String>,
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RemoveTags {
    #[serde(default)]
    name: String,
    #[serde(default)]
    tags: Vec<String>,
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct TemplatePatch {
    #[serde(default)]
    public: Option<bool>,
}

/// Points tags at the build another tag names (the SDK's `Template.assign_tags`).
#[utoipa::path(post, path = "/templates/tags", tag = "templates",
    responses((status = 201, description = "E2B AssignedTemplateTags: tags and buildID"), (status = 400, body = wire::ApiError), (status = 404, body = wire::ApiError)))]
pub(super) async fn assign_tags(State(s): State<AppState>, body: axum::body::Body) -> ApiResult {
    let b: AssignTags = read_json(body, MAX_BODY).await?;
    if b.target.trim().is_empty() {
        return Err(ApiError::BadRequest("target (name:tag) is required".into()));
    }
    Ok(h::json(201, &s.svc.assign_template_tags(&b.target, b.tags).await?))
}

/// Removes tags from a template (`default` stays: delete the template instead).
#[utoipa::path(delete, path = "/templates/tags", tag = "templates",
    responses((status = 204), (status = 400, body = wire::ApiError), (status = 404, body = wire::ApiError)))]
pub(super) async fn remove_tags(State(s): State<AppState>, body: axum::body::Body) -> ApiResult {
    let b: RemoveTags = read_json(body, MAX_BODY).await?;
    if b.name.trim().is_empty() {
        return Err(ApiError::BadRequest("name is required".into()));
    }
    s.svc.remove_template_tags(&b.name, b.tags).await?;
    Ok(h::empty(204))
}

/// A template's tags, each with its build.
#[utoipa::path(get, path = "/templates/{name}/tags", tag = "templates", params(("name" = String, Path)),
    responses((status = 200, description = "E2B TemplateTag list: tag, buildID, createdAt"), (status = 404, body = wire::ApiError)))]
pub(super) async fn template_tags(State(s): State<AppState>, Param(name): Param) -> ApiResult {
    Ok(h::json(200, &s.svc.template_tags(&name).await?))
}

/// Templates in E2B's `Template` shape, by name; `limit` and `nextToken`
/// page (the next token is in `X-Next-Token`).
#[utoipa::path(get, path = "/v2/templates", tag = "templates", params(("limit" = Option<usize>, Query), ("nextToken" = Option<String>, Query)),
    responses((status = 200, description = "E2B Template list")))]
pub(super) async fn list_templates_v2(State(s): State<AppState>, RawQuery(q): RawQuery) -> ApiResult {
    let q = query_pairs(q.as_deref().unwrap_or(""));
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let limit = match get("limit") {
        None => 100,
        Some(l) => l.parse::<usize>().ok().filter(|l| (1..=1000).contains(l)).ok_or_else(|| ApiError::BadRequest(format!("invalid limit {l:?}: 1-1000")))?,
    };
    let (page, next) = s.svc.e2b_templates(limit, get("nextToken").as_deref()).await?;
    let mut r = h::json(200, &page);
    if let Some(n) = next.and_then(|n| http::HeaderValue::from_str(&n).ok()) {
        r.headers_mut().insert("x-next-token", n);
    }
    Ok(r)
}

/// E2B's template update: `public`.
#[utoipa::path(patch, path = "/templates/{name}", tag = "templates", params(("name" = String, Path)),
    responses((status = 200), (status = 400, body = wire::ApiError), (status = 404, body = wire::ApiError)))]
pub(super) async fn patch_template(State(s): State<AppState>, Param(name): Param, body: axum::body::Body) -> ApiResult {
    let b: TemplatePatch = read_json(body, MAX_BODY).await?;
    s.svc.update_template(&name, b.public).await?;
    Ok(h::empty(200))
}

/// The same, answering E2B's `TemplateUpdateResponse` (the names).
#[utoipa::path(patch, path = "/v2/templates/{name}", tag = "templates", params(("name" = String, Path)),
    responses((status = 200, description = "E2B TemplateUpdateResponse"), (status = 400, body = wire::ApiError), (status = 404, body = wire::ApiError)))]
pub(super) async fn patch_template_v2(State(s): State<AppState>, Param(name): Param, body: axum::body::Body) -> ApiResult {
    let b: TemplatePatch = read_json(body, MAX_BODY).await?;
    let names = s.svc.update_template(&name, b.public).await?;
    Ok(h::json(200, &serde_json::json!({ "names": names })))
}
