//! Runs the host cases: each step's states, the expectations from the reference model, the
//! applies, the probes (both families, at once), the held connections and the conntrack
//! check.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use dataplane_core::{
    error_chain, evaluate, reply_allowed, validate, Dataplane, DesiredState, Entry, FailsafePorts,
    IpFamily, ObjectName, Packet, Protocol, SourceSeen, Verdict,
};

use crate::lab::{Lab, LabNode, LabSpec, POD_NAMESPACE};
use crate::netns::NetNs;
use crate::traffic::{serve, BatchOutcome, BatchProbe, ProbeOutcome, Server, TcpSession};

use super::super::policy::runner::{reprobes, seen};
use super::super::report::{Report, RowOutcome};
use super::super::runner::{
    finish, next_source_port, not_run, probe_again, probe_clients, row_chosen, row_filter, start,
    unspecified, ClientBatch,
};
use super::case::{HostCase, HostProbe, HostStep, Meaning, Party, Target};
use super::table::{
    cluster_ip, families, node_states, party_address, server_name, servers, ATTACKER, ATTACKER_V4,
    ATTACKER_V6, HOST_LAB, NODE,
};

/// Source port the reference model is asked about (no rule of the table looks at a
/// client's source port).
const NOMINAL_CLIENT_PORT: u16 = 40000;

/// Source ports of the probes: one counter for the whole run and every client, so that no
/// two probes share a tuple even after masquerading (a NodePort connection masqueraded to the
/// node's address keeps its port), and no probe meets an earlier connection's conntrack
/// entry. Above every server port of the table, below the NodePort range and the kernel's
/// ephemeral range; none is a failsafe port (an untracked reply goes to it).
pub(super) const PROBE_PORTS: std::ops::Range<u16> = 10_000..30_000;

/// Settings of [`run_host_with`].
#[derive(Debug, Clone)]
pub struct HostRunOptions {
    /// How long a probe that should be answered may take.
    pub timeout: Duration,
    /// How long a probe that should be dropped is given before it counts as dropped: waited
    /// once per step (all probes are in flight together).
    pub drop_wait: Duration,
    /// Check, after each step, that the flows a case means to be untracked left no entry
    /// in the Linux conntrack table of the node they entered (`conntrack -L` in its
    /// namespace). Every backend keeps it on: an eBPF backend's own conntrack map is not
    /// the kernel's table, which must stay empty of them all the same.
    pub check_kernel_conntrack: bool,
    /// Print each row's result to stderr as it completes.
    pub verbose: bool,
}

impl Default for HostRunOptions {
    fn default() -> Self {
        HostRunOptions {
            timeout: Duration::from_secs(3),
            drop_wait: Duration::from_millis(800),
            check_kernel_conntrack: true,
            verbose: true,
        }
    }
}

/// Where a party's packets enter the dataplane first, and as what.
fn first_hop(probe: &HostProbe) -> Result<(usize, Entry), String> {
    Ok(match (probe.from, probe.to) {
        (Party::Node(n), _) => (n, Entry::FromHost),
        (Party::Pod(n), _) => (
            n,
            Entry::FromPod(ObjectName::new(POD_NAMESPACE, Party::Pod(n).to_string())),
        ),
        (
            Party::External(_),
            Target::Node(n) | Target::NodePort(n) | Target::RemoteNodePort(n) | Target::Pod(n),
        ) => (n, Entry::FromUplink),
        (Party::External(_), _) => {
            return Err(format!(
                "{probe}: an external client reaches nodes and pods only"
            ))
        }
    })
}

/// The address `target` is at, in `family`.
fn target_address(spec: LabSpec, target: Target, family: IpFamily) -> Option<IpAddr> {
    match target {
        Target::Node(n) | Target::NodePort(n) | Target::RemoteNodePort(n) => {
            party_address(spec, Party::Node(n), family)
        }
        Target::Pod(n) => party_address(spec, Party::Pod(n), family),
        Target::External(k) => party_address(spec, Party::External(k), family),
        Target::ClusterIp => Some(cluster_ip(family)),
    }
}

/// The node that owns `ip` (one of its addresses or its pod's), if any.
fn owner(states: &[DesiredState], ip: IpAddr) -> Option<usize> {
    states.iter().position(|s| {
        s.node.addresses.contains(&ip) || s.endpoints.iter().any(|e| e.ips.contains(&ip))
    })
}

/// What the reference model says of `probe` in `family` with every node's `states`: the
/// probe's packet is judged by [`evaluate`] and [`reply_allowed`] on the node it enters (the
/// client's own, or the one it is addressed to), and again, as it arrives from the uplink,
/// on the node it is forwarded to when that is another. Answered only if every node lets
/// it through and lets its replies back.
pub(super) fn expectation(
    spec: LabSpec,
    states: &[DesiredState],
    probe: &HostProbe,
    family: IpFamily,
) -> Result<Meaning, String> {
    let client = party_address(spec, probe.from, family)
        .ok_or_else(|| format!("{probe}: no {family:?} address for {}", probe.from))?;
    let destination = target_address(spec, probe.to, family)
        .ok_or_else(|| format!("{probe}: no {family:?} address for the target"))?;
    let (mut node, mut entry) = first_hop(probe)?;
    let mut packet = Packet {
        protocol: probe.protocol,
        source: SocketAddr::new(client, NOMINAL_CLIENT_PORT),
        destination: SocketAddr::new(destination, probe.port),
    };
    for _ in 0..2 {
        let state = &states[node];
        let verdict = evaluate(state, &packet, &entry);
        let (to, seen_as) = match &verdict {
            Verdict::Drop => return Ok(Meaning::Dropped),
            Verdict::Forward {
                backends, source, ..
            } if backends.len() == 1 => (*backends.iter().next().expect("one"), *source),
            Verdict::Untouched { source } => (packet.destination, *source),
            other => {
                return Err(format!(
                    "{probe} ({family:?}) on node-{node}: the model says {other:?}"
                ))
            }
        };
        if !reply_allowed(state, &packet, &entry) {
            return Ok(Meaning::Dropped);
        }
        let source = match seen_as {
            SourceSeen::Client => packet.source,
            SourceSeen::Masqueraded(ip) => SocketAddr::new(ip, packet.source.port()),
        };
        match owner(states, to.ip()) {
            Some(next) if next != node => {
                node = next;
                entry = Entry::FromUplink;
                packet = Packet {
                    protocol: probe.protocol,
                    source,
                    destination: to,
                };
            }
            _ => return Ok(Meaning::Answered),
        }
    }
    Err(format!("{probe} ({family:?}): forwarded more than once"))
}

/// One probe in one family, with what the model expects of it.
#[derive(Debug, Clone, Copy)]
struct Cell {
    probe: HostProbe,
    family: IpFamily,
    expected: Meaning,
}

impl std::fmt::Display for Cell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let family = match self.family {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        };
        write!(f, "{} ({family})", self.probe)
    }
}

/// The states of `step` (`None`: node-0's host endpoint without policies, default failsafe
/// ports — the open state each case starts from).
pub(super) fn step_states(spec: LabSpec, step: Option<&HostStep>) -> Vec<DesiredState> {
    let open = FailsafePorts::default();
    match step {
        Some(s) => node_states(spec, Some((&s.policies, &s.failsafe))),
        None => node_states(spec, Some((&[], &open))),
    }
}

/// The cells of `probes` in `families`, with the model's expectation; the disagreements
/// between the model and what the case means.
fn expect(
    spec: LabSpec,
    states: &[DesiredState],
    probes: &[HostProbe],
    families: &[IpFamily],
    what: &str,
) -> (Vec<Cell>, Vec<String>) {
    let mut cells = Vec::new();
    let mut table = Vec::new();
    for probe in probes {
        for family in families {
            match expectation(spec, states, probe, *family) {
                Ok(expected) => {
                    if expected != probe.meaning {
                        table.push(format!(
                            "{what}: {probe} ({family:?}): the case means {:?}, the reference model says {expected:?}",
                            probe.meaning
                        ));
                    }
                    cells.push(Cell {
                        probe: *probe,
                        family: *family,
                        expected,
                    });
                }
                Err(e) => table.push(format!("{what}: {e}")),
            }
        }
    }
    (cells, table)
}

/// The table check of a whole case: every step's probes, and its held connections in the
/// state before it (the open state before the first step), agree with the model.
pub(super) fn check_case(spec: LabSpec, case: &HostCase, families: &[IpFamily]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut before = step_states(spec, None);
    for (i, step) in case.steps.iter().enumerate() {
        let states = step_states(spec, Some(step));
        for (n, s) in states.iter().enumerate() {
            if let Err(e) = validate(s) {
                problems.push(format!(
                    "step {}: node-{n}'s state: {}",
                    i + 1,
                    error_chain(&e)
                ));
            }
        }
        let what = format!("step {}", i + 1);
        problems.extend(
            expect(
                spec,
                &before,
                &step.hold,
                families,
                &format!("{what} (held, before)"),
            )
            .1,
        );
        problems.extend(expect(spec, &states, &step.probes, families, &what).1);
        if step.hold.iter().any(|h| h.protocol != Protocol::Tcp) {
            problems.push(format!("{what}: a held connection must be TCP"));
        }
        before = states;
    }
    problems
}

/// Runs `cases` in `lab` (built from [`HOST_LAB`]) against one backend instance per node
/// made by `factory`, with [`HostRunOptions::default`].
pub fn run_host(
    lab: &Lab,
    cases: &[HostCase],
    factory: &mut dyn FnMut(&LabNode) -> Box<dyn Dataplane>,
) -> Report {
    run_host_with(lab, cases, factory, &HostRunOptions::default())
}

/// [`run_host`] with explicit options. One report row per step of each case, named
/// `<case> #<step> <what the step does>`; a backend without
/// [`Capabilities::host_policy`](dataplane_core::Capabilities::host_policy) skips each case
/// as one visible row (after its table check). `DP_CONFORMANCE_ROWS=part,part` runs only the
/// cases whose names contain one of the parts (ignored under `CI=true`). At the end every
/// backend is `reset()`. Each run counts its source ports from the start of its range: give
/// each run a lab of its own (a second run in the same lab would meet the first one's
/// conntrack entries, UDP ones live 30 s).
pub fn run_host_with(
    lab: &Lab,
    cases: &[HostCase],
    factory: &mut dyn FnMut(&LabNode) -> Box<dyn Dataplane>,
    options: &HostRunOptions,
) -> Report {
    let (mut planes, caps, mut report) = start(lab, factory);
    let spec = lab.spec();
    let families = if spec.ipv6 && caps.ipv6 {
        families(spec)
    } else {
        vec![IpFamily::V4]
    };
    let mut run = Run {
        lab,
        options,
        families,
        next_port: PROBE_PORTS.start,
        report: &mut report,
    };
    let only = row_filter();
    let chosen: Vec<HostCase> = cases
        .iter()
        .filter(|c| row_chosen(only.as_deref(), &c.name))
        .cloned()
        .collect();
    if caps.host_policy {
        // Servers and warm-up for the chosen cases only.
        match run.prepare(&mut planes, &chosen) {
            Ok(servers) => {
                for case in &chosen {
                    let started = Instant::now();
                    run.case(case, &mut planes);
                    if options.verbose {
                        eprintln!("  ({} took {:.1?})", case.name, started.elapsed());
                    }
                }
                drop(servers);
            }
            Err(e) => run.push(
                "prepare the lab",
                RowOutcome::Failed {
                    table: Vec::new(),
                    traffic: vec![e],
                },
            ),
        }
    } else {
        for case in &chosen {
            let outcome = not_run(
                check_case(spec, case, &run.families),
                &caps.dataplane,
                "host endpoint policy (Capabilities::host_policy)",
            );
            run.push(&case.name, outcome);
        }
    }
    finish(&mut planes, report, options.verbose)
}

/// One run's context.
struct Run<'a> {
    lab: &'a Lab,
    options: &'a HostRunOptions,
    families: Vec<IpFamily>,
    /// The next source port (see [`PROBE_PORTS`]).
    next_port: u16,
    report: &'a mut Report,
}

impl Run<'_> {
    fn push(&mut self, name: &str, outcome: RowOutcome) {
        self.report.push_row(name, outcome, self.options.verbose);
    }

    /// The next source port; an error once [`PROBE_PORTS`] is used up (never a wrap).
    fn port(&mut self) -> Result<u16, String> {
        next_source_port(&mut self.next_port, &PROBE_PORTS)
    }

    fn netns(&self, party: Party) -> &NetNs {
        match party {
            Party::External(k) => &self.lab.external(k).netns,
            Party::Node(n) => &self.lab.node(n).netns,
            Party::Pod(n) => &self.lab.pod(n).netns,
        }
    }

    /// Checks the lab's shape; gives the attacker its blocked sources (and node-0 its route
    /// back to them), routes the pods' CIDRs from the other externals through their nodes,
    /// starts the servers, applies the state without host endpoint and warms up: every
    /// probe of every case once, each of which must be answered without host policy (so
    /// that a dropped cell later means the policy dropped it).
    fn prepare(
        &mut self,
        planes: &mut [Box<dyn Dataplane>],
        cases: &[HostCase],
    ) -> Result<Vec<Server>, String> {
        let spec = self.lab.spec();
        if (spec.nodes, spec.pods_per_node, spec.external_clients)
            != (
                HOST_LAB.nodes,
                HOST_LAB.pods_per_node,
                HOST_LAB.external_clients,
            )
        {
            return Err(format!(
                "the host table needs a lab like HOST_LAB ({HOST_LAB:?}), not {spec:?}"
            ));
        }
        let planned = node_states(spec, None);
        for (n, state) in planned.iter().enumerate() {
            let pod = self.lab.pod(n);
            if state.endpoints != [pod.endpoint()] {
                return Err(format!(
                    "pod of node-{n} is planned as {:?}, the lab has {:?}",
                    state.endpoints,
                    pod.endpoint()
                ));
            }
        }
        self.wire().map_err(|e| format!("lab wiring: {e}"))?;
        let mut running = Vec::new();
        for (party, port) in servers(cases) {
            let name = format!("{party}:{port}");
            running.push(
                serve(self.netns(party), &name, port)
                    .map_err(|e| format!("server {name}: {}", error_chain(&e)))?,
            );
        }
        for (n, plane) in planes.iter_mut().enumerate() {
            plane.apply(&planned[n]).map_err(|e| {
                format!(
                    "apply the state without host endpoint on node-{n}: {}",
                    error_chain(&e)
                )
            })?;
        }
        let mut all: Vec<HostProbe> = cases
            .iter()
            .flat_map(|c| &c.steps)
            .flat_map(|s| s.probes.iter().chain(&s.hold))
            .map(|p| HostProbe {
                meaning: Meaning::Answered,
                untracked: false,
                ..*p
            })
            .collect();
        all.sort_by_key(|p| (p.from, p.to, p.protocol, p.port));
        all.dedup_by_key(|p| (p.from, p.to, p.protocol, p.port));
        let (mut left, table) = expect(spec, &planned, &all, &self.families, "warm-up");
        if !table.is_empty() {
            return Err(table.join("; "));
        }
        let mut seen_last = Vec::new();
        for _ in 0..3 {
            let waits = vec![Duration::from_secs(1); left.len()];
            let outcomes = self.probe(&left, &waits)?;
            (left, seen_last) = left
                .into_iter()
                .zip(outcomes)
                .filter(|(c, o)| !warm(spec, c, o))
                .unzip();
            if left.is_empty() {
                return Ok(running);
            }
        }
        let left: Vec<String> = left
            .iter()
            .zip(&seen_last)
            .map(|(c, o)| format!("{c}: {o:?}"))
            .collect();
        Err(format!(
            "warm-up, without host policy, after 3 tries (an external client must be seen \
             from its own address by the node's servers): {}",
            left.join("; ")
        ))
    }

    /// The lab's additions for the table (inside its namespaces only).
    fn wire(&self) -> Result<(), String> {
        let lab = self.lab;
        let v6 = self.families.contains(&IpFamily::V6);
        let attacker = lab.external(ATTACKER);
        let node = lab.node(NODE);
        let mut evil = vec![
            format!("addr replace {ATTACKER_V4}/32 dev eth0"),
            format!("route replace 172.18.0.0/16 dev eth0 src {ATTACKER_V4}"),
        ];
        let mut back = vec![format!(
            "route replace 203.0.113.0/24 via {} dev eth0",
            attacker
                .address(IpFamily::V4)
                .ok_or("attacker without IPv4")?
        )];
        if v6 {
            evil.extend([
                format!("addr replace {ATTACKER_V6}/128 dev eth0 nodad"),
                format!("route replace fd00:18::/64 dev eth0 src {ATTACKER_V6} metric 256"),
            ]);
            back.push(format!(
                "route replace 2001:db8:bad::/48 via {} dev eth0",
                attacker
                    .address(IpFamily::V6)
                    .ok_or("attacker without IPv6")?
            ));
        }
        // The attacker's neighbour entries for node-0, fixed: its ARP and neighbour
        // solicitations go out from its blocked source, which an untracked deny of the
        // prefix (any protocol: ICMPv6 too) drops, and the failsafe probes must still reach
        // the node after the entries it learnt would have gone stale.
        let mac = node
            .netns
            .exec_checked("cat", &["/sys/class/net/eth0/address"], None)
            .map_err(|e| error_chain(&e))?;
        let mac = String::from_utf8_lossy(&mac.stdout).trim().to_owned();
        for ip in &node.addresses {
            if v6 || ip.is_ipv4() {
                evil.push(format!(
                    "neigh replace {ip} lladdr {mac} dev eth0 nud permanent"
                ));
            }
        }
        attacker
            .netns
            .ip_batch(&evil)
            .map_err(|e| error_chain(&e))?;
        node.netns.ip_batch(&back).map_err(|e| error_chain(&e))?;
        for k in (0..lab.externals().len()).filter(|k| *k != ATTACKER) {
            for n in lab.nodes() {
                for cidr in &n.pod_cidrs {
                    if v6 || cidr.is_ipv4() {
                        lab.route_via_node(k, *cidr, n.index)
                            .map_err(|e| error_chain(&e))?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Sends `cells`, each given its wait in `waits`, all at once, one thread per client,
    /// each probe from a source port of its own.
    fn probe(&mut self, cells: &[Cell], waits: &[Duration]) -> Result<Vec<BatchOutcome>, String> {
        let spec = self.lab.spec();
        let mut batches: std::collections::BTreeMap<Party, Vec<(usize, BatchProbe)>> =
            std::collections::BTreeMap::new();
        for (i, (cell, wait)) in cells.iter().zip(waits).enumerate() {
            let ip = target_address(spec, cell.probe.to, cell.family)
                .ok_or_else(|| format!("{cell}: no address"))?;
            let probe = BatchProbe {
                destination: SocketAddr::new(ip, cell.probe.port),
                protocol: cell.probe.protocol,
                source_port: Some(self.port()?),
                timeout: *wait,
            };
            batches.entry(cell.probe.from).or_default().push((i, probe));
        }
        let batches = batches
            .into_iter()
            .map(|(party, probes)| ClientBatch {
                netns: self.netns(party),
                name: party.to_string(),
                probes,
            })
            .collect();
        probe_clients(batches, cells.len())
    }

    /// Applies `states` to every node: in full (`previous` is `None`) or as the diff from
    /// `previous` ([`Dataplane::sync`]: a backend may ask for a full sync instead).
    fn apply(
        planes: &mut [Box<dyn Dataplane>],
        previous: Option<&[DesiredState]>,
        states: &[DesiredState],
    ) -> Result<(), String> {
        for (n, plane) in planes.iter_mut().enumerate() {
            plane
                .sync(previous.map(|p| &p[n]), &states[n])
                .map_err(|e| format!("node-{n}: {}", error_chain(&e)))?;
        }
        Ok(())
    }

    /// Runs one case: its open state in full, then each step as a diff, a row per step.
    fn case(&mut self, case: &HostCase, planes: &mut [Box<dyn Dataplane>]) {
        let spec = self.lab.spec();
        let table = check_case(spec, case, &self.families);
        if !table.is_empty() {
            self.push(
                &case.name,
                RowOutcome::Failed {
                    table,
                    traffic: Vec::new(),
                },
            );
            return;
        }
        let mut previous = step_states(spec, None);
        if let Err(e) = Self::apply(planes, None, &previous) {
            self.push(
                &format!("{} open state", case.name),
                RowOutcome::Failed {
                    table: Vec::new(),
                    traffic: vec![format!("apply: {e}")],
                },
            );
            return;
        }
        for (i, step) in case.steps.iter().enumerate() {
            let name = format!("{} #{} {}", case.name, i + 1, step.name);
            let states = step_states(spec, Some(step));
            let outcome = self.step(planes, &previous, &states, step);
            let failed = matches!(outcome, RowOutcome::Failed { .. });
            self.push(&name, outcome);
            if failed {
                return;
            }
            previous = states;
        }
    }

    fn step(
        &mut self,
        planes: &mut [Box<dyn Dataplane>],
        previous: &[DesiredState],
        states: &[DesiredState],
        step: &HostStep,
    ) -> RowOutcome {
        let spec = self.lab.spec();
        let failed = |traffic: Vec<String>| RowOutcome::Failed {
            table: Vec::new(),
            traffic,
        };
        let (held_cells, _) = expect(spec, previous, &step.hold, &self.families, "held");
        let mut held = Vec::new();
        for cell in held_cells {
            match self.open(cell) {
                Ok(session) => held.push((cell, session)),
                Err(e) => {
                    return failed(vec![format!(
                        "{cell}: a connection opened before the step (which the state before allows): {e}"
                    )])
                }
            }
        }
        if let Err(e) = Self::apply(planes, Some(previous), states) {
            return failed(vec![format!("apply: {e}")]);
        }
        let (cells, _) = expect(spec, states, &step.probes, &self.families, "step");
        let waits: Vec<Duration> = cells
            .iter()
            .map(|c| match c.expected {
                Meaning::Answered => self.options.timeout,
                Meaning::Dropped => self.options.drop_wait,
            })
            .collect();
        let mut outcomes = match self.probe(&cells, &waits) {
            Ok(o) => o,
            Err(e) => return failed(vec![e]),
        };
        let expected: Vec<bool> = cells
            .iter()
            .map(|c| c.expected == Meaning::Answered)
            .collect();
        let again = reprobes(&expected, &outcomes, self.options.drop_wait);
        let timeout = self.options.timeout;
        if let Err(e) = probe_again(&cells, &mut outcomes, again, |retry| {
            self.probe(retry, &vec![timeout; retry.len()])
        }) {
            return failed(vec![e]);
        }
        let mut problems: Vec<String> = cells
            .iter()
            .zip(&outcomes)
            .filter(|(c, o)| !agrees(c, o))
            .map(|(c, o)| {
                format!(
                    "{c}: expected {}, saw {}",
                    match c.expected {
                        Meaning::Answered => format!("answered by {}", server_name(&c.probe)),
                        Meaning::Dropped => "dropped".to_owned(),
                    },
                    seen(o)
                )
            })
            .collect();
        for (cell, mut session) in held {
            match session.request() {
                Ok((name, _)) if name == server_name(&cell.probe) => {}
                Ok((name, _)) => problems.push(format!("{cell} (held): answered by {name}")),
                Err(e) => problems.push(format!(
                    "{cell}: established before the step, it must keep flowing: {}",
                    error_chain(&e)
                )),
            }
        }
        if self.options.check_kernel_conntrack {
            problems.extend(self.untracked_left_entries(&cells, &outcomes));
        }
        if problems.is_empty() {
            let mut answered = std::collections::BTreeMap::new();
            for o in &outcomes {
                if let Some(b) = o.backend() {
                    *answered.entry(b.to_owned()).or_default() += 1;
                }
            }
            RowOutcome::Passed {
                probes: cells.len(),
                answered,
            }
        } else {
            failed(problems)
        }
    }

    /// A TCP connection for `cell`, answered once.
    fn open(&mut self, cell: Cell) -> Result<TcpSession, String> {
        let ip = target_address(self.lab.spec(), cell.probe.to, cell.family)
            .ok_or_else(|| format!("{cell}: no address"))?;
        let source = SocketAddr::new(unspecified(cell.family), self.port()?);
        let mut session = TcpSession::open_from(
            self.netns(cell.probe.from),
            Some(source),
            SocketAddr::new(ip, cell.probe.port),
            self.options.timeout,
        )
        .map_err(|e| error_chain(&e))?;
        let (name, _) = session.request().map_err(|e| error_chain(&e))?;
        if name != server_name(&cell.probe) {
            return Err(format!("answered by {name}"));
        }
        Ok(session)
    }

    /// The untracked cells that were answered and left an entry in the Linux conntrack
    /// table of the node they entered.
    fn untracked_left_entries(&self, cells: &[Cell], outcomes: &[BatchOutcome]) -> Vec<String> {
        let spec = self.lab.spec();
        let mut problems = Vec::new();
        for (cell, outcome) in cells.iter().zip(outcomes) {
            if !cell.probe.untracked {
                continue;
            }
            let Some(local) = (match outcome {
                BatchOutcome::Ended(ProbeOutcome::Answered { local, .. }) => Some(*local),
                _ => None,
            }) else {
                continue;
            };
            let Ok((node, _)) = first_hop(&cell.probe) else {
                continue;
            };
            let Some(client) = party_address(spec, cell.probe.from, cell.family) else {
                continue;
            };
            let family = match cell.family {
                IpFamily::V4 => "ipv4",
                IpFamily::V6 => "ipv6",
            };
            let protocol = match cell.probe.protocol {
                Protocol::Tcp => "tcp",
                _ => "udp",
            };
            let (client, sport) = (client.to_string(), local.port().to_string());
            let args = [
                "-L",
                "-f",
                family,
                "-p",
                protocol,
                "--orig-src",
                &client,
                "--orig-port-src",
                &sport,
            ];
            match self.lab.node(node).netns.exec("conntrack", &args) {
                Ok(out) if out.status.success() => {
                    let entries = String::from_utf8_lossy(&out.stdout);
                    let entries: Vec<&str> = entries.lines().filter(|l| !l.trim().is_empty()).collect();
                    if !entries.is_empty() {
                        problems.push(format!(
                            "{cell}: untracked, yet node-{node}'s conntrack table holds {}",
                            entries.join(" | ")
                        ));
                    }
                }
                Ok(out) => problems.push(format!(
                    "conntrack -L in node-{node}: {} {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                )),
                Err(e) => problems.push(format!(
                    "conntrack -L in node-{node} (the conntrack tool: scripts/dev setup installs it): {}",
                    error_chain(&e)
                )),
            }
        }
        problems
    }
}

/// Whether a warm-up probe got through as it must: answered by its server, and — from an
/// external client to a node's own server — seen from the client's own address (the
/// attacker's blocked source, not its underlay address).
fn warm(spec: LabSpec, cell: &Cell, outcome: &BatchOutcome) -> bool {
    let BatchOutcome::Ended(ProbeOutcome::Answered {
        backend,
        seen_source,
        ..
    }) = outcome
    else {
        return false;
    };
    let direct = matches!(
        (cell.probe.from, cell.probe.to),
        (Party::External(_), Target::Node(_))
    );
    *backend == server_name(&cell.probe)
        && (!direct || party_address(spec, cell.probe.from, cell.family) == Some(seen_source.ip()))
}

/// Whether `outcome` is what `cell` expects: answered by its server, or dropped (a refusal,
/// an unreachable, or a completed TCP handshake is never a drop).
fn agrees(cell: &Cell, outcome: &BatchOutcome) -> bool {
    match (cell.expected, outcome) {
        (Meaning::Answered, BatchOutcome::Ended(ProbeOutcome::Answered { backend, .. })) => {
            *backend == server_name(&cell.probe)
        }
        (Meaning::Dropped, BatchOutcome::Ended(ProbeOutcome::Timeout)) => true,
        _ => false,
    }
}
