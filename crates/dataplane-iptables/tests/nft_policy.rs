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

/// Default deny ingress in namespace `ns`.
fn deny_ingress(ns: &str) -> Policy {
    policy(ns, "deny", LabelSelector::default(), &[PolicyType::Ingress])
}

#[test]
fn no_policy_no_layer() {
    assert_eq!(policy_text(&cluster()), "");
}

#[test]
fn default_deny_ingress() {
    let p = deny_ingress("x");
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
    let mut after = rs.policy;
    let patch = compile_patch(&mut after, new, &changes, 4096).unwrap();
    let members_only = patch.members_only();
    let mut text = String::new();
    write_patch(&after, &patch, "dataplane", &mut text).unwrap();
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

/// A policy added: the layer (with the anti-spoofing pairs of every local endpoint), sets
/// and chains appear; removed: the chains, sets and the layer go, hooks included.
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
    assert!(after.base.is_empty() && after.spoof.is_empty());
    assert_eq!(after, fresh(&old));
    assert!(
        text.contains("delete chain inet dataplane pol-forward\n"),
        "{text}"
    );
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

/// A seeded generator of changes over the fixture (xorshift: deterministic, no clock).
struct Changes(u64);

impl Changes {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }

    fn pick<T: Clone>(&mut self, from: &[T]) -> T {
        from[self.below(from.len())].clone()
    }

    fn selector(&mut self, key: &str, values: &[&str]) -> LabelSelector {
        if self.below(4) == 0 {
            LabelSelector::default()
        } else {
            sel(&[(key, self.pick(values))])
        }
    }

    fn peer(&mut self) -> PolicyPeer {
        match self.below(4) {
            0 => pods(self.selector("pod", &["a", "b", "c"])),
            1 => namespaces(self.selector("ns", &["x", "y", "z"])),
            2 => PolicyPeer {
                pod_selector: Some(self.selector("pod", &["a", "b", "c"])),
                namespace_selector: Some(self.selector("ns", &["x", "y", "z"])),
                ip_block: None,
            },
            _ => {
                let (cidr, except) = self.pick(&[
                    ("10.244.0.0/16", &["10.244.1.0/24"][..]),
                    ("10.244.0.0/24", &[][..]),
                    ("0.0.0.0/0", &["10.244.0.0/16", "10.244.0.2/32"][..]),
                    ("fd00:244::/48", &["fd00:244::2/128"][..]),
                    ("10.244.1.5/32", &[][..]),
                ]);
                block(cidr, except)
            }
        }
    }

    fn ports(&mut self) -> Vec<PolicyPort> {
        match self.below(6) {
            0 => Vec::new(),
            1 => vec![tcp(80)],
            2 => vec![ports(Protocol::Udp, 80, Some(81))],
            3 => vec![named(Protocol::Tcp, "serve-80-tcp")],
            4 => vec![named(Protocol::Udp, "serve-81-udp"), tcp(81)],
            _ => vec![ports(Protocol::Sctp, 80, None), tcp(80)],
        }
    }

    fn rules(&mut self) -> Vec<PolicyRule> {
        (0..self.below(3))
            .map(|_| {
                let peers = (0..self.below(3)).map(|_| self.peer()).collect();
                rule(peers, self.ports())
            })
            .collect()
    }

    fn policy(&mut self, name: &str) -> Policy {
        let types = self.pick(&[
            &[PolicyType::Ingress][..],
            &[PolicyType::Egress][..],
            &[PolicyType::Ingress, PolicyType::Egress][..],
        ]);
        let mut p = policy(
            self.pick(&["x", "y"]),
            name,
            self.selector("pod", &["a", "b"]),
            types,
        );
        p.ingress = self.rules();
        p.egress = self.rules();
        p
    }

    /// One random change of `state`.
    fn apply(&mut self, state: &mut DesiredState, step: usize) {
        match self.below(8) {
            0 if !state.endpoints.is_empty() => {
                let k = self.below(state.endpoints.len());
                state.endpoints[k].labels = labels(&[("pod", self.pick(&["a", "b", "c", "d"]))]);
            }
            1 => {
                let k = self.below(state.pods.len());
                state.pods[k].labels = labels(&[("pod", self.pick(&["a", "b", "c", "d"]))]);
            }
            2 => {
                let k = self.below(state.namespaces.len());
                let name = state.namespaces[k].name.clone();
                state.namespaces[k] =
                    Namespace::new(&name).with_label("ns", self.pick(&["x", "y", "z"]));
            }
            3 | 4 => {
                let p = self.policy(&format!("p{step}"));
                state.policies.push(p);
            }
            5 if !state.policies.is_empty() => {
                let k = self.below(state.policies.len());
                state.policies.remove(k);
            }
            6 if !state.policies.is_empty() => {
                let k = self.below(state.policies.len());
                let name = state.policies[k].name.clone();
                let mut p = self.policy(&name.name);
                p.name = name;
                state.policies[k] = p;
            }
            6 | 7 if state.endpoints.len() > 2 && self.below(2) == 0 => {
                let k = self.below(state.endpoints.len());
                state.endpoints.remove(k);
            }
            _ => {
                let ns = self.pick(&["x", "y"]);
                let addr = format!("10.244.0.{}", 20 + step % 200);
                let mut e = endpoint(ns, &format!("e{step}"), &[&addr], self.pick(&["a", "b"]));
                if self.below(2) == 0 {
                    e.named_ports = vec![NamedPort::new("serve-80-tcp", Protocol::Tcp, 8080)];
                }
                state.endpoints.push(e);
            }
        }
    }
}

/// Random sequences of changes: each partial sync's patched policy equals a fresh compile of
/// the new state (the layer created with the first policy, deleted with the last), and its
/// text never deletes the table.
#[test]
fn random_changes_patch_to_a_fresh_compile() {
    let (mut patches, mut members_only) = (0, 0);
    for seed in 1..=20u64 {
        let mut changes = Changes(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut state = cluster();
        for step in 0..40 {
            let mut next = state.clone();
            changes.apply(&mut next, step);
            if dataplane_core::validate(&next).is_err() {
                continue;
            }
            let (text, mut after, only_members) = policy_delta(&state, &next);
            assert!(!text.contains("table"), "seed {seed} step {step}: {text}");
            if !text.is_empty() {
                patches += 1;
                members_only += usize::from(only_members);
            }
            let expected = fresh(&next);
            if expected.base.is_empty() {
                after.base.clear();
            }
            assert_eq!(after, expected, "seed {seed} step {step}:\n{text}");
            state = next;
        }
    }
    // The sequences are not vacuous: most steps change the ruleset, some by elements only.
    assert!(
        patches > 300 && members_only > 20,
        "{patches} {members_only}"
    );
}

// ---------------------------------------------------------------------------------------
// In the kernel (root).

/// A lab of one node with `pods` pods (and IPv6 addresses when `ipv6`).
fn one_node_lab(pods: usize, ipv6: bool) -> Lab {
    Lab::new(LabSpec {
        nodes: 1,
        pods_per_node: pods,
        external_clients: 0,
        ipv6,
    })
    .expect("lab")
}

/// Every construct above loads into the kernel in one transaction (the fixture's ruleset
/// with all the features' policies, and a pod whose name is too long for a chain name), in
/// a namespace of a one-node lab.
#[test]
fn every_policy_feature_loads() {
    if !require_root("every_policy_feature_loads") {
        return;
    }
    let lab = one_node_lab(1, true);
    let mut state = cluster();
    state.node = lab.node_state(0);
    // A pod name of 252 characters: its chain names are cut to nf_tables' 255 and hashed.
    let long = format!(
        "{}.{}.{}.{}",
        "a".repeat(62),
        "b".repeat(62),
        "c".repeat(62),
        "d".repeat(63)
    );
    let mut e = endpoint("x", &long, &["10.244.0.7"], "a");
    e.interface = "veth-long".to_owned();
    state.endpoints.push(e);
    // And the longest names there are: a namespace of 63 characters, a pod of 253.
    let longest = format!(
        "{}.{}.{}.{}",
        "a".repeat(63),
        "b".repeat(63),
        "c".repeat(63),
        "d".repeat(61)
    );
    let mut e = endpoint(&"n".repeat(63), &longest, &["10.244.0.8"], "a");
    e.interface = "veth-longest".to_owned();
    e.namespace_labels = labels(&[("ns", "n")]);
    state.endpoints.push(e);
    let mut deny = policy(&"n".repeat(63), "deny", LabelSelector::default(), &[]);
    deny.policy_types = vec![PolicyType::Ingress, PolicyType::Egress];
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
    state.policies = vec![all, deny];
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
        let lab = one_node_lab(2, false);
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

/// Random sequences of partial syncs (the netlink element path included) leave the kernel
/// with the same table as a full sync of the same state into another table (but for the
/// hairpin elements of removed pods, which stay until the next full sync).
#[test]
fn random_partial_syncs_match_a_full_sync_in_the_kernel() {
    if !require_root("random_partial_syncs_match_a_full_sync_in_the_kernel") {
        return;
    }
    let lab = one_node_lab(1, true);
    let netns = &lab.node(0).netns;
    let (mut partial, mut full) = common::partial_and_fresh(netns);
    let mut compared = 0;
    for seed in [7u64, 11] {
        let mut changes = Changes(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut state = cluster();
        state.node = lab.node_state(0);
        partial.apply(&state).unwrap();
        for step in 0..25 {
            let mut next = state.clone();
            changes.apply(&mut next, step);
            if dataplane_core::validate(&next).is_err() {
                continue;
            }
            let report = partial.apply_changes(&diff(&state, &next)).unwrap();
            assert!(!report.full_sync);
            full.apply(&next).unwrap();
            if !next.policies.is_empty() {
                common::assert_same_tables(
                    netns,
                    "dataplane",
                    "fresh",
                    &format!("seed {seed} step {step}"),
                );
                compared += 1;
            }
            state = next;
        }
    }
    assert!(compared > 20, "{compared}");
    partial.reset().unwrap();
    full.reset().unwrap();
}

/// A policy change that the kernel refuses (the fault-injection hook), by the netlink element
/// path (a relabel) and by an `nft` transaction (a new policy), leaves the table exactly as
/// it was; the next partial sync asks for a full one, which succeeds.
#[test]
fn a_refused_policy_change_changes_nothing() {
    if !require_root("a_refused_policy_change_changes_nothing") {
        return;
    }
    let lab = one_node_lab(1, true);
    let netns = &lab.node(0).netns;
    let mut state = with(vec![allow_from_b()]);
    state.node = lab.node_state(0);
    let mut relabel = state.clone();
    // x/b out of `from-b`'s peers: a set element deleted.
    relabel.endpoints[1].labels = labels(&[("pod", "c")]);
    let mut more = state.clone();
    more.policies.push(policy(
        "y",
        "deny",
        LabelSelector::default(),
        &[PolicyType::Egress],
    ));
    for next in [relabel, more] {
        let mut dp =
            NftablesDataplane::new(NetfilterConfig::nftables(Some(netns.path().to_owned())));
        dp.apply(&state).unwrap();
        let before = common::listing(netns, "dataplane");
        dp.set_fail_transactions(true);
        let err = dp.apply_changes(&diff(&state, &next)).unwrap_err();
        assert!(matches!(err, dataplane_core::Error::Kernel { .. }), "{err}");
        assert!(
            common::listing(netns, "dataplane") == before,
            "the refused change was written"
        );
        dp.set_fail_transactions(false);
        let err = dp.apply_changes(&diff(&state, &next)).unwrap_err();
        assert!(
            matches!(err, dataplane_core::Error::FullSyncRequired),
            "{err}"
        );
        assert_eq!(common::listing(netns, "dataplane"), before);
        dp.apply(&next).unwrap();
        assert_ne!(common::listing(netns, "dataplane"), before);
        dp.reset().unwrap();
    }
}

/// A UDP socket of `netns` bound to `[::]:port` (both families).
fn udp_receiver(netns: &dataplane_testkit::NetNs, port: u16) -> std::net::UdpSocket {
    let socket = netns
        .run(|| std::net::UdpSocket::bind(("::", port)))
        .unwrap()
        .expect("bind receiver");
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    socket
}

/// Sends `payload` from `netns` with source address `from` (any address: the namespace
/// allows non-local binds and the socket is `IP_TRANSPARENT`, as a pod with `CAP_NET_RAW`
/// forges a source with a raw socket) to `to`.
fn send_udp(
    netns: &dataplane_testkit::NetNs,
    from: std::net::IpAddr,
    to: std::net::SocketAddr,
    payload: &[u8],
) {
    netns
        .run(|| {
            let socket = std::net::UdpSocket::bind((from, 0))?;
            // Without it IPv4 routing refuses a source that is not local (ENETUNREACH).
            nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::IpTransparent, &true)
                .map_err(std::io::Error::from)?;
            socket.send_to(payload, to).map(|_| ())
        })
        .unwrap()
        .unwrap_or_else(|e| panic!("send from {from} to {to}: {e}"));
}

/// Anti-spoofing: pod 1 forges the sources that had rights on isolated pod 0 (pod 2's
/// address, which the policy allows on UDP 7001, pod 0's own, which the hairpin rule
/// trusted, and the node's, which the node rule trusted), over IPv4 and IPv6: nothing arrives, and the drops are counted, while pod 1's
/// genuine packet to the port it may use (UDP 7002) and pod 2's genuine one to 7001 arrive.
/// Node-originated traffic from a source that is no `Node::addresses` entry (a secondary
/// address, as docker0's) still reaches the isolated pod (kubelet probes).
#[test]
fn lab_forged_sources_are_dropped() {
    use dataplane_testkit::Family;
    if !require_root("lab_forged_sources_are_dropped") {
        return;
    }
    let lab = one_node_lab(3, true);
    let (target, forger, allowed) = (lab.pod(0), lab.pod(1), lab.pod(2));
    let mut state = lab.desired_state(0);
    let mut p = policy(
        "default",
        "isolate-pod-0",
        sel(&[("app", &target.name)]),
        &[PolicyType::Ingress],
    );
    p.ingress = vec![
        rule(
            vec![pods(sel(&[("app", &allowed.name)]))],
            vec![ports(Protocol::Udp, 7001, None)],
        ),
        rule(
            vec![pods(sel(&[("app", &forger.name)]))],
            vec![ports(Protocol::Udp, 7002, None)],
        ),
    ];
    state.policies = vec![p];
    let mut dp = NftablesDataplane::new(NetfilterConfig::nftables(Some(
        lab.node(0).netns.path().to_owned(),
    )));
    dp.apply(&state).expect("full sync");
    forger
        .netns
        .sysctl(&[
            ("net/ipv4/ip_nonlocal_bind", "1"),
            ("net/ipv6/ip_nonlocal_bind", "1"),
        ])
        .unwrap();
    let forged_port = udp_receiver(&target.netns, 7001);
    let marker_port = udp_receiver(&target.netns, 7002);
    let mut buf = [0u8; 64];
    let mut counted = 0;
    for family in [Family::V4, Family::V6] {
        let to = |port| std::net::SocketAddr::new(target.address(family).unwrap(), port);
        // The node's IPv4 address from a pod interface is a martian the kernel drops
        // before any hook; IPv6 has no such check (the reviewer's case).
        let node = lab.node(0).address(family).unwrap();
        // Pod 2's address, and pod 0's own (the hairpin rule lets a pod reach itself).
        let mut sources = vec![
            allowed.address(family).unwrap(),
            target.address(family).unwrap(),
        ];
        if family == Family::V6 {
            sources.push(node);
        }
        counted += sources.len();
        for from in sources {
            send_udp(&forger.netns, from, to(7001), b"forged");
        }
        // Then a genuine packet on the same path: once it has arrived, a forged one that
        // got through would be waiting on the other socket.
        send_udp(
            &forger.netns,
            forger.address(family).unwrap(),
            to(7002),
            b"marker",
        );
        let (n, from) = marker_port
            .recv_from(&mut buf)
            .expect("genuine packet arrives");
        assert_eq!(&buf[..n], b"marker");
        assert_eq!(from.ip().to_canonical(), forger.address(family).unwrap());
        forged_port.set_nonblocking(true).unwrap();
        let leaked = forged_port.recv_from(&mut buf);
        assert!(
            matches!(&leaked, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "a forged packet arrived: {leaked:?}"
        );
        forged_port.set_nonblocking(false).unwrap();
        // The port is open to pod 2 itself.
        send_udp(
            &allowed.netns,
            allowed.address(family).unwrap(),
            to(7001),
            b"genuine",
        );
        let (n, _) = forged_port.recv_from(&mut buf).expect("pod 2 reaches 7001");
        assert_eq!(&buf[..n], b"genuine");
    }
    let counters = dp.stats().unwrap();
    assert!(
        counters.other.get("spoofed_dropped").copied().unwrap_or(0) >= counted as u64,
        "{counters:?}"
    );
    node_reaches_from_an_unlisted_address(&lab);
    dp.reset().unwrap();
}

/// The node, from an address of its own that `Node::addresses` does not list, reaches pod 0
/// (isolated, its server port allowed to no one), while pod 1 does not.
fn node_reaches_from_an_unlisted_address(lab: &Lab) {
    use dataplane_testkit::Family;
    let (target, forger) = (lab.pod(0), lab.pod(1));
    lab.node(0)
        .netns
        .exec_checked("ip", &["addr", "add", "192.0.2.10/32", "dev", "lo"], None)
        .unwrap();
    let server = std::net::SocketAddr::new(target.address(Family::V4).unwrap(), SERVER_PORT);
    let node_probe = dataplane_testkit::probe_from(
        &lab.node(0).netns,
        Some("192.0.2.10:0".parse().unwrap()),
        server,
        Protocol::Tcp,
        Duration::from_secs(2),
    )
    .unwrap();
    assert!(
        matches!(node_probe, ProbeOutcome::Answered { .. }),
        "{node_probe:?}"
    );
    // While pod 1, which the policy allows on UDP 7002 only, is denied on the server port.
    assert_eq!(
        probe(&forger.netns, server, Protocol::Tcp, Duration::from_secs(1)).unwrap(),
        ProbeOutcome::Timeout
    );
}

/// `ICMPv6` neighbour/router discovery and MLD are accepted only where they can be genuine:
/// in the input hook (a pod and its gateway), with the hop limit RFC 4861 receivers
/// require (255; MLD is sent with 1), never in the forward hook, where a pod could send
/// them to an isolated pod.
#[test]
fn icmpv6_exceptions_only_in_input_with_their_hop_limit() {
    let p = deny_ingress("x");
    let text = policy_text(&with(vec![p]));
    let icmp: Vec<&str> = text.lines().filter(|l| l.contains("icmpv6")).collect();
    assert_eq!(icmp.len(), 2, "{text}");
    for line in icmp {
        assert!(
            line.starts_with("add rule inet dataplane pol-input "),
            "{line}"
        );
        assert!(
            line.contains("ip6 hoplimit 255 accept") || line.contains("ip6 hoplimit 1 accept"),
            "{line}"
        );
    }
    // And no other path leads forwarded packets to them.
    assert!(!text.contains("jump pol-input"), "{text}");
}

/// `NetfilterConfig::max_policy_elements` is the backend's limit: a policy over it is
/// refused with a typed error naming the endpoint, before anything is written (`render`
/// compiles exactly as `apply` does before its transaction).
#[test]
fn policy_element_limit_is_configuration() {
    let mut p = policy("x", "blocks", sel(&[("pod", "a")]), &[PolicyType::Egress]);
    let except: Vec<String> = (0..30).map(|i| format!("10.{i}.0.0/16")).collect();
    let except: Vec<&str> = except.iter().map(String::as_str).collect();
    p.egress = vec![rule(
        vec![block("10.0.0.0/8", &except)],
        vec![tcp(80), tcp(443)],
    )];
    let state = with(vec![p]);
    let mut config = NetfilterConfig::nftables(None);
    assert!(NftablesDataplane::new(config.clone())
        .render(&state)
        .is_ok());
    config.max_policy_elements = 20;
    match NftablesDataplane::new(config).render(&state) {
        Err(dataplane_core::Error::CapacityExceeded { what, capacity, .. }) => {
            assert!(what.contains("x/a egress"), "{what}");
            assert_eq!(capacity, 20);
        }
        other => panic!("{other:?}"),
    }
}
