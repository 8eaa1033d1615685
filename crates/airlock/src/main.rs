//! The `airlock` binary: the user-facing CLI and, re-executed as
//! `airlock __init <launch.json>`, the birth of a sandbox and its agent.

use std::ffi::OsString;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::ExitCode;

use airlock_runtime::state::LaunchConfig;

mod cli;

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    // Inside a sandbox this binary is also `/usr/local/bin/sudo`.
    if args.first().and_then(|a| std::path::Path::new(a).file_name()).is_some_and(|n| n == "sudo") {
        let rest: Vec<String> = args[1..].iter().map(|a| a.to_string_lossy().into_owned()).collect();
        return ExitCode::from(airlock_agent::sudo::client_main(rest).clamp(0, 255) as u8);
    }
    // The sandbox entry point is checked before anything else runs: it must
    // stay single-threaded until PID 1 has set up its namespaces.
    if args.get(1).map(|a| a == "__init").unwrap_or(false) {
        let Some(path) = args.get(2).cloned().or_else(|| std::env::var_os(airlock_runtime::init::CONFIG_ENV)) else {
            eprintln!("usage: airlock __init <launch.json>");
            return ExitCode::from(2);
        };
        let code = airlock_runtime::init::launch(&PathBuf::from(path), agent_main);
        return ExitCode::from(code.clamp(0, 255) as u8);
    }
    cli::main()
}

/// PID 1 of a sandbox after isolation: a small current-thread runtime
/// serving the agent on the socket `init` bound.
fn agent_main(listener: UnixListener, log: std::fs::File, cfg: &LaunchConfig) -> i32 {
    // A log write that fails (a full disk) is dropped by the subscriber; it
    // never takes the agent down.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(log))
        .try_init();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().max_blocking_threads(8).build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "agent: cannot start runtime");
            return 1;
        }
    };
    let config = airlock_agent::AgentConfig {
        default_user: cfg.default_user.clone(),
        env: cfg.env.clone(),
        access_token: cfg.access_token.clone(),
        default_workdir: cfg.workdir.clone().map(Into::into),
        ..Default::default()
    };
    match rt.block_on(airlock_agent::serve(listener, config)) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!(error = %e, "agent stopped");
            1
        }
    }
}
