//! The process table: every process the agent started, running or
//! recently finished, found by pid or tag, with each one's bounded output
//! history and live subscribers. Exit statuses arrive from the reaper.

use std::collections::{HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard};

use airlock_proto::connect::ConnectError;
use airlock_proto::envd::{DataOutput, EndEvent, ProcessConfig, ProcessInfo, ProcessSelector};
use tokio::sync::{mpsc, watch};

use super::io::InputCmd;

/// Output kept per process for clients that reattach.
const HISTORY_BYTES: usize = 1024 * 1024;
/// Finished processes kept for reattach, oldest dropped first.
const KEEP_FINISHED: usize = 256;
/// Events buffered per subscriber before the pump waits for it.
const SUBSCRIBER_QUEUE: usize = 64;

/// Something a subscriber receives.
#[derive(Debug, Clone)]
pub(crate) enum Event {
    Data(DataOutput),
    End(EndEvent),
}

pub(crate) struct Output {
    pub(crate) history: VecDeque<DataOutput>,
    pub(crate) history_bytes: usize,
    pub(crate) subscribers: Vec<mpsc::Sender<Event>>,
    /// Set once every pump has finished and the exit status is known.
    pub(crate) end: Option<EndEvent>,
}

/// One started process.
pub(crate) struct Proc {
    pub(crate) pid: u32,
    pub(crate) config: ProcessConfig,
    pub(crate) tag: Option<String>,
    pub(crate) pty: Option<Arc<OwnedFd>>,
    pub(crate) input: Option<mpsc::Sender<InputCmd>>,
    pub(crate) output: Mutex<Output>,
    /// The raw wait status, published by the reaper.
    pub(crate) status: watch::Sender<Option<i32>>,
    /// The execution log's view of this process until it ends.
    pub(crate) exec: Mutex<Option<crate::execlog::Execution>>,
    pub(crate) log: Arc<crate::execlog::ExecLog>,
    /// CPU time and peak memory from `wait4`, set by the reaper.
    pub(crate) usage: Mutex<Option<Usage>>,
}

/// What the kernel says a process used, at its end.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Usage {
    pub(crate) cpu_ms: u64,
    pub(crate) max_rss_bytes: u64,
}

impl Proc {
    pub(crate) fn output(&self) -> MutexGuard<'_, Output> {
        // A poisoned lock only means a panic elsewhere; the data is still usable.
        self.output.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn exited(&self) -> bool {
        self.status.borrow().is_some()
    }

    pub(crate) fn info(&self) -> ProcessInfo {
        ProcessInfo { config: self.config.clone(), pid: self.pid, tag: self.tag.clone() }
    }

    /// Registers a subscriber and returns what it missed. Taken under the
    /// output lock, so no chunk is both replayed and delivered, or neither.
    pub(crate) fn subscribe(&self) -> (Vec<DataOutput>, Option<EndEvent>, mpsc::Receiver<Event>) {
        let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE);
        let mut out = self.output();
        let history = out.history.iter().cloned().collect();
        let end = out.end.clone();
        if end.is_none() {
            out.subscribers.push(tx);
        }
        (history, end, rx)
    }

    /// Tells the execution log about output and the end.
    fn log_event(&self, ev: &Event) {
        let mut x = self.exec.lock().unwrap_or_else(|p| p.into_inner());
        match ev {
            Event::Data(d) => {
                if let Some(x) = x.as_mut() {
                    match d {
                        DataOutput::Stdout(b) | DataOutput::Pty(b) => self.log.output(x, false, b),
                        DataOutput::Stderr(b) => self.log.output(x, true, b),
                    }
                }
            }
            Event::End(e) => {
                if let Some(x) = x.take() {
                    let u = *self.usage.lock().unwrap_or_else(|p| p.into_inner());
                    self.log.ended(
                        x,
                        crate::execlog::Outcome { exit_code: e.exit_code, error: e.error.clone(), cpu_ms: u.map(|u| u.cpu_ms), max_rss_bytes: u.map(|u| u.max_rss_bytes) },
                    );
                }
            }
        }
    }

    pub(crate) async fn publish(&self, ev: Event) {
        self.log_event(&ev);
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
            self.output().subscribers.retain(|s| !dead.iter().any(|d| d.same_channel(s)));
        }
    }
}

fn data_len(d: &DataOutput) -> usize {
    match d {
        DataOutput::Stdout(b) | DataOutput::Stderr(b) | DataOutput::Pty(b) => b.len(),
    }
}

#[derive(Default)]
pub(crate) struct TableInner {
    pub(crate) procs: HashMap<u32, Arc<Proc>>,
    pub(crate) tags: HashMap<String, u32>,
    pub(crate) finished: VecDeque<u32>,
}

/// The processes this agent started, running and recently finished.
#[derive(Default)]
pub struct Table {
    inner: Mutex<TableInner>,
}

impl Table {
    pub(crate) fn lock(&self) -> MutexGuard<'_, TableInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn find(&self, sel: &ProcessSelector) -> Result<Arc<Proc>, ConnectError> {
        let t = self.lock();
        let pid = match sel {
            ProcessSelector::Pid(p) => Some(*p),
            ProcessSelector::Tag(tag) => t.tags.get(tag).copied(),
        };
        pid.and_then(|p| t.procs.get(&p).cloned()).ok_or_else(|| not_found(sel))
    }

    /// Called by the reaper for every child it collects. Unknown pids are
    /// orphans re-parented to PID 1 and need nothing more.
    pub(crate) fn reaped(&self, pid: u32, status: i32, usage: Option<Usage>) {
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
            *p.usage.lock().unwrap_or_else(|p| p.into_inner()) = usage;
            p.status.send_replace(Some(status));
        }
    }

    pub(crate) fn running(&self) -> Vec<ProcessInfo> {
        let t = self.lock();
        let mut v: Vec<_> = t.procs.values().filter(|p| !p.exited()).map(|p| p.info()).collect();
        v.sort_by_key(|p| p.pid);
        v
    }
}

pub(crate) fn not_found(sel: &ProcessSelector) -> ConnectError {
    ConnectError::not_found(format!("{sel} not found"))
}
