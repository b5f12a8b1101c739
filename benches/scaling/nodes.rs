//! The end-to-end lab: one network namespace per node, each node's backend pods serving and
//! its dataplane opened through the library's `open` with the bench's settings.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Instant;

use dataplane::{open, BoxDataplane, DataplaneKind, Options, Selection};
use dataplane_testkit::{CgroupScope, Lab, LabPod, LabSpec, NetNs};

use crate::clock::log;
use crate::in_situ::InSituStats;
use crate::load;

/// The backends under test, each on its own node (node 0 has none: the direct limit).
pub const BACKENDS: [&str; 4] = ["ebpf", "ebpf-socket", "nftables", "iptables"];
/// Backend pods per node (the client is one more).
const BACKEND_PODS: usize = 10;

/// A lab node: "direct" (node 0, no dataplane) or one of [`BACKENDS`].
pub struct Node {
    /// "direct" or the backend's name in [`BACKENDS`].
    pub kind: &'static str,
    /// The lab's node index.
    pub index: usize,
    /// The node's dataplane, while it is open.
    pub dp: Option<BoxDataplane>,
    /// Why the node cannot be measured (its dataplane did not open or program).
    pub error: Option<String>,
    /// Addresses of the backend pods (the client pod is not among them).
    pub pods: Vec<Ipv4Addr>,
    /// Names of the backend pods, as their servers answer.
    pub names: Vec<String>,
}

impl Node {
    /// Connections the socket hooks gave a backend at `connect()` so far; 0 without them.
    pub fn socket_balanced(&self) -> u64 {
        self.dp
            .as_ref()
            .and_then(|d| d.stats().ok())
            .and_then(|s| s.other.get("socket_translated").copied())
            .unwrap_or(0)
    }
}

/// The lab with its nodes, servers and dataplanes, torn down when dropped (the dataplanes
/// first, the lab's namespaces last).
pub struct BenchLab {
    /// Node 0 is direct; node `i` runs `BACKENDS[i - 1]`.
    pub nodes: Vec<Node>,
    /// The statistics of the "ebpf" node's programs.
    pub in_situ: InSituStats,
    _servers: Vec<load::Server>,
    _cgroup: CgroupScope,
    pub lab: Lab,
}

impl BenchLab {
    /// Builds the lab, starts the servers and opens the dataplane of every node whose kind
    /// `open` accepts (end to end: all). A dataplane that does not open leaves its node with
    /// an error; the others are measured.
    /// `services`: the most services the dataplanes will hold (sizes their eBPF maps).
    pub fn set_up(
        start: Instant,
        open: &dyn Fn(&str) -> bool,
        services: usize,
    ) -> Result<BenchLab, String> {
        log(
            start,
            &format!(
                "lab: {} nodes x {} pods",
                1 + BACKENDS.len(),
                1 + BACKEND_PODS
            ),
        );
        let lab = Lab::new(LabSpec {
            nodes: 1 + BACKENDS.len(),
            pods_per_node: 1 + BACKEND_PODS,
            external_clients: 0,
            ipv6: false,
        })
        .map_err(|e| format!("lab: {e}"))?;
        // This process's own cgroup; the socket LB node's client pod gets a threaded child of
        // it, where that node attaches its hooks (before any thread enters the pod).
        let mut cgroup = CgroupScope::enter(&format!("dp-bench-{}", std::process::id()))
            .map_err(|e| format!("bench cgroup: {e}"))?;
        let socket_cgroup = socket_client_cgroup(&lab, &mut cgroup)?;
        let mut servers = Vec::new();
        let mut nodes = Vec::new();
        for i in 0..=BACKENDS.len() {
            nodes.push(start_node(&lab, i, &mut servers)?);
        }
        let mut in_situ = InSituStats::start();
        for node in nodes.iter_mut().skip(1).filter(|n| open(n.kind)) {
            let before = InSituStats::ids();
            match open_dataplane(
                node.kind,
                lab.node(node.index).netns.path(),
                "e2e",
                Some(&socket_cgroup),
                services,
            ) {
                Ok(dp) => node.dp = Some(dp),
                Err(e) => node.error = Some(e),
            }
            if node.kind == "ebpf" {
                in_situ.adopt_new(&before);
            }
        }
        Ok(BenchLab {
            nodes,
            in_situ,
            _servers: servers,
            _cgroup: cgroup,
            lab,
        })
    }
}

/// The threaded child of `cgroup` that the socket LB node's client pod's threads join.
fn socket_client_cgroup(lab: &Lab, cgroup: &mut CgroupScope) -> Result<PathBuf, String> {
    let socket_node = 1 + BACKENDS
        .iter()
        .position(|b| *b == "ebpf-socket")
        .ok_or("no socket LB node")?;
    let socket_client = &lab
        .pods_on(socket_node)
        .next()
        .ok_or("no client pod")?
        .netns;
    cgroup
        .threaded_child("socket-lb-client", [socket_client])
        .map_err(|e| format!("socket LB client cgroup: {e}"))
}

/// Node `i` without its dataplane: the client's port range widened, a server started on
/// each backend pod (into `servers`).
fn start_node(lab: &Lab, i: usize, servers: &mut Vec<load::Server>) -> Result<Node, String> {
    let pods: Vec<&LabPod> = lab.pods_on(i).collect();
    let client = pods[0];
    client
        .netns
        .sysctl(&[("net/ipv4/ip_local_port_range", "1024 65535")])
        .map_err(|e| format!("sysctl: {e}"))?;
    for p in &pods[1..] {
        servers.push(load::Server::start(&p.netns, &p.name)?);
    }
    Ok(Node {
        kind: if i == 0 { "direct" } else { BACKENDS[i - 1] },
        index: i,
        dp: None,
        error: None,
        pods: pods[1..].iter().map(|p| pod_ipv4(p)).collect(),
        names: pods[1..].iter().map(|p| p.name.clone()).collect(),
    })
}

/// The namespace of node `node`'s client pod.
pub fn client(lab: &Lab, node: usize) -> &NetNs {
    &lab.pods_on(node).next().expect("client pod").netns
}

fn pod_ipv4(pod: &LabPod) -> Ipv4Addr {
    match pod.address(dataplane_testkit::Family::V4) {
        Some(IpAddr::V4(a)) => a,
        _ => unreachable!("the lab is IPv4"),
    }
}

fn ebpf_pin_dir(tag: &str) -> PathBuf {
    PathBuf::from(format!("/sys/fs/bpf/dp-bench-{}-{tag}", std::process::id()))
}

/// `Capacities::services` for up to `services` synthetic services: each ClusterIP takes two
/// frontend entries (its port and the wildcard for unknown ports), and the synthetic NodePorts
/// (the first 2768 services) a few more per node address; never below 64k, the size the
/// bench has always measured up to 10k services with (the library's default).
///
/// Bigger than the default only beyond 24k services: `dp_svc` is a preallocated hash, about
/// 100 bytes of kernel memory per entry whether used or not (7 MiB at 64k, 28 MiB at 256k),
/// so the default stays sized for 10k-service clusters and larger ones set it (see the eBPF
/// crate's README, "Capacities").
pub fn ebpf_service_entries(services: usize) -> u32 {
    let want = (2 * services + 16_384).next_power_of_two();
    u32::try_from(want).unwrap_or(u32::MAX).max(1 << 16)
}

/// The dataplane of bench mode `kind` in `netns`, opened by the library with the bench's
/// settings, its eBPF maps sized for `services` services ([`ebpf_service_entries`]);
/// "ebpf-socket" is the eBPF dataplane with its socket hooks on `cgroup`. `pin_tag` keeps
/// the eBPF pin directories of the bench's phases apart.
pub fn open_dataplane(
    kind: &str,
    netns: &Path,
    pin_tag: &str,
    cgroup: Option<&Path>,
    services: usize,
) -> Result<BoxDataplane, String> {
    let mut options = Options::in_netns(netns);
    let dataplane = match kind {
        "ebpf" | "ebpf-socket" => {
            options.ebpf.pin_dir = ebpf_pin_dir(&format!("{kind}-{pin_tag}"));
            if kind == "ebpf-socket" {
                let cgroup = cgroup.ok_or("socket LB needs the bench's cgroup")?;
                options.ebpf.socket_lb_cgroup = Some(cgroup.to_owned());
                // Its connections are pod-to-pod from the first packet: routed like the
                // translated ones, straight to the backend's veth.
                options.ebpf.host_routing = true;
            }
            // The other capacities' defaults fit 100k x 10 synthetic services: 65k distinct
            // backends (their addresses repeat beyond), 1M of the 2M slots, 100k of the 128k
            // names.
            options.ebpf.capacities.services = ebpf_service_entries(services);
            DataplaneKind::Ebpf
        }
        "nftables" => {
            // Beyond 10k services the nftables node runs the layout recommended for large
            // clusters: the plain service ports pick through shared chains, so the chains of
            // the namespace (which the kernel walks on every commit) do not grow with the
            // services (`NetfilterConfig::shared_pick_chains`). Up to 10k, a chain per
            // service port as by default.
            options.nftables.shared_pick_chains = services > 10_000;
            DataplaneKind::Nftables
        }
        "iptables" | "iptables-nft" => {
            // "iptables": iptables-legacy, the flavour the end-to-end rows run (see the
            // report's Method section); "iptables-nft": the same backend with the nf_tables
            // tools, measured beside it in the control plane.
            options.iptables.iptables_mode = if kind == "iptables" {
                dataplane_iptables::config::IptablesMode::Legacy
            } else {
                dataplane_iptables::config::IptablesMode::Nft
            };
            DataplaneKind::Iptables
        }
        other => return Err(format!("unknown backend {other}")),
    };
    open(Selection::Only(dataplane), &options)
        .map(|opened| opened.dataplane)
        .map_err(|e| {
            let mut text = format!("open {kind}: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                text = format!("{text}: {cause}");
                source = cause.source();
            }
            text
        })
}
