//! The service layer: every control-plane action as a typed method, over
//! the store and the runtime backend. HTTP handlers parse requests into
//! these calls; tests and the lifecycle manager call them directly.
//!
//! Lifecycle rules (E2B's): a sandbox's timeout is a deadline persisted in
//! the store; at the deadline it is killed, or paused when `autoPause` was
//! set. Set-timeout moves the deadline to now + timeout; connect never
//! shortens it. Pause freezes the cgroup (memory kept while the host runs)
//! and stops the clock; connect or resume thaws it. A sandbox whose
//! processes are gone (host reboot) is restarted over its writable layer.
//!
//! Operations on one sandbox are serialised by a per-sandbox async mutex,
//! so a pause racing a kill or a deadline sees a consistent state.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;

use airlock_proto::api::{self, NewSandbox, SandboxDetail, SandboxMetric};
use airlock_proto::envd::ENVD_VERSION;
use airlock_runtime::{Backend, Resources, SandboxInfo, SandboxSpec};

use crate::config::Config;
use crate::store::{SandboxRow, State, Store, StoreError};

/// A failed action, mapped to an HTTP status by the API layer.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooManyRequests(String),
    #[error("{0}")]
    Unavailable(String),
    /// Details are logged, not sent: the client sees a generic message.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> u16 {
        match self {
            ApiError::BadRequest(_) => 400,
            ApiError::Unauthorized(_) => 401,
            ApiError::NotFound(_) => 404,
            ApiError::Conflict(_) => 409,
            ApiError::TooManyRequests(_) => 429,
            ApiError::Unavailable(_) => 503,
            ApiError::Internal(_) => 500,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::Internal(format!("store: {e:?}"))
    }
}

fn runtime_err(id: &str, e: airlock_runtime::Error) -> ApiError {
    match e {
        airlock_runtime::Error::NotFound(_) => ApiError::NotFound(format!("sandbox {id} not found")),
        airlock_runtime::Error::InvalidSpec(m) => ApiError::BadRequest(m),
        airlock_runtime::Error::AlreadyExists(_) => ApiError::Conflict(format!("sandbox {id} already exists")),
        other => ApiError::Internal(format!("sandbox {id}: {other}")),
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

pub fn rfc3339_ms(ms: i64) -> String {
    airlock_proto::time::rfc3339_parts(ms.div_euclid(1000), (ms.rem_euclid(1000) * 1_000_000) as u32)
}

/// A new sandbox id (see `ids::sandbox_id`).
pub fn new_sandbox_id() -> Result<String, ApiError> {
    crate::ids::sandbox_id().map_err(|e| ApiError::Internal(e.to_string()))
}

/// A new API key (see `ids::api_key`).
pub fn new_api_key() -> Result<String, crate::ids::RandomError> {
    crate::ids::api_key()
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    at_ms: i64,
    cpu_ns: u64,
    cpu_pct: f64,
    mem: u64,
    mem_limit: u64,
    disk: u64,
    disk_limit: u64,
}

/// A template as the API shows it.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateInfo {
    #[serde(rename = "templateID")]
    pub template_id: String,
    pub name: String,
    pub aliases: Vec<String>,
    pub digest: String,
    pub size_bytes: u64,
    pub layers: usize,
    pub created_at: String,
    pub default_user: String,
    pub workdir: Option<String>,
    pub env: BTreeMap<String, String>,
    pub start_cmd: Option<String>,
    pub ready_cmd: Option<String>,
}

impl From<&airlock_template::Template> for TemplateInfo {
    fn from(t: &airlock_template::Template) -> Self {
        Self {
            template_id: t.name.clone(),
            name: t.name.clone(),
            aliases: t.aliases.clone(),
            digest: t.digest.clone(),
            size_bytes: t.size_bytes,
            layers: t.root_layers.len() + t.usr_layers.len(),
            created_at: rfc3339_ms(t.created_at),
            default_user: t.default_user.clone(),
            workdir: t.workdir.clone(),
            env: t.env.clone(),
            start_cmd: t.start_cmd.clone(),
            ready_cmd: t.ready_cmd.clone(),
        }
    }
}

/// What list requests filter on.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub states: Option<Vec<State>>,
    pub metadata: BTreeMap<String, String>,
    pub descending: bool,
    pub limit: usize,
    /// Opaque token from a previous page (the last seen sequence number).
    pub next_token: Option<String>,
    pub template: Option<String>,
}

pub struct Page {
    pub items: Vec<SandboxDetail>,
    pub next_token: Option<String>,
    pub running: usize,
}

pub struct Service {
    pub cfg: Config,
    store: Arc<Store>,
    backend: Arc<dyn Backend>,
    pub builder: crate::builder::Builder,
    /// One build at a time per template name.
    build_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    samples: Mutex<HashMap<String, VecDeque<Sample>>>,
    creating: AtomicUsize,
}

/// Samples kept per sandbox: an hour at the 5 s sampling interval.
const MAX_SAMPLES: usize = 720;

struct CreateSlot<'a>(&'a AtomicUsize);
impl Drop for CreateSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Service {
    pub fn new(cfg: Config, store: Arc<Store>, backend: Arc<dyn Backend>) -> Arc<Self> {
        let builder = crate::builder::Builder { backend: backend.clone(), store: airlock_template::Store::new(cfg.data_dir.join("templates")), io_bps: cfg.io_bps, io_iops: cfg.io_iops };
        Arc::new(Self {
            cfg,
            store,
            backend,
            builder,
            build_locks: Mutex::new(HashMap::new()),
            locks: Mutex::new(HashMap::new()),
            samples: Mutex::new(HashMap::new()),
            creating: AtomicUsize::new(0),
        })
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Runs a blocking store or backend call on the blocking pool.
    pub async fn blocking<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
        tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::Internal(format!("blocking task failed: {e}")))
    }

    fn lock_for(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut m = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(id.to_string()).or_default().clone()
    }

    fn forget(&self, id: &str) {
        self.locks.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
        self.samples.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }

    async fn row(&self, id: &str) -> Result<SandboxRow, ApiError> {
        let store = self.store.clone();
        let id2 = id.to_string();
        self.blocking(move || store.sandbox(&id2)).await??.ok_or_else(|| ApiError::NotFound(format!("sandbox {id} not found")))
    }

    fn check_timeout(&self, t: i64) -> Result<i64, ApiError> {
        if t < 0 || t > self.cfg.max_timeout_s {
            return Err(ApiError::BadRequest(format!("timeout must be between 0 and {} seconds, got {t}", self.cfg.max_timeout_s)));
        }
        Ok(t)
    }

    pub async fn key_valid(&self, key: &str) -> Result<bool, ApiError> {
        if self.cfg.api_keys.iter().any(|k| k == key) {
            return Ok(true);
        }
        let store = self.store.clone();
        let key = key.to_string();
        Ok(self.blocking(move || store.key_valid(&key)).await??)
    }

    // -------------------------------------------------------------- create

    pub async fn create(&self, req: NewSandbox, v2: bool) -> Result<SandboxRow, ApiError> {
        let template = if req.template_id.trim().is_empty() { "base".to_string() } else { req.template_id.trim().to_string() };
        let timeout = self.check_timeout(req.timeout.unwrap_or(self.cfg.default_timeout_s))?;
        let cpus = req.cpu_count.unwrap_or(self.cfg.default_cpus);
        let max_cpus = airlock_runtime::limits::MAX_CPUS;
        if !(cpus > 0.0 && cpus <= max_cpus) {
            return Err(ApiError::BadRequest(format!("cpuCount must be between 0 and {max_cpus}, got {cpus}")));
        }
        let memory_mb = req.memory_mb.unwrap_or(self.cfg.default_memory_mb);
        if memory_mb < 64 || memory_mb > self.cfg.max_memory_mb {
            return Err(ApiError::BadRequest(format!("memoryMB must be between 64 and {}, got {memory_mb}", self.cfg.max_memory_mb)));
        }
        // The default applies only where the host can enforce it (warned at
        // start otherwise); an explicit diskMB there is refused by the backend.
        let default_disk = if self.backend.disk_limits_available() { self.cfg.default_disk_mb } else { 0 };
        let disk_mb = match req.disk_mb.unwrap_or(default_disk) {
            0 => None,
            mb if (16..=self.cfg.max_disk_mb).contains(&mb) => Some(mb),
            mb => return Err(ApiError::BadRequest(format!("diskMB must be between 16 and {}, got {mb}", self.cfg.max_disk_mb))),
        };
        let metadata = req.metadata.unwrap_or_default();
        let env = req.env_vars.unwrap_or_default();
        for k in env.keys() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(ApiError::BadRequest(format!("invalid environment variable name {k:?}")));
            }
        }
        let internet = req.allow_internet_access.unwrap_or(true);
        if internet && !self.backend.network_available() {
            return Err(ApiError::BadRequest("this host cannot give sandboxes internet access (no firewall); create with allow_internet_access=false".into()));
        }
        let secure = v2 || req.secure.unwrap_or(true);
        // The one lookup of the template for this create: everything below
        // works from what it resolved to.
        let tpl = self.ensure_template(&template).await?;
        let setup = setup_script(req.install_packages.as_ref(), req.startup_script.as_deref())?;
        let in_flight = self.creating.fetch_add(1, Ordering::SeqCst) + 1;
        let _slot = CreateSlot(&self.creating);
        if in_flight > self.cfg.max_concurrent_creates {
            return Err(ApiError::TooManyRequests(format!("too many sandboxes being created at once (limit {})", self.cfg.max_concurrent_creates)));
        }
        let existing = {
            let store = self.store.clone();
            self.blocking(move || store.count()).await??
        };
        if existing + in_flight > self.cfg.max_sandboxes {
            return Err(ApiError::TooManyRequests(format!("sandbox limit reached ({} sandboxes)", self.cfg.max_sandboxes)));
        }

        let id = new_sandbox_id()?;
        let token = if secure { Some(crate::ids::access_token().map_err(|e| ApiError::Internal(e.to_string()))?) } else { None };
        let mut spec = SandboxSpec::new(id.clone(), tpl.rootfs());
        spec.resources = Resources { cpus, memory_mb, pids: self.cfg.pids_limit, io_bps: self.cfg.io_bps, io_iops: self.cfg.io_iops };
        spec.internet = internet;
        spec.env = env.clone();
        spec.access_token = token.clone();
        spec.disk_mb = disk_mb;
        let t0 = Instant::now();
        let backend = self.backend.clone();
        let s2 = spec.clone();
        self.blocking(move || backend.create(&s2)).await?.map_err(|e| {
            tracing::error!(sandbox_id = %id, error = %airlock_runtime::init::chain(&e), "sandbox creation failed");
            match e {
                airlock_runtime::Error::Boot { stage, .. } => ApiError::Internal(format!("sandbox failed to start (stage: {stage})")),
                other => runtime_err(&id, other),
            }
        })?;
        if let Err(e) = self.after_start(&id, &tpl, token.as_deref(), &env, setup.as_deref()).await {
            let backend = self.backend.clone();
            let id2 = id.clone();
            let _ = self.blocking(move || backend.destroy(&id2)).await;
            self.remove_log(&id);
            return Err(e);
        }
        let now = now_ms();
        let row = SandboxRow {
            id: id.clone(),
            template,
            state: State::Running,
            started_at: now,
            end_at: now + timeout * 1000,
            auto_pause: req.auto_pause.unwrap_or(false),
            metadata,
            env,
            access_token: token,
            internet,
            cpus,
            memory_mb,
            seq: 0,
        };
        let store = self.store.clone();
        let r2 = row.clone();
        if let Err(e) = self.blocking(move || store.insert_sandbox(&r2)).await? {
            // Without a row nobody could ever reach or kill it.
            let backend = self.backend.clone();
            let id2 = id.clone();
            let _ = self.blocking(move || backend.destroy(&id2)).await;
            return Err(e.into());
        }
        tracing::info!(sandbox_id = %id, template = %row.template, elapsed_ms = t0.elapsed().as_secs_f64() * 1e3, "sandbox created");
        Ok(row)
    }

    async fn find_template(&self, name: &str) -> Result<Option<airlock_template::Template>, ApiError> {
        let store = self.builder.store.clone();
        let t = name.to_string();
        self.blocking(move || store.get(&t).ok()).await
    }

    /// The template `name` resolves to, building a built-in one on first use.
    pub async fn ensure_template(&self, name: &str) -> Result<airlock_template::Template, ApiError> {
        if let Some(t) = self.find_template(name).await? {
            return Ok(t);
        }
        let Some(recipe) = crate::builder::builtin(name) else {
            return Err(ApiError::NotFound(format!("template '{name}' not found")));
        };
        let lock = self.build_locks.lock().unwrap_or_else(|p| p.into_inner()).entry(name.to_string()).or_default().clone();
        let _g = lock.lock().await;
        if let Some(t) = self.find_template(name).await? {
            return Ok(t);
        }
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

    // ----------------------------------------------------------- templates

    pub async fn templates(&self) -> Result<Vec<TemplateInfo>, ApiError> {
        let store = self.builder.store.clone();
        let list = self.blocking(move || store.list()).await?.map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok(list.iter().map(TemplateInfo::from).collect())
    }

    pub async fn template(&self, name: &str) -> Result<TemplateInfo, ApiError> {
        let store = self.builder.store.clone();
        let n = name.to_string();
        let t = self.blocking(move || store.get(&n)).await?.map_err(|_| ApiError::NotFound(format!("template '{name}' not found")))?;
        Ok(TemplateInfo::from(&t))
    }

    pub async fn build_template(&self, name: &str, recipe: &str, args: &BTreeMap<String, String>, context: Option<&std::path::Path>, events: &mpsc::Sender<crate::builder::BuildEvent>) -> Result<(), ApiError> {
        if recipe.trim().is_empty() {
            return Err(ApiError::BadRequest("recipe is required".into()));
        }
        let lock = self.build_locks.lock().unwrap_or_else(|p| p.into_inner()).entry(name.to_string()).or_default().clone();
        let _g = lock.lock().await;
        self.builder.build(name, recipe, args, context, events).await.map(|_| ()).map_err(|e| match e {
            crate::builder::BuildError::Internal(m) => ApiError::Internal(m),
            crate::builder::BuildError::NotFound(t) => ApiError::NotFound(format!("template '{t}' not found")),
            other => ApiError::BadRequest(other.to_string()),
        })
    }

    pub async fn alias_template(&self, name: &str, alias: &str) -> Result<(), ApiError> {
        if !airlock_template::Store::valid_name(alias) {
            return Err(ApiError::BadRequest(format!("invalid alias {alias:?}")));
        }
        let store = self.builder.store.clone();
        let (n, a) = (name.to_string(), alias.to_string());
        self.blocking(move || -> Result<(), ApiError> {
            if store.get(&a).is_ok() {
                return Err(ApiError::Conflict(format!("a template named '{a}' already exists")));
            }
            let mut t = store.get(&n).map_err(|_| ApiError::NotFound(format!("template '{n}' not found")))?;
            t.aliases.push(a);
            store.save(&t).map_err(|e| ApiError::Internal(e.to_string()))
        })
        .await?
    }

    /// Deletes a template; refused while sandboxes use it unless forced
    /// (their mounted layers keep working; unused layers are collected).
    pub async fn delete_template(&self, name: &str, force: bool) -> Result<(), ApiError> {
        let t = self.template(name).await?;
        let store = self.store.clone();
        let users: Vec<String> = self.blocking(move || store.sandboxes()).await??.into_iter().filter(|r| r.template == t.name || t.aliases.contains(&r.template)).map(|r| r.id).collect();
        if !users.is_empty() && !force {
            return Err(ApiError::Conflict(format!("template '{name}' is used by {} sandbox(es): {}; kill them or delete with force=true", users.len(), users.join(", "))));
        }
        let tstore = self.builder.store.clone();
        let n = t.name.clone();
        self.blocking(move || -> Result<(), ApiError> {
            tstore.remove(&n).map_err(|e| match e {
                airlock_template::TemplateError::NotFound(_) => ApiError::NotFound(format!("template '{n}' not found")),
                other => ApiError::BadRequest(other.to_string()),
            })?;
            if users.is_empty() {
                let _ = tstore.gc_layers();
            }
            Ok(())
        })
        .await?
    }

    // ---------------------------------------------------- connect / resume

    /// Makes sure the sandbox runs (thawing or restarting it) and extends
    /// its deadline to at least now + timeout. Returns whether it was
    /// resumed from pause (201) or already running (200).
    pub async fn connect(&self, id: &str, timeout: Option<i64>) -> Result<(SandboxRow, bool), ApiError> {
        let timeout = self.check_timeout(timeout.unwrap_or(self.cfg.default_timeout_s))?;
        let lock = self.lock_for(id);
        let _g = lock.lock().await;
        let mut row = self.row(id).await?;
        let resumed = row.state == State::Paused;
        self.ensure_running(&row).await?;
        let now = now_ms();
        let end = if resumed { now + timeout * 1000 } else { row.end_at.max(now + timeout * 1000) };
        let store = self.store.clone();
        let id2 = id.to_string();
        self.blocking(move || store.set_state(&id2, State::Running, end)).await??;
        row.state = State::Running;
        row.end_at = end;
        Ok((row, resumed))
    }

    /// Legacy `POST /sandboxes/{id}/resume`: only for paused sandboxes.
    pub async fn resume(&self, id: &str, timeout: Option<i64>) -> Result<SandboxRow, ApiError> {
        {
            let row = self.row(id).await?;
            if row.state == State::Running {
                return Err(ApiError::Conflict(format!("sandbox {id} is already running")));
            }
        }
        self.connect(id, timeout).await.map(|(r, _)| r)
    }

    /// Thaws a frozen sandbox, or restarts one whose processes are gone.
    async fn ensure_running(&self, row: &SandboxRow) -> Result<SandboxInfo, ApiError> {
        let backend = self.backend.clone();
        let id = row.id.clone();
        let r = self
            .blocking(move || match backend.get(&id) {
                Ok(info) if info.frozen => backend.thaw(&id).and_then(|_| backend.get(&id)),
                Ok(info) => Ok(info),
                Err(airlock_runtime::Error::NotFound(_)) => {
                    tracing::info!(sandbox_id = %id, "sandbox processes are gone; restarting it over its files");
                    backend.restart(&id)
                }
                Err(e) => Err(e),
            })
            .await?;
        r.map_err(|e| runtime_err(&row.id, e))
    }

    // ---------------------------------------------------------------- read

    pub fn detail(&self, row: &SandboxRow) -> SandboxDetail {
        SandboxDetail {
            template_id: row.template.clone(),
            sandbox_id: row.id.clone(),
            client_id: "airlock".into(),
            alias: Some(row.template.clone()),
            started_at: rfc3339_ms(row.started_at),
            end_at: rfc3339_ms(row.end_at),
            envd_version: ENVD_VERSION.into(),
            cpu_count: row.cpus.ceil().max(1.0) as u32,
            memory_mb: row.memory_mb,
            disk_size_mb: 0,
            state: row.state.as_str().into(),
            metadata: row.metadata.clone(),
            envd_access_token: row.access_token.clone(),
            allow_internet_access: Some(row.internet),
            lifecycle: api::Lifecycle { auto_resume: false, on_timeout: if row.auto_pause { "pause".into() } else { "kill".into() } },
            domain: None,
        }
    }

    pub fn sandbox_body(&self, row: &SandboxRow) -> api::Sandbox {
        api::Sandbox {
            template_id: row.template.clone(),
            sandbox_id: row.id.clone(),
            client_id: "airlock".into(),
            envd_version: ENVD_VERSION.into(),
            alias: Some(row.template.clone()),
            envd_access_token: row.access_token.clone(),
            traffic_access_token: row.access_token.as_deref().map(airlock_proto::envd::traffic_token),
            domain: None,
        }
    }

    pub async fn get(&self, id: &str) -> Result<SandboxDetail, ApiError> {
        Ok(self.detail(&self.row(id).await?))
    }

    pub async fn list(&self, f: ListFilter) -> Result<Page, ApiError> {
        let store = self.store.clone();
        let rows = self.blocking(move || store.sandboxes()).await??;
        let running = rows.iter().filter(|r| r.state == State::Running).count();
        let after: Option<i64> = match &f.next_token {
            Some(t) if !t.is_empty() => Some(t.parse().map_err(|_| ApiError::BadRequest(format!("invalid nextToken {t:?}")))?),
            _ => None,
        };
        let mut matching: Vec<&SandboxRow> = rows
            .iter()
            .filter(|r| f.states.as_ref().is_none_or(|s| s.contains(&r.state)))
            .filter(|r| f.metadata.iter().all(|(k, v)| r.metadata.get(k) == Some(v)))
            .filter(|r| f.template.as_ref().is_none_or(|t| &r.template == t))
            .collect();
        if f.descending {
            matching.reverse();
        }
        if let Some(after) = after {
            matching.retain(|r| if f.descending { r.seq < after } else { r.seq > after });
        }
        let limit = if f.limit == 0 { usize::MAX } else { f.limit };
        let more = matching.len() > limit;
        matching.truncate(limit);
        let next_token = if more { matching.last().map(|r| r.seq.to_string()) } else { None };
        Ok(Page { items: matching.into_iter().map(|r| self.detail(r)).collect(), next_token, running })
    }

    // --------------------------------------------------------------- write

    pub async fn kill(&self, id: &str) -> Result<(), ApiError> {
        let lock = self.lock_for(id);
        let _g = lock.lock().await;
        self.row(id).await?;
        self.destroy_locked(id).await
    }

    fn log_path(&self, id: &str) -> std::path::PathBuf {
        self.cfg.data_dir.join("logs").join(format!("{id}.log"))
    }

    fn remove_log(&self, id: &str) {
        let _ = std::fs::remove_file(self.log_path(id));
    }

    /// Appends lines to a sandbox's set-up log (timestamped).
    fn append_log(&self, id: &str, text: &str) {
        use std::io::Write;
        let p = self.log_path(id);
        if let Some(d) = p.parent() {
            let _ = std::fs::create_dir_all(d);
        }
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(&p) {
            let ts = rfc3339_ms(now_ms());
            for l in text.lines() {
                let _ = writeln!(f, "{ts}\t{l}");
            }
        }
    }

    /// The set-up log: start command, ready check, package installs, startup script.
    pub async fn logs(&self, id: &str) -> Result<api::SandboxLogs, ApiError> {
        self.row(id).await?;
        let p = self.log_path(id);
        let text = self.blocking(move || std::fs::read_to_string(p).unwrap_or_default()).await?;
        Ok(api::SandboxLogs {
            logs: text
                .lines()
                .map(|l| {
                    let (ts, line) = l.split_once('\t').unwrap_or(("", l));
                    api::LogLine { timestamp: ts.to_string(), line: line.to_string() }
                })
                .collect(),
        })
    }

    /// After the sandbox starts: the template's start command and ready
    /// check, then create-time package installs and startup script. Any
    /// failure fails the create with the command's output.
    async fn after_start(&self, id: &str, tpl: &airlock_template::Template, token: Option<&str>, env: &BTreeMap<String, String>, setup: Option<&str>) -> Result<(), ApiError> {
        let tpl = Some(tpl);
        if tpl.as_ref().is_none_or(|t| t.start_cmd.is_none() && t.ready_cmd.is_none()) && setup.is_none() {
            return Ok(());
        }
        let backend = self.backend.clone();
        let id2 = id.to_string();
        let info = self.blocking(move || backend.get(&id2)).await?.map_err(|e| runtime_err(id, e))?;
        let user = tpl.as_ref().map(|t| t.default_user.clone()).unwrap_or_else(|| "user".into());
        let workdir = tpl.as_ref().and_then(|t| t.workdir.clone());
        if let Some(cmd) = tpl.as_ref().and_then(|t| t.start_cmd.clone()) {
            self.append_log(id, &format!("$ {cmd}   # start command, tag 'start'"));
            crate::agent_client::spawn(&info.socket, token, &user, &cmd, env, workdir.as_deref(), "start")
                .await
                .map_err(|e| ApiError::BadRequest(format!("the template's start command failed to start: {e}")))?;
        }
        if let Some(check) = tpl.as_ref().and_then(|t| t.ready_cmd.clone()) {
            let deadline = Instant::now() + std::time::Duration::from_secs(120);
            loop {
                let r = crate::agent_client::run(&info.socket, token, &user, &check, env, workdir.as_deref(), |_, _| {}).await;
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

    async fn destroy_locked(&self, id: &str) -> Result<(), ApiError> {
        let backend = self.backend.clone();
        let id2 = id.to_string();
        match self.blocking(move || backend.destroy(&id2)).await? {
            Ok(()) | Err(airlock_runtime::Error::NotFound(_)) => {}
            Err(e) => return Err(runtime_err(id, e)),
        }
        let store = self.store.clone();
        let id2 = id.to_string();
        self.blocking(move || store.delete_sandbox(&id2)).await??;
        self.forget(id);
        self.remove_log(id);
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

    pub async fn pause(&self, id: &str) -> Result<(), ApiError> {
        let lock = self.lock_for(id);
        let _g = lock.lock().await;
        self.pause_locked(id).await
    }

    async fn pause_locked(&self, id: &str) -> Result<(), ApiError> {
        let row = self.row(id).await?;
        if row.state == State::Paused {
            return Err(ApiError::Conflict(format!("sandbox {id} is already paused")));
        }
        let backend = self.backend.clone();
        let id2 = id.to_string();
        match self.blocking(move || backend.freeze(&id2)).await? {
            // Processes already gone (crash, reboot): it is paused in all
            // but name; resume restarts it over its files.
            Ok(()) | Err(airlock_runtime::Error::NotFound(_)) => {}
            Err(e) => return Err(runtime_err(id, e)),
        }
        let store = self.store.clone();
        let id2 = id.to_string();
        let end = row.end_at;
        self.blocking(move || store.set_state(&id2, State::Paused, end)).await??;
        tracing::info!(sandbox_id = %id, "sandbox paused");
        Ok(())
    }

    pub async fn metrics(&self, id: &str, start: Option<i64>, end: Option<i64>) -> Result<Vec<SandboxMetric>, ApiError> {
        let row = self.row(id).await?;
        let has = self.samples.lock().unwrap_or_else(|p| p.into_inner()).get(id).is_some_and(|v| !v.is_empty());
        if !has && row.state == State::Running {
            self.sample(&row).await;
        }
        let start_ms = start.map(|s| s * 1000).unwrap_or(i64::MIN);
        let end_ms = end.map(|e| e * 1000 + 999).unwrap_or(i64::MAX);
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

    async fn sample(&self, row: &SandboxRow) {
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
        v.push_back(Sample { at_ms: now, cpu_ns: u.cpu_usage_ns, cpu_pct, mem: u.memory_bytes, mem_limit: u.memory_limit_bytes, disk: u.disk_bytes, disk_limit: u.disk_limit_bytes });
        while v.len() > MAX_SAMPLES {
            v.pop_front();
        }
    }

    // ----------------------------------------------------------- lifecycle

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
            if cur.state != State::Running || cur.end_at > now_ms() {
                continue;
            }
            let r = if cur.auto_pause { self.pause_locked(&cur.id).await } else { self.destroy_locked(&cur.id).await };
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

    /// Samples usage of running sandboxes and notices ones whose PID 1
    /// died while the server was up (OOM of the agent, a crash): those are
    /// cleaned up like a kill.
    pub async fn sample_all(&self) {
        let store = self.store.clone();
        let Ok(Ok(rows)) = self.blocking(move || store.sandboxes()).await else { return };
        for row in rows.into_iter().filter(|r| r.state == State::Running) {
            let backend = self.backend.clone();
            let id = row.id.clone();
            let alive = self.blocking(move || backend.get(&id).is_ok()).await.unwrap_or(true);
            if !alive {
                let lock = self.lock_for(&row.id);
                let _g = lock.lock().await;
                tracing::warn!(sandbox_id = %row.id, "sandbox died unexpectedly; cleaning up");
                let _ = self.destroy_locked(&row.id).await;
                continue;
            }
            self.sample(&row).await;
        }
    }

    /// At start-up: sandboxes in the store whose processes are gone (the
    /// host rebooted) are marked paused so connect restarts them over their
    /// files; sandboxes the runtime has but the store does not (a crash
    /// between create and insert) are destroyed.
    pub async fn reconcile(&self) -> Result<(), ApiError> {
        let store = self.store.clone();
        let rows = self.blocking(move || store.sandboxes()).await??;
        let backend = self.backend.clone();
        let live = self.blocking(move || backend.list()).await?.map_err(|e| ApiError::Internal(e.to_string()))?;
        for row in &rows {
            let alive = live.iter().any(|s| s.id == row.id);
            if !alive && row.state == State::Running {
                tracing::warn!(sandbox_id = %row.id, "sandbox processes are gone (host restarted?); marking it paused");
                let store = self.store.clone();
                let (id, end) = (row.id.clone(), row.end_at);
                self.blocking(move || store.set_state(&id, State::Paused, end)).await??;
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
            .filter(|r| r.state == State::Running)
            .find(|r| {
                r.access_token.as_deref().is_some_and(|t| airlock_proto::envd::file_signature(path, operation, username, t, expiration) == signature)
            })
            .map(|r| r.id)
    }

    /// The agent socket of a running sandbox, for the proxy: the store row
    /// and the kernel's view in one trip to the blocking pool, since this
    /// runs for every proxied request.
    pub async fn route(&self, id: &str) -> Result<SandboxInfo, ApiError> {
        let store = self.store.clone();
        let backend = self.backend.clone();
        let id2 = id.to_string();
        let (row, info) = self.blocking(move || -> Result<_, StoreError> {
            let row = store.sandbox(&id2)?;
            let info = match &row {
                Some(r) if r.state == State::Running => Some(backend.get(&id2)),
                _ => None,
            };
            Ok((row, info))
        })
        .await??;
        let row = row.ok_or_else(|| ApiError::NotFound(format!("sandbox {id} not found")))?;
        if row.state == State::Paused {
            return Err(ApiError::Conflict(format!("sandbox {id} is paused")));
        }
        let info = info.ok_or_else(|| ApiError::NotFound(format!("sandbox {id} not found")))?.map_err(|e| runtime_err(id, e))?;
        if info.frozen {
            return Err(ApiError::Conflict(format!("sandbox {id} is paused")));
        }
        Ok(info)
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
            s.push_str(&format!("echo '# pip install'; python3 -m pip install --break-system-packages --root-user-action=ignore --no-cache-dir --progress-bar off {} || exit $?\n", check(&pk.pip, "pip")?));
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

