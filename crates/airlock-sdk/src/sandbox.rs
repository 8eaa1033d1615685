//! Sandboxes: creating them, finding them again, listing them page by page,
//! and their lifecycle (timeout, pause, resume, kill, metrics).

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use airlock_proto::api::{self, InstallPackages, LogLine, NewSandbox, SandboxDetail, SandboxLogs, SandboxMetric};
use futures_util::{Stream, StreamExt};
use http::{Method, StatusCode};
use serde_json::json;

use crate::client::{encode, Client, Target};
use crate::commands::{Commands, Pty};
use crate::error::{Error, Result};
use crate::files::Files;

/// The template a sandbox starts from when none is given.
pub const DEFAULT_TEMPLATE: &str = "base";

/// A handle on one sandbox. Cheap to clone; dropping it does nothing to the
/// sandbox (which lives until its timeout or [`Sandbox::kill`]).
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Handle>,
}

struct Handle {
    client: Client,
    target: Target,
    template_id: String,
    envd_version: String,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox").field("id", &self.inner.target.id).field("template_id", &self.inner.template_id).finish()
    }
}

/// Lifecycle state of a listed sandbox, as the list filter names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SandboxState {
    Running,
    Paused,
    /// Airlock's: its PID 1 died on its own (the OOM killer, a kill from
    /// the host); listed only when asked for, with the cause in
    /// `SandboxDetail::death`, for an hour.
    Dead,
}

impl SandboxState {
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxState::Running => "running",
            SandboxState::Paused => "paused",
            SandboxState::Dead => "dead",
        }
    }
}

impl std::str::FromStr for SandboxState {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "running" => Ok(SandboxState::Running),
            "paused" => Ok(SandboxState::Paused),
            "dead" => Ok(SandboxState::Dead),
            o => Err(Error::Config(format!("unknown sandbox state {o:?}: use running, paused or dead"))),
        }
    }
}

impl Sandbox {
    /// Starts describing a new sandbox; see [`SandboxBuilder`].
    pub fn builder() -> SandboxBuilder {
        SandboxBuilder::default()
    }

    /// Connects to an existing sandbox by id, resuming it if it is paused,
    /// using the configuration from the environment.
    pub async fn connect(id: &str) -> Result<Sandbox> {
        Client::from_env()?.connect(id).await
    }

    /// Lists sandboxes (running and paused by default) as a stream; see
    /// [`SandboxList`].
    pub fn list() -> SandboxList {
        SandboxList::default()
    }

    pub(crate) fn from_parts(client: Client, id: String, token: Option<String>, template_id: String, envd_version: String) -> Self {
        Self { inner: Arc::new(Handle { client, target: Target { id, token }, template_id, envd_version }) }
    }

    pub fn id(&self) -> &str {
        &self.inner.target.id
    }

    pub fn template_id(&self) -> &str {
        &self.inner.template_id
    }

    pub fn envd_version(&self) -> &str {
        &self.inner.envd_version
    }

    /// The token the sandbox's agent requires (`X-Access-Token`), if any.
    pub fn access_token(&self) -> Option<&str> {
        self.inner.target.token.as_deref()
    }

    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    pub(crate) fn target(&self) -> &Target {
        &self.inner.target
    }

    /// Running commands and background processes.
    pub fn commands(&self) -> Commands {
        Commands::new(self.clone())
    }

    /// Interactive terminals.
    pub fn pty(&self) -> Pty {
        Pty::new(self.clone())
    }

    /// The sandbox's filesystem.
    pub fn files(&self) -> Files {
        Files::new(self.clone())
    }

    /// Current details: state, deadline, resources, metadata.
    pub async fn info(&self) -> Result<SandboxDetail> {
        self.inner.client.info(self.id()).await
    }

    /// Sets the sandbox to live `timeout` from now (shorter or longer).
    pub async fn set_timeout(&self, timeout: Duration) -> Result<()> {
        self.inner.client.set_timeout(self.id(), timeout).await
    }

    /// Pauses the sandbox (processes frozen, memory kept). Returns false if
    /// it was already paused. See also [`Sandbox::pause_filesystem`].
    pub async fn pause(&self) -> Result<bool> {
        self.inner.client.pause(self.id()).await
    }

    /// Resumes a paused sandbox (a no-op for a running one) and makes it
    /// live at least `timeout` from now (the server default if `None`).
    pub async fn resume(&self, timeout: Option<Duration>) -> Result<()> {
        self.inner.client.connect_with_timeout(self.id(), timeout).await.map(|_| ())
    }

    /// Kills the sandbox and removes everything it had.
    pub async fn kill(&self) -> Result<()> {
        self.inner.client.kill(self.id()).await
    }

    /// Resource usage samples (CPU, memory, disk) the server has recorded.
    pub async fn metrics(&self) -> Result<Vec<SandboxMetric>> {
        self.inner.client.metrics(self.id(), None, None).await
    }

    /// Samples taken between `start` and `end` (whole seconds).
    pub async fn metrics_between(&self, start: SystemTime, end: SystemTime) -> Result<Vec<SandboxMetric>> {
        self.inner.client.metrics(self.id(), Some(start), Some(end)).await
    }

    /// The server's log of the sandbox's set-up: the template's start
    /// command and ready check, package installs, the startup script's
    /// output. (What commands print is theirs: see [`Commands`].)
    pub async fn logs(&self) -> Result<Vec<LogLine>> {
        self.inner.client.logs(self.id()).await
    }

    /// Whether the sandbox's agent answers (false once killed or paused).
    pub async fn is_running(&self) -> Result<bool> {
        let c = &self.inner.client;
        let req = c.envd(self.target(), Method::GET, "/health", None)?.body(crate::client::full(bytes::Bytes::new())).map_err(|e| Error::Config(e.to_string()))?;
        let resp = c.send(req).await?;
        Ok(match resp.status() {
            s if s.is_success() => true,
            StatusCode::BAD_GATEWAY => false,
            s => {
                let b = c.read_body(resp.into_body(), "/health").await?;
                return Err(crate::error::from_sandbox_status(self.id(), s.as_u16(), &b));
            }
        })
    }
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn seconds(d: Duration) -> i64 {
    // The API counts whole seconds; round up so a sub-second timeout is not 0.
    d.as_secs() as i64 + i64::from(d.subsec_nanos() > 0)
}

impl Client {
    /// Creates a sandbox from a builder's description.
    pub async fn create(&self, b: SandboxBuilder) -> Result<Sandbox> {
        let mut body = serde_json::to_value(&b.req).map_err(|e| Error::protocol(e.to_string()))?;
        // Unset options are left out rather than sent as nulls.
        if let Some(o) = body.as_object_mut() {
            o.retain(|_, v| !v.is_null());
        }
        let (_, _, s): (_, _, api::Sandbox) = self.api_json(Method::POST, "/v2/sandboxes", Some(body)).await?;
        Ok(self.handle(s))
    }

    fn handle(&self, s: api::Sandbox) -> Sandbox {
        self.handle_of(s)
    }

    /// A handle on a sandbox the server just described (create, connect, fork, import).
    pub(crate) fn handle_of(&self, s: api::Sandbox) -> Sandbox {
        Sandbox::from_parts(self.clone(), s.sandbox_id, s.envd_access_token, s.template_id, s.envd_version)
    }

    /// Connects to a sandbox, resuming it if paused; extends its timeout to
    /// at least the server's default from now (never shortens it).
    pub async fn connect(&self, id: &str) -> Result<Sandbox> {
        self.connect_with_timeout(id, None).await
    }

    pub async fn connect_with_timeout(&self, id: &str, timeout: Option<Duration>) -> Result<Sandbox> {
        let body = match timeout {
            Some(t) => json!({ "timeout": seconds(t) }),
            None => json!({}),
        };
        let (_, _, s): (_, _, api::Sandbox) = self.api_json(Method::POST, &format!("/v2/sandboxes/{}/connect", encode(id)), Some(body)).await?;
        Ok(self.handle(s))
    }

    /// A handle on a sandbox from its details, without changing anything on
    /// the server (unlike [`Client::connect`], which also extends the
    /// timeout and resumes a paused sandbox).
    pub async fn get(&self, id: &str) -> Result<Sandbox> {
        let d = self.info(id).await?;
        Ok(Sandbox::from_parts(self.clone(), d.sandbox_id, d.envd_access_token, d.template_id, d.envd_version))
    }

    /// A handle on the sandbox `detail` describes (from [`Client::info`]
    /// or a listing), without asking the server again.
    pub fn from_detail(&self, detail: &SandboxDetail) -> Sandbox {
        Sandbox::from_parts(self.clone(), detail.sandbox_id.clone(), detail.envd_access_token.clone(), detail.template_id.clone(), detail.envd_version.clone())
    }

    pub async fn info(&self, id: &str) -> Result<SandboxDetail> {
        Ok(self.api_json(Method::GET, &format!("/sandboxes/{}", encode(id)), None).await?.2)
    }

    pub async fn kill(&self, id: &str) -> Result<()> {
        self.api(Method::DELETE, &format!("/sandboxes/{}", encode(id)), None).await.map(|_| ())
    }

    pub async fn set_timeout(&self, id: &str, timeout: Duration) -> Result<()> {
        self.api(Method::POST, &format!("/sandboxes/{}/timeout", encode(id)), Some(json!({ "timeout": seconds(timeout) }))).await.map(|_| ())
    }

    /// Pauses a sandbox; false if it was already paused.
    pub async fn pause(&self, id: &str) -> Result<bool> {
        match self.api(Method::POST, &format!("/sandboxes/{}/pause", encode(id)), Some(json!({}))).await {
            Ok(_) => Ok(true),
            Err(Error::Http { status: 409, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub async fn metrics(&self, id: &str, start: Option<SystemTime>, end: Option<SystemTime>) -> Result<Vec<SandboxMetric>> {
        let mut q = Vec::new();
        if let Some(s) = start {
            q.push(format!("start={}", unix(s)));
        }
        if let Some(e) = end {
            q.push(format!("end={}", unix(e)));
        }
        let qs = if q.is_empty() { String::new() } else { format!("?{}", q.join("&")) };
        Ok(self.api_json(Method::GET, &format!("/sandboxes/{}/metrics{qs}", encode(id)), None).await?.2)
    }

    /// The sandbox's set-up log; see [`Sandbox::logs`].
    pub async fn logs(&self, id: &str) -> Result<Vec<LogLine>> {
        let (_, _, l): (_, _, SandboxLogs) = self.api_json(Method::GET, &format!("/sandboxes/{}/logs", encode(id)), None).await?;
        Ok(l.logs)
    }

    /// Lists sandboxes through this client; see [`SandboxList`].
    pub fn list(&self) -> SandboxList {
        SandboxList { client: Some(self.clone()), ..Default::default() }
    }
}

/// Describes a sandbox to create. Everything is optional: the default is
/// the `base` template with the server's default timeout and resources.
#[derive(Debug, Clone)]
pub struct SandboxBuilder {
    client: Option<Client>,
    config: Option<crate::Config>,
    req: NewSandbox,
}

impl Default for SandboxBuilder {
    fn default() -> Self {
        Self { client: None, config: None, req: NewSandbox { template_id: DEFAULT_TEMPLATE.to_string(), ..Default::default() } }
    }
}

impl SandboxBuilder {
    pub fn template(mut self, t: impl Into<String>) -> Self {
        self.req.template_id = t.into();
        self
    }

    /// How long the sandbox lives before it is killed (or paused with
    /// [`SandboxBuilder::auto_pause`]).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.req.timeout = Some(seconds(t));
        self
    }

    pub fn metadata(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.req.metadata.get_or_insert_with(BTreeMap::new).insert(k.into(), v.into());
        self
    }

    /// An environment variable every command in the sandbox gets.
    pub fn env(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.req.env_vars.get_or_insert_with(BTreeMap::new).insert(k.into(), v.into());
        self
    }

    pub fn envs<K: Into<String>, V: Into<String>>(mut self, vars: impl IntoIterator<Item = (K, V)>) -> Self {
        let m = self.req.env_vars.get_or_insert_with(BTreeMap::new);
        for (k, v) in vars {
            m.insert(k.into(), v.into());
        }
        self
    }

    /// CPU cores (fractions allowed). An Airlock extension of the E2B API.
    pub fn cpu_count(mut self, cpus: f64) -> Self {
        self.req.cpu_count = Some(cpus);
        self
    }

    /// Disk limit of the writable layer in MiB.
    pub fn disk_mb(mut self, mb: u64) -> Self {
        self.req.disk_mb = Some(mb);
        self
    }

    /// Resource alert thresholds (percent of each limit): crossing one
    /// records a `resource_alert` event.
    pub fn alerts(mut self, a: airlock_proto::api::AlertThresholds) -> Self {
        self.req.alerts = Some(a);
        self
    }

    /// Memory limit in MiB. An Airlock extension of the E2B API.
    pub fn memory_mb(mut self, mb: u64) -> Self {
        self.req.memory_mb = Some(mb);
        self
    }

    /// Whether the sandbox may reach the internet (default: yes).
    pub fn allow_internet_access(mut self, allow: bool) -> Self {
        self.req.allow_internet_access = Some(allow);
        self
    }

    /// The egress policy and port traffic settings (E2B's `network`
    /// option; see [`crate::network`]).
    pub fn network(mut self, n: &airlock_proto::api::NetworkOptions) -> Self {
        if let Ok(v) = serde_json::to_value(n) {
            self.req.other.insert("network".into(), v);
        }
        self
    }

    /// Joins a sandbox network at create, reached there as `name`
    /// (default: the sandbox's id); may be given more than once.
    pub fn join_network(mut self, network: impl Into<String>, name: Option<&str>) -> Self {
        let e = match name {
            Some(n) => serde_json::json!({"name": network.into(), "alias": n}),
            None => serde_json::Value::String(network.into()),
        };
        match self.req.other.get_mut("networks").and_then(|v| v.as_array_mut()) {
            Some(list) => list.push(e),
            None => {
                self.req.other.insert("networks".into(), serde_json::Value::Array(vec![e]));
            }
        }
        self
    }

    /// Pause instead of kill when the timeout expires.
    pub fn auto_pause(mut self, on: bool) -> Self {
        self.req.auto_pause = Some(on);
        self
    }

    /// With [`SandboxBuilder::auto_pause`]: whether the timeout's pause keeps
    /// memory (a freeze, the default) or only the files (processes stop,
    /// memory is released; resuming boots afresh).
    pub fn auto_pause_memory(mut self, keep: bool) -> Self {
        self.req.auto_pause_memory = Some(keep);
        self
    }

    /// A shell script run as root in the sandbox before create returns; a
    /// failing script fails the create. An Airlock extension.
    pub fn startup_script(mut self, script: impl Into<String>) -> Self {
        self.req.startup_script = Some(script.into());
        self
    }

    /// Packages installed (pip, npm, apt) before create returns. An
    /// Airlock extension.
    pub fn install_packages(mut self, packages: InstallPackages) -> Self {
        self.req.install_packages = Some(packages);
        self
    }

    /// Mounts a volume (by name or id) at `path` inside the sandbox (E2B's
    /// `volumeMounts`); may be given more than once.
    pub fn volume(mut self, name: impl Into<String>, path: impl Into<String>) -> Self {
        self.req.volume_mounts.get_or_insert_with(Vec::new).push(airlock_proto::volume::VolumeMount { name: name.into(), path: path.into() });
        self
    }

    /// Use this client instead of one configured from the environment.
    pub fn client(mut self, c: &Client) -> Self {
        self.client = Some(c.clone());
        self
    }

    /// Use this configuration instead of the environment.
    pub fn config(mut self, c: crate::Config) -> Self {
        self.config = Some(c);
        self
    }

    /// The request body this builder sends.
    pub fn request(&self) -> &NewSandbox {
        &self.req
    }

    /// Creates the sandbox; it is ready for commands when this returns.
    pub async fn create(self) -> Result<Sandbox> {
        let client = match (&self.client, &self.config) {
            (Some(c), _) => c.clone(),
            (None, Some(cfg)) => Client::new(cfg.clone())?,
            (None, None) => Client::from_env()?,
        };
        client.create(self).await
    }
}

/// One page of a listing.
#[derive(Debug, Clone)]
pub struct SandboxPage {
    pub sandboxes: Vec<SandboxDetail>,
    /// Pass to [`SandboxList::page`] for the next page; `None` on the last.
    pub next_token: Option<String>,
}

/// A sandbox listing: filters, page size, and the pages or items as a
/// [`Stream`]. Without a state filter both running and paused sandboxes
/// are listed.
#[derive(Debug, Clone, Default)]
pub struct SandboxList {
    client: Option<Client>,
    metadata: BTreeMap<String, String>,
    states: Vec<SandboxState>,
    template: Option<String>,
    limit: Option<u32>,
}

pub type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T>> + Send>>;

impl SandboxList {
    /// Only sandboxes whose metadata has this pair (all pairs must match).
    pub fn metadata(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.metadata.insert(k.into(), v.into());
        self
    }

    /// Only sandboxes in this state (repeat for several).
    pub fn state(mut self, s: SandboxState) -> Self {
        if !self.states.contains(&s) {
            self.states.push(s);
        }
        self
    }

    pub fn template(mut self, t: impl Into<String>) -> Self {
        self.template = Some(t.into());
        self
    }

    /// Sandboxes per page (1 to 100; the server default is 100).
    pub fn limit(mut self, n: u32) -> Self {
        self.limit = Some(n);
        self
    }

    pub fn client(mut self, c: &Client) -> Self {
        self.client = Some(c.clone());
        self
    }

    fn query(&self, token: Option<&str>) -> String {
        let mut q = Vec::new();
        if !self.metadata.is_empty() {
            // One value holding `k=v&k2=v2`, each part encoded, then the whole encoded again.
            let inner: Vec<String> = self.metadata.iter().map(|(k, v)| format!("{}={}", encode(k), encode(v))).collect();
            q.push(format!("metadata={}", encode(&inner.join("&"))));
        }
        if !self.states.is_empty() {
            let s: Vec<&str> = self.states.iter().map(|s| s.as_str()).collect();
            q.push(format!("state={}", s.join(",")));
        }
        if let Some(t) = &self.template {
            q.push(format!("template={}", encode(t)));
        }
        if let Some(n) = self.limit {
            q.push(format!("limit={n}"));
        }
        if let Some(t) = token {
            q.push(format!("nextToken={}", encode(t)));
        }
        if q.is_empty() {
            String::new()
        } else {
            format!("?{}", q.join("&"))
        }
    }

    fn client_or_env(&self) -> Result<Client> {
        match &self.client {
            Some(c) => Ok(c.clone()),
            None => Client::from_env(),
        }
    }

    /// One page, starting after `token` (`None` for the first).
    pub async fn page(&self, token: Option<&str>) -> Result<SandboxPage> {
        let client = self.client_or_env()?;
        let (_, headers, sandboxes): (_, _, Vec<SandboxDetail>) = client.api_json(Method::GET, &format!("/v2/sandboxes{}", self.query(token)), None).await?;
        let next_token = headers.get("x-next-token").and_then(|v| v.to_str().ok()).map(str::to_string).filter(|t| !t.is_empty());
        Ok(SandboxPage { sandboxes, next_token })
    }

    /// Every page, fetched as the stream is polled.
    pub fn pages(self) -> BoxStream<SandboxPage> {
        enum St {
            Start,
            Next(String),
            Done,
        }
        let s = futures_util::stream::unfold((self, St::Start), |(list, st)| async move {
            let token = match &st {
                St::Start => None,
                St::Next(t) => Some(t.clone()),
                St::Done => return None,
            };
            match list.page(token.as_deref()).await {
                Ok(p) => {
                    let next = match &p.next_token {
                        Some(t) => St::Next(t.clone()),
                        None => St::Done,
                    };
                    Some((Ok(p), (list, next)))
                }
                Err(e) => Some((Err(e), (list, St::Done))),
            }
        });
        Box::pin(s)
    }

    /// Every sandbox, page after page.
    pub fn items(self) -> BoxStream<SandboxDetail> {
        Box::pin(self.pages().flat_map(|p| {
            let items: Vec<Result<SandboxDetail>> = match p {
                Ok(p) => p.sandboxes.into_iter().map(Ok).collect(),
                Err(e) => vec![Err(e)],
            };
            futures_util::stream::iter(items)
        }))
    }

    /// Every sandbox, collected.
    pub async fn all(self) -> Result<Vec<SandboxDetail>> {
        let mut out = Vec::new();
        let mut items = self.items();
        while let Some(s) = items.next().await {
            out.push(s?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_query_matches_what_the_server_parses() {
        let l = Sandbox::list().metadata("user", "a b").metadata("k", "v=1").state(SandboxState::Running).state(SandboxState::Paused).limit(2);
        assert_eq!(l.query(Some("17")), "?metadata=k%3Dv%253D1%26user%3Da%2520b&state=running,paused&limit=2&nextToken=17");
        assert_eq!(Sandbox::list().query(None), "");
    }

    #[test]
    fn builder_fills_the_e2b_body() {
        let b = Sandbox::builder()
            .template("python")
            .timeout(Duration::from_millis(1500))
            .metadata("a", "b")
            .env("X", "1")
            .cpu_count(0.5)
            .memory_mb(256)
            .allow_internet_access(false)
            .auto_pause(true);
        let v = serde_json::to_value(b.request()).expect("json");
        assert_eq!(v["templateID"], "python");
        assert_eq!(v["timeout"], 2, "rounded up to whole seconds");
        assert_eq!(v["envVars"]["X"], "1");
        assert_eq!(v["cpuCount"], 0.5);
        assert_eq!(v["memoryMB"], 256);
        assert_eq!(v["allow_internet_access"], false);
        assert_eq!(v["autoPause"], true);
    }
}
