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

use crate::lab::{Lab, LabNode};
use crate::traffic::{probe_batch, serve, BatchProbe, ProbeOutcome, Server, TcpSession};

use super::super::report::{OneRow, Report, RowOutcome, RowReport};
use super::super::runner::{reset_all, row_filter, start};
use super::case::PolicyCase;
use super::layout::{
    cluster_ip, node_of, node_states, pod_name, World, NAMESPACES, PODS, POD_COUNT, POLICY_LAB,
    POLICY_PORTS, POLICY_PROTOCOLS,
};

/// Source port the reference model is asked about (policy does not look at it).
const NOMINAL_CLIENT_PORT: u16 = 40000;
/// Source ports of the probes: each client (pod or node) counts through them on its own, so no probe
/// of a run repeats an earlier probe's 5-tuple (a conntrack entry of an allowed connection
/// would answer a later step's probe as established). Below the kernel's ephemeral range and
/// the NodePort range, like the traffic module's fresh ports. The whole table takes about
/// 3 700 per client (72 per step), well short of a wrap.
const PROBE_PORTS: std::ops::Range<u16> = 20_000..30_000;

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
}

impl std::fmt::Display for Cell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} -> {} {}/{} {}",
            client_name(self.client),
            pod_name(self.server),
            self.protocol,
            self.port,
            self.path
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

/// Every cell, client-major: client × server × protocol × port × path.
pub(super) fn cells() -> Vec<Cell> {
    let mut out = Vec::new();
    for client in 0..CLIENT_COUNT {
        for server in 0..POD_COUNT {
            for protocol in POLICY_PROTOCOLS {
                for port in POLICY_PORTS {
                    for path in [Path::Direct, Path::ClusterIp] {
                        out.push(Cell {
                            client,
                            server,
                            protocol,
                            port,
                            path,
                        });
                    }
                }
            }
        }
    }
    out
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

/// Whether the reference model allows `cell` (`Err`: the model's answers do not add up).
///
/// The client's node answers for the connection (egress is checked there, after DNAT for the
/// ClusterIP path: [`evaluate`] keeps the backend only if [`policy_allows`] it); the server's
/// node must give the same [`policy_allows`] answer (ingress is checked there), else the two
/// nodes' states disagree about a pod or a namespace.
pub(super) fn expectation(
    states: &[DesiredState],
    cell: Cell,
    family: IpFamily,
) -> Result<bool, String> {
    let (client_node, c_ip, entry) = match as_node(cell.client) {
        Some(n) => {
            let ip = states
                .get(n)
                .and_then(|s| {
                    s.node
                        .addresses
                        .iter()
                        .copied()
                        .find(|a| IpFamily::of(a) == family)
                })
                .ok_or_else(|| format!("node-{n} has no {family:?} address"))?;
            (n, ip, Entry::FromHost)
        }
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

/// The expected matrix for `states` (over [`cells`]) and the disagreements found.
pub(super) fn expectations(states: &[DesiredState], family: IpFamily) -> (Vec<bool>, Vec<String>) {
    let mut errors = Vec::new();
    let expected = cells()
        .into_iter()
        .map(|cell| {
            expectation(states, cell, family).unwrap_or_else(|e| {
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
        ports: vec![PROBE_PORTS.start; CLIENT_COUNT],
        report: &mut report,
    };
    match run.prepare(&mut planes) {
        Ok(servers) => {
            let only = row_filter();
            for case in cases {
                if let Some(only) = &only {
                    if !only.iter().any(|part| case.name.contains(part.as_str())) {
                        continue;
                    }
                }
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
    reset_all(&mut planes, &mut report);
    if options.verbose {
        eprintln!("{}", report.summary());
    }
    report
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
    report: &'a mut Report,
}

impl Run<'_> {
    fn push(&mut self, name: &str, outcome: RowOutcome) {
        let row = RowReport {
            name: name.to_owned(),
            outcome,
        };
        if self.options.verbose {
            eprint!("{}", OneRow(&self.caps.dataplane, &row));
        }
        self.report.rows.push(row);
    }

    fn next_port(&mut self, client: usize) -> u16 {
        let port = self.ports[client];
        self.ports[client] = if port + 1 >= PROBE_PORTS.end {
            PROBE_PORTS.start
        } else {
            port + 1
        };
        port
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
        for (n, plane) in planes.iter_mut().enumerate() {
            plane.apply(&states[n]).map_err(|e| {
                format!("apply the no-policy state on node-{n}: {}", error_chain(&e))
            })?;
        }
        let families: &[IpFamily] = if spec.ipv6 {
            &[IpFamily::V4, IpFamily::V6]
        } else {
            &[IpFamily::V4]
        };
        for family in families {
            self.warm_up(*family)?;
        }
        Ok(servers)
    }

    /// Every pod reaches every pod once in `family` (UDP, no policy), up to three tries.
    fn warm_up(&mut self, family: IpFamily) -> Result<(), String> {
        let mut left: Vec<Cell> = cells()
            .into_iter()
            .filter(|c| {
                c.path == Path::Direct && c.protocol == Protocol::Udp && c.port == POLICY_PORTS[0]
            })
            .collect();
        for _ in 0..3 {
            let expected = vec![true; left.len()];
            let outcomes = self.probe(&left, &expected, family, Duration::from_secs(1))?;
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
            "warm-up in {family:?}: no answer after 3 tries, without policies: {}",
            left.join("; ")
        ))
    }

    /// Sends `cells` (expected allowed where `expected` says so: those wait up to `timeout`,
    /// the others [`PolicyRunOptions::drop_wait`]), all at once, one thread per client.
    fn probe(
        &mut self,
        cells: &[Cell],
        expected: &[bool],
        family: IpFamily,
        timeout: Duration,
    ) -> Result<Vec<ProbeOutcome>, String> {
        let mut batches: Vec<Vec<(usize, BatchProbe)>> = vec![Vec::new(); CLIENT_COUNT];
        for (i, (cell, allowed)) in cells.iter().zip(expected).enumerate() {
            let server = self.lab.pod(cell.server);
            let ip = match cell.path {
                Path::Direct => server.address(family).ok_or_else(|| {
                    format!("{} has no {family:?} address", pod_name(cell.server))
                })?,
                Path::ClusterIp => cluster_ip(cell.server, family),
            };
            let probe = BatchProbe {
                destination: SocketAddr::new(ip, cell.port),
                protocol: cell.protocol,
                source_port: Some(self.next_port(cell.client)),
                timeout: if *allowed {
                    timeout
                } else {
                    self.options.drop_wait
                },
            };
            batches[cell.client].push((i, probe));
        }
        let lab = self.lab;
        let results: Vec<Result<Vec<(usize, ProbeOutcome)>, String>> = std::thread::scope(|s| {
            let handles: Vec<_> = batches
                .into_iter()
                .enumerate()
                .filter(|(_, b)| !b.is_empty())
                .map(|(client, batch)| {
                    s.spawn(move || {
                        let probes: Vec<BatchProbe> = batch.iter().map(|(_, p)| *p).collect();
                        let netns = client_netns(lab, client);
                        probe_batch(netns, &probes)
                            .map(|outcomes| batch.iter().map(|(i, _)| *i).zip(outcomes).collect())
                            .map_err(|e| {
                                format!("probes from {}: {}", client_name(client), error_chain(&e))
                            })
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err("a probe thread panicked".to_owned()))
                })
                .collect()
        });
        let mut outcomes = vec![ProbeOutcome::Timeout; cells.len()];
        for result in results {
            for (i, outcome) in result? {
                outcomes[i] = outcome;
            }
        }
        Ok(outcomes)
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
        let (expected, errors) = expectations(&states, case.family);
        table.extend(errors);
        if !table.is_empty() {
            return Err(failed(table, Vec::new()));
        }
        let all = cells();
        // Connections that the step before allows and this one denies, opened before it.
        let (held, mut traffic) = match previous {
            Some((_, before)) => self.open_established(&all, before, &expected, case.family),
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
        let timeout = self.options.timeout;
        let mut outcome = match self.probe(&all, &expected, case.family, timeout) {
            Ok(outcomes) => compare(case, i, &all, &expected, &outcomes),
            Err(e) => failed(Vec::new(), vec![e]),
        };
        traffic.extend(check_established(held));
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

    /// Opens TCP connections for up to [`MAX_ESTABLISHED`] cells (half direct, half through
    /// the ClusterIP) that `before` allows and `after` denies, each answered once; and the
    /// problems met.
    fn open_established(
        &mut self,
        all: &[Cell],
        before: &[bool],
        after: &[bool],
        family: IpFamily,
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
                match self.open_one(cell, family) {
                    Ok(session) => held.push(Held { cell, session }),
                    Err(e) => problems.push(format!(
                        "{cell} ({family:?}): a connection opened before the step (which the step before allows): {e}"
                    )),
                }
            }
        }
        (held, problems)
    }

    fn open_one(&mut self, cell: Cell, family: IpFamily) -> Result<TcpSession, String> {
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
        let source = SocketAddr::new(unspecified, self.next_port(cell.client));
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
fn seen(outcome: &ProbeOutcome) -> String {
    match outcome {
        ProbeOutcome::Answered { backend, .. } => format!("answered by {backend}"),
        ProbeOutcome::Refused => "refused (policy drops, it does not reject)".to_owned(),
        ProbeOutcome::Unreachable => "unreachable".to_owned(),
        ProbeOutcome::Timeout => "no answer (dropped)".to_owned(),
    }
}

/// Whether `outcome` is what the cell expects.
fn agrees(cell: Cell, allowed: bool, outcome: &ProbeOutcome) -> bool {
    match outcome {
        ProbeOutcome::Answered { backend, .. } => allowed && *backend == pod_name(cell.server),
        ProbeOutcome::Timeout => !allowed,
        ProbeOutcome::Refused | ProbeOutcome::Unreachable => false,
    }
}

/// Most failed cells listed one per line (the truth tables show them all).
const MAX_LISTED: usize = 24;

fn compare(
    case: &PolicyCase,
    step: usize,
    cells: &[Cell],
    expected: &[bool],
    outcomes: &[ProbeOutcome],
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
                "case {} step {}: {cell} ({:?}): expected {}, saw {}",
                case.name,
                step + 1,
                case.family,
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

/// The e2e suite's truth tables, one per protocol, port and path that has a wrong cell:
/// clients down, servers across; `.` allowed and `X` denied as expected, `!` answered where
/// the model denies, `?` dropped where it allows, `E` refused or unreachable, `W` answered
/// by the wrong pod.
pub(super) fn truth_tables(
    cells: &[Cell],
    expected: &[bool],
    outcomes: &[ProbeOutcome],
) -> Vec<String> {
    let mut slices: BTreeMap<(Protocol, u16, Path), Vec<Vec<char>>> = BTreeMap::new();
    let mut bad: BTreeMap<(Protocol, u16, Path), bool> = BTreeMap::new();
    for ((cell, allowed), outcome) in cells.iter().zip(expected).zip(outcomes) {
        let key = (cell.protocol, cell.port, cell.path);
        let grid = slices
            .entry(key)
            .or_insert_with(|| vec![vec![' '; POD_COUNT]; CLIENT_COUNT]);
        let mark = match (outcome, allowed) {
            (ProbeOutcome::Answered { backend, .. }, _) if *backend != pod_name(cell.server) => 'W',
            (ProbeOutcome::Answered { .. }, true) => '.',
            (ProbeOutcome::Answered { .. }, false) => '!',
            (ProbeOutcome::Timeout, false) => 'X',
            (ProbeOutcome::Timeout, true) => '?',
            (ProbeOutcome::Refused | ProbeOutcome::Unreachable, _) => 'E',
        };
        grid[cell.client][cell.server] = mark;
        *bad.entry(key).or_default() |= !agrees(*cell, *allowed, outcome);
    }
    slices
        .into_iter()
        .filter(|(key, _)| bad.get(key).copied().unwrap_or(false))
        .map(|((protocol, port, path), grid)| {
            let mut out = format!(
                "{protocol}/{port} {path} (. allowed, X denied as expected; ! answered but denied, ? dropped but allowed, E refused, W wrong pod):\n"
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
