//! `airlock secret`: E2B's secrets on a server (create, list, get, update,
//! delete). A value is read from standard input or `AIRLOCK_SECRET_VALUE`,
//! never from an argument (which `ps` and shell histories would show), and
//! nothing prints one: the server never gives it back.

use std::collections::BTreeMap;
use std::io::Read;

use airlock_sdk::Secret;

pub(super) const EXAMPLES: &str = "Examples:
  printf %s \"$OPENAI_API_KEY\" | airlock secret create openai-key --meta owner=ci
  AIRLOCK_SECRET_VALUE=... airlock secret create github-token
  airlock secret list
  airlock secret get openai-key              # by name or by id (sec_...)
  printf %s \"$NEW_KEY\" | airlock secret update openai-key
  airlock secret delete openai-key

A sandbox's network rules inject a secret into requests to the hosts they
name with the placeholder ${e2b.secrets.<name>} in a header value; the
sandbox never sees the value. Names are stored lower-cased.";

#[derive(clap::Args, Debug)]
pub(super) struct SecretArgs {
    #[command(flatten)]
    client: super::client::ClientArgs,
    #[command(subcommand)]
    cmd: SecretCmd,
}

#[derive(clap::Args, Debug)]
struct ValueArgs {
    /// The value; default: standard input (one trailing newline dropped).
    /// Hidden: an argument shows in `ps`; the environment variable is the
    /// way to give it without a pipe.
    #[arg(long = "value", env = "AIRLOCK_SECRET_VALUE", hide_env_values = true, hide = true)]
    value: Option<String>,
    /// Metadata, key=value (repeatable).
    #[arg(long = "meta", short = 'm', value_name = "KEY=VALUE")]
    meta: Vec<String>,
}

#[derive(clap::Subcommand, Debug)]
enum SecretCmd {
    /// Create a secret; its value from standard input or AIRLOCK_SECRET_VALUE.
    Create {
        name: String,
        #[command(flatten)]
        value: ValueArgs,
    },
    /// List secrets (metadata only).
    #[command(alias = "ls")]
    List,
    /// Show one secret's metadata.
    #[command(alias = "show")]
    Get { secret: String },
    /// Store a new value (the next version); --meta replaces the metadata.
    Update {
        secret: String,
        #[command(flatten)]
        value: ValueArgs,
    },
    /// Delete a secret.
    #[command(alias = "rm")]
    Delete { secret: String },
}

impl ValueArgs {
    fn value(&self) -> anyhow::Result<String> {
        if let Some(v) = &self.value {
            return Ok(v.clone());
        }
        let mut v = String::new();
        std::io::stdin().read_to_string(&mut v)?;
        if v.ends_with('\n') {
            v.pop();
            if v.ends_with('\r') {
                v.pop();
            }
        }
        anyhow::ensure!(!v.is_empty(), "no value: pipe it on standard input or set AIRLOCK_SECRET_VALUE");
        Ok(v)
    }

    fn metadata(&self) -> anyhow::Result<Option<BTreeMap<String, String>>> {
        if self.meta.is_empty() {
            return Ok(None);
        }
        let mut m = BTreeMap::new();
        for kv in &self.meta {
            let (k, v) = kv.split_once('=').ok_or_else(|| anyhow::anyhow!("--meta {kv:?}: use KEY=VALUE"))?;
            m.insert(k.to_string(), v.to_string());
        }
        Ok(Some(m))
    }
}

fn print(s: &Secret) {
    println!("id:       {}\nname:     {}\nversion:  {}\ncreated:  {}\nupdated:  {}", s.secret_id, s.name, s.current_version, s.created_at, s.updated_at);
    for (k, v) in &s.metadata {
        println!("meta:     {k}={v}");
    }
}

pub(super) fn run(a: SecretArgs) -> anyhow::Result<u8> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let client = a.client.client()?;
        let one = |s: Secret| -> anyhow::Result<()> {
            if a.client.json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                println!("{}", s.secret_id);
            }
            Ok(())
        };
        match &a.cmd {
            SecretCmd::Create { name, value } => one(client.create_secret(name, &value.value()?, value.metadata()?).await?)?,
            SecretCmd::Update { secret, value } => one(client.update_secret(secret, &value.value()?, value.metadata()?).await?)?,
            SecretCmd::List => {
                let list = client.list_secrets().await?;
                if a.client.json {
                    println!("{}", serde_json::to_string_pretty(&list)?);
                } else {
                    println!("{:<24} {:>7} {:<24} NAME", "ID", "VERSION", "UPDATED");
                    for s in list {
                        println!("{:<24} {:>7} {:<24} {}", s.secret_id, s.current_version, s.updated_at, s.name);
                    }
                }
            }
            SecretCmd::Get { secret } => {
                let s = client.get_secret(secret).await?;
                if a.client.json {
                    println!("{}", serde_json::to_string_pretty(&s)?);
                } else {
                    print(&s);
                }
            }
            SecretCmd::Delete { secret } => client.delete_secret(secret).await?,
        }
        Ok(0)
    })
}
