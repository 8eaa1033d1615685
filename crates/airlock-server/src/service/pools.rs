//! Warm pools: ready sandboxes kept per template and resource shape, so a
//! create that asks for that shape is a claim instead of a boot.
//!
//! A pooled sandbox is an ordinary sandbox started with no environment,
//! no metadata and a token only the server knows, in state `Pooled`
//! (invisible, no clock, no traffic). A claim gives it, in one store
//! transaction, its new owner's template name, deadline, metadata,
//! environment, token and options and a new place in the creation order;
//! then tells its agent the environment and token (`POST /init`, which the
//! proxy never lets through) and rewrites what a restart would boot with.
//! Each pooled sandbox is claimed once, so nothing passes between claims.
//!
//! What a claim cannot change, it must match: the template's layers, CPU,
//! memory, disk and internet access. A create with volumes never matches
//! (they are bound at boot), nor one with environment variables for a
//! template whose start command would have seen them. Set-up (packages, a
//! startup script) runs after the claim, as it would after a boot.
//!
//! The filler runs on its own task, one sandbox at a time, and yields to
//! creates: it starts nothing while half the create slots are busy or the
//! sandbox limit is near, and a create refused for the limit makes room by
//! discarding a pooled sandbox.

use super::*;

use airlock_proto::api::{PoolInfo, PoolSpec};

/// What a claim must match: everything fixed at boot.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Shape {
    template: String,
    cpus: f64,
    memory_mb: u64,
    disk_mb: Option<u64>,
    internet: bool,
    layers: Vec<std::path::PathBuf>,
}

impl Shape {
    fn of(plan: &Plan) -> Self {
        Shape {
            template: plan.template.clone(),
            cpus: plan.cpus,
            memory_mb: plan.memory_mb,
            disk_mb: plan.disk_mb,
            internet: plan.internet,
            layers: plan.rootfs.root_layers.iter().chain(&plan.rootfs.usr_layers).cloned().collect(),
        }
    }
}

/// A pool's counters and what the filler last resolved it to.
#[derive(Debug, Default)]
pub(super) struct PoolStats {
    shape: Option<Shape>,
    claims: u64,
    misses: u64,
    last_error: Option<String>,
    /// After a failed fill, the pool waits until then.
    retry_at: Option<Instant>,
}

use super::create::Plan;

impl Service {
    /// Every pool: those of `--pool`, then those made through the API
    /// (which win on a shared name).
    pub async fn pool_specs(&self) -> Result<Vec<(String, PoolSpec)>, ApiError> {
        let store = self.store.clone();
        let stored = self.blocking(move || store.pools()).await??;
        let mut all: Vec<(String, PoolSpec)> = self.cfg.pools.iter().filter(|(n, _)| !stored.iter().any(|(s, _)| s == n)).cloned().collect();
        all.extend(stored);
        all.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(all)
    }

    /// Checks the `--pool` pools once at start (a bad template is a
    /// warning: the pool stays empty and says why).
    pub async fn init_pools(&self) -> Result<(), ApiError> {
        for (name, spec) in &self.cfg.pools {
            crate::pools::check_name(name).map_err(ApiError::BadRequest)?;
            crate::pools::check_spec(spec).map_err(ApiError::BadRequest)?;
        }
        let total: u64 = self.pool_specs().await?.iter().map(|(_, s)| s.size as u64).sum();
        if total >= self.cfg.max_sandboxes as u64 {
            tracing::warn!(
                total,
                max_sandboxes = self.cfg.max_sandboxes,
                "warm pools ask for as many sandboxes as the limit allows; creates will discard pooled ones to make room"
            );
        }
        Ok(())
    }

    /// The pool a create can be served from, if any.
    pub(super) fn matching_pool(&self, plan: &Plan) -> Option<String> {
        // A policy or a network is applied at create, which a claim skips.
        if plan.pool.is_some() || !plan.volumes.is_empty() || plan.egress.is_some() || !plan.networks.is_empty() {
            return None;
        }
        if !plan.env.is_empty() && plan.tpl.as_ref().is_some_and(|t| t.start_cmd.is_some()) {
            return None;
        }
        let want = Shape::of(plan);
        let pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        pools.iter().find(|(_, st)| st.shape.as_ref() == Some(&want)).map(|(n, _)| n.clone())
    }

    fn pool_stats<T>(&self, name: &str, f: impl FnOnce(&mut PoolStats) -> T) -> T {
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        f(pools.entry(name.to_string()).or_default())
    }

    /// Serves a create from `pool`; `None` when the pool is empty or its
    /// sandbox could not be handed over (the create then boots one).
    pub(super) async fn claim(&self, pool: &str, plan: &Plan) -> Result<Option<SandboxRow>, ApiError> {
        let t0 = Instant::now();
        let token = if plan.secure { Some(crate::ids::access_token()?) } else { None };
        let now = now_ms();
        // The id is the pooled sandbox's, chosen by the claim.
        let want = plan.row("", token.clone(), now);
        // One trip to the blocking pool for the claim, the agent's socket
        // and what a restart boots with; one for going live with its
        // events. The create path's cost is these trips, not their work.
        let (store, backend, p) = (self.store.clone(), self.backend.clone(), pool.to_string());
        let claimed = self
            .blocking(move || -> Result<_, StoreError> {
                let Some((row, pool_token)) = store.claim_pooled(&p, &want)? else { return Ok(None) };
                let info = backend.get(&row.id).and_then(|info| backend.rekey(&row.id, &row.env, row.access_token.as_deref()).map(|()| info));
                Ok(Some((row, pool_token, info)))
            })
            .await??;
        self.pool_wake.notify_one();
        let Some((mut row, pool_token, info)) = claimed else {
            self.pool_stats(pool, |s| s.misses += 1);
            crate::telemetry::TELEMETRY.pool_misses.fetch_add(1, Ordering::Relaxed);
            return Ok(None);
        };
        let id = row.id.clone();
        match self.hand_over(&row, info, pool_token.as_deref(), plan, pool).await {
            Ok(end) => {
                row.state = State::Running;
                row.end_at = end;
                self.pool_stats(pool, |s| s.claims += 1);
                crate::telemetry::TELEMETRY.pool_claims.fetch_add(1, Ordering::Relaxed);
                crate::telemetry::TELEMETRY.create_seconds.observe(t0.elapsed());
                tracing::info!(sandbox_id = %id, pool, elapsed_ms = t0.elapsed().as_secs_f64() * 1e3, "sandbox created from a warm pool");
                Ok(Some(row))
            }
            Err((e, user_error)) => {
                self.discard(&id).await;
                if user_error {
                    crate::telemetry::TELEMETRY.create_failures.fetch_add(1, Ordering::Relaxed);
                    self.emit(&row, "error", serde_json::json!({"message": e.to_string(), "status": e.status()})).await;
                    return Err(e);
                }
                tracing::warn!(sandbox_id = %id, pool, error = %e, "handing over a pooled sandbox failed; booting one instead");
                self.pool_stats(pool, |s| s.last_error = Some(format!("a claim failed: {e}")));
                Ok(None)
            }
        }
    }

    /// The claim's work after the store: the agent's new environment and
    /// token, set-up, and the row going live with its `created` and
    /// `ready` events. Errors say whether they are the request's (its
    /// set-up failed).
    async fn hand_over(
        &self,
        row: &SandboxRow,
        info: Result<SandboxInfo, airlock_runtime::Error>,
        pool_token: Option<&str>,
        plan: &Plan,
        pool: &str,
    ) -> Result<i64, (ApiError, bool)> {
        let sys = |e: ApiError| (e, false);
        let info = info.map_err(|e| sys(runtime_err(&row.id, e)))?;
        crate::agent_client::init(&info.socket, pool_token, &row.env, row.access_token.as_deref()).await.map_err(|e| sys(ApiError::Internal(e.to_string())))?;
        if plan.setup.is_some() {
            self.emit(row, "created", serde_json::json!({"templateID": row.template, "cpuCount": row.cpus, "memoryMB": row.memory_mb, "pool": pool})).await;
            self.after_start(&row.id, None, row.access_token.as_deref(), &row.env, plan.setup.as_deref()).await.map_err(|e| (e, true))?;
        }
        let now = now_ms();
        let end = now + plan.timeout_s * 1000;
        let store = self.store.clone();
        let (id, template, meta) = (row.id.clone(), row.template.clone(), row.metadata.clone());
        let created = plan.setup.is_none().then(|| serde_json::json!({"templateID": row.template, "cpuCount": row.cpus, "memoryMB": row.memory_mb, "pool": pool}));
        let (live, events) = self
            .blocking(move || -> Result<_, StoreError> {
                if !store.finish_create(&id, now, end, State::Running)? {
                    return Ok((false, Vec::new()));
                }
                let mut evs = Vec::new();
                if let Some(c) = created {
                    evs.push(store.append_event(now, (&id, &template), "created", &meta, &c));
                }
                evs.push(store.append_event(now, (&id, &template), "ready", &meta, &serde_json::json!({"endAt": rfc3339_ms(end)})));
                Ok((true, evs))
            })
            .await
            .map_err(sys)?
            .map_err(|e| sys(e.into()))?;
        if !live {
            return Err(sys(ApiError::Internal(format!("sandbox {}'s row left the creating state during its claim", row.id))));
        }
        for e in events {
            self.publish(&row.id, "claim", e);
        }
        Ok(end)
    }

    /// Destroys a sandbox nobody sees (pooled, or a failed claim) and forgets it.
    async fn discard(&self, id: &str) {
        let (backend, store, id2) = (self.backend.clone(), self.store.clone(), id.to_string());
        let r = self
            .blocking(move || {
                store.set_state(&id2, State::Killing, 0)?;
                match backend.destroy(&id2) {
                    Ok(()) | Err(airlock_runtime::Error::NotFound(_)) => store.delete_sandbox(&id2).map(|_| ()),
                    // The row stays `killing`: the next start finishes it.
                    Err(e) => {
                        tracing::error!(sandbox_id = %id2, error = %e, "destroying a pooled sandbox failed");
                        Ok(())
                    }
                }
            })
            .await;
        if let Ok(Err(e)) = r {
            tracing::warn!(sandbox_id = %id, error = %e, "forgetting a pooled sandbox failed");
        }
        self.remove_log(id);
        self.forget(id);
        self.collect_layers_soon();
    }

    /// Makes room for a create at the sandbox limit: discards one pooled
    /// sandbox, from the fullest pool. Whether there was one.
    pub(super) async fn evict_pooled(&self) -> bool {
        let store = self.store.clone();
        let Ok(Ok(rows)) = self.blocking(move || store.sandboxes()).await else { return false };
        let pooled: Vec<&SandboxRow> = rows.iter().filter(|r| r.state == State::Pooled).collect();
        let mut by_pool: HashMap<&str, usize> = HashMap::new();
        for r in &pooled {
            *by_pool.entry(r.pool.as_str()).or_default() += 1;
        }
        let Some(victim) = pooled.iter().max_by_key(|r| (by_pool[r.pool.as_str()], std::cmp::Reverse(r.seq))) else { return false };
        tracing::info!(sandbox_id = %victim.id, pool = %victim.pool, "discarding a pooled sandbox to make room for a create");
        self.discard(&victim.id).await;
        true
    }

    /// The pools with their levels and counters.
    pub async fn list_pools(&self) -> Result<Vec<PoolInfo>, ApiError> {
        let specs = self.pool_specs().await?;
        let store = self.store.clone();
        let levels = self.blocking(move || store.pool_levels()).await??;
        let pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        Ok(specs
            .into_iter()
            .map(|(name, spec)| {
                let st = pools.get(&name);
                let layers = st.and_then(|s| s.shape.as_ref()).map(|s| serde_json::to_string(&s.layers).unwrap_or_default());
                let count = |state: State, fresh: bool| -> u32 {
                    levels.iter().filter(|(p, s, l, _)| *p == name && *s == state && (!fresh || Some(l) == layers.as_ref())).map(|(.., n)| *n as u32).sum()
                };
                PoolInfo {
                    ready: count(State::Pooled, true),
                    filling: count(State::Creating, false),
                    claims: st.map_or(0, |s| s.claims),
                    misses: st.map_or(0, |s| s.misses),
                    last_error: st.and_then(|s| s.last_error.clone()),
                    name,
                    spec,
                }
            })
            .collect())
    }

    pub async fn get_pool(&self, name: &str) -> Result<PoolInfo, ApiError> {
        self.list_pools().await?.into_iter().find(|p| p.name == name).ok_or_else(|| ApiError::NotFound(format!("pool '{name}' not found")))
    }

    /// Creates or changes a pool (kept in the store); the filler starts or
    /// discards sandboxes to match.
    pub async fn put_pool(&self, name: &str, spec: PoolSpec) -> Result<PoolInfo, ApiError> {
        crate::pools::check_name(name).map_err(ApiError::BadRequest)?;
        crate::pools::check_spec(&spec).map_err(ApiError::BadRequest)?;
        // Resolving it now makes a bad template or shape the caller's 4xx.
        // A built-in template not built yet (debootstrapping `debian` takes
        // minutes) is built by the filler instead: the request does not wait.
        let tname = super::create::template_name(&spec.template_id).to_string();
        let unbuilt = self.find_template(&tname).await?.is_none() && airlock_template::recipe::builtin(&tname).is_some();
        let plan = if unbuilt { None } else { Some(self.pool_plan(name, &spec).await?) };
        let store = self.store.clone();
        let (n, s) = (name.to_string(), spec.clone());
        self.blocking(move || store.put_pool(&n, &s)).await??;
        self.pool_stats(name, |st| {
            st.shape = plan.as_ref().map(Shape::of);
            st.last_error = None;
            st.retry_at = None;
        });
        self.pool_wake.notify_one();
        self.get_pool(name).await
    }

    /// Deletes a pool made through the API and discards its sandboxes.
    pub async fn delete_pool(&self, name: &str) -> Result<(), ApiError> {
        let store = self.store.clone();
        let n = name.to_string();
        if !self.blocking(move || store.delete_pool(&n)).await?? {
            if self.cfg.pools.iter().any(|(n, _)| n == name) {
                return Err(ApiError::Conflict(format!("pool '{name}' is set by the server's --pool flag; change the flag (or PUT the pool with size 0)")));
            }
            return Err(ApiError::NotFound(format!("pool '{name}' not found")));
        }
        if !self.cfg.pools.iter().any(|(n, _)| n == name) {
            self.pools.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
        }
        self.pool_wake.notify_one();
        Ok(())
    }

    /// A pool's sandboxes as a create would make them.
    async fn pool_plan(&self, name: &str, spec: &PoolSpec) -> Result<Plan, ApiError> {
        let req = NewSandbox {
            template_id: spec.template_id.clone(),
            cpu_count: spec.cpu_count,
            memory_mb: spec.memory_mb,
            disk_mb: spec.disk_mb,
            allow_internet_access: spec.allow_internet_access,
            secure: Some(true),
            ..Default::default()
        };
        let mut plan = self.plan(req, true).await?;
        plan.pool = Some(name.to_string());
        Ok(plan)
    }

    /// The filler: keeps every pool at its size, one sandbox at a time.
    pub async fn pool_loop(self: Arc<Self>) {
        loop {
            match self.pool_round().await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "warm pool round failed"),
            }
            tokio::select! {
                _ = self.pool_wake.notified() => {}
                _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
            }
        }
    }

    /// One step: discard what no pool wants (stale layers, shrunk or
    /// deleted pools), then start one sandbox for the emptiest pool.
    /// Whether it did anything (then it runs again at once).
    async fn pool_round(&self) -> Result<bool, ApiError> {
        let specs = self.pool_specs().await?;
        let store = self.store.clone();
        let rows = self.blocking(move || store.sandboxes()).await??;
        // Resolve each pool's shape (a template rebuilt since gives new layers).
        let mut plans = Vec::new();
        for (name, spec) in &specs {
            if spec.size == 0 {
                continue;
            }
            if self.pool_stats(name, |s| s.retry_at.is_some_and(|t| Instant::now() < t)) {
                continue;
            }
            match self.pool_plan(name, spec).await {
                Ok(plan) => {
                    self.pool_stats(name, |s| s.shape = Some(Shape::of(&plan)));
                    plans.push((name.clone(), spec.size as usize, plan));
                }
                Err(e) => self.pool_failed(name, &e),
            }
        }
        // Discard the unwanted: one pass, oldest first.
        let mut keep: HashMap<&str, usize> = HashMap::new();
        let mut unwanted = Vec::new();
        for r in rows.iter().filter(|r| r.state == State::Pooled) {
            let want = specs.iter().find(|(n, _)| *n == r.pool);
            let fresh = self.pools.lock().unwrap_or_else(|p| p.into_inner()).get(&r.pool).and_then(|s| s.shape.as_ref().map(|sh| sh.layers == r.layers));
            let n = keep.entry(r.pool.as_str()).or_default();
            match (want, fresh) {
                (Some((_, spec)), Some(true)) if *n < spec.size as usize => *n += 1,
                // Not resolved this round (a failing template): leave it.
                (Some((_, spec)), None) if *n < spec.size as usize => *n += 1,
                _ => unwanted.push(r.id.clone()),
            }
        }
        let discarded = !unwanted.is_empty();
        for id in unwanted {
            self.discard(&id).await;
        }
        // Creates come first: a pool fills only with slots to spare.
        let creating = rows.iter().filter(|r| r.state == State::Creating).count();
        let total = rows.iter().filter(|r| r.state != State::Dead).count();
        if creating * 2 >= self.cfg.max_concurrent_creates.max(1) || total + 1 >= self.cfg.max_sandboxes {
            return Ok(discarded);
        }
        let filling: HashMap<&str, usize> = rows.iter().filter(|r| r.state == State::Creating && !r.pool.is_empty()).fold(HashMap::new(), |mut m, r| {
            *m.entry(r.pool.as_str()).or_default() += 1;
            m
        });
        let neediest = plans
            .into_iter()
            .map(|(name, size, plan)| {
                let have = keep.get(name.as_str()).copied().unwrap_or(0) + filling.get(name.as_str()).copied().unwrap_or(0);
                (size.saturating_sub(have), name, plan)
            })
            .filter(|(missing, ..)| *missing > 0)
            .max_by_key(|(missing, ..)| *missing);
        let Some((_, name, plan)) = neediest else { return Ok(discarded) };
        match self.launch(plan).await {
            Ok(row) => {
                tracing::debug!(sandbox_id = %row.id, pool = %name, "pool filled by one");
                self.pool_stats(&name, |s| s.last_error = None);
                Ok(true)
            }
            Err(e) => {
                self.pool_failed(&name, &e);
                Ok(discarded)
            }
        }
    }

    fn pool_failed(&self, name: &str, e: &ApiError) {
        tracing::warn!(pool = name, error = %e, "filling a warm pool failed; retrying in 10 s");
        self.pool_stats(name, |s| {
            s.last_error = Some(e.to_string());
            s.retry_at = Some(Instant::now() + std::time::Duration::from_secs(10));
        });
    }

    /// Levels for `/metrics`: (pool, ready, size).
    pub async fn pool_levels(&self) -> Vec<(String, u32, u32)> {
        self.list_pools().await.map(|v| v.into_iter().map(|p| (p.name, p.ready, p.spec.size)).collect()).unwrap_or_default()
    }
}
