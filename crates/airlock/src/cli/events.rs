//! `airlock events`: follow sandboxes' lifecycle events as they happen.

use airlock_sdk::EventQuery;
use futures_util::StreamExt;

use super::client::{kv, ClientArgs};

pub(super) const EXAMPLES: &str = "Examples:
  airlock events                                 # every sandbox, from the oldest event kept, then live
  airlock events --sandbox <id>                  # one sandbox's life
  airlock events --type created,killed -m team=a
  airlock events --after 1234 --json             # resume after event 1234, one JSON object per line

Types: created, ready, error, paused, resumed, timeout, timeout_changed,
snapshot, reset, restarted, resources_changed, resource_alert, oom, died,
killed, destroyed, or E2B's names (sandbox.lifecycle.created, .killed,
.paused, .resumed, .updated, .checkpointed). Follows until interrupted. To
have events POSTed to a URL instead, see `airlock webhook`.";

#[derive(clap::Args, Debug)]
pub(super) struct EventsArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Only this sandbox's events.
    #[arg(long)]
    sandbox: Option<String>,
    /// Only these types (comma-separated).
    #[arg(long = "type", value_delimiter = ',')]
    kinds: Vec<String>,
    /// Only sandboxes with this metadata KEY=VALUE (repeatable).
    #[arg(long = "metadata", short = 'm', value_parser = kv)]
    metadata: Vec<(String, String)>,
    /// Resume after this event id.
    #[arg(long)]
    after: Option<i64>,
}

pub(super) async fn events(a: EventsArgs) -> anyhow::Result<u8> {
    let client = a.client.client()?;
    let q = EventQuery { sandbox: a.sandbox, kinds: a.kinds, metadata: a.metadata, after: a.after };
    let mut stream = client.events(&q).await?;
    while let Some(e) = stream.next().await {
        let e = e?;
        if a.client.json {
            println!("{}", serde_json::to_string(&e)?);
        } else {
            let data = if e.data.as_object().is_some_and(|o| o.is_empty()) || e.data.is_null() { String::new() } else { e.data.to_string() };
            println!("{:<8} {}  {:<16} {}  {data}", e.id, e.timestamp, e.kind, e.sandbox_id);
        }
    }
    Ok(0)
}
