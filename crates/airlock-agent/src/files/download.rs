//! `GET /files`: a file streamed to the client from one blocking-pool
//! task through a small channel, gzipped when `Accept-Encoding` asks for
//! it, with an exact `Content-Length` when the size is known.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use flate2::write::GzEncoder;
use flate2::Compression;
use http::{header, HeaderValue, Request, Response};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::mpsc;

use super::auth::{authorize, unix_now, Op};
use super::query::parse_query;
use super::{resolve, user_for, FilesError, CHUNK};
use crate::fs::{entry, FsError};
use crate::http::Resp;
use crate::Agent;

async fn run_blocking<T, F>(f: F) -> Result<T, FilesError>
where
    F: FnOnce() -> Result<T, FilesError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f).await.map_err(FilesError::Task)?
}

pub(crate) async fn download(agent: &Arc<Agent>, req: Request<Incoming>) -> Resp {
    match download_inner(agent, req).await {
        Ok(r) => r,
        Err(e) => e.response(),
    }
}

async fn download_inner(agent: &Agent, req: Request<Incoming>) -> Result<Resp, FilesError> {
    let q = parse_query(req.uri().query().unwrap_or(""));
    authorize(agent.session().access_token.as_deref(), req.headers(), &q, Op::Read, unix_now())?;
    let user = user_for(agent, &q)?;
    let path = resolve(agent, &user, q.path.as_deref().unwrap_or(""));

    let p = path.clone();
    let opened = run_blocking(move || open_for_download(&p)).await?;
    let accept = req.headers().get(header::ACCEPT_ENCODING).and_then(|v| v.to_str().ok());
    let gzip = negotiate(accept)?;

    // The length is exact when the whole file fit in the first read, and
    // taken from the inode for bigger regular files; pseudo files (procfs
    // reports size 0, sysfs 4096) that did not fit are streamed to EOF.
    let total = if opened.eof { Some(opened.head.len() as u64) } else { (opened.size > opened.head.len() as u64).then_some(opened.size) };
    let length = if gzip { None } else { total };
    let (tx, rx) = mpsc::channel(4);
    let p = path.clone();
    tokio::task::spawn_blocking(move || pump(opened, total, gzip, &tx, &p));

    let mut resp = Response::new(FileBody { rx, length }.boxed_unsync());
    let hs = resp.headers_mut();
    hs.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    hs.insert(header::CONTENT_DISPOSITION, content_disposition(&entry::display_name(&path)));
    hs.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    if gzip {
        hs.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    if let Some(n) = length {
        hs.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    Ok(resp)
}

/// A file opened for download, with its first chunk already read so that
/// read errors still become a proper error response and small files get an
/// exact length.
struct Opened {
    file: File,
    head: Vec<u8>,
    /// The whole file is in `head`.
    eof: bool,
    /// Size according to the inode.
    size: u64,
}

fn open_for_download(path: &Path) -> Result<Opened, FilesError> {
    // Non-blocking, so that opening a FIFO returns at once; the type is then
    // checked on what was opened, not on a path that may change meanwhile.
    let mut file = crate::safe_open::open(path, libc::O_RDONLY | libc::O_NONBLOCK, 0).map_err(|e| FilesError::from(FsError::io("opening", path, e)))?;
    let meta = file.metadata().map_err(|e| FilesError::from(FsError::io("reading file info of", path, e)))?;
    if meta.is_dir() {
        return Err(FilesError::IsDirectory(path.to_path_buf()));
    }
    if !meta.is_file() {
        return Err(FilesError::BadRequest(format!("path '{}' is not a regular file", path.display())));
    }
    // SAFETY: fcntl on a descriptor we own; back to blocking reads.
    unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&file), libc::F_SETFL, 0) };
    let mut head = vec![0u8; CHUNK];
    let mut filled = 0;
    let mut eof = false;
    while filled < CHUNK {
        match file.read(&mut head[filled..]) {
            Ok(0) => {
                eof = true;
                break;
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FilesError::Io { op: "reading", path: path.to_path_buf(), source: e }),
        }
    }
    head.truncate(filled);
    Ok(Opened { file, head, eof, size: meta.len() })
}

/// Streams a file into the response channel, gzipping on the way when
/// asked, stopping at `total` bytes when the length was announced. Stops
/// quietly when the client goes away; a read error is passed on so the
/// response is cut off rather than ending as if complete.
fn pump(opened: Opened, total: Option<u64>, gzip: bool, tx: &mpsc::Sender<io::Result<Bytes>>, path: &Path) {
    let Opened { file, head, eof, .. } = opened;
    let mut sent = head.len() as u64;
    let mut reader: Box<dyn Read> = match total {
        _ if eof => Box::new(io::empty()),
        Some(n) => Box::new(file.take(n.saturating_sub(sent))),
        None => Box::new(file),
    };
    // The fastest level: the agent shares the sandbox's CPU, and the link to
    // the host is a local socket, so compression effort buys little.
    let mut gz = gzip.then(|| GzEncoder::new(Vec::with_capacity(CHUNK), Compression::fast()));
    let result = (|| -> io::Result<bool> {
        let mut next = Some(head);
        loop {
            let buf = match next.take() {
                Some(b) => b,
                None => {
                    let mut buf = vec![0u8; CHUNK];
                    let n = match reader.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(e),
                    };
                    buf.truncate(n);
                    sent += n as u64;
                    buf
                }
            };
            let out = match gz.as_mut() {
                None if buf.is_empty() => continue,
                None => Bytes::from(buf),
                Some(g) => {
                    g.write_all(&buf)?;
                    // Send compressed output once a chunk's worth has built up.
                    if g.get_ref().len() < CHUNK {
                        continue;
                    }
                    Bytes::from(std::mem::take(g.get_mut()))
                }
            };
            if tx.blocking_send(Ok(out)).is_err() {
                return Ok(false);
            }
        }
        if total.is_some_and(|n| sent < n) {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank while being read"));
        }
        if let Some(g) = gz.take() {
            let rest = g.finish()?;
            if !rest.is_empty() && tx.blocking_send(Ok(Bytes::from(rest))).is_err() {
                return Ok(false);
            }
        }
        Ok(true)
    })();
    match result {
        Ok(true) => {}
        Ok(false) => tracing::debug!(path = %path.display(), "download client went away"),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "download failed mid-stream");
            let _ = tx.blocking_send(Err(e));
        }
    }
}

/// The download response body: chunks from `pump`, with an exact size when
/// the length is known so hyper frames it with `Content-Length`.
struct FileBody {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    length: Option<u64>,
}

impl http_body::Body for FileBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.rx.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data)))
    }

    fn size_hint(&self) -> SizeHint {
        match self.length {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

/// `inline; filename="…"`, with an RFC 5987 `filename*` for names that are
/// not plain printable ASCII.
fn content_disposition(name: &str) -> HeaderValue {
    let plain = name.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\');
    let fallback: String = name.chars().map(|c| if c.is_ascii() && !c.is_ascii_control() && c != '"' && c != '\\' { c } else { '_' }).collect();
    let mut v = format!("inline; filename=\"{fallback}\"");
    if !plain {
        v.push_str("; filename*=UTF-8''");
        for b in name.bytes() {
            if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
                v.push(b as char);
            } else {
                v.push_str(&format!("%{b:02X}"));
            }
        }
    }
    HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static("inline"))
}

/// Picks the response coding from `Accept-Encoding`: gzip when the client
/// names it at least as high as identity, identity otherwise. A header that
/// names none of `gzip`, `identity` or `*` (only codings the agent cannot
/// produce) gets 406, as does one that refuses everything we have.
fn negotiate(accept: Option<&str>) -> Result<bool, FilesError> {
    let Some(accept) = accept.map(str::trim).filter(|a| !a.is_empty()) else {
        return Ok(false);
    };
    let (mut gzip, mut identity, mut star) = (None::<f32>, None::<f32>, None::<f32>);
    for item in accept.split(',') {
        let mut parts = item.split(';');
        let name = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts.filter_map(|p| p.trim().strip_prefix("q=").or_else(|| p.trim().strip_prefix("Q="))).find_map(|v| v.trim().parse::<f32>().ok()).unwrap_or(1.0);
        let slot = match name.as_str() {
            "gzip" | "x-gzip" => &mut gzip,
            "identity" => &mut identity,
            "*" => &mut star,
            _ => continue,
        };
        *slot = Some(slot.map_or(q, |old: f32| old.max(q)));
    }
    if gzip.is_none() && identity.is_none() && star.is_none() {
        return Err(FilesError::NotAcceptable);
    }
    // Identity is acceptable unless refused outright or by `*;q=0`.
    let identity_q = identity.unwrap_or(if star == Some(0.0) { 0.0 } else { 1.0 });
    let gzip_q = gzip.unwrap_or(0.0);
    // Naming gzip is a request for it unless identity is explicitly preferred.
    if gzip_q > 0.0 && gzip_q >= identity.unwrap_or(0.0) {
        return Ok(true);
    }
    if identity_q > 0.0 {
        return Ok(false);
    }
    if gzip.is_none() && star.is_some_and(|q| q > 0.0) {
        return Ok(true);
    }
    Err(FilesError::NotAcceptable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_encoding_negotiation() {
        assert!(!negotiate(None).expect("none"));
        assert!(!negotiate(Some("")).expect("empty"));
        assert!(negotiate(Some("gzip")).expect("gzip"));
        assert!(negotiate(Some("gzip, deflate, br")).expect("httpx default"));
        assert!(!negotiate(Some("identity")).expect("identity"));
        assert!(!negotiate(Some("gzip;q=0.5, identity")).expect("identity preferred"));
        assert!(!negotiate(Some("*")).expect("star"));
        assert!(!negotiate(Some("gzip;q=0")).expect("gzip refused"));
        assert!(negotiate(Some("identity;q=0, *")).expect("identity refused"));
        assert!(matches!(negotiate(Some("br")), Err(FilesError::NotAcceptable)));
        assert!(matches!(negotiate(Some("br, zstd")), Err(FilesError::NotAcceptable)));
        assert!(matches!(negotiate(Some("identity;q=0")), Err(FilesError::NotAcceptable)));
        assert!(matches!(negotiate(Some("*;q=0")), Err(FilesError::NotAcceptable)));
    }

    #[test]
    fn content_disposition_is_safe() {
        assert_eq!(content_disposition("a.txt"), "inline; filename=\"a.txt\"");
        assert_eq!(content_disposition("q\"uote"), "inline; filename=\"q_uote\"; filename*=UTF-8''q%22uote");
        assert_eq!(content_disposition("é.txt"), "inline; filename=\"_.txt\"; filename*=UTF-8''%C3%A9.txt");
    }
}
