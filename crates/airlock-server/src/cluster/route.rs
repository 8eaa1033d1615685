//! Which node answers a request, in cluster mode. A request that names a
//! sandbox (sandbox traffic by its headers or host, or an API path with
//! its id) goes to the node that holds it; a create goes where `place`
//! says; a listing of sandboxes asks every node; everything else (and
//! every request another node forwarded) is served here.

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::{Cluster, NodeInfo, Owner};
use crate::http::{self as h, Resp};
use crate::service::Service;

pub enum Decision {
    Local,
    Forward(NodeInfo),
    Answer(Resp),
    /// A listing of sandboxes: this node's and every other's.
    List,
}

/// The largest create body read to place it (E2B's are a few KiB).
const MAX_CREATE_BODY: usize = 1 << 20;

pub fn is_create(method: &Method, path: &str) -> bool {
    method == Method::POST && matches!(path.trim_end_matches('/'), "/sandboxes" | "/v2/sandboxes")
}

fn is_list(method: &Method, path: &str) -> bool {
    method == Method::GET && matches!(path.trim_end_matches('/'), "/sandboxes" | "/v2/sandboxes")
}

/// Where a request from a client (not another node) goes; creates are
/// [`create`]'s.
pub async fn decide(svc: &Arc<Service>, c: &Arc<Cluster>, req: &http::Request<Incoming>) -> Decision {
    let path = req.uri().path();
    let id = match crate::proxy::target(req.headers(), svc.cfg.domain.as_deref()) {
        Some(Ok(t)) => Some(t.id),
        // A bad port header: the local proxy explains.
        Some(Err(_)) => None,
        None => super::sandbox_in_path(path).map(str::to_string),
    };
    if let Some(id) = id {
        return owner(svc, c, &id).await;
    }
    if path == "/files" && req.uri().query().is_some_and(|q| q.contains("signature=")) {
        return signed(svc, c, req.method(), req.uri().query().unwrap_or("")).await;
    }
    if is_list(req.method(), path) {
        return Decision::List;
    }
    Decision::Local
}

async fn owner(svc: &Arc<Service>, c: &Cluster, id: &str) -> Decision {
    // Its own sandboxes a node serves without asking etcd.
    let store = svc.store().clone();
    let key = id.to_string();
    if let Ok(Ok(Some(_))) = svc.blocking(move || store.sandbox(&key)).await {
        return Decision::Local;
    }
    match c.owner(id).await {
        Ok(Owner::Here) => Decision::Local,
        Ok(Owner::There(n)) => Decision::Forward(n),
        Ok(Owner::Lost { node }) => Decision::Answer(h::json(
            502,
            &airlock_proto::api::ApiError {
                code: 502,
                message: format!(
                    "sandbox {id} is lost: it was on node {node}, which has left the cluster (no heartbeat within {} s); it may come back if the node does",
                    c.cfg.lease_s
                ),
            },
        )),
        Ok(Owner::Ended { node, end_at }) => Decision::Answer(h::json(
            404,
            &airlock_proto::api::ApiError {
                code: 404,
                message: format!("sandbox {id} not found: its timeout ended at {} while its node {node} was out of the cluster", crate::service::rfc3339_ms(end_at)),
            },
        )),
        Err(e) => Decision::Answer(h::error(503, super::unavailable(&format!("finding the node of sandbox {id}"), &e).to_string())),
    }
}

/// A client's create: placed on the node with the most room, forwarded
/// there or made here. Made here, it is catalogued before the answer.
pub async fn create(svc: &Arc<Service>, c: &Arc<Cluster>, api: axum::Router, req: http::Request<Incoming>) -> Resp {
    let (parts, body) = req.into_parts();
    let body = match http_body_util::Limited::new(body, MAX_CREATE_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return h::error(413, format!("a create body is at most {MAX_CREATE_BODY} bytes: {e}")),
    };
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    let template = v
        .get("templateID")
        .and_then(|t| t.as_str())
        .filter(|t| !t.trim().is_empty())
        .map(|t| crate::service::create::template_name(t).to_string())
        .unwrap_or_else(|| "base".into());
    let cpus = v.get("cpuCount").and_then(serde_json::Value::as_f64).unwrap_or(svc.cfg.default_cpus);
    let memory = v.get("memoryMB").and_then(serde_json::Value::as_u64).unwrap_or(svc.cfg.default_memory_mb);
    match c.place(&template, cpus, memory).await {
        Ok(Some(n)) if n.name != c.name() => {
            tracing::debug!(node = %n.name, template = %template, "create placed on another node");
            return c.forward(&n, http::Request::from_parts(parts, h::full(body))).await;
        }
        Ok(Some(_)) => {}
        Ok(None) => {
            return h::json(
                503,
                &airlock_proto::api::ApiError { code: 503, message: "no node of the cluster takes new sandboxes: every node is drained or at its sandbox limit".into() },
            )
        }
        // etcd away: made here, where it is reachable, and catalogued by
        // the repair once etcd answers.
        Err(e) => tracing::warn!(error = %e, "placing a create without etcd: made on this node"),
    }
    let mut req = http::Request::from_parts(parts, axum::body::Body::from(body));
    // `/sandboxes/` is `/sandboxes`, as `dispatch_local` has it.
    if req.uri().path().len() > 1 && req.uri().path().ends_with('/') {
        let pq = req.uri().path_and_query().map(|p| p.as_str().replacen(req.uri().path(), req.uri().path().trim_end_matches('/'), 1));
        if let Some(uri) = pq.and_then(|p| p.parse().ok()) {
            *req.uri_mut() = uri;
        }
    }
    use tower::ServiceExt;
    let resp = match api.oneshot(req).await {
        Ok(resp) => resp.map(|b| b.map_err(|e| -> crate::http::BoxError { Box::new(e) }).boxed_unsync()),
        Err(never) => match never {},
    };
    catalogued(svc, c, resp).await
}

/// A create's answer, after its sandbox is in the catalog (so that the
/// client's next request, to any node, finds it).
pub async fn catalogued(svc: &Service, c: &Cluster, resp: Resp) -> Resp {
    if !resp.status().is_success() {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    // This node's own answer (a sandbox's details): small.
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return h::error(500, format!("reading the create's answer: {e}")),
    };
    if let Some(id) = serde_json::from_slice::<serde_json::Value>(&body).ok().and_then(|v| v.get("sandboxID").and_then(|i| i.as_str()).map(str::to_string)) {
        if let Err(e) = c.register(svc, &id).await {
            // Still reachable here; other nodes find it after the repair.
            tracing::warn!(sandbox_id = %id, error = %e, "cataloguing a new sandbox failed");
        }
    }
    Resp::from_parts(parts, h::full(body))
}

/// Every other node's part of a listing (`path_and_query` as the client
/// asked), and the names of nodes that did not answer.
pub async fn peer_lists(c: Arc<Cluster>, path_and_query: String, headers: http::HeaderMap) -> (Vec<serde_json::Value>, Vec<String>) {
    let peers = match c.peers().await {
        Ok(p) => p,
        Err(e) => return (Vec::new(), vec![format!("etcd ({e})")]),
    };
    let calls = peers.into_iter().map(|n| {
        let (c, pq, headers) = (c.clone(), path_and_query.clone(), headers.clone());
        async move {
            let r = c.fetch(&n, Method::GET, &pq, &headers).await;
            (n.name, r)
        }
    });
    let mut items = Vec::new();
    let mut missing = Vec::new();
    for (name, r) in futures_util::future::join_all(calls).await {
        match r {
            Ok((s, _, b)) if s == StatusCode::OK => match serde_json::from_slice::<Vec<serde_json::Value>>(&b) {
                Ok(v) => items.extend(v),
                Err(e) => missing.push(format!("{name} ({e})")),
            },
            Ok((s, _, b)) => missing.push(format!("{name} ({s}: {})", String::from_utf8_lossy(&b[..b.len().min(200)]))),
            Err(e) => missing.push(format!("{name} ({e})")),
        }
    }
    (items, missing)
}

/// This node's listing with the others' added. A node that does not
/// answer is named in `X-Airlock-Partial` rather than failing the list.
pub async fn merge_lists(local: Resp, peers: (Vec<serde_json::Value>, Vec<String>), limit: Option<usize>) -> Resp {
    if local.status() != StatusCode::OK {
        return local;
    }
    let (parts, body) = local.into_parts();
    // This node's own answer: no limit needed.
    let body: Bytes = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return h::error(500, format!("reading the listing: {e}")),
    };
    let Ok(mut items) = serde_json::from_slice::<Vec<serde_json::Value>>(&body) else {
        return Resp::from_parts(parts, h::full(body));
    };
    let (more, missing) = peers;
    items.extend(more);
    // Newest first across nodes, as each node lists its own.
    items.sort_by(|a, b| b.get("startedAt").and_then(|v| v.as_str()).unwrap_or("").cmp(a.get("startedAt").and_then(|v| v.as_str()).unwrap_or("")));
    if let Some(l) = limit {
        items.truncate(l);
    }
    let mut r = h::json(200, &items);
    for (k, v) in parts.headers.iter().filter(|(k, _)| *k != http::header::CONTENT_LENGTH && *k != http::header::CONTENT_TYPE) {
        r.headers_mut().insert(k.clone(), v.clone());
    }
    // Each node pages its own list: a token would be one node's.
    r.headers_mut().remove("x-next-token");
    if !missing.is_empty() {
        tracing::warn!(missing = %missing.join(", "), "a listing without every node");
        if let Ok(v) = http::HeaderValue::from_str(&missing.join(", ").chars().filter(|c| c.is_ascii() && !c.is_ascii_control()).take(1000).collect::<String>()) {
            r.headers_mut().insert("x-airlock-partial", v);
        }
    }
    r
}

/// The internal route a node asks its peers through: which of them holds
/// the sandbox a signed `/files` URL was made for.
pub const SIGNATURE_PATH: &str = "/_cluster/signature";

/// A signed `/files` URL names no sandbox (only its token makes the
/// signature): this node's own first, then every other node is asked.
async fn signed(svc: &Arc<Service>, c: &Arc<Cluster>, method: &Method, query: &str) -> Decision {
    let q = crate::api::query_pairs(query);
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let (Some(path), Some(sig)) = (get("path"), get("signature")) else { return Decision::Local };
    let op = if method == Method::GET { "read" } else { "write" };
    let (user, exp) = (get("username").unwrap_or_default(), get("signature_expiration").and_then(|e| e.parse::<i64>().ok()));
    if svc.find_by_signature(&path, op, &user, &sig, exp).await.is_some() {
        return Decision::Local;
    }
    let Ok(peers) = c.peers().await else { return Decision::Local };
    let ask = serde_json::json!({ "path": path, "operation": op, "username": user, "signature": sig, "expiration": exp }).to_string();
    let calls = peers.into_iter().map(|n| {
        let (c, ask) = (c.clone(), ask.clone());
        async move {
            let found = c.post_json(&n, SIGNATURE_PATH, ask).await.ok().filter(|(s, b)| *s == StatusCode::OK && b.get("found") == Some(&serde_json::Value::Bool(true))).is_some();
            found.then_some(n)
        }
    });
    match futures_util::future::join_all(calls).await.into_iter().flatten().next() {
        Some(n) => Decision::Forward(n),
        // Nobody: the local answer is the 401.
        None => Decision::Local,
    }
}

/// Answers a peer's [`SIGNATURE_PATH`] question (a trusted request).
pub async fn answer_signature(svc: &Arc<Service>, req: http::Request<Incoming>) -> Resp {
    let body = match http_body_util::Limited::new(req.into_body(), 64 << 10).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return h::error(400, format!("reading the question: {e}")),
    };
    let v: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return h::error(400, format!("the question is not JSON: {e}")),
    };
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
    let found = svc.find_by_signature(&s("path"), &s("operation"), &s("username"), &s("signature"), v.get("expiration").and_then(|e| e.as_i64())).await.is_some();
    h::json(200, &serde_json::json!({ "found": found }))
}
