//! Secrets: values the egress proxy injects into a sandbox's outbound
//! requests (`${e2b.secrets.<name>}` in a header template), kept so that
//! nothing but that injection ever sees them.
//!
//! At rest a value is sealed with AES-256-GCM (`ring::aead`) under one
//! random key per server, kept in `<data>/secrets.key` (0600, created on
//! the first secret), with a fresh random nonce per value and the secret's
//! id as associated data, so a sealed value moved to another row does not
//! open. Each row records which key sealed it (a fingerprint, never the
//! key), so a missing or replaced key file is reported as such instead of
//! failing as garbage; metadata stays readable, and deletable, without it.
//!
//! Values leave this module in one place only: `Secrets::resolve_placeholders`,
//! for the egress proxy. No error, log line or `Debug` output carries a
//! value. Decrypted values are cached in memory, dropped on update and
//! delete. This module does not decide which hosts get a secret (the
//! egress policy does) and has no HTTP surface (`service::secrets` and
//! `api::secrets` do).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use rusqlite::{params, Connection, OptionalExtension};
use sha2::{Digest, Sha256};

use crate::store::{Store, StoreError};

/// The key file, under the data directory.
pub const KEY_FILE: &str = "secrets.key";
/// The most secrets a server keeps.
pub const MAX_SECRETS: usize = 1000;
/// A name's length in bytes.
pub const MAX_NAME: usize = 256;
/// A value's length in bytes (a header value, a PEM key at most).
pub const MAX_VALUE: usize = 64 * 1024;
/// E2B's metadata limits: entries, key and value bytes, bytes in all.
pub const MAX_META_ENTRIES: usize = 32;
pub const MAX_META_KEY: usize = 128;
pub const MAX_META_VALUE: usize = 1024;
pub const MAX_META_TOTAL: usize = 8192;
/// What every secret id starts with (and no name may).
pub const ID_PREFIX: &str = "sec_";
/// What a placeholder starts with; it ends at the next `}`.
pub const PLACEHOLDER: &str = "${e2b.secrets.";

/// The format byte in front of every sealed value: AES-256-GCM, a 96-bit
/// nonce, then the ciphertext and its tag.
const SEALED_V1: u8 = 1;
const KEY_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// A placeholder names a secret that does not exist.
    #[error("secret {name:?} not found")]
    Unknown { name: String },
    #[error("unterminated secret placeholder: `${{e2b.secrets.` without a closing `}}`")]
    Unterminated,
    #[error("empty secret name in a placeholder")]
    EmptyName,
    /// Secrets are stored, but the key that sealed them is gone.
    #[error("the secrets key file {} is missing but {count} stored secrets were sealed with it: restore it from a backup, or delete those secrets", path.display())]
    KeyMissing { path: PathBuf, count: usize },
    /// The key file is not the one that sealed the stored secrets.
    #[error("the secrets key file {} is not the key {count} stored secrets were sealed with: restore the original, or delete those secrets", path.display())]
    WrongKey { path: PathBuf, count: usize },
    #[error("the secrets key file {} is malformed: {what}", path.display())]
    BadKeyFile { path: PathBuf, what: &'static str },
    #[error("reading or creating the secrets key file {}", path.display())]
    KeyFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Sealed under the current key, but it does not open: the row was
    /// altered or damaged.
    #[error("secret {name:?} cannot be decrypted: its stored value is damaged")]
    Corrupt { name: String },
    #[error("the system random source failed")]
    Random,
    #[error("sealing a secret failed")]
    Seal,
    #[error("secrets store")]
    Store(#[from] StoreError),
}

impl From<rusqlite::Error> for SecretError {
    fn from(e: rusqlite::Error) -> Self {
        SecretError::Store(StoreError::Sql(e))
    }
}

impl SecretError {
    /// The key is missing, replaced or unreadable: the server's problem,
    /// not the request's.
    pub fn is_key_problem(&self) -> bool {
        matches!(self, SecretError::KeyMissing { .. } | SecretError::WrongKey { .. } | SecretError::BadKeyFile { .. } | SecretError::KeyFile { .. })
    }
}

// ------------------------------------------------------------ validation

/// The canonical (lower-cased) name, or why it cannot be one. The rules
/// are the SDKs' (`Secret.fill` refuses the same characters) plus E2B's
/// reserved id prefix.
pub fn check_name(name: &str) -> Result<String, String> {
    if name.is_empty() {
        return Err("name is required".into());
    }
    if name.len() > MAX_NAME {
        return Err(format!("name is {} bytes long: at most {MAX_NAME}", name.len()));
    }
    if let Some(c) = name.chars().find(|&c| c == '{' || c == '}' || c.is_control()) {
        return Err(format!("name {name:?} contains {c:?}: a name cannot contain '{{', '}}' or control characters (it goes into ${{e2b.secrets.<name>}})"));
    }
    let canonical = name.to_lowercase();
    if canonical.starts_with(ID_PREFIX) {
        return Err(format!("name {name:?} starts with {ID_PREFIX:?}, which is reserved for secret ids"));
    }
    Ok(canonical)
}

/// A value goes into a header: not empty, not too long, and no character
/// that would end the header or the request (CR, LF, NUL).
pub fn check_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("value is required".into());
    }
    if value.len() > MAX_VALUE {
        return Err(format!("value is {} bytes long: at most {MAX_VALUE}", value.len()));
    }
    if value.contains(['\r', '\n', '\0']) {
        // The value itself is not repeated.
        return Err("value contains a line break or NUL, which cannot go into a header".into());
    }
    Ok(())
}

/// E2B's limits: 32 entries, keys of 1 to 128 bytes, values up to 1024, 8192 in all.
pub fn check_metadata(m: &BTreeMap<String, String>) -> Result<(), String> {
    if m.len() > MAX_META_ENTRIES {
        return Err(format!("metadata has {} entries: at most {MAX_META_ENTRIES}", m.len()));
    }
    let mut total = 0;
    for (k, v) in m {
        if k.is_empty() {
            return Err("metadata keys cannot be empty".into());
        }
        if k.len() > MAX_META_KEY {
            return Err(format!("metadata key {:?}... is {} bytes long: at most {MAX_META_KEY}", k.chars().take(32).collect::<String>(), k.len()));
        }
        if v.len() > MAX_META_VALUE {
            return Err(format!("metadata value of {k:?} is {} bytes long: at most {MAX_META_VALUE}", v.len()));
        }
        total += k.len() + v.len();
    }
    if total > MAX_META_TOTAL {
        return Err(format!("metadata is {total} bytes in all: at most {MAX_META_TOTAL}"));
    }
    Ok(())
}

/// The secret names a header template refers to, lower-cased, in order
/// (repeats kept). The egress policy can call this when rules are set, to
/// refuse a rule naming a secret that does not exist before any request.
pub fn placeholder_names(template: &str) -> Result<Vec<String>, SecretError> {
    let mut names = Vec::new();
    let mut rest = template;
    while let Some(i) = rest.find(PLACEHOLDER) {
        let after = &rest[i + PLACEHOLDER.len()..];
        let end = after.find('}').ok_or(SecretError::Unterminated)?;
        if end == 0 {
            return Err(SecretError::EmptyName);
        }
        names.push(after[..end].to_lowercase());
        rest = &after[end + 1..];
    }
    Ok(names)
}

// ----------------------------------------------------------------- store

/// One stored secret. Times are unix milliseconds.
#[derive(Clone, PartialEq)]
pub struct SecretRow {
    pub seq: i64,
    pub id: String,
    /// Canonical (lower-cased).
    pub name: String,
    pub version: i64,
    pub metadata: BTreeMap<String, String>,
    /// `SEALED_V1`, nonce, ciphertext and tag.
    pub sealed: Vec<u8>,
    /// The fingerprint of the key that sealed it.
    pub key_id: String,
    pub created_at: i64,
    pub updated_at: i64,
}

impl std::fmt::Debug for SecretRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretRow").field("id", &self.id).field("name", &self.name).field("version", &self.version).field("key_id", &self.key_id).finish_non_exhaustive()
    }
}

pub(crate) fn migrate(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS secrets (
             seq INTEGER PRIMARY KEY AUTOINCREMENT,
             id TEXT NOT NULL UNIQUE,
             name TEXT NOT NULL UNIQUE,
             version INTEGER NOT NULL,
             metadata TEXT NOT NULL,
             sealed BLOB NOT NULL,
             key_id TEXT NOT NULL,
             created_at INTEGER NOT NULL,
             updated_at INTEGER NOT NULL
         );",
    )?;
    Ok(())
}

const COLS: &str = "seq, id, name, version, metadata, sealed, key_id, created_at, updated_at";

fn secret_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SecretRow> {
    let meta: String = r.get(4)?;
    Ok(SecretRow {
        seq: r.get(0)?,
        id: r.get(1)?,
        name: r.get(2)?,
        version: r.get(3)?,
        metadata: serde_json::from_str(&meta).unwrap_or_default(),
        sealed: r.get(5)?,
        key_id: r.get(6)?,
        created_at: r.get(7)?,
        updated_at: r.get(8)?,
    })
}

/// How an insert went.
#[derive(Debug, PartialEq, Eq)]
pub enum Inserted {
    Yes,
    NameTaken,
    Full,
}

impl Store {
    pub fn insert_secret(&self, s: &SecretRow, max: usize) -> Result<Inserted, StoreError> {
        let c = self.c();
        let meta = serde_json::to_string(&s.metadata).unwrap_or_else(|_| "{}".into());
        let r = c.execute(
            "INSERT INTO secrets (id, name, version, metadata, sealed, key_id, created_at, updated_at)
             SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8 WHERE (SELECT COUNT(*) FROM secrets) < ?9",
            params![s.id, s.name, s.version, meta, s.sealed, s.key_id, s.created_at, s.updated_at, max as i64],
        );
        match r {
            Ok(0) => Ok(Inserted::Full),
            Ok(_) => Ok(Inserted::Yes),
            Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::ConstraintViolation => Ok(Inserted::NameTaken),
            Err(e) => Err(e.into()),
        }
    }

    /// By id (`sec_…`) or by canonical name.
    pub fn secret(&self, id_or_name: &str) -> Result<Option<SecretRow>, StoreError> {
        let col = if id_or_name.starts_with(ID_PREFIX) { "id" } else { "name" };
        Ok(self.c().query_row(&format!("SELECT {COLS} FROM secrets WHERE {col} = ?1"), params![id_or_name], secret_row).optional()?)
    }

    /// Up to `limit` secrets after `after_seq`, oldest first.
    pub fn secrets_after(&self, after_seq: i64, limit: usize) -> Result<Vec<SecretRow>, StoreError> {
        let c = self.c();
        let mut st = c.prepare(&format!("SELECT {COLS} FROM secrets WHERE seq > ?1 ORDER BY seq LIMIT ?2"))?;
        let rows = st.query_map(params![after_seq, limit as i64], secret_row)?.collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// A new value (the next version) and metadata; false for an unknown id.
    pub fn update_secret(&self, id: &str, metadata: &BTreeMap<String, String>, sealed: &[u8], key_id: &str, now: i64) -> Result<bool, StoreError> {
        let meta = serde_json::to_string(metadata).unwrap_or_else(|_| "{}".into());
        let n = self
            .c()
            .execute("UPDATE secrets SET version = version + 1, metadata = ?2, sealed = ?3, key_id = ?4, updated_at = ?5 WHERE id = ?1", params![id, meta, sealed, key_id, now])?;
        Ok(n > 0)
    }

    pub fn delete_secret(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self.c().execute("DELETE FROM secrets WHERE id = ?1", params![id])? > 0)
    }

    /// How many stored secrets each key sealed, by key fingerprint.
    pub fn secret_keys(&self) -> Result<Vec<(String, usize)>, StoreError> {
        let c = self.c();
        let mut st = c.prepare("SELECT key_id, COUNT(*) FROM secrets GROUP BY key_id")?;
        let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?.max(0) as usize)))?.collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
}

// ------------------------------------------------------------------- key

/// The server's sealing key and its fingerprint.
struct SealKey {
    key: LessSafeKey,
    id: String,
}

impl SealKey {
    fn new(raw: &[u8; KEY_LEN]) -> Result<Self, SecretError> {
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, raw).map_err(|_| SecretError::Seal)?);
        // A fingerprint, not the key: a hash of it under a label of its own.
        let mut h = Sha256::new();
        h.update(b"airlock secrets key id v1\0");
        h.update(raw);
        let id = h.finalize()[..8].iter().map(|b| format!("{b:02x}")).collect();
        Ok(Self { key, id })
    }
}

fn random<const N: usize>() -> Result<[u8; N], SecretError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|_| SecretError::Random)?;
    Ok(b)
}

fn decode_key(path: &Path, text: &[u8]) -> Result<[u8; KEY_LEN], SecretError> {
    let bad = |what| SecretError::BadKeyFile { path: path.to_path_buf(), what };
    let t = std::str::from_utf8(text).map_err(|_| bad("not hex text"))?.trim();
    if t.len() != KEY_LEN * 2 {
        return Err(bad("expected 64 hex digits (a 256-bit key)"));
    }
    let mut k = [0u8; KEY_LEN];
    for (i, b) in k.iter_mut().enumerate() {
        *b = u8::from_str_radix(&t[2 * i..2 * i + 2], 16).map_err(|_| bad("not hex text"))?;
    }
    Ok(k)
}

/// Reads the key file; `None` when there is none.
fn read_key(path: &Path) -> Result<Option<[u8; KEY_LEN]>, SecretError> {
    match std::fs::read(path) {
        Ok(t) => decode_key(path, &t).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(SecretError::KeyFile { path: path.to_path_buf(), source: e }),
    }
}

/// Makes a new key file, 0600, atomically: written under a temporary name
/// and linked into place, so a crash never leaves half a key and two
/// servers racing agree on one (the loser reads the winner's).
fn create_key(path: &Path) -> Result<[u8; KEY_LEN], SecretError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| SecretError::KeyFile { path: path.to_path_buf(), source };
    let raw = random::<KEY_LEN>()?;
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(io)?;
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let written = f.write_all(format!("{hex}\n").as_bytes()).and_then(|_| f.sync_all());
    drop(f);
    let linked = written.and_then(|_| std::fs::hard_link(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            if let Some(dir) = path.parent().and_then(|d| std::fs::File::open(d).ok()) {
                let _ = dir.sync_all();
            }
            tracing::info!(path = %path.display(), "created the secrets key");
            Ok(raw)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read_key(path)?.ok_or_else(|| io(e)),
        Err(e) => Err(io(e)),
    }
}

// --------------------------------------------------------------- secrets

#[derive(Default)]
struct Cache {
    /// Bumped by every invalidation: a value read from the store before
    /// one is not cached after it.
    generation: u64,
    values: HashMap<String, Arc<str>>,
}

/// The server's secrets: sealing for the service, resolution for the
/// egress proxy. One per server (`Service::secrets`).
pub struct Secrets {
    store: Arc<Store>,
    key_path: PathBuf,
    key: Mutex<Option<Arc<SealKey>>>,
    cache: Mutex<Cache>,
}

impl Secrets {
    pub fn new(store: Arc<Store>, data_dir: &Path) -> Self {
        Self { store, key_path: data_dir.join(KEY_FILE), key: Mutex::new(None), cache: Mutex::default() }
    }

    pub fn key_path(&self) -> &Path {
        &self.key_path
    }

    /// The key, loaded once. A missing file is created only when there is
    /// nothing sealed yet (and `create`); a key that did not seal what is
    /// stored is refused, so values never mix keys.
    fn key(&self, create: bool) -> Result<Arc<SealKey>, SecretError> {
        let mut slot = self.key.lock().unwrap_or_else(|p| p.into_inner());
        let stored = self.store.secret_keys()?;
        let count = stored.iter().map(|(_, n)| n).sum();
        let key = match &*slot {
            Some(k) => k.clone(),
            None => {
                let raw = match read_key(&self.key_path)? {
                    Some(raw) => raw,
                    None if count > 0 => return Err(SecretError::KeyMissing { path: self.key_path.clone(), count }),
                    None if !create => return Err(SecretError::KeyMissing { path: self.key_path.clone(), count }),
                    None => create_key(&self.key_path)?,
                };
                let k = Arc::new(SealKey::new(&raw)?);
                *slot = Some(k.clone());
                k
            }
        };
        let foreign: usize = stored.iter().filter(|(id, _)| *id != key.id).map(|(_, n)| n).sum();
        if foreign > 0 {
            return Err(SecretError::WrongKey { path: self.key_path.clone(), count: foreign });
        }
        Ok(key)
    }

    /// Checks the key against the store (at start-up): an error says what
    /// is wrong. Nothing to check, and no key made, while no secret exists.
    pub fn check_key(&self) -> Result<(), SecretError> {
        if self.store.secret_keys()?.is_empty() {
            return Ok(());
        }
        self.key(false).map(|_| ())
    }

    /// Seals `value` for the secret `id`: its stored form and the key's
    /// fingerprint. Makes the key on the first secret.
    pub(crate) fn seal(&self, id: &str, value: &str) -> Result<(Vec<u8>, String), SecretError> {
        let key = self.key(true)?;
        let nonce = random::<NONCE_LEN>()?;
        let mut buf = value.as_bytes().to_vec();
        key.key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(id.as_bytes()), &mut buf).map_err(|_| SecretError::Seal)?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + buf.len());
        out.push(SEALED_V1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        Ok((out, key.id.clone()))
    }

    fn open(&self, row: &SecretRow) -> Result<Arc<str>, SecretError> {
        let key = self.key(false)?;
        let corrupt = || SecretError::Corrupt { name: row.name.clone() };
        if row.key_id != key.id {
            return Err(SecretError::WrongKey { path: self.key_path.clone(), count: 1 });
        }
        if row.sealed.len() < 1 + NONCE_LEN || row.sealed[0] != SEALED_V1 {
            return Err(corrupt());
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&row.sealed[1..1 + NONCE_LEN]);
        let mut buf = row.sealed[1 + NONCE_LEN..].to_vec();
        let plain = key.key.open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(row.id.as_bytes()), &mut buf).map_err(|_| corrupt())?;
        let s = std::str::from_utf8(plain).map_err(|_| corrupt())?;
        Ok(Arc::from(s))
    }

    /// Forgets the cached value of `name` (after an update or a delete).
    pub(crate) fn invalidate(&self, name: &str) {
        let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        c.generation += 1;
        c.values.remove(name);
    }

    fn cached(&self, name: &str) -> Option<Arc<str>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).values.get(name).cloned()
    }

    /// The value of the secret named `name` (canonical), from the cache or
    /// the store (a short SQLite read).
    fn value_blocking(&self, name: &str) -> Result<Arc<str>, SecretError> {
        if let Some(v) = self.cached(name) {
            return Ok(v);
        }
        let generation = self.cache.lock().unwrap_or_else(|p| p.into_inner()).generation;
        let row = self.store.secret(name)?.filter(|r| r.name == name).ok_or_else(|| SecretError::Unknown { name: name.to_string() })?;
        let v = self.open(&row)?;
        let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if c.generation == generation {
            c.values.insert(name.to_string(), v.clone());
        }
        Ok(v)
    }

    /// `template` with every `${e2b.secrets.<name>}` replaced by that
    /// secret's value (names compared lower-cased); anything else is kept
    /// as it is. An unknown name is an error naming it. Blocking on a
    /// cache miss (one SQLite read): from async code call
    /// [`Secrets::resolve_placeholders`].
    pub fn resolve_placeholders_blocking(&self, template: &str) -> Result<String, SecretError> {
        let mut out = String::with_capacity(template.len());
        let mut rest = template;
        while let Some(i) = rest.find(PLACEHOLDER) {
            out.push_str(&rest[..i]);
            let after = &rest[i + PLACEHOLDER.len()..];
            let end = after.find('}').ok_or(SecretError::Unterminated)?;
            if end == 0 {
                return Err(SecretError::EmptyName);
            }
            out.push_str(&self.value_blocking(&after[..end].to_lowercase())?);
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    /// What the egress proxy calls for each header it injects: as
    /// [`Secrets::resolve_placeholders_blocking`], answered in place when
    /// every name is cached (the usual case after the first request) and on
    /// the blocking pool otherwise.
    pub async fn resolve_placeholders(self: &Arc<Self>, template: &str) -> Result<String, SecretError> {
        let names = placeholder_names(template)?;
        if names.is_empty() {
            return Ok(template.to_string());
        }
        if names.iter().all(|n| self.cached(n).is_some()) {
            return self.resolve_placeholders_blocking(template);
        }
        let (me, t) = (self.clone(), template.to_string());
        tokio::task::spawn_blocking(move || me.resolve_placeholders_blocking(&t)).await.map_err(|_| SecretError::Seal)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(s: &Secrets, id: &str, name: &str, value: &str) -> SecretRow {
        let (sealed, key_id) = s.seal(id, value).expect("seal");
        SecretRow { seq: 0, id: id.into(), name: name.into(), version: 1, metadata: BTreeMap::new(), sealed, key_id, created_at: 1, updated_at: 1 }
    }

    fn setup() -> (tempfile::TempDir, Arc<Store>, Arc<Secrets>) {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Arc::new(Store::open(&dir.path().join("airlock.db")).expect("store"));
        let secrets = Arc::new(Secrets::new(store.clone(), dir.path()));
        (dir, store, secrets)
    }

    #[test]
    fn names_follow_the_sdks_rules() {
        assert_eq!(check_name("OpenAI-Key").as_deref(), Ok("openai-key"));
        for bad in ["", "a{b", "a}b", "a\nb", "a\u{7f}", "a\u{85}", "sec_x", "SEC_x"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_name(&"x".repeat(MAX_NAME + 1)).is_err());
        assert!(check_value("ok").is_ok());
        assert!(check_value("").is_err() && check_value("a\r\nX-Evil: 1").is_err());
        let mut m: BTreeMap<String, String> = (0..32).map(|i| (format!("k{i}"), "v".into())).collect();
        assert!(check_metadata(&m).is_ok());
        m.insert("k32".into(), "v".into());
        assert!(check_metadata(&m).is_err(), "33 entries");
        assert!(check_metadata(&BTreeMap::from([("k".repeat(129), String::new())])).is_err());
        assert!(check_metadata(&BTreeMap::from([("k".into(), "v".repeat(1025))])).is_err());
        let big: BTreeMap<String, String> = (0..9).map(|i| (format!("k{i}"), "v".repeat(1000))).collect();
        assert!(check_metadata(&big).is_err(), "over 8192 bytes in all");
    }

    #[test]
    fn placeholders_resolve_and_unknown_names_are_named() {
        let (_d, store, s) = setup();
        assert!(matches!(store.insert_secret(&row(&s, "sec_a", "api-key", "hunter2"), 10), Ok(Inserted::Yes)));
        assert_eq!(s.resolve_placeholders_blocking("Bearer ${e2b.secrets.api-key}").expect("resolve"), "Bearer hunter2");
        assert_eq!(s.resolve_placeholders_blocking("${e2b.secrets.API-KEY}:${e2b.secrets.api-key}").expect("twice"), "hunter2:hunter2");
        assert_eq!(s.resolve_placeholders_blocking("${other} plain").expect("no placeholder"), "${other} plain");
        let e = s.resolve_placeholders_blocking("x ${e2b.secrets.nope}").expect_err("unknown");
        assert!(matches!(&e, SecretError::Unknown { name } if name == "nope"));
        assert!(!e.to_string().contains("hunter2"));
        assert!(matches!(s.resolve_placeholders_blocking("${e2b.secrets.api-key"), Err(SecretError::Unterminated)));
        assert!(matches!(s.resolve_placeholders_blocking("${e2b.secrets.}"), Err(SecretError::EmptyName)));
        assert_eq!(placeholder_names("a ${e2b.secrets.X} ${e2b.secrets.y}").expect("names"), ["x", "y"]);
    }

    #[test]
    fn the_cache_is_dropped_on_update_and_delete() {
        let (_d, store, s) = setup();
        store.insert_secret(&row(&s, "sec_a", "k", "one"), 10).expect("insert");
        assert_eq!(s.resolve_placeholders_blocking("${e2b.secrets.k}").expect("r"), "one");
        let (sealed, key_id) = s.seal("sec_a", "two").expect("seal");
        assert!(store.update_secret("sec_a", &BTreeMap::new(), &sealed, &key_id, 2).expect("update"));
        assert_eq!(s.resolve_placeholders_blocking("${e2b.secrets.k}").expect("cached"), "one", "cached until invalidated");
        s.invalidate("k");
        assert_eq!(s.resolve_placeholders_blocking("${e2b.secrets.k}").expect("r"), "two");
        assert!(store.delete_secret("sec_a").expect("delete"));
        s.invalidate("k");
        assert!(matches!(s.resolve_placeholders_blocking("${e2b.secrets.k}"), Err(SecretError::Unknown { .. })));
    }

    #[test]
    fn sealed_values_are_bound_to_their_id_and_key() {
        let (dir, store, s) = setup();
        let mut r = row(&s, "sec_a", "a", "hunter2");
        assert!(!r.sealed.windows(7).any(|w| w == b"hunter2"));
        let (again, _) = s.seal("sec_a", "hunter2").expect("seal");
        assert_ne!(again, r.sealed, "a fresh nonce per value");
        // Moved under another id, it does not open.
        r.id = "sec_b".into();
        assert!(matches!(s.open(&r), Err(SecretError::Corrupt { .. })));
        r.id = "sec_a".into();
        store.insert_secret(&r, 10).expect("insert");
        let meta = std::fs::metadata(dir.path().join(KEY_FILE)).expect("key file");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);

        // Another server over the same store, without the key file.
        std::fs::rename(dir.path().join(KEY_FILE), dir.path().join("saved.key")).expect("move");
        let lost = Secrets::new(store.clone(), dir.path());
        assert!(matches!(lost.check_key(), Err(SecretError::KeyMissing { count: 1, .. })));
        assert!(matches!(lost.seal("sec_c", "x"), Err(SecretError::KeyMissing { .. })), "no new key while secrets exist");
        assert!(!dir.path().join(KEY_FILE).exists());
        // With a different key.
        std::fs::write(dir.path().join(KEY_FILE), format!("{}\n", "ab".repeat(32))).expect("write");
        let wrong = Secrets::new(store.clone(), dir.path());
        assert!(matches!(wrong.check_key(), Err(SecretError::WrongKey { count: 1, .. })));
        assert!(matches!(wrong.resolve_placeholders_blocking("${e2b.secrets.a}"), Err(SecretError::WrongKey { .. })));
        // A malformed one.
        std::fs::write(dir.path().join(KEY_FILE), "short").expect("write");
        assert!(matches!(Secrets::new(store.clone(), dir.path()).check_key(), Err(SecretError::BadKeyFile { .. })));
        // The original back.
        std::fs::rename(dir.path().join("saved.key"), dir.path().join(KEY_FILE)).expect("restore");
        let back = Secrets::new(store, dir.path());
        back.check_key().expect("the right key");
        assert_eq!(back.resolve_placeholders_blocking("${e2b.secrets.a}").expect("r"), "hunter2");
    }

    #[tokio::test]
    async fn async_resolution_matches_blocking() {
        let (_d, store, s) = setup();
        store.insert_secret(&row(&s, "sec_a", "k", "v1"), 10).expect("insert");
        assert_eq!(s.resolve_placeholders("a=${e2b.secrets.k}").await.expect("miss"), "a=v1");
        assert_eq!(s.resolve_placeholders("a=${e2b.secrets.k}").await.expect("hit"), "a=v1");
        assert_eq!(s.resolve_placeholders("none").await.expect("plain"), "none");
    }
}
