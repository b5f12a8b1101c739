//! End to end in the testkit lab: real TCP/UDP through the eBPF programs.
//!
//! ```text
//!   external-0 --\                       /-- node-0 (eth0) -- vp* -- pod-0-0, pod-0-1
//!                 br0 (underlay, ns -u) -
//!                                        \-- node-1 (eth0) -- vp* -- pod-1-0, pod-1-1
//! ```
//! Every node runs its own `EbpfDataplane` (own pin directory, its namespace).

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::Duration;

use common::{answered, stat, PinDirs};
use dataplane_core::{
    Backend, Dataplane, DesiredState, ObjectName, Protocol, Service, ServicePort, TrafficPolicy,
};
use dataplane_ebpf::{EbpfConfig, EbpfDataplane};
use dataplane_testkit::{
    probe, probe_from, require_root, serve, Family, Lab, LabSpec, ProbeOutcome, TcpSession,
    SERVER_PORT,
};

const TIMEOUT: Duration = Duration::from_secs(2);

fn pin_dir(tag: &str, node: usize) -> PathBuf {
    PathBuf::from(format!(
        "/sys/fs/bpf/dpe-lab-{}-{tag}-n{node}",
        std::process::id()
    ))
}

fn config(lab: &Lab, tag: &str, node: usize) -> EbpfConfig {
    let dir = pin_dir(tag, node);
    let _ = std::fs::remove_dir_all(&dir);
    let mut c = EbpfConfig::new(dir);
    c.netns = Some(lab.node(node).netns.path().to_owned());
    c
}

fn backend_of(lab: &Lab, pod: usize, family: Family) -> Backend {
    let p = lab.pod(pod);
    let mut b = Backend::new(p.address(family).expect("pod address"));
    b.node_name = Some(lab.node(p.node).name.as_str().into());
    b
}

fn port(protocol: Protocol, port: u16, node_port: Option<u16>) -> ServicePort {
    ServicePort {
        name: protocol.to_string().to_lowercase(),
        protocol,
        port,
        target_port: SERVER_PORT,
        node_port,
    }
}

/// web: ClusterIP 10.96.0.10, backends on node 1 only, NodePort 30080 (TCP);
/// empty: no backends; self: node 0's first pod only (hairpin).
fn services(lab: &Lab) -> Vec<Service> {
    let remote: Vec<Backend> = lab
        .pods_on(1)
        .map(|p| backend_of(lab, p.index, Family::V4))
        .collect();
    let mut web = Service::new(ObjectName::new("default", "web"));
    web.cluster_ips = vec!["10.96.0.10".parse().unwrap()];
    web.ports = vec![
        port(Protocol::Tcp, 80, Some(30080)),
        port(Protocol::Udp, 80, Some(30080)),
    ];
    web.backends.clone_from(&remote);
    let mut local_only = Service::new(ObjectName::new("default", "local-only"));
    local_only.cluster_ips = vec!["10.96.0.11".parse().unwrap()];
    local_only.ports = vec![port(Protocol::Tcp, 80, Some(30081))];
    local_only.backends = remote;
    local_only.external_traffic_policy = TrafficPolicy::Local;
    let mut empty = Service::new(ObjectName::new("default", "empty"));
    empty.cluster_ips = vec!["10.96.0.12".parse().unwrap()];
    empty.ports = vec![port(Protocol::Tcp, 80, None), port(Protocol::Udp, 80, None)];
    let mut hairpin = Service::new(ObjectName::new("default", "hairpin"));
    hairpin.cluster_ips = vec!["10.96.0.13".parse().unwrap()];
    hairpin.ports = vec![port(Protocol::Tcp, 80, None)];
    hairpin.backends = vec![backend_of(lab, 0, Family::V4)];
    // Backends that do not listen on the target port: their ICMP errors must be translated.
    let mut closed = Service::new(ObjectName::new("default", "closed"));
    closed.cluster_ips = vec!["10.96.0.14".parse().unwrap()];
    let mut closed_port = port(Protocol::Udp, 80, None);
    closed_port.target_port = 9999;
    closed.ports = vec![closed_port];
    closed.backends = lab
        .pods_on(1)
        .map(|p| backend_of(lab, p.index, Family::V4))
        .collect();
    vec![web, local_only, empty, hairpin, closed]
}

fn state(lab: &Lab, node: usize) -> DesiredState {
    let mut s = lab.desired_state(node);
    s.services = services(lab);
    s
}

fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// Sends one UDP datagram from `ns` to `dst` (a testkit server answers it) and returns the
/// IPv4 TTL the answer arrived with.
fn answer_ttl(ns: &dataplane_testkit::NetNs, dst: SocketAddr) -> i32 {
    use nix::sys::socket::{recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags};
    use std::os::fd::AsRawFd;
    ns.run(move || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
        s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        setsockopt(&s, sockopt::Ipv4RecvTtl, &true).expect("IP_RECVTTL");
        s.send_to(b"ttl\n", dst).expect("send");
        let mut buf = [0u8; 512];
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!(i32);
        let msg = recvmsg::<()>(s.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::empty())
            .unwrap_or_else(|e| panic!("no answer from {dst}: {e}"));
        msg.cmsgs()
            .expect("control messages")
            .find_map(|c| match c {
                ControlMessageOwned::Ipv4Ttl(ttl) => Some(ttl),
                _ => None,
            })
            .expect("IP_TTL control message")
    })
    .expect("in the namespace")
}

#[test]
#[allow(clippy::too_many_lines)] // one lab, many checks: building the lab is the slow part
fn services_end_to_end() {
    if !require_root("services_end_to_end") {
        return;
    }
    let lab = Lab::new(LabSpec {
        nodes: 2,
        pods_per_node: 2,
        external_clients: 1,
        ipv6: false,
    })
    .expect("lab");
    let _pins = PinDirs((0..2).map(|i| pin_dir("e2e", i)).collect());
    let mut dps: Vec<EbpfDataplane> = (0..2)
        .map(|i| {
            let mut dp = EbpfDataplane::new(config(&lab, "e2e", i)).expect("load");
            dp.apply(&state(&lab, i)).expect("apply");
            dp
        })
        .collect();
    let client = lab.pod(0);
    let client_ip = client.address(Family::V4).unwrap();
    let node0 = lab.node(0).address(Family::V4).unwrap();
    let remote: Vec<String> = lab.pods_on(1).map(|p| p.name.clone()).collect();

    for proto in [Protocol::Tcp, Protocol::Udp] {
        let out = probe(&client.netns, sa("10.96.0.10", 80), proto, TIMEOUT).expect("probe");
        let (backend, seen) = answered(&out);
        assert!(
            remote.contains(&backend),
            "{proto}: ClusterIP reaches a node-1 pod, got {backend}"
        );
        assert_eq!(seen, client_ip, "{proto}: ClusterIP keeps the pod source");
    }

    let ext = lab.external(0);
    for proto in [Protocol::Tcp, Protocol::Udp] {
        let out = probe(&ext.netns, SocketAddr::new(node0, 30080), proto, TIMEOUT).expect("probe");
        let (backend, seen) = answered(&out);
        assert!(
            remote.contains(&backend),
            "{proto}: NodePort reaches a remote pod"
        );
        assert_eq!(
            seen, node0,
            "{proto}: NodePort (ETP Cluster) is masqueraded to node-0"
        );
    }
    let out = probe(
        &ext.netns,
        SocketAddr::new(node0, 30081),
        Protocol::Tcp,
        TIMEOUT,
    )
    .expect("probe");
    assert!(
        matches!(out, ProbeOutcome::Timeout),
        "ETP Local without a local backend drops: {out:?}"
    );
    let node1 = lab.node(1).address(Family::V4).unwrap();
    let out = probe(
        &ext.netns,
        SocketAddr::new(node1, 30081),
        Protocol::Tcp,
        TIMEOUT,
    )
    .expect("probe");
    let ext_ip = ext.address(Family::V4).unwrap();
    assert_eq!(
        answered(&out).1,
        ext_ip,
        "ETP Local keeps the client source"
    );

    for proto in [Protocol::Udp, Protocol::Tcp] {
        let out = probe(&client.netns, sa("10.96.0.12", 80), proto, TIMEOUT).expect("probe");
        assert!(
            matches!(out, ProbeOutcome::Refused),
            "{proto}: no backend is rejected: {out:?}"
        );
    }
    let out = probe(&client.netns, sa("10.96.0.10", 81), Protocol::Tcp, TIMEOUT).expect("probe");
    assert!(
        matches!(out, ProbeOutcome::Refused),
        "unknown ClusterIP port is rejected: {out:?}"
    );

    // The answer of a node-1 pod comes back through node-0's programs, which redirect it to
    // the client's veth themselves: the node counts as one hop, as the stack's forwarding
    // does for the same answer sent straight to the pod address (node 1 and node 0: 2).
    let remote_pod = lab.pods_on(1).next().expect("a node-1 pod");
    let direct = answer_ttl(
        &client.netns,
        SocketAddr::new(remote_pod.address(Family::V4).unwrap(), SERVER_PORT),
    );
    assert_eq!(direct, 62, "two forwarding hops from node 1's pod");
    assert_eq!(
        answer_ttl(&client.netns, sa("10.96.0.10", 80)),
        direct,
        "through the ClusterIP, redirected by node 0: the same hops"
    );

    let out = probe(&client.netns, sa("10.96.0.13", 80), Protocol::Tcp, TIMEOUT).expect("probe");
    let (backend, seen) = answered(&out);
    assert_eq!(backend, client.name, "hairpin reaches the pod itself");
    assert_eq!(seen, node0, "hairpin is masqueraded to the node address");

    let out = probe(&client.netns, sa("10.96.0.14", 80), Protocol::Udp, TIMEOUT).expect("probe");
    assert!(
        matches!(out, ProbeOutcome::Refused),
        "a backend's ICMP port unreachable reaches the client, translated: {out:?}"
    );

    // Pod traffic leaving the cluster is masqueraded to the node address.
    let _server = serve(&ext.netns, "external-0", 9000).expect("server on the external client");
    let ext_ip = ext.address(Family::V4).unwrap();
    for proto in [Protocol::Tcp, Protocol::Udp] {
        let out =
            probe(&client.netns, SocketAddr::new(ext_ip, 9000), proto, TIMEOUT).expect("probe");
        assert_eq!(
            answered(&out).1,
            node0,
            "{proto}: pod egress is masqueraded"
        );
    }

    let flows = dps[0].flows().expect("flows");
    assert!(
        flows
            .iter()
            .any(|f| f.frontend == sa("10.96.0.10", 80) && f.client.ip() == client_ip),
        "flows() shows the ClusterIP connection: {flows:?}"
    );
    for dp in &mut dps {
        dp.reset().expect("reset");
    }
}

#[test]
fn tcp_connection_survives_dataplane_restart() {
    if !require_root("tcp_connection_survives_dataplane_restart") {
        return;
    }
    let lab = Lab::new(LabSpec {
        nodes: 2,
        pods_per_node: 1,
        external_clients: 0,
        ipv6: false,
    })
    .expect("lab");
    let _pins = PinDirs((0..2).map(|i| pin_dir("restart", i)).collect());
    let mut cfgs: Vec<EbpfConfig> = (0..2).map(|i| config(&lab, "restart", i)).collect();
    for c in &mut cfgs {
        c.keep_attachments_on_drop = true;
    }
    let mut dps: Vec<EbpfDataplane> = cfgs
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut dp = EbpfDataplane::new(c.clone()).expect("load");
            dp.apply(&state(&lab, i)).expect("apply");
            dp
        })
        .collect();
    let client = lab.pod(0);
    let mut session = TcpSession::open(&client.netns, sa("10.96.0.10", 80)).expect("connect");
    let (first, _) = session.request().expect("request before restart");

    drop(std::mem::take(&mut dps));
    let (during, _) = session
        .request()
        .expect("request while no dataplane object exists");
    assert_eq!(during, first, "the connection keeps its backend");
    let out = probe(&client.netns, sa("10.96.0.10", 80), Protocol::Tcp, TIMEOUT).expect("probe");
    answered(&out);

    let mut dps: Vec<EbpfDataplane> = cfgs
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut dp = EbpfDataplane::new(c.clone()).expect("adopt");
            dp.apply(&state(&lab, i)).expect("reconcile");
            dp
        })
        .collect();
    let (after, _) = session.request().expect("request after restart");
    assert_eq!(after, first);
    for dp in &mut dps {
        dp.reset().expect("reset");
    }
}

/// `state` with web's backends (ClusterIP 10.96.0.10, TCP and UDP port 80) on lab pod `pod`
/// alone.
fn web_on(lab: &Lab, state: &DesiredState, pod: usize) -> DesiredState {
    let mut out = state.clone();
    let web = out
        .services
        .iter_mut()
        .find(|s| s.name.name == "web")
        .expect("web service");
    web.backends = vec![backend_of(lab, pod, Family::V4)];
    out
}

/// Probes web's UDP ClusterIP from pod-0-1's port 41000 until `want` answers (a probe every
/// 200 ms keeps the flow's conntrack entry alive, as a DNS client does); panics after a
/// minute with the last answer.
fn wait_for_udp_backend(lab: &Lab, want: &str) {
    let src = SocketAddr::from(([0, 0, 0, 0], 41_000));
    let deadline = std::time::Instant::now() + Duration::from_mins(1);
    let mut last = None;
    while std::time::Instant::now() < deadline {
        let outcome = probe_from(
            &lab.pod(1).netns,
            Some(src),
            sa("10.96.0.10", 80),
            Protocol::Udp,
            Duration::from_secs(1),
        )
        .expect("probe");
        if let ProbeOutcome::Answered { backend, local, .. } = &outcome {
            assert_eq!(local.port(), 41_000, "the probe kept its source port");
            if backend == want {
                return;
            }
        }
        last = Some(outcome);
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("UDP 10.96.0.10:80 from port 41000 never answered by {want}; last: {last:?}");
}

/// kube-proxy parity (its `CleanStaleEntries`): a UDP client that keeps its source port
/// keeps its `dp_ct` entry alive, and with it the backend it first reached. When that backend
/// is removed the sync deletes the entry, and the same source port reaches the new backend:
/// through a partial sync, then through a full one.
#[test]
fn a_udp_client_that_keeps_its_port_follows_the_backends() {
    if !require_root("a_udp_client_that_keeps_its_port_follows_the_backends") {
        return;
    }
    let lab = Lab::new(LabSpec {
        nodes: 2,
        pods_per_node: 2,
        external_clients: 0,
        ipv6: false,
    })
    .expect("lab");
    let _pins = PinDirs(vec![pin_dir("udpct", 0)]);
    let mut dp = EbpfDataplane::new(config(&lab, "udpct", 0)).expect("load");
    let full = state(&lab, 0);
    // pod-1-0 (node 1), then pod-0-0 (node 0).
    let on_a = web_on(&lab, &full, 2);
    let on_b = web_on(&lab, &full, 0);
    dp.apply(&on_a).expect("apply");
    wait_for_udp_backend(&lab, "pod-1-0");
    let report = dp
        .apply_changes(&dataplane_core::diff(&on_a, &on_b))
        .expect("apply_changes");
    assert!(
        report.warnings.iter().all(|w| w.field != "conntrack"),
        "{:?}",
        report.warnings
    );
    wait_for_udp_backend(&lab, "pod-0-0");
    let report = dp.apply(&on_a).expect("apply");
    assert!(
        report.warnings.iter().all(|w| w.field != "conntrack"),
        "{:?}",
        report.warnings
    );
    wait_for_udp_backend(&lab, "pod-1-0");
    dp.reset().expect("reset");
}

/// DSR and masquerade with real traffic:
///
/// ```text
///   external-0 --(SYN to node-0:30090)--> node-0 --(DNAT, client kept, +option)--> node-1 --> pod-1-x
///   external-0 <-------------------(reply from node-0:30090, straight from node-1)---------'
/// ```
#[test]
#[allow(clippy::too_many_lines)] // one lab, many checks: building the lab is the slow part
fn dsr_and_masquerade_end_to_end() {
    if !require_root("dsr_and_masquerade_end_to_end") {
        return;
    }
    let lab = Lab::new(LabSpec {
        nodes: 2,
        pods_per_node: 2,
        external_clients: 1,
        ipv6: false,
    })
    .expect("lab");
    let _pins = PinDirs((0..2).map(|i| pin_dir("dsr", i)).collect());
    let remote: Vec<Backend> = lab
        .pods_on(1)
        .map(|p| backend_of(&lab, p.index, Family::V4))
        .collect();
    let mut dsr = Service::new(ObjectName::new("default", "dsr"));
    dsr.cluster_ips = vec!["10.96.0.20".parse().unwrap()];
    dsr.ports = vec![
        port(Protocol::Tcp, 80, Some(30090)),
        port(Protocol::Udp, 80, Some(30090)),
    ];
    dsr.backends.clone_from(&remote);
    dsr.external_mode = Some(dataplane_core::ExternalMode::Dsr);
    let mut hybrid = dsr.clone();
    hybrid.name = ObjectName::new("default", "hybrid");
    hybrid.cluster_ips = vec!["10.96.0.21".parse().unwrap()];
    hybrid.ports = vec![
        port(Protocol::Tcp, 80, Some(30091)),
        port(Protocol::Udp, 80, Some(30091)),
    ];
    hybrid.external_mode = Some(dataplane_core::ExternalMode::Hybrid);
    // Backends that do not listen on the target port: their ICMP errors must reach the client
    // from the frontend, quoting what the client sent.
    let mut closed = dsr.clone();
    closed.name = ObjectName::new("default", "dsr-closed");
    closed.cluster_ips = vec!["10.96.0.22".parse().unwrap()];
    let mut closed_port = port(Protocol::Udp, 80, Some(30092));
    closed_port.target_port = 9999;
    closed.ports = vec![closed_port];
    let ext = lab.external(0);
    let ext_ip = ext.address(Family::V4).unwrap();
    let node_state = |i: usize| {
        let mut s = lab.desired_state(i);
        s.services = vec![dsr.clone(), hybrid.clone(), closed.clone()];
        s
    };
    let mut dps: Vec<EbpfDataplane> = (0..2)
        .map(|i| {
            let mut dp = EbpfDataplane::new(config(&lab, "dsr", i)).expect("load");
            dp.apply(&node_state(i)).expect("apply");
            dp
        })
        .collect();
    let node0 = lab.node(0).address(Family::V4).unwrap();
    let names: Vec<String> = lab.pods_on(1).map(|p| p.name.clone()).collect();

    dsr_paths(
        &dps,
        &ext.netns,
        ext_ip,
        node0,
        &names,
        &[SocketAddr::new(node0, 30090)],
        [30090, 30091, 30092],
        "IPv4 (an 8-byte IP option; ICMP fragmentation needed)",
    );

    // Pod egress: masqueraded to the node; ping too; nonMasqueradeCIDRs keep the pod address.
    let pod = lab.pod(0);
    let pod_ip = pod.address(Family::V4).unwrap();
    let _server = serve(&ext.netns, "external-0", 9000).expect("server on the external client");
    for proto in [Protocol::Tcp, Protocol::Udp] {
        let out = probe(&pod.netns, SocketAddr::new(ext_ip, 9000), proto, TIMEOUT).expect("probe");
        assert_eq!(
            answered(&out).1,
            node0,
            "{proto}: pod egress is masqueraded"
        );
    }
    let ping = pod
        .netns
        .exec("ping", &["-c", "2", "-W", "2", &ext_ip.to_string()])
        .expect("ping runs");
    assert!(
        ping.status.success(),
        "ping from a pod is masqueraded (the client has no route to pods): {}",
        String::from_utf8_lossy(&ping.stdout)
    );
    // A peer that refuses the ping answers with an ICMP error quoting the masqueraded request:
    // translated back, it reaches the pod's ping, which reports it.
    let refuse = [
        "INPUT",
        "-p",
        "icmp",
        "--icmp-type",
        "echo-request",
        "-j",
        "REJECT",
        "--reject-with",
        "icmp-host-prohibited",
    ];
    let rule = |op: &str| {
        let mut args = vec!["-w", op];
        args.extend(refuse);
        let out = ext.netns.exec("iptables", &args).expect("iptables runs");
        assert!(
            out.status.success(),
            "iptables {op}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    rule("-I");
    let ping = pod
        .netns
        .exec("ping", &["-c", "1", "-W", "2", &ext_ip.to_string()])
        .expect("ping runs");
    rule("-D");
    let text = String::from_utf8_lossy(&ping.stdout);
    assert!(
        text.contains("Destination Host Prohibited"),
        "the peer's ICMP error reaches the pod's ping: {text}"
    );
    let mut st = node_state(0);
    st.node.masquerade.non_masquerade_cidrs = vec![format!("{ext_ip}/32").parse().unwrap()];
    dps[0].apply(&st).expect("apply nonMasqueradeCIDRs");
    lab.route_via_node(0, lab.node(0).pod_cidrs[0], 0)
        .expect("route to node-0's pods");
    let out = probe(
        &pod.netns,
        SocketAddr::new(ext_ip, 9000),
        Protocol::Tcp,
        TIMEOUT,
    )
    .expect("probe");
    assert_eq!(
        answered(&out).1,
        pod_ip,
        "nonMasqueradeCIDRs: the pod address is kept"
    );
    for dp in &mut dps {
        dp.reset().expect("reset");
    }
}

/// IPv6 DSR with real traffic, the frontend in a destination-options header:
///
/// ```text
///   external-0 --(SYN to [node-0]:30190)--> node-0 --(DNAT, client kept, +dst opts)--> node-1 --> pod-1-x
///   external-0 <--------------------(reply from [node-0]:30190, straight from node-1)-------'
/// ```
///
/// NodePort and LB IP, TCP and UDP, Hybrid, a DSR backend's port unreachable, and a bulk
/// upload whose full-size segments draw Packet Too Big from node-0.
#[test]
#[allow(clippy::too_many_lines)] // one lab, many checks: building the lab is the slow part
fn dsr6_end_to_end() {
    if !require_root("dsr6_end_to_end") {
        return;
    }
    let lab = Lab::new(LabSpec {
        nodes: 2,
        pods_per_node: 2,
        external_clients: 1,
        ipv6: true,
    })
    .expect("lab");
    let _pins = PinDirs((0..2).map(|i| pin_dir("dsr6", i)).collect());
    let remote: Vec<Backend> = lab
        .pods_on(1)
        .map(|p| backend_of(&lab, p.index, Family::V6))
        .collect();
    let lb_ip: IpAddr = "fd00:200::20".parse().unwrap();
    let mut dsr = Service::new(ObjectName::new("default", "dsr6"));
    dsr.cluster_ips = vec!["fd00:96::20".parse().unwrap()];
    dsr.ports = vec![
        port(Protocol::Tcp, 80, Some(30190)),
        port(Protocol::Udp, 80, Some(30190)),
    ];
    dsr.load_balancer_ips = vec![lb_ip];
    dsr.backends.clone_from(&remote);
    dsr.external_mode = Some(dataplane_core::ExternalMode::Dsr);
    let mut hybrid = dsr.clone();
    hybrid.name = ObjectName::new("default", "hybrid6");
    hybrid.cluster_ips = vec!["fd00:96::21".parse().unwrap()];
    hybrid.load_balancer_ips = Vec::new();
    hybrid.ports = vec![
        port(Protocol::Tcp, 80, Some(30191)),
        port(Protocol::Udp, 80, Some(30191)),
    ];
    hybrid.external_mode = Some(dataplane_core::ExternalMode::Hybrid);
    // Backends that do not listen on the target port: their ICMPv6 errors must reach the
    // client from the frontend, quoting what the client sent.
    let mut closed = hybrid.clone();
    closed.name = ObjectName::new("default", "dsr6-closed");
    closed.cluster_ips = vec!["fd00:96::22".parse().unwrap()];
    let mut closed_port = port(Protocol::Udp, 80, Some(30192));
    closed_port.target_port = 9999;
    closed.ports = vec![closed_port];
    closed.external_mode = Some(dataplane_core::ExternalMode::Dsr);
    let ext = lab.external(0);
    let ext_ip = ext.address(Family::V6).unwrap();
    let node_state = |i: usize| {
        let mut s = lab.desired_state(i);
        s.services = vec![dsr.clone(), hybrid.clone(), closed.clone()];
        s
    };
    let mut dps: Vec<EbpfDataplane> = (0..2)
        .map(|i| {
            let mut dp = EbpfDataplane::new(config(&lab, "dsr6", i)).expect("load");
            let report = dp.apply(&node_state(i)).expect("apply");
            assert!(report.skipped.is_empty(), "{:?}", report.skipped);
            dp
        })
        .collect();
    let node0 = lab.node(0).address(Family::V6).unwrap();
    lab.route_via_node(0, ipnetwork::IpNetwork::new(lb_ip, 128).unwrap(), 0)
        .expect("LB IP routed via node-0");
    let names: Vec<String> = lab.pods_on(1).map(|p| p.name.clone()).collect();

    dsr_paths(
        &dps,
        &ext.netns,
        ext_ip,
        node0,
        &names,
        &[SocketAddr::new(node0, 30190), SocketAddr::new(lb_ip, 80)],
        [30190, 30191, 30192],
        "IPv6 (a 24-byte destination-options header; ICMPv6 Packet Too Big)",
    );
    for dp in &mut dps {
        dp.reset().expect("reset");
    }
}

/// The DSR checks both families share, node-0 the ingress node and node-1's pods (`names`) the
/// backends, from the external client (`ext`, `ext_ip`): each of `frontends` reaches a node-1
/// pod over TCP and UDP, which sees the client itself, node-0 sent with the DSR header, node-1
/// answered from the frontend and no reply passed through node-0; then node-0's NodePorts
/// `[dsr, hybrid, closed]`: Hybrid is DSR for TCP and SNAT to `node0` for UDP; a closed
/// backend port's ICMP error reaches the client, translated; a 2 MiB upload with full-size
/// segments draws node-0's "does not fit" answer (the header outgrows a 1500-byte packet) and
/// path MTU discovery shrinks the segments, no black hole. `family` names the family and its
/// header in the messages.
#[allow(clippy::too_many_arguments)] // one scenario's addresses
fn dsr_paths(
    dps: &[EbpfDataplane],
    ext: &dataplane_testkit::NetNs,
    ext_ip: IpAddr,
    node0: IpAddr,
    names: &[String],
    frontends: &[SocketAddr],
    [dsr, hybrid, closed]: [u16; 3],
    family: &str,
) {
    let rev_before = stat(&dps[0], "reverse_translated");
    for &frontend in frontends {
        for proto in [Protocol::Tcp, Protocol::Udp] {
            // (a TCP handshake and the probe's connected UDP socket accept answers from the
            // address they dialled only: the replies come from the frontend)
            let out = probe(ext, frontend, proto, TIMEOUT).expect("probe");
            let (backend, seen) = answered(&out);
            assert!(
                names.contains(&backend),
                "{family} {frontend} {proto}: DSR reaches a node-1 pod"
            );
            assert_eq!(
                seen, ext_ip,
                "{family} {frontend} {proto}: with DSR the backend sees the client itself"
            );
        }
    }
    let sent = 2 * frontends.len() as u64;
    assert!(
        stat(&dps[0], "dsr_forwarded") >= sent,
        "{family}: node-0 sent with the DSR header"
    );
    assert!(
        stat(&dps[1], "dsr_replies") >= sent,
        "{family}: node-1 answered from the frontend"
    );
    assert_eq!(
        stat(&dps[0], "reverse_translated"),
        rev_before,
        "{family}: no DSR reply passed through node-0"
    );
    let at = |port: u16| SocketAddr::new(node0, port);
    let out = probe(ext, at(hybrid), Protocol::Tcp, TIMEOUT).expect("probe");
    assert_eq!(answered(&out).1, ext_ip, "{family} Hybrid TCP: DSR");
    let out = probe(ext, at(hybrid), Protocol::Udp, TIMEOUT).expect("probe");
    assert_eq!(
        answered(&out).1,
        node0,
        "{family} Hybrid UDP: SNAT to node-0"
    );
    let out = probe(ext, at(closed), Protocol::Udp, TIMEOUT).expect("probe");
    assert!(
        matches!(out, ProbeOutcome::Refused),
        "{family}: a DSR backend's port unreachable reaches the client, translated: {out:?}"
    );
    // Without GSO on the client every segment is a packet of its own.
    ext.ip_batch(&["link set eth0 gso_max_size 1500".to_owned()])
        .expect("client without GSO");
    let mut session = TcpSession::open_with_timeout(ext, at(dsr), Duration::from_secs(10))
        .expect("connect over DSR");
    let (backend, seen) = session.upload(2 << 20).expect("2 MiB upload over DSR");
    assert!(names.contains(&backend));
    assert_eq!(seen.ip(), ext_ip);
    assert!(
        stat(&dps[0], "frag_needed") >= 1,
        "{family}: node-0 answered that the DSR header does not fit"
    );
}

/// Host routing: pod-to-pod packets on node 0 go from one veth to the other in the program,
/// past the node's netfilter (a FORWARD rule dropping them does not see them); other nodes'
/// pods are still reached through the stack; off again, the rule applies.
#[test]
#[allow(clippy::too_many_lines)] // one lab, many checks: building the lab is the slow part
fn host_routing_skips_the_node_stack() {
    if !require_root("host_routing_skips_the_node_stack") {
        return;
    }
    let lab = Lab::new(LabSpec {
        nodes: 2,
        pods_per_node: 2,
        external_clients: 0,
        ipv6: true,
    })
    .expect("lab");
    let _pins = PinDirs(vec![pin_dir("hr", 0)]);
    let mut c = config(&lab, "hr", 0);
    c.host_routing = true;
    let mut dp = EbpfDataplane::new(c).expect("load");
    dp.apply(&lab.desired_state(0)).expect("apply");
    let (client, peer, remote) = (lab.pod(0), lab.pod(1), lab.pods_on(1).next().unwrap());
    let node = &lab.node(0).netns;
    let iptables = |family: Family, op: &str| {
        let (tool, src, dst) = match family {
            Family::V4 => ("iptables", client.address(family), peer.address(family)),
            Family::V6 => ("ip6tables", client.address(family), peer.address(family)),
        };
        let (src, dst) = (src.unwrap().to_string(), dst.unwrap().to_string());
        let out = node
            .exec(tool, &[op, "FORWARD", "-s", &src, "-d", &dst, "-j", "DROP"])
            .expect("run iptables");
        assert!(
            out.status.success(),
            "{tool} {op}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    for family in [Family::V4, Family::V6] {
        iptables(family, "-I");
    }

    for family in [Family::V4, Family::V6] {
        for proto in [Protocol::Tcp, Protocol::Udp] {
            let before = stat(&dp, "host_routed");
            let dst = SocketAddr::new(peer.address(family).unwrap(), SERVER_PORT);
            let out = probe(&client.netns, dst, proto, TIMEOUT).expect("probe");
            let (backend, seen) = answered(&out);
            assert_eq!(
                backend, peer.name,
                "{family:?} {proto}: the peer pod answers"
            );
            assert_eq!(
                seen,
                client.address(family).unwrap(),
                "{family:?} {proto}: no NAT"
            );
            // Both directions, every packet: at least request and answer.
            assert!(
                stat(&dp, "host_routed") >= before + 2,
                "{family:?} {proto}: redirected by the program"
            );
        }
    }
    // One forwarding hop, as the stack would count it.
    let ttl = answer_ttl(
        &client.netns,
        SocketAddr::new(peer.address(Family::V4).unwrap(), SERVER_PORT),
    );
    assert_eq!(ttl, 63, "host routing decrements the TTL once");
    // A pod on another node: not this node's to redirect.
    let before = stat(&dp, "host_routed");
    let dst = SocketAddr::new(remote.address(Family::V4).unwrap(), SERVER_PORT);
    let out = probe(&client.netns, dst, Protocol::Tcp, TIMEOUT).expect("probe");
    assert_eq!(answered(&out).0, remote.name);
    assert_eq!(
        stat(&dp, "host_routed"),
        before,
        "the other node's pod goes through the stack"
    );
    // A source that is not the sending pod's: the stack's reverse-path filter decides.
    let before = stat(&dp, "host_routed");
    let (IpAddr::V4(to), IpAddr::V4(other_pod)) = (
        peer.address(Family::V4).unwrap(),
        remote.address(Family::V4).unwrap(),
    ) else {
        unreachable!("IPv4 addresses")
    };
    send_raw_udp(&client.netns, other_pod, to, SERVER_PORT);
    assert_eq!(
        stat(&dp, "host_routed"),
        before,
        "a spoofed source is not host-routed"
    );

    // A UDP datagram in IPv4 fragments while the node's conntrack reassembles: the
    // fragments must all take the stack (a first fragment sent past it would leave the rest
    // waiting there for it).
    for family in [Family::V4, Family::V6] {
        iptables(family, "-D");
    }
    let conntrack = node
        .exec(
            "iptables",
            &[
                "-A",
                "FORWARD",
                "-m",
                "conntrack",
                "--ctstate",
                "NEW,ESTABLISHED",
                "-j",
                "ACCEPT",
            ],
        )
        .expect("run iptables");
    assert!(
        conntrack.status.success(),
        "{}",
        String::from_utf8_lossy(&conntrack.stderr)
    );
    let dst = SocketAddr::new(peer.address(Family::V4).unwrap(), SERVER_PORT);
    let answer = client
        .netns
        .run(move || {
            let s = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
            s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
            s.send_to(&[b'x'; 4000], dst).expect("send 4000 bytes");
            let mut buf = [0u8; 512];
            s.recv_from(&mut buf).map(|(n, _)| n)
        })
        .expect("in the namespace");
    assert!(
        answer.is_ok(),
        "a fragmented datagram reaches the peer: {answer:?}"
    );
    let out = node
        .exec("iptables", &["-F", "FORWARD"])
        .expect("run iptables");
    assert!(out.status.success());
    for family in [Family::V4, Family::V6] {
        iptables(family, "-I");
    }

    // A dataplane without host routing: the stack forwards, so the rule drops.
    drop(dp);
    let mut dp = EbpfDataplane::new(config(&lab, "hr", 0)).expect("reload");
    dp.apply(&lab.desired_state(0)).expect("apply");
    let dst = SocketAddr::new(peer.address(Family::V4).unwrap(), SERVER_PORT);
    let out = probe(
        &client.netns,
        dst,
        Protocol::Tcp,
        Duration::from_millis(500),
    )
    .expect("probe");
    assert!(
        matches!(out, ProbeOutcome::Timeout),
        "without host routing the FORWARD rule drops: {out:?}"
    );
    for family in [Family::V4, Family::V6] {
        iptables(family, "-D");
    }
    let out = probe(&client.netns, dst, Protocol::Tcp, TIMEOUT).expect("probe");
    assert_eq!(
        answered(&out).0,
        peer.name,
        "and without the rule it passes"
    );
    dp.reset().expect("reset");
}

/// Sends one UDP datagram from inside `ns` with IPv4 source `from` (any address: a raw
/// socket writes the header itself) to `to:port`.
fn send_raw_udp(ns: &dataplane_testkit::NetNs, from: Ipv4Addr, to: Ipv4Addr, port: u16) {
    use nix::sys::socket::{
        sendto, socket, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn,
    };
    ns.run(move || {
        let fd = socket(
            AddressFamily::Inet,
            SockType::Raw,
            SockFlag::empty(),
            SockProtocol::Raw,
        )
        .expect("raw socket");
        let payload = b"spoofed\n";
        let total = u16::try_from(20 + 8 + payload.len()).expect("small packet");
        let mut pkt = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
        pkt[2..4].copy_from_slice(&total.to_be_bytes());
        pkt.extend_from_slice(&from.octets());
        pkt.extend_from_slice(&to.octets());
        pkt.extend_from_slice(&40_000u16.to_be_bytes());
        pkt.extend_from_slice(&port.to_be_bytes());
        pkt.extend_from_slice(&(total - 20).to_be_bytes());
        pkt.extend_from_slice(&[0, 0]); // no UDP checksum (allowed over IPv4)
        pkt.extend_from_slice(payload);
        let dst = SockaddrIn::from(std::net::SocketAddrV4::new(to, 0));
        let sent = sendto(fd.as_raw_fd(), &pkt, &dst, MsgFlags::empty()).expect("sendto");
        assert_eq!(sent, pkt.len());
    })
    .expect("in the namespace");
}
