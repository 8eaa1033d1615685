//! Volumes as service actions: create, list, get, delete (refused while a
//! sandbox mounts one), the mounts of a sandbox create (E2B's
//! `volumeMounts` by name, Moru's `volumeId` + `volumeMountPath`), and the
//! file operations both SDKs' file APIs map onto. Storage and path
//! confinement live in `crate::volumes`; this file decides policy.

use std::sync::OnceLock;

use airlock_proto::volume as wire;
use bytes::Bytes;
use http_body_util::BodyExt;

use super::*;
use crate::volumes::fs::{self as vfs, Entry, FsError, Root, VolPath};
use crate::volumes::store::{SandboxVolume, VolumeRow};
use crate::volumes::{check_mount_path, valid_name, Volumes};

/// At most this many volumes per sandbox.
const MAX_MOUNTS: usize = 16;

/// A volume a planned sandbox mounts: what the store records and what the
/// backend binds.
#[derive(Debug, Clone)]
pub(super) struct PlannedMount {
    pub vol: SandboxVolume,
    pub mount: airlock_runtime::VolumeMount,
}

fn secs(ms: i64) -> String {
    // Whole seconds: Moru's SDK parses with `fromisoformat`, which before
    // Python 3.11 takes at most 6 fractional digits.
    airlock_proto::time::rfc3339_parts(ms.div_euclid(1000), 0)
}

fn stamp((s, n): (i64, u32)) -> String {
    airlock_proto::time::rfc3339_parts(s, n / 1000 * 1000)
}

/// A file-system failure as the API shows it.
fn fs_err(e: FsError) -> ApiError {
    let msg = e.to_string();
    let full = match &e {
        FsError::Io { source, .. } => format!("{msg}: {source}"),
        FsError::BadPath { .. } => msg.clone(),
    };
    match e.errno() {
        None => ApiError::BadRequest(full),
        Some(libc::ENOENT) => ApiError::NotFound(full),
        Some(libc::EEXIST) => ApiError::Conflict(full),
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => ApiError::TooLarge(format!("{msg}: the volume is full")),
        Some(libc::ENOTDIR | libc::EISDIR | libc::ENOTEMPTY | libc::EINVAL | libc::ELOOP | libc::EXDEV | libc::ENAMETOOLONG | libc::EACCES | libc::EPERM) => {
            ApiError::BadRequest(full)
        }
        Some(_) => ApiError::Internal(full),
    }
}

impl Service {
    fn vols(&self) -> Volumes {
        // Whether the host has loop devices and mkfs is probed once: it
        // runs a process.
        static ENFORCE: OnceLock<bool> = OnceLock::new();
        let mut v = Volumes::new_unprobed(&self.cfg.data_dir);
        v.enforce = *ENFORCE.get_or_init(airlock_runtime::disk::available);
        v
    }

    /// A volume by id (`vol_...`) or name.
    async fn find_volume(&self, key: &str) -> Result<VolumeRow, ApiError> {
        let store = self.store.clone();
        let k = key.to_string();
        let row = self.blocking(move || if k.starts_with("vol_") { store.volume(&k) } else { store.volume_by_name(&k) }).await??;
        row.ok_or_else(|| ApiError::NotFound(format!("volume '{key}' not found")))
    }

    async fn volume_view(&self, v: &VolumeRow, token: bool) -> Result<wire::Volume, ApiError> {
        let data = self.vols().data(&v.id);
        let (bytes, files) = self.blocking(move || Root::open(&data).map(|r| vfs::totals(&r)).unwrap_or((0, 0))).await?;
        Ok(wire::Volume {
            volume_id: v.id.clone(),
            name: v.name.clone(),
            token: token.then(|| v.token.clone()),
            created_at: secs(v.created_at),
            updated_at: secs(v.updated_at),
            size_mb: v.size_mb,
            limit_enforced: v.enforced,
            total_size_bytes: bytes,
            total_file_count: files,
        })
    }

    pub async fn create_volume(&self, req: wire::NewVolume) -> Result<wire::Volume, ApiError> {
        let name = req.name.trim().to_string();
        if !valid_name(&name) {
            return Err(ApiError::BadRequest(format!(
                "invalid volume name {:?}: use 1-63 lowercase letters, digits and '-', starting with a letter and not ending with '-'",
                req.name.chars().take(80).collect::<String>()
            )));
        }
        let mb = req.size_mb.unwrap_or(self.cfg.default_volume_mb);
        if !(airlock_runtime::disk::MIN_MB..=self.cfg.max_volume_mb).contains(&mb) {
            return Err(ApiError::BadRequest(format!("sizeMB must be between {} and {}, got {mb}", airlock_runtime::disk::MIN_MB, self.cfg.max_volume_mb)));
        }
        let conflict = || ApiError::Conflict(format!("a volume named '{name}' already exists"));
        {
            let store = self.store.clone();
            let n = name.clone();
            if self.blocking(move || store.volume_by_name(&n)).await??.is_some() {
                return Err(conflict());
            }
        }
        let id = format!("vol_{}", crate::ids::sandbox_id()?);
        let token = crate::ids::access_token()?;
        let vols = self.vols();
        let id2 = id.clone();
        let enforced =
            self.blocking(move || vols.create(&id2, mb)).await?.map_err(|e| ApiError::Internal(format!("creating volume {id}: {}", airlock_runtime::init::chain(&e))))?;
        let now = now_ms();
        let row = VolumeRow { id: id.clone(), name: name.clone(), token, size_mb: mb, enforced, created_at: now, updated_at: now };
        let store = self.store.clone();
        let r2 = row.clone();
        let inserted = self.blocking(move || store.insert_volume(&r2)).await?;
        if !matches!(inserted, Ok(true)) {
            // Lost a race for the name, or the store failed: nothing stays.
            let vols = self.vols();
            let id2 = id.clone();
            self.blocking(move || vols.destroy(&id2)).await?;
            return Err(match inserted {
                Ok(_) => conflict(),
                Err(e) => e.into(),
            });
        }
        tracing::info!(volume_id = %id, name = %row.name, size_mb = mb, enforced, "volume created");
        self.volume_view(&row, true).await
    }

    pub async fn list_volumes(&self) -> Result<Vec<wire::Volume>, ApiError> {
        let store = self.store.clone();
        let rows = self.blocking(move || store.volumes()).await??;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            out.push(self.volume_view(r, false).await?);
        }
        Ok(out)
    }

    pub async fn get_volume(&self, key: &str) -> Result<wire::Volume, ApiError> {
        let v = self.find_volume(key).await?;
        self.volume_view(&v, true).await
    }

    /// Deletes a volume and its files; 409 while a sandbox (running or
    /// paused) mounts it.
    pub async fn delete_volume(&self, key: &str) -> Result<(), ApiError> {
        let v = self.find_volume(key).await?;
        let store = self.store.clone();
        let id = v.id.clone();
        match self.blocking(move || store.delete_volume(&id)).await?? {
            Ok(true) => {}
            Ok(false) => return Err(ApiError::NotFound(format!("volume '{key}' not found"))),
            Err(users) => return Err(ApiError::Conflict(format!("volume '{}' is mounted by sandboxes {}; kill them first", v.name, users.join(", ")))),
        }
        let vols = self.vols();
        let id = v.id.clone();
        self.blocking(move || vols.destroy(&id)).await?;
        tracing::info!(volume_id = %v.id, name = %v.name, "volume deleted");
        Ok(())
    }

    /// The content API's check: the volume exists and `authorization` is
    /// `Bearer <its token>`.
    pub async fn volume_with_token(&self, id: &str, authorization: Option<&str>) -> Result<VolumeRow, ApiError> {
        let given = authorization.and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer "))).map(str::trim).unwrap_or("");
        if given.is_empty() {
            return Err(ApiError::Unauthorized("a volume token is required (Authorization: Bearer <token>)".into()));
        }
        let v = self.find_volume(id).await?;
        // Constant time: timing must not tell how much of a guess was right.
        if !airlock_proto::envd::constant_time_eq(given.as_bytes(), v.token.as_bytes()) {
            return Err(ApiError::Unauthorized("invalid volume token".into()));
        }
        Ok(v)
    }

    /// A volume for Airlock's and Moru's file API (X-API-KEY already checked).
    pub async fn volume_for_files(&self, key: &str) -> Result<VolumeRow, ApiError> {
        self.find_volume(key).await
    }

    /// The volumes a create request mounts, checked and resolved.
    pub(super) async fn volume_mounts(&self, req: &NewSandbox) -> Result<Vec<PlannedMount>, ApiError> {
        let mut wanted: Vec<(String, String, bool)> = Vec::new();
        for m in req.volume_mounts.iter().flatten() {
            check_mount_path(&m.path, false).map_err(ApiError::BadRequest)?;
            wanted.push((m.name.clone(), m.path.clone(), false));
        }
        match (req.volume_id.as_deref().filter(|s| !s.is_empty()), req.volume_mount_path.as_deref().filter(|s| !s.is_empty())) {
            (None, None) => {}
            (Some(id), Some(path)) => {
                check_mount_path(path, true).map_err(ApiError::BadRequest)?;
                wanted.push((id.to_string(), path.to_string(), true));
            }
            (Some(_), None) => return Err(ApiError::BadRequest("volumeMountPath is required with volumeId".into())),
            (None, Some(_)) => return Err(ApiError::BadRequest("volumeId is required with volumeMountPath".into())),
        }
        if wanted.len() > MAX_MOUNTS {
            return Err(ApiError::BadRequest(format!("at most {MAX_MOUNTS} volumes per sandbox")));
        }
        for (i, (_, a, _)) in wanted.iter().enumerate() {
            for (_, b, _) in &wanted[i + 1..] {
                if a == b || b.starts_with(&format!("{a}/")) || a.starts_with(&format!("{b}/")) {
                    return Err(ApiError::BadRequest(format!("volume mount paths {a:?} and {b:?} overlap")));
                }
            }
        }
        let mut out = Vec::new();
        for (key, path, _moru) in wanted {
            let v = self.find_volume(&key).await?;
            out.push(PlannedMount {
                vol: SandboxVolume { id: v.id.clone(), name: v.name.clone(), path: path.clone(), read_only: false },
                mount: airlock_runtime::VolumeMount { source: self.vols().data(&v.id), target: path, read_only: false },
            });
        }
        Ok(out)
    }

    /// At start: mounts every volume's image again and removes directories
    /// a crash left without a row.
    pub async fn restore_volumes(&self) -> Result<(), ApiError> {
        let store = self.store.clone();
        let rows = self.blocking(move || store.volumes()).await??;
        let vols = self.vols();
        if !vols.enforce {
            tracing::warn!("no loop devices or mkfs.ext4: volumes are plain directories and their size limits are not enforced");
        }
        self.blocking(move || {
            let known: std::collections::HashSet<&str> = rows.iter().map(|r| r.id.as_str()).collect();
            for r in &rows {
                if let Err(e) = vols.mount_existing(&r.id) {
                    tracing::error!(volume_id = %r.id, error = %airlock_runtime::init::chain(&e), "mounting volume");
                }
            }
            for id in vols.on_disk() {
                if !known.contains(id.as_str()) {
                    tracing::info!(volume_id = %id, "removing a volume directory without a store row");
                    vols.destroy(&id);
                }
            }
        })
        .await
    }

    async fn touch(&self, v: &VolumeRow) {
        let store = self.store.clone();
        let id = v.id.clone();
        let _ = self.blocking(move || store.touch_volume(&id, now_ms())).await;
    }

    fn root_of(&self, v: &VolumeRow) -> impl FnOnce() -> Result<Root, FsError> {
        let data = self.vols().data(&v.id);
        move || Root::open(&data)
    }

    pub async fn volume_stat(&self, v: &VolumeRow, path: &str) -> Result<Entry, ApiError> {
        let p = VolPath::parse(path).map_err(fs_err)?;
        let root = self.root_of(v);
        self.blocking(move || root()?.stat(&p)).await?.map_err(fs_err)
    }

    pub async fn volume_list(&self, v: &VolumeRow, path: &str, depth: u32) -> Result<Vec<Entry>, ApiError> {
        let p = VolPath::parse(path).map_err(fs_err)?;
        let root = self.root_of(v);
        self.blocking(move || root()?.list(&p, depth.min(64))).await?.map_err(fs_err)
    }

    pub async fn volume_mkdir(&self, v: &VolumeRow, path: &str, parents: bool, uid: Option<u32>, gid: Option<u32>, mode: Option<u32>) -> Result<Entry, ApiError> {
        let p = VolPath::parse(path).map_err(fs_err)?;
        let root = self.root_of(v);
        let r = self.blocking(move || root()?.mkdir(&p, parents, uid.unwrap_or(vfs::USER_ID), gid.unwrap_or(vfs::USER_ID), mode.unwrap_or(0o755))).await?.map_err(fs_err)?;
        self.touch(v).await;
        Ok(r)
    }

    /// Streams `body` into `path` (parents created), replacing what is
    /// there when `replace`. Never holds more than one chunk in memory; a
    /// full volume answers 413 and leaves nothing behind.
    #[allow(clippy::too_many_arguments)]
    pub async fn volume_write<B>(
        &self,
        v: &VolumeRow,
        path: &str,
        body: B,
        length: Option<u64>,
        replace: bool,
        uid: Option<u32>,
        gid: Option<u32>,
        mode: Option<u32>,
    ) -> Result<Entry, ApiError>
    where
        B: http_body::Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        use tokio::io::AsyncWriteExt;
        let p = VolPath::parse(path).map_err(fs_err)?;
        if p.is_root() {
            return Err(ApiError::BadRequest("path must name a file, not the volume's root".into()));
        }
        let full = || ApiError::TooLarge(format!("the upload does not fit: volume '{}' is limited to {} MiB", v.name, v.size_mb));
        let mut body = body;
        if let (Some(len), Some((used, total))) = (length, self.vols().space(&v.id)) {
            if len > total.saturating_sub(used) {
                drain(&mut body).await;
                return Err(full());
            }
        }
        let root = self.root_of(v);
        let p2 = p.clone();
        let (u, g, m) = (uid.unwrap_or(vfs::USER_ID), gid.unwrap_or(vfs::USER_ID), mode.unwrap_or(0o644));
        let mut pending = self.blocking(move || root()?.begin_write(&p2, u, g, m)).await?.map_err(fs_err)?;
        let file = pending.take_file().ok_or_else(|| ApiError::Internal("upload without a file".into()))?;
        let mut file = tokio::fs::File::from_std(file);
        let mut written = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ApiError::BadRequest(format!("reading the upload: {e}")))?;
            if let Ok(d) = frame.into_data() {
                written += d.len() as u64;
                if let Err(e) = file.write_all(&d).await {
                    let e = match e.raw_os_error() {
                        Some(libc::ENOSPC) | Some(libc::EDQUOT) => full(),
                        _ => ApiError::Internal(format!("writing {}: {e}", p.display())),
                    };
                    drain(&mut body).await;
                    return Err(e);
                }
            }
        }
        // Blocks are allocated at write-back on ext4 (delayed allocation):
        // a full volume may only show here.
        file.flush().await.map_err(|e| ApiError::Internal(format!("writing {}: {e}", p.display())))?;
        file.sync_data().await.map_err(|e| match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => full(),
            _ => ApiError::Internal(format!("writing {}: {e}", p.display())),
        })?;
        drop(file);
        let root = self.root_of(v);
        let r = self
            .blocking(move || {
                pending.commit(replace)?;
                root()?.stat(&p)
            })
            .await?
            .map_err(fs_err)?;
        tracing::debug!(volume_id = %v.id, path = %r.path.display(), bytes = written, "volume file written");
        self.touch(v).await;
        Ok(r)
    }

    /// An open regular file and its length.
    pub async fn volume_read(&self, v: &VolumeRow, path: &str) -> Result<(std::fs::File, u64), ApiError> {
        let p = VolPath::parse(path).map_err(fs_err)?;
        let root = self.root_of(v);
        self.blocking(move || {
            let f = root()?.open_read(&p)?;
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            Ok((f, len))
        })
        .await?
        .map_err(fs_err)
    }

    /// Removes `path`; `missing_ok` answers success when it is not there (Moru).
    pub async fn volume_remove(&self, v: &VolumeRow, path: &str, recursive: bool, missing_ok: bool) -> Result<(), ApiError> {
        let p = VolPath::parse(path).map_err(fs_err)?;
        let root = self.root_of(v);
        match self.blocking(move || root()?.remove(&p, recursive)).await? {
            Ok(()) => {}
            Err(e) if missing_ok && e.errno() == Some(libc::ENOENT) => return Ok(()),
            Err(e) => return Err(fs_err(e)),
        }
        self.touch(v).await;
        Ok(())
    }

    pub async fn volume_set_meta(&self, v: &VolumeRow, path: &str, patch: wire::MetadataPatch) -> Result<Entry, ApiError> {
        let p = VolPath::parse(path).map_err(fs_err)?;
        let root = self.root_of(v);
        let r = self.blocking(move || root()?.set_meta(&p, patch.uid, patch.gid, patch.mode)).await?.map_err(fs_err)?;
        self.touch(v).await;
        Ok(r)
    }
}

/// E2B's `VolumeEntryStat`.
pub fn entry_stat(e: &Entry) -> wire::EntryStat {
    wire::EntryStat {
        name: e.path.name(),
        kind: match e.kind {
            vfs::Kind::File => "file",
            vfs::Kind::Dir => "directory",
            vfs::Kind::Symlink => "symlink",
            vfs::Kind::Other => "unknown",
        }
        .into(),
        path: e.path.display(),
        size: e.size,
        mode: e.mode,
        uid: e.uid,
        gid: e.gid,
        atime: stamp(e.atime),
        mtime: stamp(e.mtime),
        ctime: stamp(e.ctime),
        target: e.target.clone(),
    }
}

/// Moru's `FileInfo` (only `file` and `directory` exist there: a link or
/// special file shows as a file).
pub fn file_info(e: &Entry) -> wire::FileInfo {
    let dir = e.kind == vfs::Kind::Dir;
    wire::FileInfo {
        name: e.path.name(),
        path: e.path.display(),
        kind: if dir { "directory" } else { "file" }.into(),
        size: (!dir).then_some(e.size),
        modified_at: Some(airlock_proto::time::rfc3339_parts(e.mtime.0, 0)),
    }
}

/// Reads and drops what is left of a refused upload, within bounds (64 MiB,
/// ten seconds), so the client finishes sending and reads the refusal
/// instead of failing on a connection closed under its writes.
async fn drain<B>(body: &mut B)
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    let mut left: usize = 64 << 20;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while let Some(Ok(frame)) = body.frame().await {
            match frame.data_ref() {
                Some(d) if d.len() < left => left -= d.len(),
                Some(_) => return,
                None => {}
            }
        }
    })
    .await;
}
