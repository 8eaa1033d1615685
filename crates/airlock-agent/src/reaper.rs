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
        // SAFETY: zeroed rusage is a valid value for wait4 to fill.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // wait4 rather than waitpid: the execution log records each
        // command's CPU time and peak memory, which only the reaper can get.
        // SAFETY: wait4 with valid out-pointers.
        let pid = unsafe { libc::wait4(-1, &mut status, libc::WNOHANG, &mut ru) };
        if pid <= 0 {
            return;
        }
        let ms = |t: libc::timeval| (t.tv_sec.max(0) as u64) * 1000 + (t.tv_usec.max(0) as u64) / 1000;
        let usage = crate::process::table::Usage { cpu_ms: ms(ru.ru_utime) + ms(ru.ru_stime), max_rss_bytes: (ru.ru_maxrss.max(0) as u64) * 1024 };
        agent.processes.reaped(pid as u32, status, Some(usage));
        if let Some(w) = agent.sudo_waiters.lock().unwrap_or_else(|p| p.into_inner()).remove(&(pid as u32)) {
            let _ = w.send(status);
        }
    }
}
