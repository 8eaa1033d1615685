//! The Connect protocol's pieces that are independent of transport: error
//! codes and their HTTP statuses, the JSON error body, and the 5-byte
//! envelope framing used by streaming RPCs.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

/// Content type of unary JSON requests and responses.
pub const CONTENT_TYPE_JSON: &str = "application/json";
/// Content type of streaming JSON requests and responses. Sent exactly like
/// this: the Python SDK compares the suffix after `application/connect+`
/// byte for byte, so parameters such as `; charset` would break it.
pub const CONTENT_TYPE_STREAM_JSON: &str = "application/connect+json";

/// Envelope flag: the payload is compressed (never produced by Airlock).
pub const FLAG_COMPRESSED: u8 = 0x01;
/// Envelope flag: this envelope is the end-of-stream message.
pub const FLAG_END_STREAM: u8 = 0x02;

/// Largest envelope payload accepted from a peer. Input chunks and file
/// events are far smaller; this only stops a hostile length prefix from
/// making the reader allocate without bound.
pub const MAX_ENVELOPE: usize = 16 * 1024 * 1024;

/// Connect error codes, by their wire names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    Canceled,
    Unknown,
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Aborted,
    OutOfRange,
    Unimplemented,
    Internal,
    Unavailable,
    DataLoss,
    Unauthenticated,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Canceled => "canceled",
            Code::Unknown => "unknown",
            Code::InvalidArgument => "invalid_argument",
            Code::DeadlineExceeded => "deadline_exceeded",
            Code::NotFound => "not_found",
            Code::AlreadyExists => "already_exists",
            Code::PermissionDenied => "permission_denied",
            Code::ResourceExhausted => "resource_exhausted",
            Code::FailedPrecondition => "failed_precondition",
            Code::Aborted => "aborted",
            Code::OutOfRange => "out_of_range",
            Code::Unimplemented => "unimplemented",
            Code::Internal => "internal",
            Code::Unavailable => "unavailable",
            Code::DataLoss => "data_loss",
            Code::Unauthenticated => "unauthenticated",
        }
    }

    /// The HTTP status a unary error with this code is sent with.
    pub fn http_status(self) -> u16 {
        match self {
            Code::Canceled => 499,
            Code::Unknown => 500,
            Code::InvalidArgument => 400,
            Code::DeadlineExceeded => 504,
            Code::NotFound => 404,
            Code::AlreadyExists => 409,
            Code::PermissionDenied => 403,
            Code::ResourceExhausted => 429,
            Code::FailedPrecondition => 400,
            Code::Aborted => 409,
            Code::OutOfRange => 400,
            Code::Unimplemented => 501,
            Code::Internal => 500,
            Code::Unavailable => 503,
            Code::DataLoss => 500,
            Code::Unauthenticated => 401,
        }
    }

    /// The code a client infers from a non-Connect HTTP error status.
    pub fn from_http_status(status: u16) -> Code {
        match status {
            400 => Code::InvalidArgument,
            401 => Code::Unauthenticated,
            403 => Code::PermissionDenied,
            404 => Code::NotFound,
            409 => Code::AlreadyExists,
            429 | 502..=504 => Code::Unavailable,
            501 => Code::Unimplemented,
            _ => Code::Unknown,
        }
    }
}

/// A Connect error: the JSON body of a failed unary call, or the `error`
/// member of a failed stream's end-of-stream message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ConnectError {
    pub code: Code,
    #[serde(default)]
    pub message: String,
}

impl ConnectError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
    pub fn invalid_argument(m: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, m)
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::new(Code::NotFound, m)
    }
    pub fn internal(m: impl Into<String>) -> Self {
        Self::new(Code::Internal, m)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_else(|_| b"{\"code\":\"internal\"}".to_vec())
    }
}

/// The payload of the end-of-stream envelope.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct EndStream {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ConnectError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Frames one message: flag byte, 4-byte big-endian length, payload.
pub fn envelope(flags: u8, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + payload.len());
    b.put_u8(flags);
    b.put_u32(payload.len() as u32);
    b.put_slice(payload);
    b.freeze()
}

/// Frames a message serialised as JSON.
pub fn json_envelope<T: Serialize>(msg: &T) -> Bytes {
    let payload = serde_json::to_vec(msg).unwrap_or_else(|_| b"{}".to_vec());
    envelope(0, &payload)
}

/// The end-of-stream envelope: `{}` on success, the error otherwise.
pub fn end_stream(error: Option<&ConnectError>) -> Bytes {
    let body = EndStream { error: error.cloned(), metadata: None };
    envelope(FLAG_END_STREAM, &serde_json::to_vec(&body).unwrap_or_else(|_| b"{}".to_vec()))
}

/// One decoded envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub flags: u8,
    pub payload: Bytes,
}

impl Envelope {
    pub fn is_end_stream(&self) -> bool {
        self.flags & FLAG_END_STREAM != 0
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("envelope of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("compressed envelopes are not supported")]
    Compressed,
    #[error("stream ended inside an envelope ({buffered} bytes buffered)")]
    Truncated { buffered: usize },
}

/// Incremental envelope decoder: feed it body chunks as they arrive and take
/// complete envelopes out. Never buffers more than one envelope's worth.
#[derive(Debug, Default)]
pub struct EnvelopeDecoder {
    buf: BytesMut,
    max: usize,
}

impl EnvelopeDecoder {
    pub fn new() -> Self {
        Self { buf: BytesMut::new(), max: MAX_ENVELOPE }
    }

    pub fn with_limit(max: usize) -> Self {
        Self { buf: BytesMut::new(), max }
    }

    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// Returns the next complete envelope, `Ok(None)` if more bytes are needed.
    pub fn next_envelope(&mut self) -> Result<Option<Envelope>, FrameError> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        let flags = self.buf[0];
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        let max = if self.max == 0 { MAX_ENVELOPE } else { self.max };
        if len > max {
            return Err(FrameError::TooLarge { len, max });
        }
        if flags & FLAG_COMPRESSED != 0 {
            return Err(FrameError::Compressed);
        }
        if self.buf.len() < 5 + len {
            self.buf.reserve(5 + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(5);
        let payload = self.buf.split_to(len).freeze();
        Ok(Some(Envelope { flags, payload }))
    }

    /// Call at end of body: errors if a partial envelope is left over.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Truncated { buffered: self.buf.len() })
        }
    }
}

/// Why reading a server stream stopped short.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("bad framing")]
    Frame(#[from] FrameError),
    #[error("reading the stream")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("undecodable message: {payload}")]
    Decode {
        payload: String,
        #[source]
        source: serde_json::Error,
    },
    /// The end-of-stream envelope carried an error.
    #[error("{}: {}", .0.code.as_str(), .0.message)]
    Remote(ConnectError),
    #[error("the stream ended without an end-of-stream message")]
    Unterminated,
}

/// The messages of one server-streaming Connect response, over any HTTP
/// body: typed messages until the end-of-stream envelope (`None`), its
/// error as the last item, or why the stream broke. The one decoder the
/// SDK, the server's agent client and the tests share.
pub struct MessageReader<B> {
    body: B,
    dec: EnvelopeDecoder,
    done: bool,
    /// The end-of-stream envelope, once read.
    pub end: Option<EndStream>,
}

impl<B> MessageReader<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    pub fn new(body: B) -> Self {
        Self { body, dec: EnvelopeDecoder::new(), done: false, end: None }
    }

    pub fn poll_message<T: serde::de::DeserializeOwned>(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Result<T, StreamError>>> {
        use std::task::Poll;
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            match self.dec.next_envelope() {
                Err(e) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
                Ok(Some(env)) if env.is_end_stream() => {
                    self.done = true;
                    let end: EndStream = serde_json::from_slice(&env.payload).unwrap_or_default();
                    let err = end.error.clone();
                    self.end = Some(end);
                    return Poll::Ready(err.map(|e| Err(StreamError::Remote(e))));
                }
                Ok(Some(env)) => {
                    let msg = serde_json::from_slice(&env.payload).map_err(|source| StreamError::Decode { payload: String::from_utf8_lossy(&env.payload).into_owned(), source });
                    return Poll::Ready(Some(msg));
                }
                Ok(None) => {}
            }
            match std::pin::Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        self.dec.push(&data);
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(StreamError::Body(e.into()))));
                }
                Poll::Ready(None) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(StreamError::Unterminated)));
                }
            }
        }
    }

    /// The next message, `None` after a clean end of stream.
    pub async fn next_message<T: serde::de::DeserializeOwned>(&mut self) -> Option<Result<T, StreamError>> {
        std::future::poll_fn(|cx| self.poll_message(cx)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_envelopes_split_across_chunks() {
        let a = json_envelope(&serde_json::json!({"a": 1}));
        let b = end_stream(None);
        let all: Vec<u8> = a.iter().chain(b.iter()).copied().collect();
        let mut d = EnvelopeDecoder::new();
        let mut got = Vec::new();
        for byte in all {
            d.push(&[byte]);
            while let Some(e) = d.next_envelope().expect("valid") {
                got.push(e);
            }
        }
        assert_eq!(got.len(), 2);
        assert_eq!(&got[0].payload[..], br#"{"a":1}"#);
        assert!(got[1].is_end_stream());
        assert_eq!(&got[1].payload[..], b"{}");
        d.finish().expect("nothing left");
    }

    #[test]
    fn rejects_hostile_length_prefix() {
        let mut d = EnvelopeDecoder::new();
        d.push(&[0, 0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(d.next_envelope(), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn truncated_stream_is_reported() {
        let mut d = EnvelopeDecoder::new();
        d.push(&[0, 0, 0, 0, 9, b'{']);
        assert_eq!(d.next_envelope(), Ok(None));
        assert!(d.finish().is_err());
    }

    #[test]
    fn error_end_stream_shape() {
        let e = ConnectError::not_found("process with pid 7 not found");
        let env = end_stream(Some(&e));
        assert_eq!(env[0], FLAG_END_STREAM);
        let v: serde_json::Value = serde_json::from_slice(&env[5..]).expect("json");
        assert_eq!(v["error"]["code"], "not_found");
        assert_eq!(Code::NotFound.http_status(), 404);
    }

    /// A body that hands out fixed chunks, for the reader's tests.
    struct Chunks(std::collections::VecDeque<Bytes>);

    impl http_body::Body for Chunks {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(mut self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            std::task::Poll::Ready(self.0.pop_front().map(|b| Ok(http_body::Frame::data(b))))
        }
    }

    fn split(parts: &[Bytes], at: usize) -> Chunks {
        let all: Vec<u8> = parts.iter().flat_map(|b| b.to_vec()).collect();
        // Cut the whole stream into `at`-byte pieces, across envelope boundaries.
        Chunks(all.chunks(at).map(Bytes::copy_from_slice).collect())
    }

    #[tokio::test]
    async fn the_reader_reassembles_messages_and_reports_how_streams_end() {
        let msgs = [envelope(0, br#"{"n":1}"#), envelope(0, br#"{"n":2}"#)];
        for at in [1, 3, 7, 1000] {
            let mut parts = msgs.to_vec();
            parts.push(envelope(FLAG_END_STREAM, b"{}"));
            let mut r = MessageReader::new(split(&parts, at));
            let a: serde_json::Value = r.next_message().await.expect("one").expect("ok");
            let b: serde_json::Value = r.next_message().await.expect("two").expect("ok");
            assert_eq!((a["n"].as_i64(), b["n"].as_i64()), (Some(1), Some(2)));
            assert!(r.next_message::<serde_json::Value>().await.is_none(), "a clean end");
            assert!(r.end.as_ref().is_some_and(|e| e.error.is_none()));
        }
        let mut parts = msgs.to_vec();
        parts.push(envelope(FLAG_END_STREAM, br#"{"error":{"code":"not_found","message":"gone"}}"#));
        let mut r = MessageReader::new(split(&parts, 5));
        r.next_message::<serde_json::Value>().await;
        r.next_message::<serde_json::Value>().await;
        assert!(matches!(r.next_message::<serde_json::Value>().await, Some(Err(StreamError::Remote(e))) if e.message == "gone"));
        let mut r = MessageReader::new(split(&msgs[..1], 4));
        r.next_message::<serde_json::Value>().await;
        assert!(matches!(r.next_message::<serde_json::Value>().await, Some(Err(StreamError::Unterminated))));
        let mut r = MessageReader::new(split(&[envelope(0, b"not json")], 4));
        assert!(matches!(r.next_message::<serde_json::Value>().await, Some(Err(StreamError::Decode { .. }))));
    }
}
