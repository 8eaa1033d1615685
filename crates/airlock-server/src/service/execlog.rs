//! Run-time configuration of a running sandbox (`configure`) and its
//! execution log (`execution_log`, `follow_log`).
//!
//! The log merges three sources, each where it is known: the agent's own
//! log of every execution and its output (see `airlock_agent::execlog`:
//! the proxy streams bytes and never sees a command, the agent sees them
//! all), the sandbox's lifecycle events from the store, and its set-up log
//! file. Only the agent's part is lost when the agent restarts.

use std::time::Duration;

use airlock_proto::execlog::{rfc3339_ms, AgentEnvChange, CommandOutcome, ConfigureResult, ConfigureSandbox, ExecutionLog, ExecutionStats, LogEntry, LogLevel, LogSource};

use super::create::check_env;
use super::*;

/// Commands one configure may run, and their size.
const MAX_COMMANDS: usize = 32;
const MAX_COMMAND_BYTES: usize = 16 * 1024;
/// Output of one configure command kept in its answer (the tail).
const MAX_OUTPUT: usize = 16 * 1024;
/// Entries one read returns unless `lines` says otherwise.
const DEFAULT_LINES: usize = 1000;
/// Lifecycle events merged into one read.
const MAX_EVENTS: usize = 1000;
/// How long a follower waits on the agent per round.
const FOLLOW_WAIT_MS: u64 = 15_000;

/// Filters of a log read (`GET /sandboxes/{id}/logs`).
#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    /// The newest this many entries (and set-up lines); default 1000.
    pub lines: Option<usize>,
    /// This level and above.
    pub level: Option<LogLevel>,
    /// Entries at or after this instant (Unix ms).
    pub since_ms: Option<i64>,
}

impl LogQuery {
    fn keeps(&self, e: &LogEntry) -> bool {
        self.level.is_none_or(|l| e.level >= l) && self.since_ms.is_none_or(|s| e.timestamp_ms >= s)
    }
}

fn tail(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &s[start..])
}

fn event_entry(e: &crate::events::Event) -> LogEntry {
    let ms = airlock_proto::time::parse_rfc3339(&e.timestamp).and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_millis() as i64).unwrap_or(0);
    let level = match e.kind.as_str() {
        "error" | "died" | "oom" => LogLevel::Error,
        "timeout" | "resource_alert" => LogLevel::Warn,
        _ => LogLevel::Info,
    };
    let data = match &e.data {
        serde_json::Value::Null => String::new(),
        serde_json::Value::Object(m) if m.is_empty() => String::new(),
        d => format!(" {d}"),
    };
    LogEntry { timestamp: rfc3339_ms(ms), timestamp_ms: ms, level, source: LogSource::System, message: format!("{}{data}", e.kind), ..Default::default() }
}

/// Waits for a lifecycle event of sandbox `id` (or for having missed some).
async fn own_event(bus: &mut tokio::sync::broadcast::Receiver<crate::events::Event>, id: &str) {
    loop {
        match bus.recv().await {
            Ok(e) if e.sandbox_id == id => return,
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => std::future::pending().await,
        }
    }
}

impl Service {
    /// Changes a running sandbox: environment variables (every later
    /// command and new code context gets them, and so does the sandbox
    /// after a restart), packages (as root, names checked as at create
    /// time) and commands (as the default user), whose output goes to the
    /// set-up log; then restarts it if asked.
    pub async fn configure(&self, id: &str, req: ConfigureSandbox) -> Result<ConfigureResult, ApiError> {
        let started = Instant::now();
        let env_names: Vec<String> = req.env_vars.keys().cloned().collect();
        check_env(&req.env_vars)?;
        // exec cannot pass a NUL inside a value (regression: schemathesis
        // found the agent's refusal answered as a 500).
        if let Some((k, _)) = req.env_vars.iter().find(|(_, v)| v.contains('\0')) {
            return Err(ApiError::BadRequest(format!("environment variable {k:?} has a NUL byte in its value")));
        }
        let packages = setup_script(req.install_packages.as_ref(), None)?;
        if req.run_commands.len() > MAX_COMMANDS {
            return Err(ApiError::BadRequest(format!("at most {MAX_COMMANDS} commands, got {}", req.run_commands.len())));
        }
        if let Some(c) = req.run_commands.iter().find(|c| c.trim().is_empty() || c.len() > MAX_COMMAND_BYTES || c.contains('\0')) {
            return Err(ApiError::BadRequest(format!("invalid command {:?}: it must be 1 to {MAX_COMMAND_BYTES} bytes of text", c.chars().take(40).collect::<String>())));
        }
        // The environment changes under the sandbox's lock (the row, the
        // agent and launch.json agree before anyone else looks); packages
        // and commands run after it, so a long install never holds up a
        // pause or a kill.
        let (socket, token, env) = {
            let lock = self.lock_for(id);
            let _g = lock.lock().await;
            let mut row = self.row(id).await?;
            if row.state != State::Running {
                return Err(ApiError::Conflict(format!("sandbox {id} is not running ({}): resume it first", row.state.as_str())));
            }
            let backend = self.backend.clone();
            let id2 = id.to_string();
            let info = self.blocking(move || backend.get(&id2)).await?.map_err(|e| runtime_err(id, e))?;
            let mut change = AgentEnvChange::default();
            for (k, v) in &req.env_vars {
                if v.is_empty() {
                    row.env.remove(k);
                    change.unset.push(k.clone());
                } else {
                    row.env.insert(k.clone(), v.clone());
                    change.set.insert(k.clone(), v.clone());
                }
            }
            // The agent's environment is the template's plus the
            // sandbox's: the agent applies the change to it and says what
            // it became, which is what the next boot must get too
            // (launch.json); the row keeps the sandbox's own variables.
            let env = crate::agent_client::update_env(&info.socket, row.access_token.as_deref(), &change).await.map_err(|e| ApiError::Internal(e.to_string()))?;
            if !req.env_vars.is_empty() {
                let (store, backend, r2, full) = (self.store.clone(), self.backend.clone(), row.clone(), env.clone());
                self.blocking(move || -> Result<(), ApiError> {
                    store.set_config(&r2.id, &r2.env, r2.cpus, r2.memory_mb)?;
                    backend.rekey(&r2.id, &full, r2.access_token.as_deref()).map_err(|e| runtime_err(&r2.id, e))
                })
                .await??;
                self.append_log(id, &format!("configured: environment variables {}", env_names.join(", ")));
            }
            (info.socket, row.access_token.clone(), env)
        };
        let mut result = ConfigureResult { env_vars_updated: env_names, ..Default::default() };
        if let Some(script) = packages {
            let t0 = Instant::now();
            let mut out = String::new();
            let r = crate::agent_client::run(&socket, token.as_deref(), "root", &script, &env, None, |b, _| out.push_str(&String::from_utf8_lossy(b))).await;
            self.append_log(id, &out);
            let code = r.map_err(|e| ApiError::Internal(e.to_string()))?.exit_code;
            if code != 0 {
                return Err(ApiError::BadRequest(format!("installing packages failed (exit code {code}): {}", tail(out.trim(), 4000))));
            }
            let pk = req.install_packages.clone().unwrap_or_default();
            result.packages_installed =
                pk.pip.iter().map(|p| format!("pip:{p}")).chain(pk.npm.iter().map(|p| format!("npm:{p}"))).chain(pk.apt.iter().map(|p| format!("apt:{p}"))).collect();
            tracing::info!(sandbox_id = %id, elapsed_ms = t0.elapsed().as_millis() as u64, "packages installed");
        }
        for cmd in &req.run_commands {
            let t0 = Instant::now();
            self.append_log(id, &format!("$ {cmd}   # configure"));
            let mut out = String::new();
            let r = crate::agent_client::run(&socket, token.as_deref(), "user", cmd, &env, None, |b, _| out.push_str(&String::from_utf8_lossy(b))).await;
            self.append_log(id, &out);
            let code = r.map_err(|e| ApiError::Internal(e.to_string()))?.exit_code;
            result.commands_executed.push(CommandOutcome { command: cmd.clone(), exit_code: code, output: tail(&out, MAX_OUTPUT), duration_ms: t0.elapsed().as_millis() as u64 });
            if code != 0 {
                // The rest may depend on this one: stop, and say so.
                self.append_log(id, &format!("configure stopped: `{cmd}` exited with code {code}"));
                break;
            }
        }
        if let Ok(row) = self.row(id).await {
            self.emit(
                &row,
                "configured",
                serde_json::json!({"envVars": result.env_vars_updated, "packages": result.packages_installed, "commands": result.commands_executed.len()}),
            )
            .await;
        }
        if req.restart {
            self.restart(id, api::RestartRequest::default()).await?;
            result.restarted = true;
        }
        result.restart_required = !result.env_vars_updated.is_empty() && !result.restarted;
        result.configuration_time_ms = started.elapsed().as_millis() as u64;
        Ok(result)
    }

    /// The agent's log and counters, if the sandbox runs and its agent
    /// answers; `None` otherwise (paused, or an agent that is gone).
    async fn agent_log(&self, row: &SandboxRow, after: Option<u64>, wait_ms: u64, boot: i64) -> Option<airlock_proto::execlog::AgentLog> {
        if row.state != State::Running {
            return None;
        }
        let backend = self.backend.clone();
        let id = row.id.clone();
        let info = self.blocking(move || backend.get(&id)).await.ok()?.ok()?;
        let read = crate::agent_client::read_log(&info.socket, row.access_token.as_deref(), after, wait_ms, boot);
        match tokio::time::timeout(Duration::from_millis(wait_ms + 5000), read).await {
            Ok(Ok(l)) => Some(l),
            Ok(Err(e)) => {
                tracing::debug!(sandbox_id = %row.id, error = %e, "execution log unavailable");
                None
            }
            Err(_) => None,
        }
    }

    fn setup_entries(text: &str) -> Vec<LogEntry> {
        text.lines()
            .map(|l| {
                let (ts, line) = l.split_once('\t').unwrap_or(("", l));
                let ms = airlock_proto::time::parse_rfc3339(ts).and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_millis() as i64).unwrap_or(0);
                LogEntry { timestamp: rfc3339_ms(ms), timestamp_ms: ms, level: LogLevel::Info, source: LogSource::System, message: line.to_string(), ..Default::default() }
            })
            .collect()
    }

    /// The merged log (see the module's comment), filtered, the newest
    /// `lines` of it; with the execution counters. Also the agent's next
    /// sequence number, the newest event id and the agent's start time,
    /// where a follower goes on.
    pub async fn execution_log_at(&self, id: &str, q: &LogQuery) -> Result<(ExecutionLog, Option<u64>, i64, i64), ApiError> {
        let row = self.row(id).await?;
        let p = self.log_path(id);
        let text = self.blocking(move || std::fs::read_to_string(p).unwrap_or_default()).await?;
        let mut entries = Self::setup_entries(&text);
        let lines: Vec<api::LogLine> =
            entries.iter().filter(|e| q.since_ms.is_none_or(|s| e.timestamp_ms >= s)).map(|e| api::LogLine { timestamp: e.timestamp.clone(), line: e.message.clone() }).collect();
        let (store, id2) = (self.store.clone(), id.to_string());
        let events = self.blocking(move || store.last_events(&id2, MAX_EVENTS)).await??;
        let last_event = events.last().map(|e| e.id).unwrap_or(0);
        entries.extend(events.iter().map(event_entry));
        let agent = self.agent_log(&row, None, 0, 0).await;
        let (stats, next, boot) = match agent {
            Some(a) => {
                entries.extend(a.entries);
                (a.stats, Some(a.next), a.started_ms)
            }
            None => (ExecutionStats::default(), None, 0),
        };
        // Stable: entries of one source keep their order at equal times.
        entries.sort_by_key(|e| e.timestamp_ms);
        entries.retain(|e| q.keeps(e));
        let n = q.lines.unwrap_or(DEFAULT_LINES);
        let total = entries.len();
        let log_entries = entries.split_off(total.saturating_sub(n));
        // E2B's `logs` stay whole unless `lines` is asked for, as before.
        let keep = q.lines.unwrap_or(usize::MAX);
        let logs = lines.iter().skip(lines.len().saturating_sub(keep)).cloned().collect();
        Ok((ExecutionLog { logs, log_entries, stats, total_lines: total as u64 }, next, last_event, boot))
    }

    pub async fn execution_log(&self, id: &str, q: &LogQuery) -> Result<ExecutionLog, ApiError> {
        Ok(self.execution_log_at(id, q).await?.0)
    }

    /// The log as a stream: what `execution_log` returns, then every new
    /// entry as it comes, until the sandbox stops running or the receiver
    /// is dropped. The last entry says why it ended.
    pub async fn follow_log(self: &Arc<Self>, id: &str, q: LogQuery) -> Result<mpsc::Receiver<LogEntry>, ApiError> {
        let (first, mut next, mut last_event, mut boot) = self.execution_log_at(id, &q).await?;
        let (tx, rx) = mpsc::channel(256);
        let svc = self.clone();
        let id = id.to_string();
        // Lifecycle events cut a wait on the agent short: a restart or a
        // pause can leave the old agent's connection open a while.
        let mut bus = self.subscribe();
        tokio::spawn(async move {
            for e in first.log_entries {
                if tx.send(e).await.is_err() {
                    return;
                }
            }
            let why = loop {
                let row = match svc.row(&id).await {
                    Ok(r) => r,
                    Err(_) => break "the sandbox is gone".to_string(),
                };
                // A restart or resume in progress passes through `resuming`:
                // the log goes on once it is running again.
                if row.state == State::Resuming {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                        _ = tx.closed() => return,
                    }
                }
                if row.state != State::Running {
                    break format!("the sandbox is {}", row.state.as_str());
                }
                let read = tokio::select! {
                    r = svc.agent_log(&row, next, FOLLOW_WAIT_MS, boot) => Some(r),
                    _ = own_event(&mut bus, &id) => None,
                    _ = tx.closed() => return,
                };
                let mut fresh = Vec::new();
                if let Ok(events) = svc.events_after(last_event, Some(id.clone()), MAX_EVENTS).await {
                    if let Some(e) = events.last() {
                        last_event = e.id;
                    }
                    fresh.extend(events.iter().map(event_entry));
                }
                match read {
                    // A new agent (a restart, a resume that booted afresh)
                    // numbers its log from the start: read it all.
                    Some(Some(a)) if a.started_ms != boot => {
                        boot = a.started_ms;
                        next = Some(a.next);
                        fresh.extend(a.entries);
                    }
                    Some(Some(a)) => {
                        next = Some(a.next);
                        fresh.extend(a.entries);
                    }
                    // The agent did not answer: it is stopping, or it was
                    // restarted (a fresh log). Look at the row again soon.
                    Some(None) => tokio::time::sleep(Duration::from_millis(500)).await,
                    // An event of this sandbox: shown below, then a new round.
                    None => {}
                }
                fresh.sort_by_key(|e| e.timestamp_ms);
                for e in fresh.into_iter().filter(|e| q.level.is_none_or(|l| e.level >= l)) {
                    if tx.send(e).await.is_err() {
                        return;
                    }
                }
            };
            let ms = now_ms();
            let _ = tx
                .send(LogEntry {
                    timestamp: rfc3339_ms(ms),
                    timestamp_ms: ms,
                    level: LogLevel::Info,
                    source: LogSource::System,
                    message: format!("end of log stream: {why}"),
                    ..Default::default()
                })
                .await;
        });
        Ok(rx)
    }
}
