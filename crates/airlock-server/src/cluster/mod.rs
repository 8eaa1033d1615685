//! Many hosts: `airlock serve --cluster etcd://...` joins a cluster whose
//! shared state is in etcd. Every node runs sandboxes and serves the whole
//! API and the sandbox proxy; a request for a sandbox another node holds
//! is forwarded there (`forward`), a create goes to the node with the most
//! room (`place`), and a listing asks every node.
//!
//! In etcd, under `/airlock/v1/`:
//! - `nodes/<name>`: a node's address, capacity and load, put with the
//!   node's lease: a node that stops renewing it is gone within the lease;
//! - `drained/<name>`: a drained node takes no new sandboxes (kept across
//!   its restarts, so no lease);
//! - `sandboxes/<id>`: which node holds a sandbox (the catalog);
//! - `keys/<sha256>`: API keys, by hash, so a key made on one node works on
//!   every node;
//! - `templates/<name>`: template and snapshot manifests, their layers by
//!   content digest, so any node can fetch what it lacks (`templates`).
//!
//! The local SQLite store stays the truth for the node's own sandboxes;
//! etcd only says where things are. When etcd cannot be reached, a node
//! goes on serving the sandboxes it holds; what needs the cluster (finding
//! another node's sandbox, placing a create elsewhere, a listing of every
//! node) fails with a clear 503 until etcd answers again.

pub mod etcd;
pub mod forward;
pub mod route;
pub mod templates;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::service::Service;
pub use etcd::{Etcd, EtcdError};

/// The header node-to-node requests carry: the cluster secret.
pub const SECRET_HEADER: &str = "x-airlock-cluster-secret";
/// Which node forwarded a request (for logs and loop checks).
pub const FORWARDED_BY: &str = "x-airlock-forwarded-by";

const PREFIX: &str = "/airlock/v1/";
/// Templates and snapshots a node lists in its entry (about 30 bytes
/// each, rewritten every heartbeat). Past it, sandboxes from the ones left
/// out may be placed on a node without them.
const MAX_LISTED_TEMPLATES: usize = 2000;
/// The shortest secret a cluster takes.
pub const MIN_SECRET: usize = 32;

#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// `etcd://h1:2379,h2:2379`.
    pub etcd: String,
    /// The URL other nodes reach this node's listener at.
    pub advertise: String,
    pub node: String,
    pub secret: String,
    /// Seconds a node stays listed without renewing its lease.
    pub lease_s: i64,
}

pub use airlock_proto::api::{ClusterNode, NodeInfo};

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CatalogEntry {
    node: String,
    /// When the entry was written (unix ms).
    created_at: i64,
    /// When the sandbox's timeout ends (unix ms; 0: its clock is stopped,
    /// it is paused). Kept current by the node that holds it, so the others
    /// can tell a lost node's sandbox that would have ended by now.
    #[serde(default)]
    end_at: i64,
}

/// The deadline a catalog entry records for a sandbox row.
fn deadline(r: &crate::store::SandboxRow) -> i64 {
    if r.state.clock_runs() {
        r.end_at
    } else {
        0
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct KeyEntry {
    /// The node whose store has the key (only it removes the entry).
    node: String,
    name: String,
}

/// Marks a request another node forwarded (it carried the secret): the
/// API takes it without a key check, the origin node made that.
#[derive(Debug, Clone, Copy)]
pub struct Trusted;

/// Where a request for a sandbox goes.
pub enum Owner {
    /// This node (or nobody: the local API answers 404).
    Here,
    There(NodeInfo),
    /// The catalog names a node that is no longer in the cluster.
    Lost {
        node: String,
    },
    /// Its node is gone and its timeout has passed since: it has ended,
    /// wherever its node is.
    Ended {
        node: String,
        end_at: i64,
    },
}

/// How long a read of the node list is reused for routing.
const NODES_FRESH: Duration = Duration::from_millis(1000);
/// How long a sandbox's owner is remembered (it never changes while the
/// sandbox lives; a kill removes it here as well as in etcd).
const OWNER_FRESH: Duration = Duration::from_secs(30);
/// How long a key found in etcd is trusted before it is looked up again
/// (a revoked key stops working within this).
const KEY_FRESH: Duration = Duration::from_secs(10);

/// The live nodes by name, and the names of the drained ones.
type Membership = (BTreeMap<String, NodeInfo>, BTreeSet<String>);

pub struct Cluster {
    pub cfg: ClusterConfig,
    etcd: Etcd,
    lease: AtomicI64,
    /// Whether the last heartbeat reached etcd, and what went wrong if not.
    etcd_ok: AtomicBool,
    etcd_error: Mutex<String>,
    started_at: String,
    nodes: Mutex<Option<(Instant, Membership)>>,
    owners: Mutex<HashMap<String, (String, Instant)>>,
    keys: Mutex<HashMap<String, Instant>>,
    /// Creates this node placed lately (node, unix ms, MiB, CPUs): a
    /// node's entry counts them only from its next heartbeat, and a burst
    /// must not all go to the node that looked emptiest.
    placed: Mutex<Vec<(String, i64, u64, f64)>>,
    /// Whether template publication (or pruning) is running.
    templates_busy: AtomicBool,
    /// Whether a catalog repair's template pruning is waiting to run.
    prune_due: AtomicBool,
}

fn key(kind: &str, name: &str) -> String {
    format!("{PREFIX}{kind}/{name}")
}

/// The error a request gets when the cluster's store cannot be reached.
pub fn unavailable(what: &str, e: &EtcdError) -> crate::service::ApiError {
    crate::service::ApiError::Unavailable(format!("{what}: the cluster store (etcd) is unavailable: {e}"))
}

impl Cluster {
    pub fn new(cfg: ClusterConfig) -> Result<Arc<Self>, EtcdError> {
        let etcd = Etcd::new(&cfg.etcd)?;
        Ok(Arc::new(Self {
            cfg,
            etcd,
            lease: AtomicI64::new(0),
            etcd_ok: AtomicBool::new(false),
            etcd_error: Mutex::new("not contacted yet".into()),
            started_at: crate::service::rfc3339_ms(crate::service::now_ms()),
            nodes: Mutex::new(None),
            owners: Mutex::new(HashMap::new()),
            keys: Mutex::new(HashMap::new()),
            placed: Mutex::new(Vec::new()),
            templates_busy: AtomicBool::new(false),
            prune_due: AtomicBool::new(false),
        }))
    }

    pub fn name(&self) -> &str {
        &self.cfg.node
    }

    /// Whether a request comes from another node (it carries the secret).
    pub fn trusted(&self, headers: &http::HeaderMap) -> bool {
        headers.get(SECRET_HEADER).is_some_and(|v| airlock_proto::envd::constant_time_eq(v.as_bytes(), self.cfg.secret.as_bytes()))
    }

    /// For `/health`: this node, whether etcd answers, how many nodes.
    pub fn health(&self) -> serde_json::Value {
        let ok = self.etcd_ok.load(Ordering::Relaxed);
        let nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|(_, (n, _))| n.len()).unwrap_or(0);
        let detail = if ok { format!("etcd answers ({})", self.etcd.members().join(",")) } else { self.etcd_error.lock().unwrap_or_else(|p| p.into_inner()).clone() };
        serde_json::json!({ "ok": ok, "node": self.cfg.node, "nodes": nodes, "detail": detail })
    }

    fn note(&self, r: Result<(), EtcdError>) {
        match r {
            Ok(()) => {
                if !self.etcd_ok.swap(true, Ordering::Relaxed) {
                    tracing::info!(node = %self.cfg.node, members = %self.etcd.members().join(","), "in the cluster: etcd answers");
                }
            }
            Err(e) => {
                if self.etcd_ok.swap(false, Ordering::Relaxed) {
                    tracing::error!(node = %self.cfg.node, error = %e, "etcd unavailable: serving this node's sandboxes; cluster-wide operations fail until it answers");
                }
                *self.etcd_error.lock().unwrap_or_else(|p| p.into_inner()) = e.to_string();
            }
        }
    }

    /// What this node says of itself now.
    async fn describe(&self, svc: &Arc<Service>) -> NodeInfo {
        let store = svc.store().clone();
        let rows = svc.blocking(move || store.sandboxes()).await.ok().and_then(Result::ok).unwrap_or_default();
        let visible: Vec<_> = rows.iter().filter(|r| r.state.visible()).collect();
        let running: Vec<_> = visible.iter().filter(|r| r.state.takes_traffic()).collect();
        let templates = svc.template_names(MAX_LISTED_TEMPLATES).await;
        let (cpus, memory_mb) = host_capacity();
        let store = svc.builder.store.clone();
        let base_digest = svc.blocking(move || store.get("base").map(|t| t.digest).unwrap_or_default()).await.unwrap_or_default();
        NodeInfo {
            name: self.cfg.node.clone(),
            url: self.cfg.advertise.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            cpus,
            memory_mb,
            sandboxes: visible.len(),
            max_sandboxes: svc.cfg.max_sandboxes,
            committed_cpus: running.iter().fold(0.0, |a, r| a + r.cpus),
            committed_memory_mb: running.iter().map(|r| r.memory_mb).sum(),
            templates,
            base_digest,
            started_at: self.started_at.clone(),
            updated_at: crate::service::rfc3339_ms(crate::service::now_ms()),
        }
    }

    /// Renews the lease (a new one when it lapsed) and rewrites this node's
    /// entry with its current load.
    async fn heartbeat(&self, svc: &Arc<Service>) -> Result<(), EtcdError> {
        let mut lease = self.lease.load(Ordering::Relaxed);
        if lease != 0 && self.etcd.keep_alive(lease).await? <= 0 {
            tracing::warn!(node = %self.cfg.node, "the node's lease had expired (etcd was out of reach for longer than it): joining again");
            lease = 0;
        }
        if lease == 0 {
            lease = self.etcd.grant(self.cfg.lease_s).await?;
            self.lease.store(lease, Ordering::Relaxed);
        }
        let me = self.describe(svc).await;
        let v = serde_json::to_vec(&me).map_err(|e| EtcdError::Protocol(e.to_string()))?;
        self.etcd.put(&key("nodes", &self.cfg.node), &v, Some(lease)).await?;
        self.refresh_nodes().await?;
        Ok(())
    }

    async fn refresh_nodes(&self) -> Result<Membership, EtcdError> {
        let mut nodes = BTreeMap::new();
        for kv in self.etcd.prefix(&format!("{PREFIX}nodes/")).await? {
            match serde_json::from_slice::<NodeInfo>(&kv.value) {
                Ok(n) => {
                    nodes.insert(n.name.clone(), n);
                }
                Err(e) => tracing::warn!(key = %kv.key, error = %e, "an unreadable node entry"),
            }
        }
        let drained: BTreeSet<String> = self.etcd.prefix(&format!("{PREFIX}drained/")).await?.into_iter().filter_map(|kv| kv.key.rsplit('/').next().map(str::to_string)).collect();
        *self.nodes.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), (nodes.clone(), drained.clone())));
        Ok((nodes, drained))
    }

    /// The live nodes and the drained names, from a read at most a second old.
    async fn current_nodes(&self) -> Result<Membership, EtcdError> {
        if let Some((at, m)) = self.nodes.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            if at.elapsed() < NODES_FRESH {
                return Ok(m.clone());
            }
        }
        self.refresh_nodes().await
    }

    /// Every live node, freshly read.
    pub async fn nodes(&self) -> Result<Vec<ClusterNode>, EtcdError> {
        let (nodes, drained) = self.refresh_nodes().await?;
        Ok(nodes
            .into_values()
            .map(|info| ClusterNode { state: if drained.contains(&info.name) { "drained" } else { "ready" }.to_string(), this: info.name == self.cfg.node, info })
            .collect())
    }

    /// The other live nodes (for listings that ask every node).
    pub async fn peers(&self) -> Result<Vec<NodeInfo>, EtcdError> {
        Ok(self.current_nodes().await?.0.into_values().filter(|n| n.name != self.cfg.node).collect())
    }

    /// Drains (or undrains) a node by name; whether it is a live node.
    pub async fn set_drained(&self, node: &str, drained: bool) -> Result<bool, EtcdError> {
        let (nodes, _) = self.refresh_nodes().await?;
        if !nodes.contains_key(node) {
            return Ok(false);
        }
        if drained {
            self.etcd.put(&key("drained", node), b"1", None).await?;
        } else {
            self.etcd.delete(&key("drained", node)).await?;
        }
        self.refresh_nodes().await?;
        Ok(true)
    }

    /// Where sandbox `id` lives.
    pub async fn owner(&self, id: &str) -> Result<Owner, EtcdError> {
        let cached = self.owners.lock().unwrap_or_else(|p| p.into_inner()).get(id).filter(|(_, t)| t.elapsed() < OWNER_FRESH).map(|(n, _)| n.clone());
        let node = match cached {
            Some(n) => n,
            None => match self.entry(id).await? {
                None => return Ok(Owner::Here),
                Some(e) => {
                    let mut m = self.owners.lock().unwrap_or_else(|p| p.into_inner());
                    if m.len() > 100_000 {
                        m.clear();
                    }
                    m.insert(id.to_string(), (e.node.clone(), Instant::now()));
                    e.node
                }
            },
        };
        if node == self.cfg.node {
            return Ok(Owner::Here);
        }
        if let Some(n) = self.current_nodes().await?.0.remove(&node) {
            return Ok(Owner::There(n));
        }
        // Gone from a read up to a second old: a fresh one before saying
        // lost (the node may have just rejoined).
        if let Some(n) = self.refresh_nodes().await?.0.remove(&node) {
            return Ok(Owner::There(n));
        }
        match self.entry(id).await? {
            Some(e) if e.end_at > 0 && e.end_at < crate::service::now_ms() => Ok(Owner::Ended { node: e.node, end_at: e.end_at }),
            _ => Ok(Owner::Lost { node }),
        }
    }

    async fn entry(&self, id: &str) -> Result<Option<CatalogEntry>, EtcdError> {
        match self.etcd.get(&key("sandboxes", id)).await? {
            None => Ok(None),
            Some(kv) => serde_json::from_slice(&kv.value).map(Some).map_err(|e| EtcdError::Protocol(format!("catalog entry of {id}: {e}"))),
        }
    }

    /// Records that this node holds `id`, with its deadline (from the
    /// local store); a sandbox that is gone here is not recorded.
    pub async fn register(&self, svc: &Service, id: &str) -> Result<(), EtcdError> {
        let store = svc.store().clone();
        let key_id = id.to_string();
        let Ok(Ok(Some(row))) = svc.blocking(move || store.sandbox(&key_id)).await else { return Ok(()) };
        if !row.state.visible() {
            return Ok(());
        }
        self.put_entry(id, deadline(&row)).await
    }

    async fn put_entry(&self, id: &str, end_at: i64) -> Result<(), EtcdError> {
        let v = serde_json::to_vec(&CatalogEntry { node: self.cfg.node.clone(), created_at: crate::service::now_ms(), end_at }).map_err(|e| EtcdError::Protocol(e.to_string()))?;
        self.etcd.put(&key("sandboxes", id), &v, None).await
    }

    /// Forgets `id` (it is gone from this node).
    pub async fn unregister(&self, id: &str) -> Result<(), EtcdError> {
        self.owners.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
        // Only this node's entry: a stale delete must not remove another's.
        if let Some(kv) = self.etcd.get(&key("sandboxes", id)).await? {
            if serde_json::from_slice::<CatalogEntry>(&kv.value).is_ok_and(|e| e.node == self.cfg.node) {
                self.etcd.delete_at(&key("sandboxes", id), kv.mod_revision).await?;
            }
        }
        Ok(())
    }

    /// The node a new sandbox should go to: the ready node with the most
    /// free memory, CPU and sandbox slots, among those that can run the
    /// template, preferring those that have it and, on a tie, this one (no
    /// hop). `None`: every node is drained or at its sandbox limit.
    pub async fn place(&self, template: &str, cpus: f64, memory_mb: u64) -> Result<Option<NodeInfo>, EtcdError> {
        // A fresh read: a drain must hold from the moment it is answered
        // (two small range reads, next to a create's own work).
        let (mut nodes, drained) = self.refresh_nodes().await?;
        let have = nodes.values().filter(|n| n.templates.iter().any(|t| t == template)).count();
        let reach = if template.is_empty() || have == 0 || have == nodes.len() {
            Reach::Everywhere
        } else {
            // Some nodes have it: can the others fetch it?
            match self.manifest(template).await? {
                Some((m, _)) => m.base_digest.map_or(Reach::Everywhere, Reach::SameBase),
                // Not published (an alias, a tag, or not yet): where it is.
                None => Reach::Only,
            }
        };
        let now = crate::service::now_ms();
        let mut placed = self.placed.lock().unwrap_or_else(|p| p.into_inner());
        placed.retain(|p| now - p.1 < 60_000);
        // What each entry does not know yet.
        for n in nodes.values_mut() {
            let seen = airlock_proto::time::parse_rfc3339(&n.updated_at).and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_millis() as i64);
            for p in placed.iter().filter(|p| p.0 == n.name && p.1 >= seen) {
                n.committed_memory_mb += p.2;
                n.committed_cpus += p.3;
                n.sandboxes += 1;
            }
        }
        let chosen = choose(nodes.values().filter(|n| !drained.contains(&n.name)), &self.cfg.node, template, &reach, cpus, memory_mb).cloned();
        if let Some(n) = &chosen {
            placed.push((n.name.clone(), now, memory_mb, cpus));
        }
        Ok(chosen)
    }

    /// Whether an API key unknown to the local store is one of the cluster's.
    pub async fn key_valid(&self, key_hash: &str) -> Result<bool, EtcdError> {
        if self.keys.lock().unwrap_or_else(|p| p.into_inner()).get(key_hash).is_some_and(|t| t.elapsed() < KEY_FRESH) {
            return Ok(true);
        }
        let found = match self.etcd.get(&key("keys", key_hash)).await? {
            // This node's own keys are its store's to say: one published
            // here and revoked since (the entry goes at the next heartbeat)
            // is revoked now.
            Some(kv) => serde_json::from_slice::<KeyEntry>(&kv.value).map_or(true, |e| e.node != self.cfg.node),
            None => false,
        };
        if found {
            let mut m = self.keys.lock().unwrap_or_else(|p| p.into_inner());
            if m.len() > 10_000 {
                m.clear();
            }
            m.insert(key_hash.to_string(), Instant::now());
        }
        Ok(found)
    }

    /// Publishes the local store's keys and withdraws this node's keys that
    /// were revoked here.
    async fn sync_keys(&self, svc: &Arc<Service>) -> Result<(), EtcdError> {
        let store = svc.store().clone();
        let Ok(Ok(local)) = svc.blocking(move || store.key_hashes()).await else { return Ok(()) };
        let local: BTreeMap<String, String> = local.into_iter().collect();
        let published = self.etcd.prefix(&format!("{PREFIX}keys/")).await?;
        let mut have = BTreeSet::new();
        for kv in &published {
            let hash = kv.key.rsplit('/').next().unwrap_or_default().to_string();
            let mine = serde_json::from_slice::<KeyEntry>(&kv.value).is_ok_and(|e| e.node == self.cfg.node);
            if mine && !local.contains_key(&hash) {
                self.etcd.delete(&kv.key).await?;
                self.keys.lock().unwrap_or_else(|p| p.into_inner()).remove(&hash);
            } else {
                have.insert(hash);
            }
        }
        for (hash, name) in local {
            if !have.contains(&hash) {
                let v = serde_json::to_vec(&KeyEntry { node: self.cfg.node.clone(), name }).map_err(|e| EtcdError::Protocol(e.to_string()))?;
                self.etcd.create(&key("keys", &hash), &v, None).await?;
            }
        }
        Ok(())
    }

    /// Makes the catalog agree with the local store: every sandbox here is
    /// listed as here with its current deadline, and entries naming this
    /// node for sandboxes it no longer has are removed (after a restart, or
    /// a kill while etcd was away). Entries of nodes that have left, for
    /// sandboxes whose timeout has passed by more than a lease, are removed
    /// too: those sandboxes have ended (their node's reaper ends them if it
    /// comes back).
    async fn reconcile(&self, svc: &Arc<Service>) -> Result<(), EtcdError> {
        let store = svc.store().clone();
        let read_at = crate::service::now_ms();
        let Ok(Ok(rows)) = svc.blocking(move || store.sandboxes()).await else { return Ok(()) };
        let local: BTreeMap<String, crate::store::SandboxRow> = rows.into_iter().filter(|r| r.state.visible()).map(|r| (r.id.clone(), r)).collect();
        let (live, _) = self.current_nodes().await?;
        let mut listed = BTreeSet::new();
        for kv in self.etcd.prefix(&format!("{PREFIX}sandboxes/")).await? {
            let Ok(e) = serde_json::from_slice::<CatalogEntry>(&kv.value) else { continue };
            let id = kv.key.rsplit('/').next().unwrap_or_default().to_string();
            if e.node == self.cfg.node {
                if let Some(r) = local.get(&id) {
                    listed.insert(id.clone());
                    // A timeout set, a pause or a resume since it was written.
                    if (deadline(r) - e.end_at).abs() > 1000 {
                        self.put_entry(&id, deadline(r)).await?;
                    }
                } else if e.created_at < read_at - 5_000 {
                    // Not one catalogued since the store was read (a create
                    // finishing meanwhile is in the catalog, not in `local`).
                    self.etcd.delete_at(&kv.key, kv.mod_revision).await?;
                }
            } else if !live.contains_key(&e.node) && e.end_at > 0 && e.end_at + self.cfg.lease_s * 1000 < read_at && self.etcd.delete_at(&kv.key, kv.mod_revision).await? {
                tracing::info!(sandbox_id = %id, node = %e.node, "catalog entry removed: its node is gone and its timeout has passed");
            }
        }
        for (id, r) in &local {
            if !listed.contains(id) {
                self.put_entry(id, deadline(r)).await?;
            }
        }
        Ok(())
    }

    /// Heartbeats, key publication and catalog repair, until the server stops.
    pub async fn run(self: Arc<Self>, svc: Arc<Service>) {
        let every = Duration::from_millis((self.cfg.lease_s as u64 * 1000 / 3).max(500));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut n: u64 = 0;
        let mut events = svc.subscribe();
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let r = self.heartbeat(&svc).await;
                    let ok = r.is_ok();
                    self.note(r);
                    if ok {
                        if let Err(e) = self.sync_keys(&svc).await {
                            tracing::warn!(error = %e, "publishing API keys to the cluster failed");
                        }
                        // Aside: a first publication hashes the template's
                        // layers, which must not hold up the lease.
                        if n.is_multiple_of(10) {
                            // Kept until a task runs it (one may be busy now).
                            self.prune_due.store(true, Ordering::Release);
                        }
                        if !self.templates_busy.swap(true, Ordering::AcqRel) {
                            let (me, svc) = (self.clone(), svc.clone());
                            tokio::spawn(async move {
                                if let Err(e) = me.publish_templates(&svc).await {
                                    tracing::warn!(error = %e, "publishing templates to the cluster failed");
                                }
                                if me.prune_due.swap(false, Ordering::AcqRel) {
                                    if let Err(e) = me.prune_templates(&svc).await {
                                        tracing::warn!(error = %e, "dropping templates the cluster no longer has failed");
                                    }
                                }
                                me.templates_busy.store(false, Ordering::Release);
                            });
                        }
                        // The first heartbeat after a start (or after etcd
                        // came back), then every tenth.
                        if n.is_multiple_of(10) {
                            if let Err(e) = self.reconcile(&svc).await {
                                tracing::warn!(error = %e, "repairing the sandbox catalog failed");
                            }
                        }
                        n += 1;
                    } else {
                        n = 0;
                    }
                }
                ev = events.recv() => match ev {
                    // A sandbox made here by any path (fork, import, a
                    // pool) is catalogued, again when its deadline moves;
                    // one that ended is removed.
                    Ok(e) if matches!(e.kind.as_str(), "ready" | "timeout_changed" | "paused" | "resumed" | "restarted") => {
                        if let Err(err) = self.register(&svc, &e.sandbox_id).await {
                            tracing::debug!(sandbox_id = %e.sandbox_id, error = %err, "cataloguing failed; the next repair does it");
                        }
                    }
                    Ok(e) if e.kind == "destroyed" || e.kind == "killed" => {
                        if let Err(err) = self.unregister(&e.sandbox_id).await {
                            tracing::debug!(sandbox_id = %e.sandbox_id, error = %err, "uncataloguing failed; the next repair does it");
                        }
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => n = 0,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        }
    }

    /// Leaves the cluster at a clean stop: the lease goes at once, so the
    /// other nodes stop sending here now rather than after the lease time.
    pub async fn leave(&self) {
        let lease = self.lease.swap(0, Ordering::Relaxed);
        if lease != 0 {
            if let Err(e) = self.etcd.revoke(lease).await {
                tracing::warn!(error = %e, "could not leave the cluster cleanly; the others notice within the lease time");
            }
        }
    }
}

/// Which nodes can run a template that some nodes have.
#[derive(Debug, Clone, PartialEq)]
enum Reach {
    /// Any node (none has it, so any builds it; or it moves freely).
    Everywhere,
    /// Only the nodes that have it (it is not in the cluster's manifests).
    Only,
    /// Nodes that have it, or whose `base` has this digest (it sits on
    /// `base`, which is each host's own).
    SameBase(String),
}

/// The placement rule (see [`Cluster::place`]), apart for testing.
fn choose<'a>(nodes: impl Iterator<Item = &'a NodeInfo>, me: &str, template: &str, reach: &Reach, cpus: f64, memory_mb: u64) -> Option<&'a NodeInfo> {
    let has = |n: &NodeInfo| template.is_empty() || n.templates.iter().any(|t| t == template);
    let score = |n: &NodeInfo| {
        // What would be left with this sandbox there.
        let mem_free = n.memory_mb.saturating_sub(n.committed_memory_mb + memory_mb) as f64 / n.memory_mb.max(1) as f64;
        let cpu_free = (n.cpus - n.committed_cpus - cpus).max(0.0) / n.cpus.max(1.0);
        let count_free = n.max_sandboxes.saturating_sub(n.sandboxes) as f64 / n.max_sandboxes.max(1) as f64;
        // Having the template saves fetching its layers: a node without it
        // must have clearly more room.
        let local = if has(n) { 0.25 } else { 0.0 };
        mem_free * 0.5 + cpu_free * 0.3 + count_free * 0.2 + local
    };
    let nodes = nodes.filter(|n| match reach {
        Reach::Everywhere => true,
        Reach::Only => has(n),
        Reach::SameBase(d) => has(n) || n.base_digest == *d,
    });
    nodes
        .into_iter()
        // Memory and CPU only weigh: a sandbox's are limits, not
        // reservations, and a single host overcommits both as well. What
        // refuses is a node's sandbox limit.
        .filter(|n| n.sandboxes < n.max_sandboxes)
        .max_by(|a, b| {
            let (sa, sb) = (score(a), score(b));
            // Within a hair, this node wins: no hop.
            if (sa - sb).abs() < 0.02 {
                (a.name == me).cmp(&(b.name == me))
            } else {
                sa.total_cmp(&sb)
            }
        })
}

/// The host's CPUs and memory (MiB).
fn host_capacity() -> (f64, u64) {
    let cpus = std::thread::available_parallelism().map(|n| n.get() as f64).unwrap_or(1.0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("MemTotal:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|k| k.parse::<u64>().ok()))
        .map(|kib| kib / 1024)
        .unwrap_or(0);
    (cpus, mem)
}

/// Which sandbox an API path is about: `/sandboxes/{id}...`,
/// `/v2/sandboxes/{id}...`, `/events/sandboxes/{id}`.
pub fn sandbox_in_path(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v2/sandboxes/").or_else(|| path.strip_prefix("/sandboxes/")).or_else(|| path.strip_prefix("/events/sandboxes/"))?;
    let id = rest.split('/').next()?;
    // Routes under /sandboxes/ that are not one sandbox's.
    (!id.is_empty() && !matches!(id, "metrics" | "broadcast" | "import")).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, mem: u64, committed: u64, templates: &[&str]) -> NodeInfo {
        NodeInfo {
            base_digest: "b1".into(),
            name: name.into(),
            url: format!("http://{name}:3000"),
            version: "0".into(),
            cpus: 4.0,
            memory_mb: mem,
            sandboxes: 0,
            max_sandboxes: 100,
            committed_cpus: 0.0,
            committed_memory_mb: committed,
            templates: templates.iter().map(|t| t.to_string()).collect(),
            started_at: String::new(),
            updated_at: String::new(),
        }
    }

    #[test]
    fn placement_takes_room_then_locality_then_this_node() {
        let e = Reach::Everywhere;
        let a = node("a", 8192, 4096, &[]);
        let b = node("b", 8192, 1024, &[]);
        assert_eq!(choose([&a, &b].into_iter(), "a", "", &e, 1.0, 512).map(|n| n.name.as_str()), Some("b"), "more free memory");
        let c = node("c", 8192, 1024, &[]);
        assert_eq!(choose([&b, &c].into_iter(), "c", "", &e, 1.0, 512).map(|n| n.name.as_str()), Some("c"), "a tie stays here");
        let d = node("d", 8192, 1024, &["py"]);
        assert_eq!(choose([&b, &d].into_iter(), "b", "py", &e, 1.0, 512).map(|n| n.name.as_str()), Some("d"), "the template is there");
        let roomy = node("r", 65536, 0, &[]);
        assert_eq!(choose([&roomy, &d].into_iter(), "r", "py", &Reach::Only, 1.0, 512).map(|n| n.name.as_str()), Some("d"), "only nodes with an unpublished template run it");
        assert_eq!(choose([&roomy, &b].into_iter(), "b", "py", &e, 1.0, 512).map(|n| n.name.as_str()), Some("r"), "none has it: any node builds it");
        let same = Reach::SameBase("b1".into());
        let busy = node("busy", 8192, 7000, &["py"]);
        assert_eq!(choose([&roomy, &busy].into_iter(), "busy", "py", &same, 1.0, 512).map(|n| n.name.as_str()), Some("r"), "a published template moves to room");
        assert_eq!(choose([&b, &d].into_iter(), "b", "py", &same, 1.0, 512).map(|n| n.name.as_str()), Some("d"), "but not for a little room");
        let mut other = node("o", 65536, 0, &[]);
        other.base_digest = "b2".into();
        assert_eq!(choose([&other, &busy].into_iter(), "o", "py", &same, 1.0, 512).map(|n| n.name.as_str()), Some("busy"), "not onto another base");
        let full = node("f", 1024, 1024, &[]);
        assert_eq!(choose([&full, &b].into_iter(), "f", "", &e, 1.0, 512).map(|n| n.name.as_str()), Some("b"), "the one with memory left");
        assert_eq!(choose([&full].into_iter(), "f", "", &e, 1.0, 512).map(|n| n.name.as_str()), Some("f"), "memory is overcommitted, as on one host");
        let mut many = node("m", 8192, 0, &[]);
        many.sandboxes = 100;
        assert!(choose([&many].into_iter(), "m", "", &e, 1.0, 512).is_none(), "at its sandbox limit");
    }

    #[test]
    fn sandbox_ids_in_paths() {
        assert_eq!(sandbox_in_path("/sandboxes/abc"), Some("abc"));
        assert_eq!(sandbox_in_path("/sandboxes/abc/timeout"), Some("abc"));
        assert_eq!(sandbox_in_path("/v2/sandboxes/abc/connect"), Some("abc"));
        assert_eq!(sandbox_in_path("/events/sandboxes/abc"), Some("abc"));
        for none in ["/sandboxes", "/sandboxes/", "/sandboxes/metrics", "/sandboxes/broadcast", "/sandboxes/import", "/templates/x"] {
            assert_eq!(sandbox_in_path(none), None, "{none}");
        }
    }
}
