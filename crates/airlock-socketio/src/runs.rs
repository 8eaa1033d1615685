//! Executions that outlive their socket: a `code:run` or `terminal:run`
//! goes on when its client disconnects, and a client that reconnects (a
//! new socket, same API key) re-subscribes by execution id: it gets every
//! event so far, in order, then the rest as they come, then the outcome.
//!
//! Each execution keeps its events (up to `MAX_BUFFERED_BYTES`; past that
//! they are still delivered live, and a late subscriber is told what it
//! missed) until `KEEP_AFTER_END` after it ended.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::error::GwError;

/// How long a finished execution can still be subscribed to.
const KEEP_AFTER_END: Duration = Duration::from_secs(300);
/// Event bytes kept per execution for late subscribers.
const MAX_BUFFERED_BYTES: usize = 8 * 1024 * 1024;
/// Executions kept at once (running ones are never dropped).
const MAX_RUNS: usize = 1000;

/// What a subscriber receives, in order.
#[derive(Debug, Clone)]
pub(crate) enum Msg {
    /// An event to emit (`code:stdout`, ...) with its payload.
    Event(&'static str, Value),
    /// The outcome: the acknowledgement's payload.
    Done(Result<Value, GwError>),
}

struct State {
    events: Vec<(&'static str, Value)>,
    /// The last event's sequence number (1, 2, ...): a client that
    /// re-subscribes skips what it saw by it.
    seq: u64,
    bytes: usize,
    /// Events not kept because the buffer was full.
    dropped: u64,
    done: Option<Result<Value, GwError>>,
    ended: Option<Instant>,
    subscribers: Vec<mpsc::UnboundedSender<Msg>>,
}

/// One execution's record.
pub(crate) struct Run {
    /// The API key that started it: only that key may subscribe.
    key: String,
    state: Mutex<State>,
}

impl Run {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records an event and hands it to every subscriber still there.
    pub(crate) fn emit(&self, event: &'static str, mut payload: Value) {
        let mut s = self.lock();
        s.seq += 1;
        if let Some(o) = payload.as_object_mut() {
            o.insert("seq".into(), s.seq.into());
        }
        let size = payload.to_string().len();
        if s.bytes + size <= MAX_BUFFERED_BYTES {
            s.bytes += size;
            s.events.push((event, payload.clone()));
        } else {
            s.dropped += 1;
        }
        s.subscribers.retain(|tx| tx.send(Msg::Event(event, payload.clone())).is_ok());
    }

    /// Records the outcome; subscribers get it and are let go.
    pub(crate) fn finish(&self, outcome: Result<Value, GwError>) {
        let mut s = self.lock();
        s.ended = Some(Instant::now());
        s.done = Some(outcome.clone());
        for tx in s.subscribers.drain(..) {
            let _ = tx.send(Msg::Done(outcome.clone()));
        }
    }

    /// A new subscriber: everything so far, then what follows. Replay and
    /// registration happen under one lock, so nothing falls between them.
    pub(crate) fn subscribe(&self) -> mpsc::UnboundedReceiver<Msg> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut s = self.lock();
        if s.dropped > 0 {
            let _ = tx.send(Msg::Event("execution:truncated", json!({ "missedEvents": s.dropped })));
        }
        for (e, p) in &s.events {
            let _ = tx.send(Msg::Event(e, p.clone()));
        }
        match &s.done {
            Some(d) => {
                let _ = tx.send(Msg::Done(d.clone()));
            }
            None => s.subscribers.push(tx),
        }
        rx
    }
}

/// Every execution by id.
#[derive(Default)]
pub(crate) struct Registry {
    runs: Mutex<HashMap<String, Arc<Run>>>,
}

impl Registry {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Run>>> {
        self.runs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a new execution; refused when the id is taken or too many
    /// executions are live.
    pub(crate) fn start(&self, id: &str, key: &str) -> Result<Arc<Run>, GwError> {
        let mut m = self.map();
        m.retain(|_, r| r.lock().ended.is_none_or(|t| t.elapsed() < KEEP_AFTER_END));
        if m.contains_key(id) {
            return Err(GwError::invalid(format!("execution id {id:?} is already in use: give each execution its own")));
        }
        if m.len() >= MAX_RUNS {
            // Finished ones go first, oldest first.
            let mut ended: Vec<(String, Instant)> = m.iter().filter_map(|(k, r)| r.lock().ended.map(|t| (k.clone(), t))).collect();
            ended.sort_by_key(|(_, t)| *t);
            for (k, _) in ended.into_iter().take(m.len() + 1 - MAX_RUNS) {
                m.remove(&k);
            }
            if m.len() >= MAX_RUNS {
                return Err(GwError::new("RATE_LIMITED", format!("{MAX_RUNS} executions are running on this server's Socket.IO endpoint; wait for some to end")));
            }
        }
        let run =
            Arc::new(Run { key: key.to_string(), state: Mutex::new(State { events: Vec::new(), seq: 0, bytes: 0, dropped: 0, done: None, ended: None, subscribers: Vec::new() }) });
        m.insert(id.to_string(), run.clone());
        Ok(run)
    }

    /// The execution `id`, if `key` started it.
    pub(crate) fn get(&self, id: &str, key: &str) -> Result<Arc<Run>, GwError> {
        match self.map().get(id) {
            // Another key's execution is as good as absent.
            Some(r) if r.key == key => Ok(r.clone()),
            _ => Err(GwError::not_found(format!("no execution {id:?}: it never ran with this API key, or ended more than {} s ago", KEEP_AFTER_END.as_secs()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(rx: &mut mpsc::UnboundedReceiver<Msg>) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(m) = rx.try_recv() {
            out.push(match m {
                Msg::Event(e, p) => format!("{e}:{}", p["text"].as_str().unwrap_or("")),
                Msg::Done(Ok(_)) => "done".into(),
                Msg::Done(Err(e)) => format!("error:{}", e.code),
            });
        }
        out
    }

    #[test]
    fn a_late_subscriber_gets_everything_in_order_then_the_rest() {
        let reg = Registry::default();
        let run = reg.start("e1", "k").expect("start");
        let mut first = run.subscribe();
        run.emit("code:stdout", json!({"text": "a"}));
        run.emit("code:stdout", json!({"text": "b"}));
        let mut late = reg.get("e1", "k").expect("get").subscribe();
        run.emit("code:stderr", json!({"text": "c"}));
        run.finish(Ok(json!({})));
        let want = ["code:stdout:a", "code:stdout:b", "code:stderr:c", "done"];
        assert_eq!(drain(&mut first), want);
        assert_eq!(drain(&mut late), want);
        // After the end: still replayable, to its own key only.
        assert_eq!(drain(&mut run.subscribe()), want);
        assert_eq!(reg.get("e1", "other").err().map(|e| e.code), Some("NOT_FOUND"));
        assert_eq!(reg.start("e1", "k").err().map(|e| e.code), Some("INVALID_ARGUMENT"), "ids are not reused while kept");
    }

    #[test]
    fn a_full_buffer_still_delivers_live_and_says_what_a_late_subscriber_missed() {
        let reg = Registry::default();
        let run = reg.start("big", "k").expect("start");
        let mut live = run.subscribe();
        let chunk = "x".repeat(1024 * 1024);
        for _ in 0..10 {
            run.emit("code:stdout", json!({ "text": chunk }));
        }
        assert_eq!(drain(&mut live).len(), 10, "live delivery is not bounded by the buffer");
        let late = drain(&mut run.subscribe());
        assert!(late[0].starts_with("execution:truncated"), "{:?}", &late[..1]);
        assert!(late.len() < 10);
    }
}
