//! Service flows from the kernel's connection tracking table (`/proc/net/nf_conntrack`).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use dataplane_core::{DesiredState, Flow, ObjectName, Protocol};

/// Frontend (address, port, protocol) → service, for every frontend of `state`.
pub fn frontends(state: &DesiredState) -> BTreeMap<(SocketAddr, Protocol), ObjectName> {
    let mut out = BTreeMap::new();
    for s in &state.services {
        for p in &s.ports {
            let ips = s
                .cluster_ips
                .iter()
                .chain(&s.external_ips)
                .chain(&s.load_balancer_ips);
            for ip in ips {
                out.insert((SocketAddr::new(*ip, p.port), p.protocol), s.name.clone());
            }
            if let Some(np) = p.node_port {
                for ip in &state.node.addresses {
                    out.insert((SocketAddr::new(*ip, np), p.protocol), s.name.clone());
                }
            }
        }
    }
    out
}

/// Parses `/proc/net/nf_conntrack` text into the flows whose original destination is a
/// service frontend and that were destination-NATed.
pub fn parse(text: &str, frontends: &BTreeMap<(SocketAddr, Protocol), ObjectName>) -> Vec<Flow> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let Some(protocol) = words.nth(2).and_then(Protocol::from_name) else {
            continue;
        };
        let mut addrs: Vec<IpAddr> = Vec::new();
        let mut ports: Vec<u16> = Vec::new();
        for w in line.split_whitespace() {
            if let Some(v) = w.strip_prefix("src=").or_else(|| w.strip_prefix("dst=")) {
                if let Ok(ip) = v.parse() {
                    addrs.push(ip);
                }
            } else if let Some(v) = w
                .strip_prefix("sport=")
                .or_else(|| w.strip_prefix("dport="))
            {
                if let Ok(p) = v.parse() {
                    ports.push(p);
                }
            }
        }
        if addrs.len() < 4 || ports.len() < 4 {
            continue;
        }
        let client = SocketAddr::new(addrs[0], ports[0]);
        let frontend = SocketAddr::new(addrs[1], ports[1]);
        let backend = SocketAddr::new(addrs[2], ports[2]);
        if backend == frontend {
            continue;
        }
        let Some(service) = frontends.get(&(frontend, protocol)) else {
            continue;
        };
        out.push(Flow {
            protocol,
            client,
            frontend,
            backend,
            service: Some(service.clone()),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_dnat_entry_and_skips_others() {
        let text = "ipv4     2 tcp      6 117 ESTABLISHED src=10.244.0.2 dst=10.96.0.10 sport=40000 dport=80 src=10.244.1.5 dst=10.244.0.2 sport=8080 dport=40000 [ASSURED] mark=0 zone=0 use=2\n\
                    ipv4     2 udp      17 29 src=10.244.0.2 dst=8.8.8.8 sport=5353 dport=53 [UNREPLIED] src=8.8.8.8 dst=10.244.0.2 sport=53 dport=5353 mark=0 zone=0 use=2\n";
        let mut fe = BTreeMap::new();
        let name = ObjectName::new("default", "web");
        fe.insert(
            ("10.96.0.10:80".parse().unwrap(), Protocol::Tcp),
            name.clone(),
        );
        let flows = parse(text, &fe);
        assert_eq!(flows.len(), 1);
        assert_eq!(flows[0].backend, "10.244.1.5:8080".parse().unwrap());
        assert_eq!(flows[0].client, "10.244.0.2:40000".parse().unwrap());
        assert_eq!(flows[0].service, Some(name));
    }
}
