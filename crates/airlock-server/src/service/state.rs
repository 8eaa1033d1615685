//! Keeping and branching sandbox state: snapshots (a sandbox's filesystem
//! as a new read-only layer over its own, saved as a template), forks
//! (one snapshot, N new sandboxes), the filesystem-only pause, soft and
//! hard reset, and restart.
//!
//! This host cannot checkpoint processes, so every snapshot and fork holds
//! files only: sandboxes made from one boot afresh over those files (the
//! template's start command runs again). Requests for E2B's memory
//! snapshots get a filesystem one, and the reply says `mode: filesystem`.
//!
//! Layers are shared, never copied: a snapshot's template lists the new
//! layer and then every layer of the sandbox it was taken of. A layer
//! lives while a template, a sandbox row or a lease refers to it
//! (`Service::collect_layers`).

use std::collections::HashSet;
use std::path::PathBuf;

use airlock_proto::api::{ForkRequest, ForkResult, SnapshotInfo, SnapshotRequest};

use super::create::{check_env, template_name, Plan};
use super::*;

/// Forks per request, as E2B's API allows.
pub(super) const MAX_FORKS: i64 = 20;
/// Forks' timeout when the request gives none (E2B's default).
const FORK_DEFAULT_TIMEOUT_S: i64 = 15;
/// Root layers a sandbox may stack (each snapshot of a snapshot adds
/// one); overlayfs allows 500, and mount options are one page long.
pub(super) const MAX_LAYERS: usize = 128;

/// Drops a layer lease when the operation that took it ends, however it ends.
pub(crate) struct Lease<'a> {
    svc: &'a Service,
    dir: PathBuf,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        self.svc.leases.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.dir);
    }
}

fn snapshot_info(t: &airlock_template::Template) -> SnapshotInfo {
    let origin = t.snapshot.clone().unwrap_or_default();
    let id = format!("{}:default", t.name);
    SnapshotInfo {
        names: if origin.named { vec![id.clone()] } else { Vec::new() },
        snapshot_id: id,
        mode: "filesystem".into(),
        sandbox_id: Some(origin.sandbox_id),
        size_bytes: origin.layer_bytes,
        created_at: rfc3339_ms(t.created_at),
    }
}

impl Service {
    /// Keeps `dir` from layer collection until the lease is dropped.
    pub(crate) fn lease(&self, dir: PathBuf) -> Lease<'_> {
        self.leases.lock().unwrap_or_else(|p| p.into_inner()).insert(dir.clone());
        Lease { svc: self, dir }
    }

    /// Takes the snapshot layer of a sandbox (under its lock) into a new
    /// leased layer directory; the caller makes the lease permanent by
    /// saving a template or sandbox rows that list the layer.
    async fn take_layer(&self, row: &SandboxRow) -> Result<(airlock_runtime::Snapshot, Lease<'_>), ApiError> {
        self.disk.check("a snapshot")?;
        let dest = self.builder.store.snapshot_layer(&crate::ids::sandbox_id()?);
        let lease = self.lease(dest.clone());
        let backend = self.backend.clone();
        let (id, d2) = (row.id.clone(), dest.clone());
        let t0 = Instant::now();
        let snap = self.blocking(move || backend.snapshot(&id, &d2)).await?.map_err(|e| runtime_err(&row.id, e))?;
        if snap.rootfs.root_layers.len() > MAX_LAYERS {
            let _ = std::fs::remove_dir_all(&dest);
            return Err(ApiError::BadRequest(format!(
                "sandbox {} already stacks {} layers (snapshots of snapshots); at most {MAX_LAYERS} are allowed",
                row.id,
                snap.rootfs.root_layers.len() - 1
            )));
        }
        tracing::info!(sandbox_id = %row.id, bytes = snap.bytes, elapsed_ms = t0.elapsed().as_secs_f64() * 1e3, "snapshot layer taken");
        Ok((snap, lease))
    }

    /// `POST /sandboxes/{id}/snapshots`: the sandbox's filesystem as a new
    /// template. A name already used by a snapshot moves to the new one
    /// (sandboxes of the old one keep their layers).
    pub async fn snapshot(&self, id: &str, req: SnapshotRequest) -> Result<SnapshotInfo, ApiError> {
        let name = req.name.as_deref().map(template_name).filter(|n| !n.is_empty()).map(str::to_string);
        if let Some(n) = &name {
            if !airlock_template::Store::valid_name(n) || n.contains(':') {
                return Err(ApiError::BadRequest(format!("invalid snapshot name {n:?}: use letters, digits, '-', '_' and '.'")));
            }
            if let Some(t) = self.find_template(n).await? {
                if t.snapshot.is_none() || t.name != *n {
                    return Err(ApiError::Conflict(format!("'{n}' names a template that is not a snapshot")));
                }
            }
        }
        let lock = self.lock_for(id);
        let _g = lock.lock().await;
        let row = self.row(id).await?;
        let source = self.find_template(&row.template).await?;
        let (snap, _lease) = self.take_layer(&row).await?;
        let tname = match &name {
            Some(n) => n.clone(),
            None => crate::ids::sandbox_id()?,
        };
        let layer_dir = snap.rootfs.root_layers.first().and_then(|p| p.parent()).map(|p| p.to_path_buf()).unwrap_or_default();
        let t = airlock_template::Template {
            name: tname.clone(),
            root_layers: snap.rootfs.root_layers,
            usr_layers: snap.rootfs.usr_layers,
            default_user: snap.rootfs.default_user,
            version: 0,
            workdir: snap.rootfs.workdir,
            env: snap.rootfs.env,
            start_cmd: source.as_ref().and_then(|t| t.start_cmd.clone()),
            ready_cmd: source.as_ref().and_then(|t| t.ready_cmd.clone()),
            digest: format!("snapshot-{}", layer_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()),
            aliases: Vec::new(),
            created_at: now_ms(),
            size_bytes: source.as_ref().map_or(0, |t| t.size_bytes) + snap.bytes,
            public: false,
            snapshot: Some(airlock_template::SnapshotOrigin { sandbox_id: row.id.clone(), template: row.template.clone(), named: name.is_some(), layer_bytes: snap.bytes }),
            cluster: None,
        };
        let store = self.builder.store.clone();
        let t2 = t.clone();
        if let Err(e) = self.blocking(move || store.save(&t2)).await? {
            let _ = std::fs::remove_dir_all(&layer_dir);
            return Err(ApiError::Internal(format!("saving snapshot {tname}: {e}")));
        }
        tracing::info!(sandbox_id = %id, snapshot = %tname, bytes = snap.bytes, "snapshot taken");
        self.emit(&row, "snapshot", serde_json::json!({"snapshotID": format!("{tname}:default"), "bytes": snap.bytes})).await;
        if name.is_some() {
            // The name's previous snapshot may now be unused.
            self.collect_layers_soon();
        }
        Ok(snapshot_info(&t))
    }

    /// `GET /snapshots`: newest first, optionally of one sandbox or by name,
    /// paged by `limit` and the previous page's last snapshot id.
    pub async fn snapshots(&self, sandbox: Option<&str>, name: Option<&str>, limit: usize, next: Option<&str>) -> Result<(Vec<SnapshotInfo>, Option<String>), ApiError> {
        let mut list: Vec<_> = self.known_templates().await?.into_iter().filter(|t| t.snapshot.is_some()).collect();
        list.retain(|t| sandbox.is_none_or(|s| t.snapshot.as_ref().is_some_and(|o| o.sandbox_id == s)));
        list.retain(|t| name.is_none_or(|n| t.name == template_name(n)));
        list.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| a.name.cmp(&b.name)));
        if let Some(after) = next {
            let after = template_name(after);
            match list.iter().position(|t| t.name == after) {
                Some(i) => drop(list.drain(..=i)),
                None => return Err(ApiError::BadRequest(format!("invalid nextToken {after:?}"))),
            }
        }
        let limit = if limit == 0 { 100 } else { limit };
        let more = list.len() > limit;
        list.truncate(limit);
        let next = if more { list.last().map(|t| t.name.clone()) } else { None };
        Ok((list.iter().map(snapshot_info).collect(), next))
    }

    /// `POST /sandboxes/{id}/fork`: `count` new sandboxes from one snapshot
    /// layer, each with the source's environment, metadata and resources.
    /// The source keeps running. Each fork succeeds or fails on its own.
    pub async fn fork(&self, id: &str, req: ForkRequest) -> Result<Vec<ForkResult>, ApiError> {
        let count = req.count.unwrap_or(1);
        if !(1..=MAX_FORKS).contains(&count) {
            return Err(ApiError::BadRequest(format!("count must be between 1 and {MAX_FORKS}, got {count}")));
        }
        let timeout_s = self.check_timeout(req.timeout.unwrap_or(FORK_DEFAULT_TIMEOUT_S))?;
        let (row, snap, lease) = {
            let lock = self.lock_for(id);
            let _g = lock.lock().await;
            let row = self.row(id).await?;
            let (snap, lease) = self.take_layer(&row).await?;
            (row, snap, lease)
        };
        let plan = Plan {
            template: row.template.clone(),
            tpl: self.find_template(&row.template).await?,
            rootfs: snap.rootfs,
            timeout_s,
            cpus: row.cpus,
            memory_mb: row.memory_mb,
            disk_mb: (row.disk_mb > 0).then_some(row.disk_mb),
            internet: row.internet,
            // The layer carries the source's whole environment already.
            env: row.env.clone(),
            metadata: row.metadata.clone(),
            secure: true,
            auto_pause: row.auto_pause,
            auto_pause_memory: row.auto_pause_memory,
            setup: None,
            // Volumes are shared storage, not the sandbox's files: forks
            // that mounted them would not be independent of each other.
            volumes: Vec::new(),
            alerts: row.alerts,
            pool: None,
            auto_resume: row.auto_resume,
            public_traffic: row.public_traffic,
            mask_host: row.mask_host.clone(),
            // A fork of a restricted sandbox is just as restricted.
            egress: self.egress_spec(id).await?,
            networks: Vec::new(),
        };
        let results = futures_util::future::join_all((0..count).map(|_| self.launch(plan.clone()))).await;
        drop(lease);
        let out: Vec<ForkResult> = results
            .into_iter()
            .map(|r| match r {
                Ok(row) => ForkResult { sandbox: Some(self.sandbox_body(&row)), error: None },
                Err(e) => {
                    let message = if let ApiError::Internal(d) = &e {
                        tracing::error!(sandbox_id = %id, error = %d, "fork failed");
                        "internal server error".to_string()
                    } else {
                        e.to_string()
                    };
                    ForkResult { sandbox: None, error: Some(api::ApiError { code: e.status(), message }) }
                }
            })
            .collect();
        if out.iter().all(|r| r.sandbox.is_none()) {
            self.collect_layers_soon();
        }
        tracing::info!(sandbox_id = %id, count, started = out.iter().filter(|r| r.sandbox.is_some()).count(), "sandbox forked");
        Ok(out)
    }

    /// Filesystem-only pause: every process stops, memory and cgroups are
    /// released, files stay; connect boots a fresh agent over them.
    pub(super) async fn stop_locked(&self, row: &SandboxRow) -> Result<(), ApiError> {
        let backend = self.backend.clone();
        let id = row.id.clone();
        match self.blocking(move || backend.stop(&id)).await? {
            Ok(()) | Err(airlock_runtime::Error::NotFound(_)) => {}
            Err(e) => return Err(runtime_err(&row.id, e)),
        }
        self.samples.lock().unwrap_or_else(|p| p.into_inner()).remove(&row.id);
        Ok(())
    }

    /// Frozen sandboxes paused longer than `fs_pause_after_s` give their
    /// memory back: they become filesystem-paused, so thousands of idle
    /// sessions can wait on one host.
    pub async fn release_idle(&self) -> Result<usize, ApiError> {
        let Some(after_ms) = self.cfg.fs_pause_after_s.filter(|s| *s > 0).map(|s| s * 1000) else { return Ok(0) };
        let store = self.store.clone();
        let rows = self.blocking(move || store.sandboxes()).await??;
        let now = now_ms();
        let mut n = 0;
        for r in rows.into_iter().filter(|r| r.state == State::Paused && r.paused_memory && r.paused_at > 0 && now - r.paused_at >= after_ms) {
            let lock = self.lock_for(&r.id);
            let _g = lock.lock().await;
            let Ok(cur) = self.row(&r.id).await else { continue };
            if cur.state != State::Paused || !cur.paused_memory {
                continue;
            }
            if let Err(e) = self.stop_locked(&cur).await {
                tracing::warn!(sandbox_id = %cur.id, error = %e, "releasing an idle paused sandbox's memory failed");
                continue;
            }
            let store = self.store.clone();
            let (id, end, at) = (cur.id.clone(), cur.end_at, cur.paused_at);
            self.blocking(move || store.set_paused(&id, end, false, at)).await??;
            tracing::info!(sandbox_id = %cur.id, paused_s = (now - cur.paused_at) / 1000, "idle paused sandbox now keeps only its files");
            n += 1;
        }
        Ok(n)
    }

    /// `POST /sandboxes/{id}/reset`. Soft: every process but the agent is
    /// killed, files stay. Hard: back to the layers it was created from
    /// (its template or snapshot), same id, token and deadline.
    pub async fn reset(&self, id: &str, hard: bool) -> Result<SandboxRow, ApiError> {
        let lock = self.lock_for(id);
        let _g = lock.lock().await;
        let mut row = self.row(id).await?;
        let backend = self.backend.clone();
        let id2 = id.to_string();
        if !hard {
            if !row.state.takes_traffic() {
                return Err(ApiError::Conflict(format!("sandbox {id} is paused; connect to it first")));
            }
            self.blocking(move || backend.kill_processes(&id2)).await?.map_err(|e| runtime_err(id, e))?;
            self.append_log(id, "soft reset: every process killed");
            self.emit(&row, "reset", serde_json::json!({"hard": false})).await;
            return Ok(row);
        }
        self.set_state(id, State::Resuming, row.end_at).await?;
        if let Err(e) = self.blocking(move || backend.reset(&id2)).await?.map_err(|e| runtime_err(id, e)) {
            self.settle_after_failed_boot(&row).await?;
            return Err(e);
        }
        let end = self.after_boot(&row).await?;
        let store = self.store.clone();
        let id2 = id.to_string();
        self.blocking(move || store.set_state(&id2, State::Running, end)).await??;
        self.append_log(id, "hard reset: back to the template's files");
        self.emit(&row, "reset", serde_json::json!({"hard": true})).await;
        row.state = State::Running;
        row.end_at = end;
        Ok(row)
    }

    /// `POST /sandboxes/{id}/restart`: a fresh agent over the same files,
    /// optionally with more environment variables or new resources.
    pub async fn restart(&self, id: &str, req: api::RestartRequest) -> Result<SandboxRow, ApiError> {
        let env = req.env_vars.unwrap_or_default();
        check_env(&env)?;
        if let Some(c) = req.cpu_count {
            if !(c > 0.0 && c <= airlock_runtime::limits::MAX_CPUS) {
                return Err(ApiError::BadRequest(format!("cpuCount must be more than 0 and at most {}, got {c}", airlock_runtime::limits::MAX_CPUS)));
            }
        }
        if let Some(m) = req.memory_mb {
            self.check_memory(m)?;
        }
        let lock = self.lock_for(id);
        let _g = lock.lock().await;
        let mut row = self.row(id).await?;
        row.cpus = req.cpu_count.unwrap_or(row.cpus);
        row.memory_mb = req.memory_mb.unwrap_or(row.memory_mb);
        row.env.extend(env.clone());
        let resources = (req.cpu_count.is_some() || req.memory_mb.is_some()).then_some(Resources {
            cpus: row.cpus,
            memory_mb: row.memory_mb,
            pids: self.cfg.pids_limit,
            io_bps: self.cfg.io_bps,
            io_iops: self.cfg.io_iops,
        });
        self.set_state(id, State::Resuming, row.end_at).await?;
        self.stop_locked(&row).await?;
        let backend = self.backend.clone();
        let id2 = id.to_string();
        if let Err(e) = self.blocking(move || backend.reconfigure(&id2, &env, resources).and_then(|_| backend.restart(&id2))).await?.map_err(|e| runtime_err(id, e)) {
            self.settle_after_failed_boot(&row).await?;
            return Err(e);
        }
        let end = self.after_boot(&row).await?;
        let store = self.store.clone();
        let r2 = row.clone();
        self.blocking(move || store.set_config(&r2.id, &r2.env, r2.cpus, r2.memory_mb).and_then(|_| store.set_state(&r2.id, State::Running, end))).await??;
        self.append_log(id, "restarted: a fresh agent over the same files");
        self.emit(&row, "restarted", serde_json::json!({"cpuCount": row.cpus, "memoryMB": row.memory_mb})).await;
        row.state = State::Running;
        row.end_at = end;
        Ok(row)
    }

    /// After a reset or restart booted a fresh agent: the template's start
    /// and ready commands again; returns the deadline it runs to (its own,
    /// or a fresh default one if it was paused, its clock stopped).
    async fn after_boot(&self, row: &SandboxRow) -> Result<i64, ApiError> {
        let tpl = self.find_template(&row.template).await?;
        self.after_start(&row.id, tpl.as_ref(), row.access_token.as_deref(), &row.env, None).await?;
        Ok(if row.state.clock_runs() { row.end_at } else { now_ms() + self.cfg.default_timeout_s * 1000 })
    }

    /// After a reset or restart failed to boot: the sandbox keeps its
    /// files and shows paused, so connect can try again.
    async fn settle_after_failed_boot(&self, row: &SandboxRow) -> Result<(), ApiError> {
        let store = self.store.clone();
        let (id, end) = (row.id.clone(), row.end_at);
        self.blocking(move || store.set_paused(&id, end, false, now_ms())).await??;
        Ok(())
    }

    /// Layer directories in use by sandboxes or leased.
    async fn layers_in_use(&self) -> Result<HashSet<PathBuf>, ApiError> {
        let store = self.store.clone();
        let rows = self.blocking(move || store.sandboxes()).await??;
        let mut used: HashSet<PathBuf> = HashSet::new();
        for r in &rows {
            let mut layers = r.layers.clone();
            // Rows from before sandboxes recorded their layers run on their
            // template's.
            if layers.is_empty() {
                if let Some(t) = self.find_template(&r.template).await? {
                    layers = t.root_layers.iter().chain(&t.usr_layers).cloned().collect();
                }
            }
            used.extend(layers.iter().filter_map(|p| p.parent().map(|p| p.to_path_buf())));
        }
        used.extend(self.leases.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned());
        Ok(used)
    }

    /// Deletes layers nothing refers to; with `snapshots_only`, only those
    /// taken of sandboxes (the build cache stays).
    pub async fn collect_layers(&self, snapshots_only: bool) -> Result<usize, ApiError> {
        let used = self.layers_in_use().await?;
        let store = self.builder.store.clone();
        let n = self.blocking(move || store.gc_layers(&used, snapshots_only)).await?.map_err(|e| ApiError::Internal(e.to_string()))?;
        if n > 0 {
            tracing::info!(layers = n, "unused layers deleted");
        }
        Ok(n)
    }

    /// `collect_layers(true)` in the background: callers need not wait.
    pub(crate) fn collect_layers_soon(&self) {
        self.gc_wanted.store(true, Ordering::SeqCst);
    }
}

/// Export archives bigger than this (compressed, or unpacked) are refused.
pub fn import_limit_bytes(cfg: &Config) -> u64 {
    cfg.max_disk_mb.max(1024) << 20
}

impl Service {
    /// `GET /sandboxes/{id}/export`, first half: the sandbox's writable
    /// layer copied aside (consistently, as a snapshot is) and the
    /// manifest. The caller streams `archive::write` of the directory and
    /// removes it.
    pub async fn export_prepare(&self, id: &str) -> Result<(Vec<u8>, PathBuf), ApiError> {
        self.disk.check("an export")?;
        let lock = self.lock_for(id);
        let _g = lock.lock().await;
        let row = self.row(id).await?;
        let digest = self.find_template(&row.template).await?.map(|t| t.digest).unwrap_or_default();
        let dest = self.builder.store.layers_dir().join(format!(".export-{}", crate::ids::sandbox_id()?));
        let backend = self.backend.clone();
        let (id2, d2) = (id.to_string(), dest.clone());
        let snap = self.blocking(move || backend.snapshot(&id2, &d2)).await?.map_err(|e| runtime_err(id, e))?;
        let manifest = api::ExportManifest {
            version: 1,
            template: row.template.clone(),
            template_digest: digest,
            sandbox_id: row.id.clone(),
            exported_at: rfc3339_ms(now_ms()),
            env_vars: row.env.clone(),
            metadata: row.metadata.clone(),
            has_usr: snap.rootfs.usr_layers.first().is_some_and(|l| l.starts_with(&dest)),
        };
        let json = serde_json::to_vec_pretty(&manifest).map_err(|e| ApiError::Internal(e.to_string()))?;
        tracing::info!(sandbox_id = %id, bytes = snap.bytes, "sandbox exported");
        Ok((json, dest))
    }

    /// `POST /sandboxes/import`: a new sandbox from an export archive
    /// (already received into `archive`), on this host's copy of the
    /// template the manifest names. A template whose content changed since
    /// the export is refused (409) unless `force`.
    /// Whether an import (or another upload into the data directory) can start.
    pub fn check_disk(&self, what: &str) -> Result<(), ApiError> {
        self.disk.check(what)
    }

    pub async fn import(&self, archive: PathBuf, timeout: Option<i64>, force: bool) -> Result<SandboxRow, ApiError> {
        let timeout_s = self.check_timeout(timeout.unwrap_or(self.cfg.default_timeout_s))?;
        let dest = self.builder.store.snapshot_layer(&crate::ids::sandbox_id()?);
        let lease = self.lease(dest.clone());
        let tmp = self.builder.store.layers_dir().join(format!(".import-{}", crate::ids::sandbox_id()?));
        let limit = import_limit_bytes(&self.cfg);
        let (t2, d2) = (tmp.clone(), dest.clone());
        let unpacked = self
            .blocking(move || -> Result<Vec<u8>, ApiError> {
                let _ = std::fs::create_dir_all(t2.parent().unwrap_or(&t2));
                let f = std::fs::File::open(&archive).map_err(|e| ApiError::Internal(format!("reading the upload: {e}")))?;
                let r = airlock_template::archive::read(std::io::BufReader::new(f), &t2, limit);
                let _ = std::fs::remove_file(&archive);
                let m = r.map_err(|e| match e {
                    airlock_template::archive::ArchiveError::Io { what, source } if matches!(source.kind(), std::io::ErrorKind::StorageFull) => {
                        ApiError::InsufficientStorage(format!("{what}: the host's disk is full"))
                    }
                    airlock_template::archive::ArchiveError::Io { what, source } => ApiError::Internal(format!("{what}: {source}")),
                    other => ApiError::BadRequest(format!("import: {other}")),
                })?;
                std::fs::rename(&t2, &d2).map_err(|e| ApiError::Internal(format!("installing the imported layer: {e}")))?;
                Ok(m)
            })
            .await?;
        let manifest = match unpacked {
            Ok(m) => m,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(e);
            }
        };
        let cleanup = |e: ApiError| {
            let _ = std::fs::remove_dir_all(&dest);
            e
        };
        let m: api::ExportManifest = serde_json::from_slice(&manifest).map_err(|e| cleanup(ApiError::BadRequest(format!("import: the manifest is not valid: {e}"))))?;
        if m.version != 1 {
            return Err(cleanup(ApiError::BadRequest(format!("import: export format version {} is not supported (only 1)", m.version))));
        }
        let tpl = self
            .find_template(&m.template)
            .await?
            .ok_or_else(|| cleanup(ApiError::NotFound(format!("template '{}' not found on this host; build or import it first", m.template))))?;
        if tpl.digest != m.template_digest && !force {
            return Err(cleanup(ApiError::Conflict(format!(
                "template '{}' changed since the export (digest {} there, {} here); import with force=true to use this host's",
                m.template, m.template_digest, tpl.digest
            ))));
        }
        if m.has_usr && tpl.usr_layers.is_empty() {
            return Err(cleanup(ApiError::BadRequest(format!("import: the archive has a /usr layer but template '{}' has none", m.template))));
        }
        check_env(&m.env_vars).map_err(cleanup)?;
        let mut rootfs = tpl.rootfs();
        rootfs.root_layers.insert(0, dest.join("root"));
        if m.has_usr {
            rootfs.usr_layers.insert(0, dest.join("usr"));
        }
        let default_disk = if self.backend.disk_limits_available() { self.cfg.default_disk_mb } else { 0 };
        let plan = Plan {
            template: m.template.clone(),
            tpl: Some(tpl),
            rootfs,
            timeout_s,
            cpus: self.cfg.default_cpus,
            memory_mb: self.cfg.default_memory_mb,
            disk_mb: (default_disk > 0).then_some(default_disk),
            internet: self.backend.network_available(),
            env: m.env_vars,
            metadata: m.metadata,
            secure: true,
            auto_pause: false,
            auto_pause_memory: true,
            setup: None,
            volumes: Vec::new(),
            alerts: Default::default(),
            pool: None,
            auto_resume: false,
            public_traffic: true,
            mask_host: String::new(),
            egress: None,
            networks: Vec::new(),
        };
        let r = self.launch(plan).await;
        drop(lease);
        if r.is_err() {
            self.collect_layers_soon();
        }
        r
    }
}
