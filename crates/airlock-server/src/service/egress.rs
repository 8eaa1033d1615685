//! Sandboxes' egress policies in the lifecycle: taking hold at create,
//! changing on `PUT /sandboxes/{id}/network`, letting go at destroy, and
//! coming back after a server restart (see `crate::egress`).

use super::*;
use crate::egress::store::Spec;
use crate::egress::Egress;

impl Service {
    /// Egress enforcement, when this server has it.
    pub fn egress(&self) -> Option<&Arc<Egress>> {
        self.egress.get()
    }

    /// Starts egress enforcement with the policed sandboxes the store
    /// knows (the table is installed with them in one transaction, so a
    /// sandbox that outlived the last server is never unpoliced).
    pub async fn start_egress(&self, upstreams: Vec<std::net::SocketAddr>, upstream_tls: Arc<rustls::ClientConfig>) -> Result<(), String> {
        let store = self.store.clone();
        let (members, nets) = self
            .blocking(move || Ok::<_, crate::store::StoreError>((store.egress_members()?, store.network_members()?)))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let mut parsed = Vec::new();
        for (id, ip, spec) in members {
            match spec.policy() {
                Ok(p) => parsed.push((ip, id, p)),
                // Stored by us, checked when it was stored: a policy that no
                // longer parses denies everything rather than nothing.
                Err(e) => {
                    tracing::error!(sandbox_id = %id, error = %e, "a stored egress policy no longer parses; the sandbox gets no egress");
                    let deny = crate::egress::Policy::parse(&[], &["0.0.0.0/0".into()], None).map_err(|e| e.to_string())?;
                    parsed.push((ip, id, deny));
                }
            }
        }
        let tag = {
            use sha2::Digest;
            let canon = std::fs::canonicalize(&self.cfg.data_dir).unwrap_or_else(|_| self.cfg.data_dir.clone());
            let h = sha2::Sha256::digest(canon.to_string_lossy().as_bytes());
            h[..5].iter().map(|b| format!("{b:02x}")).collect::<String>()
        };
        let eg = Egress::start(&tag, upstreams, upstream_tls).await.map_err(|e| airlock_runtime::init::chain(&e))?;
        eg.set_secrets(self.secrets().clone());
        // HTTPS to hosts with transform rules is terminated with the
        // interception CA (loaded at start-up, the one sandboxes trust);
        // without it such connections are refused.
        match self.egress_tls.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            Some(tls) => eg.set_interceptor(tls),
            None => tracing::error!("no egress interception CA: HTTPS requests that rules rewrite are refused"),
        }
        let n = parsed.len();
        let eg2 = eg.clone();
        tokio::task::spawn_blocking(move || eg2.restore(parsed, nets)).await.map_err(|e| e.to_string())?.map_err(|e| airlock_runtime::init::chain(&e))?;
        if n > 0 {
            tracing::info!(policed = n, "egress policies restored");
        }
        let _ = self.egress.set(eg);
        Ok(())
    }

    /// Makes the firewall and the registry agree with `spec` for sandbox
    /// `id` at `ip`: policed by it, or (no spec) not policed.
    pub(super) async fn police(&self, id: &str, ip: Option<std::net::Ipv4Addr>, spec: Option<&Spec>) -> Result<(), ApiError> {
        let Some(eg) = self.egress().cloned() else {
            return match spec {
                Some(_) => Err(ApiError::BadRequest(format!("this server cannot enforce egress policies: {}", super::create::NO_EGRESS_HINT))),
                None => Ok(()),
            };
        };
        let Some(ip) = ip else {
            return match spec {
                Some(_) => Err(ApiError::Conflict(format!("sandbox {id} has no network interface to apply an egress policy to (it was created without internet access)"))),
                None => Ok(()),
            };
        };
        // The common case, an open sandbox on an address nobody policed,
        // costs one map lookup.
        if spec.is_none() && eg.sandbox(ip).is_none() {
            return Ok(());
        }
        let store = self.store.clone();
        let (id2, spec) = (id.to_string(), spec.cloned());
        self.blocking(move || -> Result<(), ApiError> {
            match spec {
                Some(sp) => {
                    let policy = sp.policy().map_err(|e| ApiError::BadRequest(e.to_string()))?;
                    // The store first: a crash after it restores the policy.
                    store.put_egress(&id2, Some(ip), &sp)?;
                    eg.assign(ip, Some((&id2, policy))).map_err(|e| ApiError::Internal(format!("egress firewall: {}", airlock_runtime::init::chain(&e))))
                }
                None => {
                    eg.assign(ip, None).map_err(|e| ApiError::Internal(format!("egress firewall: {}", airlock_runtime::init::chain(&e))))?;
                    store.delete_egress(&id2)?;
                    Ok(())
                }
            }
        })
        .await?
    }

    /// A destroyed sandbox's policy and memberships go (its address may
    /// go to another).
    pub(super) async fn forget_egress(&self, id: &str) {
        let Some(eg) = self.egress().cloned() else { return };
        if !eg.knows(id) {
            return;
        }
        let store = self.store.clone();
        let id2 = id.to_string();
        let _ = self
            .blocking(move || {
                eg.release(&id2);
                eg.leave_all(&id2);
                let _ = store.delete_egress(&id2);
                let _ = store.delete_memberships(&id2);
            })
            .await;
    }

    /// Policies of sandboxes that are gone by a path that did not say so.
    pub async fn prune_egress(&self) {
        let Some(eg) = self.egress().cloned() else { return };
        let store = self.store.clone();
        let _ = self
            .blocking(move || {
                let mut ids = eg.policed();
                ids.extend(eg.networks().values().flat_map(|m| m.iter().map(|x| x.id.clone())));
                ids.sort();
                ids.dedup();
                for id in ids {
                    let gone = match store.sandbox(&id) {
                        Ok(Some(r)) => r.state == State::Dead,
                        Ok(None) => true,
                        Err(_) => false,
                    };
                    if gone {
                        eg.release(&id);
                        eg.leave_all(&id);
                        let _ = store.delete_egress(&id);
                        let _ = store.delete_memberships(&id);
                    }
                }
                let _ = store.prune_egress();
            })
            .await;
    }

    /// The policy a sandbox has, as asked for (none when open).
    pub async fn egress_spec(&self, id: &str) -> Result<Option<Spec>, ApiError> {
        let store = self.store.clone();
        let id2 = id.to_string();
        Ok(self.blocking(move || store.egress(&id2)).await??.map(|(_, s)| s))
    }
}
