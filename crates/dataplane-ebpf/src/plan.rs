//! The pure part of the control plane: desired state -> map contents. No kernel needed.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use dataplane_core::{
    eligible_backends, eligible_backends_with_policy, maglev_table, node_address,
    source_range_allow_list, ChangeSet, DesiredState, Eligible, Error, IpFamily, MaglevBackend,
    Node, ObjectName, Protocol, Service, ServicePort, TrafficKind, TrafficPolicy,
};

use crate::maps::{
    family_of, Addr, Be16, DpConfig, SrcRangeData, SvcKey, BE_F_LOCAL, BE_F_TERMINATING,
    CFG_F_CLUSTER_V4, CFG_F_CLUSTER_V6, CFG_F_HAS_V4, CFG_F_HAS_V6, CFG_F_HOST_ROUTING,
    CFG_F_MASQUERADE, CFG_F_MASQ_ALL, CFG_F_POLICY, CIDR_F_CLUSTER, CIDR_F_NODE, CIDR_F_NO_MASQ,
    CIDR_F_POD, CIDR_F_SERVICE, SCOPE_EXTERNAL, SCOPE_EXTERNAL_INSIDE, SCOPE_INTERNAL,
    SVC_F_AFFINITY, SVC_F_DSR, SVC_F_MAGLEV, SVC_F_NO_LOCAL, SVC_F_SNAT, SVC_F_SRC_RANGES,
    SVC_F_WILDCARD,
};

pub(crate) const BACKEND: &str = "ebpf";

/// Random selection repeats each backend by its (gcd-reduced) weight; this caps the slots one
/// frontend may use, weights are scaled down proportionally beyond it.
const MAX_RANDOM_SLOTS: u64 = 1024;

/// A backend as the datapath sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct BackendRef {
    pub addr: Addr,
    pub port: u16,
    pub family: u8,
    pub flags: u8,
}

impl BackendRef {
    pub(crate) fn socket(&self) -> SocketAddr {
        SocketAddr::new(self.addr.ip(self.family), self.port)
    }
}

/// One `dp_svc` entry and the content of its slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FrontendPlan {
    pub id: u32,
    pub flags: u16,
    pub affinity_timeout: u32,
    /// Shared by the frontends of one service that pick from the same backends (a ClusterIP
    /// and its NodePorts, usually): planned, compared and translated once. Indexes into the
    /// plan's [`Frontends::backends`].
    pub slots: Slots,
}

/// The node-wide part of the maps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct NodePlan {
    pub config: DpConfig,
    /// `dp_cidrs`: (mapped address, prefix length of the mapped form) -> `CIDR_F_*` bits.
    pub cidrs: BTreeMap<(Addr, u32), u8>,
}

/// The frontends one plan or update produced, in the order they were planned.
#[derive(Debug, Default)]
pub(crate) struct Frontends {
    pub planned: Planned,
    /// `None`: a full plan, the service map must hold exactly `planned`. `Some`: an update,
    /// these entries of the changed services are gone; every other entry stays.
    pub gone: Option<Vec<SvcKey>>,
    /// The distinct backends the slots index (each once): a slot is 4 bytes, not a 20-byte
    /// [`BackendRef`], which made the slots the largest part of a plan at scale.
    pub backends: Vec<BackendRef>,
}

/// Frontends in the order they were planned, in chunks of [`Planned::CHUNK`]: consumed in
/// order, each chunk is freed as soon as it is passed, so that the plan does not stay whole
/// while the writer builds its translation of it.
#[derive(Debug, Default)]
pub(crate) struct Planned {
    /// Each full but the last.
    chunks: Vec<Vec<(SvcKey, FrontendPlan)>>,
}

impl Planned {
    const CHUNK: usize = 4096;

    /// Room for `n` frontends: the first chunk now, the others as they fill.
    fn with_capacity(n: usize) -> Self {
        let mut chunks = Vec::with_capacity(n.div_ceil(Self::CHUNK));
        if n > 0 {
            chunks.push(Vec::with_capacity(n.min(Self::CHUNK)));
        }
        Planned { chunks }
    }

    fn push(&mut self, f: (SvcKey, FrontendPlan)) {
        match self.chunks.last_mut() {
            Some(c) if c.len() < Self::CHUNK => c.push(f),
            _ => {
                // The first chunk grows as needed (an update plans a few frontends), the
                // others are sized once.
                let mut c = if self.chunks.is_empty() {
                    Vec::new()
                } else {
                    Vec::with_capacity(Self::CHUNK)
                };
                c.push(f);
                self.chunks.push(c);
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.chunks.len().saturating_sub(1) * Self::CHUNK + self.chunks.last().map_or(0, Vec::len)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &(SvcKey, FrontendPlan)> {
        self.chunks.iter().flatten()
    }

    /// The frontends from the `first`-th on.
    fn iter_from(&self, first: usize) -> impl Iterator<Item = &(SvcKey, FrontendPlan)> {
        let (c, o) = (first / Self::CHUNK, first % Self::CHUNK);
        self.chunks
            .get(c)
            .map_or(&[][..], |v| &v[o.min(v.len())..])
            .iter()
            .chain(self.chunks.iter().skip(c + 1).flatten())
    }
}

impl IntoIterator for Planned {
    type Item = (SvcKey, FrontendPlan);
    type IntoIter = std::iter::Flatten<std::vec::IntoIter<Vec<(SvcKey, FrontendPlan)>>>;

    fn into_iter(self) -> Self::IntoIter {
        self.chunks.into_iter().flatten()
    }
}

/// Numbers the backends of a plan as they are planned (see [`Frontends::backends`]).
#[derive(Debug, Default)]
struct BackendList {
    list: Vec<BackendRef>,
    index: HashMap<BackendRef, u32>,
}

impl BackendList {
    fn with_capacity(n: usize) -> Self {
        BackendList {
            list: Vec::with_capacity(n),
            index: HashMap::with_capacity(n),
        }
    }

    fn number(&mut self, b: BackendRef) -> u32 {
        *self.index.entry(b).or_insert_with(|| {
            self.list.push(b);
            (self.list.len() - 1) as u32
        })
    }
}

fn proto_number(p: Protocol) -> u8 {
    p.number()
}

/// Whether the external frontends of `service`'s `port` are served with DSR (both families:
/// the frontend travels in an IPv4 option or an IPv6 destination-options header).
fn dsr_wanted(node: &Node, service: &Service, port: &ServicePort) -> bool {
    service.external_traffic_policy == TrafficPolicy::Cluster
        && service.uses_dsr(node, port.protocol)
}

/// The identity of a service port; its FNV-1a hash is the port's id (probed on a collision).
/// Stable ids let affinity entries and source ranges survive restarts and reorderings.
fn port_identity(service: &ObjectName, port: &ServicePort) -> String {
    format!(
        "{}/{}/{}/{}/{}",
        service.namespace, service.name, port.name, port.protocol, port.port
    )
}

fn fnv1a(text: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in text.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h.max(1)
}

fn backend_ref(state: &DesiredState, b: &dataplane_core::Backend, port: u16) -> BackendRef {
    let mut flags = 0;
    if b.is_local_to(&state.node) {
        flags |= BE_F_LOCAL;
    }
    if b.terminating {
        flags |= BE_F_TERMINATING;
    }
    BackendRef {
        addr: Addr::new(b.ip),
        port,
        family: family_of(&b.ip),
        flags,
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Slots for `backends`: repeated by weight (random) or a Maglev table; the same backends
/// of the same service give the same (shared) slots.
fn slots_for(
    state: &DesiredState,
    service: &Service,
    port: &ServicePort,
    backends: &[&dataplane_core::Backend],
    maglev_size: u32,
    cache: &mut SlotCache,
    numbers: &mut BackendList,
) -> Result<Slots, Error> {
    let mut refs: Vec<(BackendRef, u16)> = backends
        .iter()
        .map(|b| (backend_ref(state, b, b.target_port(port)), b.weight.max(1)))
        .collect();
    refs.sort();
    refs.dedup_by(|a, b| a.0.addr == b.0.addr && a.0.port == b.0.port);
    if let Some((_, slots)) = cache.0.iter().find(|(r, _)| *r == refs) {
        return Ok(Arc::clone(slots));
    }
    let ids: Vec<u32> = refs.iter().map(|(r, _)| numbers.number(*r)).collect();
    let slots: Slots = if service.backend_selection == dataplane_core::BackendSelection::Maglev {
        let mb: Vec<MaglevBackend> = refs
            .iter()
            .map(|(r, w)| MaglevBackend {
                key: r.socket().to_string(),
                weight: *w,
            })
            .collect();
        let table = maglev_table(&mb, maglev_size).map_err(|e| match e {
            // A refusal of the state like any other capacity (nothing is written, and a
            // sync that loaded the objects for it takes them away again).
            dataplane_core::MaglevError::TooManyBackends { backends, size } => {
                Error::CapacityExceeded {
                    what: format!(
                        "maglev table (maglev_table_size) of service {} port {}",
                        service.name, port.port
                    ),
                    needed: backends,
                    capacity: size as usize,
                }
            }
            e => Error::Kernel {
                dataplane: BACKEND.to_owned(),
                operation: format!("building the maglev table of service {}", service.name),
                source: Box::new(e),
            },
        })?;
        table.iter().map(|&i| ids[i as usize]).collect()
    } else {
        let g = refs.iter().fold(0u64, |g, (_, w)| gcd(g, u64::from(*w)));
        let total: u64 = refs.iter().map(|(_, w)| u64::from(*w) / g.max(1)).sum();
        let mut out = Vec::new();
        for ((_, w), id) in refs.iter().zip(&ids) {
            let mut n = u64::from(*w) / g.max(1);
            if total > MAX_RANDOM_SLOTS {
                n = (n * MAX_RANDOM_SLOTS / total).max(1);
            }
            for _ in 0..n {
                out.push(*id);
            }
        }
        out.into()
    };
    cache.0.push((refs, Arc::clone(&slots)));
    Ok(slots)
}

// The planning context is passed along as it is; a struct for it would only rename it.
#[allow(clippy::too_many_arguments)]
fn frontend_for(
    state: &DesiredState,
    service: &Service,
    port: &ServicePort,
    id: u32,
    eligible: Eligible<'_>,
    mut flags: u16,
    maglev_size: u32,
    cache: &mut SlotCache,
    numbers: &mut BackendList,
) -> Result<FrontendPlan, Error> {
    let slots = match eligible {
        Eligible::Backends(b) => slots_for(state, service, port, &b, maglev_size, cache, numbers)?,
        Eligible::NoLocal => {
            flags |= SVC_F_NO_LOCAL;
            Arc::from(Vec::new())
        }
        Eligible::NoBackends => Arc::from(Vec::new()),
    };
    let mut affinity_timeout = 0;
    if let dataplane_core::SessionAffinity::ClientIp { timeout_seconds } = service.session_affinity
    {
        flags |= SVC_F_AFFINITY;
        affinity_timeout = timeout_seconds;
    }
    if service.backend_selection == dataplane_core::BackendSelection::Maglev {
        flags |= SVC_F_MAGLEV;
    }
    Ok(FrontendPlan {
        id,
        flags,
        affinity_timeout,
        slots,
    })
}

fn key(ip: IpAddr, port: u16, proto: u8, scope: u8) -> SvcKey {
    SvcKey {
        addr: Addr::new(ip),
        port: Be16::new(port),
        proto,
        scope,
        family: family_of(&ip),
        pad: [0; 3],
    }
}

fn mapped_prefix(net: &ipnetwork::IpNetwork) -> (Addr, u32) {
    let len = u32::from(net.prefix());
    match net.network() {
        ip @ IpAddr::V4(_) => (Addr::mapped(ip), 96 + len),
        ip @ IpAddr::V6(_) => (Addr::mapped(ip), len),
    }
}

/// The node's CIDRs with their bits; each prefix also carries the bits of every prefix that
/// contains it, so a longest-prefix match answers all questions at once.
fn cidr_table(node: &dataplane_core::Node) -> BTreeMap<(Addr, u32), u8> {
    let mut sets: Vec<(ipnetwork::IpNetwork, u8)> = Vec::new();
    sets.extend(node.cluster_cidrs.iter().map(|c| (*c, CIDR_F_CLUSTER)));
    sets.extend(node.pod_cidrs.iter().map(|c| (*c, CIDR_F_POD)));
    sets.extend(
        node.masquerade
            .non_masquerade_cidrs
            .iter()
            .map(|c| (*c, CIDR_F_NO_MASQ)),
    );
    sets.extend(node.service_cidrs.iter().map(|c| (*c, CIDR_F_SERVICE)));
    sets.extend(
        node.addresses
            .iter()
            .filter_map(|a| ipnetwork::IpNetwork::new(*a, if a.is_ipv4() { 32 } else { 128 }).ok())
            .map(|c| (c, CIDR_F_NODE)),
    );
    let mut out = BTreeMap::new();
    for (net, _) in &sets {
        let bits = sets
            .iter()
            .filter(|(outer, _)| {
                outer.is_ipv4() == net.is_ipv4()
                    && outer.prefix() <= net.prefix()
                    && outer.contains(net.network())
            })
            .fold(0u8, |b, (_, bit)| b | bit);
        out.insert(mapped_prefix(net), bits);
    }
    out
}

/// Slot lists already planned for one service, by the backends (and weights) they came
/// from: a service's frontends share them instead of planning (or, with Maglev, building a
/// table) again.
#[derive(Default)]
struct SlotCache(Vec<(Weighted, Slots)>);

/// Backends with their weights, sorted.
type Weighted = Vec<(BackendRef, u16)>;

/// The slots of a frontend (indexes into the plan's backends), shared between frontends
/// with the same.
pub(crate) type Slots = Arc<[u32]>;

/// Where one service's frontends go.
struct Out<'a> {
    frontends: &'a mut Planned,
    src_ranges: &'a mut Vec<(SrcRangeData, u32)>,
    cache: SlotCache,
    numbers: &'a mut BackendList,
}

/// The frontends of one service port.
fn plan_port(
    out: &mut Out<'_>,
    state: &DesiredState,
    service: &Service,
    port: &ServicePort,
    id: u32,
    maglev_size: u32,
) -> Result<(), Error> {
    let proto = proto_number(port.protocol);
    let family = |ip: &IpAddr| IpFamily::of(ip);
    // Pods and the host reach external frontends with cluster policy (kube-proxy's
    // short-circuit of traffic from inside the node).
    let cluster = |ip: &IpAddr| {
        eligible_backends_with_policy(state, service, TrafficPolicy::Cluster, family(ip))
    };
    let push = |out: &mut Out<'_>, k: SvcKey, e: Eligible<'_>, flags: u16| {
        let f = frontend_for(
            state,
            service,
            port,
            id,
            e,
            flags,
            maglev_size,
            &mut out.cache,
            out.numbers,
        )?;
        out.frontends.push((k, f));
        Ok::<(), Error>(())
    };
    // masquerade.allServices (kube-proxy's --masquerade-all) masquerades every client except
    // those whose address the service promises to keep (outside clients under
    // externalTrafficPolicy Local, DSR). Without it the datapath decides per packet:
    // ClusterIP clients outside the cluster CIDRs (the node, outside) and hairpins.
    let all = state.node.masquerade.all_services;
    let all_snat = if all { SVC_F_SNAT } else { 0 };
    for ip in &service.cluster_ips {
        // internalTrafficPolicy governs every client, outside ones too (kube-proxy's
        // clusterPolicyChain / localPolicyChain for the ClusterIP do not look at the source).
        let e = eligible_backends(state, service, port, TrafficKind::Internal, family(ip));
        push(out, key(*ip, port.port, proto, SCOPE_INTERNAL), e, all_snat)?;
    }
    // From outside, Cluster policy sends clients to remote backends: with SNAT to this node,
    // or with DSR (the datapath still answers local backends itself). Local keeps the client
    // address.
    let outside = match service.external_traffic_policy {
        TrafficPolicy::Cluster if dsr_wanted(&state.node, service, port) => SVC_F_DSR,
        TrafficPolicy::Cluster => SVC_F_SNAT,
        TrafficPolicy::Local => 0,
    };
    // From this node's pods: masqueraded under Cluster policy; under Local the pod keeps its
    // address like a pod reaching a ClusterIP (pkg/proxy/nftables/proxier.go, the external
    // chain's "short-circuit pod traffic" rule), hairpins aside (the datapath masquerades
    // those). The node itself is masqueraded by the datapath whatever this says, on
    // dp_to_uplink (the same chain's "masquerade local traffic").
    let inside = if service.external_traffic_policy == TrafficPolicy::Cluster || all {
        SVC_F_SNAT
    } else {
        0
    };
    // loadBalancerSourceRanges of the LB IP's family, for every client of the LB IP (pods and
    // the node included); a family without ranges is unrestricted.
    let allow_v4 = source_range_allow_list(state, service, IpFamily::V4);
    let allow_v6 = source_range_allow_list(state, service, IpFamily::V6);
    let allow = |ip: &IpAddr| match family(ip) {
        IpFamily::V4 => allow_v4.as_ref(),
        IpFamily::V6 => allow_v6.as_ref(),
    };
    let mut external: Vec<(IpAddr, u16, u16)> = Vec::new();
    for ip in &service.external_ips {
        external.push((*ip, port.port, 0));
    }
    for ip in &service.load_balancer_ips {
        let ranges = if allow(ip).is_some() {
            SVC_F_SRC_RANGES
        } else {
            0
        };
        external.push((*ip, port.port, ranges));
    }
    if let Some(np) = port.node_port {
        for ip in &state.node.addresses {
            external.push((*ip, np, 0));
        }
    }
    for (ip, fport, ranges) in external {
        let e = eligible_backends(state, service, port, TrafficKind::External, family(&ip));
        push(
            out,
            key(ip, fport, proto, SCOPE_EXTERNAL),
            e,
            outside | ranges,
        )?;
        push(
            out,
            key(ip, fport, proto, SCOPE_EXTERNAL_INSIDE),
            cluster(&ip),
            inside | ranges,
        )?;
    }
    for fam in [IpFamily::V4, IpFamily::V6] {
        let has_lb_ip = service.load_balancer_ips.iter().any(|ip| family(ip) == fam);
        let list = if fam == IpFamily::V4 {
            &allow_v4
        } else {
            &allow_v6
        };
        if let (true, Some(list)) = (has_lb_ip, list) {
            for net in list {
                let (addr, len) = mapped_prefix(net);
                let entry = (SrcRangeData { svc_id: id, addr }, 32 + len);
                if !out.src_ranges.contains(&entry) {
                    out.src_ranges.push(entry);
                }
            }
        }
    }
    Ok(())
}

/// The keys [`plan_port`] and the wildcards give `service`, in the order they are planned.
/// The planner keeps no keys per service: a removed or changed service's keys are derived
/// again from the service as it was (kept lists would be a large part of the planner's memory).
fn frontend_keys(node: &Node, service: &Service, out: &mut impl FnMut(SvcKey)) {
    for port in &service.ports {
        let proto = proto_number(port.protocol);
        for ip in &service.cluster_ips {
            out(key(*ip, port.port, proto, SCOPE_INTERNAL));
        }
        let node_ports = port
            .node_port
            .map(|np| node.addresses.iter().map(move |ip| (*ip, np)))
            .into_iter()
            .flatten();
        let external = service
            .external_ips
            .iter()
            .chain(&service.load_balancer_ips)
            .map(|ip| (*ip, port.port))
            .chain(node_ports);
        for (ip, fport) in external {
            out(key(ip, fport, proto, SCOPE_EXTERNAL));
            out(key(ip, fport, proto, SCOPE_EXTERNAL_INSIDE));
        }
    }
    if !service.ports.is_empty() {
        for ip in &service.cluster_ips {
            out(wildcard(*ip).0);
        }
    }
}

/// How many entries [`plan_port`] and the wildcards give `service`.
fn frontend_count(node: &Node, service: &Service) -> usize {
    let mut n = 0;
    frontend_keys(node, service, &mut |_| n += 1);
    n
}

/// The wildcard entry of a ClusterIP: a port no service port uses is rejected.
fn wildcard(ip: IpAddr) -> (SvcKey, FrontendPlan) {
    (
        key(ip, 0, 0, SCOPE_INTERNAL),
        FrontendPlan {
            id: 0,
            flags: SVC_F_WILDCARD,
            affinity_timeout: 0,
            slots: Arc::from(Vec::new()),
        },
    )
}

/// The node-wide part of the plan: masquerade addresses and CIDRs.
fn plan_node(state: &DesiredState) -> NodePlan {
    let mut out = NodePlan::default();
    if let Some(IpAddr::V4(v4)) = node_address(state, IpFamily::V4) {
        out.config.node_v4 = v4.octets();
        out.config.flags |= CFG_F_HAS_V4;
    }
    if let Some(IpAddr::V6(v6)) = node_address(state, IpFamily::V6) {
        out.config.node_v6 = v6.octets();
        out.config.flags |= CFG_F_HAS_V6;
    }
    if state.node.masquerade.enabled {
        out.config.flags |= CFG_F_MASQUERADE;
        if state.node.masquerade.all {
            out.config.flags |= CFG_F_MASQ_ALL;
        }
    }
    // kube-proxy masquerades ClusterIP clients outside the cluster CIDRs only for a family it
    // has a local detector (a cluster CIDR) for.
    for (family, flag) in [
        (IpFamily::V4, CFG_F_CLUSTER_V4),
        (IpFamily::V6, CFG_F_CLUSTER_V6),
    ] {
        if state
            .node
            .cluster_cidrs
            .iter()
            .any(|c| IpFamily::of(&c.ip()) == family)
        {
            out.config.flags |= flag;
        }
    }
    out.config.mtu = state.node.mtu;
    out.cidrs = cidr_table(&state.node);
    out
}

/// Bounds of a full plan, known before it is made (for sizing tables once).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct FullBounds {
    /// Frontends: exact unless services share a ClusterIP (its wildcard is planned once).
    pub frontends: usize,
    /// Distinct backends: backends x ports of each service (exact unless services share pods).
    pub backends: usize,
}

/// The bounds of a full plan of `state`.
pub(crate) fn full_bounds(state: &DesiredState) -> FullBounds {
    let with_ports = || state.services.iter().filter(|s| !s.ports.is_empty());
    FullBounds {
        frontends: state
            .services
            .iter()
            .map(|s| frontend_count(&state.node, s))
            .sum(),
        backends: with_ports()
            .map(|s| s.backends.len().saturating_mul(s.ports.len()))
            .fold(0usize, usize::saturating_add),
    }
}

/// Where [`Planner::full_chunked`] puts the frontends it plans.
pub(crate) trait PlanSink {
    /// Called once, before any chunk.
    fn expect(&mut self, bounds: FullBounds);
    /// The next chunk of frontends, in plan order; `backends`: what their slots index so far
    /// (it only grows).
    fn take(&mut self, chunk: Vec<(SvcKey, FrontendPlan)>, backends: &[BackendRef]);
}

/// Each programmed service's fingerprint, by name (core's, so that the report's counts mean
/// the same on every dataplane).
pub(crate) type Fingerprints = dataplane_core::ServiceFingerprints;

use dataplane_core::service_fingerprint as fingerprint;

/// What one service contributed to the plan, so that it can be taken out again: 24 bytes
/// and no allocation for a service with one port and no source ranges (the common case; the
/// planner keeps one per service).
#[derive(Debug, Clone, Default)]
struct ServiceEntries {
    /// Hash of the whole service, to tell a full sync which services changed.
    fingerprint: u64,
    /// The first port's service-port id; 0 (never an id): the service has no ports.
    first_id: u32,
    /// The other ports' ids and the source ranges, when there are any.
    more: Option<Box<MoreEntries>>,
}

/// The rarer part of [`ServiceEntries`].
#[derive(Debug, Clone, Default)]
struct MoreEntries {
    ids: Vec<u32>,
    src_ranges: Vec<(SrcRangeData, u32)>,
}

impl ServiceEntries {
    fn new(
        fingerprint: u64,
        first_id: u32,
        ids: Vec<u32>,
        src_ranges: Vec<(SrcRangeData, u32)>,
    ) -> Self {
        let more = (!ids.is_empty() || !src_ranges.is_empty())
            .then(|| Box::new(MoreEntries { ids, src_ranges }));
        ServiceEntries {
            fingerprint,
            first_id,
            more,
        }
    }

    /// The service-port ids, in port order.
    fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        let more = self.more.as_ref().map_or(&[][..], |m| &m.ids[..]);
        (self.first_id != 0)
            .then_some(self.first_id)
            .into_iter()
            .chain(more.iter().copied())
    }

    fn src_ranges(&self) -> &[(SrcRangeData, u32)] {
        self.more.as_ref().map_or(&[][..], |m| &m.src_ranges[..])
    }
}

/// Keeps what the last applied state's services hold in the maps (their ids and source ranges,
/// not the entries themselves: the writer's mirror has those; their keys follow from the
/// service, see [`frontend_keys`]), so that an incremental
/// apply plans in proportion to the change, not to the number of services.
#[derive(Debug, Clone, Default)]
pub(crate) struct Planner {
    pub node: NodePlan,
    /// Source ranges: (key data, prefix length including the 32 bits of the id).
    pub src_ranges: BTreeSet<(SrcRangeData, u32)>,
    by_service: HashMap<ObjectName, ServiceEntries>,
    used_ids: HashSet<u32>,
    /// Services holding each ClusterIP wildcard entry: services may share a ClusterIP on
    /// different ports, and the entry stays while one of them does.
    wildcards: HashMap<SvcKey, u32>,
    /// The service-port ids the last [`Planner::update_in_place`] took from the services it
    /// removed or replaced (their `dp_names` entries go unless a new service took them).
    released: Vec<u32>,
}

impl Planner {
    /// Sets or clears host routing in the node-wide configuration (an `EbpfConfig` setting,
    /// not part of the state).
    /// Whether the state has network policies (`CFG_F_POLICY`: the programs drop pods'
    /// forged sources then, as the reference model does).
    pub(crate) fn set_policy(&mut self, on: bool) {
        if on {
            self.node.config.flags |= CFG_F_POLICY;
        } else {
            self.node.config.flags &= !CFG_F_POLICY;
        }
    }

    /// The node-wide settings that are no part of the state's services: host routing (a
    /// setting), NetworkPolicy present, the flow events the readers asked for and the
    /// events' rate limits (a setting).
    pub(crate) fn set_flags(
        &mut self,
        host_routing: bool,
        policy: bool,
        events: u32,
        limits: [crate::maps::EvRate; crate::maps::EV_KIND_MAX as usize],
    ) {
        self.set_host_routing(host_routing);
        self.set_policy(policy);
        self.set_event_flags(events);
        self.node.config.ev_limits = limits;
    }

    /// Sets the flow-event flags (`CFG_F_EV_*`, what the last `events()` reader asked for:
    /// a process setting, not the state's) in the node-wide configuration.
    pub(crate) fn set_event_flags(&mut self, flags: u32) {
        let all = crate::maps::CFG_F_EV_NEW_CONN | crate::maps::CFG_F_EV_POLICY;
        self.node.config.flags = (self.node.config.flags & !all) | (flags & all);
    }

    pub(crate) fn set_host_routing(&mut self, on: bool) {
        if on {
            self.node.config.flags |= CFG_F_HOST_ROUTING;
        } else {
            self.node.config.flags &= !CFG_F_HOST_ROUTING;
        }
    }

    /// Plans `state` from scratch. Service-port ids are assigned in name order, so the same
    /// state gives the same ids in every process.
    #[cfg(test)]
    pub(crate) fn full(state: &DesiredState, maglev_size: u32) -> Result<(Self, Frontends), Error> {
        struct Collect(Frontends);
        impl PlanSink for Collect {
            fn expect(&mut self, bounds: FullBounds) {
                self.0.planned = Planned::with_capacity(bounds.frontends);
            }
            fn take(&mut self, chunk: Vec<(SvcKey, FrontendPlan)>, _: &[BackendRef]) {
                self.0.planned.chunks.push(chunk);
            }
        }
        let mut out = Collect(Frontends::default());
        let (p, backends) = Self::full_chunked(state, maglev_size, &mut out)?;
        out.0.planned.chunks.retain(|c| !c.is_empty());
        out.0.backends = backends;
        Ok((p, out.0))
    }

    /// Plans `state` from scratch into `sink`, a chunk of [`Planned::CHUNK`] frontends at a
    /// time (in plan order), so that the plan is never whole: the sink translates each chunk
    /// and drops it before the next is planned. Returns the planner and the plan's distinct
    /// backends (what the chunks' slots index). Service-port ids are assigned in name order,
    /// so the same state gives the same ids in every process.
    pub(crate) fn full_chunked(
        state: &DesiredState,
        maglev_size: u32,
        sink: &mut dyn PlanSink,
    ) -> Result<(Self, Vec<BackendRef>), Error> {
        // The tables are sized once: grown by doubling, their smaller copies stay behind as
        // free heap at the peak of the apply.
        let with_ports = || state.services.iter().filter(|s| !s.ports.is_empty());
        let mut p = Planner {
            node: plan_node(state),
            by_service: HashMap::with_capacity(state.services.len()),
            used_ids: HashSet::with_capacity(with_ports().map(|s| s.ports.len()).sum()),
            wildcards: HashMap::with_capacity(with_ports().map(|s| s.cluster_ips.len()).sum()),
            ..Planner::default()
        };
        let bounds = full_bounds(state);
        sink.expect(bounds);
        let mut services: Vec<&Service> = state.services.iter().collect();
        services.sort_by(|a, b| a.name.cmp(&b.name));
        let mut planned = Planned::with_capacity(bounds.frontends);
        // Distinct backends: at most the bound, often far fewer (services share pods).
        let mut numbers = BackendList::with_capacity(bounds.backends.min(1 << 16));
        let mut count = 0;
        for service in services {
            p.add_service(state, service, maglev_size, &mut planned, &mut numbers)?;
            // Full chunks go to the sink between services (a service's frontends are
            // checked against its keys while they are in `planned`).
            if planned.chunks.len() > 1 {
                let last = planned.chunks.pop().unwrap_or_default();
                for chunk in std::mem::replace(&mut planned.chunks, vec![last]) {
                    count += chunk.len();
                    sink.take(chunk, &numbers.list);
                }
            }
        }
        for chunk in planned.chunks {
            count += chunk.len();
            sink.take(chunk, &numbers.list);
        }
        // Less only where services share a ClusterIP: its wildcard is planned once.
        debug_assert!(
            count <= bounds.frontends,
            "frontend_count disagrees with plan_port"
        );
        Ok((p, numbers.list))
    }

    /// Plans the services `changes` touches, against `state`'s node (the node of this
    /// planner's state; a change of the node needs [`Planner::full`]); on error the planner is
    /// unusable (plan afresh).
    pub(crate) fn update_in_place(
        &mut self,
        state: &DesiredState,
        changes: &ChangeSet,
        maglev_size: u32,
    ) -> Result<Frontends, Error> {
        if changes.node.is_some() {
            // Every service is planned against the node: that takes all of them.
            return Err(Error::FullSyncRequired);
        }
        if !self.agrees_with(changes) {
            return Err(Error::FullSyncRequired);
        }
        let mut gone = Vec::new();
        self.released.clear();
        for (name, change) in &changes.services {
            if let Some(previous) = &change.previous {
                self.remove_service(&state.node, name, previous, &mut gone);
            }
        }
        let mut planned = Planned::default();
        let mut numbers = BackendList::default();
        for change in changes.services.values() {
            // The change carries the service as the state now holds it: no search.
            if let Some(service) = &change.current {
                self.add_service(state, service, maglev_size, &mut planned, &mut numbers)?;
            }
        }
        let kept: HashSet<SvcKey> = planned.iter().map(|(k, _)| *k).collect();
        gone.retain(|k| !kept.contains(k));
        Ok(Frontends {
            planned,
            gone: Some(gone),
            backends: numbers.list,
        })
    }

    /// The service-port ids of service `name` (none when it is not planned).
    pub(crate) fn ids_of(&self, name: &ObjectName) -> Vec<u32> {
        self.by_service
            .get(name)
            .map(|e| e.ids().collect())
            .unwrap_or_default()
    }

    /// Each planned service-port id and its service, and how many there are.
    pub(crate) fn service_ids(&self) -> (usize, impl Iterator<Item = (u32, &ObjectName)>) {
        let ids = self
            .by_service
            .iter()
            .flat_map(|(name, e)| e.ids().map(move |id| (id, name)));
        (self.used_ids.len(), ids)
    }

    /// The ids the last [`Planner::update_in_place`] released (none after [`Planner::full`]).
    pub(crate) fn released_ids(&self) -> &[u32] {
        &self.released
    }

    /// Service-port id -> service name (for `flows()`; built per call, not kept).
    pub(crate) fn names(&self) -> HashMap<u32, &ObjectName> {
        self.by_service
            .iter()
            .flat_map(|(name, e)| e.ids().map(move |id| (id, name)))
            .collect()
    }

    /// Services of this plan that are new or differ from `previous` (the fingerprints of
    /// the services programmed before; `None`: nothing was), and services of `previous`
    /// that are gone.
    pub(crate) fn changed_since(&self, previous: Option<&Fingerprints>) -> (usize, usize) {
        let Some(prev) = previous else {
            return (self.by_service.len(), 0);
        };
        let now: Fingerprints = self
            .by_service
            .iter()
            .map(|(name, e)| (name.clone(), e.fingerprint))
            .collect();
        now.counts_since(prev)
    }

    /// The fingerprint of each planned service, the plan dropped (names are moved, not
    /// copied).
    pub(crate) fn into_fingerprints(self) -> Fingerprints {
        self.by_service
            .into_iter()
            .map(|(name, e)| (name, e.fingerprint))
            .collect()
    }

    /// The fingerprints of the services as they were before `changes`, from this plan, which
    /// holds `changes` in part or in whole (an incremental sync that failed half way): the
    /// services `changes` touches are taken from its `previous` sides.
    pub(crate) fn fingerprints_before(self, changes: &ChangeSet) -> Fingerprints {
        let mut out = self.into_fingerprints();
        for (name, change) in &changes.services {
            out.set(name.clone(), change.previous.as_ref().map(fingerprint));
        }
        out
    }

    /// Whether each changed service's `previous` is the service this planner holds (by its
    /// fingerprint), so that its keys can be derived from it. A change set that is not a diff
    /// from the applied state fails this, and nothing is touched.
    pub(crate) fn agrees_with(&self, changes: &ChangeSet) -> bool {
        changes.services.iter().all(|(name, change)| {
            match (self.by_service.get(name), &change.previous) {
                (Some(e), Some(prev)) => prev.name == *name && e.fingerprint == fingerprint(prev),
                (None, None) => true,
                _ => false,
            }
        })
    }

    /// Takes `previous` (the service named `name` as it was planned, see
    /// [`Planner::agrees_with`]) out of the plan; its keys go to `gone`.
    fn remove_service(
        &mut self,
        node: &Node,
        name: &ObjectName,
        previous: &Service,
        gone: &mut Vec<SvcKey>,
    ) {
        let Some(entries) = self.by_service.remove(name) else {
            return;
        };
        frontend_keys(node, previous, &mut |k| {
            if let Some(n) = self.wildcards.get_mut(&k) {
                *n -= 1;
                if *n > 0 {
                    return;
                }
                self.wildcards.remove(&k);
            }
            gone.push(k);
        });
        for r in entries.src_ranges() {
            self.src_ranges.remove(r);
        }
        for id in entries.ids() {
            self.used_ids.remove(&id);
        }
        self.released.extend(entries.ids());
    }

    fn add_service(
        &mut self,
        state: &DesiredState,
        service: &Service,
        maglev_size: u32,
        planned: &mut Planned,
        numbers: &mut BackendList,
    ) -> Result<(), Error> {
        let first = planned.len();
        let mut src_ranges = Vec::new();
        let (mut first_id, mut more_ids) = (0, Vec::new());
        let mut out = Out {
            frontends: planned,
            src_ranges: &mut src_ranges,
            cache: SlotCache::default(),
            numbers,
        };
        for port in &service.ports {
            let mut id = fnv1a(&port_identity(&service.name, port));
            while !self.used_ids.insert(id) {
                id = id.wrapping_add(1).max(1);
            }
            if first_id == 0 {
                first_id = id;
            } else {
                more_ids.push(id);
            }
            plan_port(&mut out, state, service, port, id, maglev_size)?;
        }
        if !service.ports.is_empty() {
            for ip in &service.cluster_ips {
                // Planned once, by the first service holding it: the plan has no duplicate
                // keys (an update whose services share it with a kept one leaves it).
                let w = wildcard(*ip);
                let holders = self.wildcards.entry(w.0).or_insert(0);
                *holders += 1;
                if *holders == 1 {
                    planned.push(w);
                }
            }
        }
        debug_assert!(
            {
                // A wildcard is planned by the first service holding it only.
                let mut keys = Vec::new();
                frontend_keys(&state.node, service, &mut |k| {
                    if k.proto != 0 || self.wildcards.get(&k) == Some(&1) {
                        keys.push(k);
                    }
                });
                keys.iter().eq(planned.iter_from(first).map(|(k, _)| k))
            },
            "frontend_keys disagrees with plan_port"
        );
        self.src_ranges.extend(src_ranges.iter().copied());
        let entries = ServiceEntries::new(fingerprint(service), first_id, more_ids, src_ranges);
        self.by_service.insert(service.name.clone(), entries);
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::{IpAddr, SocketAddr};

    use dataplane_core::{
        diff, Backend, BackendSelection, DesiredState, Interfaces, Node, ObjectName, Protocol,
        Service, ServicePort, TrafficPolicy,
    };

    use std::collections::{BTreeMap, BTreeSet};

    use std::sync::Arc;

    use super::{BackendRef, Frontends, Planner, SvcKey};
    use crate::maps::{
        Addr, Be16, SrcRangeData, CFG_F_CLUSTER_V4, CFG_F_CLUSTER_V6, CIDR_F_SERVICE,
        SCOPE_EXTERNAL, SCOPE_EXTERNAL_INSIDE, SCOPE_INTERNAL, SCOPE_RETIRED_INTERNAL_OUTSIDE,
        SVC_F_DSR, SVC_F_NO_LOCAL, SVC_F_SNAT, SVC_F_SRC_RANGES,
    };

    /// A node for the unit tests (`node-a`, 172.18.0.2, pods 10.244.0.0/24).
    pub(crate) fn node() -> Node {
        Node {
            name: "node-a".to_owned(),
            addresses: vec!["172.18.0.2".parse().unwrap()],
            pod_cidrs: vec!["10.244.0.0/24".parse().unwrap()],
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            service_cidrs: vec!["10.96.0.0/12".parse().unwrap()],
            node_port_range: dataplane_core::PortRange::default(),
            interfaces: Interfaces {
                uplink: "eth0".to_owned(),
            },
            masquerade: dataplane_core::Masquerade::default(),
            mtu: 1500,
            external_mode: dataplane_core::ExternalMode::Snat,
        }
    }

    fn svc(name: &str, ip: &str, backends: &[(&str, u16, &str)]) -> Service {
        let mut s = Service::new(ObjectName::new("default", name));
        s.cluster_ips = vec![ip.parse().unwrap()];
        s.ports = vec![ServicePort {
            name: "http".to_owned(),
            protocol: Protocol::Tcp,
            port: 80,
            target_port: 8080,
            node_port: Some(30080),
        }];
        s.backends = backends
            .iter()
            .map(|(ip, weight, node)| {
                let mut b = Backend::new(ip.parse().unwrap());
                b.weight = *weight;
                b.node_name = Some((*node).into());
                b
            })
            .collect();
        s
    }

    fn key(ip: &str, port: u16, scope: u8) -> SvcKey {
        let ip: IpAddr = ip.parse().unwrap();
        SvcKey {
            addr: Addr::new(ip),
            port: Be16::new(port),
            proto: 6,
            scope,
            family: 4,
            pad: [0; 3],
        }
    }

    type ResolvedSlots = Arc<[BackendRef]>;

    /// A planned frontend with its slots as backends (plans number their backends each
    /// their own way: compared resolved).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(crate) struct Resolved {
        pub id: u32,
        pub flags: u16,
        pub affinity_timeout: u32,
        pub slots: ResolvedSlots,
    }

    /// The frontends of `f` with their slots resolved; frontends that share their slots
    /// share the resolved ones.
    pub(crate) fn resolve(f: Frontends) -> Vec<(SvcKey, Resolved)> {
        let mut done: Vec<(Arc<[u32]>, ResolvedSlots)> = Vec::new();
        f.planned
            .into_iter()
            .map(|(k, p)| {
                let slots =
                    if let Some((_, r)) = done.iter().find(|(s, _)| Arc::ptr_eq(s, &p.slots)) {
                        Arc::clone(r)
                    } else {
                        let r: ResolvedSlots =
                            p.slots.iter().map(|i| f.backends[*i as usize]).collect();
                        done.push((Arc::clone(&p.slots), Arc::clone(&r)));
                        r
                    };
                let r = Resolved {
                    id: p.id,
                    flags: p.flags,
                    affinity_timeout: p.affinity_timeout,
                    slots,
                };
                (k, r)
            })
            .collect()
    }

    /// The service map a full plan of `st` asks for.
    fn plan(st: &DesiredState, maglev: u32) -> BTreeMap<SvcKey, Resolved> {
        let (_, f) = Planner::full(st, maglev).unwrap();
        assert!(f.gone.is_none());
        resolve(f).into_iter().collect()
    }

    /// The service map of a full plan of `old` with the in-place update to `new` applied.
    fn plan_by_update(old: &DesiredState, new: &DesiredState) -> BTreeMap<SvcKey, Resolved> {
        let (mut planner, _) = Planner::full(old, 251).unwrap();
        let mut update = planner.update_in_place(new, &diff(old, new), 251).unwrap();
        let mut map = plan(old, 251);
        for k in update.gone.take().unwrap() {
            map.remove(&k);
        }
        map.extend(resolve(update));
        map
    }

    fn state(services: Vec<Service>) -> DesiredState {
        let mut s = DesiredState::new(node());
        s.services = services;
        s
    }

    #[test]
    fn weights_repeat_backends_in_random_slots() {
        let st = state(vec![svc(
            "web",
            "10.96.0.10",
            &[("10.244.1.5", 3, "node-b"), ("10.244.1.6", 1, "node-b")],
        )]);
        let p = plan(&st, 251);
        let f = &p[&key("10.96.0.10", 80, SCOPE_INTERNAL)];
        let heavy = f
            .slots
            .iter()
            .filter(|b| b.addr == Addr::new("10.244.1.5".parse().unwrap()))
            .count();
        assert_eq!(
            (f.slots.len(), heavy),
            (4, 3),
            "weight 3:1 gives 3 of 4 slots"
        );
    }

    /// A backend's own target port is the port of its `dp_backends` value on every frontend
    /// (ClusterIP, NodePort inside and outside); the others keep the service port's; a change
    /// of it alone is an update that plans the same as a full plan.
    #[test]
    fn a_backends_own_port_is_its_backend_value_port() {
        let mut web = svc(
            "web",
            "10.96.0.10",
            &[("10.244.1.5", 1, "node-b"), ("10.244.1.6", 1, "node-b")],
        );
        web.backends[1].port = Some(9090);
        let old = state(vec![web]);
        let p = plan(&old, 251);
        let ports = |f: &Resolved| -> BTreeSet<SocketAddr> {
            f.slots.iter().map(super::BackendRef::socket).collect()
        };
        let want: BTreeSet<SocketAddr> = ["10.244.1.5:8080", "10.244.1.6:9090"]
            .into_iter()
            .map(|a| a.parse().unwrap())
            .collect();
        for k in [
            key("10.96.0.10", 80, SCOPE_INTERNAL),
            key("172.18.0.2", 30080, SCOPE_EXTERNAL),
            key("172.18.0.2", 30080, super::SCOPE_EXTERNAL_INSIDE),
        ] {
            assert_eq!(ports(&p[&k]), want, "{k:?}");
        }
        let mut new = old.clone();
        new.services[0].backends[1].port = Some(9091);
        let map = plan_by_update(&old, &new);
        assert_eq!(map, plan(&new, 251));
        let moved = &map[&key("10.96.0.10", 80, SCOPE_INTERNAL)];
        assert!(ports(moved).contains(&"10.244.1.6:9091".parse().unwrap()));
    }

    #[test]
    fn maglev_fills_the_table_and_local_policy_without_local_backend_drops() {
        let mut web = svc("web", "10.96.0.10", &[("10.244.1.5", 1, "node-b")]);
        web.backend_selection = BackendSelection::Maglev;
        web.external_traffic_policy = TrafficPolicy::Local;
        let p = plan(&state(vec![web]), 251);
        let cluster = &p[&key("10.96.0.10", 80, SCOPE_INTERNAL)];
        assert_eq!(cluster.slots.len(), 251);
        let inside = &p[&key("172.18.0.2", 30080, super::SCOPE_EXTERNAL_INSIDE)];
        assert!(
            std::sync::Arc::ptr_eq(&cluster.slots, &inside.slots),
            "frontends with the same backends share one table"
        );
        let np = &p[&key("172.18.0.2", 30080, SCOPE_EXTERNAL)];
        assert!(np.slots.is_empty());
        assert_eq!(np.flags & (SVC_F_NO_LOCAL | SVC_F_SNAT), SVC_F_NO_LOCAL);
    }

    #[test]
    fn incremental_update_equals_full_plan() {
        let old = state(vec![
            svc("a", "10.96.0.1", &[("10.244.1.5", 1, "node-b")]),
            svc("b", "10.96.0.2", &[("10.244.1.6", 1, "node-a")]),
            svc("c", "10.96.0.3", &[]),
        ]);
        let mut new = old.clone();
        new.services[0]
            .backends
            .push(Backend::new("10.244.1.7".parse().unwrap()));
        new.services.remove(1);
        new.services
            .push(svc("d", "10.96.0.4", &[("10.244.1.8", 2, "node-a")]));
        let changes = diff(&old, &new);
        let (mut planner, _) = Planner::full(&old, 251).unwrap();
        let mut update = planner.update_in_place(&new, &changes, 251).unwrap();
        // The old service map with the update applied is the new state's.
        let mut map = plan(&old, 251);
        for k in update.gone.take().unwrap() {
            assert!(map.remove(&k).is_some(), "only entries that were there go");
        }
        map.extend(resolve(update));
        assert_eq!(map, plan(&new, 251));
        let (full, _) = Planner::full(&new, 251).unwrap();
        assert_eq!(
            (planner.names(), &planner.src_ranges),
            (full.names(), &full.src_ranges)
        );
    }

    #[test]
    fn a_change_set_that_is_not_a_diff_from_the_plan_is_refused() {
        let old = state(vec![svc("a", "10.96.0.1", &[("10.244.1.5", 1, "node-b")])]);
        let mut new = old.clone();
        new.services[0].backends[0].weight = 2;
        let (mut planner, _) = Planner::full(&old, 251).unwrap();
        // `previous` is not the service the planner holds: its keys cannot be derived.
        let mut wrong = diff(&old, &new);
        for c in wrong.services.values_mut() {
            c.previous.as_mut().unwrap().ports[0].port = 81;
        }
        assert!(!planner.agrees_with(&wrong));
        let mut added = diff(&old, &new);
        for c in added.services.values_mut() {
            c.previous = None;
        }
        assert!(
            !planner.agrees_with(&added),
            "an existing service filed as new"
        );
        assert!(matches!(
            planner.update_in_place(&new, &wrong, 251),
            Err(dataplane_core::Error::FullSyncRequired)
        ));
        assert!(planner.agrees_with(&diff(&old, &new)));
    }

    #[test]
    fn a_shared_cluster_ip_keeps_its_wildcard_while_one_service_holds_it() {
        let mut a = svc("a", "10.96.0.1", &[("10.244.1.5", 1, "node-b")]);
        a.ports[0].node_port = None;
        let mut b = a.clone();
        b.name = ObjectName::new("default", "b");
        b.ports[0].port = 81;
        let old = state(vec![a, b]);
        let mut new = old.clone();
        new.services.remove(0);
        let (mut planner, _) = Planner::full(&old, 251).unwrap();
        let update = planner
            .update_in_place(&new, &diff(&old, &new), 251)
            .unwrap();
        let wildcard = SvcKey {
            port: Be16::new(0),
            proto: 0,
            ..key("10.96.0.1", 0, SCOPE_INTERNAL)
        };
        let gone = update.gone.unwrap();
        assert_eq!(gone, vec![key("10.96.0.1", 80, SCOPE_INTERNAL)]);
        assert!(!gone.contains(&wildcard));
        assert!(plan(&new, 251).contains_key(&wildcard));
    }

    fn key6(ip: &str, port: u16, scope: u8) -> SvcKey {
        SvcKey {
            family: 6,
            ..key(ip, port, scope)
        }
    }

    /// The `dp_srcrange` entries of `st`'s plan, as (service-port id, network).
    fn ranges(st: &DesiredState) -> Vec<(u32, ipnetwork::IpNetwork)> {
        let (planner, _) = Planner::full(st, 251).unwrap();
        planner
            .src_ranges
            .iter()
            .map(|(SrcRangeData { svc_id, addr }, len)| {
                let ip = std::net::Ipv6Addr::from(addr.0);
                let net = match ip.to_ipv4_mapped() {
                    Some(v4) => ipnetwork::IpNetwork::new(v4.into(), (len - 32 - 96) as u8),
                    None => ipnetwork::IpNetwork::new(ip.into(), (len - 32) as u8),
                };
                (*svc_id, net.unwrap())
            })
            .collect()
    }

    #[test]
    fn source_ranges_bind_every_client_of_their_family_and_allow_the_node() {
        let mut lb = svc("lb", "10.96.0.10", &[("10.244.1.5", 1, "node-b")]);
        lb.ports[0].node_port = None;
        lb.load_balancer_ips = vec![
            "198.51.100.1".parse().unwrap(),
            "2001:db8::1".parse().unwrap(),
        ];
        lb.load_balancer_source_ranges = vec!["192.0.2.0/24".parse().unwrap()];
        let mut st = state(vec![lb.clone()]);
        st.node.addresses.push("fd00:18::2".parse().unwrap());
        let p = plan(&st, 251);
        for scope in [SCOPE_EXTERNAL, SCOPE_EXTERNAL_INSIDE] {
            assert_eq!(
                p[&key("198.51.100.1", 80, scope)].flags & SVC_F_SRC_RANGES,
                SVC_F_SRC_RANGES,
                "IPv4 LB IP, scope {scope}: pods and the node are checked too"
            );
            assert_eq!(
                p[&key6("2001:db8::1", 80, scope)].flags & SVC_F_SRC_RANGES,
                0,
                "IPv6 has no range of its own: unrestricted (scope {scope})"
            );
        }
        let only: Vec<String> = ranges(&st).iter().map(|(_, n)| n.to_string()).collect();
        assert_eq!(only, vec!["192.0.2.0/24"]);

        // A range holding the node's address lets the LB IPs of its family in as sources.
        lb.load_balancer_source_ranges = vec![
            "172.18.0.0/16".parse().unwrap(),
            "2001:db8:1::/48".parse().unwrap(),
        ];
        let mut st = state(vec![lb]);
        st.node.addresses.push("fd00:18::2".parse().unwrap());
        let mut nets: Vec<String> = ranges(&st).iter().map(|(_, n)| n.to_string()).collect();
        nets.sort();
        assert_eq!(
            nets,
            vec!["172.18.0.0/16", "198.51.100.1/32", "2001:db8:1::/48"],
            "allowFromNode for IPv4 only: no IPv6 range holds a node address"
        );
        let p = plan(&st, 251);
        assert_ne!(
            p[&key6("2001:db8::1", 80, SCOPE_EXTERNAL)].flags & SVC_F_SRC_RANGES,
            0
        );
    }

    #[test]
    fn masquerade_per_client_kind_and_all_services() {
        let mut local = svc("local", "10.96.0.10", &[("10.244.1.5", 1, "node-b")]);
        local.external_traffic_policy = TrafficPolicy::Local;
        let mut dsr = svc("dsr", "10.96.0.12", &[("10.244.1.5", 1, "node-b")]);
        dsr.ports[0].node_port = Some(30081);
        dsr.external_mode = Some(dataplane_core::ExternalMode::Dsr);
        let mut st = state(vec![local, dsr]);
        let flags = |st: &DesiredState, port, scope| {
            plan(st, 251)[&key("172.18.0.2", port, scope)].flags & (SVC_F_SNAT | SVC_F_DSR)
        };
        let cluster_ip =
            |st: &DesiredState, ip| plan(st, 251)[&key(ip, 80, SCOPE_INTERNAL)].flags & SVC_F_SNAT;
        assert_eq!(
            flags(&st, 30080, SCOPE_EXTERNAL),
            0,
            "eTP Local keeps outside clients"
        );
        assert_eq!(
            flags(&st, 30080, SCOPE_EXTERNAL_INSIDE),
            0,
            "eTP Local from pods: not masqueraded (the datapath masquerades the node)"
        );
        assert_eq!(flags(&st, 30081, SCOPE_EXTERNAL), SVC_F_DSR);
        assert_eq!(flags(&st, 30081, SCOPE_EXTERNAL_INSIDE), SVC_F_SNAT);
        assert_eq!(cluster_ip(&st, "10.96.0.10"), 0);

        st.node.masquerade.all_services = true;
        assert_eq!(
            flags(&st, 30080, SCOPE_EXTERNAL),
            0,
            "allServices keeps eTP Local"
        );
        assert_eq!(flags(&st, 30080, SCOPE_EXTERNAL_INSIDE), SVC_F_SNAT);
        assert_eq!(flags(&st, 30081, SCOPE_EXTERNAL), SVC_F_DSR, "and DSR");
        assert_eq!(cluster_ip(&st, "10.96.0.10"), SVC_F_SNAT);

        let st = state(vec![svc(
            "cluster",
            "10.96.0.11",
            &[("10.244.1.5", 1, "node-b")],
        )]);
        assert_eq!(flags(&st, 30080, SCOPE_EXTERNAL), SVC_F_SNAT);
        assert_eq!(flags(&st, 30080, SCOPE_EXTERNAL_INSIDE), SVC_F_SNAT);
    }

    #[test]
    fn internal_policy_local_has_one_entry_for_every_client() {
        let mut web = svc("web", "10.96.0.10", &[("10.244.1.5", 1, "node-b")]);
        web.internal_traffic_policy = TrafficPolicy::Local;
        let p = plan(&state(vec![web]), 251);
        assert_eq!(
            p[&key("10.96.0.10", 80, SCOPE_INTERNAL)].flags & SVC_F_NO_LOCAL,
            SVC_F_NO_LOCAL
        );
        assert!(
            p.keys().all(|k| k.scope != SCOPE_RETIRED_INTERNAL_OUTSIDE),
            "no cluster-wide entry for outside clients"
        );
    }

    #[test]
    fn cluster_cidr_families_are_flagged_for_the_clusterip_masquerade() {
        let mut st = state(vec![]);
        st.node.cluster_cidrs = vec!["10.244.0.0/16".parse().unwrap()];
        let (planner, _) = Planner::full(&st, 251).unwrap();
        let flags = planner.node.config.flags;
        assert_eq!(flags & CFG_F_CLUSTER_V4, CFG_F_CLUSTER_V4);
        assert_eq!(
            flags & CFG_F_CLUSTER_V6,
            0,
            "no IPv6 cluster CIDR: no local detector"
        );
        st.node.cluster_cidrs.push("fd00:244::/56".parse().unwrap());
        let (planner, _) = Planner::full(&st, 251).unwrap();
        assert_eq!(
            planner.node.config.flags & (CFG_F_CLUSTER_V4 | CFG_F_CLUSTER_V6),
            CFG_F_CLUSTER_V4 | CFG_F_CLUSTER_V6
        );
    }

    #[test]
    fn service_cidrs_are_marked_for_the_unallocated_drop() {
        let st = state(vec![]);
        let (planner, _) = Planner::full(&st, 251).unwrap();
        let bits = planner.node.cidrs[&(Addr::mapped("10.96.0.0".parse().unwrap()), 96 + 12)];
        assert_eq!(bits & CIDR_F_SERVICE, CIDR_F_SERVICE);
        assert!(planner
            .node
            .cidrs
            .iter()
            .filter(|(k, _)| k.0 != Addr::mapped("10.96.0.0".parse().unwrap()))
            .all(|(_, b)| b & CIDR_F_SERVICE == 0));
    }

    #[test]
    fn an_sctp_port_is_planned_beside_the_others() {
        let mut web = svc("web", "10.96.0.10", &[("10.244.1.5", 1, "node-b")]);
        web.ports.push(ServicePort {
            name: "sctp".to_owned(),
            protocol: Protocol::Sctp,
            port: 9,
            target_port: 9,
            node_port: Some(30009),
        });
        let st = state(vec![web.clone()]);
        let p = plan(&st, 251);
        assert!(p.contains_key(&key("10.96.0.10", 80, SCOPE_INTERNAL)));
        let sctp = |ip: &str, port: u16, scope: u8| SvcKey {
            proto: Protocol::Sctp.number(),
            ..key(ip, port, scope)
        };
        assert!(
            p.contains_key(&sctp("10.96.0.10", 9, SCOPE_INTERNAL))
                && p.contains_key(&sctp("172.18.0.2", 30009, SCOPE_EXTERNAL)),
            "the SCTP ClusterIP and NodePort: {:?}",
            p.keys().collect::<Vec<_>>()
        );

        // An update through such a service agrees with a full plan.
        let old = state(vec![svc("a", "10.96.0.1", &[])]);
        assert_eq!(plan_by_update(&old, &st), p);
    }

    #[test]
    fn ipv6_dsr_is_planned_like_ipv4() {
        let mut web = svc("web", "10.96.0.10", &[("10.244.1.5", 1, "node-b")]);
        web.cluster_ips.push("fd00:96::10".parse().unwrap());
        web.backends.push({
            let mut b = Backend::new("fd00:244:1::5".parse().unwrap());
            b.node_name = Some("node-b".into());
            b
        });
        web.external_mode = Some(dataplane_core::ExternalMode::Dsr);
        let mut st = state(vec![web.clone()]);
        st.node.addresses.push("fd00:18::2".parse().unwrap());
        let p = plan(&st, 251);
        let mode = |k: SvcKey| p[&k].flags & (SVC_F_SNAT | SVC_F_DSR);
        assert_eq!(mode(key("172.18.0.2", 30080, SCOPE_EXTERNAL)), SVC_F_DSR);
        assert_eq!(mode(key6("fd00:18::2", 30080, SCOPE_EXTERNAL)), SVC_F_DSR);
        // Hybrid: DSR for TCP, SNAT for UDP, in IPv6 as in IPv4.
        web.external_mode = Some(dataplane_core::ExternalMode::Hybrid);
        web.ports.push(ServicePort {
            name: "dns".to_owned(),
            protocol: Protocol::Udp,
            port: 53,
            target_port: 53,
            node_port: Some(30053),
        });
        st.services = vec![web];
        let p = plan(&st, 251);
        let mode = |k: SvcKey| p[&k].flags & (SVC_F_SNAT | SVC_F_DSR);
        assert_eq!(mode(key6("fd00:18::2", 30080, SCOPE_EXTERNAL)), SVC_F_DSR);
        let udp = |ip| SvcKey {
            proto: Protocol::Udp.number(),
            ..key6(ip, 30053, SCOPE_EXTERNAL)
        };
        assert_eq!(mode(udp("fd00:18::2")), SVC_F_SNAT);
        assert_eq!(
            mode(SvcKey {
                family: 4,
                ..udp("172.18.0.2")
            }),
            SVC_F_SNAT
        );
    }
}
