//! Templates across the cluster. A template (or snapshot) made on one node
//! is published to etcd as a manifest, `templates/<name>`: its defaults and
//! its layers by content digest (`airlock_template::digest`). A node asked
//! to create a sandbox from a template it does not have fetches the
//! layers it lacks from a node that has them (`/_cluster/layers/<sha256>`,
//! an export-format archive), checks each against its digest before using
//! it, and keeps the copy. Layers are stored by digest, so a layer two
//! templates share moves once.
//!
//! A node's `base` template is its host's (its `/usr` is the host's own),
//! so it never moves: a template built on `base` runs only on nodes whose
//! `base` has the same digest (the same host packages).
//!
//! Deleting a template on any node deletes the manifest; the other nodes
//! drop their copies at their next catalog repair, as they do copies a
//! newer build of the same name superseded. A copy records which etcd it
//! was published to (its cluster id): a rebuilt etcd has lost the
//! manifests rather than deleted them, and the nodes publish theirs again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use airlock_template::store::SNAPSHOT_LAYER_PREFIX;
use airlock_template::{digest, ClusterCopy, Store, Template};
use bytes::Bytes;
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};

use super::{key, Cluster, EtcdError, NodeInfo, PREFIX};
use crate::http::{self as h, Resp};
use crate::service::{ApiError, Service};

/// Where a node serves its layers to the others (with the secret only).
pub const LAYER_PATH: &str = "/_cluster/layers/";
/// Fetched layers are stored as `layers/c-<sha256>` (`snap-c-<sha256>` for
/// a snapshot's own layer, so snapshot collection sees it).
const FETCHED: &str = "c-";

/// A template as the cluster knows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// The node it was made on.
    pub node: String,
    /// Its defaults (the layer paths in it are the publisher's).
    pub template: Template,
    /// Root layers, topmost first.
    pub root: Vec<LayerRef>,
    /// `/usr` layers, topmost first.
    pub usr: Vec<LayerRef>,
    /// The digest of the publisher's `base`, when the template sits on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_digest: Option<String>,
    pub published_at: i64,
}

/// One layer of a manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum LayerRef {
    /// The node's own `base` root layer.
    Base,
    /// The host's `/usr`, which `base` shares read-only.
    HostUsr,
    /// The `part` (`root` or `usr`) of the layer directory with this digest.
    Layer { sha256: String, part: String, snapshot: bool },
}

/// The manifest of `t` as this node has it (digests are computed once per
/// layer and cached beside it). Blocking.
fn manifest_of(store: &Store, t: &Template, node: &str) -> Result<Manifest, String> {
    let base = store.get("base").map_err(|e| e.to_string())?;
    let layers = store.layers_dir();
    let map = |p: &PathBuf| -> Result<LayerRef, String> {
        if base.root_layers.first() == Some(p) {
            return Ok(LayerRef::Base);
        }
        if base.usr_layers.first() == Some(p) {
            return Ok(LayerRef::HostUsr);
        }
        let part = p.file_name().and_then(|n| n.to_str()).filter(|n| *n == "root" || *n == "usr");
        match (part, p.parent()) {
            (Some(part), Some(dir)) if dir.parent() == Some(layers.as_path()) => {
                let sha256 = digest::cached_layer_digest(dir).map_err(|e| format!("the digest of {}: {e}", dir.display()))?;
                let snapshot = dir.file_name().is_some_and(|n| n.to_string_lossy().starts_with(SNAPSHOT_LAYER_PREFIX));
                Ok(LayerRef::Layer { sha256, part: part.to_string(), snapshot })
            }
            _ => Err(format!("layer {} is not in the layer store", p.display())),
        }
    };
    let root = t.root_layers.iter().map(map).collect::<Result<Vec<_>, _>>()?;
    let usr = t.usr_layers.iter().map(map).collect::<Result<Vec<_>, _>>()?;
    let on_base = root.iter().chain(&usr).any(|l| matches!(l, LayerRef::Base | LayerRef::HostUsr));
    Ok(Manifest { node: node.to_string(), template: t.clone(), root, usr, base_digest: on_base.then(|| base.digest.clone()), published_at: crate::service::now_ms() })
}

/// The directory of the local layer with `sha256`, if there is one.
/// Blocking.
fn find_layer(store: &Store, sha256: &str) -> Option<PathBuf> {
    let layers = store.layers_dir();
    for name in [format!("{FETCHED}{sha256}"), format!("{SNAPSHOT_LAYER_PREFIX}{FETCHED}{sha256}")] {
        let d = layers.join(name);
        if digest::recorded(&d).as_deref() == Some(sha256) {
            return Some(d);
        }
    }
    // A layer made here: its digest was recorded when it was published.
    std::fs::read_dir(&layers)
        .ok()?
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.path())
        .find(|d| digest::recorded(d).as_deref() == Some(sha256))
}

/// `GET /_cluster/layers/<sha256>` (another node's): the layer as an
/// export-format archive, streamed.
pub async fn serve_layer(svc: &Arc<Service>, sha256: &str) -> Resp {
    if !digest::valid(sha256) {
        return h::error(400, format!("{sha256:?} is not a layer digest"));
    }
    let store = svc.builder.store.clone();
    let sha = sha256.to_string();
    let Ok(Some(dir)) = svc.blocking(move || find_layer(&store, &sha)).await else {
        return h::error(404, format!("no layer sha256:{sha256} on this node"));
    };
    let manifest = serde_json::json!({ "layer": sha256 }).to_string().into_bytes();
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let sha = sha256.to_string();
    tokio::task::spawn_blocking(move || {
        let r = airlock_template::archive::write(&dir, &manifest, std::io::BufWriter::with_capacity(256 * 1024, crate::api::BodyWriter(tx.clone())))
            .and_then(|w| w.into_inner().map_err(|e| e.into_error()).map(|_| ()));
        if let Err(e) = r {
            tracing::warn!(layer = %sha, error = %e, "sending a layer to another node ended early");
            let _ = tx.blocking_send(Err(Box::new(e)));
        }
    });
    let body = http_body_util::StreamBody::new(futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) }));
    let mut r = http::Response::new(BodyExt::boxed_unsync(body));
    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/zstd"));
    r
}

impl Cluster {
    /// The cluster's manifest of `name` and its revision.
    pub async fn manifest(&self, name: &str) -> Result<Option<(Manifest, i64)>, EtcdError> {
        let Some(kv) = self.etcd.get(&key("templates", name)).await? else { return Ok(None) };
        let m = serde_json::from_slice(&kv.value).map_err(|e| EtcdError::Protocol(format!("the manifest of template {name}: {e}")))?;
        Ok(Some((m, kv.mod_revision)))
    }

    /// Every manifest in the cluster.
    pub async fn manifests(&self) -> Result<Vec<Manifest>, EtcdError> {
        Ok(self.etcd.prefix(&format!("{PREFIX}templates/")).await?.into_iter().filter_map(|kv| serde_json::from_slice(&kv.value).ok()).collect())
    }

    /// Removes the cluster's manifest of `name` (it was deleted through this
    /// node); whether there was one.
    pub async fn forget_template(&self, name: &str) -> Result<bool, EtcdError> {
        self.etcd.delete(&key("templates", name)).await
    }

    /// Makes a local copy of the cluster's template `name`, fetching the
    /// layers this node lacks; `None` when the cluster has no such template.
    /// The caller holds the template's build lock.
    pub async fn fetch_template(&self, svc: &Service, name: &str) -> Result<Option<Template>, ApiError> {
        let Some((m, revision)) = self.manifest(name).await.map_err(|e| super::unavailable(&format!("looking for template '{name}' in the cluster"), &e))? else {
            return Ok(None);
        };
        let store = svc.builder.store.clone();
        let base = svc.blocking(move || store.ensure_base()).await?.map_err(|e| ApiError::Internal(format!("the base template: {e}")))?;
        if let Some(d) = &m.base_digest {
            if *d != base.digest {
                return Err(ApiError::Conflict(format!(
                    "template '{name}' was built on node {} on a base made from other host packages than this node's (base digest {d} there, {} here); build it on this node, or drain this one",
                    m.node, base.digest
                )));
            }
        }
        // A fresh read (a fetch is rare, and a cached list may predate the
        // template): the live nodes that list it and, first, the one it was
        // made on (whose entry may not list it yet).
        let mut sources: Vec<NodeInfo> = self
            .refresh_nodes()
            .await
            .map_err(|e| super::unavailable("finding a node that has the template", &e))?
            .0
            .into_values()
            .filter(|n| n.name != self.cfg.node && (n.name == m.node || n.templates.iter().any(|t| t == name)))
            .collect();
        sources.sort_by_key(|n| n.name != m.node);
        let mut leases = Vec::new();
        let mut root_layers = Vec::new();
        let mut usr_layers = Vec::new();
        for (refs, out) in [(&m.root, &mut root_layers), (&m.usr, &mut usr_layers)] {
            for r in refs {
                out.push(match r {
                    LayerRef::Base => base.root_layers.first().cloned().ok_or_else(|| ApiError::Internal("the base template has no root layer".into()))?,
                    LayerRef::HostUsr => base.usr_layers.first().cloned().ok_or_else(|| ApiError::Internal("the base template has no /usr layer".into()))?,
                    LayerRef::Layer { sha256, part, snapshot } => {
                        if !digest::valid(sha256) || (part != "root" && part != "usr") {
                            return Err(ApiError::Unavailable(format!("the cluster's manifest of template '{name}' names a layer {sha256:?}/{part:?}, which is not one")));
                        }
                        let store = svc.builder.store.clone();
                        let sha = sha256.clone();
                        let dir = match svc.blocking(move || find_layer(&store, &sha)).await? {
                            Some(d) => d,
                            None => self.fetch_layer(svc, &sources, name, sha256, *snapshot).await?,
                        };
                        leases.push(svc.lease(dir.clone()));
                        dir.join(part)
                    }
                });
            }
        }
        let t = Template { root_layers, usr_layers, cluster: Some(self.copy_of(&m.node, revision)), ..m.template.clone() };
        let store = svc.builder.store.clone();
        let t2 = t.clone();
        svc.blocking(move || store.save(&t2)).await?.map_err(|e| ApiError::Internal(format!("saving template {name}: {e}")))?;
        drop(leases);
        tracing::info!(template = %name, from = %m.node, "template copied from the cluster");
        Ok(Some(t))
    }

    /// One layer from the first of `sources` that sends one matching its
    /// digest; the directory it is installed in.
    async fn fetch_layer(&self, svc: &Service, sources: &[NodeInfo], template: &str, sha256: &str, snapshot: bool) -> Result<PathBuf, ApiError> {
        if sources.is_empty() {
            return Err(ApiError::Unavailable(format!("template '{template}' is in the cluster, but no live node has it (this node lacks layer sha256:{sha256})")));
        }
        svc.check_disk("fetching a template layer")?;
        let mut errors = Vec::new();
        for n in sources {
            match self.fetch_layer_from(svc, n, sha256, snapshot).await {
                Ok(d) => {
                    tracing::info!(layer = %sha256, node = %n.name, template = %template, "layer fetched and verified");
                    return Ok(d);
                }
                Err(e) => {
                    tracing::warn!(layer = %sha256, node = %n.name, error = %e, "fetching a layer failed");
                    errors.push(format!("from node {}: {e}", n.name));
                }
            }
        }
        Err(ApiError::Unavailable(format!("template '{template}': layer sha256:{sha256} could not be fetched: {}", errors.join("; "))))
    }

    async fn fetch_layer_from(&self, svc: &Service, node: &NodeInfo, sha256: &str, snapshot: bool) -> Result<PathBuf, String> {
        let layers = svc.builder.store.layers_dir();
        tokio::fs::create_dir_all(&layers).await.map_err(|e| format!("creating {}: {e}", layers.display()))?;
        let token = crate::ids::sandbox_id().map_err(|e| e.to_string())?;
        let (file, tmp) = (layers.join(format!(".fetch-{token}.zst")), layers.join(format!(".fetch-{token}")));
        // Whatever happens (an error, or the create's client going away and
        // the create with it), nothing of the fetch stays.
        let _aside = Aside(vec![file.clone(), tmp.clone()]);
        let req = http::Request::get(format!("{LAYER_PATH}{sha256}")).body(h::full(Bytes::new())).map_err(|e| e.to_string())?;
        let resp = self.forward(node, req).await;
        let status = resp.status();
        if !status.is_success() {
            // An error's text (ours are small JSON).
            let mut body = resp.into_body();
            let mut text = Vec::new();
            while let Some(Ok(frame)) = body.frame().await {
                if let Ok(d) = frame.into_data() {
                    text.extend_from_slice(&d);
                }
                if text.len() > 4096 {
                    break;
                }
            }
            return Err(format!("{status}: {}", String::from_utf8_lossy(&text[..text.len().min(4096)]).trim()));
        }
        let limit = crate::service::import_limit_bytes(&svc.cfg);
        let received = receive(resp, &file, limit).await;
        let result = match received {
            Err(e) => Err(e),
            Ok(()) => {
                let (f2, t2, sha) = (file.clone(), tmp.clone(), sha256.to_string());
                let final_dir = layers.join(format!("{}{FETCHED}{sha256}", if snapshot { SNAPSHOT_LAYER_PREFIX } else { "" }));
                svc.blocking(move || install(&f2, &t2, &final_dir, &sha, limit)).await.map_err(|e| e.to_string()).and_then(|r| r)
            }
        };
        result
    }

    /// Publishes the templates made here that the cluster does not have yet
    /// (after a build or a snapshot, at the next heartbeat).
    pub(super) async fn publish_templates(&self, svc: &Arc<Service>) -> Result<(), EtcdError> {
        let store = svc.builder.store.clone();
        let Ok(Ok(list)) = svc.blocking(move || store.list()).await else { return Ok(()) };
        for t in list.into_iter().filter(|t| t.name != "base" && t.cluster.is_none()) {
            let (store, t2, me) = (svc.builder.store.clone(), t.clone(), self.cfg.node.clone());
            let m = match svc.blocking(move || manifest_of(&store, &t2, &me)).await {
                Ok(Ok(m)) => m,
                Ok(Err(e)) => {
                    tracing::debug!(template = %t.name, error = %e, "template not published to the cluster");
                    continue;
                }
                Err(_) => continue,
            };
            let v = serde_json::to_vec(&m).map_err(|e| EtcdError::Protocol(e.to_string()))?;
            let k = key("templates", &t.name);
            let put = match self.etcd.get(&k).await? {
                None => self.etcd.create(&k, &v, None).await?,
                Some(kv) => {
                    let theirs: Option<Manifest> = serde_json::from_slice(&kv.value).ok();
                    if let Some(o) = theirs.as_ref().filter(|o| !t.digest.is_empty() && o.template.digest == t.digest) {
                        // The same build made on another node too (a shipped
                        // recipe built on first use on each): this copy is it.
                        self.mark(svc, &t, Some(self.copy_of(&o.node, kv.mod_revision))).await;
                        continue;
                    }
                    if theirs.as_ref().is_some_and(|o| o.template.created_at > t.created_at) {
                        // A newer build of this name was published elsewhere.
                        self.drop_copy(svc, &t, "a newer build of it is in the cluster").await;
                        continue;
                    }
                    self.etcd.swap(&k, kv.mod_revision, &v, None).await?
                }
            };
            if !put {
                continue; // another node wrote it meanwhile: the next heartbeat looks again
            }
            let revision = self.etcd.get(&k).await?.map_or(0, |kv| kv.mod_revision);
            let store = svc.builder.store.clone();
            let copy = self.copy_of(&self.cfg.node, revision);
            let name = t.name.clone();
            let saved = svc
                .blocking(move || {
                    // Unless it was rebuilt meanwhile (then that build is published next).
                    let now = store.get(&t.name).ok()?;
                    (now.created_at == t.created_at && now.digest == t.digest).then(|| store.save(&Template { cluster: Some(copy), ..now }))
                })
                .await;
            if matches!(saved, Ok(Some(Ok(())))) {
                tracing::info!(template = %name, revision, "template published to the cluster");
            }
        }
        Ok(())
    }

    /// Drops this node's copies of templates the cluster deleted or a newer
    /// build superseded (they are fetched again when next used).
    pub(super) async fn prune_templates(&self, svc: &Arc<Service>) -> Result<(), EtcdError> {
        let prefix = format!("{PREFIX}templates/");
        let remote: HashMap<String, i64> = self.etcd.prefix_keys(&prefix).await?.into_iter().map(|kv| (kv.key[prefix.len()..].to_string(), kv.mod_revision)).collect();
        let store = svc.builder.store.clone();
        let Ok(Ok(list)) = svc.blocking(move || store.list()).await else { return Ok(()) };
        let etcd_id = self.etcd.cluster_id();
        for t in list {
            let Some(copy) = t.cluster.clone() else { continue };
            if !etcd_id.is_empty() && copy.store != etcd_id {
                // Another etcd than the one this copy was published to (it
                // was rebuilt): it has lost the manifests, not deleted
                // them. The copy is published again, as made here.
                tracing::info!(template = %t.name, "the cluster store is new: publishing the template again");
                self.mark(svc, &t, None).await;
                continue;
            }
            match remote.get(&t.name) {
                Some(&rev) if rev == copy.revision => {}
                None => self.drop_copy(svc, &t, "it was deleted from the cluster").await,
                Some(_) => match self.manifest(&t.name).await? {
                    // Published again unchanged (by a node that had the same build).
                    Some((m, rev)) if !t.digest.is_empty() && m.template.digest == t.digest => {
                        self.mark(svc, &t, Some(self.copy_of(&m.node, rev))).await;
                    }
                    Some(_) => self.drop_copy(svc, &t, "a newer build of it is in the cluster").await,
                    None => self.drop_copy(svc, &t, "it was deleted from the cluster").await,
                },
            }
        }
        Ok(())
    }

    /// What a copy of a manifest `node` published, at `revision` of this
    /// etcd, records.
    fn copy_of(&self, node: &str, revision: i64) -> ClusterCopy {
        ClusterCopy { node: node.to_string(), revision, store: self.etcd.cluster_id() }
    }

    /// Saves this node's copy of `t` as standing so to the cluster's
    /// manifest (`None`: made here, to be published).
    async fn mark(&self, svc: &Service, t: &Template, cluster: Option<ClusterCopy>) {
        let store = svc.builder.store.clone();
        let t = Template { cluster, ..t.clone() };
        if let Ok(Err(e)) = svc.blocking(move || store.save(&t)).await {
            tracing::warn!(error = %e, "recording a template's standing in the cluster failed");
        }
    }

    /// Removes this node's copy of `t` (its layers go once no sandbox runs
    /// on them).
    async fn drop_copy(&self, svc: &Arc<Service>, t: &Template, why: &str) {
        let store = svc.builder.store.clone();
        let name = t.name.clone();
        let created_at = t.created_at;
        let r = svc
            .blocking(move || {
                // Only the copy that was looked at, not a build made since.
                match store.get(&name) {
                    Ok(now) if now.created_at == created_at => store.remove(&name).map_err(|e| e.to_string()),
                    _ => Ok(()),
                }
            })
            .await;
        match r {
            Ok(Ok(())) => {
                tracing::info!(template = %t.name, "dropped this node's copy of the template: {why}");
                svc.collect_layers_soon();
            }
            Ok(Err(e)) => tracing::warn!(template = %t.name, error = %e, "dropping this node's copy of the template failed"),
            Err(_) => {}
        }
    }
}

/// Paths removed when the fetch that made them ends (the layer, once
/// installed, is no longer at its temporary path).
struct Aside(Vec<PathBuf>);

impl Drop for Aside {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p).or_else(|_| std::fs::remove_dir_all(p));
        }
    }
}

/// Streams a layer archive's body into `file`, at most `limit` bytes.
async fn receive(resp: Resp, file: &Path, limit: u64) -> Result<(), String> {
    use tokio::io::AsyncWriteExt;
    let mut f = tokio::fs::File::create(file).await.map_err(|e| format!("creating {}: {e}", file.display()))?;
    let mut body = resp.into_body();
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("the layer stream broke off: {e}"))?;
        if let Ok(data) = frame.into_data() {
            n += data.len() as u64;
            if n > limit {
                return Err(format!("the layer is larger than {limit} bytes"));
            }
            f.write_all(&data).await.map_err(|e| format!("writing the layer: {e}"))?;
        }
    }
    f.flush().await.map_err(|e| format!("writing the layer: {e}"))
}

/// Unpacks the archive `file` into `tmp`, checks it against `sha256` and
/// installs it as `final_dir`. Blocking.
fn install(file: &Path, tmp: &Path, final_dir: &Path, sha256: &str, limit: u64) -> Result<PathBuf, String> {
    let f = std::fs::File::open(file).map_err(|e| format!("reading the layer: {e}"))?;
    airlock_template::archive::read(std::io::BufReader::new(f), tmp, limit).map_err(|e| format!("unpacking the layer: {e}"))?;
    let got = digest::layer_digest(tmp).map_err(|e| format!("hashing the layer: {e}"))?;
    if got != sha256 {
        return Err(format!("what it sent does not match the layer's digest (it hashes to sha256:{got}); not used"));
    }
    digest::record(tmp, sha256).map_err(|e| format!("recording the layer's digest: {e}"))?;
    if digest::recorded(final_dir).as_deref() == Some(sha256) {
        // Fetched meanwhile for another template.
        let _ = std::fs::remove_dir_all(tmp);
        return Ok(final_dir.to_path_buf());
    }
    let _ = std::fs::remove_dir_all(final_dir);
    std::fs::rename(tmp, final_dir).map_err(|e| format!("installing the layer: {e}"))?;
    Ok(final_dir.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fetched_layer_is_installed_by_its_digest_only_when_it_matches() {
        let t = tempfile::tempdir().expect("tmp");
        let store = Store::new(t.path().join("templates"));
        let src = t.path().join("src");
        std::fs::create_dir_all(src.join("root/opt")).expect("mkdir");
        std::fs::write(src.join("root/opt/marker"), b"built\n").expect("write");
        let sha = digest::layer_digest(&src).expect("digest");
        let archive = t.path().join("layer.zst");
        std::fs::write(&archive, airlock_template::archive::write(&src, b"{}", Vec::new()).expect("archive")).expect("write");
        let layers = store.layers_dir();
        std::fs::create_dir_all(&layers).expect("mkdir");

        let wrong = "0".repeat(64);
        let e = install(&archive, &layers.join(".fetch-a"), &layers.join(format!("{FETCHED}{wrong}")), &wrong, 1 << 20).expect_err("refused");
        assert!(e.contains("does not match") && e.contains(&sha), "{e}");
        assert!(!layers.join(format!("{FETCHED}{wrong}")).exists(), "a refused layer is not installed");
        assert!(find_layer(&store, &wrong).is_none());

        let dir = install(&archive, &layers.join(".fetch-b"), &layers.join(format!("{FETCHED}{sha}")), &sha, 1 << 20).expect("installed");
        assert_eq!(std::fs::read(dir.join("root/opt/marker")).expect("read"), b"built\n");
        assert_eq!(find_layer(&store, &sha), Some(dir.clone()));
        // The same layer again (for another template) keeps the first copy.
        assert_eq!(install(&archive, &layers.join(".fetch-c"), &dir, &sha, 1 << 20).expect("again"), dir);
        assert!(!layers.join(".fetch-c").exists());
        // A layer made here is found by the digest recorded at publication.
        std::fs::rename(&src, layers.join("k1")).expect("move");
        digest::cached_layer_digest(&layers.join("k1")).expect("digest");
        std::fs::remove_dir_all(&dir).expect("rm");
        assert_eq!(find_layer(&store, &sha), Some(layers.join("k1")));
        // Too big for the limit.
        let e = install(&archive, &layers.join(".fetch-d"), &layers.join("x"), &sha, 2).expect_err("too big");
        assert!(e.contains("more than"), "{e}");
    }
}
