//! The webhook routes, Airlock's (`/webhooks`) and E2B's
//! (`/events/webhooks`, the same webhooks under E2B's paths and statuses),
//! and E2B's events API (`/events/sandboxes`): stored events as pages of
//! E2B's `SandboxEvent`, not a stream (that is `/events`).

use airlock_proto::api::{NewWebhook, WebhookPatch};

use super::*;
use crate::service::EventListing;

async fn create_hook(svc: &Service, body: axum::body::Body) -> ApiResult {
    let b: NewWebhook = read_json(body, MAX_BODY).await?;
    Ok(h::json(201, &svc.create_webhook(b).await?))
}

async fn patch_hook(svc: &Service, id: &str, body: axum::body::Body) -> ApiResult {
    let b: WebhookPatch = read_json(body, MAX_BODY).await?;
    Ok(h::json(200, &svc.update_webhook(id, b).await?))
}

/// Register a webhook: every lifecycle event it asks for (all when
/// `events` is absent) is POSTed to `url`, signed with `secret`, from now on.
#[utoipa::path(post, path = "/webhooks", tag = "webhooks", request_body = wire::NewWebhook,
    responses((status = 201, body = wire::Webhook), (status = 400, description = "a bad URL (https included: no TLS client), an unknown event type, a field too long", body = wire::ApiError), (status = 409, description = "at the webhook limit", body = wire::ApiError)))]
pub(super) async fn create_webhook(State(s): State<AppState>, body: axum::body::Body) -> ApiResult {
    create_hook(&s.svc, body).await
}

/// Every webhook, with where its deliveries stand (no secrets).
#[utoipa::path(get, path = "/webhooks", tag = "webhooks", responses((status = 200, body = Vec<wire::Webhook>)))]
pub(super) async fn list_webhooks(State(s): State<AppState>) -> ApiResult {
    Ok(h::json(200, &s.svc.webhooks().await?))
}

/// One webhook: its settings and delivery state (last status, attempts, last error).
#[utoipa::path(get, path = "/webhooks/{id}", tag = "webhooks", params(("id" = String, Path)),
    responses((status = 200, body = wire::Webhook), (status = 404, body = wire::ApiError)))]
pub(super) async fn get_webhook(State(s): State<AppState>, Param(id): Param) -> ApiResult {
    Ok(h::json(200, &s.svc.webhook(&id).await?))
}

/// Change a webhook; the fields given replace the stored ones.
#[utoipa::path(patch, path = "/webhooks/{id}", tag = "webhooks", params(("id" = String, Path)), request_body = wire::WebhookPatch,
    responses((status = 200, body = wire::Webhook), (status = 400, body = wire::ApiError), (status = 404, body = wire::ApiError)))]
pub(super) async fn patch_webhook(State(s): State<AppState>, Param(id): Param, body: axum::body::Body) -> ApiResult {
    patch_hook(&s.svc, &id, body).await
}

/// Remove a webhook; a delivery in flight is abandoned.
#[utoipa::path(delete, path = "/webhooks/{id}", tag = "webhooks", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = wire::ApiError)))]
pub(super) async fn delete_webhook(State(s): State<AppState>, Param(id): Param) -> ApiResult {
    s.svc.delete_webhook(&id).await?;
    Ok(h::empty(204))
}

/// E2B's register (`signatureSecret` is the secret).
#[utoipa::path(post, path = "/events/webhooks", tag = "webhooks", request_body = wire::NewWebhook,
    responses((status = 201, body = wire::Webhook), (status = 400, body = wire::ApiError), (status = 409, body = wire::ApiError)))]
pub(super) async fn e2b_create_webhook(State(s): State<AppState>, body: axum::body::Body) -> ApiResult {
    create_hook(&s.svc, body).await
}

/// E2B's list.
#[utoipa::path(get, path = "/events/webhooks", tag = "webhooks", responses((status = 200, body = Vec<wire::Webhook>)))]
pub(super) async fn e2b_list_webhooks(State(s): State<AppState>) -> ApiResult {
    Ok(h::json(200, &s.svc.webhooks().await?))
}

/// E2B's get.
#[utoipa::path(get, path = "/events/webhooks/{id}", tag = "webhooks", params(("id" = String, Path)),
    responses((status = 200, body = wire::Webhook), (status = 404, body = wire::ApiError)))]
pub(super) async fn e2b_get_webhook(State(s): State<AppState>, Param(id): Param) -> ApiResult {
    Ok(h::json(200, &s.svc.webhook(&id).await?))
}

/// E2B's update.
#[utoipa::path(patch, path = "/events/webhooks/{id}", tag = "webhooks", params(("id" = String, Path)), request_body = wire::WebhookPatch,
    responses((status = 200, body = wire::Webhook), (status = 400, body = wire::ApiError), (status = 404, body = wire::ApiError)))]
pub(super) async fn e2b_patch_webhook(State(s): State<AppState>, Param(id): Param, body: axum::body::Body) -> ApiResult {
    patch_hook(&s.svc, &id, body).await
}

/// E2B's delete (200, as E2B answers).
#[utoipa::path(delete, path = "/events/webhooks/{id}", tag = "webhooks", params(("id" = String, Path)),
    responses((status = 200), (status = 404, body = wire::ApiError)))]
pub(super) async fn e2b_delete_webhook(State(s): State<AppState>, Param(id): Param) -> ApiResult {
    s.svc.delete_webhook(&id).await?;
    Ok(h::empty(200))
}

/// `offset`, `limit`, `orderAsc` and `types` (repeatable or comma-separated).
fn listing(query: &str) -> Result<EventListing, ApiError> {
    let mut l = EventListing::default();
    for (k, v) in query_pairs(query) {
        match k.as_str() {
            "offset" if !v.is_empty() => l.offset = v.parse().map_err(|_| ApiError::BadRequest(format!("invalid offset {v:?}: a number from 0")))?,
            "limit" if !v.is_empty() => l.limit = Some(v.parse().map_err(|_| ApiError::BadRequest(format!("invalid limit {v:?}: a number from 1 to 100")))?),
            "orderAsc" => {
                l.ascending = match v.as_str() {
                    "true" | "1" => true,
                    "false" | "0" | "" => false,
                    o => return Err(ApiError::BadRequest(format!("invalid orderAsc {o:?}: use true or false"))),
                }
            }
            "types" | "type" => l.types.extend(v.split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_string)),
            _ => {}
        }
    }
    Ok(l)
}

/// E2B's events API: stored lifecycle events of every sandbox, newest
/// first, as `SandboxEvent`s (E2B's six types unless `types` names others).
#[utoipa::path(get, path = "/events/sandboxes", tag = "events",
    params(("offset" = Option<u32>, Query, description = "events to skip, default 0"), ("limit" = Option<u32>, Query, description = "1-100, default 10"),
        ("orderAsc" = Option<bool>, Query, description = "oldest first; default false"), ("types" = Option<String>, Query, description = "event types in either spelling; repeatable")),
    responses((status = 200, body = Vec<wire::SandboxEvent>), (status = 400, body = wire::ApiError)))]
pub(super) async fn e2b_events(State(s): State<AppState>, RawQuery(q): RawQuery) -> ApiResult {
    Ok(h::json(200, &s.svc.e2b_events(None, listing(q.as_deref().unwrap_or(""))?).await?))
}

/// One sandbox's stored events as `/events/sandboxes` lists them (still
/// there after it was killed; none for an id never seen).
#[utoipa::path(get, path = "/events/sandboxes/{id}", tag = "events",
    params(("id" = String, Path), ("offset" = Option<u32>, Query), ("limit" = Option<u32>, Query), ("orderAsc" = Option<bool>, Query), ("types" = Option<String>, Query)),
    responses((status = 200, body = Vec<wire::SandboxEvent>), (status = 400, body = wire::ApiError)))]
pub(super) async fn e2b_sandbox_events(State(s): State<AppState>, Param(id): Param, RawQuery(q): RawQuery) -> ApiResult {
    Ok(h::json(200, &s.svc.e2b_events(Some(id), listing(q.as_deref().unwrap_or(""))?).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listings_parse_e2b_s_query() {
        let l = listing("offset=5&limit=20&orderAsc=true&types=sandbox.lifecycle.created&types=killed,oom").expect("parse");
        assert_eq!((l.offset, l.limit, l.ascending), (5, Some(20), true));
        assert_eq!(l.types, ["sandbox.lifecycle.created", "killed", "oom"]);
        let d = listing("").expect("defaults");
        assert_eq!((d.offset, d.limit, d.ascending, d.types.len()), (0, None, false, 0));
        assert!(listing("offset=-1").is_err());
        assert!(listing("limit=x").is_err());
        assert!(listing("orderAsc=sideways").is_err());
    }
}
