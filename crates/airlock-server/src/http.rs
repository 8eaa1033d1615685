//! HTTP plumbing for the server: one body type for every response, JSON
//! helpers and the control-API error shape.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde::Serialize;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;
pub type Resp = Response<Body>;

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|e| match e {}).boxed_unsync()
}

pub fn empty(status: u16) -> Resp {
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    r
}

pub fn json<T: Serialize>(status: u16, v: &T) -> Resp {
    let body = serde_json::to_vec(v).unwrap_or_else(|_| b"{}".to_vec());
    let mut r = Response::new(full(body));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// The control API's error body `{"code", "message"}`.
pub fn error(status: u16, message: impl Into<String>) -> Resp {
    json(status, &airlock_proto::api::ApiError { code: status, message: message.into() })
}

/// A 502 in the shape the SDKs recognise as "sandbox not running".
pub fn sandbox_not_found(id: &str, message: Option<String>) -> Resp {
    json(502, &airlock_proto::api::SandboxNotFound { sandbox_id: id.to_string(), message: message.unwrap_or_else(|| "The sandbox was not found".into()), code: 502 })
}

/// A refused connection's answer: the 503 error body, and `Connection:
/// close` because the server will not read another request on it.
pub fn refusal(message: impl Into<String>) -> Resp {
    let mut r = error(503, message);
    r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// `refusal` as raw bytes, written to a socket that is not read at all
/// (a connection past the limits and the reserve).
pub fn refusal_bytes(message: &str) -> Bytes {
    let body = serde_json::to_vec(&airlock_proto::api::ApiError { code: 503, message: message.to_string() }).unwrap_or_else(|_| b"{}".to_vec());
    let mut out =
        format!("HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\nretry-after: 1\r\ncontent-length: {}\r\n\r\n", body.len()).into_bytes();
    out.extend_from_slice(&body);
    out.into()
}
