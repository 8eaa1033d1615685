//! Lifecycle events: what happened to which sandbox, in order. Each event
//! is written to the store (bounded: the newest `KEEP` are kept) with a
//! sequence number, then broadcast to live subscribers, so a stream that
//! resumes with `Last-Event-ID` (after a disconnect or a server restart)
//! replays from the store and then follows live, with no gap and no
//! duplicate.
//!
//! Event types have two spellings: Airlock's own (`killed`, `timeout`) and
//! E2B's (`sandbox.lifecycle.killed`), which names six of them by what they
//! mean for the sandbox. `e2b_type` maps the one onto the other,
//! `sandbox_event` gives an event E2B's `SandboxEvent` shape (its events
//! API and the webhook deliveries), and filters take either spelling.

use std::collections::BTreeMap;

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;

use crate::store::{Store, StoreError};

/// Events kept in the store; older ones are dropped by housekeeping.
pub const KEEP: i64 = 100_000;

/// One event as streams and the API show it (a wire type).
pub use airlock_proto::api::{Event, SandboxEvent};

/// Every type of event Airlock records (some only once the features that
/// emit them exist; a filter may name them all the same).
pub const KINDS: &[&str] = &[
    "created",
    "ready",
    "error",
    "paused",
    "resumed",
    "timeout",
    "timeout_changed",
    "snapshot",
    "reset",
    "restarted",
    "oom",
    "died",
    "killed",
    "destroyed",
    "resources_changed",
    "resource_alert",
    "configured",
];

pub const E2B_CREATED: &str = "sandbox.lifecycle.created";
pub const E2B_KILLED: &str = "sandbox.lifecycle.killed";
pub const E2B_PAUSED: &str = "sandbox.lifecycle.paused";
pub const E2B_RESUMED: &str = "sandbox.lifecycle.resumed";
pub const E2B_UPDATED: &str = "sandbox.lifecycle.updated";
pub const E2B_CHECKPOINTED: &str = "sandbox.lifecycle.checkpointed";

/// E2B's six lifecycle types.
pub const E2B_TYPES: &[&str] = &[E2B_CREATED, E2B_KILLED, E2B_PAUSED, E2B_RESUMED, E2B_UPDATED, E2B_CHECKPOINTED];

/// The kinds E2B has a name for, whatever their data. E2B's `created` is
/// Airlock's `ready`: Airlock's `created` comes before the template's start
/// command and the create's set-up, and a create that fails there ends in
/// `error`, never `killed`; E2B's receivers pair each `created` with a
/// `killed`. A sandbox's end is reported once as `killed`: by the kill
/// (`killed`), by a timeout that kills (see `e2b_type`) or by its death
/// (`died`); the `destroyed` that follows some of these is Airlock's alone.
const E2B_NAMES: &[(&str, &str)] = &[
    ("ready", E2B_CREATED),
    ("killed", E2B_KILLED),
    ("died", E2B_KILLED),
    ("paused", E2B_PAUSED),
    ("resumed", E2B_RESUMED),
    ("timeout_changed", E2B_UPDATED),
    ("restarted", E2B_UPDATED),
    ("resources_changed", E2B_UPDATED),
    ("configured", E2B_UPDATED),
    ("snapshot", E2B_CHECKPOINTED),
];

/// E2B's type for an event, when E2B has one. Only a timeout depends on
/// its data: one that kills is E2B's `killed`; one that pauses is followed
/// by the `paused` event, which is.
pub fn e2b_type(kind: &str, data: &Value) -> Option<&'static str> {
    if kind == "timeout" {
        return (data.get("action").and_then(Value::as_str) == Some("kill")).then_some(E2B_KILLED);
    }
    E2B_NAMES.iter().find(|(k, _)| *k == kind).map(|(_, e)| *e)
}

/// An event's dotted type: E2B's, or `airlock.<kind>` where E2B has none.
pub fn dotted_type(kind: &str, data: &Value) -> String {
    e2b_type(kind, data).map(str::to_string).unwrap_or_else(|| format!("airlock.{kind}"))
}

/// Whether `name` (in any spelling) names an event of this kind and data.
pub fn type_matches(name: &str, kind: &str, data: &Value) -> bool {
    name == kind || name.strip_prefix("airlock.") == Some(kind) || e2b_type(kind, data) == Some(name)
}

/// Checks that every name is an event type in one of the spellings.
pub fn check_types(names: &[String]) -> Result<(), String> {
    for n in names {
        let bare = n.strip_prefix("airlock.").unwrap_or(n);
        if !KINDS.contains(&bare) && !E2B_TYPES.contains(&n.as_str()) {
            return Err(format!("unknown event type {n:?}: use one of {} or E2B's {}", KINDS.join(", "), E2B_TYPES.join(", ")));
        }
    }
    Ok(())
}

/// Which stored events a set of type names selects, as SQL can test it:
/// these kinds, and timeouts that killed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KindSet {
    pub kinds: Vec<String>,
    pub timeout_kills: bool,
}

impl KindSet {
    /// The events `names` select (all for no names).
    pub fn of(names: &[String]) -> Option<Self> {
        if names.is_empty() {
            return None;
        }
        let mut set = KindSet::default();
        for n in names {
            let bare = n.strip_prefix("airlock.").unwrap_or(n);
            if KINDS.contains(&bare) {
                set.kinds.push(bare.to_string());
            }
            set.kinds.extend(E2B_NAMES.iter().filter(|(_, e)| e == n).map(|(k, _)| k.to_string()));
            set.timeout_kills |= n == E2B_KILLED;
        }
        set.kinds.sort();
        set.kinds.dedup();
        Some(set)
    }

    /// What E2B's events API lists by default: its six types.
    pub fn e2b() -> Self {
        Self::of(&E2B_TYPES.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap_or_default()
    }
}

/// One team on Airlock: E2B's team ids are UUIDs, this is the nil one.
pub const TEAM_ID: &str = "00000000-0000-0000-0000-000000000000";

/// A UUID-shaped id derived from the sandbox id, for E2B's
/// `sandboxExecutionId`.
fn execution_id(sandbox_id: &str) -> String {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(format!("airlock-execution:{sandbox_id}").as_bytes());
    let x: String = h[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &x[..8], &x[8..12], &x[12..16], &x[16..20], &x[20..32])
}

/// An event in E2B's `SandboxEvent` shape. `eventData` is the event's own
/// data plus what E2B puts there: the sandbox's metadata
/// (`sandbox_metadata`) and, on a timeout change, the new deadline
/// (`set_timeout`).
pub fn sandbox_event(e: &Event) -> SandboxEvent {
    let mut data = match &e.data {
        Value::Object(m) => m.clone(),
        Value::Null => serde_json::Map::new(),
        other => [("value".to_string(), other.clone())].into_iter().collect(),
    };
    data.insert("sandbox_metadata".into(), serde_json::to_value(&e.metadata).unwrap_or_default());
    if e.kind == "timeout_changed" {
        if let Some(end) = e.data.get("endAt") {
            data.insert("set_timeout".into(), end.clone());
        }
    }
    // Events recorded before the template was kept: a create names it.
    let template = if e.template_id.is_empty() { e.data.get("templateID").and_then(Value::as_str).unwrap_or_default().to_string() } else { e.template_id.clone() };
    SandboxEvent {
        version: "v2".into(),
        id: e.id.to_string(),
        kind: dotted_type(&e.kind, &e.data),
        event_data: Some(Value::Object(data)),
        sandbox_build_id: template.clone(),
        sandbox_execution_id: execution_id(&e.sandbox_id),
        sandbox_id: e.sandbox_id.clone(),
        sandbox_team_id: TEAM_ID.into(),
        sandbox_template_id: template,
        timestamp: e.timestamp.clone(),
        airlock_type: e.kind.clone(),
    }
}

/// A listing of stored events (E2B's events API).
#[derive(Debug, Clone, Default)]
pub struct EventPage {
    pub sandbox: Option<String>,
    /// `None`: every event.
    pub kinds: Option<KindSet>,
    pub offset: usize,
    pub limit: usize,
    /// Oldest first (E2B's default is newest first).
    pub ascending: bool,
}

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
    // Added later (E2B's event shape names the template), for stores made before.
    let has_template = conn.prepare("SELECT 1 FROM pragma_table_info('events') WHERE name = 'template'")?.query_row([], |_| Ok(())).optional()?.is_some();
    if !has_template {
        conn.execute_batch("ALTER TABLE events ADD COLUMN template TEXT NOT NULL DEFAULT '';")?;
    }
    Ok(())
}

const COLS: &str = "seq, at, sandbox_id, kind, metadata, data, template";

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
        template_id: r.get(6)?,
    })
}

impl Store {
    /// Appends an event; returns it with its sequence number.
    pub fn append_event(&self, at: i64, sandbox: (&str, &str), kind: &str, metadata: &BTreeMap<String, String>, data: &serde_json::Value) -> Result<Event, StoreError> {
        let (sandbox_id, template) = sandbox;
        let c = self.c();
        let m = serde_json::to_string(metadata).unwrap_or_else(|_| "{}".into());
        let d = data.to_string();
        c.execute("INSERT INTO events (at, sandbox_id, kind, metadata, data, template) VALUES (?1, ?2, ?3, ?4, ?5, ?6)", params![at, sandbox_id, kind, m, d, template])?;
        let seq = c.last_insert_rowid();
        Ok(Event {
            id: seq,
            kind: kind.to_string(),
            sandbox_id: sandbox_id.to_string(),
            timestamp: crate::service::rfc3339_ms(at),
            metadata: metadata.clone(),
            data: data.clone(),
            template_id: template.to_string(),
        })
    }

    /// The newest event's id (0 when there is none).
    pub fn last_event_id(&self) -> Result<i64, StoreError> {
        Ok(self.c().query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0))?)
    }

    /// A page of events for a listing (`EventPage`).
    pub fn events_page(&self, q: &EventPage) -> Result<Vec<Event>, StoreError> {
        use rusqlite::types::Value as Sql;
        let mut wheres = Vec::new();
        let mut args: Vec<Sql> = Vec::new();
        if let Some(id) = &q.sandbox {
            args.push(Sql::Text(id.clone()));
            wheres.push(format!("sandbox_id = ?{}", args.len()));
        }
        if let Some(set) = &q.kinds {
            let mut any = Vec::new();
            if !set.kinds.is_empty() {
                let mut marks = Vec::new();
                for k in &set.kinds {
                    args.push(Sql::Text(k.clone()));
                    marks.push(format!("?{}", args.len()));
                }
                any.push(format!("kind IN ({})", marks.join(", ")));
            }
            if set.timeout_kills {
                any.push("(kind = 'timeout' AND json_extract(data, '$.action') = 'kill')".to_string());
            }
            // An empty set selects nothing.
            wheres.push(if any.is_empty() { "0".to_string() } else { format!("({})", any.join(" OR ")) });
        }
        let filter = if wheres.is_empty() { String::new() } else { format!("WHERE {}", wheres.join(" AND ")) };
        args.push(Sql::Integer(q.limit as i64));
        let limit = args.len();
        args.push(Sql::Integer(q.offset as i64));
        let offset = args.len();
        let sql = format!("SELECT {COLS} FROM events {filter} ORDER BY seq {} LIMIT ?{limit} OFFSET ?{offset}", if q.ascending { "ASC" } else { "DESC" });
        let c = self.c();
        let mut st = c.prepare(&sql)?;
        let rows = st.query_map(rusqlite::params_from_iter(args), event_row)?.collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Events after `after`, oldest first, at most `limit`, of one sandbox
    /// when given.
    pub fn events_after(&self, after: i64, sandbox: Option<&str>, limit: usize) -> Result<Vec<Event>, StoreError> {
        let c = self.c();
        let limit = limit as i64;
        let rows = match sandbox {
            Some(id) => {
                let mut st = c.prepare_cached(&format!("SELECT {COLS} FROM events WHERE seq > ?1 AND sandbox_id = ?2 ORDER BY seq LIMIT ?3"))?;
                let v = st.query_map(params![after, id, limit], event_row)?.collect::<Result<Vec<_>, _>>()?;
                v
            }
            None => {
                let mut st = c.prepare_cached(&format!("SELECT {COLS} FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2"))?;
                let v = st.query_map(params![after, limit], event_row)?.collect::<Result<Vec<_>, _>>()?;
                v
            }
        };
        Ok(rows)
    }

    /// `created` events with a sequence number below `before`, newest
    /// first: one per sandbox run the store still remembers.
    pub fn creations_before(&self, before: i64, limit: usize) -> Result<Vec<Event>, StoreError> {
        let c = self.c();
        let mut st = c.prepare_cached(&format!("SELECT {COLS} FROM events WHERE kind = 'created' AND seq < ?1 ORDER BY seq DESC LIMIT ?2"))?;
        let v = st.query_map(params![before, limit as i64], event_row)?.collect::<Result<Vec<_>, _>>()?;
        Ok(v)
    }

    /// How a sandbox's run ended, if it did: its last terminal event.
    pub fn run_end(&self, sandbox_id: &str) -> Result<Option<Event>, StoreError> {
        let c = self.c();
        let mut st = c.prepare_cached(&format!(
            // What ended it (a kill, its timeout, its death) over the
            // `destroyed` that follows each.
            "SELECT {COLS} FROM events WHERE sandbox_id = ?1 AND kind IN ('killed', 'died', 'error', 'destroyed', 'timeout')
             ORDER BY kind = 'destroyed', seq DESC LIMIT 1"
        ))?;
        Ok(st.query_row(params![sandbox_id], event_row).optional()?)
    }

    /// One sandbox's newest `limit` events, oldest first (what its
    /// execution log shows of its lifecycle).
    pub fn last_events(&self, sandbox: &str, limit: usize) -> Result<Vec<Event>, StoreError> {
        let c = self.c();
        let mut st = c.prepare_cached(&format!("SELECT {COLS} FROM events WHERE sandbox_id = ?1 ORDER BY seq DESC LIMIT ?2"))?;
        let mut v = st.query_map(params![sandbox, limit.min(i64::MAX as usize) as i64], event_row)?.collect::<Result<Vec<_>, _>>()?;
        v.reverse();
        Ok(v)
    }

    /// Drops all but the newest `keep` events; returns how many went.
    pub fn trim_events(&self, keep: i64) -> Result<usize, StoreError> {
        Ok(self.c().execute("DELETE FROM events WHERE seq <= (SELECT COALESCE(MAX(seq), 0) FROM events) - ?1", params![keep])?)
    }
}

/// What a stream wants: event types in either spelling (empty: all),
/// metadata that must match, one sandbox.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub kinds: Vec<String>,
    pub metadata: BTreeMap<String, String>,
    pub sandbox: Option<String>,
}

impl EventFilter {
    pub fn matches(&self, e: &Event) -> bool {
        (self.kinds.is_empty() || self.kinds.iter().any(|k| type_matches(k, &e.kind, &e.data)))
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
        let e1 = s.append_event(1, ("sa", "base"), "created", &m, &serde_json::json!({})).expect("append");
        let e2 = s.append_event(2, ("sb", "base"), "created", &BTreeMap::new(), &serde_json::json!({})).expect("append");
        let e3 = s.append_event(3, ("sa", "base"), "killed", &m, &serde_json::json!({"by": "api"})).expect("append");
        assert!(e1.id < e2.id && e2.id < e3.id);
        assert_eq!(s.events_after(e1.id, None, 10).expect("after").iter().map(|e| e.id).collect::<Vec<_>>(), vec![e2.id, e3.id]);
        assert_eq!(s.events_after(0, Some("sa"), 10).expect("of sa").len(), 2);
        let f = EventFilter { kinds: vec!["killed".into()], metadata: m.clone(), sandbox: None };
        assert!(f.matches(&e3) && !f.matches(&e1) && !f.matches(&e2));
        assert_eq!(s.trim_events(1).expect("trim"), 2);
        assert_eq!(s.events_after(0, None, 10).expect("left").iter().map(|e| e.id).collect::<Vec<_>>(), vec![e3.id]);
        assert!(sse(&e3).starts_with(&format!("id: {}\nevent: killed\ndata: {{", e3.id)));
        let e2b = EventFilter { kinds: vec![E2B_KILLED.into()], ..Default::default() };
        assert!(e2b.matches(&e3) && !e2b.matches(&e1), "E2B's names filter too");
    }

    fn event(id: i64, kind: &str, data: serde_json::Value) -> Event {
        let metadata = [("team".to_string(), "a".to_string())].into();
        Event { id, kind: kind.into(), sandbox_id: "sbx1".into(), timestamp: "2025-08-06T20:59:36.000Z".into(), metadata, data, template_id: "base".into() }
    }

    #[test]
    fn kinds_map_onto_e2b_types_once_per_sandbox_end() {
        let none = serde_json::json!({});
        assert_eq!(e2b_type("ready", &none), Some(E2B_CREATED));
        assert_eq!(e2b_type("created", &none), None, "a create can still fail after it: E2B's created is ready");
        assert_eq!(e2b_type("killed", &none), Some(E2B_KILLED));
        assert_eq!(e2b_type("died", &none), Some(E2B_KILLED));
        assert_eq!(e2b_type("timeout", &serde_json::json!({"action": "kill"})), Some(E2B_KILLED));
        assert_eq!(e2b_type("timeout", &serde_json::json!({"action": "pause"})), None, "the paused event that follows reports it");
        assert_eq!(e2b_type("destroyed", &none), None, "a kill is reported once, by `killed`");
        assert_eq!(e2b_type("timeout_changed", &none), Some(E2B_UPDATED));
        assert_eq!(e2b_type("snapshot", &none), Some(E2B_CHECKPOINTED));
        assert_eq!(dotted_type("oom", &none), "airlock.oom");
        assert!(type_matches("killed", "killed", &none) && type_matches("airlock.killed", "killed", &none) && type_matches(E2B_KILLED, "died", &none));
        assert!(!type_matches("killed", "died", &none), "Airlock's names are exact");
        assert!(check_types(&["created".into(), E2B_PAUSED.into(), "airlock.oom".into()]).is_ok());
        let err = check_types(&["sandbox.lifecycle.exploded".into()]).expect_err("unknown");
        assert!(err.contains("sandbox.lifecycle.exploded") && err.contains(E2B_CHECKPOINTED), "{err}");
        assert!(check_types(&["airlock.sandbox.lifecycle.created".into()]).is_err());
        let set = KindSet::of(&[E2B_KILLED.into(), "oom".into()]).expect("set");
        assert_eq!((set.kinds, set.timeout_kills), (vec!["died".to_string(), "killed".into(), "oom".into()], true));
        assert_eq!(KindSet::of(&[]), None);
    }

    #[test]
    fn events_take_e2b_s_sandbox_event_shape() {
        let e = sandbox_event(&event(7, "timeout_changed", serde_json::json!({"endAt": "2025-08-06T21:00:00.000Z"})));
        let v = serde_json::to_value(&e).expect("json");
        assert_eq!(v["version"], "v2");
        assert_eq!(v["id"], "7");
        assert_eq!(v["type"], E2B_UPDATED);
        assert_eq!(v["airlockType"], "timeout_changed");
        assert_eq!(v["eventData"]["set_timeout"], "2025-08-06T21:00:00.000Z");
        assert_eq!(v["eventData"]["endAt"], "2025-08-06T21:00:00.000Z", "Airlock's data is kept");
        assert_eq!(v["eventData"]["sandbox_metadata"]["team"], "a");
        assert_eq!((v["sandboxId"].as_str(), v["sandboxTemplateId"].as_str(), v["sandboxBuildId"].as_str()), (Some("sbx1"), Some("base"), Some("base")));
        assert_eq!(v["sandboxTeamId"], TEAM_ID);
        assert_eq!(v["timestamp"], "2025-08-06T20:59:36.000Z");
        let exec = v["sandboxExecutionId"].as_str().expect("execution id");
        assert_eq!(exec.len(), 36);
        assert_eq!(exec.matches('-').count(), 4);
        assert_eq!(exec, sandbox_event(&event(8, "killed", serde_json::json!({}))).sandbox_execution_id, "one per sandbox");
        let mut old = event(9, "created", serde_json::json!({"templateID": "py"}));
        old.template_id.clear();
        assert_eq!(sandbox_event(&old).sandbox_template_id, "py", "an old create names its template");
        assert_eq!(sandbox_event(&event(10, "oom", serde_json::json!(null))).kind, "airlock.oom");
    }

    #[test]
    fn a_store_from_before_templates_were_kept_gains_the_column() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("db");
        {
            let c = Connection::open(&path).expect("open");
            c.execute_batch(
                "CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, at INTEGER NOT NULL, sandbox_id TEXT NOT NULL, kind TEXT NOT NULL, metadata TEXT NOT NULL, data TEXT NOT NULL);
                 INSERT INTO events (at, sandbox_id, kind, metadata, data) VALUES (1, 'old', 'created', '{}', '{\"templateID\":\"py\"}');",
            )
            .expect("old schema");
        }
        let s = Store::open(&path).expect("migrate");
        let old = s.events_after(0, None, 10).expect("read");
        assert_eq!((old.len(), old[0].template_id.as_str()), (1, ""));
        assert_eq!(sandbox_event(&old[0]).sandbox_template_id, "py");
        let new = s.append_event(2, ("new", "base"), "created", &BTreeMap::new(), &serde_json::json!({})).expect("append");
        assert_eq!(s.events_after(old[0].id, None, 10).expect("read")[0].template_id, "base");
        assert_eq!(new.template_id, "base");
    }

    #[test]
    fn listings_page_filter_and_order() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = Store::open(&dir.path().join("db")).expect("open");
        let none = BTreeMap::new();
        for (sbx, kind, data) in [
            ("sa", "ready", serde_json::json!({})),
            ("sa", "timeout", serde_json::json!({"action": "pause"})),
            ("sa", "paused", serde_json::json!({})),
            ("sb", "ready", serde_json::json!({})),
            ("sb", "timeout", serde_json::json!({"action": "kill"})),
            ("sb", "destroyed", serde_json::json!({})),
            ("sa", "oom", serde_json::json!({})),
        ] {
            s.append_event(1, (sbx, "base"), kind, &none, &data).expect("append");
        }
        assert_eq!(s.last_event_id().expect("last"), 7);
        let kinds = |q: &EventPage| s.events_page(q).expect("page").iter().map(|e| format!("{}:{}", e.sandbox_id, e.kind)).collect::<Vec<_>>();
        let e2b = EventPage { kinds: Some(KindSet::e2b()), limit: 10, ..Default::default() };
        assert_eq!(kinds(&e2b), ["sb:timeout", "sb:ready", "sa:paused", "sa:ready"], "newest first, E2B's types only");
        assert_eq!(kinds(&EventPage { ascending: true, offset: 1, limit: 2, ..e2b.clone() }), ["sa:paused", "sb:ready"]);
        assert_eq!(kinds(&EventPage { sandbox: Some("sa".into()), ascending: true, ..e2b.clone() }), ["sa:ready", "sa:paused"]);
        assert_eq!(kinds(&EventPage { kinds: KindSet::of(&["oom".into(), "destroyed".into()]), limit: 10, ..Default::default() }), ["sa:oom", "sb:destroyed"]);
        assert_eq!(kinds(&EventPage { limit: 10, ..Default::default() }).len(), 7, "no filter: every event");
    }
}
