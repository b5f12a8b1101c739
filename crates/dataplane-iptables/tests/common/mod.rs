//! Fixtures shared by the tests of this crate.
#![allow(dead_code)]

use std::net::IpAddr;

use dataplane_core::{
    Backend, DesiredState, ExternalMode, Interfaces, LabelSelector, Masquerade, Node, ObjectName,
    Policy, PolicyType, PortRange, Protocol, Service, ServicePort, SessionAffinity, TrafficPolicy,
};

/// A NetworkPolicy denying all ingress to every pod of `default`: what the netfilter
/// backends refuse as a whole (left out, its pods would be open to everyone).
pub fn deny_all_policy() -> Policy {
    Policy {
        name: ObjectName::new("default", "deny-all"),
        pod_selector: LabelSelector::default(),
        policy_types: vec![PolicyType::Ingress],
        ingress: Vec::new(),
        egress: Vec::new(),
    }
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn backend(addr: &str, node: &str) -> Backend {
    let mut b = Backend::new(ip(addr));
    b.node_name = Some(node.into());
    b
}

pub fn port(protocol: Protocol, port: u16, target: u16, node_port: Option<u16>) -> ServicePort {
    ServicePort {
        name: format!("{}-{port}", protocol.to_string().to_lowercase()),
        protocol,
        port,
        target_port: target,
        node_port,
    }
}

/// A node like the lab's node-0, without namespaces.
pub fn node() -> Node {
    Node {
        name: "node-0".to_owned(),
        addresses: vec![ip("172.18.0.10"), ip("fd00:18::10")],
        pod_cidrs: vec![
            "10.244.0.0/24".parse().unwrap(),
            "fd00:244:0:0::/64".parse().unwrap(),
        ],
        cluster_cidrs: vec![
            "10.244.0.0/16".parse().unwrap(),
            "fd00:244::/48".parse().unwrap(),
        ],
        service_cidrs: vec!["10.96.0.0/12".parse().unwrap()],
        node_port_range: PortRange::default(),
        interfaces: Interfaces {
            uplink: "eth0".to_owned(),
        },
        masquerade: Masquerade {
            enabled: true,
            all: false,
            non_masquerade_cidrs: vec!["192.168.0.0/16".parse().unwrap()],
            all_services: false,
        },
        mtu: 1500,
        external_mode: ExternalMode::default(),
    }
}

/// Services covering every feature the renderers express.
pub fn showcase() -> DesiredState {
    let mut state = DesiredState::new(node());
    // Plain ClusterIP, TCP + UDP, one local and one remote backend.
    let mut web = Service::new(ObjectName::new("default", "web"));
    web.cluster_ips = vec![ip("10.96.0.10")];
    web.ports = vec![
        port(Protocol::Tcp, 80, 8080, None),
        port(Protocol::Udp, 53, 8080, None),
    ];
    web.backends = vec![
        backend("10.244.0.10", "node-0"),
        backend("10.244.1.10", "node-1"),
    ];
    state.services.push(web);
    // NodePort + LoadBalancer with source ranges + ExternalIP, ETP Local, weights, and a
    // backend on its own target port (a named port a rolling update moved).
    let mut lb = Service::new(ObjectName::new("prod", "shop"));
    lb.cluster_ips = vec![ip("10.96.0.20")];
    lb.load_balancer_ips = vec![ip("192.0.2.20")];
    lb.external_ips = vec![ip("198.51.100.20")];
    lb.load_balancer_source_ranges = vec!["203.0.113.0/24".parse().unwrap()];
    lb.ports = vec![port(Protocol::Tcp, 443, 8443, Some(30443))];
    lb.external_traffic_policy = TrafficPolicy::Local;
    let mut heavy = backend("10.244.0.11", "node-0");
    heavy.weight = 2;
    lb.backends = vec![heavy, backend("10.244.1.11", "node-1").with_port(9443)];
    state.services.push(lb);
    // ClientIP affinity, dual stack, SCTP.
    let mut sticky = Service::new(ObjectName::new("default", "sticky"));
    sticky.cluster_ips = vec![ip("10.96.0.30"), ip("fd00:96::30")];
    sticky.ports = vec![port(Protocol::Sctp, 9000, 9000, None)];
    sticky.session_affinity = SessionAffinity::ClientIp {
        timeout_seconds: 600,
    };
    sticky.backends = vec![
        backend("10.244.0.12", "node-0"),
        backend("fd00:244::12", "node-0"),
        backend("10.244.1.12", "node-1"),
    ];
    state.services.push(sticky);
    // No backends: reject. ITP Local with only remote backends: drop.
    let mut empty = Service::new(ObjectName::new("default", "empty"));
    empty.cluster_ips = vec![ip("10.96.0.40")];
    empty.ports = vec![port(Protocol::Tcp, 80, 8080, None)];
    state.services.push(empty);
    let mut local = Service::new(ObjectName::new("default", "local-only"));
    local.cluster_ips = vec![ip("10.96.0.50")];
    local.ports = vec![port(Protocol::Udp, 5000, 5000, None)];
    local.internal_traffic_policy = TrafficPolicy::Local;
    local.backends = vec![backend("10.244.1.13", "node-1")];
    state.services.push(local);
    state
}
pub mod lab;
pub mod policy;

/// `nft -j list table inet <table>` in `netns`, with each set's elements sorted (hash sets
/// list in their own order): set and chain name → its elements or rules as JSON text.
pub fn listing(
    netns: &dataplane_testkit::NetNs,
    table: &str,
) -> std::collections::BTreeMap<String, Vec<String>> {
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            netns.name(),
            "nft",
            "-j",
            "list",
            "table",
            "inet",
            table,
        ])
        .output()
        .expect("nft runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let l = dataplane_iptables::nft::observe::parse_listing(&String::from_utf8_lossy(&out.stdout))
        .expect("listing parses");
    let mut all = std::collections::BTreeMap::new();
    for (name, elems) in l.maps {
        let mut e: Vec<String> = elems.iter().map(|kv| format!("{kv:?}")).collect();
        e.sort();
        all.insert(format!("set {name}"), e);
    }
    for (name, rules) in l.rules {
        all.insert(
            format!("chain {name}"),
            rules.iter().map(ToString::to_string).collect(),
        );
    }
    all
}

/// Asserts that tables `a` and `b` in `netns` hold the same sets, maps and chains (but for
/// the `hairpin-` sets: their elements are only added between full syncs, and an extra one
/// is harmless, see `plan::hairpin_candidates`); `what` names the step in the message.
pub fn assert_same_tables(netns: &dataplane_testkit::NetNs, a: &str, b: &str, what: &str) {
    let (a, b) = (listing(netns, a), listing(netns, b));
    let differ: Vec<&String> = a
        .keys()
        .chain(b.keys())
        .filter(|k| !k.starts_with("set hairpin-") && a.get(*k) != b.get(*k))
        .collect();
    assert!(
        differ.is_empty(),
        "{what}: {:#?}",
        differ
            .iter()
            .map(|k| (k, a.get(*k), b.get(*k)))
            .collect::<Vec<_>>()
    );
}

/// Two nftables backends in `netns`: one on the usual table `dataplane` (for partial syncs),
/// one on table `fresh` (for full syncs of the same states), for [`assert_same_tables`].
pub fn partial_and_fresh(
    netns: &dataplane_testkit::NetNs,
) -> (
    dataplane_iptables::NftablesDataplane,
    dataplane_iptables::NftablesDataplane,
) {
    let config = |table: &str| {
        let mut c = dataplane_iptables::NetfilterConfig::nftables(Some(netns.path().to_owned()));
        table.clone_into(&mut c.name);
        c
    };
    (
        dataplane_iptables::NftablesDataplane::new(config("dataplane")),
        dataplane_iptables::NftablesDataplane::new(config("fresh")),
    )
}
