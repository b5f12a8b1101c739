//! Kubernetes objects (k8s-openapi types) to the dataplane's desired state, the way
//! kube-proxy reads them. Pure: no client, no clock.
//!
//! A [`Cluster`] is the store: hand it Services, `EndpointSlices`, `NetworkPolicies`, Pods,
//! Namespaces and Nodes ([`Object`]) as a watch or a manifest directory delivers them, then
//! call [`Cluster::translate`] for the node's [`dataplane_core::DesiredState`]. It keeps each
//! object's translation and re-translates only what changed since the last call;
//! [`Cluster::translate_changes`] returns just the `ChangeSet` since then, and
//! [`Cluster::state`] lends the whole state, so that a big state is never copied. A bad object
//! never fails a translation: it, or its bad part, is left out with a [`TranslationWarning`].
//!
//! ```
//! use dataplane_kube::{parse_manifests, Cluster, Settings};
//! let yaml = r#"
//! apiVersion: v1
//! kind: Node
//! metadata: { name: node-a, labels: { topology.kubernetes.io/zone: zone-a } }
//! spec: { podCIDRs: [10.244.1.0/24] }
//! status: { addresses: [{ type: InternalIP, address: 172.18.0.2 }] }
//! ---
//! apiVersion: v1
//! kind: Service
//! metadata: { name: web, namespace: default }
//! spec:
//!   clusterIP: 10.96.0.20
//!   clusterIPs: [10.96.0.20]
//!   ports: [{ name: http, port: 80, protocol: TCP, targetPort: http }]
//! ---
//! apiVersion: discovery.k8s.io/v1
//! kind: EndpointSlice
//! metadata:
//!   name: web-abcde
//!   namespace: default
//!   labels: { kubernetes.io/service-name: web }
//! addressType: IPv4
//! endpoints:
//!   - addresses: [10.244.1.5]
//!     conditions: { ready: true }
//!     nodeName: node-a
//! ports: [{ name: http, port: 8080, protocol: TCP }]
//! "#;
//! let manifests = parse_manifests(yaml, "example.yaml")?;
//! let node = dataplane_core::Node::new("node-a", []);
//! let mut cluster = Cluster::new(Settings::new("node-a", node));
//! for object in manifests.objects {
//!     cluster.apply(object)?;
//! }
//! // No pod here needs an interface: a resolver that finds none will do.
//! let no_interfaces = |_: &dataplane_core::ObjectName, _: &[std::net::IpAddr]| None;
//! let translation = cluster.translate(&no_interfaces)?;
//! let web = &translation.state.services[0];
//! assert_eq!((web.ports[0].port, web.ports[0].target_port), (80, 8080));
//! assert_eq!(web.backends[0].ip.to_string(), "10.244.1.5");
//! dataplane_core::validate(&translation.state)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![warn(missing_docs)]

pub use k8s_openapi;

pub mod anp;
pub mod calico;
mod cluster;
mod l2;
mod manifest;
mod materialized;
mod node;
mod pod;
mod policy;
mod service;
mod support;
mod tiers;
mod time;

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use dataplane_core::ObjectName;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

pub use cluster::{Changes, Cluster, Translation, TranslationWarning};
pub use l2::{L2Announcements, ANNOTATION_L2_ANNOUNCE_NODE};
pub use manifest::{
    parse_document, parse_manifests, parse_value, split_documents, ManifestDocument, ManifestError,
    Manifests,
};

/// The label that hands a Service to another proxy (kube-proxy skips Services carrying it:
/// `cmd/kube-proxy/app/server.go`, `apis.LabelServiceProxyName`).
pub const LABEL_SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
/// The label the EndpointSlice controller puts on headless Services' slices (and that
/// kube-proxy's watches exclude: `v1.IsHeadlessService`).
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
/// The label that ties an EndpointSlice to its Service (`discovery.LabelServiceName`).
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// The Node label that names its topology zone (`v1.LabelTopologyZone`).
pub const LABEL_TOPOLOGY_ZONE: &str = "topology.kubernetes.io/zone";
/// The EndpointSlice annotation with the time of the change that triggered the slice's last
/// update (`v1.EndpointsLastChangeTriggerTime`).
pub const ANNOTATION_LAST_CHANGE_TRIGGER_TIME: &str =
    "endpoints.kubernetes.io/last-change-trigger-time";
/// The taint the cluster autoscaler puts on a node it is about to delete.
pub const TAINT_TO_BE_DELETED: &str = "ToBeDeletedByClusterAutoscaler";

/// The kinds of Kubernetes objects the translation reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `v1` Service.
    Service,
    /// `discovery.k8s.io/v1` EndpointSlice.
    EndpointSlice,
    /// `networking.k8s.io/v1` NetworkPolicy.
    NetworkPolicy,
    /// `v1` Pod.
    Pod,
    /// `v1` Namespace.
    Namespace,
    /// `v1` Node.
    Node,
    /// `policy.networking.k8s.io/v1alpha1` AdminNetworkPolicy.
    AdminNetworkPolicy,
    /// `policy.networking.k8s.io/v1alpha1` BaselineAdminNetworkPolicy.
    BaselineAdminNetworkPolicy,
    /// `projectcalico.org/v3` HostEndpoint.
    HostEndpoint,
    /// `projectcalico.org/v3` GlobalNetworkPolicy (for host endpoints).
    GlobalNetworkPolicy,
    /// `projectcalico.org/v3` `FelixConfiguration` (its failsafe ports).
    FelixConfiguration,
}

impl Kind {
    /// Every kind, in the order above.
    pub const ALL: [Kind; 11] = [
        Kind::Service,
        Kind::EndpointSlice,
        Kind::NetworkPolicy,
        Kind::Pod,
        Kind::Namespace,
        Kind::Node,
        Kind::AdminNetworkPolicy,
        Kind::BaselineAdminNetworkPolicy,
        Kind::HostEndpoint,
        Kind::GlobalNetworkPolicy,
        Kind::FelixConfiguration,
    ];

    /// The kinds of cluster-wide and host policy (custom resources: a cluster may not have
    /// their definitions installed), in the order above.
    pub const POLICY_TIERS: [Kind; 5] = [
        Kind::AdminNetworkPolicy,
        Kind::BaselineAdminNetworkPolicy,
        Kind::HostEndpoint,
        Kind::GlobalNetworkPolicy,
        Kind::FelixConfiguration,
    ];

    /// The Kubernetes kind name (`"Service"`, `"EndpointSlice"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::NetworkPolicy => "NetworkPolicy",
            Kind::Pod => "Pod",
            Kind::Namespace => "Namespace",
            Kind::Node => "Node",
            Kind::AdminNetworkPolicy => "AdminNetworkPolicy",
            Kind::BaselineAdminNetworkPolicy => "BaselineAdminNetworkPolicy",
            Kind::HostEndpoint => "HostEndpoint",
            Kind::GlobalNetworkPolicy => "GlobalNetworkPolicy",
            Kind::FelixConfiguration => "FelixConfiguration",
        }
    }

    /// The `apiVersion` this crate reads the kind in.
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Service | Kind::Pod | Kind::Namespace | Kind::Node => "v1",
            Kind::EndpointSlice => "discovery.k8s.io/v1",
            Kind::NetworkPolicy => "networking.k8s.io/v1",
            Kind::AdminNetworkPolicy | Kind::BaselineAdminNetworkPolicy => {
                "policy.networking.k8s.io/v1alpha1"
            }
            Kind::HostEndpoint | Kind::GlobalNetworkPolicy | Kind::FelixConfiguration => {
                "projectcalico.org/v3"
            }
        }
    }

    /// The plural resource name (`services`, `adminnetworkpolicies`, ...), for an API path.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Service => "services",
            Kind::EndpointSlice => "endpointslices",
            Kind::NetworkPolicy => "networkpolicies",
            Kind::Pod => "pods",
            Kind::Namespace => "namespaces",
            Kind::Node => "nodes",
            Kind::AdminNetworkPolicy => "adminnetworkpolicies",
            Kind::BaselineAdminNetworkPolicy => "baselineadminnetworkpolicies",
            Kind::HostEndpoint => "hostendpoints",
            Kind::GlobalNetworkPolicy => "globalnetworkpolicies",
            Kind::FelixConfiguration => "felixconfigurations",
        }
    }

    /// Whether it is one of [`Kind::POLICY_TIERS`].
    pub fn is_policy_tier(self) -> bool {
        Kind::POLICY_TIERS.contains(&self)
    }

    /// Whether objects of this kind live in a namespace.
    pub fn is_namespaced(self) -> bool {
        matches!(
            self,
            Kind::Service | Kind::EndpointSlice | Kind::NetworkPolicy | Kind::Pod
        )
    }

    /// The kind named `name` (a Kubernetes `kind`), if it is one of ours.
    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which object: kind, namespace (for namespaced kinds) and name.
///
/// The names are shared (`Arc<str>`): a key is copied into every index that names its object
/// (the store's, a source's), and a copy is then a count, not two allocations (tens of
/// thousands of keys at 10k services).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// The object's kind.
    pub kind: Kind,
    /// Its namespace; `None` for Namespaces and Nodes.
    pub namespace: Option<Arc<str>>,
    /// Its name.
    pub name: Arc<str>,
}

impl ObjectKey {
    /// The key of the namespaced object `kind` `namespace/name`.
    pub fn namespaced(
        kind: Kind,
        namespace: impl Into<Arc<str>>,
        name: impl Into<Arc<str>>,
    ) -> Self {
        Self {
            kind,
            namespace: Some(namespace.into()),
            name: name.into(),
        }
    }

    /// The key of the cluster-scoped object `kind` `name`.
    pub fn cluster(kind: Kind, name: impl Into<Arc<str>>) -> Self {
        Self {
            kind,
            namespace: None,
            name: name.into(),
        }
    }

    /// The namespaced name (`namespace/name`), for namespaced kinds.
    pub fn object_name(&self) -> Option<ObjectName> {
        self.namespace
            .as_ref()
            .map(|ns| ObjectName::new(ns, &self.name))
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {}/{}", self.kind, ns, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

/// One Kubernetes object of a [`Kind`] the translation reads.
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    /// A Service.
    Service(Box<Service>),
    /// An EndpointSlice.
    EndpointSlice(Box<EndpointSlice>),
    /// A NetworkPolicy.
    NetworkPolicy(Box<NetworkPolicy>),
    /// A Pod.
    Pod(Box<Pod>),
    /// A Namespace.
    Namespace(Box<Namespace>),
    /// A Node.
    Node(Box<Node>),
    /// An AdminNetworkPolicy.
    AdminNetworkPolicy(Box<anp::AdminNetworkPolicy>),
    /// A BaselineAdminNetworkPolicy.
    BaselineAdminNetworkPolicy(Box<anp::BaselineAdminNetworkPolicy>),
    /// A Calico HostEndpoint.
    HostEndpoint(Box<calico::HostEndpoint>),
    /// A Calico GlobalNetworkPolicy.
    GlobalNetworkPolicy(Box<calico::GlobalNetworkPolicy>),
    /// A Calico `FelixConfiguration`.
    FelixConfiguration(Box<calico::FelixConfiguration>),
}

/// The namespace Kubernetes puts an object in when its manifest names none (`kubectl apply`
/// does the same).
pub(crate) const DEFAULT_NAMESPACE: &str = "default";

impl Object {
    /// The object's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::NetworkPolicy(_) => Kind::NetworkPolicy,
            Object::Pod(_) => Kind::Pod,
            Object::Namespace(_) => Kind::Namespace,
            Object::Node(_) => Kind::Node,
            Object::AdminNetworkPolicy(_) => Kind::AdminNetworkPolicy,
            Object::BaselineAdminNetworkPolicy(_) => Kind::BaselineAdminNetworkPolicy,
            Object::HostEndpoint(_) => Kind::HostEndpoint,
            Object::GlobalNetworkPolicy(_) => Kind::GlobalNetworkPolicy,
            Object::FelixConfiguration(_) => Kind::FelixConfiguration,
        }
    }

    /// The object's metadata.
    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Object::Service(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
            Object::NetworkPolicy(o) => &o.metadata,
            Object::Pod(o) => &o.metadata,
            Object::Namespace(o) => &o.metadata,
            Object::Node(o) => &o.metadata,
            Object::AdminNetworkPolicy(o) => &o.metadata,
            Object::BaselineAdminNetworkPolicy(o) => &o.metadata,
            Object::HostEndpoint(o) => &o.metadata,
            Object::GlobalNetworkPolicy(o) => &o.metadata,
            Object::FelixConfiguration(o) => &o.metadata,
        }
    }

    pub(crate) fn metadata_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Object::Service(o) => &mut o.metadata,
            Object::EndpointSlice(o) => &mut o.metadata,
            Object::NetworkPolicy(o) => &mut o.metadata,
            Object::Pod(o) => &mut o.metadata,
            Object::Namespace(o) => &mut o.metadata,
            Object::Node(o) => &mut o.metadata,
            Object::AdminNetworkPolicy(o) => &mut o.metadata,
            Object::BaselineAdminNetworkPolicy(o) => &mut o.metadata,
            Object::HostEndpoint(o) => &mut o.metadata,
            Object::GlobalNetworkPolicy(o) => &mut o.metadata,
            Object::FelixConfiguration(o) => &mut o.metadata,
        }
    }

    /// The object's key. A namespaced object without `metadata.namespace` is in `default`,
    /// as `kubectl apply` would put it; an object without `metadata.name` has no key.
    pub fn key(&self) -> Result<ObjectKey, TranslateError> {
        let kind = self.kind();
        let meta = self.metadata();
        let name = meta
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .ok_or(TranslateError::MissingName { kind })?;
        let namespace = kind.is_namespaced().then(|| {
            meta.namespace
                .clone()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned())
        });
        Ok(ObjectKey {
            kind,
            namespace: namespace.map(Arc::from),
            name: Arc::from(name),
        })
    }
}

macro_rules! object_from {
    ($($variant:ident: $ty:ty),*) => {$(
        impl From<$ty> for Object {
            fn from(o: $ty) -> Self {
                Object::$variant(Box::new(o))
            }
        }
    )*};
}
object_from!(
    Service: Service,
    EndpointSlice: EndpointSlice,
    NetworkPolicy: NetworkPolicy,
    Pod: Pod,
    Namespace: Namespace,
    Node: Node,
    AdminNetworkPolicy: anp::AdminNetworkPolicy,
    BaselineAdminNetworkPolicy: anp::BaselineAdminNetworkPolicy,
    HostEndpoint: calico::HostEndpoint,
    GlobalNetworkPolicy: calico::GlobalNetworkPolicy,
    FelixConfiguration: calico::FelixConfiguration
);

/// Why [`Cluster`] could not take an object or produce any state at all.
///
/// A bad object never fails a translation: it is left out with a [`TranslationWarning`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TranslateError {
    /// The object has no `metadata.name`, so it cannot be stored.
    #[error("{kind} object has no metadata.name")]
    MissingName {
        /// The object's kind.
        kind: Kind,
    },
    /// [`Cluster::replace`] was given an object of another kind.
    #[error("replace of {expected} objects was given {found} {name}")]
    WrongKind {
        /// The kind being replaced.
        expected: Kind,
        /// The object's kind.
        found: Kind,
        /// The object's name.
        name: String,
    },
    /// The local Node object (named [`Settings::node_name`]) is not in the store.
    #[error("node {name} not found: the local Node object is not in the store")]
    NodeNotFound {
        /// The node name looked for.
        name: String,
    },
    /// A cluster-wide or host policy object (or a `FelixConfiguration`'s failsafe ports) has
    /// a field the model cannot hold, or a value it refuses: the object is not taken (a
    /// rule left out could open what it should close). The store keeps its previous version.
    #[error("{object}: {field}: {message}")]
    Rejected {
        /// The object.
        object: ObjectKey,
        /// The field, as a path (`spec.ingress[0].from[1].namespaces.sameLabels`).
        field: String,
        /// Why.
        message: String,
    },
    /// The local Node cannot make a valid node for the state (no usable address, or the
    /// settings' template conflicts with it).
    #[error("node {name}: {field}: {message}")]
    InvalidNode {
        /// The node name.
        name: String,
        /// The field at fault (of the Node object or of the settings' template).
        field: String,
        /// What is wrong.
        message: String,
    },
}

/// What the translation needs to know besides the objects.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This node's name (`--hostname-override`): the Node object read, the pods that are
    /// local endpoints, the backends that are node-local.
    pub node_name: String,
    /// The node template: cluster and service CIDRs, NodePort range, interfaces, masquerade,
    /// MTU and external mode. Its name, addresses and pod CIDRs are replaced by the Node
    /// object's (its addresses are used only when the Node object lists none).
    pub node: dataplane_core::Node,
    /// The `service.kubernetes.io/service-proxy-name` this dataplane answers to: `None`
    /// serves the Services without that label (kube-proxy), `Some(name)` only those labelled
    /// exactly `name`.
    pub proxy_name: Option<String>,
}

impl Settings {
    /// Settings for node `node_name` with template `node`, answering to no proxy name.
    pub fn new(node_name: impl Into<String>, node: dataplane_core::Node) -> Self {
        Self {
            node_name: node_name.into(),
            node,
            proxy_name: None,
        }
    }

    /// These settings answering to `service.kubernetes.io/service-proxy-name: name`.
    #[must_use]
    pub fn with_proxy_name(mut self, name: impl Into<String>) -> Self {
        self.proxy_name = Some(name.into());
        self
    }
}

/// Finds the host-side interface of a local pod (its veth), given the pod and its
/// addresses. The agent looks up the route to the pod's address (Calico-style /32 host
/// routes).
pub trait InterfaceResolver {
    /// The interface of `pod` at `ips`, or `None` when there is none (yet).
    fn interface(&self, pod: &ObjectName, ips: &[IpAddr]) -> Option<String>;
}

impl<F> InterfaceResolver for F
where
    F: Fn(&ObjectName, &[IpAddr]) -> Option<String>,
{
    fn interface(&self, pod: &ObjectName, ips: &[IpAddr]) -> Option<String> {
        self(pod, ips)
    }
}

/// The label selector of the Service watch: kube-proxy's (`cmd/kube-proxy/app/server.go`:
/// `!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless`), or, with a
/// proxy name, the Services labelled with exactly that name (as Cilium's
/// `--k8s-service-proxy-name` does).
///
/// ```
/// assert_eq!(
///     dataplane_kube::service_label_selector(None),
///     "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless"
/// );
/// assert_eq!(
///     dataplane_kube::service_label_selector(Some("dp")),
///     "service.kubernetes.io/service-proxy-name=dp,!service.kubernetes.io/headless"
/// );
/// ```
pub fn service_label_selector(proxy_name: Option<&str>) -> String {
    match proxy_name {
        None => format!("!{LABEL_SERVICE_PROXY_NAME},!{LABEL_HEADLESS}"),
        Some(name) => format!("{LABEL_SERVICE_PROXY_NAME}={name},!{LABEL_HEADLESS}"),
    }
}

/// The label selector of the EndpointSlice watch: the Service one, as kube-proxy uses one
/// informer factory (one selector) for both; the EndpointSlice controller copies a Service's
/// labels onto its slices and marks headless Services' slices.
pub fn endpoint_slice_label_selector(proxy_name: Option<&str>) -> String {
    service_label_selector(proxy_name)
}

/// An IP address as Kubernetes reads one (`k8s.io/utils/net.ParseIPSloppy`, which kube-proxy
/// and the API server's validation of older objects use): surrounding white space ignored,
/// and IPv4 octets with leading zeros (`010.000.000.001`) accepted and read as decimal, as Go
/// did before 1.17 (objects stored then still have them).
pub(crate) fn parse_ip_sloppy(s: &str) -> Result<std::net::IpAddr, std::net::AddrParseError> {
    let s = s.trim();
    match s.parse::<std::net::IpAddr>() {
        Ok(ip) => Ok(ip),
        Err(e) => {
            let octets: Vec<&str> = s.split('.').collect();
            let valid = octets.len() == 4
                && octets.iter().all(|o| {
                    !o.is_empty() && o.len() <= 3 && o.bytes().all(|b| b.is_ascii_digit())
                });
            if !valid {
                return Err(e);
            }
            let mut out = [0u8; 4];
            for (slot, o) in out.iter_mut().zip(&octets) {
                *slot = o.parse::<u8>().map_err(|_| e.clone())?;
            }
            Ok(std::net::IpAddr::from(out))
        }
    }
}

/// Whether a Service with `labels` is served by a dataplane answering to `proxy_name`
/// (the selectors above, evaluated here for sources that cannot filter, like a manifest
/// directory).
pub(crate) fn service_selected(
    labels: Option<&std::collections::BTreeMap<String, String>>,
    proxy_name: Option<&str>,
) -> bool {
    let get = |k: &str| labels.and_then(|l| l.get(k));
    if get(LABEL_HEADLESS).is_some() {
        return false;
    }
    match proxy_name {
        None => get(LABEL_SERVICE_PROXY_NAME).is_none(),
        Some(name) => get(LABEL_SERVICE_PROXY_NAME).map(String::as_str) == Some(name),
    }
}

/// When the change that led to `slice`'s last update happened: its
/// `endpoints.kubernetes.io/last-change-trigger-time` annotation (RFC 3339), the start of
/// kube-proxy's `network_programming_duration_seconds`. `None` without a parsable one.
///
/// ```
/// use dataplane_kube::k8s_openapi::api::discovery::v1::EndpointSlice;
/// let mut slice = EndpointSlice::default();
/// slice.metadata.annotations = Some([(
///     "endpoints.kubernetes.io/last-change-trigger-time".to_owned(),
///     "2026-12-06T11:00:00Z".to_owned(),
/// )].into());
/// let t = dataplane_kube::last_change_trigger_time(&slice).unwrap();
/// assert_eq!(t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs(), 1_796_554_800);
/// ```
pub fn last_change_trigger_time(slice: &EndpointSlice) -> Option<std::time::SystemTime> {
    let value = slice
        .metadata
        .annotations
        .as_ref()?
        .get(ANNOTATION_LAST_CHANGE_TRIGGER_TIME)?;
    time::parse_rfc3339(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_name_and_parse() {
        for kind in Kind::ALL {
            assert_eq!(Kind::from_name(kind.name()), Some(kind));
            assert_eq!(kind.to_string(), kind.name());
        }
        assert_eq!(Kind::from_name("Deployment"), None);
    }

    #[test]
    fn keys_display() {
        assert_eq!(
            ObjectKey::namespaced(Kind::Service, "default", "web").to_string(),
            "Service default/web"
        );
        assert_eq!(
            ObjectKey::cluster(Kind::Node, "node-0").to_string(),
            "Node node-0"
        );
    }

    #[test]
    fn key_defaults_namespace_and_needs_a_name() {
        let mut svc = Service::default();
        assert_eq!(
            Object::from(svc.clone()).key(),
            Err(TranslateError::MissingName {
                kind: Kind::Service
            })
        );
        svc.metadata.name = Some("web".into());
        assert_eq!(
            Object::from(svc).key().unwrap(),
            ObjectKey::namespaced(Kind::Service, "default", "web")
        );
        let mut node = Node::default();
        node.metadata.name = Some("n".into());
        node.metadata.namespace = Some("ignored".into());
        assert_eq!(
            Object::from(node).key().unwrap(),
            ObjectKey::cluster(Kind::Node, "n")
        );
    }

    #[test]
    fn selection_follows_the_selectors() {
        let labels = |pairs: &[(&str, &str)]| -> std::collections::BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        assert!(service_selected(None, None));
        assert!(!service_selected(
            Some(&labels(&[(LABEL_HEADLESS, "")])),
            None
        ));
        let other = labels(&[(LABEL_SERVICE_PROXY_NAME, "other")]);
        assert!(!service_selected(Some(&other), None));
        assert!(!service_selected(Some(&other), Some("dp")));
        assert!(service_selected(
            Some(&labels(&[(LABEL_SERVICE_PROXY_NAME, "dp")])),
            Some("dp")
        ));
        assert!(!service_selected(None, Some("dp")));
    }

    #[test]
    fn trigger_time_absent_or_bad_is_none() {
        let mut slice = EndpointSlice::default();
        assert_eq!(last_change_trigger_time(&slice), None);
        slice.metadata.annotations = Some(
            [(
                ANNOTATION_LAST_CHANGE_TRIGGER_TIME.to_owned(),
                "yesterday".to_owned(),
            )]
            .into(),
        );
        assert_eq!(last_change_trigger_time(&slice), None);
    }
}

/// The README's example is compiled and run as a doc-test so that it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
