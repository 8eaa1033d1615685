//! `airlock mcp` (the MCP server on stdio, for clients configured with a
//! command line), `airlock sbx configure` and the execution-log side of
//! `airlock logs`: the CLI over airlock-mcp and the SDK's execlog calls.

use std::collections::BTreeMap;

use airlock_sdk::{Client, ConfigureSandbox, InstallPackages, LogEntry, LogLevel, LogQuery};
use anyhow::Context;
use futures_util::StreamExt;

use super::client::ClientArgs;

pub(super) const MCP_EXAMPLES: &str = "\
Examples:
  AIRLOCK_URL=http://127.0.0.1:3000 AIRLOCK_API_KEY=... airlock mcp
  airlock mcp --url http://127.0.0.1:3000 --api-key ...
An MCP client starts this command and speaks JSON-RPC on its stdin and
stdout; logs go to stderr. The same tools are served over Streamable HTTP
at /mcp by `airlock serve` (X-API-KEY or Authorization: Bearer).";

#[derive(clap::Args, Debug)]
pub(super) struct McpArgs {
    #[command(flatten)]
    client: ClientArgs,
}

/// Serves the MCP tools on stdio until the client closes them.
pub(super) fn run(a: McpArgs) -> anyhow::Result<u8> {
    let client = a.client.client()?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(airlock_mcp::serve_stdio(client.config().clone()))?;
    Ok(0)
}

/// `airlock sbx configure`.
#[derive(clap::Args, Debug)]
pub(super) struct ConfigureArgs {
    id: String,
    /// KEY=VALUE (repeatable; an empty value removes the variable).
    #[arg(short, long)]
    env: Vec<String>,
    /// A pip package to install (repeatable).
    #[arg(long)]
    pip: Vec<String>,
    /// An npm package to install globally (repeatable).
    #[arg(long)]
    npm: Vec<String>,
    /// An apt package to install (repeatable; Debian-based templates).
    #[arg(long)]
    apt: Vec<String>,
    /// A shell command to run as the default user (repeatable, in order).
    #[arg(long)]
    run: Vec<String>,
    /// Restart the sandbox afterwards, so running processes get the new environment too.
    #[arg(long)]
    restart: bool,
}

pub(super) async fn configure(client: &Client, a: ConfigureArgs, json: bool) -> anyhow::Result<()> {
    let ConfigureArgs { id, env, pip, npm, apt, run, restart } = a;
    let id = id.as_str();
    let mut env_vars = BTreeMap::new();
    for kv in env {
        let (k, v) = kv.split_once('=').with_context(|| format!("--env {kv:?}: expected KEY=VALUE"))?;
        env_vars.insert(k.to_string(), v.to_string());
    }
    let install_packages = (!(pip.is_empty() && npm.is_empty() && apt.is_empty())).then_some(InstallPackages { pip, npm, apt });
    let r = client.configure(id, &ConfigureSandbox { env_vars, install_packages, run_commands: run, restart }).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    if !r.env_vars_updated.is_empty() {
        println!("environment: {}", r.env_vars_updated.join(", "));
    }
    if !r.packages_installed.is_empty() {
        println!("packages: {}", r.packages_installed.join(", "));
    }
    for c in &r.commands_executed {
        println!("$ {}   # exit {} in {} ms", c.command, c.exit_code, c.duration_ms);
        print!("{}", c.output);
    }
    if r.restarted {
        println!("restarted");
    } else if r.restart_required {
        eprintln!("note: processes already running keep their old environment (use --restart)");
    }
    if let Some(c) = r.commands_executed.iter().find(|c| c.exit_code != 0) {
        anyhow::bail!("`{}` exited with code {}", c.command, c.exit_code);
    }
    Ok(())
}

/// What `airlock logs` asks for the execution log.
pub(super) struct LogFlags {
    pub(super) follow: bool,
    pub(super) level: Option<String>,
    pub(super) lines: Option<u32>,
    pub(super) since: Option<String>,
}

fn show(e: &LogEntry) {
    let source = serde_json::to_value(e.source).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
    let pid = e.pid.map(|p| format!(" [{p}]")).unwrap_or_default();
    println!("{} {:<5} {:<9}{pid} {}", e.timestamp, e.level.as_str(), source, e.message);
}

/// `airlock logs <id> --exec`-style reads: the execution log, once or followed.
pub(super) async fn execution_log(client: &Client, id: &str, f: LogFlags, json: bool) -> anyhow::Result<()> {
    let level = match f.level.as_deref() {
        Some(l) => Some(LogLevel::parse(l).with_context(|| format!("--level {l:?}: use debug, info, warn or error"))?),
        None => None,
    };
    let since = match f.since.as_deref() {
        Some(s) => Some(airlock_proto::time::parse_rfc3339(s).with_context(|| format!("--since {s:?}: expected an RFC 3339 time such as 2024-05-01T12:00:00Z"))?),
        None => None,
    };
    let q = LogQuery { lines: f.lines, level, since };
    if f.follow {
        let mut s = client.follow_log(id, &q).await?;
        while let Some(e) = s.next().await {
            let e = e?;
            if json {
                println!("{}", serde_json::to_string(&e)?);
            } else {
                show(&e);
            }
        }
        return Ok(());
    }
    let l = client.execution_log(id, &q).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&l)?);
        return Ok(());
    }
    for e in &l.log_entries {
        show(e);
    }
    let s = &l.stats;
    eprintln!("{} executions: {} successful, {} failed, {} running; average {:.0} ms", s.total, s.successful, s.failed, s.running, s.average_duration_ms);
    Ok(())
}
