//! Decoding of server-streaming Connect responses into typed messages, and
//! an incremental UTF-8 decoder for output callbacks.

use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use airlock_proto::connect::{MessageReader, StreamError};
use futures_util::Stream;
use hyper::body::Incoming;
use serde::de::DeserializeOwned;

use crate::error::{self, Error, Result};

/// The messages of one server-streaming RPC (airlock-proto's
/// `MessageReader`), ending at the end-of-stream envelope (an error there
/// is yielded as the last item). Dropping it closes the connection and
/// never blocks.
pub(crate) struct ConnectStream<T> {
    reader: MessageReader<Incoming>,
    url: String,
    _t: PhantomData<fn() -> T>,
}

impl<T> ConnectStream<T> {
    pub(crate) fn new(body: Incoming, url: String) -> Self {
        Self { reader: MessageReader::new(body), url, _t: PhantomData }
    }
}

impl<T: DeserializeOwned> Stream for ConnectStream<T> {
    type Item = Result<T>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let url = &this.url;
        Poll::Ready(ready!(this.reader.poll_message(cx)).map(|r| {
            r.map_err(|e| match e {
                StreamError::Remote(e) => error::from_connect(e),
                StreamError::Body(source) => Error::Connection { url: url.clone(), source },
                StreamError::Decode { payload, source } => Error::protocol(format!("{url}: bad message {source}: {payload}")),
                other => Error::protocol(format!("{url}: {other}")),
            })
        }))
    }
}

/// Turns a byte stream into text chunk by chunk, holding back a multi-byte
/// character split across chunks instead of replacing it with U+FFFD.
#[derive(Debug, Default)]
pub(crate) struct Utf8Decoder {
    pending: Vec<u8>,
}

impl Utf8Decoder {
    pub(crate) fn push(&mut self, data: &[u8]) -> String {
        self.pending.extend_from_slice(data);
        let keep = incomplete_tail(&self.pending);
        let cut = self.pending.len() - keep;
        let rest = self.pending.split_off(cut);
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending = rest;
        text
    }

    /// Whatever is left at the end of the stream (an incomplete character
    /// becomes U+FFFD).
    pub(crate) fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        text
    }
}

/// Length of an incomplete UTF-8 sequence at the end of `b` (0..=3).
fn incomplete_tail(b: &[u8]) -> usize {
    for back in 1..=b.len().min(3) {
        let c = b[b.len() - back];
        if c & 0b1100_0000 == 0b1000_0000 {
            continue; // continuation byte: look further back
        }
        let need = match c {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => return 0,
        };
        return if need > back { back } else { 0 };
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_characters_are_reassembled() {
        let s = "héllo €ok 😀";
        let bytes = s.as_bytes();
        for split in 0..bytes.len() {
            let mut d = Utf8Decoder::default();
            let mut out = d.push(&bytes[..split]);
            out.push_str(&d.push(&bytes[split..]));
            out.push_str(&d.finish());
            assert_eq!(out, s, "split at {split}");
        }
    }

    #[test]
    fn invalid_bytes_still_become_replacement_characters() {
        let mut d = Utf8Decoder::default();
        let mut out = d.push(b"a\xffb\xe2\x82");
        assert_eq!(out, "a\u{fffd}b");
        out = d.finish();
        assert_eq!(out, "\u{fffd}");
    }
}
