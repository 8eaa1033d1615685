//! The resolver policed sandboxes are made to use: every DNS packet they
//! send (to any server, UDP or TCP port 53) is redirected here. A query for
//! a name the policy does not let the sandbox resolve is answered REFUSED
//! without going anywhere (so queries cannot carry data to a name server
//! out there); the rest are forwarded to the host's upstream servers, and
//! the IPv4 addresses in the answers are admitted for the sandbox as that
//! name's, for their TTL (with a floor, since programs cache answers
//! longer than they should).
//!
//! Only as much of the DNS wire format is read as this needs: the header,
//! the question, and the answer section's A records. Answers are passed on
//! as the upstream sent them.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use super::Egress;

const RCODE_SERVFAIL: u8 = 2;
const RCODE_REFUSED: u8 = 5;
const TYPE_A: u16 = 1;
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);

/// The question of a query: the name (lower case, no trailing dot) and
/// its type, and where the question section ends.
#[derive(Debug, Clone, PartialEq)]
pub struct Question {
    pub name: String,
    pub qtype: u16,
    pub end: usize,
}

/// Reads a possibly compressed name at `at`; returns it and the offset
/// after it (in the original position, not after a pointer's target).
fn read_name(msg: &[u8], mut at: usize) -> Option<(String, usize)> {
    let mut name = String::new();
    let mut end = None;
    // A pointer's target must lie wholly before the pointer: the name is
    // then made of bytes before where it ends, which a reply (keeping the
    // message up to the question's end) carries unchanged. That also ends
    // the walk: labels move forward below `limit`, and each pointer
    // lowers it.
    let mut limit = msg.len();
    // Wire length, the final zero included: at most 255 (RFC 1035).
    let mut wire = 1;
    loop {
        if at >= limit {
            return None;
        }
        let len = *msg.get(at)? as usize;
        if len & 0xc0 == 0xc0 {
            let ptr = ((len & 0x3f) << 8) | *msg.get(at + 1)? as usize;
            end.get_or_insert(at + 2);
            // Only backwards, and never into the 12-byte header: a name
            // made of header bytes changes when a reply rewrites them.
            if ptr >= at || ptr < 12 || at + 2 > limit {
                return None;
            }
            limit = at;
            at = ptr;
            continue;
        }
        if len == 0 {
            return Some((name, end.unwrap_or(at + 1)));
        }
        wire += 1 + len;
        if at + 1 + len > limit || wire > 255 {
            return None;
        }
        let label = msg.get(at + 1..at + 1 + len)?;
        if !name.is_empty() {
            name.push('.');
        }
        name.push_str(&String::from_utf8_lossy(label).to_ascii_lowercase());
        at += 1 + len;
    }
}

/// The single question of a message, query or answer.
fn parse_question(msg: &[u8]) -> Option<Question> {
    if msg.len() < 12 || u16::from_be_bytes([msg[4], msg[5]]) != 1 {
        return None;
    }
    let (name, at) = read_name(msg, 12)?;
    let qtype = u16::from_be_bytes([*msg.get(at)?, *msg.get(at + 1)?]);
    msg.get(at + 3)?;
    Some(Question { name, qtype, end: at + 4 })
}

/// The single question of a query (anything else is not a query we answer).
pub fn question(msg: &[u8]) -> Option<Question> {
    if msg.get(2)? & 0x80 != 0 {
        return None;
    }
    parse_question(msg)
}

/// An answer with no records and `rcode`, to the query `msg`.
pub fn reply(msg: &[u8], q: &Question, rcode: u8) -> Vec<u8> {
    let mut r = msg[..q.end].to_vec();
    r[2] = 0x80 | (msg[2] & 0x79); // QR, the opcode and RD kept
    r[3] = 0x80 | rcode; // RA
    r[6..12].fill(0);
    r
}

/// An answer of one A record (a fellow member: short TTL, since members
/// come and go).
pub fn a_reply(msg: &[u8], q: &Question, ip: Ipv4Addr) -> Vec<u8> {
    let mut r = reply(msg, q, 0);
    r[2] |= 0x04; // authoritative
    r[7] = 1;
    r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4]);
    r.extend_from_slice(&ip.octets());
    r
}

/// The A records in a response's answer section, with their TTLs.
pub fn a_records(msg: &[u8]) -> Vec<(Ipv4Addr, u32)> {
    let mut out = Vec::new();
    let Some(q) = parse_question(msg) else { return out };
    let ancount = u16::from_be_bytes([msg[6], msg[7]]);
    let mut at = q.end;
    for _ in 0..ancount {
        let Some((_, after)) = read_name(msg, at) else { break };
        let Some(fixed) = msg.get(after..after + 10) else { break };
        let rtype = u16::from_be_bytes([fixed[0], fixed[1]]);
        let ttl = u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]);
        let rdlen = u16::from_be_bytes([fixed[8], fixed[9]]) as usize;
        let Some(rdata) = msg.get(after + 10..after + 10 + rdlen) else { break };
        if rtype == TYPE_A && rdlen == 4 {
            out.push((Ipv4Addr::new(rdata[0], rdata[1], rdata[2], rdata[3]), ttl));
        }
        at = after + 10 + rdlen;
    }
    out
}

/// A query for `name`'s A records (the proxy's own check of a name).
pub fn a_query(name: &str, id: u16) -> Vec<u8> {
    let mut q = Vec::with_capacity(name.len() + 18);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        q.push(label.len().min(63) as u8);
        q.extend_from_slice(&label.as_bytes()[..label.len().min(63)]);
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// Sends `query` to the upstream servers in turn over UDP (TCP when the
/// answer was truncated, or when `tcp`); the first answer wins.
pub async fn forward(upstreams: &[SocketAddr], query: &[u8], tcp: bool) -> Option<Vec<u8>> {
    for up in upstreams {
        let r = if tcp { forward_tcp(*up, query).await } else { forward_udp(*up, query).await };
        match r {
            Some(ans) if !tcp && ans.len() > 2 && ans[2] & 0x02 != 0 => {
                if let Some(full) = forward_tcp(*up, query).await {
                    return Some(full);
                }
                return Some(ans);
            }
            Some(ans) => return Some(ans),
            None => continue,
        }
    }
    None
}

async fn forward_udp(up: SocketAddr, query: &[u8]) -> Option<Vec<u8>> {
    let bind: SocketAddr = if up.is_ipv4() { "0.0.0.0:0".parse().ok()? } else { "[::]:0".parse().ok()? };
    let sock = UdpSocket::bind(bind).await.ok()?;
    sock.connect(up).await.ok()?;
    sock.send(query).await.ok()?;
    let mut buf = vec![0u8; 4096];
    let deadline = tokio::time::Instant::now() + UPSTREAM_TIMEOUT;
    loop {
        let n = tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await.ok()?.ok()?;
        // Only the answer to this query (same id) counts.
        if n >= 12 && buf[..2] == query[..2] {
            buf.truncate(n);
            return Some(buf);
        }
    }
}

async fn forward_tcp(up: SocketAddr, query: &[u8]) -> Option<Vec<u8>> {
    tokio::time::timeout(UPSTREAM_TIMEOUT, async {
        let mut s = TcpStream::connect(up).await.ok()?;
        let mut framed = (query.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(query);
        s.write_all(&framed).await.ok()?;
        let len = s.read_u16().await.ok()? as usize;
        let mut ans = vec![0u8; len];
        s.read_exact(&mut ans).await.ok()?;
        Some(ans)
    })
    .await
    .ok()?
}

impl Egress {
    /// Answers one query from the sandbox at `from`.
    async fn answer(self: &Arc<Self>, from: Ipv4Addr, query: &[u8], tcp: bool) -> Option<Vec<u8>> {
        let q = question(query)?;
        // Only policed sandboxes and network members are answered: the
        // socket listens on every address, and must not be anyone else's
        // open resolver.
        let sbx = self.sandbox(from);
        if sbx.is_none() && !self.is_member(from) {
            return None;
        }
        // Fellow members by name, whatever the policy says of names.
        if let Some(ip) = self.peer_address(from, &q.name) {
            self.count_dns(true);
            return Some(if q.qtype == TYPE_A { a_reply(query, &q, ip) } else { reply(query, &q, 0) });
        }
        if let Some(sbx) = &sbx {
            if !sbx.policy().may_resolve(&q.name) {
                tracing::debug!(sandbox_id = %sbx.id, name = %q.name, "dns query refused by egress policy");
                self.count_dns(false);
                return Some(reply(query, &q, RCODE_REFUSED));
            }
        }
        self.count_dns(true);
        let Some(ans) = forward(&self.upstreams, query, tcp).await else {
            return Some(reply(query, &q, RCODE_SERVFAIL));
        };
        if let Some(sbx) = &sbx {
            for (ip, ttl) in a_records(&ans) {
                sbx.admit(ip, &q.name, ttl);
            }
        }
        Some(ans)
    }

    pub(super) async fn serve_udp(self: Arc<Self>, sock: UdpSocket) {
        let sock = Arc::new(sock);
        let mut buf = vec![0u8; 4096];
        loop {
            let (n, peer) = match sock.recv_from(&mut buf).await {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(error = %e, "egress resolver: receive failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let SocketAddr::V4(peer4) = peer else { continue };
            let query = buf[..n].to_vec();
            let (me, sock) = (self.clone(), sock.clone());
            tokio::spawn(async move {
                if let Some(ans) = me.answer(*peer4.ip(), &query, false).await {
                    let _ = sock.send_to(&ans, peer).await;
                }
            });
        }
    }

    pub(super) async fn serve_tcp(self: Arc<Self>, listener: TcpListener) {
        loop {
            let (mut s, peer) = match listener.accept().await {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(error = %e, "egress resolver: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let SocketAddr::V4(peer4) = peer else { continue };
            let me = self.clone();
            tokio::spawn(async move {
                // A connection may carry several queries; each has 10 s.
                while let Ok(Ok(len)) = tokio::time::timeout(Duration::from_secs(10), s.read_u16()).await {
                    let mut q = vec![0u8; len as usize];
                    if s.read_exact(&mut q).await.is_err() {
                        return;
                    }
                    let Some(ans) = me.answer(*peer4.ip(), &q, true).await else { return };
                    let mut framed = (ans.len() as u16).to_be_bytes().to_vec();
                    framed.extend_from_slice(&ans);
                    if s.write_all(&framed).await.is_err() {
                        return;
                    }
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `dns_message` fuzz target: a question whose name was a
    /// pointer into the header, or to bytes running on past the question,
    /// was accepted, and the reply made from it (which rewrites the header
    /// and keeps only the message up to the question's end) no longer
    /// carried that question; nor did the reply to a 127-label name.
    #[test]
    fn a_question_name_pointing_into_the_header_or_past_itself_is_refused() {
        let mut q = vec![0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        q.extend_from_slice(&[1, b'a', 0xc0, 2, 0, 1, 0, 1]);
        assert!(question(&q).is_none());
        // Nor may a pointer's target run on past the pointer (here: a
        // pointer to a label that reads on into the answer section).
        let mut q = vec![0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        q.extend_from_slice(&[3, b'a', b'b', 5, 0xc0, 15, 0, 1, 0, 1, 1, b'z', 0]);
        assert!(question(&q).is_none());
        // The longest name (127 labels, 255 bytes) is answered through a
        // pointer to it as well (a cap on steps made the pointer one too many).
        let longest = vec!["a"; 127].join(".");
        let query = a_query(&longest, 1);
        let q = question(&query).expect("the longest name");
        let reply = a_reply(&query, &q, Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(a_records(&reply), vec![(Ipv4Addr::new(192, 0, 2, 1), 5)]);
        assert!(question(&a_query(&format!("{longest}.b"), 1)).is_none(), "longer than 255 bytes");
        // The same name made of real labels is fine, and so is a pointer
        // to an earlier name.
        let ok = a_query("a.example", 7);
        let q = question(&ok).expect("query");
        assert_eq!(q.name, "a.example");
        let reply = a_reply(&ok, &q, Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(a_records(&reply), vec![(Ipv4Addr::new(192, 0, 2, 1), 5)]);
    }

    fn answer_for(query: &[u8], ips: &[[u8; 4]]) -> Vec<u8> {
        let q = question(query).expect("query");
        let mut r = reply(query, &q, 0);
        r[7] = ips.len() as u8;
        for ip in ips {
            // A compressed name pointing at the question, type A, class IN, TTL 300.
            r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 1, 44, 0, 4]);
            r.extend_from_slice(ip);
        }
        r
    }

    #[test]
    fn queries_parse_and_answers_yield_their_addresses() {
        let q = a_query("API.Good.test", 0x1234);
        let parsed = question(&q).expect("question");
        assert_eq!((parsed.name.as_str(), parsed.qtype), ("api.good.test", TYPE_A));
        let ans = answer_for(&q, &[[203, 0, 113, 10], [203, 0, 113, 11]]);
        assert_eq!(a_records(&ans), vec![(Ipv4Addr::new(203, 0, 113, 10), 300), (Ipv4Addr::new(203, 0, 113, 11), 300)]);
        let mine = a_reply(&q, &parsed, Ipv4Addr::new(10, 201, 0, 6));
        assert_eq!(a_records(&mine), vec![(Ipv4Addr::new(10, 201, 0, 6), 5)]);
        let refused = reply(&q, &parsed, RCODE_REFUSED);
        assert_eq!((refused[2] & 0x80, refused[3] & 0x0f), (0x80, RCODE_REFUSED));
        assert!(a_records(&refused).is_empty());
    }

    #[test]
    fn hostile_packets_are_ignored() {
        assert!(question(&[0; 5]).is_none());
        // A compression pointer loop.
        let mut m = a_query("a.test", 1);
        m.truncate(12);
        m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        assert!(question(&m).is_none());
        let mut long = a_query("x.test", 1);
        long.truncate(12);
        long.extend(std::iter::repeat_n([1u8, b'a'], 200).flatten());
        assert!(question(&long).is_none());
    }
}
