//! Sandbox traffic: requests that carry `E2b-Sandbox-Id` (or a
//! `{port}-{id}.{domain}` host, or a signed `/files` URL) are forwarded,
//! streaming in both directions, to the sandbox's agent over its unix
//! socket. Port 49983 is the agent's envd API itself; any other port is
//! reached through a `CONNECT` tunnel the agent opens to that port inside
//! the sandbox, with HTTP upgrades (WebSockets) carried through.

use std::sync::Arc;

use http::{header, HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

use crate::http::{self as h, Resp};
use crate::service::{ApiError, Service};

use airlock_proto::wire::{AGENT_PORT_HEADER as PORT_HEADER, MORU_SANDBOX_ID_HEADER, MORU_SANDBOX_PORT_HEADER, SANDBOX_ID_HEADER, SANDBOX_PORT_HEADER};
use std::sync::atomic::Ordering;

use crate::telemetry::TELEMETRY;

use airlock_proto::envd::TRAFFIC_TOKEN_HEADER;
pub use airlock_proto::wire::{CODE_INTERPRETER_PORT as INTERPRETER_PORT, ENVD_PORT};

/// Where sandbox traffic should go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub id: String,
    pub port: u16,
}

/// Routing exactly as E2B's edge: headers first, then the host name.
/// `None` when the request is not sandbox traffic; `Some(Err)` when it is
/// but names no valid port (an unparsable `E2b-Sandbox-Port` is refused
/// rather than sent to envd).
pub fn target(headers: &HeaderMap, domain: Option<&str>) -> Option<Result<Target, String>> {
    // E2B's headers, or Moru's (its SDK is E2B's with its own names).
    for (id_header, port_header, name) in [(SANDBOX_ID_HEADER, SANDBOX_PORT_HEADER, "E2b-Sandbox-Port"), (MORU_SANDBOX_ID_HEADER, MORU_SANDBOX_PORT_HEADER, "Moru-Sandbox-Port")] {
        let Some(id) = headers.get(id_header).and_then(|v| v.to_str().ok()) else { continue };
        let port = match headers.get(port_header) {
            None => ENVD_PORT,
            Some(v) => match v.to_str().ok().and_then(|p| p.trim().parse::<u16>().ok()).filter(|p| *p != 0) {
                Some(p) => p,
                None => return Some(Err(format!("invalid {name} {:?}: a port number 1-65535", String::from_utf8_lossy(v.as_bytes())))),
            },
        };
        return Some(Ok(Target { id: id.trim().to_string(), port }));
    }
    let domain = domain?;
    let host = headers.get(header::HOST)?.to_str().ok()?;
    let host = host.split(':').next()?;
    let sub = host.strip_suffix(domain)?.strip_suffix('.')?;
    let (port, rest) = sub.split_once('-')?;
    let id = rest.split('.').next()?;
    Some(Ok(Target { id: id.to_string(), port: port.parse().ok().filter(|p| *p != 0)? }))
}

const HOP_BY_HOP: &[&str] = &["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "proxy-authorization", "proxy-authenticate"];

fn strip_hop_headers(h: &mut HeaderMap, keep_upgrade: bool) {
    for n in HOP_BY_HOP {
        h.remove(*n);
    }
    if !keep_upgrade {
        h.remove(header::UPGRADE);
    }
    for n in [SANDBOX_ID_HEADER, SANDBOX_PORT_HEADER, MORU_SANDBOX_ID_HEADER, MORU_SANDBOX_PORT_HEADER] {
        h.remove(n);
    }
}

pub async fn forward(svc: &Arc<Service>, mut req: Request<Incoming>, t: Target) -> Resp {
    // The claim route changes the token and environment the server
    // recorded, the environment route too, and the log route is the
    // server's to merge and filter: only the server itself may call them.
    if t.port == ENVD_PORT && (req.uri().path() == airlock_proto::wire::AGENT_INIT_PATH || req.uri().path().starts_with(airlock_proto::wire::AGENT_PRIVATE_PREFIX)) {
        return h::error(404, format!("no route for {} {}", req.method(), req.uri().path()));
    }
    let (info, row) = match svc.route_waking(&t.id).await {
        Ok(i) => i,
        Err(ApiError::Conflict(m)) => return h::sandbox_not_found(&t.id, Some(format!("The sandbox was not found: {m}"))),
        Err(ApiError::NotFound(_)) => return h::sandbox_not_found(&t.id, None),
        Err(e) => {
            tracing::error!(sandbox_id = %t.id, error = %e, "routing failed");
            return h::error(502, "sandbox unreachable");
        }
    };
    let stream = match UnixStream::connect(&info.socket).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(sandbox_id = %t.id, error = %e, "agent socket unreachable");
            return h::sandbox_not_found(&t.id, None);
        }
    };
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
        Ok(x) => x,
        Err(e) => return h::error(502, format!("agent handshake failed: {e}")),
    };
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "agent connection ended");
        }
    });

    let is_port = t.port != ENVD_PORT && t.port != INTERPRETER_PORT;
    // A sandbox made with `allow_public_traffic: false`: its ports answer
    // only requests carrying its traffic access token.
    if is_port && !row.public_traffic {
        let want = row.access_token.as_deref().map(airlock_proto::envd::traffic_token);
        let got = req.headers().get(TRAFFIC_TOKEN_HEADER).and_then(|v| v.to_str().ok());
        let ok = match (&want, got) {
            (Some(w), Some(g)) => airlock_proto::envd::constant_time_eq(w.as_bytes(), g.as_bytes()),
            _ => false,
        };
        if !ok {
            return h::error(403, format!("sandbox {}: this port needs the sandbox's traffic access token in {TRAFFIC_TOKEN_HEADER} (allow_public_traffic is false)", t.id));
        }
    }
    if is_port {
        // The token is the proxy's business, not the service's inside.
        req.headers_mut().remove(TRAFFIC_TOKEN_HEADER);
    }
    if is_port && !row.mask_host.is_empty() {
        if let Ok(v) = http::HeaderValue::from_str(&row.mask_host.replace("${PORT}", &t.port.to_string())) {
            req.headers_mut().insert(header::HOST, v);
        }
    }
    let wants_upgrade = req.headers().contains_key(header::UPGRADE);
    if t.port != ENVD_PORT && t.port != INTERPRETER_PORT {
        // Ask the agent for a tunnel to the port, then speak HTTP through it.
        let connect = match Request::builder().method("CONNECT").uri(format!("127.0.0.1:{}", t.port)).body(h::full(bytes::Bytes::new())) {
            Ok(r) => r,
            Err(e) => return h::error(500, format!("building tunnel request: {e}")),
        };
        let resp = match sender.send_request(connect).await {
            Ok(r) => r,
            Err(e) => return h::error(502, format!("agent tunnel failed: {e}")),
        };
        if resp.status() != StatusCode::OK {
            // The agent's "port is not open" error, passed through as is.
            let (parts, body) = resp.into_parts();
            return Resp::from_parts(parts, body.map_err(Into::into).boxed_unsync());
        }
        let upgraded = match hyper::upgrade::on(resp).await {
            Ok(u) => u,
            Err(e) => return h::error(502, format!("agent tunnel failed: {e}")),
        };
        let (s2, conn2) = match hyper::client::conn::http1::handshake(upgraded).await {
            Ok(x) => x,
            Err(e) => return h::error(502, format!("tunnel handshake failed: {e}")),
        };
        tokio::spawn(async move {
            let _ = conn2.with_upgrades().await;
        });
        sender = s2;
    }

    let server_upgrade = if wants_upgrade { Some(hyper::upgrade::on(&mut req)) } else { None };
    let (mut parts, body) = req.into_parts();
    let upgrade_header = parts.headers.get(header::UPGRADE).cloned();
    let connection_header = parts.headers.get(header::CONNECTION).cloned();
    strip_hop_headers(&mut parts.headers, false);
    // Only the proxy decides which agent service a request is for.
    parts.headers.remove(PORT_HEADER);
    if t.port == INTERPRETER_PORT {
        parts.headers.insert(PORT_HEADER, http::HeaderValue::from_static("49999"));
    }
    if wants_upgrade {
        if let (Some(u), Some(c)) = (upgrade_header, connection_header) {
            parts.headers.insert(header::UPGRADE, u);
            parts.headers.insert(header::CONNECTION, c);
        }
    }
    // Origin-form URI for the agent; the host header stays as sent.
    let pq = parts.uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
    parts.uri = match pq.parse() {
        Ok(u) => u,
        Err(_) => return h::error(400, "invalid request path"),
    };
    // The agent speaks HTTP/1.1, whatever the client spoke to us.
    parts.version = http::Version::HTTP_11;
    let out = Request::from_parts(parts, body.map_frame(|f| count(&TELEMETRY.proxy_bytes_in, f)).map_err(Into::into).boxed_unsync());
    let mut resp = match sender.send_request(out).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(sandbox_id = %t.id, error = %e, "forwarding failed");
            return h::error(502, format!("sandbox connection failed: {e}"));
        }
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(server_upgrade) = server_upgrade {
            let client_upgrade = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                if let (Ok(a), Ok(b)) = (server_upgrade.await, client_upgrade.await) {
                    if let Ok((into, out)) = tokio::io::copy_bidirectional(&mut TokioIo::new(a), &mut TokioIo::new(b)).await {
                        TELEMETRY.proxy_bytes_in.fetch_add(into, Ordering::Relaxed);
                        TELEMETRY.proxy_bytes_out.fetch_add(out, Ordering::Relaxed);
                    }
                }
            });
        }
        let (parts, _) = resp.into_parts();
        return Resp::from_parts(parts, h::full(bytes::Bytes::new()));
    }
    let (mut parts, body) = resp.into_parts();
    strip_hop_headers(&mut parts.headers, false);
    let connect_stream =
        parts.status == StatusCode::OK && parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|c| c.starts_with("application/connect+"));
    let body = body.map_frame(|f| count(&TELEMETRY.proxy_bytes_out, f)).map_err(Into::into);
    if connect_stream {
        return Resp::from_parts(parts, EndOnCut { inner: body.boxed_unsync(), frames: Framing::default(), done: false }.boxed_unsync());
    }
    Resp::from_parts(parts, body.boxed_unsync())
}

/// A Connect stream whose agent connection broke (the sandbox was killed,
/// or died) ends with a Connect error, `unavailable`, instead of a cut
/// connection: the SDKs then report that the sandbox was killed or
/// reached its end of life (after checking it is gone) rather than a read
/// error or a timeout. Only at an envelope boundary: a cut inside an
/// envelope cannot be followed by another, so it stays a cut.
struct EndOnCut {
    inner: http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, crate::http::BoxError>,
    frames: Framing,
    done: bool,
}

/// Where a Connect stream is in its envelopes (5-byte header: flags and a
/// big-endian length, then the payload).
#[derive(Default)]
struct Framing {
    header: Vec<u8>,
    left: usize,
}

impl Framing {
    fn feed(&mut self, mut b: &[u8]) {
        while !b.is_empty() {
            if self.left > 0 {
                let n = self.left.min(b.len());
                self.left -= n;
                b = &b[n..];
                continue;
            }
            let n = (5 - self.header.len()).min(b.len());
            self.header.extend_from_slice(&b[..n]);
            b = &b[n..];
            if self.header.len() == 5 {
                self.left = u32::from_be_bytes([self.header[1], self.header[2], self.header[3], self.header[4]]) as usize;
                self.header.clear();
            }
        }
    }

    fn at_boundary(&self) -> bool {
        self.left == 0 && self.header.is_empty()
    }
}

impl http_body::Body for EndOnCut {
    type Data = bytes::Bytes;
    type Error = crate::http::BoxError;

    fn poll_frame(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        use std::task::Poll;
        if self.done {
            return Poll::Ready(None);
        }
        match std::pin::Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    self.frames.feed(d);
                }
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(Some(Err(e))) if self.frames.at_boundary() => {
                tracing::debug!(error = %e, "a sandbox stream broke; ending it with a Connect error");
                self.done = true;
                let err = airlock_proto::connect::ConnectError::new(
                    airlock_proto::connect::Code::Unavailable,
                    "the sandbox was killed or reached its end of life: its connection ended before the stream completed",
                );
                Poll::Ready(Some(Ok(http_body::Frame::data(airlock_proto::connect::end_stream(Some(&err))))))
            }
            other => other,
        }
    }
}

/// Adds a data frame's size to a byte counter, passing the frame on.
fn count(c: &std::sync::atomic::AtomicU64, f: http_body::Frame<bytes::Bytes>) -> http_body::Frame<bytes::Bytes> {
    if let Some(d) = f.data_ref() {
        c.fetch_add(d.len() as u64, Ordering::Relaxed);
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderName;

    fn hm(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(HeaderName::from_bytes(k.as_bytes()).expect("name"), v.parse().expect("value"));
        }
        h
    }

    #[test]
    fn routes_by_header_then_host() {
        assert_eq!(target(&hm(&[("e2b-sandbox-id", "abc")]), None), Some(Ok(Target { id: "abc".into(), port: 49983 })));
        assert_eq!(target(&hm(&[("e2b-sandbox-id", "abc"), ("e2b-sandbox-port", "49999")]), None), Some(Ok(Target { id: "abc".into(), port: 49999 })));
        assert_eq!(target(&hm(&[("moru-sandbox-id", "abc"), ("moru-sandbox-port", "8080")]), None), Some(Ok(Target { id: "abc".into(), port: 8080 })));
        assert!(matches!(target(&hm(&[("moru-sandbox-id", "abc"), ("moru-sandbox-port", "x")]), None), Some(Err(m)) if m.contains("Moru-Sandbox-Port")));
        assert_eq!(target(&hm(&[("host", "8080-abc.sbx.example.com")]), Some("sbx.example.com")), Some(Ok(Target { id: "abc".into(), port: 8080 })));
        assert_eq!(target(&hm(&[("host", "8080-abc.sbx.example.com:443")]), Some("sbx.example.com")), Some(Ok(Target { id: "abc".into(), port: 8080 })));
        // Regression: an unparsable port went to envd instead of being refused.
        for bad in ["envd", "70000", "0", "-1", ""] {
            assert!(matches!(target(&hm(&[("e2b-sandbox-id", "abc"), ("e2b-sandbox-port", bad)]), None), Some(Err(_))), "{bad:?}");
        }
        assert_eq!(target(&hm(&[("host", "api.example.org")]), Some("sbx.example.com")), None);
        assert_eq!(target(&hm(&[("host", "127.0.0.1:3000")]), None), None);
    }
}
