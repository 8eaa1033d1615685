//! Templates built from a Dockerfile-like recipe.
//!
//! Instructions: `FROM` (`base` or another template), `RUN`, `ENV`,
//! `WORKDIR`, `USER`, `COPY` (from a build context directory), `ARG`, and
//! Airlock's `START` (a command started in every new sandbox) and `READY` (a
//! command polled until it succeeds before the sandbox counts as created).
//! Each `RUN` executes in a real sandbox with network access; its changes
//! become a layer, cached under a key hashed from the parent's key and the
//! step's inputs, so an unchanged recipe rebuilds from cache in well under
//! a second and a changed step rebuilds only from that step on. A failed
//! step reports its output and exit code; the template is written only
//! when every step succeeded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use airlock_runtime::{Backend, Resources, SandboxSpec};
use airlock_template::layer::{self, cache_key as key};
use airlock_template::recipe::{self, describe, Instr, RecipeError};
use airlock_template::{Store, Template};
use tokio::sync::mpsc;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("recipe line {line}: {message}")]
    Parse { line: usize, message: String },
    #[error("step {step} ({text}) failed with exit code {exit_code}:\n{output}")]
    StepFailed { step: usize, text: String, exit_code: i32, output: String },
    #[error("{0}")]
    Invalid(String),
    #[error("template '{0}' not found")]
    NotFound(String),
    #[error("{0}")]
    Internal(String),
}

impl From<RecipeError> for BuildError {
    fn from(e: RecipeError) -> Self {
        BuildError::Parse { line: e.line, message: e.message }
    }
}

/// Progress of a build, for logs and progress bars (the API's NDJSON lines).
pub use airlock_proto::api::BuildEvent;

pub struct Builder {
    pub backend: Arc<dyn Backend>,
    pub store: Store,
    /// Disk limits of build sandboxes, as for any sandbox.
    pub io_bps: u64,
    pub io_iops: u64,
}

struct BuildState {
    root_layers: Vec<PathBuf>,
    usr_layers: Vec<PathBuf>,
    env: BTreeMap<String, String>,
    user: String,
    default_user: String,
    workdir: Option<String>,
    start: Option<String>,
    ready: Option<String>,
    key: String,
    has_usr: bool,
    /// `ARG` values: in the environment of later `RUN` steps, not the template's.
    args: BTreeMap<String, String>,
}

impl Builder {
    /// Builds `name` from `recipe`. `context` is where `COPY` sources are
    /// read from. Progress goes to `events`; the result is saved on success.
    pub async fn build(
        &self,
        name: &str,
        recipe: &str,
        build_args: &BTreeMap<String, String>,
        context: Option<&Path>,
        events: &mpsc::Sender<BuildEvent>,
    ) -> Result<Template, BuildError> {
        let t0 = std::time::Instant::now();
        if !Store::valid_name(name) || name == "base" {
            return Err(BuildError::Invalid(format!("invalid template name {name:?}")));
        }
        let instrs = recipe::parse(recipe, build_args)?;
        self.build_instrs(name, instrs, context, events, t0, true).await
    }

    /// Builds parsed instructions (a recipe's, or E2B's template build
    /// steps, which carry commands no recipe line could: newlines, `$`).
    /// With `save`, the result becomes the template `name`; without, the
    /// caller records it (a tagged build that may not be the default).
    pub async fn build_instrs(
        &self,
        name: &str,
        instrs: Vec<Instr>,
        context: Option<&Path>,
        events: &mpsc::Sender<BuildEvent>,
        t0: std::time::Instant,
        save: bool,
    ) -> Result<Template, BuildError> {
        if !Store::valid_name(name) || name == "base" {
            return Err(BuildError::Invalid(format!("invalid template name {name:?}")));
        }
        let total = instrs.len();
        let mut st: Option<BuildState> = None;
        let mut pre_from_args: BTreeMap<String, String> = BTreeMap::new();
        for (i, instr) in instrs.iter().enumerate() {
            let step = i + 1;
            let text = describe(instr);
            if let Instr::From(parent) = instr {
                let src = airlock_template::source::classify(parent);
                if !matches!(src, airlock_template::source::Source::Template(_)) {
                    let k = airlock_template::source::key(&src).map_err(|e| BuildError::Invalid(format!("step {step}: {}", airlock_runtime::init::chain(&e))))?;
                    let layer = self.store.layers_dir().join(&k);
                    let cached = layer.exists();
                    let _ = events.send(BuildEvent::Step { step, total, text, cached }).await;
                    if !cached {
                        let ev = events.clone();
                        let (src2, layer2) = (src.clone(), layer.clone());
                        tokio::task::spawn_blocking(move || {
                            airlock_template::source::materialise(&src2, &layer2, &mut |m| {
                                let _ = ev.try_send(BuildEvent::Log { text: format!("{m}\n"), stderr: false });
                            })
                        })
                        .await
                        .map_err(|e| BuildError::Internal(e.to_string()))?
                        .map_err(|e| BuildError::Invalid(format!("step {step} (FROM {parent}): {}", airlock_runtime::init::chain(&e))))?;
                    }
                    st = Some(BuildState {
                        root_layers: vec![layer.join("root")],
                        usr_layers: Vec::new(),
                        env: BTreeMap::new(),
                        user: "root".into(),
                        default_user: "user".into(),
                        workdir: None,
                        start: None,
                        ready: None,
                        key: k,
                        has_usr: false,
                        args: pre_from_args.clone(),
                    });
                    continue;
                }
                let p = self.store.get(parent).map_err(|_| BuildError::NotFound(parent.clone()))?;
                let _ = events.send(BuildEvent::Step { step, total, text, cached: true }).await;
                st = Some(BuildState {
                    root_layers: p.root_layers.clone(),
                    usr_layers: p.usr_layers.clone(),
                    env: p.env.clone(),
                    user: "root".into(),
                    default_user: p.default_user.clone(),
                    workdir: p.workdir.clone(),
                    start: p.start_cmd.clone(),
                    ready: p.ready_cmd.clone(),
                    key: if p.digest.is_empty() { key(&["template", &p.name]) } else { p.digest.clone() },
                    has_usr: !p.usr_layers.is_empty(),
                    args: pre_from_args.clone(),
                });
                continue;
            }
            let Some(s) = st.as_mut() else {
                if let Instr::Arg(k, v) = instr {
                    if let Some(v) = v {
                        pre_from_args.insert(k.clone(), v.clone());
                    }
                    let _ = events.send(BuildEvent::Step { step, total, text, cached: true }).await;
                    continue;
                }
                return Err(BuildError::Invalid("a recipe starts with FROM".into()));
            };
            match instr {
                Instr::From(_) => {}
                Instr::Arg(k, v) => {
                    if let Some(v) = v {
                        s.args.insert(k.clone(), v.clone());
                    }
                    let _ = events.send(BuildEvent::Step { step, total, text, cached: true }).await;
                }
                Instr::Env(pairs) => {
                    for (k, v) in pairs {
                        s.env.insert(k.clone(), v.clone());
                    }
                    let _ = events.send(BuildEvent::Step { step, total, text, cached: true }).await;
                }
                Instr::User(u) => {
                    s.user = u.clone();
                    s.default_user = u.clone();
                    let _ = events.send(BuildEvent::Step { step, total, text, cached: true }).await;
                }
                Instr::Start(c) => {
                    s.start = Some(c.clone());
                    let _ = events.send(BuildEvent::Step { step, total, text, cached: true }).await;
                }
                Instr::Ready(c) => {
                    s.ready = Some(c.clone());
                    let _ = events.send(BuildEvent::Step { step, total, text, cached: true }).await;
                }
                Instr::Workdir(w) => {
                    // Like Docker, WORKDIR creates the directory (owned by the current user).
                    let script = format!("mkdir -p '{0}' && chown \"$AIRLOCK_BUILD_USER\" '{0}' 2>/dev/null; true", w.replace('\'', ""));
                    let k = key(&[&s.key, "WORKDIR", w, &s.user]);
                    self.run_step(s, step, total, &text, &k, &script, "root", events).await?;
                    s.workdir = Some(w.clone());
                }
                Instr::Run(cmd) => {
                    let env = serde_json::to_string(&s.env).unwrap_or_default();
                    let args = serde_json::to_string(&s.args).unwrap_or_default();
                    let k = key(&[&s.key, "RUN", cmd, &env, &args, &s.user, s.workdir.as_deref().unwrap_or("")]);
                    let user = s.user.clone();
                    self.run_step(s, step, total, &text, &k, cmd, &user, events).await?;
                }
                Instr::Copy { chown, srcs, dest } => {
                    let ctx = context.ok_or_else(|| BuildError::Invalid(format!("step {step}: COPY needs a build context directory")))?;
                    let digest = layer::context_digest(ctx, srcs).map_err(|e| BuildError::Invalid(format!("step {step}: {}", airlock_runtime::init::chain(&e))))?;
                    let k = key(&[&s.key, "COPY", &digest, dest, chown.as_deref().unwrap_or(""), s.workdir.as_deref().unwrap_or("")]);
                    let layer = self.store.layers_dir().join(&k);
                    let cached = layer.exists();
                    let _ = events.send(BuildEvent::Step { step, total, text: text.clone(), cached }).await;
                    if !cached {
                        let dest_abs = if dest.starts_with('/') { dest.clone() } else { format!("{}/{}", s.workdir.as_deref().unwrap_or("/"), dest) };
                        let (ctx, srcs, chown, has_usr, layer2) = (ctx.to_path_buf(), srcs.clone(), chown.clone(), s.has_usr, layer.clone());
                        tokio::task::spawn_blocking(move || layer::copy_layer(&ctx, &srcs, &dest_abs, chown.as_deref(), has_usr, &layer2))
                            .await
                            .map_err(|e| BuildError::Internal(e.to_string()))?
                            .map_err(|e| BuildError::Invalid(format!("step {step}: {}", airlock_runtime::init::chain(&e))))?;
                    }
                    push_layer(s, &layer, k);
                }
            }
        }
        let s = st.ok_or_else(|| BuildError::Invalid("a recipe starts with FROM".into()))?;
        let size = {
            let layers: Vec<PathBuf> = s.root_layers.iter().chain(&s.usr_layers).filter(|p| p.starts_with(self.store.layers_dir())).cloned().collect();
            tokio::task::spawn_blocking(move || layers.iter().map(|p| airlock_template::layer::dir_size(p)).sum::<u64>()).await.unwrap_or(0)
        };
        let aliases = self.store.get(name).ok().filter(|t| t.name == name).map(|t| t.aliases).unwrap_or_default();
        let t = Template {
            name: name.to_string(),
            root_layers: s.root_layers,
            usr_layers: s.usr_layers,
            default_user: s.default_user,
            version: 0,
            workdir: s.workdir,
            env: s.env,
            start_cmd: s.start,
            ready_cmd: s.ready,
            digest: s.key,
            aliases,
            created_at: crate::service::now_ms(),
            size_bytes: size,
            public: false,
            snapshot: None,
            cluster: None,
        };
        if save {
            self.store.save(&t).map_err(|e| BuildError::Internal(e.to_string()))?;
        }
        let _ = events.send(BuildEvent::Done { name: t.name.clone(), digest: t.digest.clone(), size_bytes: t.size_bytes, elapsed_ms: t0.elapsed().as_millis() as u64 }).await;
        Ok(t)
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_step(
        &self,
        s: &mut BuildState,
        step: usize,
        total: usize,
        text: &str,
        k: &str,
        script: &str,
        user: &str,
        events: &mpsc::Sender<BuildEvent>,
    ) -> Result<(), BuildError> {
        let layer = self.store.layers_dir().join(k);
        if layer.exists() {
            let _ = events.send(BuildEvent::Step { step, total, text: text.to_string(), cached: true }).await;
            push_layer(s, &layer, k.to_string());
            return Ok(());
        }
        let _ = events.send(BuildEvent::Step { step, total, text: text.to_string(), cached: false }).await;
        // The step runs in a sandbox made from the layers so far.
        let rootfs = airlock_runtime::RootFs {
            root_layers: s.root_layers.clone(),
            usr_layers: s.usr_layers.clone(),
            default_user: "root".into(),
            workdir: s.workdir.clone(),
            env: BTreeMap::new(),
        };
        let id = crate::ids::sandbox_id().map_err(|e| BuildError::Internal(e.to_string()))?;
        let mut spec = SandboxSpec::new(id.clone(), rootfs);
        spec.resources = Resources { cpus: 2.0, memory_mb: 4096, pids: 4096, io_bps: self.io_bps, io_iops: self.io_iops };
        spec.internet = self.backend.network_available();
        let backend = self.backend.clone();
        let created = tokio::task::spawn_blocking(move || backend.create(&spec)).await.map_err(|e| BuildError::Internal(e.to_string()))?;
        let info = created.map_err(|e| BuildError::Internal(format!("step {step}: starting the build sandbox: {e}")))?;
        let mut env = s.args.clone();
        env.extend(s.env.clone());
        env.insert("AIRLOCK_BUILD_USER".into(), s.user.clone());
        let mut tail = String::new();
        let ev = events.clone();
        let r = crate::agent_client::run(&info.socket, None, user, script, &env, s.workdir.as_deref(), |b, stderr| {
            let t = String::from_utf8_lossy(b).into_owned();
            tail.push_str(&t);
            if tail.len() > 16 * 1024 {
                let cut = tail.len() - 8 * 1024;
                let cut = (cut..tail.len()).find(|i| tail.is_char_boundary(*i)).unwrap_or(tail.len());
                tail.drain(..cut);
            }
            let _ = ev.try_send(BuildEvent::Log { text: t, stderr });
        })
        .await;
        let backend = self.backend.clone();
        let fail = |exit_code: i32, output: String| BuildError::StepFailed { step, text: text.to_string(), exit_code, output };
        match r {
            Ok(f) if f.exit_code == 0 => {
                let (id2, layer2) = (id.clone(), layer.clone());
                tokio::task::spawn_blocking(move || backend.capture(&id2, &layer2))
                    .await
                    .map_err(|e| BuildError::Internal(e.to_string()))?
                    .map_err(|e| BuildError::Internal(format!("step {step}: saving the layer: {e}")))?;
                push_layer(s, &layer, k.to_string());
                Ok(())
            }
            Ok(f) => {
                let _ = tokio::task::spawn_blocking(move || backend.destroy(&id)).await;
                Err(fail(f.exit_code, tail))
            }
            Err(e) => {
                let _ = tokio::task::spawn_blocking(move || backend.destroy(&id)).await;
                Err(fail(-1, format!("{tail}\n{e}")))
            }
        }
    }
}

fn push_layer(s: &mut BuildState, layer: &Path, k: String) {
    s.root_layers.insert(0, layer.join("root"));
    if s.has_usr && layer.join("usr").exists() {
        s.usr_layers.insert(0, layer.join("usr"));
    }
    s.key = k;
}
