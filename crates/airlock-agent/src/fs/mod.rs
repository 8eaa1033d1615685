//! `filesystem.Filesystem`: Stat, MakeDir, Move, ListDir, Remove, WatchDir
//! and the CreateWatcher/GetWatcherEvents/RemoveWatcher polling trio.
//!
//! Handlers parse the Connect request, resolve paths for the calling user
//! as envd does (`paths::resolve`), and run the filesystem work on the
//! blocking pool. The agent runs as root, so it acts on the user's behalf:
//! directories it creates are handed to the user (uid/gid), as envd does.
//! Entry descriptions live in `entry`, xattr metadata in `xattr`, and
//! inotify watching in `watch`.

pub mod entry;
pub mod watch;
pub mod xattr;

use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use airlock_proto::connect::{Code, ConnectError};
use airlock_proto::envd::{Empty, EntryInfo, EntryResponse, GetWatcherEventsResponse, ListDirRequest, ListDirResponse, MoveRequest, PathRequest, WatchRequest, WatcherId};
use http::Request;
use hyper::body::Incoming;

use crate::http::{self as h, Resp};
use crate::rpc::{self, RequestCtx};
use crate::{paths, Agent};

use entry::Names;
pub use watch::{DirWatch, Watchers};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Stat,
    MakeDir,
    Move,
    ListDir,
    Remove,
    WatchDir,
    CreateWatcher,
    GetWatcherEvents,
    RemoveWatcher,
}

impl Method {
    /// The filesystem RPC `r` is, if it is one.
    pub fn from_rpc(r: airlock_proto::wire::Rpc) -> Option<Self> {
        use airlock_proto::wire::Rpc;
        Some(match r {
            Rpc::FsStat => Self::Stat,
            Rpc::FsMakeDir => Self::MakeDir,
            Rpc::FsMove => Self::Move,
            Rpc::FsListDir => Self::ListDir,
            Rpc::FsRemove => Self::Remove,
            Rpc::FsWatchDir => Self::WatchDir,
            Rpc::FsCreateWatcher => Self::CreateWatcher,
            Rpc::FsGetWatcherEvents => Self::GetWatcherEvents,
            Rpc::FsRemoveWatcher => Self::RemoveWatcher,
            _ => return None,
        })
    }

    pub fn is_stream(self) -> bool {
        matches!(self, Self::WatchDir)
    }
}

/// Why a filesystem operation failed; `to_connect` picks the Connect code
/// the SDKs branch on (not_found → `exists()` false, already_exists →
/// `make_dir()` false, ...).
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("path '{}' does not exist", .0.display())]
    NotFound(PathBuf),
    #[error("path '{}' is not a directory", .0.display())]
    NotADirectory(PathBuf),
    #[error("directory already exists: {}", .0.display())]
    DirExists(PathBuf),
    #[error("path already exists but it is not a directory: {}", .0.display())]
    ExistsNotDir(PathBuf),
    #[error("cannot watch path on network filesystem: {}", .0.display())]
    NetworkMount(PathBuf),
    #[error("cannot watch '{}': inotify limit reached", path.display())]
    WatchLimit {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("watcher with id {0} not found")]
    UnknownWatcher(String),
    #[error("watcher failed: {}", .0.message)]
    WatchFailed(ConnectError),
    #[error("error {op} '{}'", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("filesystem task failed")]
    Task(#[source] tokio::task::JoinError),
}

/// The kernel refused the client's operation: permissions, a read-only
/// filesystem, or a magic link or the agent's own `/proc` (which
/// `safe_open` turns away with ELOOP and EACCES). Answered as "forbidden"
/// by the RPCs and `/files` alike.
pub(crate) fn refused_by_kernel(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM | libc::EROFS | libc::ELOOP))
}

impl FsError {
    /// An I/O error on `path`; "no such file" (including a path component
    /// that is not a directory) becomes `NotFound`.
    pub fn io(op: &'static str, path: &Path, source: io::Error) -> Self {
        if is_missing(&source) {
            FsError::NotFound(path.to_path_buf())
        } else {
            FsError::Io { op, path: path.to_path_buf(), source }
        }
    }

    pub fn to_connect(&self) -> ConnectError {
        let code = match self {
            FsError::NotFound(_) | FsError::UnknownWatcher(_) => Code::NotFound,
            FsError::NotADirectory(_) | FsError::ExistsNotDir(_) | FsError::NetworkMount(_) => Code::InvalidArgument,
            FsError::DirExists(_) => Code::AlreadyExists,
            FsError::WatchLimit { .. } => Code::ResourceExhausted,
            FsError::WatchFailed(e) => return e.clone(),
            FsError::Io { source, .. } => match source.raw_os_error() {
                _ if refused_by_kernel(source) => Code::PermissionDenied,
                Some(libc::ENOTDIR | libc::EISDIR | libc::ENOTEMPTY | libc::EINVAL | libc::ENAMETOOLONG) => Code::InvalidArgument,
                Some(libc::EEXIST) => Code::AlreadyExists,
                _ => Code::Internal,
            },
            FsError::Task(_) => Code::Internal,
        };
        let message = match self {
            FsError::Io { source, .. } | FsError::WatchLimit { source, .. } => format!("{self}: {source}"),
            _ => self.to_string(),
        };
        ConnectError::new(code, message)
    }
}

pub(crate) fn is_missing(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR)
}

/// Runs blocking filesystem work off the async runtime.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T, FsError>
where
    F: FnOnce() -> Result<T, FsError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f).await.map_err(FsError::Task)?
}

pub async fn handle(agent: &Arc<Agent>, m: Method, req: Request<Incoming>, ctx: RequestCtx) -> Resp {
    let body = req.into_body();
    match m {
        Method::Stat => h::unary(stat(agent, body, &ctx).await),
        Method::MakeDir => h::unary(make_dir(agent, body, &ctx).await),
        Method::Move => h::unary(move_entry(agent, body, &ctx).await),
        Method::ListDir => h::unary(list_dir(agent, body, &ctx).await),
        Method::Remove => h::unary(remove(agent, body, &ctx).await),
        Method::WatchDir => watch_dir(agent, body, &ctx).await,
        Method::CreateWatcher => h::unary(create_watcher(agent, body, &ctx).await),
        Method::GetWatcherEvents => h::unary(get_watcher_events(agent, body).await),
        Method::RemoveWatcher => h::unary(remove_watcher(agent, body).await),
    }
}

fn resolve(agent: &Agent, ctx: &RequestCtx, path: &str) -> PathBuf {
    paths::resolve(path, &ctx.user, agent.config.default_workdir.as_deref())
}

async fn stat(agent: &Agent, body: Incoming, ctx: &RequestCtx) -> Result<EntryResponse, ConnectError> {
    let r: PathRequest = rpc::unary(body).await?;
    let path = resolve(agent, ctx, &r.path);
    let entry = blocking(move || stat_entry(&path)).await.map_err(|e| e.to_connect())?;
    Ok(EntryResponse { entry })
}

fn stat_entry(path: &Path) -> Result<EntryInfo, FsError> {
    entry::entry_info(path, &mut Names::default()).map_err(|e| FsError::io("reading file info of", path, e))
}

async fn make_dir(agent: &Agent, body: Incoming, ctx: &RequestCtx) -> Result<EntryResponse, ConnectError> {
    let r: PathRequest = rpc::unary(body).await?;
    let path = resolve(agent, ctx, &r.path);
    let (uid, gid) = (ctx.user.uid, ctx.user.gid);
    let entry = blocking(move || {
        match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => return Err(FsError::DirExists(path)),
            Ok(_) => return Err(FsError::ExistsNotDir(path)),
            Err(e) if is_missing(&e) => {}
            Err(e) => return Err(FsError::io("reading file info of", &path, e)),
        }
        if !ensure_dirs(&path, uid, gid)? {
            // Someone else created it between the check and the mkdir.
            return Err(FsError::DirExists(path));
        }
        stat_entry(&path)
    })
    .await
    .map_err(|e| e.to_connect())?;
    Ok(EntryResponse { entry })
}

/// `mkdir -p` that hands every directory it creates to `uid:gid`. Returns
/// whether `dir` itself was created by this call.
pub(crate) fn ensure_dirs(dir: &Path, uid: u32, gid: u32) -> Result<bool, FsError> {
    // Find the deepest ancestor that exists, then create downwards from it.
    let mut missing = Vec::new();
    let mut cur = dir;
    loop {
        match std::fs::metadata(cur) {
            Ok(m) if m.is_dir() => break,
            Ok(_) => return Err(FsError::NotADirectory(cur.to_path_buf())),
            // ENOTDIR too: an ancestor is a file, which the walk up will find.
            Err(e) if is_missing(&e) => missing.push(cur),
            Err(e) => return Err(FsError::io("reading file info of", cur, e)),
        }
        match cur.parent() {
            Some(p) => cur = p,
            None => break,
        }
    }
    let mut created_last = false;
    for d in missing.into_iter().rev() {
        match std::fs::DirBuilder::new().mode(0o755).create(d) {
            Ok(()) => {
                std::os::unix::fs::chown(d, Some(uid), Some(gid)).map_err(|e| FsError::io("changing owner of", d, e))?;
                created_last = true;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && std::fs::metadata(d).is_ok_and(|m| m.is_dir()) => {
                created_last = false;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(FsError::NotADirectory(d.to_path_buf())),
            Err(e) => return Err(FsError::io("creating directory", d, e)),
        }
    }
    Ok(created_last)
}

async fn move_entry(agent: &Agent, body: Incoming, ctx: &RequestCtx) -> Result<EntryResponse, ConnectError> {
    let r: MoveRequest = rpc::unary(body).await?;
    let source = resolve(agent, ctx, &r.source);
    let destination = resolve(agent, ctx, &r.destination);
    let (uid, gid) = (ctx.user.uid, ctx.user.gid);
    let entry = blocking(move || {
        // Check the source first so a missing source is reported as such
        // rather than after creating the destination's parents.
        std::fs::symlink_metadata(&source).map_err(|e| FsError::io("reading file info of", &source, e))?;
        // envd creates the destination's parent directories, owned by the user.
        if let Some(parent) = destination.parent() {
            ensure_dirs(parent, uid, gid)?;
        }
        std::fs::rename(&source, &destination).map_err(|e| FsError::io("moving", &source, e))?;
        stat_entry(&destination)
    })
    .await
    .map_err(|e| e.to_connect())?;
    Ok(EntryResponse { entry })
}

async fn list_dir(agent: &Agent, body: Incoming, ctx: &RequestCtx) -> Result<ListDirResponse, ConnectError> {
    let r: ListDirRequest = rpc::unary(body).await?;
    let path = resolve(agent, ctx, &r.path);
    // Depth 0 is the proto default, meaning "just this directory".
    let depth = r.depth.max(1);
    let entries = blocking(move || {
        let meta = std::fs::metadata(&path).map_err(|e| FsError::io("reading file info of", &path, e))?;
        if !meta.is_dir() {
            return Err(FsError::NotADirectory(path));
        }
        let mut out = Vec::new();
        walk(&path, depth, &mut Names::default(), &mut out)?;
        Ok(out)
    })
    .await
    .map_err(|e| e.to_connect())?;
    Ok(ListDirResponse { entries })
}

/// Lists `dir` and, while `depth` allows, the real directories below it
/// (symlinked directories are listed but not entered), depth first in name
/// order like Go's `filepath.WalkDir`. Paths keep the requested prefix.
fn walk(dir: &Path, depth: u32, names: &mut Names, out: &mut Vec<EntryInfo>) -> Result<(), FsError> {
    let rd = std::fs::read_dir(dir).map_err(|e| FsError::io("reading directory", dir, e))?;
    let mut children = Vec::new();
    for de in rd {
        let de = de.map_err(|e| FsError::io("reading directory", dir, e))?;
        let is_dir = de.file_type().map(|t| t.is_dir()).unwrap_or(false);
        children.push((de.file_name(), is_dir));
    }
    children.sort();
    for (name, is_dir) in children {
        let child = dir.join(name);
        match entry::entry_info(&child, names) {
            Ok(e) => out.push(e),
            // Removed while we were listing: it is simply not there.
            Err(e) if is_missing(&e) => continue,
            Err(e) => return Err(FsError::io("reading file info of", &child, e)),
        }
        if is_dir && depth > 1 {
            match walk(&child, depth - 1, names, out) {
                Err(FsError::NotFound(_)) => {}
                r => r?,
            }
        }
    }
    Ok(())
}

async fn remove(agent: &Agent, body: Incoming, ctx: &RequestCtx) -> Result<Empty, ConnectError> {
    let r: PathRequest = rpc::unary(body).await?;
    let path = resolve(agent, ctx, &r.path);
    blocking(move || {
        // Like envd (`os.RemoveAll`), removing what is not there succeeds:
        // the SDKs' own tests clean up paths that may not exist.
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if is_missing(&e) => return Ok(()),
            Err(e) => return Err(FsError::io("reading file info of", &path, e)),
        };
        let r = if meta.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        match r {
            Err(e) if !is_missing(&e) => Err(FsError::Io { op: "removing", path, source: e }),
            _ => Ok(()),
        }
    })
    .await
    .map_err(|e| e.to_connect())?;
    Ok(Empty {})
}

async fn open_watch(agent: &Agent, r: WatchRequest, ctx: &RequestCtx) -> Result<DirWatch, FsError> {
    let path = resolve(agent, ctx, &r.path);
    DirWatch::open(path, r.recursive, r.include_entry, r.allow_network_mounts).await
}

async fn watch_dir(agent: &Agent, body: Incoming, ctx: &RequestCtx) -> Resp {
    let r: WatchRequest = match rpc::stream_request(body).await {
        Ok(r) => r,
        Err(e) => return h::stream_err(&e),
    };
    match open_watch(agent, r, ctx).await {
        Ok(w) => h::stream(watch::stream(w, ctx.keepalive)),
        Err(e) => h::stream_err(&e.to_connect()),
    }
}

async fn create_watcher(agent: &Agent, body: Incoming, ctx: &RequestCtx) -> Result<WatcherId, ConnectError> {
    let r: WatchRequest = rpc::unary(body).await?;
    let w = open_watch(agent, r, ctx).await.map_err(|e| e.to_connect())?;
    Ok(WatcherId { watcher_id: agent.watchers.create(w) })
}

async fn get_watcher_events(agent: &Agent, body: Incoming) -> Result<GetWatcherEventsResponse, ConnectError> {
    let r: WatcherId = rpc::unary(body).await?;
    let events = agent.watchers.take(&r.watcher_id).map_err(|e| e.to_connect())?;
    Ok(GetWatcherEventsResponse { events })
}

async fn remove_watcher(agent: &Agent, body: Incoming) -> Result<Empty, ConnectError> {
    let r: WatcherId = rpc::unary(body).await?;
    agent.watchers.remove(&r.watcher_id).map_err(|e| e.to_connect())?;
    Ok(Empty {})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_match_what_the_sdks_branch_on() {
        assert_eq!(FsError::NotFound("/x".into()).to_connect().code, Code::NotFound);
        assert_eq!(FsError::DirExists("/x".into()).to_connect().code, Code::AlreadyExists);
        assert_eq!(FsError::ExistsNotDir("/x".into()).to_connect().code, Code::InvalidArgument);
        assert_eq!(FsError::NotADirectory("/x".into()).to_connect().code, Code::InvalidArgument);
        let e = FsError::io("reading", Path::new("/x"), io::Error::from_raw_os_error(libc::ENOTDIR));
        assert_eq!(e.to_connect().code, Code::NotFound);
        let e = FsError::io("reading", Path::new("/x"), io::Error::from_raw_os_error(libc::EACCES));
        assert_eq!(e.to_connect().code, Code::PermissionDenied);
        assert!(e.to_connect().message.contains("/x"));
    }

    #[test]
    fn ensure_dirs_creates_missing_parents_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (uid, gid) = (nix::unistd::getuid().as_raw(), nix::unistd::getgid().as_raw());
        let deep = dir.path().join("a/b/c");
        assert!(ensure_dirs(&deep, uid, gid).expect("create"));
        assert!(deep.is_dir());
        assert!(!ensure_dirs(&deep, uid, gid).expect("exists"));
        std::fs::write(dir.path().join("f"), b"").expect("write");
        assert!(matches!(ensure_dirs(&dir.path().join("f/g"), uid, gid), Err(FsError::NotADirectory(_))));
    }

    #[test]
    fn walk_respects_depth_and_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("b/deep/deeper")).expect("mkdir");
        std::fs::write(root.join("a.txt"), b"").expect("write");
        std::fs::write(root.join("b/deep/f"), b"").expect("write");
        std::os::unix::fs::symlink(root.join("b"), root.join("link")).expect("symlink");
        let names = |depth| {
            let mut out = Vec::new();
            walk(root, depth, &mut Names::default(), &mut out).expect("walk");
            out.into_iter().map(|e| e.path.strip_prefix(&*root.to_string_lossy()).unwrap_or_default().to_string()).collect::<Vec<_>>()
        };
        assert_eq!(names(1), ["/a.txt", "/b", "/link"]);
        assert_eq!(names(2), ["/a.txt", "/b", "/b/deep", "/link"]);
        assert_eq!(names(3), ["/a.txt", "/b", "/b/deep", "/b/deep/deeper", "/b/deep/f", "/link"]);
    }
}
