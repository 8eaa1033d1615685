//! E2B's secrets routes (`/secrets`): create, list with the SDKs' paging
//! (`limit`, `nextToken`, `X-Next-Token`), get, update and delete, a secret
//! named by id or name. No answer carries a value, and a malformed body is
//! refused without echoing it (serde's messages quote what they reject).

use airlock_proto::api::{NewSecret, SecretUpdate};
use serde::de::DeserializeOwned;

use super::*;

const SHAPE: &str = "the body must be a JSON object: name and value strings, metadata an object of strings";

/// The body as `T`; a wrong type is reported without the offending text.
async fn read_secret_body<T: DeserializeOwned>(body: axum::body::Body) -> Result<T, ApiError> {
    let v: serde_json::Value = read_json(body, MAX_BODY).await?;
    if !v.is_object() {
        return Err(ApiError::BadRequest(SHAPE.into()));
    }
    serde_json::from_value(v).map_err(|_| ApiError::BadRequest(SHAPE.into()))
}

/// Create a secret (version 1); the answer is its metadata, never its value.
#[utoipa::path(post, path = "/secrets", tag = "secrets", request_body = wire::NewSecret,
    responses((status = 201, body = wire::Secret), (status = 400, description = "a bad name, value or metadata", body = wire::ApiError),
        (status = 409, description = "the name is taken, or at the secret limit", body = wire::ApiError), (status = 503, description = "the secrets key file is missing or wrong", body = wire::ApiError)))]
pub(super) async fn create_secret(State(s): State<AppState>, body: axum::body::Body) -> ApiResult {
    let b: NewSecret = read_secret_body(body).await?;
    Ok(h::json(201, &s.svc.create_secret(b).await?))
}

/// Secrets, oldest first; the next page's token is in `X-Next-Token`.
#[utoipa::path(get, path = "/secrets", tag = "secrets",
    params(("limit" = Option<u32>, Query, description = "1-100, default 100"), ("nextToken" = Option<String>, Query)),
    responses((status = 200, body = Vec<wire::Secret>, headers(("x-next-token" = String))), (status = 400, body = wire::ApiError)))]
pub(super) async fn list_secrets(State(s): State<AppState>, RawQuery(q): RawQuery) -> ApiResult {
    let q = query_pairs(q.as_deref().unwrap_or(""));
    let get = |k: &str| q.iter().find(|(n, v)| n == k && !v.is_empty()).map(|(_, v)| v.clone());
    let limit = match get("limit") {
        Some(v) => v.parse::<usize>().map_err(|_| ApiError::BadRequest(format!("limit must be between 1 and 100, got {v:?}")))?,
        None => 100,
    };
    let (items, next) = s.svc.list_secrets(limit, get("nextToken").as_deref()).await?;
    let mut resp = h::json(200, &items);
    if let Some(v) = next.and_then(|t| http::HeaderValue::from_str(&t).ok()) {
        resp.headers_mut().insert("x-next-token", v);
    }
    Ok(resp)
}

/// One secret's metadata, by id (`sec_…`) or name.
#[utoipa::path(get, path = "/secrets/{id}", tag = "secrets", params(("id" = String, Path, description = "the secret's id or name")),
    responses((status = 200, body = wire::Secret), (status = 404, body = wire::ApiError)))]
pub(super) async fn get_secret(State(s): State<AppState>, Param(id): Param) -> ApiResult {
    Ok(h::json(200, &s.svc.secret(&id).await?))
}

/// A new value, stored as the next version; `metadata`, when given,
/// replaces the stored metadata.
#[utoipa::path(post, path = "/secrets/{id}", tag = "secrets", params(("id" = String, Path, description = "the secret's id or name")), request_body = wire::SecretUpdate,
    responses((status = 200, body = wire::Secret), (status = 400, body = wire::ApiError), (status = 404, body = wire::ApiError), (status = 503, body = wire::ApiError)))]
pub(super) async fn update_secret(State(s): State<AppState>, Param(id): Param, body: axum::body::Body) -> ApiResult {
    let b: SecretUpdate = read_secret_body(body).await?;
    Ok(h::json(200, &s.svc.update_secret(&id, b).await?))
}

/// Delete a secret: placeholders naming it stop resolving at once.
#[utoipa::path(delete, path = "/secrets/{id}", tag = "secrets", params(("id" = String, Path, description = "the secret's id or name")),
    responses((status = 204), (status = 404, body = wire::ApiError)))]
pub(super) async fn delete_secret(State(s): State<AppState>, Param(id): Param) -> ApiResult {
    s.svc.delete_secret(&id).await?;
    Ok(h::empty(204))
}
