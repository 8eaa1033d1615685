//! PID 1 duty: collect every child that exits, ours or orphaned, and hand
//! the statuses of processes the agent started to the process table.

use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};

pub(crate) fn start(agent: Arc<crate::Agent>) {
    let mut sigchld = match signal(SignalKind::child()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGCHLD; exit statuses will be lost");
            return;
        }
    };
    tokio::spawn(async move {
        loop {
            reap_all(&agent);
            if sigchld.recv().await.is_none() {
                return;
            }
        }
    });
}

fn reap_all(agent: &crate::Agent) {
    loop {
        let mut status = 0;
        // SAFETY: waitpid with a valid out-pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return;
        }
        agent.processes.reaped(pid as u32, status);
        if let Some(w) = agent.sudo_waiters.lock().unwrap_or_else(|p| p.into_inner()).remove(&(pid as u32)) {
            let _ = w.send(status);
        }
    }
}
