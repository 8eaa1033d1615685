//! The data directory's disk, which the store, templates, snapshots and
//! every sandbox's (thinly provisioned) writable layer share. Two rules
//! keep a full disk an error for whoever filled it rather than the end of
//! the server:
//!
//! - a reserve file (`<data>/.disk-reserve`, allocated, a few MiB) is
//!   given back the moment the disk is full, so the store can still record
//!   state changes (kills, pauses, deadlines) while space is short, and is
//!   taken again once there is room;
//! - creates, snapshots, forks and imports are refused with 507 while the
//!   free space is below a floor, instead of starting sandboxes that fail
//!   at their first write.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use super::ApiError;

use crate::store::RESERVE_FILE;

pub(crate) struct DiskGuard {
    dir: PathBuf,
    reserve_bytes: u64,
    min_free: u64,
    full: AtomicBool,
}

/// (free bytes for unprivileged writers, total bytes) of the filesystem at `p`.
fn space(p: &Path) -> Option<(u64, u64)> {
    let s = nix::sys::statvfs::statvfs(p).ok()?;
    Some((s.blocks_available() * s.fragment_size(), s.blocks() * s.fragment_size()))
}

impl DiskGuard {
    /// Sizes follow the disk: 2% of it for the reserve (1 to 64 MiB), 5%
    /// for the create floor (4 to 256 MiB).
    pub(crate) fn new(dir: &Path) -> Self {
        let total = space(dir).map_or(0, |(_, t)| t);
        Self { dir: dir.to_path_buf(), reserve_bytes: (total / 50).clamp(1 << 20, 64 << 20), min_free: (total / 20).clamp(4 << 20, 256 << 20), full: AtomicBool::new(false) }
    }

    fn reserve(&self) -> PathBuf {
        self.dir.join(RESERVE_FILE)
    }

    /// Takes the reserve if it is missing and there is room for it three
    /// times over; gives it back when the disk is (nearly) full. Cheap:
    /// one `statvfs`.
    pub(crate) fn tick(&self) {
        let Some((free, _)) = space(&self.dir) else { return };
        let held = self.reserve().exists();
        if free < self.reserve_bytes / 2 {
            if held {
                let _ = std::fs::remove_file(self.reserve());
                tracing::error!(free_bytes = free, dir = %self.dir.display(), "the data disk is full: its reserve is released so the store can record state; creates are refused until there is room");
            }
            self.full.store(true, Ordering::SeqCst);
        } else if free > self.reserve_bytes * 3 {
            if !held {
                if let Err(e) = self.take_reserve() {
                    tracing::warn!(error = %e, "cannot allocate the data disk's reserve");
                }
            }
            if self.full.swap(false, Ordering::SeqCst) {
                tracing::info!(free_bytes = free, "the data disk has room again");
            }
        }
    }

    fn take_reserve(&self) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        let tmp = self.dir.join(format!("{RESERVE_FILE}.tmp"));
        let f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        // SAFETY: fallocate on a descriptor we own, for a length we chose.
        if unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, self.reserve_bytes as libc::off_t) } != 0 {
            let e = std::io::Error::last_os_error();
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        std::fs::rename(&tmp, self.reserve())
    }

    /// (free, total, the create floor) bytes of the data disk.
    pub(crate) fn status(&self) -> (u64, u64, u64) {
        let (free, total) = space(&self.dir).unwrap_or((0, 0));
        (free, total, self.min_free)
    }

    /// 507 when the disk has less free space than a new sandbox (or
    /// snapshot, or import) should start with.
    pub(crate) fn check(&self, what: &str) -> Result<(), ApiError> {
        let free = space(&self.dir).map_or(u64::MAX, |(f, _)| f);
        if free < self.min_free || self.full.load(Ordering::SeqCst) && free < self.reserve_bytes * 3 {
            return Err(ApiError::InsufficientStorage(format!(
                "not enough disk space: {what} needs room on the server's data disk ({} MiB free, {} MiB kept free)",
                free >> 20,
                self.min_free >> 20
            )));
        }
        Ok(())
    }
}
