//! Commands in a sandbox (`process.Process`): run to completion, stream
//! events, or keep a background handle; reattach to a process by pid or
//! tag; stdin, signals; and interactive terminals ([`Pty`]).
//!
//! A process belongs to the sandbox, not to the connection watching it:
//! dropping a [`CommandStream`] or [`CommandHandle`] only disconnects (it
//! never blocks), and [`Commands::connect`] reattaches later with the output
//! the agent kept.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use airlock_proto::envd::{
    CloseStdinRequest, ConnectRequest, DataOutput, Empty, EndEvent, ListRequest, ListResponse, ProcessConfig, ProcessEvent, ProcessEventKind, ProcessInfo, ProcessInput,
    ProcessSelector, Pty as PtyRequest, PtySize, SendInputRequest, SendSignalRequest, Signal, StartRequest, UpdateRequest,
};
use airlock_proto::wire::Rpc;
use futures_util::{Stream, StreamExt};
use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::stream::{ConnectStream, Utf8Decoder};
use crate::Sandbox;

/// How long a command may run unless told otherwise, as in the official SDKs.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// The outcome of a finished command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandResult {
    /// `-1` when the process was killed by a signal.
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
    /// envd's description of a failure (`"exit status 3"`, `"signal: killed"`).
    pub error: Option<String>,
}

impl CommandResult {
    pub fn success(&self) -> bool {
        self.exit_code == 0
    }

    /// `Ok(self)` on exit code 0, else [`Error::CommandExit`].
    pub fn into_result(self) -> Result<Self> {
        if self.exit_code == 0 {
            Ok(self)
        } else {
            Err(Error::CommandExit { exit_code: self.exit_code, stdout: self.stdout, stderr: self.stderr })
        }
    }
}

/// What a running command produces, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandEvent {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// Output of a process on a terminal (stdout and stderr are one stream).
    Pty(Vec<u8>),
    /// The last event.
    Exit(EndEvent),
}

type TextFn = Box<dyn FnMut(&str) + Send>;
type BytesFn = Box<dyn FnMut(&[u8]) + Send>;

#[derive(Default)]
struct Callbacks {
    stdout: Option<TextFn>,
    stderr: Option<TextFn>,
    pty: Option<BytesFn>,
}

/// The commands API of one sandbox.
#[derive(Debug, Clone)]
pub struct Commands {
    sbx: Sandbox,
}

impl Commands {
    pub(crate) fn new(sbx: Sandbox) -> Self {
        Self { sbx }
    }

    /// A shell command line, run as `/bin/bash -l -c <cmd>` like the
    /// official SDKs do.
    pub fn command(&self, cmd: impl Into<String>) -> CommandBuilder {
        let cfg = ProcessConfig { cmd: "/bin/bash".into(), args: vec!["-l".into(), "-c".into(), cmd.into()], ..Default::default() };
        CommandBuilder::new(self.sbx.clone(), cfg)
    }

    /// A program and its arguments, run directly (no shell).
    pub fn exec<I, S>(&self, program: impl Into<String>, args: I) -> CommandBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let cfg = ProcessConfig { cmd: program.into(), args: args.into_iter().map(Into::into).collect(), ..Default::default() };
        CommandBuilder::new(self.sbx.clone(), cfg)
    }

    /// Runs a shell command to completion; a non-zero exit is
    /// [`Error::CommandExit`].
    pub async fn run(&self, cmd: impl Into<String>) -> Result<CommandResult> {
        self.command(cmd).run().await
    }

    /// The processes the agent is running (and those it started that have
    /// not been reaped from its table yet).
    pub async fn list(&self) -> Result<Vec<ProcessInfo>> {
        let r: ListResponse = self.sbx.client().unary(self.sbx.target(), Rpc::ProcessList.path(), &ListRequest {}, None).await?;
        Ok(r.processes)
    }

    /// Reattaches to a process by pid: its kept output first, then live
    /// events until it exits (a finished process replays its end).
    pub async fn connect(&self, pid: u32) -> Result<CommandStream> {
        CommandStream::attach(&self.sbx, ProcessSelector::Pid(pid)).await
    }

    /// Reattaches to the process started with this tag.
    pub async fn connect_tag(&self, tag: impl Into<String>) -> Result<CommandStream> {
        CommandStream::attach(&self.sbx, ProcessSelector::Tag(tag.into())).await
    }

    /// A handle on a process by pid, for stdin, signals and resizing.
    pub fn process(&self, pid: u32) -> Process {
        Process { sbx: self.sbx.clone(), pid }
    }

    /// Kills a process (SIGKILL).
    pub async fn kill(&self, pid: u32) -> Result<()> {
        self.process(pid).kill().await
    }

    /// Writes to a process's stdin (it must have been started with
    /// [`CommandBuilder::stdin`]).
    pub async fn send_stdin(&self, pid: u32, data: impl AsRef<[u8]>) -> Result<()> {
        self.process(pid).send_stdin(data).await
    }

    pub async fn close_stdin(&self, pid: u32) -> Result<()> {
        self.process(pid).close_stdin().await
    }
}

/// One process in the sandbox, by pid. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Process {
    sbx: Sandbox,
    pid: u32,
}

impl Process {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    fn selector(&self) -> ProcessSelector {
        ProcessSelector::Pid(self.pid)
    }

    async fn call<Req: serde::Serialize>(&self, rpc: &str, req: &Req) -> Result<()> {
        let _: Empty = self.sbx.client().unary(self.sbx.target(), rpc, req, None).await?;
        Ok(())
    }

    pub async fn kill(&self) -> Result<()> {
        self.signal(Signal::Sigkill).await
    }

    pub async fn signal(&self, signal: Signal) -> Result<()> {
        self.call(Rpc::ProcessSendSignal.path(), &SendSignalRequest { process: self.selector(), signal }).await
    }

    pub async fn send_stdin(&self, data: impl AsRef<[u8]>) -> Result<()> {
        let input = ProcessInput::Stdin(data.as_ref().to_vec());
        self.call(Rpc::ProcessSendInput.path(), &SendInputRequest { process: self.selector(), input }).await
    }

    /// Closes stdin, so a program reading it sees end-of-file.
    pub async fn close_stdin(&self) -> Result<()> {
        self.call(Rpc::ProcessCloseStdin.path(), &CloseStdinRequest { process: self.selector() }).await
    }

    /// Types into a process's terminal.
    pub async fn send_pty_input(&self, data: impl AsRef<[u8]>) -> Result<()> {
        let input = ProcessInput::Pty(data.as_ref().to_vec());
        self.call(Rpc::ProcessSendInput.path(), &SendInputRequest { process: self.selector(), input }).await
    }

    /// Resizes a process's terminal.
    pub async fn resize(&self, size: PtySize) -> Result<()> {
        self.call(Rpc::ProcessUpdate.path(), &UpdateRequest { process: self.selector(), pty: Some(PtyRequest { size: Some(size) }) }).await
    }

    /// Reattaches to this process's output.
    pub async fn connect(&self) -> Result<CommandStream> {
        CommandStream::attach(&self.sbx, self.selector()).await
    }
}

/// Describes a command to start: environment, directory, user, timeout,
/// stdin, tag, and output callbacks for [`CommandBuilder::run`] and
/// [`CommandBuilder::spawn`].
pub struct CommandBuilder {
    sbx: Sandbox,
    req: StartRequest,
    user: Option<String>,
    timeout: Option<Duration>,
    callbacks: Callbacks,
}

impl std::fmt::Debug for CommandBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandBuilder").field("request", &self.req).field("user", &self.user).field("timeout", &self.timeout).finish()
    }
}

impl CommandBuilder {
    fn new(sbx: Sandbox, process: ProcessConfig) -> Self {
        Self { sbx, req: StartRequest { process, pty: None, tag: None, stdin: Some(false) }, user: None, timeout: Some(DEFAULT_COMMAND_TIMEOUT), callbacks: Callbacks::default() }
    }

    pub fn env(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.req.process.envs.insert(k.into(), v.into());
        self
    }

    pub fn envs<K: Into<String>, V: Into<String>>(mut self, vars: impl IntoIterator<Item = (K, V)>) -> Self {
        for (k, v) in vars {
            self.req.process.envs.insert(k.into(), v.into());
        }
        self
    }

    /// Working directory (relative paths are under the user's home).
    pub fn cwd(mut self, dir: impl Into<String>) -> Self {
        self.req.process.cwd = Some(dir.into());
        self
    }

    /// Run as this sandbox user (default: the template's user, `user`).
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// Kill the command after this long (default 60 s).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }

    /// Let the command run for as long as it wants.
    pub fn no_timeout(mut self) -> Self {
        self.timeout = None;
        self
    }

    /// A name to reattach by with [`Commands::connect_tag`].
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.req.tag = Some(tag.into());
        self
    }

    /// Keep stdin open for [`Process::send_stdin`] (default: closed).
    pub fn stdin(mut self, open: bool) -> Self {
        self.req.stdin = Some(open);
        self
    }

    /// Called with each chunk of stdout (complete UTF-8 characters).
    pub fn on_stdout(mut self, f: impl FnMut(&str) + Send + 'static) -> Self {
        self.callbacks.stdout = Some(Box::new(f));
        self
    }

    pub fn on_stderr(mut self, f: impl FnMut(&str) + Send + 'static) -> Self {
        self.callbacks.stderr = Some(Box::new(f));
        self
    }

    /// Called with each chunk of terminal output (PTY commands).
    pub fn on_pty(mut self, f: impl FnMut(&[u8]) + Send + 'static) -> Self {
        self.callbacks.pty = Some(Box::new(f));
        self
    }

    fn pty(mut self, size: PtySize) -> Self {
        self.req.pty = Some(PtyRequest { size: Some(size) });
        self.req.stdin = None;
        self
    }

    /// Starts the command and returns its events as a stream (callbacks
    /// are not called). Returns once the process has started.
    pub async fn stream(self) -> Result<CommandStream> {
        let (s, _) = self.start().await?;
        Ok(s)
    }

    async fn start(self) -> Result<(CommandStream, Callbacks)> {
        let t0 = Instant::now();
        let inner = self.sbx.client().server_stream(self.sbx.target(), Rpc::ProcessStart.path(), &self.req, self.user.as_deref(), self.timeout).await?;
        let mut s = CommandStream::started(&self.sbx, inner).await?;
        s.deadline = self.timeout.filter(|t| !t.is_zero()).map(|t| (t0 + t, t));
        Ok((s, self.callbacks))
    }

    /// Starts the command in the background; output goes to the callbacks
    /// and is collected for [`CommandHandle::wait`].
    pub async fn spawn(self) -> Result<CommandHandle> {
        let (s, cb) = self.start().await?;
        Ok(s.into_handle_with(cb))
    }

    /// Runs the command to completion; a non-zero exit is
    /// [`Error::CommandExit`] (with the output).
    pub async fn run(self) -> Result<CommandResult> {
        let (s, mut cb) = self.start().await?;
        s.collect_with(&mut cb).await?.into_result()
    }
}

/// A started process's events as a [`Stream`]: output chunks, then
/// [`CommandEvent::Exit`]. Keepalives are skipped.
pub struct CommandStream {
    process: Process,
    inner: ConnectStream<ProcessEvent>,
    ended: bool,
    /// When the agent kills the process for exceeding its lifetime.
    deadline: Option<(Instant, Duration)>,
}

impl std::fmt::Debug for CommandStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandStream").field("pid", &self.process.pid).field("ended", &self.ended).finish()
    }
}

impl CommandStream {
    async fn attach(sbx: &Sandbox, selector: ProcessSelector) -> Result<Self> {
        let inner = sbx.client().server_stream(sbx.target(), Rpc::ProcessConnect.path(), &ConnectRequest { process: selector }, None, None).await?;
        Self::started(sbx, inner).await
    }

    /// Waits for the `start` event that every Start/Connect stream begins with.
    async fn started(sbx: &Sandbox, mut inner: ConnectStream<ProcessEvent>) -> Result<Self> {
        loop {
            match inner.next().await {
                Some(Ok(ProcessEvent { event: ProcessEventKind::Start { pid } })) => {
                    return Ok(Self { process: Process { sbx: sbx.clone(), pid }, inner, ended: false, deadline: None })
                }
                Some(Ok(ProcessEvent { event: ProcessEventKind::Keepalive {} })) => continue,
                Some(Ok(other)) => return Err(Error::protocol(format!("expected a start event, got {other:?}"))),
                Some(Err(e)) => return Err(e),
                None => return Err(Error::protocol("process stream ended before the start event")),
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.process.pid
    }

    /// The process, for stdin, signals and resizing while streaming.
    pub fn process(&self) -> &Process {
        &self.process
    }

    /// Reads the rest of the stream and returns the outcome (whatever the
    /// exit code: see [`CommandResult::into_result`]).
    pub async fn wait(self) -> Result<CommandResult> {
        self.collect_with(&mut Callbacks::default()).await
    }

    async fn collect_with(mut self, cb: &mut Callbacks) -> Result<CommandResult> {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let (mut dout, mut derr) = (Utf8Decoder::default(), Utf8Decoder::default());
        while let Some(ev) = self.next().await {
            match ev? {
                CommandEvent::Stdout(d) => {
                    if let Some(f) = cb.stdout.as_mut() {
                        f(&dout.push(&d));
                    }
                    out.extend_from_slice(&d);
                }
                CommandEvent::Stderr(d) => {
                    if let Some(f) = cb.stderr.as_mut() {
                        f(&derr.push(&d));
                    }
                    err.extend_from_slice(&d);
                }
                CommandEvent::Pty(d) => {
                    if let Some(f) = cb.pty.as_mut() {
                        f(&d);
                    }
                    out.extend_from_slice(&d);
                }
                CommandEvent::Exit(end) => {
                    if let (Some(f), rest) = (cb.stdout.as_mut(), dout.finish()) {
                        if !rest.is_empty() {
                            f(&rest);
                        }
                    }
                    if let (Some(f), rest) = (cb.stderr.as_mut(), derr.finish()) {
                        if !rest.is_empty() {
                            f(&rest);
                        }
                    }
                    if let Some((at, t)) = self.deadline {
                        // The agent kills a command that outlives its timeout.
                        if !end.exited && Instant::now() + Duration::from_millis(50) >= at {
                            return Err(Error::Timeout(format!("command {} was killed after its timeout of {t:?}", self.process.pid)));
                        }
                    }
                    return Ok(CommandResult {
                        exit_code: end.exit_code,
                        stdout: String::from_utf8_lossy(&out).into_owned(),
                        stderr: String::from_utf8_lossy(&err).into_owned(),
                        error: end.error,
                    });
                }
            }
        }
        Err(Error::protocol(format!("process {} stream ended without an end event", self.process.pid)))
    }

    /// Moves the stream to a background task; see [`CommandHandle`].
    pub fn into_handle(self) -> CommandHandle {
        self.into_handle_with(Callbacks::default())
    }

    /// Like [`CommandStream::into_handle`], calling `on_stdout`/`on_stderr`
    /// with each chunk.
    pub fn into_handle_with_callbacks(self, on_stdout: impl FnMut(&str) + Send + 'static, on_stderr: impl FnMut(&str) + Send + 'static) -> CommandHandle {
        self.into_handle_with(Callbacks { stdout: Some(Box::new(on_stdout)), stderr: Some(Box::new(on_stderr)), pty: None })
    }

    fn into_handle_with(self, mut cb: Callbacks) -> CommandHandle {
        let process = self.process.clone();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(async move {
            let r = self.collect_with(&mut cb).await;
            let _ = tx.send(r);
        });
        CommandHandle { process, result: rx, task: task.abort_handle() }
    }
}

impl Stream for CommandStream {
    type Item = Result<CommandEvent>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.ended {
                return Poll::Ready(None);
            }
            let ev = match futures_util::ready!(Pin::new(&mut this.inner).poll_next(cx)) {
                None => {
                    this.ended = true;
                    return Poll::Ready(Some(Err(Error::protocol(format!("process {} stream ended without an end event", this.process.pid)))));
                }
                Some(Err(e)) => {
                    this.ended = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Some(Ok(ev)) => ev,
            };
            return Poll::Ready(Some(Ok(match ev.event {
                ProcessEventKind::Start { .. } | ProcessEventKind::Keepalive {} => continue,
                ProcessEventKind::Data(DataOutput::Stdout(d)) => CommandEvent::Stdout(d),
                ProcessEventKind::Data(DataOutput::Stderr(d)) => CommandEvent::Stderr(d),
                ProcessEventKind::Data(DataOutput::Pty(d)) => CommandEvent::Pty(d),
                ProcessEventKind::End(end) => {
                    this.ended = true;
                    CommandEvent::Exit(end)
                }
            })));
        }
    }
}

/// A command running in the background. Its output is collected (and
/// passed to the callbacks) by a task; [`CommandHandle::wait`] returns the
/// outcome. Dropping the handle stops watching without blocking; the
/// process keeps running in the sandbox.
pub struct CommandHandle {
    process: Process,
    result: oneshot::Receiver<Result<CommandResult>>,
    task: tokio::task::AbortHandle,
}

impl std::fmt::Debug for CommandHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandHandle").field("pid", &self.process.pid).finish()
    }
}

impl CommandHandle {
    pub fn pid(&self) -> u32 {
        self.process.pid
    }

    pub fn process(&self) -> &Process {
        &self.process
    }

    /// Waits for the process to exit; a non-zero exit is
    /// [`Error::CommandExit`] (with the output).
    pub async fn wait(self) -> Result<CommandResult> {
        self.wait_any().await?.into_result()
    }

    /// Waits for the process to exit and returns the outcome whatever the
    /// exit code.
    pub async fn wait_any(mut self) -> Result<CommandResult> {
        match (&mut self.result).await {
            Ok(r) => r,
            Err(_) => Err(Error::protocol("the task watching the process ended early")),
        }
    }

    pub async fn kill(&self) -> Result<()> {
        self.process.kill().await
    }

    pub async fn send_stdin(&self, data: impl AsRef<[u8]>) -> Result<()> {
        self.process.send_stdin(data).await
    }

    pub async fn close_stdin(&self) -> Result<()> {
        self.process.close_stdin().await
    }

    /// Stops watching; the process keeps running (reattach with
    /// [`Commands::connect`]).
    pub fn disconnect(self) {}
}

impl Drop for CommandHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Interactive terminals: a login shell (or any program) on a PTY.
#[derive(Debug, Clone)]
pub struct Pty {
    sbx: Sandbox,
}

impl Pty {
    pub(crate) fn new(sbx: Sandbox) -> Self {
        Self { sbx }
    }

    /// An interactive login shell (`/bin/bash -i -l`) on a terminal of this
    /// size, with `TERM=xterm-256color` and a UTF-8 locale unless set. No
    /// timeout by default. Start it with `.spawn()` (output to
    /// [`CommandBuilder::on_pty`]) or `.stream()`.
    pub fn create(&self, size: PtySize) -> CommandBuilder {
        self.create_command("/bin/bash", ["-i", "-l"], size)
    }

    /// Any program on a terminal.
    pub fn create_command<I, S>(&self, program: impl Into<String>, args: I, size: PtySize) -> CommandBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut envs = BTreeMap::new();
        envs.insert("TERM".to_string(), "xterm-256color".to_string());
        envs.insert("LANG".to_string(), "C.UTF-8".to_string());
        envs.insert("LC_ALL".to_string(), "C.UTF-8".to_string());
        let cfg = ProcessConfig { cmd: program.into(), args: args.into_iter().map(Into::into).collect(), envs, cwd: None };
        CommandBuilder::new(self.sbx.clone(), cfg).no_timeout().pty(size)
    }

    /// Types into the terminal of process `pid`.
    pub async fn send_input(&self, pid: u32, data: impl AsRef<[u8]>) -> Result<()> {
        self.sbx.commands().process(pid).send_pty_input(data).await
    }

    pub async fn resize(&self, pid: u32, size: PtySize) -> Result<()> {
        self.sbx.commands().process(pid).resize(size).await
    }

    pub async fn kill(&self, pid: u32) -> Result<()> {
        self.sbx.commands().process(pid).kill().await
    }
}
