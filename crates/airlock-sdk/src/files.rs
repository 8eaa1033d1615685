//! The sandbox's filesystem: whole-file and streamed reads and writes over
//! envd's `/files`, the `filesystem.Filesystem` RPCs (list, stat, mkdir,
//! rename, remove), directory watches as a [`Stream`], and signed URLs that
//! work without any header.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use airlock_proto::connect::Code;
use airlock_proto::envd::{
    self, EntryInfo, EntryResponse, FilesystemEvent, ListDirRequest, ListDirResponse, MoveRequest, PathRequest, WatchDirResponse, WatchEventKind, WatchRequest, WrittenFile,
};
use airlock_proto::wire::Rpc;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::client::{encode, files_query, full};
use crate::error::{Error, Result};
use crate::stream::ConnectStream;
use crate::Sandbox;

/// The filesystem API of one sandbox, acting as one user.
#[derive(Debug, Clone)]
pub struct Files {
    sbx: Sandbox,
    user: Option<String>,
}

impl Files {
    pub(crate) fn new(sbx: Sandbox) -> Self {
        Self { sbx, user: None }
    }

    /// The same API acting as another sandbox user (default: the
    /// template's user). Relative paths are under that user's home.
    pub fn user(&self, user: impl Into<String>) -> Files {
        Files { sbx: self.sbx.clone(), user: Some(user.into()) }
    }

    fn u(&self) -> Option<&str> {
        self.user.as_deref()
    }

    async fn rpc<Req: serde::Serialize, Res: serde::de::DeserializeOwned>(&self, rpc: &str, req: &Req) -> Result<Res> {
        self.sbx.client().unary(self.sbx.target(), rpc, req, self.u()).await
    }

    // ---------------------------------------------------------------- read

    /// The whole file.
    pub async fn read(&self, path: &str) -> Result<Vec<u8>> {
        let mut s = self.read_stream(path).await?;
        let mut out = Vec::with_capacity(s.len().unwrap_or(0).min(64 << 20) as usize);
        while let Some(chunk) = s.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out)
    }

    /// The whole file as text (invalid UTF-8 becomes U+FFFD).
    pub async fn read_to_string(&self, path: &str) -> Result<String> {
        Ok(String::from_utf8_lossy(&self.read(path).await?).into_owned())
    }

    /// The file as a stream of chunks, never held whole in memory.
    pub async fn read_stream(&self, path: &str) -> Result<FileStream> {
        let resp = self.sbx.client().files_get(self.sbx.target(), path, self.u()).await?;
        let len = resp.headers().get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
        Ok(FileStream { body: resp.into_body(), len, path: path.to_string() })
    }

    // --------------------------------------------------------------- write

    /// Writes (creates or replaces) a file, creating parent directories.
    pub async fn write(&self, path: &str, data: impl Into<Bytes>) -> Result<WrittenFile> {
        let data = data.into();
        let len = data.len() as u64;
        self.upload(path, full(data), Some(len)).await
    }

    /// Writes a file from a stream of chunks (`application/octet-stream`,
    /// never held whole in memory). Give `len` when known; an error from
    /// the stream aborts the upload and leaves no partial file.
    pub async fn write_stream<S>(&self, path: &str, stream: S, len: Option<u64>) -> Result<WrittenFile>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send + 'static,
    {
        let body = StreamBody { inner: Box::pin(stream) };
        self.upload(path, body.boxed_unsync(), len).await
    }

    /// Writes a file from anything readable (a local file, a pipe).
    pub async fn write_reader<R>(&self, path: &str, reader: R, len: Option<u64>) -> Result<WrittenFile>
    where
        R: tokio::io::AsyncRead + Send + 'static,
    {
        self.upload(path, reader_body(reader), len).await
    }

    async fn upload(&self, path: &str, body: crate::client::ReqBody, len: Option<u64>) -> Result<WrittenFile> {
        let mut written = self.sbx.client().files_post(self.sbx.target(), path, self.u(), body, len).await?;
        if written.is_empty() {
            return Err(Error::protocol("upload answered with an empty list"));
        }
        Ok(written.swap_remove(0))
    }

    // ---------------------------------------------------------- filesystem

    /// Entries directly in `path`.
    pub async fn list(&self, path: &str) -> Result<Vec<EntryInfo>> {
        self.list_depth(path, 1).await
    }

    /// Entries in `path` down to `depth` levels (1 = direct children).
    pub async fn list_depth(&self, path: &str, depth: u32) -> Result<Vec<EntryInfo>> {
        if depth < 1 {
            return Err(Error::Config("depth must be at least 1".into()));
        }
        let r: ListDirResponse = self.rpc(Rpc::FsListDir.path(), &ListDirRequest { path: path.into(), depth }).await?;
        Ok(r.entries)
    }

    /// Type, size, mode, owner and times of one path.
    pub async fn stat(&self, path: &str) -> Result<EntryInfo> {
        let r: EntryResponse = self.rpc(Rpc::FsStat.path(), &PathRequest { path: path.into() }).await?;
        Ok(r.entry)
    }

    pub async fn exists(&self, path: &str) -> Result<bool> {
        match self.stat(path).await {
            Ok(_) => Ok(true),
            Err(Error::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Creates a directory and its parents; false if it already existed.
    pub async fn make_dir(&self, path: &str) -> Result<bool> {
        match self.rpc::<_, EntryResponse>(Rpc::FsMakeDir.path(), &PathRequest { path: path.into() }).await {
            Ok(_) => Ok(true),
            Err(Error::Sandbox(e)) if e.code == Code::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Moves or renames; returns the entry at its new place.
    pub async fn rename(&self, from: &str, to: &str) -> Result<EntryInfo> {
        let r: EntryResponse = self.rpc(Rpc::FsMove.path(), &MoveRequest { source: from.into(), destination: to.into() }).await?;
        Ok(r.entry)
    }

    /// Removes a file or a directory with everything in it.
    pub async fn remove(&self, path: &str) -> Result<()> {
        let _: envd::Empty = self.rpc(Rpc::FsRemove.path(), &PathRequest { path: path.into() }).await?;
        Ok(())
    }

    /// Starts describing a watch on a directory; see [`WatchBuilder`].
    pub fn watch(&self, path: &str) -> WatchBuilder {
        WatchBuilder { files: self.clone(), req: WatchRequest { path: path.into(), ..Default::default() } }
    }

    // -------------------------------------------------------- signed URLs

    /// A URL that downloads `path` with a plain GET, no headers needed.
    /// Signed with the sandbox's access token (when it has one); valid
    /// for `expires_in` if given, else until the sandbox goes away.
    pub fn download_url(&self, path: &str, expires_in: Option<Duration>) -> String {
        self.signed_url(path, "read", expires_in)
    }

    /// A URL that uploads to `path` with a plain POST (multipart or
    /// octet-stream body).
    pub fn upload_url(&self, path: &str, expires_in: Option<Duration>) -> String {
        self.signed_url(path, "write", expires_in)
    }

    fn signed_url(&self, path: &str, op: &str, expires_in: Option<Duration>) -> String {
        let base = self.sbx.client().config().sandbox_url.trim_end_matches('/').to_string();
        let mut url = format!("{base}{}", files_query(path, self.u()));
        if let Some(token) = self.sbx.access_token() {
            let exp = expires_in.map(|d| SystemTime::now().duration_since(UNIX_EPOCH).map(|n| n.as_secs()).unwrap_or(0) as i64 + d.as_secs().max(1) as i64);
            let sig = envd::file_signature(path, op, self.u().unwrap_or(""), token, exp);
            url.push_str(&format!("&signature={}", encode(&sig)));
            if let Some(e) = exp {
                url.push_str(&format!("&signature_expiration={e}"));
            }
        }
        url
    }
}

/// A file being downloaded, chunk by chunk.
pub struct FileStream {
    body: Incoming,
    len: Option<u64>,
    path: String,
}

impl std::fmt::Debug for FileStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileStream").field("path", &self.path).field("len", &self.len).finish()
    }
}

impl FileStream {
    /// The size announced by the server, if it announced one.
    pub fn len(&self) -> Option<u64> {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == Some(0)
    }
}

impl Stream for FileStream {
    type Item = Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            match futures_util::ready!(Pin::new(&mut this.body).poll_frame(cx)) {
                None => return Poll::Ready(None),
                Some(Err(e)) => return Poll::Ready(Some(Err(Error::Connection { url: format!("/files?path={}", this.path), source: Box::new(e) }))),
                Some(Ok(f)) => {
                    if let Ok(d) = f.into_data() {
                        if !d.is_empty() {
                            return Poll::Ready(Some(Ok(d)));
                        }
                    }
                }
            }
        }
    }
}

/// An upload body read from `reader`, 64 KiB at a time.
pub(crate) fn reader_body<R: tokio::io::AsyncRead + Send + 'static>(reader: R) -> crate::client::ReqBody {
    let stream = futures_util::stream::unfold(Box::pin(reader), |mut r| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 64 * 1024];
        match r.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), r))
            }
            Err(e) => Some((Err(e), r)),
        }
    });
    StreamBody { inner: Box::pin(stream) }.boxed_unsync()
}

/// An upload body fed by a caller's stream.
struct StreamBody {
    inner: Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>,
}

impl Body for StreamBody {
    type Data = Bytes;
    type Error = crate::error::BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<std::result::Result<Frame<Bytes>, Self::Error>>> {
        match futures_util::ready!(self.inner.as_mut().poll_next(cx)) {
            None => Poll::Ready(None),
            Some(Ok(b)) => Poll::Ready(Some(Ok(Frame::data(b)))),
            Some(Err(e)) => Poll::Ready(Some(Err(Box::new(e)))),
        }
    }
}

/// Describes a directory watch.
#[derive(Debug, Clone)]
pub struct WatchBuilder {
    files: Files,
    req: WatchRequest,
}

impl WatchBuilder {
    /// Also watch subdirectories (including ones created later).
    pub fn recursive(mut self, on: bool) -> Self {
        self.req.recursive = on;
        self
    }

    /// Attach the entry's details to create and write events.
    pub fn include_entry(mut self, on: bool) -> Self {
        self.req.include_entry = on;
        self
    }

    /// Starts watching; events that happen after this returns are delivered.
    pub async fn start(self) -> Result<WatchStream> {
        let f = &self.files;
        let mut inner: ConnectStream<WatchDirResponse> = f.sbx.client().server_stream(f.sbx.target(), Rpc::FsWatchDir.path(), &self.req, f.u(), None).await?;
        loop {
            match inner.next().await {
                Some(Ok(WatchDirResponse { event: WatchEventKind::Start {} })) => return Ok(WatchStream { inner }),
                Some(Ok(WatchDirResponse { event: WatchEventKind::Keepalive {} })) => continue,
                Some(Ok(other)) => return Err(Error::protocol(format!("expected a start event, got {other:?}"))),
                Some(Err(e)) => return Err(e),
                None => return Err(Error::protocol("watch ended before it started")),
            }
        }
    }
}

/// Filesystem events under a watched directory, as they happen; names are
/// relative to the watched directory. Dropping it stops the watch.
pub struct WatchStream {
    inner: ConnectStream<WatchDirResponse>,
}

impl std::fmt::Debug for WatchStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchStream").finish_non_exhaustive()
    }
}

impl Stream for WatchStream {
    type Item = Result<FilesystemEvent>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            match futures_util::ready!(Pin::new(&mut this.inner).poll_next(cx)) {
                None => return Poll::Ready(None),
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                Some(Ok(WatchDirResponse { event: WatchEventKind::Filesystem(ev) })) => return Poll::Ready(Some(Ok(ev))),
                Some(Ok(_)) => continue,
            }
        }
    }
}
