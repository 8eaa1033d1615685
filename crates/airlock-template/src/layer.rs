//! Layers: read-only directory trees (`root/`, and `usr/` for templates
//! that carry their own `/usr`) stored under `<templates>/layers/<key>`,
//! named by a cache key hashed from everything that produced them.
//!
//! This module makes layers that need no sandbox (a `COPY` from a build
//! context), hashes their inputs, measures them, and turns a captured
//! writable layer's ownership into canonical ids. Layers are immutable once
//! in place: every writer builds aside and renames, and loses gracefully to
//! a concurrent identical writer.

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("COPY source {src:?} leaves the build context")]
    LeavesContext { src: String },
    #[error("COPY source {src:?}")]
    Source {
        src: String,
        #[source]
        source: io::Error,
    },
    #[error("--chown: unknown user or group {0:?} (use root, user or a number)")]
    UnknownOwner(String),
    #[error("{op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> LayerError + 'a {
    move |source| LayerError::Io { op, path: path.to_path_buf(), source }
}

/// A layer cache key: the first 128 bits of SHA-256 over the
/// length-prefixed parts, hex.
pub fn cache_key(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect::<String>()[..32].to_string()
}

/// A source path inside the context, refusing anything that climbs out
/// (`..` or a symlink that leads elsewhere).
pub fn context_path(ctx: &Path, src: &str) -> Result<PathBuf, LayerError> {
    let rel = Path::new(src.trim_start_matches('/'));
    if rel.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(LayerError::LeavesContext { src: src.to_string() });
    }
    let p = ctx.join(rel);
    let canon = p.canonicalize().map_err(|source| LayerError::Source { src: src.to_string(), source })?;
    let root = ctx.canonicalize().map_err(io_err("reading build context", ctx))?;
    if !canon.starts_with(&root) {
        return Err(LayerError::LeavesContext { src: src.to_string() });
    }
    Ok(p)
}

/// Hash of the sources' paths, modes and contents (the COPY cache key).
pub fn context_digest(ctx: &Path, srcs: &[String]) -> Result<String, LayerError> {
    use std::os::unix::fs::PermissionsExt;
    let mut h = Sha256::new();
    for s in srcs {
        let p = context_path(ctx, s)?;
        let mut stack = vec![p.clone()];
        let mut files = Vec::new();
        while let Some(q) = stack.pop() {
            let md = fs::symlink_metadata(&q).map_err(io_err("reading", &q))?;
            files.push((q.clone(), md.clone()));
            if md.is_dir() {
                for e in fs::read_dir(&q).map_err(io_err("listing", &q))?.flatten() {
                    stack.push(e.path());
                }
            }
        }
        files.sort_by(|a, b| a.0.cmp(&b.0));
        for (q, md) in files {
            h.update(q.strip_prefix(ctx).unwrap_or(&q).to_string_lossy().as_bytes());
            h.update(md.permissions().mode().to_be_bytes());
            if md.is_file() {
                let data = fs::read(&q).map_err(io_err("reading", &q))?;
                h.update(Sha256::digest(&data));
            } else if md.file_type().is_symlink() {
                h.update(fs::read_link(&q).map(|t| t.to_string_lossy().into_owned()).unwrap_or_default().as_bytes());
            }
        }
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Builds a COPY layer at `layer`: sources copied to `dest`, owned per
/// `--chown` (numeric or `root`/`user`), default root. With `has_usr`,
/// paths under `/usr` go to the layer's `usr/` part.
pub fn copy_layer(ctx: &Path, srcs: &[String], dest: &str, chown: Option<&str>, has_usr: bool, layer: &Path) -> Result<(), LayerError> {
    let id = |s: &str| -> Result<u32, LayerError> {
        match s {
            "root" => Ok(0),
            "user" => Ok(1000),
            n => n.parse().map_err(|_| LayerError::UnknownOwner(n.to_string())),
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
    let _ = fs::remove_dir_all(&tmp);
    for part in ["root", "usr"] {
        let d = tmp.join(part);
        fs::create_dir_all(&d).map_err(io_err("creating", &d))?;
    }
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
        let to = if has_usr && (rel == "usr" || rel.starts_with("usr/")) {
            tmp.join("usr").join(rel.trim_start_matches("usr").trim_start_matches('/'))
        } else {
            tmp.join("root").join(rel)
        };
        copy_tree(&from, &to, uid, gid).map_err(|source| LayerError::Source { src: src.clone(), source })?;
    }
    install(&tmp, layer)
}

/// Moves a finished layer into place. A concurrent identical build may
/// have got there first: theirs is as good, and ours is dropped.
pub fn install(tmp: &Path, layer: &Path) -> Result<(), LayerError> {
    match fs::rename(tmp, layer) {
        Ok(()) => Ok(()),
        Err(_) if layer.exists() => {
            let _ = fs::remove_dir_all(tmp);
            Ok(())
        }
        Err(e) => Err(LayerError::Io { op: "installing layer", path: layer.to_path_buf(), source: e }),
    }
}

/// Copies a tree, owning everything by `uid:gid`.
fn copy_tree(from: &Path, to: &Path, uid: u32, gid: u32) -> io::Result<()> {
    if let Some(p) = to.parent() {
        fs::create_dir_all(p)?;
    }
    let md = fs::symlink_metadata(from)?;
    if md.file_type().is_symlink() {
        std::os::unix::fs::symlink(fs::read_link(from)?, to)?;
    } else if md.is_dir() {
        fs::create_dir_all(to)?;
        for e in fs::read_dir(from)? {
            let e = e?;
            copy_tree(&e.path(), &to.join(e.file_name()), uid, gid)?;
        }
        fs::set_permissions(to, md.permissions())?;
    } else {
        fs::copy(from, to)?;
    }
    std::os::unix::fs::lchown(to, Some(uid), Some(gid))
}

/// Rewrites ownership in a captured layer from a sandbox's host id range
/// (`base` .. `base + count`) to canonical ids (root 0, `user` 1000), so any
/// sandbox can map it into its own range; ids outside the range become
/// `nobody`. chown clears set-id bits, so they are put back.
pub fn shift_ids(root: &Path, base: u32, count: u32) -> io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let map = |id: u32| if id >= base && id - base < count { id - base } else { 65534 };
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = fs::symlink_metadata(&p)?;
        std::os::unix::fs::lchown(&p, Some(map(md.uid())), Some(map(md.gid())))?;
        if !md.file_type().is_symlink() && md.mode() & 0o6000 != 0 {
            fs::set_permissions(&p, fs::Permissions::from_mode(md.mode() & 0o7777))?;
        }
        if md.is_dir() {
            for e in fs::read_dir(&p)? {
                stack.push(e?.path());
            }
        }
    }
    Ok(())
}

/// Bytes used by a directory tree (allocated blocks, hard links counted
/// once). Walks the tree: for layers and sandboxes without a filesystem
/// of their own only.
pub fn dir_size(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let Ok(md) = e.path().symlink_metadata() else { continue };
            if md.nlink() > 1 && !seen.insert((md.dev(), md.ino())) {
                continue;
            }
            total += md.blocks() * 512;
            if md.is_dir() {
                stack.push(e.path());
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_sources_cannot_leave_the_context() {
        let d = tempfile::tempdir().expect("tmp");
        std::fs::write(d.path().join("ok"), "x").expect("write");
        assert!(context_path(d.path(), "ok").is_ok());
        assert!(matches!(context_path(d.path(), "../etc/passwd"), Err(LayerError::LeavesContext { .. })));
        std::os::unix::fs::symlink("/etc", d.path().join("escape")).expect("link");
        assert!(matches!(context_path(d.path(), "escape/passwd"), Err(LayerError::LeavesContext { .. })));
    }

    #[test]
    fn cache_keys_separate_their_parts() {
        assert_ne!(cache_key(&["ab", "c"]), cache_key(&["a", "bc"]));
        assert_eq!(cache_key(&["x"]).len(), 32);
    }
}
