//! Validation of cluster policies, the baseline, peer nodes, host endpoints, host policies and
//! failsafe ports: the AdminNetworkPolicy API's bounds and Calico's constraints on host
//! policies (see [`crate::model`]'s `tiers` documentation for the sources).

use std::collections::{BTreeMap, BTreeSet};

use super::{
    check_cidr, check_ifname, check_name, check_port, check_selector, check_unicast, err_empty,
    ValidationError,
};
use crate::diff::{Change, ChangeSet};
use crate::model::{
    BaselinePolicy, ClusterPeer, ClusterPolicy, ClusterPolicySubject, ClusterPort, ClusterRule,
    DesiredState, FailsafePorts, HostEndpoint, HostPolicy, HostPort, HostRule, PeerNode,
    ALL_INTERFACES, MAX_CLUSTER_NETWORKS, MAX_CLUSTER_POLICY_PRIORITY, MAX_CLUSTER_POLICY_RULES,
    MAX_CLUSTER_RULE_PEERS, MAX_RULE_NAME,
};

fn inconsistent(object: &str, field: String, reason: &'static str) -> ValidationError {
    ValidationError::Inconsistent {
        object: object.to_owned(),
        field,
        reason,
    }
}

fn check_count(
    object: &str,
    field: &str,
    len: usize,
    min: usize,
    max: usize,
) -> Result<(), ValidationError> {
    if (min..=max).contains(&len) {
        return Ok(());
    }
    if len == 0 {
        return Err(err_empty(object, field));
    }
    Err(ValidationError::OutOfRange {
        object: object.to_owned(),
        field: format!("{field} (count)"),
        value: len as u64,
        min: min as u64,
        max: max as u64,
    })
}

/// Everything of [`DesiredState`] this module covers, in the order `validate` reports it.
pub(super) fn validate_tiers(state: &DesiredState) -> Result<(), ValidationError> {
    let mut names = BTreeSet::new();
    let mut priorities: BTreeMap<u32, &str> = BTreeMap::new();
    for policy in &state.cluster_policies {
        let object = format!("cluster policy {}", policy.name);
        if !names.insert(&policy.name) {
            return Err(ValidationError::DuplicateName { object });
        }
        validate_cluster_policy(policy, &object)?;
        if let Some(other) = priorities.insert(policy.priority, &policy.name) {
            return Err(ValidationError::Duplicate {
                object,
                field: "priority".to_owned(),
                value: format!(
                    "{} (also the priority of cluster policy {other})",
                    policy.priority
                ),
            });
        }
    }
    if let Some(baseline) = &state.baseline_policy {
        validate_baseline(baseline, "baseline policy")?;
    }
    let mut names = BTreeSet::new();
    for node in &state.nodes {
        let object = format!("peer node {}", node.name);
        if !names.insert(&node.name) {
            return Err(ValidationError::DuplicateName { object });
        }
        validate_peer_node(node, &object)?;
    }
    let mut names = BTreeSet::new();
    let mut interfaces = BTreeMap::new();
    for endpoint in &state.host_endpoints {
        let object = format!("host endpoint {}", endpoint.name);
        if !names.insert(&endpoint.name) {
            return Err(ValidationError::DuplicateName { object });
        }
        validate_host_endpoint(endpoint, &object)?;
        let key = (&endpoint.node, &endpoint.interface_name);
        if let Some(other) = interfaces.insert(key, &endpoint.name) {
            return Err(ValidationError::Duplicate {
                object,
                field: "interfaceName".to_owned(),
                value: format!(
                    "{} on node {} (also host endpoint {other})",
                    endpoint.interface_name, endpoint.node
                ),
            });
        }
    }
    let mut names = BTreeSet::new();
    for policy in &state.host_policies {
        let object = format!("host policy {}", policy.name);
        if !names.insert(&policy.name) {
            return Err(ValidationError::DuplicateName { object });
        }
        validate_host_policy(policy, &object)?;
    }
    validate_failsafe(&state.failsafe_ports, "failsafe ports")
}

fn validate_subject(object: &str, subject: &ClusterPolicySubject) -> Result<(), ValidationError> {
    match subject {
        ClusterPolicySubject::Namespaces(sel) => check_selector(object, "subject.namespaces", sel),
        ClusterPolicySubject::Pods(pods) => {
            check_selector(
                object,
                "subject.pods.namespaceSelector",
                &pods.namespace_selector,
            )?;
            check_selector(object, "subject.pods.podSelector", &pods.pod_selector)
        }
    }
}

pub(super) fn validate_cluster_policy(
    p: &ClusterPolicy,
    object: &str,
) -> Result<(), ValidationError> {
    check_name(object, "name", &p.name, 253)?;
    if p.priority > MAX_CLUSTER_POLICY_PRIORITY {
        return Err(ValidationError::OutOfRange {
            object: object.to_owned(),
            field: "priority".to_owned(),
            value: u64::from(p.priority),
            min: 0,
            max: u64::from(MAX_CLUSTER_POLICY_PRIORITY),
        });
    }
    validate_subject(object, &p.subject)?;
    validate_rules(object, &p.ingress, &p.egress)
}

pub(super) fn validate_baseline(p: &BaselinePolicy, object: &str) -> Result<(), ValidationError> {
    validate_subject(object, &p.subject)?;
    validate_rules(object, &p.ingress, &p.egress)
}

/// The ingress and egress rules of a cluster or baseline policy.
fn validate_rules<A>(
    object: &str,
    ingress: &[ClusterRule<A>],
    egress: &[ClusterRule<A>],
) -> Result<(), ValidationError> {
    for (dir, rules) in [("ingress", ingress), ("egress", egress)] {
        if rules.len() > MAX_CLUSTER_POLICY_RULES {
            check_count(object, dir, rules.len(), 0, MAX_CLUSTER_POLICY_RULES)?;
        }
        for (i, r) in rules.iter().enumerate() {
            let at = format!("{dir}[{i}]");
            validate_cluster_rule(object, &at, dir == "egress", r)?;
        }
    }
    Ok(())
}

/// A rule of a cluster or baseline policy (`at` is `ingress[0]`).
fn validate_cluster_rule<A>(
    object: &str,
    at: &str,
    egress: bool,
    rule: &ClusterRule<A>,
) -> Result<(), ValidationError> {
    let (name, peers, ports) = (&rule.name, &rule.peers, &rule.ports);
    if name.is_empty() {
        return Err(err_empty(object, &format!("{at}.name")));
    }
    if name.chars().count() > MAX_RULE_NAME {
        check_count(
            object,
            &format!("{at}.name"),
            name.chars().count(),
            1,
            MAX_RULE_NAME,
        )?;
    }
    check_count(
        object,
        &format!("{at}.peers"),
        peers.len(),
        1,
        MAX_CLUSTER_RULE_PEERS,
    )?;
    for (j, peer) in peers.iter().enumerate() {
        let field = format!("{at}.peers[{j}]");
        match peer {
            ClusterPeer::Namespaces(sel) => {
                check_selector(object, &format!("{field}.namespaces"), sel)?;
            }
            ClusterPeer::Pods(pods) => {
                check_selector(
                    object,
                    &format!("{field}.pods.namespaceSelector"),
                    &pods.namespace_selector,
                )?;
                check_selector(
                    object,
                    &format!("{field}.pods.podSelector"),
                    &pods.pod_selector,
                )?;
            }
            ClusterPeer::Nodes(sel) => {
                if !egress {
                    return Err(inconsistent(
                        object,
                        format!("{field}.nodes"),
                        "nodes peers are egress peers only",
                    ));
                }
                check_selector(object, &format!("{field}.nodes"), sel)?;
            }
            ClusterPeer::Networks(nets) => {
                if !egress {
                    return Err(inconsistent(
                        object,
                        format!("{field}.networks"),
                        "networks peers are egress peers only",
                    ));
                }
                let f = format!("{field}.networks");
                check_count(object, &f, nets.len(), 1, MAX_CLUSTER_NETWORKS)?;
                for (k, net) in nets.iter().enumerate() {
                    check_cidr(object, &format!("{f}[{k}]"), *net)?;
                }
            }
        }
    }
    if ports.len() > MAX_CLUSTER_RULE_PEERS {
        check_count(
            object,
            &format!("{at}.ports"),
            ports.len(),
            0,
            MAX_CLUSTER_RULE_PEERS,
        )?;
    }
    for (j, port) in ports.iter().enumerate() {
        let field = format!("{at}.ports[{j}]");
        match port {
            ClusterPort::PortNumber { port, .. } => {
                check_port(object, &format!("{field}.portNumber.port"), *port)?;
            }
            ClusterPort::NamedPort(name) => {
                check_name(object, &format!("{field}.namedPort"), name, 15)?;
            }
            ClusterPort::PortRange { start, end, .. } => {
                check_port(object, &format!("{field}.portRange.start"), *start)?;
                if end < start {
                    return Err(inconsistent(
                        object,
                        format!("{field}.portRange.end"),
                        "end is smaller than start",
                    ));
                }
            }
        }
    }
    Ok(())
}

fn validate_peer_node(n: &PeerNode, object: &str) -> Result<(), ValidationError> {
    check_name(object, "name", &n.name, 253)?;
    for (i, a) in n.addresses.iter().enumerate() {
        check_unicast(object, &format!("addresses[{i}]"), *a)?;
    }
    if n.labels.keys().any(String::is_empty) {
        return Err(err_empty(object, "labels"));
    }
    Ok(())
}

pub(super) fn validate_host_endpoint(
    e: &HostEndpoint,
    object: &str,
) -> Result<(), ValidationError> {
    check_name(object, "name", &e.name, 253)?;
    check_name(object, "node", &e.node, 253)?;
    if e.interface_name != ALL_INTERFACES {
        check_ifname(object, "interfaceName", &e.interface_name)?;
    }
    for (i, ip) in e.expected_ips.iter().enumerate() {
        check_unicast(object, &format!("expectedIPs[{i}]"), *ip)?;
    }
    if e.labels.keys().any(String::is_empty) {
        return Err(err_empty(object, "labels"));
    }
    Ok(())
}

pub(super) fn validate_host_policy(p: &HostPolicy, object: &str) -> Result<(), ValidationError> {
    check_name(object, "name", &p.name, 253)?;
    check_selector(object, "selector", &p.selector)?;
    for (i, t) in p.types.iter().enumerate() {
        if p.types[..i].contains(t) {
            return Err(ValidationError::Duplicate {
                object: object.to_owned(),
                field: format!("types[{i}]"),
                value: format!("{t:?}"),
            });
        }
    }
    // Calico's GlobalNetworkPolicy validation.
    if p.pre_dnat && p.do_not_track {
        return Err(inconsistent(
            object,
            "preDNAT".to_owned(),
            "a policy cannot be both preDNAT and doNotTrack",
        ));
    }
    if p.pre_dnat && !p.egress.is_empty() {
        return Err(inconsistent(
            object,
            "egress".to_owned(),
            "preDNAT policy takes ingress rules only",
        ));
    }
    if p.pre_dnat && p.types.contains(&crate::model::PolicyType::Egress) {
        return Err(inconsistent(
            object,
            "types".to_owned(),
            "preDNAT policy takes ingress rules only",
        ));
    }
    if p.pre_dnat && !p.apply_on_forward {
        return Err(inconsistent(
            object,
            "applyOnForward".to_owned(),
            "preDNAT policy needs applyOnForward",
        ));
    }
    if p.do_not_track && !p.apply_on_forward {
        return Err(inconsistent(
            object,
            "applyOnForward".to_owned(),
            "doNotTrack policy needs applyOnForward",
        ));
    }
    for (dir, rules) in [("ingress", &p.ingress), ("egress", &p.egress)] {
        for (i, rule) in rules.iter().enumerate() {
            validate_host_rule(rule, object, &format!("{dir}[{i}]"))?;
        }
    }
    Ok(())
}

fn validate_host_rule(rule: &HostRule, object: &str, at: &str) -> Result<(), ValidationError> {
    for (side, m) in [("source", &rule.source), ("destination", &rule.destination)] {
        for (k, net) in m.nets.iter().enumerate() {
            check_cidr(object, &format!("{at}.{side}.nets[{k}]"), *net)?;
        }
        if !m.ports.is_empty() && rule.protocol.is_none() {
            return Err(inconsistent(
                object,
                format!("{at}.{side}.ports"),
                "ports need a protocol",
            ));
        }
        for (k, port) in m.ports.iter().enumerate() {
            let field = format!("{at}.{side}.ports[{k}]");
            match port {
                HostPort::Number(p) => check_port(object, &field, *p)?,
                HostPort::Range(r) => {
                    check_port(object, &format!("{field}.start"), r.start)?;
                    if r.end < r.start {
                        return Err(inconsistent(
                            object,
                            format!("{field}.end"),
                            "end is smaller than start",
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

fn validate_failsafe(f: &FailsafePorts, object: &str) -> Result<(), ValidationError> {
    for (dir, ports) in [("inbound", &f.inbound), ("outbound", &f.outbound)] {
        let mut seen = BTreeSet::new();
        for (i, p) in ports.iter().enumerate() {
            let field = format!("{dir}[{i}]");
            check_port(object, &format!("{field}.port"), p.port)?;
            if !seen.insert(p) {
                return Err(ValidationError::Duplicate {
                    object: object.to_owned(),
                    field,
                    value: format!("{} {}", p.protocol, p.port),
                });
            }
        }
    }
    Ok(())
}

/// What [`super::Validator`] keeps of the objects this module validates, so that it checks a
/// change of them against the rest as [`validate_tiers`] checks the whole state: each
/// object's position in the state and the claim that must be unique (a cluster policy's
/// priority, a host endpoint's node and interface).
///
/// Positions follow [`ChangeSet::apply_to`]: an object that stays keeps its place, additions
/// go to the end in name order. A full validation reports the first problem in that order (a
/// clash names the later of the two objects), and so does [`TierClaims::check`].
///
/// Each object's own checks are Calico's and the AdminNetworkPolicy API's (above); what is
/// kept between changes follows kube-proxy's change trackers and felix's calculation graph
/// (`felix/calc`), which handle an update by key against an index of what the other objects
/// hold, never by re-reading every object.
#[derive(Debug, Clone, Default)]
pub(super) struct TierClaims {
    cluster_policies: Ordered<u32>,
    peer_nodes: Ordered<()>,
    host_endpoints: Ordered<(String, String)>,
    host_policies: Ordered<()>,
}

/// Objects of one kind by name: position in the state and claim.
#[derive(Debug, Clone)]
struct Ordered<K> {
    by_name: BTreeMap<String, (u64, Option<K>)>,
    /// Claim -> the object holding it (one per claim: the state was valid).
    holders: BTreeMap<K, String>,
    /// The position the next addition takes.
    next: u64,
}

impl<K> Default for Ordered<K> {
    fn default() -> Self {
        Self {
            by_name: BTreeMap::new(),
            holders: BTreeMap::new(),
            next: 0,
        }
    }
}

/// How to check one kind of object: its name in errors, its own validation, its claim and
/// the error of a claim made twice (`object`, the claim, the earlier holder).
struct Kind<T, K> {
    what: &'static str,
    name: fn(&T) -> &str,
    validate: fn(&T, &str) -> Result<(), ValidationError>,
    claim: fn(&T) -> Option<K>,
    clash: fn(String, &K, &str) -> ValidationError,
}

const CLUSTER_POLICY: Kind<ClusterPolicy, u32> = Kind {
    what: "cluster policy",
    name: |p| &p.name,
    validate: validate_cluster_policy,
    claim: |p| Some(p.priority),
    clash: |object, priority, other| ValidationError::Duplicate {
        object,
        field: "priority".to_owned(),
        value: format!("{priority} (also the priority of cluster policy {other})"),
    },
};

const PEER_NODE: Kind<PeerNode, ()> = Kind {
    what: "peer node",
    name: |n| &n.name,
    validate: validate_peer_node,
    claim: |_| None,
    clash: |object, (), _| ValidationError::DuplicateName { object },
};

const HOST_ENDPOINT: Kind<HostEndpoint, (String, String)> = Kind {
    what: "host endpoint",
    name: |e| &e.name,
    validate: validate_host_endpoint,
    claim: |e| Some((e.node.clone(), e.interface_name.clone())),
    clash: |object, (node, interface), other| ValidationError::Duplicate {
        object,
        field: "interfaceName".to_owned(),
        value: format!("{interface} on node {node} (also host endpoint {other})"),
    },
};

const HOST_POLICY: Kind<HostPolicy, ()> = Kind {
    what: "host policy",
    name: |p| &p.name,
    validate: validate_host_policy,
    claim: |_| None,
    clash: |object, (), _| ValidationError::DuplicateName { object },
};

/// An object's place: its own (`known`) when it is in the state, else the next addition's
/// (`next` counts them).
fn place(known: Option<u64>, next: &mut u64) -> u64 {
    known.unwrap_or_else(|| {
        *next += 1;
        *next - 1
    })
}

impl<K: Ord + Clone> Ordered<K> {
    fn new<T>(items: &[T], kind: &Kind<T, K>) -> Self {
        let mut this = Self::default();
        for item in items {
            let name = (kind.name)(item).to_owned();
            let claim = (kind.claim)(item);
            if let Some(k) = &claim {
                this.holders.insert(k.clone(), name.clone());
            }
            this.by_name.insert(name, (this.next, claim));
            this.next += 1;
        }
        this
    }

    /// The objects `changes` leaves in the state, with their positions after it.
    fn present<'c, T>(&self, changes: &'c BTreeMap<String, Change<T>>) -> Vec<(u64, &'c T)> {
        let mut next = self.next;
        let mut out = Vec::new();
        for (name, change) in changes {
            let Some(current) = &change.current else {
                continue;
            };
            let position = place(self.by_name.get(name).map(|(p, _)| *p), &mut next);
            out.push((position, current));
        }
        out.sort_by_key(|(position, _)| *position);
        out
    }

    /// The first problem a full validation of this kind finds after `changes`.
    fn check<T>(
        &self,
        changes: &BTreeMap<String, Change<T>>,
        kind: &Kind<T, K>,
    ) -> Result<(), ValidationError> {
        for (name, change) in changes {
            if let Some(current) = &change.current {
                if (kind.name)(current) != name {
                    return Err(inconsistent(
                        &format!("{} {}", kind.what, (kind.name)(current)),
                        "name".to_owned(),
                        "the change set files it under another name",
                    ));
                }
            }
        }
        let present = self.present(changes);
        // The first object that is invalid in itself (only changed ones can be).
        let invalid = present.iter().find_map(|(position, item)| {
            let object = format!("{} {}", kind.what, (kind.name)(item));
            (kind.validate)(item, &object).err().map(|e| (*position, e))
        });
        // The first claim made twice: per claim a changed object makes, its holders after
        // the change (the changed ones and an unchanged holder) in state order; the second
        // is where a full validation stops.
        let mut holders: BTreeMap<K, Vec<(u64, &str)>> = BTreeMap::new();
        for (position, item) in &present {
            if let Some(k) = (kind.claim)(item) {
                holders
                    .entry(k)
                    .or_default()
                    .push((*position, (kind.name)(item)));
            }
        }
        let mut clash: Option<(u64, &str, &K, &str)> = None;
        for (k, list) in &mut holders {
            if let Some(holder) = self.holders.get(k) {
                if !changes.contains_key(holder) {
                    if let Some((position, _)) = self.by_name.get(holder) {
                        list.push((*position, holder));
                    }
                }
            }
            list.sort_unstable();
            if let [(_, first), (position, second), ..] = list[..] {
                if clash.is_none_or(|(p, ..)| position < p) {
                    clash = Some((position, second, k, first));
                }
            }
        }
        match (invalid, clash) {
            (Some((p, e)), Some((q, ..))) if p <= q => Err(e),
            (Some((_, e)), None) => Err(e),
            (_, Some((_, object, k, other))) => {
                Err((kind.clash)(format!("{} {object}", kind.what), k, other))
            }
            (None, None) => Ok(()),
        }
    }

    /// Records `changes` (checked) as applied.
    fn commit<T>(&mut self, changes: &BTreeMap<String, Change<T>>, kind: &Kind<T, K>) {
        for (name, change) in changes {
            let old = self.by_name.remove(name);
            if let Some((_, Some(k))) = &old {
                if self.holders.get(k) == Some(name) {
                    self.holders.remove(k);
                }
            }
            let Some(current) = &change.current else {
                continue;
            };
            let position = place(old.map(|(p, _)| p), &mut self.next);
            let claim = (kind.claim)(current);
            if let Some(k) = &claim {
                self.holders.insert(k.clone(), name.clone());
            }
            self.by_name.insert(name.clone(), (position, claim));
        }
    }
}

impl TierClaims {
    /// The claims of `state` (valid).
    pub(super) fn new(state: &DesiredState) -> Self {
        Self {
            cluster_policies: Ordered::new(&state.cluster_policies, &CLUSTER_POLICY),
            peer_nodes: Ordered::new(&state.nodes, &PEER_NODE),
            host_endpoints: Ordered::new(&state.host_endpoints, &HOST_ENDPOINT),
            host_policies: Ordered::new(&state.host_policies, &HOST_POLICY),
        }
    }

    /// What [`validate_tiers`] finds first in the state after `changes`, looking at the
    /// changed objects and the claims they make only.
    pub(super) fn check(&self, changes: &ChangeSet) -> Result<(), ValidationError> {
        self.cluster_policies
            .check(&changes.cluster_policies, &CLUSTER_POLICY)?;
        if let Some(Change {
            current: Some(baseline),
            ..
        }) = &changes.baseline_policy
        {
            validate_baseline(baseline, "baseline policy")?;
        }
        self.peer_nodes.check(&changes.nodes, &PEER_NODE)?;
        self.host_endpoints
            .check(&changes.host_endpoints, &HOST_ENDPOINT)?;
        self.host_policies
            .check(&changes.host_policies, &HOST_POLICY)?;
        if let Some(Change {
            current: Some(ports),
            ..
        }) = &changes.failsafe_ports
        {
            validate_failsafe(ports, "failsafe ports")?;
        }
        Ok(())
    }

    /// Records `changes` (checked) as applied.
    pub(super) fn commit(&mut self, changes: &ChangeSet) {
        self.cluster_policies
            .commit(&changes.cluster_policies, &CLUSTER_POLICY);
        self.peer_nodes.commit(&changes.nodes, &PEER_NODE);
        self.host_endpoints
            .commit(&changes.host_endpoints, &HOST_ENDPOINT);
        self.host_policies
            .commit(&changes.host_policies, &HOST_POLICY);
    }
}
