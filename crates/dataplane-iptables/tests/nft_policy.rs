//! NetworkPolicy in the nftables flavour: the policy part of the rendered transaction for
//! each policy feature (insta golden files), the partial-sync deltas (set elements for pod
//! and label changes, only changed endpoints' chains rewritten), the whole ruleset loaded
//! into a kernel, and real traffic in a one-node lab (needs root).
//!
//! ```text
//!   fixture (pure tests): node-0 172.18.0.10 / fd00:18::10
//!     local endpoints  x/a 10.244.0.2 + fd00:244::2 (pod=a, named port serve-80-tcp = 80)
//!                      x/b 10.244.0.3 (pod=b)    y/a 10.244.0.4 (pod=a)
//!     peer pods        y/b 10.244.1.6 (pod=b, serve-81-udp = 81)   z/c 10.244.1.5 (pod=c)
//!     namespaces       x, y, z with label ns=<name>
//! ```

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use dataplane_core::{
    diff, Dataplane, DesiredState, Endpoint, IpBlock, LabelSelector, NamedPort, Namespace,
    ObjectName, PeerPod, Policy, PolicyPeer, PolicyPort, PolicyRule, PolicyType, PortRef, Protocol,
    Service,
};
use dataplane_iptables::nft::policy::{compile_patch, write_full, write_patch, NftPolicy};
use dataplane_iptables::nft::render::{compile_state, render_full};
use dataplane_iptables::{NetfilterConfig, NftablesDataplane};
use dataplane_testkit::{probe, require_root, Lab, LabSpec, ProbeOutcome, TcpSession, SERVER_PORT};

use common::ip;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn sel(pairs: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: labels(pairs),
        match_expressions: Vec::new(),
    }
}

fn endpoint(ns: &str, name: &str, ips: &[&str], pod: &str) -> Endpoint {
    let mut e = Endpoint::new(
        ObjectName::new(ns, name),
        format!("veth-{ns}-{name}"),
        ips.iter().map(|a| ip(a)),
    );
    e.labels = labels(&[("pod", pod)]);
    e
}

fn peer_pod(ns: &str, name: &str, addr: &str, pod: &str) -> PeerPod {
    let mut p = PeerPod::new(ObjectName::new(ns, name), [ip(addr)]);
    p.labels = labels(&[("pod", pod)]);
    p.node_name = Some("node-1".into());
    p
}

/// The fixture of the module documentation, without policies.
fn cluster() -> DesiredState {
    let mut state = DesiredState::new(common::node());
    let mut xa = endpoint("x", "a", &["10.244.0.2", "fd00:244::2"], "a");
    xa.named_ports = vec![NamedPort::new("serve-80-tcp", Protocol::Tcp, 80)];
    state.endpoints = vec![
        xa,
        endpoint("x", "b", &["10.244.0.3"], "b"),
        endpoint("y", "a", &["10.244.0.4"], "a"),
    ];
    let mut yb = peer_pod("y", "b", "10.244.1.6", "b");
    yb.named_ports = vec![NamedPort::new("serve-81-udp", Protocol::Udp, 81)];
    state.pods = vec![yb, peer_pod("z", "c", "10.244.1.5", "c")];
    state.namespaces = ["x", "y", "z"]
        .into_iter()
        .map(|n| Namespace::new(n).with_label("ns", n))
        .collect();
    state
}

fn policy(ns: &str, name: &str, pod: LabelSelector, types: &[PolicyType]) -> Policy {
    Policy {
        name: ObjectName::new(ns, name),
        pod_selector: pod,
        policy_types: types.to_vec(),
        ingress: Vec::new(),
        egress: Vec::new(),
    }
}

fn ports(protocol: Protocol, port: u16, end_port: Option<u16>) -> PolicyPort {
    PolicyPort {
        protocol,
        port: Some(PortRef::Number(port)),
        end_port,
    }
}

fn tcp(port: u16) -> PolicyPort {
    ports(Protocol::Tcp, port, None)
}

fn named(protocol: Protocol, name: &str) -> PolicyPort {
    PolicyPort {
        protocol,
        port: Some(PortRef::Name(name.to_owned())),
        end_port: None,
    }
}

fn pods(selector: LabelSelector) -> PolicyPeer {
    PolicyPeer {
        pod_selector: Some(selector),
        namespace_selector: None,
        ip_block: None,
    }
}

fn namespaces(selector: LabelSelector) -> PolicyPeer {
    PolicyPeer {
        pod_selector: None,
        namespace_selector: Some(selector),
        ip_block: None,
    }
}

fn block(cidr: &str, except: &[&str]) -> PolicyPeer {
    PolicyPeer {
        pod_selector: None,
        namespace_selector: None,
        ip_block: Some(IpBlock {
            cidr: cidr.parse().unwrap(),
            except: except.iter().map(|e| e.parse().unwrap()).collect(),
        }),
    }
}

fn rule(peers: Vec<PolicyPeer>, ports: Vec<PolicyPort>) -> PolicyRule {
    PolicyRule { peers, ports }
}

/// The policy part of the full-sync transaction of `state` (the services' part is in
/// `nft_render`'s golden files).
fn policy_text(state: &DesiredState) -> String {
    dataplane_core::validate(state).expect("valid fixture");
    let rs = compile_state(state, "dataplane").unwrap();
    let mut out = String::new();
    write_full(&rs.policy, "dataplane", &mut out).unwrap();
    // The same text ends the whole transaction.
    assert!(render_full(&rs).ends_with(&out));
    out
}

fn with(policies: Vec<Policy>) -> DesiredState {
    let mut state = cluster();
    state.policies = policies;
    state
}

#[test]
fn no_policy_no_layer() {
    assert_eq!(policy_text(&cluster()), "");
}

#[test]
fn default_deny_ingress() {
    let p = policy(
        "x",
        "deny",
        LabelSelector::default(),
        &[PolicyType::Ingress],
    );
    insta::assert_snapshot!(policy_text(&with(vec![p])));
}

#[test]
fn default_deny_egress() {
    let p = policy("x", "deny", LabelSelector::default(), &[PolicyType::Egress]);
    let text = policy_text(&with(vec![p]));
    assert!(!text.contains("pol-in-"), "{text}");
    insta::assert_snapshot!(text);
}

#[test]
fn allow_all_ingress_is_one_return() {
    let mut p = policy("x", "all", sel(&[("pod", "a")]), &[PolicyType::Ingress]);
    p.ingress = vec![rule(vec![], vec![])];
    let text = policy_text(&with(vec![p]));
    assert!(
        text.contains("add rule inet dataplane pol-in-x/a return\n"),
        "{text}"
    );
}

#[test]
fn pod_selector_and_namespace_selector_and_both() {
    let mut p = policy("x", "mix", sel(&[("pod", "a")]), &[PolicyType::Ingress]);
    p.ingress = vec![
        rule(vec![pods(sel(&[("pod", "b")]))], vec![tcp(80)]),
        rule(vec![namespaces(sel(&[("ns", "y")]))], vec![tcp(81)]),
        rule(
            vec![PolicyPeer {
                pod_selector: Some(sel(&[("pod", "c")])),
                namespace_selector: Some(sel(&[("ns", "z")])),
                ip_block: None,
            }],
            vec![],
        ),
    ];
    insta::assert_snapshot!(policy_text(&with(vec![p])));
}

#[test]
fn ip_block_with_except_is_disjoint_prefixes() {
    let mut p = policy("x", "blocks", sel(&[("pod", "b")]), &[PolicyType::Egress]);
    p.egress = vec![
        rule(
            vec![block("10.244.0.0/16", &["10.244.1.0/24"])],
            vec![tcp(80)],
        ),
        rule(vec![block("192.168.0.0/16", &[])], vec![]),
    ];
    insta::assert_snapshot!(policy_text(&with(vec![p])));
}

#[test]
fn named_ports_end_ports_udp_and_sctp() {
    let mut p = policy(
        "x",
        "ports",
        sel(&[("pod", "a")]),
        &[PolicyType::Ingress, PolicyType::Egress],
    );
    // Ingress: the named port resolves on x/a itself (80), plus a range and SCTP.
    p.ingress = vec![rule(
        vec![namespaces(LabelSelector::default())],
        vec![
            named(Protocol::Tcp, "serve-80-tcp"),
            ports(Protocol::Tcp, 8000, Some(8099)),
            ports(Protocol::Sctp, 80, None),
        ],
    )];
    // Egress: a named port resolves on each destination (y/b's 81/udp): its own set.
    p.egress = vec![rule(
        vec![],
        vec![
            named(Protocol::Udp, "serve-81-udp"),
            ports(Protocol::Udp, 53, None),
        ],
    )];
    insta::assert_snapshot!(policy_text(&with(vec![p])));
}

/// A thousand policies with the same peer share one set and one rule per endpoint.
#[test]
fn policies_with_one_peer_share_one_set() {
    let policies: Vec<Policy> = (0..1000)
        .map(|i| {
            let mut p = policy(
                "x",
                &format!("p{i}"),
                LabelSelector::default(),
                &[PolicyType::Ingress],
            );
            p.ingress = vec![rule(vec![pods(sel(&[("pod", "b")]))], vec![tcp(80)])];
            p
        })
        .collect();
    let text = policy_text(&with(policies));
    assert_eq!(text.matches("add set inet dataplane pset-v4-").count(), 1);
    // x/a: one rule per family; x/b: one (IPv4 only); plus the drops.
    assert_eq!(text.matches("@pset-v4-").count(), 2, "{text}");
    assert_eq!(text.matches("@pset-v6-").count(), 1, "{text}");
}

/// The partial-sync text from `old` to `new` and the patched policy.
fn policy_delta(old: &DesiredState, new: &DesiredState) -> (String, NftPolicy, bool) {
    let rs = compile_state(old, "dataplane").unwrap();
    let changes = diff(old, new);
    let patch = compile_patch(&rs.policy, new, &changes).unwrap();
    let members_only = patch.members_only();
    let mut text = String::new();
    write_patch(&rs.policy, &patch, "dataplane", &mut text).unwrap();
    let mut after = rs.policy.clone();
    after.apply_patch(patch);
    (text, after, members_only)
}

fn fresh(state: &DesiredState) -> NftPolicy {
    compile_state(state, "dataplane").unwrap().policy
}

fn allow_from_b() -> Policy {
    let mut p = policy("x", "from-b", sel(&[("pod", "a")]), &[PolicyType::Ingress]);
    p.ingress = vec![rule(vec![pods(sel(&[("pod", "b")]))], vec![tcp(80)])];
    p
}

/// A pod relabelled into a peer set: one element added, no chain touched.
#[test]
fn pod_relabel_is_set_elements_only() {
    let mut old = with(vec![allow_from_b()]);
    old.endpoints.push(endpoint("x", "d", &["10.244.0.9"], "d"));
    let mut new = old.clone();
    new.endpoints[3].labels = labels(&[("pod", "b")]);
    let (text, after, members_only) = policy_delta(&old, &new);
    assert!(members_only);
    insta::assert_snapshot!(text);
    assert_eq!(after, fresh(&new));
}

/// A policy added: the layer, sets and chains appear; removed: the chains and sets go (the
/// layer stays until the next full sync, with nothing dispatched).
#[test]
fn policy_added_then_removed() {
    let old = cluster();
    let new = with(vec![allow_from_b()]);
    let (text, after, members_only) = policy_delta(&old, &new);
    assert!(!members_only);
    insta::assert_snapshot!("policy_added", text);
    assert_eq!(after, fresh(&new));

    let (text, after, _) = policy_delta(&new, &old);
    insta::assert_snapshot!("policy_removed", text);
    assert!(after.endpoints.is_empty() && after.set_names.is_empty());
    assert!(!after.base.is_empty());
}

/// A policy edited: only the endpoints it selects get their chains rewritten (flush and
/// refill in one transaction); the others are untouched.
#[test]
fn policy_edit_rewrites_only_its_endpoints_chains() {
    let deny_y = policy(
        "y",
        "deny",
        LabelSelector::default(),
        &[PolicyType::Ingress],
    );
    let old = with(vec![allow_from_b(), deny_y.clone()]);
    let mut edited = allow_from_b();
    edited.ingress[0].ports = vec![tcp(80), tcp(443)];
    let new = with(vec![edited, deny_y]);
    let (text, after, _) = policy_delta(&old, &new);
    assert!(
        text.contains("flush chain inet dataplane pol-in-x/a\n"),
        "{text}"
    );
    assert!(!text.contains("pol-in-y/a"), "{text}");
    assert!(!text.contains("add chain"), "{text}");
    assert_eq!(after, fresh(&new));
}

/// A namespace relabelled: the members of namespace-selected sets change, nothing else.
#[test]
fn namespace_relabel_is_set_elements_only() {
    let mut p = policy("x", "from-y", sel(&[("pod", "a")]), &[PolicyType::Ingress]);
    p.ingress = vec![rule(vec![namespaces(sel(&[("team", "blue")]))], vec![])];
    let old = with(vec![p]);
    let mut new = old.clone();
    new.namespaces[1] = Namespace::new("y").with_label("team", "blue");
    let (text, after, members_only) = policy_delta(&old, &new);
    assert!(members_only, "{text}");
    assert!(
        text.contains("10.244.0.4") && text.contains("10.244.1.6"),
        "{text}"
    );
    assert_eq!(after, fresh(&new));
}

#[test]
fn unchanged_state_renders_an_empty_delta() {
    let state = with(vec![allow_from_b()]);
    assert_eq!(policy_delta(&state, &state).0, "");
}

// ---------------------------------------------------------------------------------------
// In the kernel (root).

/// Every construct above loads into the kernel in one transaction (the fixture's ruleset
/// with all the features' policies), in a namespace of a one-node lab.
#[test]
fn every_policy_feature_loads() {
    if !require_root("every_policy_feature_loads") {
        return;
    }
    let lab = Lab::new(LabSpec {
        nodes: 1,
        pods_per_node: 1,
        external_clients: 0,
        ipv6: true,
    })
    .expect("lab");
    let mut state = cluster();
    state.node = lab.node_state(0);
    let mut all = policy("x", "all", sel(&[("pod", "a")]), &[]);
    all.ingress = vec![
        rule(vec![pods(sel(&[("pod", "b")]))], vec![tcp(80)]),
        rule(
            vec![namespaces(sel(&[("ns", "y")]))],
            vec![tcp(81), tcp(82)],
        ),
        rule(vec![block("10.0.0.0/8", &["10.1.0.0/16"])], vec![]),
        rule(vec![block("fd00::/8", &["fd00:1::/32"])], vec![tcp(80)]),
    ];
    all.egress = vec![rule(
        vec![],
        vec![
            named(Protocol::Udp, "serve-81-udp"),
            ports(Protocol::Sctp, 9000, Some(9100)),
        ],
    )];
    all.policy_types = vec![PolicyType::Ingress, PolicyType::Egress];
    state.policies = vec![all];
    let mut dp = NftablesDataplane::new(NetfilterConfig::nftables(Some(
        lab.node(0).netns.path().to_owned(),
    )));
    dp.apply(&state).expect("full sync with policies");
    // And a partial sync that relabels a pod and edits the policy.
    let mut next = state.clone();
    next.endpoints[1].labels = labels(&[("pod", "a")]);
    next.policies[0].ingress.pop();
    let report = dp
        .apply_changes(&diff(&state, &next))
        .expect("partial sync");
    assert!(!report.full_sync);
    dp.reset().unwrap();
}

/// A one-node lab: two pods, a ClusterIP to pod 0. Default deny, then an allow from pod 1
/// on the server's port, then an egress deny; real TCP traffic checks each step.
#[test]
fn lab_default_deny_then_allow() {
    if !require_root("lab_default_deny_then_allow") {
        return;
    }
    let lab = Lab::new(LabSpec {
        nodes: 1,
        pods_per_node: 2,
        external_clients: 0,
        ipv6: false,
    })
    .expect("lab");
    let server = lab.pod(0).address(dataplane_testkit::Family::V4).unwrap();
    let direct = std::net::SocketAddr::new(server, SERVER_PORT);
    let vip: std::net::SocketAddr = "10.96.0.50:80".parse().unwrap();
    let tcp_probe = |from: &dataplane_testkit::NetNs, to| {
        probe(from, to, Protocol::Tcp, Duration::from_secs(1)).expect("probe")
    };
    let answered = |o: &ProbeOutcome| matches!(o, ProbeOutcome::Answered { .. });
    let mut state = lab.desired_state(0);
    let mut svc = Service::new(ObjectName::new("default", "web"));
    svc.cluster_ips = vec![vip.ip()];
    svc.ports = vec![common::port(Protocol::Tcp, 80, SERVER_PORT, None)];
    svc.backends = vec![common::backend(&server.to_string(), "node-0")];
    state.services.push(svc);
    let mut dp = NftablesDataplane::new(NetfilterConfig::nftables(Some(
        lab.node(0).netns.path().to_owned(),
    )));
    dp.apply(&state).unwrap();
    let client = &lab.pod(1).netns;
    assert!(answered(&tcp_probe(client, direct)));

    // Default deny ingress in `default`: pod 1 → pod 0 is dropped, directly and through
    // the ClusterIP; the node still reaches its pod (kubelet probes).
    let mut deny = state.clone();
    deny.policies = vec![policy(
        "default",
        "deny",
        LabelSelector::default(),
        &[PolicyType::Ingress],
    )];
    dp.apply_changes(&diff(&state, &deny)).unwrap();
    assert_eq!(tcp_probe(client, direct), ProbeOutcome::Timeout);
    assert_eq!(tcp_probe(client, vip), ProbeOutcome::Timeout);
    assert!(answered(&tcp_probe(&lab.node(0).netns, direct)));
    let dropped = dp.stats().unwrap().packets_dropped;
    assert!(dropped > 0, "policy drops are counted");

    // Allow pod 1 on the server's port (the ClusterIP's target port, checked after DNAT).
    let mut allow = deny.clone();
    let mut p = policy(
        "default",
        "from-pod-1",
        sel(&[("app", &lab.pod(0).name)]),
        &[PolicyType::Ingress],
    );
    p.ingress = vec![rule(
        vec![pods(sel(&[("app", &lab.pod(1).name)]))],
        vec![tcp(SERVER_PORT)],
    )];
    allow.policies.push(p);
    dp.apply_changes(&diff(&deny, &allow)).unwrap();
    assert!(answered(&tcp_probe(client, direct)));
    assert!(answered(&tcp_probe(client, vip)));
    // Only on that port: UDP stays denied.
    assert_eq!(
        probe(client, direct, Protocol::Udp, Duration::from_secs(1)).unwrap(),
        ProbeOutcome::Timeout
    );

    // Pod 1 relabelled out of the peer set (a set element deleted over netlink): denied.
    // (The probes use a new source port each: no conntrack entry of an allowed connection
    // carries them.)
    let mut relabelled = allow.clone();
    let k = relabelled
        .endpoints
        .iter()
        .position(|e| e.name.name == lab.pod(1).name)
        .unwrap();
    relabelled.endpoints[k].labels = labels(&[("app", "other")]);
    // A connection established while allowed (the decision on established connections:
    // only a connection's first packet is checked).
    let mut session = TcpSession::open(client, direct).expect("allowed connection");
    // `nft` made unfindable: the change has to go over netlink.
    let nft = std::mem::replace(&mut dp.config_mut().nft, "/nonexistent/nft".into());
    let report = dp.apply_changes(&diff(&allow, &relabelled)).unwrap();
    dp.config_mut().nft = nft;
    assert_eq!(report.objects_written, 1, "one set element deleted");
    assert_eq!(tcp_probe(client, direct), ProbeOutcome::Timeout);
    // The established connection keeps flowing after the change that denies new ones.
    let (backend, _) = session
        .request()
        .expect("established connection still flows");
    assert_eq!(backend, lab.pod(0).name);
    drop(session);
    // And back in.
    let report = dp.apply_changes(&diff(&relabelled, &allow)).unwrap();
    assert_eq!(report.objects_written, 1, "one set element added");
    assert!(answered(&tcp_probe(client, direct)));

    // Egress of pod 1 isolated, allowing the node's pod CIDR except pod 0's address (an
    // ipBlock except): pod 1 → pod 0 is denied by the client's egress although the server's
    // ingress allows it (a full sync this time).
    let mut egress = allow.clone();
    let mut e = policy(
        "default",
        "egress",
        sel(&[("app", &lab.pod(1).name)]),
        &[PolicyType::Egress],
    );
    e.egress = vec![rule(
        vec![block(
            &lab.node(0).pod_cidrs[0].to_string(),
            &[&format!("{server}/32")],
        )],
        vec![],
    )];
    egress.policies.push(e);
    dp.apply(&egress).unwrap();
    assert_eq!(tcp_probe(client, direct), ProbeOutcome::Timeout);
    // Without the except the same block lets it through.
    let mut open = egress.clone();
    open.policies.last_mut().unwrap().egress[0].peers[0]
        .ip_block
        .as_mut()
        .unwrap()
        .except
        .clear();
    dp.apply_changes(&diff(&egress, &open)).unwrap();
    assert!(answered(&tcp_probe(client, direct)));
    dp.reset().unwrap();
}
