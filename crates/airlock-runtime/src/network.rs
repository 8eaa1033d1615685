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
/// `/proc/net/route` lists every sandbox's route too, so it is read only
/// when the kernel has announced a change to an address or route outside
/// the sandboxes' range (see `RouteWatch`), not on every create.
pub fn refresh_host_rules() -> Result<(), NetworkError> {
    // One refresh at a time: a create must not pass on "no change" while
    // another is still installing the rules for a change it drained.
    static REFRESH: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = REFRESH.lock().unwrap_or_else(|p| p.into_inner());
    let installed = INSTALLED_FOR.lock().unwrap_or_else(|p| p.into_inner()).is_some();
    if installed && !ROUTE_WATCH.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(RouteWatch::open).changed() {
        return Ok(());
    }
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
    // Not installed until this succeeds: a failure below leaves the next
    // refresh to read the routes and try again (failing closed), not to
    // trust a watch that has nothing to report.
    *INSTALLED_FOR.lock().unwrap_or_else(|p| p.into_inner()) = None;
    // Watching from before the read: a change in between is seen later.
    *ROUTE_WATCH.lock().unwrap_or_else(|p| p.into_inner()) = Some(RouteWatch::open());
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

static ROUTE_WATCH: std::sync::Mutex<Option<RouteWatch>> = std::sync::Mutex::new(None);

/// A rtnetlink socket subscribed to IPv4 address and route changes, read
/// without blocking: it says whether anything but the sandboxes' own
/// addresses and routes changed since it was last asked. Without the
/// socket, or when the kernel dropped messages, everything counts as a
/// change (the caller reads the routes, as it would without it).
struct RouteWatch(Option<std::os::fd::OwnedFd>);

impl RouteWatch {
    const RTMGRP_IPV4_IFADDR: u32 = 0x10;
    const RTMGRP_IPV4_ROUTE: u32 = 0x40;

    fn open() -> Self {
        use std::os::fd::FromRawFd;
        // SAFETY: socket/bind with a zeroed, then filled sockaddr_nl; the fd
        // is owned by the OwnedFd from here on.
        unsafe {
            let fd = libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, libc::NETLINK_ROUTE);
            if fd < 0 {
                return Self(None);
            }
            let fd = std::os::fd::OwnedFd::from_raw_fd(fd);
            let mut sa: libc::sockaddr_nl = std::mem::zeroed();
            sa.nl_family = libc::AF_NETLINK as u16;
            sa.nl_groups = Self::RTMGRP_IPV4_IFADDR | Self::RTMGRP_IPV4_ROUTE;
            if libc::bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &sa as *const libc::sockaddr_nl as *const libc::sockaddr, std::mem::size_of::<libc::sockaddr_nl>() as u32) != 0 {
                return Self(None);
            }
            Self(Some(fd))
        }
    }

    /// Drains what the kernel sent; true if any of it concerns more than
    /// the sandboxes' range (or could not be read).
    fn changed(&mut self) -> bool {
        let Some(fd) = &self.0 else { return true };
        let mut changed = false;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: recv into a buffer we own, of its length.
            let n = unsafe { libc::recv(std::os::fd::AsRawFd::as_raw_fd(fd), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => return changed,
                    Some(libc::EINTR) => continue,
                    // ENOBUFS: messages were lost; assume the worst.
                    _ => changed = true,
                }
                if e.raw_os_error() != Some(libc::ENOBUFS) {
                    return true;
                }
                continue;
            }
            changed |= Self::outside_sandboxes(&buf[..n as usize]);
        }
    }

    /// Whether a datagram of address/route messages touches anything but
    /// 10.201.0.0/16.
    fn outside_sandboxes(mut b: &[u8]) -> bool {
        let ours = |a: &[u8]| a.len() == 4 && a[0] == NET_BASE[0] && a[1] == NET_BASE[1];
        while b.len() >= 16 {
            let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
            let kind = u16::from_ne_bytes([b[4], b[5]]);
            if len < 16 || len > b.len() {
                return true;
            }
            let body = &b[16..len];
            // ifaddrmsg is 8 bytes, rtmsg 12; then attributes.
            let (head, addr_types): (usize, &[u16]) = match kind {
                libc::RTM_NEWADDR | libc::RTM_DELADDR => (8, &[1, 2]),
                libc::RTM_NEWROUTE | libc::RTM_DELROUTE => (12, &[1]),
                _ => (usize::MAX, &[]),
            };
            if head != usize::MAX {
                let mut attrs = body.get(head..).unwrap_or(&[]);
                let (mut seen, mut all_ours) = (false, true);
                while attrs.len() >= 4 {
                    let alen = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
                    let atype = u16::from_ne_bytes([attrs[2], attrs[3]]);
                    if alen < 4 || alen > attrs.len() {
                        break;
                    }
                    if addr_types.contains(&atype) {
                        seen = true;
                        all_ours &= ours(&attrs[4..alen]);
                    }
                    attrs = &attrs[((alen + 3) & !3).min(attrs.len())..];
                }
                // A route or address wholly in the sandboxes' range is a
                // sandbox's (created or removed with its interface);
                // anything else, a default route included (no
                // destination), is the host's.
                if !(seen && all_ours) {
                    return true;
                }
            }
            b = &b[((len + 3) & !3).min(b.len())..];
        }
        false
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
    // No IPv6 on the host end either, before it comes up: the sandbox
    // speaks none, and each IPv6-enabled interface adds link-local and
    // multicast routes to one shared table node, a cost per create that
    // grows with the sandboxes alive.
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", net.host_if), "1");
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

/// A killed sandbox's host interface and slot, handed to `retire`.
struct Retired {
    index: u32,
    name: String,
    slot: std::path::PathBuf,
    owner: String,
    since: std::time::Instant,
}

static RETIRE: std::sync::Mutex<Option<std::sync::mpsc::Sender<Retired>>> = std::sync::Mutex::new(None);
/// Retirements not yet done, for `settle`.
static RETIRING: crate::state::Pending = crate::state::Pending::new();

/// Waits (until `deadline`) until every retired interface is gone and its
/// slot free (see `crate::namespace::settle`).
pub(crate) fn settle(deadline: std::time::Instant) {
    RETIRING.wait(deadline);
}

/// How long the kernel gets to remove a dead sandbox's veth with its
/// network namespace before it is deleted by hand.
const RETIRE_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Frees a killed sandbox's slot once its host interface is gone, off the
/// caller's path. The veth dies with the sandbox's network namespace, but
/// the kernel tears namespaces down in the background; deleting it by
/// hand meanwhile waits on that teardown (60 ms seen per kill, most of a
/// DELETE). So a thread watches for it to go, deletes it only if it
/// lingers past `RETIRE_GRACE` (a namespace something else holds), and
/// only then frees the slot. A creator that finds the slot stale sooner
/// (its owner's directory gone from `sandboxes/` and `trash/`) deletes the
/// old interface by name before making its own (`create_veth`), so the
/// slot's addresses are never on two interfaces. The interface is tracked by
/// index, never by name. `slot` is removed only while `owner` still owns
/// it. A server stopped meanwhile leaves the slot file, which the next
/// creator or `airlock cleanup` finds stale.
pub fn retire(host_if: &str, slot: std::path::PathBuf, owner: String) {
    let Ok(name) = std::ffi::CString::new(host_if) else { return };
    // SAFETY: if_nametoindex with a NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    let item = Retired { index, name: host_if.to_string(), slot, owner, since: std::time::Instant::now() };
    if index == 0 {
        free_slot(&item);
        return;
    }
    RETIRING.add();
    let mut tx = RETIRE.lock().unwrap_or_else(|p| p.into_inner());
    let sender = tx.get_or_insert_with(|| {
        let (s, r) = std::sync::mpsc::channel();
        let _ = std::thread::Builder::new().name("airlock-retire".into()).spawn(move || retire_loop(r));
        s
    });
    if let Err(std::sync::mpsc::SendError(item)) = sender.send(item) {
        // The thread is gone (it cannot be, short of a panic): do it here.
        *tx = None;
        drop(tx);
        delete_index(item.index);
        free_slot(&item);
        RETIRING.finish();
    }
}

fn free_slot(r: &Retired) {
    if std::fs::read_to_string(&r.slot).map(|s| s == r.owner).unwrap_or(false) {
        let _ = std::fs::remove_file(&r.slot);
    }
}

fn delete_index(index: u32) {
    if let Ok(mut nl) = crate::netlink::Netlink::open() {
        let _ = nl.delete_link_index(index);
    }
}

fn retire_loop(rx: std::sync::mpsc::Receiver<Retired>) {
    let mut pending: Vec<Retired> = Vec::new();
    loop {
        let next = if pending.is_empty() { rx.recv().ok() } else { rx.recv_timeout(std::time::Duration::from_millis(20)).ok() };
        if next.is_none() && pending.is_empty() {
            return;
        }
        pending.extend(next);
        while let Ok(r) = rx.try_recv() {
            pending.push(r);
        }
        pending.retain(|r| {
            let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
            // SAFETY: if_indextoname writes at most IF_NAMESIZE bytes.
            // Listed, or unlisted but still being unregistered (its sysfs
            // entry, and its addresses, go after an RCU grace period).
            let present = !unsafe { libc::if_indextoname(r.index, buf.as_mut_ptr()) }.is_null()
                || std::fs::read_to_string(format!("/sys/class/net/{}/ifindex", r.name)).is_ok_and(|i| i.trim() == r.index.to_string());
            if present && r.since.elapsed() < RETIRE_GRACE {
                return true;
            }
            if present {
                delete_index(r.index);
            }
            free_slot(r);
            RETIRING.finish();
            false
        });
    }
}

pub fn delete_veth(host_if: &str) {
    if let Ok(mut nl) = crate::netlink::Netlink::open() {
        let _ = nl.delete_link(host_if);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One rtnetlink message: header, fixed part, attributes.
    fn nl_msg(kind: u16, fixed: usize, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = vec![0u8; fixed];
        for (t, v) in attrs {
            let len = 4 + v.len();
            body.extend_from_slice(&(len as u16).to_ne_bytes());
            body.extend_from_slice(&t.to_ne_bytes());
            body.extend_from_slice(v);
            body.resize(body.len().next_multiple_of(4), 0);
        }
        let mut m = ((16 + body.len()) as u32).to_ne_bytes().to_vec();
        m.extend_from_slice(&kind.to_ne_bytes());
        m.resize(16, 0);
        m.extend_from_slice(&body);
        m
    }

    #[test]
    fn route_watch_ignores_the_sandboxes_own_changes_only() {
        let sandbox_route = nl_msg(libc::RTM_NEWROUTE, 12, &[(1, &[10, 201, 3, 4]), (4, &7u32.to_ne_bytes())]);
        let sandbox_addr = nl_msg(libc::RTM_NEWADDR, 8, &[(1, &[10, 201, 3, 5]), (2, &[10, 201, 3, 5]), (3, b"alk1\0")]);
        let gone = nl_msg(libc::RTM_DELROUTE, 12, &[(1, &[10, 201, 3, 4])]);
        let mut all = [sandbox_route.clone(), sandbox_addr.clone(), gone].concat();
        assert!(!RouteWatch::outside_sandboxes(&all));
        // A host LAN, a default route (no destination), a host address.
        let lan = nl_msg(libc::RTM_NEWROUTE, 12, &[(1, &[203, 0, 113, 0])]);
        let default = nl_msg(libc::RTM_NEWROUTE, 12, &[(4, &2u32.to_ne_bytes())]);
        let host_addr = nl_msg(libc::RTM_NEWADDR, 8, &[(1, &[198, 51, 100, 7]), (3, b"eth1\0")]);
        for m in [&lan, &default, &host_addr] {
            assert!(RouteWatch::outside_sandboxes(m));
            let mut with = all.clone();
            with.extend_from_slice(m);
            assert!(RouteWatch::outside_sandboxes(&with));
        }
        // Garbage lengths count as a change.
        all.truncate(all.len() - 3);
        assert!(RouteWatch::outside_sandboxes(&[all.as_slice(), &[40, 0, 0, 0, 24, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]].concat()));
    }

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
