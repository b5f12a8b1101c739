//! Per-packet tests with BPF_PROG_TEST_RUN on hand-built packets, against live maps.
//!
//! ```text
//!   pod 10.244.0.5 --veth--> [dp_from_pod]     node 172.18.0.2 (eth0, dummy)
//!   client 192.0.2.7 --eth0--> [dp_from_uplink]
//!   backends: 10.244.0.10 (local), 10.244.1.20 (remote), fd00:244::10
//! ```
//! Each fixture: description, hook, input packet, expected verdict, expected output bytes.
//! Verdicts: translated packets are handed to the stack (0, the test namespace has no route
//! for the FIB to redirect along); drops are 2; rejects are redirected back (7).

mod common;

use std::net::IpAddr;

use common::{
    backend, check, checksum_ok, eth, hex, node_a as node, quoted, require_root, stat, Fixture,
    TestNode, TCP_ACK, TCP_SYN,
};
use dataplane_core::{
    Backend, BackendSelection, ChangeSet, Dataplane, DesiredState, ObjectName, ObservedState,
    Protocol, Service, ServicePort, SessionAffinity, Stats, TrafficPolicy,
};
use dataplane_ebpf::{monotonic_now, AttachMode, EbpfDataplane, Hook};

const OK: u32 = 0;
const SHOT: u32 = 2;
const REDIRECT: u32 = 7;
const TCP_FIN: u8 = 0x01;

fn port(protocol: Protocol, port: u16, target: u16, node_port: Option<u16>) -> ServicePort {
    ServicePort {
        name: format!("{}-{port}", protocol.to_string().to_lowercase()),
        protocol,
        port,
        target_port: target,
        node_port,
    }
}

fn service(name: &str, cluster_ip: &str, backends: Vec<Backend>) -> Service {
    let mut s = Service::new(ObjectName::new("default", name));
    s.cluster_ips = vec![cluster_ip.parse().unwrap()];
    s.ports = vec![
        port(Protocol::Tcp, 80, 8080, None),
        port(Protocol::Udp, 53, 5353, None),
    ];
    s.backends = backends;
    s
}

fn state(services: Vec<Service>) -> DesiredState {
    let mut st = DesiredState::new(node());
    st.services = services;
    st
}

/// The standard scene every fixture runs against.
fn scene() -> DesiredState {
    let web = service("web", "10.96.0.10", vec![backend("10.244.1.20", "node-b")]);
    let mut np = service(
        "nodeport",
        "10.96.0.11",
        vec![backend("10.244.1.20", "node-b")],
    );
    np.ports = vec![port(Protocol::Tcp, 80, 8080, Some(30080))];
    let mut lb = service("lb", "10.96.0.12", vec![backend("10.244.1.20", "node-b")]);
    lb.load_balancer_ips = vec!["198.51.100.1".parse().unwrap()];
    lb.load_balancer_source_ranges = vec!["192.0.2.0/24".parse().unwrap()];
    let mut ext_local = service(
        "ext-local",
        "10.96.0.13",
        vec![backend("10.244.1.20", "node-b")],
    );
    ext_local.external_ips = vec!["198.51.100.2".parse().unwrap()];
    ext_local.external_traffic_policy = TrafficPolicy::Local;
    let mut ext_local_ok = service(
        "ext-local-ok",
        "10.96.0.14",
        vec![backend("10.244.0.10", "node-a")],
    );
    ext_local_ok.external_ips = vec!["198.51.100.3".parse().unwrap()];
    ext_local_ok.external_traffic_policy = TrafficPolicy::Local;
    let empty = service("empty", "10.96.0.15", vec![]);
    let mut term = backend("10.244.0.11", "node-a");
    term.ready = false;
    term.terminating = true;
    let fallback = service("fallback", "10.96.0.16", vec![term.clone()]);
    let prefer_ready = service(
        "prefer-ready",
        "10.96.0.17",
        vec![term, backend("10.244.0.10", "node-a")],
    );
    let hairpin = service(
        "hairpin",
        "10.96.0.18",
        vec![backend("10.244.0.5", "node-a")],
    );
    let v6 = service(
        "web6",
        "fd00:96::10",
        vec![backend("fd00:244::10", "node-a")],
    );
    let mut sticky = service(
        "sticky",
        "10.96.0.19",
        vec![
            backend("10.244.0.10", "node-a"),
            backend("10.244.1.20", "node-b"),
        ],
    );
    sticky.session_affinity = SessionAffinity::ClientIp {
        timeout_seconds: 60,
    };
    let mut maglev = service(
        "maglev",
        "10.96.0.20",
        vec![
            backend("10.244.0.10", "node-a"),
            backend("10.244.1.20", "node-b"),
        ],
    );
    maglev.backend_selection = BackendSelection::Maglev;
    let mut itp_local = service(
        "itp-local",
        "10.96.0.21",
        vec![backend("10.244.1.20", "node-b")],
    );
    itp_local.internal_traffic_policy = TrafficPolicy::Local;
    state(vec![
        itp_local,
        web,
        np,
        lb,
        ext_local,
        ext_local_ok,
        empty,
        fallback,
        prefer_ready,
        hairpin,
        v6,
        sticky,
        maglev,
    ])
}

fn swap_macs(b: common::PacketBuilder) -> common::PacketBuilder {
    b.macs([0x02, 0, 0, 0, 0, 0x02], [0x02, 0, 0, 0, 0, 0x01])
}

#[test]
#[allow(clippy::too_many_lines)] // a fixture table reads best in one piece
fn fixtures() {
    if !require_root("fixtures") {
        return;
    }
    let n = TestNode::new("fix");
    let mut dp = n.dataplane();
    dp.apply(&scene()).expect("apply");

    let syn = |src: &str, dst: &str, sport, dport| eth().ip(src, dst).tcp(sport, dport, TCP_SYN);
    let reject_of = |input: &[u8], src: &str, dst: &str| {
        swap_macs(eth().ip(src, dst).icmp_unreachable(quoted(input))).build()
    };
    // A TCP SYN (seq 1000) from `dport` is refused with RST|ACK acknowledging it.
    let rst_of = |src: &str, dst: &str, sport: u16, dport: u16| {
        swap_macs(eth().ip(src, dst).tcp_rst(sport, dport, 0, Some(1001))).build()
    };

    let empty_in = syn("10.244.0.5", "10.96.0.15", 40000, 80).build();
    let unknown_port_in = eth()
        .ip("10.244.0.5", "10.96.0.10")
        .udp(40001, 9999)
        .payload(b"x")
        .build();
    let lb_denied_in = syn("203.0.113.9", "198.51.100.1", 40000, 80).build();
    let no_local_in = syn("192.0.2.7", "198.51.100.2", 40000, 80).build();
    let fixtures = vec![
        Fixture {
            description: "ClusterIP TCP from a pod: DNAT to the backend, source kept",
            hook: Hook::FromPod,
            input: syn("10.244.0.5", "10.96.0.10", 40000, 80).build(),
            verdict: OK,
            output: syn("10.244.0.5", "10.244.1.20", 40000, 8080).build(),
        },
        Fixture {
            description: "ClusterIP TCP reply arriving on the uplink: reverse NAT to the frontend",
            hook: Hook::FromUplink,
            input: eth()
                .ip("10.244.1.20", "10.244.0.5")
                .tcp(8080, 40000, TCP_SYN | TCP_ACK)
                .build(),
            verdict: OK,
            output: eth()
                .ip("10.96.0.10", "10.244.0.5")
                .tcp(80, 40000, TCP_SYN | TCP_ACK)
                .build(),
        },
        Fixture {
            description: "ClusterIP UDP from a pod: DNAT with payload and UDP checksum",
            hook: Hook::FromPod,
            input: eth()
                .ip("10.244.0.5", "10.96.0.10")
                .udp(41000, 53)
                .payload(b"query")
                .build(),
            verdict: OK,
            output: eth()
                .ip("10.244.0.5", "10.244.1.20")
                .udp(41000, 5353)
                .payload(b"query")
                .build(),
        },
        Fixture {
            description: "UDP reply: reverse NAT",
            hook: Hook::FromUplink,
            input: eth()
                .ip("10.244.1.20", "10.244.0.5")
                .udp(5353, 41000)
                .payload(b"answer")
                .build(),
            verdict: OK,
            output: eth()
                .ip("10.96.0.10", "10.244.0.5")
                .udp(53, 41000)
                .payload(b"answer")
                .build(),
        },
        Fixture {
            description: "NodePort from outside (ETP Cluster): DNAT + SNAT to the node address",
            hook: Hook::FromUplink,
            input: syn("192.0.2.7", "172.18.0.2", 45000, 30080).build(),
            verdict: OK,
            output: syn("172.18.0.2", "10.244.1.20", 45000, 8080).build(),
        },
        Fixture {
            description: "NodePort reply: both addresses restored",
            hook: Hook::FromUplink,
            input: eth()
                .ip("10.244.1.20", "172.18.0.2")
                .tcp(8080, 45000, TCP_SYN | TCP_ACK)
                .build(),
            verdict: OK,
            output: eth()
                .ip("172.18.0.2", "192.0.2.7")
                .tcp(30080, 45000, TCP_SYN | TCP_ACK)
                .build(),
        },
        Fixture {
            description: "LoadBalancer IP from a client inside loadBalancerSourceRanges",
            hook: Hook::FromUplink,
            input: syn("192.0.2.7", "198.51.100.1", 46000, 80).build(),
            verdict: OK,
            output: syn("172.18.0.2", "10.244.1.20", 46000, 8080).build(),
        },
        Fixture {
            description: "LoadBalancer IP from a client outside the source ranges: drop",
            hook: Hook::FromUplink,
            output: lb_denied_in.clone(),
            input: lb_denied_in,
            verdict: SHOT,
        },
        Fixture {
            description: "ExternalIP with ETP Local and no local backend: drop",
            hook: Hook::FromUplink,
            output: no_local_in.clone(),
            input: no_local_in,
            verdict: SHOT,
        },
        Fixture {
            description: "ExternalIP with ETP Local and a local backend: client source kept",
            hook: Hook::FromUplink,
            input: syn("192.0.2.7", "198.51.100.3", 47000, 80).build(),
            verdict: OK,
            output: syn("192.0.2.7", "10.244.0.10", 47000, 8080).build(),
        },
        Fixture {
            description: "ExternalIP (ETP Local) from a pod: cluster policy, client kept",
            hook: Hook::FromPod,
            input: syn("10.244.0.5", "198.51.100.2", 47001, 80).build(),
            verdict: OK,
            output: syn("10.244.0.5", "10.244.1.20", 47001, 8080).build(),
        },
        Fixture {
            description: "ClusterIP from outside the cluster CIDRs: masqueraded",
            hook: Hook::FromUplink,
            input: syn("192.0.2.8", "10.96.0.10", 47002, 80).build(),
            verdict: OK,
            output: syn("172.18.0.2", "10.244.1.20", 47002, 8080).build(),
        },
        Fixture {
            description: "Service without backends: TCP RST back to the client",
            hook: Hook::FromPod,
            output: rst_of("10.96.0.15", "10.244.0.5", 80, 40000),
            input: empty_in,
            verdict: REDIRECT,
        },
        Fixture {
            description: "Unknown port on a ClusterIP: reject",
            hook: Hook::FromPod,
            output: reject_of(&unknown_port_in, "10.96.0.10", "10.244.0.5"),
            input: unknown_port_in,
            verdict: REDIRECT,
        },
        Fixture {
            description: "Only a terminating-but-serving backend: used (kube-proxy fallback)",
            hook: Hook::FromPod,
            input: syn("10.244.0.5", "10.96.0.16", 48000, 80).build(),
            verdict: OK,
            output: syn("10.244.0.5", "10.244.0.11", 48000, 8080).build(),
        },
        Fixture {
            description: "Hairpin: the pod reaches itself, source masqueraded to the node",
            hook: Hook::FromPod,
            input: syn("10.244.0.5", "10.96.0.18", 49000, 80).build(),
            verdict: OK,
            output: syn("172.18.0.2", "10.244.0.5", 49000, 8080).build(),
        },
        Fixture {
            description: "Hairpin reply from the pod to the node address: restored",
            hook: Hook::FromPod,
            input: eth()
                .ip("10.244.0.5", "172.18.0.2")
                .tcp(8080, 49000, TCP_SYN | TCP_ACK)
                .build(),
            verdict: OK,
            output: eth()
                .ip("10.96.0.18", "10.244.0.5")
                .tcp(80, 49000, TCP_SYN | TCP_ACK)
                .build(),
        },
        Fixture {
            description: "IPv6 ClusterIP TCP: DNAT",
            hook: Hook::FromPod,
            input: syn("fd00:244::5", "fd00:96::10", 50000, 80).build(),
            verdict: OK,
            output: syn("fd00:244::5", "fd00:244::10", 50000, 8080).build(),
        },
        Fixture {
            description: "IPv6 reply: reverse NAT",
            hook: Hook::FromPod,
            input: eth()
                .ip("fd00:244::10", "fd00:244::5")
                .tcp(8080, 50000, TCP_SYN | TCP_ACK)
                .build(),
            verdict: OK,
            output: eth()
                .ip("fd00:96::10", "fd00:244::5")
                .tcp(80, 50000, TCP_SYN | TCP_ACK)
                .build(),
        },
        Fixture {
            description: "IPv6 UDP ClusterIP: DNAT",
            hook: Hook::FromPod,
            input: eth()
                .ip("fd00:244::5", "fd00:96::10")
                .udp(50001, 53)
                .payload(b"q6")
                .build(),
            verdict: OK,
            output: eth()
                .ip("fd00:244::5", "fd00:244::10")
                .udp(50001, 5353)
                .payload(b"q6")
                .build(),
        },
        Fixture {
            description: "ClusterIP with ITP Local, no local backend, from a pod: drop",
            hook: Hook::FromPod,
            input: syn("10.244.0.5", "10.96.0.21", 53000, 80).build(),
            verdict: SHOT,
            output: syn("10.244.0.5", "10.96.0.21", 53000, 80).build(),
        },
        Fixture {
            description: "ClusterIP with ITP Local, no local backend, from outside: drop too",
            hook: Hook::FromUplink,
            input: syn("192.0.2.9", "10.96.0.21", 53001, 80).build(),
            verdict: SHOT,
            output: syn("192.0.2.9", "10.96.0.21", 53001, 80).build(),
        },
        Fixture {
            description: "Pod UDP leaving the cluster: masqueraded on the uplink's egress",
            hook: Hook::ToUplink,
            input: eth()
                .ip("10.244.0.5", "203.0.113.53")
                .udp(54000, 53)
                .payload(b"dns")
                .build(),
            verdict: OK,
            output: eth()
                .ip("172.18.0.2", "203.0.113.53")
                .udp(54000, 53)
                .payload(b"dns")
                .build(),
        },
        Fixture {
            description: "Masqueraded flow's reply: back to the pod",
            hook: Hook::FromUplink,
            input: eth()
                .ip("203.0.113.53", "172.18.0.2")
                .udp(53, 54000)
                .payload(b"ans")
                .build(),
            verdict: OK,
            output: eth()
                .ip("203.0.113.53", "10.244.0.5")
                .udp(53, 54000)
                .payload(b"ans")
                .build(),
        },
        Fixture {
            description: "Pod TCP SYN leaving the cluster: masqueraded",
            hook: Hook::ToUplink,
            input: syn("10.244.0.5", "203.0.113.80", 54001, 443).build(),
            verdict: OK,
            output: syn("172.18.0.2", "203.0.113.80", 54001, 443).build(),
        },
        Fixture {
            description: "Masqueraded TCP flow's next packet on the pod veth: left for the uplink",
            hook: Hook::FromPod,
            input: eth()
                .ip("10.244.0.5", "203.0.113.80")
                .tcp(54001, 443, TCP_ACK)
                .build(),
            verdict: OK,
            output: eth()
                .ip("10.244.0.5", "203.0.113.80")
                .tcp(54001, 443, TCP_ACK)
                .build(),
        },
        Fixture {
            description: "... and masqueraded on the uplink's egress",
            hook: Hook::ToUplink,
            input: eth()
                .ip("10.244.0.5", "203.0.113.80")
                .tcp(54001, 443, TCP_ACK)
                .build(),
            verdict: OK,
            output: eth()
                .ip("172.18.0.2", "203.0.113.80")
                .tcp(54001, 443, TCP_ACK)
                .build(),
        },
        Fixture {
            description:
                "TCP without conntrack and without SYN (a reply of an inbound flow): untouched",
            hook: Hook::ToUplink,
            input: eth()
                .ip("10.244.0.5", "203.0.113.81")
                .tcp(8080, 54002, TCP_ACK)
                .build(),
            verdict: OK,
            output: eth()
                .ip("10.244.0.5", "203.0.113.81")
                .tcp(8080, 54002, TCP_ACK)
                .build(),
        },
        Fixture {
            description: "UDP from outside straight to a local pod: untouched (and remembered)",
            hook: Hook::FromUplink,
            input: eth()
                .ip("203.0.113.99", "10.244.0.5")
                .udp(5000, 8080)
                .payload(b"hi")
                .build(),
            verdict: OK,
            output: eth()
                .ip("203.0.113.99", "10.244.0.5")
                .udp(5000, 8080)
                .payload(b"hi")
                .build(),
        },
        Fixture {
            description: "The pod's UDP reply to that client: not masqueraded",
            hook: Hook::ToUplink,
            input: eth()
                .ip("10.244.0.5", "203.0.113.99")
                .udp(8080, 5000)
                .payload(b"yo")
                .build(),
            verdict: OK,
            output: eth()
                .ip("10.244.0.5", "203.0.113.99")
                .udp(8080, 5000)
                .payload(b"yo")
                .build(),
        },
        Fixture {
            description: "Pod to another node's pod on the uplink: not masqueraded",
            hook: Hook::ToUplink,
            input: syn("10.244.0.5", "10.244.1.20", 54003, 8080).build(),
            verdict: OK,
            output: syn("10.244.0.5", "10.244.1.20", 54003, 8080).build(),
        },
        Fixture {
            description:
                "ICMP port unreachable from a backend: back to the client, quoting the frontend",
            hook: Hook::FromUplink,
            input: eth()
                .ip("10.244.1.20", "10.244.0.5")
                .icmp_unreachable(quoted(
                    &eth()
                        .ip("10.244.0.5", "10.244.1.20")
                        .udp(41000, 5353)
                        .payload(b"query")
                        .build(),
                ))
                .build(),
            verdict: OK,
            output: eth()
                .ip("10.96.0.10", "10.244.0.5")
                .icmp_unreachable(quoted(
                    &eth()
                        .ip("10.244.0.5", "10.96.0.10")
                        .udp(41000, 53)
                        .payload(b"query")
                        .build(),
                ))
                .build(),
        },
        Fixture {
            description: "ICMP error from a router about a SNATed NodePort flow: to the client",
            hook: Hook::FromUplink,
            input: eth()
                .ip("172.18.0.3", "172.18.0.2")
                .icmp_unreachable(quoted(
                    &syn("172.18.0.2", "10.244.1.20", 45000, 8080).build(),
                ))
                .build(),
            verdict: OK,
            output: eth()
                .ip("172.18.0.3", "192.0.2.7")
                .icmp_unreachable(quoted(
                    &syn("192.0.2.7", "172.18.0.2", 45000, 30080).build(),
                ))
                .build(),
        },
        Fixture {
            description: "ICMP error about a translated reply: to the backend, quoting its packet",
            hook: Hook::FromPod,
            input: eth()
                .ip("10.244.0.1", "10.96.0.10")
                .icmp_unreachable(quoted(
                    &eth()
                        .ip("10.96.0.10", "10.244.0.5")
                        .tcp(80, 40000, TCP_SYN | TCP_ACK)
                        .build(),
                ))
                .build(),
            verdict: OK,
            output: eth()
                .ip("10.244.0.1", "10.244.1.20")
                .icmp_unreachable(quoted(
                    &eth()
                        .ip("10.244.1.20", "10.244.0.5")
                        .tcp(8080, 40000, TCP_SYN | TCP_ACK)
                        .build(),
                ))
                .build(),
        },
        Fixture {
            description: "ICMPv6 port unreachable from a backend: back to the client",
            hook: Hook::FromPod,
            input: eth()
                .ip("fd00:244::10", "fd00:244::5")
                .icmp_unreachable(quoted(
                    &eth()
                        .ip("fd00:244::5", "fd00:244::10")
                        .udp(50001, 5353)
                        .payload(b"q6")
                        .build(),
                ))
                .build(),
            verdict: OK,
            output: eth()
                .ip("fd00:96::10", "fd00:244::5")
                .icmp_unreachable(quoted(
                    &eth()
                        .ip("fd00:244::5", "fd00:96::10")
                        .udp(50001, 53)
                        .payload(b"q6")
                        .build(),
                ))
                .build(),
        },
        Fixture {
            description: "Not a service: untouched",
            hook: Hook::FromPod,
            input: syn("10.244.0.5", "10.244.1.20", 51000, 8080).build(),
            verdict: OK,
            output: syn("10.244.0.5", "10.244.1.20", 51000, 8080).build(),
        },
    ];
    for f in &fixtures {
        check(&mut dp, f);
    }

    // IPv6 reject: a v6 service without backends.
    let mut st = scene();
    st.services.push(service("empty6", "fd00:96::15", vec![]));
    dp.apply(&st).expect("apply with empty6");
    let input = syn("fd00:244::5", "fd00:96::15", 52000, 80).build();
    check(
        &mut dp,
        &Fixture {
            description: "IPv6 service without backends: TCP RST",
            hook: Hook::FromPod,
            output: rst_of("fd00:96::15", "fd00:244::5", 80, 52000),
            input,
            verdict: REDIRECT,
        },
    );

    let flows = dp.flows().expect("flows");
    assert!(
        flows
            .iter()
            .any(|f| f.frontend.to_string() == "10.96.0.10:80"
                && f.backend.to_string() == "10.244.1.20:8080"
                && f.service == Some(ObjectName::new("default", "web"))),
        "ClusterIP flow is listed: {flows:?}"
    );
    let stats = dp.stats().expect("stats");
    assert!(stats.packets_rejected >= 3, "{stats:?}");
    assert!(stats.packets_dropped >= 2, "{stats:?}");
}

fn backend_of(dp: &mut EbpfDataplane, input: &[u8]) -> IpAddr {
    let run = dp.run_packet(Hook::FromPod, input, 1).expect("run");
    assert_eq!(run.verdict, OK);
    let out = &run.output;
    if out[12] == 0x08 {
        IpAddr::from([out[30], out[31], out[32], out[33]])
    } else {
        let mut b = [0u8; 16];
        b.copy_from_slice(&out[38..54]);
        IpAddr::from(b)
    }
}

#[test]
fn selection_affinity_terminating_and_maglev() {
    if !require_root("selection_affinity_terminating_and_maglev") {
        return;
    }
    let n = TestNode::new("sel");
    let mut dp = n.dataplane();
    dp.apply(&scene()).expect("apply");
    let ready: IpAddr = "10.244.0.10".parse().unwrap();
    for sport in 1000..1050 {
        let p = eth()
            .ip("10.244.0.5", "10.96.0.17")
            .tcp(sport, 80, TCP_SYN)
            .build();
        assert_eq!(
            backend_of(&mut dp, &p),
            ready,
            "a ready backend beats a terminating one"
        );
    }
    // Affinity: one client always lands on the same backend, whatever its source port.
    let first = backend_of(
        &mut dp,
        &eth()
            .ip("10.244.0.6", "10.96.0.19")
            .tcp(2000, 80, TCP_SYN)
            .build(),
    );
    for sport in 2001..2040 {
        let p = eth()
            .ip("10.244.0.6", "10.96.0.19")
            .tcp(sport, 80, TCP_SYN)
            .build();
        assert_eq!(
            backend_of(&mut dp, &p),
            first,
            "ClientIP affinity keeps the backend"
        );
    }
    // Without affinity, random selection reaches both backends.
    let mut seen = std::collections::BTreeSet::new();
    for sport in 3000..3064 {
        let p = eth()
            .ip("10.244.0.7", "10.96.0.20")
            .tcp(sport, 80, TCP_SYN)
            .build();
        seen.insert(backend_of(&mut dp, &p));
    }
    assert_eq!(
        seen.len(),
        2,
        "maglev spreads flows over both backends: {seen:?}"
    );
    // Maglev: a second, independent dataplane picks the same backend for the same flow.
    let n2 = TestNode::new("sel2");
    let mut dp2 = n2.dataplane();
    dp2.apply(&scene()).expect("apply 2");
    for sport in 4000..4020 {
        let p = eth()
            .ip("10.244.0.8", "10.96.0.20")
            .tcp(sport, 80, TCP_SYN)
            .build();
        assert_eq!(
            backend_of(&mut dp, &p),
            backend_of(&mut dp2, &p),
            "maglev agrees across nodes"
        );
    }
}

#[test]
fn established_flow_keeps_backend_and_maintain_expires() {
    if !require_root("established_flow_keeps_backend_and_maintain_expires") {
        return;
    }
    let n = TestNode::new("est");
    let mut dp = n.dataplane();
    dp.apply(&scene()).expect("apply");
    let syn = eth()
        .ip("10.244.0.5", "10.96.0.10")
        .tcp(60000, 80, TCP_SYN)
        .build();
    assert_eq!(
        backend_of(&mut dp, &syn),
        "10.244.1.20".parse::<IpAddr>().unwrap()
    );
    // The backend leaves the service: the established flow keeps it, new flows do not.
    let mut st = scene();
    let web = st
        .services
        .iter_mut()
        .find(|s| s.name.name == "web")
        .expect("web");
    web.backends = vec![backend("10.244.0.10", "node-a")];
    let changes = dataplane_core::diff(&scene(), &st);
    let report = dp.apply_changes(&changes).expect("apply_changes");
    assert!(!report.full_sync);
    let ack = eth()
        .ip("10.244.0.5", "10.96.0.10")
        .tcp(60000, 80, TCP_ACK)
        .build();
    assert_eq!(
        backend_of(&mut dp, &ack),
        "10.244.1.20".parse::<IpAddr>().unwrap()
    );
    let new = eth()
        .ip("10.244.0.5", "10.96.0.10")
        .tcp(60001, 80, TCP_SYN)
        .build();
    assert_eq!(
        backend_of(&mut dp, &new),
        "10.244.0.10".parse::<IpAddr>().unwrap()
    );
    let observed = dp.observe().expect("observe");
    let web = observed
        .frontends
        .iter()
        .find(|f| f.address.to_string() == "10.96.0.10:80")
        .expect("web frontend");
    assert_eq!(
        web.backends
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        vec!["10.244.0.10:8080"]
    );

    // Removing a service incrementally takes its frontends out; its ClusterIP is an
    // unallocated address of the service CIDRs now, dropped.
    let mut st3 = st.clone();
    st3.services.retain(|s| s.name.name != "empty");
    let report = dp
        .apply_changes(&dataplane_core::diff(&st, &st3))
        .expect("remove a service");
    assert_eq!(report.services_removed, 1);
    let observed = dp.observe().expect("observe");
    assert!(
        !observed
            .frontends
            .iter()
            .any(|f| f.address.ip().to_string() == "10.96.0.15"),
        "removed service is gone from the maps"
    );
    let to_removed = eth()
        .ip("10.244.0.5", "10.96.0.15")
        .tcp(60002, 80, TCP_SYN)
        .build();
    let run = dp.run_packet(Hook::FromPod, &to_removed, 1).expect("run");
    assert_eq!((run.verdict, hex(&run.output)), (SHOT, hex(&to_removed)));
    // Adding it back incrementally rejects again (it has no backends).
    let report = dp
        .apply_changes(&dataplane_core::diff(&st3, &st))
        .expect("add it back");
    assert_eq!(report.services_changed, 1);
    let run = dp.run_packet(Hook::FromPod, &to_removed, 1).expect("run");
    assert_eq!(run.verdict, REDIRECT, "no backends: rejected");

    maintain_expires_syn_flows(&mut dp);
}

/// Maintenance expires a flow's conntrack entries once it has been idle longer than its
/// timeout (`tcp_syn`, 1 min, for the SYN-only flows `dp` holds), and not before.
fn maintain_expires_syn_flows(dp: &mut EbpfDataplane) {
    let flows = dp.flows().expect("flows");
    assert!(flows.len() >= 2);
    let report = dp.maintain(monotonic_now()).expect("maintain now");
    assert_eq!(report.flows_expired, 0, "nothing is idle yet: {report:?}");
    assert_eq!(
        report.flows_remaining,
        Some(flows.len() as u64),
        "{report:?}"
    );
    assert_eq!(dp.flows().expect("flows"), flows, "the entries stay");
    let report = dp
        .maintain(monotonic_now() + std::time::Duration::from_secs(30))
        .expect("maintain before the timeout");
    assert_eq!(report.flows_expired, 0, "still within tcp_syn: {report:?}");
    assert_eq!(dp.flows().expect("flows"), flows, "the entries stay");
    let report = dp
        .maintain(monotonic_now() + std::time::Duration::from_mins(2))
        .expect("maintain later");
    assert_eq!(
        (report.flows_expired, report.flows_remaining),
        (flows.len() as u64, Some(0)),
        "SYN-only flows expire after tcp_syn: {report:?}"
    );
    assert!(dp.flows().expect("flows").is_empty());
    assert_eq!(
        dp.stats().expect("stats").flows,
        0,
        "no conntrack entry is left in the map"
    );
}

/// Replies keep the forward entry (the one GC reads) up to date: new state bits reach it at
/// once, even though a reply without new bits skips the forward entry's lookup.
#[test]
fn replies_update_the_forward_entry() {
    if !require_root("replies_update_the_forward_entry") {
        return;
    }
    let n = TestNode::new("rpl");
    let mut dp = n.dataplane();
    dp.apply(&scene()).expect("apply");
    let from_client = |flags| {
        eth()
            .ip("10.244.0.5", "10.96.0.10")
            .tcp(61000, 80, flags)
            .build()
    };
    let from_backend = |flags| {
        eth()
            .ip("10.244.1.20", "10.244.0.5")
            .tcp(8080, 61000, flags)
            .build()
    };
    let translated_reply = |flags| {
        eth()
            .ip("10.96.0.10", "10.244.0.5")
            .tcp(80, 61000, flags)
            .build()
    };
    assert_eq!(
        backend_of(&mut dp, &from_client(TCP_SYN)),
        "10.244.1.20".parse::<IpAddr>().unwrap()
    );
    for flags in [TCP_SYN | TCP_ACK, TCP_ACK, TCP_ACK] {
        let run = dp
            .run_packet(Hook::FromUplink, &from_backend(flags), 1)
            .expect("reply");
        assert_eq!(
            hex(&run.output),
            hex(&translated_reply(flags)),
            "reply with flags {flags:#x} is reverse-translated"
        );
    }
    // The SYN-ACK marked the flow as answered: it outlives the SYN timeout (1 min).
    let report = dp
        .maintain(monotonic_now() + std::time::Duration::from_mins(2))
        .expect("maintain");
    assert_eq!(
        (report.flows_expired, report.flows_remaining),
        (0, Some(1)),
        "{report:?}"
    );
    // FIN from both sides: the flow is closing and expires after tcp_closing (10 s), which
    // it only does if the backend's FIN reached the forward entry.
    let run = dp
        .run_packet(Hook::FromUplink, &from_backend(TCP_FIN | TCP_ACK), 1)
        .expect("backend FIN");
    assert_eq!(hex(&run.output), hex(&translated_reply(TCP_FIN | TCP_ACK)));
    backend_of(&mut dp, &from_client(TCP_FIN | TCP_ACK));
    let report = dp
        .maintain(monotonic_now() + std::time::Duration::from_secs(30))
        .expect("maintain");
    assert_eq!(
        (report.flows_expired, report.flows_remaining),
        (1, Some(0)),
        "{report:?}"
    );
}

#[test]
fn capacity_error_writes_nothing() {
    if !require_root("capacity_error_writes_nothing") {
        return;
    }
    let n = TestNode::new("cap");
    let mut cfg = n.config();
    cfg.capacities.services = 8;
    let mut dp = EbpfDataplane::new(cfg).expect("load");
    let small = state(vec![service(
        "web",
        "10.96.0.10",
        vec![backend("10.244.1.20", "node-b")],
    )]);
    dp.apply(&small).expect("fits");
    let before = dp.observe().expect("observe");
    let err = dp.apply(&scene()).expect_err("too many frontends");
    assert!(
        matches!(err, dataplane_core::Error::CapacityExceeded { .. }),
        "typed capacity error: {err}"
    );
    assert_eq!(
        dp.observe().expect("observe"),
        before,
        "a refused apply writes nothing"
    );
}

/// After `reset` nothing of ours is in the kernel; a refused state must leave it so, although
/// the apply loaded the objects to try it: no pinned maps, and the next fitting apply works.
#[test]
fn capacity_error_after_reset_leaves_nothing_loaded() {
    if !require_root("capacity_error_after_reset_leaves_nothing_loaded") {
        return;
    }
    let n = TestNode::new("capr");
    let mut cfg = n.config();
    cfg.capacities.services = 8;
    let mut dp = EbpfDataplane::new(cfg).expect("load");
    dp.reset().expect("reset");
    assert!(!n.pin_dir.exists(), "reset removes the pin directory");
    let err = dp.apply(&scene()).expect_err("too many frontends");
    assert!(
        matches!(err, dataplane_core::Error::CapacityExceeded { .. }),
        "typed capacity error: {err}"
    );
    assert!(
        !n.pin_dir.exists(),
        "a refused apply after reset leaves no pinned maps behind"
    );
    let small = state(vec![service(
        "web",
        "10.96.0.10",
        vec![backend("10.244.1.20", "node-b")],
    )]);
    let report = dp.apply(&small).expect("fits");
    assert_eq!(report.services_changed, 1, "{report:?}");
}

/// A state with more backends than fit is refused before anything is written, and leaves no
/// trace: the backends it would have added are not taken as written by the next apply.
#[test]
fn backend_capacity_error_leaves_no_trace() {
    if !require_root("backend_capacity_error_leaves_no_trace") {
        return;
    }
    let n = TestNode::new("becap");
    let mut cfg = n.config();
    // Ids 1..=5; the test services have two ports, so each address is two backends.
    cfg.capacities.backends = 6;
    let mut dp = EbpfDataplane::new(cfg).expect("load");
    let web = |backends: &[&str]| {
        state(vec![service(
            "web",
            "10.96.0.10",
            backends.iter().map(|b| backend(b, "node-b")).collect(),
        )])
    };
    dp.apply(&web(&["10.244.1.20"])).expect("fits");
    let too_many = web(&["10.244.1.21", "10.244.1.22", "10.244.1.23", "10.244.1.24"]);
    let err = dp
        .apply(&too_many)
        .expect_err("four new backends do not fit");
    assert!(
        matches!(err, dataplane_core::Error::CapacityExceeded { ref what, .. } if what.contains("dp_backends")),
        "{err}"
    );
    // One of the refused backends, now alone: it must really be written.
    dp.apply(&web(&["10.244.1.22"])).expect("fits");
    let syn = eth()
        .ip("10.244.0.5", "10.96.0.10")
        .tcp(61100, 80, TCP_SYN)
        .build();
    assert_eq!(
        backend_of(&mut dp, &syn),
        "10.244.1.22".parse::<IpAddr>().unwrap()
    );
}

#[test]
fn pinned_state_is_adopted_and_reset_removes_it() {
    if !require_root("pinned_state_is_adopted_and_reset_removes_it") {
        return;
    }
    let n = TestNode::new("pin");
    let mut cfg = n.config();
    cfg.keep_attachments_on_drop = true;
    let mut dp = EbpfDataplane::new(cfg.clone()).expect("load");
    dp.apply(&scene()).expect("apply");
    let syn = eth()
        .ip("10.244.0.5", "10.96.0.10")
        .tcp(61000, 80, TCP_SYN)
        .build();
    assert_eq!(dp.run_packet(Hook::FromPod, &syn, 1).unwrap().verdict, OK);
    drop(dp);
    assert!(
        n.pin_dir.join("links/from-uplink@eth0").exists(),
        "uplink link stays pinned"
    );

    let mut dp = EbpfDataplane::new(cfg).expect("adopt");
    // Before any apply, the adopted conntrack still translates the reply.
    let reply = eth()
        .ip("10.244.1.20", "10.244.0.5")
        .tcp(8080, 61000, TCP_SYN | TCP_ACK)
        .build();
    let run = dp.run_packet(Hook::FromUplink, &reply, 1).unwrap();
    assert_eq!(
        hex(&run.output),
        hex(&eth()
            .ip("10.96.0.10", "10.244.0.5")
            .tcp(80, 61000, TCP_SYN | TCP_ACK)
            .build())
    );
    assert!(
        dp.observe().unwrap().frontends.len() > 5,
        "adopted services are observable"
    );
    let report = dp.apply(&scene()).expect("reconcile");
    assert_eq!(
        report.objects_written, 0,
        "adopted maps already match: {report:?}"
    );
    dp.reset().expect("reset");
    assert!(!n.pin_dir.exists(), "reset removes the pin directory");
    // Nothing is loaded until the next apply: the reads answer what is programmed, nothing
    // (as maintain does, and as the fake does after its reset).
    assert_eq!(
        dp.observe().expect("observe after reset"),
        ObservedState::default()
    );
    assert_eq!(dp.flows().expect("flows after reset"), Vec::new());
    assert_eq!(dp.stats().expect("stats after reset"), Stats::default());
    let maintained = dp.maintain(monotonic_now()).expect("maintain after reset");
    assert_eq!(maintained.flows_remaining, Some(0));
    assert!(
        matches!(
            dp.apply_changes(&ChangeSet::default()),
            Err(dataplane_core::Error::FullSyncRequired)
        ),
        "after reset only a full apply"
    );
}

#[test]
fn attachments_detach_on_drop_unless_kept() {
    if !require_root("attachments_detach_on_drop_unless_kept") {
        return;
    }
    let n = TestNode::new("att");
    let mut dp = n.dataplane();
    dp.apply(&scene()).expect("apply");
    assert_eq!(
        common::tcx_programs(&n, "eth0", false),
        vec!["dp_from_uplink"]
    );
    assert_eq!(common::tcx_programs(&n, "eth0", true), vec!["dp_to_uplink"]);
    drop(dp);
    assert!(
        common::tcx_programs(&n, "eth0", false).is_empty(),
        "dropped: detached"
    );
    assert!(!n.pin_dir.join("links/from-uplink@eth0").exists());

    let mut cfg = n.config();
    cfg.keep_attachments_on_drop = true;
    let mut dp = EbpfDataplane::new(cfg).expect("load");
    dp.apply(&scene()).expect("apply");
    drop(dp);
    assert_eq!(
        common::tcx_programs(&n, "eth0", false),
        vec!["dp_from_uplink"],
        "kept attached after drop"
    );
    let mut dp = n.dataplane();
    assert_eq!(
        common::tcx_programs(&n, "eth0", false),
        vec!["dp_from_uplink"],
        "adopted: replaced in place, not attached twice"
    );
    dp.reset().expect("reset");
    assert!(
        common::tcx_programs(&n, "eth0", false).is_empty(),
        "reset detaches"
    );
    assert!(
        common::tcx_programs(&n, "eth0", true).is_empty(),
        "reset detaches"
    );
    assert!(!n.pin_dir.exists(), "reset removes the pins");
}

#[test]
fn clsact_fallback_replaces_in_place_and_detaches() {
    if !require_root("clsact_fallback_replaces_in_place_and_detaches") {
        return;
    }
    let n = TestNode::new("nl");
    let mut cfg = n.config();
    cfg.attach_mode = AttachMode::Clsact;
    cfg.keep_attachments_on_drop = true;
    let mut dp = EbpfDataplane::new(cfg.clone()).expect("load");
    dp.apply(&scene()).expect("apply");
    assert!(
        common::tcx_programs(&n, "eth0", false).is_empty(),
        "no TCX link"
    );
    assert_eq!(
        common::clsact_filters(&n, "eth0", false, "dp_from_uplink"),
        1
    );
    assert_eq!(common::clsact_filters(&n, "eth0", true, "dp_to_uplink"), 1);
    let syn = eth()
        .ip("10.244.0.5", "10.96.0.10")
        .tcp(62000, 80, TCP_SYN)
        .build();
    assert_eq!(
        backend_of(&mut dp, &syn),
        "10.244.1.20".parse::<IpAddr>().unwrap()
    );
    drop(dp);
    assert_eq!(
        common::clsact_filters(&n, "eth0", false, "dp_from_uplink"),
        1,
        "kept after drop"
    );
    let mut dp = EbpfDataplane::new(cfg).expect("adopt");
    dp.apply(&scene()).expect("reconcile");
    assert_eq!(
        common::clsact_filters(&n, "eth0", false, "dp_from_uplink"),
        1,
        "replaced in place, not added twice"
    );
    dp.reset().expect("reset");
    assert_eq!(
        common::clsact_filters(&n, "eth0", false, "dp_from_uplink"),
        0
    );
    assert_eq!(common::clsact_filters(&n, "eth0", true, "dp_to_uplink"), 0);
    assert!(!n.pin_dir.exists());
}

#[test]
fn identical_slot_ranges_are_shared() {
    if !require_root("identical_slot_ranges_are_shared") {
        return;
    }
    let n = TestNode::new("share");
    let mut cfg = n.config();
    // One Maglev table is 251 slots. A ClusterIP, its NodePort and the NodePort's from-inside
    // twin use the same backends: shared, they take 251 slots, not 753.
    cfg.capacities.backend_slots = 600;
    let mut dp = EbpfDataplane::new(cfg).expect("load");
    let mut web = service(
        "web",
        "10.96.0.10",
        vec![
            backend("10.244.0.10", "node-a"),
            backend("10.244.1.20", "node-b"),
        ],
    );
    web.ports = vec![port(Protocol::Tcp, 80, 8080, Some(30080))];
    web.backend_selection = BackendSelection::Maglev;
    let first = state(vec![web.clone()]);
    dp.apply(&first).expect("three frontends share one table");
    // A new table is written before the old one is freed: 502 slots for a moment.
    web.backends.push(backend("10.244.1.21", "node-b"));
    let second = state(vec![web]);
    dp.apply_changes(&dataplane_core::diff(&first, &second))
        .expect("the update fits too");
    let observed = dp.observe().expect("observe");
    for address in ["10.96.0.10:80", "172.18.0.2:30080"] {
        let f = observed
            .frontends
            .iter()
            .find(|f| f.address.to_string() == address)
            .expect("frontend");
        assert_eq!(f.backends.len(), 3, "{address}: {f:?}");
    }
    let syn = eth()
        .ip("192.0.2.7", "172.18.0.2")
        .tcp(63000, 30080, TCP_SYN)
        .build();
    let run = dp.run_packet(Hook::FromUplink, &syn, 1).expect("run");
    assert_eq!(run.verdict, OK);
    assert_ne!(hex(&run.output), hex(&syn), "NodePort translated");
}

/// The `dp_svc` entry of ClusterIP `ip` port 80/TCP, read from the pinned map.
fn svc_entry(pin_dir: &std::path::Path, ip: &str) -> dataplane_ebpf::maps::SvcEntry {
    use aya::maps::{HashMap as BpfHashMap, Map, MapData};
    use dataplane_ebpf::maps::{Addr, Be16, SvcEntry, SvcKey, AF_INET, SCOPE_INTERNAL};

    let svc: BpfHashMap<MapData, SvcKey, SvcEntry> = BpfHashMap::try_from(Map::HashMap(
        MapData::from_pin(pin_dir.join("dp_svc")).expect("dp_svc pinned"),
    ))
    .expect("dp_svc as a hash map");
    let key = SvcKey {
        addr: Addr::new(ip.parse().unwrap()),
        port: Be16::new(80),
        proto: 6,
        scope: SCOPE_INTERNAL,
        family: AF_INET,
        pad: [0; 3],
    };
    svc.get(&key, 0).expect("the frontend's entry")
}

/// The backends 400 new connections from a pod to `vip`:80 reach (source ports from `base`).
fn backends_reached(
    dp: &mut EbpfDataplane,
    vip: &str,
    base: u16,
) -> std::collections::BTreeSet<String> {
    (base..base + 400)
        .map(|sport| {
            let p = eth().ip("10.244.0.5", vip).tcp(sport, 80, TCP_SYN).build();
            backend_of(dp, &p).to_string()
        })
        .collect()
}

/// A frontend entry carries the first `SVC_INLINE_SLOTS` slots of its range (`struct
/// svc_entry`), equal to the range in `dp_slots`, the rest zero. A range that fits is read
/// from the entry: with its `dp_slots` range zeroed behind the dataplane's back, a small
/// service still reaches every backend. A bigger range is read from `dp_slots`: its backends
/// beyond the inline ones are reached, and with its range zeroed it has none (rejected).
#[test]
fn frontend_entries_carry_their_first_slots() {
    use aya::maps::{Array, Map, MapData};
    use dataplane_ebpf::maps::SVC_INLINE_SLOTS;

    if !require_root("frontend_entries_carry_their_first_slots") {
        return;
    }
    let n = TestNode::new("inline");
    let mut dp = n.dataplane();
    let ips = |prefix: &str, count: usize| -> Vec<String> {
        (0..count).map(|i| format!("{prefix}.{}", 10 + i)).collect()
    };
    let small_ips = ips("10.244.1", 3);
    let big_ips = ips("10.244.2", SVC_INLINE_SLOTS + 4);
    let small = service(
        "small",
        "10.96.0.10",
        small_ips.iter().map(|ip| backend(ip, "node-b")).collect(),
    );
    let big = service(
        "big",
        "10.96.0.11",
        big_ips.iter().map(|ip| backend(ip, "node-b")).collect(),
    );
    dp.apply(&state(vec![small, big])).expect("apply");

    let mut slots: Array<MapData, u32> = Array::try_from(Map::Array(
        MapData::from_pin(n.pin_dir.join("dp_slots")).expect("dp_slots pinned"),
    ))
    .expect("dp_slots as an array");
    let entry = |ip: &str| svc_entry(&n.pin_dir, ip);
    let (small_entry, big_entry) = (entry("10.96.0.10"), entry("10.96.0.11"));
    for (what, e, count) in [
        ("small", small_entry, small_ips.len()),
        ("big", big_entry, big_ips.len()),
    ] {
        assert_eq!(
            e.v.slot_count as usize, count,
            "{what}: one slot per backend"
        );
        let range: Vec<u32> = (0..e.v.slot_count)
            .map(|i| slots.get(&(e.v.slot_base + i), 0).expect("slot"))
            .collect();
        let inline = count.min(SVC_INLINE_SLOTS);
        assert_eq!(
            &e.slots[..inline],
            &range[..inline],
            "{what}: the inline slots"
        );
        assert!(
            e.slots[inline..].iter().all(|s| *s == 0),
            "{what}: zeros after them: {:?}",
            e.slots
        );
    }

    let all = |ips: &[String]| {
        ips.iter()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>()
    };
    assert_eq!(
        backends_reached(&mut dp, "10.96.0.11", 10_000),
        all(&big_ips),
        "the big service reaches its backends beyond the inline slots (dp_slots)"
    );
    // Zero both ranges behind the dataplane's back.
    for e in [small_entry, big_entry] {
        for i in 0..e.v.slot_count {
            slots.set(e.v.slot_base + i, 0, 0).expect("zero a slot");
        }
    }
    assert_eq!(
        backends_reached(&mut dp, "10.96.0.10", 20_000),
        all(&small_ips),
        "the small service's range is read from its entry"
    );
    let syn = eth()
        .ip("10.244.0.5", "10.96.0.11")
        .tcp(30_000, 80, TCP_SYN)
        .build();
    let run = dp.run_packet(Hook::FromPod, &syn, 1).expect("run");
    assert_eq!(
        run.verdict, REDIRECT,
        "the big service's range is read from dp_slots: zeroed, no backend (RST)"
    );
}

/// Arrays pinned by a version without `BPF_F_MMAPABLE` (here: created by bpftool) cannot be
/// mapped: the writer falls back on batch calls, and backends and slots still reach the
/// datapath, through a full sync, an update that frees a backend, and adoption.
#[test]
fn arrays_pinned_without_mmap_are_written_with_batch_calls() {
    if !require_root("arrays_pinned_without_mmap_are_written_with_batch_calls") {
        return;
    }
    let n = TestNode::new("nommap");
    let cfg = n.config();
    std::fs::create_dir_all(&n.pin_dir).expect("pin dir");
    for (name, value, entries) in [
        ("dp_backends", "20", cfg.capacities.backends),
        ("dp_slots", "4", cfg.capacities.backend_slots),
    ] {
        let path = n.pin_dir.join(name);
        let out = std::process::Command::new("bpftool")
            .args(["map", "create"])
            .arg(&path)
            .args(["type", "array", "key", "4", "value", value])
            .args(["entries", &entries.to_string(), "name", name])
            .output()
            .expect("run bpftool");
        assert!(
            out.status.success(),
            "bpftool map create {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let addr = |s: &str| s.parse::<IpAddr>().unwrap();
    let mut dp = EbpfDataplane::new(cfg.clone()).expect("load over the pinned arrays");
    let first = state(vec![service(
        "web",
        "10.96.0.10",
        vec![backend("10.244.1.20", "node-b")],
    )]);
    dp.apply(&first).expect("apply");
    let syn = |sport| {
        eth()
            .ip("10.244.0.5", "10.96.0.10")
            .tcp(sport, 80, TCP_SYN)
            .build()
    };
    assert_eq!(backend_of(&mut dp, &syn(61001)), addr("10.244.1.20"));
    let second = state(vec![service(
        "web",
        "10.96.0.10",
        vec![backend("10.244.1.21", "node-b")],
    )]);
    dp.apply_changes(&dataplane_core::diff(&first, &second))
        .expect("replace the backend");
    assert_eq!(backend_of(&mut dp, &syn(61002)), addr("10.244.1.21"));
    drop(dp);
    let mut dp = EbpfDataplane::new(cfg).expect("adopt");
    let report = dp.apply(&second).expect("reconcile");
    assert_eq!(
        report.objects_written, 0,
        "adopted arrays read back: {report:?}"
    );
    assert_eq!(backend_of(&mut dp, &syn(61003)), addr("10.244.1.21"));
    dp.reset().expect("reset");
}

/// A translated packet for a pod on this node goes straight to the pod's interface (from the
/// endpoints), without a FIB lookup: here the node has no route to the pod at all, so only the
/// endpoint map can send it there. An endpoint that goes takes its entry with it.
#[test]
fn packets_for_local_pods_go_straight_to_their_interface() {
    if !require_root("packets_for_local_pods_go_straight_to_their_interface") {
        return;
    }
    let n = TestNode::new("local");
    let ns = n.name.as_str();
    for args in [
        vec![
            "-n", ns, "link", "add", "lxc0", "type", "veth", "peer", "name", "lxc0p",
        ],
        vec!["-n", ns, "link", "set", "lxc0", "up"],
    ] {
        let out = std::process::Command::new("ip")
            .args(&args)
            .output()
            .expect("ip");
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut dp = n.dataplane();
    let mut with_pod = state(vec![
        service("web", "10.96.0.10", vec![backend("10.244.0.10", "node-a")]),
        service(
            "web6",
            "fd00:96::10",
            vec![backend("fd00:244::10", "node-a")],
        ),
    ]);
    with_pod.endpoints = vec![dataplane_core::Endpoint {
        name: ObjectName::new("default", "web-0"),
        interface: "lxc0".to_owned(),
        ips: vec![
            "10.244.0.10".parse().unwrap(),
            "fd00:244::10".parse().unwrap(),
        ],
        labels: std::collections::BTreeMap::new(),
        namespace_labels: std::collections::BTreeMap::new(),
        named_ports: Vec::new(),
    }];
    let syn = |sport| {
        eth()
            .ip("10.244.0.5", "10.96.0.10")
            .tcp(sport, 80, TCP_SYN)
            .build()
    };
    dp.apply(&with_pod).expect("apply");
    let run = dp.run_packet(Hook::FromPod, &syn(61200), 1).expect("run");
    assert_eq!(run.verdict, REDIRECT, "to the pod's veth");
    assert_eq!(&run.output[30..34], &[10, 244, 0, 10], "DNAT to the pod");
    // Forwarded by the redirect: one hop less, the header checksum still right.
    assert_eq!(
        run.output[22],
        63,
        "TTL decremented: {}",
        hex(&run.output[14..34])
    );
    assert!(
        checksum_ok(&run.output[14..34]),
        "IPv4 checksum after the TTL change"
    );
    // A TTL that runs out here is the stack's (it answers time exceeded): not redirected,
    // not decremented.
    let last_hop = eth()
        .ip("10.244.0.5", "10.96.0.10")
        .tcp(61203, 80, TCP_SYN)
        .ttl(1)
        .build();
    let run = dp.run_packet(Hook::FromPod, &last_hop, 1).expect("run");
    assert_eq!(run.verdict, OK, "TTL 1 goes to the stack");
    assert_eq!(run.output[22], 1);
    // IPv6: the hop limit, likewise.
    let syn6 = |sport, hops| {
        eth()
            .ip("fd00:244::5", "fd00:96::10")
            .tcp(sport, 80, TCP_SYN)
            .ttl(hops)
            .build()
    };
    let run = dp
        .run_packet(Hook::FromPod, &syn6(61210, 64), 1)
        .expect("run");
    assert_eq!(run.verdict, REDIRECT, "IPv6 to the pod's veth");
    assert_eq!(run.output[21], 63, "hop limit decremented");
    let run = dp
        .run_packet(Hook::FromPod, &syn6(61211, 1), 1)
        .expect("run");
    assert_eq!(run.verdict, OK, "hop limit 1 goes to the stack");
    assert_eq!(run.output[21], 1);
    // The pod goes (its endpoint with it): the FIB, which has no route, leaves the packet to
    // the stack.
    let mut without = with_pod.clone();
    without.endpoints.clear();
    dp.apply_changes(&dataplane_core::diff(&with_pod, &without))
        .expect("endpoint removed");
    let run = dp.run_packet(Hook::FromPod, &syn(61201), 1).expect("run");
    assert_eq!(run.verdict, OK, "no endpoint entry left");
    dp.apply_changes(&dataplane_core::diff(&without, &with_pod))
        .expect("endpoint back");
    let run = dp.run_packet(Hook::FromPod, &syn(61202), 1).expect("run");
    assert_eq!(run.verdict, REDIRECT);
}

/// DSR scene on node-a (172.18.0.2): `dsr` NodePort 30090 (TCP and UDP, externalMode Dsr) with
/// one remote backend 10.244.1.20 and `hybrid` NodePort 30091 (Hybrid: DSR for TCP only),
/// and `dsr-local` NodePort 30092 (Dsr) whose only backend is local.
fn dsr_scene() -> DesiredState {
    let remote = || vec![backend("10.244.1.20", "node-b")];
    let mut dsr = service("dsr", "10.96.0.30", remote());
    dsr.ports = vec![
        port(Protocol::Tcp, 80, 8080, Some(30090)),
        port(Protocol::Udp, 80, 8080, Some(30090)),
    ];
    dsr.external_mode = Some(dataplane_core::ExternalMode::Dsr);
    let mut hybrid = dsr.clone();
    hybrid.name = ObjectName::new("default", "hybrid");
    hybrid.cluster_ips = vec!["10.96.0.31".parse().unwrap()];
    hybrid.ports = vec![
        port(Protocol::Tcp, 80, 8080, Some(30091)),
        port(Protocol::Udp, 80, 8080, Some(30091)),
    ];
    hybrid.external_mode = Some(dataplane_core::ExternalMode::Hybrid);
    let mut local = service(
        "dsr-local",
        "10.96.0.32",
        vec![backend("10.244.0.10", "node-a")],
    );
    local.ports = vec![port(Protocol::Tcp, 80, 8080, Some(30092))];
    local.external_mode = Some(dataplane_core::ExternalMode::Dsr);
    state(vec![dsr, hybrid, local])
}

#[test]
#[allow(clippy::too_many_lines)] // a fixture table reads best in one piece
fn dsr_fixtures() {
    if !require_root("dsr_fixtures") {
        return;
    }
    let n = TestNode::new("dsr");
    let mut dp = n.dataplane();
    dp.apply(&dsr_scene()).expect("apply");

    let syn = |src: &str, dst: &str, sport, dport| eth().ip(src, dst).tcp(sport, dport, TCP_SYN);
    // 1460 bytes of payload: a full 1500-byte IPv4 packet that the option would push over.
    let big = eth()
        .ip("192.0.2.7", "172.18.0.2")
        .tcp(45000, 30090, TCP_ACK)
        .payload(&[0x5a; 1460])
        .build();
    let fixtures = vec![
        Fixture {
            description: "DSR NodePort SYN: DNAT to the remote backend, client kept, option added",
            hook: Hook::FromUplink,
            input: syn("192.0.2.7", "172.18.0.2", 45000, 30090).build(),
            verdict: OK,
            output: syn("192.0.2.7", "10.244.1.20", 45000, 8080)
                .dsr_option("172.18.0.2", 30090)
                .build(),
        },
        Fixture {
            description: "DSR established packet: same backend, option on every request",
            hook: Hook::FromUplink,
            input: eth()
                .ip("192.0.2.7", "172.18.0.2")
                .tcp(45000, 30090, TCP_ACK)
                .payload(b"GET /")
                .build(),
            verdict: OK,
            output: eth()
                .ip("192.0.2.7", "10.244.1.20")
                .tcp(45000, 8080, TCP_ACK)
                .payload(b"GET /")
                .dsr_option("172.18.0.2", 30090)
                .build(),
        },
        Fixture {
            description:
                "DSR request that no longer fits the MTU: ICMP fragmentation needed (1492)",
            hook: Hook::FromUplink,
            output: swap_macs(
                eth()
                    .ip("172.18.0.2", "192.0.2.7")
                    .icmp_frag_needed(quoted(&big), 1492),
            )
            .build(),
            input: big,
            verdict: REDIRECT,
        },
        Fixture {
            description: "DSR UDP: option added, UDP checksum fixed",
            hook: Hook::FromUplink,
            input: eth()
                .ip("192.0.2.7", "172.18.0.2")
                .udp(45001, 30090)
                .payload(b"ping")
                .build(),
            verdict: OK,
            output: eth()
                .ip("192.0.2.7", "10.244.1.20")
                .udp(45001, 8080)
                .payload(b"ping")
                .dsr_option("172.18.0.2", 30090)
                .build(),
        },
        Fixture {
            description: "Hybrid NodePort TCP: DSR",
            hook: Hook::FromUplink,
            input: syn("192.0.2.7", "172.18.0.2", 45002, 30091).build(),
            verdict: OK,
            output: syn("192.0.2.7", "10.244.1.20", 45002, 8080)
                .dsr_option("172.18.0.2", 30091)
                .build(),
        },
        Fixture {
            description: "Hybrid NodePort UDP: SNAT to the node address",
            hook: Hook::FromUplink,
            input: eth()
                .ip("192.0.2.7", "172.18.0.2")
                .udp(45003, 30091)
                .payload(b"ping")
                .build(),
            verdict: OK,
            output: eth()
                .ip("172.18.0.2", "10.244.1.20")
                .udp(45003, 8080)
                .payload(b"ping")
                .build(),
        },
        Fixture {
            description: "DSR NodePort with a local backend: plain DNAT, no option",
            hook: Hook::FromUplink,
            input: syn("192.0.2.7", "172.18.0.2", 45004, 30092).build(),
            verdict: OK,
            output: syn("192.0.2.7", "10.244.0.10", 45004, 8080).build(),
        },
        Fixture {
            description: "backend's node: a request with the DSR option is delivered without it",
            hook: Hook::FromUplink,
            input: syn("192.0.2.8", "10.244.0.10", 46000, 8080)
                .dsr_option("172.18.0.9", 30090)
                .build(),
            verdict: OK,
            output: syn("192.0.2.8", "10.244.0.10", 46000, 8080).build(),
        },
        Fixture {
            description: "backend's node: the pod's reply leaves from the frontend it learnt",
            hook: Hook::FromPod,
            input: eth()
                .ip("10.244.0.10", "192.0.2.8")
                .tcp(8080, 46000, TCP_SYN | TCP_ACK)
                .build(),
            verdict: OK,
            output: eth()
                .ip("172.18.0.9", "192.0.2.8")
                .tcp(30090, 46000, TCP_SYN | TCP_ACK)
                .build(),
        },
    ];
    for f in &fixtures {
        check(&mut dp, f);
    }
    check_dsr_outcome(
        &mut dp,
        4,
        ["192.0.2.7:45000", "172.18.0.2:30090", "10.244.1.20:8080"],
        ["192.0.2.8:46000", "172.18.0.9:30090", "10.244.0.10:8080"],
    );
    assert!(dp.flows().expect("flows").len() >= 3);
}

/// IPv6 DSR scene on node-a (`fd00:18::2`, pods `fd00:244::/64`): `dsr6` (externalMode Dsr,
/// TCP and UDP) on NodePort 30190, LB IP `2001:db8:100::1` and ExternalIP `2001:db8:100::2`
/// port 80, its one backend `fd00:244:1::20` on node-b; `hybrid6` NodePort 30191 (Hybrid: DSR
/// for TCP only); `dsr6-local` NodePort 30192 (Dsr) whose only backend is local.
fn dsr6_scene() -> DesiredState {
    let remote = || vec![backend("fd00:244:1::20", "node-b")];
    let mut dsr = service("dsr6", "fd00:96::40", remote());
    dsr.ports = vec![
        port(Protocol::Tcp, 80, 8080, Some(30190)),
        port(Protocol::Udp, 80, 8080, Some(30190)),
    ];
    dsr.load_balancer_ips = vec!["2001:db8:100::1".parse().unwrap()];
    dsr.external_ips = vec!["2001:db8:100::2".parse().unwrap()];
    dsr.external_mode = Some(dataplane_core::ExternalMode::Dsr);
    let mut hybrid = service("hybrid6", "fd00:96::41", remote());
    hybrid.ports = vec![
        port(Protocol::Tcp, 80, 8080, Some(30191)),
        port(Protocol::Udp, 80, 8080, Some(30191)),
    ];
    hybrid.external_mode = Some(dataplane_core::ExternalMode::Hybrid);
    let mut local = service(
        "dsr6-local",
        "fd00:96::42",
        vec![backend("fd00:244::10", "node-a")],
    );
    local.ports = vec![port(Protocol::Tcp, 80, 8080, Some(30192))];
    local.external_mode = Some(dataplane_core::ExternalMode::Dsr);
    let mut st = state(vec![dsr, hybrid, local]);
    st.node.pod_cidrs.push("fd00:244::/64".parse().unwrap());
    st
}

/// `dsr6_fixtures`' client, node-a (the ingress node), the remote backend and the local one.
const DSR6: (&str, &str, &str, &str) = (
    "2001:db8:9::7",
    "fd00:18::2",
    "fd00:244:1::20",
    "fd00:244::10",
);

/// IPv6 DSR on both nodes' sides: the destination-options header added on the ingress node
/// for NodePort, LB IP and ExternalIP (TCP and UDP, the L4 checksum kept for the backend's
/// pseudo header), Packet Too Big for a request it would push over the MTU, Hybrid, a local
/// backend; on the backend's node the header learnt and stripped, and the pod's reply sent
/// from the frontend.
#[test]
#[allow(clippy::too_many_lines)] // a fixture table reads best in one piece
fn dsr6_fixtures() {
    if !require_root("dsr6_fixtures") {
        return;
    }
    let (client, node, backend, local) = DSR6;
    let n = TestNode::new("dsr6");
    let mut dp = n.dataplane();
    dp.apply(&dsr6_scene()).expect("apply");
    assert!(
        dp.apply(&dsr6_scene()).expect("apply").skipped.is_empty(),
        "IPv6 DSR is served as asked"
    );

    let syn = |src: &str, dst: &str, sport, dport| eth().ip(src, dst).tcp(sport, dport, TCP_SYN);
    let udp =
        |src: &str, dst: &str, sport, dport| eth().ip(src, dst).udp(sport, dport).payload(b"ping");
    // 1440 bytes of payload: a full 1500-byte IPv6 packet that the header would push over.
    let big = eth()
        .ip(client, node)
        .tcp(45000, 30190, TCP_ACK)
        .payload(&[0x5a; 1440])
        .build();
    // A destination-options header that is not ours (another option type) is left alone.
    let mut foreign = syn(client, local, 46001, 8080)
        .dsr6_option("fd00:18::9", 30190)
        .build();
    foreign[14 + 40 + 2] = 0x1f;
    let fixtures = vec![
        Fixture {
            description: "IPv6 DSR NodePort SYN: DNAT to the remote backend, client kept, \
                          destination options {frontend} added",
            hook: Hook::FromUplink,
            input: syn(client, node, 45000, 30190).build(),
            verdict: OK,
            output: syn(client, backend, 45000, 8080)
                .dsr6_option(node, 30190)
                .build(),
        },
        Fixture {
            description: "IPv6 DSR established packet: same backend, header on every request",
            hook: Hook::FromUplink,
            input: eth()
                .ip(client, node)
                .tcp(45000, 30190, TCP_ACK)
                .payload(b"GET /")
                .build(),
            verdict: OK,
            output: eth()
                .ip(client, backend)
                .tcp(45000, 8080, TCP_ACK)
                .payload(b"GET /")
                .dsr6_option(node, 30190)
                .build(),
        },
        Fixture {
            description: "IPv6 DSR request that no longer fits the MTU: Packet Too Big (1476)",
            hook: Hook::FromUplink,
            output: swap_macs(
                eth()
                    .ip(node, client)
                    .icmp6_packet_too_big(quoted(&big), 1476),
            )
            .build(),
            input: big,
            verdict: REDIRECT,
        },
        Fixture {
            description: "IPv6 DSR LoadBalancer IP: the LB IP and port in the header",
            hook: Hook::FromUplink,
            input: syn(client, "2001:db8:100::1", 45001, 80).build(),
            verdict: OK,
            output: syn(client, backend, 45001, 8080)
                .dsr6_option("2001:db8:100::1", 80)
                .build(),
        },
        Fixture {
            description: "IPv6 DSR ExternalIP: the ExternalIP and port in the header",
            hook: Hook::FromUplink,
            input: syn(client, "2001:db8:100::2", 45002, 80).build(),
            verdict: OK,
            output: syn(client, backend, 45002, 8080)
                .dsr6_option("2001:db8:100::2", 80)
                .build(),
        },
        Fixture {
            description: "IPv6 DSR UDP: header added, UDP checksum fixed",
            hook: Hook::FromUplink,
            input: udp(client, node, 45003, 30190).build(),
            verdict: OK,
            output: udp(client, backend, 45003, 8080)
                .dsr6_option(node, 30190)
                .build(),
        },
        Fixture {
            description: "IPv6 Hybrid NodePort TCP: DSR",
            hook: Hook::FromUplink,
            input: syn(client, node, 45004, 30191).build(),
            verdict: OK,
            output: syn(client, backend, 45004, 8080)
                .dsr6_option(node, 30191)
                .build(),
        },
        Fixture {
            description: "IPv6 Hybrid NodePort UDP: SNAT to the node address",
            hook: Hook::FromUplink,
            input: udp(client, node, 45005, 30191).build(),
            verdict: OK,
            output: udp(node, backend, 45005, 8080).build(),
        },
        Fixture {
            description: "IPv6 DSR NodePort with a local backend: plain DNAT, no header",
            hook: Hook::FromUplink,
            input: syn(client, node, 45006, 30192).build(),
            verdict: OK,
            output: syn(client, local, 45006, 8080).build(),
        },
        Fixture {
            description: "backend's node: a request with the DSR header is delivered without it",
            hook: Hook::FromUplink,
            input: syn(client, local, 46000, 8080)
                .dsr6_option("fd00:18::9", 30190)
                .build(),
            verdict: OK,
            output: syn(client, local, 46000, 8080).build(),
        },
        Fixture {
            description: "backend's node: the pod's reply leaves from the frontend it learnt",
            hook: Hook::FromPod,
            input: eth()
                .ip(local, client)
                .tcp(8080, 46000, TCP_SYN | TCP_ACK)
                .build(),
            verdict: OK,
            output: eth()
                .ip("fd00:18::9", client)
                .tcp(30190, 46000, TCP_SYN | TCP_ACK)
                .build(),
        },
        Fixture {
            description: "backend's node: destination options that are not DSR's: untouched",
            hook: Hook::FromUplink,
            output: foreign.clone(),
            input: foreign,
            verdict: OK,
        },
    ];
    for f in &fixtures {
        check(&mut dp, f);
    }
    let flows = check_dsr_outcome(
        &mut dp,
        6,
        [
            "[2001:db8:9::7]:45000",
            "[fd00:18::2]:30190",
            "[fd00:244:1::20]:8080",
        ],
        [
            "[2001:db8:9::7]:46000",
            "[fd00:18::9]:30190",
            "[fd00:244::10]:8080",
        ],
    );
    assert!(
        !flows.iter().any(|f| f.client.port() == 46001),
        "nothing learnt from a foreign header: {flows:?}"
    );
}

/// What the DSR fixtures (`dsr_fixtures`, `dsr6_fixtures`) leave on `dp`: `forwarded`
/// requests sent out with DSR's IPv4 option or IPv6 destination options header, one reply
/// answered from the frontend, one ICMP fragmentation needed (Packet Too Big), and the DSR
/// flow listed on the ingress node (`ingress`) and on the backend's node (`at_backend`), each
/// (client, frontend, backend); GC keeps those lone entries (no reverse partner) while they
/// are fresh. Returns the flows before GC.
fn check_dsr_outcome(
    dp: &mut EbpfDataplane,
    forwarded: u64,
    ingress: [&str; 3],
    at_backend: [&str; 3],
) -> Vec<dataplane_core::Flow> {
    assert_eq!(
        stat(dp, "dsr_forwarded"),
        forwarded,
        "requests that went out with DSR's option or header"
    );
    assert_eq!(
        stat(dp, "dsr_replies"),
        1,
        "one reply answered from the frontend"
    );
    assert_eq!(stat(dp, "frag_needed"), 1, "one fragmentation needed");
    let listed = |flows: &[dataplane_core::Flow], [client, frontend, backend]: [&str; 3]| {
        flows.iter().any(|f| {
            f.client.to_string() == client
                && f.frontend.to_string() == frontend
                && f.backend.to_string() == backend
        })
    };
    let flows = dp.flows().expect("flows");
    assert!(
        listed(&flows, ingress),
        "the DSR flow is listed on the ingress node: {flows:?}"
    );
    assert!(
        listed(&flows, at_backend),
        "the DSR flow is listed on the backend's node too: {flows:?}"
    );
    let report = dp.maintain(monotonic_now()).expect("maintain");
    assert_eq!(report.other["orphans"], 0, "{report:?}");
    let kept = dp.flows().expect("flows");
    assert!(
        listed(&kept, ingress) && listed(&kept, at_backend),
        "GC keeps the lone DSR entries while they are fresh: {kept:?}"
    );
    flows
}

/// Source address and port (or echo identifier) of an IPv4 output packet.
fn src_of(out: &[u8]) -> (IpAddr, u16) {
    let port_at = if out[23] == 1 { 38 } else { 34 };
    (
        IpAddr::from([out[26], out[27], out[28], out[29]]),
        u16::from_be_bytes([out[port_at], out[port_at + 1]]),
    )
}

/// Destination address and port (or echo identifier) of an IPv4 output packet.
fn dst_of(out: &[u8]) -> (IpAddr, u16) {
    let port_at = if out[23] == 1 { 38 } else { 36 };
    (
        IpAddr::from([out[30], out[31], out[32], out[33]]),
        u16::from_be_bytes([out[port_at], out[port_at + 1]]),
    )
}

fn run_ok(dp: &mut EbpfDataplane, hook: Hook, input: &[u8], what: &str) -> Vec<u8> {
    let run = dp.run_packet(hook, input, 1).expect("test run");
    assert_eq!(run.verdict, OK, "{what}: verdict");
    assert!(
        common::checksum_ok(&run.output[14..34]),
        "{what}: IPv4 header checksum"
    );
    if run.output[23] == 1 {
        assert!(
            common::checksum_ok(&run.output[34..]),
            "{what}: ICMP checksum"
        );
    }
    run.output
}

#[test]
#[allow(clippy::too_many_lines)] // one scenario, step by step
fn masquerade_collisions_echo_and_masquerade_all() {
    if !require_root("masquerade_collisions_echo_and_masquerade_all") {
        return;
    }
    let n = TestNode::new("masq");
    let mut dp = n.dataplane();
    let mut st = state(Vec::new());
    st.node.masquerade.non_masquerade_cidrs = vec!["198.51.100.0/24".parse().unwrap()];
    dp.apply(&st).expect("apply");
    let node: IpAddr = "172.18.0.2".parse().unwrap();
    let peer = "192.0.2.50";
    let udp = |src: &str, sport| eth().ip(src, peer).udp(sport, 53).payload(b"q").build();

    // Two pods, same source port, same peer: the second gets another port.
    let a = run_ok(&mut dp, Hook::ToUplink, &udp("10.244.0.5", 40000), "pod a");
    assert_eq!(src_of(&a), (node, 40000), "the first keeps its port");
    let b = run_ok(&mut dp, Hook::ToUplink, &udp("10.244.0.6", 40000), "pod b");
    let (b_src, b_port) = src_of(&b);
    assert_eq!(b_src, node);
    assert_ne!(b_port, 40000, "a colliding flow gets another port");
    assert!(
        (32768..=60999).contains(&b_port),
        "port {b_port} in the SNAT range"
    );
    for (port, pod) in [(40000, "10.244.0.5"), (b_port, "10.244.0.6")] {
        let reply = eth()
            .ip(peer, "172.18.0.2")
            .udp(53, port)
            .payload(b"a")
            .build();
        let out = run_ok(&mut dp, Hook::FromUplink, &reply, "reply");
        assert_eq!(
            dst_of(&out),
            (pod.parse().unwrap(), 40000),
            "reply to {port}"
        );
    }

    // An ICMP error about the masqueraded flow goes back to the pod, quoting its own packet.
    check(
        &mut dp,
        &Fixture {
            description: "ICMP port unreachable about a masqueraded flow: to the pod",
            hook: Hook::FromUplink,
            input: eth()
                .ip(peer, "172.18.0.2")
                .icmp_unreachable(quoted(
                    &eth()
                        .ip("172.18.0.2", peer)
                        .udp(40000, 53)
                        .payload(b"q")
                        .build(),
                ))
                .build(),
            verdict: OK,
            output: eth()
                .ip(peer, "10.244.0.5")
                .icmp_unreachable(quoted(&udp("10.244.0.5", 40000)))
                .build(),
        },
    );

    // Ping: the echo identifier is the port; a colliding identifier is replaced and restored.
    let ping = |src: &str| eth().ip(src, peer).icmp_echo(false, 0x1234).build();
    let a = run_ok(&mut dp, Hook::ToUplink, &ping("10.244.0.5"), "echo a");
    assert_eq!(src_of(&a), (node, 0x1234));
    let b = run_ok(&mut dp, Hook::ToUplink, &ping("10.244.0.6"), "echo b");
    let (_, b_id) = src_of(&b);
    assert_ne!(b_id, 0x1234, "a colliding echo identifier is replaced");
    for (id, pod) in [(0x1234, "10.244.0.5"), (b_id, "10.244.0.6")] {
        let reply = eth().ip(peer, "172.18.0.2").icmp_echo(true, id).build();
        let out = run_ok(&mut dp, Hook::FromUplink, &reply, "echo reply");
        assert_eq!(
            dst_of(&out),
            (pod.parse().unwrap(), 0x1234),
            "echo reply {id:#x}"
        );
    }
    assert_eq!(
        src_of(&run_ok(
            &mut dp,
            Hook::ToUplink,
            &ping("10.244.0.6"),
            "echo b again"
        )),
        (node, b_id),
        "the echo flow keeps its identifier"
    );
    // An ICMP error about a masqueraded ping (a peer that refuses it, a router on the way
    // whose TTL ran out) goes back to the pod, quoting its own request and identifier.
    check(
        &mut dp,
        &Fixture {
            description: "ICMP unreachable about a masqueraded ping: to the pod",
            hook: Hook::FromUplink,
            input: eth()
                .ip(peer, "172.18.0.2")
                .icmp_unreachable(quoted(&b))
                .build(),
            verdict: OK,
            output: eth()
                .ip(peer, "10.244.0.6")
                .icmp_unreachable(quoted(&ping("10.244.0.6")))
                .build(),
        },
    );
    // IPv6 alike (its checksums cover the addresses).
    let mut st6 = st.clone();
    st6.node.pod_cidrs.push("fd00:244::/64".parse().unwrap());
    dp.apply(&st6).expect("apply with an IPv6 pod CIDR");
    let peer6 = "2001:db8::50";
    let ping6 = eth()
        .ip("fd00:244::5", peer6)
        .icmp_echo(false, 0x4321)
        .build();
    let run = dp.run_packet(Hook::ToUplink, &ping6, 1).expect("test run");
    assert_eq!(run.verdict, OK, "echo v6");
    let out6 = run.output;
    let src6: [u8; 16] = out6[22..38].try_into().unwrap();
    assert_eq!(
        IpAddr::from(src6),
        "fd00:18::2".parse::<IpAddr>().unwrap(),
        "IPv6 ping masqueraded"
    );
    check(
        &mut dp,
        &Fixture {
            description: "ICMPv6 unreachable about a masqueraded ping: to the pod",
            hook: Hook::FromUplink,
            input: eth()
                .ip(peer6, "fd00:18::2")
                .icmp_unreachable(quoted(&out6))
                .build(),
            verdict: OK,
            output: eth()
                .ip(peer6, "fd00:244::5")
                .icmp_unreachable(quoted(&ping6))
                .build(),
        },
    );
    dp.apply(&st).expect("back to IPv4 pods only");

    // nonMasqueradeCIDRs and the cluster are left alone; masquerade.all takes the cluster too.
    let to = |dst: &str| {
        eth()
            .ip("10.244.0.5", dst)
            .udp(41000, 53)
            .payload(b"q")
            .build()
    };
    for dst in ["198.51.100.9", "10.244.1.20"] {
        let out = run_ok(&mut dp, Hook::ToUplink, &to(dst), dst);
        assert_eq!(
            src_of(&out).0,
            "10.244.0.5".parse::<IpAddr>().unwrap(),
            "{dst}: not masqueraded"
        );
    }
    st.node.masquerade.all = true;
    dp.apply(&st).expect("apply masquerade.all");
    let out = run_ok(
        &mut dp,
        Hook::ToUplink,
        &to("10.244.1.21"),
        "masquerade.all",
    );
    assert_eq!(
        src_of(&out).0,
        node,
        "masquerade.all: another node's pod is masqueraded"
    );
    let out = run_ok(&mut dp, Hook::ToUplink, &to("10.244.0.6"), "own pod");
    assert_eq!(
        src_of(&out).0,
        "10.244.0.5".parse::<IpAddr>().unwrap(),
        "this node's pods are not"
    );
    // Five as before this test grew its IPv6 ping, and that ping.
    assert_eq!(dp.stats().expect("stats").other["masqueraded"], 6);
}

#[test]
fn health_checks_and_incremental_changes() {
    if !require_root("health_checks_and_incremental_changes") {
        return;
    }
    let n = TestNode::new("hc");
    let mut dp = n.dataplane();
    let mut local = service(
        "local",
        "10.96.0.40",
        vec![
            backend("10.244.0.10", "node-a"),
            backend("10.244.1.20", "node-b"),
        ],
    );
    local.ports = vec![port(Protocol::Tcp, 80, 8080, Some(30100))];
    local.external_traffic_policy = TrafficPolicy::Local;
    local.health_check_node_port = Some(32100);
    let before = state(vec![local.clone(), service("other", "10.96.0.41", vec![])]);
    dp.apply(&before).expect("apply");
    let hc = dp.health_checks();
    assert_eq!(hc.len(), 1, "{hc:?}");
    assert_eq!((hc[0].node_port, hc[0].local_endpoints), (32100, 1));

    // The local endpoint goes: an incremental change, and the health check says 503.
    let mut after = before.clone();
    after.services[0].backends.remove(0);
    let report = dp
        .apply_changes(&dataplane_core::diff(&before, &after))
        .expect("apply_changes");
    assert!(!report.full_sync);
    assert_eq!(report.services_changed, 1);
    assert_eq!(dp.health_checks()[0].http_status(), 503);
    let no_local = syn_to("192.0.2.7", "172.18.0.2", 30100);
    let run = dp.run_packet(Hook::FromUplink, &no_local, 1).expect("run");
    assert_eq!(
        run.verdict, SHOT,
        "ETP Local without a local endpoint drops"
    );

    // A change that clashes with a service that stays is refused, and nothing changes.
    let mut clash = after.clone();
    clash.services[1].cluster_ips = vec!["10.96.0.40".parse().unwrap()];
    let err = dp
        .apply_changes(&dataplane_core::diff(&after, &clash))
        .expect_err("a duplicate frontend is refused");
    assert!(err.to_string().contains("service default/other"), "{err}");
    let report = dp
        .apply_changes(&dataplane_core::diff(&after, &before))
        .expect("still incremental after a refused change");
    assert!(!report.full_sync);
    assert_eq!(dp.health_checks()[0].local_endpoints, 1);

    // A change of the node needs every service, of which the backend keeps no copy: it asks
    // for a full sync and changes nothing.
    let mut moved = before.clone();
    moved.node.name = "node-b".to_owned();
    let observed = dp.observe().expect("observe");
    assert!(matches!(
        dp.apply_changes(&dataplane_core::diff(&before, &moved)),
        Err(dataplane_core::Error::FullSyncRequired)
    ));
    assert_eq!(dp.observe().expect("observe"), observed, "nothing written");
    // The applied state is intact: incremental changes still work.
    let report = dp
        .apply_changes(&dataplane_core::diff(&before, &after))
        .expect("incremental after the refused node change");
    assert!(!report.full_sync);
    assert_eq!(dp.health_checks()[0].local_endpoints, 0);
    // The full sync the refusal asks for: 10.244.1.20 is local on node-b, and the full sync
    // counts the services that differ from the applied ones.
    let mut moved = after.clone();
    moved.node.name = "node-b".to_owned();
    moved.services.push(service("third", "10.96.0.42", vec![]));
    let report = dp.apply(&moved).expect("full sync with the new node");
    assert!(report.full_sync);
    assert_eq!(
        (report.services_changed, report.services_removed),
        (1, 0),
        "only the added service differs: {report:?}"
    );
    assert_eq!(dp.health_checks()[0].local_endpoints, 1);
    let mut fewer = moved.clone();
    fewer.services.retain(|s| s.name.name != "other");
    fewer.services[0]
        .backends
        .push(backend("10.244.1.21", "node-b"));
    let report = dp.apply(&fewer).expect("full sync");
    assert_eq!((report.services_changed, report.services_removed), (1, 1));
    assert_eq!(dp.health_checks()[0].local_endpoints, 2);
}

fn syn_to(src: &str, dst: &str, dport: u16) -> Vec<u8> {
    eth().ip(src, dst).tcp(45100, dport, TCP_SYN).build()
}

/// The per-packet bench's floor fixture (`bpf/test/floor.c`) stops where it says it does,
/// on the dataplane's own maps: `floor_ct` finds an established flow and not an unknown one,
/// `floor_ct_nat` rewrites the destination as `dp_from_pod` does, `floor_svc` finds a
/// ClusterIP's backend and not a port the service lacks.
#[test]
fn floor_fixture_runs_on_the_dataplanes_maps() {
    use aya::programs::{SchedClassifier, TestRun, TestRunOptions};

    if !require_root("floor_fixture_runs_on_the_dataplanes_maps") {
        return;
    }
    let n = TestNode::new("floor");
    let mut dp = n.dataplane();
    dp.apply(&scene()).expect("apply");
    let syn = eth()
        .ip("10.244.0.5", "10.96.0.10")
        .tcp(40000, 80, TCP_SYN)
        .build();
    let translated = dp.run_packet(Hook::FromPod, &syn, 1).expect("SYN");
    let ack = eth()
        .ip("10.244.0.5", "10.96.0.10")
        .tcp(40000, 80, TCP_ACK)
        .build();
    let unknown = eth()
        .ip("10.244.0.5", "10.96.0.10")
        .tcp(40001, 80, TCP_ACK)
        .build();
    let other_port = eth()
        .ip("10.244.0.5", "10.96.0.10")
        .tcp(40000, 81, TCP_SYN)
        .build();

    let mut floor = aya::EbpfLoader::new()
        .default_map_pin_directory(&n.pin_dir)
        .load(dataplane_ebpf::floor_object())
        .expect("the floor fixture loads on the pinned maps");
    let mut run = |name: &str, packet: &[u8]| -> (u32, Vec<u8>) {
        let prog: &mut SchedClassifier = floor
            .program_mut(name)
            .unwrap_or_else(|| panic!("{name} in the fixture"))
            .try_into()
            .expect("a TC program");
        if prog.fd().is_err() {
            prog.load()
                .unwrap_or_else(|e| panic!("{name} verifies: {e}"));
        }
        let mut out = vec![0u8; packet.len() + 64];
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(packet),
                data_out: Some(&mut out),
                repeat: 1,
                ..TestRunOptions::default()
            })
            .unwrap_or_else(|e| panic!("test run of {name}: {e}"));
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    };
    assert_eq!(run("floor_entry", &ack).0, OK);
    assert_eq!(run("floor_ct", &ack).0, OK, "the SYN's conntrack entry");
    assert_eq!(run("floor_ct", &unknown).0, SHOT, "a flow never seen");
    let (verdict, out) = run("floor_ct_nat", &ack);
    assert_eq!(verdict, OK);
    // The same rewrite as dp_from_pod's on the SYN: destination and checksums; only the
    // TCP flags (and so the TCP checksum) differ between SYN and ACK.
    let expect = eth()
        .ip("10.244.0.5", "10.244.1.20")
        .tcp(40000, 8080, TCP_ACK)
        .build();
    assert_eq!(hex(&out), hex(&expect), "floor_ct_nat output");
    assert_eq!(
        translated.output.get(..34),
        expect.get(..34),
        "the IPv4 header dp_from_pod wrote"
    );
    assert_eq!(run("floor_svc", &ack).0, OK, "a ClusterIP with a backend");
    assert_eq!(
        run("floor_svc", &other_port).0,
        SHOT,
        "a port the service lacks"
    );
}

/// A full sync big enough that the writer unmaps the chunks of the array mappings it has
/// written (20k backends over two chunks of `dp_backends`, 20k slots) leaves every service
/// translated to its own backends, and a later change writes through a chunk mapped again.
#[test]
fn bulk_array_writes_unmap_and_stay_right() {
    if !require_root("bulk_array_writes_unmap_and_stay_right") {
        return;
    }
    let n = TestNode::new("bulk");
    let mut dp = n.dataplane();
    let mut st = state(dataplane_core::synthetic::state(2_000, 10).services);
    dp.apply(&st).expect("apply 2000 x 10");
    let syn_to = |svc: &Service, sport: u16| {
        let IpAddr::V4(vip) = svc.cluster_ips[0] else {
            panic!("synthetic ClusterIPs are IPv4")
        };
        eth()
            .ip("10.244.0.5", &vip.to_string())
            .tcp(sport, svc.ports[0].port, TCP_SYN)
            .build()
    };
    // Services spread over the whole id range: the first, some in between, the last.
    for i in [0, 1, 700, 819, 820, 1_300, 1_638, 1_639, 1_999] {
        let svc = &st.services[i];
        let got = backend_of(&mut dp, &syn_to(svc, 1000 + i as u16));
        assert!(
            svc.backends.iter().any(|b| b.ip == got),
            "service {i} went to {got}, not one of its backends"
        );
    }
    // One endpoint of the last service replaced: a new backend id, written on its own.
    let before = st.clone();
    let last = st.services.len() - 1;
    st.services[last].backends = vec![backend("10.244.250.250", "node-b")];
    dp.apply_changes(&dataplane_core::diff(&before, &st))
        .expect("apply_changes");
    let got = backend_of(&mut dp, &syn_to(&st.services[last], 3000));
    assert_eq!(got.to_string(), "10.244.250.250");
    let got = backend_of(&mut dp, &syn_to(&st.services[0], 3001));
    assert!(st.services[0].backends.iter().any(|b| b.ip == got));
}

/// The services of the kube-proxy parity fixtures (issue 15): source ranges for every client,
/// per family, allowFromNode; pods reaching `externalTrafficPolicy: Local` frontends;
/// `internalTrafficPolicy: Local` from outside; unallocated service-CIDR addresses; the node
/// reaching a ClusterIP; a ClusterIP outside the service CIDRs.
fn parity_scene() -> DesiredState {
    let remote = || backend("10.244.1.20", "node-b");
    let mut lb = service("lb", "10.96.0.12", vec![remote()]);
    lb.load_balancer_ips = vec!["198.51.100.1".parse().unwrap()];
    lb.load_balancer_source_ranges = vec!["192.0.2.0/24".parse().unwrap()];
    // A range holding the node's address: the LB IP is an allowed source too (allowFromNode).
    let mut lb_node = service("lb-node", "10.96.0.30", vec![remote()]);
    lb_node.load_balancer_ips = vec!["198.51.100.5".parse().unwrap()];
    lb_node.load_balancer_source_ranges = vec!["172.18.0.0/24".parse().unwrap()];
    // Dual stack with an IPv4 range only: IPv6 clients are unrestricted.
    let mut lb6 = service("lb6", "10.96.0.31", vec![remote()]);
    lb6.cluster_ips.push("fd00:96::31".parse().unwrap());
    lb6.backends.push(backend("fd00:244::10", "node-a"));
    lb6.load_balancer_ips = vec![
        "198.51.100.6".parse().unwrap(),
        "2001:db8::6".parse().unwrap(),
    ];
    lb6.load_balancer_source_ranges = vec!["192.0.2.0/24".parse().unwrap()];
    let mut ext_local = service("ext-local", "10.96.0.13", vec![remote()]);
    ext_local.external_ips = vec!["198.51.100.2".parse().unwrap()];
    ext_local.external_traffic_policy = TrafficPolicy::Local;
    let mut hairpin_local = service(
        "hairpin-local",
        "10.96.0.32",
        vec![backend("10.244.0.5", "node-a")],
    );
    hairpin_local.external_ips = vec!["198.51.100.4".parse().unwrap()];
    hairpin_local.external_traffic_policy = TrafficPolicy::Local;
    let mut itp_local = service(
        "itp-local-ok",
        "10.96.0.33",
        vec![remote(), backend("10.244.0.10", "node-a")],
    );
    itp_local.internal_traffic_policy = TrafficPolicy::Local;
    let web = service("web", "10.96.0.10", vec![remote()]);
    // Outside node.serviceCIDRs: accepted with a warning, served normally.
    let outside = service("outside-cidr", "10.200.0.10", vec![remote()]);
    state(vec![
        lb,
        lb_node,
        lb6,
        ext_local,
        hairpin_local,
        itp_local,
        web,
        outside,
    ])
}

/// ```text
///   pod 10.244.0.5 --veth--> [dp_from_pod]
///   host (172.18.0.2, or another source) --> [dp_to_uplink] (eth0 egress)
///   outside 192.0.2.x / 203.0.113.x / 2001:db8:9::7 --eth0--> [dp_from_uplink]
/// ```
#[test]
#[allow(clippy::too_many_lines)] // a fixture table reads best in one piece
fn kube_proxy_parity_fixtures() {
    if !require_root("kube_proxy_parity_fixtures") {
        return;
    }
    let n = TestNode::new("parity");
    let mut dp = n.dataplane();
    let report = dp.apply(&parity_scene()).expect("apply");
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.object == "service default/outside-cidr" && w.field == "clusterIPs[0]"),
        "{report:?}"
    );
    assert!(report.skipped.is_empty(), "{report:?}");

    let syn = |src: &str, dst: &str, sport, dport| eth().ip(src, dst).tcp(sport, dport, TCP_SYN);
    // A TCP SYN (seq 1000) from `dport` is refused with RST|ACK acknowledging it.
    let rst_of = |src: &str, dst: &str, sport: u16, dport: u16| {
        swap_macs(eth().ip(src, dst).tcp_rst(sport, dport, 0, Some(1001))).build()
    };
    let dropped = |description, hook, input: Vec<u8>| Fixture {
        description,
        hook,
        output: input.clone(),
        input,
        verdict: SHOT,
    };
    let wrong_port_in = syn("10.244.0.5", "10.96.0.10", 60010, 81).build();
    let fixtures = vec![
        // 1/2/12: loadBalancerSourceRanges bind every client of the LB IP.
        dropped(
            "LB IP from a pod outside the source ranges: drop",
            Hook::FromPod,
            syn("10.244.0.5", "198.51.100.1", 60000, 80).build(),
        ),
        dropped(
            "LB IP from the node outside the source ranges: drop",
            Hook::ToUplink,
            syn("172.18.0.2", "198.51.100.1", 60001, 80).build(),
        ),
        Fixture {
            description: "LB IP from the uplink inside the ranges: SNAT (ETP Cluster)",
            hook: Hook::FromUplink,
            input: syn("192.0.2.7", "198.51.100.1", 60002, 80).build(),
            verdict: OK,
            output: syn("172.18.0.2", "10.244.1.20", 60002, 8080).build(),
        },
        Fixture {
            description: "allowFromNode: the node inside its range reaches the LB IP",
            hook: Hook::ToUplink,
            input: syn("172.18.0.2", "198.51.100.5", 60003, 80).build(),
            verdict: OK,
            output: syn("172.18.0.2", "10.244.1.20", 60003, 8080).build(),
        },
        Fixture {
            description: "allowFromNode: the LB IP itself as the source is allowed",
            hook: Hook::ToUplink,
            input: syn("198.51.100.5", "198.51.100.5", 60004, 80).build(),
            verdict: OK,
            output: syn("172.18.0.2", "10.244.1.20", 60004, 8080).build(),
        },
        dropped(
            "allowFromNode: a pod outside the range is still dropped",
            Hook::FromPod,
            syn("10.244.0.5", "198.51.100.5", 60005, 80).build(),
        ),
        dropped(
            "Dual-stack LB, IPv4 range: an IPv4 client outside it is dropped",
            Hook::FromUplink,
            syn("203.0.113.9", "198.51.100.6", 60006, 80).build(),
        ),
        Fixture {
            description: "Dual-stack LB, IPv4 range only: an IPv6 client is unrestricted",
            hook: Hook::FromUplink,
            input: syn("2001:db8:9::7", "2001:db8::6", 60007, 80).build(),
            verdict: OK,
            output: syn("fd00:18::2", "fd00:244::10", 60007, 8080).build(),
        },
        // 3: pods reaching an externalTrafficPolicy Local frontend.
        Fixture {
            description: "ETP Local ExternalIP from a pod: cluster-wide, client kept",
            hook: Hook::FromPod,
            input: syn("10.244.0.5", "198.51.100.2", 60008, 80).build(),
            verdict: OK,
            output: syn("10.244.0.5", "10.244.1.20", 60008, 8080).build(),
        },
        Fixture {
            description: "ETP Local ExternalIP from the node: cluster-wide, masqueraded",
            hook: Hook::ToUplink,
            input: syn("192.168.77.1", "198.51.100.2", 60009, 80).build(),
            verdict: OK,
            output: syn("172.18.0.2", "10.244.1.20", 60009, 8080).build(),
        },
        Fixture {
            description: "ETP Local ExternalIP from a pod given itself: hairpin, masqueraded",
            hook: Hook::FromPod,
            input: syn("10.244.0.5", "198.51.100.4", 60011, 80).build(),
            verdict: OK,
            output: syn("172.18.0.2", "10.244.0.5", 60011, 8080).build(),
        },
        // 4: internalTrafficPolicy Local for outside clients too.
        Fixture {
            description: "ITP Local ClusterIP from outside: the local backend only, masqueraded",
            hook: Hook::FromUplink,
            input: syn("192.0.2.9", "10.96.0.33", 60012, 80).build(),
            verdict: OK,
            output: syn("172.18.0.2", "10.244.0.10", 60012, 8080).build(),
        },
        // 5: unallocated service-CIDR addresses are dropped, allocated ones rejected.
        dropped(
            "Unallocated service-CIDR address from a pod: drop",
            Hook::FromPod,
            syn("10.244.0.5", "10.96.5.5", 60013, 80).build(),
        ),
        dropped(
            "Unallocated service-CIDR address from outside: drop",
            Hook::FromUplink,
            syn("192.0.2.7", "10.96.5.5", 60014, 80).build(),
        ),
        dropped(
            "Unallocated service-CIDR address from the node: drop",
            Hook::ToUplink,
            eth()
                .ip("172.18.0.2", "10.96.5.5")
                .udp(60015, 53)
                .payload(b"q")
                .build(),
        ),
        dropped(
            "Unallocated IPv6 service-CIDR address from a pod: drop",
            Hook::FromPod,
            syn("fd00:244::5", "fd00:96::99", 60016, 80).build(),
        ),
        Fixture {
            description: "Allocated ClusterIP on a port it does not serve: reject",
            hook: Hook::FromPod,
            output: rst_of("10.96.0.10", "10.244.0.5", 81, 60010),
            input: wrong_port_in,
            verdict: REDIRECT,
        },
        Fixture {
            description: "ClusterIP outside the service CIDRs: served",
            hook: Hook::FromPod,
            input: syn("10.244.0.5", "10.200.0.10", 60017, 80).build(),
            verdict: OK,
            output: syn("10.244.0.5", "10.244.1.20", 60017, 8080).build(),
        },
        Fixture {
            description: "Outside the service CIDRs and no service: untouched",
            hook: Hook::FromPod,
            input: syn("10.244.0.5", "10.200.0.11", 60018, 80).build(),
            verdict: OK,
            output: syn("10.244.0.5", "10.200.0.11", 60018, 80).build(),
        },
        // 7: the node reaching a ClusterIP is masqueraded, a pod-CIDR source is not.
        Fixture {
            description: "ClusterIP from the node (source outside the cluster CIDRs): SNAT",
            hook: Hook::ToUplink,
            input: syn("192.168.77.1", "10.96.0.10", 60019, 80).build(),
            verdict: OK,
            output: syn("172.18.0.2", "10.244.1.20", 60019, 8080).build(),
        },
        Fixture {
            description: "ClusterIP from the node's pod-CIDR address: source kept",
            hook: Hook::ToUplink,
            input: syn("10.244.0.1", "10.96.0.10", 60020, 80).build(),
            verdict: OK,
            output: syn("10.244.0.1", "10.244.1.20", 60020, 8080).build(),
        },
    ];
    let dropped_before = stat(&dp, "dropped");
    for f in &fixtures {
        check(&mut dp, f);
    }
    assert_eq!(
        stat(&dp, "unallocated_dropped"),
        4,
        "the four unallocated drops"
    );
    assert_eq!(stat(&dp, "dropped"), dropped_before + 8);
}

/// `masquerade.allServices` (kube-proxy's --masquerade-all): every service connection is
/// masqueraded but those of outside clients of `externalTrafficPolicy: Local` services.
#[test]
fn masquerade_all_services_fixtures() {
    if !require_root("masquerade_all_services_fixtures") {
        return;
    }
    let n = TestNode::new("allsvc");
    let mut dp = n.dataplane();
    let mut st = parity_scene();
    let mut local_ok = service(
        "ext-local-ok",
        "10.96.0.14",
        vec![backend("10.244.0.10", "node-a")],
    );
    local_ok.external_ips = vec!["198.51.100.3".parse().unwrap()];
    local_ok.external_traffic_policy = TrafficPolicy::Local;
    st.services.push(local_ok);
    st.node.masquerade.all_services = true;
    dp.apply(&st).expect("apply");
    let syn = |src: &str, dst: &str, sport| eth().ip(src, dst).tcp(sport, 80, TCP_SYN).build();
    let to = |src: &str, dst: &str, sport| eth().ip(src, dst).tcp(sport, 8080, TCP_SYN).build();
    for f in [
        Fixture {
            description: "allServices: ClusterIP from a pod is masqueraded",
            hook: Hook::FromPod,
            input: syn("10.244.0.5", "10.96.0.10", 61000),
            verdict: OK,
            output: to("172.18.0.2", "10.244.1.20", 61000),
        },
        Fixture {
            description: "allServices: ETP Local ExternalIP from a pod is masqueraded",
            hook: Hook::FromPod,
            input: syn("10.244.0.5", "198.51.100.2", 61001),
            verdict: OK,
            output: to("172.18.0.2", "10.244.1.20", 61001),
        },
        Fixture {
            description: "allServices: ETP Local ExternalIP from outside keeps the client",
            hook: Hook::FromUplink,
            input: syn("192.0.2.7", "198.51.100.3", 61002),
            verdict: OK,
            output: to("192.0.2.7", "10.244.0.10", 61002),
        },
        Fixture {
            description: "allServices: ClusterIP from the node's pod-CIDR address is masqueraded",
            hook: Hook::ToUplink,
            input: syn("10.244.0.1", "10.96.0.10", 61003),
            verdict: OK,
            output: to("172.18.0.2", "10.244.1.20", 61003),
        },
    ] {
        check(&mut dp, &f);
    }
}

/// An SCTP port is programmed like the others, by a full apply and by `apply_changes`, and
/// nothing is reported as left out (tests/sctp.rs has SCTP's own fixtures). Network policy is
/// applied with the services unchanged.
#[test]
#[allow(clippy::too_many_lines)]
fn sctp_ports_are_programmed_beside_tcp() {
    if !require_root("sctp_ports_are_programmed_beside_tcp") {
        return;
    }
    let n = TestNode::new("skip");
    let mut dp = n.dataplane();
    let mut signalling = service(
        "signalling",
        "10.96.0.50",
        vec![backend("10.244.1.20", "node-b")],
    );
    signalling.ports = vec![
        port(Protocol::Tcp, 80, 8080, None),
        port(Protocol::Sctp, 3868, 3868, None),
    ];
    let web = service("web", "10.96.0.10", vec![backend("10.244.1.20", "node-b")]);
    let st = state(vec![signalling, web]);
    let report = dp.apply(&st).expect("apply");
    assert!(report.skipped.is_empty(), "{report:?}");
    for (dst, sport) in [("10.96.0.10", 62000), ("10.96.0.50", 62001)] {
        check(
            &mut dp,
            &Fixture {
                description: "TCP next to an SCTP port: served",
                hook: Hook::FromPod,
                input: eth().ip("10.244.0.5", dst).tcp(sport, 80, TCP_SYN).build(),
                verdict: OK,
                output: eth()
                    .ip("10.244.0.5", "10.244.1.20")
                    .tcp(sport, 8080, TCP_SYN)
                    .build(),
            },
        );
    }
    let sctp_frontends = |dp: &EbpfDataplane| -> Vec<String> {
        dp.observe()
            .expect("observe")
            .frontends
            .iter()
            .filter(|f| f.protocol == Protocol::Sctp)
            .map(|f| f.address.to_string())
            .collect()
    };
    assert_eq!(sctp_frontends(&dp), vec!["10.96.0.50:3868"]);

    // Incremental: the changed service's SCTP port is programmed with the rest.
    let mut next = st.clone();
    next.services[1]
        .ports
        .push(port(Protocol::Sctp, 9, 9, None));
    next.services[1]
        .backends
        .push(backend("10.244.1.21", "node-b"));
    let report = dp
        .apply_changes(&dataplane_core::diff(&st, &next))
        .expect("apply_changes");
    assert!(!report.full_sync);
    assert!(report.skipped.is_empty(), "{report:?}");
    let mut got = sctp_frontends(&dp);
    got.sort();
    assert_eq!(got, vec!["10.96.0.10:9", "10.96.0.50:3868"]);
    let frontends = dp.observe().expect("observe").frontends;
    let web80 = frontends
        .iter()
        .find(|f| f.address.to_string() == "10.96.0.10:80")
        .expect("web's TCP port");
    assert_eq!(web80.backends.len(), 2, "the new backend is programmed");

    // Network policy is enforced (tests/policy_datapath.rs): a state with one is applied,
    // its services as before.
    let before = dp.observe().expect("observe");
    let mut with_policy = next.clone();
    with_policy.policies.push(dataplane_core::Policy {
        name: ObjectName::new("default", "deny-all"),
        pod_selector: dataplane_core::LabelSelector::default(),
        policy_types: vec![dataplane_core::PolicyType::Ingress],
        ingress: Vec::new(),
        egress: Vec::new(),
    });
    assert!(dp.capabilities().network_policy);
    dp.apply(&with_policy).expect("policy applied");
    assert_eq!(dp.observe().expect("observe"), before, "services unchanged");
}
