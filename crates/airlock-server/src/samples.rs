//! Metric history: every usage sample the sampler takes, kept in the store
//! (so history survives a server restart and outlives the sandbox) for
//! `RETENTION_MS`, and at most `MAX_ROWS` in all. One sampler pass writes
//! all its samples in one transaction.

use rusqlite::{params, Connection};

use crate::store::{Store, StoreError};

/// How long samples are kept: a day.
pub const RETENTION_MS: i64 = 24 * 3600 * 1000;
/// The most samples kept, whatever their age (about 100 MiB of store).
pub const MAX_ROWS: i64 = 2_000_000;

/// One sample of one sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Sample {
    pub at_ms: i64,
    pub cpu_ns: u64,
    pub cpu_pct: f64,
    pub mem: u64,
    pub mem_limit: u64,
    /// Page cache the kernel can take back (usage less the working set).
    pub mem_cache: u64,
    pub disk: u64,
    pub disk_limit: u64,
    pub net_rx: u64,
    pub net_tx: u64,
    /// CPU cores it may use at the time.
    pub cpus: f64,
}

pub(crate) fn migrate(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS samples (
             sandbox_id TEXT NOT NULL,
             at INTEGER NOT NULL,
             cpu_ns INTEGER NOT NULL,
             cpu_pct REAL NOT NULL,
             mem INTEGER NOT NULL,
             mem_limit INTEGER NOT NULL,
             mem_cache INTEGER NOT NULL,
             disk INTEGER NOT NULL,
             disk_limit INTEGER NOT NULL,
             net_rx INTEGER NOT NULL,
             net_tx INTEGER NOT NULL,
             cpus REAL NOT NULL
         );
         CREATE INDEX IF NOT EXISTS samples_by_sandbox ON samples(sandbox_id, at);
         CREATE INDEX IF NOT EXISTS samples_by_time ON samples(at);",
    )?;
    Ok(())
}

fn sample_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Sample> {
    let u = |i: usize| -> rusqlite::Result<u64> { Ok(r.get::<_, i64>(i)?.max(0) as u64) };
    Ok(Sample {
        at_ms: r.get(0)?,
        cpu_ns: u(1)?,
        cpu_pct: r.get(2)?,
        mem: u(3)?,
        mem_limit: u(4)?,
        mem_cache: u(5)?,
        disk: u(6)?,
        disk_limit: u(7)?,
        net_rx: u(8)?,
        net_tx: u(9)?,
        cpus: r.get(10)?,
    })
}

const COLS: &str = "at, cpu_ns, cpu_pct, mem, mem_limit, mem_cache, disk, disk_limit, net_rx, net_tx, cpus";

impl Store {
    /// Writes one sampler pass. A full disk drops the pass (history is
    /// not worth a sandbox's state change).
    pub fn add_samples(&self, batch: &[(String, Sample)]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut c = self.c();
        let tx = c.transaction()?;
        {
            let mut st = tx.prepare_cached(&format!("INSERT INTO samples (sandbox_id, {COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"))?;
            let i = |v: u64| v.min(i64::MAX as u64) as i64;
            for (id, s) in batch {
                st.execute(params![id, s.at_ms, i(s.cpu_ns), s.cpu_pct, i(s.mem), i(s.mem_limit), i(s.mem_cache), i(s.disk), i(s.disk_limit), i(s.net_rx), i(s.net_tx), s.cpus])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// A sandbox's samples with `start_ms <= at <= end_ms`, oldest first,
    /// at most `limit` (the newest of them when there are more).
    pub fn samples(&self, id: &str, start_ms: i64, end_ms: i64, limit: usize) -> Result<Vec<Sample>, StoreError> {
        let c = self.c();
        let mut st = c.prepare_cached(&format!("SELECT {COLS} FROM samples WHERE sandbox_id = ?1 AND at >= ?2 AND at <= ?3 ORDER BY at DESC LIMIT ?4"))?;
        let mut v = st.query_map(params![id, start_ms, end_ms, limit as i64], sample_row)?.collect::<Result<Vec<_>, _>>()?;
        v.reverse();
        Ok(v)
    }

    /// The newest sample of a sandbox.
    pub fn latest_sample(&self, id: &str) -> Result<Option<Sample>, StoreError> {
        Ok(self.samples(id, i64::MIN, i64::MAX, 1)?.pop())
    }

    /// Drops samples older than `before` and all but the newest `max_rows`.
    pub fn trim_samples(&self, before: i64, max_rows: i64) -> Result<usize, StoreError> {
        let c = self.c();
        let mut n = c.execute("DELETE FROM samples WHERE at < ?1", params![before])?;
        let total: i64 = c.query_row("SELECT COUNT(*) FROM samples", [], |r| r.get(0))?;
        if total > max_rows {
            n += c.execute("DELETE FROM samples WHERE rowid IN (SELECT rowid FROM samples ORDER BY at LIMIT ?1)", params![total - max_rows])?;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_kept_ranged_and_trimmed() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = Store::open(&dir.path().join("db")).expect("open");
        let at = |t: i64, mem: u64| Sample { at_ms: t, mem, net_rx: 7, ..Default::default() };
        s.add_samples(&[("a".into(), at(1000, 1)), ("b".into(), at(1000, 9))]).expect("add");
        s.add_samples(&[("a".into(), at(2000, 2)), ("a".into(), at(3000, 3))]).expect("add");
        let all = s.samples("a", i64::MIN, i64::MAX, 100).expect("all");
        assert_eq!(all.iter().map(|x| x.mem).collect::<Vec<_>>(), vec![1, 2, 3], "oldest first");
        assert_eq!(all[0].net_rx, 7);
        assert_eq!(s.samples("a", 1500, 2500, 100).expect("range").len(), 1);
        assert_eq!(s.samples("a", i64::MIN, i64::MAX, 2).expect("limited").iter().map(|x| x.mem).collect::<Vec<_>>(), vec![2, 3], "the newest when limited");
        assert_eq!(s.latest_sample("a").expect("latest").map(|x| x.mem), Some(3));
        assert_eq!(s.trim_samples(1500, 100).expect("by age"), 2);
        assert_eq!(s.trim_samples(0, 1).expect("by count"), 1);
        assert_eq!(s.latest_sample("a").expect("latest").map(|x| x.mem), Some(3));
        assert!(s.latest_sample("b").expect("b").is_none());
    }
}
