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
    Backend, Dataplane, DesiredState, ExternalMode, ObjectName, Protocol, Service, ServicePort,
};
use dataplane_ebpf::{EbpfDataplane, Hook, XdpMode};

const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const TC_OK: u32 = 0;
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
