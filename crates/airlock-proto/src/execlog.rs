//! Execution logs and run-time configuration: the wire types of
//! `GET /sandboxes/{id}/logs` (Airlock's additions to E2B's shape),
//! `POST /sandboxes/{id}/configure`, and the agent's own log route, which
//! only the server reads.
//!
//! Where the log lives: the agent keeps it. Commands and code run through
//! the proxy straight to the agent, so the agent is the one place that sees
//! every execution, whoever started it (an E2B SDK, the CLI, MCP); it keeps
//! a bounded ring of entries plus counters, and the server merges them with
//! its own system entries (lifecycle events, the set-up log) when asked.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::api::InstallPackages;

/// A log entry's severity, lowest first (a `level` filter keeps this one
/// and those above it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Debug,
    #[default]
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }

    /// Parses a level as people write it (`warning` and `err` too).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "debug" | "trace" => LogLevel::Debug,
            "info" => LogLevel::Info,
            "warn" | "warning" => LogLevel::Warn,
            "error" | "err" => LogLevel::Error,
            _ => return None,
        })
    }
}

/// Where an entry comes from: the server or agent (`system`), an
/// execution starting or ending (`execution`), or a line it printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum LogSource {
    #[default]
    System,
    Execution,
    Stdout,
    Stderr,
}

/// One entry of a sandbox's execution log.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct LogEntry {
    /// RFC 3339, milliseconds.
    pub timestamp: String,
    /// The same instant in Unix milliseconds (what `since` compares).
    pub timestamp_ms: i64,
    pub level: LogLevel,
    pub source: LogSource,
    pub message: String,
    /// The process the entry is about (executions and their output).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// An execution's end: its exit code (`-1`: killed by a signal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// An execution's end: how long it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// An execution's end: CPU time (user + system) of the process and the
    /// children it waited for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_ms: Option<u64>,
    /// An execution's end: peak resident memory of the process (or its
    /// largest waited-for child), in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rss_bytes: Option<u64>,
}

/// Counters over every execution since the agent started (not bounded by
/// the log's ring).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ExecutionStats {
    pub total: u64,
    pub successful: u64,
    pub failed: u64,
    /// Started and not yet ended.
    pub running: u64,
    pub total_duration_ms: u64,
    /// Over the ended ones; 0 before the first ends.
    pub average_duration_ms: f64,
    /// RFC 3339: the last start or end of an execution.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_activity: Option<String>,
    /// Entries the ring dropped to stay within its bound.
    #[serde(default)]
    pub dropped_entries: u64,
}

/// The agent's answer on its log route: entries after a sequence number,
/// the counters, and the sequence number to ask after next time.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentLog {
    pub entries: Vec<LogEntry>,
    pub stats: ExecutionStats,
    pub next: u64,
    /// Environment variables every new command gets (their names only).
    #[serde(default)]
    pub env_names: Vec<String>,
    /// When this agent started (Unix ms): a reader that sees it change
    /// knows the sequence numbers started over.
    #[serde(default)]
    pub started_ms: i64,
}

/// The agent's environment change (`POST /airlock/env`): the variables to
/// set and to remove; the answer is the whole environment after it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AgentEnvChange {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub unset: Vec<String>,
}

/// The agent's environment after a change: what new commands get (the
/// template's variables, the sandbox's, and every change so far).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AgentEnv {
    pub env: BTreeMap<String, String>,
}

/// `POST /sandboxes/{id}/configure`: what to change on a running sandbox.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ConfigureSandbox {
    /// Added to (or replacing values in) the sandbox's environment: every
    /// later command and new code context sees them, and so does the
    /// sandbox after a restart. An empty value removes the variable.
    #[serde(default)]
    pub env_vars: BTreeMap<String, String>,
    /// Installed now, as root, with the same name checks as at create time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install_packages: Option<InstallPackages>,
    /// Shell commands run in order as the default user (after the
    /// packages); their output goes to the set-up log. The first failing
    /// one stops the rest.
    #[serde(default)]
    pub run_commands: Vec<String>,
    /// Restart the sandbox afterwards (a fresh agent over the same files).
    #[serde(default)]
    pub restart: bool,
}

/// One command a configure ran.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct CommandOutcome {
    pub command: String,
    pub exit_code: i32,
    pub output: String,
    pub duration_ms: u64,
}

/// What a configure did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ConfigureResult {
    /// Names set (or removed) in the environment.
    pub env_vars_updated: Vec<String>,
    pub packages_installed: Vec<String>,
    pub commands_executed: Vec<CommandOutcome>,
    pub configuration_time_ms: u64,
    pub restarted: bool,
    /// Whether processes already running (and code contexts already
    /// started) keep the old environment: true when variables changed and
    /// no restart was asked for.
    pub restart_required: bool,
}

/// The response of `GET /sandboxes/{id}/logs` (and `/v2/...`): E2B's
/// `logs` (the set-up log as lines, as before) plus Airlock's structured
/// execution log and counters, which E2B's SDKs ignore.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ExecutionLog {
    pub logs: Vec<crate::api::LogLine>,
    #[serde(default)]
    pub log_entries: Vec<LogEntry>,
    #[serde(default)]
    pub stats: ExecutionStats,
    /// Entries matching the filters before `lines` cut them.
    #[serde(default)]
    pub total_lines: u64,
}

/// Milliseconds since the epoch as RFC 3339 with milliseconds.
pub fn rfc3339_ms(ms: i64) -> String {
    let s = crate::time::rfc3339_parts(ms.div_euclid(1000), 0);
    format!("{}.{:03}Z", s.trim_end_matches('Z'), ms.rem_euclid(1000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_order_and_parse() {
        assert!(LogLevel::Debug < LogLevel::Info && LogLevel::Warn < LogLevel::Error);
        assert_eq!(LogLevel::parse(" Warning "), Some(LogLevel::Warn));
        assert_eq!(LogLevel::parse("loud"), None);
        assert_eq!(serde_json::to_value(LogSource::Stderr).ok(), Some(serde_json::json!("stderr")));
        assert_eq!(rfc3339_ms(1_700_000_000_042), "2023-11-14T22:13:20.042Z");
    }

    #[test]
    fn old_log_bodies_still_parse() {
        let l: ExecutionLog = serde_json::from_str(r#"{"logs":[{"timestamp":"2024-01-01T00:00:00Z","line":"x"}]}"#).expect("parse");
        assert_eq!((l.logs.len(), l.log_entries.len()), (1, 0));
    }
}
