//! Lifecycle events: `GET /events` (or one sandbox's) as a stream of
//! [`Event`]s, resumable from an event's id.

use std::pin::Pin;
use std::task::{Context, Poll};

use airlock_proto::api::Event;
use futures_util::Stream;
use http::Method;

use crate::client::{encode, Client};
use crate::error::{Error, Result};

/// What to follow; everything by default, from the oldest event kept.
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    /// Only this sandbox's events.
    pub sandbox: Option<String>,
    /// Only these types (`created`, `killed`, ...).
    pub kinds: Vec<String>,
    /// Only events of sandboxes with this metadata.
    pub metadata: Vec<(String, String)>,
    /// Resume after this event id.
    pub after: Option<i64>,
}

impl Client {
    /// Follows lifecycle events until dropped; see [`EventQuery`].
    pub async fn events(&self, q: &EventQuery) -> Result<EventStream> {
        let mut params = Vec::new();
        if !q.kinds.is_empty() {
            params.push(format!("type={}", encode(&q.kinds.join(","))));
        }
        if !q.metadata.is_empty() {
            let m = q.metadata.iter().map(|(k, v)| format!("{}={}", encode(k), encode(v))).collect::<Vec<_>>().join("&");
            params.push(format!("metadata={}", encode(&m)));
        }
        if let Some(a) = q.after {
            params.push(format!("lastEventId={a}"));
        }
        let base = match &q.sandbox {
            Some(id) => format!("/sandboxes/{}/events", encode(id)),
            None => "/events".to_string(),
        };
        let path = if params.is_empty() { base } else { format!("{base}?{}", params.join("&")) };
        let body = self.api_raw(Method::GET, &path, crate::client::full(bytes::Bytes::new()), "application/json", Some(0)).await?.into_body();
        Ok(EventStream { sse: crate::sse::SseReader::new(body, "events") })
    }
}

/// Events as they come (one per server-sent-events message).
pub struct EventStream {
    sse: crate::sse::SseReader,
}

impl Stream for EventStream {
    type Item = Result<Event>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().sse.poll_message(cx).map(|m| m.map(|m| m.and_then(|m| serde_json::from_str(&m.data).map_err(|e| Error::protocol(format!("event {:?}: {e}", m.data))))))
    }
}
