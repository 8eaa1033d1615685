//! Node-to-node forwarding: a request for a sandbox on another node goes
//! there whole (control calls, envd streams, PTYs, WebSocket upgrades and
//! port tunnels alike), with the cluster secret, and the answer streams
//! back. The receiving node serves it as its own: its proxy or API sees
//! the same headers and path the client sent.

use std::time::Duration;

use http::{header, HeaderValue, Request, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;

use super::{Cluster, NodeInfo, FORWARDED_BY, SECRET_HEADER};
use crate::http::{self as h, Resp};

/// How long connecting to another node may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

const HOP_BY_HOP: &[&str] = &["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "proxy-authorization", "proxy-authenticate", "upgrade"];

/// `host:port` of a node's advertised `http://host:port` URL.
pub fn authority(url: &str) -> Option<&str> {
    let a = url.strip_prefix("http://")?.trim_end_matches('/');
    (!a.is_empty() && !a.contains('/')).then_some(a)
}

async fn connect(node: &NodeInfo) -> Result<hyper::client::conn::http1::SendRequest<h::Body>, String> {
    let addr = authority(&node.url).ok_or_else(|| format!("node {} advertises {:?}, not http://host:port", node.name, node.url))?;
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| format!("node {} ({addr}) did not accept a connection within {CONNECT_TIMEOUT:?}", node.name))?
        .map_err(|e| format!("node {} ({addr}): {e}", node.name))?;
    let _ = stream.set_nodelay(true);
    let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| format!("node {}: {e}", node.name))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "node-to-node connection ended");
        }
    });
    Ok(tx)
}

impl Cluster {
    /// Sends `req` to `node` and streams its answer back.
    pub async fn forward(&self, node: &NodeInfo, mut req: Request<h::Body>) -> Resp {
        let mut sender = match connect(node).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(node = %node.name, error = %e, "forwarding failed");
                return h::error(502, format!("the node holding this sandbox did not answer: {e}"));
            }
        };
        let wants_upgrade = req.headers().contains_key(header::UPGRADE);
        let client_upgrade = wants_upgrade.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        let upgrade = parts.headers.get(header::UPGRADE).cloned();
        let connection = parts.headers.get(header::CONNECTION).cloned();
        for n in HOP_BY_HOP {
            parts.headers.remove(*n);
        }
        if let (true, Some(u), Some(c)) = (wants_upgrade, upgrade, connection) {
            parts.headers.insert(header::UPGRADE, u);
            parts.headers.insert(header::CONNECTION, c);
        }
        if let Ok(v) = HeaderValue::from_str(&self.cfg.secret) {
            parts.headers.insert(SECRET_HEADER, v);
        }
        if let Ok(v) = HeaderValue::from_str(&self.cfg.node) {
            parts.headers.insert(FORWARDED_BY, v);
        }
        // HTTP/2's authority is the Host the next node routes on.
        if !parts.headers.contains_key(header::HOST) {
            if let Some(v) = parts.uri.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()) {
                parts.headers.insert(header::HOST, v);
            }
        }
        let pq = parts.uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
        parts.uri = match pq.parse() {
            Ok(u) => u,
            Err(_) => return h::error(400, "invalid request path"),
        };
        parts.version = http::Version::HTTP_11;
        let out = Request::from_parts(parts, body);
        let mut resp = match sender.send_request(out).await {
            Ok(r) => r,
            Err(e) => return h::error(502, format!("node {} failed mid-request: {e}", node.name)),
        };
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(client_upgrade) = client_upgrade {
                let node_upgrade = hyper::upgrade::on(&mut resp);
                tokio::spawn(async move {
                    if let (Ok(a), Ok(b)) = (client_upgrade.await, node_upgrade.await) {
                        let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(a), &mut TokioIo::new(b)).await;
                    }
                });
            }
        }
        let (mut parts, body) = resp.into_parts();
        if parts.status != StatusCode::SWITCHING_PROTOCOLS {
            for n in HOP_BY_HOP {
                parts.headers.remove(*n);
            }
        }
        Resp::from_parts(parts, body.map_err(|e| -> crate::http::BoxError { Box::new(e) }).boxed_unsync())
    }

    /// A JSON POST to another node as this node: its status and JSON answer.
    pub async fn post_json(&self, node: &NodeInfo, path: &str, body: String) -> Result<(StatusCode, serde_json::Value), String> {
        let mut sender = connect(node).await?;
        let req = Request::post(path)
            .header(header::HOST, authority(&node.url).unwrap_or("node"))
            .header(header::CONTENT_TYPE, "application/json")
            .header(SECRET_HEADER, self.cfg.secret.as_str())
            .header(FORWARDED_BY, self.cfg.node.as_str())
            .body(h::full(bytes::Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
            .await
            .map_err(|_| format!("node {} did not answer within 10 s", node.name))?
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = http_body_util::Limited::new(resp.into_body(), 1 << 20).collect().await.map_err(|e| format!("node {}: {e}", node.name))?.to_bytes();
        Ok((status, serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null)))
    }

    /// One whole request to another node as this node (a listing's part):
    /// its status, headers and body.
    pub async fn fetch(
        &self,
        node: &NodeInfo,
        method: http::Method,
        path_and_query: &str,
        headers: &http::HeaderMap,
    ) -> Result<(StatusCode, http::HeaderMap, bytes::Bytes), String> {
        let mut sender = connect(node).await?;
        let mut b = Request::builder().method(method).uri(path_and_query);
        for (k, v) in headers {
            if !HOP_BY_HOP.contains(&k.as_str()) && k != header::CONTENT_LENGTH {
                b = b.header(k, v);
            }
        }
        let req = b
            .header(header::HOST, authority(&node.url).unwrap_or("node"))
            .header(SECRET_HEADER, self.cfg.secret.as_str())
            .header(FORWARDED_BY, self.cfg.node.as_str())
            .body(h::full(bytes::Bytes::new()))
            .map_err(|e| e.to_string())?;
        let resp = tokio::time::timeout(Duration::from_secs(30), sender.send_request(req))
            .await
            .map_err(|_| format!("node {} did not answer within 30 s", node.name))?
            .map_err(|e| e.to_string())?;
        let (parts, body) = resp.into_parts();
        let body = http_body_util::Limited::new(body, 64 << 20).collect().await.map_err(|e| format!("node {}: {e}", node.name))?.to_bytes();
        Ok((parts.status, parts.headers, body))
    }
}
