//! The base mount namespace sandboxes are made from.
//!
//! Each sandbox with a disk limit adds one mount to the host (its ext4
//! image on `<sandbox>/upper`), and volumes add theirs. A new sandbox's
//! `unshare(CLONE_NEWNS)` copies every mount of the namespace it leaves, and
//! its `pivot_root` detaches them all again, so with the server's own
//! namespace as the parent each create cost time in proportion to the
//! sandboxes already running (unshare alone: 4 ms with 22 mounts, 8 ms
//! with 1,022).
//!
//! So PID 1 leaves from a namespace of its own instead: a private copy of
//! the host's, made once when the backend starts, with the mounts Airlock
//! makes per sandbox and volume (under `sandboxes/`, `trash/` and
//! `volumes/` of the data directory) taken out. It holds the host's few
//! dozen mounts however many sandboxes run. Being private, it is a
//! snapshot: a filesystem the host mounts later is not in it (layers
//! are read through it, so template storage must be mounted before the
//! server starts), and one the host unmounts stays referenced by it until
//! the server stops. What PID 1 needs of the host's
//! per-sandbox mounts (its own disk image, its volumes) it clones as
//! detached trees before it enters the base namespace (`rootfs::Tree`);
//! template layers are directories, there as on the host.
//!
//! The namespace lives as long as the descriptor the backend holds; the
//! launcher receives it on `BASE_FD` (announced by `BASE_ENV`) and PID 1
//! closes it once it has entered.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// Where the launcher finds the base namespace's descriptor.
pub const BASE_FD: i32 = 3;
/// Set (to `BASE_FD`) in the launcher's environment when it was given one.
pub const BASE_ENV: &str = "AIRLOCK_BASE_MNTNS_FD";

/// `NS_GET_NSTYPE`: which kind of namespace an nsfs descriptor is.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// Makes the base namespace: a private copy of the caller's with every
/// mount strictly below `data_root` removed. Runs on a thread of its own
/// (a thread may unshare its mount namespace; the process keeps its own),
/// which ends once it has opened the namespace.
pub fn create(data_root: &Path) -> std::io::Result<OwnedFd> {
    let root = data_root.canonicalize()?;
    std::thread::Builder::new().name("airlock-mntns".into()).spawn(move || build(&root))?.join().map_err(|_| std::io::Error::other("the base mount namespace's thread panicked"))?
}

/// The directories of the data directory whose mounts are per sandbox or
/// per volume.
const PER_SANDBOX: &[&str] = &["sandboxes", "trash", "volumes"];

/// A mount point as mountinfo prints it: space, tab, newline and
/// backslash are octal escapes (`\040`).
fn unescape(field: &str) -> std::path::PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    std::path::PathBuf::from(std::ffi::OsString::from_vec(out))
}

fn build(root: &Path) -> std::io::Result<OwnedFd> {
    // SAFETY: unshare with a flag only; it applies to this thread, which
    // gets a private fs_struct with it.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    nix::mount::mount(None::<&str>, "/", None::<&str>, nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE, None::<&str>).map_err(std::io::Error::from)?;
    let info = std::fs::read_to_string("/proc/thread-self/mountinfo")?;
    let dirs: Vec<std::path::PathBuf> = PER_SANDBOX.iter().map(|d| root.join(d)).collect();
    let mut below: Vec<std::path::PathBuf> =
        info.lines().filter_map(|l| l.split_whitespace().nth(4)).map(unescape).filter(|p| dirs.iter().any(|d| p.starts_with(d) && p != d)).collect();
    // Deepest first, so each is a leaf when it goes; the same point can
    // carry a stack of mounts, hence the loop.
    below.sort_by(|a, b| b.components().count().cmp(&a.components().count()).then(a.cmp(b)));
    below.dedup();
    for p in &below {
        while nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH).is_ok() {}
    }
    let f = std::fs::File::open("/proc/thread-self/ns/mnt")?;
    Ok(OwnedFd::from(f))
}

/// Whether `fd` is a mount-namespace descriptor (what the launcher checks
/// before it trusts fd 3).
pub fn is_mount_ns(fd: i32) -> bool {
    // SAFETY: ioctl on a descriptor number; a wrong one only fails.
    unsafe { libc::ioctl(fd, NS_GET_NSTYPE) == libc::CLONE_NEWNS }
}

/// Enters the namespace behind `fd` (PID 1, single-threaded, host root).
pub fn enter(fd: &OwnedFd) -> std::io::Result<()> {
    // SAFETY: setns on a namespace descriptor we own.
    if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNS) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Takes the inherited `BASE_FD` when the environment announces it and it
/// is what it claims; closes it otherwise. Called before anything else
/// in the launcher, which closes every other inherited descriptor.
pub fn take_inherited() -> Option<OwnedFd> {
    let announced = std::env::var(BASE_ENV).ok().and_then(|v| v.parse::<i32>().ok()) == Some(BASE_FD);
    if announced && is_mount_ns(BASE_FD) {
        // SAFETY: fd 3 is open (the ioctl succeeded) and nothing else in
        // this fresh process owns it; close-on-exec so it never outlives
        // an exec.
        unsafe {
            libc::fcntl(BASE_FD, libc::F_SETFD, libc::FD_CLOEXEC);
            Some(OwnedFd::from_raw_fd(BASE_FD))
        }
    } else {
        // SAFETY: closing a descriptor number this process does not use.
        unsafe { libc::close(BASE_FD) };
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape("/data/air\\040lock/sandboxes/x/upper"), Path::new("/data/air lock/sandboxes/x/upper"));
        assert_eq!(unescape("/a\\011b\\012c\\134d"), Path::new("/a\tb\nc\\d"));
        // Not an escape: kept as it is.
        assert_eq!(unescape("/a\\09"), Path::new("/a\\09"));
        assert_eq!(unescape("/plain"), Path::new("/plain"));
    }
}
