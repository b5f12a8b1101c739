//! The host table's lab ([`HOST_LAB`]), its parties and servers, the nodes' states, and the
//! cases ([`host_cases`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use dataplane_core::{
    Backend, DesiredState, FailsafePort, FailsafePorts, HostAction, HostEndpoint, HostPolicy,
    HostPort, HostRule, IpFamily, LabelSelector, ObjectName, PolicyType, Protocol, Service,
    ServicePort,
};
use ipnetwork::IpNetwork;

use crate::lab::{self, LabSpec, POD_NAMESPACE, SERVER_PORT};

use super::case::{
    answered, dropped, one, tcp, HostCase, HostProbe, HostStep, Meaning, Party, Target,
};

/// The host table's lab: two nodes of one pod each, four external clients on the nodes'
/// L2 segment, dual-stack. Node-0's uplink is the host endpoint under test; node-1 is the
/// rest of the cluster (its pod reaches node-0's pod through the underlay).
pub const HOST_LAB: LabSpec = LabSpec {
    nodes: 2,
    pods_per_node: 1,
    external_clients: 4,
    ipv6: true,
};

/// The node whose uplink is the host endpoint under test.
pub const NODE: usize = 0;
/// The other node (no host endpoint).
pub const OTHER_NODE: usize = 1;
/// External client A: a legitimate client, allowed where a case restricts clients.
pub const CLIENT_A: usize = 0;
/// External client B: a legitimate client that a case denies.
pub const CLIENT_B: usize = 1;
/// The attacker: an external client whose every packet comes from [`ATTACKER_V4`] or
/// [`ATTACKER_V6`], in the blocked prefixes.
pub const ATTACKER: usize = 2;
/// An external server the node reaches out to (DNS, the API server, anything else).
pub const UPSTREAM: usize = 3;

/// The node's own service on a port no failsafe rule covers (memcached's place in Calico's
/// untracked example).
pub const HOST_SERVICE_PORT: u16 = 7000;
/// A second port of the upstream server, which an egress policy denies.
pub const OTHER_UPSTREAM_PORT: u16 = 7001;
/// The table's service: port 80 (TCP and UDP) to the pods' [`SERVER_PORT`], on this NodePort.
pub const NODE_PORT: u16 = 30080;
/// The table's service port.
pub const SERVICE_PORT: u16 = 80;
/// The NodePort of the table's second service, `default/host-np-remote`: port 80 (TCP and
/// UDP) to node-1's pod only, so that node-0 reaching it sends the connection out of its
/// uplink and gets the replies back on it.
pub const REMOTE_NODE_PORT: u16 = 30081;
/// The custom failsafe ports of `deny-all-failsafe`'s second step: in, TCP 2222.
pub const CUSTOM_FAILSAFE_IN: u16 = 2222;
/// ... and out, UDP 5353.
pub const CUSTOM_FAILSAFE_OUT: u16 = 5353;

/// The attacker's IPv4 source, in [`blocked_nets`].
pub const ATTACKER_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);
/// The attacker's IPv6 source, in [`blocked_nets`].
pub const ATTACKER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xbad, 0, 0, 0, 0, 7);

/// The prefixes `untracked-deny-blocked-cidrs` blocks: 203.0.113.0/24 (TEST-NET-3) and
/// `2001:db8:bad::/48` (documentation space); they exist only inside the lab's namespaces.
pub fn blocked_nets() -> [IpNetwork; 2] {
    [
        IpNetwork::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 0)), 24).expect("constant prefix"),
        IpNetwork::new(
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xbad, 0, 0, 0, 0, 0)),
            48,
        )
        .expect("constant prefix"),
    ]
}

/// Label of node-0's host endpoint, which every host policy of the table selects.
const ENDPOINT_LABEL: (&str, &str) = ("host-endpoint", "uplink");

/// The address `party` sends from, in `family` (`None`: the lab has no such family).
pub fn party_address(spec: LabSpec, party: Party, family: IpFamily) -> Option<IpAddr> {
    if family == IpFamily::V6 && !spec.ipv6 {
        return None;
    }
    let v6 = family == IpFamily::V6;
    Some(match party {
        Party::External(ATTACKER) if v6 => IpAddr::V6(ATTACKER_V6),
        Party::External(ATTACKER) => IpAddr::V4(ATTACKER_V4),
        Party::External(k) if v6 => lab::ext_v6(k),
        Party::External(k) => lab::ext_v4(k),
        Party::Node(n) if v6 => lab::node_v6(n),
        Party::Node(n) => lab::node_v4(n),
        Party::Pod(n) if v6 => lab::pod_v6(n, 0),
        Party::Pod(n) => lab::pod_v4(n, 0),
    })
}

/// The ClusterIP of the table's service in `family`.
pub fn cluster_ip(family: IpFamily) -> IpAddr {
    match family {
        IpFamily::V4 => IpAddr::V4(Ipv4Addr::new(10, 96, 0, 50)),
        IpFamily::V6 => IpAddr::V6(Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x50)),
    }
}

/// Client A's addresses, as a rule's nets.
fn client_a_nets(spec: LabSpec) -> Vec<IpNetwork> {
    [IpFamily::V4, IpFamily::V6]
        .into_iter()
        .filter_map(|f| party_address(spec, Party::External(CLIENT_A), f))
        .map(IpNetwork::from)
        .collect()
}

/// The ClusterIP of the table's second service ([`REMOTE_NODE_PORT`]) in `family`.
fn remote_cluster_ip(family: IpFamily) -> IpAddr {
    match family {
        IpFamily::V4 => IpAddr::V4(Ipv4Addr::new(10, 96, 0, 51)),
        IpFamily::V6 => IpAddr::V6(Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x51)),
    }
}

/// The table's services: `default/host-np`, TCP and UDP port [`SERVICE_PORT`] to the pod of
/// node-0 on [`SERVER_PORT`], NodePort [`NODE_PORT`]; and `default/host-np-remote`, the same
/// to node-1's pod, NodePort [`REMOTE_NODE_PORT`]. Both `externalTrafficPolicy: Cluster`.
fn services(spec: LabSpec) -> Vec<Service> {
    let service = |name: &str, node_port: u16, ip: fn(IpFamily) -> IpAddr, node: usize| {
        let mut service = Service::new(ObjectName::new(POD_NAMESPACE, name)).with_ports([
            ServicePort::tcp(SERVICE_PORT, SERVER_PORT)
                .named("tcp")
                .with_node_port(node_port),
            ServicePort::udp(SERVICE_PORT, SERVER_PORT)
                .named("udp")
                .with_node_port(node_port),
        ]);
        for family in families(spec) {
            let pod = party_address(spec, Party::Pod(node), family).expect("family of the lab");
            service = service
                .with_cluster_ip(ip(family))
                .with_backend(Backend::new(pod).on_node(format!("node-{node}")));
        }
        service
    };
    vec![
        service("host-np", NODE_PORT, cluster_ip, NODE),
        service(
            "host-np-remote",
            REMOTE_NODE_PORT,
            remote_cluster_ip,
            OTHER_NODE,
        ),
    ]
}

/// The families of a lab built from `spec`.
pub(super) fn families(spec: LabSpec) -> Vec<IpFamily> {
    crate::conformance::runner::lab_families(spec)
}

/// Node-0's host endpoint on its uplink.
pub fn host_endpoint(spec: LabSpec) -> HostEndpoint {
    let mut endpoint =
        HostEndpoint::new(format!("node-{NODE}-eth0"), format!("node-{NODE}"), "eth0")
            .with_label(ENDPOINT_LABEL.0, ENDPOINT_LABEL.1);
    for family in families(spec) {
        if let Some(ip) = party_address(spec, Party::Node(NODE), family) {
            endpoint = endpoint.with_expected_ip(ip);
        }
    }
    endpoint
}

/// Every node's state for a lab built from `spec`: its pod, the table's service, and — when
/// `host` is given — node-0's host endpoint, `host`'s policies and failsafe ports (on every
/// node: a host endpoint of another node is ignored, as Calico does).
pub fn node_states(
    spec: LabSpec,
    host: Option<(&[HostPolicy], &FailsafePorts)>,
) -> Vec<DesiredState> {
    (0..spec.nodes)
        .map(|i| {
            let mut state = lab::planned_state_with_first_pod(spec, i);
            state.services = services(spec);
            if let Some((policies, failsafe)) = host {
                state.host_endpoints = vec![host_endpoint(spec)];
                state.host_policies = policies.to_vec();
                state.failsafe_ports = failsafe.clone();
            }
            state
        })
        .collect()
}

fn selector() -> LabelSelector {
    LabelSelector::default().with_label(ENDPOINT_LABEL.0, ENDPOINT_LABEL.1)
}

/// `rule` for TCP and for UDP to destination port `port`.
fn per_protocol(rule: &HostRule, port: Option<u16>, from_port: Option<u16>) -> [HostRule; 2] {
    [Protocol::Tcp, Protocol::Udp].map(|p| {
        let mut r = rule.clone().protocol(p);
        if let Some(port) = port {
            r = r.to_ports([HostPort::Number(port)]);
        }
        if let Some(port) = from_port {
            r = r.from_ports([HostPort::Number(port)]);
        }
        r
    })
}

/// A normal policy isolating both directions with no rule: everything but the failsafe ports
/// denied for the node's own traffic.
fn deny_all() -> HostPolicy {
    HostPolicy::new("deny-all", selector()).with_types([PolicyType::Ingress, PolicyType::Egress])
}

/// Adds `rules` as ingress (`true`) or egress rules.
fn with_rules(
    mut policy: HostPolicy,
    ingress: bool,
    rules: impl IntoIterator<Item = HostRule>,
) -> HostPolicy {
    for r in rules {
        policy = if ingress {
            policy.with_ingress(r)
        } else {
            policy.with_egress(r)
        };
    }
    policy
}

const A: Party = Party::External(CLIENT_A);
const B: Party = Party::External(CLIENT_B);
const EVIL: Party = Party::External(ATTACKER);
const ME: Target = Target::Node(NODE);
const NP: Target = Target::NodePort(NODE);
const UP: Target = Target::External(UPSTREAM);
const POD: Target = Target::Pod(NODE);

const TCP: Protocol = Protocol::Tcp;
const UDP: Protocol = Protocol::Udp;
const YES: Meaning = Meaning::Answered;
const NO: Meaning = Meaning::Dropped;

/// A step without host policy.
fn open_step(name: &str) -> HostStep {
    HostStep::new(name, Vec::new())
}

/// The host endpoint cases (see the module documentation), for a lab built from `spec`
/// ([`HOST_LAB`]).
pub fn host_cases_for(spec: LabSpec) -> Vec<HostCase> {
    let a = client_a_nets(spec);
    vec![
        untracked_deny(),
        deny_all_failsafe(),
        pre_dnat(&a),
        untracked_return(&a),
        apply_on_forward(&a),
        host_egress(),
        untracked_replies(spec, &a),
    ]
}

/// Case `untracked-deny-blocked-cidrs` (the module documentation says what it shows).
fn untracked_deny() -> HostCase {
    HostCase::new(
        "untracked-deny-blocked-cidrs",
        "Calico: Defend against DoS attacks (network-policy/extreme-traffic/defend-dos-attack); \
         reference/host-endpoints/untracked",
        vec![
            open_step("no host policy: the attacker is served").probes(
                [
                    answered(EVIL, ME, HOST_SERVICE_PORT),
                    answered(EVIL, NP, NODE_PORT),
                    answered(A, ME, HOST_SERVICE_PORT),
                ]
                .concat(),
            ),
            HostStep::new(
                "untracked deny of the blocked prefixes",
                vec![with_rules(
                    HostPolicy::new("blocklist", selector())
                        .untracked()
                        .with_order(10),
                    true,
                    [HostRule::new(HostAction::Deny).from_nets(blocked_nets())],
                )],
            )
            .holding([tcp(A, ME, HOST_SERVICE_PORT), tcp(A, NP, NODE_PORT)])
            .probes(
                [
                    dropped(EVIL, ME, HOST_SERVICE_PORT),
                    dropped(EVIL, NP, NODE_PORT),
                    answered(A, ME, HOST_SERVICE_PORT),
                    answered(A, NP, NODE_PORT),
                    answered(B, NP, NODE_PORT),
                    // Failsafe ports come before untracked policy.
                    [one(EVIL, ME, TCP, 22, YES), one(EVIL, ME, TCP, 6443, YES)],
                ]
                .concat(),
            ),
        ],
    )
}

/// Case `deny-all-failsafe` (the module documentation says what it shows).
fn deny_all_failsafe() -> HostCase {
    HostCase::new(
        "deny-all-failsafe",
        "Calico: Protect Kubernetes nodes (network-policy/hosts/protect-hosts); \
         reference/host-endpoints/failsafe",
        vec![
            HostStep::new("deny all, default failsafe ports", vec![deny_all()])
                .holding([tcp(A, ME, HOST_SERVICE_PORT)])
                .probes(dropped(A, ME, HOST_SERVICE_PORT))
                .probes([
                    one(A, ME, TCP, 22, YES),
                    one(A, ME, TCP, 6443, YES),
                    one(A, ME, UDP, 68, YES),
                    one(A, ME, TCP, CUSTOM_FAILSAFE_IN, NO),
                    one(Party::Node(NODE), UP, UDP, 53, YES),
                    one(Party::Node(NODE), UP, TCP, 6443, YES),
                    one(Party::Node(NODE), UP, UDP, CUSTOM_FAILSAFE_OUT, NO),
                ])
                .probes(dropped(Party::Node(NODE), UP, HOST_SERVICE_PORT))
                // Forwarded traffic: no normal policy without applyOnForward.
                .probes(answered(A, POD, SERVER_PORT))
                .probes(answered(Party::Pod(NODE), UP, HOST_SERVICE_PORT)),
            HostStep::new(
                "deny all, custom failsafe ports (in TCP 2222, out UDP 5353)",
                vec![deny_all()],
            )
            .with_failsafe(FailsafePorts {
                inbound: vec![FailsafePort::tcp(CUSTOM_FAILSAFE_IN)],
                outbound: vec![FailsafePort::udp(CUSTOM_FAILSAFE_OUT)],
            })
            .probes([
                one(A, ME, TCP, 22, NO),
                one(A, ME, TCP, 6443, NO),
                one(A, ME, TCP, CUSTOM_FAILSAFE_IN, YES),
                one(Party::Node(NODE), UP, UDP, 53, NO),
                one(Party::Node(NODE), UP, UDP, CUSTOM_FAILSAFE_OUT, YES),
            ]),
        ],
    )
}

/// Case `pre-dnat-nodeport` (the module documentation says what it shows).
fn pre_dnat(a_nets: &[IpNetwork]) -> HostCase {
    HostCase::new(
        "pre-dnat-nodeport",
        "Calico: Apply policy to Kubernetes node ports \
         (network-policy/services/kubernetes-node-ports); reference/host-endpoints/pre-dnat",
        vec![HostStep::new(
            "NodePort allowed from client A only, before DNAT",
            vec![
                with_rules(
                    HostPolicy::new("allow-nodeport-from-a", selector())
                        .pre_dnat()
                        .with_order(10),
                    true,
                    per_protocol(
                        &HostRule::new(HostAction::Allow).from_nets(a_nets.to_vec()),
                        Some(NODE_PORT),
                        None,
                    ),
                ),
                with_rules(
                    HostPolicy::new("deny-nodeport", selector())
                        .pre_dnat()
                        .with_order(20),
                    true,
                    per_protocol(&HostRule::new(HostAction::Deny), Some(NODE_PORT), None),
                ),
            ],
        )
        .probes(
            [
                answered(A, NP, NODE_PORT),
                dropped(B, NP, NODE_PORT),
                dropped(Party::Node(OTHER_NODE), NP, NODE_PORT),
                // The pod behind it, from inside the cluster and directly.
                answered(Party::Pod(OTHER_NODE), Target::ClusterIp, SERVICE_PORT),
                answered(Party::Pod(OTHER_NODE), POD, SERVER_PORT),
                answered(B, POD, SERVER_PORT),
                answered(B, ME, HOST_SERVICE_PORT),
            ]
            .concat(),
        )],
    )
}

/// Case `untracked-allow-return-rule` (the module documentation says what it shows).
fn untracked_return(a_nets: &[IpNetwork]) -> HostCase {
    HostCase::new(
        "untracked-allow-return-rule",
        "Calico: Enable policy for high-connection workloads \
         (network-policy/extreme-traffic/high-connection-workloads); \
         reference/host-endpoints/untracked",
        vec![
            HostStep::new(
                "deny all, untracked allow in, no return rule",
                vec![deny_all(), untracked_in(a_nets)],
            )
            .probes(
                [
                    dropped(A, ME, HOST_SERVICE_PORT),
                    dropped(B, ME, HOST_SERVICE_PORT),
                ]
                .concat(),
            ),
            HostStep::new(
                "deny all, untracked allow in and its return rule",
                vec![
                    deny_all(),
                    with_rules(
                        untracked_in(a_nets),
                        false,
                        per_protocol(
                            &HostRule::new(HostAction::Allow).to_nets(a_nets.to_vec()),
                            None,
                            Some(HOST_SERVICE_PORT),
                        ),
                    ),
                ],
            )
            .probes(
                [
                    answered(A, ME, HOST_SERVICE_PORT).map(HostProbe::untracked),
                    dropped(B, ME, HOST_SERVICE_PORT),
                ]
                .concat(),
            ),
        ],
    )
}

/// Case `apply-on-forward` (the module documentation says what it shows).
fn apply_on_forward(a_nets: &[IpNetwork]) -> HostCase {
    HostCase::new(
        "apply-on-forward",
        "Calico: reference/host-endpoints/forwarded (Apply on forwarded traffic)",
        vec![
            HostStep::new(
                "deny client A, host traffic only",
                vec![deny_a(a_nets, false)],
            )
            .probes(
                [
                    dropped(A, ME, HOST_SERVICE_PORT),
                    answered(A, POD, SERVER_PORT),
                    answered(A, NP, NODE_PORT),
                    answered(B, ME, HOST_SERVICE_PORT),
                ]
                .concat(),
            ),
            HostStep::new("deny client A, applyOnForward", vec![deny_a(a_nets, true)]).probes(
                [
                    dropped(A, ME, HOST_SERVICE_PORT),
                    dropped(A, POD, SERVER_PORT),
                    dropped(A, NP, NODE_PORT),
                    answered(B, POD, SERVER_PORT),
                    answered(B, NP, NODE_PORT),
                ]
                .concat(),
            ),
        ],
    )
}

/// Case `host-egress` (the module documentation says what it shows).
fn host_egress() -> HostCase {
    HostCase::new(
        "host-egress",
        "Calico: Protect Kubernetes nodes (network-policy/hosts/protect-hosts); \
         reference/host-endpoints/summary",
        vec![HostStep::new(
            "node egress to port 7000 only",
            vec![with_rules(
                HostPolicy::new("egress-7000", selector()).with_types([PolicyType::Egress]),
                false,
                per_protocol(
                    &HostRule::new(HostAction::Allow),
                    Some(HOST_SERVICE_PORT),
                    None,
                ),
            )],
        )
        .probes(
            [
                answered(Party::Node(NODE), UP, HOST_SERVICE_PORT),
                dropped(Party::Node(NODE), UP, OTHER_UPSTREAM_PORT),
                [
                    one(Party::Node(NODE), UP, UDP, 53, YES),
                    one(Party::Node(NODE), UP, TCP, 6443, YES),
                ],
                answered(Party::Node(NODE), POD, SERVER_PORT),
                // The node's own NodePort: translated to node-1's pod it leaves by the uplink
                // as the node's own traffic (to port 8080: dropped); to its own pod it stays.
                dropped(
                    Party::Node(NODE),
                    Target::RemoteNodePort(NODE),
                    REMOTE_NODE_PORT,
                ),
                answered(Party::Node(NODE), NP, NODE_PORT),
                answered(Party::Node(OTHER_NODE), UP, OTHER_UPSTREAM_PORT),
                answered(Party::Pod(NODE), UP, OTHER_UPSTREAM_PORT),
                answered(A, ME, HOST_SERVICE_PORT),
            ]
            .concat(),
        )],
    )
}

/// Case `untracked-deny-replies` (the module documentation says what it shows).
fn untracked_replies(spec: LabSpec, a_nets: &[IpNetwork]) -> HostCase {
    let remote_pod: Vec<IpNetwork> = families(spec)
        .into_iter()
        .filter_map(|f| party_address(spec, Party::Pod(OTHER_NODE), f))
        .map(IpNetwork::from)
        .collect();
    let me = Party::Node(NODE);
    let remote_np = Target::RemoteNodePort(NODE);
    let remote_pod_target = Target::Pod(OTHER_NODE);
    HostCase::new(
        "untracked-deny-replies",
        "Calico: reference/host-endpoints/untracked (Untracked policy: applies to all packets, \
         before conntrack); felix rules/static.go StaticRawPreroutingChain, \
         StaticRawOutputChain (the raw table sees replies too)",
        vec![
            open_step("no host policy: the node and its pod reach node-1's pod").probes(
                [
                    answered(me, remote_np, REMOTE_NODE_PORT),
                    answered(me, remote_pod_target, SERVER_PORT),
                    answered(Party::Pod(NODE), remote_pod_target, SERVER_PORT),
                ]
                .concat(),
            ),
            HostStep::new(
                "untracked ingress deny of node-1's pod: the replies from it",
                vec![with_rules(
                    HostPolicy::new("deny-from-remote-pod", selector())
                        .untracked()
                        .with_order(10),
                    true,
                    [HostRule::new(HostAction::Deny).from_nets(remote_pod)],
                )],
            )
            .probes(
                [
                    // Tracked connections out of the uplink: their replies come back on it.
                    dropped(me, remote_np, REMOTE_NODE_PORT),
                    dropped(me, remote_pod_target, SERVER_PORT),
                    dropped(Party::Pod(NODE), remote_pod_target, SERVER_PORT),
                    // Other replies, and the local backend's NodePort.
                    answered(me, UP, HOST_SERVICE_PORT),
                    answered(A, NP, NODE_PORT),
                ]
                .concat(),
            ),
            HostStep::new(
                "untracked egress deny of client A: the node's own replies to it",
                vec![with_rules(
                    HostPolicy::new("deny-to-a", selector())
                        .untracked()
                        .with_order(10),
                    false,
                    [HostRule::new(HostAction::Deny).to_nets(a_nets.to_vec())],
                )],
            )
            .probes(
                [
                    dropped(A, ME, HOST_SERVICE_PORT),
                    answered(B, ME, HOST_SERVICE_PORT),
                    // Replies the node forwards do not pass the raw table's output hook.
                    answered(A, NP, NODE_PORT),
                    answered(A, POD, SERVER_PORT),
                ]
                .concat(),
            ),
        ],
    )
}

/// The untracked ingress allow of `untracked-allow-return-rule`: client A to the node's
/// service port.
fn untracked_in(a_nets: &[IpNetwork]) -> HostPolicy {
    with_rules(
        HostPolicy::new("memcached", selector())
            .untracked()
            .with_order(10),
        true,
        per_protocol(
            &HostRule::new(HostAction::Allow).from_nets(a_nets.to_vec()),
            Some(HOST_SERVICE_PORT),
            None,
        ),
    )
}

/// A normal ingress policy denying client A and allowing the rest, with or without
/// `applyOnForward`.
fn deny_a(a_nets: &[IpNetwork], on_forward: bool) -> HostPolicy {
    let policy = with_rules(
        HostPolicy::new("deny-client-a", selector()).with_order(10),
        true,
        [
            HostRule::new(HostAction::Deny).from_nets(a_nets.to_vec()),
            HostRule::new(HostAction::Allow),
        ],
    );
    if on_forward {
        policy.on_forward()
    } else {
        policy
    }
}

/// The host endpoint cases for [`HOST_LAB`].
pub fn host_cases() -> Vec<HostCase> {
    host_cases_for(HOST_LAB)
}

/// The servers the cases need besides the pods' own: `(party whose namespace serves, port)`,
/// TCP and UDP each, answering `<party>:<port>`.
pub(super) fn servers(cases: &[HostCase]) -> Vec<(Party, u16)> {
    let mut out: Vec<(Party, u16)> = cases
        .iter()
        .flat_map(|c| &c.steps)
        .flat_map(|s| s.probes.iter().chain(&s.hold))
        .filter_map(|p| match p.to {
            Target::Node(n) => Some((Party::Node(n), p.port)),
            Target::External(k) => Some((Party::External(k), p.port)),
            _ => None,
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// The name a probe's answer must carry: `<party>:<port>` for the node's and externals'
/// servers, the pod's name for a pod (directly or through the service).
pub(super) fn server_name(probe: &HostProbe) -> String {
    match probe.to {
        Target::Node(n) => format!("{}:{}", Party::Node(n), probe.port),
        Target::External(k) => format!("{}:{}", Party::External(k), probe.port),
        Target::Pod(n) => Party::Pod(n).to_string(),
        Target::NodePort(_) | Target::ClusterIp => Party::Pod(NODE).to_string(),
        Target::RemoteNodePort(_) => Party::Pod(OTHER_NODE).to_string(),
    }
}
