//! Templates on disk: read-only root-filesystem layers plus `/usr` layers.
//!
//! The built-in `base` template is made from the host: its root layer is a
//! small tree with a fresh `/etc` (generated users, hosts and resolver files
//! plus an allow-list of harmless host configuration such as CA
//! certificates and the dynamic-linker cache: never secrets such as
//! `shadow`, private keys or package-manager credentials), an empty home
//! for `user` (uid 1000), and merged-`/usr` symlinks; its `/usr` layer is the
//! host's own `/usr`, shared read-only. Layers store canonical ids (root 0,
//! `user` 1000); sandboxes see them through idmapped mounts.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Layers taken of sandboxes (snapshots, forks, imports) are named so.
pub const SNAPSHOT_LAYER_PREFIX: &str = "snap-";

/// Bumped whenever the generated base layer changes, so old data
/// directories get a fresh one.
const BASE_VERSION: u32 = 4;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Template {
    pub name: String,
    /// Root layers, topmost first.
    pub root_layers: Vec<PathBuf>,
    /// `/usr` layers, topmost first.
    pub usr_layers: Vec<PathBuf>,
    pub default_user: String,
    #[serde(default)]
    pub version: u32,
    /// Default working directory of commands (`WORKDIR`).
    #[serde(default)]
    pub workdir: Option<String>,
    /// Environment every command gets (`ENV`).
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// Started in the background when a sandbox starts (services).
    #[serde(default)]
    pub start_cmd: Option<String>,
    /// Polled until it succeeds before a sandbox counts as ready.
    #[serde(default)]
    pub ready_cmd: Option<String>,
    /// Cache key of the last layer: identifies the template's content.
    #[serde(default)]
    pub digest: String,
    /// Other names this template answers to.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Unix milliseconds.
    #[serde(default)]
    pub created_at: i64,
    /// Bytes in the template's own layers (host `/usr` not counted).
    #[serde(default)]
    pub size_bytes: u64,
    /// E2B's `public` flag (`PATCH /templates/{id}`); every key of this
    /// server may use every template either way.
    #[serde(default)]
    pub public: bool,
    /// Set when this is a snapshot of a sandbox rather than a build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotOrigin>,
    /// In a cluster: this copy is the cluster's (published from here, or
    /// fetched from another node), as of that manifest revision. `None`: made
    /// here and not published yet (or not in a cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterCopy>,
}

/// How a node's copy of a template stands to the cluster's manifest of it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterCopy {
    /// The node it was made on.
    pub node: String,
    /// The revision of the manifest in the cluster store this copy matches.
    pub revision: i64,
    /// Which cluster store (etcd's cluster id) that revision is of.
    #[serde(default)]
    pub store: String,
}

/// Where a snapshot came from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SnapshotOrigin {
    /// The sandbox it was taken of.
    pub sandbox_id: String,
    /// The template (or snapshot) that sandbox was created from.
    pub template: String,
    /// Whether it was given a name (else its name is a generated id).
    #[serde(default)]
    pub named: bool,
    /// Bytes of the snapshot's own layer (what the sandbox wrote).
    #[serde(default)]
    pub layer_bytes: u64,
}

impl Template {
    /// The root filesystem a sandbox of this template starts from.
    pub fn rootfs(&self) -> crate::RootFs {
        crate::RootFs {
            root_layers: self.root_layers.clone(),
            usr_layers: self.usr_layers.clone(),
            default_user: self.default_user.clone(),
            workdir: self.workdir.clone(),
            env: self.env.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("template {0} not found")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> TemplateError {
    let what = what.into();
    move |source| TemplateError::Io { what, source }
}

pub(crate) fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> std::io::Result<T> {
    let data = fs::read(path)?;
    serde_json::from_slice(&data).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Replaced atomically: written aside, then renamed.
pub(crate) fn write_json<T: Serialize>(path: &Path, v: &T) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, serde_json::to_vec_pretty(v).map_err(std::io::Error::other)?)?;
    fs::rename(&tmp, path)
}

/// Templates kept under `<data>/templates/<name>/`.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    pub(crate) fn dir(&self) -> PathBuf {
        self.dir.clone()
    }

    pub fn valid_name(name: &str) -> bool {
        !name.is_empty() && name.len() <= 128 && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c)) && !name.starts_with('.')
    }

    /// A template by name or alias, or one of its tagged builds
    /// (`name:tag`, see `tags`).
    pub fn get(&self, name: &str) -> Result<Template, TemplateError> {
        match self.get_untagged(name) {
            Ok(t) => Ok(t),
            Err(e) => match crate::tags::split_ref(name) {
                (base, Some(tag)) => self.get_tagged(base, tag).ok_or(e),
                _ => Err(e),
            },
        }
    }

    /// A template by exactly its name or an alias.
    pub(crate) fn get_untagged(&self, name: &str) -> Result<Template, TemplateError> {
        if !Self::valid_name(name) {
            return Err(TemplateError::NotFound(name.to_string()));
        }
        if let Ok(t) = self.read(name) {
            return Ok(t);
        }
        self.list()?.into_iter().find(|t| t.aliases.iter().any(|a| a == name)).ok_or_else(|| TemplateError::NotFound(name.to_string()))
    }

    /// The template stored under exactly `name` (no aliases).
    fn read(&self, name: &str) -> Result<Template, TemplateError> {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(TemplateError::NotFound(name.to_string()));
        }
        read_json(&self.dir.join(name).join("template.json")).map_err(|_| TemplateError::NotFound(name.to_string()))
    }

    /// Every template (not the builder's temporary ones), by name.
    pub fn list(&self) -> Result<Vec<Template>, TemplateError> {
        let mut v = Vec::new();
        let rd = match fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(v),
            Err(e) => return Err(io("listing templates")(e)),
        };
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            if n.starts_with('.') || n == "layers" {
                continue;
            }
            if let Ok(t) = read_json::<Template>(&e.path().join("template.json")) {
                v.push(t);
            }
        }
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(v)
    }

    /// Writes a template's metadata atomically (replacing one of the same name).
    pub fn save(&self, t: &Template) -> Result<(), TemplateError> {
        let d = self.dir.join(&t.name);
        fs::create_dir_all(&d).map_err(io(format!("creating template {}", t.name)))?;
        write_json(&d.join("template.json"), t).map_err(io(format!("writing template {}", t.name)))
    }

    /// Removes a template's metadata. Layers stay (shared, cached) until `gc_layers`.
    pub fn remove(&self, name: &str) -> Result<(), TemplateError> {
        if name == "base" {
            return Err(TemplateError::Io { what: "the base template cannot be removed".into(), source: std::io::Error::from(std::io::ErrorKind::PermissionDenied) });
        }
        let d = self.dir.join(name);
        if !d.join("template.json").exists() {
            return Err(TemplateError::NotFound(name.to_string()));
        }
        fs::remove_dir_all(&d).map_err(io(format!("removing template {name}")))
    }

    /// Where cached layers live: `<templates>/layers/<key>/{root,usr}`.
    pub fn layers_dir(&self) -> PathBuf {
        self.dir.join("layers")
    }

    /// A new, unique directory name for a snapshot's layer under
    /// `layers_dir` (`snap-` + `token`).
    pub fn snapshot_layer(&self, token: &str) -> PathBuf {
        self.layers_dir().join(format!("{SNAPSHOT_LAYER_PREFIX}{token}"))
    }

    /// Deletes layers no template refers to and that are not in `in_use`
    /// (layer directories sandboxes run on, or that are being made). With
    /// `snapshots_only`, build-cache layers are kept (they are a cache, and
    /// collected only when a template is deleted).
    pub fn gc_layers(&self, in_use: &std::collections::HashSet<PathBuf>, snapshots_only: bool) -> Result<usize, TemplateError> {
        let mut used = in_use.clone();
        used.extend(self.layers_referenced());
        let mut n = 0;
        if let Ok(rd) = fs::read_dir(self.layers_dir()) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if snapshots_only && !name.starts_with(SNAPSHOT_LAYER_PREFIX) {
                    continue;
                }
                if !used.contains(&e.path()) && !name.starts_with('.') {
                    let _ = fs::remove_dir_all(e.path());
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// The layer directories templates and their tagged builds name.
    pub fn layers_referenced(&self) -> std::collections::HashSet<PathBuf> {
        let mut used = std::collections::HashSet::new();
        let Ok(rd) = fs::read_dir(&self.dir) else { return used };
        for e in rd.flatten() {
            let own = read_json::<Template>(&e.path().join("template.json")).ok();
            for t in own.into_iter().chain(Self::build_manifests(&e.path())) {
                for p in t.root_layers.iter().chain(&t.usr_layers) {
                    if let Some(parent) = p.parent() {
                        used.insert(parent.to_path_buf());
                    }
                }
            }
        }
        used
    }

    /// Makes sure `base` exists and is current; cheap when it does.
    pub fn ensure_base(&self) -> Result<Template, TemplateError> {
        if let Ok(t) = self.read("base") {
            if t.version == BASE_VERSION && t.digest == base_digest() && t.root_layers.iter().all(|p| p.exists()) {
                return Ok(t);
            }
        }
        fs::create_dir_all(&self.dir).map_err(io("creating template directory"))?;
        let final_dir = self.dir.join("base");
        let tmp = self.dir.join(format!(".base-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        build_base_layer(&tmp.join("root"))?;
        let t = Template {
            name: "base".into(),
            root_layers: vec![final_dir.join("root")],
            usr_layers: vec![PathBuf::from("/usr")],
            default_user: "user".into(),
            version: BASE_VERSION,
            digest: base_digest(),
            created_at: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0),
            size_bytes: crate::layer::dir_size(&tmp.join("root")),
            ..Default::default()
        };
        write_json(&tmp.join("template.json"), &t).map_err(io("writing template.json"))?;
        let _ = fs::remove_dir_all(&final_dir);
        fs::rename(&tmp, &final_dir).map_err(io("installing base template"))?;
        Ok(t)
    }
}

/// Identifies the content of `base`: its layer version and the host's
/// installed packages (dpkg's status file changes whenever they do), so
/// layers built on `base` are rebuilt after the host's `/usr` changes.
pub fn base_digest() -> String {
    let stamp = ["/var/lib/dpkg/status", "/usr/lib/os-release"]
        .iter()
        .filter_map(|p| fs::metadata(p).ok())
        .map(|m| {
            use std::os::unix::fs::MetadataExt;
            format!("{}.{}:{}", m.mtime(), m.mtime_nsec(), m.size())
        })
        .collect::<Vec<_>>()
        .join("/");
    format!("base-v{BASE_VERSION}-{stamp}")
}

const PROFILE: &str = r#"# /etc/profile: login shells (Airlock base template)
if [ "${EUID:-$(id -u)}" -eq 0 ]; then
  PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
else
  PATH="/usr/local/bin:/usr/bin:/bin:/usr/local/games:/usr/games"
fi
export PATH
if [ "${PS1-}" ]; then
  if [ "${BASH-}" ] && [ "$BASH" != "/bin/sh" ]; then
    [ -f /etc/bash.bashrc ] && . /etc/bash.bashrc
  else
    if [ "${EUID:-$(id -u)}" -eq 0 ]; then PS1='# '; else PS1='$ '; fi
  fi
fi
if [ -d /etc/profile.d ]; then
  for i in /etc/profile.d/*.sh; do
    if [ -r "$i" ]; then . "$i"; fi
  done
  unset i
fi
"#;

/// Host `/etc` entries copied into `base`: configuration that programs
/// from the host's `/usr` expect and that carries no secrets.
const ETC_ALLOW: &[&str] = &[
    "alternatives",
    "bash.bashrc",
    "bash_completion",
    "bash_completion.d",
    "ca-certificates",
    "ca-certificates.conf",
    "debian_version",
    "environment",
    "gai.conf",
    "host.conf",
    "inputrc",
    "issue",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "locale.alias",
    "localtime",
    "login.defs",
    "lsb-release",
    "magic",
    "magic.mime",
    "mime.types",
    "networks",
    "os-release",
    "perl",
    "profile",
    "profile.d",
    "protocols",
    "python3",
    "rpc",
    "services",
    "skel",
    "terminfo",
    "timezone",
    "xdg",
    "fonts",
    // R's own configuration (/usr/lib/R/etc links into it).
    "R",
    "ethertypes",
    "mailcap",
];

fn build_base_layer(root: &Path) -> Result<(), TemplateError> {
    for d in ["etc", "home", "root", "tmp", "proc", "sys", "dev", "run", "usr", "opt", "mnt", "srv", "media", "var/tmp", "var/log", "var/cache", "var/lib", "var/spool"] {
        fs::create_dir_all(root.join(d)).map_err(io(format!("creating base/{d}")))?;
    }
    for (d, mode) in [("root", 0o700), ("tmp", 0o1777), ("var/tmp", 0o1777)] {
        fs::set_permissions(root.join(d), fs::Permissions::from_mode(mode)).map_err(io(format!("chmod base/{d}")))?;
    }
    for l in ["bin", "sbin", "lib", "lib32", "lib64", "libx32"] {
        if Path::new("/usr").join(l).exists() {
            symlink(format!("usr/{l}"), root.join(l)).map_err(io(format!("linking base/{l}")))?;
        }
    }
    let etc = root.join("etc");
    for name in ETC_ALLOW {
        let src = Path::new("/etc").join(name);
        if src.symlink_metadata().is_ok() {
            copy_tree(&src, &etc.join(name))?;
        }
    }
    // Python's versioned config directories (python3.11, ...), and the
    // JDKs' (java-17-openjdk: a JDK's conf/ links into it) without their
    // JMX `management` settings, where a host may keep a password file.
    if let Ok(rd) = fs::read_dir("/etc") {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            if n.starts_with("python3.") {
                copy_tree(&e.path(), &etc.join(&n))?;
            } else if n.starts_with("java-") && e.path().is_dir() {
                fs::create_dir_all(etc.join(&n)).map_err(io(format!("creating base/etc/{n}")))?;
                for c in fs::read_dir(e.path()).map_err(io(format!("reading /etc/{n}")))?.flatten() {
                    if c.file_name() != "management" {
                        copy_tree(&c.path(), &etc.join(&n).join(c.file_name()))?;
                    }
                }
            }
        }
    }
    // Only public certificates of /etc/ssl, never /etc/ssl/private.
    for sub in ["certs", "openssl.cnf"] {
        let src = Path::new("/etc/ssl").join(sub);
        if src.symlink_metadata().is_ok() {
            fs::create_dir_all(etc.join("ssl")).map_err(io("creating base/etc/ssl"))?;
            copy_tree(&src, &etc.join("ssl").join(sub))?;
        }
    }
    let files: &[(&str, &str, u32)] = &[
        ("passwd", "root:x:0:0:root:/root:/bin/bash\nuser:x:1000:1000:user:/home/user:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n", 0o644),
        ("group", "root:x:0:\ntty:x:5:user\nusers:x:100:user\nuser:x:1000:\nnogroup:x:65534:\n", 0o644),
        ("shadow", "root:*:19000:0:99999:7:::\nuser:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\n", 0o640),
        ("nsswitch.conf", "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\nprotocols: files\nservices: files\n", 0o644),
        ("hostname", "sandbox\n", 0o644),
        ("hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\tsandbox\n", 0o644),
        // Each sandbox gets its own (the host's nameservers, or none).
        ("resolv.conf", "", 0o644),
        // Every E2B command is `bash -l -c ...`, so this runs per command:
        // Debian's version forks `id -u`; bash already knows $EUID.
        ("profile", PROFILE, 0o644),
    ];
    for (name, content, mode) in files {
        let p = etc.join(name);
        let _ = fs::remove_file(&p);
        fs::write(&p, content).map_err(io(format!("writing base/etc/{name}")))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(*mode)).map_err(io(format!("chmod base/etc/{name}")))?;
    }
    let home = root.join("home/user");
    fs::create_dir_all(&home).map_err(io("creating base/home/user"))?;
    for f in [".bashrc", ".profile", ".bash_logout"] {
        let src = Path::new("/etc/skel").join(f);
        if src.is_file() {
            fs::copy(&src, home.join(f)).map_err(io(format!("copying skel {f}")))?;
        }
    }
    chown_tree(&home, 1000, 1000)?;
    fs::set_permissions(&home, fs::Permissions::from_mode(0o755)).map_err(io("chmod base/home/user"))?;
    Ok(())
}

/// Copies a file, directory or symlink, preserving links and modes;
/// skips sockets, devices and fifos. Ownership becomes root's.
fn copy_tree(src: &Path, dst: &Path) -> Result<(), TemplateError> {
    let md = fs::symlink_metadata(src).map_err(io(format!("reading {}", src.display())))?;
    let ft = md.file_type();
    if ft.is_symlink() {
        let target = fs::read_link(src).map_err(io(format!("reading link {}", src.display())))?;
        symlink(&target, dst).map_err(io(format!("linking {}", dst.display())))?;
    } else if ft.is_dir() {
        fs::create_dir_all(dst).map_err(io(format!("creating {}", dst.display())))?;
        for e in fs::read_dir(src).map_err(io(format!("listing {}", src.display())))?.flatten() {
            copy_tree(&e.path(), &dst.join(e.file_name()))?;
        }
        fs::set_permissions(dst, fs::Permissions::from_mode(md.permissions().mode() & 0o7777)).map_err(io(format!("chmod {}", dst.display())))?;
    } else if ft.is_file() {
        fs::copy(src, dst).map_err(io(format!("copying {}", src.display())))?;
    }
    Ok(())
}

pub fn chown_tree(p: &Path, uid: u32, gid: u32) -> Result<(), TemplateError> {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).map_err(io(format!("chown {}", p.display())))?;
    if fs::symlink_metadata(p).map(|m| m.is_dir()).unwrap_or(false) {
        for e in fs::read_dir(p).map_err(io(format!("listing {}", p.display())))?.flatten() {
            chown_tree(&e.path(), uid, gid)?;
        }
    }
    Ok(())
}
