//! The host-side interface of a local pod: the interface of the route to the pod's address in
//! the agent's network namespace, asked of the kernel with one netlink `RTM_GETROUTE` request
//! (what `ip route get ADDR` does). CNIs that route pods with host routes (Calico's
//! `ADDR dev caliXXXX scope link`, the testkit lab, Cilium's host routing) all answer this
//! way, whatever they name their veths.
//!
//! A route through a gateway, to a local address (a host-network pod has the node's address)
//! or out of the uplink is no pod interface: the answer is `None` and the pod is left out of
//! the state with a warning by the translation.
//!
//! Answers are cached per address until [`RouteResolver::refresh`], which the loop calls
//! before each sync: a pod that is recreated with the same address on a new veth is found
//! again at the next sync.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use dataplane::ObjectName;
use dataplane_kube::InterfaceResolver;
use nix::sys::socket::{
    bind, recv, sendto, setsockopt, socket, sockopt, AddressFamily, MsgFlags, NetlinkAddr,
    SockFlag, SockProtocol, SockType,
};

// From <linux/netlink.h> and <linux/rtnetlink.h>.
const NLMSG_HDR_LEN: usize = 16;
const RTMSG_LEN: usize = 12;
const NLMSG_ERROR: u16 = 2;
const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;
const NLM_F_REQUEST: u16 = 1;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTN_UNICAST: u8 = 1;

/// How long one answer from the kernel may take (it answers in microseconds; this only
/// bounds a lost reply).
const REPLY_TIMEOUT: Duration = Duration::from_secs(1);

/// A route the kernel chose for an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// `rtm_type`: unicast, local, unreachable...
    pub kind: u8,
    /// The output interface's index.
    pub oif: Option<u32>,
    /// Whether the route goes through a gateway.
    pub via_gateway: bool,
}

/// Resolves pod interfaces from the routes of the current network namespace.
#[derive(Debug)]
pub struct RouteResolver {
    uplink: String,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    socket: Option<OwnedFd>,
    seq: u32,
    cache: HashMap<IpAddr, Option<String>>,
}

impl RouteResolver {
    /// A resolver for a node whose uplink is `uplink` (routes out of it are no pod's). The
    /// netlink socket is opened at the first question, in the namespace of the thread that
    /// asks it.
    pub fn new(uplink: impl Into<String>) -> Self {
        Self {
            uplink: uplink.into(),
            inner: Mutex::new(Inner {
                socket: None,
                seq: 0,
                cache: HashMap::new(),
            }),
        }
    }

    /// Forgets every cached answer.
    pub fn refresh(&self) {
        self.lock().cache.clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The pod interface for `ip`, asked of the kernel (no cache).
    pub fn lookup(&self, ip: IpAddr) -> io::Result<Option<String>> {
        let route = self.lock().route(ip)?;
        if route.kind != RTN_UNICAST || route.via_gateway {
            return Ok(None);
        }
        let Some(oif) = route.oif else {
            return Ok(None);
        };
        let name = nix::net::if_::if_indextoname(oif)?
            .into_string()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        Ok((name != self.uplink && name != "lo").then_some(name))
    }

    fn cached(&self, ip: IpAddr) -> Option<String> {
        if let Some(answer) = self.lock().cache.get(&ip) {
            return answer.clone();
        }
        let answer = match self.lookup(ip) {
            Ok(answer) => answer,
            Err(e) => {
                tracing::warn!(address = %ip, error = %e, "route lookup failed");
                None
            }
        };
        self.lock().cache.insert(ip, answer.clone());
        answer
    }
}

impl InterfaceResolver for RouteResolver {
    /// The interface of the first address with a pod route; pods of both families have
    /// both on the same veth.
    fn interface(&self, _pod: &ObjectName, ips: &[IpAddr]) -> Option<String> {
        ips.iter().find_map(|ip| self.cached(*ip))
    }
}

impl Inner {
    fn socket(&mut self) -> io::Result<&OwnedFd> {
        if self.socket.is_none() {
            let fd = socket(
                AddressFamily::Netlink,
                SockType::Raw,
                SockFlag::SOCK_CLOEXEC,
                SockProtocol::NetlinkRoute,
            )?;
            bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
            setsockopt(
                &fd,
                sockopt::ReceiveTimeout,
                &nix::sys::time::TimeVal::new(REPLY_TIMEOUT.as_secs().cast_signed(), 0),
            )?;
            self.socket = Some(fd);
        }
        Ok(self.socket.as_ref().expect("set above"))
    }

    fn route(&mut self, ip: IpAddr) -> io::Result<Route> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let request = route_request(ip, seq);
        let result = self.exchange(&request, seq);
        if result.is_err() {
            // A socket left with an unread reply would answer the next question with it.
            self.socket = None;
        }
        result
    }

    fn exchange(&mut self, request: &[u8], seq: u32) -> io::Result<Route> {
        let fd = self.socket()?.as_raw_fd();
        sendto(fd, request, &NetlinkAddr::new(0, 0), MsgFlags::empty())?;
        let mut buf = vec![0u8; 8192];
        loop {
            let n = recv(fd, &mut buf, MsgFlags::empty())?;
            if let Some(answer) = parse_reply(&buf[..n], seq)? {
                return Ok(answer);
            }
        }
    }
}

/// An `RTM_GETROUTE` request for `ip` (a `nlmsghdr`, an `rtmsg` and one `RTA_DST`).
fn route_request(ip: IpAddr, seq: u32) -> Vec<u8> {
    let (family, addr): (u8, Vec<u8>) = match ip {
        IpAddr::V4(a) => (libc::AF_INET as u8, a.octets().to_vec()),
        IpAddr::V6(a) => (libc::AF_INET6 as u8, a.octets().to_vec()),
    };
    let attr_len = 4 + addr.len();
    let len = NLMSG_HDR_LEN + RTMSG_LEN + attr_len;
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&RTM_GETROUTE.to_ne_bytes());
    m.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel
                                              // rtmsg: family, dst_len (a host), src_len, tos, table, protocol, scope, type, flags.
    let dst_len = (addr.len() * 8) as u8;
    m.extend_from_slice(&[family, dst_len, 0, 0, 0, 0, 0, 0]);
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&(attr_len as u16).to_ne_bytes());
    m.extend_from_slice(&RTA_DST.to_ne_bytes());
    m.extend_from_slice(&addr);
    m
}

/// The route in a reply to request `seq`; `None` for messages of other requests. A kernel
/// error (no route: `ENETUNREACH`) is an unreachable route, not an error.
fn parse_reply(buf: &[u8], seq: u32) -> io::Result<Option<Route>> {
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    let mut rest = buf;
    while rest.len() >= NLMSG_HDR_LEN {
        let len = u32::from_ne_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
        let kind = u16::from_ne_bytes(rest[4..6].try_into().expect("2 bytes"));
        let msg_seq = u32::from_ne_bytes(rest[8..12].try_into().expect("4 bytes"));
        if len < NLMSG_HDR_LEN || len > rest.len() {
            return Err(invalid("truncated netlink message"));
        }
        let body = &rest[NLMSG_HDR_LEN..len];
        rest = &rest[align(len).min(rest.len())..];
        if msg_seq != seq {
            continue;
        }
        match kind {
            NLMSG_ERROR => {
                let code = body
                    .get(0..4)
                    .map(|b| i32::from_ne_bytes(b.try_into().expect("4 bytes")))
                    .ok_or_else(|| invalid("truncated netlink error"))?;
                if code == 0 {
                    continue; // an acknowledgement
                }
                return Ok(Some(Route {
                    kind: 0,
                    oif: None,
                    via_gateway: false,
                }));
            }
            RTM_NEWROUTE => {
                if body.len() < RTMSG_LEN {
                    return Err(invalid("truncated rtmsg"));
                }
                let mut route = Route {
                    kind: body[7],
                    oif: None,
                    via_gateway: false,
                };
                let mut attrs = &body[RTMSG_LEN..];
                while attrs.len() >= 4 {
                    let alen =
                        u16::from_ne_bytes(attrs[0..2].try_into().expect("2 bytes")) as usize;
                    let atype = u16::from_ne_bytes(attrs[2..4].try_into().expect("2 bytes"));
                    if alen < 4 || alen > attrs.len() {
                        return Err(invalid("truncated route attribute"));
                    }
                    let data = &attrs[4..alen];
                    match atype {
                        RTA_OIF if data.len() >= 4 => {
                            route.oif =
                                Some(u32::from_ne_bytes(data[0..4].try_into().expect("4 bytes")));
                        }
                        RTA_GATEWAY => route.via_gateway = true,
                        _ => {}
                    }
                    attrs = &attrs[align(alen).min(attrs.len())..];
                }
                return Ok(Some(route));
            }
            _ => {}
        }
    }
    Ok(None)
}

fn align(len: usize) -> usize {
    (len + 3) & !3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loopback_address_is_no_pod_interface() {
        // Every namespace has lo: 127.0.0.1 is a local route, not a unicast one.
        let resolver = RouteResolver::new("eth0");
        let route = resolver.lock().route("127.0.0.1".parse().unwrap()).unwrap();
        assert_eq!(route.kind, 2, "RTN_LOCAL: {route:?}");
        assert_eq!(resolver.lookup("127.0.0.1".parse().unwrap()).unwrap(), None);
    }

    #[test]
    fn a_reply_is_parsed_and_other_sequence_numbers_are_skipped() {
        // A reply as the kernel writes it: nlmsghdr, rtmsg (unicast), RTA_OIF = 7.
        let mut reply = Vec::new();
        let len = (NLMSG_HDR_LEN + RTMSG_LEN + 8) as u32;
        for seq in [41u32, 42] {
            reply.extend_from_slice(&len.to_ne_bytes());
            reply.extend_from_slice(&RTM_NEWROUTE.to_ne_bytes());
            reply.extend_from_slice(&0u16.to_ne_bytes());
            reply.extend_from_slice(&seq.to_ne_bytes());
            reply.extend_from_slice(&0u32.to_ne_bytes());
            reply.extend_from_slice(&[2, 32, 0, 0, 254, 0, 0, RTN_UNICAST, 0, 0, 0, 0]);
            reply.extend_from_slice(&8u16.to_ne_bytes());
            reply.extend_from_slice(&RTA_OIF.to_ne_bytes());
            reply.extend_from_slice(&(seq - 35).to_ne_bytes());
        }
        let route = parse_reply(&reply, 42).unwrap().unwrap();
        assert_eq!(
            route,
            Route {
                kind: RTN_UNICAST,
                oif: Some(7),
                via_gateway: false
            }
        );
        assert!(parse_reply(&reply[..20], 42).is_err());
    }
}
