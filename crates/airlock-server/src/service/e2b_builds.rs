//! E2B's template build API, the wire of the SDK's `Template` builder
//! (`Template().from_template(..).run_cmd(..).copy(..)`, `Template.build`):
//! a build is requested (`POST /v3/templates`), each COPY's files are
//! uploaded once per content hash (`GET /templates/{id}/files/{hash}` says
//! whether they are there and where to `PUT` them), the steps are posted
//! (`POST /v2/templates/{id}/builds/{build}`) and the build's status and
//! log are polled. The steps become Airlock's own build instructions and
//! run in the one builder with its layer cache: an unchanged rebuild is
//! served from cache.
//!
//! Builds in progress live in memory (a server restart forgets them; the
//! template they make, once built, is in the store). Uploaded files are
//! kept under `<data>/template-files/<hash>.tar`.

use super::*;

use airlock_template::recipe::Instr;

/// The most log lines a build keeps (older ones are dropped).
const MAX_LOG: usize = 20_000;
/// Largest uploaded COPY archive.
pub const MAX_UPLOAD: u64 = 4 << 30;

#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LogEntry {
    pub timestamp: String,
    pub message: String,
    pub level: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Build {
    template: String,
    /// What the finished build is tagged (none: `default`).
    tags: Vec<String>,
    status: &'static str,
    log: Vec<LogEntry>,
    reason: Option<(String, Option<String>)>,
}

/// E2B's template build steps (`TemplateBuildStartV2`).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildStart {
    #[serde(default)]
    pub from_image: Option<String>,
    #[serde(default)]
    pub from_template: Option<String>,
    #[serde(default)]
    pub from_image_registry: Option<serde_json::Value>,
    #[serde(default)]
    pub force: Option<bool>,
    #[serde(default)]
    pub steps: Vec<Step>,
    #[serde(default)]
    pub start_cmd: Option<String>,
    #[serde(default)]
    pub ready_cmd: Option<String>,
}

#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub files_hash: Option<String>,
    #[serde(default)]
    pub force: Option<bool>,
}

fn log(level: &'static str, message: impl Into<String>, step: Option<usize>) -> LogEntry {
    LogEntry { timestamp: rfc3339_ms(now_ms()), message: message.into(), level, step: step.map(|s| s.to_string()) }
}

/// A content hash as the SDK computes it: lowercase hex SHA-256.
pub fn valid_hash(h: &str) -> bool {
    h.len() == 64 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// What a `fromImage` can be here: no registry is reached, so an image
/// name maps onto a template that plays its part, or is refused.
fn base_for_image(image: &str) -> Result<String, ApiError> {
    let repo = image.rsplit_once(':').map_or(image, |(r, tag)| if tag.contains('/') { image } else { r });
    let repo = repo.strip_prefix("docker.io/").unwrap_or(repo).strip_prefix("library/").unwrap_or(repo);
    Ok(match repo {
        "e2bdev/base" => "base".into(),
        "e2bdev/code-interpreter" => "code-interpreter-v1".into(),
        "debian" => "debian".into(),
        "python" => "python".into(),
        "node" => "node".into(),
        other => {
            return Err(ApiError::BadRequest(format!(
                "this server does not pull images from registries, so fromImage {other:?} cannot be used: build from a template (from_template: base, debian, python, node, code-interpreter-v1, or one of yours), or from_image with e2bdev/base, debian, python or node, which map onto those"
            )))
        }
    })
}

/// `dest` as COPY names the copied file: inside it when it ends with `/`.
fn copy_target(src: &str, dest: &str) -> String {
    if dest.ends_with('/') {
        let name = std::path::Path::new(src.trim_end_matches('/')).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        format!("{dest}{name}")
    } else {
        dest.to_string()
    }
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// E2B's steps as Airlock's build instructions, and the COPY archives they
/// need (hash → where the step's files go in the build context). Build
/// steps run as `user` unless a step or USER says otherwise, as on E2B.
pub fn translate(b: &BuildStart) -> Result<(Vec<Instr>, Vec<String>), ApiError> {
    if b.from_image_registry.as_ref().is_some_and(|v| !v.is_null()) {
        return Err(ApiError::BadRequest("this server does not pull images from private registries (fromImageRegistry): build from a template instead".into()));
    }
    let from = match (&b.from_template, &b.from_image) {
        (Some(t), _) if !t.trim().is_empty() => create::template_name(t).to_string(),
        (_, Some(i)) if !i.trim().is_empty() => base_for_image(i.trim())?,
        _ => "base".into(),
    };
    let mut out = vec![Instr::From(from), Instr::User("user".into())];
    let mut hashes = Vec::new();
    let mut user = "user".to_string();
    for (i, s) in b.steps.iter().enumerate() {
        let n = i + 1;
        let bad = |m: &str| ApiError::BadRequest(format!("step {n} ({}): {m}", s.kind));
        match s.kind.as_str() {
            "RUN" => {
                let cmd = s.args.first().filter(|c| !c.trim().is_empty()).ok_or_else(|| bad("a command is needed"))?;
                match s.args.get(1).filter(|u| !u.is_empty() && **u != user) {
                    Some(u) => {
                        out.push(Instr::User(u.clone()));
                        out.push(Instr::Run(cmd.clone()));
                        out.push(Instr::User(user.clone()));
                    }
                    None => out.push(Instr::Run(cmd.clone())),
                }
            }
            "ENV" => {
                if s.args.len() % 2 != 0 || s.args.is_empty() {
                    return Err(bad("variables come as name, value pairs"));
                }
                let pairs: Vec<(String, String)> = s.args.chunks(2).map(|c| (c[0].clone(), c[1].clone())).collect();
                if pairs.iter().any(|(k, _)| k.is_empty() || k.contains('=') || k.contains(char::is_whitespace)) {
                    return Err(bad("invalid variable name"));
                }
                out.push(Instr::Env(pairs));
            }
            "WORKDIR" => out.push(Instr::Workdir(s.args.first().filter(|d| !d.is_empty()).ok_or_else(|| bad("a directory is needed"))?.clone())),
            "USER" => {
                user = s.args.first().filter(|u| !u.is_empty()).ok_or_else(|| bad("a user is needed"))?.clone();
                out.push(Instr::User(user.clone()));
            }
            "COPY" => {
                let (src, dest) = match (s.args.first(), s.args.get(1)) {
                    (Some(a), Some(b)) if !a.is_empty() && !b.is_empty() => (a.clone(), b.clone()),
                    _ => return Err(bad("a source and a destination are needed")),
                };
                if src.starts_with('/') || src.split('/').any(|c| c == "..") {
                    return Err(bad("the source must be a relative path inside the build context"));
                }
                let hash = s.files_hash.clone().filter(|h| valid_hash(h)).ok_or_else(|| bad("filesHash (lowercase hex SHA-256) is needed"))?;
                let owner = s.args.get(2).filter(|o| !o.is_empty()).cloned().unwrap_or_else(|| user.clone());
                let chown = if owner.contains(':') { owner } else { format!("{owner}:{owner}") };
                out.push(Instr::Copy { chown: Some(chown), srcs: vec![format!("{hash}/{}", src.trim_end_matches('/'))], dest: dest.clone() });
                if let Some(mode) = s.args.get(3).filter(|m| !m.is_empty()) {
                    if !mode.chars().all(|c| c.is_digit(8)) || mode.len() > 4 {
                        return Err(bad("mode must be octal"));
                    }
                    out.push(Instr::User("root".into()));
                    out.push(Instr::Run(format!("chmod -R {mode} {}", quote(&copy_target(&src, &dest)))));
                    out.push(Instr::User(user.clone()));
                }
                if !hashes.contains(&hash) {
                    hashes.push(hash);
                }
            }
            other => return Err(ApiError::BadRequest(format!("step {n}: unknown step type {other:?} (COPY, ENV, RUN, WORKDIR, USER)"))),
        }
    }
    if let Some(c) = b.start_cmd.as_ref().filter(|c| !c.trim().is_empty()) {
        out.push(Instr::Start(c.clone()));
    }
    if let Some(c) = b.ready_cmd.as_ref().filter(|c| !c.trim().is_empty()) {
        out.push(Instr::Ready(c.clone()));
    }
    Ok((out, hashes))
}

impl Service {
    pub(super) fn files_dir(&self) -> std::path::PathBuf {
        self.cfg.data_dir.join("template-files")
    }

    /// `POST /v3/templates`: a build of `name` (`name:tag` keeps the tag
    /// in the answer only). The build id is what the steps are posted to.
    pub async fn request_build(&self, name: &str, tags: Vec<String>) -> Result<serde_json::Value, ApiError> {
        let (base, tag) = name.split_once(':').map_or((name, None), |(n, t)| (n, Some(t.to_string())));
        if !airlock_template::Store::valid_name(base) || base == "base" {
            return Err(ApiError::BadRequest(format!("invalid template name {base:?}: lowercase letters, digits, '-' and '_'; not 'base'")));
        }
        let mut tags = tags;
        tags.extend(tag);
        tags.dedup();
        if let Some(bad) = tags.iter().find(|t| !airlock_template::tags::valid_tag(t)) {
            return Err(ApiError::BadRequest(format!("invalid tag {bad:?}: letters, digits, '.', '_' and '-', at most 128")));
        }
        let id = crate::ids::uuid()?;
        let build =
            Build { template: base.to_string(), tags: tags.clone(), status: "waiting", log: vec![log("info", format!("build {id} of {base} requested"), None)], reason: None };
        self.e2b_builds.lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone(), build);
        Ok(serde_json::json!({"templateID": base, "buildID": id, "public": false, "names": [base], "tags": tags, "aliases": [base]}))
    }

    /// Whether a COPY archive is here already, and where to put it if not.
    pub async fn file_upload_link(&self, template: &str, hash: &str, base_url: &str, key: &str) -> Result<serde_json::Value, ApiError> {
        if !valid_hash(hash) {
            return Err(ApiError::BadRequest(format!("invalid files hash {hash:?}: lowercase hex SHA-256")));
        }
        let present = self.files_dir().join(format!("{hash}.tar")).is_file();
        if !airlock_template::Store::valid_name(template) {
            return Err(ApiError::BadRequest(format!("invalid template name {template:?}")));
        }
        let url = format!("{base_url}/templates/{template}/files/{hash}");
        Ok(serde_json::json!({"present": present, "url": url, "headers": {"X-API-KEY": key}}))
    }

    /// Stores an uploaded COPY archive (the caller streamed it to `tmp`).
    pub async fn store_upload(&self, hash: &str, tmp: std::path::PathBuf) -> Result<(), ApiError> {
        if !valid_hash(hash) {
            let _ = std::fs::remove_file(&tmp);
            return Err(ApiError::BadRequest(format!("invalid files hash {hash:?}")));
        }
        let dest = self.files_dir().join(format!("{hash}.tar"));
        self.blocking(move || {
            let r = std::fs::create_dir_all(dest.parent().unwrap_or(std::path::Path::new("."))).and_then(|()| std::fs::rename(&tmp, &dest));
            if r.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            r
        })
        .await?
        .map_err(|e| ApiError::Internal(format!("storing an upload: {e}")))
    }

    /// `POST /v2/templates/{id}/builds/{build}`: starts the build in the
    /// background; its status and log are polled.
    pub async fn start_e2b_build(self: &Arc<Self>, template: &str, build_id: &str, b: BuildStart) -> Result<(), ApiError> {
        let (instrs, hashes) = translate(&b)?;
        {
            let mut builds = self.e2b_builds.lock().unwrap_or_else(|p| p.into_inner());
            let build =
                builds.get_mut(build_id).filter(|x| x.template == template).ok_or_else(|| ApiError::NotFound(format!("build {build_id} of template {template} not found")))?;
            if build.status != "waiting" {
                return Err(ApiError::Conflict(format!("build {build_id} was started already")));
            }
            build.status = "building";
        }
        for h in &hashes {
            if !self.files_dir().join(format!("{h}.tar")).is_file() {
                self.finish_e2b_build(build_id, Err((format!("the files of a COPY step (hash {h}) were never uploaded"), None)));
                return Err(ApiError::BadRequest(format!("the files with hash {h} were not uploaded: GET /templates/{template}/files/{h} says where")));
            }
        }
        let svc = self.clone();
        let (template, build_id) = (template.to_string(), build_id.to_string());
        tokio::spawn(async move {
            let r = svc.run_e2b_build(&template, &build_id, instrs, hashes).await;
            svc.finish_e2b_build(&build_id, r);
        });
        Ok(())
    }

    async fn run_e2b_build(&self, template: &str, build_id: &str, instrs: Vec<Instr>, hashes: Vec<String>) -> Result<(), (String, Option<String>)> {
        // The parent first (a shipped recipe is built on first use).
        if let Some(Instr::From(parent)) = instrs.first() {
            self.ensure_template(parent).await.map_err(|e| (format!("the base template {parent}: {e}"), Some("base".to_string())))?;
        }
        // The build context: each archive unpacked under its hash.
        let ctx = tempfile::Builder::new().prefix(".e2b-build-").tempdir_in(&self.cfg.data_dir).map_err(|e| (format!("making the build context: {e}"), None))?;
        let (files, root) = (self.files_dir(), ctx.path().to_path_buf());
        self.blocking(move || -> Result<(), String> {
            for h in hashes {
                let dir = root.join(&h);
                std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
                let f = std::fs::File::open(files.join(format!("{h}.tar"))).map_err(|e| format!("the files of hash {h}: {e}"))?;
                // The SDK gzips by default; a plain tar is taken as well.
                let mut f = std::io::BufReader::new(f);
                let gz = std::io::BufRead::fill_buf(&mut f).is_ok_and(|b| b.starts_with(&[0x1f, 0x8b]));
                let reader: Box<dyn std::io::Read> = if gz { Box::new(flate2::read::GzDecoder::new(f)) } else { Box::new(f) };
                // `unpack_in` refuses entries that would land outside `dir`.
                let mut a = tar::Archive::new(reader);
                a.set_preserve_ownerships(false);
                for entry in a.entries().map_err(|e| format!("the files of hash {h} are not a tar: {e}"))? {
                    let mut entry = entry.map_err(|e| format!("the files of hash {h}: {e}"))?;
                    entry.unpack_in(&dir).map_err(|e| format!("unpacking the files of hash {h}: {e}"))?;
                }
            }
            Ok(())
        })
        .await
        .map_err(|e| (e.to_string(), None))?
        .map_err(|e| (e, None))?;
        let (tx, mut rx) = mpsc::channel(256);
        let logger = {
            let builds = self.e2b_builds.clone();
            let id = build_id.to_string();
            tokio::spawn(async move {
                let mut step = None;
                while let Some(ev) = rx.recv().await {
                    let entry = match ev {
                        crate::builder::BuildEvent::Step { step: n, total, text, cached } => {
                            step = Some(n);
                            log("info", format!("[{n}/{total}] {text}{}", if cached { " (cached)" } else { "" }), Some(n))
                        }
                        crate::builder::BuildEvent::Log { text, stderr } => log(if stderr { "warn" } else { "info" }, text.trim_end().to_string(), step),
                        crate::builder::BuildEvent::Done { digest, size_bytes, elapsed_ms, .. } => {
                            log("info", format!("built {digest} ({size_bytes} bytes) in {elapsed_ms} ms"), None)
                        }
                        crate::builder::BuildEvent::Error { message } => log("error", message, step),
                    };
                    let mut b = builds.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(b) = b.get_mut(&id) {
                        if b.log.len() >= MAX_LOG {
                            b.log.remove(0);
                        }
                        b.log.push(entry);
                    }
                }
                step
            })
        };
        let r = self.builder.build_instrs(template, instrs, Some(ctx.path()), &tx, Instant::now(), false).await;
        drop(tx);
        let step = logger.await.ok().flatten();
        drop(ctx);
        let t = r.map_err(|e| (e.to_string(), step.map(|s| s.to_string())))?;
        // The build is kept under its id and named by its tags; the name
        // alone moves only with `default`.
        let tags = self.e2b_builds.lock().unwrap_or_else(|p| p.into_inner()).get(build_id).map(|b| b.tags.clone()).unwrap_or_default();
        let (store, id) = (self.builder.store.clone(), build_id.to_string());
        self.blocking(move || store.record_build(&t, &id, &tags, now_ms())).await.map_err(|e| (e.to_string(), None))?.map_err(|e| (format!("recording the build: {e}"), None))
    }

    fn finish_e2b_build(&self, build_id: &str, r: Result<(), (String, Option<String>)>) {
        let mut builds = self.e2b_builds.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = builds.get_mut(build_id) {
            match r {
                Ok(()) => {
                    b.status = "ready";
                    b.log.push(log("info", format!("template {} is ready", b.template), None));
                }
                Err((message, step)) => {
                    b.status = "error";
                    b.log.push(log("error", message.clone(), None));
                    b.reason = Some((message, step));
                }
            }
        }
    }

    /// A build's status with its log from `offset` (at most `limit`).
    pub async fn e2b_build_status(&self, template: &str, build_id: &str, offset: usize, limit: usize) -> Result<serde_json::Value, ApiError> {
        let builds = self.e2b_builds.lock().unwrap_or_else(|p| p.into_inner());
        let b = builds.get(build_id).filter(|b| b.template == template).ok_or_else(|| ApiError::NotFound(format!("build {build_id} of template {template} not found")))?;
        let entries: Vec<&LogEntry> = b.log.iter().skip(offset).take(limit).collect();
        let mut v = serde_json::json!({"templateID": b.template, "buildID": build_id, "status": b.status, "logs": [], "logEntries": entries});
        if let Some((message, step)) = &b.reason {
            let related: Vec<&LogEntry> = b.log.iter().rev().take(20).rev().collect();
            v["reason"] = serde_json::json!({"message": message, "step": step, "logEntries": related});
        }
        Ok(v)
    }

    /// All of a build's log (`GET .../logs`).
    pub async fn e2b_build_logs(&self, template: &str, build_id: &str) -> Result<serde_json::Value, ApiError> {
        let builds = self.e2b_builds.lock().unwrap_or_else(|p| p.into_inner());
        let b = builds.get(build_id).filter(|b| b.template == template).ok_or_else(|| ApiError::NotFound(format!("build {build_id} of template {template} not found")))?;
        Ok(serde_json::json!({"logs": b.log}))
    }

    /// `GET /templates/aliases/{alias}`: 404 when no template has the name.
    pub async fn template_alias(&self, alias: &str) -> Result<serde_json::Value, ApiError> {
        match self.find_template(create::template_name(alias)).await? {
            Some(t) => Ok(serde_json::json!({"templateID": t.name, "public": false})),
            None => Err(ApiError::NotFound(format!("template alias '{alias}' not found"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps(v: serde_json::Value) -> BuildStart {
        serde_json::from_value(v).expect("steps")
    }

    #[test]
    fn e2b_steps_become_build_instructions() {
        let h = "a".repeat(64);
        let (instrs, hashes) = translate(&steps(serde_json::json!({
            "fromTemplate": "python",
            "steps": [
                {"type": "RUN", "args": ["echo $HOME\nmore"], "force": false},
                {"type": "RUN", "args": ["apt-get update", "root"]},
                {"type": "ENV", "args": ["A", "1", "B", "two words"]},
                {"type": "COPY", "args": ["app/", "/home/user/", "", "0755"], "filesHash": h},
                {"type": "WORKDIR", "args": ["/app"]},
                {"type": "USER", "args": ["root"]},
                {"type": "RUN", "args": ["id"]}
            ],
            "startCmd": "python3 -m http.server", "readyCmd": "curl -s localhost:8000"
        })))
        .expect("translate");
        assert_eq!(hashes, vec![h.clone()]);
        assert_eq!(instrs[0], Instr::From("python".into()));
        assert_eq!(instrs[2], Instr::Run("echo $HOME\nmore".into()), "commands pass through untouched");
        assert_eq!(&instrs[3..6], &[Instr::User("root".into()), Instr::Run("apt-get update".into()), Instr::User("user".into())]);
        assert_eq!(instrs[6], Instr::Env(vec![("A".into(), "1".into()), ("B".into(), "two words".into())]));
        assert_eq!(instrs[7], Instr::Copy { chown: Some("user:user".into()), srcs: vec![format!("{h}/app")], dest: "/home/user/".into() });
        assert_eq!(instrs[9], Instr::Run("chmod -R 0755 '/home/user/app'".into()));
        assert_eq!(instrs.last(), Some(&Instr::Ready("curl -s localhost:8000".into())));
        assert_eq!(translate(&steps(serde_json::json!({"fromImage": "e2bdev/base:latest"}))).expect("base").0[0], Instr::From("base".into()));
        assert_eq!(translate(&steps(serde_json::json!({"fromImage": "python:3.12"}))).expect("python").0[0], Instr::From("python".into()));
        for bad in [
            serde_json::json!({"fromImage": "registry.test/private:1"}),
            serde_json::json!({"steps": [{"type": "COPY", "args": ["../etc", "/x"], "filesHash": h}]}),
            serde_json::json!({"steps": [{"type": "COPY", "args": ["a", "/x"]}]}),
            serde_json::json!({"steps": [{"type": "ENV", "args": ["A"]}]}),
            serde_json::json!({"steps": [{"type": "HEALTHCHECK", "args": []}]}),
        ] {
            assert!(translate(&steps(bad.clone())).is_err(), "{bad}");
        }
    }
}
