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
    let out = Command::new("iptables")
        .args(["-w", "5"])
        .args(args)
        .output()
        .map_err(|e| NetworkError::Command { cmd: format!("iptables {}", args.join(" ")), message: format!("{e} (is iptables installed?)") })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetworkError::Command { cmd: format!("iptables {}", args.join(" ")), message: String::from_utf8_lossy(&out.stderr).trim().to_string() })
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

/// Nameservers sandboxes may query: the host's own, unless they are on
/// its loopback (which sandboxes cannot reach); then the upstream servers
/// of a local systemd-resolved. Never a public resolver the operator did
/// not choose: with none found, sandboxes get no DNS and a warning says so.
pub fn nameservers() -> Vec<Ipv4Addr> {
    let read = |path: &str| -> Vec<Ipv4Addr> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().strip_prefix("nameserver"))
            .filter_map(|a| a.trim().parse::<Ipv4Addr>().ok())
            .filter(|a| !a.is_loopback())
            .collect()
    };
    let v = read("/etc/resolv.conf");
    let v = if v.is_empty() { read("/run/systemd/resolve/resolv.conf") } else { v };
    if v.is_empty() {
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| tracing::warn!("no nameserver sandboxes can reach (the host's are on loopback): sandboxes have no DNS"));
    }
    v
}

/// The connected subnets the installed rules cover.
static INSTALLED_FOR: std::sync::Mutex<Option<Vec<String>>> = std::sync::Mutex::new(None);

/// Re-installs the rules when the host's directly connected networks have
/// changed since they were installed (an interface came up); cheap otherwise.
pub fn refresh_host_rules() -> Result<(), NetworkError> {
    let now = connected_subnets();
    let stale = INSTALLED_FOR.lock().unwrap_or_else(|p| p.into_inner()).as_ref() != Some(&now);
    if stale {
        install_host_rules()?;
    }
    Ok(())
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
    let subnets = connected_subnets();
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(NetworkError::Forwarding)?;
    let wildcard = format!("{IF_PREFIX}+");
    let sub = subnet();
    // Our chains are replaced in one iptables-restore transaction: flushing
    // and refilling them rule by rule would leave a moment with no rules at
    // all while another process (a second server, a test) re-installs them.
    let mut script = String::from("*filter\n");
    script.push_str(&format!(":{CHAIN_IN} - [0:0]\n:{CHAIN_FWD} - [0:0]\n"));
    // Connections an egress table redirected to the server's resolver or
    // egress proxy (`nft`) are the only host-bound traffic let in: nothing
    // else NATs packets coming from a sandbox interface to the host.
    script.push_str(&format!("-A {CHAIN_IN} -m conntrack --ctstate DNAT -j ACCEPT\n-A {CHAIN_IN} -j DROP\n"));
    for ns in nameservers() {
        for proto in ["udp", "tcp"] {
            script.push_str(&format!("-A {CHAIN_FWD} -d {ns}/32 -p {proto} -m {proto} --dport 53 -j ACCEPT\n"));
        }
    }
    // Packets from a sandbox must carry a sandbox address: root inside has
    // CAP_NET_RAW and could otherwise forge sources (rp_filter on each veth
    // narrows this to the sandbox's own address).
    script.push_str(&format!("-A {CHAIN_FWD} ! -s {sub} -j DROP\n"));
    // Sandboxes on one network (the egress table marks their traffic) reach
    // each other; any other sandbox-to-sandbox packet is dropped below.
    script.push_str(&format!("-A {CHAIN_FWD} -m mark --mark {:#x}/0xffff0000 -j ACCEPT\n", crate::nft::PEER_MARK));
    // Networks the host is directly attached to (its LAN, whatever its
    // range) are the host's business, never the sandboxes'.
    for net in &subnets {
        script.push_str(&format!("-A {CHAIN_FWD} -d {net} -j DROP\n"));
    }
    // Private, shared, link-local, loopback and multicast space. Documentation
    // and benchmarking ranges are left alone: some networks (transparent
    // proxies, labs) use them for real destinations, and where they are a
    // neighbour of the host the connected-subnet rule above covers them.
    for blocked in ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16", "127.0.0.0/8", "0.0.0.0/8", "224.0.0.0/4", "240.0.0.0/4"] {
        script.push_str(&format!("-A {CHAIN_FWD} -d {blocked} -j DROP\n"));
    }
    script.push_str(&format!("-A {CHAIN_FWD} -o {wildcard} -j DROP\n-A {CHAIN_FWD} -j ACCEPT\nCOMMIT\n"));
    restore(&script)?;
    ensure_first("filter", "INPUT", &["-i", &wildcard, "-j", CHAIN_IN])?;
    ensure_first("filter", "FORWARD", &["-i", &wildcard, "-j", CHAIN_FWD])?;
    ensure_first("filter", "FORWARD", &["-o", &wildcard, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"])?;
    ensure_rule("nat", "POSTROUTING", &["-s", &sub, "!", "-o", &wildcard, "-j", "MASQUERADE"])?;
    *INSTALLED_FOR.lock().unwrap_or_else(|p| p.into_inner()) = Some(subnets);
    Ok(())
}

/// Host interfaces of sandboxes (`alk<N>`) that exist now.
pub fn sandbox_interfaces() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/sys/class/net")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.strip_prefix(IF_PREFIX).is_some_and(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit())))
        .collect();
    v.sort();
    v
}

/// Removes what `install_host_rules` installed: the jumps into Airlock's
/// chains, the chains, and the NAT rule. The caller makes sure no sandbox
/// needs them (`sandbox_interfaces` is empty). Returns what was removed;
/// missing pieces are not errors (nothing was installed, or half).
pub fn remove_host_rules() -> Result<Vec<String>, NetworkError> {
    let wildcard = format!("{IF_PREFIX}+");
    let sub = subnet();
    let mut removed = Vec::new();
    let rules: [(&str, &str, Vec<&str>); 4] = [
        ("filter", "INPUT", vec!["-i", &wildcard, "-j", CHAIN_IN]),
        ("filter", "FORWARD", vec!["-i", &wildcard, "-j", CHAIN_FWD]),
        ("filter", "FORWARD", vec!["-o", &wildcard, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"]),
        ("nat", "POSTROUTING", vec!["-s", &sub, "!", "-o", &wildcard, "-j", "MASQUERADE"]),
    ];
    for (table, chain, rule) in &rules {
        // A rule installed twice (two servers racing) goes twice.
        for _ in 0..16 {
            let mut del = vec!["-t", table, "-D", chain];
            del.extend_from_slice(rule);
            if iptables(&del).is_err() {
                break;
            }
            removed.push(format!("{table} {chain}: {}", rule.join(" ")));
        }
    }
    for chain in [CHAIN_IN, CHAIN_FWD] {
        if iptables(&["-t", "filter", "-F", chain]).is_ok() && iptables(&["-t", "filter", "-X", chain]).is_ok() {
            removed.push(format!("chain {chain}"));
        }
    }
    *INSTALLED_FOR.lock().unwrap_or_else(|p| p.into_inner()) = None;
    Ok(removed)
}

fn restore(script: &str) -> Result<(), NetworkError> {
    run_script("iptables-restore", &["-w", "5", "--noflush"], script, "is iptables installed?")
}

/// Runs a firewall tool that reads its rules on stdin (`iptables-restore`,
/// `nft -f -`), as one transaction; its stderr is the error.
pub(crate) fn run_script(tool: &str, args: &[&str], script: &str, missing_hint: &str) -> Result<(), NetworkError> {
    use std::io::Write;
    let err = |m: String| NetworkError::Command { cmd: format!("{tool} {}", args.join(" ")), message: m };
    let mut child = Command::new(tool)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| err(format!("{e} ({missing_hint})")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).map_err(|e| err(e.to_string()))?;
    }
    let out = child.wait_with_output().map_err(|e| err(e.to_string()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(err(String::from_utf8_lossy(&out.stderr).trim().to_string()))
    }
}

/// IPv4 subnets with a direct (gateway-less) route on the host, other than
/// the sandboxes' own: `/proc/net/route` lists them with gateway 0.
pub fn connected_subnets() -> Vec<String> {
    let text = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    let mut v = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 || f[0].starts_with(IF_PREFIX) || f[0] == "lo" {
            continue;
        }
        let hex = |s: &str| u32::from_str_radix(s, 16).ok().map(|n| Ipv4Addr::from(u32::from_be(n)));
        let (Some(dest), Some(gw), Some(mask)) = (hex(f[1]), hex(f[2]), hex(f[7])) else { continue };
        if gw != Ipv4Addr::UNSPECIFIED || dest == Ipv4Addr::UNSPECIFIED {
            continue;
        }
        let prefix = u32::from(mask).count_ones();
        v.push(format!("{dest}/{prefix}"));
    }
    v.sort();
    v.dedup();
    v
}

/// Creates the sandbox's veth pair from the host side: the host end gets
/// the .1 address, the peer (`eth0`) appears in the netns of `pid`.
pub fn create_veth(net: &NetAssign, pid: u32) -> Result<(), NetworkError> {
    let mut nl = crate::netlink::Netlink::open()?;
    // A stale interface from a crashed sandbox with the same slot goes first.
    let _ = nl.delete_link(&net.host_if);
    nl.create_veth(&net.host_if, "eth0", pid)?;
    nl.add_ipv4(&net.host_if, net.host_ip, net.prefix)?;
    // Strict reverse-path filtering: the host drops packets whose source is
    // not the sandbox's own address.
    let _ = std::fs::write(format!("/proc/sys/net/ipv4/conf/{}/rp_filter", net.host_if), "1");
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
