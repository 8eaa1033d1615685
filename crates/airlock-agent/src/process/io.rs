//! Moving bytes: the output pumps that read a process's pipes or PTY into
//! its history and subscribers, the supervisor that ends them once the
//! process has exited (or its lifetime is up), the stdin writer, and the
//! event stream each client attaches to.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_proto::connect::{self, Code, ConnectError};
use airlock_proto::envd::{DataOutput, ProcessEvent, ProcessEventKind};
use bytes::Bytes;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::{mpsc, oneshot, watch};

use super::end_event;
use super::table::{Event, Proc};
use crate::http::{self as h, Resp};
use crate::rpc::RequestCtx;
use crate::spawn::{self, read_nb, ReadResult};

/// Largest data event, as envd reads.
const CHUNK: usize = 32 * 1024;

/// One output stream to pump: the fd and the event kind its chunks become.
pub(crate) type Pump = (OwnedFd, fn(Vec<u8>) -> DataOutput);

pub(crate) enum InputCmd {
    Write(Vec<u8>, oneshot::Sender<Result<(), ConnectError>>),
    Close(oneshot::Sender<Result<(), ConnectError>>),
}

/// Streams a process's events to a client: `start`, replayed history (on
/// reattach), live data, keepalives, `end`, end-of-stream.
pub(crate) fn attach(p: Arc<Proc>, ctx: &RequestCtx, fresh: bool) -> Resp {
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let (history, end, mut events) = p.subscribe();
    let keepalive = ctx.keepalive;
    tokio::spawn(async move {
        let send = |kind: ProcessEventKind| connect::json_envelope(&ProcessEvent { event: kind });
        if tx.send(send(ProcessEventKind::Start { pid: p.pid })).await.is_err() {
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

/// Runs the output pumps, enforces the lifetime deadline, and publishes the
/// end event once the process has exited and its output is drained.
pub(crate) async fn supervise(p: Arc<Proc>, pumps: Vec<Pump>, mut status: watch::Receiver<Option<i32>>, lifetime: Option<Duration>) {
    let (exit_tx, exit_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    for (fd, wrap) in pumps {
        let p = p.clone();
        let exit_rx = exit_rx.clone();
        tasks.push(tokio::spawn(async move { pump(p, fd, wrap, exit_rx).await }));
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
async fn pump(p: Arc<Proc>, fd: OwnedFd, wrap: fn(Vec<u8>) -> DataOutput, mut exited: watch::Receiver<bool>) {
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
pub(crate) async fn input_writer(fd: OwnedFd, mut rx: mpsc::Receiver<InputCmd>) {
    let Ok(afd) = spawn::async_fd(fd, Interest::WRITABLE) else {
        return;
    };
    while let Some(cmd) = rx.recv().await {
        match cmd {
            InputCmd::Write(data, ack) => {
                let r = write_all(&afd, &data).await.map_err(|e| ConnectError::new(Code::FailedPrecondition, format!("writing to stdin: {e}")));
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
