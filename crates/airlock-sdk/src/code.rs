//! The code interpreter (E2B's port-49999 API): stateful code contexts
//! for Python, JavaScript/TypeScript, Bash, and R and Java where the
//! template has them; executions stream their output, results and errors
//! as they happen.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use airlock_proto::envd::CODE_INTERPRETER_PORT;
use futures_util::{Stream, StreamExt};
use http::Method;
use http_body::Body;
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::client::full;
use crate::error::{self, Error, Result};
use crate::Sandbox;

/// A code context: its own kernel, and so its own variables and imports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeContext {
    pub id: String,
    pub language: String,
    pub cwd: String,
}

/// An error raised by the executed code (or by its kernel).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExecutionError {
    pub name: String,
    pub value: String,
    #[serde(default)]
    pub traceback: String,
}

/// One event of an execution, in the order the interpreter sent it.
#[derive(Debug, Clone, PartialEq)]
pub enum ExecutionEvent {
    Stdout(String),
    Stderr(String),
    /// A result: the last expression's value or display data, as E2B's
    /// `Result` (`text`, `png`, `chart`, ... and `is_main_result`).
    Result(Value),
    Error(ExecutionError),
    /// The context's execution counter after this execution.
    ExecutionCount(u64),
}

/// A finished execution, as the E2B SDKs return it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Execution {
    pub stdout: Vec<String>,
    pub stderr: Vec<String>,
    pub results: Vec<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ExecutionError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_count: Option<u64>,
}

impl Execution {
    fn add(&mut self, ev: &ExecutionEvent) {
        match ev {
            ExecutionEvent::Stdout(t) => self.stdout.push(t.clone()),
            ExecutionEvent::Stderr(t) => self.stderr.push(t.clone()),
            ExecutionEvent::Result(r) => self.results.push(r.clone()),
            ExecutionEvent::Error(e) => self.error = Some(e.clone()),
            ExecutionEvent::ExecutionCount(n) => self.execution_count = Some(*n),
        }
    }
}

/// The code interpreter of one sandbox.
#[derive(Debug, Clone)]
pub struct Interpreter {
    sbx: Sandbox,
}

impl Sandbox {
    /// The sandbox's code interpreter.
    pub fn code(&self) -> Interpreter {
        Interpreter { sbx: self.clone() }
    }
}

impl Interpreter {
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<bytes::Bytes> {
        let c = self.sbx.client();
        let payload = body.map(|b| bytes::Bytes::from(b.to_string())).unwrap_or_default();
        let req = c
            .sandbox_port(self.sbx.target(), CODE_INTERPRETER_PORT, method, path, None)?
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(full(payload))
            .map_err(|e| Error::Config(format!("building {path}: {e}")))?;
        let resp = c.send(req).await?;
        let (parts, body) = resp.into_parts();
        let bytes = c.read_body(body, path).await?;
        if !parts.status.is_success() {
            return Err(error::from_sandbox_status(self.sbx.id(), parts.status.as_u16(), &bytes));
        }
        Ok(bytes)
    }

    /// Makes a context for `language` (default python) working in `cwd`
    /// (default the user's home).
    pub async fn create_context(&self, language: Option<&str>, cwd: Option<&str>) -> Result<CodeContext> {
        let b = self.call(Method::POST, "/contexts", Some(serde_json::json!({ "language": language, "cwd": cwd }))).await?;
        serde_json::from_slice(&b).map_err(|e| Error::protocol(format!("new context: {e}")))
    }

    pub async fn list_contexts(&self) -> Result<Vec<CodeContext>> {
        let b = self.call(Method::GET, "/contexts", None).await?;
        serde_json::from_slice(&b).map_err(|e| Error::protocol(format!("context list: {e}")))
    }

    /// Removes a context, stopping its kernel.
    pub async fn delete_context(&self, id: &str) -> Result<()> {
        self.call(Method::DELETE, &format!("/contexts/{}", crate::client::encode(id)), None).await.map(drop)
    }

    /// Restarts a context's kernel: its state is lost.
    pub async fn restart_context(&self, id: &str) -> Result<()> {
        self.call(Method::POST, &format!("/contexts/{}/restart", crate::client::encode(id)), None).await.map(drop)
    }

    /// An execution of `code`, to configure and then [`RunCode::run`] or
    /// [`RunCode::stream`].
    pub fn run(&self, code: impl Into<String>) -> RunCode {
        RunCode { sbx: self.sbx.clone(), code: code.into(), language: None, context: None, envs: BTreeMap::new(), timeout: None }
    }
}

/// An execution being set up.
#[derive(Debug, Clone)]
#[must_use = "an execution does nothing until run or streamed"]
pub struct RunCode {
    sbx: Sandbox,
    code: String,
    language: Option<String>,
    context: Option<String>,
    envs: BTreeMap<String, String>,
    timeout: Option<Duration>,
}

impl RunCode {
    /// Runs in the language's default context (not with [`RunCode::context`]).
    pub fn language(mut self, l: impl Into<String>) -> Self {
        self.language = Some(l.into());
        self
    }

    /// Runs in this context.
    pub fn context(mut self, id: impl Into<String>) -> Self {
        self.context = Some(id.into());
        self
    }

    /// Environment variables for this execution only.
    pub fn env(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.envs.insert(k.into(), v.into());
        self
    }

    pub fn envs(mut self, envs: BTreeMap<String, String>) -> Self {
        self.envs.extend(envs);
        self
    }

    /// How long the execution may take; past it the stream ends with
    /// [`Error::Timeout`] and the interpreter interrupts the code (its
    /// context keeps its state).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }

    /// Starts the execution; its events arrive as they happen.
    pub async fn stream(self) -> Result<ExecutionStream> {
        if self.language.is_some() && self.context.is_some() {
            return Err(Error::Config("an execution takes a language or a context, not both".into()));
        }
        let c = self.sbx.client();
        let body = serde_json::json!({ "code": self.code, "language": self.language, "context_id": self.context, "env_vars": self.envs });
        let req = c
            .sandbox_port(self.sbx.target(), CODE_INTERPRETER_PORT, Method::POST, "/execute", None)?
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(full(bytes::Bytes::from(body.to_string())))
            .map_err(|e| Error::Config(format!("building /execute: {e}")))?;
        let resp = c.send(req).await?;
        let (parts, body) = resp.into_parts();
        if !parts.status.is_success() {
            let bytes = c.read_body(body, "/execute").await?;
            return Err(error::from_sandbox_status(self.sbx.id(), parts.status.as_u16(), &bytes));
        }
        let deadline = self.timeout.map(|t| Box::pin(tokio::time::sleep(t)));
        Ok(ExecutionStream { body, buf: Vec::new(), done: false, deadline, timeout: self.timeout, sandbox: self.sbx.id().to_string() })
    }

    /// Runs to the end and returns what the execution produced. An error
    /// raised by the code is in [`Execution::error`], not an `Err`.
    pub async fn run(self) -> Result<Execution> {
        let mut s = self.stream().await?;
        let mut out = Execution::default();
        while let Some(ev) = s.next().await {
            out.add(&ev?);
        }
        Ok(out)
    }
}

/// An execution's events (NDJSON lines of `/execute`), ending when the
/// execution does. Dropping it interrupts the execution.
pub struct ExecutionStream {
    body: Incoming,
    buf: Vec<u8>,
    done: bool,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    timeout: Option<Duration>,
    sandbox: String,
}

impl ExecutionStream {
    /// One line; `None` for lines that carry nothing for the caller
    /// (keepalives, the end marker, types this SDK does not know).
    fn parse(&mut self, line: &[u8]) -> Option<Result<ExecutionEvent>> {
        let v: Value = match serde_json::from_slice(line) {
            Ok(v) => v,
            Err(e) => return Some(Err(Error::protocol(format!("execution line {:?}: {e}", String::from_utf8_lossy(line))))),
        };
        let text = || v["text"].as_str().unwrap_or_default().to_string();
        Some(Ok(match v["type"].as_str()? {
            "stdout" => ExecutionEvent::Stdout(text()),
            "stderr" => ExecutionEvent::Stderr(text()),
            "result" => {
                let mut r = v.clone();
                if let Some(o) = r.as_object_mut() {
                    o.remove("type");
                }
                ExecutionEvent::Result(r)
            }
            "error" => ExecutionEvent::Error(ExecutionError {
                name: v["name"].as_str().unwrap_or("Error").to_string(),
                value: v["value"].as_str().unwrap_or_default().to_string(),
                traceback: v["traceback"].as_str().unwrap_or_default().to_string(),
            }),
            "number_of_executions" => ExecutionEvent::ExecutionCount(v["execution_count"].as_u64()?),
            "end_of_execution" => {
                self.done = true;
                return None;
            }
            _ => return None,
        }))
    }
}

impl Stream for ExecutionStream {
    type Item = Result<ExecutionEvent>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(line) = crate::ndjson::next_line(&mut this.buf) {
                match this.parse(&line) {
                    Some(ev) => return Poll::Ready(Some(ev)),
                    None => continue,
                }
            }
            if this.done {
                return Poll::Ready(None);
            }
            if let Some(d) = this.deadline.as_mut() {
                if d.as_mut().poll(cx).is_ready() {
                    this.done = true;
                    let t = this.timeout.unwrap_or_default();
                    return Poll::Ready(Some(Err(Error::Timeout(format!("the execution in sandbox {} took longer than {t:?}", this.sandbox)))));
                }
            }
            match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    this.done = true;
                    // The interpreter always ends with `end_of_execution`:
                    // a body that stops first was cut (the sandbox ended).
                    return Poll::Ready(Some(Err(Error::NotFound(format!(
                        "sandbox {}: the execution's stream ended early (the sandbox was killed or reached its end of life)",
                        this.sandbox
                    )))));
                }
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(Error::Connection { url: format!("sandbox {} /execute", this.sandbox), source: Box::new(e) })));
                }
                Poll::Ready(Some(Ok(f))) => {
                    if let Ok(d) = f.into_data() {
                        this.buf.extend_from_slice(&d);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executions_gather_their_events() {
        let mut e = Execution::default();
        for ev in [
            ExecutionEvent::Stdout("a\n".into()),
            ExecutionEvent::Result(serde_json::json!({"text": "42", "is_main_result": true})),
            ExecutionEvent::Error(ExecutionError { name: "ValueError".into(), value: "x".into(), traceback: String::new() }),
            ExecutionEvent::ExecutionCount(3),
        ] {
            e.add(&ev);
        }
        assert_eq!(e.stdout, ["a\n"]);
        assert_eq!(e.results[0]["text"], "42");
        assert_eq!(e.error.as_ref().map(|x| x.name.as_str()), Some("ValueError"));
        assert_eq!(e.execution_count, Some(3));
    }
}
