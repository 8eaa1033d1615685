//! Opening paths that code inside the sandbox controls, without handing it
//! the agent's own view of the kernel.
//!
//! The agent runs as PID 1 and holds host-side things: its executable (the
//! host's `airlock` binary), its memory maps (host paths), its log. A
//! symlink planted inside to `/proc/self/exe`, `/proc/self/fd/N` or
//! `/proc/1/maps` would make a `/files` read or write reach them. So every
//! path from a client is opened with `openat2(RESOLVE_NO_MAGICLINKS)` (no
//! `/proc/*/fd`, `exe`, `cwd`, `root`, `ns` jumps at any component), and a
//! file that turns out to live in `/proc/<agent's pid or thread>/` is
//! refused: other processes' `/proc` entries are the sandbox's own
//! business, the agent's are not.
//!
//! It does not confine paths to a directory: the agent's root is already
//! the sandbox's root.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const PROC_SUPER_MAGIC: i64 = 0x9fa0;

#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// `open(2)` for a client's path: `flags` and `mode` as for `open`
/// (`O_CLOEXEC` is added). Magic links anywhere on the way fail with
/// `ELOOP`; the agent's own `/proc` entries with `EACCES`.
pub fn open(path: &Path, flags: i32, mode: u32) -> io::Result<File> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let how = OpenHow { flags: (flags | libc::O_CLOEXEC) as u64, mode: u64::from(mode), resolve: RESOLVE_NO_MAGICLINKS };
    // SAFETY: openat2 with a NUL-terminated path and a fully initialised
    // open_how of the size passed.
    let fd = unsafe { libc::syscall(libc::SYS_openat2, libc::AT_FDCWD, c.as_ptr(), &how as *const OpenHow, std::mem::size_of::<OpenHow>()) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openat2 returned a new descriptor that nothing else owns.
    let file = unsafe { File::from_raw_fd(fd as i32) };
    if is_agents_own_proc(&file)? {
        return Err(io::Error::from_raw_os_error(libc::EACCES));
    }
    Ok(file)
}

/// The path an open file really has, as the kernel resolved it.
pub fn real_path(file: &File) -> io::Result<PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

fn is_agents_own_proc(file: &File) -> io::Result<bool> {
    // SAFETY: fstatfs into a zeroed struct on a descriptor we own.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above: the struct is ours and large enough.
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if st.f_type as i64 != PROC_SUPER_MAGIC {
        return Ok(false);
    }
    let real = real_path(file)?;
    Ok(names_agent_task(&real, |pid| tgid_of(pid) == Some(std::process::id())))
}

/// Whether `/proc/<n>/...` names a task of the agent's thread group.
/// Anything under `/proc` that the check cannot place is refused too.
fn names_agent_task(real: &Path, is_agent: impl Fn(u32) -> bool) -> bool {
    let mut comps = real.components().skip(1);
    if comps.next().map(|c| c.as_os_str()) != Some(std::ffi::OsStr::new("proc")) {
        // Not under /proc as the agent sees it: another procfs mount, which
        // the sandbox cannot make. Refuse rather than guess.
        return true;
    }
    match comps.next().and_then(|c| c.as_os_str().to_str()).map(|s| s.parse::<u32>()) {
        Some(Ok(pid)) => is_agent(pid),
        // /proc/meminfo, /proc/sys/...: not per process.
        _ => false,
    }
}

fn tgid_of(pid: u32) -> Option<u32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find_map(|l| l.strip_prefix("Tgid:")).and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_links_are_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let link = dir.path().join("exe");
        std::os::unix::fs::symlink("/proc/self/exe", &link).expect("symlink");
        let e = open(&link, libc::O_RDONLY, 0).expect_err("magic link");
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
        let fd = dir.path().join("fd");
        std::os::unix::fs::symlink("/proc/self/fd/0", &fd).expect("symlink");
        assert!(open(&fd, libc::O_RDONLY, 0).is_err());
        // Ordinary links still work.
        std::fs::write(dir.path().join("f"), b"x").expect("write");
        std::os::unix::fs::symlink(dir.path().join("f"), dir.path().join("l")).expect("symlink");
        assert!(open(&dir.path().join("l"), libc::O_RDONLY, 0).is_ok());
    }

    #[test]
    fn own_proc_entries_are_refused_and_others_allowed() {
        let e = open(Path::new("/proc/self/status"), libc::O_RDONLY, 0).expect_err("own /proc");
        assert_eq!(e.raw_os_error(), Some(libc::EACCES));
        assert!(open(Path::new(&format!("/proc/{}/maps", std::process::id())), libc::O_RDONLY, 0).is_err());
        assert!(open(Path::new("/proc/meminfo"), libc::O_RDONLY, 0).is_ok());
        assert!(names_agent_task(Path::new("/proc/1/maps"), |p| p == 1));
        assert!(!names_agent_task(Path::new("/proc/7/maps"), |p| p == 1));
        assert!(!names_agent_task(Path::new("/proc/cpuinfo"), |_| true));
    }
}
