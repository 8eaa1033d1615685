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
//!
//! `table` owns the process table and each process's output history and
//! subscribers; `start` turns a `Start` request into a running child (the
//! spawning itself is `crate::spawn`'s); `io` runs the output pumps, the
//! stdin writer and the streams to clients; `pty` the terminals;
//! `signals` signals and exit statuses. This module maps the RPCs onto
//! them.

use airlock_proto::wire::Rpc;
use std::sync::Arc;

use airlock_proto::connect::{self, Code, ConnectError};
use airlock_proto::envd::{
    CloseStdinRequest, ConnectRequest, Empty, ListRequest, ListResponse, ProcessInput, ProcessSelector, SendInputRequest, SendSignalRequest, Signal, StartRequest,
    StreamInputEvent, StreamInputRequest, UpdateRequest,
};
use bytes::Bytes;
use http::Request;
use hyper::body::Incoming;
use tokio::sync::{mpsc, oneshot};

use crate::http::{self as h, Resp};
use crate::rpc::{self, RequestCtx};
use crate::Agent;

mod io;
mod pty;
mod signals;
mod start;
pub(crate) mod table;

pub(crate) use signals::end_event;
pub(crate) use start::command_env;
pub(crate) use table::Proc;
pub use table::Table;

use io::{attach, InputCmd};
use pty::set_winsize;
use start::start;
use table::not_found;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Method {
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
    /// The process RPC `r` is, if it is one.
    pub(crate) fn from_rpc(r: Rpc) -> Option<Self> {
        Some(match r {
            Rpc::ProcessStart => Self::Start,
            Rpc::ProcessConnect => Self::Connect,
            Rpc::ProcessList => Self::List,
            Rpc::ProcessSendInput => Self::SendInput,
            Rpc::ProcessStreamInput => Self::StreamInput,
            Rpc::ProcessSendSignal => Self::SendSignal,
            Rpc::ProcessCloseStdin => Self::CloseStdin,
            Rpc::ProcessUpdate => Self::Update,
            _ => return None,
        })
    }

    /// Server-streaming methods answer with envelopes even on error.
    pub(crate) fn is_stream(self) -> bool {
        matches!(self, Self::Start | Self::Connect | Self::StreamInput)
    }
}

pub(crate) async fn handle(agent: &Arc<Agent>, m: Method, req: Request<Incoming>, ctx: RequestCtx) -> Resp {
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
            Ok(_) => h::unary_ok(&ListResponse { processes: agent.processes.running() }),
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
                    Signal::Unspecified => return Err(ConnectError::invalid_argument("signal is required")),
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
                    return Err(ConnectError::new(Code::FailedPrecondition, "cannot close stdin of a PTY process"));
                }
                let Some(tx) = &p.input else {
                    return Err(ConnectError::new(Code::FailedPrecondition, "process was started without stdin"));
                };
                let (ack, rx) = oneshot::channel();
                tx.send(InputCmd::Close(ack)).await.map_err(|_| ConnectError::new(Code::FailedPrecondition, "stdin is already closed"))?;
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
                        return Err(ConnectError::new(Code::FailedPrecondition, "process has no PTY"));
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
        (ProcessInput::Pty(_), None) => return Err(ConnectError::invalid_argument("process has no PTY")),
    };
    if p.exited() {
        return Err(not_found(&ProcessSelector::Pid(p.pid)));
    }
    let Some(tx) = &p.input else {
        return Err(ConnectError::new(Code::FailedPrecondition, "process was started without stdin"));
    };
    let (ack, rx) = oneshot::channel();
    tx.send(InputCmd::Write(data, ack)).await.map_err(|_| ConnectError::new(Code::FailedPrecondition, "stdin is closed"))?;
    rx.await.unwrap_or_else(|_| Err(ConnectError::new(Code::FailedPrecondition, "stdin is closed")))
}

async fn stream_input(agent: &Arc<Agent>, body: Incoming) -> Result<Empty, ConnectError> {
    let mut msgs = rpc::EnvelopeStream::new(body);
    let mut target: Option<Arc<Proc>> = None;
    while let Some(m) = msgs.next::<StreamInputRequest>().await? {
        match m.event {
            StreamInputEvent::Start { process } => target = Some(agent.processes.find(&process)?),
            StreamInputEvent::Data { input } => {
                let p = target.as_ref().ok_or_else(|| ConnectError::invalid_argument("data before start"))?;
                write_input(p, input).await?;
            }
            StreamInputEvent::Keepalive {} => {}
        }
    }
    Ok(Empty {})
}
