//! The server's way into a volume's files, for the file APIs. Sandboxes
//! write these trees too, so every client path is resolved with
//! `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)`
//! relative to the volume root's descriptor: `..` and absolute symlinks
//! planted by a sandbox resolve inside the volume (a link to `/etc` means
//! the volume's own `/etc`), magic links and other mounts are refused, and
//! nothing below ever names a host path built from client input. Final
//! components are created, renamed and removed with the `*at` calls on a
//! parent descriptor, which never follow a link in the name itself.
//!
//! Clients' paths must not contain `..` at all (refused before any
//! lookup): resolution would keep them inside, but a path that says "go
//! up" is a client bug worth a clear 400.
//!
//! Blocking; the service runs these on the blocking pool.

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Canonical uid/gid of the templates' `user`: what files written through
/// the API belong to unless the client says otherwise.
pub const USER_ID: u32 = 1000;

const RESOLVE_NO_XDEV: u64 = 0x01;
const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_IN_ROOT: u64 = 0x10;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("invalid path {path:?}: {why}")]
    BadPath { path: String, why: &'static str },
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> FsError {
    let what = what.into();
    move |source| FsError::Io { what, source }
}

impl FsError {
    pub fn errno(&self) -> Option<i32> {
        match self {
            FsError::Io { source, .. } => source.raw_os_error(),
            FsError::BadPath { .. } => None,
        }
    }
}

/// A client's path inside a volume, checked: relative components only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolPath {
    comps: Vec<OsString>,
}

impl VolPath {
    /// `/a/b`, `a/b`, `/a//b/` all name `a/b`; `/` and `` the root. `..`
    /// and NUL bytes are refused.
    pub fn parse(p: &str) -> Result<Self, FsError> {
        if p.contains('\0') {
            return Err(FsError::BadPath { path: p.into(), why: "contains a NUL byte" });
        }
        let mut comps = Vec::new();
        for c in p.split('/') {
            match c {
                "" | "." => {}
                ".." => return Err(FsError::BadPath { path: p.into(), why: "'..' is not allowed" }),
                c => comps.push(OsString::from(c)),
            }
        }
        Ok(Self { comps })
    }

    pub fn is_root(&self) -> bool {
        self.comps.is_empty()
    }

    fn rel(&self) -> PathBuf {
        self.comps.iter().collect()
    }

    fn parent(&self) -> Option<(VolPath, &OsStr)> {
        let (last, rest) = self.comps.split_last()?;
        Some((VolPath { comps: rest.to_vec() }, last.as_os_str()))
    }

    pub fn name(&self) -> String {
        self.comps.last().map(|c| c.to_string_lossy().into_owned()).unwrap_or_else(|| "/".into())
    }

    /// As the APIs show it: absolute inside the volume.
    pub fn display(&self) -> String {
        let mut s = String::new();
        for c in &self.comps {
            s.push('/');
            s.push_str(&c.to_string_lossy());
        }
        if s.is_empty() {
            s.push('/');
        }
        s
    }

    pub fn join(&self, name: &OsStr) -> VolPath {
        let mut comps = self.comps.clone();
        comps.push(name.to_os_string());
        VolPath { comps }
    }
}

#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

fn cstr(b: &[u8]) -> io::Result<CString> {
    CString::new(b).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// A volume's root, opened once per operation.
pub struct Root {
    fd: OwnedFd,
}

impl Root {
    pub fn open(dir: &Path) -> Result<Self, FsError> {
        let f = File::open(dir).map_err(io_err(format!("opening volume root {}", dir.display())))?;
        Ok(Self { fd: f.into() })
    }

    /// `openat2` of `p` inside the root.
    fn open_at(&self, p: &VolPath, flags: i32, mode: u32) -> io::Result<OwnedFd> {
        let rel = p.rel();
        let c = cstr(if rel.as_os_str().is_empty() { b"." } else { rel.as_os_str().as_bytes() })?;
        let how = OpenHow { flags: (flags | libc::O_CLOEXEC) as u64, mode: u64::from(mode), resolve: RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV };
        // SAFETY: openat2 with a NUL-terminated path and a fully initialised
        // open_how of the size passed.
        let fd = unsafe { libc::syscall(libc::SYS_openat2, self.fd.as_raw_fd(), c.as_ptr(), &how as *const OpenHow, std::mem::size_of::<OpenHow>()) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    fn dir(&self, p: &VolPath) -> io::Result<OwnedFd> {
        self.open_at(p, libc::O_PATH | libc::O_DIRECTORY, 0)
    }

    /// The directory `p`, created with its missing parents (owned by
    /// `uid:gid`) when `create` is set.
    fn dir_creating(&self, p: &VolPath, create: bool, uid: u32, gid: u32) -> io::Result<OwnedFd> {
        match self.dir(p) {
            Err(e) if create && e.raw_os_error() == Some(libc::ENOENT) => {
                let Some((parent, name)) = p.parent() else { return Err(e) };
                let pfd = self.dir_creating(&parent, true, uid, gid)?;
                match mkdirat(&pfd, name, 0o755, uid, gid) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                    Err(e) => return Err(e),
                }
                self.dir(p)
            }
            r => r,
        }
    }

    /// Stat of `p` itself (a symlink is reported as one).
    pub fn stat(&self, p: &VolPath) -> Result<Entry, FsError> {
        let ctx = || format!("stat {}", p.display());
        let (fd, name) = match p.parent() {
            None => (self.dir(p).map_err(io_err(ctx()))?, OsStr::new(".")),
            Some((parent, name)) => (self.dir(&parent).map_err(io_err(ctx()))?, name),
        };
        entry_at(&fd, name, p.clone()).map_err(io_err(ctx()))
    }

    /// The entries of directory `p`, `depth` levels down (1: its children).
    pub fn list(&self, p: &VolPath, depth: u32) -> Result<Vec<Entry>, FsError> {
        let ctx = || format!("listing {}", p.display());
        let fd = self.open_at(p, libc::O_RDONLY | libc::O_DIRECTORY, 0).map_err(io_err(ctx()))?;
        let mut out = Vec::new();
        list_into(&fd, p, depth.max(1), &mut out).map_err(io_err(ctx()))?;
        out.sort_by_key(|e| e.path.display());
        Ok(out)
    }

    /// Creates directory `p` (and its parents with `parents`); EEXIST when
    /// something is there.
    pub fn mkdir(&self, p: &VolPath, parents: bool, uid: u32, gid: u32, mode: u32) -> Result<Entry, FsError> {
        let ctx = || format!("creating directory {}", p.display());
        let Some((parent, name)) = p.parent() else { return Err(FsError::Io { what: ctx(), source: io::Error::from_raw_os_error(libc::EEXIST) }) };
        let pfd = self.dir_creating(&parent, parents, uid, gid).map_err(io_err(ctx()))?;
        mkdirat(&pfd, name, mode & 0o7777, uid, gid).map_err(io_err(ctx()))?;
        self.stat(p)
    }

    /// A new temporary file beside `p` (parents created when missing), to
    /// be filled and then `commit`ted over `p`: readers never see half a file,
    /// and a failed upload leaves nothing behind.
    pub fn begin_write(&self, p: &VolPath, uid: u32, gid: u32, mode: u32) -> Result<Pending, FsError> {
        let ctx = || format!("writing {}", p.display());
        let Some((parent, name)) = p.parent() else { return Err(FsError::Io { what: ctx(), source: io::Error::from_raw_os_error(libc::EISDIR) }) };
        let pfd = self.dir_creating(&parent, true, USER_ID, USER_ID).map_err(io_err(ctx()))?;
        let tmp = OsString::from(format!(".airlock-upload-{}", crate::ids::access_token().map_err(|e| FsError::Io { what: ctx(), source: io::Error::other(e) })?));
        let c = cstr(tmp.as_bytes()).map_err(io_err(ctx()))?;
        // SAFETY: openat on a directory fd we own with a plain NUL-terminated name.
        let fd = unsafe { libc::openat(pfd.as_raw_fd(), c.as_ptr(), libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC, 0o600) };
        if fd < 0 {
            return Err(FsError::Io { what: ctx(), source: io::Error::last_os_error() });
        }
        // SAFETY: a new descriptor nothing else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        let pending = Pending { parent: pfd, tmp, name: name.to_os_string(), path: p.clone(), file: Some(file), done: false };
        let f = pending.file.as_ref().map(|f| f.as_raw_fd()).unwrap_or(-1);
        // SAFETY: fchown/fchmod on the descriptor just opened.
        if unsafe { libc::fchown(f, uid, gid) } != 0 || unsafe { libc::fchmod(f, (mode & 0o7777) as libc::mode_t) } != 0 {
            return Err(FsError::Io { what: ctx(), source: io::Error::last_os_error() });
        }
        Ok(pending)
    }

    /// A regular file to read.
    pub fn open_read(&self, p: &VolPath) -> Result<File, FsError> {
        let ctx = || format!("reading {}", p.display());
        let fd = self.open_at(p, libc::O_RDONLY | libc::O_NONBLOCK, 0).map_err(io_err(ctx()))?;
        let f = File::from(fd);
        let md = f.metadata().map_err(io_err(ctx()))?;
        if md.is_dir() {
            return Err(FsError::Io { what: ctx(), source: io::Error::from_raw_os_error(libc::EISDIR) });
        }
        if !md.is_file() {
            return Err(FsError::Io { what: ctx(), source: io::Error::from_raw_os_error(libc::EINVAL) });
        }
        Ok(f)
    }

    /// Removes `p`: a file or link, an empty directory, or with `recursive`
    /// a whole tree (walked by descriptor, never through a link).
    pub fn remove(&self, p: &VolPath, recursive: bool) -> Result<(), FsError> {
        let ctx = || format!("removing {}", p.display());
        let Some((parent, name)) = p.parent() else { return Err(FsError::BadPath { path: "/".into(), why: "the volume's root cannot be removed" }) };
        let pfd = self.dir(&parent).map_err(io_err(ctx()))?;
        remove_at(&pfd, name, recursive).map_err(io_err(ctx()))
    }

    /// Changes owner and mode of `p` (a final symlink is followed, inside the volume).
    pub fn set_meta(&self, p: &VolPath, uid: Option<u32>, gid: Option<u32>, mode: Option<u32>) -> Result<Entry, FsError> {
        let ctx = || format!("changing {}", p.display());
        let fd = self.open_at(p, libc::O_PATH, 0).map_err(io_err(ctx()))?;
        let empty = c"";
        if uid.is_some() || gid.is_some() {
            let (u, g) = (uid.map(|u| u as libc::uid_t).unwrap_or(u32::MAX), gid.map(|g| g as libc::gid_t).unwrap_or(u32::MAX));
            // SAFETY: fchownat(AT_EMPTY_PATH) on an O_PATH fd we own.
            if unsafe { libc::fchownat(fd.as_raw_fd(), empty.as_ptr(), u, g, libc::AT_EMPTY_PATH) } != 0 {
                return Err(FsError::Io { what: ctx(), source: io::Error::last_os_error() });
            }
        }
        if let Some(m) = mode {
            // chmod has no AT_EMPTY_PATH before fchmodat2 (Linux 6.6): go
            // through our own descriptor's /proc entry, which names exactly
            // the inode opened above and is no client input.
            std::fs::set_permissions(format!("/proc/self/fd/{}", fd.as_raw_fd()), std::os::unix::fs::PermissionsExt::from_mode(m & 0o7777)).map_err(io_err(ctx()))?;
        }
        self.stat(p)
    }
}

/// An upload in progress (see `Root::begin_write`): removed on drop unless committed.
pub struct Pending {
    parent: OwnedFd,
    tmp: OsString,
    name: OsString,
    pub path: VolPath,
    file: Option<File>,
    done: bool,
}

impl Pending {
    pub fn take_file(&mut self) -> Option<File> {
        self.file.take()
    }

    /// Moves the finished file into place; with `replace` false an existing
    /// entry fails with EEXIST.
    pub fn commit(mut self, replace: bool) -> Result<(), FsError> {
        let ctx = || format!("writing {}", self.path.display());
        let (a, b) = (cstr(self.tmp.as_bytes()).map_err(io_err(ctx()))?, cstr(self.name.as_bytes()).map_err(io_err(ctx()))?);
        let flags = if replace { 0 } else { libc::RENAME_NOREPLACE };
        // SAFETY: renameat2 within one directory fd we own, plain names.
        if unsafe { libc::renameat2(self.parent.as_raw_fd(), a.as_ptr(), self.parent.as_raw_fd(), b.as_ptr(), flags) } != 0 {
            return Err(FsError::Io { what: ctx(), source: io::Error::last_os_error() });
        }
        // Renamed: nothing left for drop to remove.
        self.done = true;
        Ok(())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if let Ok(c) = cstr(self.tmp.as_bytes()) {
            // SAFETY: unlinkat of our own temporary name in a directory fd we own.
            unsafe { libc::unlinkat(self.parent.as_raw_fd(), c.as_ptr(), 0) };
        }
    }
}

/// One entry, as both file APIs need it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub path: VolPath,
    pub kind: Kind,
    pub size: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime: (i64, u32),
    pub mtime: (i64, u32),
    pub ctime: (i64, u32),
    pub target: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Other,
}

fn mkdirat(dir: &OwnedFd, name: &OsStr, mode: u32, uid: u32, gid: u32) -> io::Result<()> {
    let c = cstr(name.as_bytes())?;
    // SAFETY: mkdirat/fchownat on a directory fd we own and a plain NUL-terminated name.
    unsafe {
        if libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), mode as libc::mode_t) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::fchownat(dir.as_raw_fd(), c.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // mkdir's mode passes through the umask; the client's mode should not.
    let fd = openat_plain(dir, name, libc::O_PATH | libc::O_DIRECTORY)?;
    std::fs::set_permissions(format!("/proc/self/fd/{}", fd.as_raw_fd()), std::os::unix::fs::PermissionsExt::from_mode(mode))
}

/// `openat` of a plain name, never following a link in it.
fn openat_plain(dir: &OwnedFd, name: &OsStr, flags: i32) -> io::Result<OwnedFd> {
    let c = cstr(name.as_bytes())?;
    // SAFETY: openat on a directory fd we own with a plain NUL-terminated name.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), flags | libc::O_NOFOLLOW | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn entry_at(dir: &OwnedFd, name: &OsStr, path: VolPath) -> io::Result<Entry> {
    let c = cstr(name.as_bytes())?;
    // SAFETY: a zeroed stat filled by fstatat on a directory fd we own.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstatat(dir.as_raw_fd(), c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let kind = match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => Kind::File,
        libc::S_IFDIR => Kind::Dir,
        libc::S_IFLNK => Kind::Symlink,
        _ => Kind::Other,
    };
    let target = if kind == Kind::Symlink {
        let mut buf = vec![0u8; 4096];
        // SAFETY: readlinkat into a buffer of the length passed.
        let n = unsafe { libc::readlinkat(dir.as_raw_fd(), c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        (n >= 0).then(|| String::from_utf8_lossy(&buf[..n as usize]).into_owned())
    } else {
        None
    };
    Ok(Entry {
        path,
        kind,
        size: st.st_size as u64,
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        atime: (st.st_atime, st.st_atime_nsec as u32),
        mtime: (st.st_mtime, st.st_mtime_nsec as u32),
        ctime: (st.st_ctime, st.st_ctime_nsec as u32),
        target,
    })
}

/// Names in an open directory, without `.` and `..` and our own
/// in-flight uploads.
fn names(dir: &OwnedFd) -> io::Result<Vec<OsString>> {
    // The descriptor's own /proc entry: exactly the directory opened, no
    // client path involved.
    let mut v = Vec::new();
    for e in std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))? {
        let n = e?.file_name();
        if !n.as_bytes().starts_with(b".airlock-upload-") {
            v.push(n);
        }
    }
    Ok(v)
}

fn list_into(dir: &OwnedFd, at: &VolPath, depth: u32, out: &mut Vec<Entry>) -> io::Result<()> {
    for n in names(dir)? {
        let e = match entry_at(dir, &n, at.join(&n)) {
            Ok(e) => e,
            // Gone between readdir and stat: a sandbox is writing.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(e),
        };
        let descend = e.kind == Kind::Dir && depth > 1;
        let p = e.path.clone();
        out.push(e);
        if descend {
            if let Ok(sub) = openat_plain(dir, &n, libc::O_RDONLY | libc::O_DIRECTORY) {
                list_into(&sub, &p, depth - 1, out)?;
            }
        }
    }
    Ok(())
}

fn remove_at(dir: &OwnedFd, name: &OsStr, recursive: bool) -> io::Result<()> {
    let c = cstr(name.as_bytes())?;
    // SAFETY: unlinkat of a plain name in a directory fd we own.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EISDIR) {
        return Err(e);
    }
    if recursive {
        let sub = openat_plain(dir, name, libc::O_RDONLY | libc::O_DIRECTORY)?;
        for n in names(&sub)? {
            remove_at(&sub, &n, true)?;
        }
    }
    // SAFETY: as above, for a directory.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), libc::AT_REMOVEDIR) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// (bytes, files) under `root`, walked by descriptor. Symlinks count as
/// files and are never followed.
pub fn totals(root: &Root) -> (u64, u64) {
    fn walk(dir: &OwnedFd, acc: &mut (u64, u64), depth: u32) {
        let Ok(ns) = names(dir) else { return };
        for n in ns {
            let Ok(e) = entry_at(dir, &n, VolPath { comps: Vec::new() }) else { continue };
            match e.kind {
                Kind::Dir if depth < 256 => {
                    if let Ok(sub) = openat_plain(dir, &n, libc::O_RDONLY | libc::O_DIRECTORY) {
                        walk(&sub, acc, depth + 1);
                    }
                }
                Kind::Dir => {}
                _ => {
                    acc.0 += e.size;
                    acc.1 += 1;
                }
            }
        }
    }
    let mut acc = (0, 0);
    if let Ok(fd) = root.open_at(&VolPath { comps: Vec::new() }, libc::O_RDONLY | libc::O_DIRECTORY, 0) {
        walk(&fd, &mut acc, 0);
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_checked_and_normalised() {
        assert_eq!(VolPath::parse("/a//b/./c/").expect("ok").display(), "/a/b/c");
        assert!(VolPath::parse("/").expect("root").is_root());
        assert!(VolPath::parse("/a/../b").is_err());
        assert!(VolPath::parse("..").is_err());
        assert!(VolPath::parse("a\0b").is_err());
    }

    #[test]
    fn planted_symlinks_stay_inside_the_root() {
        let dir = tempfile::tempdir().expect("tmp");
        std::os::unix::fs::symlink("/etc", dir.path().join("evil")).expect("link");
        std::os::unix::fs::symlink("../../../../etc/passwd", dir.path().join("up")).expect("link");
        let root = Root::open(dir.path()).expect("root");
        let e = root.open_read(&VolPath::parse("/evil/passwd").expect("p")).expect_err("no host /etc");
        assert_eq!(e.errno(), Some(libc::ENOENT));
        assert_eq!(root.open_read(&VolPath::parse("/up").expect("p")).expect_err("clamped").errno(), Some(libc::ENOENT));
        assert!(root.list(&VolPath::parse("/evil").expect("p"), 1).is_err());
        // Writing through the link lands inside the volume, never in /etc:
        // it dangles there until the volume has an etc of its own.
        assert!(root.begin_write(&VolPath::parse("/evil/x").expect("p"), 0, 0, 0o644).is_err());
        std::fs::create_dir(dir.path().join("etc")).expect("mkdir");
        let mut w = root.begin_write(&VolPath::parse("/evil/x").expect("p"), 0, 0, 0o644).expect("write");
        use std::io::Write;
        w.take_file().expect("file").write_all(b"hi").expect("write");
        w.commit(true).expect("commit");
        assert!(!Path::new("/etc/x").exists());
        assert_eq!(std::fs::read(dir.path().join("etc/x")).expect("inside"), b"hi");
        // The link itself is what stat and remove see.
        assert_eq!(root.stat(&VolPath::parse("/evil").expect("p")).expect("stat").kind, Kind::Symlink);
        root.remove(&VolPath::parse("/evil").expect("p"), true).expect("rm");
        assert!(Path::new("/etc/passwd").exists());
    }

    #[test]
    fn failed_writes_leave_nothing_and_noreplace_refuses() {
        let dir = tempfile::tempdir().expect("tmp");
        let root = Root::open(dir.path()).expect("root");
        let p = VolPath::parse("/d/f").expect("p");
        drop(root.begin_write(&p, 0, 0, 0o644).expect("begin"));
        assert_eq!(std::fs::read_dir(dir.path().join("d")).expect("dir").count(), 0, "abandoned upload removed");
        root.begin_write(&p, 0, 0, 0o644).expect("begin").commit(false).expect("first");
        let e = root.begin_write(&p, 0, 0, 0o644).expect("begin").commit(false).expect_err("exists");
        assert_eq!(e.errno(), Some(libc::EEXIST));
        assert_eq!(std::fs::read_dir(dir.path().join("d")).expect("dir").count(), 1);
        assert_eq!(root.list(&VolPath::parse("/").expect("p"), 2).expect("list").len(), 2);
        assert_eq!(totals(&root), (0, 1));
    }
}
