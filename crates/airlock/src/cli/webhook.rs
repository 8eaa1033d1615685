//! `airlock webhook`: lifecycle webhooks on a server (create, list, show,
//! rm). Deliveries are the server's; this only registers and inspects.

use airlock_sdk::{NewWebhook, Webhook};

pub(super) const EXAMPLES: &str = "Examples:
  airlock webhook create http://hooks.example:8080/airlock --event ready,killed --name ci
  AIRLOCK_WEBHOOK_SECRET=... airlock webhook create http://hooks.example/e2b --event sandbox.lifecycle.killed
  airlock webhook list
  airlock webhook show wh_...                   # delivery state: last status, attempts, last error
  airlock webhook rm wh_...

Each event is POSTed as E2B's SandboxEvent JSON; with a secret it is signed
twice, as E2B does (e2b-signature) and with an HMAC-SHA256 of the body
(X-Airlock-Signature: sha256=<hex>). Types: Airlock's (created, paused,
resumed, killed, timeout, oom, died, destroyed, ...) or E2B's
(sandbox.lifecycle.created, .killed, .paused, .resumed, .updated,
.checkpointed); none: every event. http:// URLs only (no TLS client).";

#[derive(clap::Args, Debug)]
pub(super) struct WebhookArgs {
    #[command(flatten)]
    client: super::client::ClientArgs,
    #[command(subcommand)]
    cmd: WebhookCmd,
}

#[derive(clap::Subcommand, Debug)]
enum WebhookCmd {
    /// Register a webhook and print its id.
    Create {
        // Not named `url`: that id is the server's, the global `--url`.
        /// http://host[:port]/path that deliveries are POSTed to.
        #[arg(value_name = "URL")]
        target: String,
        /// Event types (comma-separated or repeated) [default: every event].
        #[arg(long = "event", short = 'e', value_delimiter = ',')]
        events: Vec<String>,
        /// Signs deliveries; never shown again.
        #[arg(long, env = "AIRLOCK_WEBHOOK_SECRET", hide_env_values = true)]
        secret: Option<String>,
        /// A name to tell it by.
        #[arg(long)]
        name: Option<String>,
        /// Register it switched off.
        #[arg(long)]
        disabled: bool,
    },
    /// List webhooks.
    #[command(alias = "ls")]
    List,
    /// Show one webhook and where its deliveries stand.
    Show { id: String },
    /// Delete a webhook.
    #[command(alias = "delete")]
    Rm { id: String },
}

fn print(w: &Webhook) {
    let d = &w.delivery;
    let events = if w.events.is_empty() { "all".to_string() } else { w.events.join(",") };
    println!(
        "id:         {}\nname:       {}\nurl:        {}\nevents:     {events}\nenabled:    {}\nsigned:     {}\ncreated:    {}",
        w.id, w.name, w.url, w.enabled, w.signed, w.created_at
    );
    println!("delivered:  {}\nfailed:     {}\nlast event: {}", d.delivered, d.failed, d.last_event_id);
    if let Some(at) = &d.last_attempt_at {
        let status = d.last_status.map(|s| s.to_string()).unwrap_or_else(|| "no answer".into());
        println!("last try:   {at}, attempt {}, {status}{}", d.attempts, d.last_error.as_deref().map(|e| format!(": {e}")).unwrap_or_default());
    }
}

pub(super) fn run(a: WebhookArgs) -> anyhow::Result<u8> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let client = a.client.client()?;
        match a.cmd {
            WebhookCmd::Create { target, events, secret, name, disabled } => {
                let w = client.create_webhook(&NewWebhook { url: target, events: Some(events), secret, name, enabled: Some(!disabled) }).await?;
                if a.client.json {
                    println!("{}", serde_json::to_string_pretty(&w)?);
                } else {
                    println!("{}", w.id);
                }
            }
            WebhookCmd::List => {
                let list = client.list_webhooks().await?;
                if a.client.json {
                    println!("{}", serde_json::to_string_pretty(&list)?);
                } else {
                    println!("{:<24} {:<16} {:<7} {:>9} {:>6} {:>6}  URL", "ID", "NAME", "ENABLED", "DELIVERED", "FAILED", "LAST");
                    for w in list {
                        let last = w.delivery.last_status.map(|s| s.to_string()).unwrap_or_else(|| if w.delivery.last_error.is_some() { "error".into() } else { "-".into() });
                        println!("{:<24} {:<16} {:<7} {:>9} {:>6} {:>6}  {}", w.id, w.name, w.enabled, w.delivery.delivered, w.delivery.failed, last, w.url);
                    }
                }
            }
            WebhookCmd::Show { id } => {
                let w = client.get_webhook(&id).await?;
                if a.client.json {
                    println!("{}", serde_json::to_string_pretty(&w)?);
                } else {
                    print(&w);
                }
            }
            WebhookCmd::Rm { id } => client.delete_webhook(&id).await?,
        }
        Ok(0)
    })
}
