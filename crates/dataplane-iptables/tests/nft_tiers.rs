//! Cluster-wide ordered policy and host endpoint policy in the nftables flavour: the
//! rendered tier and host chains (pure), the rulesets loaded into a kernel and replaced by
//! partial syncs, the load time of a 100k-prefix untracked deny set, and host policy
//! against real traffic in a lab (allow, deny, failsafe; needs root).
//!
//! ```text
//!   fixture (pure tests): node-0 172.18.0.10
//!     local endpoints  x/a 10.244.0.2 (pod=a, named port web = tcp 80)   y/a 10.244.0.4
//!     peer pods        y/b 10.244.1.6 (pod=b, named port dns = udp 53)
//!     namespaces       x, y with label ns=<name>
//!   lab test: external-0 ──underlay── node-0 (eth0; servers on tcp 22, 8080, 9090)
//! ```

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use dataplane_core::{
    diff, BaselineAction, BaselinePolicy, BaselineRule, ClusterAction, ClusterPeer, ClusterPolicy,
    ClusterPolicyRule, ClusterPolicySubject, ClusterPort, Dataplane, DesiredState, Endpoint,
    FailsafePorts, HostAction, HostEndpoint, HostPolicy, HostPort, HostRule, LabelSelector,
    NamedPort, Namespace, ObjectName, PeerNode, PeerPod, PolicyType, Protocol,
};
use dataplane_iptables::{NetfilterConfig, NftablesDataplane};
use dataplane_testkit::{probe, require_root, serve, Family, Lab, LabSpec, ProbeOutcome};
use ipnetwork::IpNetwork;

use common::ip;

fn sel(k: &str, v: &str) -> LabelSelector {
    LabelSelector::default().with_label(k, v)
}

fn endpoint(ns: &str, name: &str, addr: &str) -> Endpoint {
    let mut e = Endpoint::new(
        ObjectName::new(ns, name),
        format!("veth-{ns}-{name}"),
        [ip(addr)],
    );
    e.labels = BTreeMap::from([("pod".to_owned(), name.to_owned())]);
    e
}

/// The fixture of the module documentation.
fn cluster() -> DesiredState {
    let mut state = DesiredState::new(common::node());
    let mut xa = endpoint("x", "a", "10.244.0.2");
    xa.named_ports = vec![NamedPort::new("web", Protocol::Tcp, 80)];
    state.endpoints = vec![xa, endpoint("y", "a", "10.244.0.4")];
    let mut yb = PeerPod::new(ObjectName::new("y", "b"), [ip("10.244.1.6")]);
    yb.named_ports = vec![NamedPort::new("dns", Protocol::Udp, 53)];
    state.pods = vec![yb];
    state.namespaces = ["x", "y"]
        .into_iter()
        .map(|n| Namespace::new(n).with_label("ns", n))
        .collect();
    state
}

fn render(state: &DesiredState) -> String {
    NftablesDataplane::new(NetfilterConfig::nftables(None))
        .render(state)
        .expect("render")
}

fn lines_of<'a>(text: &'a str, chain: &str) -> Vec<&'a str> {
    let head = format!("add rule inet dataplane {chain} ");
    text.lines()
        .filter_map(|l| l.strip_prefix(head.as_str()))
        .collect()
}

/// Priority order, Allow/Deny/Pass verdicts, the NetworkPolicy / baseline chain, peers by
/// namespace (pods' addresses), networks, nodes (peer node labels) and ports by number, range
/// and name (on ingress the endpoint's own; on egress each peer pod's).
#[test]
fn tiers_render_in_priority_order() {
    let mut state = cluster();
    state.nodes = vec![
        PeerNode::new("node-1", [ip("172.18.0.11")]).with_label("role", "db"),
        PeerNode::new("node-2", [ip("172.18.0.12")]),
    ];
    state.cluster_policies = vec![
        ClusterPolicy::for_namespaces("later", 20, sel("ns", "x")).with_ingress(
            ClusterPolicyRule::new(
                "deny-y",
                ClusterAction::Deny,
                [ClusterPeer::Namespaces(sel("ns", "y"))],
            )
            .with_port(ClusterPort::NamedPort("web".into())),
        ),
        ClusterPolicy::for_namespaces("first", 5, sel("ns", "x"))
            .with_ingress(
                ClusterPolicyRule::new(
                    "pass-y",
                    ClusterAction::Pass,
                    [ClusterPeer::Namespaces(sel("ns", "y"))],
                )
                .with_port(ClusterPort::PortRange {
                    protocol: Protocol::Tcp,
                    start: 1000,
                    end: 2000,
                }),
            )
            .with_egress(ClusterPolicyRule::new(
                "allow-db-nodes",
                ClusterAction::Allow,
                [
                    ClusterPeer::Nodes(sel("role", "db")),
                    ClusterPeer::Networks(vec!["192.0.2.0/25".parse().unwrap()]),
                    ClusterPeer::Networks(vec!["192.0.2.128/25".parse().unwrap()]),
                ],
            ))
            .with_egress(
                ClusterPolicyRule::new(
                    "deny-dns-of-y",
                    ClusterAction::Deny,
                    [ClusterPeer::Namespaces(sel("ns", "y"))],
                )
                .with_port(ClusterPort::NamedPort("dns".into())),
            ),
    ];
    state.baseline_policy = Some(
        BaselinePolicy::new(ClusterPolicySubject::Namespaces(LabelSelector::default()))
            .with_ingress(BaselineRule::new(
                "deny-from-y",
                BaselineAction::Deny,
                [ClusterPeer::Namespaces(sel("ns", "y"))],
            )),
    );
    let text = render(&state);
    // x/a ingress: `first` before `later`, Pass to the NetworkPolicy/baseline chain.
    assert_eq!(
        lines_of(&text, "tier-in-x/a"),
        [
            "ip saddr { 10.244.0.4, 10.244.1.6 } meta l4proto tcp th dport 1000-2000 goto tnp-in-x/a",
            "ip saddr { 10.244.0.4, 10.244.1.6 } meta l4proto tcp th dport 80 goto deny-policy-in",
            "goto tnp-in-x/a",
        ]
    );
    // Not isolated by a NetworkPolicy: the baseline, then allowed.
    assert_eq!(
        lines_of(&text, "tnp-in-x/a"),
        [
            "ip saddr { 10.244.0.4, 10.244.1.6 } goto deny-policy-in",
            "return"
        ]
    );
    // x/a egress: the db node and the two halves merged into one prefix; named port `dns`
    // on the peer pod that has it.
    assert_eq!(
        lines_of(&text, "tier-out-x/a"),
        [
            "ip daddr { 172.18.0.11, 192.0.2.0/24 } goto pol-dispatch-in",
            "ip daddr . meta l4proto . th dport { 10.244.1.6 . udp . 53 } goto deny-policy-out",
            "goto tnp-out-x/a",
        ]
    );
    // y/a: only the baseline (no cluster policy selects namespace y), so no tier chain.
    assert!(lines_of(&text, "tier-in-y/a").is_empty());
    assert_eq!(
        lines_of(&text, "tnp-in-y/a"),
        [
            "ip saddr { 10.244.0.4, 10.244.1.6 } goto deny-policy-in",
            "return"
        ]
    );
    assert!(text.contains("add element inet dataplane tier-ingress-v4 { 10.244.0.2 : goto tier-in-x/a, 10.244.0.4 : goto tnp-in-y/a }"), "{text}");
    assert!(
        text.contains(
            "add element inet dataplane tier-egress-v4 { 10.244.0.2 : goto tier-out-x/a }"
        ),
        "{text}"
    );
    // A NetworkPolicy isolating x/a: its chain replaces the baseline.
    state.policies = vec![common::deny_all_policy()];
    state.policies[0].name = ObjectName::new("x", "deny-all");
    let text = render(&state);
    assert_eq!(lines_of(&text, "tnp-in-x/a"), ["jump pol-in-x/a", "return"]);
}

/// The order of the host chains: failsafe before untracked, default deny in the normal
/// chains only; big address lists in a named interval set.
#[test]
fn host_policy_renders_in_stages() {
    let mut state = cluster();
    state.host_endpoints =
        vec![HostEndpoint::new("node-0-eth0", "node-0", "eth0").with_label("role", "uplink")];
    let uplink = || sel("role", "uplink");
    // Every other /24: 100 prefixes that do not merge.
    let many: Vec<IpNetwork> = (0..100u32)
        .map(|i| IpNetwork::new(ip(&format!("198.18.{}.0", i * 2)), 24).unwrap())
        .collect();
    state.host_policies = vec![
        HostPolicy::new("flood", uplink())
            .untracked()
            .with_order(1)
            .with_ingress(HostRule::new(HostAction::Deny).from_nets(many)),
        HostPolicy::new("ssh-web", uplink())
            .with_order(10)
            .with_ingress(
                HostRule::new(HostAction::Allow)
                    .protocol(Protocol::Tcp)
                    .to_ports([HostPort::Number(8080)]),
            ),
    ];
    state.failsafe_ports = FailsafePorts::default();
    let text = render(&state);
    let raw = lines_of(&text, "host-raw-pre");
    assert_eq!(raw[0], "iifname != \"eth0\" return");
    assert!(
        raw[1].starts_with("ip daddr { 172.18.0.10 } meta l4proto . th dport { tcp . 179, "),
        "{raw:?}"
    );
    assert!(raw[1].ends_with(" return"));
    assert!(raw[2].starts_with("ip6 daddr { fd00:18::10 } meta l4proto . th dport { tcp . 179, "));
    assert_eq!(raw[3], "ip saddr @host-nets-0-v4 drop");
    assert_eq!(raw.len(), 4, "{raw:?}");
    assert!(
        text.contains("add set inet dataplane host-nets-0-v4 { type ipv4_addr; flags interval; }")
    );
    assert!(text.contains("198.18.198.0/24"), "{text}");
    let input = lines_of(&text, "host-input");
    assert_eq!(input[0], "iifname != \"eth0\" accept");
    assert_eq!(input.last(), Some(&"drop"));
    assert!(
        input.contains(&"meta l4proto tcp th dport { 8080 } accept"),
        "{input:?}"
    );
    assert!(
        lines_of(&text, "host-output").is_empty(),
        "no egress policy: no output chain"
    );
    assert!(text.contains("add chain inet dataplane host-raw-pre { type filter hook prerouting priority raw; policy accept; }"));
}

fn one_node_lab(externals: usize) -> Lab {
    Lab::new(LabSpec {
        nodes: 1,
        pods_per_node: 1,
        external_clients: externals,
        ipv6: false,
    })
    .expect("lab")
}

fn backend(lab: &Lab) -> NftablesDataplane {
    NftablesDataplane::new(NetfilterConfig::nftables(Some(
        lab.node(0).netns.path().to_owned(),
    )))
}

/// Tiers and host policy load into a kernel, partial syncs replace them (and a removal
/// leaves the table as a fresh full sync of the same state writes it), and a 100k-prefix
/// untracked deny set loads in one apply (its time is printed, not asserted).
#[test]
fn tiers_and_host_policy_load_and_change() {
    if !require_root("tiers_and_host_policy_load_and_change") {
        return;
    }
    let lab = one_node_lab(0);
    let mut dp = backend(&lab);
    let mut base = lab.desired_state(0);
    base.namespaces = vec![Namespace::new("default").with_label("ns", "default")];
    let mut tiers = base.clone();
    tiers.cluster_policies =
        vec![
            ClusterPolicy::for_namespaces("deny", 5, LabelSelector::default()).with_egress(
                ClusterPolicyRule::new(
                    "deny-net",
                    ClusterAction::Deny,
                    [ClusterPeer::Networks(vec!["192.0.2.0/24".parse().unwrap()])],
                ),
            ),
        ];
    dp.apply(&base).expect("apply");
    dp.apply_changes(&diff(&base, &tiers)).expect("tiers added");
    let mut host = tiers.clone();
    host.host_endpoints = vec![HostEndpoint::new("uplink", "node-0", "eth0")];
    let prefixes: Vec<IpNetwork> = (0..100_000u32)
        .map(|i| {
            // 100k disjoint /30s in 10.128.0.0/9 .. (every other /30: nothing merges).
            let v = (10u32 << 24) | (128 << 16) | (i * 8);
            IpNetwork::new(std::net::Ipv4Addr::from(v).into(), 30).unwrap()
        })
        .collect();
    host.host_policies = vec![HostPolicy::new("flood", LabelSelector::default())
        .untracked()
        .with_ingress(HostRule::new(HostAction::Deny).from_nets(prefixes))];
    let started = Instant::now();
    dp.apply_changes(&diff(&tiers, &host))
        .expect("host policy added");
    println!(
        "100k-prefix untracked deny set: apply_changes took {:?}",
        started.elapsed()
    );
    let mut full = NftablesDataplane::new(NetfilterConfig::nftables(None));
    let started = Instant::now();
    let text = full.render(&host).expect("render");
    println!(
        "100k-prefix untracked deny set: render took {:?} ({} lines)",
        started.elapsed(),
        text.lines().count()
    );
    let started = Instant::now();
    let mut fresh = backend(&lab);
    fresh.reset().expect("reset");
    fresh.apply(&host).expect("full apply");
    println!(
        "100k-prefix untracked deny set: full apply took {:?}",
        started.elapsed()
    );
    // Back to nothing, through partial syncs.
    fresh
        .apply_changes(&diff(&host, &tiers))
        .expect("host removed");
    fresh
        .apply_changes(&diff(&tiers, &base))
        .expect("tiers removed");
    let listing = fresh.render(&base).expect("render");
    assert!(!listing.contains("tier-") && !listing.contains("host-"));
    let _ = full.config_mut();
}

/// Host policy with real traffic: an external client reaches the node's own servers on
/// the allowed port, not on the denied one (default deny), and always on the failsafe
/// port; an untracked deny of the client's address drops even the allowed port, but not
/// the failsafe one.
#[test]
fn host_policy_against_traffic() {
    if !require_root("host_policy_against_traffic") {
        return;
    }
    let lab = one_node_lab(1);
    let node = lab.node(0);
    let client = lab.external(0);
    let node_ip = node.address(Family::V4).expect("v4");
    let client_ip = client.addresses[0];
    let _servers: Vec<_> = [22, 8080, 9090]
        .into_iter()
        .map(|p| serve(&node.netns, &format!("node:{p}"), p).expect("serve"))
        .collect();
    let reach = |port: u16| {
        probe(
            &client.netns,
            std::net::SocketAddr::new(node_ip, port),
            Protocol::Tcp,
            Duration::from_millis(700),
        )
        .expect("probe")
    };
    let answered = |o: &ProbeOutcome| matches!(o, ProbeOutcome::Answered { .. });
    let mut dp = backend(&lab);
    let open = lab.desired_state(0);
    dp.apply(&open).expect("apply");
    for p in [22, 8080, 9090] {
        assert!(answered(&reach(p)), "no host policy: port {p} open");
    }
    let mut normal = open.clone();
    normal.host_endpoints =
        vec![HostEndpoint::new("uplink", &node.name, &node.uplink).with_label("role", "uplink")];
    normal.host_policies = vec![HostPolicy::new("web", sel("role", "uplink")).with_ingress(
        HostRule::new(HostAction::Allow)
            .protocol(Protocol::Tcp)
            .to_ports([HostPort::Number(8080)]),
    )];
    dp.apply_changes(&diff(&open, &normal))
        .expect("normal policy");
    assert!(answered(&reach(8080)), "allowed port");
    assert_eq!(reach(9090), ProbeOutcome::Timeout, "default deny");
    assert!(answered(&reach(22)), "failsafe port");
    let mut untracked = normal.clone();
    untracked.host_policies.push(
        HostPolicy::new("block-client", sel("role", "uplink"))
            .untracked()
            .with_order(1)
            .with_ingress(HostRule::new(HostAction::Deny).from_nets([IpNetwork::from(client_ip)])),
    );
    dp.apply_changes(&diff(&normal, &untracked))
        .expect("untracked deny");
    assert_eq!(reach(8080), ProbeOutcome::Timeout, "untracked deny first");
    assert!(answered(&reach(22)), "failsafe before untracked");
    // Back to open: the host chains go.
    dp.apply_changes(&diff(&untracked, &open)).expect("removed");
    assert!(answered(&reach(9090)), "open again");
}

/// A sequence of partial syncs through cluster policies, the baseline, NetworkPolicy, pod,
/// namespace and peer-node changes and host policies of every kind leaves the kernel with
/// the same table as a full sync of each state into another table (but for the hairpin
/// elements of removed pods, which stay until the next full sync).
#[test]
fn tier_and_host_partial_syncs_match_a_full_sync() {
    if !require_root("tier_and_host_partial_syncs_match_a_full_sync") {
        return;
    }
    let lab = one_node_lab(0);
    let netns = &lab.node(0).netns;
    let (mut partial, mut full) = common::partial_and_fresh(netns);
    let mut state = cluster();
    state.node = lab.node_state(0);
    let steps = steps(&state.node.interfaces.uplink, &state.node.name);
    partial.apply(&state).expect("apply");
    for (i, step) in steps.iter().enumerate() {
        let mut next = state.clone();
        step(&mut next);
        let report = partial
            .apply_changes(&diff(&state, &next))
            .unwrap_or_else(|e| panic!("step {i}: {e}"));
        assert!(!report.full_sync);
        full.apply(&next).expect("full");
        common::assert_same_tables(netns, "dataplane", "fresh", &format!("step {i}"));
        state = next;
    }
    partial.reset().expect("reset");
    full.reset().expect("reset");
}

/// A change of a state.
type Step = Box<dyn Fn(&mut DesiredState)>;

/// The changes of [`tier_and_host_partial_syncs_match_a_full_sync`], one after the other, on
/// the node named `node` with uplink `uplink`.
fn steps(uplink: &str, node: &str) -> Vec<Step> {
    let (uplink, node_name) = (uplink.to_owned(), node.to_owned());
    vec![
        Box::new(|s| {
            s.cluster_policies = vec![ClusterPolicy::for_namespaces("deny-y", 10, sel("ns", "x"))
                .with_ingress(ClusterPolicyRule::new(
                    "deny-y",
                    ClusterAction::Deny,
                    [ClusterPeer::Namespaces(sel("ns", "y"))],
                ))];
        }),
        Box::new(|s| {
            s.baseline_policy = Some(
                BaselinePolicy::new(ClusterPolicySubject::Namespaces(LabelSelector::default()))
                    .with_egress(BaselineRule::new(
                        "deny-nodes",
                        BaselineAction::Deny,
                        [ClusterPeer::Nodes(LabelSelector::default())],
                    )),
            );
        }),
        Box::new(|s| {
            let mut p = common::deny_all_policy();
            p.name = ObjectName::new("x", "deny-all");
            s.policies = vec![p];
        }),
        Box::new(|s| {
            s.cluster_policies.push(
                ClusterPolicy::for_namespaces("pass-y", 5, sel("ns", "x")).with_ingress(
                    ClusterPolicyRule::new(
                        "pass-y",
                        ClusterAction::Pass,
                        [ClusterPeer::Namespaces(sel("ns", "y"))],
                    )
                    .with_port(ClusterPort::NamedPort("web".into())),
                ),
            );
        }),
        Box::new(|s| {
            s.namespaces[1] = Namespace::new("y").with_label("ns", "x");
        }),
        Box::new(|s| {
            s.nodes = vec![PeerNode::new("node-1", [ip("172.18.0.11")])];
            s.pods
                .push(PeerPod::new(ObjectName::new("y", "c"), [ip("10.244.1.9")]));
        }),
        Box::new(|s| s.policies.clear()),
        Box::new(move |s| {
            s.host_endpoints = vec![HostEndpoint::new("uplink", &node_name, &uplink)];
            let many: Vec<IpNetwork> = (0..200u32)
                .map(|i| {
                    IpNetwork::new(ip(&format!("198.18.{}.{}", i / 64, (i % 64) * 4)), 31).unwrap()
                })
                .collect();
            s.host_policies = vec![
                HostPolicy::new("flood", LabelSelector::default())
                    .untracked()
                    .with_ingress(HostRule::new(HostAction::Deny).from_nets(many)),
                HostPolicy::new("nodeport", LabelSelector::default())
                    .pre_dnat()
                    .with_ingress(
                        HostRule::new(HostAction::Deny)
                            .protocol(Protocol::Tcp)
                            .to_ports([HostPort::Number(30080)]),
                    ),
                HostPolicy::new("web", LabelSelector::default())
                    .on_forward()
                    .with_types([PolicyType::Ingress, PolicyType::Egress])
                    .with_ingress(
                        HostRule::new(HostAction::Allow)
                            .protocol(Protocol::Tcp)
                            .to_ports([HostPort::Number(8080)]),
                    ),
            ];
        }),
        Box::new(|s| {
            s.host_policies.remove(0);
            s.failsafe_ports = FailsafePorts::none();
        }),
        Box::new(|s| {
            s.host_policies.clear();
            s.cluster_policies.clear();
        }),
        Box::new(|s| s.baseline_policy = None),
    ]
}
