//! The tier compiler (`policy_tables::compile_tiers`): the tables of cluster policies and the
//! baseline, combined with NetworkPolicy's by `tiered_allows`, answer every half-connection
//! as the reference model (`policy_verdict`) does, over core's random states (cluster
//! policies with Allow/Deny/Pass, a baseline, peer nodes, named ports, networks), and in the
//! cases of issue 22's list: a cluster Deny beats a NetworkPolicy Allow, Pass defers, the
//! baseline only where nothing isolates.

mod strategies;

use std::collections::BTreeSet;
use std::net::IpAddr;

use dataplane_core::policy_tables::{compile_tiers, tiered_allows, Peer, Tier, TierAction};
use dataplane_core::{
    compile, policy_verdict, validate, BaselineAction, BaselinePolicy, BaselineRule, ClusterAction,
    ClusterPeer, ClusterPolicy, ClusterPolicyRule, ClusterPolicySubject, ClusterPort, Decision,
    DesiredState, Endpoint, LabelSelector, NamedPort, Namespace, NamespacedPods, Node, ObjectName,
    PeerNode, PeerPod, Policy, PolicyRule, PolicyType, PortRef, Protocol,
};
use proptest::prelude::*;

/// The ports worth probing in `state`: every number a rule or a named port names, and its
/// neighbours.
fn ports(state: &DesiredState) -> BTreeSet<u16> {
    let mut out: BTreeSet<u16> = [1, 80, 443].into();
    let mut add = |p: u16| {
        out.extend([p.saturating_sub(1), p, p.saturating_add(1)]);
    };
    for np in state
        .endpoints
        .iter()
        .flat_map(|e| &e.named_ports)
        .chain(state.pods.iter().flat_map(|p| &p.named_ports))
    {
        add(np.port);
    }
    for p in &state.policies {
        for port in p.ingress.iter().chain(&p.egress).flat_map(|r| &r.ports) {
            if let Some(PortRef::Number(n)) = port.port {
                add(n);
            }
            if let Some(e) = port.end_port {
                add(e);
            }
        }
    }
    let cluster = state
        .cluster_policies
        .iter()
        .flat_map(|p| p.ingress.iter().chain(&p.egress))
        .flat_map(|r| &r.ports);
    let baseline = state
        .baseline_policy
        .iter()
        .flat_map(|p| p.ingress.iter().chain(&p.egress))
        .flat_map(|r| &r.ports);
    for port in cluster.chain(baseline) {
        match port {
            ClusterPort::PortNumber { port, .. } => add(*port),
            ClusterPort::PortRange { start, end, .. } => {
                add(*start);
                add(*end);
            }
            ClusterPort::NamedPort(_) => {}
        }
    }
    out
}

/// The peers worth probing: every pod and node address, an address in each network, and
/// addresses outside everything.
fn peers(state: &DesiredState) -> BTreeSet<IpAddr> {
    let mut out: BTreeSet<IpAddr> = ["192.0.2.77", "2001:db8::77"]
        .iter()
        .map(|s| s.parse().expect("address"))
        .collect();
    out.extend(state.endpoints.iter().flat_map(|e| e.ips.iter().copied()));
    out.extend(state.pods.iter().flat_map(|p| p.ips.iter().copied()));
    out.extend(state.nodes.iter().flat_map(|n| n.addresses.iter().copied()));
    let rules = state
        .cluster_policies
        .iter()
        .flat_map(|p| p.ingress.iter().chain(&p.egress))
        .flat_map(|r| &r.peers);
    let baseline = state
        .baseline_policy
        .iter()
        .flat_map(|p| p.ingress.iter().chain(&p.egress))
        .flat_map(|r| &r.peers);
    for peer in rules.chain(baseline) {
        if let ClusterPeer::Networks(nets) = peer {
            out.extend(nets.iter().map(ipnetwork::IpNetwork::network));
        }
    }
    out
}

/// Checks every local endpoint, direction, peer, protocol and port of `state`: the tables
/// against the reference. Returns how many half-connections a tier decided (so that the
/// random states are seen to exercise the tiers).
fn check(state: &DesiredState) -> Result<usize, TestCaseError> {
    let np = compile(state);
    let tiers = compile_tiers(state);
    let ports = ports(state);
    let peers = peers(state);
    let mut decided = 0;
    for e in &state.endpoints {
        for ip in &e.ips {
            for peer in &peers {
                if peer == ip
                    || state.node.addresses.contains(peer)
                    || ip.is_ipv4() != peer.is_ipv4()
                {
                    continue;
                }
                for protocol in [Protocol::Tcp, Protocol::Udp] {
                    for port in &ports {
                        for direction in [PolicyType::Egress, PolicyType::Ingress] {
                            let (verdict, want) = match direction {
                                PolicyType::Egress => {
                                    let v = policy_verdict(state, *ip, *peer, protocol, *port);
                                    (v.egress.clone(), v.egress.allows())
                                }
                                PolicyType::Ingress => {
                                    let v = policy_verdict(state, *peer, *ip, protocol, *port);
                                    (v.ingress.clone(), v.ingress.allows())
                                }
                            };
                            if matches!(
                                verdict,
                                Decision::ClusterAllowed { .. }
                                    | Decision::ClusterDenied { .. }
                                    | Decision::BaselineAllowed { .. }
                                    | Decision::BaselineDenied { .. }
                            ) {
                                decided += 1;
                            }
                            let got = tiered_allows(
                                &np, &tiers, &e.name, direction, *peer, protocol, *port,
                            );
                            prop_assert_eq!(
                                got,
                                Some(want),
                                "{} {:?} {} {:?}/{}: reference {:?}",
                                e.name,
                                direction,
                                peer,
                                protocol,
                                port,
                                verdict
                            );
                        }
                    }
                }
            }
        }
    }
    Ok(decided)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn tier_tables_answer_as_the_reference(state in strategies::state()) {
        prop_assume!(validate(&state).is_ok());
        check(&state)?;
    }

    /// The strategies' selectors rarely select an endpoint: here every cluster policy and the
    /// baseline select every pod, so that the tiers decide often.
    #[test]
    fn tier_tables_answer_as_the_reference_when_tiers_select_everything(
        state in strategies::state()
    ) {
        let mut state = state;
        for p in &mut state.cluster_policies {
            p.subject = ClusterPolicySubject::Namespaces(LabelSelector::default());
        }
        if let Some(b) = &mut state.baseline_policy {
            b.subject = ClusterPolicySubject::Namespaces(LabelSelector::default());
        }
        prop_assume!(validate(&state).is_ok());
        check(&state)?;
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn sel(key: &str, value: &str) -> LabelSelector {
    LabelSelector::default().with_label(key, value)
}

/// node-a runs x/a (10.244.0.11, `pod: a`, named port `http` TCP 8080) and x/b
/// (10.244.0.12); y/c (10.244.1.22) is on node-b (172.18.0.3, `zone: b`).
fn base() -> DesiredState {
    let mut st = DesiredState::new(Node::new("node-a", [ip("172.18.0.2")]));
    st.namespaces = vec![
        Namespace::new("x").with_label("team", "x"),
        Namespace::new("y").with_label("team", "y"),
    ];
    let mut a = Endpoint::new(ObjectName::new("x", "a"), "lxc0", [ip("10.244.0.11")])
        .with_label("pod", "a");
    a.named_ports = vec![NamedPort::new("http", Protocol::Tcp, 8080)];
    st.endpoints = vec![
        a,
        Endpoint::new(ObjectName::new("x", "b"), "lxc1", [ip("10.244.0.12")])
            .with_label("pod", "b"),
    ];
    st.pods =
        vec![PeerPod::new(ObjectName::new("y", "c"), [ip("10.244.1.22")]).with_label("pod", "c")];
    st.nodes = vec![PeerNode::new("node-b", [ip("172.18.0.3")]).with_label("zone", "b")];
    st
}

fn allow_all_ingress_np() -> Policy {
    Policy {
        name: ObjectName::new("x", "allow-all"),
        pod_selector: LabelSelector::default(),
        policy_types: Vec::new(),
        ingress: vec![PolicyRule::default()],
        egress: Vec::new(),
    }
}

fn pods_of(team: &str) -> ClusterPeer {
    ClusterPeer::Namespaces(sel("team", team))
}

fn xa() -> ObjectName {
    ObjectName::new("x", "a")
}

#[test]
fn cluster_deny_beats_a_network_policy_allow_and_pass_defers() {
    let mut st = base();
    st.policies = vec![allow_all_ingress_np()];
    st.cluster_policies = vec![
        ClusterPolicy::for_namespaces("deny-y", 10, sel("team", "x")).with_ingress(
            ClusterPolicyRule::new("deny", ClusterAction::Deny, [pods_of("y")]),
        ),
        ClusterPolicy::for_namespaces("pass-y-8080", 5, sel("team", "x")).with_ingress(
            ClusterPolicyRule::new("pass", ClusterAction::Pass, [pods_of("y")])
                .with_port(ClusterPort::NamedPort("http".into())),
        ),
    ];
    validate(&st).expect("valid");
    let np = compile(&st);
    let tiers = compile_tiers(&st);
    let at = |port| {
        tiered_allows(
            &np,
            &tiers,
            &xa(),
            PolicyType::Ingress,
            ip("10.244.1.22"),
            Protocol::Tcp,
            port,
        )
    };
    // 8080 is `http` on x/a: Pass (priority 5) defers to the NetworkPolicy, which allows.
    assert_eq!(at(8080), Some(true));
    assert_eq!(
        tiers.decide(
            &xa(),
            Tier::Cluster,
            PolicyType::Ingress,
            ip("10.244.1.22"),
            Protocol::Tcp,
            8080
        ),
        Some((5 << 8, TierAction::Pass))
    );
    // Any other port: the Deny (priority 10) beats the NetworkPolicy's allow.
    assert_eq!(at(80), Some(false));
    // x/b's own namespace is not denied.
    assert_eq!(
        tiered_allows(
            &np,
            &tiers,
            &xa(),
            PolicyType::Ingress,
            ip("10.244.0.12"),
            Protocol::Tcp,
            80
        ),
        Some(true)
    );
    check(&st).expect("agrees with the reference");
}

#[test]
fn baseline_only_where_no_network_policy_isolates() {
    let mut st = base();
    st.baseline_policy = Some(
        BaselinePolicy::new(ClusterPolicySubject::Pods(NamespacedPods {
            namespace_selector: LabelSelector::default(),
            pod_selector: LabelSelector::default(),
        }))
        .with_ingress(BaselineRule::new(
            "deny-y",
            BaselineAction::Deny,
            [pods_of("y")],
        ))
        .with_egress(BaselineRule::new(
            "deny-zone-b",
            BaselineAction::Deny,
            [ClusterPeer::Nodes(sel("zone", "b"))],
        )),
    );
    let mut only_a = allow_all_ingress_np();
    only_a.pod_selector = sel("pod", "a");
    st.policies = vec![only_a];
    validate(&st).expect("valid");
    let np = compile(&st);
    let tiers = compile_tiers(&st);
    let from_c = |name: &str| {
        tiered_allows(
            &np,
            &tiers,
            &ObjectName::new("x", name),
            PolicyType::Ingress,
            ip("10.244.1.22"),
            Protocol::Tcp,
            80,
        )
    };
    // x/a is isolated (its NetworkPolicy allows all): the baseline is not consulted.
    assert_eq!(from_c("a"), Some(true));
    // x/b is not isolated: the baseline denies.
    assert_eq!(from_c("b"), Some(false));
    // A nodes peer: node-b's address is in a node set.
    let to_node_b = tiered_allows(
        &np,
        &tiers,
        &ObjectName::new("x", "b"),
        PolicyType::Egress,
        ip("172.18.0.3"),
        Protocol::Udp,
        53,
    );
    assert_eq!(to_node_b, Some(false));
    let node_sets: Vec<_> = tiers
        .sets
        .keys()
        .filter(|id| id.0.starts_with("{\"nodes\""))
        .collect();
    assert_eq!(node_sets.len(), 1, "{:?}", tiers.sets.keys());
    check(&st).expect("agrees with the reference");
}

#[test]
fn egress_named_ports_and_networks() {
    let mut st = base();
    st.pods[0].named_ports = vec![NamedPort::new("http", Protocol::Tcp, 9090)];
    st.cluster_policies = vec![ClusterPolicy::for_namespaces("egress", 1, sel("team", "x"))
        .with_egress(
            ClusterPolicyRule::new("http-to-y", ClusterAction::Allow, [pods_of("y")])
                .with_port(ClusterPort::NamedPort("http".into())),
        )
        .with_egress(ClusterPolicyRule::new(
            "deny-pods",
            ClusterAction::Deny,
            [ClusterPeer::Networks(vec!["10.244.0.0/16"
                .parse()
                .expect("net")])],
        ))];
    validate(&st).expect("valid");
    let np = compile(&st);
    let tiers = compile_tiers(&st);
    let to_c = |port| {
        tiered_allows(
            &np,
            &tiers,
            &xa(),
            PolicyType::Egress,
            ip("10.244.1.22"),
            Protocol::Tcp,
            port,
        )
    };
    assert_eq!(to_c(9090), Some(true), "y/c's http");
    assert_eq!(to_c(8080), Some(false), "x/a's http is not y/c's");
    let blocks = tiers.endpoints[&xa()]
        .cluster_egress
        .iter()
        .filter(|e| matches!(e.peer, Peer::Block(_)))
        .count();
    assert_eq!(blocks, 1);
    check(&st).expect("agrees with the reference");
}

/// A peer node's address is labelled by the first entry that lists it, whatever its name
/// (the entry of this node's name included, for an address that is not in
/// `Node::addresses`); this node's own addresses never reach the tiers (the fixed rule).
#[test]
fn nodes_peers_label_addresses_as_the_reference_does() {
    let mut st = base();
    st.nodes = vec![
        PeerNode::new("node-a", [ip("172.18.0.2"), ip("172.18.0.9")]).with_label("zone", "a"),
        PeerNode::new("node-b", [ip("172.18.0.3"), ip("172.18.0.9")]).with_label("zone", "b"),
    ];
    st.cluster_policies = vec![ClusterPolicy::for_namespaces("zones", 1, sel("team", "x"))
        .with_egress(ClusterPolicyRule::new(
            "deny-zone-a",
            ClusterAction::Deny,
            [ClusterPeer::Nodes(sel("zone", "a"))],
        ))];
    validate(&st).expect("valid");
    let np = compile(&st);
    let tiers = compile_tiers(&st);
    let to = |addr: &str| {
        tiered_allows(
            &np,
            &tiers,
            &xa(),
            PolicyType::Egress,
            ip(addr),
            Protocol::Tcp,
            80,
        )
    };
    assert_eq!(
        to("172.18.0.9"),
        Some(false),
        "labelled zone a by node-a's entry"
    );
    assert_eq!(to("172.18.0.3"), Some(true), "node-b is zone b");
    check(&st).expect("agrees with the reference");
}
