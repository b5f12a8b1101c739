//! Cluster-wide ordered policy in the nftables flavour: [`dataplane_core::ClusterPolicy`]
//! (Allow, Deny, Pass by priority) before NetworkPolicy, [`dataplane_core::BaselinePolicy`]
//! after it, as core's reference model decides them (`dataplane_core::policy`, "Cluster
//! policies and the baseline"). Pure functions.
//!
//! Followed: the AdminNetworkPolicy API reference and its "Policy precedence" section
//! (<https://network-policy-api.sigs.k8s.io/reference/spec/>), and for the shape the tiers
//! of Calico's per-endpoint chains (projectcalico/calico `felix/rules/endpoints.go`, tested
//! in `endpoints_test.go`: per endpoint, each tier's policies in order, a pass that goes on
//! to the next tier) — written here as verdict-map dispatch and `goto`, our own code.
//!
//! Layout (inside the policy layer of [`super::policy`], whose `pol-dispatch` consults the
//! tier maps before NetworkPolicy's):
//!
//! ```text
//! pol-dispatch:    ip saddr vmap @tier-egress-v4   ─goto─▶ tier-out-<ns>/<pod>
//!                  ip saddr vmap @pol-egress-v4    ─jump─▶ pol-out-<ns>/<pod>   (NetworkPolicy)
//!                  goto pol-dispatch-in
//! pol-dispatch-in: ip daddr vmap @tier-ingress-v4  ─goto─▶ tier-in-<ns>/<pod>
//!                  ip daddr vmap @pol-ingress-v4   ─jump─▶ pol-in-<ns>/<pod>
//! tier-out-<ns>/<pod>: the rules of the cluster policies selecting the pod, priority order
//!     ip daddr { 10.244.1.5, 10.244.2.0/24 } meta l4proto . th dport { tcp . 80 } goto deny-policy-out   (Deny)
//!     ip daddr { … } goto pol-dispatch-in                                               (Allow)
//!     ip daddr { … } goto tnp-out-<ns>/<pod>                                            (Pass)
//!     goto tnp-out-<ns>/<pod>
//! tnp-out-<ns>/<pod>: NetworkPolicy, else the baseline
//!     jump pol-out-<ns>/<pod>; goto pol-dispatch-in           (a NetworkPolicy isolates it)
//!     ip daddr { … } goto deny-policy-out …; goto pol-dispatch-in   (it does not: baseline)
//! ```
//!
//! (and the same for IPv6, and for ingress with `saddr`, `return` for "allowed" and
//! `deny-policy-in`).
//!
//! Why this shape:
//! - An endpoint direction that a cluster policy or the baseline covers is dispatched to its
//!   tier chain by `goto`, which ends the egress half with `goto pol-dispatch-in` (allowed)
//!   and the ingress half with `return` (allowed: back to the hook chain, whose policy
//!   accepts). So an `Allow` skips NetworkPolicy for that direction, which a `jump` and a
//!   `return` could not: the walk would come back to NetworkPolicy's map.
//! - Peers are resolved to addresses here (pods by their namespace and labels, nodes by
//!   their [`dataplane_core::PeerNode`] labels, networks as they are), merged into disjoint
//!   ranges (interval sets refuse overlaps) in an anonymous set per rule and family.
//!   A named port resolves on the destination pod: on ingress that is the endpoint itself
//!   (a plain `protocol . port`), on egress each peer pod (an `address . protocol . port`
//!   element per pod that names the port), in a rule of its own with the same verdict.
//! - The whole tier part is recompiled from the state on every change that can touch it
//!   (cluster policies, baseline, nodes, pods, namespaces, endpoints, NetworkPolicy objects) and,
//!   when it differs, replaced in the same transaction: its chains are flushed and refilled,
//!   so there is no moment without rules. Its cost is linear in endpoints x cluster rules.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use dataplane_core::policy_tables::PortSpec;
use dataplane_core::{
    BaselineAction, ClusterAction, ClusterPeer, ClusterPolicySubject, ClusterPort, ClusterRule,
    DesiredState, Endpoint, IpFamily, LabelSelector, NamedPort, ObjectName, PolicyType, Protocol,
};
use ipnetwork::IpNetwork;

use super::family::ip_kw;
use super::rule_text::{
    chain_name, disjoint, port_match, sha256_name, Direction, DENY_POLICY_IN_CHAIN,
    DENY_POLICY_OUT_CHAIN,
};
use crate::plan::proto_name;

/// The chain NetworkPolicy's ingress dispatch is in; an allowed egress half goes on there.
pub const DISPATCH_IN_CHAIN: &str = "pol-dispatch-in";

/// Longest chain name `nf_tables` takes.
const MAX_CHAIN_NAME: usize = 255;

/// The tier dispatch map of `direction` and `family`.
pub fn tier_map(direction: Direction, family: IpFamily) -> &'static str {
    match (direction, family) {
        (Direction::Ingress, IpFamily::V4) => "tier-ingress-v4",
        (Direction::Ingress, IpFamily::V6) => "tier-ingress-v6",
        (Direction::Egress, IpFamily::V4) => "tier-egress-v4",
        (Direction::Egress, IpFamily::V6) => "tier-egress-v6",
    }
}

/// The tier objects of a state: chains and dispatch elements.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NftTiers {
    /// Chain name → its rules.
    pub chains: BTreeMap<String, Vec<String>>,
    /// (tier map, `address : goto chain`) elements.
    pub elements: BTreeSet<(&'static str, String)>,
}

impl NftTiers {
    /// Whether there is nothing (no cluster policy or baseline covers a local endpoint).
    pub fn is_empty(&self) -> bool {
        self.chains.is_empty() && self.elements.is_empty()
    }
}

/// A tier chain name: `<prefix><ns>/<pod>`, cut and hashed when too long (as
/// [`chain_name`]).
fn tier_chain(prefix: &str, endpoint: &ObjectName) -> String {
    let full = format!("{prefix}{}/{}", endpoint.namespace, endpoint.name);
    if full.len() <= MAX_CHAIN_NAME {
        return full;
    }
    let hash = sha256_name(&full);
    let keep = MAX_CHAIN_NAME - hash.len() - 1;
    format!("{}_{hash}", &full[..keep])
}

/// Compiles the tier objects of `state` (valid).
pub fn compile(state: &DesiredState) -> NftTiers {
    let mut out = NftTiers::default();
    if state.cluster_policies.is_empty() && state.baseline_policy.is_none() {
        return out;
    }
    let ctx = Context::new(state);
    for e in &state.endpoints {
        for direction in [Direction::Egress, Direction::Ingress] {
            ctx.endpoint_direction(e, direction, &mut out);
        }
    }
    out
}

/// A pod as a peer: namespace, labels, addresses, named ports.
struct PodInfo<'a> {
    namespace: &'a str,
    labels: &'a BTreeMap<String, String>,
    ips: &'a [IpAddr],
    named_ports: &'a [NamedPort],
}

/// What the rules of one state are resolved against.
struct Context<'a> {
    state: &'a DesiredState,
    pods: Vec<PodInfo<'a>>,
    /// Namespace labels by namespace, for every namespace a pod is in.
    ns_labels: BTreeMap<&'a str, BTreeMap<String, String>>,
    /// Every pod address (a pod address is never a node peer).
    pod_ips: BTreeSet<IpAddr>,
}

impl<'a> Context<'a> {
    fn new(state: &'a DesiredState) -> Self {
        let mut pods: Vec<PodInfo<'a>> = state
            .endpoints
            .iter()
            .map(|e| PodInfo {
                namespace: &e.name.namespace,
                labels: &e.labels,
                ips: &e.ips,
                named_ports: &e.named_ports,
            })
            .collect();
        pods.extend(state.pods.iter().map(|p| PodInfo {
            namespace: &p.name.namespace,
            labels: &p.labels,
            ips: &p.ips,
            named_ports: &p.named_ports,
        }));
        let ns_labels = pods
            .iter()
            .map(|p| (p.namespace, state.namespace_labels(p.namespace)))
            .collect();
        let pod_ips = pods.iter().flat_map(|p| p.ips.iter().copied()).collect();
        Self {
            state,
            pods,
            ns_labels,
            pod_ips,
        }
    }

    fn namespace_matches(&self, sel: &LabelSelector, namespace: &str) -> bool {
        match self.ns_labels.get(namespace) {
            Some(l) => sel.matches(l),
            None => sel.matches(&self.state.namespace_labels(namespace)),
        }
    }

    fn subject_matches(&self, subject: &ClusterPolicySubject, e: &Endpoint) -> bool {
        match subject {
            ClusterPolicySubject::Namespaces(sel) => self.namespace_matches(sel, &e.name.namespace),
            ClusterPolicySubject::Pods(p) => {
                p.pod_selector.matches(&e.labels)
                    && self.namespace_matches(&p.namespace_selector, &e.name.namespace)
            }
        }
    }

    /// Whether a NetworkPolicy isolates `e` in `direction` (core's rule).
    fn isolated(&self, e: &Endpoint, direction: PolicyType) -> bool {
        self.state.policies.iter().any(|p| {
            p.name.namespace == e.name.namespace
                && p.pod_selector.matches(&e.labels)
                && p.isolates(direction)
        })
    }

    /// The addresses a peer stands for.
    fn peer_nets(&self, peer: &ClusterPeer, out: &mut Vec<IpNetwork>) {
        let host = |ip: &IpAddr| IpNetwork::from(*ip);
        match peer {
            ClusterPeer::Networks(nets) => out.extend(nets.iter().copied()),
            ClusterPeer::Namespaces(sel) => out.extend(
                self.pods
                    .iter()
                    .filter(|p| self.namespace_matches(sel, p.namespace))
                    .flat_map(|p| p.ips.iter().map(host)),
            ),
            ClusterPeer::Pods(pods) => out.extend(
                self.pods
                    .iter()
                    .filter(|p| {
                        pods.pod_selector.matches(p.labels)
                            && self.namespace_matches(&pods.namespace_selector, p.namespace)
                    })
                    .flat_map(|p| p.ips.iter().map(host)),
            ),
            ClusterPeer::Nodes(sel) => {
                let state = self.state;
                // This node: labelled by the peer node of its name (none: no labels).
                let own = state
                    .nodes
                    .iter()
                    .find(|n| n.name == state.node.name)
                    .map(|n| n.labels.clone())
                    .unwrap_or_default();
                let own_ips: Vec<IpAddr> = state
                    .node
                    .addresses
                    .iter()
                    .filter(|a| !self.pod_ips.contains(a))
                    .copied()
                    .collect();
                if sel.matches(&own) {
                    out.extend(own_ips.iter().map(host));
                }
                // Other nodes: an address is the first peer node's that has it.
                let mut seen: BTreeSet<IpAddr> = own_ips.iter().copied().collect();
                seen.extend(self.pod_ips.iter().copied());
                for n in &state.nodes {
                    for a in &n.addresses {
                        if seen.insert(*a) && sel.matches(&n.labels) {
                            out.push(host(a));
                        }
                    }
                }
            }
        }
    }

    /// The tier objects of `e` in `direction`, if a cluster policy or the baseline covers
    /// it there.
    fn endpoint_direction(&self, e: &Endpoint, direction: Direction, out: &mut NftTiers) {
        let pt = match direction {
            Direction::Ingress => PolicyType::Ingress,
            Direction::Egress => PolicyType::Egress,
        };
        let mut cluster: Vec<_> = self
            .state
            .cluster_policies
            .iter()
            .filter(|p| !p.rules(pt).is_empty() && self.subject_matches(&p.subject, e))
            .collect();
        cluster.sort_by(|a, b| (a.priority, &a.name).cmp(&(b.priority, &b.name)));
        let baseline = self
            .state
            .baseline_policy
            .as_ref()
            .filter(|b| !b.rules(pt).is_empty() && self.subject_matches(&b.subject, e));
        if cluster.is_empty() && baseline.is_none() {
            return;
        }
        let (prefix, np_prefix, deny) = match direction {
            Direction::Egress => ("tier-out-", "tnp-out-", DENY_POLICY_OUT_CHAIN),
            Direction::Ingress => ("tier-in-", "tnp-in-", DENY_POLICY_IN_CHAIN),
        };
        let allowed = match direction {
            Direction::Egress => format!("goto {DISPATCH_IN_CHAIN}"),
            Direction::Ingress => "return".to_owned(),
        };
        let deny = format!("goto {deny}");
        // NetworkPolicy, else the baseline.
        let np_chain = tier_chain(np_prefix, &e.name);
        let mut np_rules = Vec::new();
        if self.isolated(e, pt) {
            np_rules.push(format!("jump {}", chain_name(direction, &e.name)));
        } else if let Some(b) = baseline {
            for rule in b.rules(pt) {
                let verdict = match rule.action {
                    BaselineAction::Allow => allowed.clone(),
                    BaselineAction::Deny => deny.clone(),
                };
                self.rule_lines(e, direction, rule, &verdict, &mut np_rules);
            }
        }
        np_rules.push(allowed.clone());
        let entry = if cluster.is_empty() {
            np_chain.clone()
        } else {
            let chain = tier_chain(prefix, &e.name);
            let pass = format!("goto {np_chain}");
            let mut rules = Vec::new();
            for p in &cluster {
                for rule in p.rules(pt) {
                    let verdict = match rule.action {
                        ClusterAction::Allow => &allowed,
                        ClusterAction::Deny => &deny,
                        ClusterAction::Pass => &pass,
                    };
                    self.rule_lines(e, direction, rule, verdict, &mut rules);
                }
            }
            rules.push(pass);
            out.chains.insert(chain.clone(), rules);
            chain
        };
        out.chains.insert(np_chain, np_rules);
        for ip in &e.ips {
            out.elements.insert((
                tier_map(direction, IpFamily::of(ip)),
                format!("{ip} : goto {entry}"),
            ));
        }
    }

    /// The nft rules of one cluster or baseline rule (none when it can match nothing).
    fn rule_lines<A>(
        &self,
        e: &Endpoint,
        direction: Direction,
        rule: &ClusterRule<A>,
        verdict: &str,
        out: &mut Vec<String>,
    ) {
        let mut nets = Vec::new();
        for peer in &rule.peers {
            self.peer_nets(peer, &mut nets);
        }
        let mut specs: BTreeSet<PortSpec> = BTreeSet::new();
        let mut named: Vec<&str> = Vec::new();
        for port in &rule.ports {
            match port {
                ClusterPort::PortNumber { protocol, port } => {
                    specs.insert((Some(*protocol), (*port, *port)));
                }
                ClusterPort::PortRange {
                    protocol,
                    start,
                    end,
                } => {
                    specs.insert((Some(*protocol), (*start, *end)));
                }
                ClusterPort::NamedPort(name) => match direction {
                    // The destination is the endpoint itself.
                    Direction::Ingress => specs.extend(
                        e.named_ports
                            .iter()
                            .filter(|np| np.name == *name)
                            .map(|np| (Some(np.protocol), (np.port, np.port))),
                    ),
                    Direction::Egress => named.push(name),
                },
            }
        }
        let field = match direction {
            Direction::Ingress => "saddr",
            Direction::Egress => "daddr",
        };
        for f in [IpFamily::V4, IpFamily::V6] {
            let ranges = disjoint(&nets, f);
            if ranges.is_empty() {
                continue;
            }
            let ip = ip_kw(f);
            if rule.ports.is_empty() || !specs.is_empty() {
                let ports = if rule.ports.is_empty() {
                    String::new()
                } else {
                    port_match(&specs)
                };
                out.push(format!(
                    "{ip} {field} {{ {} }} {ports}{verdict}",
                    ranges.join(", ")
                ));
            }
            if !named.is_empty() {
                let elements = self.named_elements(&nets, f, &named);
                if !elements.is_empty() {
                    out.push(format!(
                        "{ip} daddr . meta l4proto . th dport {{ {} }} {verdict}",
                        elements.join(", ")
                    ));
                }
            }
        }
    }

    /// `address . protocol . port` of every peer pod of family `f` in `nets` with a
    /// container port named in `names`.
    fn named_elements(&self, nets: &[IpNetwork], f: IpFamily, names: &[&str]) -> Vec<String> {
        let mut out: BTreeSet<(IpAddr, Protocol, u16)> = BTreeSet::new();
        for p in &self.pods {
            for ip in p.ips.iter().filter(|ip| IpFamily::of(ip) == f) {
                if !nets.iter().any(|n| n.contains(*ip)) {
                    continue;
                }
                for np in p
                    .named_ports
                    .iter()
                    .filter(|np| names.contains(&np.name.as_str()))
                {
                    out.insert((*ip, np.protocol, np.port));
                }
            }
        }
        out.into_iter()
            .map(|(ip, p, port)| format!("{ip} . {} . {port}", proto_name(p)))
            .collect()
    }
}

/// Writes the `add` lines of `tiers` (after the layer's base, whose maps they fill).
pub fn write_add<W: std::fmt::Write + ?Sized>(
    tiers: &NftTiers,
    keep: &BTreeSet<&str>,
    table: &str,
    out: &mut W,
) -> std::fmt::Result {
    for chain in tiers.chains.keys() {
        if !keep.contains(chain.as_str()) {
            writeln!(out, "add chain inet {table} {chain}")?;
        }
    }
    for (chain, rules) in &tiers.chains {
        for r in rules {
            writeln!(out, "add rule inet {table} {chain} {r}")?;
        }
    }
    let mut by_map: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (map, e) in &tiers.elements {
        by_map.entry(map).or_default().push(e);
    }
    for (map, elements) in by_map {
        for chunk in elements.chunks(2000) {
            writeln!(
                out,
                "add element inet {table} {map} {{ {} }}",
                chunk.join(", ")
            )?;
        }
    }
    Ok(())
}

/// Writes the removal of `old` before `new` is added ([`write_add`] with the returned
/// chains kept): the maps emptied, every old chain flushed, those that `new` has not
/// deleted. Returns the chains both have (flushed, not deleted: refilled by `write_add`).
pub fn write_remove<'a, W: std::fmt::Write + ?Sized>(
    old: &'a NftTiers,
    new: &NftTiers,
    table: &str,
    out: &mut W,
) -> Result<BTreeSet<&'a str>, std::fmt::Error> {
    let maps: BTreeSet<&str> = old.elements.iter().map(|(m, _)| *m).collect();
    for map in maps {
        writeln!(out, "flush map inet {table} {map}")?;
    }
    for chain in old.chains.keys() {
        writeln!(out, "flush chain inet {table} {chain}")?;
    }
    let mut kept = BTreeSet::new();
    for chain in old.chains.keys() {
        if new.chains.contains_key(chain) {
            kept.insert(chain.as_str());
        } else {
            writeln!(out, "delete chain inet {table} {chain}")?;
        }
    }
    Ok(kept)
}
