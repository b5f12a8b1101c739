//! Packet and checksum builders for tests and benches that feed frames to programs directly
//! (`BPF_PROG_TEST_RUN`), in the fluent style of Katran's test fixtures:
//!
//! ```
//! use dataplane_testkit::packet::{checksum_ok, eth, TCP_SYN};
//!
//! let frame = eth().ip("10.244.0.10", "10.96.0.10").tcp(40000, 80, TCP_SYN).build();
//! assert_eq!(frame.len(), 14 + 20 + 20);
//! assert!(checksum_ok(&frame[14..34]), "the IPv4 header checksum is right");
//! ```
//!
//! Every checksum is computed (IPv4 header, TCP and UDP with their pseudo header, ICMP for IPv4 and IPv6),
//! so a frame is what a kernel would accept. The module imports nothing from the rest of the
//! crate.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// TCP flag SYN.
pub const TCP_SYN: u8 = 0x02;
/// TCP flag ACK.
pub const TCP_ACK: u8 = 0x10;
/// TCP flag RST.
pub const TCP_RST: u8 = 0x04;

/// The Internet checksum of `data` (RFC 1071): the one's complement of the one's-complement
/// sum of its 16-bit big-endian words, an odd last byte padded with zero.
pub fn checksum(data: &[u8]) -> u16 {
    fold(sum16(data))
}

/// Whether the one's-complement sum over `data` (a header with its checksum) is all ones.
pub fn checksum_ok(data: &[u8]) -> bool {
    checksum(data) == 0
}

/// The checksum of a TCP, UDP or IPv6 ICMP `segment` (header and payload) with the pseudo header
/// of `src` → `dst` and `protocol` (RFC 793 for IPv4, RFC 8200 section 8.1 for IPv6): 0 when
/// `segment` carries the right one.
pub fn l4_checksum(src: IpAddr, dst: IpAddr, protocol: u8, segment: &[u8]) -> u16 {
    let mut pseudo = Vec::with_capacity(40);
    pseudo.extend(octets(src));
    pseudo.extend(octets(dst));
    if src.is_ipv6() {
        pseudo.extend((segment.len() as u32).to_be_bytes());
        pseudo.extend([0, 0, 0, protocol]);
    } else {
        pseudo.extend([0, protocol]);
        pseudo.extend((segment.len() as u16).to_be_bytes());
    }
    fold(sum16(&pseudo) + sum16(segment))
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn sum16(data: &[u8]) -> u32 {
    let mut s = 0u32;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from(c[0]) << 8
        };
        s += u32::from(w);
    }
    s
}

fn octets(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// L4 part of a packet under construction.
#[derive(Debug, Clone)]
enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
        seq: u32,
        ack: u32,
        window: u16,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    Icmp {
        kind: u8,
        code: u8,
        /// The 32 bits after the checksum (the next-hop MTU of "fragmentation needed").
        rest: u32,
        quoted: Vec<u8>,
    },
}

/// Fluent packet builder: `eth().ip(src, dst).tcp(sport, dport, flags).payload(b"..").build()`.
///
/// Ethernet source `02:00:00:00:00:01`, destination `02:00:00:00:00:02` unless
/// [`PacketBuilder::macs`] says otherwise; IPv4 without options, identification 0 and no
/// flags unless set; TTL 64; TCP sequence 1000, acknowledgement 0, window 65535.
#[derive(Debug, Clone)]
pub struct PacketBuilder {
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
    l4: Option<L4>,
    payload: Vec<u8>,
    ttl: u8,
    dont_fragment: bool,
    /// IPv4 options (a multiple of 4 bytes), or for IPv6 a destination-options header (a
    /// multiple of 8 bytes, its next-header byte filled by [`PacketBuilder::build`]).
    options: Vec<u8>,
}

/// Starts a frame: Ethernet first, then [`PacketBuilder::ip`] and an L4 header.
pub fn eth() -> PacketBuilder {
    PacketBuilder {
        src_mac: [0x02, 0, 0, 0, 0, 0x01],
        dst_mac: [0x02, 0, 0, 0, 0, 0x02],
        src: None,
        dst: None,
        l4: None,
        payload: Vec::new(),
        ttl: 64,
        dont_fragment: false,
        options: Vec::new(),
    }
}

impl PacketBuilder {
    /// The Ethernet source and destination addresses.
    #[must_use]
    pub fn macs(mut self, src: [u8; 6], dst: [u8; 6]) -> Self {
        self.src_mac = src;
        self.dst_mac = dst;
        self
    }

    /// IP source and destination, written as literals (`"10.0.0.1"`, `"fd00::1"`); both of
    /// one family. Panics on a malformed literal: the builder is for fixtures.
    #[must_use]
    pub fn ip(self, src: &str, dst: &str) -> Self {
        let src = src.parse().expect("source address literal");
        let dst = dst.parse().expect("destination address literal");
        self.ips(src, dst)
    }

    /// IP source and destination (both of one family).
    #[must_use]
    pub fn ips(mut self, src: IpAddr, dst: IpAddr) -> Self {
        self.src = Some(src);
        self.dst = Some(dst);
        self
    }

    /// A TCP header without options.
    #[must_use]
    pub fn tcp(mut self, sport: u16, dport: u16, flags: u8) -> Self {
        self.l4 = Some(L4::Tcp {
            sport,
            dport,
            flags,
            seq: 1000,
            ack: 0,
            window: 65535,
        });
        self
    }

    /// Sets the sequence and acknowledgement numbers of the TCP header set before (no
    /// effect on other headers).
    #[must_use]
    pub fn seq_ack(mut self, seq: u32, ack: u32) -> Self {
        if let Some(L4::Tcp { seq: s, ack: a, .. }) = &mut self.l4 {
            *s = seq;
            *a = ack;
        }
        self
    }

    /// The TCP RST a reject answers with: sequence `seq`, and with `ack` an ACK of it
    /// (RST|ACK), window 0.
    #[must_use]
    pub fn tcp_rst(mut self, sport: u16, dport: u16, seq: u32, ack: Option<u32>) -> Self {
        self.l4 = Some(L4::Tcp {
            sport,
            dport,
            flags: TCP_RST | if ack.is_some() { TCP_ACK } else { 0 },
            seq,
            ack: ack.unwrap_or(0),
            window: 0,
        });
        self
    }

    /// A UDP header (length from the payload).
    #[must_use]
    pub fn udp(mut self, sport: u16, dport: u16) -> Self {
        self.l4 = Some(L4::Udp { sport, dport });
        self
    }

    /// ICMP port unreachable (its IPv6 counterpart when the addresses set before are
    /// IPv6) quoting `quoted` (see [`quoted`]).
    #[must_use]
    pub fn icmp_unreachable(mut self, quoted: Vec<u8>) -> Self {
        let v6 = self.src.is_some_and(|s| s.is_ipv6());
        self.l4 = Some(if v6 {
            L4::Icmp {
                kind: 1,
                code: 4,
                rest: 0,
                quoted,
            }
        } else {
            L4::Icmp {
                kind: 3,
                code: 3,
                rest: 0,
                quoted,
            }
        });
        self
    }

    /// ICMP/ICMPv6 echo request (or reply) with identifier `id` and sequence number 1.
    #[must_use]
    pub fn icmp_echo(mut self, reply: bool, id: u16) -> Self {
        let v6 = self.src.is_some_and(|s| s.is_ipv6());
        let kind = match (v6, reply) {
            (false, false) => 8,
            (false, true) => 0,
            (true, false) => 128,
            (true, true) => 129,
        };
        self.l4 = Some(L4::Icmp {
            kind,
            code: 0,
            rest: (u32::from(id) << 16) | 1,
            quoted: Vec::new(),
        });
        self
    }

    /// ICMP (IPv4) fragmentation needed with the next-hop `mtu`.
    #[must_use]
    pub fn icmp_frag_needed(mut self, quoted: Vec<u8>, mtu: u16) -> Self {
        self.l4 = Some(L4::Icmp {
            kind: 3,
            code: 4,
            rest: u32::from(mtu),
            quoted,
        });
        self
    }

    /// The dataplane's DSR IPv4 option: the frontend `addr`:`port` a backend's node answers
    /// from (option type `0x9b`, length 8).
    #[must_use]
    pub fn dsr_option(mut self, addr: &str, port: u16) -> Self {
        let a: Ipv4Addr = addr.parse().expect("IPv4 frontend literal");
        self.options = vec![0x9b, 8];
        self.options.extend(port.to_be_bytes());
        self.options.extend(a.octets());
        self
    }

    /// `ICMPv6` Packet Too Big quoting `quoted`, with the next-hop `mtu`.
    #[must_use]
    pub fn icmp6_packet_too_big(mut self, quoted: Vec<u8>, mtu: u32) -> Self {
        self.l4 = Some(L4::Icmp {
            kind: 2,
            code: 0,
            rest: mtu,
            quoted,
        });
        self
    }

    /// The dataplane's IPv6 DSR header: a destination-options header (next header 60) right
    /// after the fixed header, 24 bytes, holding the option `0x1e` (length 20) with the
    /// frontend `port`, two zero bytes and the frontend `addr`.
    #[must_use]
    pub fn dsr6_option(mut self, addr: &str, port: u16) -> Self {
        let a: Ipv6Addr = addr.parse().expect("IPv6 frontend literal");
        // (next header: filled by build)
        self.options = vec![0, 2, 0x1e, 20];
        self.options.extend(port.to_be_bytes());
        self.options.extend([0, 0]);
        self.options.extend(a.octets());
        self
    }

    /// The L4 payload.
    #[must_use]
    pub fn payload(mut self, p: &[u8]) -> Self {
        self.payload = p.to_vec();
        self
    }

    /// The IPv4 TTL / IPv6 hop limit (64 unless set).
    #[must_use]
    pub fn ttl(mut self, ttl: u8) -> Self {
        self.ttl = ttl;
        self
    }

    /// Sets the IPv4 "don't fragment" flag (no effect on IPv6).
    #[must_use]
    pub fn dont_fragment(mut self) -> Self {
        self.dont_fragment = true;
        self
    }

    /// The frame. Panics unless addresses and an L4 header were set: the builder is for
    /// fixtures.
    pub fn build(&self) -> Vec<u8> {
        let src = self.src.expect("ip() set");
        let dst = self.dst.expect("ip() set");
        let v6 = src.is_ipv6();
        let (proto, mut l4) = match self.l4.clone().expect("l4 set") {
            L4::Tcp {
                sport,
                dport,
                flags,
                seq,
                ack,
                window,
            } => {
                let mut h = Vec::new();
                h.extend(sport.to_be_bytes());
                h.extend(dport.to_be_bytes());
                h.extend(seq.to_be_bytes());
                h.extend(ack.to_be_bytes());
                h.push(5 << 4);
                h.push(flags);
                h.extend(window.to_be_bytes());
                h.extend([0, 0, 0, 0]);
                (6u8, h)
            }
            L4::Udp { sport, dport } => {
                let mut h = Vec::new();
                h.extend(sport.to_be_bytes());
                h.extend(dport.to_be_bytes());
                h.extend(((8 + self.payload.len()) as u16).to_be_bytes());
                h.extend([0, 0]);
                (17u8, h)
            }
            L4::Icmp {
                kind,
                code,
                rest,
                quoted,
            } => {
                let mut h = vec![kind, code, 0, 0];
                h.extend(rest.to_be_bytes());
                h.extend(quoted);
                (if v6 { 58u8 } else { 1u8 }, h)
            }
        };
        l4.extend(&self.payload);
        let csum_at = match proto {
            6 => 16,
            17 => 6,
            _ => 2,
        };
        // ICMPv4 has no pseudo header.
        let c = if proto == 1 {
            checksum(&l4)
        } else {
            l4_checksum(src, dst, proto, &l4)
        };
        // UDP sends a computed 0 as all ones (0 means "no checksum").
        let c = if proto == 17 && c == 0 { 0xffff } else { c };
        l4[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());

        let mut out = Vec::new();
        out.extend(self.dst_mac);
        out.extend(self.src_mac);
        if v6 {
            out.extend(0x86ddu16.to_be_bytes());
            out.extend([0x60, 0, 0, 0]);
            out.extend(((self.options.len() + l4.len()) as u16).to_be_bytes());
            if self.options.is_empty() {
                out.push(proto);
            } else {
                out.push(60);
            }
            out.push(self.ttl);
            out.extend(octets(src));
            out.extend(octets(dst));
            if !self.options.is_empty() {
                out.push(proto);
                out.extend(&self.options[1..]);
            }
        } else {
            out.extend(0x0800u16.to_be_bytes());
            let hlen = 20 + self.options.len();
            let mut h = vec![0x40 | (hlen / 4) as u8, 0];
            h.extend(((hlen + l4.len()) as u16).to_be_bytes());
            let flags = if self.dont_fragment { 0x40 } else { 0 };
            h.extend([0, 0, flags, 0, self.ttl, proto, 0, 0]);
            h.extend(octets(src));
            h.extend(octets(dst));
            h.extend(&self.options);
            let c = checksum(&h);
            h[10..12].copy_from_slice(&c.to_be_bytes());
            out.extend(h);
        }
        out.extend(l4);
        out
    }
}

/// The bytes an ICMP error of the dataplane quotes from `packet` (an Ethernet frame): the IP
/// header (IPv4 without options) plus the UDP header (8 bytes) or the 20-byte TCP header.
pub fn quoted(packet: &[u8]) -> Vec<u8> {
    let v6 = packet[12] == 0x86;
    let ip_len = if v6 { 40 } else { 20 };
    let proto = if v6 { packet[14 + 6] } else { packet[14 + 9] };
    let l4 = if proto == 6 { 20 } else { 8 };
    packet[14..14 + ip_len + l4].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        use std::fmt::Write;
        b.iter().fold(String::new(), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
    }

    #[test]
    fn checksum_matches_known_values() {
        // RFC 1071, section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2.
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
        // An IPv4 header with its checksum field zeroed, and with the checksum in place.
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&h), 0xb861);
        assert!(!checksum_ok(&h));
        h[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert!(checksum_ok(&h));
        // An odd length pads with a zero byte.
        assert_eq!(checksum(&[0x12]), checksum(&[0x12, 0x00]));
    }

    /// The bytes of frames the builder produced before it moved here (the eBPF fixtures and
    /// the packet bench were written against them): a change that alters a byte fails here.
    /// Each IPv4 header checksum is re-checked on its own.
    #[test]
    #[allow(clippy::too_many_lines)] // a table of frames reads best in one piece
    fn golden_frames() {
        let syn = || {
            eth()
                .ip("10.244.0.10", "10.96.0.10")
                .tcp(40000, 80, TCP_SYN)
        };
        let cases: [(&str, Vec<u8>, &str); 9] = [
            (
                "tcp4",
                syn().build(),
                "02000000000202000000000108004500002800000000400665690af4000a0a60000a\
                 9c400050000003e8000000005002fffffa020000",
            ),
            (
                "udp6",
                eth()
                    .ip("fd00:244::a", "fd00:96::a")
                    .udp(40000, 53)
                    .payload(b"hello")
                    .build(),
                "02000000000202000000000186dd60000000000d1140fd00024400000000000000000000000a\
                 fd00009600000000000000000000000a9c400035000d229d68656c6c6f",
            ),
            (
                "rst4",
                eth()
                    .macs([2, 0, 0, 0, 0, 9], [2, 0, 0, 0, 0, 8])
                    .ip("10.96.0.10", "10.244.0.10")
                    .tcp_rst(80, 40000, 0, Some(1001))
                    .ttl(63)
                    .build(),
                "020000000008020000000009080045000028000000003f0666690a60000a0af4000a\
                 00509c4000000000000003e950140000f9ef0000",
            ),
            (
                "echo6",
                eth()
                    .ip("fd00:18::2", "fd00:18::1")
                    .icmp_echo(false, 7)
                    .build(),
                "02000000000202000000000186dd6000000000083a40fd000018000000000000000000000002\
                 fd0000180000000000000000000000018000858000070001",
            ),
            (
                "frag-needed4",
                eth()
                    .ip("172.18.0.1", "10.244.0.10")
                    .icmp_frag_needed(quoted(&syn().build()), 1400)
                    .build(),
                "020000000002020000000001080045000044000000004001c3a8ac1200010af4000a\
                 03040d06000005784500002800000000400665690af4000a0a60000a9c400050000003e8\
                 000000005002fffffa020000",
            ),
            (
                "unreachable4",
                eth()
                    .ip("10.96.0.10", "10.244.0.10")
                    .icmp_unreachable(quoted(
                        &eth().ip("10.244.0.10", "10.96.0.10").udp(40000, 80).build(),
                    ))
                    .build(),
                "020000000002020000000001080045000038000000004001655e0a60000a0af4000a\
                 0303127e000000004500001c000000004011656a0af4000a0a60000a9c40005000084de6",
            ),
            (
                "dsr4",
                eth()
                    .ip("172.18.0.2", "10.244.1.10")
                    .dsr_option("172.18.0.100", 80)
                    .tcp(40000, 8080, TCP_SYN)
                    .payload(b"x")
                    .build(),
                "02000000000202000000000108004700003100000000400678e6ac1200020af4010a\
                 9b080050ac1200649c401f90000003e8000000005002ffffc016000078",
            ),
            (
                // (computed independently: the destination options {0x1e, 20, port, 0, 0,
                // frontend} after the fixed header, the TCP checksum over the backend's
                // pseudo header)
                "dsr6",
                eth()
                    .ip("2001:db8::7", "fd00:244:1::20")
                    .dsr6_option("fd00:18::2", 30190)
                    .tcp(45000, 8080, TCP_SYN)
                    .build(),
                "02000000000202000000000186dd60000000002c3c4020010db8000000000000000000000007\
                 fd00024400010000000000000000002006021e1475ee0000fd000018000000000000000000000002\
                 afc81f90000003e8000000005002ffffaf7c0000",
            ),
            (
                "ack4-df",
                eth()
                    .macs([0x02, 0, 0, 0, 0, 1], [0xee; 6])
                    .ip("10.244.0.130", "10.96.0.1")
                    .tcp(1025, 80, TCP_ACK)
                    .seq_ack(1000, 1)
                    .dont_fragment()
                    .build(),
                "eeeeeeeeeeee02000000000108004500002800004000400624fa0af400820a600001\
                 04010050000003e8000000015010ffff91c40000",
            ),
        ];
        for (name, frame, want) in cases {
            assert_eq!(hex(&frame), want, "{name}");
            if frame[12..14] == [0x08, 0x00] {
                let hlen = usize::from(frame[14] & 0x0f) * 4;
                assert!(checksum_ok(&frame[14..14 + hlen]), "{name}: IPv4 header");
            }
        }
    }

    #[test]
    fn tcp_checksum_covers_the_pseudo_header() {
        let frame = eth()
            .ip("10.244.0.10", "10.96.0.10")
            .tcp(40000, 80, TCP_SYN)
            .payload(b"abc")
            .build();
        let tcp = &frame[34..];
        let mut pseudo = vec![10, 244, 0, 10, 10, 96, 0, 10, 0, 6];
        pseudo.extend((tcp.len() as u16).to_be_bytes());
        pseudo.extend(tcp);
        assert!(checksum_ok(&pseudo));
        let (src, dst) = (
            "10.244.0.10".parse().unwrap(),
            "10.96.0.10".parse().unwrap(),
        );
        assert_eq!(l4_checksum(src, dst, 6, tcp), 0);
        assert_ne!(l4_checksum(dst, src, 17, tcp), 0, "another pseudo header");
        let v6 = eth()
            .ip("fd00::1", "fd00::2")
            .udp(1, 2)
            .payload(b"odd")
            .build();
        let (src, dst) = ("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap());
        assert_eq!(l4_checksum(src, dst, 17, &v6[54..]), 0);
    }

    #[test]
    fn seq_ack_leaves_other_headers_alone() {
        let udp = eth().ip("10.0.0.1", "10.0.0.2").udp(1, 2);
        assert_eq!(udp.clone().seq_ack(7, 8).build(), udp.build());
    }
}
