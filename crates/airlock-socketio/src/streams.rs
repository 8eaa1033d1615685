//! More of what Airlock adds: lifecycle events and live usage as
//! subscriptions pushed to the socket, a sandbox's usage history, and
//! volumes.
//!
//! A subscription is a task that follows one of the server's SSE streams
//! (`GET /events`, `GET /sandboxes/{id}/metrics/stream`) with the socket's
//! key and emits what arrives, tagged with the subscription's id. It ends
//! when the client cancels it, when the stream ends (a metrics stream ends
//! with its sandbox) or when the socket goes: nothing is kept for a client
//! that left. A client that reconnects subscribes again; events carry
//! their sequence number, so it asks for those `after` the last it saw
//! and misses none.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use airlock_sdk::EventQuery;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use socketioxide::extract::SocketRef;

use crate::error::GwError;
use crate::ops::{args, check_id};
use crate::{emit, on, Session};

/// Subscriptions one socket may hold at once: each is a stream held open
/// on the server.
const MAX_SUBSCRIPTIONS: usize = 32;

static NEXT_SUB: AtomicU64 = AtomicU64::new(1);

/// A socket's subscriptions, by id; aborted with the socket.
#[derive(Default)]
pub(crate) struct Subscriptions(Mutex<HashMap<String, tokio::task::AbortHandle>>);

impl Subscriptions {
    /// Before a stream is opened for `id`: `true` when it is live already
    /// (a retried subscribe whose first answer was lost: nothing to do),
    /// an error when there is no room.
    fn exists(&self, id: &str) -> Result<bool, GwError> {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.retain(|_, h| !h.is_finished());
        if m.contains_key(id) {
            return Ok(true);
        }
        if m.len() >= MAX_SUBSCRIPTIONS {
            return Err(GwError::invalid(format!("a connection holds at most {MAX_SUBSCRIPTIONS} subscriptions; cancel one first")));
        }
        Ok(false)
    }

    fn insert(&self, id: String, h: tokio::task::AbortHandle) -> Result<(), GwError> {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.retain(|_, h| !h.is_finished());
        if m.len() >= MAX_SUBSCRIPTIONS || m.contains_key(&id) {
            // Two subscribes raced past check_free.
            h.abort();
            return Err(GwError::invalid(format!("subscription {id:?} exists, or this connection holds {MAX_SUBSCRIPTIONS} already")));
        }
        m.insert(id, h);
        Ok(())
    }

    fn cancel(&self, id: &str) -> bool {
        let h = self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
        h.map(|h| {
            let live = !h.is_finished();
            h.abort();
            live
        })
        .unwrap_or(false)
    }

    pub(crate) fn cancel_all(&self) {
        for (_, h) in self.0.lock().unwrap_or_else(|p| p.into_inner()).drain() {
            h.abort();
        }
    }
}

pub(crate) fn register(s: &SocketRef, sess: &Arc<Session>) {
    on(s, "events:subscribe", sess, subscribe_events);
    on(s, "metrics:subscribe", sess, subscribe_metrics);
    on(s, "subscription:cancel", sess, cancel);
    on(s, "sandbox:metrics", sess, metrics_history);
    on(s, "volume:create", sess, create_volume);
    on(s, "volume:list", sess, list_volumes);
    on(s, "volume:get", sess, get_volume);
    on(s, "volume:delete", sess, delete_volume);
    let sess = sess.clone();
    s.on_disconnect(move || {
        sess.subs.cancel_all();
        async {}
    });
}

/// The client's id for a new subscription, or one made here. A client that
/// names it can match the items that arrive before the acknowledgement
/// (stored events stream at once).
fn sub_id(kind: &str, given: Option<String>) -> Result<String, GwError> {
    match given {
        Some(id) => {
            check_id("subscriptionId", &id)?;
            Ok(id)
        }
        None => Ok(format!("{kind}_{}", NEXT_SUB.fetch_add(1, Ordering::Relaxed))),
    }
}

fn event_view(e: &airlock_proto::api::Event) -> Value {
    json!({
        "id": e.id,
        "type": e.kind,
        "sandboxId": e.sandbox_id,
        "templateId": e.template_id,
        "timestamp": e.timestamp,
        "metadata": e.metadata,
        "data": e.data,
    })
}

fn metric_view(m: &airlock_proto::api::SandboxMetric) -> Value {
    json!({
        "timestamp": m.timestamp,
        "timestampUnix": m.timestamp_unix,
        "cpuCount": m.cpu_count,
        "cpuUsedPct": m.cpu_used_pct,
        "memUsed": m.mem_used,
        "memTotal": m.mem_total,
        "memCache": m.mem_cache,
        "diskUsed": m.disk_used,
        "diskTotal": m.disk_total,
        "netRxBytes": m.net_rx_bytes,
        "netTxBytes": m.net_tx_bytes,
    })
}

async fn subscribe_events(sess: Arc<Session>, s: SocketRef, v: Value) -> Result<Value, GwError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct A {
        sandbox_id: Option<String>,
        #[serde(default)]
        types: Vec<String>,
        #[serde(default)]
        metadata: BTreeMap<String, String>,
        /// Only events after this sequence number (a reconnecting client's last).
        after: Option<i64>,
        subscription_id: Option<String>,
    }
    let a: A = args("events:subscribe", v)?;
    if let Some(id) = &a.sandbox_id {
        check_id("sandboxId", id)?;
    }
    for t in &a.types {
        if t.is_empty() || t.len() > 64 || !t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.') {
            return Err(GwError::invalid(format!("types: {:?} is not an event type", t.chars().take(40).collect::<String>())));
        }
    }
    let id = sub_id("evs", a.subscription_id)?;
    if sess.subs.exists(&id)? {
        return Ok(json!({ "subscriptionId": id }));
    }
    let q = EventQuery { sandbox: a.sandbox_id, kinds: a.types, metadata: a.metadata.into_iter().collect(), after: a.after };
    // Opened here, so an unknown sandbox or a refused key is this call's
    // error rather than a subscription that never delivers.
    let mut stream = sess.client.events(&q).await?;
    let (sub, sock) = (id.clone(), s.clone());
    let task = tokio::spawn(async move {
        while let Some(item) = stream.next().await {
            let ok = match item {
                Ok(e) => emit(&sock, "events:event", &json!({ "subscriptionId": sub, "event": event_view(&e) })).await,
                Err(e) => {
                    let e = GwError::from(e);
                    let _ = emit(&sock, "subscription:end", &json!({ "subscriptionId": sub, "error": { "code": e.code, "message": e.message } })).await;
                    return;
                }
            };
            if !ok {
                return;
            }
        }
        // The server closed the stream (it is shutting down).
        let _ = emit(&sock, "subscription:end", &json!({ "subscriptionId": sub, "error": { "code": "CONNECTION_ERROR", "message": "the server ended the event stream" } })).await;
    });
    sess.subs.insert(id.clone(), task.abort_handle())?;
    Ok(json!({ "subscriptionId": id }))
}

async fn subscribe_metrics(sess: Arc<Session>, s: SocketRef, v: Value) -> Result<Value, GwError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct A {
        sandbox_id: String,
        interval_ms: Option<u64>,
        subscription_id: Option<String>,
    }
    let a: A = args("metrics:subscribe", v)?;
    check_id("sandboxId", &a.sandbox_id)?;
    let ms = a.interval_ms.unwrap_or(1000);
    if !(500..=60_000).contains(&ms) {
        return Err(GwError::invalid(format!("intervalMs is 500 to 60000, got {ms}")));
    }
    let id = sub_id("met", a.subscription_id)?;
    if sess.subs.exists(&id)? {
        return Ok(json!({ "subscriptionId": id }));
    }
    let mut stream = sess.client.metrics_stream(&a.sandbox_id, Duration::from_millis(ms)).await?;
    let (sub, sock, sandbox) = (id.clone(), s.clone(), a.sandbox_id);
    let task = tokio::spawn(async move {
        while let Some(item) = stream.next().await {
            match item {
                Ok(m) => {
                    if !emit(&sock, "metrics:sample", &json!({ "subscriptionId": sub, "sandboxId": sandbox, "metrics": metric_view(&m) })).await {
                        return;
                    }
                }
                Err(e) => {
                    let e = GwError::from(e);
                    let _ = emit(&sock, "subscription:end", &json!({ "subscriptionId": sub, "error": { "code": e.code, "message": e.message } })).await;
                    return;
                }
            }
        }
        // The stream ends with the sandbox's running (killed, paused).
        let _ = emit(&sock, "subscription:end", &json!({ "subscriptionId": sub, "reason": "the sandbox is no longer running" })).await;
    });
    sess.subs.insert(id.clone(), task.abort_handle())?;
    Ok(json!({ "subscriptionId": id }))
}

async fn cancel(sess: Arc<Session>, _s: SocketRef, v: Value) -> Result<Value, GwError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct A {
        subscription_id: String,
    }
    let a: A = args("subscription:cancel", v)?;
    check_id("subscriptionId", &a.subscription_id)?;
    Ok(json!({ "subscriptionId": a.subscription_id, "cancelled": sess.subs.cancel(&a.subscription_id) }))
}

/// RFC 3339 or milliseconds since the epoch.
fn when(field: &str, v: Option<&Value>) -> Result<Option<SystemTime>, GwError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            let ms = n.as_u64().ok_or_else(|| GwError::invalid(format!("{field} must be milliseconds since the epoch or an RFC 3339 date")))?;
            Ok(Some(SystemTime::UNIX_EPOCH + Duration::from_millis(ms)))
        }
        Some(Value::String(s)) => airlock_proto::time::parse_rfc3339(s).map(Some).ok_or_else(|| GwError::invalid(format!("{field}: {s:?} is not an RFC 3339 date"))),
        Some(_) => Err(GwError::invalid(format!("{field} must be milliseconds since the epoch or an RFC 3339 date"))),
    }
}

async fn metrics_history(sess: Arc<Session>, _s: SocketRef, v: Value) -> Result<Value, GwError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct A {
        sandbox_id: String,
        start: Option<Value>,
        end: Option<Value>,
    }
    let a: A = args("sandbox:metrics", v)?;
    check_id("sandboxId", &a.sandbox_id)?;
    let (start, end) = (when("start", a.start.as_ref())?, when("end", a.end.as_ref())?);
    let all = sess.client.metrics(&a.sandbox_id, start, end).await?;
    Ok(json!({ "sandboxId": a.sandbox_id, "metrics": all.iter().map(metric_view).collect::<Vec<_>>() }))
}

// --------------------------------------------------------------- volumes

fn volume_view(v: &airlock_proto::volume::Volume) -> Value {
    json!({
        "id": v.volume_id,
        "name": v.name,
        "sizeMB": v.size_mb,
        "limitEnforced": v.limit_enforced,
        "totalSizeBytes": v.total_size_bytes,
        "totalFileCount": v.total_file_count,
        "createdAt": v.created_at,
        "updatedAt": v.updated_at,
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VolumeArgs {
    volume_id: String,
}

async fn create_volume(sess: Arc<Session>, _s: SocketRef, v: Value) -> Result<Value, GwError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct A {
        name: String,
        #[serde(rename = "sizeMB")]
        size_mb: Option<u64>,
    }
    let a: A = args("volume:create", v)?;
    check_id("name", &a.name)?;
    let vol = sess.client.volumes().create(&a.name, a.size_mb).await?;
    Ok(json!({ "volume": volume_view(&vol) }))
}

async fn list_volumes(sess: Arc<Session>, _s: SocketRef, _v: Value) -> Result<Value, GwError> {
    let all = sess.client.volumes().list().await?;
    Ok(json!({ "volumes": all.iter().map(volume_view).collect::<Vec<_>>() }))
}

async fn get_volume(sess: Arc<Session>, _s: SocketRef, v: Value) -> Result<Value, GwError> {
    let a: VolumeArgs = args("volume:get", v)?;
    check_id("volumeId", &a.volume_id)?;
    Ok(json!({ "volume": volume_view(&sess.client.volumes().get(&a.volume_id).await?) }))
}

async fn delete_volume(sess: Arc<Session>, _s: SocketRef, v: Value) -> Result<Value, GwError> {
    let a: VolumeArgs = args("volume:delete", v)?;
    check_id("volumeId", &a.volume_id)?;
    sess.client.volumes().delete(&a.volume_id).await?;
    Ok(json!({ "volumeId": a.volume_id, "deleted": true }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idle() -> tokio::task::AbortHandle {
        tokio::spawn(std::future::pending::<()>()).abort_handle()
    }

    #[tokio::test]
    async fn subscriptions_are_capped_retried_subscribes_are_no_ops_and_cancels_say_whether_one_was_live() {
        let subs = Subscriptions::default();
        assert!(!subs.exists("a").expect("room"));
        subs.insert("a".into(), idle()).expect("insert");
        assert!(subs.exists("a").expect("exists"), "the same id again is the one already live");
        assert!(subs.insert("a".into(), idle()).is_err(), "two streams under one id");
        for i in 1..MAX_SUBSCRIPTIONS {
            subs.insert(format!("s{i}"), idle()).expect("under the cap");
        }
        assert!(subs.exists("one-too-many").is_err());
        assert!(subs.cancel("a"));
        assert!(!subs.cancel("a"), "cancelled already");
        assert!(!subs.exists("one-too-many").expect("room again"));
        // A finished task frees its place without a cancel.
        let done = tokio::spawn(async {});
        let h = done.abort_handle();
        done.await.expect("join");
        subs.insert("a".into(), h).expect("insert a finished one");
        assert!(!subs.exists("a").expect("finished ones are dropped"));
        subs.cancel_all();
        assert!(!subs.exists("s1").expect("all gone"));
    }

    #[test]
    fn times_are_milliseconds_or_rfc_3339() {
        assert_eq!(when("start", Some(&json!(1000))).expect("ms"), Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1)));
        assert!(when("start", Some(&json!("2026-12-03T06:00:00Z"))).expect("date").is_some());
        assert!(when("start", None).expect("none").is_none());
        assert!(when("start", Some(&json!("yesterday"))).is_err());
        assert!(when("start", Some(&json!(-5))).is_err());
        assert!(when("start", Some(&json!([1]))).is_err());
    }
}
