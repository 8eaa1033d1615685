//! Helpers shared by the fuzz targets: an in-memory HTTP body fed in
//! chunks, and a mount-namespace jail for the targets that unpack archives.

use std::collections::VecDeque;
use std::ffi::CString;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;

/// An HTTP body that hands out fixed chunks, then ends.
pub struct Chunks(pub VecDeque<Bytes>);

impl Chunks {
    /// `data` cut into pieces of `size` bytes (at least one).
    pub fn split(data: &[u8], size: usize) -> Self {
        Chunks(data.chunks(size.max(1)).map(Bytes::copy_from_slice).collect())
    }
}

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(http_body::Frame::data(b))))
    }
}

/// Runs a future that never waits on anything outside itself to completion.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().build().expect("runtime").block_on(f)
}

/// One entry of a `snapshot`: relative path, kind, contents (or link
/// target), and mode, owner, mtime and link count.
pub type Entry = (String, char, Vec<u8>, [i64; 5]);

/// Everything a tree holds, sorted: what the escape checks compare before
/// and after. Paths under `skip` (relative) are left out.
pub fn snapshot(root: &std::path::Path, skip: &[&str]) -> Vec<Entry> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(md) = std::fs::symlink_metadata(&p) else { continue };
        let rel = p.strip_prefix(root).unwrap_or(&p).to_string_lossy().into_owned();
        if skip.contains(&rel.as_str()) {
            continue;
        }
        let m = [i64::from(md.mode()), i64::from(md.uid()), i64::from(md.gid()), md.mtime(), md.nlink() as i64];
        if md.is_symlink() {
            out.push((rel, 'l', std::fs::read_link(&p).map(|t| t.into_os_string().into_encoded_bytes()).unwrap_or_default(), m));
        } else if md.is_dir() {
            // A directory's own mtime changes when entries come and go; its
            // entries are compared instead.
            out.push((rel, 'd', Vec::new(), [m[0], m[1], m[2], 0, 0]));
            if let Ok(rd) = std::fs::read_dir(&p) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        } else if md.is_file() {
            out.push((rel, 'f', std::fs::read(&p).unwrap_or_default(), m));
        } else {
            out.push((rel, 'o', Vec::new(), m));
        }
    }
    out.sort();
    out
}

/// Confines the process before an archive target runs: a private mount
/// namespace in which every mount is read-only except a fresh tmpfs (the
/// directory returned, where the targets unpack) and the fuzz directory
/// (corpus and crash artifacts). An unpacker that escapes its root can then only break
/// things the check after each run sees, never the machine's files.
///
/// As root this must succeed (root could otherwise destroy the host); as
/// another user the jail is entered through a user namespace if the
/// kernel allows, else the target runs unconfined with a warning.
pub fn jail() -> std::path::PathBuf {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    // Under the (ignored) work directory, not /tmp: the empty mount point
    // stays behind after the run.
    let scratch = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("work").join(format!("jail-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&scratch);
    match enter_jail(root, &scratch) {
        Ok(()) => {}
        Err(e) if root => panic!("cannot confine the archive fuzz target ({e}); refusing to unpack hostile archives as root without it"),
        Err(e) => eprintln!("warning: archive fuzz target runs unconfined: {e}"),
    }
    scratch
}

fn check(r: libc::c_int, what: &str) -> Result<(), String> {
    if r == 0 {
        Ok(())
    } else {
        Err(format!("{what}: {}", std::io::Error::last_os_error()))
    }
}

fn enter_jail(root: bool, scratch: &std::path::Path) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    let tmp = CString::new(scratch.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    let fuzz_dir = CString::new(env!("CARGO_MANIFEST_DIR")).map_err(|e| e.to_string())?;
    let (uid, gid) = (
        // SAFETY: no preconditions.
        unsafe { libc::geteuid() },
        // SAFETY: no preconditions.
        unsafe { libc::getegid() },
    );
    let flags = if root { libc::CLONE_NEWNS } else { libc::CLONE_NEWNS | libc::CLONE_NEWUSER };
    // SAFETY: unshare with constant flags.
    check(unsafe { libc::unshare(flags) }, "unshare")?;
    if !root {
        let _ = std::fs::write("/proc/self/setgroups", "deny");
        std::fs::write("/proc/self/uid_map", format!("{uid} {uid} 1")).map_err(|e| format!("uid_map: {e}"))?;
        std::fs::write("/proc/self/gid_map", format!("{gid} {gid} 1")).map_err(|e| format!("gid_map: {e}"))?;
    }
    let none = c"none";
    let slash = c"/";
    let tmpfs = c"tmpfs";
    // SAFETY: mount(2) with NUL-terminated strings we own; null data.
    unsafe {
        check(libc::mount(none.as_ptr(), slash.as_ptr(), std::ptr::null(), libc::MS_REC | libc::MS_PRIVATE, std::ptr::null()), "making mounts private")?;
        check(libc::mount(fuzz_dir.as_ptr(), fuzz_dir.as_ptr(), std::ptr::null(), libc::MS_BIND | libc::MS_REC, std::ptr::null()), "binding the fuzz directory")?;
        check(libc::mount(tmpfs.as_ptr(), tmp.as_ptr(), tmpfs.as_ptr(), 0, c"size=256m".as_ptr().cast()), "mounting the scratch tmpfs")?;
    }
    set_attr(slash, libc::AT_RECURSIVE as u32, MOUNT_ATTR_RDONLY, 0)?;
    set_attr(&fuzz_dir, 0, 0, MOUNT_ATTR_RDONLY)?;
    set_attr(&tmp, 0, 0, MOUNT_ATTR_RDONLY)?;
    // Proof, not hope: the host's files are now out of reach.
    // SAFETY: access(2) with a NUL-terminated path.
    if unsafe { libc::access(c"/etc".as_ptr(), libc::W_OK) } == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EROFS) {
        return Err("/etc is still writable".into());
    }
    Ok(())
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;

use libc::mount_attr as MountAttr;

fn set_attr(path: &std::ffi::CStr, flags: u32, set: u64, clr: u64) -> Result<(), String> {
    let attr = MountAttr { attr_set: set, attr_clr: clr, propagation: 0, userns_fd: 0 };
    // SAFETY: mount_setattr(2) with a NUL-terminated path and a struct of
    // the size we pass.
    let r = unsafe { libc::syscall(libc::SYS_mount_setattr, libc::AT_FDCWD, path.as_ptr(), flags, &attr as *const MountAttr, std::mem::size_of::<MountAttr>()) };
    check(if r == 0 { 0 } else { -1 }, &format!("mount_setattr {}", path.to_string_lossy()))
}

/// A directory around the one an archive target unpacks into, with
/// things to break outside it: `outside/` holds a file, a directory with a
/// file, and an empty directory. Archives can name them by relative links
/// (`../outside`) since the layout is fixed.
pub fn arena(base: &std::path::Path) -> tempfile::TempDir {
    let t = tempfile::Builder::new().prefix("arena").tempdir_in(base).expect("arena");
    let o = t.path().join("outside");
    std::fs::create_dir_all(o.join("sub")).expect("mkdir");
    std::fs::create_dir_all(o.join("empty")).expect("mkdir");
    std::fs::write(o.join("canary"), b"canary").expect("write");
    std::fs::write(o.join("sub/canary"), b"canary").expect("write");
    std::fs::write(t.path().join("canary"), b"canary").expect("write");
    t
}

/// Asserts two snapshots are equal, naming only the entries that differ.
pub fn assert_same(before: &[Entry], after: &[Entry], what: &str) {
    if before != after {
        let gone: Vec<&str> = before.iter().filter(|e| !after.contains(e)).map(|e| e.0.as_str()).collect();
        let new: Vec<&str> = after.iter().filter(|e| !before.contains(e)).map(|e| e.0.as_str()).collect();
        panic!("{what}: changed or removed {gone:?}, changed or created {new:?}");
    }
}
