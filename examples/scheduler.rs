//! A toy custom scheduler that embeds `dataplane`: it places workloads on the two nodes of a
//! testkit lab, builds each node's desired state from its placement, programs node-0 with the
//! eBPF dataplane and node-1 with nftables, and checks with real TCP and UDP that a Service's
//! ClusterIP reaches its workloads wherever they run, from pods on both nodes and from
//! outside through either node. Then it moves the only workload of one Service to the other
//! node: until the nodes are re-synced the probes are refused at the old place (so they do
//! tell a stale dataplane from a current one); after the re-sync every probe reaches the
//! workload on its new node and none the old place. Any other outcome is an error.
//!
//! ```text
//!   external-0 --(10.96.0.0/12 via node-0)--+            +--(via node-1)-- external-1
//!                                           br0 (underlay)
//!           node-0: ebpf  ------------------+------------------  node-1: nftables
//!           pod-0-0 pod-0-1 pod-0-2                     pod-1-0 pod-1-1 pod-1-2
//!           (3 slots per node; a workload runs in a slot, its server answers "<name>@<node>")
//! ```
//!
//! Every change reaches the kernel through `Dataplane::sync(previous, desired)`: the first one
//! is a full apply, later ones are incremental.
//!
//! Run as root: `cargo run --example scheduler --features ebpf,nft`

use std::collections::{BTreeMap, BTreeSet};
use std::error::Error;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use dataplane::{
    open, BoxDataplane, DataplaneKind, DesiredState, IpFamily, ObjectName, Options, Protocol,
    Selection, Service, ServicePort,
};
use dataplane_testkit::{probe, serve, Lab, LabSpec, NetNs, ProbeOutcome, Server, POD_NAMESPACE};

/// Where every workload listens (TCP and UDP); the Services map port 80 to it.
const WORKLOAD_PORT: u16 = 9376;
/// Pod slots per node: the scheduler's capacity.
const SLOTS_PER_NODE: usize = 3;
/// Probes per client, Service and protocol.
const PROBES: usize = 3;
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// The Services: name and ClusterIP.
const SERVICES: [(&str, &str); 2] = [("web", "10.96.0.10"), ("cache", "10.96.0.11")];
/// The dataplane each node runs.
const KINDS: [DataplaneKind; 2] = [DataplaneKind::Ebpf, DataplaneKind::Nftables];

type BoxError = Box<dyn Error>;

/// A workload to place: a replica of a Service, or a client pinned to one node.
#[derive(Debug, Clone)]
struct Workload {
    name: String,
    /// The Service it serves; `None` for a client.
    service: Option<&'static str>,
    /// The node it must run on.
    pinned: Option<usize>,
}

/// A placed workload.
#[derive(Debug)]
struct Placement {
    workload: Workload,
    node: usize,
    /// The lab pod (slot) it runs in.
    slot: usize,
    /// Its server (Service replicas only); dropping it stops the workload.
    server: Option<Server>,
}

impl Placement {
    /// What its server answers with, and so what a probe reports.
    fn answer(&self) -> String {
        answer_name(&self.workload.name, self.node)
    }
}

fn answer_name(workload: &str, node: usize) -> String {
    format!("{workload}@node-{node}")
}

/// The scheduler: which workload runs where. Placement rule: a pinned workload goes to its
/// node; any other to the least-loaded node (fewest workloads; the lower index on a tie) that
/// has a free slot and is not excluded.
struct Scheduler<'lab> {
    lab: &'lab Lab,
    placements: Vec<Placement>,
}

impl<'lab> Scheduler<'lab> {
    fn new(lab: &'lab Lab) -> Self {
        Self {
            lab,
            placements: Vec::new(),
        }
    }

    fn load(&self, node: usize) -> usize {
        self.placements.iter().filter(|p| p.node == node).count()
    }

    fn free_slot(&self, node: usize) -> Option<usize> {
        self.lab
            .pods_on(node)
            .map(|pod| pod.index)
            .find(|slot| self.placements.iter().all(|p| p.slot != *slot))
    }

    /// Places `workload` (never on `exclude`), starts it, and says where and why.
    fn place(&mut self, workload: Workload, exclude: Option<usize>) -> Result<(), BoxError> {
        let loads: Vec<usize> = (0..self.lab.nodes().len()).map(|n| self.load(n)).collect();
        let candidates: Vec<usize> = match workload.pinned {
            Some(node) => vec![node],
            None => (0..loads.len()).filter(|n| Some(*n) != exclude).collect(),
        };
        let node = candidates
            .into_iter()
            .filter(|n| self.free_slot(*n).is_some())
            .min_by_key(|n| (loads[*n], *n))
            .ok_or_else(|| format!("no node has a free slot for {}", workload.name))?;
        let slot = self.free_slot(node).ok_or("free slot vanished")?;
        let pod = self.lab.pod(slot);
        let why = if workload.pinned.is_some() {
            "pinned".to_owned()
        } else {
            let loads: Vec<String> = loads
                .iter()
                .enumerate()
                .map(|(n, l)| {
                    if Some(n) == exclude {
                        format!("node-{n}: excluded")
                    } else {
                        format!("node-{n}: {l}")
                    }
                })
                .collect();
            format!("least loaded; {}", loads.join(", "))
        };
        println!(
            "  {:<9} -> node-{node} in {} ({})  [{why}]",
            workload.name, pod.name, pod.addresses[0]
        );
        let server = match workload.service {
            // The workload's process: a server answering with the workload's name and node.
            Some(_) => Some(serve(
                &pod.netns,
                &answer_name(&workload.name, node),
                WORKLOAD_PORT,
            )?),
            None => None,
        };
        self.placements.push(Placement {
            workload,
            node,
            slot,
            server,
        });
        Ok(())
    }

    /// Stops `name` and frees its slot; returns the workload and the node it ran on.
    fn evict(&mut self, name: &str) -> Result<(Workload, usize), BoxError> {
        let at = self
            .placements
            .iter()
            .position(|p| p.workload.name == name)
            .ok_or_else(|| format!("{name} is not placed"))?;
        let placement = self.placements.remove(at);
        println!(
            "  {:<9} stopped on node-{} ({})",
            name,
            placement.node,
            self.lab.pod(placement.slot).name
        );
        drop(placement.server);
        Ok((placement.workload, placement.node))
    }

    /// Node `node`'s desired state: the workloads placed there as its endpoints, and every
    /// Service with all its replicas, wherever they run, as backends (those on `node` are
    /// node-local through their node name).
    fn desired_state(&self, node: usize) -> Result<DesiredState, BoxError> {
        let mut state = DesiredState::new(self.lab.node_state(node));
        for p in self.placements.iter().filter(|p| p.node == node) {
            let mut endpoint = self.lab.pod(p.slot).endpoint();
            endpoint.name = ObjectName::new(POD_NAMESPACE, &p.workload.name);
            let app = p.workload.service.unwrap_or("client");
            endpoint.labels = std::iter::once(("app".to_owned(), app.to_owned())).collect();
            state.endpoints.push(endpoint);
        }
        for (name, cluster_ip) in SERVICES {
            let mut service = Service::new(ObjectName::new(POD_NAMESPACE, name));
            service.cluster_ips = vec![cluster_ip.parse()?];
            service.ports = [Protocol::Tcp, Protocol::Udp]
                .into_iter()
                .map(|protocol| ServicePort {
                    name: protocol.to_string().to_lowercase(),
                    protocol,
                    port: 80,
                    target_port: WORKLOAD_PORT,
                    node_port: None,
                })
                .collect();
            for p in &self.placements {
                if p.workload.service == Some(name) {
                    service
                        .backends
                        .push(self.lab.backend(p.slot, IpFamily::V4)?);
                }
            }
            state.services.push(service);
        }
        Ok(state)
    }

    /// What probes to each Service may get: its replicas, where they run now.
    fn expectations(&self) -> Vec<Expectation> {
        SERVICES
            .into_iter()
            .map(|(service, cluster_ip)| Expectation {
                service,
                cluster_ip,
                answers: self
                    .placements
                    .iter()
                    .filter(|p| p.workload.service == Some(service))
                    .map(Placement::answer)
                    .collect(),
            })
            .collect()
    }
}

/// One node's dataplane and the state last programmed into it.
struct NodeAgent {
    name: String,
    kind: DataplaneKind,
    dataplane: BoxDataplane,
    programmed: Option<DesiredState>,
}

impl NodeAgent {
    /// Programs `desired`: a full apply the first time, the difference afterwards. After an
    /// error `programmed` stays as it was, as `Dataplane::sync` asks.
    fn sync(&mut self, desired: DesiredState) -> Result<(), BoxError> {
        let report = self
            .dataplane
            .sync(self.programmed.as_ref(), &desired)
            .map_err(|e| format!("sync of {} ({}): {e}", self.name, self.kind))?;
        println!(
            "  {} ({}): {} sync, {} service(s) changed, {} removed, {} kernel object(s) written",
            self.name,
            self.kind,
            if report.full_sync {
                "full"
            } else {
                "incremental"
            },
            report.services_changed,
            report.services_removed,
            report.objects_written
        );
        // The sync succeeded: `desired` is what the kernel holds now, whatever follows.
        self.programmed = Some(desired);
        // The toy's Services need nothing either dataplane lacks: a left-out part is a bug.
        if let Some(skipped) = report.skipped.first() {
            return Err(format!("{}: left out {skipped}", self.name).into());
        }
        Ok(())
    }
}

/// A client of the Services: a pod, or an outside machine whose route to the service CIDR
/// goes through one node.
struct Client<'lab> {
    label: String,
    netns: &'lab NetNs,
}

/// Probe answers, counted per answer.
#[derive(Default)]
struct Tally(BTreeMap<String, usize>);

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(k, n)| format!("{k} x{n}")).collect();
        f.write_str(&parts.join(", "))
    }
}

/// What probes to one Service's ClusterIP may get.
struct Expectation {
    service: &'static str,
    cluster_ip: &'static str,
    /// Answering workloads (`<name>@<node>`), or [`REFUSED`].
    answers: BTreeSet<String>,
}

/// How a refused probe is counted.
const REFUSED: &str = "(refused)";

fn outcome_name(outcome: &ProbeOutcome) -> String {
    match outcome {
        ProbeOutcome::Answered { backend, .. } => backend.clone(),
        ProbeOutcome::Refused => REFUSED.to_owned(),
        ProbeOutcome::Unreachable => "(unreachable)".to_owned(),
        ProbeOutcome::Timeout => "(timeout)".to_owned(),
    }
}

/// Probes each Service from every client, prints what happened, and returns what went wrong:
/// any outcome that is not expected (a replica somewhere else, a refusal, a timeout).
fn check_traffic(
    clients: &[Client<'_>],
    expectations: &[Expectation],
) -> Result<Vec<String>, BoxError> {
    let mut wrong = Vec::new();
    for Expectation {
        service,
        cluster_ip,
        answers: expected,
    } in expectations
    {
        println!(
            "  {service} ({cluster_ip}:80), expected: {}",
            expected.iter().cloned().collect::<Vec<_>>().join(", ")
        );
        let destination = SocketAddr::new(cluster_ip.parse::<IpAddr>()?, 80);
        for client in clients {
            for protocol in [Protocol::Tcp, Protocol::Udp] {
                let mut tally = Tally::default();
                for _ in 0..PROBES {
                    let outcome = probe(client.netns, destination, protocol, PROBE_TIMEOUT)?;
                    *tally.0.entry(outcome_name(&outcome)).or_default() += 1;
                }
                println!("    {:<34} {protocol}: {tally}", client.label);
                if tally.0.keys().any(|answer| !expected.contains(answer)) {
                    wrong.push(format!(
                        "{} -> {service} over {protocol}: {tally}; expected only {}",
                        client.label,
                        expected.iter().cloned().collect::<Vec<_>>().join(" or ")
                    ));
                }
            }
        }
    }
    Ok(wrong)
}

/// Removes the eBPF dataplane's bpffs directory when the run ends, however it ends (a
/// successful `reset` has removed it already).
struct PinDir(PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        match std::fs::remove_dir_all(&self.0) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => eprintln!("warning: cannot remove {}: {e}", self.0.display()),
        }
    }
}

/// Builds the lab, runs the scenario and removes everything again. Fails when traffic does
/// not reach the workloads where the scheduler placed them.
pub fn run() -> Result<(), BoxError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(
            "the scheduler builds network namespaces and programs the kernel: run it as root"
                .into(),
        );
    }
    let lab = Lab::new(LabSpec {
        nodes: 2,
        pods_per_node: SLOTS_PER_NODE,
        external_clients: 2,
        ipv6: false,
    })?;
    let pins = PinDir(PathBuf::from(format!(
        "/sys/fs/bpf/dataplane-scheduler-{}",
        std::process::id()
    )));
    println!("lab: 2 nodes with {SLOTS_PER_NODE} pod slots each, 2 outside clients");
    let mut agents = Vec::new();
    for (node, kind) in KINDS.into_iter().enumerate() {
        agents.push(open_node(&lab, node, kind, &pins.0)?);
    }
    let mut scheduler = Scheduler::new(&lab);
    let result = scenario(&lab, &mut scheduler, &mut agents);
    // Stop the workloads before their namespaces go; take the programs out of the kernel.
    drop(scheduler);
    for agent in &mut agents {
        if let Err(e) = agent.dataplane.reset() {
            eprintln!("warning: reset of {} failed: {e}", agent.name);
        }
    }
    drop(agents);
    drop(pins);
    drop(lab);
    result?;
    println!("traffic followed the workload; lab removed");
    Ok(())
}

fn open_node(
    lab: &Lab,
    node: usize,
    kind: DataplaneKind,
    pin_dir: &Path,
) -> Result<NodeAgent, BoxError> {
    let name = lab.node(node).name.clone();
    let mut options = Options::in_netns(lab.node(node).netns.path());
    options.ebpf.pin_dir = pin_dir.join(&name);
    let opened = open(Selection::Only(kind), &options)
        .map_err(|e| format!("opening a dataplane on {name}: {e}"))?;
    println!("{name}: {} dataplane ({})", opened.kind, opened.reason);
    Ok(NodeAgent {
        name,
        kind: opened.kind,
        dataplane: opened.dataplane,
        programmed: None,
    })
}

fn sync_all(scheduler: &Scheduler<'_>, agents: &mut [NodeAgent]) -> Result<(), BoxError> {
    for (node, agent) in agents.iter_mut().enumerate() {
        agent.sync(scheduler.desired_state(node)?)?;
    }
    Ok(())
}

fn scenario(
    lab: &Lab,
    scheduler: &mut Scheduler<'_>,
    agents: &mut [NodeAgent],
) -> Result<(), BoxError> {
    let workload = |name: &str, service, pinned| Workload {
        name: name.to_owned(),
        service,
        pinned,
    };
    println!("\nplacing workloads (pinned clients first, then the least-loaded node):");
    for w in [
        workload("client-0", None, Some(0)),
        workload("client-1", None, Some(1)),
        workload("web-1", Some("web"), None),
        workload("web-2", Some("web"), None),
        workload("cache-1", Some("cache"), None),
    ] {
        scheduler.place(w, None)?;
    }
    println!("\nprogramming both nodes:");
    sync_all(scheduler, agents)?;

    // Outside clients send the service CIDR to one node each, so both dataplanes see
    // traffic from pods and from the uplink.
    for k in 0..2 {
        lab.route_via_node(k, "10.96.0.0/12".parse()?, k)?;
    }
    let mut clients = Vec::new();
    for p in &scheduler.placements {
        if p.workload.service.is_none() {
            clients.push(Client {
                label: format!("{} (pod on node-{})", p.workload.name, p.node),
                netns: &lab.pod(p.slot).netns,
            });
        }
    }
    for (k, external) in lab.externals().iter().enumerate() {
        clients.push(Client {
            label: format!("{} (outside, via node-{k})", external.name),
            netns: &external.netns,
        });
    }
    println!("\ntraffic to the ClusterIPs ({PROBES} probes per client and protocol):");
    let mut wrong = check_traffic(&clients, &scheduler.expectations())?;

    let (moving, service) = ("cache-1", "cache");
    println!("\nthe scheduler drains {moving} from its node and places it again elsewhere:");
    let (w, from) = scheduler.evict(moving)?;
    scheduler.place(w, Some(from))?;
    // The nodes still have the old placement: the only backend of the Service is the old
    // place, where nothing listens any more. This also shows that the probes tell a stale
    // dataplane from an up-to-date one.
    println!("\nbefore the nodes are told, {service} traffic still goes to the old place:");
    let stale: Vec<Expectation> = scheduler
        .expectations()
        .into_iter()
        .filter(|e| e.service == service)
        .map(|e| Expectation {
            answers: std::iter::once(REFUSED.to_owned()).collect(),
            ..e
        })
        .collect();
    wrong.extend(check_traffic(&clients, &stale)?);
    println!("\nre-syncing both nodes:");
    sync_all(scheduler, agents)?;
    println!("\ntraffic after the move:");
    let after = scheduler.expectations();
    let old_place = answer_name(moving, from);
    if after.iter().any(|e| e.answers.contains(&old_place)) {
        wrong.push(format!("{moving} did not move off node-{from}"));
    }
    wrong.extend(check_traffic(&clients, &after)?);
    if wrong.is_empty() {
        println!(
            "  every probe reached the workloads where they run now; none reached {old_place}"
        );
        Ok(())
    } else {
        Err(format!(
            "traffic did not follow the placement:\n  {}",
            wrong.join("\n  ")
        )
        .into())
    }
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
