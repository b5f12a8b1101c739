//! The L2 table's lab ([`L2_LAB`]), services, the nodes' states, the vocabulary a case is
//! written in, and the cases ([`l2_cases`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use dataplane_core::{
    Backend, DesiredState, IpFamily, ObjectName, Service, ServicePort, TrafficPolicy,
};

use crate::lab::{self, LabSpec, POD_NAMESPACE, SERVER_PORT};

use crate::conformance::runner::lab_families as families;

/// The L2 table's lab: two nodes of one pod each, one external client on their segment,
/// dual-stack.
pub const L2_LAB: LabSpec = LabSpec {
    nodes: 2,
    pods_per_node: 1,
    external_clients: 1,
    ipv6: true,
};

/// The external client that resolves the addresses.
pub const CLIENT: usize = 0;
/// The services' port (TCP and UDP), to the pods' [`SERVER_PORT`].
pub const SERVICE_PORT: u16 = 80;
/// A port no service of the table serves, on which every node's own namespace runs a TCP
/// and UDP server (answering `node-<n>:7000`): traffic to an announced address on it must
/// not reach the node (a backend that makes the address local to answer ARP must drop it).
pub const NODE_PORT: u16 = 7000;
/// The announced service (`default/l2-lb`).
pub const ANNOUNCED: &str = "l2-lb";
/// The service no node announces (`default/l2-quiet`).
pub const QUIET: &str = "l2-quiet";

/// An address of the table's services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Frontend {
    /// `default/l2-lb`'s LoadBalancer IP: 172.18.0.200, `fd00:18::c8`.
    LoadBalancer,
    /// `default/l2-lb`'s ExternalIP: 172.18.0.202, `fd00:18::ca`.
    ExternalIp,
    /// `default/l2-quiet`'s LoadBalancer IP: 172.18.0.201, `fd00:18::c9`.
    Quiet,
}

impl std::fmt::Display for Frontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Frontend::LoadBalancer => "LoadBalancer IP",
            Frontend::ExternalIp => "ExternalIP",
            Frontend::Quiet => "unannounced LoadBalancer IP",
        })
    }
}

/// The address of `frontend` in `family`: inside the nodes' subnet, so on-link for the
/// client.
pub fn frontend_address(frontend: Frontend, family: IpFamily) -> IpAddr {
    let last: u8 = match frontend {
        Frontend::LoadBalancer => 200,
        Frontend::Quiet => 201,
        Frontend::ExternalIp => 202,
    };
    match family {
        IpFamily::V4 => IpAddr::V4(Ipv4Addr::new(172, 18, 0, last)),
        IpFamily::V6 => IpAddr::V6(Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, last.into())),
    }
}

/// What a step checks, in every family, from the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum L2Check {
    /// `frontend` resolves to `node`'s uplink MAC, and TCP and UDP to it reach `node`'s pod.
    Resolves {
        /// The address.
        frontend: Frontend,
        /// The node that must answer for it.
        node: usize,
    },
    /// Nobody answers the client's ARP requests / neighbour solicitations for `frontend`,
    /// and its TCP and UDP go unanswered.
    DoesNotResolve {
        /// The address.
        frontend: Frontend,
    },
    /// TCP and UDP to `frontend` on `NODE_PORT` (7000), which no service serves, go unanswered:
    /// the node's own server on that port is not reached through the announced address
    /// (kube-proxy's IPVS mode drops the same with `KUBE-IPVS-FILTER`).
    OtherPortUnanswered {
        /// The address.
        frontend: Frontend,
    },
}

/// One state of the lab (which node announces `default/l2-lb`) and its checks.
#[derive(Debug, Clone)]
pub struct L2Step {
    /// A few words for the report.
    pub name: String,
    /// The node whose state has `default/l2-lb` with `l2_announce` (`None`: no node's).
    pub announcer: Option<usize>,
    /// Flush the client's neighbour cache after the apply (else the client keeps what it
    /// learnt, and only a gratuitous announcement can change it in time).
    pub flush: bool,
    /// The checks.
    pub checks: Vec<L2Check>,
    /// Addresses every node's pod asks for on its own interface (a host route `dev eth0`
    /// in the pod makes them on-link there for the check): nobody may answer — the
    /// announcing node answers on its uplink only (Cilium's responder is attached to the
    /// uplink; `MetalLB` announces on the interfaces it is given).
    pub pods_ask: Vec<Frontend>,
}

impl L2Step {
    /// A step called `name` in which `announcer` announces, without flush or checks yet.
    pub fn new(name: &str, announcer: Option<usize>) -> Self {
        L2Step {
            name: name.to_owned(),
            announcer,
            flush: false,
            checks: Vec::new(),
            pods_ask: Vec::new(),
        }
    }

    /// This step with the client's neighbour cache flushed after the apply.
    #[must_use]
    pub fn flushed(mut self) -> Self {
        self.flush = true;
        self
    }

    /// This step with every node's pod asking for `frontends` on its own interface.
    #[must_use]
    pub fn pods_asking(mut self, frontends: impl IntoIterator<Item = Frontend>) -> Self {
        self.pods_ask.extend(frontends);
        self
    }

    /// This step with `checks` added.
    #[must_use]
    pub fn checks(mut self, checks: impl IntoIterator<Item = L2Check>) -> Self {
        self.checks.extend(checks);
        self
    }
}

/// One case: steps applied in order (the first in full, the rest as diffs).
#[derive(Debug, Clone)]
pub struct L2Case {
    /// Case name (unique in the table).
    pub name: String,
    /// The steps.
    pub steps: Vec<L2Step>,
}

impl L2Case {
    /// A case called `name` with `steps`.
    pub fn new(name: &str, steps: Vec<L2Step>) -> Self {
        L2Case {
            name: name.to_owned(),
            steps,
        }
    }
}

/// A table service `name` (`default/<name>`): ClusterIP `10.96.0.<cluster>` (and
/// `fd00:96::<cluster>`), TCP and UDP [`SERVICE_PORT`] to [`SERVER_PORT`],
/// `externalTrafficPolicy: Local`, every node's pod a backend on its node, and `frontends`.
fn service(spec: LabSpec, name: &str, cluster: u8, frontends: &[Frontend]) -> Service {
    let mut s = Service::new(ObjectName::new(POD_NAMESPACE, name))
        .with_ports([
            ServicePort::tcp(SERVICE_PORT, SERVER_PORT).named("tcp"),
            ServicePort::udp(SERVICE_PORT, SERVER_PORT).named("udp"),
        ])
        .with_external_traffic_policy(TrafficPolicy::Local);
    for family in families(spec) {
        s = s.with_cluster_ip(match family {
            IpFamily::V4 => IpAddr::V4(Ipv4Addr::new(10, 96, 0, cluster)),
            IpFamily::V6 => IpAddr::V6(Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, cluster.into())),
        });
        for frontend in frontends {
            let ip = frontend_address(*frontend, family);
            s = match frontend {
                Frontend::ExternalIp => s.with_external_ip(ip),
                Frontend::LoadBalancer | Frontend::Quiet => s.with_load_balancer_ip(ip),
            };
        }
        for node in 0..spec.nodes {
            let pod = match family {
                IpFamily::V4 => lab::pod_v4(node, 0),
                IpFamily::V6 => lab::pod_v6(node, 0),
            };
            s = s.with_backend(Backend::new(pod).on_node(format!("node-{node}")));
        }
    }
    s
}

/// Every node's state for a lab built from `spec`: its pod and both table services;
/// `default/l2-lb` has [`Service::l2_announce`] on `announcer` only.
pub fn node_states(spec: LabSpec, announcer: Option<usize>) -> Vec<DesiredState> {
    (0..spec.nodes)
        .map(|i| {
            let mut state = lab::planned_state_with_first_pod(spec, i);
            let mut lb = service(
                spec,
                ANNOUNCED,
                70,
                &[Frontend::LoadBalancer, Frontend::ExternalIp],
            );
            lb.l2_announce = announcer == Some(i);
            state.services = vec![lb, service(spec, QUIET, 71, &[Frontend::Quiet])];
            state
        })
        .collect()
}

/// The table.
pub fn l2_cases() -> Vec<L2Case> {
    use L2Check::{DoesNotResolve, Resolves};
    let resolves = |node| {
        [
            Resolves {
                frontend: Frontend::LoadBalancer,
                node,
            },
            Resolves {
                frontend: Frontend::ExternalIp,
                node,
            },
        ]
    };
    let quiet = DoesNotResolve {
        frontend: Frontend::Quiet,
    };
    let gone = [
        DoesNotResolve {
            frontend: Frontend::LoadBalancer,
        },
        DoesNotResolve {
            frontend: Frontend::ExternalIp,
        },
    ];
    vec![
        L2Case::new(
            "announce",
            vec![
                L2Step::new("node-0 announces", Some(0))
                    .flushed()
                    .checks(resolves(0))
                    .checks([
                        quiet,
                        L2Check::OtherPortUnanswered {
                            frontend: Frontend::LoadBalancer,
                        },
                    ])
                    .pods_asking([Frontend::LoadBalancer]),
                L2Step::new("node-1 announces instead, flushed", Some(1))
                    .flushed()
                    .checks(resolves(1))
                    .checks([quiet]),
            ],
        ),
        L2Case::new(
            "withdraw",
            vec![
                L2Step::new("node-0 announces", Some(0))
                    .flushed()
                    .checks(resolves(0)),
                L2Step::new("node-0 withdraws, flushed", None)
                    .flushed()
                    .checks(gone)
                    .checks([quiet]),
            ],
        ),
        L2Case::new(
            "failover",
            vec![
                L2Step::new("node-0 announces", Some(0))
                    .flushed()
                    .checks(resolves(0)),
                L2Step::new("node-0 withdraws, node-1 announces, not flushed", Some(1))
                    .checks(resolves(1)),
                L2Step::new("back to node-0, not flushed", Some(0)).checks(resolves(0)),
            ],
        ),
    ]
}
