//! Directory watching on inotify, for the `WatchDir` stream and the
//! `CreateWatcher`/`GetWatcherEvents`/`RemoveWatcher` polling trio.
//!
//! One inotify instance per watch, read through tokio's `AsyncFd` so no
//! thread is parked per watcher; only directory scans (the initial recursive
//! walk, new subdirectories) and `include_entry` stats go to the blocking
//! pool. Events are translated the way envd's fsnotify-based watcher does:
//! create/moved-to → CREATE, moved-from → RENAME, attrib → CHMOD, modify →
//! WRITE, delete → REMOVE, named relative to the watched directory.
//!
//! Recursive watches follow the tree as it changes: a directory created or
//! moved in gets its own watch (and CREATE events for anything already
//! inside it, which may have appeared before the watch existed), a directory
//! moved away or deleted is forgotten. Symlinked directories are never
//! followed. Dropping a `DirWatch` closes its inotify instance, which is how
//! a watch stops when its client goes away.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use airlock_proto::connect::{self, ConnectError};
use airlock_proto::envd::{EventType, FilesystemEvent, WatchDirResponse, WatchEventKind};
use bytes::Bytes;
use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, InotifyEvent, WatchDescriptor};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::entry::{self, Names};
use super::{blocking, FsError};

/// Events a polling watcher keeps between `GetWatcherEvents` calls; beyond
/// this the oldest are dropped so a forgotten watcher cannot grow without bound.
pub const MAX_BUFFERED: usize = 10_000;

/// What every watched directory reports.
fn dir_mask() -> AddWatchFlags {
    AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_MODIFY
        | AddWatchFlags::IN_ATTRIB
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVE_SELF
}

/// Filesystems envd refuses to watch unless asked (`allow_network_mounts`):
/// inotify sees only local changes there. NFS, CIFS, SMB, SMB2, FUSE.
const NETWORK_FS_MAGIC: [i64; 5] = [0x6969, 0xFF53_4D42, 0x517B, 0xFE53_4D42, 0x6573_5546];

/// The inotify fd as tokio's `AsyncFd` wants it; shared with the blocking
/// pool, which adds watches while scanning new directories.
struct InotifyFd(Arc<Inotify>);

impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// Which watch events mean, in envd's order for an event carrying several.
/// `named` is false for events about the watched directory itself, the
/// only ones for which the `*_SELF` bits are reported.
pub fn event_types(mask: AddWatchFlags, named: bool) -> Vec<EventType> {
    let has = |f: AddWatchFlags| mask.intersects(f);
    let mut out = Vec::new();
    if has(AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO) {
        out.push(EventType::Create);
    }
    if has(AddWatchFlags::IN_MOVED_FROM) || (!named && has(AddWatchFlags::IN_MOVE_SELF)) {
        out.push(EventType::Rename);
    }
    if has(AddWatchFlags::IN_ATTRIB) {
        out.push(EventType::Chmod);
    }
    if has(AddWatchFlags::IN_MODIFY) {
        out.push(EventType::Write);
    }
    if has(AddWatchFlags::IN_DELETE) || (!named && has(AddWatchFlags::IN_DELETE_SELF)) {
        out.push(EventType::Remove);
    }
    out
}

/// Event name for a path relative to the watched directory; the directory
/// itself is `.`, as Go's `filepath.Rel` names it in envd.
fn event_name(rel: &Path) -> String {
    if rel.as_os_str().is_empty() {
        ".".to_string()
    } else {
        rel.to_string_lossy().into_owned()
    }
}

/// Directories added to an inotify instance by one scan, and (when asked)
/// every entry found below the starting directories.
#[derive(Default)]
struct Scan {
    added: Vec<(WatchDescriptor, PathBuf)>,
    found: Vec<PathBuf>,
}

/// Adds a watch on each directory in `start` (relative to `root`) and on
/// every real directory below it, depth first in name order. Directories
/// that vanish or cannot be read are skipped: they are not part of the tree
/// any more, or never could be watched.
fn watch_tree(ino: &Inotify, root: &Path, start: Vec<PathBuf>, collect: bool) -> Result<Scan, FsError> {
    let mut scan = Scan::default();
    let mut stack = start;
    stack.reverse();
    while let Some(rel) = stack.pop() {
        let abs = root.join(&rel);
        match ino.add_watch(&abs, dir_mask() | AddWatchFlags::IN_ONLYDIR | AddWatchFlags::IN_DONT_FOLLOW) {
            Ok(wd) => scan.added.push((wd, rel.clone())),
            Err(Errno::ENOENT | Errno::ENOTDIR | Errno::EACCES | Errno::ELOOP) => continue,
            Err(e) => return Err(FsError::WatchLimit { path: abs, source: e.into() }),
        }
        let mut subdirs = Vec::new();
        for (name, is_dir) in children(&abs) {
            let child = rel.join(name);
            if collect {
                scan.found.push(child.clone());
            }
            if is_dir {
                subdirs.push(child);
            }
        }
        // The stack pops from the end: push in reverse to visit in name order.
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(scan)
}

/// Names in a directory, sorted, with whether each is a real (not
/// symlinked) directory. Unreadable directories list as empty.
fn children(dir: &Path) -> Vec<(std::ffi::OsString, bool)> {
    let Ok(rd) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out: Vec<_> = rd
        .filter_map(Result::ok)
        .map(|e| {
            let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
            (e.file_name(), is_dir)
        })
        .collect();
    out.sort();
    out
}

fn setup(root: &Path, recursive: bool, allow_network_mounts: bool) -> Result<(Inotify, WatchDescriptor, Scan), FsError> {
    let meta = std::fs::metadata(root).map_err(|e| FsError::io("stat", root, e))?;
    if !meta.is_dir() {
        return Err(FsError::NotADirectory(root.to_path_buf()));
    }
    if !allow_network_mounts {
        let st = nix::sys::statfs::statfs(root).map_err(|e| FsError::io("statfs", root, e.into()))?;
        #[allow(clippy::unnecessary_cast)] // the field's type differs between libcs
        let magic = st.filesystem_type().0 as i64;
        if NETWORK_FS_MAGIC.contains(&magic) {
            return Err(FsError::NetworkMount(root.to_path_buf()));
        }
    }
    let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).map_err(|e| FsError::WatchLimit { path: root.to_path_buf(), source: e.into() })?;
    // The root may itself be a symlink to a directory; follow that one.
    let root_wd = ino.add_watch(root, dir_mask() | AddWatchFlags::IN_ONLYDIR).map_err(|e| FsError::WatchLimit { path: root.to_path_buf(), source: e.into() })?;
    let scan = if recursive {
        let subdirs = children(root).into_iter().filter(|(_, d)| *d).map(|(n, _)| PathBuf::from(n)).collect();
        watch_tree(&ino, root, subdirs, false)?
    } else {
        Scan::default()
    };
    Ok((ino, root_wd, scan))
}

/// A live watch on one directory (and, when recursive, everything below it).
pub struct DirWatch {
    io: AsyncFd<InotifyFd>,
    ino: Arc<Inotify>,
    root: PathBuf,
    root_wd: WatchDescriptor,
    recursive: bool,
    include_entry: bool,
    /// Watched directories by descriptor, relative to `root` (empty = root).
    dirs: HashMap<WatchDescriptor, PathBuf>,
}

impl DirWatch {
    /// Starts watching `root`, which must be an existing directory.
    pub async fn open(root: PathBuf, recursive: bool, include_entry: bool, allow_network_mounts: bool) -> Result<Self, FsError> {
        let r = root.clone();
        let (ino, root_wd, scan) = blocking(move || setup(&r, recursive, allow_network_mounts)).await?;
        let ino = Arc::new(ino);
        // SAFETY: the `Arc` inside `InotifyFd` keeps the inotify fd open
        // for as long as the `AsyncFd` lives, and it always returns that fd.
        let io = unsafe { AsyncFd::register_with_interest(InotifyFd(ino.clone()), Interest::READABLE) }
            .map_err(|e| FsError::io("registering inotify fd for", &root, e.into_parts().1))?;
        let mut dirs: HashMap<_, _> = scan.added.into_iter().collect();
        dirs.insert(root_wd, PathBuf::new());
        Ok(Self { io, ino, root, root_wd, recursive, include_entry, dirs })
    }

    /// Waits for the next non-empty batch of events. Takes and returns the
    /// watch so a caller can keep the future across `select!` iterations:
    /// dropping it half-way would lose events already read from the kernel.
    pub async fn next(mut self) -> (Self, Result<Vec<FilesystemEvent>, FsError>) {
        let r = self.next_batch().await;
        (self, r)
    }

    async fn next_batch(&mut self) -> Result<Vec<FilesystemEvent>, FsError> {
        loop {
            let raw = self.read_raw().await?;
            let changes = self.translate(raw).await?;
            if !changes.is_empty() {
                return self.with_entries(changes).await;
            }
        }
    }

    async fn read_raw(&self) -> Result<Vec<InotifyEvent>, FsError> {
        loop {
            let mut guard = self.io.readable().await.map_err(|e| FsError::io("waiting on inotify for", &self.root, e))?;
            match guard.try_io(|fd| fd.get_ref().0.read_events().map_err(io::Error::from)) {
                Ok(Ok(events)) => return Ok(events),
                Ok(Err(e)) => return Err(FsError::io("reading inotify events for", &self.root, e)),
                Err(_would_block) => continue,
            }
        }
    }

    /// Turns raw inotify events into (relative path, type) pairs and keeps
    /// the set of watched directories in step with the tree.
    async fn translate(&mut self, raw: Vec<InotifyEvent>) -> Result<Vec<(PathBuf, EventType)>, FsError> {
        let mut out = Vec::new();
        for ev in raw {
            if ev.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                tracing::warn!(root = %self.root.display(), "inotify queue overflowed; some events were lost");
                continue;
            }
            let Some(dir) = self.dirs.get(&ev.wd).cloned() else { continue };
            if ev.mask.contains(AddWatchFlags::IN_IGNORED) {
                self.dirs.remove(&ev.wd);
                continue;
            }
            let rel = match &ev.name {
                Some(n) => dir.join(n),
                // A subdirectory's own events repeat what its parent's watch
                // already reported by name; only the root's matter.
                None if ev.wd == self.root_wd => PathBuf::new(),
                None => continue,
            };
            for t in event_types(ev.mask, ev.name.is_some()) {
                out.push((rel.clone(), t));
            }
            if !self.recursive || ev.name.is_none() || !ev.mask.contains(AddWatchFlags::IN_ISDIR) {
                continue;
            }
            if ev.mask.intersects(AddWatchFlags::IN_MOVED_FROM | AddWatchFlags::IN_DELETE) {
                self.forget(&rel);
            }
            if ev.mask.intersects(AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO) {
                let created = ev.mask.contains(AddWatchFlags::IN_CREATE);
                let (ino, root, start) = (self.ino.clone(), self.root.clone(), vec![rel.clone()]);
                match blocking(move || watch_tree(&ino, &root, start, created)).await {
                    Ok(scan) => {
                        self.dirs.extend(scan.added);
                        out.extend(scan.found.into_iter().map(|p| (p, EventType::Create)));
                    }
                    // Running out of watches must not end the watch: the
                    // rest of the tree is still observed.
                    Err(e) => tracing::warn!(root = %self.root.display(), error = %e, "not watching new directory"),
                }
            }
        }
        Ok(out)
    }

    /// Stops watching a directory that left the tree (and everything below
    /// it), so its later events are not reported under a stale name.
    fn forget(&mut self, rel: &Path) {
        let gone: Vec<WatchDescriptor> = self.dirs.iter().filter(|(_, p)| p.starts_with(rel)).map(|(wd, _)| *wd).collect();
        for wd in gone {
            self.dirs.remove(&wd);
            // Already gone when the directory was deleted; that is fine.
            let _ = self.ino.rm_watch(wd);
        }
    }

    async fn with_entries(&self, changes: Vec<(PathBuf, EventType)>) -> Result<Vec<FilesystemEvent>, FsError> {
        if !self.include_entry {
            return Ok(changes.into_iter().map(|(rel, t)| FilesystemEvent { name: event_name(&rel), event_type: t, entry: None }).collect());
        }
        let root = self.root.clone();
        blocking(move || {
            let mut names = Names::default();
            let mut cache: HashMap<PathBuf, Option<airlock_proto::envd::EntryInfo>> = HashMap::new();
            let events = changes
                .into_iter()
                .map(|(rel, t)| {
                    // Best effort: a removed or renamed-away path has no entry.
                    let entry = cache.entry(rel.clone()).or_insert_with(|| entry::entry_info(&root.join(&rel), &mut names).ok()).clone();
                    FilesystemEvent { name: event_name(&rel), event_type: t, entry }
                })
                .collect();
            Ok(events)
        })
        .await
    }
}

/// Runs a `WatchDir` stream: `start`, then events as they happen, a
/// keepalive after `keepalive` of silence, until the client goes away (the
/// response body is dropped and the channel closes) or the watch fails.
pub fn stream(watch: DirWatch, keepalive: Duration) -> mpsc::Receiver<Bytes> {
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        let msg = |event| connect::json_envelope(&WatchDirResponse { event });
        if tx.send(msg(WatchEventKind::Start {})).await.is_err() {
            return;
        }
        let mut next = Box::pin(watch.next());
        let mut deadline = tokio::time::Instant::now() + keepalive;
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                (watch, r) = &mut next => {
                    match r {
                        Ok(events) => {
                            for ev in events {
                                if tx.send(msg(WatchEventKind::Filesystem(ev))).await.is_err() {
                                    return;
                                }
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "watch failed");
                            let _ = tx.send(connect::end_stream(Some(&e.to_connect()))).await;
                            return;
                        }
                    }
                    deadline = tokio::time::Instant::now() + keepalive;
                    next = Box::pin(watch.next());
                }
                _ = tokio::time::sleep_until(deadline) => {
                    if tx.send(msg(WatchEventKind::Keepalive {})).await.is_err() {
                        return;
                    }
                    deadline = tokio::time::Instant::now() + keepalive;
                }
            }
        }
    });
    rx
}

/// Events waiting for a `GetWatcherEvents` call.
#[derive(Default)]
struct Buffer {
    events: VecDeque<FilesystemEvent>,
    dropped: u64,
    /// Set when the watch failed; reported once the buffered events are taken.
    error: Option<ConnectError>,
}

struct Polled {
    buf: Arc<Mutex<Buffer>>,
    task: AbortHandle,
}

impl Drop for Polled {
    fn drop(&mut self) {
        // Ends the task, which drops the watch and closes its inotify fd.
        self.task.abort();
    }
}

/// Polling watchers created by `CreateWatcher`, by id.
#[derive(Default)]
pub struct Watchers {
    map: Mutex<HashMap<String, Polled>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind,
    // still consistent enough to keep serving.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Watchers {
    /// Starts buffering the watch's events; returns the new watcher's id.
    pub fn create(&self, watch: DirWatch) -> String {
        let buf = Arc::new(Mutex::new(Buffer::default()));
        let sink = buf.clone();
        let task = tokio::spawn(async move {
            let mut watch = watch;
            loop {
                let (w, r) = watch.next().await;
                watch = w;
                let mut b = lock(&sink);
                match r {
                    Ok(events) => {
                        for ev in events {
                            if b.events.len() >= MAX_BUFFERED {
                                b.events.pop_front();
                                b.dropped += 1;
                                if b.dropped == 1 {
                                    tracing::warn!(max = MAX_BUFFERED, "watcher buffer full; dropping oldest events");
                                }
                            }
                            b.events.push_back(ev);
                        }
                    }
                    Err(e) => {
                        b.error = Some(e.to_connect());
                        return;
                    }
                }
            }
        });
        let id = random_id();
        lock(&self.map).insert(id.clone(), Polled { buf, task: task.abort_handle() });
        id
    }

    /// Takes every event buffered since the last call.
    pub fn take(&self, id: &str) -> Result<Vec<FilesystemEvent>, FsError> {
        let map = lock(&self.map);
        let p = map.get(id).ok_or_else(|| FsError::UnknownWatcher(id.to_string()))?;
        let mut b = lock(&p.buf);
        b.dropped = 0;
        if b.events.is_empty() {
            if let Some(e) = b.error.clone() {
                return Err(FsError::WatchFailed(e));
            }
        }
        Ok(b.events.drain(..).collect())
    }

    pub fn remove(&self, id: &str) -> Result<(), FsError> {
        let removed = lock(&self.map).remove(id);
        removed.map(drop).ok_or_else(|| FsError::UnknownWatcher(id.to_string()))
    }
}

/// An unguessable watcher id (`w` + 24 hex digits), like envd's `w…` ids.
pub(crate) fn random_id() -> String {
    let mut b = [0u8; 12];
    // SAFETY: `b` is valid for `b.len()` writable bytes.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), libc::GRND_NONBLOCK) };
    if n != b.len() as isize {
        // Only uniqueness is essential here (every client of the agent holds
        // the same access token), so fall back to a hashed counter and clock.
        use sha2::Digest;
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let mut h = sha2::Sha256::new();
        h.update(COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
        h.update(format!("{:?}", std::time::SystemTime::now()).as_bytes());
        h.update(std::process::id().to_le_bytes());
        b.copy_from_slice(&h.finalize()[..12]);
    }
    let mut s = String::with_capacity(25);
    s.push('w');
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_inotify_masks_like_envd() {
        use AddWatchFlags as F;
        assert_eq!(event_types(F::IN_CREATE, true), vec![EventType::Create]);
        assert_eq!(event_types(F::IN_MOVED_TO | F::IN_ISDIR, true), vec![EventType::Create]);
        assert_eq!(event_types(F::IN_MOVED_FROM, true), vec![EventType::Rename]);
        assert_eq!(event_types(F::IN_MODIFY, true), vec![EventType::Write]);
        assert_eq!(event_types(F::IN_ATTRIB, true), vec![EventType::Chmod]);
        assert_eq!(event_types(F::IN_DELETE, true), vec![EventType::Remove]);
        // Self events count only for the watched directory itself.
        assert_eq!(event_types(F::IN_DELETE_SELF, false), vec![EventType::Remove]);
        assert_eq!(event_types(F::IN_MOVE_SELF, false), vec![EventType::Rename]);
        assert!(event_types(F::IN_DELETE_SELF, true).is_empty());
        assert!(event_types(F::IN_IGNORED, false).is_empty());
    }

    #[test]
    fn names_are_relative_to_the_watched_dir() {
        assert_eq!(event_name(Path::new("")), ".");
        assert_eq!(event_name(Path::new("a/b.txt")), "a/b.txt");
    }

    #[test]
    fn ids_are_distinct() {
        let a = random_id();
        assert_eq!(a.len(), 25);
        assert!(a.starts_with('w'));
        assert_ne!(a, random_id());
    }

    async fn collect(w: DirWatch, want: usize) -> (DirWatch, Vec<(String, EventType)>) {
        let mut got = Vec::new();
        let mut w = w;
        while got.len() < want {
            let (nw, r) = tokio::time::timeout(Duration::from_secs(5), w.next()).await.expect("events in time");
            w = nw;
            got.extend(r.expect("watch").into_iter().map(|e| (e.name, e.event_type)));
        }
        (w, got)
    }

    #[tokio::test]
    async fn recursive_watch_follows_new_directories() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_path_buf();
        let w = DirWatch::open(root.clone(), true, false, false).await.expect("watch");
        std::fs::create_dir(root.join("sub")).expect("mkdir");
        let (w, got) = collect(w, 1).await;
        assert_eq!(got[0], ("sub".to_string(), EventType::Create));
        std::fs::write(root.join("sub/f.txt"), b"x").expect("write");
        let (_w, got) = collect(w, 2).await;
        assert!(got.contains(&("sub/f.txt".to_string(), EventType::Create)), "{got:?}");
        assert!(got.contains(&("sub/f.txt".to_string(), EventType::Write)), "{got:?}");
    }

    #[tokio::test]
    async fn flat_watch_ignores_subdirectories() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_path_buf();
        std::fs::create_dir(root.join("sub")).expect("mkdir");
        let w = DirWatch::open(root.clone(), false, true, false).await.expect("watch");
        std::fs::write(root.join("sub/inner"), b"x").expect("write");
        std::fs::write(root.join("top"), b"x").expect("write");
        let (_w, got) = collect(w, 1).await;
        assert_eq!(got[0], ("top".to_string(), EventType::Create));
        assert!(got.iter().all(|(n, _)| n == "top"), "{got:?}");
    }

    #[tokio::test]
    async fn missing_and_non_directory_roots_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = DirWatch::open(dir.path().join("nope"), false, false, false).await;
        assert!(matches!(missing, Err(FsError::NotFound(_))));
        let file = dir.path().join("f");
        std::fs::write(&file, b"").expect("write");
        let not_dir = DirWatch::open(file, false, false, false).await;
        assert!(matches!(not_dir, Err(FsError::NotADirectory(_))));
    }
}
