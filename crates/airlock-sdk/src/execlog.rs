//! A sandbox's execution log (every command and code execution with its
//! output and outcome, lifecycle events, the set-up log; read once or
//! followed as a stream) and run-time configuration (environment
//! variables, packages, commands).

use std::time::{SystemTime, UNIX_EPOCH};

use airlock_proto::execlog::{ConfigureResult, ConfigureSandbox, ExecutionLog, LogEntry, LogLevel};
use http::Method;

use crate::client::{encode, Client};
use crate::error::{Error, Result};
use crate::Sandbox;

/// What to read: the newest `lines` entries (server default 1000) at
/// `level` and above, at or after `since`.
#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    pub lines: Option<u32>,
    pub level: Option<LogLevel>,
    pub since: Option<SystemTime>,
}

impl LogQuery {
    fn query(&self, follow: bool) -> String {
        let mut q = Vec::new();
        if let Some(n) = self.lines {
            q.push(format!("lines={n}"));
        }
        if let Some(l) = self.level {
            q.push(format!("level={}", l.as_str()));
        }
        if let Some(s) = self.since {
            q.push(format!("since={}", s.duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0)));
        }
        if follow {
            q.push("follow=true".into());
        }
        if q.is_empty() {
            String::new()
        } else {
            format!("?{}", q.join("&"))
        }
    }
}

impl Client {
    /// Changes a running sandbox; see [`ConfigureSandbox`].
    pub async fn configure(&self, id: &str, req: &ConfigureSandbox) -> Result<ConfigureResult> {
        let body = serde_json::to_value(req).map_err(|e| Error::protocol(e.to_string()))?;
        Ok(self.api_json(Method::POST, &format!("/sandboxes/{}/configure", encode(id)), Some(body)).await?.2)
    }

    /// The sandbox's log and execution counters, read once.
    pub async fn execution_log(&self, id: &str, q: &LogQuery) -> Result<ExecutionLog> {
        Ok(self.api_json(Method::GET, &format!("/sandboxes/{}/logs{}", encode(id), q.query(false)), None).await?.2)
    }

    /// The log as it grows: the entries `q` selects, then new ones until
    /// the sandbox stops running (the last entry says so) or the stream is
    /// dropped.
    pub async fn follow_log(&self, id: &str, q: &LogQuery) -> Result<LogStream> {
        let path = format!("/sandboxes/{}/logs{}", encode(id), q.query(true));
        let body = self.api_raw(Method::GET, &path, crate::client::full(bytes::Bytes::new()), "application/json", Some(0)).await?.into_body();
        Ok(crate::ndjson::NdjsonStream::new(body, "log stream"))
    }
}

impl Sandbox {
    /// See [`Client::configure`].
    pub async fn configure(&self, req: &ConfigureSandbox) -> Result<ConfigureResult> {
        self.client().configure(self.id(), req).await
    }

    /// See [`Client::execution_log`].
    pub async fn execution_log(&self, q: &LogQuery) -> Result<ExecutionLog> {
        self.client().execution_log(self.id(), q).await
    }

    /// See [`Client::follow_log`].
    pub async fn follow_log(&self, q: &LogQuery) -> Result<LogStream> {
        self.client().follow_log(self.id(), q).await
    }
}

/// Log entries as they come, one per NDJSON line of the response.
pub type LogStream = crate::ndjson::NdjsonStream<LogEntry>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_say_what_the_server_parses() {
        assert_eq!(LogQuery::default().query(false), "");
        let q = LogQuery { lines: Some(5), level: Some(LogLevel::Warn), since: Some(UNIX_EPOCH + std::time::Duration::from_millis(1500)) };
        assert_eq!(q.query(true), "?lines=5&level=warn&since=1500&follow=true");
    }
}
