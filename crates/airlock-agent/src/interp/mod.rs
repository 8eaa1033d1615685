//! The code interpreter (E2B's port 49999 API), served by the agent:
//! stateful contexts for Python, JavaScript/TypeScript and Bash, and R and
//! Java when the template has them (`Rscript`; a JDK's `java` with jshell).
//!
//! Each context owns at most one kernel process, started on first use and
//! running as the sandbox's default user. A kernel is a small driver script
//! (`kernel.py`, `kernel.js`, `kernel.sh`, `kernel.R`, `kernel.java`,
//! compiled into the agent) that reads requests on fd 4 and reports results, errors and
//! completion as JSON lines on fd 3; the cell's own output, and that of any
//! subprocess it starts, arrives on ordinary stdout/stderr pipes, which the
//! agent streams as `stdout`/`stderr` events. One execution runs per context
//! at a time. A client that disconnects interrupts its execution (SIGINT,
//! state kept); a kernel that does not stop, or dies, is reported and
//! restarted on the next execution.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Interest};
use tokio::sync::mpsc;

use crate::http::{self as h, BodyError, Resp};
use crate::spawn::{self, pipe, read_nb, set_nonblocking, ReadResult};
use crate::users::UserError;
use crate::Agent;

const PY_DRIVER: &str = include_str!("kernel.py");
const JS_DRIVER: &str = include_str!("kernel.js");
const SH_DRIVER: &str = include_str!("kernel.sh");
const R_DRIVER: &str = include_str!("kernel.R");
const JAVA_DRIVER: &str = include_str!("kernel.java");
/// Where the Java driver's source is written for `java` to launch (the
/// single-file source launcher needs a file).
const JAVA_DRIVER_DIR: &str = "/tmp/.airlock-java-kernel";

/// How long a kernel may take to start (IPython with matplotlib imports
/// take a second or two on a small machine).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an interrupted execution may take to stop before its kernel is killed.
const INTERRUPT_GRACE: Duration = Duration::from_secs(3);
const KEEPALIVE: Duration = Duration::from_secs(5);

/// Why an interpreter request or execution failed. Request errors answer
/// with a plain-text status (`status`, `response`) before anything runs;
/// kernel and execution errors are reported inside the execution's stream.
/// Either way clients see `message()`.
#[derive(Debug, thiserror::Error)]
pub enum InterpError {
    #[error(transparent)]
    Body(#[from] BodyError),
    #[error("invalid JSON body")]
    Json(#[source] serde_json::Error),
    #[error("code is required")]
    MissingCode,
    #[error("context_id and language cannot be provided at the same time")]
    ContextAndLanguage,
    /// E2B's text, capital letter included: the SDKs show it as it is.
    #[error("Context {0} not found")]
    ContextNotFound(String),
    #[error("language '{0}' is not supported (python, javascript, typescript, bash, r, java)")]
    UnsupportedLanguage(String),
    /// The template lacks the language's runtime.
    #[error("the {kind:?} kernel needs `{program}`, which this sandbox's template does not have ({hint})")]
    Missing { kind: Kind, program: &'static str, hint: &'static str },
    #[error("no route for {0}")]
    NoRoute(String),
    #[error(transparent)]
    User(#[from] UserError),
    #[error("pipe")]
    Pipe(#[source] io::Error),
    #[error("starting the {kind:?} kernel")]
    Spawn {
        kind: Kind,
        #[source]
        source: io::Error,
    },
    #[error("kernel pipes missing")]
    PipesMissing,
    /// Setting up the agent's ends of the kernel's pipes.
    #[error(transparent)]
    Fd(io::Error),
    /// The driver never said it was ready; `output` is what it printed.
    #[error("the {kind:?} kernel failed to start: {}", output.trim())]
    NotReady { kind: Kind, output: String },
    #[error(transparent)]
    Encode(serde_json::Error),
    #[error("invalid environment variable name {0:?}")]
    InvalidEnvName(String),
    #[error("{op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl InterpError {
    fn status(&self) -> StatusCode {
        match self {
            Self::ContextNotFound(_) | Self::NoRoute(_) => StatusCode::NOT_FOUND,
            Self::Body(_) | Self::Json(_) | Self::MissingCode | Self::ContextAndLanguage | Self::UnsupportedLanguage(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// What the client is told: the message followed by its causes. Errors
    /// forwarded from other modules (users, request bodies, descriptors,
    /// encoding) show their own message only, as the rest of the agent
    /// shows them; their causes stay in `source()`.
    pub fn message(&self) -> String {
        let mut text = self.to_string();
        if matches!(self, Self::Body(_) | Self::User(_) | Self::Fd(_) | Self::Encode(_)) {
            return text;
        }
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            text.push_str(": ");
            text.push_str(&c.to_string());
            cause = c.source();
        }
        text
    }

    fn response(&self) -> Resp {
        text(self.status(), self.message())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Python,
    JavaScript,
    Bash,
    R,
    Java,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Python => "python",
            Kind::JavaScript => "javascript",
            Kind::Bash => "bash",
            Kind::R => "r",
            Kind::Java => "java",
        }
    }
}

/// E2B's language normalisation: trimmed, lowercased, `js`→`javascript`,
/// `ts`→`typescript` (run by the JavaScript kernel), default `python`.
pub fn normalise(lang: Option<&str>) -> Result<(Kind, String), InterpError> {
    let l = lang.unwrap_or("").trim().to_lowercase();
    Ok(match l.as_str() {
        "" | "python" | "python3" | "py" => (Kind::Python, "python".into()),
        "js" | "javascript" | "node" => (Kind::JavaScript, "javascript".into()),
        "ts" | "typescript" => (Kind::JavaScript, "typescript".into()),
        "bash" | "sh" | "shell" => (Kind::Bash, "bash".into()),
        "r" => (Kind::R, "r".into()),
        "java" => (Kind::Java, "java".into()),
        other => return Err(InterpError::UnsupportedLanguage(other.to_string())),
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct ContextInfo {
    pub id: String,
    pub language: String,
    pub cwd: String,
}

struct Kernel {
    pid: i32,
    requests: tokio::net::unix::pipe::Sender,
    events: tokio::io::Lines<BufReader<tokio::net::unix::pipe::Receiver>>,
    stdout: AsyncFd<OwnedFd>,
    stderr: AsyncFd<OwnedFd>,
    cells: u64,
}

impl Drop for Kernel {
    fn drop(&mut self) {
        // SAFETY: killing the kernel's own process group.
        unsafe { libc::kill(-self.pid, libc::SIGKILL) };
    }
}

pub struct Context {
    info: ContextInfo,
    kind: Kind,
    kernel: tokio::sync::Mutex<Option<Kernel>>,
    /// Pid of the running kernel, readable without waiting for an execution.
    pid: AtomicI32,
}

#[derive(Default)]
pub struct Interpreter {
    contexts: Mutex<HashMap<String, Arc<Context>>>,
    defaults: Mutex<HashMap<Kind, String>>,
}

impl Interpreter {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Context>>> {
        self.contexts.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn create(&self, kind: Kind, language: String, cwd: String) -> Arc<Context> {
        let id = crate::fs::watch::random_id();
        let c = Arc::new(Context { info: ContextInfo { id: id.clone(), language, cwd }, kind, kernel: tokio::sync::Mutex::new(None), pid: AtomicI32::new(0) });
        self.map().insert(id, c.clone());
        c
    }

    fn default_for(&self, kind: Kind, language: String, cwd: &str) -> Arc<Context> {
        let mut d = self.defaults.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(id) = d.get(&kind) {
            if let Some(c) = self.map().get(id) {
                return c.clone();
            }
        }
        let c = self.create(kind, language, cwd.to_string());
        d.insert(kind, c.info.id.clone());
        c
    }
}

#[derive(Debug, Deserialize, Default)]
struct ExecuteRequest {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    context_id: Option<String>,
    #[serde(default)]
    language: Option<String>,
    #[serde(default)]
    env_vars: Option<BTreeMap<String, Value>>,
}

#[derive(Debug, Deserialize, Default)]
struct CreateContext {
    #[serde(default)]
    language: Option<String>,
    #[serde(default)]
    cwd: Option<String>,
}

fn text(status: StatusCode, msg: impl Into<String>) -> Resp {
    let mut r = hyper::Response::new(h::full(msg.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

async fn json_body<T: for<'de> Deserialize<'de> + Default>(req: Request<Incoming>) -> Result<T, InterpError> {
    let b = crate::http::read_limited(req.into_body(), 16 * 1024 * 1024).await?;
    if b.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&b).map_err(InterpError::Json)
}

/// Routes of the port-49999 API.
pub async fn handle(agent: &Arc<Agent>, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().trim_end_matches('/').to_string();
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    let interp = &agent.interpreter;
    let home = agent.default_home();
    match (req.method().clone(), segs.as_slice()) {
        (Method::GET, ["health"]) => h::json_ok(StatusCode::OK, &"OK"),
        (Method::POST, ["execute"]) => {
            let r: ExecuteRequest = match json_body(req).await {
                Ok(r) => r,
                Err(e) => return e.response(),
            };
            let Some(code) = r.code else {
                return InterpError::MissingCode.response();
            };
            let ctx = match (&r.context_id, &r.language) {
                (Some(_), Some(_)) => return InterpError::ContextAndLanguage.response(),
                (Some(id), None) => match interp.map().get(id) {
                    Some(c) => c.clone(),
                    None => return InterpError::ContextNotFound(id.clone()).response(),
                },
                (None, lang) => match normalise(lang.as_deref()) {
                    Ok((kind, name)) => interp.default_for(kind, name, &home),
                    Err(e) => return e.response(),
                },
            };
            let env: BTreeMap<String, String> = r
                .env_vars
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| {
                    (
                        k,
                        match v {
                            Value::String(s) => s,
                            other => other.to_string(),
                        },
                    )
                })
                .collect();
            let (tx, rx) = mpsc::channel::<Bytes>(64);
            let agent = agent.clone();
            tokio::spawn(async move { execute(&agent, ctx, code, env, tx).await });
            let mut resp = hyper::Response::new(h::channel_body(rx));
            resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/x-ndjson"));
            resp
        }
        (Method::POST, ["contexts"]) => {
            let r: CreateContext = match json_body(req).await {
                Ok(r) => r,
                Err(e) => return e.response(),
            };
            let (kind, name) = match normalise(r.language.as_deref()) {
                Ok(x) => x,
                Err(e) => return e.response(),
            };
            let cwd = r.cwd.filter(|c| !c.is_empty()).unwrap_or(home);
            let c = interp.create(kind, name, cwd);
            h::json_ok(StatusCode::OK, &c.info)
        }
        (Method::GET, ["contexts"]) => {
            let mut v: Vec<ContextInfo> = interp.map().values().map(|c| c.info.clone()).collect();
            v.sort_by(|a, b| a.id.cmp(&b.id));
            h::json_ok(StatusCode::OK, &v)
        }
        (Method::DELETE, ["contexts", id]) => {
            let removed = interp.map().remove(*id);
            match removed {
                Some(c) => {
                    stop_kernel(&c).await;
                    interp.defaults.lock().unwrap_or_else(|p| p.into_inner()).retain(|_, v| v != id);
                    h::json_ok(StatusCode::OK, &Value::Null)
                }
                None => InterpError::ContextNotFound(id.to_string()).response(),
            }
        }
        (Method::POST, ["contexts", id, "restart"]) => {
            let c = interp.map().get(*id).cloned();
            match c {
                Some(c) => {
                    stop_kernel(&c).await;
                    h::json_ok(StatusCode::OK, &Value::Null)
                }
                None => InterpError::ContextNotFound(id.to_string()).response(),
            }
        }
        _ => InterpError::NoRoute(path).response(),
    }
}

/// Kills a context's kernel (even mid-execution); the next execution starts a new one.
async fn stop_kernel(c: &Context) {
    let pid = c.pid.swap(0, Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: killing the kernel's process group.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
    *c.kernel.lock().await = None;
}

fn now() -> String {
    airlock_proto::time::rfc3339(std::time::SystemTime::now())
}

fn line(v: Value) -> Bytes {
    let mut b = serde_json::to_vec(&v).unwrap_or_default();
    b.push(b'\n');
    Bytes::from(b)
}

/// Keeps incomplete UTF-8 sequences for the next chunk, so a character
/// split across reads is not turned into replacement characters.
#[derive(Default)]
struct Utf8Carry(Vec<u8>);

impl Utf8Carry {
    fn push(&mut self, chunk: &[u8]) -> String {
        self.0.extend_from_slice(chunk);
        let valid = match std::str::from_utf8(&self.0) {
            Ok(_) => self.0.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => self.0.len(),
        };
        let rest = self.0.split_off(valid);
        let s = String::from_utf8_lossy(&self.0).into_owned();
        self.0 = rest;
        s
    }
}

/// Sends what is in the kernel's stdout and stderr pipes now.
async fn drain_output(agent: &Agent, k: &Kernel, logged: &mut crate::execlog::Execution, carries: [&mut Utf8Carry; 2], buf: &mut [u8], tx: &mpsc::Sender<Bytes>) {
    let [out_carry, err_carry] = carries;
    for (fd, carry, kind) in [(&k.stdout, out_carry, "stdout"), (&k.stderr, err_carry, "stderr")] {
        while let ReadResult::Data(n) = read_nb(fd.get_ref(), buf) {
            agent.log.output(logged, kind == "stderr", &buf[..n]);
            let t = carry.push(&buf[..n]);
            if !t.is_empty() {
                let _ = tx.send(line(json!({"type": kind, "text": t, "timestamp": now()}))).await;
            }
        }
    }
}

async fn execute(agent: &Arc<Agent>, ctx: Arc<Context>, code: String, env: BTreeMap<String, String>, tx: mpsc::Sender<Bytes>) {
    let mut guard = ctx.kernel.lock().await;
    if guard.is_none() {
        match start_kernel(agent, &ctx).await {
            Ok(k) => {
                ctx.pid.store(k.pid, Ordering::SeqCst);
                *guard = Some(k);
            }
            Err(e) => {
                let e = e.message();
                let _ = tx.send(line(json!({"type": "error", "name": "KernelStartError", "value": e, "traceback": e}))).await;
                let _ = tx.send(line(json!({"type": "end_of_execution"}))).await;
                return;
            }
        }
    }
    let Some(k) = guard.as_mut() else { return };
    let request = match prepare_request(agent, ctx.kind, k, &code, &env) {
        Ok(r) => r,
        Err(e) => {
            let e = e.message();
            let _ = tx.send(line(json!({"type": "error", "name": "ExecutionError", "value": e, "traceback": e}))).await;
            let _ = tx.send(line(json!({"type": "end_of_execution"}))).await;
            return;
        }
    };
    // A cell is an execution too: its start, output and outcome go to the
    // execution log under the kernel's pid.
    let mut logged = agent.log.started(k.pid.max(0) as u32, &format!("{} cell: {}", ctx.kind.name(), code.trim()));
    let mut failed: Option<String> = None;
    let mut dead = k.requests.write_all(request.as_bytes()).await.is_err();
    let mut interrupted_at: Option<tokio::time::Instant> = None;
    let mut out_carry = Utf8Carry::default();
    let mut err_carry = Utf8Carry::default();
    let mut count: Option<u64> = None;
    let mut buf = vec![0u8; 32 * 1024];
    while !dead {
        let grace = async {
            match interrupted_at {
                Some(t) => tokio::time::sleep_until(t + INTERRUPT_GRACE).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            l = k.events.next_line() => match l {
                Ok(Some(l)) => {
                    let Ok(v) = serde_json::from_str::<Value>(&l) else { continue };
                    match v["type"].as_str() {
                        Some("done") => {
                            count = v["execution_count"].as_u64();
                            break;
                        }
                        // What the cell printed before its result or error
                        // is in the pipes already: it goes first (the
                        // select below would pick either at random).
                        Some("result") => {
                            drain_output(agent, k, &mut logged, [&mut out_carry, &mut err_carry], &mut buf, &tx).await;
                            let _ = tx.send(line(v)).await;
                        }
                        Some("error") => {
                            drain_output(agent, k, &mut logged, [&mut out_carry, &mut err_carry], &mut buf, &tx).await;
                            failed = Some(format!("{}: {}", v["name"].as_str().unwrap_or("Error"), v["value"].as_str().unwrap_or("")));
                            let _ = tx.send(line(v)).await;
                        }
                        _ => {}
                    }
                }
                _ => dead = true,
            },
            g = k.stdout.readable() => {
                if let Ok(mut g) = g {
                    match read_nb(k.stdout.get_ref(), &mut buf) {
                        ReadResult::Data(n) => {
                            agent.log.output(&mut logged, false, &buf[..n]);
                            let t = out_carry.push(&buf[..n]);
                            if !t.is_empty() { let _ = tx.send(line(json!({"type": "stdout", "text": t, "timestamp": now()}))).await; }
                        }
                        ReadResult::WouldBlock => g.clear_ready(),
                        _ => dead = true,
                    }
                }
            },
            g = k.stderr.readable() => {
                if let Ok(mut g) = g {
                    match read_nb(k.stderr.get_ref(), &mut buf) {
                        ReadResult::Data(n) => {
                            agent.log.output(&mut logged, true, &buf[..n]);
                            let t = err_carry.push(&buf[..n]);
                            if !t.is_empty() { let _ = tx.send(line(json!({"type": "stderr", "text": t, "timestamp": now()}))).await; }
                        }
                        ReadResult::WouldBlock => g.clear_ready(),
                        _ => dead = true,
                    }
                }
            },
            _ = tx.closed(), if interrupted_at.is_none() => {
                // The client went away (or timed out): interrupt, keep state.
                // SAFETY: signalling the kernel's process group.
                unsafe { libc::kill(-k.pid, libc::SIGINT) };
                interrupted_at = Some(tokio::time::Instant::now());
            },
            _ = grace => {
                tracing::warn!(pid = k.pid, "kernel ignored interrupt; killing it");
                dead = true;
            },
            _ = tokio::time::sleep(KEEPALIVE) => {
                let _ = tx.try_send(line(json!({"type": "keepalive"})));
            },
        }
    }
    // Output written before the kernel said "done" is already in the pipes.
    drain_output(agent, k, &mut logged, [&mut out_carry, &mut err_carry], &mut buf, &tx).await;
    let error = if dead {
        Some("the kernel stopped during execution".to_string())
    } else if interrupted_at.is_some() {
        Some("interrupted".to_string())
    } else {
        failed
    };
    agent.log.ended(logged, crate::execlog::Outcome { exit_code: i32::from(error.is_some()), error, cpu_ms: None, max_rss_bytes: None });
    if dead {
        let _ = tx
            .send(line(json!({"type": "error", "name": "UnexpectedEndOfExecution", "value": "the kernel stopped during execution; its state was lost and it will be restarted", "traceback": ""})))
            .await;
        ctx.pid.store(0, Ordering::SeqCst);
        *guard = None;
    } else if let Some(c) = count {
        let _ = tx.send(line(json!({"type": "number_of_executions", "execution_count": c}))).await;
    }
    let _ = tx.send(line(json!({"type": "end_of_execution"}))).await;
}

/// The request line for the kernel. Bash gets files (its own code is read
/// by `source`); the others get the code inline.
fn prepare_request(agent: &Agent, kind: Kind, k: &mut Kernel, code: &str, env: &BTreeMap<String, String>) -> Result<String, InterpError> {
    k.cells += 1;
    match kind {
        Kind::Python | Kind::JavaScript => {
            let mut s = serde_json::to_string(&json!({"code": code, "env": env})).map_err(InterpError::Encode)?;
            s.push('\n');
            Ok(s)
        }
        Kind::Bash => {
            let q = |v: &str| format!("'{}'", v.replace('\'', "'\\''"));
            let mut cell = String::new();
            let mut restore = String::new();
            for key in env.keys() {
                check_env_name(key)?;
                restore.push_str(&format!(
                    "if [ -n \"${{__airlock_set_{key}+x}}\" ]; then export {key}=\"$__airlock_old_{key}\"; else unset {key}; fi; unset __airlock_set_{key} __airlock_old_{key}\n"
                ));
            }
            for (key, v) in env {
                cell.push_str(&format!("if [ -n \"${{{key}+x}}\" ]; then __airlock_set_{key}=1; __airlock_old_{key}=\"${key}\"; fi; export {key}={}\n", q(v)));
            }
            cell.push_str(code);
            cell.push('\n');
            let cp = write_cell(agent, k, "sh", &cell)?;
            let rp = write_cell(agent, k, "restore.sh", &restore)?;
            Ok(format!("{}|{}\n", cp.display(), rp.display()))
        }
        // A cell file, then the cell's variables hex-encoded (R has no
        // JSON or base64 in its base packages).
        Kind::R | Kind::Java => {
            let cp = write_cell(agent, k, if kind == Kind::R { "R" } else { "jsh" }, code)?;
            let mut line = cp.display().to_string();
            for (key, v) in env {
                check_env_name(key)?;
                line.push('\t');
                line.push_str(key);
                line.push('=');
                line.extend(v.bytes().map(|b| format!("{b:02x}")));
            }
            line.push('\n');
            Ok(line)
        }
    }
}

fn check_env_name(key: &str) -> Result<(), InterpError> {
    if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(InterpError::InvalidEnvName(key.to_string()));
    }
    Ok(())
}

/// Writes one cell's file where its kernel (running as the default user)
/// reads it: `/tmp/.airlock-kernel-<pid>/cell-<n>.<ext>`.
fn write_cell(agent: &Agent, k: &Kernel, ext: &str, text: &str) -> Result<PathBuf, InterpError> {
    let dir = PathBuf::from(format!("/tmp/.airlock-kernel-{}", k.pid));
    let user = crate::users::lookup(&agent.config.default_user)?;
    if !dir.exists() {
        std::fs::create_dir_all(&dir).map_err(|source| InterpError::Io { op: "creating", path: dir.clone(), source })?;
        let _ = std::os::unix::fs::chown(&dir, Some(user.uid), Some(user.gid));
    }
    let p = dir.join(format!("cell-{}.{ext}", k.cells));
    std::fs::write(&p, text).map_err(|source| InterpError::Io { op: "writing", path: p.clone(), source })?;
    let _ = std::os::unix::fs::chown(&p, Some(user.uid), Some(user.gid));
    Ok(p)
}

/// Whether `program` is on the sandbox's default `PATH`.
fn on_path(program: &str, path: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.split(':').any(|d| std::fs::metadata(std::path::Path::new(d).join(program)).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// The sandbox's memory limit (bytes) and CPU quota (whole cores, rounded
/// up), as its own read-only `/sys/fs/cgroup` shows them now (a resize
/// after start counts); None where there is no limit or nothing to read.
fn own_limits() -> (Option<u64>, Option<u64>) {
    let read = |p: &str| std::fs::read_to_string(p).ok().map(|s| s.trim().to_string());
    let num = |s: Option<String>| s.and_then(|s| s.parse::<u64>().ok());
    // v1 reports "no limit" as a huge page-rounded number.
    let memory = num(read("/sys/fs/cgroup/memory.max")).or_else(|| num(read("/sys/fs/cgroup/memory/memory.limit_in_bytes"))).filter(|&m| m > 0 && m < 1 << 60);
    let cpus = match read("/sys/fs/cgroup/cpu.max") {
        Some(v2) => {
            let mut it = v2.split_whitespace();
            match (it.next().and_then(|q| q.parse::<u64>().ok()), it.next().and_then(|p| p.parse::<u64>().ok())) {
                (Some(q), Some(p)) if p > 0 => Some(q.div_ceil(p)),
                _ => None,
            }
        }
        None => match (read("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").and_then(|q| q.parse::<i64>().ok()), num(read("/sys/fs/cgroup/cpu/cpu.cfs_period_us"))) {
            (Some(q), Some(p)) if q > 0 && p > 0 => Some((q as u64).div_ceil(p)),
            _ => None,
        },
    };
    (memory, cpus.filter(|&n| n > 0))
}

/// The Java driver's source file, written once per agent (root-owned,
/// world-readable: the kernel runs as the default user).
fn java_driver() -> Result<PathBuf, InterpError> {
    use std::os::unix::fs::PermissionsExt;
    let dir = PathBuf::from(JAVA_DRIVER_DIR);
    let file = dir.join("AirlockJavaKernel.java");
    if std::fs::read_to_string(&file).is_ok_and(|t| t == JAVA_DRIVER) {
        return Ok(file);
    }
    let io = |op, path: &PathBuf| {
        let path = path.clone();
        move |source| InterpError::Io { op, path, source }
    };
    std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).map_err(io("setting permissions on", &dir))?;
    let tmp = dir.join(format!(".driver-{}", std::process::id()));
    std::fs::write(&tmp, JAVA_DRIVER).map_err(io("writing", &tmp))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).map_err(io("setting permissions on", &tmp))?;
    std::fs::rename(&tmp, &file).map_err(io("writing", &file))?;
    Ok(file)
}

async fn start_kernel(agent: &Arc<Agent>, ctx: &Context) -> Result<Kernel, InterpError> {
    let user = crate::users::lookup(&agent.config.default_user)?;
    let (ev_r, ev_w) = pipe().map_err(InterpError::Pipe)?;
    let (rq_r, rq_w) = pipe().map_err(InterpError::Pipe)?;
    // The R and Java drivers open their protocol pipes by path
    // (/dev/fd/3, /dev/fd/4), which checks the pipe's owner: it must be
    // the user the kernel runs as, not the agent.
    for fd in [&ev_w, &rq_r] {
        std::os::unix::fs::fchown(fd, Some(user.uid), Some(user.gid)).map_err(InterpError::Pipe)?;
    }
    let mut cmd = match ctx.kind {
        Kind::Python => {
            let mut c = std::process::Command::new("python3");
            c.args(["-c", PY_DRIVER]);
            c
        }
        Kind::JavaScript => {
            let mut c = std::process::Command::new("node");
            c.args(["-e", JS_DRIVER]);
            c
        }
        Kind::Bash => {
            let mut c = std::process::Command::new("bash");
            c.args(["--noprofile", "--norc", "-c", SH_DRIVER]);
            c
        }
        Kind::R => {
            let mut c = std::process::Command::new("Rscript");
            c.args(["--no-save", "--no-restore", "-e", R_DRIVER]);
            c
        }
        Kind::Java => {
            let mut c = std::process::Command::new("java");
            // The driver gives each cell its own variables through
            // System.getenv's map, which needs java.util opened to it.
            c.args(["--add-opens", "java.base/java.util=ALL-UNNAMED", "-XX:+UseSerialGC", "-Xss8m"]);
            // C1 only: JShell's compiler is the kernel's main load, and C2
            // would spend memory and CPU the cell needs.
            c.arg("-XX:TieredStopAtLevel=1");
            // The JVM finds the sandbox's limits itself on cgroup v2, but on
            // v1 it needs a cpuset hierarchy the sandbox does not see, and
            // would size its heap by the host's memory (6 GiB in a 512 MiB
            // sandbox, thrashing at the limit instead of collecting). Given
            // on both: the same numbers it would find on v2.
            let (memory, cpus) = own_limits();
            if let Some(m) = memory {
                c.arg(format!("-XX:MaxRAM={m}"));
            }
            if let Some(n) = cpus {
                c.arg(format!("-XX:ActiveProcessorCount={n}"));
            }
            c.arg(java_driver()?);
            c
        }
    };
    let mut env = crate::process::command_env(agent, &user, &BTreeMap::new(), false);
    let need = match ctx.kind {
        Kind::R => Some(("Rscript", "Debian: apt install r-base-core")),
        // The source launcher and JShell come with a JDK, not a JRE.
        Kind::Java => Some(("jshell", "Debian: apt install default-jdk-headless")),
        _ => None,
    };
    if let Some((program, hint)) = need {
        if !on_path(program, env.get("PATH").map(String::as_str).unwrap_or("/usr/local/bin:/usr/bin:/bin")) {
            return Err(InterpError::Missing { kind: ctx.kind, program, hint });
        }
    }
    env.insert("MPLBACKEND".into(), "module://matplotlib_inline.backend_inline".into());
    let cwd = if std::path::Path::new(&ctx.info.cwd).is_dir() { ctx.info.cwd.clone() } else { user.home.display().to_string() };
    cmd.env_clear().envs(env).current_dir(&cwd).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    // The protocol pipes go on fds 3 (events) and 4 (requests), where the
    // drivers expect them.
    let setup = spawn::Setup::new(&user, spawn::Session::ProcessGroup).fd_at(ev_w.as_fd(), 3).fd_at(rq_r.as_fd(), 4);
    let mut child = spawn::spawn(cmd, setup).map_err(|source| InterpError::Spawn { kind: ctx.kind, source })?;
    drop(ev_w);
    drop(rq_r);
    let pid = child.id() as i32;
    let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(InterpError::PipesMissing);
    };
    // The agent's reaper collects the exit status; the std handle is not used.
    drop(child);
    let afd = |fd: OwnedFd| spawn::async_fd(fd, Interest::READABLE).map_err(InterpError::Fd);
    let stdout = afd(OwnedFd::from(out))?;
    let stderr = afd(OwnedFd::from(err))?;
    set_nonblocking(&ev_r).map_err(InterpError::Fd)?;
    set_nonblocking(&rq_w).map_err(InterpError::Fd)?;
    let events = tokio::net::unix::pipe::Receiver::from_owned_fd(ev_r).map_err(InterpError::Fd)?;
    let requests = tokio::net::unix::pipe::Sender::from_owned_fd(rq_w).map_err(InterpError::Fd)?;
    let mut k = Kernel { pid, requests, events: BufReader::new(events).lines(), stdout, stderr, cells: 0 };
    // Wait for the driver's "ready", showing what it printed if it fails.
    let ready = tokio::time::timeout(START_TIMEOUT, async {
        loop {
            match k.events.next_line().await {
                Ok(Some(l)) if l.contains("\"ready\"") => return Ok(()),
                Ok(Some(_)) => continue,
                _ => return Err(()),
            }
        }
    })
    .await;
    if !matches!(ready, Ok(Ok(()))) {
        let mut buf = vec![0u8; 8192];
        let mut msg = String::new();
        if let ReadResult::Data(n) = read_nb(k.stderr.get_ref(), &mut buf) {
            msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        }
        return Err(InterpError::NotReady { kind: ctx.kind, output: msg });
    }
    // Whatever the kernel printed while starting (library warnings) belongs
    // to no cell: log it instead of showing it in the first execution.
    let mut buf = vec![0u8; 8192];
    for fd in [&k.stdout, &k.stderr] {
        while let ReadResult::Data(n) = read_nb(fd.get_ref(), &mut buf) {
            tracing::debug!(pid, output = %String::from_utf8_lossy(&buf[..n]), "kernel start-up output");
        }
    }
    tracing::debug!(pid, kind = ?ctx.kind, "kernel started");
    Ok(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn languages_normalise_like_e2b() {
        assert_eq!(normalise(None).expect("default").1, "python");
        assert_eq!(normalise(Some(" JS ")).expect("js").0, Kind::JavaScript);
        assert_eq!(normalise(Some("ts")).expect("ts").1, "typescript");
        assert_eq!(normalise(Some("bash")).expect("bash").0, Kind::Bash);
        assert_eq!(normalise(Some("R")).expect("r"), (Kind::R, "r".to_string()));
        assert_eq!(normalise(Some("java")).expect("java").0, Kind::Java);
        assert!(normalise(Some("cobol")).is_err());
    }

    #[test]
    fn errors_answer_as_before() {
        let os = || io::Error::from_raw_os_error(libc::ENOSPC);
        let e = InterpError::Io { op: "writing", path: "/tmp/x".into(), source: os() };
        assert_eq!(e.message(), format!("writing /tmp/x: {}", os()));
        assert_eq!(InterpError::Pipe(os()).message(), format!("pipe: {}", os()));
        let e = InterpError::Spawn { kind: Kind::Python, source: os() };
        assert_eq!(e.message(), format!("starting the Python kernel: {}", os()));
        assert_eq!(InterpError::Fd(os()).message(), os().to_string());
        let e = InterpError::NotReady { kind: Kind::Bash, output: " boom\n".into() };
        assert_eq!(e.message(), "the Bash kernel failed to start: boom");
        let e = InterpError::User(UserError::Read { path: "/etc/passwd", source: os() });
        assert_eq!(e.message(), "reading /etc/passwd");
        let e = normalise(Some("cobol")).expect_err("cobol");
        assert_eq!(e.message(), "language 'cobol' is not supported (python, javascript, typescript, bash, r, java)");
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        let e = InterpError::ContextNotFound("abc".into());
        assert_eq!((e.status(), e.message().as_str()), (StatusCode::NOT_FOUND, "Context abc not found"));
        let bad = serde_json::from_slice::<Value>(b"{").expect_err("bad json");
        let e = InterpError::Json(bad);
        assert!(e.message().starts_with("invalid JSON body: EOF"), "{}", e.message());
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert_eq!(InterpError::InvalidEnvName("A-B".into()).message(), "invalid environment variable name \"A-B\"");
    }

    #[test]
    fn utf8_split_across_chunks_is_kept_whole() {
        let mut c = Utf8Carry::default();
        let s = "héllo".as_bytes();
        assert_eq!(c.push(&s[..2]), "h");
        assert_eq!(c.push(&s[2..]), "éllo");
        assert_eq!(c.push(&[0xff, b'a']), "\u{fffd}a");
    }
}
