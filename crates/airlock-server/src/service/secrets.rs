//! E2B's secrets API as service actions: create, list (paged), show,
//! update (a new version) and delete. Values are checked, sealed by
//! `crate::secrets` and never read back here: every answer is metadata.
//! A secret is named by its id (`sec_…`) or its canonical name.

use std::collections::BTreeMap;

use airlock_proto::api::{NewSecret, Secret, SecretUpdate};

use super::*;
use crate::secrets::{check_metadata, check_name, check_value, Inserted, SecretError, SecretRow, ID_PREFIX, MAX_SECRETS};

/// The API's view of a stored secret: everything but the value.
fn view(r: &SecretRow) -> Secret {
    Secret {
        secret_id: r.id.clone(),
        name: r.name.clone(),
        current_version: r.version,
        metadata: r.metadata.clone(),
        created_at: rfc3339_ms(r.created_at),
        updated_at: rfc3339_ms(r.updated_at),
    }
}

/// A key problem is the server's, reported as such (503) with what to do,
/// the key file's path in the log only; the rest are internal.
fn secret_err(e: SecretError) -> ApiError {
    if e.is_key_problem() {
        tracing::error!(error = %e, "secrets are unavailable");
        return ApiError::Unavailable(
            "secrets are unavailable: the server's secrets key file is missing, malformed or not the key the stored secrets were sealed with (see the server's log)".into(),
        );
    }
    match e {
        SecretError::Store(s) => s.into(),
        other => ApiError::Internal(other.to_string()),
    }
}

/// An id or a name as the SDKs send it: ids as they are, names lower-cased.
fn selector(id_or_name: &str) -> String {
    if id_or_name.starts_with(ID_PREFIX) {
        id_or_name.to_string()
    } else {
        id_or_name.to_lowercase()
    }
}

impl Service {
    pub fn secrets(&self) -> &Arc<crate::secrets::Secrets> {
        &self.secrets
    }

    /// The egress proxy's interception CA (`crate::egress_tls`), loaded from
    /// `<data>/egress-ca` or made there the first time. Blocking (file I/O,
    /// a key generation the first time): call it from the blocking pool.
    pub fn egress_tls(&self) -> Result<Arc<crate::egress_tls::EgressTls>, crate::egress_tls::EgressTlsError> {
        let mut slot = self.egress_tls.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = &*slot {
            return Ok(t.clone());
        }
        let t = Arc::new(crate::egress_tls::EgressTls::open(&self.cfg.data_dir)?);
        *slot = Some(t.clone());
        Ok(t)
    }

    /// Makes a sandbox about to be created trust the egress CA: the trust
    /// layer for its template's root layers above them, and the variables
    /// of `egress_tls::trust_env` (a variable the caller set wins).
    pub async fn add_egress_trust(&self, spec: &mut airlock_runtime::SandboxSpec) -> Result<(), ApiError> {
        let layers = spec.rootfs.root_layers.clone();
        let tls = self.blocking({
            let me = self.egress_tls.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let data = self.cfg.data_dir.clone();
            move || -> Result<_, crate::egress_tls::EgressTlsError> {
                let tls = match me {
                    Some(t) => t,
                    None => Arc::new(crate::egress_tls::EgressTls::open(&data)?),
                };
                let layer = tls.trust_layer(&layers)?;
                Ok((tls, layer))
            }
        });
        let (tls, layer) = tls.await?.map_err(|e| ApiError::Internal(format!("the egress CA: {}", airlock_runtime::init::chain(&e))))?;
        self.egress_tls.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(tls);
        spec.top_layers.insert(0, layer);
        for (k, v) in crate::egress_tls::trust_env() {
            spec.env.entry(k.to_string()).or_insert_with(|| v.to_string());
        }
        Ok(())
    }

    async fn secret_row(&self, id_or_name: &str) -> Result<SecretRow, ApiError> {
        let store = self.store.clone();
        let sel = selector(id_or_name);
        self.blocking(move || store.secret(&sel)).await??.ok_or_else(|| ApiError::NotFound(format!("secret {id_or_name} not found")))
    }

    /// Creates a secret, version 1.
    pub async fn create_secret(&self, b: NewSecret) -> Result<Secret, ApiError> {
        let name = check_name(&b.name).map_err(ApiError::BadRequest)?;
        check_value(&b.value).map_err(ApiError::BadRequest)?;
        let metadata = b.metadata.unwrap_or_default();
        check_metadata(&metadata).map_err(ApiError::BadRequest)?;
        let id = format!("{ID_PREFIX}{}", crate::ids::sandbox_id()?);
        let (secrets, id2, value) = (self.secrets.clone(), id.clone(), b.value);
        let (sealed, key_id) = self.blocking(move || secrets.seal(&id2, &value)).await?.map_err(secret_err)?;
        let now = now_ms();
        let row = SecretRow { seq: 0, id, name, version: 1, metadata, sealed, key_id, created_at: now, updated_at: now };
        let (store, r2) = (self.store.clone(), row.clone());
        match self.blocking(move || store.insert_secret(&r2, MAX_SECRETS)).await?? {
            Inserted::Yes => {}
            Inserted::NameTaken => return Err(ApiError::Conflict(format!("a secret named {:?} already exists", row.name))),
            Inserted::Full => return Err(ApiError::Conflict(format!("this server keeps at most {MAX_SECRETS} secrets: delete one first"))),
        }
        // A cached "unknown" is never kept, but a value of a secret deleted
        // and created again under the same name might be.
        self.secrets.invalidate(&row.name);
        tracing::info!(secret_id = %row.id, name = %row.name, "secret created");
        Ok(view(&row))
    }

    /// A page of secrets, oldest first, and the next page's token.
    pub async fn list_secrets(&self, limit: usize, next_token: Option<&str>) -> Result<(Vec<Secret>, Option<String>), ApiError> {
        if !(1..=100).contains(&limit) {
            return Err(ApiError::BadRequest(format!("limit must be between 1 and 100, got {limit}")));
        }
        let after = match next_token.filter(|t| !t.is_empty()) {
            Some(t) => t.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| ApiError::BadRequest(format!("invalid nextToken {t:?}")))?,
            None => 0,
        };
        let store = self.store.clone();
        // One more than asked tells whether there is a next page.
        let mut rows = self.blocking(move || store.secrets_after(after, limit + 1)).await??;
        let next = (rows.len() > limit).then(|| {
            rows.truncate(limit);
            rows.last().map(|r| r.seq.to_string()).unwrap_or_default()
        });
        Ok((rows.iter().map(view).collect(), next))
    }

    pub async fn secret(&self, id_or_name: &str) -> Result<Secret, ApiError> {
        Ok(view(&self.secret_row(id_or_name).await?))
    }

    /// Stores a new value as the next version; metadata, when given,
    /// replaces the stored one.
    pub async fn update_secret(&self, id_or_name: &str, b: SecretUpdate) -> Result<Secret, ApiError> {
        check_value(&b.value).map_err(ApiError::BadRequest)?;
        if let Some(m) = &b.metadata {
            check_metadata(m).map_err(ApiError::BadRequest)?;
        }
        let row = self.secret_row(id_or_name).await?;
        let metadata: BTreeMap<String, String> = b.metadata.unwrap_or_else(|| row.metadata.clone());
        let (secrets, id, value) = (self.secrets.clone(), row.id.clone(), b.value);
        let (sealed, key_id) = self.blocking(move || secrets.seal(&id, &value)).await?.map_err(secret_err)?;
        let (store, id) = (self.store.clone(), row.id.clone());
        let updated = self.blocking(move || store.update_secret(&id, &metadata, &sealed, &key_id, now_ms())).await??;
        self.secrets.invalidate(&row.name);
        if !updated {
            return Err(ApiError::NotFound(format!("secret {id_or_name} not found")));
        }
        tracing::info!(secret_id = %row.id, name = %row.name, "secret updated");
        // Re-read: the version is the store's.
        self.secret(&row.id).await
    }

    /// Deletes a secret: placeholders naming it stop resolving at once.
    pub async fn delete_secret(&self, id_or_name: &str) -> Result<(), ApiError> {
        let row = self.secret_row(id_or_name).await?;
        let (store, id) = (self.store.clone(), row.id.clone());
        let deleted = self.blocking(move || store.delete_secret(&id)).await??;
        self.secrets.invalidate(&row.name);
        if !deleted {
            return Err(ApiError::NotFound(format!("secret {id_or_name} not found")));
        }
        tracing::info!(secret_id = %row.id, name = %row.name, "secret deleted");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service() -> (tempfile::TempDir, Arc<Service>) {
        let tmp = tempfile::tempdir().expect("tmp");
        let store = Arc::new(Store::open(&tmp.path().join("airlock.db")).expect("store"));
        let cfg = Config::new(tmp.path().to_path_buf(), "/nonexistent/airlock".into());
        let svc = Service::new(cfg, store, Arc::new(super::super::fake::FakeBackend::default()));
        (tmp, svc)
    }

    #[tokio::test]
    async fn an_update_is_what_the_next_resolution_sees() {
        let (_tmp, svc) = service();
        let s = svc.create_secret(NewSecret { name: "Tok".into(), value: "one".into(), metadata: None }).await.expect("create");
        assert_eq!(svc.secrets().resolve_placeholders("t=${e2b.secrets.tok}").await.expect("resolve"), "t=one");
        svc.update_secret("tok", SecretUpdate { value: "two".into(), metadata: None }).await.expect("update");
        assert_eq!(svc.secrets().resolve_placeholders("t=${e2b.secrets.tok}").await.expect("resolve"), "t=two", "the cache was dropped");
        svc.delete_secret(&s.secret_id).await.expect("delete");
        assert!(matches!(svc.secrets().resolve_placeholders("${e2b.secrets.tok}").await, Err(SecretError::Unknown { .. })));
        // Created again under the same name: the new value, not a cached one.
        svc.create_secret(NewSecret { name: "tok".into(), value: "three".into(), metadata: None }).await.expect("again");
        assert_eq!(svc.secrets().resolve_placeholders("${e2b.secrets.tok}").await.expect("resolve"), "three");
    }

    #[tokio::test]
    async fn a_spec_given_egress_trust_gets_the_layer_and_the_variables() {
        let (tmp, svc) = service();
        let mut spec = airlock_runtime::SandboxSpec::new("s1", airlock_template::RootFs { root_layers: vec![tmp.path().join("no-layer")], ..Default::default() });
        spec.env.insert("SSL_CERT_FILE".into(), "/mine.pem".into());
        svc.add_egress_trust(&mut spec).await.expect("trust");
        let ca = svc.egress_tls().expect("ca");
        assert_eq!(spec.top_layers.len(), 1);
        assert_eq!(std::fs::read_to_string(spec.top_layers[0].join("etc/airlock/egress-ca.pem")).expect("ca file"), ca.ca_pem());
        assert_eq!(spec.env.get("NODE_EXTRA_CA_CERTS").map(String::as_str), Some(crate::egress_tls::SANDBOX_CA_PATH));
        assert_eq!(spec.env.get("SSL_CERT_FILE").map(String::as_str), Some("/mine.pem"), "the caller's variable wins");
    }
}
