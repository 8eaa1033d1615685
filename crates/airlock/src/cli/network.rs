//! `airlock network`: sandbox networks (create, list, show, rm, join,
//! leave) and broadcast commands.

use airlock_sdk::{Broadcast, SandboxNetwork};

pub(super) const EXAMPLES: &str = "Examples:
  airlock network create app
  airlock network join app $WEB --name web       # the others reach it as web or web.app, on any port
  airlock network join app $API --name api
  airlock network list
  airlock network show app
  airlock network broadcast --network app -- 'hostname; uptime'
  airlock network broadcast -m role=worker -- pip install -q requests
  airlock network leave app $WEB
  airlock network rm app                         # only when empty

Members reach each other by name and nobody else reaches them; each keeps
its own egress policy (see `airlock sbx create --allow-out/--deny-out`).";

#[derive(clap::Args, Debug)]
pub(super) struct NetworkArgs {
    #[command(flatten)]
    client: super::client::ClientArgs,
    #[command(subcommand)]
    cmd: NetworkCmd,
}

#[derive(clap::Subcommand, Debug)]
enum NetworkCmd {
    /// Make an empty network.
    Create { name: String },
    /// List networks and their members.
    #[command(alias = "ls")]
    List,
    /// Show one network.
    Show { name: String },
    /// Delete an empty network.
    #[command(alias = "delete")]
    Rm { name: String },
    /// A running sandbox joins a network (made if new).
    Join {
        network: String,
        sandbox: String,
        /// The name the others reach it by [default: its id].
        #[arg(long)]
        name: Option<String>,
    },
    /// A sandbox leaves a network.
    Leave { network: String, sandbox: String },
    /// Run one command in every running sandbox of a network and/or with
    /// the given metadata; exits non-zero if any run failed.
    Broadcast {
        #[arg(long)]
        network: Option<String>,
        /// KEY=VALUE the sandboxes' metadata must have (repeatable).
        #[arg(long = "metadata", short = 'm', value_parser = super::client::kv)]
        metadata: Vec<(String, String)>,
        /// Seconds each run may take.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// The command, run with `bash -c`.
        #[arg(trailing_var_arg = true, required = true)]
        cmd: Vec<String>,
    },
}

fn print(n: &SandboxNetwork) {
    println!("{}  (created {}, {} member{})", n.name, n.created_at, n.members.len(), if n.members.len() == 1 { "" } else { "s" });
    for m in &n.members {
        println!("  {:<24} {:<20} {}", m.name, m.sandbox_id, m.ip.as_deref().unwrap_or("-"));
    }
}

pub(super) fn run(a: NetworkArgs) -> anyhow::Result<u8> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let client = a.client.client()?;
        let json = a.client.json;
        let show = |n: &SandboxNetwork| -> anyhow::Result<()> {
            if json {
                println!("{}", serde_json::to_string_pretty(n)?);
            } else {
                print(n);
            }
            Ok(())
        };
        match a.cmd {
            NetworkCmd::Create { name } => show(&client.create_network(&name).await?)?,
            NetworkCmd::List => {
                let list = client.networks().await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&list)?);
                } else {
                    for n in &list {
                        print(n);
                    }
                }
            }
            NetworkCmd::Show { name } => show(&client.network(&name).await?)?,
            NetworkCmd::Rm { name } => client.delete_network(&name).await?,
            NetworkCmd::Join { network, sandbox, name } => show(&client.join_network(&network, &sandbox, name.as_deref()).await?)?,
            NetworkCmd::Leave { network, sandbox } => client.leave_network(&network, &sandbox).await?,
            NetworkCmd::Broadcast { network, metadata, timeout, cmd } => {
                let b = Broadcast { cmd: cmd.join(" "), network, metadata: (!metadata.is_empty()).then(|| metadata.into_iter().collect()), timeout: Some(timeout), user: None };
                let results = client.broadcast(&b).await?;
                let failed = results.iter().filter(|r| r.exit_code != Some(0)).count();
                if json {
                    println!("{}", serde_json::to_string_pretty(&results)?);
                } else {
                    for r in &results {
                        let status = match (&r.error, r.exit_code) {
                            (Some(e), _) => format!("error: {e}"),
                            (None, Some(c)) => format!("exit {c}"),
                            (None, None) => "no exit status".into(),
                        };
                        println!("== {} ({status}, {} ms)", r.sandbox_id, r.duration_ms);
                        print!("{}", r.stdout);
                        eprint!("{}", r.stderr);
                    }
                }
                return Ok(u8::from(failed > 0));
            }
        }
        Ok(0)
    })
}
