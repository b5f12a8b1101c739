//! The smallest embedding: build a desired state in code, validate it, and see what changes
//! when a backend is added. With the `ebpf` or `nft` feature, hand it to a backend's `apply`.
//!
//! Run: `cargo run --example embed`

use std::net::IpAddr;

use dataplane::{
    diff, evaluate, validate, Backend, DesiredState, Entry, Interfaces, Node, ObjectName, Packet,
    Protocol, Service, ServicePort,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ip = |s: &str| s.parse::<IpAddr>();
    let node = Node {
        name: "node-a".into(),
        addresses: vec![ip("172.18.0.10")?],
        pod_cidrs: vec!["10.244.0.0/24".parse()?],
        cluster_cidrs: vec!["10.244.0.0/16".parse()?],
        service_cidrs: vec!["10.96.0.0/12".parse()?],
        node_port_range: dataplane::PortRange::default(),
        interfaces: Interfaces {
            uplink: "eth0".into(),
        },
        masquerade: dataplane::Masquerade::default(),
        mtu: 1500,
        external_mode: dataplane::ExternalMode::Snat,
    };
    let mut web = Service::new(ObjectName::new("default", "web"));
    web.cluster_ips = vec![ip("10.96.0.10")?];
    web.ports = vec![ServicePort {
        name: "http".into(),
        protocol: Protocol::Tcp,
        port: 80,
        target_port: 8080,
        node_port: None,
    }];
    web.backends = vec![Backend::new(ip("10.244.0.11")?)];

    let before = DesiredState::new(node);
    let mut after = before.clone();
    after.services.push(web);
    validate(&after)?;
    println!("changes: {} object(s)", diff(&before, &after).len());

    let packet = Packet {
        protocol: Protocol::Tcp,
        source: "10.244.0.12:40000".parse()?,
        destination: "10.96.0.10:80".parse()?,
    };
    let verdict = evaluate(
        &after,
        &packet,
        &Entry::FromPod(ObjectName::new("default", "client")),
    );
    println!("{packet:?} -> {verdict:?}");
    Ok(())
}
