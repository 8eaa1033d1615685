//! Policed sandboxes as the store keeps them: the policy as it was asked
//! for (so it is parsed again after a restart, and shown by the info
//! endpoint) and the sandbox's address once it has one.

use rusqlite::{params, Connection, OptionalExtension};

use crate::store::{Store, StoreError};

/// A policy as given in E2B's `network` option.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Spec {
    #[serde(default)]
    pub allow_out: Vec<String>,
    #[serde(default)]
    pub deny_out: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<serde_json::Value>,
}

impl Spec {
    pub fn policy(&self) -> Result<super::Policy, super::policy::PolicyError> {
        super::Policy::parse(&self.allow_out, &self.deny_out, self.rules.as_ref())
    }
}

pub(crate) fn migrate(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS egress (
             id TEXT PRIMARY KEY,
             ip TEXT NOT NULL DEFAULT '',
             spec TEXT NOT NULL
         );",
    )?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS networks (
             name TEXT PRIMARY KEY,
             created_at INTEGER NOT NULL
         );
         CREATE TABLE IF NOT EXISTS network_members (
             network TEXT NOT NULL,
             id TEXT NOT NULL,
             name TEXT NOT NULL,
             ip TEXT NOT NULL,
             PRIMARY KEY (network, id)
         );",
    )?;
    Ok(())
}

fn parse(id: &str, json: &str) -> Result<Spec, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt { id: id.to_string(), what: format!("egress policy: {e}") })
}

impl Store {
    /// Records a sandbox's policy (and address, when known).
    pub fn put_egress(&self, id: &str, ip: Option<std::net::Ipv4Addr>, spec: &Spec) -> Result<(), StoreError> {
        let json = serde_json::to_string(spec).unwrap_or_else(|_| "{}".into());
        let ip = ip.map(|i| i.to_string()).unwrap_or_default();
        self.c().execute(
            "INSERT INTO egress (id, ip, spec) VALUES (?1, ?2, ?3) ON CONFLICT(id) DO UPDATE SET ip = CASE WHEN ?2 = '' THEN ip ELSE ?2 END, spec = ?3",
            params![id, ip, json],
        )?;
        Ok(())
    }

    pub fn egress(&self, id: &str) -> Result<Option<(Option<std::net::Ipv4Addr>, Spec)>, StoreError> {
        let row: Option<(String, String)> = self.c().query_row("SELECT ip, spec FROM egress WHERE id = ?1", params![id], |r| Ok((r.get(0)?, r.get(1)?))).optional()?;
        row.map(|(ip, json)| Ok((ip.parse().ok(), parse(id, &json)?))).transpose()
    }

    pub fn delete_egress(&self, id: &str) -> Result<(), StoreError> {
        self.c().execute("DELETE FROM egress WHERE id = ?1", params![id])?;
        Ok(())
    }

    /// Every policed sandbox that still has a row, with its address.
    pub fn egress_members(&self) -> Result<Vec<(String, std::net::Ipv4Addr, Spec)>, StoreError> {
        let c = self.c();
        let mut st = c.prepare("SELECT e.id, e.ip, e.spec FROM egress e JOIN sandboxes s ON s.id = e.id WHERE e.ip != ''")?;
        let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)))?.collect::<Result<Vec<_>, _>>()?;
        drop(st);
        drop(c);
        rows.into_iter().filter_map(|(id, ip, json)| Some((id.clone(), ip.parse().ok()?, json))).map(|(id, ip, json)| Ok((id.clone(), ip, parse(&id, &json)?))).collect()
    }

    /// Records a network (idempotent); its creation time.
    pub fn put_network(&self, name: &str, now: i64) -> Result<i64, StoreError> {
        let c = self.c();
        c.execute("INSERT INTO networks (name, created_at) VALUES (?1, ?2) ON CONFLICT(name) DO NOTHING", params![name, now])?;
        Ok(c.query_row("SELECT created_at FROM networks WHERE name = ?1", params![name], |r| r.get(0))?)
    }

    /// Networks with their creation times.
    pub fn networks(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let c = self.c();
        let mut st = c.prepare("SELECT name, created_at FROM networks ORDER BY name")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    pub fn delete_network(&self, name: &str) -> Result<bool, StoreError> {
        let c = self.c();
        c.execute("DELETE FROM network_members WHERE network = ?1", params![name])?;
        Ok(c.execute("DELETE FROM networks WHERE name = ?1", params![name])? > 0)
    }

    pub fn put_member(&self, network: &str, m: &super::networks::Member) -> Result<(), StoreError> {
        self.c().execute(
            "INSERT INTO network_members (network, id, name, ip) VALUES (?1, ?2, ?3, ?4) ON CONFLICT(network, id) DO UPDATE SET name = ?3, ip = ?4",
            params![network, m.id, m.name, m.ip.to_string()],
        )?;
        Ok(())
    }

    pub fn delete_member(&self, network: &str, id: &str) -> Result<(), StoreError> {
        self.c().execute("DELETE FROM network_members WHERE network = ?1 AND id = ?2", params![network, id])?;
        Ok(())
    }

    pub fn delete_memberships(&self, id: &str) -> Result<(), StoreError> {
        self.c().execute("DELETE FROM network_members WHERE id = ?1", params![id])?;
        Ok(())
    }

    /// Every network and its members whose sandboxes still have a row
    /// (empty networks included).
    pub fn network_members(&self) -> Result<super::networks::Nets, StoreError> {
        let mut nets: super::networks::Nets = self.networks()?.into_iter().map(|(n, _)| (n, Vec::new())).collect();
        let c = self.c();
        let mut st = c.prepare("SELECT m.network, m.id, m.name, m.ip FROM network_members m JOIN sandboxes s ON s.id = m.id WHERE s.state != 'dead' ORDER BY m.network, m.name")?;
        let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?)))?.collect::<Result<Vec<_>, _>>()?;
        for (net, id, name, ip) in rows {
            if let Ok(ip) = ip.parse() {
                nets.entry(net).or_default().push(super::networks::Member { id, name, ip });
            }
        }
        Ok(nets)
    }

    /// Forgets the policies of sandboxes whose rows are gone.
    pub fn prune_egress(&self) -> Result<usize, StoreError> {
        let c = self.c();
        c.execute("DELETE FROM network_members WHERE id NOT IN (SELECT id FROM sandboxes WHERE state != 'dead')", [])?;
        Ok(c.execute("DELETE FROM egress WHERE id NOT IN (SELECT id FROM sandboxes)", [])?)
    }
}
