//! Volumes in the SQLite store: the `volumes` table (the truth about which
//! volumes exist, their names, tokens and limits) and the `volumes` column
//! of `sandboxes` (which volumes each sandbox mounts). Name uniqueness and
//! "in use" are decided here, under the store's one connection lock, so a
//! volume delete racing a sandbox create is serialised: whichever reaches
//! the store first wins and the other fails cleanly.

use rusqlite::{params, Connection, OptionalExtension};

use crate::store::{Store, StoreError};

/// One stored volume. Times are unix milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct VolumeRow {
    pub id: String,
    pub name: String,
    /// E2B's bearer token for the content API (kept in clear: get hands it back).
    pub token: String,
    pub size_mb: u64,
    /// Whether its files live on their own size-limited filesystem.
    pub enforced: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A volume as one sandbox mounts it (the `sandboxes.volumes` column).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SandboxVolume {
    pub id: String,
    pub name: String,
    pub path: String,
    #[serde(default)]
    pub read_only: bool,
}

/// Creates the `volumes` table (the `sandboxes.volumes` column is added
/// with the other late columns in `Store::open`).
pub(crate) fn migrate(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS volumes (
             id TEXT PRIMARY KEY,
             name TEXT NOT NULL UNIQUE,
             token TEXT NOT NULL,
             size_mb INTEGER NOT NULL,
             enforced INTEGER NOT NULL,
             created_at INTEGER NOT NULL,
             updated_at INTEGER NOT NULL
         );",
    )?;
    Ok(())
}

fn volume_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<VolumeRow> {
    Ok(VolumeRow { id: r.get(0)?, name: r.get(1)?, token: r.get(2)?, size_mb: r.get::<_, i64>(3)? as u64, enforced: r.get(4)?, created_at: r.get(5)?, updated_at: r.get(6)? })
}

const COLS: &str = "id, name, token, size_mb, enforced, created_at, updated_at";

/// Which sandboxes in `rows` (id, volumes JSON) mount volume `id`.
fn users_in(rows: Vec<(String, String)>, id: &str) -> Vec<String> {
    rows.into_iter().filter(|(_, v)| serde_json::from_str::<Vec<SandboxVolume>>(v).unwrap_or_default().iter().any(|m| m.id == id)).map(|(s, _)| s).collect()
}

impl Store {
    /// Inserts a volume; false when the name is taken.
    pub fn insert_volume(&self, v: &VolumeRow) -> Result<bool, StoreError> {
        let n = self.c().execute(
            "INSERT INTO volumes (id, name, token, size_mb, enforced, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT(name) DO NOTHING",
            params![v.id, v.name, v.token, v.size_mb as i64, v.enforced, v.created_at, v.updated_at],
        )?;
        Ok(n > 0)
    }

    pub fn volume(&self, id: &str) -> Result<Option<VolumeRow>, StoreError> {
        Ok(self.c().query_row(&format!("SELECT {COLS} FROM volumes WHERE id = ?1"), params![id], volume_row).optional()?)
    }

    pub fn volume_by_name(&self, name: &str) -> Result<Option<VolumeRow>, StoreError> {
        Ok(self.c().query_row(&format!("SELECT {COLS} FROM volumes WHERE name = ?1"), params![name], volume_row).optional()?)
    }

    /// Every volume, oldest first.
    pub fn volumes(&self) -> Result<Vec<VolumeRow>, StoreError> {
        let c = self.c();
        let mut st = c.prepare(&format!("SELECT {COLS} FROM volumes ORDER BY created_at, id"))?;
        let rows = st.query_map([], volume_row)?.collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    pub fn touch_volume(&self, id: &str, now: i64) -> Result<(), StoreError> {
        self.c().execute("UPDATE volumes SET updated_at = ?2 WHERE id = ?1", params![id, now])?;
        Ok(())
    }

    /// Deletes a volume no sandbox mounts: `Ok(Ok(true))` deleted,
    /// `Ok(Ok(false))` unknown, `Ok(Err(ids))` in use by those sandboxes.
    pub fn delete_volume(&self, id: &str) -> Result<Result<bool, Vec<String>>, StoreError> {
        let c = self.c();
        let rows = {
            let mut st = c.prepare("SELECT id, volumes FROM sandboxes WHERE volumes != '[]' ORDER BY seq")?;
            let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?.collect::<Result<Vec<_>, _>>()?;
            rows
        };
        let users = users_in(rows, id);
        if !users.is_empty() {
            return Ok(Err(users));
        }
        Ok(Ok(c.execute("DELETE FROM volumes WHERE id = ?1", params![id])? > 0))
    }

    /// Records the volumes a sandbox (already inserted) mounts, if every one
    /// still exists; `Ok(Err(id))` names one that does not, and the
    /// sandbox's row is then removed again.
    pub fn attach_volumes(&self, sandbox: &str, vols: &[SandboxVolume]) -> Result<Result<(), String>, StoreError> {
        let c = self.c();
        for v in vols {
            let found = c.query_row("SELECT 1 FROM volumes WHERE id = ?1", params![v.id], |_| Ok(())).optional()?.is_some();
            if !found {
                c.execute("DELETE FROM sandboxes WHERE id = ?1", params![sandbox])?;
                return Ok(Err(v.id.clone()));
            }
        }
        let json = serde_json::to_string(vols).unwrap_or_else(|_| "[]".into());
        c.execute("UPDATE sandboxes SET volumes = ?2 WHERE id = ?1", params![sandbox, json])?;
        Ok(Ok(()))
    }

    /// The volumes a sandbox mounts (empty for unknown sandboxes).
    pub fn sandbox_volumes(&self, sandbox: &str) -> Result<Vec<SandboxVolume>, StoreError> {
        let raw: Option<String> = self.c().query_row("SELECT volumes FROM sandboxes WHERE id = ?1", params![sandbox], |r| r.get(0)).optional()?;
        Ok(raw.and_then(|r| serde_json::from_str(&r).ok()).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vol(id: &str, name: &str) -> VolumeRow {
        VolumeRow { id: id.into(), name: name.into(), token: "t".into(), size_mb: 64, enforced: true, created_at: 1, updated_at: 1 }
    }

    #[test]
    fn names_are_unique_and_deletes_respect_users() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = Store::open(&dir.path().join("db")).expect("open");
        assert!(s.insert_volume(&vol("vol_a", "a")).expect("insert"));
        assert!(!s.insert_volume(&vol("vol_b", "a")).expect("insert"), "duplicate name refused");
        assert_eq!(s.volume_by_name("a").expect("get").map(|v| v.id), Some("vol_a".to_string()));
        // A sandbox row using it, inserted the way the service does.
        s.c()
            .execute_batch(
                "INSERT INTO sandboxes (id, template, state, started_at, end_at, auto_pause, metadata, env, access_token, internet, cpus, memory_mb)
                 VALUES ('sbx', 'base', 'running', 1, 2, 0, '{}', '{}', NULL, 1, 2.0, 512);",
            )
            .expect("sandbox");
        let m = SandboxVolume { id: "vol_a".into(), name: "a".into(), path: "/mnt/a".into(), read_only: false };
        assert_eq!(s.attach_volumes("sbx", std::slice::from_ref(&m)).expect("attach"), Ok(()));
        assert_eq!(s.sandbox_volumes("sbx").expect("read"), vec![m]);
        assert_eq!(s.delete_volume("vol_a").expect("delete"), Err(vec!["sbx".to_string()]));
        assert!(s.delete_sandbox("sbx").expect("rm"));
        assert_eq!(s.delete_volume("vol_a").expect("delete"), Ok(true));
        assert_eq!(s.delete_volume("vol_a").expect("delete"), Ok(false));
    }

    #[test]
    fn attaching_a_deleted_volume_removes_the_sandbox_row() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = Store::open(&dir.path().join("db")).expect("open");
        s.c()
            .execute_batch(
                "INSERT INTO sandboxes (id, template, state, started_at, end_at, auto_pause, metadata, env, access_token, internet, cpus, memory_mb)
                 VALUES ('sbx', 'base', 'running', 1, 2, 0, '{}', '{}', NULL, 1, 2.0, 512);",
            )
            .expect("sandbox");
        let m = SandboxVolume { id: "vol_gone".into(), name: "g".into(), path: "/mnt/g".into(), read_only: false };
        assert_eq!(s.attach_volumes("sbx", &[m]).expect("attach"), Err("vol_gone".to_string()));
        assert!(s.sandbox("sbx").expect("get").is_none());
    }
}
