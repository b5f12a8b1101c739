//! Synthetic states of any size, for benchmarks and scale tests.
//!
//! Deterministic: the same arguments give the same state. Service `i` gets ClusterIP
//! `10.96.x.y` (counting up from 10.96.0.10), TCP port 80 → 8080, NodePort `30000 + i` while
//! that fits the default range, and `backends` backends spread over `10.244.0.0/16`.
//!
//! [`policies`] adds NetworkPolicies, the peer pods they select and those pods' namespaces,
//! all selecting one target (see there for the layout).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::LazyLock;

use ipnetwork::{IpNetwork, Ipv4Network};

use crate::model::{
    Backend, DesiredState, ExternalMode, Interfaces, IpBlock, LabelSelector, Masquerade, Namespace,
    Node, ObjectName, PeerPod, Policy, PolicyPeer, PolicyPort, PolicyRule, PolicyType, PortRange,
    PortRef, Protocol, Service, ServicePort, ThinStr,
};

/// A node named `node-0` with the lab's addressing.
pub fn node() -> Node {
    Node {
        name: "node-0".to_owned(),
        addresses: vec![IpAddr::V4(Ipv4Addr::new(172, 18, 0, 10))],
        pod_cidrs: vec!["10.244.0.0/24".parse().expect("literal CIDR")],
        cluster_cidrs: vec!["10.244.0.0/16".parse().expect("literal CIDR")],
        service_cidrs: vec!["10.96.0.0/12".parse().expect("literal CIDR")],
        node_port_range: PortRange::default(),
        interfaces: Interfaces {
            uplink: "eth0".to_owned(),
        },
        masquerade: Masquerade::default(),
        mtu: 1500,
        external_mode: ExternalMode::Snat,
    }
}

/// The ClusterIP of synthetic service `i`.
pub fn cluster_ip(i: usize) -> IpAddr {
    let n = 10 + i as u32;
    IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + n))
}

/// The node names backends run on: one string per node, shared, as an agent builds them.
static NODES: LazyLock<[ThinStr; 3]> =
    LazyLock::new(|| ["node-0".into(), "node-1".into(), "node-2".into()]);

/// Synthetic service `i` with `backends` backends.
pub fn service(i: usize, backends: usize) -> Service {
    let mut s = Service::new(ObjectName::new("bench", format!("svc-{i}")));
    s.cluster_ips = vec![cluster_ip(i)];
    let node_port = u16::try_from(30000 + i).ok().filter(|p| *p <= 32767);
    s.ports = vec![ServicePort {
        name: String::new(),
        protocol: Protocol::Tcp,
        port: 80,
        target_port: 8080,
        node_port,
    }];
    s.backends = (0..backends)
        .map(|b| {
            let n = (i * backends + b) as u32 % 65_000 + 2;
            let ip = IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 0, 0)) + n));
            let mut be = Backend::new(ip);
            be.node_name = Some(NODES[b % 3].clone());
            be
        })
        .collect();
    // Backend addresses repeat after 65k; keep them unique within the service.
    s.backends.dedup_by(|a, b| a.ip == b.ip);
    s
}

/// A state with `services` services of `backends` backends each.
pub fn state(services: usize, backends: usize) -> DesiredState {
    let mut st = DesiredState::new(node());
    st.services = (0..services).map(|i| service(i, backends)).collect();
    st
}

/// Label key of the synthetic namespaces' team (what the policies' `namespaceSelector`s pick).
pub const TEAM_LABEL: &str = "team";
/// Label key of the synthetic peer pods' role (what the policies' `podSelector`s pick).
pub const ROLE_LABEL: &str = "role";
/// Namespaces the synthetic peer pods are spread over (`peers-0` ..).
pub const PEER_NAMESPACES: usize = 100;
/// Distinct `team` values (namespace `peers-i` has `team-{i % TEAMS}`).
const TEAMS: usize = 10;
/// Distinct `role` values of the peer pods.
const ROLES: usize = 10;
/// Distinct ipBlocks the policies cycle through.
const BLOCKS: usize = 10;

/// NetworkPolicy objects of a synthetic state: see [`policies`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PolicyState {
    /// The policies, `policy-0` .. in the target namespace.
    pub policies: Vec<Policy>,
    /// The peer pods (pods of other nodes), `peers-*/peer-0` ..
    pub pods: Vec<PeerPod>,
    /// The peers' namespaces with their `team` labels, and the target namespace (`team-0`).
    pub namespaces: Vec<Namespace>,
}

impl PolicyState {
    /// Appends the policies, peer pods and namespaces to `state`.
    pub fn add_to(self, state: &mut DesiredState) {
        state.policies.extend(self.policies);
        state.pods.extend(self.pods);
        state.namespaces.extend(self.namespaces);
    }
}

/// The `(team, role)` label values of the pods policy `k` of [`policies`] admits: a pod whose
/// namespace has `team=<team>` and that has `role=<role>` is allowed by policy `k`, to and
/// from the selected pods, on TCP port `port + k / 100`.
pub fn admitted(k: usize) -> (String, String) {
    (
        format!("team-{}", k % TEAMS),
        format!("role-{}", (k / TEAMS) % ROLES),
    )
}

/// The address of synthetic peer pod `j`: counting up from 10.244.128.1 (in the cluster CIDR
/// of [`node`], above the pod CIDRs of small labs: node `i` has `10.244.i.0/24`).
pub fn peer_ip(j: usize) -> IpAddr {
    let n = 1 + j as u32;
    IpAddr::V4(Ipv4Addr::from(
        u32::from(Ipv4Addr::new(10, 244, 128, 0)).wrapping_add(n),
    ))
}

/// `n_policies` network policies over `n_peers` peer pods, every policy selecting the pods of
/// namespace `namespace` that `target` selects: a state where one pod is selected by every
/// policy (the worst case for a per-connection lookup), with selectors that repeat as they
/// do in clusters.
///
/// - Peer pod `j` is `peers-{j % 100}/peer-{j}` at [`peer_ip`]`(j)` on `node-1` or `node-2`,
///   labelled `role=role-{(j / 100) % 10}`; namespace `peers-i` is labelled
///   `team=team-{i % 10}`. So there are 100 `(team, role)` groups of `n_peers / 100` pods.
/// - Policy `k` (`namespace/policy-{k}`) isolates the selected pods for ingress and egress and
///   allows, both ways, the group [`admitted`]`(k)` (a `namespaceSelector` and a
///   `podSelector` in one peer) on TCP port `port + k / 100` (saturating): 100 distinct peer
///   selectors, and every policy one distinct `(selector, port)` allow entry, so the selected
///   pods' tables hold `n_policies` entries per direction. Every tenth policy also allows
///   one of 10 ipBlocks (`100.64.b.0/24` except `100.64.b.0/28`) on the same port.
/// - `namespace` itself gets a [`Namespace`] labelled `team=team-0` (unless it is one of the
///   peers' namespaces): its pods labelled `role=role-0` are admitted by policy 0 on `port`.
///
/// ```
/// use dataplane_core::synthetic;
/// let target = dataplane_core::LabelSelector::default(); // every pod of the namespace
/// let p = synthetic::policies(1_000, 10_000, "default", &target, 8080);
/// assert_eq!((p.policies.len(), p.pods.len(), p.namespaces.len()), (1_000, 10_000, 101));
/// ```
pub fn policies(
    n_policies: usize,
    n_peers: usize,
    namespace: &str,
    target: &LabelSelector,
    port: u16,
) -> PolicyState {
    let mut namespaces: Vec<Namespace> = (0..PEER_NAMESPACES.min(n_peers))
        .map(|i| {
            Namespace::new(format!("peers-{i}"))
                .with_label(TEAM_LABEL, format!("team-{}", i % TEAMS))
        })
        .collect();
    if !namespaces.iter().any(|n| n.name == namespace) {
        namespaces.push(Namespace::new(namespace).with_label(TEAM_LABEL, "team-0"));
    }
    let pods = (0..n_peers)
        .map(|j| {
            let mut pod = PeerPod::new(
                ObjectName::new(
                    format!("peers-{}", j % PEER_NAMESPACES),
                    format!("peer-{j}"),
                ),
                [peer_ip(j)],
            )
            .with_label(
                ROLE_LABEL,
                format!("role-{}", (j / PEER_NAMESPACES) % ROLES),
            );
            pod.node_name = Some(NODES[1 + j % 2].clone());
            pod
        })
        .collect();
    let policies = (0..n_policies)
        .map(|k| policy(k, namespace, target, port))
        .collect();
    PolicyState {
        policies,
        pods,
        namespaces,
    }
}

/// Policy `k` of [`policies`].
fn policy(k: usize, namespace: &str, target: &LabelSelector, port: u16) -> Policy {
    let (team, role) = admitted(k);
    let mut peers = vec![PolicyPeer {
        namespace_selector: Some(selector(TEAM_LABEL, team)),
        pod_selector: Some(selector(ROLE_LABEL, role)),
        ip_block: None,
    }];
    if k % 10 == 9 {
        let b = ((k / 10) % BLOCKS) as u8;
        peers.push(PolicyPeer {
            ip_block: Some(IpBlock {
                cidr: IpNetwork::V4(
                    Ipv4Network::new(Ipv4Addr::new(100, 64, b, 0), 24).expect("/24"),
                ),
                except: vec![IpNetwork::V4(
                    Ipv4Network::new(Ipv4Addr::new(100, 64, b, 0), 28).expect("/28"),
                )],
            }),
            ..PolicyPeer::default()
        });
    }
    let offset = u16::try_from(k / 100).unwrap_or(u16::MAX);
    let allow = PolicyRule {
        peers,
        ports: vec![PolicyPort {
            protocol: Protocol::Tcp,
            port: Some(PortRef::Number(port.saturating_add(offset))),
            end_port: None,
        }],
    };
    Policy {
        name: ObjectName::new(namespace, format!("policy-{k}")),
        pod_selector: target.clone(),
        policy_types: vec![PolicyType::Ingress, PolicyType::Egress],
        ingress: vec![allow.clone()],
        egress: vec![allow],
    }
}

/// `key=value` as a selector.
fn selector(key: &str, value: String) -> LabelSelector {
    LabelSelector {
        match_labels: std::iter::once((key.to_owned(), value)).collect(),
        match_expressions: Vec::new(),
    }
}

/// States a backend without cluster or host endpoint policy must refuse, each with the object
/// its [`crate::Error::Unsupported`] names: `base` plus `service` plus, in turn, a deny-all
/// cluster policy (`cluster policy deny-all`), a baseline (`baseline policy`), and a host
/// endpoint on the node's uplink with a deny-all host policy (`host endpoint uplink`). The
/// rejected-apply tests of every backend use them: the service shows that nothing of a
/// refused state is programmed.
pub fn tier_refusals(base: &DesiredState, service: Service) -> Vec<(DesiredState, String)> {
    use crate::model::{
        BaselineAction, BaselinePolicy, BaselineRule, ClusterAction, ClusterPeer, ClusterPolicy,
        ClusterPolicyRule, ClusterPolicySubject, HostEndpoint, HostPolicy,
    };
    let everyone = || ClusterPeer::Namespaces(LabelSelector::default());
    let with_service = base.clone().with_service(service);
    vec![
        (
            with_service.clone().with_cluster_policy(
                ClusterPolicy::for_namespaces("deny-all", 0, LabelSelector::default())
                    .with_ingress(ClusterPolicyRule::new(
                        "all",
                        ClusterAction::Deny,
                        [everyone()],
                    )),
            ),
            "cluster policy deny-all".to_owned(),
        ),
        (
            with_service.clone().with_baseline_policy(
                BaselinePolicy::new(ClusterPolicySubject::Namespaces(LabelSelector::default()))
                    .with_ingress(BaselineRule::new("all", BaselineAction::Deny, [everyone()])),
            ),
            "baseline policy".to_owned(),
        ),
        (
            with_service
                .with_host_endpoint(
                    HostEndpoint::new("uplink", &base.node.name, &base.node.interfaces.uplink)
                        .with_label("role", "uplink"),
                )
                .with_host_policy(
                    HostPolicy::new(
                        "deny-all",
                        LabelSelector::default().with_label("role", "uplink"),
                    )
                    .with_types([PolicyType::Ingress, PolicyType::Egress]),
                ),
            "host endpoint uplink".to_owned(),
        ),
    ]
}

/// `base` with the objects of [`tier_invalid_changes`].
fn with_tiers(base: &DesiredState) -> DesiredState {
    use crate::model::{
        BaselineAction, BaselinePolicy, BaselineRule, ClusterAction, ClusterPeer, ClusterPolicy,
        ClusterPolicyRule, ClusterPolicySubject, FailsafePort, FailsafePorts, HostAction,
        HostEndpoint, HostPolicy, HostRule, PeerNode,
    };
    let everyone = || ClusterPeer::Namespaces(LabelSelector::default());
    let all = || ClusterPolicySubject::Namespaces(LabelSelector::default());
    let uplink = &base.node.interfaces.uplink;
    let mut tiered = base
        .clone()
        .with_cluster_policy(ClusterPolicy::new("allow-all", 10, all()).with_ingress(
            ClusterPolicyRule::new("all", ClusterAction::Allow, [everyone()]),
        ))
        .with_cluster_policy(ClusterPolicy::new("pass-all", 20, all()).with_egress(
            ClusterPolicyRule::new("all", ClusterAction::Pass, [everyone()]),
        ))
        .with_baseline_policy(BaselinePolicy::new(all()).with_ingress(BaselineRule::new(
            "all",
            BaselineAction::Allow,
            [everyone()],
        )))
        .with_peer_node(PeerNode::new(
            "node-b",
            [IpAddr::V4(Ipv4Addr::new(172, 18, 0, 99))],
        ))
        .with_host_endpoint(
            HostEndpoint::new("uplink", &base.node.name, uplink).with_label("role", "uplink"),
        )
        .with_host_policy(
            HostPolicy::new(
                "block",
                LabelSelector::default().with_label("role", "uplink"),
            )
            .untracked()
            .with_ingress(
                HostRule::new(HostAction::Deny)
                    .from_nets(["198.51.100.0/24".parse().expect("literal CIDR")]),
            ),
        );
    tiered.failsafe_ports = FailsafePorts {
        inbound: vec![FailsafePort::tcp(22)],
        outbound: vec![],
    };
    tiered
}

/// `base` with an object of each policy tier (cluster policies `allow-all` at priority 10 and
/// `pass-all` at 20, a baseline allowing all, peer node `node-b`, host endpoint `uplink` for
/// the node's uplink, untracked host policy `block` denying 198.51.100.0/24, failsafe TCP
/// 22), none of which stops traffic between the lab's pods; and states that change those
/// objects into ones validation refuses, each with the error it names (object and field):
/// what the backends' tests hand to `apply_changes` to see a refused tier change leave the
/// kernel as it was, and core's tests to the incremental validator.
pub fn tier_invalid_changes(
    base: &DesiredState,
) -> (DesiredState, Vec<(DesiredState, crate::ValidationError)>) {
    use crate::model::{ClusterPeer, ClusterPolicy, ClusterPolicySubject, FailsafePort};
    use crate::ValidationError as V;
    let all = || ClusterPolicySubject::Namespaces(LabelSelector::default());
    let tiered = with_tiers(base);
    let uplink = &base.node.interfaces.uplink;
    let changed = |f: &dyn Fn(&mut DesiredState)| {
        let mut s = tiered.clone();
        f(&mut s);
        s
    };
    let cases = vec![
        (
            changed(&|s| {
                let twin = ClusterPolicy::new("twin", 10, all());
                s.cluster_policies.push(twin);
            }),
            V::Duplicate {
                object: "cluster policy twin".into(),
                field: "priority".into(),
                value: "10 (also the priority of cluster policy allow-all)".into(),
            },
        ),
        (
            changed(&|s| s.cluster_policies[1].priority = 1001),
            V::OutOfRange {
                object: "cluster policy pass-all".into(),
                field: "priority".into(),
                value: 1001,
                min: 0,
                max: 1000,
            },
        ),
        (
            changed(&|s| {
                if let Some(b) = &mut s.baseline_policy {
                    b.ingress[0].peers = vec![ClusterPeer::Networks(vec!["10.0.0.0/8"
                        .parse()
                        .expect("literal CIDR")])];
                }
            }),
            V::Inconsistent {
                object: "baseline policy".into(),
                field: "ingress[0].peers[0].networks".into(),
                reason: "networks peers are egress peers only",
            },
        ),
        (
            changed(&|s| s.nodes[0].addresses = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]),
            V::InvalidAddress {
                object: "peer node node-b".into(),
                field: "addresses[0]".into(),
                address: IpAddr::V4(Ipv4Addr::LOCALHOST),
                reason: "loopback",
            },
        ),
        (
            changed(&|s| {
                let mut twin = s.host_endpoints[0].clone();
                twin.name = "uplink-2".into();
                s.host_endpoints.push(twin);
            }),
            V::Duplicate {
                object: "host endpoint uplink-2".into(),
                field: "interfaceName".into(),
                value: format!(
                    "{uplink} on node {} (also host endpoint uplink)",
                    base.node.name
                ),
            },
        ),
        (
            changed(&|s| s.host_policies[0].pre_dnat = true),
            V::Inconsistent {
                object: "host policy block".into(),
                field: "preDNAT".into(),
                reason: "a policy cannot be both preDNAT and doNotTrack",
            },
        ),
        (
            changed(&|s| s.failsafe_ports.inbound.push(FailsafePort::tcp(22))),
            V::Duplicate {
                object: "failsafe ports".into(),
                field: "inbound[1]".into(),
                value: "TCP 22".into(),
            },
        ),
    ];
    (tiered, cases)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Endpoint;
    use crate::policy_tables::compile;

    /// The node of [`state`] with two local pods in `default`: `a` (selected by the policies,
    /// `role` as given) and `b` (not selected).
    fn with_pods(role_a: &str, n_policies: usize, n_peers: usize) -> DesiredState {
        let mut st = state(0, 0);
        let ip = |s: &str| s.parse::<IpAddr>().expect("literal address");
        st.endpoints = vec![
            Endpoint::new(
                ObjectName::new("default", "a"),
                "veth-a",
                [ip("10.244.0.10")],
            )
            .with_label("bench", "target")
            .with_label(ROLE_LABEL, role_a),
            Endpoint::new(
                ObjectName::new("default", "b"),
                "veth-b",
                [ip("10.244.0.11")],
            ),
        ];
        let target = selector("bench", "target".to_owned());
        policies(n_policies, n_peers, "default", &target, 8080).add_to(&mut st);
        st
    }

    #[test]
    fn policies_are_valid_deterministic_and_one_entry_each() {
        let st = with_pods("role-0", 1_000, 2_000);
        crate::validate(&st).expect("the synthetic policy state is valid");
        assert_eq!(st, with_pods("role-0", 1_000, 2_000));
        let compiled = compile(&st);
        let a = &compiled.endpoints[&ObjectName::new("default", "a")];
        // One (selector, port) entry per policy, plus one per distinct (ipBlock, port).
        let sets = |t: &crate::policy_tables::DirectionTable| {
            t.entries
                .iter()
                .filter(|e| matches!(e.peer, crate::policy_tables::Peer::Set(_)))
                .count()
        };
        assert!(a.ingress.isolated && a.egress.isolated);
        assert_eq!(sets(&a.ingress), 1_000);
        assert_eq!(sets(&a.egress), 1_000);
        // 100 (team, role) groups of 20 peers each, and pod a (team-0 / role-0) in one.
        assert_eq!(compiled.sets.len(), 100);
        let mut sizes: Vec<usize> = compiled.sets.values().map(|s| s.members.len()).collect();
        sizes.sort_unstable();
        assert_eq!((sizes[0], sizes[98], sizes[99]), (20, 20, 21));
        let b = &compiled.endpoints[&ObjectName::new("default", "b")];
        assert!(!b.ingress.isolated && !b.egress.isolated);
    }

    #[test]
    fn admitted_groups_are_what_the_policies_allow() {
        let st = with_pods("role-0", 300, 1_000);
        let compiled = compile(&st);
        let a = ObjectName::new("default", "a");
        let allows = |peer: IpAddr, port: u16| {
            compiled
                .allows(&a, PolicyType::Ingress, peer, Protocol::Tcp, port)
                .expect("a is local")
        };
        // Peer 0 is team-0 / role-0: policy 0 (port 8080), policy 100 (8081), 200 (8082).
        assert_eq!(admitted(0), ("team-0".to_owned(), "role-0".to_owned()));
        assert!(allows(peer_ip(0), 8080) && allows(peer_ip(0), 8082));
        assert!(!allows(peer_ip(0), 8083));
        // Peer 1 is team-1 / role-0: policies 1, 101 and 201 (k % 10 == 1, (k / 10) % 10 == 0).
        assert!(allows(peer_ip(1), 8080) && !allows(peer_ip(2), 8079));
        // Pod b (team-0 through the target namespace, no role) is admitted by none.
        assert!(!allows("10.244.0.11".parse().expect("literal"), 8080));
        // The ipBlocks: 100.64.0.0/24 except /28.
        assert!(allows("100.64.0.200".parse().expect("literal"), 8080));
        assert!(!allows("100.64.0.5".parse().expect("literal"), 8080));
    }
}
