//! The egress-policy firewall: one nftables table per server that sends
//! the traffic of *policed* sandboxes (those created with an egress
//! policy) to the server's own resolver and egress proxy, and drops
//! everything else they send.
//!
//! Membership is one element in one set (`policed`, the sandbox's address),
//! so a policed create costs one set insertion whatever the size of its
//! policy or the number of sandboxes: the policy itself lives in the
//! server, which decides per connection and per query. Sandboxes without a
//! policy never touch this table; the static iptables rules of `network`
//! keep governing them.
//!
//! The table is named after the server (`airlock_<tag>`), so two servers on
//! one host keep separate tables, ports and members. It is replaced in one
//! nftables transaction at start-up, so no moment exists in which a
//! policed sandbox's traffic leaves unpoliced.
//!
//! This module never decides policy and never reads a packet's payload.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use crate::network::{NetworkError, IF_PREFIX};

/// The packet mark on traffic between peers, which the host firewall's
/// forward chain accepts before it drops sandbox-to-sandbox traffic
/// (`network::install_host_rules`).
pub const PEER_MARK: u32 = 0x4142_0000;

/// A server's egress table: its name and the local ports its policed
/// sandboxes' DNS and TCP are redirected to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressTable {
    pub name: String,
    pub dns_port: u16,
    pub proxy_port: u16,
}

fn nft_script(script: &str) -> Result<(), NetworkError> {
    crate::network::run_script("nft", &["-f", "-"], script, "is nftables installed? Debian/Ubuntu: apt install nftables")
}

/// Whether the `nft` tool is there to run (egress policies need it).
pub fn available() -> bool {
    Command::new("nft").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

impl EgressTable {
    /// The table name for a server tag (letters, digits and `_` only).
    pub fn name_for(tag: &str) -> String {
        let clean: String = tag.chars().filter(|c| c.is_ascii_alphanumeric()).take(24).collect();
        format!("airlock_{clean}")
    }

    /// The whole table: policed addresses, sandboxes whose DNS the server
    /// answers (network members), and the sandbox pairs that may talk.
    fn rules_with(&self, members: &[Ipv4Addr], resolve: &[Ipv4Addr], peers: &[(Ipv4Addr, Ipv4Addr)]) -> String {
        let (t, dns, proxy) = (&self.name, self.dns_port, self.proxy_port);
        let pid = std::process::id();
        let elems = |v: Vec<String>| if v.is_empty() { String::new() } else { format!("elements = {{ {} }}", v.join(", ")) };
        let policed = elems(members.iter().map(|m| m.to_string()).collect());
        let resolved = elems(resolve.iter().map(|m| m.to_string()).collect());
        let pairs = elems(peers.iter().map(|(a, b)| format!("{a} . {b}")).collect());
        let ifs = format!("\"{IF_PREFIX}*\"");
        // `add` then `delete` makes the delete valid whether or not the
        // table existed; the whole script is one transaction. Traffic
        // between peers (sandboxes on one network) is neither redirected
        // nor dropped here, and is marked so that the host firewall's
        // sandbox-to-sandbox drop lets it through.
        format!(
            "add table ip {t}\n\
             delete table ip {t}\n\
             table ip {t} {{\n\
               comment \"airlock pid {pid}\"\n\
               set policed {{ type ipv4_addr; {policed} }}\n\
               set resolve {{ type ipv4_addr; {resolved} }}\n\
               set peers {{ type ipv4_addr . ipv4_addr; {pairs} }}\n\
               chain policed_pre {{\n\
                 type nat hook prerouting priority dstnat - 5; policy accept;\n\
                 iifname {ifs} ip saddr . ip daddr @peers accept\n\
                 iifname {ifs} ip saddr @policed meta l4proto {{ tcp, udp }} th dport 53 redirect to :{dns}\n\
                 iifname {ifs} ip saddr @resolve meta l4proto {{ tcp, udp }} th dport 53 redirect to :{dns}\n\
                 iifname {ifs} ip saddr @policed meta l4proto tcp redirect to :{proxy}\n\
               }}\n\
               chain policed_forward {{\n\
                 type filter hook forward priority filter - 5; policy accept;\n\
                 iifname {ifs} oifname {ifs} ip saddr . ip daddr @peers meta mark set {PEER_MARK:#x} accept\n\
                 iifname {ifs} ip saddr @policed drop\n\
               }}\n\
             }}\n"
        )
    }

    /// Replaces the table with these policed addresses, DNS-answered
    /// addresses and peer pairs, in one transaction.
    pub fn install_all(&self, members: &[Ipv4Addr], resolve: &[Ipv4Addr], peers: &[(Ipv4Addr, Ipv4Addr)]) -> Result<(), NetworkError> {
        nft_script(&self.rules_with(members, resolve, peers))
    }

    fn element(&self, set: &str, key: &[u8], add: bool) -> Result<(), NetworkError> {
        let mut nl = crate::netlink::Netlink::open_netfilter()?;
        match nl.set_element_key(&self.name, set, key, add) {
            Err(e) if !add && e.errno() == Some(libc::ENOENT) => Ok(()),
            r => Ok(r?),
        }
    }

    /// Lets `a` open connections to `b` (one direction; idempotent).
    pub fn add_peer(&self, a: Ipv4Addr, b: Ipv4Addr) -> Result<(), NetworkError> {
        self.element("peers", &[a.octets(), b.octets()].concat(), true)
    }

    pub fn remove_peer(&self, a: Ipv4Addr, b: Ipv4Addr) -> Result<(), NetworkError> {
        self.element("peers", &[a.octets(), b.octets()].concat(), false)
    }

    /// Sends `ip`'s DNS to the server's resolver (or, `false`, not).
    pub fn set_resolve(&self, ip: Ipv4Addr, on: bool) -> Result<(), NetworkError> {
        self.element("resolve", &ip.octets(), on)
    }

    /// Polices a sandbox's address (idempotent). One netlink message, no
    /// process: this is on the create path.
    pub fn add(&self, ip: Ipv4Addr) -> Result<(), NetworkError> {
        self.element("policed", &ip.octets(), true)
    }

    /// Stops policing an address; absent is fine.
    pub fn remove(&self, ip: Ipv4Addr) -> Result<(), NetworkError> {
        self.element("policed", &ip.octets(), false)
    }

    /// The addresses in the set now (for tests and diagnostics).
    pub fn members(&self) -> Vec<Ipv4Addr> {
        let Ok(out) = Command::new("nft").args(["list", "set", "ip", &self.name, "policed"]).stderr(Stdio::null()).output() else { return Vec::new() };
        let text = String::from_utf8_lossy(&out.stdout);
        let Some(elems) = text.split("elements = {").nth(1).and_then(|r| r.split('}').next()) else { return Vec::new() };
        elems.split(',').filter_map(|e| e.trim().parse().ok()).collect()
    }

    /// Removes the table; absent is fine.
    pub fn uninstall(&self) -> Result<(), NetworkError> {
        remove_table(&self.name)
    }
}

/// Removes an egress table by name; absent is fine.
pub fn remove_table(name: &str) -> Result<(), NetworkError> {
    nft_script(&format!("add table ip {name}\ndelete table ip {name}\n"))
}

/// Removes the egress tables of servers that are gone and left no policed
/// sandbox behind (a server killed with SIGKILL leaves its table): the
/// owner's pid, kept in the table's comment, no longer runs and the
/// `policed` set is empty. A table whose set still holds addresses stays:
/// those sandboxes' traffic must keep going nowhere until their server
/// returns. Returns the tables removed.
pub fn prune_stale(own: &str) -> Vec<String> {
    let mut removed = Vec::new();
    for t in tables().into_iter().filter(|t| t != own) {
        let Ok(out) = Command::new("nft").args(["list", "table", "ip", &t]).stderr(Stdio::null()).output() else { continue };
        let text = String::from_utf8_lossy(&out.stdout);
        let owner_alive = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("comment \"airlock pid ").and_then(|r| r.trim_end_matches('"').parse::<u32>().ok()))
            .is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
        let policed_empty = text.split("set policed {").nth(1).and_then(|r| r.split('}').next()).is_some_and(|body| !body.contains("elements"));
        if !owner_alive && policed_empty && remove_table(&t).is_ok() {
            removed.push(t);
        }
    }
    removed
}

/// The names of every Airlock egress table on the host (for cleanup).
pub fn tables() -> Vec<String> {
    let Ok(out) = Command::new("nft").args(["list", "tables"]).stderr(Stdio::null()).output() else { return Vec::new() };
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.strip_prefix("table ip ")).filter(|n| n.starts_with("airlock_")).map(str::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_safe_for_nft() {
        assert_eq!(EgressTable::name_for("ab-12/..;x"), "airlock_ab12x");
    }

    /// The netlink path against the kernel: a real table, an element
    /// added and removed without `nft`, as `nft` itself then lists them.
    #[test]
    fn set_elements_go_in_and_out_over_netlink() {
        // SAFETY: geteuid takes nothing and cannot fail.
        let euid = unsafe { libc::geteuid() };
        if !available() || euid != 0 {
            eprintln!("SKIPPED: needs root and nft");
            return;
        }
        let t = EgressTable { name: format!("airlock_unit{}", std::process::id()), dns_port: 1053, proxy_port: 1054 };
        t.install_all(&[Ipv4Addr::new(10, 201, 9, 2)], &[], &[]).expect("install");
        let ip = Ipv4Addr::new(10, 201, 9, 6);
        t.add(ip).expect("add");
        t.add(ip).expect("adding twice is fine");
        let m = t.members();
        assert!(m.contains(&ip) && m.contains(&Ipv4Addr::new(10, 201, 9, 2)), "{m:?}");
        t.remove(ip).expect("remove");
        t.remove(ip).expect("removing what is gone is fine");
        assert_eq!(t.members(), vec![Ipv4Addr::new(10, 201, 9, 2)]);
        let (a, b) = (Ipv4Addr::new(10, 201, 9, 10), Ipv4Addr::new(10, 201, 9, 14));
        t.add_peer(a, b).expect("peer");
        t.set_resolve(a, true).expect("resolve");
        let listed = String::from_utf8_lossy(&Command::new("nft").args(["list", "table", "ip", &t.name]).output().expect("nft").stdout).into_owned();
        assert!(listed.contains("10.201.9.10 . 10.201.9.14") && listed.contains("resolve"), "{listed}");
        t.remove_peer(a, b).expect("unpeer");
        t.remove_peer(a, b).expect("unpeering twice is fine");
        t.set_resolve(a, false).expect("unresolve");
        let listed = String::from_utf8_lossy(&Command::new("nft").args(["list", "table", "ip", &t.name]).output().expect("nft").stdout).into_owned();
        assert!(!listed.contains("10.201.9.10"), "{listed}");
        let missing = EgressTable { name: "airlock_nosuchtable".into(), dns_port: 1, proxy_port: 2 };
        assert!(missing.add(ip).is_err(), "a missing table is an error, not a silent no-op");
        t.uninstall().expect("uninstall");
        // A table of a server that is gone (a pid above the kernel's limit),
        // with nobody policed, is pruned;
        // one that still polices someone is not.
        let gone = EgressTable { name: format!("airlock_gone{}", std::process::id()), dns_port: 1, proxy_port: 2 };
        let busy = EgressTable { name: format!("airlock_busy{}", std::process::id()), dns_port: 1, proxy_port: 2 };
        for (tbl, members) in [(&gone, vec![]), (&busy, vec![Ipv4Addr::new(10, 201, 9, 30)])] {
            let script = tbl.rules_with(&members, &[], &[]).replace(&format!("airlock pid {}", std::process::id()), "airlock pid 4194305");
            nft_script(&script).expect("install a dead server's table");
        }
        let pruned = prune_stale("airlock_none");
        assert!(pruned.contains(&gone.name) && !pruned.contains(&busy.name), "{pruned:?}");
        assert!(tables().contains(&busy.name));
        busy.uninstall().expect("uninstall");
    }

    #[test]
    fn rules_mention_ports_and_members() {
        let t = EgressTable { name: "airlock_t".into(), dns_port: 5300, proxy_port: 5400 };
        let r = t.rules_with(&[Ipv4Addr::new(10, 201, 0, 2)], &[], &[]);
        assert!(r.contains("redirect to :5300") && r.contains("redirect to :5400") && r.contains("elements = { 10.201.0.2 }"), "{r}");
        assert!(!t.rules_with(&[], &[], &[]).contains("elements"));
    }
}
