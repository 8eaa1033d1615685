//! A minimal, synchronous rtnetlink client for wiring up sandbox networking.
//!
//! Each sandbox gets a veth pair: one end stays on the host, the other is
//! created directly inside the sandbox's network namespace, then addresses,
//! link state and a default route are configured. This module does exactly
//! those requests over a `NETLINK_ROUTE` socket, using nothing but `libc`, so
//! it can run in the single-threaded helper process before any async runtime
//! exists and without the cost of spawning `ip` for every step.
//!
//! A [`Netlink`] handle acts on the network namespace its socket was opened
//! in: that of the calling thread at the time of [`Netlink::open`]. Moving the
//! thread to another namespace afterwards does not move the handle.
//!
//! It deliberately does not do dumps, multicast monitoring, IPv6 or anything
//! asynchronous; every request is sent with `NLM_F_ACK` and the call blocks
//! until the kernel's acknowledgement (or error) for that request arrives.

use std::fmt;
use std::io;
use std::mem::size_of;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

// Kernel UAPI values (linux/netlink.h, linux/rtnetlink.h, linux/if_link.h,
// linux/veth.h). They are frozen ABI; they are spelled out here because
// `libc` only exports some of them for Linux (several exist there only for
// Android), and a request built from a mix would be harder to audit.
const NLMSG_HDRLEN: usize = 16;
const NLA_HDRLEN: usize = 4;
const NLA_ALIGNTO: usize = 4;
/// The top two bits of `nla_type` are flags (`NLA_F_NESTED`,
/// `NLA_F_NET_BYTEORDER`), not part of the type.
const NLA_TYPE_MASK: u16 = 0x3fff;

const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_OVERRUN: u16 = 4;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
// On an NLMSG_ERROR message these bits mean something else than on requests.
const NLM_F_CAPPED: u16 = 0x100;
const NLM_F_ACK_TLVS: u16 = 0x200;

const SOL_NETLINK: libc::c_int = 270;
const NETLINK_CAP_ACK: libc::c_int = 10;
const NETLINK_EXT_ACK: libc::c_int = 11;
const NLMSGERR_ATTR_MSG: u16 = 1;

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;

const IFLA_IFNAME: u16 = 3;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_PID: u16 = 19;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_EXT_MASK: u16 = 29;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const RTEXT_FILTER_SKIP_STATS: u32 = 1 << 3;

const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_BROADCAST: u16 = 4;

const RTA_GATEWAY: u16 = 5;
const RTA_TABLE: u16 = 15;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RTN_UNICAST: u8 = 1;

const AF_UNSPEC: u8 = 0;
const AF_INET: u8 = 2;
const IFF_UP: u32 = 0x1;
/// Interface names are at most `IFNAMSIZ - 1` bytes plus a NUL.
const IFNAMSIZ: usize = 16;

const SIZEOF_IFINFOMSG: usize = 16;

// nfnetlink and nftables (linux/netfilter/nfnetlink.h, nf_tables.h).
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFPROTO_IPV4: u8 = 2;
const NLA_F_NESTED: u16 = 0x8000;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_DATA_VALUE: u16 = 1;

/// Errors from talking rtnetlink to the kernel.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("failed to open netlink socket")]
    Socket(#[source] io::Error),
    #[error("failed to send netlink {op} request")]
    Send {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("failed to receive netlink {op} reply")]
    Recv {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// The kernel rejected the request. `detail` carries the kernel's
    /// extended-ack message when it sent one (e.g. "Invalid prefix length").
    #[error("netlink {op} failed: {}", KernelMessage { errno: *errno, detail: detail.as_deref() })]
    Kernel { op: &'static str, errno: i32, detail: Option<String> },
    #[error("malformed netlink {op} reply: {reason}")]
    Malformed { op: &'static str, reason: &'static str },
    #[error("invalid interface name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("invalid ipv4 prefix length {prefix}: must be at most 32")]
    InvalidPrefix { prefix: u8 },
}

impl NetlinkError {
    /// The object the request named does not exist (no such interface).
    pub fn is_not_found(&self) -> bool {
        matches!(self, NetlinkError::Kernel { errno, .. } if *errno == libc::ENODEV)
    }

    /// The object the request tried to create already exists (an interface
    /// name in use, an address or route already present).
    pub fn is_already_exists(&self) -> bool {
        matches!(self, NetlinkError::Kernel { errno, .. } if *errno == libc::EEXIST)
    }

    /// The kernel's errno, if the kernel is what rejected the request.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// Renders an errno as its strerror text plus the extended-ack message.
struct KernelMessage<'a> {
    errno: i32,
    detail: Option<&'a str>,
}

impl fmt::Display for KernelMessage<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", io::Error::from_raw_os_error(self.errno))?;
        if let Some(detail) = self.detail {
            write!(f, " ({detail})")?;
        }
        Ok(())
    }
}

/// Which network namespace the peer end of a veth pair is created in.
#[derive(Debug, Clone, Copy)]
enum PeerNetns {
    Pid(u32),
    Fd(RawFd),
}

/// A `NETLINK_ROUTE` socket bound to the network namespace it was opened in.
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
    /// Receive buffer, reused across requests and grown when the kernel
    /// sends a datagram larger than it.
    buf: Vec<u8>,
}

// Written by hand so that debug output does not dump the receive buffer.
impl fmt::Debug for Netlink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Netlink").field("fd", &self.fd).field("seq", &self.seq).finish_non_exhaustive()
    }
}

impl Netlink {
    /// Opens a rtnetlink socket in the calling thread's network namespace.
    pub fn open() -> Result<Self, NetlinkError> {
        Self::open_protocol(libc::NETLINK_ROUTE)
    }

    /// Opens a netfilter (nfnetlink) socket, for nftables set elements.
    pub fn open_netfilter() -> Result<Self, NetlinkError> {
        Self::open_protocol(libc::NETLINK_NETFILTER)
    }

    fn open_protocol(protocol: libc::c_int) -> Result<Self, NetlinkError> {
        // SAFETY: socket(2) takes no pointers; it returns a new fd or -1.
        let raw = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, protocol) };
        if raw < 0 {
            return Err(NetlinkError::Socket(io::Error::last_os_error()));
        }
        // SAFETY: `raw` was just returned by socket(2) and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };

        // Extended acks make the kernel say *why* it rejected a request, and
        // capped acks stop it from echoing our whole request back in every
        // ack. Both are optional (Linux 4.12 and 4.3); failing to enable them
        // only makes errors terser, so the results are deliberately ignored.
        let _ = set_int_sockopt(fd.as_fd(), NETLINK_EXT_ACK, 1);
        let _ = set_int_sockopt(fd.as_fd(), NETLINK_CAP_ACK, 1);

        Ok(Netlink { fd, seq: 0, buf: vec![0; 8192] })
    }

    /// Creates a veth pair: `host` in this handle's namespace, `peer` directly
    /// inside the network namespace of process `peer_pid`.
    ///
    /// Both ends are left down and without addresses.
    pub fn create_veth(&mut self, host: &str, peer: &str, peer_pid: u32) -> Result<(), NetlinkError> {
        self.create_veth_with(host, peer, PeerNetns::Pid(peer_pid))
    }

    /// Like [`Netlink::create_veth`], but the peer goes into the network
    /// namespace referred to by `netns` (an open `/proc/<pid>/ns/net` or a
    /// bind-mounted namespace file).
    pub fn create_veth_in_netns_fd(&mut self, host: &str, peer: &str, netns: BorrowedFd<'_>) -> Result<(), NetlinkError> {
        self.create_veth_with(host, peer, PeerNetns::Fd(netns.as_raw_fd()))
    }

    fn create_veth_with(&mut self, host: &str, peer: &str, netns: PeerNetns) -> Result<(), NetlinkError> {
        validate_name(host)?;
        validate_name(peer)?;
        let seq = self.next_seq();
        let msg = veth_request(seq, host, peer, netns);
        self.transact("create veth", seq, &msg, |_, _| Ok(()))
    }

    /// Returns the interface index of `name`.
    pub fn link_index(&mut self, name: &str) -> Result<u32, NetlinkError> {
        const OP: &str = "get link";
        validate_name(name)?;
        let seq = self.next_seq();
        let mut msg = MessageBuilder::new(RTM_GETLINK, NLM_F_REQUEST | NLM_F_ACK, seq);
        msg.push_header(&ifinfomsg(AF_UNSPEC, 0, 0, 0));
        msg.attr_str(IFLA_IFNAME, name);
        // Only the index is needed; skipping the statistics keeps the reply
        // small. Kernels that predate the flag ignore it.
        msg.attr_u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS);
        let msg = msg.finish();

        let mut index = None;
        self.transact(OP, seq, &msg, |ty, payload| {
            if ty != RTM_NEWLINK {
                return Ok(());
            }
            let raw = payload.get(4..8).ok_or(NetlinkError::Malformed { op: OP, reason: "truncated ifinfomsg" })?;
            let raw = i32::from_ne_bytes([raw[0], raw[1], raw[2], raw[3]]);
            let parsed = u32::try_from(raw).ok().filter(|&i| i > 0).ok_or(NetlinkError::Malformed { op: OP, reason: "non-positive interface index" })?;
            index = Some(parsed);
            Ok(())
        })?;
        index.ok_or(NetlinkError::Malformed { op: OP, reason: "acknowledged without a link" })
    }

    /// Sets the `IFF_UP` flag on `name` (works for `lo` too).
    pub fn set_up(&mut self, name: &str) -> Result<(), NetlinkError> {
        validate_name(name)?;
        let seq = self.next_seq();
        // RTM_NEWLINK without NLM_F_CREATE modifies an existing link, looked
        // up by IFLA_IFNAME since the index is 0; a missing one is ENODEV.
        let mut msg = MessageBuilder::new(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, seq);
        msg.push_header(&ifinfomsg(AF_UNSPEC, 0, IFF_UP, IFF_UP));
        msg.attr_str(IFLA_IFNAME, name);
        let msg = msg.finish();
        self.transact("set link up", seq, &msg, |_, _| Ok(()))
    }

    /// Adds `addr/prefix` to `name`, with the subnet's broadcast address
    /// where one exists (prefixes up to /30).
    pub fn add_ipv4(&mut self, name: &str, addr: Ipv4Addr, prefix: u8) -> Result<(), NetlinkError> {
        if prefix > 32 {
            return Err(NetlinkError::InvalidPrefix { prefix });
        }
        let index = self.link_index(name)?;
        let seq = self.next_seq();
        let msg = add_ipv4_request(seq, index, addr, prefix);
        self.transact("add address", seq, &msg, |_, _| Ok(()))
    }

    /// Adds `default via gateway` to the main routing table. The gateway must
    /// be reachable through an address already configured on an up link.
    pub fn add_default_route(&mut self, gateway: Ipv4Addr) -> Result<(), NetlinkError> {
        let seq = self.next_seq();
        let msg = default_route_request(seq, gateway);
        self.transact("add route", seq, &msg, |_, _| Ok(()))
    }

    /// Deletes the link `name`. Deleting either end of a veth pair deletes
    /// both. A missing link is reported as an error for which
    /// [`NetlinkError::is_not_found`] is true.
    pub fn delete_link(&mut self, name: &str) -> Result<(), NetlinkError> {
        validate_name(name)?;
        let seq = self.next_seq();
        let mut msg = MessageBuilder::new(RTM_DELLINK, NLM_F_REQUEST | NLM_F_ACK, seq);
        msg.push_header(&ifinfomsg(AF_UNSPEC, 0, 0, 0));
        msg.attr_str(IFLA_IFNAME, name);
        let msg = msg.finish();
        self.transact("delete link", seq, &msg, |_, _| Ok(()))
    }

    /// Deletes the link with index `index` (not a name: a name may have
    /// been given to a new link since the index was read).
    pub fn delete_link_index(&mut self, index: u32) -> Result<(), NetlinkError> {
        let seq = self.next_seq();
        let mut msg = MessageBuilder::new(RTM_DELLINK, NLM_F_REQUEST | NLM_F_ACK, seq);
        msg.push_header(&ifinfomsg(AF_UNSPEC, index as i32, 0, 0));
        let msg = msg.finish();
        self.transact("delete link", seq, &msg, |_, _| Ok(()))
    }

    /// Adds (or, with `add` false, deletes) one IPv4 address in an
    /// nftables set of an `ip` table, in one nftables transaction (a batch
    /// of one message), as `nft add element ip TABLE SET { ADDR }` does
    /// without a process. Only on a handle from `open_netfilter`. Adding an
    /// address already there is fine; deleting one that is not is ENOENT.
    pub fn set_element(&mut self, table: &str, set: &str, addr: Ipv4Addr, add: bool) -> Result<(), NetlinkError> {
        self.set_element_key(table, set, &addr.octets(), add)
    }

    /// Like [`Netlink::set_element`] with the key's bytes as given: for a
    /// concatenation of two addresses (`ipv4_addr . ipv4_addr`), both in
    /// network order, one after the other.
    pub fn set_element_key(&mut self, table: &str, set: &str, key_bytes: &[u8], add: bool) -> Result<(), NetlinkError> {
        let op = if add { "add set element" } else { "delete set element" };
        let (begin_seq, seq, end_seq) = (self.next_seq(), self.next_seq(), self.next_seq());
        // nfgenmsg: family, version, resource id (big-endian): the batch
        // messages carry the nftables subsystem as theirs.
        let nfgen = |family: u8, res_id: u16| {
            let mut h = [0u8; 4];
            h[0] = family;
            h[2..4].copy_from_slice(&res_id.to_be_bytes());
            h
        };
        let mut begin = MessageBuilder::new(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, begin_seq);
        begin.push_header(&nfgen(AF_UNSPEC, NFNL_SUBSYS_NFTABLES));
        let ty = (NFNL_SUBSYS_NFTABLES << 8) | if add { NFT_MSG_NEWSETELEM } else { NFT_MSG_DELSETELEM };
        let flags = NLM_F_REQUEST | NLM_F_ACK | if add { NLM_F_CREATE } else { 0 };
        let mut msg = MessageBuilder::new(ty, flags, seq);
        msg.push_header(&nfgen(NFPROTO_IPV4, 0));
        msg.attr_str(NFTA_SET_ELEM_LIST_TABLE, table);
        msg.attr_str(NFTA_SET_ELEM_LIST_SET, set);
        let elements = msg.begin_nested(NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED);
        let elem = msg.begin_nested(NFTA_LIST_ELEM | NLA_F_NESTED);
        let key = msg.begin_nested(NFTA_SET_ELEM_KEY | NLA_F_NESTED);
        msg.attr(NFTA_DATA_VALUE, key_bytes);
        msg.end_nested(key);
        msg.end_nested(elem);
        msg.end_nested(elements);
        let mut end = MessageBuilder::new(NFNL_MSG_BATCH_END, NLM_F_REQUEST, end_seq);
        end.push_header(&nfgen(AF_UNSPEC, NFNL_SUBSYS_NFTABLES));
        let mut batch = begin.finish();
        batch.extend_from_slice(&msg.finish());
        batch.extend_from_slice(&end.finish());
        self.transact(op, seq, &batch, |_, _| Ok(()))
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Sends one request and reads until its ack, handing every other reply
    /// to the request to `on_reply` as `(nlmsg_type, payload)`.
    fn transact(&mut self, op: &'static str, seq: u32, msg: &[u8], mut on_reply: impl FnMut(u16, &[u8]) -> Result<(), NetlinkError>) -> Result<(), NetlinkError> {
        self.send(op, msg)?;
        // Replies and the ack can come in separate datagrams (a GETLINK
        // answer is one, its ack the next), so keep receiving until the ack.
        loop {
            let len = self.recv(op)?;
            match handle_datagram(op, &self.buf[..len], seq, &mut on_reply)? {
                Progress::Acked => return Ok(()),
                Progress::Pending => continue,
            }
        }
    }

    fn send(&self, op: &'static str, msg: &[u8]) -> Result<(), NetlinkError> {
        let addr = kernel_addr();
        loop {
            // SAFETY: `msg` is valid for reads of `msg.len()` bytes and `addr`
            // is an initialised sockaddr_nl whose exact size is passed.
            let rc = unsafe { libc::sendto(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0, (&addr as *const libc::sockaddr_nl).cast(), socklen_of::<libc::sockaddr_nl>()) };
            if rc < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(NetlinkError::Send { op, source: err });
            }
            // Netlink sends are atomic datagrams, so anything short is a bug
            // in the kernel or here, never something to resume.
            if usize::try_from(rc).ok() != Some(msg.len()) {
                return Err(NetlinkError::Send { op, source: io::Error::new(io::ErrorKind::WriteZero, "short netlink send") });
            }
            return Ok(());
        }
    }

    /// Receives one datagram from the kernel into `self.buf`, returning its
    /// length. Datagrams from other sockets are dropped.
    fn recv(&mut self, op: &'static str) -> Result<usize, NetlinkError> {
        let fd = self.fd.as_raw_fd();
        let recv_err = |source| NetlinkError::Recv { op, source };
        loop {
            // Peek first with MSG_TRUNC, which reports the datagram's full
            // length, so the buffer can grow before the real read: a datagram
            // read into a buffer too small for it is truncated and lost.
            let full = retry_eintr(|| {
                // SAFETY: `self.buf` is valid for writes of its length.
                unsafe { libc::recv(fd, self.buf.as_mut_ptr().cast(), self.buf.len(), libc::MSG_PEEK | libc::MSG_TRUNC) }
            })
            .map_err(recv_err)?;
            if full > self.buf.len() {
                self.buf.resize(full, 0);
            }

            let mut from = zeroed_sockaddr_nl();
            let mut from_len = socklen_of::<libc::sockaddr_nl>();
            let len = retry_eintr(|| {
                // SAFETY: `self.buf` is valid for writes of its length, and
                // `from`/`from_len` describe a writable sockaddr_nl.
                unsafe { libc::recvfrom(fd, self.buf.as_mut_ptr().cast(), self.buf.len(), 0, (&mut from as *mut libc::sockaddr_nl).cast(), &mut from_len) }
            })
            .map_err(recv_err)?;

            // Another privileged process can unicast to our port id; only
            // the kernel (port 0) may answer our requests.
            if from.nl_pid != 0 {
                continue;
            }
            return Ok(len);
        }
    }
}

fn set_int_sockopt(fd: BorrowedFd<'_>, opt: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: `value` is a live c_int and its exact size is passed.
    let rc = unsafe { libc::setsockopt(fd.as_raw_fd(), SOL_NETLINK, opt, (&value as *const libc::c_int).cast(), socklen_of::<libc::c_int>()) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn retry_eintr(mut call: impl FnMut() -> isize) -> io::Result<usize> {
    loop {
        let rc = call();
        // A negative return is exactly the error case, so the conversion
        // failing is how errors are detected.
        match usize::try_from(rc) {
            Ok(n) => return Ok(n),
            Err(_) => {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
        }
    }
}

fn zeroed_sockaddr_nl() -> libc::sockaddr_nl {
    // SAFETY: sockaddr_nl is plain integers (its padding field is private,
    // which is why it cannot be built with a struct literal); all-zero is a
    // valid value.
    unsafe { std::mem::zeroed() }
}

/// The kernel's netlink address: port 0, no multicast groups.
fn kernel_addr() -> libc::sockaddr_nl {
    let mut addr = zeroed_sockaddr_nl();
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    addr
}

fn socklen_of<T>() -> libc::socklen_t {
    // The structures passed are a few bytes long; this cannot truncate.
    size_of::<T>() as libc::socklen_t
}

/// Checks `name` the way the kernel's `dev_valid_name` does, so a bad name
/// fails with a clear error instead of EINVAL, and so a name with a NUL in
/// it can never be silently cut short on the wire.
fn validate_name(name: &str) -> Result<(), NetlinkError> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name.len() >= IFNAMSIZ {
        Some("longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("reserved")
    } else if name.bytes().any(|b| b == 0 || b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0x0b) {
        Some("contains a NUL, '/', ':' or whitespace")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(NetlinkError::InvalidName { name: name.to_owned(), reason }),
        None => Ok(()),
    }
}

const fn nla_align(len: usize) -> usize {
    (len + NLA_ALIGNTO - 1) & !(NLA_ALIGNTO - 1)
}

/// Converts a length to the 16-bit `nla_len` field.
fn nla_len(len: usize) -> u16 {
    // Every request here is built from fixed-size headers and names validated
    // to at most 15 bytes, so no attribute comes near 64 KiB.
    u16::try_from(len).expect("netlink attribute longer than 64 KiB")
}

/// Builds one netlink message: header, fixed family header, attributes.
///
/// Every piece appended is padded to `NLA_ALIGNTO`, so the buffer length is
/// always aligned between calls, which is what nesting relies on.
struct MessageBuilder {
    buf: Vec<u8>,
}

impl MessageBuilder {
    fn new(msg_type: u16, flags: u16, seq: u32) -> Self {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_len, set by finish()
        buf.extend_from_slice(&msg_type.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        // nlmsg_pid 0: the kernel fills in the sending socket's port id.
        buf.extend_from_slice(&0u32.to_ne_bytes());
        MessageBuilder { buf }
    }

    /// Appends a fixed family header (ifinfomsg, ifaddrmsg, rtmsg).
    fn push_header(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        self.pad();
    }

    fn pad(&mut self) {
        let aligned = nla_align(self.buf.len());
        self.buf.resize(aligned, 0);
    }

    fn attr(&mut self, ty: u16, data: &[u8]) {
        self.buf.extend_from_slice(&nla_len(NLA_HDRLEN + data.len()).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn attr_u32(&mut self, ty: u16, value: u32) {
        self.attr(ty, &value.to_ne_bytes());
    }

    /// A NUL-terminated string attribute, as the kernel's NLA_STRING
    /// policies for names expect.
    fn attr_str(&mut self, ty: u16, value: &str) {
        let mut data = Vec::with_capacity(value.len() + 1);
        data.extend_from_slice(value.as_bytes());
        data.push(0);
        self.attr(ty, &data);
    }

    fn attr_ipv4(&mut self, ty: u16, addr: Ipv4Addr) {
        // Addresses travel in network byte order, unlike every other integer
        // in rtnetlink.
        self.attr(ty, &addr.octets());
    }

    /// Opens a nested attribute; its length is filled in by `end_nested`.
    ///
    /// NLA_F_NESTED is not set: iproute2 does not set it for IFLA_LINKINFO
    /// and friends, and the kernel parses these attributes with the
    /// "deprecated" parser that accepts both, so this matches what the
    /// kernel sees most often.
    fn begin_nested(&mut self, ty: u16) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        start
    }

    fn end_nested(&mut self, start: usize) {
        let len = nla_len(self.buf.len() - start);
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn finish(mut self) -> Vec<u8> {
        // Same reasoning as nla_len: requests are a few hundred bytes.
        let len = u32::try_from(self.buf.len()).expect("netlink message longer than 4 GiB");
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

/// `struct ifinfomsg`.
fn ifinfomsg(family: u8, index: i32, flags: u32, change: u32) -> [u8; SIZEOF_IFINFOMSG] {
    let mut out = [0u8; SIZEOF_IFINFOMSG];
    out[0] = family;
    // out[1] is padding, out[2..4] is ifi_type (ARPHRD_*), both 0 here.
    out[4..8].copy_from_slice(&index.to_ne_bytes());
    out[8..12].copy_from_slice(&flags.to_ne_bytes());
    out[12..16].copy_from_slice(&change.to_ne_bytes());
    out
}

/// `struct ifaddrmsg`.
fn ifaddrmsg(family: u8, prefix: u8, scope: u8, index: u32) -> [u8; 8] {
    let mut out = [0u8; 8];
    out[0] = family;
    out[1] = prefix;
    // out[2] is ifa_flags, none needed.
    out[3] = scope;
    out[4..8].copy_from_slice(&index.to_ne_bytes());
    out
}

/// `struct rtmsg` for an IPv4 unicast route in the main table.
fn rtmsg_unicast(dst_len: u8) -> [u8; 12] {
    [
        AF_INET,
        dst_len,
        0, // rtm_src_len
        0, // rtm_tos
        RT_TABLE_MAIN,
        RTPROT_BOOT,
        RT_SCOPE_UNIVERSE,
        RTN_UNICAST,
        0, // rtm_flags, 4 bytes
        0,
        0,
        0,
    ]
}

fn veth_request(seq: u32, host: &str, peer: &str, netns: PeerNetns) -> Vec<u8> {
    let mut msg = MessageBuilder::new(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, seq);
    msg.push_header(&ifinfomsg(AF_UNSPEC, 0, 0, 0));
    msg.attr_str(IFLA_IFNAME, host);
    let linkinfo = msg.begin_nested(IFLA_LINKINFO);
    msg.attr_str(IFLA_INFO_KIND, "veth");
    let data = msg.begin_nested(IFLA_INFO_DATA);
    // VETH_INFO_PEER is not a plain nest: it holds a whole ifinfomsg
    // followed by the peer's own IFLA_* attributes.
    let peer_info = msg.begin_nested(VETH_INFO_PEER);
    msg.push_header(&ifinfomsg(AF_UNSPEC, 0, 0, 0));
    msg.attr_str(IFLA_IFNAME, peer);
    match netns {
        PeerNetns::Pid(pid) => msg.attr_u32(IFLA_NET_NS_PID, pid),
        // The attribute is a u32 holding the fd number; a negative fd cannot
        // come from a BorrowedFd.
        PeerNetns::Fd(fd) => msg.attr_u32(IFLA_NET_NS_FD, fd as u32),
    }
    msg.end_nested(peer_info);
    msg.end_nested(data);
    msg.end_nested(linkinfo);
    msg.finish()
}

fn add_ipv4_request(seq: u32, index: u32, addr: Ipv4Addr, prefix: u8) -> Vec<u8> {
    let mut msg = MessageBuilder::new(RTM_NEWADDR, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, seq);
    msg.push_header(&ifaddrmsg(AF_INET, prefix, RT_SCOPE_UNIVERSE, index));
    msg.attr_ipv4(IFA_LOCAL, addr);
    // On a non-point-to-point link IFA_ADDRESS equals IFA_LOCAL; the kernel
    // needs both to derive the prefix route.
    msg.attr_ipv4(IFA_ADDRESS, addr);
    if prefix <= 30 {
        let host_mask = u32::MAX.checked_shr(u32::from(prefix)).unwrap_or(0);
        msg.attr_ipv4(IFA_BROADCAST, Ipv4Addr::from(u32::from(addr) | host_mask));
    }
    msg.finish()
}

fn default_route_request(seq: u32, gateway: Ipv4Addr) -> Vec<u8> {
    let mut msg = MessageBuilder::new(RTM_NEWROUTE, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, seq);
    msg.push_header(&rtmsg_unicast(0));
    // rtm_table is only 8 bits; RTA_TABLE is the authoritative field.
    msg.attr_u32(RTA_TABLE, u32::from(RT_TABLE_MAIN));
    msg.attr_ipv4(RTA_GATEWAY, gateway);
    msg.finish()
}

/// One netlink message inside a received datagram.
#[derive(Debug, Clone, Copy)]
struct Message<'a> {
    ty: u16,
    flags: u16,
    seq: u32,
    payload: &'a [u8],
}

/// Splits a datagram into its messages.
struct Messages<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Messages<'a> {
    type Item = Result<Message<'a>, &'static str>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let Some(header) = self.rest.get(..NLMSG_HDRLEN) else {
            self.rest = &[];
            return Some(Err("truncated message header"));
        };
        let len = u32::from_ne_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if len < NLMSG_HDRLEN || len > self.rest.len() {
            self.rest = &[];
            return Some(Err("message length out of bounds"));
        }
        let msg = Message {
            ty: u16::from_ne_bytes([header[4], header[5]]),
            flags: u16::from_ne_bytes([header[6], header[7]]),
            seq: u32::from_ne_bytes([header[8], header[9], header[10], header[11]]),
            payload: &self.rest[NLMSG_HDRLEN..len],
        };
        // The last message may omit its trailing padding.
        self.rest = self.rest.get(nla_align(len)..).unwrap_or(&[]);
        Some(Ok(msg))
    }
}

/// Splits a run of attributes into `(type, payload)` pairs, stopping at the
/// first malformed one.
struct Attrs<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Attrs<'a> {
    type Item = Result<(u16, &'a [u8]), &'static str>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let Some(header) = self.rest.get(..NLA_HDRLEN) else {
            self.rest = &[];
            return Some(Err("truncated attribute header"));
        };
        let len = usize::from(u16::from_ne_bytes([header[0], header[1]]));
        if len < NLA_HDRLEN || len > self.rest.len() {
            self.rest = &[];
            return Some(Err("attribute length out of bounds"));
        }
        let ty = u16::from_ne_bytes([header[2], header[3]]) & NLA_TYPE_MASK;
        let payload = &self.rest[NLA_HDRLEN..len];
        self.rest = self.rest.get(nla_align(len)..).unwrap_or(&[]);
        Some(Ok((ty, payload)))
    }
}

/// Whether a datagram completed the outstanding request.
#[derive(Debug, PartialEq, Eq)]
enum Progress {
    Pending,
    Acked,
}

/// Processes one received datagram for the request with sequence `seq`.
fn handle_datagram(op: &'static str, datagram: &[u8], seq: u32, on_reply: &mut impl FnMut(u16, &[u8]) -> Result<(), NetlinkError>) -> Result<Progress, NetlinkError> {
    for msg in (Messages { rest: datagram }) {
        let msg = msg.map_err(|reason| NetlinkError::Malformed { op, reason })?;
        // Anything for another sequence number is a leftover from an earlier
        // request that failed before its ack was read.
        if msg.seq != seq {
            continue;
        }
        match msg.ty {
            NLMSG_NOOP | NLMSG_DONE => {}
            NLMSG_ERROR => {
                check_ack(op, msg)?;
                return Ok(Progress::Acked);
            }
            NLMSG_OVERRUN => {
                return Err(NetlinkError::Malformed { op, reason: "kernel reported overrun" });
            }
            ty => on_reply(ty, msg.payload)?,
        }
    }
    Ok(Progress::Pending)
}

/// Interprets an NLMSG_ERROR message: error 0 is the ack, a negative error
/// is the request's errno.
fn check_ack(op: &'static str, msg: Message<'_>) -> Result<(), NetlinkError> {
    let code = msg.payload.get(..4).map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]])).ok_or(NetlinkError::Malformed { op, reason: "truncated error message" })?;
    match code {
        0 => Ok(()),
        code if code < 0 => Err(NetlinkError::Kernel { op, errno: code.saturating_neg(), detail: ext_ack_message(msg) }),
        _ => Err(NetlinkError::Malformed { op, reason: "positive error code" }),
    }
}

/// Extracts the extended-ack text (NLMSGERR_ATTR_MSG), if present.
///
/// This is best effort: the errno is what matters, so anything malformed
/// here yields `None` rather than an error.
fn ext_ack_message(msg: Message<'_>) -> Option<String> {
    if msg.flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    // Payload: i32 error, then the echoed request: just its header when
    // capped, the whole request otherwise. The TLVs follow.
    let echoed = if msg.flags & NLM_F_CAPPED != 0 {
        NLMSG_HDRLEN
    } else {
        let len = msg.payload.get(4..8)?;
        u32::from_ne_bytes([len[0], len[1], len[2], len[3]]) as usize
    };
    let tlvs = msg.payload.get(nla_align(4 + echoed)..)?;
    Attrs { rest: tlvs }
        .map_while(Result::ok)
        .find(|(ty, _)| *ty == NLMSGERR_ATTR_MSG)
        .map(|(_, text)| {
            let text = text.split(|&b| b == 0).next().unwrap_or(&[]);
            String::from_utf8_lossy(text).into_owned()
        })
        .filter(|text| !text.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_of(msg: &[u8]) -> (u32, u16, u16, u32) {
        let m = Messages { rest: msg }.next().expect("one message").expect("well formed");
        (u32::from_ne_bytes(msg[0..4].try_into().expect("4 bytes")), m.ty, m.flags, m.seq)
    }

    fn attrs(bytes: &[u8]) -> Vec<(u16, &[u8])> {
        Attrs { rest: bytes }.collect::<Result<_, _>>().expect("well-formed attributes")
    }

    #[test]
    fn attribute_is_padded_but_length_excludes_padding() {
        let mut msg = MessageBuilder::new(RTM_GETLINK, NLM_F_REQUEST, 7);
        msg.attr_str(IFLA_IFNAME, "ab");
        let bytes = msg.finish();
        // 16-byte header, then len=7 (4 header + "ab\0"), type 3, data, one pad byte.
        let mut expected = Vec::new();
        expected.extend_from_slice(&7u16.to_ne_bytes());
        expected.extend_from_slice(&IFLA_IFNAME.to_ne_bytes());
        expected.extend_from_slice(b"ab\0\0");
        assert_eq!(&bytes[NLMSG_HDRLEN..], &expected[..]);
        assert_eq!(bytes.len(), 24);
        assert_eq!(header_of(&bytes), (24, RTM_GETLINK, NLM_F_REQUEST, 7));
    }

    #[test]
    fn aligned_attribute_has_no_padding() {
        let mut msg = MessageBuilder::new(RTM_GETLINK, NLM_F_REQUEST, 1);
        msg.attr_u32(IFLA_EXT_MASK, 0x0102_0304);
        let bytes = msg.finish();
        assert_eq!(bytes.len(), NLMSG_HDRLEN + 8);
        assert_eq!(&bytes[16..18], &8u16.to_ne_bytes());
        assert_eq!(&bytes[20..24], &0x0102_0304u32.to_ne_bytes());
    }

    #[test]
    fn veth_request_nests_peer_with_ifinfomsg_and_netns() {
        let bytes = veth_request(42, "alth1", "altpeer12", PeerNetns::Pid(4321));
        assert_eq!(header_of(&bytes), (bytes.len() as u32, RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, 42));
        let body = &bytes[NLMSG_HDRLEN + SIZEOF_IFINFOMSG..];
        let top = attrs(body);
        assert_eq!(top.len(), 2);
        assert_eq!(top[0], (IFLA_IFNAME, &b"alth1\0"[..]));
        assert_eq!(top[1].0, IFLA_LINKINFO);

        // The nest's length must cover its children exactly, padding
        // included, so that it ends where the message ends.
        let linkinfo_len = usize::from(u16::from_ne_bytes([body[12], body[13]]));
        assert_eq!(12 + linkinfo_len, body.len());

        let info = attrs(top[1].1);
        assert_eq!(info.len(), 2);
        assert_eq!(info[0], (IFLA_INFO_KIND, &b"veth\0"[..]));
        assert_eq!(info[1].0, IFLA_INFO_DATA);

        let data = attrs(info[1].1);
        assert_eq!(data.len(), 1);
        assert_eq!(data[0].0, VETH_INFO_PEER);
        let peer = data[0].1;
        assert_eq!(&peer[..SIZEOF_IFINFOMSG], &[0u8; SIZEOF_IFINFOMSG]);
        let peer_attrs = attrs(&peer[SIZEOF_IFINFOMSG..]);
        assert_eq!(peer_attrs, vec![(IFLA_IFNAME, &b"altpeer12\0"[..]), (IFLA_NET_NS_PID, &4321u32.to_ne_bytes()[..]),]);
    }

    #[test]
    fn veth_request_by_fd_uses_ifla_net_ns_fd() {
        let bytes = veth_request(1, "a", "b", PeerNetns::Fd(9));
        let body = &bytes[NLMSG_HDRLEN + SIZEOF_IFINFOMSG..];
        let linkinfo = attrs(body)[1].1;
        let data = attrs(linkinfo)[1].1;
        let peer = attrs(data)[0].1;
        let peer_attrs = attrs(&peer[SIZEOF_IFINFOMSG..]);
        assert_eq!(peer_attrs[1], (IFLA_NET_NS_FD, &9u32.to_ne_bytes()[..]));
    }

    #[test]
    fn address_request_carries_network_order_addresses_and_broadcast() {
        let bytes = add_ipv4_request(3, 17, Ipv4Addr::new(10, 254, 1, 1), 30);
        let ifa = &bytes[NLMSG_HDRLEN..NLMSG_HDRLEN + 8];
        assert_eq!(ifa[0], AF_INET);
        assert_eq!(ifa[1], 30);
        assert_eq!(&ifa[4..8], &17u32.to_ne_bytes());
        let a = attrs(&bytes[NLMSG_HDRLEN + 8..]);
        assert_eq!(a, vec![(IFA_LOCAL, &[10u8, 254, 1, 1][..]), (IFA_ADDRESS, &[10u8, 254, 1, 1][..]), (IFA_BROADCAST, &[10u8, 254, 1, 3][..]),]);
        // /31 and /32 have no broadcast address.
        let bytes = add_ipv4_request(3, 17, Ipv4Addr::new(10, 254, 1, 1), 32);
        assert_eq!(attrs(&bytes[NLMSG_HDRLEN + 8..]).len(), 2);
        // /0 must not overflow the shift.
        let bytes = add_ipv4_request(3, 17, Ipv4Addr::new(10, 254, 1, 1), 0);
        assert_eq!(attrs(&bytes[NLMSG_HDRLEN + 8..])[2].1, &[255u8, 255, 255, 255][..]);
    }

    #[test]
    fn default_route_request_layout() {
        let bytes = default_route_request(5, Ipv4Addr::new(10, 254, 0, 1));
        let rtm = &bytes[NLMSG_HDRLEN..NLMSG_HDRLEN + 12];
        assert_eq!(rtm[0], AF_INET);
        assert_eq!(rtm[1], 0, "default route has dst_len 0");
        assert_eq!(rtm[4], RT_TABLE_MAIN);
        assert_eq!(rtm[7], RTN_UNICAST);
        let a = attrs(&bytes[NLMSG_HDRLEN + 12..]);
        assert_eq!(a, vec![(RTA_TABLE, &254u32.to_ne_bytes()[..]), (RTA_GATEWAY, &[10u8, 254, 0, 1][..]),]);
    }

    #[test]
    fn names_are_validated_like_the_kernel() {
        assert!(validate_name("eth0").is_ok());
        assert!(validate_name("a23456789012345").is_ok(), "15 bytes is the maximum");
        for bad in ["", "a234567890123456", ".", "..", "a/b", "a:b", "a b", "a\0b"] {
            let err = validate_name(bad).expect_err(bad);
            assert!(matches!(err, NetlinkError::InvalidName { .. }), "{bad:?}: {err}");
        }
    }

    /// Builds a kernel-style message for the parser tests.
    fn raw_message(ty: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&((NLMSG_HDRLEN + payload.len()) as u32).to_ne_bytes());
        out.extend_from_slice(&ty.to_ne_bytes());
        out.extend_from_slice(&flags.to_ne_bytes());
        out.extend_from_slice(&seq.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        out.extend_from_slice(payload);
        out.resize(nla_align(out.len()), 0);
        out
    }

    fn error_payload(code: i32) -> Vec<u8> {
        let mut p = code.to_ne_bytes().to_vec();
        p.extend_from_slice(&[0u8; NLMSG_HDRLEN]); // echoed request header
        p
    }

    #[test]
    fn reply_then_ack_across_datagrams() {
        let mut seen = Vec::new();
        let mut on_reply = |ty: u16, payload: &[u8]| {
            seen.push((ty, payload.len()));
            Ok(())
        };
        let reply = raw_message(RTM_NEWLINK, 0, 9, &ifinfomsg(0, 5, 0, 0));
        assert_eq!(handle_datagram("t", &reply, 9, &mut on_reply).expect("ok"), Progress::Pending);
        let ack = raw_message(NLMSG_ERROR, NLM_F_CAPPED, 9, &error_payload(0));
        assert_eq!(handle_datagram("t", &ack, 9, &mut on_reply).expect("ok"), Progress::Acked);
        assert_eq!(seen, vec![(RTM_NEWLINK, SIZEOF_IFINFOMSG)]);
    }

    #[test]
    fn several_messages_in_one_datagram_and_stale_sequence_skipped() {
        let mut datagram = raw_message(NLMSG_ERROR, 0, 8, &error_payload(-libc::EEXIST));
        datagram.extend(raw_message(RTM_NEWLINK, 0, 9, &ifinfomsg(0, 5, 0, 0)));
        datagram.extend(raw_message(NLMSG_ERROR, 0, 9, &error_payload(0)));
        let mut replies = 0;
        let progress = handle_datagram("t", &datagram, 9, &mut |_, _| {
            replies += 1;
            Ok(())
        })
        .expect("the stale error for seq 8 must be ignored");
        assert_eq!(progress, Progress::Acked);
        assert_eq!(replies, 1);
    }

    #[test]
    fn negative_error_becomes_kernel_errno_with_ext_ack_text() {
        let mut payload = error_payload(-libc::ENODEV);
        // NLMSGERR_ATTR_MSG "no such link\0"
        let text = b"no such link\0";
        payload.extend_from_slice(&((NLA_HDRLEN + text.len()) as u16).to_ne_bytes());
        payload.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        payload.extend_from_slice(text);
        let datagram = raw_message(NLMSG_ERROR, NLM_F_CAPPED | NLM_F_ACK_TLVS, 4, &payload);
        let err = handle_datagram("delete link", &datagram, 4, &mut |_, _| Ok(())).expect_err("an errno must surface as an error");
        assert!(err.is_not_found());
        assert_eq!(err.errno(), Some(libc::ENODEV));
        let shown = err.to_string();
        assert!(shown.starts_with("netlink delete link failed: No such device"), "{shown}");
        assert!(shown.ends_with("(no such link)"), "{shown}");
    }

    #[test]
    fn truncated_datagram_is_malformed() {
        let mut datagram = raw_message(NLMSG_ERROR, 0, 1, &error_payload(0));
        datagram.truncate(10);
        let err = handle_datagram("t", &datagram, 1, &mut |_, _| Ok(())).expect_err("truncated");
        assert!(matches!(err, NetlinkError::Malformed { .. }), "{err}");

        // A length field pointing past the end of the datagram.
        let mut datagram = raw_message(NLMSG_ERROR, 0, 1, &error_payload(0));
        datagram[0..4].copy_from_slice(&1000u32.to_ne_bytes());
        let err = handle_datagram("t", &datagram, 1, &mut |_, _| Ok(())).expect_err("overlong");
        assert!(matches!(err, NetlinkError::Malformed { .. }), "{err}");
    }

    // ---- Real kernel tests. They need root; as anyone else they pass
    // vacuously, with a note on stderr.

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        if !root {
            eprintln!("skipping: needs root");
        }
        root
    }

    fn netns_of(pid: &str) -> std::io::Result<std::path::PathBuf> {
        std::fs::read_link(format!("/proc/{pid}/ns/net"))
    }

    /// Kills the namespace-holding child and removes the host link even when
    /// an assertion fails halfway, so a failed run leaves nothing behind.
    struct Cleanup {
        child: std::process::Child,
        link: String,
    }

    impl Drop for Cleanup {
        fn drop(&mut self) {
            if let Ok(mut nl) = Netlink::open() {
                let _ = nl.delete_link(&self.link);
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn run(cmd: &str, args: &[&str]) -> std::process::Output {
        std::process::Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("running {cmd}: {e}"))
    }

    #[test]
    fn veth_peer_lands_in_child_netns_and_delete_removes_both() {
        if !is_root() {
            return;
        }
        let pid = std::process::id();
        let host = format!("alth{pid}");
        let peer = format!("altp{pid}");
        let child = std::process::Command::new("unshare").args(["--net", "sleep", "30"]).spawn().expect("spawn unshare");
        let child_pid = child.id();
        let cleanup = Cleanup { child, link: host.clone() };

        // `unshare` enters the new namespace only after it starts running;
        // until then IFLA_NET_NS_PID would resolve to *our* namespace.
        let ours = netns_of("self").expect("own netns");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match netns_of(&child_pid.to_string()) {
                Ok(ns) if ns != ours => break,
                _ if std::time::Instant::now() > deadline => {
                    panic!("child never unshared its netns")
                }
                _ => std::thread::sleep(std::time::Duration::from_millis(5)),
            }
        }

        let mut nl = Netlink::open().expect("open netlink");
        nl.create_veth(&host, &peer, child_pid).expect("create veth");

        let err = nl.create_veth(&host, &peer, child_pid).expect_err("duplicate must fail");
        assert!(err.is_already_exists(), "{err}");

        let index = nl.link_index(&host).expect("host end exists");
        // SAFETY: the name is a valid NUL-terminated C string.
        let libc_index = unsafe { libc::if_nametoindex(format!("{host}\0").as_ptr().cast()) };
        assert_eq!(index, libc_index);
        let err = nl.link_index(&peer).expect_err("peer must not be in our namespace");
        assert!(err.is_not_found(), "{err}");

        let addr = Ipv4Addr::new(10, 254, (pid % 250) as u8 + 1, 1);
        nl.add_ipv4(&host, addr, 30).expect("add address");
        nl.set_up(&host).expect("set up");
        let out = run("ip", &["-o", "addr", "show", "dev", &host]);
        let shown = String::from_utf8_lossy(&out.stdout);
        assert!(shown.contains(&format!("inet {addr}/30")), "{shown}");
        let out = run("ip", &["-o", "link", "show", "dev", &host]);
        let shown = String::from_utf8_lossy(&out.stdout);
        assert!(shown.contains(",UP"), "{shown}");

        let in_child = |name: &str| {
            let out = run("nsenter", &["-t", &child_pid.to_string(), "-n", "ip", "-o", "link"]);
            assert!(out.status.success(), "nsenter failed: {out:?}");
            String::from_utf8_lossy(&out.stdout).contains(&format!(": {name}@"))
        };
        assert!(in_child(&peer), "peer {peer} missing from child netns");

        nl.delete_link(&host).expect("delete link");
        let err = nl.link_index(&host).expect_err("host end gone");
        assert!(err.is_not_found(), "{err}");
        assert!(!run("ip", &["link", "show", "dev", &host]).status.success());
        assert!(!in_child(&peer), "deleting the host end must delete the peer");

        let err = nl.delete_link(&host).expect_err("second delete");
        assert!(err.is_not_found(), "{err}");
        drop(cleanup);
    }

    fn is_up(sock: &OwnedFd, name: &str) -> bool {
        // SAFETY: ifreq is plain data; all-zero is valid.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        // SAFETY: SIOCGIFFLAGS reads ifr_name and writes ifr_flags within
        // `req`, which lives for the duration of the call.
        let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) };
        assert_eq!(rc, 0, "SIOCGIFFLAGS {name}: {}", io::Error::last_os_error());
        // SAFETY: SIOCGIFFLAGS initialised the flags member of the union.
        let flags = unsafe { req.ifr_ifru.ifru_flags };
        i32::from(flags) & libc::IFF_UP != 0
    }

    #[test]
    fn lo_up_veth_and_default_route_inside_fresh_netns() {
        if !is_root() {
            return;
        }
        // unshare(CLONE_NEWNET) moves only the calling thread, so doing it in
        // a dedicated thread keeps the rest of the test binary in the host
        // namespace; the namespace dies with the thread.
        let result = std::thread::spawn(|| {
            // SAFETY: unshare takes no pointers.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "unshare: {}", io::Error::last_os_error());

            // SAFETY: socket(2) takes no pointers.
            let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
            assert!(raw >= 0, "socket: {}", io::Error::last_os_error());
            // SAFETY: `raw` is a fresh fd owned by nothing else.
            let sock = unsafe { OwnedFd::from_raw_fd(raw) };

            assert!(!is_up(&sock, "lo"), "lo starts down in a new netns");
            let mut nl = Netlink::open().expect("open netlink");
            nl.set_up("lo").expect("set lo up");
            assert!(is_up(&sock, "lo"), "lo must be up after set_up");

            // A veth pair with both ends in this namespace, via the fd form.
            let ns = std::fs::File::open("/proc/thread-self/ns/net").expect("open own netns");
            nl.create_veth_in_netns_fd("alttesta", "alttestb", ns.as_fd()).expect("create veth by netns fd");
            assert!(nl.link_index("alttestb").is_ok(), "peer must be in this namespace");
            nl.set_up("alttesta").expect("up a");
            nl.set_up("alttestb").expect("up b");
            nl.add_ipv4("alttesta", Ipv4Addr::new(10, 254, 200, 1), 30).expect("add address");
            let err = nl.add_ipv4("alttesta", Ipv4Addr::new(10, 254, 200, 1), 30).expect_err("duplicate address");
            assert!(err.is_already_exists(), "{err}");
            let err = nl.add_ipv4("alttesta", Ipv4Addr::new(10, 254, 200, 1), 33).expect_err("bad prefix");
            assert!(matches!(err, NetlinkError::InvalidPrefix { prefix: 33 }), "{err}");

            nl.add_default_route(Ipv4Addr::new(10, 254, 200, 2)).expect("add default route");
            let err = nl.add_default_route(Ipv4Addr::new(10, 254, 200, 2)).expect_err("duplicate route");
            assert!(err.is_already_exists(), "{err}");

            // Children inherit the spawning thread's namespaces, so `ip` sees
            // this namespace, not the host's.
            let out = run("ip", &["-4", "-o", "route", "show", "default"]);
            let shown = String::from_utf8_lossy(&out.stdout);
            assert!(shown.contains("default via 10.254.200.2 dev alttesta"), "{shown}");

            let err = nl.set_up("nosuchlink0").expect_err("missing link");
            assert!(err.is_not_found(), "{err}");
        })
        .join();
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    }
}
