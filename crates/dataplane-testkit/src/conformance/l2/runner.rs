//! Runs the L2 cases: the table check against the reference model, the applies, the
//! client's neighbour cache, the probes.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use dataplane_core::{
    error_chain, evaluate, l2::announced_addresses, validate, Dataplane, DesiredState, Entry,
    IpFamily, Packet, Protocol, Verdict,
};

use crate::lab::{self, Lab, LabNode, LabSpec, SERVER_PORT};
use crate::netns::NetNs;
use crate::traffic::{probe_batch, serve, BatchOutcome, BatchProbe, Server};

use super::super::report::{Report, RowOutcome};
use super::super::runner::{
    finish, lab_families as families, next_source_port, not_run, probe_again, row_chosen,
    row_filter, start,
};
use super::table::{
    frontend_address, node_states, Frontend, L2Case, L2Check, L2Step, CLIENT, NODE_PORT,
    SERVICE_PORT,
};

/// Source port the reference model is asked about.
const NOMINAL_CLIENT_PORT: u16 = 40000;

/// Source ports of the probes: one counter for the whole run, so that no probe meets an
/// earlier one's conntrack entry on either node.
const PROBE_PORTS: std::ops::Range<u16> = 10_000..30_000;

/// Settings of [`run_l2_with`].
#[derive(Debug, Clone)]
pub struct L2RunOptions {
    /// How long a probe that should be answered may take (address resolution included).
    pub timeout: Duration,
    /// How long a probe to an address that must not resolve is given.
    pub drop_wait: Duration,
    /// How long, after the applies, the client's existing neighbour entry may take to show
    /// the new announcer's MAC when the step does not flush it (the gratuitous announcement
    /// is sent by the apply; the kernel takes it in at once).
    pub announce_wait: Duration,
    /// Print each row's result to stderr as it completes.
    pub verbose: bool,
}

impl Default for L2RunOptions {
    fn default() -> Self {
        L2RunOptions {
            timeout: Duration::from_secs(3),
            drop_wait: Duration::from_millis(1500),
            announce_wait: Duration::from_secs(1),
            verbose: true,
        }
    }
}

/// The name the pod of node `node` answers with.
fn pod_name(node: usize) -> String {
    format!("pod-{node}-0")
}

fn pod_address(node: usize, family: IpFamily) -> IpAddr {
    match family {
        IpFamily::V4 => lab::pod_v4(node, 0),
        IpFamily::V6 => lab::pod_v6(node, 0),
    }
}

fn client_address(family: IpFamily) -> IpAddr {
    match family {
        IpFamily::V4 => lab::ext_v4(CLIENT),
        IpFamily::V6 => lab::ext_v6(CLIENT),
    }
}

/// The nodes whose state announces `ip`.
fn announcers(states: &[DesiredState], ip: IpAddr) -> Vec<usize> {
    (0..states.len())
        .filter(|n| announced_addresses(&states[*n]).contains(&ip))
        .collect()
}

/// The table check of `step` (the `i`th of its case): what the reference model says of its
/// states must be what the checks say.
fn check_step(spec: LabSpec, i: usize, step: &L2Step) -> Vec<String> {
    let mut problems = Vec::new();
    let what = format!("step {}", i + 1);
    if step.announcer.is_some_and(|n| n >= spec.nodes) {
        problems.push(format!("{what}: the lab has no node {:?}", step.announcer));
        return problems;
    }
    let states = node_states(spec, step.announcer);
    for (n, s) in states.iter().enumerate() {
        if let Err(e) = validate(s) {
            problems.push(format!("{what}: node-{n}'s state: {}", error_chain(&e)));
        }
    }
    for check in &step.checks {
        for family in families(spec) {
            match *check {
                L2Check::Resolves { frontend, node } => {
                    let ip = frontend_address(frontend, family);
                    if node >= spec.nodes {
                        problems.push(format!("{what}: the lab has no node-{node}"));
                        continue;
                    }
                    let by = announcers(&states, ip);
                    if by != [node] {
                        problems.push(format!(
                            "{what}: {frontend} {ip}: the case says it resolves at node-{node}, but node-{node} does not announce it alone (announced by {by:?})"
                        ));
                    }
                    for protocol in [Protocol::Tcp, Protocol::Udp] {
                        let packet = Packet {
                            protocol,
                            source: SocketAddr::new(client_address(family), NOMINAL_CLIENT_PORT),
                            destination: SocketAddr::new(ip, SERVICE_PORT),
                        };
                        let expected = SocketAddr::new(pod_address(node, family), SERVER_PORT);
                        match evaluate(&states[node], &packet, &Entry::FromUplink) {
                            Verdict::Forward { backends, .. }
                                if backends.len() == 1 && backends.contains(&expected) => {}
                            other => problems.push(format!(
                                "{what}: {protocol} to {frontend} {ip} on node-{node}: the case says {}, the reference model says {other:?}",
                                pod_name(node)
                            )),
                        }
                    }
                }
                L2Check::OtherPortUnanswered { .. } => {}
                L2Check::DoesNotResolve { frontend } => {
                    let ip = frontend_address(frontend, family);
                    let by = announcers(&states, ip);
                    if !by.is_empty() {
                        problems.push(format!(
                            "{what}: {frontend} {ip}: the case says it does not resolve, but it is announced by {by:?}"
                        ));
                    }
                }
            }
        }
    }
    problems
}

/// The table check of a whole case.
pub(super) fn check_case(spec: LabSpec, case: &L2Case) -> Vec<String> {
    case.steps
        .iter()
        .enumerate()
        .flat_map(|(i, s)| check_step(spec, i, s))
        .collect()
}

/// Runs `cases` in `lab` (built from [`L2_LAB`](super::L2_LAB)) against one backend instance
/// per node made by `factory`, with [`L2RunOptions::default`].
pub fn run_l2(
    lab: &Lab,
    cases: &[L2Case],
    factory: &mut dyn FnMut(&LabNode) -> Box<dyn Dataplane>,
) -> Report {
    run_l2_with(lab, cases, factory, &L2RunOptions::default())
}

/// [`run_l2`] with explicit options. One report row per step of each case, named
/// `<case> #<step> <what the step does>`; a backend without
/// [`Capabilities::l2_announcements`](dataplane_core::Capabilities::l2_announcements) skips
/// each case as one visible row (after its table check). `DP_CONFORMANCE_ROWS=part,part` runs
/// only the cases whose names contain one of the parts (ignored under `CI=true`). At the end
/// every backend is `reset()`.
pub fn run_l2_with(
    lab: &Lab,
    cases: &[L2Case],
    factory: &mut dyn FnMut(&LabNode) -> Box<dyn Dataplane>,
    options: &L2RunOptions,
) -> Report {
    let (mut planes, caps, mut report) = start(lab, factory);
    let spec = lab.spec();
    let only = row_filter();
    let mut run = Run {
        lab,
        options,
        families: if caps.ipv6 {
            families(spec)
        } else {
            vec![IpFamily::V4]
        },
        next_port: PROBE_PORTS.start,
        macs: Vec::new(),
        report: &mut report,
    };
    let chosen = cases
        .iter()
        .filter(|c| row_chosen(only.as_deref(), &c.name));
    let prepared = if caps.l2_announcements {
        run.prepare()
    } else {
        Ok((Vec::new(), Vec::new()))
    };
    match prepared {
        Err(e) => run.push(
            "prepare the lab",
            RowOutcome::Failed {
                table: Vec::new(),
                traffic: vec![e],
            },
        ),
        Ok((macs, _servers)) => {
            run.macs = macs;
            for case in chosen {
                let table = check_case(spec, case);
                if !table.is_empty() || !caps.l2_announcements {
                    let outcome = not_run(
                        table,
                        &caps.dataplane,
                        "L2 announcements (Capabilities::l2_announcements)",
                    );
                    run.push(&case.name, outcome);
                } else {
                    let started = Instant::now();
                    run.case(case, &mut planes);
                    if options.verbose {
                        eprintln!("  ({} took {:.1?})", case.name, started.elapsed());
                    }
                }
            }
        }
    }
    finish(&mut planes, report, options.verbose)
}

/// One run's context.
struct Run<'a> {
    lab: &'a Lab,
    options: &'a L2RunOptions,
    families: Vec<IpFamily>,
    next_port: u16,
    /// Each node's uplink MAC, lower case.
    macs: Vec<String>,
    report: &'a mut Report,
}

/// One probe of a step.
#[derive(Debug, Clone, Copy)]
struct Cell {
    check: L2Check,
    family: IpFamily,
    protocol: Protocol,
}

impl Cell {
    fn frontend(&self) -> Frontend {
        match self.check {
            L2Check::Resolves { frontend, .. }
            | L2Check::DoesNotResolve { frontend }
            | L2Check::OtherPortUnanswered { frontend } => frontend,
        }
    }

    fn address(&self) -> IpAddr {
        frontend_address(self.frontend(), self.family)
    }

    fn port(&self) -> u16 {
        match self.check {
            L2Check::OtherPortUnanswered { .. } => NODE_PORT,
            _ => SERVICE_PORT,
        }
    }
}

impl std::fmt::Display for Cell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} to {} {}",
            self.protocol,
            self.frontend(),
            SocketAddr::new(self.address(), self.port())
        )
    }
}

impl Run<'_> {
    fn push(&mut self, name: &str, outcome: RowOutcome) {
        self.report.push_row(name, outcome, self.options.verbose);
    }

    fn client(&self) -> &NetNs {
        &self.lab.external(CLIENT).netns
    }

    /// Every node's uplink MAC, and its servers on `NODE_PORT` (7000): each must answer the client
    /// on the node's own address (so that an unanswered probe later means it was dropped).
    fn prepare(&mut self) -> Result<(Vec<String>, Vec<Server>), String> {
        let macs = self.macs()?;
        let mut servers = Vec::new();
        for node in self.lab.nodes() {
            let name = format!("{}:{NODE_PORT}", node.name);
            servers.push(serve(&node.netns, &name, NODE_PORT).map_err(|e| error_chain(&e))?);
            for family in self.families.clone() {
                for protocol in [Protocol::Tcp, Protocol::Udp] {
                    let Some(ip) = node.address(family) else {
                        continue;
                    };
                    let probe = BatchProbe {
                        destination: SocketAddr::new(ip, NODE_PORT),
                        protocol,
                        source_port: Some(self.port()?),
                        timeout: self.options.timeout,
                    };
                    let seen = probe_batch(self.client(), &[probe]).map_err(|e| error_chain(&e))?;
                    if seen[0].backend() != Some(name.as_str()) {
                        return Err(format!(
                            "{protocol} to {name}'s own server on {ip}: {:?} (the lab must answer it before any announcement)",
                            seen[0]
                        ));
                    }
                }
            }
        }
        Ok((macs, servers))
    }

    /// Every node's uplink MAC.
    fn macs(&self) -> Result<Vec<String>, String> {
        self.lab
            .nodes()
            .iter()
            .map(|node| {
                let out = node
                    .netns
                    .exec_checked(
                        "cat",
                        &[format!("/sys/class/net/{}/address", node.uplink)],
                        None,
                    )
                    .map_err(|e| error_chain(&e))?;
                Ok(String::from_utf8_lossy(&out.stdout).trim().to_lowercase())
            })
            .collect()
    }

    fn case(&mut self, case: &L2Case, planes: &mut [Box<dyn Dataplane>]) {
        let spec = self.lab.spec();
        let mut previous: Option<Vec<DesiredState>> = None;
        for (i, step) in case.steps.iter().enumerate() {
            let name = format!("{} #{} {}", case.name, i + 1, step.name);
            let states = node_states(spec, step.announcer);
            let outcome = self.step(planes, previous.as_deref(), &states, step);
            let failed = matches!(outcome, RowOutcome::Failed { .. });
            self.push(&name, outcome);
            if failed {
                return;
            }
            previous = Some(states);
        }
    }

    /// The client's neighbour entry of `ip`: `None` without one, else its link-layer
    /// address (`None` inside: an entry without one, `INCOMPLETE` or `FAILED`) and the whole
    /// line.
    fn neighbour(&self, ip: IpAddr) -> Result<Option<(Option<String>, String)>, String> {
        let ip = ip.to_string();
        let out = self
            .client()
            .exec_checked("ip", &["neigh", "show", "to", &ip, "dev", "eth0"], None)
            .map_err(|e| error_chain(&e))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let Some(line) = text.lines().find(|l| !l.trim().is_empty()) else {
            return Ok(None);
        };
        let mut words = line.split_whitespace();
        let lladdr = words
            .by_ref()
            .skip_while(|w| *w != "lladdr")
            .nth(1)
            .map(str::to_lowercase);
        Ok(Some((lladdr, line.trim().to_owned())))
    }

    fn flush(&self) -> Result<(), String> {
        self.client()
            // No family: both (`ip -batch` takes no `-4`/`-6` per line).
            .ip_batch(&["neigh flush dev eth0".to_owned()])
            .map_err(|e| format!("flush the client's neighbour cache: {}", error_chain(&e)))
    }

    fn port(&mut self) -> Result<u16, String> {
        next_source_port(&mut self.next_port, &PROBE_PORTS)
    }

    /// Sends `cells` at once from the client, each given its wait in `waits`.
    fn probe(&mut self, cells: &[Cell], waits: &[Duration]) -> Result<Vec<BatchOutcome>, String> {
        let mut probes = Vec::new();
        for (cell, wait) in cells.iter().zip(waits) {
            probes.push(BatchProbe {
                destination: SocketAddr::new(cell.address(), cell.port()),
                protocol: cell.protocol,
                source_port: Some(self.port()?),
                timeout: *wait,
            });
        }
        probe_batch(self.client(), &probes).map_err(|e| error_chain(&e))
    }

    /// Every node's first pod asks for `frontend` on its own interface (a host route `dev
    /// eth0` there, for the check only), both families at once: no answer may come, and its
    /// neighbour entry must stay without a link-layer address.
    fn pods_ask(&mut self, frontend: Frontend) -> Vec<String> {
        let mut problems = Vec::new();
        let addresses: Vec<IpAddr> = self
            .families
            .iter()
            .map(|f| frontend_address(frontend, *f))
            .collect();
        let lines = |verb: &str| -> Vec<String> {
            addresses
                .iter()
                .map(|a| {
                    let len = if a.is_ipv4() { 32 } else { 128 };
                    format!("route {verb} {a}/{len} dev eth0")
                })
                .collect()
        };
        for pod in self.lab.pods().iter().filter(|p| p.name.ends_with("-0")) {
            if let Err(e) = pod.netns.ip_batch(&lines("replace")) {
                problems.push(format!("{}: {}", pod.name, error_chain(&e)));
                continue;
            }
            let mut probes = Vec::new();
            for a in &addresses {
                match next_source_port(&mut self.next_port, &PROBE_PORTS) {
                    Ok(port) => probes.push(BatchProbe {
                        destination: SocketAddr::new(*a, SERVICE_PORT),
                        protocol: Protocol::Udp,
                        source_port: Some(port),
                        timeout: self.options.drop_wait,
                    }),
                    Err(e) => problems.push(e),
                }
            }
            match probe_batch(&pod.netns, &probes) {
                Ok(outcomes) => {
                    for (p, o) in probes.iter().zip(outcomes) {
                        if let Some(b) = o.backend() {
                            problems.push(format!(
                                "{} asking for {frontend} {} on its own interface was answered by {b}",
                                pod.name, p.destination
                            ));
                        }
                    }
                }
                Err(e) => problems.push(format!("{}: {}", pod.name, error_chain(&e))),
            }
            for a in &addresses {
                let ip = a.to_string();
                let shown = pod.netns.exec_checked(
                    "ip",
                    &["neigh", "show", "to", &ip, "dev", "eth0"],
                    None,
                );
                match shown {
                    Ok(out) => {
                        let text = String::from_utf8_lossy(&out.stdout);
                        if text.contains("lladdr") {
                            problems.push(format!(
                                "{} asked for {frontend} {a} on its own interface and got an answer (a node answers on its uplink only): {}",
                                pod.name,
                                text.trim()
                            ));
                        }
                    }
                    Err(e) => problems.push(format!("{}: {}", pod.name, error_chain(&e))),
                }
            }
            let mut undo = lines("del");
            undo.push("neigh flush dev eth0".to_owned());
            if let Err(e) = pod.netns.ip_batch(&undo) {
                problems.push(format!("{}: {}", pod.name, error_chain(&e)));
            }
        }
        problems
    }

    /// Polls the client's entry of `ip` until it shows `mac` or `announce_wait` passes.
    fn moved(&self, ip: IpAddr, mac: &str) -> Result<(), String> {
        let deadline = Instant::now() + self.options.announce_wait;
        loop {
            let entry = self.neighbour(ip)?;
            if entry.as_ref().and_then(|(l, _)| l.as_deref()) == Some(mac) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{ip}: the client's neighbour entry did not move to {mac} within {:?} of the apply (no gratuitous ARP / unsolicited NA?): {}",
                    self.options.announce_wait,
                    entry.map_or_else(|| "no entry".to_owned(), |(_, line)| line)
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The client's neighbour entry of each address of `cells` (once per address): a
    /// resolving one must hold the announcing node's MAC, a non-resolving one no
    /// link-layer address (the client asked, nobody answered).
    fn neighbours(&self, cells: &[Cell]) -> Vec<String> {
        let mut problems = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for cell in cells {
            // (An address's entry is its `Resolves` or `DoesNotResolve` check's business.)
            if matches!(cell.check, L2Check::OtherPortUnanswered { .. })
                || !seen.insert((cell.address(), cell.family))
            {
                continue;
            }
            let ip = cell.address();
            let entry = match self.neighbour(ip) {
                Ok(e) => e,
                Err(e) => {
                    problems.push(e);
                    continue;
                }
            };
            match (cell.check, entry) {
                (L2Check::Resolves { node, .. }, Some((Some(mac), _))) if mac == self.macs[node] => {}
                (L2Check::Resolves { node, .. }, entry) => problems.push(format!(
                    "{ip}: the client's neighbour entry must be node-{node}'s uplink MAC {}, it is {}",
                    self.macs[node],
                    entry.map_or_else(|| "missing".to_owned(), |(_, line)| line)
                )),
                (L2Check::DoesNotResolve { .. }, Some((None, _)))
                | (L2Check::OtherPortUnanswered { .. }, _) => {}
                (L2Check::DoesNotResolve { .. }, Some((Some(_), line))) => problems.push(format!(
                    "{ip}: must not resolve, yet the client's neighbour entry is {line}"
                )),
                (L2Check::DoesNotResolve { .. }, None) => problems.push(format!(
                    "{ip}: the client has no neighbour entry at all (it never asked: the probe did not go out?)"
                )),
            }
        }
        problems
    }

    fn step(
        &mut self,
        planes: &mut [Box<dyn Dataplane>],
        previous: Option<&[DesiredState]>,
        states: &[DesiredState],
        step: &L2Step,
    ) -> RowOutcome {
        let failed = |traffic: Vec<String>| RowOutcome::Failed {
            table: Vec::new(),
            traffic,
        };
        for (n, plane) in planes.iter_mut().enumerate() {
            if let Err(e) = plane.sync(previous.map(|p| &p[n]), &states[n]) {
                return failed(vec![format!("apply on node-{n}: {}", error_chain(&e))]);
            }
        }
        let mut problems = Vec::new();
        if step.flush {
            if let Err(e) = self.flush() {
                return failed(vec![e]);
            }
        } else {
            for check in &step.checks {
                if let L2Check::Resolves { frontend, node } = check {
                    for family in &self.families {
                        if let Err(e) =
                            self.moved(frontend_address(*frontend, *family), &self.macs[*node])
                        {
                            problems.push(e);
                        }
                    }
                }
            }
        }
        let mut cells = Vec::new();
        for check in &step.checks {
            for family in &self.families {
                for protocol in [Protocol::Tcp, Protocol::Udp] {
                    cells.push(Cell {
                        check: *check,
                        family: *family,
                        protocol,
                    });
                }
            }
        }
        let waits: Vec<Duration> = cells
            .iter()
            .map(|c| match c.check {
                L2Check::Resolves { .. } => self.options.timeout,
                L2Check::DoesNotResolve { .. } | L2Check::OtherPortUnanswered { .. } => {
                    self.options.drop_wait
                }
            })
            .collect();
        let mut outcomes = match self.probe(&cells, &waits) {
            Ok(o) => o,
            Err(e) => return failed(vec![e]),
        };
        // Loss is not a verdict: an answer that should have come is asked for once more.
        let again: Vec<usize> = (0..cells.len())
            .filter(|i| {
                matches!(cells[*i].check, L2Check::Resolves { .. })
                    && outcomes[*i].backend().is_none()
            })
            .collect();
        let timeout = self.options.timeout;
        if let Err(e) = probe_again(&cells, &mut outcomes, again, |retry| {
            self.probe(retry, &vec![timeout; retry.len()])
        }) {
            return failed(vec![e]);
        }
        let answered = judge(&cells, &outcomes, &mut problems);
        problems.extend(self.neighbours(&cells));
        for frontend in &step.pods_ask {
            problems.extend(self.pods_ask(*frontend));
        }
        if problems.is_empty() {
            RowOutcome::Passed {
                probes: cells.len(),
                answered,
            }
        } else {
            failed(problems)
        }
    }
}

/// Compares the probes' outcomes with their checks; the answers per pod.
fn judge(
    cells: &[Cell],
    outcomes: &[BatchOutcome],
    problems: &mut Vec<String>,
) -> BTreeMap<String, usize> {
    let mut answered: BTreeMap<String, usize> = BTreeMap::new();
    for (cell, outcome) in cells.iter().zip(outcomes) {
        match (cell.check, outcome) {
            (L2Check::Resolves { node, .. }, o) if o.backend() == Some(&pod_name(node)) => {
                *answered.entry(pod_name(node)).or_default() += 1;
            }
            (L2Check::Resolves { node, .. }, o) => problems.push(format!(
                "{cell} ({:?}): expected an answer from {} (through node-{node}), saw {o:?}",
                cell.family,
                pod_name(node)
            )),
            (check, o) => {
                let why = if matches!(check, L2Check::OtherPortUnanswered { .. }) {
                    "no service serves the port: it must stay unanswered"
                } else {
                    "must not resolve"
                };
                if let Some(b) = o.backend() {
                    problems.push(format!("{cell}: {why}, yet {b} answered"));
                } else if matches!(o, BatchOutcome::Connected) {
                    problems.push(format!("{cell}: {why}, yet TCP connected"));
                }
            }
        }
    }
    answered
}
