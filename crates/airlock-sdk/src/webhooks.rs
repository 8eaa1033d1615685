//! Lifecycle webhooks (`/webhooks`): register a URL that the server POSTs
//! the lifecycle events it asks for, signed with a secret; list, show,
//! change and remove them. The server signs each delivery twice, as E2B
//! does (`e2b-signature`) and with an HMAC-SHA256 (`X-Airlock-Signature`);
//! see `docs/events.md` for checking them.

use airlock_proto::api::{NewWebhook, Webhook, WebhookPatch};
use http::Method;

use crate::client::Client;
use crate::error::{Error, Result};

/// Webhook ids go into paths: only the characters they have.
fn checked(id: &str) -> Result<&str> {
    if !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        Ok(id)
    } else {
        Err(Error::Config(format!("invalid webhook id {id:?}")))
    }
}

fn body(v: &impl serde::Serialize) -> Result<serde_json::Value> {
    serde_json::to_value(v).map_err(|e| Error::Config(e.to_string()))
}

impl Client {
    /// Registers a webhook; it gets the events recorded from now on. The
    /// answer never holds the secret.
    pub async fn create_webhook(&self, w: &NewWebhook) -> Result<Webhook> {
        Ok(self.api_json(Method::POST, "/webhooks", Some(body(w)?)).await?.2)
    }

    /// Every webhook, oldest first, with where its deliveries stand.
    pub async fn list_webhooks(&self) -> Result<Vec<Webhook>> {
        Ok(self.api_json(Method::GET, "/webhooks", None).await?.2)
    }

    pub async fn get_webhook(&self, id: &str) -> Result<Webhook> {
        Ok(self.api_json(Method::GET, &format!("/webhooks/{}", checked(id)?), None).await?.2)
    }

    /// Changes the fields the patch gives.
    pub async fn update_webhook(&self, id: &str, p: &WebhookPatch) -> Result<Webhook> {
        Ok(self.api_json(Method::PATCH, &format!("/webhooks/{}", checked(id)?), Some(body(p)?)).await?.2)
    }

    /// Removes a webhook; [`Error::NotFound`] when there is none.
    pub async fn delete_webhook(&self, id: &str) -> Result<()> {
        self.api(Method::DELETE, &format!("/webhooks/{}", checked(id)?), None).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_before_they_reach_a_path() {
        assert!(checked("wh_abc123").is_ok());
        for bad in ["", "../x", "a/b", "a?b", "a b"] {
            assert!(checked(bad).is_err(), "{bad:?}");
        }
    }
}
