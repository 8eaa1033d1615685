//! Keeping and branching sandbox state: snapshots, forks, the
//! filesystem-only pause, soft and hard reset, restart, and export/import
//! of a sandbox's state as one archive.
//!
//! Snapshots and forks hold the filesystem (Airlock does not checkpoint
//! processes): sandboxes made from them boot afresh over those files.

use std::collections::BTreeMap;
use std::time::Duration;

use airlock_proto::api::{ForkRequest, ForkResult, RestartRequest, SnapshotInfo, SnapshotRequest};
use http::Method;
use http_body::Body;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::client::{encode, Client};
use crate::error::{Error, Result};
use crate::sandbox::Sandbox;

/// Snapshot ids and names go into paths: only the characters they may
/// have (letters, digits, `-_.:`).
fn checked(id: &str) -> Result<&str> {
    if !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c)) {
        Ok(id)
    } else {
        Err(Error::Config(format!("invalid snapshot id {id:?}")))
    }
}

/// What [`Sandbox::restart`] changes; everything else stays.
#[derive(Debug, Clone, Default)]
pub struct RestartOptions {
    /// Environment variables merged over the sandbox's own.
    pub envs: BTreeMap<String, String>,
    pub cpu_count: Option<f64>,
    pub memory_mb: Option<u64>,
}

impl Sandbox {
    /// Snapshots the sandbox's filesystem (it is frozen while copied, then
    /// continues). `name` names it; a later snapshot with the same name
    /// takes the name over. Create sandboxes from it by passing
    /// [`SnapshotInfo::snapshot_id`] as the template.
    pub async fn snapshot(&self, name: Option<&str>) -> Result<SnapshotInfo> {
        self.client().snapshot(self.id(), name).await
    }

    /// `count` new running sandboxes with this one's files, environment,
    /// metadata and resources, each living `timeout` (the server's default,
    /// 15 s as E2B's, when `None`). One entry per fork: a sandbox or why
    /// that fork failed.
    pub async fn fork(&self, count: u32, timeout: Option<Duration>) -> Result<Vec<Result<Sandbox>>> {
        self.client().fork(self.id(), count, timeout).await
    }

    /// Pauses keeping only the files: every process stops and the memory is
    /// released; resuming boots the sandbox afresh. False if already paused.
    pub async fn pause_filesystem(&self) -> Result<bool> {
        self.client().pause_with(self.id(), false).await
    }

    /// Soft (`hard = false`: every process but the agent killed, files
    /// kept) or hard (back to the template or snapshot it came from, same
    /// id and token) reset.
    pub async fn reset(&self, hard: bool) -> Result<()> {
        self.client().reset(self.id(), hard).await
    }

    /// A fresh agent over the same files, with `opts` applied.
    pub async fn restart(&self, opts: RestartOptions) -> Result<()> {
        self.client().restart(self.id(), opts).await
    }

    /// Whether the sandbox works: its agent runs a command, disk and memory
    /// are below 95%, and each of `checks` (shell commands) exits 0.
    pub async fn health(&self, checks: &[&str]) -> Result<airlock_proto::api::SandboxHealth> {
        self.client().health(self.id(), checks).await
    }

    /// Writes the sandbox's state (an archive: tar + zstd) to `out`;
    /// returns the bytes written.
    pub async fn export<W: AsyncWrite + Unpin>(&self, out: &mut W) -> Result<u64> {
        self.client().export(self.id(), out).await
    }
}

impl Client {
    /// See [`Sandbox::snapshot`].
    pub async fn snapshot(&self, id: &str, name: Option<&str>) -> Result<SnapshotInfo> {
        let body = serde_json::to_value(SnapshotRequest { name: name.map(str::to_string), memory: None }).map_err(|e| Error::Config(e.to_string()))?;
        Ok(self.api_json(Method::POST, &format!("/sandboxes/{}/snapshots", encode(id)), Some(body)).await?.2)
    }

    /// Every snapshot, newest first (of one sandbox when `sandbox` is
    /// given), all pages.
    pub async fn snapshots(&self, sandbox: Option<&str>) -> Result<Vec<SnapshotInfo>> {
        let mut out = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let mut q = vec!["limit=100".to_string()];
            if let Some(s) = sandbox {
                q.push(format!("sandboxID={}", encode(s)));
            }
            if let Some(t) = &next {
                q.push(format!("nextToken={}", encode(t)));
            }
            let (_, headers, page): (_, _, Vec<SnapshotInfo>) = self.api_json(Method::GET, &format!("/snapshots?{}", q.join("&")), None).await?;
            out.extend(page);
            match headers.get("x-next-token").and_then(|v| v.to_str().ok()).filter(|t| !t.is_empty()) {
                Some(t) => next = Some(t.to_string()),
                None => return Ok(out),
            }
        }
    }

    /// Deletes a snapshot; false if there was none. The server refuses
    /// while sandboxes or other snapshots use it.
    pub async fn delete_snapshot(&self, snapshot_id: &str) -> Result<bool> {
        match self.api(Method::DELETE, &format!("/templates/{}", encode(checked(snapshot_id)?)), None).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// See [`Sandbox::fork`].
    pub async fn fork(&self, id: &str, count: u32, timeout: Option<Duration>) -> Result<Vec<Result<Sandbox>>> {
        let req = ForkRequest { count: Some(i64::from(count)), timeout: timeout.map(|t| t.as_secs().max(1) as i64) };
        let body = serde_json::to_value(req).map_err(|e| Error::Config(e.to_string()))?;
        let (_, _, results): (_, _, Vec<ForkResult>) = self.api_json(Method::POST, &format!("/sandboxes/{}/fork", encode(id)), Some(body)).await?;
        Ok(results
            .into_iter()
            .map(|r| match (r.sandbox, r.error) {
                (Some(s), _) => Ok(self.handle_of(s)),
                (None, Some(e)) => Err(crate::error::from_api_status(e.code, &serde_json::to_vec(&e).unwrap_or_default())),
                (None, None) => Err(Error::protocol("a fork result with neither a sandbox nor an error")),
            })
            .collect())
    }

    /// Pauses with memory kept (`memory`, a freeze) or files only.
    pub async fn pause_with(&self, id: &str, memory: bool) -> Result<bool> {
        match self.api(Method::POST, &format!("/sandboxes/{}/pause", encode(id)), Some(json!({ "memory": memory }))).await {
            Ok(_) => Ok(true),
            Err(Error::Http { status: 409, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// See [`Sandbox::reset`].
    pub async fn reset(&self, id: &str, hard: bool) -> Result<()> {
        self.api(Method::POST, &format!("/sandboxes/{}/reset", encode(id)), Some(json!({ "hard": hard }))).await.map(|_| ())
    }

    /// See [`Sandbox::restart`].
    pub async fn restart(&self, id: &str, opts: RestartOptions) -> Result<()> {
        let req = RestartRequest { env_vars: (!opts.envs.is_empty()).then_some(opts.envs), cpu_count: opts.cpu_count, memory_mb: opts.memory_mb };
        let body = serde_json::to_value(req).map_err(|e| Error::Config(e.to_string()))?;
        self.api(Method::POST, &format!("/sandboxes/{}/restart", encode(id)), Some(body)).await.map(|_| ())
    }

    /// See [`Sandbox::health`].
    pub async fn health(&self, id: &str, checks: &[&str]) -> Result<airlock_proto::api::SandboxHealth> {
        let q: Vec<String> = checks.iter().map(|c| format!("check={}", encode(c))).collect();
        let qs = if q.is_empty() { String::new() } else { format!("?{}", q.join("&")) };
        Ok(self.api_json(Method::GET, &format!("/sandboxes/{}/health{qs}", encode(id)), None).await?.2)
    }

    /// See [`Sandbox::export`].
    pub async fn export<W: AsyncWrite + Unpin>(&self, id: &str, out: &mut W) -> Result<u64> {
        let path = format!("/sandboxes/{}/export", encode(id));
        let mut body = self.api_raw(Method::GET, &path, crate::client::full(bytes::Bytes::new()), "application/json", Some(0)).await?.into_body();
        let mut n = 0u64;
        while let Some(frame) = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await {
            let frame = frame.map_err(|e| Error::Connection { url: path.clone(), source: Box::new(e) })?;
            if let Ok(d) = frame.into_data() {
                out.write_all(&d).await.map_err(|e| Error::Config(format!("writing the export: {e}")))?;
                n += d.len() as u64;
            }
        }
        out.flush().await.map_err(|e| Error::Config(format!("writing the export: {e}")))?;
        Ok(n)
    }

    /// A new running sandbox from an export archive read from `archive`,
    /// on the server's copy of the template it names. `force` accepts a
    /// template that changed since the export.
    pub async fn import<R: AsyncRead + Send + 'static>(&self, archive: R, timeout: Option<Duration>, force: bool) -> Result<Sandbox> {
        let mut q = Vec::new();
        if let Some(t) = timeout {
            q.push(format!("timeout={}", t.as_secs().max(1)));
        }
        if force {
            q.push("force=true".to_string());
        }
        let path = format!("/sandboxes/import{}", if q.is_empty() { String::new() } else { format!("?{}", q.join("&")) });
        let body = self.api_raw(Method::POST, &path, crate::files::reader_body(archive), "application/zstd", None).await?.into_body();
        let bytes = self.read_body(body, &path).await?;
        let s: airlock_proto::api::Sandbox = serde_json::from_slice(&bytes).map_err(|e| Error::protocol(format!("{path}: {e}")))?;
        Ok(self.handle_of(s))
    }
}
