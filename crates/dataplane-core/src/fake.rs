//! [`FakeDataplane`]: an in-memory [`Dataplane`] for embedders' unit tests, driven by the
//! reference model.
//!
//! It programs no kernel: it keeps the applied state and answers as a real backend would in
//! everything that can be seen without one. It validates like the backends (the same
//! [`Validator`]), refuses and leaves out what its [`Capabilities`] lack as they do, reports
//! the same [`ApplyReport`] counts, answers [`Error::FullSyncRequired`] when they do, lists
//! frontends in [`Dataplane::observe`] as the eBPF backend does, and tells what it would do to
//! a packet with [`FakeDataplane::evaluate`] (the [`crate::evaluate`] reference model on what
//! it programmed, NetworkPolicy included: checked on a connection's first packet, after
//! service DNAT). In the style of knftables' `Fake`, tests inject faults
//! ([`FakeDataplane::fail_next_apply`]) instead of configuring a real backend to fail, and
//! read what the code under test did with [`FakeDataplane::calls`].
//!
//! Clones are handles to one fake: hand one to the code under test (boxed as a
//! [`crate::BoxDataplane`], say) and keep one to inject faults and look.
//!
//! ```
//! use dataplane_core::fake::{FakeDataplane, Fault};
//! use dataplane_core::{
//!     Backend, Dataplane, DesiredState, Entry, Error, Node, ObjectName, Packet, Protocol,
//!     Service, ServicePort, Verdict,
//! };
//! let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
//! let fake = FakeDataplane::new();
//! let mut dp: dataplane_core::BoxDataplane = Box::new(fake.clone());
//!
//! let v1 = DesiredState::new(Node::new("node-a", [ip("172.18.0.10")])).with_service(
//!     Service::cluster_ip(ObjectName::new("default", "web"), ip("10.96.0.20"), [ServicePort::tcp(80, 8080)])
//!         .with_backend(Backend::new(ip("10.244.1.5"))),
//! );
//! assert!(dp.sync(None, &v1)?.full_sync);
//!
//! // The kernel refuses the next apply: the sync fails and changes nothing...
//! let mut v2 = v1.clone();
//! v2.services[0].backends.push(Backend::new(ip("10.244.2.7")));
//! fake.fail_next_apply(Fault::Kernel("netlink: no buffer space".into()));
//! assert!(matches!(dp.sync(Some(&v1), &v2), Err(Error::Kernel { .. })));
//! assert_eq!(fake.applied(), Some(v1.clone()));
//! // ... and the next sync is a full one, which `sync` does on its own.
//! let report = dp.sync(Some(&v1), &v2)?;
//! assert!(report.full_sync);
//! assert_eq!((report.services_changed, report.services_removed), (1, 0));
//! assert_eq!(fake.calls().full_syncs, 2);
//! assert_eq!(fake.calls().full_sync_required, 1);
//!
//! // What the programmed state does to a packet, and the connection it leaves tracked.
//! let packet = Packet {
//!     protocol: Protocol::Tcp,
//!     source: "172.18.0.99:40000".parse()?,
//!     destination: "10.96.0.20:80".parse()?,
//! };
//! assert!(matches!(fake.evaluate(&packet, &Entry::FromUplink), Verdict::Forward { .. }));
//! assert_eq!(dp.flows()?.len(), 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::counts::ServiceFingerprints;
use crate::dataplane::{
    ApplyReport, Capabilities, Dataplane, Error, Flow, MaintenanceReport, ObservedFrontend,
    ObservedState, Skipped, Stats, Warning,
};
use crate::diff::ChangeSet;
use crate::model::{
    BackendSelection, DesiredState, ExternalMode, Node, ObjectName, Protocol, Service,
    SessionAffinity, TrafficPolicy,
};
use crate::reference::{self, Eligible, Entry, IpFamily, Packet, TrafficKind, Verdict};
use crate::validate::{Incremental, Validator};

/// The name a [`FakeDataplane`] gives itself by default ([`Capabilities::dataplane`]).
pub const FAKE: &str = "fake";

/// An error a test makes a [`FakeDataplane`] return, as a kernel would: after validation, so
/// that nothing is changed and the next incremental apply answers
/// [`Error::FullSyncRequired`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// The kernel refuses the operation: [`Error::Kernel`] whose source says `message`.
    Kernel(String),
    /// A table is full: [`Error::CapacityExceeded`].
    CapacityExceeded {
        /// Which table.
        what: String,
        /// Entries needed.
        needed: usize,
        /// Its capacity.
        capacity: usize,
    },
}

impl Fault {
    fn into_error(self, dataplane: &str, operation: &str) -> Error {
        match self {
            Fault::Kernel(message) => Error::Kernel {
                dataplane: dataplane.to_owned(),
                operation: operation.to_owned(),
                source: Box::new(std::io::Error::other(message)),
            },
            Fault::CapacityExceeded {
                what,
                needed,
                capacity,
            } => Error::CapacityExceeded {
                what,
                needed,
                capacity,
            },
        }
    }
}

/// What the code under test asked of a [`FakeDataplane`], counted since it was made.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FakeCalls {
    /// Calls of [`Dataplane::apply`] (full syncs asked for).
    pub applies: usize,
    /// Calls of [`Dataplane::apply_changes`].
    pub apply_changes: usize,
    /// Full syncs that succeeded.
    pub full_syncs: usize,
    /// Incremental applies that succeeded.
    pub incremental_syncs: usize,
    /// `apply_changes` calls answered with [`Error::FullSyncRequired`].
    pub full_sync_required: usize,
    /// `apply` and `apply_changes` calls that failed otherwise (invalid, unsupported, over
    /// capacity, or an injected [`Fault`]).
    pub failures: usize,
    /// Calls of [`Dataplane::maintain`].
    pub maintains: usize,
    /// The `now` of the last `maintain` call.
    pub last_maintain: Option<Duration>,
    /// Calls of [`Dataplane::reset`].
    pub resets: usize,
}

/// An in-memory [`Dataplane`] driven by the reference model; see the [module](self) docs.
///
/// `Clone` gives another handle to the same fake; it is `Send` and `Sync`.
#[derive(Debug, Clone, Default)]
pub struct FakeDataplane {
    inner: Arc<Mutex<Inner>>,
}

/// One service as programmed: the service with what the capabilities lack taken out, and its
/// frontends with the backends each selects (what `observe` lists).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Programmed {
    service: Service,
    frontends: Vec<ObservedFrontend>,
}

#[derive(Debug)]
struct Inner {
    capabilities: Capabilities,
    maintenance_interval: Option<Duration>,
    /// The state of the last successful apply, as it was asked for.
    applied: Option<DesiredState>,
    /// What that state programs: `applied` less what the capabilities lack.
    programmed: Option<DesiredState>,
    /// Per service, what is programmed (for `observe` and the report's counts).
    services: BTreeMap<ObjectName, Programmed>,
    validator: Option<Validator>,
    /// An apply failed since the last successful one: the next one must be full.
    failed: bool,
    apply_faults: VecDeque<Fault>,
    maintain_faults: VecDeque<Fault>,
    calls: FakeCalls,
    /// Tracked connections by (protocol, client, frontend).
    flows: BTreeMap<(Protocol, SocketAddr, SocketAddr), Flow>,
    stats: Stats,
}

impl Default for Inner {
    fn default() -> Self {
        Self {
            capabilities: FakeDataplane::default_capabilities(),
            maintenance_interval: None,
            applied: None,
            programmed: None,
            services: BTreeMap::new(),
            validator: None,
            failed: false,
            apply_faults: VecDeque::new(),
            maintain_faults: VecDeque::new(),
            calls: FakeCalls::default(),
            flows: BTreeMap::new(),
            stats: Stats::default(),
        }
    }
}

impl FakeDataplane {
    /// A fake with [`FakeDataplane::default_capabilities`].
    pub fn new() -> Self {
        Self::default()
    }

    /// A fake that can do what `capabilities` say (and calls itself
    /// `capabilities.dataplane`): states that need more are refused or partly left out, as a
    /// real backend lacking the same would.
    pub fn with_capabilities(capabilities: Capabilities) -> Self {
        let fake = Self::default();
        fake.lock().capabilities = capabilities;
        fake
    }

    /// Everything a real backend can do, under the name [`FAKE`]: TCP, UDP and SCTP, IPv6,
    /// Maglev, session affinity, DSR, XDP, masquerade, NetworkPolicy, cluster and host
    /// policy, weights, no capacity limits. Policies are enforced by [`FakeDataplane::evaluate`] (the reference model):
    /// service connections keep only the backends policy allows, pod-to-pod packets that
    /// policy denies are dropped.
    pub fn default_capabilities() -> Capabilities {
        Capabilities {
            dataplane: FAKE.to_owned(),
            protocols: [Protocol::Tcp, Protocol::Udp, Protocol::Sctp]
                .into_iter()
                .collect(),
            ipv6: true,
            maglev: true,
            session_affinity: true,
            dsr: true,
            xdp: true,
            masquerade: true,
            network_policy: true,
            weights: true,
            max_services: 0,
            max_backends: 0,
            cluster_policy: true,
            host_policy: true,
            l2_announcements: true,
        }
    }

    /// This fake asking for [`Dataplane::maintain`] every `interval` (`None`, the default:
    /// no periodic work, like the netfilter backends; the eBPF backend asks for it).
    #[must_use]
    pub fn with_maintenance_interval(self, interval: Option<Duration>) -> Self {
        self.lock().maintenance_interval = interval;
        self
    }

    /// Changes what this fake can do from the next apply on; the next apply must be full, as
    /// what is programmed may change.
    pub fn set_capabilities(&self, capabilities: Capabilities) {
        let mut inner = self.lock();
        inner.capabilities = capabilities;
        inner.failed = true;
    }

    /// Makes the next `apply` or `apply_changes` that passes validation fail with `fault`
    /// (queued: several calls fail that many applies in turn). The failed apply changes
    /// nothing; the next `apply_changes` answers [`Error::FullSyncRequired`]. An
    /// `apply_changes` answered with `FullSyncRequired` leaves the fault queued.
    pub fn fail_next_apply(&self, fault: Fault) {
        self.lock().apply_faults.push_back(fault);
    }

    /// Makes the next [`Dataplane::maintain`] fail with `fault` (queued like
    /// [`FakeDataplane::fail_next_apply`]).
    pub fn fail_next_maintain(&self, fault: Fault) {
        self.lock().maintain_faults.push_back(fault);
    }

    /// What was called so far.
    pub fn calls(&self) -> FakeCalls {
        self.lock().calls.clone()
    }

    /// The state of the last successful apply, as it was handed over (`None` before the
    /// first and after a reset).
    pub fn applied(&self) -> Option<DesiredState> {
        self.lock().applied.clone()
    }

    /// What the programmed state does to `packet` entering at `entry` ([`crate::evaluate`]
    /// on the applied state less what the capabilities lack; [`Verdict::Untouched`] when
    /// nothing is applied). A translated packet is tracked as a [`Flow`] (the first packet of
    /// a connection picks a backend from the verdict's set by a hash of the packet, or of the
    /// client's address under ClientIP affinity; later packets of it keep that backend, as
    /// conntrack does) and counted in [`Dataplane::stats`].
    pub fn evaluate(&self, packet: &Packet, entry: &Entry) -> Verdict {
        let mut inner = self.lock();
        let Some(state) = &inner.programmed else {
            return Verdict::Untouched {
                source: reference::SourceSeen::Client,
            };
        };
        let verdict = reference::evaluate(state, packet, entry);
        let affinity = match &verdict {
            Verdict::Forward { service, .. } => state
                .service(service)
                .is_some_and(|s| s.session_affinity != SessionAffinity::None),
            _ => false,
        };
        let inner = &mut *inner;
        let counters = &mut inner.stats;
        match &verdict {
            Verdict::Forward {
                service, backends, ..
            } => {
                counters.packets_translated += 1;
                let key = (packet.protocol, packet.source, packet.destination);
                if let Some(backend) = pick(packet, affinity, backends) {
                    inner.flows.entry(key).or_insert_with(|| Flow {
                        protocol: packet.protocol,
                        client: packet.source,
                        frontend: packet.destination,
                        backend,
                        service: Some(service.clone()),
                    });
                }
            }
            Verdict::Drop => counters.packets_dropped += 1,
            Verdict::Reject => counters.packets_rejected += 1,
            Verdict::Untouched { .. } => {
                *counters.other.entry("untouched".to_owned()).or_default() += 1;
            }
        }
        verdict
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A test that panicked while holding the lock left a consistent fake: every change is
        // made after the checks that can fail.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A backend out of `backends` for the first packet of a connection: a hash of the packet,
/// or with ClientIP affinity of the client's address and the frontend, so that every
/// connection of one client picks the same backend (while the set stays the same).
fn pick(packet: &Packet, affinity: bool, backends: &BTreeSet<SocketAddr>) -> Option<SocketAddr> {
    let mut h = std::hash::DefaultHasher::new();
    if affinity {
        (packet.source.ip(), packet.destination, packet.protocol).hash(&mut h);
    } else {
        packet.hash(&mut h);
    }
    let n = backends.len() as u64;
    if n == 0 {
        return None;
    }
    backends.iter().nth((h.finish() % n) as usize).copied()
}

impl Inner {
    fn dataplane(&self) -> String {
        self.capabilities.dataplane.clone()
    }

    /// Policies need [`Capabilities::network_policy`]: a fake made without it refuses them,
    /// as a backend that cannot enforce policy does.
    fn check_policies<'a>(
        &self,
        mut policies: impl Iterator<Item = &'a crate::model::Policy>,
    ) -> Result<(), Error> {
        match policies.next() {
            Some(p) if !self.capabilities.network_policy => Err(Error::Unsupported {
                dataplane: self.dataplane(),
                feature: "network policy".to_owned(),
                object: format!("policy {}", p.name),
            }),
            _ => Ok(()),
        }
    }

    /// `node` as programmed on this fake, and what of it is left out.
    fn program_node(&self, node: &Node) -> (Node, Vec<Skipped>) {
        let caps = &self.capabilities;
        let mut out = node.clone();
        let mut skipped = Vec::new();
        if !caps.ipv6 {
            for (i, a) in node
                .addresses
                .iter()
                .enumerate()
                .filter(|(_, a)| a.is_ipv6())
            {
                skipped.push(Skipped {
                    object: "node".to_owned(),
                    field: format!("addresses[{i}]"),
                    feature: "IPv6".to_owned(),
                    reason: format!("no NodePort or masquerade on {a}"),
                });
            }
            out.addresses.retain(std::net::IpAddr::is_ipv4);
        }
        if !caps.masquerade && (node.masquerade.enabled || node.masquerade.all) {
            skipped.push(Skipped {
                object: "node".to_owned(),
                field: "masquerade".to_owned(),
                feature: "pod masquerade".to_owned(),
                reason: "pod traffic leaving the cluster keeps the pod address".to_owned(),
            });
            out.masquerade.enabled = false;
            out.masquerade.all = false;
        }
        (out, skipped)
    }

    /// `service` as programmed on `node` (the desired node: the DSR test is the backends'),
    /// and what of it is left out or served in a lesser way, in the words the backends use.
    fn program_service(&self, node: &Node, s: &Service) -> (Service, Vec<Skipped>) {
        let caps = &self.capabilities;
        let object = format!("service {}", s.name);
        let skip = |field: String, feature: &str, reason: String| Skipped {
            object: object.clone(),
            field,
            feature: feature.to_owned(),
            reason,
        };
        let mut out = s.clone();
        let mut skipped = Vec::new();
        for (i, p) in s.ports.iter().enumerate() {
            if !caps.protocols.contains(&p.protocol) {
                skipped.push(skip(
                    format!("ports[{i}]"),
                    &p.protocol.to_string(),
                    format!("port {} not programmed", p.port),
                ));
            }
        }
        out.ports.retain(|p| caps.protocols.contains(&p.protocol));
        if !caps.ipv6 {
            for (field, ips) in [
                ("clusterIPs", &s.cluster_ips),
                ("externalIPs", &s.external_ips),
                ("loadBalancerIPs", &s.load_balancer_ips),
            ] {
                for (i, ip) in ips.iter().enumerate().filter(|(_, ip)| ip.is_ipv6()) {
                    skipped.push(skip(
                        format!("{field}[{i}]"),
                        "IPv6",
                        format!("{ip} not programmed"),
                    ));
                }
            }
            if node.addresses.iter().any(std::net::IpAddr::is_ipv6) {
                for i in node_port_indices(s) {
                    skipped.push(skip(
                        format!("ports[{i}].nodePort"),
                        "IPv6",
                        "not programmed on the node's IPv6 addresses".to_owned(),
                    ));
                }
            }
            out.cluster_ips.retain(std::net::IpAddr::is_ipv4);
            out.external_ips.retain(std::net::IpAddr::is_ipv4);
            out.load_balancer_ips.retain(std::net::IpAddr::is_ipv4);
            out.backends.retain(|b| b.ip.is_ipv4());
        }
        if s.backend_selection == BackendSelection::Maglev && !caps.maglev {
            skipped.push(skip(
                "backendSelection".to_owned(),
                "Maglev backend selection",
                "served with random selection".to_owned(),
            ));
            out.backend_selection = BackendSelection::Random;
        }
        if s.session_affinity != SessionAffinity::None && !caps.session_affinity {
            skipped.push(skip(
                "sessionAffinity".to_owned(),
                "ClientIP session affinity",
                "every connection picks a backend anew".to_owned(),
            ));
            out.session_affinity = SessionAffinity::None;
        }
        if s.backends.iter().any(|b| b.weight != 1) && !caps.weights {
            skipped.push(skip(
                "backends".to_owned(),
                "backend weights",
                "backends picked with equal weights".to_owned(),
            ));
            for b in &mut out.backends {
                b.weight = 1;
            }
        }
        // As the netfilter backends: only `Cluster` services forward external traffic to
        // other nodes, DSR's case.
        let external = !s.external_ips.is_empty()
            || !s.load_balancer_ips.is_empty()
            || s.ports.iter().any(|p| p.node_port.is_some());
        if !caps.dsr {
            let mode = s.effective_external_mode(node);
            if external && s.external_traffic_policy == TrafficPolicy::Cluster {
                let feature = match mode {
                    ExternalMode::Snat => None,
                    ExternalMode::Dsr => Some("direct server return (DSR)"),
                    ExternalMode::Hybrid => Some("hybrid DSR/SNAT external mode (DSR for TCP)"),
                };
                if let Some(feature) = feature {
                    skipped.push(skip(
                        "externalMode".to_owned(),
                        feature,
                        "external traffic served with SNAT: backends see the node address"
                            .to_owned(),
                    ));
                }
            }
            out.external_mode = Some(ExternalMode::Snat);
        }
        (out, skipped)
    }

    /// The frontends of programmed service `s` on programmed node `state.node`, each with the
    /// backends a new connection from a client its traffic policy applies to may pick (what
    /// the eBPF backend's `observe` lists).
    fn frontends(state: &DesiredState, s: &Service) -> Vec<ObservedFrontend> {
        let mut out = Vec::new();
        for p in &s.ports {
            let mut add = |ip: std::net::IpAddr, port: u16, traffic: TrafficKind| {
                let backends =
                    match reference::eligible_backends(state, s, p, traffic, IpFamily::of(&ip)) {
                        Eligible::Backends(b) => b.iter().map(|b| b.target(p)).collect(),
                        Eligible::NoLocal | Eligible::NoBackends => BTreeSet::new(),
                    };
                out.push(ObservedFrontend {
                    address: SocketAddr::new(ip, port),
                    protocol: p.protocol,
                    backends,
                });
            };
            for ip in &s.cluster_ips {
                add(*ip, p.port, TrafficKind::Internal);
            }
            for ip in s.external_ips.iter().chain(&s.load_balancer_ips) {
                add(*ip, p.port, TrafficKind::External);
            }
            if let Some(np) = p.node_port {
                for ip in &state.node.addresses {
                    add(*ip, np, TrafficKind::External);
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// Refuses a programmed state over the capacities.
    fn check_capacity(&self, services: &BTreeMap<ObjectName, Programmed>) -> Result<(), Error> {
        let caps = &self.capabilities;
        let check = |what: &str, needed: usize, capacity: u32| {
            if capacity > 0 && needed > capacity as usize {
                return Err(Error::CapacityExceeded {
                    what: what.to_owned(),
                    needed,
                    capacity: capacity as usize,
                });
            }
            Ok(())
        };
        check("services", services.len(), caps.max_services)?;
        let backends: BTreeSet<SocketAddr> = services
            .values()
            .flat_map(|p| {
                p.service
                    .ports
                    .iter()
                    .flat_map(|port| p.service.backends.iter().map(|b| b.target(port)))
            })
            .collect();
        check("backends", backends.len(), caps.max_backends)
    }

    /// Plans `desired` (already validated and supported): the programmed state, its services
    /// and the node's skipped parts.
    fn plan(
        &self,
        desired: &DesiredState,
    ) -> (DesiredState, BTreeMap<ObjectName, Programmed>, Vec<Skipped>) {
        let (node, node_skipped) = self.program_node(&desired.node);
        let mut programmed = DesiredState {
            services: Vec::new(),
            ..desired.clone()
        };
        programmed.node = node;
        programmed.services = desired
            .services
            .iter()
            .map(|s| self.program_service(&desired.node, s).0)
            .collect();
        let services = programmed
            .services
            .iter()
            .map(|s| {
                let frontends = Self::frontends(&programmed, s);
                (
                    s.name.clone(),
                    Programmed {
                        service: s.clone(),
                        frontends,
                    },
                )
            })
            .collect();
        (programmed, services, node_skipped)
    }

    /// The next injected apply fault, as the error it stands for.
    fn apply_fault(&mut self, operation: &str) -> Result<(), Error> {
        match self.apply_faults.pop_front() {
            Some(fault) => Err(fault.into_error(&self.dataplane(), operation)),
            None => Ok(()),
        }
    }

    fn full_sync(&mut self, desired: &DesiredState) -> Result<ApplyReport, Error> {
        let validator = Validator::new(desired)?;
        self.check_policies(desired.policies.iter())?;
        self.capabilities.check_policy_tiers(desired)?;
        self.capabilities.check_l2_announcements(desired)?;
        let (programmed, services, mut skipped) = self.plan(desired);
        self.check_capacity(&services)?;
        self.apply_fault("full sync")?;
        for s in &desired.services {
            skipped.extend(self.program_service(&desired.node, s).1);
        }
        // The counts compare the objects, as every dataplane does (see `crate::counts`);
        // the objects written are the frontends of every service programmed differently (a
        // change of the node reprograms NodePorts without changing a service).
        // The desired objects, not what the capabilities left of them (a change of a port
        // this fake leaves out still changes the service, as on every dataplane).
        let before = self
            .applied
            .as_ref()
            .map(|a| ServiceFingerprints::of(&a.services))
            .unwrap_or_default();
        let (changed, removed_count) =
            ServiceFingerprints::of(&desired.services).counts_since(&before);
        let rewritten: Vec<&Programmed> = services
            .iter()
            .filter(|(name, p)| self.services.get(*name) != Some(*p))
            .map(|(_, p)| p)
            .collect();
        let removed: Vec<&Programmed> = self
            .services
            .iter()
            .filter(|(name, _)| !services.contains_key(*name))
            .map(|(_, p)| p)
            .collect();
        let report = ApplyReport {
            full_sync: true,
            services_changed: changed,
            services_removed: removed_count,
            objects_written: rewritten
                .iter()
                .chain(&removed)
                .map(|p| p.frontends.len())
                .sum(),
            skipped,
            warnings: crate::validate::warnings(desired),
        };
        self.applied = Some(desired.clone());
        self.programmed = Some(programmed);
        self.services = services;
        self.validator = Some(validator);
        Ok(report)
    }

    fn incremental(&mut self, changes: &ChangeSet) -> Result<ApplyReport, Error> {
        let (Some(applied), Some(validator)) = (&self.applied, &self.validator) else {
            return Err(Error::FullSyncRequired);
        };
        if self.failed {
            return Err(Error::FullSyncRequired);
        }
        // A change of the node, which every service is planned against, needs the whole
        // state: the real backends keep no copy of it and ask for it, so does the fake.
        if validator.check(&applied.node, changes)? == Incremental::FullRequired {
            return Err(Error::FullSyncRequired);
        }
        if !is_diff_from(applied, changes) {
            return Err(Error::FullSyncRequired);
        }
        self.check_policies(changes.policies.values().filter_map(|c| c.current.as_ref()))?;
        self.capabilities.check_policy_tier_changes(changes)?;
        self.capabilities.check_l2_announcement_changes(changes)?;
        let mut next = applied.clone();
        changes.apply_to(&mut next);
        let (programmed, services, _) = self.plan(&next);
        self.check_capacity(&services)?;
        self.apply_fault("incremental sync")?;
        // (the node is the applied one: a change of it asked for a full sync above)
        let node = &next.node;
        let looked_at: Vec<&Service> = changes
            .services
            .values()
            .filter_map(|c| c.current.as_ref())
            .collect();
        let skipped = looked_at
            .iter()
            .flat_map(|s| self.program_service(node, s).1)
            .collect();
        let warnings: Vec<Warning> = looked_at
            .iter()
            .flat_map(|s| crate::validate::service_warnings(node, s))
            .collect();
        let old = &self.services;
        let written: Vec<&Programmed> = changes
            .services
            .keys()
            .filter_map(|name| {
                services
                    .get(name)
                    .filter(|p| old.get(name).map(|o| &o.service) != Some(&p.service))
            })
            .collect();
        let removed: Vec<&Programmed> = changes
            .services
            .keys()
            .filter(|name| !services.contains_key(*name))
            .filter_map(|name| old.get(name))
            .collect();
        // The objects, as every dataplane counts them (see `crate::counts`).
        let (services_changed, services_removed) = changes.service_counts();
        let report = ApplyReport {
            full_sync: false,
            services_changed,
            services_removed,
            objects_written: written
                .iter()
                .chain(&removed)
                .map(|p| p.frontends.len())
                .sum(),
            skipped,
            warnings,
        };
        let mut validator = self.validator.take().unwrap_or_default();
        validator.commit(&next.node, changes);
        self.validator = Some(validator);
        self.applied = Some(next);
        self.programmed = Some(programmed);
        self.services = services;
        Ok(report)
    }
}

/// The indices of `s`'s ports that have a NodePort.
fn node_port_indices(s: &Service) -> impl Iterator<Item = usize> + '_ {
    s.ports
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.node_port.map(|_| i))
}

/// Whether every change's `previous` is what `applied` holds under that name (nothing for an
/// addition): a change set computed by [`crate::diff()`] from the applied state.
fn is_diff_from(applied: &DesiredState, changes: &ChangeSet) -> bool {
    fn agrees<T: PartialEq>(
        items: &[T],
        name_of: impl Fn(&T) -> &ObjectName,
        changes: &BTreeMap<ObjectName, crate::diff::Change<T>>,
    ) -> bool {
        changes.iter().all(|(name, change)| {
            items.iter().find(|i| name_of(i) == name) == change.previous.as_ref()
        })
    }
    changes
        .node
        .as_ref()
        .is_none_or(|c| c.previous.as_ref() == Some(&applied.node))
        && agrees(&applied.services, |s| &s.name, &changes.services)
        && agrees(&applied.endpoints, |e| &e.name, &changes.endpoints)
        && agrees(&applied.policies, |p| &p.name, &changes.policies)
        && agrees(&applied.pods, |p| &p.name, &changes.pods)
        && changes.namespaces.iter().all(|(name, change)| {
            applied.namespaces.iter().find(|n| n.name == *name) == change.previous.as_ref()
        })
}

impl Dataplane for FakeDataplane {
    fn capabilities(&self) -> Capabilities {
        self.lock().capabilities.clone()
    }

    /// Validates, refuses what the capabilities lack as the backends do, and keeps `desired`
    /// as the applied state. A failure changes nothing and makes the next `apply_changes`
    /// answer [`Error::FullSyncRequired`].
    fn apply(&mut self, desired: &DesiredState) -> Result<ApplyReport, Error> {
        let mut inner = self.lock();
        inner.calls.applies += 1;
        let result = inner.full_sync(desired);
        if result.is_ok() {
            inner.failed = false;
            inner.calls.full_syncs += 1;
        } else {
            inner.failed = true;
            inner.calls.failures += 1;
        }
        result
    }

    /// Applies `changes` on top of the applied state. [`Error::FullSyncRequired`] before the
    /// first apply, after a failed one, for a change of the node (as the real backends, which
    /// keep no copy of the state) and for a change set that is not a diff from the applied
    /// state; it then changes nothing.
    fn apply_changes(&mut self, changes: &ChangeSet) -> Result<ApplyReport, Error> {
        let mut inner = self.lock();
        inner.calls.apply_changes += 1;
        let result = inner.incremental(changes);
        match &result {
            Ok(_) => inner.calls.incremental_syncs += 1,
            Err(Error::FullSyncRequired) => inner.calls.full_sync_required += 1,
            Err(_) => {
                inner.failed = true;
                inner.calls.failures += 1;
            }
        }
        result
    }

    /// The programmed frontends, each with the backends a new connection may pick: a
    /// ClusterIP under `internalTrafficPolicy`, NodePorts (on every node address),
    /// LoadBalancer IPs and ExternalIPs under `externalTrafficPolicy` (for outside
    /// clients), none where the policy leaves none. Empty before the first apply.
    fn observe(&self) -> Result<ObservedState, Error> {
        let inner = self.lock();
        let mut frontends: Vec<ObservedFrontend> = inner
            .services
            .values()
            .flat_map(|p| p.frontends.iter().cloned())
            .collect();
        frontends.sort();
        frontends.dedup();
        Ok(ObservedState { frontends })
    }

    /// The connections [`FakeDataplane::evaluate`] translated, by frontend and client.
    fn flows(&self) -> Result<Vec<Flow>, Error> {
        let mut out: Vec<Flow> = self.lock().flows.values().cloned().collect();
        out.sort_by_key(|f| (f.frontend, f.client));
        Ok(out)
    }

    /// Packets [`FakeDataplane::evaluate`] saw, by verdict (`untouched` in `other`).
    fn stats(&self) -> Result<Stats, Error> {
        let inner = self.lock();
        let mut stats = inner.stats.clone();
        stats.flows = inner.flows.len() as u64;
        Ok(stats)
    }

    /// Forgets the applied state, flows and counters; the next apply is the first.
    fn reset(&mut self) -> Result<(), Error> {
        let mut inner = self.lock();
        inner.calls.resets += 1;
        inner.applied = None;
        inner.programmed = None;
        inner.services.clear();
        inner.validator = None;
        inner.failed = false;
        inner.flows.clear();
        inner.stats = Stats::default();
        Ok(())
    }

    /// Counts the call (see [`FakeDataplane::calls`]); fails with a queued
    /// [`FakeDataplane::fail_next_maintain`] fault. Expires nothing: the fake's flows have no
    /// age.
    fn maintain(&mut self, now: Duration) -> Result<MaintenanceReport, Error> {
        let mut inner = self.lock();
        inner.calls.maintains += 1;
        inner.calls.last_maintain = Some(now);
        if let Some(fault) = inner.maintain_faults.pop_front() {
            return Err(fault.into_error(&inner.dataplane(), "maintenance"));
        }
        Ok(MaintenanceReport {
            flows_remaining: Some(inner.flows.len() as u64),
            ..MaintenanceReport::default()
        })
    }

    fn maintenance_interval(&self) -> Option<Duration> {
        self.lock().maintenance_interval
    }
}
