//! Who answers for an address on the lab's segment: an ARP request (IPv4) or a neighbour
//! solicitation (IPv6) sent from an `AF_PACKET` socket inside a lab namespace, and the
//! sender MAC of every answer that comes back within a window. Unlike the kernel's own
//! resolution (a neighbour entry keeps the last answer), this sees every node that answers,
//! so two announcers at once show as two MACs; and it leaves the asking namespace's
//! neighbour cache alone (the answers are not the kernel's to take in: it asked nothing).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::os::fd::AsRawFd as _;
use std::time::{Duration, Instant};

use dataplane_testkit::NetNs;
use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType};
use nix::sys::time::{TimeVal, TimeValLike as _};

const ETH_ARP: u16 = 0x0806;
const ETH_IPV6: u16 = 0x86dd;
const ICMPV6: u8 = 58;
const NEIGHBOUR_SOLICITATION: u8 = 135;
const NEIGHBOUR_ADVERTISEMENT: u8 = 136;

/// `aa:bb:cc:dd:ee:ff`.
pub fn mac_text(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// An ARP request for `target` from `mac`/`source` (Ethernet broadcast).
fn arp_request(mac: [u8; 6], source: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend([0xff; 6]);
    f.extend(mac);
    f.extend(ETH_ARP.to_be_bytes());
    f.extend([0, 1, 8, 0, 6, 4, 0, 1]); // Ethernet, IPv4, request
    f.extend(mac);
    f.extend(source);
    f.extend([0; 6]);
    f.extend(target);
    f
}

/// A neighbour solicitation for `target` from `mac`/`source`, to the target's
/// solicited-node multicast address, with the source link-layer address option
/// (RFC 4861 §4.3).
fn neighbour_solicitation(mac: [u8; 6], source: [u8; 16], target: [u8; 16]) -> Vec<u8> {
    let mut group = [0u8; 16];
    group[..2].copy_from_slice(&[0xff, 0x02]);
    group[11..13].copy_from_slice(&[0x01, 0xff]);
    group[13..].copy_from_slice(&target[13..]);
    let mut icmp = vec![NEIGHBOUR_SOLICITATION, 0, 0, 0, 0, 0, 0, 0];
    icmp.extend(target);
    icmp.extend([1, 1]);
    icmp.extend(mac);
    let sum = dataplane_testkit::packet::l4_checksum(
        IpAddr::from(source),
        IpAddr::from(group),
        ICMPV6,
        &icmp,
    );
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let mut f = vec![0x33, 0x33, 0xff, target[13], target[14], target[15]];
    f.extend(mac);
    f.extend(ETH_IPV6.to_be_bytes());
    f.extend([0x60, 0, 0, 0]);
    f.extend((icmp.len() as u16).to_be_bytes());
    f.extend([ICMPV6, 255]);
    f.extend(source);
    f.extend(group);
    f.extend(icmp);
    f
}

/// The sender MAC of `frame` if it answers the question for `target` that `source` asked:
/// an ARP reply from `target` to `source`, or a solicited neighbour advertisement for
/// `target` sent to `source`.
fn answer(frame: &[u8], source: IpAddr, target: IpAddr) -> Option<String> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let sender = mac_text(&frame[6..12]);
    match (source, target) {
        (IpAddr::V4(source), IpAddr::V4(target)) if ethertype == ETH_ARP => {
            let arp = frame.get(14..42)?;
            (arp[6..8] == [0, 2]
                && arp[14..18] == target.octets()
                && arp[24..28] == source.octets())
            .then_some(sender)
        }
        (IpAddr::V6(source), IpAddr::V6(target)) if ethertype == ETH_IPV6 => {
            let ip = frame.get(14..54)?;
            let icmp = frame.get(54..78)?;
            (ip[6] == ICMPV6
                && ip[24..40] == source.octets()
                && icmp[0] == NEIGHBOUR_ADVERTISEMENT
                && icmp[8..24] == target.octets())
            .then_some(sender)
        }
        _ => None,
    }
}

/// Asks for `target` once on `interface` of `netns`, from `source` (an address of that
/// interface, of the same family), and returns the MACs that answered within `window`.
pub fn who_answers(
    netns: &NetNs,
    interface: &str,
    source: IpAddr,
    target: IpAddr,
    window: Duration,
) -> Result<BTreeSet<String>, String> {
    netns
        .run(|| -> Result<BTreeSet<String>, String> {
            let link = nix::ifaddrs::getifaddrs()
                .map_err(|e| format!("getifaddrs: {e}"))?
                .filter(|a| a.interface_name == interface)
                .find_map(|a| a.address.and_then(|s| s.as_link_addr().copied()))
                .ok_or_else(|| format!("{interface}: no link-layer address"))?;
            let mac = link
                .addr()
                .ok_or_else(|| format!("{interface}: not Ethernet"))?;
            let frame = match (source, target) {
                (IpAddr::V4(s), IpAddr::V4(t)) => arp_request(mac, s.octets(), t.octets()),
                (IpAddr::V6(s), IpAddr::V6(t)) => {
                    neighbour_solicitation(mac, s.octets(), t.octets())
                }
                _ => return Err(format!("{source} and {target}: two families")),
            };
            let sock = socket::socket(
                AddressFamily::Packet,
                SockType::Raw,
                SockFlag::SOCK_CLOEXEC,
                SockProtocol::EthAll,
            )
            .map_err(|e| format!("AF_PACKET socket: {e}"))?;
            socket::setsockopt(
                &sock,
                socket::sockopt::ReceiveTimeout,
                &TimeVal::milliseconds(20),
            )
            .map_err(|e| format!("SO_RCVTIMEO: {e}"))?;
            socket::sendto(sock.as_raw_fd(), &frame, &link, MsgFlags::empty())
                .map_err(|e| format!("send the question for {target}: {e}"))?;
            let deadline = Instant::now() + window;
            let mut answers = BTreeSet::new();
            let mut buf = [0u8; 2048];
            while Instant::now() < deadline {
                match socket::recv(sock.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                    Ok(n) => answers.extend(answer(&buf[..n], source, target)),
                    Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {}
                    Err(e) => return Err(format!("receive: {e}")),
                }
            }
            Ok(answers)
        })
        .map_err(|e| format!("enter {}: {e}", netns.name()))?
}
