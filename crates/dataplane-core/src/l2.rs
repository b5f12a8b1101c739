//! L2 announcements: which addresses a node answers ARP and neighbour solicitations for, and
//! the gratuitous announcements it sends when it starts answering.
//!
//! A service with [`Service::l2_announce`](crate::Service::l2_announce) has its LoadBalancer
//! IPs and ExternalIPs announced on the node's uplink: the backend makes the node answer ARP
//! requests (IPv4) and neighbour solicitations (IPv6) for them with the uplink's MAC, so a
//! client on the same L2 segment reaches them without a route (Cilium's L2 announcements,
//! `MetalLB`'s L2 mode). When a node starts announcing an address it sends a gratuitous ARP
//! (an ARP announcement, RFC 5227 §3: a request whose sender and target address are the
//! announced one) or an unsolicited neighbour advertisement with the Override flag (RFC 4861
//! §7.2.6), so that neighbours whose caches still hold the previous announcer's MAC move at
//! once: Linux updates an existing entry on either (`arp_process()` treats a gratuitous ARP as
//! an override; `ndisc_recv_na()` honours Override).
//!
//! The frame builders are pure; [`announce`] sends them through an `AF_PACKET` socket in the
//! calling thread's network namespace.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::{DesiredState, Service};

/// The addresses `state` asks this node to announce: the LoadBalancer IPs and ExternalIPs of
/// every service with [`Service::l2_announce`](crate::Service::l2_announce).
#[must_use]
pub fn announced_addresses(state: &DesiredState) -> BTreeSet<IpAddr> {
    state.services.iter().flat_map(announced_by).collect()
}

/// The addresses `service` has its node announce: its LoadBalancer IPs and ExternalIPs with
/// [`Service::l2_announce`](crate::Service::l2_announce), none without.
#[must_use]
pub fn announced_by(service: &Service) -> BTreeSet<IpAddr> {
    if !service.l2_announce {
        return BTreeSet::new();
    }
    service
        .load_balancer_ips
        .iter()
        .chain(&service.external_ips)
        .copied()
        .collect()
}

/// Length of a [`gratuitous_arp`] frame.
pub const GRATUITOUS_ARP_LEN: usize = 42;

/// Length of an [`unsolicited_advertisement`] frame.
pub const UNSOLICITED_NA_LEN: usize = 86;

/// An ARP announcement for `ip` from `mac`: Ethernet broadcast, opcode request, sender and
/// target protocol address `ip`, target hardware address zero (RFC 5227 §3, what
/// `arping -U` and Linux's `arp_notify` send).
#[must_use]
pub fn gratuitous_arp(mac: [u8; 6], ip: Ipv4Addr) -> [u8; GRATUITOUS_ARP_LEN] {
    let mut f = [0u8; GRATUITOUS_ARP_LEN];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&1u16.to_be_bytes()); // request
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip.octets());
    // target hardware address stays zero
    f[38..42].copy_from_slice(&ip.octets());
    f
}

/// An unsolicited neighbour advertisement of `ip` at `mac` (RFC 4861 §7.2.6): to the
/// all-nodes group `ff02::1`, from `ip`, hop limit 255, flags Override only, with the target
/// link-layer address option.
#[must_use]
pub fn unsolicited_advertisement(mac: [u8; 6], ip: Ipv6Addr) -> [u8; UNSOLICITED_NA_LEN] {
    const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    const ICMP6_LEN: u16 = 32; // 24-byte advertisement + 8-byte option
    let mut f = [0u8; UNSOLICITED_NA_LEN];
    f[0..6].copy_from_slice(&[0x33, 0x33, 0, 0, 0, 1]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
    f[14] = 0x60;
    f[18..20].copy_from_slice(&ICMP6_LEN.to_be_bytes());
    f[20] = 58; // ICMPv6
    f[21] = 255;
    f[22..38].copy_from_slice(&ip.octets());
    f[38..54].copy_from_slice(&ALL_NODES.octets());
    let icmp = &mut f[54..];
    icmp[0] = 136; // neighbour advertisement
    icmp[4] = 0x20; // Override
    icmp[8..24].copy_from_slice(&ip.octets());
    icmp[24] = 2; // target link-layer address
    icmp[25] = 1; // in 8-byte units
    icmp[26..32].copy_from_slice(&mac);
    let sum = icmp6_checksum(ip, ALL_NODES, icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    f
}

/// The ICMPv6 checksum of `message` (its checksum field zero) between `src` and `dst`.
fn icmp6_checksum(src: Ipv6Addr, dst: Ipv6Addr, message: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks(2) {
            let hi = u32::from(pair[0]) << 8;
            sum += hi | pair.get(1).copied().map_or(0, u32::from);
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&u32::try_from(message.len())
        .unwrap_or(u32::MAX)
        .to_be_bytes());
    add(&[0, 0, 0, 58]);
    add(message);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).unwrap_or(0xffff)
}

/// The announcement frame for `ip` from `mac`: [`gratuitous_arp`] or
/// [`unsolicited_advertisement`].
#[must_use]
pub fn announcement(mac: [u8; 6], ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => gratuitous_arp(mac, v4).to_vec(),
        IpAddr::V6(v6) => unsolicited_advertisement(mac, v6).to_vec(),
    }
}

/// An Ethernet interface as [`link_of`] found it: its index and address, and the link-layer
/// socket address that [`announce_on`] sends its frames to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    ifindex: u32,
    mac: [u8; 6],
    sockaddr: nix::sys::socket::LinkAddr,
}

impl Link {
    /// The interface's index in the network namespace it was found in.
    #[must_use]
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// The interface's Ethernet address.
    #[must_use]
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }
}

/// Interface `name` in the calling thread's network namespace, with its index and Ethernet
/// address; `Ok(None)` when there is no such interface or it has no Ethernet address (a
/// tunnel, or an all-zero address as loopback has).
///
/// # Errors
/// The kernel refused the listing of interfaces (`getifaddrs`).
pub fn link_of(name: &str) -> std::io::Result<Option<Link>> {
    let found = nix::ifaddrs::getifaddrs()?
        .filter(|a| a.interface_name == name)
        .find_map(|a| a.address.and_then(|s| s.as_link_addr().copied()));
    Ok(found.and_then(|sockaddr| {
        let mac = sockaddr
            .addr()
            .filter(|m| sockaddr.halen() == 6 && *m != [0; 6])?;
        let ifindex = u32::try_from(sockaddr.ifindex()).ok().filter(|i| *i != 0)?;
        Some(Link {
            ifindex,
            mac,
            sockaddr,
        })
    }))
}

/// Sends one [`announcement`] per address of `addresses` out of `interface` (named in the
/// calling thread's network namespace) with the interface's MAC ([`link_of`], then
/// [`announce_on`]); returns how many it sent. Needs `CAP_NET_RAW`.
///
/// # Errors
/// The interface is missing or has no Ethernet address, or the kernel refused the socket or
/// a send.
pub fn announce(
    interface: &str,
    addresses: impl IntoIterator<Item = IpAddr>,
) -> std::io::Result<usize> {
    let link = link_of(interface)?.ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("interface {interface}: missing, or without an Ethernet address"),
        )
    })?;
    announce_on(&link, addresses)
}

/// Sends one [`announcement`] per address of `addresses` out of `link` (found by [`link_of`]
/// in the calling thread's network namespace) with its MAC; returns how many it sent. Needs
/// `CAP_NET_RAW`.
///
/// # Errors
/// The kernel refused the socket or a send (the interface is gone, say).
pub fn announce_on(
    link: &Link,
    addresses: impl IntoIterator<Item = IpAddr>,
) -> std::io::Result<usize> {
    use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType};
    use std::os::fd::AsRawFd;

    let sock = socket::socket(
        AddressFamily::Packet,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let mut sent = 0;
    for ip in addresses {
        let frame = announcement(link.mac, ip);
        socket::sendto(sock.as_raw_fd(), &frame, &link.sockaddr, MsgFlags::empty())?;
        sent += 1;
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];

    #[test]
    fn link_of_finds_no_ethernet_address_on_loopback_or_a_missing_interface() {
        // (read-only: lists the interfaces of the test's namespace)
        assert_eq!(link_of("lo").expect("getifaddrs"), None, "all-zero MAC");
        assert_eq!(link_of("no-such-if0").expect("getifaddrs"), None);
        let err = announce("no-such-if0", ["172.18.0.200".parse().unwrap()]).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{err}");
    }

    #[test]
    fn gratuitous_arp_bytes() {
        let f = gratuitous_arp(MAC, Ipv4Addr::new(172, 18, 0, 200));
        let expected: [u8; 42] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 0x0a, 0x08, 0x06, // ethernet
            0, 1, 8, 0, 6, 4, 0, 1, // ARP request, Ethernet/IPv4
            2, 0, 0, 0, 0, 0x0a, 172, 18, 0, 200, // sender
            0, 0, 0, 0, 0, 0, 172, 18, 0, 200, // target
        ];
        assert_eq!(f, expected);
    }

    #[test]
    fn unsolicited_advertisement_bytes_and_checksum() {
        let ip: Ipv6Addr = "fd00:18::c8".parse().unwrap();
        let f = unsolicited_advertisement(MAC, ip);
        assert_eq!(&f[0..6], &[0x33, 0x33, 0, 0, 0, 1]);
        assert_eq!(&f[12..14], &[0x86, 0xdd]);
        assert_eq!((f[18], f[19], f[20], f[21]), (0, 32, 58, 255));
        assert_eq!(&f[22..38], &ip.octets());
        assert_eq!(f[54], 136);
        assert_eq!(&f[58..62], &[0x20, 0, 0, 0]);
        assert_eq!(&f[62..78], &ip.octets());
        assert_eq!(&f[78..86], &[2, 1, 2, 0, 0, 0, 0, 0x0a]);
        // Summing the message with its checksum in place gives 0xffff (RFC 1071).
        let mut with_sum = f[54..].to_vec();
        let stored = u16::from_be_bytes([with_sum[2], with_sum[3]]);
        assert_ne!(stored, 0);
        with_sum[2] = 0;
        with_sum[3] = 0;
        let dst: Ipv6Addr = "ff02::1".parse().unwrap();
        assert_eq!(icmp6_checksum(ip, dst, &with_sum), stored);
        // An independent sum over the whole pseudo header and message folds to 0xffff.
        let mut words: Vec<u8> = Vec::new();
        words.extend(ip.octets());
        words.extend(dst.octets());
        words.extend([0, 0, 0, 32, 0, 0, 0, 58]);
        words.extend(&f[54..]);
        let mut sum: u32 = words
            .chunks(2)
            .map(|p| u32::from(u16::from_be_bytes([p[0], p[1]])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        assert_eq!(sum, 0xffff);
    }
}
