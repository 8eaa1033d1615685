//! `EntryInfo` for a path: what `Stat`, `ListDir`, `Move`, `MakeDir` and
//! watch events with `include_entry` report about a file.
//!
//! Everything here is blocking filesystem work; callers run it on the
//! blocking pool. Owner and group names come from the sandbox's own
//! `/etc/passwd` and `/etc/group` (see `users`), cached per request because a
//! directory listing asks for the same few ids over and over.

use std::collections::HashMap;
use std::fs::{FileType as StdFileType, Metadata};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use airlock_proto::envd::{EntryInfo, FileType};
use airlock_proto::time::rfc3339;

use super::xattr;
use crate::users;

/// uid/gid → name lookups for one request.
#[derive(Debug, Default)]
pub struct Names {
    users: HashMap<u32, String>,
    groups: HashMap<u32, String>,
}

impl Names {
    fn owner(&mut self, uid: u32) -> String {
        self.users.entry(uid).or_insert_with(|| users::name_of(uid, "/etc/passwd")).clone()
    }

    fn group(&mut self, gid: u32) -> String {
        self.groups.entry(gid).or_insert_with(|| users::name_of(gid, "/etc/group")).clone()
    }
}

/// Describes `path` without following it if it is a symlink: the entry is
/// the link itself (its name, path, size, times and `ls` permissions), but
/// its type and mode are those of what it points to, and `symlink_target`
/// is the fully resolved target, as envd reports them. A dangling link is
/// reported as a symlink.
pub fn entry_info(path: &Path, names: &mut Names) -> io::Result<EntryInfo> {
    let meta = std::fs::symlink_metadata(path)?;
    let mut entry = EntryInfo {
        name: display_name(path),
        file_type: file_type(meta.file_type()),
        path: path.to_string_lossy().into_owned(),
        size: i64::try_from(meta.len()).unwrap_or(i64::MAX),
        mode: meta.mode() & 0o7777,
        permissions: permissions(meta.mode(), meta.file_type()),
        owner: names.owner(meta.uid()),
        group: names.group(meta.gid()),
        modified_time: meta.modified().ok().map(rfc3339),
        ..Default::default()
    };
    let target_meta: Option<Metadata> = if meta.file_type().is_symlink() {
        entry.is_symlink = true;
        entry.file_type = FileType::Symlink;
        // Like envd, the target is the fully resolved path; a dangling link
        // falls back to the link's own path.
        // Resolved without magic links: a link to /proc/self/exe must not
        // reveal the host path of the agent's binary.
        // One open of what the link leads to gives both its path and its metadata.
        let target = crate::safe_open::open(path, libc::O_PATH, 0).ok();
        let real = target.as_ref().and_then(|f| crate::safe_open::real_path(f).ok()).unwrap_or_else(|| path.to_path_buf());
        entry.symlink_target = Some(real.to_string_lossy().into_owned());
        target.and_then(|f| f.metadata().ok())
    } else {
        Some(meta)
    };
    if let Some(t) = &target_meta {
        if entry.is_symlink {
            entry.file_type = file_type(t.file_type());
            entry.mode = t.mode() & 0o7777;
        }
        // Metadata lives on the file the link points to; xattrs are not
        // allowed on symlinks themselves in the user namespace.
        match xattr::read_path(path) {
            Ok(m) => entry.metadata = m,
            // The entry is still worth reporting without its metadata.
            Err(e) => tracing::debug!(path = %path.display(), error = %e, "reading metadata xattrs"),
        }
    }
    Ok(entry)
}

/// The last path component, or `/` for the root.
pub fn display_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "/".to_string())
}

pub fn file_type(t: StdFileType) -> FileType {
    if t.is_file() {
        FileType::File
    } else if t.is_dir() {
        FileType::Directory
    } else if t.is_symlink() {
        FileType::Symlink
    } else {
        FileType::Unspecified
    }
}

/// `ls -l` style permissions: type character, then `rwx` triplets with
/// setuid/setgid/sticky folded in as `s`/`S`/`t`/`T`.
pub fn permissions(mode: u32, t: StdFileType) -> String {
    let kind = if t.is_dir() {
        'd'
    } else if t.is_symlink() {
        'l'
    } else if t.is_char_device() {
        'c'
    } else if t.is_block_device() {
        'b'
    } else if t.is_fifo() {
        'p'
    } else if t.is_socket() {
        's'
    } else {
        '-'
    };
    permissions_from(kind, mode)
}

fn permissions_from(kind: char, mode: u32) -> String {
    let bit = |mask: u32, c: char| if mode & mask != 0 { c } else { '-' };
    let exec = |x: u32, special: u32, set: char, unset: char| match (mode & x != 0, mode & special != 0) {
        (true, true) => set,
        (false, true) => unset,
        (true, false) => 'x',
        (false, false) => '-',
    };
    [
        kind,
        bit(0o400, 'r'),
        bit(0o200, 'w'),
        exec(0o100, 0o4000, 's', 'S'),
        bit(0o040, 'r'),
        bit(0o020, 'w'),
        exec(0o010, 0o2000, 's', 'S'),
        bit(0o004, 'r'),
        bit(0o002, 'w'),
        exec(0o001, 0o1000, 't', 'T'),
    ]
    .iter()
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_look_like_ls() {
        assert_eq!(permissions_from('-', 0o644), "-rw-r--r--");
        assert_eq!(permissions_from('d', 0o755), "drwxr-xr-x");
        assert_eq!(permissions_from('l', 0o777), "lrwxrwxrwx");
        assert_eq!(permissions_from('d', 0o1777), "drwxrwxrwt");
        assert_eq!(permissions_from('-', 0o4755), "-rwsr-xr-x");
        assert_eq!(permissions_from('-', 0o2644), "-rw-r-Sr--");
        assert_eq!(permissions_from('d', 0o1770), "drwxrwx--T");
        assert_eq!(permissions_from('-', 0), "----------");
    }

    #[test]
    fn symlink_reports_target_type_and_resolved_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let real = dir.path().join("real");
        std::fs::create_dir(&real).expect("mkdir");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).expect("symlink");
        let e = entry_info(&link, &mut Names::default()).expect("stat");
        assert_eq!(e.name, "link");
        assert_eq!(e.file_type, FileType::Directory);
        assert!(e.is_symlink);
        assert!(e.permissions.starts_with('l'));
        let canon = std::fs::canonicalize(&real).expect("canonicalize");
        assert_eq!(e.symlink_target.as_deref(), Some(canon.to_string_lossy().as_ref()));

        let dangling = dir.path().join("dangling");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).expect("symlink");
        let e = entry_info(&dangling, &mut Names::default()).expect("stat");
        assert_eq!(e.file_type, FileType::Symlink);
        assert!(e.is_symlink);
    }

    #[test]
    fn regular_file_entry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("a.txt");
        std::fs::write(&f, b"test").expect("write");
        let e = entry_info(&f, &mut Names::default()).expect("stat");
        assert_eq!(e.file_type, FileType::File);
        assert_eq!(e.size, 4);
        assert_eq!(e.path, f.to_string_lossy());
        assert!(e.modified_time.is_some());
        assert!(!e.is_symlink && e.symlink_target.is_none());
    }
}
