//! Webhooks and E2B's events API as service actions: register, list,
//! show, change and remove webhooks (settings checked by
//! `crate::webhooks::check`, the secret never shown again), and listings
//! of stored events in E2B's `SandboxEvent` shape. Deliveries themselves
//! run in `crate::webhooks`.

use airlock_proto::api::{NewWebhook, SandboxEvent, Webhook, WebhookDelivery, WebhookPatch};

use super::*;
use crate::events::{EventPage, KindSet};
use crate::webhooks::{WebhookRow, MAX_WEBHOOKS};

/// The API's view of a stored webhook.
fn view(w: &WebhookRow) -> Webhook {
    Webhook {
        id: w.id.clone(),
        team_id: crate::events::TEAM_ID.into(),
        name: w.name.clone(),
        url: w.url.clone(),
        events: w.events.clone(),
        enabled: w.enabled,
        signed: !w.secret.is_empty(),
        created_at: rfc3339_ms(w.created_at),
        delivery: WebhookDelivery {
            last_event_id: w.cursor,
            last_status: (w.last_status != 0).then_some(w.last_status),
            last_error: (!w.last_error.is_empty()).then(|| w.last_error.clone()),
            last_attempt_at: (w.last_attempt_at != 0).then(|| rfc3339_ms(w.last_attempt_at)),
            attempts: w.attempts,
            delivered: w.delivered,
            failed: w.failed,
        },
    }
}

/// What E2B's events API lists: `offset`, `limit` (1-100, default 10),
/// newest first unless `ascending`, E2B's types unless `types` names others.
#[derive(Debug, Clone, Default)]
pub struct EventListing {
    pub offset: usize,
    pub limit: Option<usize>,
    pub ascending: bool,
    pub types: Vec<String>,
}

impl Service {
    async fn webhook_row(&self, id: &str) -> Result<WebhookRow, ApiError> {
        let store = self.store.clone();
        let id2 = id.to_string();
        self.blocking(move || store.webhook(&id2)).await??.ok_or_else(|| ApiError::NotFound(format!("webhook {id} not found")))
    }

    /// Registers a webhook; it gets the events recorded from now on.
    pub async fn create_webhook(&self, b: NewWebhook) -> Result<Webhook, ApiError> {
        let url = b.url.trim().to_string();
        let (name, secret, events) = (b.name.unwrap_or_default(), b.secret.unwrap_or_default(), b.events.unwrap_or_default());
        crate::webhooks::check(&url, &name, &secret, &events).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let store = self.store.clone();
        let cursor = self.blocking(move || store.last_event_id()).await??;
        let row = WebhookRow {
            id: format!("wh_{}", crate::ids::sandbox_id()?),
            name,
            url,
            events,
            secret,
            enabled: b.enabled.unwrap_or(true),
            created_at: now_ms(),
            cursor,
            last_status: 0,
            last_error: String::new(),
            last_attempt_at: 0,
            attempts: 0,
            delivered: 0,
            failed: 0,
        };
        let (store, r2) = (self.store.clone(), row.clone());
        if !self.blocking(move || store.insert_webhook(&r2, MAX_WEBHOOKS)).await?? {
            return Err(ApiError::Conflict(format!("this server keeps at most {MAX_WEBHOOKS} webhooks: delete one first")));
        }
        self.webhook_hub.changed();
        // The host only: a URL's path or query may carry the receiver's own token.
        let host = crate::webhooks::Target::parse(&row.url).map(|t| t.host).unwrap_or_default();
        tracing::info!(webhook_id = %row.id, %host, "webhook registered");
        Ok(view(&row))
    }

    pub async fn webhooks(&self) -> Result<Vec<Webhook>, ApiError> {
        let store = self.store.clone();
        Ok(self.blocking(move || store.webhooks()).await??.iter().map(view).collect())
    }

    pub async fn webhook(&self, id: &str) -> Result<Webhook, ApiError> {
        Ok(view(&self.webhook_row(id).await?))
    }

    /// Changes what the patch gives. A webhook enabled again gets the
    /// events recorded from then on, not those missed while it was off.
    pub async fn update_webhook(&self, id: &str, p: WebhookPatch) -> Result<Webhook, ApiError> {
        let mut row = self.webhook_row(id).await?;
        let was_enabled = row.enabled;
        if let Some(u) = p.url {
            row.url = u.trim().to_string();
        }
        if let Some(n) = p.name {
            row.name = n;
        }
        if let Some(s) = p.secret {
            row.secret = s;
        }
        if let Some(e) = p.events {
            row.events = e;
        }
        if let Some(en) = p.enabled {
            row.enabled = en;
        }
        crate::webhooks::check(&row.url, &row.name, &row.secret, &row.events).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        if row.enabled && !was_enabled {
            let store = self.store.clone();
            row.cursor = self.blocking(move || store.last_event_id()).await??;
        }
        let (store, r2) = (self.store.clone(), row.clone());
        if !self.blocking(move || store.update_webhook(&r2)).await?? {
            return Err(ApiError::NotFound(format!("webhook {id} not found")));
        }
        self.webhook_hub.changed();
        // Re-read: the delivery state may have moved meanwhile.
        self.webhook(id).await
    }

    pub async fn delete_webhook(&self, id: &str) -> Result<(), ApiError> {
        let store = self.store.clone();
        let id2 = id.to_string();
        if !self.blocking(move || store.delete_webhook(&id2)).await?? {
            return Err(ApiError::NotFound(format!("webhook {id} not found")));
        }
        self.webhook_hub.changed();
        tracing::info!(webhook_id = %id, "webhook deleted");
        Ok(())
    }

    /// Stored events in E2B's shape, of one sandbox or all.
    pub async fn e2b_events(&self, sandbox: Option<String>, q: EventListing) -> Result<Vec<SandboxEvent>, ApiError> {
        let limit = q.limit.unwrap_or(10);
        if !(1..=100).contains(&limit) {
            return Err(ApiError::BadRequest(format!("limit must be between 1 and 100, got {limit}")));
        }
        crate::events::check_types(&q.types).map_err(ApiError::BadRequest)?;
        let kinds = if q.types.is_empty() { KindSet::e2b() } else { KindSet::of(&q.types).unwrap_or_default() };
        let page = EventPage { sandbox, kinds: Some(kinds), offset: q.offset.min(crate::events::KEEP as usize), limit, ascending: q.ascending };
        let store = self.store.clone();
        let events = self.blocking(move || store.events_page(&page)).await??;
        Ok(events.iter().map(crate::events::sandbox_event).collect())
    }
}
