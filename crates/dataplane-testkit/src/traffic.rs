//! Echo-who-I-am servers and the probes that talk to them.
//!
//! A server answers every TCP request line, every UDP datagram and every SCTP request (over
//! raw sockets: the `sctp` module) with `"<name> <peer-ip>:<peer-port>\n"`: the backend's
//! name tells a test *which* backend a service picked, the peer address tells it which
//! source address survived the dataplane's NAT. One thread per served namespace polls all of
//! its sockets (TCP, UDP and raw SCTP, IPv4 and IPv6); it checks a stop flag every 50 ms, so dropping the [`Server`] closes every socket
//! and ends the thread, which releases the namespace.

use std::io::{self, BufRead, BufReader, IoSlice, IoSliceMut, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dataplane_core::Protocol;
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags};
use nix::sys::socket::{
    self, sockopt, AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag,
    SockType, SockaddrStorage,
};

use crate::netns::{NetNs, NetNsError};

mod sctp;

/// Timeout of [`TcpSession`] connects and requests unless changed.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
const POLL_INTERVAL_MS: u16 = 50;
const MAX_LINE: usize = 4096;

/// Errors of servers and probes (not outcomes: a refused probe is [`ProbeOutcome::Refused`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrafficError {
    /// Entering the namespace failed.
    #[error(transparent)]
    Netns(#[from] NetNsError),
    /// A socket operation failed in an unexpected way.
    #[error("{what}")]
    Io {
        /// What was being done, with the addresses involved.
        what: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The answer was not `"<name> <ip>:<port>"`.
    #[error("malformed answer from {from}: {reply:?}")]
    BadReply {
        /// Who answered.
        from: SocketAddr,
        /// The answer.
        reply: String,
    },
    /// An SCTP packet of a probe's association had a wrong `CRC32c`: whatever rewrote it on
    /// the way (a NAT changing a port) did not recompute the checksum. Seen by the probe in
    /// an answer, or by the server in the probe's packet (it says so in an ABORT).
    #[error("{packet}: bad CRC32c ({detail})")]
    BadChecksum {
        /// Which packet, between which addresses.
        packet: String,
        /// The checksum found and the one the bytes give.
        detail: String,
    },
    /// A [`TcpSession`] could not connect.
    #[error("tcp session to {destination}: {outcome:?}")]
    NotConnected {
        /// Where it tried to connect.
        destination: SocketAddr,
        /// What happened instead (never [`ProbeOutcome::Answered`]).
        outcome: Box<ProbeOutcome>,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> TrafficError {
    let what = what.into();
    move |source| TrafficError::Io { what, source }
}

fn errno_err(what: impl Into<String>) -> impl FnOnce(Errno) -> TrafficError {
    let what = what.into();
    move |errno| TrafficError::Io {
        what,
        source: io::Error::from(errno),
    }
}

/// A running server; stops (closing all its sockets) when dropped.
#[derive(Debug)]
pub struct Server {
    name: String,
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// The name the server answers with.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The port it listens on (TCP and UDP).
    pub fn port(&self) -> u16 {
        self.port
    }

    fn signal(&self) {
        self.stop.store(true, Ordering::Release);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.signal();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::warn!(server = %self.name, "server thread panicked");
            }
        }
    }
}

/// Stops all `servers`, signalling all of them before waiting for any.
pub(crate) fn stop_all(servers: &mut Vec<Server>) {
    for server in servers.iter() {
        server.signal();
    }
    servers.clear();
}

/// Starts TCP, UDP and SCTP servers on `port` (IPv4 and, where the namespace has IPv6,
/// IPv6) inside `netns`, answering with `name`. Returns once the sockets are bound. SCTP is
/// served over raw sockets (see the `sctp` module): an SCTP handshake to `port` and one
/// DATA request are answered the same way.
pub fn serve(netns: &NetNs, name: &str, port: u16) -> Result<Server, TrafficError> {
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = mpsc::channel();
    let thread = {
        let netns = netns.clone();
        let owned = name.to_owned();
        let stop = Arc::clone(&stop);
        std::thread::Builder::new()
            .name(format!("serve-{name}"))
            .spawn(move || {
                let name = owned;
                let sockets = netns
                    .enter()
                    .map_err(TrafficError::from)
                    .and_then(|()| Sockets::bind(port));
                match sockets {
                    Ok(sockets) => {
                        let _ = ready_tx.send(Ok(()));
                        event_loop(&name, sockets, &stop);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .map_err(io_err(format!("spawn server thread for {name}")))?
    };
    let mut server = Server {
        name: name.to_owned(),
        port,
        stop,
        thread: Some(thread),
    };
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(server),
        Ok(Err(e)) => Err(e),
        Err(_) => {
            server.thread.take();
            Err(TrafficError::Io {
                what: format!("server {name} exited before binding"),
                source: io::Error::other("server thread ended"),
            })
        }
    }
}

struct Sockets {
    listeners: Vec<TcpListener>,
    udp: Vec<UdpSocket>,
    sctp: Vec<sctp::Responder>,
}

impl Sockets {
    fn bind(port: u16) -> Result<Self, TrafficError> {
        let v4: SocketAddr = (std::net::Ipv4Addr::UNSPECIFIED, port).into();
        let v6: SocketAddr = (std::net::Ipv6Addr::UNSPECIFIED, port).into();
        let mut sockets = Sockets {
            listeners: Vec::new(),
            udp: Vec::new(),
            sctp: Vec::new(),
        };
        for addr in [v4, v6] {
            let tcp = match bound_socket(addr, SockType::Stream) {
                Ok(fd) => fd,
                // IPv6 disabled in this kernel: serve IPv4 only.
                Err(Errno::EAFNOSUPPORT) if addr.is_ipv6() => continue,
                Err(e) => return Err(errno_err(format!("bind tcp {addr}"))(e)),
            };
            socket::listen(&tcp, Backlog::MAXCONN).map_err(errno_err(format!("listen {addr}")))?;
            sockets.listeners.push(TcpListener::from(tcp));
            let udp = bound_socket(addr, SockType::Datagram)
                .map_err(errno_err(format!("bind udp {addr}")))?;
            let pktinfo = if addr.is_ipv4() {
                socket::setsockopt(&udp, sockopt::Ipv4PacketInfo, &true)
            } else {
                socket::setsockopt(&udp, sockopt::Ipv6RecvPacketInfo, &true)
            };
            pktinfo.map_err(errno_err(format!("IP_PKTINFO on udp {addr}")))?;
            sockets.udp.push(UdpSocket::from(udp));
            let raw = sctp::Responder::bind(addr.is_ipv6(), port)
                .map_err(errno_err(format!("raw sctp socket for {addr}")))?;
            sockets.sctp.push(raw);
        }
        Ok(sockets)
    }
}

/// A non-blocking socket bound to `addr` (IPv6 sockets are IPv6-only, so that IPv4 peers show
/// up as IPv4 addresses on the IPv4 socket).
fn bound_socket(addr: SocketAddr, kind: SockType) -> Result<OwnedFd, Errno> {
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket::socket(
        family,
        kind,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // Listeners may rebind while old connections linger in TIME_WAIT; UDP sockets must not
    // share a port silently, so they do without.
    if kind == SockType::Stream {
        socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    }
    if addr.is_ipv6() {
        socket::setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
    }
    socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
    Ok(fd)
}

struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    input: Vec<u8>,
    output: Vec<u8>,
    eof: bool,
}

impl Conn {
    /// Reads what is available, queues answers, writes what it can. `false`: close it.
    fn service(&mut self, name: &str) -> bool {
        let mut buf = [0u8; 2048];
        while !self.eof {
            match self.stream.read(&mut buf) {
                Ok(0) => self.eof = true,
                Ok(n) => self.input.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        while let Some(pos) = self.input.iter().position(|&b| b == b'\n') {
            self.input.drain(..=pos);
            self.output
                .extend_from_slice(format!("{name} {}\n", self.peer).as_bytes());
        }
        if self.input.len() > MAX_LINE {
            return false;
        }
        while !self.output.is_empty() {
            match self.stream.write(&self.output) {
                Ok(n) => {
                    self.output.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        !(self.eof && self.output.is_empty())
    }
}

fn event_loop(name: &str, sockets: Sockets, stop: &AtomicBool) {
    let Sockets {
        listeners,
        udp,
        sctp,
    } = sockets;
    let mut conns: Vec<Conn> = Vec::new();
    while !stop.load(Ordering::Acquire) {
        let ready: Vec<bool> = {
            let mut fds: Vec<PollFd<'_>> = listeners
                .iter()
                .map(|l| PollFd::new(l.as_fd(), PollFlags::POLLIN))
                .chain(
                    udp.iter()
                        .map(|u| PollFd::new(u.as_fd(), PollFlags::POLLIN)),
                )
                .chain(sctp.iter().map(|s| PollFd::new(s.fd(), PollFlags::POLLIN)))
                .chain(conns.iter().map(|c| {
                    let mut events = PollFlags::POLLIN;
                    if !c.output.is_empty() {
                        events |= PollFlags::POLLOUT;
                    }
                    PollFd::new(c.stream.as_fd(), events)
                }))
                .collect();
            match poll(&mut fds, POLL_INTERVAL_MS) {
                Ok(0) | Err(Errno::EINTR) => continue,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(server = name, error = %e, "poll failed; server stops");
                    return;
                }
            }
            fds.iter()
                .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                .collect()
        };
        let (ready_listeners, rest) = ready.split_at(listeners.len());
        let (ready_udp, rest) = rest.split_at(udp.len());
        let (ready_sctp, ready_conns) = rest.split_at(sctp.len());
        for (responder, _) in sctp.iter().zip(ready_sctp).filter(|(_, r)| **r) {
            responder.answer_pending(name);
        }

        let mut keep = ready_conns.iter();
        let mut closed = Vec::new();
        for (i, conn) in conns.iter_mut().enumerate() {
            if *keep.next().unwrap_or(&false) && !conn.service(name) {
                closed.push(i);
            }
        }
        for i in closed.into_iter().rev() {
            conns.swap_remove(i);
        }

        for (listener, _) in listeners.iter().zip(ready_listeners).filter(|(_, r)| **r) {
            loop {
                match listener.accept() {
                    Ok((stream, peer)) => {
                        if stream.set_nonblocking(true).is_err() {
                            continue;
                        }
                        let _ = stream.set_nodelay(true);
                        let mut conn = Conn {
                            stream,
                            peer,
                            input: Vec::new(),
                            output: Vec::new(),
                            eof: false,
                        };
                        if conn.service(name) {
                            conns.push(conn);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    // ECONNABORTED and the like concern one connection only.
                    Err(_) => break,
                }
            }
        }

        for (socket, _) in udp.iter().zip(ready_udp).filter(|(_, r)| **r) {
            // Bounded so a flood cannot starve the stop flag.
            for _ in 0..256 {
                // Other errors are pending ICMP errors of earlier answers; they concern one
                // peer only.
                if answer_datagram(socket, name) == Err(Errno::EAGAIN) {
                    break;
                }
            }
        }
    }
}

/// Answers one datagram from the address it was sent to (`IP_PKTINFO`), so that a client's
/// connected socket accepts the answer even when the namespace has several addresses (a VIP
/// on a DSR backend, a node with several addresses).
fn answer_datagram(socket: &UdpSocket, name: &str) -> Result<(), Errno> {
    let fd = socket.as_raw_fd();
    let mut buf = [0u8; 2048];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!(libc::in_pktinfo, libc::in6_pktinfo);
    let msg =
        socket::recvmsg::<SockaddrStorage>(fd, &mut iov, Some(&mut space), MsgFlags::empty())?;
    let Some(peer) = msg.address.as_ref().and_then(to_socket_addr) else {
        return Ok(());
    };
    let mut v4 = None;
    let mut v6 = None;
    for cmsg in msg.cmsgs()? {
        match cmsg {
            ControlMessageOwned::Ipv4PacketInfo(info) => {
                v4 = Some(libc::in_pktinfo {
                    ipi_ifindex: 0,
                    ipi_spec_dst: info.ipi_addr,
                    ipi_addr: info.ipi_addr,
                });
            }
            ControlMessageOwned::Ipv6PacketInfo(info) => {
                v6 = Some(libc::in6_pktinfo {
                    ipi6_addr: info.ipi6_addr,
                    ipi6_ifindex: 0,
                });
            }
            _ => {}
        }
    }
    let mut cmsgs = Vec::new();
    if let Some(info) = &v4 {
        cmsgs.push(ControlMessage::Ipv4PacketInfo(info));
    }
    if let Some(info) = &v6 {
        cmsgs.push(ControlMessage::Ipv6PacketInfo(info));
    }
    let reply = format!("{name} {peer}\n");
    let to = SockaddrStorage::from(peer);
    socket::sendmsg(
        fd,
        &[IoSlice::new(reply.as_bytes())],
        &cmsgs,
        MsgFlags::empty(),
        Some(&to),
    )
    .map(|_| ())
}

fn to_socket_addr(addr: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    addr.as_sockaddr_in6()
        .map(|v6| SocketAddr::V6((*v6).into()))
}

/// What a probe got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// A server answered.
    Answered {
        /// The name the server answered with (a pod name).
        backend: String,
        /// The source address the server saw.
        seen_source: SocketAddr,
        /// From the start of the connect (or the send) to the answer.
        latency: Duration,
        /// The probe's own address and port.
        local: SocketAddr,
    },
    /// TCP RST, or ICMP port unreachable for UDP (`ECONNREFUSED`).
    Refused,
    /// ICMP host or network unreachable (`EHOSTUNREACH`, `ENETUNREACH`).
    Unreachable,
    /// No answer in time (a drop).
    Timeout,
}

impl ProbeOutcome {
    /// The answering backend's name, if one answered.
    pub fn backend(&self) -> Option<&str> {
        match self {
            ProbeOutcome::Answered { backend, .. } => Some(backend),
            _ => None,
        }
    }
}

fn classify(error: &io::Error) -> Option<ProbeOutcome> {
    match error.raw_os_error() {
        Some(libc::ECONNREFUSED | libc::ECONNRESET) => Some(ProbeOutcome::Refused),
        Some(libc::EHOSTUNREACH | libc::ENETUNREACH) => Some(ProbeOutcome::Unreachable),
        Some(libc::ETIMEDOUT | libc::EAGAIN) => Some(ProbeOutcome::Timeout),
        _ if matches!(
            error.kind(),
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
        ) =>
        {
            Some(ProbeOutcome::Timeout)
        }
        _ => None,
    }
}

fn outcome_or_error(
    error: io::Error,
    what: impl FnOnce() -> String,
) -> Result<ProbeOutcome, TrafficError> {
    classify(&error).ok_or_else(|| TrafficError::Io {
        what: what(),
        source: error,
    })
}

/// Sends one request from inside `netns` to `dst` and reports who answered.
pub fn probe(
    netns: &NetNs,
    dst: SocketAddr,
    protocol: Protocol,
    timeout: Duration,
) -> Result<ProbeOutcome, TrafficError> {
    probe_from(netns, None, dst, protocol, timeout)
}

/// Like [`probe`], from a fixed source address and/or port (`0.0.0.0:41000` fixes only the
/// port). A TCP probe from a fixed port closes with RST (`SO_LINGER` 0) so that the same
/// 4-tuple can be used again at once.
pub fn probe_from(
    netns: &NetNs,
    source: Option<SocketAddr>,
    dst: SocketAddr,
    protocol: Protocol,
    timeout: Duration,
) -> Result<ProbeOutcome, TrafficError> {
    match protocol {
        Protocol::Tcp => netns.run(|| probe_tcp(source, dst, timeout, Close::Normal))?,
        Protocol::Udp => netns.run(|| probe_udp(source, dst, timeout))?,
        Protocol::Sctp => netns.run(|| sctp::probe(source, dst, timeout))?,
    }
}

fn new_socket(
    source: Option<SocketAddr>,
    dst: SocketAddr,
    kind: SockType,
) -> Result<OwnedFd, TrafficError> {
    let family = if dst.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket::socket(
        family,
        kind,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(errno_err(format!("socket for {dst}")))?;
    if let Some(src) = source.filter(|s| s.port() != 0) {
        socket::setsockopt(&fd, sockopt::ReuseAddr, &true)
            .map_err(errno_err(format!("SO_REUSEADDR for {src}")))?;
        socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(src))
            .map_err(errno_err(format!("bind {src}")))?;
        return Ok(fd);
    }
    // No port asked for: a fresh one (see `fresh_port`), on the asked address if any.
    let ip = source.map_or_else(
        || {
            if dst.is_ipv4() {
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            } else {
                IpAddr::V6(Ipv6Addr::UNSPECIFIED)
            }
        },
        |s| s.ip(),
    );
    let mut attempts = 0;
    loop {
        let src = SocketAddr::new(ip, fresh_port());
        match socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(src)) {
            Ok(()) => return Ok(fd),
            // Taken by a socket of another process in this namespace: the next one.
            Err(Errno::EADDRINUSE) if attempts < 64 => attempts += 1,
            Err(e) => return Err(errno_err(format!("bind {src}"))(e)),
        }
    }
}

/// Source ports of the probes and sessions that ask for none: `FRESH_PORTS` in turn, so
/// that no two of this process's connections share a source port until the range wraps (one
/// conformance run uses a few thousand).
///
/// Why not the kernel's ephemeral ports: a random port that comes up again within the
/// conntrack timeout can repeat the 5-tuple of an earlier, translated flow (the same client
/// port to a backend that was reached through a frontend before); the reply then meets that
/// flow's NAT state, is reverse-translated to the old frontend and dropped by the connected
/// socket (a probe timeout, about once in 50 eBPF conformance runs). The kernel's conntrack
/// does the same (the new entry clashes with the old one's reply tuple); real clients live
/// with it, a test must not depend on luck. The range is below the kernel's ephemeral range
/// and below the NodePort range (30000-32767): a reply to a source port in the NodePort
/// range would look like a NodePort request to the node.
fn fresh_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let span = u32::from(FRESH_PORTS.end - FRESH_PORTS.start);
    FRESH_PORTS.start + (NEXT.fetch_add(1, Ordering::Relaxed) % span) as u16
}

/// See [`fresh_port`].
const FRESH_PORTS: std::ops::Range<u16> = 20_000..30_000;

/// The TCP sockets of the calling thread's network namespace with local port `port`, from
/// `/proc/thread-self/net/tcp{,6}` (state in hex, as the kernel prints it), for diagnostics.
fn sockets_on_port(port: u16) -> String {
    let wanted = format!(":{port:04X}");
    let mut found = Vec::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/thread-self/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if let [_, local, remote, state, ..] = fields[..] {
                if local.ends_with(&wanted) {
                    found.push(format!("{local}->{remote} state {state}"));
                }
            }
        }
    }
    if found.is_empty() {
        "none".to_owned()
    } else {
        found.join(", ")
    }
}

fn remaining(deadline: Instant) -> Option<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    (left >= Duration::from_millis(1)).then_some(left)
}

/// The calling thread's network namespace's count of retransmitted SYNs (`TCPSynRetrans` of
/// `/proc/thread-self/net/netstat`), `None` if it cannot be read.
fn syn_retransmits() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/net/netstat").ok()?;
    let mut lines = text.lines();
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        if !names.starts_with("TcpExt:") {
            continue;
        }
        let at = names
            .split_whitespace()
            .position(|n| n == "TCPSynRetrans")?;
        return values.split_whitespace().nth(at)?.parse().ok();
    }
    None
}

/// A TCP probe like [`probe_from`] that also says whether a refusal answered its first SYN:
/// `(outcome, SYNs retransmitted in the client's namespace meanwhile)`; for `Refused`, 0
/// means the first RST (or ICMP error) arrived and was good. A timing check cannot tell this
/// on a loaded machine (a refusal took 669 ms there without any loss), the retransmission
/// count can: a lost refusal shows as a SYN sent again after the initial RTO (1 s). The
/// count is the namespace's, so nothing else in it may connect at the same time (a
/// conformance row's client runs one probe at a time).
pub fn probe_refused_at_once(
    netns: &NetNs,
    source: Option<SocketAddr>,
    dst: SocketAddr,
    timeout: Duration,
) -> Result<(ProbeOutcome, u64), TrafficError> {
    netns.run(|| {
        let before = syn_retransmits();
        let outcome = probe_tcp(source, dst, timeout, Close::Normal)?;
        let after = syn_retransmits();
        let retransmits = match (before, after) {
            (Some(b), Some(a)) => a.saturating_sub(b),
            _ => 0,
        };
        Ok((outcome, retransmits))
    })?
}

/// Connects a TCP socket within `timeout`: `Ok(Err(outcome))` when the connect itself failed
/// in a way the caller reports as an outcome.
fn connect_tcp(
    source: Option<SocketAddr>,
    dst: SocketAddr,
    deadline: Instant,
) -> Result<Result<TcpStream, ProbeOutcome>, TrafficError> {
    let fixed_port = source.is_some_and(|s| s.port() != 0);
    let fd = loop {
        let fd = new_socket(source, dst, SockType::Stream)?;
        match socket::connect(fd.as_raw_fd(), &SockaddrStorage::from(dst)) {
            Ok(()) | Err(Errno::EINPROGRESS) => break fd,
            // The 4-tuple of a fixed-port probe is still taken by the previous probe's
            // socket: it is aborted with RST on close, so it goes away; wait for it.
            Err(Errno::EADDRNOTAVAIL) if fixed_port && remaining(deadline).is_some() => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(Errno::EADDRNOTAVAIL) if fixed_port => {
                return Err(TrafficError::Io {
                    what: format!(
                        "connect {dst} from fixed port (sockets on it: {})",
                        sockets_on_port(source.map_or(0, |s| s.port()))
                    ),
                    source: io::Error::from_raw_os_error(libc::EADDRNOTAVAIL),
                });
            }
            Err(e) => return outcome_or_error(e.into(), || format!("connect {dst}")).map(Err),
        }
    };
    let Some(left) = remaining(deadline) else {
        return Ok(Err(ProbeOutcome::Timeout));
    };
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLOUT)];
    let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
    match poll(&mut fds, ms.max(1)) {
        Ok(0) => return Ok(Err(ProbeOutcome::Timeout)),
        Ok(_) => {}
        Err(e) => return Err(errno_err(format!("poll connect {dst}"))(e)),
    }
    let err = socket::getsockopt(&fd, sockopt::SocketError)
        .map_err(errno_err(format!("SO_ERROR of connect {dst}")))?;
    if err != 0 {
        let error = io::Error::from_raw_os_error(err);
        return outcome_or_error(error, || format!("connect {dst}")).map(Err);
    }
    let stream = TcpStream::from(fd);
    stream
        .set_nonblocking(false)
        .map_err(io_err(format!("blocking mode for {dst}")))?;
    let _ = stream.set_nodelay(true);
    Ok(Ok(stream))
}

fn parse_reply(from: SocketAddr, line: &str) -> Result<(String, SocketAddr), TrafficError> {
    let bad = || TrafficError::BadReply {
        from,
        reply: line.to_owned(),
    };
    let (name, peer) = line.trim_end().split_once(' ').ok_or_else(bad)?;
    let peer: SocketAddr = peer.parse().map_err(|_| bad())?;
    if name.is_empty() {
        return Err(bad());
    }
    Ok((name.to_owned(), peer))
}

/// How a TCP probe's connection ends.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Close {
    /// FIN, except from a fixed source (see [`probe_from`]): the client keeps the port in
    /// `TIME_WAIT` for a minute.
    Normal,
    /// RST (`SO_LINGER` 0): nothing stays in `TIME_WAIT`. For loads that open more
    /// connections per minute than [`FRESH_PORTS`] has ports (see [`measure`]).
    Abort,
}

fn probe_tcp(
    source: Option<SocketAddr>,
    dst: SocketAddr,
    timeout: Duration,
    close: Close,
) -> Result<ProbeOutcome, TrafficError> {
    let start = Instant::now();
    let deadline = start + timeout;
    let stream = match connect_tcp(source, dst, deadline)? {
        Ok(stream) => stream,
        Err(outcome) => return Ok(outcome),
    };
    if source.is_some() || close == Close::Abort {
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        socket::setsockopt(&stream, sockopt::Linger, &linger)
            .map_err(errno_err(format!("SO_LINGER for {dst}")))?;
    }
    let local = stream
        .local_addr()
        .map_err(io_err(format!("local address of connection to {dst}")))?;
    let outcome = exchange(&stream, dst, deadline)?;
    Ok(match outcome {
        Ok((backend, seen_source)) => ProbeOutcome::Answered {
            backend,
            seen_source,
            latency: start.elapsed(),
            local,
        },
        Err(outcome) => outcome,
    })
}

/// One request/answer on a connected stream.
fn exchange(
    stream: &TcpStream,
    dst: SocketAddr,
    deadline: Instant,
) -> Result<Result<(String, SocketAddr), ProbeOutcome>, TrafficError> {
    let Some(left) = remaining(deadline) else {
        return Ok(Err(ProbeOutcome::Timeout));
    };
    stream
        .set_read_timeout(Some(left))
        .and_then(|()| stream.set_write_timeout(Some(left)))
        .map_err(io_err(format!("timeouts for {dst}")))?;
    let mut writer = stream;
    if let Err(e) = writer.write_all(b"probe\n") {
        return outcome_or_error(e, || format!("send to {dst}")).map(Err);
    }
    let mut line = String::new();
    match BufReader::new(stream).read_line(&mut line) {
        Ok(0) => Err(TrafficError::BadReply {
            from: dst,
            reply: String::new(),
        }),
        Ok(_) => parse_reply(dst, &line).map(Ok),
        Err(e) => outcome_or_error(e, || format!("receive from {dst}")).map(Err),
    }
}

fn probe_udp(
    source: Option<SocketAddr>,
    dst: SocketAddr,
    timeout: Duration,
) -> Result<ProbeOutcome, TrafficError> {
    let start = Instant::now();
    let deadline = start + timeout;
    let fd = new_socket(source, dst, SockType::Datagram)?;
    if let Err(e) = socket::connect(fd.as_raw_fd(), &SockaddrStorage::from(dst)) {
        return outcome_or_error(e.into(), || format!("connect udp {dst}"));
    }
    let sock = UdpSocket::from(fd);
    sock.set_nonblocking(false)
        .map_err(io_err(format!("blocking mode for udp {dst}")))?;
    let local = sock
        .local_addr()
        .map_err(io_err(format!("local address of udp socket to {dst}")))?;
    if let Err(e) = sock.send(b"probe\n") {
        // A datagram that netfilter drops or rejects in this namespace's own output hook
        // fails the send at once (EPERM); a reject has also queued its ICMP error on the
        // socket, which the receive below reports (refused), a drop leaves it to time out.
        if e.raw_os_error() != Some(libc::EPERM) {
            return outcome_or_error(e, || format!("send udp to {dst}"));
        }
    }
    let Some(left) = remaining(deadline) else {
        return Ok(ProbeOutcome::Timeout);
    };
    sock.set_read_timeout(Some(left))
        .map_err(io_err(format!("timeout for udp {dst}")))?;
    let mut buf = [0u8; 2048];
    match sock.recv(&mut buf) {
        Ok(n) => {
            let line = String::from_utf8_lossy(&buf[..n]);
            let (backend, seen_source) = parse_reply(dst, &line)?;
            Ok(ProbeOutcome::Answered {
                backend,
                seen_source,
                latency: start.elapsed(),
                local,
            })
        }
        Err(e) => outcome_or_error(e, || format!("receive udp from {dst}")),
    }
}

/// One probe of a [`probe_batch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchProbe {
    /// Where to send it.
    pub destination: SocketAddr,
    /// TCP or UDP.
    pub protocol: Protocol,
    /// A fixed source port (the socket has `SO_REUSEADDR`), or `None` for a fresh one.
    pub source_port: Option<u16>,
    /// How long to wait for its answer: a probe still unanswered then is
    /// [`ProbeOutcome::Timeout`] (or [`BatchOutcome::Connected`]).
    pub timeout: Duration,
}

/// What a probe of a [`probe_batch`] got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOutcome {
    /// The probe ended: answered, refused, unreachable, or [`ProbeOutcome::Timeout`] —
    /// nothing came back in time (for TCP: not even the handshake's SYN-ACK).
    Ended(ProbeOutcome),
    /// TCP: the handshake completed and the request went out, but the answer line did not
    /// come in time. The network let the connection through, so this is not a drop: a
    /// policy that should deny the cell did not; for a cell that should pass it is a slow
    /// answer (a loaded server or machine), not an answer from a known pod.
    Connected,
}

impl BatchOutcome {
    /// The answering backend's name, if one answered.
    pub fn backend(&self) -> Option<&str> {
        match self {
            BatchOutcome::Ended(outcome) => outcome.backend(),
            BatchOutcome::Connected => None,
        }
    }

    /// The probe's round trip, if it was answered.
    pub fn latency(&self) -> Option<Duration> {
        match self {
            BatchOutcome::Ended(ProbeOutcome::Answered { latency, .. }) => Some(*latency),
            _ => None,
        }
    }
}

impl From<ProbeOutcome> for BatchOutcome {
    fn from(outcome: ProbeOutcome) -> Self {
        BatchOutcome::Ended(outcome)
    }
}

/// Sends every probe of `probes` at once from one thread inside `netns` and waits for all of
/// them: the outcomes, in the order of `probes`. Each probe is what [`probe_from`] does (a
/// new TCP connection with one request line, or one UDP datagram), on non-blocking sockets
/// polled together, so that the batch takes as long as its slowest probe — a batch of drops
/// waits its timeout once, not once per probe. For reachability matrices. A TCP probe
/// connected but unanswered at its deadline is [`BatchOutcome::Connected`], not a timeout.
pub fn probe_batch(
    netns: &NetNs,
    probes: &[BatchProbe],
) -> Result<Vec<BatchOutcome>, TrafficError> {
    type Indexed<'p> = Vec<(usize, &'p BatchProbe)>;
    let (sctp_probes, others): (Indexed<'_>, Indexed<'_>) = probes
        .iter()
        .enumerate()
        .partition(|(_, p)| p.protocol == Protocol::Sctp);
    if sctp_probes.is_empty() {
        return netns.run(|| run_batch(probes))?;
    }
    // SCTP probes are whole exchanges of their own (`sctp::probe`): each runs on a thread
    // of its own, all at the same time as the TCP and UDP ones.
    let mut outcomes: Vec<Option<BatchOutcome>> = vec![None; probes.len()];
    std::thread::scope(|scope| -> Result<(), TrafficError> {
        let threads: Vec<_> = sctp_probes
            .iter()
            .map(|&(i, p)| {
                let p = *p;
                let source = p
                    .source_port
                    .map(|port| SocketAddr::new(unspecified_of(p.destination), port));
                scope.spawn(move || {
                    (
                        i,
                        netns.run(|| sctp::probe(source, p.destination, p.timeout)),
                    )
                })
            })
            .collect();
        let rest: Vec<BatchProbe> = others.iter().map(|(_, p)| **p).collect();
        let ended = netns.run(|| run_batch(&rest));
        for thread in threads {
            let (i, outcome) = thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            outcomes[i] = Some(BatchOutcome::Ended(outcome??));
        }
        for ((i, _), outcome) in others.iter().zip(ended??) {
            outcomes[*i] = Some(outcome);
        }
        Ok(())
    })?;
    Ok(outcomes
        .into_iter()
        .map(|o| o.expect("every probe of the batch ended"))
        .collect())
}

/// The unspecified address of `dst`'s family.
fn unspecified_of(dst: SocketAddr) -> IpAddr {
    if dst.is_ipv4() {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    }
}

/// A probe of a batch on its way.
enum Pending {
    /// TCP connect in progress.
    Connecting(TcpStream),
    /// TCP request sent, the answer line being read.
    Reading(TcpStream, Vec<u8>),
    /// UDP datagram sent.
    Datagram(UdpSocket),
    /// Finished.
    Done,
}

struct InFlight {
    probe: BatchProbe,
    started: Instant,
    local: Option<SocketAddr>,
    state: Pending,
    outcome: Option<ProbeOutcome>,
    /// The deadline came while the answer of a connected TCP probe was being read.
    connected_at_deadline: bool,
}

impl InFlight {
    fn finish(&mut self, outcome: ProbeOutcome) {
        self.outcome = Some(outcome);
        self.state = Pending::Done;
    }

    fn answered(&mut self, line: &[u8]) -> Result<(), TrafficError> {
        let dst = self.probe.destination;
        let (backend, seen_source) = parse_reply(dst, &String::from_utf8_lossy(line))?;
        let local = self.local.unwrap_or(dst);
        self.finish(ProbeOutcome::Answered {
            backend,
            seen_source,
            latency: self.started.elapsed(),
            local,
        });
        Ok(())
    }

    /// Moves the probe on after its socket was reported ready.
    fn advance(&mut self) -> Result<(), TrafficError> {
        let dst = self.probe.destination;
        match std::mem::replace(&mut self.state, Pending::Done) {
            Pending::Connecting(stream) => {
                let err = socket::getsockopt(&stream, sockopt::SocketError)
                    .map_err(errno_err(format!("SO_ERROR of connect {dst}")))?;
                if err != 0 {
                    let error = io::Error::from_raw_os_error(err);
                    let outcome = outcome_or_error(error, || format!("connect {dst}"))?;
                    self.finish(outcome);
                    return Ok(());
                }
                self.local = stream.local_addr().ok();
                let _ = stream.set_nodelay(true);
                // Six bytes into an empty send buffer of a fresh connection: written whole.
                match (&stream).write(b"probe\n") {
                    Ok(6) => self.state = Pending::Reading(stream, Vec::new()),
                    Ok(n) => {
                        return Err(TrafficError::Io {
                            what: format!("send to {dst}"),
                            source: io::Error::other(format!("short write of {n} bytes")),
                        })
                    }
                    Err(e) => self.finish(outcome_or_error(e, || format!("send to {dst}"))?),
                }
            }
            Pending::Reading(stream, mut buf) => {
                let mut chunk = [0u8; 512];
                match (&stream).read(&mut chunk) {
                    Ok(0) => {
                        return Err(TrafficError::BadReply {
                            from: dst,
                            reply: String::from_utf8_lossy(&buf).into_owned(),
                        })
                    }
                    Ok(n) => {
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(end) = buf.iter().position(|&b| b == b'\n') {
                            return self.answered(&buf[..=end]);
                        }
                        self.state = Pending::Reading(stream, buf);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.state = Pending::Reading(stream, buf);
                    }
                    Err(e) => self.finish(outcome_or_error(e, || format!("receive from {dst}"))?),
                }
            }
            Pending::Datagram(sock) => {
                let mut buf = [0u8; 2048];
                match sock.recv(&mut buf) {
                    Ok(n) => return self.answered(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.state = Pending::Datagram(sock);
                    }
                    Err(e) => {
                        self.finish(outcome_or_error(e, || format!("receive udp from {dst}"))?);
                    }
                }
            }
            Pending::Done => {}
        }
        Ok(())
    }

    fn poll_fd(&self) -> Option<PollFd<'_>> {
        match &self.state {
            Pending::Connecting(s) => Some(PollFd::new(s.as_fd(), PollFlags::POLLOUT)),
            Pending::Reading(s, _) => Some(PollFd::new(s.as_fd(), PollFlags::POLLIN)),
            Pending::Datagram(s) => Some(PollFd::new(s.as_fd(), PollFlags::POLLIN)),
            Pending::Done => None,
        }
    }
}

/// Opens a batch probe's socket and sends what can be sent at once.
fn start_probe(probe: BatchProbe) -> Result<InFlight, TrafficError> {
    let dst = probe.destination;
    let source = probe
        .source_port
        .map(|port| SocketAddr::new(unspecified_of(dst), port));
    let mut flight = InFlight {
        probe,
        started: Instant::now(),
        local: None,
        state: Pending::Done,
        outcome: None,
        connected_at_deadline: false,
    };
    let kind = match probe.protocol {
        Protocol::Udp => SockType::Datagram,
        _ => SockType::Stream,
    };
    let fd = new_socket(source, dst, kind)?;
    match (
        socket::connect(fd.as_raw_fd(), &SockaddrStorage::from(dst)),
        kind,
    ) {
        (Ok(()) | Err(Errno::EINPROGRESS), SockType::Stream) => {
            flight.state = Pending::Connecting(TcpStream::from(fd));
        }
        (Ok(()), _) => {
            let sock = UdpSocket::from(fd);
            flight.local = sock.local_addr().ok();
            match sock.send(b"probe\n") {
                // See `probe_udp` for EPERM: a drop in this namespace's own output hook.
                Ok(_) => flight.state = Pending::Datagram(sock),
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                    flight.state = Pending::Datagram(sock);
                }
                Err(e) => flight.finish(outcome_or_error(e, || format!("send udp to {dst}"))?),
            }
        }
        (Err(e), _) => flight.finish(outcome_or_error(e.into(), || format!("connect {dst}"))?),
    }
    Ok(flight)
}

fn run_batch(probes: &[BatchProbe]) -> Result<Vec<BatchOutcome>, TrafficError> {
    let mut flights = probes
        .iter()
        .map(|p| start_probe(*p))
        .collect::<Result<Vec<_>, _>>()?;
    loop {
        let now = Instant::now();
        for f in &mut flights {
            if f.outcome.is_none() && now >= f.started + f.probe.timeout {
                f.connected_at_deadline = matches!(f.state, Pending::Reading(..));
                f.finish(ProbeOutcome::Timeout);
            }
        }
        let Some(next_deadline) = flights
            .iter()
            .filter(|f| f.outcome.is_none())
            .map(|f| f.started + f.probe.timeout)
            .min()
        else {
            break;
        };
        let ready: Vec<usize> = {
            let (indices, mut fds): (Vec<usize>, Vec<PollFd<'_>>) = flights
                .iter()
                .enumerate()
                .filter_map(|(i, f)| f.poll_fd().map(|fd| (i, fd)))
                .unzip();
            let left = next_deadline.saturating_duration_since(now);
            let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX).max(1);
            match poll(&mut fds, ms) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(errno_err("poll a probe batch")(e)),
            }
            indices
                .into_iter()
                .zip(&fds)
                .filter(|(_, fd)| fd.revents().is_some_and(|r| !r.is_empty()))
                .map(|(i, _)| i)
                .collect()
        };
        for i in ready {
            flights[i].advance()?;
        }
    }
    Ok(flights
        .into_iter()
        .map(|f| {
            if f.connected_at_deadline {
                BatchOutcome::Connected
            } else {
                BatchOutcome::Ended(f.outcome.unwrap_or(ProbeOutcome::Timeout))
            }
        })
        .collect())
}

/// The result of [`measure`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Measurement {
    /// Latency of each answered exchange (connect + request + answer), sorted ascending.
    pub latencies: Vec<Duration>,
    /// Answers per backend name.
    pub backends: std::collections::BTreeMap<String, usize>,
    /// Exchanges that got no answer, by outcome (`Refused`, `Unreachable`, `Timeout`).
    pub failures: std::collections::BTreeMap<String, usize>,
    /// Wall-clock time of the whole run.
    pub elapsed: Duration,
}

impl Measurement {
    /// The `p`-th percentile latency (`p` in 0..=100, nearest rank), if anything answered.
    pub fn percentile(&self, p: f64) -> Option<Duration> {
        if self.latencies.is_empty() {
            return None;
        }
        let n = self.latencies.len();
        #[allow(clippy::cast_precision_loss, clippy::cast_sign_loss)]
        let rank = ((p.clamp(0.0, 100.0) / 100.0) * n as f64).ceil() as usize;
        Some(self.latencies[rank.clamp(1, n) - 1])
    }

    /// Answered exchanges per second.
    pub fn per_second(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            #[allow(clippy::cast_precision_loss)]
            let answered = self.latencies.len() as f64;
            answered / secs
        } else {
            0.0
        }
    }
}

/// Runs `count` exchanges one after the other from inside `netns` to `dst`, each on a new
/// TCP connection (or a new UDP socket), all from one thread that entered the namespace once
/// — the per-exchange cost is the network's, not the testkit's. For connection-rate and
/// latency benchmarks and for loads that run while something else happens.
///
/// TCP connections end with RST, as `netperf TCP_CRR`-style loads with many connections do:
/// a FIN close leaves the client's port in `TIME_WAIT` for 60 s, and a load of more than
/// ~170 connections per second would use up the testkit's 10 000 fresh source ports within
/// that minute (bind then fails with EADDRINUSE — a long CRR load in the agent's restart
/// test did, at ~1700/s).
/// A port that comes around again meets its old flow closed by the RST, which conntrack
/// (ours and the kernel's) treats as a new connection on the next SYN.
pub fn measure(
    netns: &NetNs,
    dst: SocketAddr,
    protocol: Protocol,
    count: usize,
    timeout: Duration,
) -> Result<Measurement, TrafficError> {
    let exchange = match protocol {
        Protocol::Tcp => |source, dst, timeout| probe_tcp(source, dst, timeout, Close::Abort),
        Protocol::Udp => probe_udp,
        Protocol::Sctp => sctp::probe,
    };
    netns.run(|| {
        let mut m = Measurement::default();
        let start = Instant::now();
        for _ in 0..count {
            match exchange(None, dst, timeout)? {
                ProbeOutcome::Answered {
                    backend, latency, ..
                } => {
                    m.latencies.push(latency);
                    *m.backends.entry(backend).or_default() += 1;
                }
                other => *m.failures.entry(format!("{other:?}")).or_default() += 1,
            }
        }
        m.elapsed = start.elapsed();
        m.latencies.sort_unstable();
        Ok(m)
    })?
}

/// A TCP connection kept open across events (restarts, endpoint changes): each
/// [`TcpSession::request`] asks the same backend again over the same connection.
#[derive(Debug)]
pub struct TcpSession {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
    destination: SocketAddr,
    local: SocketAddr,
    timeout: Duration,
}

impl TcpSession {
    /// Connects from inside `netns` to `dst` (timeout [`DEFAULT_TIMEOUT`]).
    pub fn open(netns: &NetNs, dst: SocketAddr) -> Result<TcpSession, TrafficError> {
        Self::open_with_timeout(netns, dst, DEFAULT_TIMEOUT)
    }

    /// Connects with `timeout` for the connect and for each later request.
    pub fn open_with_timeout(
        netns: &NetNs,
        dst: SocketAddr,
        timeout: Duration,
    ) -> Result<TcpSession, TrafficError> {
        Self::open_from(netns, None, dst, timeout)
    }

    /// Like [`TcpSession::open_with_timeout`], from a fixed source address and/or port
    /// (`0.0.0.0:42000` fixes only the port; the socket has `SO_REUSEADDR`, so later probes may
    /// use the same port towards other destinations).
    pub fn open_from(
        netns: &NetNs,
        source: Option<SocketAddr>,
        dst: SocketAddr,
        timeout: Duration,
    ) -> Result<TcpSession, TrafficError> {
        let deadline = Instant::now() + timeout;
        let stream = match netns.run(|| connect_tcp(source, dst, deadline))?? {
            Ok(stream) => stream,
            Err(outcome) => {
                return Err(TrafficError::NotConnected {
                    destination: dst,
                    outcome: Box::new(outcome),
                })
            }
        };
        let local = stream
            .local_addr()
            .map_err(io_err(format!("local address of session to {dst}")))?;
        let reader = BufReader::new(
            stream
                .try_clone()
                .map_err(io_err(format!("clone session to {dst}")))?,
        );
        Ok(TcpSession {
            stream,
            reader,
            destination: dst,
            local,
            timeout,
        })
    }

    /// The client side's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The address connected to.
    pub fn destination(&self) -> SocketAddr {
        self.destination
    }

    /// Changes the timeout of later requests.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Sends one request and returns `(backend name, source address the backend saw)`.
    pub fn request(&mut self) -> Result<(String, SocketAddr), TrafficError> {
        let dst = self.destination;
        let timeout = self.timeout.max(Duration::from_millis(1));
        self.stream
            .set_read_timeout(Some(timeout))
            .and_then(|()| self.stream.set_write_timeout(Some(timeout)))
            .map_err(io_err(format!("timeouts for session to {dst}")))?;
        self.stream
            .write_all(b"request\n")
            .map_err(io_err(format!("send on session to {dst}")))?;
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(io_err(format!("receive on session to {dst}")))?;
        if n == 0 {
            return Err(TrafficError::Io {
                what: format!("session to {dst}"),
                source: io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"),
            });
        }
        parse_reply(dst, &line)
    }

    /// Sends about `bytes` of requests in one go (lines just under the servers' line limit, so
    /// the client fills whole segments) and reads every answer: a bulk transfer for path MTU
    /// checks. Returns the last answer.
    pub fn upload(&mut self, bytes: usize) -> Result<(String, SocketAddr), TrafficError> {
        const LINE: usize = MAX_LINE - 96;
        let dst = self.destination;
        let lines = bytes.div_ceil(LINE).max(1);
        let mut line = vec![b'x'; LINE];
        line[LINE - 1] = b'\n';
        let timeout = self.timeout.max(Duration::from_millis(1));
        self.stream
            .set_read_timeout(Some(timeout))
            .and_then(|()| self.stream.set_write_timeout(Some(timeout)))
            .map_err(io_err(format!("timeouts for session to {dst}")))?;
        let mut writer = self
            .stream
            .try_clone()
            .map_err(io_err(format!("clone session to {dst}")))?;
        // The answers are read while the upload is still being written: neither side blocks.
        let sender = std::thread::spawn(move || -> io::Result<()> {
            for _ in 0..lines {
                writer.write_all(&line)?;
            }
            Ok(())
        });
        let mut last = None;
        for _ in 0..lines {
            let mut answer = String::new();
            let n = self
                .reader
                .read_line(&mut answer)
                .map_err(io_err(format!("receive on session to {dst}")))?;
            if n == 0 {
                return Err(TrafficError::Io {
                    what: format!("upload to {dst}"),
                    source: io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"),
                });
            }
            last = Some(answer);
        }
        sender
            .join()
            .map_err(|_| TrafficError::Io {
                what: format!("upload to {dst}"),
                source: io::Error::other("sender thread panicked"),
            })?
            .map_err(io_err(format!("send on session to {dst}")))?;
        parse_reply(dst, last.as_deref().unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parse() {
        let from: SocketAddr = "10.96.0.10:80".parse().unwrap();
        let (name, peer) = parse_reply(from, "pod-0-1 10.244.1.10:41000\n").unwrap();
        assert_eq!(name, "pod-0-1");
        assert_eq!(peer, "10.244.1.10:41000".parse().unwrap());
        let (_, peer) = parse_reply(from, "pod-0-1 [fd00:244:1::10]:5\n").unwrap();
        assert_eq!(peer, "[fd00:244:1::10]:5".parse().unwrap());
        assert!(parse_reply(from, "garbage\n").is_err());
        assert!(parse_reply(from, " 1.2.3.4:5\n").is_err());
        assert!(parse_reply(from, "x 1.2.3.4\n").is_err());
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let m = Measurement {
            latencies: (1..=100).map(Duration::from_millis).collect(),
            elapsed: Duration::from_secs(2),
            ..Measurement::default()
        };
        assert_eq!(m.percentile(50.0), Some(Duration::from_millis(50)));
        assert_eq!(m.percentile(99.0), Some(Duration::from_millis(99)));
        assert_eq!(m.percentile(100.0), Some(Duration::from_millis(100)));
        assert_eq!(m.percentile(0.0), Some(Duration::from_millis(1)));
        assert!((m.per_second() - 50.0).abs() < 1e-9);
        assert_eq!(Measurement::default().percentile(50.0), None);
    }

    #[test]
    fn errors_classify() {
        let c = |errno| classify(&io::Error::from_raw_os_error(errno));
        assert_eq!(c(libc::ECONNREFUSED), Some(ProbeOutcome::Refused));
        assert_eq!(c(libc::ECONNRESET), Some(ProbeOutcome::Refused));
        assert_eq!(c(libc::EHOSTUNREACH), Some(ProbeOutcome::Unreachable));
        assert_eq!(c(libc::ENETUNREACH), Some(ProbeOutcome::Unreachable));
        assert_eq!(c(libc::EAGAIN), Some(ProbeOutcome::Timeout));
        assert_eq!(c(libc::EPERM), None);
    }
}

/// A UDP sink: records every datagram it gets (payload and source) and answers none, for
/// checks that a packet was or was not delivered where no answer can come back (a forged
/// source). Stops when dropped.
#[derive(Debug)]
pub struct Sink {
    received: Arc<std::sync::Mutex<Vec<(SocketAddr, String)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sink {
    /// What it got so far: source and payload (lossy UTF-8) of each datagram, in order.
    pub fn received(&self) -> Vec<(SocketAddr, String)> {
        self.received
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts a [`Sink`] on UDP `port` (IPv4 and, where the namespace has it, IPv6) inside
/// `netns`. Returns once the sockets are bound.
pub fn sink(netns: &NetNs, port: u16) -> Result<Sink, TrafficError> {
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (ready_tx, ready_rx) = mpsc::channel();
    let thread = {
        let netns = netns.clone();
        let stop = Arc::clone(&stop);
        let received = Arc::clone(&received);
        std::thread::Builder::new()
            .name(format!("sink-{port}"))
            .spawn(move || {
                let bound = netns.enter().map_err(TrafficError::from).and_then(|()| {
                    let mut sockets = Vec::new();
                    for addr in [
                        SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
                        SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)),
                    ] {
                        match bound_socket(addr, SockType::Datagram) {
                            Ok(fd) => sockets.push(UdpSocket::from(fd)),
                            Err(Errno::EAFNOSUPPORT) if addr.is_ipv6() => {}
                            Err(e) => return Err(errno_err(format!("bind udp sink {addr}"))(e)),
                        }
                    }
                    Ok(sockets)
                });
                match bound {
                    Ok(sockets) => {
                        let _ = ready_tx.send(Ok(()));
                        sink_loop(&sockets, &received, &stop);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .map_err(io_err(format!("spawn sink thread for port {port}")))?
    };
    let mut sink = Sink {
        received,
        stop,
        thread: Some(thread),
    };
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(sink),
        Ok(Err(e)) => Err(e),
        Err(_) => {
            sink.thread.take();
            Err(TrafficError::Io {
                what: format!("sink on port {port} exited before binding"),
                source: io::Error::other("sink thread ended"),
            })
        }
    }
}

fn sink_loop(
    sockets: &[UdpSocket],
    received: &std::sync::Mutex<Vec<(SocketAddr, String)>>,
    stop: &AtomicBool,
) {
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Acquire) {
        let mut fds: Vec<PollFd<'_>> = sockets
            .iter()
            .map(|s| PollFd::new(s.as_fd(), PollFlags::POLLIN))
            .collect();
        match poll(&mut fds, POLL_INTERVAL_MS) {
            Ok(0) | Err(Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "poll failed; sink stops");
                return;
            }
        }
        for socket in sockets {
            while let Ok((n, from)) = socket.recv_from(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                received
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push((from, text));
            }
        }
    }
}

/// Sends one UDP datagram with `payload` from `source` — an address that need not be the
/// namespace's own (a forgery: `IP_TRANSPARENT` lets a socket bind and send from any
/// address; root in `netns`) — to `destination`, from inside `netns`. For anti-spoofing
/// checks: whatever answers goes to `source`, not here, so the receiver must record it
/// ([`sink`]).
pub fn send_forged(
    netns: &NetNs,
    source: SocketAddr,
    destination: SocketAddr,
    payload: &[u8],
) -> Result<(), TrafficError> {
    netns.run(|| {
        let family = if destination.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        let fd = socket::socket(family, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)
            .map_err(errno_err(format!("socket for {destination}")))?;
        // SOL_IP's IP_TRANSPARENT also marks an IPv6 socket (the kernel passes SOL_IP options
        // of IPv6 UDP sockets to the IPv4 code, which sets the same flag as
        // IPV6_TRANSPARENT): bind and send from a non-local address in both families.
        socket::setsockopt(&fd, sockopt::IpTransparent, &true)
            .map_err(errno_err(format!("IP_TRANSPARENT to forge {source}")))?;
        socket::setsockopt(&fd, sockopt::ReuseAddr, &true)
            .map_err(errno_err(format!("SO_REUSEADDR for {source}")))?;
        socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(source))
            .map_err(errno_err(format!("bind forged {source}")))?;
        let sent = socket::sendto(
            fd.as_raw_fd(),
            payload,
            &SockaddrStorage::from(destination),
            MsgFlags::empty(),
        );
        match sent {
            // A drop in this namespace's own output path is a drop, not an error.
            Ok(_) | Err(Errno::EPERM) => Ok(()),
            Err(e) => Err(errno_err(format!("send forged {source} -> {destination}"))(
                e,
            )),
        }
    })?
}
