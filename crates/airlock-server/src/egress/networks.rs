//! Sandbox networks: named private networks whose members reach each other
//! on any port, by name, while nothing else (no other sandbox, nothing
//! outside) reaches them any more than before. Each member keeps its own
//! egress policy for everything that is not a fellow member.
//!
//! The data plane is two sets of the egress table: `peers`, every ordered
//! pair of members that share a network (their traffic is neither
//! redirected nor dropped there, and is marked for the host firewall's
//! forward chain, which drops all other sandbox-to-sandbox traffic), and
//! `resolve`, the members, whose DNS the server's resolver answers:
//! `<name>` and `<name>.<network>` for fellow members, everything else as
//! their policy (or, without one, the upstream servers) says.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use super::{Egress, EgressError};

/// A sandbox on a network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: String,
    pub name: String,
    pub ip: Ipv4Addr,
}

/// Network name -> members.
pub(super) type Nets = BTreeMap<String, Vec<Member>>;

/// A DNS label, as network and member names must be (they are looked up
/// as `<name>.<network>`).
pub fn valid_label(s: &str) -> bool {
    !s.is_empty() && s.len() <= 63 && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') && !s.starts_with('-') && !s.ends_with('-')
}

fn shares_other(nets: &Nets, except: &str, a: Ipv4Addr, b: Ipv4Addr) -> bool {
    nets.iter().any(|(n, m)| n != except && m.iter().any(|x| x.ip == a) && m.iter().any(|x| x.ip == b))
}

impl Egress {
    /// Every network and its members.
    pub fn networks(&self) -> Nets {
        self.nets.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// `m` joins `net` (made if new): pairs with every member go in, and
    /// its DNS comes to the resolver. Joining again under another name
    /// renames it. Blocking (netlink).
    pub fn join(&self, net: &str, m: Member) -> Result<(), EgressError> {
        let mut nets = self.nets.write().unwrap_or_else(|p| p.into_inner());
        let members = nets.entry(net.to_string()).or_default();
        if let Some(taken) = members.iter().find(|x| x.name == m.name && x.id != m.id) {
            return Err(EgressError::NameTaken { network: net.to_string(), name: m.name.clone(), by: taken.id.clone() });
        }
        if let Some(x) = members.iter_mut().find(|x| x.id == m.id) {
            x.name = m.name;
            return Ok(());
        }
        for o in members.iter() {
            self.table.add_peer(m.ip, o.ip)?;
            self.table.add_peer(o.ip, m.ip)?;
        }
        self.table.set_resolve(m.ip, true)?;
        members.push(m);
        Ok(())
    }

    /// Sandbox `id` leaves `net`; false if it was not on it. Pairs it
    /// still shares through another network stay.
    pub fn leave(&self, net: &str, id: &str) -> Result<bool, EgressError> {
        let mut nets = self.nets.write().unwrap_or_else(|p| p.into_inner());
        let Some(members) = nets.get(net) else { return Ok(false) };
        let Some(me) = members.iter().find(|x| x.id == id).cloned() else { return Ok(false) };
        for o in members.iter().filter(|o| o.id != id) {
            if !shares_other(&nets, net, me.ip, o.ip) {
                self.table.remove_peer(me.ip, o.ip)?;
                self.table.remove_peer(o.ip, me.ip)?;
            }
        }
        if let Some(members) = nets.get_mut(net) {
            members.retain(|x| x.id != id);
        }
        if !nets.values().any(|m| m.iter().any(|x| x.id == id)) {
            self.table.set_resolve(me.ip, false)?;
        }
        Ok(true)
    }

    /// Sandbox `id` leaves every network (it is being destroyed).
    pub fn leave_all(&self, id: &str) -> Vec<String> {
        let names: Vec<String> = self.nets.read().unwrap_or_else(|p| p.into_inner()).iter().filter(|(_, m)| m.iter().any(|x| x.id == id)).map(|(n, _)| n.clone()).collect();
        for n in &names {
            if let Err(e) = self.leave(n, id) {
                tracing::warn!(sandbox_id = %id, network = %n, error = %e, "leaving a network");
            }
        }
        names
    }

    /// Forgets an empty network; false if it has members.
    pub fn drop_network(&self, net: &str) -> bool {
        let mut nets = self.nets.write().unwrap_or_else(|p| p.into_inner());
        match nets.get(net) {
            Some(m) if !m.is_empty() => false,
            _ => {
                nets.remove(net);
                true
            }
        }
    }

    /// Whether `ip` is on any network (its DNS comes here).
    pub(super) fn is_member(&self, ip: Ipv4Addr) -> bool {
        self.nets.read().unwrap_or_else(|p| p.into_inner()).values().any(|m| m.iter().any(|x| x.ip == ip))
    }

    /// A fellow member's address for `name` (`<member>.<network>`, or a bare
    /// `<member>` on one of the asker's networks, those in name order).
    pub(super) fn peer_address(&self, from: Ipv4Addr, name: &str) -> Option<Ipv4Addr> {
        let nets = self.nets.read().unwrap_or_else(|p| p.into_inner());
        let mine = nets.iter().filter(|(_, m)| m.iter().any(|x| x.ip == from));
        let (label, scope) = match name.split_once('.') {
            Some((l, rest)) => (l, Some(rest)),
            None => (name, None),
        };
        for (n, members) in mine {
            if scope.is_some_and(|s| s != n) {
                continue;
            }
            if let Some(x) = members.iter().find(|x| x.name == label) {
                return Some(x.ip);
            }
        }
        None
    }

    /// Every pair of members that share a network, both ways, and every
    /// member's address (for installing the table).
    pub(super) fn peer_sets(nets: &Nets) -> (Vec<(Ipv4Addr, Ipv4Addr)>, Vec<Ipv4Addr>) {
        let mut pairs = Vec::new();
        let mut ips = Vec::new();
        for m in nets.values() {
            for a in m {
                ips.push(a.ip);
                for b in m.iter().filter(|b| b.ip != a.ip) {
                    pairs.push((a.ip, b.ip));
                }
            }
        }
        pairs.sort();
        pairs.dedup();
        ips.sort();
        ips.dedup();
        (pairs, ips)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: &str, name: &str, last: u8) -> Member {
        Member { id: id.into(), name: name.into(), ip: Ipv4Addr::new(10, 201, 0, last) }
    }

    #[test]
    fn pairs_cover_each_network_both_ways_once() {
        let mut nets = Nets::new();
        nets.insert("a".into(), vec![m("x", "web", 2), m("y", "api", 6)]);
        nets.insert("b".into(), vec![m("x", "web", 2), m("y", "api", 6), m("z", "db", 10)]);
        let (pairs, ips) = Egress::peer_sets(&nets);
        assert_eq!(ips.len(), 3);
        assert_eq!(pairs.len(), 6, "{pairs:?}");
        assert!(shares_other(&nets, "a", Ipv4Addr::new(10, 201, 0, 2), Ipv4Addr::new(10, 201, 0, 6)));
        assert!(!shares_other(&nets, "b", Ipv4Addr::new(10, 201, 0, 2), Ipv4Addr::new(10, 201, 0, 10)));
    }

    #[test]
    fn labels_are_dns_labels() {
        assert!(valid_label("web-1") && valid_label("a"));
        assert!(!valid_label("Web") && !valid_label("-a") && !valid_label("a.b") && !valid_label("") && !valid_label(&"a".repeat(64)));
    }
}
