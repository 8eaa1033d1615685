//! `POST /files`: a raw (`application/octet-stream`) or multipart upload,
//! gunzipped on the fly when gzip-encoded, each file written by a blocking
//! task fed through a small channel, with `X-Metadata-*` headers stored as
//! extended attributes. A file the upload created is removed again if it
//! fails half-way.

use std::collections::BTreeMap;
use std::io::{self, BufWriter, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use airlock_proto::envd::WrittenFile;
use bytes::Bytes;
use flate2::write::MultiGzDecoder;
use http::{header, HeaderMap, Request, StatusCode};
use http_body::Body as HttpBody;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::mpsc;

use super::auth::{authorize, unix_now, Op};
use super::query::parse_query;
use super::{resolve, user_for, FilesError, CHUNK};
use crate::fs::{self as fsops, entry, xattr};
use crate::http::{self as h, Resp};
use crate::users::User;
use crate::Agent;

/// Compressed input fed to the gzip decoder per step; at deflate's maximum
/// ratio (~1032:1) one step expands to at most ~8 MiB.
const GUNZIP_STEP: usize = 8 * 1024;
/// Upper bound on the total size of the `X-Metadata-*` pairs of one upload.
const MAX_METADATA_BYTES: usize = 4096;

pub(crate) async fn upload(agent: &Arc<Agent>, req: Request<Incoming>) -> Resp {
    match upload_inner(agent, req).await {
        Ok(files) => h::json_ok(StatusCode::OK, &files),
        Err(e) => e.response(),
    }
}

async fn upload_inner(agent: &Agent, req: Request<Incoming>) -> Result<Vec<WrittenFile>, FilesError> {
    let (parts, body) = req.into_parts();
    let q = parse_query(parts.uri.query().unwrap_or(""));
    authorize(agent.session().access_token.as_deref(), &parts.headers, &q, Op::Write, unix_now())?;
    let user = user_for(agent, &q)?;
    // Validated before anything touches the disk: a rejected upload leaves
    // no file behind.
    let metadata = metadata_from_headers(&parts.headers)?;
    let mut sink = DiskSink { agent, user: &user, metadata: &metadata };
    receive(&parts.headers, q.path.as_deref(), body, &mut sink).await
}

/// Where `receive` puts the files of an upload: on disk (`DiskSink`), or,
/// in the fuzz targets, in memory.
pub(crate) trait Sink {
    /// The file a destination names (as `resolve` makes it).
    fn resolve(&self, dest: &str) -> PathBuf;
    /// Writes one file from `src`.
    async fn write(&mut self, path: PathBuf, src: &mut impl ChunkSource) -> Result<WrittenFile, FilesError>;
}

struct DiskSink<'a> {
    agent: &'a Agent,
    user: &'a User,
    metadata: &'a BTreeMap<String, String>,
}

impl Sink for DiskSink<'_> {
    fn resolve(&self, dest: &str) -> PathBuf {
        resolve(self.agent, self.user, dest)
    }
    async fn write(&mut self, path: PathBuf, src: &mut impl ChunkSource) -> Result<WrittenFile, FilesError> {
        write_file(path, self.user, self.metadata, src).await
    }
}

/// Parses an upload's body (raw or multipart, gzipped or not, as the
/// headers say) and hands each file to `sink`; `path` is the `path` query
/// parameter.
pub(crate) async fn receive<B>(headers: &HeaderMap, path: Option<&str>, body: B, sink: &mut impl Sink) -> Result<Vec<WrittenFile>, FilesError>
where
    B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Send + std::fmt::Display,
{
    let gzip = content_encoding(headers)?;
    let mut source = BodySource { body: Some(body), gunzip: gzip.then(|| MultiGzDecoder::new(Vec::new())), pending: Bytes::new(), done: false };

    let ctype = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let media = ctype.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if media == "application/octet-stream" {
        let Some(p) = path else {
            return Err(FilesError::BadRequest("path query parameter is required for raw body upload".into()));
        };
        let path = sink.resolve(p);
        return Ok(vec![sink.write(path, &mut source).await?]);
    }
    if !media.starts_with("multipart/") {
        return Err(FilesError::BadRequest(format!("unsupported content type: {ctype}, expected multipart/form-data or application/octet-stream")));
    }
    let boundary = multer::parse_boundary(ctype).map_err(|e| FilesError::BadRequest(format!("invalid multipart content type: {e}")))?;
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
        let dest = match (path, field.file_name()) {
            (Some(p), _) => p.to_string(),
            (None, Some(f)) => f.to_string(),
            (None, None) => return Err(FilesError::BadRequest("multipart part 'file' has no filename and no path was given".into())),
        };
        let path = sink.resolve(&dest);
        if written.iter().any(|w| Path::new(&w.path) == path) {
            return Err(FilesError::BadRequest(format!("you cannot upload multiple files to the same path '{}' in one upload request", path.display())));
        }
        written.push(sink.write(path, &mut field).await?);
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
        let s = v.to_str().map_err(|_| FilesError::BadRequest("invalid Content-Encoding header".into()))?;
        for coding in s.split(',').map(|c| c.split(';').next().unwrap_or("").trim().to_ascii_lowercase()) {
            match coding.as_str() {
                "" | "identity" => {}
                "gzip" | "x-gzip" if !gzip => gzip = true,
                _ => {
                    return Err(FilesError::BadRequest(format!("unsupported Content-Encoding: {s}, supported: gzip")));
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
pub(crate) fn metadata_from_headers(headers: &HeaderMap) -> Result<BTreeMap<String, String>, FilesError> {
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
            return Err(FilesError::BadRequest("metadata key must not be empty".into()));
        }
        if key.len() > xattr::MAX_KEY_LEN {
            return Err(FilesError::BadRequest(format!("metadata key '{key}' is longer than {} bytes", xattr::MAX_KEY_LEN)));
        }
        if !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(FilesError::BadRequest(format!("metadata key '{key}' must be printable ASCII")));
        }
        let value = value.as_bytes();
        if !value.iter().all(|b| (0x20..0x7f).contains(b)) {
            return Err(FilesError::BadRequest(format!("metadata value of '{key}' must be printable ASCII")));
        }
        total += key.len() + value.len();
        if total > MAX_METADATA_BYTES {
            return Err(FilesError::BadRequest(format!("metadata exceeds {MAX_METADATA_BYTES} bytes")));
        }
        out.insert(key.to_string(), String::from_utf8_lossy(value).into_owned());
    }
    Ok(out)
}

/// Where an upload's bytes come from: the request body or one multipart part.
pub(crate) trait ChunkSource {
    /// The next chunk, `Ok(None)` at the end.
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, FilesError>;
}

/// The request body, gunzipped on the fly when it is gzip-encoded.
struct BodySource<B>
where
    B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Send,
{
    /// `None` only after `Drop` has handed it to the drain task.
    body: Option<B>,
    gunzip: Option<MultiGzDecoder<Vec<u8>>>,
    /// Compressed input not yet fed to the decoder.
    pending: Bytes,
    done: bool,
}

impl<B> ChunkSource for BodySource<B>
where
    B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Send + std::fmt::Display,
{
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, FilesError> {
        let bad_gzip = |e: io::Error| FilesError::BadRequest(format!("error decompressing request body: {e}"));
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
impl<B> Drop for BodySource<B>
where
    B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Send,
{
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
async fn write_file(path: PathBuf, user: &User, metadata: &BTreeMap<String, String>, src: &mut impl ChunkSource) -> Result<WrittenFile, FilesError> {
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

fn write_blocking(path: PathBuf, uid: u32, gid: u32, metadata: BTreeMap<String, String>, mut rx: mpsc::Receiver<Option<Bytes>>) -> Result<WrittenFile, FilesError> {
    if let Some(parent) = path.parent() {
        fsops::ensure_dirs(parent, uid, gid)?;
    }
    let existing = match std::fs::metadata(&path) {
        Ok(m) if m.is_dir() => return Err(FilesError::IsDirectory(path)),
        Ok(m) => Some(m),
        Err(e) if fsops::is_missing(&e) => None,
        Err(e) => return Err(FilesError::write_io("reading file info of", &path, e)),
    };
    let file = crate::safe_open::open(&path, libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC, 0o644).map_err(|e| FilesError::write_io("opening", &path, e))?;
    let created = existing.is_none();
    let result = (|| {
        // Hand the file to the user. A file we created is always chowned
        // (envd does the same, and its watchers see CREATE, CHMOD, WRITE);
        // a file the user already owns is left alone so rewriting it shows
        // up as plain WRITEs.
        if !matches!(&existing, Some(m) if m.uid() == uid && m.gid() == gid) {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid)).map_err(|e| FilesError::write_io("changing owner of", &path, e))?;
        }
        let mut w = BufWriter::with_capacity(CHUNK, &file);
        while let Some(msg) = rx.blocking_recv() {
            let Some(chunk) = msg else {
                return Err(FilesError::Aborted);
            };
            w.write_all(&chunk).map_err(|e| FilesError::write_io("writing", &path, e))?;
        }
        w.flush().map_err(|e| FilesError::write_io("writing", &path, e))?;
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
    Ok(WrittenFile { name: entry::display_name(&path), path: path.to_string_lossy().into_owned(), kind: "file".to_string(), metadata: (!metadata.is_empty()).then_some(metadata) })
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(http::header::HeaderName::from_bytes(k.as_bytes()).expect("name"), HeaderValue::from_bytes(v).expect("value"));
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

        let bad = |pairs: &[(&str, &[u8])]| matches!(metadata_from_headers(&headers(pairs)), Err(FilesError::BadRequest(_)));
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
    fn upload_content_encoding() {
        assert!(!content_encoding(&HeaderMap::new()).expect("none"));
        assert!(!content_encoding(&headers(&[("content-encoding", b"identity")])).expect("identity"));
        assert!(content_encoding(&headers(&[("content-encoding", b"gzip")])).expect("gzip"));
        assert!(content_encoding(&headers(&[("content-encoding", b"br")])).is_err());
        assert!(content_encoding(&headers(&[("content-encoding", b"gzip, gzip")])).is_err());
    }
}
