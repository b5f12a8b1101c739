//! The lab with no dataplane: plain routing between pods, nodes and external clients.
//!
//! ```text
//!   external-0 ──┐                 underlay bridge
//!                ├── node-0 (172.18.0.10) ── pod-0-0 10.244.0.10, pod-0-1 10.244.0.11
//!                └── node-1 (172.18.0.11) ── pod-1-0 10.244.1.10, pod-1-1 10.244.1.11
//! ```

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use dataplane_core::Protocol;
use dataplane_testkit::{
    probe, require_root, serve, BatchOutcome, Family, Lab, LabError, LabSpec, NetNs, NetNsError,
    ProbeOutcome, TcpSession, SERVER_PORT,
};

const TIMEOUT: Duration = Duration::from_secs(3);

fn spec(ipv6: bool) -> LabSpec {
    LabSpec {
        nodes: 2,
        pods_per_node: 2,
        external_clients: 1,
        ipv6,
    }
}

/// Probes `dst_pod`'s server from `netns` (client address `client_ip`) over both protocols
/// and checks the answer names the pod and shows the client's own address (no NAT).
fn expect_direct(lab: &Lab, netns: &NetNs, client_ip: IpAddr, dst_pod: usize, family: Family) {
    let pod = lab.pod(dst_pod);
    let dst = SocketAddr::new(pod.address(family).unwrap(), SERVER_PORT);
    for protocol in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
        let outcome = probe(netns, dst, protocol, TIMEOUT).unwrap();
        match outcome {
            ProbeOutcome::Answered {
                backend,
                seen_source,
                local,
                ..
            } => {
                assert_eq!(backend, pod.name, "{protocol} to {dst}");
                assert_eq!(seen_source.ip(), client_ip, "{protocol} to {dst}");
                assert_eq!(seen_source, local, "{protocol} to {dst}: port changed");
            }
            other => panic!("{protocol} {client_ip} -> {dst}: {other:?}"),
        }
    }
}

fn pods_talk(ipv6: bool) {
    let lab = Lab::new(spec(ipv6)).unwrap();
    let families: &[Family] = if ipv6 {
        &[Family::V4, Family::V6]
    } else {
        &[Family::V4]
    };
    for &family in families {
        let from = lab.pod(0);
        let ip = from.address(family).unwrap();
        // Same node, other node, and the pod itself.
        for dst in [1, 2, 3, 0] {
            expect_direct(&lab, &from.netns, ip, dst, family);
        }
        // A node reaches its own pod and a remote pod with its underlay address.
        let node = lab.node(1);
        let node_ip = node.address(family).unwrap();
        expect_direct(&lab, &node.netns, node_ip, 2, family);
        expect_direct(&lab, &node.netns, node_ip, 0, family);
        // The external client knows only the underlay until it is given a route.
        let ext = lab.external(0);
        let ext_ip = ext.address(family).unwrap();
        let dst = SocketAddr::new(lab.pod(3).address(family).unwrap(), SERVER_PORT);
        let outcome = probe(&ext.netns, dst, Protocol::Udp, TIMEOUT).unwrap();
        assert_eq!(outcome, ProbeOutcome::Unreachable, "{dst} before routing");
        lab.route_via_node(0, lab.node(1).pod_cidrs[families_index(family)], 1)
            .unwrap();
        expect_direct(&lab, &ext.netns, ext_ip, 3, family);
        expect_direct(&lab, &ext.netns, ext_ip, 2, family);
    }
}

fn families_index(family: Family) -> usize {
    match family {
        Family::V4 => 0,
        Family::V6 => 1,
    }
}

#[test]
fn tcp_and_udp_between_pods_nodes_and_external_v4() {
    if !require_root("tcp_and_udp_between_pods_nodes_and_external_v4") {
        return;
    }
    pods_talk(false);
}

#[test]
fn tcp_and_udp_between_pods_nodes_and_external_dual_stack() {
    if !require_root("tcp_and_udp_between_pods_nodes_and_external_dual_stack") {
        return;
    }
    pods_talk(true);
}

#[test]
fn tcp_session_keeps_its_connection() {
    if !require_root("tcp_session_keeps_its_connection") {
        return;
    }
    let lab = Lab::new(spec(false)).unwrap();
    let dst = SocketAddr::new(lab.pod(2).addresses[0], SERVER_PORT);
    let mut session = TcpSession::open(&lab.pod(0).netns, dst).unwrap();
    for _ in 0..3 {
        let (backend, seen) = session.request().unwrap();
        assert_eq!(backend, "pod-1-0");
        assert_eq!(
            seen,
            session.local_addr(),
            "one connection, one source port"
        );
    }
    // A port nobody listens on: the pod's kernel answers with RST.
    let closed = SocketAddr::new(lab.pod(2).addresses[0], 9);
    let err = TcpSession::open(&lab.pod(0).netns, closed).unwrap_err();
    assert!(
        matches!(
            &err,
            dataplane_testkit::TrafficError::NotConnected { outcome, .. }
                if **outcome == ProbeOutcome::Refused
        ),
        "{err}"
    );
    for protocol in [Protocol::Tcp, Protocol::Udp] {
        let outcome = probe(&lab.pod(0).netns, closed, protocol, TIMEOUT).unwrap();
        assert_eq!(
            outcome,
            ProbeOutcome::Refused,
            "{protocol} to a closed port"
        );
    }
}

#[test]
fn the_model_matches_the_namespaces() {
    if !require_root("the_model_matches_the_namespaces") {
        return;
    }
    let lab = Lab::new(spec(true)).unwrap();
    for i in 0..2 {
        let state = lab.desired_state(i);
        dataplane_core::validate(&state).unwrap();
        assert_eq!(state.node.name, format!("node-{i}"));
        assert_eq!(state.node.interfaces.uplink, "eth0");
        assert_eq!(state.endpoints.len(), 2);
        for (addr, cidr) in state.node.addresses.iter().zip(&state.node.pod_cidrs) {
            assert!(
                state
                    .node
                    .cluster_cidrs
                    .iter()
                    .any(|c| c.contains(cidr.ip())),
                "{cidr} outside the cluster CIDRs"
            );
            let out = lab
                .node(i)
                .netns
                .exec("ip", &["-o", "addr", "show", "dev", "eth0"]);
            let out = String::from_utf8(out.unwrap().stdout).unwrap();
            assert!(
                out.contains(&format!("{addr}/")),
                "{addr} not on eth0: {out}"
            );
        }
        for ep in &state.endpoints {
            let pod = lab.pod_by_name(&ep.name.name).unwrap();
            assert_eq!(pod.node, i);
            for ip in &ep.ips {
                assert!(state.node.pod_cidrs.iter().any(|c| c.contains(*ip)));
                // The node routes the pod address to the endpoint's interface.
                let out = lab
                    .node(i)
                    .netns
                    .exec("ip", &["route", "get", &ip.to_string()])
                    .unwrap();
                let out = String::from_utf8(out.stdout).unwrap();
                assert!(
                    out.contains(&format!("dev {} ", ep.interface)),
                    "{ip} not routed to {}: {out}",
                    ep.interface
                );
            }
        }
    }
}

fn assert_send_sync<T: Send + Sync>() {}

#[test]
fn bad_requests_are_typed_errors() {
    if !require_root("bad_requests_are_typed_errors") {
        return;
    }
    assert_send_sync::<Lab>();
    let lab = Lab::new(spec(false)).unwrap();
    let v6: ipnetwork::IpNetwork = "fd00:244:0:1::/64".parse().unwrap();
    let err = lab.route_via_node(0, v6, 1).unwrap_err();
    assert!(matches!(err, LabError::NoIpv6 { .. }), "{err}");
    let v4: ipnetwork::IpNetwork = "10.244.1.0/24".parse().unwrap();
    let err = lab.route_via_node(5, v4, 1).unwrap_err();
    assert!(
        matches!(
            err,
            LabError::NoSuch {
                what: "external client",
                index: 5,
                count: 1
            }
        ),
        "{err}"
    );
    let err = lab.route_via_node(0, v4, 2).unwrap_err();
    assert!(
        matches!(err, LabError::NoSuch { what: "node", .. }),
        "{err}"
    );
    // Removing a route that is not there names the command that failed.
    let err = lab.unroute(0, v4).unwrap_err();
    assert!(
        matches!(&err, LabError::Netns(NetNsError::Command { command, .. }) if command.contains("route del")),
        "{err}"
    );
    assert!(lab.try_pod(4).is_err());
    assert!(lab.pod_by_name("pod-9-9").is_none());
    // A server on a port that is taken fails to start, with the port in the message.
    let err = serve(&lab.pod(0).netns, "again", SERVER_PORT).unwrap_err();
    assert!(err.to_string().contains("8080"), "{err}");
}

#[test]
fn serve_runs_anywhere_and_stops_on_drop() {
    if !require_root("serve_runs_anywhere_and_stops_on_drop") {
        return;
    }
    let lab = Lab::new(spec(false)).unwrap();
    let node = lab.node(0);
    let server = serve(&node.netns, "node-0-host", 9000).unwrap();
    let dst = SocketAddr::new(node.addresses[0], 9000);
    for protocol in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
        let outcome = probe(&lab.pod(2).netns, dst, protocol, TIMEOUT).unwrap();
        assert_eq!(outcome.backend(), Some("node-0-host"), "{outcome:?}");
    }
    drop(server);
    // SCTP: the node has no SCTP then (no raw socket takes the INIT), and answers with ICMP
    // protocol unreachable.
    for protocol in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
        let outcome = probe(&lab.pod(2).netns, dst, protocol, TIMEOUT).unwrap();
        assert_eq!(
            outcome,
            ProbeOutcome::Refused,
            "{protocol} after the server stopped"
        );
    }
}

#[test]
fn udp_answers_come_from_the_address_asked() {
    if !require_root("udp_answers_come_from_the_address_asked") {
        return;
    }
    let lab = Lab::new(spec(false)).unwrap();
    // A second address on node 0 (like a VIP on a DSR backend): the answer must come from it,
    // not from the address routing would pick (172.18.0.10), or the client's connected UDP
    // socket discards it.
    let node = lab.node(0);
    node.netns
        .ip_batch(&["addr add 172.18.100.1/32 dev lo".to_owned()])
        .unwrap();
    lab.route_via_node(0, "172.18.100.1/32".parse().unwrap(), 0)
        .unwrap();
    let _server = serve(&node.netns, "vip", 9001).unwrap();
    let dst: SocketAddr = "172.18.100.1:9001".parse().unwrap();
    for protocol in [Protocol::Udp, Protocol::Tcp, Protocol::Sctp] {
        let outcome = probe(&lab.external(0).netns, dst, protocol, TIMEOUT).unwrap();
        assert_eq!(outcome.backend(), Some("vip"), "{protocol}: {outcome:?}");
    }
}

#[test]
fn measure_counts_answers_and_failures() {
    if !require_root("measure_counts_answers_and_failures") {
        return;
    }
    let lab = Lab::new(spec(false)).unwrap();
    let dst = SocketAddr::new(lab.pod(3).addresses[0], SERVER_PORT);
    for protocol in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
        let m = dataplane_testkit::measure(&lab.pod(0).netns, dst, protocol, 50, TIMEOUT).unwrap();
        assert_eq!(m.latencies.len(), 50, "{protocol}: {m:?}");
        assert_eq!(m.backends.get("pod-1-1"), Some(&50));
        assert!(m.failures.is_empty());
        assert!(m.percentile(50.0).unwrap() <= m.percentile(99.0).unwrap());
        assert!(m.per_second() > 0.0);
    }
    let closed = SocketAddr::new(lab.pod(3).addresses[0], 9);
    let m =
        dataplane_testkit::measure(&lab.pod(0).netns, closed, Protocol::Tcp, 5, TIMEOUT).unwrap();
    assert!(m.latencies.is_empty());
    assert_eq!(m.failures.get("Refused"), Some(&5), "{m:?}");
}

/// A TCP load longer than the fresh-port range (10 000 ports) within a minute: every port
/// comes around again while a FIN-closed connection would still hold it in `TIME_WAIT`. The
/// load's connections end with RST, so every bind succeeds and every exchange is answered
/// (a CRR load in the agent's restart test failed with EADDRINUSE before).
#[test]
fn measure_outlasts_the_port_range() {
    if !require_root("measure_outlasts_the_port_range") {
        return;
    }
    let lab = Lab::new(spec(false)).unwrap();
    let dst = SocketAddr::new(lab.pod(3).addresses[0], SERVER_PORT);
    let m =
        dataplane_testkit::measure(&lab.pod(0).netns, dst, Protocol::Tcp, 12_000, TIMEOUT).unwrap();
    assert_eq!(m.latencies.len(), 12_000, "{:?}", m.failures);
    assert_eq!(m.backends.get("pod-1-1"), Some(&12_000));
}

/// `probe_refused_at_once` tells a refusal of the first SYN from one that came only after a
/// retransmission: the server's namespace drops every second SYN to a closed port, so the
/// first probe's refusal answers its second SYN.
#[test]
fn refusals_count_retransmitted_syns() {
    if !require_root("refusals_count_retransmitted_syns") {
        return;
    }
    let lab = Lab::new(spec(false)).unwrap();
    let dst = SocketAddr::new(lab.pod(3).addresses[0], 9);
    let (outcome, retransmits) =
        dataplane_testkit::probe_refused_at_once(&lab.pod(0).netns, None, dst, TIMEOUT).unwrap();
    assert_eq!((outcome, retransmits), (ProbeOutcome::Refused, 0));
    let server = &lab.pod(3).netns;
    let rules = "add table inet lossy\n\
                 add chain inet lossy input { type filter hook input priority 0; }\n\
                 add rule inet lossy input tcp dport 9 tcp flags syn numgen inc mod 2 == 0 drop\n";
    server
        .exec_checked("nft", &["-f", "-"], Some(rules))
        .unwrap();
    let (outcome, retransmits) =
        dataplane_testkit::probe_refused_at_once(&lab.pod(0).netns, None, dst, TIMEOUT).unwrap();
    assert_eq!(outcome, ProbeOutcome::Refused);
    assert!(retransmits >= 1, "the first SYN was dropped: {retransmits}");
}

/// Probes that name no source port never share one (until the range wraps), so a probe
/// cannot meet the NAT state of an earlier flow with the same 5-tuple; and the ports stay out
/// of the kernel's ephemeral range and the NodePort range.
#[test]
fn probes_get_fresh_source_ports() {
    if !require_root("probes_get_fresh_source_ports") {
        return;
    }
    let lab = Lab::new(spec(false)).unwrap();
    let dst = SocketAddr::new(lab.pod(1).address(Family::V4).unwrap(), SERVER_PORT);
    let mut ports = std::collections::BTreeSet::new();
    for i in 0..20 {
        for protocol in [Protocol::Tcp, Protocol::Udp] {
            match probe(&lab.pod(0).netns, dst, protocol, TIMEOUT).unwrap() {
                ProbeOutcome::Answered { local, .. } => {
                    assert!(
                        (20_000..30_000).contains(&local.port()),
                        "probe {i} {protocol}: source port {local}"
                    );
                    assert!(
                        ports.insert(local.port()),
                        "probe {i} {protocol}: {local} again"
                    );
                }
                other => panic!("probe {i} {protocol}: {other:?}"),
            }
        }
    }
}

/// A batch sends every probe at once and reports each one's outcome in order: answers (from
/// the fixed source port asked for, or a fresh one), refusals (no server), and drops (an nft
/// rule on the node drops one port), in TCP and UDP; and SCTP (the server's port is
/// answered; a port nobody serves in a namespace that serves SCTP is not, no refusal).
#[test]
fn probe_batch_reports_every_probe_in_order() {
    if !require_root("probe_batch_reports_every_probe_in_order") {
        return;
    }
    let lab = Lab::new(spec(false)).unwrap();
    // pod-0-0 -> pod-1-1 (across the underlay): port 7000 is dropped on node-1.
    let server = lab.pod(3).address(Family::V4).unwrap();
    lab.node(1)
        .netns
        .exec_checked(
            "nft",
            &["-f", "-"],
            Some(&format!(
                "table inet drops {{\n chain dropper {{\n type filter hook forward priority 0;\n \
                 ip daddr {server} meta l4proto {{ tcp, udp, sctp }} th dport 7000 drop\n }}\n}}\n"
            )),
        )
        .unwrap();
    let short = Duration::from_millis(300);
    let batch = |port: u16, protocol: Protocol, source_port: Option<u16>, timeout: Duration| {
        dataplane_testkit::BatchProbe {
            destination: SocketAddr::new(server, port),
            protocol,
            source_port,
            timeout,
        }
    };
    // A listener that never accepts nor answers: the kernel completes the handshake, the
    // request line stays unanswered.
    let mute = lab
        .pod(3)
        .netns
        .run(|| std::net::TcpListener::bind((std::net::Ipv4Addr::UNSPECIFIED, 7001)))
        .unwrap()
        .unwrap();
    let mut probes = Vec::new();
    for protocol in [Protocol::Tcp, Protocol::Udp] {
        probes.push(batch(SERVER_PORT, protocol, Some(21_234), TIMEOUT));
        probes.push(batch(SERVER_PORT, protocol, None, TIMEOUT));
        probes.push(batch(9, protocol, None, TIMEOUT));
        probes.push(batch(7000, protocol, None, short));
    }
    probes.push(batch(7001, Protocol::Tcp, None, short));
    let outcomes = dataplane_testkit::probe_batch(&lab.pod(0).netns, &probes).unwrap();
    drop(mute);
    assert_eq!(outcomes.len(), probes.len());
    assert_eq!(
        outcomes[8],
        BatchOutcome::Connected,
        "a handshake is not a drop"
    );
    for (i, protocol) in [Protocol::Tcp, Protocol::Udp].into_iter().enumerate() {
        let o = &outcomes[i * 4..i * 4 + 4];
        match &o[0] {
            BatchOutcome::Ended(ProbeOutcome::Answered {
                backend,
                seen_source,
                local,
                ..
            }) => {
                assert_eq!(backend, "pod-1-1", "{protocol}");
                assert_eq!(local.port(), 21_234, "{protocol}");
                assert_eq!(
                    *seen_source,
                    SocketAddr::new(lab.pod(0).addresses[0], 21_234)
                );
            }
            other => panic!("{protocol}: {other:?}"),
        }
        assert_eq!(o[1].backend(), Some("pod-1-1"), "{protocol}: {:?}", o[1]);
        assert_eq!(o[2], ProbeOutcome::Refused.into(), "{protocol}");
        assert_eq!(o[3], ProbeOutcome::Timeout.into(), "{protocol}");
    }
    let sctp = [
        batch(SERVER_PORT, Protocol::Sctp, Some(21_235), TIMEOUT),
        batch(SERVER_PORT, Protocol::Sctp, None, TIMEOUT),
        batch(9, Protocol::Sctp, None, short),
        batch(7000, Protocol::Sctp, None, short),
    ];
    let outcomes = dataplane_testkit::probe_batch(&lab.pod(0).netns, &sctp).unwrap();
    match &outcomes[0] {
        BatchOutcome::Ended(ProbeOutcome::Answered {
            backend,
            seen_source,
            local,
            ..
        }) => {
            assert_eq!(backend, "pod-1-1");
            assert_eq!(local.port(), 21_235);
            assert_eq!(
                *seen_source,
                SocketAddr::new(lab.pod(0).addresses[0], 21_235)
            );
        }
        other => panic!("sctp: {other:?}"),
    }
    assert_eq!(outcomes[1].backend(), Some("pod-1-1"), "{:?}", outcomes[1]);
    assert_eq!(outcomes[2], ProbeOutcome::Timeout.into());
    assert_eq!(outcomes[3], ProbeOutcome::Timeout.into());
}

/// A pod forges another pod's address (and, in IPv6, its node's) with `send_forged`; with
/// no dataplane in the way the sink on a pod of the other node records each datagram with
/// the forged source — so a policy table's "never received" for a forged cell means a drop.
#[test]
fn forged_datagrams_reach_a_sink_with_the_forged_source() {
    if !require_root("forged_datagrams_reach_a_sink_with_the_forged_source") {
        return;
    }
    let lab = Lab::new(spec(true)).unwrap();
    let target = lab.pod(3);
    let sink = dataplane_testkit::sink(&target.netns, 7100).unwrap();
    let mut sent = Vec::new();
    for family in [Family::V4, Family::V6] {
        let mut forged = vec![lab.pod(1).address(family).unwrap()];
        if family == Family::V6 {
            // An IPv4 node drops its own address coming in from a pod itself (martian).
            forged.push(lab.node(0).address(family).unwrap());
        }
        for (i, source) in forged.into_iter().enumerate() {
            let payload = format!("forged {family:?} {i}");
            dataplane_testkit::send_forged(
                &lab.pod(0).netns,
                SocketAddr::new(source, 7200),
                SocketAddr::new(target.address(family).unwrap(), 7100),
                payload.as_bytes(),
            )
            .unwrap();
            sent.push((SocketAddr::new(source, 7200), payload));
        }
    }
    let deadline = std::time::Instant::now() + TIMEOUT;
    while sink.received().len() < sent.len() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut got = sink.received();
    got.sort();
    sent.sort();
    assert_eq!(got, sent);
}
