//! NetworkPolicy semantics of the reference model (`policy_verdict`, `policy_allows`), case
//! by case from the Kubernetes documentation ("Network Policies",
//! <https://kubernetes.io/docs/concepts/services-networking/network-policies/>) and the e2e
//! suite `test/e2e/network/netpol/network_policy.go`.
//!
//! The layout is the e2e one: namespaces x, y, z (labelled `ns: <name>`), each with pods a, b,
//! c (labelled `pod: <name>`), every pod serving TCP and UDP on 80 and 81 under the e2e port
//! names `serve-80-tcp`, ... Pods `a` run on this node (`node-a`, endpoints), `b` and `c` on
//! `node-b` (peer pods). Most cases check the whole 9 x 9 reachability matrix, as the e2e
//! suite does.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use dataplane_core::{
    compile, evaluate, policy_allows, policy_verdict, Backend, Decision, DesiredState, Endpoint,
    Entry, IpBlock, LabelRequirement, LabelSelector, NamedPort, Namespace, Node, ObjectName,
    Packet, PeerPod, Policy, PolicyPeer, PolicyPort, PolicyRule, PolicyType, PortRef, Protocol,
    SelectorOperator, Service, ServicePort, Verdict,
};

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];
const NODE_IP: &str = "172.18.0.10";
const OUTSIDE: &str = "192.0.2.7";
use Protocol::{Sctp, Tcp, Udp};

fn addr(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

/// `10.244.<node>.<10 * namespace + pod>`: pods `a` on node 1 (this one), the rest on node 2.
fn pod_ip(ns: &str, pod: &str) -> IpAddr {
    let n = NAMESPACES.iter().position(|x| *x == ns).expect("namespace") + 1;
    let p = PODS.iter().position(|x| *x == pod).expect("pod") + 1;
    let node = if pod == "a" { 1 } else { 2 };
    addr(&format!("10.244.{node}.{}", 10 * n + p))
}

/// The e2e named ports: `serve-<port>-<protocol>` for 80 and 81 over TCP, UDP and SCTP.
fn serve_ports() -> Vec<NamedPort> {
    let mut ports = Vec::new();
    for port in [80, 81] {
        for (protocol, name) in [(Tcp, "tcp"), (Udp, "udp"), (Sctp, "sctp")] {
            ports.push(NamedPort::new(
                format!("serve-{port}-{name}"),
                protocol,
                port,
            ));
        }
    }
    ports
}

/// The e2e layout without policies.
fn layout() -> DesiredState {
    let mut state = DesiredState::new(Node::new("node-a", [addr(NODE_IP)]));
    for ns in NAMESPACES {
        state = state.with_namespace(Namespace::new(ns).with_label("ns", ns));
        for pod in PODS {
            let name = ObjectName::new(ns, pod);
            if pod == "a" {
                let mut e = Endpoint::new(name, format!("veth-{ns}{pod}"), [pod_ip(ns, pod)])
                    .with_label("pod", pod);
                e.named_ports = serve_ports();
                state = state.with_endpoint(e);
            } else {
                let mut p = PeerPod::new(name, [pod_ip(ns, pod)])
                    .with_label("pod", pod)
                    .on_node("node-b");
                p.named_ports = serve_ports();
                state = state.with_pod(p);
            }
        }
    }
    dataplane_core::validate(&state).expect("the layout is valid");
    state
}

fn labels(key: &str, value: &str) -> LabelSelector {
    LabelSelector {
        match_labels: BTreeMap::from([(key.to_owned(), value.to_owned())]),
        match_expressions: Vec::new(),
    }
}

fn all() -> LabelSelector {
    LabelSelector::default()
}

/// A policy in `ns` selecting `selector`, isolating `types` (none: the API default).
fn policy(
    ns: &str,
    name: &str,
    selector: LabelSelector,
    types: &[PolicyType],
    ingress: Vec<PolicyRule>,
    egress: Vec<PolicyRule>,
) -> Policy {
    Policy {
        name: ObjectName::new(ns, name),
        pod_selector: selector,
        policy_types: types.to_vec(),
        ingress,
        egress,
    }
}

fn rule(peers: Vec<PolicyPeer>, ports: Vec<PolicyPort>) -> PolicyRule {
    PolicyRule { peers, ports }
}

fn pods(selector: LabelSelector) -> PolicyPeer {
    PolicyPeer {
        pod_selector: Some(selector),
        ..PolicyPeer::default()
    }
}

fn namespaces(selector: LabelSelector) -> PolicyPeer {
    PolicyPeer {
        namespace_selector: Some(selector),
        ..PolicyPeer::default()
    }
}

fn block(cidr: &str, except: &[&str]) -> PolicyPeer {
    PolicyPeer {
        ip_block: Some(IpBlock {
            cidr: cidr.parse().expect("test CIDR"),
            except: except
                .iter()
                .map(|e| e.parse().expect("test CIDR"))
                .collect(),
        }),
        ..PolicyPeer::default()
    }
}

fn port(protocol: Protocol, port: u16) -> PolicyPort {
    PolicyPort {
        protocol,
        port: Some(PortRef::Number(port)),
        end_port: None,
    }
}

fn named(protocol: Protocol, name: &str) -> PolicyPort {
    PolicyPort {
        protocol,
        port: Some(PortRef::Name(name.to_owned())),
        end_port: None,
    }
}

const I: &[PolicyType] = &[PolicyType::Ingress];
const E: &[PolicyType] = &[PolicyType::Egress];
const IE: &[PolicyType] = &[PolicyType::Ingress, PolicyType::Egress];

/// Every pod, as `(namespace, pod)`.
fn every_pod() -> impl Iterator<Item = (&'static str, &'static str)> {
    NAMESPACES
        .iter()
        .flat_map(|ns| PODS.iter().map(move |p| (*ns, *p)))
}

/// Checks the whole pod-to-pod matrix on `protocol`/`port` against `expected(from, to)`;
/// every wrong cell is listed, as the e2e suite prints its reachability table. A pod reaching
/// itself is always allowed (the e2e suite ignores those cells: no node dataplane sees
/// them), so `expected` describes the other cells.
fn assert_matrix(
    state: &DesiredState,
    protocol: Protocol,
    port: u16,
    expected: impl Fn((&str, &str), (&str, &str)) -> bool,
) {
    dataplane_core::validate(state).expect("the case's state is valid");
    assert_compiled_agrees(state);
    let mut wrong = Vec::new();
    for from in every_pod() {
        for to in every_pod() {
            let got = policy_allows(
                state,
                pod_ip(from.0, from.1),
                pod_ip(to.0, to.1),
                protocol,
                port,
            );
            if got != (from == to || expected(from, to)) {
                wrong.push(format!(
                    "{}/{} -> {}/{} {protocol}/{port}: got {got}",
                    from.0, from.1, to.0, to.1
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "wrong cells:\n{}", wrong.join("\n"));
}

fn allows(
    state: &DesiredState,
    from: (&str, &str),
    to: (&str, &str),
    protocol: Protocol,
    port: u16,
) -> bool {
    assert_compiled_agrees(state);
    policy_allows(
        state,
        pod_ip(from.0, from.1),
        pod_ip(to.0, to.1),
        protocol,
        port,
    )
}

/// Checks that the compiled tables ([`compile`]) answer every half of a connection that
/// belongs to a local endpoint as [`policy_verdict`] does: every pod, the node and an outside
/// address as the peer, on every protocol and on the ports the cases use (and their
/// neighbours). The fixed rules (node traffic, same pod) are the backends' own, not tables.
fn assert_compiled_agrees(state: &DesiredState) {
    let compiled = compile(state);
    let mut peers: Vec<IpAddr> = every_pod().map(|(ns, pod)| pod_ip(ns, pod)).collect();
    peers.extend([addr(NODE_IP), addr(OUTSIDE), addr("10.244.9.9")]);
    let ports = [
        0,
        52,
        53,
        54,
        79,
        80,
        81,
        82,
        443,
        8080,
        9081,
        10250,
        u16::MAX,
    ];
    let mut wrong = Vec::new();
    for endpoint in &state.endpoints {
        for &ip in &endpoint.ips {
            for &peer in &peers {
                for protocol in [Tcp, Udp, Sctp] {
                    for port in ports {
                        let to = policy_verdict(state, ip, peer, protocol, port).egress;
                        let from = policy_verdict(state, peer, ip, protocol, port).ingress;
                        for (direction, reference) in
                            [(PolicyType::Egress, to), (PolicyType::Ingress, from)]
                        {
                            if matches!(reference, Decision::NodeTraffic | Decision::SamePod) {
                                continue;
                            }
                            let got = compiled
                                .allows(&endpoint.name, direction, peer, protocol, port)
                                .expect("local endpoints have tables");
                            if got != reference.allows() {
                                wrong.push(format!(
                                    "{} {direction:?} peer {peer} {protocol}/{port}: \
                                     tables {got}, reference {reference:?}",
                                    endpoint.name
                                ));
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(wrong.is_empty(), "tables disagree:\n{}", wrong.join("\n"));
}

#[test]
fn without_policies_everything_is_allowed() {
    let state = layout();
    for protocol in Protocol::ALL {
        assert_matrix(&state, protocol, 80, |_, _| true);
    }
    let v = policy_verdict(&state, pod_ip("x", "a"), pod_ip("y", "b"), Tcp, 80);
    assert_eq!(
        (v.egress, v.ingress),
        (Decision::NotIsolated, Decision::NotIsolated)
    );
}

/// Docs "Default deny all ingress traffic": `podSelector: {}`, `policyTypes: [Ingress]`.
#[test]
fn default_deny_ingress_isolates_the_namespace_for_ingress_only() {
    let state = layout().with_policy(policy(
        "x",
        "default-deny-ingress",
        all(),
        I,
        vec![],
        vec![],
    ));
    for protocol in Protocol::ALL {
        assert_matrix(&state, protocol, 81, |_, to| to.0 != "x");
    }
    // Egress from x is not isolated: x reaches everything outside x.
    assert!(allows(&state, ("x", "a"), ("y", "c"), Tcp, 80));
    let v = policy_verdict(&state, pod_ip("y", "b"), pod_ip("x", "a"), Tcp, 80);
    assert_eq!(v.egress, Decision::NotIsolated);
    assert_eq!(
        v.ingress,
        Decision::Denied(vec![ObjectName::new("x", "default-deny-ingress")])
    );
}

/// A pod reaching its own address under a default deny of both directions: allowed.
#[test]
fn a_pod_reaching_itself_is_allowed() {
    let state = layout().with_policy(policy("x", "default-deny-all", all(), IE, vec![], vec![]));
    let v = policy_verdict(&state, pod_ip("x", "b"), pod_ip("x", "b"), Tcp, 80);
    assert_eq!(
        (&v.egress, &v.ingress),
        (&Decision::SamePod, &Decision::SamePod)
    );
    assert!(v.allowed());
    assert!(!allows(&state, ("x", "b"), ("x", "c"), Tcp, 80));
}

/// Docs "Default deny all egress traffic".
#[test]
fn default_deny_egress_isolates_the_namespace_for_egress_only() {
    let state = layout().with_policy(policy("x", "default-deny-egress", all(), E, vec![], vec![]));
    assert_matrix(&state, Tcp, 80, |from, _| from.0 != "x");
    assert_matrix(&state, Udp, 81, |from, _| from.0 != "x");
}

/// Docs "Default deny all ingress and all egress traffic".
#[test]
fn default_deny_all() {
    let state = layout().with_policy(policy("x", "default-deny-all", all(), IE, vec![], vec![]));
    assert_matrix(&state, Tcp, 80, |from, to| from.0 != "x" && to.0 != "x");
}

/// Docs "Allow all ingress traffic": one empty rule matches every peer and port; policies
/// are additive, so it opens what a default deny in the same namespace closed.
#[test]
fn allow_all_ingress_overrides_a_default_deny() {
    let state = layout()
        .with_policy(policy(
            "x",
            "default-deny-ingress",
            all(),
            I,
            vec![],
            vec![],
        ))
        .with_policy(policy(
            "x",
            "allow-all-ingress",
            all(),
            I,
            vec![PolicyRule::default()],
            vec![],
        ));
    for protocol in Protocol::ALL {
        assert_matrix(&state, protocol, 80, |_, _| true);
    }
    let v = policy_verdict(&state, pod_ip("z", "c"), pod_ip("x", "b"), Sctp, 81);
    assert_eq!(
        v.ingress,
        Decision::Allowed(vec![ObjectName::new("x", "allow-all-ingress")])
    );
}

/// Docs "Allow all egress traffic".
#[test]
fn allow_all_egress_overrides_a_default_deny() {
    let state = layout()
        .with_policy(policy("x", "default-deny-all", all(), IE, vec![], vec![]))
        .with_policy(policy(
            "x",
            "allow-all-egress",
            all(),
            E,
            vec![],
            vec![PolicyRule::default()],
        ));
    // Egress from x is open again, ingress to x stays closed.
    assert_matrix(&state, Tcp, 80, |_, to| to.0 != "x");
}

/// e2e "should support a 'default-deny-ingress' policy" narrowed to one pod: only x/a.
#[test]
fn a_pod_selector_scopes_the_policy_to_matching_pods_of_its_namespace() {
    let state = layout().with_policy(policy("x", "deny-a", labels("pod", "a"), I, vec![], vec![]));
    assert_matrix(&state, Tcp, 80, |_, to| to != ("x", "a"));
}

/// A policy in y with `podSelector: {}` selects y's pods only, never x's or z's.
#[test]
fn policies_select_pods_of_their_own_namespace_only() {
    let state = layout().with_policy(policy("y", "deny", labels("pod", "a"), I, vec![], vec![]));
    assert_matrix(&state, Tcp, 80, |_, to| to != ("y", "a"));
}

/// e2e "should enforce policy to allow traffic from pods within server namespace based on
/// PodSelector": a peer with a pod selector only selects pods of the policy's namespace.
#[test]
fn pod_selector_peer_matches_pods_of_the_policy_namespace() {
    let state = layout().with_policy(policy(
        "x",
        "allow-client-b",
        labels("pod", "a"),
        I,
        vec![rule(vec![pods(labels("pod", "b"))], vec![])],
        vec![],
    ));
    assert_matrix(&state, Tcp, 80, |from, to| {
        to != ("x", "a") || from == ("x", "b")
    });
}

/// e2e "should enforce policy based on `NamespaceSelector` with `MatchExpressions`": every pod of
/// the selected namespaces.
#[test]
fn namespace_selector_peer_matches_every_pod_of_the_selected_namespaces() {
    let not_x = LabelSelector {
        match_labels: BTreeMap::new(),
        match_expressions: vec![LabelRequirement {
            key: "ns".into(),
            operator: SelectorOperator::NotIn,
            values: vec!["x".into(), "z".into()],
        }],
    };
    let state = layout().with_policy(policy(
        "x",
        "allow-from-y",
        all(),
        I,
        vec![rule(vec![namespaces(not_x)], vec![])],
        vec![],
    ));
    assert_matrix(&state, Udp, 80, |from, to| to.0 != "x" || from.0 == "y");
}

/// Docs: "namespaceSelector selects particular namespaces ... by the label
/// `kubernetes.io/metadata.name`", which the API server sets on every namespace.
#[test]
fn namespace_selector_by_the_automatic_name_label() {
    let state = layout().with_policy(policy(
        "x",
        "allow-from-z",
        all(),
        I,
        vec![rule(
            vec![namespaces(labels("kubernetes.io/metadata.name", "z"))],
            vec![],
        )],
        vec![],
    ));
    assert_matrix(&state, Tcp, 80, |from, to| to.0 != "x" || from.0 == "z");
}

/// Docs "Behavior of to and from selectors": one peer with both selectors is AND (pods `b` in
/// namespace y) ...
#[test]
fn pod_and_namespace_selector_in_one_peer_is_and() {
    let state = layout().with_policy(policy(
        "x",
        "and",
        all(),
        I,
        vec![rule(
            vec![PolicyPeer {
                namespace_selector: Some(labels("ns", "y")),
                pod_selector: Some(labels("pod", "b")),
                ip_block: None,
            }],
            vec![],
        )],
        vec![],
    ));
    assert_matrix(&state, Tcp, 80, |from, to| {
        to.0 != "x" || from == ("y", "b")
    });
}

/// ... and two peers with one selector each are OR (any pod of y, or pods `b` of x).
#[test]
fn pod_and_namespace_selector_in_two_peers_is_or() {
    let state = layout().with_policy(policy(
        "x",
        "or",
        all(),
        I,
        vec![rule(
            vec![namespaces(labels("ns", "y")), pods(labels("pod", "b"))],
            vec![],
        )],
        vec![],
    ));
    assert_matrix(&state, Tcp, 80, |from, to| {
        to.0 != "x" || from.0 == "y" || from == ("x", "b")
    });
}

/// e2e "should allow ingress access from updated namespace": a namespace relabelled once
/// changes the verdict for every pod in it.
#[test]
fn relabelling_a_namespace_changes_every_pod_in_it() {
    let mut state = layout().with_policy(policy(
        "x",
        "allow-team",
        all(),
        I,
        vec![rule(vec![namespaces(labels("team", "blue"))], vec![])],
        vec![],
    ));
    assert_matrix(&state, Tcp, 80, |_, to| to.0 != "x");
    state.namespaces[2]
        .labels
        .insert("team".into(), "blue".into());
    assert_matrix(&state, Tcp, 80, |from, to| to.0 != "x" || from.0 == "z");
}

/// e2e "should allow ingress access from updated pod": a pod relabelled is selected.
#[test]
fn relabelling_a_peer_pod_changes_its_verdict() {
    let mut state = layout().with_policy(policy(
        "x",
        "allow-role",
        all(),
        I,
        vec![rule(
            vec![PolicyPeer {
                namespace_selector: Some(all()),
                pod_selector: Some(labels("role", "client")),
                ip_block: None,
            }],
            vec![],
        )],
        vec![],
    ));
    assert!(!allows(&state, ("y", "c"), ("x", "a"), Tcp, 80));
    let pod = state
        .pods
        .iter_mut()
        .find(|p| p.name == ObjectName::new("y", "c"))
        .expect("y/c");
    pod.labels.insert("role".into(), "client".into());
    assert!(allows(&state, ("y", "c"), ("x", "a"), Tcp, 80));
    assert!(!allows(&state, ("y", "b"), ("x", "a"), Tcp, 80));
}

/// Docs: `ipBlock` with `except` ("172.17.0.0/16 except 172.17.1.0/24"); pod addresses are
/// matched too: node-b's pods except y/b.
#[test]
fn ip_block_with_except_matches_pod_addresses() {
    let state = layout().with_policy(policy(
        "x",
        "allow-node-b-cidr",
        labels("pod", "a"),
        I,
        vec![rule(
            vec![block("10.244.2.0/24", &["10.244.2.22/32"])],
            vec![],
        )],
        vec![],
    ));
    assert_matrix(&state, Tcp, 80, |from, to| {
        to != ("x", "a") || (from.1 != "a" && from != ("y", "b"))
    });
}

/// e2e "should enforce except clause while egress access to server in CIDR block", and an
/// ipBlock reaching outside the cluster.
#[test]
fn egress_ip_block_with_except_to_the_outside() {
    let state = layout().with_policy(policy(
        "x",
        "egress-to-doc-net",
        all(),
        E,
        vec![],
        vec![rule(vec![block("192.0.2.0/24", &["192.0.2.0/29"])], vec![])],
    ));
    let from = pod_ip("x", "a");
    assert!(
        !policy_allows(&state, from, addr(OUTSIDE), Tcp, 443),
        "excepted"
    );
    assert!(policy_allows(&state, from, addr("192.0.2.9"), Tcp, 443));
    assert!(
        !policy_allows(&state, from, addr("198.51.100.1"), Tcp, 443),
        "outside the block"
    );
    // Nothing else: pods are not in the block.
    assert_matrix(&state, Tcp, 80, |from, _| from.0 != "x");
    // The outside is no pod: its own side is not policy's business.
    let v = policy_verdict(&state, addr(OUTSIDE), pod_ip("x", "a"), Tcp, 80);
    assert_eq!(
        (v.egress, v.ingress),
        (Decision::NotAPod, Decision::NotIsolated)
    );
}

/// e2e "should allow ingress access on one named port": the name resolves on the destination
/// pod to 80/TCP; 81 and UDP 80 stay closed.
#[test]
fn named_port_on_ingress_resolves_on_the_selected_pod() {
    let state = layout().with_policy(policy(
        "x",
        "allow-serve-80-tcp",
        all(),
        I,
        vec![rule(vec![], vec![named(Tcp, "serve-80-tcp")])],
        vec![],
    ));
    assert_matrix(&state, Tcp, 80, |_, _| true);
    assert_matrix(&state, Tcp, 81, |_, to| to.0 != "x");
    assert_matrix(&state, Udp, 80, |_, to| to.0 != "x");
}

/// e2e "should allow egress access on one named port": the name resolves on the destination
/// (the peer), and matches nothing where the destination is no pod.
#[test]
fn named_port_on_egress_resolves_on_the_destination() {
    let mut state = layout().with_policy(policy(
        "x",
        "egress-serve-81-udp",
        all(),
        E,
        vec![],
        vec![rule(vec![], vec![named(Udp, "serve-81-udp")])],
    ));
    assert_matrix(&state, Udp, 81, |_, _| true);
    assert_matrix(&state, Udp, 80, |from, _| from.0 != "x");
    assert!(!policy_allows(
        &state,
        pod_ip("x", "a"),
        addr(OUTSIDE),
        Udp,
        81
    ));
    // A destination that serves the name on another port is reached on that port only.
    let zb = state
        .pods
        .iter_mut()
        .find(|p| p.name == ObjectName::new("z", "b"))
        .expect("z/b");
    zb.named_ports = vec![NamedPort::new("serve-81-udp", Udp, 9081)];
    assert!(allows(&state, ("x", "a"), ("z", "b"), Udp, 9081));
    assert!(!allows(&state, ("x", "a"), ("z", "b"), Udp, 81));
}

/// Docs "Targeting a range of ports" (`port` with `endPort`): the range covers both ends,
/// nothing beyond.
#[test]
fn end_port_ranges_are_inclusive() {
    let state = layout().with_policy(policy(
        "x",
        "allow-80-81",
        all(),
        I,
        vec![rule(
            vec![],
            vec![PolicyPort {
                end_port: Some(81),
                ..port(Tcp, 80)
            }],
        )],
        vec![],
    ));
    for p in [80, 81] {
        assert_matrix(&state, Tcp, p, |_, _| true);
    }
    for p in [79, 82] {
        assert_matrix(&state, Tcp, p, |_, to| to.0 != "x");
    }
    assert_matrix(&state, Udp, 80, |_, to| to.0 != "x");
}

/// A port entry names one protocol (TCP when left out); UDP and SCTP are matched like TCP.
#[test]
fn ports_match_their_protocol_only() {
    let state = layout().with_policy(policy(
        "x",
        "allow-udp-and-sctp",
        all(),
        I,
        vec![rule(
            vec![],
            vec![
                port(Udp, 80),
                PolicyPort {
                    protocol: Sctp,
                    port: None,
                    end_port: None,
                },
            ],
        )],
        vec![],
    ));
    assert_matrix(&state, Udp, 80, |_, _| true);
    assert_matrix(&state, Sctp, 81, |_, _| true);
    assert_matrix(&state, Tcp, 80, |_, to| to.0 != "x");
    assert_matrix(&state, Udp, 81, |_, to| to.0 != "x");
}

/// e2e "should enforce multiple ingress policies with ingress allow-all policy taking
/// precedence" in the small: two policies on one pod allow the union of their rules.
#[test]
fn multiple_policies_allow_the_union_of_their_rules() {
    let state = layout()
        .with_policy(policy(
            "x",
            "y-on-80",
            all(),
            I,
            vec![rule(
                vec![namespaces(labels("ns", "y"))],
                vec![port(Tcp, 80)],
            )],
            vec![],
        ))
        .with_policy(policy(
            "x",
            "z-on-81",
            all(),
            I,
            vec![rule(
                vec![namespaces(labels("ns", "z"))],
                vec![port(Tcp, 81)],
            )],
            vec![],
        ));
    assert_matrix(&state, Tcp, 80, |from, to| to.0 != "x" || from.0 == "y");
    assert_matrix(&state, Tcp, 81, |from, to| to.0 != "x" || from.0 == "z");
    let v = policy_verdict(&state, pod_ip("x", "b"), pod_ip("x", "a"), Tcp, 80);
    assert_eq!(
        v.ingress,
        Decision::Denied(vec![
            ObjectName::new("x", "y-on-80"),
            ObjectName::new("x", "z-on-81")
        ])
    );
}

/// Both ends must agree: the client's egress and the server's ingress.
#[test]
fn client_egress_and_server_ingress_must_both_allow() {
    // x may send only to y; z accepts only from x.
    let state = layout()
        .with_policy(policy(
            "x",
            "egress-to-y",
            all(),
            E,
            vec![],
            vec![rule(vec![namespaces(labels("ns", "y"))], vec![])],
        ))
        .with_policy(policy(
            "z",
            "ingress-from-x",
            all(),
            I,
            vec![rule(vec![namespaces(labels("ns", "x"))], vec![])],
            vec![],
        ));
    assert_matrix(&state, Tcp, 80, |from, to| {
        let egress = from.0 != "x" || to.0 == "y";
        let ingress = to.0 != "z" || from.0 == "x";
        egress && ingress
    });
    let v = policy_verdict(&state, pod_ip("x", "a"), pod_ip("z", "a"), Tcp, 80);
    assert!(
        !v.egress.allows() && v.ingress.allows() && !v.allowed(),
        "{v:?}"
    );
}

/// Docs "Default policies" example: egress denied except DNS (53 UDP and TCP) to any peer.
#[test]
fn egress_dns_allowed_while_the_rest_is_denied() {
    let state = layout().with_policy(policy(
        "x",
        "dns-only",
        all(),
        E,
        vec![],
        vec![rule(vec![], vec![port(Udp, 53), port(Tcp, 53)])],
    ));
    assert_matrix(&state, Udp, 53, |_, _| true);
    assert_matrix(&state, Tcp, 53, |_, _| true);
    assert_matrix(&state, Udp, 80, |from, _| from.0 != "x");
    assert!(policy_allows(
        &state,
        pod_ip("x", "b"),
        addr(OUTSIDE),
        Udp,
        53
    ));
}

/// `policyTypes` left out: `Ingress`, plus `Egress` when there are egress rules. Listed
/// types win over the rules present: rules of an unlisted direction are ignored.
#[test]
fn policy_types_default_and_explicit() {
    let egress_rules = vec![rule(vec![namespaces(labels("ns", "y"))], vec![])];
    // No types, egress rules: isolates both directions.
    let state = layout().with_policy(policy("x", "p", all(), &[], vec![], egress_rules.clone()));
    assert_matrix(&state, Tcp, 80, |from, to| {
        to.0 != "x" && (from.0 != "x" || to.0 == "y")
    });
    // No types, no egress rules: ingress only.
    let state = layout().with_policy(policy("x", "p", all(), &[], vec![], vec![]));
    assert_matrix(&state, Tcp, 80, |_, to| to.0 != "x");
    // Egress only, with ingress rules listed: ingress is not isolated, the rules are ignored.
    let state = layout().with_policy(policy(
        "x",
        "p",
        all(),
        E,
        vec![rule(vec![namespaces(labels("ns", "z"))], vec![])],
        egress_rules,
    ));
    assert_matrix(&state, Tcp, 80, |from, to| from.0 != "x" || to.0 == "y");
}

/// Set-based requirements on pod labels: `In`, `Exists`, `DoesNotExist`.
#[test]
fn match_expressions_select_pods() {
    let expr = |key: &str, operator, values: &[&str]| LabelSelector {
        match_labels: BTreeMap::new(),
        match_expressions: vec![LabelRequirement {
            key: key.into(),
            operator,
            values: values.iter().map(|v| (*v).to_owned()).collect(),
        }],
    };
    let state = layout().with_policy(policy(
        "x",
        "in",
        expr("pod", SelectorOperator::In, &["b", "c"]),
        I,
        vec![rule(
            vec![pods(expr("pod", SelectorOperator::Exists, &[]))],
            vec![],
        )],
        vec![],
    ));
    // x/b and x/c accept x's own pods only; x/a is not selected.
    assert_matrix(&state, Tcp, 80, |from, to| {
        to.0 != "x" || to.1 == "a" || from.0 == "x"
    });
    let state = layout().with_policy(policy(
        "x",
        "unlabelled",
        expr("pod", SelectorOperator::DoesNotExist, &[]),
        I,
        vec![],
        vec![],
    ));
    assert_matrix(&state, Tcp, 80, |_, _| true);
}

/// Docs: "traffic to and from the node where a Pod is running is always allowed" (kubelet
/// probes); this node is not the node of node-b's pods.
#[test]
fn the_node_reaches_its_own_pods_whatever_the_policy() {
    let state = layout().with_policy(policy("x", "default-deny-all", all(), IE, vec![], vec![]));
    let node = addr(NODE_IP);
    let xa = pod_ip("x", "a");
    let v = policy_verdict(&state, node, xa, Tcp, 80);
    assert_eq!(
        (&v.egress, &v.ingress),
        (&Decision::NotAPod, &Decision::NodeTraffic)
    );
    assert!(v.allowed());
    assert!(
        policy_allows(&state, xa, node, Tcp, 10250),
        "pod to its node"
    );
    assert!(
        !policy_allows(&state, node, pod_ip("x", "b"), Tcp, 80),
        "another node's pod"
    );
    assert!(!policy_allows(&state, pod_ip("x", "b"), node, Tcp, 80));
}

/// Service traffic is checked after DNAT, against the backend and its target port: a policy
/// allowing the target port (8080) and not the service port (80) lets the connection through,
/// to the backends it allows only; `evaluate` keeps exactly those, and drops when none is
/// left. Untouched pod-to-pod traffic is dropped when denied.
#[test]
fn service_traffic_is_checked_after_dnat() {
    let cluster_ip = addr("10.96.0.20");
    let state = layout()
        .with_service(
            Service::cluster_ip(
                ObjectName::new("x", "web"),
                cluster_ip,
                [ServicePort::tcp(80, 8080)],
            )
            .with_backends([
                Backend::new(pod_ip("x", "a")).on_node("node-a"),
                Backend::new(pod_ip("x", "b")).on_node("node-b"),
            ]),
        )
        .with_policy(policy(
            "x",
            "allow-8080-to-a-from-y",
            labels("pod", "a"),
            I,
            vec![rule(
                vec![namespaces(labels("ns", "y"))],
                vec![port(Tcp, 8080)],
            )],
            vec![],
        ))
        .with_policy(policy("x", "deny-b", labels("pod", "b"), I, vec![], vec![]));
    dataplane_core::validate(&state).expect("valid");
    let from = |ns: &str| {
        let client = pod_ip(ns, "a");
        let packet = Packet {
            protocol: Tcp,
            source: SocketAddr::new(client, 40000),
            destination: SocketAddr::new(cluster_ip, 80),
        };
        evaluate(&state, &packet, &Entry::FromPod(ObjectName::new(ns, "a")))
    };
    let Verdict::Forward { backends, .. } = from("y") else {
        panic!("y reaches the service: {:?}", from("y"));
    };
    assert_eq!(
        backends.into_iter().collect::<Vec<_>>(),
        vec![SocketAddr::new(pod_ip("x", "a"), 8080)]
    );
    assert_eq!(from("z"), Verdict::Drop, "no backend allows z");
    // Before DNAT the service port is not what the policy names.
    assert!(!policy_allows(
        &state,
        pod_ip("y", "a"),
        pod_ip("x", "a"),
        Tcp,
        80
    ));
    // Straight to the pod, untouched: allowed on 8080 from y, dropped from z.
    let direct = |ns: &str| {
        let packet = Packet {
            protocol: Tcp,
            source: SocketAddr::new(pod_ip(ns, "a"), 40000),
            destination: SocketAddr::new(pod_ip("x", "a"), 8080),
        };
        evaluate(&state, &packet, &Entry::FromPod(ObjectName::new(ns, "a")))
    };
    assert!(
        matches!(direct("y"), Verdict::Untouched { .. }),
        "{:?}",
        direct("y")
    );
    assert_eq!(direct("z"), Verdict::Drop);
}

/// Without a Namespace object, an endpoint's own `namespaceLabels` stand in; with one, the
/// object holds the namespace's labels.
#[test]
fn namespace_labels_come_from_the_namespace_object() {
    let mut state = layout().with_policy(policy(
        "y",
        "from-gold",
        all(),
        I,
        vec![rule(vec![namespaces(labels("tier", "gold"))], vec![])],
        vec![],
    ));
    state.namespaces.retain(|n| n.name != "x");
    state.endpoints[0]
        .namespace_labels
        .insert("tier".into(), "gold".into());
    assert!(
        allows(&state, ("x", "b"), ("y", "a"), Tcp, 80),
        "x/a's labels stand for x"
    );
    state = state.with_namespace(Namespace::new("x").with_label("tier", "silver"));
    assert!(
        !allows(&state, ("x", "b"), ("y", "a"), Tcp, 80),
        "the object wins"
    );
}

/// An `ipBlock` of one family never matches an address of the other; a dual-stack pod is
/// matched by either of its addresses.
#[test]
fn ip_blocks_match_their_own_family_only() {
    let mut state = layout().with_policy(policy(
        "x",
        "v6-only",
        labels("pod", "a"),
        I,
        vec![rule(vec![block("fd00::/8", &[])], vec![])],
        vec![],
    ));
    assert!(
        !allows(&state, ("y", "b"), ("x", "a"), Tcp, 80),
        "IPv4 client, IPv6 block"
    );
    let yb = state
        .pods
        .iter_mut()
        .find(|p| p.name == ObjectName::new("y", "b"))
        .expect("y/b");
    yb.ips.push(addr("fd00::22"));
    assert!(policy_allows(
        &state,
        addr("fd00::22"),
        pod_ip("x", "a"),
        Tcp,
        80
    ));
    assert!(!policy_allows(
        &state,
        addr("fe80::1"),
        pod_ip("x", "a"),
        Tcp,
        80
    ));
}

/// Anti-spoofing: with policies, a local pod sending from an address that is not its own
/// (another pod's, the node's) is dropped, whatever the policies would say of that address;
/// IPv6 link-local and unspecified sources are exempt only towards link-local and multicast
/// destinations (neighbour discovery, DAD). Without policies, nothing changes.
#[test]
fn a_pod_sending_from_a_borrowed_address_is_dropped() {
    // Only x/b may reach x/a, on TCP 80.
    let state = layout().with_policy(policy(
        "x",
        "a-from-b",
        labels("pod", "a"),
        I,
        vec![rule(vec![pods(labels("pod", "b"))], vec![port(Tcp, 80)])],
        vec![],
    ));
    let packet = |source: IpAddr| Packet {
        protocol: Tcp,
        source: SocketAddr::new(source, 40000),
        destination: SocketAddr::new(pod_ip("x", "a"), 80),
    };
    // y/a, on this node, cannot reach x/a from its own address...
    let y_a = Entry::FromPod(ObjectName::new("y", "a"));
    assert_eq!(
        evaluate(&state, &packet(pod_ip("y", "a")), &y_a),
        Verdict::Drop
    );
    // ...nor by borrowing x/b's (allowed) address or the node's (always allowed).
    for borrowed in [pod_ip("x", "b"), addr(NODE_IP)] {
        assert!(policy_allows(&state, borrowed, pod_ip("x", "a"), Tcp, 80));
        let target = pod_ip("x", "a");
        assert!(dataplane_core::is_spoofed(
            &state,
            &ObjectName::new("y", "a"),
            borrowed,
            target
        ));
        assert_eq!(evaluate(&state, &packet(borrowed), &y_a), Verdict::Drop);
    }
    // Its own address is no spoof; link-local and unspecified IPv6 sources are exempt towards
    // link-local and multicast destinations only (they stay on the link).
    let y = ObjectName::new("y", "a");
    let spoofed =
        |src: &str, dst: &str| dataplane_core::is_spoofed(&state, &y, addr(src), addr(dst));
    assert!(!dataplane_core::is_spoofed(
        &state,
        &y,
        pod_ip("y", "a"),
        pod_ip("x", "a")
    ));
    assert!(!spoofed("fe80::1", "fe80::2"), "neighbour discovery");
    assert!(
        !spoofed("::", "ff02::1:ff00:1"),
        "duplicate address detection"
    );
    assert!(!spoofed("fe80::1", "ff02::16"), "MLD");
    assert!(
        spoofed("fe80::1", "fd00:96::10"),
        "a link-local source to a ClusterIP"
    );
    assert!(
        spoofed("::", "fd00:244::1"),
        "an unspecified source to a pod"
    );
    assert!(spoofed("fd00::1", "fe80::2"));
    // Without policies, the same borrowed source is judged as any packet.
    let open = layout();
    assert!(matches!(
        evaluate(&open, &packet(pod_ip("x", "b")), &y_a),
        Verdict::Untouched { .. }
    ));
}

/// The node's own traffic to its pods is allowed whatever source address it carries (kubelet
/// on a secondary address); the same address from outside the node is only an address.
#[test]
fn the_node_reaches_its_pods_from_any_of_its_addresses() {
    let state = layout().with_policy(policy("x", "deny-a", labels("pod", "a"), I, vec![], vec![]));
    let secondary = addr("192.0.2.10");
    let packet = Packet {
        protocol: Tcp,
        source: SocketAddr::new(secondary, 40000),
        destination: SocketAddr::new(pod_ip("x", "a"), 80),
    };
    assert!(matches!(
        evaluate(&state, &packet, &Entry::FromHost),
        Verdict::Untouched { .. }
    ));
    assert_eq!(evaluate(&state, &packet, &Entry::FromUplink), Verdict::Drop);
}
