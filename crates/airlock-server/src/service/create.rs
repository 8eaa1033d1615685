//! Creating a sandbox: checking the request, resolving its template once
//! (building a shipped recipe on first use), the backend call, the
//! template's start and ready commands and create-time set-up.

use super::*;

/// Everything a new sandbox starts with, checked and resolved: what
/// `create`, `fork` and `import` hand to `Service::launch`.
#[derive(Debug, Clone)]
pub(super) struct Plan {
    /// The template (or snapshot) name it shows as.
    pub template: String,
    /// Its start and ready commands, when the template still exists.
    pub tpl: Option<airlock_template::Template>,
    pub rootfs: airlock_runtime::RootFs,
    pub timeout_s: i64,
    pub cpus: f64,
    pub memory_mb: u64,
    pub disk_mb: Option<u64>,
    pub internet: bool,
    pub env: BTreeMap<String, String>,
    pub metadata: BTreeMap<String, String>,
    pub secure: bool,
    pub auto_pause: bool,
    pub auto_pause_memory: bool,
    /// Create-time packages and startup script.
    pub setup: Option<String>,
    /// Volumes to bind, with what the store records about each.
    pub volumes: Vec<super::volumes::PlannedMount>,
    pub alerts: api::AlertThresholds,
    /// Traffic wakes it when paused (E2B's auto-resume).
    pub auto_resume: bool,
    /// Its ports need no traffic access token.
    pub public_traffic: bool,
    pub mask_host: String,
    /// Its egress policy, when it has one.
    pub egress: Option<crate::egress::store::Spec>,
    /// Sandbox networks it joins (network, the name it is reached by).
    pub networks: Vec<(String, Option<String>)>,
    /// Set when the sandbox is started for this warm pool: it waits,
    /// `Pooled`, for a create to claim it.
    pub pool: Option<String>,
}

impl Plan {
    /// The store row of a sandbox started (or claimed) from this plan at
    /// `now`: creating, with the plan's settings and the given id and token.
    pub(super) fn row(&self, id: &str, token: Option<String>, now: i64) -> SandboxRow {
        SandboxRow {
            id: id.to_string(),
            template: self.template.clone(),
            state: State::Creating,
            started_at: now,
            end_at: now + self.timeout_s * 1000,
            auto_pause: self.auto_pause,
            metadata: self.metadata.clone(),
            env: self.env.clone(),
            access_token: token,
            internet: self.internet,
            cpus: self.cpus,
            memory_mb: self.memory_mb,
            disk_mb: self.disk_mb.unwrap_or(0),
            seq: 0,
            layers: self.rootfs.root_layers.iter().chain(&self.rootfs.usr_layers).cloned().collect(),
            auto_pause_memory: self.auto_pause_memory,
            paused_memory: true,
            paused_at: 0,
            died_at: 0,
            death: String::new(),
            alerts: self.alerts,
            pool: self.pool.clone().unwrap_or_default(),
            auto_resume: self.auto_resume,
            timeout_s: self.timeout_s,
            public_traffic: self.public_traffic,
            mask_host: self.mask_host.clone(),
        }
    }
}

impl Service {
    pub async fn create(&self, req: NewSandbox, v2: bool) -> Result<SandboxRow, ApiError> {
        let plan = self.plan(req, v2).await?;
        if let Some(pool) = self.matching_pool(&plan) {
            if let Some(row) = self.claim(&pool, &plan).await? {
                return Ok(row);
            }
        }
        self.launch(plan).await
    }

    /// Checks a create request and resolves its template once.
    pub(super) async fn plan(&self, req: NewSandbox, v2: bool) -> Result<Plan, ApiError> {
        let volumes = self.volume_mounts(&req).await?;
        let template = if req.template_id.trim().is_empty() { "base".to_string() } else { template_name(&req.template_id).to_string() };
        let timeout_s = self.check_timeout(req.timeout.unwrap_or(self.cfg.default_timeout_s))?;
        let cpus = req.cpu_count.unwrap_or(self.cfg.default_cpus);
        let max_cpus = airlock_runtime::limits::MAX_CPUS;
        if !(cpus > 0.0 && cpus <= max_cpus) {
            return Err(ApiError::BadRequest(format!("cpuCount must be more than 0 and at most {max_cpus}, got {cpus}")));
        }
        let memory_mb = req.memory_mb.unwrap_or(self.cfg.default_memory_mb);
        self.check_memory(memory_mb)?;
        // The default applies only where the host can enforce it (warned at
        // start otherwise); an explicit diskMB there is refused by the backend.
        let default_disk = if self.backend.disk_limits_available() { self.cfg.default_disk_mb } else { 0 };
        let disk_mb = match req.disk_mb.unwrap_or(default_disk) {
            0 => None,
            mb if (16..=self.cfg.max_disk_mb).contains(&mb) => Some(mb),
            mb => return Err(ApiError::BadRequest(format!("diskMB must be between 16 and {}, got {mb}", self.cfg.max_disk_mb))),
        };
        let metadata = req.metadata.unwrap_or_default();
        check_metadata(&metadata)?;
        let env = req.env_vars.unwrap_or_default();
        check_env(&env)?;
        // Without a firewall a sandbox gets loopback only: by default that
        // is what it gets (the API answer carries a warning), and a request
        // that insists on internet is told how to get it.
        let internet = match req.allow_internet_access {
            Some(true) if !self.backend.network_available() => {
                return Err(ApiError::BadRequest(format!(
                    "this server cannot give sandboxes internet access: {NO_FIREWALL_HINT}; or create without it (allow_internet_access=false, CLI --no-internet)"
                )));
            }
            Some(on) => on,
            None => self.backend.network_available(),
        };
        let secure = v2 || req.secure.unwrap_or(true);
        // The one lookup of the template for this create: everything below
        // works from what it resolved to.
        let tpl = self.ensure_template(&template).await?;
        let setup = setup_script(req.install_packages.as_ref(), req.startup_script.as_deref())?;
        let alerts = super::metrics::check_alerts(req.alerts.as_ref())?;
        let auto_pause = req.auto_pause.unwrap_or(false);
        let auto_pause_memory = req.auto_pause_memory.unwrap_or(true);
        let auto_resume = req.auto_resume.is_some_and(|a| a.enabled);
        // As E2B's SDKs check it: auto-resume wakes what a timeout paused.
        if auto_resume && !auto_pause {
            return Err(ApiError::BadRequest("autoResume needs autoPause: a sandbox that is killed at its timeout cannot be resumed".into()));
        }
        let net = network_options(req.other.get("network"), req.allow_internet_access == Some(false))?;
        if net.egress.is_some() && self.egress().is_none() {
            return Err(ApiError::BadRequest(format!("this server cannot enforce egress policies (network.allow_out, deny_out, rules): {NO_EGRESS_HINT}")));
        }
        // A policy needs the network interface it polices, even when it
        // denies all but a few destinations.
        let internet = if net.egress.is_some() { self.backend.network_available() } else { internet && !net.no_internet };
        let (public_traffic, mask_host, egress) = (net.public, net.mask, net.egress);
        let networks = self.network_joins(req.other.get("networks"))?;
        if !networks.is_empty() && !internet {
            return Err(ApiError::BadRequest("a sandbox without internet access has no network interface to join a network with".into()));
        }
        Ok(Plan {
            alerts,
            pool: None,
            auto_resume,
            public_traffic,
            mask_host,
            egress,
            networks,
            template,
            rootfs: tpl.rootfs(),
            tpl: Some(tpl),
            timeout_s,
            cpus,
            memory_mb,
            disk_mb,
            internet,
            env,
            metadata,
            secure,
            auto_pause,
            auto_pause_memory,
            setup,
            volumes,
        })
    }

    /// A place among the creates running at once, after waiting in line
    /// for at most `CREATE_QUEUE_WAIT` behind at most
    /// `CREATE_QUEUE_PER_SLOT` × the limit others.
    async fn create_admission(&self) -> Result<tokio::sync::SemaphorePermit<'_>, ApiError> {
        if let Ok(p) = self.create_gate.try_acquire() {
            return Ok(p);
        }
        let limit = self.cfg.max_concurrent_creates.max(1);
        let places = limit.saturating_mul(CREATE_QUEUE_PER_SLOT);
        struct InLine<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for InLine<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        // Counted out again however this ends (a client gone mid-wait included).
        let _in_line = InLine(&self.create_queued);
        if self.create_queued.fetch_add(1, Ordering::SeqCst) >= places {
            return Err(ApiError::TooManyRequests(format!("too many sandboxes being created at once ({limit} running, {places} waiting)")));
        }
        match tokio::time::timeout(CREATE_QUEUE_WAIT, self.create_gate.acquire()).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(_)) => Err(ApiError::Internal("the create gate is closed".into())),
            Err(_) => Err(ApiError::TooManyRequests(format!("too many sandboxes being created at once: waited {} s for one of {limit} places", CREATE_QUEUE_WAIT.as_secs()))),
        }
    }

    pub(super) fn check_memory(&self, memory_mb: u64) -> Result<(), ApiError> {
        if memory_mb < 64 || memory_mb > self.cfg.max_memory_mb {
            return Err(ApiError::BadRequest(format!("memoryMB must be between 64 and {}, got {memory_mb}", self.cfg.max_memory_mb)));
        }
        Ok(())
    }

    /// Starts a planned sandbox: limits, the backend create, the
    /// template's start and ready commands, set-up, then the store row.
    /// Any failure leaves nothing behind.
    pub(super) async fn launch(&self, plan: Plan) -> Result<SandboxRow, ApiError> {
        self.disk.check("a new sandbox")?;
        let t0 = Instant::now();
        // A burst queues, fairly, instead of thrashing the host or being
        // refused: only past the queue's places, or its wait, is it a 429.
        let _permit = self.create_admission().await?;
        let id = crate::ids::sandbox_id()?;
        let token = if plan.secure { Some(crate::ids::access_token()?) } else { None };
        let now = now_ms();
        let mut row = plan.row(&id, token.clone(), now);
        // Admission first: the limits and the row in one transaction, so
        // concurrent creates cannot overshoot them and a crash from here on
        // leaves a `creating` row that start-up undoes.
        let (max_creating, max_total) = (self.cfg.max_concurrent_creates, self.cfg.max_sandboxes);
        let admit = || {
            let store = self.store.clone();
            let (r2, vols) = (row.clone(), plan.volumes.iter().map(|m| m.vol.clone()).collect::<Vec<_>>());
            self.blocking(move || store.admit(&r2, &vols, max_creating, max_total))
        };
        let mut admitted = admit().await??;
        // Warm sandboxes never take a place a create needs: one goes.
        if matches!(admitted, Err(Refusal::Full(_))) && plan.pool.is_none() && self.evict_pooled().await {
            admitted = admit().await??;
        }
        match admitted {
            Ok(()) => {}
            Err(Refusal::Busy(n)) => return Err(ApiError::TooManyRequests(format!("too many sandboxes being created at once (limit {n})"))),
            Err(Refusal::Full(n)) => return Err(ApiError::TooManyRequests(format!("sandbox limit reached ({n} sandboxes)"))),
            Err(Refusal::VolumeGone(v)) => return Err(ApiError::NotFound(format!("volume '{v}' was deleted while the sandbox was created"))),
        }
        let (started, end) = match self.start_admitted(&row, &plan, token.as_deref()).await {
            Ok(times) => times,
            Err(e) => {
                crate::telemetry::TELEMETRY.create_failures.fetch_add(1, Ordering::Relaxed);
                let message = if matches!(e, ApiError::Internal(_)) { "internal server error".to_string() } else { e.to_string() };
                if plan.pool.is_none() {
                    self.emit(&row, "error", serde_json::json!({"message": message, "status": e.status()})).await;
                }
                let (backend, store, id2) = (self.backend.clone(), self.store.clone(), id.clone());
                let _ = self
                    .blocking(move || {
                        let _ = backend.destroy(&id2);
                        store.delete_sandbox(&id2)
                    })
                    .await;
                self.forget_egress(&id).await;
                self.remove_log(&id);
                return Err(e);
            }
        };
        row.started_at = started;
        row.end_at = end;
        if plan.pool.is_some() {
            row.state = State::Pooled;
            crate::telemetry::TELEMETRY.pool_fill_seconds.observe(t0.elapsed());
            tracing::debug!(sandbox_id = %id, pool = ?plan.pool, elapsed_ms = t0.elapsed().as_secs_f64() * 1e3, "pooled sandbox ready");
            return Ok(row);
        }
        row.state = State::Running;
        crate::telemetry::TELEMETRY.create_seconds.observe(t0.elapsed());
        self.emit(&row, "ready", serde_json::json!({"endAt": rfc3339_ms(end)})).await;
        tracing::info!(sandbox_id = %id, template = %row.template, elapsed_ms = t0.elapsed().as_secs_f64() * 1e3, "sandbox created");
        Ok(row)
    }

    /// The part of a create after admission: the backend, the template's
    /// commands, set-up, and the row going live (its start and deadline
    /// are returned). The caller undoes it all on error.
    async fn start_admitted(&self, row: &SandboxRow, plan: &Plan, token: Option<&str>) -> Result<(i64, i64), ApiError> {
        let id = row.id.clone();
        let mut spec = SandboxSpec::new(id.clone(), plan.rootfs.clone());
        spec.resources = Resources { cpus: plan.cpus, memory_mb: plan.memory_mb, pids: self.cfg.pids_limit, io_bps: self.cfg.io_bps, io_iops: self.cfg.io_iops };
        spec.internet = plan.internet;
        spec.env = plan.env.clone();
        spec.access_token = token.map(str::to_string);
        spec.disk_mb = plan.disk_mb;
        spec.volumes = plan.volumes.iter().map(|v| v.mount.clone()).collect();
        // A policed sandbox trusts the interception CA, so that requests its
        // rules rewrite (secrets added on the way out) work over HTTPS.
        if plan.egress.is_some() {
            self.add_egress_trust(&mut spec).await?;
        }
        let backend = self.backend.clone();
        let info = self.blocking(move || backend.create(&spec)).await?.map_err(|e| {
            tracing::error!(sandbox_id = %id, error = %airlock_runtime::init::chain(&e), "sandbox creation failed");
            match e {
                airlock_runtime::Error::Boot { errno: Some(libc::ENOSPC | libc::EDQUOT), stage, .. } => {
                    ApiError::InsufficientStorage(format!("not enough disk space: the sandbox could not start (stage: {stage})"))
                }
                airlock_runtime::Error::Boot { stage, .. } => ApiError::Internal(format!("sandbox failed to start (stage: {stage})")),
                other => runtime_err(&id, other),
            }
        })?;
        // Before anything of the sandbox's own runs (its start command,
        // set-up, the caller's code): its policy takes hold, or whatever
        // policy a previous holder of its address had lets go.
        self.police(&id, info.ip, plan.egress.as_ref()).await?;
        for (net, alias) in &plan.networks {
            let ip = info.ip.ok_or_else(|| ApiError::BadRequest("a sandbox without internet access cannot join a network".into()))?;
            self.join_inner(net, crate::egress::networks::Member { id: id.clone(), name: alias.clone().unwrap_or_else(|| id.clone()), ip }).await?;
        }
        if plan.pool.is_none() {
            self.emit(row, "created", serde_json::json!({"templateID": row.template, "cpuCount": plan.cpus, "memoryMB": plan.memory_mb})).await;
        }
        self.after_start(&id, plan.tpl.as_ref(), token, &plan.env, plan.setup.as_deref()).await?;
        let now = now_ms();
        let store = self.store.clone();
        let (id2, end) = (id.clone(), now + plan.timeout_s * 1000);
        let state = if plan.pool.is_some() { State::Pooled } else { State::Running };
        if !self.blocking(move || store.finish_create(&id2, now, end, state)).await?? {
            return Err(ApiError::Internal(format!("sandbox {id}'s row left the creating state during its create")));
        }
        Ok((now, end))
    }

    pub(super) async fn find_template(&self, name: &str) -> Result<Option<airlock_template::Template>, ApiError> {
        let store = self.builder.store.clone();
        let t = name.to_string();
        self.blocking(move || store.get(&t).ok()).await
    }

    /// The template `name` resolves to: in a cluster, copied from another
    /// node when this one lacks it; a built-in one is built on first use.
    pub async fn ensure_template(&self, name: &str) -> Result<airlock_template::Template, ApiError> {
        if let Some(t) = self.find_template(name).await? {
            return Ok(t);
        }
        let recipe = airlock_template::recipe::builtin(name);
        let cluster = self.cluster().cloned();
        if recipe.is_none() && cluster.is_none() {
            return Err(ApiError::NotFound(format!("template '{name}' not found")));
        }
        // One fetch or build at a time per name; the creates waiting on it
        // then find it.
        let lock = self.build_locks.lock().unwrap_or_else(|p| p.into_inner()).entry(name.to_string()).or_default().clone();
        let _g = lock.lock().await;
        if let Some(t) = self.find_template(name).await? {
            return Ok(t);
        }
        if let Some(c) = cluster {
            if let Some(t) = c.fetch_template(self, name).await? {
                return Ok(t);
            }
        }
        let Some(recipe) = recipe else {
            return Err(ApiError::NotFound(format!("template '{name}' not found")));
        };
        tracing::info!(template = %name, "building built-in template on first use");
        let (tx, mut rx) = mpsc::channel(256);
        let logger = tokio::spawn({
            let name = name.to_string();
            async move {
                while let Some(ev) = rx.recv().await {
                    match ev {
                        crate::builder::BuildEvent::Step { step, total, text, cached } => tracing::info!(template = %name, step, total, cached, "{text}"),
                        crate::builder::BuildEvent::Log { text, .. } => tracing::debug!(template = %name, "{}", text.trim_end()),
                        other => tracing::info!(template = %name, event = ?other, "build"),
                    }
                }
            }
        });
        let r = self.builder.build(name, recipe, &BTreeMap::new(), None, &tx).await;
        drop(tx);
        let _ = logger.await;
        r.map_err(|e| ApiError::Internal(format!("building template {name}: {e}")))
    }

    /// After the sandbox starts: the template's start command and ready
    /// check, then create-time package installs and startup script. Any
    /// failure fails the create with the command's output.
    pub(super) async fn after_start(
        &self,
        id: &str,
        tpl: Option<&airlock_template::Template>,
        token: Option<&str>,
        env: &BTreeMap<String, String>,
        setup: Option<&str>,
    ) -> Result<(), ApiError> {
        let none = airlock_template::Template::default();
        let tpl = tpl.unwrap_or(&none);
        if tpl.start_cmd.is_none() && tpl.ready_cmd.is_none() && setup.is_none() {
            return Ok(());
        }
        let backend = self.backend.clone();
        let id2 = id.to_string();
        let info = self.blocking(move || backend.get(&id2)).await?.map_err(|e| runtime_err(id, e))?;
        let user = if tpl.default_user.is_empty() { "user" } else { tpl.default_user.as_str() };
        let workdir = tpl.workdir.as_deref();
        if let Some(cmd) = &tpl.start_cmd {
            self.append_log(id, &format!("$ {cmd}   # start command, tag 'start'"));
            crate::agent_client::spawn(&info.socket, token, user, cmd, env, workdir, "start")
                .await
                .map_err(|e| ApiError::BadRequest(format!("the template's start command failed to start: {e}")))?;
        }
        if let Some(check) = &tpl.ready_cmd {
            let deadline = Instant::now() + std::time::Duration::from_secs(120);
            loop {
                let r = crate::agent_client::run(&info.socket, token, user, check, env, workdir, |_, _| {}).await;
                if matches!(r, Ok(ref f) if f.exit_code == 0) {
                    self.append_log(id, &format!("ready: {check}"));
                    break;
                }
                if Instant::now() > deadline {
                    return Err(ApiError::BadRequest(format!("the template's ready check `{check}` did not succeed within 120 s")));
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
        if let Some(script) = setup {
            let mut out = String::new();
            let r = crate::agent_client::run(&info.socket, token, "root", script, env, None, |b, _| out.push_str(&String::from_utf8_lossy(b))).await;
            self.append_log(id, &out);
            match r {
                Ok(f) if f.exit_code == 0 => {}
                Ok(f) => {
                    let tail: String = out.chars().rev().take(4000).collect::<Vec<_>>().into_iter().rev().collect();
                    return Err(ApiError::BadRequest(format!("sandbox set-up failed with exit code {}:\n{tail}", f.exit_code)));
                }
                Err(e) => return Err(ApiError::BadRequest(format!("sandbox set-up failed: {e}"))),
            }
        }
        Ok(())
    }
}

/// The shell script for create-time `installPackages` and `startupScript`,
/// with every package name checked so nothing can inject shell syntax.
pub fn setup_script(pk: Option<&api::InstallPackages>, startup: Option<&str>) -> Result<Option<String>, ApiError> {
    let mut s = String::new();
    if let Some(pk) = pk {
        let check = |names: &[String], kind: &str| -> Result<String, ApiError> {
            for n in names {
                let ok = !n.is_empty() && !n.starts_with('-') && n.chars().all(|c| c.is_ascii_alphanumeric() || "._-+=<>!~@/:[],".contains(c));
                if !ok {
                    return Err(ApiError::BadRequest(format!("invalid {kind} package name {n:?}")));
                }
            }
            Ok(names.iter().map(|n| format!("'{n}'")).collect::<Vec<_>>().join(" "))
        };
        if !pk.pip.is_empty() {
            s.push_str(&format!(
                "echo '# pip install'; python3 -m pip install --break-system-packages --root-user-action=ignore --no-cache-dir --progress-bar off {} || exit $?\n",
                check(&pk.pip, "pip")?
            ));
        }
        if !pk.npm.is_empty() {
            s.push_str(&format!("echo '# npm install -g'; npm install -g --no-fund --no-audit {} || exit $?\n", check(&pk.npm, "npm")?));
        }
        if !pk.apt.is_empty() {
            s.push_str(&format!(
                "echo '# apt-get install'; if [ ! -d /var/lib/dpkg ]; then echo 'apt packages need a Debian-based template (this one has no dpkg database)' >&2; exit 100; fi; apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends {} || exit $?\n",
                check(&pk.apt, "apt")?
            ));
        }
    }
    if let Some(script) = startup.filter(|s| !s.trim().is_empty()) {
        s.push_str("echo '# startup script'\n");
        s.push_str(script);
        s.push('\n');
    }
    Ok((!s.is_empty()).then_some(s))
}

/// Metadata is for labels, not storage: it is kept in the store, returned
/// by every list and matched by filters.
pub(crate) const MAX_METADATA_KEYS: usize = 64;
pub(crate) const MAX_METADATA_BYTES: usize = 16 * 1024;

fn check_metadata(m: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if m.len() > MAX_METADATA_KEYS {
        return Err(ApiError::BadRequest(format!("metadata has {} keys; at most {MAX_METADATA_KEYS} are allowed", m.len())));
    }
    let size: usize = m.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > MAX_METADATA_BYTES {
        return Err(ApiError::BadRequest(format!("metadata is {size} bytes; at most {MAX_METADATA_BYTES} are allowed")));
    }
    if let Some(k) = m.keys().find(|k| k.is_empty() || k.len() > 256) {
        return Err(ApiError::BadRequest(format!("metadata key {:?} must be 1 to 256 bytes", k.chars().take(40).collect::<String>())));
    }
    Ok(())
}

pub(super) fn check_env(env: &BTreeMap<String, String>) -> Result<(), ApiError> {
    for k in env.keys() {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return Err(ApiError::BadRequest(format!("invalid environment variable name {k:?}")));
        }
    }
    Ok(())
}

/// What the `network` create (or update) option asks for.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct NetPlan {
    /// Its ports take requests without the traffic access token.
    pub public: bool,
    pub mask: String,
    /// Nothing goes out at all (E2B's all-traffic entry alone): the
    /// sandbox gets no network interface.
    pub no_internet: bool,
    /// An egress policy to enforce (none for an open sandbox).
    pub egress: Option<crate::egress::store::Spec>,
}

/// The `network` create option, checked: the traffic token on ports, the
/// host mask, and the egress policy (parsed here so a bad entry is a 400
/// before anything starts). `deny_internet` is E2B's
/// `allow_internet_access=false`, which means `deny_out: ["0.0.0.0/0"]`.
pub(crate) fn network_options(v: Option<&serde_json::Value>, deny_internet: bool) -> Result<NetPlan, ApiError> {
    let n: api::NetworkOptions = match v.filter(|v| !v.is_null()) {
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| ApiError::BadRequest(format!("invalid network options: {e}")))?,
        None => api::NetworkOptions::default(),
    };
    if n.egress_proxy.as_ref().is_some_and(|p| !p.is_null()) {
        return Err(ApiError::BadRequest(
            "network.egress_proxy (a SOCKS5 proxy of your own) is not supported by this server: the egress policy is enforced by its own proxy".into(),
        ));
    }
    if !n.https_ports.is_empty() {
        return Err(ApiError::BadRequest("network.https_ports is not supported by this server yet".into()));
    }
    let mask = n.mask_request_host.unwrap_or_default();
    if mask.len() > 255 || mask.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(ApiError::BadRequest(format!("invalid network.mask_request_host {mask:?}")));
    }
    let mut spec = crate::egress::store::Spec { allow_out: n.allow_out, deny_out: n.deny_out, rules: n.rules.filter(|r| !r.is_null()) };
    if deny_internet {
        spec.deny_out.push("0.0.0.0/0".into());
    }
    // E2B's dns_servers: with a domain in allow_out, all traffic to them is
    // allowed. (Names resolve through Airlock's own resolver either way.)
    let has_domain = spec.allow_out.iter().any(|e| e.trim().parse::<std::net::Ipv4Addr>().is_err() && !e.contains('/') && !e.contains(':'));
    if has_domain {
        for d in n.dns_servers.unwrap_or_default() {
            if d.trim().parse::<std::net::Ipv4Addr>().is_err() {
                return Err(ApiError::BadRequest(format!("network.dns_servers: {d:?} is not an IPv4 address")));
            }
            spec.allow_out.push(d.trim().to_string());
        }
    }
    let policy = spec.policy().map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let no_internet = policy.is_no_internet() && !policy.has_rules();
    let egress = (!policy.is_open() && !no_internet).then_some(spec);
    Ok(NetPlan { public: n.allow_public_traffic.unwrap_or(true), mask, no_internet, egress })
}

/// What a host needs for egress policies, for messages.
pub(super) const NO_EGRESS_HINT: &str = "it needs nftables (`apt install nftables`) and sandbox networking; restart `airlock serve` once it has them";

/// What a host without a firewall needs, for messages.
pub const NO_FIREWALL_HINT: &str = "the host has no firewall tool (install iptables, e.g. `apt install iptables`, and restart `airlock serve`)";

/// Creates waiting for a place, per place (`--max-concurrent-creates`).
const CREATE_QUEUE_PER_SLOT: usize = 16;
/// The longest a create waits in line before it is refused.
const CREATE_QUEUE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// A template reference without E2B's tag: snapshots are named
/// `<id>:default` (the only tag there is here).
pub(crate) fn template_name(r: &str) -> &str {
    let r = r.trim();
    r.strip_suffix(":default").unwrap_or(r)
}
