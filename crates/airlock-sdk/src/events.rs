//! Lifecycle events: `GET /events` (or one sandbox's) as a stream of
//! [`Event`]s, resumable from an event's id.

use std::pin::Pin;
use std::task::{Context, Poll};

use airlock_proto::api::Event;
use futures_util::Stream;
use http::Method;
use http_body::Body;
use hyper::body::Incoming;

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
        Ok(EventStream { body, buf: Vec::new(), done: false })
    }
}

/// Events as they come (one per server-sent-events message).
pub struct EventStream {
    body: Incoming,
    buf: Vec<u8>,
    done: bool,
}

impl Stream for EventStream {
    type Item = Result<Event>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(end) = this.buf.windows(2).position(|w| w == b"\n\n") {
                let msg: Vec<u8> = this.buf.drain(..end + 2).collect();
                let text = String::from_utf8_lossy(&msg);
                // Comments (keepalives) and messages without data are skipped.
                if let Some(data) = text.lines().find_map(|l| l.strip_prefix("data: ")) {
                    return Poll::Ready(Some(serde_json::from_str(data).map_err(|e| Error::protocol(format!("event {data:?}: {e}")))));
                }
                continue;
            }
            if this.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => this.done = true,
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(Error::Connection { url: "events".into(), source: Box::new(e) })));
                }
                Poll::Ready(Some(Ok(f))) => {
                    if let Ok(d) = f.into_data() {
                        this.buf.extend_from_slice(&d);
                    }
                }
            }
        }
    }
}
