//! Secrets (`/secrets`, E2B's secrets API): values the server keeps
//! sealed and injects into a sandbox's outbound requests where its network
//! rules say `${e2b.secrets.<name>}`, so code in the sandbox never sees
//! them. Values are write-only: create and update take one, and nothing
//! gives it back. See `docs/secrets.md`.

use std::collections::BTreeMap;

use airlock_proto::api::{NewSecret, Secret, SecretUpdate};
use http::Method;

use crate::client::Client;
use crate::error::{Error, Result};

/// A secret's id or name as one path segment: every byte but
/// alphanumerics, `-`, `_` and `~` escaped (names may hold `/` or be `..`).
fn segment(id_or_name: &str) -> Result<String> {
    if id_or_name.is_empty() {
        return Err(Error::Config("a secret id or name is required".into()));
    }
    let mut out = String::with_capacity(id_or_name.len());
    for b in id_or_name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    Ok(out)
}

fn body(v: &impl serde::Serialize) -> Result<serde_json::Value> {
    serde_json::to_value(v).map_err(|e| Error::Config(e.to_string()))
}

/// The placeholder a network rule's header template uses for a secret
/// (what the official SDKs' `Secret.fill` makes).
pub fn placeholder(name: &str) -> String {
    format!("${{e2b.secrets.{name}}}")
}

impl Client {
    /// Creates a secret (version 1). The answer is its metadata only.
    pub async fn create_secret(&self, name: &str, value: &str, metadata: Option<BTreeMap<String, String>>) -> Result<Secret> {
        let b = NewSecret { name: name.to_string(), value: value.to_string(), metadata };
        Ok(self.api_json(Method::POST, "/secrets", Some(body(&b)?)).await?.2)
    }

    /// Every secret, oldest first, all pages.
    pub async fn list_secrets(&self) -> Result<Vec<Secret>> {
        let mut out = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let (page, token) = self.list_secrets_page(100, next.as_deref()).await?;
            out.extend(page);
            match token {
                Some(t) => next = Some(t),
                None => return Ok(out),
            }
        }
    }

    /// One page of at most `limit` (1-100) secrets after `next_token`, and
    /// the next page's token (`None` on the last page).
    pub async fn list_secrets_page(&self, limit: u32, next_token: Option<&str>) -> Result<(Vec<Secret>, Option<String>)> {
        let mut path = format!("/secrets?limit={limit}");
        if let Some(t) = next_token {
            path.push_str(&format!("&nextToken={}", crate::client::encode(t)));
        }
        let (_, headers, page): (_, _, Vec<Secret>) = self.api_json(Method::GET, &path, None).await?;
        let next = headers.get("x-next-token").and_then(|v| v.to_str().ok()).filter(|t| !t.is_empty()).map(str::to_string);
        Ok((page, next))
    }

    /// A secret's metadata, by id (`sec_…`) or name.
    pub async fn get_secret(&self, id_or_name: &str) -> Result<Secret> {
        Ok(self.api_json(Method::GET, &format!("/secrets/{}", segment(id_or_name)?), None).await?.2)
    }

    /// Stores a new value as the next version; `metadata`, when given,
    /// replaces the stored metadata.
    pub async fn update_secret(&self, id_or_name: &str, value: &str, metadata: Option<BTreeMap<String, String>>) -> Result<Secret> {
        let b = SecretUpdate { value: value.to_string(), metadata };
        Ok(self.api_json(Method::POST, &format!("/secrets/{}", segment(id_or_name)?), Some(body(&b)?)).await?.2)
    }

    /// Deletes a secret; [`Error::NotFound`] when there is none.
    pub async fn delete_secret(&self, id_or_name: &str) -> Result<()> {
        self.api(Method::DELETE, &format!("/secrets/{}", segment(id_or_name)?), None).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_one_path_segment() {
        assert_eq!(segment("sec_abc123").expect("id"), "sec_abc123");
        assert_eq!(segment("a/b").expect("slash"), "a%2Fb");
        assert_eq!(segment("..").expect("dots"), "%2E%2E");
        assert_eq!(segment("a b?").expect("space"), "a%20b%3F");
        assert!(segment("").is_err());
        assert_eq!(placeholder("openai-key"), "${e2b.secrets.openai-key}");
    }
}
