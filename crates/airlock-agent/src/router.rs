//! Maps a request to a typed route, enforces the access token, and hands
//! it to the service that owns the route.

use std::sync::Arc;

use airlock_proto::connect::{Code, ConnectError};
use http::{Method, Request, StatusCode};
use hyper::body::Incoming;

use crate::http::{self as h, Resp};
use crate::rpc::RequestCtx;
use crate::{auth, files, fs, process, Agent};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Health,
    FilesGet,
    FilesPost,
    Process(process::Method),
    Fs(fs::Method),
    /// `CONNECT 127.0.0.1:<port>`: a raw tunnel to a TCP port inside the
    /// sandbox, used by the host proxy for port forwarding (WebSockets too).
    Tunnel(u16),
    /// `POST /init`: the server claims a pooled sandbox (never proxied).
    Init,
    /// `GET /airlock/log`: the execution log, for the server (never proxied).
    Log,
    /// `POST /airlock/env`: set and unset sandbox-wide variables (never proxied).
    Env,
}

fn route(method: &Method, uri: &http::Uri) -> Option<Route> {
    if method == Method::CONNECT {
        return uri.port_u16().filter(|p| *p != 0).map(Route::Tunnel);
    }
    match (method, uri.path()) {
        (&Method::GET, "/health") | (&Method::HEAD, "/health") => Some(Route::Health),
        (&Method::GET, "/files") => Some(Route::FilesGet),
        (&Method::POST, "/files") => Some(Route::FilesPost),
        (&Method::POST, airlock_proto::wire::AGENT_INIT_PATH) => Some(Route::Init),
        (&Method::GET, airlock_proto::wire::AGENT_LOG_PATH) => Some(Route::Log),
        (&Method::POST, airlock_proto::wire::AGENT_ENV_PATH) => Some(Route::Env),
        (&Method::POST, p) => {
            let rpc = airlock_proto::wire::Rpc::from_path(p)?;
            process::Method::from_rpc(rpc).map(Route::Process).or_else(|| fs::Method::from_rpc(rpc).map(Route::Fs))
        }
        _ => None,
    }
}

/// envd routes: the sandbox's access token in `X-Access-Token`.
fn token_ok(agent: &Agent, req: &Request<Incoming>) -> bool {
    auth::access_token_ok(agent.session().access_token.as_deref(), req.headers())
}

/// Code-interpreter routes: the access token, or the traffic token.
fn interpreter_token_ok(agent: &Agent, req: &Request<Incoming>) -> bool {
    let s = agent.session();
    auth::interpreter_token_ok(s.access_token.as_deref(), s.traffic_token.as_deref(), req.headers())
}

pub(crate) async fn handle(agent: Arc<Agent>, req: Request<Incoming>) -> Resp {
    if req.headers().get(airlock_proto::wire::AGENT_PORT_HEADER).and_then(|v| v.to_str().ok()) == Some("49999") {
        // Only `/health` is public, as on envd: everything else on the
        // interpreter runs code or reveals it.
        let health = matches!(*req.method(), Method::GET | Method::HEAD) && req.uri().path().trim_end_matches('/') == "/health";
        if !health && !interpreter_token_ok(&agent, &req) {
            h::drain(req).await;
            return h::json_err(StatusCode::UNAUTHORIZED, "invalid or missing access token");
        }
        return crate::interp::handle(&agent, req).await;
    }
    let Some(r) = route(req.method(), req.uri()) else {
        return h::json_err(StatusCode::NOT_FOUND, format!("no route for {} {}", req.method(), req.uri().path()));
    };
    match r {
        Route::Health => {
            let mut resp = hyper::Response::new(h::empty());
            *resp.status_mut() = StatusCode::NO_CONTENT;
            resp
        }
        // `/files` checks the token itself: a valid signature replaces it.
        Route::Tunnel(port) => tunnel(req, port).await,
        Route::FilesGet => files::download(&agent, req).await,
        Route::FilesPost => files::upload(&agent, req).await,
        Route::Init => {
            if !token_ok(&agent, &req) {
                h::drain(req).await;
                return h::json_err(StatusCode::UNAUTHORIZED, "invalid or missing access token");
            }
            init(&agent, req).await
        }
        Route::Log => {
            if !token_ok(&agent, &req) {
                h::drain(req).await;
                return h::json_err(StatusCode::UNAUTHORIZED, "invalid or missing access token");
            }
            read_log(&agent, req.uri().query().unwrap_or("")).await
        }
        Route::Env => {
            if !token_ok(&agent, &req) {
                h::drain(req).await;
                return h::json_err(StatusCode::UNAUTHORIZED, "invalid or missing access token");
            }
            update_env(&agent, req).await
        }
        Route::Process(m) => {
            if !token_ok(&agent, &req) {
                h::drain(req).await;
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
                h::drain(req).await;
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

/// The claim's body: the sandbox's whole environment from now on (it
/// replaces, unlike E2B's envd, which merges) and its access token (empty:
/// none).
#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct InitRequest {
    #[serde(default)]
    env_vars: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    access_token: String,
}

async fn init(agent: &Arc<Agent>, req: Request<Incoming>) -> Resp {
    let body = match h::read_limited(req.into_body(), 1 << 20).await {
        Ok(b) => b,
        Err(e) => return h::json_err(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let r: InitRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return h::json_err(StatusCode::BAD_REQUEST, format!("invalid init request: {e}")),
    };
    let token = (!r.access_token.is_empty()).then_some(r.access_token);
    agent.set_session(r.env_vars, token);
    let mut resp = hyper::Response::new(h::empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    resp
}

/// Sets and unsets variables in what every new command gets; answers with
/// the whole environment after the change.
async fn update_env(agent: &Arc<Agent>, req: Request<Incoming>) -> Resp {
    let body = match h::read_limited(req.into_body(), 1 << 20).await {
        Ok(b) => b,
        Err(e) => return h::json_err(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let r: airlock_proto::execlog::AgentEnvChange = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return h::json_err(StatusCode::BAD_REQUEST, format!("invalid environment change: {e}")),
    };
    if let Some(k) = r.set.keys().chain(&r.unset).find(|k| k.is_empty() || k.contains('=') || k.contains('\0')) {
        return h::json_err(StatusCode::BAD_REQUEST, format!("invalid environment variable name {k:?}"));
    }
    if let Some(v) = r.set.values().find(|v| v.contains('\0')) {
        return h::json_err(StatusCode::BAD_REQUEST, format!("invalid environment variable value {:?}", v.chars().take(40).collect::<String>()));
    }
    let env = agent.update_env(r.set, &r.unset);
    h::json_ok(StatusCode::OK, &airlock_proto::execlog::AgentEnv { env })
}

/// `?after=<seq>&wait=<ms>&boot=<ms>`: entries after `after` (all without
/// it), waiting up to `wait` for one when there are none yet; `boot` is the
/// start time of the agent `after` came from.
async fn read_log(agent: &Arc<Agent>, query: &str) -> Resp {
    let (mut after, mut wait, mut boot) = (None, 0u64, None);
    for (k, v) in airlock_proto::query::pairs(query) {
        let n = match v.parse::<u64>() {
            Ok(n) => n,
            Err(_) => return h::json_err(StatusCode::BAD_REQUEST, format!("invalid {k} {v:?}")),
        };
        match k.as_str() {
            "after" => after = Some(n),
            "wait" => wait = n,
            "boot" => boot = Some(n as i64),
            _ => {}
        }
    }
    let mut log = agent.log.read(after, std::time::Duration::from_millis(wait), boot).await;
    log.env_names = agent.session().env.keys().cloned().collect();
    h::json_ok(StatusCode::OK, &log)
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

/// Connects to `127.0.0.1:port` in the sandbox's network namespace and,
/// once the client has the 200, copies bytes both ways until either side
/// closes. A closed port answers 502 with "port is not open", which the
/// E2B SDKs map to `SandboxUnreachableException`.
async fn tunnel(req: Request<Incoming>, port: u16) -> Resp {
    let tcp = match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
        Ok(t) => t,
        Err(e) => {
            return h::json_err(StatusCode::BAD_GATEWAY, format!("The sandbox is running but port is not open: {port} ({e})"));
        }
    };
    let _ = tcp.set_nodelay(true);
    tokio::spawn(async move {
        let mut tcp = tcp;
        match hyper::upgrade::on(req).await {
            Ok(up) => {
                let mut up = hyper_util::rt::TokioIo::new(up);
                let _ = tokio::io::copy_bidirectional(&mut up, &mut tcp).await;
            }
            Err(e) => tracing::debug!(error = %e, port, "tunnel upgrade failed"),
        }
    });
    hyper::Response::new(h::empty())
}
