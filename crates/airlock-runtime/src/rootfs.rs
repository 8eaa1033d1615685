//! Mount work done inside a new sandbox's mount namespace, by PID 1 while it
//! is still host root: idmapped template layers, the overlay root and
//! `/usr`, `/proc` with the sensitive entries masked, a minimal `/dev`, a
//! read-only `/sys`, tmpfs `/tmp`, and `pivot_root`.
//!
//! Template layers store canonical ids (root is 0, `user` is 1000). Each is
//! attached through an idmapped mount that shifts them into the sandbox's
//! own host id range, so files look right inside and `/usr` from the host
//! is owned by the sandbox's root, not by an unmapped host root.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

#[derive(Debug, thiserror::Error)]
#[error("{what}")]
pub struct MountError {
    pub what: String,
    #[source]
    pub source: std::io::Error,
}

impl MountError {
    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }
}

fn err(what: impl Into<String>, e: impl Into<std::io::Error>) -> MountError {
    MountError { what: what.into(), source: e.into() }
}

fn nix_err(what: impl Into<String>) -> impl FnOnce(nix::Error) -> MountError {
    let what = what.into();
    move |e| MountError { what, source: std::io::Error::from_raw_os_error(e as i32) }
}

fn cpath(p: &Path) -> Result<CString, MountError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|e| err(format!("path {}", p.display()), std::io::Error::other(e)))
}

const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;

use libc::mount_attr as MountAttr;

/// A detached mount tree made while PID 1 is still in the host's mount
/// namespace, to be placed once it is in its own (which is made from the
/// server's base namespace and holds none of the host's per-sandbox mounts:
/// see `crate::mntns`).
pub struct Tree {
    fd: OwnedFd,
    src: PathBuf,
}

impl Tree {
    /// A read-only idmapped clone of `src` (a template layer), with the
    /// mounts below it when `recursive`. A recursive clone walks every
    /// mount under the one holding `src`, which on the data directory's
    /// filesystem means one per sandbox: layers stored there hold no mounts
    /// and are cloned alone.
    pub fn layer(src: &Path, userns: &OwnedFd, recursive: bool) -> Result<Self, MountError> {
        Ok(Self { fd: idmapped_tree(src, userns, MOUNT_ATTR_RDONLY, recursive)?, src: src.to_path_buf() })
    }

    /// A plain clone of the mount at `src` (the sandbox's disk image), not
    /// of those below it.
    pub fn clone_of(src: &Path) -> Result<Self, MountError> {
        let csrc = cpath(src)?;
        // SAFETY: open_tree with a NUL-terminated path; the fd is ours.
        let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, csrc.as_ptr(), OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint) };
        if fd < 0 {
            return Err(err(format!("cloning the mounts of {}", src.display()), std::io::Error::last_os_error()));
        }
        // SAFETY: open_tree returned a new descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        // Private, not a peer of the host's mount (see `idmapped_tree`).
        let attr = MountAttr { attr_set: 0, attr_clr: 0, propagation: libc::MS_PRIVATE, userns_fd: 0 };
        let empty = c"";
        // SAFETY: mount_setattr on the tree we own, with a fully initialised mount_attr.
        let r = unsafe { libc::syscall(libc::SYS_mount_setattr, fd.as_raw_fd(), empty.as_ptr(), libc::AT_EMPTY_PATH, &attr as *const MountAttr, std::mem::size_of::<MountAttr>()) };
        if r < 0 {
            return Err(err(format!("making the clone of {} private", src.display()), std::io::Error::last_os_error()));
        }
        Ok(Self { fd, src: src.to_path_buf() })
    }

    /// A volume's source (its image's mount, nothing below it): idmapped,
    /// read-only or writable as it asks.
    pub fn volume(v: &crate::VolumeMount, userns: &OwnedFd) -> Result<Self, MountError> {
        let attrs = if v.read_only { MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV } else { MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV };
        Ok(Self { fd: idmapped_tree(&v.source, userns, attrs, false)?, src: v.source.clone() })
    }

    /// Attaches the tree at `dst` in the current mount namespace.
    pub fn place(&self, dst: &Path) -> Result<(), MountError> {
        move_tree(&self.fd, None, dst, &self.src)
    }
}

/// A detached, idmapped clone of the mount at `src` (with the mounts
/// below it when `recursive`) with `attrs` set.
fn idmapped_tree(src: &Path, userns: &OwnedFd, attrs: u64, recursive: bool) -> Result<OwnedFd, MountError> {
    let csrc = cpath(src)?;
    let ctx = || format!("idmapped mount of {}", src.display());
    // SAFETY: raw mount-API syscalls with a valid NUL-terminated path and a
    // properly laid out, fully initialised `mount_attr`.
    unsafe {
        let rec = if recursive { AT_RECURSIVE } else { 0 };
        let fd = libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, csrc.as_ptr(), OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | rec);
        if fd < 0 {
            return Err(err(ctx(), std::io::Error::last_os_error()));
        }
        let tree = OwnedFd::from_raw_fd(fd as i32);
        // Private: a clone of a shared mount (a systemd host's, cloned
        // before PID 1 leaves the host's namespace) would otherwise be its
        // peer, and mounts would propagate between the sandbox, the host
        // and every other sandbox holding a clone of the same source.
        let attr = MountAttr { attr_set: MOUNT_ATTR_IDMAP | attrs, attr_clr: 0, propagation: libc::MS_PRIVATE, userns_fd: userns.as_raw_fd() as u64 };
        let empty = c"";
        if libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH | rec as libc::c_int,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        ) < 0
        {
            return Err(err(ctx(), std::io::Error::last_os_error()));
        }
        Ok(tree)
    }
}

/// Why `new_userns` failed.
#[derive(Debug)]
pub(crate) enum UsernsError {
    /// The kernel refused the namespace (or `prepare` failed).
    Create,
    Io(std::io::Error),
}

/// A user namespace mapping `0..count` inside to `base..` outside, held by
/// the returned fd. A forked helper runs `prepare` (raw syscalls only: the
/// caller may have threads), unshares, and waits while its maps are written.
pub(crate) fn new_userns(base: u32, count: u32, prepare: impl Fn() -> bool) -> Result<OwnedFd, UsernsError> {
    use std::io::Read;
    let pipe = || -> Result<(OwnedFd, OwnedFd), UsernsError> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills two fds we then own.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(UsernsError::Io(std::io::Error::last_os_error()));
        }
        // SAFETY: both fds were just created and are owned by nobody else.
        Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
    };
    let (ready_r, ready_w) = pipe()?;
    let (done_r, done_w) = pipe()?;
    // SAFETY: the helper only makes raw, async-signal-safe syscalls.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(UsernsError::Io(std::io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: raw syscalls on fds we own; _exit never returns.
        unsafe {
            // Close our copies of the parent's ends, or the read below
            // would never see end-of-file.
            libc::close(done_w.as_raw_fd());
            libc::close(ready_r.as_raw_fd());
            let ok = prepare() && libc::unshare(libc::CLONE_NEWUSER) == 0;
            let b = [if ok { 1u8 } else { 0u8 }];
            libc::write(ready_w.as_raw_fd(), b.as_ptr().cast(), 1);
            let mut x = [0u8; 1];
            libc::read(done_r.as_raw_fd(), x.as_mut_ptr().cast(), 1);
            libc::_exit(0);
        }
    }
    drop(ready_w);
    drop(done_r);
    let reap = || {
        // SAFETY: waiting for the helper we forked.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
    };
    let mut b = [0u8; 1];
    let ok = std::fs::File::from(ready_r).read_exact(&mut b).is_ok() && b[0] == 1;
    if !ok {
        drop(done_w);
        reap();
        return Err(UsernsError::Create);
    }
    let map = format!("0 {base} {count}\n");
    let r = std::fs::write(format!("/proc/{pid}/uid_map"), &map)
        .and_then(|_| std::fs::write(format!("/proc/{pid}/gid_map"), &map))
        .and_then(|_| std::fs::File::open(format!("/proc/{pid}/ns/user")));
    drop(done_w);
    reap();
    r.map(OwnedFd::from).map_err(UsernsError::Io)
}

/// Checks that `dir`'s filesystem takes idmapped mounts, which every
/// template layer and sandbox root needs: a detached, idmapped clone of
/// `dir` (never attached anywhere) is made and dropped. ext4, xfs and
/// btrfs take them; tmpfs only from Linux 6.3; 9p, NFS and FUSE do not.
pub fn probe_idmap(dir: &Path) -> Result<(), MountError> {
    let userns = new_userns(65534, 1, || true).map_err(|e| match e {
        UsernsError::Create => err("creating a user namespace", std::io::Error::from_raw_os_error(libc::EPERM)),
        UsernsError::Io(e) => err("mapping a user namespace", e),
    })?;
    // Not recursive, so the sandboxes' own mounts below `dir` play no
    // part; the clone is never attached and goes with its fd.
    idmapped_tree(dir, &userns, MOUNT_ATTR_RDONLY, false)?;
    Ok(())
}

/// Attaches a detached tree at `dst`, or at the directory `dst_fd` when given.
fn move_tree(tree: &OwnedFd, dst_fd: Option<&OwnedFd>, dst: &Path, src: &Path) -> Result<(), MountError> {
    let cdst = cpath(dst)?;
    let empty = c"";
    // SAFETY: move_mount with descriptors we own and NUL-terminated paths.
    let r = unsafe {
        match dst_fd {
            Some(fd) => libc::syscall(libc::SYS_move_mount, tree.as_raw_fd(), empty.as_ptr(), fd.as_raw_fd(), empty.as_ptr(), MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH),
            None => libc::syscall(libc::SYS_move_mount, tree.as_raw_fd(), empty.as_ptr(), libc::AT_FDCWD, cdst.as_ptr(), MOVE_MOUNT_F_EMPTY_PATH),
        }
    };
    if r < 0 {
        return Err(err(format!("idmapped mount of {} at {}", src.display(), dst.display()), std::io::Error::last_os_error()));
    }
    Ok(())
}

const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_IN_ROOT: u64 = 0x10;

#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// `openat2` of `rel` as an `O_PATH` directory, resolved as if `root` were `/`.
fn open_dir_in(root: &OwnedFd, rel: &Path) -> std::io::Result<OwnedFd> {
    let c = CString::new(if rel.as_os_str().is_empty() { ".".as_bytes() } else { rel.as_os_str().as_bytes() }).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    let how = OpenHow { flags: (libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64, mode: 0, resolve: RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS };
    // SAFETY: openat2 with a NUL-terminated path and a fully initialised open_how.
    let fd = unsafe { libc::syscall(libc::SYS_openat2, root.as_raw_fd(), c.as_ptr(), &how as *const OpenHow, std::mem::size_of::<OpenHow>()) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Binds a volume into the new root at its target, creating the target
/// directory (owned by the sandbox's root) where it is missing. The target
/// is resolved inside the new root at every step: on a restart the
/// writable layer is the sandbox's, and a symlink it planted at the target
/// must not send the mount anywhere else.
pub fn bind_volume(root: &Path, v: &crate::VolumeMount, tree: &Tree, id_base: u32) -> Result<(), MountError> {
    let target = Path::new(&v.target);
    let ctx = || format!("volume at {}", v.target);
    if !target.is_absolute() || target.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
        return Err(err(ctx(), std::io::Error::from_raw_os_error(libc::EINVAL)));
    }
    let rootfd: OwnedFd = std::fs::File::open(root).map_err(|e| err(ctx(), e))?.into();
    let mut rel = PathBuf::new();
    let mut dir = open_dir_in(&rootfd, &rel).map_err(|e| err(ctx(), e))?;
    for c in target.components() {
        let std::path::Component::Normal(name) = c else { continue };
        rel.push(name);
        dir = match open_dir_in(&rootfd, &rel) {
            Ok(d) => d,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                let cname = CString::new(name.as_bytes()).map_err(|_| err(ctx(), std::io::Error::from_raw_os_error(libc::EINVAL)))?;
                // SAFETY: mkdirat/fchownat on a directory fd we own and a NUL-terminated name.
                unsafe {
                    if libc::mkdirat(dir.as_raw_fd(), cname.as_ptr(), 0o755) != 0 {
                        return Err(err(ctx(), std::io::Error::last_os_error()));
                    }
                    libc::fchownat(dir.as_raw_fd(), cname.as_ptr(), id_base, id_base, libc::AT_SYMLINK_NOFOLLOW);
                }
                open_dir_in(&rootfd, &rel).map_err(|e| err(ctx(), e))?
            }
            Err(e) => return Err(err(ctx(), e)),
        };
    }
    move_tree(&tree.fd, Some(&dir), target, &v.source)
}

pub fn make_private() -> Result<(), MountError> {
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>).map_err(nix_err("making / private"))
}

pub fn overlay(target: &Path, lowers: &[PathBuf], upper: &Path, work: &Path) -> Result<(), MountError> {
    let lower = lowers.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(":");
    // Whatever the module's defaults: a writable layer becomes a read-only
    // layer when it is snapshotted, copied file by file, so every file in it
    // must hold its own data (no metacopy) and no directory may stand for
    // a renamed lower one (no redirects; `rename` of such a directory gives
    // EXDEV and tools copy instead).
    let opts = format!("lowerdir={lower},upperdir={},workdir={},redirect_dir=off,metacopy=off", upper.display(), work.display());
    mount(Some("overlay"), target, Some("overlay"), MsFlags::empty(), Some(opts.as_str())).map_err(nix_err(format!("mounting overlay at {}", target.display())))
}

fn mkdir(p: &Path) -> Result<(), MountError> {
    std::fs::create_dir_all(p).map_err(|e| err(format!("creating {}", p.display()), e))
}

/// `/proc`: a new instance for the sandbox's pid namespace, with the
/// entries OCI runtimes hide masked and the ones they protect read-only.
/// `sysctls` (paths under `/proc/sys`, values; best effort) are written
/// first, through this new instance: the host's `/proc` holds a dentry of
/// each network namespace's entries under one name, so a lookup there
/// walks one per live sandbox; a fresh instance has only this one's.
pub fn mount_proc(root: &Path, sysctls: &[(String, String)], empty: &mut Option<PathBuf>) -> Result<(), MountError> {
    let p = root.join("proc");
    mkdir(&p)?;
    let nosx = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(Some("proc"), &p, Some("proc"), nosx, None::<&str>).map_err(nix_err("mounting /proc"))?;
    for (k, v) in sysctls {
        let _ = std::fs::write(p.join("sys").join(k), v);
    }
    // OCI's masked paths, plus what tells the host apart: its kernel
    // command line, its disks' statistics and layout, and kernel memory
    // layouts. /proc/meminfo stays: `free`, `top` and runtimes sizing
    // their heaps read it, and an empty one breaks them.
    for f in [
        "kcore",
        "keys",
        "latency_stats",
        "timer_list",
        "timer_stats",
        "sched_debug",
        "kallsyms",
        "kpagecount",
        "kpageflags",
        "kpagecgroup",
        "config.gz",
        "vmallocinfo",
        "pagetypeinfo",
        "cmdline",
        "diskstats",
        "partitions",
        "zoneinfo",
        "buddyinfo",
        "slabinfo",
        "iomem",
        "ioports",
        "interrupts",
        "softirqs",
        "mtrr",
        "swaps",
    ] {
        let t = p.join(f);
        if t.exists() {
            mount(Some(&root.join("dev/null")), &t, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(nix_err(format!("masking /proc/{f}")))?;
        }
    }
    for d in ["acpi", "asound", "scsi", "firmware", "driver"] {
        let t = p.join(d);
        if t.is_dir() {
            mask_dir(&t, empty).map_err(|e| MountError { what: format!("masking /proc/{d}"), ..e })?;
        }
    }
    for r in ["bus", "fs", "irq", "sys", "sysrq-trigger"] {
        let t = p.join(r);
        if t.exists() {
            read_only_bind(&t)?;
        }
    }
    // A boot id of the sandbox's own, new at every boot of its PID 1: the
    // host's would never change, and a sandbox resumed from a
    // filesystem-only pause (or restarted) has booted afresh.
    let boot_id = p.join("sys/kernel/random/boot_id");
    if boot_id.exists() {
        let ours = root.join("dev/.boot_id");
        std::fs::write(&ours, format!("{}\n", new_uuid())).map_err(|e| err("writing the boot id", e))?;
        mount(Some(&ours), &boot_id, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(nix_err("binding the boot id"))?;
        let _ = std::fs::remove_file(&ours);
    }
    Ok(())
}

/// A random (version 4) UUID, from the kernel's generator.
fn new_uuid() -> String {
    let mut b = [0u8; 16];
    // SAFETY: getrandom into a 16-byte buffer we own; a short read (never
    // for 16 bytes) only weakens the id, which is not a secret.
    unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

/// Covers the directory `t` with an empty, read-only one. The first mask
/// of a sandbox is a tmpfs of size 0; the others are binds of it (kept in
/// `empty`): every superblock costs each later memory cgroup a slot in its
/// shrinker tables, so one per masked directory per sandbox made creates
/// slower with every sandbox alive.
fn mask_dir(t: &Path, empty: &mut Option<PathBuf>) -> Result<(), MountError> {
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    match empty {
        None => {
            mount(Some("tmpfs"), t, Some("tmpfs"), flags, Some("size=0")).map_err(nix_err("masking"))?;
            *empty = Some(t.to_path_buf());
            Ok(())
        }
        Some(src) => {
            mount(Some(src.as_path()), t, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(nix_err("masking"))?;
            mount(None::<&str>, t, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags, None::<&str>).map_err(nix_err("masking"))
        }
    }
}

fn read_only_bind(t: &Path) -> Result<(), MountError> {
    mount(Some(t), t, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>).map_err(nix_err(format!("binding {}", t.display())))?;
    mount(None::<&str>, t, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC, None::<&str>)
        .map_err(nix_err(format!("making {} read-only", t.display())))
}

/// A minimal `/dev` on tmpfs: the usual character devices, a private
/// devpts instance, `/dev/shm`, and the fd symlinks. Nodes are owned by the
/// sandbox's root (`id_base`); the tty group is `id_base + 5`.
pub fn mount_dev(root: &Path, id_base: u32) -> Result<(), MountError> {
    let d = root.join("dev");
    mkdir(&d)?;
    // No uid=/gid= options: mount options are readable inside, and the host
    // id range would tell the sandbox its slot. The root is chowned instead.
    mount(Some("tmpfs"), &d, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC, Some("mode=755,size=65536k,nr_inodes=16384")).map_err(nix_err("mounting /dev"))?;
    chown_root(&d, id_base)?;
    for (name, major, minor) in [("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0)] {
        let p = d.join(name);
        let c = cpath(&p)?;
        // SAFETY: mknod/chown/chmod on a NUL-terminated path we built.
        unsafe {
            if libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(major, minor)) != 0 {
                return Err(err(format!("creating /dev/{name}"), std::io::Error::last_os_error()));
            }
            libc::chmod(c.as_ptr(), 0o666);
            libc::chown(c.as_ptr(), id_base, id_base);
        }
    }
    let pts = d.join("pts");
    mkdir(&pts)?;
    // No gid= either (see above): the agent chowns each terminal to the
    // user it starts the command as.
    mount(Some("devpts"), &pts, Some("devpts"), MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC, Some("newinstance,ptmxmode=0666,mode=0620")).map_err(nix_err("mounting /dev/pts"))?;
    let shm = d.join("shm");
    mkdir(&shm)?;
    mount(Some("shm"), &shm, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=1777,size=65536k,nr_inodes=16384")).map_err(nix_err("mounting /dev/shm"))?;
    chown_root(&shm, id_base)?;
    for (link, target) in [("ptmx", "pts/ptmx"), ("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")] {
        std::os::unix::fs::symlink(target, d.join(link)).map_err(|e| err(format!("linking /dev/{link}"), e))?;
    }
    Ok(())
}

/// A read-only `/sys` (the sandbox's own network devices, nothing
/// writable), with firmware tables hidden.
pub fn mount_sys(root: &Path, empty: &mut Option<PathBuf>) -> Result<(), MountError> {
    let s = root.join("sys");
    mkdir(&s)?;
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(Some("sysfs"), &s, Some("sysfs"), flags, None::<&str>).map_err(nix_err("mounting /sys"))?;
    // OCI's masked paths, plus the host's block devices (statistics of its
    // disks) and the kernel's crash-dump and build notes (physical
    // addresses, build ids).
    for d in ["firmware", "kernel/security", "kernel/debug", "devices/virtual/powercap", "block", "class/block", "dev/block"] {
        let t = s.join(d);
        if t.is_dir() {
            mask_dir(&t, empty).map_err(|e| MountError { what: format!("masking /sys/{d}"), ..e })?;
        }
    }
    for f in ["kernel/vmcoreinfo", "kernel/notes", "kernel/kexec_loaded", "kernel/kexec_crash_loaded", "kernel/kexec_crash_size"] {
        let t = s.join(f);
        if t.is_file() {
            mount(Some(&root.join("dev/null")), &t, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(nix_err(format!("masking /sys/{f}")))?;
        }
    }
    Ok(())
}

/// The v1 controllers a sandbox sees its own limits through: memory and CPU
/// quota (what the JVM, Node's heap sizing and Go's runtime read) and pids:
/// the hierarchies the sandbox has a group of its own in (`Cgroups`
/// creates none in cpuset, and blkio only with I/O limits).
const V1_VISIBLE: &[&str] = &["memory", "cpu", "cpuacct", "pids"];

/// `/sys/fs/cgroup`: the sandbox's own cgroup, read-only, as container
/// runtimes show it. Without it the JVM, Node and others size themselves
/// by the host's memory and CPUs (a 6 GiB heap in a 512 MiB sandbox, which
/// thrashes at the limit instead of collecting). Each mount is a bind of
/// the sandbox's own group, so nothing above it is reachable; the cgroup
/// namespace (entered before) makes `/proc/self/cgroup` and mountinfo show
/// that group as `/`, as runtimes expect. `host` is the host's cgroup root
/// (v2 mount, or v1 controller mounts under it); controllers the host
/// lacks are skipped.
pub fn mount_cgroup(root: &Path, host: &Path, group: &str) -> Result<(), MountError> {
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    const CGROUP_SUPER_MAGIC: i64 = 0x0027_e0eb;
    let fstype = |p: &Path| nix::sys::statfs::statfs(p).map(|s| s.filesystem_type().0).unwrap_or(0);
    let t = root.join("sys/fs/cgroup");
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    // Read-only binds of the sandbox's own group (`group`, relative to
    // each hierarchy's root), not new cgroup filesystem instances: a new
    // instance in a cgroup namespace is a superblock of its own, and the
    // kernel compares every new one with all the others.
    let bind = |src: &Path, at: &Path, what: &str| -> Result<(), MountError> {
        mount(Some(src), at, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(nix_err(format!("binding {what}")))?;
        mount(None::<&str>, at, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags, None::<&str>).map_err(nix_err(format!("making {what} read-only")))
    };
    if fstype(host) == CGROUP2_SUPER_MAGIC {
        return bind(&host.join(group), &t, "/sys/fs/cgroup");
    }
    // v1: a tmpfs holding one directory per hierarchy, named as on the host
    // ("cpu,cpuacct"), with the host's alias symlinks ("cpu").
    let mut hierarchies: Vec<String> = Vec::new();
    let mut aliases: Vec<(String, String)> = Vec::new();
    for e in std::fs::read_dir(host).map_err(|e| err(format!("reading {}", host.display()), e))?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let ft = e.file_type().map_err(|e| err("reading the host's cgroup mounts", e))?;
        if ft.is_symlink() {
            if let Ok(target) = std::fs::read_link(e.path()) {
                aliases.push((name, target.to_string_lossy().into_owned()));
            }
        } else if ft.is_dir() && name.split(',').all(|c| V1_VISIBLE.contains(&c)) && fstype(&e.path()) == CGROUP_SUPER_MAGIC {
            hierarchies.push(name);
        }
    }
    mount(Some("tmpfs"), &t, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC, Some("size=16k,mode=755")).map_err(nix_err("mounting /sys/fs/cgroup"))?;
    for h in &hierarchies {
        let at = t.join(h);
        mkdir(&at)?;
        bind(&host.join(h).join(group), &at, &format!("/sys/fs/cgroup/{h}"))?;
    }
    for (name, target) in aliases {
        if hierarchies.contains(&target) && !target.contains('/') {
            std::os::unix::fs::symlink(&target, t.join(&name)).map_err(|e| err(format!("linking /sys/fs/cgroup/{name}"), e))?;
        }
    }
    mount(None::<&str>, &t, None::<&str>, MsFlags::MS_REMOUNT | flags, Some("size=16k,mode=755")).map_err(nix_err("making /sys/fs/cgroup read-only"))
}

/// `/tmp` on tmpfs, at most half the sandbox's memory and a bounded
/// number of inodes. tmpfs pages are charged to the sandbox's memory
/// cgroup and cannot be reclaimed without swap: an unbounded `/tmp` filled
/// past the memory limit left the OOM killer nothing to free but processes,
/// PID 1 last, and so ended the sandbox. Sized, a write that fills it gets
/// `ENOSPC` and everything lives.
pub fn mount_tmp(root: &Path, id_base: u32, memory_mb: u64) -> Result<(), MountError> {
    let t = root.join("tmp");
    mkdir(&t)?;
    let size_mb = (memory_mb / 2).max(16);
    let inodes = (size_mb * 256).clamp(4096, 1 << 20);
    let opts = format!("mode=1777,size={size_mb}m,nr_inodes={inodes}");
    mount(Some("tmpfs"), &t, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some(opts.as_str())).map_err(nix_err("mounting /tmp"))?;
    chown_root(&t, id_base)
}

/// Gives a fresh mount's root directory to the sandbox's root.
fn chown_root(p: &Path, id_base: u32) -> Result<(), MountError> {
    std::os::unix::fs::chown(p, Some(id_base), Some(id_base)).map_err(|e| err(format!("chowning {}", p.display()), e))
}

/// Makes `root` the root of the mount namespace and detaches the old one,
/// so nothing of the host's tree stays reachable.
pub fn pivot(root: &Path) -> Result<(), MountError> {
    nix::unistd::chdir(root).map_err(nix_err("chdir to new root"))?;
    // pivot_root(".", ".") stacks the old root on top of the new one; the
    // detach below then removes it without needing a directory for it.
    nix::unistd::pivot_root(".", ".").map_err(nix_err("pivot_root"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(nix_err("detaching old root"))?;
    nix::unistd::chdir("/").map_err(nix_err("chdir to /"))?;
    Ok(())
}
