//! The tools: their arguments (with the JSON schemas clients see), what
//! each does through the SDK, and its result, a short text summary plus
//! the structured content (also serialized as text, for clients that read
//! only text).
//!
//! Long calls (`sandbox_execute`, `sandbox_run_command`, a followed
//! `sandbox_logs`) send progress notifications when the client asked for
//! them (a progress token) and stop when the call is cancelled: a cancelled
//! execution's process is killed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use airlock_sdk::{Client, CommandEvent, ConfigureSandbox, InstallPackages, LogLevel, LogQuery, Sandbox, SandboxDetail, SandboxState};
use base64::Engine;
use futures_util::StreamExt;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, Implementation, ProgressNotificationParam, ProgressToken, ServerCapabilities, ServerConfig};
use rmcp::service::RequestContext;
use rmcp::{tool, tool_handler, tool_router, ErrorData, Peer, RoleServer, ServerHandler};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::Digest;

use crate::error::{Code, ToolError};
use crate::Clients;

/// Seconds a command or code execution may run unless told otherwise, and
/// at most.
const DEFAULT_EXEC_TIMEOUT_S: u64 = 60;
const MAX_EXEC_TIMEOUT_S: u64 = 3600;
/// Output kept per stream in a result; the rest is cut (and said so).
const MAX_OUTPUT: usize = 256 * 1024;
/// Code passed inline on the command line up to this size; larger code
/// goes through a file (one argument may hold at most 128 KiB).
const MAX_INLINE_CODE: usize = 64 * 1024;
/// `sandbox_read_file` reads this much unless told otherwise, and at most.
const DEFAULT_READ_BYTES: u64 = 1024 * 1024;
const MAX_READ_BYTES: u64 = 8 * 1024 * 1024;
/// `sandbox_upload` takes at most this much (decoded): as base64 in JSON
/// it must fit one MCP message (see `crate::MAX_MESSAGE_BYTES`). Larger
/// files go through the REST API's `/files` or signed URLs.
const MAX_UPLOAD_BYTES: usize = 8 * 1024 * 1024;
/// A followed `sandbox_logs` call lasts this long unless told otherwise,
/// and at most.
const DEFAULT_FOLLOW_S: u64 = 10;
const MAX_FOLLOW_S: u64 = 300;
/// How often a running execution reports progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// The MCP server: one per session (stdio) or per HTTP session; cheap to
/// clone (the router and the clients are shared).
#[derive(Clone)]
pub struct AirlockTools {
    clients: Arc<Clients>,
    tool_router: ToolRouter<Self>,
}

type ToolResult = Result<(String, Value), ToolError>;

fn ok(summary: String, v: Value) -> CallToolResult {
    let mut r = CallToolResult::structured(v.clone());
    r.content = vec![ContentBlock::text(summary), ContentBlock::text(v.to_string())];
    r
}

fn fail(e: ToolError) -> CallToolResult {
    let mut r = CallToolResult::structured_error(e.to_json());
    r.content = vec![ContentBlock::text(e.to_string())];
    r
}

fn now_rfc3339() -> String {
    airlock_proto::time::rfc3339(SystemTime::now())
}

fn secs_since(rfc3339: &str) -> Option<u64> {
    let t = airlock_proto::time::parse_rfc3339(rfc3339)?;
    Some(SystemTime::now().duration_since(t).map(|d| d.as_secs()).unwrap_or(0))
}

/// Cuts text to `max` bytes on a character boundary; says whether it did.
fn cut(s: String, max: usize) -> (String, bool) {
    if s.len() <= max {
        return (s, false);
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    (s[..end].to_string(), true)
}

fn timeout_of(t: Option<u64>) -> Result<Duration, ToolError> {
    match t.unwrap_or(DEFAULT_EXEC_TIMEOUT_S) {
        0 => Err(ToolError::invalid("timeout must be at least 1 second")),
        s if s > MAX_EXEC_TIMEOUT_S => Err(ToolError::invalid(format!("timeout must be at most {MAX_EXEC_TIMEOUT_S} seconds, got {s}"))),
        s => Ok(Duration::from_secs(s)),
    }
}

/// Sends progress notifications when the caller gave a progress token.
struct Progress {
    peer: Peer<RoleServer>,
    token: Option<ProgressToken>,
}

impl Progress {
    fn of(ctx: &RequestContext<RoleServer>) -> Self {
        Self { peer: ctx.peer.clone(), token: ctx.meta.get_progress_token() }
    }

    async fn send(&self, progress: f64, total: Option<f64>, message: impl Into<String>) {
        let Some(t) = &self.token else { return };
        let mut p = ProgressNotificationParam::new(t.clone(), progress).with_message(message.into());
        if let Some(total) = total {
            p = p.with_total(total);
        }
        // A client that went away is the call's cancellation's business.
        let _ = self.peer.notify_progress(p).await;
    }
}

/// What a finished process said.
struct Ran {
    pid: u32,
    exit_code: i32,
    stdout: String,
    stderr: String,
    stdout_truncated: bool,
    stderr_truncated: bool,
    error: Option<String>,
    elapsed: Duration,
}

/// Runs a started command to its end, reporting progress, killing it when
/// the call is cancelled or it outlives `timeout` (the agent kills it then
/// too; this is the backstop for an agent that cannot).
async fn drive(builder: airlock_sdk::CommandBuilder, timeout: Duration, progress: &Progress, ctx: &RequestContext<RoleServer>, what: &str) -> Result<Ran, ToolError> {
    let started = Instant::now();
    let mut stream = builder.timeout(timeout).stream().await?;
    let pid = stream.pid();
    let process = stream.process().clone();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    tick.tick().await;
    let backstop = tokio::time::sleep(timeout + Duration::from_secs(5));
    tokio::pin!(backstop);
    let total = timeout.as_secs_f64();
    progress.send(0.0, Some(total), format!("{what}: started (pid {pid})")).await;
    loop {
        tokio::select! {
            ev = stream.next() => match ev {
                Some(Ok(CommandEvent::Stdout(d))) | Some(Ok(CommandEvent::Pty(d))) => {
                    if out.len() < MAX_OUTPUT + 4 {
                        out.extend_from_slice(&d);
                    }
                }
                Some(Ok(CommandEvent::Stderr(d))) => {
                    if err.len() < MAX_OUTPUT + 4 {
                        err.extend_from_slice(&d);
                    }
                }
                Some(Ok(CommandEvent::Exit(end))) => {
                    let elapsed = started.elapsed();
                    if !end.exited && elapsed + Duration::from_millis(50) >= timeout {
                        return Err(ToolError::new(Code::ExecutionTimeout, format!("{what} was killed after its timeout of {} s", timeout.as_secs())));
                    }
                    let (stdout, stdout_truncated) = cut(String::from_utf8_lossy(&out).into_owned(), MAX_OUTPUT);
                    let (stderr, stderr_truncated) = cut(String::from_utf8_lossy(&err).into_owned(), MAX_OUTPUT);
                    progress.send(total, Some(total), format!("{what}: exited with code {}", end.exit_code)).await;
                    return Ok(Ran { pid, exit_code: end.exit_code, stdout, stderr, stdout_truncated, stderr_truncated, error: end.error, elapsed });
                }
                Some(Err(e)) => return Err(e.into()),
                None => return Err(ToolError::new(Code::ExecutionError, format!("{what}: the process stream ended without an exit status"))),
            },
            _ = tick.tick() => {
                let s = started.elapsed().as_secs_f64();
                progress.send(s.min(total), Some(total), format!("{what}: running for {s:.0} s")).await;
            }
            _ = ctx.ct.cancelled() => {
                let _ = process.kill().await;
                return Err(ToolError::new(Code::ExecutionError, format!("{what} was cancelled; process {pid} was killed")));
            }
            _ = &mut backstop => {
                let _ = process.kill().await;
                return Err(ToolError::new(Code::ExecutionTimeout, format!("{what} was killed after its timeout of {} s", timeout.as_secs())));
            }
        }
    }
}

/// The log's record of how much CPU time and memory a finished process
/// used (the agent measures it at its end); `None` when it has none.
async fn usage_of(sbx: &Sandbox, pid: u32, since: SystemTime) -> (Option<u64>, Option<u64>) {
    let q = LogQuery { lines: Some(100), level: None, since: Some(since - Duration::from_secs(1)) };
    match sbx.execution_log(&q).await {
        Ok(l) => l.log_entries.iter().rev().find(|e| e.pid == Some(pid) && e.exit_code.is_some()).map(|e| (e.cpu_ms, e.max_rss_bytes)).unwrap_or((None, None)),
        Err(_) => (None, None),
    }
}

impl AirlockTools {
    pub(crate) fn new(clients: Arc<Clients>) -> Self {
        Self { clients, tool_router: Self::tool_router() }
    }

    fn client(&self, ctx: &RequestContext<RoleServer>) -> Result<Client, ToolError> {
        let headers = ctx.extensions.get::<http::request::Parts>().map(|p| &p.headers);
        self.clients.client(headers)
    }

    /// A handle on a sandbox that must be running (for envd traffic).
    async fn running(&self, c: &Client, id: &str) -> Result<Sandbox, ToolError> {
        check_id(id)?;
        let d = c.info(id).await.map_err(|e| ToolError::sandbox(id, e))?;
        if d.state != "running" {
            return Err(ToolError::new(Code::SandboxNotRunning, format!("sandbox {id} is {} (stopped): start it with sandbox_start", d.state)));
        }
        Ok(c.from_detail(&d))
    }

    /// A tool's outcome as MCP's result: failures are tool errors (the
    /// agent reads them), never protocol errors.
    async fn finish(&self, f: impl std::future::Future<Output = ToolResult>) -> Result<CallToolResult, ErrorData> {
        Ok(match f.await {
            Ok((summary, v)) => ok(summary, v),
            Err(e) => fail(e),
        })
    }
}

fn check_id(id: &str) -> Result<(), ToolError> {
    if id.trim().is_empty() {
        return Err(ToolError::invalid("sandbox_id is required"));
    }
    Ok(())
}

/// `pip:x`, `npm:x`, `apt:x`, or a bare name for the template's language
/// (npm for templates named after Node, pip otherwise).
fn packages(names: &[String], template: &str) -> Result<Option<InstallPackages>, ToolError> {
    if names.is_empty() {
        return Ok(None);
    }
    let node = ["node", "nodejs", "javascript", "js", "typescript"].iter().any(|n| template.to_ascii_lowercase().contains(n));
    let mut p = InstallPackages::default();
    for n in names {
        let n = n.trim();
        match n.split_once(':') {
            Some(("pip", x)) => p.pip.push(x.to_string()),
            Some(("npm", x)) => p.npm.push(x.to_string()),
            Some(("apt", x)) => p.apt.push(x.to_string()),
            _ if node => p.npm.push(n.to_string()),
            _ => p.pip.push(n.to_string()),
        }
    }
    Ok(Some(p))
}

fn resource_usage(m: Option<&airlock_sdk::SandboxMetric>, d: &SandboxDetail) -> Value {
    match m {
        Some(m) => json!({
            "cpu_percent": m.cpu_used_pct,
            "cpu_count": m.cpu_count,
            "memory_used_bytes": m.mem_used,
            "memory_limit_bytes": m.mem_total,
            "disk_used_bytes": m.disk_used,
            "disk_limit_bytes": m.disk_total,
            "network_bytes_received": m.net_rx_bytes,
            "network_bytes_sent": m.net_tx_bytes,
        }),
        None => json!({
            "cpu_percent": null,
            "cpu_count": d.cpu_count,
            "memory_used_bytes": null,
            "memory_limit_bytes": d.memory_mb * 1024 * 1024,
            "disk_used_bytes": null,
            "disk_limit_bytes": d.disk_size_mb * 1024 * 1024,
            "network_bytes_received": null,
            "network_bytes_sent": null,
        }),
    }
}

/// Seconds from the sandbox's start to its deadline.
fn lifetime_s(d: &SandboxDetail) -> Option<u64> {
    let start = airlock_proto::time::parse_rfc3339(&d.started_at)?;
    let end = airlock_proto::time::parse_rfc3339(&d.end_at)?;
    end.duration_since(start).ok().map(|x| x.as_secs())
}

fn status_of(d: &SandboxDetail) -> &str {
    match d.state.as_str() {
        "paused" => "stopped",
        s => s,
    }
}

// ---------------------------------------------------------------- arguments

#[derive(Debug, Deserialize, JsonSchema)]
pub(crate) struct CreateArgs {
    /// Template to start from (default: base).
    #[serde(default)]
    pub(crate) template: Option<String>,
    /// A name for the sandbox (kept as its `name` metadata).
    #[serde(default)]
    pub(crate) name: Option<String>,
    /// Seconds the sandbox lives before it is removed (default: the server's).
    #[serde(default)]
    pub(crate) timeout: Option<u64>,
    /// Environment variables every command and code context gets.
    #[serde(default)]
    pub(crate) env_vars: BTreeMap<String, String>,
    /// Packages to install at creation: `pip:name`, `npm:name`, `apt:name`, or a bare name for the template's language.
    #[serde(default)]
    pub(crate) install_packages: Vec<String>,
    /// A shell script run as root once the sandbox is up (after the packages).
    #[serde(default)]
    pub(crate) startup_script: Option<String>,
    /// Labels to find the sandbox by.
    #[serde(default)]
    pub(crate) metadata: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub(crate) struct ExecuteArgs {
    pub(crate) sandbox_id: String,
    /// The code to run.
    pub(crate) code: String,
    /// python, javascript or bash (default: python).
    #[serde(default)]
    #[schemars(extend("enum" = ["python", "javascript", "bash"]))]
    pub(crate) language: Option<String>,
    /// Seconds before the execution is killed (default 60, at most 3600).
    #[serde(default)]
    pub(crate) timeout: Option<u64>,
    /// Working directory (default: the user's home).
    #[serde(default)]
    pub(crate) working_dir: Option<String>,
    /// Environment variables for this execution only.
    #[serde(default)]
    pub(crate) env_vars: BTreeMap<String, String>,
    /// Return stdout and stderr (default true).
    #[serde(default)]
    pub(crate) capture_output: Option<bool>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub(crate) struct ListArgs {
    /// running, stopped or all (default: all).
    #[serde(default)]
    #[schemars(extend("enum" = ["running", "stopped", "all"]))]
    pub(crate) status: Option<String>,
    /// Only sandboxes of this template.
    #[serde(default)]
    pub(crate) template: Option<String>,
    /// At most this many (default 50, at most 1000).
    #[serde(default)]
    pub(crate) limit: Option<u32>,
    /// created_at, name or status (default: created_at).
    #[serde(default)]
    #[schemars(extend("enum" = ["created_at", "name", "status"]))]
    pub(crate) sort_by: Option<String>,
    /// asc or desc (default: desc).
    #[serde(default)]
    #[schemars(extend("enum" = ["asc", "desc"]))]
    pub(crate) order: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub(crate) struct IdArgs {
    pub(crate) sandbox_id: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub(crate) struct ConfigureArgs {
    pub(crate) sandbox_id: String,
    /// Variables to set (an empty value removes one); every later command and new code context sees them.
    #[serde(default)]
    pub(crate) env_vars: BTreeMap<String, String>,
    /// Packages to install now: `pip:name`, `npm:name`, `apt:name`, or a bare name (pip).
    #[serde(default)]
    pub(crate) install_packages: Vec<String>,
    /// Shell commands to run in order (the first failing one stops the rest).
    #[serde(default)]
    pub(crate) run_commands: Vec<String>,
    /// Restart the sandbox afterwards, so running processes get the new environment too.
    #[serde(default)]
    pub(crate) restart: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub(crate) struct UploadArgs {
    pub(crate) sandbox_id: String,
    /// Absolute path, or relative to the user's home.
    pub(crate) file_path: String,
    pub(crate) content: String,
    /// text or base64 (default: text).
    #[serde(default)]
    #[schemars(extend("enum" = ["text", "base64"]))]
    pub(crate) encoding: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub(crate) struct LogsArgs {
    pub(crate) sandbox_id: String,
    /// The newest this many entries (default 100).
    #[serde(default)]
    pub(crate) lines: Option<u32>,
    /// Include each entry's timestamp (default true).
    #[serde(default)]
    pub(crate) include_timestamps: Option<bool>,
    /// debug, info, warn or error: that level and above (default: all).
    #[serde(default)]
    #[schemars(extend("enum" = ["debug", "info", "warn", "error"]))]
    pub(crate) log_level: Option<String>,
    /// Keep reading new entries for `follow_seconds`, sending each as a progress notification.
    #[serde(default)]
    pub(crate) follow: bool,
    /// How long a followed read lasts (default 10, at most 300).
    #[serde(default)]
    pub(crate) follow_seconds: Option<u64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub(crate) struct RunCommandArgs {
    pub(crate) sandbox_id: String,
    /// A shell command line (run with bash -c).
    pub(crate) command: String,
    /// Seconds before the command is killed (default 60, at most 3600).
    #[serde(default)]
    pub(crate) timeout: Option<u64>,
    #[serde(default)]
    pub(crate) working_dir: Option<String>,
    #[serde(default)]
    pub(crate) env_vars: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub(crate) struct ReadFileArgs {
    pub(crate) sandbox_id: String,
    pub(crate) file_path: String,
    /// text, base64 or auto (default: auto, text when the file is UTF-8).
    #[serde(default)]
    #[schemars(extend("enum" = ["text", "base64", "auto"]))]
    pub(crate) encoding: Option<String>,
    /// Read at most this many bytes (default 1 MiB, at most 8 MiB).
    #[serde(default)]
    pub(crate) max_bytes: Option<u64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub(crate) struct ListFilesArgs {
    pub(crate) sandbox_id: String,
    /// Directory to list (default: the user's home).
    #[serde(default)]
    pub(crate) path: Option<String>,
    /// How deep to go (default 1, at most 10).
    #[serde(default)]
    pub(crate) depth: Option<u32>,
}

// -------------------------------------------------------------------- tools

#[tool_router]
impl AirlockTools {
    #[tool(description = "Create a sandbox from a template, with environment variables, packages to install, a startup script and metadata. Returns its id.")]
    async fn sandbox_create(&self, Parameters(a): Parameters<CreateArgs>, ctx: RequestContext<RoleServer>) -> Result<CallToolResult, ErrorData> {
        self.finish(async {
            let c = self.client(&ctx)?;
            let template = a.template.clone().filter(|t| !t.trim().is_empty()).unwrap_or_else(|| airlock_sdk::DEFAULT_TEMPLATE.to_string());
            let mut b = Sandbox::builder().client(&c).template(template.clone()).envs(a.env_vars.clone());
            for (k, v) in &a.metadata {
                b = b.metadata(k.clone(), v.clone());
            }
            if let Some(n) = a.name.as_deref().filter(|n| !n.is_empty()) {
                b = b.metadata("name", n);
            }
            if let Some(t) = a.timeout {
                if t == 0 {
                    return Err(ToolError::invalid("timeout must be at least 1 second"));
                }
                b = b.timeout(Duration::from_secs(t));
            }
            let pk = packages(&a.install_packages, &template)?;
            if let Some(p) = pk {
                b = b.install_packages(p);
            }
            if let Some(s) = a.startup_script.as_deref().filter(|s| !s.trim().is_empty()) {
                b = b.startup_script(s);
            }
            let sbx = b.create().await?;
            let d = c.info(sbx.id()).await.map_err(|e| ToolError::sandbox(sbx.id(), e))?;
            let v = json!({
                "sandbox_id": sbx.id(),
                "name": a.name,
                "template": d.template_id,
                "status": status_of(&d),
                "env_vars_configured": a.env_vars.len(),
                "packages_to_install": a.install_packages,
                "startup_script_configured": a.startup_script.as_deref().is_some_and(|s| !s.trim().is_empty()),
                "timeout": lifetime_s(&d),
                "metadata": d.metadata,
                "url": format!("{}/sandboxes/{}", c.config().api_url.trim_end_matches('/'), sbx.id()),
                "created_at": d.started_at,
                "expires_at": d.end_at,
            });
            Ok((format!("Created sandbox {} from template {}.", sbx.id(), d.template_id), v))
        })
        .await
    }

    #[tool(
        description = "Run code in a running sandbox: python, javascript (Node.js) or bash. Returns its output, exit code and timings. Sends progress while it runs; cancelling the call kills the execution."
    )]
    async fn sandbox_execute(&self, Parameters(a): Parameters<ExecuteArgs>, ctx: RequestContext<RoleServer>) -> Result<CallToolResult, ErrorData> {
        self.finish(async {
            let language = a.language.as_deref().unwrap_or("python").trim().to_ascii_lowercase();
            let (program, flag, ext) = match language.as_str() {
                "python" | "python3" | "py" => ("python3", "-c", "py"),
                "javascript" | "js" | "node" => ("node", "-e", "js"),
                "bash" | "sh" | "shell" => ("bash", "-c", "sh"),
                other => return Err(ToolError::invalid(format!("unsupported language '{other}': use python, javascript or bash"))),
            };
            let language = match program {
                "python3" => "python",
                "node" => "javascript",
                _ => "bash",
            };
            let timeout = timeout_of(a.timeout)?;
            let c = self.client(&ctx)?;
            let sbx = self.running(&c, &a.sandbox_id).await?;
            let execution_id = format!("exec-{}", SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
            let args = if a.code.len() <= MAX_INLINE_CODE {
                vec![flag.to_string(), a.code.clone()]
            } else {
                let path = format!("/tmp/{execution_id}.{ext}");
                sbx.files().write(&path, a.code.clone().into_bytes()).await?;
                vec![path]
            };
            let mut b = sbx.commands().exec(program, args).envs(a.env_vars.clone()).stdin(false);
            if let Some(w) = a.working_dir.as_deref().filter(|w| !w.is_empty()) {
                b = b.cwd(w);
            }
            let since = SystemTime::now();
            let ran = drive(b, timeout, &Progress::of(&ctx), &ctx, &format!("{language} execution")).await?;
            let (cpu_ms, rss) = usage_of(&sbx, ran.pid, since).await;
            let capture = a.capture_output.unwrap_or(true);
            let status = if ran.exit_code == 0 { "completed" } else { "failed" };
            let v = json!({
                "execution_id": execution_id,
                "sandbox_id": a.sandbox_id,
                "output": if capture { Value::from(ran.stdout.clone()) } else { Value::Null },
                "error": if capture && !ran.stderr.is_empty() { Value::from(ran.stderr.clone()) } else { ran.error.clone().filter(|_| ran.exit_code != 0).map(Value::from).unwrap_or(Value::Null) },
                "exit_code": ran.exit_code,
                "status": status,
                "language": language,
                "execution_time": ran.elapsed.as_secs_f64(),
                "memory_used": rss,
                "cpu_time": cpu_ms.map(|ms| ms as f64 / 1000.0),
                "output_truncated": ran.stdout_truncated || ran.stderr_truncated,
            });
            let summary = format!("{language} execution {status} with exit code {} in {:.2} s.", ran.exit_code, ran.elapsed.as_secs_f64());
            Ok((summary, v))
        })
        .await
    }

    #[tool(description = "List sandboxes with their status, uptime and resource usage.")]
    async fn sandbox_list(&self, Parameters(a): Parameters<ListArgs>, ctx: RequestContext<RoleServer>) -> Result<CallToolResult, ErrorData> {
        self.finish(async {
            let c = self.client(&ctx)?;
            let mut list = c.list();
            match a.status.as_deref().unwrap_or("all") {
                "running" => list = list.state(SandboxState::Running),
                "stopped" | "paused" => list = list.state(SandboxState::Paused),
                "all" | "" => {}
                o => return Err(ToolError::invalid(format!("invalid status '{o}': use running, stopped or all"))),
            }
            if let Some(t) = a.template.as_deref().filter(|t| !t.is_empty()) {
                list = list.template(t);
            }
            let limit = a.limit.unwrap_or(50);
            if !(1..=1000).contains(&limit) {
                return Err(ToolError::invalid(format!("limit must be between 1 and 1000, got {limit}")));
            }
            let desc = match a.order.as_deref().unwrap_or("desc") {
                "desc" => true,
                "asc" => false,
                o => return Err(ToolError::invalid(format!("invalid order '{o}': use asc or desc"))),
            };
            let mut all = list.all().await?;
            let name = |d: &SandboxDetail| d.metadata.get("name").cloned().unwrap_or_default();
            match a.sort_by.as_deref().unwrap_or("created_at") {
                "created_at" => all.sort_by(|x, y| x.started_at.cmp(&y.started_at)),
                "name" => all.sort_by_key(name),
                "status" => all.sort_by(|x, y| x.state.cmp(&y.state)),
                o => return Err(ToolError::invalid(format!("invalid sort_by '{o}': use created_at, name or status"))),
            }
            if desc {
                all.reverse();
            }
            let total = all.len();
            let running = all.iter().filter(|d| d.state == "running").count();
            all.truncate(limit as usize);
            let ids: Vec<&str> = all.iter().filter(|d| d.state == "running").map(|d| d.sandbox_id.as_str()).collect();
            let metrics = if ids.is_empty() { Default::default() } else { c.latest_metrics(&ids).await.unwrap_or_default() };
            let items: Vec<Value> = all
                .iter()
                .map(|d| {
                    json!({
                        "sandbox_id": d.sandbox_id,
                        "name": d.metadata.get("name"),
                        "template": d.template_id,
                        "status": status_of(d),
                        "created_at": d.started_at,
                        "uptime": if d.state == "running" { secs_since(&d.started_at) } else { None },
                        "last_activity": metrics.get(&d.sandbox_id).map(|m| m.timestamp.clone()).unwrap_or_else(|| d.started_at.clone()),
                        "expires_at": d.end_at,
                        "metadata": d.metadata,
                        "resource_usage": resource_usage(metrics.get(&d.sandbox_id), d),
                    })
                })
                .collect();
            let v = json!({"sandboxes": items, "total_count": total, "running_count": running, "stopped_count": total - running});
            Ok((format!("{total} sandboxes ({running} running, {} stopped).", total - running), v))
        })
        .await
    }

    #[tool(
        description = "A sandbox's status: uptime, resource usage, environment (language versions, packages, variables, working directory), execution statistics, last activity and expiry."
    )]
    async fn sandbox_status(&self, Parameters(a): Parameters<IdArgs>, ctx: RequestContext<RoleServer>) -> Result<CallToolResult, ErrorData> {
        self.finish(async {
            let c = self.client(&ctx)?;
            check_id(&a.sandbox_id)?;
            let d = c.info(&a.sandbox_id).await.map_err(|e| ToolError::sandbox(&a.sandbox_id, e))?;
            let running = d.state == "running";
            let mut metrics = if running { c.latest_metrics(&[a.sandbox_id.as_str()]).await.unwrap_or_default() } else { Default::default() };
            if running && metrics.is_empty() {
                // Not sampled yet (a new sandbox): one live reading.
                if let Some(m) = live_metric(&c, &a.sandbox_id).await {
                    metrics.insert(a.sandbox_id.clone(), m);
                }
            }
            // Counters first: the environment probe below is an execution too.
            let log = c.execution_log(&a.sandbox_id, &LogQuery { lines: Some(1), ..Default::default() }).await.ok();
            let stats = log.as_ref().map(|l| l.stats.clone()).unwrap_or_default();
            let environment = if running { environment(&c, &a.sandbox_id).await } else { Value::Null };
            let v = json!({
                "sandbox_id": d.sandbox_id,
                "name": d.metadata.get("name"),
                "template": d.template_id,
                "status": status_of(&d),
                "uptime": if running { secs_since(&d.started_at) } else { None },
                "created_at": d.started_at,
                "resource_usage": resource_usage(metrics.get(&d.sandbox_id), &d),
                "environment": environment,
                "executions": {
                    "total": stats.total,
                    "successful": stats.successful,
                    "failed": stats.failed,
                    "running": stats.running,
                    "average_duration": stats.average_duration_ms / 1000.0,
                },
                "last_activity": stats.last_activity.clone().unwrap_or_else(|| d.started_at.clone()),
                "expires_at": d.end_at,
                "metadata": d.metadata,
            });
            Ok((format!("Sandbox {} is {}; {} executions ({} failed).", d.sandbox_id, status_of(&d), stats.total, stats.failed), v))
        })
        .await
    }

    #[tool(
        description = "Configure a running sandbox: set environment variables for every later command, install packages (pip, npm, apt), run set-up commands, optionally restart it."
    )]
    async fn sandbox_configure(&self, Parameters(a): Parameters<ConfigureArgs>, ctx: RequestContext<RoleServer>) -> Result<CallToolResult, ErrorData> {
        self.finish(async {
            let c = self.client(&ctx)?;
            let sbx = self.running(&c, &a.sandbox_id).await?;
            let req = ConfigureSandbox { env_vars: a.env_vars.clone(), install_packages: packages(&a.install_packages, sbx.template_id())?, run_commands: a.run_commands.clone(), restart: a.restart };
            let progress = Progress::of(&ctx);
            progress.send(0.0, None, "configuring").await;
            let r = c.configure(&a.sandbox_id, &req).await.map_err(|e| ToolError::sandbox(&a.sandbox_id, e))?;
            let failed = r.commands_executed.iter().find(|x| x.exit_code != 0).map(|x| x.command.clone());
            let v = json!({
                "sandbox_id": a.sandbox_id,
                "env_vars_updated": r.env_vars_updated,
                "packages_installed": r.packages_installed,
                "commands_executed": r.commands_executed.iter().map(|x| json!({"command": x.command, "exit_code": x.exit_code, "output": x.output, "duration": x.duration_ms as f64 / 1000.0})).collect::<Vec<_>>(),
                "configuration_time": r.configuration_time_ms as f64 / 1000.0,
                "restarted": r.restarted,
                "restart_required": r.restart_required,
            });
            if let Some(cmd) = failed {
                let mut e = ToolError::new(Code::ExecutionError, format!("configure stopped at a failing command: {cmd}"));
                e.message.push_str(&format!(" ({})", v["commands_executed"]));
                return Err(e);
            }
            Ok((
                format!(
                    "Configured sandbox {}: {} variables, {} packages, {} commands in {:.2} s.",
                    a.sandbox_id,
                    r.env_vars_updated.len(),
                    r.packages_installed.len(),
                    r.commands_executed.len(),
                    r.configuration_time_ms as f64 / 1000.0
                ),
                v,
            ))
        })
        .await
    }

    #[tool(description = "Write a file into a running sandbox (text or base64 content). Returns its size, SHA-256 and permissions.")]
    async fn sandbox_upload(&self, Parameters(a): Parameters<UploadArgs>, ctx: RequestContext<RoleServer>) -> Result<CallToolResult, ErrorData> {
        self.finish(async {
            let bytes = match a.encoding.as_deref().unwrap_or("text") {
                "text" => a.content.clone().into_bytes(),
                "base64" => base64::engine::general_purpose::STANDARD.decode(a.content.trim()).map_err(|e| ToolError::invalid(format!("content is not valid base64: {e}")))?,
                o => return Err(ToolError::invalid(format!("invalid encoding '{o}': use text or base64"))),
            };
            if bytes.len() > MAX_UPLOAD_BYTES {
                return Err(ToolError::new(Code::InsufficientResources, format!("the file is {} bytes; at most {MAX_UPLOAD_BYTES} can be uploaded through MCP", bytes.len())));
            }
            if a.file_path.trim().is_empty() {
                return Err(ToolError::invalid("file_path is required"));
            }
            let c = self.client(&ctx)?;
            let sbx = self.running(&c, &a.sandbox_id).await?;
            let checksum = hex(&sha2::Sha256::digest(&bytes));
            let size = bytes.len();
            let w = sbx.files().write(&a.file_path, bytes).await?;
            let st = sbx.files().stat(&w.path).await.ok();
            let v = json!({
                "sandbox_id": a.sandbox_id,
                "file_path": w.path,
                "size_bytes": size,
                "checksum": checksum,
                "checksum_algorithm": "sha256",
                "permissions": st.as_ref().map(|s| s.permissions.clone()),
                "created_at": st.and_then(|s| s.modified_time).unwrap_or_else(now_rfc3339),
            });
            Ok((format!("Wrote {size} bytes to {}.", w.path), v))
        })
        .await
    }

    #[tool(
        description = "A sandbox's execution log: commands and code runs with their outcome, their stdout/stderr lines, and system events, each with timestamp and level. With follow, keeps reading new entries for follow_seconds."
    )]
    async fn sandbox_logs(&self, Parameters(a): Parameters<LogsArgs>, ctx: RequestContext<RoleServer>) -> Result<CallToolResult, ErrorData> {
        self.finish(async {
            check_id(&a.sandbox_id)?;
            let level = match a.log_level.as_deref().filter(|l| !l.is_empty()) {
                Some(l) => Some(LogLevel::parse(l).ok_or_else(|| ToolError::invalid(format!("invalid log_level '{l}': use debug, info, warn or error")))?),
                None => None,
            };
            let lines = a.lines.unwrap_or(100);
            if !(1..=10_000).contains(&lines) {
                return Err(ToolError::invalid(format!("lines must be between 1 and 10000, got {lines}")));
            }
            let c = self.client(&ctx)?;
            let q = LogQuery { lines: Some(lines), level, since: None };
            let stamps = a.include_timestamps.unwrap_or(true);
            let show = |e: &airlock_sdk::LogEntry| {
                let mut v = json!({"level": e.level, "source": e.source, "message": e.message});
                if stamps {
                    v["timestamp"] = e.timestamp.clone().into();
                }
                for (k, x) in [("pid", e.pid.map(Value::from)), ("exit_code", e.exit_code.map(Value::from)), ("duration_ms", e.duration_ms.map(Value::from))] {
                    if let Some(x) = x {
                        v[k] = x;
                    }
                }
                v
            };
            let (entries, total) = if a.follow {
                let secs = a.follow_seconds.unwrap_or(DEFAULT_FOLLOW_S);
                if !(1..=MAX_FOLLOW_S).contains(&secs) {
                    return Err(ToolError::invalid(format!("follow_seconds must be between 1 and {MAX_FOLLOW_S}, got {secs}")));
                }
                let progress = Progress::of(&ctx);
                let mut stream = c.follow_log(&a.sandbox_id, &q).await.map_err(|e| ToolError::sandbox(&a.sandbox_id, e))?;
                let until = tokio::time::sleep(Duration::from_secs(secs));
                tokio::pin!(until);
                let mut got = Vec::new();
                loop {
                    tokio::select! {
                        e = stream.next() => match e {
                            Some(Ok(e)) => {
                                progress.send(got.len() as f64 + 1.0, None, format!("[{}] {}: {}", e.level.as_str(), serde_json::to_value(e.source).ok().and_then(|s| s.as_str().map(str::to_string)).unwrap_or_default(), e.message)).await;
                                got.push(e);
                            }
                            Some(Err(err)) => return Err(err.into()),
                            None => break,
                        },
                        _ = &mut until => break,
                        _ = ctx.ct.cancelled() => break,
                    }
                }
                let n = got.len() as u64;
                (got, n)
            } else {
                let l = c.execution_log(&a.sandbox_id, &q).await.map_err(|e| ToolError::sandbox(&a.sandbox_id, e))?;
                (l.log_entries, l.total_lines)
            };
            let oldest = entries.first().map(|e| e.timestamp.clone());
            let v = json!({
                "sandbox_id": a.sandbox_id,
                "entries": entries.iter().map(show).collect::<Vec<_>>(),
                "total_lines": total,
                "returned_lines": entries.len(),
                "oldest_entry": oldest,
                "followed": a.follow,
            });
            Ok((format!("{} log entries of sandbox {} ({} matching in all).", entries.len(), a.sandbox_id, total), v))
        })
        .await
    }

    #[tool(description = "Stop a sandbox: its processes stop, its files are kept, and sandbox_start starts it again.")]
    async fn sandbox_stop(&self, Parameters(a): Parameters<IdArgs>, ctx: RequestContext<RoleServer>) -> Result<CallToolResult, ErrorData> {
        self.finish(async {
            check_id(&a.sandbox_id)?;
            let c = self.client(&ctx)?;
            let changed = c.pause_with(&a.sandbox_id, false).await.map_err(|e| ToolError::sandbox(&a.sandbox_id, e))?;
            let v = json!({"sandbox_id": a.sandbox_id, "status": "stopped", "was_running": changed, "processes_stopped": true, "files_kept": true, "can_restart": true, "stopped_at": now_rfc3339()});
            Ok((if changed { format!("Stopped sandbox {}; its files are kept.", a.sandbox_id) } else { format!("Sandbox {} was already stopped.", a.sandbox_id) }, v))
        })
        .await
    }

    #[tool(description = "Start a stopped sandbox again (a fresh boot over its kept files).")]
    async fn sandbox_start(&self, Parameters(a): Parameters<IdArgs>, ctx: RequestContext<RoleServer>) -> Result<CallToolResult, ErrorData> {
        self.finish(async {
            check_id(&a.sandbox_id)?;
            let c = self.client(&ctx)?;
            c.connect(&a.sandbox_id).await.map_err(|e| ToolError::sandbox(&a.sandbox_id, e))?;
            let d = c.info(&a.sandbox_id).await.map_err(|e| ToolError::sandbox(&a.sandbox_id, e))?;
            let v = json!({"sandbox_id": a.sandbox_id, "status": status_of(&d), "expires_at": d.end_at});
            Ok((format!("Sandbox {} is {}.", a.sandbox_id, status_of(&d)), v))
        })
        .await
    }

    #[tool(description = "Delete a sandbox: its processes, files, network and resources are all released.")]
    async fn sandbox_delete(&self, Parameters(a): Parameters<IdArgs>, ctx: RequestContext<RoleServer>) -> Result<CallToolResult, ErrorData> {
        self.finish(async {
            check_id(&a.sandbox_id)?;
            let c = self.client(&ctx)?;
            c.kill(&a.sandbox_id).await.map_err(|e| ToolError::sandbox(&a.sandbox_id, e))?;
            let v = json!({"sandbox_id": a.sandbox_id, "deleted": true, "cleaned": ["processes", "filesystem", "network", "resources"], "deleted_at": now_rfc3339()});
            Ok((format!("Deleted sandbox {}.", a.sandbox_id), v))
        })
        .await
    }

    #[tool(
        description = "Run a shell command (bash -c) in a running sandbox and return its stdout, stderr and exit code. Sends progress while it runs; cancelling the call kills it."
    )]
    async fn sandbox_run_command(&self, Parameters(a): Parameters<RunCommandArgs>, ctx: RequestContext<RoleServer>) -> Result<CallToolResult, ErrorData> {
        self.finish(async {
            if a.command.trim().is_empty() {
                return Err(ToolError::invalid("command is required"));
            }
            let timeout = timeout_of(a.timeout)?;
            let c = self.client(&ctx)?;
            let sbx = self.running(&c, &a.sandbox_id).await?;
            let mut b = sbx.commands().command(a.command.clone()).envs(a.env_vars.clone()).stdin(false);
            if let Some(w) = a.working_dir.as_deref().filter(|w| !w.is_empty()) {
                b = b.cwd(w);
            }
            let ran = drive(b, timeout, &Progress::of(&ctx), &ctx, "command").await?;
            let v = json!({
                "sandbox_id": a.sandbox_id,
                "command": a.command,
                "stdout": ran.stdout,
                "stderr": ran.stderr,
                "exit_code": ran.exit_code,
                "success": ran.exit_code == 0,
                "duration": ran.elapsed.as_secs_f64(),
                "output_truncated": ran.stdout_truncated || ran.stderr_truncated,
            });
            Ok((format!("Command exited with code {} in {:.2} s.", ran.exit_code, ran.elapsed.as_secs_f64()), v))
        })
        .await
    }

    #[tool(description = "Read a file from a running sandbox, as text or base64.")]
    async fn sandbox_read_file(&self, Parameters(a): Parameters<ReadFileArgs>, ctx: RequestContext<RoleServer>) -> Result<CallToolResult, ErrorData> {
        self.finish(async {
            let max = a.max_bytes.unwrap_or(DEFAULT_READ_BYTES);
            if !(1..=MAX_READ_BYTES).contains(&max) {
                return Err(ToolError::invalid(format!("max_bytes must be between 1 and {MAX_READ_BYTES}, got {max}")));
            }
            let enc = a.encoding.as_deref().unwrap_or("auto");
            if !matches!(enc, "text" | "base64" | "auto") {
                return Err(ToolError::invalid(format!("invalid encoding '{enc}': use text, base64 or auto")));
            }
            let c = self.client(&ctx)?;
            let sbx = self.running(&c, &a.sandbox_id).await?;
            let mut stream = sbx.files().read_stream(&a.file_path).await.map_err(|e| match e {
                airlock_sdk::Error::NotFound(m) => ToolError::new(Code::ExecutionError, format!("file not found: {m}")),
                e => e.into(),
            })?;
            let size = stream.len();
            let mut data = Vec::new();
            let mut truncated = false;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                let room = (max as usize).saturating_sub(data.len());
                if chunk.len() > room {
                    data.extend_from_slice(&chunk[..room]);
                    truncated = true;
                    break;
                }
                data.extend_from_slice(&chunk);
            }
            let (content, encoding) = match (enc, String::from_utf8(data)) {
                ("base64", Ok(s)) => (base64::engine::general_purpose::STANDARD.encode(s.as_bytes()), "base64"),
                (_, Err(e)) if enc == "text" => (String::from_utf8_lossy(e.as_bytes()).into_owned(), "text"),
                (_, Err(e)) => (base64::engine::general_purpose::STANDARD.encode(e.as_bytes()), "base64"),
                (_, Ok(s)) => (s, "text"),
            };
            let v = json!({"sandbox_id": a.sandbox_id, "file_path": a.file_path, "content": content, "encoding": encoding, "size_bytes": size, "truncated": truncated});
            Ok((format!("Read {} ({} bytes{}).", a.file_path, size.map(|s| s.to_string()).unwrap_or_else(|| "?".into()), if truncated { ", truncated" } else { "" }), v))
        })
        .await
    }

    #[tool(description = "List a directory in a running sandbox: names, types, sizes, permissions and modification times.")]
    async fn sandbox_list_files(&self, Parameters(a): Parameters<ListFilesArgs>, ctx: RequestContext<RoleServer>) -> Result<CallToolResult, ErrorData> {
        self.finish(async {
            let depth = a.depth.unwrap_or(1);
            if !(1..=10).contains(&depth) {
                return Err(ToolError::invalid(format!("depth must be between 1 and 10, got {depth}")));
            }
            let c = self.client(&ctx)?;
            let sbx = self.running(&c, &a.sandbox_id).await?;
            let path = a.path.clone().filter(|p| !p.is_empty()).unwrap_or_else(|| "/home/user".into());
            let entries = sbx.files().list_depth(&path, depth).await.map_err(|e| match e {
                airlock_sdk::Error::NotFound(m) => ToolError::new(Code::ExecutionError, format!("directory not found: {m}")),
                e => e.into(),
            })?;
            let items: Vec<Value> = entries
                .iter()
                .map(|e| json!({"name": e.name, "path": e.path, "type": format!("{:?}", e.file_type).to_ascii_lowercase(), "size": e.size, "permissions": e.permissions, "owner": e.owner, "modified": e.modified_time}))
                .collect();
            let v = json!({"sandbox_id": a.sandbox_id, "path": path, "entries": items, "count": entries.len()});
            Ok((format!("{} entries under {path}.", entries.len()), v))
        })
        .await
    }
}

/// One reading from the live metrics stream, for a sandbox the sampler
/// has not reached yet.
async fn live_metric(c: &Client, id: &str) -> Option<airlock_sdk::SandboxMetric> {
    let read = async {
        let mut s = c.metrics_stream(id, Duration::from_secs(1)).await.ok()?;
        s.next().await?.ok()
    };
    tokio::time::timeout(Duration::from_secs(5), read).await.ok().flatten()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Language versions, installed Python packages, the variable count and
/// the working directory, from one small probe command.
async fn environment(c: &Client, id: &str) -> Value {
    const PROBE: &str = r#"printf 'python=%s\n' "$(python3 --version 2>&1 | head -n1)"; printf 'node=%s\n' "$(node --version 2>/dev/null)"; printf 'bash=%s\n' "$BASH_VERSION"; printf 'packages=%s\n' "$(python3 -m pip list --disable-pip-version-check 2>/dev/null | tail -n +3 | wc -l)"; printf 'env=%s\n' "$(env | wc -l)"; printf 'cwd=%s\n' "$PWD""#;
    let Ok(sbx) = c.get(id).await else { return Value::Null };
    let out = match tokio::time::timeout(Duration::from_secs(20), sbx.commands().command(PROBE).timeout(Duration::from_secs(15)).stdin(false).run()).await {
        Ok(Ok(r)) => r.stdout,
        _ => return Value::Null,
    };
    let get = |k: &str| out.lines().find_map(|l| l.strip_prefix(&format!("{k}="))).map(str::trim).filter(|s| !s.is_empty() && !s.contains("not found")).map(str::to_string);
    let num = |k: &str| get(k).and_then(|s| s.parse::<u64>().ok());
    json!({
        "language_versions": {"python": get("python").map(|s| s.trim_start_matches("Python ").to_string()), "javascript": get("node").map(|s| s.trim_start_matches('v').to_string()), "bash": get("bash")},
        "installed_packages": num("packages"),
        "env_var_count": num("env"),
        "working_directory": get("cwd"),
    })
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for AirlockTools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("airlock", env!("CARGO_PKG_VERSION")))
            .with_instructions("Airlock sandboxes: create one with sandbox_create, run code with sandbox_execute or sandbox_run_command, move files with sandbox_upload and sandbox_read_file, and delete it with sandbox_delete when done.")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packages_follow_prefixes_and_the_template() {
        let p = packages(&["numpy".into(), "npm:left-pad".into(), "apt:jq".into()], "base").expect("ok").expect("some");
        assert_eq!((p.pip, p.npm, p.apt), (vec!["numpy".to_string()], vec!["left-pad".to_string()], vec!["jq".to_string()]));
        let p = packages(&["lodash".into()], "node").expect("ok").expect("some");
        assert_eq!(p.npm, vec!["lodash".to_string()]);
        assert!(packages(&[], "base").expect("ok").is_none());
    }

    #[test]
    fn timeouts_are_bounded() {
        assert_eq!(timeout_of(None).ok(), Some(Duration::from_secs(DEFAULT_EXEC_TIMEOUT_S)));
        assert!(timeout_of(Some(0)).is_err());
        assert!(timeout_of(Some(MAX_EXEC_TIMEOUT_S + 1)).is_err());
    }

    #[test]
    fn output_is_cut_on_a_char_boundary() {
        let (s, t) = cut("ééé".into(), 3);
        assert_eq!((s.as_str(), t), ("é", true));
        assert_eq!(cut("ab".into(), 3), ("ab".to_string(), false));
    }

    #[test]
    fn every_tool_is_listed_with_an_object_schema() {
        let tools = AirlockTools::new(Arc::new(Clients::Fixed(Client::new(airlock_sdk::Config::new("http://127.0.0.1:1", "k")).expect("client"))));
        let list = tools.tool_router.list_all();
        let names: Vec<String> = list.iter().map(|t| t.name.to_string()).collect();
        for n in [
            "sandbox_create",
            "sandbox_execute",
            "sandbox_list",
            "sandbox_status",
            "sandbox_configure",
            "sandbox_upload",
            "sandbox_logs",
            "sandbox_stop",
            "sandbox_start",
            "sandbox_delete",
            "sandbox_run_command",
            "sandbox_read_file",
            "sandbox_list_files",
        ] {
            assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
        }
        let exec = list.iter().find(|t| t.name == "sandbox_execute").expect("execute");
        let schema = serde_json::to_value(&*exec.input_schema).expect("schema");
        assert_eq!(schema["type"], "object");
        assert!(schema["required"].as_array().is_some_and(|r| r.iter().any(|x| x == "code")));
    }
}
