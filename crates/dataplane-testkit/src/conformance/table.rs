//! The standard table: the rows every backend runs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use dataplane_core::{
    Backend, BackendSelection, ExternalMode, IpFamily, Node, ObjectName, Protocol, Service,
    ServicePort, SessionAffinity, TrafficPolicy,
};

use crate::lab::{Lab, LabSpec, OTHER_SERVER_PORT, POD_NAMESPACE, SERVER_PORT};

use super::case::{Case, Client, Destination, Expect, Requirement, Seen};

/// The lab shape [`standard_cases`] are written for.
pub const STANDARD_LAB: LabSpec = LabSpec {
    nodes: 2,
    pods_per_node: 2,
    external_clients: 2,
    ipv6: true,
};

// ---------------------------------------------------------------------------------------------
// The standard table.

const TCP_PORT: &str = "tcp";
const UDP_PORT: &str = "udp";
const SCTP_PORT: &str = "sctp";

pub(super) fn backend(lab: &Lab, pod: usize, family: IpFamily) -> Backend {
    let p = lab.pod(pod);
    let mut b = Backend::new(
        p.address(family)
            .expect("the standard table runs in a dual-stack lab"),
    );
    b.node_name = Some(lab.node(p.node).name.as_str().into());
    b
}

/// `pods` as backends of both families (the named rows' services are dual-stack: each row
/// runs in IPv4 under its own name and in IPv6 as its `ipv6` twin).
fn backends(lab: &Lab, pods: &[usize]) -> Vec<Backend> {
    pods.iter()
        .flat_map(|&p| [backend(lab, p, IpFamily::V4), backend(lab, p, IpFamily::V6)])
        .collect()
}

/// An IPv4 address of the named rows and its IPv6 twin: `10.96.0.n` (ClusterIP) →
/// `fd00:96::2:n` (inside the lab's IPv6 service CIDR, apart from the parity rows'
/// `fd00:96::1:n`), `172.18.200.n` (LoadBalancer IP) → `fd00:200::2:n` and `172.18.201.n`
/// (ExternalIP) → `fd00:201::2:n`; `n`'s decimal digits are read as a hex group, so distinct
/// `n` stay distinct.
fn dual(v4: &str) -> [IpAddr; 2] {
    let ip: Ipv4Addr = v4.parse().expect("literal address");
    let [a, b, c, n] = ip.octets();
    let prefix = match (a, b, c) {
        (10, 96, 0) => 96,
        (172, 18, 200 | 201) => u16::from(c),
        _ => panic!("{ip} has no IPv6 twin in the table's plan"),
    };
    let v6: Ipv6Addr = format!("fd00:{prefix}::2:{n}")
        .parse()
        .expect("generated address");
    [IpAddr::V4(ip), IpAddr::V6(v6)]
}

/// A dual-stack service (ClusterIPs `cluster_ip` and its [`dual`] twin) with a TCP and a
/// UDP port (80 → 8080), both with `node_port` when given.
fn service(name: &str, cluster_ip: &str, node_port: Option<u16>, pods: Vec<Backend>) -> Service {
    let mut s = single_stack(name, cluster_ip, node_port, pods);
    s.cluster_ips = dual(cluster_ip).to_vec();
    s
}

/// [`service`] with `cluster_ip` alone (the parity and IPv6 DSR rows' services, which add
/// their own addresses).
fn single_stack(
    name: &str,
    cluster_ip: &str,
    node_port: Option<u16>,
    pods: Vec<Backend>,
) -> Service {
    let mut s = Service::new(ObjectName::new(POD_NAMESPACE, name));
    s.cluster_ips = vec![cluster_ip.parse().expect("literal address")];
    s.ports = [(TCP_PORT, Protocol::Tcp), (UDP_PORT, Protocol::Udp)]
        .into_iter()
        .map(|(port_name, protocol)| ServicePort {
            name: port_name.to_owned(),
            protocol,
            port: 80,
            target_port: SERVER_PORT,
            node_port,
        })
        .collect();
    s.backends = pods;
    s
}

// Every setup uses its own ClusterIP and NodePort, so conntrack entries a row leaves behind
// can never match a later row's packets.

fn web_same_node(lab: &Lab) -> Vec<Service> {
    vec![service("web", "10.96.0.10", None, backends(lab, &[1]))]
}
fn web_other_node(lab: &Lab) -> Vec<Service> {
    vec![service("web", "10.96.0.11", None, backends(lab, &[2]))]
}
fn web_many(lab: &Lab) -> Vec<Service> {
    vec![service(
        "web",
        "10.96.0.12",
        None,
        backends(lab, &[1, 2, 3]),
    )]
}
fn node_port_cluster(lab: &Lab) -> Vec<Service> {
    vec![service(
        "np",
        "10.96.0.20",
        Some(30080),
        backends(lab, &[2]),
    )]
}
fn node_port_local(lab: &Lab) -> Vec<Service> {
    let mut s = service("np", "10.96.0.21", Some(30081), backends(lab, &[2]));
    s.external_traffic_policy = TrafficPolicy::Local;
    vec![s]
}
fn node_port_dsr(lab: &Lab) -> Vec<Service> {
    let mut s = service("np", "10.96.0.22", Some(30082), backends(lab, &[2]));
    s.external_mode = Some(ExternalMode::Dsr);
    vec![s]
}
fn node_port_dsr_local(lab: &Lab) -> Vec<Service> {
    let mut s = service("np", "10.96.0.23", Some(30083), backends(lab, &[0]));
    s.external_mode = Some(ExternalMode::Dsr);
    vec![s]
}
fn node_port_hybrid(lab: &Lab) -> Vec<Service> {
    let mut s = service("np", "10.96.0.24", Some(30084), backends(lab, &[2]));
    s.external_mode = Some(ExternalMode::Hybrid);
    vec![s]
}
fn node_port_default_dsr(lab: &Lab) -> Vec<Service> {
    vec![service(
        "np",
        "10.96.0.25",
        Some(30085),
        backends(lab, &[3]),
    )]
}
fn load_balancer_dsr(lab: &Lab) -> Vec<Service> {
    let mut s = service("lb", "10.96.0.26", None, backends(lab, &[2, 3]));
    s.load_balancer_ips = dual("172.18.200.12").to_vec();
    s.external_mode = Some(ExternalMode::Dsr);
    vec![s]
}
/// The IPv6 LoadBalancer IP and ExternalIP rows with DSR through a node without a backend
/// (the IPv4 `loadbalancer dsr` row enters on the backends' node).
fn load_balancer_dsr_v6(lab: &Lab) -> Vec<Service> {
    let mut s = single_stack(
        "lb6dsr",
        "fd00:96::26",
        None,
        vec![backend(lab, 2, IpFamily::V6), backend(lab, 3, IpFamily::V6)],
    );
    s.load_balancer_ips = vec!["fd00:200::12".parse().expect("literal address")];
    s.external_ips = vec!["fd00:201::12".parse().expect("literal address")];
    s.external_mode = Some(ExternalMode::Dsr);
    vec![s]
}
fn dsr_by_default(node: &mut Node) {
    node.external_mode = ExternalMode::Dsr;
}
fn masquerade_all(node: &mut Node) {
    node.masquerade.all = true;
}
fn load_balancer(lab: &Lab) -> Vec<Service> {
    let mut s = service("lb", "10.96.0.30", None, backends(lab, &[2, 3]));
    s.load_balancer_ips = dual("172.18.200.10").to_vec();
    vec![s]
}
fn external_ip(lab: &Lab) -> Vec<Service> {
    let mut s = service("ext", "10.96.0.31", None, backends(lab, &[0]));
    s.external_ips = dual("172.18.201.10").to_vec();
    vec![s]
}
fn load_balancer_ranges(lab: &Lab) -> Vec<Service> {
    let mut s = service("lb", "10.96.0.32", None, backends(lab, &[2]));
    s.load_balancer_ips = dual("172.18.200.11").to_vec();
    // External client 0 in either family.
    s.load_balancer_source_ranges = vec![
        "172.18.255.1/32".parse().expect("literal CIDR"),
        "fd00:18::ff:1/128".parse().expect("literal CIDR"),
    ];
    vec![s]
}
fn internal_local(lab: &Lab) -> Vec<Service> {
    let mut s = service("itp", "10.96.0.40", None, backends(lab, &[1, 2]));
    s.internal_traffic_policy = TrafficPolicy::Local;
    vec![s]
}
fn internal_local_remote_only(lab: &Lab) -> Vec<Service> {
    let mut s = service("itp", "10.96.0.41", None, backends(lab, &[2]));
    s.internal_traffic_policy = TrafficPolicy::Local;
    vec![s]
}
fn no_backends(_lab: &Lab) -> Vec<Service> {
    vec![service("empty", "10.96.0.50", None, Vec::new())]
}
fn terminating(lab: &Lab, pods: &[usize], serving: bool) -> Vec<Backend> {
    pods.iter()
        .flat_map(|&p| {
            [IpFamily::V4, IpFamily::V6].map(|family| {
                let mut b = backend(lab, p, family);
                b.ready = false;
                b.serving = serving;
                b.terminating = true;
                b
            })
        })
        .collect()
}
fn terminating_serving(lab: &Lab) -> Vec<Service> {
    vec![service(
        "term",
        "10.96.0.51",
        None,
        terminating(lab, &[1, 2], true),
    )]
}
fn terminating_not_serving(lab: &Lab) -> Vec<Service> {
    vec![service(
        "term",
        "10.96.0.52",
        None,
        terminating(lab, &[1, 2], false),
    )]
}
fn ready_and_terminating(lab: &Lab) -> Vec<Service> {
    let mut pods = backends(lab, &[1]);
    pods.extend(terminating(lab, &[2], true));
    vec![service("term", "10.96.0.53", None, pods)]
}
fn hairpin(lab: &Lab) -> Vec<Service> {
    vec![service("hairpin", "10.96.0.60", None, backends(lab, &[0]))]
}
fn sticky(lab: &Lab) -> Vec<Service> {
    let mut s = service("sticky", "10.96.0.70", None, backends(lab, &[1, 2, 3]));
    s.session_affinity = SessionAffinity::ClientIp {
        timeout_seconds: 10800,
    };
    vec![s]
}
fn maglev(lab: &Lab) -> Vec<Service> {
    let mut s = service("maglev", "10.96.0.80", None, backends(lab, &[0, 1, 2, 3]));
    s.load_balancer_ips = dual("172.18.200.12").to_vec();
    s.backend_selection = BackendSelection::Maglev;
    vec![s]
}
/// A rolling update that moved a named target port: of `pods`, the first listens on the
/// port's `targetPort` (the lab's server port), the second on its own
/// [`OTHER_SERVER_PORT`]. A backend's own port needs a single-port service: one service per
/// protocol, `<name>t` (TCP, port `tcp`) and `<name>u` (UDP, port `udp`), ClusterIPs
/// `10.96.0.n` and `.n+1`, NodePorts 30000 + n and + n + 1.
fn moved_target_port(lab: &Lab, name: &str, n: u8, pods: [usize; 2]) -> Vec<Service> {
    [(Protocol::Tcp, "t", 0), (Protocol::Udp, "u", 1)]
        .into_iter()
        .map(|(protocol, suffix, k)| {
            let mut s = service(
                &format!("{name}{suffix}"),
                &format!("10.96.0.{}", n + k),
                Some(30_000 + u16::from(n + k)),
                [IpFamily::V4, IpFamily::V6]
                    .into_iter()
                    .flat_map(|family| {
                        [
                            backend(lab, pods[0], family),
                            backend(lab, pods[1], family).with_port(OTHER_SERVER_PORT),
                        ]
                    })
                    .collect(),
            );
            s.ports.retain(|p| p.protocol == protocol);
            s
        })
        .collect()
}
/// Pod 1 (node 0) on the service's port, pod 2 (node 1) on its own.
fn target_port_per_backend(lab: &Lab) -> Vec<Service> {
    moved_target_port(lab, "tp", 90, [1, 2])
}
/// DSR, pods 3 and 2 (both on node 1), pod 2 on its own port.
fn target_port_per_backend_dsr(lab: &Lab) -> Vec<Service> {
    let mut services = moved_target_port(lab, "tpd", 92, [3, 2]);
    for s in &mut services {
        s.external_mode = Some(ExternalMode::Dsr);
    }
    services
}

// --- kube-proxy parity (issue 15). Dual-stack services with every frontend kind: ClusterIP,
// NodePort (both families' node addresses), LoadBalancer IP and ExternalIP of each family.

/// A dual-stack service named `name` with every frontend kind, numbered `n` (ClusterIPs
/// `10.96.1.n` / `fd00:96::1:n`, NodePort 31000 + n, LB IPs `172.19.202.n` / `fd00:202::n`,
/// ExternalIPs `172.19.203.n` / `fd00:203::n`) and `pods` (both families) as backends.
fn every_frontend(lab: &Lab, name: &str, n: u8, pods: &[usize]) -> Service {
    let mut s = single_stack(
        name,
        &format!("10.96.1.{n}"),
        Some(31000 + u16::from(n)),
        Vec::new(),
    );
    let ip = |text: String| -> IpAddr { text.parse().expect("generated address") };
    s.cluster_ips.push(ip(format!("fd00:96::1:{n}")));
    // Off the underlay's subnet, as LB IPs routed to the nodes are: an address on the node's
    // own link would need a neighbour answering for it before a node's packets to it reach an
    // egress hook (see the eBPF backend's limits).
    s.load_balancer_ips = vec![ip(format!("172.19.202.{n}")), ip(format!("fd00:202::{n}"))];
    s.external_ips = vec![ip(format!("172.19.203.{n}")), ip(format!("fd00:203::{n}"))];
    s.backends = backends(lab, pods);
    s
}
/// `s` with an SCTP port beside its TCP and UDP ones: port 80 to the lab's server port, on
/// the TCP port's NodePort number.
fn with_sctp(mut s: Service) -> Service {
    let node_port = s.ports.first().and_then(|p| p.node_port);
    s.ports.push(ServicePort {
        name: SCTP_PORT.to_owned(),
        protocol: Protocol::Sctp,
        port: 80,
        target_port: SERVER_PORT,
        node_port,
    });
    s
}
/// The matrix service: one backend, pod 1 on node 0; TCP, UDP and SCTP.
fn matrix(lab: &Lab) -> Vec<Service> {
    vec![with_sctp(every_frontend(lab, "mx", 1, &[1]))]
}
/// externalTrafficPolicy Local, backends pod 1 (node 0) and pod 2 (node 1).
fn external_local(lab: &Lab) -> Vec<Service> {
    let mut s = every_frontend(lab, "etpl", 2, &[1, 2]);
    s.external_traffic_policy = TrafficPolicy::Local;
    vec![s]
}
/// externalTrafficPolicy Local, its only backend pod 1 (node 0): pod 1 reaching it hairpins.
fn external_local_hairpin(lab: &Lab) -> Vec<Service> {
    let mut s = every_frontend(lab, "etplh", 3, &[1]);
    s.external_traffic_policy = TrafficPolicy::Local;
    vec![s]
}
/// internalTrafficPolicy Local, backends pod 1 (node 0) and pod 2 (node 1).
fn internal_local_both(lab: &Lab) -> Vec<Service> {
    let mut s = every_frontend(lab, "itpl", 4, &[1, 2]);
    s.internal_traffic_policy = TrafficPolicy::Local;
    vec![s]
}
/// internalTrafficPolicy Local, its only backend pod 2 (node 1).
fn internal_local_node1(lab: &Lab) -> Vec<Service> {
    let mut s = every_frontend(lab, "itpr", 5, &[2]);
    s.internal_traffic_policy = TrafficPolicy::Local;
    vec![s]
}
/// Source ranges: IPv4 only, external client 0 (172.18.255.1); IPv6 is unrestricted.
fn ranges_v4_only(lab: &Lab) -> Vec<Service> {
    let mut s = every_frontend(lab, "lbr", 6, &[1]);
    s.load_balancer_source_ranges = vec!["172.18.255.1/32".parse().expect("literal CIDR")];
    vec![s]
}
/// Source ranges holding the node addresses (IPv4) and external client 0 (IPv6).
fn ranges_with_nodes(lab: &Lab) -> Vec<Service> {
    let mut s = every_frontend(lab, "lbn", 7, &[1]);
    s.load_balancer_source_ranges = vec![
        "172.18.0.0/24".parse().expect("literal CIDR"),
        "fd00:18::ff:1/128".parse().expect("literal CIDR"),
    ];
    vec![s]
}
/// The IPv6 twin of [`ranges_with_nodes`]: source ranges holding the IPv6 node addresses
/// (`fd00:18::/120`, not the outside clients' `fd00:18::ff:k`) and external client 0 (IPv4).
fn ranges_with_v6_nodes(lab: &Lab) -> Vec<Service> {
    let mut s = every_frontend(lab, "lbn6", 13, &[1]);
    s.load_balancer_source_ranges = vec![
        "172.18.255.1/32".parse().expect("literal CIDR"),
        "fd00:18::/120".parse().expect("literal CIDR"),
    ];
    vec![s]
}
/// Source ranges holding node 0's pods (both families).
fn ranges_with_pods(lab: &Lab) -> Vec<Service> {
    let mut s = every_frontend(lab, "lbp", 8, &[1]);
    s.load_balancer_source_ranges = vec![
        "10.244.0.0/24".parse().expect("literal CIDR"),
        "fd00:244:0:0::/64".parse().expect("literal CIDR"),
    ];
    vec![s]
}
/// A plain service (backend pod 2, node 1) and an eTP:Local one (pod 2), for allServices.
fn all_services(lab: &Lab) -> Vec<Service> {
    let plain = every_frontend(lab, "mas", 9, &[2]);
    let mut local = every_frontend(lab, "masl", 10, &[2]);
    local.external_traffic_policy = TrafficPolicy::Local;
    vec![plain, local]
}
/// A service with an SCTP port besides TCP and UDP: a backend that cannot program SCTP
/// leaves that port out (`ApplyReport::skipped`) and serves the rest.
fn with_sctp_port(lab: &Lab) -> Vec<Service> {
    vec![with_sctp(every_frontend(lab, "sctp", 12, &[2]))]
}
/// No backends, dual-stack, TCP, UDP and SCTP: reject.
fn no_backends_dual(lab: &Lab) -> Vec<Service> {
    vec![with_sctp(every_frontend(lab, "empty6", 11, &[]))]
}
fn masquerade_services(node: &mut Node) {
    node.masquerade.all_services = true;
}

/// A row in TCP and UDP (`<name> tcp`, `<name> udp`), each on the service port of its
/// protocol.
fn both(case: Case) -> [Case; 2] {
    [over(case.clone(), Protocol::Tcp), over(case, Protocol::Udp)]
}

/// `case` on its service's port of `protocol` (named after the protocol), named
/// `<name> <protocol>`.
fn over(case: Case, protocol: Protocol) -> Case {
    let (tag, port) = match protocol {
        Protocol::Tcp => ("tcp", TCP_PORT),
        Protocol::Udp => ("udp", UDP_PORT),
        Protocol::Sctp => ("sctp", SCTP_PORT),
    };
    let c = Case {
        name: format!("{} {tag}", case.name),
        ..case
    }
    .protocol(protocol);
    let destination = match &c.destination {
        Destination::ClusterIp { service, .. } => Destination::cluster_ip(service, port),
        Destination::NodePort { node, service, .. } => Destination::node_port(*node, service, port),
        Destination::LoadBalancer { node, service, .. } => {
            Destination::load_balancer(*node, service, port)
        }
        Destination::ExternalIp { node, service, .. } => {
            Destination::external_ip(*node, service, port)
        }
        Destination::ClusterIpVia { node, service, .. } => {
            Destination::cluster_ip_via(*node, service, port)
        }
        other @ (Destination::ClusterIpPort { .. }
        | Destination::PodIp(_)
        | Destination::External(_)
        | Destination::UnallocatedServiceIp) => other.clone(),
    };
    Case { destination, ..c }
}

/// Both address families, IPv4 first.
const FAMILIES: [IpFamily; 2] = [IpFamily::V4, IpFamily::V6];

/// What a named row's name gets in `family`: nothing in IPv4 (reports and notes refer to
/// those names), ` ipv6` for its IPv6 twin.
fn family_tag(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "",
        IpFamily::V6 => " ipv6",
    }
}

/// `case` (an IPv4 row) in both families, named by [`family_tag`].
fn both_families(case: Case) -> [Case; 2] {
    let v6 = Case {
        name: format!("{}{}", case.name, family_tag(IpFamily::V6)),
        ..case.clone()
    }
    .family(IpFamily::V6);
    [case.family(IpFamily::V4), v6]
}

/// The standard table, for a lab of [`STANDARD_LAB`] shape: 2 nodes × 2 pods (pods 0, 1 on
/// node 0; 2, 3 on node 1), 2 external clients (172.18.255.1 and .2), dual-stack.
///
/// Every named row runs in both families (issue 23: every IPv4 row that makes sense in IPv6
/// runs in IPv6 too), over dual-stack services: `<name> tcp` / `<name> udp` in IPv4 and
/// `<name> ipv6 tcp` / `<name> ipv6 udp` in IPv6. None of them is IPv4-only by definition:
/// masquerade, DSR (a destination-options header instead of an IP option), source ranges,
/// affinity, Maglev and rejects (ICMPv6) all have an IPv6 form in Kubernetes and here.
#[allow(clippy::too_many_lines)]
pub fn standard_cases() -> Vec<Case> {
    use Client::{External, Host, Pod};
    use Expect::{Backends, Drop, Reject, SameBackend};
    let cip = |s: &str| Destination::cluster_ip(s, TCP_PORT);
    let mut cases = Vec::new();
    let mut add = |c: Case| cases.extend(both_families(c).into_iter().flat_map(both));

    add(
        Case::new("clusterip same node", web_same_node, Pod(0), cip("web"))
            .expect(Backends(vec![1]))
            .seen(Seen::Client),
    );
    add(
        Case::new("clusterip other node", web_other_node, Pod(0), cip("web"))
            .expect(Backends(vec![2]))
            .seen(Seen::Client),
    );
    add(
        Case::new("clusterip from host", web_other_node, Host(0), cip("web"))
            .expect(Backends(vec![2]))
            .seen(Seen::IngressNode),
    );
    add(Case::new(
        "clusterip from host to local pod",
        web_same_node,
        Host(0),
        cip("web"),
    )
    .expect(Backends(vec![1]))
    .seen(Seen::IngressNode));
    add(
        Case::new("clusterip several backends", web_many, Pod(0), cip("web"))
            .expect(Backends(vec![1, 2, 3]))
            .seen(Seen::Client),
    );
    add(Case::new(
        "clusterip from outside",
        web_other_node,
        External(0),
        cip("web"),
    )
    .expect(Backends(vec![2]))
    .seen(Seen::IngressNode));
    add(Case::new(
        "nodeport etp=cluster",
        node_port_cluster,
        External(0),
        Destination::node_port(0, "np", TCP_PORT),
    )
    .expect(Backends(vec![2]))
    .seen(Seen::IngressNode));
    add(Case::new(
        "nodeport from a pod on the node",
        node_port_cluster,
        Pod(0),
        Destination::node_port(0, "np", TCP_PORT),
    )
    .expect(Backends(vec![2]))
    .seen(Seen::IngressNode));
    add(Case::new(
        "nodeport etp=local",
        node_port_local,
        External(0),
        Destination::node_port(1, "np", TCP_PORT),
    )
    .expect(Backends(vec![2]))
    .seen(Seen::Client));
    add(Case::new(
        "nodeport etp=local no local backend",
        node_port_local,
        External(0),
        Destination::node_port(0, "np", TCP_PORT),
    )
    .expect(Drop));
    add(Case::new(
        "loadbalancer",
        load_balancer,
        External(0),
        Destination::load_balancer(0, "lb", TCP_PORT),
    )
    .expect(Backends(vec![2, 3]))
    .seen(Seen::IngressNode));
    add(Case::new(
        "loadbalancer from a pod",
        load_balancer,
        Pod(1),
        Destination::load_balancer(0, "lb", TCP_PORT),
    )
    .expect(Backends(vec![2, 3]))
    .seen(Seen::IngressNode));
    add(Case::new(
        "externalip",
        external_ip,
        External(0),
        Destination::external_ip(1, "ext", TCP_PORT),
    )
    .expect(Backends(vec![0]))
    .seen(Seen::IngressNode));
    add(Case::new(
        "loadbalancer source range allows",
        load_balancer_ranges,
        External(0),
        Destination::load_balancer(0, "lb", TCP_PORT),
    )
    .expect(Backends(vec![2]))
    .seen(Seen::IngressNode));
    add(Case::new(
        "loadbalancer source range denies",
        load_balancer_ranges,
        External(1),
        Destination::load_balancer(0, "lb", TCP_PORT),
    )
    .expect(Drop));
    add(
        Case::new("itp=local node 0", internal_local, Pod(0), cip("itp"))
            .expect(Backends(vec![1]))
            .seen(Seen::Client),
    );
    add(
        Case::new("itp=local node 1", internal_local, Pod(3), cip("itp"))
            .expect(Backends(vec![2]))
            .seen(Seen::Client),
    );
    add(Case::new(
        "itp=local no local backend",
        internal_local_remote_only,
        Pod(0),
        cip("itp"),
    )
    .expect(Drop));
    add(Case::new("no backends", no_backends, Pod(0), cip("empty")).expect(Reject));
    add(Case::new(
        "terminating serving backends are used",
        terminating_serving,
        Pod(0),
        cip("term"),
    )
    .expect(Backends(vec![1, 2]))
    .seen(Seen::Client));
    add(Case::new(
        "terminating non-serving backends reject",
        terminating_not_serving,
        Pod(0),
        cip("term"),
    )
    .expect(Reject));
    add(Case::new(
        "ready preferred over terminating",
        ready_and_terminating,
        Pod(0),
        cip("term"),
    )
    .expect(Backends(vec![1]))
    .seen(Seen::Client));
    add(Case::new(
        "clusterip unknown port",
        web_same_node,
        Pod(0),
        Destination::ClusterIpPort {
            service: "web".to_owned(),
            port: 81,
        },
    )
    .expect(Reject));
    add(Case::new(
        "pod to pod is not masqueraded",
        no_backends,
        Pod(0),
        Destination::PodIp(2),
    )
    .expect(Backends(vec![2]))
    .seen(Seen::Client));
    add(Case::new(
        "pod to outside is masqueraded",
        no_backends,
        Pod(0),
        Destination::External(0),
    )
    .expect(Expect::Direct)
    .seen(Seen::IngressNode)
    .requires(Requirement::Masquerade));
    add(Case::new(
        "masquerade.all: pod to another node's pod",
        no_backends,
        Pod(0),
        Destination::PodIp(2),
    )
    .node(masquerade_all)
    .expect(Backends(vec![2]))
    .seen(Seen::IngressNode)
    .requires(Requirement::Masquerade));
    add(Case::new(
        "masquerade.all: pod to a pod on the same node",
        no_backends,
        Pod(0),
        Destination::PodIp(1),
    )
    .node(masquerade_all)
    .expect(Backends(vec![1]))
    .seen(Seen::Client)
    .requires(Requirement::Masquerade));
    // DSR: the backend on another node sees the client itself and answers it directly.
    add(Case::new(
        "nodeport dsr",
        node_port_dsr,
        External(0),
        Destination::node_port(0, "np", TCP_PORT),
    )
    .expect(Backends(vec![2]))
    .seen(Seen::Client)
    .requires(Requirement::Dsr));
    add(Case::new(
        "nodeport dsr local backend",
        node_port_dsr_local,
        External(0),
        Destination::node_port(0, "np", TCP_PORT),
    )
    .expect(Backends(vec![0]))
    .seen(Seen::Client)
    .requires(Requirement::Dsr));
    add(Case::new(
        "nodeport dsr as the node default",
        node_port_default_dsr,
        External(1),
        Destination::node_port(0, "np", TCP_PORT),
    )
    .node(dsr_by_default)
    .expect(Backends(vec![3]))
    .seen(Seen::Client)
    .requires(Requirement::Dsr));
    add(Case::new(
        "loadbalancer dsr",
        load_balancer_dsr,
        External(0),
        Destination::load_balancer(1, "lb", TCP_PORT),
    )
    .expect(Backends(vec![2, 3]))
    .seen(Seen::Client)
    .requires(Requirement::Dsr));
    add(Case::new(
        "nodeport dsr from a pod",
        node_port_dsr,
        Pod(0),
        Destination::node_port(0, "np", TCP_PORT),
    )
    .expect(Backends(vec![2]))
    .seen(Seen::IngressNode)
    .requires(Requirement::Dsr));
    add(Case::new("hairpin", hairpin, Pod(0), cip("hairpin"))
        .expect(Backends(vec![0]))
        .seen(Seen::IngressNode));
    add(Case::new("session affinity", sticky, Pod(0), cip("sticky"))
        .expect(SameBackend(vec![1, 2, 3]))
        .seen(Seen::Client)
        .requires(Requirement::SessionAffinity));
    // IPv6 DSR through a node without a backend, for the LoadBalancer IP and the ExternalIP
    // (the twin of `loadbalancer dsr` enters on the backends' node, as it does).
    for (name, client, destination) in [
        (
            "ipv6 loadbalancer dsr",
            External(0),
            Destination::load_balancer(0, "lb6dsr", TCP_PORT),
        ),
        (
            "ipv6 externalip dsr",
            External(1),
            Destination::external_ip(0, "lb6dsr", TCP_PORT),
        ),
    ] {
        cases.extend(both(
            Case::new(name, load_balancer_dsr_v6, client, destination)
                .family(IpFamily::V6)
                .expect(Backends(vec![2, 3]))
                .seen(Seen::Client)
                .requires(Requirement::Dsr),
        ));
    }
    // One client 5-tuple to a LoadBalancer IP through either node: Maglev makes both nodes
    // pick the same backend (and the reference model's choice for the tuple is checked per
    // probe, should it narrow Maglev down to one backend).
    for family in FAMILIES {
        let tag = family_tag(family);
        for node in 0..2 {
            let mut case = Case::new(
                &format!("maglev via node {node}{tag} tcp"),
                maglev,
                External(0),
                Destination::load_balancer(node, "maglev", TCP_PORT),
            )
            .family(family)
            .expect(SameBackend(vec![0, 1, 2, 3]))
            .seen(Seen::IngressNode)
            .client_port(41000)
            .requires(Requirement::Maglev);
            if node > 0 {
                case = case.consistent_with(&format!("maglev via node 0{tag} tcp"));
            }
            cases.push(case);
        }
    }
    // Hybrid: DSR for TCP, SNAT for UDP.
    for case in both_families(
        Case::new(
            "nodeport hybrid",
            node_port_hybrid,
            External(0),
            Destination::node_port(0, "np", TCP_PORT),
        )
        .expect(Backends(vec![2]))
        .requires(Requirement::Dsr),
    ) {
        let [tcp, udp] = both(case);
        cases.push(tcp.seen(Seen::Client));
        cases.push(udp.seen(Seen::IngressNode));
    }
    cases.extend(target_port_cases());
    cases.extend(parity_cases());
    cases
}

/// Backends of one service port on different target ports (kube-proxy DNATs each endpoint to
/// the number its EndpointSlice gives): every backend must answer, each on its own port
/// (its server there answers as `<pod>:<port>`, so a probe sent to the wrong port of the
/// right pod fails). ClusterIP from a pod, NodePort from outside (SNAT), NodePort with DSR.
fn target_port_cases() -> Vec<Case> {
    use Client::{External, Pod};
    let mut cases = Vec::new();
    for (family, (protocol, suffix, port_name)) in FAMILIES.into_iter().flat_map(|family| {
        [
            (family, (Protocol::Tcp, "t", TCP_PORT)),
            (family, (Protocol::Udp, "u", UDP_PORT)),
        ]
    }) {
        let label = protocol.to_string().to_lowercase();
        let row = |name: &str, setup: fn(&Lab) -> Vec<Service>, client, destination| {
            Case::new(
                &format!("{name}{} {label}", family_tag(family)),
                setup,
                client,
                destination,
            )
            .protocol(protocol)
            .family(family)
            .every_backend_answers()
        };
        cases.push(
            row(
                "target port per backend clusterip",
                target_port_per_backend,
                Pod(0),
                Destination::cluster_ip(&format!("tp{suffix}"), port_name),
            )
            .expect(Expect::Backends(vec![1, 2]))
            .seen(Seen::Client),
        );
        cases.push(
            row(
                "target port per backend nodeport",
                target_port_per_backend,
                External(0),
                Destination::node_port(0, &format!("tp{suffix}"), port_name),
            )
            .expect(Expect::Backends(vec![1, 2]))
            .seen(Seen::IngressNode),
        );
        cases.push(
            row(
                "target port per backend nodeport dsr",
                target_port_per_backend_dsr,
                External(0),
                Destination::node_port(0, &format!("tpd{suffix}"), port_name),
            )
            .expect(Expect::Backends(vec![2, 3]))
            .seen(Seen::Client)
            .requires(Requirement::Dsr),
        );
    }
    cases
}

/// The four frontend kinds of `service` with `node` as the ingress node.
fn frontends(node: usize, service: &str) -> [(&'static str, Destination); 4] {
    [
        (
            "clusterip",
            Destination::cluster_ip_via(node, service, TCP_PORT),
        ),
        ("nodeport", Destination::node_port(node, service, TCP_PORT)),
        (
            "loadbalancer",
            Destination::load_balancer(node, service, TCP_PORT),
        ),
        (
            "externalip",
            Destination::external_ip(node, service, TCP_PORT),
        ),
    ]
}

/// A row of source-range cases: name, setup, service, client, ingress node, family, and the
/// source seen when allowed (`None`: dropped).
type RangeRow = (
    &'static str,
    fn(&Lab) -> Vec<Service>,
    &'static str,
    Client,
    usize,
    IpFamily,
    Option<Seen>,
);

/// Rows for every (client kind, frontend kind, protocol, family) of a plain service, and for
/// each kube-proxy behaviour of issue 15, written from kube-proxy's nftables and iptables
/// proxiers (pkg/proxy/{nftables,iptables}/proxier.go) and their packet-flow tests.
#[allow(clippy::too_many_lines)]
fn parity_cases() -> Vec<Case> {
    use Client::{External, Host, HostFromFrontend, Pod};
    use Expect::{Backends, Drop, Reject};
    let mut cases = Vec::new();
    let families = FAMILIES;
    let fam_name = |f: IpFamily| match f {
        IpFamily::V4 => "ipv4",
        IpFamily::V6 => "ipv6",
    };
    let mut add = |c: Case, family: IpFamily| {
        let c = Case {
            name: format!("{} {}", c.name, fam_name(family)),
            ..c
        }
        .family(family);
        // A row written as SCTP is an SCTP row alone (`<name> sctp`): SCTP rows stand beside
        // TCP and UDP twins of their own, not beside every row.
        if c.protocol == Protocol::Sctp {
            cases.push(over(c, Protocol::Sctp));
        } else {
            cases.extend(both(c));
        }
    };

    // The matrix: a plain service (eTP and iTP Cluster) whose backend is pod 1 on node 0.
    // Clients: a pod on the backend's node, a pod on another node, the node itself with the
    // backend local and remote, an outside client entering on the backend's node and on
    // another. A ClusterIP keeps a pod's address and masquerades the rest (kube-proxy:
    // `! -s clusterCIDR -j KUBE-MARK-MASQ`); the external frontends masquerade everyone
    // (eTP Cluster: the external chain jumps to mark-for-masquerade first).
    let clients: [(&str, Client, usize); 6] = [
        ("pod on the backend's node", Pod(0), 0),
        ("pod on another node", Pod(2), 1),
        ("node with a local backend", Host(0), 0),
        ("node with a remote backend", Host(1), 1),
        ("outside via the backend's node", External(0), 0),
        ("outside via another node", External(1), 1),
    ];
    for family in families {
        for (client_name, client, node) in clients {
            for (frontend_name, destination) in frontends(node, "mx") {
                let keeps = matches!(client, Pod(_)) && frontend_name == "clusterip";
                let row = Case::new(
                    &format!("matrix: {client_name} to {frontend_name}"),
                    matrix,
                    client,
                    destination,
                )
                .expect(Backends(vec![1]))
                .seen(if keeps {
                    Seen::Client
                } else {
                    Seen::IngressNode
                });
                // TCP and UDP, then SCTP (issue 23; skipped where SCTP is not declared).
                add(row.clone(), family);
                add(row.protocol(Protocol::Sctp), family);
            }
        }
    }

    // 3. externalTrafficPolicy Local. Outside clients: local backends only, address kept.
    // This node's pods: cluster-wide, address kept (kube-proxy "short-circuit pod traffic");
    // the node itself: cluster-wide, masqueraded ("masquerade local traffic").
    for family in families {
        for (frontend_name, destination) in frontends(0, "etpl").into_iter().skip(1) {
            let via1 = match &destination {
                Destination::NodePort { .. } => Destination::node_port(1, "etpl", TCP_PORT),
                Destination::LoadBalancer { .. } => Destination::load_balancer(1, "etpl", TCP_PORT),
                _ => Destination::external_ip(1, "etpl", TCP_PORT),
            };
            let on_node1 = match &destination {
                Destination::NodePort { .. } => via1.clone(),
                _ => destination.clone(),
            };
            add(
                Case::new(
                    &format!("etp=local: outside to {frontend_name} via a node with a backend"),
                    external_local,
                    External(0),
                    destination.clone(),
                )
                .expect(Backends(vec![1]))
                .seen(Seen::Client),
                family,
            );
            add(
                Case::new(
                    &format!("etp=local: outside to {frontend_name} via the other node"),
                    external_local,
                    External(1),
                    via1,
                )
                .expect(Backends(vec![2]))
                .seen(Seen::Client),
                family,
            );
            add(
                Case::new(
                    &format!("etp=local: pod on node 0 to {frontend_name}"),
                    external_local,
                    Pod(0),
                    destination.clone(),
                )
                .expect(Backends(vec![1, 2]))
                .seen(Seen::Client),
                family,
            );
            add(
                Case::new(
                    &format!("etp=local: pod on node 1 to {frontend_name}"),
                    external_local,
                    Pod(3),
                    on_node1.clone(),
                )
                .expect(Backends(vec![1, 2]))
                .seen(Seen::Client),
                family,
            );
            add(
                Case::new(
                    &format!("etp=local: node to {frontend_name}"),
                    external_local,
                    Host(1),
                    on_node1,
                )
                .expect(Backends(vec![1, 2]))
                .seen(Seen::IngressNode),
                family,
            );
        }
        add(
            Case::new(
                "etp=local: pod to its own service's nodeport hairpins, masqueraded",
                external_local_hairpin,
                Pod(1),
                Destination::node_port(0, "etplh", TCP_PORT),
            )
            .expect(Backends(vec![1]))
            .seen(Seen::IngressNode),
            family,
        );
    }

    // 4. internalTrafficPolicy Local governs every packet to the ClusterIP, from outside too
    // (masqueraded: not a pod address); the node's NodePort stays cluster-wide (7, 8).
    for family in families {
        add(
            Case::new(
                "itp=local: outside to the clusterip via node 0",
                internal_local_both,
                External(0),
                Destination::cluster_ip_via(0, "itpl", TCP_PORT),
            )
            .expect(Backends(vec![1]))
            .seen(Seen::IngressNode),
            family,
        );
        add(
            Case::new(
                "itp=local: outside to the clusterip via node 1",
                internal_local_both,
                External(1),
                Destination::cluster_ip_via(1, "itpl", TCP_PORT),
            )
            .expect(Backends(vec![2]))
            .seen(Seen::IngressNode),
            family,
        );
        add(
            Case::new(
                "itp=local: node to the clusterip",
                internal_local_both,
                Host(0),
                Destination::cluster_ip_via(0, "itpl", TCP_PORT),
            )
            .expect(Backends(vec![1]))
            .seen(Seen::IngressNode),
            family,
        );
        add(
            Case::new(
                "itp=local: pod to the clusterip",
                internal_local_both,
                Pod(3),
                Destination::cluster_ip_via(1, "itpl", TCP_PORT),
            )
            .expect(Backends(vec![2]))
            .seen(Seen::Client),
            family,
        );
        add(
            Case::new(
                "itp=local: node to its own nodeport is cluster-wide",
                internal_local_both,
                Host(0),
                Destination::node_port(0, "itpl", TCP_PORT),
            )
            .expect(Backends(vec![1, 2]))
            .seen(Seen::IngressNode),
            family,
        );
        add(
            Case::new(
                "itp=local: outside to the clusterip via a node without a backend",
                internal_local_node1,
                External(0),
                Destination::cluster_ip_via(0, "itpr", TCP_PORT),
            )
            .expect(Drop),
            family,
        );
    }

    // 1, 2, 12. loadBalancerSourceRanges bind every client of the LB IP (kube-proxy's
    // firewall chain sees prerouting and output); ranges of the other family do not apply
    // (MapCIDRsByIPFamily); a range holding a node address lets the node in.
    let lb = |node: usize, service: &str| Destination::load_balancer(node, service, TCP_PORT);
    let v4 = IpFamily::V4;
    let v6 = IpFamily::V6;
    // The IPv4 rows' IPv6 twins: `ranges:` (IPv4 ranges only) is twinned by the `ipv4
    // ranges leave ipv6 open` rows (a range binds its own family only), and by the
    // `ranges with ipv6 node addresses` rows for the drops of pods and outside clients;
    // `ranges with node addresses` by `ranges with ipv6 node addresses`.
    let range_rows: [RangeRow; 28] = [
        (
            "ranges: allowed outside client",
            ranges_v4_only,
            "lbr",
            External(0),
            0,
            v4,
            Some(Seen::IngressNode),
        ),
        (
            "ranges: other outside client",
            ranges_v4_only,
            "lbr",
            External(1),
            0,
            v4,
            None,
        ),
        (
            "ranges: pod on the backend's node",
            ranges_v4_only,
            "lbr",
            Pod(0),
            0,
            v4,
            None,
        ),
        (
            "ranges: pod on another node",
            ranges_v4_only,
            "lbr",
            Pod(2),
            1,
            v4,
            None,
        ),
        (
            "ranges: node itself",
            ranges_v4_only,
            "lbr",
            Host(0),
            0,
            v4,
            None,
        ),
        (
            "ranges: ipv4 ranges leave ipv6 open to outside",
            ranges_v4_only,
            "lbr",
            External(1),
            0,
            v6,
            Some(Seen::IngressNode),
        ),
        (
            "ranges: ipv4 ranges leave ipv6 open to pods",
            ranges_v4_only,
            "lbr",
            Pod(0),
            0,
            v6,
            Some(Seen::IngressNode),
        ),
        (
            "ranges: ipv4 ranges leave ipv6 open to the node",
            ranges_v4_only,
            "lbr",
            Host(0),
            0,
            v6,
            Some(Seen::IngressNode),
        ),
        (
            "ranges with node addresses: node itself",
            ranges_with_nodes,
            "lbn",
            Host(0),
            0,
            v4,
            Some(Seen::IngressNode),
        ),
        (
            "ranges with node addresses: other node itself",
            ranges_with_nodes,
            "lbn",
            Host(1),
            1,
            v4,
            Some(Seen::IngressNode),
        ),
        (
            "ranges with node addresses: outside client",
            ranges_with_nodes,
            "lbn",
            External(0),
            0,
            v4,
            None,
        ),
        (
            "ranges with node addresses: pod",
            ranges_with_nodes,
            "lbn",
            Pod(0),
            0,
            v4,
            None,
        ),
        (
            "ranges with node addresses: allowed ipv6 outside client",
            ranges_with_nodes,
            "lbn",
            External(0),
            0,
            v6,
            Some(Seen::IngressNode),
        ),
        (
            "ranges with node addresses: other ipv6 outside client",
            ranges_with_nodes,
            "lbn",
            External(1),
            0,
            v6,
            None,
        ),
        (
            "ranges with node addresses: node itself over ipv6",
            ranges_with_nodes,
            "lbn",
            Host(0),
            0,
            v6,
            None,
        ),
        (
            "ranges with pods: pod inside",
            ranges_with_pods,
            "lbp",
            Pod(0),
            0,
            v4,
            Some(Seen::IngressNode),
        ),
        (
            "ranges with pods: pod outside",
            ranges_with_pods,
            "lbp",
            Pod(2),
            1,
            v4,
            None,
        ),
        (
            "ranges with node addresses: the node holding the LB IP, from it",
            ranges_with_nodes,
            "lbn",
            HostFromFrontend(0),
            0,
            v4,
            Some(Seen::IngressNode),
        ),
        (
            "ranges without node addresses: the node holding the LB IP, from it",
            ranges_v4_only,
            "lbr",
            HostFromFrontend(0),
            0,
            v4,
            None,
        ),
        (
            "ranges with node addresses: the node holding the ipv6 LB IP, from it",
            ranges_with_nodes,
            "lbn",
            HostFromFrontend(0),
            0,
            v6,
            None,
        ),
        (
            "ranges with pods: pod outside",
            ranges_with_pods,
            "lbp",
            Pod(2),
            1,
            v6,
            None,
        ),
        (
            "ranges with ipv6 node addresses: node itself",
            ranges_with_v6_nodes,
            "lbn6",
            Host(0),
            0,
            v6,
            Some(Seen::IngressNode),
        ),
        (
            "ranges with ipv6 node addresses: other node itself",
            ranges_with_v6_nodes,
            "lbn6",
            Host(1),
            1,
            v6,
            Some(Seen::IngressNode),
        ),
        (
            "ranges with ipv6 node addresses: outside client",
            ranges_with_v6_nodes,
            "lbn6",
            External(0),
            0,
            v6,
            None,
        ),
        (
            "ranges with ipv6 node addresses: pod",
            ranges_with_v6_nodes,
            "lbn6",
            Pod(0),
            0,
            v6,
            None,
        ),
        (
            "ranges with ipv6 node addresses: pod on another node",
            ranges_with_v6_nodes,
            "lbn6",
            Pod(2),
            1,
            v6,
            None,
        ),
        (
            "ranges with ipv6 node addresses: the node holding the LB IP, from it",
            ranges_with_v6_nodes,
            "lbn6",
            HostFromFrontend(0),
            0,
            v6,
            Some(Seen::IngressNode),
        ),
        (
            "ranges with ipv6 node addresses: ipv4 outside client allowed",
            ranges_with_v6_nodes,
            "lbn6",
            External(0),
            0,
            v4,
            Some(Seen::IngressNode),
        ),
    ];
    for (name, setup, service, client, node, family, allowed) in range_rows {
        let case = Case::new(name, setup, client, lb(node, service));
        let case = match allowed {
            Some(seen) => case.expect(Backends(vec![1])).seen(seen),
            None => case.expect(Drop),
        };
        add(case, family);
    }
    add(
        Case::new(
            "ranges with pods: ipv6 pod inside",
            ranges_with_pods,
            Pod(1),
            lb(0, "lbp"),
        )
        .expect(Backends(vec![1]))
        .seen(Seen::IngressNode),
        v6,
    );

    // 5. An unallocated address in the service CIDR is dropped (kube-proxy nftables: "drop
    // traffic to unallocated ClusterIPs"); an allocated ClusterIP on an unknown port rejects.
    for family in families {
        for (name, client) in [("pod", Pod(0)), ("node", Host(0)), ("outside", External(0))] {
            add(
                Case::new(
                    &format!("unallocated service address from the {name}"),
                    no_backends_dual,
                    client,
                    Destination::UnallocatedServiceIp,
                )
                .expect(Drop),
                family,
            );
            add(
                Case::new(
                    &format!("clusterip unknown port from the {name}"),
                    no_backends_dual,
                    client,
                    Destination::ClusterIpPort {
                        service: "empty6".to_owned(),
                        port: 81,
                    },
                )
                .expect(Reject)
                .refused_at_once(),
                family,
            );
            // 13. The first refusal arrives: no wait for a retransmission.
            add(
                Case::new(
                    &format!("no backends from the {name}, refused at once"),
                    no_backends_dual,
                    client,
                    Destination::cluster_ip_via(0, "empty6", TCP_PORT),
                )
                .expect(Reject)
                .refused_at_once(),
                family,
            );
            // SCTP too: an ICMP port unreachable (or an ABORT) reaches the client.
            add(
                Case::new(
                    &format!("no backends from the {name}, refused"),
                    no_backends_dual,
                    client,
                    Destination::cluster_ip_via(0, "empty6", TCP_PORT),
                )
                .protocol(Protocol::Sctp)
                .expect(Reject),
                family,
            );
        }
    }

    // 9. One unsupported feature does not take the node down: a service with an SCTP port is
    // still served on its TCP and UDP ports by every backend; and on its SCTP port by those
    // that declare SCTP.
    for family in families {
        for (name, client, destination) in [
            (
                "pod",
                Pod(0),
                Destination::cluster_ip_via(0, "sctp", TCP_PORT),
            ),
            (
                "outside",
                External(0),
                Destination::node_port(0, "sctp", TCP_PORT),
            ),
        ] {
            let seen = if name == "pod" {
                Seen::Client
            } else {
                Seen::IngressNode
            };
            add(
                Case::new(
                    &format!(
                        "a service with an sctp port still serves its other ports to the {name}"
                    ),
                    with_sctp_port,
                    client,
                    destination.clone(),
                )
                .expect(Backends(vec![2]))
                .seen(seen),
                family,
            );
            // A backend that declares SCTP serves that port too (one that does not skips it).
            add(
                Case::new(
                    &format!("a service with an sctp port serves it to the {name}"),
                    with_sctp_port,
                    client,
                    destination,
                )
                .protocol(Protocol::Sctp)
                .expect(Backends(vec![2]))
                .seen(seen),
                family,
            );
        }
    }

    // 6. masquerade.allServices (kube-proxy --masquerade-all): every service connection is
    // masqueraded, except outside clients of an eTP:Local service.
    for family in families {
        add(
            Case::new(
                "masquerade allServices: pod to a clusterip",
                all_services,
                Pod(0),
                Destination::cluster_ip_via(0, "mas", TCP_PORT),
            )
            .node(masquerade_services)
            .expect(Backends(vec![2]))
            .seen(Seen::IngressNode),
            family,
        );
        add(
            Case::new(
                "masquerade allServices: pod to an etp=local nodeport",
                all_services,
                Pod(3),
                Destination::node_port(1, "masl", TCP_PORT),
            )
            .node(masquerade_services)
            .expect(Backends(vec![2]))
            .seen(Seen::IngressNode),
            family,
        );
        add(
            Case::new(
                "masquerade allServices: outside to an etp=local nodeport keeps the client",
                all_services,
                External(0),
                Destination::node_port(1, "masl", TCP_PORT),
            )
            .node(masquerade_services)
            .expect(Backends(vec![2]))
            .seen(Seen::Client),
            family,
        );
        add(
            Case::new(
                "masquerade allServices: pod to another node's pod is no service",
                all_services,
                Pod(0),
                Destination::PodIp(2),
            )
            .node(masquerade_services)
            .expect(Backends(vec![2]))
            .seen(Seen::Client)
            .requires(Requirement::Masquerade),
            family,
        );
    }
    cases
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn standard_rows_have_unique_names_and_both_protocols() {
        let cases = standard_cases();
        let names: BTreeSet<&str> = cases.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names.len(), cases.len(), "duplicate row names");
        assert!(cases.iter().any(|c| c.protocol == Protocol::Udp));
        assert!(cases.iter().any(|c| c.family == IpFamily::V6));
        for c in &cases {
            if c.protocol == Protocol::Udp {
                assert!(c.name.ends_with(" udp"), "{}", c.name);
            }
            if c.protocol == Protocol::Sctp {
                assert!(c.name.ends_with(" sctp"), "{}", c.name);
            }
        }
    }

    /// Every matrix cell (client kind x frontend kind x family) has its SCTP row beside the
    /// TCP and UDP ones, on the service's SCTP port, and so has row 9.
    #[test]
    fn the_matrix_and_row_9_have_sctp_rows() {
        let cases = standard_cases();
        let tcp: Vec<&Case> = cases
            .iter()
            .filter(|c| c.name.starts_with("matrix: ") && c.protocol == Protocol::Tcp)
            .collect();
        assert_eq!(tcp.len(), 6 * 4 * 2);
        for row in tcp {
            let name = format!("{} sctp", row.name.trim_end_matches(" tcp"));
            let sctp = cases
                .iter()
                .find(|c| c.name == name)
                .unwrap_or_else(|| panic!("no {name:?}"));
            assert_eq!(sctp.protocol, Protocol::Sctp);
            assert_eq!(sctp.family, row.family);
            assert_eq!(sctp.client, row.client);
            assert_eq!(sctp.expect, row.expect);
            assert_eq!(sctp.source_seen, row.source_seen);
            assert_eq!(
                over(row.clone(), Protocol::Sctp).destination,
                sctp.destination
            );
            assert!(sctp.requirements().contains(&Requirement::Sctp));
        }
        let row9: Vec<&str> = cases
            .iter()
            .filter(|c| c.protocol == Protocol::Sctp && c.name.starts_with("a service with"))
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(row9.len(), 4, "{row9:?}");
        let rejects = cases
            .iter()
            .filter(|c| c.protocol == Protocol::Sctp && c.expect == Expect::Reject)
            .count();
        assert_eq!(rejects, 3 * 2, "no backends, from a pod, the node, outside");
    }
}
