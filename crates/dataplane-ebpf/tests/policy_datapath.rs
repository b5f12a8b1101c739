//! NetworkPolicy per packet with BPF_PROG_TEST_RUN, against live maps.
//!
//! ```text
//!   node-a 172.18.0.2
//!     x/a 10.244.0.5  --lxc0--  [dp_from_pod] egress / [dp_to_pod] ingress
//!     x/b 10.244.0.6  --lxc1--  (named port serve-81/TCP 81)
//!   elsewhere: y/c 10.244.1.7 (named port serve-81/TCP 81), 192.0.2.0/24 outside
//!   ClusterIP 10.96.0.10:80 -> a:80 (local), 10.96.0.11:80 -> c:80 (remote)
//! ```
//!
//! Policies: `a-deny` isolates a for ingress; `a-from-b` lets pods `pod=b` (namespace x)
//! reach a on TCP 80; `b-out` isolates b for egress and allows pods of namespace y on the
//! named port `serve-81`, a on TCP 80, and 192.0.2.0/24 except 192.0.2.128/25 on TCP
//! 443-450 (endPort).

mod common;

use common::{eth, require_root, stat, TestNode, TCP_ACK, TCP_SYN};
use dataplane_core::{
    diff, Backend, Dataplane, DesiredState, Endpoint, Error, NamedPort, Namespace, ObjectName,
    PeerPod, Policy, Protocol, Service, ServicePort,
};
use dataplane_ebpf::{AttachMode, EbpfDataplane, Hook, RunOn};

const OK: u32 = 0;
const SHOT: u32 = 2;
const REDIRECT: u32 = 7;

fn policy(json: serde_json::Value) -> Policy {
    serde_json::from_value(json).expect("policy JSON")
}

fn a_deny() -> Policy {
    policy(serde_json::json!({
        "namespace": "x", "name": "a-deny",
        "podSelector": {"matchLabels": {"pod": "a"}},
        "policyTypes": ["Ingress"],
    }))
}

fn a_from_b() -> Policy {
    policy(serde_json::json!({
        "namespace": "x", "name": "a-from-b",
        "podSelector": {"matchLabels": {"pod": "a"}},
        "policyTypes": ["Ingress"],
        "ingress": [{"peers": [{"podSelector": {"matchLabels": {"pod": "b"}}}],
                     "ports": [{"protocol": "TCP", "port": 80}]}],
    }))
}

fn b_out() -> Policy {
    policy(serde_json::json!({
        "namespace": "x", "name": "b-out",
        "podSelector": {"matchLabels": {"pod": "b"}},
        "policyTypes": ["Egress"],
        "egress": [
            {"peers": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "y"}}}],
             "ports": [{"protocol": "TCP", "port": "serve-81"}]},
            {"peers": [{"podSelector": {"matchLabels": {"pod": "a"}}}],
             "ports": [{"protocol": "TCP", "port": 80}]},
            {"peers": [{"ipBlock": {"cidr": "192.0.2.0/24", "except": ["192.0.2.128/25"]}}],
             "ports": [{"protocol": "TCP", "port": 443, "endPort": 450}]},
        ],
    }))
}

fn svc(name: &str, ip: &str, backend: &str) -> Service {
    let mut s = Service::new(ObjectName::new("x", name));
    s.cluster_ips = vec![ip.parse().unwrap()];
    s.ports = vec![ServicePort::new(Protocol::Tcp, 80, 80)];
    s.backends = vec![Backend::new(backend.parse().unwrap())];
    s
}

fn scene(policies: Vec<Policy>) -> DesiredState {
    let mut st = DesiredState::new(common::node_a());
    st.namespaces = vec![Namespace::new("x"), Namespace::new("y")];
    st.endpoints = vec![
        Endpoint::new(
            ObjectName::new("x", "a"),
            "lxc0",
            ["10.244.0.5".parse().unwrap()],
        )
        .with_label("pod", "a"),
        Endpoint::new(
            ObjectName::new("x", "b"),
            "lxc1",
            ["10.244.0.6".parse().unwrap()],
        )
        .with_label("pod", "b")
        .with_named_port(NamedPort::new("serve-81", Protocol::Tcp, 81)),
    ];
    st.pods = vec![
        PeerPod::new(ObjectName::new("y", "c"), ["10.244.1.7".parse().unwrap()])
            .with_label("pod", "c")
            .with_named_port(NamedPort::new("serve-81", Protocol::Tcp, 81))
            .on_node("node-b"),
    ];
    st.services = vec![
        svc("to-a", "10.96.0.10", "10.244.0.5"),
        svc("to-c", "10.96.0.11", "10.244.1.7"),
    ];
    st.policies = policies;
    st
}

/// A node with the pods' host-side veths lxc0 and lxc1.
fn node(tag: &str) -> TestNode {
    let n = TestNode::new(tag);
    for (host, peer) in [("lxc0", "lxc0p"), ("lxc1", "lxc1p")] {
        for args in [
            vec![
                "-n", &n.name, "link", "add", host, "type", "veth", "peer", "name", peer,
            ],
            vec!["-n", &n.name, "link", "set", host, "up"],
        ] {
            let out = std::process::Command::new("ip")
                .args(&args)
                .output()
                .expect("ip");
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    n
}

fn tcp(src: &str, dst: &str, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    eth().ip(src, dst).tcp(sport, dport, flags).build()
}

fn verdict(dp: &mut EbpfDataplane, hook: Hook, packet: &[u8]) -> u32 {
    dp.run_packet(hook, packet, 1).expect("test run").verdict
}

#[test]
#[allow(clippy::too_many_lines)] // one scene, read top to bottom
fn policy_fixtures() {
    if !require_root("policy_fixtures") {
        return;
    }
    let n = node("pol");
    let mut dp = n.dataplane();
    assert!(dp.capabilities().network_policy);
    let state = scene(vec![a_deny(), a_from_b(), b_out()]);
    dp.apply(&state).expect("apply with policies");
    let denied0 = stat(&dp, "policy_denied");
    let denied = std::cell::Cell::new(0u64);
    let expect = |dp: &mut EbpfDataplane, what: &str, hook: Hook, packet: Vec<u8>, want: u32| {
        let got = verdict(dp, hook, &packet);
        assert_eq!(got, want, "{what}");
        if want == SHOT {
            denied.set(denied.get() + 1);
        }
    };

    // Ingress of a.
    expect(
        &mut dp,
        "allow: b -> a:80 (a-from-b)",
        Hook::ToPod,
        tcp("10.244.0.6", "10.244.0.5", 40000, 80, TCP_SYN),
        OK,
    );
    expect(
        &mut dp,
        "deny: c -> a:80 (no rule for c)",
        Hook::ToPod,
        tcp("10.244.1.7", "10.244.0.5", 40001, 80, TCP_SYN),
        SHOT,
    );
    expect(
        &mut dp,
        "deny: b -> a:81 (port)",
        Hook::ToPod,
        tcp("10.244.0.6", "10.244.0.5", 40002, 81, TCP_SYN),
        SHOT,
    );
    expect(
        &mut dp,
        "deny: b -> a:80 over UDP (protocol)",
        Hook::ToPod,
        eth().ip("10.244.0.6", "10.244.0.5").udp(40003, 80).build(),
        SHOT,
    );
    expect(
        &mut dp,
        "deny: ping from c (rules have ports)",
        Hook::ToPod,
        eth()
            .ip("10.244.1.7", "10.244.0.5")
            .icmp_echo(false, 7)
            .build(),
        SHOT,
    );
    expect(
        &mut dp,
        "node -> pod: always allowed",
        Hook::ToPod,
        tcp("172.18.0.2", "10.244.0.5", 40004, 22, TCP_SYN),
        OK,
    );
    expect(
        &mut dp,
        "an ICMP error passes (related)",
        Hook::ToPod,
        eth()
            .ip("10.244.1.7", "10.244.0.5")
            .icmp_unreachable(tcp("10.244.0.5", "10.244.1.7", 5, 6, TCP_SYN)[14..].to_vec())
            .build(),
        OK,
    );
    // b is not isolated for ingress.
    expect(
        &mut dp,
        "c -> b: b not isolated for ingress",
        Hook::ToPod,
        tcp("10.244.1.7", "10.244.0.6", 40005, 9999, TCP_SYN),
        OK,
    );

    // Egress of b.
    expect(
        &mut dp,
        "named port: b -> c:81 (serve-81 on c)",
        Hook::FromPod,
        tcp("10.244.0.6", "10.244.1.7", 41000, 81, TCP_SYN),
        OK,
    );
    expect(
        &mut dp,
        "named port: b -> c:80 is not serve-81",
        Hook::FromPod,
        tcp("10.244.0.6", "10.244.1.7", 41001, 80, TCP_SYN),
        SHOT,
    );
    expect(
        &mut dp,
        "endPort: b -> 192.0.2.10:443",
        Hook::FromPod,
        tcp("10.244.0.6", "192.0.2.10", 41002, 443, TCP_SYN),
        OK,
    );
    expect(
        &mut dp,
        "endPort: b -> 192.0.2.10:450",
        Hook::FromPod,
        tcp("10.244.0.6", "192.0.2.10", 41003, 450, TCP_SYN),
        OK,
    );
    expect(
        &mut dp,
        "endPort: b -> 192.0.2.10:451",
        Hook::FromPod,
        tcp("10.244.0.6", "192.0.2.10", 41004, 451, TCP_SYN),
        SHOT,
    );
    expect(
        &mut dp,
        "ipBlock except: b -> 192.0.2.200:443",
        Hook::FromPod,
        tcp("10.244.0.6", "192.0.2.200", 41005, 443, TCP_SYN),
        SHOT,
    );
    expect(
        &mut dp,
        "outside the ipBlock: b -> 198.51.100.1:443",
        Hook::FromPod,
        tcp("10.244.0.6", "198.51.100.1", 41006, 443, TCP_SYN),
        SHOT,
    );
    expect(
        &mut dp,
        "b -> its node: always allowed",
        Hook::FromPod,
        tcp("10.244.0.6", "172.18.0.2", 41007, 10250, TCP_SYN),
        OK,
    );
    expect(
        &mut dp,
        "a is not isolated for egress",
        Hook::FromPod,
        tcp("10.244.0.5", "198.51.100.1", 41008, 443, TCP_SYN),
        OK,
    );

    // Services: checked after DNAT, against the backend and its port.
    expect(
        &mut dp,
        "b -> ClusterIP of a: backend a:80 allowed, translated and redirected",
        Hook::FromPod,
        tcp("10.244.0.6", "10.96.0.10", 42000, 80, TCP_SYN),
        REDIRECT,
    );
    expect(
        &mut dp,
        "b -> ClusterIP of c: backend c:80 denied",
        Hook::FromPod,
        tcp("10.244.0.6", "10.96.0.11", 42001, 80, TCP_SYN),
        SHOT,
    );
    let flows = dp.flows().expect("flows");
    assert!(
        flows.iter().any(|f| f.client.port() == 42000),
        "the allowed service connection is tracked: {flows:?}"
    );
    assert!(
        !flows.iter().any(|f| f.client.port() == 42001),
        "the denied one left no conntrack entry: {flows:?}"
    );

    assert_eq!(
        stat(&dp, "policy_denied") - denied0,
        denied.get(),
        "each denied packet counted"
    );

    // Established connections: b -> a:80 allowed at b's egress and a's ingress.
    let (b, a) = ("10.244.0.6", "10.244.0.5");
    expect(
        &mut dp,
        "b -> a:80 SYN leaves b",
        Hook::FromPod,
        tcp(b, a, 43000, 80, TCP_SYN),
        OK,
    );
    expect(
        &mut dp,
        "b -> a:80 SYN reaches a",
        Hook::ToPod,
        tcp(b, a, 43000, 80, TCP_SYN),
        OK,
    );
    // Now a accepts nobody and b is isolated for ingress too.
    let b_deny = policy(serde_json::json!({
        "namespace": "x", "name": "b-deny",
        "podSelector": {"matchLabels": {"pod": "b"}},
        "policyTypes": ["Ingress"],
    }));
    let after = scene(vec![a_deny(), b_out(), b_deny]);
    dp.apply_changes(&diff(&state, &after))
        .expect("policy changed");
    expect(
        &mut dp,
        "established: b's next packet still reaches a",
        Hook::ToPod,
        tcp(b, a, 43000, 80, TCP_ACK),
        OK,
    );
    expect(
        &mut dp,
        "established: a's reply leaves a",
        Hook::FromPod,
        tcp(a, b, 80, 43000, TCP_SYN | TCP_ACK),
        OK,
    );
    expect(
        &mut dp,
        "established: a's reply reaches b (isolated now)",
        Hook::ToPod,
        tcp(a, b, 80, 43000, TCP_SYN | TCP_ACK),
        OK,
    );
    expect(
        &mut dp,
        "a SYN on the same tuple is a new connection: checked, denied",
        Hook::ToPod,
        tcp(b, a, 43000, 80, TCP_SYN),
        SHOT,
    );
    expect(
        &mut dp,
        "a new connection b -> a:80 is denied",
        Hook::ToPod,
        tcp(b, a, 43001, 80, TCP_SYN),
        SHOT,
    );
    expect(
        &mut dp,
        "c -> b now denied",
        Hook::ToPod,
        tcp("10.244.1.7", b, 40006, 9999, TCP_SYN),
        SHOT,
    );
    expect(
        &mut dp,
        "the node still reaches b",
        Hook::ToPod,
        tcp("172.18.0.2", b, 40007, 8080, TCP_SYN),
        OK,
    );
    assert_eq!(
        stat(&dp, "policy_denied") - denied0,
        denied.get(),
        "each denied packet counted"
    );

    // Back to the first state by a full apply: the same numbering, nothing rewritten but
    // what changed.
    let report = dp.apply(&state).expect("full apply back");
    assert!(report.objects_written > 0);
    let again = dp.apply(&state).expect("full apply again");
    assert_eq!(
        again.objects_written, 0,
        "an unchanged state writes nothing: {again:?}"
    );
    expect(
        &mut dp,
        "allow again: b -> a:80",
        Hook::ToPod,
        tcp(b, a, 43002, 80, TCP_SYN),
        OK,
    );
    expect(
        &mut dp,
        "deny again: c -> a:80",
        Hook::ToPod,
        tcp("10.244.1.7", a, 43003, 80, TCP_SYN),
        SHOT,
    );

    // Without policies nothing is isolated.
    let open = scene(Vec::new());
    dp.apply_changes(&diff(&state, &open))
        .expect("policies removed");
    expect(
        &mut dp,
        "no policy: c -> a:81",
        Hook::ToPod,
        tcp("10.244.1.7", a, 43004, 81, TCP_SYN),
        OK,
    );
    expect(
        &mut dp,
        "no policy: b -> 198.51.100.1",
        Hook::FromPod,
        tcp(b, "198.51.100.1", 43005, 443, TCP_SYN),
        OK,
    );
}

/// A rule without ports allows every protocol, ICMP included; IPv6 likewise.
#[test]
fn rules_without_ports_allow_every_protocol() {
    if !require_root("rules_without_ports_allow_every_protocol") {
        return;
    }
    let n = node("polany");
    let mut dp = n.dataplane();
    let mut st = scene(vec![
        a_deny(),
        policy(serde_json::json!({
            "namespace": "x", "name": "a-from-y",
            "podSelector": {"matchLabels": {"pod": "a"}},
            "policyTypes": ["Ingress"],
            "ingress": [{"peers": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "y"}}}]}],
        })),
    ]);
    st.endpoints[0].ips.push("fd00:244::5".parse().unwrap());
    st.pods[0].ips.push("fd00:244:1::7".parse().unwrap());
    dp.apply(&st).expect("apply");
    for (what, packet) in [
        ("TCP", tcp("10.244.1.7", "10.244.0.5", 1000, 12345, TCP_SYN)),
        (
            "UDP",
            eth().ip("10.244.1.7", "10.244.0.5").udp(1000, 53).build(),
        ),
        (
            "ping",
            eth()
                .ip("10.244.1.7", "10.244.0.5")
                .icmp_echo(false, 9)
                .build(),
        ),
        (
            "IPv6 TCP",
            tcp("fd00:244:1::7", "fd00:244::5", 1000, 80, TCP_SYN),
        ),
    ] {
        assert_eq!(
            verdict(&mut dp, Hook::ToPod, &packet),
            OK,
            "{what} from y/c allowed"
        );
    }
    assert_eq!(
        verdict(
            &mut dp,
            Hook::ToPod,
            &tcp("10.244.0.6", "10.244.0.5", 1000, 80, TCP_SYN)
        ),
        SHOT,
        "x/b is not in namespace y"
    );
    assert_eq!(
        verdict(
            &mut dp,
            Hook::ToPod,
            &tcp("fd00:244:2::9", "fd00:244::5", 1000, 80, TCP_SYN)
        ),
        SHOT,
        "an IPv6 address of no pod"
    );
}

/// An address in more peer sets than configured is refused, naming the pod, before anything
/// is written.
#[test]
fn too_many_sets_per_address_is_refused_with_nothing_written() {
    if !require_root("too_many_sets_per_address_is_refused_with_nothing_written") {
        return;
    }
    let n = node("polcap");
    let mut config = n.config();
    config.capacities.policy_sets_per_address = 1;
    let mut dp = EbpfDataplane::new(config).expect("dataplane");
    let open = scene(Vec::new());
    dp.apply(&open).expect("apply without policies");
    // b is in two sets: "pod=b in x" and "namespace x".
    let two_sets = scene(vec![
        a_from_b(),
        policy(serde_json::json!({
            "namespace": "x", "name": "a-from-x",
            "podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{"peers": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "x"}}}],
                         "ports": [{"port": 81}]}],
        })),
    ]);
    let err = dp.apply(&two_sets).expect_err("refused");
    match &err {
        Error::CapacityExceeded {
            what,
            needed,
            capacity,
        } => {
            assert!(
                what.contains("x/b") && what.contains("policy_sets_per_address"),
                "{what}"
            );
            assert_eq!((*needed, *capacity), (2, 1));
        }
        other => panic!("expected CapacityExceeded, got {other}"),
    }
    // Nothing written: a is not isolated.
    assert_eq!(
        verdict(
            &mut dp,
            Hook::ToPod,
            &tcp("10.244.1.7", "10.244.0.5", 1000, 80, TCP_SYN)
        ),
        OK
    );
    let err = dp
        .apply_changes(&diff(&open, &two_sets))
        .expect_err("refused incrementally too");
    assert!(
        matches!(
            err,
            Error::CapacityExceeded { .. } | Error::FullSyncRequired
        ),
        "{err}"
    );
    assert_eq!(
        verdict(
            &mut dp,
            Hook::ToPod,
            &tcp("10.244.1.7", "10.244.0.5", 1001, 80, TCP_SYN)
        ),
        OK
    );
}

/// SCTP ports are matched like TCP's and UDP's: a rule's SCTP port admits SCTP to that port
/// (an INIT, then the association's other chunks), not SCTP to another port nor TCP to it.
#[test]
fn sctp_ports_are_matched() {
    if !require_root("sctp_ports_are_matched") {
        return;
    }
    let n = node("polsctp");
    let mut dp = n.dataplane();
    let st = scene(vec![policy(serde_json::json!({
        "namespace": "x", "name": "a-sctp",
        "podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"ports": [{"protocol": "SCTP", "port": 9}, {"protocol": "TCP", "port": 80}]}],
    }))]);
    let report = dp.apply(&st).expect("apply");
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    let sctp = |sport: u16, dport: u16, kind: u8| {
        common::sctp::frame(
            "10.244.1.7",
            "10.244.0.5",
            sport,
            dport,
            0,
            &common::sctp::chunk(kind, 1, &[]),
            false,
        )
    };
    for (what, input, want) in [
        (
            "SCTP INIT to the allowed port",
            sctp(1000, 9, common::sctp::INIT),
            OK,
        ),
        (
            "... and the association's DATA",
            sctp(1000, 9, common::sctp::DATA),
            OK,
        ),
        (
            "SCTP INIT to another port",
            sctp(1001, 10, common::sctp::INIT),
            SHOT,
        ),
        (
            "TCP to the SCTP rule's port",
            tcp("10.244.1.7", "10.244.0.5", 1000, 9, TCP_SYN),
            SHOT,
        ),
        (
            "TCP to the TCP rule's port",
            tcp("10.244.1.7", "10.244.0.5", 1000, 80, TCP_SYN),
            OK,
        ),
    ] {
        assert_eq!(verdict(&mut dp, Hook::ToPod, &input), want, "{what}");
    }
}

/// A new process adopts the pinned policy maps: it numbers everything afresh, writes the new
/// entries next to the old ones and removes those; verdicts and established connections stay.
#[test]
fn a_new_process_takes_over_the_policy_maps() {
    if !require_root("a_new_process_takes_over_the_policy_maps") {
        return;
    }
    let n = node("polrestart");
    let mut config = n.config();
    config.keep_attachments_on_drop = true;
    let state = scene(vec![a_deny(), a_from_b(), b_out()]);
    let mut dp = EbpfDataplane::new(config.clone()).expect("dataplane");
    dp.apply(&state).expect("apply");
    let (b, a) = ("10.244.0.6", "10.244.0.5");
    assert_eq!(
        verdict(&mut dp, Hook::ToPod, &tcp(b, a, 44000, 80, TCP_SYN)),
        OK
    );
    drop(dp);

    let mut dp = EbpfDataplane::new(config).expect("adopt");
    // Before its first apply the earlier process's entries still decide.
    assert_eq!(
        verdict(
            &mut dp,
            Hook::ToPod,
            &tcp("10.244.1.7", a, 44001, 80, TCP_SYN)
        ),
        SHOT
    );
    let report = dp.apply(&state).expect("apply after the restart");
    assert!(report.objects_written > 0, "renumbered: {report:?}");
    assert_eq!(
        dp.apply(&state).expect("again").objects_written,
        0,
        "then stable"
    );
    assert_eq!(
        verdict(&mut dp, Hook::ToPod, &tcp(b, a, 44000, 80, TCP_ACK)),
        OK,
        "the connection opened before the restart goes on"
    );
    assert_eq!(
        verdict(&mut dp, Hook::ToPod, &tcp(b, a, 44002, 80, TCP_SYN)),
        OK
    );
    assert_eq!(
        verdict(
            &mut dp,
            Hook::ToPod,
            &tcp("10.244.1.7", a, 44003, 80, TCP_SYN)
        ),
        SHOT
    );
    assert_eq!(
        verdict(
            &mut dp,
            Hook::FromPod,
            &tcp(b, "10.244.1.7", 44004, 81, TCP_SYN)
        ),
        OK,
        "named port after the restart"
    );
    dp.reset().expect("reset");
}

/// A client this node masqueraded on its way to a local pod (a NodePort with
/// `externalTrafficPolicy: Cluster` from outside) is checked as itself, not as the node
/// address it now carries: its reverse conntrack entry names it.
#[test]
fn masqueraded_clients_are_checked_as_themselves() {
    if !require_root("masqueraded_clients_are_checked_as_themselves") {
        return;
    }
    let n = node("polsnat");
    let mut dp = n.dataplane();
    let mut state = scene(vec![a_deny(), a_from_b()]);
    let mut np = svc("np-a", "10.96.0.12", "10.244.0.5");
    np.ports[0].node_port = Some(30080);
    state.services.push(np);
    dp.apply(&state).expect("apply");
    let a = "10.244.0.5";
    let to_pod = |dp: &mut EbpfDataplane, sport: u16| {
        let syn = tcp("192.0.2.7", "172.18.0.2", sport, 30080, TCP_SYN);
        let run = dp.run_packet(Hook::FromUplink, &syn, 1).expect("test run");
        assert_eq!(run.verdict, REDIRECT, "to a's veth");
        assert_eq!(
            &run.output[26..34],
            &[172, 18, 0, 2, 10, 244, 0, 5],
            "masqueraded to the node, DNAT to a"
        );
        run.output[..syn.len()].to_vec()
    };
    let translated = to_pod(&mut dp, 45000);
    assert_eq!(
        verdict(&mut dp, Hook::ToPod, &translated),
        SHOT,
        "192.0.2.7 is not allowed into a, whatever address it carries now"
    );
    // The node itself (no reverse entry names another client) is still allowed.
    assert_eq!(
        verdict(
            &mut dp,
            Hook::ToPod,
            &tcp("172.18.0.2", a, 45001, 80, TCP_SYN)
        ),
        OK
    );
    // Allowing the client's block lets it in.
    let allow_ext = policy(serde_json::json!({
        "namespace": "x", "name": "a-from-outside",
        "podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"peers": [{"ipBlock": {"cidr": "192.0.2.0/24"}}], "ports": [{"port": 80}]}],
    }));
    let mut allowed = state.clone();
    allowed.policies.push(allow_ext);
    dp.apply_changes(&diff(&state, &allowed))
        .expect("allow outside");
    let translated = to_pod(&mut dp, 45002);
    assert_eq!(verdict(&mut dp, Hook::ToPod, &translated), OK);
}

/// `maintain()` expires policy's conntrack: once a connection's entries are gone, its next
/// packet is checked as new.
#[test]
fn maintain_expires_policy_conntrack() {
    if !require_root("maintain_expires_policy_conntrack") {
        return;
    }
    let n = node("polgc");
    let mut dp = n.dataplane();
    let state = scene(vec![a_deny(), a_from_b()]);
    dp.apply(&state).expect("apply");
    let (b, a) = ("10.244.0.6", "10.244.0.5");
    assert_eq!(
        verdict(&mut dp, Hook::ToPod, &tcp(b, a, 46000, 80, TCP_SYN)),
        OK
    );
    let now = dataplane_ebpf::monotonic_now();
    let kept = dp.maintain(now).expect("maintain");
    assert_eq!(kept.other["policy_flows_expired"], 0, "fresh entries stay");
    // Now a accepts nobody: the connection lives on its entries only.
    let closed = scene(vec![a_deny()]);
    dp.apply_changes(&diff(&state, &closed))
        .expect("allow removed");
    assert_eq!(
        verdict(&mut dp, Hook::ToPod, &tcp(b, a, 46000, 80, TCP_ACK)),
        OK
    );
    let later = now + std::time::Duration::from_hours(7 * 24);
    let gc = dp.maintain(later).expect("maintain");
    assert!(gc.other["policy_flows_expired"] >= 2, "{gc:?}");
    assert_eq!(
        verdict(&mut dp, Hook::ToPod, &tcp(b, a, 46000, 80, TCP_ACK)),
        SHOT,
        "no entry left: checked as new, denied"
    );
}

/// `dp_to_pod` is attached on the TC egress of every endpoint's veth, next to `dp_from_pod`
/// on its ingress, as a TCX link or a clsact filter, and goes with the endpoint.
#[test]
fn dp_to_pod_follows_the_endpoints() {
    if !require_root("dp_to_pod_follows_the_endpoints") {
        return;
    }
    let n = node("polattach");
    let state = scene(vec![a_deny()]);
    let mut without_a = state.clone();
    without_a.endpoints.remove(0);
    let mut dp = n.dataplane();
    dp.apply(&state).expect("apply");
    for ifname in ["lxc0", "lxc1"] {
        assert_eq!(
            common::tcx_programs(&n, ifname, true),
            ["dp_to_pod"],
            "{ifname} egress"
        );
        assert_eq!(
            common::tcx_programs(&n, ifname, false),
            ["dp_from_pod"],
            "{ifname} ingress"
        );
    }
    dp.apply_changes(&diff(&state, &without_a)).expect("a goes");
    assert!(
        common::tcx_programs(&n, "lxc0", true).is_empty(),
        "detached with a"
    );
    assert_eq!(common::tcx_programs(&n, "lxc1", true), ["dp_to_pod"]);
    dp.reset().expect("reset");
    assert!(common::tcx_programs(&n, "lxc1", true).is_empty());

    let mut config = n.config();
    config.attach_mode = AttachMode::Clsact;
    let mut dp = EbpfDataplane::new(config).expect("clsact");
    dp.apply(&state).expect("apply");
    assert!(
        common::tcx_programs(&n, "lxc0", true).is_empty(),
        "no TCX link"
    );
    assert_eq!(common::clsact_filters(&n, "lxc0", true, "dp_to_pod"), 1);
    assert_eq!(common::clsact_filters(&n, "lxc0", false, "dp_from_pod"), 1);
    dp.reset().expect("reset");
    assert_eq!(common::clsact_filters(&n, "lxc0", true, "dp_to_pod"), 0);
}

/// With policies in the state, a pod's packet from an address that is not its own is
/// dropped (`spoofed_dropped`): forging the node's address would pass as the node. IPv6
/// link-local sources are exempt; without policies nothing changes.
#[test]
fn forged_sources_are_dropped_with_policies() {
    if !require_root("forged_sources_are_dropped_with_policies") {
        return;
    }
    let n = node("polspoof");
    let mut dp = n.dataplane();
    let open = scene(Vec::new());
    dp.apply(&open).expect("apply without policies");
    let a = "10.244.0.5";
    let forged_node = tcp("172.18.0.2", a, 47000, 80, TCP_SYN);
    assert_eq!(
        verdict(&mut dp, Hook::FromPod, &forged_node),
        OK,
        "no policy: judged as before"
    );
    let state = scene(vec![a_deny(), a_from_b()]);
    dp.apply_changes(&diff(&open, &state)).expect("policies");
    let before = stat(&dp, "spoofed_dropped");
    for (what, packet) in [
        ("the node's address", forged_node.clone()),
        (
            "an outside address",
            tcp("198.51.100.9", a, 47001, 80, TCP_SYN),
        ),
        (
            "the node's IPv6 address",
            tcp("fd00:18::2", "fd00:244::5", 47002, 80, TCP_SYN),
        ),
    ] {
        assert_eq!(verdict(&mut dp, Hook::FromPod, &packet), SHOT, "{what}");
    }
    assert_eq!(stat(&dp, "spoofed_dropped") - before, 3);
    assert_eq!(
        verdict(
            &mut dp,
            Hook::FromPod,
            &tcp("10.244.0.6", a, 47003, 80, TCP_SYN)
        ),
        OK,
        "b from its own address, on its own veth"
    );
    assert_eq!(
        verdict(
            &mut dp,
            Hook::FromPod,
            &tcp("fe80::1", "fe80::2", 47004, 80, TCP_SYN)
        ),
        OK,
        "IPv6 link-local is exempt"
    );
}

/// `packet` (Ethernet + IPv6 + upper layer) with an IPv6 extension header of type `kind`
/// (8 bytes) inserted after the fixed header.
fn with_ipv6_ext(packet: &[u8], kind: u8, fragment_offset: u16) -> Vec<u8> {
    let (l3, rest) = packet.split_at(14 + 40);
    let mut out = l3.to_vec();
    let upper = out[14 + 6];
    out[14 + 6] = kind;
    let len = u16::from_be_bytes([out[14 + 4], out[14 + 5]]) + 8;
    out[14 + 4..14 + 6].copy_from_slice(&len.to_be_bytes());
    let ext = if kind == 44 {
        let off = (fragment_offset << 3).to_be_bytes();
        [upper, 0, off[0], off[1], 0, 0, 0x12, 0x34]
    } else {
        // Hop-by-hop or destination options: a PadN option fills the 8 bytes.
        [upper, 0, 1, 4, 0, 0, 0, 0]
    };
    out.extend_from_slice(&ext);
    out.extend_from_slice(rest);
    out
}

/// `packet` (Ethernet + IPv4) as a non-first fragment.
fn ipv4_later_fragment(packet: &[u8]) -> Vec<u8> {
    let mut out = packet.to_vec();
    out[14 + 6..14 + 8].copy_from_slice(&0x0010u16.to_be_bytes());
    out
}

/// Packets behind IPv6 extension headers are judged by their real protocol and ports, and
/// fragments without ports never ride on a conntrack shortcut: a pod that once sent a
/// fragment-headered packet to b must not get every fragment-headered packet from b past
/// its ingress policy (the shortcut used to be keyed by protocol 44 and ports 0).
#[test]
#[allow(clippy::too_many_lines)] // one scene, read top to bottom
fn fragments_and_extension_headers_are_judged_by_their_ports() {
    if !require_root("fragments_and_extension_headers_are_judged_by_their_ports") {
        return;
    }
    let n = node("polfrag");
    let mut dp = n.dataplane();
    let mut st = scene(vec![
        a_deny(),
        a_from_b(),
        policy(serde_json::json!({
            "namespace": "x", "name": "a-from-y",
            "podSelector": {"matchLabels": {"pod": "a"}},
            "policyTypes": ["Ingress"],
            "ingress": [{"peers": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "y"}}}]}],
        })),
    ]);
    st.endpoints[0].ips.push("fd00:244::5".parse().unwrap());
    st.endpoints[1].ips.push("fd00:244::6".parse().unwrap());
    dp.apply(&st).expect("apply");
    let (a6, b6) = ("fd00:244::5", "fd00:244::6");

    // a (not isolated for egress) sends b an atomic fragment.
    assert_eq!(
        verdict(
            &mut dp,
            Hook::FromPod,
            &with_ipv6_ext(&tcp(a6, b6, 9999, 50000, TCP_SYN), 44, 0)
        ),
        OK,
        "a's egress is open"
    );
    for (what, packet, want) in [
        (
            "b -> a:81 as an atomic fragment (port 81 denied)",
            with_ipv6_ext(&tcp(b6, a6, 50000, 81, TCP_SYN), 44, 0),
            SHOT,
        ),
        (
            "b -> a:81 ACK as an atomic fragment (no shortcut for it)",
            with_ipv6_ext(&tcp(b6, a6, 50000, 81, TCP_ACK), 44, 0),
            SHOT,
        ),
        (
            "b -> a:81 UDP behind hop-by-hop options",
            with_ipv6_ext(&eth().ip(b6, a6).udp(50000, 81).build(), 0, 0),
            SHOT,
        ),
        (
            "b -> a:80 as an atomic fragment (allowed port)",
            with_ipv6_ext(&tcp(b6, a6, 50001, 80, TCP_SYN), 44, 0),
            OK,
        ),
        (
            "b -> a:80 behind destination options",
            with_ipv6_ext(&tcp(b6, a6, 50002, 80, TCP_SYN), 60, 0),
            OK,
        ),
        (
            "b -> a: a later IPv6 fragment (a-from-b has ports)",
            with_ipv6_ext(&tcp(b6, a6, 50001, 80, TCP_ACK), 44, 185),
            SHOT,
        ),
        (
            "b -> a: a later IPv4 fragment (a-from-b has ports)",
            ipv4_later_fragment(&eth().ip("10.244.0.6", "10.244.0.5").udp(1, 2).build()),
            SHOT,
        ),
        (
            "c -> a: a later IPv4 fragment (a-from-y has no ports)",
            ipv4_later_fragment(&eth().ip("10.244.1.7", "10.244.0.5").udp(1, 2).build()),
            OK,
        ),
    ] {
        assert_eq!(verdict(&mut dp, Hook::ToPod, &packet), want, "{what}");
    }
    // The allowed connection's replies and later packets find their entries.
    assert_eq!(
        verdict(
            &mut dp,
            Hook::ToPod,
            &with_ipv6_ext(&tcp(b6, a6, 50001, 80, TCP_ACK), 44, 0)
        ),
        OK,
        "b -> a:80 ACK of the allowed connection"
    );
}

/// A pod's egress packet behind IPv6 extension headers is not translated, so it is judged
/// against its own destination (a service address here); its approval must not be taken by
/// the plain packets of the same tuple, which are translated and must be judged against the
/// backend: b may send to the service range on UDP 80 but not to a, the service's backend.
#[test]
fn an_extension_header_packet_approves_no_translated_connection() {
    if !require_root("an_extension_header_packet_approves_no_translated_connection") {
        return;
    }
    let n = node("polextsvc");
    let mut dp = n.dataplane();
    let mut st = scene(vec![policy(serde_json::json!({
        "namespace": "x", "name": "b-to-services",
        "podSelector": {"matchLabels": {"pod": "b"}},
        "policyTypes": ["Egress"],
        "egress": [{"peers": [{"ipBlock": {"cidr": "fd00:96::/108"}}],
                    "ports": [{"protocol": "UDP", "port": 80}]}],
    }))]);
    st.endpoints[0].ips.push("fd00:244::5".parse().unwrap());
    st.endpoints[1].ips.push("fd00:244::6".parse().unwrap());
    let mut to_a6 = Service::new(ObjectName::new("x", "to-a6"));
    to_a6.cluster_ips = vec!["fd00:96::10".parse().unwrap()];
    to_a6.ports = vec![ServicePort::new(Protocol::Udp, 80, 80)];
    to_a6.backends = vec![Backend::new("fd00:244::5".parse().unwrap())];
    st.services.push(to_a6);
    dp.apply(&st).expect("apply");
    let udp = |sport| {
        eth()
            .ip("fd00:244::6", "fd00:96::10")
            .udp(sport, 80)
            .build()
    };
    assert_eq!(
        verdict(&mut dp, Hook::FromPod, &with_ipv6_ext(&udp(5353), 60, 0)),
        OK,
        "behind destination options: untranslated, to the service range, allowed"
    );
    assert_eq!(
        verdict(&mut dp, Hook::FromPod, &udp(5353)),
        SHOT,
        "the same tuple without the header goes to a, which b's egress does not allow"
    );
    assert_eq!(
        verdict(&mut dp, Hook::FromPod, &udp(5354)),
        SHOT,
        "another port alike"
    );
}

/// A packet `dp_to_pod` cannot parse (a truncated TCP header) is dropped, not passed to a pod
/// that policy may isolate.
#[test]
fn unparsable_packets_to_pods_are_dropped() {
    if !require_root("unparsable_packets_to_pods_are_dropped") {
        return;
    }
    let n = node("poltrunc");
    let mut dp = n.dataplane();
    dp.apply(&scene(vec![a_deny()])).expect("apply");
    let mut packet = tcp("10.244.1.7", "10.244.0.5", 1000, 80, TCP_SYN);
    packet.truncate(14 + 20 + 10);
    packet[14 + 2..14 + 4].copy_from_slice(&30u16.to_be_bytes());
    assert_eq!(verdict(&mut dp, Hook::ToPod, &packet), SHOT);
}

/// ipBlocks of one family never match peers of the other: b's egress allows 10.0.0.0/8 and
/// `::/0`, so 8.8.8.8 (whose mapped form `::ffff:8.8.8.8` lies in `::/0`) is denied.
#[test]
fn ip_blocks_keep_their_family() {
    if !require_root("ip_blocks_keep_their_family") {
        return;
    }
    let n = node("polfam");
    let mut dp = n.dataplane();
    let mut st = scene(vec![policy(serde_json::json!({
        "namespace": "x", "name": "b-blocks",
        "podSelector": {"matchLabels": {"pod": "b"}},
        "policyTypes": ["Egress"],
        "egress": [{"peers": [{"ipBlock": {"cidr": "10.0.0.0/8"}}, {"ipBlock": {"cidr": "::/0"}}]}],
    }))]);
    st.endpoints[1].ips.push("fd00:244::6".parse().unwrap());
    dp.apply(&st).expect("apply");
    for (what, packet, want) in [
        (
            "b -> 10.1.2.3 (10.0.0.0/8)",
            tcp("10.244.0.6", "10.1.2.3", 1000, 80, TCP_SYN),
            OK,
        ),
        (
            "b -> 2001:db8::1 (::/0)",
            tcp("fd00:244::6", "2001:db8::1", 1000, 80, TCP_SYN),
            OK,
        ),
        (
            "b -> 8.8.8.8 (no IPv4 block covers it)",
            tcp("10.244.0.6", "8.8.8.8", 1000, 80, TCP_SYN),
            SHOT,
        ),
    ] {
        assert_eq!(verdict(&mut dp, Hook::FromPod, &packet), want, "{what}");
    }
}

/// A pod's veth deleted and recreated under the same name (a pod restarted in place) gets
/// its programs and its `dp_local` entry again on the next sync, even one that changes only a
/// service: the old attachments died with the old device.
#[test]
fn a_recreated_veth_gets_its_programs_again() {
    if !require_root("a_recreated_veth_gets_its_programs_again") {
        return;
    }
    let n = node("polrecreate");
    let mut dp = n.dataplane();
    let state = scene(vec![a_deny(), a_from_b()]);
    dp.apply(&state).expect("apply");
    for args in [
        vec!["-n", &n.name, "link", "del", "lxc0"],
        vec![
            "-n", &n.name, "link", "add", "lxc0", "type", "veth", "peer", "name", "lxc0p",
        ],
        vec!["-n", &n.name, "link", "set", "lxc0", "up"],
    ] {
        let out = std::process::Command::new("ip")
            .args(&args)
            .output()
            .expect("ip");
        assert!(out.status.success(), "ip {args:?}");
    }
    assert!(common::tcx_programs(&n, "lxc0", true).is_empty());
    let mut next = state.clone();
    next.services
        .push(svc("to-a-2", "10.96.0.12", "10.244.0.5"));
    dp.apply_changes(&diff(&state, &next))
        .expect("a service change");
    assert_eq!(common::tcx_programs(&n, "lxc0", true), ["dp_to_pod"]);
    assert_eq!(common::tcx_programs(&n, "lxc0", false), ["dp_from_pod"]);
    let spoofed = stat(&dp, "spoofed_dropped");
    assert_ne!(
        verdict(
            &mut dp,
            Hook::FromPod,
            &tcp("10.244.0.5", "10.96.0.11", 1000, 80, TCP_SYN)
        ),
        SHOT,
        "a on its new veth is itself (dp_local follows the new ifindex)"
    );
    assert_eq!(stat(&dp, "spoofed_dropped"), spoofed);
    assert_eq!(
        verdict(
            &mut dp,
            Hook::FromPod,
            &tcp("10.244.0.6", "10.96.0.12", 1001, 80, TCP_SYN)
        ),
        REDIRECT,
        "b -> the new service -> a, to a's new veth"
    );
}

/// A pod's veth deleted while the pod is still in the state (a terminating pod) does not stop
/// the syncs: its attachment is forgotten, the sync goes on, and when the veth comes back
/// under the same name the next sync attaches it again.
#[test]
fn a_deleted_veth_does_not_stop_the_syncs() {
    if !require_root("a_deleted_veth_does_not_stop_the_syncs") {
        return;
    }
    let n = node("poldeleted");
    let mut dp = n.dataplane();
    let state = scene(vec![a_deny(), a_from_b()]);
    dp.apply(&state).expect("apply");
    let ip = |args: &[&str]| {
        let out = std::process::Command::new("ip")
            .args(args)
            .output()
            .expect("ip");
        assert!(out.status.success(), "ip {args:?}");
    };
    ip(&["-n", &n.name, "link", "del", "lxc0"]);
    let mut next = state.clone();
    next.services
        .push(svc("to-a-2", "10.96.0.12", "10.244.0.5"));
    dp.apply_changes(&diff(&state, &next))
        .expect("a service change with a pod's veth gone");
    assert_eq!(
        common::tcx_programs(&n, "lxc1", true),
        ["dp_to_pod"],
        "b keeps its programs"
    );
    dp.apply(&next)
        .expect("a full apply with a pod's veth gone");
    ip(&[
        "-n", &n.name, "link", "add", "lxc0", "type", "veth", "peer", "name", "lxc0p",
    ]);
    ip(&["-n", &n.name, "link", "set", "lxc0", "up"]);
    let mut again = next.clone();
    again.services.retain(|s| s.name.name != "to-a-2");
    dp.apply_changes(&diff(&next, &again))
        .expect("the next sync");
    assert_eq!(common::tcx_programs(&n, "lxc0", true), ["dp_to_pod"]);
    assert_eq!(common::tcx_programs(&n, "lxc0", false), ["dp_from_pod"]);
}

/// A packet from a node address is the node (always allowed with its pods) only when the
/// host sent it: one received on the uplink or a veth with that source is forged (our
/// redirects skip the kernel's martian check) and is judged by the tables, which deny it.
#[test]
fn only_the_host_is_the_node() {
    if !require_root("only_the_host_is_the_node") {
        return;
    }
    let n = node("polnode");
    let mut dp = n.dataplane();
    dp.apply(&scene(vec![a_deny(), a_from_b()])).expect("apply");
    let run = |dp: &mut EbpfDataplane, sport: u16, ingress: Option<&str>| {
        dp.run_packet_on(
            Hook::ToPod,
            &tcp("172.18.0.2", "10.244.0.5", sport, 81, TCP_SYN),
            1,
            &RunOn {
                interface: Some("lxc0".to_owned()),
                ingress: ingress.map(str::to_owned),
                mark: None,
            },
        )
        .expect("test run")
        .verdict
    };
    assert_eq!(run(&mut dp, 48000, None), OK, "sent by the host");
    assert_eq!(
        run(&mut dp, 48001, Some("lxc1")),
        SHOT,
        "received on a veth"
    );
    assert_eq!(
        run(&mut dp, 48002, Some("eth0")),
        SHOT,
        "received on the uplink"
    );
}

/// An IPv6 link-local or unspecified source is exempt from anti-spoofing only towards
/// link-local and multicast destinations (the reference model's `is_spoofed`).
#[test]
fn link_local_sources_reach_only_link_local_and_multicast() {
    if !require_root("link_local_sources_reach_only_link_local_and_multicast") {
        return;
    }
    let n = node("polll");
    let mut dp = n.dataplane();
    let mut st = scene(vec![a_deny()]);
    st.endpoints[1].ips.push("fd00:244::6".parse().unwrap());
    dp.apply(&st).expect("apply");
    let from_b = |dp: &mut EbpfDataplane, packet: Vec<u8>| {
        dp.run_packet_on(
            Hook::FromPod,
            &packet,
            1,
            &RunOn {
                interface: Some("lxc1".to_owned()),
                ingress: None,
                mark: None,
            },
        )
        .expect("test run")
        .verdict
    };
    for (what, packet, want) in [
        (
            "fe80::6 -> fe80::1",
            tcp("fe80::6", "fe80::1", 1000, 80, TCP_SYN),
            OK,
        ),
        (
            "fe80::6 -> ff02::1",
            eth().ip("fe80::6", "ff02::1").udp(1000, 80).build(),
            OK,
        ),
        (
            ":: -> ff02::1:ff00:6",
            eth().ip("::", "ff02::1:ff00:6").udp(1000, 80).build(),
            OK,
        ),
        (
            "fe80::6 -> fd00:244::5",
            tcp("fe80::6", "fd00:244::5", 1000, 80, TCP_SYN),
            SHOT,
        ),
        (
            ":: -> 2001:db8::1",
            eth().ip("::", "2001:db8::1").udp(1000, 80).build(),
            SHOT,
        ),
    ] {
        assert_eq!(from_b(&mut dp, packet), want, "{what}");
    }
}

/// The RST that answers a pod's SYN to a service without backends reaches the pod even when
/// it is isolated for ingress: it is the reply of the pod's own attempt, not a connection
/// from the service address.
#[test]
fn rejects_reach_ingress_isolated_pods() {
    if !require_root("rejects_reach_ingress_isolated_pods") {
        return;
    }
    let n = node("polrst");
    let mut dp = n.dataplane();
    let mut st = scene(vec![a_deny()]);
    let mut empty = svc("empty", "10.96.0.13", "10.244.0.6");
    empty.backends.clear();
    st.services.push(empty);
    dp.apply(&st).expect("apply");
    let run = dp
        .run_packet(
            Hook::FromPod,
            &tcp("10.244.0.5", "10.96.0.13", 45000, 80, TCP_SYN),
            1,
        )
        .expect("test run");
    assert_eq!(run.verdict, REDIRECT, "answered with a RST");
    assert_eq!(run.output[14 + 20 + 13] & 0x04, 0x04, "a RST");
    assert_eq!(
        verdict(&mut dp, Hook::ToPod, &run.output),
        OK,
        "the RST reaches a"
    );
}

/// A pod forging another local pod's address on its own veth is dropped; with policies a
/// state whose local addresses do not all fit in `dp_local` (which anti-spoofing relies on)
/// is refused before anything is written.
#[test]
fn a_pod_cannot_borrow_another_pods_address() {
    if !require_root("a_pod_cannot_borrow_another_pods_address") {
        return;
    }
    let n = node("polborrow");
    let mut dp = n.dataplane();
    dp.apply(&scene(vec![a_deny(), a_from_b()])).expect("apply");
    let on = |ifname: &str| RunOn {
        interface: Some(ifname.to_owned()),
        ingress: None,
        mark: None,
    };
    let forged = tcp("10.244.0.5", "10.244.0.6", 1000, 80, TCP_SYN);
    let before = stat(&dp, "spoofed_dropped");
    assert_eq!(
        dp.run_packet_on(Hook::FromPod, &forged, 1, &on("lxc1"))
            .expect("test run")
            .verdict,
        SHOT,
        "a's address on b's veth"
    );
    assert_eq!(stat(&dp, "spoofed_dropped") - before, 1);
    assert_ne!(
        dp.run_packet_on(Hook::FromPod, &forged, 1, &on("lxc0"))
            .expect("test run")
            .verdict,
        SHOT,
        "a's address on a's veth"
    );

    // A node of its own: pinned maps keep the size they were created with.
    let n = node("polborrowcap");
    let mut config = n.config();
    config.capacities.local = 1;
    let mut dp = EbpfDataplane::new(config).expect("dataplane");
    dp.apply(&scene(Vec::new()))
        .expect("without policies the rest is left to the FIB");
    match dp.apply(&scene(vec![a_deny()])) {
        Err(Error::CapacityExceeded {
            needed, capacity, ..
        }) => {
            assert_eq!((needed, capacity), (2, 1));
        }
        other => panic!("expected CapacityExceeded, got {other:?}"),
    }
}
