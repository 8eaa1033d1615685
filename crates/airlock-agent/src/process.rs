//! `process.Process`: starting commands as sandbox users, streaming their
//! output, stdin, signals, PTYs, and reattaching to running or finished
//! processes by pid or tag.
//!
//! Each process has one output pump per stream (stdout and stderr pipes,
//! or the PTY master). A pump appends every chunk to a bounded history (so a
//! client that reattaches gets what it missed) and hands it to each live
//! subscriber through a bounded channel, awaiting room: a slow client slows
//! the process down instead of losing output, while a process nobody is
//! watching never blocks. Exit statuses come from the agent's reaper, which
//! is the only caller of `waitpid`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use airlock_proto::connect::{self, Code, ConnectError};
use airlock_proto::envd::{
    CloseStdinRequest, ConnectRequest, DataOutput, Empty, EndEvent, ListRequest, ListResponse,
    ProcessConfig, ProcessEvent, ProcessEventKind, ProcessInfo, ProcessInput, ProcessSelector,
    PtySize, SendInputRequest, SendSignalRequest, Signal, StartRequest, StreamInputEvent,
    StreamInputRequest, UpdateRequest,
};
use bytes::Bytes;
use http::Request;
use hyper::body::Incoming;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::{mpsc, oneshot, watch};

use crate::http::{self as h, Resp};
use crate::rpc::{self, RequestCtx};
use crate::spawn::{self, read_nb, ReadResult};
use crate::users::User;
use crate::Agent;

/// Output kept per process for clients that reattach.
const HISTORY_BYTES: usize = 1024 * 1024;
/// Largest data event, as envd reads.
const CHUNK: usize = 32 * 1024;
/// Finished processes kept for reattach, oldest dropped first.
const KEEP_FINISHED: usize = 256;
/// Events buffered per subscriber before the pump waits for it.
const SUBSCRIBER_QUEUE: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Start,
    Connect,
    List,
    SendInput,
    StreamInput,
    SendSignal,
    CloseStdin,
    Update,
}

impl Method {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "Start" => Self::Start,
            "Connect" => Self::Connect,
            "List" => Self::List,
            "SendInput" => Self::SendInput,
            "StreamInput" => Self::StreamInput,
            "SendSignal" => Self::SendSignal,
            "CloseStdin" => Self::CloseStdin,
            "Update" => Self::Update,
            _ => return None,
        })
    }

    /// Server-streaming methods answer with envelopes even on error.
    pub fn is_stream(self) -> bool {
        matches!(self, Self::Start | Self::Connect | Self::StreamInput)
    }
}

/// One output stream to pump: the fd and the event kind its chunks become.
type Pump = (OwnedFd, fn(Vec<u8>) -> DataOutput);

/// Something a subscriber receives.
#[derive(Debug, Clone)]
enum Event {
    Data(DataOutput),
    End(EndEvent),
}

struct Output {
    history: VecDeque<DataOutput>,
    history_bytes: usize,
    subscribers: Vec<mpsc::Sender<Event>>,
    /// Set once every pump has finished and the exit status is known.
    end: Option<EndEvent>,
}

enum InputCmd {
    Write(Vec<u8>, oneshot::Sender<Result<(), ConnectError>>),
    Close(oneshot::Sender<Result<(), ConnectError>>),
}

/// One started process.
pub struct Proc {
    pub pid: u32,
    pub config: ProcessConfig,
    pub tag: Option<String>,
    pty: Option<Arc<OwnedFd>>,
    input: Option<mpsc::Sender<InputCmd>>,
    output: Mutex<Output>,
    /// The raw wait status, published by the reaper.
    status: watch::Sender<Option<i32>>,
}

impl Proc {
    fn output(&self) -> MutexGuard<'_, Output> {
        // A poisoned lock only means a panic elsewhere; the data is still usable.
        self.output.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn exited(&self) -> bool {
        self.status.borrow().is_some()
    }

    fn info(&self) -> ProcessInfo {
        ProcessInfo {
            config: self.config.clone(),
            pid: self.pid,
            tag: self.tag.clone(),
        }
    }

    /// Registers a subscriber and returns what it missed. Taken under the
    /// output lock, so no chunk is both replayed and delivered, or neither.
    fn subscribe(&self) -> (Vec<DataOutput>, Option<EndEvent>, mpsc::Receiver<Event>) {
        let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE);
        let mut out = self.output();
        let history = out.history.iter().cloned().collect();
        let end = out.end.clone();
        if end.is_none() {
            out.subscribers.push(tx);
        }
        (history, end, rx)
    }

    async fn publish(&self, ev: Event) {
        let subs = {
            let mut out = self.output();
            match &ev {
                Event::Data(d) => {
                    out.history_bytes += data_len(d);
                    out.history.push_back(d.clone());
                    while out.history_bytes > HISTORY_BYTES {
                        match out.history.pop_front() {
                            Some(old) => out.history_bytes -= data_len(&old),
                            None => break,
                        }
                    }
                }
                Event::End(e) => out.end = Some(e.clone()),
            }
            if matches!(ev, Event::End(_)) {
                std::mem::take(&mut out.subscribers)
            } else {
                out.subscribers.clone()
            }
        };
        let mut dead = Vec::new();
        for s in &subs {
            if s.send(ev.clone()).await.is_err() {
                dead.push(s.clone());
            }
        }
        if !dead.is_empty() {
            self.output()
                .subscribers
                .retain(|s| !dead.iter().any(|d| d.same_channel(s)));
        }
    }

    fn signal(&self, sig: i32) -> Result<(), ConnectError> {
        if self.exited() {
            return Err(not_found(&ProcessSelector::Pid(self.pid)));
        }
        // Signal the whole process group: `bash -c` children die with it.
        // SAFETY: plain kill(2) on a pid we started.
        let rc = unsafe { libc::kill(-(self.pid as i32), sig) };
        if rc != 0 {
            // SAFETY: as above; the group may not exist if the leader changed it.
            let rc2 = unsafe { libc::kill(self.pid as i32, sig) };
            if rc2 != 0 {
                return Err(ConnectError::internal(format!(
                    "sending signal to pid {}: {}",
                    self.pid,
                    std::io::Error::last_os_error()
                )));
            }
        }
        Ok(())
    }
}

fn data_len(d: &DataOutput) -> usize {
    match d {
        DataOutput::Stdout(b) | DataOutput::Stderr(b) | DataOutput::Pty(b) => b.len(),
    }
}

#[derive(Default)]
struct TableInner {
    procs: HashMap<u32, Arc<Proc>>,
    tags: HashMap<String, u32>,
    finished: VecDeque<u32>,
}

/// The processes this agent started, running and recently finished.
#[derive(Default)]
pub struct Table {
    inner: Mutex<TableInner>,
}

impl Table {
    fn lock(&self) -> MutexGuard<'_, TableInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn find(&self, sel: &ProcessSelector) -> Result<Arc<Proc>, ConnectError> {
        let t = self.lock();
        let pid = match sel {
            ProcessSelector::Pid(p) => Some(*p),
            ProcessSelector::Tag(tag) => t.tags.get(tag).copied(),
        };
        pid.and_then(|p| t.procs.get(&p).cloned())
            .ok_or_else(|| not_found(sel))
    }

    /// Called by the reaper for every child it collects. Unknown pids are
    /// orphans re-parented to PID 1 and need nothing more.
    pub fn reaped(&self, pid: u32, status: i32) {
        let proc_ = {
            let mut t = self.lock();
            let p = t.procs.get(&pid).cloned();
            if p.is_some() {
                t.finished.push_back(pid);
                while t.finished.len() > KEEP_FINISHED {
                    if let Some(old) = t.finished.pop_front() {
                        if let Some(op) = t.procs.remove(&old) {
                            if let Some(tag) = &op.tag {
                                if t.tags.get(tag) == Some(&old) {
                                    t.tags.remove(tag);
                                }
                            }
                        }
                    }
                }
            }
            p
        };
        if let Some(p) = proc_ {
            p.status.send_replace(Some(status));
        }
    }

    pub fn running(&self) -> Vec<ProcessInfo> {
        let t = self.lock();
        let mut v: Vec<_> = t
            .procs
            .values()
            .filter(|p| !p.exited())
            .map(|p| p.info())
            .collect();
        v.sort_by_key(|p| p.pid);
        v
    }
}

fn not_found(sel: &ProcessSelector) -> ConnectError {
    ConnectError::not_found(format!("{sel} not found"))
}

pub async fn handle(
    agent: &Arc<Agent>,
    m: Method,
    req: Request<Incoming>,
    ctx: RequestCtx,
) -> Resp {
    let body = req.into_body();
    match m {
        Method::Start => match rpc::stream_request::<StartRequest>(body).await {
            Ok(r) => match start(agent, r, &ctx) {
                Ok(p) => attach(p, &ctx, true),
                Err(e) => h::stream_err(&e),
            },
            Err(e) => h::stream_err(&e),
        },
        Method::Connect => match rpc::stream_request::<ConnectRequest>(body).await {
            Ok(r) => match agent.processes.find(&r.process) {
                Ok(p) => attach(p, &ctx, false),
                Err(e) => h::stream_err(&e),
            },
            Err(e) => h::stream_err(&e),
        },
        Method::List => match rpc::unary::<ListRequest>(body).await {
            Ok(_) => h::unary_ok(&ListResponse {
                processes: agent.processes.running(),
            }),
            Err(e) => h::unary_err(&e),
        },
        Method::SendInput => {
            let r = async {
                let r: SendInputRequest = rpc::unary(body).await?;
                let p = agent.processes.find(&r.process)?;
                write_input(&p, r.input).await
            };
            h::unary(r.await.map(|()| Empty {}))
        }
        // Client-streaming: the answer is a stream too, one `{}` message and
        // the end-of-stream envelope (the Python SDK checks the content type).
        Method::StreamInput => match stream_input(agent, body).await {
            Ok(msg) => {
                let (tx, rx) = mpsc::channel::<Bytes>(2);
                let _ = tx.try_send(connect::json_envelope(&msg));
                let _ = tx.try_send(connect::end_stream(None));
                h::stream(rx)
            }
            Err(e) => h::stream_err(&e),
        },
        Method::SendSignal => {
            let r = async {
                let r: SendSignalRequest = rpc::unary(body).await?;
                let p = agent.processes.find(&r.process)?;
                let sig = match r.signal {
                    Signal::Sigkill => libc::SIGKILL,
                    Signal::Sigterm => libc::SIGTERM,
                    Signal::Unspecified => {
                        return Err(ConnectError::invalid_argument("signal is required"))
                    }
                };
                p.signal(sig)
            };
            h::unary(r.await.map(|()| Empty {}))
        }
        Method::CloseStdin => {
            let r = async {
                let r: CloseStdinRequest = rpc::unary(body).await?;
                let p = agent.processes.find(&r.process)?;
                if p.pty.is_some() {
                    return Err(ConnectError::new(
                        Code::FailedPrecondition,
                        "cannot close stdin of a PTY process",
                    ));
                }
                let Some(tx) = &p.input else {
                    return Err(ConnectError::new(
                        Code::FailedPrecondition,
                        "process was started without stdin",
                    ));
                };
                let (ack, rx) = oneshot::channel();
                tx.send(InputCmd::Close(ack)).await.map_err(|_| {
                    ConnectError::new(Code::FailedPrecondition, "stdin is already closed")
                })?;
                rx.await.unwrap_or(Ok(()))
            };
            h::unary(r.await.map(|()| Empty {}))
        }
        Method::Update => {
            let r = async {
                let r: UpdateRequest = rpc::unary(body).await?;
                let p = agent.processes.find(&r.process)?;
                if let Some(size) = r.pty.and_then(|p| p.size) {
                    let Some(master) = &p.pty else {
                        return Err(ConnectError::new(
                            Code::FailedPrecondition,
                            "process has no PTY",
                        ));
                    };
                    set_winsize(master, size)?;
                }
                Ok(Empty {})
            };
            h::unary(r.await)
        }
    }
}

async fn write_input(p: &Proc, input: ProcessInput) -> Result<(), ConnectError> {
    let data = match (input, &p.pty) {
        (ProcessInput::Pty(d), Some(_)) | (ProcessInput::Stdin(d), Some(_)) => d,
        (ProcessInput::Stdin(d), None) => d,
        (ProcessInput::Pty(_), None) => {
            return Err(ConnectError::invalid_argument("process has no PTY"))
        }
    };
    if p.exited() {
        return Err(not_found(&ProcessSelector::Pid(p.pid)));
    }
    let Some(tx) = &p.input else {
        return Err(ConnectError::new(
            Code::FailedPrecondition,
            "process was started without stdin",
        ));
    };
    let (ack, rx) = oneshot::channel();
    tx.send(InputCmd::Write(data, ack))
        .await
        .map_err(|_| ConnectError::new(Code::FailedPrecondition, "stdin is closed"))?;
    rx.await.unwrap_or_else(|_| {
        Err(ConnectError::new(
            Code::FailedPrecondition,
            "stdin is closed",
        ))
    })
}

async fn stream_input(agent: &Arc<Agent>, body: Incoming) -> Result<Empty, ConnectError> {
    let mut msgs = rpc::EnvelopeStream::new(body);
    let mut target: Option<Arc<Proc>> = None;
    while let Some(m) = msgs.next::<StreamInputRequest>().await? {
        match m.event {
            StreamInputEvent::Start { process } => target = Some(agent.processes.find(&process)?),
            StreamInputEvent::Data { input } => {
                let p = target
                    .as_ref()
                    .ok_or_else(|| ConnectError::invalid_argument("data before start"))?;
                write_input(p, input).await?;
            }
            StreamInputEvent::Keepalive {} => {}
        }
    }
    Ok(Empty {})
}

fn set_winsize(master: &OwnedFd, size: PtySize) -> Result<(), ConnectError> {
    let ws = libc::winsize {
        ws_row: size.rows.min(u16::MAX as u32) as u16,
        ws_col: size.cols.min(u16::MAX as u32) as u16,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize struct we own from a valid pointer.
    let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if rc != 0 {
        return Err(ConnectError::internal(format!(
            "resizing pty: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

/// Streams a process's events to a client: `start`, replayed history (on
/// reattach), live data, keepalives, `end`, end-of-stream.
fn attach(p: Arc<Proc>, ctx: &RequestCtx, fresh: bool) -> Resp {
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let (history, end, mut events) = p.subscribe();
    let keepalive = ctx.keepalive;
    tokio::spawn(async move {
        let send = |kind: ProcessEventKind| connect::json_envelope(&ProcessEvent { event: kind });
        if tx
            .send(send(ProcessEventKind::Start { pid: p.pid }))
            .await
            .is_err()
        {
            return;
        }
        // A fresh Start has an empty history unless the process already
        // wrote something, which the client has not seen either.
        let _ = fresh;
        for d in history {
            if tx.send(send(ProcessEventKind::Data(d))).await.is_err() {
                return;
            }
        }
        if let Some(e) = end {
            let _ = tx.send(send(ProcessEventKind::End(e))).await;
            let _ = tx.send(connect::end_stream(None)).await;
            return;
        }
        loop {
            let ev = tokio::select! {
                ev = events.recv() => ev,
                _ = tokio::time::sleep(keepalive) => {
                    if tx.send(send(ProcessEventKind::Keepalive {})).await.is_err() { return; }
                    continue;
                }
                _ = tx.closed() => return,
            };
            match ev {
                Some(Event::Data(d)) => {
                    if tx.send(send(ProcessEventKind::Data(d))).await.is_err() {
                        return;
                    }
                }
                Some(Event::End(e)) => {
                    let _ = tx.send(send(ProcessEventKind::End(e))).await;
                    let _ = tx.send(connect::end_stream(None)).await;
                    return;
                }
                None => {
                    // The process table dropped us without an end: report it.
                    let err = ConnectError::internal("process output ended unexpectedly");
                    let _ = tx.send(connect::end_stream(Some(&err))).await;
                    return;
                }
            }
        }
    });
    h::stream(rx)
}

/// Environment of a command, in envd's order: PATH, HOME, USER, LOGNAME,
/// then sandbox-wide variables, then the request's (last wins).
pub(crate) fn command_env(
    agent: &Agent,
    user: &User,
    req: &BTreeMap<String, String>,
    pty: bool,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert("PATH".to_string(), agent.config.path.clone());
    env.insert("HOME".to_string(), user.home.display().to_string());
    env.insert("USER".to_string(), user.name.clone());
    env.insert("LOGNAME".to_string(), user.name.clone());
    env.insert(
        "SHELL".to_string(),
        if user.shell.is_empty() {
            "/bin/sh".into()
        } else {
            user.shell.clone()
        },
    );
    if pty {
        env.insert("TERM".to_string(), "xterm-256color".to_string());
    }
    for (k, v) in &agent.config.env {
        env.insert(k.clone(), v.clone());
    }
    for (k, v) in req {
        env.insert(k.clone(), v.clone());
    }
    env
}

fn start(agent: &Arc<Agent>, r: StartRequest, ctx: &RequestCtx) -> Result<Arc<Proc>, ConnectError> {
    if r.process.cmd.is_empty() {
        return Err(ConnectError::invalid_argument("process.cmd is required"));
    }
    let user = &ctx.user;
    let cwd = crate::paths::resolve(
        r.process.cwd.as_deref().unwrap_or(""),
        user,
        agent.config.default_workdir.as_deref(),
    );
    match std::fs::metadata(&cwd) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(ConnectError::invalid_argument(format!(
                "cwd '{}' is not a directory",
                cwd.display()
            )))
        }
        Err(_) => {
            return Err(ConnectError::invalid_argument(format!(
                "cwd '{}' does not exist",
                cwd.display()
            )))
        }
    }
    let pty_size = r
        .pty
        .map(|p| p.size.unwrap_or(PtySize { cols: 80, rows: 24 }));
    let want_stdin = r.stdin.unwrap_or(true) || pty_size.is_some();

    let mut cmd = std::process::Command::new(&r.process.cmd);
    cmd.args(&r.process.args).current_dir(&cwd).env_clear();
    cmd.envs(command_env(
        agent,
        user,
        &r.process.envs,
        pty_size.is_some(),
    ));

    let (uid, gid) = (user.uid, user.gid);
    let mut pty_master = None;
    let mut slave_fd: Option<OwnedFd> = None;
    if let Some(size) = pty_size {
        let (m, s) = open_pty(size)?;
        // The child owns its terminal: chown the slave so programs that
        // check the tty's owner (ssh-like tools, `mesg`) are content.
        // SAFETY: fchown on an fd we own.
        unsafe { libc::fchown(s.as_raw_fd(), uid, gid) };
        cmd.stdin(Stdio::from(dup(&s)?))
            .stdout(Stdio::from(dup(&s)?))
            .stderr(Stdio::from(dup(&s)?));
        pty_master = Some(m);
        slave_fd = Some(s);
    } else {
        cmd.stdin(if want_stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    }
    let setup = spawn::Setup::new(
        user,
        if pty_master.is_some() {
            spawn::Session::Terminal
        } else {
            spawn::Session::ProcessGroup
        },
    );

    // Hold the table lock across spawn and insert so the reaper cannot
    // collect the exit status before the process is registered.
    let mut table = agent.processes.lock();
    if let Some(tag) = &r.tag {
        if let Some(old) = table.tags.get(tag).and_then(|p| table.procs.get(p)) {
            if !old.exited() {
                return Err(ConnectError::new(
                    Code::AlreadyExists,
                    format!("a running process already has tag {tag}"),
                ));
            }
        }
    }
    let mut child = spawn::spawn(cmd, setup).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            ConnectError::invalid_argument(format!("executable '{}' not found", r.process.cmd))
        }
        std::io::ErrorKind::PermissionDenied => ConnectError::new(
            Code::PermissionDenied,
            format!("cannot execute '{}': {e}", r.process.cmd),
        ),
        _ => ConnectError::internal(format!("starting '{}': {e}", r.process.cmd)),
    })?;
    drop(slave_fd);
    let pid = child.id();
    let (status_tx, status_rx) = watch::channel(None);

    let mut pumps: Vec<Pump> = Vec::new();
    let mut input_fd: Option<OwnedFd> = None;
    let master = pty_master.map(Arc::new);
    if let Some(m) = &master {
        pumps.push((dup(m)?, DataOutput::Pty));
        input_fd = Some(dup(m)?);
    } else {
        if let Some(o) = child.stdout.take() {
            pumps.push((OwnedFd::from(o), DataOutput::Stdout));
        }
        if let Some(e) = child.stderr.take() {
            pumps.push((OwnedFd::from(e), DataOutput::Stderr));
        }
        if let Some(i) = child.stdin.take() {
            input_fd = Some(OwnedFd::from(i));
        }
    }
    // The reaper owns waiting; the std handle must not be used for it.
    drop(child);

    let input = input_fd.map(|fd| {
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(input_writer(fd, rx));
        tx
    });
    let p = Arc::new(Proc {
        pid,
        config: ProcessConfig {
            cwd: Some(cwd.display().to_string()),
            ..r.process.clone()
        },
        tag: r.tag.clone(),
        pty: master,
        input,
        output: Mutex::new(Output {
            history: VecDeque::new(),
            history_bytes: 0,
            subscribers: Vec::new(),
            end: None,
        }),
        status: status_tx,
    });
    table.procs.insert(pid, p.clone());
    if let Some(tag) = &r.tag {
        table.tags.insert(tag.clone(), pid);
    }
    drop(table);
    tracing::debug!(pid, cmd = %r.process.cmd, user = %user.name, "process started");

    tokio::spawn(supervise(p.clone(), pumps, status_rx, ctx.timeout));
    Ok(p)
}

/// Runs the output pumps, enforces the lifetime deadline, and publishes the
/// end event once the process has exited and its output is drained.
async fn supervise(
    p: Arc<Proc>,
    pumps: Vec<Pump>,
    mut status: watch::Receiver<Option<i32>>,
    lifetime: Option<Duration>,
) {
    let (exit_tx, exit_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    for (fd, wrap) in pumps {
        let p = p.clone();
        let exit_rx = exit_rx.clone();
        tasks.push(tokio::spawn(
            async move { pump(p, fd, wrap, exit_rx).await },
        ));
    }
    let deadline = lifetime.map(|d| Instant::now() + d);
    let mut timed_out = false;
    loop {
        if status.borrow().is_some() {
            break;
        }
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = status.changed() => if r.is_err() { break; },
            _ = sleep, if !timed_out => {
                timed_out = true;
                tracing::debug!(pid = p.pid, "process lifetime expired, killing");
                let _ = p.signal(libc::SIGKILL);
            }
        }
    }
    let _ = exit_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    let raw = (*status.borrow()).unwrap_or(0);
    p.publish(Event::End(end_event(raw))).await;
}

/// Reads one output stream until EOF, or, once the process has exited,
/// until no more data is immediately available: a background grandchild
/// holding the pipe open must not keep the command from finishing.
async fn pump(
    p: Arc<Proc>,
    fd: OwnedFd,
    wrap: fn(Vec<u8>) -> DataOutput,
    mut exited: watch::Receiver<bool>,
) {
    let Ok(afd) = spawn::async_fd(fd, Interest::READABLE) else {
        return;
    };
    let mut buf = vec![0u8; CHUNK];
    let mut draining = false;
    loop {
        if draining {
            match read_nb(afd.get_ref(), &mut buf) {
                ReadResult::Data(n) => {
                    p.publish(Event::Data(wrap(buf[..n].to_vec()))).await;
                    continue;
                }
                ReadResult::WouldBlock | ReadResult::Eof | ReadResult::Err => return,
            }
        }
        tokio::select! {
            guard = afd.readable() => {
                let Ok(mut guard) = guard else { return };
                match read_nb(afd.get_ref(), &mut buf) {
                    ReadResult::Data(n) => p.publish(Event::Data(wrap(buf[..n].to_vec()))).await,
                    ReadResult::WouldBlock => guard.clear_ready(),
                    ReadResult::Eof | ReadResult::Err => return,
                }
            }
            r = exited.changed() => {
                if r.is_err() || *exited.borrow() {
                    draining = true;
                }
            }
        }
    }
}

/// Writes client input to the process's stdin pipe or PTY master, one
/// request at a time, in order. Works for any fd type (tokio's pipe sender
/// refuses PTY masters), using readiness-driven non-blocking writes.
async fn input_writer(fd: OwnedFd, mut rx: mpsc::Receiver<InputCmd>) {
    let Ok(afd) = spawn::async_fd(fd, Interest::WRITABLE) else {
        return;
    };
    while let Some(cmd) = rx.recv().await {
        match cmd {
            InputCmd::Write(data, ack) => {
                let r = write_all(&afd, &data).await.map_err(|e| {
                    ConnectError::new(Code::FailedPrecondition, format!("writing to stdin: {e}"))
                });
                let _ = ack.send(r);
            }
            InputCmd::Close(ack) => {
                let _ = ack.send(Ok(()));
                return;
            }
        }
    }
}

async fn write_all(afd: &AsyncFd<OwnedFd>, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        let mut guard = afd.writable().await?;
        // SAFETY: writing from a live slice of its own length.
        let n = unsafe { libc::write(afd.get_ref().as_raw_fd(), data.as_ptr().cast(), data.len()) };
        if n >= 0 {
            data = &data[n as usize..];
        } else {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) => guard.clear_ready(),
                Some(libc::EINTR) => {}
                _ => return Err(e),
            }
        }
    }
    Ok(())
}

/// Go's `ProcessState.String()` and envd's exit code convention (-1 when
/// killed by a signal), which the SDKs show to users.
pub fn end_event(raw: i32) -> EndEvent {
    if libc::WIFEXITED(raw) {
        let code = libc::WEXITSTATUS(raw);
        let status = format!("exit status {code}");
        EndEvent {
            exit_code: code,
            exited: true,
            error: (code != 0).then(|| status.clone()),
            status,
        }
    } else if libc::WIFSIGNALED(raw) {
        let sig = libc::WTERMSIG(raw);
        let status = format!("signal: {}", signal_name(sig));
        EndEvent {
            exit_code: -1,
            exited: false,
            error: Some(status.clone()),
            status,
        }
    } else {
        EndEvent {
            exit_code: -1,
            exited: false,
            status: "unknown".into(),
            error: Some("unknown".into()),
        }
    }
}

fn signal_name(sig: i32) -> String {
    match sig {
        libc::SIGHUP => "hangup".into(),
        libc::SIGINT => "interrupt".into(),
        libc::SIGQUIT => "quit".into(),
        libc::SIGILL => "illegal instruction".into(),
        libc::SIGTRAP => "trace/breakpoint trap".into(),
        libc::SIGABRT => "aborted".into(),
        libc::SIGBUS => "bus error".into(),
        libc::SIGFPE => "floating point exception".into(),
        libc::SIGKILL => "killed".into(),
        libc::SIGUSR1 => "user defined signal 1".into(),
        libc::SIGSEGV => "segmentation fault".into(),
        libc::SIGUSR2 => "user defined signal 2".into(),
        libc::SIGPIPE => "broken pipe".into(),
        libc::SIGALRM => "alarm clock".into(),
        libc::SIGTERM => "terminated".into(),
        libc::SIGXCPU => "CPU time limit exceeded".into(),
        libc::SIGXFSZ => "file size limit exceeded".into(),
        n => format!("signal {n}"),
    }
}

fn dup(fd: &OwnedFd) -> Result<OwnedFd, ConnectError> {
    fd.try_clone()
        .map_err(|e| ConnectError::internal(format!("dup: {e}")))
}

/// Opens a new PTY pair from the sandbox's own devpts instance.
fn open_pty(size: PtySize) -> Result<(OwnedFd, OwnedFd), ConnectError> {
    let err =
        |what: &str| ConnectError::internal(format!("{what}: {}", std::io::Error::last_os_error()));
    // SAFETY: standard posix_openpt/grantpt/unlockpt/ptsname_r sequence on
    // fds we own; the name buffer is sized and NUL-terminated by the kernel.
    unsafe {
        let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        if m < 0 {
            return Err(err("opening /dev/ptmx"));
        }
        let master = OwnedFd::from_raw_fd(m);
        if libc::grantpt(m) != 0 || libc::unlockpt(m) != 0 {
            return Err(err("unlocking pty"));
        }
        let mut name = [0 as libc::c_char; 128];
        if libc::ptsname_r(m, name.as_mut_ptr(), name.len()) != 0 {
            return Err(err("ptsname"));
        }
        let path = CString::from_vec_unchecked(
            std::ffi::CStr::from_ptr(name.as_ptr()).to_bytes().to_vec(),
        );
        let s = libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        if s < 0 {
            return Err(err("opening pty slave"));
        }
        let slave = OwnedFd::from_raw_fd(s);
        set_winsize(&master, size)?;
        Ok((master, slave))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_events_match_go_strings() {
        let e = end_event(0);
        assert_eq!(
            (e.exit_code, e.exited, e.status.as_str(), e.error.is_none()),
            (0, true, "exit status 0", true)
        );
        let e = end_event(3 << 8);
        assert_eq!(
            (e.exit_code, e.error.as_deref()),
            (3, Some("exit status 3"))
        );
        let e = end_event(libc::SIGKILL);
        assert_eq!(
            (e.exit_code, e.exited, e.status.as_str()),
            (-1, false, "signal: killed")
        );
    }
}
