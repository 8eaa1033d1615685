//! A response body of newline-delimited JSON as a stream of `T`: what
//! template builds and followed logs send.

use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Stream;
use http_body::Body;
use hyper::body::Incoming;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// Takes the next complete line that is not blank out of `buf`.
pub(crate) fn next_line(buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
        let line: Vec<u8> = buf.drain(..=pos).collect();
        if !line.iter().all(u8::is_ascii_whitespace) {
            return Some(line);
        }
    }
    None
}

/// One `T` per line, as the lines come; blank lines are skipped.
pub struct NdjsonStream<T> {
    body: Incoming,
    buf: Vec<u8>,
    done: bool,
    /// What the stream is, for errors.
    what: &'static str,
    _t: PhantomData<fn() -> T>,
}

impl<T> NdjsonStream<T> {
    pub(crate) fn new(body: Incoming, what: &'static str) -> Self {
        Self { body, buf: Vec::new(), done: false, what, _t: PhantomData }
    }
}

impl<T: DeserializeOwned> Stream for NdjsonStream<T> {
    type Item = Result<T>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(line) = next_line(&mut this.buf) {
                return Poll::Ready(Some(serde_json::from_slice(&line).map_err(|e| Error::protocol(format!("{} {:?}: {e}", this.what, String::from_utf8_lossy(&line))))));
            }
            if this.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    this.done = true;
                    if !this.buf.is_empty() {
                        // A last line without its newline.
                        this.buf.push(b'\n');
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(Error::Connection { url: this.what.into(), source: Box::new(e) })));
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
