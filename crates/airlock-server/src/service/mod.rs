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
//! so a pause racing a kill or a deadline sees a consistent state; each
//! writes its transitional state (`store::State`) before it starts, so a
//! crash in the middle is settled at the next start (`reconcile`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;

use airlock_proto::api::{self, NewSandbox, SandboxDetail, SandboxMetric};
use airlock_proto::envd::ENVD_VERSION;
use airlock_runtime::{Backend, Resources, SandboxInfo, SandboxSpec};

use crate::config::Config;
use crate::store::{Refusal, SandboxRow, State, Store, StoreError};

mod batch;
pub(crate) mod create;
mod disk;
pub mod e2b_builds;
mod egress;
mod execlog;
mod lifecycle;
mod logs;
mod metrics;
mod networks;
mod pools;
mod secrets;
mod state;
mod templates;
mod views;
mod volumes;
mod webhooks;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

pub use batch::{BatchPlan, MAX_BATCH_BYTES};
pub use create::{setup_script, NO_FIREWALL_HINT};
pub use execlog::LogQuery;
pub use metrics::metric;
pub use state::import_limit_bytes;
pub use volumes::{entry_stat, file_info};
pub use webhooks::EventListing;

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
    /// More than fits (a full volume, an upload past its limit): 413.
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Unavailable(String),
    /// The host's disk is full (507).
    #[error("{0}")]
    InsufficientStorage(String),
    /// Details are logged, not sent: the client sees a generic message.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// The kind, as metrics label it (`airlock_api_errors_total{kind}`).
    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::TooManyRequests(_) => "too_many_requests",
            ApiError::TooLarge(_) => "too_large",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::InsufficientStorage(_) => "insufficient_storage",
            ApiError::Internal(_) => "internal",
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            ApiError::BadRequest(_) => 400,
            ApiError::Unauthorized(_) => 401,
            ApiError::NotFound(_) => 404,
            ApiError::Conflict(_) => 409,
            ApiError::TooManyRequests(_) => 429,
            ApiError::TooLarge(_) => 413,
            ApiError::Unavailable(_) => 503,
            ApiError::InsufficientStorage(_) => 507,
            ApiError::Internal(_) => 500,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        if e.is_disk_full() {
            return ApiError::InsufficientStorage("not enough disk space: the server's data disk is full and this change could not be recorded".into());
        }
        ApiError::Internal(format!("store: {e:?}"))
    }
}

fn runtime_err(id: &str, e: airlock_runtime::Error) -> ApiError {
    match e {
        airlock_runtime::Error::NotFound(_) => ApiError::NotFound(format!("sandbox {id} not found")),
        airlock_runtime::Error::InvalidSpec(m) => ApiError::BadRequest(m),
        airlock_runtime::Error::AlreadyExists(_) => ApiError::Conflict(format!("sandbox {id} already exists")),
        airlock_runtime::Error::Io { what, source } if matches!(source.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded) => {
            ApiError::InsufficientStorage(format!("sandbox {id}: {what}: the host's disk is full"))
        }
        other => ApiError::Internal(format!("sandbox {id}: {}", airlock_runtime::init::chain(&other))),
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

pub fn rfc3339_ms(ms: i64) -> String {
    airlock_proto::time::rfc3339_parts(ms.div_euclid(1000), (ms.rem_euclid(1000) * 1_000_000) as u32)
}

impl From<crate::ids::RandomError> for ApiError {
    fn from(e: crate::ids::RandomError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

use crate::samples::Sample;

/// A template as the API shows it.
pub use airlock_proto::api::TemplateInfo;

/// The API's view of a stored template.
pub fn template_info(t: &airlock_template::Template) -> TemplateInfo {
    TemplateInfo {
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
    /// Started at or after / before (unix ms).
    pub started_after: Option<i64>,
    pub started_before: Option<i64>,
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
    /// Creates run at most `max_concurrent_creates` at once; the rest wait
    /// here in arrival order (tokio's semaphore is fair), a bounded number
    /// of them (`create_queued`), instead of being refused.
    create_gate: tokio::sync::Semaphore,
    create_queued: std::sync::atomic::AtomicUsize,
    /// One build at a time per template name.
    build_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Each running sandbox's newest sample (the store has the history):
    /// the next one's CPU share is measured from it.
    samples: Mutex<HashMap<String, Sample>>,
    /// Which of a sandbox's alert thresholds (cpu, memory, disk) it is
    /// above: an alert fires on the way up only.
    alerts_on: Mutex<HashMap<String, [bool; 3]>>,
    /// Each running sandbox's OOM kill count at the last sample (a rise
    /// is an `oom` event).
    ooms: Mutex<HashMap<String, u64>>,
    /// Warm pools' counters; the pools are in the store.
    pools: Mutex<HashMap<String, pools::PoolStats>>,
    /// Wakes the pool filler (a claim, a pool changed).
    pool_wake: tokio::sync::Notify,
    /// When this server started (unix ms).
    started_ms: i64,
    /// E2B template builds requested or running, by build id.
    e2b_builds: Arc<Mutex<HashMap<String, e2b_builds::Build>>>,
    /// Layer directories being made or about to be used (a snapshot
    /// before its template is saved, a fork's layer before its sandboxes
    /// exist): layer garbage collection leaves them alone.
    leases: Mutex<std::collections::HashSet<std::path::PathBuf>>,
    /// Set when layers may have become unused; the lifecycle loop collects.
    gc_wanted: std::sync::atomic::AtomicBool,
    /// The data disk's reserve and create floor.
    disk: disk::DiskGuard,
    /// Live event subscribers (the store keeps the history).
    events: tokio::sync::broadcast::Sender<crate::events::Event>,
    /// Tells the webhook deliveries that webhooks changed.
    webhook_hub: crate::webhooks::Hub,
    /// Egress policy enforcement, when the host can do it (set once at
    /// start-up, before any sandbox is adopted or created).
    egress: std::sync::OnceLock<Arc<crate::egress::Egress>>,
    /// Sealed secrets and their resolution for the egress proxy.
    secrets: Arc<crate::secrets::Secrets>,
    /// The egress proxy's interception CA, opened (or made) on first use.
    egress_tls: Mutex<Option<Arc<crate::egress_tls::EgressTls>>>,
    /// The cluster this node is in (`--cluster`), set once at start-up.
    cluster: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
}

impl Service {
    pub fn new(cfg: Config, store: Arc<Store>, backend: Arc<dyn Backend>) -> Arc<Self> {
        let builder =
            crate::builder::Builder { backend: backend.clone(), store: airlock_template::Store::new(cfg.data_dir.join("templates")), io_bps: cfg.io_bps, io_iops: cfg.io_iops };
        let disk = disk::DiskGuard::new(&cfg.data_dir);
        let (events, _) = tokio::sync::broadcast::channel(1024);
        let secrets = Arc::new(crate::secrets::Secrets::new(store.clone(), &cfg.data_dir));
        let create_gate = tokio::sync::Semaphore::new(cfg.max_concurrent_creates.max(1));
        Arc::new(Self {
            create_gate,
            create_queued: std::sync::atomic::AtomicUsize::new(0),
            cfg,
            store,
            backend,
            builder,
            build_locks: Mutex::new(HashMap::new()),
            locks: Mutex::new(HashMap::new()),
            samples: Mutex::new(HashMap::new()),
            alerts_on: Mutex::new(HashMap::new()),
            ooms: Mutex::new(HashMap::new()),
            pools: Mutex::new(HashMap::new()),
            pool_wake: tokio::sync::Notify::new(),
            e2b_builds: Default::default(),
            started_ms: now_ms(),
            leases: Mutex::new(Default::default()),
            gc_wanted: std::sync::atomic::AtomicBool::new(false),
            disk,
            events,
            webhook_hub: Default::default(),
            egress: std::sync::OnceLock::new(),
            secrets,
            egress_tls: Mutex::new(None),
            cluster: std::sync::OnceLock::new(),
        })
    }

    /// Records an event (store, then live subscribers). Never fails the
    /// operation it describes: an event that cannot be written is logged.
    pub(crate) async fn emit(&self, row: &SandboxRow, kind: &str, data: serde_json::Value) {
        let store = self.store.clone();
        let (id, template, meta, k) = (row.id.clone(), row.template.clone(), row.metadata.clone(), kind.to_string());
        match self.blocking(move || store.append_event(now_ms(), (&id, &template), &k, &meta, &data)).await {
            Ok(r) => self.publish(&row.id, kind, r),
            Err(e) => {
                crate::telemetry::TELEMETRY.events_failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(sandbox_id = %row.id, kind, error = %e, "recording an event failed");
            }
        }
    }

    /// Sends a stored event to live subscribers (or counts it failed).
    pub(crate) fn publish(&self, sandbox_id: &str, kind: &str, r: Result<crate::events::Event, StoreError>) {
        match r {
            Ok(e) => {
                crate::telemetry::TELEMETRY.events.fetch_add(1, Ordering::Relaxed);
                let _ = self.events.send(e);
            }
            Err(e) => {
                crate::telemetry::TELEMETRY.events_failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(sandbox_id, kind, error = %e, "recording an event failed");
            }
        }
    }

    /// A live feed of events from now on (see `events`).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<crate::events::Event> {
        self.events.subscribe()
    }

    pub fn webhook_hub(&self) -> &crate::webhooks::Hub {
        &self.webhook_hub
    }

    /// Stored events after `after` (see `events`).
    pub async fn events_after(&self, after: i64, sandbox: Option<String>, limit: usize) -> Result<Vec<crate::events::Event>, ApiError> {
        let store = self.store.clone();
        Ok(self.blocking(move || store.events_after(after, sandbox.as_deref(), limit)).await??)
    }

    /// Keeps the data disk's reserve (see `disk`).
    pub async fn watch_disk(self: &Arc<Self>) {
        let svc = self.clone();
        let _ = self.blocking(move || svc.disk.tick()).await;
    }

    /// Runs a layer collection if one was asked for since the last.
    pub async fn collect_layers_if_wanted(&self) {
        if self.gc_wanted.swap(false, Ordering::SeqCst) {
            if let Err(e) = self.collect_layers(true).await {
                tracing::warn!(error = %e, "collecting unused layers failed");
            }
        }
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
        self.alerts_on.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
        self.ooms.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }

    /// The row of a sandbox the API can see (not one being created or killed).
    async fn row(&self, id: &str) -> Result<SandboxRow, ApiError> {
        let store = self.store.clone();
        let id2 = id.to_string();
        self.blocking(move || store.sandbox(&id2)).await??.filter(|r| r.state.visible()).ok_or_else(|| ApiError::NotFound(format!("sandbox {id} not found")))
    }

    /// Writes a state (a transition under the sandbox's lock), keeping the deadline.
    async fn set_state(&self, id: &str, state: State, end_at: i64) -> Result<(), ApiError> {
        let store = self.store.clone();
        let id2 = id.to_string();
        self.blocking(move || store.set_state(&id2, state, end_at)).await??;
        Ok(())
    }

    fn check_timeout(&self, t: i64) -> Result<i64, ApiError> {
        if t < 0 || t > self.cfg.max_timeout_s {
            return Err(ApiError::BadRequest(format!("timeout must be between 0 and {} seconds, got {t}", self.cfg.max_timeout_s)));
        }
        Ok(t)
    }

    /// The server's own health and what it depends on: the store answers,
    /// the data disk has room for creates, and what the host offers
    /// sandboxes (firewall, disk limits). `ok` is false when the store
    /// fails or creates are refused for disk space.
    pub async fn server_health(&self) -> serde_json::Value {
        let store = self.store.clone();
        let t0 = Instant::now();
        let store_ok = self.blocking(move || store.count()).await.map(|r| r.map_err(|e| e.to_string()));
        let store_ms = t0.elapsed().as_secs_f64() * 1e3;
        let (free, total, floor) = self.disk.status();
        let disk_ok = free >= floor;
        let (store_ok, store_detail, sandboxes) = match store_ok {
            Ok(Ok(n)) => (true, format!("answered in {store_ms:.1} ms"), n),
            Ok(Err(e)) => (false, e, 0),
            Err(e) => (false, e.to_string(), 0),
        };
        let ok = store_ok && disk_ok;
        serde_json::json!({
            "status": if ok { "ok" } else { "degraded" },
            "version": env!("CARGO_PKG_VERSION"),
            "sandboxes": sandboxes,
            "checks": {
                "store": {"ok": store_ok, "detail": store_detail},
                "disk": {"ok": disk_ok, "freeBytes": free, "totalBytes": total, "minFreeBytes": floor},
                "network": {"ok": self.backend.network_available(), "detail": if self.backend.network_available() { "sandboxes can be given internet access".to_string() } else { format!("loopback only: {NO_FIREWALL_HINT}") }},
                "diskLimits": {"ok": self.backend.disk_limits_available()},
                "cluster": self.cluster().map(|c| c.health()).unwrap_or_else(|| serde_json::json!({"ok": true, "detail": "a single host (no --cluster)"})),
            },
        })
    }

    pub async fn key_valid(&self, key: &str) -> Result<bool, ApiError> {
        if self.cfg.api_keys.iter().any(|k| k == key) {
            return Ok(true);
        }
        let store = self.store.clone();
        let k = key.to_string();
        if self.blocking(move || store.key_valid(&k)).await?? {
            return Ok(true);
        }
        // A key made on another node of the cluster.
        match self.cluster() {
            Some(c) => c.key_valid(&crate::store::hash_key(key)).await.map_err(|e| crate::cluster::unavailable("checking the API key", &e)),
            None => Ok(false),
        }
    }

    /// The cluster this node is in, if any.
    pub fn cluster(&self) -> Option<&Arc<crate::cluster::Cluster>> {
        self.cluster.get()
    }

    /// Joins this service to a cluster (once, at start-up).
    pub fn set_cluster(&self, c: Arc<crate::cluster::Cluster>) {
        let _ = self.cluster.set(c);
    }
}
