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

/// A one-node IPv4 lab with two pods, pod 0 behind a ClusterIP (10.96.0.50:80 → its
/// server port), and an nftables backend on the node with that state applied.
struct WebLab {
    lab: Lab,
    state: DesiredState,
    dp: NftablesDataplane,
    /// Pod 0's server.
    direct: std::net::SocketAddr,
    /// The ClusterIP.
    vip: std::net::SocketAddr,
}

impl WebLab {
    fn new() -> Self {
        let lab = Lab::new(LabSpec {
            nodes: 1,
            pods_per_node: 2,
            external_clients: 0,
            ipv6: false,
        })
        .expect("lab");
        let server = lab.pod(0).address(dataplane_testkit::Family::V4).unwrap();
        let vip: std::net::SocketAddr = "10.96.0.50:80".parse().unwrap();
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
        Self {
            direct: std::net::SocketAddr::new(server, SERVER_PORT),
            vip,
            lab,
            state,
            dp,
        }
    }

    /// A probe from pod 1.
    fn probe(&self, to: std::net::SocketAddr, protocol: Protocol) -> ProbeOutcome {
        probe(&self.lab.pod(1).netns, to, protocol, Duration::from_secs(1)).expect("probe")
    }

    /// Whether pod 1 reaches `to` over TCP.
    fn answered(&self, to: std::net::SocketAddr) -> bool {
        matches!(self.probe(to, Protocol::Tcp), ProbeOutcome::Answered { .. })
    }

    /// Goes to `next` with a partial sync.
    fn change(&mut self, next: DesiredState) -> dataplane_core::ApplyReport {
        let report = self.dp.apply_changes(&diff(&self.state, &next)).unwrap();
        self.state = next;
        report
    }

    /// The policy selecting pod `selected` that lets pod `peer` reach its server port.
    fn allow(&self, selected: usize, peer: usize) -> Policy {
        let mut p = policy(
            "default",
            &format!("pod-{peer}-to-pod-{selected}"),
            sel(&[("app", &self.lab.pod(selected).name)]),
            &[PolicyType::Ingress],
        );
        p.ingress = vec![rule(
            vec![pods(sel(&[("app", &self.lab.pod(peer).name)]))],
            vec![tcp(SERVER_PORT)],
        )];
        p
    }
}

/// Default deny, then an allow from pod 1 on the server's port, then pod 1 relabelled out
/// of the allowed peers and back; real TCP traffic checks each step.
#[test]
fn lab_default_deny_then_allow() {
    if !require_root("lab_default_deny_then_allow") {
        return;
    }
    let mut t = WebLab::new();
    let (direct, vip) = (t.direct, t.vip);
    assert!(t.answered(direct));

    // Default deny ingress in `default`: pod 1 → pod 0 is dropped, directly and through
    // the ClusterIP; the node still reaches its pod (kubelet probes).
    let mut next = t.state.clone();
    next.policies = vec![policy(
        "default",
        "deny",
        LabelSelector::default(),
        &[PolicyType::Ingress],
    )];
    t.change(next);
    assert_eq!(t.probe(direct, Protocol::Tcp), ProbeOutcome::Timeout);
    assert_eq!(t.probe(vip, Protocol::Tcp), ProbeOutcome::Timeout);
    let host = probe(
        &t.lab.node(0).netns,
        direct,
        Protocol::Tcp,
        Duration::from_secs(1),
    );
    assert!(
        matches!(host, Ok(ProbeOutcome::Answered { .. })),
        "{host:?}"
    );
    let stats = t.dp.stats().unwrap();
    assert!(stats.packets_dropped > 0, "policy drops are counted");
    assert!(stats.other["policy_dropped"] > 0, "{stats:?}");

    // Allow pod 1 on the server's port (the ClusterIP's target port, checked after DNAT).
    let mut next = t.state.clone();
    next.policies.push(t.allow(0, 1));
    t.change(next);
    assert!(t.answered(direct));
    assert!(t.answered(vip));
    // Only on that port: UDP stays denied.
    assert_eq!(t.probe(direct, Protocol::Udp), ProbeOutcome::Timeout);

    // Pod 1 relabelled out of the peer set (a set element deleted over netlink): denied.
    // (Each probe is a new connection from a new source port.)
    let allowed = t.state.clone();
    let mut next = allowed.clone();
    let k = next
        .endpoints
        .iter()
        .position(|e| e.name.name == t.lab.pod(1).name)
        .unwrap();
    next.endpoints[k].labels = labels(&[("app", "other")]);
    // A connection established while allowed (the decision on established connections:
    // only a connection's first packet is checked).
    let mut session = TcpSession::open(&t.lab.pod(1).netns, direct).expect("allowed");
    // `nft` made unfindable: the change has to go over netlink.
    let nft = std::mem::replace(&mut t.dp.config_mut().nft, "/nonexistent/nft".into());
    let report = t.change(next);
    t.dp.config_mut().nft = nft;
    assert_eq!(report.objects_written, 1, "one set element deleted");
    assert_eq!(t.probe(direct, Protocol::Tcp), ProbeOutcome::Timeout);
    // The established connection keeps flowing after the change that denies new ones.
    let (backend, _) = session
        .request()
        .expect("established connection still flows");
    assert_eq!(backend, t.lab.pod(0).name);
    drop(session);
    // And back in.
    let report = t.change(allowed);
    assert_eq!(report.objects_written, 1, "one set element added");
    assert!(t.answered(direct));
    t.dp.reset().unwrap();
}

/// Pod 1's egress isolated, allowing the node's pod CIDR except pod 0's address (an ipBlock
/// except): pod 1 → pod 0 is denied by the client's egress although nothing isolates the
/// server; without the except the same block lets it through.
#[test]
fn lab_egress_ip_block_except() {
    if !require_root("lab_egress_ip_block_except") {
        return;
    }
    let mut t = WebLab::new();
    let direct = t.direct;
    let mut e = policy(
        "default",
        "egress",
        sel(&[("app", &t.lab.pod(1).name)]),
        &[PolicyType::Egress],
    );
    e.egress = vec![rule(
        vec![block(
            &t.lab.node(0).pod_cidrs[0].to_string(),
            &[&format!("{}/32", direct.ip())],
        )],
        vec![],
    )];
    let mut next = t.state.clone();
    next.policies.push(e);
    // A full sync this time.
    t.dp.apply(&next).unwrap();
    t.state = next;
    assert_eq!(t.probe(direct, Protocol::Tcp), ProbeOutcome::Timeout);
    assert_eq!(t.probe(t.vip, Protocol::Tcp), ProbeOutcome::Timeout);
    let mut next = t.state.clone();
    next.policies[0].egress[0].peers[0]
        .ip_block
        .as_mut()
        .unwrap()
        .except
        .clear();
    t.change(next);
    assert!(t.answered(direct));
    assert!(t.answered(t.vip));
    t.dp.reset().unwrap();
}
