//! A small etcd v3 client over etcd's JSON gateway (`POST /v3/kv/range`
//! and friends: the gRPC API as JSON, with keys and values in base64 and
//! 64-bit numbers as strings). It needs nothing beyond the HTTP client the
//! server already has, where a gRPC client would bring tonic and prost.
//!
//! Requests go to one member at a time; a member that cannot be reached
//! or answers 5xx is skipped for the next, so losing a member (with the
//! quorum kept) is invisible. Every request has a deadline: etcd being
//! away is an error in seconds, never a hang.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{json, Value};

/// How long one request to one member may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// The largest answer read (a range over every sandbox of a big cluster).
const MAX_ANSWER: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("no etcd member answered ({tried}): {last}")]
    Unavailable { tried: String, last: String },
    #[error("etcd refused the request: {0}")]
    Refused(String),
    #[error("etcd's answer could not be read: {0}")]
    Protocol(String),
    #[error("invalid etcd endpoint {0:?}: use etcd://host:port[,host:port...] or http://host:port")]
    Endpoint(String),
}

/// One key and its value as etcd keeps them.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    pub mod_revision: i64,
    /// The lease the key lives with (0: none).
    pub lease: i64,
}

pub struct Etcd {
    /// `host:port` of each member.
    members: Vec<String>,
    /// The member that answered last: tried first.
    current: AtomicUsize,
    /// The etcd cluster's id, from the last answer: a new one means a new
    /// etcd (rebuilt, or restored from a backup), which does not know what
    /// the old one held.
    cluster_id: std::sync::Mutex<String>,
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn unb64(field: &str, s: &str) -> Result<Vec<u8>, EtcdError> {
    base64::engine::general_purpose::STANDARD.decode(s).map_err(|e| EtcdError::Protocol(format!("{field}: {e}")))
}

/// etcd's JSON writes int64 as a string (and leaves zero values out).
fn int(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

/// The key just past every key with `prefix` (etcd's range end).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // An all-0xff (or empty) prefix: to the end of the key space.
    vec![0]
}

#[derive(Deserialize)]
struct RawKv {
    key: String,
    #[serde(default)]
    value: String,
    #[serde(default)]
    mod_revision: Value,
    #[serde(default)]
    lease: Value,
}

fn kvs(v: &Value) -> Result<Vec<KeyValue>, EtcdError> {
    let Some(list) = v.get("kvs") else { return Ok(Vec::new()) };
    let raw: Vec<RawKv> = serde_json::from_value(list.clone()).map_err(|e| EtcdError::Protocol(format!("kvs: {e}")))?;
    raw.into_iter()
        .map(|r| {
            let key = String::from_utf8(unb64("key", &r.key)?).map_err(|_| EtcdError::Protocol("a key is not UTF-8".into()))?;
            Ok(KeyValue { key, value: unb64("value", &r.value)?, mod_revision: int(&r.mod_revision), lease: int(&r.lease) })
        })
        .collect()
}

impl Etcd {
    /// `etcd://h1:2379,h2:2379` (or `http://h1:2379,...`, or bare `h:port` lists).
    pub fn new(spec: &str) -> Result<Self, EtcdError> {
        let rest = spec.strip_prefix("etcd://").or_else(|| spec.strip_prefix("http://")).unwrap_or(spec);
        let members: Vec<String> = rest.split(',').map(|m| m.trim().trim_start_matches("http://").trim_end_matches('/').to_string()).filter(|m| !m.is_empty()).collect();
        if members.is_empty() || members.iter().any(|m| !m.contains(':') || m.contains('/') || m.contains('@')) {
            return Err(EtcdError::Endpoint(spec.to_string()));
        }
        Ok(Self { members, current: AtomicUsize::new(0), cluster_id: std::sync::Mutex::new(String::new()) })
    }

    /// The etcd cluster's id as its last answer gave it ("" before one).
    pub fn cluster_id(&self) -> String {
        self.cluster_id.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn members(&self) -> &[String] {
        &self.members
    }

    /// One gateway call, to each member in turn until one answers.
    async fn call(&self, path: &str, body: Value) -> Result<Value, EtcdError> {
        let body = serde_json::to_vec(&body).map_err(|e| EtcdError::Protocol(e.to_string()))?;
        let start = self.current.load(Ordering::Relaxed);
        let mut last = String::new();
        for i in 0..self.members.len() {
            let idx = (start + i) % self.members.len();
            let m = &self.members[idx];
            match tokio::time::timeout(REQUEST_TIMEOUT, post(m, path, body.clone())).await {
                Ok(Ok((status, v))) if status < 500 => {
                    self.current.store(idx, Ordering::Relaxed);
                    if let Some(id) = v.get("header").and_then(|h| h.get("cluster_id")).and_then(|i| i.as_str().map(str::to_string).or_else(|| i.as_u64().map(|n| n.to_string()))) {
                        *self.cluster_id.lock().unwrap_or_else(|p| p.into_inner()) = id;
                    }
                    if status >= 400 {
                        let msg = v.get("message").or_else(|| v.get("error")).and_then(Value::as_str).unwrap_or("").to_string();
                        return Err(EtcdError::Refused(format!("{path}: {status} {msg}")));
                    }
                    return Ok(v);
                }
                Ok(Ok((status, v))) => last = format!("{m}: {status} {v}"),
                Ok(Err(e)) => last = format!("{m}: {e}"),
                Err(_) => last = format!("{m}: no answer within {REQUEST_TIMEOUT:?}"),
            }
            tracing::debug!(member = %m, path, error = %last, "etcd member did not answer");
        }
        Err(EtcdError::Unavailable { tried: self.members.join(","), last })
    }

    pub async fn put(&self, key: &str, value: &[u8], lease: Option<i64>) -> Result<(), EtcdError> {
        let mut b = json!({ "key": b64(key.as_bytes()), "value": b64(value) });
        if let Some(l) = lease {
            b["lease"] = json!(l.to_string());
        }
        self.call("/v3/kv/put", b).await.map(|_| ())
    }

    pub async fn get(&self, key: &str) -> Result<Option<KeyValue>, EtcdError> {
        let v = self.call("/v3/kv/range", json!({ "key": b64(key.as_bytes()) })).await?;
        Ok(kvs(&v)?.into_iter().next())
    }

    /// Every key under `prefix`, in key order.
    pub async fn prefix(&self, prefix: &str) -> Result<Vec<KeyValue>, EtcdError> {
        let v = self.call("/v3/kv/range", json!({ "key": b64(prefix.as_bytes()), "range_end": b64(&prefix_end(prefix)) })).await?;
        kvs(&v)
    }

    /// The keys under `prefix` and their revisions, without their values
    /// (to see what changed before reading it).
    pub async fn prefix_keys(&self, prefix: &str) -> Result<Vec<KeyValue>, EtcdError> {
        let v = self.call("/v3/kv/range", json!({ "key": b64(prefix.as_bytes()), "range_end": b64(&prefix_end(prefix)), "keys_only": true })).await?;
        kvs(&v)
    }

    /// Deletes `key`; whether it existed.
    pub async fn delete(&self, key: &str) -> Result<bool, EtcdError> {
        let v = self.call("/v3/kv/deleterange", json!({ "key": b64(key.as_bytes()) })).await?;
        Ok(int(v.get("deleted").unwrap_or(&Value::Null)) > 0)
    }

    /// Puts `key` only if it does not exist; whether it was put.
    pub async fn create(&self, key: &str, value: &[u8], lease: Option<i64>) -> Result<bool, EtcdError> {
        let mut put = json!({ "key": b64(key.as_bytes()), "value": b64(value) });
        if let Some(l) = lease {
            put["lease"] = json!(l.to_string());
        }
        let v = self
            .call(
                "/v3/kv/txn",
                json!({ "compare": [{ "key": b64(key.as_bytes()), "target": "CREATE", "result": "EQUAL", "create_revision": "0" }], "success": [{ "request_put": put }] }),
            )
            .await?;
        Ok(v.get("succeeded").and_then(Value::as_bool).unwrap_or(false))
    }

    /// Replaces `key`'s value only if it is still at `mod_revision`.
    pub async fn swap(&self, key: &str, mod_revision: i64, value: &[u8], lease: Option<i64>) -> Result<bool, EtcdError> {
        let mut put = json!({ "key": b64(key.as_bytes()), "value": b64(value) });
        if let Some(l) = lease {
            put["lease"] = json!(l.to_string());
        }
        let v = self
            .call("/v3/kv/txn", json!({ "compare": [{ "key": b64(key.as_bytes()), "target": "MOD", "result": "EQUAL", "mod_revision": mod_revision.to_string() }], "success": [{ "request_put": put }] }))
            .await?;
        Ok(v.get("succeeded").and_then(Value::as_bool).unwrap_or(false))
    }

    /// Deletes `key` only if it is still at `mod_revision` (nobody rewrote
    /// it since it was read); whether it was deleted.
    pub async fn delete_at(&self, key: &str, mod_revision: i64) -> Result<bool, EtcdError> {
        let k = b64(key.as_bytes());
        let v = self
            .call("/v3/kv/txn", json!({ "compare": [{ "key": k, "target": "MOD", "result": "EQUAL", "mod_revision": mod_revision.to_string() }], "success": [{ "request_delete_range": { "key": k } }] }))
            .await?;
        Ok(v.get("succeeded").and_then(Value::as_bool).unwrap_or(false))
    }

    /// A lease of `ttl` seconds; keys put with it go when it is not renewed.
    pub async fn grant(&self, ttl: i64) -> Result<i64, EtcdError> {
        let v = self.call("/v3/lease/grant", json!({ "TTL": ttl.to_string() })).await?;
        match int(v.get("ID").unwrap_or(&Value::Null)) {
            0 => Err(EtcdError::Protocol(format!("lease grant without an ID: {v}"))),
            id => Ok(id),
        }
    }

    /// Renews a lease; its remaining TTL, 0 when it has expired.
    pub async fn keep_alive(&self, lease: i64) -> Result<i64, EtcdError> {
        // The gateway streams keep-alive answers: one request, one line.
        let v = self.call("/v3/lease/keepalive", json!({ "ID": lease.to_string() })).await?;
        let r = v.get("result").unwrap_or(&v);
        Ok(int(r.get("TTL").unwrap_or(&Value::Null)))
    }

    pub async fn revoke(&self, lease: i64) -> Result<(), EtcdError> {
        self.call("/v3/lease/revoke", json!({ "ID": lease.to_string() })).await.map(|_| ())
    }
}

/// One POST to one member: its status and JSON answer.
async fn post(member: &str, path: &str, body: Vec<u8>) -> Result<(u16, Value), String> {
    let stream = tokio::net::TcpStream::connect(member).await.map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = http::Request::post(path)
        .header(http::header::HOST, member)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(bytes::Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = tx.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER).collect().await.map_err(|e| e.to_string())?.to_bytes();
    // A streamed answer (keep-alive) is one JSON object per line: the first.
    let first = body.split(|b| *b == b'\n').find(|l| !l.iter().all(u8::is_ascii_whitespace)).unwrap_or(&[]);
    let v = if first.is_empty() { Value::Null } else { serde_json::from_slice(first).map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&body[..body.len().min(200)])))? };
    Ok((status, v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_and_prefixes() {
        assert_eq!(Etcd::new("etcd://a:2379,b:2379").expect("two").members(), ["a:2379", "b:2379"]);
        assert_eq!(Etcd::new("http://10.0.0.1:2379/").expect("url").members(), ["10.0.0.1:2379"]);
        for bad in ["", "etcd://", "etcd://nohost", "etcd://u@h:1", "etcd://h:1/path"] {
            assert!(Etcd::new(bad).is_err(), "{bad}");
        }
        assert_eq!(prefix_end("/a/"), b"/a0");
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80");
        assert_eq!(int(&json!("12")), 12);
        assert_eq!(int(&json!(3)), 3);
        assert_eq!(int(&Value::Null), 0);
    }
}
