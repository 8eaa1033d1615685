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
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use airlock_runtime::template::{Store, Template};
use airlock_runtime::{Backend, Resources, SandboxSpec};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Instr {
    From(String),
    Run(String),
    Env(Vec<(String, String)>),
    Workdir(String),
    User(String),
    Copy { chown: Option<String>, srcs: Vec<String>, dest: String },
    Arg(String, Option<String>),
    Start(String),
    Ready(String),
}

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

/// Progress of a build, for logs and progress bars.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BuildEvent {
    Step { step: usize, total: usize, text: String, cached: bool },
    Log { text: String, stderr: bool },
    Done { name: String, digest: String, size_bytes: u64, elapsed_ms: u64 },
    Error { message: String },
}

fn split_words(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_string).collect()
}

/// Substitutes `$VAR` and `${VAR}` from `vars`; unknown variables stay as written.
fn substitute(s: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let b: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < b.len() {
        if b[i] == '$' && i + 1 < b.len() {
            let (name, end) = if b[i + 1] == '{' {
                match b[i + 2..].iter().position(|c| *c == '}') {
                    Some(p) => (b[i + 2..i + 2 + p].iter().collect::<String>(), i + 3 + p),
                    None => (String::new(), i + 1),
                }
            } else {
                let n: String = b[i + 1..].iter().take_while(|c| c.is_ascii_alphanumeric() || **c == '_').collect();
                let l = n.len();
                (n, i + 1 + l)
            };
            if let Some(v) = vars.get(&name) {
                out.push_str(v);
                i = end;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// Parses a recipe. `ARG` values come from `build_args`, else their default;
/// `ARG` and `ENV` values are substituted into later instructions except
/// `RUN`, whose shell expands them itself.
pub fn parse(text: &str, build_args: &BTreeMap<String, String>) -> Result<Vec<Instr>, BuildError> {
    let mut out = Vec::new();
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    let mut logical = String::new();
    let mut start_line = 0;
    let lines: Vec<&str> = text.lines().collect();
    for (n, raw) in lines.iter().enumerate() {
        let trimmed = raw.trim();
        if logical.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if logical.is_empty() {
            start_line = n + 1;
        }
        if let Some(cont) = trimmed.strip_suffix('\\') {
            logical.push_str(cont);
            logical.push(' ');
            if n + 1 < lines.len() {
                continue;
            }
        } else {
            logical.push_str(trimmed);
        }
        let line = std::mem::take(&mut logical);
        let (kw, rest) = line.split_once(char::is_whitespace).unwrap_or((line.as_str(), ""));
        let rest = rest.trim();
        let err = |m: &str| BuildError::Parse { line: start_line, message: m.to_string() };
        if rest.is_empty() {
            return Err(err(&format!("{kw} needs an argument")));
        }
        let instr = match kw.to_ascii_uppercase().as_str() {
            "FROM" => Instr::From(substitute(rest, &vars)),
            "RUN" => Instr::Run(exec_form(rest).map_err(|m| err(&m))?),
            "START" | "CMD" | "ENTRYPOINT" => Instr::Start(exec_form(rest).map_err(|m| err(&m))?),
            "READY" => Instr::Ready(exec_form(rest).map_err(|m| err(&m))?),
            "ENV" => {
                let rest = substitute(rest, &vars);
                let mut pairs = Vec::new();
                if rest.contains('=') {
                    for w in shell_words(&rest).map_err(|m| err(&m))? {
                        let (k, v) = w.split_once('=').ok_or_else(|| err(&format!("ENV expects KEY=VALUE, got {w:?}")))?;
                        pairs.push((k.to_string(), v.to_string()));
                    }
                } else {
                    let (k, v) = rest.split_once(char::is_whitespace).ok_or_else(|| err("ENV expects KEY VALUE or KEY=VALUE"))?;
                    pairs.push((k.to_string(), v.trim().to_string()));
                }
                for (k, v) in &pairs {
                    if k.is_empty() || k.starts_with(|c: char| c.is_ascii_digit()) || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                        return Err(err(&format!("invalid variable name {k:?}")));
                    }
                    vars.insert(k.clone(), v.clone());
                }
                Instr::Env(pairs)
            }
            "ARG" => {
                let (k, d) = match rest.split_once('=') {
                    Some((k, d)) => (k.trim().to_string(), Some(d.trim().trim_matches('"').to_string())),
                    None => (rest.to_string(), None),
                };
                if let Some(v) = build_args.get(&k).cloned().or_else(|| d.clone()) {
                    vars.insert(k.clone(), v);
                }
                let v = build_args.get(&k).cloned().or(d);
                Instr::Arg(k, v)
            }
            "WORKDIR" => {
                let w = substitute(rest, &vars);
                if !w.starts_with('/') {
                    return Err(err("WORKDIR must be an absolute path"));
                }
                Instr::Workdir(w)
            }
            "USER" => Instr::User(substitute(rest, &vars)),
            "COPY" | "ADD" => {
                let mut words = split_words(&substitute(rest, &vars));
                let mut chown = None;
                words.retain(|w| {
                    if let Some(c) = w.strip_prefix("--chown=") {
                        chown = Some(c.to_string());
                        false
                    } else {
                        true
                    }
                });
                if words.len() < 2 {
                    return Err(err("COPY needs at least one source and a destination"));
                }
                let dest = words.pop().unwrap_or_default();
                Instr::Copy { chown, srcs: words, dest }
            }
            other => return Err(err(&format!("unknown instruction {other}"))),
        };
        out.push(instr);
    }
    match out.first() {
        Some(Instr::From(_)) => {}
        Some(Instr::Arg(..)) if out.iter().any(|i| matches!(i, Instr::From(_))) => {}
        _ => return Err(BuildError::Parse { line: 1, message: "a recipe starts with FROM".into() }),
    }
    Ok(out)
}

/// `["a", "b"]` (exec form) becomes a shell-quoted command line.
fn exec_form(rest: &str) -> Result<String, String> {
    if rest.starts_with('[') {
        let v: Vec<String> = serde_json::from_str(rest).map_err(|e| format!("invalid JSON array: {e}"))?;
        Ok(v.iter().map(|a| format!("'{}'", a.replace('\'', "'\\''"))).collect::<Vec<_>>().join(" "))
    } else {
        Ok(rest.to_string())
    }
}

/// Splits `A="x y" B=z` into words, honouring double and single quotes.
fn shell_words(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut any = false;
    for c in s.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '"') | (None, '\'') => {
                quote = Some(c);
                any = true;
            }
            (None, c) if c.is_whitespace() => {
                if any || !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            (None, c) => cur.push(c),
        }
    }
    if quote.is_some() {
        return Err("unterminated quote".into());
    }
    if any || !cur.is_empty() {
        words.push(cur);
    }
    Ok(words)
}

fn key(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect::<String>()[..32].to_string()
}

/// Recipes shipped with Airlock, built on first use.
pub fn builtin(name: &str) -> Option<&'static str> {
    match name {
        "code-interpreter-v1" => Some(include_str!("../../../templates/code-interpreter-v1.Airlockfile")),
        "python" => Some(include_str!("../../../templates/python.Airlockfile")),
        "node" => Some(include_str!("../../../templates/node.Airlockfile")),
        "debian" => Some(include_str!("../../../templates/debian.Airlockfile")),
        _ => None,
    }
}

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
    pub async fn build(&self, name: &str, recipe: &str, build_args: &BTreeMap<String, String>, context: Option<&Path>, events: &mpsc::Sender<BuildEvent>) -> Result<Template, BuildError> {
        let t0 = std::time::Instant::now();
        if !Store::valid_name(name) || name == "base" {
            return Err(BuildError::Invalid(format!("invalid template name {name:?}")));
        }
        let instrs = parse(recipe, build_args)?;
        let total = instrs.len();
        let mut st: Option<BuildState> = None;
        let mut pre_from_args: BTreeMap<String, String> = BTreeMap::new();
        for (i, instr) in instrs.iter().enumerate() {
            let step = i + 1;
            let text = describe(instr);
            if let Instr::From(parent) = instr {
                let src = crate::rootfs_source::classify(parent);
                if !matches!(src, crate::rootfs_source::Source::Template(_)) {
                    let k = crate::rootfs_source::key(&src).map_err(|e| BuildError::Invalid(format!("step {step}: {e}")))?;
                    let layer = self.store.layers_dir().join(&k);
                    let cached = layer.exists();
                    let _ = events.send(BuildEvent::Step { step, total, text, cached }).await;
                    if !cached {
                        let ev = events.clone();
                        let (src2, layer2) = (src.clone(), layer.clone());
                        tokio::task::spawn_blocking(move || {
                            crate::rootfs_source::materialise(&src2, &layer2, &mut |m| {
                                let _ = ev.try_send(BuildEvent::Log { text: format!("{m}\n"), stderr: false });
                            })
                        })
                        .await
                        .map_err(|e| BuildError::Internal(e.to_string()))?
                        .map_err(|e| BuildError::Invalid(format!("step {step} (FROM {parent}): {e}")))?;
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
                    let digest = context_digest(ctx, srcs).map_err(|e| BuildError::Invalid(format!("step {step}: {e}")))?;
                    let k = key(&[&s.key, "COPY", &digest, dest, chown.as_deref().unwrap_or(""), s.workdir.as_deref().unwrap_or("")]);
                    let layer = self.store.layers_dir().join(&k);
                    let cached = layer.exists();
                    let _ = events.send(BuildEvent::Step { step, total, text: text.clone(), cached }).await;
                    if !cached {
                        let dest_abs = if dest.starts_with('/') { dest.clone() } else { format!("{}/{}", s.workdir.as_deref().unwrap_or("/"), dest) };
                        let (ctx, srcs, chown, has_usr, layer2) = (ctx.to_path_buf(), srcs.clone(), chown.clone(), s.has_usr, layer.clone());
                        tokio::task::spawn_blocking(move || copy_layer(&ctx, &srcs, &dest_abs, chown.as_deref(), has_usr, &layer2))
                            .await
                            .map_err(|e| BuildError::Internal(e.to_string()))?
                            .map_err(|e| BuildError::Invalid(format!("step {step}: {e}")))?;
                    }
                    push_layer(s, &layer, k);
                }
            }
        }
        let s = st.ok_or_else(|| BuildError::Invalid("a recipe starts with FROM".into()))?;
        let size = {
            let layers: Vec<PathBuf> = s.root_layers.iter().chain(&s.usr_layers).filter(|p| p.starts_with(self.store.layers_dir())).cloned().collect();
            tokio::task::spawn_blocking(move || layers.iter().map(|p| airlock_runtime::namespace::dir_size(p)).sum::<u64>()).await.unwrap_or(0)
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
        };
        self.store.save(&t).map_err(|e| BuildError::Internal(e.to_string()))?;
        let _ = events.send(BuildEvent::Done { name: t.name.clone(), digest: t.digest.clone(), size_bytes: t.size_bytes, elapsed_ms: t0.elapsed().as_millis() as u64 }).await;
        Ok(t)
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_step(&self, s: &mut BuildState, step: usize, total: usize, text: &str, k: &str, script: &str, user: &str, events: &mpsc::Sender<BuildEvent>) -> Result<(), BuildError> {
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
        let id = crate::service::new_sandbox_id();
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

fn describe(i: &Instr) -> String {
    match i {
        Instr::From(x) => format!("FROM {x}"),
        Instr::Run(x) => format!("RUN {x}"),
        Instr::Env(p) => format!("ENV {}", p.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")),
        Instr::Workdir(x) => format!("WORKDIR {x}"),
        Instr::User(x) => format!("USER {x}"),
        Instr::Copy { srcs, dest, .. } => format!("COPY {} {dest}", srcs.join(" ")),
        Instr::Arg(k, v) => format!("ARG {k}{}", v.as_ref().map(|v| format!("={v}")).unwrap_or_default()),
        Instr::Start(x) => format!("START {x}"),
        Instr::Ready(x) => format!("READY {x}"),
    }
}

/// A source path inside the context, refusing anything that climbs out.
fn context_path(ctx: &Path, src: &str) -> Result<PathBuf, String> {
    let rel = Path::new(src.trim_start_matches('/'));
    if rel.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(format!("COPY source {src:?} leaves the build context"));
    }
    let p = ctx.join(rel);
    let canon = p.canonicalize().map_err(|e| format!("COPY source {src:?}: {e}"))?;
    let root = ctx.canonicalize().map_err(|e| format!("build context {}: {e}", ctx.display()))?;
    if !canon.starts_with(&root) {
        return Err(format!("COPY source {src:?} leaves the build context"));
    }
    Ok(p)
}

/// Hash of the sources' paths, modes and contents (the COPY cache key).
fn context_digest(ctx: &Path, srcs: &[String]) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt;
    let mut h = Sha256::new();
    for s in srcs {
        let p = context_path(ctx, s)?;
        let mut stack = vec![p.clone()];
        let mut files = Vec::new();
        while let Some(q) = stack.pop() {
            let md = std::fs::symlink_metadata(&q).map_err(|e| format!("{}: {e}", q.display()))?;
            files.push((q.clone(), md.clone()));
            if md.is_dir() {
                for e in std::fs::read_dir(&q).map_err(|e| format!("{}: {e}", q.display()))?.flatten() {
                    stack.push(e.path());
                }
            }
        }
        files.sort_by(|a, b| a.0.cmp(&b.0));
        for (q, md) in files {
            h.update(q.strip_prefix(ctx).unwrap_or(&q).to_string_lossy().as_bytes());
            h.update(md.permissions().mode().to_be_bytes());
            if md.is_file() {
                let data = std::fs::read(&q).map_err(|e| format!("{}: {e}", q.display()))?;
                h.update(Sha256::digest(&data));
            } else if md.file_type().is_symlink() {
                h.update(std::fs::read_link(&q).map(|t| t.to_string_lossy().into_owned()).unwrap_or_default().as_bytes());
            }
        }
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Builds a COPY layer: sources copied to `dest`, owned per `--chown`
/// (numeric or `root`/`user`), default root.
fn copy_layer(ctx: &Path, srcs: &[String], dest: &str, chown: Option<&str>, has_usr: bool, layer: &Path) -> Result<(), String> {
    let id = |s: &str| -> Result<u32, String> {
        match s {
            "root" => Ok(0),
            "user" => Ok(1000),
            n => n.parse().map_err(|_| format!("--chown: unknown user or group {n:?} (use root, user or a number)")),
        }
    };
    let (uid, gid) = match chown {
        None => (0, 0),
        Some(c) => match c.split_once(':') {
            Some((u, g)) => (id(u)?, id(g)?),
            None => (id(c)?, id(c)?),
        },
    };
    let tmp = layer.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(tmp.join("root")).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(tmp.join("usr")).map_err(|e| e.to_string())?;
    let dest_is_dir = dest.ends_with('/') || srcs.len() > 1;
    for src in srcs {
        let from = context_path(ctx, src)?;
        // Docker's rules: a directory's contents go into the destination;
        // a file goes to the destination, or into it when it is a directory.
        let mut target = dest.trim_end_matches('/').to_string();
        if !from.is_dir() && dest_is_dir {
            target = format!("{target}/{}", from.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
        }
        // Paths under /usr belong to the /usr layer when the template has one.
        let rel = target.trim_start_matches('/');
        let to = if has_usr && (rel == "usr" || rel.starts_with("usr/")) { tmp.join("usr").join(rel.trim_start_matches("usr").trim_start_matches('/')) } else { tmp.join("root").join(rel) };
        copy_tree(&from, &to, uid, gid).map_err(|e| format!("copying {src}: {e}"))?;
    }
    std::fs::rename(&tmp, layer).or_else(|e| if layer.exists() { let _ = std::fs::remove_dir_all(&tmp); Ok(()) } else { Err(e.to_string()) })
}

fn copy_tree(from: &Path, to: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    if let Some(p) = to.parent() {
        std::fs::create_dir_all(p)?;
    }
    let md = std::fs::symlink_metadata(from)?;
    if md.file_type().is_symlink() {
        std::os::unix::fs::symlink(std::fs::read_link(from)?, to)?;
    } else if md.is_dir() {
        std::fs::create_dir_all(to)?;
        for e in std::fs::read_dir(from)? {
            let e = e?;
            copy_tree(&e.path(), &to.join(e.file_name()), uid, gid)?;
        }
        std::fs::set_permissions(to, md.permissions())?;
    } else {
        std::fs::copy(from, to)?;
    }
    std::os::unix::fs::lchown(to, Some(uid), Some(gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_instruction() {
        let args: BTreeMap<String, String> = [("VER".to_string(), "2".to_string())].into();
        let r = parse(
            "# comment\nARG VER=1\nFROM base\nENV A=1 B=\"two words\"\nENV C $A-x\nWORKDIR /app/$VER\nUSER user\nRUN echo hi \\\n  && echo there\nRUN [\"echo\", \"it's\"]\nCOPY --chown=user:user src/ /app/\nSTART python3 -m http.server\nREADY curl -sf localhost:8000\n",
            &args,
        )
        .expect("parse");
        assert_eq!(r[1], Instr::From("base".into()));
        assert_eq!(r[2], Instr::Env(vec![("A".into(), "1".into()), ("B".into(), "two words".into())]));
        assert_eq!(r[3], Instr::Env(vec![("C".into(), "1-x".into())]));
        assert_eq!(r[4], Instr::Workdir("/app/2".into()));
        assert_eq!(r[6], Instr::Run("echo hi  && echo there".into()));
        assert_eq!(r[7], Instr::Run("'echo' 'it'\\''s'".into()));
        assert_eq!(r[8], Instr::Copy { chown: Some("user:user".into()), srcs: vec!["src/".into()], dest: "/app/".into() });
        assert!(matches!(r[9], Instr::Start(_)));
        assert!(matches!(r[10], Instr::Ready(_)));
    }

    #[test]
    fn bad_recipes_say_where() {
        match parse("FROM base\nFROB x\n", &BTreeMap::new()) {
            Err(BuildError::Parse { line, message }) => assert_eq!((line, message.contains("FROB")), (2, true)),
            other => panic!("{other:?}"),
        }
        assert!(parse("RUN true\n", &BTreeMap::new()).is_err(), "FROM first");
        assert!(parse("FROM base\nWORKDIR relative\n", &BTreeMap::new()).is_err());
        assert!(parse("FROM base\nENV 1BAD=x\n", &BTreeMap::new()).is_err());
    }

    #[test]
    fn copy_sources_cannot_leave_the_context() {
        let d = tempfile::tempdir().expect("tmp");
        std::fs::write(d.path().join("ok"), "x").expect("write");
        assert!(context_path(d.path(), "ok").is_ok());
        assert!(context_path(d.path(), "../etc/passwd").is_err());
        std::os::unix::fs::symlink("/etc", d.path().join("escape")).expect("link");
        assert!(context_path(d.path(), "escape/passwd").is_err());
    }
}
