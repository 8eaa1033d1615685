//! A sandbox's egress policy, parsed once from E2B's (and Moru's) `network`
//! option, and the decisions made with it: may this name be resolved, may
//! this connection (an address, maybe a name from its TLS SNI or HTTP
//! Host) be made.
//!
//! Semantics, as E2B documents them: with no `allow_out` everything is
//! allowed except what `deny_out` names; an entry in `allow_out` wins over
//! any in `deny_out`; `0.0.0.0/0` is all traffic. Entries are IPv4
//! addresses, CIDRs and domain names, `*.` matching any subdomain (not the
//! domain itself).
//!
//! What a name does not get is trust in the address: a connection that
//! names an allowed domain is allowed only to an address that domain
//! resolves to (`Decision` carries the check for the caller), so a forged
//! SNI or Host cannot carry traffic to anywhere else.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// At most this many entries per list: a policy is for naming services,
/// and every connection is checked against it.
pub const MAX_ENTRIES: usize = 1024;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PolicyError {
    #[error("network.{list}: {entry:?} is not an IPv4 address, a CIDR or a domain name")]
    BadEntry { list: &'static str, entry: String },
    #[error("network.allow_out: {0:?} is an IPv6 address, and sandboxes have no IPv6")]
    Ipv6Allow(String),
    #[error("network.{0} has more than {MAX_ENTRIES} entries")]
    TooMany(&'static str),
    #[error("network.rules: {0}")]
    BadRule(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net {
    addr: u32,
    prefix: u8,
}

impl Net {
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = if self.prefix == 0 { 0 } else { u32::MAX << (32 - self.prefix) };
        (u32::from(ip) & mask) == (self.addr & mask)
    }
    fn all(&self) -> bool {
        self.prefix == 0
    }
}

/// A domain pattern: exact, or `*.suffix` for every name below `suffix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Name {
    Exact(String),
    Below(String),
}

impl Name {
    pub fn matches(&self, name: &str) -> bool {
        match self {
            Name::Exact(n) => n == name,
            Name::Below(s) => name.len() > s.len() + 1 && name.ends_with(s.as_str()) && name.as_bytes()[name.len() - s.len() - 1] == b'.',
        }
    }
}

/// A name as compared: lower case, without the root's trailing dot.
pub fn canonical(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

fn valid_label(l: &str) -> bool {
    !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') && !l.starts_with('-') && !l.ends_with('-')
}

fn valid_name(n: &str) -> bool {
    n.len() <= 253 && n.contains('.') && n.split('.').all(valid_label) && !n.rsplit('.').next().is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
}

enum Entry {
    Net(Net),
    Name(Name),
    V6,
}

fn parse_entry(list: &'static str, raw: &str) -> Result<Entry, PolicyError> {
    let bad = || PolicyError::BadEntry { list, entry: raw.chars().take(80).collect() };
    let e = raw.trim();
    if e.contains(':') {
        let addr = e.split('/').next().unwrap_or("");
        return addr.parse::<std::net::Ipv6Addr>().map(|_| Entry::V6).map_err(|_| bad());
    }
    let (addr, prefix) = match e.split_once('/') {
        Some((a, p)) => (a, Some(p.parse::<u8>().ok().filter(|p| *p <= 32).ok_or_else(bad)?)),
        None => (e, None),
    };
    if let Ok(ip) = addr.parse::<Ipv4Addr>() {
        return Ok(Entry::Net(Net { addr: u32::from(ip), prefix: prefix.unwrap_or(32) }));
    }
    if prefix.is_some() {
        return Err(bad());
    }
    let n = canonical(e);
    if let Some(suffix) = n.strip_prefix("*.") {
        return if valid_name(suffix) { Ok(Entry::Name(Name::Below(suffix.to_string()))) } else { Err(bad()) };
    }
    if valid_name(&n) {
        Ok(Entry::Name(Name::Exact(n)))
    } else {
        Err(bad())
    }
}

/// Headers a request to one host gets added or replaced by the egress
/// proxy; values may hold `${e2b.secrets.<name>}` placeholders, resolved
/// only when the request is sent.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Transform {
    pub headers: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Policy {
    allow_nets: Vec<Net>,
    allow_names: Vec<Name>,
    deny_nets: Vec<Net>,
    deny_names: Vec<Name>,
    /// Request transforms by host pattern, in the order given.
    rules: Vec<(Name, Transform)>,
    /// The entries as given, canonical, for the info endpoint.
    pub allow_out: Vec<String>,
    pub deny_out: Vec<String>,
}

/// What the proxy may do with a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Allowed if the destination is an address `name` resolves to.
    AllowIfResolves(String),
    Deny(String),
}

impl Policy {
    pub fn parse(allow_out: &[String], deny_out: &[String], rules: Option<&serde_json::Value>) -> Result<Policy, PolicyError> {
        let mut p = Policy::default();
        for (list, entries) in [("allow_out", allow_out), ("deny_out", deny_out)] {
            if entries.len() > MAX_ENTRIES {
                return Err(PolicyError::TooMany(list));
            }
            for raw in entries {
                let allow = list == "allow_out";
                match parse_entry(list, raw)? {
                    Entry::V6 if allow => return Err(PolicyError::Ipv6Allow(raw.trim().to_string())),
                    // IPv6 is off inside sandboxes: denying it holds already.
                    Entry::V6 => continue,
                    Entry::Net(n) if allow => p.allow_nets.push(n),
                    Entry::Net(n) => p.deny_nets.push(n),
                    Entry::Name(n) if allow => p.allow_names.push(n),
                    Entry::Name(n) => p.deny_names.push(n),
                }
                let canon = if raw.contains('/') || raw.trim().parse::<Ipv4Addr>().is_ok() { raw.trim().to_string() } else { canonical(raw) };
                if allow {
                    p.allow_out.push(canon);
                } else {
                    p.deny_out.push(canon);
                }
            }
        }
        if let Some(r) = rules.filter(|r| !r.is_null()) {
            let obj = r.as_object().ok_or_else(|| PolicyError::BadRule("must be an object of host to a list of rules".into()))?;
            for (host, list) in obj {
                let name = match parse_entry("rules", host).map_err(|_| PolicyError::BadRule(format!("{host:?} is not a domain name")))? {
                    Entry::Name(n) => n,
                    _ => return Err(PolicyError::BadRule(format!("{host:?}: transforms apply to domain names (they act on HTTP requests), not addresses"))),
                };
                let list = list.as_array().ok_or_else(|| PolicyError::BadRule(format!("{host:?} must map to a list of rules")))?;
                let mut t = Transform::default();
                for rule in list {
                    let Some(headers) = rule.pointer("/transform/headers") else { continue };
                    let headers = headers.as_object().ok_or_else(|| PolicyError::BadRule(format!("{host:?}: transform.headers must be an object")))?;
                    for (k, v) in headers {
                        let v = v.as_str().ok_or_else(|| PolicyError::BadRule(format!("{host:?}: header {k:?} must be a string")))?;
                        let token_ok = !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
                        if !token_ok || v.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                            return Err(PolicyError::BadRule(format!("{host:?}: header {k:?} is not a valid HTTP header")));
                        }
                        t.headers.push((k.clone(), v.to_string()));
                    }
                }
                p.rules.push((name, t));
            }
        }
        Ok(p)
    }

    /// Whether every address outside `allow_out` is denied (E2B's
    /// all-traffic entry in `deny_out`).
    pub fn denies_all(&self) -> bool {
        self.deny_nets.iter().any(Net::all)
    }

    /// True for a policy that only says "no internet" (nothing allowed,
    /// everything denied, no transforms): a sandbox without a network
    /// interface enforces that more cheaply than any proxy.
    pub fn is_no_internet(&self) -> bool {
        self.denies_all() && self.allow_nets.is_empty() && self.allow_names.is_empty()
    }

    /// True when the policy changes nothing (the default sandbox).
    pub fn is_open(&self) -> bool {
        self.allow_nets.is_empty() && self.allow_names.is_empty() && self.deny_nets.is_empty() && self.deny_names.is_empty() && self.rules.is_empty()
    }

    /// Whether `allow_out` names `name` (canonical).
    pub fn name_allowed(&self, name: &str) -> bool {
        self.allow_names.iter().any(|n| n.matches(name))
    }

    fn name_denied(&self, name: &str) -> bool {
        self.deny_names.iter().any(|n| n.matches(name))
    }

    /// May the sandbox resolve `name`? A policy that denies everything
    /// answers only names it allows (so queries cannot carry data out to
    /// someone's name server); otherwise everything but denied names.
    pub fn may_resolve(&self, name: &str) -> bool {
        let name = canonical(name);
        if self.name_allowed(&name) {
            return true;
        }
        !self.denies_all() && !self.name_denied(&name)
    }

    /// Whether `ip` (with no name to go by) is allowed by address rules.
    fn ip_verdict(&self, ip: Ipv4Addr) -> Verdict {
        if self.allows_address(ip) {
            return Verdict::Allow;
        }
        if self.deny_nets.iter().any(|n| n.contains(ip)) {
            return Verdict::Deny(format!("{ip} is denied by the sandbox's egress policy"));
        }
        Verdict::Allow
    }

    /// The verdict for a connection to `ip`, naming `name` in its TLS SNI or
    /// HTTP Host when it has one, and `resolved_for` the allowed name the
    /// sandbox's resolver gave `ip` for, if any.
    pub fn connect(&self, ip: Ipv4Addr, name: Option<&str>, resolved_for: Option<&str>) -> Verdict {
        if self.allows_address(ip) {
            return Verdict::Allow;
        }
        match name.map(canonical) {
            Some(n) if self.name_allowed(&n) => {
                if resolved_for.is_some_and(|r| canonical(r) == n) {
                    Verdict::Allow
                } else {
                    Verdict::AllowIfResolves(n)
                }
            }
            Some(n) if self.name_denied(&n) => Verdict::Deny(format!("{n} is denied by the sandbox's egress policy")),
            Some(n) => match self.ip_verdict(ip) {
                Verdict::Deny(_) => Verdict::Deny(format!("{n} ({ip}) is not allowed by the sandbox's egress policy")),
                v => v,
            },
            // No name in the stream (not TLS or HTTP): an address the
            // resolver handed out for an allowed name is that name's.
            None if resolved_for.is_some_and(|r| self.name_allowed(&canonical(r))) => Verdict::Allow,
            None => self.ip_verdict(ip),
        }
    }

    /// The headers to set on an HTTP request to `host` (every matching
    /// rule's, in order), or none.
    pub fn transform(&self, host: &str) -> Option<Vec<(String, String)>> {
        let host = canonical(host);
        let v: Vec<(String, String)> = self.rules.iter().filter(|(n, _)| n.matches(&host)).flat_map(|(_, t)| t.headers.iter().cloned()).collect();
        (!v.is_empty()).then_some(v)
    }

    /// Whether any request to `host` is transformed (the proxy then has to
    /// see inside its TLS).
    pub fn has_transform(&self, host: &str) -> bool {
        let host = canonical(host);
        self.rules.iter().any(|(n, t)| n.matches(&host) && !t.headers.is_empty())
    }

    /// Whether any verdict depends on a connection's name (its SNI or
    /// Host): otherwise the proxy need not wait for the first bytes.
    pub fn uses_names(&self) -> bool {
        !self.allow_names.is_empty() || !self.deny_names.is_empty() || !self.rules.is_empty()
    }

    /// Whether `ip` is allowed by an address entry, whatever name it goes by.
    pub fn allows_address(&self, ip: Ipv4Addr) -> bool {
        self.allow_nets.iter().any(|n| n.contains(ip))
    }

    pub fn has_rules(&self) -> bool {
        !self.rules.is_empty()
    }

    /// The rules as E2B's info endpoint shows them (header values are the
    /// placeholders as given, never secret values).
    pub fn rules_json(&self) -> BTreeMap<String, serde_json::Value> {
        self.rules
            .iter()
            .map(|(n, t)| {
                let host = match n {
                    Name::Exact(h) => h.clone(),
                    Name::Below(s) => format!("*.{s}"),
                };
                let headers: serde_json::Map<String, serde_json::Value> = t.headers.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
                (host, serde_json::json!([{ "transform": { "headers": headers } }]))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(allow: &[&str], deny: &[&str]) -> Policy {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Policy::parse(&s(allow), &s(deny), None).expect("valid policy")
    }

    const A: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
    const B: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 20);

    #[test]
    fn entries_parse_and_bad_ones_are_named() {
        assert!(Policy::parse(&["1.2.3.4/33".into()], &[], None).is_err());
        assert!(matches!(Policy::parse(&["not a host".into()], &[], None), Err(PolicyError::BadEntry { .. })));
        assert!(matches!(Policy::parse(&["::1".into()], &[], None), Err(PolicyError::Ipv6Allow(_))));
        assert!(Policy::parse(&[], &["::/0".into()], None).is_ok());
        assert!(Policy::parse(&["999.1.1.1".into()], &[], None).is_err(), "a dotted-number name is not a domain");
        let q = p(&["API.Good.test.", "*.svc.test", "203.0.113.0/24"], &["0.0.0.0/0"]);
        assert_eq!(q.allow_out, vec!["api.good.test", "*.svc.test", "203.0.113.0/24"]);
    }

    #[test]
    fn wildcards_match_subdomains_only() {
        let n = Name::Below("svc.test".into());
        assert!(n.matches("a.svc.test") && n.matches("a.b.svc.test"));
        assert!(!n.matches("svc.test") && !n.matches("evilsvc.test"));
    }

    #[test]
    fn allow_wins_over_deny_and_all_traffic_denies_the_rest() {
        let q = p(&["203.0.113.0/24"], &["0.0.0.0/0"]);
        assert_eq!(q.connect(A, None, None), Verdict::Allow);
        assert!(matches!(q.connect(B, None, None), Verdict::Deny(_)));
        let open = p(&[], &["198.51.100.0/24"]);
        assert_eq!(open.connect(A, None, None), Verdict::Allow);
        assert!(matches!(open.connect(B, None, None), Verdict::Deny(_)));
    }

    #[test]
    fn a_name_must_be_allowed_and_resolve_to_the_address() {
        let q = p(&["api.good.test"], &["0.0.0.0/0"]);
        assert_eq!(q.connect(A, Some("api.good.test"), Some("api.good.test")), Verdict::Allow);
        assert_eq!(q.connect(B, Some("API.good.test"), None), Verdict::AllowIfResolves("api.good.test".into()));
        // The allowed name's address with another name in SNI/Host.
        assert!(matches!(q.connect(A, Some("evil.test"), Some("api.good.test")), Verdict::Deny(_)));
        // No name in the stream: the resolver's answer for an allowed name counts.
        assert_eq!(q.connect(A, None, Some("api.good.test")), Verdict::Allow);
        assert!(matches!(q.connect(B, None, None), Verdict::Deny(_)));
    }

    #[test]
    fn resolving_follows_the_policy() {
        let q = p(&["api.good.test", "*.svc.test"], &["0.0.0.0/0"]);
        assert!(q.may_resolve("api.good.test.") && q.may_resolve("x.svc.test"));
        assert!(!q.may_resolve("exfil-data.evil.test"), "an all-denying policy answers only allowed names");
        let open = p(&[], &["*.evil.test"]);
        assert!(open.may_resolve("anything.test") && !open.may_resolve("a.evil.test"));
        assert!(matches!(open.connect(A, Some("a.evil.test"), None), Verdict::Deny(_)));
    }

    #[test]
    fn rules_need_domains_and_clean_headers() {
        let ok = serde_json::json!({"api.good.test": [{"transform": {"headers": {"Authorization": "Bearer ${e2b.secrets.key}"}}}]});
        let q = Policy::parse(&["api.good.test".into()], &[], Some(&ok)).expect("valid");
        assert_eq!(q.transform("API.good.test").expect("rule").len(), 1);
        assert!(q.has_transform("api.good.test") && !q.has_transform("other.test"));
        let bad = serde_json::json!({"api.good.test": [{"transform": {"headers": {"X": "a\r\nInjected: 1"}}}]});
        assert!(Policy::parse(&[], &[], Some(&bad)).is_err());
        let ip = serde_json::json!({"203.0.113.1": []});
        assert!(Policy::parse(&[], &[], Some(&ip)).is_err());
    }
}
