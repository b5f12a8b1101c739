//! Rejects of connections to a service without endpoints, IPv6 next to IPv4: the bytes of
//! the TCP RST and the `ICMPv6` port unreachable built in place (BPF_PROG_TEST_RUN, checksums
//! computed here), and the time a pod waits for its refusal in the lab.
//!
//! ```text
//!   pod fd00:244::5 / 10.244.0.5 --veth--> [dp_from_pod] --reject--> back out of the veth
//!   ClusterIP fd00:96::15 / 10.96.0.15 (TCP and UDP 80): no endpoints
//! ```

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{eth, hex, l4_checksum, node_a, require_root, stat, PinDirs, TestNode, TCP_SYN};
use dataplane_core::{Dataplane, DesiredState, ObjectName, Protocol, Service, ServicePort};
use dataplane_ebpf::{EbpfConfig, EbpfDataplane, Hook};
use dataplane_testkit::{probe, Family, Lab, LabSpec, ProbeOutcome};

fn empty_service(cluster_ips: &[&str]) -> Service {
    let mut s = Service::new(ObjectName::new("default", "empty"));
    s.cluster_ips = cluster_ips.iter().map(|a| a.parse().unwrap()).collect();
    s.ports = [Protocol::Tcp, Protocol::Udp]
        .into_iter()
        .map(|protocol| ServicePort {
            name: protocol.to_string().to_lowercase(),
            protocol,
            port: 80,
            target_port: 8080,
            node_port: None,
        })
        .collect();
    s
}

/// The lab's IPv4 and IPv6 refusal: a TCP connect refused (`ECONNREFUSED`) and a connected
/// UDP socket's receive failing with `ECONNREFUSED`, each well under the 1 s of the first
/// SYN retransmit: the first answer must arrive and be taken, whatever the family.
#[test]
fn refusal_arrives_at_once_over_ipv4_and_ipv6() {
    if !require_root("refusal_arrives_at_once_over_ipv4_and_ipv6") {
        return;
    }
    let lab = Lab::new(LabSpec {
        nodes: 1,
        pods_per_node: 1,
        external_clients: 0,
        ipv6: true,
    })
    .expect("lab");
    let dir = std::path::PathBuf::from(format!("/sys/fs/bpf/dpe-rj6-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let _pins = PinDirs(vec![dir.clone()]);
    let mut config = EbpfConfig::new(dir);
    config.netns = Some(lab.node(0).netns.path().to_owned());
    let mut dp = EbpfDataplane::new(config).expect("load");
    let mut state = lab.desired_state(0);
    state.services = vec![empty_service(&["10.96.0.15", "fd00:96::15"])];
    dp.apply(&state).expect("apply");
    let pod = lab.pod(0);
    let mut late = Vec::new();
    for (family, vip) in [(Family::V4, "10.96.0.15"), (Family::V6, "fd00:96::15")] {
        for proto in [Protocol::Tcp, Protocol::Udp] {
            // The first connection of each kind too: nothing may warm up first.
            for attempt in 0..3 {
                let dst = SocketAddr::new(vip.parse().unwrap(), 80);
                let before = stat(&dp, "rejected");
                let start = Instant::now();
                let out = probe(&pod.netns, dst, proto, Duration::from_secs(3)).expect("probe");
                let took = start.elapsed();
                assert_eq!(
                    out,
                    ProbeOutcome::Refused,
                    "{family:?} {proto} #{attempt}: refused"
                );
                if took >= Duration::from_millis(500) {
                    late.push(format!(
                        "{family:?} {proto} #{attempt}: after {took:?} ({} rejects)",
                        stat(&dp, "rejected") - before
                    ));
                }
            }
        }
    }
    dp.reset().expect("reset");
    assert!(
        late.is_empty(),
        "refused only after a retransmission, not at the first answer: {late:#?}"
    );
}

const REDIRECT: u32 = 7;

fn ipv6(octets: &[u8]) -> std::net::IpAddr {
    <[u8; 16]>::try_from(octets).expect("16 octets").into()
}

/// Checks the IPv6 header of a reject `out` (Ethernet frame) to `input`'s source: version,
/// payload length, next header, hop limit, addresses swapped, MACs swapped. Returns the
/// payload.
fn check_v6_reply<'a>(what: &str, input: &[u8], out: &'a [u8], next: u8) -> &'a [u8] {
    assert_eq!(&out[0..6], &input[6..12], "{what}: to the sender's MAC");
    assert_eq!(
        &out[6..12],
        &input[0..6],
        "{what}: from the MAC it was sent to"
    );
    assert_eq!(&out[12..14], &[0x86, 0xdd], "{what}: IPv6");
    let ip = &out[14..];
    assert_eq!(ip[0] >> 4, 6, "{what}: version");
    let payload_len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
    assert_eq!(
        payload_len,
        ip.len() - 40,
        "{what}: payload length = what follows"
    );
    assert_eq!(ip[6], next, "{what}: next header");
    assert_eq!(ip[7], 64, "{what}: hop limit");
    assert_eq!(
        &ip[8..24],
        &input[14 + 24..14 + 40],
        "{what}: from the destination"
    );
    assert_eq!(
        &ip[24..40],
        &input[14 + 8..14 + 24],
        "{what}: to the source"
    );
    assert_eq!(
        l4_checksum(ipv6(&ip[8..24]), ipv6(&ip[24..40]), next, &ip[40..]),
        0,
        "{what}: checksum (computed here) of {}",
        hex(out)
    );
    &ip[40..]
}

/// An IPv6 TCP SYN to a ClusterIP without endpoints is answered with a RST|ACK that
/// acknowledges the SYN (and a SYN with data, its data), a UDP datagram with `ICMPv6` port
/// unreachable quoting it; both leave through the interface they came in on (redirect) with
/// checksums that verify. IPv4 gets the same RST.
#[test]
fn reject_bytes_over_ipv6_and_ipv4() {
    if !require_root("reject_bytes_over_ipv6_and_ipv4") {
        return;
    }
    let n = TestNode::new("rj6");
    let mut dp = n.dataplane();
    let mut st = DesiredState::new(node_a());
    st.services = vec![empty_service(&["10.96.0.15", "fd00:96::15"])];
    dp.apply(&st).expect("apply");

    // TCP SYN (seq 1000) and a SYN with 5 bytes of data: ack = seq + 1 (+ 5).
    for (payload, ack) in [(&b""[..], 1001u32), (&b"hello"[..], 1006)] {
        let input = eth()
            .ip("fd00:244::5", "fd00:96::15")
            .tcp(52000, 80, TCP_SYN)
            .payload(payload)
            .build();
        let run = dp.run_packet(Hook::FromPod, &input, 1).expect("run");
        assert_eq!(run.verdict, REDIRECT, "TCP: sent back where it came from");
        let tcp = check_v6_reply("TCP RST", &input, &run.output, 6);
        assert_eq!(tcp.len(), 20, "a bare TCP header");
        assert_eq!(&tcp[0..2], &80u16.to_be_bytes(), "from the service port");
        assert_eq!(&tcp[2..4], &52000u16.to_be_bytes(), "to the client port");
        assert_eq!(&tcp[4..8], &[0, 0, 0, 0], "sequence 0 (the SYN had no ACK)");
        assert_eq!(
            &tcp[8..12],
            &ack.to_be_bytes(),
            "acknowledges the SYN and its data"
        );
        assert_eq!(tcp[12], 5 << 4, "data offset 5");
        assert_eq!(tcp[13], 0x14, "RST|ACK");
    }
    // A segment with ACK (a stray one of a connection the client believes in): RST with
    // its acknowledgment number as sequence number, no ACK.
    let mut stray = eth()
        .ip("fd00:244::5", "fd00:96::15")
        .tcp(52001, 80, common::TCP_ACK)
        .build();
    stray[14 + 40 + 8..14 + 40 + 12].copy_from_slice(&7777u32.to_be_bytes());
    // (the builder's checksum covered ack_seq 0: the program does not verify it)
    let run = dp.run_packet(Hook::FromPod, &stray, 1).expect("run");
    assert_eq!(run.verdict, REDIRECT);
    let tcp = check_v6_reply("RST to an ACK", &stray, &run.output, 6);
    assert_eq!(
        &tcp[4..8],
        &7777u32.to_be_bytes(),
        "seq = the segment's ack"
    );
    assert_eq!(tcp[13], 0x04, "RST alone");
    // A segment carrying RST is never answered (RFC 9293 3.10.7.1): dropped, unchanged.
    for flags in [0x04u8, 0x14] {
        let rst = eth()
            .ip("fd00:244::5", "fd00:96::15")
            .tcp(52004, 80, flags)
            .build();
        let rejected = stat(&dp, "rejected");
        let run = dp.run_packet(Hook::FromPod, &rst, 1).expect("run");
        assert_eq!(
            run.verdict, 2,
            "a RST (flags {flags:#x}) is dropped (TC_ACT_SHOT)"
        );
        assert_eq!(hex(&run.output), hex(&rst), "and not turned into a reply");
        assert_eq!(stat(&dp, "rejected"), rejected, "no reject counted");
    }

    let input = eth()
        .ip("fd00:244::5", "fd00:96::15")
        .udp(52002, 80)
        .payload(b"probe\n")
        .build();
    let run = dp.run_packet(Hook::FromPod, &input, 1).expect("run");
    assert_eq!(run.verdict, REDIRECT, "UDP: sent back where it came from");
    let icmp = check_v6_reply("ICMPv6", &input, &run.output, 58);
    assert_eq!((icmp[0], icmp[1]), (1, 4), "destination unreachable, port");
    assert_eq!(&icmp[4..8], &[0, 0, 0, 0], "unused");
    assert_eq!(
        &icmp[8..],
        &input[14..14 + 48],
        "quotes the IPv6 header and the UDP header"
    );

    // IPv4: the same RST.
    let input = eth()
        .ip("10.244.0.5", "10.96.0.15")
        .tcp(52003, 80, TCP_SYN)
        .build();
    let run = dp.run_packet(Hook::FromPod, &input, 1).expect("run");
    assert_eq!(run.verdict, REDIRECT);
    let want = eth()
        .macs([0x02, 0, 0, 0, 0, 0x02], [0x02, 0, 0, 0, 0, 0x01])
        .ip("10.96.0.15", "10.244.0.5")
        .tcp_rst(80, 52003, 0, Some(1001))
        .build();
    assert_eq!(hex(&run.output), hex(&want), "IPv4 RST|ACK");
    assert!(stat(&dp, "rejected") >= 5);
}
