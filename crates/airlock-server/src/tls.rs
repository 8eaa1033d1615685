//! TLS for the server's own listener (`--domain` with `--tls-cert/--tls-key`
//! or the local CA made by `airlock tls init`), and the small local CA
//! shared with the egress interception (`egress_tls`).
//!
//! Clients that know only a domain (`E2B_DOMAIN`: the 1.x SDKs,
//! `e2b-mcp-server`, Moru's domain mode) reach `https://api.{domain}` and
//! `https://{port}-{id}.{domain}` on port 443. One listener serves both TLS
//! and plain HTTP: a connection whose first byte is a TLS handshake record
//! (0x16) is TLS, anything else is HTTP/1.1 as before. TLS connections
//! offer ALPN `h2` and `http/1.1`.
//!
//! The local CA (`<data>/tls-ca/`) is not the egress CA: clients are told
//! to trust this one, and a CA they trust must not be one that signs for
//! any name a sandbox's policy allows. It signs one leaf per start, for
//! `{domain}`, `api.{domain}` and `*.{domain}`, valid for a year; a
//! restart renews it.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};

pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca.key";
/// The server listener's local CA, under the data directory.
pub const SERVER_CA_DIR: &str = "tls-ca";
/// A CA's validity.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// The validity of the leaf the local CA signs for the listener at start.
const SERVER_LEAF_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the CA key {} is not a usable P-256 key", path.display())]
    BadKey {
        path: PathBuf,
        #[source]
        source: rcgen::Error,
    },
    #[error("{name:?} is not a name a certificate can be made for")]
    BadName { name: String },
    #[error("making a certificate")]
    Cert(#[source] rcgen::Error),
    #[error("TLS set-up")]
    Tls(#[source] rustls::Error),
    #[error("{}: no PEM {what} in it", path.display())]
    Pem {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: Option<rustls::pki_types::pem::Error>,
    },
    #[error("--tls-cert and --tls-key go together (only {given} was given)")]
    Half { given: &'static str },
    #[error("--tls-cert/--tls-key need --domain (the names clients reach the server by)")]
    NoDomain,
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> TlsError {
    let path = path.to_path_buf();
    move |source| TlsError::Io { what, path, source }
}

fn unix_now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}

/// Writes `data` to `path` with `mode`, atomically (temp file, rename).
pub(crate) fn write_file(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// A P-256 CA kept in one directory (`ca.pem` public, `ca.key` 0600).
pub struct LocalCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
    dir: PathBuf,
}

/// The CA's subject, derived from its key so that a restart rebuilds the
/// same issuer name from the key file alone (rcgen cannot parse the
/// certificate back without its x509-parser feature).
fn ca_params(key: &KeyPair, label: &str) -> CertificateParams {
    let fp: String = Sha256::digest(key.public_key_raw())[..6].iter().map(|b| format!("{b:02x}")).collect();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Airlock");
    dn.push(DnType::CommonName, format!("Airlock {label} {fp}"));
    let mut p = CertificateParams::default();
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    p
}

impl LocalCa {
    /// Loads the CA in `dir`; makes it there when it is missing and
    /// `create` is set (else `Ok(None)`). `label` names it in its subject
    /// ("egress CA", "local CA"). The flag says whether it was made now.
    pub fn open(dir: &Path, label: &str, create: bool) -> Result<Option<(Self, bool)>, TlsError> {
        let (key_path, cert_path) = (dir.join(CA_KEY_FILE), dir.join(CA_CERT_FILE));
        let existing = match (std::fs::read_to_string(&key_path), std::fs::read_to_string(&cert_path)) {
            (Ok(k), Ok(c)) => Some((k, c)),
            (Err(e), _) if e.kind() != io::ErrorKind::NotFound => return Err(io_err("reading", &key_path)(e)),
            (_, Err(e)) if e.kind() != io::ErrorKind::NotFound => return Err(io_err("reading", &cert_path)(e)),
            _ => None,
        };
        let (key, pem, made) = match existing {
            Some((k, c)) => (KeyPair::from_pem(&k).map_err(|source| TlsError::BadKey { path: key_path.clone(), source })?, c, false),
            None if !create => return Ok(None),
            None => {
                airlock_runtime::state::private_dir(dir).map_err(io_err("creating", dir))?;
                // Key first: a certificate never exists without its key.
                let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(TlsError::Cert)?;
                let mut p = ca_params(&key, label);
                let now = unix_now();
                p.not_before = rcgen::date_time_ymd(1970, 1, 1) + now.saturating_sub(Duration::from_secs(24 * 3600));
                p.not_after = rcgen::date_time_ymd(1970, 1, 1) + now + CA_VALIDITY;
                let cert = p.self_signed(&key).map_err(TlsError::Cert)?;
                write_file(&key_path, key.serialize_pem().as_bytes(), 0o600).map_err(io_err("writing", &key_path))?;
                let pem = cert.pem();
                write_file(&cert_path, pem.as_bytes(), 0o644).map_err(io_err("writing", &cert_path))?;
                (key, pem, true)
            }
        };
        let issuer = Issuer::new(ca_params(&key, label), key);
        Ok(Some((Self { issuer, pem, dir: dir.to_path_buf() }, made)))
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    pub fn cert_path(&self) -> PathBuf {
        self.dir.join(CA_CERT_FILE)
    }

    /// A server leaf for `names` (DNS names, `*.` wildcards allowed),
    /// valid from an hour ago for `validity`, with a fresh key.
    pub fn leaf(&self, names: &[String], validity: Duration) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
        let first = names.first().cloned().unwrap_or_default();
        let bad = || TlsError::BadName { name: first.clone() };
        if first.is_empty() || names.iter().any(|n| n.len() > 253) {
            return Err(bad());
        }
        let mut p = CertificateParams::new(names.to_vec()).map_err(|_| bad())?;
        let mut dn = DistinguishedName::new();
        // X.509 bounds a common name at 64 characters; the SAN is what counts.
        if first.len() <= 64 {
            dn.push(DnType::CommonName, first.as_str());
        }
        p.distinguished_name = dn;
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.use_authority_key_identifier_extension = true;
        let now = unix_now();
        p.not_before = rcgen::date_time_ymd(1970, 1, 1) + now.saturating_sub(Duration::from_secs(3600));
        p.not_after = rcgen::date_time_ymd(1970, 1, 1) + now + validity;
        let mut serial = [0u8; 16];
        getrandom::fill(&mut serial).map_err(|e| TlsError::Io { what: "drawing a serial for", path: self.dir.clone(), source: io::Error::other(e.to_string()) })?;
        serial[0] &= 0x7f;
        p.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(TlsError::Cert)?;
        let cert = p.signed_by(&key, &self.issuer).map_err(TlsError::Cert)?;
        Ok((vec![cert.der().clone()], PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()))))
    }
}

/// A rustls server configuration on ring for one certificate chain.
pub fn server_config(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>, alpn: &[&[u8]]) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Tls)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(TlsError::Tls)?;
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// The names a domain's certificate covers: the domain, its control API
/// host and every sandbox host (`{port}-{id}` is one label).
pub fn domain_names(domain: &str) -> Vec<String> {
    let d = domain.trim_end_matches('.').to_ascii_lowercase();
    vec![d.clone(), format!("api.{d}"), format!("*.{d}")]
}

/// Where the listener's certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `--tls-cert/--tls-key`.
    Files { cert: PathBuf, key: PathBuf },
    /// The local CA under the data directory (`airlock tls init`).
    LocalCa { ca: PathBuf },
}

/// The listener's TLS: from the operator's files when given, else from
/// the local CA when `airlock tls init` made one and a domain is set;
/// `Ok(None)` means plain HTTP only.
pub fn listener_tls(data_dir: &Path, domain: Option<&str>, cert: Option<&Path>, key: Option<&Path>) -> Result<Option<(Arc<rustls::ServerConfig>, Source)>, TlsError> {
    const ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];
    match (cert, key) {
        (Some(cert), Some(key)) => {
            if domain.is_none() {
                return Err(TlsError::NoDomain);
            }
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .map_err(|e| TlsError::Pem { what: "certificate", path: cert.to_path_buf(), source: Some(e) })?
                .collect::<Result<_, _>>()
                .map_err(|e| TlsError::Pem { what: "certificate", path: cert.to_path_buf(), source: Some(e) })?;
            if chain.is_empty() {
                return Err(TlsError::Pem { what: "certificate", path: cert.to_path_buf(), source: None });
            }
            let k = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Pem { what: "private key", path: key.to_path_buf(), source: Some(e) })?;
            let cfg = server_config(chain, k, ALPN)?;
            Ok(Some((cfg, Source::Files { cert: cert.to_path_buf(), key: key.to_path_buf() })))
        }
        (Some(_), None) => Err(TlsError::Half { given: "--tls-cert" }),
        (None, Some(_)) => Err(TlsError::Half { given: "--tls-key" }),
        (None, None) => {
            let Some(domain) = domain else { return Ok(None) };
            let Some((ca, _)) = LocalCa::open(&data_dir.join(SERVER_CA_DIR), "local CA", false)? else { return Ok(None) };
            let (chain, k) = ca.leaf(&domain_names(domain), SERVER_LEAF_VALIDITY)?;
            Ok(Some((server_config(chain, k, ALPN)?, Source::LocalCa { ca: ca.cert_path() })))
        }
    }
}

/// `airlock tls init`: the local CA under the data directory, made when
/// missing. Returns it and whether it was made now.
pub fn init_local_ca(data_dir: &Path) -> Result<(LocalCa, bool), TlsError> {
    airlock_runtime::state::private_dir(data_dir).map_err(io_err("creating", data_dir))?;
    let dir = data_dir.join(SERVER_CA_DIR);
    match LocalCa::open(&dir, "local CA", true)? {
        Some(x) => Ok(x),
        None => Err(TlsError::Io { what: "making the CA in", path: dir, source: io::Error::other("not made") }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listener_uses_the_local_ca_only_when_made_and_a_domain_is_set() {
        let d = tempfile::tempdir().expect("tmp");
        assert!(listener_tls(d.path(), Some("airlock.test"), None, None).expect("no ca").is_none());
        let (ca, made) = init_local_ca(d.path()).expect("init");
        assert!(made);
        let (again, made) = init_local_ca(d.path()).expect("init again");
        assert!(!made);
        assert_eq!(ca.pem(), again.pem());
        assert!(listener_tls(d.path(), None, None, None).expect("no domain").is_none());
        let (cfg, src) = listener_tls(d.path(), Some("airlock.test"), None, None).expect("tls").expect("some");
        assert_eq!(src, Source::LocalCa { ca: d.path().join("tls-ca/ca.pem") });
        assert_eq!(cfg.alpn_protocols, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
    }

    #[test]
    fn operator_files_are_checked() {
        let d = tempfile::tempdir().expect("tmp");
        let (ca, _) = init_local_ca(d.path()).expect("init");
        let (chain, key) = ca.leaf(&domain_names("airlock.test"), Duration::from_secs(3600)).expect("leaf");
        let cert = d.path().join("c.pem");
        let keyf = d.path().join("k.pem");
        let pem = |label: &str, der: &[u8]| {
            use base64::Engine;
            let b = base64::engine::general_purpose::STANDARD.encode(der);
            let body: Vec<String> = b.as_bytes().chunks(64).map(|c| String::from_utf8_lossy(c).into_owned()).collect();
            format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", body.join("\n"))
        };
        std::fs::write(&cert, pem("CERTIFICATE", &chain[0])).expect("w");
        std::fs::write(&keyf, pem("PRIVATE KEY", key.secret_der())).expect("w");
        assert!(matches!(listener_tls(d.path(), Some("airlock.test"), Some(&cert), Some(&keyf)), Ok(Some((_, Source::Files { .. })))));
        assert!(matches!(listener_tls(d.path(), None, Some(&cert), Some(&keyf)), Err(TlsError::NoDomain)));
        assert!(matches!(listener_tls(d.path(), Some("a.test"), Some(&cert), None), Err(TlsError::Half { .. })));
        // A key file given as the certificate: no certificate in it.
        assert!(matches!(listener_tls(d.path(), Some("a.test"), Some(&keyf), Some(&keyf)), Err(TlsError::Pem { what: "certificate", .. })));
        assert!(matches!(listener_tls(d.path(), Some("a.test"), Some(&cert), Some(&cert)), Err(TlsError::Pem { what: "private key", .. })));
        let missing = d.path().join("missing.pem");
        assert!(matches!(listener_tls(d.path(), Some("a.test"), Some(&missing), Some(&keyf)), Err(TlsError::Pem { .. })));
    }
}
