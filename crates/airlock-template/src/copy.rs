//! Faithful tree copies: what a snapshot takes of a sandbox's writable
//! layer. Unlike a `COPY` (which owns everything by one user), this keeps
//! what the sandbox made: modes with their set-id bits, hard links, holes
//! in sparse files, symlinks, FIFOs, overlay whiteouts (character devices
//! 0:0) and opaque directories (`trusted.overlay.*` and `user.*` xattrs),
//! and times; ownership moves from the sandbox's host id range to
//! canonical ids on the way, so the copy can be any sandbox's layer.
//!
//! `security.*` xattrs are not copied: file capabilities written inside a
//! user namespace name that namespace's root and would mean something else
//! in another sandbox, and nothing else in that namespace is ours to keep.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// What a copy moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyStats {
    /// Entries created (files, directories, links, ...).
    pub entries: u64,
    /// Bytes of file data copied (holes not counted).
    pub bytes: u64,
}

/// How host ids map to the copy's ids.
#[derive(Debug, Clone, Copy)]
pub struct IdShift {
    /// First host id of the source's range (its root).
    pub base: u32,
    /// Size of the range; ids outside it become `nobody` (65534).
    pub count: u32,
}

impl IdShift {
    /// Identity: ids are kept as they are.
    pub const NONE: IdShift = IdShift { base: 0, count: u32::MAX };

    pub fn map(self, id: u32) -> u32 {
        if id >= self.base && id - self.base < self.count {
            id - self.base
        } else {
            65534
        }
    }
}

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Copies `src` (a directory) to `dst` (which must not exist), shifting
/// ownership. `skip` names paths relative to `src` left out of the copy.
/// On error `dst` may hold a partial copy: the caller builds aside and
/// removes it (see `layer::install`).
pub fn copy_tree(src: &Path, dst: &Path, shift: IdShift, skip: &[&Path]) -> io::Result<CopyStats> {
    let mut c = Copier { shift, links: HashMap::new(), dirs: Vec::new(), stats: CopyStats::default() };
    c.entry(src, dst, Path::new(""), skip)?;
    // Directory times last: creating their entries changed them.
    for (d, md) in c.dirs.iter().rev() {
        set_times(d, md)?;
    }
    Ok(c.stats)
}

struct Copier {
    shift: IdShift,
    /// Hard-linked sources seen so far: (dev, ino) → where the copy is.
    links: HashMap<(u64, u64), PathBuf>,
    dirs: Vec<(PathBuf, fs::Metadata)>,
    stats: CopyStats,
}

impl Copier {
    /// One entry, its errors naming the path (the kind is kept, so a full
    /// disk is still `StorageFull` to the caller).
    fn entry(&mut self, src: &Path, dst: &Path, rel: &Path, skip: &[&Path]) -> io::Result<()> {
        self.entry_inner(src, dst, rel, skip).map_err(|e| if e.to_string().starts_with('/') { e } else { io::Error::new(e.kind(), format!("/{}: {e}", rel.display())) })
    }

    fn entry_inner(&mut self, src: &Path, dst: &Path, rel: &Path, skip: &[&Path]) -> io::Result<()> {
        let md = fs::symlink_metadata(src)?;
        let ft = md.file_type();
        let (uid, gid) = (self.shift.map(md.uid()), self.shift.map(md.gid()));
        let cdst = cstr(dst)?;
        if ft.is_dir() {
            fs::create_dir(dst)?;
            // SAFETY: lchown/chmod on a NUL-terminated path we built.
            unsafe {
                check(libc::lchown(cdst.as_ptr(), uid, gid))?;
                // After the chown, which clears set-id bits.
                check(libc::chmod(cdst.as_ptr(), md.mode() & 0o7777))?;
            }
            copy_xattrs(src, dst)?;
            self.stats.entries += 1;
            let mut names: Vec<_> = fs::read_dir(src)?.map(|e| e.map(|e| e.file_name())).collect::<io::Result<_>>()?;
            names.sort();
            for n in names {
                let r = rel.join(&n);
                if skip.iter().any(|s| *s == r) {
                    continue;
                }
                self.entry(&src.join(&n), &dst.join(&n), &r, skip)?;
            }
            self.dirs.push((dst.to_path_buf(), md));
            return Ok(());
        }
        if md.nlink() > 1 && !ft.is_dir() {
            if let Some(first) = self.links.get(&(md.dev(), md.ino())) {
                fs::hard_link(first, dst)?;
                return Ok(());
            }
            self.links.insert((md.dev(), md.ino()), dst.to_path_buf());
        }
        if ft.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(src)?, dst)?;
            // SAFETY: lchown on a NUL-terminated path we built.
            unsafe { check(libc::lchown(cdst.as_ptr(), uid, gid))? };
        } else if ft.is_file() {
            let s = File::open(src)?;
            let d = OpenOptions::new().write(true).create_new(true).mode(0o600).open(dst)?;
            self.stats.bytes += copy_sparse(&s, &d)?;
            // SAFETY: fchown/fchmod on a descriptor we own.
            unsafe {
                check(libc::fchown(d.as_raw_fd(), uid, gid))?;
                check(libc::fchmod(d.as_raw_fd(), md.mode() & 0o7777))?;
            }
            copy_xattrs(src, dst)?;
        } else if ft.is_char_device() && md.rdev() == 0 {
            // An overlay whiteout: the file was deleted from a lower layer.
            // SAFETY: mknod/lchown on a NUL-terminated path we built.
            unsafe {
                check(libc::mknod(cdst.as_ptr(), libc::S_IFCHR | (md.mode() & 0o7777), 0))?;
                check(libc::lchown(cdst.as_ptr(), uid, gid))?;
            }
            copy_xattrs(src, dst)?;
        } else if ft.is_fifo() {
            // SAFETY: as above.
            unsafe {
                check(libc::mkfifo(cdst.as_ptr(), md.mode() & 0o7777))?;
                check(libc::lchown(cdst.as_ptr(), uid, gid))?;
            }
        } else {
            // Sockets die with their process; real devices cannot be made
            // inside a sandbox at all.
            tracing::debug!(path = %src.display(), "not copied: socket or device");
            return Ok(());
        }
        set_times(dst, &md)?;
        self.stats.entries += 1;
        Ok(())
    }
}

fn set_times(p: &Path, md: &fs::Metadata) -> io::Result<()> {
    let c = cstr(p)?;
    let ts = [
        libc::timespec { tv_sec: md.atime() as libc::time_t, tv_nsec: md.atime_nsec() as _ },
        libc::timespec { tv_sec: md.mtime() as libc::time_t, tv_nsec: md.mtime_nsec() as _ },
    ];
    // SAFETY: utimensat with a NUL-terminated path and two valid timespecs.
    check(unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ts.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) })
}

/// Whether an xattr is one a layer keeps (see the module comment).
pub(crate) fn kept_xattr(name: &[u8]) -> bool {
    name.starts_with(b"trusted.overlay.") || name.starts_with(b"user.")
}

fn copy_xattrs(src: &Path, dst: &Path) -> io::Result<()> {
    let (cs, cd) = (cstr(src)?, cstr(dst)?);
    let mut names = vec![0u8; 4096];
    // SAFETY: llistxattr into a buffer of the length we pass.
    let n = unsafe { libc::llistxattr(cs.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if matches!(e.raw_os_error(), Some(libc::ENOTSUP)) { Ok(()) } else { Err(e) };
    }
    names.truncate(n as usize);
    let mut value = vec![0u8; 65536];
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty() && kept_xattr(n)) {
        let cname = CString::new(name).map_err(|_| io::Error::other("xattr name"))?;
        // SAFETY: lgetxattr into a buffer of the length we pass.
        let len = unsafe { libc::lgetxattr(cs.as_ptr(), cname.as_ptr(), value.as_mut_ptr().cast(), value.len()) };
        if len < 0 {
            continue; // removed meanwhile
        }
        // SAFETY: lsetxattr with a value of the length lgetxattr returned.
        check(unsafe { libc::lsetxattr(cd.as_ptr(), cname.as_ptr(), value.as_ptr().cast(), len as usize, 0) })?;
    }
    Ok(())
}

/// Copies the data of `s` into `d` (a new, empty file), extent by extent:
/// holes stay holes. Returns the bytes copied.
pub fn copy_sparse(s: &File, d: &File) -> io::Result<u64> {
    let len = s.metadata()?.len();
    d.set_len(len)?;
    let mut pos: i64 = 0;
    let mut copied = 0;
    let mut in_kernel = true;
    let mut buf = vec![0u8; 1 << 20];
    while (pos as u64) < len {
        // SAFETY: lseek on a descriptor we own.
        let data = unsafe { libc::lseek(s.as_raw_fd(), pos, libc::SEEK_DATA) };
        if data < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break; // only a hole is left
            }
            return Err(e);
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(s.as_raw_fd(), data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(io::Error::last_os_error());
        }
        let (mut off_in, mut off_out) = (data, data);
        let mut left = (hole - data) as usize;
        while left > 0 {
            let n = if in_kernel {
                // SAFETY: copy_file_range between two descriptors we own, with
                // offsets we own.
                let n = unsafe { libc::copy_file_range(s.as_raw_fd(), &mut off_in, d.as_raw_fd(), &mut off_out, left, 0) };
                if n < 0 {
                    let e = io::Error::last_os_error();
                    // Across filesystems (a sandbox's disk image to the
                    // layer store) the kernel may refuse: copy by hand.
                    if matches!(e.raw_os_error(), Some(libc::EXDEV | libc::ENOSYS | libc::EOPNOTSUPP | libc::EINVAL)) && copied == 0 && off_in == data {
                        in_kernel = false;
                        continue;
                    }
                    return Err(e);
                }
                n as usize
            } else {
                use std::os::unix::fs::FileExt;
                let want = left.min(buf.len());
                let n = s.read_at(&mut buf[..want], off_in as u64)?;
                d.write_all_at(&buf[..n], off_out as u64)?;
                off_in += n as i64;
                off_out += n as i64;
                n
            };
            if n == 0 {
                break; // the file shrank under us
            }
            left -= n;
            copied += n as u64;
        }
        pos = hole;
    }
    Ok(copied)
}

/// Whether a directory has no entries (a missing one counts as empty).
pub fn is_empty_dir(p: &Path) -> bool {
    fs::read_dir(p).map(|mut rd| rd.next().is_none()).unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_keep_links_holes_whiteouts_modes_and_shift_ids() {
        let t = tempfile::tempdir().expect("tmp");
        let src = t.path().join("src");
        fs::create_dir_all(src.join("d/sub")).expect("mkdir");
        fs::write(src.join("d/a"), b"hello").expect("write");
        fs::hard_link(src.join("d/a"), src.join("d/b")).expect("link");
        std::os::unix::fs::symlink("a", src.join("d/l")).expect("symlink");
        let f = File::create(src.join("sparse")).expect("create");
        f.set_len(256 << 20).expect("len");
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"tail", (256 << 20) - 4).expect("write");
        drop(f);
        let wh = cstr(&src.join("gone")).expect("c");
        // SAFETY: mknod of a whiteout in our temporary directory.
        assert_eq!(unsafe { libc::mknod(wh.as_ptr(), libc::S_IFCHR, 0) }, 0, "mknod (run as root)");
        fs::write(src.join("skipme"), b"x").expect("write");
        fs::write(src.join("suid"), b"#!").expect("write");
        let base = 1 << 20;
        for p in ["d", "d/a", "d/sub", "sparse", "gone", "suid"] {
            std::os::unix::fs::lchown(src.join(p), Some(base + 1000), Some(base + 1000)).expect("chown");
        }
        std::os::unix::fs::lchown(src.join("d/l"), Some(7), Some(7)).expect("chown");
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(src.join("suid"), fs::Permissions::from_mode(0o4755)).expect("chmod");
        let c = cstr(&src.join("d/sub")).expect("c");
        // SAFETY: lsetxattr of an opaque marker on our temporary directory.
        unsafe { libc::lsetxattr(c.as_ptr(), c"trusted.overlay.opaque".as_ptr(), b"y".as_ptr().cast(), 1, 0) };

        let dst = t.path().join("dst");
        let stats = copy_tree(&src, &dst, IdShift { base, count: 65536 }, &[Path::new("skipme")]).expect("copy");
        assert_eq!(fs::read(dst.join("d/b")).expect("read"), b"hello");
        let (a, b) = (fs::metadata(dst.join("d/a")).expect("md"), fs::metadata(dst.join("d/b")).expect("md"));
        assert_eq!(a.ino(), b.ino(), "hard links stay one file");
        assert_eq!(a.uid(), 1000, "ids move to canonical ones");
        assert_eq!(fs::symlink_metadata(dst.join("d/l")).expect("md").uid(), 65534, "ids outside the range become nobody");
        assert_eq!(fs::read_link(dst.join("d/l")).expect("link"), Path::new("a"));
        let sp = fs::metadata(dst.join("sparse")).expect("md");
        assert_eq!(sp.len(), 256 << 20);
        assert!(sp.blocks() * 512 < 1 << 20, "holes stay holes");
        assert!(stats.bytes < 1 << 20);
        let g = fs::symlink_metadata(dst.join("gone")).expect("md");
        assert!(g.file_type().is_char_device() && g.rdev() == 0, "whiteouts are kept");
        assert!(!dst.join("skipme").exists());
        assert_eq!(fs::metadata(dst.join("suid")).expect("md").mode() & 0o7777, 0o4755, "set-id bits survive the chown");
        let c = cstr(&dst.join("d/sub")).expect("c");
        let mut v = [0u8; 4];
        // SAFETY: lgetxattr into a 4-byte buffer.
        let n = unsafe { libc::lgetxattr(c.as_ptr(), c"trusted.overlay.opaque".as_ptr(), v.as_mut_ptr().cast(), v.len()) };
        assert_eq!(n, 1, "opaque directories stay opaque");
        assert!(copy_tree(&src, &dst, IdShift::NONE, &[]).is_err(), "never copies over an existing tree");
    }
}
