//! Egress policy for sandboxes created with one (E2B's `network.allow_out`,
//! `deny_out` and `rules`): the server-side half of the `nft` table in the
//! runtime. That table sends every DNS packet of a policed sandbox to the
//! resolver here (`dns`) and every TCP connection to the transparent
//! egress proxy here (`proxy`), and drops everything else it sends (UDP,
//! ICMP). The resolver answers only names the policy lets the sandbox
//! resolve and remembers which addresses it gave out for which name; the
//! proxy reads the TLS SNI or HTTP Host of each connection, checks the
//! name and the address against the policy and those answers, and then
//! connects on the sandbox's behalf, so a sandbox can neither ask another
//! resolver nor reach an allowed name's address under another name, nor an
//! arbitrary address under an allowed name.
//!
//! Sandboxes without a policy never come here: their traffic is NATed by
//! the kernel as before, and keeps flowing while the server restarts.
//! Policed sandboxes' connections go through this process, so they pause
//! while it restarts (new connections are refused, never let through).
//!
//! The registry is keyed by the sandbox's address, which its slot fixes
//! for its whole life (stops and restarts included).

pub mod dns;
pub mod networks;
pub mod policy;
pub mod proxy;
pub mod store;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use airlock_runtime::nft::EgressTable;
pub use policy::Policy;

/// Answers are trusted at least this long, whatever their TTL: programs
/// (and language runtimes) cache them longer than they should.
const MIN_ADMIT: Duration = Duration::from_secs(120);
/// And at most this long.
const MAX_ADMIT: Duration = Duration::from_secs(24 * 3600);
/// Addresses remembered per sandbox (expired ones go first, then the oldest).
const MAX_ADMITTED: usize = 8192;

#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error("binding the egress {what} socket")]
    Bind {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("egress firewall")]
    Firewall(#[from] airlock_runtime::network::NetworkError),
    #[error("the name {name:?} is taken on network {network} (by sandbox {by})")]
    NameTaken { network: String, name: String, by: String },
}

/// One policed sandbox.
pub struct SandboxEgress {
    pub id: String,
    policy: RwLock<Arc<Policy>>,
    /// Address -> the names the resolver gave it out for, until when.
    admitted: Mutex<HashMap<Ipv4Addr, Vec<(String, Instant)>>>,
}

impl SandboxEgress {
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn admit(&self, ip: Ipv4Addr, name: &str, ttl: u32) {
        let until = Instant::now() + Duration::from_secs(ttl.into()).clamp(MIN_ADMIT, MAX_ADMIT);
        let mut a = self.admitted.lock().unwrap_or_else(|p| p.into_inner());
        if a.len() >= MAX_ADMITTED && !a.contains_key(&ip) {
            let now = Instant::now();
            a.retain(|_, v| {
                v.retain(|(_, t)| *t > now);
                !v.is_empty()
            });
            if a.len() >= MAX_ADMITTED {
                if let Some(oldest) = a.iter().min_by_key(|(_, v)| v.iter().map(|(_, t)| *t).max()).map(|(k, _)| *k) {
                    a.remove(&oldest);
                }
            }
        }
        let names = a.entry(ip).or_default();
        let name = policy::canonical(name);
        match names.iter_mut().find(|(n, _)| *n == name) {
            Some(e) => e.1 = e.1.max(until),
            None => names.push((name, until)),
        }
    }

    /// The names (unexpired) the resolver gave `ip` out for.
    fn names_of(&self, ip: Ipv4Addr) -> Vec<String> {
        let now = Instant::now();
        let a = self.admitted.lock().unwrap_or_else(|p| p.into_inner());
        a.get(&ip).map(|v| v.iter().filter(|(_, t)| *t > now).map(|(n, _)| n.clone()).collect()).unwrap_or_default()
    }
}

/// Counters for `/metrics`.
#[derive(Default)]
pub struct EgressStats {
    pub connections_allowed: AtomicU64,
    pub connections_denied: AtomicU64,
    pub dns_answered: AtomicU64,
    pub dns_refused: AtomicU64,
    pub bytes_out: AtomicU64,
    pub bytes_in: AtomicU64,
}

pub struct Egress {
    table: EgressTable,
    upstreams: Vec<SocketAddr>,
    sandboxes: RwLock<HashMap<Ipv4Addr, Arc<SandboxEgress>>>,
    /// Sandbox networks and their members.
    nets: RwLock<networks::Nets>,
    pub stats: EgressStats,
    blocked: proxy::Blocklist,
    /// How the proxy checks the certificates of HTTPS servers it talks to
    /// itself (when it rewrites requests).
    upstream_tls: Arc<rustls::ClientConfig>,
    /// Certificates for HTTPS the proxy terminates (hosts whose requests
    /// it rewrites); without one such connections are refused.
    interceptor: std::sync::OnceLock<Arc<crate::egress_tls::EgressTls>>,
    /// Fills `${e2b.secrets.<name>}` placeholders in header values.
    secrets: std::sync::OnceLock<Arc<crate::secrets::Secrets>>,
}

/// The host's own resolvers, loopback ones included (the resolver runs on
/// the host, so a local caching server is fine), on port 53.
pub fn host_resolvers() -> Vec<SocketAddr> {
    let read = |path: &str| -> Vec<SocketAddr> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().strip_prefix("nameserver"))
            .filter_map(|a| a.trim().parse::<std::net::IpAddr>().ok())
            .map(|ip| SocketAddr::new(ip, 53))
            .collect()
    };
    read("/etc/resolv.conf")
}

impl Egress {
    /// Binds the resolver and the proxy on ephemeral ports and removes
    /// stale tables of servers that are gone; `restore` installs this
    /// server's own.
    pub async fn start(tag: &str, upstreams: Vec<SocketAddr>, upstream_tls: Arc<rustls::ClientConfig>) -> Result<Arc<Egress>, EgressError> {
        // The resolver's UDP and TCP sockets share one port: one redirect
        // rule sends both there.
        let (udp, dns_tcp) = {
            let mut tries = 0;
            loop {
                let udp = tokio::net::UdpSocket::bind("0.0.0.0:0").await.map_err(|e| EgressError::Bind { what: "resolver", source: e })?;
                let port = udp.local_addr().map_err(|e| EgressError::Bind { what: "resolver", source: e })?.port();
                match tokio::net::TcpListener::bind(("0.0.0.0", port)).await {
                    Ok(t) => break (udp, t),
                    Err(e) if tries > 20 => return Err(EgressError::Bind { what: "resolver", source: e }),
                    Err(_) => tries += 1,
                }
            }
        };
        let proxy = tokio::net::TcpListener::bind("0.0.0.0:0").await.map_err(|e| EgressError::Bind { what: "proxy", source: e })?;
        let dns_port = udp.local_addr().map_err(|e| EgressError::Bind { what: "resolver", source: e })?.port();
        let proxy_port = proxy.local_addr().map_err(|e| EgressError::Bind { what: "proxy", source: e })?.port();
        let table = EgressTable { name: EgressTable::name_for(tag), dns_port, proxy_port };
        let t2 = table.clone();
        // The table itself is installed by `restore`, with the sandboxes
        // that outlived the last server in it: installing an empty one here
        // would leave them unpoliced until then.
        tokio::task::spawn_blocking(move || {
            let pruned = airlock_runtime::nft::prune_stale(&t2.name);
            if !pruned.is_empty() {
                tracing::info!(tables = ?pruned, "removed the egress tables of servers that are gone");
            }
            Ok::<(), EgressError>(())
        })
        .await
        .map_err(|e| EgressError::Bind { what: "firewall", source: std::io::Error::other(e) })??;
        if upstreams.is_empty() {
            tracing::warn!("egress resolver has no upstream name server (none in /etc/resolv.conf and no --dns-upstream): policed sandboxes get SERVFAIL");
        }
        let me = Arc::new(Egress {
            table,
            upstreams,
            sandboxes: RwLock::new(HashMap::new()),
            nets: RwLock::new(Default::default()),
            stats: EgressStats::default(),
            blocked: proxy::Blocklist::new(),
            upstream_tls,
            interceptor: std::sync::OnceLock::new(),
            secrets: std::sync::OnceLock::new(),
        });
        tokio::spawn(me.clone().serve_udp(udp));
        tokio::spawn(me.clone().serve_tcp(dns_tcp));
        tokio::spawn(me.clone().serve_proxy(proxy));
        tracing::info!(table = %me.table.name, dns_port, proxy_port, "egress policy enforcement ready");
        Ok(me)
    }

    pub fn set_interceptor(&self, i: Arc<crate::egress_tls::EgressTls>) {
        let _ = self.interceptor.set(i);
    }

    pub fn set_secrets(&self, s: Arc<crate::secrets::Secrets>) {
        let _ = self.secrets.set(s);
    }

    pub fn sandbox(&self, ip: Ipv4Addr) -> Option<Arc<SandboxEgress>> {
        self.sandboxes.read().unwrap_or_else(|p| p.into_inner()).get(&ip).cloned()
    }

    /// Makes `ip` policed by `policy` (for sandbox `id`), or unpoliced with
    /// `None`. Blocking (it may run `nft`); the registry changes before the
    /// firewall lets go and after it takes hold, so no packet of a policed
    /// sandbox finds the proxy without its policy.
    pub fn assign(&self, ip: Ipv4Addr, who: Option<(&str, Policy)>) -> Result<(), EgressError> {
        match who {
            Some((id, policy)) => {
                let existing = self.sandbox(ip).filter(|s| s.id == id);
                match existing {
                    Some(s) => {
                        // New connections get the new rules; those open keep theirs.
                        *s.policy.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(policy);
                    }
                    None => {
                        let s = Arc::new(SandboxEgress { id: id.to_string(), policy: RwLock::new(Arc::new(policy)), admitted: Mutex::new(HashMap::new()) });
                        self.sandboxes.write().unwrap_or_else(|p| p.into_inner()).insert(ip, s);
                    }
                }
                self.table.add(ip)?;
            }
            None => {
                let had = self.sandboxes.read().unwrap_or_else(|p| p.into_inner()).contains_key(&ip);
                if had {
                    self.table.remove(ip)?;
                    self.sandboxes.write().unwrap_or_else(|p| p.into_inner()).remove(&ip);
                }
            }
        }
        Ok(())
    }

    /// Forgets a sandbox (destroyed), by id.
    pub fn release(&self, id: &str) {
        let ip = self.sandboxes.read().unwrap_or_else(|p| p.into_inner()).iter().find(|(_, s)| s.id == id).map(|(ip, _)| *ip);
        if let Some(ip) = ip {
            if let Err(e) = self.assign(ip, None) {
                tracing::warn!(sandbox_id = %id, error = %e, "removing a sandbox from the egress table");
            }
        }
    }

    /// Re-installs the table with exactly these policed sandboxes and
    /// networks (server start-up, after adopting the sandboxes that
    /// outlived the last server), in one transaction.
    pub fn restore(&self, members: Vec<(Ipv4Addr, String, Policy)>, nets: networks::Nets) -> Result<(), EgressError> {
        let ips: Vec<Ipv4Addr> = members.iter().map(|(ip, _, _)| *ip).collect();
        {
            let mut map = self.sandboxes.write().unwrap_or_else(|p| p.into_inner());
            for (ip, id, policy) in members {
                map.insert(ip, Arc::new(SandboxEgress { id, policy: RwLock::new(Arc::new(policy)), admitted: Mutex::new(HashMap::new()) }));
            }
        }
        let (pairs, resolve) = Self::peer_sets(&nets);
        *self.nets.write().unwrap_or_else(|p| p.into_inner()) = nets;
        self.table.install_all(&ips, &resolve, &pairs)?;
        Ok(())
    }

    /// Whether sandbox `id` is policed or on a network (what a destroy
    /// must undo), without copying the registry.
    pub fn knows(&self, id: &str) -> bool {
        self.sandboxes.read().unwrap_or_else(|p| p.into_inner()).values().any(|s| s.id == id)
            || self.nets.read().unwrap_or_else(|p| p.into_inner()).values().any(|m| m.iter().any(|x| x.id == id))
    }

    /// The ids of the policed sandboxes.
    pub fn policed(&self) -> Vec<String> {
        self.sandboxes.read().unwrap_or_else(|p| p.into_inner()).values().map(|s| s.id.clone()).collect()
    }

    /// Removes this server's table (a clean shutdown with no policed
    /// sandbox left).
    pub fn uninstall(&self) {
        let _ = self.table.uninstall();
    }

    /// The egress counters in the Prometheus exposition format.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let st = &self.stats;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP airlock_egress_policed_sandboxes Sandboxes with an egress policy.\n# TYPE airlock_egress_policed_sandboxes gauge\nairlock_egress_policed_sandboxes {}",
            self.policed().len()
        );
        let _ = writeln!(out, "# HELP airlock_egress_connections_total Connections of policed sandboxes, by verdict.\n# TYPE airlock_egress_connections_total counter");
        let _ = writeln!(
            out,
            "airlock_egress_connections_total{{verdict=\"allowed\"}} {}\nairlock_egress_connections_total{{verdict=\"denied\"}} {}",
            l(&st.connections_allowed),
            l(&st.connections_denied)
        );
        let _ = writeln!(out, "# HELP airlock_egress_dns_queries_total Queries the egress resolver answered or refused.\n# TYPE airlock_egress_dns_queries_total counter");
        let _ = writeln!(
            out,
            "airlock_egress_dns_queries_total{{answer=\"answered\"}} {}\nairlock_egress_dns_queries_total{{answer=\"refused\"}} {}",
            l(&st.dns_answered),
            l(&st.dns_refused)
        );
        let _ = writeln!(out, "# HELP airlock_egress_bytes_total Bytes the egress proxy relayed, by direction.\n# TYPE airlock_egress_bytes_total counter");
        let _ = writeln!(out, "airlock_egress_bytes_total{{direction=\"out\"}} {}\nairlock_egress_bytes_total{{direction=\"in\"}} {}", l(&st.bytes_out), l(&st.bytes_in));
        let nets = self.networks();
        let _ = writeln!(out, "# HELP airlock_networks Sandbox networks.\n# TYPE airlock_networks gauge\nairlock_networks {}", nets.len());
        let _ = writeln!(
            out,
            "# HELP airlock_network_members Sandboxes on networks (one per membership).\n# TYPE airlock_network_members gauge\nairlock_network_members {}",
            nets.values().map(Vec::len).sum::<usize>()
        );
    }

    fn count_dns(&self, answered: bool) {
        let c = if answered { &self.stats.dns_answered } else { &self.stats.dns_refused };
        c.fetch_add(1, Ordering::Relaxed);
    }
}
