//! HTTP plumbing shared by the agent's handlers: the response body type,
//! Connect unary/stream responses, plain JSON errors and bounded body reads.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use airlock_proto::connect::{self, ConnectError};
use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body::{Body as HttpBody, Frame};
use http_body_util::{BodyExt, Full};
use serde::Serialize;
use tokio::sync::mpsc;

/// Every response the agent writes has this body type.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;
pub type Resp = Response<Body>;

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|e: Infallible| match e {}).boxed_unsync()
}

pub fn empty() -> Body {
    full(Bytes::new())
}

/// A body fed by a channel: each `Bytes` is one chunk. The stream ends when
/// every sender is dropped, and dropping the body (client went away) closes
/// the channel so producers notice with a send error.
pub struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl HttpBody for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

pub fn channel_body(rx: mpsc::Receiver<Bytes>) -> Body {
    ChannelBody { rx }.boxed_unsync()
}

fn with_type(status: StatusCode, ctype: &'static str, body: Body) -> Resp {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}

/// A successful unary Connect response.
pub fn unary_ok<T: Serialize>(msg: &T) -> Resp {
    match serde_json::to_vec(msg) {
        Ok(v) => with_type(StatusCode::OK, connect::CONTENT_TYPE_JSON, full(v)),
        Err(e) => unary_err(&ConnectError::internal(format!("encoding response: {e}"))),
    }
}

/// A failed unary Connect call: status from the code, JSON error body.
pub fn unary_err(e: &ConnectError) -> Resp {
    let status = StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    with_type(status, connect::CONTENT_TYPE_JSON, full(e.to_json()))
}

pub fn unary<T: Serialize>(r: Result<T, ConnectError>) -> Resp {
    match r {
        Ok(m) => unary_ok(&m),
        Err(e) => unary_err(&e),
    }
}

/// A streaming Connect response whose envelopes come from `rx`. The
/// producer is responsible for sending the end-of-stream envelope last.
pub fn stream(rx: mpsc::Receiver<Bytes>) -> Resp {
    with_type(StatusCode::OK, connect::CONTENT_TYPE_STREAM_JSON, channel_body(rx))
}

/// A stream that fails before its first message: HTTP 200 with only an
/// error end-of-stream envelope, which both SDKs understand.
pub fn stream_err(e: &ConnectError) -> Resp {
    with_type(StatusCode::OK, connect::CONTENT_TYPE_STREAM_JSON, full(connect::end_stream(Some(e))))
}

/// A plain JSON error in envd's `/files` shape: `{"code": <status>, "message": ...}`.
pub fn json_err(status: StatusCode, message: impl Into<String>) -> Resp {
    let body = airlock_proto::envd::HttpError { code: status.as_u16(), message: message.into() };
    let v = serde_json::to_vec(&body).unwrap_or_default();
    with_type(status, "application/json", full(v))
}

pub fn json_ok<T: Serialize>(status: StatusCode, v: &T) -> Resp {
    match serde_json::to_vec(v) {
        Ok(b) => with_type(status, "application/json", full(b)),
        Err(e) => json_err(StatusCode::INTERNAL_SERVER_ERROR, format!("encoding response: {e}")),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body exceeds {limit} bytes")]
    TooLarge { limit: usize },
    #[error("reading request body")]
    Read(#[source] hyper::Error),
}

/// Reads a whole request body, refusing more than `limit` bytes. Used only
/// for small JSON messages; file uploads stream instead.
pub async fn read_limited(mut body: hyper::body::Incoming, limit: usize) -> Result<Bytes, BodyError> {
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(BodyError::Read)?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(BodyError::TooLarge { limit });
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// Reads and drops what is left of a small request body before the
/// request is refused. Answering before reading lets hyper close the
/// connection while the client (the server's proxy) is still writing the
/// body, and the client then sees a write error instead of the answer.
/// Bounded: past 64 KiB, or two seconds, the connection is let go.
pub(crate) async fn drain(req: hyper::Request<hyper::body::Incoming>) {
    use http_body_util::BodyExt;
    let mut body = req.into_body();
    let mut left: usize = 64 * 1024;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        while let Some(Ok(frame)) = body.frame().await {
            match frame.data_ref() {
                Some(d) if d.len() < left => left -= d.len(),
                Some(_) => return,
                None => {}
            }
        }
    })
    .await;
}
