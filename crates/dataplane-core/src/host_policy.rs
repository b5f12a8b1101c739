//! Host endpoint policy semantics of the reference model (Calico's): what
//! [`crate::HostPolicy`]s do to a packet that crosses one of this node's
//! [`crate::HostEndpoint`]s.
//!
//! Followed: Calico's reference pages "Summary of host endpoint policies", "Apply on
//! forwarded traffic", "Pre-DNAT policy", "Untracked policy" and "Failsafe rules"
//! (<https://docs.tigera.io/calico/latest/reference/host-endpoints/>). The reference model
//! knows one host interface, the uplink: [`uplink_host_endpoint`] is the endpoint on it (the
//! one named for it, else an all-interfaces one), and a packet crosses it
//! - inward when it arrives from outside the node (`Entry::FromUplink`);
//! - outward when it leaves the node: sent by the node itself (`Entry::FromHost`) or
//!   forwarded (from a pod or from the uplink), to an address that is neither a local pod's
//!   (one of the node's pod CIDRs, listed pod or not) nor one of the node's (traffic between
//!   the node and its pods, and between its pods, crosses no host endpoint).
//!
//! Order, for each crossing (stages whose policies do not select the endpoint, or do not
//! apply to the direction, are skipped):
//! 1. **Failsafe ports** ([`crate::FailsafePorts`]): a packet from the uplink to one of the
//!    node's addresses on an inbound port, or from the node itself to an outbound port (the
//!    destination port, of its protocol), is allowed, and no host policy looks at it.
//! 2. **Untracked** (`doNotTrack`) policies, on the packet as it arrives (before conntrack
//!    and DNAT; outward only for the node's own packets, whose crossing is known before
//!    DNAT): the first matching rule in policy order decides. `Deny` drops; `Allow` lets the
//!    packet through *without conntrack*: no later host policy, and no service translation
//!    (netfilter does not NAT an untracked packet; untracked rules are for the node's own
//!    services), and its replies are not let through by conntrack — [`crate::reply_allowed`]
//!    judges a reply as a packet of its own, so it needs a rule of its own.
//!    No match: the next stage (no default deny).
//!    These two stages judge **every packet** that crosses the endpoint, not only a
//!    connection's first: the replies of *tracked* connections too (netfilter's `raw` table
//!    runs before conntrack and cannot tell a reply from a first packet; Calico: "doNotTrack
//!    policy applies to all packets in both directions", and felix renders it in `raw`
//!    `cali-PREROUTING`/`cali-OUTPUT`, `felix/rules/static.go` `StaticRawPreroutingChain`,
//!    `StaticRawOutputChain`). Inward that is every reply arriving on the uplink (from a
//!    remote server the node, a pod or a forwarded client reached); outward every reply the
//!    node itself sends out of the uplink (its own servers' answers; replies of connections
//!    it forwards do not pass `raw` output). A reply an untracked `Deny` matches is dropped;
//!    one an untracked `Allow` matches goes on untracked, so conntrack does not undo the
//!    connection's translation: a translated (DNAT or masqueraded) connection's reply then
//!    does not reach its client, an untranslated one's does. [`crate::reply_allowed`] says
//!    which replies get back. (Calico also exempts packets *from* the failsafe ports in
//!    `raw`, by source port, so that failsafe connections' replies pass untracked rules;
//!    here the failsafe ports are by destination port in both directions and every
//!    backend does the same.)
//! 3. **Pre-DNAT** policies (ingress only), on the original destination (a NodePort, before
//!    translation): `Deny` drops, `Allow` skips the normal policies (the connection is
//!    tracked: replies pass), no match goes on (no default deny). They apply to everything
//!    arriving on the endpoint, forwarded or not.
//! 4. Service translation ([`crate::evaluate`]'s rules) and NetworkPolicy.
//! 5. **Normal** policies, on the translated packet: for the node's own traffic (to or from
//!    one of its addresses) every normal policy selecting the endpoint; for forwarded traffic
//!    only those with `applyOnForward`. The first matching rule decides; with no match, the
//!    packet is dropped when a policy of those applies to the direction (default deny), and
//!    allowed when none does (an endpoint without policies is open: the rule; Calico
//!    closes a named host endpoint without policies to the node's own traffic).
//!
//! Policy order: [`crate::HostPolicy::order`] ascending, policies without one last, equal
//! orders by name (Calico's). Within a policy, rules in order.

use std::net::{IpAddr, SocketAddr};

use crate::model::{
    DesiredState, HostAction, HostEndpoint, HostPolicy, HostRule, PolicyType, Protocol,
};

/// Where a packet enters the node's dataplane, as host policy sees it (the reference
/// model's `Entry` without the pod's name: this module sits below it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum From {
    /// From outside, on the uplink.
    Uplink,
    /// From the node itself.
    Host,
    /// From a local pod.
    Pod,
}

/// A packet's protocol, source and destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Flow {
    pub(crate) protocol: Protocol,
    pub(crate) source: SocketAddr,
    pub(crate) destination: SocketAddr,
}

/// The kind of a host policy, by its flags: when it is evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HostStage {
    /// `doNotTrack`: before conntrack, stateless.
    Untracked,
    /// `preDNAT`: ingress before service DNAT.
    PreDnat,
    /// Neither: after DNAT, stateful.
    Normal,
}

impl HostPolicy {
    /// When the policy is evaluated.
    pub fn stage(&self) -> HostStage {
        if self.do_not_track {
            HostStage::Untracked
        } else if self.pre_dnat {
            HostStage::PreDnat
        } else {
            HostStage::Normal
        }
    }
}

impl HostRule {
    /// Whether a packet of `protocol` from `source` to `destination` matches every part of
    /// the rule that is given.
    pub fn matches(&self, protocol: Protocol, source: SocketAddr, destination: SocketAddr) -> bool {
        let side = |m: &crate::model::HostRuleMatch, at: SocketAddr| {
            (m.nets.is_empty() || m.nets.iter().any(|n| n.contains(at.ip())))
                && (m.ports.is_empty() || m.ports.iter().any(|p| p.contains(at.port())))
        };
        self.protocol.is_none_or(|p| p == protocol)
            && side(&self.source, source)
            && side(&self.destination, destination)
    }
}

/// This node's host endpoint on its uplink: the one named for the uplink, else the one for
/// all interfaces, if any.
pub fn uplink_host_endpoint(state: &DesiredState) -> Option<&HostEndpoint> {
    let mine = || {
        state
            .host_endpoints
            .iter()
            .filter(|e| e.node == state.node.name)
    };
    mine()
        .find(|e| e.interface_name == state.node.interfaces.uplink)
        .or_else(|| mine().find(|e| e.is_all_interfaces()))
}

/// The host policies selecting `endpoint`, in evaluation order (order ascending, none last,
/// then name).
pub fn host_policies_for<'a>(
    state: &'a DesiredState,
    endpoint: &HostEndpoint,
) -> Vec<&'a HostPolicy> {
    let mut policies: Vec<&HostPolicy> = state
        .host_policies
        .iter()
        .filter(|p| p.selector.matches(&endpoint.labels))
        .collect();
    policies.sort_by(|a, b| {
        (a.order.is_none(), a.order, &a.name).cmp(&(b.order.is_none(), b.order, &b.name))
    });
    policies
}

/// What the stages before conntrack and DNAT decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Early {
    /// Dropped.
    Drop,
    /// Allowed by a failsafe port or a pre-DNAT rule: tracked, translated, no normal policy.
    Allowed,
    /// Allowed by an untracked rule: no conntrack, no translation, no later policy.
    Untracked,
    /// Nothing decided: the normal policies will.
    Continue,
}

/// The host endpoint and its policies, for one state.
pub(crate) struct HostView<'a> {
    state: &'a DesiredState,
    policies: Vec<&'a HostPolicy>,
}

impl<'a> HostView<'a> {
    /// The view of `state`, or `None` when the node has no host endpoint on its uplink.
    pub(crate) fn of(state: &'a DesiredState) -> Option<Self> {
        let endpoint = uplink_host_endpoint(state)?;
        Some(Self {
            state,
            policies: host_policies_for(state, endpoint),
        })
    }

    /// Whether `ip` is on this node: one of the node's addresses, a local pod's, or any
    /// address of the node's pod CIDRs — a node routes those to its pods, never out of the
    /// uplink (Calico blackholes the unused rest of its IPAM block), whether or not the state
    /// lists the pod yet; the eBPF programs' `is_local()` is the same test.
    fn is_local(&self, ip: IpAddr) -> bool {
        self.state.node.addresses.contains(&ip)
            || self.state.endpoints.iter().any(|e| e.ips.contains(&ip))
            || self.state.node.pod_cidrs.iter().any(|c| c.contains(ip))
    }

    /// The policies of `stage` that apply to `direction`, for forwarded traffic or not.
    fn applicable(
        &self,
        stage: HostStage,
        direction: PolicyType,
        forwarded: bool,
    ) -> impl Iterator<Item = &&'a HostPolicy> {
        self.policies.iter().filter(move |p| {
            p.stage() == stage && p.applies_to(direction) && (!forwarded || p.apply_on_forward)
        })
    }

    /// The action of the first rule of `stage` matching the packet.
    fn first_match(
        &self,
        stage: HostStage,
        direction: PolicyType,
        forwarded: bool,
        protocol: Protocol,
        source: SocketAddr,
        destination: SocketAddr,
    ) -> Option<HostAction> {
        self.applicable(stage, direction, forwarded).find_map(|p| {
            p.rules(direction)
                .iter()
                .find(|r| r.matches(protocol, source, destination))
                .map(|r| r.action)
        })
    }

    /// Failsafe, untracked and pre-DNAT stages for `packet` entering at `entry`.
    pub(crate) fn before_translation(&self, packet: &Flow, entry: From) -> Early {
        match self.before_conntrack(packet, entry) {
            Early::Continue if entry == From::Uplink => {
                let to_host = self.state.node.addresses.contains(&packet.destination.ip());
                match self.first_match(
                    HostStage::PreDnat,
                    PolicyType::Ingress,
                    !to_host,
                    packet.protocol,
                    packet.source,
                    packet.destination,
                ) {
                    Some(HostAction::Deny) => Early::Drop,
                    Some(HostAction::Allow) => Early::Allowed,
                    None => Early::Continue,
                }
            }
            early => early,
        }
    }

    /// The stages before conntrack — failsafe ports, then untracked rules — for `packet` as
    /// it is on the wire, entering at `entry`: what netfilter's `raw` table (Calico's
    /// `cali-PREROUTING` / `cali-OUTPUT` in felix `rules/static.go`) decides of *every*
    /// packet, a tracked connection's replies included (raw runs before conntrack, so it
    /// cannot tell a reply from a first packet). Inward: everything arriving on the uplink;
    /// outward: the node's own packets leaving by it (forwarded ones never meet `raw`
    /// output). `Early::Allowed` is a failsafe port.
    pub(crate) fn before_conntrack(&self, packet: &Flow, entry: From) -> Early {
        let dst = packet.destination;
        let failsafe = |ports: &[crate::model::FailsafePort]| {
            ports
                .iter()
                .any(|f| f.protocol == packet.protocol && f.port == dst.port())
        };
        let untracked = |direction: PolicyType, forwarded: bool| match self.first_match(
            HostStage::Untracked,
            direction,
            forwarded,
            packet.protocol,
            packet.source,
            dst,
        ) {
            Some(HostAction::Deny) => Early::Drop,
            Some(HostAction::Allow) => Early::Untracked,
            None => Early::Continue,
        };
        match entry {
            From::Uplink => {
                let to_host = self.state.node.addresses.contains(&dst.ip());
                if to_host && failsafe(&self.state.failsafe_ports.inbound) {
                    return Early::Allowed;
                }
                untracked(PolicyType::Ingress, !to_host)
            }
            From::Host if !self.is_local(dst.ip()) => {
                if failsafe(&self.state.failsafe_ports.outbound) {
                    return Early::Allowed;
                }
                untracked(PolicyType::Egress, false)
            }
            _ => Early::Continue,
        }
    }

    /// Where a packet from `source` to `destination` (as it is on the wire) crosses the
    /// endpoint: `Some(From::Uplink)` when it arrives on the uplink (its source is not on
    /// this node), `Some(From::Host)` when the node itself sends it out of the uplink (its
    /// source is one of the node's addresses, its destination not on this node), `None`
    /// when it does not cross (between the node and its pods) or crosses forwarded outward
    /// (from a local pod: no untracked rule sees it).
    pub(crate) fn crossing(&self, source: IpAddr, destination: IpAddr) -> Option<From> {
        if !self.is_local(source) {
            Some(From::Uplink)
        } else if self.state.node.addresses.contains(&source) && !self.is_local(destination) {
            Some(From::Host)
        } else {
            None
        }
    }

    /// Whether the normal policies let the translated packet from `source` to `destination`
    /// cross the endpoint, for a packet that entered at `entry`. A packet that crosses it
    /// twice (from the uplink, forwarded out of it again) must pass both ways.
    pub(crate) fn normal_allows(
        &self,
        entry: From,
        protocol: Protocol,
        source: SocketAddr,
        destination: SocketAddr,
    ) -> bool {
        let host = &self.state.node.addresses;
        let leg = |direction: PolicyType, forwarded: bool| match self.first_match(
            HostStage::Normal,
            direction,
            forwarded,
            protocol,
            source,
            destination,
        ) {
            Some(action) => action == HostAction::Allow,
            None => self
                .applicable(HostStage::Normal, direction, forwarded)
                .next()
                .is_none(),
        };
        let leaves = !self.is_local(destination.ip());
        let inward = match entry {
            From::Uplink => leg(PolicyType::Ingress, !host.contains(&destination.ip())),
            _ => true,
        };
        let outward = match entry {
            _ if !leaves => true,
            From::Host => leg(PolicyType::Egress, false),
            From::Pod | From::Uplink => leg(PolicyType::Egress, true),
        };
        inward && outward
    }
}
