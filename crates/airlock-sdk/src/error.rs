//! The one error type of the SDK, with variants a caller can match on, and
//! the mapping from what the wire says (control-API statuses, Connect codes,
//! envd's plain-HTTP errors) to those variants.

use airlock_proto::connect::{Code, ConnectError};

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The sandbox, file, process or template does not exist (or the
    /// sandbox is no longer running).
    #[error("not found: {0}")]
    NotFound(String),
    /// The call, or the command, ran out of time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The API key or the sandbox's access token was refused, or missing.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// The server refused the call for now (rate limit or capacity).
    #[error("rate limited: {message}")]
    RateLimited {
        message: String,
        /// How long the server asked to wait (its `Retry-After`).
        retry_after: Option<std::time::Duration>,
    },
    /// A command ran and exited with a non-zero code.
    #[error("command exited with code {exit_code}")]
    CommandExit { exit_code: i32, stdout: String, stderr: String },
    /// Any other error reported by the sandbox's agent, with its Connect
    /// code (`invalid_argument`, `already_exists`, ...).
    #[error("sandbox error")]
    Sandbox(#[source] ConnectError),
    /// Any other HTTP error status, with the server's message.
    #[error("http {status}: {message}")]
    Http { status: u16, message: String },
    /// The server could not be reached, or the connection broke.
    #[error("connection to {url} failed")]
    Connection {
        url: String,
        #[source]
        source: BoxError,
    },
    /// The server answered something this SDK cannot understand.
    #[error("unexpected response: {0}")]
    Protocol(String),
    /// The configuration cannot work (no API key, unsupported URL, ...).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Reading or writing a local file or stream failed.
    #[error("local i/o")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// The HTTP status this error came with, where there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Http { status, .. } => Some(*status),
            Error::Sandbox(c) => Some(c.code.http_status()),
            Error::NotFound(_) => Some(404),
            Error::Auth(_) => Some(401),
            Error::RateLimited { .. } => Some(429),
            _ => None,
        }
    }

    /// A 429's wait, from the response's `Retry-After` (seconds).
    pub(crate) fn with_retry_after(mut self, headers: &http::HeaderMap) -> Self {
        if let Error::RateLimited { retry_after, .. } = &mut self {
            *retry_after = headers.get(http::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok()).map(std::time::Duration::from_secs);
        }
        self
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound(_))
    }

    /// The Connect code of an agent error, if this is one.
    pub fn connect_code(&self) -> Option<Code> {
        match self {
            Error::Sandbox(c) => Some(c.code),
            Error::NotFound(_) => Some(Code::NotFound),
            _ => None,
        }
    }

    /// The error and its causes on one line, for command-line tools.
    pub fn to_line(&self) -> String {
        let mut s = self.to_string();
        let mut cur = std::error::Error::source(self);
        while let Some(c) = cur {
            s.push_str(": ");
            s.push_str(&c.to_string());
            cur = c.source();
        }
        s
    }

    pub(crate) fn protocol(m: impl Into<String>) -> Self {
        Error::Protocol(m.into())
    }
}

/// A Connect error from the agent as the variant a caller matches on.
pub(crate) fn from_connect(e: ConnectError) -> Error {
    match e.code {
        Code::NotFound => Error::NotFound(e.message),
        Code::Unauthenticated => Error::Auth(e.message),
        Code::ResourceExhausted => Error::RateLimited { message: e.message, retry_after: None },
        Code::DeadlineExceeded | Code::Canceled => Error::Timeout(e.message),
        _ => Error::Sandbox(e),
    }
}

/// The message of an error body: `{"message": ...}` (control API, envd
/// `/files`, Connect) or the raw text.
pub(crate) fn body_message(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        if let Some(m) = v.get("message").and_then(|m| m.as_str()) {
            return m.to_string();
        }
    }
    let t = String::from_utf8_lossy(body).trim().to_string();
    if t.is_empty() {
        "no details given".to_string()
    } else {
        t
    }
}

/// A failed control-API call.
pub(crate) fn from_api_status(status: u16, body: &[u8]) -> Error {
    let message = body_message(body);
    match status {
        401 | 403 => Error::Auth(message),
        404 => Error::NotFound(message),
        429 => Error::RateLimited { message, retry_after: None },
        408 | 504 => Error::Timeout(message),
        _ => Error::Http { status, message },
    }
}

/// A failed call to the agent: a Connect error body, the proxy's "sandbox
/// was not found" 502, or a plain HTTP error from `/files`.
pub(crate) fn from_sandbox_status(sandbox_id: &str, status: u16, body: &[u8]) -> Error {
    if let Ok(e) = serde_json::from_slice::<ConnectError>(body) {
        return from_connect(e);
    }
    let message = body_message(body);
    if status == 502 && message.contains("was not found") {
        return Error::NotFound(format!("sandbox {sandbox_id} is not running: {message}"));
    }
    match status {
        401 | 403 => Error::Auth(message),
        404 => Error::NotFound(message),
        429 => Error::RateLimited { message, retry_after: None },
        408 | 504 => Error::Timeout(message),
        _ => Error::Http { status, message },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_errors_become_matchable_variants() {
        let e = from_sandbox_status("s", 404, br#"{"code":"not_found","message":"path '/x' does not exist"}"#);
        assert!(matches!(e, Error::NotFound(ref m) if m.contains("/x")));
        let e = from_sandbox_status("s", 409, br#"{"code":"already_exists","message":"directory already exists"}"#);
        assert!(matches!(e, Error::Sandbox(ConnectError { code: Code::AlreadyExists, .. })));
        assert_eq!(e.status(), Some(409));
        assert!(matches!(from_sandbox_status("s", 401, br#"{"code":401,"message":"invalid signature"}"#), Error::Auth(_)));
    }

    #[test]
    fn proxy_502_means_sandbox_gone() {
        let e = from_sandbox_status("abc", 502, br#"{"sandboxId":"abc","message":"The sandbox was not found","code":502}"#);
        assert!(e.is_not_found(), "{e:?}");
        assert!(matches!(from_sandbox_status("abc", 502, b"bad gateway"), Error::Http { status: 502, .. }));
    }

    #[test]
    fn api_statuses_map_to_variants() {
        assert!(matches!(from_api_status(401, br#"{"code":401,"message":"Invalid API key"}"#), Error::Auth(ref m) if m == "Invalid API key"));
        assert!(matches!(from_api_status(429, b"{}"), Error::RateLimited { .. }));
        assert!(matches!(from_api_status(400, b"oops"), Error::Http { status: 400, ref message } if message == "oops"));
        let e = Error::Connection { url: "http://x".into(), source: "refused".into() };
        assert_eq!(e.to_line(), "connection to http://x failed: refused");
    }
}
