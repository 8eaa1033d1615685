//! Sandbox users, read from the sandbox's own `/etc/passwd` and `/etc/group`.
//!
//! The agent parses these files itself instead of calling `getpwnam`: glibc's
//! NSS would read the sandbox's `nsswitch.conf` and could `dlopen` modules
//! from the template, i.e. run sandbox-controlled code inside the agent.

use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    pub shell: String,
    /// Supplementary groups, from `/etc/group`.
    pub groups: Vec<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("user '{0}' does not exist in the sandbox's /etc/passwd (was the file replaced or edited?)")]
    Unknown(String),
    #[error("reading {path}")]
    Read {
        path: &'static str,
        #[source]
        source: std::io::Error,
    },
}

pub fn lookup(name: &str) -> Result<User, UserError> {
    lookup_in(name, "/etc/passwd", "/etc/group")
}

pub fn lookup_in(name: &str, passwd: &'static str, group: &'static str) -> Result<User, UserError> {
    let text = std::fs::read_to_string(passwd).map_err(|source| UserError::Read { path: passwd, source })?;
    let mut user = None;
    for line in text.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 7 || f[0] != name {
            continue;
        }
        let (Ok(uid), Ok(gid)) = (f[2].parse(), f[3].parse()) else { continue };
        user = Some(User { name: name.to_string(), uid, gid, home: PathBuf::from(if f[5].is_empty() { "/" } else { f[5] }), shell: f[6].to_string(), groups: Vec::new() });
        break;
    }
    let mut user = user.ok_or_else(|| UserError::Unknown(name.to_string()))?;
    if let Ok(groups) = std::fs::read_to_string(group) {
        for line in groups.lines() {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 4 {
                continue;
            }
            if f[3].split(',').any(|m| m == name) {
                if let Ok(g) = f[2].parse::<u32>() {
                    if g != user.gid {
                        user.groups.push(g);
                    }
                }
            }
        }
    }
    Ok(user)
}

/// Name of a uid or gid for display (`EntryInfo.owner`/`group`); the
/// number as text when the sandbox has no entry for it.
pub fn name_of(id: u32, file: &str) -> String {
    if let Ok(text) = std::fs::read_to_string(file) {
        for line in text.lines() {
            let mut f = line.split(':');
            let (Some(n), _, Some(i)) = (f.next(), f.next(), f.next()) else { continue };
            if i.parse::<u32>() == Ok(id) {
                return n.to_string();
            }
        }
    }
    id.to_string()
}
