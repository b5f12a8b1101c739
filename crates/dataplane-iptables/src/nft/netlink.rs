//! A direct `nf_tables` netlink path for element-only changes (a backend replaced, a hairpin
//! address added): one batch of `NFT_MSG_DELSETELEM`/`NFT_MSG_NEWSETELEM` messages, atomic like
//! `nft -f`, but without the `nft` process and its cache dump of every chain (which grows
//! with the services; `benches/scaling` measures both paths).

use std::borrow::Cow;
use std::fs::File;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use nix::sched::{setns, CloneFlags};
use nix::sys::socket::{
    bind, recv, send, setsockopt, socket, sockopt, AddressFamily, MsgFlags, NetlinkAddr, SockFlag,
    SockProtocol, SockType,
};
use nix::sys::time::TimeVal;

use crate::error::NetfilterError;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 2;
const NFPROTO_INET: u8 = 1;
const NLA_F_NESTED: u16 = 0x8000;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
/// Send buffers below this are left as the system sets them.
const DEFAULT_SNDBUF: usize = 128 << 10;
/// Elements in one `NFT_MSG_NEWSETELEM`/`DELSETELEM` message (nft puts many in one too; a
/// 100k-element batch is then a few hundred messages and acknowledgements).
const ELEMENTS_PER_MESSAGE: usize = 256;

/// One element added to or deleted from a set or map. No allocation of its own: a first
/// sync sends one per backend slot and hairpin address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElementOp {
    /// Set or map name (borrowed for the fixed sets, owned for the peer sets of policy).
    pub set: Cow<'static, str>,
    /// Key bytes as the kernel stores them.
    pub key: Reg,
    /// Data bytes (maps, additions only).
    pub data: Option<Reg>,
    /// Delete instead of add.
    pub delete: bool,
}

/// The register bytes of an element key or value, inline: at most two IPv6 addresses.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Reg {
    len: u8,
    buf: [u8; 32],
}

impl Reg {
    /// No bytes.
    pub const fn new() -> Self {
        Self {
            len: 0,
            buf: [0; 32],
        }
    }

    /// These bytes followed by `more` (the keys and values of our sets are at most 32 bytes:
    /// beyond that the rest is left out, and the kernel refuses the element's length).
    #[must_use]
    pub fn with(mut self, more: &[u8]) -> Self {
        let at = usize::from(self.len);
        let n = more.len().min(self.buf.len() - at);
        self.buf[at..at + n].copy_from_slice(&more[..n]);
        self.len += n as u8;
        self
    }
}

impl Default for Reg {
    fn default() -> Self {
        Self::new()
    }
}

impl std::ops::Deref for Reg {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }
}

impl std::fmt::Debug for Reg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:02x?}", &**self)
    }
}

/// Register bytes of an address: network order, 4 or 16 bytes.
pub fn addr_bytes(ip: &IpAddr) -> Reg {
    match ip {
        IpAddr::V4(a) => Reg::new().with(&a.octets()),
        IpAddr::V6(a) => Reg::new().with(&a.octets()),
    }
}

/// Register bytes of `addr . port` (the port padded to a 32-bit register).
pub fn backend_bytes(ip: &IpAddr, port: u16) -> Reg {
    addr_bytes(ip).with(&port.to_be_bytes()).with(&[0, 0])
}

/// Register bytes of `addr . l4proto . port` (a frontend key: the protocol number and the
/// port each padded to a 32-bit register).
pub fn frontend_bytes(ip: &IpAddr, protocol: dataplane_core::Protocol, port: u16) -> Reg {
    let proto = match protocol {
        dataplane_core::Protocol::Tcp => 6u8,
        dataplane_core::Protocol::Udp => 17,
        dataplane_core::Protocol::Sctp => 132,
    };
    addr_bytes(ip)
        .with(&[proto, 0, 0, 0])
        .with(&port.to_be_bytes())
        .with(&[0, 0])
}

/// Register bytes of an `ifname` key: the name NUL-padded to `IFNAMSIZ` (16; core's
/// validation keeps names to 15 bytes).
pub fn ifname_bytes(name: &str) -> Reg {
    let mut buf = [0u8; 16];
    let n = name.len().min(15);
    buf[..n].copy_from_slice(&name.as_bytes()[..n]);
    Reg::new().with(&buf)
}

/// Register bytes of a `mark` key (host byte order).
pub fn mark_bytes(mark: u32) -> Reg {
    Reg::new().with(&mark.to_ne_bytes())
}

fn err(detail: impl Into<String>) -> NetfilterError {
    NetfilterError::Command {
        backend: "nftables",
        program: "netlink".to_owned(),
        operation: "set element batch".to_owned(),
        status: "error".to_owned(),
        stderr: detail.into(),
    }
}

/// Appends one netlink attribute, padded to 4 bytes (also ctnetlink's, `crate::conntrack`).
pub(crate) fn push_attr(buf: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(payload);
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

fn nested(kind: u16, build: impl FnOnce(&mut Vec<u8>)) -> (u16, Vec<u8>) {
    let mut inner = Vec::new();
    build(&mut inner);
    (kind | NLA_F_NESTED, inner)
}

fn push_msg(
    buf: &mut Vec<u8>,
    kind: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    body: &[u8],
) {
    let len = 16 + 4 + body.len();
    buf.extend_from_slice(&(len as u32).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf.push(family);
    buf.push(0);
    buf.extend_from_slice(&res_id.to_be_bytes());
    buf.extend_from_slice(body);
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

/// Encodes the batch; returns it and the number of acknowledged messages (0: no operation,
/// nothing to send).
pub fn encode(table: &str, ops: impl IntoIterator<Item = ElementOp>) -> (Vec<u8>, u32) {
    let mut buf = Vec::new();
    let mut seq = 1u32;
    push_msg(
        &mut buf,
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        seq,
        0,
        NFNL_SUBSYS_NFTABLES,
        &[],
    );
    // Consecutive operations of one kind on one set share a message.
    let mut ops = ops.into_iter().peekable();
    let mut group: Vec<ElementOp> = Vec::with_capacity(ELEMENTS_PER_MESSAGE);
    let mut acked = 0;
    while let Some(first) = ops.next() {
        let (set, delete) = (first.set.clone(), first.delete);
        group.clear();
        group.push(first);
        while group.len() < ELEMENTS_PER_MESSAGE {
            let Some(op) = ops.next_if(|op| op.set == set && op.delete == delete) else {
                break;
            };
            group.push(op);
        }
        seq += 1;
        let mut body = Vec::new();
        push_attr(
            &mut body,
            NFTA_SET_ELEM_LIST_TABLE,
            format!("{table}\0").as_bytes(),
        );
        push_attr(
            &mut body,
            NFTA_SET_ELEM_LIST_SET,
            format!("{set}\0").as_bytes(),
        );
        let (k, list) = nested(NFTA_SET_ELEM_LIST_ELEMENTS, |list| {
            for op in &group {
                let (k, elem) = nested(NFTA_LIST_ELEM, |elem| {
                    let (k, key) = nested(NFTA_SET_ELEM_KEY, |key| {
                        push_attr(key, NFTA_DATA_VALUE, &op.key);
                    });
                    push_attr(elem, k, &key);
                    if let (Some(data), false) = (&op.data, op.delete) {
                        let (k, d) =
                            nested(NFTA_SET_ELEM_DATA, |d| push_attr(d, NFTA_DATA_VALUE, data));
                        push_attr(elem, k, &d);
                    }
                });
                push_attr(list, k, &elem);
            }
        });
        push_attr(&mut body, k, &list);
        // Only the last message asks for an acknowledgement (each one carries a copy of its
        // request, which for a big batch would overflow the receive buffer); errors are
        // reported whether asked for or not.
        let final_message = ops.peek().is_none();
        acked = u32::from(final_message);
        let ack = if final_message { NLM_F_ACK } else { 0 };
        let (msg, flags) = if delete {
            (NFT_MSG_DELSETELEM, NLM_F_REQUEST | ack)
        } else {
            (NFT_MSG_NEWSETELEM, NLM_F_REQUEST | ack | NLM_F_CREATE)
        };
        push_msg(
            &mut buf,
            (NFNL_SUBSYS_NFTABLES << 8) | msg,
            flags,
            seq,
            NFPROTO_INET,
            0,
            &body,
        );
    }
    seq += 1;
    push_msg(
        &mut buf,
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        seq,
        0,
        NFNL_SUBSYS_NFTABLES,
        &[],
    );
    (buf, acked)
}

/// A `NETLINK_NETFILTER` socket inside `netns` (the caller's namespace when `None`); also
/// the conntrack cleanup's (`crate::conntrack`).
pub(crate) fn open_socket(netns: Option<&Path>) -> Result<OwnedFd, NetfilterError> {
    let make = || -> Result<OwnedFd, NetfilterError> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkNetFilter,
        )
        .map_err(|e| err(format!("socket: {e}")))?;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(|e| err(format!("bind: {e}")))?;
        setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(2, 0))
            .map_err(|e| err(format!("timeout: {e}")))?;
        Ok(fd)
    };
    match netns {
        None => make(),
        Some(path) => {
            let path = path.to_owned();
            // setns changes only the calling thread: do it on a thread of its own. The socket
            // stays in that namespace for its whole life.
            std::thread::spawn(move || {
                let ns = File::open(&path).map_err(|e| err(format!("{}: {e}", path.display())))?;
                setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|e| err(format!("setns: {e}")))?;
                make()
            })
            .join()
            .map_err(|_| err("netns thread panicked"))?
        }
    }
}

/// A netlink socket to `nf_tables` in one network namespace, kept open from one change to
/// the next: closing a socket that sent a batch waits for the kernel's cleanup of the
/// transaction (`nft_rcv_nl_event` flushes the destroy work, which waits for an RCU grace
/// period), which a socket per change paid on every change.
#[derive(Debug)]
pub struct Socket {
    fd: OwnedFd,
}

impl Socket {
    /// Opens the socket inside `netns` (the caller's namespace when `None`).
    pub fn open(netns: Option<&Path>) -> Result<Self, NetfilterError> {
        Ok(Self {
            fd: open_socket(netns)?,
        })
    }

    /// Sends `ops` as one atomic batch to table `inet <table>` and waits for every
    /// acknowledgement. After an error the socket may hold unread replies: drop it.
    pub fn apply(
        &self,
        table: &str,
        ops: impl IntoIterator<Item = ElementOp>,
    ) -> Result<(), NetfilterError> {
        apply_on(&self.fd, table, ops)
    }
}

fn apply_on(
    fd: &OwnedFd,
    table: &str,
    ops: impl IntoIterator<Item = ElementOp>,
) -> Result<(), NetfilterError> {
    let (batch, mut expected) = encode(table, ops);
    if expected == 0 {
        return Ok(());
    }
    // The whole batch goes in one datagram, which must fit the send buffer (what nft does).
    let need = batch.len() + (64 << 10);
    if need > DEFAULT_SNDBUF {
        setsockopt(fd, sockopt::SndBufForce, &need)
            .map_err(|e| err(format!("send buffer of {need} bytes: {e}")))?;
    }
    send(fd.as_raw_fd(), &batch, MsgFlags::empty()).map_err(|e| err(format!("send: {e}")))?;
    let mut buf = vec![0u8; 1 << 16];
    while expected > 0 {
        let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty())
            .map_err(|e| err(format!("recv: {e}")))?;
        let mut off = 0;
        while off + 16 <= n {
            let len = u32::from_ne_bytes(buf[off..off + 4].try_into().expect("4 bytes")) as usize;
            let kind = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().expect("2 bytes"));
            if len < 16 || off + len > n {
                return Err(err("truncated netlink reply"));
            }
            if kind == NLMSG_ERROR && len >= 20 {
                let code = i32::from_ne_bytes(buf[off + 16..off + 20].try_into().expect("4 bytes"));
                if code != 0 {
                    return Err(err(format!(
                        "kernel refused the batch: {}",
                        nix::errno::Errno::from_raw(-code)
                    )));
                }
                expected -= 1;
            }
            off += (len + 3) & !3;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_a_batch_with_framing_and_padding() {
        let ops = [ElementOp {
            set: "backends-v4".into(),
            key: mark_bytes(0x1000),
            data: Some(backend_bytes(&"10.0.0.1".parse().unwrap(), 8080)),
            delete: false,
        }];
        let (batch, acked) = encode("dataplane", ops);
        assert_eq!(acked, 1);
        assert_eq!(batch.len() % 4, 0);
        // Three messages whose lengths add up to the batch.
        let mut off = 0;
        let mut kinds = Vec::new();
        while off < batch.len() {
            let len = u32::from_ne_bytes(batch[off..off + 4].try_into().unwrap()) as usize;
            kinds.push(u16::from_ne_bytes(
                batch[off + 4..off + 6].try_into().unwrap(),
            ));
            off += (len + 3) & !3;
        }
        assert_eq!(off, batch.len());
        assert_eq!(kinds, vec![16, 0x0a0c, 17]);
        assert_eq!(
            &*backend_bytes(&"10.0.0.1".parse().unwrap(), 8080),
            &[10, 0, 0, 1, 0x1f, 0x90, 0, 0]
        );
    }
}
