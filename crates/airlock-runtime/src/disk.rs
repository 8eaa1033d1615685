//! Per-sandbox disk limits: when a sandbox has one, its writable layer
//! lives on its own ext4 filesystem in a sparse image file
//! (`<sandbox>/disk.img`, loop-mounted on `<sandbox>/upper`). Filling it
//! gives the sandbox `ENOSPC` and nobody else anything: the host's
//! filesystem and other sandboxes are untouched. The image is sparse, so it
//! costs only what is written; it survives reboots with the sandbox's files
//! and is mounted again when the sandbox restarts.
//!
//! Without a limit the writable layer is a plain directory on the data
//! directory's filesystem, which keeps creation fastest.

use std::path::Path;
use std::process::Command;

use crate::Error;

const IMAGE: &str = "disk.img";

fn run(cmd: &mut Command, what: &str) -> Result<(), Error> {
    let out = cmd.output().map_err(|e| Error::io(format!("{what}: running {:?}", cmd.get_program()), e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::io(what.to_string(), std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_string())))
    }
}

/// Creates a `mb`-MiB ext4 image and mounts it on `<dir>/upper`.
pub fn create_and_mount(dir: &Path, mb: u64) -> Result<(), Error> {
    if mb < 16 {
        return Err(Error::InvalidSpec(format!("disk limit must be at least 16 MiB, got {mb}")));
    }
    let img = dir.join(IMAGE);
    let f = std::fs::File::create(&img).map_err(|e| Error::io("creating disk image", e))?;
    f.set_len(mb * 1024 * 1024).map_err(|e| Error::io("sizing disk image", e))?;
    drop(f);
    // No journal and lazy initialisation: a scratch filesystem for one
    // sandbox, made in tens of milliseconds; no root reserve, the sandbox
    // gets all of it.
    run(
        Command::new("mkfs.ext4").args(["-q", "-F", "-m", "0", "-O", "^has_journal", "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard"]).arg(&img),
        "formatting disk image (is e2fsprogs installed?)",
    )?;
    mount_existing(dir)
}

fn is_mounted(p: &Path) -> bool {
    let Ok(canon) = p.canonicalize() else { return false };
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| m.lines().any(|l| l.split_whitespace().nth(4).map(Path::new) == Some(canon.as_path())))
        .unwrap_or(false)
}

/// Mounts the sandbox's image on `upper` if it has one and it is not mounted.
pub fn mount_existing(dir: &Path) -> Result<(), Error> {
    let img = dir.join(IMAGE);
    if !img.exists() {
        return Ok(());
    }
    let upper = dir.join("upper");
    std::fs::create_dir_all(&upper).map_err(|e| Error::io("creating upper", e))?;
    if is_mounted(&upper) {
        return Ok(());
    }
    run(Command::new("mount").args(["-o", "loop,nosuid,nodev"]).arg(&img).arg(&upper), "mounting disk image")
}

/// Unmounts the image (the loop device is released with it).
pub fn unmount(dir: &Path) {
    let upper = dir.join("upper");
    if dir.join(IMAGE).exists() && is_mounted(&upper) {
        let _ = nix::mount::umount2(&upper, nix::mount::MntFlags::MNT_DETACH);
    }
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
