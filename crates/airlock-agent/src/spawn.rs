//! Starting a command as a sandbox user, for `process` and `interp` alike:
//! the steps a child takes between fork and exec (its process group or
//! session, descriptors on fixed numbers, the user's groups and ids, the
//! umask, default signal dispositions), the OOM score set once it has
//! exec'd, and the pipe and non-blocking descriptor helpers both callers
//! use to talk to their children.
//!
//! Between fork and exec the child is a copy of a multi-threaded agent, so
//! only async-signal-safe calls run there, on values prepared before the
//! fork: no allocation, no locks, no logging. What a caller wants different
//! is described by a [`Setup`] beforehand rather than by running the
//! caller's code in the child. This module does not choose the command, its
//! arguments, environment, working directory or stdio: callers set those on
//! the `Command` they hand over.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::users::User;

/// Most descriptors a child can be given on fixed numbers; the pre-exec
/// code keeps their temporary copies in an array of this size, since it
/// cannot allocate.
const MAX_FIXED_FDS: usize = 8;
/// Fixed descriptors are first copied to numbers at or above this, so that
/// placing one cannot overwrite another that is still to be placed.
const FIRST_SPARE_FD: RawFd = 10;

/// How the child stands towards signals and terminals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Session {
    /// Leader of a new process group (`setpgid(0, 0)`), so that signalling
    /// the group reaches the command's own children too.
    ProcessGroup,
    /// Leader of a new session (`setsid`) whose controlling terminal is its
    /// stdin, which must be a PTY slave (`TIOCSCTTY`), as for a login shell.
    Terminal,
}

/// What the child does between fork and exec.
pub(crate) struct Setup<'a> {
    uid: libc::uid_t,
    gid: libc::gid_t,
    /// Supplementary groups followed by the primary group.
    groups: Vec<libc::gid_t>,
    session: Session,
    /// Descriptors to place at fixed numbers in the child: `(fd, number)`.
    /// Borrowed, so they stay open until `spawn` has returned.
    fixed: Vec<(BorrowedFd<'a>, RawFd)>,
}

impl<'a> Setup<'a> {
    /// Runs the child as `user` (its groups, then its gid, then its uid).
    pub(crate) fn new(user: &User, session: Session) -> Self {
        let mut groups: Vec<libc::gid_t> = user.groups.clone();
        groups.push(user.gid);
        Self { uid: user.uid, gid: user.gid, groups, session, fixed: Vec::new() }
    }

    /// Gives the child `fd` as descriptor number `at` (below
    /// `FIRST_SPARE_FD`), without close-on-exec.
    pub(crate) fn fd_at(mut self, fd: BorrowedFd<'a>, at: RawFd) -> Self {
        self.fixed.push((fd, at));
        self
    }
}

/// Spawns `cmd` as `setup` says, then sets the child's OOM score
/// (`crate::set_child_oom_score`, which must wait until the child has
/// exec'd, that is until `Command::spawn` has returned).
///
/// The caller owns waiting: the agent's reaper collects every child, so
/// the returned handle is for its pipes and pid only.
pub(crate) fn spawn(mut cmd: Command, setup: Setup<'_>) -> io::Result<Child> {
    let Setup { uid, gid, groups, session, fixed } = setup;
    if fixed.len() > MAX_FIXED_FDS || fixed.iter().any(|(_, at)| !(0..FIRST_SPARE_FD).contains(at)) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "unsupported fixed descriptor layout"));
    }
    let fixed: Vec<(RawFd, RawFd)> = fixed.iter().map(|(fd, at)| (fd.as_raw_fd(), *at)).collect();
    // SAFETY: the closure runs in the child between fork and exec. It only
    // reads values moved into it before the fork (no allocation, no locks)
    // and makes async-signal-safe calls: fcntl, dup2, close, setpgid,
    // setsid, ioctl, setgroups, setresgid, setresuid, umask, signal. The
    // descriptors in `fixed` are open: the caller's borrows in `Setup` keep
    // them so until this function returns.
    unsafe {
        cmd.pre_exec(move || {
            // Move the fixed descriptors out of the way first, then onto
            // their numbers; dup2 leaves the copies without close-on-exec.
            let mut spare = [-1 as RawFd; MAX_FIXED_FDS];
            for (slot, (fd, _)) in spare.iter_mut().zip(&fixed) {
                *slot = libc::fcntl(*fd, libc::F_DUPFD, FIRST_SPARE_FD);
                if *slot < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            for (copy, (_, at)) in spare.iter().zip(&fixed) {
                if libc::dup2(*copy, *at) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            for copy in &spare[..fixed.len()] {
                libc::close(*copy);
            }
            match session {
                Session::ProcessGroup => {
                    if libc::setpgid(0, 0) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Session::Terminal => {
                    if libc::setsid() < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
            }
            if libc::setgroups(groups.len(), groups.as_ptr()) < 0 || libc::setresgid(gid, gid, gid) < 0 || libc::setresuid(uid, uid, uid) < 0 {
                return Err(io::Error::last_os_error());
            }
            libc::umask(0o022);
            // Restore default dispositions the agent may have changed (std
            // resets SIGPIPE itself before this runs; this keeps it so
            // whatever std does).
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    crate::set_child_oom_score(child.id());
    Ok(child)
}

/// A pipe, both ends close-on-exec: `(read, write)`.
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

pub(crate) fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fcntl on an fd we own.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Makes `fd` non-blocking and registers it with the runtime for
/// `interest`. Works for any descriptor type (pipes, PTY masters).
pub(crate) fn async_fd(fd: OwnedFd, interest: Interest) -> io::Result<AsyncFd<OwnedFd>> {
    set_nonblocking(&fd)?;
    // SAFETY: the AsyncFd owns `fd` for its whole registration; it is not
    // closed or registered elsewhere meanwhile.
    unsafe { AsyncFd::register_with_interest(fd, interest) }.map_err(io::Error::from)
}

pub(crate) enum ReadResult {
    Data(usize),
    WouldBlock,
    Eof,
    Err,
}

/// One non-blocking read into `buf`.
pub(crate) fn read_nb(fd: &OwnedFd, buf: &mut [u8]) -> ReadResult {
    // SAFETY: reading into a buffer we own, of its length.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n > 0 {
        ReadResult::Data(n as usize)
    } else if n == 0 {
        ReadResult::Eof
    } else {
        match io::Error::last_os_error().raw_os_error() {
            Some(libc::EAGAIN) => ReadResult::WouldBlock,
            Some(libc::EINTR) => ReadResult::WouldBlock,
            // A PTY master reads EIO once every slave fd is closed: that is EOF.
            _ => ReadResult::Err,
        }
    }
}
