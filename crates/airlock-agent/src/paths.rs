//! Path resolution as envd does it: empty → the default working directory,
//! leading `~` → the user's home, relative → joined to the home, and the
//! result lexically cleaned so `..` never climbs above `/`.
//!
//! The agent's root is the sandbox's root, so even an unclean path cannot
//! leave the sandbox; cleaning is for predictable, comparable paths.

use std::path::{Component, Path, PathBuf};

use crate::users::User;

pub fn resolve(path: &str, user: &User, default_workdir: Option<&Path>) -> PathBuf {
    let p = path.trim_end_matches('\0');
    let joined = if p.is_empty() {
        default_workdir.map(Path::to_path_buf).unwrap_or_else(|| user.home.clone())
    } else if p == "~" {
        user.home.clone()
    } else if let Some(rest) = p.strip_prefix("~/") {
        user.home.join(rest)
    } else if p.starts_with('/') {
        PathBuf::from(p)
    } else {
        user.home.join(p)
    };
    clean(&joined)
}

/// Lexical normalisation: removes `.`, resolves `..` against the preceding
/// component, never above the root.
pub fn clean(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> User {
        User { name: "user".into(), uid: 1000, gid: 1000, home: "/home/user".into(), shell: "/bin/bash".into(), groups: vec![] }
    }

    #[test]
    fn resolves_like_envd() {
        let u = user();
        assert_eq!(resolve("", &u, None), PathBuf::from("/home/user"));
        assert_eq!(resolve("", &u, Some(Path::new("/work"))), PathBuf::from("/work"));
        assert_eq!(resolve("~/a/b", &u, None), PathBuf::from("/home/user/a/b"));
        assert_eq!(resolve("a/./b/../c", &u, None), PathBuf::from("/home/user/a/c"));
        assert_eq!(resolve("/../../etc/passwd", &u, None), PathBuf::from("/etc/passwd"));
        assert_eq!(resolve("../../../../x", &u, None), PathBuf::from("/x"));
    }
}
