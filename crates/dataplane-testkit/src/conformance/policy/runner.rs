//! Runs the policy cases: each step's states, the expected matrix from the reference model,
//! the applies (full, then incremental), the probes, and the truth tables of a failure.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use dataplane_core::{
    diff, error_chain, evaluate, policy_allows, validate, Capabilities, Dataplane, DesiredState,
    Entry, IpFamily, ObjectName, Packet, Protocol, Verdict,
};

use crate::lab::{Lab, LabNode, SERVER_PORT};
use crate::traffic::{
    send_forged, serve, sink, BatchOutcome, BatchProbe, ProbeOutcome, Server, Sink, TcpSession,
};

use super::super::case::Requirement;
use super::super::report::{Report, RowOutcome};
use super::super::runner::{finish, probe_clients, row_chosen, row_filter, start, ClientBatch};
use super::case::PolicyCase;
use super::layout::{
    cluster_ip, node_of, node_states, pod_name, World, NAMESPACES, PODS, POD_COUNT, POLICY_LAB,
    POLICY_PORTS, POLICY_PROTOCOLS,
};

/// Source port the reference model is asked about (policy does not look at it).
const NOMINAL_CLIENT_PORT: u16 = 40000;
/// Source ports of the pods' probes: each pod counts through them on its own, so no probe of
/// a run repeats an earlier probe's 5-tuple (a conntrack entry of an allowed connection would
/// answer a later step's probe as established). Below the kernel's ephemeral range and the
/// NodePort range, like the traffic module's fresh ports.
///
/// Disjoint from [`NODE_PROBE_PORTS`]: a pod reaching itself through its ClusterIP is
/// masqueraded to its node's address (hairpin) keeping its source port, so its connection
/// is `node:P -> pod:80` after NAT — exactly the tuple of the node's own probe of that pod
/// from the same port P. With one shared range both came out of their counters in the same
/// step (every client sends the same cells in the same order), the two first packets raced
/// for one conntrack tuple and the loser was dropped at confirmation: "node-1 -> z/c UDP/80
/// via ClusterIP, no answer", about once in ten runs, more under load (UDP has no
/// retransmission to recover). Pods' ports never meet each other: their addresses differ,
/// and a pod's hairpin goes to itself only.
const POD_PROBE_PORTS: std::ops::Range<u16> = 1_024..15_000;
/// Source ports of the nodes' probes: see [`POD_PROBE_PORTS`].
///
/// The lab's own servers listen on [`SERVER_PORT`] in every pod, inside the pods' range: a
/// probe cannot bind a listener's port, so [`Run::next_port`] steps over it.
const NODE_PROBE_PORTS: std::ops::Range<u16> = 15_000..30_000;

/// The source ports client `client` counts through.
pub(super) fn probe_ports(client: usize) -> std::ops::Range<u16> {
    if as_node(client).is_some() {
        NODE_PROBE_PORTS
    } else {
        POD_PROBE_PORTS
    }
}

/// The source port `next` of client `client` (stepping over [`SERVER_PORT`]), moving `next`
/// on; an error once the client's range is used up: never a wrap.
pub(super) fn take_port(next: &mut u16, client: usize) -> Result<u16, String> {
    let range = probe_ports(client);
    if *next == SERVER_PORT {
        *next += 1;
    }
    let port = *next;
    if !range.contains(&port) {
        return Err(format!(
            "{} used all its source ports ({range:?}): more probes than ports, a wrap would \
             repeat an earlier connection's tuple",
            client_name(client)
        ));
    }
    *next = port + 1;
    Ok(port)
}

/// Source ports a client needs at most for `cases` in `families`, re-probes aside: the
/// warm-up (three tries per server and family), every step's cells, and the established
/// connections opened before a step. [`run_policy_with`] refuses to start when it exceeds
/// the smallest range, so that a wrap (a later probe meeting an earlier connection's
/// conntrack entry) cannot happen silently; re-probes beyond it fail their row.
pub(super) fn ports_needed(cases: &[PolicyCase], families: &[IpFamily]) -> usize {
    let per_step = |sctp: bool| {
        cells_with(families, sctp).len() / CLIENT_COUNT
            + MAX_ESTABLISHED
            + spoof_cells(families).len()
    };
    let steps: usize = cases.iter().map(|c| c.steps.len() * per_step(c.sctp)).sum();
    // + 1: SERVER_PORT, stepped over.
    3 * POD_COUNT * families.len() + steps + 1
}

/// Settings of [`run_policy_with`].
#[derive(Debug, Clone)]
pub struct PolicyRunOptions {
    /// How long a probe that should be answered may take.
    pub timeout: Duration,
    /// How long a probe that should be dropped is given before it counts as dropped: waited
    /// once per matrix (all probes are in flight together), not once per cell. Shorter than
    /// TCP's first SYN retransmission (1 s), so a SYN that policy lets through is answered
    /// well within it.
    pub drop_wait: Duration,
    /// Print each row's result to stderr as it completes.
    pub verbose: bool,
}

impl Default for PolicyRunOptions {
    fn default() -> Self {
        PolicyRunOptions {
            timeout: Duration::from_secs(3),
            drop_wait: Duration::from_millis(500),
            verbose: true,
        }
    }
}

/// How a cell reaches its server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Path {
    /// To the server pod's own address.
    Direct,
    /// To the ClusterIP of the server pod's service (`s-<pod>` in its namespace).
    ClusterIp,
}

impl std::fmt::Display for Path {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Path::Direct => "direct",
            Path::ClusterIp => "via ClusterIP",
        })
    }
}

/// One cell of the reachability matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Cell {
    pub(super) client: usize,
    pub(super) server: usize,
    pub(super) protocol: Protocol,
    pub(super) port: u16,
    pub(super) path: Path,
    pub(super) family: IpFamily,
}

impl std::fmt::Display for Cell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} -> {} {}/{} {} ({})",
            client_name(self.client),
            pod_name(self.server),
            self.protocol,
            self.port,
            self.path,
            family_name(self.family)
        )
    }
}

/// Clients of the matrix: the nine pods, then the two nodes (their own network namespaces:
/// kubelet's place).
pub(super) const CLIENT_COUNT: usize = POD_COUNT + POLICY_LAB.nodes;

/// `x/a` for a pod client, `node-0` for a node client.
pub(super) fn client_name(client: usize) -> String {
    match client.checked_sub(POD_COUNT) {
        Some(node) => format!("node-{node}"),
        None => pod_name(client),
    }
}

/// The node that client `client` is, if it is one.
fn as_node(client: usize) -> Option<usize> {
    client.checked_sub(POD_COUNT)
}

fn family_name(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "IPv4",
        IpFamily::V6 => "IPv6",
    }
}

/// Every cell, client-major: client × family × server × protocol × port × path.
pub(super) fn cells(families: &[IpFamily]) -> Vec<Cell> {
    cells_with(families, false)
}

/// [`cells`], with `sctp` also SCTP cells: client × family × server × {80, 81}, on the
/// direct path only (the services have no SCTP port), after each client's TCP and UDP cells
/// of that server.
pub(super) fn cells_with(families: &[IpFamily], sctp: bool) -> Vec<Cell> {
    let protocols: &[Protocol] = if sctp {
        &[Protocol::Tcp, Protocol::Udp, Protocol::Sctp]
    } else {
        &POLICY_PROTOCOLS
    };
    let mut out = Vec::new();
    for client in 0..CLIENT_COUNT {
        for family in families {
            for server in 0..POD_COUNT {
                for protocol in protocols {
                    for port in POLICY_PORTS {
                        for path in [Path::Direct, Path::ClusterIp] {
                            if *protocol == Protocol::Sctp && path == Path::ClusterIp {
                                continue;
                            }
                            out.push(Cell {
                                client,
                                server,
                                protocol: *protocol,
                                port,
                                path,
                                family: *family,
                            });
                        }
                    }
                }
            }
        }
    }
    out
}

/// The families the run probes: both where the lab and the backend are dual-stack.
fn families(lab: &Lab, caps: &Capabilities) -> Vec<IpFamily> {
    if lab.spec().ipv6 && caps.ipv6 {
        vec![IpFamily::V4, IpFamily::V6]
    } else {
        vec![IpFamily::V4]
    }
}

fn object(k: usize) -> ObjectName {
    ObjectName::new(NAMESPACES[k / PODS.len()], PODS[k % PODS.len()])
}

/// The address of layout pod `k` in `states` (its endpoint's on its own node).
fn address(states: &[DesiredState], k: usize, family: IpFamily) -> Result<IpAddr, String> {
    let name = object(k);
    states
        .get(node_of(k))
        .and_then(|s| s.endpoints.iter().find(|e| e.name == name))
        .and_then(|e| e.ips.iter().copied().find(|ip| IpFamily::of(ip) == family))
        .ok_or_else(|| format!("pod {name} has no {family:?} address"))
}

/// The address of lab node `n` in `states` for `family`.
fn node_address(states: &[DesiredState], n: usize, family: IpFamily) -> Result<IpAddr, String> {
    states
        .get(n)
        .and_then(|s| {
            s.node
                .addresses
                .iter()
                .copied()
                .find(|a| IpFamily::of(a) == family)
        })
        .ok_or_else(|| format!("node-{n} has no {family:?} address"))
}

/// Whether the reference model allows `cell` (`Err`: the model's answers do not add up).
///
/// The client's node answers for the connection (egress is checked there, after DNAT for the
/// ClusterIP path: [`evaluate`] keeps the backend only if [`policy_allows`] it); the server's
/// node must give the same [`policy_allows`] answer (ingress is checked there), else the two
/// nodes' states disagree about a pod or a namespace.
pub(super) fn expectation(states: &[DesiredState], cell: Cell) -> Result<bool, String> {
    let family = cell.family;
    let (client_node, c_ip, entry) = match as_node(cell.client) {
        Some(n) => (n, node_address(states, n, family)?, Entry::FromHost),
        None => (
            node_of(cell.client),
            address(states, cell.client, family)?,
            Entry::FromPod(object(cell.client)),
        ),
    };
    let client_state = &states[client_node];
    let server_state = &states[node_of(cell.server)];
    let s_ip = address(states, cell.server, family)?;
    let (protocol, port) = (cell.protocol, cell.port);
    let at_client = policy_allows(client_state, c_ip, s_ip, protocol, port);
    let at_server = policy_allows(server_state, c_ip, s_ip, protocol, port);
    if at_client != at_server {
        return Err(format!(
            "{cell}: policy_allows is {at_client} on the client's node, {at_server} on the server's"
        ));
    }
    let backend = SocketAddr::new(s_ip, port);
    let destination = match cell.path {
        Path::Direct => backend,
        Path::ClusterIp => SocketAddr::new(cluster_ip(cell.server, family), port),
    };
    let packet = Packet {
        protocol,
        source: SocketAddr::new(c_ip, NOMINAL_CLIENT_PORT),
        destination,
    };
    let verdict = evaluate(client_state, &packet, &entry);
    let allowed = match (cell.path, &verdict) {
        (_, Verdict::Drop) => false,
        (Path::Direct, Verdict::Untouched { .. }) => true,
        (Path::ClusterIp, Verdict::Forward { backends, .. })
            if backends.len() == 1 && backends.contains(&backend) =>
        {
            true
        }
        (_, other) => return Err(format!("{cell}: the reference model says {other:?}")),
    };
    if allowed != at_client {
        return Err(format!(
            "{cell}: evaluate says {verdict:?}, policy_allows says {at_client}"
        ));
    }
    Ok(allowed)
}

/// The expected matrix for `states` (over [`cells`] of `families`) and the disagreements
/// found.
pub(super) fn expectations(states: &[DesiredState], all: &[Cell]) -> (Vec<bool>, Vec<String>) {
    let mut errors = Vec::new();
    let expected = all
        .iter()
        .map(|cell| {
            expectation(states, *cell).unwrap_or_else(|e| {
                errors.push(e);
                false
            })
        })
        .collect();
    (expected, errors)
}

/// Runs `cases` in `lab` (built from [`POLICY_LAB`]) against one backend instance per node
/// made by `factory`, with [`PolicyRunOptions::default`].
pub fn run_policy(
    lab: &Lab,
    cases: &[PolicyCase],
    factory: &mut dyn FnMut(&LabNode) -> Box<dyn Dataplane>,
) -> Report {
    run_policy_with(lab, cases, factory, &PolicyRunOptions::default())
}

/// [`run_policy`] with explicit options. One report row per step of each case, named
/// `<case> #<step> <what the step did>`; a case whose family the lab or the backend lacks is
/// one skipped row. `DP_CONFORMANCE_ROWS=part,part` runs only the cases whose names contain
/// one of the parts (ignored under `CI=true`). At the end every backend is `reset()`.
pub fn run_policy_with(
    lab: &Lab,
    cases: &[PolicyCase],
    factory: &mut dyn FnMut(&LabNode) -> Box<dyn Dataplane>,
    options: &PolicyRunOptions,
) -> Report {
    let (mut planes, caps, mut report) = start(lab, factory);
    let mut run = Run {
        lab,
        caps: &caps,
        options,
        ports: (0..CLIENT_COUNT).map(|c| probe_ports(c).start).collect(),
        families: families(lab, &caps),
        sink: None,
        forged: 0,
        report: &mut report,
    };
    // Cases the backend skips send no probe.
    let runnable: Vec<PolicyCase> = cases
        .iter()
        .filter(|c| caps.cluster_policy || !c.needs_cluster_policy())
        .cloned()
        .collect();
    let needed = ports_needed(&runnable, &run.families);
    let have = POD_PROBE_PORTS.len().min(NODE_PROBE_PORTS.len());
    let prepared = if needed > have {
        Err(format!(
            "the cases need up to {needed} source ports per client, the ranges have {have}: \
             enlarge POD_PROBE_PORTS and NODE_PROBE_PORTS (a wrap would meet old connections)"
        ))
    } else {
        run.prepare(&mut planes)
    };
    match prepared {
        Ok(servers) => {
            let only = row_filter();
            for case in cases
                .iter()
                .filter(|c| row_chosen(only.as_deref(), &c.name))
            {
                let started = Instant::now();
                run.case(case, &mut planes);
                if options.verbose {
                    eprintln!("  ({} took {:.1?})", case.name, started.elapsed());
                }
            }
            drop(servers);
        }
        Err(e) => run.push("prepare the lab", failed(Vec::new(), vec![e])),
    }
    finish(&mut planes, report, options.verbose)
}

fn failed(table: Vec<String>, traffic: Vec<String>) -> RowOutcome {
    RowOutcome::Failed { table, traffic }
}

/// One run's context.
struct Run<'a> {
    lab: &'a Lab,
    caps: &'a Capabilities,
    options: &'a PolicyRunOptions,
    /// The next source port of each client.
    ports: Vec<u16>,
    /// The families probed: both in a dual-stack lab with a dual-stack backend.
    families: Vec<IpFamily>,
    /// The sink of the forged datagrams, on [`SPOOF_TARGET`] (started by `prepare`).
    sink: Option<Sink>,
    /// Forged datagrams sent so far (each one's payload is unique in the run).
    forged: usize,
    report: &'a mut Report,
}

impl Run<'_> {
    fn push(&mut self, name: &str, outcome: RowOutcome) {
        self.report.push_row(name, outcome, self.options.verbose);
    }

    /// The next source port of `client`; an error once its range is used up (no wrap).
    fn next_port(&mut self, client: usize) -> Result<u16, String> {
        take_port(&mut self.ports[client], client)
    }

    /// Checks the lab's shape, starts the servers on ports 80 and 81 of every pod, applies
    /// the no-policy state and warms the lab up (every pod reaches every pod once, so that
    /// neighbour entries exist before the first matrix: a burst of probes to an unresolved
    /// neighbour overflows its queue).
    fn prepare(&mut self, planes: &mut [Box<dyn Dataplane>]) -> Result<Vec<Server>, String> {
        let spec = self.lab.spec();
        if (spec.nodes, spec.pods_per_node) != (POLICY_LAB.nodes, POLICY_LAB.pods_per_node) {
            return Err(format!(
                "the policy table needs a lab of {} nodes of {} pods (POLICY_LAB), not {spec:?}",
                POLICY_LAB.nodes, POLICY_LAB.pods_per_node
            ));
        }
        let states = node_states(spec, &World::initial());
        for k in 0..POD_COUNT {
            let pod = self.lab.pod(k);
            let planned = &states[node_of(k)]
                .endpoints
                .iter()
                .find(|e| e.name == object(k))
                .ok_or_else(|| format!("no endpoint for {}", pod_name(k)))?;
            if planned.ips != pod.addresses || planned.interface != pod.host_interface {
                return Err(format!(
                    "{} is planned at {:?} on {}, the lab has {:?} on {}",
                    pod_name(k),
                    planned.ips,
                    planned.interface,
                    pod.addresses,
                    pod.host_interface
                ));
            }
        }
        let mut servers = Vec::new();
        for k in 0..POD_COUNT {
            for port in POLICY_PORTS {
                let pod = self.lab.pod(k);
                let server = serve(&pod.netns, &pod_name(k), port)
                    .map_err(|e| format!("servers of {}: {}", pod_name(k), error_chain(&e)))?;
                servers.push(server);
            }
        }
        let target = self.lab.pod(SPOOF_TARGET);
        self.sink = Some(
            sink(&target.netns, SINK_PORT)
                .map_err(|e| format!("sink of {}: {}", pod_name(SPOOF_TARGET), error_chain(&e)))?,
        );
        for (n, plane) in planes.iter_mut().enumerate() {
            plane.apply(&states[n]).map_err(|e| {
                format!("apply the no-policy state on node-{n}: {}", error_chain(&e))
            })?;
        }
        self.warm_up()?;
        Ok(servers)
    }

    /// Every client reaches every pod once in each family (UDP, no policy), up to three
    /// tries.
    fn warm_up(&mut self) -> Result<(), String> {
        let mut left: Vec<Cell> = cells(&self.families)
            .into_iter()
            .filter(|c| {
                c.path == Path::Direct && c.protocol == Protocol::Udp && c.port == POLICY_PORTS[0]
            })
            .collect();
        for _ in 0..3 {
            let waits = vec![Duration::from_secs(1); left.len()];
            let outcomes = self.probe(&left, &waits)?;
            left = left
                .into_iter()
                .zip(outcomes)
                .filter(|(_, o)| o.backend().is_none())
                .map(|(c, _)| c)
                .collect();
            if left.is_empty() {
                return Ok(());
            }
        }
        let left: Vec<String> = left.iter().map(ToString::to_string).collect();
        Err(format!(
            "warm-up: no answer after 3 tries, without policies: {}",
            left.join("; ")
        ))
    }

    /// Sends `cells`, each given its wait in `waits`, all at once, one thread per client,
    /// each probe from a source port of its own.
    fn probe(&mut self, cells: &[Cell], waits: &[Duration]) -> Result<Vec<BatchOutcome>, String> {
        let mut batches: Vec<Vec<(usize, BatchProbe)>> = vec![Vec::new(); CLIENT_COUNT];
        for (i, (cell, wait)) in cells.iter().zip(waits).enumerate() {
            let server = self.lab.pod(cell.server);
            let family = cell.family;
            let ip = match cell.path {
                Path::Direct => server.address(family).ok_or_else(|| {
                    format!("{} has no {family:?} address", pod_name(cell.server))
                })?,
                Path::ClusterIp => cluster_ip(cell.server, family),
            };
            let probe = BatchProbe {
                destination: SocketAddr::new(ip, cell.port),
                protocol: cell.protocol,
                source_port: Some(self.next_port(cell.client)?),
                timeout: *wait,
            };
            batches[cell.client].push((i, probe));
        }
        let lab = self.lab;
        let batches = batches
            .into_iter()
            .enumerate()
            .map(|(client, probes)| ClientBatch {
                netns: client_netns(lab, client),
                name: client_name(client),
                probes,
            })
            .collect();
        probe_clients(batches, cells.len())
    }

    /// Runs one case: a row per step; a step that cannot be applied ends the case.
    fn case(&mut self, case: &PolicyCase, planes: &mut [Box<dyn Dataplane>]) {
        let spec = self.lab.spec();
        if case.family == IpFamily::V6 && !(spec.ipv6 && self.caps.ipv6) {
            let reason = if spec.ipv6 {
                format!("backend {:?} lacks IPv6", self.caps.dataplane)
            } else {
                "the lab was built without IPv6".to_owned()
            };
            self.push(&case.name, RowOutcome::Skipped { reason });
            return;
        }
        if case.needs_cluster_policy() && !self.caps.cluster_policy {
            let reason = format!(
                "backend {:?} lacks cluster-wide ordered policy",
                self.caps.dataplane
            );
            self.push(&case.name, RowOutcome::Skipped { reason });
            return;
        }
        if case.sctp && !self.sctp_cells(case) {
            let reason = format!(
                "backend {:?} lacks SCTP: the case runs without its SCTP cells",
                self.caps.dataplane
            );
            self.push(
                &format!("{} SCTP cells", case.name),
                RowOutcome::Skipped { reason },
            );
        }
        let mut world = World::initial();
        let mut previous: Option<Applied> = None;
        for (i, step) in case.steps.iter().enumerate() {
            let name = format!("{} #{} {}", case.name, i + 1, step.describe());
            match self.step(case, i, &mut world, previous.as_ref(), planes) {
                Ok((outcome, next)) => {
                    self.push(&name, outcome);
                    previous = Some(next);
                }
                Err(outcome) => {
                    self.push(&name, outcome);
                    return;
                }
            }
        }
    }

    /// Whether `case`'s matrices have SCTP cells: the case asks for them
    /// ([`PolicyCase::sctp`]) and the backend meets [`Requirement::Sctp`], as in the service
    /// table.
    fn sctp_cells(&self, case: &PolicyCase) -> bool {
        case.sctp && Requirement::Sctp.met_by(self.caps)
    }

    /// Step `i` of `case`: the row's outcome and the states and matrix it left, or the
    /// outcome of a step after which the case cannot go on.
    fn step(
        &mut self,
        case: &PolicyCase,
        i: usize,
        world: &mut World,
        previous: Option<&Applied>,
        planes: &mut [Box<dyn Dataplane>],
    ) -> Result<(RowOutcome, Applied), RowOutcome> {
        case.steps[i]
            .apply_to(world)
            .map_err(|e| failed(vec![e], Vec::new()))?;
        let states = node_states(self.lab.spec(), world);
        let mut table = Vec::new();
        for (n, s) in states.iter().enumerate() {
            if let Err(e) = validate(s) {
                table.push(format!("node-{n}'s state is invalid: {e}"));
            }
        }
        let all = cells_with(&self.families, self.sctp_cells(case));
        let (expected, errors) = expectations(&states, &all);
        table.extend(errors);
        if !table.is_empty() {
            return Err(failed(table, Vec::new()));
        }
        // Connections that the step before allows and this one denies, opened before it.
        let (held, mut traffic) = match previous {
            Some((_, before)) => self.open_established(&all, before, &expected),
            None => (Vec::new(), Vec::new()),
        };
        let mut refused = Vec::new();
        for (n, plane) in planes.iter_mut().enumerate() {
            let (how, result) = match previous {
                None => ("apply", plane.apply(&states[n])),
                Some((before, _)) => (
                    "apply_changes",
                    plane.apply_changes(&diff(&before[n], &states[n])),
                ),
            };
            if let Err(e) = result {
                refused.push(format!("{how} on node-{n}: {}", error_chain(&e)));
            }
        }
        if !refused.is_empty() {
            if i + 1 < case.steps.len() {
                refused.push("the case's later steps were not run".to_owned());
            }
            return Err(failed(Vec::new(), refused));
        }
        let spoofs = if case.forged {
            spoof_cells(&self.families)
        } else {
            Vec::new()
        };
        let forged = self.send_forged(&states, &spoofs);
        let mut outcome = match self.probe_matrix(&all, &expected) {
            Ok(outcomes) => compare(case, i, &all, &expected, &outcomes),
            Err(e) => failed(Vec::new(), vec![e]),
        };
        traffic.extend(check_established(held));
        match forged {
            Ok(sent) => traffic.extend(self.check_forged(&spoofs, &sent)),
            Err(e) => traffic.push(e),
        }
        if !traffic.is_empty() {
            outcome = match outcome {
                RowOutcome::Failed {
                    table,
                    traffic: mut more,
                } => {
                    traffic.append(&mut more);
                    failed(table, traffic)
                }
                _ => failed(Vec::new(), traffic),
            };
        }
        Ok((outcome, (states, expected)))
    }

    /// Probes the matrix `all` (expected allowed where `expected` says so): allowed cells
    /// wait up to [`PolicyRunOptions::timeout`], denied ones [`PolicyRunOptions::drop_wait`],
    /// all in one batch. Then, once, in a second batch from fresh source ports (see
    /// [`reprobes`]): allowed cells left unanswered, with the full timeout; and when the
    /// batch was slow, denied cells that timed out, also with the full timeout.
    fn probe_matrix(
        &mut self,
        all: &[Cell],
        expected: &[bool],
    ) -> Result<Vec<BatchOutcome>, String> {
        let (timeout, drop_wait) = (self.options.timeout, self.options.drop_wait);
        let waits: Vec<Duration> = expected
            .iter()
            .map(|a| if *a { timeout } else { drop_wait })
            .collect();
        let mut outcomes = self.probe(all, &waits)?;
        let again = reprobes(expected, &outcomes, drop_wait);
        if !again.is_empty() {
            if self.options.verbose {
                let slowest = expected
                    .iter()
                    .zip(&outcomes)
                    .filter(|(a, _)| **a)
                    .filter_map(|(_, o)| o.latency())
                    .max()
                    .unwrap_or_default();
                let unanswered: Vec<String> = again
                    .iter()
                    .filter(|i| expected[**i])
                    .map(|i| format!("{}: {}", all[*i], seen(&outcomes[*i])))
                    .collect();
                eprintln!(
                    "  re-probing {} cells (slowest allowed answer {slowest:.0?}; {} allowed unanswered{}{})",
                    again.len(),
                    unanswered.len(),
                    if unanswered.is_empty() { "" } else { ": " },
                    unanswered.iter().take(4).cloned().collect::<Vec<_>>().join("; ")
                );
            }
            let cells: Vec<Cell> = again.iter().map(|i| all[*i]).collect();
            let seconds = self.probe(&cells, &vec![timeout; cells.len()])?;
            for (i, outcome) in again.into_iter().zip(seconds) {
                outcomes[i] = outcome;
            }
        }
        Ok(outcomes)
    }

    /// Sends the forged datagram of each of `spoofs` (see [`spoof_cells`]): its payload, its
    /// expectation (received or not) from the reference model, and when it was sent.
    fn send_forged(
        &mut self,
        states: &[DesiredState],
        spoofs: &[SpoofCell],
    ) -> Result<Vec<Forgery>, String> {
        let target = SPOOF_TARGET;
        let mut sent = Vec::new();
        for spoof in spoofs {
            let (received, source) = spoof_expectation(states, *spoof)?;
            let port = self.next_port(spoof.client)?;
            let destination = SocketAddr::new(address(states, target, spoof.family)?, SINK_PORT);
            self.forged += 1;
            let payload = format!("forged {}", self.forged);
            send_forged(
                client_netns(self.lab, spoof.client),
                SocketAddr::new(source, port),
                destination,
                payload.as_bytes(),
            )
            .map_err(|e| format!("{spoof}: {}", error_chain(&e)))?;
            sent.push(Forgery {
                received,
                payload,
                at: Instant::now(),
            });
        }
        Ok(sent)
    }

    /// Waits for the forged datagrams the model lets through (up to the timeout) and for the
    /// drop wait after the others; the cells whose delivery is not what the model says.
    fn check_forged(&self, spoofs: &[SpoofCell], sent: &[Forgery]) -> Vec<String> {
        let Some(sink) = &self.sink else {
            return vec!["no sink for the forged datagrams".to_owned()];
        };
        let got = || -> Vec<String> { sink.received().into_iter().map(|(_, p)| p).collect() };
        let all_in = |got: &[String]| {
            sent.iter()
                .filter(|f| f.received)
                .all(|f| got.contains(&f.payload))
        };
        for f in sent {
            let wait = if f.received {
                self.options.timeout
            } else {
                self.options.drop_wait
            };
            while f.at.elapsed() < wait && !(f.received && all_in(&got())) {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let got = got();
        spoofs
            .iter()
            .zip(sent)
            .filter(|(_, f)| got.contains(&f.payload) != f.received)
            .map(|(spoof, f)| {
                if f.received {
                    format!("{spoof}: expected delivered (no policy, no anti-spoofing), the server never got it")
                } else {
                    format!("{spoof}: expected dropped (anti-spoofing: not the pod's own address), the server got it")
                }
            })
            .collect()
    }

    /// Opens TCP connections for up to [`MAX_ESTABLISHED`] cells (half direct, half through
    /// the ClusterIP) that `before` allows and `after` denies, each answered once; and the
    /// problems met.
    fn open_established(
        &mut self,
        all: &[Cell],
        before: &[bool],
        after: &[bool],
    ) -> (Vec<Held>, Vec<String>) {
        let mut held = Vec::new();
        let mut problems = Vec::new();
        for path in [Path::Direct, Path::ClusterIp] {
            let candidates: Vec<Cell> = all
                .iter()
                .zip(before.iter().zip(after))
                .filter(|(c, (b, a))| {
                    **b && !**a
                        && c.path == path
                        && c.protocol == Protocol::Tcp
                        && c.client != c.server
                })
                .map(|(c, _)| *c)
                .collect();
            let want = candidates.len().min(MAX_ESTABLISHED / 2);
            for n in 0..want {
                let cell = candidates[n * candidates.len() / want];
                match self.open_one(cell) {
                    Ok(session) => held.push(Held { cell, session }),
                    Err(e) => problems.push(format!(
                        "{cell}: a connection opened before the step (which the step before allows): {e}"
                    )),
                }
            }
        }
        (held, problems)
    }

    fn open_one(&mut self, cell: Cell) -> Result<TcpSession, String> {
        let family = cell.family;
        let port = self.next_port(cell.client)?;
        let netns = client_netns(self.lab, cell.client);
        let ip = match cell.path {
            Path::Direct => self
                .lab
                .pod(cell.server)
                .address(family)
                .ok_or_else(|| format!("no {family:?} address"))?,
            Path::ClusterIp => cluster_ip(cell.server, family),
        };
        let unspecified = match family {
            IpFamily::V4 => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            IpFamily::V6 => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        };
        let source = SocketAddr::new(unspecified, port);
        let mut session = TcpSession::open_from(
            netns,
            Some(source),
            SocketAddr::new(ip, cell.port),
            self.options.timeout,
        )
        .map_err(|e| error_chain(&e))?;
        let (name, _) = session.request().map_err(|e| error_chain(&e))?;
        if name != pod_name(cell.server) {
            return Err(format!("answered by {name}"));
        }
        Ok(session)
    }
}

/// UDP port of the sink on [`SPOOF_TARGET`] that records forged datagrams.
pub(super) const SINK_PORT: u16 = 82;
/// The pod the forged datagrams go to: z/c (node-1).
pub(super) const SPOOF_TARGET: usize = POD_COUNT - 1;

/// A forged address: a node's, or a pod's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Forged {
    /// The address of lab node `n`.
    Node(usize),
    /// The address of layout pod `k`.
    Pod(usize),
}

/// A datagram that pod `client` sends to [`SPOOF_TARGET`]'s sink from the `forged` address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SpoofCell {
    pub(super) client: usize,
    pub(super) forged: Forged,
    pub(super) family: IpFamily,
}

impl std::fmt::Display for SpoofCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let forged = match self.forged {
            Forged::Node(n) => format!("node-{n}"),
            Forged::Pod(k) => pod_name(k),
        };
        write!(
            f,
            "{} -> {} UDP/{SINK_PORT} forging {forged}'s address ({})",
            pod_name(self.client),
            pod_name(SPOOF_TARGET),
            family_name(self.family)
        )
    }
}

/// The forged datagrams of every step, to z/c's sink: from z/a (z/c's node) and from y/a
/// (the other node), each forging x/a's address (a pod of node-0) and, in IPv6, node-1's
/// (z/c's node: its own pods are always allowed from it, kubelet's rule). Not the node's
/// IPv4 address: a node drops a packet that comes in with its own IPv4 address as source
/// itself (a martian, whatever the dataplane), so such a cell could not fail.
pub(super) fn spoof_cells(families: &[IpFamily]) -> Vec<SpoofCell> {
    const X_A: usize = 0;
    const Y_A: usize = 3;
    const Z_A: usize = 6;
    let mut out = Vec::new();
    for family in families {
        for client in [Z_A, Y_A] {
            let mut forged = vec![Forged::Pod(X_A)];
            if *family == IpFamily::V6 {
                forged.push(Forged::Node(node_of(SPOOF_TARGET)));
            }
            for forged in forged {
                out.push(SpoofCell {
                    client,
                    forged,
                    family: *family,
                });
            }
        }
    }
    out
}

/// Whether the reference model delivers `spoof` ([`evaluate`] on the client's node, the
/// packet entering from the client pod with the forged source: dropped with policies, as
/// anti-spoofing), and the forged address.
pub(super) fn spoof_expectation(
    states: &[DesiredState],
    spoof: SpoofCell,
) -> Result<(bool, IpAddr), String> {
    let family = spoof.family;
    let source = match spoof.forged {
        Forged::Pod(k) => address(states, k, family)?,
        Forged::Node(n) => node_address(states, n, family)?,
    };
    let packet = Packet {
        protocol: Protocol::Udp,
        source: SocketAddr::new(source, NOMINAL_CLIENT_PORT),
        destination: SocketAddr::new(address(states, SPOOF_TARGET, family)?, SINK_PORT),
    };
    let entry = Entry::FromPod(object(spoof.client));
    match evaluate(&states[node_of(spoof.client)], &packet, &entry) {
        Verdict::Drop => Ok((false, source)),
        Verdict::Untouched { .. } => Ok((true, source)),
        other => Err(format!("{spoof}: the reference model says {other:?}")),
    }
}

/// A forged datagram sent.
struct Forgery {
    /// Whether the model delivers it.
    received: bool,
    payload: String,
    at: Instant,
}

/// What a step left: every node's state and the expected matrix.
type Applied = (Vec<DesiredState>, Vec<bool>);

/// A connection kept open across a step.
struct Held {
    cell: Cell,
    session: TcpSession,
}

/// Most connections kept open across one step: connections established before a change that
/// denies them keep flowing (policy is checked on a connection's first packet).
const MAX_ESTABLISHED: usize = 4;

/// Asks again over each held connection: the server must still answer.
fn check_established(held: Vec<Held>) -> Vec<String> {
    held.into_iter()
        .filter_map(|mut h| {
            let problem = match h.session.request() {
                Ok((name, _)) if name == pod_name(h.cell.server) => return None,
                Ok((name, _)) => format!("answered by {name}"),
                Err(e) => error_chain(&e),
            };
            Some(format!(
                "{}: established before the step, which denies new connections of it, it must keep flowing: {problem}",
                h.cell
            ))
        })
        .collect()
}

/// The namespace client `client` sends from: a pod's, or a node's own.
fn client_netns(lab: &Lab, client: usize) -> &crate::netns::NetNs {
    match as_node(client) {
        Some(n) => &lab.node(n).netns,
        None => &lab.pod(client).netns,
    }
}

/// What a cell saw, in a few words.
pub(in crate::conformance) fn seen(outcome: &BatchOutcome) -> String {
    match outcome {
        BatchOutcome::Ended(ProbeOutcome::Answered { backend, .. }) => {
            format!("answered by {backend}")
        }
        BatchOutcome::Ended(ProbeOutcome::Refused) => {
            "refused (policy drops, it does not reject)".to_owned()
        }
        BatchOutcome::Ended(ProbeOutcome::Unreachable) => "unreachable".to_owned(),
        BatchOutcome::Ended(ProbeOutcome::Timeout) => "no answer (dropped)".to_owned(),
        BatchOutcome::Connected => {
            "connected (the handshake passed: not a drop), no answer line in time".to_owned()
        }
    }
}

/// Whether `outcome` is what the cell expects. A TCP handshake that completed is never a
/// drop: it fails a denied cell, and an allowed cell still unanswered after its re-probe.
fn agrees(cell: Cell, allowed: bool, outcome: &BatchOutcome) -> bool {
    match outcome {
        BatchOutcome::Ended(ProbeOutcome::Answered { backend, .. }) => {
            allowed && *backend == pod_name(cell.server)
        }
        BatchOutcome::Ended(ProbeOutcome::Timeout) => !allowed,
        BatchOutcome::Ended(ProbeOutcome::Refused | ProbeOutcome::Unreachable)
        | BatchOutcome::Connected => false,
    }
}

/// The cells of a matrix batch to probe once more (indices), from fresh source ports and with
/// the full timeout:
/// - allowed cells left unanswered (no answer, or a TCP connection without its answer line):
///   loss under load (a UDP datagram or its answer dropped by a full queue, a server thread
///   not scheduled in time) is not a dataplane's verdict, and UDP has no retransmission of
///   its own. The retry is sound because policy verdicts are deterministic: a cell the
///   backend wrongly drops is dropped again (the retry is a new connection, checked by the
///   same rules), so a retry can turn only loss into an answer, never a drop;
/// - when the batch was slow — an allowed cell answered later than half the drop wait —
///   denied cells that timed out: their drop wait was too short to tell a drop from a late
///   answer, so they are asked again with the full timeout instead of passing.
pub(in crate::conformance) fn reprobes(
    expected: &[bool],
    outcomes: &[BatchOutcome],
    drop_wait: Duration,
) -> Vec<usize> {
    let slow = expected
        .iter()
        .zip(outcomes)
        .filter(|(allowed, _)| **allowed)
        .filter_map(|(_, o)| o.latency())
        .any(|l| l > drop_wait / 2);
    expected
        .iter()
        .zip(outcomes)
        .enumerate()
        .filter(|(_, (allowed, outcome))| match outcome {
            BatchOutcome::Ended(ProbeOutcome::Timeout) => **allowed || slow,
            BatchOutcome::Connected => **allowed,
            BatchOutcome::Ended(_) => false,
        })
        .map(|(i, _)| i)
        .collect()
}

/// Most failed cells listed one per line (the truth tables show them all).
const MAX_LISTED: usize = 24;

fn compare(
    case: &PolicyCase,
    step: usize,
    cells: &[Cell],
    expected: &[bool],
    outcomes: &[BatchOutcome],
) -> RowOutcome {
    let mut answered: BTreeMap<String, usize> = BTreeMap::new();
    let mut wrong = Vec::new();
    for ((cell, allowed), outcome) in cells.iter().zip(expected).zip(outcomes) {
        if let Some(b) = outcome.backend() {
            *answered.entry(b.to_owned()).or_default() += 1;
        }
        if !agrees(*cell, *allowed, outcome) {
            wrong.push((*cell, *allowed, outcome));
        }
    }
    if wrong.is_empty() {
        return RowOutcome::Passed {
            probes: cells.len(),
            answered,
        };
    }
    let mut traffic: Vec<String> = wrong
        .iter()
        .take(MAX_LISTED)
        .map(|(cell, allowed, outcome)| {
            format!(
                "case {} step {}: {cell}: expected {}, saw {}",
                case.name,
                step + 1,
                if *allowed { "allowed" } else { "denied" },
                seen(outcome)
            )
        })
        .collect();
    if wrong.len() > MAX_LISTED {
        traffic.push(format!("... and {} more cells", wrong.len() - MAX_LISTED));
    }
    traffic.push(format!(
        "{} of {} cells disagree with the reference model",
        wrong.len(),
        cells.len()
    ));
    traffic.extend(truth_tables(cells, expected, outcomes));
    RowOutcome::Failed {
        table: Vec::new(),
        traffic,
    }
}

/// The e2e suite's truth tables, one per family, protocol, port and path that has a wrong
/// cell: clients down, servers across; `.` allowed and `X` denied as expected, `!` answered
/// (or connected) where the model denies, `?` dropped where it allows, `S` connected but
/// unanswered where it allows (slow), `E` refused or unreachable, `W` answered by the wrong
/// pod.
pub(super) fn truth_tables(
    cells: &[Cell],
    expected: &[bool],
    outcomes: &[BatchOutcome],
) -> Vec<String> {
    type Key = (IpFamily, Protocol, u16, Path);
    let mut slices: BTreeMap<Key, Vec<Vec<char>>> = BTreeMap::new();
    let mut bad: BTreeMap<Key, bool> = BTreeMap::new();
    for ((cell, allowed), outcome) in cells.iter().zip(expected).zip(outcomes) {
        let key = (cell.family, cell.protocol, cell.port, cell.path);
        let grid = slices
            .entry(key)
            .or_insert_with(|| vec![vec![' '; POD_COUNT]; CLIENT_COUNT]);
        let mark = match (outcome, allowed) {
            (BatchOutcome::Ended(ProbeOutcome::Answered { backend, .. }), _)
                if *backend != pod_name(cell.server) =>
            {
                'W'
            }
            (BatchOutcome::Ended(ProbeOutcome::Answered { .. }), true) => '.',
            (
                BatchOutcome::Ended(ProbeOutcome::Answered { .. }) | BatchOutcome::Connected,
                false,
            ) => '!',
            (BatchOutcome::Connected, true) => 'S',
            (BatchOutcome::Ended(ProbeOutcome::Timeout), false) => 'X',
            (BatchOutcome::Ended(ProbeOutcome::Timeout), true) => '?',
            (BatchOutcome::Ended(ProbeOutcome::Refused | ProbeOutcome::Unreachable), _) => 'E',
        };
        grid[cell.client][cell.server] = mark;
        *bad.entry(key).or_default() |= !agrees(*cell, *allowed, outcome);
    }
    slices
        .into_iter()
        .filter(|(key, _)| bad.get(key).copied().unwrap_or(false))
        .map(|((family, protocol, port, path), grid)| {
            let family = family_name(family);
            let mut out = format!(
                "{family} {protocol}/{port} {path} (. allowed, X denied as expected; ! answered but denied, ? dropped but allowed, S connected but unanswered, E refused, W wrong pod):\n"
            );
            let _ = write!(out, "            -     ");
            for k in 0..POD_COUNT {
                let _ = write!(out, " {:>3}", pod_name(k));
            }
            for (client, row) in grid.iter().enumerate() {
                let _ = write!(out, "\n            {:<6}", client_name(client));
                for mark in row {
                    let _ = write!(out, " {mark:>3}");
                }
            }
            out
        })
        .collect()
}
