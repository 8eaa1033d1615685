//! The egress proxy's TLS interception: a per-server CA and the leaf
//! certificates it signs for the names sandboxes connect to, so the proxy
//! can read (and inject secrets into) HTTPS requests that its policy lets
//! through; and the read-only layer that makes sandboxes trust that CA.
//!
//! The CA is ECDSA P-256, made on first start under `<data>/egress-ca/`
//! (`ca.pem` public, `ca.key` 0600) and reused after. Leaves are made on
//! demand per SNI name (SAN = the name, valid two days, remade after one)
//! and cached, 1024 names at most. The CA is constrained to nothing: it
//! must sign for any name a policy allows, which is why its key never
//! leaves the host and sandboxes trust it only through the layer built
//! here.
//!
//! The trust layer (`EgressTls::trust_layer`) holds `/etc/airlock/egress-ca.pem`
//! and `/etc/ssl/certs/ca-certificates.crt`: the template's own bundle
//! (else the host's) with the CA appended, so curl, OpenSSL, Python's `ssl`
//! and Go trust it unconfigured; `trust_env` gives the variables for the
//! tools that keep their own bundle (Node, requests). This module decides
//! nothing about which connections are intercepted (the egress policy does).

use std::collections::HashMap;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::tls::LocalCa;

/// Under the data directory.
pub const CA_DIR: &str = "egress-ca";
pub use crate::tls::{CA_CERT_FILE, CA_KEY_FILE};
/// Where the layer puts the CA alone, and the combined bundle.
pub const SANDBOX_CA_PATH: &str = "/etc/airlock/egress-ca.pem";
pub const SANDBOX_BUNDLE_PATH: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Leaf certificates kept at once.
pub const LEAF_CACHE: usize = 1024;
/// A leaf's validity, and the age at which a cached one is remade.
const LEAF_VALIDITY: Duration = Duration::from_secs(2 * 24 * 3600);
const LEAF_REFRESH: Duration = Duration::from_secs(24 * 3600);
/// A template's CA bundle is read up to this size.
const MAX_BUNDLE: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum EgressTlsError {
    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{sni:?} is not a name a certificate can be made for")]
    BadName { sni: String },
    #[error(transparent)]
    Ca(#[from] crate::tls::TlsError),
}

struct Leaf {
    config: Arc<rustls::ServerConfig>,
    made: Instant,
    used: Instant,
}

/// The server's interception CA and its leaf cache. One per server.
pub struct EgressTls {
    ca: LocalCa,
    dir: PathBuf,
    leaves: Mutex<HashMap<String, Leaf>>,
    /// Trust layers by the template root layers they were made for: a
    /// policed create does not re-read and re-hash the template's bundle.
    /// (Template layers are immutable, so the answer does not go stale.)
    trust: Mutex<HashMap<Vec<PathBuf>, PathBuf>>,
}

impl EgressTls {
    /// Loads the CA under `<data_dir>/egress-ca`, making it on first start.
    pub fn open(data_dir: &Path) -> Result<Self, EgressTlsError> {
        let dir = data_dir.join(CA_DIR);
        airlock_runtime::state::private_dir(&dir).map_err(|source| EgressTlsError::Io { what: "creating", path: dir.clone(), source })?;
        let Some((ca, made)) = LocalCa::open(&dir, "egress CA", true)? else {
            return Err(EgressTlsError::Io { what: "making the CA in", path: dir, source: io::Error::other("not made") });
        };
        if made {
            tracing::info!(path = %ca.cert_path().display(), "created the egress interception CA");
        }
        Ok(Self { ca, dir, leaves: Mutex::new(HashMap::new()), trust: Mutex::new(HashMap::new()) })
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        self.ca.pem()
    }

    /// A TLS server configuration presenting a leaf for `sni` signed by the
    /// CA (ALPN `http/1.1` only), made once per name and cached.
    pub fn server_config(&self, sni: &str) -> Result<Arc<rustls::ServerConfig>, EgressTlsError> {
        let name = sni.trim_end_matches('.').to_ascii_lowercase();
        let now = Instant::now();
        {
            let mut leaves = self.leaves.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(l) = leaves.get_mut(&name).filter(|l| now.duration_since(l.made) < LEAF_REFRESH) {
                l.used = now;
                return Ok(l.config.clone());
            }
        }
        // Made outside the lock: a signature is quick, but not free.
        let config = self.make_leaf(&name)?;
        let mut leaves = self.leaves.lock().unwrap_or_else(|p| p.into_inner());
        if leaves.len() >= LEAF_CACHE && !leaves.contains_key(&name) {
            // The least recently used goes (a scan: rare, and 1024 entries).
            if let Some(old) = leaves.iter().min_by_key(|(_, l)| l.used).map(|(k, _)| k.clone()) {
                leaves.remove(&old);
            }
        }
        leaves.insert(name, Leaf { config: config.clone(), made: now, used: now });
        Ok(config)
    }

    fn make_leaf(&self, name: &str) -> Result<Arc<rustls::ServerConfig>, EgressTlsError> {
        if name.is_empty() || name.len() > 253 {
            return Err(EgressTlsError::BadName { sni: name.to_string() });
        }
        let (chain, key) = self.ca.leaf(&[name.to_string()], LEAF_VALIDITY).map_err(|e| match e {
            crate::tls::TlsError::BadName { .. } => EgressTlsError::BadName { sni: name.to_string() },
            e => e.into(),
        })?;
        Ok(crate::tls::server_config(chain, key, &[b"http/1.1"])?)
    }

    /// The read-only layer that makes a sandbox on `root_layers` (the
    /// template's root layers, topmost first) trust the CA: made once per
    /// template bundle under `<data>/egress-ca/layers/<digest>/` and
    /// shared. Hand it to the backend as `SandboxSpec::top_layers`.
    pub fn trust_layer(&self, root_layers: &[PathBuf]) -> Result<PathBuf, EgressTlsError> {
        if let Some(l) = self.trust.lock().unwrap_or_else(|p| p.into_inner()).get(root_layers).filter(|l| l.is_dir()) {
            return Ok(l.clone());
        }
        let layer = self.make_trust_layer(root_layers)?;
        let mut t = self.trust.lock().unwrap_or_else(|p| p.into_inner());
        if t.len() >= 1024 {
            t.clear();
        }
        t.insert(root_layers.to_vec(), layer.clone());
        Ok(layer)
    }

    fn make_trust_layer(&self, root_layers: &[PathBuf]) -> Result<PathBuf, EgressTlsError> {
        let io = |what, path: &Path| {
            let path = path.to_path_buf();
            move |source| EgressTlsError::Io { what, path, source }
        };
        let base = match template_file(root_layers, SANDBOX_BUNDLE_PATH) {
            Some(b) => b,
            // The host's, when the template has none (a minimal image).
            None => std::fs::read(SANDBOX_BUNDLE_PATH).unwrap_or_default(),
        };
        let mut bundle = base;
        if !bundle.is_empty() && !bundle.ends_with(b"\n") {
            bundle.push(b'\n');
        }
        bundle.extend_from_slice(b"# Airlock egress CA (this server's HTTPS interception)\n");
        bundle.extend_from_slice(self.ca.pem().as_bytes());
        let digest: String = Sha256::digest(&bundle)[..8].iter().map(|b| format!("{b:02x}")).collect();
        let layers = self.dir.join("layers");
        let layer = layers.join(&digest);
        if layer.join(SANDBOX_BUNDLE_PATH.trim_start_matches('/')).is_file() {
            return Ok(layer);
        }
        std::fs::create_dir_all(&layers).map_err(io("creating", &layers))?;
        let tmp = layers.join(format!(".{digest}.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let r = (|| {
            use std::os::unix::fs::PermissionsExt;
            for (path, data) in [(SANDBOX_CA_PATH, self.ca.pem().as_bytes()), (SANDBOX_BUNDLE_PATH, &bundle[..])] {
                let f = tmp.join(path.trim_start_matches('/'));
                let parent = f.parent().unwrap_or(&tmp);
                std::fs::create_dir_all(parent)?;
                std::fs::write(&f, data)?;
                std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644))?;
            }
            // Every directory readable by the sandbox (its root is not host root).
            for d in ["", "etc", "etc/airlock", "etc/ssl", "etc/ssl/certs"] {
                std::fs::set_permissions(tmp.join(d), std::fs::Permissions::from_mode(0o755))?;
            }
            std::fs::rename(&tmp, &layer)
        })();
        match r {
            Ok(()) => Ok(layer),
            // Another create made it meanwhile.
            Err(_) if layer.join(SANDBOX_BUNDLE_PATH.trim_start_matches('/')).is_file() => {
                let _ = std::fs::remove_dir_all(&tmp);
                Ok(layer)
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                Err(io("making the trust layer", &layer)(e))
            }
        }
    }
}

/// The environment that points the tools with bundles of their own at the
/// CA: Node (`NODE_EXTRA_CA_CERTS`, added to its built-in roots), Python
/// requests (`REQUESTS_CA_BUNDLE`, else certifi's), and OpenSSL-based
/// clients that honour `SSL_CERT_FILE`; curl's `CURL_CA_BUNDLE` as well.
pub fn trust_env() -> [(&'static str, &'static str); 4] {
    [("NODE_EXTRA_CA_CERTS", SANDBOX_CA_PATH), ("REQUESTS_CA_BUNDLE", SANDBOX_BUNDLE_PATH), ("SSL_CERT_FILE", SANDBOX_BUNDLE_PATH), ("CURL_CA_BUNDLE", SANDBOX_BUNDLE_PATH)]
}

/// What the template's layers (topmost first) show at absolute `path`, as
/// an overlay would: the topmost entry wins, a whiteout hides the rest,
/// symlinks are followed inside the layers (never on the host: each
/// component is checked with `lstat`), eight hops at most. `None` when it
/// is missing, not a regular file, or too large. Opaque directories are
/// not honoured (a lower layer's file may show through one): the worst
/// that does is a bundle with extra certificates of the template's own.
fn template_file(layers: &[PathBuf], path: &str) -> Option<Vec<u8>> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
    let mut want: Vec<String> = Vec::new();
    let mut pending: Vec<String> = split(Path::new(path));
    pending.reverse();
    let mut hops = 0;
    while let Some(comp) = pending.pop() {
        match comp.as_str() {
            "." => continue,
            ".." => {
                want.pop();
                continue;
            }
            _ => {}
        }
        let mut candidate = want.clone();
        candidate.push(comp);
        // The topmost layer where every prefix is a directory and the entry exists.
        let found = layers.iter().find_map(|l| lookup(l, &candidate).map(|m| (l, m)));
        let (layer, meta) = found?;
        let ft = meta.file_type();
        if ft.is_char_device() && meta.rdev() == 0 {
            return None; // a whiteout
        }
        if ft.is_symlink() {
            hops += 1;
            if hops > 8 {
                return None;
            }
            let target = std::fs::read_link(layer.join(candidate.join("/"))).ok()?;
            if target.is_absolute() {
                want.clear();
            }
            let mut t = split(&target);
            t.reverse();
            pending.extend(t);
            continue;
        }
        want = candidate;
        if ft.is_file() {
            if !pending.is_empty() || meta.len() > MAX_BUNDLE {
                return None;
            }
            let f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(layer.join(want.join("/"))).ok()?;
            let mut out = Vec::new();
            std::io::Read::read_to_end(&mut std::io::Read::take(f, MAX_BUNDLE), &mut out).ok()?;
            return Some(out);
        }
        if !ft.is_dir() {
            return None;
        }
    }
    None
}

fn split(p: &Path) -> Vec<String> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect()
}

/// `lstat` of `layer/comps…` when every prefix in that layer is a real
/// directory (so no symlink of the layer is followed on the host).
fn lookup(layer: &Path, comps: &[String]) -> Option<std::fs::Metadata> {
    let mut p = layer.to_path_buf();
    for (i, c) in comps.iter().enumerate() {
        p.push(c);
        let m = std::fs::symlink_metadata(&p).ok()?;
        if i + 1 == comps.len() {
            return Some(m);
        }
        if !m.file_type().is_dir() {
            return None;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::CertificateDer;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn client_config(ca_pem: &str) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for c in <CertificateDer<'static> as rustls::pki_types::pem::PemObject>::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(c.expect("pem")).expect("root");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg =
            rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions().expect("versions").with_root_certificates(roots).with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(cfg)
    }

    /// A real handshake over loopback TCP: the client trusts the CA only.
    async fn handshake(tls: &EgressTls, ca_pem: &str, sni: &str, verify_as: &str) -> Result<Option<Vec<u8>>, String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config(sni).expect("server config"));
        let server = tokio::spawn(async move {
            let (sock, _) = listener.accept().await.expect("accept");
            if let Ok(mut s) = acceptor.accept(sock).await {
                let mut b = [0u8; 4];
                if s.read_exact(&mut b).await.is_ok() {
                    let _ = s.write_all(b"pong").await;
                    let _ = s.shutdown().await;
                }
            }
        });
        let sock = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let name = rustls::pki_types::ServerName::try_from(verify_as.to_string()).expect("name");
        let r = async {
            let mut s = tokio_rustls::TlsConnector::from(client_config(ca_pem)).connect(name, sock).await.map_err(|e| e.to_string())?;
            s.write_all(b"ping").await.map_err(|e| e.to_string())?;
            let mut b = [0u8; 4];
            s.read_exact(&mut b).await.map_err(|e| e.to_string())?;
            assert_eq!(&b, b"pong");
            Ok(s.get_ref().1.alpn_protocol().map(<[u8]>::to_vec))
        }
        .await;
        let _ = server.await;
        r
    }

    #[tokio::test]
    async fn leaves_verify_against_the_ca_and_only_for_their_name() {
        let d = tempfile::tempdir().expect("tmp");
        let tls = EgressTls::open(d.path()).expect("open");
        let alpn = handshake(&tls, tls.ca_pem(), "api.example.test", "api.example.test").await.expect("verified handshake");
        assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
        // A leaf for one name does not pass for another.
        let e = handshake(&tls, tls.ca_pem(), "api.example.test", "other.example.test").await.expect_err("wrong name");
        assert!(e.contains("certificate") || e.contains("Name"), "{e}");
        // Another server's CA is not trusted.
        let d2 = tempfile::tempdir().expect("tmp");
        let other = EgressTls::open(d2.path()).expect("open");
        assert!(handshake(&tls, other.ca_pem(), "api.example.test", "api.example.test").await.is_err());
        // Cached per name.
        assert!(Arc::ptr_eq(&tls.server_config("API.example.test.").expect("a"), &tls.server_config("api.example.test").expect("b")));
        assert!(tls.server_config("").is_err());
    }

    #[tokio::test]
    async fn the_ca_survives_a_restart_and_its_key_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().expect("tmp");
        let first = EgressTls::open(d.path()).expect("open");
        let pem = first.ca_pem().to_string();
        drop(first);
        let mode = std::fs::metadata(d.path().join(CA_DIR).join(CA_KEY_FILE)).expect("key").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(d.path().join(CA_DIR).join(CA_CERT_FILE)).expect("pem"), pem);
        let again = EgressTls::open(d.path()).expect("reopen");
        assert_eq!(again.ca_pem(), pem, "the same CA");
        // Leaves signed after the restart verify against the CA from before.
        handshake(&again, &pem, "svc.example.test", "svc.example.test").await.expect("verified after restart");
        // A damaged key is an error naming the file, not a new CA.
        std::fs::write(d.path().join(CA_DIR).join(CA_KEY_FILE), "garbage").expect("write");
        let e = EgressTls::open(d.path()).err().expect("bad key");
        assert!(e.to_string().contains(CA_KEY_FILE), "{e}");
    }

    #[test]
    fn the_leaf_cache_is_bounded() {
        let d = tempfile::tempdir().expect("tmp");
        let tls = EgressTls::open(d.path()).expect("open");
        let first = tls.server_config("n0.example.test").expect("leaf");
        for i in 1..=LEAF_CACHE {
            tls.server_config(&format!("n{i}.example.test")).expect("leaf");
        }
        assert_eq!(tls.leaves.lock().expect("lock").len(), LEAF_CACHE);
        assert!(!Arc::ptr_eq(&first, &tls.server_config("n0.example.test").expect("again")), "the oldest was evicted");
    }

    #[test]
    fn the_trust_layer_appends_the_ca_to_the_templates_bundle() {
        use std::os::unix::fs::symlink;
        let d = tempfile::tempdir().expect("tmp");
        let tls = EgressTls::open(&d.path().join("data")).expect("open");
        // Two template layers: the bundle in the lower one, reached through a
        // symlink in the upper one (as Fedora has it), and a host-escaping
        // absolute symlink that must resolve inside the layers.
        let (upper, lower) = (d.path().join("l0"), d.path().join("l1"));
        std::fs::create_dir_all(upper.join("etc/ssl/certs")).expect("mkdir");
        std::fs::create_dir_all(lower.join("etc/pki/tls")).expect("mkdir");
        std::fs::write(lower.join("etc/pki/tls/ca-bundle.crt"), "TEMPLATE ROOTS\n").expect("write");
        symlink("/etc/pki/tls/ca-bundle.crt", upper.join("etc/ssl/certs/ca-certificates.crt")).expect("symlink");
        let layer = tls.trust_layer(&[upper.clone(), lower.clone()]).expect("layer");
        let bundle = std::fs::read_to_string(layer.join("etc/ssl/certs/ca-certificates.crt")).expect("bundle");
        assert!(bundle.starts_with("TEMPLATE ROOTS\n") && bundle.ends_with(tls.ca_pem()), "{bundle}");
        assert_eq!(std::fs::read_to_string(layer.join("etc/airlock/egress-ca.pem")).expect("ca"), tls.ca_pem());
        assert_eq!(tls.trust_layer(&[upper.clone(), lower.clone()]).expect("again"), layer, "shared per bundle");

        // A symlinked directory in a layer is followed inside the layers,
        // not on the host: /etc -> /elsewhere names the layers' /elsewhere.
        let evil = d.path().join("evil");
        std::fs::create_dir_all(&evil).expect("mkdir");
        symlink(d.path().join("outside"), evil.join("etc")).expect("symlink");
        std::fs::create_dir_all(d.path().join("outside/ssl/certs")).expect("mkdir");
        std::fs::write(d.path().join("outside/ssl/certs/ca-certificates.crt"), "HOST FILE\n").expect("write");
        assert_eq!(template_file(std::slice::from_ref(&evil), SANDBOX_BUNDLE_PATH), None, "never read through the host");
        // A whiteout hides a lower layer's bundle.
        assert_eq!(template_file(std::slice::from_ref(&lower), "/etc/pki/tls/ca-bundle.crt").as_deref(), Some(&b"TEMPLATE ROOTS\n"[..]));
        let wh = d.path().join("wh");
        std::fs::create_dir_all(wh.join("etc/pki/tls")).expect("mkdir");
        nix::sys::stat::mknod(&wh.join("etc/pki/tls/ca-bundle.crt"), nix::sys::stat::SFlag::S_IFCHR, nix::sys::stat::Mode::from_bits_truncate(0o600), 0).expect("whiteout");
        assert_eq!(template_file(&[wh, lower], "/etc/pki/tls/ca-bundle.crt"), None);
        // No bundle in the template: the host's, then the CA.
        let empty = tls.trust_layer(&[d.path().join("none")]).expect("layer");
        assert!(std::fs::read_to_string(empty.join("etc/ssl/certs/ca-certificates.crt")).expect("bundle").ends_with(tls.ca_pem()));
        let env = trust_env();
        assert!(env.contains(&("NODE_EXTRA_CA_CERTS", "/etc/airlock/egress-ca.pem")) && env.contains(&("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt")));
    }
}
