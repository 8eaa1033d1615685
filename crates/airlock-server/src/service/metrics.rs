//! Usage samples: taken on the sampler's schedule, kept an hour per
//! sandbox, served as E2B's metrics.

use super::*;

impl Service {
    pub async fn metrics(&self, id: &str, start: Option<i64>, end: Option<i64>) -> Result<Vec<SandboxMetric>, ApiError> {
        let row = self.row(id).await?;
        let has = self.samples.lock().unwrap_or_else(|p| p.into_inner()).get(id).is_some_and(|v| !v.is_empty());
        if !has && row.state.takes_traffic() {
            self.sample(&row).await;
        }
        // Any i64 a client sends: saturate, never overflow (an overflow
        // would be a panic in debug builds and a wrapped range in release).
        let start_ms = start.map(|s| s.saturating_mul(1000)).unwrap_or(i64::MIN);
        let end_ms = end.map(|e| e.saturating_mul(1000).saturating_add(999)).unwrap_or(i64::MAX);
        let samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let cpu_count = row.cpus.ceil().max(1.0) as u32;
        Ok(samples
            .get(id)
            .map(|v| {
                v.iter()
                    .filter(|s| s.at_ms >= start_ms && s.at_ms <= end_ms)
                    .map(|s| SandboxMetric {
                        timestamp: rfc3339_ms(s.at_ms),
                        timestamp_unix: s.at_ms / 1000,
                        cpu_count,
                        cpu_used_pct: (s.cpu_pct * 100.0).round() / 100.0,
                        mem_used: s.mem,
                        mem_total: s.mem_limit,
                        mem_cache: 0,
                        disk_used: s.disk,
                        disk_total: s.disk_limit,
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    pub(super) async fn sample(&self, row: &SandboxRow) {
        let backend = self.backend.clone();
        let id = row.id.clone();
        let Ok(Ok(u)) = self.blocking(move || backend.usage(&id)).await else { return };
        let now = now_ms();
        let mut all = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let v = all.entry(row.id.clone()).or_default();
        let cpu_pct = match v.back() {
            Some(prev) if now > prev.at_ms && u.cpu_usage_ns >= prev.cpu_ns => {
                let used = (u.cpu_usage_ns - prev.cpu_ns) as f64;
                let avail = (now - prev.at_ms) as f64 * 1e6 * row.cpus.max(0.01);
                (used / avail * 100.0).clamp(0.0, 100.0)
            }
            _ => 0.0,
        };
        v.push_back(Sample {
            at_ms: now,
            cpu_ns: u.cpu_usage_ns,
            cpu_pct,
            mem: u.memory_bytes,
            mem_limit: u.memory_limit_bytes,
            disk: u.disk_bytes,
            disk_limit: u.disk_limit_bytes,
        });
        while v.len() > MAX_SAMPLES {
            v.pop_front();
        }
    }

    /// Samples usage of running sandboxes and notices ones whose PID 1
    /// died while the server was up (OOM of the agent, a crash): those are
    /// cleaned up like a kill.
    pub async fn sample_all(&self) {
        let store = self.store.clone();
        let Ok(Ok(rows)) = self.blocking(move || store.sandboxes()).await else { return };
        for row in rows.into_iter().filter(|r| r.state.takes_traffic()) {
            let backend = self.backend.clone();
            let id = row.id.clone();
            let alive = self.blocking(move || backend.get(&id).is_ok()).await.unwrap_or(true);
            if !alive {
                if let Err(e) = self.record_death(&row.id).await {
                    tracing::warn!(sandbox_id = %row.id, error = %e, "recording a sandbox's death failed");
                }
                continue;
            }
            self.sample(&row).await;
        }
    }
}
