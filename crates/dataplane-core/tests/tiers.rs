//! Cluster policies (AdminNetworkPolicy model), the baseline, and host endpoint policy
//! (Calico's semantics) in the reference model, rule by rule of issue 22's conformance list:
//! a cluster Deny beats a NetworkPolicy Allow; Pass defers to NetworkPolicy; the baseline
//! applies only where nothing else decided; failsafe ports answer under a deny-all host
//! policy; a pre-DNAT rule restricts a NodePort by client address; untracked (doNotTrack)
//! replies need a rule of their own. Then their validation, file format and capability
//! checks.
//!
//! Layout: node-a (172.18.0.2, uplink eth0) runs pods x/a (10.244.0.11, label `pod: a`) and
//! y/a (10.244.0.21); pod y/b (10.244.1.22) runs on node-b (172.18.0.3). Namespaces x and y
//! are labelled `team: <name>`. Service web/np has NodePort 30080 -> x/a:8080.

use std::net::{IpAddr, SocketAddr};

use dataplane_core::{
    evaluate, from_yaml, policy_verdict, reply_allowed, to_yaml, validate, Backend, BaselineAction,
    BaselinePolicy, BaselineRule, Capabilities, ChangeSet, ClusterAction, ClusterPeer,
    ClusterPolicy, ClusterPolicyRule, ClusterPolicySubject, ClusterPort, Decision, DesiredState,
    Endpoint, Entry, Error, FailsafePort, FailsafePorts, HostAction, HostEndpoint, HostPolicy,
    HostPort, HostRule, LabelSelector, NamedPort, Namespace, NamespacedPods, Node, ObjectName,
    Packet, PeerNode, PeerPod, Policy, PolicyRule, PolicyType, Protocol, Service, ServicePort,
    ValidationError, Verdict, ALL_INTERFACES,
};

const NODE: &str = "172.18.0.2";
const OTHER_NODE: &str = "172.18.0.3";
const XA: &str = "10.244.0.11";
const YA: &str = "10.244.0.21";
const YB: &str = "10.244.1.22";
const CLIENT: &str = "198.51.100.7";
const BLOCKED: &str = "203.0.113.9";

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn sel(key: &str, value: &str) -> LabelSelector {
    LabelSelector::default().with_label(key, value)
}

fn base() -> DesiredState {
    let node = Node::new("node-a", [ip(NODE)]).with_uplink("eth0");
    DesiredState::new(node)
        .with_namespace(Namespace::new("x").with_label("team", "x"))
        .with_namespace(Namespace::new("y").with_label("team", "y"))
        .with_endpoint(
            Endpoint::new(ObjectName::new("x", "a"), "veth1", [ip(XA)])
                .with_label("pod", "a")
                .with_named_port(NamedPort::new("http", Protocol::Tcp, 8080)),
        )
        .with_endpoint(
            Endpoint::new(ObjectName::new("y", "a"), "veth2", [ip(YA)]).with_label("pod", "a"),
        )
        .with_pod(
            PeerPod::new(ObjectName::new("y", "b"), [ip(YB)])
                .with_label("pod", "b")
                .on_node("node-b"),
        )
        .with_service(
            Service::cluster_ip(
                ObjectName::new("web", "np"),
                ip("10.96.0.80"),
                [ServicePort::tcp(80, 8080).with_node_port(30080)],
            )
            .with_backend(Backend::new(ip(XA)).on_node("node-a")),
        )
}

/// Whether a new TCP connection from `from` to `to`:`port` is allowed (pod policy only).
fn allowed(state: &DesiredState, from: &str, to: &str, port: u16) -> bool {
    validate(state).expect("the test state is valid");
    policy_verdict(state, ip(from), ip(to), Protocol::Tcp, port).allowed()
}

/// NetworkPolicy in x allowing every ingress to its pods.
fn np_allow_all_ingress() -> Policy {
    Policy {
        name: ObjectName::new("x", "allow-all"),
        pod_selector: LabelSelector::default(),
        policy_types: vec![PolicyType::Ingress],
        ingress: vec![PolicyRule::default()],
        egress: vec![],
    }
}

/// NetworkPolicy in x denying every ingress to its pods.
fn np_deny_all_ingress() -> Policy {
    Policy {
        name: ObjectName::new("x", "deny-all"),
        pod_selector: LabelSelector::default(),
        policy_types: vec![PolicyType::Ingress],
        ingress: vec![],
        egress: vec![],
    }
}

fn from_team(team: &str) -> ClusterPeer {
    ClusterPeer::Namespaces(sel("team", team))
}

fn anp(name: &str, priority: u32, action: ClusterAction, from: &str) -> ClusterPolicy {
    ClusterPolicy::for_namespaces(name, priority, sel("team", "x")).with_ingress(
        ClusterPolicyRule::new(format!("{name}-rule"), action, [from_team(from)]),
    )
}

#[test]
fn a_cluster_deny_beats_a_networkpolicy_allow() {
    let state = base().with_policy(np_allow_all_ingress());
    assert!(allowed(&state, YB, XA, 8080), "the NetworkPolicy allows it");
    let state = state.with_cluster_policy(anp("deny-y", 10, ClusterAction::Deny, "y"));
    assert!(!allowed(&state, YB, XA, 8080));
    assert_eq!(
        policy_verdict(&state, ip(YB), ip(XA), Protocol::Tcp, 8080).ingress,
        Decision::ClusterDenied {
            policy: "deny-y".into(),
            rule: "deny-y-rule".into()
        }
    );
    // Only what the rule's peers select: x/a reaching itself through another address is not
    // from y, and y/a's own ingress (no subject) is untouched.
    assert!(allowed(&state, YB, YA, 8080));
    // Through the service too: the backend is dropped after DNAT.
    let syn = Packet {
        protocol: Protocol::Tcp,
        source: SocketAddr::new(ip(YA), 40000),
        destination: "10.96.0.80:80".parse().unwrap(),
    };
    assert_eq!(
        evaluate(&state, &syn, &Entry::FromPod(ObjectName::new("y", "a"))),
        Verdict::Drop
    );
}

#[test]
fn a_cluster_allow_beats_a_networkpolicy_deny() {
    let state = base()
        .with_policy(np_deny_all_ingress())
        .with_cluster_policy(anp("allow-y", 10, ClusterAction::Allow, "y"));
    assert!(allowed(&state, YB, XA, 8080));
    assert!(
        !allowed(&state, OTHER_NODE, XA, 8080),
        "not from y: the NetworkPolicy denies"
    );
}

#[test]
fn pass_defers_to_networkpolicy() {
    // Pass at 5 skips the Deny at 10: the NetworkPolicy decides.
    let state = base()
        .with_cluster_policy(anp("pass-y", 5, ClusterAction::Pass, "y"))
        .with_cluster_policy(anp("deny-y", 10, ClusterAction::Deny, "y"));
    assert!(
        allowed(&state, YB, XA, 8080),
        "no NetworkPolicy, no baseline: allowed"
    );
    let denied = state.clone().with_policy(np_deny_all_ingress());
    assert!(!allowed(&denied, YB, XA, 8080), "the NetworkPolicy denies");
    assert_eq!(
        policy_verdict(&denied, ip(YB), ip(XA), Protocol::Tcp, 8080).ingress,
        Decision::Denied(vec![ObjectName::new("x", "deny-all")])
    );
    // With the priorities the other way round the Deny comes first.
    let mut swapped = state;
    swapped.cluster_policies[0].priority = 20;
    assert!(!allowed(&swapped, YB, XA, 8080));
}

#[test]
fn lower_priority_first_and_rules_in_order() {
    let allow = anp("allow-y", 3, ClusterAction::Allow, "y");
    let deny = anp("deny-y", 7, ClusterAction::Deny, "y");
    let state = base().with_cluster_policy(deny).with_cluster_policy(allow);
    assert!(
        allowed(&state, YB, XA, 8080),
        "priority 3 before 7, whatever the list order"
    );
    // In one policy: the first matching rule decides.
    let ordered = ClusterPolicy::for_namespaces("ordered", 1, sel("team", "x"))
        .with_ingress(
            ClusterPolicyRule::new("deny-80", ClusterAction::Deny, [from_team("y")]).with_port(
                ClusterPort::PortNumber {
                    protocol: Protocol::Tcp,
                    port: 80,
                },
            ),
        )
        .with_ingress(ClusterPolicyRule::new(
            "allow-y",
            ClusterAction::Allow,
            [from_team("y")],
        ))
        .with_ingress(ClusterPolicyRule::new(
            "deny-rest",
            ClusterAction::Deny,
            [from_team("y")],
        ));
    let state = base()
        .with_policy(np_deny_all_ingress())
        .with_cluster_policy(ordered);
    assert!(!allowed(&state, YB, XA, 80));
    assert!(allowed(&state, YB, XA, 8080));
}

#[test]
fn the_baseline_applies_only_where_nothing_else_decided() {
    let baseline = BaselinePolicy::new(ClusterPolicySubject::Namespaces(LabelSelector::default()))
        .with_ingress(BaselineRule::new(
            "deny-from-y",
            BaselineAction::Deny,
            [from_team("y")],
        ));
    let state = base().with_baseline_policy(baseline);
    // Nothing else: the baseline denies.
    assert!(!allowed(&state, YB, XA, 8080));
    assert_eq!(
        policy_verdict(&state, ip(YB), ip(XA), Protocol::Tcp, 8080).ingress,
        Decision::BaselineDenied {
            rule: "deny-from-y".into()
        }
    );
    // Peers the baseline does not name: default allow.
    assert!(allowed(&state, OTHER_NODE, XA, 8080));
    // A NetworkPolicy isolating x/a decides instead (its allow).
    let with_networkpolicy = state.clone().with_policy(np_allow_all_ingress());
    assert!(allowed(&with_networkpolicy, YB, XA, 8080));
    // A cluster Allow decides instead.
    let with_cluster_allow =
        state
            .clone()
            .with_cluster_policy(anp("allow-y", 1, ClusterAction::Allow, "y"));
    assert!(allowed(&with_cluster_allow, YB, XA, 8080));
    // A Pass with no NetworkPolicy reaches the baseline.
    let passed = state.with_cluster_policy(anp("pass-y", 1, ClusterAction::Pass, "y"));
    assert!(!allowed(&passed, YB, XA, 8080));
}

#[test]
fn egress_to_networks_nodes_and_named_ports() {
    let egress = |rule: ClusterPolicyRule| {
        base()
            .with_peer_node(PeerNode::new("node-b", [ip(OTHER_NODE)]).with_label("role", "infra"))
            .with_cluster_policy(
                ClusterPolicy::new(
                    "egress",
                    0,
                    ClusterPolicySubject::Pods(NamespacedPods {
                        namespace_selector: sel("team", "y"),
                        pod_selector: sel("pod", "a"),
                    }),
                )
                .with_egress(rule)
                .with_egress(ClusterPolicyRule::new(
                    "deny-rest",
                    ClusterAction::Deny,
                    [ClusterPeer::Networks(vec!["0.0.0.0/0".parse().unwrap()])],
                )),
            )
    };
    let nodes = egress(ClusterPolicyRule::new(
        "to-infra",
        ClusterAction::Allow,
        [ClusterPeer::Nodes(sel("role", "infra"))],
    ));
    assert!(allowed(&nodes, YA, OTHER_NODE, 10250));
    assert!(!allowed(&nodes, YA, CLIENT, 443));
    assert!(
        !allowed(&nodes, YA, XA, 8080),
        "networks match pod addresses too"
    );
    assert!(allowed(&nodes, XA, CLIENT, 443), "x/a is no subject");
    let nets = egress(ClusterPolicyRule::new(
        "to-client",
        ClusterAction::Allow,
        [ClusterPeer::Networks(vec![format!("{CLIENT}/32")
            .parse()
            .unwrap()])],
    ));
    assert!(allowed(&nets, YA, CLIENT, 443));
    assert!(!allowed(&nets, YA, OTHER_NODE, 10250));
    let named = egress(
        ClusterPolicyRule::new("to-http", ClusterAction::Allow, [from_team("x")])
            .with_port(ClusterPort::NamedPort("http".into())),
    );
    assert!(allowed(&named, YA, XA, 8080), "x/a's http is 8080");
    assert!(!allowed(&named, YA, XA, 80));
    let range = egress(
        ClusterPolicyRule::new("to-range", ClusterAction::Allow, [from_team("x")]).with_port(
            ClusterPort::PortRange {
                protocol: Protocol::Tcp,
                start: 8000,
                end: 8100,
            },
        ),
    );
    assert!(allowed(&range, YA, XA, 8080));
    assert!(!allowed(&range, YA, XA, 8101));
}

#[test]
fn the_node_reaches_its_own_pods_whatever_a_cluster_policy_says() {
    let state = base().with_cluster_policy(
        ClusterPolicy::for_namespaces("deny-all", 0, LabelSelector::default()).with_ingress(
            ClusterPolicyRule::new(
                "all",
                ClusterAction::Deny,
                [ClusterPeer::Namespaces(LabelSelector::default())],
            ),
        ),
    );
    assert!(allowed(&state, NODE, XA, 8080));
    assert!(!allowed(&state, YB, XA, 8080));
}

// Host endpoint policy.

fn uplink_hep() -> HostEndpoint {
    HostEndpoint::new("node-a-eth0", "node-a", "eth0").with_label("role", "uplink")
}

fn packet(protocol: Protocol, from: &str, to: &str) -> Packet {
    Packet {
        protocol,
        source: from.parse().unwrap(),
        destination: to.parse().unwrap(),
    }
}

fn delivered(state: &DesiredState, p: &Packet, entry: &Entry) -> bool {
    validate(state).expect("the test state is valid");
    !matches!(evaluate(state, p, entry), Verdict::Drop | Verdict::Reject)
}

fn deny_all_host() -> HostPolicy {
    HostPolicy::new("deny-all", sel("role", "uplink"))
        .with_types([PolicyType::Ingress, PolicyType::Egress])
}

#[test]
fn failsafe_ports_answer_under_a_deny_all_host_policy() {
    let state = base()
        .with_host_endpoint(uplink_hep())
        .with_host_policy(deny_all_host());
    let inbound =
        |proto, port: u16| packet(proto, &format!("{CLIENT}:40000"), &format!("{NODE}:{port}"));
    let outbound =
        |proto, port: u16| packet(proto, &format!("{NODE}:40000"), &format!("{CLIENT}:{port}"));
    for port in [22, 179, 2379, 2380, 5473, 6443, 6666, 6667] {
        assert!(
            delivered(&state, &inbound(Protocol::Tcp, port), &Entry::FromUplink),
            "in TCP {port}"
        );
    }
    assert!(delivered(
        &state,
        &inbound(Protocol::Udp, 68),
        &Entry::FromUplink
    ));
    assert!(!delivered(
        &state,
        &inbound(Protocol::Tcp, 80),
        &Entry::FromUplink
    ));
    assert!(!delivered(
        &state,
        &inbound(Protocol::Udp, 53),
        &Entry::FromUplink
    ));
    for port in [179, 2379, 2380, 5473, 6443, 6666, 6667] {
        assert!(
            delivered(&state, &outbound(Protocol::Tcp, port), &Entry::FromHost),
            "out TCP {port}"
        );
    }
    for port in [53, 67] {
        assert!(
            delivered(&state, &outbound(Protocol::Udp, port), &Entry::FromHost),
            "out UDP {port}"
        );
    }
    assert!(
        !delivered(&state, &outbound(Protocol::Tcp, 22), &Entry::FromHost),
        "22 is inbound only"
    );
    assert!(!delivered(
        &state,
        &outbound(Protocol::Tcp, 443),
        &Entry::FromHost
    ));
    // The node's traffic to its own pods crosses no host endpoint.
    assert!(delivered(
        &state,
        &packet(
            Protocol::Tcp,
            &format!("{NODE}:40000"),
            &format!("{XA}:8080")
        ),
        &Entry::FromHost
    ));
    // Configurable: without failsafe ports, 22 is closed too; with 80 added, 80 opens.
    let none = state.clone().with_failsafe_ports(FailsafePorts::none());
    assert!(!delivered(
        &none,
        &inbound(Protocol::Tcp, 22),
        &Entry::FromUplink
    ));
    let mut custom = FailsafePorts::none();
    custom.inbound.push(FailsafePort::tcp(80));
    let custom = state.with_failsafe_ports(custom);
    assert!(delivered(
        &custom,
        &inbound(Protocol::Tcp, 80),
        &Entry::FromUplink
    ));
    // Failsafe ports come before an explicit deny too.
    let explicit = base().with_host_endpoint(uplink_hep()).with_host_policy(
        HostPolicy::new("deny-ssh", sel("role", "uplink")).with_ingress(
            HostRule::new(HostAction::Deny)
                .protocol(Protocol::Tcp)
                .to_ports([HostPort::Number(22)]),
        ),
    );
    assert!(delivered(
        &explicit,
        &inbound(Protocol::Tcp, 22),
        &Entry::FromUplink
    ));
}

#[test]
fn host_policy_rules_by_order_and_default_deny() {
    let allow_http = HostPolicy::new("allow-http", sel("role", "uplink"))
        .with_order(10)
        .with_ingress(
            HostRule::new(HostAction::Allow)
                .protocol(Protocol::Tcp)
                .to_ports([HostPort::Number(80)]),
        );
    let deny_blocked = HostPolicy::new("deny-blocked", sel("role", "uplink"))
        .with_order(1)
        .with_ingress(
            HostRule::new(HostAction::Deny).from_nets([format!("{BLOCKED}/32").parse().unwrap()]),
        );
    let state = base()
        .with_host_endpoint(uplink_hep())
        .with_host_policy(allow_http)
        .with_host_policy(deny_blocked);
    let to = |from: &str, port: u16| {
        packet(
            Protocol::Tcp,
            &format!("{from}:40000"),
            &format!("{NODE}:{port}"),
        )
    };
    assert!(delivered(&state, &to(CLIENT, 80), &Entry::FromUplink));
    assert!(
        !delivered(&state, &to(BLOCKED, 80), &Entry::FromUplink),
        "order 1 before 10"
    );
    assert!(
        !delivered(&state, &to(CLIENT, 443), &Entry::FromUplink),
        "default deny"
    );
    // Egress has no policy: open.
    let out = packet(
        Protocol::Tcp,
        &format!("{NODE}:40000"),
        &format!("{CLIENT}:443"),
    );
    assert!(delivered(&state, &out, &Entry::FromHost));
    // A host endpoint without policies, or another node's, changes nothing.
    let open = base().with_host_endpoint(uplink_hep());
    assert!(delivered(&open, &to(CLIENT, 443), &Entry::FromUplink));
    let elsewhere = base()
        .with_host_endpoint(
            HostEndpoint::new("node-b-eth0", "node-b", "eth0").with_label("role", "uplink"),
        )
        .with_host_policy(deny_all_host());
    assert!(delivered(&elsewhere, &to(CLIENT, 443), &Entry::FromUplink));
    // An all-interfaces endpoint covers the uplink.
    let all = base()
        .with_host_endpoint(
            HostEndpoint::new("node-a-all", "node-a", ALL_INTERFACES).with_label("role", "uplink"),
        )
        .with_host_policy(deny_all_host());
    assert!(!delivered(&all, &to(CLIENT, 443), &Entry::FromUplink));
}

#[test]
fn apply_on_forward_governs_forwarded_traffic() {
    let to_pod = packet(
        Protocol::Tcp,
        &format!("{CLIENT}:40000"),
        &format!("{XA}:8080"),
    );
    // A normal policy without applyOnForward: forwarded traffic is not its business.
    let state = base()
        .with_host_endpoint(uplink_hep())
        .with_host_policy(deny_all_host());
    assert!(delivered(&state, &to_pod, &Entry::FromUplink));
    // With applyOnForward, its default deny covers forwarded traffic too.
    let state = base()
        .with_host_endpoint(uplink_hep())
        .with_host_policy(deny_all_host().on_forward());
    assert!(!delivered(&state, &to_pod, &Entry::FromUplink));
    // Pod traffic leaving by the uplink is forwarded out of the endpoint.
    let out = packet(
        Protocol::Tcp,
        &format!("{XA}:40000"),
        &format!("{CLIENT}:443"),
    );
    assert!(!delivered(
        &state,
        &out,
        &Entry::FromPod(ObjectName::new("x", "a"))
    ));
    // Pod to pod on the node crosses no host endpoint.
    let local = packet(Protocol::Tcp, &format!("{XA}:40000"), &format!("{YA}:8080"));
    assert!(delivered(
        &state,
        &local,
        &Entry::FromPod(ObjectName::new("x", "a"))
    ));
}

#[test]
fn a_pre_dnat_rule_restricts_a_nodeport_by_client_address() {
    let guard = HostPolicy::new("nodeport-guard", sel("role", "uplink"))
        .pre_dnat()
        .with_ingress(
            HostRule::new(HostAction::Allow)
                .protocol(Protocol::Tcp)
                .from_nets([format!("{CLIENT}/32").parse().unwrap()])
                .to_ports([HostPort::Number(30080)]),
        )
        .with_ingress(
            HostRule::new(HostAction::Deny)
                .protocol(Protocol::Tcp)
                .to_ports([HostPort::Number(30080)]),
        );
    let state = base()
        .with_host_endpoint(uplink_hep())
        .with_host_policy(guard);
    let to_nodeport = |from: &str| {
        packet(
            Protocol::Tcp,
            &format!("{from}:40000"),
            &format!("{NODE}:30080"),
        )
    };
    assert!(matches!(
        evaluate(&state, &to_nodeport(CLIENT), &Entry::FromUplink),
        Verdict::Forward { ref backends, .. } if backends.contains(&format!("{XA}:8080").parse().unwrap())
    ));
    assert_eq!(
        evaluate(&state, &to_nodeport(BLOCKED), &Entry::FromUplink),
        Verdict::Drop
    );
    // The rule is on the NodePort: a normal policy could not tell it from the pod's port
    // after DNAT. The same client reaching the pod directly is untouched by it.
    let direct = packet(
        Protocol::Tcp,
        &format!("{BLOCKED}:40000"),
        &format!("{XA}:8080"),
    );
    assert!(delivered(&state, &direct, &Entry::FromUplink));
    // Pre-DNAT has no default deny: other ports of the node stay open.
    let other = packet(
        Protocol::Tcp,
        &format!("{BLOCKED}:40000"),
        &format!("{NODE}:443"),
    );
    assert!(delivered(&state, &other, &Entry::FromUplink));
    // A pre-DNAT Allow skips the normal policies: with a deny-all applyOnForward policy the
    // allowed client still gets through, the rest not.
    let locked = state.with_host_policy(deny_all_host().on_forward());
    assert!(delivered(&locked, &to_nodeport(CLIENT), &Entry::FromUplink));
    assert!(!delivered(
        &locked,
        &packet(
            Protocol::Tcp,
            &format!("{CLIENT}:40000"),
            &format!("{NODE}:443")
        ),
        &Entry::FromUplink
    ));
}

#[test]
fn untracked_replies_need_a_rule_of_their_own() {
    let untracked_in = HostPolicy::new("kv-in", sel("role", "uplink"))
        .untracked()
        .with_ingress(
            HostRule::new(HostAction::Allow)
                .protocol(Protocol::Tcp)
                .to_ports([HostPort::Number(6379)]),
        );
    let state = base()
        .with_host_endpoint(uplink_hep())
        .with_host_policy(untracked_in)
        .with_host_policy(deny_all_host());
    let syn = packet(
        Protocol::Tcp,
        &format!("{CLIENT}:40000"),
        &format!("{NODE}:6379"),
    );
    assert!(
        delivered(&state, &syn, &Entry::FromUplink),
        "the untracked allow lets it in"
    );
    assert!(
        !reply_allowed(&state, &syn, &Entry::FromUplink),
        "the deny-all egress drops the reply"
    );
    // The explicit return rule.
    let mut with_return = state.clone();
    with_return.host_policies[0].egress.push(
        HostRule::new(HostAction::Allow)
            .protocol(Protocol::Tcp)
            .from_ports([HostPort::Number(6379)]),
    );
    assert!(reply_allowed(&with_return, &syn, &Entry::FromUplink));
    // Tracked: a normal allow's replies pass by conntrack.
    let tracked = base().with_host_endpoint(uplink_hep()).with_host_policy(
        deny_all_host().with_ingress(
            HostRule::new(HostAction::Allow)
                .protocol(Protocol::Tcp)
                .to_ports([HostPort::Number(6379)]),
        ),
    );
    assert!(reply_allowed(&tracked, &syn, &Entry::FromUplink));
    // An untracked deny drops before anything else (the flood case).
    let flood = base().with_host_endpoint(uplink_hep()).with_host_policy(
        HostPolicy::new("block", sel("role", "uplink"))
            .untracked()
            .with_ingress(
                HostRule::new(HostAction::Deny).from_nets(["203.0.113.0/24".parse().unwrap()]),
            ),
    );
    let udp = packet(
        Protocol::Udp,
        &format!("{BLOCKED}:40000"),
        &format!("{NODE}:9999"),
    );
    assert_eq!(evaluate(&flood, &udp, &Entry::FromUplink), Verdict::Drop);
    let legit = packet(
        Protocol::Udp,
        &format!("{CLIENT}:40000"),
        &format!("{NODE}:9999"),
    );
    assert!(delivered(&flood, &legit, &Entry::FromUplink));
    // But not before the failsafe ports.
    let ssh = packet(
        Protocol::Tcp,
        &format!("{BLOCKED}:40000"),
        &format!("{NODE}:22"),
    );
    assert!(delivered(&flood, &ssh, &Entry::FromUplink));
    // An untracked packet is not translated: an untracked allow on a NodePort delivers it to
    // the node as addressed.
    let np = base().with_host_endpoint(uplink_hep()).with_host_policy(
        HostPolicy::new("np", sel("role", "uplink"))
            .untracked()
            .with_ingress(HostRule::new(HostAction::Allow)),
    );
    let to_np = packet(
        Protocol::Tcp,
        &format!("{CLIENT}:40000"),
        &format!("{NODE}:30080"),
    );
    assert!(matches!(
        evaluate(&np, &to_np, &Entry::FromUplink),
        Verdict::Untouched { .. }
    ));
}

/// The node dials its own NodePort whose backend is a pod on another node: the request leaves
/// by the uplink (masqueraded to the node), the pod's reply comes back on it. An untracked
/// ingress Deny of the pod's address on the uplink drops that reply, although the connection
/// is tracked: netfilter's raw table judges every packet before conntrack (Calico renders
/// doNotTrack policy there), and the eBPF programs judge every packet on the uplink too.
#[test]
fn an_untracked_ingress_deny_drops_a_tracked_connections_reply() {
    let open = base().with_host_endpoint(uplink_hep()).with_service(
        Service::cluster_ip(
            ObjectName::new("web", "remote"),
            ip("10.96.0.81"),
            [ServicePort::tcp(80, 8080).with_node_port(30081)],
        )
        .with_backend(Backend::new(ip(YB)).on_node("node-b")),
    );
    let deny_yb = |action: HostAction| {
        HostPolicy::new("yb", sel("role", "uplink"))
            .untracked()
            .with_ingress(HostRule::new(action).from_nets([format!("{YB}/32").parse().unwrap()]))
    };
    let state = open.clone().with_host_policy(deny_yb(HostAction::Deny));
    let own_nodeport = packet(
        Protocol::Tcp,
        &format!("{NODE}:40000"),
        &format!("{NODE}:30081"),
    );
    let own_direct = packet(
        Protocol::Udp,
        &format!("{NODE}:40001"),
        &format!("{YB}:8080"),
    );
    let pod_direct = packet(Protocol::Tcp, &format!("{XA}:40002"), &format!("{YB}:8080"));
    let from_pod = Entry::FromPod(ObjectName::new("x", "a"));
    for (p, entry) in [
        (&own_nodeport, &Entry::FromHost),
        (&own_direct, &Entry::FromHost),
        (&pod_direct, &from_pod),
    ] {
        // The first packet goes out (the rule is on ingress), its reply does not come back.
        assert!(delivered(&state, p, entry), "{p:?}");
        assert!(!reply_allowed(&state, p, entry), "{p:?}");
        assert!(reply_allowed(&open, p, entry), "{p:?} without the rule");
    }
    assert!(matches!(
        evaluate(&state, &own_nodeport, &Entry::FromHost),
        Verdict::Forward { ref backends, .. } if backends.contains(&format!("{YB}:8080").parse().unwrap())
    ));
    // The rule's address decides: the local backend's NodePort is not affected.
    let local_nodeport = packet(
        Protocol::Tcp,
        &format!("{NODE}:40003"),
        &format!("{NODE}:30080"),
    );
    assert!(reply_allowed(&state, &local_nodeport, &Entry::FromHost));
    // An untracked Allow of the reply makes it untracked, so conntrack does not undo the
    // connection's translation: a NodePort (DNAT, masquerade) reply misses its client, an
    // untranslated connection's reply gets back.
    let allowed = open.clone().with_host_policy(deny_yb(HostAction::Allow));
    assert!(!reply_allowed(&allowed, &own_nodeport, &Entry::FromHost));
    assert!(reply_allowed(&allowed, &own_direct, &Entry::FromHost));
    // A failsafe port comes before untracked rules, for replies too (by destination port:
    // the node's connection from port 68 to a DHCP server's 67 is answered to 68).
    let dhcp = packet(Protocol::Udp, &format!("{NODE}:68"), &format!("{YB}:67"));
    assert!(reply_allowed(&state, &dhcp, &Entry::FromHost));
}

/// The mirror: an untracked egress Deny of a client's address drops the node's own replies to
/// it (they pass raw output), not the replies of connections the node forwards (they do not).
#[test]
fn an_untracked_egress_deny_drops_the_nodes_own_replies() {
    let state = base().with_host_endpoint(uplink_hep()).with_host_policy(
        HostPolicy::new("no-client", sel("role", "uplink"))
            .untracked()
            .with_egress(
                HostRule::new(HostAction::Deny).to_nets([format!("{CLIENT}/32").parse().unwrap()]),
            ),
    );
    let to = |from: &str, to: &str| packet(Protocol::Tcp, &format!("{from}:40000"), to);
    let own_server = to(CLIENT, &format!("{NODE}:6379"));
    assert!(delivered(&state, &own_server, &Entry::FromUplink));
    assert!(!reply_allowed(&state, &own_server, &Entry::FromUplink));
    // Another client's replies pass.
    assert!(reply_allowed(
        &state,
        &to(BLOCKED, &format!("{NODE}:6379")),
        &Entry::FromUplink
    ));
    // Forwarded: the NodePort's local backend and the pod directly answer through the node,
    // not from it.
    for p in [
        to(CLIENT, &format!("{NODE}:30080")),
        to(CLIENT, &format!("{XA}:8080")),
    ] {
        assert!(reply_allowed(&state, &p, &Entry::FromUplink), "{p:?}");
    }
    // The node's own connections to the client are dropped on their first packet.
    assert!(!delivered(
        &state,
        &to(NODE, &format!("{CLIENT}:443")),
        &Entry::FromHost
    ));
}

/// An address of the node's pod CIDRs is on the node whether or not the state lists its pod:
/// the node never routes it out of the uplink, so no host endpoint policy sees traffic to it
/// (the eBPF programs' `is_local()`: pod CIDRs and node addresses).
#[test]
fn the_nodes_pod_cidrs_are_behind_no_host_endpoint() {
    let mut state = base()
        .with_host_endpoint(uplink_hep())
        .with_host_policy(deny_all_host());
    let unlisted = packet(Protocol::Tcp, &format!("{NODE}:40000"), "10.244.0.99:8080");
    assert!(
        !delivered(&state, &unlisted, &Entry::FromHost),
        "no pod CIDR: out of the uplink"
    );
    state.node = state
        .node
        .with_pod_cidrs(["10.244.0.0/24".parse().unwrap()]);
    assert!(delivered(&state, &unlisted, &Entry::FromHost));
    // Another node's pod is still behind the uplink.
    let remote = packet(
        Protocol::Tcp,
        &format!("{NODE}:40001"),
        &format!("{YB}:8080"),
    );
    assert!(!delivered(&state, &remote, &Entry::FromHost));
}

// Validation.

fn invalid(state: &DesiredState) -> ValidationError {
    validate(state).expect_err("the state is invalid")
}

#[test]
fn cluster_policy_validation_names_object_and_field() {
    let p = anp("p", 1001, ClusterAction::Deny, "y");
    let e = invalid(&base().with_cluster_policy(p));
    assert!(
        matches!(&e, ValidationError::OutOfRange { object, field, .. } if object == "cluster policy p" && field == "priority"),
        "{e}"
    );
    let e = invalid(
        &base()
            .with_cluster_policy(anp("a", 7, ClusterAction::Deny, "y"))
            .with_cluster_policy(anp("b", 7, ClusterAction::Allow, "y")),
    );
    assert!(
        matches!(&e, ValidationError::Duplicate { object, field, .. } if object == "cluster policy b" && field == "priority"),
        "{e}"
    );
    let e = invalid(
        &base()
            .with_cluster_policy(anp("a", 7, ClusterAction::Deny, "y"))
            .with_cluster_policy(anp("a", 8, ClusterAction::Allow, "y")),
    );
    assert!(
        matches!(&e, ValidationError::DuplicateName { object } if object == "cluster policy a"),
        "{e}"
    );
    let mut p = anp("p", 1, ClusterAction::Deny, "y");
    p.ingress[0].peers = vec![ClusterPeer::Networks(vec!["10.0.0.0/8".parse().unwrap()])];
    let e = invalid(&base().with_cluster_policy(p));
    assert!(
        matches!(&e, ValidationError::Inconsistent { field, .. } if field == "ingress[0].peers[0].networks"),
        "{e}"
    );
    let mut p = anp("p", 1, ClusterAction::Deny, "y");
    p.egress.push(ClusterPolicyRule::new(
        "out",
        ClusterAction::Deny,
        [ClusterPeer::Networks(vec!["10.0.0.1/8".parse().unwrap()])],
    ));
    let e = invalid(&base().with_cluster_policy(p));
    assert!(
        matches!(&e, ValidationError::NonCanonicalCidr { field, .. } if field == "egress[0].peers[0].networks[0]"),
        "{e}"
    );
    let mut p = anp("p", 1, ClusterAction::Deny, "y");
    p.ingress[0].peers.clear();
    let e = invalid(&base().with_cluster_policy(p));
    assert!(
        matches!(&e, ValidationError::Empty { field, .. } if field == "ingress[0].peers"),
        "{e}"
    );
    let mut p = anp("p", 1, ClusterAction::Deny, "y");
    p.ingress[0].name.clear();
    let e = invalid(&base().with_cluster_policy(p));
    assert!(
        matches!(&e, ValidationError::Empty { field, .. } if field == "ingress[0].name"),
        "{e}"
    );
    let p = anp("p", 1, ClusterAction::Deny, "y").with_ingress(
        ClusterPolicyRule::new("r", ClusterAction::Allow, [from_team("x")]).with_port(
            ClusterPort::PortRange {
                protocol: Protocol::Tcp,
                start: 90,
                end: 80,
            },
        ),
    );
    let e = invalid(&base().with_cluster_policy(p));
    assert!(
        matches!(&e, ValidationError::Inconsistent { field, .. } if field == "ingress[1].ports[0].portRange.end"),
        "{e}"
    );
    let p = anp("p", 1, ClusterAction::Deny, "y").with_ingress(
        ClusterPolicyRule::new("r", ClusterAction::Allow, [from_team("x")]).with_port(
            ClusterPort::PortNumber {
                protocol: Protocol::Tcp,
                port: 0,
            },
        ),
    );
    let e = invalid(&base().with_cluster_policy(p));
    assert!(matches!(&e, ValidationError::PortZero { .. }), "{e}");
    let mut bad_selector = sel("team", "x");
    bad_selector.match_labels.insert(String::new(), "v".into());
    let p = ClusterPolicy::for_namespaces("p", 1, bad_selector);
    let e = invalid(&base().with_cluster_policy(p));
    assert!(
        matches!(&e, ValidationError::Empty { field, .. } if field == "subject.namespaces.matchLabels"),
        "{e}"
    );
    let b = BaselinePolicy::new(ClusterPolicySubject::Namespaces(LabelSelector::default()))
        .with_ingress(BaselineRule::new(
            "r",
            BaselineAction::Deny,
            [ClusterPeer::Nodes(LabelSelector::default())],
        ));
    let e = invalid(&base().with_baseline_policy(b));
    assert!(
        matches!(&e, ValidationError::Inconsistent { object, field, .. } if object == "baseline policy" && field == "ingress[0].peers[0].nodes"),
        "{e}"
    );
}

#[test]
fn host_policy_validation_follows_calicos_constraints() {
    let hep = || base().with_host_endpoint(uplink_hep());
    let check = |p: HostPolicy, want_field: &str| {
        let e = invalid(&hep().with_host_policy(p));
        assert!(
            matches!(&e, ValidationError::Inconsistent { object, field, .. } if object == "host policy p" && field == want_field),
            "{want_field}: {e}"
        );
    };
    let p = || HostPolicy::new("p", sel("role", "uplink"));
    let mut pre = p().pre_dnat();
    pre.egress.push(HostRule::new(HostAction::Deny));
    check(pre, "egress");
    let mut pre = p().pre_dnat();
    pre.apply_on_forward = false;
    check(pre, "applyOnForward");
    let mut untracked = p().untracked();
    untracked.apply_on_forward = false;
    check(untracked, "applyOnForward");
    let mut both = p().untracked();
    both.pre_dnat = true;
    check(both, "preDNAT");
    let mut ports = HostRule::new(HostAction::Allow);
    ports.destination.ports.push(HostPort::Number(22));
    check(p().with_ingress(ports), "ingress[0].destination.ports");
    let e = invalid(&hep().with_host_policy(p().with_ingress(
        HostRule::new(HostAction::Allow).from_nets(["10.0.0.1/8".parse().unwrap()]),
    )));
    assert!(
        matches!(&e, ValidationError::NonCanonicalCidr { field, .. } if field == "ingress[0].source.nets[0]"),
        "{e}"
    );
    // One host endpoint per node and interface.
    let e = invalid(&hep().with_host_endpoint(HostEndpoint::new("again", "node-a", "eth0")));
    assert!(
        matches!(&e, ValidationError::Duplicate { object, field, .. } if object == "host endpoint again" && field == "interfaceName"),
        "{e}"
    );
    let e =
        invalid(&base().with_host_endpoint(HostEndpoint::new("bad", "node-a", "not an interface")));
    assert!(
        e.to_string()
            .starts_with("host endpoint bad: interfaceName"),
        "{e}"
    );
    let mut zero = FailsafePorts::default();
    zero.inbound.push(FailsafePort::tcp(0));
    let e = invalid(&base().with_failsafe_ports(zero));
    assert!(
        matches!(&e, ValidationError::PortZero { object, field } if object == "failsafe ports" && field == "inbound[9].port"),
        "{e}"
    );
}

// File format, diff and capabilities.

const ANP_STATE: &str = r#"
apiVersion: dataplane.rs/v1alpha1
kind: DesiredState
node:
  name: node-a
  addresses: ["172.18.0.2"]
  interfaces: {uplink: eth0}
clusterPolicies:
  - name: sample-anp-deny-pass-rules
    priority: 50
    subject:
      namespaces:
        matchLabels: {kubernetes.io/metadata.name: example.name}
    ingress:
      - name: deny-all-ingress-from-tenant-1
        action: Deny
        from:
          - pods:
              namespaceSelector: {matchLabels: {tenant: tenant-1}}
              podSelector: {matchLabels: {custom-label: value-1}}
        ports:
          - portNumber: {protocol: TCP, port: 80}
          - namedPort: http
          - portRange: {protocol: UDP, start: 1000, end: 2000}
    egress:
      - name: pass-to-dns
        action: Pass
        to:
          - networks: ["10.0.0.0/8"]
          - nodes: {matchLabels: {role: dns}}
baselinePolicy:
  subject: {namespaces: {}}
  ingress:
    - name: default-deny
      action: Deny
      from: [{namespaces: {}}]
hostEndpoints:
  - name: node-a-eth0
    node: node-a
    interfaceName: eth0
    expectedIPs: ["172.18.0.2"]
    labels: {role: uplink}
hostPolicies:
  - name: block-flood
    order: 1
    selector: {matchLabels: {role: uplink}}
    applyOnForward: true
    doNotTrack: true
    ingress:
      - action: Deny
        source: {nets: ["203.0.113.0/24"]}
  - name: nodeport-guard
    selector: {matchLabels: {role: uplink}}
    applyOnForward: true
    preDNAT: true
    ingress:
      - action: Allow
        protocol: TCP
        destination: {ports: [30080, {start: 30100, end: 30199}]}
failsafePorts:
  inbound: [{protocol: TCP, port: 22}]
  outbound: []
"#;

#[test]
fn the_api_shapes_parse_and_round_trip() {
    let state = from_yaml(ANP_STATE).expect("parses");
    validate(&state).expect("valid");
    let p = &state.cluster_policies[0];
    assert_eq!(p.ingress[0].ports.len(), 3);
    assert!(matches!(p.egress[0].peers[1], ClusterPeer::Nodes(_)));
    assert!(state.host_policies[0].do_not_track);
    assert_eq!(
        state.host_policies[1].ingress[0].destination.ports[1],
        HostPort::Range(dataplane_core::PortRange {
            start: 30100,
            end: 30199
        })
    );
    assert_eq!(state.failsafe_ports.inbound, [FailsafePort::tcp(22)]);
    let back = from_yaml(&to_yaml(&state).unwrap()).unwrap();
    assert_eq!(back, state);
    // A state without any of it reads as before and writes none of the new fields.
    let plain = base();
    let text = to_yaml(&plain).unwrap();
    for field in [
        "clusterPolicies",
        "baselinePolicy",
        "hostEndpoints",
        "hostPolicies",
        "failsafePorts",
        "nodes:",
    ] {
        assert!(!text.contains(field), "{field} in {text}");
    }
    assert_eq!(plain.failsafe_ports, FailsafePorts::default());
}

#[test]
fn diff_and_apply_carry_the_new_objects() {
    let old = from_yaml(ANP_STATE).unwrap();
    let mut new = old.clone();
    new.cluster_policies[0].priority = 60;
    new.baseline_policy = None;
    new.host_policies.remove(0);
    new.host_endpoints[0]
        .labels
        .insert("zone".into(), "a".into());
    new.failsafe_ports = FailsafePorts::default();
    new = new.with_peer_node(PeerNode::new("node-b", [ip(OTHER_NODE)]));
    let changes = dataplane_core::diff(&old, &new);
    assert_eq!(changes.len(), 6, "{changes:?}");
    assert!(changes.has_tier_changes());
    let mut applied = old.clone();
    changes.apply_to(&mut applied);
    assert_eq!(applied, new);
    // The incremental validator checks such changes itself.
    let v = dataplane_core::Validator::new(&old).unwrap();
    assert_eq!(
        v.check(&old.node, &changes).unwrap(),
        dataplane_core::Incremental::Valid
    );
    let json = serde_json::to_string(&changes).unwrap();
    let back: ChangeSet = serde_json::from_str(&json).unwrap();
    assert_eq!(back, changes);
}

#[test]
fn capabilities_refuse_what_they_lack_naming_the_object() {
    let caps = Capabilities {
        dataplane: "test".into(),
        ..Capabilities::default()
    };
    let state = from_yaml(ANP_STATE).unwrap();
    let err = caps.check_policy_tiers(&state).unwrap_err();
    assert!(
        matches!(&err, Error::Unsupported { object, feature, .. } if object == "cluster policy sample-anp-deny-pass-rules" && feature == "cluster-wide ordered policy"),
        "{err}"
    );
    let mut only_host = state.clone();
    only_host.cluster_policies.clear();
    only_host.baseline_policy = None;
    let err = caps.check_policy_tiers(&only_host).unwrap_err();
    assert!(
        matches!(&err, Error::Unsupported { object, .. } if object == "host endpoint node-a-eth0"),
        "{err}"
    );
    let mut baseline_only = state.clone();
    baseline_only.cluster_policies.clear();
    let err = caps.check_policy_tiers(&baseline_only).unwrap_err();
    assert!(
        matches!(&err, Error::Unsupported { object, .. } if object == "baseline policy"),
        "{err}"
    );
    let all = Capabilities {
        cluster_policy: true,
        host_policy: true,
        ..caps.clone()
    };
    all.check_policy_tiers(&state).unwrap();
    // Changes: additions are checked, removals pass.
    let empty = DesiredState::new(state.node.clone());
    let adding = dataplane_core::diff(&empty, &state);
    assert!(caps.check_policy_tier_changes(&adding).is_err());
    let removing = dataplane_core::diff(&state, &empty);
    caps.check_policy_tier_changes(&removing).unwrap();
}
