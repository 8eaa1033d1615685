//! The in-sandbox agent: PID 1 of every sandbox.
//!
//! It serves the envd API (`process.Process`, `filesystem.Filesystem`,
//! `/files`, `/health`) over HTTP/1.1 on a unix socket that the host reaches,
//! runs commands as sandbox users, keeps the table of processes it started
//! with bounded output buffers so clients can reattach, and reaps orphans.
//!
//! It never sets up isolation (that is `airlock-runtime`'s job, done before
//! this crate's code runs) and never loads code from the sandbox's template:
//! it is the statically-mapped `airlock` binary, reading the sandbox's
//! `/etc/passwd` itself rather than through NSS.

mod auth;
pub mod execlog;
pub mod files;
pub mod fs;
pub mod http;
pub mod interp;
pub mod paths;
pub mod process;
mod reaper;
mod router;
pub mod rpc;
pub mod safe_open;
mod spawn;
pub mod sudo;
pub mod users;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::UnixListener;

/// What the agent needs to know about its sandbox, handed over by the
/// runtime at start.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// User for requests that name none (E2B: `user`).
    pub default_user: String,
    /// Working directory for requests with an empty path or no `cwd`; the
    /// user's home when unset.
    pub default_workdir: Option<PathBuf>,
    /// Sandbox-wide environment variables given at create time.
    pub env: BTreeMap<String, String>,
    /// When set, every request except `/health` and signed `/files` URLs must
    /// carry it in `X-Access-Token`.
    pub access_token: Option<String>,
    /// `PATH` given to commands.
    pub path: String,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            default_user: "user".into(),
            default_workdir: None,
            env: BTreeMap::new(),
            access_token: None,
            path: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        }
    }
}

/// What a claim may change after start: the sandbox-wide environment and
/// the access token (a pooled sandbox is started with the server's own
/// token and empty environment, and given its user's at claim time).
#[derive(Debug, Clone, Default)]
pub struct Session {
    pub env: BTreeMap<String, String>,
    pub access_token: Option<String>,
    /// The `trafficAccessToken` derived from the access token, computed
    /// once per token.
    pub traffic_token: Option<String>,
}

impl Session {
    fn new(env: BTreeMap<String, String>, access_token: Option<String>) -> Self {
        let traffic_token = access_token.as_deref().map(airlock_proto::envd::traffic_token);
        Self { env, access_token, traffic_token }
    }
}

/// Shared state of a running agent.
pub struct Agent {
    /// As started; `env` and `access_token` here are the first session's,
    /// and `session()` is what holds now.
    pub config: AgentConfig,
    session: std::sync::RwLock<Arc<Session>>,
    pub processes: process::Table,
    pub watchers: fs::Watchers,
    pub interpreter: interp::Interpreter,
    /// Every execution and its outcome (see `execlog`).
    pub log: Arc<execlog::ExecLog>,
    /// `sudo` commands running, by pid: where the reaper sends each status.
    pub(crate) sudo_waiters: std::sync::Mutex<std::collections::HashMap<u32, tokio::sync::oneshot::Sender<i32>>>,
}

impl Agent {
    pub fn new(config: AgentConfig) -> Arc<Self> {
        let session = std::sync::RwLock::new(Arc::new(Session::new(config.env.clone(), config.access_token.clone())));
        Arc::new(Self {
            config,
            session,
            processes: process::Table::default(),
            watchers: fs::Watchers::default(),
            interpreter: interp::Interpreter::default(),
            log: Arc::default(),
            sudo_waiters: Default::default(),
        })
    }

    /// The environment and token in force (cheap: an `Arc` clone).
    pub fn session(&self) -> Arc<Session> {
        self.session.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A claim: from now on commands get `env` and requests need `token`.
    pub fn set_session(&self, env: BTreeMap<String, String>, token: Option<String>) {
        *self.session.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(Session::new(env, token));
    }

    /// Sets and removes sandbox-wide variables (a configure), keeping the
    /// token; returns the environment new commands get from now on.
    pub fn update_env(&self, set: BTreeMap<String, String>, unset: &[String]) -> BTreeMap<String, String> {
        let mut g = self.session.write().unwrap_or_else(|p| p.into_inner());
        let mut env = g.env.clone();
        for k in unset {
            env.remove(k);
        }
        env.extend(set);
        *g = Arc::new(Session::new(env.clone(), g.access_token.clone()));
        env
    }

    /// The default user's home, the working directory of new code contexts.
    pub fn default_home(&self) -> String {
        users::lookup(&self.config.default_user).map(|u| u.home.display().to_string()).unwrap_or_else(|_| "/".into())
    }
}

/// OOM score given to the agent's children: 0 when the agent runs at -999
/// (the launcher lowers it where it holds CAP_SYS_RESOURCE), else 500.
/// Either way, when the sandbox runs out of memory the killer takes a
/// process that used it and not PID 1, whose death would end the sandbox.
static CHILD_OOM_SCORE: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();

fn init_oom_policy() {
    let own: i32 = std::fs::read_to_string("/proc/self/oom_score_adj").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
    let _ = CHILD_OOM_SCORE.set(if own <= -500 { "0" } else { "500" });
}

/// Sets a child's OOM score once `spawn` has returned, that is once it has
/// exec'd. Not before: until exec the child's `/proc` files belong to host
/// root (it still has the agent's non-dumpable memory), which root inside
/// may not write, and making it dumpable would open the agent's memory to
/// ptrace. Raising a score needs no privilege. A grandchild forked in the
/// microseconds between exec and this write keeps the agent's score.
pub(crate) fn set_child_oom_score(pid: u32) {
    let v = CHILD_OOM_SCORE.get().copied().unwrap_or("500");
    if let Err(e) = std::fs::write(format!("/proc/{pid}/oom_score_adj"), v) {
        tracing::debug!(pid, error = %e, "cannot set a child's OOM score");
    }
}

/// How often streaming RPCs send keepalives when idle, unless the client
/// asks otherwise with `Keepalive-Ping-Interval`.
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(90);

/// Serves the agent on `listener` until the process ends. Must run inside a
/// tokio runtime; the agent uses a current-thread runtime to stay small.
pub async fn serve(listener: std::os::unix::net::UnixListener, config: AgentConfig) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = UnixListener::from_std(listener)?;
    init_oom_policy();
    let agent = Agent::new(config);
    reaper::start(agent.clone());
    sudo::serve(agent.clone());
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends are transient; back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let agent = agent.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let agent = agent.clone();
                async move { Ok::<_, std::convert::Infallible>(router::handle(agent, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new().keep_alive(true).serve_connection(TokioIo::new(stream), svc).with_upgrades();
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with error");
            }
        });
    }
}
