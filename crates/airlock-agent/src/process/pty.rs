//! PTYs: opening a pair from the sandbox's own devpts instance, resizing,
//! and duplicating the master for the pump and the stdin writer.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use airlock_proto::connect::ConnectError;
use airlock_proto::envd::PtySize;

pub(crate) fn set_winsize(master: &OwnedFd, size: PtySize) -> Result<(), ConnectError> {
    let ws = libc::winsize { ws_row: size.rows.min(u16::MAX as u32) as u16, ws_col: size.cols.min(u16::MAX as u32) as u16, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads a winsize struct we own from a valid pointer.
    let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if rc != 0 {
        return Err(ConnectError::internal(format!("resizing pty: {}", std::io::Error::last_os_error())));
    }
    Ok(())
}

pub(crate) fn dup(fd: &OwnedFd) -> Result<OwnedFd, ConnectError> {
    fd.try_clone().map_err(|e| ConnectError::internal(format!("dup: {e}")))
}

/// Opens a new PTY pair from the sandbox's own devpts instance.
pub(crate) fn open_pty(size: PtySize) -> Result<(OwnedFd, OwnedFd), ConnectError> {
    let err = |what: &str| ConnectError::internal(format!("{what}: {}", std::io::Error::last_os_error()));
    // SAFETY: standard posix_openpt/grantpt/unlockpt/ptsname_r sequence on
    // fds we own; the name buffer is sized and NUL-terminated by the kernel.
    unsafe {
        let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        if m < 0 {
            return Err(err("opening /dev/ptmx"));
        }
        let master = OwnedFd::from_raw_fd(m);
        if libc::grantpt(m) != 0 || libc::unlockpt(m) != 0 {
            return Err(err("unlocking pty"));
        }
        let mut name = [0 as libc::c_char; 128];
        if libc::ptsname_r(m, name.as_mut_ptr(), name.len()) != 0 {
            return Err(err("ptsname"));
        }
        let path = CString::from_vec_unchecked(std::ffi::CStr::from_ptr(name.as_ptr()).to_bytes().to_vec());
        let s = libc::open(path.as_ptr(), libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        if s < 0 {
            return Err(err("opening pty slave"));
        }
        let slave = OwnedFd::from_raw_fd(s);
        set_winsize(&master, size)?;
        Ok((master, slave))
    }
}
