//! Per-sandbox disk limits: when a sandbox has one, its writable layer
//! lives on its own ext4 filesystem in a sparse image file
//! (`<sandbox>/disk.img`, loop-mounted on `<sandbox>/upper`). Filling it
//! gives the sandbox `ENOSPC` (or, out of inodes, the same) and nobody else
//! anything: the host's filesystem and other sandboxes are untouched, and a
//! million empty files cost the host one sandbox's inode table, not its
//! own. Usage is the filesystem's own counters (`statvfs`), never a walk.
//! The image is sparse, so it costs only what is written; it survives
//! reboots with the sandbox's files and is mounted again when the sandbox
//! restarts.
//!
//! Creation is on the create path, so it is kept to a few milliseconds:
//! each size is formatted once, by `mkfs.ext4`, into a cached master image
//! (`<data>/disk-cache/`), and a sandbox's image is a sparse copy of its
//! allocated extents (a few MiB of metadata); the loop device is attached
//! with `LOOP_CONFIGURE` and mounted directly, with no helper processes.
//! `noinit_itable` keeps the kernel from zeroing inode tables in the
//! background (which would write tens of MiB per image).
//!
//! Without a limit the writable layer is a plain directory on the data
//! directory's filesystem.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use crate::Error;

pub const IMAGE: &str = "disk.img";
/// The smallest limit: below it ext4's own metadata crowds out the files.
pub const MIN_MB: u64 = 16;

const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_FLAGS_DIRECT_IO: u32 = 16;

#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// Whether this host can give sandboxes disk limits: loop devices and
/// `mkfs.ext4`. Probed once by the backend at start.
pub fn available() -> bool {
    let loop_ok = OpenOptions::new().read(true).write(true).open("/dev/loop-control").is_ok();
    let mkfs_ok = Command::new("mkfs.ext4").arg("-V").output().map(|o| o.status.success()).unwrap_or(false);
    loop_ok && mkfs_ok
}

fn run(cmd: &mut Command, what: &str) -> Result<(), Error> {
    let out = cmd.output().map_err(|e| Error::io(format!("{what}: running {:?}", cmd.get_program()), e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::io(what.to_string(), std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_string())))
    }
}

/// The formatted master image for `mb`, made on first use. Serialised so
/// concurrent creates format it once; atomic (formatted aside, renamed).
fn master(cache: &Path, mb: u64) -> Result<PathBuf, Error> {
    static FORMAT: Mutex<()> = Mutex::new(());
    let path = cache.join(format!("ext4-{mb}m.img"));
    if path.exists() {
        return Ok(path);
    }
    let _g = FORMAT.lock().unwrap_or_else(|p| p.into_inner());
    if path.exists() {
        return Ok(path);
    }
    std::fs::create_dir_all(cache).map_err(|e| Error::io("creating disk cache", e))?;
    let tmp = cache.join(format!(".ext4-{mb}m.img.{}", std::process::id()));
    let f = File::create(&tmp).map_err(|e| Error::io("creating disk image", e))?;
    f.set_len(mb * 1024 * 1024).map_err(|e| Error::io("sizing disk image", e))?;
    drop(f);
    // No journal (a scratch filesystem for one sandbox), no reserved GDT
    // blocks (4 MiB of the image for 10 GiB; growing online still works
    // through meta_bg) and lazy inode
    // tables; no root reserve: the sandbox gets all of it. Root of the
    // filesystem owned by root, as the writable layer's directory was.
    let formatted = run(
        Command::new("mkfs.ext4").args(["-q", "-F", "-m", "0", "-O", "^has_journal,^resize_inode", "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard"]).arg(&tmp),
        "formatting disk image (is e2fsprogs installed?)",
    );
    if let Err(e) = formatted {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, &path).map_err(|e| Error::io("storing disk image", e))?;
    Ok(path)
}

/// Copies only the allocated extents of `src` into a new sparse `dst`.
fn sparse_copy(src: &Path, dst: &Path) -> std::io::Result<()> {
    let s = File::open(src)?;
    let d = OpenOptions::new().write(true).create_new(true).mode(0o600).open(dst)?;
    airlock_template::copy::copy_sparse(&s, &d).map(|_| ())
}

/// Creates a `mb`-MiB ext4 image for the sandbox in `dir` and mounts it on
/// `<dir>/upper`. `cache` holds the formatted masters.
pub fn create_and_mount(cache: &Path, dir: &Path, mb: u64) -> Result<(), Error> {
    create_image(cache, &dir.join(IMAGE), mb)?;
    // A fresh image: nothing to check before mounting it.
    mount_image(dir)
}

/// Creates a new `mb`-MiB ext4 image at `img` (a sparse copy of the cached
/// master for that size); never overwrites one.
pub fn create_image(cache: &Path, img: &Path, mb: u64) -> Result<(), Error> {
    if mb < MIN_MB {
        return Err(Error::InvalidSpec(format!("disk limit must be at least {MIN_MB} MiB, got {mb}")));
    }
    let master = master(cache, mb)?;
    sparse_copy(&master, img).map_err(|e| Error::io("copying disk image", e))
}

/// Mounts the ext4 image `img` on `at` (created if missing) unless
/// something is mounted there already. Other users of images (volumes)
/// than sandboxes' writable layers use this one.
pub fn mount_image_at(img: &Path, at: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(at).map_err(|e| Error::io("creating mount point", e))?;
    if is_mounted(at) {
        return Ok(());
    }
    attach_and_mount(img, at)
}

/// Unmounts whatever is mounted on `at` (an image's loop device goes with
/// it). Nothing mounted (EINVAL) is fine.
pub fn unmount_at(at: &Path) {
    let _ = nix::mount::umount2(at, nix::mount::MntFlags::MNT_DETACH);
}

/// (used, total) bytes of the filesystem at `at`.
pub fn usage_at(at: &Path) -> Option<(u64, u64)> {
    let st = nix::sys::statvfs::statvfs(at).ok()?;
    let total = st.blocks() * st.fragment_size();
    let free = st.blocks_available() * st.fragment_size();
    Some((total.saturating_sub(free), total))
}

pub fn is_mounted(p: &Path) -> bool {
    let Ok(canon) = p.canonicalize() else { return false };
    std::fs::read_to_string("/proc/self/mountinfo").map(|m| m.lines().any(|l| l.split_whitespace().nth(4).map(Path::new) == Some(canon.as_path()))).unwrap_or(false)
}

/// Attaches `img` to a free loop device that detaches itself once the
/// filesystem on it is unmounted; returns the device's path.
fn attach_loop(img: &Path) -> std::io::Result<(PathBuf, File)> {
    let backing = OpenOptions::new().read(true).write(true).custom_flags(libc::O_CLOEXEC).open(img)?;
    let ctl = OpenOptions::new().read(true).write(true).custom_flags(libc::O_CLOEXEC).open("/dev/loop-control")?;
    // Another process may take the free device between GET_FREE and
    // CONFIGURE: then ask again.
    for _ in 0..64 {
        // SAFETY: ioctl without argument on the loop-control device.
        let n = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let dev_path = PathBuf::from(format!("/dev/loop{n}"));
        let dev = OpenOptions::new().read(true).write(true).custom_flags(libc::O_CLOEXEC).open(&dev_path)?;
        // SAFETY: an all-zero loop_config is valid; fields set below.
        let mut cfg: LoopConfig = unsafe { std::mem::zeroed() };
        cfg.fd = backing.as_raw_fd() as u32;
        // Direct I/O to the image: no second copy of every page in the
        // host's cache, and the loop device's I/O is submitted on behalf of
        // the sandbox's cgroup, so its I/O limits apply. The kernel falls
        // back to buffered I/O where the host filesystem cannot.
        cfg.info.lo_flags = LO_FLAGS_AUTOCLEAR | LO_FLAGS_DIRECT_IO;
        // SAFETY: LOOP_CONFIGURE with a pointer to a fully initialised loop_config.
        if unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CONFIGURE, &cfg as *const LoopConfig) } == 0 {
            return Ok((dev_path, dev));
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EBUSY) {
            return Err(e);
        }
    }
    Err(std::io::Error::other("no free loop device"))
}

/// Mounts the sandbox's image on `upper` if it has one and it is not mounted
/// (a sandbox restarted over its files after a reboot).
pub fn mount_existing(dir: &Path) -> Result<(), Error> {
    if !dir.join(IMAGE).exists() || is_mounted(&dir.join("upper")) {
        return Ok(());
    }
    mount_image(dir)
}

fn mount_image(dir: &Path) -> Result<(), Error> {
    let upper = dir.join("upper");
    std::fs::create_dir_all(&upper).map_err(|e| Error::io("creating upper", e))?;
    attach_and_mount(&dir.join(IMAGE), &upper)
}

fn attach_and_mount(img: &Path, upper: &Path) -> Result<(), Error> {
    let (dev, dev_fd) = attach_loop(img).map_err(|e| Error::io("attaching disk image to a loop device", e))?;
    let mounted = nix::mount::mount(Some(dev.as_path()), upper, Some("ext4"), nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV, Some("noinit_itable"));
    // With autoclear set, closing our descriptor detaches the device now if
    // the mount failed, or when the filesystem is unmounted.
    drop(dev_fd);
    mounted.map_err(|e| Error::io("mounting disk image", std::io::Error::from_raw_os_error(e as i32)))
}

/// Unmounts the image (the loop device is released with it). Not mounted
/// (EINVAL) is fine: no need to read the mount table first.
pub fn unmount(dir: &Path) {
    if dir.join(IMAGE).exists() {
        let _ = nix::mount::umount2(&dir.join("upper"), nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Whether the sandbox in `dir` has a disk image (a size-limited writable layer).
pub fn has_image(dir: &Path) -> bool {
    dir.join(IMAGE).exists()
}

/// The size of the sandbox's disk image in MiB, if it has one.
pub fn image_mb(dir: &Path) -> Option<u64> {
    std::fs::metadata(dir.join(IMAGE)).ok().map(|m| m.len() >> 20)
}

const LOOP_SET_CAPACITY: libc::c_ulong = 0x4C07;
/// `_IOW('f', 16, __u64)`: grow a mounted ext4 to a block count.
const EXT4_IOC_RESIZE_FS: libc::c_ulong = 0x4008_6610;

/// Grows a sandbox's disk limit to `mb` while it runs: the image file is
/// extended (sparse), its loop device told the new size, and the mounted
/// ext4 grown online by the kernel, so the sandbox sees the room at once
/// and loses nothing. Shrinking is refused: ext4 cannot shrink mounted.
pub fn grow(dir: &Path, mb: u64) -> Result<(), Error> {
    let img = dir.join(IMAGE);
    let upper = dir.join("upper");
    let have = std::fs::metadata(&img).map_err(|e| Error::io("reading the disk image", e))?.len();
    let want = mb << 20;
    if want < have {
        return Err(Error::InvalidSpec(format!("the disk limit cannot be lowered while the sandbox runs ({} MiB now, {mb} MiB asked)", have >> 20)));
    }
    if want == have {
        return Ok(());
    }
    // The kernel grows a mounted ext4 only for CAP_SYS_RESOURCE: without
    // it, say so before anything changes.
    if !can_grow() {
        return Err(Error::InvalidSpec("this server cannot grow a running sandbox's disk: growing a mounted ext4 needs CAP_SYS_RESOURCE, which the server lacks".into()));
    }
    let dev = loop_device_of(&upper).ok_or_else(|| Error::InvalidSpec("the sandbox's disk is not mounted".into()))?;
    let f = OpenOptions::new().write(true).custom_flags(libc::O_CLOEXEC).open(&img).map_err(|e| Error::io("opening the disk image", e))?;
    let d = OpenOptions::new().read(true).custom_flags(libc::O_CLOEXEC).open(&dev).map_err(|e| Error::io("opening the loop device", e))?;
    let set_capacity = || {
        // SAFETY: LOOP_SET_CAPACITY takes no argument; the fd is a loop device.
        if unsafe { libc::ioctl(d.as_raw_fd(), LOOP_SET_CAPACITY, 0) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    f.set_len(want).map_err(|e| Error::io("extending the disk image", e))?;
    let grown = set_capacity().map_err(|e| Error::io("resizing the loop device", e)).and_then(|()| {
        let st = nix::sys::statvfs::statvfs(&upper).map_err(|e| Error::io("reading the disk's block size", std::io::Error::from_raw_os_error(e as i32)))?;
        let blocks: u64 = want / st.fragment_size().max(1);
        let m = OpenOptions::new().read(true).custom_flags(libc::O_CLOEXEC | libc::O_DIRECTORY).open(&upper).map_err(|e| Error::io("opening the disk", e))?;
        // SAFETY: EXT4_IOC_RESIZE_FS reads one u64 (the new block count) from the pointer.
        if unsafe { libc::ioctl(m.as_raw_fd(), EXT4_IOC_RESIZE_FS, &blocks as *const u64) } != 0 {
            return Err(Error::io("growing the sandbox's filesystem", std::io::Error::last_os_error()));
        }
        Ok(())
    });
    if grown.is_err() {
        // The filesystem is still the old size: so is the image again.
        let _ = f.set_len(have);
        let _ = set_capacity();
    }
    grown
}

/// Whether this process may grow a mounted ext4 (`CAP_SYS_RESOURCE` in
/// its effective set).
pub fn can_grow() -> bool {
    const CAP_SYS_RESOURCE: u32 = 24;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("CapEff:").and_then(|v| u64::from_str_radix(v.trim(), 16).ok())))
        .is_some_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0)
}

/// The loop device mounted on `at`, from the mount table.
fn loop_device_of(at: &Path) -> Option<PathBuf> {
    let canon = at.canonicalize().ok()?;
    let table = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    table.lines().rev().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        (pre.split_whitespace().nth(4).map(Path::new) == Some(canon.as_path())).then(|| post.split_whitespace().nth(1).map(PathBuf::from))?
    })
}

/// (used, total) bytes of the sandbox's limited writable layer, if it has one.
pub fn limit(dir: &Path) -> Option<(u64, u64)> {
    if !dir.join(IMAGE).exists() {
        return None;
    }
    let st = nix::sys::statvfs::statvfs(&dir.join("upper")).ok()?;
    let total = st.blocks() * st.fragment_size();
    let free = st.blocks_free() * st.fragment_size();
    Some((total.saturating_sub(free), total))
}

/// The type of the filesystem `p` is on, by its `statfs` magic, for
/// messages ("ext4", "tmpfs", …, or the magic in hex).
pub fn fs_name(p: &Path) -> String {
    let Ok(c) = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(p.as_os_str())) else { return "unknown".into() };
    // SAFETY: an all-zero statfs is a valid value of the plain C struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: statfs fills the struct for a valid NUL-terminated path.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return "unknown".into();
    }
    match st.f_type as i64 {
        0xEF53 => "ext4".into(),
        0x5846_5342 => "xfs".into(),
        0x9123_683E => "btrfs".into(),
        0x0102_1994 => "tmpfs".into(),
        0x8584_58F6 => "ramfs".into(),
        0x794C_7630 => "overlayfs".into(),
        0x0102_1997 => "9p".into(),
        0x6969 => "nfs".into(),
        0x6573_5546 => "fuse".into(),
        0xF2F5_2010 => "f2fs".into(),
        t => format!("type {t:#x}"),
    }
}

/// The running kernel's release (`uname -r`).
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_else(|_| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_copy_keeps_data_and_holes() {
        let dir = tempfile::tempdir().expect("tmp");
        let src = dir.path().join("src");
        let f = File::create(&src).expect("create");
        f.set_len(64 << 20).expect("len");
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"head", 0).expect("write");
        f.write_all_at(b"middle", 32 << 20).expect("write");
        drop(f);
        let dst = dir.path().join("dst");
        sparse_copy(&src, &dst).expect("copy");
        assert_eq!(std::fs::read(&src).expect("read"), std::fs::read(&dst).expect("read"));
        use std::os::unix::fs::MetadataExt;
        assert!(std::fs::metadata(&dst).expect("meta").blocks() * 512 < 1 << 20, "the copy stays sparse");
        assert!(sparse_copy(&src, &dst).is_err(), "never overwrites an existing image");
    }
}
