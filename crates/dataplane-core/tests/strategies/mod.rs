//! Proptest strategies for valid desired states, shared by `format.rs` and `diff.rs` through
//! `mod strategies;` (cargo also builds this file as a test target of its own, with no tests).
//!
//! States are bounded (at most 6 services of at most 3 ports and 5 backends, 4 endpoints,
//! 3 policies, 4 namespaces, 4 peer pods, 3 cluster policies, a baseline, 3 peer nodes, 3
//! host endpoints, 3 host policies of every kind, failsafe ports) and valid by construction: names come from a pool of 8, and each service derives
//! its addresses and NodePorts from its pool index so that no two services share a frontend.
//! Names and label values include strings that YAML would read as something else unquoted
//! (`true`, `null`, `123`, `1e3`, `~`): serialisers must quote them.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use dataplane_core::{
    Backend, BackendSelection, BaselineAction, BaselinePolicy, BaselineRule, ClusterAction,
    ClusterPeer, ClusterPolicy, ClusterPolicyRule, ClusterPolicySubject, ClusterPort, ClusterRule,
    DesiredState, Endpoint, ExternalMode, FailsafePort, FailsafePorts, HostAction, HostEndpoint,
    HostPolicy, HostPort, HostRule, Interfaces, IpBlock, LabelRequirement, LabelSelector,
    Masquerade, NamedPort, Namespace, NamespacedPods, Node, ObjectName, PeerNode, PeerPod, Policy,
    PolicyPeer, PolicyPort, PolicyRule, PolicyType, PortRange, PortRef, Protocol, SelectorOperator,
    Service, ServicePort, SessionAffinity, TrafficPolicy, API_VERSION, KIND,
};
use ipnetwork::IpNetwork;
use proptest::collection::{btree_map, btree_set, vec};
use proptest::option;
use proptest::prelude::*;
use proptest::sample::{select, subsequence};

/// Object names (valid DNS labels); index `i` of a service is its identity.
pub const NAMES: [&str; 8] = ["web", "true", "null", "123", "1e3", "no", "api-v2", "0x1f"];
const NAMESPACES: [&str; 4] = ["default", "kube-system", "yes", "007"];
const LABEL_KEYS: [&str; 4] = ["app", "true", "app.kubernetes.io/name", "123"];
const LABEL_VALUES: [&str; 8] = ["web", "", "yes", "null", "1.5", "~", "0x10", "-1"];
const PORT_NAMES: [&str; 3] = ["http", "dns", "metrics"];

fn net(s: &str) -> IpNetwork {
    s.parse().expect("strategy CIDR")
}

fn protocol() -> impl Strategy<Value = Protocol> {
    select(vec![Protocol::Tcp, Protocol::Udp, Protocol::Sctp])
}

fn policy_kind() -> impl Strategy<Value = TrafficPolicy> {
    select(vec![TrafficPolicy::Cluster, TrafficPolicy::Local])
}

fn external_mode() -> impl Strategy<Value = ExternalMode> {
    select(vec![
        ExternalMode::Snat,
        ExternalMode::Dsr,
        ExternalMode::Hybrid,
    ])
}

/// The node: fixed name and addresses, a few settings that vary (so that two generated states
/// sometimes differ only in the node, sometimes not at all).
pub fn node() -> impl Strategy<Value = Node> {
    (
        select(vec![1500u32, 9000]),
        any::<bool>(),
        any::<bool>(),
        subsequence(vec![net("192.168.0.0/16"), net("fd00:1::/64")], 0..=2),
        external_mode(),
        any::<bool>(),
    )
        .prop_map(
            |(mtu, enabled, all, non_masquerade_cidrs, external_mode, all_services)| Node {
                name: "node-0".into(),
                addresses: vec![
                    IpAddr::V4(Ipv4Addr::new(172, 18, 0, 10)),
                    "fd00:18::10".parse().expect("address"),
                ],
                pod_cidrs: vec![net("10.244.0.0/24"), net("fd00:244::/64")],
                cluster_cidrs: vec![net("10.244.0.0/16"), net("fd00:244::/56")],
                service_cidrs: vec![net("10.96.0.0/12"), net("fd00:96::/112")],
                node_port_range: PortRange::default(),
                interfaces: Interfaces {
                    uplink: "eth0".into(),
                },
                masquerade: Masquerade {
                    enabled,
                    all,
                    non_masquerade_cidrs,
                    all_services,
                },
                mtu,
                external_mode,
            },
        )
}

/// Up to 3 ports with distinct (protocol, port); NodePorts `30000 + 10 * idx + i`.
fn ports(idx: usize) -> impl Strategy<Value = Vec<ServicePort>> {
    (
        btree_set((protocol(), 1u16..=u16::MAX), 1..=3),
        vec((1u16..=u16::MAX, any::<bool>()), 3),
        any::<bool>(),
    )
        .prop_map(move |(keys, extra, name_single)| {
            let named = keys.len() > 1 || name_single;
            keys.into_iter()
                .zip(extra)
                .enumerate()
                .map(
                    |(i, ((protocol, port), (target_port, node_port)))| ServicePort {
                        name: if named {
                            format!("p{i}")
                        } else {
                            String::new()
                        },
                        protocol,
                        port,
                        target_port,
                        node_port: node_port.then(|| 30_000 + 10 * idx as u16 + i as u16),
                    },
                )
                .collect()
        })
}

/// (terminating, ready, serving, node, zone, weight, own target port); a terminating backend
/// is never ready; the own port is kept only in a single-port service.
type BackendAttrs = (
    bool,
    bool,
    bool,
    Option<&'static str>,
    Option<&'static str>,
    u16,
    Option<u16>,
);

fn backend_attrs() -> impl Strategy<Value = BackendAttrs> {
    (
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        option::of(select(vec!["node-0", "node-1", "node-2"])),
        option::of(select(vec!["zone-a", "zone-b"])),
        select(vec![1u16, 1, 2, 5, 100, u16::MAX]),
        option::of(1u16..=u16::MAX),
    )
}

fn backend(v6: bool, host: u8, attrs: BackendAttrs) -> Backend {
    let (terminating, ready, serving, node, zone, weight, port) = attrs;
    let ip = if v6 {
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0x244, 0, 0, 0, 0, 0, u16::from(host)))
    } else {
        IpAddr::V4(Ipv4Addr::new(10, 244, host % 3, host))
    };
    Backend {
        ip,
        ready: ready && !terminating,
        serving,
        terminating,
        node_name: node.map(Into::into),
        zone: zone.map(Into::into),
        weight,
        port,
    }
}

/// Which ClusterIPs a service has.
#[derive(Debug, Clone, Copy)]
enum Stack {
    Headless,
    V4,
    V6,
    Dual,
}

/// Service number `idx` of the name pool.
pub fn service(idx: usize) -> impl Strategy<Value = Service> {
    let frontends = (
        select(vec![
            Stack::V4,
            Stack::V4,
            Stack::V6,
            Stack::Dual,
            Stack::Headless,
        ]),
        any::<bool>(),
        any::<bool>(),
        select(NAMESPACES.to_vec()),
    );
    let options = (
        prop_oneof![
            Just(SessionAffinity::None),
            (1u32..=86_400)
                .prop_map(|timeout_seconds| SessionAffinity::ClientIp { timeout_seconds }),
        ],
        policy_kind(),
        policy_kind(),
        any::<bool>(),
        subsequence(
            vec![
                net("203.0.113.0/24"),
                net("198.51.100.0/24"),
                net("2001:db8::/32"),
                net("0.0.0.0/0"),
            ],
            0..=3,
        ),
        select(vec![BackendSelection::Random, BackendSelection::Maglev]),
        option::of(external_mode()),
    );
    let backends = btree_map((any::<bool>(), 1u8..=250), backend_attrs(), 0..=5);
    (frontends, ports(idx), backends, options).prop_map(
        move |((stack, external, lb, namespace), ports, backends, options)| {
            let (affinity, etp, itp, health_check, ranges, selection, mode) = options;
            let n = idx as u8 + 1;
            let mut s = Service::new(ObjectName::new(namespace, NAMES[idx]));
            let v4 = IpAddr::V4(Ipv4Addr::new(10, 96, 0, n));
            let v6 = IpAddr::V6(Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, u16::from(n)));
            s.cluster_ips = match stack {
                Stack::Headless => vec![],
                Stack::V4 => vec![v4],
                Stack::V6 => vec![v6],
                Stack::Dual => vec![v4, v6],
            };
            if external {
                s.external_ips = vec![IpAddr::V4(Ipv4Addr::new(198, 51, 100, n))];
            }
            if lb {
                s.load_balancer_ips = vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, n))];
                s.load_balancer_source_ranges = ranges;
            }
            // NodePorts listen on both node addresses, so they accept both families.
            let any_node_port = ports.iter().any(|p| p.node_port.is_some());
            let has_v4 =
                any_node_port || external || lb || !matches!(stack, Stack::V6 | Stack::Headless);
            let has_v6 = any_node_port || matches!(stack, Stack::V6 | Stack::Dual);
            let headless = !has_v4 && !has_v6;
            s.backends = backends
                .into_iter()
                .filter(|((is_v6, _), _)| headless || if *is_v6 { has_v6 } else { has_v4 })
                .map(|((is_v6, host), attrs)| backend(is_v6, host, attrs))
                .map(|mut b| {
                    if ports.len() != 1 {
                        b.port = None;
                    }
                    b
                })
                .collect();
            s.ports = ports;
            s.session_affinity = affinity;
            s.external_traffic_policy = etp;
            s.internal_traffic_policy = itp;
            if etp == TrafficPolicy::Local && health_check {
                s.health_check_node_port = Some(32_000 + u16::from(n));
            }
            s.backend_selection = selection;
            s.external_mode = mode;
            s
        },
    )
}

/// Up to 6 services with distinct names, in random order.
pub fn services() -> impl Strategy<Value = Vec<Service>> {
    btree_set(0..NAMES.len(), 0..=6)
        .prop_flat_map(|idxs| idxs.into_iter().map(service).collect::<Vec<_>>())
        .prop_shuffle()
}

fn labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    btree_map(
        select(LABEL_KEYS.to_vec()).prop_map(str::to_owned),
        prop_oneof![
            select(LABEL_VALUES.to_vec()).prop_map(str::to_owned),
            "[a-z0-9.-]{0,6}",
        ],
        0..=3,
    )
}

fn endpoint(idx: usize) -> impl Strategy<Value = Endpoint> {
    (
        select(NAMESPACES.to_vec()),
        any::<bool>(),
        labels(),
        labels(),
        vec(
            (select(PORT_NAMES.to_vec()), protocol(), 1u16..=u16::MAX),
            0..=2,
        ),
    )
        .prop_map(move |(namespace, v6, labels, namespace_labels, named)| {
            let n = idx as u8 + 1;
            let mut ips = vec![IpAddr::V4(Ipv4Addr::new(10, 244, 0, 100 + n))];
            if v6 {
                ips.push(IpAddr::V6(Ipv6Addr::new(
                    0xfd00,
                    0x244,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0x100 + u16::from(n),
                )));
            }
            Endpoint {
                name: ObjectName::new(namespace, NAMES[idx]),
                interface: format!("veth{idx}"),
                ips,
                labels,
                namespace_labels,
                named_ports: named_ports(named),
            }
        })
}

/// Up to 4 endpoints with distinct names and addresses, in random order.
pub fn endpoints() -> impl Strategy<Value = Vec<Endpoint>> {
    btree_set(0..NAMES.len(), 0..=4)
        .prop_flat_map(|idxs| idxs.into_iter().map(endpoint).collect::<Vec<_>>())
        .prop_shuffle()
}

fn selector() -> impl Strategy<Value = LabelSelector> {
    let requirement = (
        select(LABEL_KEYS.to_vec()),
        select(vec![
            SelectorOperator::In,
            SelectorOperator::NotIn,
            SelectorOperator::Exists,
            SelectorOperator::DoesNotExist,
        ]),
        subsequence(LABEL_VALUES.to_vec(), 1..=2),
    )
        .prop_map(|(key, operator, values)| LabelRequirement {
            key: key.into(),
            operator,
            // In and NotIn need values, Exists and DoesNotExist take none.
            values: match operator {
                SelectorOperator::In | SelectorOperator::NotIn => {
                    values.into_iter().map(str::to_owned).collect()
                }
                SelectorOperator::Exists | SelectorOperator::DoesNotExist => Vec::new(),
            },
        });
    (labels(), vec(requirement, 0..=2)).prop_map(|(match_labels, match_expressions)| {
        LabelSelector {
            match_labels,
            match_expressions,
        }
    })
}

fn peer() -> impl Strategy<Value = PolicyPeer> {
    let block = prop_oneof![
        Just(IpBlock {
            cidr: net("10.0.0.0/8"),
            except: vec![net("10.1.0.0/16"), net("10.2.3.0/24")],
        }),
        Just(IpBlock {
            cidr: net("0.0.0.0/0"),
            except: vec![],
        }),
        Just(IpBlock {
            cidr: net("2001:db8::/32"),
            except: vec![net("2001:db8:1::/48")],
        }),
    ];
    prop_oneof![
        selector().prop_map(|s| PolicyPeer {
            pod_selector: Some(s),
            ..PolicyPeer::default()
        }),
        (selector(), selector()).prop_map(|(p, n)| PolicyPeer {
            pod_selector: Some(p),
            namespace_selector: Some(n),
            ip_block: None,
        }),
        block.prop_map(|b| PolicyPeer {
            ip_block: Some(b),
            ..PolicyPeer::default()
        }),
    ]
}

fn policy_port() -> impl Strategy<Value = PolicyPort> {
    prop_oneof![
        protocol().prop_map(|protocol| PolicyPort {
            protocol,
            port: None,
            end_port: None,
        }),
        (protocol(), select(PORT_NAMES.to_vec())).prop_map(|(protocol, name)| PolicyPort {
            protocol,
            port: Some(PortRef::Name(name.into())),
            end_port: None,
        }),
        (protocol(), 1u16..=60_000, option::of(0u16..=1000)).prop_map(|(protocol, port, span)| {
            PolicyPort {
                protocol,
                port: Some(PortRef::Number(port)),
                end_port: span.map(|s| port + s),
            }
        }),
    ]
}

fn rule() -> impl Strategy<Value = PolicyRule> {
    (vec(peer(), 0..=2), vec(policy_port(), 0..=2))
        .prop_map(|(peers, ports)| PolicyRule { peers, ports })
}

fn policy(idx: usize) -> impl Strategy<Value = Policy> {
    (
        select(NAMESPACES.to_vec()),
        selector(),
        subsequence(vec![PolicyType::Ingress, PolicyType::Egress], 0..=2),
        vec(rule(), 0..=2),
        vec(rule(), 0..=1),
    )
        .prop_map(
            move |(namespace, pod_selector, policy_types, ingress, egress)| Policy {
                name: ObjectName::new(namespace, NAMES[idx]),
                pod_selector,
                policy_types,
                ingress,
                egress,
            },
        )
}

/// Up to 3 policies with distinct names, in random order.
pub fn policies() -> impl Strategy<Value = Vec<Policy>> {
    btree_set(0..NAMES.len(), 0..=3)
        .prop_flat_map(|idxs| idxs.into_iter().map(policy).collect::<Vec<_>>())
        .prop_shuffle()
}

/// Namespace objects for some of the pool's namespaces, with random labels.
pub fn namespaces() -> impl Strategy<Value = Vec<Namespace>> {
    btree_map(select(NAMESPACES.to_vec()), labels(), 0..=3)
        .prop_map(|m| {
            m.into_iter()
                .map(|(name, labels)| Namespace {
                    name: name.to_owned(),
                    labels,
                })
                .collect::<Vec<_>>()
        })
        .prop_shuffle()
}

/// A peer pod; its addresses (10.244.1.0/24) never collide with an endpoint's.
fn peer_pod(idx: usize) -> impl Strategy<Value = PeerPod> {
    (
        select(NAMESPACES.to_vec()),
        labels(),
        vec(
            (select(PORT_NAMES.to_vec()), protocol(), 1u16..=u16::MAX),
            0..=1,
        ),
        option::of(select(vec!["node-b", "node-c"])),
    )
        .prop_map(move |(namespace, labels, named, node)| PeerPod {
            name: ObjectName::new(namespace, format!("peer-{}", NAMES[idx])),
            ips: vec![IpAddr::V4(Ipv4Addr::new(10, 244, 1, idx as u8 + 1))],
            labels,
            named_ports: named_ports(named),
            node_name: node.map(Into::into),
        })
}

/// Named ports, the first of each name and protocol (a name given twice is invalid).
fn named_ports(named: Vec<(&str, Protocol, u16)>) -> Vec<NamedPort> {
    let mut seen = BTreeSet::new();
    named
        .into_iter()
        .filter(|(name, protocol, _)| seen.insert((*name, *protocol)))
        .map(|(name, protocol, port)| NamedPort::new(name, protocol, port))
        .collect()
}

/// Up to 4 peer pods with distinct names and addresses, in random order.
pub fn pods() -> impl Strategy<Value = Vec<PeerPod>> {
    btree_set(0..NAMES.len(), 0..=4)
        .prop_flat_map(|idxs| idxs.into_iter().map(peer_pod).collect::<Vec<_>>())
        .prop_shuffle()
}

fn cluster_subject() -> impl Strategy<Value = ClusterPolicySubject> {
    prop_oneof![
        selector().prop_map(ClusterPolicySubject::Namespaces),
        (selector(), selector()).prop_map(|(namespace_selector, pod_selector)| {
            ClusterPolicySubject::Pods(NamespacedPods {
                namespace_selector,
                pod_selector,
            })
        }),
    ]
}

/// A cluster policy peer; `nodes` and `networks` only on egress.
fn cluster_peer(egress: bool) -> BoxedStrategy<ClusterPeer> {
    let pods = (selector(), selector()).prop_map(|(namespace_selector, pod_selector)| {
        ClusterPeer::Pods(NamespacedPods {
            namespace_selector,
            pod_selector,
        })
    });
    let namespaces = selector().prop_map(ClusterPeer::Namespaces);
    if !egress {
        return prop_oneof![namespaces, pods].boxed();
    }
    let networks = subsequence(
        vec![
            net("10.0.0.0/8"),
            net("0.0.0.0/0"),
            net("2001:db8::/32"),
            net("192.0.2.7/32"),
        ],
        1..=2,
    )
    .prop_map(ClusterPeer::Networks);
    prop_oneof![
        namespaces,
        pods,
        selector().prop_map(ClusterPeer::Nodes),
        networks
    ]
    .boxed()
}

fn cluster_port() -> impl Strategy<Value = ClusterPort> {
    prop_oneof![
        (protocol(), 1u16..=60_000)
            .prop_map(|(protocol, port)| ClusterPort::PortNumber { protocol, port }),
        select(PORT_NAMES.to_vec()).prop_map(|n| ClusterPort::NamedPort(n.to_owned())),
        (protocol(), 1u16..=60_000, 0u16..=1000).prop_map(|(protocol, start, span)| {
            ClusterPort::PortRange {
                protocol,
                start,
                end: start + span,
            }
        }),
    ]
}

/// A rule's parts: name, peers, ports.
fn cluster_rule_parts(
    egress: bool,
) -> impl Strategy<Value = (&'static str, Vec<ClusterPeer>, Vec<ClusterPort>)> {
    (
        select(NAMES.to_vec()),
        vec(cluster_peer(egress), 1..=2),
        vec(cluster_port(), 0..=2),
    )
}

/// Up to 2 rules with actions from `actions`.
fn tier_rules<A: Clone + std::fmt::Debug + 'static>(
    egress: bool,
    actions: Vec<A>,
) -> impl Strategy<Value = Vec<ClusterRule<A>>> {
    vec((cluster_rule_parts(egress), select(actions)), 0..=2).prop_map(|rules| {
        rules
            .into_iter()
            .map(|((name, peers, ports), action)| ClusterRule {
                name: name.to_owned(),
                action,
                peers,
                ports,
            })
            .collect()
    })
}

fn cluster_rules(egress: bool) -> impl Strategy<Value = Vec<ClusterPolicyRule>> {
    tier_rules(
        egress,
        vec![
            ClusterAction::Allow,
            ClusterAction::Deny,
            ClusterAction::Pass,
        ],
    )
}

fn baseline_rules(egress: bool) -> impl Strategy<Value = Vec<BaselineRule>> {
    tier_rules(egress, vec![BaselineAction::Allow, BaselineAction::Deny])
}

/// Up to 3 cluster policies with distinct names and priorities, in random order.
pub fn cluster_policies() -> impl Strategy<Value = Vec<ClusterPolicy>> {
    btree_set(0..NAMES.len(), 0..=3)
        .prop_flat_map(|idxs| {
            idxs.into_iter()
                .map(|idx| {
                    (
                        0u32..100,
                        cluster_subject(),
                        cluster_rules(false),
                        cluster_rules(true),
                    )
                        .prop_map(move |(offset, subject, ingress, egress)| {
                            ClusterPolicy {
                                name: NAMES[idx].to_owned(),
                                // Distinct by construction, inside 0..=1000.
                                priority: idx as u32 * 100 + offset,
                                subject,
                                ingress,
                                egress,
                            }
                        })
                })
                .collect::<Vec<_>>()
        })
        .prop_shuffle()
}

/// No baseline, or one.
pub fn baseline_policy() -> impl Strategy<Value = Option<BaselinePolicy>> {
    option::of(
        (
            cluster_subject(),
            baseline_rules(false),
            baseline_rules(true),
        )
            .prop_map(|(subject, ingress, egress)| BaselinePolicy {
                subject,
                ingress,
                egress,
            }),
    )
}

/// Up to 3 peer nodes with distinct names and addresses.
pub fn peer_nodes() -> impl Strategy<Value = Vec<PeerNode>> {
    btree_map(0u8..3, labels(), 0..=3)
        .prop_map(|m| {
            m.into_iter()
                .map(|(i, labels)| PeerNode {
                    name: format!("node-{}", (b'a' + i) as char),
                    addresses: vec![IpAddr::V4(Ipv4Addr::new(172, 18, 0, 10 + i))],
                    labels,
                })
                .collect::<Vec<_>>()
        })
        .prop_shuffle()
}

/// Up to 3 host endpoints, distinct names and (node, interface) pairs.
pub fn host_endpoints() -> impl Strategy<Value = Vec<HostEndpoint>> {
    btree_map(0usize..4, labels(), 0..=3)
        .prop_map(|m| {
            m.into_iter()
                .map(|(i, labels)| HostEndpoint {
                    name: format!("hep-{i}"),
                    node: ["node-a", "node-b"][i / 2].to_owned(),
                    interface_name: ["eth0", "*"][i % 2].to_owned(),
                    expected_ips: vec![IpAddr::V4(Ipv4Addr::new(172, 18, 0, 10 + i as u8))],
                    labels,
                })
                .collect::<Vec<_>>()
        })
        .prop_shuffle()
}

fn host_port() -> impl Strategy<Value = HostPort> {
    prop_oneof![
        (1u16..=60_000).prop_map(HostPort::Number),
        (1u16..=60_000, 0u16..=1000).prop_map(|(start, span)| HostPort::Range(PortRange {
            start,
            end: start + span
        })),
    ]
}

fn host_rule() -> impl Strategy<Value = HostRule> {
    host_rule_over(vec![
        net("198.51.100.0/24"),
        net("0.0.0.0/0"),
        net("2001:db8::/32"),
    ])
}

/// A host rule whose nets are up to 2 of `pool`.
fn host_rule_over(pool: Vec<IpNetwork>) -> impl Strategy<Value = HostRule> {
    let nets = subsequence(pool, 0..=2);
    (
        select(vec![HostAction::Allow, HostAction::Deny]),
        option::of(protocol()),
        nets.clone(),
        vec(host_port(), 0..=2),
        nets,
        vec(host_port(), 0..=2),
    )
        .prop_map(
            |(action, protocol, src_nets, src_ports, dst_nets, dst_ports)| {
                let mut rule = HostRule::new(action).from_nets(src_nets).to_nets(dst_nets);
                // Ports need a protocol.
                if let Some(p) = protocol {
                    rule = rule.protocol(p).from_ports(src_ports).to_ports(dst_ports);
                }
                rule
            },
        )
}

/// Up to 3 host policies with distinct names, of every kind (normal, applyOnForward,
/// pre-DNAT with ingress rules only, untracked).
pub fn host_policies() -> impl Strategy<Value = Vec<HostPolicy>> {
    host_policies_with(|| selector().boxed(), || host_rule().boxed())
}

/// Up to 3 host policies with distinct names, of every kind, selectors from `selector` and
/// rules from `rule`.
fn host_policies_with(
    selector: fn() -> BoxedStrategy<LabelSelector>,
    rule: fn() -> BoxedStrategy<HostRule>,
) -> impl Strategy<Value = Vec<HostPolicy>> {
    btree_set(0..NAMES.len(), 0..=3)
        .prop_flat_map(move |idxs| {
            idxs.into_iter()
                .map(|idx| {
                    (
                        option::of(0u32..5),
                        selector(),
                        subsequence(vec![PolicyType::Ingress, PolicyType::Egress], 0..=2),
                        vec(rule(), 0..=2),
                        vec(rule(), 0..=2),
                        0u8..4,
                    )
                        .prop_map(
                            move |(order, selector, types, ingress, egress, kind)| {
                                let mut p = HostPolicy::new(NAMES[idx], selector);
                                p.order = order;
                                p.types = types;
                                p.ingress = ingress;
                                p.egress = egress;
                                match kind {
                                    1 => p.on_forward(),
                                    2 => {
                                        let mut p = p.pre_dnat();
                                        p.egress.clear();
                                        p.types.retain(|t| *t == PolicyType::Ingress);
                                        p
                                    }
                                    3 => p.untracked(),
                                    _ => p,
                                }
                            },
                        )
                })
                .collect::<Vec<_>>()
        })
        .prop_shuffle()
}

/// The label of [`own_host_policy`]'s host endpoint.
pub const OWN_HOST_ENDPOINT_LABEL: (&str, &str) = ("hep", "own");

/// Host endpoint policy of the node [`node`] makes (`node-0`): its host endpoint on the
/// uplink (`eth0`) or on all interfaces (labelled [`OWN_HOST_ENDPOINT_LABEL`]), up to 3 host
/// policies of every kind (normal, applyOnForward, pre-DNAT, untracked; ingress, egress or
/// both) that mostly select it, with rules over the nets a node meets (its own addresses,
/// pods here and on other nodes, the service CIDRs, the outside, everything), and failsafe
/// ports: what a test of one node's programs needs ([`host_endpoints`] are other nodes').
pub fn own_host_policy() -> impl Strategy<Value = (HostEndpoint, Vec<HostPolicy>, FailsafePorts)> {
    let own = || {
        prop_oneof![
            3 => Just(LabelSelector::default().with_label(
                OWN_HOST_ENDPOINT_LABEL.0,
                OWN_HOST_ENDPOINT_LABEL.1
            )),
            1 => Just(LabelSelector::default()),
            1 => selector(),
        ]
        .boxed()
    };
    let rule = || {
        host_rule_over(vec![
            net("0.0.0.0/0"),
            net("::/0"),
            net("172.18.0.0/16"),
            net("fd00:18::/64"),
            net("10.244.0.0/24"),
            net("10.244.0.0/16"),
            net("fd00:244::/48"),
            net("10.96.0.0/12"),
            net("203.0.113.0/24"),
            net("100.64.0.0/10"),
            net("2001:db8::/32"),
        ])
        .boxed()
    };
    (
        any::<bool>(),
        host_policies_with(own, rule),
        failsafe_ports(),
    )
        .prop_map(|(all_interfaces, policies, failsafe)| {
            let endpoint = HostEndpoint::new(
                "hep-own",
                "node-0",
                if all_interfaces { "*" } else { "eth0" },
            )
            .with_label(OWN_HOST_ENDPOINT_LABEL.0, OWN_HOST_ENDPOINT_LABEL.1);
            (endpoint, policies, failsafe)
        })
}

/// Calico's defaults, none, or a few ports.
pub fn failsafe_ports() -> impl Strategy<Value = FailsafePorts> {
    prop_oneof![
        Just(FailsafePorts::default()),
        Just(FailsafePorts::none()),
        (btree_set(1u16..1000, 0..=2), btree_set(1u16..1000, 0..=2)).prop_map(|(i, o)| {
            FailsafePorts {
                inbound: i.into_iter().map(FailsafePort::tcp).collect(),
                outbound: o.into_iter().map(FailsafePort::udp).collect(),
            }
        }),
    ]
}

/// Cluster policies, baseline, peer nodes, host endpoints, host policies and failsafe ports.
pub type Tiers = (
    Vec<ClusterPolicy>,
    Option<BaselinePolicy>,
    Vec<PeerNode>,
    Vec<HostEndpoint>,
    Vec<HostPolicy>,
    FailsafePorts,
);

/// Every object of [`Tiers`], valid.
pub fn tiers() -> impl Strategy<Value = Tiers> {
    (
        cluster_policies(),
        baseline_policy(),
        peer_nodes(),
        host_endpoints(),
        host_policies(),
        failsafe_ports(),
    )
}

/// A whole valid state.
pub fn state() -> impl Strategy<Value = DesiredState> {
    (
        node(),
        services(),
        endpoints(),
        policies(),
        namespaces(),
        pods(),
        tiers(),
    )
        .prop_map(
            |(node, services, mut endpoints, policies, namespaces, pods, tiers)| {
                let (
                    cluster_policies,
                    baseline_policy,
                    nodes,
                    host_endpoints,
                    host_policies,
                    failsafe_ports,
                ) = tiers;
                // An endpoint's own namespace labels may not contradict a namespace object.
                for e in &mut endpoints {
                    if namespaces.iter().any(|n| n.name == e.name.namespace) {
                        e.namespace_labels.clear();
                    }
                }
                DesiredState {
                    api_version: API_VERSION.into(),
                    kind: KIND.into(),
                    node,
                    services,
                    endpoints,
                    policies,
                    namespaces,
                    pods,
                    cluster_policies,
                    baseline_policy,
                    nodes,
                    host_endpoints,
                    host_policies,
                    failsafe_ports,
                }
            },
        )
}

/// The state with services, endpoints and policies sorted by name: equality "up to order".
pub fn normalised(mut state: DesiredState) -> DesiredState {
    state.services.sort_by(|a, b| a.name.cmp(&b.name));
    state.endpoints.sort_by(|a, b| a.name.cmp(&b.name));
    state.policies.sort_by(|a, b| a.name.cmp(&b.name));
    state.namespaces.sort_by(|a, b| a.name.cmp(&b.name));
    state.pods.sort_by(|a, b| a.name.cmp(&b.name));
    state.cluster_policies.sort_by(|a, b| a.name.cmp(&b.name));
    state.nodes.sort_by(|a, b| a.name.cmp(&b.name));
    state.host_endpoints.sort_by(|a, b| a.name.cmp(&b.name));
    state.host_policies.sort_by(|a, b| a.name.cmp(&b.name));
    state
}

/// Names of a list of objects, for messages.
pub fn names<'a>(items: impl IntoIterator<Item = &'a ObjectName>) -> BTreeSet<String> {
    items.into_iter().map(ToString::to_string).collect()
}
