//! Operating sandboxes from the CLI: `sandbox resources`, `sandbox
//! alerts`, `sandbox top` and `airlock pool`.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use airlock_sdk::{AlertThresholds, Client, PoolSpec, ResourceChange};
use futures_util::StreamExt;

use super::client::{print_json, table, ClientArgs};

pub(super) const POOL_EXAMPLES: &str = "Examples:
  airlock pool list
  airlock pool set py --template code-interpreter-v1 --size 4 --memory-mb 1024
  airlock pool set base --template base --size 0      # keep none for now
  airlock pool delete py

A create that asks for a pool's template and shape (CPU, memory, disk,
internet) takes a ready sandbox from it: its environment, metadata, timeout
and token are applied at claim time. `airlock serve --pool base=8` sets
pools at start.";

fn mib(b: u64) -> String {
    format!("{:.0} MiB", b as f64 / 1048576.0)
}

fn bytes(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / 1048576.0),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

pub(super) async fn resources(client: &Client, id: &str, cpus: Option<f64>, memory_mb: Option<u64>, disk_mb: Option<u64>, json: bool) -> anyhow::Result<()> {
    anyhow::ensure!(cpus.is_some() || memory_mb.is_some() || disk_mb.is_some(), "nothing to change: give --cpus, --memory-mb or --disk-mb");
    let d = client.set_resources(id, ResourceChange { cpu_count: cpus, memory_mb, disk_mb }).await?;
    if json {
        print_json(&d)?;
    } else {
        println!("{id}: {} CPU, {} MiB memory, {} MiB disk", d.cpu_count, d.memory_mb, d.disk_size_mb);
    }
    Ok(())
}

pub(super) async fn alerts(client: &Client, id: &str, a: AlertThresholds, json: bool) -> anyhow::Result<()> {
    let d = client.set_alerts(id, a).await?;
    if json {
        print_json(&d)?;
    } else if a.is_empty() {
        println!("{id}: no alerts");
    } else {
        let show = |v: Option<f64>| v.map_or("-".to_string(), |p| format!("{p}%"));
        println!("{id}: alert at cpu {}, memory {}, disk {}", show(a.cpu_pct), show(a.memory_pct), show(a.disk_pct));
    }
    Ok(())
}

/// `sandbox top`: every running sandbox's latest usage, refreshed; or one
/// sandbox's live stream.
pub(super) async fn top(client: &Client, id: Option<&str>, interval: f64, once: bool, json: bool) -> anyhow::Result<()> {
    anyhow::ensure!((0.5..=60.0).contains(&interval), "--interval must be 0.5 to 60 seconds");
    if let Some(id) = id {
        let mut s = client.metrics_stream(id, Duration::from_secs_f64(interval)).await?;
        println!("{}", table(&["TIME", "CPU", "MEMORY", "LIMIT", "DISK", "NET IN", "NET OUT"], &[]).trim_end());
        while let Some(m) = s.next().await {
            let m = m?;
            if json {
                println!("{}", serde_json::to_string(&m)?);
            } else {
                let t = m.timestamp.get(11..19).unwrap_or(&m.timestamp).to_string();
                println!(
                    "{t:<8}  {:>6}  {:>9}  {:>8}  {:>9}  {:>9}  {:>9}",
                    format!("{:.1}%", m.cpu_used_pct),
                    mib(m.mem_used),
                    mib(m.mem_total),
                    mib(m.disk_used),
                    bytes(m.net_rx_bytes),
                    bytes(m.net_tx_bytes)
                );
            }
            if once {
                break;
            }
        }
        return Ok(());
    }
    let tty = std::io::stdout().is_terminal() && !json && !once;
    loop {
        let list = client.list().state(airlock_sdk::SandboxState::Running).all().await?;
        let ids: Vec<&str> = list.iter().map(|d| d.sandbox_id.as_str()).collect();
        let mut latest = std::collections::BTreeMap::new();
        for chunk in ids.chunks(100) {
            latest.extend(client.latest_metrics(chunk).await?);
        }
        if json {
            println!("{}", serde_json::to_string(&latest)?);
        } else {
            let mut rows: Vec<(f64, Vec<String>)> = list
                .iter()
                .map(|d| {
                    let m = latest.get(&d.sandbox_id);
                    let cpu = m.map_or(0.0, |m| m.cpu_used_pct);
                    (
                        cpu,
                        vec![
                            d.sandbox_id.clone(),
                            d.template_id.clone(),
                            format!("{cpu:.1}%"),
                            m.map_or("-".into(), |m| format!("{} / {}", mib(m.mem_used), mib(m.mem_total))),
                            m.map_or("-".into(), |m| mib(m.disk_used)),
                            m.map_or("-".into(), |m| format!("{} / {}", bytes(m.net_rx_bytes), bytes(m.net_tx_bytes))),
                        ],
                    )
                })
                .collect();
            rows.sort_by(|a, b| b.0.total_cmp(&a.0));
            let rows: Vec<Vec<String>> = rows.into_iter().map(|(_, r)| r).collect();
            if tty {
                // Home and clear: redraw in place.
                print!("\x1b[H\x1b[2J");
            }
            println!("{} running", list.len());
            println!("{}", table(&["ID", "TEMPLATE", "CPU", "MEMORY", "DISK", "NET IN / OUT"], &rows));
            std::io::stdout().flush()?;
        }
        if once {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs_f64(interval)).await;
    }
}

#[derive(clap::Args, Debug)]
pub(super) struct PoolArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    cmd: PoolCmd,
}

#[derive(clap::Subcommand, Debug)]
enum PoolCmd {
    /// Pools with their levels (ready / size) and counters.
    #[command(alias = "ls")]
    List,
    /// Create or change a pool.
    Set {
        name: String,
        #[arg(long, short = 't')]
        template: String,
        #[arg(long)]
        size: u32,
        #[arg(long)]
        cpus: Option<f64>,
        #[arg(long = "memory-mb")]
        memory_mb: Option<u64>,
        #[arg(long = "disk-mb")]
        disk_mb: Option<u64>,
        /// Pooled sandboxes have no internet access.
        #[arg(long)]
        no_internet: bool,
    },
    /// Delete a pool made through the API; its ready sandboxes go.
    #[command(alias = "rm")]
    Delete { name: String },
}

pub(super) fn run(a: PoolArgs) -> anyhow::Result<u8> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let client = a.client.client()?;
        let json = a.client.json;
        match a.cmd {
            PoolCmd::List => {
                let pools = client.pools().await?;
                if json {
                    print_json(&pools)?;
                } else {
                    let rows: Vec<Vec<String>> = pools
                        .iter()
                        .map(|p| {
                            vec![
                                p.name.clone(),
                                p.spec.template_id.clone(),
                                format!("{}/{}", p.ready, p.spec.size),
                                p.filling.to_string(),
                                p.claims.to_string(),
                                p.misses.to_string(),
                                p.last_error.clone().unwrap_or_default(),
                            ]
                        })
                        .collect();
                    println!("{}", table(&["NAME", "TEMPLATE", "READY", "FILLING", "CLAIMS", "MISSES", "LAST ERROR"], &rows));
                }
            }
            PoolCmd::Set { name, template, size, cpus, memory_mb, disk_mb, no_internet } => {
                let spec = PoolSpec { template_id: template, size, cpu_count: cpus, memory_mb, disk_mb, allow_internet_access: no_internet.then_some(false) };
                let p = client.put_pool(&name, &spec).await?;
                if json {
                    print_json(&p)?;
                } else {
                    println!("{}: {}/{} ready", p.name, p.ready, p.spec.size);
                }
            }
            PoolCmd::Delete { name } => {
                client.delete_pool(&name).await?;
                if !json {
                    println!("{name}");
                }
            }
        }
        anyhow::Ok(0)
    })
}

pub(super) const NODE_EXAMPLES: &str = "Examples:
  airlock node list
  airlock node drain node-2      # keeps its sandboxes, takes no new ones
  airlock node undrain node-2";

#[derive(clap::Args, Debug)]
pub(super) struct NodeArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    cmd: NodeCmd,
}

#[derive(clap::Subcommand, Debug)]
enum NodeCmd {
    /// The cluster's nodes with their load.
    #[command(alias = "ls")]
    List,
    /// A drained node keeps its sandboxes and takes no new ones.
    Drain { name: String },
    /// Undo a drain.
    Undrain { name: String },
}

pub(super) fn run_node(a: NodeArgs) -> anyhow::Result<u8> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let client = a.client.client()?;
        let json = a.client.json;
        match a.cmd {
            NodeCmd::List => {
                let nodes = client.nodes().await?;
                if json {
                    print_json(&nodes)?;
                } else {
                    let rows: Vec<Vec<String>> = nodes
                        .iter()
                        .map(|n| {
                            let i = &n.info;
                            vec![
                                if n.this { format!("{} *", i.name) } else { i.name.clone() },
                                n.state.clone(),
                                i.url.clone(),
                                format!("{}/{}", i.sandboxes, i.max_sandboxes),
                                format!("{:.1}/{}", i.committed_cpus, i.cpus),
                                format!("{}/{} MiB", i.committed_memory_mb, i.memory_mb),
                                i.version.clone(),
                            ]
                        })
                        .collect();
                    println!("{}", table(&["NODE", "STATE", "ADDRESS", "SANDBOXES", "CPUS", "MEMORY", "VERSION"], &rows));
                }
            }
            NodeCmd::Drain { name } => {
                client.drain_node(&name, true).await?;
                if !json {
                    println!("{name}: drained");
                }
            }
            NodeCmd::Undrain { name } => {
                client.drain_node(&name, false).await?;
                if !json {
                    println!("{name}: ready");
                }
            }
        }
        anyhow::Ok(0)
    })
}
