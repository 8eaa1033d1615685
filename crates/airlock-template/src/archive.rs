//! Export archives: a sandbox's state as one file that moves between
//! hosts. A zstd-compressed tar holding, first, `airlock-export.json` (the
//! manifest naming the template the state sits on), then the snapshot
//! layer under `root/` (and `usr/` for templates with a `/usr` layer), with
//! canonical ownership, modes, times, hard links, symlinks, overlay
//! whiteouts and the layer xattrs `copy` keeps (as PAX `SCHILY.xattr.*`).
//!
//! Reading one back trusts nothing: entries must sit under `root/` or
//! `usr/` with no `..` and no absolute paths, link targets must stay inside,
//! only files, directories, links, FIFOs and whiteouts are accepted, ids
//! must be canonical (< 65536), and the unpacked data is bounded.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

/// The manifest's name inside the archive.
pub const MANIFEST: &str = "airlock-export.json";
/// Manifests are small; a bigger one is not ours.
const MAX_MANIFEST: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("not an Airlock export: {0}")]
    Invalid(String),
    #[error("the archive unpacks to more than {0} bytes")]
    TooLarge(u64),
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> ArchiveError {
    let what = what.into();
    move |source| ArchiveError::Io { what, source }
}

/// Writes the archive of `layer` (a directory with `root/` and maybe
/// `usr/`) to `out`, the manifest first.
pub fn write<W: Write>(layer: &Path, manifest: &[u8], out: W) -> io::Result<W> {
    let enc = zstd::stream::write::Encoder::new(out, 3)?;
    let mut b = tar::Builder::new(enc);
    b.follow_symlinks(false);
    let mut h = tar::Header::new_gnu();
    h.set_size(manifest.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0));
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, MANIFEST, manifest)?;
    let mut links = HashMap::new();
    for part in ["root", "usr"] {
        let p = layer.join(part);
        if p.is_dir() {
            append_tree(&mut b, &p, Path::new(part), &mut links)?;
        }
    }
    b.into_inner()?.finish()
}

fn append_tree<W: Write>(b: &mut tar::Builder<W>, src: &Path, name: &Path, links: &mut HashMap<(u64, u64), PathBuf>) -> io::Result<()> {
    let md = fs::symlink_metadata(src)?;
    let ft = md.file_type();
    let xattrs = kept_xattrs(src)?;
    if !xattrs.is_empty() {
        b.append_pax_extensions(xattrs.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?;
    }
    let mut h = tar::Header::new_gnu();
    h.set_mode(md.mode() & 0o7777);
    h.set_uid(md.uid() as u64);
    h.set_gid(md.gid() as u64);
    h.set_mtime(md.mtime().max(0) as u64);
    h.set_size(0);
    if !ft.is_dir() && md.nlink() > 1 {
        if let Some(first) = links.get(&(md.dev(), md.ino())) {
            h.set_entry_type(tar::EntryType::Link);
            return b.append_link(&mut h, name, first);
        }
        links.insert((md.dev(), md.ino()), name.to_path_buf());
    }
    if ft.is_dir() {
        h.set_entry_type(tar::EntryType::Directory);
        b.append_data(&mut h, name, io::empty())?;
        let mut names: Vec<_> = fs::read_dir(src)?.map(|e| e.map(|e| e.file_name())).collect::<io::Result<_>>()?;
        names.sort();
        for n in names {
            append_tree(b, &src.join(&n), &name.join(&n), links)?;
        }
    } else if ft.is_file() {
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(md.len());
        b.append_data(&mut h, name, fs::File::open(src)?)?;
    } else if ft.is_symlink() {
        h.set_entry_type(tar::EntryType::Symlink);
        b.append_link(&mut h, name, fs::read_link(src)?)?;
    } else if ft.is_char_device() && md.rdev() == 0 {
        h.set_entry_type(tar::EntryType::Char);
        h.set_device_major(0)?;
        h.set_device_minor(0)?;
        b.append_data(&mut h, name, io::empty())?;
    } else if ft.is_fifo() {
        h.set_entry_type(tar::EntryType::Fifo);
        b.append_data(&mut h, name, io::empty())?;
    }
    Ok(())
}

pub(crate) fn kept_xattrs(p: &Path) -> io::Result<Vec<(String, Vec<u8>)>> {
    let c = CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::other("NUL in path"))?;
    let mut names = vec![0u8; 4096];
    // SAFETY: llistxattr into a buffer of the length we pass.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n <= 0 {
        return Ok(Vec::new());
    }
    names.truncate(n as usize);
    let mut out = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty() && crate::copy::kept_xattr(n)) {
        let cname = CString::new(name).map_err(|_| io::Error::other("xattr name"))?;
        let mut v = vec![0u8; 65536];
        // SAFETY: lgetxattr into a buffer of the length we pass.
        let len = unsafe { libc::lgetxattr(c.as_ptr(), cname.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
        if len >= 0 {
            v.truncate(len as usize);
            out.push((format!("SCHILY.xattr.{}", String::from_utf8_lossy(name)), v));
        }
    }
    Ok(out)
}

/// Makes a whiteout (character device 0:0) or FIFO at `at`, once its
/// parent is known to be a real directory inside `dest`.
fn special(dest: &Path, at: &Path, whiteout: bool, mode: u32, uid: u32, gid: u32) -> Result<(), ArchiveError> {
    let parent = at.parent().ok_or_else(|| ArchiveError::Invalid("entry without a parent".into()))?;
    let (cp, cd) = (parent.canonicalize().map_err(io_err("unpacking"))?, dest.canonicalize().map_err(io_err("unpacking"))?);
    if !cp.starts_with(&cd) {
        return Err(ArchiveError::Invalid(format!("entry {} leaves the archive", at.display())));
    }
    let c = CString::new(cp.join(at.file_name().unwrap_or_default()).as_os_str().as_bytes()).map_err(|_| ArchiveError::Invalid("NUL in a name".into()))?;
    // SAFETY: mknod/mkfifo/lchown on a NUL-terminated path we built.
    let r = unsafe {
        if whiteout {
            libc::mknod(c.as_ptr(), libc::S_IFCHR | mode, 0)
        } else {
            libc::mkfifo(c.as_ptr(), mode)
        }
    };
    // SAFETY: as above.
    if r != 0 || unsafe { libc::lchown(c.as_ptr(), uid, gid) } != 0 {
        return Err(io_err(format!("unpacking {}", at.display()))(io::Error::last_os_error()));
    }
    Ok(())
}

/// A checked relative path under `root/` or `usr/`.
fn checked(p: &Path) -> Result<PathBuf, ArchiveError> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            _ => return Err(ArchiveError::Invalid(format!("entry {} leaves the archive", p.display()))),
        }
    }
    match out.components().next() {
        Some(Component::Normal(top)) if top == "root" || top == "usr" => Ok(out),
        _ => Err(ArchiveError::Invalid(format!("entry {} is not under root/ or usr/", p.display()))),
    }
}

/// Reads an archive into `dest` (which must not exist), unpacking at most
/// `max_bytes` of file data; returns the manifest's bytes. On error `dest`
/// may hold part of it: the caller unpacks aside and removes it.
pub fn read<R: Read>(input: R, dest: &Path, max_bytes: u64) -> Result<Vec<u8>, ArchiveError> {
    let dec = zstd::stream::read::Decoder::new(input).map_err(io_err("reading the archive"))?;
    let mut a = tar::Archive::new(dec);
    a.set_preserve_permissions(true);
    a.set_preserve_ownerships(true);
    a.set_preserve_mtime(true);
    // Xattrs are applied below, only those a layer keeps.
    a.set_unpack_xattrs(false);
    fs::create_dir(dest).map_err(io_err(format!("creating {}", dest.display())))?;
    for part in ["root", "usr"] {
        fs::create_dir(dest.join(part)).map_err(io_err("creating the layer"))?;
    }
    let mut manifest = None;
    let mut total = 0u64;
    let mut dirs = Vec::new();
    for (i, entry) in a.entries().map_err(io_err("reading the archive"))?.enumerate() {
        let mut e = entry.map_err(|e| ArchiveError::Invalid(format!("corrupt archive: {e}")))?;
        let path = e.path().map_err(|e| ArchiveError::Invalid(format!("entry name: {e}")))?.into_owned();
        if i == 0 {
            if path != Path::new(MANIFEST) || e.size() > MAX_MANIFEST {
                return Err(ArchiveError::Invalid(format!("it must start with {MANIFEST}")));
            }
            let mut m = Vec::new();
            e.read_to_end(&mut m).map_err(io_err("reading the manifest"))?;
            manifest = Some(m);
            continue;
        }
        let rel = checked(&path)?;
        let h = e.header().clone();
        let (uid, gid) = (h.uid().unwrap_or(u64::MAX), h.gid().unwrap_or(u64::MAX));
        if uid >= 65536 || gid >= 65536 {
            return Err(ArchiveError::Invalid(format!("{} has a non-canonical owner {uid}:{gid}", rel.display())));
        }
        match h.entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                total += e.size();
                if total > max_bytes {
                    return Err(ArchiveError::TooLarge(max_bytes));
                }
            }
            tar::EntryType::Directory | tar::EntryType::Symlink | tar::EntryType::Fifo => {}
            tar::EntryType::Link => {
                let target = e.link_name().ok().flatten().ok_or_else(|| ArchiveError::Invalid(format!("{} links to nothing", rel.display())))?;
                checked(&target)?;
            }
            tar::EntryType::Char if h.device_major().ok().flatten() == Some(0) && h.device_minor().ok().flatten() == Some(0) => {}
            other => return Err(ArchiveError::Invalid(format!("{} is a {other:?}, which a layer cannot hold", rel.display()))),
        }
        let xattrs: Vec<(String, Vec<u8>)> = match e.pax_extensions() {
            Ok(Some(exts)) => exts
                .flatten()
                .filter_map(|x| {
                    let k = x.key().ok()?.strip_prefix("SCHILY.xattr.")?.to_string();
                    crate::copy::kept_xattr(k.as_bytes()).then(|| (k, x.value_bytes().to_vec()))
                })
                .collect(),
            _ => Vec::new(),
        };
        let is_dir = h.entry_type() == tar::EntryType::Directory;
        let mtime = h.mtime().unwrap_or(0);
        let at = dest.join(&rel);
        if matches!(h.entry_type(), tar::EntryType::Char | tar::EntryType::Fifo) {
            // The tar reader would make these regular files.
            special(dest, &at, h.entry_type() == tar::EntryType::Char, h.mode().unwrap_or(0) & 0o7777, uid as u32, gid as u32)?;
        // unpack_in refuses paths (and symlinked parents) that leave `dest`.
        } else if !e.unpack_in(dest).map_err(|err| ArchiveError::Invalid(format!("{}: {err}", rel.display())))? {
            return Err(ArchiveError::Invalid(format!("entry {} leaves the archive", rel.display())));
        }
        for (k, v) in xattrs {
            let (c, ck) = (CString::new(at.as_os_str().as_bytes()), CString::new(k));
            if let (Ok(c), Ok(ck)) = (c, ck) {
                // SAFETY: lsetxattr with NUL-terminated strings and a value we own.
                if unsafe { libc::lsetxattr(c.as_ptr(), ck.as_ptr(), v.as_ptr().cast(), v.len(), 0) } != 0 {
                    return Err(io_err(format!("setting xattrs on {}", rel.display()))(io::Error::last_os_error()));
                }
            }
        }
        if is_dir {
            dirs.push((at, mtime));
        }
    }
    // Directory times last: unpacking their entries changed them.
    for (d, mtime) in dirs.into_iter().rev() {
        let t = libc::timespec { tv_sec: mtime as libc::time_t, tv_nsec: 0 };
        if let Ok(c) = CString::new(d.as_os_str().as_bytes()) {
            // SAFETY: utimensat with a NUL-terminated path and two valid timespecs.
            unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), [t, t].as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
        }
    }
    manifest.ok_or_else(|| ArchiveError::Invalid(format!("it must start with {MANIFEST}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archives_round_trip_a_layer_and_refuse_what_escapes() {
        let t = tempfile::tempdir().expect("tmp");
        let layer = t.path().join("layer");
        fs::create_dir_all(layer.join("root/home/user")).expect("mkdir");
        fs::create_dir_all(layer.join("usr")).expect("mkdir");
        fs::write(layer.join("root/home/user/a"), b"data").expect("write");
        fs::hard_link(layer.join("root/home/user/a"), layer.join("root/home/user/b")).expect("link");
        std::os::unix::fs::symlink("a", layer.join("root/home/user/l")).expect("symlink");
        std::os::unix::fs::lchown(layer.join("root/home/user/a"), Some(1000), Some(1000)).expect("chown");
        let wh = CString::new(layer.join("root/gone").as_os_str().as_bytes()).expect("c");
        // SAFETY: mknod of a whiteout in our temporary directory.
        assert_eq!(unsafe { libc::mknod(wh.as_ptr(), libc::S_IFCHR, 0) }, 0);
        let archive = write(&layer, b"{\"version\":1}", Vec::new()).expect("write");

        let out = t.path().join("out");
        let m = read(&archive[..], &out, 1 << 20).expect("read");
        assert_eq!(m, b"{\"version\":1}");
        assert_eq!(fs::read(out.join("root/home/user/b")).expect("read"), b"data");
        let (a, b) = (fs::metadata(out.join("root/home/user/a")).expect("md"), fs::metadata(out.join("root/home/user/b")).expect("md"));
        assert_eq!((a.ino(), a.uid()), (b.ino(), 1000));
        assert_eq!(fs::read_link(out.join("root/home/user/l")).expect("link"), Path::new("a"));
        assert!(fs::symlink_metadata(out.join("root/gone")).expect("md").file_type().is_char_device());
        assert!(matches!(read(&archive[..], &t.path().join("small"), 2), Err(ArchiveError::TooLarge(2))));
        assert!(read(&b"not zstd"[..], &t.path().join("junk"), 1 << 20).is_err());

        // An archive whose entry climbs out is refused, whatever it carries.
        let mut evil = tar::Builder::new(zstd::stream::write::Encoder::new(Vec::new(), 1).expect("zstd"));
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        h.set_entry_type(tar::EntryType::Regular);
        evil.append_data(&mut h, MANIFEST, &b"{}"[..]).expect("manifest");
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_entry_type(tar::EntryType::Regular);
        // Written raw: the builder itself refuses `..`.
        h.as_gnu_mut().expect("gnu").name[..13].copy_from_slice(b"root/../../x\0");
        h.set_cksum();
        evil.append(&h, &b"x"[..]).expect("append");
        let evil = evil.into_inner().expect("tar").finish().expect("zstd");
        let e = read(&evil[..], &t.path().join("evil"), 1 << 20).expect_err("refused");
        assert!(e.to_string().contains("leaves"), "{e}");
        assert!(!t.path().join("x").exists());
    }
}
