//! Flow events from the kernel's own sources: the NFLOG group the drop and reject rules log
//! to (`crate::eventlog`), and ctnetlink's conntrack events for the connections our rules
//! translated.
//!
//! ```text
//!   drop/reject rule ──log group G──▶ nfnetlink_log ──▶ NFLOG socket ─┐
//!                                                                    ├─ epoll ─▶ NetfilterEvents
//!   conntrack NEW / DESTROY ──NFNLGRP_CONNTRACK_*──▶ ctnetlink socket ┘          (EventSource)
//! ```
//!
//! - **NFLOG**: the socket binds the group (`NFULNL_CFG_CMD_BIND`; one socket per group and
//!   network namespace: a second reader gets [`NetfilterError::NflogGroupBusy`]) and asks
//!   for the first [`COPY_RANGE`] bytes of each packet (network and transport headers). Each
//!   message carries the rule's prefix ([`LogPrefix`]: verdict, reason, service), the in and
//!   out interfaces (the observation point: a pod interface or the uplink of the node) and
//!   the packet, from which the 5-tuple and TCP flags are read. The packet is seen where it
//!   was dropped: after DNAT for policy drops (its destination is then the backend).
//! - **Conntrack events** (with [`EventOptions::new_connections`]): the socket joins
//!   `NFNLGRP_CONNTRACK_NEW` and `NFNLGRP_CONNTRACK_DESTROY` (the kernel's
//!   `NF_CONNTRACK_EVENTS`). An entry whose original destination is one of our frontends and
//!   that was destination-NATed is a service connection (the reply's source is the backend);
//!   one from this node's pod CIDRs that was only source-NATed is a masqueraded connection.
//!   Others (the node's own traffic, other components' NAT) are not ours and are skipped.
//! - **Names**: [`SharedNames`], replaced by the dataplane on every apply, so a reader
//!   opened before the first apply names what each apply programs; interface indexes are
//!   named on first sight (`RTM_GETLINK` in the namespace), cached until the next apply.
//! - **Loss**: a socket whose receive buffer overflowed returns `ENOBUFS` once; [`lost`]
//!   counts those overflows (each lost at least one message).
//!
//! Decoding follows the attribute layouts of `include/uapi/linux/netfilter/nfnetlink_log.h`
//! and `nfnetlink_conntrack.h`, with the attribute walker this crate already uses for
//! ctnetlink (`crate::conntrack`). The rust-netlink crate `netlink-packet-netfilter` (MIT;
//! 0.4 parses both NFLOG and conntrack messages) was considered: it would be a second
//! ctnetlink parser beside the one the stale-flow cleanup already has, and brings
//! `derive_more` 0.99 with `syn` 1 to the build; the handful of attributes read here did not
//! justify it.
//!
//! [`lost`]: dataplane_core::EventSource::lost

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dataplane_core::{
    Direction, Error, EventKind, EventOptions, EventSource, EventVerdict, FlowEvent, L4Protocol,
    ObjectName, ObservationPoint, PolicyType, Protocol, TcpFlags, Timestamp, Tuple,
};
use ipnetwork::IpNetwork;
use nix::errno::Errno;
use nix::sched::{setns, CloneFlags};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::socket::{
    bind, recv, send, setsockopt, socket, sockopt, AddressFamily, MsgFlags, NetlinkAddr, SockFlag,
    SockProtocol, SockType,
};
use nix::sys::time::TimeVal;

use crate::conntrack::{self, attrs, CtFlow, IPS_DST_NAT, IPS_SRC_NAT};
use crate::error::NetfilterError;
use crate::eventlog::LogPrefix;
use crate::nft::netlink::push_attr;

/// Bytes of each logged packet copied to the reader: an IPv6 header with a few extension
/// headers and a TCP header with options fit.
pub const COPY_RANGE: u32 = 256;
/// Receive buffer asked for each socket (with `SO_RCVBUFFORCE` when allowed): a burst of
/// events waits here while the reader is busy.
const RCVBUF: usize = 4 << 20;

// nfnetlink (include/uapi/linux/netfilter/nfnetlink.h, nfnetlink_log.h).
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const NFNL_SUBSYS_ULOG: u16 = 4;
const NFULNL_MSG_PACKET: u16 = 0;
const NFULNL_MSG_CONFIG: u16 = 1;
const NFULA_CFG_CMD: u16 = 1;
const NFULA_CFG_MODE: u16 = 2;
const NFULNL_CFG_CMD_BIND: u8 = 1;
const NFULNL_COPY_PACKET: u8 = 2;
const NFULA_TIMESTAMP: u16 = 3;
const NFULA_IFINDEX_INDEV: u16 = 4;
const NFULA_IFINDEX_OUTDEV: u16 = 5;
const NFULA_PAYLOAD: u16 = 9;
const NFULA_PREFIX: u16 = 10;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
/// `NFNLGRP_CONNTRACK_NEW` (1) and `NFNLGRP_CONNTRACK_DESTROY` (3) as a bind mask.
const CONNTRACK_GROUPS: u32 = (1 << 0) | (1 << 2);
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLMSG_ERROR: u16 = 2;

const BACKEND_OP: &str = "flow events";
/// Datagrams read from one socket before the other's turn (see `NetfilterEvents::drain`).
const DRAIN_TURN: usize = 4;

fn err(backend: &'static str, detail: impl Into<String>) -> NetfilterError {
    NetfilterError::Command {
        backend,
        program: "netlink".to_owned(),
        operation: BACKEND_OP.to_owned(),
        status: "error".to_owned(),
        stderr: detail.into(),
    }
}

/// Where an interface is, for the observation point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterfaceRole {
    /// A local endpoint's (pod's) interface.
    Pod,
    /// The node's uplink.
    Uplink,
}

/// What the reader names things with: the node, the frontends and the pods by address, the
/// interfaces by role.
#[derive(Debug, Clone, Default)]
pub struct Names {
    /// The node's name (`FlowEvent::node`).
    pub node: String,
    /// Frontend (address, port, protocol) → service.
    pub frontends: BTreeMap<(SocketAddr, Protocol), ObjectName>,
    /// Pod address → pod (local endpoints and peer pods).
    pub endpoints: BTreeMap<IpAddr, ObjectName>,
    /// Interface name → role.
    pub interfaces: BTreeMap<String, InterfaceRole>,
    /// This node's pod CIDRs (a masqueraded connection comes from them).
    pub pod_cidrs: Vec<IpNetwork>,
}

impl Names {
    /// The names of `state`: its node, frontends, endpoints and peer pods, interfaces.
    pub fn of_state(state: &dataplane_core::DesiredState) -> Self {
        let mut out = Self {
            node: state.node.name.clone(),
            frontends: conntrack::frontends(state),
            pod_cidrs: state.node.pod_cidrs.clone(),
            ..Self::default()
        };
        out.add_pods(state);
        out.interfaces
            .insert(state.node.interfaces.uplink.clone(), InterfaceRole::Uplink);
        out
    }

    /// Adds the endpoints and peer pods of `state` (by address) and the endpoints'
    /// interfaces.
    pub fn add_pods(&mut self, state: &dataplane_core::DesiredState) {
        for p in &state.pods {
            for ip in &p.ips {
                self.endpoints.insert(*ip, p.name.clone());
            }
        }
        // Local endpoints last: they are what this node knows best.
        for e in &state.endpoints {
            for ip in &e.ips {
                self.endpoints.insert(*ip, e.name.clone());
            }
            self.interfaces
                .insert(e.interface.clone(), InterfaceRole::Pod);
        }
    }
}

/// [`Names`] shared between a dataplane and the event readers it opened: the dataplane
/// replaces them on every successful apply, the readers look them up per event. A reader
/// opened before the first apply (the node agent opens its `--flow-log` reader at start)
/// names what each apply programmed from then on, not what was there when it opened.
#[derive(Debug, Clone, Default)]
pub struct SharedNames(Arc<RwLock<Versioned>>);

#[derive(Debug, Default)]
struct Versioned {
    /// Bumped on every replacement: a reader drops what it resolved from older names.
    generation: u64,
    names: Names,
}

impl SharedNames {
    /// Names shared from now on.
    pub fn new(names: Names) -> Self {
        Self(Arc::new(RwLock::new(Versioned {
            generation: 0,
            names,
        })))
    }

    /// Replaces the names every reader sees.
    pub fn set(&self, names: Names) {
        let mut v = self.0.write().unwrap_or_else(PoisonError::into_inner);
        v.generation += 1;
        v.names = names;
    }

    /// Whether a reader holds these names (else a dataplane need not compute them).
    pub fn has_readers(&self) -> bool {
        Arc::strong_count(&self.0) > 1
    }

    /// Runs `f` on the current names and their generation.
    fn with<T>(&self, f: impl FnOnce(u64, &Names) -> T) -> T {
        let v = self.0.read().unwrap_or_else(PoisonError::into_inner);
        f(v.generation, &v.names)
    }
}

impl From<Names> for SharedNames {
    fn from(names: Names) -> Self {
        Self::new(names)
    }
}

/// Interface indexes resolved at most: past it the cache starts over (pods come and go;
/// their indexes are not reused soon, so old entries only take room).
const IFINDEX_CACHE: usize = 1024;

/// The NFLOG and conntrack-event reader of one network namespace.
pub struct NetfilterEvents {
    backend: &'static str,
    nflog: OwnedFd,
    conntrack: Option<OwnedFd>,
    /// An rtnetlink socket made in the namespace, to name an interface index the first time
    /// a packet shows it (`RTM_GETLINK`): sockets answer for the namespace they were made in.
    route: OwnedFd,
    route_seq: u32,
    epoll: Epoll,
    names: SharedNames,
    /// Interface index → name (`None`: no such interface when asked), resolved lazily and
    /// bounded by [`IFINDEX_CACHE`]; cleared when the names change (a new apply may bring
    /// new pod interfaces), together with the generation it was filled under.
    ifindex: BTreeMap<u32, Option<String>>,
    ifindex_generation: u64,
    pending: VecDeque<FlowEvent>,
    lost: u64,
    buf: Vec<u8>,
}

impl std::fmt::Debug for NetfilterEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetfilterEvents")
            .field("backend", &self.backend)
            .field("conntrack", &self.conntrack.is_some())
            .field("lost", &self.lost)
            .finish_non_exhaustive()
    }
}

/// Runs `f` inside `netns` (on a thread of its own: `setns` changes only the calling
/// thread; sockets stay in the namespace they were made in).
fn in_netns<T: Send + 'static>(
    backend: &'static str,
    netns: Option<&Path>,
    f: impl FnOnce() -> Result<T, NetfilterError> + Send + 'static,
) -> Result<T, NetfilterError> {
    let Some(path) = netns.map(Path::to_path_buf) else {
        return f();
    };
    std::thread::spawn(move || {
        let ns = File::open(&path).map_err(|e| err(backend, format!("{}: {e}", path.display())))?;
        setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|e| err(backend, format!("setns: {e}")))?;
        f()
    })
    .join()
    .map_err(|_| err(backend, "netns thread panicked"))?
}

/// A netlink socket of `protocol` whose blocking reads give up after `timeout_secs`.
fn netlink_socket(
    backend: &'static str,
    protocol: SockProtocol,
    timeout_secs: i64,
) -> Result<OwnedFd, NetfilterError> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        protocol,
    )
    .map_err(|e| err(backend, format!("socket: {e}")))?;
    setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(timeout_secs, 0))
        .map_err(|e| err(backend, format!("timeout: {e}")))?;
    Ok(fd)
}

fn netfilter_socket(backend: &'static str, groups: u32) -> Result<OwnedFd, NetfilterError> {
    // A timeout for the configuration's acknowledgement; events are read with MSG_DONTWAIT.
    let fd = netlink_socket(backend, SockProtocol::NetlinkNetFilter, 2)?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, groups))
        .map_err(|e| err(backend, format!("bind: {e}")))?;
    if setsockopt(&fd, sockopt::RcvBufForce, &RCVBUF).is_err() {
        let _ = setsockopt(&fd, sockopt::RcvBuf, &RCVBUF);
    }
    Ok(fd)
}

/// An nfnetlink message: header, `nfgenmsg` (`family`, version 0, `res_id` big-endian), body.
fn nfnl_message(
    subsys: u16,
    kind: u16,
    flags: u16,
    family: u8,
    res_id: u16,
    body: &[u8],
) -> Vec<u8> {
    let mut buf = Vec::with_capacity(20 + body.len());
    buf.extend_from_slice(&((20 + body.len()) as u32).to_ne_bytes());
    buf.extend_from_slice(&((subsys << 8) | kind).to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&1u32.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf.extend_from_slice(&[family, 0]);
    buf.extend_from_slice(&res_id.to_be_bytes());
    buf.extend_from_slice(body);
    buf
}

/// The configuration that binds NFLOG `group` and asks for the packets' first
/// [`COPY_RANGE`] bytes.
pub fn nflog_bind_request(group: u16) -> [Vec<u8>; 2] {
    let mut bind_body = Vec::new();
    // struct nfulnl_msg_config_cmd { __u8 command; }
    push_attr(&mut bind_body, NFULA_CFG_CMD, &[NFULNL_CFG_CMD_BIND]);
    let mut mode_body = Vec::new();
    // struct nfulnl_msg_config_mode { __be32 copy_range; __u8 copy_mode; __u8 _pad; }
    let mut mode = COPY_RANGE.to_be_bytes().to_vec();
    mode.extend_from_slice(&[NFULNL_COPY_PACKET, 0]);
    push_attr(&mut mode_body, NFULA_CFG_MODE, &mode);
    [bind_body, mode_body].map(|body| {
        nfnl_message(
            NFNL_SUBSYS_ULOG,
            NFULNL_MSG_CONFIG,
            NLM_F_REQUEST | NLM_F_ACK,
            0,
            group,
            &body,
        )
    })
}

/// Sends `msg` and waits for its acknowledgement: 0, or the kernel's errno. Datagrams with
/// other messages that arrive first (packets logged to a group bound by the first request,
/// before the second is acknowledged) are kept in `early`, not lost.
fn request(fd: &OwnedFd, msg: &[u8], early: &mut Vec<Vec<u8>>) -> Result<(), Errno> {
    send(fd.as_raw_fd(), msg, MsgFlags::empty())?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty())?;
        let mut ack = None;
        let mut others = false;
        for (kind, _, body) in messages(&buf[..n]) {
            if kind == NLMSG_ERROR {
                let code = body
                    .get(..4)
                    .and_then(|b| b.try_into().ok())
                    .map_or(-(Errno::EPROTO as i32), i32::from_ne_bytes);
                ack = Some(code);
            } else {
                others = true;
            }
        }
        if others {
            early.push(buf[..n].to_vec());
        }
        if let Some(code) = ack {
            return if code == 0 {
                Ok(())
            } else {
                Err(Errno::from_raw(-code))
            };
        }
    }
}

/// `RTM_GETLINK` of interface `index` (`struct ifinfomsg` with only the index set).
fn getlink_request(index: u32, seq: u32) -> Vec<u8> {
    const RTM_GETLINK: u16 = 18;
    let mut buf = Vec::with_capacity(32);
    buf.extend_from_slice(&32u32.to_ne_bytes());
    buf.extend_from_slice(&RTM_GETLINK.to_ne_bytes());
    buf.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    // ifi_family, pad, ifi_type, ifi_index, ifi_flags, ifi_change.
    buf.extend_from_slice(&[0, 0, 0, 0]);
    buf.extend_from_slice(&index.to_ne_bytes());
    buf.extend_from_slice(&[0; 8]);
    buf
}

/// The interface name (`IFLA_IFNAME`) of an `RTM_NEWLINK` payload.
fn link_name(body: &[u8]) -> Option<String> {
    const IFLA_IFNAME: u16 = 3;
    attrs(body.get(16..)?)
        .find(|(k, _)| *k == IFLA_IFNAME)
        .map(|(_, a)| {
            String::from_utf8_lossy(a.split(|b| *b == 0).next().unwrap_or(a)).into_owned()
        })
}

/// The netlink messages in `buf`: (type, flags, payload after the 16-byte header).
fn messages(mut buf: &[u8]) -> impl Iterator<Item = (u16, u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 16 {
            return None;
        }
        let len = u32::from_ne_bytes(buf[..4].try_into().ok()?) as usize;
        let kind = u16::from_ne_bytes(buf[4..6].try_into().ok()?);
        let flags = u16::from_ne_bytes(buf[6..8].try_into().ok()?);
        if len < 16 || len > buf.len() {
            return None;
        }
        let body = &buf[16..len];
        buf = &buf[((len + 3) & !3).min(buf.len())..];
        Some((kind, flags, body))
    })
}

impl NetfilterEvents {
    /// Opens the reader of NFLOG `group` (and, with `options.new_connections`, of conntrack
    /// events) in `netns`, naming things with `names`.
    ///
    /// # Errors
    /// [`NetfilterError::NflogGroupBusy`] when another socket reads the group; a
    /// [`NetfilterError::Command`] when a socket cannot be made.
    pub fn open(
        backend: &'static str,
        netns: Option<&Path>,
        group: u16,
        options: &EventOptions,
        names: impl Into<SharedNames>,
    ) -> Result<Self, NetfilterError> {
        let with_conntrack = options.new_connections;
        let netns_path: Option<PathBuf> = netns.map(Path::to_path_buf);
        let (nflog, conntrack, route, early) =
            in_netns(backend, netns_path.as_deref(), move || {
                let nflog = netfilter_socket(backend, 0)?;
                let mut early = Vec::new();
                for msg in nflog_bind_request(group) {
                    match request(&nflog, &msg, &mut early) {
                        Ok(()) => {}
                        // The kernel answers EPERM when another socket owns the group's
                        // instance (`nfulnl_recv_config`: `peer_portid` differs), EBUSY when
                        // the group is bound already.
                        Err(Errno::EPERM | Errno::EBUSY) => {
                            return Err(NetfilterError::NflogGroupBusy { backend, group });
                        }
                        Err(e) => return Err(err(backend, format!("NFLOG group {group}: {e}"))),
                    }
                }
                let conntrack = if with_conntrack {
                    Some(netfilter_socket(backend, CONNTRACK_GROUPS)?)
                } else {
                    None
                };
                // A lookup answers at once; the timeout only bounds a kernel that does not.
                let route = netlink_socket(backend, SockProtocol::NetlinkRoute, 1)?;
                Ok((nflog, conntrack, route, early))
            })?;
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)
            .map_err(|e| err(backend, format!("epoll: {e}")))?;
        for fd in std::iter::once(&nflog).chain(conntrack.as_ref()) {
            epoll
                .add(fd.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, 0))
                .map_err(|e| err(backend, format!("epoll: {e}")))?;
        }
        let mut this = Self {
            backend,
            nflog,
            conntrack,
            route,
            route_seq: 0,
            epoll,
            names: names.into(),
            ifindex: BTreeMap::new(),
            ifindex_generation: 0,
            pending: VecDeque::new(),
            lost: 0,
            buf: vec![0u8; 1 << 16],
        };
        for datagram in early {
            this.decode(&datagram, true);
        }
        Ok(this)
    }

    /// [`NetfilterEvents::open`] of `config`'s namespace and group, as the trait's source.
    ///
    /// # Errors
    /// As [`NetfilterEvents::open`], as an [`Error::Kernel`].
    pub fn boxed(
        backend: &'static str,
        config: &crate::NetfilterConfig,
        options: &EventOptions,
        names: impl Into<SharedNames>,
    ) -> Result<dataplane_core::BoxEventSource, Error> {
        Ok(Box::new(Self::open(
            backend,
            config.netns.as_deref(),
            config.nflog_group,
            options,
            names,
        )?))
    }

    /// Reads what the sockets hold now (without waiting) into `pending`, taking turns: at
    /// most [`DRAIN_TURN`] datagrams from one socket before the other's turn, so a flood of
    /// drops cannot starve the conntrack socket until its buffer overflows (or the other
    /// way round).
    fn drain(&mut self, enough: usize) -> Result<(), NetfilterError> {
        let mut fds: Vec<(RawFd, bool)> = std::iter::once((self.nflog.as_raw_fd(), true))
            .chain(self.conntrack.as_ref().map(|c| (c.as_raw_fd(), false)))
            .collect();
        while self.pending.len() < enough && !fds.is_empty() {
            let mut i = 0;
            while i < fds.len() {
                let (fd, is_nflog) = fds[i];
                let mut empty = false;
                for _ in 0..DRAIN_TURN {
                    if self.pending.len() >= enough {
                        break;
                    }
                    if !self.recv_one(fd, is_nflog)? {
                        empty = true;
                        break;
                    }
                }
                if empty {
                    fds.remove(i);
                } else {
                    i += 1;
                }
            }
        }
        Ok(())
    }

    /// Reads one datagram of `fd` into `pending`: `false` when the socket had none.
    fn recv_one(&mut self, fd: RawFd, is_nflog: bool) -> Result<bool, NetfilterError> {
        loop {
            let n = match recv(fd, &mut self.buf, MsgFlags::MSG_DONTWAIT) {
                Ok(0) | Err(Errno::EAGAIN) => return Ok(false),
                Ok(n) => n,
                Err(Errno::ENOBUFS) => {
                    // The kernel dropped messages for this socket; it goes on.
                    self.lost += 1;
                    continue;
                }
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(err(self.backend, format!("recv: {e}"))),
            };
            let buf = std::mem::take(&mut self.buf);
            self.decode(&buf[..n], is_nflog);
            self.buf = buf;
            return Ok(true);
        }
    }

    /// Decodes the messages of one datagram into `pending`.
    fn decode(&mut self, datagram: &[u8], is_nflog: bool) {
        let now = Timestamp::from_unix(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
        );
        for (kind, flags, body) in messages(datagram) {
            let event = if is_nflog {
                (kind == (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET)
                    .then(|| decode_nflog(body))
                    .flatten()
                    .and_then(|p| self.nflog_event(&p, now))
            } else {
                self.conntrack_event(kind, flags, body, now)
            };
            self.pending.extend(event);
        }
    }

    /// The name of interface `index` in the reader's namespace (cached; `None` when no
    /// interface has it now).
    fn interface_name(&mut self, index: u32, generation: u64) -> Option<String> {
        if generation != self.ifindex_generation || self.ifindex.len() >= IFINDEX_CACHE {
            self.ifindex.clear();
            self.ifindex_generation = generation;
        }
        if let Some(name) = self.ifindex.get(&index) {
            return name.clone();
        }
        let name = self.resolve(index);
        self.ifindex.insert(index, name.clone());
        name
    }

    /// Asks the kernel for the name of interface `index` (`RTM_GETLINK`).
    fn resolve(&mut self, index: u32) -> Option<String> {
        const RTM_NEWLINK: u16 = 16;
        self.route_seq = self.route_seq.wrapping_add(1);
        let seq = self.route_seq;
        send(
            self.route.as_raw_fd(),
            &getlink_request(index, seq),
            MsgFlags::empty(),
        )
        .ok()?;
        let mut buf = vec![0u8; 8192];
        loop {
            let n = match recv(self.route.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
                // A timeout or an error: unnamed, and asked again only after the next apply.
                Err(_) => return None,
            };
            if n == 0 {
                return None;
            }
            let mut rest = &buf[..n];
            while rest.len() >= 16 {
                let len = u32::from_ne_bytes(rest[..4].try_into().ok()?) as usize;
                let kind = u16::from_ne_bytes([rest[4], rest[5]]);
                let got = u32::from_ne_bytes(rest[8..12].try_into().ok()?);
                if len < 16 || len > rest.len() {
                    break;
                }
                if got == seq {
                    return match kind {
                        RTM_NEWLINK => link_name(&rest[16..len]),
                        // ENODEV: gone since the packet was logged.
                        _ => None,
                    };
                }
                rest = &rest[((len + 3) & !3).min(rest.len())..];
            }
        }
    }

    fn nflog_event(&mut self, p: &NflogPacket, now: Timestamp) -> Option<FlowEvent> {
        let prefix = LogPrefix::decode(&p.prefix)?;
        let (protocol, tuple, flags) = packet_tuple(&p.payload)?;
        // Interfaces named first, outside the names' lock: a lookup waits for the kernel,
        // and an apply waits for the lock.
        let generation = self.names.with(|generation, _| generation);
        let indev = p.indev.map(|i| self.interface_name(i, generation));
        let outdev = p.outdev.and_then(|i| self.interface_name(i, generation));
        self.names.with(|_, names| {
            let mut e = FlowEvent::new(
                p.time.unwrap_or(now),
                names.node.clone(),
                EventKind::Drop,
                prefix.verdict,
                protocol,
                tuple,
            );
            e.reason = Some(prefix.reason);
            e.service = prefix.service.clone().or_else(|| {
                let proto = Protocol::from_number(protocol.number())?;
                names.frontends.get(&(tuple.destination, proto)).cloned()
            });
            (e.point, e.interface) = point_of(indev, outdev, &prefix, names);
            e.tcp_flags = flags;
            e.source_endpoint = names.endpoints.get(&tuple.source.ip()).cloned();
            e.destination_endpoint = names.endpoints.get(&tuple.destination.ip()).cloned();
            Some(e)
        })
    }

    fn conntrack_event(
        &self,
        kind: u16,
        _flags: u16,
        body: &[u8],
        now: Timestamp,
    ) -> Option<FlowEvent> {
        let kind = match kind {
            k if k == (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW => EventKind::NewConnection,
            k if k == (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE => {
                EventKind::ConnectionEnd
            }
            _ => return None,
        };
        let flow = conntrack::parse_flow(body.get(4..)?)?;
        self.names
            .with(|_, names| connection_event(names, kind, &flow, now))
    }
}

/// The observation point and interface of a logged packet, from its interfaces' names:
/// `indev` is `None` without an input interface, `Some(None)` for one without a name. A
/// packet is seen where it was dropped: on the way in (`FromPod`/`FromUplink`, its input
/// interface), except for an ingress NetworkPolicy denial, which is at the server's side
/// (`ToPod`, its output interface: where the eBPF backend reports it, on the server's
/// veth), and packets the node sent (no input interface: `ToPod`/`ToUplink` towards a known
/// interface, else `FromHost`).
pub fn point_of(
    indev: Option<Option<String>>,
    outdev: Option<String>,
    prefix: &LogPrefix,
    names: &Names,
) -> (Option<ObservationPoint>, Option<String>) {
    let role = |name: &String| names.interfaces.get(name).copied();
    let towards = |role: InterfaceRole| match role {
        InterfaceRole::Pod => ObservationPoint::ToPod,
        InterfaceRole::Uplink => ObservationPoint::ToUplink,
    };
    if prefix.policy_direction == Some(PolicyType::Ingress) {
        if let Some(name) = outdev.as_ref() {
            return (role(name).map(towards), outdev);
        }
    }
    match indev {
        None => match outdev.as_ref().and_then(role) {
            Some(r) => (Some(towards(r)), outdev),
            None => (Some(ObservationPoint::FromHost), None),
        },
        Some(None) => (None, None),
        Some(Some(name)) => {
            let point = role(&name).map(|r| match r {
                InterfaceRole::Pod => ObservationPoint::FromPod,
                InterfaceRole::Uplink => ObservationPoint::FromUplink,
            });
            (point, Some(name))
        }
    }
}

/// The event of a conntrack entry our rules translated (`None` for others): a service
/// connection (destination-NATed from one of our frontends) or a masqueraded one (only
/// source-NATed, from this node's pod CIDRs).
pub fn connection_event(
    names: &Names,
    kind: EventKind,
    flow: &CtFlow,
    time: Timestamp,
) -> Option<FlowEvent> {
    let protocol = L4Protocol::from_number(flow.protocol);
    let service =
        Protocol::from_number(flow.protocol).and_then(|p| names.frontends.get(&(flow.orig_dst, p)));
    let dnat = flow.status & IPS_DST_NAT != 0 || flow.reply_src != flow.orig_dst;
    let snat = flow.status & IPS_SRC_NAT != 0 || flow.reply_dst != flow.orig_src;
    let ours = match service {
        Some(_) => dnat,
        None => {
            snat && !dnat
                && names
                    .pod_cidrs
                    .iter()
                    .any(|c| c.contains(flow.orig_src.ip()))
        }
    };
    if !ours {
        return None;
    }
    let mut e = FlowEvent::new(
        time,
        names.node.clone(),
        kind,
        EventVerdict::Translated,
        protocol,
        Tuple::new(flow.orig_src, flow.orig_dst),
    );
    e.direction = Some(Direction::Original);
    // As the backend (or the outside server) sees it: from the reply's destination (the
    // masquerade address, or the client) to the reply's source.
    e.translated = Some(Tuple::new(flow.reply_dst, flow.reply_src));
    e.service = service.cloned();
    if service.is_some() {
        e.backend = Some(flow.reply_src);
    }
    e.source_endpoint = names.endpoints.get(&flow.orig_src.ip()).cloned();
    e.destination_endpoint = names.endpoints.get(&flow.reply_src.ip()).cloned();
    Some(e)
}

impl EventSource for NetfilterEvents {
    fn read(&mut self, out: &mut Vec<FlowEvent>, max: usize) -> Result<usize, Error> {
        if self.pending.len() < max {
            self.drain(max)?;
        }
        let n = max.min(self.pending.len());
        out.extend(self.pending.drain(..n));
        Ok(n)
    }

    fn wait(&mut self, timeout: Duration) -> Result<(), Error> {
        if !self.pending.is_empty() {
            return Ok(());
        }
        let timeout = EpollTimeout::try_from(timeout).unwrap_or(EpollTimeout::MAX);
        let mut events = [EpollEvent::empty(); 2];
        match self.epoll.wait(&mut events, timeout) {
            Ok(_) | Err(Errno::EINTR) => Ok(()),
            Err(e) => Err(err(self.backend, format!("epoll_wait: {e}")).into()),
        }
    }

    fn readiness_fd(&self) -> Option<RawFd> {
        Some(self.epoll.0.as_raw_fd())
    }

    fn lost(&self) -> u64 {
        self.lost
    }
}

/// One NFLOG packet message, the parts read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NflogPacket {
    /// The rule's prefix (without the NUL).
    pub prefix: String,
    /// The input interface's index.
    pub indev: Option<u32>,
    /// The output interface's index.
    pub outdev: Option<u32>,
    /// The packet from its network header, at most [`COPY_RANGE`] bytes.
    pub payload: Vec<u8>,
    /// The packet's timestamp, when the kernel had one.
    pub time: Option<Timestamp>,
}

/// Decodes an `NFULNL_MSG_PACKET` payload (after the netlink header: `nfgenmsg`, then the
/// attributes).
pub fn decode_nflog(body: &[u8]) -> Option<NflogPacket> {
    let mut p = NflogPacket::default();
    let be32 = |a: &[u8]| {
        a.get(..4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_be_bytes)
    };
    for (kind, a) in attrs(body.get(4..)?) {
        match kind {
            NFULA_PREFIX => {
                p.prefix =
                    String::from_utf8_lossy(a.split(|b| *b == 0).next().unwrap_or(a)).into_owned();
            }
            NFULA_IFINDEX_INDEV => p.indev = be32(a),
            NFULA_IFINDEX_OUTDEV => p.outdev = be32(a),
            NFULA_PAYLOAD => p.payload = a.to_vec(),
            NFULA_TIMESTAMP if a.len() >= 16 => {
                let sec = u64::from_be_bytes(a[..8].try_into().ok()?);
                let usec = u64::from_be_bytes(a[8..16].try_into().ok()?);
                p.time = nflog_time(sec, usec);
            }
            _ => {}
        }
    }
    Some(p)
}

/// The time of an `NFULA_TIMESTAMP` (`struct nfulnl_msg_packet_timestamp`: seconds and
/// microseconds): `None` (the reader uses the time it read the message) for no time (0) and
/// for what no kernel writes: microseconds past a second, or a time a [`Timestamp`] (u64
/// nanoseconds, up to the year 2554) cannot hold.
pub fn nflog_time(sec: u64, usec: u64) -> Option<Timestamp> {
    if sec == 0 || usec >= 1_000_000 {
        return None;
    }
    let nanos = sec
        .checked_mul(1_000_000_000)?
        .checked_add(usec.checked_mul(1_000)?)?;
    Some(Timestamp(nanos))
}

/// The protocol, addresses and ports (0 without ports) and TCP flags of an IP packet.
pub fn packet_tuple(ip: &[u8]) -> Option<(L4Protocol, Tuple, Option<TcpFlags>)> {
    // `l4` is `None` for a packet whose transport header is elsewhere (a non-first
    // fragment): its ports are 0, not whatever bytes follow.
    let (src, dst, mut proto, mut l4): (IpAddr, IpAddr, u8, Option<&[u8]>) = match ip.first()? >> 4
    {
        4 => {
            let ihl = usize::from(ip.first()? & 0x0f) * 4;
            // A header shorter than its fixed 20 bytes is malformed (the kernel drops
            // it before any hook; a decoder must not read ports out of it).
            if ihl < 20 {
                return None;
            }
            let src = Ipv4Addr::from(<[u8; 4]>::try_from(ip.get(12..16)?).ok()?);
            let dst = Ipv4Addr::from(<[u8; 4]>::try_from(ip.get(16..20)?).ok()?);
            // A non-first fragment has no transport header.
            let frag_offset = u16::from_be_bytes(ip.get(6..8)?.try_into().ok()?) & 0x1fff;
            let l4 = if frag_offset == 0 {
                Some(ip.get(ihl..)?)
            } else {
                None
            };
            (src.into(), dst.into(), *ip.get(9)?, l4)
        }
        6 => {
            let src = Ipv6Addr::from(<[u8; 16]>::try_from(ip.get(8..24)?).ok()?);
            let dst = Ipv6Addr::from(<[u8; 16]>::try_from(ip.get(24..40)?).ok()?);
            (src.into(), dst.into(), *ip.get(6)?, Some(ip.get(40..)?))
        }
        _ => return None,
    };
    if src.is_ipv6() {
        // Extension headers before the transport header (RFC 8200 4.1; the kernel's
        // `ipv6_skip_exthdr`): hop-by-hop (0), routing (43), destination options (60):
        // (length + 1) x 8 bytes; fragment (44): 8 bytes, and the transport header only
        // in the first fragment (offset 0); authentication (51): (length + 2) x 4 bytes.
        while let Some(h) = l4 {
            if !matches!(proto, 0 | 43 | 44 | 51 | 60) {
                break;
            }
            // Every extension header is at least 8 bytes; a shorter rest was cut off.
            if h.len() < 8 {
                l4 = None;
                break;
            }
            let (next, len) = (h[0], usize::from(h[1]));
            let skip = match proto {
                44 => {
                    let offset = u16::from_be_bytes([h[2], h[3]]) >> 3;
                    if offset != 0 {
                        proto = next;
                        l4 = None;
                        break;
                    }
                    8
                }
                51 => (len + 2) * 4,
                _ => (len + 1) * 8,
            };
            proto = next;
            // A header cut off by the copy range: no ports rather than invented ones.
            l4 = h.get(skip..);
        }
    }
    let protocol = L4Protocol::from_number(proto);
    let l4 = l4.unwrap_or(&[]);
    let ports = matches!(proto, 6 | 17 | 132)
        .then(|| {
            Some((
                u16::from_be_bytes(l4.get(0..2)?.try_into().ok()?),
                u16::from_be_bytes(l4.get(2..4)?.try_into().ok()?),
            ))
        })
        .flatten();
    let (sport, dport) = ports.unwrap_or((0, 0));
    let flags = if proto == 6 {
        l4.get(13).map(|f| TcpFlags(*f))
    } else {
        None
    };
    Some((
        protocol,
        Tuple::new(SocketAddr::new(src, sport), SocketAddr::new(dst, dport)),
        flags,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataplane_core::DropReason;

    const AF_INET: u8 = 2;

    /// An NFLOG message laid out as `nfnetlink_log` writes it (`__build_packet_message`:
    /// `nfgenmsg`, packet header, prefix, interfaces, payload) for a TCP SYN from
    /// 10.244.0.2:40000 to 10.96.0.40:80 (a ClusterIP without endpoints) logged in nat
    /// prerouting, in on ifindex 5. The lab tests (`tests/netfilter_events.rs`) decode the
    /// kernel's own messages.
    fn recorded_nflog() -> Vec<u8> {
        let mut body = vec![AF_INET, 0, 0x07, 0xd0]; // nfgenmsg: AF_INET, v0, group 2000
                                                     // NFULA_PACKET_HDR: hw_protocol 0x0800, hook 0 (prerouting).
        push_attr(&mut body, 1, &[0x08, 0x00, 0, 0]);
        push_attr(
            &mut body,
            NFULA_PREFIX,
            b"dp reject no-backend default/empty\0",
        );
        push_attr(&mut body, NFULA_IFINDEX_INDEV, &5u32.to_be_bytes());
        let packet: [u8; 40] = [
            0x45, 0, 0, 60, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0, 10, 244, 0, 2, 10, 96, 0, 40, //
            0x9c, 0x40, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0xa0, 0x02, 0xfa, 0xf0, 0, 0, 0, 0,
        ];
        push_attr(&mut body, NFULA_PAYLOAD, &packet);
        body
    }

    /// A whole netlink message the kernel (6.18) sent to the NFLOG reader of group 2000 in the
    /// nftables lab test (`tests/netfilter_events.rs`): pod-0-1 (10.244.0.11:41001, in on its
    /// veth) sends a TCP SYN to 10.96.0.40:80, a ClusterIP without endpoints; logged by the
    /// service's rule in nat prerouting. Recorded by printing what `recv` returned.
    const RECORDED_NFLOG: [u8; 212] = [
        0xd4, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x02, 0x00, 0x07, 0xd0, 0x08, 0x00, 0x01, 0x00, 0x08, 0x00, 0x00, 0x00, 0x27, 0x00,
        0x0a, 0x00, 0x64, 0x70, 0x20, 0x72, 0x65, 0x6a, 0x65, 0x63, 0x74, 0x20, 0x6e, 0x6f, 0x2d,
        0x62, 0x61, 0x63, 0x6b, 0x65, 0x6e, 0x64, 0x20, 0x64, 0x65, 0x66, 0x61, 0x75, 0x6c, 0x74,
        0x2f, 0x65, 0x6d, 0x70, 0x74, 0x79, 0x00, 0x00, 0x08, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00,
        0x04, 0x10, 0x00, 0x08, 0x00, 0x00, 0x06, 0x00, 0x00, 0xb6, 0x4b, 0xf0, 0x7f, 0xcc, 0x98,
        0x00, 0x00, 0x06, 0x00, 0x0f, 0x00, 0x00, 0x01, 0x00, 0x00, 0x06, 0x00, 0x11, 0x00, 0x00,
        0x0e, 0x00, 0x00, 0x12, 0x00, 0x10, 0x00, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0xb6, 0x4b,
        0xf0, 0x7f, 0xcc, 0x98, 0x08, 0x00, 0x00, 0x00, 0x14, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x6b, 0x15, 0x7b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x06, 0x15, 0xc9, 0x40, 0x00,
        0x09, 0x00, 0x45, 0x00, 0x00, 0x3c, 0xb9, 0xc6, 0x40, 0x00, 0x40, 0x06, 0x6b, 0x6f, 0x0a,
        0xf4, 0x00, 0x0b, 0x0a, 0x60, 0x00, 0x28, 0xa0, 0x29, 0x00, 0x50, 0x18, 0x5b, 0xc5, 0x07,
        0x00, 0x00, 0x00, 0x00, 0xa0, 0x02, 0xfa, 0xf0, 0x15, 0xb5, 0x00, 0x00, 0x02, 0x04, 0x05,
        0xb4, 0x04, 0x02, 0x08, 0x0a, 0xea, 0xea, 0xcd, 0xff, 0x00, 0x00, 0x00, 0x00, 0x01, 0x03,
        0x03, 0x0a,
    ];

    /// The conntrack NEW event of the same test's connection from 10.244.0.11:41004 to
    /// 10.96.0.20:80, DNAT-ed to 10.244.0.12:8080, as the kernel sent it.
    const RECORDED_CT_NEW: [u8; 196] = [
        0xc4, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x06, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x02, 0x00, 0x00, 0x00, 0x34, 0x00, 0x01, 0x80, 0x14, 0x00, 0x01, 0x80, 0x08, 0x00,
        0x01, 0x00, 0x0a, 0xf4, 0x00, 0x0b, 0x08, 0x00, 0x02, 0x00, 0x0a, 0x60, 0x00, 0x14, 0x1c,
        0x00, 0x02, 0x80, 0x05, 0x00, 0x01, 0x00, 0x06, 0x00, 0x00, 0x00, 0x06, 0x00, 0x02, 0x00,
        0xa0, 0x2c, 0x00, 0x00, 0x06, 0x00, 0x03, 0x00, 0x00, 0x50, 0x00, 0x00, 0x34, 0x00, 0x02,
        0x80, 0x14, 0x00, 0x01, 0x80, 0x08, 0x00, 0x01, 0x00, 0x0a, 0xf4, 0x00, 0x0c, 0x08, 0x00,
        0x02, 0x00, 0x0a, 0xf4, 0x00, 0x0b, 0x1c, 0x00, 0x02, 0x80, 0x05, 0x00, 0x01, 0x00, 0x06,
        0x00, 0x00, 0x00, 0x06, 0x00, 0x02, 0x00, 0x1f, 0x90, 0x00, 0x00, 0x06, 0x00, 0x03, 0x00,
        0xa0, 0x2c, 0x00, 0x00, 0x08, 0x00, 0x0c, 0x00, 0x42, 0x37, 0xa7, 0xd5, 0x08, 0x00, 0x03,
        0x00, 0x00, 0x00, 0x01, 0xa8, 0x08, 0x00, 0x07, 0x00, 0x00, 0x00, 0x00, 0x78, 0x30, 0x00,
        0x04, 0x80, 0x2c, 0x00, 0x01, 0x80, 0x05, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x00, 0x05,
        0x00, 0x02, 0x00, 0x0a, 0x00, 0x00, 0x00, 0x05, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x06, 0x00, 0x04, 0x00, 0x03, 0x00, 0x00, 0x00, 0x06, 0x00, 0x05, 0x00, 0x00, 0x00, 0x00,
        0x00,
    ];

    #[test]
    fn decodes_what_the_kernel_sent() {
        let msgs: Vec<_> = messages(&RECORDED_NFLOG).collect();
        assert_eq!(msgs.len(), 1);
        let (kind, _, body) = msgs[0];
        assert_eq!(kind, (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET);
        let p = decode_nflog(body).unwrap();
        assert_eq!(p.prefix, "dp reject no-backend default/empty");
        assert!(p.indev.is_some());
        assert_eq!(p.outdev, None);
        let (proto, tuple, flags) = packet_tuple(&p.payload).unwrap();
        assert_eq!(proto, L4Protocol::Tcp);
        assert_eq!(tuple.source, "10.244.0.11:41001".parse().unwrap());
        assert_eq!(tuple.destination, "10.96.0.40:80".parse().unwrap());
        assert_eq!(flags, Some(TcpFlags(TcpFlags::SYN)));

        let msgs: Vec<_> = messages(&RECORDED_CT_NEW).collect();
        assert_eq!(msgs.len(), 1);
        let (kind, _, body) = msgs[0];
        assert_eq!(kind, (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW);
        let f = conntrack::parse_flow(&body[4..]).unwrap();
        assert_eq!(f.protocol, 6);
        assert_eq!(f.orig_src, "10.244.0.11:41004".parse().unwrap());
        assert_eq!(f.orig_dst, "10.96.0.20:80".parse().unwrap());
        assert_eq!(f.reply_src, "10.244.0.12:8080".parse().unwrap());
        assert_eq!(f.reply_dst, "10.244.0.11:41004".parse().unwrap());
        assert_ne!(f.status & IPS_DST_NAT, 0);
        // Every truncation of both decodes without panicking.
        for n in 0..RECORDED_NFLOG.len() {
            for (_, _, body) in messages(&RECORDED_NFLOG[..n]) {
                if let Some(p) = decode_nflog(body) {
                    let _ = packet_tuple(&p.payload);
                }
            }
        }
        for n in 0..RECORDED_CT_NEW.len() {
            let _ = conntrack::parse_flow(&RECORDED_CT_NEW[4.min(n)..n]);
        }
    }

    fn names() -> Names {
        let mut n = Names {
            node: "node-0".to_owned(),
            ..Names::default()
        };
        n.frontends.insert(
            ("10.96.0.10:80".parse().unwrap(), Protocol::Tcp),
            ObjectName::new("default", "web"),
        );
        n.endpoints.insert(
            "10.244.0.2".parse().unwrap(),
            ObjectName::new("default", "client"),
        );
        n.endpoints.insert(
            "10.244.1.5".parse().unwrap(),
            ObjectName::new("default", "web-1"),
        );
        n.pod_cidrs = vec!["10.244.0.0/24".parse().unwrap()];
        n
    }

    #[test]
    fn decodes_a_logged_packet() {
        let p = decode_nflog(&recorded_nflog()).unwrap();
        assert_eq!(p.prefix, "dp reject no-backend default/empty");
        assert_eq!(p.indev, Some(5));
        assert_eq!(p.outdev, None);
        let (proto, tuple, flags) = packet_tuple(&p.payload).unwrap();
        assert_eq!(proto, L4Protocol::Tcp);
        assert_eq!(tuple.source, "10.244.0.2:40000".parse().unwrap());
        assert_eq!(tuple.destination, "10.96.0.40:80".parse().unwrap());
        assert_eq!(flags, Some(TcpFlags(TcpFlags::SYN)));
        let prefix = LogPrefix::decode(&p.prefix).unwrap();
        assert_eq!(prefix.reason, DropReason::NoBackend);
        assert_eq!(prefix.verdict, EventVerdict::Rejected);
    }

    #[test]
    fn truncated_or_foreign_packets_are_skipped() {
        let msg = recorded_nflog();
        // Every truncation decodes without panicking.
        for n in 0..msg.len() {
            if let Some(p) = decode_nflog(&msg[..n]) {
                let _ = packet_tuple(&p.payload);
            }
        }
        assert_eq!(packet_tuple(&[0x00; 20]), None);
        // UDP over IPv6 behind a hop-by-hop header.
        let mut v6 = vec![0x60, 0, 0, 0, 0, 16, 0, 64];
        v6.extend_from_slice(&"fd00::1".parse::<Ipv6Addr>().unwrap().octets());
        v6.extend_from_slice(&"fd00::2".parse::<Ipv6Addr>().unwrap().octets());
        v6.extend_from_slice(&[17, 0, 0, 0, 0, 0, 0, 0]);
        v6.extend_from_slice(&[0x13, 0x88, 0, 53, 0, 8, 0, 0]);
        let (proto, t, flags) = packet_tuple(&v6).unwrap();
        assert_eq!(proto, L4Protocol::Udp);
        assert_eq!(t.source, "[fd00::1]:5000".parse().unwrap());
        assert_eq!(t.destination.port(), 53);
        assert_eq!(flags, None);
    }

    #[test]
    fn absurd_timestamps_fall_back_to_the_read_time() {
        assert_eq!(nflog_time(0, 5), None);
        assert_eq!(nflog_time(u64::MAX, u64::MAX), None);
        assert_eq!(nflog_time(u64::MAX, 0), None);
        assert_eq!(nflog_time(1, 1_000_000), None);
        assert_eq!(
            nflog_time(1_700_000_000, 250_000),
            Some(Timestamp(1_700_000_000_250_000_000))
        );
        // As the kernel would send them, in a whole message: decoded without a panic.
        let mut body = vec![AF_INET, 0, 0x07, 0xd0];
        let mut ts = u64::MAX.to_be_bytes().to_vec();
        ts.extend_from_slice(&u64::MAX.to_be_bytes());
        push_attr(&mut body, NFULA_TIMESTAMP, &ts);
        assert_eq!(decode_nflog(&body).unwrap().time, None);
    }

    /// An IPv6 header (40 bytes) from `fd00::1` to `fd00::2` with next header `next`, then `rest`.
    fn ipv6(next: u8, rest: &[u8]) -> Vec<u8> {
        let mut v6 = vec![0x60, 0, 0, 0, 0, 0, next, 64];
        v6.extend_from_slice(&"fd00::1".parse::<Ipv6Addr>().unwrap().octets());
        v6.extend_from_slice(&"fd00::2".parse::<Ipv6Addr>().unwrap().octets());
        v6.extend_from_slice(rest);
        v6
    }

    const UDP_5000_53: [u8; 8] = [0x13, 0x88, 0, 53, 0, 8, 0, 0];

    #[test]
    fn ipv6_fragment_and_authentication_headers_are_skipped() {
        // First fragment (offset 0): the transport header follows the 8-byte header.
        let mut first = vec![17, 0, 0, 0, 0, 0, 0, 1];
        first.extend_from_slice(&UDP_5000_53);
        let (proto, t, _) = packet_tuple(&ipv6(44, &first)).unwrap();
        assert_eq!(proto, L4Protocol::Udp);
        assert_eq!((t.source.port(), t.destination.port()), (5000, 53));
        // A later fragment (offset 1, in 8-byte units: 0x0008): no transport header, no ports
        // (not the payload's first bytes read as ports).
        let mut later = vec![17, 0, 0, 8, 0, 0, 0, 1];
        later.extend_from_slice(&UDP_5000_53);
        let (proto, t, _) = packet_tuple(&ipv6(44, &later)).unwrap();
        assert_eq!(proto, L4Protocol::Udp);
        assert_eq!((t.source.port(), t.destination.port()), (0, 0));
        // AH with payload length 4: (4 + 2) x 4 = 24 bytes, then UDP.
        let mut ah = vec![17, 4];
        ah.extend_from_slice(&[0; 22]);
        ah.extend_from_slice(&UDP_5000_53);
        let (proto, t, _) = packet_tuple(&ipv6(51, &ah)).unwrap();
        assert_eq!(proto, L4Protocol::Udp);
        assert_eq!((t.source.port(), t.destination.port()), (5000, 53));
        // Hop-by-hop, then AH, then a first fragment, then TCP.
        let mut chain = vec![51, 0, 0, 0, 0, 0, 0, 0];
        chain.extend_from_slice(&[44, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        chain.extend_from_slice(&[6, 0, 0, 0, 0, 0, 0, 1]);
        chain.extend_from_slice(&[0x9c, 0x40, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02]);
        let (proto, t, flags) = packet_tuple(&ipv6(0, &chain)).unwrap();
        assert_eq!(proto, L4Protocol::Tcp);
        assert_eq!((t.source.port(), t.destination.port()), (40000, 80));
        assert_eq!(flags, Some(TcpFlags(TcpFlags::SYN)));
        // An extension header cut off by the copy range: no ports.
        let (_, t, _) = packet_tuple(&ipv6(44, &[17, 0, 0])).unwrap();
        assert_eq!(t.source.port(), 0);
    }

    #[test]
    fn an_ipv4_header_shorter_than_20_bytes_is_refused() {
        let mut packet = vec![
            0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2, //
            0x13, 0x88, 0, 53, 0, 8, 0, 0,
        ];
        assert!(packet_tuple(&packet).is_some());
        for ihl in 0..5u8 {
            packet[0] = 0x40 | ihl;
            assert_eq!(packet_tuple(&packet), None, "ihl {ihl}");
        }
    }

    #[test]
    fn the_link_request_asks_for_one_index() {
        let req = getlink_request(7, 3);
        assert_eq!(req.len(), 32);
        assert_eq!(u32::from_ne_bytes(req[..4].try_into().unwrap()), 32);
        assert_eq!(u32::from_ne_bytes(req[8..12].try_into().unwrap()), 3);
        assert_eq!(u32::from_ne_bytes(req[20..24].try_into().unwrap()), 7);
        // An RTM_NEWLINK payload: ifinfomsg, then IFLA_IFNAME.
        let mut body = vec![0u8; 16];
        push_attr(&mut body, 3, b"veth-a\0");
        assert_eq!(link_name(&body).as_deref(), Some("veth-a"));
        assert_eq!(link_name(&body[..10]), None);
    }

    #[test]
    fn an_ingress_denial_is_at_the_server() {
        let mut n = names();
        n.interfaces
            .insert("veth-client".into(), InterfaceRole::Pod);
        n.interfaces
            .insert("veth-server".into(), InterfaceRole::Pod);
        n.interfaces.insert("eth0".into(), InterfaceRole::Uplink);
        let name = |s: &str| Some(s.to_owned());
        let ingress = LogPrefix::policy_denial(PolicyType::Ingress);
        let egress = LogPrefix::policy_denial(PolicyType::Egress);
        let no_backend = LogPrefix::new(EventVerdict::Rejected, DropReason::NoBackend);
        let cases = [
            // Client pod to server pod: ingress at the server, egress at the client.
            (
                Some(name("veth-client")),
                name("veth-server"),
                &ingress,
                (Some(ObservationPoint::ToPod), name("veth-server")),
            ),
            (
                Some(name("veth-client")),
                name("veth-server"),
                &egress,
                (Some(ObservationPoint::FromPod), name("veth-client")),
            ),
            // From the uplink to a pod that denies it.
            (
                Some(name("eth0")),
                name("veth-server"),
                &ingress,
                (Some(ObservationPoint::ToPod), name("veth-server")),
            ),
            // A service drop: where it came in; an unnamed interface: no point.
            (
                Some(name("eth0")),
                None,
                &no_backend,
                (Some(ObservationPoint::FromUplink), name("eth0")),
            ),
            (Some(None), None, &no_backend, (None, None)),
            // Sent by the node.
            (
                None,
                name("eth0"),
                &no_backend,
                (Some(ObservationPoint::ToUplink), name("eth0")),
            ),
            (
                None,
                None,
                &no_backend,
                (Some(ObservationPoint::FromHost), None),
            ),
        ];
        for (indev, outdev, prefix, want) in cases {
            assert_eq!(
                point_of(indev.clone(), outdev.clone(), prefix, &n),
                want,
                "{indev:?} {outdev:?} {prefix}"
            );
        }
    }

    #[test]
    fn the_bind_request_names_the_group() {
        let [bind, mode] = nflog_bind_request(2000);
        // nlmsg type: NFNL_SUBSYS_ULOG << 8 | NFULNL_MSG_CONFIG; res_id big-endian.
        assert_eq!(u16::from_ne_bytes([bind[4], bind[5]]), 0x0401);
        assert_eq!(&bind[18..20], &2000u16.to_be_bytes());
        assert_eq!(&bind[20..], &[5, 0, 1, 0, 1, 0, 0, 0]);
        assert_eq!(&mode[24..30], &[0, 0, 1, 0, NFULNL_COPY_PACKET, 0]);
    }

    fn flow(orig: (&str, &str), reply: (&str, &str), status: u32) -> CtFlow {
        CtFlow {
            protocol: 6,
            orig_src: orig.0.parse().unwrap(),
            orig_dst: orig.1.parse().unwrap(),
            reply_src: reply.0.parse().unwrap(),
            reply_dst: reply.1.parse().unwrap(),
            status,
        }
    }

    #[test]
    fn service_connections_name_service_backend_and_pods() {
        let n = names();
        let f = flow(
            ("10.244.0.2:40000", "10.96.0.10:80"),
            ("10.244.1.5:8080", "10.244.0.2:40000"),
            IPS_DST_NAT,
        );
        let e = connection_event(&n, EventKind::NewConnection, &f, Timestamp(1)).unwrap();
        assert_eq!(e.service, Some(ObjectName::new("default", "web")));
        assert_eq!(e.backend, Some("10.244.1.5:8080".parse().unwrap()));
        assert_eq!(
            e.translated.unwrap().destination,
            "10.244.1.5:8080".parse().unwrap()
        );
        assert_eq!(
            e.source_endpoint,
            Some(ObjectName::new("default", "client"))
        );
        assert_eq!(
            e.destination_endpoint,
            Some(ObjectName::new("default", "web-1"))
        );
        assert_eq!(e.verdict, EventVerdict::Translated);
        // Masquerade of a pod's connection to the outside: ours, without a service.
        let out = flow(
            ("10.244.0.2:40000", "192.0.2.1:443"),
            ("192.0.2.1:443", "172.18.0.10:40000"),
            IPS_SRC_NAT,
        );
        let e = connection_event(&n, EventKind::ConnectionEnd, &out, Timestamp(1)).unwrap();
        assert_eq!(e.service, None);
        assert_eq!(
            e.translated.unwrap().source,
            "172.18.0.10:40000".parse().unwrap()
        );
        // Untranslated, or to someone else's frontend: not ours.
        let plain = flow(
            ("172.18.0.1:40000", "172.18.0.10:22"),
            ("172.18.0.10:22", "172.18.0.1:40000"),
            0,
        );
        assert!(connection_event(&n, EventKind::NewConnection, &plain, Timestamp(1)).is_none());
        let other = flow(
            ("172.18.0.1:40000", "172.18.0.10:8443"),
            ("10.0.0.9:443", "172.18.0.1:40000"),
            IPS_DST_NAT,
        );
        assert!(connection_event(&n, EventKind::NewConnection, &other, Timestamp(1)).is_none());
    }

    #[test]
    fn conntrack_messages_parse_through_the_shared_walker() {
        use crate::conntrack::push_nested;
        // CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_STATUS as ctnetlink writes them.
        let tuple =
            |body: &mut Vec<u8>, kind: u16, src: [u8; 4], dst: [u8; 4], sp: u16, dp: u16| {
                push_nested(body, kind, |t| {
                    push_nested(t, 1, |ip| {
                        push_attr(ip, 1, &src);
                        push_attr(ip, 2, &dst);
                    });
                    push_nested(t, 2, |p| {
                        push_attr(p, 1, &[6]);
                        push_attr(p, 2, &sp.to_be_bytes());
                        push_attr(p, 3, &dp.to_be_bytes());
                    });
                });
            };
        let mut body = Vec::new();
        tuple(&mut body, 1, [10, 244, 0, 2], [10, 96, 0, 10], 40000, 80);
        tuple(&mut body, 2, [10, 244, 1, 5], [10, 244, 0, 2], 8080, 40000);
        push_attr(&mut body, 3, &(IPS_DST_NAT | 0x8).to_be_bytes());
        let f = conntrack::parse_flow(&body).unwrap();
        assert_eq!(f.orig_dst, "10.96.0.10:80".parse().unwrap());
        assert_eq!(f.reply_src, "10.244.1.5:8080".parse().unwrap());
        assert_eq!(f.status & IPS_DST_NAT, IPS_DST_NAT);
    }
}
