//! Synthetic states of any size, for benchmarks and scale tests.
//!
//! Deterministic: the same arguments give the same state. Service `i` gets ClusterIP
//! `10.96.x.y` (counting up from 10.96.0.10), TCP port 80 → 8080, NodePort `30000 + i` while
//! that fits the default range, and `backends` backends spread over `10.244.0.0/16`.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, LazyLock};

use crate::model::{
    Backend, DesiredState, ExternalMode, Interfaces, Masquerade, Node, ObjectName, PortRange,
    Protocol, Service, ServicePort,
};

/// A node named `node-0` with the lab's addressing.
pub fn node() -> Node {
    Node {
        name: "node-0".to_owned(),
        addresses: vec![IpAddr::V4(Ipv4Addr::new(172, 18, 0, 10))],
        pod_cidrs: vec!["10.244.0.0/24".parse().expect("literal CIDR")],
        cluster_cidrs: vec!["10.244.0.0/16".parse().expect("literal CIDR")],
        service_cidrs: vec!["10.96.0.0/12".parse().expect("literal CIDR")],
        node_port_range: PortRange::default(),
        interfaces: Interfaces {
            uplink: "eth0".to_owned(),
        },
        masquerade: Masquerade::default(),
        mtu: 1500,
        external_mode: ExternalMode::Snat,
    }
}

/// The ClusterIP of synthetic service `i`.
pub fn cluster_ip(i: usize) -> IpAddr {
    let n = 10 + i as u32;
    IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + n))
}

/// The node names backends run on: one string per node, shared, as an agent builds them.
static NODES: LazyLock<[Arc<str>; 3]> =
    LazyLock::new(|| ["node-0".into(), "node-1".into(), "node-2".into()]);

/// Synthetic service `i` with `backends` backends.
pub fn service(i: usize, backends: usize) -> Service {
    let mut s = Service::new(ObjectName::new("bench", format!("svc-{i}")));
    s.cluster_ips = vec![cluster_ip(i)];
    let node_port = u16::try_from(30000 + i).ok().filter(|p| *p <= 32767);
    s.ports = vec![ServicePort {
        name: String::new(),
        protocol: Protocol::Tcp,
        port: 80,
        target_port: 8080,
        node_port,
    }];
    s.backends = (0..backends)
        .map(|b| {
            let n = (i * backends + b) as u32 % 65_000 + 2;
            let ip = IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 0, 0)) + n));
            let mut be = Backend::new(ip);
            be.node_name = Some(Arc::clone(&NODES[b % 3]));
            be
        })
        .collect();
    // Backend addresses repeat after 65k; keep them unique within the service.
    s.backends.dedup_by(|a, b| a.ip == b.ip);
    s
}

/// A state with `services` services of `backends` backends each.
pub fn state(services: usize, backends: usize) -> DesiredState {
    let mut st = DesiredState::new(node());
    st.services = (0..services).map(|i| service(i, backends)).collect();
    st
}
