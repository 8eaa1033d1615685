//! Tool errors: every failure a tool reports, with Flow Nexus's codes, as
//! an MCP tool result with `isError` (so the agent reads the message)
//! rather than a JSON-RPC error (which clients show opaquely).

use serde_json::json;

/// Flow Nexus's error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    SandboxNotFound,
    SandboxNotRunning,
    ExecutionTimeout,
    ExecutionError,
    InsufficientResources,
    PermissionDenied,
    QuotaExceeded,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::SandboxNotFound => "SANDBOX_NOT_FOUND",
            Code::SandboxNotRunning => "SANDBOX_NOT_RUNNING",
            Code::ExecutionTimeout => "EXECUTION_TIMEOUT",
            Code::ExecutionError => "EXECUTION_ERROR",
            Code::InsufficientResources => "INSUFFICIENT_RESOURCES",
            Code::PermissionDenied => "PERMISSION_DENIED",
            Code::QuotaExceeded => "QUOTA_EXCEEDED",
        }
    }
}

/// A failed tool call: its code and what the agent is told.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct ToolError {
    pub code: Code,
    pub message: String,
}

impl ToolError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }

    /// Bad arguments: the call could not run (Flow Nexus has no code of its
    /// own for these; an execution error with the reason is what its tools
    /// answer).
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Code::ExecutionError, message)
    }

    /// An SDK error from a call about sandbox `id` (whose existence was
    /// not yet known: a 404 means the sandbox).
    pub fn sandbox(id: &str, e: airlock_sdk::Error) -> Self {
        match &e {
            airlock_sdk::Error::NotFound(_) | airlock_sdk::Error::Http { status: 404, .. } => Self::new(Code::SandboxNotFound, format!("sandbox {id} not found")),
            _ => Self::from(e),
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        json!({"error": {"code": self.code.as_str(), "message": self.message}})
    }
}

impl From<airlock_sdk::Error> for ToolError {
    fn from(e: airlock_sdk::Error) -> Self {
        use airlock_sdk::{Code as C, Error as E};
        let message = e.to_line();
        let code = match &e {
            E::NotFound(_) => Code::ExecutionError,
            E::Timeout(_) => Code::ExecutionTimeout,
            E::Auth(_) => Code::PermissionDenied,
            E::RateLimited { .. } => Code::QuotaExceeded,
            E::Http { status, .. } => match status {
                401 | 403 => Code::PermissionDenied,
                404 => Code::SandboxNotFound,
                409 => Code::SandboxNotRunning,
                429 => Code::QuotaExceeded,
                413 | 503 | 507 => Code::InsufficientResources,
                _ => Code::ExecutionError,
            },
            E::Sandbox(c) => match c.code {
                C::PermissionDenied | C::Unauthenticated => Code::PermissionDenied,
                C::ResourceExhausted => Code::InsufficientResources,
                C::DeadlineExceeded => Code::ExecutionTimeout,
                _ => Code::ExecutionError,
            },
            _ => Code::ExecutionError,
        };
        Self { code, message }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdk_errors_map_to_flow_nexus_codes() {
        let http = |status| airlock_sdk::Error::Http { status, message: "m".into() };
        assert_eq!(ToolError::sandbox("x", http(404)).code, Code::SandboxNotFound);
        assert_eq!(ToolError::from(http(409)).code, Code::SandboxNotRunning);
        assert_eq!(ToolError::from(http(429)).code, Code::QuotaExceeded);
        assert_eq!(ToolError::from(http(507)).code, Code::InsufficientResources);
        assert_eq!(ToolError::from(airlock_sdk::Error::Auth("no".into())).code, Code::PermissionDenied);
        assert_eq!(ToolError::from(airlock_sdk::Error::Timeout("t".into())).code, Code::ExecutionTimeout);
        let e = ToolError::new(Code::SandboxNotFound, "gone").to_json();
        assert_eq!(e["error"]["code"], "SANDBOX_NOT_FOUND");
    }
}
