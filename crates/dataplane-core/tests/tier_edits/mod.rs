//! Proptest edits of the cluster-wide policy objects (cluster policies, the baseline, peer
//! nodes, host endpoints, host policies, failsafe ports) of a state: valid ones and ones
//! validation refuses, the claims that must be unique (priorities, one host endpoint per
//! node and interface) taken from other objects or given up, objects added (names before and
//! after the existing ones: additions go to the end in name order), removed and renamed.
//!
//! A module of its own beside `strategies` (which generates valid states), used by
//! `validation.rs` and `tier_validation.rs` through `mod tier_edits;`: what turns a state
//! into a change of these objects for the incremental validator. Names stay unique (a change
//! set is keyed by name).
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr};

use dataplane_core::{
    BaselineAction, BaselinePolicy, BaselineRule, ClusterAction, ClusterPeer, ClusterPolicy,
    ClusterPolicyRule, ClusterPolicySubject, DesiredState, FailsafePort, HostAction, HostEndpoint,
    HostPolicy, HostPort, HostRule, LabelSelector, PeerNode, PolicyType, Protocol,
};
use proptest::prelude::*;

/// Names of added objects: some sort before every name the strategies use, some after,
/// one is invalid.
const ADDED: [&str; 4] = ["00-first", "zz-last", "twin", "Not-Valid"];
const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];
const INTERFACES: [&str; 4] = ["eth0", "*", "eth1", "bad name"];
const ADDRESSES: [Ipv4Addr; 4] = [
    Ipv4Addr::new(172, 18, 0, 50),
    Ipv4Addr::LOCALHOST,
    Ipv4Addr::new(224, 0, 0, 1),
    Ipv4Addr::new(172, 18, 0, 51),
];

/// Where a priority comes from: another cluster policy's (a clash, unless it moves too), or
/// a number (above 1000: out of range).
#[derive(Debug, Clone)]
pub enum Priority {
    Of(usize),
    Value(u32),
}

/// One edit; indices pick an object modulo the count (no object: no edit).
#[derive(Debug, Clone)]
pub enum TierEdit {
    Priority(usize, Priority),
    AddClusterPolicy(usize, Priority),
    RemoveClusterPolicy(usize),
    /// 0: a networks peer on ingress, 1: an empty rule name, 2: valid (another rule).
    ClusterRule(usize, u8),
    /// 0: removed, 1: a valid one, 2: a nodes peer on ingress.
    Baseline(u8),
    PeerNodeAddress(usize, usize),
    AddPeerNode(usize),
    RemovePeerNode(usize),
    HostEndpointNode(usize, usize),
    HostEndpointInterface(usize, usize),
    AddHostEndpoint(usize, usize, usize),
    RemoveHostEndpoint(usize),
    RenameHostEndpoint(usize, usize),
    /// 0: preDNAT and doNotTrack, 1: ports without a protocol, 2: port 0, 3: a CIDR with
    /// host bits, 4: a type twice, 5: valid (another rule).
    HostPolicy(usize, u8),
    AddHostPolicy(usize),
    RemoveHostPolicy(usize),
    /// 0: a port twice, 1: port 0, 2: valid (other ports).
    Failsafe(u8),
}

fn priority() -> impl Strategy<Value = Priority> {
    prop_oneof![
        (0usize..3).prop_map(Priority::Of),
        (0u32..=1010).prop_map(Priority::Value),
    ]
}

/// One edit of any kind.
pub fn edit() -> impl Strategy<Value = TierEdit> {
    let i = || 0usize..4;
    prop_oneof![
        (i(), priority()).prop_map(|(a, p)| TierEdit::Priority(a, p)),
        (i(), priority()).prop_map(|(a, p)| TierEdit::AddClusterPolicy(a, p)),
        i().prop_map(TierEdit::RemoveClusterPolicy),
        (i(), 0u8..3).prop_map(|(a, k)| TierEdit::ClusterRule(a, k)),
        (0u8..3).prop_map(TierEdit::Baseline),
        (i(), i()).prop_map(|(a, b)| TierEdit::PeerNodeAddress(a, b)),
        i().prop_map(TierEdit::AddPeerNode),
        i().prop_map(TierEdit::RemovePeerNode),
        (i(), 0usize..3).prop_map(|(a, b)| TierEdit::HostEndpointNode(a, b)),
        (i(), i()).prop_map(|(a, b)| TierEdit::HostEndpointInterface(a, b)),
        (i(), 0usize..3, i()).prop_map(|(a, b, c)| TierEdit::AddHostEndpoint(a, b, c)),
        i().prop_map(TierEdit::RemoveHostEndpoint),
        (i(), i()).prop_map(|(a, b)| TierEdit::RenameHostEndpoint(a, b)),
        (i(), 0u8..6).prop_map(|(a, k)| TierEdit::HostPolicy(a, k)),
        i().prop_map(TierEdit::AddHostPolicy),
        i().prop_map(TierEdit::RemoveHostPolicy),
        (0u8..3).prop_map(TierEdit::Failsafe),
    ]
}

/// Up to `max` edits.
pub fn edits(max: usize) -> impl Strategy<Value = Vec<TierEdit>> {
    prop::collection::vec(edit(), 0..=max)
}

/// Item `i` modulo the count; none of none.
pub fn pick<T>(items: &mut [T], i: usize) -> Option<&mut T> {
    let n = items.len();
    if n == 0 {
        None
    } else {
        items.get_mut(i % n)
    }
}

fn remove<T>(items: &mut Vec<T>, i: usize) {
    if !items.is_empty() {
        items.remove(i % items.len());
    }
}

fn everyone() -> ClusterPeer {
    ClusterPeer::Namespaces(LabelSelector::default())
}

fn all() -> ClusterPolicySubject {
    ClusterPolicySubject::Namespaces(LabelSelector::default())
}

fn value(s: &DesiredState, p: &Priority) -> u32 {
    match p {
        Priority::Of(j) if !s.cluster_policies.is_empty() => {
            s.cluster_policies[j % s.cluster_policies.len()].priority
        }
        Priority::Of(j) => *j as u32,
        Priority::Value(v) => *v,
    }
}

/// Applies `edit` to `s`.
pub fn apply(s: &mut DesiredState, edit: &TierEdit) {
    cluster(s, edit);
    host(s, edit);
}

/// The edits of cluster policies, the baseline and peer nodes.
fn cluster(s: &mut DesiredState, edit: &TierEdit) {
    match edit {
        TierEdit::Priority(i, p) => {
            let v = value(s, p);
            if let Some(c) = pick(&mut s.cluster_policies, *i) {
                c.priority = v;
            }
        }
        TierEdit::AddClusterPolicy(n, p) => {
            let name = ADDED[n % ADDED.len()];
            if !s.cluster_policies.iter().any(|c| c.name == name) {
                let v = value(s, p);
                s.cluster_policies
                    .push(
                        ClusterPolicy::new(name, v, all()).with_ingress(ClusterPolicyRule::new(
                            "all",
                            ClusterAction::Pass,
                            [everyone()],
                        )),
                    );
            }
        }
        TierEdit::RemoveClusterPolicy(i) => remove(&mut s.cluster_policies, *i),
        TierEdit::ClusterRule(i, kind) => {
            if let Some(c) = pick(&mut s.cluster_policies, *i) {
                let mut rule = ClusterPolicyRule::new("edited", ClusterAction::Deny, [everyone()]);
                match kind {
                    0 => {
                        rule.peers = vec![ClusterPeer::Networks(vec!["10.0.0.0/8"
                            .parse()
                            .expect("literal CIDR")])];
                    }
                    1 => rule.name.clear(),
                    _ => {}
                }
                c.ingress.push(rule);
            }
        }
        TierEdit::Baseline(kind) => {
            s.baseline_policy = match kind {
                0 => None,
                1 => Some(BaselinePolicy::new(all()).with_ingress(BaselineRule::new(
                    "all",
                    BaselineAction::Allow,
                    [everyone()],
                ))),
                _ => Some(BaselinePolicy::new(all()).with_ingress(BaselineRule::new(
                    "nodes",
                    BaselineAction::Deny,
                    [ClusterPeer::Nodes(LabelSelector::default())],
                ))),
            };
        }
        TierEdit::PeerNodeAddress(i, a) => {
            if let Some(n) = pick(&mut s.nodes, *i) {
                n.addresses = vec![IpAddr::V4(ADDRESSES[a % ADDRESSES.len()])];
            }
        }
        TierEdit::AddPeerNode(n) => {
            let name = ADDED[n % ADDED.len()];
            if !s.nodes.iter().any(|x| x.name == name) {
                s.nodes.push(PeerNode::new(
                    name,
                    [IpAddr::V4(ADDRESSES[n % ADDRESSES.len()])],
                ));
            }
        }
        TierEdit::RemovePeerNode(i) => remove(&mut s.nodes, *i),
        _ => {}
    }
}

/// The edits of host endpoints, host policies and failsafe ports.
fn host(s: &mut DesiredState, edit: &TierEdit) {
    match edit {
        TierEdit::HostEndpointNode(i, n) => {
            if let Some(e) = pick(&mut s.host_endpoints, *i) {
                NODES[n % NODES.len()].clone_into(&mut e.node);
            }
        }
        TierEdit::HostEndpointInterface(i, f) => {
            if let Some(e) = pick(&mut s.host_endpoints, *i) {
                INTERFACES[f % INTERFACES.len()].clone_into(&mut e.interface_name);
            }
        }
        TierEdit::AddHostEndpoint(n, node, f) => {
            let name = ADDED[n % ADDED.len()];
            if !s.host_endpoints.iter().any(|x| x.name == name) {
                s.host_endpoints.push(
                    HostEndpoint::new(
                        name,
                        NODES[node % NODES.len()],
                        INTERFACES[f % INTERFACES.len()],
                    )
                    .with_label("role", "uplink"),
                );
            }
        }
        TierEdit::RemoveHostEndpoint(i) => remove(&mut s.host_endpoints, *i),
        TierEdit::RenameHostEndpoint(i, n) => {
            let name = ADDED[n % ADDED.len()];
            if !s.host_endpoints.iter().any(|x| x.name == name) {
                if let Some(e) = pick(&mut s.host_endpoints, *i) {
                    name.clone_into(&mut e.name);
                }
            }
        }
        TierEdit::HostPolicy(i, kind) => {
            if let Some(p) = pick(&mut s.host_policies, *i) {
                match kind {
                    0 => {
                        p.pre_dnat = true;
                        p.do_not_track = true;
                    }
                    1 => {
                        let mut rule = HostRule::new(HostAction::Allow);
                        rule.destination.ports.push(HostPort::Number(22));
                        p.ingress.push(rule);
                    }
                    2 => p.ingress.push(
                        HostRule::new(HostAction::Deny)
                            .protocol(Protocol::Tcp)
                            .to_ports([HostPort::Number(0)]),
                    ),
                    3 => p.ingress.push(
                        HostRule::new(HostAction::Deny)
                            .from_nets(["10.1.2.3/16".parse().expect("literal CIDR")]),
                    ),
                    4 => p.types = vec![PolicyType::Ingress, PolicyType::Ingress],
                    _ => p.ingress.push(
                        HostRule::new(HostAction::Deny)
                            .from_nets(["203.0.113.0/24".parse().expect("literal CIDR")]),
                    ),
                }
            }
        }
        TierEdit::AddHostPolicy(n) => {
            let name = ADDED[n % ADDED.len()];
            if !s.host_policies.iter().any(|x| x.name == name) {
                s.host_policies.push(
                    HostPolicy::new(name, LabelSelector::default().with_label("role", "uplink"))
                        .untracked()
                        .with_ingress(
                            HostRule::new(HostAction::Deny)
                                .from_nets(["198.51.100.0/24".parse().expect("literal CIDR")]),
                        ),
                );
            }
        }
        TierEdit::RemoveHostPolicy(i) => remove(&mut s.host_policies, *i),
        TierEdit::Failsafe(kind) => match kind {
            0 => {
                let twin = s
                    .failsafe_ports
                    .inbound
                    .first()
                    .copied()
                    .unwrap_or(FailsafePort::tcp(22));
                s.failsafe_ports.inbound.extend([twin, twin]);
            }
            1 => s.failsafe_ports.outbound.push(FailsafePort::udp(0)),
            _ => {
                s.failsafe_ports.inbound = vec![FailsafePort::tcp(2222)];
                s.failsafe_ports.outbound = vec![FailsafePort::udp(53)];
            }
        },
        _ => {}
    }
}
