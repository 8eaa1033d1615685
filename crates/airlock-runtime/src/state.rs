//! What the namespace backend keeps on disk per sandbox, so a new process
//! (a restarted server) can find running sandboxes again: the launch
//! configuration handed to `init`, and the state written once PID 1 is up.
//! Files are replaced atomically (write to a temporary file, then rename).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Resources;

/// One sandbox's veth addressing (a /30 per sandbox).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetAssign {
    pub host_if: String,
    pub host_ip: Ipv4Addr,
    pub sandbox_ip: Ipv4Addr,
    pub prefix: u8,
}

/// Everything `init` needs; written by the backend before it starts `init`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LaunchConfig {
    pub id: String,
    /// The sandbox's directory on the host.
    pub dir: PathBuf,
    /// Read-only root layers, topmost first.
    pub root_layers: Vec<PathBuf>,
    /// Read-only `/usr` layers, topmost first.
    pub usr_layers: Vec<PathBuf>,
    /// Host uid/gid that root inside the sandbox maps to; 65536 ids follow.
    pub id_base: u32,
    pub hostname: String,
    pub net: Option<NetAssign>,
    pub resources: Resources,
    pub default_user: String,
    /// Default working directory (the template's `WORKDIR`).
    #[serde(default)]
    pub workdir: Option<String>,
    pub env: BTreeMap<String, String>,
    pub access_token: Option<String>,
    /// Volumes bound into the root before `pivot_root`; kept here so a
    /// restart mounts them again.
    #[serde(default)]
    pub volumes: Vec<crate::VolumeMount>,
    /// The `sudo` shim's layer (`crate::shim`), when the backend made one.
    #[serde(default)]
    pub sudo_layer: Option<PathBuf>,
    /// `SandboxSpec::top_layers`, kept so a restart mounts them again.
    #[serde(default)]
    pub top_layers: Vec<PathBuf>,
}

/// Written by the launcher once the agent listens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    pub pid: u32,
    /// Start time of `pid` in clock ticks since boot (`/proc/<pid>/stat`
    /// field 22): tells a live sandbox from an unrelated process that
    /// reused its pid after a reboot.
    pub start_time: u64,
    /// The sandbox's veth address, when it has network access: kept here
    /// so finding a sandbox (on every proxied request) reads one file.
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
}

/// Why a sandbox failed before its agent was ready.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BootError {
    pub stage: String,
    pub errno: Option<i32>,
    pub message: String,
}

pub const LAUNCH_FILE: &str = "launch.json";
pub const STATE_FILE: &str = "state.json";
pub const BOOT_ERROR_FILE: &str = "boot-error.json";
pub const SOCKET_FILE: &str = "agent.sock";
pub const LOG_FILE: &str = "agent.log";

/// Writes `v` as JSON to `path`, atomically and readable by root only:
/// `launch.json` holds the sandbox's access token.
pub fn write_json<T: Serialize>(path: &Path, v: &T) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        // No fsync: the rename makes the replacement atomic, and a crash
        // that loses the newest write also lost the processes it describes.
        f.write_all(&serde_json::to_vec_pretty(v).map_err(std::io::Error::other)?)?;
    }
    std::fs::rename(&tmp, path)
}

/// Creates `dir` (and its parents) if needed and makes it private to root:
/// the data directory holds every sandbox's token and socket.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o7777;
    if mode != 0o700 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> std::io::Result<T> {
    let data = std::fs::read(path)?;
    serde_json::from_slice(&data).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Field 22 of `/proc/<pid>/stat`, or None if the process does not exist.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses; the
    // fields after the last ')' are fixed.
    let rest = &s[s.rfind(')')? + 2..];
    let mut f = rest.split_whitespace();
    // A zombie has exited: only its parent has not collected it yet (the
    // host's init may reap orphans late), so it counts as gone.
    if matches!(f.next(), Some("Z") | Some("X")) {
        return None;
    }
    f.nth(18)?.parse().ok()
}

/// A count of background jobs not yet done, which a caller can wait for
/// (destroys' clean-up: see `namespace::settle`).
pub(crate) struct Pending {
    count: std::sync::Mutex<usize>,
    done: std::sync::Condvar,
}

impl Pending {
    pub(crate) const fn new() -> Self {
        Self { count: std::sync::Mutex::new(0), done: std::sync::Condvar::new() }
    }

    pub(crate) fn add(&self) {
        *self.count.lock().unwrap_or_else(|p| p.into_inner()) += 1;
    }

    pub(crate) fn finish(&self) {
        let mut n = self.count.lock().unwrap_or_else(|p| p.into_inner());
        *n = n.saturating_sub(1);
        self.done.notify_all();
    }

    /// Waits until none is left, or until `deadline`.
    pub(crate) fn wait(&self, deadline: std::time::Instant) {
        let mut n = self.count.lock().unwrap_or_else(|p| p.into_inner());
        while *n > 0 {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            n = self.done.wait_timeout(n, left).unwrap_or_else(|p| p.into_inner()).0;
        }
    }
}

/// True when `state` still describes a live process.
pub fn is_alive(state: &RunState) -> bool {
    process_start_time(state.pid) == Some(state.start_time)
}

/// A pidfd of the process `state` describes, if it is alive (checked
/// after opening, so the descriptor cannot name a reused pid).
pub fn pidfd(state: &RunState) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes a pid and flags; it returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, state.pid as libc::c_int, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: a new descriptor nobody else owns.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
    is_alive(state).then_some(fd)
}

/// Waits until the process behind `pidfd` has exited (a zombie counts),
/// at most `timeout`; true if it has.
pub fn wait_exit(pidfd: &std::os::fd::OwnedFd, timeout: std::time::Duration) -> bool {
    use std::os::fd::AsRawFd;
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let mut p = libc::pollfd { fd: pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: poll on one valid pollfd.
        let r = unsafe { libc::poll(&mut p, 1, left.as_millis().min(i32::MAX as u128) as i32) };
        if r > 0 {
            return true;
        }
        if r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return r > 0;
        }
    }
}
