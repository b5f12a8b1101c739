//! A cluster of network namespaces on one machine.
//!
//! ```text
//!                         lab namespace "<prefix>-u"
//!        +--------------------------- br0 (172.18.0.1/16, fd00:18::1/64) -------------+
//!        |  n0                 n1                      x0                             |
//!        +--|-------------------|-----------------------|------------------------------+
//!           | veth              | veth                  | veth
//!    +------+-------+   +-------+------+       +--------+---------+
//!    | node-0  eth0 |   | node-1  eth0 |       | external-0  eth0 |
//!    | 172.18.0.10  |   | 172.18.0.11  |       | 172.18.255.1     |
//!    | vp0     vp1  |   | vp2     vp3  |       +------------------+
//!    +--|-------|---+   +--|-------|---+
//!       |       |          |       |      veth; pod: 169.254.1.1 / fe80::1 = host veth
//!    pod-0-0 pod-0-1    pod-1-0 pod-1-1   (MAC ee:ee:ee:ee:ee:ee, static neighbour entry)
//!    10.244.0.10 ...    10.244.1.10 ...
//! ```
//!
//! Every box is a network namespace named `dptk<pid>-<counter><random>-<role>`; none of them
//! has a link to the machine's real interfaces, so no lab traffic can leave the lab. Nodes
//! route their own pods by /32 (/128) host routes on the host-side veth, the other nodes' pod
//! CIDRs via those nodes' underlay addresses, and everything else to the bridge address (a
//! "router" that answers with ICMP unreachable), which gives host-originated service traffic
//! a route to take. External clients only know the underlay /16; tests route LoadBalancer IPs,
//! ExternalIPs or pod CIDRs through a chosen node with [`Lab::route_via_node`].
//!
//! Addresses (IPv6 only when [`LabSpec::ipv6`]; the decimal index is written as hex digits):
//!
//! | what              | IPv4                | IPv6                     |
//! |-------------------|---------------------|--------------------------|
//! | node `i`          | 172.18.0.(10+i)/16  | fd00:18::(10+i)/64       |
//! | pod `j` of node i | 10.244.i.(10+j)/32  | fd00:244:0:i::(10+j)/128 |
//! | node `i` pod CIDR | 10.244.i.0/24       | fd00:244:0:i::/64        |
//! | external `k`      | 172.18.255.(1+k)/16 | fd00:18::ff:(1+k)/64     |
//! | cluster CIDR      | 10.244.0.0/16       | fd00:244::/48            |
//! | service CIDR      | 10.96.0.0/12        | fd00:96::/108            |

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU32, Ordering};

use dataplane_core::{
    Backend, Endpoint, Interfaces, IpFamily, Masquerade, Node, ObjectName, PortRange,
};
use ipnetwork::IpNetwork;

use crate::netns::{self, NetNs, NetNsError};
use crate::traffic::{self, Server, TrafficError};

/// Port on which every pod's TCP and UDP servers listen.
pub const SERVER_PORT: u16 = 8080;
/// A second port for servers started on demand ([`LabPod::serve`]): a backend whose target
/// port is not the lab's usual one (a rolling update that moved a named port).
pub const OTHER_SERVER_PORT: u16 = 9090;
/// Kubernetes namespace of the lab's pods.
pub const POD_NAMESPACE: &str = "default";
/// MAC address of every host-side pod veth (the pods' gateway), as Calico does.
pub const GATEWAY_MAC: &str = "ee:ee:ee:ee:ee:ee";
/// Prefix of every namespace a lab creates.
pub const NAME_PREFIX: &str = "dptk";

const MAX_NODES: usize = 200;
const MAX_PODS_PER_NODE: usize = 200;
const MAX_EXTERNALS: usize = 200;

static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);

/// An address family (core's [`IpFamily`] under the name the lab's API uses).
pub type Family = IpFamily;

/// Errors of the lab and its namespaces.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LabError {
    /// A [`LabSpec`] field is out of range.
    #[error("lab spec: {field} = {value}: {reason}")]
    InvalidSpec {
        /// The field.
        field: &'static str,
        /// Its value.
        value: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// A namespace or one of the commands that build the lab failed.
    #[error(transparent)]
    Netns(#[from] NetNsError),
    /// An index names no node, pod or external client of this lab.
    #[error("lab has no {what} {index} (it has {count})")]
    NoSuch {
        /// `node`, `pod` or `external client`.
        what: &'static str,
        /// The index asked for.
        index: usize,
        /// How many there are.
        count: usize,
    },
    /// An IPv6 address or route was asked of a lab built without IPv6.
    #[error("{what}: the lab was built without IPv6")]
    NoIpv6 {
        /// What needed IPv6.
        what: String,
    },
    /// A pod's servers could not be started.
    #[error("pod {pod}: cannot start servers")]
    Serve {
        /// Pod name.
        pod: String,
        /// The cause.
        #[source]
        source: Box<TrafficError>,
    },
}

/// The shape of a lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LabSpec {
    /// Number of nodes (1..=200).
    pub nodes: usize,
    /// Pods per node (0..=200).
    pub pods_per_node: usize,
    /// External clients on the underlay (0..=200).
    pub external_clients: usize,
    /// Dual-stack: also IPv6 addresses and routes.
    pub ipv6: bool,
}

impl LabSpec {
    fn check(&self) -> Result<(), LabError> {
        let bad = |field, value, reason| {
            Err(LabError::InvalidSpec {
                field,
                value,
                reason,
            })
        };
        if self.nodes == 0 || self.nodes > MAX_NODES {
            return bad("nodes", self.nodes, "must be 1..=200");
        }
        if self.pods_per_node > MAX_PODS_PER_NODE {
            return bad("pods_per_node", self.pods_per_node, "must be 0..=200");
        }
        if self.external_clients > MAX_EXTERNALS {
            return bad("external_clients", self.external_clients, "must be 0..=200");
        }
        Ok(())
    }
}

/// A node of the lab.
#[derive(Debug, Clone)]
pub struct LabNode {
    /// Node index.
    pub index: usize,
    /// Kubernetes node name, `node-<index>`.
    pub name: String,
    /// The node's network namespace (its "host network").
    pub netns: NetNs,
    /// Underlay addresses: IPv4 first, then IPv6 when the lab has it.
    pub addresses: Vec<IpAddr>,
    /// Pod CIDRs: IPv4 first, then IPv6.
    pub pod_cidrs: Vec<IpNetwork>,
    /// The uplink, `eth0`.
    pub uplink: String,
}

impl LabNode {
    /// The node address of `family`, if the lab has that family.
    pub fn address(&self, family: Family) -> Option<IpAddr> {
        pick(&self.addresses, family)
    }
}

/// A pod of the lab.
#[derive(Debug, Clone)]
pub struct LabPod {
    /// Pod index over the whole lab (node-major: node `i`, pod `j` is `i * pods_per_node + j`).
    pub index: usize,
    /// Index of the node it runs on.
    pub node: usize,
    /// Pod name, `pod-<node>-<j>`; its servers answer with it.
    pub name: String,
    /// The pod's network namespace.
    pub netns: NetNs,
    /// Pod addresses: IPv4 first, then IPv6.
    pub addresses: Vec<IpAddr>,
    /// Name of the host-side veth in the node's namespace, `vp<index>`.
    pub host_interface: String,
}

impl LabPod {
    /// The pod address of `family`, if the lab has that family.
    pub fn address(&self, family: Family) -> Option<IpAddr> {
        pick(&self.addresses, family)
    }

    /// The name the pod's server on `port` answers with: the pod name on [`SERVER_PORT`]
    /// (the servers every lab starts), `<pod name>:<port>` on any other port
    /// ([`LabPod::serve`]), so that an answer tells which of the pod's ports was reached.
    pub fn server_name(&self, port: u16) -> String {
        if port == SERVER_PORT {
            self.name.clone()
        } else {
            format!("{}:{port}", self.name)
        }
    }

    /// Starts TCP and UDP servers on `port` in the pod, answering with
    /// [`LabPod::server_name`]; they stop when the returned [`Server`] is dropped. The lab
    /// serves [`SERVER_PORT`] (with this): this is for any other port.
    pub fn serve(&self, port: u16) -> Result<Server, LabError> {
        traffic::serve(&self.netns, &self.server_name(port), port).map_err(|e| LabError::Serve {
            pod: self.name.clone(),
            source: Box::new(e),
        })
    }

    /// The pod as a workload of its node's [`DesiredState`](dataplane_core::DesiredState):
    /// namespace `default`, the pod name, label `app=<pod name>`, its host-side veth and
    /// addresses. A caller that runs its own workloads in the pod renames and relabels it.
    pub fn endpoint(&self) -> Endpoint {
        pod_endpoint(&self.name, &self.host_interface, &self.addresses)
    }
}

/// The workload [`LabPod::endpoint`] describes, from its parts: the host-side tables
/// plan a lab's pods without building it.
pub(crate) fn pod_endpoint(name: &str, interface: &str, addresses: &[IpAddr]) -> Endpoint {
    Endpoint {
        name: ObjectName::new(POD_NAMESPACE, name),
        interface: interface.to_owned(),
        ips: addresses.to_vec(),
        labels: std::iter::once(("app".to_owned(), name.to_owned())).collect(),
        namespace_labels: std::iter::once((
            "kubernetes.io/metadata.name".to_owned(),
            POD_NAMESPACE.to_owned(),
        ))
        .collect(),
        named_ports: Vec::new(),
    }
}

/// An external client on the underlay.
#[derive(Debug, Clone)]
pub struct LabExternal {
    /// Client index.
    pub index: usize,
    /// `external-<index>`.
    pub name: String,
    /// Its network namespace.
    pub netns: NetNs,
    /// Its addresses: IPv4 first, then IPv6.
    pub addresses: Vec<IpAddr>,
    /// Its interface on the underlay, `eth0`.
    pub interface: String,
}

impl LabExternal {
    /// The client address of `family`, if the lab has that family.
    pub fn address(&self, family: Family) -> Option<IpAddr> {
        pick(&self.addresses, family)
    }
}

fn pick(addresses: &[IpAddr], family: Family) -> Option<IpAddr> {
    addresses.iter().copied().find(|a| Family::of(a) == family)
}

/// The lab: namespaces, links, routes and the pods' servers. Dropping it stops the servers and
/// deletes every namespace it created (also when dropped during a panic).
#[derive(Debug)]
pub struct Lab {
    spec: LabSpec,
    prefix: String,
    underlay: NetNs,
    nodes: Vec<LabNode>,
    pods: Vec<LabPod>,
    externals: Vec<LabExternal>,
    /// Namespaces created so far, in creation order.
    created: Vec<NetNs>,
    servers: Vec<Server>,
}

/// The model of node `i` of a lab built from `spec` (what [`Lab::node_state`] returns), from
/// the address plan alone: the policy table computes its expectations without a lab.
pub(crate) fn planned_node(spec: LabSpec, i: usize) -> Node {
    let mut addresses = vec![node_v4(i)];
    let mut pod_cidrs = vec![pod_cidr_v4(i)];
    if spec.ipv6 {
        addresses.push(node_v6(i));
        pod_cidrs.push(pod_cidr_v6(i));
    }
    Node {
        name: format!("node-{i}"),
        addresses,
        pod_cidrs,
        cluster_cidrs: cluster_cidrs(spec.ipv6),
        service_cidrs: service_cidrs(spec.ipv6),
        node_port_range: PortRange::default(),
        interfaces: Interfaces {
            uplink: "eth0".to_owned(),
        },
        masquerade: Masquerade::default(),
        mtu: 1500,
        external_mode: dataplane_core::ExternalMode::default(),
    }
}

/// The state of node `i` of a lab built from `spec` with its first pod (if it has pods) as
/// its workload, from the address plan alone (what [`Lab::desired_state`] gives for a lab of
/// one pod per node): the host and L2 tables plan their states without a lab.
pub(crate) fn planned_state_with_first_pod(
    spec: LabSpec,
    i: usize,
) -> dataplane_core::DesiredState {
    let mut state = dataplane_core::DesiredState::new(planned_node(spec, i));
    let mut addresses = vec![pod_v4(i, 0)];
    if spec.ipv6 {
        addresses.push(pod_v6(i, 0));
    }
    // Pods are numbered node-major.
    let index = i * spec.pods_per_node;
    state.endpoints = (0..spec.pods_per_node.min(1))
        .map(|_| pod_endpoint(&format!("pod-{i}-0"), &format!("vp{index}"), &addresses))
        .collect();
    state
}

/// The cluster-wide pod CIDRs.
pub fn cluster_cidrs(ipv6: bool) -> Vec<IpNetwork> {
    let mut v = vec![net("10.244.0.0/16")];
    if ipv6 {
        v.push(net("fd00:244::/48"));
    }
    v
}

/// The service CIDRs.
pub fn service_cidrs(ipv6: bool) -> Vec<IpNetwork> {
    let mut v = vec![net("10.96.0.0/12")];
    if ipv6 {
        v.push(net("fd00:96::/108"));
    }
    v
}

fn net(s: &str) -> IpNetwork {
    s.parse().expect("constant CIDR")
}

fn v6(s: &str) -> IpAddr {
    IpAddr::V6(s.parse::<Ipv6Addr>().expect("generated IPv6 address"))
}

pub(crate) fn node_v4(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(172, 18, 0, (10 + i) as u8))
}
pub(crate) fn node_v6(i: usize) -> IpAddr {
    v6(&format!("fd00:18::{}", 10 + i))
}
pub(crate) fn pod_v4(i: usize, j: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 244, i as u8, (10 + j) as u8))
}
pub(crate) fn pod_v6(i: usize, j: usize) -> IpAddr {
    v6(&format!("fd00:244:0:{i}::{}", 10 + j))
}
pub(crate) fn pod_cidr_v4(i: usize) -> IpNetwork {
    net(&format!("10.244.{i}.0/24"))
}
pub(crate) fn pod_cidr_v6(i: usize) -> IpNetwork {
    net(&format!("fd00:244:0:{i}::/64"))
}
pub(crate) fn ext_v4(k: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(172, 18, 255, (1 + k) as u8))
}
pub(crate) fn ext_v6(k: usize) -> IpAddr {
    v6(&format!("fd00:18::ff:{}", 1 + k))
}

const GATEWAY_V4: &str = "172.18.0.1";
const GATEWAY_V6: &str = "fd00:18::1";
const POD_GATEWAY_V4: &str = "169.254.1.1";
const POD_GATEWAY_V6: &str = "fe80::1";

fn random_u16() -> u16 {
    (RandomState::new().hash_one(std::time::SystemTime::now()) & 0xffff) as u16
}

impl Lab {
    /// Builds the lab. On error everything created so far is removed again.
    pub fn new(spec: LabSpec) -> Result<Lab, LabError> {
        spec.check()?;
        sweep_stale();
        let prefix = format!(
            "{NAME_PREFIX}{}-{}{:04x}",
            std::process::id(),
            LAB_COUNTER.fetch_add(1, Ordering::Relaxed),
            random_u16()
        );
        let mut lab = Lab {
            spec,
            underlay: NetNs::new(format!("{prefix}-u")),
            prefix,
            nodes: Vec::new(),
            pods: Vec::new(),
            externals: Vec::new(),
            created: Vec::new(),
            servers: Vec::new(),
        };
        #[cfg(test)]
        tests::LAST_PREFIX.with(|p| p.replace(lab.prefix.clone()));
        // `lab` is dropped (and cleaned up) if any step fails.
        lab.build()?;
        tracing::debug!(prefix = %lab.prefix, ?spec, "lab ready");
        Ok(lab)
    }

    fn create_netns(&mut self, ns: &NetNs) -> Result<(), LabError> {
        #[cfg(test)]
        if tests::FAIL_AFTER.with(std::cell::Cell::get) == Some(self.created.len()) {
            return Err(NetNsError::Command {
                command: format!("ip netns add {}", ns.name()),
                status: "injected".to_owned(),
                stderr: "fault injected by a test".to_owned(),
            }
            .into());
        }
        netns::ip(&["netns", "add", ns.name()])?;
        self.created.push(ns.clone());
        // No ICMP rate limit: a test that expects several rejections in a row must see each.
        let mut sysctls = vec![("net/ipv4/icmp_ratelimit", "0")];
        if self.spec.ipv6 {
            // No duplicate address detection: addresses are usable at once, no 1-2 s wait.
            sysctls.extend([
                ("net/ipv6/conf/all/accept_dad", "0"),
                ("net/ipv6/conf/default/accept_dad", "0"),
                ("net/ipv6/icmp/ratelimit", "0"),
            ]);
        }
        Ok(ns.sysctl(&sysctls)?)
    }

    fn build(&mut self) -> Result<(), LabError> {
        let v6on = self.spec.ipv6;
        let underlay = self.underlay.clone();
        self.create_netns(&underlay)?;
        let mut lines = vec![
            "link set lo up".to_owned(),
            "link add br0 type bridge mcast_snooping 0".to_owned(),
            "link set br0 up".to_owned(),
            format!("addr add {GATEWAY_V4}/16 dev br0"),
        ];
        if v6on {
            lines.push(format!("addr add {GATEWAY_V6}/64 dev br0 nodad"));
        }
        underlay.ip_batch(&lines)?;

        for i in 0..self.spec.nodes {
            self.build_node(i)?;
        }
        for i in 0..self.spec.nodes {
            let mut lines = Vec::new();
            for k in (0..self.spec.nodes).filter(|&k| k != i) {
                lines.push(format!(
                    "route add {} via {} dev eth0",
                    pod_cidr_v4(k),
                    node_v4(k)
                ));
                if v6on {
                    lines.push(format!(
                        "route add {} via {} dev eth0",
                        pod_cidr_v6(k),
                        node_v6(k)
                    ));
                }
            }
            self.nodes[i].netns.ip_batch(&lines)?;
        }
        for i in 0..self.spec.nodes {
            for j in 0..self.spec.pods_per_node {
                self.build_pod(i, j)?;
            }
        }
        for k in 0..self.spec.external_clients {
            self.build_external(k)?;
        }
        for p in 0..self.pods.len() {
            let server = self.pods[p].serve(SERVER_PORT)?;
            self.servers.push(server);
        }
        Ok(())
    }

    /// Creates a veth pair from `ns` (`inside`) to the underlay bridge (`port`).
    fn plug_into_underlay(&self, ns: &NetNs, inside: &str, port: &str) -> Result<(), LabError> {
        ns.ip_batch(&[
            "link set lo up".to_owned(),
            format!(
                "link add {inside} type veth peer name {port} netns {}",
                self.underlay.name()
            ),
        ])?;
        Ok(self.underlay.ip_batch(&[
            format!("link set {port} master br0"),
            format!("link set {port} up"),
        ])?)
    }

    fn build_node(&mut self, i: usize) -> Result<(), LabError> {
        let v6on = self.spec.ipv6;
        let ns = NetNs::new(format!("{}-n{i}", self.prefix));
        self.create_netns(&ns)?;
        let mut sysctls = vec![
            ("net/ipv4/ip_forward", "1"),
            ("net/ipv4/conf/all/rp_filter", "0"),
            ("net/ipv4/conf/default/rp_filter", "0"),
            // Hairpin traffic leaves by the veth it came in on; no ICMP redirect to the pod.
            ("net/ipv4/conf/all/send_redirects", "0"),
            ("net/ipv4/conf/default/send_redirects", "0"),
        ];
        if v6on {
            sysctls.push(("net/ipv6/conf/all/forwarding", "1"));
        }
        ns.sysctl(&sysctls)?;
        self.plug_into_underlay(&ns, "eth0", &format!("n{i}"))?;
        let mut lines = vec![
            "link set eth0 up".to_owned(),
            format!("addr add {}/16 dev eth0", node_v4(i)),
            format!("route add 0.0.0.0/0 via {GATEWAY_V4} dev eth0"),
        ];
        let mut addresses = vec![node_v4(i)];
        let mut pod_cidrs = vec![pod_cidr_v4(i)];
        if v6on {
            lines.push(format!("addr add {}/64 dev eth0 nodad", node_v6(i)));
            lines.push(format!("route add ::/0 via {GATEWAY_V6} dev eth0"));
            addresses.push(node_v6(i));
            pod_cidrs.push(pod_cidr_v6(i));
        }
        ns.ip_batch(&lines)?;
        self.nodes.push(LabNode {
            index: i,
            name: format!("node-{i}"),
            netns: ns,
            addresses,
            pod_cidrs,
            uplink: "eth0".to_owned(),
        });
        Ok(())
    }

    fn build_pod(&mut self, i: usize, j: usize) -> Result<(), LabError> {
        let v6on = self.spec.ipv6;
        let index = self.pods.len();
        let ns = NetNs::new(format!("{}-p{index}", self.prefix));
        self.create_netns(&ns)?;
        let host_if = format!("vp{index}");
        let node_ns = self.nodes[i].netns.clone();
        node_ns.ip_batch(&[
            format!(
                "link add {host_if} address {GATEWAY_MAC} type veth peer name eth0 netns {}",
                ns.name()
            ),
            format!("link set {host_if} up"),
        ])?;
        let mut lines = vec![
            "link set lo up".to_owned(),
            "link set eth0 up".to_owned(),
            format!("addr add {}/32 dev eth0", pod_v4(i, j)),
            format!("route add {POD_GATEWAY_V4} dev eth0 scope link"),
            format!("neigh replace {POD_GATEWAY_V4} lladdr {GATEWAY_MAC} dev eth0 nud permanent"),
            format!("route add 0.0.0.0/0 via {POD_GATEWAY_V4} dev eth0"),
        ];
        let mut node_lines = vec![format!("route add {}/32 dev {host_if}", pod_v4(i, j))];
        let mut addresses = vec![pod_v4(i, j)];
        if v6on {
            lines.push(format!("addr add {}/128 dev eth0 nodad", pod_v6(i, j)));
            lines.push(format!(
                "neigh replace {POD_GATEWAY_V6} lladdr {GATEWAY_MAC} dev eth0 nud permanent"
            ));
            lines.push(format!("route add ::/0 via {POD_GATEWAY_V6} dev eth0"));
            node_lines.push(format!("route add {}/128 dev {host_if}", pod_v6(i, j)));
            addresses.push(pod_v6(i, j));
        }
        ns.ip_batch(&lines)?;
        node_ns.ip_batch(&node_lines)?;
        self.pods.push(LabPod {
            index,
            node: i,
            name: format!("pod-{i}-{j}"),
            netns: ns,
            addresses,
            host_interface: host_if,
        });
        Ok(())
    }

    fn build_external(&mut self, k: usize) -> Result<(), LabError> {
        let ns = NetNs::new(format!("{}-x{k}", self.prefix));
        self.create_netns(&ns)?;
        self.plug_into_underlay(&ns, "eth0", &format!("x{k}"))?;
        let mut lines = vec![
            "link set eth0 up".to_owned(),
            format!("addr add {}/16 dev eth0", ext_v4(k)),
        ];
        let mut addresses = vec![ext_v4(k)];
        if self.spec.ipv6 {
            lines.push(format!("addr add {}/64 dev eth0 nodad", ext_v6(k)));
            addresses.push(ext_v6(k));
        }
        ns.ip_batch(&lines)?;
        self.externals.push(LabExternal {
            index: k,
            name: format!("external-{k}"),
            netns: ns,
            addresses,
            interface: "eth0".to_owned(),
        });
        Ok(())
    }

    /// The spec the lab was built from.
    pub fn spec(&self) -> LabSpec {
        self.spec
    }

    /// The unique prefix of this lab's namespace names.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The underlay namespace holding the bridge `br0`.
    pub fn underlay(&self) -> &NetNs {
        &self.underlay
    }

    /// All namespaces of the lab.
    pub fn namespaces(&self) -> Vec<NetNs> {
        self.created.clone()
    }

    /// The nodes.
    pub fn nodes(&self) -> &[LabNode] {
        &self.nodes
    }

    /// All pods, node-major.
    pub fn pods(&self) -> &[LabPod] {
        &self.pods
    }

    /// The external clients.
    pub fn externals(&self) -> &[LabExternal] {
        &self.externals
    }

    /// Node `i`. Panics if there is none (like slice indexing).
    pub fn node(&self, i: usize) -> &LabNode {
        self.try_node(i).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Pod `p` (lab-wide index). Panics if there is none.
    pub fn pod(&self, p: usize) -> &LabPod {
        self.try_pod(p).unwrap_or_else(|e| panic!("{e}"))
    }

    /// External client `k`. Panics if there is none.
    pub fn external(&self, k: usize) -> &LabExternal {
        self.try_external(k).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Node `i`, or an error naming the index.
    pub fn try_node(&self, i: usize) -> Result<&LabNode, LabError> {
        self.nodes.get(i).ok_or(LabError::NoSuch {
            what: "node",
            index: i,
            count: self.nodes.len(),
        })
    }

    /// Pod `p`, or an error naming the index.
    pub fn try_pod(&self, p: usize) -> Result<&LabPod, LabError> {
        self.pods.get(p).ok_or(LabError::NoSuch {
            what: "pod",
            index: p,
            count: self.pods.len(),
        })
    }

    /// External client `k`, or an error naming the index.
    pub fn try_external(&self, k: usize) -> Result<&LabExternal, LabError> {
        self.externals.get(k).ok_or(LabError::NoSuch {
            what: "external client",
            index: k,
            count: self.externals.len(),
        })
    }

    /// Pods running on node `i`.
    pub fn pods_on(&self, i: usize) -> impl Iterator<Item = &LabPod> {
        self.pods.iter().filter(move |p| p.node == i)
    }

    /// The pod called `name`.
    pub fn pod_by_name(&self, name: &str) -> Option<&LabPod> {
        self.pods.iter().find(|p| p.name == name)
    }

    /// The model of node `i`, as a backend on that node should be given it. Panics if there is
    /// no node `i`.
    pub fn node_state(&self, i: usize) -> Node {
        let _ = self.node(i);
        planned_node(self.spec, i)
    }

    /// The workloads of node `i` (namespace `default`, the pod name, its host-side veth and
    /// addresses). Panics if there is no node `i`.
    pub fn endpoints(&self, i: usize) -> Vec<Endpoint> {
        let _ = self.node(i);
        self.pods_on(i).map(LabPod::endpoint).collect()
    }

    /// Pod `pod` as a service backend: its address of `family`, ready, with its node's name
    /// (so the node it runs on sees it as node-local).
    pub fn backend(&self, pod: usize, family: Family) -> Result<Backend, LabError> {
        let p = self.try_pod(pod)?;
        let ip = p.address(family).ok_or_else(|| LabError::NoIpv6 {
            what: format!("backend address of {}", p.name),
        })?;
        let mut backend = Backend::new(ip);
        backend.node_name = Some(self.node(p.node).name.as_str().into());
        Ok(backend)
    }

    /// Node `i`'s model with its endpoints and no services. Panics if there is no node `i`.
    pub fn desired_state(&self, i: usize) -> dataplane_core::DesiredState {
        let mut state = dataplane_core::DesiredState::new(self.node_state(i));
        state.endpoints = self.endpoints(i);
        state
    }

    /// Makes external client `external` send traffic for `cidr` to node `node` (`ip route
    /// replace CIDR via NODE-ADDRESS` in the client's namespace).
    pub fn route_via_node(
        &self,
        external: usize,
        cidr: IpNetwork,
        node: usize,
    ) -> Result<(), LabError> {
        let client = self.try_external(external)?;
        let gateway = self.gateway_for(cidr, node)?;
        Ok(client
            .netns
            .ip_batch(&[format!("route replace {cidr} via {gateway} dev eth0")])?)
    }

    /// Removes a route added by [`Lab::route_via_node`].
    pub fn unroute(&self, external: usize, cidr: IpNetwork) -> Result<(), LabError> {
        let client = self.try_external(external)?;
        Ok(client
            .netns
            .ip_batch(&[format!("route del {cidr} dev eth0")])?)
    }

    fn gateway_for(&self, cidr: IpNetwork, node: usize) -> Result<IpAddr, LabError> {
        let node = self.try_node(node)?;
        let family = Family::of(&cidr.ip());
        node.address(family).ok_or_else(|| LabError::NoIpv6 {
            what: format!("route to {cidr} via {}", node.name),
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        traffic::stop_all(&mut self.servers);
        for ns in self.created.iter().rev() {
            if let Err(e) = netns::ip(&["netns", "del", ns.name()]) {
                tracing::warn!(netns = ns.name(), error = %e, "cannot delete lab namespace");
                eprintln!(
                    "dataplane-testkit: cannot delete namespace {}: {e}",
                    ns.name()
                );
            }
        }
        tracing::debug!(prefix = %self.prefix, "lab removed");
    }
}

/// Deletes namespaces left behind by labs of processes that no longer exist (a test run killed
/// with SIGKILL cannot run its `Drop`s).
fn sweep_stale() {
    for name in netns::list_netns() {
        let Some(rest) = name.strip_prefix(NAME_PREFIX) else {
            continue;
        };
        let Some((pid, _)) = rest.split_once('-') else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        tracing::info!(netns = %name, "removing namespace of a dead lab");
        if let Err(e) = netns::ip(&["netns", "del", &name]) {
            tracing::warn!(netns = %name, error = %e, "cannot remove stale namespace");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        /// Makes the Nth namespace creation of this thread's next lab fail.
        pub(super) static FAIL_AFTER: std::cell::Cell<Option<usize>> =
            const { std::cell::Cell::new(None) };
        /// The prefix of this thread's last lab.
        pub(super) static LAST_PREFIX: std::cell::RefCell<String> =
            const { std::cell::RefCell::new(String::new()) };
    }

    #[test]
    fn failure_half_way_removes_what_was_built() {
        if !crate::require_root("failure_half_way_removes_what_was_built") {
            return;
        }
        let spec = LabSpec {
            nodes: 2,
            pods_per_node: 2,
            external_clients: 1,
            ipv6: true,
        };
        // 0: underlay, 1-2: nodes, 3-6: pods, 7: external client.
        for fail_at in [1, 4, 7] {
            FAIL_AFTER.with(|f| f.set(Some(fail_at)));
            let err = Lab::new(spec).unwrap_err();
            FAIL_AFTER.with(|f| f.set(None));
            assert!(err.to_string().contains("fault injected"), "{err}");
            let prefix = LAST_PREFIX.with(std::cell::RefCell::take);
            assert!(prefix.starts_with(NAME_PREFIX), "{prefix:?}");
            let left: Vec<String> = netns::list_netns()
                .into_iter()
                .filter(|n| n.starts_with(&format!("{prefix}-")))
                .collect();
            assert!(
                left.is_empty(),
                "left behind after a failure at namespace {fail_at}: {left:?}"
            );
        }
    }

    #[test]
    fn pods_as_backends_and_endpoints() {
        if !crate::require_root("pods_as_backends_and_endpoints") {
            return;
        }
        let lab = Lab::new(LabSpec {
            nodes: 2,
            pods_per_node: 1,
            external_clients: 0,
            ipv6: false,
        })
        .unwrap();
        let backend = lab.backend(1, Family::V4).unwrap();
        assert_eq!(backend.ip, pod_v4(1, 0));
        assert!(backend.is_local_to(&lab.node_state(1)));
        assert!(!backend.is_local_to(&lab.node_state(0)));
        assert!(matches!(
            lab.backend(1, Family::V6),
            Err(LabError::NoIpv6 { .. })
        ));
        assert!(matches!(
            lab.backend(2, Family::V4),
            Err(LabError::NoSuch {
                what: "pod",
                index: 2,
                count: 2
            })
        ));
        let endpoint = lab.pod(1).endpoint();
        assert_eq!(endpoint.interface, "vp1");
        assert_eq!(lab.endpoints(1), vec![endpoint]);
    }

    #[test]
    fn spec_limits_are_checked() {
        let spec = LabSpec {
            nodes: 0,
            pods_per_node: 1,
            external_clients: 0,
            ipv6: false,
        };
        let err = Lab::new(spec).unwrap_err();
        assert!(
            matches!(err, LabError::InvalidSpec { field: "nodes", .. }),
            "{err}"
        );
        let spec = LabSpec {
            nodes: 1,
            pods_per_node: 201,
            external_clients: 0,
            ipv6: false,
        };
        assert!(matches!(
            Lab::new(spec).unwrap_err(),
            LabError::InvalidSpec {
                field: "pods_per_node",
                ..
            }
        ));
    }

    #[test]
    fn address_plan() {
        assert_eq!(node_v4(1).to_string(), "172.18.0.11");
        assert_eq!(node_v6(1).to_string(), "fd00:18::11");
        assert_eq!(pod_v4(2, 3).to_string(), "10.244.2.13");
        assert_eq!(pod_v6(2, 3).to_string(), "fd00:244:0:2::13");
        assert_eq!(ext_v6(0).to_string(), "fd00:18::ff:1");
        assert!(cluster_cidrs(true)[1].contains(pod_v6(7, 0)));
        assert!(cluster_cidrs(false)[0].contains(pod_v4(7, 0)));
        assert!(pod_cidr_v6(3).contains(pod_v6(3, 9)));
    }
}
