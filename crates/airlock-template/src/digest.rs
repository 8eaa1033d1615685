//! Content digests of layers: what a cluster node checks a layer it
//! fetched from another node against.
//!
//! The digest is SHA-256 over the layer's `root/` and `usr/` trees in the
//! export archive's order (names sorted), covering for every entry what
//! the archive carries and a sandbox can see: its path, type, permission
//! bits, canonical owner, kept xattrs and content (a file's bytes, a
//! link's target). Times are left out (they do not change what runs, and
//! filesystems round them), and so is a part that is empty or absent, so
//! the digest of a layer unpacked from an archive equals the digest of the
//! layer it was written from.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use sha2::{Digest, Sha256};

/// The file beside a layer's trees that caches its digest (layers are
/// never changed once made, so it stays true).
const SIDECAR: &str = "sha256";

/// The digest of the layer directory `layer` (holding `root/` and maybe
/// `usr/`), as 64 lowercase hex digits.
pub fn layer_digest(layer: &Path) -> io::Result<String> {
    let mut h = Sha256::new();
    h.update(b"airlock-layer-v1\0");
    let mut buf = vec![0u8; 256 * 1024];
    for part in ["root", "usr"] {
        let p = layer.join(part);
        // An empty part is no part: unpacking makes both, whatever the
        // archive held.
        if p.is_dir() && !crate::copy::is_empty_dir(&p) {
            entry(&mut h, &p, part.as_bytes(), &mut buf)?;
        }
    }
    Ok(hex(&h.finalize()))
}

/// The cached digest of `layer`, computing and caching it when there is none.
pub fn cached_layer_digest(layer: &Path) -> io::Result<String> {
    let side = layer.join(SIDECAR);
    if let Ok(s) = fs::read_to_string(&side) {
        let s = s.trim();
        if valid(s) {
            return Ok(s.to_string());
        }
    }
    let d = layer_digest(layer)?;
    record(layer, &d)?;
    Ok(d)
}

/// Records `digest` as `layer`'s (after checking it).
pub fn record(layer: &Path, digest: &str) -> io::Result<()> {
    let tmp = layer.join(format!(".{SIDECAR}.tmp"));
    fs::write(&tmp, digest)?;
    fs::rename(&tmp, layer.join(SIDECAR))
}

/// The digest recorded for `layer`, if one is.
pub fn recorded(layer: &Path) -> Option<String> {
    fs::read_to_string(layer.join(SIDECAR)).ok().map(|s| s.trim().to_string()).filter(|s| valid(s))
}

/// Whether `s` is a digest as [`layer_digest`] writes them.
pub fn valid(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// One entry and, for a directory, everything under it. Every field is
/// length-prefixed so that no two different trees hash alike.
fn entry(h: &mut Sha256, p: &Path, name: &[u8], buf: &mut [u8]) -> io::Result<()> {
    let md = fs::symlink_metadata(p)?;
    let ft = md.file_type();
    let kind: u8 = if ft.is_dir() {
        b'd'
    } else if ft.is_file() {
        b'f'
    } else if ft.is_symlink() {
        b'l'
    } else if ft.is_char_device() && md.rdev() == 0 {
        b'w'
    } else if ft.is_fifo() {
        b'p'
    } else {
        // The archive leaves other kinds out; so does the digest.
        return Ok(());
    };
    field(h, name);
    h.update([kind]);
    h.update((md.mode() & 0o7777).to_le_bytes());
    h.update(md.uid().to_le_bytes());
    h.update(md.gid().to_le_bytes());
    let xattrs = crate::archive::kept_xattrs(p)?;
    h.update((xattrs.len() as u64).to_le_bytes());
    for (k, v) in &xattrs {
        field(h, k.as_bytes());
        field(h, v);
    }
    match kind {
        b'f' => {
            h.update(md.len().to_le_bytes());
            let mut f = fs::File::open(p)?;
            let mut n = 0u64;
            loop {
                let k = f.read(buf)?;
                if k == 0 {
                    break;
                }
                h.update(&buf[..k]);
                n += k as u64;
            }
            if n != md.len() {
                return Err(io::Error::other(format!("{} changed while its digest was taken", p.display())));
            }
        }
        b'l' => {
            use std::os::unix::ffi::OsStrExt;
            field(h, fs::read_link(p)?.as_os_str().as_bytes());
        }
        b'd' => {
            let mut names: Vec<_> = fs::read_dir(p)?.map(|e| e.map(|e| e.file_name())).collect::<io::Result<_>>()?;
            names.sort();
            h.update((names.len() as u64).to_le_bytes());
            for n in names {
                use std::os::unix::ffi::OsStrExt;
                let mut child = name.to_vec();
                child.push(b'/');
                child.extend_from_slice(n.as_bytes());
                entry(h, &p.join(&n), &child, buf)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn field(h: &mut Sha256, b: &[u8]) {
    h.update((b.len() as u64).to_le_bytes());
    h.update(b);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layer_unpacked_from_its_archive_has_its_digest_and_any_change_shows() {
        let t = tempfile::tempdir().expect("tmp");
        let layer = t.path().join("layer");
        fs::create_dir_all(layer.join("root/etc")).expect("mkdir");
        fs::create_dir_all(layer.join("usr/bin")).expect("mkdir");
        fs::write(layer.join("root/etc/motd"), b"hello").expect("write");
        fs::write(layer.join("usr/bin/tool"), b"#!/bin/sh\n").expect("write");
        fs::set_permissions(layer.join("usr/bin/tool"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
        std::os::unix::fs::symlink("motd", layer.join("root/etc/issue")).expect("symlink");
        let d = layer_digest(&layer).expect("digest");
        assert!(valid(&d), "{d}");
        assert_eq!(cached_layer_digest(&layer).expect("cached"), d);
        assert_eq!(recorded(&layer).as_deref(), Some(d.as_str()));

        let archive = crate::archive::write(&layer, b"{}", Vec::new()).expect("write");
        let out = t.path().join("out");
        crate::archive::read(&archive[..], &out, 1 << 20).expect("read");
        assert_eq!(layer_digest(&out).expect("digest"), d, "the same tree after a round trip");

        fs::write(out.join("root/etc/motd"), b"hellO").expect("write");
        let changed = layer_digest(&out).expect("digest");
        assert_ne!(changed, d, "a changed byte");
        fs::write(out.join("root/etc/motd"), b"hello").expect("write");
        assert_eq!(layer_digest(&out).expect("digest"), d, "restored");
        fs::set_permissions(out.join("usr/bin/tool"), std::os::unix::fs::PermissionsExt::from_mode(0o4755)).expect("chmod");
        assert_ne!(layer_digest(&out).expect("digest"), d, "a setuid bit");
        fs::set_permissions(out.join("usr/bin/tool"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
        fs::rename(out.join("root/etc/motd"), out.join("root/etc/motE")).expect("rename");
        assert_ne!(layer_digest(&out).expect("digest"), d, "a renamed file");
        // The sidecar itself is not part of the layer.
        fs::rename(out.join("root/etc/motE"), out.join("root/etc/motd")).expect("rename");
        record(&out, &d).expect("record");
        assert_eq!(layer_digest(&out).expect("digest"), d);
    }
}
