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
//!
//! `auth` decides whether a request may go ahead (the access token, or
//! else a URL signature), `query` parses the query string, `download` and
//! `upload` serve the two directions; this module holds what both share:
//! the error type with its statuses and bodies, and whose file a request
//! names.

use std::io;
use std::path::{Path, PathBuf};

use http::StatusCode;

use crate::fs::FsError;
use crate::http::{self as h, Resp};
use crate::users::{self, User, UserError};
use crate::{paths, Agent};

mod auth;
mod download;
mod query;
mod upload;

/// The parsers of `/files` requests, for the fuzz targets in `fuzz/`:
/// thin wrappers with plain types, so nothing here widens the crate's API.
#[doc(hidden)]
pub mod fuzzing {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use airlock_proto::envd::WrittenFile;
    use bytes::Bytes;
    use http::HeaderMap;

    use super::upload::{ChunkSource, Sink};
    use super::FilesError;

    /// The `/files` query parameters `(path, username, signature,
    /// signature_expiration)`, as `parse_query` decodes them.
    pub type Query = (Option<String>, Option<String>, Option<String>, Option<String>);

    pub fn parse_query(q: &str) -> Query {
        let q = super::query::parse_query(q);
        (q.path, q.username, q.signature, q.signature_expiration)
    }

    /// `auth::authorize` of a request with these headers and query for a
    /// read (`write == false`) or a write, at `now`.
    pub fn authorize(token: Option<&str>, headers: &HeaderMap, query: &str, write: bool, now: i64) -> Result<(), String> {
        let op = if write { super::auth::Op::Write } else { super::auth::Op::Read };
        super::auth::authorize(token, headers, &super::query::parse_query(query), op, now).map_err(|e| e.to_string())
    }

    pub fn upload_metadata(headers: &HeaderMap) -> Result<BTreeMap<String, String>, String> {
        super::upload::metadata_from_headers(headers).map_err(|e| e.to_string())
    }

    /// Files an upload's body would write, kept in memory: the upload's
    /// own parser with a sink that stores `(path, bytes)` instead of writing.
    pub async fn receive_upload<B>(headers: &HeaderMap, path: Option<&str>, body: B) -> Result<Vec<(PathBuf, Vec<u8>)>, String>
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Send + std::fmt::Display,
    {
        let mut sink = MemorySink::default();
        super::upload::receive(headers, path, body, &mut sink).await.map_err(|e| e.to_string())?;
        Ok(sink.files)
    }

    #[derive(Default)]
    struct MemorySink {
        files: Vec<(PathBuf, Vec<u8>)>,
    }

    impl Sink for MemorySink {
        fn resolve(&self, dest: &str) -> PathBuf {
            PathBuf::from(dest)
        }
        async fn write(&mut self, path: PathBuf, src: &mut impl ChunkSource) -> Result<WrittenFile, FilesError> {
            let mut data = Vec::new();
            while let Some(chunk) = src.next_chunk().await? {
                data.extend_from_slice(&chunk);
            }
            self.files.push((path.clone(), data));
            Ok(WrittenFile { name: String::new(), path: path.to_string_lossy().into_owned(), kind: "file".into(), metadata: None })
        }
    }
}

pub(crate) use download::download;
pub(crate) use upload::upload;

use auth::AuthError;
use query::Query;

/// Read and write granularity of file data.
const CHUNK: usize = 64 * 1024;

/// Why a `/files` request failed; `status` gives the HTTP status envd
/// answers with, and the body is envd's `{"code", "message"}`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FilesError {
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
            FilesError::BadRequest(_) | FilesError::IsDirectory(_) | FilesError::Body(_) | FilesError::Aborted => StatusCode::BAD_REQUEST,
            FilesError::Auth(_) | FilesError::User(UserError::Unknown(_)) => StatusCode::UNAUTHORIZED,
            FilesError::NotFound(_) => StatusCode::NOT_FOUND,
            FilesError::NotAcceptable => StatusCode::NOT_ACCEPTABLE,
            FilesError::NoSpace(_) => StatusCode::INSUFFICIENT_STORAGE,
            // The client's doing, not the agent's: 403.
            FilesError::Io { source, .. } if crate::fs::refused_by_kernel(source) => StatusCode::FORBIDDEN,
            FilesError::MetadataUnsupported(_) | FilesError::User(_) | FilesError::Io { .. } | FilesError::Task(_) => StatusCode::INTERNAL_SERVER_ERROR,
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
            _ => FilesError::Io { op, path: path.to_path_buf(), source },
        }
    }
}

impl From<FsError> for FilesError {
    fn from(e: FsError) -> Self {
        match e {
            FsError::NotFound(p) => FilesError::NotFound(p),
            FsError::NotADirectory(p) => FilesError::BadRequest(format!("path '{}' is not a directory", p.display())),
            FsError::Io { op, path, source } => FilesError::write_io(op, &path, source),
            FsError::Task(e) => FilesError::Task(e),
            other => FilesError::BadRequest(other.to_string()),
        }
    }
}

fn user_for(agent: &Agent, q: &Query) -> Result<User, FilesError> {
    let name = q.username.as_deref().filter(|u| !u.is_empty()).unwrap_or(&agent.config.default_user);
    Ok(users::lookup(name)?)
}

fn resolve(agent: &Agent, user: &User, path: &str) -> PathBuf {
    paths::resolve(path, user, agent.config.default_workdir.as_deref())
}
