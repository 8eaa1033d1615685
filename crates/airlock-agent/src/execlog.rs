//! The sandbox's execution log: every process the agent starts and every
//! code-interpreter cell, with its output lines and outcome, in a bounded
//! ring, plus counters that the ring's bound never resets.
//!
//! The agent keeps it because the agent is the one place every execution
//! passes through, whoever asked for it (the proxy streams bytes; the
//! server never sees a command). The server reads it on the agent's socket
//! (`GET /airlock/log`, never proxied) and merges its own system entries.
//! The log lives in memory: it starts empty with every boot of the agent
//! (a restart, a resume of a filesystem-paused sandbox), as the processes
//! it describes do.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use airlock_proto::execlog::{rfc3339_ms, AgentLog, ExecutionStats, LogEntry, LogLevel, LogSource};

/// The ring's bounds: whichever is reached first drops the oldest entries.
const MAX_ENTRIES: usize = 5000;
const MAX_BYTES: usize = 2 * 1024 * 1024;
/// A longer output line is cut (with a marker), so one huge line cannot
/// evict the rest of the log.
const MAX_LINE: usize = 4096;
/// Output lines logged per execution; the rest is counted in one entry at
/// its end. The process table keeps the full output for reattaching.
pub(crate) const MAX_LINES_PER_EXECUTION: u32 = 1000;
/// Entries returned by one read.
const MAX_READ: usize = 2000;
/// The longest a reader may wait for new entries.
const MAX_WAIT: Duration = Duration::from_secs(30);
/// A command line is shown up to this many bytes.
const MAX_COMMAND: usize = 512;

#[derive(Default)]
struct Inner {
    entries: VecDeque<(u64, LogEntry)>,
    bytes: usize,
    next_seq: u64,
    stats: ExecutionStats,
}

pub struct ExecLog {
    inner: Mutex<Inner>,
    grew: tokio::sync::Notify,
    started_ms: i64,
}

impl Default for ExecLog {
    fn default() -> Self {
        Self { inner: Mutex::default(), grew: tokio::sync::Notify::new(), started_ms: now_ms() }
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn entry_size(e: &LogEntry) -> usize {
    e.message.len() + 96
}

/// Cuts `s` to at most `max` bytes on a character boundary.
pub(crate) fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &s[..end], s.len())
}

/// What the log says about one execution while it runs: when it began and
/// how many of its lines were logged (and partial lines not yet ended).
pub(crate) struct Execution {
    pub(crate) pid: u32,
    started: std::time::Instant,
    lines: u32,
    dropped: u64,
    carry: [Vec<u8>; 2],
}

impl Execution {
    pub(crate) fn elapsed_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
}

/// How an execution ended.
pub(crate) struct Outcome {
    pub(crate) exit_code: i32,
    pub(crate) error: Option<String>,
    pub(crate) cpu_ms: Option<u64>,
    pub(crate) max_rss_bytes: Option<u64>,
}

impl ExecLog {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, mut e: LogEntry) {
        {
            let mut g = self.lock();
            let ms = now_ms();
            e.timestamp_ms = ms;
            e.timestamp = rfc3339_ms(ms);
            let seq = g.next_seq;
            g.next_seq += 1;
            g.bytes += entry_size(&e);
            g.entries.push_back((seq, e));
            while g.entries.len() > MAX_ENTRIES || g.bytes > MAX_BYTES {
                match g.entries.pop_front() {
                    Some((_, old)) => {
                        g.bytes -= entry_size(&old);
                        g.stats.dropped_entries += 1;
                    }
                    None => break,
                }
            }
        }
        self.grew.notify_waiters();
    }

    /// A system entry (the agent's own news).
    pub fn system(&self, level: LogLevel, message: impl Into<String>) {
        self.push(LogEntry { level, source: LogSource::System, message: message.into(), ..Default::default() });
    }

    /// An execution began: `what` is its command line or a cell's summary.
    pub(crate) fn started(&self, pid: u32, what: &str) -> Execution {
        {
            let mut g = self.lock();
            g.stats.total += 1;
            g.stats.running += 1;
            g.stats.last_activity = Some(rfc3339_ms(now_ms()));
        }
        self.push(LogEntry { level: LogLevel::Info, source: LogSource::Execution, message: format!("started: {}", clip(what, MAX_COMMAND)), pid: Some(pid), ..Default::default() });
        Execution { pid, started: std::time::Instant::now(), lines: 0, dropped: 0, carry: [Vec::new(), Vec::new()] }
    }

    /// Output of a running execution: whole lines become entries, a
    /// partial one waits for its end (or the execution's).
    pub(crate) fn output(&self, x: &mut Execution, stderr: bool, data: &[u8]) {
        let i = usize::from(stderr);
        let mut rest = data;
        // One pass over the chunk (no shifting of a buffer per line: a
        // chunk can hold thousands of short lines).
        while let Some(nl) = rest.iter().position(|b| *b == b'\n') {
            if x.lines >= MAX_LINES_PER_EXECUTION {
                // Past the limit only the count matters.
                x.dropped += 1 + rest[nl + 1..].iter().filter(|b| **b == b'\n').count() as u64;
                x.carry[i].clear();
                return;
            }
            if x.carry[i].is_empty() {
                self.line(x, stderr, &rest[..nl]);
            } else {
                let mut line = std::mem::take(&mut x.carry[i]);
                line.extend_from_slice(&rest[..nl]);
                self.line(x, stderr, &line);
            }
            rest = &rest[nl + 1..];
        }
        if x.lines >= MAX_LINES_PER_EXECUTION {
            return;
        }
        x.carry[i].extend_from_slice(rest);
        if x.carry[i].len() > MAX_LINE {
            let line = std::mem::take(&mut x.carry[i]);
            self.line(x, stderr, &line);
        }
    }

    fn line(&self, x: &mut Execution, stderr: bool, line: &[u8]) {
        if x.lines >= MAX_LINES_PER_EXECUTION {
            x.dropped += 1;
            return;
        }
        x.lines += 1;
        let text = String::from_utf8_lossy(line);
        let text = text.strip_suffix('\r').unwrap_or(&text);
        let (level, source) = if stderr { (LogLevel::Warn, LogSource::Stderr) } else { (LogLevel::Info, LogSource::Stdout) };
        self.push(LogEntry { level, source, message: clip(text, MAX_LINE), pid: Some(x.pid), ..Default::default() });
    }

    /// An execution ended.
    pub(crate) fn ended(&self, mut x: Execution, o: Outcome) {
        for (i, stderr) in [(0, false), (1, true)] {
            let rest = std::mem::take(&mut x.carry[i]);
            if !rest.is_empty() {
                self.line(&mut x, stderr, &rest);
            }
        }
        if x.dropped > 0 {
            self.push(LogEntry {
                level: LogLevel::Warn,
                source: LogSource::System,
                message: format!("{} more output lines not logged (at most {MAX_LINES_PER_EXECUTION} per execution)", x.dropped),
                pid: Some(x.pid),
                ..Default::default()
            });
        }
        let ms = x.elapsed_ms();
        {
            let mut g = self.lock();
            g.stats.running = g.stats.running.saturating_sub(1);
            if o.exit_code == 0 && o.error.is_none() {
                g.stats.successful += 1;
            } else {
                g.stats.failed += 1;
            }
            g.stats.total_duration_ms += ms;
            let ended = g.stats.successful + g.stats.failed;
            g.stats.average_duration_ms = g.stats.total_duration_ms as f64 / ended.max(1) as f64;
            g.stats.last_activity = Some(rfc3339_ms(now_ms()));
        }
        let ok = o.exit_code == 0 && o.error.is_none();
        let message = match &o.error {
            Some(e) => format!("ended: {e} (exit code {}) after {ms} ms", o.exit_code),
            None => format!("ended: exit code {} after {ms} ms", o.exit_code),
        };
        self.push(LogEntry {
            level: if ok { LogLevel::Info } else { LogLevel::Error },
            source: LogSource::Execution,
            message,
            pid: Some(x.pid),
            exit_code: Some(o.exit_code),
            duration_ms: Some(ms),
            cpu_ms: o.cpu_ms,
            max_rss_bytes: o.max_rss_bytes,
            ..Default::default()
        });
    }

    /// Entries after sequence number `after` (all: `None`), waiting up to
    /// `wait` for the first new one when there are none yet. A reader whose
    /// `after` came from another agent (`boot`, that agent's start time, is
    /// not this one's) gets everything at once: this log started over.
    pub async fn read(&self, after: Option<u64>, wait: Duration, boot: Option<i64>) -> AgentLog {
        let (after, wait) = if boot.is_some_and(|b| b != self.started_ms) { (None, Duration::ZERO) } else { (after, wait) };
        let deadline = tokio::time::Instant::now() + wait.min(MAX_WAIT);
        loop {
            // Registered before looking, so an entry pushed in between
            // still wakes this reader.
            let grew = self.grew.notified();
            let log = self.snapshot(after);
            if !log.entries.is_empty() || tokio::time::Instant::now() >= deadline {
                return log;
            }
            if tokio::time::timeout_at(deadline, grew).await.is_err() {
                return self.snapshot(after);
            }
        }
    }

    fn snapshot(&self, after: Option<u64>) -> AgentLog {
        let g = self.lock();
        let entries: Vec<LogEntry> = g.entries.iter().filter(|(s, _)| after.is_none_or(|a| *s > a)).take(MAX_READ).map(|(_, e)| e.clone()).collect();
        // The next read starts after the last entry returned here.
        let first = g.entries.iter().position(|(s, _)| after.is_none_or(|a| *s > a));
        let next = match first {
            Some(i) => g.entries.get(i + entries.len() - 1).map(|(s, _)| *s).or(after).unwrap_or(0),
            None => after.unwrap_or_else(|| g.next_seq.saturating_sub(1)),
        };
        AgentLog { entries, stats: g.stats.clone(), next, env_names: Vec::new(), started_ms: self.started_ms }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(code: i32) -> Outcome {
        Outcome { exit_code: code, error: None, cpu_ms: None, max_rss_bytes: None }
    }

    #[tokio::test]
    async fn executions_log_lines_outcomes_and_counts() {
        let log = ExecLog::default();
        let mut x = log.started(7, "python3 -c print(1)");
        log.output(&mut x, false, b"one\ntw");
        log.output(&mut x, true, b"oops\n");
        log.output(&mut x, false, b"o\r\n");
        log.ended(x, outcome(3));
        let r = log.read(None, Duration::ZERO, None).await;
        let msgs: Vec<(LogSource, &str)> = r.entries.iter().map(|e| (e.source, e.message.as_str())).collect();
        assert_eq!(
            msgs,
            vec![
                (LogSource::Execution, "started: python3 -c print(1)"),
                (LogSource::Stdout, "one"),
                (LogSource::Stderr, "oops"),
                (LogSource::Stdout, "two"),
                (LogSource::Execution, msgs[4].1),
            ]
        );
        assert_eq!(r.entries[4].exit_code, Some(3));
        assert_eq!(r.entries[4].level, LogLevel::Error);
        assert_eq!((r.stats.total, r.stats.failed, r.stats.successful, r.stats.running), (1, 1, 0, 0));
        // Reading after the last entry returns nothing new.
        assert!(log.read(Some(r.next), Duration::ZERO, None).await.entries.is_empty());
    }

    #[tokio::test]
    async fn a_flood_of_output_logs_the_first_lines_and_counts_the_rest() {
        let log = ExecLog::default();
        let mut x = log.started(9, "seq 1 100000");
        let text: String = (1..=100_000).map(|n| format!("{n}\n")).collect();
        let t = std::time::Instant::now();
        for chunk in text.as_bytes().chunks(65536) {
            log.output(&mut x, false, chunk);
        }
        log.ended(x, outcome(0));
        assert!(t.elapsed() < Duration::from_secs(2), "one pass per chunk: {:?}", t.elapsed());
        let r = log.read(None, Duration::ZERO, None).await;
        let lines: Vec<&str> = r.entries.iter().filter(|e| e.source == LogSource::Stdout).map(|e| e.message.as_str()).collect();
        assert_eq!(lines.len(), MAX_LINES_PER_EXECUTION as usize);
        assert_eq!((lines[0], lines[999]), ("1", "1000"), "split across chunks correctly");
        let note = r.entries.iter().find(|e| e.message.contains("more output lines")).expect("the rest is counted");
        assert!(note.message.starts_with("99000 more"), "{}", note.message);
    }

    #[tokio::test]
    async fn the_ring_is_bounded_and_counts_what_it_dropped() {
        let log = ExecLog::default();
        for i in 0..(MAX_ENTRIES + 10) {
            log.system(LogLevel::Info, format!("entry {i}"));
        }
        let r = log.read(None, Duration::ZERO, None).await;
        assert_eq!(r.stats.dropped_entries, 10);
        assert_eq!(r.entries.len(), MAX_READ, "one read is bounded too");
        assert_eq!(r.entries[0].message, "entry 10");
    }

    #[tokio::test]
    async fn a_waiting_reader_wakes_on_a_new_entry() {
        let log = std::sync::Arc::new(ExecLog::default());
        log.system(LogLevel::Info, "first");
        let after = log.read(None, Duration::ZERO, None).await.next;
        let l2 = log.clone();
        let reader = tokio::spawn(async move { l2.read(Some(after), Duration::from_secs(10), None).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        log.system(LogLevel::Warn, "second");
        let r = tokio::time::timeout(Duration::from_secs(5), reader).await.expect("woken").expect("join");
        assert_eq!(r.entries.len(), 1);
        assert_eq!(r.entries[0].message, "second");
        // A reader that followed another agent starts over, without waiting.
        let r = tokio::time::timeout(Duration::from_secs(1), log.read(Some(after + 1), Duration::from_secs(10), Some(log.started_ms - 1))).await.expect("no wait");
        assert_eq!(r.entries.len(), 2);
    }

    #[test]
    fn long_lines_are_clipped_on_a_char_boundary() {
        let s = "é".repeat(3000);
        let c = clip(&s, 4095);
        assert!(c.starts_with('é') && c.contains("bytes)"));
    }
}
