//! The vocabulary a host case is written in: [`HostCase`], [`HostStep`], [`HostProbe`], who
//! sends ([`Party`]) and where to ([`Target`]).

use dataplane_core::{FailsafePorts, HostPolicy, Protocol};

/// One case of the host endpoint table: steps, each followed by its probes.
#[derive(Debug, Clone)]
pub struct HostCase {
    /// Case name (unique in the table).
    pub name: String,
    /// Where it comes from: the Calico documentation pages it follows, by title and path
    /// under <https://docs.tigera.io/calico/latest/>.
    pub source: String,
    /// The steps, in order; each is applied to every node as a full state.
    pub steps: Vec<HostStep>,
}

impl HostCase {
    /// A case called `name`, written after `source`, with `steps`.
    pub fn new(name: &str, source: &str, steps: Vec<HostStep>) -> Self {
        HostCase {
            name: name.to_owned(),
            source: source.to_owned(),
            steps,
        }
    }
}

/// One state of node-0's host endpoint and the probes that show what it does.
#[derive(Debug, Clone)]
pub struct HostStep {
    /// A few words for the report.
    pub name: String,
    /// The host policies in force (node-0's uplink has its host endpoint in every step).
    pub policies: Vec<HostPolicy>,
    /// The failsafe ports in force (Calico's defaults unless a step says otherwise).
    pub failsafe: FailsafePorts,
    /// The probes: each a new connection (or datagram) from a source port of its own,
    /// in both families.
    pub probes: Vec<HostProbe>,
    /// TCP connections opened (and answered once) *before* the step is applied, which must
    /// still be answered after it: policy is checked on a connection's first packet.
    pub hold: Vec<HostProbe>,
}

impl HostStep {
    /// A step called `name` with `policies` and the default failsafe ports, no probe yet.
    pub fn new(name: &str, policies: Vec<HostPolicy>) -> Self {
        HostStep {
            name: name.to_owned(),
            policies,
            failsafe: FailsafePorts::default(),
            probes: Vec::new(),
            hold: Vec::new(),
        }
    }

    /// This step with failsafe ports `failsafe` instead of the defaults.
    #[must_use]
    pub fn with_failsafe(mut self, failsafe: FailsafePorts) -> Self {
        self.failsafe = failsafe;
        self
    }

    /// This step with `probes` added.
    #[must_use]
    pub fn probes(mut self, probes: impl IntoIterator<Item = HostProbe>) -> Self {
        self.probes.extend(probes);
        self
    }

    /// This step with `connections` opened before it and checked after it.
    #[must_use]
    pub fn holding(mut self, connections: impl IntoIterator<Item = HostProbe>) -> Self {
        self.hold.extend(connections);
        self
    }
}

/// Who sends a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Party {
    /// External client `k` of the lab (on the nodes' L2 segment).
    External(usize),
    /// Node `n` itself (its own network namespace).
    Node(usize),
    /// The pod of node `n` (the lab has one per node).
    Pod(usize),
}

impl std::fmt::Display for Party {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Party::External(k) => write!(f, "external-{k}"),
            Party::Node(n) => write!(f, "node-{n}"),
            Party::Pod(n) => write!(f, "pod-{n}-0"),
        }
    }
}

/// Where a probe goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// A server in node `n`'s own namespace, on the probe's port.
    Node(usize),
    /// The table's NodePort service on node `n`'s address (the probe's port is the
    /// NodePort).
    NodePort(usize),
    /// The table's service by its ClusterIP (the probe's port is the service port).
    ClusterIp,
    /// The table's second service, backed by node-1's pod only (`host-np-remote`), by its
    /// NodePort on node `n`'s address (the probe's port is that NodePort).
    RemoteNodePort(usize),
    /// The pod of node `n`, directly (its server port).
    Pod(usize),
    /// A server in external `k`'s namespace, on the probe's port.
    External(usize),
}

/// What a probe means: the reference model must say the same (a unit test and every run
/// check it), so that a wrong expectation cannot hide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Meaning {
    /// Answered by the server it is for.
    Answered,
    /// Dropped: no answer within the drop wait (not refused).
    Dropped,
}

/// One probe of a step: from `from` to `to` on `port`, over `protocol`, in every family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HostProbe {
    /// Sender.
    pub from: Party,
    /// Destination.
    pub to: Target,
    /// TCP or UDP.
    pub protocol: Protocol,
    /// Destination port.
    pub port: u16,
    /// What the case means to happen.
    pub meaning: Meaning,
    /// The case means the flow to be untracked (`doNotTrack`): where the run checks the
    /// kernel's conntrack table, the node it enters must hold no entry of it.
    pub untracked: bool,
}

impl HostProbe {
    fn new(from: Party, to: Target, protocol: Protocol, port: u16, meaning: Meaning) -> Self {
        HostProbe {
            from,
            to,
            protocol,
            port,
            meaning,
            untracked: false,
        }
    }

    /// The same probe, meant to leave no conntrack entry.
    #[must_use]
    pub fn untracked(mut self) -> Self {
        self.untracked = true;
        self
    }
}

impl std::fmt::Display for HostProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let to = match self.to {
            Target::Node(n) => format!("node-{n}"),
            Target::NodePort(n) => format!("NodePort on node-{n}"),
            Target::RemoteNodePort(n) => format!("remote-backed NodePort on node-{n}"),
            Target::ClusterIp => "ClusterIP".to_owned(),
            Target::Pod(n) => format!("pod-{n}-0"),
            Target::External(k) => format!("external-{k}"),
        };
        write!(f, "{} -> {to} {}/{}", self.from, self.protocol, self.port)
    }
}

/// TCP and UDP probes from `from` to `to` on `port`, both meant `meaning`.
pub fn both(from: Party, to: Target, port: u16, meaning: Meaning) -> [HostProbe; 2] {
    [Protocol::Tcp, Protocol::Udp].map(|p| HostProbe::new(from, to, p, port, meaning))
}

/// TCP and UDP probes meant answered.
pub fn answered(from: Party, to: Target, port: u16) -> [HostProbe; 2] {
    both(from, to, port, Meaning::Answered)
}

/// TCP and UDP probes meant dropped.
pub fn dropped(from: Party, to: Target, port: u16) -> [HostProbe; 2] {
    both(from, to, port, Meaning::Dropped)
}

/// One probe of `protocol`.
pub fn one(from: Party, to: Target, protocol: Protocol, port: u16, meaning: Meaning) -> HostProbe {
    HostProbe::new(from, to, protocol, port, meaning)
}

/// A TCP connection to hold across a step (see [`HostStep::hold`]).
pub fn tcp(from: Party, to: Target, port: u16) -> HostProbe {
    HostProbe::new(from, to, Protocol::Tcp, port, Meaning::Answered)
}
