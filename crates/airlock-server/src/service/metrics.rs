//! Usage: samples taken on the sampler's schedule and kept in the store
//! (E2B's metrics, with history and network bytes), live samples for
//! streams, resource alerts, health, and changing a running sandbox's
//! limits.

use super::*;

/// The most samples one history request returns (a day at 5 s is 17,280).
const MAX_HISTORY: usize = 20_000;

/// E2B's metric entry from a sample.
pub fn metric(s: &Sample) -> SandboxMetric {
    SandboxMetric {
        timestamp: rfc3339_ms(s.at_ms),
        timestamp_unix: s.at_ms / 1000,
        cpu_count: s.cpus.ceil().max(1.0) as u32,
        cpu_used_pct: (s.cpu_pct * 100.0).round() / 100.0,
        mem_used: s.mem,
        mem_total: s.mem_limit,
        mem_cache: s.mem_cache,
        disk_used: s.disk,
        disk_total: s.disk_limit,
        net_rx_bytes: s.net_rx,
        net_tx_bytes: s.net_tx,
    }
}

/// A reading turned into a sample, its CPU share measured from `prev`.
fn to_sample(u: &airlock_runtime::Usage, now: i64, cpus: f64, prev: Option<&Sample>) -> Sample {
    let cpu_pct = match prev {
        Some(p) if now > p.at_ms && u.cpu_usage_ns >= p.cpu_ns => {
            let used = (u.cpu_usage_ns - p.cpu_ns) as f64;
            let avail = (now - p.at_ms) as f64 * 1e6 * cpus.max(0.01);
            (used / avail * 100.0).clamp(0.0, 100.0)
        }
        _ => 0.0,
    };
    Sample {
        at_ms: now,
        cpu_ns: u.cpu_usage_ns,
        cpu_pct,
        mem: u.memory_bytes,
        mem_limit: u.memory_limit_bytes,
        mem_cache: u.memory_bytes.saturating_sub(u.memory_working_bytes),
        disk: u.disk_bytes,
        disk_limit: u.disk_limit_bytes,
        net_rx: u.net_rx_bytes,
        net_tx: u.net_tx_bytes,
        cpus,
    }
}

fn pct(used: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        used as f64 * 100.0 / total as f64
    }
}

fn check_thresholds(a: &api::AlertThresholds) -> Result<(), ApiError> {
    for (name, v) in [("cpuPct", a.cpu_pct), ("memoryPct", a.memory_pct), ("diskPct", a.disk_pct)] {
        if let Some(v) = v {
            if !(v > 0.0 && v <= 100.0) {
                return Err(ApiError::BadRequest(format!("alert threshold {name} must be a percentage above 0 and at most 100, got {v}")));
            }
        }
    }
    Ok(())
}

pub(super) fn check_alerts(a: Option<&api::AlertThresholds>) -> Result<api::AlertThresholds, ApiError> {
    let a = a.copied().unwrap_or_default();
    check_thresholds(&a)?;
    Ok(a)
}

impl Service {
    /// A sandbox's metric history between `start` and `end` (unix seconds,
    /// inclusive), oldest first. Readable while the sandbox lives and for
    /// as long as a dead one's record is kept.
    pub async fn metrics(&self, id: &str, start: Option<i64>, end: Option<i64>) -> Result<Vec<SandboxMetric>, ApiError> {
        let row = match self.dead_row(id).await? {
            Some(dead) => dead,
            None => self.row(id).await?,
        };
        // A sandbox younger than one sampling interval still has a figure.
        if row.state.takes_traffic() && !self.samples.lock().unwrap_or_else(|p| p.into_inner()).contains_key(id) {
            self.sample_rows(vec![row.clone()]).await;
        }
        // Any i64 a client sends: saturate, never overflow (an overflow
        // would be a panic in debug builds and a wrapped range in release).
        let start_ms = start.map(|s| s.saturating_mul(1000)).unwrap_or(i64::MIN);
        let end_ms = end.map(|e| e.saturating_mul(1000).saturating_add(999)).unwrap_or(i64::MAX);
        let store = self.store.clone();
        let id2 = id.to_string();
        let v = self.blocking(move || store.samples(&id2, start_ms, end_ms, MAX_HISTORY)).await??;
        Ok(v.iter().map(metric).collect())
    }

    /// E2B's bulk metrics: each named sandbox's newest sample; sandboxes
    /// that do not exist (or have no sample yet) are left out.
    pub async fn metrics_bulk(&self, ids: Vec<String>) -> Result<api::SandboxesWithMetrics, ApiError> {
        if ids.len() > 100 {
            return Err(ApiError::BadRequest(format!("at most 100 sandbox ids at once, got {}", ids.len())));
        }
        let store = self.store.clone();
        let found = self
            .blocking(move || -> Result<Vec<(String, Sample)>, StoreError> {
                let mut out = Vec::new();
                for id in ids {
                    let visible = store.sandbox(&id)?.is_some_and(|r| r.state.visible() || r.state == State::Dead);
                    if let Some(s) = store.latest_sample(&id)?.filter(|_| visible) {
                        out.push((id, s));
                    }
                }
                Ok(out)
            })
            .await??;
        Ok(api::SandboxesWithMetrics { sandboxes: found.into_iter().map(|(id, s)| (id, metric(&s))).collect() })
    }

    /// One fresh reading for a live stream, its CPU share measured from the
    /// stream's own previous one (`prev`), so streams at any interval never
    /// disturb the sampler's. `None` once the sandbox no longer runs.
    pub async fn live_sample(&self, id: &str, prev: Option<&Sample>) -> Result<Option<Sample>, ApiError> {
        let row = match self.row(id).await {
            Ok(r) if r.state.takes_traffic() => r,
            Ok(_) | Err(ApiError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let backend = self.backend.clone();
        let id2 = id.to_string();
        match self.blocking(move || backend.usage(&id2)).await? {
            Ok(u) => Ok(Some(to_sample(&u, now_ms(), row.cpus, prev))),
            Err(_) => Ok(None),
        }
    }

    /// Samples these sandboxes (all readings in one trip to the blocking
    /// pool, one store transaction), then checks their alert thresholds.
    /// Returns the ids whose PID 1 is gone (no reading: the kernel has no
    /// such sandbox running).
    pub(super) async fn sample_rows(&self, rows: Vec<SandboxRow>) -> Vec<String> {
        if rows.is_empty() {
            return Vec::new();
        }
        let backend = self.backend.clone();
        let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
        let Ok(results) = self.blocking(move || ids.into_iter().map(|id| backend.usage(&id).map(|u| (u, backend.oom_kills(&id)))).collect::<Vec<_>>()).await else {
            return Vec::new();
        };
        let gone: Vec<String> = rows.iter().zip(&results).filter(|(_, r)| matches!(r, Err(airlock_runtime::Error::NotFound(_)))).map(|(row, _)| row.id.clone()).collect();
        let readings: Vec<_> = results.into_iter().map(Result::ok).collect();
        let now = now_ms();
        let mut batch = Vec::new();
        let mut checks = Vec::new();
        {
            let mut last = self.samples.lock().unwrap_or_else(|p| p.into_inner());
            let mut ooms = self.ooms.lock().unwrap_or_else(|p| p.into_inner());
            for (row, r) in rows.iter().zip(readings) {
                let Some((u, oom_kills)) = r else { continue };
                let s = to_sample(&u, now, row.cpus, last.get(&row.id));
                last.insert(row.id.clone(), s);
                batch.push((row.id.clone(), s));
                // The kernel's count of OOM kills in its memory group: a
                // rise is a process of the sandbox killed since the last look.
                // First seen by this server: kills from before its start were
                // reported by the one before (a restart must not repeat them).
                let baseline = if row.started_at < self.started_ms { oom_kills } else { 0 };
                let seen = ooms.insert(row.id.clone(), oom_kills).unwrap_or(baseline);
                checks.push((row, s, oom_kills.saturating_sub(seen)));
            }
        }
        for (row, s, new_ooms) in checks {
            if new_ooms > 0 {
                tracing::info!(sandbox_id = %row.id, kills = new_ooms, "a process in a sandbox was killed for lack of memory");
                self.emit(row, "oom", serde_json::json!({"kills": new_ooms, "memoryMB": row.memory_mb})).await;
            }
            self.check_alerts(row, &s).await;
        }
        let store = self.store.clone();
        if let Ok(Err(e)) = self.blocking(move || store.add_samples(&batch)).await {
            tracing::warn!(error = %e, "recording metric samples failed");
        }
        gone
    }

    /// Fires `resource_alert` for each threshold the sample is above and
    /// the previous one was not.
    async fn check_alerts(&self, row: &SandboxRow, s: &Sample) {
        if row.alerts.is_empty() {
            return;
        }
        let a = row.alerts;
        let values =
            [(a.cpu_pct, s.cpu_pct, "cpu"), (a.memory_pct, pct(s.mem.saturating_sub(s.mem_cache), s.mem_limit), "memory"), (a.disk_pct, pct(s.disk, s.disk_limit), "disk")];
        let mut fire = Vec::new();
        {
            let mut on = self.alerts_on.lock().unwrap_or_else(|p| p.into_inner());
            let flags = on.entry(row.id.clone()).or_default();
            for (i, (threshold, value, name)) in values.iter().enumerate() {
                let above = threshold.is_some_and(|t| *value >= t);
                if above && !flags[i] {
                    fire.push((*name, *value, threshold.unwrap_or_default()));
                }
                flags[i] = above;
            }
        }
        for (resource, value, threshold) in fire {
            tracing::info!(sandbox_id = %row.id, resource, value, threshold, "resource alert");
            self.emit(row, "resource_alert", serde_json::json!({"resource": resource, "valuePct": (value * 100.0).round() / 100.0, "thresholdPct": threshold})).await;
        }
    }

    /// Sets (replaces) a sandbox's alert thresholds; an empty set removes them.
    pub async fn set_alerts(&self, id: &str, alerts: api::AlertThresholds) -> Result<SandboxDetail, ApiError> {
        check_thresholds(&alerts)?;
        let lock = self.lock_for(id);
        let _g = lock.lock().await;
        let mut row = self.row(id).await?;
        let store = self.store.clone();
        let id2 = id.to_string();
        self.blocking(move || store.set_alerts(&id2, &alerts)).await??;
        // A new threshold starts armed: if the sandbox is above it, the
        // next sample fires it.
        self.alerts_on.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
        row.alerts = alerts;
        Ok(self.detail(&row))
    }

    /// E2B's `PUT /sandboxes/{id}/network` (the SDK's `update_network`):
    /// the port traffic settings change for new requests at once; egress
    /// rules and internet access cannot change here yet and are refused,
    /// never silently kept as they were.
    pub async fn update_network(&self, id: &str, body: serde_json::Value) -> Result<(), ApiError> {
        let lock = self.lock_for(id);
        let _g = lock.lock().await;
        let row = self.row(id).await?;
        let deny_internet = body.get("allow_internet_access").or_else(|| body.get("allowInternetAccess")).and_then(|v| v.as_bool()) == Some(false);
        let net = super::create::network_options(Some(&body), deny_internet)?;
        // The update replaces the egress rules as a whole (E2B's semantics):
        // an update without them opens the sandbox again. A sandbox made
        // without a network interface cannot be given one while it runs.
        let spec = if net.no_internet { Some(crate::egress::store::Spec { allow_out: vec![], deny_out: vec!["0.0.0.0/0".into()], rules: None }) } else { net.egress.clone() };
        if !row.internet {
            // It has no network interface: no rules is what it has already
            // (it stays offline); rules that would let anything out cannot be.
            if spec.as_ref().is_some_and(|s| !s.policy().is_ok_and(|p| p.is_no_internet())) {
                return Err(ApiError::Conflict(format!(
                    "sandbox {id} was created without internet access; this server cannot give it a network while it runs (create a new sandbox, or fork this one)"
                )));
            }
        } else {
            let backend = self.backend.clone();
            let id2 = id.to_string();
            let ip = match self.blocking(move || backend.get(&id2)).await? {
                Ok(info) => info.ip,
                Err(_) => {
                    let store = self.store.clone();
                    let id2 = id.to_string();
                    self.blocking(move || store.egress(&id2)).await??.and_then(|(ip, _)| ip)
                }
            };
            if ip.is_none() && spec.is_some() {
                return Err(ApiError::Conflict(format!("sandbox {id} is {}: resume it before changing its egress rules", row.state.api_str())));
            }
            self.police(id, ip, spec.as_ref()).await?;
        }
        let n: api::NetworkOptions = serde_json::from_value(body.clone()).unwrap_or_default();
        let public = if n.allow_public_traffic.is_some() { net.public } else { row.public_traffic };
        let mask = if n.mask_request_host.is_some() { net.mask } else { row.mask_host.clone() };
        let store = self.store.clone();
        let id2 = id.to_string();
        self.blocking(move || store.set_traffic(&id2, public, &mask)).await??;
        Ok(())
    }

    /// Changes a running sandbox's CPU, memory and disk limits in place.
    /// Memory below what its processes hold (beyond the page cache the
    /// kernel would drop) is refused, not enforced by an OOM kill; the disk
    /// limit only grows.
    pub async fn set_resources(&self, id: &str, change: api::ResourceChange) -> Result<SandboxDetail, ApiError> {
        let lock = self.lock_for(id);
        let _g = lock.lock().await;
        let mut row = self.row(id).await?;
        if !row.state.takes_traffic() {
            return Err(ApiError::Conflict(format!("sandbox {id} is {}: resume it before changing its resources", row.state.api_str())));
        }
        let cpus = change.cpu_count.unwrap_or(row.cpus);
        let max_cpus = airlock_runtime::limits::MAX_CPUS;
        if !(cpus > 0.0 && cpus <= max_cpus) {
            return Err(ApiError::BadRequest(format!("cpuCount must be more than 0 and at most {max_cpus}, got {cpus}")));
        }
        let memory_mb = change.memory_mb.unwrap_or(row.memory_mb);
        self.check_memory(memory_mb)?;
        let disk_mb = match change.disk_mb {
            None => None,
            Some(mb) if row.disk_mb == 0 => return Err(ApiError::BadRequest(format!("sandbox {id} has no disk limit to change (asked for {mb} MiB)"))),
            Some(mb) if mb < row.disk_mb => {
                return Err(ApiError::Conflict(format!("the disk limit cannot be lowered while the sandbox runs ({} MiB now, {mb} MiB asked)", row.disk_mb)))
            }
            Some(mb) if mb > self.cfg.max_disk_mb => return Err(ApiError::BadRequest(format!("diskSizeMB must be at most {}, got {mb}", self.cfg.max_disk_mb))),
            Some(mb) => Some(mb),
        };
        let backend = self.backend.clone();
        let id2 = id.to_string();
        let usage = self.blocking(move || backend.usage(&id2)).await?.map_err(|e| runtime_err(id, e))?;
        let need = usage.memory_working_bytes;
        if memory_mb < row.memory_mb && need > memory_mb << 20 {
            return Err(ApiError::Conflict(format!(
                "sandbox {id} uses {} MiB of memory; its limit cannot go below that (asked for {memory_mb} MiB): free memory in it first or ask for more",
                need.div_ceil(1 << 20)
            )));
        }
        let resources = Resources { cpus, memory_mb, pids: self.cfg.pids_limit, io_bps: self.cfg.io_bps, io_iops: self.cfg.io_iops };
        let backend = self.backend.clone();
        let id2 = id.to_string();
        self.blocking(move || backend.resize(&id2, &resources, disk_mb)).await?.map_err(|e| match e {
            airlock_runtime::Error::Cgroup(c) => ApiError::Conflict(format!("the kernel refused the new limits: {c}")),
            airlock_runtime::Error::InvalidSpec(m) => ApiError::Conflict(m),
            other => runtime_err(id, other),
        })?;
        let before = (row.cpus, row.memory_mb, row.disk_mb);
        row.cpus = cpus;
        row.memory_mb = memory_mb;
        row.disk_mb = disk_mb.unwrap_or(row.disk_mb);
        let store = self.store.clone();
        let (id2, d) = (id.to_string(), row.disk_mb);
        self.blocking(move || store.set_resources(&id2, cpus, memory_mb, d)).await??;
        self.emit(
            &row,
            "resources_changed",
            serde_json::json!({"cpuCount": cpus, "memoryMB": memory_mb, "diskSizeMB": row.disk_mb, "before": {"cpuCount": before.0, "memoryMB": before.1, "diskSizeMB": before.2}}),
        )
        .await;
        tracing::info!(sandbox_id = %id, cpus, memory_mb, disk_mb = row.disk_mb, "resources changed");
        Ok(self.detail(&row))
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
            let d = pct(u.disk_bytes, u.disk_limit_bytes);
            out.push(check("disk", d < 95.0, format!("{:.1}% of {} MiB used", d, u.disk_limit_bytes >> 20)));
            let m = pct(u.memory_working_bytes, u.memory_limit_bytes);
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
        let running: Vec<SandboxRow> = rows.into_iter().filter(|r| r.state.takes_traffic()).collect();
        // A sandbox with no reading has no PID 1 any more: cleaned up like a kill.
        for id in self.sample_rows(running).await {
            if let Err(e) = self.record_death(&id).await {
                tracing::warn!(sandbox_id = %id, error = %e, "recording a sandbox's death failed");
            }
        }
    }
}
