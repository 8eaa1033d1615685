//! `airlock shell`: an interactive terminal in a sandbox, the way ssh does
//! it. The local terminal goes into raw mode (every key, Ctrl-C and Ctrl-D
//! included, goes to the sandbox's PTY), its size follows SIGWINCH, and the
//! terminal is restored however the session ends. When stdin is not a
//! terminal there is no PTY, as with ssh: the shell reads commands from
//! stdin and ends with it.

use std::io::Write;

use airlock_sdk::{Client, CommandEvent, PtySize};
use futures_util::StreamExt;
use tokio::signal::unix::{signal, SignalKind};

use super::client::{exit_status, stdin_pump};

fn isatty(fd: i32) -> bool {
    // SAFETY: isatty has no preconditions.
    unsafe { libc::isatty(fd) == 1 }
}

/// The size of the terminal on `fd`, if it is one.
fn window_size(fd: i32) -> Option<PtySize> {
    // SAFETY: TIOCGWINSZ writes a winsize into the struct we pass.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let r = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
    (r == 0 && ws.ws_col > 0 && ws.ws_row > 0).then_some(PtySize { cols: u32::from(ws.ws_col), rows: u32::from(ws.ws_row) })
}

fn local_size() -> PtySize {
    window_size(1).or_else(|| window_size(0)).unwrap_or(PtySize { cols: 80, rows: 24 })
}

/// The terminal on `fd` in raw mode until dropped.
struct RawMode {
    fd: i32,
    saved: libc::termios,
}

impl RawMode {
    fn enable(fd: i32) -> std::io::Result<Self> {
        // SAFETY: tcgetattr fills the termios we pass; cfmakeraw and
        // tcsetattr only read and write that struct and the fd's settings.
        unsafe {
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(fd, &mut saved) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let mut raw = saved;
            libc::cfmakeraw(&mut raw);
            if libc::tcsetattr(fd, libc::TCSANOW, &raw) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(Self { fd, saved })
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in `enable` on the same fd.
        unsafe {
            libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved);
        }
    }
}

pub(super) async fn shell(client: Client, id: &str, user: Option<String>, cwd: Option<String>, cmd: Vec<String>) -> anyhow::Result<u8> {
    let sbx = client.get(id).await?;
    if !isatty(0) {
        // Like ssh without a terminal: no PTY, a shell reading commands
        // from stdin, which ends when stdin does.
        let (program, args) = match cmd.split_first() {
            Some((p, a)) => (p.clone(), a.to_vec()),
            None => ("/bin/bash".to_string(), vec!["-l".to_string()]),
        };
        let mut b = sbx.commands().exec(program, args).stdin(true).no_timeout();
        if let Some(u) = user {
            b = b.user(u);
        }
        if let Some(c) = cwd {
            b = b.cwd(c);
        }
        return super::client::stream_command(b.stream().await?, true, false).await;
    }
    let size = local_size();
    let mut b = match cmd.split_first() {
        Some((program, args)) => sbx.pty().create_command(program.clone(), args.iter().cloned(), size),
        None => sbx.pty().create(size),
    };
    if let Ok(term) = std::env::var("TERM") {
        if !term.is_empty() && term != "dumb" {
            b = b.env("TERM", term);
        }
    }
    if let Some(u) = user {
        b = b.user(u);
    }
    if let Some(c) = cwd {
        b = b.cwd(c);
    }
    let mut s = b.stream().await?;
    let process = s.process().clone();

    let raw = RawMode::enable(0)?;

    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    stdin_pump(tx);
    let p = process.clone();
    let input = tokio::spawn(async move {
        while let Some(chunk) = rx.recv().await {
            let Some(data) = chunk else { return };
            if p.send_pty_input(&data).await.is_err() {
                return;
            }
        }
    });
    let p = process.clone();
    let resize = tokio::spawn(async move {
        let Ok(mut winch) = signal(SignalKind::window_change()) else { return };
        while winch.recv().await.is_some() {
            let _ = p.resize(local_size()).await;
        }
    });
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;

    let result: anyhow::Result<u8> = async {
        loop {
            let ev = tokio::select! {
                ev = s.next() => ev,
                _ = term.recv() => return Ok(143),
                _ = hup.recv() => return Ok(129),
            };
            match ev {
                None => anyhow::bail!("the terminal's output ended without an exit status"),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(CommandEvent::Pty(d) | CommandEvent::Stdout(d) | CommandEvent::Stderr(d))) => {
                    let mut o = std::io::stdout().lock();
                    o.write_all(&d)?;
                    o.flush()?;
                }
                Some(Ok(CommandEvent::Exit(end))) => return Ok(exit_status(&end)),
            }
        }
    }
    .await;
    drop(raw);
    input.abort();
    resize.abort();
    result
}
