//! Volumes: directories that outlive sandboxes. A volume is
//! `<data>/volumes/<id>/`: its files in `data/`, and, where the host has
//! loop devices and `mkfs.ext4`, a sparse ext4 image `disk.img` mounted on
//! `data/` while the server runs (made the way sandboxes' disks are:
//! `airlock_runtime::disk`), so its size limit is the filesystem's and a
//! full volume gives `ENOSPC` to whoever writes, sandbox or API, and
//! nobody else anything. Elsewhere `data/` is a plain directory and the
//! limit is not enforced (logged at start, shown as `limitEnforced`).
//!
//! The store (`store`) is the truth about which volumes exist; a
//! directory without a row is what a crash between the two left and is
//! removed at start. `fs` is the file APIs' confined access to `data/`.
//! Files hold canonical ids (the templates' `user` is 1000): sandboxes see
//! them through an idmapped bind (`airlock_runtime::rootfs::bind_volume`).
//!
//! Never mounted twice: at start an image is mounted only where nothing is
//! mounted yet, and the server never unmounts one while it runs but to
//! delete the volume (sandboxes' binds keep their own reference, so a
//! second loop mount of the same image could corrupt it).

pub mod fs;
pub mod store;

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("volume disk")]
    Disk(#[source] airlock_runtime::Error),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> VolumeError {
    let what = what.into();
    move |source| VolumeError::Io { what, source }
}

/// Where volumes live and whether their limits can be enforced here.
#[derive(Debug, Clone)]
pub struct Volumes {
    root: PathBuf,
    cache: PathBuf,
    pub enforce: bool,
}

impl Volumes {
    /// Probes the host (loop devices, `mkfs.ext4`: it runs a process).
    pub fn new(data_dir: &Path) -> Self {
        let mut v = Self::new_unprobed(data_dir);
        v.enforce = airlock_runtime::disk::available();
        v
    }

    /// Without the probe: plain directories until `enforce` is set.
    pub fn new_unprobed(data_dir: &Path) -> Self {
        Self { root: data_dir.join("volumes"), cache: data_dir.join("disk-cache"), enforce: false }
    }

    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// The volume's files: what file APIs open and sandboxes bind.
    pub fn data(&self, id: &str) -> PathBuf {
        self.dir(id).join("data")
    }

    /// Makes the volume's directory (and image, where limits are
    /// enforced), mounts it and gives its root to the canonical `user`.
    /// Returns whether the limit is enforced. On error nothing is left.
    pub fn create(&self, id: &str, mb: u64) -> Result<bool, VolumeError> {
        let r = self.create_inner(id, mb);
        if r.is_err() {
            self.destroy(id);
        }
        r
    }

    fn create_inner(&self, id: &str, mb: u64) -> Result<bool, VolumeError> {
        airlock_runtime::state::private_dir(&self.root).map_err(io("creating the volumes directory"))?;
        let dir = self.dir(id);
        std::fs::create_dir(&dir).map_err(io(format!("creating {}", dir.display())))?;
        let data = self.data(id);
        if self.enforce {
            let img = dir.join(airlock_runtime::disk::IMAGE);
            airlock_runtime::disk::create_image(&self.cache, &img, mb).map_err(VolumeError::Disk)?;
            airlock_runtime::disk::mount_image_at(&img, &data).map_err(VolumeError::Disk)?;
            // mkfs's lost+found would show in every listing; fsck makes
            // one again if it ever needs it.
            let _ = std::fs::remove_dir(data.join("lost+found"));
        } else {
            std::fs::create_dir(&data).map_err(io(format!("creating {}", data.display())))?;
        }
        // The sandbox's `user` (canonical 1000) owns the volume's root, so
        // it can write a fresh volume; root inside can too.
        std::os::unix::fs::chown(&data, Some(fs::USER_ID), Some(fs::USER_ID)).map_err(io("chowning the volume root"))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).map_err(io("chmod of the volume root"))?;
        Ok(self.enforce)
    }

    /// Mounts an existing volume's image again (server start), unless
    /// already mounted.
    pub fn mount_existing(&self, id: &str) -> Result<(), VolumeError> {
        let img = self.dir(id).join(airlock_runtime::disk::IMAGE);
        if img.exists() {
            airlock_runtime::disk::mount_image_at(&img, &self.data(id)).map_err(VolumeError::Disk)?;
        }
        Ok(())
    }

    /// Unmounts and removes everything of a volume. Best effort: what is
    /// left (a busy mount) is retried at the next start.
    pub fn destroy(&self, id: &str) {
        let dir = self.dir(id);
        if dir.join(airlock_runtime::disk::IMAGE).exists() {
            airlock_runtime::disk::unmount_at(&self.data(id));
        }
        if airlock_runtime::disk::is_mounted(&self.data(id)) {
            tracing::warn!(volume_id = %id, "volume still mounted; its directory is kept until the next start");
            return;
        }
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(volume_id = %id, error = %e, "removing volume directory");
            }
        }
    }

    /// Ids of the volume directories on disk.
    pub fn on_disk(&self) -> Vec<String> {
        std::fs::read_dir(&self.root)
            .map(|rd| rd.filter_map(|e| e.ok()).filter_map(|e| e.file_name().into_string().ok()).filter(|n| n.starts_with("vol_")).collect())
            .unwrap_or_default()
    }

    /// (used, total) bytes of an enforced volume's filesystem.
    pub fn space(&self, id: &str) -> Option<(u64, u64)> {
        if !self.dir(id).join(airlock_runtime::disk::IMAGE).exists() {
            return None;
        }
        airlock_runtime::disk::usage_at(&self.data(id))
    }
}

/// Volume names: Moru's rule (lowercase letters, digits and `-`, starting
/// with a letter, not ending with `-`, at most 63), which also keeps them
/// apart from ids (`vol_...`).
pub fn valid_name(n: &str) -> bool {
    let b = n.as_bytes();
    !b.is_empty() && b.len() <= 63 && b[0].is_ascii_lowercase() && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-') && b[b.len() - 1] != b'-'
}

/// Moru's mount prefixes.
pub const MORU_PREFIXES: [&str; 4] = ["/workspace/", "/data/", "/mnt/", "/volumes/"];

/// Checks a mount path: absolute, already normalised (no `//`, `.`, `..`,
/// trailing `/`), not the root or a system directory; with `moru`, also
/// under one of Moru's prefixes with something after it.
pub fn check_mount_path(p: &str, moru: bool) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("mount path {p:?} must be absolute"));
    }
    if p.split('/').any(|c| c == "..") {
        return Err(format!("mount path {p:?} must not contain '..'"));
    }
    if p.contains('\0') || (p.len() > 1 && (p.ends_with('/') || p.split('/').skip(1).any(|c| c.is_empty() || c == "."))) {
        return Err(format!("mount path {p:?} must be normalised (no '//', '.', or trailing '/')"));
    }
    if p.len() > 1024 {
        return Err("mount path is longer than 1024 bytes".into());
    }
    if moru {
        if !MORU_PREFIXES.iter().any(|pre| p.starts_with(pre) && p.len() > pre.len()) {
            return Err(format!("mount path {p:?} must be under /workspace/, /data/, /mnt/ or /volumes/"));
        }
        return Ok(());
    }
    // Kernel filesystems (and anything under them), and directories a
    // sandbox cannot run without, cannot be covered by a volume.
    const UNDER: [&str; 3] = ["/proc", "/sys", "/dev"];
    const EXACT: [&str; 13] = ["/", "/etc", "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/tmp", "/var", "/run", "/boot", "/root"];
    if EXACT.contains(&p) || UNDER.iter().any(|u| p == *u || p.starts_with(&format!("{u}/"))) {
        return Err(format!("mount path {p:?} is a system directory"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_moru_rule() {
        for ok in ["a", "my-vol", "v1", "a-b-c"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "A", "1a", "a-", "a_b", "vol_x", "a b", &"a".repeat(64)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn mount_paths() {
        for ok in ["/workspace/data", "/mnt/a/b", "/data/x", "/volumes/v"] {
            assert!(check_mount_path(ok, true).is_ok(), "{ok}");
        }
        for bad in ["/workspace", "/workspace/", "/tmp/x", "/mnt/../etc", "/mnt/a/", "mnt/a", "/mnt//a", "/mnt/./a", "/mnt/a/.."] {
            assert!(check_mount_path(bad, true).is_err(), "{bad}");
        }
        for ok in ["/home/user/data", "/mnt/x", "/opt/v", "/tmp/v", "/usr/local/v"] {
            assert!(check_mount_path(ok, false).is_ok(), "{ok}");
        }
        for bad in ["/", "/proc", "/proc/x", "/sys/fs", "/dev/shm", "/etc", "/usr", "rel", "/a/../b"] {
            assert!(check_mount_path(bad, false).is_err(), "{bad}");
        }
    }
}
