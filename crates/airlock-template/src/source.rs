//! Roots for `FROM` that are not Airlock templates: a root-filesystem
//! directory, an OCI image archive (what `docker save` or
//! `skopeo copy ... oci-archive:` write), or a minimal Debian/Ubuntu made
//! with debootstrap. Each becomes one read-only layer with canonical
//! ownership, plus the `user` account (uid 1000) Airlock's agent expects.
//!
//! Package archives are never named here: debootstrap uses the mirror
//! configured for Airlock (`AIRLOCK_DEBIAN_MIRROR`, `AIRLOCK_UBUNTU_MIRROR`)
//! or, for Debian, the one the host's own apt uses.

use std::fs;
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("not a root-filesystem source")]
    NotASource,
    #[error("copying {}: {stderr}", path.display())]
    Copy { path: PathBuf, stderr: String },
    #[error("invalid suite {0:?}")]
    InvalidSuite(String),
    #[error("no {flavor} package mirror configured: set AIRLOCK_{}_MIRROR", flavor.to_uppercase())]
    NoMirror { flavor: String },
    #[error("debootstrap is not installed (apt-get install debootstrap)")]
    NoDebootstrap,
    #[error("debootstrap failed: {output}")]
    Debootstrap { output: String },
    #[error("bad digest {0:?}")]
    BadDigest(String),
    #[error("image archive: {0}")]
    Image(&'static str),
    #[error("layer entry {} leaves the root", .0.display())]
    LeavesRoot(PathBuf),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SourceError {
    let what = what.into();
    move |source| SourceError::Io { what, source }
}

/// Where a `FROM` points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Template(String),
    Debian { flavor: &'static str, suite: String },
    Archive(PathBuf),
    Directory(PathBuf),
}

pub fn classify(from: &str) -> Source {
    if let Some(s) = from.strip_prefix("debian:") {
        return Source::Debian { flavor: "debian", suite: s.to_string() };
    }
    if let Some(s) = from.strip_prefix("ubuntu:") {
        return Source::Debian { flavor: "ubuntu", suite: s.to_string() };
    }
    if from.starts_with('/') {
        let p = PathBuf::from(from);
        return if p.is_dir() { Source::Directory(p) } else { Source::Archive(p) };
    }
    Source::Template(from.to_string())
}

fn hex(d: impl AsRef<[u8]>) -> String {
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The cache key of a source's layer.
pub fn key(src: &Source) -> Result<String, SourceError> {
    let mut h = Sha256::new();
    match src {
        Source::Template(t) => h.update(format!("template:{t}")),
        Source::Debian { flavor, suite } => {
            h.update(format!("debootstrap:{flavor}:{suite}:{}:{}", mirror(flavor).unwrap_or_default(), std::env::consts::ARCH));
        }
        Source::Archive(p) => {
            let mut f = fs::File::open(p).map_err(io(format!("opening {}", p.display())))?;
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = f.read(&mut buf).map_err(io(format!("reading {}", p.display())))?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
        }
        Source::Directory(p) => {
            use std::os::unix::fs::MetadataExt;
            let mut stack = vec![p.clone()];
            let mut entries = Vec::new();
            while let Some(q) = stack.pop() {
                let md = fs::symlink_metadata(&q).map_err(io(format!("reading {}", q.display())))?;
                entries.push(format!("{}:{}:{}:{}:{}", q.display(), md.len(), md.mtime(), md.mtime_nsec(), md.mode()));
                if md.is_dir() {
                    for e in fs::read_dir(&q).map_err(io(format!("listing {}", q.display())))?.flatten() {
                        stack.push(e.path());
                    }
                }
            }
            entries.sort();
            for e in entries {
                h.update(e.as_bytes());
            }
        }
    }
    Ok(format!("src-{}", &hex(h.finalize())[..32]))
}

/// The package mirror for a flavour: configured, or the host's own (Debian).
fn mirror(flavor: &str) -> Option<String> {
    let var = if flavor == "ubuntu" { "AIRLOCK_UBUNTU_MIRROR" } else { "AIRLOCK_DEBIAN_MIRROR" };
    if let Ok(m) = std::env::var(var) {
        if !m.is_empty() {
            return Some(m);
        }
    }
    if flavor != "debian" {
        return None;
    }
    let mut texts = Vec::new();
    if let Ok(rd) = fs::read_dir("/etc/apt/sources.list.d") {
        for e in rd.flatten() {
            if e.path().extension().is_some_and(|x| x == "sources" || x == "list") {
                texts.push(fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
    }
    texts.push(fs::read_to_string("/etc/apt/sources.list").unwrap_or_default());
    for t in texts {
        let mut suites_ok = false;
        let mut uri = None;
        for l in t.lines().map(str::trim) {
            if l.starts_with('#') {
                continue;
            }
            if let Some(u) = l.strip_prefix("URIs:") {
                uri = u.split_whitespace().next().map(str::to_string);
            }
            if let Some(s) = l.strip_prefix("Suites:") {
                suites_ok = s.split_whitespace().any(|x| !x.contains('-'));
            }
            if l.is_empty() {
                if let (true, Some(u)) = (suites_ok, uri.take()) {
                    return Some(u);
                }
                suites_ok = false;
            }
            if let Some(rest) = l.strip_prefix("deb ") {
                let words: Vec<&str> = rest.split_whitespace().filter(|w| !w.starts_with('[')).collect();
                if words.len() >= 2 && !words[1].contains('-') && !words[1].contains('/') {
                    return Some(words[0].to_string());
                }
            }
        }
        if let (true, Some(u)) = (suites_ok, uri) {
            return Some(u);
        }
    }
    None
}

/// Produces `layer/root` for a source (not for templates).
pub fn materialise(src: &Source, layer: &Path, log: &mut dyn FnMut(&str)) -> Result<(), SourceError> {
    let tmp = layer.with_extension("tmp");
    let _ = fs::remove_dir_all(&tmp);
    let root = tmp.join("root");
    fs::create_dir_all(&root).map_err(io(format!("creating {}", root.display())))?;
    let r = match src {
        Source::Template(_) => Err(SourceError::NotASource),
        Source::Directory(p) => {
            log(&format!("copying root filesystem from {}", p.display()));
            let out = Command::new("cp").args(["-a", "--reflink=auto"]).arg(format!("{}/.", p.display())).arg(&root).output().map_err(io("running cp"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(SourceError::Copy { path: p.clone(), stderr: String::from_utf8_lossy(&out.stderr).trim().to_string() })
            }
        }
        Source::Archive(p) => {
            log(&format!("unpacking image archive {}", p.display()));
            unpack_image(p, &root, &tmp.join("blobs"))
        }
        Source::Debian { flavor, suite } => debootstrap(flavor, suite, &root, log),
    };
    if let Err(e) = r {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let _ = fs::remove_dir_all(tmp.join("blobs"));
    add_user(&root).map_err(io("adding the sandbox user"))?;
    fs::rename(&tmp, layer).or_else(|e| {
        if layer.exists() {
            let _ = fs::remove_dir_all(&tmp);
            Ok(())
        } else {
            Err(io("installing layer")(e))
        }
    })
}

fn debootstrap(flavor: &str, suite: &str, root: &Path, log: &mut dyn FnMut(&str)) -> Result<(), SourceError> {
    if suite.is_empty() || !suite.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(SourceError::InvalidSuite(suite.to_string()));
    }
    let mirror = mirror(flavor).ok_or_else(|| SourceError::NoMirror { flavor: flavor.to_string() })?;
    if Command::new("debootstrap").arg("--version").output().is_err() {
        return Err(SourceError::NoDebootstrap);
    }
    log(&format!("debootstrap --variant=minbase {suite} (this takes a few minutes the first time)"));
    let mut cmd = Command::new("debootstrap");
    cmd.args(["--variant=minbase", "--include=ca-certificates"]);
    if flavor == "ubuntu" && !Path::new("/usr/share/keyrings/ubuntu-archive-keyring.gpg").exists() {
        log("warning: ubuntu-archive-keyring is not installed; packages are not signature-checked");
        cmd.arg("--no-check-gpg");
    }
    let out = cmd.arg(suite).arg(root).arg(&mirror).output().map_err(io("running debootstrap"))?;
    if !out.status.success() {
        let tail: String = String::from_utf8_lossy(&out.stderr).lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
        return Err(SourceError::Debootstrap { output: tail });
    }
    // Caches and logs of the bootstrap are not part of the template.
    let _ = fs::remove_dir_all(root.join("var/cache/apt/archives"));
    let _ = fs::remove_dir_all(root.join("debootstrap"));
    Ok(())
}

/// Adds `user` (uid/gid 1000, home /home/user) if the root lacks it.
fn add_user(root: &Path) -> std::io::Result<()> {
    use std::io::Write;
    let etc = root.join("etc");
    fs::create_dir_all(&etc)?;
    let passwd = fs::read_to_string(etc.join("passwd")).unwrap_or_default();
    if !passwd.lines().any(|l| l.starts_with("root:")) {
        fs::OpenOptions::new().create(true).append(true).open(etc.join("passwd"))?.write_all(b"root:x:0:0:root:/root:/bin/sh\n")?;
    }
    if !passwd.lines().any(|l| l.split(':').nth(2) == Some("1000") || l.starts_with("user:")) {
        let shell = if root.join("bin/bash").exists() || root.join("usr/bin/bash").exists() { "/bin/bash" } else { "/bin/sh" };
        fs::OpenOptions::new().create(true).append(true).open(etc.join("passwd"))?.write_all(format!("user:x:1000:1000:user:/home/user:{shell}\n").as_bytes())?;
        let group = fs::read_to_string(etc.join("group")).unwrap_or_default();
        if !group.lines().any(|l| l.starts_with("user:")) {
            fs::OpenOptions::new().create(true).append(true).open(etc.join("group"))?.write_all(b"user:x:1000:\n")?;
        }
        if etc.join("shadow").exists() {
            fs::OpenOptions::new().append(true).open(etc.join("shadow"))?.write_all(b"user:*:19000:0:99999:7:::\n")?;
        }
    }
    let home = root.join("home/user");
    if !home.exists() {
        fs::create_dir_all(&home)?;
        std::os::unix::fs::lchown(&home, Some(1000), Some(1000))?;
    }
    for d in ["proc", "sys", "dev", "tmp"] {
        fs::create_dir_all(root.join(d))?;
    }
    Ok(())
}

fn safe_rel(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir | Component::RootDir => {}
            _ => return None,
        }
    }
    Some(out)
}

fn open_maybe_gz(p: &Path) -> std::io::Result<Box<dyn Read>> {
    let mut f = fs::File::open(p)?;
    let mut magic = [0u8; 2];
    let n = f.read(&mut magic)?;
    let f = fs::File::open(p)?;
    if n == 2 && magic == [0x1f, 0x8b] {
        Ok(Box::new(flate2::read::GzDecoder::new(f)))
    } else {
        Ok(Box::new(f))
    }
}

/// Unpacks an OCI layout or `docker save` archive, applying its layers in
/// order with whiteouts (`.wh.<name>` deletes, `.wh..wh..opq` empties a
/// directory of what lower layers put there).
pub fn unpack_image(archive: &Path, root: &Path, scratch: &Path) -> Result<(), SourceError> {
    fs::create_dir_all(scratch).map_err(io(format!("creating {}", scratch.display())))?;
    let mut outer = tar::Archive::new(open_maybe_gz(archive).map_err(io(format!("opening {}", archive.display())))?);
    for entry in outer.entries().map_err(io(format!("reading {}", archive.display())))? {
        let mut entry = entry.map_err(io(format!("reading {}", archive.display())))?;
        entry.unpack_in(scratch).map_err(io("unpacking archive"))?;
    }
    let layers = image_layers(scratch)?;
    if layers.is_empty() {
        return Err(SourceError::Image("the image archive has no layers"));
    }
    for layer in layers {
        apply_layer(&layer, root)?;
    }
    Ok(())
}

/// Layer blob paths, bottom first, from `index.json` (OCI) or `manifest.json` (docker save).
fn image_layers(dir: &Path) -> Result<Vec<PathBuf>, SourceError> {
    let blob = |digest: &str| -> Result<PathBuf, SourceError> {
        let (alg, hex) = digest.split_once(':').ok_or_else(|| SourceError::BadDigest(digest.to_string()))?;
        if !alg.chars().all(|c| c.is_ascii_alphanumeric()) || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(SourceError::BadDigest(digest.to_string()));
        }
        Ok(dir.join("blobs").join(alg).join(hex))
    };
    let read_json = |p: &Path| -> Result<serde_json::Value, SourceError> {
        serde_json::from_slice(&fs::read(p).map_err(io(format!("reading {}", p.display())))?).map_err(|source| SourceError::Json { path: p.to_path_buf(), source })
    };
    if dir.join("index.json").exists() {
        let mut v = read_json(&dir.join("index.json"))?;
        // An index may point at another index (multi-platform); follow to a manifest.
        for _ in 0..4 {
            let m = v["manifests"].as_array().and_then(|a| a.first()).cloned().ok_or(SourceError::Image("index.json lists no manifests"))?;
            let d = m["digest"].as_str().ok_or(SourceError::Image("manifest without digest"))?;
            v = read_json(&blob(d)?)?;
            if v.get("layers").is_some() {
                return v["layers"].as_array().ok_or(SourceError::Image("manifest without layers"))?.iter().map(|l| blob(l["digest"].as_str().unwrap_or(""))).collect();
            }
        }
        return Err(SourceError::Image("no image manifest found in index.json"));
    }
    if dir.join("manifest.json").exists() {
        let v = read_json(&dir.join("manifest.json"))?;
        let layers = v.as_array().and_then(|a| a.first()).and_then(|m| m["Layers"].as_array()).ok_or(SourceError::Image("manifest.json lists no layers"))?;
        return layers
            .iter()
            .map(|l| {
                let rel = safe_rel(Path::new(l.as_str().unwrap_or(""))).ok_or(SourceError::Image("bad layer path in manifest.json"))?;
                Ok(dir.join(rel))
            })
            .collect();
    }
    Err(SourceError::Image("not an image archive: no index.json or manifest.json"))
}

fn apply_layer(blob: &Path, root: &Path) -> Result<(), SourceError> {
    let mut a = tar::Archive::new(open_maybe_gz(blob).map_err(io(format!("opening {}", blob.display())))?);
    a.set_preserve_permissions(true);
    a.set_preserve_ownerships(true);
    a.set_unpack_xattrs(false);
    a.set_overwrite(true);
    let reading = || io(format!("reading layer {}", blob.display()));
    let canon_root = root.canonicalize().map_err(io(format!("resolving {}", root.display())))?;
    for entry in a.entries().map_err(reading())? {
        let mut entry = entry.map_err(reading())?;
        let path = entry.path().map_err(reading())?.into_owned();
        let Some(rel) = safe_rel(&path) else { return Err(SourceError::LeavesRoot(path)) };
        let name = rel.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let parent = rel.parent().map(Path::to_path_buf).unwrap_or_default();
        // Whiteouts and replacements remove things, and removing follows
        // links in the parent path: only a parent that resolves inside the
        // root is touched (a lower layer's `evil -> ../..` must not make
        // `evil/.wh.x` delete outside). `None`: nothing there to remove.
        let parent_inside = || -> Result<Option<PathBuf>, SourceError> {
            let Ok(p) = root.join(&parent).canonicalize() else { return Ok(None) };
            if p.starts_with(&canon_root) {
                Ok(Some(p))
            } else {
                Err(SourceError::LeavesRoot(path.clone()))
            }
        };
        if name == ".wh..wh..opq" {
            if let Some(d) = parent_inside()? {
                if let Ok(rd) = fs::read_dir(&d) {
                    for e in rd.flatten() {
                        let _ = if e.path().is_dir() && !e.path().is_symlink() { fs::remove_dir_all(e.path()) } else { fs::remove_file(e.path()) };
                    }
                }
            }
            continue;
        }
        if let Some(target) = name.strip_prefix(".wh.") {
            // `.wh..` and `.wh...` would name the directory or its parent.
            if target.is_empty() || target == "." || target == ".." {
                return Err(SourceError::LeavesRoot(path.clone()));
            }
            if let Some(d) = parent_inside()? {
                let t = d.join(target);
                if let Ok(md) = fs::symlink_metadata(&t) {
                    let _ = if md.is_dir() { fs::remove_dir_all(&t) } else { fs::remove_file(&t) };
                }
            }
            continue;
        }
        // A file replacing a directory (or the reverse) from a lower layer.
        if let (false, Some(d)) = (name.is_empty(), parent_inside()?) {
            let dest = d.join(&name);
            if let Ok(md) = fs::symlink_metadata(&dest) {
                let is_dir_entry = entry.header().entry_type().is_dir();
                if md.is_dir() && !is_dir_entry {
                    let _ = fs::remove_dir_all(&dest);
                } else if !md.is_dir() && is_dir_entry {
                    let _ = fs::remove_file(&dest);
                }
            }
        }
        entry.unpack_in(root).map_err(io(format!("unpacking {}", rel.display())))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_forms_are_classified() {
        assert_eq!(classify("base"), Source::Template("base".into()));
        assert_eq!(classify("debian:bookworm"), Source::Debian { flavor: "debian", suite: "bookworm".into() });
        assert!(matches!(classify("/nonexistent/image.tar"), Source::Archive(_)));
        assert!(matches!(classify("/tmp"), Source::Directory(_)));
    }

    fn tar_of(entries: &[(&str, Option<&str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            match link {
                Some(target) => {
                    h.set_size(0);
                    h.set_entry_type(tar::EntryType::Symlink);
                    b.append_link(&mut h, name, target).expect("link");
                }
                None => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(1);
                    // Written raw: the builder refuses some of these names.
                    h.as_gnu_mut().expect("gnu").name[..name.len()].copy_from_slice(name.as_bytes());
                    h.set_cksum();
                    b.append(&h, &b"x"[..]).expect("append");
                }
            }
        }
        b.into_inner().expect("tar")
    }

    /// Found by the `image_import` fuzz target: a lower layer's symlink
    /// `evil -> ../../outside` made an upper layer's `evil/sub` (a file
    /// replacing a directory) remove `outside/sub`, and `evil/.wh.canary`
    /// or `evil/.wh..wh..opq` delete outside the root; `.wh...` named the
    /// root's parent.
    #[test]
    fn whiteouts_and_replacements_do_not_follow_links_out_of_the_root() {
        for upper in [vec![("evil/sub", None)], vec![("evil/.wh.canary", None)], vec![("evil/.wh..wh..opq", None)], vec![(".wh...", None)], vec![("a/.wh...", None)]] {
            let t = tempfile::tempdir().expect("tmp");
            fs::create_dir_all(t.path().join("outside/sub")).expect("mkdir");
            fs::write(t.path().join("outside/canary"), b"c").expect("write");
            fs::write(t.path().join("outside/sub/x"), b"x").expect("write");
            let root = t.path().join("a/root");
            fs::create_dir_all(&root).expect("mkdir");
            let layers = [tar_of(&[("evil", Some("../../outside"))]), tar_of(&upper)];
            let mut outer = tar::Builder::new(Vec::new());
            let manifest = br#"[{"Layers":["l0.tar","l1.tar"]}]"#;
            for (name, data) in [("manifest.json", &manifest[..]), ("l0.tar", &layers[0][..]), ("l1.tar", &layers[1][..])] {
                let mut h = tar::Header::new_gnu();
                h.set_size(data.len() as u64);
                h.set_mode(0o644);
                outer.append_data(&mut h, name, data).expect("append");
            }
            let image = t.path().join("image.tar");
            fs::write(&image, outer.into_inner().expect("tar")).expect("write");
            let r = unpack_image(&image, &root, &t.path().join("b"));
            // The lower layer itself is fine: the link is there.
            assert!(fs::symlink_metadata(root.join("evil")).is_ok_and(|m| m.is_symlink()), "{upper:?}: {r:?}");
            assert!(!matches!(&r, Err(SourceError::Io { what, .. }) if what.contains("evil")), "{upper:?}: {r:?}");
            assert!(t.path().join("outside/canary").exists(), "{upper:?} removed outside/canary");
            assert!(t.path().join("outside/sub/x").exists(), "{upper:?} removed outside/sub");
            assert!(root.is_dir(), "{upper:?} removed the root");
        }
    }

    #[test]
    fn layer_paths_cannot_escape() {
        assert!(safe_rel(Path::new("a/../../etc")).is_none());
        assert_eq!(safe_rel(Path::new("./usr/bin")), Some(PathBuf::from("usr/bin")));
    }
}
