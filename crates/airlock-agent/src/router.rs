//! Maps a request to a typed route, enforces the access token, and hands
//! it to the service that owns the route.

use std::sync::Arc;

use airlock_proto::connect::{Code, ConnectError};
use http::{Method, Request, StatusCode};
use hyper::body::Incoming;

use crate::http::{self as h, Resp};
use crate::rpc::RequestCtx;
use crate::{files, fs, process, Agent};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Health,
    FilesGet,
    FilesPost,
    Process(process::Method),
    Fs(fs::Method),
}

fn route(method: &Method, path: &str) -> Option<Route> {
    match (method, path) {
        (&Method::GET, "/health") | (&Method::HEAD, "/health") => Some(Route::Health),
        (&Method::GET, "/files") => Some(Route::FilesGet),
        (&Method::POST, "/files") => Some(Route::FilesPost),
        (&Method::POST, p) => {
            if let Some(m) = p.strip_prefix("/process.Process/") {
                process::Method::parse(m).map(Route::Process)
            } else if let Some(m) = p.strip_prefix("/filesystem.Filesystem/") {
                fs::Method::parse(m).map(Route::Fs)
            } else {
                None
            }
        }
        _ => None,
    }
}

fn token_ok(agent: &Agent, req: &Request<Incoming>) -> bool {
    match &agent.config.access_token {
        None => true,
        Some(want) => req
            .headers()
            .get("x-access-token")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|got| constant_time_eq(got.as_bytes(), want.as_bytes())),
    }
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub async fn handle(agent: Arc<Agent>, req: Request<Incoming>) -> Resp {
    let Some(r) = route(req.method(), req.uri().path()) else {
        return h::json_err(StatusCode::NOT_FOUND, format!("no route for {} {}", req.method(), req.uri().path()));
    };
    match r {
        Route::Health => {
            let mut resp = hyper::Response::new(h::empty());
            *resp.status_mut() = StatusCode::NO_CONTENT;
            resp
        }
        // `/files` checks the token itself: a valid signature replaces it.
        Route::FilesGet => files::download(&agent, req).await,
        Route::FilesPost => files::upload(&agent, req).await,
        Route::Process(m) => {
            if !token_ok(&agent, &req) {
                return unauthenticated(m.is_stream());
            }
            match RequestCtx::from_headers(&agent, req.headers()) {
                Ok(ctx) => process::handle(&agent, m, req, ctx).await,
                Err(e) if m.is_stream() => h::stream_err(&e),
                Err(e) => h::unary_err(&e),
            }
        }
        Route::Fs(m) => {
            if !token_ok(&agent, &req) {
                return unauthenticated(m.is_stream());
            }
            match RequestCtx::from_headers(&agent, req.headers()) {
                Ok(ctx) => fs::handle(&agent, m, req, ctx).await,
                Err(e) if m.is_stream() => h::stream_err(&e),
                Err(e) => h::unary_err(&e),
            }
        }
    }
}

fn unauthenticated(stream: bool) -> Resp {
    let e = ConnectError::new(Code::Unauthenticated, "invalid or missing access token");
    if stream {
        // Streams still answer 401 so clients fail fast without parsing a body.
        let mut r = h::unary_err(&e);
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        r
    } else {
        h::unary_err(&e)
    }
}
