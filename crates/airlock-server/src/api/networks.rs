//! Sandbox networks (`/networks`) and broadcast (`/sandboxes/broadcast`):
//! Airlock extensions, as ComputeSDK's shared networks and service
//! discovery describe them.

use airlock_proto::api::{Broadcast, JoinNetwork, NewNetwork};

use super::*;

type Pair = Path<(String, String)>;

/// Make an empty network (a join makes one too).
#[utoipa::path(post, path = "/networks", tag = "networks", request_body = wire::NewNetwork,
    responses((status = 201, body = wire::SandboxNetwork), (status = 400, body = wire::ApiError), (status = 409, description = "it exists", body = wire::ApiError)))]
pub(super) async fn create_network(State(s): State<AppState>, body: axum::body::Body) -> ApiResult {
    let b: NewNetwork = read_json(body, MAX_BODY).await?;
    Ok(h::json(201, &s.svc.create_network(&b.name).await?))
}

/// Every network and its members.
#[utoipa::path(get, path = "/networks", tag = "networks", responses((status = 200, body = Vec<wire::SandboxNetwork>)))]
pub(super) async fn list_networks(State(s): State<AppState>) -> ApiResult {
    Ok(h::json(200, &s.svc.networks().await?))
}

/// One network.
#[utoipa::path(get, path = "/networks/{name}", tag = "networks", params(("name" = String, Path)),
    responses((status = 200, body = wire::SandboxNetwork), (status = 404, body = wire::ApiError)))]
pub(super) async fn get_network(State(s): State<AppState>, Param(name): Param) -> ApiResult {
    Ok(h::json(200, &s.svc.network(&name).await?))
}

/// Remove an empty network.
#[utoipa::path(delete, path = "/networks/{name}", tag = "networks", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = wire::ApiError), (status = 409, description = "it has members", body = wire::ApiError)))]
pub(super) async fn delete_network(State(s): State<AppState>, Param(name): Param) -> ApiResult {
    s.svc.delete_network(&name).await?;
    Ok(h::empty(204))
}

/// A running sandbox joins (the network is made if new): the members reach
/// it on any port as `<name>` or `<name>.<network>`, and it them.
#[utoipa::path(post, path = "/networks/{name}/members", tag = "networks", params(("name" = String, Path)), request_body = wire::JoinNetwork,
    responses((status = 200, body = wire::SandboxNetwork), (status = 400, body = wire::ApiError), (status = 404, body = wire::ApiError), (status = 409, description = "the name is taken, or the sandbox has no network interface or is paused", body = wire::ApiError)))]
pub(super) async fn join_network(State(s): State<AppState>, Param(name): Param, body: axum::body::Body) -> ApiResult {
    let b: JoinNetwork = read_json(body, MAX_BODY).await?;
    Ok(h::json(200, &s.svc.join_network(&name, &b.sandbox_id, b.name.as_deref()).await?))
}

/// A sandbox leaves a network.
#[utoipa::path(delete, path = "/networks/{name}/members/{id}", tag = "networks", params(("name" = String, Path), ("id" = String, Path)),
    responses((status = 204), (status = 404, body = wire::ApiError)))]
pub(super) async fn leave_network(State(s): State<AppState>, p: Result<Pair, axum::extract::rejection::PathRejection>) -> ApiResult {
    let Path((name, id)) = p.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    s.svc.leave_network(&name, &id).await?;
    Ok(h::empty(204))
}

/// One command in every running sandbox of a network and/or with the given
/// metadata; each one's exit code and output.
#[utoipa::path(post, path = "/sandboxes/broadcast", tag = "networks", request_body = wire::Broadcast,
    responses((status = 200, body = wire::BroadcastResults), (status = 400, body = wire::ApiError), (status = 404, description = "unknown network", body = wire::ApiError)))]
pub(super) async fn broadcast(State(s): State<AppState>, body: axum::body::Body) -> ApiResult {
    let b: Broadcast = read_json(body, MAX_BODY).await?;
    Ok(h::json(200, &s.svc.broadcast(b).await?))
}
