//! The conformance table: one behaviour table, run against every backend and against core's
//! reference model (kube-proxy's `packetFlowTest`, with real packets).
//!
//! For each [`Case`] the runner
//! 1. builds each node's [`DesiredState`] from [`Lab::desired_state`] and the case's services;
//! 2. asks [`dataplane_core::evaluate`] what should happen at the ingress node and compares it
//!    with the row: a disagreement is a *table* failure (the row is wrong, or the model is);
//! 3. skips the row, visibly, when the backend's [`Capabilities`] lack something it needs;
//! 4. applies the states to every node's backend (full sync, instances reused across rows);
//! 5. sends real TCP or UDP probes from the client's namespace and checks the answering backend
//!    and the source address it saw, and that each answer agrees with the reference model for
//!    that exact 5-tuple.
//!
//! ```text
//!   Pod(i) ──veth──▶ node(i)   ─┐            External(k) ──underlay──▶ node (the row's `node`,
//!   Host(n) = node n namespace ─┴─ ingress      or node 0 for a ClusterIP, the pod's node for
//!                                               a pod IP); the runner adds the route
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use dataplane_core::{
    evaluate, validate, Backend, BackendSelection, Capabilities, Dataplane, DesiredState, Entry,
    ExternalMode, IpFamily, Node, ObjectName, Packet, Protocol, Service, ServicePort,
    SessionAffinity, SourceSeen, TrafficPolicy, Verdict,
};
use ipnetwork::IpNetwork;

use crate::lab::{Lab, LabNode, LabSpec, POD_NAMESPACE, SERVER_PORT};
use crate::netns::NetNs;
use crate::traffic::{probe_from, serve, ProbeOutcome, Server};

/// The lab shape [`standard_cases`] are written for.
pub const STANDARD_LAB: LabSpec = LabSpec {
    nodes: 2,
    pods_per_node: 2,
    external_clients: 2,
    ipv6: true,
};

/// Source port the reference model is asked about when a row does not fix one.
const NOMINAL_CLIENT_PORT: u16 = 40000;

/// Who sends the probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// Pod `i` (lab-wide index); the ingress node is its node (so a NodePort row from a pod
    /// addresses the pod's own node).
    Pod(usize),
    /// External client `k` on the underlay.
    External(usize),
    /// Node `n`'s own (host network) namespace.
    Host(usize),
    /// Node `n`'s namespace sending from the row's destination address (a LoadBalancer IP or
    /// ExternalIP), which the runner configures on the node's `lo` for the row: a node that
    /// holds the address locally, whose requests to it loop back with it as their source
    /// (kube-proxy's `allowFromNode` case).
    HostFromFrontend(usize),
}

/// What the probes are sent to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// The service's ClusterIP of the row's family, at the port named `port_name`. External
    /// clients send it through node 0.
    ClusterIp {
        /// Service name (namespace `default`).
        service: String,
        /// Service port name.
        port_name: String,
    },
    /// The service's ClusterIP of the row's family, sent by external clients through `node`
    /// (for other clients the same as [`Destination::ClusterIp`]).
    ClusterIpVia {
        /// Ingress node for external clients.
        node: usize,
        /// Service name (namespace `default`).
        service: String,
        /// Service port name.
        port_name: String,
    },
    /// An address inside the lab's service CIDR of the row's family that no service holds
    /// (the CIDR's last address but one), at port 80; external clients send it through node 0.
    UnallocatedServiceIp,
    /// The service's ClusterIP at a raw port number (for ports the service does not have).
    ClusterIpPort {
        /// Service name.
        service: String,
        /// Destination port.
        port: u16,
    },
    /// Node `node`'s address at the port's NodePort.
    NodePort {
        /// Ingress node.
        node: usize,
        /// Service name.
        service: String,
        /// Service port name.
        port_name: String,
    },
    /// The service's LoadBalancer IP; external clients route it via `node`.
    LoadBalancer {
        /// Ingress node for external clients.
        node: usize,
        /// Service name.
        service: String,
        /// Service port name.
        port_name: String,
    },
    /// The service's ExternalIP; external clients route it via `node`.
    ExternalIp {
        /// Ingress node for external clients.
        node: usize,
        /// Service name.
        service: String,
        /// Service port name.
        port_name: String,
    },
    /// Pod `i`'s own address at the server port (plain routing, no service).
    PodIp(usize),
    /// External client `k`'s address at the server port: traffic leaving the cluster. The
    /// runner starts a server named `external-k` there for the run.
    External(usize),
}

impl Destination {
    /// [`Destination::ClusterIp`].
    pub fn cluster_ip(service: &str, port_name: &str) -> Self {
        Destination::ClusterIp {
            service: service.to_owned(),
            port_name: port_name.to_owned(),
        }
    }

    /// [`Destination::ClusterIpVia`].
    pub fn cluster_ip_via(node: usize, service: &str, port_name: &str) -> Self {
        Destination::ClusterIpVia {
            node,
            service: service.to_owned(),
            port_name: port_name.to_owned(),
        }
    }

    /// [`Destination::NodePort`].
    pub fn node_port(node: usize, service: &str, port_name: &str) -> Self {
        Destination::NodePort {
            node,
            service: service.to_owned(),
            port_name: port_name.to_owned(),
        }
    }

    /// [`Destination::LoadBalancer`].
    pub fn load_balancer(node: usize, service: &str, port_name: &str) -> Self {
        Destination::LoadBalancer {
            node,
            service: service.to_owned(),
            port_name: port_name.to_owned(),
        }
    }

    /// [`Destination::ExternalIp`].
    pub fn external_ip(node: usize, service: &str, port_name: &str) -> Self {
        Destination::ExternalIp {
            node,
            service: service.to_owned(),
            port_name: port_name.to_owned(),
        }
    }

    fn service(&self) -> Option<&str> {
        match self {
            Destination::ClusterIp { service, .. }
            | Destination::ClusterIpVia { service, .. }
            | Destination::ClusterIpPort { service, .. }
            | Destination::NodePort { service, .. }
            | Destination::LoadBalancer { service, .. }
            | Destination::ExternalIp { service, .. } => Some(service),
            Destination::PodIp(_)
            | Destination::External(_)
            | Destination::UnallocatedServiceIp => None,
        }
    }
}

/// What must happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Every probe is answered by one of these pods (lab-wide indices). The reference model's
    /// backend set must be exactly these pods.
    Backends(Vec<usize>),
    /// Every probe is answered by the *same* pod, one of these (session affinity, Maglev).
    /// The reference model's set must be a non-empty subset of these pods.
    SameBackend(Vec<usize>),
    /// Silently dropped: the probe times out.
    Drop,
    /// Rejected: TCP RST or ICMP port unreachable.
    Reject,
    /// Answered by the addressed server itself: the pod of a [`Destination::PodIp`] or the
    /// client of a [`Destination::External`] (no service involved).
    Direct,
}

/// The source address the backend must see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// The client's own address.
    Client,
    /// The ingress node's address of the row's family (masquerade).
    IngressNode,
    /// Not checked.
    Any,
}

/// A backend capability a row needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Requirement {
    /// IPv6 services.
    Ipv6,
    /// UDP services.
    Udp,
    /// TCP services.
    Tcp,
    /// SCTP services.
    Sctp,
    /// Maglev backend selection.
    Maglev,
    /// ClientIP session affinity.
    SessionAffinity,
    /// Direct server return.
    Dsr,
    /// Masquerade of pod traffic leaving the cluster.
    Masquerade,
}

impl Requirement {
    fn met_by(self, caps: &Capabilities) -> bool {
        match self {
            Requirement::Ipv6 => caps.ipv6,
            Requirement::Udp => caps.protocols.contains(&Protocol::Udp),
            Requirement::Tcp => caps.protocols.contains(&Protocol::Tcp),
            Requirement::Sctp => caps.protocols.contains(&Protocol::Sctp),
            Requirement::Maglev => caps.maglev,
            Requirement::SessionAffinity => caps.session_affinity,
            Requirement::Dsr => caps.dsr,
            Requirement::Masquerade => caps.masquerade,
        }
    }
}

/// One row of the table.
#[derive(Debug, Clone)]
pub struct Case {
    /// Row name (unique within a table).
    pub name: String,
    /// The services of the row (the same on every node).
    pub setup: fn(&Lab) -> Vec<Service>,
    /// Who sends.
    pub client: Client,
    /// Where to.
    pub destination: Destination,
    /// TCP or UDP.
    pub protocol: Protocol,
    /// Address family of the client, destination and backends.
    pub family: IpFamily,
    /// What must happen.
    pub expect: Expect,
    /// The source the backend must see.
    pub source_seen: Seen,
    /// Capabilities needed beyond the derived ones (a service destination needs its protocol,
    /// and IPv6 when the family is IPv6).
    pub requires: Vec<Requirement>,
    /// A fixed client source port for every probe (TCP probes then close with RST).
    pub client_port: Option<u16>,
    /// A change to every node's settings (masquerade options, default external mode).
    pub node: Option<fn(&mut Node)>,
    /// The name of an earlier row whose probes must have been answered by the same single
    /// backend as this row's (Maglev: the same 5-tuple through another node).
    pub consistent_with: Option<String>,
    /// For a [`Expect::Reject`] row: the refusal must arrive within this time. A refusal
    /// that comes only after the client's first retransmission (TCP: ~1 s) means the first
    /// RST or ICMP error was lost or malformed; this catches it.
    pub refused_within: Option<Duration>,
}

impl Case {
    /// A TCP, IPv4 row expecting nothing yet; complete it with the builder methods.
    pub fn new(
        name: &str,
        setup: fn(&Lab) -> Vec<Service>,
        client: Client,
        destination: Destination,
    ) -> Self {
        Case {
            name: name.to_owned(),
            setup,
            client,
            destination,
            protocol: Protocol::Tcp,
            family: IpFamily::V4,
            expect: Expect::Drop,
            source_seen: Seen::Any,
            requires: Vec::new(),
            client_port: None,
            node: None,
            consistent_with: None,
            refused_within: None,
        }
    }

    /// Changes every node's settings for this row.
    #[must_use]
    pub fn node(mut self, tweak: fn(&mut Node)) -> Self {
        self.node = Some(tweak);
        self
    }

    /// Sets the protocol.
    #[must_use]
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = protocol;
        self
    }

    /// Sets the address family.
    #[must_use]
    pub fn family(mut self, family: IpFamily) -> Self {
        self.family = family;
        self
    }

    /// Sets the expectation.
    #[must_use]
    pub fn expect(mut self, expect: Expect) -> Self {
        self.expect = expect;
        self
    }

    /// Sets the source the backend must see.
    #[must_use]
    pub fn seen(mut self, seen: Seen) -> Self {
        self.source_seen = seen;
        self
    }

    /// Adds a requirement.
    #[must_use]
    pub fn requires(mut self, requirement: Requirement) -> Self {
        self.requires.push(requirement);
        self
    }

    /// Fixes the client's source port.
    #[must_use]
    pub fn client_port(mut self, port: u16) -> Self {
        self.client_port = Some(port);
        self
    }

    /// A reject row's refusal must arrive within `limit` (see [`Case::refused_within`]).
    #[must_use]
    pub fn refused_within(mut self, limit: Duration) -> Self {
        self.refused_within = Some(limit);
        self
    }

    /// Requires the same single answering backend as the earlier row `name`.
    #[must_use]
    pub fn consistent_with(mut self, name: &str) -> Self {
        self.consistent_with = Some(name.to_owned());
        self
    }

    /// Explicit and derived requirements.
    pub fn requirements(&self) -> BTreeSet<Requirement> {
        let mut all: BTreeSet<Requirement> = self.requires.iter().copied().collect();
        // An unallocated service address is the dataplane's to drop, like a service's.
        if self.destination.service().is_some()
            || self.destination == Destination::UnallocatedServiceIp
        {
            all.insert(match self.protocol {
                Protocol::Tcp => Requirement::Tcp,
                Protocol::Udp => Requirement::Udp,
                Protocol::Sctp => Requirement::Sctp,
            });
            if self.family == IpFamily::V6 {
                all.insert(Requirement::Ipv6);
            }
        }
        all
    }
}

/// Runner settings.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// How long a probe that should be answered (or rejected) may take.
    pub timeout: Duration,
    /// How long to wait before calling a probe dropped.
    pub drop_wait: Duration,
    /// Probes per expected backend when several backends are acceptable.
    pub probes_per_backend: usize,
    /// Print each row's result to stderr as it completes.
    pub verbose: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            timeout: Duration::from_secs(3),
            drop_wait: Duration::from_secs(1),
            probes_per_backend: 3,
            verbose: true,
        }
    }
}

/// The result of one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowOutcome {
    /// Table and traffic agree.
    Passed {
        /// Probes sent.
        probes: usize,
        /// Backends that answered, by name, with their answer count.
        answered: BTreeMap<String, usize>,
    },
    /// Something disagreed.
    Failed {
        /// Disagreements between the row and the reference model (or an unusable row).
        table: Vec<String>,
        /// Disagreements between the row and real traffic through the backend.
        traffic: Vec<String>,
    },
    /// Not run against the backend (the table check still ran and agreed).
    Skipped {
        /// Why.
        reason: String,
    },
}

/// One row's report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowReport {
    /// Row name.
    pub name: String,
    /// Its result.
    pub outcome: RowOutcome,
}

/// The result of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Backend name from its capabilities.
    pub backend: String,
    /// One entry per row, in table order (plus a `reset node-i` row if a reset failed).
    pub rows: Vec<RowReport>,
}

impl Report {
    /// Rows that passed.
    pub fn passed(&self) -> impl Iterator<Item = &RowReport> {
        self.rows
            .iter()
            .filter(|r| matches!(r.outcome, RowOutcome::Passed { .. }))
    }

    /// Rows that failed.
    pub fn failed(&self) -> impl Iterator<Item = &RowReport> {
        self.rows
            .iter()
            .filter(|r| matches!(r.outcome, RowOutcome::Failed { .. }))
    }

    /// Rows that were skipped.
    pub fn skipped(&self) -> impl Iterator<Item = &RowReport> {
        self.rows
            .iter()
            .filter(|r| matches!(r.outcome, RowOutcome::Skipped { .. }))
    }

    /// The row called `name`.
    pub fn row(&self, name: &str) -> Option<&RowReport> {
        self.rows.iter().find(|r| r.name == name)
    }

    /// Panics with a table of the failures if any row failed.
    pub fn assert_ok(&self) {
        let failed = self.failed().count();
        assert!(
            failed == 0,
            "conformance: {failed} row(s) failed for backend {}\n{self}",
            self.backend
        );
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "conformance [{}]: {} passed, {} failed, {} skipped",
            self.backend,
            self.passed().count(),
            self.failed().count(),
            self.skipped().count()
        )?;
        let width = self.rows.iter().map(|r| r.name.len()).max().unwrap_or(0);
        for row in &self.rows {
            write_row(f, row, width)?;
        }
        Ok(())
    }
}

fn write_row(f: &mut fmt::Formatter<'_>, row: &RowReport, width: usize) -> fmt::Result {
    let name = &row.name;
    match &row.outcome {
        RowOutcome::Passed { probes, answered } => {
            let who: Vec<String> = answered.iter().map(|(b, n)| format!("{b}x{n}")).collect();
            writeln!(
                f,
                "  PASS  {name:width$}  {probes} probe(s) {}",
                who.join(" ")
            )
        }
        RowOutcome::Skipped { reason } => writeln!(f, "  SKIP  {name:width$}  {reason}"),
        RowOutcome::Failed { table, traffic } => {
            writeln!(f, "  FAIL  {name:width$}")?;
            for t in table {
                writeln!(f, "          table:   {t}")?;
            }
            for t in traffic {
                writeln!(f, "          traffic: {t}")?;
            }
            Ok(())
        }
    }
}

/// Runs `cases` in `lab` against one backend instance per node made by `factory` (called once
/// per node, in node order, before the first row), with [`RunOptions::default`].
pub fn run(
    lab: &Lab,
    cases: &[Case],
    factory: &mut dyn FnMut(&LabNode) -> Box<dyn Dataplane>,
) -> Report {
    run_with(lab, cases, factory, &RunOptions::default())
}

/// The developer's row filter: `DP_CONFORMANCE_ROWS=part,part` runs only the rows whose name
/// contains one of the parts. Ignored (with a note) under `CI=true`, where the whole table
/// runs.
fn row_filter() -> Option<Vec<String>> {
    let value = std::env::var("DP_CONFORMANCE_ROWS").ok()?;
    if std::env::var("CI").as_deref() == Ok("true") {
        eprintln!("conformance: DP_CONFORMANCE_ROWS is ignored under CI=true");
        return None;
    }
    eprintln!("conformance: only rows matching {value:?} (DP_CONFORMANCE_ROWS)");
    Some(value.split(',').map(str::to_owned).collect())
}

/// [`run`] with explicit options. At the end every backend is `reset()`; a failing reset is
/// reported as a failed row.
pub fn run_with(
    lab: &Lab,
    cases: &[Case],
    factory: &mut dyn FnMut(&LabNode) -> Box<dyn Dataplane>,
    options: &RunOptions,
) -> Report {
    let mut planes: Vec<Box<dyn Dataplane>> = lab.nodes().iter().map(&mut *factory).collect();
    let caps = planes.first().map(|p| p.capabilities()).unwrap_or_default();
    let mut report = Report {
        backend: caps.dataplane.clone(),
        rows: Vec::new(),
    };
    let mut single_answers: BTreeMap<String, String> = BTreeMap::new();
    let mut servers = BTreeMap::new();
    let only = row_filter();
    for case in cases {
        if let Some(only) = &only {
            if !only.iter().any(|part| case.name.contains(part.as_str())) {
                continue;
            }
        }
        let mut outcome = run_case(lab, case, &mut planes, &caps, options, &mut servers);
        check_consistency(case, &mut outcome, &single_answers);
        if let RowOutcome::Passed { answered, .. } = &outcome {
            if let [(backend, _)] = answered.iter().collect::<Vec<_>>()[..] {
                single_answers.insert(case.name.clone(), backend.clone());
            }
        }
        let row = RowReport {
            name: case.name.clone(),
            outcome,
        };
        if options.verbose {
            eprint!("{}", OneRow(&caps.dataplane, &row));
        }
        report.rows.push(row);
    }
    for (i, plane) in planes.iter_mut().enumerate() {
        if let Err(e) = plane.reset() {
            report.rows.push(RowReport {
                name: format!("reset node-{i}"),
                outcome: RowOutcome::Failed {
                    table: Vec::new(),
                    traffic: vec![error_chain(&e)],
                },
            });
        }
    }
    if options.verbose {
        eprintln!(
            "conformance [{}]: {} passed, {} failed, {} skipped",
            report.backend,
            report.passed().count(),
            report.failed().count(),
            report.skipped().count()
        );
    }
    report
}

/// Fails a passed row whose single backend differs from its `consistent_with` row's.
fn check_consistency(
    case: &Case,
    outcome: &mut RowOutcome,
    single_answers: &BTreeMap<String, String>,
) {
    let Some(other) = &case.consistent_with else {
        return;
    };
    let RowOutcome::Passed { answered, .. } = outcome else {
        return;
    };
    let mine: Vec<&String> = answered.keys().collect();
    let problem = match single_answers.get(other) {
        None => Some(format!(
            "row {other:?} did not pass with a single backend, so consistency cannot be checked"
        )),
        Some(theirs) if mine != [theirs] => Some(format!(
            "answered by {mine:?}, but row {other:?} was answered by {theirs}"
        )),
        Some(_) => None,
    };
    if let Some(problem) = problem {
        *outcome = RowOutcome::Failed {
            table: Vec::new(),
            traffic: vec![problem],
        };
    }
}

struct OneRow<'a>(&'a str, &'a RowReport);

impl fmt::Display for OneRow<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conformance [{}]", self.0)?;
        write_row(f, self.1, 0)
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// A row resolved against a lab and its services.
#[derive(Debug, Clone)]
struct Resolved {
    client_netns: NetNs,
    client_ip: IpAddr,
    ingress: usize,
    ingress_addr: IpAddr,
    entry: Entry,
    destination: SocketAddr,
    is_service: bool,
    /// Acceptable backend address → the name its server answers with.
    expected: BTreeMap<SocketAddr, String>,
    /// External client, CIDR to route via the ingress node.
    route: Option<(usize, IpNetwork)>,
}

fn find_service<'a>(services: &'a [Service], name: &str) -> Result<&'a Service, String> {
    let wanted = ObjectName::new(POD_NAMESPACE, name);
    services
        .iter()
        .find(|s| s.name == wanted)
        .ok_or_else(|| format!("setup has no service {wanted}"))
}

fn find_port(case: &Case, service: &Service, port_name: &str) -> Result<ServicePort, String> {
    service
        .ports
        .iter()
        .find(|p| p.name == port_name && p.protocol == case.protocol)
        .cloned()
        .ok_or_else(|| {
            let protocol = case.protocol;
            format!(
                "service {} has no {protocol} port named {port_name:?}",
                service.name
            )
        })
}

fn of_family(
    family: IpFamily,
    ips: &[IpAddr],
    what: &str,
    service: &Service,
) -> Result<IpAddr, String> {
    ips.iter()
        .copied()
        .find(|ip| IpFamily::of(ip) == family)
        .ok_or_else(|| format!("service {} has no {family:?} {what}", service.name))
}

/// The destination address, the ingress node for external clients, the backends' port, and
/// whether it is a service.
fn resolve_destination(
    lab: &Lab,
    case: &Case,
    services: &[Service],
) -> Result<(SocketAddr, usize, u16, bool), String> {
    let family = case.family;
    let fam = |what: String, ip: Option<IpAddr>| {
        ip.ok_or_else(|| format!("{what} has no {family:?} address"))
    };
    let find_service = |name: &str| find_service(services, name);
    let find_port = |service: &Service, port_name: &str| find_port(case, service, port_name);
    let of_family =
        |ips: &[IpAddr], what: &str, service: &Service| of_family(family, ips, what, service);
    let node_count = lab.nodes().len();
    let check_node = |n: usize| {
        if n < node_count {
            Ok(n)
        } else {
            Err(format!("lab has no node {n}"))
        }
    };

    Ok(match &case.destination {
        Destination::ClusterIp { service, port_name } => {
            let s = find_service(service)?;
            let p = find_port(s, port_name)?;
            let ip = of_family(&s.cluster_ips, "ClusterIP", s)?;
            (SocketAddr::new(ip, p.port), 0, p.target_port, true)
        }
        Destination::ClusterIpVia {
            node,
            service,
            port_name,
        } => {
            let s = find_service(service)?;
            let p = find_port(s, port_name)?;
            let ip = of_family(&s.cluster_ips, "ClusterIP", s)?;
            let node = check_node(*node)?;
            (SocketAddr::new(ip, p.port), node, p.target_port, true)
        }
        Destination::ClusterIpPort { service, port } => {
            let s = find_service(service)?;
            let ip = of_family(&s.cluster_ips, "ClusterIP", s)?;
            (SocketAddr::new(ip, *port), 0, SERVER_PORT, true)
        }
        Destination::UnallocatedServiceIp => {
            let ip = unallocated_service_ip(lab, family)?;
            if services.iter().any(|s| s.cluster_ips.contains(&ip)) {
                return Err(format!("the setup allocates {ip}"));
            }
            (SocketAddr::new(ip, 80), 0, SERVER_PORT, false)
        }
        Destination::NodePort {
            node,
            service,
            port_name,
        } => {
            let s = find_service(service)?;
            let p = find_port(s, port_name)?;
            let node = check_node(*node)?;
            let node_port = p
                .node_port
                .ok_or_else(|| format!("port {port_name:?} of {} has no nodePort", s.name))?;
            let ip = fam(format!("node {node}"), lab.node(node).address(family))?;
            (SocketAddr::new(ip, node_port), node, p.target_port, true)
        }
        Destination::LoadBalancer {
            node,
            service,
            port_name,
        }
        | Destination::ExternalIp {
            node,
            service,
            port_name,
        } => {
            let s = find_service(service)?;
            let p = find_port(s, port_name)?;
            let (ips, what) = if matches!(case.destination, Destination::LoadBalancer { .. }) {
                (&s.load_balancer_ips, "LoadBalancer IP")
            } else {
                (&s.external_ips, "ExternalIP")
            };
            let ip = of_family(ips, what, s)?;
            let node = check_node(*node)?;
            (SocketAddr::new(ip, p.port), node, p.target_port, true)
        }
        Destination::External(k) => {
            let ext = lab.try_external(*k).map_err(|e| e.to_string())?;
            let ip = fam(ext.name.clone(), ext.address(family))?;
            (SocketAddr::new(ip, SERVER_PORT), 0, SERVER_PORT, false)
        }
        Destination::PodIp(p) => {
            let pod = lab.try_pod(*p).map_err(|e| e.to_string())?;
            let ip = fam(pod.name.clone(), pod.address(family))?;
            (
                SocketAddr::new(ip, SERVER_PORT),
                pod.node,
                SERVER_PORT,
                false,
            )
        }
    })
}

/// The last address but one of the lab's service CIDR of `family`.
fn unallocated_service_ip(lab: &Lab, family: IpFamily) -> Result<IpAddr, String> {
    let cidr = lab
        .node_state(0)
        .service_cidrs
        .into_iter()
        .find(|c| IpFamily::of(&c.ip()) == family)
        .ok_or_else(|| format!("the lab has no {family:?} service CIDR"))?;
    Ok(match cidr {
        IpNetwork::V4(n) => IpAddr::V4(Ipv4Addr::from(u32::from(n.broadcast()) - 1)),
        IpNetwork::V6(n) => {
            let size = 128 - u32::from(n.prefix());
            let last = u128::from(n.network()) | (u128::MAX.checked_shr(128 - size).unwrap_or(0));
            IpAddr::V6(Ipv6Addr::from(last - 1))
        }
    })
}

fn resolve(lab: &Lab, case: &Case, services: &[Service]) -> Result<Resolved, String> {
    let family = case.family;
    let fam = |what: String, ip: Option<IpAddr>| {
        ip.ok_or_else(|| format!("{what} has no {family:?} address"))
    };
    let (destination, external_ingress, target_port, is_service) =
        resolve_destination(lab, case, services)?;

    let (client_netns, client_ip, ingress, entry, route) = match case.client {
        Client::Pod(p) => {
            let pod = lab.try_pod(p).map_err(|e| e.to_string())?;
            let ip = fam(pod.name.clone(), pod.address(family))?;
            let entry = Entry::FromPod(ObjectName::new(POD_NAMESPACE, &pod.name));
            (pod.netns.clone(), ip, pod.node, entry, None)
        }
        Client::Host(n) => {
            let node = lab.try_node(n).map_err(|e| e.to_string())?;
            let ip = fam(node.name.clone(), node.address(family))?;
            (node.netns.clone(), ip, n, Entry::FromHost, None)
        }
        Client::HostFromFrontend(n) => {
            let node = lab.try_node(n).map_err(|e| e.to_string())?;
            if !matches!(
                case.destination,
                Destination::LoadBalancer { .. } | Destination::ExternalIp { .. }
            ) {
                return Err("a node sends from a LoadBalancer IP or ExternalIP only".to_owned());
            }
            (
                node.netns.clone(),
                destination.ip(),
                n,
                Entry::FromHost,
                None,
            )
        }
        Client::External(k) => {
            let ext = lab.try_external(k).map_err(|e| e.to_string())?;
            let ip = fam(ext.name.clone(), ext.address(family))?;
            let node_owned = matches!(case.destination, Destination::NodePort { .. });
            let route = (!node_owned).then(|| (k, IpNetwork::from(destination.ip())));
            (
                ext.netns.clone(),
                ip,
                external_ingress,
                Entry::FromUplink,
                route,
            )
        }
    };
    let ingress_addr = fam(format!("node {ingress}"), lab.node(ingress).address(family))?;

    if matches!(
        (case.client, &case.destination),
        (Client::External(_), Destination::External(_))
    ) {
        return Err("external clients do not reach each other through the cluster".to_owned());
    }
    let mut expected = BTreeMap::new();
    match (&case.expect, &case.destination) {
        (Expect::Backends(pods) | Expect::SameBackend(pods), _) => {
            for &p in pods {
                let pod = lab.try_pod(p).map_err(|e| e.to_string())?;
                let ip = fam(pod.name.clone(), pod.address(family))?;
                expected.insert(SocketAddr::new(ip, target_port), pod.name.clone());
            }
        }
        (Expect::Direct, Destination::PodIp(p)) => {
            expected.insert(destination, lab.pod(*p).name.clone());
        }
        (Expect::Direct, Destination::External(k)) => {
            expected.insert(destination, lab.external(*k).name.clone());
        }
        (Expect::Direct, _) => {
            return Err("Direct is for pod IP and external destinations".to_owned());
        }
        (Expect::Drop | Expect::Reject, _) => {}
    }
    match (&case.destination, &case.expect) {
        (Destination::PodIp(p), Expect::Backends(set)) if set != &[*p] => {
            return Err(format!(
                "a pod IP row can only be answered by that pod ({p}), not {set:?}"
            ));
        }
        (Destination::External(_), Expect::Backends(_) | Expect::SameBackend(_)) => {
            return Err("an external destination is answered by itself: expect Direct".to_owned());
        }
        _ => {}
    }
    if matches!(case.expect, Expect::Backends(ref s) | Expect::SameBackend(ref s) if s.is_empty()) {
        return Err("expects an answer from an empty set of pods".to_owned());
    }
    Ok(Resolved {
        client_netns,
        client_ip,
        ingress,
        ingress_addr,
        entry,
        destination,
        is_service,
        expected,
        route,
    })
}

fn source_matches(seen: Seen, source: SourceSeen, ingress_addr: IpAddr) -> bool {
    match seen {
        Seen::Any => true,
        Seen::Client => source == SourceSeen::Client,
        Seen::IngressNode => source == SourceSeen::Masqueraded(ingress_addr),
    }
}

/// Compares a row's expectation with the reference model's verdict for it.
fn check_verdict(
    expect: &Expect,
    seen: Seen,
    resolved: &Resolved,
    verdict: &Verdict,
) -> Result<(), String> {
    let expected: BTreeSet<SocketAddr> = resolved.expected.keys().copied().collect();
    let source_ok = |source: SourceSeen| {
        if source_matches(seen, source, resolved.ingress_addr) {
            Ok(())
        } else {
            Err(format!(
                "row says the backend sees {seen:?} (ingress node address {}), the model says {source:?}",
                resolved.ingress_addr
            ))
        }
    };
    match (expect, verdict) {
        (
            Expect::Backends(_),
            Verdict::Forward {
                backends, source, ..
            },
        ) if resolved.is_service => {
            if *backends != expected {
                return Err(format!(
                    "row expects backends {expected:?}, the model picks from {backends:?}"
                ));
            }
            source_ok(*source)
        }
        (
            Expect::SameBackend(_),
            Verdict::Forward {
                backends, source, ..
            },
        ) if resolved.is_service => {
            if backends.is_empty() || !backends.is_subset(&expected) {
                return Err(format!(
                    "row expects one backend of {expected:?}, the model picks from {backends:?}"
                ));
            }
            source_ok(*source)
        }
        (Expect::Backends(_) | Expect::Direct, Verdict::Untouched { source })
            if !resolved.is_service =>
        {
            source_ok(*source)
        }
        (Expect::Drop, Verdict::Drop) | (Expect::Reject, Verdict::Reject) => Ok(()),
        _ => Err(format!(
            "row expects {expect:?}, the model says {verdict:?}"
        )),
    }
}

fn unspecified(family: IpFamily) -> IpAddr {
    match family {
        IpFamily::V4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpFamily::V6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

fn run_case(
    lab: &Lab,
    case: &Case,
    planes: &mut [Box<dyn Dataplane>],
    caps: &Capabilities,
    options: &RunOptions,
    external_servers: &mut BTreeMap<usize, Server>,
) -> RowOutcome {
    let services = (case.setup)(lab);
    let states: Vec<DesiredState> = (0..lab.nodes().len())
        .map(|i| {
            let mut state = lab.desired_state(i);
            state.services.clone_from(&services);
            if let Some(tweak) = case.node {
                tweak(&mut state.node);
            }
            state
        })
        .collect();
    let mut table = Vec::new();
    if let Some(Err(e)) = states.iter().map(validate).find(Result::is_err) {
        table.push(format!("the row's state is invalid: {e}"));
    }
    let resolved = match resolve(lab, case, &services) {
        Ok(r) => r,
        Err(e) => {
            table.push(e);
            return RowOutcome::Failed {
                table,
                traffic: Vec::new(),
            };
        }
    };
    let packet = Packet {
        protocol: case.protocol,
        source: SocketAddr::new(
            resolved.client_ip,
            case.client_port.unwrap_or(NOMINAL_CLIENT_PORT),
        ),
        destination: resolved.destination,
    };
    let verdict = evaluate(&states[resolved.ingress], &packet, &resolved.entry);
    if let Err(e) = check_verdict(&case.expect, case.source_seen, &resolved, &verdict) {
        table.push(e);
    }

    if let Some(reason) = skip_reason(lab, case, caps) {
        return if table.is_empty() {
            RowOutcome::Skipped { reason }
        } else {
            RowOutcome::Failed {
                table,
                traffic: vec![format!("not run: {reason}")],
            }
        };
    }

    let mut traffic = Vec::new();
    for (i, plane) in planes.iter_mut().enumerate() {
        if let Err(e) = plane.apply(&states[i]) {
            traffic.push(format!("apply on node-{i}: {}", error_chain(&e)));
        }
    }
    if let Destination::External(k) = case.destination {
        if let Err(e) = ensure_server(lab, k, external_servers) {
            traffic.push(e);
        }
    }
    let mut answered = BTreeMap::new();
    let mut probes = 0;
    if traffic.is_empty() {
        if let Some((k, cidr)) = resolved.route {
            if let Err(e) = lab.route_via_node(k, cidr, resolved.ingress) {
                traffic.push(format!("route {cidr} via node {}: {e}", resolved.ingress));
            }
        }
        // A node sending from a frontend address holds it on its lo for the row.
        let on_lo = frontend_on_lo(lab, case, &resolved, &mut traffic);
        // A packet to an unallocated service address must not leave the node.
        let leak_watch = (case.destination == Destination::UnallocatedServiceIp)
            .then(|| LeakWatch::new(lab, resolved.destination.ip()))
            .and_then(|w| w.map_err(|e| traffic.push(e)).ok());
        if traffic.is_empty() {
            probes = send_probes(
                case,
                &resolved,
                &states[resolved.ingress],
                options,
                &mut answered,
                &mut traffic,
            );
        }
        if let Some(Err(e)) = leak_watch.map(|w| w.check()) {
            traffic.push(e);
        }
        if let Some((n, cidr)) = on_lo {
            traffic.extend(frontend_off_lo(lab, n, cidr));
        }
        if let Some((k, cidr)) = resolved.route {
            if let Err(e) = lab.unroute(k, cidr) {
                traffic.push(format!("remove route {cidr}: {e}"));
            }
        }
    }
    if !traffic.is_empty() {
        traffic.extend(diagnostics(&*planes[resolved.ingress], resolved.client_ip));
    }
    if table.is_empty() && traffic.is_empty() {
        RowOutcome::Passed { probes, answered }
    } else {
        RowOutcome::Failed { table, traffic }
    }
}

/// What the ingress node's backend says after a traffic failure, for whoever reads the
/// report: its non-zero counters and its tracked flows of the client.
fn diagnostics(plane: &dyn Dataplane, client: IpAddr) -> Vec<String> {
    let mut out = Vec::new();
    match plane.stats() {
        Ok(stats) => {
            let counters: Vec<String> = stats
                .other
                .iter()
                .filter(|(_, v)| **v > 0)
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            out.push(format!("ingress node counters: {}", counters.join(" ")));
        }
        Err(e) => out.push(format!("ingress node counters: {}", error_chain(&e))),
    }
    match plane.flows() {
        Ok(flows) => {
            let mine: Vec<String> = flows
                .iter()
                .filter(|f| f.client.ip() == client)
                .map(|f| {
                    format!(
                        "{} {} -> {} -> {}",
                        f.protocol, f.client, f.frontend, f.backend
                    )
                })
                .collect();
            out.push(format!(
                "ingress node flows of the client ({} of {}): {}",
                mine.len(),
                flows.len(),
                mine.join("; ")
            ));
        }
        Err(e) => out.push(format!("ingress node flows: {}", error_chain(&e))),
    }
    out
}

/// For a [`Client::HostFromFrontend`] row (and nothing failed so far): configures the
/// client's address (the frontend) on the node's `lo`; returns the node and the address.
fn frontend_on_lo(
    lab: &Lab,
    case: &Case,
    resolved: &Resolved,
    traffic: &mut Vec<String>,
) -> Option<(usize, IpNetwork)> {
    let Client::HostFromFrontend(n) = case.client else {
        return None;
    };
    if !traffic.is_empty() {
        return None;
    }
    let cidr = IpNetwork::from(resolved.client_ip);
    // `nodad`: an IPv6 address starts tentative until the DAD work item runs (at once on lo,
    // but asynchronously), and a bind to a tentative address fails (EADDRNOTAVAIL): the probe
    // right after this would race it.
    let nodad = if cidr.is_ipv6() { " nodad" } else { "" };
    match lab
        .node(n)
        .netns
        .ip_batch(&[format!("addr add {cidr} dev lo{nodad}")])
    {
        Ok(()) => Some((n, cidr)),
        Err(e) => {
            traffic.push(format!("address {cidr} on node {n}'s lo: {e}"));
            None
        }
    }
}

/// Undoes [`frontend_on_lo`].
fn frontend_off_lo(lab: &Lab, n: usize, cidr: IpNetwork) -> Option<String> {
    let lines = [format!("addr del {cidr} dev lo")];
    let result = lab.node(n).netns.ip_batch(&lines);
    result
        .err()
        .map(|e| format!("remove {cidr} from node {n}'s lo: {e}"))
}

/// An nftables counter, in the lab's underlay namespace, of packets for one address that a
/// node sends to the lab's router (every node's default route; `br0`'s own address): the
/// bridge family's `input` hook sees exactly the frames the bridge delivers to itself, not the
/// ones it passes between ports (an outside client's packet on its way to a node), with or
/// without `br_netfilter`. A node's own egress hooks (a TC program on the uplink, say) come
/// before the router, so a packet they drop is not counted. Removed on drop.
struct LeakWatch {
    underlay: NetNs,
    table: String,
}

impl LeakWatch {
    fn new(lab: &Lab, addr: IpAddr) -> Result<Self, String> {
        let underlay = lab.underlay().clone();
        let table = format!("dptk_leak_{}", std::process::id());
        let ipx = if addr.is_ipv4() { "ip" } else { "ip6" };
        let script = format!(
            "add table bridge {table}\n\
             add chain bridge {table} watch {{ type filter hook input priority -300; }}\n\
             add rule bridge {table} watch {ipx} daddr {addr} counter\n"
        );
        underlay
            .exec_checked("nft", &["-f", "-"], Some(&script))
            .map_err(|e| e.to_string())?;
        Ok(LeakWatch { underlay, table })
    }

    /// An error when any packet was counted.
    fn check(&self) -> Result<(), String> {
        match self.packets()? {
            0 => Ok(()),
            n => Err(format!(
                "{n} packet(s) for the unallocated address left the node for its default route"
            )),
        }
    }

    /// Packets counted so far.
    fn packets(&self) -> Result<u64, String> {
        let out = self
            .underlay
            .exec_checked(
                "nft",
                &["list", "chain", "bridge", &self.table, "watch"],
                None,
            )
            .map_err(|e| e.to_string())?;
        let out = String::from_utf8_lossy(&out.stdout);
        out.split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("no packet counter in {out:?}"))
    }
}

impl Drop for LeakWatch {
    fn drop(&mut self) {
        let _ =
            self.underlay
                .exec_checked("nft", &["delete", "table", "bridge", &self.table], None);
    }
}

/// Why the row cannot run against this backend in this lab, if it cannot.
fn skip_reason(lab: &Lab, case: &Case, caps: &Capabilities) -> Option<String> {
    let mut skip = Vec::new();
    let missing: Vec<String> = case
        .requirements()
        .into_iter()
        .filter(|r| !r.met_by(caps))
        .map(|r| format!("{r:?}"))
        .collect();
    if !missing.is_empty() {
        skip.push(format!(
            "backend {:?} lacks {}",
            caps.dataplane,
            missing.join(", ")
        ));
    }
    if case.family == IpFamily::V6 && !lab.spec().ipv6 {
        skip.push("the lab was built without IPv6".to_owned());
    }
    (!skip.is_empty()).then(|| skip.join("; "))
}

/// Starts the server of external client `k` unless it runs already.
fn ensure_server(lab: &Lab, k: usize, servers: &mut BTreeMap<usize, Server>) -> Result<(), String> {
    if let std::collections::btree_map::Entry::Vacant(slot) = servers.entry(k) {
        let ext = lab.external(k);
        let server = serve(&ext.netns, &ext.name, SERVER_PORT)
            .map_err(|e| format!("server on {}: {}", ext.name, error_chain(&e)))?;
        slot.insert(server);
    }
    Ok(())
}

fn send_probes(
    case: &Case,
    resolved: &Resolved,
    ingress_state: &DesiredState,
    options: &RunOptions,
    answered: &mut BTreeMap<String, usize>,
    traffic: &mut Vec<String>,
) -> usize {
    let (count, wait) = match &case.expect {
        Expect::Direct => (2, options.timeout),
        Expect::Backends(set) if set.len() <= 1 => (2, options.timeout),
        Expect::Backends(set) => (options.probes_per_backend * set.len(), options.timeout),
        Expect::SameBackend(_) => (5, options.timeout),
        Expect::Drop => (1, options.drop_wait),
        Expect::Reject => (1, options.timeout),
    };
    let source = match case.client {
        Client::HostFromFrontend(_) => Some(SocketAddr::new(
            resolved.client_ip,
            case.client_port.unwrap_or(0),
        )),
        _ => case
            .client_port
            .map(|port| SocketAddr::new(unspecified(case.family), port)),
    };
    let dst = resolved.destination;
    for n in 0..count {
        let started = std::time::Instant::now();
        let outcome = match probe_from(&resolved.client_netns, source, dst, case.protocol, wait) {
            Ok(outcome) => outcome,
            Err(e) => {
                traffic.push(format!("probe {n} to {dst}: {}", error_chain(&e)));
                return n + 1;
            }
        };
        let took = started.elapsed();
        if let (Some(limit), ProbeOutcome::Refused) = (case.refused_within, &outcome) {
            if took > limit {
                traffic.push(format!(
                    "probe {n} {} to {dst}: refused after {took:?}, more than {limit:?} (the first refusal was lost)",
                    case.protocol
                ));
                return n + 1;
            }
        }
        if let Err(e) = check_outcome(case, resolved, ingress_state, &outcome, answered) {
            traffic.push(format!("probe {n} {} to {dst}: {e}", case.protocol));
            return n + 1;
        }
    }
    if matches!(case.expect, Expect::SameBackend(_)) && answered.len() > 1 {
        traffic.push(format!(
            "expected every probe to reach the same backend, got {answered:?}"
        ));
    }
    count
}

fn check_outcome(
    case: &Case,
    resolved: &Resolved,
    ingress_state: &DesiredState,
    outcome: &ProbeOutcome,
    answered: &mut BTreeMap<String, usize>,
) -> Result<(), String> {
    match (&case.expect, outcome) {
        (Expect::Drop, ProbeOutcome::Timeout) | (Expect::Reject, ProbeOutcome::Refused) => Ok(()),
        (
            Expect::Backends(_) | Expect::SameBackend(_) | Expect::Direct,
            ProbeOutcome::Answered {
                backend,
                seen_source,
                local,
                ..
            },
        ) => {
            *answered.entry(backend.clone()).or_default() += 1;
            let addr = resolved
                .expected
                .iter()
                .find(|(_, name)| *name == backend)
                .map(|(a, _)| *a)
                .ok_or_else(|| {
                    let names: Vec<&String> = resolved.expected.values().collect();
                    format!("answered by {backend}, expected one of {names:?}")
                })?;
            let want = match case.source_seen {
                Seen::Client => Some(resolved.client_ip),
                Seen::IngressNode => Some(resolved.ingress_addr),
                Seen::Any => None,
            };
            if let Some(want) = want {
                if seen_source.ip() != want {
                    return Err(format!(
                        "{backend} saw source {seen_source}, expected {want} ({:?})",
                        case.source_seen
                    ));
                }
            }
            // The answer must also be right for this exact 5-tuple.
            let packet = Packet {
                protocol: case.protocol,
                source: *local,
                destination: resolved.destination,
            };
            match evaluate(ingress_state, &packet, &resolved.entry) {
                Verdict::Forward { backends, .. } if !backends.contains(&addr) => Err(format!(
                    "answered by {backend} ({addr}); for {local} the model picks from {backends:?}"
                )),
                _ => Ok(()),
            }
        }
        (expect, outcome) => Err(format!("expected {expect:?}, got {outcome:?}")),
    }
}

// ---------------------------------------------------------------------------------------------
// The standard table.

const TCP_PORT: &str = "tcp";
const UDP_PORT: &str = "udp";

fn backend(lab: &Lab, pod: usize, family: IpFamily) -> Backend {
    let p = lab.pod(pod);
    let mut b = Backend::new(
        p.address(family)
            .expect("the standard table runs in a dual-stack lab"),
    );
    b.node_name = Some(lab.node(p.node).name.as_str().into());
    b
}

fn backends(lab: &Lab, pods: &[usize]) -> Vec<Backend> {
    pods.iter()
        .map(|&p| backend(lab, p, IpFamily::V4))
        .collect()
}

/// A service with a TCP and a UDP port (80 → 8080), both with `node_port` when given.
fn service(name: &str, cluster_ip: &str, node_port: Option<u16>, pods: Vec<Backend>) -> Service {
    let mut s = Service::new(ObjectName::new(POD_NAMESPACE, name));
    s.cluster_ips = vec![cluster_ip.parse().expect("literal address")];
    s.ports = [(TCP_PORT, Protocol::Tcp), (UDP_PORT, Protocol::Udp)]
        .into_iter()
        .map(|(port_name, protocol)| ServicePort {
            name: port_name.to_owned(),
            protocol,
            port: 80,
            target_port: SERVER_PORT,
            node_port,
        })
        .collect();
    s.backends = pods;
    s
}

// Every setup uses its own ClusterIP and NodePort, so conntrack entries a row leaves behind
// can never match a later row's packets.

fn web_same_node(lab: &Lab) -> Vec<Service> {
    vec![service("web", "10.96.0.10", None, backends(lab, &[1]))]
}
fn web_other_node(lab: &Lab) -> Vec<Service> {
    vec![service("web", "10.96.0.11", None, backends(lab, &[2]))]
}
fn web_many(lab: &Lab) -> Vec<Service> {
    vec![service(
        "web",
        "10.96.0.12",
        None,
        backends(lab, &[1, 2, 3]),
    )]
}
fn node_port_cluster(lab: &Lab) -> Vec<Service> {
    vec![service(
        "np",
        "10.96.0.20",
        Some(30080),
        backends(lab, &[2]),
    )]
}
fn node_port_local(lab: &Lab) -> Vec<Service> {
    let mut s = service("np", "10.96.0.21", Some(30081), backends(lab, &[2]));
    s.external_traffic_policy = TrafficPolicy::Local;
    vec![s]
}
fn node_port_dsr(lab: &Lab) -> Vec<Service> {
    let mut s = service("np", "10.96.0.22", Some(30082), backends(lab, &[2]));
    s.external_mode = Some(ExternalMode::Dsr);
    vec![s]
}
fn node_port_dsr_local(lab: &Lab) -> Vec<Service> {
    let mut s = service("np", "10.96.0.23", Some(30083), backends(lab, &[0]));
    s.external_mode = Some(ExternalMode::Dsr);
    vec![s]
}
fn node_port_hybrid(lab: &Lab) -> Vec<Service> {
    let mut s = service("np", "10.96.0.24", Some(30084), backends(lab, &[2]));
    s.external_mode = Some(ExternalMode::Hybrid);
    vec![s]
}
fn node_port_default_dsr(lab: &Lab) -> Vec<Service> {
    vec![service(
        "np",
        "10.96.0.25",
        Some(30085),
        backends(lab, &[3]),
    )]
}
fn load_balancer_dsr(lab: &Lab) -> Vec<Service> {
    let mut s = service("lb", "10.96.0.26", None, backends(lab, &[2, 3]));
    s.load_balancer_ips = vec!["172.18.200.12".parse().expect("literal address")];
    s.external_mode = Some(ExternalMode::Dsr);
    vec![s]
}
fn dsr_by_default(node: &mut Node) {
    node.external_mode = ExternalMode::Dsr;
}
fn masquerade_all(node: &mut Node) {
    node.masquerade.all = true;
}
fn load_balancer(lab: &Lab) -> Vec<Service> {
    let mut s = service("lb", "10.96.0.30", None, backends(lab, &[2, 3]));
    s.load_balancer_ips = vec!["172.18.200.10".parse().expect("literal address")];
    vec![s]
}
fn external_ip(lab: &Lab) -> Vec<Service> {
    let mut s = service("ext", "10.96.0.31", None, backends(lab, &[0]));
    s.external_ips = vec!["172.18.201.10".parse().expect("literal address")];
    vec![s]
}
fn load_balancer_ranges(lab: &Lab) -> Vec<Service> {
    let mut s = service("lb", "10.96.0.32", None, backends(lab, &[2]));
    s.load_balancer_ips = vec!["172.18.200.11".parse().expect("literal address")];
    s.load_balancer_source_ranges = vec!["172.18.255.1/32".parse().expect("literal CIDR")];
    vec![s]
}
fn internal_local(lab: &Lab) -> Vec<Service> {
    let mut s = service("itp", "10.96.0.40", None, backends(lab, &[1, 2]));
    s.internal_traffic_policy = TrafficPolicy::Local;
    vec![s]
}
fn internal_local_remote_only(lab: &Lab) -> Vec<Service> {
    let mut s = service("itp", "10.96.0.41", None, backends(lab, &[2]));
    s.internal_traffic_policy = TrafficPolicy::Local;
    vec![s]
}
fn no_backends(_lab: &Lab) -> Vec<Service> {
    vec![service("empty", "10.96.0.50", None, Vec::new())]
}
fn terminating(lab: &Lab, pods: &[usize], serving: bool) -> Vec<Backend> {
    pods.iter()
        .map(|&p| {
            let mut b = backend(lab, p, IpFamily::V4);
            b.ready = false;
            b.serving = serving;
            b.terminating = true;
            b
        })
        .collect()
}
fn terminating_serving(lab: &Lab) -> Vec<Service> {
    vec![service(
        "term",
        "10.96.0.51",
        None,
        terminating(lab, &[1, 2], true),
    )]
}
fn terminating_not_serving(lab: &Lab) -> Vec<Service> {
    vec![service(
        "term",
        "10.96.0.52",
        None,
        terminating(lab, &[1, 2], false),
    )]
}
fn ready_and_terminating(lab: &Lab) -> Vec<Service> {
    let mut pods = backends(lab, &[1]);
    pods.extend(terminating(lab, &[2], true));
    vec![service("term", "10.96.0.53", None, pods)]
}
fn hairpin(lab: &Lab) -> Vec<Service> {
    vec![service("hairpin", "10.96.0.60", None, backends(lab, &[0]))]
}
fn sticky(lab: &Lab) -> Vec<Service> {
    let mut s = service("sticky", "10.96.0.70", None, backends(lab, &[1, 2, 3]));
    s.session_affinity = SessionAffinity::ClientIp {
        timeout_seconds: 10800,
    };
    vec![s]
}
fn maglev(lab: &Lab) -> Vec<Service> {
    let mut s = service("maglev", "10.96.0.80", None, backends(lab, &[0, 1, 2, 3]));
    s.load_balancer_ips = vec!["172.18.200.12".parse().expect("literal address")];
    s.backend_selection = BackendSelection::Maglev;
    vec![s]
}
fn web_v6(lab: &Lab) -> Vec<Service> {
    vec![service(
        "web6",
        "fd00:96::10",
        None,
        vec![backend(lab, 2, IpFamily::V6)],
    )]
}
fn node_port_v6(lab: &Lab) -> Vec<Service> {
    vec![service(
        "np6",
        "fd00:96::20",
        Some(30082),
        vec![backend(lab, 2, IpFamily::V6)],
    )]
}

// --- kube-proxy parity (issue 15). Dual-stack services with every frontend kind: ClusterIP,
// NodePort (both families' node addresses), LoadBalancer IP and ExternalIP of each family.

/// A dual-stack service named `name` with every frontend kind, numbered `n` (ClusterIPs
/// `10.96.1.n` / `fd00:96::1:n`, NodePort 31000 + n, LB IPs `172.19.202.n` / `fd00:202::n`,
/// ExternalIPs `172.19.203.n` / `fd00:203::n`) and `pods` (both families) as backends.
fn every_frontend(lab: &Lab, name: &str, n: u8, pods: &[usize]) -> Service {
    let mut s = service(
        name,
        &format!("10.96.1.{n}"),
        Some(31000 + u16::from(n)),
        Vec::new(),
    );
    let ip = |text: String| -> IpAddr { text.parse().expect("generated address") };
    s.cluster_ips.push(ip(format!("fd00:96::1:{n}")));
    // Off the underlay's subnet, as LB IPs routed to the nodes are: an address on the node's
    // own link would need a neighbour answering for it before a node's packets to it reach an
    // egress hook (see the eBPF backend's limits).
    s.load_balancer_ips = vec![ip(format!("172.19.202.{n}")), ip(format!("fd00:202::{n}"))];
    s.external_ips = vec![ip(format!("172.19.203.{n}")), ip(format!("fd00:203::{n}"))];
    s.backends = pods
        .iter()
        .flat_map(|&p| [backend(lab, p, IpFamily::V4), backend(lab, p, IpFamily::V6)])
        .collect();
    s
}
/// The matrix service: one backend, pod 1 on node 0.
fn matrix(lab: &Lab) -> Vec<Service> {
    vec![every_frontend(lab, "mx", 1, &[1])]
}
/// externalTrafficPolicy Local, backends pod 1 (node 0) and pod 2 (node 1).
fn external_local(lab: &Lab) -> Vec<Service> {
    let mut s = every_frontend(lab, "etpl", 2, &[1, 2]);
    s.external_traffic_policy = TrafficPolicy::Local;
    vec![s]
}
/// externalTrafficPolicy Local, its only backend pod 1 (node 0): pod 1 reaching it hairpins.
fn external_local_hairpin(lab: &Lab) -> Vec<Service> {
    let mut s = every_frontend(lab, "etplh", 3, &[1]);
    s.external_traffic_policy = TrafficPolicy::Local;
    vec![s]
}
/// internalTrafficPolicy Local, backends pod 1 (node 0) and pod 2 (node 1).
fn internal_local_both(lab: &Lab) -> Vec<Service> {
    let mut s = every_frontend(lab, "itpl", 4, &[1, 2]);
    s.internal_traffic_policy = TrafficPolicy::Local;
    vec![s]
}
/// internalTrafficPolicy Local, its only backend pod 2 (node 1).
fn internal_local_node1(lab: &Lab) -> Vec<Service> {
    let mut s = every_frontend(lab, "itpr", 5, &[2]);
    s.internal_traffic_policy = TrafficPolicy::Local;
    vec![s]
}
/// Source ranges: IPv4 only, external client 0 (172.18.255.1); IPv6 is unrestricted.
fn ranges_v4_only(lab: &Lab) -> Vec<Service> {
    let mut s = every_frontend(lab, "lbr", 6, &[1]);
    s.load_balancer_source_ranges = vec!["172.18.255.1/32".parse().expect("literal CIDR")];
    vec![s]
}
/// Source ranges holding the node addresses (IPv4) and external client 0 (IPv6).
fn ranges_with_nodes(lab: &Lab) -> Vec<Service> {
    let mut s = every_frontend(lab, "lbn", 7, &[1]);
    s.load_balancer_source_ranges = vec![
        "172.18.0.0/24".parse().expect("literal CIDR"),
        "fd00:18::ff:1/128".parse().expect("literal CIDR"),
    ];
    vec![s]
}
/// Source ranges holding node 0's pods (both families).
fn ranges_with_pods(lab: &Lab) -> Vec<Service> {
    let mut s = every_frontend(lab, "lbp", 8, &[1]);
    s.load_balancer_source_ranges = vec![
        "10.244.0.0/24".parse().expect("literal CIDR"),
        "fd00:244:0:0::/64".parse().expect("literal CIDR"),
    ];
    vec![s]
}
/// A plain service (backend pod 2, node 1) and an eTP:Local one (pod 2), for allServices.
fn all_services(lab: &Lab) -> Vec<Service> {
    let plain = every_frontend(lab, "mas", 9, &[2]);
    let mut local = every_frontend(lab, "masl", 10, &[2]);
    local.external_traffic_policy = TrafficPolicy::Local;
    vec![plain, local]
}
/// The matrix service with an SCTP port besides TCP and UDP: a backend that cannot program
/// SCTP leaves that port out (`ApplyReport::skipped`) and serves the rest.
fn with_sctp_port(lab: &Lab) -> Vec<Service> {
    let mut s = every_frontend(lab, "sctp", 12, &[2]);
    s.ports.push(ServicePort {
        name: "sctp".to_owned(),
        protocol: Protocol::Sctp,
        port: 80,
        target_port: SERVER_PORT,
        node_port: Some(31012),
    });
    vec![s]
}
/// No backends, dual-stack: reject.
fn no_backends_dual(lab: &Lab) -> Vec<Service> {
    vec![every_frontend(lab, "empty6", 11, &[])]
}
fn masquerade_services(node: &mut Node) {
    node.masquerade.all_services = true;
}

fn both(case: Case) -> [Case; 2] {
    let udp = Case {
        name: format!("{} udp", case.name),
        ..case.clone()
    }
    .protocol(Protocol::Udp);
    let udp = match &udp.destination {
        Destination::ClusterIp { service, .. } => Case {
            destination: Destination::cluster_ip(service, UDP_PORT),
            ..udp
        },
        Destination::NodePort { node, service, .. } => Case {
            destination: Destination::node_port(*node, service, UDP_PORT),
            ..udp
        },
        Destination::LoadBalancer { node, service, .. } => Case {
            destination: Destination::load_balancer(*node, service, UDP_PORT),
            ..udp
        },
        Destination::ExternalIp { node, service, .. } => Case {
            destination: Destination::external_ip(*node, service, UDP_PORT),
            ..udp
        },
        Destination::ClusterIpVia { node, service, .. } => Case {
            destination: Destination::cluster_ip_via(*node, service, UDP_PORT),
            ..udp
        },
        Destination::ClusterIpPort { .. }
        | Destination::PodIp(_)
        | Destination::External(_)
        | Destination::UnallocatedServiceIp => udp,
    };
    let tcp = Case {
        name: format!("{} tcp", case.name),
        ..case
    };
    [tcp, udp]
}

/// The standard table, for a lab of [`STANDARD_LAB`] shape: 2 nodes × 2 pods (pods 0, 1 on
/// node 0; 2, 3 on node 1), 2 external clients (172.18.255.1 and .2), dual-stack.
#[allow(clippy::too_many_lines)]
pub fn standard_cases() -> Vec<Case> {
    use Client::{External, Host, Pod};
    use Expect::{Backends, Drop, Reject, SameBackend};
    let cip = |s: &str| Destination::cluster_ip(s, TCP_PORT);
    let mut cases = Vec::new();
    let mut add = |c: Case| cases.extend(both(c));

    add(
        Case::new("clusterip same node", web_same_node, Pod(0), cip("web"))
            .expect(Backends(vec![1]))
            .seen(Seen::Client),
    );
    add(
        Case::new("clusterip other node", web_other_node, Pod(0), cip("web"))
            .expect(Backends(vec![2]))
            .seen(Seen::Client),
    );
    add(
        Case::new("clusterip from host", web_other_node, Host(0), cip("web"))
            .expect(Backends(vec![2]))
            .seen(Seen::IngressNode),
    );
    add(Case::new(
        "clusterip from host to local pod",
        web_same_node,
        Host(0),
        cip("web"),
    )
    .expect(Backends(vec![1]))
    .seen(Seen::IngressNode));
    add(
        Case::new("clusterip several backends", web_many, Pod(0), cip("web"))
            .expect(Backends(vec![1, 2, 3]))
            .seen(Seen::Client),
    );
    add(Case::new(
        "clusterip from outside",
        web_other_node,
        External(0),
        cip("web"),
    )
    .expect(Backends(vec![2]))
    .seen(Seen::IngressNode));
    add(Case::new(
        "nodeport etp=cluster",
        node_port_cluster,
        External(0),
        Destination::node_port(0, "np", TCP_PORT),
    )
    .expect(Backends(vec![2]))
    .seen(Seen::IngressNode));
    add(Case::new(
        "nodeport from a pod on the node",
        node_port_cluster,
        Pod(0),
        Destination::node_port(0, "np", TCP_PORT),
    )
    .expect(Backends(vec![2]))
    .seen(Seen::IngressNode));
    add(Case::new(
        "nodeport etp=local",
        node_port_local,
        External(0),
        Destination::node_port(1, "np", TCP_PORT),
    )
    .expect(Backends(vec![2]))
    .seen(Seen::Client));
    add(Case::new(
        "nodeport etp=local no local backend",
        node_port_local,
        External(0),
        Destination::node_port(0, "np", TCP_PORT),
    )
    .expect(Drop));
    add(Case::new(
        "loadbalancer",
        load_balancer,
        External(0),
        Destination::load_balancer(0, "lb", TCP_PORT),
    )
    .expect(Backends(vec![2, 3]))
    .seen(Seen::IngressNode));
    add(Case::new(
        "loadbalancer from a pod",
        load_balancer,
        Pod(1),
        Destination::load_balancer(0, "lb", TCP_PORT),
    )
    .expect(Backends(vec![2, 3]))
    .seen(Seen::IngressNode));
    add(Case::new(
        "externalip",
        external_ip,
        External(0),
        Destination::external_ip(1, "ext", TCP_PORT),
    )
    .expect(Backends(vec![0]))
    .seen(Seen::IngressNode));
    add(Case::new(
        "loadbalancer source range allows",
        load_balancer_ranges,
        External(0),
        Destination::load_balancer(0, "lb", TCP_PORT),
    )
    .expect(Backends(vec![2]))
    .seen(Seen::IngressNode));
    add(Case::new(
        "loadbalancer source range denies",
        load_balancer_ranges,
        External(1),
        Destination::load_balancer(0, "lb", TCP_PORT),
    )
    .expect(Drop));
    add(
        Case::new("itp=local node 0", internal_local, Pod(0), cip("itp"))
            .expect(Backends(vec![1]))
            .seen(Seen::Client),
    );
    add(
        Case::new("itp=local node 1", internal_local, Pod(3), cip("itp"))
            .expect(Backends(vec![2]))
            .seen(Seen::Client),
    );
    add(Case::new(
        "itp=local no local backend",
        internal_local_remote_only,
        Pod(0),
        cip("itp"),
    )
    .expect(Drop));
    add(Case::new("no backends", no_backends, Pod(0), cip("empty")).expect(Reject));
    add(Case::new(
        "terminating serving backends are used",
        terminating_serving,
        Pod(0),
        cip("term"),
    )
    .expect(Backends(vec![1, 2]))
    .seen(Seen::Client));
    add(Case::new(
        "terminating non-serving backends reject",
        terminating_not_serving,
        Pod(0),
        cip("term"),
    )
    .expect(Reject));
    add(Case::new(
        "ready preferred over terminating",
        ready_and_terminating,
        Pod(0),
        cip("term"),
    )
    .expect(Backends(vec![1]))
    .seen(Seen::Client));
    add(Case::new(
        "clusterip unknown port",
        web_same_node,
        Pod(0),
        Destination::ClusterIpPort {
            service: "web".to_owned(),
            port: 81,
        },
    )
    .expect(Reject));
    add(Case::new(
        "pod to pod is not masqueraded",
        no_backends,
        Pod(0),
        Destination::PodIp(2),
    )
    .expect(Backends(vec![2]))
    .seen(Seen::Client));
    add(Case::new(
        "pod to outside is masqueraded",
        no_backends,
        Pod(0),
        Destination::External(0),
    )
    .expect(Expect::Direct)
    .seen(Seen::IngressNode)
    .requires(Requirement::Masquerade));
    add(Case::new(
        "masquerade.all: pod to another node's pod",
        no_backends,
        Pod(0),
        Destination::PodIp(2),
    )
    .node(masquerade_all)
    .expect(Backends(vec![2]))
    .seen(Seen::IngressNode)
    .requires(Requirement::Masquerade));
    add(Case::new(
        "masquerade.all: pod to a pod on the same node",
        no_backends,
        Pod(0),
        Destination::PodIp(1),
    )
    .node(masquerade_all)
    .expect(Backends(vec![1]))
    .seen(Seen::Client)
    .requires(Requirement::Masquerade));
    // DSR: the backend on another node sees the client itself and answers it directly.
    add(Case::new(
        "nodeport dsr",
        node_port_dsr,
        External(0),
        Destination::node_port(0, "np", TCP_PORT),
    )
    .expect(Backends(vec![2]))
    .seen(Seen::Client)
    .requires(Requirement::Dsr));
    add(Case::new(
        "nodeport dsr local backend",
        node_port_dsr_local,
        External(0),
        Destination::node_port(0, "np", TCP_PORT),
    )
    .expect(Backends(vec![0]))
    .seen(Seen::Client)
    .requires(Requirement::Dsr));
    add(Case::new(
        "nodeport dsr as the node default",
        node_port_default_dsr,
        External(1),
        Destination::node_port(0, "np", TCP_PORT),
    )
    .node(dsr_by_default)
    .expect(Backends(vec![3]))
    .seen(Seen::Client)
    .requires(Requirement::Dsr));
    add(Case::new(
        "loadbalancer dsr",
        load_balancer_dsr,
        External(0),
        Destination::load_balancer(1, "lb", TCP_PORT),
    )
    .expect(Backends(vec![2, 3]))
    .seen(Seen::Client)
    .requires(Requirement::Dsr));
    add(Case::new(
        "nodeport dsr from a pod",
        node_port_dsr,
        Pod(0),
        Destination::node_port(0, "np", TCP_PORT),
    )
    .expect(Backends(vec![2]))
    .seen(Seen::IngressNode)
    .requires(Requirement::Dsr));
    add(Case::new("hairpin", hairpin, Pod(0), cip("hairpin"))
        .expect(Backends(vec![0]))
        .seen(Seen::IngressNode));
    add(Case::new("session affinity", sticky, Pod(0), cip("sticky"))
        .expect(SameBackend(vec![1, 2, 3]))
        .seen(Seen::Client)
        .requires(Requirement::SessionAffinity));
    add(Case::new("ipv6 clusterip", web_v6, Pod(0), cip("web6"))
        .family(IpFamily::V6)
        .expect(Backends(vec![2]))
        .seen(Seen::Client));
    add(Case::new(
        "ipv6 nodeport",
        node_port_v6,
        External(0),
        Destination::node_port(0, "np6", TCP_PORT),
    )
    .family(IpFamily::V6)
    .expect(Backends(vec![2]))
    .seen(Seen::IngressNode));
    // One client 5-tuple to a LoadBalancer IP through either node: Maglev makes both nodes
    // pick the same backend (and the reference model's choice for the tuple is checked per
    // probe, should it narrow Maglev down to one backend).
    for node in 0..2 {
        let mut case = Case::new(
            &format!("maglev via node {node} tcp"),
            maglev,
            External(0),
            Destination::load_balancer(node, "maglev", TCP_PORT),
        )
        .expect(SameBackend(vec![0, 1, 2, 3]))
        .seen(Seen::IngressNode)
        .client_port(41000)
        .requires(Requirement::Maglev);
        if node > 0 {
            case = case.consistent_with("maglev via node 0 tcp");
        }
        cases.push(case);
    }
    // Hybrid: DSR for TCP, SNAT for UDP.
    let [tcp, udp] = both(
        Case::new(
            "nodeport hybrid",
            node_port_hybrid,
            External(0),
            Destination::node_port(0, "np", TCP_PORT),
        )
        .expect(Backends(vec![2]))
        .requires(Requirement::Dsr),
    );
    cases.push(tcp.seen(Seen::Client));
    cases.push(udp.seen(Seen::IngressNode));
    cases.extend(parity_cases());
    cases
}

/// The four frontend kinds of `service` with `node` as the ingress node.
fn frontends(node: usize, service: &str) -> [(&'static str, Destination); 4] {
    [
        (
            "clusterip",
            Destination::cluster_ip_via(node, service, TCP_PORT),
        ),
        ("nodeport", Destination::node_port(node, service, TCP_PORT)),
        (
            "loadbalancer",
            Destination::load_balancer(node, service, TCP_PORT),
        ),
        (
            "externalip",
            Destination::external_ip(node, service, TCP_PORT),
        ),
    ]
}

/// A row of source-range cases: name, setup, service, client, ingress node, family, and the
/// source seen when allowed (`None`: dropped).
type RangeRow = (
    &'static str,
    fn(&Lab) -> Vec<Service>,
    &'static str,
    Client,
    usize,
    IpFamily,
    Option<Seen>,
);

/// Conntrack clashes when a client reuses its source port (issue 15, item 11), run against
/// every backend like the table: a long TCP connection from a fixed client port to a
/// ClusterIP's port 80, then short connections from the same client port to port 81 of the
/// same service, whose only backend serves both ports on the same target port. Both
/// connections then map to the same backend tuple unless the dataplane resolves the clash as
/// netfilter does (another source port for the new one). Rows: each family, with the backend
/// on the client's node and on another node; each short connection must be answered by the
/// backend from another source port than the long one's, and the long connection must still
/// answer after each.
pub fn run_port_reuse(
    lab: &Lab,
    factory: &mut dyn FnMut(&LabNode) -> Box<dyn Dataplane>,
) -> Report {
    let mut planes: Vec<Box<dyn Dataplane>> = lab.nodes().iter().map(&mut *factory).collect();
    let caps = planes.first().map(|p| p.capabilities()).unwrap_or_default();
    let mut report = Report {
        backend: caps.dataplane.clone(),
        rows: Vec::new(),
    };
    let mut client_port = 42_100;
    for family in [IpFamily::V4, IpFamily::V6] {
        for (placement, pod) in [("local backend", 1), ("remote backend", 2)] {
            let name = format!("port reuse: {placement} {family:?}");
            client_port += 1;
            let outcome = if family == IpFamily::V6 && !(lab.spec().ipv6 && caps.ipv6) {
                RowOutcome::Skipped {
                    reason: "no IPv6 in the lab or the backend".to_owned(),
                }
            } else {
                match port_reuse_row(lab, &mut planes, family, pod, client_port) {
                    Ok(probes) => RowOutcome::Passed {
                        probes,
                        answered: BTreeMap::new(),
                    },
                    Err(e) => RowOutcome::Failed {
                        table: Vec::new(),
                        traffic: vec![e],
                    },
                }
            };
            let row = RowReport { name, outcome };
            eprint!("{}", OneRow(&caps.dataplane, &row));
            report.rows.push(row);
        }
    }
    for (i, plane) in planes.iter_mut().enumerate() {
        if let Err(e) = plane.reset() {
            report.rows.push(RowReport {
                name: format!("reset node-{i}"),
                outcome: RowOutcome::Failed {
                    table: Vec::new(),
                    traffic: vec![error_chain(&e)],
                },
            });
        }
    }
    report
}

fn port_reuse_row(
    lab: &Lab,
    planes: &mut [Box<dyn Dataplane>],
    family: IpFamily,
    pod: usize,
    client_port: u16,
) -> Result<usize, String> {
    let mut service = Service::new(ObjectName::new(POD_NAMESPACE, "reuse"));
    service.cluster_ips = vec![
        "10.96.2.1".parse().expect("literal address"),
        "fd00:96::2:1".parse().expect("literal address"),
    ];
    service.ports = [("long", 80), ("short", 81)]
        .into_iter()
        .map(|(name, port)| ServicePort {
            name: name.to_owned(),
            protocol: Protocol::Tcp,
            port,
            target_port: SERVER_PORT,
            node_port: None,
        })
        .collect();
    service.backends = vec![
        backend(lab, pod, IpFamily::V4),
        backend(lab, pod, IpFamily::V6),
    ];
    for (i, plane) in planes.iter_mut().enumerate() {
        let mut state = lab.desired_state(i);
        state.services = vec![service.clone()];
        plane
            .apply(&state)
            .map_err(|e| format!("apply on node-{i}: {}", error_chain(&e)))?;
    }
    let client = lab.pod(0);
    let ip = *service
        .cluster_ips
        .iter()
        .find(|ip| IpFamily::of(ip) == family)
        .expect("both families");
    let source = SocketAddr::new(unspecified(family), client_port);
    let timeout = Duration::from_secs(3);
    let mut long = crate::traffic::TcpSession::open_from(
        &client.netns,
        Some(source),
        SocketAddr::new(ip, 80),
        timeout,
    )
    .map_err(|e| format!("long connection: {}", error_chain(&e)))?;
    let (first, long_seen) = long
        .request()
        .map_err(|e| format!("long connection, first request: {}", error_chain(&e)))?;
    let want = lab.pod(pod).name.clone();
    if first != want {
        return Err(format!(
            "long connection answered by {first}, expected {want}"
        ));
    }
    let mut probes = 1;
    for round in 0..6 {
        let outcome = probe_from(
            &client.netns,
            Some(source),
            SocketAddr::new(ip, 81),
            Protocol::Tcp,
            timeout,
        )
        .map_err(|e| format!("round {round}: short connection: {}", error_chain(&e)))?;
        probes += 1;
        match outcome {
            ProbeOutcome::Answered {
                backend,
                seen_source,
                ..
            } if backend == want => {
                if seen_source == long_seen {
                    return Err(format!(
                        "round {round}: the short connection reached {want} as {seen_source}, the long one's address"
                    ));
                }
            }
            other => {
                return Err(format!(
                    "round {round}: short connection from port {client_port}: {other:?}"
                ))
            }
        }
        let (again, seen) = long.request().map_err(|e| {
            format!(
                "round {round}: the long connection died after a short one from its port: {}",
                error_chain(&e)
            )
        })?;
        probes += 1;
        if again != want || seen != long_seen {
            return Err(format!(
                "round {round}: the long connection now reaches {again} as {seen} (was {want} as {long_seen})"
            ));
        }
    }
    Ok(probes)
}

/// Rows for every (client kind, frontend kind, protocol, family) of a plain service, and for
/// each kube-proxy behaviour of issue 15, written from kube-proxy's nftables and iptables
/// proxiers (pkg/proxy/{nftables,iptables}/proxier.go) and their packet-flow tests.
#[allow(clippy::too_many_lines)]
fn parity_cases() -> Vec<Case> {
    use Client::{External, Host, HostFromFrontend, Pod};
    use Expect::{Backends, Drop, Reject};
    let mut cases = Vec::new();
    let families = [IpFamily::V4, IpFamily::V6];
    let fam_name = |f: IpFamily| match f {
        IpFamily::V4 => "ipv4",
        IpFamily::V6 => "ipv6",
    };
    let mut add = |c: Case, family: IpFamily| {
        let c = Case {
            name: format!("{} {}", c.name, fam_name(family)),
            ..c
        }
        .family(family);
        cases.extend(both(c));
    };

    // The matrix: a plain service (eTP and iTP Cluster) whose backend is pod 1 on node 0.
    // Clients: a pod on the backend's node, a pod on another node, the node itself with the
    // backend local and remote, an outside client entering on the backend's node and on
    // another. A ClusterIP keeps a pod's address and masquerades the rest (kube-proxy:
    // `! -s clusterCIDR -j KUBE-MARK-MASQ`); the external frontends masquerade everyone
    // (eTP Cluster: the external chain jumps to mark-for-masquerade first).
    let clients: [(&str, Client, usize); 6] = [
        ("pod on the backend's node", Pod(0), 0),
        ("pod on another node", Pod(2), 1),
        ("node with a local backend", Host(0), 0),
        ("node with a remote backend", Host(1), 1),
        ("outside via the backend's node", External(0), 0),
        ("outside via another node", External(1), 1),
    ];
    for family in families {
        for (client_name, client, node) in clients {
            for (frontend_name, destination) in frontends(node, "mx") {
                let keeps = matches!(client, Pod(_)) && frontend_name == "clusterip";
                add(
                    Case::new(
                        &format!("matrix: {client_name} to {frontend_name}"),
                        matrix,
                        client,
                        destination,
                    )
                    .expect(Backends(vec![1]))
                    .seen(if keeps {
                        Seen::Client
                    } else {
                        Seen::IngressNode
                    }),
                    family,
                );
            }
        }
    }

    // 3. externalTrafficPolicy Local. Outside clients: local backends only, address kept.
    // This node's pods: cluster-wide, address kept (kube-proxy "short-circuit pod traffic");
    // the node itself: cluster-wide, masqueraded ("masquerade local traffic").
    for family in families {
        for (frontend_name, destination) in frontends(0, "etpl").into_iter().skip(1) {
            let via1 = match &destination {
                Destination::NodePort { .. } => Destination::node_port(1, "etpl", TCP_PORT),
                Destination::LoadBalancer { .. } => Destination::load_balancer(1, "etpl", TCP_PORT),
                _ => Destination::external_ip(1, "etpl", TCP_PORT),
            };
            let on_node1 = match &destination {
                Destination::NodePort { .. } => via1.clone(),
                _ => destination.clone(),
            };
            add(
                Case::new(
                    &format!("etp=local: outside to {frontend_name} via a node with a backend"),
                    external_local,
                    External(0),
                    destination.clone(),
                )
                .expect(Backends(vec![1]))
                .seen(Seen::Client),
                family,
            );
            add(
                Case::new(
                    &format!("etp=local: outside to {frontend_name} via the other node"),
                    external_local,
                    External(1),
                    via1,
                )
                .expect(Backends(vec![2]))
                .seen(Seen::Client),
                family,
            );
            add(
                Case::new(
                    &format!("etp=local: pod on node 0 to {frontend_name}"),
                    external_local,
                    Pod(0),
                    destination.clone(),
                )
                .expect(Backends(vec![1, 2]))
                .seen(Seen::Client),
                family,
            );
            add(
                Case::new(
                    &format!("etp=local: pod on node 1 to {frontend_name}"),
                    external_local,
                    Pod(3),
                    on_node1.clone(),
                )
                .expect(Backends(vec![1, 2]))
                .seen(Seen::Client),
                family,
            );
            add(
                Case::new(
                    &format!("etp=local: node to {frontend_name}"),
                    external_local,
                    Host(1),
                    on_node1,
                )
                .expect(Backends(vec![1, 2]))
                .seen(Seen::IngressNode),
                family,
            );
        }
        add(
            Case::new(
                "etp=local: pod to its own service's nodeport hairpins, masqueraded",
                external_local_hairpin,
                Pod(1),
                Destination::node_port(0, "etplh", TCP_PORT),
            )
            .expect(Backends(vec![1]))
            .seen(Seen::IngressNode),
            family,
        );
    }

    // 4. internalTrafficPolicy Local governs every packet to the ClusterIP, from outside too
    // (masqueraded: not a pod address); the node's NodePort stays cluster-wide (7, 8).
    for family in families {
        add(
            Case::new(
                "itp=local: outside to the clusterip via node 0",
                internal_local_both,
                External(0),
                Destination::cluster_ip_via(0, "itpl", TCP_PORT),
            )
            .expect(Backends(vec![1]))
            .seen(Seen::IngressNode),
            family,
        );
        add(
            Case::new(
                "itp=local: outside to the clusterip via node 1",
                internal_local_both,
                External(1),
                Destination::cluster_ip_via(1, "itpl", TCP_PORT),
            )
            .expect(Backends(vec![2]))
            .seen(Seen::IngressNode),
            family,
        );
        add(
            Case::new(
                "itp=local: node to the clusterip",
                internal_local_both,
                Host(0),
                Destination::cluster_ip_via(0, "itpl", TCP_PORT),
            )
            .expect(Backends(vec![1]))
            .seen(Seen::IngressNode),
            family,
        );
        add(
            Case::new(
                "itp=local: pod to the clusterip",
                internal_local_both,
                Pod(3),
                Destination::cluster_ip_via(1, "itpl", TCP_PORT),
            )
            .expect(Backends(vec![2]))
            .seen(Seen::Client),
            family,
        );
        add(
            Case::new(
                "itp=local: node to its own nodeport is cluster-wide",
                internal_local_both,
                Host(0),
                Destination::node_port(0, "itpl", TCP_PORT),
            )
            .expect(Backends(vec![1, 2]))
            .seen(Seen::IngressNode),
            family,
        );
        add(
            Case::new(
                "itp=local: outside to the clusterip via a node without a backend",
                internal_local_node1,
                External(0),
                Destination::cluster_ip_via(0, "itpr", TCP_PORT),
            )
            .expect(Drop),
            family,
        );
    }

    // 1, 2, 12. loadBalancerSourceRanges bind every client of the LB IP (kube-proxy's
    // firewall chain sees prerouting and output); ranges of the other family do not apply
    // (MapCIDRsByIPFamily); a range holding a node address lets the node in.
    let lb = |node: usize, service: &str| Destination::load_balancer(node, service, TCP_PORT);
    let v4 = IpFamily::V4;
    let v6 = IpFamily::V6;
    let range_rows: [RangeRow; 20] = [
        (
            "ranges: allowed outside client",
            ranges_v4_only,
            "lbr",
            External(0),
            0,
            v4,
            Some(Seen::IngressNode),
        ),
        (
            "ranges: other outside client",
            ranges_v4_only,
            "lbr",
            External(1),
            0,
            v4,
            None,
        ),
        (
            "ranges: pod on the backend's node",
            ranges_v4_only,
            "lbr",
            Pod(0),
            0,
            v4,
            None,
        ),
        (
            "ranges: pod on another node",
            ranges_v4_only,
            "lbr",
            Pod(2),
            1,
            v4,
            None,
        ),
        (
            "ranges: node itself",
            ranges_v4_only,
            "lbr",
            Host(0),
            0,
            v4,
            None,
        ),
        (
            "ranges: ipv4 ranges leave ipv6 open to outside",
            ranges_v4_only,
            "lbr",
            External(1),
            0,
            v6,
            Some(Seen::IngressNode),
        ),
        (
            "ranges: ipv4 ranges leave ipv6 open to pods",
            ranges_v4_only,
            "lbr",
            Pod(0),
            0,
            v6,
            Some(Seen::IngressNode),
        ),
        (
            "ranges: ipv4 ranges leave ipv6 open to the node",
            ranges_v4_only,
            "lbr",
            Host(0),
            0,
            v6,
            Some(Seen::IngressNode),
        ),
        (
            "ranges with node addresses: node itself",
            ranges_with_nodes,
            "lbn",
            Host(0),
            0,
            v4,
            Some(Seen::IngressNode),
        ),
        (
            "ranges with node addresses: other node itself",
            ranges_with_nodes,
            "lbn",
            Host(1),
            1,
            v4,
            Some(Seen::IngressNode),
        ),
        (
            "ranges with node addresses: outside client",
            ranges_with_nodes,
            "lbn",
            External(0),
            0,
            v4,
            None,
        ),
        (
            "ranges with node addresses: pod",
            ranges_with_nodes,
            "lbn",
            Pod(0),
            0,
            v4,
            None,
        ),
        (
            "ranges with node addresses: allowed ipv6 outside client",
            ranges_with_nodes,
            "lbn",
            External(0),
            0,
            v6,
            Some(Seen::IngressNode),
        ),
        (
            "ranges with node addresses: other ipv6 outside client",
            ranges_with_nodes,
            "lbn",
            External(1),
            0,
            v6,
            None,
        ),
        (
            "ranges with node addresses: node itself over ipv6",
            ranges_with_nodes,
            "lbn",
            Host(0),
            0,
            v6,
            None,
        ),
        (
            "ranges with pods: pod inside",
            ranges_with_pods,
            "lbp",
            Pod(0),
            0,
            v4,
            Some(Seen::IngressNode),
        ),
        (
            "ranges with pods: pod outside",
            ranges_with_pods,
            "lbp",
            Pod(2),
            1,
            v4,
            None,
        ),
        (
            "ranges with node addresses: the node holding the LB IP, from it",
            ranges_with_nodes,
            "lbn",
            HostFromFrontend(0),
            0,
            v4,
            Some(Seen::IngressNode),
        ),
        (
            "ranges without node addresses: the node holding the LB IP, from it",
            ranges_v4_only,
            "lbr",
            HostFromFrontend(0),
            0,
            v4,
            None,
        ),
        (
            "ranges with node addresses: the node holding the ipv6 LB IP, from it",
            ranges_with_nodes,
            "lbn",
            HostFromFrontend(0),
            0,
            v6,
            None,
        ),
    ];
    for (name, setup, service, client, node, family, allowed) in range_rows {
        let case = Case::new(name, setup, client, lb(node, service));
        let case = match allowed {
            Some(seen) => case.expect(Backends(vec![1])).seen(seen),
            None => case.expect(Drop),
        };
        add(case, family);
    }
    add(
        Case::new(
            "ranges with pods: ipv6 pod inside",
            ranges_with_pods,
            Pod(1),
            lb(0, "lbp"),
        )
        .expect(Backends(vec![1]))
        .seen(Seen::IngressNode),
        v6,
    );

    // 5. An unallocated address in the service CIDR is dropped (kube-proxy nftables: "drop
    // traffic to unallocated ClusterIPs"); an allocated ClusterIP on an unknown port rejects.
    for family in families {
        for (name, client) in [("pod", Pod(0)), ("node", Host(0)), ("outside", External(0))] {
            add(
                Case::new(
                    &format!("unallocated service address from the {name}"),
                    no_backends_dual,
                    client,
                    Destination::UnallocatedServiceIp,
                )
                .expect(Drop),
                family,
            );
            add(
                Case::new(
                    &format!("clusterip unknown port from the {name}"),
                    no_backends_dual,
                    client,
                    Destination::ClusterIpPort {
                        service: "empty6".to_owned(),
                        port: 81,
                    },
                )
                .expect(Reject)
                .refused_within(Duration::from_millis(500)),
                family,
            );
            // 13. The first refusal arrives: no wait for a retransmission.
            add(
                Case::new(
                    &format!("no backends from the {name}, refused at once"),
                    no_backends_dual,
                    client,
                    Destination::cluster_ip_via(0, "empty6", TCP_PORT),
                )
                .expect(Reject)
                .refused_within(Duration::from_millis(500)),
                family,
            );
        }
    }

    // 9. One unsupported feature does not take the node down: a service with an SCTP port is
    // still served on its TCP and UDP ports by every backend.
    for family in families {
        for (name, client, destination) in [
            (
                "pod",
                Pod(0),
                Destination::cluster_ip_via(0, "sctp", TCP_PORT),
            ),
            (
                "outside",
                External(0),
                Destination::node_port(0, "sctp", TCP_PORT),
            ),
        ] {
            let seen = if name == "pod" {
                Seen::Client
            } else {
                Seen::IngressNode
            };
            add(
                Case::new(
                    &format!(
                        "a service with an sctp port still serves its other ports to the {name}"
                    ),
                    with_sctp_port,
                    client,
                    destination,
                )
                .expect(Backends(vec![2]))
                .seen(seen),
                family,
            );
        }
    }

    // 6. masquerade.allServices (kube-proxy --masquerade-all): every service connection is
    // masqueraded, except outside clients of an eTP:Local service.
    for family in families {
        add(
            Case::new(
                "masquerade allServices: pod to a clusterip",
                all_services,
                Pod(0),
                Destination::cluster_ip_via(0, "mas", TCP_PORT),
            )
            .node(masquerade_services)
            .expect(Backends(vec![2]))
            .seen(Seen::IngressNode),
            family,
        );
        add(
            Case::new(
                "masquerade allServices: pod to an etp=local nodeport",
                all_services,
                Pod(3),
                Destination::node_port(1, "masl", TCP_PORT),
            )
            .node(masquerade_services)
            .expect(Backends(vec![2]))
            .seen(Seen::IngressNode),
            family,
        );
        add(
            Case::new(
                "masquerade allServices: outside to an etp=local nodeport keeps the client",
                all_services,
                External(0),
                Destination::node_port(1, "masl", TCP_PORT),
            )
            .node(masquerade_services)
            .expect(Backends(vec![2]))
            .seen(Seen::Client),
            family,
        );
        add(
            Case::new(
                "masquerade allServices: pod to another node's pod is no service",
                all_services,
                Pod(0),
                Destination::PodIp(2),
            )
            .node(masquerade_services)
            .expect(Backends(vec![2]))
            .seen(Seen::Client)
            .requires(Requirement::Masquerade),
            family,
        );
    }
    cases
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolved(is_service: bool) -> Resolved {
        let a: SocketAddr = "10.244.0.11:8080".parse().unwrap();
        let b: SocketAddr = "10.244.1.10:8080".parse().unwrap();
        Resolved {
            client_netns: NetNs::new("unused"),
            client_ip: "10.244.0.10".parse().unwrap(),
            ingress: 0,
            ingress_addr: "172.18.0.10".parse().unwrap(),
            entry: Entry::FromHost,
            destination: "10.96.0.10:80".parse().unwrap(),
            is_service,
            expected: [(a, "pod-0-1".to_owned()), (b, "pod-1-0".to_owned())]
                .into_iter()
                .collect(),
            route: None,
        }
    }

    fn forward(backends: &[&str], source: SourceSeen) -> Verdict {
        Verdict::Forward {
            service: ObjectName::new("default", "web"),
            frontend: dataplane_core::FrontendKind::ClusterIp,
            backends: backends.iter().map(|b| b.parse().unwrap()).collect(),
            source,
        }
    }

    #[test]
    fn reference_check_accepts_a_right_row() {
        let r = resolved(true);
        let v = forward(
            &["10.244.0.11:8080", "10.244.1.10:8080"],
            SourceSeen::Client,
        );
        check_verdict(&Expect::Backends(vec![1, 2]), Seen::Client, &r, &v).unwrap();
        check_verdict(&Expect::Backends(vec![1, 2]), Seen::Any, &r, &v).unwrap();
        let v = forward(&["10.244.1.10:8080"], SourceSeen::Client);
        check_verdict(&Expect::SameBackend(vec![1, 2]), Seen::Client, &r, &v).unwrap();
        let masq = SourceSeen::Masqueraded("172.18.0.10".parse().unwrap());
        let v = forward(&["10.244.0.11:8080", "10.244.1.10:8080"], masq);
        check_verdict(&Expect::Backends(vec![1, 2]), Seen::IngressNode, &r, &v).unwrap();
        check_verdict(&Expect::Drop, Seen::Any, &r, &Verdict::Drop).unwrap();
        check_verdict(&Expect::Reject, Seen::Any, &r, &Verdict::Reject).unwrap();
        let untouched = Verdict::Untouched {
            source: SourceSeen::Client,
        };
        check_verdict(
            &Expect::Backends(vec![1]),
            Seen::Client,
            &resolved(false),
            &untouched,
        )
        .unwrap();
    }

    #[test]
    fn reference_check_catches_wrong_rows() {
        let r = resolved(true);
        let both = forward(
            &["10.244.0.11:8080", "10.244.1.10:8080"],
            SourceSeen::Client,
        );
        // Wrong backend set.
        let one = forward(&["10.244.0.11:8080"], SourceSeen::Client);
        assert!(check_verdict(&Expect::Backends(vec![1, 2]), Seen::Client, &r, &one).is_err());
        // Wrong source.
        let e =
            check_verdict(&Expect::Backends(vec![1, 2]), Seen::IngressNode, &r, &both).unwrap_err();
        assert!(e.contains("IngressNode"), "{e}");
        // Masqueraded to another node's address.
        let other = SourceSeen::Masqueraded("172.18.0.11".parse().unwrap());
        let v = forward(&["10.244.0.11:8080", "10.244.1.10:8080"], other);
        assert!(check_verdict(&Expect::Backends(vec![1, 2]), Seen::IngressNode, &r, &v).is_err());
        // Drop vs reject vs forward.
        assert!(check_verdict(&Expect::Drop, Seen::Any, &r, &Verdict::Reject).is_err());
        assert!(check_verdict(&Expect::Reject, Seen::Any, &r, &both).is_err());
        assert!(check_verdict(&Expect::Backends(vec![1]), Seen::Any, &r, &Verdict::Drop).is_err());
        // A service row that the model treats as plain routing, and the reverse.
        let untouched = Verdict::Untouched {
            source: SourceSeen::Client,
        };
        assert!(check_verdict(&Expect::Backends(vec![1, 2]), Seen::Any, &r, &untouched).is_err());
        assert!(check_verdict(
            &Expect::Backends(vec![1]),
            Seen::Any,
            &resolved(false),
            &both
        )
        .is_err());
        // SameBackend must not allow backends outside the row's set.
        let stray = forward(&["10.244.9.9:8080"], SourceSeen::Client);
        assert!(check_verdict(&Expect::SameBackend(vec![1, 2]), Seen::Any, &r, &stray).is_err());
    }

    #[test]
    fn consistency_is_checked_against_the_named_row() {
        let case =
            Case::new("b", no_backends, Client::Pod(0), Destination::PodIp(0)).consistent_with("a");
        let passed = |backend: &str| RowOutcome::Passed {
            probes: 5,
            answered: [(backend.to_owned(), 5)].into_iter().collect(),
        };
        let answers: BTreeMap<String, String> = [("a".to_owned(), "pod-0-1".to_owned())]
            .into_iter()
            .collect();
        let mut same = passed("pod-0-1");
        check_consistency(&case, &mut same, &answers);
        assert_eq!(same, passed("pod-0-1"));
        let mut other = passed("pod-1-0");
        check_consistency(&case, &mut other, &answers);
        assert!(matches!(other, RowOutcome::Failed { .. }), "{other:?}");
        let mut orphan = passed("pod-0-1");
        check_consistency(&case, &mut orphan, &BTreeMap::new());
        assert!(matches!(orphan, RowOutcome::Failed { .. }), "{orphan:?}");
    }

    #[test]
    fn requirements_are_derived() {
        let c = Case::new(
            "x",
            no_backends,
            Client::Pod(0),
            Destination::cluster_ip("empty", UDP_PORT),
        )
        .protocol(Protocol::Udp)
        .family(IpFamily::V6)
        .requires(Requirement::Maglev);
        let r = c.requirements();
        assert!(r.contains(&Requirement::Udp));
        assert!(r.contains(&Requirement::Ipv6));
        assert!(r.contains(&Requirement::Maglev));
        let direct = Case::new("y", no_backends, Client::Pod(0), Destination::PodIp(1))
            .protocol(Protocol::Udp);
        assert!(direct.requirements().is_empty(), "routing needs no backend");
    }

    #[test]
    fn standard_rows_have_unique_names_and_both_protocols() {
        let cases = standard_cases();
        let names: BTreeSet<&str> = cases.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names.len(), cases.len(), "duplicate row names");
        assert!(cases.iter().any(|c| c.protocol == Protocol::Udp));
        assert!(cases.iter().any(|c| c.family == IpFamily::V6));
        for c in &cases {
            if c.protocol == Protocol::Udp {
                assert!(c.name.ends_with(" udp"), "{}", c.name);
            }
        }
    }
}
