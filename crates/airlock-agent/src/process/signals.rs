//! Signals sent to processes and the end events made of their exit
//! statuses, in the words Go and envd use.

use airlock_proto::connect::ConnectError;
use airlock_proto::envd::{EndEvent, ProcessSelector};

use super::table::{not_found, Proc};

impl Proc {
    pub(crate) fn signal(&self, sig: i32) -> Result<(), ConnectError> {
        if self.exited() {
            return Err(not_found(&ProcessSelector::Pid(self.pid)));
        }
        // Signal the whole process group: `bash -c` children die with it.
        // SAFETY: plain kill(2) on a pid we started.
        let rc = unsafe { libc::kill(-(self.pid as i32), sig) };
        if rc != 0 {
            // SAFETY: as above; the group may not exist if the leader changed it.
            let rc2 = unsafe { libc::kill(self.pid as i32, sig) };
            if rc2 != 0 {
                return Err(ConnectError::internal(format!("sending signal to pid {}: {}", self.pid, std::io::Error::last_os_error())));
            }
        }
        Ok(())
    }
}

/// Go's `ProcessState.String()` and envd's exit code convention (-1 when
/// killed by a signal), which the SDKs show to users.
pub(crate) fn end_event(raw: i32) -> EndEvent {
    if libc::WIFEXITED(raw) {
        let code = libc::WEXITSTATUS(raw);
        let status = format!("exit status {code}");
        EndEvent { exit_code: code, exited: true, error: (code != 0).then(|| status.clone()), status }
    } else if libc::WIFSIGNALED(raw) {
        let sig = libc::WTERMSIG(raw);
        let status = format!("signal: {}", signal_name(sig));
        EndEvent { exit_code: -1, exited: false, error: Some(status.clone()), status }
    } else {
        EndEvent { exit_code: -1, exited: false, status: "unknown".into(), error: Some("unknown".into()) }
    }
}

fn signal_name(sig: i32) -> String {
    match sig {
        libc::SIGHUP => "hangup".into(),
        libc::SIGINT => "interrupt".into(),
        libc::SIGQUIT => "quit".into(),
        libc::SIGILL => "illegal instruction".into(),
        libc::SIGTRAP => "trace/breakpoint trap".into(),
        libc::SIGABRT => "aborted".into(),
        libc::SIGBUS => "bus error".into(),
        libc::SIGFPE => "floating point exception".into(),
        libc::SIGKILL => "killed".into(),
        libc::SIGUSR1 => "user defined signal 1".into(),
        libc::SIGSEGV => "segmentation fault".into(),
        libc::SIGUSR2 => "user defined signal 2".into(),
        libc::SIGPIPE => "broken pipe".into(),
        libc::SIGALRM => "alarm clock".into(),
        libc::SIGTERM => "terminated".into(),
        libc::SIGXCPU => "CPU time limit exceeded".into(),
        libc::SIGXFSZ => "file size limit exceeded".into(),
        n => format!("signal {n}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_events_match_go_strings() {
        let e = end_event(0);
        assert_eq!((e.exit_code, e.exited, e.status.as_str(), e.error.is_none()), (0, true, "exit status 0", true));
        let e = end_event(3 << 8);
        assert_eq!((e.exit_code, e.error.as_deref()), (3, Some("exit status 3")));
        let e = end_event(libc::SIGKILL);
        assert_eq!((e.exit_code, e.exited, e.status.as_str()), (-1, false, "signal: killed"));
    }
}
