//! The XDP fast path on the uplink with BPF_PROG_TEST_RUN on hand-built packets, against
//! live maps, and its attachment (native, generic, adopted, detached, reset).
//!
//! ```text
//!   client 192.0.2.7 --eth0 (02:..:02, 172.18.0.2)--> [dp_xdp_uplink] --XDP_TX--> node-b
//!                                                          | XDP_PASS          172.18.0.3
//!                                                          v                 (02:..:03, permanent)
//!                                                    [dp_from_uplink]        10.244.1.0/24
//!   local pods 10.244.0.0/24; 10.244.2.0/24 has no route
//!
//!   IPv6 (xdp6_fixtures): client 2001:db8::7 --eth0 (fd00:18::2)--> node-b fd00:18::3
//!   (fd00:244:1::/64); local pods fd00:244::/64; fd00:244:2::/64 has no route
//! ```
//! Each fixture: description, hook, input packet, expected verdict, expected output bytes.
//! XDP verdicts: `XDP_PASS` 2 (untouched: TC takes it), `XDP_TX` 3 (the FIB sends it back out
//! of eth0 towards node-b). TC verdicts: 0 (handed to the stack), 7 (redirect).

mod common;

use common::{
    backend, check, ct_key, ct_map, eth, hex, l4_checksum, node_a as node, quoted, require_root,
    stat, Fixture, PacketBuilder, TestNode, TCP_ACK, TCP_SYN,
};
use dataplane_core::{
    Backend, Dataplane, DesiredState, Direction, DropReason, EventKind, EventOptions, EventSource,
    EventVerdict, ExternalMode, FlowEvent, ObjectName, ObservationPoint, Protocol, Service,
    ServicePort, TcpFlags, Tuple,
};
use dataplane_ebpf::maps::{
    Addr, CtEntry, FlowEventRecord, AF_INET, CT_F_DSR, CT_F_EXTERNAL, CT_F_REV, CT_F_SNAT,
    CT_TCP_SYN, EV_KIND_DROP, EV_VERDICT_DROPPED,
};
use dataplane_ebpf::{EbpfDataplane, Hook, RunOn, XdpMode};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const TC_OK: u32 = 0;
const TC_SHOT: u32 = 2;
const TC_REDIRECT: u32 = 7;

const NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const NODE_B_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x03];

fn node_port(protocol: Protocol, node_port: u16) -> ServicePort {
    ServicePort {
        name: format!("{}-{node_port}", protocol.to_string().to_lowercase()),
        protocol,
        port: 80,
        target_port: 8080,
        node_port: Some(node_port),
    }
}

fn service(name: &str, cluster_ip: &str, ports: &[u16], backend: Backend) -> Service {
    let mut s = Service::new(ObjectName::new("default", name));
    s.cluster_ips = vec![cluster_ip.parse().unwrap()];
    s.ports = ports
        .iter()
        .flat_map(|&p| [node_port(Protocol::Tcp, p), node_port(Protocol::Udp, p)])
        .collect();
    s.backends = vec![backend];
    s
}

/// `dsr` NodePort 30090 (Dsr, remote backend), `snat` NodePort 30080 (Snat, remote backend),
/// `dsr-local` NodePort 30092 (Dsr, local backend), `unrouted` NodePort 30093 (Snat, a
/// backend in a pod CIDR the node has no route for), a dual-stack IPv6 ClusterIP.
fn scene() -> DesiredState {
    let mut dsr = service(
        "dsr",
        "10.96.0.30",
        &[30090],
        backend("10.244.1.20", "node-b"),
    );
    dsr.external_mode = Some(ExternalMode::Dsr);
    let snat = service(
        "snat",
        "10.96.0.31",
        &[30080],
        backend("10.244.1.20", "node-b"),
    );
    let mut local = service(
        "dsr-local",
        "10.96.0.32",
        &[30092],
        backend("10.244.0.10", "node-a"),
    );
    local.external_mode = Some(ExternalMode::Dsr);
    let unrouted = service(
        "unrouted",
        "10.96.0.33",
        &[30093],
        backend("10.244.2.30", "node-c"),
    );
    let mut st = DesiredState::new(node());
    st.services = vec![dsr, snat, local, unrouted];
    st
}

fn xdp_dataplane(n: &TestNode, mode: XdpMode) -> EbpfDataplane {
    let mut c = n.config();
    c.xdp = mode;
    EbpfDataplane::new(c).expect("eBPF dataplane with XDP loads")
}

impl Fixture {
    /// A packet XDP must leave alone.
    fn passed(description: &'static str, input: Vec<u8>) -> Self {
        Fixture {
            description,
            hook: Hook::Xdp,
            output: input.clone(),
            input,
            verdict: XDP_PASS,
        }
    }
}

/// As sent on by XDP: from eth0 to node-b's MAC.
/// As sent on to node b: its MACs, one hop less.
fn to_node_b(b: PacketBuilder) -> PacketBuilder {
    b.macs(NODE_MAC, NODE_B_MAC).ttl(63)
}

#[test]
#[allow(clippy::too_many_lines)] // a fixture table reads best in one piece
fn xdp_fixtures() {
    if !require_root("xdp_fixtures") {
        return;
    }
    let n = TestNode::routed_to_node_b("xdp");
    let mut dp = xdp_dataplane(&n, XdpMode::Native);
    dp.apply(&scene()).expect("apply");
    assert!(dp.capabilities().xdp, "XDP configured on: capability shown");

    let syn = |src: &str, dst: &str, sport, dport| eth().ip(src, dst).tcp(sport, dport, TCP_SYN);
    let ack = |src: &str, dst: &str, sport, dport| {
        eth()
            .ip(src, dst)
            .tcp(sport, dport, TCP_ACK)
            .payload(b"GET /")
    };
    // 1460 bytes of payload: a full 1500-byte IPv4 packet that the option would push over.
    let big = eth()
        .ip("192.0.2.7", "172.18.0.2")
        .tcp(45100, 30090, TCP_ACK)
        .payload(&[0x5a; 1460])
        .build();
    let fixtures = vec![
        Fixture {
            description: "DSR NodePort SYN: DNAT to the remote backend, client kept, option \
                          added, MACs from the FIB, sent back out (XDP_TX)",
            hook: Hook::Xdp,
            input: syn("192.0.2.7", "172.18.0.2", 45000, 30090).build(),
            verdict: XDP_TX,
            output: to_node_b(syn("192.0.2.7", "10.244.1.20", 45000, 8080))
                .dsr_option("172.18.0.2", 30090)
                .build(),
        },
        Fixture {
            description: "DSR established packet: same backend from conntrack, option again",
            hook: Hook::Xdp,
            input: ack("192.0.2.7", "172.18.0.2", 45000, 30090).build(),
            verdict: XDP_TX,
            output: to_node_b(ack("192.0.2.7", "10.244.1.20", 45000, 8080))
                .dsr_option("172.18.0.2", 30090)
                .build(),
        },
        Fixture {
            description: "DSR UDP: option added, UDP checksum fixed",
            hook: Hook::Xdp,
            input: eth()
                .ip("192.0.2.7", "172.18.0.2")
                .udp(45001, 30090)
                .payload(b"ping")
                .build(),
            verdict: XDP_TX,
            output: to_node_b(
                eth()
                    .ip("192.0.2.7", "10.244.1.20")
                    .udp(45001, 8080)
                    .payload(b"ping"),
            )
            .dsr_option("172.18.0.2", 30090)
            .build(),
        },
        Fixture::passed(
            "DSR request that would outgrow the MTU: passed untouched",
            big.clone(),
        ),
        Fixture::passed(
            "TTL 1: not forwarded here, passed untouched (the stack answers time exceeded)",
            syn("192.0.2.7", "172.18.0.2", 45002, 30090).ttl(1).build(),
        ),
        Fixture {
            description: "... and TC answers it with ICMP fragmentation needed (1492)",
            hook: Hook::FromUplink,
            output: eth()
                .macs(NODE_MAC, CLIENT_MAC)
                .ip("172.18.0.2", "192.0.2.7")
                .icmp_frag_needed(quoted(&big), 1492)
                .build(),
            input: big,
            verdict: TC_REDIRECT,
        },
        Fixture {
            description: "SNAT NodePort SYN: DNAT + SNAT to the node address, sent back out",
            hook: Hook::Xdp,
            input: syn("192.0.2.7", "172.18.0.2", 45010, 30080).build(),
            verdict: XDP_TX,
            output: to_node_b(syn("172.18.0.2", "10.244.1.20", 45010, 8080)).build(),
        },
        Fixture::passed(
            "SNAT reply from the backend: a reverse entry, passed to TC",
            eth()
                .ip("10.244.1.20", "172.18.0.2")
                .tcp(8080, 45010, TCP_SYN | TCP_ACK)
                .build(),
        ),
        Fixture {
            description: "... where dp_from_uplink reverse-translates the entries XDP wrote",
            hook: Hook::FromUplink,
            input: eth()
                .ip("10.244.1.20", "172.18.0.2")
                .tcp(8080, 45010, TCP_SYN | TCP_ACK)
                .build(),
            verdict: TC_OK,
            output: eth()
                .ip("172.18.0.2", "192.0.2.7")
                .tcp(30080, 45010, TCP_SYN | TCP_ACK)
                .build(),
        },
        Fixture {
            description: "SNAT established packet: the same translation from conntrack",
            hook: Hook::Xdp,
            input: ack("192.0.2.7", "172.18.0.2", 45010, 30080).build(),
            verdict: XDP_TX,
            output: to_node_b(ack("172.18.0.2", "10.244.1.20", 45010, 8080)).build(),
        },
        Fixture {
            description: "SNAT UDP: UDP checksum fixed",
            hook: Hook::Xdp,
            input: eth()
                .ip("192.0.2.7", "172.18.0.2")
                .udp(45011, 30080)
                .payload(b"ping")
                .build(),
            verdict: XDP_TX,
            output: to_node_b(
                eth()
                    .ip("172.18.0.2", "10.244.1.20")
                    .udp(45011, 8080)
                    .payload(b"ping"),
            )
            .build(),
        },
        Fixture::passed(
            "DSR NodePort whose backend is local: passed untouched",
            syn("192.0.2.7", "172.18.0.2", 45020, 30092).build(),
        ),
        Fixture {
            description: "... and TC DNATs it to the local backend XDP chose",
            hook: Hook::FromUplink,
            input: syn("192.0.2.7", "172.18.0.2", 45020, 30092).build(),
            verdict: TC_OK,
            output: syn("192.0.2.7", "10.244.0.10", 45020, 8080).build(),
        },
        Fixture::passed(
            "a backend the FIB has no route for: passed untouched",
            syn("192.0.2.7", "172.18.0.2", 45030, 30093).build(),
        ),
        Fixture::passed(
            "not a service (the node's own SSH port): passed untouched",
            syn("192.0.2.7", "172.18.0.2", 45040, 22).build(),
        ),
        Fixture::passed(
            "a ClusterIP from outside: TC's, passed untouched",
            syn("192.0.2.7", "10.96.0.30", 45041, 80).build(),
        ),
        Fixture::passed(
            "IPv6 to a port no IPv6 frontend has (these services are IPv4-only): passed \
             untouched (xdp6_fixtures has IPv6 frontends)",
            syn("2001:db8::7", "fd00:18::2", 45050, 30090).build(),
        ),
        Fixture::passed(
            "IPv4 with options (a DSR request for this node): passed untouched",
            syn("192.0.2.8", "10.244.0.10", 46000, 8080)
                .dsr_option("172.18.0.9", 30090)
                .build(),
        ),
    ];
    for f in &fixtures {
        check(&mut dp, f);
    }

    assert_eq!(
        stat(&dp, "xdp_forwarded"),
        6,
        "six packets were sent on by XDP"
    );
    assert_eq!(
        stat(&dp, "dsr_forwarded"),
        3,
        "three DSR requests went out with the option"
    );
    let flows = dp.flows().expect("flows");
    let has = |client: &str, frontend: &str, backend: &str| {
        flows.iter().any(|f| {
            f.client.to_string() == client
                && f.frontend.to_string() == frontend
                && f.backend.to_string() == backend
        })
    };
    assert!(
        has("192.0.2.7:45000", "172.18.0.2:30090", "10.244.1.20:8080"),
        "the DSR flow XDP created is listed: {flows:?}"
    );
    assert!(
        has("192.0.2.7:45010", "172.18.0.2:30080", "10.244.1.20:8080"),
        "the SNAT flow XDP created is listed: {flows:?}"
    );
    assert!(
        !flows.iter().any(|f| f.client.port() == 45030),
        "no conntrack entry for a packet the FIB could not route: {flows:?}"
    );
    let report = dp
        .maintain(dataplane_ebpf::monotonic_now())
        .expect("maintain");
    assert_eq!(
        report.other["orphans"], 0,
        "XDP's entries are complete: {report:?}"
    );
    dp.reset().expect("reset");
}

// The IPv6 side of the same topology: node-a `fd00:18::2` on eth0, node-b `fd00:18::3`
// (02:..:03, permanent) routing `fd00:244:1::/64`; local pods `fd00:244::/64`.
const CLIENT6: &str = "2001:db8::7";
const OUTSIDER6: &str = "2001:db8:ff::9";
const NODE6: &str = "fd00:18::2";
const BACKEND6: &str = "fd00:244:1::20";
const LOCAL6: &str = "fd00:244::10";
const LB6: &str = "2001:db8:100::1";
const DSR_LB6: &str = "2001:db8:100::5";
const DSR_EXT6: &str = "2001:db8:100::6";

/// `TestNode::routed_to_node_b` with IPv6: `fd00:18::2/64` on eth0, `fd00:244:1::/64` routed via node-b
/// (`fd00:18::3`, a permanent neighbour entry), IPv6 forwarding on.
fn xdp_node6(tag: &str) -> TestNode {
    let n = TestNode::routed_to_node_b(tag);
    n.route6_via_neighbour("fd00:244:1::/64", "fd00:18::3", "02:00:00:00:00:03");
    n
}

/// IPv6 NodePorts on `fd00:18::2`: `snat6` 30180 (remote backend), `dsr6` 30190 (externalMode
/// Dsr, remote backend; also LB IP `2001:db8:100::5` and ExternalIP `2001:db8:100::6` port
/// 80), `local6` 30192 (a local backend),
/// `unrouted6` 30193 (a backend the FIB has no route for); `guarded6`, LB IP
/// `2001:db8:100::1` port 80 for sources in `2001:db8::/64` only (remote backend).
fn scene6() -> DesiredState {
    let mut n = node();
    n.pod_cidrs.push("fd00:244::/64".parse().unwrap());
    let snat = service(
        "snat6",
        "fd00:96::31",
        &[30180],
        backend(BACKEND6, "node-b"),
    );
    let mut dsr = service("dsr6", "fd00:96::30", &[30190], backend(BACKEND6, "node-b"));
    dsr.external_mode = Some(ExternalMode::Dsr);
    dsr.load_balancer_ips = vec![DSR_LB6.parse().unwrap()];
    dsr.external_ips = vec![DSR_EXT6.parse().unwrap()];
    let local = service("local6", "fd00:96::32", &[30192], backend(LOCAL6, "node-a"));
    let unrouted = service(
        "unrouted6",
        "fd00:96::33",
        &[30193],
        backend("fd00:244:2::30", "node-c"),
    );
    let mut guarded = load_balancer("guarded6", "fd00:96::40", LB6, &["2001:db8::/64"]);
    guarded.backends = vec![backend(BACKEND6, "node-b")];
    let mut st = DesiredState::new(n);
    st.services = vec![snat, dsr, local, unrouted, guarded];
    st
}

/// `frame` (IPv6, no extension header) with an empty destination-options header (`PadN`) in
/// front of its upper layer; the L4 checksum stays right (its pseudo header has the upper
/// layer's length).
fn with_dest_options(frame: &[u8]) -> Vec<u8> {
    let mut out = frame[..54].to_vec();
    let upper = out[20];
    out[20] = 60;
    let len = u16::from_be_bytes([out[18], out[19]]) + 8;
    out[18..20].copy_from_slice(&len.to_be_bytes());
    out.extend([upper, 0, 1, 4, 0, 0, 0, 0]);
    out.extend(&frame[54..]);
    out
}

/// Checks the TCP/UDP checksum of IPv6 `frame` (no extension header, or one destination-options
/// header: DSR's) against its pseudo header, computed here from the frame's own addresses
/// (the final destination: there is no routing header).
fn assert_l4_checksum6(frame: &[u8], what: &str) {
    let addr = |at: usize| {
        let b: [u8; 16] = frame[at..at + 16].try_into().unwrap();
        std::net::IpAddr::from(b)
    };
    let (proto, l4) = if frame[20] == 60 {
        (frame[54], 54 + (usize::from(frame[55]) + 1) * 8)
    } else {
        (frame[20], 54)
    };
    assert_eq!(
        l4_checksum(addr(22), addr(38), proto, &frame[l4..]),
        0,
        "{what}: L4 checksum of {}",
        hex(frame)
    );
    if proto == 17 {
        assert_ne!(
            &frame[l4 + 6..l4 + 8],
            &[0, 0],
            "{what}: a UDP checksum is sent"
        );
    }
}

/// `dp_from_uplink` with the packet on eth0, as received there (so that `dp_route` looks the
/// FIB up on eth0 and forwards).
fn run_tc_on_eth0(dp: &mut EbpfDataplane, packet: &[u8]) -> dataplane_ebpf::PacketRun {
    let on = RunOn {
        interface: Some("eth0".to_owned()),
        ingress: Some("eth0".to_owned()),
        mark: None,
    };
    dp.run_packet_on(Hook::FromUplink, packet, 1, &on)
        .expect("test run")
}

/// `e` without its timestamps, for comparing entries written at different times.
fn timeless(e: CtEntry) -> CtEntry {
    CtEntry {
        created_ns: 0,
        last_seen_ns: 0,
        ..e
    }
}

/// The IPv6 fast path on hand-built packets: NodePort SNAT to a remote backend (TCP and UDP:
/// exact bytes, hop limit 63, checksums checked against the pseudo header here), the bytes and
/// the conntrack entries TC makes of the same packet, flows continued across XDP and TC both
/// ways, the source-range drop, and what XDP leaves to TC.
#[test]
#[allow(clippy::too_many_lines)] // a fixture table and its checks read best in one piece
fn xdp6_fixtures() {
    if !require_root("xdp6_fixtures") {
        return;
    }
    let n = xdp_node6("xdp6");
    let mut dp = xdp_dataplane(&n, XdpMode::Native);
    dp.apply(&scene6()).expect("apply");
    let mut events = dp
        .events(&EventOptions {
            new_connections: true,
            policy_verdicts: false,
        })
        .expect("events");

    let syn = |src: &str, dst: &str, sport, dport| eth().ip(src, dst).tcp(sport, dport, TCP_SYN);
    let ack = |src: &str, dst: &str, sport, dport| {
        eth()
            .ip(src, dst)
            .tcp(sport, dport, TCP_ACK)
            .payload(b"GET /")
    };
    let udp =
        |src: &str, dst: &str, sport, dport| eth().ip(src, dst).udp(sport, dport).payload(b"ping");
    let reply = eth()
        .ip(BACKEND6, NODE6)
        .tcp(8080, 45010, TCP_SYN | TCP_ACK)
        .build();
    let dropped = |description, input: Vec<u8>| Fixture {
        description,
        hook: Hook::Xdp,
        output: input.clone(),
        input,
        verdict: XDP_DROP,
    };
    let fixtures = vec![
        Fixture {
            description: "IPv6 SNAT NodePort SYN: DNAT + SNAT to the node's IPv6 address, hop \
                          limit 63, MACs from the FIB, sent back out (XDP_TX)",
            hook: Hook::Xdp,
            input: syn(CLIENT6, NODE6, 45010, 30180).build(),
            verdict: XDP_TX,
            output: to_node_b(syn(NODE6, BACKEND6, 45010, 8080)).build(),
        },
        Fixture::passed(
            "IPv6 SNAT reply from the backend: a reverse entry, passed to TC",
            reply.clone(),
        ),
        Fixture {
            description: "... where dp_from_uplink reverse-translates the entries XDP wrote",
            hook: Hook::FromUplink,
            input: reply,
            verdict: TC_OK,
            output: eth()
                .ip(NODE6, CLIENT6)
                .tcp(30180, 45010, TCP_SYN | TCP_ACK)
                .build(),
        },
        Fixture {
            description: "IPv6 SNAT established packet: the same translation from conntrack",
            hook: Hook::Xdp,
            input: ack(CLIENT6, NODE6, 45010, 30180).build(),
            verdict: XDP_TX,
            output: to_node_b(ack(NODE6, BACKEND6, 45010, 8080)).build(),
        },
        Fixture {
            description: "IPv6 SNAT UDP: the UDP checksum fixed for the new pseudo header",
            hook: Hook::Xdp,
            input: udp(CLIENT6, NODE6, 45011, 30180).build(),
            verdict: XDP_TX,
            output: to_node_b(udp(NODE6, BACKEND6, 45011, 8080)).build(),
        },
        Fixture {
            description: "a Dsr service's IPv6 NodePort: DSR, the destination-options header \
                          added (xdp6_dsr_fixtures has the rest)",
            hook: Hook::Xdp,
            input: syn(CLIENT6, NODE6, 45012, 30190).build(),
            verdict: XDP_TX,
            output: to_node_b(syn(CLIENT6, BACKEND6, 45012, 8080).dsr6_option(NODE6, 30190))
                .build(),
        },
        Fixture::passed(
            "hop limit 1: passed untouched (the stack answers time exceeded)",
            syn(CLIENT6, NODE6, 45013, 30180).ttl(1).build(),
        ),
        Fixture::passed(
            "a destination-options header before TCP: passed untouched (TC leaves such \
             packets alone too)",
            with_dest_options(&syn(CLIENT6, NODE6, 45014, 30180).build()),
        ),
        Fixture::passed(
            "an IPv6 NodePort whose backend is local: passed untouched",
            syn(CLIENT6, NODE6, 45020, 30192).build(),
        ),
        Fixture {
            description: "... and TC translates it to the local backend XDP chose, with the \
                          SNAT of the entries XDP wrote (externalTrafficPolicy Cluster)",
            hook: Hook::FromUplink,
            input: syn(CLIENT6, NODE6, 45020, 30192).build(),
            verdict: TC_OK,
            output: syn(NODE6, LOCAL6, 45020, 8080).build(),
        },
        Fixture::passed(
            "a backend the FIB has no route for: passed untouched",
            syn(CLIENT6, NODE6, 45030, 30193).build(),
        ),
        Fixture::passed(
            "not a service (the node's own SSH port): passed untouched",
            syn(CLIENT6, NODE6, 45040, 22).build(),
        ),
        Fixture::passed(
            "the IPv6 ClusterIP from outside: TC's, passed untouched",
            syn(CLIENT6, "fd00:96::31", 45041, 80).build(),
        ),
        Fixture::passed(
            "ICMPv6 echo to the node: passed untouched",
            eth().ip(CLIENT6, NODE6).icmp_echo(false, 7).build(),
        ),
        dropped(
            "TCP SYN from outside the IPv6 LB IP's source ranges: dropped at XDP",
            syn(OUTSIDER6, LB6, 41000, 80).build(),
        ),
        dropped(
            "UDP from outside the ranges: dropped at XDP",
            udp(OUTSIDER6, LB6, 41001, 80).build(),
        ),
        Fixture {
            description: "inside the ranges: SNAT to the remote backend, sent back out",
            hook: Hook::Xdp,
            input: syn(CLIENT6, LB6, 46001, 80).build(),
            verdict: XDP_TX,
            output: to_node_b(syn(NODE6, BACKEND6, 46001, 8080)).build(),
        },
    ];
    for f in &fixtures {
        let out = check(&mut dp, f);
        if f.verdict == XDP_TX {
            assert_l4_checksum6(&out, f.description);
        }
    }

    // The same SYN through TC and through XDP: the same bytes but the MACs (TC leaves them to
    // bpf_redirect_neigh), and the same conntrack entries.
    let mut ct = ct_map(&n);
    let fresh = syn(CLIENT6, NODE6, 45050, 30180).build();
    let (fk, rk) = (
        ct_key(CLIENT6, 45050, NODE6, 30180),
        ct_key(BACKEND6, 8080, NODE6, 45050),
    );
    let tc = run_tc_on_eth0(&mut dp, &fresh);
    assert_eq!(tc.verdict, TC_REDIRECT, "TC forwards it to node b");
    let by_tc = (
        ct.get(&fk, 0).expect("TC's forward entry"),
        ct.get(&rk, 0).expect("TC's reverse entry"),
    );
    ct.remove(&fk).expect("remove");
    ct.remove(&rk).expect("remove");
    let xdp = dp.run_packet(Hook::Xdp, &fresh, 1).expect("test run");
    assert_eq!(xdp.verdict, XDP_TX);
    assert_eq!(
        hex(&xdp.output[12..]),
        hex(&tc.output[12..]),
        "XDP's bytes are TC's past the MACs"
    );
    assert_eq!(
        hex(&xdp.output[..12]),
        hex(&[NODE_B_MAC, NODE_MAC].concat())
    );
    let by_xdp = (
        ct.get(&fk, 0).expect("XDP's forward entry"),
        ct.get(&rk, 0).expect("XDP's reverse entry"),
    );
    assert_eq!(
        (timeless(by_xdp.0), timeless(by_xdp.1)),
        (timeless(by_tc.0), timeless(by_tc.1)),
        "XDP writes the entries TC writes"
    );
    let (fe, re) = by_xdp;
    assert_eq!(
        (
            fe.nat_addr,
            fe.nat_port.get(),
            fe.snat_addr,
            fe.snat_port.get()
        ),
        (
            Addr::new(BACKEND6.parse().unwrap()),
            8080,
            Addr::new(NODE6.parse().unwrap()),
            45050
        )
    );
    assert_eq!(
        (fe.flags, fe.tcp_state),
        (CT_F_SNAT | CT_F_EXTERNAL, CT_TCP_SYN)
    );
    assert_ne!((fe.svc_id, fe.backend_id), (0, 0));
    assert_eq!(
        (
            re.nat_addr,
            re.nat_port.get(),
            re.snat_addr,
            re.snat_port.get()
        ),
        (
            Addr::new(NODE6.parse().unwrap()),
            30180,
            Addr::new(CLIENT6.parse().unwrap()),
            45050
        )
    );
    assert_eq!(re.flags, CT_F_SNAT | CT_F_EXTERNAL | CT_F_REV);

    // A flow TC started is continued at XDP.
    let tc = run_tc_on_eth0(&mut dp, &syn(CLIENT6, NODE6, 45060, 30180).build());
    assert_eq!(tc.verdict, TC_REDIRECT);
    check(
        &mut dp,
        &Fixture {
            description: "an established packet of a flow TC started: translated at XDP",
            hook: Hook::Xdp,
            input: ack(CLIENT6, NODE6, 45060, 30180).build(),
            verdict: XDP_TX,
            output: to_node_b(ack(NODE6, BACKEND6, 45060, 8080)).build(),
        },
    );

    let stats = dp.stats().expect("stats");
    assert_eq!(
        stats.other["xdp_forwarded"], 7,
        "SYN, ACK, UDP, the Dsr service's SYN, the insider, TC's twin, TC's flow's ACK"
    );
    assert_eq!(stats.other["dsr_forwarded"], 1, "the Dsr service's SYN");
    assert_eq!(
        stats.other.get("drops.dp_xdp_uplink.source-range"),
        Some(&2),
        "{:?}",
        stats.other
    );
    assert_eq!(stats.other["dropped"], 2);
    let flows = dp.flows().expect("flows");
    let has = |client: &str, frontend: &str, backend: &str| {
        flows.iter().any(|f| {
            f.client.to_string() == client
                && f.frontend.to_string() == frontend
                && f.backend.to_string() == backend
        })
    };
    for (client, frontend, backend) in [
        (
            "[2001:db8::7]:45010",
            "[fd00:18::2]:30180",
            "[fd00:244:1::20]:8080",
        ),
        (
            "[2001:db8::7]:45012",
            "[fd00:18::2]:30190",
            "[fd00:244:1::20]:8080",
        ),
        (
            "[2001:db8::7]:45020",
            "[fd00:18::2]:30192",
            "[fd00:244::10]:8080",
        ),
        (
            "[2001:db8::7]:46001",
            "[2001:db8:100::1]:80",
            "[fd00:244:1::20]:8080",
        ),
    ] {
        assert!(
            has(client, frontend, backend),
            "the flow {client} -> {frontend} XDP created is listed: {flows:?}"
        );
    }
    assert!(
        !flows
            .iter()
            .any(|f| [45013, 45014, 45030, 41000, 41001].contains(&f.client.port())),
        "no conntrack entry for the packets XDP passed or dropped: {flows:?}"
    );
    let report = dp
        .maintain(dataplane_ebpf::monotonic_now())
        .expect("maintain");
    assert_eq!(
        report.other["orphans"], 0,
        "XDP's entries are complete: {report:?}"
    );

    // XDP's new connections are reported with the source they leave with.
    let got = read_all(events.as_mut());
    let first = got
        .iter()
        .find(|e| e.kind == EventKind::NewConnection && e.original.source.port() == 45010)
        .unwrap_or_else(|| panic!("the first SYN's event: {got:#?}"));
    assert_eq!(first.point, Some(ObservationPoint::Xdp));
    assert_eq!(first.interface.as_deref(), Some("eth0"));
    assert_eq!(first.service, Some(ObjectName::new("default", "snat6")));
    let t = first.translated.expect("translated");
    assert_eq!(
        t,
        Tuple::new(
            "[fd00:18::2]:45010".parse().unwrap(),
            "[fd00:244:1::20]:8080".parse().unwrap()
        )
    );
    let drop = got
        .iter()
        .find(|e| e.kind == EventKind::Drop && e.original.source.port() == 41000)
        .unwrap_or_else(|| panic!("the outsider's drop: {got:#?}"));
    assert_eq!(
        (drop.reason, drop.point),
        (Some(DropReason::SourceRange), Some(ObservationPoint::Xdp))
    );
    assert_eq!(drop.service, Some(ObjectName::new("default", "guarded6")));
    dp.reset().expect("reset");
}

/// IPv6 DSR at XDP: the destination-options header {frontend} added for NodePort, LB IP and
/// ExternalIP (TCP and UDP; hop limit 63; checksums checked against the backend's pseudo
/// header here), the bytes and the conntrack entry TC makes of the same packet, a request the
/// header would push over the MTU left to TC (which answers Packet Too Big), and a DSR request
/// reaching its backend's node left to TC (which strips the header).
#[test]
#[allow(clippy::too_many_lines)] // a fixture table and its checks read best in one piece
fn xdp6_dsr_fixtures() {
    if !require_root("xdp6_dsr_fixtures") {
        return;
    }
    let n = xdp_node6("xdp6dsr");
    let mut dp = xdp_dataplane(&n, XdpMode::Native);
    dp.apply(&scene6()).expect("apply");

    let syn = |src: &str, dst: &str, sport, dport| eth().ip(src, dst).tcp(sport, dport, TCP_SYN);
    // 1440 bytes of payload: a full 1500-byte IPv6 packet that the header would push over.
    let big = eth()
        .ip(CLIENT6, NODE6)
        .tcp(45110, 30190, TCP_ACK)
        .payload(&[0x5a; 1440])
        .build();
    let at_backend = syn(CLIENT6, LOCAL6, 45120, 8080)
        .dsr6_option("fd00:18::9", 30190)
        .build();
    let fixtures = vec![
        Fixture {
            description: "IPv6 DSR NodePort SYN: DNAT to the remote backend, client kept, \
                          destination options {frontend} added, hop limit 63, sent back out",
            hook: Hook::Xdp,
            input: syn(CLIENT6, NODE6, 45100, 30190).build(),
            verdict: XDP_TX,
            output: to_node_b(syn(CLIENT6, BACKEND6, 45100, 8080).dsr6_option(NODE6, 30190))
                .build(),
        },
        Fixture {
            description: "IPv6 DSR established packet: the same translation from conntrack",
            hook: Hook::Xdp,
            input: eth()
                .ip(CLIENT6, NODE6)
                .tcp(45100, 30190, TCP_ACK)
                .payload(b"GET /")
                .build(),
            verdict: XDP_TX,
            output: to_node_b(
                eth()
                    .ip(CLIENT6, BACKEND6)
                    .tcp(45100, 8080, TCP_ACK)
                    .payload(b"GET /")
                    .dsr6_option(NODE6, 30190),
            )
            .build(),
        },
        Fixture {
            description: "IPv6 DSR UDP: header added, UDP checksum fixed",
            hook: Hook::Xdp,
            input: eth()
                .ip(CLIENT6, NODE6)
                .udp(45101, 30190)
                .payload(b"ping")
                .build(),
            verdict: XDP_TX,
            output: to_node_b(
                eth()
                    .ip(CLIENT6, BACKEND6)
                    .udp(45101, 8080)
                    .payload(b"ping")
                    .dsr6_option(NODE6, 30190),
            )
            .build(),
        },
        Fixture {
            description: "IPv6 DSR LoadBalancer IP: the LB IP and port in the header",
            hook: Hook::Xdp,
            input: syn(CLIENT6, DSR_LB6, 45102, 80).build(),
            verdict: XDP_TX,
            output: to_node_b(syn(CLIENT6, BACKEND6, 45102, 8080).dsr6_option(DSR_LB6, 80)).build(),
        },
        Fixture {
            description: "IPv6 DSR ExternalIP: the ExternalIP and port in the header",
            hook: Hook::Xdp,
            input: syn(CLIENT6, DSR_EXT6, 45103, 80).build(),
            verdict: XDP_TX,
            output: to_node_b(syn(CLIENT6, BACKEND6, 45103, 8080).dsr6_option(DSR_EXT6, 80))
                .build(),
        },
        Fixture::passed(
            "IPv6 DSR request that would outgrow the MTU: passed untouched",
            big.clone(),
        ),
        Fixture {
            description: "... and TC answers it with ICMPv6 Packet Too Big (1476)",
            hook: Hook::FromUplink,
            output: eth()
                .macs(NODE_MAC, CLIENT_MAC)
                .ip(NODE6, CLIENT6)
                .icmp6_packet_too_big(quoted(&big), 1476)
                .build(),
            input: big,
            verdict: TC_REDIRECT,
        },
        Fixture::passed(
            "a DSR request at its backend's node: passed untouched (an extension header)",
            at_backend.clone(),
        ),
        Fixture {
            description: "... where TC learns and strips the header",
            hook: Hook::FromUplink,
            input: at_backend,
            verdict: TC_OK,
            output: syn(CLIENT6, LOCAL6, 45120, 8080).build(),
        },
    ];
    for f in &fixtures {
        let out = check(&mut dp, f);
        if f.verdict == XDP_TX {
            assert_l4_checksum6(&out, f.description);
        }
    }

    // The same SYN through TC and through XDP: the same bytes but the MACs, and the same
    // forward entry (no reverse one: replies never come back to this node).
    let mut ct = ct_map(&n);
    let fresh = syn(CLIENT6, NODE6, 45150, 30190).build();
    let (fk, rk) = (
        ct_key(CLIENT6, 45150, NODE6, 30190),
        ct_key(BACKEND6, 8080, CLIENT6, 45150),
    );
    let tc = run_tc_on_eth0(&mut dp, &fresh);
    assert_eq!(tc.verdict, TC_REDIRECT, "TC forwards it to node b");
    let by_tc = ct.get(&fk, 0).expect("TC's forward entry");
    assert!(ct.get(&rk, 0).is_err(), "TC writes no reverse entry");
    ct.remove(&fk).expect("remove");
    let xdp = dp.run_packet(Hook::Xdp, &fresh, 1).expect("test run");
    assert_eq!(xdp.verdict, XDP_TX);
    assert_eq!(
        hex(&xdp.output[12..]),
        hex(&tc.output[12..]),
        "XDP's bytes are TC's past the MACs"
    );
    assert_eq!(
        hex(&xdp.output[12..]),
        hex(
            &to_node_b(syn(CLIENT6, BACKEND6, 45150, 8080).dsr6_option(NODE6, 30190)).build()[12..]
        )
    );
    let by_xdp = ct.get(&fk, 0).expect("XDP's forward entry");
    assert!(ct.get(&rk, 0).is_err(), "XDP writes no reverse entry");
    assert_eq!(
        timeless(by_xdp),
        timeless(by_tc),
        "XDP writes the entry TC writes"
    );
    assert_eq!(
        (by_xdp.nat_addr, by_xdp.nat_port.get(), by_xdp.flags),
        (
            Addr::new(BACKEND6.parse().unwrap()),
            8080,
            CT_F_DSR | CT_F_EXTERNAL
        )
    );

    let stats = dp.stats().expect("stats");
    assert_eq!(
        stats.other["xdp_forwarded"], 6,
        "SYN, ACK, UDP, LB IP, ExternalIP, TC's twin"
    );
    assert_eq!(
        stats.other["dsr_forwarded"], 7,
        "the six at XDP and TC's twin"
    );
    assert_eq!(stats.other["frag_needed"], 1, "one Packet Too Big");
    assert_eq!(stats.other["dsr_replies"], 0, "no reply through this node");
    let flows = dp.flows().expect("flows");
    assert!(
        flows
            .iter()
            .any(|f| f.client.to_string() == "[2001:db8::7]:45120"
                && f.frontend.to_string() == "[fd00:18::9]:30190"
                && f.backend.to_string() == "[fd00:244::10]:8080"),
        "the flow learnt from the header is listed: {flows:?}"
    );
    dp.reset().expect("reset");
}

#[test]
fn xdp_attach_modes_adopt_and_detach() {
    if !require_root("xdp_attach_modes_adopt_and_detach") {
        return;
    }
    let n = TestNode::routed_to_node_b("xdpatt");
    let link = || n.link_show("eth0");
    let pin = n.pin_dir.join("links").join("xdp@eth0");

    let mut off = n.dataplane();
    off.apply(&scene()).expect("apply without XDP");
    assert!(!off.capabilities().xdp, "XDP off by default");
    assert!(!link().contains("xdp"), "no XDP program: {}", link());
    assert!(
        off.run_packet(Hook::Xdp, &[0u8; 64], 1).is_err(),
        "the XDP program is not loaded when off"
    );
    drop(off);

    let mut c = n.config();
    c.xdp = XdpMode::Native;
    c.keep_attachments_on_drop = true;
    let mut dp = EbpfDataplane::new(c.clone()).expect("load");
    dp.apply(&scene()).expect("apply");
    let shown = link();
    assert!(
        shown.contains("xdp") && !shown.contains("xdpgeneric"),
        "driver mode on the veth: {shown}"
    );
    assert!(pin.exists(), "the XDP link is pinned");
    drop(dp);
    assert!(link().contains("xdp"), "kept on drop: {}", link());

    let mut dp = EbpfDataplane::new(c.clone()).expect("adopt");
    dp.apply(&scene()).expect("apply");
    assert!(link().contains("xdp"), "adopted: {}", link());
    let syn = eth()
        .ip("192.0.2.7", "172.18.0.2")
        .tcp(47000, 30090, TCP_SYN)
        .build();
    let run = dp.run_packet(Hook::Xdp, &syn, 1).expect("run");
    assert_eq!(run.verdict, XDP_TX, "the adopting process's program runs");
    drop(dp);

    let mut c_off = c.clone();
    c_off.xdp = XdpMode::Off;
    c_off.keep_attachments_on_drop = false;
    let mut dp = EbpfDataplane::new(c_off).expect("load with XDP off");
    dp.apply(&scene()).expect("apply");
    assert!(!link().contains("xdp"), "XDP off removes it: {}", link());
    assert!(!pin.exists(), "and its pin");
    drop(dp);

    let mut c_gen = c.clone();
    c_gen.xdp = XdpMode::Generic;
    c_gen.keep_attachments_on_drop = false;
    let mut dp = EbpfDataplane::new(c_gen).expect("load generic");
    dp.apply(&scene()).expect("apply");
    assert!(link().contains("xdpgeneric"), "generic mode: {}", link());
    drop(dp);
    assert!(!link().contains("xdp"), "detached on drop: {}", link());

    let mut c_auto = c;
    c_auto.xdp = XdpMode::Auto;
    let mut dp = EbpfDataplane::new(c_auto).expect("load auto");
    dp.apply(&scene()).expect("apply");
    let shown = link();
    assert!(
        shown.contains("xdp") && !shown.contains("xdpgeneric"),
        "auto picks driver mode on a veth: {shown}"
    );
    dp.reset().expect("reset");
    assert!(!link().contains("xdp"), "reset removes it: {}", link());
    assert!(!n.pin_dir.exists(), "reset removes the pin directory");
}

/// XDP sends a packet back out of the uplink only: a backend the FIB reaches through a pod's
/// veth is TC's, so that the packet passes `dp_to_pod` (NetworkPolicy) on its way in.
#[test]
fn xdp_never_redirects_into_another_interface() {
    if !require_root("xdp_never_redirects_into_another_interface") {
        return;
    }
    let n = TestNode::routed_to_node_b("xdpveth");
    for args in [
        vec![
            "-n", &n.name, "link", "add", "lxc9", "type", "veth", "peer", "name", "lxc9p",
        ],
        vec!["-n", &n.name, "link", "set", "lxc9", "up"],
        vec![
            "-n",
            &n.name,
            "neigh",
            "replace",
            "10.244.3.9",
            "lladdr",
            "02:00:00:00:00:09",
            "dev",
            "lxc9",
            "nud",
            "permanent",
        ],
        vec![
            "-n",
            &n.name,
            "route",
            "replace",
            "10.244.3.0/24",
            "dev",
            "lxc9",
        ],
    ] {
        let out = std::process::Command::new("ip")
            .args(&args)
            .output()
            .expect("ip");
        assert!(out.status.success(), "ip {args:?}");
    }
    let mut dp = xdp_dataplane(&n, XdpMode::Native);
    let mut st = scene();
    st.services.push(service(
        "behind-a-veth",
        "10.96.0.34",
        &[30094],
        backend("10.244.3.9", "node-c"),
    ));
    dp.apply(&st).expect("apply");
    let syn = eth()
        .ip("192.0.2.7", "172.18.0.2")
        .tcp(45100, 30094, TCP_SYN)
        .build();
    assert_eq!(
        dp.run_packet(Hook::Xdp, &syn, 1).expect("test run").verdict,
        XDP_PASS
    );
}

/// A LoadBalancer service on `lb_ip`, TCP and UDP port 80 -> 8080, with `ranges` as its
/// loadBalancerSourceRanges (none: unrestricted).
fn load_balancer(name: &str, cluster_ip: &str, lb_ip: &str, ranges: &[&str]) -> Service {
    let mut s = Service::new(ObjectName::new("default", name));
    s.cluster_ips = vec![cluster_ip.parse().unwrap()];
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
    s.load_balancer_ips = vec![lb_ip.parse().unwrap()];
    s.load_balancer_source_ranges = ranges.iter().map(|r| r.parse().unwrap()).collect();
    s
}

/// `guarded` 198.51.100.1 (sources `ranges`, remote backend), `guarded-empty` 198.51.100.2
/// (sources 192.0.2.0/24, no backend), `open` 198.51.100.3 (no ranges, remote backend).
fn ranged_scene(ranges: &[&str]) -> DesiredState {
    let mut guarded = load_balancer("guarded", "10.96.0.40", "198.51.100.1", ranges);
    guarded.backends = vec![backend("10.244.1.20", "node-b")];
    let empty = load_balancer(
        "guarded-empty",
        "10.96.0.41",
        "198.51.100.2",
        &["192.0.2.0/24"],
    );
    let mut open = load_balancer("open", "10.96.0.42", "198.51.100.3", &[]);
    open.backends = vec![backend("10.244.1.20", "node-b")];
    let mut st = DesiredState::new(node());
    st.services = vec![guarded, empty, open];
    st
}

fn read_all(events: &mut dyn EventSource) -> Vec<FlowEvent> {
    let mut out = Vec::new();
    while events.read(&mut out, 4096).expect("read events") > 0 {}
    out
}

/// loadBalancerSourceRanges at XDP: the first packet of a connection from outside the ranges
/// is dropped there (`XDP_DROP`), with what `dp_from_uplink` counts and reports for the same
/// drop (its `dp_drops` slot and event at the `xdp` point); a client inside is forwarded, a
/// frontend without backends still judges the source first, one without ranges takes
/// everyone, an established connection keeps going when the ranges change, and TC still
/// drops the outsider itself when XDP does not see the packet.
#[test]
#[allow(clippy::too_many_lines)] // a fixture table and its counters read best in one piece
fn xdp_drops_source_range_outsiders() {
    use aya::maps::ring_buf::RingBuf;
    use aya::maps::{Map, MapData};

    if !require_root("xdp_drops_source_range_outsiders") {
        return;
    }
    let n = TestNode::routed_to_node_b("xdpsrc");
    let mut dp = xdp_dataplane(&n, XdpMode::Native);
    dp.apply(&ranged_scene(&["192.0.2.0/24"])).expect("apply");

    let syn = |src: &str, dst: &str, sport, dport| eth().ip(src, dst).tcp(sport, dport, TCP_SYN);
    let ack = |src: &str, dst: &str, sport, dport| {
        eth()
            .ip(src, dst)
            .tcp(sport, dport, TCP_ACK)
            .payload(b"GET /")
    };
    let dropped = |description, input: Vec<u8>| Fixture {
        description,
        hook: Hook::Xdp,
        output: input.clone(),
        input,
        verdict: XDP_DROP,
    };

    // The first drop's record, byte for byte through the ring buffer.
    let mut ring = RingBuf::try_from(Map::RingBuf(
        MapData::from_pin(n.pin_dir.join("dp_events")).expect("dp_events pinned"),
    ))
    .expect("a ring buffer");
    check(
        &mut dp,
        &dropped(
            "TCP SYN from outside the LB IP's source ranges: dropped at XDP",
            syn("203.0.113.9", "198.51.100.1", 41000, 80).build(),
        ),
    );
    let record = {
        let item = ring.next().expect("one record");
        FlowEventRecord::from_bytes(&item).expect("a whole record")
    };
    assert!(ring.next().is_none(), "exactly one record");
    drop(ring);
    assert_eq!(record.kind, EV_KIND_DROP);
    assert_eq!(record.verdict, EV_VERDICT_DROPPED);
    assert_eq!(record.reason, DropReason::SourceRange.code());
    assert_eq!(record.point, 5, "PT_XDP");
    assert_eq!(record.direction, 1, "EV_DIR_ORIGINAL");
    assert_eq!((record.family, record.proto), (AF_INET, 6));
    assert_eq!(record.tcp_flags, TCP_SYN);
    assert_eq!(record.flags, 0, "not translated");
    assert_eq!(record.pad, [0; 3]);
    assert_eq!(
        (record.saddr.ip(AF_INET), record.daddr.ip(AF_INET)),
        (
            "203.0.113.9".parse::<std::net::IpAddr>().unwrap(),
            "198.51.100.1".parse::<std::net::IpAddr>().unwrap()
        )
    );
    assert_eq!((record.sport.get(), record.dport.get()), (41000, 80));
    assert_ne!(record.svc_id, 0, "the frontend's service-port id");
    assert_eq!(record.backend_id, 0);
    assert_eq!(record.suppressed, 0);
    assert_eq!(
        record.nat_saddr.ip(AF_INET),
        "0.0.0.0".parse::<std::net::IpAddr>().unwrap()
    );

    let mut events = dp.events(&EventOptions::default()).expect("events");
    let fixtures = vec![
        dropped(
            "UDP from outside the ranges: dropped at XDP",
            eth()
                .ip("203.0.113.9", "198.51.100.1")
                .udp(41001, 80)
                .payload(b"ping")
                .build(),
        ),
        dropped(
            "TCP without SYN and without an entry from outside (counted ct_lost, as TC \\
             counts it): dropped at XDP",
            ack("203.0.113.9", "198.51.100.1", 41002, 80).build(),
        ),
        dropped(
            "outside the ranges of a frontend without backends: dropped, not rejected (the \\
             source is judged first, as in lb_forward)",
            syn("203.0.113.9", "198.51.100.2", 41003, 80).build(),
        ),
        Fixture::passed(
            "inside the ranges of a frontend without backends: passed (TC rejects)",
            syn("192.0.2.7", "198.51.100.2", 46000, 80).build(),
        ),
        Fixture {
            description: "inside the ranges: SNAT to the remote backend, sent back out",
            hook: Hook::Xdp,
            input: syn("192.0.2.7", "198.51.100.1", 46001, 80).build(),
            verdict: XDP_TX,
            output: to_node_b(syn("172.18.0.2", "10.244.1.20", 46001, 8080)).build(),
        },
        Fixture {
            description: "a frontend without ranges takes any source",
            hook: Hook::Xdp,
            input: syn("203.0.113.9", "198.51.100.3", 41004, 80).build(),
            verdict: XDP_TX,
            output: to_node_b(syn("172.18.0.2", "10.244.1.20", 41004, 8080)).build(),
        },
        Fixture {
            description: "the same outsider at dp_from_uplink (XDP not attached or passing): \\
                          TC still drops it",
            hook: Hook::FromUplink,
            input: syn("203.0.113.9", "198.51.100.1", 41005, 80).build(),
            verdict: TC_SHOT,
            output: syn("203.0.113.9", "198.51.100.1", 41005, 80).build(),
        },
    ];
    for f in &fixtures {
        check(&mut dp, f);
    }

    // The ranges change and leave 192.0.2.7 out: its connection goes on, a new one is dropped.
    dp.apply(&ranged_scene(&["192.0.2.128/25"]))
        .expect("apply narrower ranges");
    for f in [
        Fixture {
            description: "an established connection from a source the new ranges leave out: \\
                          still forwarded (only new connections are judged)",
            hook: Hook::Xdp,
            input: ack("192.0.2.7", "198.51.100.1", 46001, 80).build(),
            verdict: XDP_TX,
            output: to_node_b(ack("172.18.0.2", "10.244.1.20", 46001, 8080)).build(),
        },
        dropped(
            "a new connection from that source: dropped at XDP",
            syn("192.0.2.7", "198.51.100.1", 46002, 80).build(),
        ),
    ] {
        check(&mut dp, &f);
    }

    let stats = dp.stats().expect("stats");
    assert_eq!(
        stats.other.get("drops.dp_xdp_uplink.source-range"),
        Some(&5),
        "five drops at XDP: {:?}",
        stats.other
    );
    assert_eq!(
        stats.other.get("drops.dp_from_uplink.source-range"),
        Some(&1),
        "one at TC"
    );
    assert_eq!(stats.drops.get(&DropReason::SourceRange), Some(&6));
    assert_eq!(stats.drops.len(), 1, "no other reason: {:?}", stats.drops);
    assert_eq!(stats.other["dropped"], 6, "every drop in dp_stats too");
    assert_eq!(stats.other["ct_lost"], 1, "the ACK without an entry");
    assert_eq!(stats.other["xdp_forwarded"], 3);

    let got = read_all(events.as_mut());
    let at = |point| got.iter().filter(|e| e.point == Some(point)).count();
    assert_eq!(
        (at(ObservationPoint::Xdp), at(ObservationPoint::FromUplink)),
        (4, 1),
        "the drops after the first one's, by point: {got:#?}"
    );
    let guarded = Some(ObjectName::new("default", "guarded"));
    for e in &got {
        assert_eq!(
            (e.kind, e.verdict, e.reason),
            (
                EventKind::Drop,
                EventVerdict::Dropped,
                Some(DropReason::SourceRange)
            ),
            "{e:#?}"
        );
        if e.point == Some(ObservationPoint::Xdp) {
            // (the TC test run's packet arrives on no interface of its own: lo)
            assert_eq!(e.interface.as_deref(), Some("eth0"), "{e:#?}");
        }
        assert_eq!(e.direction, Some(Direction::Original));
        assert_eq!(e.translated, None);
        assert_eq!(e.backend, None);
    }
    let last = got.last().expect("events");
    assert_eq!(last.point, Some(ObservationPoint::Xdp));
    assert_eq!(last.service, guarded);
    assert_eq!(
        last.original,
        Tuple::new(
            "192.0.2.7:46002".parse().unwrap(),
            "198.51.100.1:80".parse().unwrap()
        )
    );
    assert_eq!(last.tcp_flags, Some(TcpFlags(TCP_SYN)));
    let empty = got
        .iter()
        .find(|e| e.original.destination.port() == 80 && e.original.source.port() == 41003)
        .expect("the drop at the frontend without backends");
    assert_eq!(
        empty.service,
        Some(ObjectName::new("default", "guarded-empty"))
    );
    assert_eq!(events.lost(), 0);
    dp.reset().expect("reset");
}
