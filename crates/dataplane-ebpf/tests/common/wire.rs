//! An independent reader of the frames the programs emit: parses Ethernet, IPv4 (with
//! options) or IPv6 (with at most a destination-options header), and TCP, UDP, ICMP or `ICMPv6`, and checks every length and checksum on
//! the way (IPv4 header checksum and total length, IPv6 payload length, TCP/UDP checksums with
//! their pseudo header, ICMP and `ICMPv6` checksums, the IPv4 header quoted in an ICMP error).
//!
//! Deliberately written from the RFCs (791, 8200, 793, 768, 792, 4443, 1071) rather than
//! shared with the programs' `csum.h` or the testkit's builder, so that a checksum bug in
//! either is not mirrored here.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What a frame carries, once its lengths and checksums are found right.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// IP source.
    pub src: IpAddr,
    /// IP destination.
    pub dst: IpAddr,
    /// The transport part.
    pub l4: L4,
    /// The IPv4 options, or an IPv6 destination-options header in front of the transport
    /// header (DSR's); empty when there are none.
    pub ip_options: Vec<u8>,
}

/// The transport part of a [`Frame`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum L4 {
    /// TCP.
    Tcp {
        /// Source port.
        sport: u16,
        /// Destination port.
        dport: u16,
        /// The flags byte.
        flags: u8,
    },
    /// UDP.
    Udp {
        /// Source port.
        sport: u16,
        /// Destination port.
        dport: u16,
    },
    /// SCTP (its `CRC32c` checked).
    Sctp {
        /// Source port.
        sport: u16,
        /// Destination port.
        dport: u16,
        /// The first chunk's type.
        chunk: u8,
    },
    /// ICMP or `ICMPv6`.
    Icmp {
        /// Type.
        kind: u8,
        /// Code.
        code: u8,
    },
}

/// The Internet checksum's one's-complement sum of `data` (RFC 1071), not yet inverted.
fn ones_sum(data: &[u8], mut acc: u64) -> u64 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u64::from(*last) << 8;
    }
    acc
}

/// Whether `data` plus `acc` sums (one's complement, folded) to 0xffff: a valid checksum.
fn sums_to_ones(data: &[u8], acc: u64) -> bool {
    let mut s = ones_sum(data, acc);
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s == 0xffff
}

/// The pseudo header's sum for `src` → `dst`, upper-layer `proto`, `len` bytes.
fn pseudo(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u64 {
    let mut acc = 0;
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            acc = ones_sum(&s.octets(), acc);
            acc = ones_sum(&d.octets(), acc);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            acc = ones_sum(&s.octets(), acc);
            acc = ones_sum(&d.octets(), acc);
        }
        _ => unreachable!("one family per header"),
    }
    acc + u64::from(proto) + len as u64
}

/// Parses `frame` and checks every length and checksum it carries; `Err` says which is wrong.
pub fn parse_checked(frame: &[u8]) -> Result<Frame, String> {
    let ethertype = frame
        .get(12..14)
        .ok_or_else(|| format!("{} bytes: no Ethernet header", frame.len()))?;
    let ip = &frame[14..];
    let (src, dst, proto, l4, ip_options) = match ethertype {
        [0x08, 0x00] => {
            if ip.len() < 20 || ip[0] >> 4 != 4 {
                return Err("IPv4: short or wrong version".into());
            }
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            if ihl < 20 || ihl > ip.len() {
                return Err(format!("IPv4: header length {ihl} of {} bytes", ip.len()));
            }
            if total != ip.len() {
                return Err(format!(
                    "IPv4: total length {total}, {} bytes on the wire",
                    ip.len()
                ));
            }
            if !sums_to_ones(&ip[..ihl], 0) {
                return Err("IPv4: header checksum wrong".into());
            }
            if u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 {
                return Err("IPv4: a fragment".into());
            }
            let s: [u8; 4] = ip[12..16].try_into().expect("4 bytes");
            let d: [u8; 4] = ip[16..20].try_into().expect("4 bytes");
            (
                IpAddr::from(Ipv4Addr::from(s)),
                IpAddr::from(Ipv4Addr::from(d)),
                ip[9],
                &ip[ihl..],
                ip[20..ihl].to_vec(),
            )
        }
        [0x86, 0xdd] => {
            if ip.len() < 40 || ip[0] >> 4 != 6 {
                return Err("IPv6: short or wrong version".into());
            }
            let payload = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
            if payload != ip.len() - 40 {
                return Err(format!(
                    "IPv6: payload length {payload}, {} bytes on the wire",
                    ip.len() - 40
                ));
            }
            let s: [u8; 16] = ip[8..24].try_into().expect("16 bytes");
            let d: [u8; 16] = ip[24..40].try_into().expect("16 bytes");
            // One destination-options header (next header 60) is walked: DSR's carries the
            // frontend. (Its options are not judged: the L4 checksum is.)
            let (proto, upper, options) = if ip[6] == 60 {
                let len = ip
                    .get(41)
                    .map(|&l| (usize::from(l) + 1) * 8)
                    .filter(|&len| 40 + len <= ip.len())
                    .ok_or("IPv6: truncated destination options")?;
                (ip[40], &ip[40 + len..], ip[40..40 + len].to_vec())
            } else {
                (ip[6], &ip[40..], Vec::new())
            };
            (
                IpAddr::from(Ipv6Addr::from(s)),
                IpAddr::from(Ipv6Addr::from(d)),
                proto,
                upper,
                options,
            )
        }
        other => return Err(format!("ethertype {other:02x?}")),
    };
    Ok(Frame {
        src,
        dst,
        l4: parse_l4(src, dst, proto, l4)?,
        ip_options,
    })
}

/// The transport header of `l4` (IP protocol `proto`, `src` → `dst`), its checksum checked.
fn parse_l4(src: IpAddr, dst: IpAddr, proto: u8, l4: &[u8]) -> Result<L4, String> {
    let pseudo_sum = pseudo(src, dst, proto, l4.len());
    Ok(match proto {
        6 => {
            if l4.len() < 20 || usize::from(l4[12] >> 4) * 4 < 20 {
                return Err("TCP: short header".into());
            }
            if !sums_to_ones(l4, pseudo_sum) {
                return Err("TCP: checksum wrong".into());
            }
            L4::Tcp {
                sport: u16::from_be_bytes([l4[0], l4[1]]),
                dport: u16::from_be_bytes([l4[2], l4[3]]),
                flags: l4[13],
            }
        }
        17 => {
            if l4.len() < 8 {
                return Err("UDP: short header".into());
            }
            let len = usize::from(u16::from_be_bytes([l4[4], l4[5]]));
            if len != l4.len() {
                return Err(format!("UDP: length {len}, {} bytes", l4.len()));
            }
            let sum = u16::from_be_bytes([l4[6], l4[7]]);
            // IPv4 may leave the checksum out (0); IPv6 may not (RFC 8200 8.1).
            if (sum != 0 || src.is_ipv6()) && !sums_to_ones(l4, pseudo_sum) {
                return Err("UDP: checksum wrong".into());
            }
            L4::Udp {
                sport: u16::from_be_bytes([l4[0], l4[1]]),
                dport: u16::from_be_bytes([l4[2], l4[3]]),
            }
        }
        132 => {
            if l4.len() < 16 {
                return Err("SCTP: short packet".into());
            }
            let mut zeroed = l4.to_vec();
            zeroed[8..12].fill(0);
            let field = u32::from_le_bytes(l4[8..12].try_into().expect("4 bytes"));
            if crc32c::crc32c(&zeroed) != field {
                return Err("SCTP: CRC32c wrong".into());
            }
            L4::Sctp {
                sport: u16::from_be_bytes([l4[0], l4[1]]),
                dport: u16::from_be_bytes([l4[2], l4[3]]),
                chunk: l4[12],
            }
        }
        1 | 58 => {
            if l4.len() < 8 {
                return Err("ICMP: short header".into());
            }
            // ICMPv6 sums over a pseudo header, ICMP for IPv4 over the message alone.
            let acc = if proto == 58 { pseudo_sum } else { 0 };
            if !sums_to_ones(l4, acc) {
                return Err("ICMP: checksum wrong".into());
            }
            if proto == 1 && l4[0] == 3 && l4.len() >= 28 {
                let quoted = &l4[8..];
                let qihl = usize::from(quoted[0] & 0x0f) * 4;
                if quoted.len() >= qihl && qihl >= 20 && !sums_to_ones(&quoted[..qihl], 0) {
                    return Err("ICMP: quoted IPv4 header checksum wrong".into());
                }
            }
            L4::Icmp {
                kind: l4[0],
                code: l4[1],
            }
        }
        other => return Err(format!("IP protocol {other}")),
    })
}

impl Frame {
    /// The transport ports (source, destination); `None` for ICMP.
    pub fn ports(&self) -> Option<(u16, u16)> {
        match self.l4 {
            L4::Tcp { sport, dport, .. }
            | L4::Udp { sport, dport }
            | L4::Sctp { sport, dport, .. } => Some((sport, dport)),
            L4::Icmp { .. } => None,
        }
    }
}
