//! The sandbox's birth, in a freshly executed `airlock __init` process.
//!
//! The server never forks inside its async runtime; it executes the
//! `airlock` binary again, which runs `launch` single-threaded:
//!
//! 1. the launcher makes the sandbox's user
//!    namespace (through a short-lived helper, so the namespace can be used
//!    for idmapped mounts before anyone lives in it), unshares a pid
//!    namespace and forks;
//! 2. the child, PID 1 of the new pid namespace and still host root,
//!    unshares mount, uts, ipc and net namespaces, builds the root
//!    filesystem, binds the agent's socket on the host path, configures
//!    loopback (and `eth0`, once the launcher has moved it into the
//!    sandbox's cgroups and moved the veth peer in), unshares its cgroup
//!    namespace,
//!    pivots into the new root, enters the user namespace as its root, drops
//!    capabilities, sets `no_new_privs` and installs the seccomp filter;
//! 3. the child reports readiness and becomes the agent; the launcher
//!    records the child's pid and start time and exits, so the sandbox is
//!    nobody's child but init's and outlives whoever asked for it.
//!
//! Every namespace except the user namespace is created by host root, so it
//! is owned by the host's user namespace: root inside the sandbox can't
//! mount, configure the network or change the hostname even without the
//! seccomp filter. A failure at any stage is sent to the launcher with its
//! stage and errno and written to `boot-error.json`.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use crate::cgroup::Cgroups;
use crate::state::{self, BootError, LaunchConfig, RunState};

/// Environment variable carrying the path of `launch.json` to `__init`.
pub const CONFIG_ENV: &str = "AIRLOCK_LAUNCH";

const MSG_NS_READY: u8 = b'N';
const MSG_READY: u8 = b'R';
const MSG_ERROR: u8 = b'E';
const MSG_GO: u8 = b'G';

struct Stage {
    stage: &'static str,
    errno: Option<i32>,
    message: String,
}

impl Stage {
    fn new(stage: &'static str, e: impl std::fmt::Display, errno: Option<i32>) -> Self {
        Self { stage, errno, message: e.to_string() }
    }
    fn io(stage: &'static str, e: std::io::Error) -> Self {
        let errno = e.raw_os_error();
        Self { stage, errno, message: e.to_string() }
    }
    fn to_boot(&self) -> BootError {
        BootError { stage: self.stage.into(), errno: self.errno, message: self.message.clone() }
    }
}

/// An error and its sources, `a: b: c`, for logs and boot reports.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn errno_of<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<i32> {
    let mut cur: Option<&'a (dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            if let Some(n) = io.raw_os_error() {
                return Some(n);
            }
        }
        cur = c.source();
    }
    None
}

fn staged<E: std::error::Error + 'static>(stage: &'static str) -> impl FnOnce(E) -> Stage {
    move |e| Stage { stage, errno: errno_of(&e), message: chain(&e) }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), Stage> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(Stage::io("pipe", std::io::Error::last_os_error()));
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn send(fd: &OwnedFd, kind: u8, payload: &[u8]) {
    let mut msg = Vec::with_capacity(5 + payload.len());
    msg.push(kind);
    msg.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    msg.extend_from_slice(payload);
    let mut f = std::fs::File::from(fd.try_clone().unwrap_or_else(|_| std::process::abort()));
    let _ = f.write_all(&msg);
}

fn recv(fd: &OwnedFd) -> Option<(u8, Vec<u8>)> {
    let mut f = std::fs::File::from(fd.try_clone().ok()?);
    let mut hdr = [0u8; 5];
    f.read_exact(&mut hdr).ok()?;
    let len = u32::from_be_bytes([hdr[1], hdr[2], hdr[3], hdr[4]]) as usize;
    if len > 1 << 20 {
        return None;
    }
    let mut payload = vec![0u8; len];
    f.read_exact(&mut payload).ok()?;
    Some((hdr[0], payload))
}

/// `recv`, but only if a message (or end of file) is already waiting.
fn poll_recv(fd: &OwnedFd) -> Option<(u8, Vec<u8>)> {
    let mut p = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: poll on one valid pollfd, without waiting.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    if n == 1 && p.revents & libc::POLLIN != 0 {
        recv(fd)
    } else {
        None
    }
}

/// The agent, as the binary provides it: takes the bound socket and the
/// configuration, runs until the sandbox ends, returns an exit code.
/// `log` is the host-side `agent.log`, kept off the agent's stdio (which is
/// `/dev/null`) so that no `/proc/1/fd/{1,2}` leads to a host file.
pub type AgentMain = fn(UnixListener, std::fs::File, &LaunchConfig) -> i32;

/// Entry point of `airlock __init <launch.json>`. Returns the launcher's exit
/// code; never returns in the child (it becomes the agent and exits).
pub fn launch(config_path: &Path, agent: AgentMain) -> i32 {
    // Whatever descriptors the caller leaked to us (anything it held without
    // close-on-exec) must never reach the sandbox: PID 1 is forked from this
    // process and would inherit them, and a directory fd is a way out of any
    // root (the CVE-2024-21626 pattern). Close everything but stdio first.
    let base = crate::mntns::take_inherited();
    close_inherited_fds();
    let cfg: LaunchConfig = match state::read_json(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("airlock init: reading {}: {e}", config_path.display());
            return 2;
        }
    };
    let dir = cfg.dir.clone();
    match launcher(&cfg, base, agent) {
        Ok(()) => 0,
        Err(s) => {
            let _ = state::write_json(&dir.join(state::BOOT_ERROR_FILE), &s.to_boot());
            eprintln!("airlock init: {}: {}", s.stage, s.message);
            1
        }
    }
}

fn close_inherited_fds() {
    // Fd 3 is the base mount namespace, checked by `mntns::take_inherited`
    // (or already closed by it).
    let first = crate::mntns::BASE_FD + 1;
    // SAFETY: close_range on fd numbers only; nothing in this process holds
    // descriptors above 3 yet.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first as u32, u32::MAX, 0u32) };
    if rc != 0 {
        // Kernels before 5.9: close what /proc says is open.
        if let Ok(rd) = std::fs::read_dir("/proc/self/fd") {
            let fds: Vec<i32> = rd.flatten().filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok())).filter(|fd| *fd >= first).collect();
            for fd in fds {
                // SAFETY: closing descriptors this process does not use.
                unsafe { libc::close(fd) };
            }
        }
    }
}

fn launcher(cfg: &LaunchConfig, base: Option<OwnedFd>, agent: AgentMain) -> Result<(), Stage> {
    let cgroups = Cgroups::detect().map_err(staged("cgroup"))?;
    let cg = cgroups.open(&cfg.id);

    let userns = make_userns(cfg.id_base)?;

    // SAFETY: unshare with flags only; the launcher is single-threaded.
    if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
        return Err(Stage::io("unshare pid namespace", std::io::Error::last_os_error()));
    }
    let (c2p_r, c2p_w) = pipe()?;
    let (p2c_r, p2c_w) = pipe()?;

    // SAFETY: the launcher is single-threaded, so the child may run
    // arbitrary code after fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(Stage::io("fork", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        drop(c2p_r);
        drop(p2c_w);
        let code = match child(cfg, &userns, base, &c2p_w, &p2c_r) {
            Ok((listener, log)) => {
                drop(userns);
                send(&c2p_w, MSG_READY, b"");
                drop(c2p_w);
                drop(p2c_r);
                agent(listener, log, cfg)
            }
            Err(s) => {
                let payload = serde_json::to_vec(&s.to_boot()).unwrap_or_default();
                send(&c2p_w, MSG_ERROR, &payload);
                1
            }
        };
        // SAFETY: terminating the child without running the parent's atexit handlers.
        unsafe { libc::_exit(code) };
    }
    drop(c2p_w);
    drop(p2c_r);
    drop(userns);
    drop(base);
    let pid = pid as u32;
    let kill_child = || {
        // SAFETY: killing the child we forked.
        unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
            libc::waitpid(pid as i32, std::ptr::null_mut(), 0);
        }
    };
    let fail_from_child = |payload: Vec<u8>| -> Stage {
        match serde_json::from_slice::<BootError>(&payload) {
            Ok(b) => Stage { stage: leak(b.stage), errno: b.errno, message: b.message },
            Err(_) => Stage::new("init", "sandbox init failed without a reason", None),
        }
    };
    match recv(&c2p_r) {
        Some((MSG_NS_READY, _)) => {}
        Some((MSG_ERROR, p)) => {
            kill_child();
            return Err(fail_from_child(p));
        }
        _ => {
            kill_child();
            return Err(Stage::new("init", "sandbox init exited before creating its namespaces", None));
        }
    }
    // Joining a cgroup (on v1 above all) waits for an RCU grace period,
    // milliseconds on a busy host: PID 1 is moved in from here while it
    // builds its root filesystem, instead of before it starts. It runs no
    // untrusted code until GO, so nothing escapes the limits meanwhile.
    // A step that fails here may only have failed because PID 1 already
    // gave up: its own report, if it sent one, is the real cause.
    let child_report = || match poll_recv(&c2p_r) {
        Some((MSG_ERROR, p)) => Some(fail_from_child(p)),
        _ => None,
    };
    if let Err(e) = cg.add_pid(pid) {
        let report = child_report();
        kill_child();
        return Err(report.unwrap_or_else(|| staged("cgroup")(e)));
    }
    if let Some(net) = &cfg.net {
        if let Err(e) = crate::network::create_veth(net, pid) {
            let report = child_report();
            kill_child();
            return Err(report.unwrap_or_else(|| staged("network")(e)));
        }
    }
    send(&p2c_w, MSG_GO, b"");
    match recv(&c2p_r) {
        Some((MSG_READY, _)) => {}
        Some((MSG_ERROR, p)) => {
            kill_child();
            return Err(fail_from_child(p));
        }
        _ => {
            kill_child();
            return Err(Stage::new("init", "sandbox init exited before it was ready", None));
        }
    }
    let start_time = state::process_start_time(pid).ok_or_else(|| Stage::new("init", "sandbox exited right after start", None))?;
    state::write_json(&cfg.dir.join(state::STATE_FILE), &RunState { pid, start_time, ip: cfg.net.as_ref().map(|n| n.sandbox_ip) }).map_err(|e| Stage::io("writing state", e))?;
    Ok(())
}

fn leak(s: String) -> &'static str {
    // Stage names are a handful of short literals; a leak per failed boot
    // in a process that exits right after is harmless.
    Box::leak(s.into_boxed_str())
}

/// Per-sandbox totals of the kernel's per-user counters, fixed when its user
/// namespace is made: queued signals, POSIX message-queue bytes, open files
/// of PID 1.
const SIGPENDING_LIMIT: u64 = 16384;
const MSGQUEUE_LIMIT: u64 = 819_200;
const NOFILE_LIMIT: u64 = 65536;

/// Turns the userns helper into the sandbox's own host uid (`base`, root
/// inside) before it makes the namespace, keeping its capabilities.
///
/// The kernel charges per-user resources (inotify instances, queued
/// signals, message queues, user namespaces) at every level of the user
/// namespace tree, and at the host's level to the namespace's *creator*.
/// Made by host root, every sandbox's use counted as host root's: one
/// sandbox opening 128 inotify instances left systemd, udev and every other
/// sandbox without. Made by `base`, each sandbox has its own budget. The
/// rlimits set here become the namespace's ceilings for the totals.
///
/// Capabilities are kept (`PR_SET_KEEPCAPS`, then raised again) so hosts
/// that forbid unprivileged user namespaces (Debian's
/// `unprivileged_userns_clone`, Ubuntu's AppArmor rule) still let us.
///
/// # Safety
/// Only in the forked, single-threaded helper: it changes the process's
/// credentials for good.
unsafe fn become_userns_owner(base: u32) -> bool {
    // SAFETY: credential and capability syscalls with valid arguments, in a
    // process that owns its credentials alone (see the function's contract).
    unsafe {
        if !(set_limit(libc::RLIMIT_SIGPENDING, SIGPENDING_LIMIT) && set_limit(libc::RLIMIT_MSGQUEUE, MSGQUEUE_LIMIT)) {
            return false;
        }
        if libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0
            || libc::setgroups(0, std::ptr::null()) != 0
            || libc::setresgid(base, base, base) != 0
            || libc::setresuid(base, base, base) != 0
        {
            return false;
        }
    }
    // Raise the effective set back to the permitted one KEEPCAPS kept.
    crate::seccomp::update_capabilities(|sets| {
        for d in sets.iter_mut() {
            d.effective = d.permitted;
        }
    })
    .is_ok()
}

/// Creates a user namespace mapping 0..65536 inside to `base..` outside,
/// owned by `base` (see `become_userns_owner`), and returns an fd that
/// keeps it alive.
fn make_userns(base: u32) -> Result<OwnedFd, Stage> {
    // SAFETY: runs in the forked helper, which only makes raw syscalls.
    crate::rootfs::new_userns(base, 65536, || unsafe { become_userns_owner(base) }).map_err(|e| match e {
        crate::rootfs::UsernsError::Create => Stage::new("user namespace", "cannot create a user namespace (is user.max_user_namespaces 0?)", None),
        crate::rootfs::UsernsError::Io(e) => Stage::io("user namespace mapping", e),
    })
}

/// Everything PID 1 does before it becomes the agent.
fn child(cfg: &LaunchConfig, userns: &OwnedFd, base: Option<OwnedFd>, to_parent: &OwnedFd, from_parent: &OwnedFd) -> Result<(UnixListener, std::fs::File), Stage> {
    // The host's per-sandbox mounts this one needs (its disk image, its
    // volumes), as detached trees made before leaving the host's mount
    // namespace: the base namespace has none of them (see `crate::mntns`).
    let upper = cfg.dir.join("upper");
    let own_disk = if is_mount_point(&upper) { Some(crate::rootfs::Tree::clone_of(&upper).map_err(staged("sandbox disk"))?) } else { None };
    let volume_trees = cfg.volumes.iter().map(|v| crate::rootfs::Tree::volume(v, userns).map_err(staged("volume"))).collect::<Result<Vec<_>, _>>()?;
    if let Some(base) = base {
        crate::mntns::enter(&base).map_err(|e| Stage::io("entering the base mount namespace", e))?;
    }
    // Layers are directories, there as on the host. A recursive clone walks
    // every mount below the one holding its source: in the base namespace
    // a few dozen, but in the host's one per sandbox, so layers in the data
    // directory (`<root>/sandboxes/<id>` is ours), which hold no mounts,
    // are cloned alone; others (the host's /usr) may hold some.
    let data_root = cfg.dir.parent().and_then(Path::parent).unwrap_or(&cfg.dir);
    let layer = |p: &Path| crate::rootfs::Tree::layer(p, userns, !p.starts_with(data_root));
    let root_trees = cfg.root_layers.iter().map(|l| layer(l).map_err(staged("idmapped layer"))).collect::<Result<Vec<_>, _>>()?;
    let usr_trees = cfg.usr_layers.iter().map(|l| layer(l).map_err(staged("idmapped layer"))).collect::<Result<Vec<_>, _>>()?;
    let part = if cfg.usr_layers.is_empty() { "root" } else { "usr" };
    let shim_tree = cfg.sudo_layer.as_ref().map(|s| layer(&s.join(part)).map_err(staged("sudo shim"))).transpose()?;
    let top_trees = cfg.top_layers.iter().map(|l| layer(l).map_err(staged("server layer"))).collect::<Result<Vec<_>, _>>()?;
    // The cgroup namespace comes after GO, once the launcher has moved us
    // into the sandbox's cgroup, so that cgroup is its root.
    let flags = libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC | libc::CLONE_NEWNET;
    // SAFETY: unshare with flags only, single-threaded.
    if unsafe { libc::unshare(flags) } != 0 {
        return Err(Stage::io("unshare namespaces", std::io::Error::last_os_error()));
    }
    send(to_parent, MSG_NS_READY, b"");
    set_pid1_limits().map_err(|e| Stage::io("resource limits", e))?;

    // Mounts run while the launcher wires the veth in parallel.
    let rootfs = cfg.dir.join("rootfs");
    crate::rootfs::make_private().map_err(staged("mount"))?;
    // The sandbox's disk image where the host has it mounted.
    if let Some(disk) = &own_disk {
        disk.place(&upper).map_err(staged("sandbox disk"))?;
    }
    let mut root_lowers = Vec::new();
    for (i, tree) in root_trees.iter().enumerate() {
        let at = cfg.dir.join("lower").join(format!("root{i}"));
        tree.place(&at).map_err(staged("idmapped layer"))?;
        root_lowers.push(at);
    }
    let mut usr_lowers = Vec::new();
    for (i, tree) in usr_trees.iter().enumerate() {
        let at = cfg.dir.join("lower").join(format!("usr{i}"));
        tree.place(&at).map_err(staged("idmapped layer"))?;
        usr_lowers.push(at);
    }
    // The `sudo` shim: a one-file layer above the template's, in the
    // overlay that holds /usr (see `crate::shim`).
    if let Some(tree) = &shim_tree {
        let lowers = if usr_lowers.is_empty() { &mut root_lowers } else { &mut usr_lowers };
        let at = cfg.dir.join("lower").join("shim");
        std::fs::create_dir_all(&at).map_err(|e| Stage::io("sudo shim", e))?;
        tree.place(&at).map_err(staged("sudo shim"))?;
        lowers.insert(0, at);
    }
    // The server's own layers (the egress CA's trust layer) above all of
    // the root's; inserted last-first so the first stays topmost.
    for (i, tree) in top_trees.iter().enumerate().rev() {
        let at = cfg.dir.join("lower").join(format!("top{i}"));
        std::fs::create_dir_all(&at).map_err(|e| Stage::io("server layer", e))?;
        tree.place(&at).map_err(staged("server layer"))?;
        root_lowers.insert(0, at);
    }
    // Overlay options are visible in /proc/self/mountinfo inside the
    // sandbox: give them paths relative to the sandbox directory so no host
    // path shows.
    nix::unistd::chdir(&cfg.dir).map_err(|e| Stage::new("mount", e, Some(e as i32)))?;
    let rel = |p: &Path| p.strip_prefix(&cfg.dir).map(Path::to_path_buf).unwrap_or_else(|_| p.to_path_buf());
    let root_rel: Vec<PathBuf> = root_lowers.iter().map(|p| rel(p)).collect();
    let usr_rel: Vec<PathBuf> = usr_lowers.iter().map(|p| rel(p)).collect();
    crate::rootfs::overlay(&rootfs, &root_rel, Path::new("upper/root"), Path::new("upper/root-work")).map_err(staged("root filesystem"))?;
    if !usr_lowers.is_empty() {
        crate::rootfs::overlay(&rootfs.join("usr"), &usr_rel, Path::new("upper/usr"), Path::new("upper/usr-work")).map_err(staged("usr filesystem"))?;
    }
    crate::rootfs::mount_dev(&rootfs, cfg.id_base).map_err(staged("mount /dev"))?;
    // The network namespace's settings, through the sandbox's own /proc.
    // No IPv6 inside: the firewall only speaks IPv4.
    let mut sysctls: Vec<(String, String)> = ["all", "default", "lo"].iter().map(|f| (format!("net/ipv6/conf/{f}/disable_ipv6"), "1".to_string())).collect();
    // The network namespace belongs to the host's user namespace, so root
    // inside holds no CAP_NET_BIND_SERVICE or CAP_NET_RAW there: it could
    // neither bind ports below 1024 nor ping. Both are harmless inside a
    // namespace of its own, so open them to every id of the sandbox (host
    // gids: the write is read in the host's user namespace), as container
    // runtimes do.
    sysctls.push(("net/ipv4/ip_unprivileged_port_start".into(), "0".into()));
    sysctls.push(("net/ipv4/ping_group_range".into(), format!("{} {}", cfg.id_base, cfg.id_base + 65535)));
    let mut empty = None;
    crate::rootfs::mount_proc(&rootfs, &sysctls, &mut empty).map_err(staged("mount /proc"))?;
    crate::rootfs::mount_sys(&rootfs, &mut empty).map_err(staged("mount /sys"))?;
    crate::rootfs::mount_tmp(&rootfs, cfg.id_base, cfg.resources.memory_mb).map_err(staged("mount /tmp"))?;
    // Volumes last, so no tmpfs above covers one mounted under it.
    for (v, tree) in cfg.volumes.iter().zip(&volume_trees) {
        crate::rootfs::bind_volume(&rootfs, v, tree, cfg.id_base).map_err(staged("volume"))?;
    }
    nix::unistd::sethostname(&cfg.hostname).map_err(|e| Stage::new("hostname", e, Some(e as i32)))?;

    // The socket lives on the host, outside the sandbox's tree: bound now,
    // it stays reachable from the host and invisible from inside.
    let sock = cfg.dir.join(state::SOCKET_FILE);
    let _ = std::fs::remove_file(&sock);
    // SAFETY: umask is process-wide and we are single-threaded.
    let old = unsafe { libc::umask(0o077) };
    let listener = UnixListener::bind(&sock).map_err(|e| Stage::io("binding agent socket", e))?;
    // SAFETY: as above.
    unsafe { libc::umask(old) };

    match recv(from_parent) {
        Some((MSG_GO, _)) => {}
        _ => return Err(Stage::new("network", "launcher gave up", None)),
    }
    // SAFETY: unshare with a flag only, single-threaded.
    if unsafe { libc::unshare(libc::CLONE_NEWCGROUP) } != 0 {
        return Err(Stage::io("unshare cgroup namespace", std::io::Error::last_os_error()));
    }
    crate::rootfs::mount_cgroup(&rootfs, Path::new("/sys/fs/cgroup"), &crate::cgroup::group_of(&cfg.id)).map_err(staged("mount /sys/fs/cgroup"))?;
    crate::network::configure_inside(cfg.net.as_ref()).map_err(staged("network"))?;

    crate::rootfs::pivot(&rootfs).map_err(staged("pivot_root"))?;
    let log = detach_stdio().map_err(|e| Stage::io("stdio", e))?;
    // The OOM killer's last choice inside the sandbox (see airlock-agent's
    // `set_child_oom_score` for its children): -999, not -1000, so that a
    // process inside that copies the value (it may, down to the agent's)
    // stays killable. Lowering needs CAP_SYS_RESOURCE, which a server in a
    // container may lack; the agent then raises its children's score instead.
    let _ = std::fs::write("/proc/self/oom_score_adj", "-999");

    // SAFETY: setns on a user-namespace fd; the process is single-threaded
    // and shares no fs state, as the kernel requires.
    if unsafe { libc::setns(userns.as_raw_fd(), libc::CLONE_NEWUSER) } != 0 {
        return Err(Stage::io("entering user namespace", std::io::Error::last_os_error()));
    }
    // SAFETY: credential syscalls with plain integers.
    unsafe {
        let groups = [0 as libc::gid_t];
        if libc::setgroups(1, groups.as_ptr()) != 0 || libc::setresgid(0, 0, 0) != 0 || libc::setresuid(0, 0, 0) != 0 {
            return Err(Stage::io("becoming sandbox root", std::io::Error::last_os_error()));
        }
        // Non-dumpable: processes inside, root included, cannot ptrace the
        // agent or open its /proc fds (which include host-side ones).
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
    }
    crate::seccomp::drop_capabilities().map_err(staged("capabilities"))?;
    crate::seccomp::install().map_err(staged("seccomp"))?;
    Ok((listener, log))
}

/// Whether something is mounted on `p` (its device differs from its
/// parent's; the sandbox's disk image on `upper`).
fn is_mount_point(p: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::symlink_metadata(p), p.parent().map(std::fs::symlink_metadata)) {
        (Ok(m), Some(Ok(parent))) => m.is_dir() && m.dev() != parent.dev(),
        _ => false,
    }
}

/// PID 1's own limits, inherited by everything it starts: the same
/// per-sandbox signal and message-queue budgets as its namespace, and a
/// fixed open-file limit (rather than whatever the server had).
fn set_pid1_limits() -> std::io::Result<()> {
    for (res, v) in [(libc::RLIMIT_SIGPENDING, SIGPENDING_LIMIT), (libc::RLIMIT_MSGQUEUE, MSGQUEUE_LIMIT), (libc::RLIMIT_NOFILE, NOFILE_LIMIT)] {
        if !set_limit(res, v) {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Sets soft and hard limit of `res` to `v`, or to the current hard limit
/// if that is lower: raising a hard limit needs `CAP_SYS_RESOURCE`, which
/// the server (in a container, say) may not hold.
fn set_limit(res: libc::__rlimit_resource_t, v: u64) -> bool {
    let mut cur = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with valid structs.
    unsafe {
        if libc::getrlimit(res, &mut cur) != 0 {
            return false;
        }
        let v = v.min(cur.rlim_max);
        let r = libc::rlimit { rlim_cur: v, rlim_max: v };
        libc::setrlimit(res, &r) == 0
    }
}

/// Moves the launcher's stderr (the host-side log) to a close-on-exec
/// descriptor and points fds 0, 1 and 2 at the sandbox's `/dev/null`, so
/// the agent's stdio is nothing of the host's.
fn detach_stdio() -> std::io::Result<std::fs::File> {
    // SAFETY: fcntl/open/dup2 on descriptors this single-threaded process
    // owns; the duplicated fd is owned by the returned File alone.
    unsafe {
        let log = libc::fcntl(2, libc::F_DUPFD_CLOEXEC, 3);
        if log < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let log = std::fs::File::from_raw_fd(log);
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        if null < 0 {
            return Err(std::io::Error::last_os_error());
        }
        for fd in 0..=2 {
            if libc::dup2(null, fd) < 0 {
                let e = std::io::Error::last_os_error();
                libc::close(null);
                return Err(e);
            }
        }
        libc::close(null);
        Ok(log)
    }
}

/// Paths inside a sandbox directory that `init` needs to exist.
pub fn prepare_dirs(dir: &Path, layers: usize, usr_layers: usize) -> std::io::Result<Vec<PathBuf>> {
    let mut v = vec![dir.join("rootfs"), dir.join("upper/root"), dir.join("upper/root-work"), dir.join("upper/usr"), dir.join("upper/usr-work")];
    for i in 0..layers {
        v.push(dir.join("lower").join(format!("root{i}")));
    }
    for i in 0..usr_layers {
        v.push(dir.join("lower").join(format!("usr{i}")));
    }
    for p in &v {
        std::fs::create_dir_all(p)?;
    }
    Ok(v)
}
