//! Cluster policies and the baseline per packet with BPF_PROG_TEST_RUN, against live maps:
//! exact TC verdicts for the AdminNetworkPolicy order (a cluster Deny beats a NetworkPolicy
//! Allow, Pass defers to NetworkPolicy, the baseline only where no NetworkPolicy isolates),
//! `networks` and `nodes` peers, named ports, established connections across a change, and
//! an incremental change of a tier's peer set.
//!
//! ```text
//!   node-a 172.18.0.2                       namespaces x (team: x), y (team: y)
//!     x/a 10.244.0.5  --lxc0--  [dp_from_pod] egress / [dp_to_pod] ingress
//!                               (named port http/TCP 8080)
//!     x/b 10.244.0.6  --lxc1--
//!   elsewhere: y/c 10.244.1.7 on node-b 172.18.0.3 (zone: b); 192.0.2.0/24 outside
//! ```
//!
//! NetworkPolicy `a-allow-all` isolates x/a for ingress and allows everything.
//! Cluster policies: `pass-http` (priority 5, pods `pod: a`): ingress Pass from namespace y
//! on named port `http`; `deny-y` (10, pods `pod: a`): ingress Deny from namespace y;
//! `dns` (20, namespace x): egress Allow to 192.0.2.53/32 UDP 53, then Deny to 192.0.2.0/24.
//! Baseline (every pod): ingress Deny from pods `pod: c` of namespace y; egress Deny to nodes
//! `zone: b`.

mod common;

use common::{eth, require_root, stat, TestNode, TCP_ACK, TCP_SYN};
use dataplane_core::{
    diff, BaselineAction, BaselinePolicy, BaselineRule, ClusterAction, ClusterPeer, ClusterPolicy,
    ClusterPolicyRule, ClusterPolicySubject, ClusterPort, Dataplane, DesiredState, Endpoint,
    LabelSelector, NamedPort, Namespace, NamespacedPods, ObjectName, PeerNode, PeerPod, Policy,
    PolicyRule, Protocol,
};
use dataplane_ebpf::{EbpfDataplane, Hook};

/// Runs per `BPF_PROG_TEST_RUN` of the cost measurement.
const RUNS: u32 = 20_000;

const OK: u32 = 0;
const SHOT: u32 = 2;

const A: &str = "10.244.0.5";
const B: &str = "10.244.0.6";
const C: &str = "10.244.1.7";

fn sel(key: &str, value: &str) -> LabelSelector {
    LabelSelector::default().with_label(key, value)
}

fn pods(ns: LabelSelector, pod: LabelSelector) -> ClusterPolicySubject {
    ClusterPolicySubject::Pods(NamespacedPods {
        namespace_selector: ns,
        pod_selector: pod,
    })
}

fn cluster_policies() -> Vec<ClusterPolicy> {
    let from_y = || ClusterPeer::Namespaces(sel("team", "y"));
    let net = |s: &str| ClusterPeer::Networks(vec![s.parse().expect("CIDR")]);
    vec![
        ClusterPolicy::new(
            "pass-http",
            5,
            pods(LabelSelector::default(), sel("pod", "a")),
        )
        .with_ingress(
            ClusterPolicyRule::new("pass", ClusterAction::Pass, [from_y()])
                .with_port(ClusterPort::NamedPort("http".into())),
        ),
        ClusterPolicy::new(
            "deny-y",
            10,
            pods(LabelSelector::default(), sel("pod", "a")),
        )
        .with_ingress(ClusterPolicyRule::new(
            "deny",
            ClusterAction::Deny,
            [from_y()],
        )),
        ClusterPolicy::for_namespaces("dns", 20, sel("team", "x"))
            .with_egress(
                ClusterPolicyRule::new("dns", ClusterAction::Allow, [net("192.0.2.53/32")])
                    .with_port(ClusterPort::PortNumber {
                        protocol: Protocol::Udp,
                        port: 53,
                    }),
            )
            .with_egress(ClusterPolicyRule::new(
                "no-test-net",
                ClusterAction::Deny,
                [net("192.0.2.0/24")],
            )),
    ]
}

fn baseline() -> BaselinePolicy {
    BaselinePolicy::new(pods(LabelSelector::default(), LabelSelector::default()))
        .with_ingress(BaselineRule::new(
            "no-c",
            BaselineAction::Deny,
            [ClusterPeer::Pods(NamespacedPods {
                namespace_selector: sel("team", "y"),
                pod_selector: sel("pod", "c"),
            })],
        ))
        .with_egress(BaselineRule::new(
            "no-zone-b",
            BaselineAction::Deny,
            [ClusterPeer::Nodes(sel("zone", "b"))],
        ))
}

fn a_allow_all() -> Policy {
    Policy {
        name: ObjectName::new("x", "a-allow-all"),
        pod_selector: sel("pod", "a"),
        policy_types: Vec::new(),
        ingress: vec![PolicyRule::default()],
        egress: Vec::new(),
    }
}

fn scene(tiers: bool) -> DesiredState {
    let mut st = DesiredState::new(common::node_a());
    st.namespaces = vec![
        Namespace::new("x").with_label("team", "x"),
        Namespace::new("y").with_label("team", "y"),
    ];
    st.endpoints = vec![
        Endpoint::new(ObjectName::new("x", "a"), "lxc0", [A.parse().unwrap()])
            .with_label("pod", "a")
            .with_named_port(NamedPort::new("http", Protocol::Tcp, 8080)),
        Endpoint::new(ObjectName::new("x", "b"), "lxc1", [B.parse().unwrap()])
            .with_label("pod", "b"),
    ];
    st.pods = vec![
        PeerPod::new(ObjectName::new("y", "c"), [C.parse().unwrap()])
            .with_label("pod", "c")
            .on_node("node-b"),
    ];
    st.nodes =
        vec![PeerNode::new("node-b", ["172.18.0.3".parse().unwrap()]).with_label("zone", "b")];
    st.policies = vec![a_allow_all()];
    if tiers {
        st.cluster_policies = cluster_policies();
        st.baseline_policy = Some(baseline());
    }
    st
}

/// A node with the pods' host-side veths lxc0 and lxc1.
fn node(tag: &str) -> TestNode {
    let n = TestNode::new(tag);
    for (host, peer) in [("lxc0", "lxc0p"), ("lxc1", "lxc1p")] {
        common::ip(&[
            "-n", &n.name, "link", "add", host, "type", "veth", "peer", "name", peer,
        ]);
        common::ip(&["-n", &n.name, "link", "set", host, "up"]);
    }
    n
}

fn tcp(src: &str, dst: &str, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    eth().ip(src, dst).tcp(sport, dport, flags).build()
}

fn udp(src: &str, dst: &str, sport: u16, dport: u16) -> Vec<u8> {
    eth().ip(src, dst).udp(sport, dport).build()
}

struct Checker {
    denied: u64,
}

impl Checker {
    fn expect(&mut self, dp: &mut EbpfDataplane, what: &str, hook: Hook, packet: &[u8], want: u32) {
        let got = dp.run_packet(hook, packet, 1).expect("test run").verdict;
        assert_eq!(got, want, "{what}");
        if want == SHOT {
            self.denied += 1;
        }
    }
}

#[test]
#[allow(clippy::too_many_lines)] // one scene, read top to bottom
fn tier_fixtures() {
    if !require_root("tier_fixtures") {
        return;
    }
    let n = node("tier");
    let mut dp = n.dataplane();
    assert!(dp.capabilities().cluster_policy);
    let plain = scene(false);
    dp.apply(&plain).expect("apply without tiers");
    let denied0 = stat(&dp, "policy_denied");
    let mut ck = Checker { denied: 0 };

    // Before the tiers: c -> a:80 is allowed by a-allow-all; its connection is established.
    ck.expect(
        &mut dp,
        "no tiers: c -> a:80",
        Hook::ToPod,
        &tcp(C, A, 40000, 80, TCP_SYN),
        OK,
    );

    let state = scene(true);
    dp.apply(&state).expect("apply with tiers");

    // Ingress of a (isolated by a-allow-all).
    ck.expect(
        &mut dp,
        "established before deny-y: c's next packet still reaches a",
        Hook::ToPod,
        &tcp(C, A, 40000, 80, TCP_ACK),
        OK,
    );
    ck.expect(
        &mut dp,
        "cluster Deny beats the NetworkPolicy Allow: c -> a:80",
        Hook::ToPod,
        &tcp(C, A, 40001, 80, TCP_SYN),
        SHOT,
    );
    ck.expect(
        &mut dp,
        "a SYN on the established tuple is a new connection: denied",
        Hook::ToPod,
        &tcp(C, A, 40000, 80, TCP_SYN),
        SHOT,
    );
    ck.expect(
        &mut dp,
        "cluster Deny (every protocol): c -> a UDP 53",
        Hook::ToPod,
        &udp(C, A, 40002, 53),
        SHOT,
    );
    ck.expect(
        &mut dp,
        "Pass (priority 5, named port http = 8080 on a) defers to NetworkPolicy, which allows; \
         the baseline's deny of c is not consulted (a is isolated)",
        Hook::ToPod,
        &tcp(C, A, 40003, 8080, TCP_SYN),
        OK,
    );
    ck.expect(
        &mut dp,
        "Pass is TCP 8080 only: c -> a UDP 8080 is denied by deny-y",
        Hook::ToPod,
        &udp(C, A, 40004, 8080),
        SHOT,
    );
    ck.expect(
        &mut dp,
        "b is not in namespace y: b -> a:80 (NetworkPolicy allows)",
        Hook::ToPod,
        &tcp(B, A, 40005, 80, TCP_SYN),
        OK,
    );
    ck.expect(
        &mut dp,
        "the node reaches a whatever the tiers say",
        Hook::ToPod,
        &tcp("172.18.0.2", A, 40006, 80, TCP_SYN),
        OK,
    );

    // Ingress of b: no NetworkPolicy isolates it, no cluster policy selects it: the baseline.
    ck.expect(
        &mut dp,
        "baseline Deny where nothing isolates: c -> b:80",
        Hook::ToPod,
        &tcp(C, B, 40007, 80, TCP_SYN),
        SHOT,
    );
    ck.expect(
        &mut dp,
        "no baseline rule matches a -> b: default allow",
        Hook::FromPod,
        &tcp(A, B, 40008, 80, TCP_SYN),
        OK,
    );
    ck.expect(
        &mut dp,
        "... and a -> b reaches b",
        Hook::ToPod,
        &tcp(A, B, 40008, 80, TCP_SYN),
        OK,
    );

    // Egress of b (namespace x: `dns`; the baseline's nodes peer).
    ck.expect(
        &mut dp,
        "cluster Allow (rule 0): b -> 192.0.2.53 UDP 53",
        Hook::FromPod,
        &udp(B, "192.0.2.53", 41000, 53),
        OK,
    );
    ck.expect(
        &mut dp,
        "cluster Deny (rule 1, /24): b -> 192.0.2.53 TCP 53",
        Hook::FromPod,
        &tcp(B, "192.0.2.53", 41001, 53, TCP_SYN),
        SHOT,
    );
    ck.expect(
        &mut dp,
        "cluster Deny (rule 1, /24): b -> 192.0.2.54 UDP 53",
        Hook::FromPod,
        &udp(B, "192.0.2.54", 41002, 53),
        SHOT,
    );
    ck.expect(
        &mut dp,
        "outside the networks: b -> 198.51.100.1:443",
        Hook::FromPod,
        &tcp(B, "198.51.100.1", 41003, 443, TCP_SYN),
        OK,
    );
    ck.expect(
        &mut dp,
        "baseline nodes peer: b -> node-b (zone: b)",
        Hook::FromPod,
        &tcp(B, "172.18.0.3", 41004, 10250, TCP_SYN),
        SHOT,
    );
    ck.expect(
        &mut dp,
        "b -> its own node: always allowed",
        Hook::FromPod,
        &tcp(B, "172.18.0.2", 41005, 10250, TCP_SYN),
        OK,
    );
    assert_eq!(
        stat(&dp, "policy_denied") - denied0,
        ck.denied,
        "each denied packet counted"
    );

    // Incremental: c relabelled out of the baseline's peer (a pod change, no tier change).
    let mut relabelled = state.clone();
    relabelled.pods[0] = relabelled.pods[0].clone().with_label("pod", "d");
    let report = dp
        .apply_changes(&diff(&state, &relabelled))
        .expect("incremental change");
    assert!(!report.full_sync, "{report:?}");
    ck.expect(
        &mut dp,
        "c left the baseline's set: c -> b:80",
        Hook::ToPod,
        &tcp(C, B, 40009, 80, TCP_SYN),
        OK,
    );
    ck.expect(
        &mut dp,
        "c is still in namespace y: c -> a:80 denied",
        Hook::ToPod,
        &tcp(C, A, 40010, 80, TCP_SYN),
        SHOT,
    );

    // Cluster policy changes are incremental too: deny-y goes (apply_changes), c reaches a
    // again through the NetworkPolicy.
    let mut fewer = relabelled.clone();
    fewer.cluster_policies.retain(|p| p.name != "deny-y");
    let report = dp
        .apply_changes(&diff(&relabelled, &fewer))
        .expect("incremental cluster policy change");
    assert!(!report.full_sync, "{report:?}");
    ck.expect(
        &mut dp,
        "deny-y removed: c -> a:80",
        Hook::ToPod,
        &tcp(C, A, 40013, 80, TCP_SYN),
        OK,
    );
    // A change the tiers' validation refuses (a priority taken) changes nothing.
    let mut clash = fewer.clone();
    clash.cluster_policies.push(
        ClusterPolicy::new(
            "clash",
            5,
            pods(LabelSelector::default(), LabelSelector::default()),
        )
        .with_ingress(ClusterPolicyRule::new(
            "deny-all",
            ClusterAction::Deny,
            [ClusterPeer::Namespaces(LabelSelector::default())],
        )),
    );
    let err = dp
        .apply_changes(&diff(&fewer, &clash))
        .expect_err("duplicate priority");
    assert!(
        matches!(&err, dataplane_core::Error::Invalid(_)) && err.to_string().contains("clash"),
        "{err}"
    );
    ck.expect(
        &mut dp,
        "refused change: b -> a:80 still allowed",
        Hook::ToPod,
        &tcp(B, A, 40014, 80, TCP_SYN),
        OK,
    );
    dp.apply_changes(&diff(&fewer, &relabelled))
        .expect("deny-y back, incrementally");
    ck.expect(
        &mut dp,
        "deny-y back: c -> a:80",
        Hook::ToPod,
        &tcp(C, A, 40015, 80, TCP_SYN),
        SHOT,
    );

    // The tiers go (full apply): back to the NetworkPolicy alone; an unchanged state writes
    // nothing.
    dp.apply(&plain).expect("tiers removed");
    let again = dp.apply(&plain).expect("again");
    assert_eq!(again.objects_written, 0, "{again:?}");
    ck.expect(
        &mut dp,
        "no tiers: c -> a:80",
        Hook::ToPod,
        &tcp(C, A, 40011, 80, TCP_SYN),
        OK,
    );
    ck.expect(
        &mut dp,
        "no tiers: c -> b:80",
        Hook::ToPod,
        &tcp(C, B, 40012, 80, TCP_SYN),
        OK,
    );
    ck.expect(
        &mut dp,
        "no tiers: b -> 192.0.2.54 UDP 53",
        Hook::FromPod,
        &udp(B, "192.0.2.54", 41006, 53),
        OK,
    );
    assert_eq!(stat(&dp, "policy_denied") - denied0, ck.denied);
}

/// Per-packet cost of a pod's ingress policy check (`dp_to_pod`, a TCP SYN: every SYN is
/// checked) with the NetworkPolicy alone and with the tiers in front of and behind it.
/// Prints the kernel's mean ns per run; asserts only the verdicts (no timed assertions).
#[test]
fn tier_cost_per_new_flow() {
    if !require_root("tier_cost_per_new_flow") {
        return;
    }
    let n = node("tiercost");
    let mut dp = n.dataplane();
    let measure = |dp: &mut EbpfDataplane, what: &str, packet: &[u8], want: u32| {
        let run = dp.run_packet(Hook::ToPod, packet, RUNS).expect("test run");
        assert_eq!(run.verdict, want, "{what}");
        eprintln!("tier cost: {what}: {} ns/packet", run.duration.as_nanos());
    };
    dp.apply(&scene(false)).expect("no tiers");
    measure(
        &mut dp,
        "NetworkPolicy only, b -> a:80 SYN (allowed)",
        &tcp(B, A, 50000, 80, TCP_SYN),
        OK,
    );
    dp.apply(&scene(true)).expect("tiers");
    measure(
        &mut dp,
        "with tiers, b -> a:80 SYN (Pass/Deny miss, NetworkPolicy allows)",
        &tcp(B, A, 50001, 80, TCP_SYN),
        OK,
    );
    measure(
        &mut dp,
        "with tiers, c -> a:80 SYN (cluster Deny)",
        &tcp(C, A, 50002, 80, TCP_SYN),
        SHOT,
    );
    measure(
        &mut dp,
        "with tiers, c -> b:80 SYN (baseline Deny)",
        &tcp(C, B, 50003, 80, TCP_SYN),
        SHOT,
    );
}
