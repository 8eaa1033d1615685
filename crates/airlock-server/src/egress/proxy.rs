//! The transparent egress proxy: every TCP connection a policed sandbox
//! opens arrives here (the kernel redirected it; `SO_ORIGINAL_DST` tells
//! where it was going). The proxy reads the first bytes for a TLS SNI or an
//! HTTP Host, asks the policy, and either refuses (an HTTP 403 that says
//! why, or a closed connection) or connects to the destination itself and
//! relays. Plain HTTP is followed request by request, so a kept-alive
//! connection cannot switch to another Host, and requests to hosts with
//! transform rules get their headers set here (secrets resolved only now,
//! never seen by the sandbox). HTTPS to such hosts is terminated with a
//! certificate from the server's interception CA, which sandboxes trust.
//!
//! The proxy connects from the host, where the kernel firewall that keeps
//! sandboxes off the host's networks does not apply, so it applies the
//! same blocklist itself before every connect.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::policy::Verdict;
use super::{Egress, SandboxEgress};

/// How long the proxy waits for a client's first bytes before deciding
/// without a name (a protocol where the server speaks first).
const FIRST_BYTES_WAIT: Duration = Duration::from_millis(1500);
/// A TLS ClientHello or an HTTP request head larger than this is refused.
const MAX_HEAD: usize = 64 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const RELAY_BUF: usize = 256 * 1024;

/// Address ranges no sandbox may reach, through the proxy as through the
/// kernel: private, shared, loopback, link-local, multicast and reserved
/// space, the networks the host is attached to, and the host's own
/// addresses.
pub struct Blocklist {
    cache: Mutex<Option<(Instant, Vec<Cidr>)>>,
}

/// An IPv4 network: address and prefix length.
type Cidr = (u32, u8);

const FIXED_BLOCKS: [([u8; 4], u8); 9] = [
    ([10, 0, 0, 0], 8),
    ([172, 16, 0, 0], 12),
    ([192, 168, 0, 0], 16),
    ([100, 64, 0, 0], 10),
    ([169, 254, 0, 0], 16),
    ([127, 0, 0, 0], 8),
    ([0, 0, 0, 0], 8),
    ([224, 0, 0, 0], 4),
    ([240, 0, 0, 0], 4),
];

fn in_net(ip: Ipv4Addr, net: u32, prefix: u8) -> bool {
    let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
    u32::from(ip) & mask == net & mask
}

/// The host's own IPv4 addresses.
fn local_addrs() -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `ifap` with a list we walk read-only and
    // free with freeifaddrs exactly once.
    unsafe {
        if libc::getifaddrs(&mut ifap) != 0 {
            return out;
        }
        let mut cur = ifap;
        while !cur.is_null() {
            let a = (*cur).ifa_addr;
            if !a.is_null() && (*a).sa_family as i32 == libc::AF_INET {
                let sin = &*(a as *const libc::sockaddr_in);
                out.push(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
            }
            cur = (*cur).ifa_next;
        }
        libc::freeifaddrs(ifap);
    }
    out
}

impl Blocklist {
    pub fn new() -> Self {
        Self { cache: Mutex::new(None) }
    }

    fn dynamic(&self) -> Vec<Cidr> {
        let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, v)) = c.as_ref().filter(|(at, _)| at.elapsed() < Duration::from_secs(5)) {
            return v.clone();
        }
        let mut v: Vec<Cidr> = airlock_runtime::network::connected_subnets()
            .iter()
            .filter_map(|s| {
                let (a, p) = s.split_once('/')?;
                Some((u32::from(a.parse::<Ipv4Addr>().ok()?), p.parse().ok()?))
            })
            .collect();
        v.extend(local_addrs().into_iter().map(|a| (u32::from(a), 32)));
        *c = Some((Instant::now(), v.clone()));
        v
    }

    pub fn blocked(&self, ip: Ipv4Addr) -> bool {
        FIXED_BLOCKS.iter().any(|(n, p)| in_net(ip, u32::from(Ipv4Addr::from(*n)), *p)) || self.dynamic().iter().any(|(n, p)| in_net(ip, *n, *p))
    }
}

impl Default for Blocklist {
    fn default() -> Self {
        Self::new()
    }
}

/// Copies `from` to `to` until `from` ends (then shuts `to` for writing),
/// through a pipe with splice(2): the bytes stay in the kernel, which is
/// what lets a proxied download run close to a NATed one.
async fn splice_copy(from: &TcpStream, to: &TcpStream) -> std::io::Result<u64> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use tokio::io::Interest;
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`, owned below.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both were just created and nothing else owns them.
    let (pr, pw) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // A bigger pipe moves more per call; failing to grow it only costs calls.
    // SAFETY: F_SETPIPE_SZ takes an int and touches no memory of ours.
    let cap = match unsafe { libc::fcntl(pw.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20) } {
        n if n > 0 => n as usize,
        _ => 64 * 1024,
    };
    let (src, dst) = (from.as_raw_fd(), to.as_raw_fd());
    let flags = libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK;
    let mut total = 0u64;
    loop {
        let n = from
            .async_io(Interest::READABLE, || {
                // SAFETY: splice between two descriptors we hold; no offsets.
                let n = unsafe { libc::splice(src, std::ptr::null_mut(), pw.as_raw_fd(), std::ptr::null_mut(), cap, flags) };
                if n < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            })
            .await?;
        if n == 0 {
            // SAFETY: shutdown on a descriptor we hold.
            unsafe { libc::shutdown(dst, libc::SHUT_WR) };
            return Ok(total);
        }
        let mut left = n;
        while left > 0 {
            let m = to
                .async_io(Interest::WRITABLE, || {
                    // SAFETY: as above.
                    let m = unsafe { libc::splice(pr.as_raw_fd(), std::ptr::null_mut(), dst, std::ptr::null_mut(), left, flags) };
                    if m < 0 {
                        Err(std::io::Error::last_os_error())
                    } else {
                        Ok(m as usize)
                    }
                })
                .await?;
            left -= m;
            total += m as u64;
        }
    }
}

/// Makes closing `s` send a reset (SO_LINGER 0). Closing never blocks
/// with a zero linger time, which is why tokio's own setter is avoided.
fn reset_on_close(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    let l = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: a plain setsockopt on a descriptor `s` owns, with a value
    // that lives for the call.
    unsafe {
        libc::setsockopt(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_LINGER, &l as *const _ as *const libc::c_void, std::mem::size_of::<libc::linger>() as libc::socklen_t);
    }
}

/// Where a redirected connection was going.
fn original_dst(s: &TcpStream) -> std::io::Result<SocketAddrV4> {
    use std::os::fd::AsRawFd;
    // SAFETY: sockaddr_in is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: SO_ORIGINAL_DST (80) writes at most `len` bytes of a
    // sockaddr_in into `addr`, which lives for the call.
    let r = unsafe { libc::getsockopt(s.as_raw_fd(), libc::SOL_IP, 80, &mut addr as *mut _ as *mut libc::c_void, &mut len) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(SocketAddrV4::new(Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)), u16::from_be(addr.sin_port)))
}

/// What the first bytes of a connection say.
#[derive(Debug, PartialEq)]
pub enum Hello {
    /// A TLS ClientHello, with its SNI if it sent one.
    Tls(Option<String>),
    /// An HTTP/1 request head, with its Host.
    Http(Option<String>),
    /// Anything else (or nothing yet).
    Other,
    /// Not complete yet: read more.
    Partial,
}

/// The server name in a complete TLS ClientHello record.
fn sni(buf: &[u8]) -> Hello {
    if buf.len() < 5 {
        return Hello::Partial;
    }
    let rec_len = u16::from_be_bytes([buf[3], buf[4]]) as usize;
    if buf.len() < 5 + rec_len {
        return Hello::Partial;
    }
    let h = &buf[5..5 + rec_len];
    let parse = || -> Option<Option<String>> {
        if *h.first()? != 1 {
            return None;
        }
        let mut at = 4 + 2 + 32; // type+len, version, random
        let sid = *h.get(at)? as usize;
        at += 1 + sid;
        let cs = u16::from_be_bytes([*h.get(at)?, *h.get(at + 1)?]) as usize;
        at += 2 + cs;
        let comp = *h.get(at)? as usize;
        at += 1 + comp;
        if at == h.len() {
            return Some(None);
        }
        let ext_len = u16::from_be_bytes([*h.get(at)?, *h.get(at + 1)?]) as usize;
        at += 2;
        let end = (at + ext_len).min(h.len());
        while at + 4 <= end {
            let ty = u16::from_be_bytes([h[at], h[at + 1]]);
            let len = u16::from_be_bytes([h[at + 2], h[at + 3]]) as usize;
            let data = h.get(at + 4..at + 4 + len)?;
            if ty == 0 {
                // server_name_list: length, then (type, length, name)*.
                let mut p = 2;
                while p + 3 <= data.len() {
                    let nlen = u16::from_be_bytes([data[p + 1], data[p + 2]]) as usize;
                    let name = data.get(p + 3..p + 3 + nlen)?;
                    if data[p] == 0 {
                        return Some(Some(String::from_utf8_lossy(name).to_ascii_lowercase()));
                    }
                    p += 3 + nlen;
                }
                return Some(None);
            }
            at += 4 + len;
        }
        Some(None)
    };
    match parse() {
        Some(name) => Hello::Tls(name),
        None => Hello::Other,
    }
}

/// The host of an HTTP request head (`Host`, or an absolute-form target),
/// without its port.
fn http_host(req: &httparse::Request<'_, '_>) -> Option<String> {
    let from_target = req.path.and_then(|p| p.split_once("://")).map(|(_, rest)| rest.split(['/', '?']).next().unwrap_or("").to_string());
    let raw = from_target
        .filter(|h| !h.is_empty())
        .or_else(|| req.headers.iter().find(|h| h.name.eq_ignore_ascii_case("host")).map(|h| String::from_utf8_lossy(h.value).trim().to_string()))?;
    let raw = raw.rsplit_once('@').map(|(_, h)| h.to_string()).unwrap_or(raw);
    let host = if raw.starts_with('[') { raw.split(']').next().unwrap_or("").trim_start_matches('[').to_string() } else { raw.split(':').next().unwrap_or("").to_string() };
    Some(host.to_ascii_lowercase())
}

pub fn classify(buf: &[u8]) -> Hello {
    if buf.is_empty() {
        return Hello::Partial;
    }
    if buf[0] == 0x16 {
        return sni(buf);
    }
    let mut headers = [httparse::EMPTY_HEADER; 100];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(_)) => Hello::Http(http_host(&req)),
        Ok(httparse::Status::Partial) => {
            // Only something that starts like a request is worth waiting for.
            let looks = buf.iter().take(16).take_while(|b| b.is_ascii_uppercase()).count();
            if looks > 0 && (looks == buf.len().min(16) || buf.get(looks) == Some(&b' ')) {
                Hello::Partial
            } else {
                Hello::Other
            }
        }
        Err(_) => Hello::Other,
    }
}

impl Egress {
    pub(super) async fn serve_proxy(self: Arc<Self>, listener: TcpListener) {
        loop {
            let (s, peer) = match listener.accept().await {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(error = %e, "egress proxy: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let me = self.clone();
            tokio::spawn(async move {
                let SocketAddr::V4(peer) = peer else { return };
                let Some(sbx) = me.sandbox(*peer.ip()) else { return };
                let _ = s.set_nodelay(true);
                if let Err(why) = me.handle(s, &sbx).await {
                    tracing::debug!(sandbox_id = %sbx.id, reason = %why, "egress connection ended");
                }
            });
        }
    }

    fn deny(&self, sbx: &SandboxEgress, dst: SocketAddrV4, why: &str) {
        self.stats.connections_denied.fetch_add(1, Ordering::Relaxed);
        tracing::info!(sandbox_id = %sbx.id, dst = %dst, reason = %why, "egress connection refused");
    }

    /// Whether `name` resolves (through the upstream servers) to `ip`;
    /// the answer is admitted for the sandbox like its own queries'.
    async fn resolves_to(&self, sbx: &SandboxEgress, name: &str, ip: Ipv4Addr) -> bool {
        let id = u16::from_be_bytes(rand_bytes());
        let Some(ans) = super::dns::forward(&self.upstreams, &super::dns::a_query(name, id), false).await else { return false };
        let recs = super::dns::a_records(&ans);
        for (a, ttl) in &recs {
            sbx.admit(*a, name, *ttl);
        }
        recs.iter().any(|(a, _)| *a == ip)
    }

    async fn handle(self: &Arc<Self>, mut client: TcpStream, sbx: &Arc<SandboxEgress>) -> Result<(), String> {
        let dst = original_dst(&client).map_err(|e| format!("no original destination: {e}"))?;
        let policy = sbx.policy();
        if self.blocked.blocked(*dst.ip()) {
            self.deny(sbx, dst, "a host or private address");
            reset_on_close(&client);
            return Err("blocked address".into());
        }
        // Read the client's first bytes, for a name to judge by, unless no
        // verdict depends on one (then a protocol where the server speaks
        // first is not kept waiting).
        let mut buf = Vec::with_capacity(4096);
        let mut hello = Hello::Partial;
        let wait = if policy.uses_names() && (policy.has_rules() || !policy.allows_address(*dst.ip())) { FIRST_BYTES_WAIT } else { Duration::ZERO };
        let deadline = tokio::time::Instant::now() + wait;
        while hello == Hello::Partial && buf.len() < MAX_HEAD {
            let mut chunk = [0u8; 8192];
            match tokio::time::timeout_at(deadline, client.read(&mut chunk)).await {
                Ok(Ok(0)) => return Ok(()),
                Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
                Ok(Err(e)) => return Err(e.to_string()),
                Err(_) => break,
            }
            hello = classify(&buf);
        }
        if hello == Hello::Partial {
            hello = Hello::Other;
        }
        let name = match &hello {
            Hello::Tls(n) | Hello::Http(n) => n.clone(),
            _ => None,
        };
        let names = sbx.names_of(*dst.ip());
        let resolved_for = match &name {
            Some(n) => names.iter().find(|r| *r == n).cloned(),
            None => names.iter().find(|r| policy.name_allowed(r)).cloned(),
        };
        let verdict = match policy.connect(*dst.ip(), name.as_deref(), resolved_for.as_deref()) {
            Verdict::AllowIfResolves(n) => {
                if self.resolves_to(sbx, &n, *dst.ip()).await {
                    Verdict::Allow
                } else {
                    Verdict::Deny(format!("{n} does not resolve to {}", dst.ip()))
                }
            }
            v => v,
        };
        if let Verdict::Deny(why) = verdict {
            self.deny(sbx, dst, &why);
            if matches!(hello, Hello::Http(_)) {
                let body = format!("blocked by the sandbox's egress policy: {why}\n");
                let resp =
                    format!("HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\nx-airlock-egress: denied\r\n\r\n{body}", body.len());
                let _ = client.write_all(resp.as_bytes()).await;
                let _ = client.shutdown().await;
            } else {
                // A reset, not a clean close: the client sees a refused
                // connection rather than a server that said nothing.
                reset_on_close(&client);
            }
            return Err(why);
        }
        self.stats.connections_allowed.fetch_add(1, Ordering::Relaxed);
        let intercept = match &hello {
            Hello::Tls(Some(n)) => policy.has_transform(n),
            _ => false,
        };
        if intercept {
            return self.intercept_tls(client, buf, dst, name.unwrap_or_default(), sbx).await;
        }
        let mut upstream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(dst)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(format!("connecting to {dst}: {e}")),
            Err(_) => return Err(format!("connecting to {dst}: timed out")),
        };
        let _ = upstream.set_nodelay(true);
        match hello {
            Hello::Http(Some(host)) => {
                // Requests are read and checked one by one; responses are
                // spliced back in the kernel.
                let (mut cr, cw) = client.split();
                let (ur, mut uw) = upstream.split();
                let forth = async {
                    let r = self.forward_requests(&mut cr, &mut uw, buf, &host, sbx).await;
                    let _ = uw.shutdown().await;
                    r
                };
                let back = async {
                    if let Ok(n) = splice_copy(ur.as_ref(), cw.as_ref()).await {
                        self.stats.bytes_in.fetch_add(n, Ordering::Relaxed);
                    }
                };
                let (r, ()) = tokio::join!(forth, back);
                r
            }
            _ => {
                upstream.write_all(&buf).await.map_err(|e| e.to_string())?;
                self.stats.bytes_out.fetch_add(buf.len() as u64, Ordering::Relaxed);
                let (cr, cw) = client.split();
                let (ur, uw) = upstream.split();
                let (out, inn) = tokio::join!(splice_copy(cr.as_ref(), uw.as_ref()), splice_copy(ur.as_ref(), cw.as_ref()));
                self.stats.bytes_out.fetch_add(*out.as_ref().unwrap_or(&0), Ordering::Relaxed);
                self.stats.bytes_in.fetch_add(*inn.as_ref().unwrap_or(&0), Ordering::Relaxed);
                out.and(inn).map(|_| ()).map_err(|e| e.to_string())
            }
        }
    }

    /// Relays an HTTP/1 connection request by request: each request's
    /// Host must be the first one's, and gets the policy's header
    /// transforms; responses flow back untouched.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn relay_http<CR, CW, UR, UW>(
        &self,
        mut cr: CR,
        mut cw: CW,
        mut ur: UR,
        mut uw: UW,
        first: Vec<u8>,
        host: String,
        sbx: &Arc<SandboxEgress>,
    ) -> Result<(), String>
    where
        CR: AsyncRead + Unpin + Send,
        CW: AsyncWrite + Unpin + Send,
        UR: AsyncRead + Unpin + Send,
        UW: AsyncWrite + Unpin + Send,
    {
        let back = async {
            let r = tokio::io::copy_buf(&mut tokio::io::BufReader::with_capacity(RELAY_BUF, &mut ur), &mut cw).await;
            let _ = cw.shutdown().await;
            if let Ok(n) = r {
                self.stats.bytes_in.fetch_add(n, Ordering::Relaxed);
            }
        };
        let forth = async {
            let r = self.forward_requests(&mut cr, &mut uw, first, &host, sbx).await;
            let _ = uw.shutdown().await;
            r
        };
        let (r, ()) = tokio::join!(forth, back);
        r
    }

    async fn forward_requests<R, W>(&self, cr: &mut R, uw: &mut W, mut buf: Vec<u8>, host: &str, sbx: &Arc<SandboxEgress>) -> Result<(), String>
    where
        R: AsyncRead + Unpin + Send,
        W: AsyncWrite + Unpin + Send,
    {
        loop {
            // One request head.
            let (head, body) = loop {
                let mut headers = [httparse::EMPTY_HEADER; 100];
                let mut req = httparse::Request::new(&mut headers);
                match req.parse(&buf) {
                    Ok(httparse::Status::Complete(len)) => {
                        let this_host = http_host(&req).unwrap_or_default();
                        if this_host != host {
                            return Err(format!("a request for {this_host:?} on a connection to {host}"));
                        }
                        let policy = sbx.policy();
                        let set = self.resolve_transform(policy.transform(host)).await.map_err(|e| format!("request to {host}: {e}"))?;
                        let head = rewrite_head(&req, &set);
                        let body = body_kind(&req);
                        buf.drain(..len);
                        break (head, body);
                    }
                    Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
                    Ok(httparse::Status::Partial) => return Err("request head too large".into()),
                    Err(e) => return Err(format!("not HTTP/1: {e}")),
                }
                let mut chunk = [0u8; 8192];
                let n = cr.read(&mut chunk).await.map_err(|e| e.to_string())?;
                if n == 0 {
                    return if buf.is_empty() { Ok(()) } else { Err("client closed mid-request".into()) };
                }
                buf.extend_from_slice(&chunk[..n]);
            };
            uw.write_all(&head).await.map_err(|e| e.to_string())?;
            self.stats.bytes_out.fetch_add(head.len() as u64, Ordering::Relaxed);
            match body {
                Body::None => {}
                Body::Length(n) => copy_exact(cr, uw, &mut buf, n).await?,
                Body::Chunked => copy_chunked(cr, uw, &mut buf).await?,
                Body::Tunnel => {
                    // An upgrade (WebSocket) or CONNECT: raw bytes from here.
                    uw.write_all(&buf).await.map_err(|e| e.to_string())?;
                    tokio::io::copy(cr, uw).await.map_err(|e| e.to_string())?;
                    return Ok(());
                }
            }
            if buf.is_empty() {
                let mut chunk = [0u8; 8192];
                let n = cr.read(&mut chunk).await.map_err(|e| e.to_string())?;
                if n == 0 {
                    return Ok(());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
        }
    }
}

/// A stream that yields `prefix` (bytes already read from it) first.
struct Prefixed<S> {
    prefix: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>, out: &mut tokio::io::ReadBuf<'_>) -> std::task::Poll<std::io::Result<()>> {
        if self.at < self.prefix.len() {
            let n = (self.prefix.len() - self.at).min(out.remaining());
            let at = self.at;
            out.put_slice(&self.prefix[at..at + n]);
            self.at += n;
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, out)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>, b: &[u8]) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, b)
    }
    fn poll_flush(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Egress {
    /// HTTPS to a host with transform rules: the sandbox's TLS ends here
    /// (a certificate for `sni` from the interception CA), the proxy opens
    /// its own TLS to the destination (checking the real certificate), and
    /// the requests in between go through `relay_http`.
    async fn intercept_tls(self: &Arc<Self>, client: TcpStream, first: Vec<u8>, dst: SocketAddrV4, sni: String, sbx: &Arc<SandboxEgress>) -> Result<(), String> {
        let Some(icpt) = self.interceptor.get() else {
            self.deny(sbx, dst, "requests to this host are rewritten, and this server has no interception CA");
            return Err("no interception CA".into());
        };
        let cfg = icpt.server_config(&sni).map_err(|e| format!("certificate for {sni}: {}", airlock_runtime::init::chain(&e)))?;
        let tls_in = tokio::time::timeout(CONNECT_TIMEOUT, tokio_rustls::TlsAcceptor::from(cfg).accept(Prefixed { prefix: first, at: 0, inner: client }))
            .await
            .map_err(|_| "TLS handshake with the sandbox timed out".to_string())?
            .map_err(|e| format!("TLS handshake with the sandbox: {e}"))?;
        let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(dst)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(format!("connecting to {dst}: {e}")),
            Err(_) => return Err(format!("connecting to {dst}: timed out")),
        };
        let _ = tcp.set_nodelay(true);
        let server_name = rustls::pki_types::ServerName::try_from(sni.clone()).map_err(|e| format!("{sni}: {e}"))?;
        let tls_out = tokio::time::timeout(CONNECT_TIMEOUT, tokio_rustls::TlsConnector::from(self.upstream_tls.clone()).connect(server_name, tcp))
            .await
            .map_err(|_| format!("TLS handshake with {sni} timed out"))?
            .map_err(|e| format!("TLS handshake with {sni} ({dst}): {e}"))?;
        let (cr, cw) = tokio::io::split(tls_in);
        let (ur, uw) = tokio::io::split(tls_out);
        self.relay_http(cr, cw, ur, uw, Vec::new(), sni, sbx).await
    }

    /// The transform's headers with their `${e2b.secrets.<name>}`
    /// placeholders filled (the values exist only here and on the wire).
    async fn resolve_transform(&self, t: Option<Vec<(String, String)>>) -> Result<Vec<(String, String)>, String> {
        let mut out = Vec::new();
        for (k, v) in t.unwrap_or_default() {
            if !v.contains("${") {
                out.push((k, v));
                continue;
            }
            let Some(secrets) = self.secrets.get() else { return Err("a header names a secret, and this server has no secret store".into()) };
            out.push((k, secrets.resolve_placeholders(&v).await.map_err(|e| e.to_string())?));
        }
        Ok(out)
    }
}

/// The request head as sent on: the policy's headers (`set`, secrets
/// resolved) replace any of the same name the sandbox sent.
fn rewrite_head(req: &httparse::Request<'_, '_>, set: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(req.method.unwrap_or("GET").as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.path.unwrap_or("/").as_bytes());
    out.extend_from_slice(if req.version == Some(0) { b" HTTP/1.0\r\n" } else { b" HTTP/1.1\r\n" });
    for h in req.headers.iter() {
        if set.iter().any(|(k, _)| k.eq_ignore_ascii_case(h.name)) {
            continue;
        }
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    for (k, v) in set {
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

enum Body {
    None,
    Length(u64),
    Chunked,
    Tunnel,
}

fn body_kind(req: &httparse::Request<'_, '_>) -> Body {
    let header = |name: &str| req.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| String::from_utf8_lossy(h.value).to_ascii_lowercase());
    if req.method == Some("CONNECT") || header("upgrade").is_some() && header("connection").is_some_and(|c| c.contains("upgrade")) {
        return Body::Tunnel;
    }
    if header("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        return Body::Chunked;
    }
    match header("content-length").and_then(|l| l.trim().parse::<u64>().ok()) {
        Some(n) => Body::Length(n),
        None => Body::None,
    }
}

/// Copies `n` body bytes: first from `buf` (already read), then from `r`.
async fn copy_exact<R, W>(r: &mut R, w: &mut W, buf: &mut Vec<u8>, mut n: u64) -> Result<(), String>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let take = (buf.len() as u64).min(n) as usize;
    w.write_all(&buf[..take]).await.map_err(|e| e.to_string())?;
    buf.drain(..take);
    n -= take as u64;
    let mut chunk = vec![0u8; 64 * 1024];
    while n > 0 {
        let want = (chunk.len() as u64).min(n) as usize;
        let got = r.read(&mut chunk[..want]).await.map_err(|e| e.to_string())?;
        if got == 0 {
            return Err("client closed mid-body".into());
        }
        w.write_all(&chunk[..got]).await.map_err(|e| e.to_string())?;
        n -= got as u64;
    }
    Ok(())
}

/// Copies a chunked body through to its last chunk and trailers.
async fn copy_chunked<R, W>(r: &mut R, w: &mut W, buf: &mut Vec<u8>) -> Result<(), String>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    async fn line<R: AsyncRead + Unpin>(r: &mut R, buf: &mut Vec<u8>) -> Result<Vec<u8>, String> {
        loop {
            if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                let l: Vec<u8> = buf.drain(..i + 2).collect();
                return Ok(l);
            }
            if buf.len() > 8192 {
                return Err("chunk header too long".into());
            }
            let mut chunk = [0u8; 4096];
            let n = r.read(&mut chunk).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("client closed mid-body".into());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }
    loop {
        let l = line(r, buf).await?;
        w.write_all(&l).await.map_err(|e| e.to_string())?;
        let size_txt = String::from_utf8_lossy(&l);
        let size = u64::from_str_radix(size_txt.trim().split(';').next().unwrap_or("").trim(), 16).map_err(|_| "bad chunk size".to_string())?;
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                let t = line(r, buf).await?;
                w.write_all(&t).await.map_err(|e| e.to_string())?;
                if t == b"\r\n" {
                    return Ok(());
                }
            }
        }
        copy_exact(r, w, buf, size + 2).await?;
    }
}

fn rand_bytes() -> [u8; 2] {
    let mut b = [0u8; 2];
    let _ = getrandom::fill(&mut b);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ClientHello with one SNI entry.
    fn client_hello(name: &str) -> Vec<u8> {
        let mut sni = vec![0u8, 0]; // list length, filled below
        sni.push(0);
        sni.extend_from_slice(&(name.len() as u16).to_be_bytes());
        sni.extend_from_slice(name.as_bytes());
        let l = (sni.len() - 2) as u16;
        sni[..2].copy_from_slice(&l.to_be_bytes());
        let mut ext = vec![0u8, 0];
        ext.extend_from_slice(&(sni.len() as u16).to_be_bytes());
        ext.extend_from_slice(&sni);
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]);
        body.push(0); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one cipher suite
        body.extend_from_slice(&[1, 0]); // null compression
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut hs = vec![1, 0, 0, 0];
        let bl = body.len() as u32;
        hs[1..4].copy_from_slice(&bl.to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        let mut rec = vec![0x16, 3, 1];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    #[test]
    fn first_bytes_name_the_destination() {
        let ch = client_hello("API.Good.test");
        assert_eq!(classify(&ch), Hello::Tls(Some("api.good.test".into())));
        assert_eq!(classify(&ch[..ch.len() - 3]), Hello::Partial, "a ClientHello split over segments waits for the rest");
        assert_eq!(classify(b"GET / HTTP/1.1\r\nHost: Evil.test:8080\r\n\r\n"), Hello::Http(Some("evil.test".into())));
        assert_eq!(classify(b"GET http://a.test/x HTTP/1.1\r\nHost: b.test\r\n\r\n"), Hello::Http(Some("a.test".into())), "an absolute target wins over Host");
        assert_eq!(classify(b"GET / HTTP/1.1\r\nHo"), Hello::Partial);
        assert_eq!(classify(b"SSH-2.0-OpenSSH\r\n"), Hello::Other);
        assert_eq!(classify(&[0x16, 3, 1, 0, 4, 9, 9, 9, 9]), Hello::Other, "garbage inside a TLS record");
    }

    #[test]
    fn the_blocklist_covers_private_and_host_space() {
        let b = Blocklist::new();
        for ip in ["10.201.0.1", "127.0.0.1", "169.254.169.254", "192.168.1.1", "172.16.0.1", "100.64.0.1", "224.0.0.1"] {
            assert!(b.blocked(ip.parse().expect("ip")), "{ip}");
        }
        assert!(!b.blocked(Ipv4Addr::new(203, 0, 113, 10)) || airlock_runtime::network::connected_subnets().iter().any(|s| s.starts_with("203.0.113.")));
        for a in local_addrs() {
            assert!(b.blocked(a), "the host's own {a}");
        }
    }
}
