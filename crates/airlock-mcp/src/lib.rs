//! Airlock's MCP server: sandbox tools for AI agents, named and shaped as
//! Flow Nexus documents them (`sandbox_create`, `sandbox_execute`, ...),
//! over MCP's stdio transport (`airlock mcp`) and its Streamable HTTP
//! transport (`/mcp` on `airlock serve`).
//!
//! The tools are written once, on the Rust SDK (`airlock-sdk`), and talk
//! HTTP to a server like any other client. For stdio that is the server
//! named by URL and key; for `/mcp` inside `airlock serve` it is the server
//! itself, reached on its own listen address with the caller's API key
//! (see [`http_service`] for why). This crate never touches the store, the
//! runtime or an agent directly.

mod error;
mod tools;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use airlock_sdk::{Client, Config};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::ServiceExt;

pub use error::{Code, ToolError};
pub use tools::AirlockTools;

/// Why the stdio server stopped.
#[derive(Debug, thiserror::Error)]
pub enum McpError {
    #[error("starting the MCP session")]
    Init(#[source] Box<rmcp::service::ServerInitializeError>),
    #[error("running the MCP session")]
    Run(#[source] tokio::task::JoinError),
    #[error("configuring the client")]
    Config(#[source] airlock_sdk::Error),
}

/// How a tool call finds the Airlock server to talk to.
pub(crate) enum Clients {
    /// One client for every call (stdio: the URL and key `airlock mcp` got).
    Fixed(Client),
    /// Each HTTP request's own API key against `url` (`/mcp`): clients are
    /// cached per key, so a session reuses its pooled connections.
    PerKey { url: String, cache: Mutex<HashMap<String, Client>> },
}

/// The largest MCP message over HTTP, as stdio's line limit (rmcp's) is:
/// an upload's base64 content travels in one.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// How long a call may wait for the server's answer: creating a sandbox
/// with packages or configuring one runs installs before the answer, for
/// minutes (an SDK's default of 60 s would report a timeout while the work
/// goes on). Executions stream and are bounded by their own timeouts.
pub const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// Keys whose clients are kept; past it the cache starts over, so a stream
/// of wrong keys cannot grow it.
const MAX_CACHED_KEYS: usize = 64;

impl Clients {
    pub(crate) fn client(&self, headers: Option<&http::HeaderMap>) -> Result<Client, ToolError> {
        match self {
            Clients::Fixed(c) => Ok(c.clone()),
            Clients::PerKey { url, cache } => {
                let key = headers.and_then(api_key).ok_or_else(|| ToolError::new(Code::PermissionDenied, "no API key: send X-API-KEY or Authorization: Bearer"))?;
                let mut m = cache.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(c) = m.get(&key) {
                    return Ok(c.clone());
                }
                let c = Client::new(Config::new(url.clone(), key.clone()).with_request_timeout(CALL_TIMEOUT)).map_err(|e| ToolError::new(Code::ExecutionError, e.to_line()))?;
                if m.len() >= MAX_CACHED_KEYS {
                    m.clear();
                }
                m.insert(key, c.clone());
                Ok(c)
            }
        }
    }
}

/// The API key of an HTTP request: `X-API-KEY`, else `Authorization: Bearer`.
pub fn api_key(h: &http::HeaderMap) -> Option<String> {
    if let Some(k) = h.get(airlock_proto::wire::API_KEY_HEADER).and_then(|v| v.to_str().ok()).map(str::trim).filter(|k| !k.is_empty()) {
        return Some(k.to_string());
    }
    let auth = h.get(http::header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = auth.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_string())
}

/// Serves the tools on stdin/stdout until the client closes them, every
/// call to the server `config` names (its request timeout raised to
/// [`CALL_TIMEOUT`]).
pub async fn serve_stdio(config: Config) -> Result<(), McpError> {
    let client = Client::new(config.with_request_timeout(CALL_TIMEOUT)).map_err(McpError::Config)?;
    let tools = AirlockTools::new(Arc::new(Clients::Fixed(client)));
    let running = tools.serve(rmcp::transport::stdio()).await.map_err(|e| McpError::Init(Box::new(e)))?;
    running.waiting().await.map_err(McpError::Run)?;
    Ok(())
}

/// The Streamable HTTP endpoint, as a tower service for `/mcp`. Each call
/// goes to `api_url` (the server's own listen address) with the API key
/// of the HTTP request that carried it.
///
/// Why the server calls itself over HTTP instead of its service layer:
/// executions, file transfers and the code interpreter are not service
/// calls at all (they are envd traffic the proxy streams to the agent), so
/// a service-layer version would need a second envd client and a second
/// copy of every tool. Through the SDK every check and limit of the REST
/// API (authentication, the rate limit, sandbox and connection caps,
/// request-body limits, telemetry) applies to MCP calls as it does to any
/// client, and the tools are the same code over stdio and HTTP. The price
/// is a loopback hop per call, small next to what a tool call does.
pub fn http_service(api_url: impl Into<String>) -> StreamableHttpService<AirlockTools, LocalSessionManager> {
    let clients = Arc::new(Clients::PerKey { url: api_url.into(), cache: Mutex::new(HashMap::new()) });
    let tools = AirlockTools::new(clients);
    // The Host check guards servers without authentication against DNS
    // rebinding; every request here needs the API key (checked by the
    // server before it gets here), and the server answers any host name.
    let config = StreamableHttpServerConfig::default().disable_allowed_hosts().with_max_request_body_bytes(MAX_MESSAGE_BYTES);
    StreamableHttpService::new(move || Ok(tools.clone()), Arc::new(LocalSessionManager::default()), config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_comes_from_either_header() {
        let mut h = http::HeaderMap::new();
        assert_eq!(api_key(&h), None);
        h.insert("authorization", http::HeaderValue::from_static("Bearer  k1 "));
        assert_eq!(api_key(&h).as_deref(), Some("k1"));
        h.insert("x-api-key", http::HeaderValue::from_static("k2"));
        assert_eq!(api_key(&h).as_deref(), Some("k2"), "X-API-KEY first");
        let mut h = http::HeaderMap::new();
        h.insert("authorization", http::HeaderValue::from_static("Basic abc"));
        assert_eq!(api_key(&h), None);
    }

    #[test]
    fn per_key_clients_are_cached_and_bounded() {
        let c = Clients::PerKey { url: "http://127.0.0.1:1".into(), cache: Mutex::new(HashMap::new()) };
        let mut h = http::HeaderMap::new();
        assert_eq!(c.client(Some(&h)).err().map(|e| e.code), Some(Code::PermissionDenied));
        for i in 0..(MAX_CACHED_KEYS + 3) {
            h.insert("x-api-key", http::HeaderValue::from_str(&format!("key{i}")).expect("header"));
            assert!(c.client(Some(&h)).is_ok());
        }
        let Clients::PerKey { cache, .. } = &c else { unreachable!() };
        assert!(cache.lock().expect("lock").len() <= MAX_CACHED_KEYS);
    }
}
