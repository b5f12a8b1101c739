//! The XDP fast path on the uplink with BPF_PROG_TEST_RUN on hand-built packets, against
//! live maps, and its attachment (native, generic, adopted, detached, reset).
//!
//! ```text
//!   client 192.0.2.7 --eth0 (02:..:02, 172.18.0.2)--> [dp_xdp_uplink] --XDP_TX--> node-b
//!                                                          | XDP_PASS          172.18.0.3
//!                                                          v                 (02:..:03, permanent)
//!                                                    [dp_from_uplink]        10.244.1.0/24
//!   local pods 10.244.0.0/24; 10.244.2.0/24 has no route
//! ```
//! Each fixture: description, hook, input packet, expected verdict, expected output bytes.
//! XDP verdicts: `XDP_PASS` 2 (untouched: TC takes it), `XDP_TX` 3 (the FIB sends it back out
//! of eth0 towards node-b). TC verdicts: 0 (handed to the stack), 7 (redirect).

mod common;

use common::{
    backend, check, eth, node_a as node, quoted, require_root, stat, Fixture, PacketBuilder,
    TestNode, TCP_ACK, TCP_SYN,
};
use dataplane_core::{
    Backend, Dataplane, DesiredState, Direction, DropReason, EventKind, EventOptions, EventSource,
    EventVerdict, ExternalMode, FlowEvent, ObjectName, ObservationPoint, Protocol, Service,
    ServicePort, TcpFlags, Tuple,
};
use dataplane_ebpf::maps::{FlowEventRecord, AF_INET, EV_KIND_DROP, EV_VERDICT_DROPPED};
use dataplane_ebpf::{EbpfDataplane, Hook, XdpMode};

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

fn xdp_node(tag: &str) -> TestNode {
    let n = TestNode::new(tag);
    n.route_via_neighbour(
        "02:00:00:00:00:02",
        "10.244.1.0/24",
        "172.18.0.3",
        "02:00:00:00:00:03",
    );
    n
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
    let n = xdp_node("xdp");
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
            "IPv6: passed untouched",
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

#[test]
fn xdp_attach_modes_adopt_and_detach() {
    if !require_root("xdp_attach_modes_adopt_and_detach") {
        return;
    }
    let n = xdp_node("xdpatt");
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
    let n = xdp_node("xdpveth");
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
    let n = xdp_node("xdpsrc");
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
