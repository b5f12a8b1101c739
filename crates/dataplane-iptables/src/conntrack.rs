//! The kernel's connection tracking table: service flows read from `/proc/net/nf_conntrack`
//! ([`parse`]), and the stale datagram flows deleted after a sync ([`Stale`], [`flush`]).
//!
//! Why delete: a UDP (or SCTP) client that keeps its source port keeps its conntrack entry
//! alive with every packet, and the entry keeps the NAT it was created with, so the client
//! would reach a removed endpoint forever (the DNS-after-CoreDNS-restart problem). kube-proxy
//! deletes those entries after every sync: `pkg/proxy/conntrack/cleanup.go`,
//! `CleanStaleEntries`. Its `deleteStaleEndpointConntrackEntries` deletes, for each removed UDP
//! endpoint of a service port, the entries with original destination the ClusterIP, an
//! externalIP or a LoadBalancer IP and reply source the endpoint (`ClearEntriesForNAT`), and
//! for a NodePort those with that original destination port and reply source
//! (`ClearEntriesForPortNAT`); its `deleteStaleServiceConntrackEntries` deletes every UDP entry
//! to the IPs of a service port that went from no endpoints to some (the "black hole" entries
//! of the time it had none) and to removed ClusterIPs. Later kube-proxy releases reconcile
//! against the current state instead (one dump; delete what a service IP or NodePort was not
//! answered from by a serving endpoint), which covers the same cases; we do that, per
//! frontend `address:port` and protocol (kube-proxy keys by address), for UDP and SCTP, over
//! the frontends a sync touched, including those of services or ports it removed (which keep
//! no endpoint).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use dataplane_core::{DesiredState, Flow, ObjectName, Protocol, Service};
use nix::sys::socket::{recv, send, MsgFlags};

use crate::nft::netlink::push_attr;

/// Frontend (address, port, protocol) → service, for every frontend of `state`.
pub fn frontends(state: &DesiredState) -> BTreeMap<(SocketAddr, Protocol), ObjectName> {
    let mut out = BTreeMap::new();
    for s in &state.services {
        for p in &s.ports {
            let ips = s
                .cluster_ips
                .iter()
                .chain(&s.external_ips)
                .chain(&s.load_balancer_ips);
            for ip in ips {
                out.insert((SocketAddr::new(*ip, p.port), p.protocol), s.name.clone());
            }
            if let Some(np) = p.node_port {
                for ip in &state.node.addresses {
                    out.insert((SocketAddr::new(*ip, np), p.protocol), s.name.clone());
                }
            }
        }
    }
    out
}

/// Parses `/proc/net/nf_conntrack` text into the flows whose original destination is a
/// service frontend and that were destination-NATed.
pub fn parse(text: &str, frontends: &BTreeMap<(SocketAddr, Protocol), ObjectName>) -> Vec<Flow> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let Some(protocol) = words.nth(2).and_then(Protocol::from_name) else {
            continue;
        };
        let mut addrs: Vec<IpAddr> = Vec::new();
        let mut ports: Vec<u16> = Vec::new();
        for w in line.split_whitespace() {
            if let Some(v) = w.strip_prefix("src=").or_else(|| w.strip_prefix("dst=")) {
                if let Ok(ip) = v.parse() {
                    addrs.push(ip);
                }
            } else if let Some(v) = w
                .strip_prefix("sport=")
                .or_else(|| w.strip_prefix("dport="))
            {
                if let Ok(p) = v.parse() {
                    ports.push(p);
                }
            }
        }
        if addrs.len() < 4 || ports.len() < 4 {
            continue;
        }
        let client = SocketAddr::new(addrs[0], ports[0]);
        let frontend = SocketAddr::new(addrs[1], ports[1]);
        let backend = SocketAddr::new(addrs[2], ports[2]);
        if backend == frontend {
            continue;
        }
        let Some(service) = frontends.get(&(frontend, protocol)) else {
            continue;
        };
        out.push(Flow {
            protocol,
            client,
            frontend,
            backend,
            service: Some(service.clone()),
        });
    }
    out
}

/// The datagram frontends a sync touched and the endpoint addresses each may still answer
/// from: conntrack entries to them that were answered from anywhere else are stale.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stale {
    /// `address:port` and protocol of a ClusterIP, externalIP, LoadBalancer IP or NodePort on
    /// a node address → the serving endpoint addresses.
    frontends: BTreeMap<(SocketAddr, Protocol), BTreeSet<IpAddr>>,
    /// NodePort and protocol → the serving endpoint addresses (a NodePort answers on any
    /// local address, so kube-proxy matches it by port).
    node_ports: BTreeMap<(u16, Protocol), BTreeSet<IpAddr>>,
    /// The node's service CIDRs: a ClusterIP is never a NodePort destination (a ClusterIP
    /// port may have a NodePort's number).
    service_cidrs: Vec<ipnetwork::IpNetwork>,
}

/// Whether conntrack cleanup is about `protocol`: a connectionless one, whose entries the
/// client's packets keep alive (TCP connections end and get a new entry each).
fn datagram(protocol: Protocol) -> bool {
    matches!(protocol, Protocol::Udp | Protocol::Sctp)
}

/// The addresses `service` answers on with its ports: ClusterIPs, externalIPs and
/// LoadBalancer IPs.
fn service_ips(service: &Service) -> impl Iterator<Item = &IpAddr> {
    service
        .cluster_ips
        .iter()
        .chain(&service.external_ips)
        .chain(&service.load_balancer_ips)
}

impl Stale {
    /// Nothing yet, on a node with service CIDRs `service_cidrs`.
    pub fn new(service_cidrs: &[ipnetwork::IpNetwork]) -> Self {
        Self {
            service_cidrs: service_cidrs.to_vec(),
            ..Self::default()
        }
    }

    /// Nothing to clean.
    pub fn is_empty(&self) -> bool {
        self.frontends.is_empty() && self.node_ports.is_empty()
    }

    /// The frontends of `service` as it is now, programmed on a node with `node_addresses`:
    /// entries to them must come back from one of its serving endpoints.
    pub fn current(&mut self, service: &Service, node_addresses: &[IpAddr]) {
        // kube-proxy: `endpoint.IsServing()` (a terminating endpoint that still serves keeps
        // its flows).
        let serving: BTreeSet<IpAddr> = service
            .backends
            .iter()
            .filter(|b| b.serving || b.ready)
            .map(|b| b.ip)
            .collect();
        for p in service.ports.iter().filter(|p| datagram(p.protocol)) {
            for ip in service_ips(service) {
                self.frontends
                    .insert((SocketAddr::new(*ip, p.port), p.protocol), serving.clone());
            }
            if let Some(np) = p.node_port {
                self.node_ports.insert((np, p.protocol), serving.clone());
                for ip in node_addresses {
                    self.frontends
                        .insert((SocketAddr::new(*ip, np), p.protocol), serving.clone());
                }
            }
        }
    }

    /// The frontends of `service` as it was before the sync: those it no longer has (the
    /// whole service, or a port, removed) keep no endpoint. Call after [`Stale::current`] or
    /// before it, it keeps what `current` recorded.
    pub fn previous(&mut self, service: &Service, node_addresses: &[IpAddr]) {
        for p in service.ports.iter().filter(|p| datagram(p.protocol)) {
            for ip in service_ips(service) {
                self.removed_frontend(SocketAddr::new(*ip, p.port), p.protocol);
            }
            if let Some(np) = p.node_port {
                self.node_ports.entry((np, p.protocol)).or_default();
                for ip in node_addresses {
                    self.removed_frontend(SocketAddr::new(*ip, np), p.protocol);
                }
            }
        }
    }

    /// A frontend that was programmed before the sync (kept when the sync programs it too).
    pub fn removed_frontend(&mut self, frontend: SocketAddr, protocol: Protocol) {
        if datagram(protocol) {
            self.frontends.entry((frontend, protocol)).or_default();
        }
    }

    /// The stale frontends of a full sync from `old` (the last applied state, if any) to
    /// `new`.
    pub fn between(old: Option<&DesiredState>, new: &DesiredState) -> Self {
        let mut out = Self::new(&new.node.service_cidrs);
        for s in &new.services {
            out.current(s, &new.node.addresses);
        }
        if let Some(old) = old {
            for s in &old.services {
                out.previous(s, &old.node.addresses);
            }
        }
        out
    }

    /// The stale frontends of a change set on `node`: the changed
    /// services' frontends only (the others' endpoints did not change).
    pub fn of_changes(changes: &dataplane_core::ChangeSet, node: &dataplane_core::Node) -> Self {
        let node_addresses = &node.addresses;
        let mut out = Self::new(&node.service_cidrs);
        for c in changes.services.values() {
            if let Some(s) = &c.current {
                out.current(s, node_addresses);
            }
        }
        for c in changes.services.values() {
            if let Some(s) = &c.previous {
                out.previous(s, node_addresses);
            }
        }
        out
    }

    /// Whether `entry` is stale: a datagram flow to one of these frontends that was not
    /// answered from one of its endpoints.
    pub fn matches(&self, entry: &Entry) -> bool {
        let Some(protocol) = Protocol::from_number(entry.protocol) else {
            return false;
        };
        if let Some(ok) = self.frontends.get(&(entry.orig_dst, protocol)) {
            return !ok.contains(&entry.reply_src);
        }
        // By port on any address, as kube-proxy does, but only for entries that were
        // destination-NATed (answered from elsewhere than where they were sent: a pod's flow
        // to some outside server on a port that happens to be a NodePort is not ours) and
        // not to a ClusterIP. Un-NATed entries to a NodePort on a node address are in
        // `frontends`.
        let dst = entry.orig_dst.ip();
        if entry.reply_src == dst || self.service_cidrs.iter().any(|n| n.contains(dst)) {
            return false;
        }
        self.node_ports
            .get(&(entry.orig_dst.port(), protocol))
            .is_some_and(|ok| !ok.contains(&entry.reply_src))
    }
}

/// One conntrack entry: what identifies it for a delete and what [`Stale::matches`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// IP protocol number.
    pub protocol: u8,
    /// Original direction source.
    pub orig_src: SocketAddr,
    /// Original direction destination (the frontend).
    pub orig_dst: SocketAddr,
    /// Reply direction source (the endpoint that answered, after DNAT).
    pub reply_src: IpAddr,
    /// Conntrack zone (0 unless something set one).
    pub zone: u16,
}

// ctnetlink (include/uapi/linux/netfilter/nfnetlink_conntrack.h).
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_STATUS: u16 = 3;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// What one [`flush`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Flushed {
    /// Entries read.
    pub scanned: usize,
    /// Stale entries deleted.
    pub deleted: usize,
}

/// Deletes the conntrack entries of `netns` (the caller's namespace when `None`) that `stale`
/// matches: one dump of the table (both families), then one delete per stale entry. Cost:
/// the dump is linear in the table (kube-proxy dumps it on every sync too); it runs only
/// when a sync touched a datagram frontend.
pub fn flush(netns: Option<&Path>, stale: &Stale) -> Result<Flushed, String> {
    if stale.is_empty() {
        return Ok(Flushed::default());
    }
    let fd = crate::nft::netlink::open_socket(netns).map_err(|e| e.to_string())?;
    let entries = dump(&fd)?;
    let mut out = Flushed {
        scanned: entries.len(),
        deleted: 0,
    };
    for e in entries.iter().filter(|e| stale.matches(e)) {
        match delete(&fd, e) {
            Ok(()) => out.deleted += 1,
            // Gone since the dump (expired, or deleted by someone else): what we wanted.
            Err(nix::errno::Errno::ENOENT) => {}
            Err(errno) => {
                return Err(format!(
                    "deleting the conntrack entry {} -> {}: {errno}",
                    e.orig_src, e.orig_dst
                ))
            }
        }
    }
    Ok(out)
}

/// [`flush`] after a successful sync of `backend`: a failure is a warning of the sync's
/// report, never its error (the rules are in; the stale flows then only age out, as before).
pub fn clean(
    backend: &str,
    netns: Option<&Path>,
    stale: &Stale,
    warnings: &mut Vec<dataplane_core::Warning>,
) {
    match flush(netns, stale) {
        Ok(f) => {
            if f.deleted > 0 {
                tracing::debug!(
                    backend,
                    scanned = f.scanned,
                    deleted = f.deleted,
                    "stale conntrack entries deleted"
                );
            }
        }
        Err(message) => {
            tracing::warn!(backend, %message, "stale conntrack entries not deleted");
            warnings.push(dataplane_core::Warning {
                object: format!("{backend} dataplane"),
                field: "conntrack".to_owned(),
                message: format!(
                    "stale UDP/SCTP conntrack entries of removed endpoints were not deleted \
                     (clients that keep their source port may reach them until the entries \
                     expire): {message}"
                ),
            });
        }
    }
}

pub(crate) fn push_nested(buf: &mut Vec<u8>, kind: u16, build: impl FnOnce(&mut Vec<u8>)) {
    let mut inner = Vec::new();
    build(&mut inner);
    push_attr(buf, kind | NLA_F_NESTED, &inner);
}

/// A netlink message of ctnetlink: header, `nfgenmsg` (`family`, version 0, `res_id` 0), body.
fn message(kind: u16, flags: u16, seq: u32, family: u8, body: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(20 + body.len());
    buf.extend_from_slice(&((20 + body.len()) as u32).to_ne_bytes());
    buf.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | kind).to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf.extend_from_slice(&[family, 0, 0, 0]);
    buf.extend_from_slice(body);
    buf
}

/// The attributes in `buf`: (type without flags, payload).
pub(crate) fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([buf[0], buf[1]]));
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            return None;
        }
        let payload = &buf[4..len];
        buf = &buf[((len + 3) & !3).min(buf.len())..];
        Some((kind, payload))
    })
}

fn ip_of(payload: &[u8]) -> Option<IpAddr> {
    match payload.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::from(
            <[u8; 4]>::try_from(payload).ok()?,
        ))),
        16 => Some(IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(payload).ok()?,
        ))),
        _ => None,
    }
}

fn port_of(payload: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(payload.get(..2)?.try_into().ok()?))
}

/// (protocol, source, destination) of a `CTA_TUPLE_*` payload.
fn tuple(payload: &[u8]) -> Option<(u8, SocketAddr, SocketAddr)> {
    let (mut src, mut dst, mut proto, mut sport, mut dport) = (None, None, None, None, None);
    for (kind, p) in attrs(payload) {
        match kind {
            CTA_TUPLE_IP => {
                for (k, a) in attrs(p) {
                    match k {
                        CTA_IP_V4_SRC | CTA_IP_V6_SRC => src = ip_of(a),
                        CTA_IP_V4_DST | CTA_IP_V6_DST => dst = ip_of(a),
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (k, a) in attrs(p) {
                    match k {
                        CTA_PROTO_NUM => proto = a.first().copied(),
                        CTA_PROTO_SRC_PORT => sport = port_of(a),
                        CTA_PROTO_DST_PORT => dport = port_of(a),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some((
        proto?,
        SocketAddr::new(src?, sport.unwrap_or(0)),
        SocketAddr::new(dst?, dport.unwrap_or(0)),
    ))
}

/// The entry of one `IPCTNL_MSG_CT_NEW` message body (after `nfgenmsg`); `None` for entries
/// without ports (ICMP and others: never a service flow).
pub fn parse_entry(body: &[u8]) -> Option<Entry> {
    let (mut orig, mut reply, mut zone) = (None, None, 0);
    for (kind, p) in attrs(body) {
        match kind {
            CTA_TUPLE_ORIG => orig = tuple(p),
            CTA_TUPLE_REPLY => reply = tuple(p),
            CTA_ZONE => zone = port_of(p).unwrap_or(0),
            _ => {}
        }
    }
    let (protocol, orig_src, orig_dst) = orig?;
    let (_, reply_src, _) = reply?;
    Some(Entry {
        protocol,
        orig_src,
        orig_dst,
        reply_src: reply_src.ip(),
        zone,
    })
}

/// `IPS_SRC_NAT` in `CTA_STATUS`: the connection's source is translated (masquerade, SNAT).
pub const IPS_SRC_NAT: u32 = 0x10;
/// `IPS_DST_NAT`: the connection's destination is translated (a service's DNAT).
pub const IPS_DST_NAT: u32 = 0x20;

/// A whole conntrack entry as a ctnetlink event carries it: both tuples and the status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CtFlow {
    /// IP protocol number.
    pub protocol: u8,
    /// Original direction: the client and the address it sent to.
    pub orig_src: SocketAddr,
    /// Original destination (a frontend, for a service connection).
    pub orig_dst: SocketAddr,
    /// Reply direction source: who answers (the backend after DNAT).
    pub reply_src: SocketAddr,
    /// Reply destination: whom the answer goes to (the masquerade address after SNAT).
    pub reply_dst: SocketAddr,
    /// `CTA_STATUS` bits (`IPS_*`), 0 when absent.
    pub status: u32,
}

/// The entry of one ctnetlink message body (after `nfgenmsg`) with both tuples; `None`
/// without them.
pub fn parse_flow(body: &[u8]) -> Option<CtFlow> {
    let (mut orig, mut reply, mut status) = (None, None, 0);
    for (kind, p) in attrs(body) {
        match kind {
            CTA_TUPLE_ORIG => orig = tuple(p),
            CTA_TUPLE_REPLY => reply = tuple(p),
            CTA_STATUS => {
                status = p
                    .get(..4)
                    .and_then(|b| b.try_into().ok())
                    .map_or(0, u32::from_be_bytes);
            }
            _ => {}
        }
    }
    let (protocol, orig_src, orig_dst) = orig?;
    let (_, reply_src, reply_dst) = reply?;
    Some(CtFlow {
        protocol,
        orig_src,
        orig_dst,
        reply_src,
        reply_dst,
        status,
    })
}

fn recv_err(e: nix::errno::Errno) -> String {
    format!("conntrack netlink recv: {e}")
}

/// Every entry with ports, both families.
fn dump(fd: &OwnedFd) -> Result<Vec<Entry>, String> {
    // Family AF_UNSPEC: the kernel dumps every layer-3 protocol.
    let request = message(IPCTNL_MSG_CT_GET, NLM_F_REQUEST | NLM_F_DUMP, 1, 0, &[]);
    send(fd.as_raw_fd(), &request, MsgFlags::empty())
        .map_err(|e| format!("conntrack netlink send: {e}"))?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()).map_err(recv_err)?;
        if n == 0 {
            return Err("conntrack dump: the socket closed".to_owned());
        }
        let mut off = 0;
        while off + 16 <= n {
            let len = u32::from_ne_bytes(buf[off..off + 4].try_into().expect("4 bytes")) as usize;
            let kind = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().expect("2 bytes"));
            if len < 16 || off + len > n {
                return Err("conntrack dump: truncated netlink message".to_owned());
            }
            match kind {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => {
                    let code = error_code(&buf[off..off + len]);
                    if code != 0 {
                        return Err(format!(
                            "conntrack dump refused: {}",
                            nix::errno::Errno::from_raw(-code)
                        ));
                    }
                }
                k if k == (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW && len >= 20 => {
                    if let Some(e) = parse_entry(&buf[off + 20..off + len]) {
                        out.push(e);
                    }
                }
                _ => {}
            }
            off += (len + 3) & !3;
        }
    }
}

fn error_code(msg: &[u8]) -> i32 {
    msg.get(16..20)
        .and_then(|b| b.try_into().ok())
        .map_or(-libc_eproto(), i32::from_ne_bytes)
}

const fn libc_eproto() -> i32 {
    nix::errno::Errno::EPROTO as i32
}

/// The `IPCTNL_MSG_CT_DELETE` request of `e` (its original tuple and zone).
pub fn delete_request(e: &Entry, seq: u32) -> Vec<u8> {
    let (family, src_kind, dst_kind) = if e.orig_src.is_ipv4() {
        (AF_INET, CTA_IP_V4_SRC, CTA_IP_V4_DST)
    } else {
        (AF_INET6, CTA_IP_V6_SRC, CTA_IP_V6_DST)
    };
    let octets = |ip: IpAddr| match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    let mut body = Vec::new();
    push_nested(&mut body, CTA_TUPLE_ORIG, |t| {
        push_nested(t, CTA_TUPLE_IP, |ip| {
            push_attr(ip, src_kind, &octets(e.orig_src.ip()));
            push_attr(ip, dst_kind, &octets(e.orig_dst.ip()));
        });
        push_nested(t, CTA_TUPLE_PROTO, |p| {
            push_attr(p, CTA_PROTO_NUM, &[e.protocol]);
            push_attr(p, CTA_PROTO_SRC_PORT, &e.orig_src.port().to_be_bytes());
            push_attr(p, CTA_PROTO_DST_PORT, &e.orig_dst.port().to_be_bytes());
        });
    });
    if e.zone != 0 {
        push_attr(&mut body, CTA_ZONE, &e.zone.to_be_bytes());
    }
    message(
        IPCTNL_MSG_CT_DELETE,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        family,
        &body,
    )
}

fn delete(fd: &OwnedFd, e: &Entry) -> Result<(), nix::errno::Errno> {
    send(fd.as_raw_fd(), &delete_request(e, 2), MsgFlags::empty())?;
    let mut buf = [0u8; 4096];
    loop {
        let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty())?;
        let mut off = 0;
        while off + 16 <= n {
            let len = u32::from_ne_bytes(buf[off..off + 4].try_into().expect("4 bytes")) as usize;
            let kind = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().expect("2 bytes"));
            if len < 16 || off + len > n {
                return Err(nix::errno::Errno::EPROTO);
            }
            if kind == NLMSG_ERROR {
                let code = error_code(&buf[off..off + len]);
                return if code == 0 {
                    Ok(())
                } else {
                    Err(nix::errno::Errno::from_raw(-code))
                };
            }
            off += (len + 3) & !3;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataplane_core::{Backend, ServicePort};

    fn dns(backends: &[&str]) -> Service {
        let mut s = Service::new(ObjectName::new("kube-system", "dns"));
        s.cluster_ips = vec!["10.96.0.10".parse().unwrap()];
        s.ports = vec![ServicePort::new(Protocol::Udp, 53, 53)];
        s.backends = backends
            .iter()
            .map(|b| Backend::new(b.parse().unwrap()))
            .collect();
        s
    }

    fn entry(dst: &str, reply: &str) -> Entry {
        Entry {
            protocol: 17,
            orig_src: "10.244.0.2:41000".parse().unwrap(),
            orig_dst: dst.parse().unwrap(),
            reply_src: reply.parse().unwrap(),
            zone: 0,
        }
    }

    #[test]
    fn stale_entries_are_those_not_answered_by_a_serving_endpoint() {
        let mut stale = Stale::default();
        stale.current(&dns(&["10.244.1.6"]), &[]);
        stale.previous(&dns(&["10.244.1.5"]), &[]);
        // Answered by the removed endpoint: stale.
        assert!(stale.matches(&entry("10.96.0.10:53", "10.244.1.5")));
        // Answered by the endpoint that stays: kept.
        assert!(!stale.matches(&entry("10.96.0.10:53", "10.244.1.6")));
        // Not NATed (sent while there was no endpoint): stale.
        assert!(stale.matches(&entry("10.96.0.10:53", "10.96.0.10")));
        // Another frontend: not ours.
        assert!(!stale.matches(&entry("10.96.0.11:53", "10.244.1.5")));
        // TCP: never.
        let mut tcp = entry("10.96.0.10:53", "10.244.1.5");
        tcp.protocol = 6;
        assert!(!stale.matches(&tcp));
    }

    #[test]
    fn a_removed_service_keeps_no_endpoint() {
        let mut stale = Stale::default();
        stale.previous(&dns(&["10.244.1.5"]), &[]);
        assert!(stale.matches(&entry("10.96.0.10:53", "10.244.1.5")));
    }

    #[test]
    fn node_ports_match_nated_entries_on_any_address() {
        let mut s = dns(&["10.244.1.6"]);
        s.ports[0].node_port = Some(30053);
        let node: IpAddr = "192.168.0.10".parse().unwrap();
        let mut stale = Stale::default();
        stale.current(&s, &[node]);
        assert!(stale.matches(&entry("172.18.0.1:30053", "10.244.1.5")));
        assert!(!stale.matches(&entry("172.18.0.1:30053", "10.244.1.6")));
        // Not NATed and not to a node address: someone else's flow.
        assert!(!stale.matches(&entry("8.8.8.8:30053", "8.8.8.8")));
        // Another service's ClusterIP port with the NodePort's number: not ours.
        let mut with_cidr = Stale::new(&["10.96.0.0/12".parse().unwrap()]);
        with_cidr.current(&s, &[node]);
        assert!(!with_cidr.matches(&entry("10.96.0.99:30053", "10.244.1.5")));
        // Not NATed to a node address: a flow of the time without endpoints.
        assert!(stale.matches(&entry("192.168.0.10:30053", "192.168.0.10")));
    }

    #[test]
    fn a_delete_request_round_trips_through_the_parser() {
        let e = entry("10.96.0.10:53", "10.244.1.5");
        let req = delete_request(&e, 7);
        assert_eq!(req.len() % 4, 0);
        assert_eq!(
            u32::from_ne_bytes(req[..4].try_into().unwrap()) as usize,
            req.len()
        );
        assert_eq!(u16::from_ne_bytes(req[4..6].try_into().unwrap()), 0x0102);
        // The original tuple parses back (a reply tuple is added to make an entry).
        let mut body = req[20..].to_vec();
        push_nested(&mut body, CTA_TUPLE_REPLY, |t| {
            push_nested(t, CTA_TUPLE_IP, |ip| {
                push_attr(ip, CTA_IP_V4_SRC, &[10, 244, 1, 5]);
                push_attr(ip, CTA_IP_V4_DST, &[10, 244, 0, 2]);
            });
            push_nested(t, CTA_TUPLE_PROTO, |p| {
                push_attr(p, CTA_PROTO_NUM, &[17]);
                push_attr(p, CTA_PROTO_SRC_PORT, &53u16.to_be_bytes());
                push_attr(p, CTA_PROTO_DST_PORT, &41000u16.to_be_bytes());
            });
        });
        assert_eq!(parse_entry(&body), Some(e));
    }

    #[test]
    fn parses_a_dnat_entry_and_skips_others() {
        let text = "ipv4     2 tcp      6 117 ESTABLISHED src=10.244.0.2 dst=10.96.0.10 sport=40000 dport=80 src=10.244.1.5 dst=10.244.0.2 sport=8080 dport=40000 [ASSURED] mark=0 zone=0 use=2\n\
                    ipv4     2 udp      17 29 src=10.244.0.2 dst=8.8.8.8 sport=5353 dport=53 [UNREPLIED] src=8.8.8.8 dst=10.244.0.2 sport=53 dport=5353 mark=0 zone=0 use=2\n";
        let mut fe = BTreeMap::new();
        let name = ObjectName::new("default", "web");
        fe.insert(
            ("10.96.0.10:80".parse().unwrap(), Protocol::Tcp),
            name.clone(),
        );
        let flows = parse(text, &fe);
        assert_eq!(flows.len(), 1);
        assert_eq!(flows[0].backend, "10.244.1.5:8080".parse().unwrap());
        assert_eq!(flows[0].client, "10.244.0.2:40000".parse().unwrap());
        assert_eq!(flows[0].service, Some(name));
    }
}
