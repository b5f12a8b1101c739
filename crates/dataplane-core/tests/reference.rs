//! The reference model: a kube-proxy-style behaviour table for `evaluate` (name, state tweak,
//! packet, entry, expected verdict) over `tests/data/reference.yaml`, unit tests of
//! `eligible_backends`, and a property check that `evaluate` and `eligible_backends` agree on
//! generated states.

mod strategies;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use dataplane_core::{
    eligible_backends, evaluate, from_yaml, node_address, validate, DesiredState, Eligible, Entry,
    ExternalMode, FrontendKind, IpFamily, ObjectName, Packet, Protocol, Service, SourceSeen,
    TrafficKind, TrafficPolicy, Verdict,
};
use proptest::prelude::*;

const REFERENCE: &str = include_str!("data/reference.yaml");

/// Services: 0 `web` (ClusterIP, dual-stack), 1 `np` (NodePort 30080), 2 `lb` (LoadBalancer
/// 192.0.2.30), 3 `ext` (ExternalIP 198.51.100.40). See the YAML for the addresses.
fn base() -> DesiredState {
    from_yaml(REFERENCE).expect("tests/data/reference.yaml parses")
}

const WEB: usize = 0;
const NP: usize = 1;
const LB: usize = 2;
const EXT: usize = 3;

const NODE: &str = "172.18.0.10";
const NODE6: &str = "fd00:18::10";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn packet(protocol: Protocol, source: &str, destination: &str) -> Packet {
    Packet {
        protocol,
        source: addr(source),
        destination: addr(destination),
    }
}

fn tcp(source: &str, destination: &str) -> Packet {
    packet(Protocol::Tcp, source, destination)
}

fn udp(source: &str, destination: &str) -> Packet {
    packet(Protocol::Udp, source, destination)
}

fn from_pod(name: &str) -> Entry {
    Entry::FromPod(ObjectName::new("default", name))
}

fn forward(
    service: &str,
    frontend: FrontendKind,
    backends: &[&str],
    source: SourceSeen,
) -> Verdict {
    Verdict::Forward {
        service: ObjectName::new("default", service),
        frontend,
        backends: backends.iter().map(|b| addr(b)).collect(),
        source,
    }
}

fn masq(node: &str) -> SourceSeen {
    SourceSeen::Masqueraded(ip(node))
}

fn untouched(source: SourceSeen) -> Verdict {
    Verdict::Untouched { source }
}

fn none(_: &mut DesiredState) {}

fn net(s: &str) -> ipnetwork::IpNetwork {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// `lb` gets an IPv6 LoadBalancer IP and an IPv6 backend; its source ranges stay IPv4-only.
fn lb_dual_stack(s: &mut DesiredState) {
    let lb = &mut s.services[LB];
    lb.cluster_ips.push(ip("fd00:96::30"));
    lb.load_balancer_ips.push(ip("2001:db8:30::30"));
    let mut b = lb.backends[1].clone();
    b.ip = ip("fd00:244:1::8");
    lb.backends.push(b);
}

fn only_local_web_backend(s: &mut DesiredState) {
    s.services[WEB]
        .backends
        .retain(|b| b.ip == ip("10.244.0.5"));
}

fn v4_web_backends_terminating(s: &mut DesiredState, serving: &[&str]) {
    let serving: Vec<IpAddr> = serving.iter().map(|a| ip(a)).collect();
    for b in s.services[WEB]
        .backends
        .iter_mut()
        .filter(|b| b.ip.is_ipv4())
    {
        b.ready = false;
        b.terminating = true;
        b.serving = serving.contains(&b.ip);
    }
}

fn remove_backend(s: &mut DesiredState, service: usize, backend: &str) {
    s.services[service].backends.retain(|b| b.ip != ip(backend));
}

/// `np`'s backend 10.244.1.7 listens on 9090, its own, instead of the port's 8080.
fn np_backend_on_9090(s: &mut DesiredState) {
    for b in &mut s.services[NP].backends {
        if b.ip == ip("10.244.1.7") {
            b.port = Some(9090);
        }
    }
}

struct Case {
    name: &'static str,
    tweak: fn(&mut DesiredState),
    packet: Packet,
    entry: Entry,
    expected: Verdict,
}

const WEB_V4: [&str; 3] = ["10.244.0.5:8080", "10.244.1.5:8080", "10.244.2.5:8080"];
const NP_ALL: [&str; 2] = ["10.244.0.7:8080", "10.244.1.7:8080"];
const LB_ALL: [&str; 2] = ["10.244.0.8:8443", "10.244.1.8:8443"];
const EXT_ALL: [&str; 2] = ["10.244.0.9:8080", "10.244.1.9:8080"];

#[allow(clippy::too_many_lines)] // one row per behaviour reads better than a split table
fn cases() -> Vec<Case> {
    use FrontendKind::{ClusterIp, ExternalIp, LoadBalancer, NodePort};
    let client = || from_pod("client");
    vec![
        // --- ClusterIP from inside: internalTrafficPolicy, source preserved.
        Case {
            name: "clusterip tcp from pod: any ready v4 backend, source preserved",
            tweak: none,
            packet: tcp("10.244.0.6:40000", "10.96.0.10:80"),
            entry: client(),
            expected: forward("web", ClusterIp, &WEB_V4, SourceSeen::Client),
        },
        Case {
            name: "clusterip udp from pod: the UDP port's targetPort",
            tweak: none,
            packet: udp("10.244.0.6:40000", "10.96.0.10:53"),
            entry: client(),
            expected: forward(
                "web",
                ClusterIp,
                &["10.244.0.5:5353", "10.244.1.5:5353", "10.244.2.5:5353"],
                SourceSeen::Client,
            ),
        },
        // kube-proxy masquerades ClusterIP traffic whose source is not a pod address
        // (`! -s clusterCIDR -j KUBE-MARK-MASQ`): the node's own connections included.
        Case {
            name: "clusterip from the host: masqueraded (its source is no pod address)",
            tweak: none,
            packet: tcp("172.18.0.10:40000", "10.96.0.10:80"),
            entry: Entry::FromHost,
            expected: forward("web", ClusterIp, &WEB_V4, masq(NODE)),
        },
        Case {
            name: "clusterip from the host with a pod-network source: kept",
            tweak: none,
            packet: tcp("10.244.0.1:40000", "10.96.0.10:80"),
            entry: Entry::FromHost,
            expected: forward("web", ClusterIp, &WEB_V4, SourceSeen::Client),
        },
        // kube-proxy has no local detector for a family without cluster CIDRs: nothing is
        // masqueraded for being outside them.
        Case {
            name: "no ipv6 cluster CIDR: a pod keeps its address on an ipv6 clusterip",
            tweak: |s| s.node.cluster_cidrs.retain(ipnetwork::IpNetwork::is_ipv4),
            packet: tcp("[fd00:244::6]:40000", "[fd00:96::10]:80"),
            entry: client(),
            expected: forward("web", ClusterIp, &["[fd00:244:1::5]:8080"], SourceSeen::Client),
        },
        Case {
            name: "no ipv6 cluster CIDR: the host keeps its address on an ipv6 clusterip",
            tweak: |s| s.node.cluster_cidrs.retain(ipnetwork::IpNetwork::is_ipv4),
            packet: tcp("[fd00:18::10]:40000", "[fd00:96::10]:80"),
            entry: Entry::FromHost,
            expected: forward("web", ClusterIp, &["[fd00:244:1::5]:8080"], SourceSeen::Client),
        },
        Case {
            name: "clusterip from the host over ipv6: masqueraded to the ipv6 node address",
            tweak: none,
            packet: tcp("[fd00:18::10]:40000", "[fd00:96::10]:80"),
            entry: Entry::FromHost,
            expected: forward("web", ClusterIp, &["[fd00:244:1::5]:8080"], masq(NODE6)),
        },
        Case {
            name: "hairpin: the pod reaches itself, masqueraded to the node address",
            tweak: only_local_web_backend,
            packet: tcp("10.244.0.5:40000", "10.96.0.10:80"),
            entry: from_pod("pod-a"),
            expected: forward("web", ClusterIp, &["10.244.0.5:8080"], masq(NODE)),
        },
        Case {
            name: "clusterip on a port no service port uses: reject",
            tweak: none,
            packet: tcp("10.244.0.6:40000", "10.96.0.10:81"),
            entry: client(),
            expected: Verdict::Reject,
        },
        Case {
            name: "clusterip with the wrong protocol (UDP to a TCP port): reject",
            tweak: none,
            packet: udp("10.244.0.6:40000", "10.96.0.10:80"),
            entry: client(),
            expected: Verdict::Reject,
        },
        Case {
            name: "clusterip with the wrong protocol (SCTP): reject",
            tweak: none,
            packet: packet(Protocol::Sctp, "10.244.0.6:40000", "10.96.0.10:53"),
            entry: client(),
            expected: Verdict::Reject,
        },
        Case {
            name: "clusterip without backends: reject",
            tweak: |s| s.services[WEB].backends.clear(),
            packet: tcp("10.244.0.6:40000", "10.96.0.10:80"),
            entry: client(),
            expected: Verdict::Reject,
        },
        Case {
            name: "only terminating backends: the serving ones take new connections",
            tweak: |s| v4_web_backends_terminating(s, &["10.244.1.5", "10.244.2.5"]),
            packet: tcp("10.244.0.6:40000", "10.96.0.10:80"),
            entry: client(),
            expected: forward(
                "web",
                ClusterIp,
                &["10.244.1.5:8080", "10.244.2.5:8080"],
                SourceSeen::Client,
            ),
        },
        Case {
            name: "ready backends win over serving terminating ones",
            tweak: |s| {
                let b = &mut s.services[WEB].backends[1];
                b.ready = false;
                b.terminating = true;
            },
            packet: tcp("10.244.0.6:40000", "10.96.0.10:80"),
            entry: client(),
            expected: forward(
                "web",
                ClusterIp,
                &["10.244.0.5:8080", "10.244.2.5:8080"],
                SourceSeen::Client,
            ),
        },
        Case {
            name: "only terminating backends that no longer serve: reject",
            tweak: |s| v4_web_backends_terminating(s, &[]),
            packet: tcp("10.244.0.6:40000", "10.96.0.10:80"),
            entry: client(),
            expected: Verdict::Reject,
        },
        Case {
            name: "only backends that are not ready yet: reject",
            tweak: |s| {
                for b in &mut s.services[WEB].backends {
                    b.ready = false;
                }
            },
            packet: tcp("10.244.0.6:40000", "10.96.0.10:80"),
            entry: client(),
            expected: Verdict::Reject,
        },
        Case {
            name: "internalTrafficPolicy Local with a local backend: only it",
            tweak: |s| s.services[WEB].internal_traffic_policy = TrafficPolicy::Local,
            packet: tcp("10.244.0.6:40000", "10.96.0.10:80"),
            entry: client(),
            expected: forward("web", ClusterIp, &["10.244.0.5:8080"], SourceSeen::Client),
        },
        Case {
            name: "internalTrafficPolicy Local, backends only elsewhere: drop",
            tweak: |s| {
                s.services[WEB].internal_traffic_policy = TrafficPolicy::Local;
                remove_backend(s, WEB, "10.244.0.5");
            },
            packet: tcp("10.244.0.6:40000", "10.96.0.10:80"),
            entry: client(),
            expected: Verdict::Drop,
        },
        Case {
            name: "internalTrafficPolicy Local, no backends at all: reject",
            tweak: |s| {
                s.services[WEB].internal_traffic_policy = TrafficPolicy::Local;
                s.services[WEB].backends.clear();
            },
            packet: tcp("10.244.0.6:40000", "10.96.0.10:80"),
            entry: client(),
            expected: Verdict::Reject,
        },
        Case {
            name: "internalTrafficPolicy Local does not govern external frontends",
            tweak: |s| s.services[NP].internal_traffic_policy = TrafficPolicy::Local,
            packet: tcp("203.0.113.7:50000", "172.18.0.10:30080"),
            entry: Entry::FromUplink,
            expected: forward("np", NodePort, &NP_ALL, masq(NODE)),
        },
        // --- IPv6: only backends of the packet's family.
        Case {
            name: "ipv6 clusterip: only the ipv6 backend",
            tweak: none,
            packet: tcp("[fd00:244::6]:40000", "[fd00:96::10]:80"),
            entry: client(),
            expected: forward(
                "web",
                ClusterIp,
                &["[fd00:244:1::5]:8080"],
                SourceSeen::Client,
            ),
        },
        Case {
            name: "ipv6 clusterip without ipv6 backends: reject",
            tweak: |s| s.services[WEB].backends.retain(|b| b.ip.is_ipv4()),
            packet: tcp("[fd00:244::6]:40000", "[fd00:96::10]:80"),
            entry: client(),
            expected: Verdict::Reject,
        },
        Case {
            name: "ipv6 hairpin is masqueraded to the node's ipv6 address",
            tweak: |s| {
                let b = &mut s.services[WEB].backends[3];
                b.ip = ip("fd00:244::6");
                b.node_name = Some("node-0".into());
            },
            packet: tcp("[fd00:244::6]:40000", "[fd00:96::10]:80"),
            entry: client(),
            expected: forward("web", ClusterIp, &["[fd00:244::6]:8080"], masq(NODE6)),
        },
        // --- ClusterIP from outside the node.
        Case {
            name: "clusterip from outside the cluster: masqueraded",
            tweak: none,
            packet: tcp("172.18.0.20:50000", "10.96.0.10:80"),
            entry: Entry::FromUplink,
            expected: forward("web", ClusterIp, &WEB_V4, masq(NODE)),
        },
        Case {
            name: "clusterip from a pod on another node: source preserved",
            tweak: none,
            packet: tcp("10.244.1.33:50000", "10.96.0.10:80"),
            entry: Entry::FromUplink,
            expected: forward("web", ClusterIp, &WEB_V4, SourceSeen::Client),
        },
        // internalTrafficPolicy governs every packet received on the ClusterIP (Kubernetes
        // API docs; kube-proxy's ClusterIP rule jumps to the internal policy chain whatever the
        // source).
        Case {
            name: "clusterip from another node's pod follows internalTrafficPolicy Local",
            tweak: |s| s.services[WEB].internal_traffic_policy = TrafficPolicy::Local,
            packet: tcp("10.244.1.33:50000", "10.96.0.10:80"),
            entry: Entry::FromUplink,
            expected: forward("web", ClusterIp, &["10.244.0.5:8080"], SourceSeen::Client),
        },
        Case {
            name: "clusterip from outside the cluster, internalTrafficPolicy Local: local, masqueraded",
            tweak: |s| s.services[WEB].internal_traffic_policy = TrafficPolicy::Local,
            packet: tcp("172.18.0.20:50000", "10.96.0.10:80"),
            entry: Entry::FromUplink,
            expected: forward("web", ClusterIp, &["10.244.0.5:8080"], masq(NODE)),
        },
        Case {
            name: "clusterip from outside, internalTrafficPolicy Local, no local backend: drop",
            tweak: |s| {
                s.services[WEB].internal_traffic_policy = TrafficPolicy::Local;
                remove_backend(s, WEB, "10.244.0.5");
            },
            packet: tcp("172.18.0.20:50000", "10.96.0.10:80"),
            entry: Entry::FromUplink,
            expected: Verdict::Drop,
        },
        // --- NodePort.
        Case {
            name: "nodeport from uplink, externalTrafficPolicy Cluster: masqueraded",
            tweak: none,
            packet: tcp("203.0.113.7:50000", "172.18.0.10:30080"),
            entry: Entry::FromUplink,
            expected: forward("np", NodePort, &NP_ALL, masq(NODE)),
        },
        // --- A backend on its own target port (a named port resolving per pod).
        Case {
            name: "a backend's own port: the clusterip DNATs it there, the others to targetPort",
            tweak: np_backend_on_9090,
            packet: tcp("10.244.0.50:40000", "10.96.0.20:80"),
            entry: client(),
            expected: forward(
                "np",
                ClusterIp,
                &["10.244.0.7:8080", "10.244.1.7:9090"],
                SourceSeen::Client,
            ),
        },
        Case {
            name: "a backend's own port: so does the nodeport, with DSR too",
            tweak: |s| {
                np_backend_on_9090(s);
                s.services[NP].external_mode = Some(ExternalMode::Dsr);
            },
            packet: tcp("203.0.113.7:50000", "172.18.0.10:30080"),
            entry: Entry::FromUplink,
            expected: forward(
                "np",
                NodePort,
                &["10.244.0.7:8080", "10.244.1.7:9090"],
                SourceSeen::Client,
            ),
        },
        Case {
            name: "nodeport from uplink, externalMode Dsr: any backend, client address kept",
            tweak: |s| s.services[NP].external_mode = Some(ExternalMode::Dsr),
            packet: tcp("203.0.113.7:50000", "172.18.0.10:30080"),
            entry: Entry::FromUplink,
            expected: forward("np", NodePort, &NP_ALL, SourceSeen::Client),
        },
        Case {
            name: "node default externalMode Dsr applies to a service that does not say",
            tweak: |s| s.node.external_mode = ExternalMode::Dsr,
            packet: tcp("203.0.113.7:50000", "172.18.0.10:30080"),
            entry: Entry::FromUplink,
            expected: forward("np", NodePort, &NP_ALL, SourceSeen::Client),
        },
        Case {
            name: "a service's externalMode Snat overrides the node's Dsr default",
            tweak: |s| {
                s.node.external_mode = ExternalMode::Dsr;
                s.services[NP].external_mode = Some(ExternalMode::Snat);
            },
            packet: tcp("203.0.113.7:50000", "172.18.0.10:30080"),
            entry: Entry::FromUplink,
            expected: forward("np", NodePort, &NP_ALL, masq(NODE)),
        },
        Case {
            name: "externalMode Hybrid: DSR for TCP",
            tweak: |s| s.services[NP].external_mode = Some(ExternalMode::Hybrid),
            packet: tcp("203.0.113.7:50000", "172.18.0.10:30080"),
            entry: Entry::FromUplink,
            expected: forward("np", NodePort, &NP_ALL, SourceSeen::Client),
        },
        Case {
            name: "externalMode Hybrid: SNAT for UDP",
            tweak: |s| {
                s.services[NP].external_mode = Some(ExternalMode::Hybrid);
                s.services[NP].ports[0].protocol = Protocol::Udp;
            },
            packet: udp("203.0.113.7:50000", "172.18.0.10:30080"),
            entry: Entry::FromUplink,
            expected: forward("np", NodePort, &NP_ALL, masq(NODE)),
        },
        Case {
            name: "externalMode Dsr does not change a pod reaching a NodePort: masqueraded",
            tweak: |s| s.services[NP].external_mode = Some(ExternalMode::Dsr),
            packet: tcp("10.244.0.6:40000", "172.18.0.10:30080"),
            entry: client(),
            expected: forward("np", NodePort, &NP_ALL, masq(NODE)),
        },
        Case {
            name: "nodeport from uplink, externalTrafficPolicy Local: local backend, client kept",
            tweak: |s| s.services[NP].external_traffic_policy = TrafficPolicy::Local,
            packet: tcp("203.0.113.7:50000", "172.18.0.10:30080"),
            entry: Entry::FromUplink,
            expected: forward("np", NodePort, &["10.244.0.7:8080"], SourceSeen::Client),
        },
        Case {
            name: "nodeport, externalTrafficPolicy Local, no local backend: drop",
            tweak: |s| {
                s.services[NP].external_traffic_policy = TrafficPolicy::Local;
                remove_backend(s, NP, "10.244.0.7");
            },
            packet: tcp("203.0.113.7:50000", "172.18.0.10:30080"),
            entry: Entry::FromUplink,
            expected: Verdict::Drop,
        },
        Case {
            name: "nodeport, externalTrafficPolicy Local, local backend terminating: it serves",
            tweak: |s| {
                s.services[NP].external_traffic_policy = TrafficPolicy::Local;
                let b = &mut s.services[NP].backends[0];
                b.ready = false;
                b.terminating = true;
            },
            packet: tcp("203.0.113.7:50000", "172.18.0.10:30080"),
            entry: Entry::FromUplink,
            expected: forward("np", NodePort, &["10.244.0.7:8080"], SourceSeen::Client),
        },
        Case {
            name: "nodeport from a pod, externalTrafficPolicy Cluster: cluster-wide, masqueraded",
            tweak: none,
            packet: tcp("10.244.0.6:40000", "172.18.0.10:30080"),
            entry: client(),
            expected: forward("np", NodePort, &NP_ALL, masq(NODE)),
        },
        // kube-proxy: "short-circuit pod traffic" of an eTP:Local service's external chain to
        // the cluster chain, without the masquerade mark.
        Case {
            name: "nodeport from a pod, externalTrafficPolicy Local: cluster-wide, pod address kept",
            tweak: |s| s.services[NP].external_traffic_policy = TrafficPolicy::Local,
            packet: tcp("10.244.0.6:40000", "172.18.0.10:30080"),
            entry: client(),
            expected: forward("np", NodePort, &NP_ALL, SourceSeen::Client),
        },
        Case {
            name: "nodeport from a pod, externalTrafficPolicy Local, hairpin: masqueraded",
            tweak: |s| {
                s.services[NP].external_traffic_policy = TrafficPolicy::Local;
                remove_backend(s, NP, "10.244.1.7");
            },
            packet: tcp("10.244.0.7:40000", "172.18.0.10:30080"),
            entry: from_pod("np-0"),
            expected: forward("np", NodePort, &["10.244.0.7:8080"], masq(NODE)),
        },
        Case {
            name: "nodeport from the host, externalTrafficPolicy Local: cluster-wide, masqueraded",
            tweak: |s| s.services[NP].external_traffic_policy = TrafficPolicy::Local,
            packet: tcp("172.18.0.10:40000", "172.18.0.10:30080"),
            entry: Entry::FromHost,
            expected: forward("np", NodePort, &NP_ALL, masq(NODE)),
        },
        Case {
            name: "nodeport from the host: cluster-wide and masqueraded",
            tweak: none,
            packet: tcp("172.18.0.10:40000", "172.18.0.10:30080"),
            entry: Entry::FromHost,
            expected: forward("np", NodePort, &NP_ALL, masq(NODE)),
        },
        Case {
            name: "nodeport on the node's ipv6 address of an ipv4-only service: reject",
            tweak: none,
            packet: tcp("[2001:db8::7]:50000", "[fd00:18::10]:30080"),
            entry: Entry::FromUplink,
            expected: Verdict::Reject,
        },
        Case {
            name: "node address on a port that is no nodeport: untouched",
            tweak: none,
            packet: tcp("203.0.113.7:50000", "172.18.0.10:22"),
            entry: Entry::FromUplink,
            expected: untouched(SourceSeen::Client),
        },
        Case {
            name: "nodeport of the wrong protocol: untouched",
            tweak: none,
            packet: udp("203.0.113.7:50000", "172.18.0.10:30080"),
            entry: Entry::FromUplink,
            expected: untouched(SourceSeen::Client),
        },
        // --- LoadBalancer.
        Case {
            name: "loadbalancer from an allowed client: masqueraded",
            tweak: none,
            packet: tcp("203.0.113.7:50000", "192.0.2.30:443"),
            entry: Entry::FromUplink,
            expected: forward("lb", LoadBalancer, &LB_ALL, masq(NODE)),
        },
        Case {
            name: "loadbalancer from a client outside loadBalancerSourceRanges: drop",
            tweak: none,
            packet: tcp("198.18.0.7:50000", "192.0.2.30:443"),
            entry: Entry::FromUplink,
            expected: Verdict::Drop,
        },
        Case {
            name: "loadbalancer without source ranges: everyone",
            tweak: |s| s.services[LB].load_balancer_source_ranges.clear(),
            packet: tcp("198.18.0.7:50000", "192.0.2.30:443"),
            entry: Entry::FromUplink,
            expected: forward("lb", LoadBalancer, &LB_ALL, masq(NODE)),
        },
        Case {
            name: "loadbalancer, externalTrafficPolicy Local, allowed client: kept, local only",
            tweak: |s| s.services[LB].external_traffic_policy = TrafficPolicy::Local,
            packet: tcp("203.0.113.7:50000", "192.0.2.30:443"),
            entry: Entry::FromUplink,
            expected: forward("lb", LoadBalancer, &["10.244.0.8:8443"], SourceSeen::Client),
        },
        Case {
            name: "loadbalancer source ranges do not restrict its nodeport",
            tweak: none,
            packet: tcp("198.18.0.7:50000", "172.18.0.10:30443"),
            entry: Entry::FromUplink,
            expected: forward("lb", NodePort, &LB_ALL, masq(NODE)),
        },
        // kube-proxy checks loadBalancerSourceRanges wherever the packet comes from (its
        // firewall chain hooks prerouting and output): a pod or the node cannot bypass them.
        Case {
            name: "loadbalancer from a pod outside the source ranges: drop",
            tweak: none,
            packet: tcp("10.244.0.6:40000", "192.0.2.30:443"),
            entry: client(),
            expected: Verdict::Drop,
        },
        Case {
            name: "loadbalancer from a pod inside the source ranges: cluster-wide, masqueraded",
            tweak: |s| s.services[LB].load_balancer_source_ranges.push(net("10.244.0.0/24")),
            packet: tcp("10.244.0.6:40000", "192.0.2.30:443"),
            entry: client(),
            expected: forward("lb", LoadBalancer, &LB_ALL, masq(NODE)),
        },
        Case {
            name: "loadbalancer from the host outside the source ranges: drop",
            tweak: none,
            packet: tcp("172.18.0.10:40000", "192.0.2.30:443"),
            entry: Entry::FromHost,
            expected: Verdict::Drop,
        },
        Case {
            name: "loadbalancer from the host, a range holds the node address: allowed",
            tweak: |s| s.services[LB].load_balancer_source_ranges.push(net("172.18.0.0/24")),
            packet: tcp("172.18.0.10:40000", "192.0.2.30:443"),
            entry: Entry::FromHost,
            expected: forward("lb", LoadBalancer, &LB_ALL, masq(NODE)),
        },
        // kube-proxy's allowFromNode: the LB IP configured locally makes the node send from it.
        Case {
            name: "loadbalancer ip as the source, a range holds the node address: allowed",
            tweak: |s| s.services[LB].load_balancer_source_ranges.push(net("172.18.0.0/24")),
            packet: tcp("192.0.2.30:40000", "192.0.2.30:443"),
            entry: Entry::FromHost,
            expected: forward("lb", LoadBalancer, &LB_ALL, masq(NODE)),
        },
        Case {
            name: "loadbalancer ip as the source, no range holds a node address: drop",
            tweak: none,
            packet: tcp("192.0.2.30:40000", "192.0.2.30:443"),
            entry: Entry::FromHost,
            expected: Verdict::Drop,
        },
        // kube-proxy filters the ranges by family (MapCIDRsByIPFamily): a family without a
        // range of its own is not restricted.
        Case {
            name: "ipv6 loadbalancer with ipv4-only source ranges: unrestricted",
            tweak: lb_dual_stack,
            packet: tcp("[2001:db8:9::7]:50000", "[2001:db8:30::30]:443"),
            entry: Entry::FromUplink,
            expected: forward("lb", LoadBalancer, &["[fd00:244:1::8]:8443"], masq(NODE6)),
        },
        Case {
            name: "ipv6 loadbalancer with an ipv6 source range: other clients dropped",
            tweak: |s| {
                lb_dual_stack(s);
                s.services[LB].load_balancer_source_ranges.push(net("2001:db8:7::/48"));
            },
            packet: tcp("[2001:db8:9::7]:50000", "[2001:db8:30::30]:443"),
            entry: Entry::FromUplink,
            expected: Verdict::Drop,
        },
        Case {
            name: "ipv6 source range does not open the ipv4 loadbalancer",
            tweak: |s| {
                lb_dual_stack(s);
                s.services[LB].load_balancer_source_ranges.push(net("2001:db8:7::/48"));
            },
            packet: tcp("198.18.0.7:50000", "192.0.2.30:443"),
            entry: Entry::FromUplink,
            expected: Verdict::Drop,
        },
        // --- ExternalIP.
        Case {
            name: "externalip from uplink: masqueraded",
            tweak: none,
            packet: tcp("203.0.113.7:50000", "198.51.100.40:80"),
            entry: Entry::FromUplink,
            expected: forward("ext", ExternalIp, &EXT_ALL, masq(NODE)),
        },
        Case {
            name: "externalip, externalTrafficPolicy Local: local backend, client kept",
            tweak: |s| s.services[EXT].external_traffic_policy = TrafficPolicy::Local,
            packet: tcp("203.0.113.7:50000", "198.51.100.40:80"),
            entry: Entry::FromUplink,
            expected: forward("ext", ExternalIp, &["10.244.0.9:8080"], SourceSeen::Client),
        },
        Case {
            name: "externalip from a pod: cluster-wide, masqueraded",
            tweak: none,
            packet: tcp("10.244.0.6:40000", "198.51.100.40:80"),
            entry: client(),
            expected: forward("ext", ExternalIp, &EXT_ALL, masq(NODE)),
        },
        Case {
            name: "externalip from a pod, externalTrafficPolicy Local: cluster-wide, kept",
            tweak: |s| s.services[EXT].external_traffic_policy = TrafficPolicy::Local,
            packet: tcp("10.244.0.6:40000", "198.51.100.40:80"),
            entry: client(),
            expected: forward("ext", ExternalIp, &EXT_ALL, SourceSeen::Client),
        },
        Case {
            name: "loadbalancer from a pod, externalTrafficPolicy Local: cluster-wide, kept",
            tweak: |s| {
                s.services[LB].external_traffic_policy = TrafficPolicy::Local;
                s.services[LB].load_balancer_source_ranges.clear();
            },
            packet: tcp("10.244.0.6:40000", "192.0.2.30:443"),
            entry: client(),
            expected: forward("lb", LoadBalancer, &LB_ALL, SourceSeen::Client),
        },
        // --- Unallocated service addresses (kube-proxy nftables: "drop traffic to unallocated
        // ClusterIPs", so they do not leak to the default route).
        Case {
            name: "unallocated address in the service CIDR from a pod: drop",
            tweak: none,
            packet: tcp("10.244.0.6:40000", "10.96.0.99:80"),
            entry: client(),
            expected: Verdict::Drop,
        },
        Case {
            name: "unallocated address in the service CIDR from outside: drop",
            tweak: none,
            packet: udp("203.0.113.7:50000", "10.96.0.99:53"),
            entry: Entry::FromUplink,
            expected: Verdict::Drop,
        },
        Case {
            name: "unallocated ipv6 service address from the host: drop",
            tweak: none,
            packet: tcp("[fd00:18::10]:40000", "[fd00:96::99]:80"),
            entry: Entry::FromHost,
            expected: Verdict::Drop,
        },
        Case {
            name: "allocated clusterip, port no service uses: still reject",
            tweak: none,
            packet: udp("10.244.0.6:40000", "10.96.0.20:80"),
            entry: client(),
            expected: Verdict::Reject,
        },
        // A ClusterIP outside serviceCIDRs is served (a warning, not an error: the ServiceCIDR
        // API adds ranges at run time).
        Case {
            name: "clusterip outside the service CIDRs is served",
            tweak: |s| s.services[WEB].cluster_ips[0] = ip("10.200.0.10"),
            packet: tcp("10.244.0.6:40000", "10.200.0.10:80"),
            entry: client(),
            expected: forward("web", ClusterIp, &WEB_V4, SourceSeen::Client),
        },
        // --- masquerade.allServices (kube-proxy --masquerade-all).
        Case {
            name: "masquerade allServices: a pod to a clusterip is masqueraded",
            tweak: |s| s.node.masquerade.all_services = true,
            packet: tcp("10.244.0.6:40000", "10.96.0.10:80"),
            entry: client(),
            expected: forward("web", ClusterIp, &WEB_V4, masq(NODE)),
        },
        Case {
            name: "masquerade allServices: ipv6 clusterip masqueraded to the ipv6 node address",
            tweak: |s| s.node.masquerade.all_services = true,
            packet: tcp("[fd00:244::6]:40000", "[fd00:96::10]:80"),
            entry: client(),
            expected: forward("web", ClusterIp, &["[fd00:244:1::5]:8080"], masq(NODE6)),
        },
        Case {
            name: "masquerade allServices: another node's pod to a clusterip is masqueraded",
            tweak: |s| s.node.masquerade.all_services = true,
            packet: udp("10.244.1.33:50000", "10.96.0.10:53"),
            entry: Entry::FromUplink,
            expected: forward(
                "web",
                ClusterIp,
                &["10.244.0.5:5353", "10.244.1.5:5353", "10.244.2.5:5353"],
                masq(NODE),
            ),
        },
        Case {
            name: "masquerade allServices: a pod to an etp=local nodeport is masqueraded",
            tweak: |s| {
                s.node.masquerade.all_services = true;
                s.services[NP].external_traffic_policy = TrafficPolicy::Local;
            },
            packet: tcp("10.244.0.6:40000", "172.18.0.10:30080"),
            entry: client(),
            expected: forward("np", NodePort, &NP_ALL, masq(NODE)),
        },
        Case {
            name: "masquerade allServices: outside to an etp=local nodeport keeps the client",
            tweak: |s| {
                s.node.masquerade.all_services = true;
                s.services[NP].external_traffic_policy = TrafficPolicy::Local;
            },
            packet: tcp("203.0.113.7:50000", "172.18.0.10:30080"),
            entry: Entry::FromUplink,
            expected: forward("np", NodePort, &["10.244.0.7:8080"], SourceSeen::Client),
        },
        Case {
            name: "masquerade allServices: DSR keeps the client",
            tweak: |s| {
                s.node.masquerade.all_services = true;
                s.services[NP].external_mode = Some(ExternalMode::Dsr);
            },
            packet: tcp("203.0.113.7:50000", "172.18.0.10:30080"),
            entry: Entry::FromUplink,
            expected: forward("np", NodePort, &NP_ALL, SourceSeen::Client),
        },
        Case {
            name: "masquerade allServices does not masquerade pod egress",
            tweak: |s| {
                s.node.masquerade.all_services = true;
                s.node.masquerade.enabled = false;
            },
            packet: tcp("10.244.0.6:40000", "93.184.216.34:443"),
            entry: client(),
            expected: untouched(SourceSeen::Client),
        },
        // --- Not service traffic.
        Case {
            name: "pod to pod on another node: untouched",
            tweak: none,
            packet: tcp("10.244.0.6:40000", "10.244.1.20:8080"),
            entry: client(),
            expected: untouched(SourceSeen::Client),
        },
        Case {
            name: "pod to this node's address: untouched",
            tweak: none,
            packet: tcp("10.244.0.6:40000", "172.18.0.10:10250"),
            entry: client(),
            expected: untouched(SourceSeen::Client),
        },
        Case {
            name: "pod to the outside world: masqueraded",
            tweak: none,
            packet: tcp("10.244.0.6:40000", "93.184.216.34:443"),
            entry: client(),
            expected: untouched(masq(NODE)),
        },
        Case {
            name: "pod to the outside world over ipv6: masqueraded to the ipv6 node address",
            tweak: none,
            packet: tcp("[fd00:244::6]:40000", "[2001:db8:ffff::1]:443"),
            entry: client(),
            expected: untouched(masq(NODE6)),
        },
        Case {
            name: "pod to a non-masquerade CIDR: untouched",
            tweak: |s| {
                s.node.masquerade.non_masquerade_cidrs = vec!["192.168.0.0/16".parse().unwrap()];
            },
            packet: tcp("10.244.0.6:40000", "192.168.5.5:443"),
            entry: client(),
            expected: untouched(SourceSeen::Client),
        },
        Case {
            name: "masquerade disabled: pod to the outside world keeps its address",
            tweak: |s| s.node.masquerade.enabled = false,
            packet: tcp("10.244.0.6:40000", "93.184.216.34:443"),
            entry: client(),
            expected: untouched(SourceSeen::Client),
        },
        Case {
            name: "masquerade all: pod to a pod on another node is masqueraded",
            tweak: |s| s.node.masquerade.all = true,
            packet: tcp("10.244.0.6:40000", "10.244.1.20:8080"),
            entry: client(),
            expected: untouched(masq(NODE)),
        },
        Case {
            name: "masquerade all: pod to a non-masquerade CIDR is masqueraded too",
            tweak: |s| {
                s.node.masquerade.all = true;
                s.node.masquerade.non_masquerade_cidrs = vec!["192.168.0.0/16".parse().unwrap()];
            },
            packet: tcp("10.244.0.6:40000", "192.168.5.5:443"),
            entry: client(),
            expected: untouched(masq(NODE)),
        },
        Case {
            name: "masquerade all: pod to a pod on this node stays off the uplink, untouched",
            tweak: |s| s.node.masquerade.all = true,
            packet: tcp("10.244.0.6:40000", "10.244.0.5:8080"),
            entry: client(),
            expected: untouched(SourceSeen::Client),
        },
        Case {
            name: "masquerade all but disabled: untouched",
            tweak: |s| {
                s.node.masquerade.all = true;
                s.node.masquerade.enabled = false;
            },
            packet: tcp("10.244.0.6:40000", "10.244.1.20:8080"),
            entry: client(),
            expected: untouched(SourceSeen::Client),
        },
        Case {
            name: "the host to the outside world: not pod traffic, untouched",
            tweak: none,
            packet: tcp("172.18.0.10:40000", "93.184.216.34:443"),
            entry: Entry::FromHost,
            expected: untouched(SourceSeen::Client),
        },
        Case {
            name: "outside to a pod: untouched",
            tweak: none,
            packet: tcp("203.0.113.7:50000", "10.244.0.5:8080"),
            entry: Entry::FromUplink,
            expected: untouched(SourceSeen::Client),
        },
    ]
}

#[test]
fn reference_state_is_valid() {
    assert_eq!(validate(&base()), Ok(()));
}

#[test]
fn evaluate_behaviour_table() {
    let mut failures = Vec::new();
    let mut names = BTreeSet::new();
    for case in cases() {
        assert!(
            names.insert(case.name),
            "duplicate case name {:?}",
            case.name
        );
        let mut state = base();
        (case.tweak)(&mut state);
        if let Err(e) = validate(&state) {
            panic!("case {:?}: the tweaked state is invalid: {e}", case.name);
        }
        let got = evaluate(&state, &case.packet, &case.entry);
        if got != case.expected {
            failures.push(format!(
                "{}\n    packet {:?} {} -> {} from {:?}\n    expected {:?}\n    got      {:?}",
                case.name,
                case.packet.protocol,
                case.packet.source,
                case.packet.destination,
                case.entry,
                case.expected,
                got
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn evaluate_does_not_depend_on_service_order() {
    for case in cases() {
        let mut state = base();
        (case.tweak)(&mut state);
        let forward = evaluate(&state, &case.packet, &case.entry);
        state.services.reverse();
        assert_eq!(
            evaluate(&state, &case.packet, &case.entry),
            forward,
            "{}",
            case.name
        );
    }
}

// ---------------------------------------------------------------------------------------------
// eligible_backends

fn ips(e: &Eligible<'_>) -> Vec<IpAddr> {
    match e {
        Eligible::Backends(b) => b.iter().map(|b| b.ip).collect(),
        other => panic!("expected backends, got {other:?}"),
    }
}

fn eligible(
    state: &DesiredState,
    service: &Service,
    traffic: TrafficKind,
    family: IpFamily,
) -> Vec<IpAddr> {
    ips(&eligible_backends(
        state,
        service,
        &service.ports[0],
        traffic,
        family,
    ))
}

fn v4s(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|a| ip(a)).collect()
}

#[test]
fn eligible_are_the_ready_backends_of_the_family_in_order() {
    let state = base();
    let web = &state.services[WEB];
    assert_eq!(
        eligible(&state, web, TrafficKind::Internal, IpFamily::V4),
        v4s(&["10.244.0.5", "10.244.1.5", "10.244.2.5"])
    );
    assert_eq!(
        eligible(&state, web, TrafficKind::External, IpFamily::V6),
        v4s(&["fd00:244:1::5"])
    );
}

#[test]
fn eligible_skips_not_ready_and_falls_back_to_serving_terminating() {
    let mut state = base();
    {
        let b = &mut state.services[WEB].backends;
        b[0].ready = false; // starting up: never eligible
        b[1].ready = false; // terminating but serving: only as a fallback
        b[1].terminating = true;
    }
    let web = &state.services[WEB];
    assert_eq!(
        eligible(&state, web, TrafficKind::Internal, IpFamily::V4),
        v4s(&["10.244.2.5"])
    );
    let mut state2 = state.clone();
    state2.services[WEB].backends[2].ready = false;
    state2.services[WEB].backends[2].terminating = true;
    state2.services[WEB].backends[2].serving = false;
    let web = &state2.services[WEB];
    assert_eq!(
        eligible(&state2, web, TrafficKind::Internal, IpFamily::V4),
        v4s(&["10.244.1.5"])
    );
    let mut state3 = state2.clone();
    state3.services[WEB].backends[1].serving = false;
    let web = &state3.services[WEB];
    assert_eq!(
        eligible_backends(
            &state3,
            web,
            &web.ports[0],
            TrafficKind::Internal,
            IpFamily::V4
        ),
        Eligible::NoBackends
    );
}

#[test]
fn eligible_uses_the_policy_of_the_traffic_kind() {
    let mut state = base();
    state.services[WEB].internal_traffic_policy = TrafficPolicy::Local;
    let web = &state.services[WEB];
    assert_eq!(
        eligible(&state, web, TrafficKind::Internal, IpFamily::V4),
        v4s(&["10.244.0.5"])
    );
    assert_eq!(
        eligible(&state, web, TrafficKind::External, IpFamily::V4),
        v4s(&["10.244.0.5", "10.244.1.5", "10.244.2.5"])
    );
    let mut state = base();
    state.services[WEB].external_traffic_policy = TrafficPolicy::Local;
    let web = &state.services[WEB];
    assert_eq!(
        eligible(&state, web, TrafficKind::External, IpFamily::V4),
        v4s(&["10.244.0.5"])
    );
    assert_eq!(
        eligible(&state, web, TrafficKind::Internal, IpFamily::V4).len(),
        3
    );
}

#[test]
fn eligible_local_without_local_backend_is_no_local_and_without_any_is_no_backends() {
    let mut state = base();
    state.services[WEB].external_traffic_policy = TrafficPolicy::Local;
    let web = &state.services[WEB];
    // The only IPv6 backend runs on node-1.
    assert_eq!(
        eligible_backends(
            &state,
            web,
            &web.ports[0],
            TrafficKind::External,
            IpFamily::V6
        ),
        Eligible::NoLocal
    );
    remove_backend(&mut state, WEB, "10.244.0.5");
    let web = &state.services[WEB];
    assert_eq!(
        eligible_backends(
            &state,
            web,
            &web.ports[0],
            TrafficKind::External,
            IpFamily::V4
        ),
        Eligible::NoLocal
    );
    // Remote backends that cannot serve do not make it a NoLocal.
    for b in &mut state.services[WEB].backends {
        b.ready = false;
    }
    let web = &state.services[WEB];
    assert_eq!(
        eligible_backends(
            &state,
            web,
            &web.ports[0],
            TrafficKind::External,
            IpFamily::V4
        ),
        Eligible::NoBackends
    );
    state.services[WEB].backends.clear();
    let web = &state.services[WEB];
    assert_eq!(
        eligible_backends(
            &state,
            web,
            &web.ports[0],
            TrafficKind::Internal,
            IpFamily::V4
        ),
        Eligible::NoBackends
    );
}

#[test]
fn eligible_local_prefers_local_terminating_over_remote_ready() {
    let mut state = base();
    state.services[WEB].internal_traffic_policy = TrafficPolicy::Local;
    let b = &mut state.services[WEB].backends[0];
    b.ready = false;
    b.terminating = true;
    let web = &state.services[WEB];
    assert_eq!(
        eligible(&state, web, TrafficKind::Internal, IpFamily::V4),
        v4s(&["10.244.0.5"])
    );
}

#[test]
fn eligible_backends_without_node_name_are_remote() {
    let mut state = base();
    state.services[WEB].internal_traffic_policy = TrafficPolicy::Local;
    state.services[WEB].backends[0].node_name = None;
    let web = &state.services[WEB];
    assert_eq!(
        eligible_backends(
            &state,
            web,
            &web.ports[0],
            TrafficKind::Internal,
            IpFamily::V4
        ),
        Eligible::NoLocal
    );
}

#[test]
fn node_address_is_the_first_of_the_family() {
    let mut state = base();
    assert_eq!(node_address(&state, IpFamily::V4), Some(ip(NODE)));
    assert_eq!(node_address(&state, IpFamily::V6), Some(ip(NODE6)));
    state.node.addresses = vec![ip("fd00:18::11"), ip("172.18.0.11"), ip("172.18.0.12")];
    assert_eq!(node_address(&state, IpFamily::V4), Some(ip("172.18.0.11")));
    assert_eq!(node_address(&state, IpFamily::V6), Some(ip("fd00:18::11")));
    state.node.addresses.retain(IpAddr::is_ipv4);
    assert_eq!(node_address(&state, IpFamily::V6), None);
}

// ---------------------------------------------------------------------------------------------
// evaluate agrees with eligible_backends on generated states.

/// What `evaluate` must say for a new connection to `service`'s frontend `port`.
fn expected_verdict(
    state: &DesiredState,
    service: &Service,
    index: usize,
    traffic: TrafficKind,
    family: IpFamily,
    frontend: FrontendKind,
    source: SourceSeen,
) -> Verdict {
    let port = &service.ports[index];
    match eligible_backends(state, service, port, traffic, family) {
        Eligible::Backends(b) => Verdict::Forward {
            service: service.name.clone(),
            frontend,
            backends: b
                .iter()
                .map(|b| SocketAddr::new(b.ip, b.port.unwrap_or(port.target_port)))
                .collect(),
            source,
        },
        Eligible::NoLocal => Verdict::Drop,
        Eligible::NoBackends => Verdict::Reject,
    }
}

fn client_of(family: IpFamily) -> IpAddr {
    // Inside the node's pod CIDR, never a generated backend address.
    match family {
        IpFamily::V4 => ip("10.244.0.251"),
        IpFamily::V6 => ip("fd00:244::1:1"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn evaluate_agrees_with_eligible_backends(state in strategies::state()) {
        let pod = Entry::FromPod(ObjectName::new("default", "client"));
        for service in &state.services {
            for (i, port) in service.ports.iter().enumerate() {
                for cluster_ip in &service.cluster_ips {
                    let family = IpFamily::of(cluster_ip);
                    let p = Packet {
                        protocol: port.protocol,
                        source: SocketAddr::new(client_of(family), 40_000),
                        destination: SocketAddr::new(*cluster_ip, port.port),
                    };
                    // masquerade.allServices (kube-proxy's --masquerade-all) masquerades pods too.
                    let source = match node_address(&state, family) {
                        Some(node) if state.node.masquerade.all_services => {
                            SourceSeen::Masqueraded(node)
                        }
                        _ => SourceSeen::Client,
                    };
                    let want = expected_verdict(
                        &state, service, i, TrafficKind::Internal, family,
                        FrontendKind::ClusterIp, source,
                    );
                    prop_assert_eq!(evaluate(&state, &p, &pod), want, "{} port {}", service.name, i);
                }
                let Some(node_port) = port.node_port else { continue };
                for node_ip in &state.node.addresses {
                    let family = IpFamily::of(node_ip);
                    let p = Packet {
                        protocol: port.protocol,
                        source: SocketAddr::new(
                            match family {
                                IpFamily::V4 => ip("203.0.113.7"),
                                IpFamily::V6 => ip("2001:db8:7::7"),
                            },
                            50_000,
                        ),
                        destination: SocketAddr::new(*node_ip, node_port),
                    };
                    let source = if service.external_traffic_policy == TrafficPolicy::Local
                        || service.uses_dsr(&state.node, port.protocol)
                    {
                        SourceSeen::Client
                    } else {
                        SourceSeen::Masqueraded(*node_ip)
                    };
                    let want = expected_verdict(
                        &state, service, i, TrafficKind::External, family,
                        FrontendKind::NodePort, source,
                    );
                    prop_assert_eq!(
                        evaluate(&state, &p, &Entry::FromUplink), want,
                        "{} nodePort {}", service.name, node_port
                    );
                }
            }
        }
    }

    #[test]
    fn forwarded_backends_belong_to_the_service(
        state in strategies::state(),
        dst_host in 0u8..=255,
        dport in prop::sample::select(vec![80u16, 53, 443, 30_000, 30_010, 30_021, 8080]),
    ) {
        // Arbitrary packets never panic, and a Forward only offers the service's own backends on
        // its target ports.
        let destinations = [
            IpAddr::from([10, 96, 0, dst_host]),
            IpAddr::from([172, 18, 0, 10]),
            IpAddr::from([192, 0, 2, dst_host]),
            IpAddr::from([198, 51, 100, dst_host]),
            IpAddr::from([0xfd00, 0x96, 0, 0, 0, 0, 0, u16::from(dst_host)]),
        ];
        for dst in destinations {
            for protocol in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
                let src = client_of(IpFamily::of(&dst));
                let p = Packet {
                    protocol,
                    source: SocketAddr::new(src, 40_000),
                    destination: SocketAddr::new(dst, dport),
                };
                for entry in [Entry::FromUplink, Entry::FromHost, Entry::FromPod(ObjectName::new("default", "c"))] {
                    if let Verdict::Forward { service, backends, .. } = evaluate(&state, &p, &entry) {
                        let svc = state.service(&service).expect("the named service exists");
                        prop_assert!(!backends.is_empty());
                        for b in &backends {
                            let backend = svc.backends.iter().find(|x| x.ip == b.ip());
                            prop_assert!(backend.is_some(), "{} not a backend of {}", b, service);
                            // Its own port, or (without one) a port's target.
                            let own = backend.and_then(|x| x.port);
                            prop_assert!(own.map_or_else(|| svc.ports.iter().any(|x| x.target_port == b.port()), |o| o == b.port()), "{} of {}", b, service);
                            prop_assert_eq!(IpFamily::of(&b.ip()), IpFamily::of(&dst));
                        }
                    }
                }
            }
        }
    }
}

/// `masquerade.all` is documented as "all traffic leaving pods towards the uplink"; traffic to
/// the node's own address never reaches the uplink, and without `all` the model leaves it
/// untouched. With `all` it is masqueraded to the very address it is sent to.
#[test]
fn masquerade_all_leaves_traffic_to_the_node_itself_untouched() {
    let mut state = base();
    state.node.masquerade.all = true;
    let verdict = evaluate(
        &state,
        &tcp("10.244.0.6:40000", "172.18.0.10:10250"),
        &from_pod("client"),
    );
    assert_eq!(verdict, untouched(SourceSeen::Client));
}
