//! The e2e suite's cluster in the lab: namespaces x, y, z with pods a, b, c, their labels,
//! services and named ports, and each node's [`DesiredState`] for a given [`World`].

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use dataplane_core::{
    Backend, BaselinePolicy, ClusterPolicy, DesiredState, Endpoint, IpFamily, NamedPort, Namespace,
    ObjectName, PeerPod, Policy, Protocol, Service, ServicePort,
};
use ipnetwork::IpNetwork;

use crate::lab::{self, LabSpec};

/// The lab the policy table runs in: two nodes of five pods (x/a, x/b, x/c, y/a, y/b on
/// node-0; y/c, z/a, z/b, z/c on node-1; the tenth pod stays out of the cluster), dual-stack.
pub const POLICY_LAB: LabSpec = LabSpec {
    nodes: 2,
    pods_per_node: 5,
    external_clients: 0,
    ipv6: true,
};

/// The namespaces, as in the e2e suite.
pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
/// The pods of each namespace.
pub const PODS: [&str; 3] = ["a", "b", "c"];
/// The ports every pod serves, TCP and UDP.
pub const POLICY_PORTS: [u16; 2] = [80, 81];
/// The protocols of every cell (SCTP cells only in cases marked `with_sctp`, direct; every
/// pod serves SCTP on the ports too).
pub const POLICY_PROTOCOLS: [Protocol; 2] = [Protocol::Tcp, Protocol::Udp];

/// Number of pods in the layout.
pub(super) const POD_COUNT: usize = NAMESPACES.len() * PODS.len();

/// `x/a` style name of layout pod `k` (namespace-major: x/a is 0, z/c is 8).
pub(super) fn pod_name(k: usize) -> String {
    format!("{}/{}", NAMESPACES[k / PODS.len()], PODS[k % PODS.len()])
}

/// The layout index of `x/a`, or an error naming the bad name.
pub(super) fn pod_index(name: &str) -> Result<usize, String> {
    let (ns, pod) = name
        .split_once('/')
        .ok_or_else(|| format!("pod {name:?} is not namespace/pod"))?;
    let n = NAMESPACES.iter().position(|x| *x == ns);
    let p = PODS.iter().position(|x| *x == pod);
    match (n, p) {
        (Some(n), Some(p)) => Ok(n * PODS.len() + p),
        _ => Err(format!("no pod {name:?} in the layout (x, y, z / a, b, c)")),
    }
}

/// The lab node of layout pod `k` (lab pod `k`: node-major, five per node).
pub(super) fn node_of(k: usize) -> usize {
    k / POLICY_LAB.pods_per_node
}

/// The lab's address of layout pod `k` for `family` (the lab's address plan).
fn planned_address(k: usize, family: IpFamily) -> IpAddr {
    let (i, j) = (node_of(k), k % POLICY_LAB.pods_per_node);
    match family {
        IpFamily::V4 => lab::pod_v4(i, j),
        IpFamily::V6 => lab::pod_v6(i, j),
    }
}

/// The address of pod `pod` (`"x/a"`) in [`POLICY_LAB`], for policies with an `ipBlock`.
/// Panics on a name outside the layout (cases are constants).
pub fn pod_address(pod: &str, family: IpFamily) -> IpAddr {
    planned_address(pod_index(pod).unwrap_or_else(|e| panic!("{e}")), family)
}

/// `pod_address(pod, family)` as a host prefix (/32 or /128).
pub fn pod_host_cidr(pod: &str, family: IpFamily) -> IpNetwork {
    IpNetwork::from(pod_address(pod, family))
}

/// The pod CIDR of lab node `node` for `family` (`10.244.<node>.0/24`, `fd00:244:0:<node>::/64`).
pub fn node_pod_cidr(node: usize, family: IpFamily) -> IpNetwork {
    match family {
        IpFamily::V4 => lab::pod_cidr_v4(node),
        IpFamily::V6 => lab::pod_cidr_v6(node),
    }
}

/// The cluster CIDR of `family`.
pub fn cluster_cidr(family: IpFamily) -> IpNetwork {
    lab::cluster_cidrs(true)[usize::from(family == IpFamily::V6)]
}

/// The service CIDR of `family`.
pub fn service_cidr(family: IpFamily) -> IpNetwork {
    lab::service_cidrs(true)[usize::from(family == IpFamily::V6)]
}

/// The ClusterIP of pod `k`'s service, per family: `10.96.10.(10+k)`, `fd00:96::a:(10+k)`.
pub(super) fn cluster_ip(k: usize, family: IpFamily) -> IpAddr {
    let last = u8::try_from(10 + k).expect("nine pods");
    match family {
        IpFamily::V4 => IpAddr::V4(Ipv4Addr::new(10, 96, 10, last)),
        IpFamily::V6 => IpAddr::V6(Ipv6Addr::new(
            0xfd00,
            0x96,
            0,
            0,
            0,
            0,
            0xa,
            u16::from(last),
        )),
    }
}

/// The pod whose `serve-80-tcp` is port 81: see [`named_ports`].
pub(super) const ODD_NAMED_PORT_POD: usize = POD_COUNT - 1;

/// The named container ports of layout pod `k`: `serve-80-tcp`, `serve-80-udp`,
/// `serve-81-tcp`, `serve-81-udp` (the e2e suite's names) — except that z/c's `serve-80-tcp`
/// is port 81 (its server listens there too). With the same numbers on every pod a backend
/// that resolved a name on the wrong pod (the client, for an egress rule) or to a fixed
/// number would pass every named-port cell; with z/c different, an egress rule on
/// `serve-80-tcp` must allow z/c's TCP/81 and deny its TCP/80.
pub(super) fn named_ports(k: usize) -> Vec<NamedPort> {
    let mut out = Vec::new();
    for port in POLICY_PORTS {
        for protocol in POLICY_PROTOCOLS {
            let name = format!("serve-{port}-{}", protocol_name(protocol));
            let number = if k == ODD_NAMED_PORT_POD && name == "serve-80-tcp" {
                81
            } else {
                port
            };
            out.push(NamedPort::new(name, protocol, number));
        }
    }
    out
}

pub(super) fn protocol_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

/// The labels and policies a case has reached: what changes from step to step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct World {
    /// Labels per layout pod.
    pub(super) pod_labels: Vec<BTreeMap<String, String>>,
    /// Labels per namespace (in [`NAMESPACES`] order; `kubernetes.io/metadata.name` implied).
    pub(super) namespace_labels: Vec<BTreeMap<String, String>>,
    /// The policies, in creation order.
    pub(super) policies: Vec<Policy>,
    /// The cluster policies, in creation order.
    pub(super) cluster_policies: Vec<ClusterPolicy>,
    /// The baseline policy.
    pub(super) baseline: Option<BaselinePolicy>,
}

impl World {
    /// The e2e suite's start: pod labels `pod: <name>`, namespace labels `ns: <name>`, no
    /// policy.
    pub(super) fn initial() -> Self {
        let label = |k: &str, v: &str| std::iter::once((k.to_owned(), v.to_owned())).collect();
        World {
            pod_labels: (0..POD_COUNT)
                .map(|k| label("pod", PODS[k % PODS.len()]))
                .collect(),
            namespace_labels: NAMESPACES.iter().map(|n| label("ns", n)).collect(),
            policies: Vec::new(),
            cluster_policies: Vec::new(),
            baseline: None,
        }
    }
}

/// The states of every node for `world`, in a lab of `spec` (2 nodes; IPv6 when the spec
/// has it).
pub(super) fn node_states(spec: LabSpec, world: &World) -> Vec<DesiredState> {
    let families: Vec<IpFamily> = if spec.ipv6 {
        vec![IpFamily::V4, IpFamily::V6]
    } else {
        vec![IpFamily::V4]
    };
    let ips =
        |k: usize| -> Vec<IpAddr> { families.iter().map(|f| planned_address(k, *f)).collect() };
    let object = |k: usize| ObjectName::new(NAMESPACES[k / PODS.len()], PODS[k % PODS.len()]);
    let services: Vec<Service> = (0..POD_COUNT)
        .map(|k| {
            let mut ports = Vec::new();
            for port in POLICY_PORTS {
                for protocol in POLICY_PROTOCOLS {
                    ports.push(
                        ServicePort::new(protocol, port, port)
                            .named(format!("{}-{port}", protocol_name(protocol))),
                    );
                }
            }
            let mut service = Service::new(ObjectName::new(
                NAMESPACES[k / PODS.len()],
                format!("s-{}", PODS[k % PODS.len()]),
            ))
            .with_ports(ports);
            for family in &families {
                service = service
                    .with_cluster_ip(cluster_ip(k, *family))
                    .with_backend(
                        Backend::new(planned_address(k, *family))
                            .on_node(format!("node-{}", node_of(k))),
                    );
            }
            service
        })
        .collect();
    let namespaces: Vec<Namespace> = NAMESPACES
        .iter()
        .zip(&world.namespace_labels)
        .map(|(name, labels)| Namespace {
            name: (*name).to_owned(),
            labels: labels.clone(),
        })
        .collect();
    (0..spec.nodes)
        .map(|i| {
            let mut state = DesiredState::new(lab::planned_node(spec, i));
            for k in 0..POD_COUNT {
                if node_of(k) == i {
                    let mut e = Endpoint::new(object(k), format!("vp{k}"), ips(k));
                    e.labels.clone_from(&world.pod_labels[k]);
                    e.named_ports = named_ports(k);
                    state.endpoints.push(e);
                } else {
                    let mut p =
                        PeerPod::new(object(k), ips(k)).on_node(format!("node-{}", node_of(k)));
                    p.labels.clone_from(&world.pod_labels[k]);
                    p.named_ports = named_ports(k);
                    state.pods.push(p);
                }
            }
            state.namespaces.clone_from(&namespaces);
            state.services.clone_from(&services);
            state.policies.clone_from(&world.policies);
            state.cluster_policies.clone_from(&world.cluster_policies);
            state.baseline_policy.clone_from(&world.baseline);
            state
        })
        .collect()
}
