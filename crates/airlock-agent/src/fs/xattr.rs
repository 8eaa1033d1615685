//! File metadata as extended attributes: the `user.e2b.*` namespace holds the
//! key/value pairs that `/files` uploads attach and that `EntryInfo.metadata`
//! reports, with the prefix stripped.
//!
//! Only this namespace is read or written; other attributes (ACLs, security
//! labels, other users' `user.*` keys) are never touched. Filesystems without
//! xattr support read as "no metadata" rather than as an error, so listing a
//! directory on such a filesystem still works.

use std::collections::BTreeMap;
use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The namespace E2B metadata lives in.
pub const PREFIX: &str = "user.e2b.";

/// Longest metadata key: the kernel's 255-byte xattr name limit minus the prefix.
pub const MAX_KEY_LEN: usize = 255 - PREFIX.len();

/// Where an xattr call is aimed: a path (following symlinks, like `stat`)
/// or an open file.
#[derive(Clone, Copy)]
enum Target<'a> {
    Path(&'a CStr),
    Fd(BorrowedFd<'a>),
}

/// Reads the metadata of `path`, following symlinks.
pub fn read_path(path: &Path) -> io::Result<BTreeMap<String, String>> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    read(Target::Path(&c))
}

/// Reads the metadata of an open file.
pub fn read_fd(fd: BorrowedFd<'_>) -> io::Result<BTreeMap<String, String>> {
    read(Target::Fd(fd))
}

/// Makes the open file's metadata exactly `want`: keys no longer wanted are
/// removed, and only keys whose value changes are written, so an upload that
/// keeps the same metadata causes no attribute-change events for watchers.
pub fn replace_fd(fd: BorrowedFd<'_>, want: &BTreeMap<String, String>) -> io::Result<()> {
    let have = match read(Target::Fd(fd)) {
        Ok(m) => m,
        // Nothing can be stored here, so nothing needs clearing; asking to
        // store something is an error the caller reports.
        Err(e) if unsupported(&e) && want.is_empty() => return Ok(()),
        Err(e) => return Err(e),
    };
    for key in have.keys().filter(|k| !want.contains_key(*k)) {
        let name = attr_name(key)?;
        // SAFETY: `name` is a valid NUL-terminated string and the fd is
        // borrowed, so it stays open for the duration of the call.
        let r = unsafe { libc::fremovexattr(fd.as_raw_fd(), name.as_ptr()) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ENODATA) {
                return Err(e);
            }
        }
    }
    for (key, value) in want {
        if have.get(key) == Some(value) {
            continue;
        }
        let name = attr_name(key)?;
        // SAFETY: `name` is NUL-terminated, `value` points to `value.len()`
        // readable bytes, and the fd is borrowed for the call.
        let r = unsafe { libc::fsetxattr(fd.as_raw_fd(), name.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Whether an error means the filesystem cannot store xattrs at all.
pub fn unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOTSUP))
}

fn attr_name(key: &str) -> io::Result<CString> {
    CString::new(format!("{PREFIX}{key}")).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn read(t: Target<'_>) -> io::Result<BTreeMap<String, String>> {
    let names = match list(t) {
        Ok(n) => n,
        Err(e) if unsupported(&e) => return Ok(BTreeMap::new()),
        Err(e) => return Err(e),
    };
    let mut out = BTreeMap::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let Some(key) = name.strip_prefix(PREFIX.as_bytes()) else { continue };
        let Ok(cname) = CString::new(name) else { continue };
        // Removed between the listing and the read: simply not there.
        let Some(value) = get(t, &cname)? else { continue };
        out.insert(String::from_utf8_lossy(key).into_owned(), String::from_utf8_lossy(&value).into_owned());
    }
    Ok(out)
}

/// Calls a size-query-then-fill xattr function, retrying when the value
/// grows between the two calls (`ERANGE`).
fn sized(mut call: impl FnMut(*mut libc::c_void, usize) -> isize) -> io::Result<Vec<u8>> {
    for _ in 0..4 {
        let n = call(std::ptr::null_mut(), 0);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; n as usize];
        let m = call(buf.as_mut_ptr().cast(), buf.len());
        if m >= 0 {
            buf.truncate(m as usize);
            return Ok(buf);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ERANGE) {
            return Err(e);
        }
    }
    Err(io::Error::from_raw_os_error(libc::ERANGE))
}

fn list(t: Target<'_>) -> io::Result<Vec<u8>> {
    sized(|buf, len| match t {
        // SAFETY: `p` is NUL-terminated and `buf` is either null with
        // `len == 0` (a size query) or valid for `len` writable bytes.
        Target::Path(p) => unsafe { libc::listxattr(p.as_ptr(), buf.cast(), len) },
        // SAFETY: as above; the fd is borrowed for the call.
        Target::Fd(fd) => unsafe { libc::flistxattr(fd.as_raw_fd(), buf.cast(), len) },
    })
}

fn get(t: Target<'_>, name: &CStr) -> io::Result<Option<Vec<u8>>> {
    let r = sized(|buf, len| match t {
        // SAFETY: `p` and `name` are NUL-terminated and `buf` is either null
        // with `len == 0` or valid for `len` writable bytes.
        Target::Path(p) => unsafe { libc::getxattr(p.as_ptr(), name.as_ptr(), buf, len) },
        // SAFETY: as above; the fd is borrowed for the call.
        Target::Fd(fd) => unsafe { libc::fgetxattr(fd.as_raw_fd(), name.as_ptr(), buf, len) },
    });
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.raw_os_error() == Some(libc::ENODATA) => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn replace_sets_and_clears_only_our_namespace() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        let file = std::fs::File::create(&path).expect("create");
        let mut want = BTreeMap::new();
        want.insert("author".to_string(), "mish".to_string());
        match replace_fd(file.as_fd(), &want) {
            Ok(()) => {}
            // Some CI filesystems (older tmpfs) cannot hold user xattrs.
            Err(e) if unsupported(&e) => return,
            Err(e) => panic!("replace: {e}"),
        }
        assert_eq!(read_path(&path).expect("read"), want);
        replace_fd(file.as_fd(), &BTreeMap::new()).expect("clear");
        assert!(read_fd(file.as_fd()).expect("read").is_empty());
    }
}
