//! The XDP fast path end to end in the testkit lab: real TCP/UDP from an external client to
//! node 0's NodePorts, forwarded at XDP (driver mode on node 0's veth uplink) to pods on
//! node 1, over IPv4 and IPv6 (DSR and SNAT each).
//!
//! ```text
//!   external-0 --x0-- br0 --n0-- [XDP on node-0 eth0] --XDP_TX--> n0 -- br0 --n1-- node-1 --> pod-1-*
//!        ^                                                                          |
//!        +------------- DSR: reply from node-0:nodePort, straight from node-1 ------+
//!        +------------- SNAT: reply back through node-0 (TC reverse NAT) -----------+
//! ```
//! Also an LB IP with loadBalancerSourceRanges, node 0's own pods behind it and two external
//! clients: the one outside the ranges is dropped at XDP, the one inside is served.
//!
//! Every node runs its own `EbpfDataplane` (own pin directory, its namespace, TC programs
//! attached by the normal apply); only node 0 has XDP on.
//!
//! Two lab details a real uplink does not need: frames that XDP sends back out of a veth
//! (`XDP_TX`) are received by its peer only when the peer runs an XDP program itself, so the
//! underlay side of node 0's uplink (`n0`) gets a pass-everything one; and the external client sends complete checksums (TX checksum offload off),
//! as frames from a NIC have them - a veth would otherwise hand XDP partial checksums.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::{
    answered, attach_xdp_pass, ethtool_set, require_root, stat, PinDirs, ETHTOOL_STXCSUM,
};
use dataplane_core::{
    Backend, Dataplane, DesiredState, DropReason, EventKind, EventOptions, EventVerdict,
    ExternalMode, FlowEvent, ObjectName, ObservationPoint, Protocol, Service, ServicePort,
};
use dataplane_ebpf::{EbpfConfig, EbpfDataplane, XdpMode};
use dataplane_testkit::{probe, Family, Lab, LabSpec, ProbeOutcome, TcpSession, SERVER_PORT};

const TIMEOUT: Duration = Duration::from_secs(2);
/// Shorter than TCP's first retransmission timeout: one SYN per dropped probe.
const SHORT: Duration = Duration::from_millis(700);

/// The pin directory of node `node` in test `tag` (tests run in parallel in one process).
fn test_pin_dir(tag: &str, node: usize) -> PathBuf {
    PathBuf::from(format!(
        "/sys/fs/bpf/dpe-{tag}-{}-n{node}",
        std::process::id()
    ))
}

fn config_in(lab: &Lab, node: usize, dir: PathBuf, xdp: XdpMode) -> EbpfConfig {
    let _ = std::fs::remove_dir_all(&dir);
    let mut c = EbpfConfig::new(dir);
    c.netns = Some(lab.node(node).netns.path().to_owned());
    c.xdp = xdp;
    c
}

/// NodePort `node_port` (TCP and UDP) of the family of `cluster_ip`, to node 1's pods.
fn service(lab: &Lab, name: &str, cluster_ip: &str, node_port: u16, mode: ExternalMode) -> Service {
    let mut s = Service::new(ObjectName::new("default", name));
    s.cluster_ips = vec![cluster_ip.parse().unwrap()];
    s.ports = [Protocol::Tcp, Protocol::Udp]
        .into_iter()
        .map(|protocol| ServicePort {
            name: protocol.to_string().to_lowercase(),
            protocol,
            port: 80,
            target_port: SERVER_PORT,
            node_port: Some(node_port),
        })
        .collect();
    let family = if s.cluster_ips[0].is_ipv6() {
        Family::V6
    } else {
        Family::V4
    };
    s.backends = lab
        .pods_on(1)
        .map(|p| {
            let mut b = Backend::new(p.address(family).expect("pod address"));
            b.node_name = Some(lab.node(1).name.as_str().into());
            b
        })
        .collect();
    s.external_mode = Some(mode);
    s
}

/// `dsr` NodePort 30090 (externalMode Dsr) and `snat` NodePort 30080 (Snat), TCP and UDP,
/// backends only on node 1.
fn state(lab: &Lab, node: usize) -> DesiredState {
    let mut s = lab.desired_state(node);
    s.services = vec![
        service(lab, "dsr", "10.96.0.20", 30090, ExternalMode::Dsr),
        service(lab, "snat", "10.96.0.21", 30080, ExternalMode::Snat),
    ];
    s
}

/// The dataplanes of a two-node `lab` (test `tag`'s pin directories, removed when the first
/// value drops), each with `state(lab, node)` applied, XDP in driver mode on node 0 only; the
/// pass-all XDP program on node 0's underlay peer (the third value: detached when it drops);
/// external client 0 sending complete checksums.
fn two_nodes(
    lab: &Lab,
    tag: &str,
    state: fn(&Lab, usize) -> DesiredState,
) -> (PinDirs, Vec<EbpfDataplane>, aya::Ebpf) {
    let pins = PinDirs((0..2).map(|i| test_pin_dir(tag, i)).collect());
    let dps: Vec<EbpfDataplane> = (0..2)
        .map(|i| {
            let mode = if i == 0 {
                XdpMode::Native
            } else {
                XdpMode::Off
            };
            let dir = test_pin_dir(tag, i);
            let mut dp = EbpfDataplane::new(config_in(lab, i, dir, mode)).expect("load");
            dp.apply(&state(lab, i)).expect("apply");
            dp
        })
        .collect();
    assert!(dps[0].capabilities().xdp, "node 0 shows the XDP capability");
    let peer_xdp = attach_xdp_pass(lab.underlay().path(), "n0");
    let ext = lab.external(0);
    ethtool_set(ext.netns.path(), &ext.interface, ETHTOOL_STXCSUM, false);
    (pins, dps, peer_xdp)
}

#[test]
#[allow(clippy::too_many_lines)] // one lab, many checks: building the lab is the slow part
fn xdp_node_port_dsr_and_snat_end_to_end() {
    if !require_root("xdp_node_port_dsr_and_snat_end_to_end") {
        return;
    }
    let lab = Lab::new(LabSpec {
        nodes: 2,
        pods_per_node: 2,
        external_clients: 1,
        ipv6: false,
    })
    .expect("lab");
    let (_pins, mut dps, _peer_xdp) = two_nodes(&lab, "xdplab", state);
    let ext = lab.external(0);

    let node0 = lab.node(0).address(Family::V4).unwrap();
    let ext_ip = ext.address(Family::V4).unwrap();
    let remote: Vec<String> = lab.pods_on(1).map(|p| p.name.clone()).collect();

    let before = stat(&dps[0], "xdp_forwarded");
    for proto in [Protocol::Tcp, Protocol::Udp] {
        let out = probe(&ext.netns, SocketAddr::new(node0, 30090), proto, TIMEOUT).expect("probe");
        let (backend, seen) = answered(&out);
        assert!(
            remote.contains(&backend),
            "{proto}: DSR NodePort through XDP reaches a node-1 pod, got {backend}"
        );
        assert_eq!(seen, ext_ip, "{proto}: DSR keeps the client's own address");
    }
    let mut session = TcpSession::open(&ext.netns, SocketAddr::new(node0, 30090)).expect("connect");
    let (first, seen) = session.request().expect("request");
    assert_eq!(seen.ip(), ext_ip);
    for _ in 0..3 {
        let (again, _) = session.request().expect("request on the established flow");
        assert_eq!(again, first, "an established DSR flow keeps its backend");
    }
    drop(session);
    let after_dsr = stat(&dps[0], "xdp_forwarded");
    assert!(
        after_dsr >= before + 6,
        "node 0 forwarded the DSR requests at XDP: {before} -> {after_dsr}"
    );

    for proto in [Protocol::Tcp, Protocol::Udp] {
        let out = probe(&ext.netns, SocketAddr::new(node0, 30080), proto, TIMEOUT).expect("probe");
        let (backend, seen) = answered(&out);
        assert!(
            remote.contains(&backend),
            "{proto}: SNAT NodePort through XDP reaches a node-1 pod, got {backend}"
        );
        assert_eq!(seen, node0, "{proto}: SNAT shows node 0's address");
    }
    let after_snat = stat(&dps[0], "xdp_forwarded");
    assert!(
        after_snat >= after_dsr + 2,
        "node 0 forwarded the SNAT requests at XDP: {after_dsr} -> {after_snat}"
    );
    let flows = dps[0].flows().expect("flows");
    assert!(
        flows
            .iter()
            .any(|f| f.frontend == SocketAddr::new(node0, 30080) && f.client.ip() == ext_ip),
        "flows() lists the SNAT connection XDP created: {flows:?}"
    );
    for dp in &mut dps {
        dp.reset().expect("reset");
    }
}

/// `snat6` NodePort 30180 (Snat) and `dsr6` NodePort 30190 (externalMode Dsr), IPv6 only,
/// TCP and UDP, backends only on node 1.
fn state6(lab: &Lab, node: usize) -> DesiredState {
    let mut s = lab.desired_state(node);
    s.services = vec![
        service(lab, "snat6", "fd00:96::21", 30180, ExternalMode::Snat),
        service(lab, "dsr6", "fd00:96::20", 30190, ExternalMode::Dsr),
    ];
    s
}

/// Real TCP and UDP over IPv6 from an external client to node 0's NodePorts, forwarded at XDP
/// (driver mode) to node 1's pods with SNAT to node 0's IPv6 address (the replies come back
/// through node 0's TC) or with DSR (the destination-options header stripped on node 1, which
/// answers the client itself from the frontend). XDP's own counter shows the requests went through the fast path
/// (with XDP passing IPv6, as it did, every packet would go through TC and the counter would
/// not move).
#[test]
fn xdp_node_port_ipv6_end_to_end() {
    if !require_root("xdp_node_port_ipv6_end_to_end") {
        return;
    }
    let lab = Lab::new(LabSpec {
        nodes: 2,
        pods_per_node: 2,
        external_clients: 1,
        ipv6: true,
    })
    .expect("lab");
    let (_pins, mut dps, _peer_xdp) = two_nodes(&lab, "xdplab6", state6);
    let ext = lab.external(0);

    let node0 = lab.node(0).address(Family::V6).unwrap();
    let ext_ip = ext.address(Family::V6).unwrap();
    let remote: Vec<String> = lab.pods_on(1).map(|p| p.name.clone()).collect();
    let reach = |port: u16, proto: Protocol| {
        let out = probe(&ext.netns, SocketAddr::new(node0, port), proto, TIMEOUT).expect("probe");
        let (backend, seen) = answered(&out);
        assert!(
            remote.contains(&backend),
            "{proto} to [{node0}]:{port} reaches a node-1 pod, got {backend}"
        );
        if port == 30190 {
            assert_eq!(
                seen, ext_ip,
                "{proto} to {port}: DSR keeps the client's address"
            );
        } else {
            assert_eq!(
                seen, node0,
                "{proto} to {port}: SNAT shows node 0's IPv6 address"
            );
        }
    };

    // The first packet towards node 1 finds no neighbour entry for it on node 0: XDP leaves
    // it to TC, whose redirect resolves it.
    reach(30180, Protocol::Tcp);
    let before = stat(&dps[0], "xdp_forwarded");
    for port in [30180, 30190] {
        for proto in [Protocol::Tcp, Protocol::Udp] {
            reach(port, proto);
        }
    }
    let mut session = TcpSession::open(&ext.netns, SocketAddr::new(node0, 30180)).expect("connect");
    let (first, seen) = session.request().expect("request");
    assert_eq!(seen.ip(), node0);
    for _ in 0..3 {
        let (again, _) = session.request().expect("request on the established flow");
        assert_eq!(again, first, "an established flow keeps its backend");
    }
    let flows = dps[0].flows().expect("flows");
    assert!(
        flows
            .iter()
            .any(|f| f.frontend == SocketAddr::new(node0, 30180) && f.client.ip() == ext_ip),
        "flows() lists the IPv6 connection: {flows:?}"
    );
    drop(session);
    let after = stat(&dps[0], "xdp_forwarded");
    println!("xdp_forwarded on node 0: {before} -> {after}");
    // At least: two TCP probes (SYN and one more packet each), two UDP datagrams, the
    // session's SYN, handshake ACK and four requests.
    assert!(
        after >= before + 12,
        "node 0 forwarded the IPv6 requests at XDP: {before} -> {after}"
    );
    assert!(
        stat(&dps[0], "dsr_forwarded") >= 2,
        "node 0 sent the IPv6 DSR requests with the destination-options header"
    );
    assert!(
        stat(&dps[1], "dsr_replies") >= 2,
        "node 1 answered them from the frontend"
    );
    for dp in &mut dps {
        dp.reset().expect("reset");
    }
}

const GUARDED_IP: &str = "198.51.100.1";

/// `guarded`: LB IP 198.51.100.1:80 (TCP) to node 0's own pods, sources `ranges`.
fn guarded_state(lab: &Lab, ranges: &[String]) -> DesiredState {
    let mut s = lab.desired_state(0);
    let mut guarded = Service::new(ObjectName::new("default", "guarded"));
    guarded.cluster_ips = vec!["10.96.0.22".parse().unwrap()];
    guarded.ports = vec![ServicePort::new(Protocol::Tcp, 80, SERVER_PORT)];
    guarded.load_balancer_ips = vec![GUARDED_IP.parse().unwrap()];
    guarded.load_balancer_source_ranges = ranges.iter().map(|r| r.parse().unwrap()).collect();
    guarded.backends = lab
        .pods_on(0)
        .map(|p| {
            let mut b = Backend::new(p.address(Family::V4).expect("pod address"));
            b.node_name = Some(lab.node(0).name.as_str().into());
            b
        })
        .collect();
    s.services = vec![guarded];
    s
}

/// The drop events of `events` to the guarded LB IP (read until one came, or 10 s).
fn guarded_drops(events: &mut dyn dataplane_core::EventSource) -> Vec<FlowEvent> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut out = Vec::new();
    loop {
        let mut buf = Vec::new();
        events.read(&mut buf, 1024).expect("read events");
        out.extend(buf.into_iter().filter(|e| {
            e.kind == EventKind::Drop && e.original.destination.ip().to_string() == GUARDED_IP
        }));
        if !out.is_empty() || std::time::Instant::now() >= deadline {
            return out;
        }
        events.wait(Duration::from_millis(50)).expect("wait");
    }
}

/// Real TCP to an LB IP with loadBalancerSourceRanges, XDP in driver mode on node 0: the
/// client outside the ranges is dropped at XDP (its drop in XDP's `dp_drops` slot, its event
/// at the `xdp` point, nothing at `dp_from_uplink`), the client inside is served by node 0's
/// pods; when the ranges change to leave that client out, its open connection goes on and its
/// next one is dropped at XDP.
#[test]
#[allow(clippy::too_many_lines)] // one lab, in order
fn xdp_drops_source_range_outsiders_end_to_end() {
    if !require_root("xdp_drops_source_range_outsiders_end_to_end") {
        return;
    }
    let lab = Lab::new(LabSpec {
        nodes: 1,
        pods_per_node: 2,
        external_clients: 2,
        ipv6: false,
    })
    .expect("lab");
    let pins = PinDirs(vec![test_pin_dir("xdpsrc", 0)]);
    let (outsider, insider) = (lab.external(0), lab.external(1));
    let insider_ip = insider.address(Family::V4).unwrap();
    let outsider_ip = outsider.address(Family::V4).unwrap();
    for k in 0..2 {
        lab.route_via_node(k, format!("{GUARDED_IP}/32").parse().unwrap(), 0)
            .expect("route the LB IP via node 0");
    }
    let mut dp = EbpfDataplane::new(config_in(
        &lab,
        0,
        test_pin_dir("xdpsrc", 0),
        XdpMode::Native,
    ))
    .expect("load");
    dp.apply(&guarded_state(&lab, &[format!("{insider_ip}/32")]))
        .expect("apply");
    assert!(dp.capabilities().xdp);
    let mut events = dp.events(&EventOptions::default()).expect("events");
    let lb = SocketAddr::new(GUARDED_IP.parse().unwrap(), 80);
    let pods: Vec<String> = lab.pods_on(0).map(|p| p.name.clone()).collect();
    let xdp_drops = |dp: &EbpfDataplane| {
        let stats = dp.stats().expect("stats");
        (
            stats
                .other
                .get("drops.dp_xdp_uplink.source-range")
                .copied()
                .unwrap_or(0),
            stats
                .other
                .get("drops.dp_from_uplink.source-range")
                .copied()
                .unwrap_or(0),
        )
    };

    // (externalTrafficPolicy Cluster: the pod sees node 0's address)
    let (backend, _) = answered(&probe(&insider.netns, lb, Protocol::Tcp, TIMEOUT).expect("probe"));
    assert!(pods.contains(&backend), "the insider is served: {backend}");
    assert_eq!(xdp_drops(&dp), (0, 0), "nothing dropped for the insider");

    let out = probe(&outsider.netns, lb, Protocol::Tcp, SHORT).expect("probe");
    assert_eq!(out, ProbeOutcome::Timeout, "the outsider gets no answer");
    assert_eq!(
        xdp_drops(&dp),
        (1, 0),
        "its one SYN dropped at XDP, none reached dp_from_uplink"
    );
    let got = guarded_drops(events.as_mut());
    assert_eq!(got.len(), 1, "one drop event: {got:#?}");
    let e = &got[0];
    assert_eq!(
        (e.verdict, e.reason, e.point),
        (
            EventVerdict::Dropped,
            Some(DropReason::SourceRange),
            Some(ObservationPoint::Xdp)
        )
    );
    assert_eq!(e.original.source.ip(), outsider_ip);
    assert_eq!(e.service, Some(ObjectName::new("default", "guarded")));
    assert_eq!(e.interface.as_deref(), Some("eth0"));
    println!("{e}");

    // The insider's open connection outlives a change of the ranges that leaves it out.
    let mut session = TcpSession::open(&insider.netns, lb).expect("connect");
    let (first, _) = session.request().expect("request");
    dp.apply(&guarded_state(&lab, &[format!("{outsider_ip}/32")]))
        .expect("apply other ranges");
    for _ in 0..3 {
        let (again, _) = session
            .request()
            .expect("the established connection goes on");
        assert_eq!(again, first);
    }
    drop(session);
    let out = probe(&insider.netns, lb, Protocol::Tcp, SHORT).expect("probe");
    assert_eq!(
        out,
        ProbeOutcome::Timeout,
        "a new connection is dropped now"
    );
    assert_eq!(xdp_drops(&dp), (2, 0), "at XDP");
    let (backend, _) =
        answered(&probe(&outsider.netns, lb, Protocol::Tcp, TIMEOUT).expect("probe"));
    assert!(pods.contains(&backend), "the new ranges' client is served");
    assert_eq!(events.lost(), 0);
    drop(events);
    dp.reset().expect("reset");
    drop(pins);
}
