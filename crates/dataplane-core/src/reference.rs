//! The reference model: what should happen to a packet, as a pure function of the state.
//!
//! Every backend must agree with it; the conformance table in `dataplane-testkit` checks each
//! row's expectation against [`evaluate`] before it sends real traffic through a backend.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::model::{
    Backend, DesiredState, ObjectName, Protocol, Service, ServicePort, TrafficPolicy,
};

/// A packet's 5-tuple.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Packet {
    /// Protocol.
    pub protocol: Protocol,
    /// Source address and port.
    pub source: SocketAddr,
    /// Destination address and port.
    pub destination: SocketAddr,
}

/// Where a packet enters the node's dataplane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Entry {
    /// From a local pod (its host-side interface).
    FromPod(ObjectName),
    /// From outside the node, on the uplink.
    FromUplink,
    /// From the node itself (host network namespace).
    FromHost,
}

/// Which kind of frontend a packet addressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FrontendKind {
    /// A ClusterIP.
    ClusterIp,
    /// A NodePort on a node address.
    NodePort,
    /// A LoadBalancer IP.
    LoadBalancer,
    /// An ExternalIP.
    ExternalIp,
}

/// What should happen to a packet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    /// Destination-NAT to one of `backends` (any of them is correct).
    Forward {
        /// The service.
        service: ObjectName,
        /// The frontend kind matched.
        frontend: FrontendKind,
        /// Acceptable backends.
        backends: BTreeSet<SocketAddr>,
        /// The source address the backend sees. Hairpin exception: a pod that reaches a
        /// ClusterIP and is given itself as the backend sees the node address
        /// ([`hairpin_source`]) whatever this says; when every acceptable backend is the
        /// client, this already says so.
        source: SourceSeen,
    },
    /// Silently dropped.
    Drop,
    /// Rejected: TCP RST or ICMP unreachable.
    Reject,
    /// Not a service packet: routed as it is, possibly masqueraded.
    Untouched {
        /// The source address the destination sees.
        source: SourceSeen,
    },
}

/// The source address the receiver sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SourceSeen {
    /// The client's own address.
    Client,
    /// Masqueraded to this node address.
    Masqueraded(IpAddr),
}

/// Whether traffic is internal (ClusterIP from inside the cluster) or external.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TrafficKind {
    /// Governed by `internalTrafficPolicy`.
    Internal,
    /// Governed by `externalTrafficPolicy`.
    External,
}

/// An IP address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum IpFamily {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl IpFamily {
    /// The family of `ip`.
    pub fn of(ip: &IpAddr) -> Self {
        if ip.is_ipv4() {
            IpFamily::V4
        } else {
            IpFamily::V6
        }
    }
}

/// The backends a new connection may pick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Eligible<'a> {
    /// Pick one of these: the ready backends or, when none is ready, the serving terminating
    /// ones (kube-proxy's fallback). Never empty.
    Backends(Vec<&'a Backend>),
    /// The traffic policy is `Local` and no backend runs on this node: drop.
    NoLocal,
    /// The service has no usable backend: reject (TCP RST, ICMP port unreachable).
    NoBackends,
}

/// The backends of `service` that a new connection of `traffic` kind and `family` may pick on
/// this node.
///
/// Order: backends of the right family, filtered to node-local ones when the applicable
/// traffic policy is `Local`; of those the ready ones, or if none is ready the serving
/// terminating ones. A `Local` policy with backends elsewhere but none here gives
/// [`Eligible::NoLocal`] (drop, as kube-proxy does); no usable backend at all gives
/// [`Eligible::NoBackends`] (reject).
pub fn eligible_backends<'a>(
    state: &DesiredState,
    service: &'a Service,
    _port: &ServicePort,
    traffic: TrafficKind,
    family: IpFamily,
) -> Eligible<'a> {
    let policy = match traffic {
        TrafficKind::Internal => service.internal_traffic_policy,
        TrafficKind::External => service.external_traffic_policy,
    };
    eligible_with_policy(state, service, policy, family)
}

/// [`eligible_backends`] under `policy` instead of the service's own traffic policy: what a
/// backend answers for clients the policy does not apply to (pods and the host reaching an
/// external frontend use cluster-wide backends), without a modified copy of the service.
pub fn eligible_backends_with_policy<'a>(
    state: &DesiredState,
    service: &'a Service,
    policy: TrafficPolicy,
    family: IpFamily,
) -> Eligible<'a> {
    eligible_with_policy(state, service, policy, family)
}

fn eligible_with_policy<'a>(
    state: &DesiredState,
    service: &'a Service,
    policy: TrafficPolicy,
    family: IpFamily,
) -> Eligible<'a> {
    let of_family: Vec<&Backend> = service
        .backends
        .iter()
        .filter(|b| IpFamily::of(&b.ip) == family)
        .collect();
    let usable = |set: &[&'a Backend]| -> Vec<&'a Backend> {
        let ready: Vec<&Backend> = set
            .iter()
            .copied()
            .filter(|b| b.ready && !b.terminating)
            .collect();
        if ready.is_empty() {
            set.iter()
                .copied()
                .filter(|b| b.serving && b.terminating)
                .collect()
        } else {
            ready
        }
    };
    if policy == TrafficPolicy::Local {
        let local: Vec<&Backend> = of_family
            .iter()
            .copied()
            .filter(|b| b.is_local_to(&state.node))
            .collect();
        let picked = usable(&local);
        if !picked.is_empty() {
            return Eligible::Backends(picked);
        }
        return if usable(&of_family).is_empty() {
            Eligible::NoBackends
        } else {
            Eligible::NoLocal
        };
    }
    let picked = usable(&of_family);
    if picked.is_empty() {
        Eligible::NoBackends
    } else {
        Eligible::Backends(picked)
    }
}

/// The source a pod sees when its connection to a ClusterIP is given back to itself.
pub fn hairpin_source(state: &DesiredState, client: IpAddr) -> SourceSeen {
    masquerade_if(state, IpFamily::of(&client), true)
}

/// The first node address of `family`: the masquerade source.
pub fn node_address(state: &DesiredState, family: IpFamily) -> Option<IpAddr> {
    state
        .node
        .addresses
        .iter()
        .copied()
        .find(|a| IpFamily::of(a) == family)
}

fn in_any(ip: IpAddr, cidrs: &[ipnetwork::IpNetwork]) -> bool {
    cidrs.iter().any(|c| c.contains(ip))
}

/// Says what should happen to `packet` entering this node's dataplane at `entry`.
///
/// The rules (shared by every backend):
/// - ClusterIP from a pod or the host: `internalTrafficPolicy`; the source is preserved, except
///   for hairpin (the only acceptable backends include the client itself), which is masqueraded
///   to the node address.
/// - ClusterIP from outside: cluster-wide; masqueraded unless the source is in the cluster CIDRs.
/// - NodePort (node addresses), LoadBalancer IPs and ExternalIPs from outside:
///   `externalTrafficPolicy`. `Cluster` masquerades to the node address unless the service's
///   external mode is DSR (`Dsr`, or `Hybrid` for TCP), which keeps the client address;
///   `Local` keeps the client address and drops when no backend is local. `loadBalancerSourceRanges` drop other
///   clients on LoadBalancer IPs.
/// - The same frontends from a pod or the host: cluster-wide, masqueraded.
/// - No usable backend: reject. A ClusterIP on a port no service port uses: reject.
/// - Anything else is untouched; pod traffic leaving the cluster is masqueraded when the node
///   says so.
pub fn evaluate(state: &DesiredState, packet: &Packet, entry: &Entry) -> Verdict {
    let dst = packet.destination.ip();
    let from_outside = matches!(entry, Entry::FromUplink);
    let mut cluster_ip_hit = false;
    for service in &state.services {
        let is_cluster_ip = service.cluster_ips.contains(&dst);
        cluster_ip_hit |= is_cluster_ip;
        for port in service
            .ports
            .iter()
            .filter(|p| p.protocol == packet.protocol)
        {
            let dport = packet.destination.port();
            let kind = if is_cluster_ip {
                if port.port != dport {
                    continue;
                }
                FrontendKind::ClusterIp
            } else if port.port == dport && service.load_balancer_ips.contains(&dst) {
                FrontendKind::LoadBalancer
            } else if port.port == dport && service.external_ips.contains(&dst) {
                FrontendKind::ExternalIp
            } else if port.node_port == Some(dport) && state.node.addresses.contains(&dst) {
                FrontendKind::NodePort
            } else {
                continue;
            };
            return forward(state, service, port, kind, packet, from_outside);
        }
    }
    if cluster_ip_hit {
        return Verdict::Reject;
    }
    let m = &state.node.masquerade;
    let leaves_cluster = !in_any(dst, &state.node.cluster_cidrs)
        && !in_any(dst, &m.non_masquerade_cidrs)
        && !state.node.addresses.contains(&dst);
    let masquerade = matches!(entry, Entry::FromPod(_))
        && m.enabled
        && ((m.all && !in_any(dst, &state.node.pod_cidrs) && !state.node.addresses.contains(&dst))
            || leaves_cluster);
    Verdict::Untouched {
        source: masquerade_if(state, IpFamily::of(&dst), masquerade),
    }
}

fn masquerade_if(state: &DesiredState, family: IpFamily, masquerade: bool) -> SourceSeen {
    match (masquerade, node_address(state, family)) {
        (true, Some(a)) => SourceSeen::Masqueraded(a),
        _ => SourceSeen::Client,
    }
}

fn forward(
    state: &DesiredState,
    service: &Service,
    port: &ServicePort,
    kind: FrontendKind,
    packet: &Packet,
    from_outside: bool,
) -> Verdict {
    let src = packet.source.ip();
    let family = IpFamily::of(&packet.destination.ip());
    if kind == FrontendKind::LoadBalancer
        && from_outside
        && !service.load_balancer_source_ranges.is_empty()
        && !in_any(src, &service.load_balancer_source_ranges)
    {
        return Verdict::Drop;
    }
    // ClusterIPs from inside use internalTrafficPolicy; external frontends from outside use
    // externalTrafficPolicy; the cross cases are cluster-wide (kube-proxy's short-circuit).
    let policy = match (kind == FrontendKind::ClusterIp, from_outside) {
        (true, false) => service.internal_traffic_policy,
        (false, true) => service.external_traffic_policy,
        _ => TrafficPolicy::Cluster,
    };
    let backends: BTreeSet<SocketAddr> = match eligible_with_policy(state, service, policy, family)
    {
        Eligible::Backends(b) => b
            .iter()
            .map(|b| SocketAddr::new(b.ip, port.target_port))
            .collect(),
        Eligible::NoLocal => return Verdict::Drop,
        Eligible::NoBackends => return Verdict::Reject,
    };
    let masquerade = match (kind, from_outside) {
        // Hairpin: when the only choice is the client itself it must be masqueraded; with a
        // mixed set the client keeps its address unless it happens to pick itself (see
        // `Verdict::Forward::source`).
        (FrontendKind::ClusterIp, false) => backends.iter().all(|b| b.ip() == src),
        (FrontendKind::ClusterIp, true) => !in_any(src, &state.node.cluster_cidrs),
        // DSR keeps the client's address whichever node the backend runs on.
        (_, true) => {
            service.external_traffic_policy != TrafficPolicy::Local
                && !service.uses_dsr(&state.node, packet.protocol)
        }
        (_, false) => true,
    };
    Verdict::Forward {
        service: service.name.clone(),
        frontend: kind,
        backends,
        source: masquerade_if(state, family, masquerade),
    }
}
