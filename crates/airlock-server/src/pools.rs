//! Warm pools as the store keeps them: a name and what to keep ready
//! (`PoolSpec`). Pools set with `--pool` are written at every start; ones
//! set through the API stay until deleted. The sandboxes themselves are
//! rows in `Pooled` state (see `service::pools`).

use rusqlite::{params, Connection};

use airlock_proto::api::PoolSpec;

use crate::store::{Store, StoreError};

/// The most sandboxes one pool may keep.
pub const MAX_SIZE: u32 = 1000;

pub(crate) fn migrate(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS pools (
             name TEXT PRIMARY KEY,
             spec TEXT NOT NULL
         );",
    )?;
    Ok(())
}

impl Store {
    pub fn pools(&self) -> Result<Vec<(String, PoolSpec)>, StoreError> {
        let c = self.c();
        let mut st = c.prepare("SELECT name, spec FROM pools ORDER BY name")?;
        let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?.collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|(name, spec)| serde_json::from_str(&spec).map(|s| (name.clone(), s)).map_err(|e| StoreError::Corrupt { id: format!("pool {name}"), what: e.to_string() }))
            .collect()
    }

    pub fn put_pool(&self, name: &str, spec: &PoolSpec) -> Result<(), StoreError> {
        let json = serde_json::to_string(spec).unwrap_or_else(|_| "{}".into());
        self.c().execute("INSERT INTO pools (name, spec) VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET spec = ?2", params![name, json])?;
        Ok(())
    }

    pub fn delete_pool(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self.c().execute("DELETE FROM pools WHERE name = ?1", params![name])? > 0)
    }
}

/// Pool names appear in URLs and labels: short, plain.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty() && name.len() <= 64 && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!("invalid pool name {:?}: 1 to 64 letters, digits, '-', '_' or '.'", name.chars().take(70).collect::<String>()))
    }
}

/// Parses `--pool TEMPLATE=SIZE[,cpu=N][,memory=MB][,disk=MB][,internet=BOOL][,name=NAME]`
/// into a name (the template's unless given) and its spec.
pub fn parse_flag(s: &str) -> Result<(String, PoolSpec), String> {
    let mut parts = s.split(',');
    let head = parts.next().unwrap_or_default();
    let (template, size) = head.split_once('=').ok_or_else(|| format!("--pool {s:?}: expected TEMPLATE=SIZE, for example base=8"))?;
    let size: u32 = size.trim().parse().map_err(|_| format!("--pool {s:?}: the size must be a number"))?;
    let mut spec = PoolSpec { template_id: template.trim().to_string(), size, ..Default::default() };
    let mut name = spec.template_id.clone();
    for p in parts {
        let (k, v) = p.split_once('=').ok_or_else(|| format!("--pool {s:?}: expected key=value, got {p:?}"))?;
        let bad = || format!("--pool {s:?}: invalid value for {k}: {v:?}");
        match k.trim() {
            "cpu" | "cpus" => spec.cpu_count = Some(v.trim().parse().map_err(|_| bad())?),
            "memory" | "mem" => spec.memory_mb = Some(v.trim().parse().map_err(|_| bad())?),
            "disk" => spec.disk_mb = Some(v.trim().parse().map_err(|_| bad())?),
            "internet" => spec.allow_internet_access = Some(v.trim().parse().map_err(|_| bad())?),
            "name" => name = v.trim().to_string(),
            other => return Err(format!("--pool {s:?}: unknown option {other:?} (cpu, memory, disk, internet, name)")),
        }
    }
    check_name(&name)?;
    check_spec(&spec)?;
    Ok((name, spec))
}

pub fn check_spec(spec: &PoolSpec) -> Result<(), String> {
    if spec.template_id.trim().is_empty() {
        return Err("a pool needs a template".into());
    }
    if spec.size > MAX_SIZE {
        return Err(format!("a pool keeps at most {MAX_SIZE} sandboxes, asked for {}", spec.size));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_flags_parse_and_pools_persist() {
        let (n, s) = parse_flag("base=8").expect("plain");
        assert_eq!((n.as_str(), s.template_id.as_str(), s.size, s.cpu_count), ("base", "base", 8, None));
        let (n, s) = parse_flag("code-interpreter-v1=2,cpu=2,memory=1024,internet=false,name=ci").expect("shaped");
        assert_eq!((n.as_str(), s.cpu_count, s.memory_mb, s.allow_internet_access), ("ci", Some(2.0), Some(1024), Some(false)));
        for bad in ["base", "base=x", "base=1,gpu=1", "base=1,cpu=lots", "base=5000", "=3", "base=1,name=a/b"] {
            assert!(parse_flag(bad).is_err(), "{bad} is refused");
        }
        let dir = tempfile::tempdir().expect("tmp");
        let st = Store::open(&dir.path().join("db")).expect("open");
        st.put_pool("ci", &s).expect("put");
        st.put_pool("ci", &PoolSpec { size: 3, ..s.clone() }).expect("update");
        assert_eq!(st.pools().expect("list"), vec![("ci".to_string(), PoolSpec { size: 3, ..s })]);
        assert!(st.delete_pool("ci").expect("delete"));
        assert!(!st.delete_pool("ci").expect("again"));
    }
}
