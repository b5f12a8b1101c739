//! The flavour-independent plan: what each service port needs, per address family, decided once
//! from the desired state. Both renderers turn a [`Plan`] into their own text.
//!
//! Pure: no syscalls.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use dataplane_core::{
    eligible_backends, source_range_allow_list, BackendSelection, ChangeSet, DesiredState,
    Eligible, Error, ExternalMode, IpFamily, Node, ObjectName, Protocol, Service, ServicePort,
    SessionAffinity, Skipped, TrafficKind, TrafficPolicy,
};
use ipnetwork::IpNetwork;

use crate::flavour::Flavour;

/// The names this crate gives an address family (`v4`, `v6`), which core's [`IpFamily`] does
/// not carry: an extension until core has them.
pub(crate) trait FamilySuffix {
    /// `v4` or `v6`, used in names.
    fn suffix(self) -> &'static str;
}

impl FamilySuffix for IpFamily {
    fn suffix(self) -> &'static str {
        match self {
            IpFamily::V4 => "v4",
            IpFamily::V6 => "v6",
        }
    }
}

/// Which backends a frontend may pick, and what happens when there are none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// Pick one of these (address, weight).
    Backends(Vec<(SocketAddr, u16)>),
    /// Traffic policy Local and no local backend: drop.
    Drop,
    /// No backend at all: reject (TCP reset / ICMP port unreachable).
    Reject,
}

/// Backend candidates of `service` for `family` under `traffic`, as the reference model
/// decides them ([`dataplane_core::eligible_backends`]).
pub fn eligible(
    state: &DesiredState,
    service: &Service,
    port: &ServicePort,
    traffic: TrafficKind,
    family: IpFamily,
) -> Choice {
    match eligible_backends(state, service, port, traffic, family) {
        Eligible::NoLocal => Choice::Drop,
        Eligible::NoBackends => Choice::Reject,
        Eligible::Backends(chosen) => {
            let mut out: Vec<(SocketAddr, u16)> = chosen
                .into_iter()
                .map(|b| (b.target(port), b.weight.max(1)))
                .collect();
            out.sort_unstable();
            out.dedup_by(|a, b| a.0 == b.0);
            Choice::Backends(out)
        }
    }
}

/// One service port in one address family: its frontends and backend choices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortPlan {
    /// The service.
    pub service: ObjectName,
    /// Protocol.
    pub protocol: Protocol,
    /// Service port (the ClusterIP port).
    pub port: u16,
    /// Address family of everything below.
    pub family: IpFamily,
    /// ClusterIPs (internal traffic).
    pub cluster_ips: Vec<IpAddr>,
    /// ExternalIPs on `port`.
    pub external_ips: Vec<IpAddr>,
    /// LoadBalancer IPs on `port`.
    pub load_balancer_ips: Vec<IpAddr>,
    /// NodePort frontends: node addresses of this family and the node port.
    pub node_port: Option<(Vec<IpAddr>, u16)>,
    /// Sources allowed to reach the LoadBalancer IPs (this family):
    /// [`dataplane_core::source_range_allow_list`] (the service's ranges of this family, and
    /// its LoadBalancer IPs of this family when a range holds a node address), without entries
    /// that another entry contains. Empty = everyone (no range of this family).
    pub source_ranges: Vec<IpNetwork>,
    /// ClientIP affinity timeout.
    pub affinity_timeout: Option<u32>,
    /// Maglev (consistent hashing of the 5-tuple) instead of random selection.
    pub maglev: bool,
    /// Choice for ClusterIP traffic (internalTrafficPolicy), whoever the client is.
    pub internal: Choice,
    /// Choice for external traffic from outside the node (externalTrafficPolicy).
    pub external: Choice,
    /// Cluster-wide choice: external frontends reached from a pod or the host.
    pub cluster: Choice,
    /// Whether external traffic from outside is masqueraded (externalTrafficPolicy Cluster);
    /// `false` (Local) also means that pods of this node reaching the external frontends keep
    /// their address and the node is masqueraded (kube-proxy's short-circuit).
    pub external_masquerade: bool,
}

impl PortPlan {
    /// Whether the port has any frontend reachable as external traffic.
    pub fn has_external(&self) -> bool {
        !self.external_ips.is_empty()
            || !self.load_balancer_ips.is_empty()
            || self.node_port.is_some()
    }

    /// A stable, human-readable name: `namespace/name/protocol/port`.
    pub fn key(&self) -> String {
        format!(
            "{}/{}/{}/{}",
            self.service.namespace,
            self.service.name,
            proto_name(self.protocol),
            self.port
        )
    }

    /// Every backend any choice of this port may pick (for affinity endpoint chains).
    pub fn all_backends(&self) -> BTreeSet<SocketAddr> {
        let mut out = BTreeSet::new();
        for choice in [&self.internal, &self.external, &self.cluster] {
            if let Choice::Backends(b) = choice {
                out.extend(b.iter().map(|(a, _)| *a));
            }
        }
        out
    }
}

/// Lower-case protocol name as nft and iptables spell it.
pub fn proto_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

/// Node-wide settings both renderers need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePlan {
    /// The uplink interface.
    pub uplink: String,
    /// First node address per family (masquerade source).
    pub masquerade_v4: Option<IpAddr>,
    /// First IPv6 node address.
    pub masquerade_v6: Option<IpAddr>,
    /// This node's pod CIDRs.
    pub pod_cidrs: Vec<IpNetwork>,
    /// The cluster's pod CIDRs.
    pub cluster_cidrs: Vec<IpNetwork>,
    /// Destinations never masqueraded: cluster CIDRs, the node's non-masquerade CIDRs and the
    /// node addresses.
    pub no_masquerade: Vec<IpNetwork>,
    /// Pod masquerade on.
    pub masquerade: bool,
    /// Masquerade all pod traffic leaving through the uplink.
    pub masquerade_all: bool,
    /// Masquerade every service connection except those whose client address the service
    /// keeps (`masquerade.allServices`, kube-proxy's `--masquerade-all`).
    pub masquerade_services: bool,
    /// The node's service CIDRs: addresses in them that are no ClusterIP are dropped.
    pub service_cidrs: Vec<IpNetwork>,
    /// How the drop and reject rules log (the backend's configuration; the nftables
    /// defaults from [`node_plan`]).
    pub log: crate::eventlog::LogPlan,
    /// nftables: simple service ports pick through shared chains
    /// ([`crate::NetfilterConfig::shared_pick_chains`]).
    pub shared_pick_chains: bool,
    /// iptables flavour: hairpin is masqueraded through the hairpin ipset, and no backend
    /// needs a chain for it ([`crate::NetfilterConfig::hairpin_ipset`]).
    pub hairpin_set: bool,
}

impl NodePlan {
    /// The masquerade source for `family`, if the node has an address of it.
    pub fn masquerade_source(&self, family: IpFamily) -> Option<IpAddr> {
        match family {
            IpFamily::V4 => self.masquerade_v4,
            IpFamily::V6 => self.masquerade_v6,
        }
    }
}

/// The whole plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Node-wide settings.
    pub node: NodePlan,
    /// Service ports by service.
    pub services: BTreeMap<ObjectName, Vec<PortPlan>>,
    /// Hairpin candidates: local pod and backend addresses.
    pub local_pod_ips: BTreeSet<IpAddr>,
}

/// Builds the node part of the plan.
pub fn node_plan(node: &Node) -> NodePlan {
    let first = |f: IpFamily| {
        node.addresses
            .iter()
            .copied()
            .find(|a| IpFamily::of(a) == f)
    };
    let mut no_masquerade = node.cluster_cidrs.clone();
    no_masquerade.extend(node.masquerade.non_masquerade_cidrs.iter().copied());
    no_masquerade.extend(node.addresses.iter().map(|a| IpNetwork::from(*a)));
    NodePlan {
        uplink: node.interfaces.uplink.clone(),
        masquerade_v4: first(IpFamily::V4),
        masquerade_v6: first(IpFamily::V6),
        pod_cidrs: node.pod_cidrs.clone(),
        cluster_cidrs: node.cluster_cidrs.clone(),
        no_masquerade,
        masquerade: node.masquerade.enabled,
        masquerade_all: node.masquerade.all,
        masquerade_services: node.masquerade.all_services,
        service_cidrs: node.service_cidrs.clone(),
        log: crate::eventlog::LogPlan::default(),
        shared_pick_chains: false,
        hairpin_set: false,
    }
}

/// [`node_plan`] with the logging of `config`.
pub fn node_plan_with(node: &Node, config: &crate::NetfilterConfig) -> NodePlan {
    NodePlan {
        log: config.log_plan(),
        shared_pick_chains: config.shared_pick_chains,
        hairpin_set: config.hairpin_ipset,
        ..node_plan(node)
    }
}

/// Refuses states that need what the flavour cannot express safely (network policy where
/// the flavour lacks it: left out, its pods would be open to everyone; cluster and host
/// endpoint policy, which neither flavour programs yet) and lists what it serves in a lesser way instead of
/// refusing the node (issue 15: one unsupported feature must not take a whole node down):
/// DSR and hybrid external modes are served with SNAT (backends see the node address),
/// Maglev selection where the flavour lacks it with random selection.
pub(crate) fn check_supported(
    state: &DesiredState,
    flavour: Flavour,
) -> Result<Vec<Skipped>, Error> {
    let capabilities = flavour.capabilities();
    let maglev = capabilities.maglev;
    if let Some(p) = state
        .policies
        .first()
        .filter(|_| !capabilities.network_policy)
    {
        return Err(Error::Unsupported {
            dataplane: flavour.name().to_owned(),
            feature: "network policy".to_owned(),
            object: format!("policy {}", p.name),
        });
    }
    // Cluster-wide and host endpoint policy: both flavours program them (issue 22); a flavour
    // that did not would refuse them here, as leaving them out would leave open what they close.
    capabilities.check_policy_tiers(state)?;
    capabilities.check_l2_announcements(state)?;
    let mut skipped = Vec::new();
    for s in &state.services {
        let object = || format!("service {}", s.name);
        if s.backend_selection == BackendSelection::Maglev && !maglev {
            skipped.push(Skipped {
                object: object(),
                field: "backendSelection".to_owned(),
                feature: "Maglev backend selection".to_owned(),
                reason: "served with random selection".to_owned(),
            });
        }
        let external = !s.external_ips.is_empty()
            || !s.load_balancer_ips.is_empty()
            || s.ports.iter().any(|p| p.node_port.is_some());
        // Only `Cluster` services forward external traffic to other nodes (DSR's case).
        if external && s.external_traffic_policy == TrafficPolicy::Cluster {
            let feature = match s.effective_external_mode(&state.node) {
                ExternalMode::Snat => None,
                ExternalMode::Dsr => Some("direct server return (DSR)"),
                ExternalMode::Hybrid => Some("hybrid DSR/SNAT external mode (DSR for TCP)"),
            };
            if let Some(feature) = feature {
                skipped.push(Skipped {
                    object: object(),
                    field: "externalMode".to_owned(),
                    feature: feature.to_owned(),
                    reason: "external traffic served with SNAT: backends see the node address"
                        .to_owned(),
                });
            }
        }
    }
    for skip in &skipped {
        tracing::warn!(backend = flavour.name(), %skip, "not programmed as asked");
    }
    Ok(skipped)
}

/// Builds the plan of a (validated, supported) state.
pub fn plan(state: &DesiredState) -> Plan {
    let services = state
        .services
        .iter()
        .map(|s| (s.name.clone(), service_ports(state, s)))
        .collect();
    Plan {
        node: node_plan(&state.node),
        services,
        local_pod_ips: local_pod_ips(state),
    }
}

/// Hairpin candidates of `state`: local pod and backend addresses.
pub fn local_pod_ips(state: &DesiredState) -> BTreeSet<IpAddr> {
    let mut ips: BTreeSet<IpAddr> = state
        .endpoints
        .iter()
        .flat_map(|e| e.ips.iter().copied())
        .collect();
    for s in &state.services {
        ips.extend(hairpin_candidates(s, &state.node));
    }
    ips
}

/// The port plans of one service; `state` supplies the node (its services are not read).
pub fn service_ports(state: &DesiredState, s: &Service) -> Vec<PortPlan> {
    let mut ports = Vec::new();
    for p in &s.ports {
        for family in [IpFamily::V4, IpFamily::V6] {
            if let Some(pp) = port_plan(state, s, p, family) {
                ports.push(pp);
            }
        }
    }
    ports
}

/// The services a change set touches, planned against `node_state`'s node (`None`: removed).
pub fn changed_ports(
    node_state: &DesiredState,
    changes: &ChangeSet,
) -> BTreeMap<ObjectName, Option<Vec<PortPlan>>> {
    changes
        .services
        .iter()
        .map(|(name, c)| {
            (
                name.clone(),
                c.current.as_ref().map(|s| service_ports(node_state, s)),
            )
        })
        .collect()
}

/// Hairpin candidates a change set brings.
pub fn changed_hairpin(node: &Node, changes: &ChangeSet) -> BTreeSet<IpAddr> {
    let mut out = BTreeSet::new();
    for c in changes.services.values() {
        if let Some(s) = &c.current {
            out.extend(hairpin_candidates(s, node));
        }
    }
    for c in changes.endpoints.values() {
        if let Some(e) = &c.current {
            out.extend(e.ips.iter().copied());
        }
    }
    out
}

/// Addresses that may see their own connections come back after DNAT (hairpin): backends on
/// this node (by `nodeName` or because they sit in the node's pod CIDRs). Listing an address
/// too many is harmless: a DNAT-ed connection whose source equals its new destination is a
/// hairpin whichever service it went through.
pub fn hairpin_candidates<'a>(s: &'a Service, node: &'a Node) -> impl Iterator<Item = IpAddr> + 'a {
    s.backends
        .iter()
        .filter(|b| b.is_local_to(node) || node.pod_cidrs.iter().any(|c| c.contains(b.ip)))
        .map(|b| b.ip)
}

fn port_plan(
    state: &DesiredState,
    s: &Service,
    p: &ServicePort,
    family: IpFamily,
) -> Option<PortPlan> {
    let node = &state.node;
    let of = |v: &[IpAddr]| -> Vec<IpAddr> {
        let mut out: Vec<IpAddr> = v
            .iter()
            .copied()
            .filter(|a| IpFamily::of(a) == family)
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    };
    let cluster_ips = of(&s.cluster_ips);
    let external_ips = of(&s.external_ips);
    let load_balancer_ips = of(&s.load_balancer_ips);
    let node_addrs = of(&node.addresses);
    let node_port = p
        .node_port
        .filter(|_| !node_addrs.is_empty())
        .map(|np| (node_addrs, np));
    if cluster_ips.is_empty()
        && external_ips.is_empty()
        && load_balancer_ips.is_empty()
        && node_port.is_none()
    {
        return None;
    }
    let source_ranges = source_range_allow_list(state, s, family)
        .map(|list| without_covered(&list))
        .unwrap_or_default();
    let affinity_timeout = match s.session_affinity {
        SessionAffinity::None => None,
        SessionAffinity::ClientIp { timeout_seconds } => Some(timeout_seconds.max(1)),
    };
    let mut cluster_policy = s.clone();
    cluster_policy.external_traffic_policy = TrafficPolicy::Cluster;
    Some(PortPlan {
        service: s.name.clone(),
        protocol: p.protocol,
        port: p.port,
        family,
        cluster_ips,
        external_ips,
        load_balancer_ips,
        node_port,
        source_ranges,
        affinity_timeout,
        maglev: s.backend_selection == BackendSelection::Maglev,
        internal: eligible(state, s, p, TrafficKind::Internal, family),
        external: eligible(state, s, p, TrafficKind::External, family),
        cluster: eligible(state, &cluster_policy, p, TrafficKind::External, family),
        external_masquerade: s.external_traffic_policy == TrafficPolicy::Cluster,
    })
}

/// `list` without the entries another entry contains (the first of equal ones stays), in
/// order: the same sources, and a set nft accepts (an anonymous interval set refuses
/// overlapping elements; an LB IP that `allowFromNode` adds often lies in a range already).
fn without_covered(list: &[IpNetwork]) -> Vec<IpNetwork> {
    let covers = |outer: &IpNetwork, inner: &IpNetwork| {
        outer.prefix() <= inner.prefix() && outer.contains(inner.network())
    };
    list.iter()
        .enumerate()
        .filter(|(i, n)| {
            !list
                .iter()
                .enumerate()
                .any(|(j, o)| j != *i && covers(o, n) && (o.prefix() < n.prefix() || j < *i))
        })
        .map(|(_, n)| *n)
        .collect()
}

/// Slots of a weighted backend list: each backend repeated `weight / gcd` times. When that
/// would exceed `limit` slots, weights are scaled down to fit (each backend keeps at least one
/// slot), so extreme weight ratios are approximated rather than refused.
pub fn slots(backends: &[(SocketAddr, u16)], limit: usize) -> Vec<SocketAddr> {
    let g = backends.iter().fold(0u16, |g, (_, w)| gcd(g, *w)).max(1);
    let total: usize = backends.iter().map(|(_, w)| usize::from(*w / g)).sum();
    let count = |w: u16| -> usize {
        let w = usize::from(w / g);
        if total <= limit {
            w
        } else {
            (w * limit / total).max(1)
        }
    };
    backends
        .iter()
        .flat_map(|(a, w)| std::iter::repeat_n(*a, count(*w)))
        .collect()
}

fn gcd(a: u16, b: u16) -> u16 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_slots_are_reduced_by_gcd() {
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:80".parse().unwrap();
        assert_eq!(slots(&[(a, 2), (b, 4)], 64), vec![a, b, b]);
        assert_eq!(slots(&[(a, 1), (b, 1)], 64), vec![a, b]);
    }

    #[test]
    fn extreme_weights_are_scaled_to_the_slot_limit() {
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:80".parse().unwrap();
        let s = slots(&[(a, 1), (b, 65535)], 4096);
        assert!(s.len() <= 4096 + 1, "{}", s.len());
        assert_eq!(s.iter().filter(|x| **x == a).count(), 1);
        assert!(s.iter().filter(|x| **x == b).count() > 4000);
    }
}
