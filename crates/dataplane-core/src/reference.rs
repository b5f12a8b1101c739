//! The reference model: what should happen to a packet, as a pure function of the state.
//!
//! Every backend must agree with it; the conformance table in `dataplane-testkit` checks each
//! row's expectation against [`evaluate`] before it sends real traffic through a backend.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::host_policy::{Early, Flow, From, HostView};
use crate::model::{
    Backend, DesiredState, ObjectName, Protocol, Service, ServicePort, TrafficPolicy,
};
use crate::policy::{policy_verdict, Decision, Party};

/// A packet's 5-tuple.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Packet {
    /// Protocol.
    pub protocol: Protocol,
    /// Source address and port.
    pub source: SocketAddr,
    /// Destination address and port.
    pub destination: SocketAddr,
}

/// Where a packet enters the node's dataplane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Entry {
    /// From a local pod (its host-side interface).
    FromPod(ObjectName),
    /// From outside the node, on the uplink.
    FromUplink,
    /// From the node itself (host network namespace).
    FromHost,
}

/// Which kind of frontend a packet addressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FrontendKind {
    /// A ClusterIP.
    ClusterIp,
    /// A NodePort on a node address.
    NodePort,
    /// A LoadBalancer IP.
    LoadBalancer,
    /// An ExternalIP.
    ExternalIp,
}

/// What should happen to a packet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    /// Destination-NAT to one of `backends` (any of them is correct).
    Forward {
        /// The service.
        service: ObjectName,
        /// The frontend kind matched.
        frontend: FrontendKind,
        /// Acceptable backends.
        backends: BTreeSet<SocketAddr>,
        /// The source address the backend sees. Hairpin exception: a pod that reaches a
        /// service and is given itself as the backend sees the node address of its family
        /// ([`node_address`]) whatever this says; when every acceptable backend is the
        /// client, this already says so.
        source: SourceSeen,
    },
    /// Silently dropped.
    Drop,
    /// Rejected: TCP RST or ICMP unreachable.
    Reject,
    /// Not a service packet: routed as it is, possibly masqueraded.
    Untouched {
        /// The source address the destination sees.
        source: SourceSeen,
    },
}

/// The source address the receiver sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SourceSeen {
    /// The client's own address.
    Client,
    /// Masqueraded to this node address.
    Masqueraded(IpAddr),
}

/// Whether traffic is internal (ClusterIP from inside the cluster) or external.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TrafficKind {
    /// Governed by `internalTrafficPolicy`.
    Internal,
    /// Governed by `externalTrafficPolicy`.
    External,
}

/// An IP address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum IpFamily {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl IpFamily {
    /// The family of `ip`.
    pub fn of(ip: &IpAddr) -> Self {
        if ip.is_ipv4() {
            IpFamily::V4
        } else {
            IpFamily::V6
        }
    }
}

/// The backends a new connection may pick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Eligible<'a> {
    /// Pick one of these: the ready backends or, when none is ready, the serving terminating
    /// ones (kube-proxy's fallback). Never empty.
    Backends(Vec<&'a Backend>),
    /// The traffic policy is `Local` and no backend runs on this node: drop.
    NoLocal,
    /// The service has no usable backend: reject (TCP RST, ICMP port unreachable).
    NoBackends,
}

/// The backends of `service` that a new connection of `traffic` kind and `family` may pick on
/// this node.
///
/// Order: backends of the right family, filtered to node-local ones when the applicable
/// traffic policy is `Local`; of those the ready ones, or if none is ready the serving
/// terminating ones. A `Local` policy with backends elsewhere but none here gives
/// [`Eligible::NoLocal`] (drop, as kube-proxy does); no usable backend at all gives
/// [`Eligible::NoBackends`] (reject).
pub fn eligible_backends<'a>(
    state: &DesiredState,
    service: &'a Service,
    _port: &ServicePort,
    traffic: TrafficKind,
    family: IpFamily,
) -> Eligible<'a> {
    let policy = match traffic {
        TrafficKind::Internal => service.internal_traffic_policy,
        TrafficKind::External => service.external_traffic_policy,
    };
    eligible_with_policy(state, service, policy, family)
}

/// [`eligible_backends`] under `policy` instead of the service's own traffic policy: what a
/// backend answers for clients the policy does not apply to (pods and the host reaching an
/// external frontend use cluster-wide backends), without a modified copy of the service.
pub fn eligible_backends_with_policy<'a>(
    state: &DesiredState,
    service: &'a Service,
    policy: TrafficPolicy,
    family: IpFamily,
) -> Eligible<'a> {
    eligible_with_policy(state, service, policy, family)
}

fn eligible_with_policy<'a>(
    state: &DesiredState,
    service: &'a Service,
    policy: TrafficPolicy,
    family: IpFamily,
) -> Eligible<'a> {
    let of_family: Vec<&Backend> = service
        .backends
        .iter()
        .filter(|b| IpFamily::of(&b.ip) == family)
        .collect();
    let usable = |set: &[&'a Backend]| -> Vec<&'a Backend> {
        let ready: Vec<&Backend> = set
            .iter()
            .copied()
            .filter(|b| b.ready && !b.terminating)
            .collect();
        if ready.is_empty() {
            set.iter()
                .copied()
                .filter(|b| b.serving && b.terminating)
                .collect()
        } else {
            ready
        }
    };
    if policy == TrafficPolicy::Local {
        let local: Vec<&Backend> = of_family
            .iter()
            .copied()
            .filter(|b| b.is_local_to(&state.node))
            .collect();
        let picked = usable(&local);
        if !picked.is_empty() {
            return Eligible::Backends(picked);
        }
        return if usable(&of_family).is_empty() {
            Eligible::NoBackends
        } else {
            Eligible::NoLocal
        };
    }
    let picked = usable(&of_family);
    if picked.is_empty() {
        Eligible::NoBackends
    } else {
        Eligible::Backends(picked)
    }
}

/// The first node address of `family`: the masquerade source.
pub fn node_address(state: &DesiredState, family: IpFamily) -> Option<IpAddr> {
    state
        .node
        .addresses
        .iter()
        .copied()
        .find(|a| IpFamily::of(a) == family)
}

fn in_any(ip: IpAddr, cidrs: &[ipnetwork::IpNetwork]) -> bool {
    cidrs.iter().any(|c| c.contains(ip))
}

/// Says what should happen to `packet` entering this node's dataplane at `entry`.
///
/// The rules (shared by every backend; kube-proxy's nftables and iptables modes are the
/// reference, the README's semantics paragraph says the same in prose):
/// - `loadBalancerSourceRanges` (those of the LoadBalancer IP's family; a family without
///   ranges is unrestricted) drop every other client of the LoadBalancer IP, wherever it comes
///   from: pods, the node itself, outside. When a range contains a node address, the service's
///   LoadBalancer IPs are allowed as sources too (kube-proxy's `allowFromNode`: the node
///   reaching an LB IP it holds locally sends from that IP).
/// - ClusterIP: `internalTrafficPolicy`, for every client (also from outside the node). The
///   backend sees the client's address unless the client is not a pod (its source is outside
///   the cluster CIDRs of its family: the node itself or an outside client; a family without
///   cluster CIDRs has no such test, as kube-proxy then has no local detector), which is
///   masqueraded, or the connection is a hairpin (a pod given itself as the backend; when
///   every acceptable backend is the client this says so).
/// - NodePort (node addresses), LoadBalancer IPs and ExternalIPs from outside:
///   `externalTrafficPolicy`. `Cluster` masquerades to the node address unless the service's
///   external mode is DSR (`Dsr`, or `Hybrid` for TCP), which keeps the client address;
///   `Local` keeps the client address and drops when no backend is local.
/// - The same frontends from this node's pods or the node itself: cluster-wide backends
///   (kube-proxy's short-circuit); the node is masqueraded, a pod too unless the service's
///   `externalTrafficPolicy` is `Local` (then it keeps its address, like a pod reaching a
///   ClusterIP).
/// - `masquerade.allServices` (kube-proxy's `--masquerade-all`) masquerades every service
///   connection except the ones whose client address the service promises to keep (external
///   clients under `externalTrafficPolicy: Local`, DSR). kube-proxy's flag marks only
///   ClusterIP traffic, so it leaves this node's pods unmasqueraded on an
///   `externalTrafficPolicy: Local` frontend; here, as the option's name says, they are
///   masqueraded too.
/// - No usable backend: reject. A ClusterIP on a port or protocol no service port uses:
///   reject. Any other address inside `node.serviceCIDRs`: drop (it is no service).
/// - Anything else is untouched; pod traffic leaving the cluster is masqueraded when the node
///   says so.
/// - NetworkPolicy ([`crate::policy`]), for the first packet of a connection: a forwarded
///   connection keeps the backends that [`crate::policy_allows`] from the client's own address to
///   the backend's address and target port (after DNAT), and is dropped when none is left.
///   Those are the backends a connection can reach: dataplanes pick a backend first and then
///   check policy on the translated packet (as Cilium, Calico and kube-proxy with a policy
///   engine do), so a connection that picked a denied backend is dropped, not sent to an
///   allowed one — the verdict lists where a connection may end up, not that every one does;
///   an untouched packet is dropped unless `policy_allows` from its source to its
///   destination. A packet from the node itself ([`Entry::FromHost`]) to one of its own pods
///   is allowed whatever its source address (the kernel may pick one that is not in
///   `node.addresses`). Replies of an allowed connection are allowed (backends keep that in
///   conntrack). A state without policies is judged as before, policy aside.
/// - With policies, a packet from a local pod whose source is not one of that pod's
///   addresses is dropped (anti-spoofing: policy knows a client by its address, so a pod
///   sending from another pod's or the node's address would borrow their rights; Calico
///   drops these with strict reverse-path filtering on workload interfaces, Cilium checks the
///   source of an endpoint's packets). IPv6 link-local and unspecified sources are exempt
///   only towards link-local and multicast destinations: neighbour discovery, duplicate
///   address detection and MLD between a pod and its gateway use them; anywhere else such a
///   source is dropped (Linux never forwards a link-local source, RFC 4291 2.5.6, and a
///   dataplane that redirects packets past the kernel's forwarding must not either).
/// - Cluster policies and the baseline are pod policy too: per direction, cluster policies by
///   priority, then NetworkPolicy, then the baseline, then allowed ([`crate::policy`]'s
///   module documentation); anti-spoofing holds with any of them.
/// - Host endpoint policy ([`crate::host_policy`]) for packets crossing this node's host
///   endpoint on the uplink: failsafe ports, then untracked rules (an untracked `Allow` is
///   not translated: no conntrack, no NAT), then pre-DNAT rules on the original destination,
///   then service translation and pod policy, then the normal host policies on the
///   translated packet (default deny where one applies). Replies: [`reply_allowed`].
pub fn evaluate(state: &DesiredState, packet: &Packet, entry: &Entry) -> Verdict {
    evaluate_in(state, packet, entry, Scope::Cluster)
}

/// [`evaluate`] as far as this node's dataplane decides it: NetworkPolicy halves that belong
/// to a pod on **another** node (a [`crate::PeerPod`]) are left to that node — the ingress of
/// a remote server, the egress of a remote client — so a connection only they deny is
/// forwarded here (and dropped there). Every other rule is [`evaluate`]'s.
///
/// Why: every dataplane enforces a pod's policy on the pod's own node — the egress of its
/// client pods where they run, the ingress of its server pods where they run (Cilium's
/// `bpf_lxc.c` ingress tail call and Calico's workload-interface programs alike; kube-proxy
/// does no policy at all). [`evaluate`] judges the whole cluster's answer (a backend on
/// another node denying this client on ingress means the connection fails); a test that
/// watches one node's programs compares them with this instead.
///
/// ```
/// use dataplane_core::{evaluate, evaluate_on_node, DesiredState, Entry, Node, Packet, Protocol};
/// let state = DesiredState::new(Node::new("node-a", ["172.18.0.2".parse()?]));
/// let packet = Packet {
///     protocol: Protocol::Tcp,
///     source: "100.64.0.9:8015".parse()?,
///     destination: "10.244.1.7:80".parse()?,
/// };
/// // Without policies, or without pods on other nodes, both agree.
/// assert_eq!(
///     evaluate(&state, &packet, &Entry::FromUplink),
///     evaluate_on_node(&state, &packet, &Entry::FromUplink),
/// );
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn evaluate_on_node(state: &DesiredState, packet: &Packet, entry: &Entry) -> Verdict {
    evaluate_in(state, packet, entry, Scope::Node)
}

/// Whose policy halves [`evaluate_in`] checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// Both halves of every connection, wherever the pods run.
    Cluster,
    /// Not those of pods on other nodes.
    Node,
}

/// What host policy knows of a packet.
fn flow(packet: &Packet) -> Flow {
    Flow {
        protocol: packet.protocol,
        source: packet.source,
        destination: packet.destination,
    }
}

/// What host policy knows of an entry.
fn from(entry: &Entry) -> From {
    match entry {
        Entry::FromUplink => From::Uplink,
        Entry::FromHost => From::Host,
        Entry::FromPod(_) => From::Pod,
    }
}

fn evaluate_in(state: &DesiredState, packet: &Packet, entry: &Entry, scope: Scope) -> Verdict {
    let host = HostView::of(state);
    let early = host.as_ref().map_or(Early::Continue, |h| {
        h.before_translation(&flow(packet), from(entry))
    });
    let verdict = match early {
        Early::Drop => return Verdict::Drop,
        // No conntrack, so no NAT either: the packet goes where it is addressed, as it is.
        Early::Untracked => Verdict::Untouched {
            source: SourceSeen::Client,
        },
        Early::Allowed | Early::Continue => evaluate_services(state, packet, entry),
    };
    let verdict = with_pod_policy(state, verdict, packet, entry, scope);
    match (&host, early) {
        (Some(h), Early::Continue) => with_host_policy(h, verdict, packet, entry),
        _ => verdict,
    }
}

/// `verdict` after the normal host policies of `host` (the connection's translated packets).
fn with_host_policy(
    host: &HostView<'_>,
    verdict: Verdict,
    packet: &Packet,
    entry: &Entry,
) -> Verdict {
    keep_allowed(verdict, packet.destination, |to| {
        host.normal_allows(from(entry), packet.protocol, packet.source, to)
    })
}

/// `verdict` keeping only what `allows` (a destination after translation): the backends of
/// a forward (none left: drop), the destination of an untouched packet.
fn keep_allowed(
    verdict: Verdict,
    destination: SocketAddr,
    allows: impl Fn(SocketAddr) -> bool,
) -> Verdict {
    match verdict {
        Verdict::Forward {
            service,
            frontend,
            mut backends,
            source,
        } => {
            backends.retain(|b| allows(*b));
            if backends.is_empty() {
                Verdict::Drop
            } else {
                Verdict::Forward {
                    service,
                    frontend,
                    backends,
                    source,
                }
            }
        }
        Verdict::Untouched { .. } if !allows(destination) => Verdict::Drop,
        other => other,
    }
}

/// `verdict` after pod policy: NetworkPolicy, cluster policies and the baseline (none: as it
/// is).
fn with_pod_policy(
    state: &DesiredState,
    verdict: Verdict,
    packet: &Packet,
    entry: &Entry,
    scope: Scope,
) -> Verdict {
    if !state.has_pod_policy() {
        return verdict;
    }
    let client = packet.source.ip();
    if let Entry::FromPod(name) = entry {
        if is_spoofed(state, name, client, packet.destination.ip()) {
            return Verdict::Drop;
        }
    }
    // The node's own traffic to its own pods is allowed whatever source address the kernel
    // picked for it (a secondary address, another interface's): it is the node's by where it
    // comes from, not by its address.
    let allows = |to: SocketAddr| {
        (matches!(entry, Entry::FromHost)
            && state.endpoints.iter().any(|e| e.ips.contains(&to.ip())))
            || allowed_in(state, scope, client, to.ip(), packet.protocol, to.port())
    };
    keep_allowed(verdict, packet.destination, allows)
}

/// Whether the replies of the connection whose first packet is `packet`, entering at
/// `entry`, get back to its client.
///
/// A connection [`evaluate`] drops or rejects has none. A connection that a host endpoint's
/// untracked (`doNotTrack`) rule let in or out has no conntrack entry: each reply is a
/// packet of its own, judged by [`evaluate`] with source and destination swapped, entering
/// where the reply enters (from the node for a connection that came in on the uplink, from
/// the uplink for one the node opened) — so it needs a rule of its own (an untracked `Allow`
/// in the other direction, or a normal policy that allows it; a default-deny endpoint drops
/// it).
///
/// A tracked connection's replies pass pre-DNAT and normal host policy (conntrack), but not
/// the stages before conntrack: where a reply crosses this node's host endpoint — arriving on
/// the uplink from a server off this node, or sent by the node itself out of the uplink — it
/// meets the failsafe ports and the untracked rules of that direction as it is on the wire
/// (from the backend or destination the connection reached, to the source that one saw):
/// an untracked `Deny` drops it, an untracked `Allow` lets it through only when the
/// connection was not translated (an untracked packet gets no reverse NAT). With several
/// acceptable backends, every one's replies must get back. A DSR connection's replies go
/// from the backend's node straight to the client and never cross this node.
/// ([`crate::host_policy`] says why: netfilter's `raw` table, where Calico renders untracked
/// policy, judges every packet.)
///
/// ```
/// use dataplane_core::{reply_allowed, DesiredState, Entry, Node, Packet, Protocol};
/// let state = DesiredState::new(Node::new("node-a", ["172.18.0.2".parse()?]));
/// let packet = Packet {
///     protocol: Protocol::Tcp,
///     source: "198.51.100.7:40000".parse()?,
///     destination: "172.18.0.2:6379".parse()?,
/// };
/// assert!(reply_allowed(&state, &packet, &Entry::FromUplink)); // no host policy: tracked
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn reply_allowed(state: &DesiredState, packet: &Packet, entry: &Entry) -> bool {
    let verdict = evaluate(state, packet, entry);
    if matches!(verdict, Verdict::Drop | Verdict::Reject) {
        return false;
    }
    let Some(host) = HostView::of(state) else {
        return true;
    };
    if host.before_translation(&flow(packet), from(entry)) != Early::Untracked {
        return wire_replies(state, packet, entry, &verdict)
            .iter()
            .all(|r| tracked_reply_passes(state, &verdict, r));
    }
    let reply = Packet {
        protocol: packet.protocol,
        source: packet.destination,
        destination: packet.source,
    };
    let back = match entry {
        Entry::FromUplink => state
            .endpoints
            .iter()
            .find(|e| e.ips.contains(&packet.destination.ip()))
            .map_or(Entry::FromHost, |e| Entry::FromPod(e.name.clone())),
        Entry::FromHost | Entry::FromPod(_) => Entry::FromUplink,
    };
    !matches!(
        evaluate(state, &reply, &back),
        Verdict::Drop | Verdict::Reject
    )
}

/// Whether `reply` — a packet on the wire of a *tracked* connection whose first packet was
/// [`evaluate`]d to `verdict`, from the end the connection reached
/// back to the address that end saw — gets past this node's stages before conntrack
/// (failsafe ports, untracked host policy) where it crosses the host endpoint
/// ([`reply_allowed`] states the rule). `true` when the node has no host endpoint or the
/// reply does not cross it.
///
/// ```
/// use dataplane_core::{tracked_reply_passes, DesiredState, Node, Packet, Protocol, SourceSeen, Verdict};
/// let state = DesiredState::new(Node::new("node-a", ["172.18.0.2".parse()?]));
/// let reply = Packet {
///     protocol: Protocol::Udp,
///     source: "198.51.100.7:53".parse()?,
///     destination: "172.18.0.2:40000".parse()?,
/// };
/// let verdict = Verdict::Untouched { source: SourceSeen::Client };
/// assert!(tracked_reply_passes(&state, &verdict, &reply));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn tracked_reply_passes(state: &DesiredState, verdict: &Verdict, reply: &Packet) -> bool {
    let Some(host) = HostView::of(state) else {
        return true;
    };
    let Some(crossing) = host.crossing(reply.source.ip(), reply.destination.ip()) else {
        return true;
    };
    match host.before_conntrack(&flow(reply), crossing) {
        Early::Drop => false,
        // Untracked: conntrack neither sees it nor undoes the connection's translation.
        Early::Untracked => matches!(
            verdict,
            Verdict::Untouched {
                source: SourceSeen::Client
            }
        ),
        Early::Allowed | Early::Continue => true,
    }
}

/// The replies of a connection `verdict` lets through, as they are on the wire (from the
/// end reached, to the address that end saw), except those that never cross this node (DSR).
fn wire_replies(
    state: &DesiredState,
    packet: &Packet,
    entry: &Entry,
    verdict: &Verdict,
) -> Vec<Packet> {
    let seen = |source: &SourceSeen| match source {
        SourceSeen::Client => packet.source,
        SourceSeen::Masqueraded(ip) => SocketAddr::new(*ip, packet.source.port()),
    };
    let reply = |from: SocketAddr, to: SocketAddr| Packet {
        protocol: packet.protocol,
        source: from,
        destination: to,
    };
    match verdict {
        Verdict::Forward {
            service,
            frontend,
            backends,
            source,
        } => {
            let dsr = matches!(entry, Entry::FromUplink)
                && *frontend != FrontendKind::ClusterIp
                && state
                    .services
                    .iter()
                    .find(|s| &s.name == service)
                    .is_some_and(|s| s.uses_dsr(&state.node, packet.protocol));
            if dsr {
                return Vec::new();
            }
            backends.iter().map(|b| reply(*b, seen(source))).collect()
        }
        Verdict::Untouched { source } => vec![reply(packet.destination, seen(source))],
        Verdict::Drop | Verdict::Reject => Vec::new(),
    }
}

/// Whether `scope`'s halves of the policy verdict from `from` to `to` allow a new connection.
fn allowed_in(
    state: &DesiredState,
    scope: Scope,
    from: IpAddr,
    to: IpAddr,
    protocol: Protocol,
    port: u16,
) -> bool {
    let v = policy_verdict(state, from, to, protocol, port);
    let elsewhere = |ip: IpAddr| {
        scope == Scope::Node && matches!(Party::at(state, ip), Party::Pod { local: false, .. })
    };
    let half = |d: &Decision, ip: IpAddr| d.allows() || elsewhere(ip);
    half(&v.egress, from) && half(&v.ingress, to)
}

/// Whether a packet from local pod `pod` with `source`, to `destination`, has a forged
/// source: the pod is a known endpoint and `source` none of its addresses — except an IPv6
/// link-local (`fe80::/10`) or unspecified source towards a link-local or multicast
/// (`ff00::/8`) destination (neighbour discovery, DAD, MLD: traffic that stays on the link).
pub fn is_spoofed(
    state: &DesiredState,
    pod: &ObjectName,
    source: IpAddr,
    destination: IpAddr,
) -> bool {
    let link_local = |v6: std::net::Ipv6Addr| (v6.segments()[0] & 0xffc0) == 0xfe80;
    let exempt = match (source, destination) {
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            (src.is_unspecified() || link_local(src)) && (link_local(dst) || dst.is_multicast())
        }
        _ => false,
    };
    !exempt
        && state
            .endpoints
            .iter()
            .find(|e| &e.name == pod)
            .is_some_and(|e| !e.ips.contains(&source))
}

/// [`evaluate`] without policy: service translation, masquerade, drops and rejects.
fn evaluate_services(state: &DesiredState, packet: &Packet, entry: &Entry) -> Verdict {
    let dst = packet.destination.ip();
    let mut cluster_ip_hit = false;
    for service in &state.services {
        let is_cluster_ip = service.cluster_ips.contains(&dst);
        cluster_ip_hit |= is_cluster_ip;
        for port in service
            .ports
            .iter()
            .filter(|p| p.protocol == packet.protocol)
        {
            let dport = packet.destination.port();
            let kind = if is_cluster_ip {
                if port.port != dport {
                    continue;
                }
                FrontendKind::ClusterIp
            } else if port.port == dport && service.load_balancer_ips.contains(&dst) {
                FrontendKind::LoadBalancer
            } else if port.port == dport && service.external_ips.contains(&dst) {
                FrontendKind::ExternalIp
            } else if port.node_port == Some(dport) && state.node.addresses.contains(&dst) {
                FrontendKind::NodePort
            } else {
                continue;
            };
            return forward(state, service, port, kind, packet, entry);
        }
    }
    if cluster_ip_hit {
        return Verdict::Reject;
    }
    if in_any(dst, &state.node.service_cidrs) {
        return Verdict::Drop;
    }
    let m = &state.node.masquerade;
    let leaves_cluster = !in_any(dst, &state.node.cluster_cidrs)
        && !in_any(dst, &m.non_masquerade_cidrs)
        && !state.node.addresses.contains(&dst);
    let masquerade = matches!(entry, Entry::FromPod(_))
        && m.enabled
        && ((m.all && !in_any(dst, &state.node.pod_cidrs) && !state.node.addresses.contains(&dst))
            || leaves_cluster);
    Verdict::Untouched {
        source: masquerade_if(state, IpFamily::of(&dst), masquerade),
    }
}

/// Whether `source` may reach `service`'s LoadBalancer IPs of `family` under its
/// `loadBalancerSourceRanges`: the ranges of that family (none: everyone), plus the service's
/// LoadBalancer IPs of that family when a range holds a node address (kube-proxy's
/// `allowFromNode`). Backends program exactly [`source_range_allow_list`].
pub fn source_range_allows(state: &DesiredState, service: &Service, source: IpAddr) -> bool {
    match source_range_allow_list(state, service, IpFamily::of(&source)) {
        None => true,
        Some(list) => list.iter().any(|c| c.contains(source)),
    }
}

/// The sources allowed to reach `service`'s LoadBalancer IPs of `family`, or `None` when that
/// family is unrestricted (the service has no source range of that family): its ranges of
/// `family`, and each of its LoadBalancer IPs of `family` as a host prefix when a range holds
/// one of the node's addresses.
pub fn source_range_allow_list(
    state: &DesiredState,
    service: &Service,
    family: IpFamily,
) -> Option<Vec<ipnetwork::IpNetwork>> {
    let mut list: Vec<ipnetwork::IpNetwork> = service
        .load_balancer_source_ranges
        .iter()
        .copied()
        .filter(|c| IpFamily::of(&c.ip()) == family)
        .collect();
    if list.is_empty() {
        return None;
    }
    let allow_from_node = state
        .node
        .addresses
        .iter()
        .any(|a| list.iter().any(|c| c.contains(*a)));
    if allow_from_node {
        list.extend(
            service
                .load_balancer_ips
                .iter()
                .filter(|ip| IpFamily::of(ip) == family)
                .map(|ip| ipnetwork::IpNetwork::from(*ip)),
        );
    }
    Some(list)
}

fn masquerade_if(state: &DesiredState, family: IpFamily, masquerade: bool) -> SourceSeen {
    match (masquerade, node_address(state, family)) {
        (true, Some(a)) => SourceSeen::Masqueraded(a),
        _ => SourceSeen::Client,
    }
}

fn forward(
    state: &DesiredState,
    service: &Service,
    port: &ServicePort,
    kind: FrontendKind,
    packet: &Packet,
    entry: &Entry,
) -> Verdict {
    let src = packet.source.ip();
    let family = IpFamily::of(&packet.destination.ip());
    let from_outside = matches!(entry, Entry::FromUplink);
    if kind == FrontendKind::LoadBalancer && !source_range_allows(state, service, src) {
        return Verdict::Drop;
    }
    // ClusterIPs use internalTrafficPolicy whoever the client is; external frontends from
    // outside use externalTrafficPolicy; pods and the node reaching an external frontend get
    // cluster-wide backends (kube-proxy's short-circuit).
    let policy = match (kind == FrontendKind::ClusterIp, from_outside) {
        (true, _) => service.internal_traffic_policy,
        (false, true) => service.external_traffic_policy,
        (false, false) => TrafficPolicy::Cluster,
    };
    let backends: BTreeSet<SocketAddr> = match eligible_with_policy(state, service, policy, family)
    {
        Eligible::Backends(b) => b.iter().map(|b| b.target(port)).collect(),
        Eligible::NoLocal => return Verdict::Drop,
        Eligible::NoBackends => return Verdict::Reject,
    };
    let from_pod = matches!(entry, Entry::FromPod(_));
    let keeps_client = from_outside
        && kind != FrontendKind::ClusterIp
        && (service.external_traffic_policy == TrafficPolicy::Local
            || service.uses_dsr(&state.node, packet.protocol));
    let masquerade = if keeps_client {
        false
    } else if state.node.masquerade.all_services {
        true
    } else {
        // Hairpin: when the only choice is the client itself it must be masqueraded; with a
        // mixed set the client keeps its address unless it happens to pick itself (see
        // `Verdict::Forward::source`).
        let hairpin = from_pod && backends.iter().all(|b| b.ip() == src);
        match kind {
            // kube-proxy's `! -s clusterCIDR -j KUBE-MARK-MASQ`; a family without cluster
            // CIDRs has no such test (no local detector): only hairpin is masqueraded.
            FrontendKind::ClusterIp => {
                let has_family = state
                    .node
                    .cluster_cidrs
                    .iter()
                    .any(|c| IpFamily::of(&c.ip()) == family);
                hairpin || (has_family && !in_any(src, &state.node.cluster_cidrs))
            }
            // From outside under Cluster policy without DSR (the rest keeps the client).
            _ if from_outside => true,
            _ if from_pod => hairpin || service.external_traffic_policy != TrafficPolicy::Local,
            _ => true,
        }
    };
    Verdict::Forward {
        service: service.name.clone(),
        frontend: kind,
        backends,
        source: masquerade_if(state, family, masquerade),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        Endpoint, LabelSelector, Node, PeerPod, Policy, PolicyPort, PolicyRule, PolicyType, PortRef,
    };

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn deny_all(namespace: &str, direction: PolicyType) -> Policy {
        Policy {
            name: ObjectName::new(namespace, "deny"),
            pod_selector: LabelSelector::default(),
            policy_types: vec![direction],
            ingress: vec![],
            egress: vec![],
        }
    }

    /// A node with pod `a/local` (10.244.0.5), pod `b/remote` on node-b (10.244.1.7), and a
    /// ClusterIP 10.96.0.5:80 served by the remote pod (TCP 8080).
    fn state() -> DesiredState {
        let mut state = DesiredState::new(Node::new("node-a", [ip("172.18.0.2")]));
        state.endpoints = vec![Endpoint::new(
            ObjectName::new("a", "local"),
            "veth0",
            [ip("10.244.0.5")],
        )];
        state.pods = vec![
            PeerPod::new(ObjectName::new("b", "remote"), [ip("10.244.1.7")]).on_node("node-b"),
        ];
        state.services = vec![Service::cluster_ip(
            ObjectName::new("b", "svc"),
            ip("10.96.0.5"),
            [ServicePort::tcp(80, 8080)],
        )
        .with_backends([Backend::new(ip("10.244.1.7")).on_node("node-b")])];
        state
    }

    fn packet(from: &str, to: &str) -> Packet {
        Packet {
            protocol: Protocol::Tcp,
            source: from.parse().unwrap(),
            destination: to.parse().unwrap(),
        }
    }

    /// The differential test's case: a remote backend's ingress policy denies the client.
    /// The cluster drops the connection (on the backend's node); this node forwards it.
    #[test]
    fn a_remote_servers_ingress_is_its_nodes_share() {
        let mut state = state();
        state.policies = vec![deny_all("b", PolicyType::Ingress)];
        for (p, entry) in [
            (packet("100.64.0.9:8015", "10.96.0.5:80"), Entry::FromUplink),
            (packet("172.18.0.2:8016", "10.96.0.5:80"), Entry::FromHost),
            (
                packet("10.244.0.5:8017", "10.96.0.5:80"),
                Entry::FromPod(ObjectName::new("a", "local")),
            ),
        ] {
            assert_eq!(evaluate(&state, &p, &entry), Verdict::Drop, "{entry:?}");
            assert!(
                matches!(
                    evaluate_on_node(&state, &p, &entry),
                    Verdict::Forward { ref backends, .. }
                        if backends.iter().eq([&"10.244.1.7:8080".parse().unwrap()])
                ),
                "{entry:?}: {:?}",
                evaluate_on_node(&state, &p, &entry)
            );
        }
        // Untouched pod-to-pod traffic too.
        let p = packet("10.244.0.5:8018", "10.244.1.7:8080");
        let entry = Entry::FromPod(ObjectName::new("a", "local"));
        assert_eq!(evaluate(&state, &p, &entry), Verdict::Drop);
        assert!(matches!(
            evaluate_on_node(&state, &p, &entry),
            Verdict::Untouched { .. }
        ));
    }

    /// A remote client's egress is its node's share; a local pod's ingress stays this node's.
    #[test]
    fn a_remote_clients_egress_is_its_nodes_share() {
        let mut state = state();
        state.policies = vec![deny_all("b", PolicyType::Egress)];
        let p = packet("10.244.1.7:8019", "10.244.0.5:8080");
        assert_eq!(evaluate(&state, &p, &Entry::FromUplink), Verdict::Drop);
        assert!(matches!(
            evaluate_on_node(&state, &p, &Entry::FromUplink),
            Verdict::Untouched { .. }
        ));
        state.policies.push(deny_all("a", PolicyType::Ingress));
        assert_eq!(
            evaluate_on_node(&state, &p, &Entry::FromUplink),
            Verdict::Drop
        );
    }

    /// What this node enforces itself is dropped in both scopes: a local pod's egress, also
    /// towards a remote backend a policy of its own allows on another port only.
    #[test]
    fn a_local_pods_egress_is_this_nodes_share() {
        let mut state = state();
        state.policies = vec![Policy {
            egress: vec![PolicyRule {
                peers: vec![],
                ports: vec![PolicyPort {
                    protocol: Protocol::Udp,
                    port: Some(PortRef::Number(53)),
                    end_port: None,
                }],
            }],
            ..deny_all("a", PolicyType::Egress)
        }];
        let p = packet("10.244.0.5:8020", "10.96.0.5:80");
        let entry = Entry::FromPod(ObjectName::new("a", "local"));
        assert_eq!(evaluate(&state, &p, &entry), Verdict::Drop);
        assert_eq!(evaluate_on_node(&state, &p, &entry), Verdict::Drop);
    }
}
