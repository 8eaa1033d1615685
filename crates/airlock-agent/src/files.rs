//! envd's plain-HTTP `/files`: streamed download and upload (multipart and
//! octet-stream, gzip either way), with signed URLs as an alternative to the
//! access token.
//!
//! Nothing here holds a whole file in memory. Downloads are read, and
//! gzipped if the client asks, on one blocking-pool task that feeds the
//! response body through a small channel, so a slow client slows the reader
//! down. Uploads go the other way: the request body (or each multipart part)
//! is pulled chunk by chunk and handed to a blocking writer through a small
//! channel. A file this request created is removed again if the upload
//! fails half-way.
//!
//! Like envd, the agent writes as root on the user's behalf and hands new
//! files and directories to the user; it does not drop privileges per
//! request, so paths are not protected against a user's symlink tricks.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use airlock_proto::envd::WrittenFile;
use bytes::Bytes;
use flate2::write::{GzEncoder, MultiGzDecoder};
use flate2::Compression;
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::mpsc;

use crate::auth::{self, constant_time_eq};
use crate::fs::{self as fsops, entry, xattr, FsError};
use crate::http::{self as h, Resp};
use crate::users::{self, User, UserError};
use crate::{paths, Agent};

/// Read and write granularity of file data.
const CHUNK: usize = 64 * 1024;
/// Compressed input fed to the gzip decoder per step; at deflate's maximum
/// ratio (~1032:1) one step expands to at most ~8 MiB.
const GUNZIP_STEP: usize = 8 * 1024;
/// Upper bound on the total size of the `X-Metadata-*` pairs of one upload.
const MAX_METADATA_BYTES: usize = 4096;

/// Why a `/files` request failed; `status` gives the HTTP status envd
/// answers with, and the body is envd's `{"code", "message"}`.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    User(#[from] UserError),
    #[error("path '{}' does not exist", .0.display())]
    NotFound(PathBuf),
    #[error("path '{}' is a directory", .0.display())]
    IsDirectory(PathBuf),
    #[error("no acceptable encoding found, supported: gzip, identity")]
    NotAcceptable,
    #[error("not enough disk space")]
    NoSpace(#[source] io::Error),
    #[error("the filesystem of '{}' cannot store file metadata", .0.display())]
    MetadataUnsupported(PathBuf),
    #[error("error {op} '{}'", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("error reading request body: {0}")]
    Body(String),
    #[error("upload aborted")]
    Aborted,
    #[error("file task failed")]
    Task(#[source] tokio::task::JoinError),
}

impl FilesError {
    fn status(&self) -> StatusCode {
        match self {
            FilesError::BadRequest(_)
            | FilesError::IsDirectory(_)
            | FilesError::Body(_)
            | FilesError::Aborted => StatusCode::BAD_REQUEST,
            FilesError::Auth(_) | FilesError::User(UserError::Unknown(_)) => {
                StatusCode::UNAUTHORIZED
            }
            FilesError::NotFound(_) => StatusCode::NOT_FOUND,
            FilesError::NotAcceptable => StatusCode::NOT_ACCEPTABLE,
            FilesError::NoSpace(_) => StatusCode::INSUFFICIENT_STORAGE,
            FilesError::MetadataUnsupported(_)
            | FilesError::User(_)
            | FilesError::Io { .. }
            | FilesError::Task(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn response(&self) -> Resp {
        let status = self.status();
        let message = match self {
            // The OS error says what went wrong with the user's own file
            // (read-only filesystem, permissions); it reveals nothing of the host.
            FilesError::Io { source, .. } => format!("{self}: {source}"),
            _ => self.to_string(),
        };
        if status.is_server_error() {
            tracing::error!(error = %self, source = ?std::error::Error::source(self), "/files request failed");
        } else {
            tracing::debug!(error = %self, "/files request refused");
        }
        h::json_err(status, message)
    }

    /// An I/O error while writing, with running out of space singled out
    /// (the SDKs turn 507 into `NotEnoughSpaceException`).
    fn write_io(op: &'static str, path: &Path, source: io::Error) -> Self {
        match source.raw_os_error() {
            Some(libc::ENOSPC | libc::EDQUOT) => FilesError::NoSpace(source),
            Some(libc::EISDIR) => FilesError::IsDirectory(path.to_path_buf()),
            _ => FilesError::Io {
                op,
                path: path.to_path_buf(),
                source,
            },
        }
    }
}

impl From<FsError> for FilesError {
    fn from(e: FsError) -> Self {
        match e {
            FsError::NotFound(p) => FilesError::NotFound(p),
            FsError::NotADirectory(p) => {
                FilesError::BadRequest(format!("path '{}' is not a directory", p.display()))
            }
            FsError::Io { op, path, source } => FilesError::write_io(op, &path, source),
            FsError::Task(e) => FilesError::Task(e),
            other => FilesError::BadRequest(other.to_string()),
        }
    }
}

// ------------------------------------------------------------------ auth

/// Why a `/files` request was refused; the texts are envd's, and an SDK
/// test compares the 401 body exactly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("access token present in header but does not match")]
    TokenMismatch,
    #[error("missing signature query parameter")]
    MissingSignature,
    #[error("invalid signature")]
    InvalidSignature,
    #[error("signature is already expired")]
    Expired,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
        }
    }
}

/// envd's URL signature: `v1_` + unpadded base64 of
/// SHA-256(`path:op:username:token[:expiration]`), over the raw query values.
pub fn signature(
    path: &str,
    op: Op,
    username: &str,
    token: &str,
    expiration: Option<i64>,
) -> String {
    airlock_proto::envd::file_signature(path, op.as_str(), username, token, expiration)
}

/// The access token in `X-Access-Token`, or else a valid unexpired
/// signature, as envd checks them. With no token configured, anything goes.
fn authorize(
    token: Option<&str>,
    headers: &HeaderMap,
    q: &Query,
    op: Op,
    now: i64,
) -> Result<(), FilesError> {
    let Some(token) = token else { return Ok(()) };
    // A token that is sent decides alone; an empty header counts as none
    // sent, so a signature can still authorise the request (envd's rule).
    let sent = headers.get(airlock_proto::envd::ACCESS_TOKEN_HEADER);
    if sent.is_some_and(|v| !v.is_empty()) {
        return if auth::access_token_ok(Some(token), headers) {
            Ok(())
        } else {
            Err(AuthError::TokenMismatch.into())
        };
    }
    let Some(sig) = q.signature.as_deref() else {
        return Err(AuthError::MissingSignature.into());
    };
    let expiration =
        match q.signature_expiration.as_deref() {
            None => None,
            Some(s) => Some(s.trim().parse::<i64>().map_err(|_| {
                FilesError::BadRequest(format!("invalid signature_expiration '{s}'"))
            })?),
        };
    let want = signature(
        q.path.as_deref().unwrap_or(""),
        op,
        q.username.as_deref().unwrap_or(""),
        token,
        expiration,
    );
    if !constant_time_eq(want.as_bytes(), sig.as_bytes()) {
        return Err(AuthError::InvalidSignature.into());
    }
    if expiration.is_some_and(|exp| exp < now) {
        return Err(AuthError::Expired.into());
    }
    Ok(())
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

// ----------------------------------------------------------------- query

/// The query parameters `/files` understands; the first occurrence wins,
/// as with Go's `Query().Get`.
#[derive(Debug, Default, PartialEq, Eq)]
struct Query {
    path: Option<String>,
    username: Option<String>,
    signature: Option<String>,
    signature_expiration: Option<String>,
}

fn parse_query(q: &str) -> Query {
    let mut out = Query::default();
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let slot = match percent_decode(k).as_str() {
            "path" => &mut out.path,
            "username" => &mut out.username,
            "signature" => &mut out.signature,
            "signature_expiration" => &mut out.signature_expiration,
            _ => continue,
        };
        if slot.is_none() {
            *slot = Some(percent_decode(v));
        }
    }
    out
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a
/// byte; malformed escapes are kept as they are.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn user_for(agent: &Agent, q: &Query) -> Result<User, FilesError> {
    let name = q
        .username
        .as_deref()
        .filter(|u| !u.is_empty())
        .unwrap_or(&agent.config.default_user);
    Ok(users::lookup(name)?)
}

fn resolve(agent: &Agent, user: &User, path: &str) -> PathBuf {
    paths::resolve(path, user, agent.config.default_workdir.as_deref())
}

async fn run_blocking<T, F>(f: F) -> Result<T, FilesError>
where
    F: FnOnce() -> Result<T, FilesError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(FilesError::Task)?
}

// -------------------------------------------------------------- download

pub async fn download(agent: &Arc<Agent>, req: Request<Incoming>) -> Resp {
    match download_inner(agent, req).await {
        Ok(r) => r,
        Err(e) => e.response(),
    }
}

async fn download_inner(agent: &Agent, req: Request<Incoming>) -> Result<Resp, FilesError> {
    let q = parse_query(req.uri().query().unwrap_or(""));
    authorize(
        agent.config.access_token.as_deref(),
        req.headers(),
        &q,
        Op::Read,
        unix_now(),
    )?;
    let user = user_for(agent, &q)?;
    let path = resolve(agent, &user, q.path.as_deref().unwrap_or(""));

    let p = path.clone();
    let opened = run_blocking(move || open_for_download(&p)).await?;
    let accept = req
        .headers()
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok());
    let gzip = negotiate(accept)?;

    // The length is exact when the whole file fit in the first read, and
    // taken from the inode for bigger regular files; pseudo files (procfs
    // reports size 0, sysfs 4096) that did not fit are streamed to EOF.
    let total = if opened.eof {
        Some(opened.head.len() as u64)
    } else {
        (opened.size > opened.head.len() as u64).then_some(opened.size)
    };
    let length = if gzip { None } else { total };
    let (tx, rx) = mpsc::channel(4);
    let p = path.clone();
    tokio::task::spawn_blocking(move || pump(opened, total, gzip, &tx, &p));

    let mut resp = Response::new(FileBody { rx, length }.boxed_unsync());
    let hs = resp.headers_mut();
    hs.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    hs.insert(
        header::CONTENT_DISPOSITION,
        content_disposition(&entry::display_name(&path)),
    );
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
    let mut file = crate::safe_open::open(path, libc::O_RDONLY | libc::O_NONBLOCK, 0)
        .map_err(|e| FilesError::from(FsError::io("opening", path, e)))?;
    let meta = file
        .metadata()
        .map_err(|e| FilesError::from(FsError::io("reading file info of", path, e)))?;
    if meta.is_dir() {
        return Err(FilesError::IsDirectory(path.to_path_buf()));
    }
    if !meta.is_file() {
        return Err(FilesError::BadRequest(format!(
            "path '{}' is not a regular file",
            path.display()
        )));
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
            Err(e) => {
                return Err(FilesError::Io {
                    op: "reading",
                    path: path.to_path_buf(),
                    source: e,
                })
            }
        }
    }
    head.truncate(filled);
    Ok(Opened {
        file,
        head,
        eof,
        size: meta.len(),
    })
}

/// Streams a file into the response channel, gzipping on the way when
/// asked, stopping at `total` bytes when the length was announced. Stops
/// quietly when the client goes away; a read error is passed on so the
/// response is cut off rather than ending as if complete.
fn pump(
    opened: Opened,
    total: Option<u64>,
    gzip: bool,
    tx: &mpsc::Sender<io::Result<Bytes>>,
    path: &Path,
) {
    let Opened {
        file, head, eof, ..
    } = opened;
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
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shrank while being read",
            ));
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

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
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
    let plain = name
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\');
    let fallback: String = name
        .chars()
        .map(|c| {
            if c.is_ascii() && !c.is_ascii_control() && c != '"' && c != '\\' {
                c
            } else {
                '_'
            }
        })
        .collect();
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
        let q = parts
            .filter_map(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .or_else(|| p.trim().strip_prefix("Q="))
            })
            .find_map(|v| v.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
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

// ---------------------------------------------------------------- upload

pub async fn upload(agent: &Arc<Agent>, req: Request<Incoming>) -> Resp {
    match upload_inner(agent, req).await {
        Ok(files) => h::json_ok(StatusCode::OK, &files),
        Err(e) => e.response(),
    }
}

async fn upload_inner(
    agent: &Agent,
    req: Request<Incoming>,
) -> Result<Vec<WrittenFile>, FilesError> {
    let (parts, body) = req.into_parts();
    let q = parse_query(parts.uri.query().unwrap_or(""));
    authorize(
        agent.config.access_token.as_deref(),
        &parts.headers,
        &q,
        Op::Write,
        unix_now(),
    )?;
    let user = user_for(agent, &q)?;
    // Validated before anything touches the disk: a rejected upload leaves
    // no file behind.
    let metadata = metadata_from_headers(&parts.headers)?;
    let gzip = content_encoding(&parts.headers)?;
    let mut source = BodySource {
        body: Some(body),
        gunzip: gzip.then(|| MultiGzDecoder::new(Vec::new())),
        pending: Bytes::new(),
        done: false,
    };

    let ctype = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = ctype
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if media == "application/octet-stream" {
        let Some(p) = q.path.as_deref() else {
            return Err(FilesError::BadRequest(
                "path query parameter is required for raw body upload".into(),
            ));
        };
        let path = resolve(agent, &user, p);
        return Ok(vec![write_file(path, &user, &metadata, &mut source).await?]);
    }
    if !media.starts_with("multipart/") {
        return Err(FilesError::BadRequest(format!(
            "unsupported content type: {ctype}, expected multipart/form-data or application/octet-stream"
        )));
    }
    let boundary = multer::parse_boundary(ctype)
        .map_err(|e| FilesError::BadRequest(format!("invalid multipart content type: {e}")))?;
    let stream = futures_util::stream::unfold(source, |mut s| async move {
        match s.next_chunk().await {
            Ok(Some(b)) => Some((Ok(b), s)),
            Ok(None) => None,
            Err(e) => Some((Err(e), s)),
        }
    });
    let mut form = multer::Multipart::new(stream, boundary);
    let mut written: Vec<WrittenFile> = Vec::new();
    while let Some(mut field) = form.next_field().await.map_err(multipart_err)? {
        if field.name() != Some("file") {
            continue;
        }
        // One `path` names the destination of a single-file upload; multi-file
        // uploads carry each destination in the part's filename.
        let dest = match (q.path.as_deref(), field.file_name()) {
            (Some(p), _) => p.to_string(),
            (None, Some(f)) => f.to_string(),
            (None, None) => {
                return Err(FilesError::BadRequest(
                    "multipart part 'file' has no filename and no path was given".into(),
                ))
            }
        };
        let path = resolve(agent, &user, &dest);
        if written.iter().any(|w| Path::new(&w.path) == path) {
            return Err(FilesError::BadRequest(format!(
                "you cannot upload multiple files to the same path '{}' in one upload request",
                path.display()
            )));
        }
        written.push(write_file(path, &user, &metadata, &mut field).await?);
    }
    Ok(written)
}

fn multipart_err(e: multer::Error) -> FilesError {
    FilesError::BadRequest(format!("error reading multipart form: {e}"))
}

/// `Content-Encoding` of an upload: none/identity or gzip.
fn content_encoding(headers: &HeaderMap) -> Result<bool, FilesError> {
    let mut gzip = false;
    for v in headers.get_all(header::CONTENT_ENCODING) {
        let s = v
            .to_str()
            .map_err(|_| FilesError::BadRequest("invalid Content-Encoding header".into()))?;
        for coding in s.split(',').map(|c| {
            c.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        }) {
            match coding.as_str() {
                "" | "identity" => {}
                "gzip" | "x-gzip" if !gzip => gzip = true,
                _ => {
                    return Err(FilesError::BadRequest(format!(
                        "unsupported Content-Encoding: {s}, supported: gzip"
                    )));
                }
            }
        }
    }
    Ok(gzip)
}

/// `X-Metadata-<key>: <value>` headers → metadata to store. Keys arrive
/// lowercased (HTTP header names are case-insensitive); the first value of
/// a repeated header wins. Keys and values must be printable ASCII, keys at
/// most `xattr::MAX_KEY_LEN` bytes, and all pairs together at most 4 KiB.
fn metadata_from_headers(headers: &HeaderMap) -> Result<BTreeMap<String, String>, FilesError> {
    let mut out = BTreeMap::new();
    let mut total = 0;
    for (name, value) in headers {
        let Some(key) = name.as_str().strip_prefix("x-metadata-") else {
            continue;
        };
        if out.contains_key(key) {
            continue;
        }
        if key.is_empty() {
            return Err(FilesError::BadRequest(
                "metadata key must not be empty".into(),
            ));
        }
        if key.len() > xattr::MAX_KEY_LEN {
            return Err(FilesError::BadRequest(format!(
                "metadata key '{key}' is longer than {} bytes",
                xattr::MAX_KEY_LEN
            )));
        }
        if !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(FilesError::BadRequest(format!(
                "metadata key '{key}' must be printable ASCII"
            )));
        }
        let value = value.as_bytes();
        if !value.iter().all(|b| (0x20..0x7f).contains(b)) {
            return Err(FilesError::BadRequest(format!(
                "metadata value of '{key}' must be printable ASCII"
            )));
        }
        total += key.len() + value.len();
        if total > MAX_METADATA_BYTES {
            return Err(FilesError::BadRequest(format!(
                "metadata exceeds {MAX_METADATA_BYTES} bytes"
            )));
        }
        out.insert(key.to_string(), String::from_utf8_lossy(value).into_owned());
    }
    Ok(out)
}

/// Where an upload's bytes come from: the request body or one multipart part.
trait ChunkSource {
    /// The next chunk, `Ok(None)` at the end.
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, FilesError>;
}

/// The request body, gunzipped on the fly when it is gzip-encoded.
struct BodySource {
    /// `None` only after `Drop` has handed it to the drain task.
    body: Option<Incoming>,
    gunzip: Option<MultiGzDecoder<Vec<u8>>>,
    /// Compressed input not yet fed to the decoder.
    pending: Bytes,
    done: bool,
}

impl ChunkSource for BodySource {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, FilesError> {
        let bad_gzip =
            |e: io::Error| FilesError::BadRequest(format!("error decompressing request body: {e}"));
        loop {
            if let Some(dec) = self.gunzip.as_mut() {
                // Feed compressed input in small steps so one highly
                // compressible chunk cannot balloon in memory.
                while !self.pending.is_empty() {
                    let step = self.pending.split_to(self.pending.len().min(GUNZIP_STEP));
                    dec.write_all(&step).map_err(bad_gzip)?;
                    if !dec.get_ref().is_empty() {
                        return Ok(Some(Bytes::from(std::mem::take(dec.get_mut()))));
                    }
                }
            }
            if self.done {
                return Ok(None);
            }
            let Some(body) = self.body.as_mut() else {
                return Ok(None);
            };
            match body.frame().await {
                None => {
                    self.done = true;
                    if let Some(dec) = self.gunzip.as_mut() {
                        dec.try_finish().map_err(bad_gzip)?;
                        if !dec.get_ref().is_empty() {
                            return Ok(Some(Bytes::from(std::mem::take(dec.get_mut()))));
                        }
                    }
                    return Ok(None);
                }
                Some(Err(e)) => return Err(FilesError::Body(e.to_string())),
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    if self.gunzip.is_some() {
                        self.pending = data;
                    } else if !data.is_empty() {
                        return Ok(Some(data));
                    }
                }
            }
        }
    }
}

/// A request body dropped before its end (multipart parsing stops at the
/// closing boundary, errors return early) is read to its end in the
/// background: closing a socket with unread data makes the kernel send a
/// reset, which can destroy the response on its way to the client (seen as
/// sporadic 502s through the proxy). Bounded, so a hostile client cannot
/// keep it busy.
impl Drop for BodySource {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let Some(mut body) = self.body.take() else {
            return;
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let mut left: usize = 64 * 1024 * 1024;
                let drain = async {
                    while let Some(Ok(frame)) = body.frame().await {
                        let n = frame.data_ref().map(|d| d.len()).unwrap_or(0);
                        if n >= left {
                            return;
                        }
                        left -= n;
                    }
                };
                let _ = tokio::time::timeout(std::time::Duration::from_secs(30), drain).await;
            });
        }
    }
}

impl ChunkSource for multer::Field<'_> {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, FilesError> {
        self.chunk().await.map_err(multipart_err)
    }
}

/// Writes one uploaded file: the source is read here, on the async side,
/// and written by a blocking task, with a small channel between them for
/// back-pressure. `None` on the channel tells the writer to give up.
async fn write_file(
    path: PathBuf,
    user: &User,
    metadata: &BTreeMap<String, String>,
    src: &mut impl ChunkSource,
) -> Result<WrittenFile, FilesError> {
    let (tx, rx) = mpsc::channel::<Option<Bytes>>(8);
    let (uid, gid, meta) = (user.uid, user.gid, metadata.clone());
    let writer = tokio::task::spawn_blocking(move || write_blocking(path, uid, gid, meta, rx));
    let mut feed_error = None;
    loop {
        match src.next_chunk().await {
            Ok(Some(chunk)) => {
                // A closed channel means the writer failed; its result says why.
                if tx.send(Some(chunk)).await.is_err() {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                let _ = tx.send(None).await;
                feed_error = Some(e);
                break;
            }
        }
    }
    drop(tx);
    let written = writer.await.map_err(FilesError::Task)?;
    match feed_error {
        Some(e) => Err(e),
        None => written,
    }
}

fn write_blocking(
    path: PathBuf,
    uid: u32,
    gid: u32,
    metadata: BTreeMap<String, String>,
    mut rx: mpsc::Receiver<Option<Bytes>>,
) -> Result<WrittenFile, FilesError> {
    if let Some(parent) = path.parent() {
        fsops::ensure_dirs(parent, uid, gid)?;
    }
    let existing = match std::fs::metadata(&path) {
        Ok(m) if m.is_dir() => return Err(FilesError::IsDirectory(path)),
        Ok(m) => Some(m),
        Err(e) if fsops::is_missing(&e) => None,
        Err(e) => return Err(FilesError::write_io("reading file info of", &path, e)),
    };
    let file = crate::safe_open::open(&path, libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC, 0o644)
        .map_err(|e| FilesError::write_io("opening", &path, e))?;
    let created = existing.is_none();
    let result = (|| {
        // Hand the file to the user. A file we created is always chowned
        // (envd does the same, and its watchers see CREATE, CHMOD, WRITE);
        // a file the user already owns is left alone so rewriting it shows
        // up as plain WRITEs.
        if !matches!(&existing, Some(m) if m.uid() == uid && m.gid() == gid) {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
                .map_err(|e| FilesError::write_io("changing owner of", &path, e))?;
        }
        let mut w = BufWriter::with_capacity(CHUNK, &file);
        while let Some(msg) = rx.blocking_recv() {
            let Some(chunk) = msg else {
                return Err(FilesError::Aborted);
            };
            w.write_all(&chunk)
                .map_err(|e| FilesError::write_io("writing", &path, e))?;
        }
        w.flush()
            .map_err(|e| FilesError::write_io("writing", &path, e))?;
        drop(w);
        match xattr::replace_fd(file.as_fd(), &metadata) {
            Ok(()) => Ok(()),
            Err(e) if xattr::unsupported(&e) => Err(FilesError::MetadataUnsupported(path.clone())),
            Err(e) => Err(FilesError::write_io("setting metadata of", &path, e)),
        }
    })();
    if let Err(e) = result {
        // Drop the receiver first so the feeding side stops at once.
        drop(rx);
        if created {
            // A half-written file nobody asked to keep; a pre-existing file
            // was already truncated, so removing it would lose nothing more
            // but could surprise, and it is left as it is.
            let _ = std::fs::remove_file(&path);
        }
        return Err(e);
    }
    Ok(WrittenFile {
        name: entry::display_name(&path),
        path: path.to_string_lossy().into_owned(),
        kind: "file".to_string(),
        metadata: (!metadata.is_empty()).then_some(metadata),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_envd() {
        // Expected values computed independently with Python's hashlib.
        assert_eq!(
            signature("/home/user/a.txt", Op::Read, "user", "secret-token", None),
            "v1_powbkN3fI7yRlWaB5Ui2dRUwVP8UZprfSGludREq8sk"
        );
        assert_eq!(
            signature(
                "/home/user/a.txt",
                Op::Write,
                "",
                "secret-token",
                Some(1_700_000_000)
            ),
            "v1_yKIfWf99RjLXk8FXwdccFO8ZrLxrZrfgtk8KVvUBEVc"
        );
    }

    fn q(path: &str, sig: Option<String>, exp: Option<i64>) -> Query {
        Query {
            path: Some(path.into()),
            username: None,
            signature: sig,
            signature_expiration: exp.map(|e| e.to_string()),
        }
    }

    #[test]
    fn authorization_follows_envd() {
        let none = HeaderMap::new();
        let tok = Some("tok");
        assert!(authorize(None, &none, &Query::default(), Op::Read, 0).is_ok());
        let err = |r: Result<(), FilesError>| match r {
            Err(FilesError::Auth(a)) => a,
            other => panic!("expected auth error, got {other:?}"),
        };
        assert_eq!(
            err(authorize(tok, &none, &q("/a", None, None), Op::Read, 0)),
            AuthError::MissingSignature
        );

        let good = signature("/a", Op::Read, "", "tok", None);
        assert!(authorize(tok, &none, &q("/a", Some(good.clone()), None), Op::Read, 0).is_ok());
        // A read signature does not authorise a write.
        assert_eq!(
            err(authorize(
                tok,
                &none,
                &q("/a", Some(good), None),
                Op::Write,
                0
            )),
            AuthError::InvalidSignature
        );

        let exp = signature("/a", Op::Read, "", "tok", Some(100));
        assert!(authorize(
            tok,
            &none,
            &q("/a", Some(exp.clone()), Some(100)),
            Op::Read,
            50
        )
        .is_ok());
        assert_eq!(
            err(authorize(
                tok,
                &none,
                &q("/a", Some(exp), Some(100)),
                Op::Read,
                101
            )),
            AuthError::Expired
        );

        let mut hdr = HeaderMap::new();
        hdr.insert("x-access-token", HeaderValue::from_static("tok"));
        assert!(authorize(tok, &hdr, &Query::default(), Op::Write, 0).is_ok());
        hdr.insert("x-access-token", HeaderValue::from_static("nope"));
        assert_eq!(
            err(authorize(tok, &hdr, &Query::default(), Op::Write, 0)),
            AuthError::TokenMismatch
        );
    }

    #[test]
    fn unauthorized_body_is_exact() {
        let r = FilesError::from(AuthError::InvalidSignature).response();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn query_is_decoded() {
        let got = parse_query(
            "path=%2Fhome%2Fuser%2Fa+b.txt&username=user&path=ignored&x=1&signature=v1_a%2Bb",
        );
        assert_eq!(got.path.as_deref(), Some("/home/user/a b.txt"));
        assert_eq!(got.username.as_deref(), Some("user"));
        assert_eq!(got.signature.as_deref(), Some("v1_a+b"));
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%C3%A9"), "é");
    }

    fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::header::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_bytes(v).expect("value"),
            );
        }
        h
    }

    #[test]
    fn metadata_headers_are_validated() {
        let m = metadata_from_headers(&headers(&[
            ("X-Metadata-Author", b"mish"),
            ("x-metadata-purpose", b"upload"),
            ("x-metadata-author", b"second"),
            ("content-type", b"text/plain"),
        ]))
        .expect("valid");
        assert_eq!(m.len(), 2);
        assert_eq!(m["author"], "mish");
        assert_eq!(m["purpose"], "upload");

        let bad = |pairs: &[(&str, &[u8])]| {
            matches!(
                metadata_from_headers(&headers(pairs)),
                Err(FilesError::BadRequest(_))
            )
        };
        assert!(bad(&[("x-metadata-", b"v")]));
        assert!(bad(&[("x-metadata-k", b"caf\xc3\xa9")]));
        assert!(bad(&[("x-metadata-k", b"tab\there")]));
        let long_key = format!("x-metadata-{}", "k".repeat(xattr::MAX_KEY_LEN + 1));
        assert!(bad(&[(long_key.as_str(), b"v")]));
        let ok_key = format!("x-metadata-{}", "k".repeat(xattr::MAX_KEY_LEN));
        assert!(!bad(&[(ok_key.as_str(), b"v")]));
        let big = vec![b'v'; 3000];
        assert!(bad(&[("x-metadata-a", &big), ("x-metadata-b", &big)]));
    }

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
        assert!(matches!(
            negotiate(Some("br")),
            Err(FilesError::NotAcceptable)
        ));
        assert!(matches!(
            negotiate(Some("br, zstd")),
            Err(FilesError::NotAcceptable)
        ));
        assert!(matches!(
            negotiate(Some("identity;q=0")),
            Err(FilesError::NotAcceptable)
        ));
        assert!(matches!(
            negotiate(Some("*;q=0")),
            Err(FilesError::NotAcceptable)
        ));
    }

    #[test]
    fn upload_content_encoding() {
        assert!(!content_encoding(&HeaderMap::new()).expect("none"));
        assert!(
            !content_encoding(&headers(&[("content-encoding", b"identity")])).expect("identity")
        );
        assert!(content_encoding(&headers(&[("content-encoding", b"gzip")])).expect("gzip"));
        assert!(content_encoding(&headers(&[("content-encoding", b"br")])).is_err());
        assert!(content_encoding(&headers(&[("content-encoding", b"gzip, gzip")])).is_err());
    }

    #[test]
    fn content_disposition_is_safe() {
        assert_eq!(content_disposition("a.txt"), "inline; filename=\"a.txt\"");
        assert_eq!(
            content_disposition("q\"uote"),
            "inline; filename=\"q_uote\"; filename*=UTF-8''q%22uote"
        );
        assert_eq!(
            content_disposition("é.txt"),
            "inline; filename=\"_.txt\"; filename*=UTF-8''%C3%A9.txt"
        );
    }
}
