//! Validation of a [`DesiredState`]: semantic checks that the file format's types cannot express.
//!
//! Every error names the object (`service default/web`, `node`, `endpoint default/pod-a`,
//! `policy default/deny`, `namespace team-a`, `pod y/b`, `cluster policy deny-all`, `baseline policy`,
//! `peer node node-b`, `host endpoint node-a-eth0`, `host policy block`, `failsafe ports`) and the field (`ports[1].nodePort`) so that a person can find it.
//! Backends validate before they touch the kernel: a rejected state changes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use ipnetwork::IpNetwork;

use crate::diff::ChangeSet;
use crate::model::{
    DesiredState, Endpoint, LabelSelector, NamedPort, Namespace, Node, ObjectName, PeerPod, Policy,
    PolicyRule, PortRef, Protocol, SelectorOperator, Service, SessionAffinity, TrafficPolicy,
    API_VERSION, KIND,
};
use crate::reference::IpFamily;
use serde::{Deserialize, Serialize};

mod claims;
mod tiers;

/// Longest ClientIP affinity timeout Kubernetes accepts (one day).
pub const MAX_AFFINITY_TIMEOUT_SECONDS: u32 = 86_400;

/// A semantic error in a desired state. Each variant names the object and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValidationError {
    /// `apiVersion` is not one this crate reads.
    #[error("apiVersion: unsupported version {found:?}, expected {expected:?}")]
    ApiVersion {
        /// The version found.
        found: String,
        /// The version expected.
        expected: &'static str,
    },
    /// `kind` is not `DesiredState`.
    #[error("kind: expected {expected:?}, found {found:?}")]
    Kind {
        /// The kind found.
        found: String,
        /// The kind expected.
        expected: &'static str,
    },
    /// A required field is empty.
    #[error("{object}: {field}: must not be empty")]
    Empty {
        /// The object.
        object: String,
        /// The field.
        field: String,
    },
    /// A name is not a valid Kubernetes name (DNS-1123 label / subdomain).
    #[error("{object}: {field}: {value:?} is not a valid name (lower-case alphanumerics and '-', at most {max} characters)")]
    InvalidName {
        /// The object.
        object: String,
        /// The field.
        field: String,
        /// The value.
        value: String,
        /// Maximum length.
        max: usize,
    },
    /// Two objects of one kind have the same name.
    #[error("{object}: duplicate name")]
    DuplicateName {
        /// The object.
        object: String,
    },
    /// A port is 0.
    #[error("{object}: {field}: port must not be 0")]
    PortZero {
        /// The object.
        object: String,
        /// The field.
        field: String,
    },
    /// A number outside its allowed range.
    #[error("{object}: {field}: {value} is out of range {min}..={max}")]
    OutOfRange {
        /// The object.
        object: String,
        /// The field.
        field: String,
        /// The value.
        value: u64,
        /// Smallest allowed value.
        min: u64,
        /// Largest allowed value.
        max: u64,
    },
    /// A NodePort outside the node's NodePort range.
    #[error("{object}: {field}: {port} is outside the node's NodePort range {start}-{end}")]
    NodePortOutOfRange {
        /// The object.
        object: String,
        /// The field.
        field: String,
        /// The port.
        port: u16,
        /// Range start.
        start: u16,
        /// Range end.
        end: u16,
    },
    /// A CIDR with host bits set.
    #[error("{object}: {field}: {value} has host bits set (did you mean {canonical}?)")]
    NonCanonicalCidr {
        /// The object.
        object: String,
        /// The field.
        field: String,
        /// The CIDR given.
        value: IpNetwork,
        /// The network it denotes.
        canonical: IpNetwork,
    },
    /// An address that cannot be used here (unspecified, multicast, broadcast, loopback).
    #[error("{object}: {field}: {address} cannot be used here ({reason})")]
    InvalidAddress {
        /// The object.
        object: String,
        /// The field.
        field: String,
        /// The address.
        address: IpAddr,
        /// Why.
        reason: &'static str,
    },
    /// The same frontend (address, protocol, port) is claimed twice.
    #[error("{object}: {field}: frontend {frontend} is already used by {other}")]
    DuplicateFrontend {
        /// The object.
        object: String,
        /// The field.
        field: String,
        /// The frontend, e.g. `TCP 10.96.0.10:80`.
        frontend: String,
        /// The other user, e.g. `service default/api ports[0]`.
        other: String,
    },
    /// A value repeated inside one object.
    #[error("{object}: {field}: {value} appears more than once")]
    Duplicate {
        /// The object.
        object: String,
        /// The field.
        field: String,
        /// The repeated value.
        value: String,
    },
    /// A backend's family matches none of the service's frontends.
    #[error("{object}: {field}: backend {backend} is {backend_family:?} but the service has no {backend_family:?} frontend")]
    BackendFamilyMismatch {
        /// The object.
        object: String,
        /// The field.
        field: String,
        /// The backend address.
        backend: IpAddr,
        /// Its family.
        backend_family: IpFamily,
    },
    /// A backend carries its own target port ([`crate::Backend::port`]) in a service with
    /// more than one port: the number belongs to one service port.
    #[error("{object}: {field}: backend {backend} has its own target port {port}, but the service has {ports} ports (a backend's own port needs a single-port service)")]
    BackendPortWithSeveralPorts {
        /// The object.
        object: String,
        /// The field (`backends[1].port`).
        field: String,
        /// The backend address.
        backend: IpAddr,
        /// Its port.
        port: u16,
        /// How many ports the service has.
        ports: usize,
    },
    /// More than one ClusterIP of one family.
    #[error("{object}: {field}: more than one {family:?} ClusterIP")]
    TooManyClusterIps {
        /// The object.
        object: String,
        /// The field.
        field: String,
        /// The family.
        family: IpFamily,
    },
    /// A service with several ports leaves a port unnamed.
    #[error("{object}: {field}: every port of a multi-port service needs a name")]
    UnnamedPort {
        /// The object.
        object: String,
        /// The field.
        field: String,
    },
    /// A setting that only makes sense together with another.
    #[error("{object}: {field}: {reason}")]
    Inconsistent {
        /// The object.
        object: String,
        /// The field.
        field: String,
        /// What is inconsistent.
        reason: &'static str,
    },
    /// An `except` range not inside its CIDR.
    #[error("{object}: {field}: {except} is not inside {cidr}")]
    ExceptOutsideCidr {
        /// The object.
        object: String,
        /// The field.
        field: String,
        /// The except entry.
        except: IpNetwork,
        /// The block's CIDR.
        cidr: IpNetwork,
    },
}

impl ValidationError {
    /// The object the error is about (`service default/web`, `node`, ...), if any.
    pub fn object(&self) -> Option<&str> {
        use ValidationError as V;
        match self {
            V::ApiVersion { .. } | V::Kind { .. } => None,
            V::Empty { object, .. }
            | V::InvalidName { object, .. }
            | V::DuplicateName { object }
            | V::PortZero { object, .. }
            | V::OutOfRange { object, .. }
            | V::NodePortOutOfRange { object, .. }
            | V::NonCanonicalCidr { object, .. }
            | V::InvalidAddress { object, .. }
            | V::DuplicateFrontend { object, .. }
            | V::Duplicate { object, .. }
            | V::BackendFamilyMismatch { object, .. }
            | V::BackendPortWithSeveralPorts { object, .. }
            | V::TooManyClusterIps { object, .. }
            | V::UnnamedPort { object, .. }
            | V::Inconsistent { object, .. }
            | V::ExceptOutsideCidr { object, .. } => Some(object),
        }
    }
}

/// Checks `state`; the first problem found is returned.
pub fn validate(state: &DesiredState) -> Result<(), ValidationError> {
    validate_claims(state).map(|_| ())
}

/// Frontends (address, protocol, port) and endpoint addresses, each with the claimant as error
/// messages name it (`service default/web ports[0]`, `endpoint default/web-0`).
type Claims = (FrontendClaims, BTreeMap<IpAddr, String>);

/// Frontends with their claimant; the claims of one service port share one string (a
/// `String` per claim made them most of a `Validator`'s memory at scale).
type FrontendClaims = BTreeMap<(IpAddr, Protocol, u16), Arc<str>>;

/// Whether two networks share an address.
fn overlaps(a: &IpNetwork, b: &IpNetwork) -> bool {
    IpFamily::of(&a.ip()) == IpFamily::of(&b.ip())
        && (a.contains(b.network()) || b.contains(a.network()))
}

/// [`validate`], keeping what each object claims.
fn validate_claims(state: &DesiredState) -> Result<Claims, ValidationError> {
    if state.api_version != API_VERSION {
        return Err(ValidationError::ApiVersion {
            found: state.api_version.clone(),
            expected: API_VERSION,
        });
    }
    if state.kind != KIND {
        return Err(ValidationError::Kind {
            found: state.kind.clone(),
            expected: KIND,
        });
    }
    validate_node(&state.node)?;
    let mut frontends = BTreeMap::new();
    let mut names = BTreeSet::new();
    for service in &state.services {
        let object = format!("service {}", service.name);
        if !names.insert(&service.name) {
            return Err(ValidationError::DuplicateName { object });
        }
        validate_service(&state.node, service, &object, &mut frontends)?;
    }
    let mut names = BTreeSet::new();
    let mut ips = BTreeMap::new();
    for endpoint in &state.endpoints {
        let object = format!("endpoint {}", endpoint.name);
        if !names.insert(&endpoint.name) {
            return Err(ValidationError::DuplicateName { object });
        }
        validate_endpoint(endpoint, &object, &mut ips)?;
    }
    // A pod is either a local endpoint or a peer, never both: one name space for the two.
    for pod in &state.pods {
        let object = format!("pod {}", pod.name);
        if !names.insert(&pod.name) {
            return Err(ValidationError::DuplicateName { object });
        }
        validate_pod(pod, &object, &mut ips)?;
    }
    let mut namespaces = BTreeSet::new();
    for namespace in &state.namespaces {
        let object = format!("namespace {}", namespace.name);
        if !namespaces.insert(&namespace.name) {
            return Err(ValidationError::DuplicateName { object });
        }
        validate_namespace(namespace, &object)?;
    }
    let mut names = BTreeSet::new();
    for policy in &state.policies {
        let object = format!("policy {}", policy.name);
        if !names.insert(&policy.name) {
            return Err(ValidationError::DuplicateName { object });
        }
        validate_policy(policy, &object)?;
    }
    tiers::validate_tiers(state)?;
    Ok((frontends, ips))
}

fn err_empty(object: &str, field: &str) -> ValidationError {
    ValidationError::Empty {
        object: object.to_owned(),
        field: field.to_owned(),
    }
}

/// DNS-1123 label (`max` 63) or subdomain (`max` 253, dots allowed).
fn check_name(object: &str, field: &str, value: &str, max: usize) -> Result<(), ValidationError> {
    if value.is_empty() {
        return Err(err_empty(object, field));
    }
    let ok_char = |c: char| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (max > 63 && c == '.')
    };
    let edges_ok = value.starts_with(|c: char| c.is_ascii_alphanumeric())
        && value.ends_with(|c: char| c.is_ascii_alphanumeric());
    if value.len() > max || !value.chars().all(ok_char) || !edges_ok {
        return Err(ValidationError::InvalidName {
            object: object.to_owned(),
            field: field.to_owned(),
            value: value.to_owned(),
            max,
        });
    }
    Ok(())
}

fn check_cidr(object: &str, field: &str, cidr: IpNetwork) -> Result<(), ValidationError> {
    let canonical = IpNetwork::new(cidr.network(), cidr.prefix()).unwrap_or(cidr);
    if canonical.ip() != cidr.ip() {
        return Err(ValidationError::NonCanonicalCidr {
            object: object.to_owned(),
            field: field.to_owned(),
            value: cidr,
            canonical,
        });
    }
    Ok(())
}

fn check_cidrs(object: &str, field: &str, cidrs: &[IpNetwork]) -> Result<(), ValidationError> {
    for (i, c) in cidrs.iter().enumerate() {
        check_cidr(object, &format!("{field}[{i}]"), *c)?;
    }
    Ok(())
}

fn check_unicast(object: &str, field: &str, ip: IpAddr) -> Result<(), ValidationError> {
    check_unicast_with(object, || field.to_owned(), ip)
}

/// [`check_unicast`] that names the field only when it is wrong (the hot loops of a 10k
/// service state would otherwise format a field name per backend).
fn check_unicast_with(
    object: &str,
    field: impl FnOnce() -> String,
    ip: IpAddr,
) -> Result<(), ValidationError> {
    let reason = if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if ip.is_loopback() {
        Some("loopback")
    } else if matches!(ip, IpAddr::V4(v4) if v4.is_broadcast()) {
        Some("broadcast")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(ValidationError::InvalidAddress {
            object: object.to_owned(),
            field: field(),
            address: ip,
            reason,
        }),
        None => Ok(()),
    }
}

fn check_port(object: &str, field: &str, port: u16) -> Result<(), ValidationError> {
    check_port_with(object, || field.to_owned(), port)
}

/// [`check_port`] that names the field only when it is wrong.
fn check_port_with(
    object: &str,
    field: impl FnOnce() -> String,
    port: u16,
) -> Result<(), ValidationError> {
    if port == 0 {
        return Err(ValidationError::PortZero {
            object: object.to_owned(),
            field: field(),
        });
    }
    Ok(())
}

fn validate_node(node: &Node) -> Result<(), ValidationError> {
    let object = "node";
    check_name(object, "name", &node.name, 253)?;
    if node.addresses.is_empty() {
        return Err(err_empty(object, "addresses"));
    }
    let mut seen = BTreeSet::new();
    for (i, a) in node.addresses.iter().enumerate() {
        let field = format!("addresses[{i}]");
        check_unicast(object, &field, *a)?;
        if !seen.insert(a) {
            return Err(ValidationError::Duplicate {
                object: object.to_owned(),
                field,
                value: a.to_string(),
            });
        }
    }
    check_cidrs(object, "podCIDRs", &node.pod_cidrs)?;
    check_cidrs(object, "clusterCIDRs", &node.cluster_cidrs)?;
    check_cidrs(object, "serviceCIDRs", &node.service_cidrs)?;
    check_cidrs(
        object,
        "masquerade.nonMasqueradeCIDRs",
        &node.masquerade.non_masquerade_cidrs,
    )?;
    // Addresses in the service CIDRs that no service holds are dropped: a range that reaches
    // into the pod network or over a node address would cut that traffic off.
    for (i, cidr) in node.service_cidrs.iter().enumerate() {
        let reason = if node
            .cluster_cidrs
            .iter()
            .chain(&node.pod_cidrs)
            .any(|c| overlaps(c, cidr))
        {
            Some("overlaps the pod network (clusterCIDRs or podCIDRs)")
        } else if node.addresses.iter().any(|a| cidr.contains(*a)) {
            Some("holds a node address")
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(ValidationError::Inconsistent {
                object: object.to_owned(),
                field: format!("serviceCIDRs[{i}]"),
                reason,
            });
        }
    }
    let r = node.node_port_range;
    check_port(object, "nodePortRange.start", r.start)?;
    if r.start > r.end {
        return Err(ValidationError::Inconsistent {
            object: object.to_owned(),
            field: "nodePortRange".to_owned(),
            reason: "start is greater than end",
        });
    }
    if node.interfaces.uplink.is_empty() {
        return Err(err_empty(object, "interfaces.uplink"));
    }
    check_ifname(object, "interfaces.uplink", &node.interfaces.uplink)?;
    if !(576..=65535).contains(&node.mtu) {
        return Err(ValidationError::OutOfRange {
            object: object.to_owned(),
            field: "mtu".to_owned(),
            value: u64::from(node.mtu),
            min: 576,
            max: 65535,
        });
    }
    Ok(())
}

fn check_ifname(object: &str, field: &str, name: &str) -> Result<(), ValidationError> {
    // IFNAMSIZ is 16 including the terminating NUL.
    if name.is_empty() {
        return Err(err_empty(object, field));
    }
    if name.len() > 15 || name.contains(['/', ' ', '\0']) || name == "." || name == ".." {
        return Err(ValidationError::InvalidName {
            object: object.to_owned(),
            field: field.to_owned(),
            value: name.to_owned(),
            max: 15,
        });
    }
    Ok(())
}

fn validate_service(
    node: &Node,
    s: &Service,
    object: &str,
    frontends: &mut FrontendClaims,
) -> Result<(), ValidationError> {
    check_name(object, "namespace", &s.name.namespace, 63)?;
    check_name(object, "name", &s.name.name, 63)?;
    if s.ports.is_empty() {
        return Err(err_empty(object, "ports"));
    }
    let mut families = validate_frontend_ips(node, s, object)?;
    let mut port_names = BTreeSet::new();
    let mut port_keys = BTreeSet::new();
    for (i, p) in s.ports.iter().enumerate() {
        let field = |f: &str| format!("ports[{i}].{f}");
        check_port_with(object, || field("port"), p.port)?;
        check_port_with(object, || field("targetPort"), p.target_port)?;
        if s.ports.len() > 1 && p.name.is_empty() {
            return Err(ValidationError::UnnamedPort {
                object: object.to_owned(),
                field: field("name"),
            });
        }
        if !p.name.is_empty() {
            check_name(object, &field("name"), &p.name, 63)?;
            if !port_names.insert(&p.name) {
                return Err(ValidationError::Duplicate {
                    object: object.to_owned(),
                    field: field("name"),
                    value: p.name.clone(),
                });
            }
        }
        if !port_keys.insert((p.protocol, p.port)) {
            return Err(ValidationError::Duplicate {
                object: object.to_owned(),
                field: field("port"),
                value: format!("{} {}", p.protocol, p.port),
            });
        }
        let me: Arc<str> = format!("{object} ports[{i}]").into();
        let mut claim = |ip: IpAddr, port: u16, f: &str| -> Result<(), ValidationError> {
            if let Some(other) = frontends.insert((ip, p.protocol, port), Arc::clone(&me)) {
                if other != me {
                    return Err(ValidationError::DuplicateFrontend {
                        object: object.to_owned(),
                        field: field(f),
                        frontend: format!("{} {}", p.protocol, std::net::SocketAddr::new(ip, port)),
                        other: other.to_string(),
                    });
                }
            }
            Ok(())
        };
        for ip in s
            .cluster_ips
            .iter()
            .chain(&s.external_ips)
            .chain(&s.load_balancer_ips)
        {
            claim(*ip, p.port, "port")?;
        }
        if let Some(np) = p.node_port {
            check_port_with(object, || field("nodePort"), np)?;
            let r = node.node_port_range;
            if !r.contains(np) {
                return Err(ValidationError::NodePortOutOfRange {
                    object: object.to_owned(),
                    field: field("nodePort"),
                    port: np,
                    start: r.start,
                    end: r.end,
                });
            }
            for a in &node.addresses {
                claim(*a, np, "nodePort")?;
                families.insert(IpFamily::of(a));
            }
        }
    }
    validate_service_options(s, object)?;
    if let Some(hc) = s.health_check_node_port {
        let r = node.node_port_range;
        if !r.contains(hc) {
            return Err(ValidationError::NodePortOutOfRange {
                object: object.to_owned(),
                field: "healthCheckNodePort".to_owned(),
                port: hc,
                start: r.start,
                end: r.end,
            });
        }
        // The agent serves health checks over TCP on every node address.
        let me: Arc<str> = format!("{object} healthCheckNodePort").into();
        for a in &node.addresses {
            if let Some(other) = frontends.insert((*a, Protocol::Tcp, hc), Arc::clone(&me)) {
                return Err(ValidationError::DuplicateFrontend {
                    object: object.to_owned(),
                    field: "healthCheckNodePort".to_owned(),
                    frontend: format!("TCP {}", std::net::SocketAddr::new(*a, hc)),
                    other: other.to_string(),
                });
            }
        }
    }
    validate_backends(s, object, &families)
}

/// Warnings about an accepted `state` (every service, in state order): ClusterIPs outside
/// `node.serviceCIDRs` of their family. Kubernetes' `ServiceCIDR` API adds service ranges at run
/// time and kube-proxy programs every ClusterIP it is given, so such a ClusterIP is served;
/// the service CIDRs only scope which unallocated addresses are dropped.
pub fn warnings(state: &DesiredState) -> Vec<Warning> {
    state
        .services
        .iter()
        .flat_map(|s| service_warnings(&state.node, s))
        .collect()
}

/// [`warnings`] of one service on `node` (for incremental applies).
pub fn service_warnings(node: &Node, s: &Service) -> Vec<Warning> {
    let mut found = Vec::new();
    for (i, ip) in s.cluster_ips.iter().enumerate() {
        let family = IpFamily::of(ip);
        let mut in_family = node
            .service_cidrs
            .iter()
            .filter(|c| IpFamily::of(&c.ip()) == family)
            .peekable();
        if in_family.peek().is_some() && !in_family.any(|c| c.contains(*ip)) {
            found.push(Warning {
                object: format!("service {}", s.name),
                field: format!("clusterIPs[{i}]"),
                message: format!("{ip} is outside node.serviceCIDRs"),
            });
        }
    }
    found
}

fn validate_frontend_ips(
    node: &Node,
    s: &Service,
    object: &str,
) -> Result<BTreeSet<IpFamily>, ValidationError> {
    let mut families = BTreeSet::new();
    let mut cluster_families = BTreeSet::new();
    for (i, ip) in s.cluster_ips.iter().enumerate() {
        let field = || format!("clusterIPs[{i}]");
        check_unicast_with(object, field, *ip)?;
        // A ClusterIP outside serviceCIDRs is served (a warning), but one that is a node or
        // pod address would take that address's other traffic (unknown ports are rejected).
        let clash = if node.addresses.contains(ip) {
            Some("is a node address")
        } else if node
            .cluster_cidrs
            .iter()
            .chain(&node.pod_cidrs)
            .any(|c| c.contains(*ip))
        {
            Some("is inside the pod network (clusterCIDRs or podCIDRs)")
        } else {
            None
        };
        if let Some(reason) = clash {
            return Err(ValidationError::Inconsistent {
                object: object.to_owned(),
                field: field(),
                reason,
            });
        }
        let family = IpFamily::of(ip);
        if !cluster_families.insert(family) {
            return Err(ValidationError::TooManyClusterIps {
                object: object.to_owned(),
                field: field(),
                family,
            });
        }
        families.insert(family);
    }
    for (list, name) in [
        (&s.external_ips, "externalIPs"),
        (&s.load_balancer_ips, "loadBalancerIPs"),
    ] {
        let mut seen = BTreeSet::new();
        for (i, ip) in list.iter().enumerate() {
            let field = format!("{name}[{i}]");
            check_unicast(object, &field, *ip)?;
            if !seen.insert(ip) {
                return Err(ValidationError::Duplicate {
                    object: object.to_owned(),
                    field,
                    value: ip.to_string(),
                });
            }
            families.insert(IpFamily::of(ip));
        }
    }
    Ok(families)
}

fn validate_service_options(s: &Service, object: &str) -> Result<(), ValidationError> {
    if let SessionAffinity::ClientIp { timeout_seconds } = s.session_affinity {
        if !(1..=MAX_AFFINITY_TIMEOUT_SECONDS).contains(&timeout_seconds) {
            return Err(ValidationError::OutOfRange {
                object: object.to_owned(),
                field: "sessionAffinity.timeoutSeconds".to_owned(),
                value: u64::from(timeout_seconds),
                min: 1,
                max: u64::from(MAX_AFFINITY_TIMEOUT_SECONDS),
            });
        }
    }
    if let Some(hc) = s.health_check_node_port {
        check_port(object, "healthCheckNodePort", hc)?;
        if s.external_traffic_policy != TrafficPolicy::Local {
            return Err(ValidationError::Inconsistent {
                object: object.to_owned(),
                field: "healthCheckNodePort".to_owned(),
                reason: "only valid with externalTrafficPolicy Local",
            });
        }
        if s.ports.iter().any(|p| p.node_port == Some(hc)) {
            return Err(ValidationError::Inconsistent {
                object: object.to_owned(),
                field: "healthCheckNodePort".to_owned(),
                reason: "collides with one of the service's nodePorts",
            });
        }
    }
    check_cidrs(
        object,
        "loadBalancerSourceRanges",
        &s.load_balancer_source_ranges,
    )?;
    if s.l2_announce && s.load_balancer_ips.is_empty() && s.external_ips.is_empty() {
        return Err(ValidationError::Inconsistent {
            object: object.to_owned(),
            field: "l2Announce".to_owned(),
            reason: "nothing to announce: the service has no loadBalancerIPs or externalIPs",
        });
    }
    Ok(())
}

fn validate_backends(
    s: &Service,
    object: &str,
    families: &BTreeSet<IpFamily>,
) -> Result<(), ValidationError> {
    let mut backend_ips = BTreeSet::new();
    for (i, b) in s.backends.iter().enumerate() {
        let field = || format!("backends[{i}].ip");
        check_unicast_with(object, field, b.ip)?;
        if !backend_ips.insert(b.ip) {
            return Err(ValidationError::Duplicate {
                object: object.to_owned(),
                field: field(),
                value: b.ip.to_string(),
            });
        }
        let family = IpFamily::of(&b.ip);
        if !families.is_empty() && !families.contains(&family) {
            return Err(ValidationError::BackendFamilyMismatch {
                object: object.to_owned(),
                field: field(),
                backend: b.ip,
                backend_family: family,
            });
        }
        if b.weight == 0 {
            return Err(ValidationError::OutOfRange {
                object: object.to_owned(),
                field: format!("backends[{i}].weight"),
                value: 0,
                min: 1,
                max: u64::from(u16::MAX),
            });
        }
        if let Some(port) = b.port {
            check_port_with(object, || format!("backends[{i}].port"), port)?;
            if s.ports.len() != 1 {
                return Err(ValidationError::BackendPortWithSeveralPorts {
                    object: object.to_owned(),
                    field: format!("backends[{i}].port"),
                    backend: b.ip,
                    port,
                    ports: s.ports.len(),
                });
            }
        }
        if b.ready && b.terminating {
            return Err(ValidationError::Inconsistent {
                object: object.to_owned(),
                field: format!("backends[{i}].ready"),
                reason: "a terminating backend cannot be ready",
            });
        }
    }
    Ok(())
}

fn validate_endpoint(
    e: &Endpoint,
    object: &str,
    ips: &mut BTreeMap<IpAddr, String>,
) -> Result<(), ValidationError> {
    check_name(object, "namespace", &e.name.namespace, 63)?;
    check_name(object, "name", &e.name.name, 253)?;
    check_ifname(object, "interface", &e.interface)?;
    check_pod_ips(object, &e.ips, ips)?;
    check_named_ports(object, &e.named_ports)
}

/// Addresses of a pod (local or peer), each claimed once across all pods.
fn check_pod_ips(
    object: &str,
    pod_ips: &[IpAddr],
    ips: &mut BTreeMap<IpAddr, String>,
) -> Result<(), ValidationError> {
    if pod_ips.is_empty() {
        return Err(err_empty(object, "ips"));
    }
    for (i, ip) in pod_ips.iter().enumerate() {
        let field = format!("ips[{i}]");
        check_unicast(object, &field, *ip)?;
        if let Some(other) = ips.insert(*ip, object.to_owned()) {
            return Err(ValidationError::Duplicate {
                object: object.to_owned(),
                field,
                value: format!("{ip} (also used by {other})"),
            });
        }
    }
    Ok(())
}

/// Named container ports: valid names (IANA service names, at most 15 characters), non-zero
/// ports, and no name given twice for one protocol (a policy could not tell which is meant).
fn check_named_ports(object: &str, ports: &[NamedPort]) -> Result<(), ValidationError> {
    let mut seen = BTreeSet::new();
    for (i, np) in ports.iter().enumerate() {
        check_name(object, &format!("namedPorts[{i}].name"), &np.name, 15)?;
        check_port(object, &format!("namedPorts[{i}].port"), np.port)?;
        if !seen.insert((&np.name, np.protocol)) {
            return Err(ValidationError::Duplicate {
                object: object.to_owned(),
                field: format!("namedPorts[{i}].name"),
                value: format!("{} {}", np.protocol, np.name),
            });
        }
    }
    Ok(())
}

fn validate_pod(
    p: &PeerPod,
    object: &str,
    ips: &mut BTreeMap<IpAddr, String>,
) -> Result<(), ValidationError> {
    check_name(object, "namespace", &p.name.namespace, 63)?;
    check_name(object, "name", &p.name.name, 253)?;
    check_pod_ips(object, &p.ips, ips)?;
    if p.node_name.as_deref() == Some("") {
        return Err(err_empty(object, "nodeName"));
    }
    check_named_ports(object, &p.named_ports)
}

fn validate_namespace(n: &Namespace, object: &str) -> Result<(), ValidationError> {
    check_name(object, "name", &n.name, 63)?;
    for key in n.labels.keys() {
        if key.is_empty() {
            return Err(err_empty(object, "labels"));
        }
    }
    Ok(())
}

/// A label selector: `In`/`NotIn` need values, `Exists`/`DoesNotExist` take none (the
/// Kubernetes API server's `ValidateLabelSelectorRequirement`), and keys are not empty.
fn check_selector(object: &str, at: &str, sel: &LabelSelector) -> Result<(), ValidationError> {
    if sel.match_labels.keys().any(String::is_empty) {
        return Err(err_empty(object, &format!("{at}.matchLabels")));
    }
    for (i, req) in sel.match_expressions.iter().enumerate() {
        let field = format!("{at}.matchExpressions[{i}]");
        if req.key.is_empty() {
            return Err(err_empty(object, &format!("{field}.key")));
        }
        let reason = match (req.operator, req.values.is_empty()) {
            (SelectorOperator::In | SelectorOperator::NotIn, true) => {
                "operator In and NotIn need values"
            }
            (SelectorOperator::Exists | SelectorOperator::DoesNotExist, false) => {
                "operator Exists and DoesNotExist take no values"
            }
            _ => continue,
        };
        return Err(ValidationError::Inconsistent {
            object: object.to_owned(),
            field: format!("{field}.values"),
            reason,
        });
    }
    Ok(())
}

fn validate_policy(p: &Policy, object: &str) -> Result<(), ValidationError> {
    check_name(object, "namespace", &p.name.namespace, 63)?;
    check_name(object, "name", &p.name.name, 253)?;
    check_selector(object, "podSelector", &p.pod_selector)?;
    for (i, t) in p.policy_types.iter().enumerate() {
        if p.policy_types[..i].contains(t) {
            return Err(ValidationError::Duplicate {
                object: object.to_owned(),
                field: format!("policyTypes[{i}]"),
                value: format!("{t:?}"),
            });
        }
    }
    for (dir, rules) in [("ingress", &p.ingress), ("egress", &p.egress)] {
        for (i, rule) in rules.iter().enumerate() {
            validate_rule(rule, object, &format!("{dir}[{i}]"))?;
        }
    }
    Ok(())
}

fn validate_rule(rule: &PolicyRule, object: &str, at: &str) -> Result<(), ValidationError> {
    for (j, peer) in rule.peers.iter().enumerate() {
        let field = format!("{at}.peers[{j}]");
        if peer.ip_block.is_some()
            && (peer.pod_selector.is_some() || peer.namespace_selector.is_some())
        {
            return Err(ValidationError::Inconsistent {
                object: object.to_owned(),
                field,
                reason: "ipBlock cannot be combined with podSelector or namespaceSelector",
            });
        }
        if peer.ip_block.is_none()
            && peer.pod_selector.is_none()
            && peer.namespace_selector.is_none()
        {
            return Err(err_empty(object, &field));
        }
        if let Some(sel) = &peer.pod_selector {
            check_selector(object, &format!("{field}.podSelector"), sel)?;
        }
        if let Some(sel) = &peer.namespace_selector {
            check_selector(object, &format!("{field}.namespaceSelector"), sel)?;
        }
        if let Some(block) = &peer.ip_block {
            check_cidr(object, &format!("{field}.ipBlock.cidr"), block.cidr)?;
            for (k, ex) in block.except.iter().enumerate() {
                let f = format!("{field}.ipBlock.except[{k}]");
                check_cidr(object, &f, *ex)?;
                if !(block.cidr.contains(ex.network()) && ex.prefix() > block.cidr.prefix()) {
                    return Err(ValidationError::ExceptOutsideCidr {
                        object: object.to_owned(),
                        field: f,
                        except: *ex,
                        cidr: block.cidr,
                    });
                }
            }
        }
    }
    for (j, port) in rule.ports.iter().enumerate() {
        let field = format!("{at}.ports[{j}]");
        match (&port.port, port.end_port) {
            (Some(PortRef::Number(p)), end) => {
                check_port(object, &format!("{field}.port"), *p)?;
                if let Some(end) = end {
                    if end < *p {
                        return Err(ValidationError::Inconsistent {
                            object: object.to_owned(),
                            field: format!("{field}.endPort"),
                            reason: "endPort is smaller than port",
                        });
                    }
                }
            }
            (Some(PortRef::Name(name)), end) => {
                check_name(object, &format!("{field}.port"), name, 15)?;
                if end.is_some() {
                    return Err(ValidationError::Inconsistent {
                        object: object.to_owned(),
                        field: format!("{field}.endPort"),
                        reason: "endPort needs a numeric port",
                    });
                }
            }
            (None, Some(_)) => {
                return Err(ValidationError::Inconsistent {
                    object: object.to_owned(),
                    field: format!("{field}.endPort"),
                    reason: "endPort needs a port",
                });
            }
            (None, None) => {}
        }
    }
    Ok(())
}

/// What [`Validator::check`] could decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incremental {
    /// The changed objects are valid and clash with nothing that stays.
    Valid,
    /// The change touches the node (whose settings every service depends on): validate the
    /// whole new state instead.
    FullRequired,
}

/// Incremental validation, in proportion to a change rather than to the state.
///
/// Built from a state that passed [`validate`], it keeps the frontends and pod addresses
/// (endpoints' and peer pods') each object claims, and of the cluster policies, peer nodes,
/// host endpoints and host policies their places in the state and their unique claims (a
/// cluster policy's priority, a host endpoint's node and interface). [`Validator::check`]
/// validates only the changed objects and checks their claims against those of the objects
/// that stay, which is what a full validation of the new state would find (for the cluster
/// policies, the baseline, peer nodes, host endpoints, host policies and failsafe ports the
/// very error: the first in the state's order, a clash naming the later object);
/// [`Validator::commit`] then records the change.
///
/// ```
/// use dataplane_core::{diff, Backend, DesiredState, Incremental, Node, ObjectName};
/// use dataplane_core::{Service, ServicePort, Validator};
/// let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
/// let old = DesiredState::new(Node::new("node-a", [ip("172.18.0.10")])).with_service(
///     Service::cluster_ip(ObjectName::new("default", "web"), ip("10.96.0.20"), [ServicePort::tcp(80, 8080)])
///         .with_backends([Backend::new(ip("10.244.1.5")), Backend::new(ip("10.244.2.7"))]),
/// );
/// let mut new = old.clone();
/// new.services[0].backends.pop();
/// let changes = diff(&old, &new);
/// let mut v = Validator::new(&old)?;
/// assert_eq!(v.check(&old.node, &changes)?, Incremental::Valid);
/// v.commit(&old.node, &changes);
/// # Ok::<(), dataplane_core::ValidationError>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct Validator {
    frontends: claims::ClaimTable,
    endpoint_ips: BTreeMap<IpAddr, String>,
    /// Names of the peer pods and of the endpoints (`true`): the two kinds share one name
    /// space, which a change set keyed per kind cannot show.
    pod_names: BTreeMap<ObjectName, bool>,
    /// Cluster policies, peer nodes, host endpoints and host policies: places and claims.
    tiers: tiers::TierClaims,
}

/// The object part of a claimant: `"service a/b ports[0]"` -> `"service a/b"`.
fn claimant(what: &str) -> &str {
    what.strip_suffix(" healthCheckNodePort")
        .or_else(|| what.rsplit_once(" ports[").map(|(object, _)| object))
        .unwrap_or(what)
}

impl Validator {
    /// Validates `state` in full (the cost of [`validate`]) and keeps its claims.
    pub fn new(state: &DesiredState) -> Result<Self, ValidationError> {
        let (frontends, endpoint_ips) = validate_claims(state)?;
        let pod_names = state
            .endpoints
            .iter()
            .map(|e| (e.name.clone(), true))
            .chain(state.pods.iter().map(|p| (p.name.clone(), false)))
            .collect();
        Ok(Validator {
            frontends: frontends.into(),
            endpoint_ips,
            pod_names,
            tiers: tiers::TierClaims::new(state),
        })
    }

    /// Checks `changes` against the state this validator was built from (and committed to);
    /// `node` is that state's node.
    ///
    /// A change of the node needs [`Incremental::FullRequired`]: every service is checked
    /// against it. Cluster policies, the baseline, peer nodes, host endpoints, host policies
    /// and failsafe ports are checked here, the changed ones and the claims they make
    /// (unique priorities, one host endpoint per node and interface) against those that
    /// stay.
    pub fn check(&self, node: &Node, changes: &ChangeSet) -> Result<Incremental, ValidationError> {
        if changes.node.is_some() {
            return Ok(Incremental::FullRequired);
        }
        let changed_services: BTreeSet<String> = changes
            .services
            .keys()
            .map(|n| format!("service {n}"))
            .collect();
        let mut claimed = FrontendClaims::new();
        for (name, change) in &changes.services {
            let Some(s) = &change.current else { continue };
            let object = format!("service {}", s.name);
            if &s.name != name {
                return Err(ValidationError::Inconsistent {
                    object,
                    field: "name".to_owned(),
                    reason: "the change set files it under another name",
                });
            }
            // Clashes among the changed services themselves, as a full validation finds them.
            validate_service(node, s, &object, &mut claimed)?;
        }
        for (key, what) in &claimed {
            if let Some(other) = self.frontends.get(key) {
                if !changed_services.contains(claimant(&other)) {
                    let object = claimant(what).to_owned();
                    // The service again, against the clashing claim alone: the error names
                    // the field (`ports[0].nodePort`, ...) as a full validation does.
                    let service = changes
                        .services
                        .values()
                        .filter_map(|c| c.current.as_ref())
                        .find(|s| format!("service {}", s.name) == object);
                    if let Some(s) = service {
                        let mut seeded = BTreeMap::from([(*key, Arc::from(other.as_str()))]);
                        validate_service(node, s, &object, &mut seeded)?;
                    }
                    let field = what[object.len()..].trim_start().to_owned();
                    return Err(ValidationError::DuplicateFrontend {
                        object,
                        field,
                        frontend: format!("{} {}", key.1, std::net::SocketAddr::new(key.0, key.2)),
                        other,
                    });
                }
            }
        }
        self.check_pods(changes)?;
        for change in changes.policies.values() {
            if let Some(p) = &change.current {
                validate_policy(p, &format!("policy {}", p.name))?;
            }
        }
        // Last, as in a full validation.
        self.tiers.check(changes)?;
        Ok(Incremental::Valid)
    }

    /// The changed endpoints, peer pods and namespaces of [`Validator::check`]: each valid,
    /// addresses unique across all pods, and no name both an endpoint and a peer pod.
    fn check_pods(&self, changes: &ChangeSet) -> Result<(), ValidationError> {
        let changed_pods: BTreeSet<String> = changes
            .endpoints
            .keys()
            .map(|n| format!("endpoint {n}"))
            .chain(changes.pods.keys().map(|n| format!("pod {n}")))
            .collect();
        let mut ips: BTreeMap<IpAddr, String> = BTreeMap::new();
        for change in changes.endpoints.values() {
            let Some(e) = &change.current else { continue };
            let object = format!("endpoint {}", e.name);
            validate_endpoint(e, &object, &mut ips)?;
        }
        for change in changes.pods.values() {
            let Some(p) = &change.current else { continue };
            let object = format!("pod {}", p.name);
            validate_pod(p, &object, &mut ips)?;
        }
        // A name both an endpoint and a peer pod after the change: a full validation names
        // the pod (pods are checked after endpoints).
        let endpoint_after = |name: &ObjectName| match changes.endpoints.get(name) {
            Some(c) => c.current.is_some(),
            None => self.pod_names.get(name) == Some(&true),
        };
        let peer_after = |name: &ObjectName| match changes.pods.get(name) {
            Some(c) => c.current.is_some(),
            None => self.pod_names.get(name) == Some(&false),
        };
        let peers = changes.pods.iter().map(|(n, c)| (n, c.current.is_some()));
        let locals = changes
            .endpoints
            .iter()
            .map(|(n, c)| (n, c.current.is_some()));
        let clash = peers
            .filter(|(name, present)| *present && endpoint_after(name))
            .chain(locals.filter(|(name, present)| *present && peer_after(name)))
            .map(|(name, _)| name)
            .min();
        if let Some(name) = clash {
            return Err(ValidationError::DuplicateName {
                object: format!("pod {name}"),
            });
        }
        for change in changes.namespaces.values() {
            if let Some(n) = &change.current {
                validate_namespace(n, &format!("namespace {}", n.name))?;
            }
        }
        for (ip, what) in &ips {
            if let Some(other) = self.endpoint_ips.get(ip) {
                if !changed_pods.contains(other) {
                    // The address's index in its pod, as a full validation names it.
                    let index = changes
                        .endpoints
                        .values()
                        .filter_map(|c| c.current.as_ref())
                        .filter(|e| format!("endpoint {}", e.name) == *what)
                        .map(|e| &e.ips)
                        .chain(
                            changes
                                .pods
                                .values()
                                .filter_map(|c| c.current.as_ref())
                                .filter(|p| format!("pod {}", p.name) == *what)
                                .map(|p| &p.ips),
                        )
                        .find_map(|ips| ips.iter().position(|i| i == ip))
                        .unwrap_or_default();
                    return Err(ValidationError::Duplicate {
                        object: what.clone(),
                        field: format!("ips[{index}]"),
                        value: format!("{ip} (also used by {other})"),
                    });
                }
            }
        }
        Ok(())
    }

    /// Records `changes` (already checked) as applied; `node` is the state's node.
    pub fn commit(&mut self, node: &Node, changes: &ChangeSet) {
        let mut add = BTreeMap::new();
        // Where the names of the services whose claims go are: kept for their new claims.
        let mut reuse = Vec::new();
        for (name, change) in &changes.services {
            let object = format!("service {name}");
            if let Some(prev) = &change.previous {
                let mut old = BTreeMap::new();
                let _ = validate_service(node, prev, &object, &mut old);
                if let Some(at) = self.frontends.remove_held(&object, old.into_keys()) {
                    reuse.push((object.clone(), at));
                }
            }
            if let Some(s) = &change.current {
                let _ = validate_service(node, s, &object, &mut add);
            }
        }
        self.frontends.extend(&add, &reuse);
        let mut add = BTreeMap::new();
        for (name, change) in &changes.endpoints {
            let object = format!("endpoint {name}");
            if let Some(prev) = &change.previous {
                for ip in &prev.ips {
                    if self.endpoint_ips.get(ip).is_some_and(|w| *w == object) {
                        self.endpoint_ips.remove(ip);
                    }
                }
            }
            if let Some(e) = &change.current {
                let _ = validate_endpoint(e, &object, &mut add);
            }
        }
        for (name, change) in &changes.pods {
            let object = format!("pod {name}");
            if let Some(prev) = &change.previous {
                for ip in &prev.ips {
                    if self.endpoint_ips.get(ip).is_some_and(|w| *w == object) {
                        self.endpoint_ips.remove(ip);
                    }
                }
            }
            if let Some(p) = &change.current {
                let _ = validate_pod(p, &object, &mut add);
            }
        }
        self.endpoint_ips.extend(add);
        let locals = changes
            .endpoints
            .iter()
            .map(|(n, c)| (n, c.current.is_some(), true));
        let peers = changes
            .pods
            .iter()
            .map(|(n, c)| (n, c.current.is_some(), false));
        for (name, present, local) in locals.chain(peers) {
            if present {
                self.pod_names.insert(name.clone(), local);
            } else if self.pod_names.get(name) == Some(&local) {
                self.pod_names.remove(name);
            }
        }
        self.tiers.commit(changes);
    }
}

/// An accepted setting that is probably not what the caller meant, or that scopes less than
/// it looks, naming object and field like a [`ValidationError`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Warning {
    /// The object (`service default/web`).
    pub object: String,
    /// The field (`clusterIPs[0]`).
    pub field: String,
    /// What is worth a look.
    pub message: String,
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}: {}", self.object, self.field, self.message)
    }
}
