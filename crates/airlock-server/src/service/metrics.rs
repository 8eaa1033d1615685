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

    /// Whether a sandbox works: its agent runs a command within three
    /// seconds, its disk and memory are below 95% of their limits, and
    /// each of the caller's `checks` (shell commands, run as the template's
    /// user, ten seconds each) exits 0.
    pub async fn health(&self, id: &str, checks: Vec<String>) -> Result<api::SandboxHealth, ApiError> {
        if let Some(dead) = self.dead_row(id).await? {
            return Err(Self::death_error(&dead));
        }
        let row = self.row(id).await?;
        let mut out = Vec::new();
        let check = |name: &str, ok: bool, detail: String| api::HealthCheck { name: name.to_string(), ok, detail };
        if !row.state.takes_traffic() {
            out.push(check("agent", false, format!("the sandbox is {}: nothing runs in it until it is resumed", row.state.api_str())));
            return Ok(api::SandboxHealth { healthy: false, state: row.state.api_str().into(), checks: out });
        }
        let info = self.route(id).await?;
        let t0 = Instant::now();
        let token = row.access_token.clone();
        let agent =
            tokio::time::timeout(std::time::Duration::from_secs(3), crate::agent_client::run(&info.socket, token.as_deref(), "root", "true", &BTreeMap::new(), None, |_, _| {}))
                .await;
        out.push(match agent {
            Ok(Ok(f)) if f.exit_code == 0 => check("agent", true, format!("a command ran in {:.1} ms", t0.elapsed().as_secs_f64() * 1e3)),
            Ok(Ok(f)) => check("agent", false, format!("`true` exited with {}", f.exit_code)),
            Ok(Err(e)) => check("agent", false, format!("the agent failed: {e}")),
            Err(_) => check("agent", false, "the agent did not run a command within 3 s".into()),
        });
        let backend = self.backend.clone();
        let id2 = id.to_string();
        if let Ok(u) = self.blocking(move || backend.usage(&id2)).await? {
            let pct = |used: u64, total: u64| if total == 0 { 0.0 } else { used as f64 * 100.0 / total as f64 };
            let d = pct(u.disk_bytes, u.disk_limit_bytes);
            out.push(check("disk", d < 95.0, format!("{:.1}% of {} MiB used", d, u.disk_limit_bytes >> 20)));
            let m = pct(u.memory_bytes, u.memory_limit_bytes);
            out.push(check("memory", m < 95.0, format!("{:.1}% of {} MiB used", m, u.memory_limit_bytes >> 20)));
        }
        let tpl = self.find_template(&row.template).await?;
        let user = tpl.as_ref().map(|t| t.default_user.clone()).filter(|u| !u.is_empty()).unwrap_or_else(|| "user".into());
        for c in checks {
            let mut output = String::new();
            let r = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                crate::agent_client::run(&info.socket, token.as_deref(), &user, &c, &row.env, None, |b, _| {
                    if output.len() < 2000 {
                        output.push_str(&String::from_utf8_lossy(b));
                    }
                }),
            )
            .await;
            out.push(match r {
                Ok(Ok(f)) => check(&c, f.exit_code == 0, format!("exit {}: {}", f.exit_code, output.trim())),
                Ok(Err(e)) => check(&c, false, format!("could not run: {e}")),
                Err(_) => check(&c, false, "did not finish within 10 s".into()),
            });
        }
        Ok(api::SandboxHealth { healthy: out.iter().all(|c| c.ok), state: "running".into(), checks: out })
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
