//! A sandbox's life after create: connect and resume, deadlines and
//! expiry (kill or auto-pause), pause, kill, start-up reconciliation with
//! the kernel, and routing sandbox traffic to a running agent.

use super::*;

impl Service {
    /// Makes sure the sandbox runs (thawing or restarting it) and extends
    /// its deadline to at least now + timeout. Returns whether it was
    /// resumed from pause (201) or already running (200).
    pub async fn connect(&self, id: &str, timeout: Option<i64>) -> Result<(SandboxRow, bool), ApiError> {
        let timeout = self.check_timeout(timeout.unwrap_or(self.cfg.default_timeout_s))?;
        let lock = self.lock_for(id);
        let _g = lock.lock().await;
        let mut row = self.row(id).await?;
        let resumed = row.state.needs_resume();
        if resumed {
            self.set_state(id, State::Resuming, row.end_at).await?;
        }
        if let Err(e) = self.ensure_running(&row).await {
            if resumed {
                self.set_state(id, State::Paused, row.end_at).await?;
            }
            return Err(e);
        }
        let now = now_ms();
        let end = if resumed { now + timeout * 1000 } else { row.end_at.max(now + timeout * 1000) };
        let store = self.store.clone();
        let id2 = id.to_string();
        self.blocking(move || store.set_state(&id2, State::Running, end)).await??;
        row.state = State::Running;
        row.end_at = end;
        if resumed {
            self.emit(&row, "resumed", serde_json::json!({"endAt": rfc3339_ms(end)})).await;
        }
        Ok((row, resumed))
    }

    /// Legacy `POST /sandboxes/{id}/resume`: only for paused sandboxes.
    pub async fn resume(&self, id: &str, timeout: Option<i64>) -> Result<SandboxRow, ApiError> {
        {
            let row = self.row(id).await?;
            if !row.state.needs_resume() {
                return Err(ApiError::Conflict(format!("sandbox {id} is already running")));
            }
        }
        self.connect(id, timeout).await.map(|(r, _)| r)
    }

    /// Thaws a frozen sandbox, or boots a fresh agent over the files of one
    /// whose processes are gone (filesystem-paused, or the host rebooted),
    /// then runs its template's start and ready commands again.
    pub(super) async fn ensure_running(&self, row: &SandboxRow) -> Result<SandboxInfo, ApiError> {
        let backend = self.backend.clone();
        let id = row.id.clone();
        let r = self
            .blocking(move || match backend.get(&id) {
                Ok(info) if info.frozen => backend.thaw(&id).and_then(|_| backend.get(&id)).map(|i| (i, false)),
                Ok(info) => Ok((info, false)),
                Err(airlock_runtime::Error::NotFound(_)) => {
                    tracing::info!(sandbox_id = %id, "sandbox processes are gone; booting it over its files");
                    backend.restart(&id).map(|i| (i, true))
                }
                Err(e) => Err(e),
            })
            .await?;
        let (info, booted) = r.map_err(|e| runtime_err(&row.id, e))?;
        if booted {
            let tpl = self.find_template(&row.template).await?;
            self.after_start(&row.id, tpl.as_ref(), row.access_token.as_deref(), &row.env, None).await?;
        }
        Ok(info)
    }

    pub async fn kill(&self, id: &str) -> Result<(), ApiError> {
        let lock = self.lock_for(id);
        let _g = lock.lock().await;
        if let Some(dead) = self.dead_row(id).await? {
            // Nothing is left of it but the record: killing forgets it.
            self.emit(&dead, "destroyed", serde_json::json!({"cause": "the record of a dead sandbox was deleted"})).await;
            let store = self.store.clone();
            self.blocking(move || store.delete_sandbox(&dead.id)).await??;
            self.forget(id);
            return Ok(());
        }
        let row = self.row(id).await?;
        self.emit(&row, "killed", serde_json::json!({"by": "api"})).await;
        self.destroy_locked(id).await
    }

    /// A sandbox whose PID 1 died on its own: its resources are released
    /// now, and its record stays (state `dead`, with the cause) for
    /// `dead_retention_s`, so users learn what happened instead of a bare 404.
    pub(super) async fn record_death(&self, id: &str) -> Result<(), ApiError> {
        let lock = self.lock_for(id);
        let _g = lock.lock().await;
        let Ok(row) = self.row(id).await else { return Ok(()) };
        let backend = self.backend.clone();
        let id2 = id.to_string();
        // Re-checked under the lock (a pause or kill may have just run), and
        // the evidence read before destroy removes it.
        let (alive, ooms) = self.blocking(move || (backend.get(&id2).is_ok(), backend.oom_kills(&id2))).await?;
        if alive || !row.state.takes_traffic() {
            return Ok(());
        }
        let death = if ooms > 0 {
            format!("out of memory: the OOM killer ended its PID 1 (memory limit {} MiB)", row.memory_mb)
        } else {
            "its PID 1 (the agent) exited or was killed from outside the sandbox".to_string()
        };
        tracing::warn!(sandbox_id = %id, cause = %death, "sandbox died");
        if ooms > 0 {
            self.emit(&row, "oom", serde_json::json!({"oomKills": ooms, "memoryMB": row.memory_mb})).await;
        }
        self.emit(&row, "died", serde_json::json!({"cause": death})).await;
        let backend = self.backend.clone();
        let id2 = id.to_string();
        match self.blocking(move || backend.destroy(&id2)).await? {
            Ok(()) | Err(airlock_runtime::Error::NotFound(_)) => {}
            Err(e) => return Err(runtime_err(id, e)),
        }
        let store = self.store.clone();
        let (id2, d2) = (id.to_string(), death.clone());
        self.blocking(move || store.set_dead(&id2, &d2, now_ms())).await??;
        self.forget_egress(id).await;
        self.samples.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
        self.collect_layers_soon();
        Ok(())
    }

    /// The row of a dead sandbox, if `id` is one.
    pub(super) async fn dead_row(&self, id: &str) -> Result<Option<SandboxRow>, ApiError> {
        let store = self.store.clone();
        let id2 = id.to_string();
        Ok(self.blocking(move || store.sandbox(&id2)).await??.filter(|r| r.state == State::Dead))
    }

    /// The 404 a dead sandbox answers with: when and why it died.
    pub(super) fn death_error(row: &SandboxRow) -> ApiError {
        ApiError::NotFound(format!("sandbox {} was not found: it died at {}: {}", row.id, rfc3339_ms(row.died_at), row.death))
    }

    /// Forgets the dead after `dead_retention_s`.
    pub async fn purge_dead(&self) -> Result<usize, ApiError> {
        let store = self.store.clone();
        let before = now_ms() - self.cfg.dead_retention_s * 1000;
        let n = self.blocking(move || store.purge_dead(before)).await??;
        Ok(n)
    }

    pub(super) async fn destroy_locked(&self, id: &str) -> Result<(), ApiError> {
        let before = self.row(id).await?;
        let t0 = Instant::now();
        self.set_state(id, State::Killing, before.end_at).await?;
        let backend = self.backend.clone();
        let id2 = id.to_string();
        match self.blocking(move || backend.destroy(&id2)).await? {
            Ok(()) | Err(airlock_runtime::Error::NotFound(_)) => {}
            Err(e) => {
                // Still there: visible again, so the kill can be retried.
                self.set_state(id, before.state, before.end_at).await?;
                return Err(runtime_err(id, e));
            }
        }
        let store = self.store.clone();
        let id2 = id.to_string();
        self.blocking(move || store.delete_sandbox(&id2)).await??;
        self.forget(id);
        self.forget_egress(id).await;
        self.remove_log(id);
        // Its snapshot layers (a fork's) may be unused now.
        self.collect_layers_soon();
        crate::telemetry::TELEMETRY.kill_seconds.observe(t0.elapsed());
        self.emit(&before, "destroyed", serde_json::json!({})).await;
        tracing::info!(sandbox_id = %id, "sandbox killed");
        Ok(())
    }

    pub async fn set_timeout(&self, id: &str, timeout: i64) -> Result<(), ApiError> {
        let timeout = self.check_timeout(timeout)?;
        let lock = self.lock_for(id);
        let _g = lock.lock().await;
        self.row(id).await?;
        let store = self.store.clone();
        let id2 = id.to_string();
        let end = now_ms() + timeout * 1000;
        self.blocking(move || store.set_end(&id2, end)).await??;
        let row = self.row(id).await?;
        self.emit(&row, "timeout_changed", serde_json::json!({"endAt": rfc3339_ms(end)})).await;
        Ok(())
    }

    /// `POST /sandboxes/{id}/refreshes`: extends, never shortens.
    pub async fn refresh(&self, id: &str, duration: i64) -> Result<(), ApiError> {
        let duration = self.check_timeout(duration)?;
        let lock = self.lock_for(id);
        let _g = lock.lock().await;
        let row = self.row(id).await?;
        let end = row.end_at.max(now_ms() + duration * 1000);
        let store = self.store.clone();
        let id2 = id.to_string();
        self.blocking(move || store.set_end(&id2, end)).await??;
        Ok(())
    }

    /// Pauses a running sandbox. With `memory`, it is frozen and its memory
    /// held (resume continues every process); without, it is stopped and
    /// only its files kept (resume boots it afresh). 409 when paused.
    pub async fn pause(&self, id: &str, memory: bool) -> Result<(), ApiError> {
        let lock = self.lock_for(id);
        let _g = lock.lock().await;
        self.pause_locked(id, memory).await
    }

    /// `pause`, refused (503) when `healthy` is asked and the sandbox's
    /// agent is not running (E2B refuses a filesystem-only pause then).
    pub async fn pause_checked(&self, id: &str, memory: bool, healthy: bool) -> Result<(), ApiError> {
        let lock = self.lock_for(id);
        let _g = lock.lock().await;
        if healthy {
            let row = self.row(id).await?;
            let backend = self.backend.clone();
            if row.state.can_pause() && self.blocking(move || backend.get(&row.id)).await?.is_err() {
                return Err(ApiError::Unavailable(format!("sandbox {id}'s agent is not running; the pause was refused")));
            }
        }
        self.pause_locked(id, memory).await
    }

    pub(super) async fn pause_locked(&self, id: &str, memory: bool) -> Result<(), ApiError> {
        let row = self.row(id).await?;
        if !row.state.can_pause() {
            return Err(ApiError::Conflict(format!("sandbox {id} is already paused")));
        }
        // The kind is recorded with the state: a start-up after a crash must
        // know whether a frozen sandbox was being frozen (a pause that got
        // there) or stopped (its PID 1 may be frozen with a SIGKILL pending).
        let store = self.store.clone();
        let id2 = id.to_string();
        self.blocking(move || store.set_pausing(&id2, memory)).await??;
        if let Err(e) = self.pause_work(&row, memory).await {
            self.set_state(id, State::Running, row.end_at).await?;
            return Err(e);
        }
        let store = self.store.clone();
        let id2 = id.to_string();
        let end = row.end_at;
        self.blocking(move || store.set_paused(&id2, end, memory, now_ms())).await??;
        self.emit(&row, "paused", serde_json::json!({"memory": memory})).await;
        tracing::info!(sandbox_id = %id, memory, "sandbox paused");
        Ok(())
    }

    async fn pause_work(&self, row: &SandboxRow, memory: bool) -> Result<(), ApiError> {
        let id = row.id.as_str();
        if memory {
            let backend = self.backend.clone();
            let id2 = id.to_string();
            match self.blocking(move || backend.freeze(&id2)).await? {
                // Processes already gone (crash, reboot): it is paused in all
                // but name; resume restarts it over its files.
                Ok(()) | Err(airlock_runtime::Error::NotFound(_)) => {}
                Err(e) => return Err(runtime_err(id, e)),
            }
        } else {
            self.stop_locked(row).await?;
        }
        Ok(())
    }

    /// Kills or pauses every running sandbox whose deadline has passed.
    pub async fn expire_due(&self) -> Result<usize, ApiError> {
        let store = self.store.clone();
        let now = now_ms();
        let due = self.blocking(move || store.due(now)).await??;
        let mut n = 0;
        for row in due {
            let lock = self.lock_for(&row.id);
            let _g = lock.lock().await;
            // Re-read under the lock: set_timeout may have just moved it.
            let Ok(cur) = self.row(&row.id).await else { continue };
            if !cur.state.clock_runs() || cur.end_at > now_ms() {
                continue;
            }
            self.emit(&cur, "timeout", serde_json::json!({"action": if cur.auto_pause { "pause" } else { "kill" }})).await;
            let r = if cur.auto_pause { self.pause_locked(&cur.id, cur.auto_pause_memory).await } else { self.destroy_locked(&cur.id).await };
            match r {
                Ok(()) => {
                    n += 1;
                    tracing::info!(sandbox_id = %cur.id, action = if cur.auto_pause { "pause" } else { "kill" }, "sandbox timed out");
                }
                Err(e) => tracing::warn!(sandbox_id = %cur.id, error = %e, "acting on timeout failed"),
            }
        }
        Ok(n)
    }

    /// At start-up: sandboxes in the store whose processes are gone (the
    /// host rebooted) are marked paused so connect restarts them over their
    /// files; sandboxes the runtime has but the store does not (a crash
    /// between create and insert) are destroyed.
    pub async fn reconcile(&self) -> Result<(), ApiError> {
        // Half-received uploads and half-made layers of a previous life.
        let (uploads, layers) = (self.cfg.data_dir.join("uploads"), self.builder.store.layers_dir());
        self.blocking(move || {
            let _ = std::fs::remove_dir_all(&uploads);
            for e in std::fs::read_dir(&layers).into_iter().flatten().flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                // `.fetch-`: a layer being fetched from another node (an
                // archive file and the directory it unpacks to).
                if [".export-", ".import-", ".snap-", ".fetch-"].iter().any(|p| n.starts_with(p)) {
                    let _ = std::fs::remove_dir_all(e.path()).or_else(|_| std::fs::remove_file(e.path()));
                }
            }
        })
        .await?;
        self.collect_layers_soon();
        let store = self.store.clone();
        let rows = self.blocking(move || store.sandboxes()).await??;
        let backend = self.backend.clone();
        let live = self.blocking(move || backend.list()).await?.map_err(|e| ApiError::Internal(e.to_string()))?;
        for row in &rows {
            let info = live.iter().find(|s| s.id == row.id);
            let (alive, frozen) = (info.is_some(), info.is_some_and(|i| i.frozen));
            let store = self.store.clone();
            let (id, end) = (row.id.clone(), row.end_at);
            match row.state {
                State::Dead => {}
                // A pooled sandbox that still runs waits on; one that does
                // not is gone like an interrupted create.
                State::Pooled if alive && !frozen => {}
                // A create or a kill a crash interrupted: finish undoing it.
                State::Creating | State::Killing | State::Pooled => {
                    tracing::warn!(sandbox_id = %row.id, state = row.state.as_str(), "a create or kill was interrupted; destroying the sandbox");
                    let backend = self.backend.clone();
                    let done = self
                        .blocking(move || match backend.destroy(&id) {
                            Ok(()) | Err(airlock_runtime::Error::NotFound(_)) => store.delete_sandbox(&id).map(|_| None),
                            // The row stays (invisible): the next start tries again.
                            Err(e) => Ok(Some(e.to_string())),
                        })
                        .await??;
                    match done {
                        None => self.remove_log(&row.id),
                        Some(e) => tracing::error!(sandbox_id = %row.id, error = %e, "undoing an interrupted create or kill failed; it is retried at the next start"),
                    }
                }
                // A filesystem pause cut short: finish it (whatever was
                // killed, frozen or not, goes; the files stay).
                State::Pausing if !row.paused_memory => {
                    let backend = self.backend.clone();
                    let id2 = id.clone();
                    match self.blocking(move || backend.stop(&id2)).await? {
                        Ok(()) | Err(airlock_runtime::Error::NotFound(_)) => {}
                        Err(e) => tracing::error!(sandbox_id = %row.id, error = %e, "finishing an interrupted pause failed"),
                    }
                    self.blocking(move || store.set_paused(&id, end, false, now_ms())).await??;
                }
                // Otherwise the kernel says where it got to: a freeze that
                // got there is a pause; anything else frozen was frozen for
                // a moment (a snapshot's copy, a soft reset's kill, a thaw)
                // and goes on running.
                State::Pausing if alive && frozen => {
                    self.blocking(move || store.set_paused(&id, end, true, now_ms())).await??;
                }
                State::Running | State::Pausing | State::Resuming if alive => {
                    if frozen {
                        let backend = self.backend.clone();
                        let id2 = id.clone();
                        if let Err(e) = self.blocking(move || backend.thaw(&id2)).await? {
                            tracing::error!(sandbox_id = %row.id, error = %e, "thawing a sandbox left frozen by a crash failed");
                        }
                    }
                    if row.state != State::Running {
                        self.set_state(&row.id, State::Running, end).await?;
                    }
                }
                _ if !alive && (row.state != State::Paused || row.paused_memory) => {
                    tracing::warn!(sandbox_id = %row.id, state = row.state.as_str(), "sandbox processes are gone (host restarted?); it keeps its files and boots on connect");
                    self.blocking(move || store.set_paused(&id, end, false, now_ms())).await??;
                }
                _ => {}
            }
        }
        for s in live {
            if !rows.iter().any(|r| r.id == s.id) {
                tracing::warn!(sandbox_id = %s.id, "sandbox unknown to the store; destroying it");
                let backend = self.backend.clone();
                let _ = self.blocking(move || backend.destroy(&s.id)).await;
            }
        }
        Ok(())
    }

    /// Finds the running sandbox whose access token validates a signed
    /// `/files` URL that carries no sandbox id.
    pub async fn find_by_signature(&self, path: &str, operation: &str, username: &str, signature: &str, expiration: Option<i64>) -> Option<String> {
        let store = self.store.clone();
        let rows = self.blocking(move || store.sandboxes()).await.ok()?.ok()?;
        rows.into_iter()
            .filter(|r| r.state.takes_traffic())
            // Compared in constant time, as the agent does: timing must not tell
            // how much of a guessed signature was right.
            .find(|r| {
                r.access_token.as_deref().is_some_and(|t| {
                    airlock_proto::envd::constant_time_eq(airlock_proto::envd::file_signature(path, operation, username, t, expiration).as_bytes(), signature.as_bytes())
                })
            })
            .map(|r| r.id)
    }

    /// `route`, but a paused sandbox created with auto-resume is resumed
    /// first (with the timeout it was created with), as E2B's proxy does:
    /// the request that found it paused is the one that wakes it.
    pub async fn route_waking(&self, id: &str) -> Result<(SandboxInfo, SandboxRow), ApiError> {
        match self.route_row(id).await {
            Err(ApiError::Conflict(m)) => {
                let row = self.row(id).await?;
                if !row.auto_resume || !(row.state.needs_resume() || row.state == State::Pausing || row.state == State::Resuming) {
                    return Err(ApiError::Conflict(m));
                }
                tracing::info!(sandbox_id = %id, "traffic to a paused sandbox with auto-resume: resuming it");
                self.connect(id, Some(row.timeout_s)).await?;
                self.route_row(id).await
            }
            r => r,
        }
    }

    /// The agent socket of a running sandbox, for the proxy: the store row
    /// and the kernel's view in one trip to the blocking pool, since this
    /// runs for every proxied request.
    pub async fn route(&self, id: &str) -> Result<SandboxInfo, ApiError> {
        self.route_row(id).await.map(|(i, _)| i)
    }

    /// `route` with the row it read (the proxy checks its traffic settings).
    pub async fn route_row(&self, id: &str) -> Result<(SandboxInfo, SandboxRow), ApiError> {
        let store = self.store.clone();
        let backend = self.backend.clone();
        let id2 = id.to_string();
        let (row, info) = self
            .blocking(move || -> Result<_, StoreError> {
                let row = store.sandbox(&id2)?;
                let info = match &row {
                    Some(r) if r.state.takes_traffic() => Some(backend.get(&id2)),
                    _ => None,
                };
                Ok((row, info))
            })
            .await??;
        let row = row.ok_or_else(|| ApiError::NotFound(format!("sandbox {id} not found")))?;
        if row.state == State::Dead {
            return Err(Self::death_error(&row));
        }
        if !row.state.takes_traffic() {
            return Err(ApiError::Conflict(format!("sandbox {id} is paused")));
        }
        let info = info.ok_or_else(|| ApiError::NotFound(format!("sandbox {id} not found")))?.map_err(|e| runtime_err(id, e))?;
        if info.frozen {
            return Err(ApiError::Conflict(format!("sandbox {id} is paused")));
        }
        Ok((info, row))
    }
}
