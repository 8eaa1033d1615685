//! Lifecycle events: what happened to which sandbox, in order. Each event
//! is written to the store (bounded: the newest `KEEP` are kept) with a
//! sequence number, then broadcast to live subscribers, so a stream that
//! resumes with `Last-Event-ID` (after a disconnect or a server restart)
//! replays from the store and then follows live, with no gap and no
//! duplicate.

use std::collections::BTreeMap;

use rusqlite::{params, Connection};

use crate::store::{Store, StoreError};

/// Events kept in the store; older ones are dropped by housekeeping.
pub const KEEP: i64 = 100_000;

/// One event as streams and the API show it (a wire type).
pub use airlock_proto::api::Event;

pub(crate) fn migrate(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS events (
             seq INTEGER PRIMARY KEY AUTOINCREMENT,
             at INTEGER NOT NULL,
             sandbox_id TEXT NOT NULL,
             kind TEXT NOT NULL,
             metadata TEXT NOT NULL,
             data TEXT NOT NULL
         );
         CREATE INDEX IF NOT EXISTS events_sandbox ON events(sandbox_id, seq);",
    )?;
    Ok(())
}

fn event_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Event> {
    let at: i64 = r.get(1)?;
    let metadata: String = r.get(4)?;
    let data: String = r.get(5)?;
    Ok(Event {
        id: r.get(0)?,
        timestamp: crate::service::rfc3339_ms(at),
        sandbox_id: r.get(2)?,
        kind: r.get(3)?,
        metadata: serde_json::from_str(&metadata).unwrap_or_default(),
        data: serde_json::from_str(&data).unwrap_or(serde_json::Value::Null),
    })
}

impl Store {
    /// Appends an event; returns it with its sequence number.
    pub fn append_event(&self, at: i64, sandbox_id: &str, kind: &str, metadata: &BTreeMap<String, String>, data: &serde_json::Value) -> Result<Event, StoreError> {
        let c = self.c();
        let m = serde_json::to_string(metadata).unwrap_or_else(|_| "{}".into());
        let d = data.to_string();
        c.execute("INSERT INTO events (at, sandbox_id, kind, metadata, data) VALUES (?1, ?2, ?3, ?4, ?5)", params![at, sandbox_id, kind, m, d])?;
        let seq = c.last_insert_rowid();
        Ok(Event { id: seq, kind: kind.to_string(), sandbox_id: sandbox_id.to_string(), timestamp: crate::service::rfc3339_ms(at), metadata: metadata.clone(), data: data.clone() })
    }

    /// Events after `after`, oldest first, at most `limit`, of one sandbox
    /// when given.
    pub fn events_after(&self, after: i64, sandbox: Option<&str>, limit: usize) -> Result<Vec<Event>, StoreError> {
        let c = self.c();
        let limit = limit as i64;
        let rows = match sandbox {
            Some(id) => {
                let mut st = c.prepare_cached("SELECT seq, at, sandbox_id, kind, metadata, data FROM events WHERE seq > ?1 AND sandbox_id = ?2 ORDER BY seq LIMIT ?3")?;
                let v = st.query_map(params![after, id, limit], event_row)?.collect::<Result<Vec<_>, _>>()?;
                v
            }
            None => {
                let mut st = c.prepare_cached("SELECT seq, at, sandbox_id, kind, metadata, data FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2")?;
                let v = st.query_map(params![after, limit], event_row)?.collect::<Result<Vec<_>, _>>()?;
                v
            }
        };
        Ok(rows)
    }

    /// One sandbox's newest `limit` events, oldest first (what its
    /// execution log shows of its lifecycle).
    pub fn last_events(&self, sandbox: &str, limit: usize) -> Result<Vec<Event>, StoreError> {
        let c = self.c();
        let mut st = c.prepare_cached("SELECT seq, at, sandbox_id, kind, metadata, data FROM events WHERE sandbox_id = ?1 ORDER BY seq DESC LIMIT ?2")?;
        let mut v = st.query_map(params![sandbox, limit.min(i64::MAX as usize) as i64], event_row)?.collect::<Result<Vec<_>, _>>()?;
        v.reverse();
        Ok(v)
    }

    /// Drops all but the newest `keep` events; returns how many went.
    pub fn trim_events(&self, keep: i64) -> Result<usize, StoreError> {
        Ok(self.c().execute("DELETE FROM events WHERE seq <= (SELECT COALESCE(MAX(seq), 0) FROM events) - ?1", params![keep])?)
    }
}

/// What a stream wants: event types (empty: all), metadata that must
/// match, one sandbox.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub kinds: Vec<String>,
    pub metadata: BTreeMap<String, String>,
    pub sandbox: Option<String>,
}

impl EventFilter {
    pub fn matches(&self, e: &Event) -> bool {
        (self.kinds.is_empty() || self.kinds.contains(&e.kind))
            && self.sandbox.as_ref().is_none_or(|s| *s == e.sandbox_id)
            && self.metadata.iter().all(|(k, v)| e.metadata.get(k) == Some(v))
    }
}

/// An event as one server-sent-events message.
pub fn sse(e: &Event) -> String {
    format!("id: {}\nevent: {}\ndata: {}\n\n", e.id, e.kind, serde_json::to_string(e).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_ordered_filtered_resumable_and_bounded() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = Store::open(&dir.path().join("db")).expect("open");
        let m: BTreeMap<String, String> = [("team".to_string(), "a".to_string())].into();
        let e1 = s.append_event(1, "sa", "created", &m, &serde_json::json!({})).expect("append");
        let e2 = s.append_event(2, "sb", "created", &BTreeMap::new(), &serde_json::json!({})).expect("append");
        let e3 = s.append_event(3, "sa", "killed", &m, &serde_json::json!({"by": "api"})).expect("append");
        assert!(e1.id < e2.id && e2.id < e3.id);
        assert_eq!(s.events_after(e1.id, None, 10).expect("after").iter().map(|e| e.id).collect::<Vec<_>>(), vec![e2.id, e3.id]);
        assert_eq!(s.events_after(0, Some("sa"), 10).expect("of sa").len(), 2);
        let f = EventFilter { kinds: vec!["killed".into()], metadata: m.clone(), sandbox: None };
        assert!(f.matches(&e3) && !f.matches(&e1) && !f.matches(&e2));
        assert_eq!(s.trim_events(1).expect("trim"), 2);
        assert_eq!(s.events_after(0, None, 10).expect("left").iter().map(|e| e.id).collect::<Vec<_>>(), vec![e3.id]);
        assert!(sse(&e3).starts_with(&format!("id: {}\nevent: killed\ndata: {{", e3.id)));
    }
}
