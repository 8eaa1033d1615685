//! What Airlock adds to the SandboxSDK operations: snapshots, forks, and
//! pausing and resuming (filesystem state; memory is not captured on
//! hosts without checkpointing).

use std::sync::Arc;
use std::time::Duration;

use airlock_sdk::SnapshotInfo;
use serde::Deserialize;
use serde_json::{json, Value};
use socketioxide::extract::SocketRef;

use crate::error::GwError;
use crate::ops::{args, check_id, lifetime, sandbox_view};
use crate::{on, Session};

/// Forks one call may ask for (the server's own bound).
const MAX_FORKS: u32 = 20;

pub(crate) fn register(s: &SocketRef, sess: &Arc<Session>) {
    on(s, "snapshot:create", sess, create_snapshot);
    on(s, "snapshot:list", sess, list_snapshots);
    on(s, "snapshot:delete", sess, delete_snapshot);
    on(s, "sandbox:fork", sess, fork);
    on(s, "sandbox:pause", sess, pause);
    on(s, "sandbox:resume", sess, resume);
}

fn snapshot_view(s: &SnapshotInfo) -> Value {
    json!({
        "id": s.snapshot_id,
        "names": s.names,
        "sandboxId": s.sandbox_id,
        "sizeBytes": s.size_bytes,
        "createdAt": s.created_at,
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SnapshotArgs {
    sandbox_id: String,
    name: Option<String>,
}

async fn create_snapshot(sess: Arc<Session>, _s: SocketRef, v: Value) -> Result<Value, GwError> {
    let a: SnapshotArgs = args("snapshot:create", v)?;
    check_id("sandboxId", &a.sandbox_id)?;
    if let Some(n) = &a.name {
        check_id("name", n)?;
    }
    let snap = sess.client.snapshot(&a.sandbox_id, a.name.as_deref()).await?;
    Ok(json!({ "snapshot": snapshot_view(&snap) }))
}

async fn list_snapshots(sess: Arc<Session>, _s: SocketRef, v: Value) -> Result<Value, GwError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct A {
        sandbox_id: Option<String>,
    }
    let a: A = args("snapshot:list", v)?;
    if let Some(id) = &a.sandbox_id {
        check_id("sandboxId", id)?;
    }
    let all = sess.client.snapshots(a.sandbox_id.as_deref()).await?;
    Ok(json!({ "snapshots": all.iter().map(snapshot_view).collect::<Vec<_>>() }))
}

async fn delete_snapshot(sess: Arc<Session>, _s: SocketRef, v: Value) -> Result<Value, GwError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct A {
        snapshot_id: String,
    }
    let a: A = args("snapshot:delete", v)?;
    check_id("snapshotId", &a.snapshot_id)?;
    if !sess.client.delete_snapshot(&a.snapshot_id).await? {
        return Err(GwError::not_found(format!("no snapshot {:?}", a.snapshot_id)));
    }
    Ok(json!({ "snapshotId": a.snapshot_id, "deleted": true }))
}

async fn fork(sess: Arc<Session>, _s: SocketRef, v: Value) -> Result<Value, GwError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct A {
        sandbox_id: String,
        count: Option<u32>,
        expiry_time: Option<Value>,
    }
    let a: A = args("sandbox:fork", v)?;
    check_id("sandboxId", &a.sandbox_id)?;
    let count = a.count.unwrap_or(1);
    if !(1..=MAX_FORKS).contains(&count) {
        return Err(GwError::invalid(format!("count is 1 to {MAX_FORKS}, got {count}")));
    }
    let life = lifetime(a.expiry_time.as_ref())?;
    let forks = sess.client.fork(&a.sandbox_id, count, Some(life)).await?;
    let mut out = Vec::with_capacity(forks.len());
    for f in forks {
        match f {
            Ok(sbx) => {
                sess.remember(&sbx);
                match sbx.info().await {
                    Ok(d) => out.push(json!({ "sandbox": sandbox_view(&d) })),
                    Err(e) => out.push(json!({ "sandboxId": sbx.id(), "error": GwError::from(e) })),
                }
            }
            Err(e) => out.push(json!({ "error": GwError::from(e) })),
        }
    }
    Ok(json!({ "forks": out }))
}

async fn pause(sess: Arc<Session>, _s: SocketRef, v: Value) -> Result<Value, GwError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct A {
        sandbox_id: String,
    }
    let a: A = args("sandbox:pause", v)?;
    check_id("sandboxId", &a.sandbox_id)?;
    let paused = sess.client.pause(&a.sandbox_id).await?;
    Ok(json!({ "sandboxId": a.sandbox_id, "paused": true, "wasRunning": paused }))
}

async fn resume(sess: Arc<Session>, _s: SocketRef, v: Value) -> Result<Value, GwError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct A {
        sandbox_id: String,
        expiry_time: Option<Value>,
    }
    let a: A = args("sandbox:resume", v)?;
    check_id("sandboxId", &a.sandbox_id)?;
    let life: Option<Duration> = match &a.expiry_time {
        None | Some(Value::Null) => None,
        Some(v) => Some(lifetime(Some(v))?),
    };
    let sbx = sess.client.connect_with_timeout(&a.sandbox_id, life).await?;
    // Its envd token may be new after a resume.
    sess.remember(&sbx);
    let d = sbx.info().await?;
    Ok(json!({ "sandbox": sandbox_view(&d) }))
}
