//! Desired states from fuzzer bytes (`arbitrary::Unstructured`), mirroring core's proptest
//! strategies (`crates/dataplane-core/tests/strategies/mod.rs`): every kind of frontend
//! (ClusterIP v4/v6/dual/headless, ExternalIP, LoadBalancer with source ranges, NodePort,
//! health-check NodePort), traffic policies, ClientIP affinity, ready/serving/terminating
//! backends with nodes, zones and weights, Random/Maglev selection, SNAT/DSR/Hybrid, the
//! masquerade settings, endpoints, NetworkPolicies, namespaces and peer pods, cluster policies
//! (Allow/Deny/Pass, every peer and port kind), a baseline, peer nodes, host endpoints, host
//! policies of every kind (normal, applyOnForward, pre-DNAT, untracked) and failsafe ports.
//!
//! [`state`] is valid by construction, like the strategies (names from a pool, each service's
//! addresses and NodePorts derived from its pool index). [`wild_state`] then breaks it in one
//! of a few ways validation must catch (duplicate names, port 0, a NodePort outside the range,
//! overlapping frontends, a zero weight, ...), so that the diff target also meets states that
//! do not validate. The bytes decide every choice; running out of bytes gives the smallest
//! choices (`Unstructured`'s convention), never an error.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use arbitrary::{Result, Unstructured};
use dataplane_core::{
    Backend, BackendSelection, BaselineAction, BaselinePolicy, ClusterAction, ClusterPeer,
    ClusterPolicy, ClusterPolicyRule, ClusterPolicySubject, ClusterPort, ClusterRule, DesiredState,
    Endpoint, ExternalMode, FailsafePort, FailsafePorts, HostAction, HostEndpoint, HostPolicy,
    HostPort, HostRule, Interfaces, IpBlock, LabelRequirement, LabelSelector, Masquerade,
    NamedPort, Namespace, NamespacedPods, Node, ObjectName, PeerNode, PeerPod, Policy, PolicyPeer,
    PolicyPort, PolicyRule, PolicyType, PortRange, PortRef, Protocol, SelectorOperator, Service,
    ServicePort, SessionAffinity, TrafficPolicy, API_VERSION, KIND,
};
use ipnetwork::IpNetwork;

/// Object names (valid DNS labels, some that YAML would misread unquoted); index `i` of a
/// service is its identity.
pub const NAMES: [&str; 8] = ["web", "true", "null", "123", "1e3", "no", "api-v2", "0x1f"];
const NAMESPACES: [&str; 4] = ["default", "kube-system", "yes", "007"];
const LABEL_KEYS: [&str; 4] = ["app", "true", "app.kubernetes.io/name", "123"];
const LABEL_VALUES: [&str; 8] = ["web", "", "yes", "null", "1.5", "~", "0x10", "-1"];
const PORT_NAMES: [&str; 3] = ["http", "dns", "metrics"];

fn net(s: &str) -> IpNetwork {
    s.parse().expect("generator CIDR")
}

fn pick<T: Clone>(u: &mut Unstructured, items: &[T]) -> Result<T> {
    u.choose(items).cloned()
}

/// The members of `items` the bytes keep, in order, at most `max`.
fn subset<T: Clone>(u: &mut Unstructured, items: &[T], max: usize) -> Result<Vec<T>> {
    let mut out = Vec::new();
    for item in items {
        if out.len() < max && u.arbitrary::<bool>()? {
            out.push(item.clone());
        }
    }
    Ok(out)
}

/// Indices of `0..n` the bytes pick, at most `max`, in an order the bytes pick.
fn indices(u: &mut Unstructured, n: usize, max: usize) -> Result<Vec<usize>> {
    let mut idx = subset(u, &(0..n).collect::<Vec<_>>(), max)?;
    shuffle(u, &mut idx)?;
    Ok(idx)
}

fn shuffle<T>(u: &mut Unstructured, items: &mut [T]) -> Result<()> {
    for i in (1..items.len()).rev() {
        let j = u.int_in_range(0..=i)?;
        items.swap(i, j);
    }
    Ok(())
}

fn protocol(u: &mut Unstructured) -> Result<Protocol> {
    pick(u, &Protocol::ALL)
}

fn traffic_policy(u: &mut Unstructured) -> Result<TrafficPolicy> {
    pick(u, &[TrafficPolicy::Cluster, TrafficPolicy::Local])
}

fn external_mode(u: &mut Unstructured) -> Result<ExternalMode> {
    pick(
        u,
        &[ExternalMode::Snat, ExternalMode::Dsr, ExternalMode::Hybrid],
    )
}

fn port(u: &mut Unstructured) -> Result<u16> {
    // Interesting ports more often than their share of 1..=65535.
    if u.arbitrary()? {
        pick(u, &[53u16, 80, 443, 8080, 30_000, 65_535, 1])
    } else {
        u.int_in_range(1..=u16::MAX)
    }
}

/// The node: fixed name and addresses (core's strategies' node), the settings that vary.
pub fn node(u: &mut Unstructured) -> Result<Node> {
    Ok(Node {
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
            enabled: u.arbitrary()?,
            all: u.arbitrary()?,
            non_masquerade_cidrs: subset(
                u,
                &[net("192.168.0.0/16"), net("fd00:1::/64"), net("0.0.0.0/0")],
                2,
            )?,
            all_services: u.arbitrary()?,
        },
        mtu: pick(u, &[1500u32, 9000, 1280])?,
        external_mode: external_mode(u)?,
    })
}

/// Up to 3 ports with distinct (protocol, port); NodePorts `30000 + 10 * idx + i`.
fn ports(u: &mut Unstructured, idx: usize) -> Result<Vec<ServicePort>> {
    let mut keys = BTreeSet::new();
    let n = u.int_in_range(1..=3)?;
    for _ in 0..n {
        keys.insert((protocol(u)?, port(u)?));
    }
    let named = keys.len() > 1 || u.arbitrary()?;
    let mut out = Vec::new();
    for (i, (protocol, port)) in keys.into_iter().enumerate() {
        let target_port = self::port(u)?;
        let node_port = u.arbitrary::<bool>()?;
        out.push(ServicePort {
            name: if named {
                format!("p{i}")
            } else {
                String::new()
            },
            protocol,
            port,
            target_port,
            node_port: node_port.then(|| 30_000 + 10 * idx as u16 + i as u16),
        });
    }
    Ok(out)
}

/// A backend; with `own_port` (a single-port service) it sometimes listens on a target port
/// of its own.
fn backend(u: &mut Unstructured, v6: bool, host: u8, own_port: bool) -> Result<Backend> {
    let terminating: bool = u.arbitrary()?;
    let ready: bool = u.int_in_range(0..=3)? != 0;
    let serving: bool = u.int_in_range(0..=3)? != 0;
    let ip = if v6 {
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0x244, 0, 0, 0, 0, 0, u16::from(host)))
    } else {
        IpAddr::V4(Ipv4Addr::new(10, 244, host % 3, host))
    };
    Ok(Backend {
        ip,
        // A terminating backend is never ready.
        ready: ready && !terminating,
        serving,
        terminating,
        node_name: pick(u, &[None, Some("node-0"), Some("node-1"), Some("node-2")])?
            .map(Into::into),
        zone: pick(u, &[None, Some("zone-a"), Some("zone-b")])?.map(Into::into),
        weight: pick(u, &[1u16, 1, 2, 5, 100, u16::MAX])?,
        port: if own_port && u.int_in_range(0..=3u8)? == 0 {
            Some(port(u)?)
        } else {
            None
        },
    })
}

/// Service number `idx` of the name pool.
#[allow(clippy::too_many_lines)]
pub fn service(u: &mut Unstructured, idx: usize) -> Result<Service> {
    // 0 v4, 1 v4, 2 v6, 3 dual, 4 headless (v4 twice: as in the strategies).
    let stack = u.int_in_range(0..=4u8)?;
    let external: bool = u.arbitrary()?;
    let lb: bool = u.arbitrary()?;
    let namespace = pick(u, &NAMESPACES)?;
    let n = idx as u8 + 1;
    let mut s = Service::new(ObjectName::new(namespace, NAMES[idx]));
    let v4 = IpAddr::V4(Ipv4Addr::new(10, 96, 0, n));
    let v6 = IpAddr::V6(Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, u16::from(n)));
    s.cluster_ips = match stack {
        0 | 1 => vec![v4],
        2 => vec![v6],
        3 => vec![v4, v6],
        _ => vec![],
    };
    if external {
        s.external_ips = vec![IpAddr::V4(Ipv4Addr::new(198, 51, 100, n))];
    }
    if lb {
        s.load_balancer_ips = vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, n))];
        s.load_balancer_source_ranges = subset(
            u,
            &[
                net("203.0.113.0/24"),
                net("198.51.100.0/24"),
                net("2001:db8::/32"),
                net("0.0.0.0/0"),
            ],
            3,
        )?;
    }
    s.ports = ports(u, idx)?;
    // NodePorts listen on both node addresses, so they accept both families.
    let any_node_port = s.ports.iter().any(|p| p.node_port.is_some());
    let has_v4 = any_node_port || external || lb || !matches!(stack, 2 | 4);
    let has_v6 = any_node_port || matches!(stack, 2 | 3);
    let headless = !has_v4 && !has_v6;
    let mut hosts = BTreeSet::new();
    for _ in 0..u.int_in_range(0..=5)? {
        let (is_v6, host) = (u.arbitrary::<bool>()?, u.int_in_range(1..=250u8)?);
        if (headless || if is_v6 { has_v6 } else { has_v4 }) && hosts.insert((is_v6, host)) {
            s.backends.push(backend(u, is_v6, host, s.ports.len() == 1)?);
        }
    }
    s.session_affinity = if u.arbitrary()? {
        SessionAffinity::ClientIp {
            timeout_seconds: pick(u, &[1u32, 10, 10_800, 86_400])?,
        }
    } else {
        SessionAffinity::None
    };
    s.external_traffic_policy = traffic_policy(u)?;
    s.internal_traffic_policy = traffic_policy(u)?;
    if s.external_traffic_policy == TrafficPolicy::Local && u.arbitrary()? {
        s.health_check_node_port = Some(32_000 + u16::from(n));
    }
    s.backend_selection = pick(u, &[BackendSelection::Random, BackendSelection::Maglev])?;
    s.external_mode = if u.arbitrary()? {
        Some(external_mode(u)?)
    } else {
        None
    };
    Ok(s)
}

fn labels(u: &mut Unstructured) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for _ in 0..u.int_in_range(0..=3)? {
        let key = pick(u, &LABEL_KEYS)?;
        let value = pick(u, &LABEL_VALUES)?;
        out.insert(key.to_owned(), value.to_owned());
    }
    Ok(out)
}

/// Named ports, the first of each name and protocol (a name given twice is invalid).
fn named_ports(u: &mut Unstructured, max: usize) -> Result<Vec<NamedPort>> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for _ in 0..u.int_in_range(0..=max)? {
        let (name, protocol, port) = (pick(u, &PORT_NAMES)?, protocol(u)?, self::port(u)?);
        if seen.insert((name, protocol)) {
            out.push(NamedPort::new(name, protocol, port));
        }
    }
    Ok(out)
}

fn endpoint(u: &mut Unstructured, idx: usize) -> Result<Endpoint> {
    let n = idx as u8 + 1;
    let mut ips = vec![IpAddr::V4(Ipv4Addr::new(10, 244, 0, 100 + n))];
    let namespace = pick(u, &NAMESPACES)?;
    if u.arbitrary()? {
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
    Ok(Endpoint {
        name: ObjectName::new(namespace, NAMES[idx]),
        interface: format!("veth{idx}"),
        ips,
        labels: labels(u)?,
        namespace_labels: labels(u)?,
        named_ports: named_ports(u, 2)?,
    })
}

fn selector(u: &mut Unstructured) -> Result<LabelSelector> {
    let match_labels = labels(u)?;
    let mut match_expressions = Vec::new();
    for _ in 0..u.int_in_range(0..=2)? {
        let key = pick(u, &LABEL_KEYS)?;
        let operator = pick(
            u,
            &[
                SelectorOperator::In,
                SelectorOperator::NotIn,
                SelectorOperator::Exists,
                SelectorOperator::DoesNotExist,
            ],
        )?;
        // In and NotIn need values, Exists and DoesNotExist take none.
        let values = match operator {
            SelectorOperator::In | SelectorOperator::NotIn => {
                let mut v: Vec<String> = subset(u, &LABEL_VALUES, 2)?
                    .into_iter()
                    .map(str::to_owned)
                    .collect();
                if v.is_empty() {
                    v.push(LABEL_VALUES[0].to_owned());
                }
                v
            }
            SelectorOperator::Exists | SelectorOperator::DoesNotExist => Vec::new(),
        };
        match_expressions.push(LabelRequirement {
            key: key.into(),
            operator,
            values,
        });
    }
    Ok(LabelSelector {
        match_labels,
        match_expressions,
    })
}

fn peer(u: &mut Unstructured) -> Result<PolicyPeer> {
    Ok(match u.int_in_range(0..=2u8)? {
        0 => PolicyPeer {
            pod_selector: Some(selector(u)?),
            ..PolicyPeer::default()
        },
        1 => PolicyPeer {
            pod_selector: Some(selector(u)?),
            namespace_selector: Some(selector(u)?),
            ip_block: None,
        },
        _ => PolicyPeer {
            ip_block: Some(pick(
                u,
                &[
                    IpBlock {
                        cidr: net("10.0.0.0/8"),
                        except: vec![net("10.1.0.0/16"), net("10.2.3.0/24")],
                    },
                    IpBlock {
                        cidr: net("0.0.0.0/0"),
                        except: vec![],
                    },
                    IpBlock {
                        cidr: net("2001:db8::/32"),
                        except: vec![net("2001:db8:1::/48")],
                    },
                    IpBlock {
                        cidr: net("10.244.0.0/16"),
                        except: vec![net("10.244.0.101/32")],
                    },
                ],
            )?),
            ..PolicyPeer::default()
        },
    })
}

fn policy_port(u: &mut Unstructured) -> Result<PolicyPort> {
    let protocol = protocol(u)?;
    Ok(match u.int_in_range(0..=2u8)? {
        0 => PolicyPort {
            protocol,
            port: None,
            end_port: None,
        },
        1 => PolicyPort {
            protocol,
            port: Some(PortRef::Name(pick(u, &PORT_NAMES)?.into())),
            end_port: None,
        },
        _ => {
            let port = u.int_in_range(1..=60_000u16)?;
            let span = if u.arbitrary()? {
                Some(port + u.int_in_range(0..=1000u16)?)
            } else {
                None
            };
            PolicyPort {
                protocol,
                port: Some(PortRef::Number(port)),
                end_port: span,
            }
        }
    })
}

fn rules(u: &mut Unstructured, max: usize) -> Result<Vec<PolicyRule>> {
    let mut out = Vec::new();
    for _ in 0..u.int_in_range(0..=max)? {
        let mut rule = PolicyRule::default();
        for _ in 0..u.int_in_range(0..=2)? {
            rule.peers.push(peer(u)?);
        }
        for _ in 0..u.int_in_range(0..=2)? {
            rule.ports.push(policy_port(u)?);
        }
        out.push(rule);
    }
    Ok(out)
}

fn policy(u: &mut Unstructured, idx: usize) -> Result<Policy> {
    Ok(Policy {
        name: ObjectName::new(pick(u, &NAMESPACES)?, NAMES[idx]),
        pod_selector: if u.arbitrary()? {
            LabelSelector::default()
        } else {
            selector(u)?
        },
        policy_types: subset(u, &[PolicyType::Ingress, PolicyType::Egress], 2)?,
        ingress: rules(u, 2)?,
        egress: rules(u, 1)?,
    })
}

/// A peer pod; its addresses (10.244.1.0/24) never collide with an endpoint's.
fn peer_pod(u: &mut Unstructured, idx: usize) -> Result<PeerPod> {
    Ok(PeerPod {
        name: ObjectName::new(pick(u, &NAMESPACES)?, format!("peer-{}", NAMES[idx])),
        ips: vec![IpAddr::V4(Ipv4Addr::new(10, 244, 1, idx as u8 + 1))],
        labels: labels(u)?,
        named_ports: named_ports(u, 1)?,
        node_name: pick(u, &[None, Some("node-b"), Some("node-c")])?.map(Into::into),
    })
}

fn namespaced_pods(u: &mut Unstructured) -> Result<NamespacedPods> {
    Ok(NamespacedPods {
        namespace_selector: selector(u)?,
        pod_selector: selector(u)?,
    })
}

fn cluster_subject(u: &mut Unstructured) -> Result<ClusterPolicySubject> {
    Ok(if u.arbitrary()? {
        ClusterPolicySubject::Namespaces(selector(u)?)
    } else {
        ClusterPolicySubject::Pods(namespaced_pods(u)?)
    })
}

/// A rule's name, peers (`nodes` and `networks` on egress only) and ports.
fn cluster_rule_parts(
    u: &mut Unstructured,
    egress: bool,
) -> Result<(String, Vec<ClusterPeer>, Vec<ClusterPort>)> {
    let name = pick(u, &NAMES)?.to_owned();
    let mut peers = Vec::new();
    for _ in 0..u.int_in_range(1..=2)? {
        let kinds = if egress { 3 } else { 1 };
        peers.push(match u.int_in_range(0..=kinds)? {
            0 => ClusterPeer::Namespaces(selector(u)?),
            1 => ClusterPeer::Pods(namespaced_pods(u)?),
            2 => ClusterPeer::Nodes(selector(u)?),
            _ => {
                let mut nets = subset(
                    u,
                    &[net("10.0.0.0/8"), net("0.0.0.0/0"), net("2001:db8::/32")],
                    2,
                )?;
                if nets.is_empty() {
                    nets.push(net("192.0.2.7/32"));
                }
                ClusterPeer::Networks(nets)
            }
        });
    }
    let mut ports = Vec::new();
    for _ in 0..u.int_in_range(0..=2)? {
        ports.push(match u.int_in_range(0..=2u8)? {
            0 => ClusterPort::PortNumber {
                protocol: protocol(u)?,
                port: port(u)?,
            },
            1 => ClusterPort::NamedPort(pick(u, &PORT_NAMES)?.to_owned()),
            _ => {
                let start = port(u)?;
                ClusterPort::PortRange {
                    protocol: protocol(u)?,
                    start,
                    end: start.saturating_add(u.int_in_range(0..=1000)?),
                }
            }
        });
    }
    Ok((name, peers, ports))
}

/// Up to 2 rules with actions from `actions` (`nodes` and `networks` peers on egress only).
fn tier_rules<A: Clone>(
    u: &mut Unstructured,
    egress: bool,
    actions: &[A],
) -> Result<Vec<ClusterRule<A>>> {
    let mut rules = Vec::new();
    for _ in 0..u.int_in_range(0..=2)? {
        let (name, peers, ports) = cluster_rule_parts(u, egress)?;
        rules.push(ClusterRule {
            name,
            action: pick(u, actions)?,
            peers,
            ports,
        });
    }
    Ok(rules)
}

fn cluster_policy(u: &mut Unstructured, idx: usize) -> Result<ClusterPolicy> {
    let mut p = ClusterPolicy::new(
        NAMES[idx],
        // Distinct by construction, inside 0..=1000.
        idx as u32 * 100 + u.int_in_range(0..=99)?,
        cluster_subject(u)?,
    );
    let actions = [
        ClusterAction::Allow,
        ClusterAction::Deny,
        ClusterAction::Pass,
    ];
    p.ingress = tier_rules(u, false, &actions)?;
    p.egress = tier_rules(u, true, &actions)?;
    Ok(p)
}

fn baseline_policy(u: &mut Unstructured) -> Result<BaselinePolicy> {
    let mut p = BaselinePolicy::new(cluster_subject(u)?);
    let actions = [BaselineAction::Allow, BaselineAction::Deny];
    p.ingress = tier_rules(u, false, &actions)?;
    p.egress = tier_rules(u, true, &actions)?;
    Ok(p)
}

fn host_ports(u: &mut Unstructured) -> Result<Vec<HostPort>> {
    let mut out = Vec::new();
    for _ in 0..u.int_in_range(0..=2)? {
        let start = port(u)?;
        out.push(if u.arbitrary()? {
            HostPort::Number(start)
        } else {
            HostPort::Range(PortRange {
                start,
                end: start.saturating_add(u.int_in_range(0..=1000)?),
            })
        });
    }
    Ok(out)
}

fn host_rule(u: &mut Unstructured) -> Result<HostRule> {
    let nets = [
        net("198.51.100.0/24"),
        net("0.0.0.0/0"),
        net("2001:db8::/32"),
    ];
    let mut rule = HostRule::new(pick(u, &[HostAction::Allow, HostAction::Deny])?)
        .from_nets(subset(u, &nets, 2)?)
        .to_nets(subset(u, &nets, 2)?);
    // Ports need a protocol.
    if u.arbitrary()? {
        rule = rule
            .protocol(protocol(u)?)
            .from_ports(host_ports(u)?)
            .to_ports(host_ports(u)?);
    }
    Ok(rule)
}

/// A host policy of any kind: normal, applyOnForward, pre-DNAT (ingress only), untracked.
fn host_policy(u: &mut Unstructured, idx: usize) -> Result<HostPolicy> {
    let mut p = HostPolicy::new(NAMES[idx], selector(u)?);
    p.order = pick(u, &[None, Some(0), Some(1), Some(10)])?;
    p.types = subset(u, &[PolicyType::Ingress, PolicyType::Egress], 2)?;
    for _ in 0..u.int_in_range(0..=2)? {
        p.ingress.push(host_rule(u)?);
    }
    for _ in 0..u.int_in_range(0..=2)? {
        p.egress.push(host_rule(u)?);
    }
    Ok(match u.int_in_range(0..=3u8)? {
        1 => p.on_forward(),
        2 => {
            let mut p = p.pre_dnat();
            p.egress.clear();
            p.types.retain(|t| *t == PolicyType::Ingress);
            p
        }
        3 => p.untracked(),
        _ => p,
    })
}

/// Host endpoint `i` of 0..4: distinct (node, interface) pairs.
fn host_endpoint(u: &mut Unstructured, i: usize) -> Result<HostEndpoint> {
    let mut e = HostEndpoint::new(
        format!("hep-{i}"),
        ["node-a", "node-b"][i / 2],
        ["eth0", "*"][i % 2],
    );
    e.labels = labels(u)?;
    Ok(e)
}

fn failsafe_ports(u: &mut Unstructured) -> Result<FailsafePorts> {
    Ok(match u.int_in_range(0..=2u8)? {
        0 => FailsafePorts::default(),
        1 => FailsafePorts::none(),
        _ => FailsafePorts {
            inbound: subset(u, &[FailsafePort::tcp(22), FailsafePort::udp(68)], 2)?,
            outbound: subset(u, &[FailsafePort::udp(53), FailsafePort::tcp(6443)], 2)?,
        },
    })
}

/// The cluster policies, baseline, peer nodes, host endpoints, host policies and failsafe
/// ports of [`state`].
fn tiers(u: &mut Unstructured, state: &mut DesiredState) -> Result<()> {
    for i in indices(u, NAMES.len(), 3)? {
        state.cluster_policies.push(cluster_policy(u, i)?);
    }
    if u.arbitrary()? {
        state.baseline_policy = Some(baseline_policy(u)?);
    }
    for i in indices(u, 3, 3)? {
        let mut n = PeerNode::new(
            format!("node-{}", (b'a' + i as u8) as char),
            [v4(172, 18, 0, 10 + i as u8)],
        );
        n.labels = labels(u)?;
        state.nodes.push(n);
    }
    for i in indices(u, 4, 3)? {
        state.host_endpoints.push(host_endpoint(u, i)?);
    }
    for i in indices(u, NAMES.len(), 3)? {
        state.host_policies.push(host_policy(u, i)?);
    }
    state.failsafe_ports = failsafe_ports(u)?;
    Ok(())
}

/// A valid state: up to 6 services, 4 endpoints, 3 policies, 3 namespaces and 4 peer pods,
/// each with a distinct pool name, in an order the bytes pick.
pub fn state(u: &mut Unstructured) -> Result<DesiredState> {
    let node = node(u)?;
    let mut state = DesiredState::new(node);
    for i in indices(u, NAMES.len(), 6)? {
        state.services.push(service(u, i)?);
    }
    for i in indices(u, NAMES.len(), 4)? {
        state.endpoints.push(endpoint(u, i)?);
    }
    for i in indices(u, NAMES.len(), 3)? {
        state.policies.push(policy(u, i)?);
    }
    for i in indices(u, NAMESPACES.len(), 3)? {
        state.namespaces.push(Namespace {
            name: NAMESPACES[i].to_owned(),
            labels: labels(u)?,
        });
    }
    for i in indices(u, NAMES.len(), 4)? {
        state.pods.push(peer_pod(u, i)?);
    }
    tiers(u, &mut state)?;
    // Random selectors rarely match an endpoint's random labels: like the differential test,
    // some policies select every pod of an endpoint's namespace instead, so that endpoints
    // are isolated (and the renderers write policy chains and sets). A name taken there
    // already keeps its policy as it was.
    for i in 0..state.policies.len() {
        let Some(ns) = state.endpoints.get(i).map(|e| e.name.namespace.clone()) else {
            break;
        };
        if u.arbitrary()? {
            let p = &mut state.policies[i];
            p.pod_selector = LabelSelector::default();
            p.name.namespace = ns;
        }
    }
    let mut names = BTreeSet::new();
    state.policies.retain(|p| names.insert(p.name.clone()));
    // An endpoint's own namespace labels may not contradict a namespace object.
    for e in &mut state.endpoints {
        if state.namespaces.iter().any(|n| n.name == e.name.namespace) {
            e.namespace_labels.clear();
        }
    }
    debug_assert_eq!(
        (state.api_version.as_str(), state.kind.as_str()),
        (API_VERSION, KIND)
    );
    Ok(state)
}

/// [`state`], then (when the bytes say so) broken in one of the ways validation must catch,
/// or changed in a way it must accept.
pub fn wild_state(u: &mut Unstructured) -> Result<DesiredState> {
    let mut s = state(u)?;
    let how = u.int_in_range(0..=21u8)?;
    let svc = if s.services.is_empty() {
        None
    } else {
        Some(u.choose_index(s.services.len())?)
    };
    match (how, svc) {
        (1, Some(i)) => {
            let dup = s.services[i].clone();
            s.services.push(dup);
        }
        (2, Some(i)) => s.services[i].ports[0].port = 0,
        (3, Some(i)) => s.services[i].ports[0].node_port = Some(u.arbitrary()?),
        (4, Some(i)) => {
            // Another service's ClusterIP, or one outside the service CIDRs.
            s.services[i].cluster_ips = vec![pick(
                u,
                &[v4(10, 96, 0, 1), v4(10, 96, 0, 2), v4(8, 8, 8, 8)],
            )?];
        }
        (5, Some(i)) => {
            if let Some(b) = s.services[i].backends.first_mut() {
                b.weight = 0;
            }
        }
        (20, Some(i)) => {
            // A backend's own port of 0, or one in a multi-port service.
            let svc = &mut s.services[i];
            let several = svc.ports.len() > 1;
            if let Some(b) = svc.backends.first_mut() {
                b.port = Some(if several { port(u)? } else { 0 });
            }
        }
        (6, Some(i)) => {
            s.services[i].session_affinity = SessionAffinity::ClientIp {
                timeout_seconds: pick(u, &[0u32, 86_401, u32::MAX])?,
            };
        }
        (7, Some(i)) => {
            s.services[i].name.name = pick(u, &["", "UPPER", "a_b", "-x"])?.into();
        }
        (8, _) => {
            s.node.node_port_range = PortRange {
                start: 30_005,
                end: 30_000,
            }
        }
        (9, _) => s.node.addresses.clear(),
        (10, _) => {
            if let Some(e) = s.endpoints.first().cloned() {
                // A second endpoint with the same addresses.
                let mut twin = e;
                twin.name.name = "twin".into();
                twin.interface = "veth9".into();
                s.endpoints.push(twin);
            }
        }
        (11, _) => {
            if let Some(p) = s.policies.first_mut() {
                p.ingress.push(PolicyRule {
                    peers: vec![],
                    ports: vec![PolicyPort {
                        protocol: Protocol::Tcp,
                        port: Some(PortRef::Number(100)),
                        end_port: Some(u.int_in_range(0..=99)?),
                    }],
                });
            }
        }
        (12, _) => s.node.mtu = u.arbitrary()?,
        (13, _) => {
            if let Some(n) = s.namespaces.first().cloned() {
                s.namespaces.push(n);
            }
        }
        (14, Some(i)) => {
            s.services[i].load_balancer_source_ranges = vec![net("10.0.0.0/8")];
            s.services[i]
                .backends
                .push(Backend::new(v4(10, 244, 0, 1)).terminating());
        }
        (15, _) => {
            if let Some(p) = s.cluster_policies.first().cloned() {
                // Another policy at the same priority, or a priority out of range.
                let mut twin = p;
                twin.name = "twin".into();
                if u.arbitrary()? {
                    twin.priority = 1001;
                }
                s.cluster_policies.push(twin);
            }
        }
        (16, _) => {
            if let Some(p) = s.host_policies.first_mut() {
                // preDNAT with an egress rule, or doNotTrack without applyOnForward.
                if u.arbitrary()? {
                    p.pre_dnat = true;
                    p.apply_on_forward = true;
                    p.do_not_track = false;
                    p.egress.push(HostRule::new(HostAction::Deny));
                } else {
                    p.do_not_track = true;
                    p.pre_dnat = false;
                    p.apply_on_forward = false;
                }
            }
        }
        (17, _) => {
            if let Some(p) = s.cluster_policies.first_mut() {
                // A networks peer on ingress.
                p.ingress.push(ClusterPolicyRule::new(
                    "in",
                    ClusterAction::Deny,
                    [ClusterPeer::Networks(vec![net("10.0.0.0/8")])],
                ));
            }
        }
        (18, _) => {
            if let Some(p) = s.host_policies.first_mut() {
                // Ports without a protocol.
                let mut rule = HostRule::new(HostAction::Allow);
                rule.destination.ports.push(HostPort::Number(22));
                p.ingress.push(rule);
            }
        }
        (19, _) => {
            if let Some(e) = s.host_endpoints.first().cloned() {
                // A second endpoint for the same interface.
                let mut twin = e;
                twin.name = "twin".into();
                s.host_endpoints.push(twin);
            }
        }
        _ => {}
    }
    Ok(s)
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

/// A second state for a diff from `a`: `a` reordered, `a` with a few small changes, or an
/// unrelated state (like the pairs of core's diff tests).
pub fn next_state(u: &mut Unstructured, a: &DesiredState) -> Result<DesiredState> {
    let mut b = a.clone();
    match u.int_in_range(0..=3u8)? {
        0 => {
            shuffle(u, &mut b.services)?;
            shuffle(u, &mut b.endpoints)?;
            shuffle(u, &mut b.policies)?;
            shuffle(u, &mut b.namespaces)?;
            shuffle(u, &mut b.pods)?;
            shuffle(u, &mut b.cluster_policies)?;
            shuffle(u, &mut b.nodes)?;
            shuffle(u, &mut b.host_endpoints)?;
            shuffle(u, &mut b.host_policies)?;
        }
        1 | 2 => {
            for _ in 0..u.int_in_range(1..=4)? {
                mutate(u, &mut b)?;
            }
        }
        _ => b = wild_state(u)?,
    }
    Ok(b)
}

/// One small change of the kind a watch event brings.
fn mutate(u: &mut Unstructured, s: &mut DesiredState) -> Result<()> {
    match u.int_in_range(0..=13u8)? {
        0 => s.node = node(u)?,
        10 => {
            let i = u.int_in_range(0..=NAMES.len() - 1)?;
            let new = cluster_policy(u, i)?;
            s.cluster_policies.retain(|x| x.name != NAMES[i]);
            s.cluster_policies.push(new);
        }
        11 => {
            let i = u.int_in_range(0..=NAMES.len() - 1)?;
            let new = host_policy(u, i)?;
            s.host_policies.retain(|x| x.name != NAMES[i]);
            s.host_policies.push(new);
        }
        12 => {
            s.baseline_policy = if u.arbitrary()? {
                Some(baseline_policy(u)?)
            } else {
                None
            };
        }
        13 => {
            s.failsafe_ports = failsafe_ports(u)?;
            if let Some(e) = pick_mut(u, &mut s.host_endpoints)? {
                e.labels = labels(u)?;
            }
        }
        1 => {
            let i = u.int_in_range(0..=NAMES.len() - 1)?;
            let new = service(u, i)?;
            // Replaces the service of that name, or adds it.
            s.services.retain(|x| x.name.name != NAMES[i]);
            s.services.push(new);
        }
        2 => {
            if !s.services.is_empty() {
                let i = u.choose_index(s.services.len())?;
                s.services.remove(i);
            }
        }
        3 => {
            if let Some(svc) = pick_mut(u, &mut s.services)? {
                if let Some(b) = pick_mut(u, &mut svc.backends)? {
                    *b = b.clone().terminating();
                }
            }
        }
        4 => {
            if let Some(svc) = pick_mut(u, &mut s.services)? {
                svc.backends.clear();
            }
        }
        5 => {
            let i = u.int_in_range(0..=NAMES.len() - 1)?;
            let mut new = endpoint(u, i)?;
            s.endpoints.retain(|x| x.name.name != NAMES[i]);
            if s.namespaces.iter().any(|n| n.name == new.name.namespace) {
                new.namespace_labels.clear();
            }
            s.endpoints.push(new);
        }
        6 => {
            let i = u.int_in_range(0..=NAMES.len() - 1)?;
            let new = policy(u, i)?;
            s.policies.retain(|x| x.name.name != NAMES[i]);
            s.policies.push(new);
        }
        7 => {
            if let Some(n) = pick_mut(u, &mut s.namespaces)? {
                n.labels = labels(u)?;
            }
        }
        8 => {
            if let Some(p) = pick_mut(u, &mut s.pods)? {
                p.labels = labels(u)?;
            }
        }
        _ => {
            if let Some(svc) = pick_mut(u, &mut s.services)? {
                svc.ports[0].target_port = port(u)?;
                svc.external_traffic_policy = traffic_policy(u)?;
                // A rolling update moving a named port: one backend's own number changes.
                if svc.ports.len() == 1 {
                    if let Some(b) = pick_mut(u, &mut svc.backends)? {
                        b.port = if u.arbitrary()? { Some(port(u)?) } else { None };
                    }
                }
            }
        }
    }
    Ok(())
}

fn pick_mut<'a, T>(u: &mut Unstructured, items: &'a mut [T]) -> Result<Option<&'a mut T>> {
    if items.is_empty() {
        return Ok(None);
    }
    let i = u.choose_index(items.len())?;
    Ok(items.get_mut(i))
}

/// The state with every list sorted by name: equality up to order (`apply_to` keeps the
/// order of the objects that stay and appends additions in name order).
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
