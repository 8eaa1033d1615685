//! The embedded SQLite store: API keys and sandboxes (their template,
//! metadata, deadlines and state). Everything the server must remember
//! across restarts lives here; liveness comes from the runtime.
//!
//! Calls are synchronous and short; async callers run them on the blocking
//! pool (`Service::db`). WAL mode lets `airlock keys` edit keys while a
//! server runs.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{params, Connection, OptionalExtension};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error")]
    Sql(#[from] rusqlite::Error),
    #[error("securing {}", path.display())]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("corrupt row for sandbox {id}: {what}")]
    Corrupt { id: String, what: String },
}

/// A stored sandbox's state. The rules of the lifecycle are these
/// predicates; the service asks them rather than comparing states, and a
/// transition happens only under the sandbox's lock, after re-reading the
/// row (and, where it matters, the kernel: `Service::ensure_running`).
///
/// The transitional states are written before the work they name starts,
/// so a server killed in the middle finds out at start what it was doing
/// (`Service::reconcile`): a create is undone, a kill finished, a pause or
/// resume settled by what the kernel says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Admitted and being made: counted against the limits, invisible.
    Creating,
    Running,
    /// Being frozen or stopped.
    Pausing,
    Paused,
    /// Being thawed or booted again.
    Resuming,
    /// Being destroyed: invisible, its row goes last.
    Killing,
    /// Its PID 1 died on its own (the OOM killer, a kill from the host):
    /// its resources are gone, its row stays a while with the cause.
    Dead,
    /// Started for a warm pool and waiting to be claimed: invisible, no
    /// clock, no traffic; a claim makes it `Running` under its user's
    /// environment, token and metadata.
    Pooled,
}

impl State {
    /// Pause freezes a running sandbox; a paused one answers 409.
    pub fn can_pause(self) -> bool {
        self == State::Running
    }
    /// Connect resumes it (201), or finds it running (200).
    pub fn needs_resume(self) -> bool {
        self == State::Paused
    }
    /// Its clock runs: the deadline acts (kill or auto-pause) only then.
    pub fn clock_runs(self) -> bool {
        self == State::Running
    }
    /// Sandbox traffic reaches it, and it is sampled.
    pub fn takes_traffic(self) -> bool {
        self == State::Running
    }
    /// The API shows it (get, list, kill, ...); one being created or
    /// destroyed is not there yet, or any more.
    pub fn visible(self) -> bool {
        !matches!(self, State::Creating | State::Killing | State::Dead | State::Pooled)
    }
    /// A create in flight, for the limit on concurrent creates.
    pub fn in_flight(self) -> bool {
        self == State::Creating
    }

    /// What the API calls it: E2B knows `running` and `paused` only, so a
    /// pause in progress is still running and a resume still paused.
    pub fn api_str(self) -> &'static str {
        match self {
            State::Running | State::Pausing | State::Creating => "running",
            State::Paused | State::Resuming | State::Killing => "paused",
            State::Dead => "dead",
            State::Pooled => "pooled",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Creating => "creating",
            State::Running => "running",
            State::Pausing => "pausing",
            State::Paused => "paused",
            State::Resuming => "resuming",
            State::Killing => "killing",
            State::Dead => "dead",
            State::Pooled => "pooled",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "creating" => State::Creating,
            "running" => State::Running,
            "pausing" => State::Pausing,
            "paused" => State::Paused,
            "resuming" => State::Resuming,
            "killing" => State::Killing,
            "dead" => State::Dead,
            "pooled" => State::Pooled,
            _ => return None,
        })
    }
}

/// Why `Store::admit` turned a create away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// `max_creating` creates are in flight.
    Busy(usize),
    /// `max_total` sandboxes exist.
    Full(usize),
    /// A volume it would mount is gone.
    VolumeGone(String),
}

/// One sandbox as the server knows it. Times are unix milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxRow {
    pub id: String,
    pub template: String,
    pub state: State,
    pub started_at: i64,
    /// When the sandbox's timeout fires (running) or would have (paused).
    pub end_at: i64,
    pub auto_pause: bool,
    pub metadata: BTreeMap<String, String>,
    pub env: BTreeMap<String, String>,
    pub access_token: Option<String>,
    pub internet: bool,
    pub cpus: f64,
    pub memory_mb: u64,
    /// Size limit of its writable layer in MiB; 0 = none.
    pub disk_mb: u64,
    /// Insertion order, for stable listing and paging.
    pub seq: i64,
    /// The read-only layers it runs on (root then `/usr` parts), so layer
    /// garbage collection keeps them while it exists, whatever happens to
    /// the template or snapshot it came from.
    pub layers: Vec<std::path::PathBuf>,
    /// What a timeout's auto-pause keeps: memory (freeze) or files only.
    pub auto_pause_memory: bool,
    /// How the current pause was taken (meaningful while paused): frozen
    /// with memory held, or stopped with only the files kept.
    pub paused_memory: bool,
    /// When the current pause began (unix ms; 0 while running).
    pub paused_at: i64,
    /// When and why it died (`State::Dead` only).
    pub died_at: i64,
    pub death: String,
    /// Resource alert thresholds.
    pub alerts: airlock_proto::api::AlertThresholds,
    /// The warm pool it was started for ('' for one created on demand).
    pub pool: String,
    /// Traffic to it while it is paused resumes it (E2B's auto-resume).
    pub auto_resume: bool,
    /// The timeout it was created with, in seconds: what an auto-resume
    /// gives it.
    pub timeout_s: i64,
    /// Its ports take requests without the traffic access token.
    pub public_traffic: bool,
    /// The `Host` its ports see (`${PORT}` replaced), '' to keep the client's.
    pub mask_host: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct KeyRow {
    pub id: String,
    pub prefix: String,
    pub name: String,
    pub created_at: i64,
}

pub struct Store {
    conn: Mutex<Connection>,
    /// The data disk's reserve file (see `service::disk`): given back when
    /// a state change cannot be written for lack of space, so it can.
    reserve: Option<std::path::PathBuf>,
}

/// The data disk's reserve, next to the store (see `service::disk`).
pub const RESERVE_FILE: &str = ".disk-reserve";

impl StoreError {
    /// SQLite could not write for lack of disk space.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StoreError::Sql(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::DiskFull)
    }
}

pub fn hash_key(key: &str) -> String {
    let d = Sha256::digest(key.as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

impl Store {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        // The store holds sandbox access tokens in clear (connect must hand
        // them back): root only. SQLite gives the -wal and -shm files the
        // database's mode, so the database file is created 0600 first, and
        // stores made by older versions are tightened.
        {
            use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
            std::fs::OpenOptions::new().write(true).create(true).truncate(false).mode(0o600).open(path).map_err(|e| StoreError::Io { path: path.to_path_buf(), source: e })?;
            for suffix in ["", "-wal", "-shm"] {
                let mut p = path.as_os_str().to_owned();
                p.push(suffix);
                if std::path::Path::new(&p).exists() {
                    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).map_err(|e| StoreError::Io { path: p.into(), source: e })?;
                }
            }
        }
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=NORMAL;
             PRAGMA foreign_keys=ON;
             CREATE TABLE IF NOT EXISTS api_keys (
                 id TEXT PRIMARY KEY,
                 hash TEXT NOT NULL UNIQUE,
                 prefix TEXT NOT NULL,
                 name TEXT NOT NULL DEFAULT '',
                 created_at INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS sandboxes (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 id TEXT NOT NULL UNIQUE,
                 template TEXT NOT NULL,
                 state TEXT NOT NULL,
                 started_at INTEGER NOT NULL,
                 end_at INTEGER NOT NULL,
                 auto_pause INTEGER NOT NULL,
                 metadata TEXT NOT NULL,
                 env TEXT NOT NULL,
                 access_token TEXT,
                 internet INTEGER NOT NULL,
                 cpus REAL NOT NULL,
                 memory_mb INTEGER NOT NULL
             );
             CREATE INDEX IF NOT EXISTS sandboxes_end_at ON sandboxes(state, end_at);",
        )?;
        // Columns added after the first release, for stores made before.
        let has = |col: &str| -> Result<bool, rusqlite::Error> {
            let mut st = conn.prepare("SELECT 1 FROM pragma_table_info('sandboxes') WHERE name = ?1")?;
            Ok(st.query_row(params![col], |_| Ok(())).optional()?.is_some())
        };
        for (col, decl) in [
            ("disk_mb", "INTEGER NOT NULL DEFAULT 0"),
            ("layers", "TEXT NOT NULL DEFAULT '[]'"),
            ("auto_pause_memory", "INTEGER NOT NULL DEFAULT 1"),
            ("paused_memory", "INTEGER NOT NULL DEFAULT 1"),
            ("paused_at", "INTEGER NOT NULL DEFAULT 0"),
            ("died_at", "INTEGER NOT NULL DEFAULT 0"),
            ("death", "TEXT NOT NULL DEFAULT ''"),
            ("volumes", "TEXT NOT NULL DEFAULT '[]'"),
            ("alerts", "TEXT NOT NULL DEFAULT '{}'"),
            ("pool", "TEXT NOT NULL DEFAULT ''"),
            ("auto_resume", "INTEGER NOT NULL DEFAULT 0"),
            ("timeout_s", "INTEGER NOT NULL DEFAULT 300"),
            ("public_traffic", "INTEGER NOT NULL DEFAULT 1"),
            ("mask_host", "TEXT NOT NULL DEFAULT ''"),
        ] {
            if !has(col)? {
                conn.execute_batch(&format!("ALTER TABLE sandboxes ADD COLUMN {col} {decl};"))?;
            }
        }
        crate::volumes::store::migrate(&conn)?;
        crate::events::migrate(&conn)?;
        crate::samples::migrate(&conn)?;
        crate::pools::migrate(&conn)?;
        crate::egress::store::migrate(&conn)?;
        crate::webhooks::migrate(&conn)?;
        crate::secrets::migrate(&conn)?;
        let reserve = path.parent().map(|d| d.join(RESERVE_FILE));
        Ok(Self { conn: Mutex::new(conn), reserve })
    }

    pub(crate) fn c(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A state change of an existing sandbox (kill, pause, resume, a new
    /// deadline): if the disk is too full to write it, the reserve is given
    /// back and it is tried once more, so what users do to the sandboxes
    /// they have is recorded even while new ones are refused.
    fn change(&self, sql: &str, p: impl rusqlite::Params + Clone) -> Result<usize, StoreError> {
        let c = self.c();
        match c.execute(sql, p.clone()) {
            Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::DiskFull => {
                let released = self.reserve.as_ref().is_some_and(|r| std::fs::remove_file(r).is_ok());
                tracing::error!(released, "the data disk is full; released its reserve to record a state change");
                Ok(c.execute(sql, p)?)
            }
            r => Ok(r?),
        }
    }

    // ---------------------------------------------------------------- keys

    pub fn add_key(&self, id: &str, key: &str, name: &str, now: i64) -> Result<(), StoreError> {
        let prefix: String = key.chars().take(10).collect();
        self.c().execute(
            "INSERT INTO api_keys (id, hash, prefix, name, created_at) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(hash) DO NOTHING",
            params![id, hash_key(key), prefix, name, now],
        )?;
        Ok(())
    }

    pub fn key_valid(&self, key: &str) -> Result<bool, StoreError> {
        let c = self.c();
        let mut st = c.prepare_cached("SELECT 1 FROM api_keys WHERE hash = ?1")?;
        let found = st.query_row(params![hash_key(key)], |_| Ok(())).optional()?.is_some();
        Ok(found)
    }

    pub fn keys(&self) -> Result<Vec<KeyRow>, StoreError> {
        let c = self.c();
        let mut st = c.prepare("SELECT id, prefix, name, created_at FROM api_keys ORDER BY created_at, id")?;
        let rows = st.query_map([], |r| Ok(KeyRow { id: r.get(0)?, prefix: r.get(1)?, name: r.get(2)?, created_at: r.get(3)? }))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every key's hash with its name (what a cluster publishes).
    pub fn key_hashes(&self) -> Result<Vec<(String, String)>, StoreError> {
        let c = self.c();
        let mut st = c.prepare("SELECT hash, name FROM api_keys")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Revokes by id or by the key's visible prefix; returns how many went.
    pub fn revoke_key(&self, id_or_prefix: &str) -> Result<usize, StoreError> {
        Ok(self.c().execute("DELETE FROM api_keys WHERE id = ?1 OR prefix = ?1", params![id_or_prefix])?)
    }

    pub fn key_count(&self) -> Result<i64, StoreError> {
        Ok(self.c().query_row("SELECT COUNT(*) FROM api_keys", [], |r| r.get(0))?)
    }

    // ----------------------------------------------------------- sandboxes

    pub fn insert_sandbox(&self, s: &SandboxRow) -> Result<i64, StoreError> {
        Self::insert_with(&self.c(), s)
    }

    fn insert_with(c: &Connection, s: &SandboxRow) -> Result<i64, StoreError> {
        c.execute(
            "INSERT INTO sandboxes (id, template, state, started_at, end_at, auto_pause, metadata, env, access_token, internet, cpus, memory_mb, disk_mb,
                                    layers, auto_pause_memory, paused_memory, paused_at, alerts, pool, auto_resume, timeout_s, public_traffic, mask_host)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23)",
            params![
                s.id,
                s.template,
                s.state.as_str(),
                s.started_at,
                s.end_at,
                s.auto_pause,
                serde_json::to_string(&s.metadata).unwrap_or_else(|_| "{}".into()),
                serde_json::to_string(&s.env).unwrap_or_else(|_| "{}".into()),
                s.access_token,
                s.internet,
                s.cpus,
                s.memory_mb as i64,
                s.disk_mb as i64,
                serde_json::to_string(&s.layers).unwrap_or_else(|_| "[]".into()),
                s.auto_pause_memory,
                s.paused_memory,
                s.paused_at,
                serde_json::to_string(&s.alerts).unwrap_or_else(|_| "{}".into()),
                s.pool,
                s.auto_resume,
                s.timeout_s,
                s.public_traffic,
                s.mask_host,
            ],
        )?;
        Ok(c.last_insert_rowid())
    }

    fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(SandboxRow, String, String, String)> {
        let state: String = r.get(2)?;
        let metadata: String = r.get(6)?;
        let env: String = r.get(7)?;
        let layers: String = r.get(14)?;
        let alerts: String = r.get(20)?;
        Ok((
            SandboxRow {
                id: r.get(0)?,
                template: r.get(1)?,
                state: State::Running,
                started_at: r.get(3)?,
                end_at: r.get(4)?,
                auto_pause: r.get(5)?,
                metadata: BTreeMap::new(),
                env: BTreeMap::new(),
                access_token: r.get(8)?,
                internet: r.get(9)?,
                cpus: r.get(10)?,
                memory_mb: r.get::<_, i64>(11)? as u64,
                seq: r.get(12)?,
                disk_mb: r.get::<_, i64>(13)? as u64,
                // Written by us as JSON; an unreadable list protects nothing
                // but breaks nothing either.
                layers: serde_json::from_str(&layers).unwrap_or_default(),
                auto_pause_memory: r.get(15)?,
                paused_memory: r.get(16)?,
                paused_at: r.get(17)?,
                died_at: r.get(18)?,
                death: r.get(19)?,
                alerts: serde_json::from_str(&alerts).unwrap_or_default(),
                pool: r.get(21)?,
                auto_resume: r.get(22)?,
                timeout_s: r.get(23)?,
                public_traffic: r.get(24)?,
                mask_host: r.get(25)?,
            },
            state,
            metadata,
            env,
        ))
    }

    fn finish(raw: (SandboxRow, String, String, String)) -> Result<SandboxRow, StoreError> {
        let (mut s, state, metadata, env) = raw;
        s.state = State::parse(&state).ok_or_else(|| StoreError::Corrupt { id: s.id.clone(), what: format!("state {state:?}") })?;
        s.metadata = serde_json::from_str(&metadata).map_err(|e| StoreError::Corrupt { id: s.id.clone(), what: e.to_string() })?;
        s.env = serde_json::from_str(&env).map_err(|e| StoreError::Corrupt { id: s.id.clone(), what: e.to_string() })?;
        Ok(s)
    }

    const COLS: &'static str =
        "id, template, state, started_at, end_at, auto_pause, metadata, env, access_token, internet, cpus, memory_mb, seq, disk_mb, layers, auto_pause_memory, paused_memory, paused_at, died_at, death, alerts, pool, auto_resume, timeout_s, public_traffic, mask_host";

    pub fn sandbox(&self, id: &str) -> Result<Option<SandboxRow>, StoreError> {
        let c = self.c();
        // Cached: this lookup runs for every proxied request.
        let mut st = c.prepare_cached(&format!("SELECT {} FROM sandboxes WHERE id = ?1", Self::COLS))?;
        let raw = st.query_row(params![id], Self::row).optional()?;
        drop(st);
        raw.map(Self::finish).transpose()
    }

    /// All sandboxes, in creation order.
    pub fn sandboxes(&self) -> Result<Vec<SandboxRow>, StoreError> {
        let c = self.c();
        let mut st = c.prepare(&format!("SELECT {} FROM sandboxes ORDER BY seq", Self::COLS))?;
        let raws = st.query_map([], Self::row)?.collect::<Result<Vec<_>, _>>()?;
        raws.into_iter().map(Self::finish).collect()
    }

    /// Running sandboxes whose deadline has passed.
    pub fn due(&self, now: i64) -> Result<Vec<SandboxRow>, StoreError> {
        let c = self.c();
        let mut st = c.prepare(&format!("SELECT {} FROM sandboxes WHERE state = 'running' AND end_at <= ?1 ORDER BY end_at", Self::COLS))?;
        let raws = st.query_map(params![now], Self::row)?.collect::<Result<Vec<_>, _>>()?;
        raws.into_iter().map(Self::finish).collect()
    }

    /// Admits a new sandbox: its row (state `Creating`, with the volumes it
    /// mounts) is inserted only if fewer than `max_creating` creates are in
    /// flight, fewer than `max_total` sandboxes exist and every volume still
    /// does; the checks and the insert are one transaction.
    pub fn admit(&self, s: &SandboxRow, volumes: &[crate::volumes::store::SandboxVolume], max_creating: usize, max_total: usize) -> Result<Result<(), Refusal>, StoreError> {
        let mut c = self.c();
        let tx = c.transaction()?;
        // The dead hold nothing: they do not count.
        let (creating, total): (i64, i64) =
            tx.query_row("SELECT COALESCE(SUM(state = 'creating'), 0), COALESCE(SUM(state != 'dead'), 0) FROM sandboxes", [], |r| Ok((r.get(0)?, r.get(1)?)))?;
        if creating as usize >= max_creating {
            return Ok(Err(Refusal::Busy(max_creating)));
        }
        if total as usize >= max_total {
            return Ok(Err(Refusal::Full(max_total)));
        }
        for v in volumes {
            if tx.query_row("SELECT 1 FROM volumes WHERE id = ?1", params![v.id], |_| Ok(())).optional()?.is_none() {
                return Ok(Err(Refusal::VolumeGone(v.id.clone())));
            }
        }
        Self::insert_with(&tx, s)?;
        if !volumes.is_empty() {
            let json = serde_json::to_string(volumes).unwrap_or_else(|_| "[]".into());
            tx.execute("UPDATE sandboxes SET volumes = ?2 WHERE id = ?1", params![s.id, json])?;
        }
        tx.commit()?;
        Ok(Ok(()))
    }

    /// A created sandbox goes live: running (or pooled, for a pool's),
    /// with its real start and deadline.
    pub fn finish_create(&self, id: &str, started_at: i64, end_at: i64, state: State) -> Result<bool, StoreError> {
        Ok(self.change("UPDATE sandboxes SET state = ?4, started_at = ?2, end_at = ?3 WHERE id = ?1 AND state = 'creating'", params![id, started_at, end_at, state.as_str()])? > 0)
    }

    /// Claims the oldest ready sandbox of `pool` that runs on `layers`:
    /// in one transaction it becomes `Creating` again under its new
    /// owner's settings (from `s`: template name, deadline, metadata,
    /// environment, token, pause options, alerts) and takes a new place in
    /// the creation order, so it lists as what it now is, a new sandbox.
    /// Returns the row and the pool's token (which its agent still wants);
    /// `None` when the pool has none.
    pub fn claim_pooled(&self, pool: &str, s: &SandboxRow) -> Result<Option<(SandboxRow, Option<String>)>, StoreError> {
        let mut c = self.c();
        let tx = c.transaction()?;
        let layers = serde_json::to_string(&s.layers).unwrap_or_else(|_| "[]".into());
        let found: Option<(String, Option<String>)> = tx
            .query_row("SELECT id, access_token FROM sandboxes WHERE state = 'pooled' AND pool = ?1 AND layers = ?2 ORDER BY seq LIMIT 1", params![pool, layers], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        let Some((id, old_token)) = found else { return Ok(None) };
        tx.execute(
            "UPDATE sandboxes SET state = 'creating', pool = '', template = ?2, started_at = ?3, end_at = ?4, auto_pause = ?5, metadata = ?6, env = ?7,
                    access_token = ?8, auto_pause_memory = ?9, alerts = ?10, auto_resume = ?11, timeout_s = ?12, public_traffic = ?13, mask_host = ?14,
                    seq = (SELECT MAX(seq) + 1 FROM sandboxes)
             WHERE id = ?1",
            params![
                id,
                s.template,
                s.started_at,
                s.end_at,
                s.auto_pause,
                serde_json::to_string(&s.metadata).unwrap_or_else(|_| "{}".into()),
                serde_json::to_string(&s.env).unwrap_or_else(|_| "{}".into()),
                s.access_token,
                s.auto_pause_memory,
                serde_json::to_string(&s.alerts).unwrap_or_else(|_| "{}".into()),
                s.auto_resume,
                s.timeout_s,
                s.public_traffic,
                s.mask_host,
            ],
        )?;
        let raw = tx.query_row(&format!("SELECT {} FROM sandboxes WHERE id = ?1", Self::COLS), params![id], Self::row)?;
        tx.commit()?;
        Self::finish(raw).map(|r| Some((r, old_token)))
    }

    /// Pool sandboxes counted by pool, state and layers (JSON, as stored).
    pub fn pool_levels(&self) -> Result<Vec<(String, State, String, i64)>, StoreError> {
        let c = self.c();
        let mut st = c.prepare("SELECT pool, state, layers, COUNT(*) FROM sandboxes WHERE pool != '' GROUP BY pool, state, layers")?;
        let rows = st.query_map([], |r| {
            let state: String = r.get(1)?;
            Ok((r.get::<_, String>(0)?, State::parse(&state).unwrap_or(State::Creating), r.get::<_, String>(2)?, r.get::<_, i64>(3)?))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records a sandbox's port traffic settings.
    pub fn set_traffic(&self, id: &str, public: bool, mask_host: &str) -> Result<bool, StoreError> {
        Ok(self.change("UPDATE sandboxes SET public_traffic = ?2, mask_host = ?3 WHERE id = ?1", params![id, public, mask_host])? > 0)
    }

    /// Records a sandbox's alert thresholds.
    pub fn set_alerts(&self, id: &str, alerts: &airlock_proto::api::AlertThresholds) -> Result<bool, StoreError> {
        let a = serde_json::to_string(alerts).unwrap_or_else(|_| "{}".into());
        Ok(self.change("UPDATE sandboxes SET alerts = ?2 WHERE id = ?1", params![id, a])? > 0)
    }

    /// Records a running sandbox's new limits.
    pub fn set_resources(&self, id: &str, cpus: f64, memory_mb: u64, disk_mb: u64) -> Result<bool, StoreError> {
        Ok(self.change("UPDATE sandboxes SET cpus = ?2, memory_mb = ?3, disk_mb = ?4 WHERE id = ?1", params![id, cpus, memory_mb as i64, disk_mb as i64])? > 0)
    }

    pub fn count(&self) -> Result<usize, StoreError> {
        Ok(self.c().query_row("SELECT COUNT(*) FROM sandboxes", [], |r| r.get::<_, i64>(0))? as usize)
    }

    pub fn set_state(&self, id: &str, state: State, end_at: i64) -> Result<bool, StoreError> {
        Ok(self.change("UPDATE sandboxes SET state = ?2, end_at = ?3 WHERE id = ?1", params![id, state.as_str(), end_at])? > 0)
    }

    /// Marks a sandbox paused, and how: frozen (`memory`) or stopped.
    pub fn set_paused(&self, id: &str, end_at: i64, memory: bool, at: i64) -> Result<bool, StoreError> {
        Ok(self.change("UPDATE sandboxes SET state = 'paused', end_at = ?2, paused_memory = ?3, paused_at = ?4 WHERE id = ?1", params![id, end_at, memory, at])? > 0)
    }

    /// A pause begins: `memory` says which kind (kept in `paused_memory`).
    pub fn set_pausing(&self, id: &str, memory: bool) -> Result<bool, StoreError> {
        Ok(self.change("UPDATE sandboxes SET state = 'pausing', paused_memory = ?2 WHERE id = ?1", params![id, memory])? > 0)
    }

    /// Records a restart's new environment and resources.
    pub fn set_config(&self, id: &str, env: &BTreeMap<String, String>, cpus: f64, memory_mb: u64) -> Result<bool, StoreError> {
        let env = serde_json::to_string(env).unwrap_or_else(|_| "{}".into());
        Ok(self.change("UPDATE sandboxes SET env = ?2, cpus = ?3, memory_mb = ?4 WHERE id = ?1", params![id, env, cpus, memory_mb as i64])? > 0)
    }

    pub fn set_end(&self, id: &str, end_at: i64) -> Result<bool, StoreError> {
        Ok(self.change("UPDATE sandboxes SET end_at = ?2 WHERE id = ?1", params![id, end_at])? > 0)
    }

    /// Records that a sandbox died and why; it mounts and runs on nothing
    /// any more (its volumes and layers are free).
    pub fn set_dead(&self, id: &str, death: &str, at: i64) -> Result<bool, StoreError> {
        Ok(self.change("UPDATE sandboxes SET state = 'dead', died_at = ?2, death = ?3, volumes = '[]', layers = '[]' WHERE id = ?1", params![id, at, death])? > 0)
    }

    /// Forgets sandboxes that died before `before`.
    pub fn purge_dead(&self, before: i64) -> Result<usize, StoreError> {
        Ok(self.c().execute("DELETE FROM sandboxes WHERE state = 'dead' AND died_at < ?1", params![before])?)
    }

    pub fn delete_sandbox(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self.change("DELETE FROM sandboxes WHERE id = ?1", params![id])? > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, end: i64) -> SandboxRow {
        SandboxRow {
            id: id.into(),
            template: "base".into(),
            state: State::Running,
            started_at: 1,
            end_at: end,
            auto_pause: false,
            metadata: [("k".to_string(), "v".to_string())].into(),
            env: BTreeMap::new(),
            access_token: Some("tok".into()),
            internet: true,
            cpus: 1.5,
            memory_mb: 256,
            disk_mb: 64,
            seq: 0,
            layers: vec!["/l/a/root".into()],
            auto_pause_memory: false,
            paused_memory: true,
            paused_at: 0,
            died_at: 0,
            death: String::new(),
            alerts: Default::default(),
            pool: String::new(),
            auto_resume: false,
            timeout_s: 300,
            public_traffic: true,
            mask_host: String::new(),
        }
    }

    #[test]
    fn sandboxes_round_trip_and_survive_reopen() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("db.sqlite");
        {
            let s = Store::open(&p).expect("open");
            s.insert_sandbox(&row("a", 100)).expect("insert a");
            s.insert_sandbox(&row("b", 300)).expect("insert b");
            assert!(s.insert_sandbox(&row("a", 1)).is_err(), "ids are unique");
            s.set_state("b", State::Paused, 500).expect("pause");
        }
        let s = Store::open(&p).expect("reopen");
        let a = s.sandbox("a").expect("get").expect("present");
        assert_eq!((a.metadata["k"].as_str(), a.cpus, a.access_token.as_deref()), ("v", 1.5, Some("tok")));
        assert_eq!((a.layers.clone(), a.auto_pause_memory), (vec![std::path::PathBuf::from("/l/a/root")], false));
        assert_eq!(s.due(200).expect("due").iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), vec!["a"]);
        assert_eq!(s.sandbox("b").expect("get").expect("b").state, State::Paused);
        assert!(s.delete_sandbox("a").expect("delete"));
        assert!(s.sandbox("a").expect("get").is_none());
    }

    #[test]
    fn keys_are_stored_hashed() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = Store::open(&dir.path().join("db")).expect("open");
        s.add_key("k1", "e2b_0123456789abcdef", "ci", 5).expect("add");
        assert!(s.key_valid("e2b_0123456789abcdef").expect("check"));
        assert!(!s.key_valid("e2b_wrong").expect("check"));
        for f in ["db", "db-wal"] {
            let raw = std::fs::read(dir.path().join(f)).unwrap_or_default();
            assert!(!String::from_utf8_lossy(&raw).contains("0123456789abcdef"), "key not stored in clear in {f}");
        }
        assert_eq!(s.revoke_key("e2b_012345").expect("revoke by prefix"), 1);
        assert!(!s.key_valid("e2b_0123456789abcdef").expect("check"));
    }

    /// Regression guard: stores written before `disk_mb` existed open and
    /// read as "no limit".
    #[test]
    fn stores_from_before_disk_limits_are_migrated() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("old.sqlite");
        {
            let c = Connection::open(&p).expect("open");
            c.execute_batch(
                "CREATE TABLE sandboxes (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, template TEXT NOT NULL, state TEXT NOT NULL,
                 started_at INTEGER NOT NULL, end_at INTEGER NOT NULL, auto_pause INTEGER NOT NULL, metadata TEXT NOT NULL, env TEXT NOT NULL,
                 access_token TEXT, internet INTEGER NOT NULL, cpus REAL NOT NULL, memory_mb INTEGER NOT NULL);
                 INSERT INTO sandboxes (id, template, state, started_at, end_at, auto_pause, metadata, env, access_token, internet, cpus, memory_mb)
                 VALUES ('old', 'base', 'running', 1, 2, 0, '{}', '{}', NULL, 1, 2.0, 512);",
            )
            .expect("old schema");
        }
        let s = Store::open(&p).expect("migrates");
        let old = s.sandbox("old").expect("read").expect("row");
        assert_eq!((old.memory_mb, old.disk_mb), (512, 0));
        s.insert_sandbox(&row("new", 5)).expect("insert after migration");
        assert_eq!(s.sandbox("new").expect("read").expect("row").disk_mb, 64);
        drop(s);
        Store::open(&p).expect("reopening a migrated store is a no-op");
    }
}
