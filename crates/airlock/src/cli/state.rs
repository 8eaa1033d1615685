//! `airlock snapshot`, `airlock fork` and the state commands of `airlock
//! sandbox` (reset, restart, export, import), on the Rust SDK.

use std::path::Path;
use std::time::Duration;

use airlock_sdk::{Client, RestartOptions};
use anyhow::Context;

use super::client::{print_json, table, ClientArgs};

pub(super) const SNAPSHOT_EXAMPLES: &str = "Examples:
  snap=$(airlock snapshot create <sandbox-id>)           # prints the snapshot id
  airlock snapshot create <sandbox-id> --name prepared   # prepared:default; a later one takes the name
  airlock sbx create --template \"$snap\"                  # a sandbox from it (any number of them)
  airlock snapshot list
  airlock snapshot list --sandbox <sandbox-id> --json
  airlock snapshot rm \"$snap\"                            # refused while sandboxes use it

Snapshots hold the sandbox's files (its template's layers plus what it
wrote), taken while it is briefly frozen; processes are not kept: sandboxes
made from a snapshot boot afresh over its files.";

pub(super) const FORK_EXAMPLES: &str = "Examples:
  airlock fork <sandbox-id>                  # one fork, 15 s to live (E2B's default)
  airlock fork <sandbox-id> -n 10 --timeout 600
  airlock fork <sandbox-id> -n 3 --json

Each fork has the source's files, environment, metadata and resources,
and boots afresh over them; the source keeps running.";

#[derive(clap::Args, Debug)]
pub(super) struct SnapshotArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    cmd: SnapshotCmd,
}

#[derive(clap::Subcommand, Debug)]
enum SnapshotCmd {
    /// Snapshot a sandbox's filesystem; prints the snapshot id.
    Create {
        /// The sandbox.
        id: String,
        /// A name for the snapshot (letters, digits, '-', '_', '.').
        #[arg(long)]
        name: Option<String>,
    },
    /// List snapshots, newest first.
    #[command(alias = "ls")]
    List {
        /// Only snapshots of this sandbox.
        #[arg(long)]
        sandbox: Option<String>,
    },
    /// Delete snapshots (refused while sandboxes or other snapshots use them).
    #[command(alias = "delete")]
    Rm {
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

#[derive(clap::Args, Debug)]
pub(super) struct ForkArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The sandbox to fork.
    id: String,
    /// How many forks (1-20).
    #[arg(long, short = 'n', default_value_t = 1)]
    count: u32,
    /// Seconds each fork lives [default: 15, as E2B's].
    #[arg(long)]
    timeout: Option<u64>,
}

pub(super) async fn snapshot(a: SnapshotArgs) -> anyhow::Result<u8> {
    let json = a.client.json;
    let client = a.client.client()?;
    match a.cmd {
        SnapshotCmd::Create { id, name } => {
            let s = client.snapshot(&id, name.as_deref()).await?;
            if json {
                print_json(&s)?;
            } else {
                println!("{}", s.snapshot_id);
            }
        }
        SnapshotCmd::List { sandbox } => {
            let list = client.snapshots(sandbox.as_deref()).await?;
            if json {
                print_json(&list)?;
            } else {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|s| vec![s.snapshot_id.clone(), s.sandbox_id.clone().unwrap_or_default(), format!("{:.1} MiB", s.size_bytes as f64 / 1048576.0), s.created_at.clone()])
                    .collect();
                println!("{}", table(&["SNAPSHOT", "FROM SANDBOX", "OWN SIZE", "CREATED"], &rows));
            }
        }
        SnapshotCmd::Rm { ids } => {
            let mut failed = Vec::new();
            for id in &ids {
                match client.delete_snapshot(id).await {
                    Ok(true) => println!("{id}"),
                    Ok(false) => failed.push(format!("{id}: no such snapshot")),
                    Err(e) => failed.push(format!("{id}: {e}")),
                }
            }
            if !failed.is_empty() {
                anyhow::bail!("{}", failed.join("; "));
            }
        }
    }
    Ok(0)
}

pub(super) async fn fork(a: ForkArgs) -> anyhow::Result<u8> {
    let client = a.client.client()?;
    let results = client.fork(&a.id, a.count, a.timeout.map(Duration::from_secs)).await?;
    let mut failed = 0;
    let mut out = Vec::new();
    for r in &results {
        match r {
            Ok(s) => {
                out.push(serde_json::json!({ "sandboxID": s.id() }));
                if !a.client.json {
                    println!("{}", s.id());
                }
            }
            Err(e) => {
                failed += 1;
                out.push(serde_json::json!({ "error": e.to_string() }));
                if !a.client.json {
                    eprintln!("a fork failed: {e}");
                }
            }
        }
    }
    if a.client.json {
        print_json(&out)?;
    }
    Ok(if failed == 0 { 0 } else { 1 })
}

pub(super) async fn reset(client: &Client, id: &str, hard: bool, json: bool) -> anyhow::Result<()> {
    client.reset(id, hard).await?;
    if json {
        print_json(&client.info(id).await?)?;
    } else {
        println!("{id}");
    }
    Ok(())
}

pub(super) async fn restart(client: &Client, id: &str, env: Vec<(String, String)>, cpus: Option<f64>, memory_mb: Option<u64>, json: bool) -> anyhow::Result<()> {
    client.restart(id, RestartOptions { envs: env.into_iter().collect(), cpu_count: cpus, memory_mb }).await?;
    if json {
        print_json(&client.info(id).await?)?;
    } else {
        println!("{id}");
    }
    Ok(())
}

pub(super) async fn export(client: &Client, id: &str, output: Option<&Path>) -> anyhow::Result<()> {
    match output {
        Some(p) => {
            // Written aside and renamed: a failed export leaves no file that looks whole.
            let tmp = p.with_extension("partial");
            let mut f = tokio::fs::File::create(&tmp).await.with_context(|| format!("creating {}", tmp.display()))?;
            let r = client.export(id, &mut f).await;
            drop(f);
            match r {
                Ok(n) => {
                    tokio::fs::rename(&tmp, p).await.with_context(|| format!("writing {}", p.display()))?;
                    eprintln!("{} ({:.1} MiB)", p.display(), n as f64 / 1048576.0);
                }
                Err(e) => {
                    let _ = tokio::fs::remove_file(&tmp).await;
                    return Err(e.into());
                }
            }
        }
        None => {
            use std::io::IsTerminal;
            anyhow::ensure!(!std::io::stdout().is_terminal(), "the archive is binary: give -o FILE or redirect standard output");
            client.export(id, &mut tokio::io::stdout()).await?;
        }
    }
    Ok(())
}

pub(super) async fn import(client: &Client, file: &Path, timeout: Option<u64>, force: bool, json: bool) -> anyhow::Result<()> {
    let timeout = timeout.map(Duration::from_secs);
    let sbx = if file == Path::new("-") {
        client.import(tokio::io::stdin(), timeout, force).await?
    } else {
        let f = tokio::fs::File::open(file).await.with_context(|| format!("opening {}", file.display()))?;
        client.import(f, timeout, force).await?
    };
    if json {
        print_json(&client.info(sbx.id()).await?)?;
    } else {
        println!("{}", sbx.id());
    }
    Ok(())
}
