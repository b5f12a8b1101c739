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

mod tiers;
pub use tiers::*;

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
    /// Namespaces and their labels, for policies' namespace selectors: one object per
    /// namespace, so that relabelling a namespace is one change however many pods it holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<Namespace>,
    /// The cluster's pods that are not [`DesiredState::endpoints`] of this node, as policy
    /// peers: known by address, labels and named ports only (like Cilium's ipcache or
    /// Calico's remote workload endpoints).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pods: Vec<PeerPod>,
    /// Cluster-wide ordered policies (AdminNetworkPolicies), evaluated before
    /// [`DesiredState::policies`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cluster_policies: Vec<ClusterPolicy>,
    /// The cluster's baseline policy (the BaselineAdminNetworkPolicy), evaluated where
    /// neither a cluster policy nor a NetworkPolicy decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_policy: Option<BaselinePolicy>,
    /// The cluster's nodes with their labels, for cluster policies' `nodes` peers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<PeerNode>,
    /// Host endpoints (the node's interfaces as policy subjects); those of other nodes are
    /// ignored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_endpoints: Vec<HostEndpoint>,
    /// Policies for host endpoints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_policies: Vec<HostPolicy>,
    /// Ports host policy never closes (Calico's defaults when absent).
    #[serde(default, skip_serializing_if = "FailsafePorts::is_default")]
    pub failsafe_ports: FailsafePorts,
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
            namespaces: Vec::new(),
            pods: Vec::new(),
            cluster_policies: Vec::new(),
            baseline_policy: None,
            nodes: Vec::new(),
            host_endpoints: Vec::new(),
            host_policies: Vec::new(),
            failsafe_ports: FailsafePorts::default(),
        }
    }

    /// The service named `name`, if present.
    pub fn service(&self, name: &ObjectName) -> Option<&Service> {
        self.services.iter().find(|s| &s.name == name)
    }

    /// This state with `service` added.
    ///
    /// ```
    /// use dataplane_core::{DesiredState, Node, ObjectName, Service, ServicePort};
    /// let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    /// let state = DesiredState::new(Node::new("node-a", [ip("172.18.0.10")]))
    ///     .with_service(Service::cluster_ip(
    ///         ObjectName::new("default", "dns"),
    ///         ip("10.96.0.10"),
    ///         [ServicePort::udp(53, 53).named("dns"), ServicePort::tcp(53, 53).named("dns-tcp")],
    ///     ));
    /// assert_eq!(state.services.len(), 1);
    /// dataplane_core::validate(&state).unwrap();
    /// ```
    #[must_use]
    pub fn with_service(mut self, service: Service) -> Self {
        self.services.push(service);
        self
    }

    /// This state with `endpoint` (a local workload) added.
    #[must_use]
    pub fn with_endpoint(mut self, endpoint: Endpoint) -> Self {
        self.endpoints.push(endpoint);
        self
    }

    /// This state with `policy` added.
    #[must_use]
    pub fn with_policy(mut self, policy: Policy) -> Self {
        self.policies.push(policy);
        self
    }

    /// This state with `namespace` (its labels) added.
    #[must_use]
    pub fn with_namespace(mut self, namespace: Namespace) -> Self {
        self.namespaces.push(namespace);
        self
    }

    /// This state with `pod` (a pod of another node, as a policy peer) added.
    #[must_use]
    pub fn with_pod(mut self, pod: PeerPod) -> Self {
        self.pods.push(pod);
        self
    }

    /// This state with cluster policy `policy` added.
    #[must_use]
    pub fn with_cluster_policy(mut self, policy: ClusterPolicy) -> Self {
        self.cluster_policies.push(policy);
        self
    }

    /// This state with `baseline` as the baseline policy.
    #[must_use]
    pub fn with_baseline_policy(mut self, baseline: BaselinePolicy) -> Self {
        self.baseline_policy = Some(baseline);
        self
    }

    /// This state with `node` (a node of the cluster, as a policy peer) added.
    #[must_use]
    pub fn with_peer_node(mut self, node: PeerNode) -> Self {
        self.nodes.push(node);
        self
    }

    /// This state with host endpoint `endpoint` added.
    #[must_use]
    pub fn with_host_endpoint(mut self, endpoint: HostEndpoint) -> Self {
        self.host_endpoints.push(endpoint);
        self
    }

    /// This state with host policy `policy` added.
    #[must_use]
    pub fn with_host_policy(mut self, policy: HostPolicy) -> Self {
        self.host_policies.push(policy);
        self
    }

    /// This state with `ports` as the failsafe ports.
    #[must_use]
    pub fn with_failsafe_ports(mut self, ports: FailsafePorts) -> Self {
        self.failsafe_ports = ports;
        self
    }

    /// Whether any pod policy is present: NetworkPolicy, cluster policy or baseline (with
    /// none, pod traffic is judged without policy).
    pub fn has_pod_policy(&self) -> bool {
        !self.policies.is_empty()
            || !self.cluster_policies.is_empty()
            || self.baseline_policy.is_some()
    }

    /// The labels of namespace `name`: its [`Namespace`] object's if the state has one, else
    /// the `namespaceLabels` of its endpoints: those of the endpoint first by name among the
    /// ones that carry some, so that the answer does not depend on the order of the list
    /// (validation does not make endpoints of one namespace agree).
    /// Kubernetes' automatic `kubernetes.io/metadata.name` label is always there, as the API
    /// server sets it on every namespace.
    pub fn namespace_labels(&self, name: &str) -> BTreeMap<String, String> {
        let mut labels = self
            .namespaces
            .iter()
            .find(|n| n.name == name)
            .map(|n| n.labels.clone())
            .or_else(|| {
                self.endpoints
                    .iter()
                    .filter(|e| e.name.namespace == name && !e.namespace_labels.is_empty())
                    .min_by(|a, b| a.name.cmp(&b.name))
                    .map(|e| e.namespace_labels.clone())
            })
            .unwrap_or_default();
        labels.insert(NAMESPACE_NAME_LABEL.to_owned(), name.to_owned());
        labels
    }
}

/// The label the Kubernetes API server puts on every namespace, with the namespace's name
/// as value (so that a namespace selector can pick a namespace by name).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A namespace and its labels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Namespace {
    /// Namespace name.
    pub name: String,
    /// Namespace labels ([`NAMESPACE_NAME_LABEL`] is implied).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl Namespace {
    /// Namespace `name` without labels.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            labels: BTreeMap::new(),
        }
    }

    /// This namespace with label `key=value`.
    #[must_use]
    pub fn with_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }
}

/// A pod that is not a local [`Endpoint`]: a policy peer known by its addresses, labels and
/// named ports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerPod {
    /// Pod namespace and name.
    #[serde(flatten)]
    pub name: ObjectName,
    /// Pod addresses.
    pub ips: Vec<IpAddr>,
    /// Pod labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Named container ports (a policy naming a port resolves it on the destination pod).
    #[serde(default)]
    pub named_ports: Vec<NamedPort>,
    /// The node the pod runs on (shared like [`Backend::node_name`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<ThinStr>,
}

impl PeerPod {
    /// The pod `name` at `ips`, without labels or named ports.
    ///
    /// ```
    /// use dataplane_core::{ObjectName, PeerPod};
    /// let pod = PeerPod::new(ObjectName::new("y", "b"), ["10.244.2.5".parse()?])
    ///     .with_label("pod", "b")
    ///     .on_node("node-b");
    /// assert_eq!((pod.labels["pod"].as_str(), pod.node_name.as_deref()), ("b", Some("node-b")));
    /// # Ok::<(), std::net::AddrParseError>(())
    /// ```
    pub fn new(name: ObjectName, ips: impl IntoIterator<Item = IpAddr>) -> Self {
        Self {
            name,
            ips: ips.into_iter().collect(),
            labels: BTreeMap::new(),
            named_ports: Vec::new(),
            node_name: None,
        }
    }

    /// This pod with label `key=value`.
    #[must_use]
    pub fn with_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// This pod with named container port `port`.
    #[must_use]
    pub fn with_named_port(mut self, port: NamedPort) -> Self {
        self.named_ports.push(port);
        self
    }

    /// This pod running on node `node_name`.
    #[must_use]
    pub fn on_node(mut self, node_name: impl Into<ThinStr>) -> Self {
        self.node_name = Some(node_name.into());
        self
    }
}

/// A namespaced Kubernetes object name, written `namespace/name`.
///
/// Its parts are [`SharedStr`]s: a name is copied into every index that names its object
/// (a translation's, a backend's mirrors), and a copy is then a reference count, not two
/// allocations (tens of thousands of names at 10k services). They serialize as plain
/// strings and compare with `&str` and `String`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectName {
    /// Kubernetes namespace.
    pub namespace: SharedStr,
    /// Object name inside the namespace.
    pub name: SharedStr,
}

impl ObjectName {
    /// Builds a name from its parts (`&str`, `String`, or a shared `Arc<str>` or
    /// [`SharedStr`], which is not copied).
    pub fn new(namespace: impl Into<SharedStr>, name: impl Into<SharedStr>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

/// An immutable string shared by reference count (`Arc<str>`), for names held by many
/// indexes: cloning one copies no text. Reads as a `&str` (`Deref`, [`SharedStr::as_str`]),
/// compares with `str` and `String`, and serializes as a plain string.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SharedStr(Arc<str>);

impl SharedStr {
    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The shared allocation (cloning it shares the text).
    pub fn as_arc(&self) -> &Arc<str> {
        &self.0
    }
}

impl From<&str> for SharedStr {
    fn from(s: &str) -> Self {
        Self(s.into())
    }
}

impl From<&String> for SharedStr {
    fn from(s: &String) -> Self {
        Self(s.as_str().into())
    }
}

impl From<String> for SharedStr {
    fn from(s: String) -> Self {
        Self(s.into())
    }
}

impl From<Arc<str>> for SharedStr {
    fn from(s: Arc<str>) -> Self {
        Self(s)
    }
}

impl From<&Arc<str>> for SharedStr {
    fn from(s: &Arc<str>) -> Self {
        Self(Arc::clone(s))
    }
}

impl From<&SharedStr> for SharedStr {
    fn from(s: &SharedStr) -> Self {
        s.clone()
    }
}

impl From<SharedStr> for Arc<str> {
    fn from(s: SharedStr) -> Self {
        s.0
    }
}

impl From<SharedStr> for String {
    fn from(s: SharedStr) -> Self {
        s.0.as_ref().to_owned()
    }
}

/// An immutable string shared by reference count behind a thin pointer (8 bytes, and
/// `Option<ThinStr>` too), for a name repeated across very many objects: a backend's
/// [`Backend::node_name`] and [`Backend::zone`] (a million backends at 100k services x 10,
/// where the 16 bytes of an `Option<Arc<str>>` each made the backends a quarter bigger).
/// Cloning one copies no text. Reads as a `&str` (`Deref`, [`ThinStr::as_str`]), compares
/// with `str` and `String`, and serializes as a plain string. `From<Arc<str>>` copies the
/// text once: share a `ThinStr` (`clone`) rather than converting the same `Arc<str>` again.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ThinStr(Arc<Box<str>>);

impl ThinStr {
    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for ThinStr {
    fn from(s: &str) -> Self {
        Self(Arc::new(s.into()))
    }
}

impl From<&String> for ThinStr {
    fn from(s: &String) -> Self {
        Self::from(s.as_str())
    }
}

impl From<String> for ThinStr {
    fn from(s: String) -> Self {
        Self(Arc::new(s.into_boxed_str()))
    }
}

impl From<Arc<str>> for ThinStr {
    fn from(s: Arc<str>) -> Self {
        Self::from(&*s)
    }
}

impl From<&Arc<str>> for ThinStr {
    fn from(s: &Arc<str>) -> Self {
        Self::from(&**s)
    }
}

impl From<&ThinStr> for ThinStr {
    fn from(s: &ThinStr) -> Self {
        s.clone()
    }
}

impl From<&SharedStr> for ThinStr {
    fn from(s: &SharedStr) -> Self {
        Self::from(s.as_str())
    }
}

impl From<ThinStr> for String {
    fn from(s: ThinStr) -> Self {
        s.as_str().to_owned()
    }
}

impl From<ThinStr> for Arc<str> {
    fn from(s: ThinStr) -> Self {
        s.as_str().into()
    }
}

/// What a shared string type reads and compares as: a `&str` (`Deref`, `AsRef`, `Borrow`,
/// `Debug` and `Display` as the text), equal to `str`, `&str` and `String` either way round.
/// The type has an `as_str(&self) -> &str`.
macro_rules! str_like {
    ($t:ty) => {
        impl std::ops::Deref for $t {
            type Target = str;

            fn deref(&self) -> &str {
                self.as_str()
            }
        }

        impl AsRef<str> for $t {
            fn as_ref(&self) -> &str {
                self.as_str()
            }
        }

        impl std::borrow::Borrow<str> for $t {
            fn borrow(&self) -> &str {
                self.as_str()
            }
        }

        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(self.as_str(), f)
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl PartialEq<str> for $t {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }

        impl PartialEq<&str> for $t {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        impl PartialEq<String> for $t {
            fn eq(&self, other: &String) -> bool {
                self.as_str() == other.as_str()
            }
        }

        impl PartialEq<$t> for str {
            fn eq(&self, other: &$t) -> bool {
                self == other.as_str()
            }
        }

        impl PartialEq<$t> for &str {
            fn eq(&self, other: &$t) -> bool {
                *self == other.as_str()
            }
        }

        impl PartialEq<$t> for String {
            fn eq(&self, other: &$t) -> bool {
                self.as_str() == other.as_str()
            }
        }
    };
}

str_like!(SharedStr);
str_like!(ThinStr);

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

/// The MTU a [`Node`] has when none is given: Ethernet's 1500, as on most nodes.
pub const DEFAULT_MTU: u32 = 1500;

/// The uplink a [`Node::new`] names: `eth0`, the first Ethernet interface on most cloud VMs,
/// kind and the lab's nodes. Set the real one with [`Node::with_uplink`] where it differs
/// (`ens5`, `enp1s0`, a bond); a dataplane attaches its programs to this interface.
pub const DEFAULT_UPLINK: &str = "eth0";

fn default_mtu() -> u32 {
    DEFAULT_MTU
}

impl Node {
    /// A node named `name` with `addresses` and Kubernetes' defaults for the rest: NodePort
    /// range 30000-32767, pod masquerade on (not `all`, not `allServices`), MTU
    /// [`DEFAULT_MTU`], external traffic with SNAT, uplink [`DEFAULT_UPLINK`], and no pod,
    /// cluster or service CIDRs (set them with the `with_` methods: without cluster CIDRs
    /// nothing is known to be a pod, as in kube-proxy without a local detector).
    ///
    /// ```
    /// use dataplane_core::{ExternalMode, Node, PortRange};
    /// let node = Node::new("node-a", ["172.18.0.10".parse()?])
    ///     .with_pod_cidrs(["10.244.1.0/24".parse()?])
    ///     .with_cluster_cidrs(["10.244.0.0/16".parse()?])
    ///     .with_service_cidrs(["10.96.0.0/12".parse()?])
    ///     .with_uplink("ens5");
    /// assert_eq!(node.node_port_range, PortRange { start: 30000, end: 32767 });
    /// assert_eq!((node.mtu, node.external_mode), (1500, ExternalMode::Snat));
    /// assert!(node.masquerade.enabled);
    /// assert_eq!(node.interfaces.uplink, "ens5");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(name: impl Into<String>, addresses: impl IntoIterator<Item = IpAddr>) -> Self {
        Self {
            name: name.into(),
            addresses: addresses.into_iter().collect(),
            pod_cidrs: Vec::new(),
            cluster_cidrs: Vec::new(),
            service_cidrs: Vec::new(),
            node_port_range: PortRange::default(),
            interfaces: Interfaces::new(DEFAULT_UPLINK),
            masquerade: Masquerade::default(),
            mtu: DEFAULT_MTU,
            external_mode: ExternalMode::default(),
        }
    }

    /// This node with its uplink interface named `uplink`.
    #[must_use]
    pub fn with_uplink(mut self, uplink: impl Into<String>) -> Self {
        self.interfaces.uplink = uplink.into();
        self
    }

    /// This node with its own pod CIDRs set to `cidrs`.
    #[must_use]
    pub fn with_pod_cidrs(mut self, cidrs: impl IntoIterator<Item = IpNetwork>) -> Self {
        self.pod_cidrs = cidrs.into_iter().collect();
        self
    }

    /// This node with the cluster's pod CIDRs set to `cidrs`.
    #[must_use]
    pub fn with_cluster_cidrs(mut self, cidrs: impl IntoIterator<Item = IpNetwork>) -> Self {
        self.cluster_cidrs = cidrs.into_iter().collect();
        self
    }

    /// This node with the service (ClusterIP) CIDRs set to `cidrs`.
    #[must_use]
    pub fn with_service_cidrs(mut self, cidrs: impl IntoIterator<Item = IpNetwork>) -> Self {
        self.service_cidrs = cidrs.into_iter().collect();
        self
    }

    /// This node with NodePorts in `start..=end`.
    #[must_use]
    pub fn with_node_port_range(mut self, start: u16, end: u16) -> Self {
        self.node_port_range = PortRange { start, end };
        self
    }

    /// This node with uplink MTU `mtu`.
    #[must_use]
    pub fn with_mtu(mut self, mtu: u32) -> Self {
        self.mtu = mtu;
        self
    }

    /// This node with `mode` as the default forwarding of external traffic.
    #[must_use]
    pub fn with_external_mode(mut self, mode: ExternalMode) -> Self {
        self.external_mode = mode;
        self
    }

    /// This node with `masquerade` settings.
    #[must_use]
    pub fn with_masquerade(mut self, masquerade: Masquerade) -> Self {
        self.masquerade = masquerade;
        self
    }
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

impl Interfaces {
    /// The interfaces of a node whose uplink is `uplink`.
    pub fn new(uplink: impl Into<String>) -> Self {
        Self {
            uplink: uplink.into(),
        }
    }
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
    /// kube-proxy's defaults: pod traffic leaving the cluster is masqueraded, nothing else.
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
    /// Every protocol.
    pub const ALL: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }

    /// The protocol with IP protocol number `number`, if it is one of ours.
    pub fn from_number(number: u8) -> Option<Protocol> {
        Protocol::ALL.into_iter().find(|p| p.number() == number)
    }

    /// The protocol named `name` in any case (`TCP` as Kubernetes writes it, `tcp` as
    /// nftables, iptables and conntrack do), if it is one of ours.
    pub fn from_name(name: &str) -> Option<Protocol> {
        Protocol::ALL
            .into_iter()
            .find(|p| p.to_string().eq_ignore_ascii_case(name))
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
    /// Whether this node announces the service's LoadBalancer IPs and ExternalIPs on its
    /// uplink's L2 segment: it answers ARP requests (IPv4) and neighbour solicitations (IPv6)
    /// for them with the uplink's MAC and announces them gratuitously when it starts (Cilium's
    /// "L2 announcements", `MetalLB`'s L2 mode). One node per service should announce: the
    /// embedder decides which (the node agent by a Lease per service). Requires
    /// [`Capabilities::l2_announcements`](crate::Capabilities::l2_announcements) and at least
    /// one LoadBalancer IP or ExternalIP.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub l2_announce: bool,
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
            l2_announce: false,
        }
    }

    /// A service `name` with ClusterIP `ip` and `ports` (targets given by each port), no
    /// backends yet, and Kubernetes' defaults: no session affinity, `Cluster` traffic
    /// policies, random backend selection, the node's external mode.
    ///
    /// ```
    /// use dataplane_core::{Backend, ObjectName, Service, ServicePort};
    /// let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    /// let web = Service::cluster_ip(
    ///     ObjectName::new("default", "web"),
    ///     ip("10.96.0.20"),
    ///     [ServicePort::tcp(80, 8080)],
    /// )
    /// .with_backend(Backend::new(ip("10.244.1.5")).on_node("node-a"))
    /// .with_backend(Backend::new(ip("10.244.2.7")).on_node("node-b"));
    /// assert_eq!(web.backends.len(), 2);
    /// ```
    pub fn cluster_ip(
        name: ObjectName,
        ip: IpAddr,
        ports: impl IntoIterator<Item = ServicePort>,
    ) -> Self {
        Self::new(name).with_cluster_ip(ip).with_ports(ports)
    }

    /// This service with ClusterIP `ip` added (one per address family).
    #[must_use]
    pub fn with_cluster_ip(mut self, ip: IpAddr) -> Self {
        self.cluster_ips.push(ip);
        self
    }

    /// This service with ExternalIP `ip` added.
    #[must_use]
    pub fn with_external_ip(mut self, ip: IpAddr) -> Self {
        self.external_ips.push(ip);
        self
    }

    /// This service with LoadBalancer ingress IP `ip` added.
    ///
    /// ```
    /// use dataplane_core::{ObjectName, Service, ServicePort, TrafficPolicy};
    /// let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    /// let lb = Service::cluster_ip(ObjectName::new("shop", "front"), ip("10.96.0.30"), [
    ///     ServicePort::tcp(443, 8443).with_node_port(30443),
    /// ])
    /// .with_load_balancer_ip(ip("192.0.2.10"))
    /// .with_external_traffic_policy(TrafficPolicy::Local);
    /// assert_eq!(lb.ports[0].node_port, Some(30443));
    /// ```
    #[must_use]
    pub fn with_load_balancer_ip(mut self, ip: IpAddr) -> Self {
        self.load_balancer_ips.push(ip);
        self
    }

    /// This service with its LoadBalancer IPs and ExternalIPs announced on this node's L2
    /// segment ([`Service::l2_announce`]).
    ///
    /// ```
    /// use dataplane_core::{l2, DesiredState, Node, ObjectName, Service, ServicePort};
    /// let svc = Service::cluster_ip(ObjectName::new("default", "web"), "10.96.0.10".parse()?,
    ///     [ServicePort::tcp(80, 8080)])
    ///     .with_load_balancer_ip("172.18.0.200".parse()?)
    ///     .with_l2_announce();
    /// let state = DesiredState::new(Node::new("node-a", ["172.18.0.2".parse()?]))
    ///     .with_service(svc);
    /// assert_eq!(l2::announced_addresses(&state).len(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn with_l2_announce(mut self) -> Self {
        self.l2_announce = true;
        self
    }

    /// This service with `port` added (name the ports of a multi-port service).
    #[must_use]
    pub fn with_port(mut self, port: ServicePort) -> Self {
        self.ports.push(port);
        self
    }

    /// This service with `ports` added.
    #[must_use]
    pub fn with_ports(mut self, ports: impl IntoIterator<Item = ServicePort>) -> Self {
        self.ports.extend(ports);
        self
    }

    /// This service with `backend` added.
    #[must_use]
    pub fn with_backend(mut self, backend: Backend) -> Self {
        self.backends.push(backend);
        self
    }

    /// This service with `backends` added.
    #[must_use]
    pub fn with_backends(mut self, backends: impl IntoIterator<Item = Backend>) -> Self {
        self.backends.extend(backends);
        self
    }

    /// This service with `externalTrafficPolicy: policy`.
    #[must_use]
    pub fn with_external_traffic_policy(mut self, policy: TrafficPolicy) -> Self {
        self.external_traffic_policy = policy;
        self
    }

    /// This service with `internalTrafficPolicy: policy`.
    #[must_use]
    pub fn with_internal_traffic_policy(mut self, policy: TrafficPolicy) -> Self {
        self.internal_traffic_policy = policy;
        self
    }

    /// This service with `affinity` ([`SessionAffinity::client_ip`] for Kubernetes'
    /// default timeout).
    #[must_use]
    pub fn with_session_affinity(mut self, affinity: SessionAffinity) -> Self {
        self.session_affinity = affinity;
        self
    }

    /// This service with backends picked by `selection`.
    #[must_use]
    pub fn with_backend_selection(mut self, selection: BackendSelection) -> Self {
        self.backend_selection = selection;
        self
    }

    /// This service with its own external mode, instead of the node's.
    #[must_use]
    pub fn with_external_mode(mut self, mode: ExternalMode) -> Self {
        self.external_mode = Some(mode);
        self
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

impl ServicePort {
    /// An unnamed `protocol` port `port` forwarded to `target_port` on the backends, without a
    /// NodePort.
    pub fn new(protocol: Protocol, port: u16, target_port: u16) -> Self {
        Self {
            name: String::new(),
            protocol,
            port,
            target_port,
            node_port: None,
        }
    }

    /// An unnamed TCP port `port` forwarded to `target_port`.
    ///
    /// ```
    /// use dataplane_core::{Protocol, ServicePort};
    /// let http = ServicePort::tcp(80, 8080).named("http").with_node_port(30080);
    /// assert_eq!(
    ///     (http.protocol, http.port, http.target_port, http.node_port),
    ///     (Protocol::Tcp, 80, 8080, Some(30080))
    /// );
    /// ```
    pub fn tcp(port: u16, target_port: u16) -> Self {
        Self::new(Protocol::Tcp, port, target_port)
    }

    /// An unnamed UDP port `port` forwarded to `target_port`.
    pub fn udp(port: u16, target_port: u16) -> Self {
        Self::new(Protocol::Udp, port, target_port)
    }

    /// An unnamed SCTP port `port` forwarded to `target_port`.
    pub fn sctp(port: u16, target_port: u16) -> Self {
        Self::new(Protocol::Sctp, port, target_port)
    }

    /// This port named `name` (every port of a multi-port service needs one).
    #[must_use]
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// This port with NodePort `node_port` on the node's addresses.
    #[must_use]
    pub fn with_node_port(mut self, node_port: u16) -> Self {
        self.node_port = Some(node_port);
        self
    }
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
    /// Shared ([`ThinStr`], 8 bytes): a node name repeats across every backend on that
    /// node, and a `String` each made it a large part of a big state (the scaling bench
    /// measures it). Build one per node and clone it (`Some(name.clone())`);
    /// `Some("node-a".into())` also works.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<ThinStr>,
    /// Topology zone (shared like [`Backend::node_name`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<ThinStr>,
    /// Relative weight for selection (1..=65535); Maglev honours it with more table slots,
    /// random selection with more backend slots.
    #[serde(default = "default_weight")]
    pub weight: u16,
    /// This backend's own target port, instead of the service port's
    /// [`ServicePort::target_port`] (`None`, the usual case). A named `targetPort` resolves
    /// per pod, so during a rolling update that moves the container port the endpoints of one
    /// service port listen on different numbers; kube-proxy DNATs each to the number its
    /// EndpointSlice gives. Only a service with exactly one port may carry it (validation
    /// rejects it otherwise): the number belongs to one service port, and a translation
    /// splits ports whose endpoints differ into services of their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
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
            port: None,
        }
    }

    /// This backend running on node `node_name` (node-local where it is [`Node::name`]).
    ///
    /// ```
    /// use dataplane_core::Backend;
    /// let b = Backend::new("10.244.1.5".parse()?).on_node("node-a").with_weight(3);
    /// assert_eq!((b.node_name.as_deref(), b.weight, b.ready), (Some("node-a"), 3, true));
    /// # Ok::<(), std::net::AddrParseError>(())
    /// ```
    #[must_use]
    pub fn on_node(mut self, node_name: impl Into<ThinStr>) -> Self {
        self.node_name = Some(node_name.into());
        self
    }

    /// This backend in topology zone `zone`.
    #[must_use]
    pub fn in_zone(mut self, zone: impl Into<ThinStr>) -> Self {
        self.zone = Some(zone.into());
        self
    }

    /// This backend with selection weight `weight` (1..=65535).
    #[must_use]
    pub fn with_weight(mut self, weight: u16) -> Self {
        self.weight = weight;
        self
    }

    /// This backend listening on its own target port `port` (see [`Backend::port`]).
    ///
    /// ```
    /// use dataplane_core::{Backend, ServicePort};
    /// let http = ServicePort::tcp(80, 8080).named("http");
    /// let moved = Backend::new("10.244.1.5".parse()?).with_port(9090);
    /// let old = Backend::new("10.244.2.7".parse()?);
    /// assert_eq!((moved.target_port(&http), old.target_port(&http)), (9090, 8080));
    /// # Ok::<(), std::net::AddrParseError>(())
    /// ```
    #[must_use]
    pub fn with_port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// The port traffic to `service_port` is forwarded to on this backend: its own
    /// [`Backend::port`], else the service port's [`ServicePort::target_port`].
    pub fn target_port(&self, service_port: &ServicePort) -> u16 {
        self.port.unwrap_or(service_port.target_port)
    }

    /// The address traffic to `service_port` is forwarded to on this backend.
    pub fn target(&self, service_port: &ServicePort) -> std::net::SocketAddr {
        std::net::SocketAddr::new(self.ip, self.target_port(service_port))
    }

    /// This backend terminating: not ready, still serving (kube-proxy uses such backends
    /// only when a service has no ready one).
    #[must_use]
    pub fn terminating(mut self) -> Self {
        self.ready = false;
        self.serving = true;
        self.terminating = true;
        self
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

/// Kubernetes' default ClientIP affinity timeout, three hours.
pub const DEFAULT_AFFINITY_TIMEOUT_SECONDS: u32 = 10_800;

impl SessionAffinity {
    /// ClientIP affinity with Kubernetes' default timeout
    /// ([`DEFAULT_AFFINITY_TIMEOUT_SECONDS`]).
    pub fn client_ip() -> Self {
        SessionAffinity::ClientIp {
            timeout_seconds: DEFAULT_AFFINITY_TIMEOUT_SECONDS,
        }
    }
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
    /// Labels of the pod's namespace, for namespace selectors where the state has no
    /// [`Namespace`] object for it (with one, both must agree; see
    /// [`DesiredState::namespace_labels`]).
    #[serde(default)]
    pub namespace_labels: BTreeMap<String, String>,
    /// Named container ports, for policies that name ports.
    #[serde(default)]
    pub named_ports: Vec<NamedPort>,
}

impl Endpoint {
    /// The pod `name` on host-side interface `interface` with `ips`, without labels or named
    /// ports.
    ///
    /// ```
    /// use dataplane_core::{Endpoint, ObjectName};
    /// let pod = Endpoint::new(ObjectName::new("default", "web-0"), "veth1a2b", ["10.244.1.5".parse()?])
    ///     .with_label("app", "web");
    /// assert_eq!(pod.labels["app"], "web");
    /// # Ok::<(), std::net::AddrParseError>(())
    /// ```
    pub fn new(
        name: ObjectName,
        interface: impl Into<String>,
        ips: impl IntoIterator<Item = IpAddr>,
    ) -> Self {
        Self {
            name,
            interface: interface.into(),
            ips: ips.into_iter().collect(),
            labels: BTreeMap::new(),
            namespace_labels: BTreeMap::new(),
            named_ports: Vec::new(),
        }
    }

    /// This endpoint with pod label `key=value`.
    #[must_use]
    pub fn with_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// This endpoint with named container port `port`.
    #[must_use]
    pub fn with_named_port(mut self, port: NamedPort) -> Self {
        self.named_ports.push(port);
        self
    }
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

impl NamedPort {
    /// Container port `port` (`protocol`) named `name`.
    pub fn new(name: impl Into<String>, protocol: Protocol, port: u16) -> Self {
        Self {
            name: name.into(),
            protocol,
            port,
        }
    }
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

impl LabelSelector {
    /// This selector with `matchLabels` entry `key=value` added.
    #[must_use]
    pub fn with_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.match_labels.insert(key.into(), value.into());
        self
    }
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
    /// Peers (empty: all peers). In files also `from` (ingress) or `to` (egress), the
    /// Kubernetes names, so that a NetworkPolicy's rules can be pasted as they are.
    #[serde(default, alias = "from", alias = "to")]
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
