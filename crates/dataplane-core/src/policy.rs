//! NetworkPolicy semantics of the reference model: whether a connection is allowed, as
//! Kubernetes `networking.k8s.io/v1` specifies it, as a pure function of the state.
//!
//! Followed: the Kubernetes documentation "Network Policies"
//! (<https://kubernetes.io/docs/concepts/services-networking/network-policies/>) and the API
//! reference of `NetworkPolicySpec`, `NetworkPolicyPeer` and `NetworkPolicyPort`, with the
//! cases of the e2e suite `test/e2e/network/netpol/network_policy.go` (namespaces x, y, z
//! with pods a, b, c) as the model for the tests in `tests/policy.rs`:
//!
//! - A pod is isolated for ingress (egress) when any policy in its namespace selects it and
//!   has `Ingress` (`Egress`) in its effective `policyTypes`. Policies are additive: what is
//!   allowed is the union of the rules of all policies selecting the pod for that direction;
//!   a pod no policy isolates allows everything in that direction.
//! - Effective `policyTypes`: as listed; when none are listed, `Ingress`, plus `Egress` if the
//!   policy has egress rules (the API server's defaulting).
//! - A connection is allowed when the client's egress allows it to the server **and** the
//!   server's ingress allows it from the client. Replies of an allowed connection are
//!   allowed (policies are stateful: backends let `established` traffic through).
//! - A rule with no peers matches every peer; with no ports, every port and protocol.
//! - A peer with `podSelector` only selects pods in the policy's namespace; with
//!   `namespaceSelector` only, every pod of the selected namespaces; with both in one peer,
//!   the pods matching the pod selector in the selected namespaces (AND; two peers with one
//!   selector each are OR). `ipBlock` matches addresses in `cidr` and in no `except`, pod
//!   addresses included (the docs leave pod addresses to the implementation; this model
//!   matches them, as Calico and Cilium do in their default modes).
//! - Namespaces carry the label `kubernetes.io/metadata.name` (set by the API server), so a
//!   namespace selector can name a namespace.
//! - A port entry matches its protocol (TCP by default) and: every port when it has none; the
//!   number, or `port..=endPort`; a named port resolved on the **destination** pod's
//!   container ports (of that protocol) — on ingress the selected pod, on egress the peer; a
//!   named port matches nothing on a destination that is not a known pod.
//! - Traffic between the node and its own pods is always allowed, in both directions
//!   (kubelet probes; the docs: "traffic to and from the node where a Pod is running is
//!   always allowed").
//! - A pod reaching its own address is allowed: such traffic stays inside the pod, where no
//!   node dataplane sees it, and Kubernetes leaves it undefined (the e2e suite ignores
//!   loopback cells, kubernetes/kubernetes#95879).
//!
//! # Cluster policies and the baseline (the AdminNetworkPolicy model)
//!
//! Followed: the AdminNetworkPolicy API reference
//! (<https://network-policy-api.sigs.k8s.io/reference/spec/>) and its "Policy precedence"
//! explanation. For one direction of a connection (the client's egress, the server's
//! ingress), with the subject pod as above:
//!
//! 1. **Cluster policies** ([`crate::ClusterPolicy`]) whose subject selects the pod, lowest
//!    priority first (validation makes priorities unique), each one's rules of that direction
//!    in order: the first rule whose peers and ports match decides. `Allow` allows and `Deny`
//!    denies, final for this direction; `Pass` skips every remaining cluster policy.
//! 2. **NetworkPolicy**, as above: a pod isolated for the direction is allowed by a rule of a
//!    policy or denied (its implicit deny is final: the baseline is not consulted).
//! 3. **The baseline** ([`crate::BaselinePolicy`]), for a pod it selects that no
//!    NetworkPolicy isolates: its rules in order, the first match allows or denies.
//! 4. Otherwise allowed.
//!
//! Peers: `namespaces` selects every pod of the selected namespaces, `pods` the selected pods
//! of the selected namespaces (cluster policies are cluster-wide: no "own namespace"
//! default), `nodes` the addresses of the selected nodes ([`crate::PeerNode`]; this node is
//! known by its [`crate::Node::addresses`] and labelled by the peer node of its name),
//! `networks` any address in the CIDRs, pods' and nodes' included. Ports: `portNumber` and
//! `portRange` of their protocol, `namedPort` resolved on the destination pod like a
//! NetworkPolicy's named port (of the connection's protocol), matching nothing on a
//! destination that is no known pod. No ports: every port and protocol.
//!
//! The fixed rules above still come first: traffic between the node and its own pods is
//! allowed whatever a cluster policy or the baseline says (kubelet's probes: a cluster-wide
//! deny-all must not take every pod's readiness down; the API's subjects are pods and its
//! ingress peers have no `nodes`), and a pod reaching its own address is allowed.
//!
//! Addresses are the pods' own: service traffic is checked **after** DNAT, against the
//! backend chosen and its target port, from the client's own address (before any SNAT).
//! [`crate::evaluate`] applies this to the first packet of a connection: a
//! [`crate::Verdict::Forward`] keeps exactly the backends `b` with
//! `policy_allows(state, client, b.ip(), protocol, b.port())`, none left means drop, and an
//! untouched packet from `s` to `d` is dropped unless `policy_allows(state, s, d, ..)`.
//!
//! Policy is decided on a connection's **first packet**, on every dataplane the same way:
//! netfilter checks `ct state new` packets and accepts `established,related` ones first; the
//! eBPF programs check a packet that has no conntrack entry, and a TCP SYN that hits one (a
//! SYN reusing a tuple opens a new connection: re-checked, as Calico's eBPF dataplane does).
//! So a policy change applies to **new** connections: a connection established before a
//! change that now denies it keeps flowing, both ways, until it ends or its conntrack entry
//! expires (Kubernetes leaves this to the implementation; Calico documents the same in its
//! "Connection tracking" reference page — policy is checked for a flow's first packet only —
//! while Cilium re-checks forward packets of established connections). Restart the workload, or let the connection close, to have the
//! new rules apply to it.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::model::{
    BaselineAction, ClusterAction, ClusterPeer, ClusterPolicy, ClusterPolicySubject, ClusterPort,
    ClusterRule, DesiredState, IpBlock, LabelSelector, NamedPort, ObjectName, Policy, PolicyPeer,
    PolicyPort, PolicyRule, PolicyType, PortRef, Protocol, SelectorOperator,
};

/// The labels of a node without a [`crate::PeerNode`] entry: none.
static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

impl LabelSelector {
    /// Whether `labels` satisfy every `matchLabels` entry and every `matchExpressions`
    /// requirement (the empty selector matches everything).
    ///
    /// ```
    /// use dataplane_core::{LabelRequirement, LabelSelector, SelectorOperator};
    /// let sel = LabelSelector {
    ///     match_labels: [("app".to_owned(), "web".to_owned())].into(),
    ///     match_expressions: vec![LabelRequirement {
    ///         key: "tier".into(),
    ///         operator: SelectorOperator::NotIn,
    ///         values: vec!["edge".into()],
    ///     }],
    /// };
    /// assert!(sel.matches(&[("app".to_owned(), "web".to_owned())].into()));
    /// assert!(!sel.matches(&[("app".to_owned(), "db".to_owned())].into()));
    /// ```
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|req| {
                let value = labels.get(&req.key);
                match req.operator {
                    SelectorOperator::In => value.is_some_and(|v| req.values.contains(v)),
                    SelectorOperator::NotIn => value.is_none_or(|v| !req.values.contains(v)),
                    SelectorOperator::Exists => value.is_some(),
                    SelectorOperator::DoesNotExist => value.is_none(),
                }
            })
    }
}

impl IpBlock {
    /// Whether `ip` is in the block's CIDR and in none of its exceptions.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.cidr.contains(ip) && !self.except.iter().any(|e| e.contains(ip))
    }
}

impl Policy {
    /// Whether the policy isolates `direction` (its effective `policyTypes`: as listed, or
    /// when none are, `Ingress` plus `Egress` if it has egress rules).
    pub fn isolates(&self, direction: PolicyType) -> bool {
        if self.policy_types.is_empty() {
            direction == PolicyType::Ingress || !self.egress.is_empty()
        } else {
            self.policy_types.contains(&direction)
        }
    }

    /// The rules of `direction` (ingress or egress).
    pub fn rules(&self, direction: PolicyType) -> &[PolicyRule] {
        match direction {
            PolicyType::Ingress => &self.ingress,
            PolicyType::Egress => &self.egress,
        }
    }
}

/// One side of a connection as policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Party<'a> {
    /// A pod: a local [`crate::Endpoint`] (`local`) or a [`crate::PeerPod`].
    Pod {
        /// Namespace and name.
        name: &'a ObjectName,
        /// Pod labels.
        labels: &'a BTreeMap<String, String>,
        /// Named container ports.
        named_ports: &'a [NamedPort],
        /// Whether it runs on this node.
        local: bool,
    },
    /// This node (one of [`crate::Node::addresses`]).
    Node,
    /// Anything else (another node, outside the cluster): matched by `ipBlock` only.
    Other,
}

impl<'a> Party<'a> {
    /// The party at `ip` in `state`.
    pub fn at(state: &'a DesiredState, ip: IpAddr) -> Self {
        if let Some(e) = state.endpoints.iter().find(|e| e.ips.contains(&ip)) {
            return Party::Pod {
                name: &e.name,
                labels: &e.labels,
                named_ports: &e.named_ports,
                local: true,
            };
        }
        if let Some(p) = state.pods.iter().find(|p| p.ips.contains(&ip)) {
            return Party::Pod {
                name: &p.name,
                labels: &p.labels,
                named_ports: &p.named_ports,
                local: false,
            };
        }
        if state.node.addresses.contains(&ip) {
            Party::Node
        } else {
            Party::Other
        }
    }
}

/// The decision of one direction (the client's egress or the server's ingress).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Decision {
    /// The side is no pod: policy does not apply to it.
    NotAPod,
    /// No policy isolates the pod in this direction.
    NotIsolated,
    /// Traffic between the node and its own pod: always allowed.
    NodeTraffic,
    /// A pod reaching its own address: never leaves the pod, allowed.
    SamePod,
    /// Allowed by these policies' rules (every one that has a matching rule).
    Allowed(Vec<ObjectName>),
    /// Isolated by these policies and allowed by none.
    Denied(Vec<ObjectName>),
    /// Allowed by this rule of this cluster policy (NetworkPolicy and baseline not
    /// consulted).
    ClusterAllowed {
        /// The cluster policy.
        policy: String,
        /// Its rule's name.
        rule: String,
    },
    /// Denied by this rule of this cluster policy.
    ClusterDenied {
        /// The cluster policy.
        policy: String,
        /// Its rule's name.
        rule: String,
    },
    /// Allowed by this rule of the baseline policy.
    BaselineAllowed {
        /// The rule's name.
        rule: String,
    },
    /// Denied by this rule of the baseline policy.
    BaselineDenied {
        /// The rule's name.
        rule: String,
    },
}

impl Decision {
    /// Whether the direction lets the connection through.
    pub fn allows(&self) -> bool {
        !matches!(
            self,
            Decision::Denied(_) | Decision::ClusterDenied { .. } | Decision::BaselineDenied { .. }
        )
    }
}

/// Both halves of a connection's policy verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyVerdict {
    /// The client's egress.
    pub egress: Decision,
    /// The server's ingress.
    pub ingress: Decision,
}

impl PolicyVerdict {
    /// Whether the connection is allowed: both halves must allow it.
    pub fn allowed(&self) -> bool {
        self.egress.allows() && self.ingress.allows()
    }
}

/// The policy verdict of a new connection from `from` to `to` (`protocol`, destination port
/// `port`), after any service translation: `to` and `port` are the backend's. See the module
/// documentation for the rules followed.
pub fn policy_verdict(
    state: &DesiredState,
    from: IpAddr,
    to: IpAddr,
    protocol: Protocol,
    port: u16,
) -> PolicyVerdict {
    let client = Party::at(state, from);
    let server = Party::at(state, to);
    if from == to && matches!(client, Party::Pod { .. }) {
        return PolicyVerdict {
            egress: Decision::SamePod,
            ingress: Decision::SamePod,
        };
    }
    let conn = Connection {
        state,
        protocol,
        port,
        server: &server,
    };
    PolicyVerdict {
        egress: conn.decide(PolicyType::Egress, &client, &server, to),
        ingress: conn.decide(PolicyType::Ingress, &server, &client, from),
    }
}

/// Whether a new connection from `from` to `to` (`protocol`, `port`) is allowed:
/// [`policy_verdict`]`(..).allowed()`.
pub fn policy_allows(
    state: &DesiredState,
    from: IpAddr,
    to: IpAddr,
    protocol: Protocol,
    port: u16,
) -> bool {
    policy_verdict(state, from, to, protocol, port).allowed()
}

/// What every rule of one connection is matched against.
struct Connection<'a> {
    state: &'a DesiredState,
    protocol: Protocol,
    port: u16,
    /// The destination: named ports resolve on it.
    server: &'a Party<'a>,
}

impl Connection<'_> {
    /// The decision of `direction` for `subject` (the client on egress, the server on
    /// ingress) about `peer` at `peer_ip`.
    fn decide(
        &self,
        direction: PolicyType,
        subject: &Party<'_>,
        peer: &Party<'_>,
        peer_ip: IpAddr,
    ) -> Decision {
        let Party::Pod {
            name,
            labels,
            local,
            ..
        } = subject
        else {
            return Decision::NotAPod;
        };
        if *local && *peer == Party::Node {
            return Decision::NodeTraffic;
        }
        let subject = Subject { name, labels };
        if let Some(decision) = self.cluster_tier(direction, &subject, peer, peer_ip) {
            return decision;
        }
        let isolating: Vec<&Policy> = self
            .state
            .policies
            .iter()
            .filter(|p| {
                p.name.namespace == name.namespace
                    && p.pod_selector.matches(labels)
                    && p.isolates(direction)
            })
            .collect();
        if isolating.is_empty() {
            return self
                .baseline_tier(direction, &subject, peer, peer_ip)
                .unwrap_or(Decision::NotIsolated);
        }
        let allowing: Vec<ObjectName> = isolating
            .iter()
            .filter(|p| {
                p.rules(direction)
                    .iter()
                    .any(|r| self.rule_matches(p, r, peer, peer_ip))
            })
            .map(|p| p.name.clone())
            .collect();
        if allowing.is_empty() {
            Decision::Denied(isolating.iter().map(|p| p.name.clone()).collect())
        } else {
            Decision::Allowed(allowing)
        }
    }

    fn rule_matches(
        &self,
        policy: &Policy,
        rule: &PolicyRule,
        peer: &Party<'_>,
        peer_ip: IpAddr,
    ) -> bool {
        (rule.peers.is_empty()
            || rule
                .peers
                .iter()
                .any(|p| self.peer_matches(policy, p, peer, peer_ip)))
            && (rule.ports.is_empty() || rule.ports.iter().any(|p| self.port_matches(p)))
    }

    fn peer_matches(
        &self,
        policy: &Policy,
        selector: &PolicyPeer,
        peer: &Party<'_>,
        peer_ip: IpAddr,
    ) -> bool {
        if let Some(block) = &selector.ip_block {
            return block.contains(peer_ip);
        }
        let Party::Pod { name, labels, .. } = peer else {
            return false;
        };
        let namespace_ok = match &selector.namespace_selector {
            Some(ns) => ns.matches(&self.state.namespace_labels(&name.namespace)),
            None => name.namespace == policy.name.namespace,
        };
        namespace_ok
            && selector
                .pod_selector
                .as_ref()
                .is_none_or(|sel| sel.matches(labels))
    }

    fn port_matches(&self, entry: &PolicyPort) -> bool {
        if entry.protocol != self.protocol {
            return false;
        }
        match &entry.port {
            None => true,
            Some(PortRef::Number(p)) => (*p..=entry.end_port.unwrap_or(*p)).contains(&self.port),
            Some(PortRef::Name(n)) => self.named_port_matches(n),
        }
    }

    /// Whether container port `name` of the destination pod is this connection's port (of
    /// its protocol); nothing on a destination that is no known pod.
    fn named_port_matches(&self, name: &str) -> bool {
        match self.server {
            Party::Pod { named_ports, .. } => named_ports
                .iter()
                .any(|np| np.name == name && np.protocol == self.protocol && np.port == self.port),
            Party::Node | Party::Other => false,
        }
    }

    /// The cluster policies' decision for `subject` in `direction`: `None` when no rule
    /// matched or a `Pass` rule did (NetworkPolicy decides).
    fn cluster_tier(
        &self,
        direction: PolicyType,
        subject: &Subject<'_>,
        peer: &Party<'_>,
        peer_ip: IpAddr,
    ) -> Option<Decision> {
        if self.state.cluster_policies.is_empty() {
            return None;
        }
        let mut selecting: Vec<&ClusterPolicy> = self
            .state
            .cluster_policies
            .iter()
            .filter(|p| self.subject_matches(&p.subject, subject))
            .collect();
        selecting.sort_by(|a, b| (a.priority, &a.name).cmp(&(b.priority, &b.name)));
        for policy in selecting {
            if let Some(rule) = self.first_rule(policy.rules(direction), peer, peer_ip) {
                let action = rule.action;
                let (policy, rule) = (policy.name.clone(), rule.name.clone());
                return match action {
                    ClusterAction::Allow => Some(Decision::ClusterAllowed { policy, rule }),
                    ClusterAction::Deny => Some(Decision::ClusterDenied { policy, rule }),
                    ClusterAction::Pass => None,
                };
            }
        }
        None
    }

    /// The baseline's decision for `subject` in `direction`, if it selects the pod and a
    /// rule matches.
    fn baseline_tier(
        &self,
        direction: PolicyType,
        subject: &Subject<'_>,
        peer: &Party<'_>,
        peer_ip: IpAddr,
    ) -> Option<Decision> {
        let baseline = self.state.baseline_policy.as_ref()?;
        if !self.subject_matches(&baseline.subject, subject) {
            return None;
        }
        let rule = self.first_rule(baseline.rules(direction), peer, peer_ip)?;
        let name = rule.name.clone();
        Some(match rule.action {
            BaselineAction::Allow => Decision::BaselineAllowed { rule: name },
            BaselineAction::Deny => Decision::BaselineDenied { rule: name },
        })
    }

    fn subject_matches(&self, selector: &ClusterPolicySubject, subject: &Subject<'_>) -> bool {
        let namespace = || self.state.namespace_labels(&subject.name.namespace);
        match selector {
            ClusterPolicySubject::Namespaces(sel) => sel.matches(&namespace()),
            ClusterPolicySubject::Pods(pods) => {
                pods.pod_selector.matches(subject.labels)
                    && pods.namespace_selector.matches(&namespace())
            }
        }
    }

    /// The first of `rules` whose peers and ports match.
    fn first_rule<'r, A>(
        &self,
        rules: &'r [ClusterRule<A>],
        peer: &Party<'_>,
        peer_ip: IpAddr,
    ) -> Option<&'r ClusterRule<A>> {
        rules.iter().find(|r| {
            r.peers
                .iter()
                .any(|p| self.cluster_peer_matches(p, peer, peer_ip))
                && (r.ports.is_empty() || r.ports.iter().any(|p| self.cluster_port_matches(p)))
        })
    }

    fn cluster_peer_matches(
        &self,
        selector: &ClusterPeer,
        peer: &Party<'_>,
        peer_ip: IpAddr,
    ) -> bool {
        match (selector, peer) {
            (ClusterPeer::Networks(nets), _) => nets.iter().any(|n| n.contains(peer_ip)),
            (ClusterPeer::Nodes(sel), _) => self
                .node_labels(peer, peer_ip)
                .is_some_and(|l| sel.matches(l)),
            (ClusterPeer::Namespaces(sel), Party::Pod { name, .. }) => {
                sel.matches(&self.state.namespace_labels(&name.namespace))
            }
            (ClusterPeer::Pods(pods), Party::Pod { name, labels, .. }) => {
                pods.pod_selector.matches(labels)
                    && pods
                        .namespace_selector
                        .matches(&self.state.namespace_labels(&name.namespace))
            }
            (ClusterPeer::Namespaces(_) | ClusterPeer::Pods(_), Party::Node | Party::Other) => {
                false
            }
        }
    }

    /// The labels of the node `peer` at `ip` is, if it is one: this node (labelled by the
    /// peer node of its name, else none) or a [`crate::PeerNode`] with that address.
    fn node_labels(&self, peer: &Party<'_>, ip: IpAddr) -> Option<&BTreeMap<String, String>> {
        let nodes = &self.state.nodes;
        match peer {
            Party::Node => Some(
                nodes
                    .iter()
                    .find(|n| n.name == self.state.node.name)
                    .map_or(&NO_LABELS, |n| &n.labels),
            ),
            Party::Other => nodes
                .iter()
                .find(|n| n.addresses.contains(&ip))
                .map(|n| &n.labels),
            Party::Pod { .. } => None,
        }
    }

    fn cluster_port_matches(&self, port: &ClusterPort) -> bool {
        match port {
            ClusterPort::PortNumber { protocol, port } => {
                *protocol == self.protocol && *port == self.port
            }
            ClusterPort::PortRange {
                protocol,
                start,
                end,
            } => *protocol == self.protocol && (*start..=*end).contains(&self.port),
            ClusterPort::NamedPort(name) => self.named_port_matches(name),
        }
    }
}

/// The pod a cluster policy or the baseline is asked about.
struct Subject<'a> {
    name: &'a ObjectName,
    labels: &'a BTreeMap<String, String>,
}
