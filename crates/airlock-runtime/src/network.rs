//! Sandbox networking on the host side: address assignment (a /30 per
//! sandbox out of one private /16), and the host firewall that lets
//! sandboxes reach the internet through NAT but never the host itself,
//! other sandboxes, or private and link-local networks (cloud metadata
//! services live there).
//!
//! The firewall is a few static rules matching every sandbox interface by
//! name prefix, installed once per backend start, so creating a sandbox
//! costs no `iptables` call. Sandboxes without internet access get no veth
//! at all: only loopback exists in their network namespace.

use std::net::Ipv4Addr;
use std::process::Command;

use crate::state::NetAssign;

/// Host-side interface names: `alk` + slot number.
pub const IF_PREFIX: &str = "alk";
/// Sandbox subnets are carved from 10.201.0.0/16.
const NET_BASE: [u8; 2] = [10, 201];
const CHAIN_IN: &str = "AIRLOCK-INPUT";
const CHAIN_FWD: &str = "AIRLOCK-FORWARD";

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("netlink: {0}")]
    Netlink(#[from] crate::netlink::NetlinkError),
    #[error("running {cmd}: {message}")]
    Command { cmd: String, message: String },
    #[error("enabling IPv4 forwarding")]
    Forwarding(#[source] std::io::Error),
}

/// Addresses for slot `n` (0..16384): host .1, sandbox .2 of a /30.
pub fn assign(slot: u32) -> NetAssign {
    let off = slot * 4;
    let (hi, lo) = ((off >> 8) as u8, (off & 0xff) as u8);
    NetAssign {
        host_if: format!("{IF_PREFIX}{slot}"),
        host_ip: Ipv4Addr::new(NET_BASE[0], NET_BASE[1], hi, lo + 1),
        sandbox_ip: Ipv4Addr::new(NET_BASE[0], NET_BASE[1], hi, lo + 2),
        prefix: 30,
    }
}

pub fn subnet() -> String {
    format!("{}.{}.0.0/16", NET_BASE[0], NET_BASE[1])
}

fn iptables(args: &[&str]) -> Result<(), NetworkError> {
    let out = Command::new("iptables").args(["-w", "5"]).args(args).output().map_err(|e| NetworkError::Command {
        cmd: format!("iptables {}", args.join(" ")),
        message: format!("{e} (is iptables installed?)"),
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetworkError::Command {
            cmd: format!("iptables {}", args.join(" ")),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

fn ensure_rule(table: &str, chain: &str, rule: &[&str]) -> Result<(), NetworkError> {
    let mut check = vec!["-t", table, "-C", chain];
    check.extend_from_slice(rule);
    if iptables(&check).is_ok() {
        return Ok(());
    }
    let mut add = vec!["-t", table, "-A", chain];
    add.extend_from_slice(rule);
    iptables(&add)
}

fn ensure_first(table: &str, chain: &str, rule: &[&str]) -> Result<(), NetworkError> {
    let mut check = vec!["-t", table, "-C", chain];
    check.extend_from_slice(rule);
    if iptables(&check).is_ok() {
        return Ok(());
    }
    let mut ins = vec!["-t", table, "-I", chain, "1"];
    ins.extend_from_slice(rule);
    iptables(&ins)
}

/// Nameservers sandboxes may query: the host's, unless they are on the
/// host's loopback (which sandboxes cannot reach), then public resolvers.
pub fn nameservers() -> Vec<Ipv4Addr> {
    let mut v: Vec<Ipv4Addr> = std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<Ipv4Addr>().ok())
        .filter(|a| !a.is_loopback())
        .collect();
    if v.is_empty() {
        v = vec![Ipv4Addr::new(1, 1, 1, 1), Ipv4Addr::new(8, 8, 8, 8)];
    }
    v
}

/// Installs the host-wide rules (idempotent):
/// - INPUT from any sandbox interface is dropped: the host's own addresses,
///   loopback included, are unreachable from inside, whatever the port;
/// - FORWARD from a sandbox interface: DNS to the chosen nameservers is
///   allowed, then anything to another sandbox, private, link-local, CGNAT
///   or multicast ranges is dropped, then the rest is allowed; replies are
///   allowed back;
/// - POSTROUTING masquerades the sandbox subnet towards anything that is
///   not a sandbox interface.
pub fn install_host_rules() -> Result<(), NetworkError> {
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(NetworkError::Forwarding)?;
    let wildcard = format!("{IF_PREFIX}+");
    let sub = subnet();
    for chain in [CHAIN_IN, CHAIN_FWD] {
        // -N fails when the chain exists; that is fine.
        let _ = iptables(&["-t", "filter", "-N", chain]);
        iptables(&["-t", "filter", "-F", chain])?;
    }
    ensure_first("filter", "INPUT", &["-i", &wildcard, "-j", CHAIN_IN])?;
    ensure_first("filter", "FORWARD", &["-i", &wildcard, "-j", CHAIN_FWD])?;
    ensure_first("filter", "FORWARD", &["-o", &wildcard, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"])?;
    iptables(&["-t", "filter", "-A", CHAIN_IN, "-j", "DROP"])?;
    for ns in nameservers() {
        let ns = ns.to_string();
        for proto in ["udp", "tcp"] {
            iptables(&["-t", "filter", "-A", CHAIN_FWD, "-d", &ns, "-p", proto, "--dport", "53", "-j", "ACCEPT"])?;
        }
    }
    for blocked in [
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "169.254.0.0/16",
        "127.0.0.0/8",
        "0.0.0.0/8",
        "224.0.0.0/4",
        "240.0.0.0/4",
    ] {
        iptables(&["-t", "filter", "-A", CHAIN_FWD, "-d", blocked, "-j", "DROP"])?;
    }
    iptables(&["-t", "filter", "-A", CHAIN_FWD, "-o", &wildcard, "-j", "DROP"])?;
    iptables(&["-t", "filter", "-A", CHAIN_FWD, "-j", "ACCEPT"])?;
    ensure_rule("nat", "POSTROUTING", &["-s", &sub, "!", "-o", &wildcard, "-j", "MASQUERADE"])?;
    Ok(())
}

/// Creates the sandbox's veth pair from the host side: the host end gets
/// the .1 address, the peer (`eth0`) appears in the netns of `pid`.
pub fn create_veth(net: &NetAssign, pid: u32) -> Result<(), NetworkError> {
    let mut nl = crate::netlink::Netlink::open()?;
    // A stale interface from a crashed sandbox with the same slot goes first.
    let _ = nl.delete_link(&net.host_if);
    nl.create_veth(&net.host_if, "eth0", pid)?;
    nl.add_ipv4(&net.host_if, net.host_ip, net.prefix)?;
    nl.set_up(&net.host_if)?;
    Ok(())
}

/// Configures the inside of the sandbox's netns (called from within it).
pub fn configure_inside(net: Option<&NetAssign>) -> Result<(), NetworkError> {
    let mut nl = crate::netlink::Netlink::open()?;
    nl.set_up("lo")?;
    if let Some(net) = net {
        nl.add_ipv4("eth0", net.sandbox_ip, net.prefix)?;
        nl.set_up("eth0")?;
        nl.add_default_route(net.host_ip)?;
    }
    Ok(())
}

pub fn delete_veth(host_if: &str) {
    if let Ok(mut nl) = crate::netlink::Netlink::open() {
        let _ = nl.delete_link(host_if);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_get_disjoint_subnets() {
        let a = assign(0);
        assert_eq!((a.host_ip, a.sandbox_ip), (Ipv4Addr::new(10, 201, 0, 1), Ipv4Addr::new(10, 201, 0, 2)));
        let b = assign(64);
        assert_eq!((b.host_ip, b.sandbox_ip), (Ipv4Addr::new(10, 201, 1, 1), Ipv4Addr::new(10, 201, 1, 2)));
        assert_eq!(assign(16383).sandbox_ip, Ipv4Addr::new(10, 201, 255, 254));
        assert!(b.host_if.len() <= 15);
    }
}
