//! Server-sent events off a response body: the one reader behind the
//! event and metrics streams.

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::Body;
use hyper::body::Incoming;

use crate::error::{Error, Result};

/// One message: its `event` (`message` when it names none) and `data`.
pub(crate) struct Message {
    pub event: String,
    pub data: String,
}

pub(crate) struct SseReader {
    body: Incoming,
    buf: Vec<u8>,
    done: bool,
    /// What the stream is, for errors.
    what: &'static str,
}

impl SseReader {
    pub(crate) fn new(body: Incoming, what: &'static str) -> Self {
        Self { body, buf: Vec::new(), done: false, what }
    }

    /// The next message with data; comments (keepalives) and empty
    /// messages are skipped. `None` once the body ends.
    pub(crate) fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message>>> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let msg: Vec<u8> = self.buf.drain(..end + 2).collect();
                let text = String::from_utf8_lossy(&msg);
                let event = text.lines().find_map(|l| l.strip_prefix("event: ")).unwrap_or("message").to_string();
                if let Some(data) = text.lines().find_map(|l| l.strip_prefix("data: ")) {
                    return Poll::Ready(Some(Ok(Message { event, data: data.to_string() })));
                }
                continue;
            }
            if self.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => self.done = true,
                Poll::Ready(Some(Err(e))) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(Error::Connection { url: self.what.into(), source: Box::new(e) })));
                }
                Poll::Ready(Some(Ok(f))) => {
                    if let Ok(d) = f.into_data() {
                        self.buf.extend_from_slice(&d);
                    }
                }
            }
        }
    }
}
