//! SCTP over raw sockets: the kernels the lab runs on may have no SCTP stack
//! (`CONFIG_IP_SCTP` unset) while netfilter's SCTP conntrack and NAT are there, so the
//! servers and probes build and check SCTP packets themselves.
//!
//! ```text
//!  probe (client namespace)                         server (backend pod)
//!  raw IPPROTO_SCTP + raw ICMP socket               raw IPPROTO_SCTP socket per family
//!   INIT  vtag 0, initiate tag T, port P  ───────▶  stateless: its tag U = T ^ secret
//!         ◀───────  INIT-ACK vtag T, tag U, State Cookie "DPTK" T tsn <name>
//!   COOKIE-ECHO + DATA "probe\n", vtag U  ───────▶  cookie checked against U ^ secret
//!         ◀───────  COOKIE-ACK + SACK + DATA "<name> <peer-ip>:<peer-port>\n", vtag T
//!   ABORT vtag U                          ───────▶  (ignored)
//! ```
//!
//! The four-way handshake and one request/answer take a kernel's SCTP conntrack through
//! `COOKIE_WAIT`, `COOKIE_ECHOED` to `ESTABLISHED`; the ABORT closes it (like the RST that
//! ends a [`super::measure`] TCP exchange), so a fixed source port can be used again at once.
//!
//! Raw sockets share no port space and every raw SCTP socket of a namespace gets a copy of
//! every SCTP packet it receives: each side keeps only packets with its ports and the
//! association's verification tag. Every packet's `CRC32c` is checked (a NAT that rewrites a
//! port must recompute it): a bad one in an answer fails the probe with
//! [`TrafficError::BadChecksum`]; a server that gets a bad one answers with an ABORT whose
//! "Protocol Violation" cause says so, and the probe fails with that (a real SCTP stack
//! would drop the packet silently, which would only show as a timeout). ICMP errors quoting
//! the probe's packet (read on a raw ICMP socket: a raw socket's own error reporting needs
//! `IP_RECVERR` and differs between the families) end it as refused (port or protocol
//! unreachable: a reject, or a namespace without SCTP) or unreachable.
//!
//! A namespace with a server answers nothing for SCTP ports nobody serves (its raw socket
//! takes every SCTP packet, so the kernel sends no ICMP protocol unreachable): a probe to
//! such a port times out.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::io::{IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags};
use nix::sys::socket::{
    self, sockopt, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag,
    SockProtocol, SockType, SockaddrStorage,
};

use super::TrafficError;
use super::{errno_err, fresh_port, parse_reply, remaining, to_socket_addr, ProbeOutcome};

/// Chunk types (RFC 9260 section 3.2).
const DATA: u8 = 0;
const INIT: u8 = 1;
const INIT_ACK: u8 = 2;
const SACK: u8 = 3;
const ABORT: u8 = 6;
const COOKIE_ECHO: u8 = 10;
const COOKIE_ACK: u8 = 11;

/// The State Cookie parameter of an INIT-ACK.
const STATE_COOKIE: u16 = 7;
/// The "Protocol Violation" error cause of an ABORT.
const PROTOCOL_VIOLATION: u16 = 13;
/// DATA flags: the whole message in one chunk (B and E bits).
const UNFRAGMENTED: u8 = 0x03;
/// ABORT flag: the verification tag is the sender's own (T bit).
const TAG_REFLECTED: u8 = 0x01;

const COMMON_HEADER: usize = 12;
const CHECKSUM_AT: usize = 8;
const COOKIE_MAGIC: &[u8; 4] = b"DPTK";
/// How a server's ABORT for a packet with a bad `CRC32c` starts its cause's text.
const BAD_CRC_NOTE: &str = "dataplane-testkit: bad CRC32c";
const RECEIVE_WINDOW: u32 = 65_536;
/// A probe sends its last packet again when nothing came back for this long (RFC 9260's
/// RTO.Initial), until its deadline.
const RETRANSMIT_AFTER: Duration = Duration::from_secs(1);

/// One chunk: type, flags and value (without its header and padding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Chunk {
    pub(crate) kind: u8,
    pub(crate) flags: u8,
    pub(crate) value: Vec<u8>,
}

impl Chunk {
    fn new(kind: u8, flags: u8, value: Vec<u8>) -> Self {
        Chunk { kind, flags, value }
    }
}

/// An SCTP packet: the common header (its checksum computed by [`SctpPacket::emit`]) and
/// its chunks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SctpPacket {
    pub(crate) src_port: u16,
    pub(crate) dst_port: u16,
    pub(crate) vtag: u32,
    pub(crate) chunks: Vec<Chunk>,
}

/// The checksum a packet carries and the one its bytes give.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Crc {
    pub(crate) found: u32,
    pub(crate) computed: u32,
}

impl Crc {
    pub(crate) fn ok(self) -> bool {
        self.found == self.computed
    }
}

/// The `CRC32c` of an SCTP packet, its checksum field taken as zero (RFC 9260 appendix A).
/// The field holds it in little-endian order, as Linux's `sctp_compute_cksum` stores it.
pub(crate) fn checksum(packet: &[u8]) -> u32 {
    let at = CHECKSUM_AT.min(packet.len());
    let end = (CHECKSUM_AT + 4).min(packet.len());
    let crc = crc32c::crc32c(&packet[..at]);
    let crc = crc32c::crc32c_append(crc, &[0; 4][..end - at]);
    crc32c::crc32c_append(crc, &packet[end..])
}

impl SctpPacket {
    /// The packet's bytes, checksum included.
    pub(crate) fn emit(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(&self.src_port.to_be_bytes());
        out.extend_from_slice(&self.dst_port.to_be_bytes());
        out.extend_from_slice(&self.vtag.to_be_bytes());
        out.extend_from_slice(&[0; 4]);
        for chunk in &self.chunks {
            out.push(chunk.kind);
            out.push(chunk.flags);
            let len =
                u16::try_from(4 + chunk.value.len()).expect("chunks of the testkit are small");
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&chunk.value);
            out.resize(out.len().next_multiple_of(4), 0);
        }
        let crc = checksum(&out);
        out[CHECKSUM_AT..CHECKSUM_AT + 4].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Parses an SCTP packet (from its common header on); `None` if it is malformed. The
    /// checksum is not judged here: the [`Crc`] says what it is and what it should be.
    pub(crate) fn parse(bytes: &[u8]) -> Option<(SctpPacket, Crc)> {
        if bytes.len() < COMMON_HEADER {
            return None;
        }
        let mut packet = SctpPacket {
            src_port: be16(bytes, 0)?,
            dst_port: be16(bytes, 2)?,
            vtag: be32(bytes, 4)?,
            chunks: Vec::new(),
        };
        let found = u32::from_le_bytes(bytes[CHECKSUM_AT..CHECKSUM_AT + 4].try_into().ok()?);
        let mut at = COMMON_HEADER;
        while at < bytes.len() {
            let kind = *bytes.get(at)?;
            let flags = *bytes.get(at + 1)?;
            let len = usize::from(be16(bytes, at + 2)?);
            if len < 4 || at + len > bytes.len() {
                return None;
            }
            packet
                .chunks
                .push(Chunk::new(kind, flags, bytes[at + 4..at + len].to_vec()));
            at += len.next_multiple_of(4);
        }
        let crc = Crc {
            found,
            computed: checksum(bytes),
        };
        Some((packet, crc))
    }

    #[cfg(test)]
    fn first(&self) -> Option<u8> {
        self.chunks.first().map(|c| c.kind)
    }
}

fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn be32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// The value of an INIT or INIT-ACK chunk: initiate tag, receive window, one stream each
/// way, initial TSN, then `params`.
fn init_value(tag: u32, tsn: u32, params: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + params.len());
    v.extend_from_slice(&tag.to_be_bytes());
    v.extend_from_slice(&RECEIVE_WINDOW.to_be_bytes());
    v.extend_from_slice(&1u16.to_be_bytes());
    v.extend_from_slice(&1u16.to_be_bytes());
    v.extend_from_slice(&tsn.to_be_bytes());
    v.extend_from_slice(params);
    v
}

/// A TLV parameter or error cause (padded to 4 bytes).
fn tlv(kind: u16, value: &[u8]) -> Vec<u8> {
    let len = u16::try_from(4 + value.len()).expect("parameters of the testkit are small");
    let mut v = Vec::with_capacity(value.len() + 8);
    v.extend_from_slice(&kind.to_be_bytes());
    v.extend_from_slice(&len.to_be_bytes());
    v.extend_from_slice(value);
    v.resize(v.len().next_multiple_of(4), 0);
    v
}

/// The TLVs of `bytes`: (type, value).
fn tlvs(mut bytes: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while let (Some(kind), Some(len)) = (be16(bytes, 0), be16(bytes, 2)) {
        let len = usize::from(len);
        if len < 4 || len > bytes.len() {
            break;
        }
        out.push((kind, &bytes[4..len]));
        bytes = &bytes[len.next_multiple_of(4).min(bytes.len())..];
    }
    out
}

/// A DATA chunk with `payload` (stream 0, sequence 0, no payload protocol).
fn data(tsn: u32, payload: &[u8]) -> Chunk {
    let mut v = Vec::with_capacity(12 + payload.len());
    v.extend_from_slice(&tsn.to_be_bytes());
    v.extend_from_slice(&[0; 8]);
    v.extend_from_slice(payload);
    Chunk::new(DATA, UNFRAGMENTED, v)
}

/// A SACK of everything up to `tsn`.
fn sack(tsn: u32) -> Chunk {
    let mut v = Vec::with_capacity(12);
    v.extend_from_slice(&tsn.to_be_bytes());
    v.extend_from_slice(&RECEIVE_WINDOW.to_be_bytes());
    v.extend_from_slice(&[0; 4]);
    Chunk::new(SACK, 0, v)
}

/// A DATA chunk's TSN and payload.
fn data_parts(chunk: &Chunk) -> Option<(u32, &[u8])> {
    Some((be32(&chunk.value, 0)?, chunk.value.get(12..)?))
}

// ---------------------------------------------------------------------------------------------
// The server.

/// The server side's answer to one packet to its port: stateless, its verification tag for
/// a peer is the peer's tag XOR `secret`.
pub(crate) fn answer(
    secret: u32,
    name: &str,
    peer: SocketAddr,
    packet: &SctpPacket,
    crc: Crc,
) -> Option<SctpPacket> {
    let reply = |vtag: u32, chunks: Vec<Chunk>| SctpPacket {
        src_port: packet.dst_port,
        dst_port: packet.src_port,
        vtag,
        chunks,
    };
    let first = packet.chunks.first()?;
    // Never an answer to an ABORT (RFC 9260 section 8.4), not even to a broken one.
    if first.kind == ABORT {
        return None;
    }
    // The peer's tag: an INIT's initiate tag, else derived from the tag the peer addressed.
    let peer_tag = if first.kind == INIT {
        be32(&first.value, 0)?
    } else {
        packet.vtag ^ secret
    };
    if peer_tag == 0 {
        return None;
    }
    if !crc.ok() {
        let note = format!(
            "{BAD_CRC_NOTE}: found {:#010x}, computed {:#010x}",
            crc.found, crc.computed
        );
        let cause = tlv(PROTOCOL_VIOLATION, note.as_bytes());
        return Some(reply(peer_tag, vec![Chunk::new(ABORT, 0, cause)]));
    }
    let my_tag = peer_tag ^ secret;
    let answer = || format!("{name} {peer}\n").into_bytes();
    match first.kind {
        INIT if packet.vtag == 0 && packet.chunks.len() == 1 && my_tag != 0 => {
            let peer_tsn = be32(&first.value, 12)?;
            let mut cookie = COOKIE_MAGIC.to_vec();
            cookie.extend_from_slice(&peer_tag.to_be_bytes());
            cookie.extend_from_slice(&peer_tsn.to_be_bytes());
            cookie.extend_from_slice(name.as_bytes());
            let value = init_value(my_tag, my_tag, &tlv(STATE_COOKIE, &cookie));
            Some(reply(peer_tag, vec![Chunk::new(INIT_ACK, 0, value)]))
        }
        COOKIE_ECHO => {
            let cookie = &first.value;
            if cookie.get(..4) != Some(COOKIE_MAGIC) || be32(cookie, 4)? != peer_tag {
                return None;
            }
            let mut chunks = vec![Chunk::new(COOKIE_ACK, 0, Vec::new())];
            chunks.extend(answers(&packet.chunks[1..], my_tag, &answer));
            Some(reply(peer_tag, chunks))
        }
        DATA => {
            let chunks = answers(&packet.chunks, my_tag, &answer);
            (!chunks.is_empty()).then(|| reply(peer_tag, chunks))
        }
        _ => None,
    }
}

/// A SACK and an answer for the first DATA chunk of `chunks` (one request per association).
fn answers(chunks: &[Chunk], my_tsn: u32, answer: &dyn Fn() -> Vec<u8>) -> Vec<Chunk> {
    chunks
        .iter()
        .filter(|c| c.kind == DATA)
        .find_map(data_parts)
        .map(|(tsn, _)| vec![sack(tsn), data(my_tsn, &answer())])
        .unwrap_or_default()
}

/// A server's raw SCTP socket of one family, answering on `port`.
#[derive(Debug)]
pub(super) struct Responder {
    fd: OwnedFd,
    v6: bool,
    port: u16,
    secret: u32,
}

/// A raw socket of `protocol`, non-blocking.
fn raw_socket(v6: bool, protocol: SockProtocol) -> Result<OwnedFd, Errno> {
    let family = if v6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    socket::socket(
        family,
        SockType::Raw,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        protocol,
    )
}

/// Received packets carry no IP header on IPv6 raw sockets: the address they were sent to
/// comes from `IPV6_PKTINFO`.
impl Responder {
    pub(super) fn bind(v6: bool, port: u16) -> Result<Responder, Errno> {
        let fd = raw_socket(v6, SockProtocol::Sctp)?;
        if v6 {
            socket::setsockopt(&fd, sockopt::Ipv6RecvPacketInfo, &true)?;
        }
        Ok(Responder {
            fd,
            v6,
            port,
            secret: random_u32() | 1,
        })
    }

    pub(super) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Answers what is waiting, at most 256 packets (so a flood cannot starve the server's
    /// stop flag).
    pub(super) fn answer_pending(&self, name: &str) {
        for _ in 0..256 {
            // Other errors concern one peer only.
            if self.answer_one(name) == Err(Errno::EAGAIN) {
                break;
            }
        }
    }

    fn answer_one(&self, name: &str) -> Result<(), Errno> {
        let mut buf = [0u8; 2048];
        let (len, from, to) = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let mut space = nix::cmsg_space!(libc::in6_pktinfo);
            let msg = socket::recvmsg::<SockaddrStorage>(
                self.fd.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::empty(),
            )?;
            let from = msg
                .address
                .as_ref()
                .and_then(to_socket_addr)
                .map(|a| a.ip());
            let mut to = None;
            for cmsg in msg.cmsgs()? {
                if let ControlMessageOwned::Ipv6PacketInfo(info) = cmsg {
                    to = Some(IpAddr::V6(Ipv6Addr::from(info.ipi6_addr.s6_addr)));
                }
            }
            (msg.bytes, from, to)
        };
        let received = &buf[..len];
        let (from, to, sctp) = if self.v6 {
            let (Some(from), Some(to)) = (from, to) else {
                return Ok(());
            };
            (from, to, received)
        } else {
            let Some((from, to, payload)) = ipv4_payload(received) else {
                return Ok(());
            };
            (IpAddr::V4(from), IpAddr::V4(to), payload)
        };
        let Some((packet, crc)) = SctpPacket::parse(sctp) else {
            return Ok(());
        };
        if packet.dst_port != self.port {
            return Ok(());
        }
        let peer = SocketAddr::new(from, packet.src_port);
        let Some(reply) = answer(self.secret, name, peer, &packet, crc) else {
            return Ok(());
        };
        send_from(self.fd.as_fd(), Some(to), from, &reply.emit())
    }
}

/// The source, destination and payload of an IPv4 packet as a raw IPv4 socket receives it.
fn ipv4_payload(packet: &[u8]) -> Option<(Ipv4Addr, Ipv4Addr, &[u8])> {
    let (src, dst, span) = ipv4_span(packet)?;
    Some((src, dst, &packet[span]))
}

/// [`ipv4_payload`] with the payload as a range of `packet`.
fn ipv4_span(packet: &[u8]) -> Option<(Ipv4Addr, Ipv4Addr, std::ops::Range<usize>)> {
    let ihl = usize::from(packet.first()? & 0x0f) * 4;
    let total = usize::from(be16(packet, 2)?).min(packet.len());
    let src: [u8; 4] = packet.get(12..16)?.try_into().ok()?;
    let dst: [u8; 4] = packet.get(16..20)?.try_into().ok()?;
    (ihl >= 20 && ihl <= total).then_some((src.into(), dst.into(), ihl..total))
}

/// Sends `bytes` to `to` on a raw socket, from `from` when given (`IP_PKTINFO`: a server
/// answers from the address it was asked at, so that a node's or a DSR backend's other
/// addresses do not show up as the answer's source).
fn send_from(
    fd: BorrowedFd<'_>,
    from: Option<IpAddr>,
    to: IpAddr,
    bytes: &[u8],
) -> Result<(), Errno> {
    // Raw sockets take the protocol from the socket: the port must be 0.
    let dst = SockaddrStorage::from(SocketAddr::new(to, 0));
    let v4;
    let v6;
    let mut cmsgs = Vec::new();
    match from {
        Some(IpAddr::V4(ip)) => {
            v4 = libc::in_pktinfo {
                ipi_ifindex: 0,
                ipi_spec_dst: libc::in_addr {
                    s_addr: u32::from(ip).to_be(),
                },
                ipi_addr: libc::in_addr { s_addr: 0 },
            };
            cmsgs.push(ControlMessage::Ipv4PacketInfo(&v4));
        }
        Some(IpAddr::V6(ip)) => {
            v6 = libc::in6_pktinfo {
                ipi6_addr: libc::in6_addr {
                    s6_addr: ip.octets(),
                },
                ipi6_ifindex: 0,
            };
            cmsgs.push(ControlMessage::Ipv6PacketInfo(&v6));
        }
        None => {}
    }
    socket::sendmsg(
        fd.as_raw_fd(),
        &[IoSlice::new(bytes)],
        &cmsgs,
        MsgFlags::empty(),
        Some(&dst),
    )
    .map(|_| ())
}

fn random_u32() -> u32 {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let seed = (
        std::time::SystemTime::now(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
    );
    RandomState::new().hash_one(seed) as u32
}

// ---------------------------------------------------------------------------------------------
// The probe.

/// What a probe's association is at.
#[derive(Debug)]
struct Association {
    dst: SocketAddr,
    local: SocketAddr,
    my_tag: u32,
    my_tsn: u32,
    /// The server's tag, once its INIT-ACK came.
    peer_tag: Option<u32>,
}

/// What one received packet means for the probe.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Not the probe's (another association's, or from another address or port).
    Ignore,
    /// Send this, then wait on.
    Send(SctpPacket),
    /// The probe ended.
    Done(Result<Ended, String>),
    /// The probe failed: a bad checksum, seen by the probe or by the server.
    BadChecksum { packet: String, detail: String },
}

/// How a probe ended without error.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// The answer line.
    Answer(String),
    Refused,
    Unreachable,
}

impl Association {
    fn packet(&self, vtag: u32, chunks: Vec<Chunk>) -> SctpPacket {
        SctpPacket {
            src_port: self.local.port(),
            dst_port: self.dst.port(),
            vtag,
            chunks,
        }
    }

    fn init(&self) -> SctpPacket {
        let value = init_value(self.my_tag, self.my_tsn, &[]);
        self.packet(0, vec![Chunk::new(INIT, 0, value)])
    }

    fn abort(&self) -> Option<SctpPacket> {
        self.peer_tag
            .map(|tag| self.packet(tag, vec![Chunk::new(ABORT, 0, Vec::new())]))
    }

    /// An SCTP packet from `from`.
    fn on_sctp(&mut self, from: IpAddr, bytes: &[u8]) -> Step {
        let Some((packet, crc)) = SctpPacket::parse(bytes) else {
            return Step::Ignore;
        };
        if packet.src_port != self.dst.port() || packet.dst_port != self.local.port() {
            return Step::Ignore;
        }
        let reflected = packet
            .chunks
            .first()
            .is_some_and(|c| c.kind == ABORT && c.flags & TAG_REFLECTED != 0);
        let tag_ok = if reflected {
            self.peer_tag == Some(packet.vtag)
        } else {
            packet.vtag == self.my_tag
        };
        if !tag_ok {
            return Step::Ignore;
        }
        if from != self.dst.ip() {
            // Ours by ports and tag, but not un-NATed: a connected TCP or UDP socket would
            // not take it either.
            tracing::warn!(%from, dst = %self.dst, "sctp answer from another address ignored");
            return Step::Ignore;
        }
        if !crc.ok() {
            let kinds: Vec<String> = packet.chunks.iter().map(|c| chunk_name(c.kind)).collect();
            return Step::BadChecksum {
                packet: format!(
                    "sctp {} from {from}:{} to {}",
                    kinds.join("+"),
                    packet.src_port,
                    self.local
                ),
                detail: format!(
                    "found {:#010x}, computed {:#010x}: whatever rewrote it did not recompute the checksum",
                    crc.found, crc.computed
                ),
            };
        }
        for chunk in &packet.chunks {
            match chunk.kind {
                INIT_ACK if self.peer_tag.is_none() => {
                    let Some(peer_tag) = be32(&chunk.value, 0).filter(|t| *t != 0) else {
                        return Step::Done(Err("INIT-ACK without an initiate tag".to_owned()));
                    };
                    let params = chunk.value.get(16..).unwrap_or_default();
                    let Some((_, cookie)) =
                        tlvs(params).into_iter().find(|(k, _)| *k == STATE_COOKIE)
                    else {
                        return Step::Done(Err("INIT-ACK without a State Cookie".to_owned()));
                    };
                    self.peer_tag = Some(peer_tag);
                    return Step::Send(self.packet(
                        peer_tag,
                        vec![
                            Chunk::new(COOKIE_ECHO, 0, cookie.to_vec()),
                            data(self.my_tsn, b"probe\n"),
                        ],
                    ));
                }
                ABORT => {
                    let note = tlvs(&chunk.value).into_iter().find(|(k, v)| {
                        *k == PROTOCOL_VIOLATION && v.starts_with(BAD_CRC_NOTE.as_bytes())
                    });
                    if let Some((_, note)) = note {
                        return Step::BadChecksum {
                            packet: format!(
                                "the probe's sctp packet from {} to {} as the server got it",
                                self.local, self.dst
                            ),
                            detail: String::from_utf8_lossy(note)
                                .trim_end_matches('\0')
                                .to_owned(),
                        };
                    }
                    return Step::Done(Ok(Ended::Refused));
                }
                DATA => {
                    let Some((_, payload)) = data_parts(chunk) else {
                        return Step::Done(Err("DATA chunk too short".to_owned()));
                    };
                    return Step::Done(Ok(Ended::Answer(
                        String::from_utf8_lossy(payload).into_owned(),
                    )));
                }
                _ => {}
            }
        }
        Step::Ignore
    }

    /// An ICMP or ICMPv6 message (without the outer IP header): an error quoting one of the
    /// probe's packets ends it.
    fn on_icmp(&self, message: &[u8]) -> Step {
        let (Some(&kind), Some(&code)) = (message.first(), message.get(1)) else {
            return Step::Ignore;
        };
        let quoted = message.get(8..).unwrap_or_default();
        let ended = if self.dst.is_ipv4() {
            match (kind, code) {
                // Protocol unreachable: a namespace without SCTP (nothing took the packet);
                // port unreachable: a reject.
                (3, 2 | 3) => Ended::Refused,
                // Fragmentation needed: not an end.
                (3, 4) => return Step::Ignore,
                (3 | 11, _) => Ended::Unreachable,
                _ => return Step::Ignore,
            }
        } else {
            match (kind, code) {
                (1, 4) | (4, 1) => Ended::Refused,
                (1 | 3, _) => Ended::Unreachable,
                _ => return Step::Ignore,
            }
        };
        let header = if self.dst.is_ipv4() {
            ipv4_payload(quoted).map(|(_, to, sctp)| (IpAddr::V4(to), quoted[9], sctp))
        } else {
            quoted.get(24..40).zip(quoted.get(40..)).map(|(to, sctp)| {
                let to: [u8; 16] = to.try_into().expect("16 bytes");
                (IpAddr::V6(to.into()), quoted[6], sctp)
            })
        };
        let Some((to, protocol, sctp)) = header else {
            return Step::Ignore;
        };
        let ours = i32::from(protocol) == libc::IPPROTO_SCTP
            && to == self.dst.ip()
            && be16(sctp, 0) == Some(self.local.port())
            && be16(sctp, 2) == Some(self.dst.port())
            && be32(sctp, 4).is_some_and(|vtag| vtag == 0 || Some(vtag) == self.peer_tag);
        if ours {
            Step::Done(Ok(ended))
        } else {
            Step::Ignore
        }
    }
}

fn chunk_name(kind: u8) -> String {
    match kind {
        DATA => "DATA".to_owned(),
        INIT => "INIT".to_owned(),
        INIT_ACK => "INIT-ACK".to_owned(),
        SACK => "SACK".to_owned(),
        ABORT => "ABORT".to_owned(),
        COOKIE_ECHO => "COOKIE-ECHO".to_owned(),
        COOKIE_ACK => "COOKIE-ACK".to_owned(),
        other => format!("chunk {other}"),
    }
}

/// The source address the kernel picks towards `dst` (a raw socket's own address shows only
/// once it sends).
fn route_source(dst: SocketAddr) -> Result<Result<IpAddr, ProbeOutcome>, TrafficError> {
    let any: SocketAddr = if dst.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let what = || format!("route to {dst}");
    let sock = UdpSocket::bind(any).map_err(|e| TrafficError::Io {
        what: what(),
        source: e,
    })?;
    match sock.connect(SocketAddr::new(dst.ip(), 9)) {
        Ok(()) => {}
        Err(e) => return super::outcome_or_error(e, what).map(Err),
    }
    sock.local_addr()
        .map(|a| Ok(a.ip()))
        .map_err(|e| TrafficError::Io {
            what: what(),
            source: e,
        })
}

/// One SCTP exchange from the calling thread's namespace: handshake, request, answer (see
/// the module docs), from `source` (address and/or port; a fresh port when it gives none).
pub(super) fn probe(
    source: Option<SocketAddr>,
    dst: SocketAddr,
    timeout: Duration,
) -> Result<ProbeOutcome, TrafficError> {
    let start = Instant::now();
    let deadline = start + timeout;
    let (sctp, icmp, mut assoc) = match open(source, dst)? {
        Ok(opened) => opened,
        Err(outcome) => return Ok(outcome),
    };
    let mut last = assoc.init();
    let mut sent_at = Instant::now();
    if let Some(outcome) = send(&sctp, dst, &last)? {
        return Ok(outcome);
    }
    let mut buf = [0u8; 2048];
    loop {
        let Some(left) = remaining(deadline) else {
            return Ok(ProbeOutcome::Timeout);
        };
        if sent_at.elapsed() >= RETRANSMIT_AFTER {
            sent_at = Instant::now();
            if let Some(outcome) = send(&sctp, dst, &last)? {
                return Ok(outcome);
            }
        }
        let wait = left
            .min(RETRANSMIT_AFTER.saturating_sub(sent_at.elapsed()))
            .max(Duration::from_millis(1));
        let ms = u16::try_from(wait.as_millis()).unwrap_or(1000);
        let mut fds = [
            PollFd::new(sctp.as_fd(), PollFlags::POLLIN),
            PollFd::new(icmp.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, ms) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(errno_err(format!("poll sctp probe to {dst}"))(e)),
        }
        for (fd, is_icmp) in [(&sctp, false), (&icmp, true)] {
            while let Some((from, payload)) = next_packet(fd, dst, &mut buf)? {
                let step = if is_icmp {
                    assoc.on_icmp(payload)
                } else {
                    assoc.on_sctp(from, payload)
                };
                match step {
                    Step::Ignore => {}
                    Step::Send(packet) => {
                        last = packet;
                        sent_at = Instant::now();
                        if let Some(outcome) = send(&sctp, dst, &last)? {
                            return Ok(outcome);
                        }
                    }
                    Step::BadChecksum { packet, detail } => {
                        return Err(TrafficError::BadChecksum { packet, detail });
                    }
                    Step::Done(ended) => return finish(&assoc, &sctp, ended, start),
                }
            }
        }
    }
}

/// A probe's raw SCTP and ICMP sockets and its association, or how it ended at once (no
/// route).
type Opened = Result<(OwnedFd, OwnedFd, Association), ProbeOutcome>;

fn open(source: Option<SocketAddr>, dst: SocketAddr) -> Result<Opened, TrafficError> {
    let v6 = dst.is_ipv6();
    // Both sockets exist before the INIT leaves: without a raw SCTP socket the namespace
    // answers the INIT-ACK with ICMP protocol unreachable.
    let sctp = raw_socket(v6, SockProtocol::Sctp)
        .map_err(errno_err(format!("raw sctp socket for {dst}")))?;
    let icmp_protocol = if v6 {
        SockProtocol::IcmpV6
    } else {
        SockProtocol::Icmp
    };
    let icmp =
        raw_socket(v6, icmp_protocol).map_err(errno_err(format!("raw icmp socket for {dst}")))?;
    let port = source
        .map(|s| s.port())
        .filter(|p| *p != 0)
        .unwrap_or_else(fresh_port);
    let ip = match source.map(|s| s.ip()).filter(|ip| !ip.is_unspecified()) {
        Some(ip) => {
            socket::bind(
                sctp.as_raw_fd(),
                &SockaddrStorage::from(SocketAddr::new(ip, 0)),
            )
            .map_err(errno_err(format!("bind raw sctp socket to {ip}")))?;
            ip
        }
        None => match route_source(dst)? {
            Ok(ip) => ip,
            Err(outcome) => return Ok(Err(outcome)),
        },
    };
    let assoc = Association {
        dst,
        local: SocketAddr::new(ip, port),
        my_tag: random_u32() | 1,
        my_tsn: random_u32(),
        peer_tag: None,
    };
    Ok(Ok((sctp, icmp, assoc)))
}

/// The next packet waiting on a probe's raw socket: its source and its payload past the IP
/// header (IPv4 raw sockets get the IP header, IPv6 ones do not); `None` once none waits.
fn next_packet<'b>(
    fd: &OwnedFd,
    dst: SocketAddr,
    buf: &'b mut [u8],
) -> Result<Option<(IpAddr, &'b [u8])>, TrafficError> {
    loop {
        let (n, from) = match socket::recvfrom::<SockaddrStorage>(fd.as_raw_fd(), buf) {
            Ok((n, from)) => (n, from.as_ref().and_then(to_socket_addr).map(|a| a.ip())),
            Err(Errno::EAGAIN) => return Ok(None),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(errno_err(format!("receive for sctp probe to {dst}"))(e)),
        };
        if dst.is_ipv6() {
            if let Some(from) = from {
                return Ok(Some((from, &buf[..n])));
            }
        } else if let Some((from, _, span)) = ipv4_span(&buf[..n]) {
            return Ok(Some((IpAddr::V4(from), &buf[span])));
        }
    }
}

fn finish(
    assoc: &Association,
    sctp: &OwnedFd,
    ended: Result<Ended, String>,
    start: Instant,
) -> Result<ProbeOutcome, TrafficError> {
    let dst = assoc.dst;
    match ended {
        Ok(Ended::Answer(line)) => {
            let latency = start.elapsed();
            // Closes the association (and its conntrack entries) at once; losing it only
            // leaves them to time out.
            if let Some(abort) = assoc.abort() {
                let _ = send(sctp, dst, &abort);
            }
            let (backend, seen_source) = parse_reply(dst, &line)?;
            Ok(ProbeOutcome::Answered {
                backend,
                seen_source,
                latency,
                local: assoc.local,
            })
        }
        Ok(Ended::Refused) => Ok(ProbeOutcome::Refused),
        Ok(Ended::Unreachable) => Ok(ProbeOutcome::Unreachable),
        Err(reply) => Err(TrafficError::BadReply { from: dst, reply }),
    }
}

/// Sends `packet`; an immediate routing error ends the probe (`Some`). A drop in the
/// namespace's own output hook (EPERM) is left to time out, as for UDP.
fn send(
    sctp: &OwnedFd,
    dst: SocketAddr,
    packet: &SctpPacket,
) -> Result<Option<ProbeOutcome>, TrafficError> {
    match send_from(sctp.as_fd(), None, dst.ip(), &packet.emit()) {
        Ok(()) | Err(Errno::EPERM) => Ok(None),
        Err(e) => super::outcome_or_error(e.into(), || format!("send sctp to {dst}")).map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assoc() -> Association {
        Association {
            dst: "10.96.0.10:80".parse().unwrap(),
            local: "10.244.0.10:20001".parse().unwrap(),
            my_tag: 0x1111_2222,
            my_tsn: 7,
            peer_tag: None,
        }
    }

    #[test]
    fn crc32c_is_the_castagnoli_checksum_stored_little_endian() {
        // RFC 3720 B.4's check value, and the checksum field taken as zero.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        let mut bytes = vec![0u8; 12];
        bytes[..9].copy_from_slice(b"123456789");
        assert_eq!(
            checksum(&bytes),
            crc32c::crc32c(&[b'1', b'2', b'3', b'4', b'5', b'6', b'7', b'8', 0, 0, 0, 0])
        );
        let init = assoc().init();
        let wire = init.emit();
        assert_eq!(
            wire,
            [
                0x4e, 0x21, 0x00, 0x50, // ports 20001 -> 80
                0, 0, 0, 0, // vtag 0
                wire[8], wire[9], wire[10], wire[11], // checked below
                1, 0, 0, 20, // INIT, length 20
                0x11, 0x11, 0x22, 0x22, // initiate tag
                0, 1, 0, 0, // a_rwnd
                0, 1, 0, 1, // streams
                0, 0, 0, 7, // initial TSN
            ]
        );
        let mut zeroed = wire.clone();
        zeroed[8..12].fill(0);
        assert_eq!(wire[8..12], crc32c::crc32c(&zeroed).to_le_bytes());
        let (parsed, crc) = SctpPacket::parse(&wire).unwrap();
        assert_eq!(parsed, init);
        assert!(crc.ok());
    }

    #[test]
    fn handshake_and_request_are_answered() {
        let secret = 0x5a5a_0001;
        let peer: SocketAddr = "10.244.0.10:20001".parse().unwrap();
        let mut a = assoc();
        let run = |p: &SctpPacket| {
            let (p, crc) = SctpPacket::parse(&p.emit()).unwrap();
            answer(secret, "pod-1-0", peer, &p, crc)
        };
        let init_ack = run(&a.init()).expect("INIT answered");
        assert_eq!(init_ack.vtag, a.my_tag);
        assert_eq!(init_ack.first(), Some(INIT_ACK));
        let from = a.dst.ip();
        let Step::Send(echo) = a.on_sctp(from, &init_ack.emit()) else {
            panic!("no COOKIE-ECHO");
        };
        assert_eq!(a.peer_tag, Some(a.my_tag ^ secret));
        assert_eq!(echo.vtag, a.my_tag ^ secret);
        let kinds: Vec<u8> = echo.chunks.iter().map(|c| c.kind).collect();
        assert_eq!(kinds, [COOKIE_ECHO, DATA]);
        let reply = run(&echo).expect("COOKIE-ECHO answered");
        let kinds: Vec<u8> = reply.chunks.iter().map(|c| c.kind).collect();
        assert_eq!(kinds, [COOKIE_ACK, SACK, DATA]);
        assert_eq!(
            a.on_sctp(from, &reply.emit()),
            Step::Done(Ok(Ended::Answer("pod-1-0 10.244.0.10:20001\n".to_owned())))
        );
        // A cookie of another association, or a request with a tag the server never gave
        // (its peer tag derived from it is 0), get nothing.
        let mut forged = echo.clone();
        forged.vtag ^= 0x10;
        assert_eq!(run(&forged), None);
        let mut stray = echo;
        stray.vtag = secret;
        assert_eq!(run(&stray), None);
        // The probe's closing ABORT gets nothing, even with a bad checksum.
        let abort = a.abort().unwrap();
        assert_eq!(run(&abort), None);
        let mut wire = abort.emit();
        wire[8] ^= 1;
        let (broken, crc) = SctpPacket::parse(&wire).unwrap();
        assert_eq!(answer(secret, "pod-1-0", peer, &broken, crc), None);
    }

    #[test]
    fn answers_of_other_associations_are_ignored() {
        let secret = 3;
        let peer: SocketAddr = "10.244.0.10:20001".parse().unwrap();
        let mut a = assoc();
        let (p, crc) = SctpPacket::parse(&a.init().emit()).unwrap();
        let init_ack = answer(secret, "pod-1-0", peer, &p, crc).unwrap();
        let from = a.dst.ip();
        for wrong in [
            SctpPacket {
                src_port: 81,
                ..init_ack.clone()
            },
            SctpPacket {
                dst_port: 20002,
                ..init_ack.clone()
            },
            SctpPacket {
                vtag: a.my_tag + 1,
                ..init_ack.clone()
            },
        ] {
            assert_eq!(a.on_sctp(from, &wrong.emit()), Step::Ignore, "{wrong:?}");
        }
        assert_eq!(
            a.on_sctp("10.244.1.10".parse().unwrap(), &init_ack.emit()),
            Step::Ignore
        );
        assert!(a.peer_tag.is_none());
    }

    #[test]
    fn a_bad_checksum_fails_the_probe_either_way() {
        let secret = 3;
        let peer: SocketAddr = "10.244.0.10:20001".parse().unwrap();
        let mut a = assoc();
        let mut wire = a.init().emit();
        wire[8] ^= 0xff;
        let (p, crc) = SctpPacket::parse(&wire).unwrap();
        assert!(!crc.ok());
        // The server tells: an ABORT with a protocol-violation cause.
        let abort = answer(secret, "pod-1-0", peer, &p, crc).unwrap();
        assert_eq!(abort.first(), Some(ABORT));
        assert_eq!(abort.vtag, a.my_tag);
        let from = a.dst.ip();
        let Step::BadChecksum { detail, .. } = a.on_sctp(from, &abort.emit()) else {
            panic!("the server's report was not taken");
        };
        assert!(detail.starts_with(BAD_CRC_NOTE), "{detail}");
        // An answer with a bad checksum.
        let (p, crc) = SctpPacket::parse(&a.init().emit()).unwrap();
        let mut init_ack = answer(secret, "pod-1-0", peer, &p, crc).unwrap().emit();
        init_ack[11] ^= 1;
        let Step::BadChecksum { packet, .. } = a.on_sctp(from, &init_ack) else {
            panic!("a bad checksum was taken");
        };
        assert!(packet.contains("INIT-ACK"), "{packet}");
        // A plain ABORT is a refusal.
        let plain = SctpPacket {
            src_port: 80,
            dst_port: 20001,
            vtag: a.my_tag,
            chunks: vec![Chunk::new(ABORT, 0, Vec::new())],
        };
        assert_eq!(
            a.on_sctp(from, &plain.emit()),
            Step::Done(Ok(Ended::Refused))
        );
    }

    #[test]
    fn icmp_errors_quoting_the_probe_end_it() {
        let a = assoc();
        let init = a.init().emit();
        let mut quoted = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 132, 0, 0];
        quoted.extend_from_slice(&[10, 244, 0, 10, 10, 96, 0, 10]);
        let total = u16::try_from(quoted.len() + init.len()).unwrap();
        quoted[2..4].copy_from_slice(&total.to_be_bytes());
        quoted.extend_from_slice(&init);
        let icmp = |kind: u8, code: u8, quoted: &[u8]| {
            let mut m = vec![kind, code, 0, 0, 0, 0, 0, 0];
            m.extend_from_slice(quoted);
            m
        };
        assert_eq!(
            a.on_icmp(&icmp(3, 3, &quoted)),
            Step::Done(Ok(Ended::Refused))
        );
        assert_eq!(
            a.on_icmp(&icmp(3, 2, &quoted)),
            Step::Done(Ok(Ended::Refused))
        );
        assert_eq!(
            a.on_icmp(&icmp(3, 1, &quoted)),
            Step::Done(Ok(Ended::Unreachable))
        );
        assert_eq!(a.on_icmp(&icmp(3, 4, &quoted)), Step::Ignore);
        let mut other = quoted.clone();
        other[20] ^= 1; // another source port
        assert_eq!(a.on_icmp(&icmp(3, 3, &other)), Step::Ignore);
    }
}
