//! Sandbox networks (`/networks`) and broadcast commands
//! (`POST /sandboxes/broadcast`); the data plane is `crate::egress::networks`.

use std::time::Duration;

use futures_util::StreamExt;

use super::*;
use crate::egress::networks::{valid_label, Member};
use airlock_proto::api::{Broadcast, BroadcastResult, BroadcastResults, NetworkMember, SandboxNetwork};

/// Runs of one broadcast at a time.
const BROADCAST_PARALLEL: usize = 16;
/// Output kept per stream and sandbox.
const BROADCAST_OUTPUT: usize = 64 * 1024;

impl Service {
    fn nets(&self) -> Result<&Arc<crate::egress::Egress>, ApiError> {
        self.egress().ok_or_else(|| ApiError::BadRequest(format!("this server cannot make sandbox networks: {}", super::create::NO_EGRESS_HINT)))
    }

    fn check_network_name(name: &str) -> Result<(), ApiError> {
        if valid_label(name) {
            Ok(())
        } else {
            Err(ApiError::BadRequest(format!("invalid network name {:?}: a DNS label (lower-case letters, digits and '-', at most 63)", name.chars().take(80).collect::<String>())))
        }
    }

    async fn network_view(&self, name: &str) -> Result<SandboxNetwork, ApiError> {
        let store = self.store.clone();
        let nets = self.blocking(move || store.networks()).await??;
        let Some((_, created)) = nets.into_iter().find(|(n, _)| n == name) else { return Err(ApiError::NotFound(format!("network '{name}' not found"))) };
        let members = self.nets()?.networks().get(name).cloned().unwrap_or_default();
        Ok(SandboxNetwork {
            name: name.to_string(),
            created_at: rfc3339_ms(created),
            members: members.into_iter().map(|m| NetworkMember { sandbox_id: m.id, name: m.name, ip: Some(m.ip.to_string()) }).collect(),
        })
    }

    /// `POST /networks`: an empty network (an existing one is a 409).
    pub async fn create_network(&self, name: &str) -> Result<SandboxNetwork, ApiError> {
        Self::check_network_name(name)?;
        self.nets()?;
        let store = self.store.clone();
        let n = name.to_string();
        let exists = self.blocking(move || store.networks()).await??.iter().any(|(x, _)| *x == n);
        if exists {
            return Err(ApiError::Conflict(format!("network '{name}' already exists")));
        }
        let store = self.store.clone();
        let n = name.to_string();
        self.blocking(move || store.put_network(&n, now_ms())).await??;
        self.network_view(name).await
    }

    pub async fn networks(&self) -> Result<Vec<SandboxNetwork>, ApiError> {
        self.nets()?;
        let store = self.store.clone();
        let names = self.blocking(move || store.networks()).await??;
        let mut out = Vec::new();
        for (n, _) in names {
            out.push(self.network_view(&n).await?);
        }
        Ok(out)
    }

    pub async fn network(&self, name: &str) -> Result<SandboxNetwork, ApiError> {
        self.nets()?;
        self.network_view(name).await
    }

    /// Removes an empty network (one with members is a 409).
    pub async fn delete_network(&self, name: &str) -> Result<(), ApiError> {
        let eg = self.nets()?.clone();
        self.network_view(name).await?;
        if !eg.drop_network(name) {
            return Err(ApiError::Conflict(format!("network '{name}' has members: remove them (or kill those sandboxes) first")));
        }
        let store = self.store.clone();
        let n = name.to_string();
        self.blocking(move || store.delete_network(&n)).await??;
        Ok(())
    }

    /// A running sandbox with a network interface joins `net` (made if
    /// new) as `name` (default: its id).
    pub async fn join_network(&self, net: &str, id: &str, name: Option<&str>) -> Result<SandboxNetwork, ApiError> {
        Self::check_network_name(net)?;
        self.nets()?;
        let name = name.unwrap_or(id).to_string();
        if !valid_label(&name) {
            return Err(ApiError::BadRequest(format!(
                "invalid member name {:?}: a DNS label (lower-case letters, digits and '-', at most 63)",
                name.chars().take(80).collect::<String>()
            )));
        }
        let lock = self.lock_for(id);
        let _g = lock.lock().await;
        let row = self.row(id).await?;
        if !row.state.takes_traffic() {
            return Err(ApiError::Conflict(format!("sandbox {id} is {}: resume it before it joins a network", row.state.api_str())));
        }
        let backend = self.backend.clone();
        let id2 = id.to_string();
        let info = self.blocking(move || backend.get(&id2)).await?.map_err(|e| runtime_err(id, e))?;
        let Some(ip) = info.ip else {
            return Err(ApiError::Conflict(format!("sandbox {id} was created without internet access, so it has no network interface to join a network with")));
        };
        self.join_inner(net, Member { id: id.to_string(), name, ip }).await?;
        self.network_view(net).await
    }

    /// The join itself, for a sandbox known to be up (a create joins its
    /// networks before it is live).
    pub(super) async fn join_inner(&self, net: &str, m: Member) -> Result<(), ApiError> {
        let eg = self.nets()?.clone();
        let store = self.store.clone();
        let n = net.to_string();
        self.blocking(move || -> Result<(), ApiError> {
            store.put_network(&n, now_ms())?;
            eg.join(&n, m.clone()).map_err(|e| match e {
                crate::egress::EgressError::NameTaken { .. } => ApiError::Conflict(e.to_string()),
                e => ApiError::Internal(format!("joining a network: {}", airlock_runtime::init::chain(&e))),
            })?;
            store.put_member(&n, &m)?;
            Ok(())
        })
        .await?
    }

    /// The `networks` create option: `["web"]` or `[{"name": "web",
    /// "alias": "api"}]` (the alias is the name the others use; default the
    /// sandbox's id). Checked before anything starts.
    pub(super) fn network_joins(&self, v: Option<&serde_json::Value>) -> Result<Vec<(String, Option<String>)>, ApiError> {
        let Some(v) = v.filter(|v| !v.is_null()) else { return Ok(Vec::new()) };
        let list = v.as_array().ok_or_else(|| ApiError::BadRequest("networks must be a list of network names or {name, alias} objects".into()))?;
        let mut out = Vec::new();
        for e in list {
            let (net, alias) = match e {
                serde_json::Value::String(n) => (n.clone(), None),
                serde_json::Value::Object(o) => (
                    o.get("name").and_then(|n| n.as_str()).ok_or_else(|| ApiError::BadRequest("networks: an object needs a name".into()))?.to_string(),
                    o.get("alias").and_then(|a| a.as_str()).map(str::to_string),
                ),
                _ => return Err(ApiError::BadRequest("networks must be a list of network names or {name, alias} objects".into())),
            };
            Self::check_network_name(&net)?;
            if let Some(a) = alias.as_deref().filter(|a| !valid_label(a)) {
                return Err(ApiError::BadRequest(format!("invalid member name {a:?}: a DNS label")));
            }
            out.push((net, alias));
        }
        if !out.is_empty() {
            self.nets()?;
        }
        Ok(out)
    }

    /// Sandbox `id` leaves `net` (404 if it is not on it).
    pub async fn leave_network(&self, net: &str, id: &str) -> Result<(), ApiError> {
        let eg = self.nets()?.clone();
        let store = self.store.clone();
        let (n, id2) = (net.to_string(), id.to_string());
        let left = self
            .blocking(move || -> Result<bool, ApiError> {
                let left = eg.leave(&n, &id2).map_err(|e| ApiError::Internal(format!("leaving a network: {}", airlock_runtime::init::chain(&e))))?;
                store.delete_member(&n, &id2)?;
                Ok(left)
            })
            .await??;
        if !left {
            return Err(ApiError::NotFound(format!("sandbox {id} is not on network '{net}'")));
        }
        Ok(())
    }

    /// One command in every running sandbox of a network and/or with the
    /// given metadata, at most 16 at a time; each sandbox's outcome, a
    /// failure in one not stopping the others.
    pub async fn broadcast(&self, b: Broadcast) -> Result<BroadcastResults, ApiError> {
        if b.cmd.trim().is_empty() {
            return Err(ApiError::BadRequest("cmd is required".into()));
        }
        if b.network.is_none() && b.metadata.as_ref().is_none_or(|m| m.is_empty()) {
            return Err(ApiError::BadRequest("say which sandboxes: network and/or metadata (a broadcast to every sandbox must be asked for by metadata)".into()));
        }
        let timeout = Duration::from_secs(b.timeout.unwrap_or(60).clamp(1, 3600));
        let user = b.user.clone().unwrap_or_else(|| "user".into());
        let members: Option<Vec<String>> = match &b.network {
            Some(n) => Some(self.network(n).await?.members.into_iter().map(|m| m.sandbox_id).collect()),
            None => None,
        };
        let store = self.store.clone();
        let rows = self.blocking(move || store.sandboxes()).await??;
        let targets: Vec<SandboxRow> = rows
            .into_iter()
            .filter(|r| r.state == State::Running)
            .filter(|r| members.as_ref().is_none_or(|m| m.contains(&r.id)))
            .filter(|r| b.metadata.as_ref().is_none_or(|want| want.iter().all(|(k, v)| r.metadata.get(k) == Some(v))))
            .collect();
        let cmd = b.cmd.clone();
        let results = futures_util::stream::iter(targets.into_iter().map(|row| {
            let (cmd, user) = (cmd.clone(), user.clone());
            async move { self.run_one(row, &cmd, &user, timeout).await }
        }))
        .buffered(BROADCAST_PARALLEL)
        .collect::<Vec<_>>()
        .await;
        Ok(BroadcastResults { results })
    }

    async fn run_one(&self, row: SandboxRow, cmd: &str, user: &str, timeout: Duration) -> BroadcastResult {
        let t0 = Instant::now();
        let mut out = BroadcastResult { sandbox_id: row.id.clone(), ..Default::default() };
        let backend = self.backend.clone();
        let id = row.id.clone();
        let info = match self.blocking(move || backend.get(&id)).await {
            Ok(Ok(i)) => i,
            Ok(Err(e)) => {
                out.error = Some(runtime_err(&row.id, e).to_string());
                return out;
            }
            Err(e) => {
                out.error = Some(e.to_string());
                return out;
            }
        };
        let (mut so, mut se) = (Vec::new(), Vec::new());
        let env = BTreeMap::new();
        let run = crate::agent_client::run(&info.socket, row.access_token.as_deref(), user, cmd, &env, None, |b, err| {
            let buf = if err { &mut se } else { &mut so };
            let room = BROADCAST_OUTPUT.saturating_sub(buf.len());
            buf.extend_from_slice(&b[..b.len().min(room)]);
        });
        match tokio::time::timeout(timeout, run).await {
            Ok(Ok(f)) => out.exit_code = Some(f.exit_code),
            Ok(Err(e)) => out.error = Some(e.to_string()),
            Err(_) => out.error = Some(format!("timed out after {} s", timeout.as_secs())),
        }
        out.stdout = String::from_utf8_lossy(&so).into_owned();
        out.stderr = String::from_utf8_lossy(&se).into_owned();
        out.duration_ms = t0.elapsed().as_millis() as u64;
        out
    }
}
