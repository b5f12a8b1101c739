//! The cluster policy tiers in the iptables flavour's restore input (pure, no root): the
//! chain a cluster policy's subject is dispatched to, the order of its rules (priority, then
//! rule order), `Pass` going on to NetworkPolicy or the baseline, peers resolved to
//! addresses (pods by namespace labels, nodes by peer-node labels, networks), named ports
//! resolved on the destination pod. The real-traffic check is the policy conformance
//! table's `cluster-tiers` case (`tests/policy_conformance.rs`).

use std::net::IpAddr;

use dataplane_core::{
    BaselineAction, BaselinePolicy, BaselineRule, ClusterAction, ClusterPeer, ClusterPolicy,
    ClusterPolicyRule, ClusterPolicySubject, ClusterPort, DesiredState, Endpoint, IpFamily,
    LabelSelector, NamedPort, Namespace, Node, ObjectName, PeerNode, PeerPod, Protocol,
};
use dataplane_iptables::{IptablesDataplane, NetfilterConfig};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn sel(k: &str, v: &str) -> LabelSelector {
    LabelSelector::default().with_label(k, v)
}

/// Node 172.18.0.2 with local pods x/a (10.244.0.10, named port `http` TCP 8080) and y/b
/// (10.244.0.11), a remote pod y/c (10.244.1.5, `http` TCP 9090), namespaces x and y
/// labelled `team`, and peer node node-b (172.18.0.3, `role=db`).
fn state() -> DesiredState {
    DesiredState::new(Node::new("node-a", [ip("172.18.0.2")]))
        .with_namespace(Namespace::new("x").with_label("team", "blue"))
        .with_namespace(Namespace::new("y").with_label("team", "red"))
        .with_endpoint(
            Endpoint::new(ObjectName::new("x", "a"), "veth-a", [ip("10.244.0.10")])
                .with_label("app", "a")
                .with_named_port(NamedPort {
                    name: "http".into(),
                    protocol: Protocol::Tcp,
                    port: 8080,
                }),
        )
        .with_endpoint(
            Endpoint::new(ObjectName::new("y", "b"), "veth-b", [ip("10.244.0.11")])
                .with_label("app", "b"),
        )
        .with_pod(
            PeerPod::new(ObjectName::new("y", "c"), [ip("10.244.1.5")])
                .with_label("app", "c")
                .with_named_port(NamedPort {
                    name: "http".into(),
                    protocol: Protocol::Tcp,
                    port: 9090,
                }),
        )
        .with_peer_node(PeerNode::new("node-b", [ip("172.18.0.3")]).with_label("role", "db"))
}

fn render(state: &DesiredState) -> String {
    IptablesDataplane::new(NetfilterConfig::iptables(None))
        .render(state, IpFamily::V4)
        .expect("render")
}

/// The rules of chain `name` in `text`, without the `-A <chain> `.
fn rules<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    let head = format!("-A {name} ");
    text.lines().filter_map(|l| l.strip_prefix(&head)).collect()
}

/// The chain `DP-POLICY` sends `flag ip` to.
fn dispatched<'a>(text: &'a str, flag: &str, ip: &str) -> Option<&'a str> {
    let head = format!("{flag} {ip}/32 -j ");
    rules(text, "DP-POLICY")
        .into_iter()
        .find_map(|r| r.strip_prefix(head.as_str()))
}

#[test]
fn cluster_rules_in_priority_order_with_pass_to_network_policy() {
    let deny = ClusterPolicy::for_namespaces("deny-red", 10, sel("team", "blue")).with_ingress(
        ClusterPolicyRule::new(
            "deny-from-red",
            ClusterAction::Deny,
            [ClusterPeer::Namespaces(sel("team", "red"))],
        ),
    );
    let pass = ClusterPolicy::for_namespaces("pass-red", 5, sel("team", "blue")).with_ingress(
        ClusterPolicyRule::new(
            "pass-from-red",
            ClusterAction::Pass,
            [ClusterPeer::Namespaces(sel("team", "red"))],
        )
        .with_port(ClusterPort::NamedPort("http".into())),
    );
    let mut s = state().with_cluster_policy(deny).with_cluster_policy(pass);
    let text = render(&s);
    let chain = dispatched(&text, "-d", "10.244.0.10").expect("x/a's ingress is dispatched");
    assert!(chain.starts_with("DP-CI-"), "{chain}");
    // y/b's ingress: no cluster policy selects it, nothing to check.
    assert_eq!(dispatched(&text, "-d", "10.244.0.11"), None, "{text}");
    assert_eq!(
        rules(&text, chain),
        [
            // Priority 5 first; the named port resolved on x/a (the destination); without
            // NetworkPolicy or baseline a Pass allows.
            "-s 10.244.0.11/32 -p tcp -m tcp --dport 8080 -m comment --comment \"tier pass-red/pass-from-red\" -j RETURN",
            "-s 10.244.1.5/32 -p tcp -m tcp --dport 8080 -m comment --comment \"tier pass-red/pass-from-red\" -j RETURN",
            "-s 10.244.0.11/32 -m comment --comment \"tier deny-red/deny-from-red\" -j DP-DENY-IN",
            "-s 10.244.1.5/32 -m comment --comment \"tier deny-red/deny-from-red\" -j DP-DENY-IN",
        ],
        "{text}"
    );
    // With a NetworkPolicy isolating x/a, Pass and the end of the tier go to its chain.
    s.policies.push(dataplane_core::Policy {
        name: ObjectName::new("x", "deny-all"),
        pod_selector: LabelSelector::default(),
        policy_types: vec![dataplane_core::PolicyType::Ingress],
        ingress: Vec::new(),
        egress: Vec::new(),
    });
    let text = render(&s);
    let chain = dispatched(&text, "-d", "10.244.0.10").unwrap();
    let got = rules(&text, chain);
    let np = got
        .last()
        .unwrap()
        .strip_prefix("-g ")
        .expect("ends in a goto");
    assert!(np.starts_with("DP-PI-"), "{np}");
    assert!(got[0].ends_with(&format!("-g {np}")), "{got:?}");
    assert_eq!(
        rules(&text, np).last().copied(),
        Some("-m comment --comment \"network policy: ingress denied\" -j DP-DENY-IN")
    );
}

#[test]
fn baseline_applies_where_no_network_policy_isolates() {
    let baseline = BaselinePolicy::new(ClusterPolicySubject::Namespaces(LabelSelector::default()))
        .with_egress(
            BaselineRule::new(
                "allow-db-nodes",
                BaselineAction::Allow,
                [ClusterPeer::Nodes(sel("role", "db"))],
            )
            .with_port(ClusterPort::PortRange {
                protocol: Protocol::Tcp,
                start: 5432,
                end: 5440,
            }),
        )
        .with_egress(BaselineRule::new(
            "deny-rest",
            BaselineAction::Deny,
            [ClusterPeer::Networks(vec!["0.0.0.0/0".parse().unwrap()])],
        ));
    let s = state().with_baseline_policy(baseline);
    let text = render(&s);
    for pod in ["10.244.0.10", "10.244.0.11"] {
        let chain = dispatched(&text, "-s", pod).expect("egress dispatched");
        assert!(chain.starts_with("DP-BE-"), "{chain}");
        assert_eq!(
            rules(&text, chain),
            [
                "-d 172.18.0.3/32 -p tcp -m tcp --dport 5432:5440 -m comment --comment \"tier baseline/allow-db-nodes\" -j RETURN",
                "-d 0.0.0.0/0 -m comment --comment \"tier baseline/deny-rest\" -j DP-DENY-OUT",
            ]
        );
    }
}

#[test]
fn egress_named_ports_resolve_on_each_destination_pod() {
    let allow = ClusterPolicy::new(
        "web",
        1,
        ClusterPolicySubject::Pods(dataplane_core::NamespacedPods {
            namespace_selector: sel("team", "blue"),
            pod_selector: sel("app", "a"),
        }),
    )
    .with_egress(
        ClusterPolicyRule::new(
            "to-http",
            ClusterAction::Allow,
            [ClusterPeer::Networks(vec!["10.244.0.0/16"
                .parse()
                .unwrap()])],
        )
        .with_port(ClusterPort::NamedPort("http".into())),
    )
    .with_egress(ClusterPolicyRule::new(
        "deny-all",
        ClusterAction::Deny,
        [ClusterPeer::Namespaces(LabelSelector::default())],
    ));
    let text = render(&state().with_cluster_policy(allow));
    let chain = dispatched(&text, "-s", "10.244.0.10").unwrap();
    assert_eq!(
        rules(&text, chain),
        [
            // x/a itself has `http` too (8080), y/c 9090; y/b has none.
            "-d 10.244.0.10/32 -p tcp -m tcp --dport 8080 -m comment --comment \"tier web/to-http\" -j RETURN",
            "-d 10.244.1.5/32 -p tcp -m tcp --dport 9090 -m comment --comment \"tier web/to-http\" -j RETURN",
            "-d 10.244.0.10/32 -m comment --comment \"tier web/deny-all\" -j DP-DENY-OUT",
            "-d 10.244.0.11/32 -m comment --comment \"tier web/deny-all\" -j DP-DENY-OUT",
            "-d 10.244.1.5/32 -m comment --comment \"tier web/deny-all\" -j DP-DENY-OUT",
        ]
    );
    // Not the subject: y/b.
    assert_eq!(dispatched(&text, "-s", "10.244.0.11"), None);
    // The pods' self-reach and the anti-spoofing come with any pod policy.
    assert!(rules(&text, "DP-POLICY").contains(
        &"-i veth-a -s 10.244.0.10/32 -d 10.244.0.10/32 -m comment --comment \"a pod reaching itself\" -j RETURN"
    ));
    assert!(rules(&text, "DP-FILTER").contains(&"-j DP-POLICY"));
}

#[test]
fn a_partial_sync_of_a_cluster_policy_change_rewrites_only_its_chains() {
    use dataplane_iptables::iptables::digest::{digests, SyncPlan};
    use dataplane_iptables::iptables::render::{compile_state, hooks, Existing, Table};
    let policy = |action| {
        ClusterPolicy::for_namespaces("red", 10, sel("team", "blue")).with_ingress(
            ClusterPolicyRule::new(
                "from-red",
                action,
                [ClusterPeer::Namespaces(sel("team", "red"))],
            ),
        )
    };
    let before = state().with_cluster_policy(policy(ClusterAction::Deny));
    let after = state().with_cluster_policy(policy(ClusterAction::Allow));
    // The kernel holds everything of `before`.
    let [rs, _] = compile_state(&before, "DP");
    let mut existing = Existing {
        nat_chains: rs.nat.keys().cloned().collect(),
        filter_chains: rs.filter.keys().cloned().collect(),
        ..Existing::default()
    };
    for (t, c, _) in hooks("DP")
        .into_iter()
        .filter(|h| Table::ALL.contains(&h.0))
    {
        existing.hooks.insert((t, c.to_owned()));
    }
    let old_chain = dispatched(&render(&before), "-d", "10.244.0.10")
        .unwrap()
        .to_owned();
    let new_chain = dispatched(&render(&after), "-d", "10.244.0.10")
        .unwrap()
        .to_owned();
    assert_ne!(old_chain, new_chain);
    let (d0, d1) = (
        digests(&before, "DP", IpFamily::V4),
        digests(&after, "DP", IpFamily::V4),
    );
    let mut out = String::new();
    SyncPlan::new(Some(&d0), &d1, &existing, "DP")
        .write(&after, IpFamily::V4, None, &mut out)
        .unwrap();
    // Only filter: the new tier chain and the dispatch written, the old tier chain removed.
    assert!(!out.contains("*nat"), "{out}");
    let declared: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix(':'))
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    let mut want = vec!["DP-POLICY", new_chain.as_str(), old_chain.as_str()];
    want.sort_unstable();
    let mut got = declared.clone();
    got.sort_unstable();
    assert_eq!(got, want, "{out}");
    assert!(out.contains(&format!("-X {old_chain}\n")), "{out}");
}
