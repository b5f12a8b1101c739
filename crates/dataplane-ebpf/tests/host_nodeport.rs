//! The node connecting to its own NodePorts: `dp_to_lo` on lo's egress.
//!
//! ```text
//!   host 172.18.0.2:40000 -> 172.18.0.2:30080 --lo--> [dp_to_lo] DNAT (+ SNAT to the node)
//!        |                                               | redirect: FIB (remote) / dp_local
//!        |                                               v
//!        |                                   eth0 -> 10.244.1.20 (node-b)   lxc0 -> 10.244.0.10
//!        |                                               |                        |
//!        +<-- lo ingress <-- [dp_from_uplink] reply <----+   [dp_from_pod] reply <+
//! ```
//! Per-packet fixtures (BPF_PROG_TEST_RUN; a test run's skb is on lo, as `dp_to_lo`'s are),
//! the attachment's life cycle, and real traffic in the lab.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use common::{
    answered, backend, eth, hex, node_a, require_root, PinDirs, TestNode, TCP_ACK, TCP_SYN,
};
use dataplane_core::{
    Backend, Dataplane, DesiredState, Endpoint, ObjectName, Protocol, Service, ServicePort,
    TrafficPolicy,
};
use dataplane_ebpf::maps::{Addr, Be16, CtEntry, CtKey, CT_F_LOOPBACK, CT_F_REV, CT_F_SNAT};
use dataplane_ebpf::{AttachMode, EbpfConfig, EbpfDataplane, Hook};
use dataplane_testkit::{probe, serve, Family, Lab, LabSpec, ProbeOutcome, SERVER_PORT};

const OK: u32 = 0;
const REDIRECT: u32 = 7;
const ZERO_MAC: [u8; 6] = [0; 6];
const NODE: &str = "172.18.0.2";
const NODE6: &str = "fd00:18::2";

fn port(protocol: Protocol, port: u16, target: u16, node_port: u16) -> ServicePort {
    ServicePort {
        name: format!("{}-{port}", protocol.to_string().to_lowercase()),
        protocol,
        port,
        target_port: target,
        node_port: Some(node_port),
    }
}

fn node_port_service(
    name: &str,
    cluster_ips: &[&str],
    ports: Vec<ServicePort>,
    backends: Vec<Backend>,
) -> Service {
    let mut s = Service::new(ObjectName::new("default", name));
    s.cluster_ips = cluster_ips.iter().map(|ip| ip.parse().unwrap()).collect();
    s.ports = ports;
    s.backends = backends;
    s
}

/// node-a with a pod on `lxc0` (10.244.0.10, `fd00:244::10`) and NodePorts:
/// 30080/TCP + 30053/UDP to node-b's 10.244.1.20, 30081 to the local pod (both families),
/// 30082 (externalTrafficPolicy Local) and 30083 (internalTrafficPolicy Local) to node-b's pod
/// only, 30084 without endpoints.
fn scene() -> DesiredState {
    let remote = || vec![backend("10.244.1.20", "node-b")];
    let np = node_port_service(
        "np",
        &["10.96.0.30"],
        vec![
            port(Protocol::Tcp, 80, 8080, 30080),
            port(Protocol::Udp, 53, 5353, 30053),
        ],
        remote(),
    );
    let local = node_port_service(
        "np-local",
        &["10.96.0.31", "fd00:96::31"],
        vec![port(Protocol::Tcp, 80, 8080, 30081)],
        vec![
            backend("10.244.0.10", "node-a"),
            backend("fd00:244::10", "node-a"),
        ],
    );
    let mut etp = node_port_service(
        "etp-local",
        &["10.96.0.32"],
        vec![port(Protocol::Tcp, 80, 8080, 30082)],
        remote(),
    );
    etp.external_traffic_policy = TrafficPolicy::Local;
    let mut itp = node_port_service(
        "itp-local",
        &["10.96.0.33"],
        vec![port(Protocol::Tcp, 80, 8080, 30083)],
        remote(),
    );
    itp.internal_traffic_policy = TrafficPolicy::Local;
    let empty = node_port_service(
        "empty",
        &["10.96.0.34"],
        vec![port(Protocol::Tcp, 80, 8080, 30084)],
        vec![],
    );
    let mut st = DesiredState::new(node_a());
    st.services = vec![np, local, etp, itp, empty];
    st.endpoints = vec![Endpoint {
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
    st
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The test node: a pod veth `lxc0`, node-b's pod CIDR routed via a permanent neighbour.
fn test_node(tag: &str) -> TestNode {
    let n = TestNode::new(tag);
    let ns = n.name.as_str();
    ip(&[
        "-n", ns, "link", "add", "lxc0", "type", "veth", "peer", "name", "lxc0p",
    ]);
    ip(&["-n", ns, "link", "set", "lxc0", "up"]);
    ip(&["-n", ns, "link", "set", "lo", "up"]);
    n.route_via_neighbour(
        "02:00:00:00:00:aa",
        "10.244.1.0/24",
        "172.18.0.3",
        "02:00:00:00:00:bb",
    );
    n
}

/// A packet the host sends over lo (lo's MAC addresses are all zeros).
fn lo() -> common::PacketBuilder {
    eth().macs(ZERO_MAC, ZERO_MAC)
}

fn run(dp: &mut EbpfDataplane, hook: Hook, input: &[u8], verdict: u32, output: &[u8], what: &str) {
    let r = dp.run_packet(hook, input, 1).expect("test run");
    assert_eq!(r.verdict, verdict, "{what}: verdict");
    assert_eq!(
        hex(&r.output),
        hex(output),
        "{what}: output bytes (left: got, right: expected)"
    );
}

fn ct_key(src: &str, sport: u16, dst: &str, dport: u16, proto: Protocol) -> CtKey {
    let s: IpAddr = src.parse().unwrap();
    CtKey {
        saddr: Addr::new(s),
        daddr: Addr::new(dst.parse().unwrap()),
        sport: Be16::new(sport),
        dport: Be16::new(dport),
        proto: proto.number(),
        family: dataplane_ebpf::maps::family_of(&s),
        pad0: 0,
        pad: 0,
    }
}

/// The conntrack entry at `key`, read from the pinned map.
fn ct_entry(pin_dir: &Path, key: &CtKey) -> Option<CtEntry> {
    let data = MapData::from_pin(pin_dir.join("dp_ct")).expect("pinned dp_ct");
    let map: BpfHashMap<MapData, CtKey, CtEntry> =
        BpfHashMap::try_from(Map::LruHashMap(data)).expect("dp_ct as a hash map");
    map.get(key, 0).ok()
}

fn src_port(out: &[u8]) -> u16 {
    u16::from_be_bytes([out[34], out[35]])
}

#[test]
#[allow(clippy::too_many_lines)] // one scene, the whole path of each kind of connection
fn host_to_own_node_port_fixtures() {
    if !require_root("host_to_own_node_port_fixtures") {
        return;
    }
    let n = test_node("hnp");
    let mut dp = n.dataplane();
    dp.apply(&scene()).expect("apply");

    // Remote backend, TCP: DNAT, the source is already the node's address and its port is
    // free towards the backend (kept); the TTL is the host's (not forwarded).
    let syn = lo().ip(NODE, NODE).tcp(40000, 30080, TCP_SYN).build();
    let translated = lo()
        .ip(NODE, "10.244.1.20")
        .tcp(40000, 8080, TCP_SYN)
        .build();
    run(
        &mut dp,
        Hook::ToLo,
        &syn,
        REDIRECT,
        &translated,
        "SYN to the own NodePort",
    );
    // Redirected out of eth0, it passes dp_to_uplink untouched: not translated twice.
    run(
        &mut dp,
        Hook::ToUplink,
        &translated,
        OK,
        &translated,
        "translated SYN on the uplink's egress",
    );
    let fwd = ct_entry(&n.pin_dir, &ct_key(NODE, 40000, NODE, 30080, Protocol::Tcp))
        .expect("forward entry");
    assert_eq!(
        fwd.flags & (CT_F_LOOPBACK | CT_F_SNAT | CT_F_REV),
        CT_F_LOOPBACK | CT_F_SNAT,
        "forward entry: masqueraded, from lo"
    );
    let rev = ct_entry(
        &n.pin_dir,
        &ct_key("10.244.1.20", 8080, NODE, 40000, Protocol::Tcp),
    )
    .expect("reverse entry");
    assert_eq!(
        rev.flags & (CT_F_LOOPBACK | CT_F_SNAT | CT_F_REV),
        CT_F_LOOPBACK | CT_F_SNAT | CT_F_REV,
        "reverse entry"
    );
    assert!(
        dp.flows()
            .unwrap()
            .iter()
            .any(|f| f.client == sa(NODE, 40000)
                && f.frontend == sa(NODE, 30080)
                && f.backend == sa("10.244.1.20", 8080)),
        "flows() shows the connection: {:?}",
        dp.flows().unwrap()
    );
    // The reply from node-b, reverse-translated, goes up through lo (MACs: lo's).
    let reply = eth()
        .ip("10.244.1.20", NODE)
        .tcp(8080, 40000, TCP_SYN | TCP_ACK)
        .build();
    run(
        &mut dp,
        Hook::FromUplink,
        &reply,
        REDIRECT,
        &lo()
            .ip(NODE, NODE)
            .tcp(30080, 40000, TCP_SYN | TCP_ACK)
            .build(),
        "reply from the remote backend",
    );
    run(
        &mut dp,
        Hook::ToLo,
        &lo().ip(NODE, NODE).tcp(40000, 30080, TCP_ACK).build(),
        REDIRECT,
        &lo()
            .ip(NODE, "10.244.1.20")
            .tcp(40000, 8080, TCP_ACK)
            .build(),
        "established: translated from its entry",
    );

    // UDP.
    run(
        &mut dp,
        Hook::ToLo,
        &lo().ip(NODE, NODE).udp(40053, 30053).payload(b"q").build(),
        REDIRECT,
        &lo()
            .ip(NODE, "10.244.1.20")
            .udp(40053, 5353)
            .payload(b"q")
            .build(),
        "UDP to the own NodePort",
    );
    run(
        &mut dp,
        Hook::FromUplink,
        &eth()
            .ip("10.244.1.20", NODE)
            .udp(5353, 40053)
            .payload(b"a")
            .build(),
        REDIRECT,
        &lo().ip(NODE, NODE).udp(30053, 40053).payload(b"a").build(),
        "UDP reply",
    );

    // A backend on this node: straight to its veth; its reply up through lo.
    run(
        &mut dp,
        Hook::ToLo,
        &lo().ip(NODE, NODE).tcp(40001, 30081, TCP_SYN).build(),
        REDIRECT,
        &lo()
            .ip(NODE, "10.244.0.10")
            .tcp(40001, 8080, TCP_SYN)
            .build(),
        "to a local backend",
    );
    run(
        &mut dp,
        Hook::FromPod,
        &eth()
            .ip("10.244.0.10", NODE)
            .tcp(8080, 40001, TCP_SYN | TCP_ACK)
            .build(),
        REDIRECT,
        &lo()
            .ip(NODE, NODE)
            .tcp(30081, 40001, TCP_SYN | TCP_ACK)
            .build(),
        "local backend's reply",
    );
    run(
        &mut dp,
        Hook::ToLo,
        &lo().ip(NODE6, NODE6).tcp(40002, 30081, TCP_SYN).build(),
        REDIRECT,
        &lo()
            .ip(NODE6, "fd00:244::10")
            .tcp(40002, 8080, TCP_SYN)
            .build(),
        "IPv6 to a local backend",
    );
    run(
        &mut dp,
        Hook::FromPod,
        &eth()
            .ip("fd00:244::10", NODE6)
            .tcp(8080, 40002, TCP_SYN | TCP_ACK)
            .build(),
        REDIRECT,
        &lo()
            .ip(NODE6, NODE6)
            .tcp(30081, 40002, TCP_SYN | TCP_ACK)
            .build(),
        "IPv6 reply",
    );

    // Traffic policies Local: the host is no external client (cluster-wide backends), nor
    // does internalTrafficPolicy concern a NodePort.
    for (np, sport, what) in [
        (30082, 40003, "externalTrafficPolicy Local"),
        (30083, 40013, "internalTrafficPolicy Local"),
    ] {
        run(
            &mut dp,
            Hook::ToLo,
            &lo().ip(NODE, NODE).tcp(sport, np, TCP_SYN).build(),
            REDIRECT,
            &lo()
                .ip(NODE, "10.244.1.20")
                .tcp(sport, 8080, TCP_SYN)
                .build(),
            what,
        );
    }

    // No endpoints: refused with a RST (reject.h), sent back up through lo.
    let r = dp
        .run_packet(
            Hook::ToLo,
            &lo().ip(NODE, NODE).tcp(40004, 30084, TCP_SYN).build(),
            1,
        )
        .expect("run");
    assert_eq!(r.verdict, REDIRECT, "reject");
    assert_eq!(r.output[23], 6, "TCP: {}", hex(&r.output));
    assert_eq!(
        (
            src_port(&r.output),
            u16::from_be_bytes([r.output[36], r.output[37]])
        ),
        (30084, 40004),
        "from the NodePort to the client"
    );
    assert_ne!(r.output[47] & 0x04, 0, "RST: {}", hex(&r.output));

    // Everything else on lo goes on untouched.
    for (input, what) in [
        (
            lo().ip("127.0.0.1", "127.0.0.1")
                .tcp(40005, 30080, TCP_SYN)
                .build(),
            "127.0.0.1 at a NodePort number",
        ),
        (
            lo().ip("::1", "::1").udp(40005, 30053).build(),
            "::1 at a NodePort number",
        ),
        (
            lo().ip("127.0.0.1", NODE)
                .tcp(40005, 30080, TCP_SYN)
                .build(),
            "a client bound to 127.0.0.1",
        ),
        (
            lo().ip(NODE, NODE).tcp(40005, 22, TCP_SYN).build(),
            "the node's address, no service port",
        ),
        (
            lo().ip(NODE, NODE).tcp(30080, 40000, TCP_ACK).build(),
            "a local server's answer from a NodePort number",
        ),
    ] {
        run(&mut dp, Hook::ToLo, &input, OK, &input, what);
    }

    // SNAT: the host already talks to the backend from port 40010 (ClusterIP, through the
    // uplink); a connection to the own NodePort from the same port gets another one towards
    // the backend, and its reply is translated back to 40010.
    let to_cip = eth().ip(NODE, "10.96.0.30").tcp(40010, 80, TCP_SYN).build();
    let r = dp.run_packet(Hook::ToUplink, &to_cip, 1).expect("run");
    assert_eq!(
        src_port(&r.output),
        40010,
        "ClusterIP from the host: port kept"
    );
    let r = dp
        .run_packet(
            Hook::ToLo,
            &lo().ip(NODE, NODE).tcp(40010, 30080, TCP_SYN).build(),
            1,
        )
        .expect("run");
    assert_eq!(r.verdict, REDIRECT);
    let port = src_port(&r.output);
    assert_ne!(
        port, 40010,
        "source port taken towards the backend: another one"
    );
    assert_eq!(
        &r.output[26..30],
        &[172, 18, 0, 2],
        "source: the node address"
    );
    run(
        &mut dp,
        Hook::FromUplink,
        &eth()
            .ip("10.244.1.20", NODE)
            .tcp(8080, port, TCP_SYN | TCP_ACK)
            .build(),
        REDIRECT,
        &lo()
            .ip(NODE, NODE)
            .tcp(30080, 40010, TCP_SYN | TCP_ACK)
            .build(),
        "reply to the SNAT port",
    );
}

fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// `net.ipv4.conf.lo.accept_local` in the node's namespace.
fn accept_local(n: &TestNode) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", &n.name, "cat"])
        .arg("/proc/sys/net/ipv4/conf/lo/accept_local")
        .output()
        .expect("ip netns exec runs");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn lo_attachment_is_pinned_adopted_and_removed() {
    if !require_root("lo_attachment_is_pinned_adopted_and_removed") {
        return;
    }
    let n = test_node("hnpa");
    assert_eq!(accept_local(&n), "0");
    let mut cfg = n.config();
    cfg.keep_attachments_on_drop = true;
    let mut dp = EbpfDataplane::new(cfg.clone()).expect("load");
    dp.apply(&scene()).expect("apply");
    assert_eq!(common::tcx_programs(&n, "lo", true), vec!["dp_to_lo"]);
    assert_eq!(accept_local(&n), "1", "replies through lo need it");
    assert!(n.pin_dir.join("links/to-lo@lo").exists());
    drop(dp);
    assert_eq!(
        common::tcx_programs(&n, "lo", true),
        vec!["dp_to_lo"],
        "kept on a kept drop"
    );
    assert_eq!(accept_local(&n), "1", "kept with the program");
    let mut dp = EbpfDataplane::new(cfg).expect("adopt");
    assert_eq!(
        common::tcx_programs(&n, "lo", true),
        vec!["dp_to_lo"],
        "adopted, not attached twice"
    );
    dp.apply(&scene()).expect("reconcile");
    assert_eq!(common::tcx_programs(&n, "lo", true), vec!["dp_to_lo"]);
    dp.reset().expect("reset");
    assert!(
        common::tcx_programs(&n, "lo", true).is_empty(),
        "reset detaches"
    );
    assert_eq!(accept_local(&n), "0", "reset turns it back off");

    // A value the operator set is theirs: left on.
    n.sysctl("net/ipv4/conf/lo/accept_local", "1");
    let mut dp = n.dataplane();
    dp.apply(&scene()).expect("apply");
    drop(dp);
    assert!(
        common::tcx_programs(&n, "lo", true).is_empty(),
        "dropped: detached"
    );
    assert_eq!(accept_local(&n), "1", "not ours to turn off");
    n.sysctl("net/ipv4/conf/lo/accept_local", "0");

    // clsact fallback.
    let mut cfg = n.config();
    cfg.attach_mode = AttachMode::Clsact;
    cfg.keep_attachments_on_drop = true;
    let mut dp = EbpfDataplane::new(cfg.clone()).expect("load");
    dp.apply(&scene()).expect("apply");
    assert_eq!(common::clsact_filters(&n, "lo", true, "dp_to_lo"), 1);
    drop(dp);
    let mut dp = EbpfDataplane::new(cfg).expect("adopt");
    dp.apply(&scene()).expect("reconcile");
    assert_eq!(
        common::clsact_filters(&n, "lo", true, "dp_to_lo"),
        1,
        "replaced in place"
    );
    dp.reset().expect("reset");
    assert_eq!(common::clsact_filters(&n, "lo", true, "dp_to_lo"), 0);
    assert_eq!(accept_local(&n), "0");
}

const TIMEOUT: Duration = Duration::from_secs(2);

fn lab_backends(lab: &Lab, node: usize) -> Vec<Backend> {
    lab.pods_on(node)
        .flat_map(|p| {
            [Family::V4, Family::V6].map(|f| {
                let mut b = Backend::new(p.address(f).expect("dual-stack pod"));
                b.node_name = Some(lab.node(node).name.as_str().into());
                b
            })
        })
        .collect()
}

/// Dual-stack NodePort services (TCP and UDP on the same NodePort): `np-local` to node 0's
/// pods (30081), `np-remote` to node 1's (30080), `etp-local` / `itp-local` with
/// externalTrafficPolicy / internalTrafficPolicy Local to node 1's (30082, 30083).
fn lab_services(lab: &Lab) -> Vec<Service> {
    let svc = |name: &str, i: u8, np: u16, node: usize| {
        let lab_port = |protocol: Protocol| ServicePort {
            name: protocol.to_string().to_lowercase(),
            protocol,
            port: 80,
            target_port: SERVER_PORT,
            node_port: Some(np),
        };
        let mut s = Service::new(ObjectName::new("default", name));
        s.cluster_ips = vec![
            format!("10.96.0.{i}").parse().unwrap(),
            format!("fd00:96::{i}").parse().unwrap(),
        ];
        s.ports = vec![lab_port(Protocol::Tcp), lab_port(Protocol::Udp)];
        s.backends = lab_backends(lab, node);
        s
    };
    let mut etp = svc("etp-local", 42, 30082, 1);
    etp.external_traffic_policy = TrafficPolicy::Local;
    let mut itp = svc("itp-local", 43, 30083, 1);
    itp.internal_traffic_policy = TrafficPolicy::Local;
    vec![
        svc("np-remote", 40, 30080, 1),
        svc("np-local", 41, 30081, 0),
        etp,
        itp,
    ]
}

/// Real traffic: node 0 connects to its own addresses at NodePorts, TCP and UDP, IPv4 and
/// IPv6; the backend (on node 0 or node 1 as the service says) sees node 0's address.
#[test]
fn host_reaches_its_own_node_ports() {
    if !require_root("host_reaches_its_own_node_ports") {
        return;
    }
    let lab = Lab::new(LabSpec {
        nodes: 2,
        pods_per_node: 2,
        external_clients: 0,
        ipv6: true,
    })
    .expect("lab");
    let pin = |i: usize| {
        std::path::PathBuf::from(format!("/sys/fs/bpf/dpe-hnp-{}-n{i}", std::process::id()))
    };
    let _pins = PinDirs((0..2).map(pin).collect());
    let dps: Vec<EbpfDataplane> = (0..2)
        .map(|i| {
            let _ = std::fs::remove_dir_all(pin(i));
            let mut c = EbpfConfig::new(pin(i));
            c.netns = Some(lab.node(i).netns.path().to_owned());
            let mut dp = EbpfDataplane::new(c).expect("load");
            let mut st = lab.desired_state(i);
            st.services = lab_services(&lab);
            dp.apply(&st).expect("apply");
            dp
        })
        .collect();
    let host = &lab.node(0).netns;
    let pods_on =
        |node: usize| -> Vec<String> { lab.pods_on(node).map(|p| p.name.clone()).collect() };
    for family in [Family::V4, Family::V6] {
        let node0 = lab.node(0).address(family).expect("dual-stack node");
        for (np, node, what) in [
            (30080, 1, "backends on another node"),
            (30081, 0, "backends on this node"),
            (30082, 1, "externalTrafficPolicy Local"),
            (30083, 1, "internalTrafficPolicy Local"),
        ] {
            for proto in [Protocol::Tcp, Protocol::Udp] {
                let out = probe(host, SocketAddr::new(node0, np), proto, TIMEOUT).expect("probe");
                let (backend, seen) = match out {
                    ProbeOutcome::Answered { .. } => answered(&out),
                    other => panic!(
                        "{family:?} {proto} {what}: {other:?}; node 0: {:?}, flows {:?}",
                        dps[0].stats(),
                        dps[0].flows()
                    ),
                };
                assert!(
                    pods_on(node).contains(&backend),
                    "{family:?} {proto} {what}: answered by {backend}"
                );
                assert_eq!(seen, node0, "{family:?} {proto} {what}: the node's address");
            }
        }
    }
    // The node's own servers on its addresses are left alone.
    let _server = serve(host, "host-0", 7777).expect("host server");
    for family in [Family::V4, Family::V6] {
        let node0 = lab.node(0).address(family).unwrap();
        for proto in [Protocol::Tcp, Protocol::Udp] {
            let out = probe(host, SocketAddr::new(node0, 7777), proto, TIMEOUT).expect("probe");
            let (backend, seen) = answered(&out);
            assert_eq!(backend, "host-0", "{family:?} {proto}: a local server");
            assert_eq!(seen, node0);
        }
    }
}
