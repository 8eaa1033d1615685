//! `process.Process` (being implemented).
use std::sync::Arc;
use airlock_proto::connect::ConnectError;
use http::Request;
use hyper::body::Incoming;
use crate::http::{self as h, Resp};
use crate::rpc::RequestCtx;
use crate::Agent;

#[derive(Default)]
pub struct Table {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method { Start }
impl Method {
    pub fn parse(s: &str) -> Option<Self> { (s == "Start").then_some(Self::Start) }
    pub fn is_stream(self) -> bool { true }
}
pub async fn handle(_agent: &Arc<Agent>, _m: Method, _req: Request<Incoming>, _ctx: RequestCtx) -> Resp {
    h::unary_err(&ConnectError::new(airlock_proto::connect::Code::Unimplemented, "not yet implemented"))
}
