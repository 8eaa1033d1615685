//! The server's own counters and latency histograms, exposed in the
//! Prometheus text format at `GET /metrics` (with the gauges read at
//! scrape time: sandboxes by state). Plain atomics: recording is a few
//! relaxed adds on paths that already do far more.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 11] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// A latency histogram: cumulative counts per bucket, a sum, a count.
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    /// Microseconds, so the sum stays an integer.
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    const fn new() -> Self {
        Self { buckets: [const { AtomicU64::new(0) }; BUCKETS.len()], sum_us: AtomicU64::new(0), count: AtomicU64::new(0) }
    }

    pub fn observe(&self, d: std::time::Duration) {
        let s = d.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if s <= *b {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.sum_us.fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {}", self.buckets[i].load(Ordering::Relaxed));
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_us.load(Ordering::Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// Responses by status class (1xx..5xx).
pub struct ByClass([AtomicU64; 5]);

impl ByClass {
    const fn new() -> Self {
        Self([const { AtomicU64::new(0) }; 5])
    }

    pub fn record(&self, status: u16) {
        let i = (status / 100).clamp(1, 5) as usize - 1;
        self.0[i].fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (i, c) in self.0.iter().enumerate() {
            let _ = writeln!(out, "{name}{{code=\"{}xx\"}} {}", i + 1, c.load(Ordering::Relaxed));
        }
    }
}

/// Errors the control API answered, by `ApiError::kind`.
pub struct ByKind(std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>);

impl ByKind {
    const fn new() -> Self {
        Self(std::sync::Mutex::new(std::collections::BTreeMap::new()))
    }

    pub fn record(&self, kind: &'static str) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()).entry(kind).or_default() += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (k, v) in self.0.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = writeln!(out, "{name}{{kind=\"{k}\"}} {v}");
        }
    }
}

pub struct Telemetry {
    pub api_responses: ByClass,
    pub proxy_responses: ByClass,
    pub create_seconds: Histogram,
    pub kill_seconds: Histogram,
    pub create_failures: AtomicU64,
    pub events: AtomicU64,
    pub events_failed: AtomicU64,
    pub pool_claims: AtomicU64,
    pub pool_misses: AtomicU64,
    pub pool_fill_seconds: Histogram,
    pub proxy_bytes_in: AtomicU64,
    pub proxy_bytes_out: AtomicU64,
    pub api_errors: ByKind,
    /// Times a live event stream fell behind the broadcast and caught up
    /// from the store (events are never lost to it, only delayed).
    pub event_stream_lagged: AtomicU64,
    /// Webhook deliveries that got a 2xx, attempts tried again, and events
    /// given up on after every attempt failed.
    pub webhook_deliveries: AtomicU64,
    pub webhook_retries: AtomicU64,
    pub webhook_failures: AtomicU64,
}

/// The one registry of the process.
pub static TELEMETRY: Telemetry = Telemetry {
    api_responses: ByClass::new(),
    proxy_responses: ByClass::new(),
    create_seconds: Histogram::new(),
    kill_seconds: Histogram::new(),
    create_failures: AtomicU64::new(0),
    events: AtomicU64::new(0),
    events_failed: AtomicU64::new(0),
    pool_claims: AtomicU64::new(0),
    pool_misses: AtomicU64::new(0),
    pool_fill_seconds: Histogram::new(),
    proxy_bytes_in: AtomicU64::new(0),
    proxy_bytes_out: AtomicU64::new(0),
    api_errors: ByKind::new(),
    event_stream_lagged: AtomicU64::new(0),
    webhook_deliveries: AtomicU64::new(0),
    webhook_retries: AtomicU64::new(0),
    webhook_failures: AtomicU64::new(0),
};

/// A label value in the exposition format's escaping.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn counter(out: &mut String, name: &str, help: &str, v: u64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
}

/// The exposition, with `sandboxes` (state, count) and `pools` (name,
/// ready, size) read by the caller.
pub fn render(sandboxes: &[(&str, usize)], pools: &[(String, u32, u32)]) -> String {
    let t = &TELEMETRY;
    let mut out = String::new();
    let _ = writeln!(out, "# HELP airlock_sandboxes Sandboxes the server knows, by state.\n# TYPE airlock_sandboxes gauge");
    for (state, n) in sandboxes {
        let _ = writeln!(out, "airlock_sandboxes{{state=\"{state}\"}} {n}");
    }
    t.create_seconds.render(&mut out, "airlock_sandbox_create_seconds", "Successful creates (and forks, imports), from admission to running.");
    t.kill_seconds.render(&mut out, "airlock_sandbox_kill_seconds", "Sandbox destroys (kills, timeouts).");
    counter(&mut out, "airlock_sandbox_create_failures_total", "Creates that failed after admission.", t.create_failures.load(Ordering::Relaxed));
    t.api_responses.render(&mut out, "airlock_api_responses_total", "Control-API responses by status class.");
    t.proxy_responses.render(&mut out, "airlock_proxy_responses_total", "Sandbox-traffic responses by status class.");
    counter(&mut out, "airlock_events_total", "Lifecycle events recorded.", t.events.load(Ordering::Relaxed));
    counter(&mut out, "airlock_events_failed_total", "Lifecycle events that could not be recorded.", t.events_failed.load(Ordering::Relaxed));
    t.api_errors.render(&mut out, "airlock_api_errors_total", "Control-API errors by kind.");
    counter(&mut out, "airlock_event_stream_lagged_total", "Times a live event stream fell behind and caught up from the store.", t.event_stream_lagged.load(Ordering::Relaxed));
    counter(&mut out, "airlock_proxy_received_bytes_total", "Bytes of request bodies proxied into sandboxes.", t.proxy_bytes_in.load(Ordering::Relaxed));
    counter(&mut out, "airlock_proxy_sent_bytes_total", "Bytes of response bodies proxied out of sandboxes.", t.proxy_bytes_out.load(Ordering::Relaxed));
    let _ = writeln!(out, "# HELP airlock_pool_ready Sandboxes ready in a warm pool.\n# TYPE airlock_pool_ready gauge");
    for (name, ready, _) in pools {
        let _ = writeln!(out, "airlock_pool_ready{{pool=\"{}\"}} {ready}", label(name));
    }
    let _ = writeln!(out, "# HELP airlock_pool_size Sandboxes a warm pool keeps.\n# TYPE airlock_pool_size gauge");
    for (name, _, size) in pools {
        let _ = writeln!(out, "airlock_pool_size{{pool=\"{}\"}} {size}", label(name));
    }
    counter(&mut out, "airlock_pool_claims_total", "Creates served from a warm pool.", t.pool_claims.load(Ordering::Relaxed));
    counter(&mut out, "airlock_pool_misses_total", "Creates of a pool's shape that found it empty.", t.pool_misses.load(Ordering::Relaxed));
    t.pool_fill_seconds.render(&mut out, "airlock_pool_fill_seconds", "Starting one sandbox for a warm pool.");
    counter(&mut out, "airlock_webhook_deliveries_total", "Webhook deliveries answered with a 2xx.", t.webhook_deliveries.load(Ordering::Relaxed));
    counter(&mut out, "airlock_webhook_retries_total", "Webhook delivery attempts that failed and were tried again.", t.webhook_retries.load(Ordering::Relaxed));
    counter(&mut out, "airlock_webhook_failures_total", "Webhook deliveries given up after every attempt failed.", t.webhook_failures.load(Ordering::Relaxed));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_classes_bounded() {
        let h = Histogram::new();
        h.observe(std::time::Duration::from_millis(3));
        h.observe(std::time::Duration::from_millis(30));
        let mut out = String::new();
        h.render(&mut out, "x", "help");
        assert!(out.contains("x_bucket{le=\"0.005\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.05\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 2\nx_sum 0.033\nx_count 2\n"), "{out}");
        let c = ByClass::new();
        for s in [0, 204, 404, 503, 999] {
            c.record(s);
        }
        let mut out = String::new();
        c.render(&mut out, "y", "help");
        assert!(out.contains("y{code=\"1xx\"} 1\ny{code=\"2xx\"} 1\ny{code=\"3xx\"} 0\ny{code=\"4xx\"} 1\ny{code=\"5xx\"} 2\n"), "{out}");
    }
}
