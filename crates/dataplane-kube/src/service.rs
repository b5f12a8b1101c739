//! A Service and its EndpointSlices → model services, the way kube-proxy reads them.
//!
//! kube-proxy (`pkg/proxy`) turns a Service into one `ServicePort` per port and IP family
//! (`servicechangetracker.go`, `serviceport.go`: `newBaseServiceInfo`), and the Service's
//! EndpointSlices into endpoints per service port (`endpointslicecache.go`:
//! `endpointInfoByServicePort`, `addEndpoints`), then picks the usable ones with
//! `topology.go`: `CategorizeEndpoints`. The model has one backend list per service and
//! one `targetPort` per port (a backend may carry its own number when a named port resolves
//! differently per pod, see [`resolve_target`]), so this module also groups ports (see
//! [`group_ports`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use dataplane_core::{
    Backend, ObjectName, Protocol, SessionAffinity, ThinStr, TrafficPolicy,
    DEFAULT_AFFINITY_TIMEOUT_SECONDS,
};
use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::node::NodeInfo;
use crate::support::{is_label, parse_cidr, protocol, usable_unicast, Interner, Place, Warnings};
use crate::{Kind, ObjectKey, Settings};

/// The annotation cloud providers read source ranges from when the spec has none. kube-proxy
/// does not read it (`newBaseServiceInfo` uses `spec.loadBalancerSourceRanges` only); neither
/// does this translation, which warns instead so that the difference is visible.
pub(crate) const ANNOTATION_SOURCE_RANGES: &str =
    "service.beta.kubernetes.io/load-balancer-source-ranges";

/// Longest Kubernetes port / label name this crate passes on (DNS-1123 label).
const MAX_LABEL: usize = 63;

/// One model service made from a Kubernetes Service, before frontends are checked against
/// other services', with what is needed to name fields in warnings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawService {
    /// The model service; valid on its own (checked against the node).
    pub service: dataplane_core::Service,
    /// For each of `service.ports`, its index in the Kubernetes `spec.ports`.
    pub port_fields: Vec<usize>,
    /// For each of `service.external_ips`, its field (`spec.externalIPs[1]`).
    pub external_ip_fields: Vec<String>,
    /// For each of `service.load_balancer_ips`, its field
    /// (`status.loadBalancer.ingress[0].ip`).
    pub lb_ip_fields: Vec<String>,
}

/// What translating services needs besides the objects.
pub(crate) struct Ctx<'a> {
    pub settings: &'a Settings,
    pub node: &'a NodeInfo,
    /// A state holding only the node, to validate one object at a time.
    pub probe: &'a mut dataplane_core::DesiredState,
    /// Who decides the Services this node announces ([`crate::l2`]).
    pub l2: crate::L2Announcements,
    /// Whether the election gave this Service to this node ([`crate::L2Announcements::Elected`]).
    pub l2_elected: bool,
}

/// The name of the model service for the ports starting at `spec.ports[index]` when a
/// Service has to be split. It starts with a digit: a DNS-1123 label, as the model wants,
/// that Kubernetes never gives a Service (Service names are DNS-1035 labels, which start
/// with a letter), so it cannot be a real Service's. Names too long for a label are cut and
/// get a hash of the whole name, so that two long names still differ.
pub(crate) fn split_name(name: &str, index: usize) -> String {
    let candidate = format!("{index}-{name}");
    if candidate.len() <= MAX_LABEL {
        return candidate;
    }
    let prefix = format!("{index}-");
    let keep = MAX_LABEL - prefix.len() - 9;
    let cut = name[..keep.min(name.len())].trim_end_matches('-');
    format!("{prefix}{cut}-{:08x}", fnv1a(name.as_bytes()))
}

fn fnv1a(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// A service port of the spec that passed its checks.
struct SpecPort {
    index: usize,
    name: String,
    protocol: Protocol,
    port: u16,
    node_port: Option<u16>,
    target: Target,
}

enum Target {
    Number(u16),
    Named,
}

/// One endpoint of a slice, read once when the slice is stored (`newEndpointSliceInfo`).
/// Node and zone names are shared (the store's interner): a store holds one copy of each,
/// and one [`Place`] per pair of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ep {
    ip: IpAddr,
    ready: bool,
    serving: bool,
    terminating: bool,
    /// Its node and zone (`None`: neither is known).
    place: Option<Arc<Place>>,
    /// `hints.forZones` and `hints.forNodes`; `None` when both are empty (the common case:
    /// boxed so that an endpoint without hints does not carry two empty lists, 24 of its 88
    /// bytes, 100k endpoints in a big cluster).
    hints: Option<Box<Hints>>,
}

/// An endpoint's topology hints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hints {
    zones: Box<[Arc<str>]>,
    nodes: Box<[Arc<str>]>,
}

impl Ep {
    fn node_name(&self) -> Option<&ThinStr> {
        self.place.as_ref().and_then(|p| p.node.as_ref())
    }

    fn zone(&self) -> Option<&ThinStr> {
        self.place.as_ref().and_then(|p| p.zone.as_ref())
    }

    fn zone_hints(&self) -> &[Arc<str>] {
        self.hints.as_ref().map_or(&[], |h| &h.zones)
    }

    fn node_hints(&self) -> &[Arc<str>] {
        self.hints.as_ref().map_or(&[], |h| &h.nodes)
    }
}

/// What the translation reads of an EndpointSlice, read once when it is stored: a
/// k8s-openapi `EndpointSlice` of 10 endpoints takes several kilobytes, this a tenth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SliceData {
    /// The Service it belongs to (`kubernetes.io/service-name`).
    pub service: Option<ObjectKey>,
    /// `addressType`: IPv4 (`true`) or IPv6; `None` for FQDN and others (not proxied).
    ipv4: Option<bool>,
    /// The usable endpoints.
    endpoints: Vec<Ep>,
    /// The usable ports: name (shared: nearly every slice names the same few), number,
    /// protocol.
    ports: Box<[(Arc<str>, u16, Protocol)]>,
    /// What reading the endpoints and ports left out, given again with each translation of
    /// the Service (only when the slice is of one of its families, as before).
    warnings: Vec<crate::TranslationWarning>,
}

impl SliceData {
    /// Reads `slice` (named `key`), sharing names through `interner`.
    pub(crate) fn new(key: &ObjectKey, slice: &EndpointSlice, interner: &mut Interner) -> Self {
        let service = slice_service(key, slice);
        let ipv4 = match slice.address_type.as_str() {
            "IPv4" => Some(true),
            "IPv6" => Some(false),
            _ => None,
        };
        let mut w = Warnings::new(key.clone());
        let (mut endpoints, mut ports) = (Vec::new(), Box::default());
        if let Some(ipv4) = ipv4 {
            endpoints = slice_endpoints(slice, ipv4, interner, &mut w);
            ports = slice_ports(slice, interner, &mut w);
        }
        Self {
            service,
            ipv4,
            endpoints,
            ports,
            warnings: w.into_list(),
        }
    }
}

/// Translates `svc` (named `key`) with `slices` (its `EndpointSlices`, by slice name).
// One Service's fields in the order kube-proxy reads them; split, it reads worse.
#[allow(clippy::too_many_lines)]
pub(crate) fn translate(
    ctx: &mut Ctx<'_>,
    key: &ObjectKey,
    svc: &Service,
    slices: &[&SliceData],
    w: &mut Warnings,
) -> Vec<RawService> {
    if !crate::service_selected(
        svc.metadata.labels.as_ref(),
        ctx.settings.proxy_name.as_deref(),
    ) {
        return Vec::new();
    }
    // Service names are DNS-1035 labels (they start with a letter): split model services
    // are named with a leading digit so that they cannot meet a real one.
    if !is_label(&key.name, MAX_LABEL) || !key.name.starts_with(|c: char| c.is_ascii_lowercase()) {
        w.push(
            "metadata.name",
            format!("{:?} is not a valid Service name; left out", key.name),
        );
        return Vec::new();
    }
    if !key
        .namespace
        .as_deref()
        .is_some_and(|ns| is_label(ns, MAX_LABEL))
    {
        w.push("metadata.namespace", "not a valid namespace name; left out");
        return Vec::new();
    }
    let Some(spec) = &svc.spec else {
        w.push("spec", "no spec; left out");
        return Vec::new();
    };
    let type_ = spec.type_.as_deref().unwrap_or("ClusterIP");
    let (node_ports_allowed, load_balancer) = match type_ {
        // kube-proxy does not proxy ExternalName services (`ShouldSkipService`).
        "ExternalName" => return Vec::new(),
        "ClusterIP" => (false, false),
        "NodePort" => (true, false),
        "LoadBalancer" => (true, true),
        other => {
            w.push("spec.type", format!("unknown type {other:?}; left out"));
            return Vec::new();
        }
    };
    // Headless: kube-proxy skips services whose ClusterIP is None (`ShouldSkipService`).
    if spec.cluster_ip.as_deref() == Some("None")
        || spec
            .cluster_ips
            .as_ref()
            .and_then(|l| l.first())
            .is_some_and(|ip| ip == "None")
    {
        return Vec::new();
    }
    let cluster_ips = cluster_ips(ctx.node, spec, w);
    if cluster_ips.is_empty() {
        let given = spec.cluster_ips.as_ref().is_some_and(|l| !l.is_empty())
            || spec.cluster_ip.as_ref().is_some_and(|ip| !ip.is_empty());
        if given {
            w.push("spec.clusterIPs", "no usable ClusterIP; left out");
        }
        return Vec::new();
    }
    let families: BTreeSet<bool> = cluster_ips.iter().map(IpAddr::is_ipv4).collect();
    let in_family = |ip: &IpAddr| families.contains(&ip.is_ipv4());

    // ExternalIPs and LoadBalancer IPs of a family the service has no ClusterIP of are not
    // served: kube-proxy's proxier of that family skips the service (`serviceToServiceMap`:
    // no ClusterIP of its family), the other filters them out (`MapIPsByIPFamily`).
    let mut external_ips = Vec::new();
    let mut external_ip_fields = Vec::new();
    for (i, s) in spec.external_ips.iter().flatten().enumerate() {
        let field = format!("spec.externalIPs[{i}]");
        match parse_frontend_ip(s) {
            Ok(ip) if in_family(&ip) && !external_ips.contains(&ip) => {
                external_ips.push(ip);
                external_ip_fields.push(field);
            }
            Ok(_) => {}
            Err(m) => w.push(field, m),
        }
    }
    let mut lb_ips = Vec::new();
    let mut lb_ip_fields = Vec::new();
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.as_deref())
        .unwrap_or_default();
    for (i, ing) in ingress.iter().enumerate() {
        // Only VIP-mode ingress IPs are short-circuited on the node (`IsVIPMode`): with
        // `ipMode: Proxy` the load balancer itself must see the traffic.
        let (Some(s), true) = (&ing.ip, ing.ip_mode.as_deref().is_none_or(|m| m == "VIP")) else {
            continue;
        };
        let field = format!("status.loadBalancer.ingress[{i}].ip");
        match parse_frontend_ip(s) {
            Ok(ip) if in_family(&ip) && !lb_ips.contains(&ip) => {
                lb_ips.push(ip);
                lb_ip_fields.push(field);
            }
            Ok(_) => {}
            Err(m) => w.push(field, m),
        }
    }

    let ports = ports(ctx, spec, node_ports_allowed, w);
    if ports.is_empty() {
        if spec.ports.as_ref().is_none_or(Vec::is_empty) {
            w.push("spec.ports", "no ports; left out");
        } else {
            w.push("spec.ports", "no usable port; left out");
        }
        return Vec::new();
    }

    let session_affinity = session_affinity(spec, w);
    // `apiservice.ExternalPolicyLocal`: external traffic policy Local holds for externally
    // accessible services (`ExternallyAccessible`: NodePort, LoadBalancer, or ClusterIP with
    // `spec.externalIPs`); `NeedsHealthCheck`: LoadBalancer ones with Local have a health port.
    let externally_accessible_type = node_ports_allowed
        || (type_ == "ClusterIP" && spec.external_ips.as_ref().is_some_and(|l| !l.is_empty()));
    let etp = match spec.external_traffic_policy.as_deref() {
        Some("Local") if externally_accessible_type => TrafficPolicy::Local,
        None | Some("Cluster" | "Local") => TrafficPolicy::Cluster,
        Some(other) => {
            w.push(
                "spec.externalTrafficPolicy",
                format!("unknown policy {other:?}; Cluster is used"),
            );
            TrafficPolicy::Cluster
        }
    };
    let itp = match spec.internal_traffic_policy.as_deref() {
        None | Some("Cluster") => TrafficPolicy::Cluster,
        Some("Local") => TrafficPolicy::Local,
        Some(other) => {
            w.push(
                "spec.internalTrafficPolicy",
                format!("unknown policy {other:?}; Cluster is used"),
            );
            TrafficPolicy::Cluster
        }
    };
    let health_check_node_port = if load_balancer && etp == TrafficPolicy::Local {
        health_check_node_port(ctx, spec, &ports, w)
    } else {
        None
    };
    let source_ranges = source_ranges(svc, w);

    let endpoints = endpoints_by_port(&families, &ports, slices, w);

    // The key's names, shared (not copied) by the model's.
    let mut base = dataplane_core::Service::new(
        key.object_name()
            .unwrap_or_else(|| ObjectName::new("", &key.name)),
    );
    base.cluster_ips = cluster_ips;
    base.external_ips = external_ips;
    base.load_balancer_ips = lb_ips;
    base.session_affinity = session_affinity;
    base.external_traffic_policy = etp;
    base.internal_traffic_policy = itp;
    base.health_check_node_port = health_check_node_port;
    base.load_balancer_source_ranges = source_ranges;
    base.l2_announce = crate::l2::announced(
        ctx.l2,
        ctx.l2_elected,
        svc.metadata.annotations.as_ref(),
        &ctx.settings.node_name,
        &base,
        w,
    );

    // Per port: its target number and its usable backends.
    let mut resolved = Vec::with_capacity(ports.len());
    for (port, eps) in ports.iter().zip(endpoints) {
        let (target, numbers, eps) = resolve_target(key, port, eps, w);
        let externally_accessible = port.node_port.is_some()
            || !base.external_ips.is_empty()
            || !base.load_balancer_ips.is_empty();
        // kube-proxy runs one proxier per IP family, each categorizing its own family's
        // endpoints: hints are judged per family (`CategorizeEndpoints` per proxier).
        let (v4, v6): (Vec<Ep>, Vec<Ep>) = eps.into_iter().partition(|e| e.ip.is_ipv4());
        let mut eps = topology_filter(ctx.node, etp, itp, externally_accessible, v4);
        eps.extend(topology_filter(
            ctx.node,
            etp,
            itp,
            externally_accessible,
            v6,
        ));
        // Collected from a slice: exactly as long as needed. `into_iter` reused the
        // endpoints' larger buffer (grown by `extend` too), held for as long as the state
        // holds the service: ~5 MiB of slack at 10k services x 10 (tests/memory.rs).
        let backends: Vec<Backend> = eps
            .iter()
            .map(|e| {
                let mut b = backend(e);
                b.port = numbers.get(&e.ip).copied().filter(|n| *n != target);
                b
            })
            .collect();
        let model_port = dataplane_core::ServicePort {
            name: port.name.clone(),
            protocol: port.protocol,
            port: port.port,
            target_port: target,
            node_port: port.node_port,
        };
        resolved.push((port.index, model_port, backends));
    }

    let groups = group_ports(resolved);
    let split = groups.len() > 1;
    let mut out = Vec::with_capacity(groups.len());
    for (indices, model_ports, backends) in groups {
        let mut service = base.clone();
        if split {
            service.name.name = split_name(&key.name, indices[0]).into();
        }
        // A health check port belongs to the service as a whole: it stays with the part
        // that carries the first port.
        if split && indices[0] != ports[0].index {
            service.health_check_node_port = None;
        }
        service.ports = model_ports;
        service.backends = backends;
        let raw = RawService {
            service,
            port_fields: indices,
            external_ip_fields: external_ip_fields.clone(),
            lb_ip_fields: lb_ip_fields.clone(),
        };
        // The checks above follow dataplane-core's rules; this catches any they miss, so that
        // a bad object is left out rather than failing the whole state.
        ctx.probe.services.push(raw.service);
        let checked = dataplane_core::validate(ctx.probe);
        let service = ctx.probe.services.pop().expect("pushed above");
        match checked {
            Ok(()) => out.push(RawService { service, ..raw }),
            Err(e) => w.push("spec", format!("left out: {e}")),
        }
    }
    out
}

/// Groups ports that have the same backends into one model service (the common case is one
/// group: every port of a Service selects the same pods). Ports whose backends differ (a
/// port some pods do not expose, a named port resolving differently) are split into
/// separate model services, in `spec.ports` order. A port whose backends carry their own
/// numbers ([`Backend::port`]) is always a group of its own: the model allows those only in
/// a single-port service.
#[allow(clippy::type_complexity)]
fn group_ports(
    resolved: Vec<(usize, dataplane_core::ServicePort, Vec<Backend>)>,
) -> Vec<(Vec<usize>, Vec<dataplane_core::ServicePort>, Vec<Backend>)> {
    let mut groups: Vec<(Vec<usize>, Vec<dataplane_core::ServicePort>, Vec<Backend>)> = Vec::new();
    for (index, port, backends) in resolved {
        let own_numbers = backends.iter().any(|b| b.port.is_some());
        match groups.iter_mut().find(|g| !own_numbers && g.2 == backends) {
            Some(g) => {
                g.0.push(index);
                g.1.push(port);
            }
            None => groups.push((vec![index], vec![port], backends)),
        }
    }
    groups
}

fn backend(e: &Ep) -> Backend {
    Backend {
        ip: e.ip,
        ready: e.ready,
        serving: e.serving,
        terminating: e.terminating,
        node_name: e.node_name().cloned(),
        zone: e.zone().cloned(),
        weight: 1,
        port: None,
    }
}

fn parse_frontend_ip(s: &str) -> Result<IpAddr, String> {
    match crate::parse_ip_sloppy(s) {
        Ok(ip) if usable_unicast(ip) => Ok(ip),
        Ok(ip) => Err(format!("{ip} is not a unicast address; left out")),
        Err(_) => Err(format!("{s:?} is not an IP address; left out")),
    }
}

/// `spec.clusterIPs` (dual-stack; `spec.clusterIP` when absent), at most one per family.
fn cluster_ips(
    node: &NodeInfo,
    spec: &k8s_openapi::api::core::v1::ServiceSpec,
    w: &mut Warnings,
) -> Vec<IpAddr> {
    let (list, field): (Vec<&String>, &str) = match (&spec.cluster_ips, &spec.cluster_ip) {
        (Some(list), _) if !list.is_empty() => (list.iter().collect(), "spec.clusterIPs"),
        (_, Some(one)) if !one.is_empty() => (vec![one], "spec.clusterIP"),
        _ => {
            w.push("spec.clusterIP", "no ClusterIP allocated; left out");
            return Vec::new();
        }
    };
    let mut out: Vec<IpAddr> = Vec::new();
    for (i, s) in list.into_iter().enumerate() {
        let field = if field == "spec.clusterIP" {
            field.to_owned()
        } else {
            format!("{field}[{i}]")
        };
        let ip = match parse_frontend_ip(s) {
            Ok(ip) => ip,
            Err(m) => {
                w.push(field, m);
                continue;
            }
        };
        let n = &node.node;
        let clash = if n.addresses.contains(&ip) {
            Some("is a node address")
        } else if n
            .cluster_cidrs
            .iter()
            .chain(&n.pod_cidrs)
            .any(|c| c.contains(ip))
        {
            Some("is inside the pod network (clusterCIDRs or podCIDRs)")
        } else if out.iter().any(|o| o.is_ipv4() == ip.is_ipv4()) {
            Some("is a second ClusterIP of its family")
        } else {
            None
        };
        match clash {
            Some(reason) => w.push(field, format!("{ip} {reason}; left out")),
            None => out.push(ip),
        }
    }
    out
}

// Each port check is a line or three, with its own warning.
#[allow(clippy::too_many_lines)]
fn ports(
    ctx: &Ctx<'_>,
    spec: &k8s_openapi::api::core::v1::ServiceSpec,
    node_ports_allowed: bool,
    w: &mut Warnings,
) -> Vec<SpecPort> {
    let list: &[ServicePort] = spec.ports.as_deref().unwrap_or_default();
    let range = ctx.node.node.node_port_range;
    let mut out: Vec<SpecPort> = Vec::new();
    for (i, p) in list.iter().enumerate() {
        let field = |f: &str| format!("spec.ports[{i}].{f}");
        let name = p.name.clone().unwrap_or_default();
        let Some(protocol) = protocol(p.protocol.as_deref()) else {
            w.push(
                field("protocol"),
                format!(
                    "unknown protocol {:?}; port left out",
                    p.protocol.as_deref().unwrap_or_default()
                ),
            );
            continue;
        };
        let Some(port) = u16::try_from(p.port).ok().filter(|p| *p != 0) else {
            w.push(
                field("port"),
                format!("{} is not a port (1-65535); port left out", p.port),
            );
            continue;
        };
        if name.is_empty() && list.len() > 1 {
            w.push(
                field("name"),
                "a port of a multi-port service needs a name; port left out",
            );
            continue;
        }
        if !name.is_empty() && !is_label(&name, MAX_LABEL) {
            w.push(
                field("name"),
                format!("{name:?} is not a valid port name; port left out"),
            );
            continue;
        }
        if !name.is_empty() && out.iter().any(|o| o.name == name) {
            w.push(
                field("name"),
                format!("{name:?} is used twice; port left out"),
            );
            continue;
        }
        if out.iter().any(|o| o.protocol == protocol && o.port == port) {
            w.push(
                field("port"),
                format!("{protocol} {port} is used twice; port left out"),
            );
            continue;
        }
        let target = match &p.target_port {
            None => Target::Number(port),
            Some(IntOrString::Int(n)) => {
                let Some(n) = u16::try_from(*n).ok().filter(|n| *n != 0) else {
                    w.push(
                        field("targetPort"),
                        format!("{n} is not a port (1-65535); port left out"),
                    );
                    continue;
                };
                Target::Number(n)
            }
            // A number written as a string ("8080") is a number to the API server's
            // IntOrString too.
            Some(IntOrString::String(s)) => match s.parse::<u16>() {
                Ok(n) if n != 0 => Target::Number(n),
                _ => Target::Named,
            },
        };
        let node_port = match p.node_port {
            None | Some(0) => None,
            // The API server keeps nodePorts only on NodePort and LoadBalancer services
            // (with `allocateLoadBalancerNodePorts: false` it allocates none, but keeps one
            // given explicitly, which kube-proxy then serves).
            Some(_) if !node_ports_allowed => {
                w.push(
                    field("nodePort"),
                    "a ClusterIP service has no nodePort; ignored",
                );
                None
            }
            Some(np) => match u16::try_from(np).ok().filter(|np| range.contains(*np)) {
                Some(np)
                    if out
                        .iter()
                        .any(|o| o.protocol == protocol && o.node_port == Some(np)) =>
                {
                    w.push(
                        field("nodePort"),
                        format!("{protocol} {np} is used twice; nodePort left out"),
                    );
                    None
                }
                Some(np) => Some(np),
                None => {
                    w.push(
                        field("nodePort"),
                        format!(
                            "{np} is outside the node port range {}-{} of this node's settings; nodePort left out (the API server allocates from its --service-node-port-range: the node's range must cover it)",
                            range.start, range.end
                        ),
                    );
                    None
                }
            },
        };
        out.push(SpecPort {
            index: i,
            name,
            protocol,
            port,
            node_port,
            target,
        });
    }
    out
}

fn session_affinity(
    spec: &k8s_openapi::api::core::v1::ServiceSpec,
    w: &mut Warnings,
) -> SessionAffinity {
    match spec.session_affinity.as_deref() {
        None | Some("None") => SessionAffinity::None,
        Some("ClientIP") => {
            let timeout = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            let timeout_seconds = match timeout {
                None => DEFAULT_AFFINITY_TIMEOUT_SECONDS,
                Some(t) => {
                    let valid = u32::try_from(t).ok().filter(|t| {
                        (1..=dataplane_core::validate::MAX_AFFINITY_TIMEOUT_SECONDS).contains(t)
                    });
                    if let Some(t) = valid {
                        t
                    } else {
                        w.push(
                            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                            format!("{t} is outside 1-86400; the default 10800 is used"),
                        );
                        DEFAULT_AFFINITY_TIMEOUT_SECONDS
                    }
                }
            };
            SessionAffinity::ClientIp { timeout_seconds }
        }
        Some(other) => {
            w.push(
                "spec.sessionAffinity",
                format!("unknown affinity {other:?}; None is used"),
            );
            SessionAffinity::None
        }
    }
}

fn health_check_node_port(
    ctx: &Ctx<'_>,
    spec: &k8s_openapi::api::core::v1::ServiceSpec,
    ports: &[SpecPort],
    w: &mut Warnings,
) -> Option<u16> {
    let field = "spec.healthCheckNodePort";
    let range = ctx.node.node.node_port_range;
    match spec.health_check_node_port {
        // kube-proxy logs "Service has no healthcheck nodeport" and serves none.
        None | Some(0) => {
            w.push(field, "a LoadBalancer service with externalTrafficPolicy Local has none; no health check is served");
            None
        }
        Some(hc) => match u16::try_from(hc).ok().filter(|p| range.contains(*p)) {
            Some(hc) if ports.iter().any(|p| p.node_port == Some(hc)) => {
                w.push(
                    field,
                    format!("{hc} is also a nodePort of the service; left out"),
                );
                None
            }
            Some(hc) => Some(hc),
            None => {
                w.push(
                    field,
                    format!(
                        "{hc} is outside the node port range {}-{} of this node's settings; left out (the API server allocates from its --service-node-port-range: the node's range must cover it)",
                        range.start, range.end
                    ),
                );
                None
            }
        },
    }
}

fn source_ranges(svc: &Service, w: &mut Warnings) -> Vec<IpNetwork> {
    let spec = svc.spec.as_ref();
    let mut out = Vec::new();
    for (i, s) in spec
        .and_then(|s| s.load_balancer_source_ranges.as_deref())
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        match parse_cidr(s) {
            Some(net) if !out.contains(&net) => out.push(net),
            Some(_) => {}
            None => w.push(
                format!("spec.loadBalancerSourceRanges[{i}]"),
                format!("{s:?} is not a CIDR; left out"),
            ),
        }
    }
    if svc
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(ANNOTATION_SOURCE_RANGES))
    {
        w.push(
            format!("metadata.annotations[{ANNOTATION_SOURCE_RANGES}]"),
            "not read (kube-proxy reads spec.loadBalancerSourceRanges only); set the spec field",
        );
    }
    out
}

/// Reads one slice's endpoints (`newEndpointSliceInfo`): the first address, kube-proxy's
/// defaults for absent conditions (ready and serving true, terminating false), the hints.
fn slice_endpoints(
    slice: &EndpointSlice,
    ipv4: bool,
    interner: &mut Interner,
    w: &mut Warnings,
) -> Vec<Ep> {
    let mut out = Vec::with_capacity(slice.endpoints.len());
    for (k, e) in slice.endpoints.iter().enumerate() {
        let field = |f: &str| format!("endpoints[{k}].{f}");
        let Some(first) = e.addresses.first() else {
            w.push(field("addresses"), "no address; endpoint left out");
            continue;
        };
        let ip = match crate::parse_ip_sloppy(first) {
            Ok(ip) if ip.is_ipv4() != ipv4 => {
                w.push(
                    field("addresses[0]"),
                    format!("{ip} is not of the slice's addressType; endpoint left out"),
                );
                continue;
            }
            Ok(ip) if usable_unicast(ip) => ip,
            Ok(ip) => {
                w.push(
                    field("addresses[0]"),
                    format!("{ip} is not a unicast address; endpoint left out"),
                );
                continue;
            }
            Err(_) => {
                w.push(
                    field("addresses[0]"),
                    format!("{first:?} is not an IP address; endpoint left out"),
                );
                continue;
            }
        };
        let c = e.conditions.as_ref();
        let mut ready = c.and_then(|c| c.ready).unwrap_or(true);
        let serving = c.and_then(|c| c.serving).unwrap_or(true);
        let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
        if ready && terminating {
            // The EndpointSlice controller never writes this (a terminating pod is not
            // ready); the model cannot hold it, and a terminating endpoint must not take
            // new connections while ready ones exist.
            w.push(
                field("conditions.ready"),
                "ready and terminating; taken as not ready",
            );
            ready = false;
        }
        let hints = e.hints.as_ref();
        let mut names = |list: Option<Vec<&str>>| -> Box<[Arc<str>]> {
            let mut v: Vec<Arc<str>> = list
                .unwrap_or_default()
                .into_iter()
                .map(|n| interner.get(n))
                .collect();
            v.sort();
            v.dedup();
            v.into_boxed_slice()
        };
        let zone_hints = names(
            hints
                .and_then(|h| h.for_zones.as_ref())
                .map(|z| z.iter().map(|z| z.name.as_str()).collect()),
        );
        let node_hints = names(
            hints
                .and_then(|h| h.for_nodes.as_ref())
                .map(|n| n.iter().map(|n| n.name.as_str()).collect()),
        );
        out.push(Ep {
            ip,
            ready,
            serving,
            terminating,
            place: interner.place(
                e.node_name.as_deref().filter(|n| !n.is_empty()),
                e.zone.as_deref().filter(|z| !z.is_empty()),
            ),
            hints: (!zone_hints.is_empty() || !node_hints.is_empty()).then(|| {
                Box::new(Hints {
                    zones: zone_hints,
                    nodes: node_hints,
                })
            }),
        });
    }
    out
}

/// A slice's usable ports (name, number, protocol); the others with a warning.
fn slice_ports(
    slice: &EndpointSlice,
    interner: &mut Interner,
    w: &mut Warnings,
) -> Box<[(Arc<str>, u16, Protocol)]> {
    let mut out = Vec::new();
    for (j, sp) in slice.ports.iter().flatten().enumerate() {
        let Some(name) = &sp.name else {
            w.push(format!("ports[{j}].name"), "no name; port ignored");
            continue;
        };
        let Some(number) = sp
            .port
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
        else {
            w.push(
                format!("ports[{j}].port"),
                "not a port (1-65535); port ignored",
            );
            continue;
        };
        let Some(proto) = protocol(sp.protocol.as_deref()) else {
            w.push(
                format!("ports[{j}].protocol"),
                "unknown protocol; port ignored",
            );
            continue;
        };
        out.push((interner.get(name), number, proto));
    }
    out.into_boxed_slice()
}

/// For each of `ports`, its endpoints by (address, port number), deduplicated across
/// slices as `addEndpoints` does: a later copy replaces an earlier one unless it is
/// terminating (an endpoint moving between slices, or a reused IP of a terminating pod).
/// Slices are taken in name order, where kube-proxy's map order is random.
fn endpoints_by_port(
    families: &BTreeSet<bool>,
    ports: &[SpecPort],
    slices: &[&SliceData],
    w: &mut Warnings,
) -> Vec<BTreeMap<(IpAddr, u16), Ep>> {
    let mut out: Vec<BTreeMap<(IpAddr, u16), Ep>> = ports.iter().map(|_| BTreeMap::new()).collect();
    for slice in slices {
        // FQDN slices are not proxied.
        let Some(ipv4) = slice.ipv4 else {
            continue;
        };
        if !families.contains(&ipv4) {
            continue;
        }
        w.extend(slice.warnings.iter().cloned());
        for (name, number, proto) in &slice.ports {
            // kube-proxy's ServicePortName: service, port name and protocol.
            let Some(pi) = ports
                .iter()
                .position(|p| p.name == **name && p.protocol == *proto)
            else {
                continue;
            };
            let set = &mut out[pi];
            for e in &slice.endpoints {
                let k = (e.ip, *number);
                if !set.contains_key(&k) || !e.terminating {
                    set.insert(k, e.clone());
                }
            }
        }
    }
    out
}

/// The target port number of `port`, the number of each endpoint, and its endpoints (by
/// address). A named port can resolve to different numbers on different pods (a rolling
/// update that moves it; each EndpointSlice carries the number of its endpoints). kube-proxy
/// DNATs every endpoint to its own address and number (`endpointslicecache.go`:
/// `addEndpoints` makes one endpoint per address and slice port), and so does the model: the
/// port's number is the one most endpoints use (the lowest on a tie), the others carry their
/// own ([`Backend::port`]); the map holds each endpoint's number only when they differ (empty:
/// all use the port's). An address listed with several numbers (which the model cannot hold:
/// one backend per address) keeps the port's number, or its lowest, with a warning.
fn resolve_target(
    key: &ObjectKey,
    port: &SpecPort,
    eps: BTreeMap<(IpAddr, u16), Ep>,
    w: &mut Warnings,
) -> (u16, BTreeMap<IpAddr, u16>, Vec<Ep>) {
    let mut counts: BTreeMap<u16, usize> = BTreeMap::new();
    for (_, number) in eps.keys() {
        *counts.entry(*number).or_default() += 1;
    }
    let Some((&number, _)) = counts.iter().max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0))) else {
        // No endpoints: the number does not matter for traffic (there is no backend); the
        // spec's number, or the service port for a named one.
        let n = match &port.target {
            Target::Number(n) => *n,
            Target::Named => port.port,
        };
        return (n, BTreeMap::new(), Vec::new());
    };
    if counts.len() == 1 {
        // One number (the common case): no endpoint carries its own, none is doubled.
        return (number, BTreeMap::new(), eps.into_values().collect());
    }
    let mut numbers: BTreeMap<IpAddr, u16> = BTreeMap::new();
    let mut by_ip: BTreeMap<IpAddr, Ep> = BTreeMap::new();
    let mut doubled: Vec<String> = Vec::new();
    for ((ip, n), e) in eps {
        match numbers.get(&ip) {
            None => {
                numbers.insert(ip, n);
                by_ip.insert(ip, e);
            }
            Some(&kept) => {
                // Keys come in number order: the first is the lowest; the port's number wins.
                if n == number {
                    numbers.insert(ip, n);
                    by_ip.insert(ip, e);
                    doubled.push(format!("{ip} ({kept} and {n}; {n} is used)"));
                } else {
                    doubled.push(format!("{ip} ({kept} and {n}; {kept} is used)"));
                }
            }
        }
    }
    if !doubled.is_empty() {
        let port_name = if port.name.is_empty() {
            port.port.to_string()
        } else {
            port.name.clone()
        };
        w.push(
            format!("spec.ports[{}].targetPort", port.index),
            format!(
                "service {}/{} port {port_name}: an endpoint address has several numbers, the model keeps one per address: {}",
                key.namespace.as_deref().unwrap_or_default(),
                key.name,
                doubled.join(", ")
            ),
        );
    }
    (number, numbers, by_ip.into_values().collect())
}

/// Topology-aware routing (`topology.go`: `CategorizeEndpoints`, `topologyModeFromHints`):
/// when every ready endpoint has hints and one is hinted for this node (`PreferSameNode`) or
/// this node's zone (`PreferSameZone`), Cluster-policy traffic uses only the hinted endpoints.
/// The model keeps one backend list, so local endpoints stay too when the service uses
/// Local-policy endpoints (they serve Local traffic whatever their hints).
fn topology_filter(
    node: &NodeInfo,
    etp: TrafficPolicy,
    itp: TrafficPolicy,
    externally_accessible: bool,
    eps: Vec<Ep>,
) -> Vec<Ep> {
    let itp_local = itp == TrafficPolicy::Local;
    let uses_cluster = !itp_local || externally_accessible;
    let uses_local = itp_local || (etp == TrafficPolicy::Local && externally_accessible);
    if !uses_cluster {
        return eps;
    }
    let node_name: &str = &node.name;
    let zone = node.zone.as_deref().unwrap_or("");
    let ready: Vec<&Ep> = eps.iter().filter(|e| e.ready).collect();
    if ready.is_empty() {
        return eps;
    }
    let all_node_hints = ready.iter().all(|e| !e.node_hints().is_empty());
    let has = |hints: &[Arc<str>], name: &str| hints.iter().any(|h| &**h == name);
    let for_node = ready.iter().any(|e| has(e.node_hints(), node_name));
    let all_zone_hints = ready.iter().all(|e| !e.zone_hints().is_empty());
    let for_zone = !zone.is_empty() && ready.iter().any(|e| has(e.zone_hints(), zone));
    let available: Box<dyn Fn(&Ep) -> bool> = if all_node_hints && for_node {
        Box::new(|e: &Ep| has(e.node_hints(), node_name))
    } else if all_zone_hints && for_zone {
        Box::new(|e: &Ep| has(e.zone_hints(), zone))
    } else {
        return eps;
    };
    eps.into_iter()
        .filter(|e| available(e) || (uses_local && e.node_name().map(|n| &**n) == Some(node_name)))
        .collect()
}

/// The key of the Service an EndpointSlice belongs to: its `kubernetes.io/service-name`
/// label in its namespace (`endpointSliceCacheKeys`).
pub(crate) fn slice_service(slice_key: &ObjectKey, slice: &EndpointSlice) -> Option<ObjectKey> {
    let name = slice
        .metadata
        .labels
        .as_ref()?
        .get(crate::LABEL_SERVICE_NAME)?;
    if name.is_empty() {
        return None;
    }
    Some(ObjectKey {
        kind: Kind::Service,
        namespace: slice_key.namespace.clone(),
        name: Arc::from(name.as_str()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_names_are_labels_no_service_can_have() {
        assert_eq!(split_name("web", 1), "1-web");
        let long = "a".repeat(63);
        let n = split_name(&long, 12);
        assert!(n.len() <= 63 && is_label(&n, 63), "{n}");
        assert_ne!(n, split_name(&format!("{}b", "a".repeat(62)), 12));
        assert!(n.starts_with(|c: char| c.is_ascii_digit()));
    }

    #[test]
    fn cidrs_are_masked_and_need_a_prefix() {
        assert_eq!(parse_cidr(" 10.0.0.1/24 "), "10.0.0.0/24".parse().ok());
        assert_eq!(parse_cidr("10.0.0.1"), None);
        assert_eq!(parse_cidr("10.0.0.0/33"), None);
        assert_eq!(parse_cidr("010.000.001.0/24"), "10.0.1.0/24".parse().ok());
    }

    #[test]
    fn ips_with_leading_zeros_are_decimal() {
        assert_eq!(
            crate::parse_ip_sloppy(" 010.096.000.010 "),
            Ok("10.96.0.10".parse().unwrap())
        );
        assert!(crate::parse_ip_sloppy("256.1.1.1").is_err());
        assert!(crate::parse_ip_sloppy("1.2.3").is_err());
        assert!(crate::parse_ip_sloppy("0001.2.3.4").is_err());
        assert_eq!(
            crate::parse_ip_sloppy("fd00::1"),
            Ok("fd00::1".parse().unwrap())
        );
    }

    #[test]
    fn protocols_are_upper_case() {
        assert_eq!(protocol(None), Some(Protocol::Tcp));
        assert_eq!(protocol(Some("SCTP")), Some(Protocol::Sctp));
        assert_eq!(protocol(Some("tcp")), None);
    }
}
