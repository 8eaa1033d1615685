//! Connection admission and timeouts for the one listener: a global and a
//! per-client connection limit with a small reserve that answers `/health`
//! and refuses the rest with a 503, the header-read and idle timeouts, and
//! the stall timeout for clients that stop reading.
//!
//! What "idle" means here: the server is waiting on the client and nothing
//! moves. Between requests that is "no byte of the next request yet"
//! (the idle timeout) or "a head started but not finished" (the header
//! timeout); during a response it is "we have bytes to send and the client
//! has accepted none" (the idle timeout again). Waiting on the sandbox is
//! never idle: a quiet `commands.run`, a watch with no events or a PTY
//! nobody types into has a request in flight and nothing to send, and is
//! left alone (the SDKs' request timeouts bound it). Upgraded tunnels
//! (WebSockets, CONNECT to ports) are never closed for quietness either:
//! we cannot tell which side is supposed to talk, a long quiet WebSocket
//! is ordinary, and TCP keepalive on the socket finds dead peers instead.
//!
//! Deliberately not here: per-request limits (the API's rate limiter) and
//! anything on the per-request hot path beyond a relaxed atomic per read.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The admission limits, resolved from the configuration once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Connections served at once.
    pub max: usize,
    /// Connections served at once for one client (an IPv4 address or an
    /// IPv6 /64).
    pub per_client: usize,
    /// Connections beyond the limits that are still read, so `/health`
    /// answers and the rest get a proper 503; past it, a refusal is written
    /// without reading and the socket closed.
    pub reserve: usize,
    /// The part of the reserve one client may hold, so a flooding client
    /// cannot take it from the monitoring that needs it.
    pub reserve_per_client: usize,
}

/// The most connections a default configuration serves: beyond this an
/// operator should say what they want (each idle connection costs about
/// 14 kB, a busy one up to hyper's buffers).
const DEFAULT_MAX_CEILING: u64 = 16_384;

impl Limits {
    /// `max` and `per_client` as configured, or derived: `max` from
    /// `RLIMIT_NOFILE`, `per_client` half of it.
    pub(crate) fn new(max: Option<usize>, per_client: Option<usize>, nofile: Option<u64>) -> Self {
        let max = max.unwrap_or_else(|| default_max(nofile.unwrap_or(1024))).max(1);
        // Half: every SDK and CLI on one host shares its address (all of
        // loopback's local traffic is one client), so the cap must let one
        // heavy local client use most of the server, while a second client
        // always finds the other half.
        let per_client = per_client.unwrap_or(max / 2).clamp(1, max);
        let reserve = (max / 16).clamp(4, 64);
        Self { max, per_client, reserve, reserve_per_client: (reserve / 4).max(1) }
    }
}

/// A connection limit that leaves descriptors for everything else: each
/// proxied connection can hold two (the client's socket and the agent's),
/// and the server needs more for the store, template and sandbox files,
/// the pipes of the processes it runs and create-time agent calls.
pub(crate) fn default_max(nofile: u64) -> usize {
    let headroom = (nofile / 4).clamp(128, 4096);
    (nofile.saturating_sub(headroom) / 2).clamp(32, DEFAULT_MAX_CEILING) as usize
}

/// The process's soft `RLIMIT_NOFILE`.
pub(crate) fn nofile_limit() -> Option<u64> {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we pass and nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return None;
    }
    Some(r.rlim_cur)
}

/// Who a connection counts against: an IPv4 address, or an IPv6 /64 (one
/// host usually has a whole /64, so counting addresses would be no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum ClientKey {
    V4([u8; 4]),
    V6([u8; 8]),
}

impl ClientKey {
    pub(crate) fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(a) => Self::V4(a.octets()),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => Self::V4(v4.octets()),
                None => {
                    let o = a.octets();
                    Self::V6([o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7]])
                }
            },
        }
    }
}

/// Why a connection is not served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The server is at `max`.
    Full,
    /// This client is at `per_client`.
    Client,
}

impl Refusal {
    pub(crate) fn message(self, l: &Limits) -> String {
        match self {
            Self::Full => format!("the server is at its connection limit ({}); retry later", l.max),
            Self::Client => format!("too many connections from this client (limit {}); reuse connections or retry later", l.per_client),
        }
    }
}

/// The decision for one accepted connection.
pub(crate) enum Admission {
    Serve(Slot),
    /// Over a limit, within the reserve: read one request, answer `/health`
    /// or a 503, close.
    Refuse(Slot, Refusal),
    /// Over a limit and the reserve: write a 503 and close at once.
    Reject(Refusal),
}

#[derive(Debug, Default)]
struct Counts {
    served: usize,
    reserve: usize,
}

#[derive(Debug, Default)]
struct GateState {
    served: usize,
    reserve: usize,
    clients: HashMap<ClientKey, Counts>,
    /// The most served at once since memory was last trimmed.
    peak: usize,
    refused: u64,
    last_warned: Option<Instant>,
}

/// The connection counts. Taken once per accept and once per close, never
/// per request, and never across an await.
#[derive(Debug)]
pub(crate) struct Gate {
    pub limits: Limits,
    state: Mutex<GateState>,
}

/// Memory is trimmed once this many connections have closed since the peak.
const TRIM_AFTER_CLOSED: usize = 256;

/// Refusals are logged at most this often (a flood would flood the log).
const WARN_EVERY: Duration = Duration::from_secs(10);

impl Gate {
    pub(crate) fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Self { limits, state: Mutex::new(GateState::default()) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        // The counts stay consistent under a panic elsewhere: every update
        // is a few integer operations with nothing that can panic between.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Admission {
        let key = ClientKey::of(ip);
        let l = self.limits;
        let mut st = self.lock();
        let st = &mut *st;
        let c = st.clients.entry(key).or_default();
        if st.served < l.max && c.served < l.per_client {
            c.served += 1;
            st.served += 1;
            st.peak = st.peak.max(st.served);
            return Admission::Serve(Slot { gate: self.clone(), key, reserve: false });
        }
        let why = if st.served >= l.max { Refusal::Full } else { Refusal::Client };
        st.refused += 1;
        let admitted = st.reserve < l.reserve && c.reserve < l.reserve_per_client;
        if admitted {
            c.reserve += 1;
            st.reserve += 1;
        } else if c.served == 0 && c.reserve == 0 {
            st.clients.remove(&key);
        }
        let now = Instant::now();
        if st.last_warned.is_none_or(|t| now.duration_since(t) >= WARN_EVERY) {
            st.last_warned = Some(now);
            tracing::warn!(peer = %ip, reason = ?why, served = st.served, max = l.max, per_client = l.per_client, refused_total = st.refused, "refusing connections over the limit");
        }
        if admitted {
            Admission::Refuse(Slot { gate: self.clone(), key, reserve: true }, why)
        } else {
            Admission::Reject(why)
        }
    }

    fn release(&self, key: ClientKey, reserve: bool) {
        let mut st = self.lock();
        let st = &mut *st;
        if let Some(c) = st.clients.get_mut(&key) {
            if reserve {
                c.reserve = c.reserve.saturating_sub(1);
                st.reserve = st.reserve.saturating_sub(1);
            } else {
                c.served = c.served.saturating_sub(1);
                st.served = st.served.saturating_sub(1);
            }
            if c.served == 0 && c.reserve == 0 {
                st.clients.remove(&key);
            }
        }
        // A map that held a flood's clients keeps its capacity otherwise.
        if st.clients.is_empty() && st.clients.capacity() > 64 {
            st.clients.shrink_to(64);
        }
    }

    /// True once many connections have closed since the last peak: the
    /// moment to hand freed memory back to the system.
    pub(crate) fn take_trim_hint(&self) -> bool {
        let mut st = self.lock();
        if st.peak >= st.served + TRIM_AFTER_CLOSED {
            st.peak = st.served;
            return true;
        }
        false
    }

    #[cfg(test)]
    fn counts(&self) -> (usize, usize, usize) {
        let st = self.lock();
        (st.served, st.reserve, st.clients.len())
    }
}

/// A connection's place in the counts, given back when its socket closes
/// (it lives in `ConnIo`, so an upgraded tunnel keeps it until it ends).
#[derive(Debug)]
pub(crate) struct Slot {
    gate: Arc<Gate>,
    key: ClientKey,
    reserve: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.gate.release(self.key, self.reserve);
    }
}

const NOT_YET: u64 = u64::MAX;

/// What the socket saw, shared by `ConnIo` and the connection's `HeadTimer`.
#[derive(Debug)]
pub(crate) struct Activity {
    epoch: Instant,
    /// Set when hyper starts waiting for a request head; the first byte
    /// read after it clears this and records when it came.
    armed: AtomicBool,
    head_started_ms: AtomicU64,
}

impl Activity {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self { epoch: Instant::now(), armed: AtomicBool::new(false), head_started_ms: AtomicU64::new(NOT_YET) })
    }

    fn arm(&self) {
        self.head_started_ms.store(NOT_YET, Ordering::Relaxed);
        self.armed.store(true, Ordering::Relaxed);
    }

    fn on_read(&self) {
        // One relaxed load per read; the swap only on a head's first byte.
        if self.armed.load(Ordering::Relaxed) && self.armed.swap(false, Ordering::Relaxed) {
            let ms = self.epoch.elapsed().as_millis() as u64;
            self.head_started_ms.store(ms, Ordering::Relaxed);
        }
    }

    fn head_started(&self) -> Option<Instant> {
        match self.head_started_ms.load(Ordering::Relaxed) {
            NOT_YET => None,
            ms => Some(self.epoch + Duration::from_millis(ms)),
        }
    }
}

/// The accepted socket as hyper sees it: it records reads for the
/// header/idle timer, fails a write the client has not accepted for the
/// stall timeout, and holds the connection's slot.
pub(crate) struct ConnIo {
    /// Always `Some` until `drop` takes it for a lingering close.
    inner: Option<TcpStream>,
    act: Arc<Activity>,
    stall_after: Option<Duration>,
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
    stalled: bool,
    slot: Option<Slot>,
}

fn gone<T>() -> Poll<std::io::Result<T>> {
    Poll::Ready(Err(std::io::ErrorKind::NotConnected.into()))
}

impl ConnIo {
    pub(crate) fn new(inner: TcpStream, act: Arc<Activity>, stall_after: Option<Duration>, slot: Slot) -> Self {
        Self { inner: Some(inner), act, stall_after, stall: None, stalled: false, slot: Some(slot) }
    }

    /// A write that could not proceed: start (or check) the stall clock.
    fn pending<T>(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<T>> {
        let Some(after) = self.stall_after else {
            return Poll::Pending;
        };
        if !self.stalled {
            self.stalled = true;
            let deadline = tokio::time::Instant::now() + after;
            match &mut self.stall {
                Some(s) => s.as_mut().reset(deadline),
                None => self.stall = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        if let Some(s) = &mut self.stall {
            if s.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the client accepted no data for the idle timeout")));
            }
        }
        Poll::Pending
    }

    fn progressed<T>(&mut self, r: Poll<std::io::Result<T>>, cx: &mut Context<'_>) -> Poll<std::io::Result<T>> {
        match r {
            Poll::Pending => self.pending(cx),
            ready => {
                // The armed timer may still fire once and wake the task for
                // nothing; cheaper than re-registering on every write.
                self.stalled = false;
                ready
            }
        }
    }
}

impl AsyncRead for ConnIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let Some(inner) = &mut this.inner else { return gone() };
        let r = Pin::new(inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.act.on_read();
        }
        r
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let Some(inner) = &mut this.inner else { return gone() };
        let r = Pin::new(inner).poll_write(cx, buf);
        this.progressed(r, cx)
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let Some(inner) = &mut this.inner else { return gone() };
        let r = Pin::new(inner).poll_write_vectored(cx, bufs);
        this.progressed(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.as_ref().is_some_and(|i| i.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let Some(inner) = &mut this.inner else { return gone() };
        let r = Pin::new(inner).poll_flush(cx);
        this.progressed(r, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let Some(inner) = &mut self.get_mut().inner else { return gone() };
        Pin::new(inner).poll_shutdown(cx)
    }
}

/// A lingering close, as web servers do: closing a socket whose client
/// data is still unread makes the kernel reset the connection, and a
/// client still sending (an upload answered early, say a 413) may lose
/// the answer it was sent. So when unread data is waiting, the socket is
/// shut for writing and drained for a moment before it closes, keeping
/// its slot meanwhile. Sockets with nothing unread close at once.
impl Drop for ConnIo {
    fn drop(&mut self) {
        let Some(s) = self.inner.take() else { return };
        if unread(&s) == 0 {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(linger(s, self.slot.take()));
        }
    }
}

/// Bytes received and not yet read on `s`.
fn unread(s: &TcpStream) -> libc::c_int {
    use std::os::fd::AsRawFd;
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int into `n`; the fd is ours and open.
    if unsafe { libc::ioctl(s.as_raw_fd(), libc::FIONREAD, &mut n) } != 0 {
        return 0;
    }
    n
}

/// How long and how much a lingering close drains: enough for an upload
/// answered early on any local network (a 20 MiB upload into a 16 MiB
/// volume lost its 413 in 6 runs of 12 without lingering, 1 in 12 with a
/// 4 MiB drain, none in 16 with this), bounded so a client cannot hold
/// the slot by sending forever.
const LINGER_FOR: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 64 << 20;

async fn linger(mut s: TcpStream, _slot: Option<Slot>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = s.shutdown().await;
    let deadline = tokio::time::Instant::now() + LINGER_FOR;
    let mut buf = vec![0u8; 16 * 1024];
    let mut total = 0;
    while total < LINGER_BYTES {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => total += n,
            _ => break,
        }
    }
}

/// hyper's timer for one connection. hyper's http1 server uses its timer
/// only for the header read timeout, which it starts whenever it waits for
/// a request head: on a new connection and again after every response. So
/// that one clock can enforce both of our timeouts, its sleep ends
/// `idle` after it started while no byte has come, and `header` after
/// the first byte of the head once one has: a keep-alive connection may
/// sit quiet for the idle timeout, a slow head gets only the header
/// timeout. (A head that arrived pipelined before hyper started waiting
/// is measured by the idle timeout instead: a little more lenient.)
#[derive(Clone)]
pub(crate) struct HeadTimer {
    act: Arc<Activity>,
    header: Option<Duration>,
    idle: Option<Duration>,
}

impl HeadTimer {
    pub(crate) fn new(act: Arc<Activity>, header: Option<Duration>, idle: Option<Duration>) -> Self {
        Self { act, header, idle }
    }

    fn start(&self) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.act.arm();
        let s = HeadSleep { act: self.act.clone(), started: Instant::now(), header: self.header, idle: self.idle, sleep: None };
        Box::pin(s)
    }
}

impl hyper::rt::Timer for HeadTimer {
    fn sleep(&self, _: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.start()
    }

    fn sleep_until(&self, _: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.start()
    }
}

struct HeadSleep {
    act: Arc<Activity>,
    started: Instant,
    header: Option<Duration>,
    idle: Option<Duration>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl HeadSleep {
    /// When the wait for this head ends, as far as is known now; `None`:
    /// never (that timeout is off).
    fn deadline(&self) -> Option<Instant> {
        match self.act.head_started() {
            None => self.idle.map(|d| self.started + d),
            Some(t) => self.header.map(|d| t + d),
        }
    }
}

impl Future for HeadSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        // The first byte of a head does not wake this sleep, but hyper
        // polls it again right after reading that byte (the head is not
        // complete yet), and then the deadline moves to the header timeout.
        loop {
            let Some(deadline) = this.deadline() else {
                return Poll::Pending;
            };
            if Instant::now() >= deadline {
                return Poll::Ready(());
            }
            let wake = tokio::time::Instant::from_std(deadline);
            match &mut this.sleep {
                Some(s) if s.deadline() == wake => {}
                Some(s) => s.as_mut().reset(wake),
                None => this.sleep = Some(Box::pin(tokio::time::sleep_until(wake))),
            }
            if let Some(s) = &mut this.sleep {
                if s.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
            }
        }
    }
}

impl hyper::rt::Sleep for HeadSleep {}

/// TCP keepalive on an accepted socket, so a peer that vanished (a tunnel
/// is never closed for quietness) is found within about two minutes.
pub(crate) fn set_keepalive(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    let fd = s.as_raw_fd();
    for (level, name, v) in [
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1),
        (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 60),
        (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 15),
        (libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 4),
    ] {
        let v: libc::c_int = v;
        // SAFETY: setsockopt on a socket we own, with a c_int option value
        // and its size; failure only means no keepalive.
        unsafe { libc::setsockopt(fd, level, name, (&v as *const libc::c_int).cast(), std::mem::size_of::<libc::c_int>() as libc::socklen_t) };
    }
}

/// Gives freed heap back to the system. glibc keeps freed memory in its
/// arenas, so after a flood of connections the server's RSS would stay at
/// the flood's peak; elsewhere this is a no-op.
pub(crate) fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; no pointers change.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn defaults_leave_descriptors_for_the_rest() {
        assert_eq!(default_max(20_000), (20_000 - 4096) / 2);
        assert_eq!(default_max(1024), (1024 - 256) / 2);
        assert_eq!(default_max(1 << 20), DEFAULT_MAX_CEILING as usize);
        let l = Limits::new(None, None, Some(20_000));
        assert_eq!((l.max, l.per_client, l.reserve, l.reserve_per_client), (7952, 3976, 64, 16));
        let l = Limits::new(Some(64), Some(1000), None);
        assert_eq!((l.max, l.per_client, l.reserve, l.reserve_per_client), (64, 64, 4, 1), "a per-client cap above the global one is the global one");
    }

    #[test]
    fn clients_are_addresses_and_ipv6_slash_64s() {
        assert_eq!(ClientKey::of(ip("127.0.0.1")), ClientKey::of(ip("::ffff:127.0.0.1")));
        assert_ne!(ClientKey::of(ip("127.0.0.1")), ClientKey::of(ip("127.0.0.2")));
        assert_eq!(ClientKey::of(ip("2001:db8:1:2::1")), ClientKey::of(ip("2001:db8:1:2:ffff::9")));
        assert_ne!(ClientKey::of(ip("2001:db8:1:2::1")), ClientKey::of(ip("2001:db8:1:3::1")));
    }

    #[test]
    fn one_client_cannot_take_the_server_or_the_reserve() {
        let gate = Gate::new(Limits { max: 4, per_client: 2, reserve: 2, reserve_per_client: 1 });
        let a = ip("192.0.2.1");
        let b = ip("192.0.2.2");
        let c = ip("192.0.2.3");
        let mut held = Vec::new();
        for _ in 0..2 {
            let Admission::Serve(s) = gate.admit(a) else { panic!("a's first two are served") };
            held.push(s);
        }
        let Admission::Refuse(r, Refusal::Client) = gate.admit(a) else { panic!("a's third is refused in the reserve") };
        assert!(matches!(gate.admit(a), Admission::Reject(Refusal::Client)), "a's share of the reserve is one");
        for _ in 0..2 {
            let Admission::Serve(s) = gate.admit(b) else { panic!("b is served although a is at its cap") };
            held.push(s);
        }
        let Admission::Refuse(r2, Refusal::Full) = gate.admit(c) else { panic!("full: c gets the reserve") };
        assert!(matches!(gate.admit(ip("192.0.2.4")), Admission::Reject(Refusal::Full)), "the reserve is used up");
        assert_eq!(gate.counts(), (4, 2, 3));
        drop((r, r2));
        held.truncate(1);
        assert_eq!(gate.counts(), (1, 0, 1), "closing gives the slots back and forgets idle clients");
        assert!(matches!(gate.admit(c), Admission::Serve(_)));
        drop(held);
        assert_eq!(gate.counts(), (0, 0, 0));
    }

    #[test]
    fn memory_is_trimmed_after_many_close() {
        let gate = Gate::new(Limits::new(Some(1000), None, None));
        let held: Vec<_> = (0..300)
            .filter_map(|i| match gate.admit(IpAddr::from([192, 0, 2, (i % 200) as u8])) {
                Admission::Serve(s) => Some(s),
                _ => None,
            })
            .collect();
        assert_eq!(held.len(), 300);
        assert!(!gate.take_trim_hint(), "nothing closed yet");
        drop(held);
        assert!(gate.take_trim_hint());
        assert!(!gate.take_trim_hint(), "once per burst");
    }
}
