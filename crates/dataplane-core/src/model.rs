//! The desired networking state of one node: what a caller hands to a [`crate::Dataplane`].
//!
//! The file format is this model serialised with serde (YAML or JSON), versioned by
//! [`API_VERSION`]. Field names are camelCase, like Kubernetes objects; unknown fields are
//! rejected so that a typo is an error, not a silently ignored setting.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

/// The `apiVersion` that this version of the crate reads and writes.
pub const API_VERSION: &str = "dataplane.rs/v1alpha1";
/// The `kind` of a desired-state document.
pub const KIND: &str = "DesiredState";

/// Everything a backend must program on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DesiredState {
    /// Must be [`API_VERSION`].
    pub api_version: String,
    /// Must be [`KIND`].
    pub kind: String,
    /// The node this state is for.
    pub node: Node,
    /// Services and their backends (cluster-wide view, as kube-proxy sees it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<Service>,
    /// Workloads running on this node (what policy applies to).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<Endpoint>,
    /// Network policies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<Policy>,
}

impl DesiredState {
    /// An empty state for `node`, with the current [`API_VERSION`].
    pub fn new(node: Node) -> Self {
        Self {
            api_version: API_VERSION.to_owned(),
            kind: KIND.to_owned(),
            node,
            services: Vec::new(),
            endpoints: Vec::new(),
            policies: Vec::new(),
        }
    }

    /// The service named `name`, if present.
    pub fn service(&self, name: &ObjectName) -> Option<&Service> {
        self.services.iter().find(|s| &s.name == name)
    }
}

/// A namespaced Kubernetes object name, written `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectName {
    /// Kubernetes namespace.
    pub namespace: String,
    /// Object name inside the namespace.
    pub name: String,
}

impl ObjectName {
    /// Builds a name from its parts.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The node: its addresses, CIDRs, interfaces and masquerade settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Node {
    /// Kubernetes node name; backends with the same `nodeName` are node-local.
    pub name: String,
    /// Node addresses: NodePort frontends listen here, masquerade uses the first of each family.
    pub addresses: Vec<IpAddr>,
    /// This node's pod CIDRs.
    #[serde(default, rename = "podCIDRs")]
    pub pod_cidrs: Vec<IpNetwork>,
    /// The whole cluster's pod CIDRs.
    #[serde(default, rename = "clusterCIDRs")]
    pub cluster_cidrs: Vec<IpNetwork>,
    /// Service (ClusterIP) CIDRs.
    #[serde(default, rename = "serviceCIDRs")]
    pub service_cidrs: Vec<IpNetwork>,
    /// The range NodePorts must fall into.
    #[serde(default)]
    pub node_port_range: PortRange,
    /// Interfaces the backend attaches to.
    pub interfaces: Interfaces,
    /// Source NAT for traffic leaving the cluster.
    #[serde(default)]
    pub masquerade: Masquerade,
    /// MTU of the uplink, used for encapsulation overhead and MSS clamping.
    #[serde(default = "default_mtu")]
    pub mtu: u32,
    /// How external (NodePort/LoadBalancer/ExternalIP) traffic to remote backends is forwarded
    /// when a service does not say.
    #[serde(default)]
    pub external_mode: ExternalMode,
}

fn default_mtu() -> u32 {
    1500
}

/// An inclusive port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortRange {
    /// First port in the range.
    pub start: u16,
    /// Last port in the range (inclusive).
    pub end: u16,
}

impl PortRange {
    /// Whether `port` is inside the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.start..=self.end).contains(&port)
    }
}

impl Default for PortRange {
    /// Kubernetes' default NodePort range, 30000-32767.
    fn default() -> Self {
        Self {
            start: 30000,
            end: 32767,
        }
    }
}

/// Interfaces of the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Interfaces {
    /// The node's interface towards the other nodes and the outside world.
    pub uplink: String,
}

/// Source NAT of pod traffic leaving the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Masquerade {
    /// Masquerade pod traffic to destinations outside the cluster CIDRs and `nonMasqueradeCidrs`.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Masquerade all traffic leaving pods towards the uplink, whatever its destination.
    #[serde(default)]
    pub all: bool,
    /// Destinations that are never masqueraded (besides the cluster CIDRs).
    #[serde(default, rename = "nonMasqueradeCIDRs")]
    pub non_masquerade_cidrs: Vec<IpNetwork>,
    /// Masquerade every connection to a service frontend to the node address, like
    /// kube-proxy's `--masquerade-all`; independent of `enabled` and `all` (which are about
    /// pod traffic leaving the cluster). Clients whose address a service promises to keep
    /// still keep it: external clients of an `externalTrafficPolicy: Local` service and DSR.
    #[serde(default, skip_serializing_if = "is_false")]
    pub all_services: bool,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde passes a reference
fn is_false(b: &bool) -> bool {
    !*b
}

fn yes() -> bool {
    true
}

impl Default for Masquerade {
    fn default() -> Self {
        Self {
            enabled: true,
            all: false,
            non_masquerade_cidrs: Vec::new(),
            all_services: false,
        }
    }
}

/// L4 protocol of a service port or a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    /// TCP (IP protocol 6).
    Tcp,
    /// UDP (IP protocol 17).
    Udp,
    /// SCTP (IP protocol 132).
    Sctp,
}

impl Protocol {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        })
    }
}

/// A Kubernetes Service with its frontends and backends.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Service {
    /// Namespace and name.
    #[serde(flatten)]
    pub name: ObjectName,
    /// ClusterIPs (at most one per address family).
    #[serde(default, rename = "clusterIPs")]
    pub cluster_ips: Vec<IpAddr>,
    /// ExternalIPs: handled like ClusterIPs but reachable from outside.
    #[serde(default, rename = "externalIPs")]
    pub external_ips: Vec<IpAddr>,
    /// LoadBalancer ingress IPs.
    #[serde(default, rename = "loadBalancerIPs")]
    pub load_balancer_ips: Vec<IpAddr>,
    /// Ports; each is a frontend on every address above (and on the node's addresses for
    /// `nodePort`).
    pub ports: Vec<ServicePort>,
    /// Backends (the EndpointSlice endpoints of this service).
    #[serde(default)]
    pub backends: Vec<Backend>,
    /// ClientIP session affinity.
    #[serde(default)]
    pub session_affinity: SessionAffinity,
    /// Which backends serve external (NodePort, LoadBalancer, ExternalIP) traffic.
    #[serde(default)]
    pub external_traffic_policy: TrafficPolicy,
    /// Which backends serve ClusterIP traffic from inside the cluster.
    #[serde(default)]
    pub internal_traffic_policy: TrafficPolicy,
    /// Health-check NodePort for `externalTrafficPolicy: Local` (served by the agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check_node_port: Option<u16>,
    /// Client CIDRs allowed to reach the LoadBalancer IPs; empty means all.
    #[serde(default)]
    pub load_balancer_source_ranges: Vec<IpNetwork>,
    /// How a backend is picked for a new connection.
    #[serde(default)]
    pub backend_selection: BackendSelection,
    /// Forwarding of external traffic to remote backends; `None` takes the node's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_mode: Option<ExternalMode>,
}

impl Service {
    /// A service with no frontends, ports or backends.
    pub fn new(name: ObjectName) -> Self {
        Self {
            name,
            cluster_ips: Vec::new(),
            external_ips: Vec::new(),
            load_balancer_ips: Vec::new(),
            ports: Vec::new(),
            backends: Vec::new(),
            session_affinity: SessionAffinity::None,
            external_traffic_policy: TrafficPolicy::Cluster,
            internal_traffic_policy: TrafficPolicy::Cluster,
            health_check_node_port: None,
            load_balancer_source_ranges: Vec::new(),
            backend_selection: BackendSelection::Random,
            external_mode: None,
        }
    }

    /// The effective external mode given the node's default.
    pub fn effective_external_mode(&self, node: &Node) -> ExternalMode {
        self.external_mode.unwrap_or(node.external_mode)
    }

    /// Whether external traffic of `protocol` to a backend on another node uses direct server
    /// return (the backend sees the client's address and replies straight to it) rather than
    /// source NAT to the ingress node. `Hybrid` is DSR for TCP and SNAT for the rest.
    pub fn uses_dsr(&self, node: &Node, protocol: Protocol) -> bool {
        match self.effective_external_mode(node) {
            ExternalMode::Snat => false,
            ExternalMode::Dsr => true,
            ExternalMode::Hybrid => protocol == Protocol::Tcp,
        }
    }
}

/// One port of a service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    /// Port name (may be empty when the service has one port).
    #[serde(default)]
    pub name: String,
    /// L4 protocol.
    pub protocol: Protocol,
    /// The frontend port on ClusterIPs, ExternalIPs and LoadBalancer IPs.
    pub port: u16,
    /// The port on the backends.
    pub target_port: u16,
    /// NodePort on the node's addresses, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_port: Option<u16>,
}

/// One backend (an EndpointSlice endpoint).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Backend {
    /// Pod (or node) address.
    pub ip: IpAddr,
    /// EndpointConditions.ready.
    #[serde(default = "yes")]
    pub ready: bool,
    /// EndpointConditions.serving.
    #[serde(default = "yes")]
    pub serving: bool,
    /// EndpointConditions.terminating.
    #[serde(default)]
    pub terminating: bool,
    /// Name of the node the backend runs on; equal to [`Node::name`] means node-local.
    ///
    /// Shared (`Arc<str>`): a node name repeats across every backend on that node, and at
    /// 100k backends a `String` each was ~4.7 MiB of the caller's state. Build one per node
    /// and clone it (`Some(Arc::clone(&name))`); `Some("node-a".into())` also works.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<Arc<str>>,
    /// Topology zone (shared like [`Backend::node_name`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<Arc<str>>,
    /// Relative weight for selection (1..=65535); Maglev honours it with more table slots,
    /// random selection with more backend slots.
    #[serde(default = "default_weight")]
    pub weight: u16,
}

fn default_weight() -> u16 {
    1
}

impl Backend {
    /// A ready backend at `ip` with weight 1.
    pub fn new(ip: IpAddr) -> Self {
        Self {
            ip,
            ready: true,
            serving: true,
            terminating: false,
            node_name: None,
            zone: None,
            weight: 1,
        }
    }

    /// Whether the backend runs on `node`.
    pub fn is_local_to(&self, node: &Node) -> bool {
        self.node_name.as_deref() == Some(node.name.as_str())
    }
}

/// Session affinity of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(tag = "type", rename_all_fields = "camelCase", deny_unknown_fields)]
pub enum SessionAffinity {
    /// Every new connection picks a backend independently.
    #[default]
    None,
    /// New connections from the same client IP go to the same backend until `timeoutSeconds`
    /// pass without traffic.
    #[serde(rename = "ClientIP")]
    ClientIp {
        /// 1..=86400, Kubernetes' default is 10800.
        timeout_seconds: u32,
    },
}

/// Kubernetes traffic policy (external and internal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum TrafficPolicy {
    /// Any ready backend in the cluster.
    #[default]
    Cluster,
    /// Only backends on this node.
    Local,
}

/// How a backend is chosen for a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum BackendSelection {
    /// Uniform (weighted) random choice per new connection.
    #[default]
    Random,
    /// Maglev consistent hashing of the 5-tuple: every node picks the same backend.
    Maglev,
}

/// Forwarding of external traffic to a backend on another node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum ExternalMode {
    /// Source NAT to the node address; replies come back through this node.
    #[default]
    Snat,
    /// Direct server return: the backend node replies straight to the client.
    Dsr,
    /// DSR for TCP, SNAT for UDP.
    Hybrid,
}

/// A workload running on this node (a pod's host-side interface and its addresses).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Endpoint {
    /// Pod namespace and name.
    #[serde(flatten)]
    pub name: ObjectName,
    /// Host-side interface (veth) of the pod.
    pub interface: String,
    /// Pod addresses.
    pub ips: Vec<IpAddr>,
    /// Pod labels, for policy selectors.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Labels of the pod's namespace, for namespace selectors.
    #[serde(default)]
    pub namespace_labels: BTreeMap<String, String>,
    /// Named container ports, for policies that name ports.
    #[serde(default)]
    pub named_ports: Vec<NamedPort>,
}

/// A named container port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamedPort {
    /// Port name.
    pub name: String,
    /// Protocol.
    pub protocol: Protocol,
    /// Port number.
    pub port: u16,
}

/// A Kubernetes NetworkPolicy.
///
/// The model follows NetworkPolicy semantics. Backends declare in
/// [`crate::Capabilities::network_policy`] whether they enforce it and refuse states that carry
/// policies they cannot enforce.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Policy {
    /// Namespace and name.
    #[serde(flatten)]
    pub name: ObjectName,
    /// Pods (in the policy's namespace) the policy applies to.
    #[serde(default)]
    pub pod_selector: LabelSelector,
    /// Directions the policy isolates.
    #[serde(default)]
    pub policy_types: Vec<PolicyType>,
    /// Allowed ingress.
    #[serde(default)]
    pub ingress: Vec<PolicyRule>,
    /// Allowed egress.
    #[serde(default)]
    pub egress: Vec<PolicyRule>,
}

/// A direction a policy isolates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PolicyType {
    /// Traffic to the selected pods.
    Ingress,
    /// Traffic from the selected pods.
    Egress,
}

/// A Kubernetes label selector.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    /// Labels that must match exactly.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    /// Set-based requirements.
    #[serde(default)]
    pub match_expressions: Vec<LabelRequirement>,
}

/// One set-based selector requirement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelRequirement {
    /// Label key.
    pub key: String,
    /// Operator.
    pub operator: SelectorOperator,
    /// Values for `In` and `NotIn`.
    #[serde(default)]
    pub values: Vec<String>,
}

/// Label selector operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SelectorOperator {
    /// Value is one of `values`.
    In,
    /// Value is none of `values` (or the key is absent).
    NotIn,
    /// Key present.
    Exists,
    /// Key absent.
    DoesNotExist,
}

/// One ingress or egress rule.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyRule {
    /// Peers (empty: all peers).
    #[serde(default)]
    pub peers: Vec<PolicyPeer>,
    /// Ports (empty: all ports).
    #[serde(default)]
    pub ports: Vec<PolicyPort>,
}

/// A policy peer.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyPeer {
    /// Pods selected by labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// Namespaces selected by labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// A CIDR with exceptions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_block: Option<IpBlock>,
}

/// A CIDR with excepted sub-ranges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IpBlock {
    /// The CIDR.
    pub cidr: IpNetwork,
    /// Sub-ranges of `cidr` that are excluded.
    #[serde(default)]
    pub except: Vec<IpNetwork>,
}

/// Port match of a policy rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyPort {
    /// Protocol (default TCP).
    #[serde(default = "tcp")]
    pub protocol: Protocol,
    /// A number or a named port; absent means all ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PortRef>,
    /// End of a port range starting at `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<u16>,
}

fn tcp() -> Protocol {
    Protocol::Tcp
}

/// A port given by number or by container port name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PortRef {
    /// A port number.
    Number(u16),
    /// A named container port.
    Name(String),
}
