//! envd's plain-HTTP `/files`: streamed download and upload (multipart and
//! octet-stream, gzip), signed URLs. (Being implemented.)

use std::sync::Arc;

use http::{Request, StatusCode};
use hyper::body::Incoming;

use crate::http::{self as h, Resp};
use crate::Agent;

pub async fn download(_agent: &Arc<Agent>, _req: Request<Incoming>) -> Resp {
    h::json_err(StatusCode::NOT_IMPLEMENTED, "not yet implemented")
}

pub async fn upload(_agent: &Arc<Agent>, _req: Request<Incoming>) -> Resp {
    h::json_err(StatusCode::NOT_IMPLEMENTED, "not yet implemented")
}
