//! `sudo` inside a sandbox, as E2B's templates have it: the `user` may run
//! anything as root without a password. A setuid `sudo` cannot work here
//! (every process runs under `no_new_privs`), so `/usr/local/bin/sudo` is
//! this binary (bound there read-only by the launcher) acting as a client:
//! it hands its stdin, stdout and stderr, arguments, working directory and
//! environment to the agent over an abstract unix socket in the sandbox's
//! network namespace (so only the sandbox's processes reach it), the agent
//! starts the command as the target user in its own process group, and the
//! client relays signals and exits with the command's status.
//!
//! Root here is root inside the sandbox only: the agent is already root in
//! the sandbox's user namespace and grants nothing beyond it. What `sudo`
//! gives, `commands.run(user="root")` gives too.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::spawn::{Session, Setup};

/// The abstract socket's name.
pub const SOCKET_NAME: &[u8] = b"airlock-sudo";
/// Largest request (arguments and environment).
const MAX_REQUEST: usize = 1 << 20;
/// What sudo's `secure_path` sets.
const SECURE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// What sudo's `env_reset` keeps of the caller's environment.
const KEPT: &[&str] = &["TERM", "LANG", "LANGUAGE", "DISPLAY", "XAUTHORITY", "COLORTERM", "COLORS", "COLUMNS", "LINES", "TZ", "PS1", "PS2"];

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct Request {
    /// The command and its arguments; empty with `login` or `shell`: an
    /// interactive shell.
    pub argv: Vec<String>,
    pub user: String,
    pub cwd: String,
    pub env: BTreeMap<String, String>,
    /// `-i`: the target's login shell, in its home.
    pub login: bool,
    /// `-s`: the target's shell (or `$SHELL`).
    pub shell: bool,
    /// `-E`: keep the caller's environment.
    pub preserve_env: bool,
    /// `-H`: HOME is the target's (always, without `-E`).
    pub set_home: bool,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Reply {
    Started(u32),
    Exit(i32),
    Error(String),
}

#[derive(Debug, Serialize, Deserialize)]
struct ClientMsg {
    signal: i32,
}

// ------------------------------------------------------------- the client

/// What `sudo` was asked, parsed as sudo parses it.
#[derive(Debug, PartialEq)]
pub enum Parsed {
    Run(Request),
    /// `-l`, `-v`, `-k`, `-K`, `-V`, `-h`: answered locally.
    Print(String, i32),
}

pub fn parse(args: &[String], cwd: String, env: BTreeMap<String, String>) -> Parsed {
    const USAGE: &str = "usage: sudo -h | -K | -k | -V\nusage: sudo -v [-k] [-u user]\nusage: sudo -l [-k] [-u user] [command [arg ...]]\nusage: sudo [-EHiknS] [-u user] [-s] [--] command [arg ...]\n";
    let mut r = Request { user: "root".into(), cwd, env, ..Default::default() };
    let mut i = 0;
    let (mut list, mut validate) = (false, false);
    while i < args.len() {
        let a = args[i].as_str();
        if a == "--" {
            i += 1;
            break;
        }
        if !a.starts_with('-') || a == "-" {
            break;
        }
        if let Some(long) = a.strip_prefix("--") {
            let (name, value) = long.split_once('=').map_or((long, None), |(n, v)| (n, Some(v.to_string())));
            match name {
                "user" => match value.or_else(|| {
                    i += 1;
                    args.get(i).cloned()
                }) {
                    Some(u) => r.user = u,
                    None => return Parsed::Print(format!("sudo: option requires an argument -- 'user'\n{USAGE}"), 1),
                },
                "login" => r.login = true,
                "shell" => r.shell = true,
                "preserve-env" => r.preserve_env = true,
                "set-home" => r.set_home = true,
                "non-interactive" | "stdin" | "preserve-groups" | "reset-timestamp" => {}
                "list" => list = true,
                "validate" => validate = true,
                "remove-timestamp" => return Parsed::Print(String::new(), 0),
                "version" => return Parsed::Print("Sudo version 1.9 (Airlock's: runs commands as root through the sandbox agent)\n".into(), 0),
                "help" => return Parsed::Print(USAGE.into(), 0),
                _ => return Parsed::Print(format!("sudo: unrecognized option '{a}'\n{USAGE}"), 1),
            }
            i += 1;
            continue;
        }
        let flags: Vec<char> = a[1..].chars().collect();
        let mut j = 0;
        while j < flags.len() {
            match flags[j] {
                'u' => {
                    let rest: String = flags[j + 1..].iter().collect();
                    let u = if !rest.is_empty() {
                        Some(rest)
                    } else {
                        i += 1;
                        args.get(i).cloned()
                    };
                    match u {
                        Some(u) => r.user = u,
                        None => return Parsed::Print(format!("sudo: option requires an argument -- 'u'\n{USAGE}"), 1),
                    }
                    j = flags.len();
                    continue;
                }
                'i' => r.login = true,
                's' => r.shell = true,
                'E' => r.preserve_env = true,
                'H' => r.set_home = true,
                'n' | 'S' | 'P' | 'k' => {}
                'l' => list = true,
                'v' => validate = true,
                'K' => return Parsed::Print(String::new(), 0),
                'V' => return Parsed::Print("Sudo version 1.9 (Airlock's: runs commands as root through the sandbox agent)\n".into(), 0),
                'h' => return Parsed::Print(USAGE.into(), 0),
                c => return Parsed::Print(format!("sudo: invalid option -- '{c}'\n{USAGE}"), 1),
            }
            j += 1;
        }
        i += 1;
    }
    r.argv = args[i..].to_vec();
    if list {
        return Parsed::Print("User may run the following commands on this sandbox:\n    (ALL : ALL) NOPASSWD: ALL\n".into(), 0);
    }
    if validate && r.argv.is_empty() {
        return Parsed::Print(String::new(), 0);
    }
    if r.login && r.shell {
        return Parsed::Print(format!("sudo: you may not specify both the -i and -s options\n{USAGE}"), 1);
    }
    if r.argv.is_empty() && !r.login && !r.shell {
        return Parsed::Print(USAGE.into(), 1);
    }
    Parsed::Run(r)
}

/// `sudo` as a program: returns its exit status.
pub fn client_main(args: Vec<String>) -> i32 {
    let cwd = std::env::current_dir().map(|p| p.display().to_string()).unwrap_or_else(|_| "/".into());
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let req = match parse(&args, cwd, env) {
        Parsed::Run(r) => r,
        Parsed::Print(text, code) => {
            if code == 0 {
                print!("{text}");
            } else {
                eprint!("{text}");
            }
            return code;
        }
    };
    match run_client(&req) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sudo: {e}");
            1
        }
    }
}

fn run_client(req: &Request) -> std::io::Result<i32> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(SOCKET_NAME)?;
    let stream = std::os::unix::net::UnixStream::connect_addr(&addr)
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot reach the sandbox agent ({e}); sudo works only inside an Airlock sandbox")))?;
    let body = serde_json::to_vec(req).map_err(std::io::Error::other)?;
    if body.len() > MAX_REQUEST {
        return Err(std::io::Error::other("the command and its environment are too large"));
    }
    let mut msg = (body.len() as u32).to_be_bytes().to_vec();
    msg.extend_from_slice(&body);
    // Our stdio goes with the first bytes.
    let fds = [0, 1, 2];
    let iov = [std::io::IoSlice::new(&msg)];
    let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
    let mut sent = nix::sys::socket::sendmsg::<()>(stream.as_raw_fd(), &iov, &cmsg, nix::sys::socket::MsgFlags::empty(), None).map_err(std::io::Error::from)?;
    let mut w = &stream;
    while sent < msg.len() {
        let n = w.write(&msg[sent..])?;
        if n == 0 {
            return Err(std::io::Error::other("the agent closed the connection"));
        }
        sent += n;
    }
    // Signals sudo would relay go to the command; a dedicated thread waits
    // for them (blocked here first, so the thread is the one to get them).
    let relayed = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT, libc::SIGUSR1, libc::SIGUSR2, libc::SIGWINCH];
    // SAFETY: building a signal set and blocking it for this thread (and
    // the one spawned after, which inherits the mask).
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in relayed {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        let mut writer = stream.try_clone()?;
        std::thread::spawn(move || loop {
            let mut sig: libc::c_int = 0;
            if libc::sigwait(&set, &mut sig) != 0 {
                return;
            }
            let line = format!("{}\n", serde_json::json!({"signal": sig}));
            if writer.write_all(line.as_bytes()).is_err() {
                return;
            }
        });
    }
    let mut lines = BufReader::new(&stream);
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line)? == 0 {
            return Err(std::io::Error::other("the agent went away before the command ended"));
        }
        match serde_json::from_str::<Reply>(line.trim()) {
            Ok(Reply::Started(_)) => {}
            Ok(Reply::Exit(code)) => return Ok(code),
            Ok(Reply::Error(m)) => {
                eprintln!("sudo: {m}");
                return Ok(1);
            }
            Err(_) => return Err(std::io::Error::other("unexpected answer from the agent")),
        }
    }
}

// ------------------------------------------------------------- the server

/// Starts serving `sudo` requests. Failing to bind (an agent run outside a
/// sandbox of its own) only means there is no `sudo`.
pub(crate) fn serve(agent: Arc<crate::Agent>) {
    use std::os::linux::net::SocketAddrExt;
    let listener = std::os::unix::net::SocketAddr::from_abstract_name(SOCKET_NAME).and_then(|a| std::os::unix::net::UnixListener::bind_addr(&a)).and_then(|l| {
        l.set_nonblocking(true)?;
        tokio::net::UnixListener::from_std(l)
    });
    let listener = match listener {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "no sudo: cannot bind its socket");
            return;
        }
    };
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            };
            let agent = agent.clone();
            tokio::spawn(async move {
                if let Err(e) = session(&agent, stream).await {
                    tracing::debug!(error = %e, "sudo session ended");
                }
            });
        }
    });
}

/// Reads the request and its three descriptors.
async fn receive(stream: &tokio::net::UnixStream) -> std::io::Result<(Request, [OwnedFd; 3])> {
    let mut buf = vec![0u8; 64 * 1024];
    let (n, fds) = loop {
        stream.readable().await?;
        let r = stream.try_io(tokio::io::Interest::READABLE, || {
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            let mut space = nix::cmsg_space!([RawFd; 3]);
            let msg =
                nix::sys::socket::recvmsg::<()>(stream.as_raw_fd(), &mut iov, Some(&mut space), nix::sys::socket::MsgFlags::MSG_CMSG_CLOEXEC).map_err(std::io::Error::from)?;
            let mut fds = Vec::new();
            for c in msg.cmsgs().map_err(std::io::Error::from)? {
                if let nix::sys::socket::ControlMessageOwned::ScmRights(v) = c {
                    fds.extend(v);
                }
            }
            Ok((msg.bytes, fds))
        });
        match r {
            Ok(x) => break x,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    };
    // SAFETY: descriptors the kernel just installed for us; nothing else owns them.
    let owned: Vec<OwnedFd> = fds.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }).collect();
    let Ok::<[OwnedFd; 3], _>(stdio) = owned.try_into() else { return Err(std::io::Error::other("the request did not carry stdin, stdout and stderr")) };
    if n < 4 {
        return Err(std::io::Error::other("short request"));
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > MAX_REQUEST {
        return Err(std::io::Error::other("request too large"));
    }
    let mut body = buf[4..n].to_vec();
    while body.len() < len {
        let mut chunk = vec![0u8; (len - body.len()).min(64 * 1024)];
        stream.readable().await?;
        match stream.try_read(&mut chunk) {
            Ok(0) => return Err(std::io::Error::other("request cut short")),
            Ok(k) => body.extend_from_slice(&chunk[..k]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    body.truncate(len);
    let req: Request = serde_json::from_slice(&body).map_err(|e| std::io::Error::other(format!("bad request: {e}")))?;
    Ok((req, stdio))
}

async fn send(stream: &tokio::net::UnixStream, r: &Reply) -> std::io::Result<()> {
    let line = format!("{}\n", serde_json::to_string(r).map_err(std::io::Error::other)?);
    let mut off = 0;
    while off < line.len() {
        stream.writable().await?;
        match stream.try_write(&line.as_bytes()[off..]) {
            Ok(n) => off += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The environment the command gets, as sudo's `env_reset` and
/// `secure_path` give it (all of the caller's with `-E`).
pub fn command_env(req: &Request, target: &crate::users::User, caller_uid: u32, caller_gid: u32, caller: &str) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = if req.preserve_env {
        req.env.clone()
    } else {
        let mut e: BTreeMap<String, String> = req.env.iter().filter(|(k, _)| KEPT.contains(&k.as_str()) || k.starts_with("LC_")).map(|(k, v)| (k.clone(), v.clone())).collect();
        e.insert("PATH".into(), SECURE_PATH.into());
        e
    };
    let shell = if target.shell.is_empty() { "/bin/sh".to_string() } else { target.shell.clone() };
    if !req.preserve_env || req.set_home || req.login {
        env.insert("HOME".into(), target.home.display().to_string());
    }
    env.insert("USER".into(), target.name.clone());
    env.insert("LOGNAME".into(), target.name.clone());
    env.insert("SHELL".into(), shell);
    env.insert("MAIL".into(), format!("/var/mail/{}", target.name));
    env.insert("SUDO_USER".into(), caller.to_string());
    env.insert("SUDO_UID".into(), caller_uid.to_string());
    env.insert("SUDO_GID".into(), caller_gid.to_string());
    env.insert("SUDO_COMMAND".into(), req.argv.join(" "));
    env
}

/// Quotes a word for `sh -c` as sudo does for `-i`/`-s` with a command.
fn quote(w: &str) -> String {
    let mut s = String::new();
    for c in w.chars() {
        if !(c.is_ascii_alphanumeric() || "_-./=:,+@%".contains(c)) {
            s.push('\\');
        }
        s.push(c);
    }
    s
}

/// The program and arguments to run.
pub fn command_line(req: &Request, target: &crate::users::User) -> (String, Vec<String>) {
    let user_shell = if target.shell.is_empty() { "/bin/sh".to_string() } else { target.shell.clone() };
    let shell = if req.shell { req.env.get("SHELL").cloned().filter(|s| !s.is_empty()).unwrap_or(user_shell.clone()) } else { user_shell };
    let joined = req.argv.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" ");
    match (req.login, req.shell, req.argv.is_empty()) {
        (true, _, true) => (shell, vec!["-l".into()]),
        (true, _, false) => (shell, vec!["-l".into(), "-c".into(), joined]),
        (_, true, true) => (shell, vec![]),
        (_, true, false) => (shell, vec!["-c".into(), joined]),
        _ => (req.argv[0].clone(), req.argv[1..].to_vec()),
    }
}

async fn session(agent: &Arc<crate::Agent>, stream: tokio::net::UnixStream) -> std::io::Result<()> {
    let peer = stream.peer_cred()?;
    let (req, stdio) = receive(&stream).await?;
    let caller = crate::users::name_of(peer.uid(), "/etc/passwd");
    let target = match crate::users::lookup(&req.user) {
        Ok(u) => u,
        Err(_) => return send(&stream, &Reply::Error(format!("unknown user {}", req.user))).await,
    };
    let env = command_env(&req, &target, peer.uid(), peer.gid(), &caller);
    let (program, args) = command_line(&req, &target);
    let cwd = if req.login { target.home.clone() } else { std::path::PathBuf::from(&req.cwd) };
    let mut cmd = std::process::Command::new(&program);
    cmd.args(&args).env_clear().envs(&env).current_dir(if cwd.is_dir() { cwd } else { std::path::PathBuf::from("/") });
    cmd.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    let setup = Setup::new(&target, Session::ProcessGroup);
    let [i, o, e] = &stdio;
    use std::os::fd::AsFd;
    let setup = setup.fd_at(i.as_fd(), 0).fd_at(o.as_fd(), 1).fd_at(e.as_fd(), 2);
    // Spawned and registered under one lock, so the reaper, which takes it
    // too, cannot collect the status before there is a waiter for it.
    let (tx, rx) = tokio::sync::oneshot::channel::<i32>();
    let started = {
        let mut waiters = agent.sudo_waiters.lock().unwrap_or_else(|p| p.into_inner());
        match crate::spawn::spawn(cmd, setup) {
            Ok(child) => {
                waiters.insert(child.id(), tx);
                Ok(child.id())
            }
            Err(err) => Err(err),
        }
    };
    drop(stdio);
    let pid = match started {
        Ok(p) => p,
        Err(err) => {
            let m = if err.kind() == std::io::ErrorKind::NotFound { format!("{program}: command not found") } else { format!("{program}: {err}") };
            return send(&stream, &Reply::Error(m)).await;
        }
    };
    tracing::info!(caller = %caller, user = %target.name, pid, command = %program, "sudo");
    send(&stream, &Reply::Started(pid)).await?;
    // Relay signals until the command ends; a client that goes away takes
    // the command with it (SIGHUP, as a closed terminal would).
    let mut rx = rx;
    let mut buf = Vec::new();
    let status = loop {
        tokio::select! {
            s = &mut rx => break s.unwrap_or(-1),
            r = stream.readable() => {
                r?;
                let mut chunk = [0u8; 256];
                match stream.try_read(&mut chunk) {
                    Ok(0) => {
                        // SAFETY: kill(2) of the command's process group.
                        unsafe { libc::kill(-(pid as i32), libc::SIGHUP) };
                        break rx.await.unwrap_or(-1);
                    }
                    Ok(n) => {
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buf.iter().position(|b| *b == b'\n') {
                            let line: Vec<u8> = buf.drain(..=end).collect();
                            if let Ok(m) = serde_json::from_slice::<ClientMsg>(&line) {
                                if (1..=64).contains(&m.signal) {
                                    // SAFETY: as above.
                                    unsafe { libc::kill(-(pid as i32), m.signal) };
                                }
                            }
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
        }
    };
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        1
    };
    send(&stream, &Reply::Exit(code)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_args(a: &[&str]) -> Parsed {
        let env: BTreeMap<String, String> = [("PATH".to_string(), "/x".to_string()), ("FOO".to_string(), "1".to_string()), ("LC_ALL".to_string(), "C".to_string())].into();
        parse(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>(), "/work".into(), env)
    }

    #[test]
    fn options_parse_as_sudo_parses_them() {
        let Parsed::Run(r) = parse_args(&["-u", "user", "-E", "ls", "-la"]) else { panic!("run") };
        assert_eq!((r.user.as_str(), r.preserve_env, r.argv.clone()), ("user", true, vec!["ls".to_string(), "-la".to_string()]));
        let Parsed::Run(r) = parse_args(&["-uuser", "--", "-x"]) else { panic!("run") };
        assert_eq!((r.user.as_str(), r.argv.clone()), ("user", vec!["-x".to_string()]));
        let Parsed::Run(r) = parse_args(&["-i"]) else { panic!("login") };
        assert!(r.login && r.argv.is_empty());
        let Parsed::Run(r) = parse_args(&["-n", "apt-get", "install", "-y", "x"]) else { panic!("run") };
        assert_eq!(r.argv.len(), 4, "options after the command are the command's");
        assert!(matches!(parse_args(&[]), Parsed::Print(_, 1)));
        assert!(matches!(parse_args(&["-x", "ls"]), Parsed::Print(m, 1) if m.contains("invalid option")));
        assert!(matches!(parse_args(&["-l"]), Parsed::Print(m, 0) if m.contains("NOPASSWD")));
        assert!(matches!(parse_args(&["-v"]), Parsed::Print(_, 0)));
        assert!(matches!(parse_args(&["-i", "-s"]), Parsed::Print(_, 1)));
        assert!(matches!(parse_args(&["-u"]), Parsed::Print(m, 1) if m.contains("requires an argument")));
    }

    #[test]
    fn the_environment_is_reset_unless_preserved() {
        let root = crate::users::User { name: "root".into(), uid: 0, gid: 0, home: "/root".into(), shell: "/bin/bash".into(), groups: vec![] };
        let Parsed::Run(r) = parse_args(&["id"]) else { panic!("run") };
        let e = command_env(&r, &root, 1000, 1000, "user");
        assert_eq!((e.get("PATH").map(String::as_str), e.get("FOO"), e.get("LC_ALL").map(String::as_str)), (Some(SECURE_PATH), None, Some("C")));
        assert_eq!((e["HOME"].as_str(), e["USER"].as_str(), e["SUDO_USER"].as_str(), e["SUDO_UID"].as_str()), ("/root", "root", "user", "1000"));
        let Parsed::Run(r) = parse_args(&["-E", "id"]) else { panic!("run") };
        let e = command_env(&r, &root, 1000, 1000, "user");
        assert_eq!((e["PATH"].as_str(), e["FOO"].as_str()), ("/x", "1"));
        assert_eq!(command_line(&r, &root), ("id".to_string(), vec![]));
        let Parsed::Run(r) = parse_args(&["-i", "echo", "a b"]) else { panic!("run") };
        assert_eq!(command_line(&r, &root), ("/bin/bash".to_string(), vec!["-l".into(), "-c".into(), "echo a\\ b".into()]));
    }
}
