//! Policy beyond Kubernetes NetworkPolicy: cluster-wide ordered policy with Allow, Deny and
//! Pass (the AdminNetworkPolicy model), its baseline tier (BaselineAdminNetworkPolicy), the
//! cluster's nodes as policy peers, and policy on the node's own interfaces (Calico's
//! HostEndpoint and GlobalNetworkPolicy for host endpoints, with failsafe ports).
//!
//! Followed:
//! - the AdminNetworkPolicy API, `policy.networking.k8s.io/v1alpha1`
//!   (<https://network-policy-api.sigs.k8s.io/reference/spec/>): `AdminNetworkPolicySpec`
//!   (priority 0..=1000, lower first; subject; at most 100 ingress and 100 egress rules),
//!   `AdminNetworkPolicySubject` (namespaces, or namespace+pod selectors), the rules (a name,
//!   an action Allow/Deny/Pass, 1..=100 peers, ports), the ingress peers (namespaces, pods),
//!   the egress peers (also nodes, networks: 1..=25 CIDRs), `AdminNetworkPolicyPort`
//!   (portNumber, namedPort, portRange), and `BaselineAdminNetworkPolicy` (one per cluster,
//!   Allow/Deny only). The field names are the API's, so that a spec pastes as it is;
//! - Calico's `HostEndpoint` and `GlobalNetworkPolicy` reference pages
//!   (<https://docs.tigera.io/calico/latest/reference/resources/hostendpoint>,
//!   `.../globalnetworkpolicy`) and the host-endpoint pages "Apply on forwarded traffic",
//!   "Pre-DNAT policy", "Untracked policy", "Failsafe rules" and "Summary of host endpoint
//!   policies" (`.../reference/host-endpoints/`): `applyOnForward`, `preDNAT` (ingress rules
//!   only, needs `applyOnForward`), `doNotTrack` (needs `applyOnForward`), the failsafe
//!   defaults of Felix's `FailsafeInboundHostPorts` and `FailsafeOutboundHostPorts`.
//!
//! Departures, each for a reason: a host policy selects host endpoints with a
//! [`LabelSelector`] (the model's one selector type) where Calico takes a selector
//! expression; a host policy's `order` is an integer (Calico's is a float); rules match
//! protocol, source and destination nets and ports (Calico's rules can match much more).
//! [`crate::policy`] and [`crate::reference`] say how all of this is evaluated.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use super::{LabelSelector, PolicyType, PortRange, Protocol};

/// Largest [`ClusterPolicy::priority`] (the AdminNetworkPolicy API's bound).
pub const MAX_CLUSTER_POLICY_PRIORITY: u32 = 1000;

/// Most ingress (or egress) rules of one cluster or baseline policy (the API's bound).
pub const MAX_CLUSTER_POLICY_RULES: usize = 100;

/// Most peers (or ports) of one cluster or baseline policy rule (the API's bound).
pub const MAX_CLUSTER_RULE_PEERS: usize = 100;

/// Most CIDRs of one `networks` peer (the API's bound).
pub const MAX_CLUSTER_NETWORKS: usize = 25;

/// Longest rule name (the API's bound).
pub const MAX_RULE_NAME: usize = 100;

/// A cluster-wide policy with an order and explicit actions (an AdminNetworkPolicy).
///
/// Cluster policies are evaluated before any NetworkPolicy, lowest [`ClusterPolicy::priority`]
/// first, each one's rules in order; the first rule that matches decides: `Allow` and `Deny`
/// are final, `Pass` hands the decision to NetworkPolicy (and then the baseline).
///
/// ```
/// use dataplane_core::{ClusterAction, ClusterPeer, ClusterPolicy, ClusterPolicyRule, LabelSelector};
/// let sel = |k: &str, v: &str| LabelSelector::default().with_label(k, v);
/// let policy = ClusterPolicy::for_namespaces("isolate-tenants", 10, sel("tenant", "a"))
///     .with_ingress(ClusterPolicyRule::new(
///         "deny-other-tenants",
///         ClusterAction::Deny,
///         [ClusterPeer::Namespaces(sel("tenant", "b"))],
///     ));
/// assert_eq!(policy.ingress[0].action, ClusterAction::Deny);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterPolicy {
    /// Name (cluster-scoped, a DNS-1123 subdomain).
    pub name: String,
    /// 0..=[`MAX_CLUSTER_POLICY_PRIORITY`]; lower is evaluated first. Two policies may not
    /// share one (the API leaves the order of equal priorities undefined; this model refuses
    /// the ambiguity).
    pub priority: u32,
    /// The pods the policy applies to.
    pub subject: ClusterPolicySubject,
    /// Rules for traffic to the subject's pods, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<ClusterPolicyRule>,
    /// Rules for traffic from the subject's pods, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<ClusterPolicyRule>,
}

impl ClusterPolicy {
    /// A policy `name` at `priority` without rules, for `subject`.
    pub fn new(name: impl Into<String>, priority: u32, subject: ClusterPolicySubject) -> Self {
        Self {
            name: name.into(),
            priority,
            subject,
            ingress: Vec::new(),
            egress: Vec::new(),
        }
    }

    /// A policy for every pod of the namespaces `namespaces` selects.
    pub fn for_namespaces(
        name: impl Into<String>,
        priority: u32,
        namespaces: LabelSelector,
    ) -> Self {
        Self::new(name, priority, ClusterPolicySubject::Namespaces(namespaces))
    }

    /// This policy with ingress rule `rule` added after the others.
    #[must_use]
    pub fn with_ingress(mut self, rule: ClusterPolicyRule) -> Self {
        self.ingress.push(rule);
        self
    }

    /// This policy with egress rule `rule` added after the others.
    #[must_use]
    pub fn with_egress(mut self, rule: ClusterPolicyRule) -> Self {
        self.egress.push(rule);
        self
    }

    /// The rules of `direction`.
    pub fn rules(&self, direction: PolicyType) -> &[ClusterPolicyRule] {
        match direction {
            PolicyType::Ingress => &self.ingress,
            PolicyType::Egress => &self.egress,
        }
    }
}

/// The pods a cluster or baseline policy applies to (`AdminNetworkPolicySubject`: exactly
/// one of the two).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ClusterPolicySubject {
    /// Every pod of the namespaces the selector selects.
    Namespaces(LabelSelector),
    /// The pods the pod selector selects in the namespaces the namespace selector selects.
    Pods(NamespacedPods),
}

/// Pods by a namespace selector and a pod selector (both must match).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamespacedPods {
    /// The namespaces (empty: all).
    #[serde(default)]
    pub namespace_selector: LabelSelector,
    /// The pods in them (empty: all).
    #[serde(default)]
    pub pod_selector: LabelSelector,
}

/// What a matching cluster policy rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ClusterAction {
    /// Allowed: no NetworkPolicy or baseline rule is consulted.
    Allow,
    /// Dropped: no NetworkPolicy or baseline rule is consulted.
    Deny,
    /// Skips the remaining cluster policies: NetworkPolicy decides (then the baseline).
    Pass,
}

/// What a matching baseline rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BaselineAction {
    /// Allowed.
    Allow,
    /// Dropped.
    Deny,
}

/// One rule of a cluster policy ([`ClusterPolicyRule`], actions [`ClusterAction`]) or of the
/// baseline ([`BaselineRule`], actions [`BaselineAction`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterRule<A> {
    /// Rule name (1..=[`MAX_RULE_NAME`] characters): counters and flow events name it.
    pub name: String,
    /// What a match does.
    pub action: A,
    /// The peers (at least one). In files also `from` (ingress) or `to` (egress), the API's
    /// names.
    #[serde(alias = "from", alias = "to")]
    pub peers: Vec<ClusterPeer>,
    /// The destination ports (empty: every port and protocol).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ClusterPort>,
}

/// A rule of a cluster policy: `Allow`, `Deny` or `Pass`.
pub type ClusterPolicyRule = ClusterRule<ClusterAction>;

/// A rule of the baseline policy: `Allow` or `Deny`.
pub type BaselineRule = ClusterRule<BaselineAction>;

impl<A> ClusterRule<A> {
    /// A rule for every port.
    pub fn new(
        name: impl Into<String>,
        action: A,
        peers: impl IntoIterator<Item = ClusterPeer>,
    ) -> Self {
        Self {
            name: name.into(),
            action,
            peers: peers.into_iter().collect(),
            ports: Vec::new(),
        }
    }

    /// This rule restricted to `port` too.
    #[must_use]
    pub fn with_port(mut self, port: ClusterPort) -> Self {
        self.ports.push(port);
        self
    }
}

/// A peer of a cluster or baseline policy rule (exactly one kind). `nodes` and `networks`
/// are egress peers only, as in the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ClusterPeer {
    /// Every pod of the selected namespaces.
    Namespaces(LabelSelector),
    /// The selected pods of the selected namespaces.
    Pods(NamespacedPods),
    /// The addresses of the selected nodes ([`crate::DesiredState::nodes`]); egress only.
    Nodes(LabelSelector),
    /// Addresses in these CIDRs (1..=[`MAX_CLUSTER_NETWORKS`]), pods' and nodes' included;
    /// egress only.
    Networks(Vec<IpNetwork>),
}

/// A destination port of a cluster or baseline policy rule (`AdminNetworkPolicyPort`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum ClusterPort {
    /// One port of one protocol.
    PortNumber {
        /// Protocol.
        protocol: Protocol,
        /// Port (not 0).
        port: u16,
    },
    /// A container port name, resolved on the destination pod (any protocol it names).
    NamedPort(String),
    /// `start..=end` of one protocol.
    PortRange {
        /// Protocol.
        protocol: Protocol,
        /// First port (not 0).
        start: u16,
        /// Last port (at least `start`).
        end: u16,
    },
}

/// The cluster's baseline policy (the BaselineAdminNetworkPolicy, of which a cluster has
/// one): evaluated for a pod and direction only where neither a cluster policy decided nor a
/// NetworkPolicy isolates the pod; its rules in order, the first match decides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BaselinePolicy {
    /// The pods it applies to.
    pub subject: ClusterPolicySubject,
    /// Rules for traffic to the subject's pods, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<BaselineRule>,
    /// Rules for traffic from the subject's pods, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<BaselineRule>,
}

impl BaselinePolicy {
    /// A baseline without rules for `subject`.
    pub fn new(subject: ClusterPolicySubject) -> Self {
        Self {
            subject,
            ingress: Vec::new(),
            egress: Vec::new(),
        }
    }

    /// This baseline with ingress rule `rule` added after the others.
    #[must_use]
    pub fn with_ingress(mut self, rule: BaselineRule) -> Self {
        self.ingress.push(rule);
        self
    }

    /// This baseline with egress rule `rule` added after the others.
    #[must_use]
    pub fn with_egress(mut self, rule: BaselineRule) -> Self {
        self.egress.push(rule);
        self
    }

    /// The rules of `direction`.
    pub fn rules(&self, direction: PolicyType) -> &[BaselineRule] {
        match direction {
            PolicyType::Ingress => &self.ingress,
            PolicyType::Egress => &self.egress,
        }
    }
}

/// A node of the cluster as a policy peer (the `nodes` peer of a cluster policy): its
/// addresses and labels. This node's labels are those of the entry named like
/// [`crate::Node::name`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerNode {
    /// Node name.
    pub name: String,
    /// Node addresses.
    pub addresses: Vec<IpAddr>,
    /// Node labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl PeerNode {
    /// Node `name` at `addresses`, without labels.
    pub fn new(name: impl Into<String>, addresses: impl IntoIterator<Item = IpAddr>) -> Self {
        Self {
            name: name.into(),
            addresses: addresses.into_iter().collect(),
            labels: BTreeMap::new(),
        }
    }

    /// This node with label `key=value`.
    #[must_use]
    pub fn with_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }
}

/// [`HostEndpoint::interface_name`] of a host endpoint on all of its node's interfaces
/// (Calico's wildcard host endpoint).
pub const ALL_INTERFACES: &str = "*";

/// One of a node's interfaces as a policy subject (Calico's HostEndpoint): host policies
/// select it by its labels. A host endpoint for another node is ignored on this one.
///
/// The reference model knows one host interface, the uplink: an endpoint on it (by name, or
/// [`ALL_INTERFACES`]) governs traffic that arrives on or leaves by the uplink. Where a node
/// has an endpoint for its uplink by name and one for all interfaces, the named one applies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostEndpoint {
    /// Name (cluster-scoped).
    pub name: String,
    /// The node it is on.
    pub node: String,
    /// The interface, or [`ALL_INTERFACES`].
    pub interface_name: String,
    /// The interface's addresses, as Calico's `expectedIPs` (informational here: a policy
    /// peer by address is a `nets` match).
    #[serde(default, rename = "expectedIPs", skip_serializing_if = "Vec::is_empty")]
    pub expected_ips: Vec<IpAddr>,
    /// Labels, for host policies' selectors.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl HostEndpoint {
    /// Host endpoint `name` on `node`'s interface `interface_name`, without labels.
    pub fn new(
        name: impl Into<String>,
        node: impl Into<String>,
        interface_name: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            node: node.into(),
            interface_name: interface_name.into(),
            expected_ips: Vec::new(),
            labels: BTreeMap::new(),
        }
    }

    /// This endpoint with label `key=value`.
    #[must_use]
    pub fn with_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// This endpoint with expected address `ip`.
    #[must_use]
    pub fn with_expected_ip(mut self, ip: IpAddr) -> Self {
        self.expected_ips.push(ip);
        self
    }

    /// Whether it covers every interface of its node.
    pub fn is_all_interfaces(&self) -> bool {
        self.interface_name == ALL_INTERFACES
    }
}

/// A policy for host endpoints (Calico's GlobalNetworkPolicy selecting host endpoints).
///
/// Kinds, by the flags: *normal* (neither `preDNAT` nor `doNotTrack`): stateful, after
/// service DNAT, for the node's own traffic, and for forwarded traffic too with
/// `applyOnForward`; *pre-DNAT*: ingress only, before service DNAT, no default deny;
/// *untracked* (`doNotTrack`): stateless, before conntrack, both directions, no default deny.
/// Calico's constraints hold: `preDNAT` takes ingress rules only and needs `applyOnForward`,
/// `doNotTrack` needs `applyOnForward`, and a policy is not both.
///
/// ```
/// use dataplane_core::{HostAction, HostPolicy, HostRule, LabelSelector, Protocol};
/// let block = HostPolicy::new("block-flood", LabelSelector::default().with_label("role", "uplink"))
///     .untracked()
///     .with_ingress(HostRule::new(HostAction::Deny).from_nets(["198.51.100.0/24".parse()?]));
/// assert!(block.do_not_track && block.apply_on_forward);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostPolicy {
    /// Name (cluster-scoped).
    pub name: String,
    /// Evaluation order: lower first, none last; equal orders by name (Calico's rule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<u32>,
    /// The host endpoints it applies to, by their labels.
    #[serde(default)]
    pub selector: LabelSelector,
    /// The directions it applies to; when empty, `Ingress` if it has ingress rules or no
    /// egress rules, plus `Egress` if it has egress rules (Calico's defaulting).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<PolicyType>,
    /// Rules for traffic arriving on the endpoint, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<HostRule>,
    /// Rules for traffic leaving by the endpoint, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<HostRule>,
    /// Applies to traffic forwarded through the endpoint too, not only the node's own.
    #[serde(default, skip_serializing_if = "is_false")]
    pub apply_on_forward: bool,
    /// Ingress rules evaluated before service DNAT (on the original destination).
    #[serde(default, rename = "preDNAT", skip_serializing_if = "is_false")]
    pub pre_dnat: bool,
    /// Stateless rules before conntrack; replies must be allowed by a rule of their own.
    #[serde(default, skip_serializing_if = "is_false")]
    pub do_not_track: bool,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde passes a reference
fn is_false(b: &bool) -> bool {
    !*b
}

impl HostPolicy {
    /// A normal policy `name` for the endpoints `selector` selects, without rules (for the
    /// directions it applies to: deny all but the failsafe ports).
    pub fn new(name: impl Into<String>, selector: LabelSelector) -> Self {
        Self {
            name: name.into(),
            order: None,
            selector,
            types: Vec::new(),
            ingress: Vec::new(),
            egress: Vec::new(),
            apply_on_forward: false,
            pre_dnat: false,
            do_not_track: false,
        }
    }

    /// This policy at order `order`.
    #[must_use]
    pub fn with_order(mut self, order: u32) -> Self {
        self.order = Some(order);
        self
    }

    /// This policy for the directions `types`.
    #[must_use]
    pub fn with_types(mut self, types: impl IntoIterator<Item = PolicyType>) -> Self {
        self.types = types.into_iter().collect();
        self
    }

    /// This policy with ingress rule `rule` after the others.
    #[must_use]
    pub fn with_ingress(mut self, rule: HostRule) -> Self {
        self.ingress.push(rule);
        self
    }

    /// This policy with egress rule `rule` after the others.
    #[must_use]
    pub fn with_egress(mut self, rule: HostRule) -> Self {
        self.egress.push(rule);
        self
    }

    /// This policy applied to forwarded traffic too.
    #[must_use]
    pub fn on_forward(mut self) -> Self {
        self.apply_on_forward = true;
        self
    }

    /// This policy as a pre-DNAT one (and so `applyOnForward`).
    #[must_use]
    pub fn pre_dnat(mut self) -> Self {
        self.pre_dnat = true;
        self.apply_on_forward = true;
        self
    }

    /// This policy as an untracked one (and so `applyOnForward`).
    #[must_use]
    pub fn untracked(mut self) -> Self {
        self.do_not_track = true;
        self.apply_on_forward = true;
        self
    }

    /// Whether it applies to `direction` (its `types`, or Calico's defaulting).
    pub fn applies_to(&self, direction: PolicyType) -> bool {
        if self.types.is_empty() {
            match direction {
                PolicyType::Ingress => !self.ingress.is_empty() || self.egress.is_empty(),
                PolicyType::Egress => !self.egress.is_empty(),
            }
        } else {
            self.types.contains(&direction)
        }
    }

    /// The rules of `direction`.
    pub fn rules(&self, direction: PolicyType) -> &[HostRule] {
        match direction {
            PolicyType::Ingress => &self.ingress,
            PolicyType::Egress => &self.egress,
        }
    }
}

/// What a matching host rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HostAction {
    /// Allowed (untracked: without a conntrack entry).
    Allow,
    /// Dropped.
    Deny,
}

/// One rule of a host policy: every part given must match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostRule {
    /// What a match does.
    pub action: HostAction,
    /// Protocol (none: any; ports need one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// The packet's source.
    #[serde(default, skip_serializing_if = "HostRuleMatch::is_any")]
    pub source: HostRuleMatch,
    /// The packet's destination.
    #[serde(default, skip_serializing_if = "HostRuleMatch::is_any")]
    pub destination: HostRuleMatch,
}

impl HostRule {
    /// A rule matching every packet.
    pub fn new(action: HostAction) -> Self {
        Self {
            action,
            protocol: None,
            source: HostRuleMatch::default(),
            destination: HostRuleMatch::default(),
        }
    }

    /// This rule for `protocol` only.
    #[must_use]
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = Some(protocol);
        self
    }

    /// This rule for sources in `nets` only.
    #[must_use]
    pub fn from_nets(mut self, nets: impl IntoIterator<Item = IpNetwork>) -> Self {
        self.source.nets.extend(nets);
        self
    }

    /// This rule for source ports `ports` only (needs a protocol).
    #[must_use]
    pub fn from_ports(mut self, ports: impl IntoIterator<Item = HostPort>) -> Self {
        self.source.ports.extend(ports);
        self
    }

    /// This rule for destinations in `nets` only.
    #[must_use]
    pub fn to_nets(mut self, nets: impl IntoIterator<Item = IpNetwork>) -> Self {
        self.destination.nets.extend(nets);
        self
    }

    /// This rule for destination ports `ports` only (needs a protocol).
    #[must_use]
    pub fn to_ports(mut self, ports: impl IntoIterator<Item = HostPort>) -> Self {
        self.destination.ports.extend(ports);
        self
    }
}

/// The source or destination part of a host rule.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostRuleMatch {
    /// Addresses in any of these (empty: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nets: Vec<IpNetwork>,
    /// Ports in any of these (empty: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<HostPort>,
}

impl HostRuleMatch {
    /// Whether it matches every address and port.
    pub fn is_any(&self) -> bool {
        self.nets.is_empty() && self.ports.is_empty()
    }
}

/// A port or an inclusive port range of a host rule (`22` or `{start: 1000, end: 2000}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum HostPort {
    /// One port.
    Number(u16),
    /// A range.
    Range(PortRange),
}

impl HostPort {
    /// Whether `port` is it or in it.
    pub fn contains(&self, port: u16) -> bool {
        match self {
            HostPort::Number(p) => *p == port,
            HostPort::Range(r) => r.contains(port),
        }
    }
}

/// Ports that host policy never closes, so that a node stays reachable and can reach its
/// control plane whatever its host policies say (Calico's failsafe rules). They are checked
/// before any host policy, untracked and pre-DNAT ones included; a port is a destination
/// port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FailsafePorts {
    /// Traffic arriving at the node for these ports.
    #[serde(default)]
    pub inbound: Vec<FailsafePort>,
    /// Traffic the node sends to these ports.
    #[serde(default)]
    pub outbound: Vec<FailsafePort>,
}

impl Default for FailsafePorts {
    /// Calico's defaults (Felix's `FailsafeInboundHostPorts` and `FailsafeOutboundHostPorts`):
    /// in, TCP 22 (ssh), 179 (BGP), 2379 and 2380 (etcd), 5473 (Typha), 6443 (API server),
    /// 6666 and 6667 (etcd self-hosted) and UDP 68 (DHCP client); out, the same TCP ports
    /// but 22 and UDP 53 (DNS) and 67 (DHCP server).
    fn default() -> Self {
        const TCP_IN: [u16; 8] = [22, 179, 2379, 2380, 5473, 6443, 6666, 6667];
        const TCP_OUT: [u16; 7] = [179, 2379, 2380, 5473, 6443, 6666, 6667];
        Self {
            inbound: TCP_IN
                .into_iter()
                .map(FailsafePort::tcp)
                .chain([FailsafePort::udp(68)])
                .collect(),
            outbound: TCP_OUT
                .into_iter()
                .map(FailsafePort::tcp)
                .chain([53, 67].map(FailsafePort::udp))
                .collect(),
        }
    }
}

impl FailsafePorts {
    /// No failsafe port at all (every port under host policy).
    pub fn none() -> Self {
        Self {
            inbound: Vec::new(),
            outbound: Vec::new(),
        }
    }

    /// Whether these are Calico's defaults.
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// One failsafe port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FailsafePort {
    /// Protocol.
    pub protocol: Protocol,
    /// Port (not 0).
    pub port: u16,
}

impl FailsafePort {
    /// TCP `port`.
    pub fn tcp(port: u16) -> Self {
        Self {
            protocol: Protocol::Tcp,
            port,
        }
    }

    /// UDP `port`.
    pub fn udp(port: u16) -> Self {
        Self {
            protocol: Protocol::Udp,
            port,
        }
    }
}
