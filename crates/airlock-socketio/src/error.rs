//! Errors as the Socket.IO client sees them: an acknowledgement of
//! `{"ok": false, "error": {"code", "message", "status"?, "retryAfter"?}}`,
//! which the TypeScript SDK turns into its typed errors.

use serde::Serialize;
use serde_json::{json, Value};

/// A failed operation.
#[derive(Debug, Clone, PartialEq, Serialize, thiserror::Error)]
#[error("{code}: {message}")]
#[serde(rename_all = "camelCase")]
pub struct GwError {
    /// `INVALID_ARGUMENT`, `UNAUTHORIZED`, `NOT_FOUND`, `CONFLICT`,
    /// `TOO_LARGE`, `RATE_LIMITED`, `TIMEOUT`, `UNAVAILABLE`, `SANDBOX_ERROR`
    /// or `INTERNAL`.
    pub code: &'static str,
    pub message: String,
    /// The HTTP status of the server's refusal, where there was one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Milliseconds to wait before trying again (from the server's
    /// `Retry-After`), on `RATE_LIMITED`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
}

impl GwError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), status: None, retry_after: None }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new("INVALID_ARGUMENT", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new("NOT_FOUND", message)
    }
}

impl From<airlock_sdk::Error> for GwError {
    fn from(e: airlock_sdk::Error) -> Self {
        use airlock_sdk::Error as E;
        let message = e.to_line();
        let status = e.status();
        let (code, retry_after) = match &e {
            E::NotFound(_) => ("NOT_FOUND", None),
            E::Timeout(_) => ("TIMEOUT", None),
            E::Auth(_) => ("UNAUTHORIZED", None),
            // Without a Retry-After the server's own rule applies: its
            // per-key budget refills every second.
            E::RateLimited { retry_after, .. } => ("RATE_LIMITED", Some(retry_after.map_or(1000, |d| d.as_millis() as u64))),
            E::Http { status, .. } => (
                match status {
                    400 | 422 => "INVALID_ARGUMENT",
                    401 | 403 => "UNAUTHORIZED",
                    404 => "NOT_FOUND",
                    409 => "CONFLICT",
                    413 => "TOO_LARGE",
                    408 | 504 => "TIMEOUT",
                    502 | 503 => "UNAVAILABLE",
                    _ => "INTERNAL",
                },
                None,
            ),
            E::Sandbox(_) | E::CommandExit { .. } => ("SANDBOX_ERROR", None),
            E::Connection { .. } => ("UNAVAILABLE", None),
            _ => ("INTERNAL", None),
        };
        Self { code, message, status, retry_after }
    }
}

/// The acknowledgement of an operation.
pub(crate) fn envelope(r: Result<Value, GwError>) -> Value {
    match r {
        Ok(data) => json!({ "ok": true, "data": data }),
        Err(e) => json!({ "ok": false, "error": e }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdk_errors_keep_their_meaning() {
        let http = |status| GwError::from(airlock_sdk::Error::Http { status, message: "m".into() });
        assert_eq!(http(400).code, "INVALID_ARGUMENT");
        assert_eq!(http(409).code, "CONFLICT");
        assert_eq!(http(413).code, "TOO_LARGE");
        assert_eq!(http(400).status, Some(400));
        let limited = GwError::from(airlock_sdk::Error::RateLimited { message: "slow down".into(), retry_after: Some(std::time::Duration::from_secs(2)) });
        assert_eq!((limited.code, limited.retry_after), ("RATE_LIMITED", Some(2000)));
        assert_eq!(GwError::from(airlock_sdk::Error::NotFound("x".into())).code, "NOT_FOUND");
        let v = envelope(Err(limited));
        assert_eq!(v["ok"], false);
        assert_eq!(v["error"]["retryAfter"], 2000);
        assert_eq!(envelope(Ok(json!({"a": 1})))["data"]["a"], 1);
    }
}
