//! Command-line interface.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "airlock", version, about = "Self-hosted sandboxes for untrusted code, E2B-compatible")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Low-level sandbox operations on this host (no server needed).
    #[command(subcommand)]
    Runtime(RuntimeCmd),
}

#[derive(Subcommand)]
enum RuntimeCmd {
    /// Create a sandbox and print its id and agent socket.
    Create {
        #[arg(long, env = "AIRLOCK_DATA_DIR", default_value = "/var/lib/airlock")]
        data_dir: PathBuf,
        #[arg(long, default_value = "base")]
        template: String,
        #[arg(long)]
        no_internet: bool,
    },
    /// List running sandboxes.
    List {
        #[arg(long, env = "AIRLOCK_DATA_DIR", default_value = "/var/lib/airlock")]
        data_dir: PathBuf,
    },
    /// Kill a sandbox and remove every trace of it.
    Destroy {
        #[arg(long, env = "AIRLOCK_DATA_DIR", default_value = "/var/lib/airlock")]
        data_dir: PathBuf,
        id: String,
    },
}

pub fn main() -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .try_init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn backend(data_dir: PathBuf) -> anyhow::Result<airlock_runtime::NamespaceBackend> {
    let binary = std::env::current_exe()?;
    Ok(airlock_runtime::NamespaceBackend::new(airlock_runtime::namespace::Options { root: data_dir, binary, network: true })?)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    use airlock_runtime::Backend;
    match cli.command {
        Cmd::Runtime(RuntimeCmd::Create { data_dir, template, no_internet }) => {
            let b = backend(data_dir)?;
            let mut spec = airlock_runtime::SandboxSpec::new(new_id());
            spec.template = template;
            spec.internet = !no_internet;
            let t = std::time::Instant::now();
            let info = b.create(&spec)?;
            println!("{}\t{}\t{:?}", info.id, info.socket.display(), t.elapsed());
        }
        Cmd::Runtime(RuntimeCmd::List { data_dir }) => {
            for s in backend(data_dir)?.list()? {
                println!("{}\tpid={}\tfrozen={}\t{}", s.id, s.pid, s.frozen, s.socket.display());
            }
        }
        Cmd::Runtime(RuntimeCmd::Destroy { data_dir, id }) => backend(data_dir)?.destroy(&id)?,
    }
    Ok(())
}

/// A 20-character lowercase alphanumeric id, as E2B's are.
pub fn new_id() -> String {
    let mut buf = [0u8; 20];
    let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut buf));
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    buf.iter().map(|b| ALPHABET[(*b as usize) % ALPHABET.len()] as char).collect()
}
