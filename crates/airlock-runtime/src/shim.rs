//! The `sudo` shim's layer: a read-only layer above every sandbox's
//! template layers holding one file, `/usr/local/bin/sudo`, which is this
//! binary (it acts as `sudo` when called by that name: `airlock-agent`
//! `sudo`). A layer rather than a bind mount of the binary, so nothing in
//! the sandbox's mount table names a host path, and the sandbox's own
//! files (its writable layer) still win over it.
//!
//! `<dir>/root/usr/local/bin/sudo` serves templates whose `/usr` is part of
//! the root overlay, `<dir>/usr/local/bin/sudo` those with a separate `/usr`
//! overlay. Both are hard links to the binary when it is on the same
//! filesystem, copies otherwise, replaced by rename (sandboxes running with
//! the layer mounted see the new binary, never a missing one).

use std::path::{Path, PathBuf};

/// Makes (or refreshes) the layer under `dir` from `binary`; returns `dir`.
pub fn prepare(dir: &Path, binary: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    for part in ["root/usr/local/bin", "usr/local/bin"] {
        let d = dir.join(part);
        std::fs::create_dir_all(&d)?;
        // Every level readable by the sandbox (its root is not host root).
        let mut p = d.as_path();
        while p.starts_with(dir) {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))?;
            match p.parent() {
                Some(q) => p = q,
                None => break,
            }
        }
        let dest = d.join("sudo");
        if same_file(binary, &dest) {
            continue;
        }
        let tmp = d.join(".sudo.new");
        let _ = std::fs::remove_file(&tmp);
        if std::fs::hard_link(binary, &tmp).is_err() {
            // Another filesystem: a copy, but never at the cost of the
            // room sandboxes need (the binary is tens of MiB).
            let size = std::fs::metadata(binary)?.len();
            let free = nix::sys::statvfs::statvfs(&d).map(|s| s.blocks_available() * s.fragment_size()).unwrap_or(0);
            if free < size.saturating_mul(2).max(size + (256 << 20)) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::StorageFull,
                    format!("copying the binary ({} MiB) would leave the data directory too little room", size >> 20),
                ));
            }
            std::fs::copy(binary, &tmp)?;
            // The copy carries the binary's time, so the next start sees
            // it is the same and copies nothing.
            if let Ok(m) = std::fs::metadata(binary).and_then(|m| m.modified()) {
                let _ = std::fs::File::options().write(true).open(&tmp).and_then(|f| f.set_modified(m));
            }
        }
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
        std::fs::rename(&tmp, &dest)?;
    }
    Ok(dir.to_path_buf())
}

/// Whether `b` is `a` (a hard link) or a copy of it (same size and time).
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(x), Ok(y)) = (std::fs::metadata(a), std::fs::metadata(b)) else { return false };
    (x.dev() == y.dev() && x.ino() == y.ino()) || (x.len() == y.len() && x.modified().ok().is_some() && x.modified().ok() == y.modified().ok())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_layer_holds_the_binary_under_both_roots() {
        let d = tempfile::tempdir().expect("tmp");
        let bin = d.path().join("airlock");
        std::fs::write(&bin, b"binary").expect("write");
        let layer = super::prepare(&d.path().join("shim"), &bin).expect("prepare");
        for p in ["root/usr/local/bin/sudo", "usr/local/bin/sudo"] {
            assert_eq!(std::fs::read(layer.join(p)).expect("read"), b"binary");
        }
        std::fs::write(d.path().join("airlock2"), b"new").expect("write");
        super::prepare(&layer, &d.path().join("airlock2")).expect("again");
        assert_eq!(std::fs::read(layer.join("usr/local/bin/sudo")).expect("read"), b"new");
    }
}
