//! The operations, one handler per event. Arguments are camelCase JSON as
//! the TypeScript SDK sends them; unknown fields are ignored, missing
//! required ones and bad values are `INVALID_ARGUMENT` naming the field.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use airlock_sdk::batch::{BatchEvent, BatchJob};
use airlock_sdk::{ExecutionEvent, Sandbox, SandboxDetail, TemplateInfo};
use base64::Engine;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use socketioxide::extract::SocketRef;

use crate::error::GwError;
use crate::runs::{Msg, Run};
use crate::{emit, on, Session};

/// Bytes of code in one execution (the interpreter takes it in one
/// request; bigger programs belong in a file).
pub(crate) const MAX_CODE: usize = 1024 * 1024;
/// Bytes of a file read or written in one message.
pub(crate) const MAX_FILE: u64 = 16 * 1024 * 1024;
const DEFAULT_EXEC_TIMEOUT_MS: u64 = 300_000;
const MAX_EXEC_TIMEOUT_MS: u64 = 3_600_000;
/// A sandbox's lifetime when `expiryTime` is not given (E2B's default).
const DEFAULT_LIFETIME_MS: u64 = 300_000;
const MAX_LIST: usize = 1000;

pub(crate) fn args<T: DeserializeOwned>(event: &str, v: Value) -> Result<T, GwError> {
    // An absent payload is an empty one: every field then says it is missing.
    let v = if v.is_null() { json!({}) } else { v };
    serde_json::from_value(v).map_err(|e| GwError::invalid(format!("{event}: {e}")))
}

/// A sandbox, template, context or execution id: short printable text.
pub(crate) fn check_id(field: &str, id: &str) -> Result<(), GwError> {
    if id.is_empty() || id.len() > 128 || id.chars().any(|c| c.is_control() || c == '/') {
        return Err(GwError::invalid(format!("{field} must be 1 to 128 characters without '/' or control characters, got {:?}", id.chars().take(40).collect::<String>())));
    }
    Ok(())
}

fn timeout_of(field: &str, ms: Option<u64>, default: u64) -> Result<Duration, GwError> {
    match ms {
        None => Ok(Duration::from_millis(default)),
        Some(0) => Err(GwError::invalid(format!("{field} must be at least 1 ms"))),
        Some(t) if t > MAX_EXEC_TIMEOUT_MS => Err(GwError::invalid(format!("{field} is at most {MAX_EXEC_TIMEOUT_MS} ms, got {t}"))),
        Some(t) => Ok(Duration::from_millis(t)),
    }
}

fn new_id() -> String {
    let mut b = [0u8; 12];
    if getrandom::fill(&mut b).is_err() {
        // The clock is unique enough for an execution id within one server.
        let n = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
        return format!("exec-{n:x}");
    }
    format!("exec-{}", b.iter().map(|x| format!("{x:02x}")).collect::<String>())
}

/// A sandbox as SandboxSDK shows it.
pub(crate) fn sandbox_view(d: &SandboxDetail) -> Value {
    json!({
        "id": d.sandbox_id,
        "name": d.metadata.get("name"),
        "templateId": d.alias.clone().unwrap_or_else(|| d.template_id.clone()),
        "status": d.state,
        "createdAt": d.started_at,
        "expiresAt": d.end_at,
        "metadata": d.metadata,
        "cpuCount": d.cpu_count,
        "memoryMB": d.memory_mb,
    })
}

pub(crate) fn template_view(t: &TemplateInfo) -> Value {
    json!({
        "id": t.template_id,
        "name": t.name,
        "aliases": t.aliases,
        "createdAt": t.created_at,
        "sizeBytes": t.size_bytes,
        "defaultUser": t.default_user,
        "workdir": t.workdir,
        "defaultEnvVars": t.env,
    })
}

/// `expiryTime`: milliseconds from now, or an RFC 3339 instant.
pub(crate) fn lifetime(v: Option<&Value>) -> Result<Duration, GwError> {
    let ms = match v {
        None | Some(Value::Null) => DEFAULT_LIFETIME_MS,
        Some(Value::Number(n)) => {
            n.as_u64().filter(|&n| n > 0).ok_or_else(|| GwError::invalid(format!("expiryTime must be a positive number of milliseconds or a date, got {n}")))?
        }
        Some(Value::String(s)) => {
            let at = airlock_proto::time::parse_rfc3339(s).ok_or_else(|| GwError::invalid(format!("expiryTime {s:?} is not an RFC 3339 date")))?;
            let left = at.duration_since(SystemTime::now()).map_err(|_| GwError::invalid(format!("expiryTime {s} is in the past")))?;
            (left.as_millis() as u64).max(1000)
        }
        Some(other) => return Err(GwError::invalid(format!("expiryTime must be milliseconds or a date, got {other}"))),
    };
    Ok(Duration::from_millis(ms))
}

pub(crate) fn register(s: &SocketRef, sess: &Arc<Session>) {
    on(s, "sandbox:create", sess, create_sandbox);
    on(s, "sandbox:delete", sess, delete_sandbox);
    on(s, "sandbox:status", sess, sandbox_status);
    on(s, "sandbox:list", sess, list_sandboxes);
    on(s, "template:list", sess, list_templates);
    on(s, "template:get", sess, get_template);
    on(s, "template:create", sess, crate::templates::create_template);
    on(s, "code:run", sess, run_code);
    on(s, "terminal:run", sess, run_terminal);
    on(s, "execution:subscribe", sess, subscribe);
    on(s, "file:read", sess, read_file);
    on(s, "file:write", sess, write_file);
    on(s, "file:delete", sess, delete_file);
    on(s, "file:list", sess, list_files);
    on(s, "context:create", sess, create_context);
    on(s, "context:list", sess, list_contexts);
    on(s, "context:delete", sess, delete_context);
    on(s, "batch:execute", sess, execute_batch);
}

// ------------------------------------------------------------- sandboxes

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateArgs {
    template_id: Option<String>,
    name: Option<String>,
    expiry_time: Option<Value>,
    #[serde(default)]
    initial_env_vars: BTreeMap<String, String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    cpu_count: Option<f64>,
    #[serde(rename = "memoryMB")]
    memory_mb: Option<u64>,
    /// Volumes to mount: `[{ name, path }]` (Airlock's).
    #[serde(default)]
    volume_mounts: Vec<VolumeMountArg>,
}

#[derive(Deserialize)]
struct VolumeMountArg {
    name: String,
    path: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SandboxArgs {
    sandbox_id: String,
}

async fn create_sandbox(sess: Arc<Session>, _s: SocketRef, v: Value) -> Result<Value, GwError> {
    let a: CreateArgs = args("sandbox:create", v)?;
    let mut b = Sandbox::builder().client(&sess.client).timeout(lifetime(a.expiry_time.as_ref())?).envs(a.initial_env_vars);
    if let Some(t) = a.template_id.filter(|t| !t.is_empty()) {
        b = b.template(t);
    }
    for (k, v) in a.metadata {
        b = b.metadata(k, v);
    }
    if let Some(n) = a.name {
        if n.len() > 256 {
            return Err(GwError::invalid("name is at most 256 bytes"));
        }
        b = b.metadata("name", n);
    }
    if let Some(c) = a.cpu_count {
        b = b.cpu_count(c);
    }
    if let Some(m) = a.memory_mb {
        b = b.memory_mb(m);
    }
    for m in a.volume_mounts {
        check_id("volumeMounts[].name", &m.name)?;
        b = b.volume(m.name, m.path);
    }
    let sbx = b.create().await?;
    sess.remember(&sbx);
    let d = sbx.info().await?;
    Ok(json!({ "sandbox": sandbox_view(&d) }))
}

async fn delete_sandbox(sess: Arc<Session>, _s: SocketRef, v: Value) -> Result<Value, GwError> {
    let a: SandboxArgs = args("sandbox:delete", v)?;
    check_id("sandboxId", &a.sandbox_id)?;
    sess.client.kill(&a.sandbox_id).await?;
    sess.forget(&a.sandbox_id);
    Ok(json!({ "sandboxId": a.sandbox_id, "deleted": true }))
}

async fn sandbox_status(sess: Arc<Session>, _s: SocketRef, v: Value) -> Result<Value, GwError> {
    let a: SandboxArgs = args("sandbox:status", v)?;
    check_id("sandboxId", &a.sandbox_id)?;
    let d = sess.client.info(&a.sandbox_id).await?;
    Ok(json!({ "sandbox": sandbox_view(&d) }))
}

async fn list_sandboxes(sess: Arc<Session>, _s: SocketRef, v: Value) -> Result<Value, GwError> {
    #[derive(Deserialize, Default)]
    #[serde(rename_all = "camelCase")]
    struct ListArgs {
        template_id: Option<String>,
        #[serde(default)]
        metadata: BTreeMap<String, String>,
    }
    let a: ListArgs = args("sandbox:list", v)?;
    let mut list = Sandbox::list().client(&sess.client).state(airlock_sdk::SandboxState::Running).state(airlock_sdk::SandboxState::Paused).limit(100);
    if let Some(t) = a.template_id {
        list = list.template(t);
    }
    for (k, v) in a.metadata {
        list = list.metadata(k, v);
    }
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = list.page(token.as_deref()).await?;
        out.extend(page.sandboxes.iter().map(sandbox_view));
        token = page.next_token;
        if token.is_none() || out.len() >= MAX_LIST {
            break;
        }
    }
    Ok(json!({ "sandboxes": out }))
}

// ------------------------------------------------------------- templates

async fn list_templates(sess: Arc<Session>, _s: SocketRef, v: Value) -> Result<Value, GwError> {
    #[derive(Deserialize, Default)]
    #[serde(rename_all = "camelCase")]
    struct Page {
        page: Option<u64>,
        page_size: Option<u64>,
    }
    let a: Page = args("template:list", v)?;
    let (page, size) = (a.page.unwrap_or(1), a.page_size.unwrap_or(20));
    if page == 0 || size == 0 || size > 100 {
        return Err(GwError::invalid(format!("page starts at 1 and pageSize is 1 to 100, got page {page}, pageSize {size}")));
    }
    let page = u32::try_from(page).map_err(|_| GwError::invalid(format!("page {page} is past the last one")))?;
    let (items, total) = sess.client.templates().page(page, size as u32).await?;
    let items: Vec<Value> = items.iter().map(template_view).collect();
    Ok(json!({ "templates": items, "page": page, "pageSize": size, "total": total, "totalPages": total.div_ceil(size) }))
}

async fn get_template(sess: Arc<Session>, _s: SocketRef, v: Value) -> Result<Value, GwError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct A {
        template_id: String,
    }
    let a: A = args("template:get", v)?;
    check_id("templateId", &a.template_id)?;
    let t = sess.client.templates().get(&a.template_id).await?;
    Ok(json!({ "template": template_view(&t) }))
}

// ------------------------------------------------------------ executions

/// Streams a started run's events to `s` and acknowledges with its
/// outcome; returns when the run ends or the socket goes (the run does
/// not stop with it).
async fn follow(s: &SocketRef, run: &Run) -> Result<Value, GwError> {
    let mut rx = run.subscribe();
    while let Some(m) = rx.recv().await {
        match m {
            Msg::Event(e, p) => {
                if !emit(s, e, &p).await {
                    return Err(GwError::new("UNAVAILABLE", "the socket closed"));
                }
            }
            Msg::Done(d) => return d,
        }
    }
    Err(GwError::new("INTERNAL", "the execution ended without an outcome"))
}

fn execution_id(given: Option<String>) -> Result<String, GwError> {
    match given {
        Some(id) => {
            check_id("executionId", &id)?;
            Ok(id)
        }
        None => Ok(new_id()),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RunArgs {
    sandbox_id: String,
    code: String,
    language: Option<String>,
    context_id: Option<String>,
    timeout_ms: Option<u64>,
    #[serde(default)]
    envs: BTreeMap<String, String>,
    execution_id: Option<String>,
}

async fn run_code(sess: Arc<Session>, s: SocketRef, v: Value) -> Result<Value, GwError> {
    let a: RunArgs = args("code:run", v)?;
    if a.code.len() > MAX_CODE {
        return Err(GwError::new("TOO_LARGE", format!("code is {} bytes, at most {MAX_CODE}: write bigger programs to a file and run that", a.code.len())));
    }
    if a.language.is_some() && a.context_id.is_some() {
        return Err(GwError::invalid("give language or contextId, not both (a context has its language)"));
    }
    let timeout = timeout_of("timeoutMs", a.timeout_ms, DEFAULT_EXEC_TIMEOUT_MS)?;
    let sbx = sess.sandbox(&a.sandbox_id).await?;
    let id = execution_id(a.execution_id)?;
    let run = sess.gw.runs.start(&id, &sess.key)?;
    let mut req = sbx.code().run(a.code).envs(a.envs).timeout(timeout);
    if let Some(l) = a.language {
        req = req.language(l);
    }
    if let Some(c) = a.context_id {
        req = req.context(c);
    }
    let (task_run, exec_id, sandbox_id) = (run.clone(), id.clone(), sbx.id().to_string());
    // The execution is its own task: a client that disconnects does not
    // stop it, and can subscribe again by id.
    tokio::spawn(async move {
        let started = Instant::now();
        let outcome = async {
            let mut stream = req.stream().await?;
            task_run.emit("code:started", json!({ "executionId": exec_id, "sandboxId": sandbox_id }));
            let (mut stdout, mut stderr, mut results, mut error, mut count) = (Vec::new(), Vec::new(), Vec::new(), Value::Null, Value::Null);
            while let Some(ev) = stream.next().await {
                match ev? {
                    ExecutionEvent::Stdout(t) => {
                        task_run.emit("code:stdout", json!({ "executionId": exec_id, "text": t }));
                        stdout.push(t);
                    }
                    ExecutionEvent::Stderr(t) => {
                        task_run.emit("code:stderr", json!({ "executionId": exec_id, "text": t }));
                        stderr.push(t);
                    }
                    ExecutionEvent::Result(r) => {
                        task_run.emit("code:result", json!({ "executionId": exec_id, "result": r }));
                        results.push(r);
                    }
                    ExecutionEvent::Error(e) => {
                        let e = json!({ "name": e.name, "value": e.value, "traceback": e.traceback });
                        task_run.emit("code:error", json!({ "executionId": exec_id, "error": e }));
                        error = e;
                    }
                    ExecutionEvent::ExecutionCount(n) => count = json!(n),
                }
            }
            Ok::<_, airlock_sdk::Error>(json!({
                "execution": { "logs": { "stdout": stdout, "stderr": stderr }, "results": results, "error": error },
                "metadata": { "executionId": exec_id, "sandboxId": sandbox_id, "durationMs": started.elapsed().as_millis() as u64, "executionCount": count },
            }))
        }
        .await
        .map_err(GwError::from);
        task_run.finish(outcome);
    });
    follow(&s, &run).await
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TerminalArgs {
    sandbox_id: String,
    command: String,
    cwd: Option<String>,
    timeout_ms: Option<u64>,
    #[serde(default)]
    envs: BTreeMap<String, String>,
    execution_id: Option<String>,
}

async fn run_terminal(sess: Arc<Session>, s: SocketRef, v: Value) -> Result<Value, GwError> {
    let a: TerminalArgs = args("terminal:run", v)?;
    if a.command.trim().is_empty() || a.command.len() > MAX_CODE || a.command.contains('\0') {
        return Err(GwError::invalid(format!("command must be 1 to {MAX_CODE} bytes of text")));
    }
    let timeout = timeout_of("timeoutMs", a.timeout_ms, DEFAULT_EXEC_TIMEOUT_MS)?;
    let sbx = sess.sandbox(&a.sandbox_id).await?;
    let id = execution_id(a.execution_id)?;
    let run = sess.gw.runs.start(&id, &sess.key)?;
    let (out_run, err_run, task_run) = (run.clone(), run.clone(), run.clone());
    let (out_id, err_id, exec_id) = (id.clone(), id.clone(), id.clone());
    let mut cmd = sbx
        .commands()
        .command(a.command)
        .envs(a.envs)
        .timeout(timeout)
        .on_stdout(move |t| out_run.emit("terminal:stdout", json!({ "executionId": out_id, "data": t })))
        .on_stderr(move |t| err_run.emit("terminal:stderr", json!({ "executionId": err_id, "data": t })));
    if let Some(c) = a.cwd {
        cmd = cmd.cwd(c);
    }
    let sandbox_id = sbx.id().to_string();
    tokio::spawn(async move {
        let started = Instant::now();
        let done = |code: i32, stdout: String, stderr: String| json!({ "exitCode": code, "stdout": stdout, "stderr": stderr, "durationMs": started.elapsed().as_millis() as u64, "executionId": exec_id, "sandboxId": sandbox_id });
        let outcome = match cmd.run().await {
            Ok(r) => Ok(done(r.exit_code, r.stdout, r.stderr)),
            // A non-zero exit is an answer, not a failure of the call.
            Err(airlock_sdk::Error::CommandExit { exit_code, stdout, stderr }) => Ok(done(exit_code, stdout, stderr)),
            Err(e) => Err(GwError::from(e)),
        };
        task_run.finish(outcome);
    });
    follow(&s, &run).await
}

async fn subscribe(sess: Arc<Session>, s: SocketRef, v: Value) -> Result<Value, GwError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct A {
        execution_id: String,
    }
    let a: A = args("execution:subscribe", v)?;
    check_id("executionId", &a.execution_id)?;
    let run = sess.gw.runs.get(&a.execution_id, &sess.key)?;
    follow(&s, &run).await
}

// ----------------------------------------------------------------- files

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FileArgs {
    sandbox_id: String,
    path: String,
    /// `utf8` (default) or `base64`.
    encoding: Option<String>,
    content: Option<String>,
    create_parents: Option<bool>,
}

fn check_path(p: &str) -> Result<(), GwError> {
    if p.is_empty() || p.len() > 4096 || p.contains('\0') {
        return Err(GwError::invalid("path must be 1 to 4096 bytes without NUL"));
    }
    Ok(())
}

fn base64_wanted(enc: Option<&str>) -> Result<bool, GwError> {
    match enc.unwrap_or("utf8") {
        "utf8" | "utf-8" | "text" => Ok(false),
        "base64" => Ok(true),
        other => Err(GwError::invalid(format!("encoding must be utf8 or base64, got {other:?}"))),
    }
}

async fn read_file(sess: Arc<Session>, _s: SocketRef, v: Value) -> Result<Value, GwError> {
    let a: FileArgs = args("file:read", v)?;
    check_path(&a.path)?;
    let b64 = base64_wanted(a.encoding.as_deref())?;
    let sbx = sess.sandbox(&a.sandbox_id).await?;
    let files = sbx.files();
    let st = files.stat(&a.path).await?;
    if st.size as u64 > MAX_FILE {
        return Err(GwError::new("TOO_LARGE", format!("{} is {} bytes; at most {MAX_FILE} go through Socket.IO (use the files REST API for more)", a.path, st.size)));
    }
    let data = files.read(&a.path).await?;
    let (content, encoding) = if b64 {
        (base64::engine::general_purpose::STANDARD.encode(&data), "base64")
    } else {
        match String::from_utf8(data) {
            Ok(s) => (s, "utf8"),
            Err(e) => (base64::engine::general_purpose::STANDARD.encode(e.as_bytes()), "base64"),
        }
    };
    Ok(json!({ "path": a.path, "content": content, "encoding": encoding, "size": st.size }))
}

async fn write_file(sess: Arc<Session>, _s: SocketRef, v: Value) -> Result<Value, GwError> {
    let a: FileArgs = args("file:write", v)?;
    check_path(&a.path)?;
    let content = a.content.ok_or_else(|| GwError::invalid("file:write needs content"))?;
    let data = if base64_wanted(a.encoding.as_deref())? {
        base64::engine::general_purpose::STANDARD.decode(content.as_bytes()).map_err(|e| GwError::invalid(format!("content is not base64: {e}")))?
    } else {
        content.into_bytes()
    };
    if data.len() as u64 > MAX_FILE {
        return Err(GwError::new("TOO_LARGE", format!("{} bytes; at most {MAX_FILE} go through Socket.IO (use the files REST API for more)", data.len())));
    }
    let sbx = sess.sandbox(&a.sandbox_id).await?;
    let files = sbx.files();
    // envd makes missing parents; without createParents they must exist.
    if a.create_parents == Some(false) {
        let parent = std::path::Path::new(&a.path).parent().map(|p| p.to_string_lossy().into_owned()).filter(|p| !p.is_empty());
        if let Some(p) = parent {
            if !files.exists(&p).await? {
                return Err(GwError::not_found(format!("the parent directory {p} does not exist (createParents is false)")));
            }
        }
    }
    let size = data.len();
    let w = files.write(&a.path, data).await?;
    Ok(json!({ "path": w.path, "size": size }))
}

async fn delete_file(sess: Arc<Session>, _s: SocketRef, v: Value) -> Result<Value, GwError> {
    let a: FileArgs = args("file:delete", v)?;
    check_path(&a.path)?;
    let sbx = sess.sandbox(&a.sandbox_id).await?;
    sbx.files().remove(&a.path).await?;
    Ok(json!({ "path": a.path, "deleted": true }))
}

async fn list_files(sess: Arc<Session>, _s: SocketRef, v: Value) -> Result<Value, GwError> {
    let a: FileArgs = args("file:list", v)?;
    check_path(&a.path)?;
    let sbx = sess.sandbox(&a.sandbox_id).await?;
    let entries = sbx.files().list(&a.path).await?;
    let files: Vec<Value> = entries
        .iter()
        .map(|e| {
            let kind = serde_json::to_value(e.file_type).ok().and_then(|v| v.as_str().map(str::to_lowercase)).unwrap_or_default();
            let kind = if e.symlink_target.is_some() {
                "symlink"
            } else if kind.contains("dir") {
                "directory"
            } else {
                "file"
            };
            json!({ "name": e.name, "path": e.path, "type": kind, "size": e.size, "modifiedAt": e.modified_time, "permissions": e.permissions })
        })
        .collect();
    Ok(json!({ "path": a.path, "files": files }))
}

// -------------------------------------------------------------- contexts

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContextArgs {
    sandbox_id: String,
    language: Option<String>,
    cwd: Option<String>,
    context_id: Option<String>,
}

async fn create_context(sess: Arc<Session>, _s: SocketRef, v: Value) -> Result<Value, GwError> {
    let a: ContextArgs = args("context:create", v)?;
    let sbx = sess.sandbox(&a.sandbox_id).await?;
    let c = sbx.code().create_context(a.language.as_deref(), a.cwd.as_deref()).await?;
    Ok(json!({ "context": c }))
}

async fn list_contexts(sess: Arc<Session>, _s: SocketRef, v: Value) -> Result<Value, GwError> {
    let a: ContextArgs = args("context:list", v)?;
    let sbx = sess.sandbox(&a.sandbox_id).await?;
    Ok(json!({ "contexts": sbx.code().list_contexts().await? }))
}

async fn delete_context(sess: Arc<Session>, _s: SocketRef, v: Value) -> Result<Value, GwError> {
    let a: ContextArgs = args("context:delete", v)?;
    let id = a.context_id.ok_or_else(|| GwError::invalid("context:delete needs contextId"))?;
    check_id("contextId", &id)?;
    let sbx = sess.sandbox(&a.sandbox_id).await?;
    sbx.code().delete_context(&id).await?;
    Ok(json!({ "contextId": id, "deleted": true }))
}

// ----------------------------------------------------------------- batch

async fn execute_batch(sess: Arc<Session>, s: SocketRef, v: Value) -> Result<Value, GwError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct A {
        sandbox_id: String,
        jobs: Vec<BatchJob>,
        batch_id: Option<String>,
    }
    let a: A = args("batch:execute", v)?;
    check_id("sandboxId", &a.sandbox_id)?;
    let batch_id = execution_id(a.batch_id)?;
    // The server checks the jobs (ids, sizes, languages) before any runs.
    let mut stream = sess.client.batch_stream(&a.sandbox_id, a.jobs).await?;
    let mut results = Vec::new();
    while let Some(ev) = stream.next().await {
        match ev? {
            BatchEvent::Job(r) => {
                let r = serde_json::to_value(&r).unwrap_or_default();
                // A client that left stops the batch (dropping the stream).
                if !emit(&s, "batch:result", &json!({ "batchId": batch_id, "result": r })).await {
                    return Err(GwError::new("UNAVAILABLE", "the socket closed"));
                }
                results.push(r);
            }
            BatchEvent::Done(d) => {
                return Ok(
                    json!({ "batchId": batch_id, "results": results, "summary": { "succeeded": d.succeeded, "failed": d.failed, "total": results.len(), "durationMs": d.duration } }),
                );
            }
        }
    }
    Err(GwError::new("UNAVAILABLE", "the batch's stream ended before its summary (the server went away?)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_times_are_durations_or_dates() {
        assert_eq!(lifetime(None).expect("default"), Duration::from_millis(DEFAULT_LIFETIME_MS));
        assert_eq!(lifetime(Some(&json!(60000))).expect("ms"), Duration::from_secs(60));
        assert!(lifetime(Some(&json!(0))).is_err());
        assert!(lifetime(Some(&json!(-5))).is_err());
        assert!(lifetime(Some(&json!("2001-01-01T00:00:00Z"))).expect_err("past").message.contains("in the past"));
        assert!(lifetime(Some(&json!("tomorrow"))).is_err());
        let soon = airlock_proto::time::rfc3339(SystemTime::now() + Duration::from_secs(120));
        let d = lifetime(Some(&json!(soon))).expect("date");
        assert!(d > Duration::from_secs(100) && d <= Duration::from_secs(120), "{d:?}");
    }

    #[test]
    fn ids_and_timeouts_are_checked() {
        assert!(check_id("sandboxId", "").is_err());
        assert!(check_id("sandboxId", "a/b").is_err());
        assert!(check_id("sandboxId", &"x".repeat(129)).is_err());
        check_id("sandboxId", "i0abc").expect("ok");
        assert!(timeout_of("t", Some(0), 1).is_err());
        assert!(timeout_of("t", Some(MAX_EXEC_TIMEOUT_MS + 1), 1).is_err());
        assert_eq!(timeout_of("t", None, 5).expect("default"), Duration::from_millis(5));
        assert!(new_id().starts_with("exec-"));
    }

    #[test]
    fn missing_fields_are_named() {
        let e = args::<SandboxArgs>("sandbox:status", Value::Null).err().expect("refused");
        assert!(e.message.contains("sandboxId"), "{}", e.message);
        assert_eq!(e.code, "INVALID_ARGUMENT");
    }
}
