//! `Start`: checks the request, prepares the command (environment,
//! working directory, stdio or PTY), spawns it as the request's user
//! through `crate::spawn`, registers it in the table and starts its
//! supervisor.

use std::collections::{BTreeMap, VecDeque};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use airlock_proto::connect::{Code, ConnectError};
use airlock_proto::envd::{DataOutput, ProcessConfig, PtySize, StartRequest};
use tokio::sync::{mpsc, watch};

use super::io::{input_writer, supervise, Pump};
use super::pty::{dup, open_pty};
use super::table::{Output, Proc};
use crate::rpc::RequestCtx;
use crate::spawn;
use crate::users::User;
use crate::Agent;

/// Environment of a command, in envd's order: PATH, HOME, USER, LOGNAME,
/// then sandbox-wide variables, then the request's (last wins).
pub(crate) fn command_env(agent: &Agent, user: &User, req: &BTreeMap<String, String>, pty: bool) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert("PATH".to_string(), agent.config.path.clone());
    env.insert("HOME".to_string(), user.home.display().to_string());
    env.insert("USER".to_string(), user.name.clone());
    env.insert("LOGNAME".to_string(), user.name.clone());
    env.insert("SHELL".to_string(), if user.shell.is_empty() { "/bin/sh".into() } else { user.shell.clone() });
    if pty {
        env.insert("TERM".to_string(), "xterm-256color".to_string());
    }
    for (k, v) in &agent.session().env {
        env.insert(k.clone(), v.clone());
    }
    for (k, v) in req {
        env.insert(k.clone(), v.clone());
    }
    env
}

/// A process's command as the log shows it: `bash -l -c 'x'` as `x`.
fn command_line(c: &ProcessConfig) -> String {
    if matches!(c.cmd.as_str(), "/bin/bash" | "bash" | "/bin/sh" | "sh")
        && c.args.len() >= 2
        && c.args[c.args.len() - 2].ends_with('c')
        && c.args[c.args.len() - 2].starts_with('-')
    {
        return c.args[c.args.len() - 1].clone();
    }
    std::iter::once(c.cmd.as_str()).chain(c.args.iter().map(String::as_str)).collect::<Vec<_>>().join(" ")
}

pub(crate) fn start(agent: &Arc<Agent>, r: StartRequest, ctx: &RequestCtx) -> Result<Arc<Proc>, ConnectError> {
    if r.process.cmd.is_empty() {
        return Err(ConnectError::invalid_argument("process.cmd is required"));
    }
    let user = &ctx.user;
    let cwd = crate::paths::resolve(r.process.cwd.as_deref().unwrap_or(""), user, agent.config.default_workdir.as_deref());
    match std::fs::metadata(&cwd) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(ConnectError::invalid_argument(format!("cwd '{}' is not a directory", cwd.display()))),
        Err(_) => return Err(ConnectError::invalid_argument(format!("cwd '{}' does not exist", cwd.display()))),
    }
    let pty_size = r.pty.map(|p| p.size.unwrap_or(PtySize { cols: 80, rows: 24 }));
    let want_stdin = r.stdin.unwrap_or(true) || pty_size.is_some();

    let mut cmd = std::process::Command::new(&r.process.cmd);
    cmd.args(&r.process.args).current_dir(&cwd).env_clear();
    cmd.envs(command_env(agent, user, &r.process.envs, pty_size.is_some()));

    let (uid, gid) = (user.uid, user.gid);
    let mut pty_master = None;
    let mut slave_fd: Option<OwnedFd> = None;
    if let Some(size) = pty_size {
        let (m, s) = open_pty(size)?;
        // The child owns its terminal: chown the slave so programs that
        // check the tty's owner (ssh-like tools, `mesg`) are content.
        // SAFETY: fchown on an fd we own.
        unsafe { libc::fchown(s.as_raw_fd(), uid, gid) };
        cmd.stdin(Stdio::from(dup(&s)?)).stdout(Stdio::from(dup(&s)?)).stderr(Stdio::from(dup(&s)?));
        pty_master = Some(m);
        slave_fd = Some(s);
    } else {
        cmd.stdin(if want_stdin { Stdio::piped() } else { Stdio::null() }).stdout(Stdio::piped()).stderr(Stdio::piped());
    }
    let setup = spawn::Setup::new(user, if pty_master.is_some() { spawn::Session::Terminal } else { spawn::Session::ProcessGroup });

    // Hold the table lock across spawn and insert so the reaper cannot
    // collect the exit status before the process is registered.
    let mut table = agent.processes.lock();
    if let Some(tag) = &r.tag {
        if let Some(old) = table.tags.get(tag).and_then(|p| table.procs.get(p)) {
            if !old.exited() {
                return Err(ConnectError::new(Code::AlreadyExists, format!("a running process already has tag {tag}")));
            }
        }
    }
    let mut child = spawn::spawn(cmd, setup).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ConnectError::invalid_argument(format!("executable '{}' not found", r.process.cmd)),
        std::io::ErrorKind::PermissionDenied => ConnectError::new(Code::PermissionDenied, format!("cannot execute '{}': {e}", r.process.cmd)),
        // The request's own arguments and environment are too big for exec.
        _ if e.raw_os_error() == Some(libc::E2BIG) => ConnectError::invalid_argument(format!("cannot execute '{}': arguments and environment are too long", r.process.cmd)),
        _ => ConnectError::internal(format!("starting '{}': {e}", r.process.cmd)),
    })?;
    drop(slave_fd);
    let pid = child.id();
    let (status_tx, status_rx) = watch::channel(None);

    let mut pumps: Vec<Pump> = Vec::new();
    let mut input_fd: Option<OwnedFd> = None;
    let master = pty_master.map(Arc::new);
    if let Some(m) = &master {
        pumps.push((dup(m)?, DataOutput::Pty));
        input_fd = Some(dup(m)?);
    } else {
        if let Some(o) = child.stdout.take() {
            pumps.push((OwnedFd::from(o), DataOutput::Stdout));
        }
        if let Some(e) = child.stderr.take() {
            pumps.push((OwnedFd::from(e), DataOutput::Stderr));
        }
        if let Some(i) = child.stdin.take() {
            input_fd = Some(OwnedFd::from(i));
        }
    }
    // The reaper owns waiting; the std handle must not be used for it.
    drop(child);

    let input = input_fd.map(|fd| {
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(input_writer(fd, rx));
        tx
    });
    let p = Arc::new(Proc {
        pid,
        config: ProcessConfig { cwd: Some(cwd.display().to_string()), ..r.process.clone() },
        tag: r.tag.clone(),
        pty: master,
        input,
        output: Mutex::new(Output { history: VecDeque::new(), history_bytes: 0, subscribers: Vec::new(), end: None }),
        status: status_tx,
        exec: Mutex::new(Some(agent.log.started(pid, &command_line(&r.process)))),
        log: agent.log.clone(),
        usage: Mutex::new(None),
    });
    table.procs.insert(pid, p.clone());
    if let Some(tag) = &r.tag {
        table.tags.insert(tag.clone(), pid);
    }
    drop(table);
    tracing::debug!(pid, cmd = %r.process.cmd, user = %user.name, "process started");

    tokio::spawn(supervise(p.clone(), pumps, status_rx, ctx.timeout));
    Ok(p)
}
