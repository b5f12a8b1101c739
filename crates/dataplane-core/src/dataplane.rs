//! The [`Dataplane`] trait: one declarative, idempotent surface that every backend implements.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::diff::{diff, ChangeSet};
pub use crate::error::{error_chain, Error};
use crate::events::{BoxEventSource, DropReason, EventOptions};
use crate::model::{DesiredState, ObjectName, Protocol};
// Validation owns its findings (`Warning`): this module reports them.
pub use crate::validate::Warning;

/// A node networking dataplane: the kernel programming of one node's Services, NAT and policy.
///
/// Every implementation (eBPF, nftables, iptables, the in-memory fake) has the same contract:
///
/// - **Declarative and idempotent.** [`apply`](Dataplane::apply) makes the kernel match the
///   whole desired state (a full sync); applying the same state twice changes nothing the
///   second time. [`apply_changes`](Dataplane::apply_changes) applies a [`ChangeSet`] computed
///   by [`diff()`] from the last applied state. [`sync`](Dataplane::sync) does both for you: it
///   diffs, applies incrementally and falls back to a full sync when the backend asks for one.
/// - **Validated first.** A state that fails validation, needs a missing capability or does
///   not fit a capacity is refused ([`Error::Invalid`], [`Error::Unsupported`],
///   [`Error::CapacityExceeded`]) and the kernel is left exactly as it was.
/// - **After a failure, full.** After a failed apply that may have reached the kernel
///   ([`Error::Kernel`]) the next `apply_changes` answers [`Error::FullSyncRequired`] (or
///   falls back on its own); `sync` handles this. After a refusal (invalid, unsupported, over
///   capacity) the dataplane is as it was: it may accept changes from the state it applied
///   last, or ask for a full sync (the [`FakeDataplane`](crate::fake::FakeDataplane) always
///   asks, so that tests catch a caller that relies on more). A backend that keeps no copy of
///   the state may also answer a change that needs all of it (a change of the node) with
///   `FullSyncRequired`; it then changes nothing.
/// - **Maintained.** Some backends need periodic work (the eBPF backend expires its own
///   connection tracking): call [`maintain`](Dataplane::maintain) every
///   [`maintenance_interval`](Dataplane::maintenance_interval).
pub trait Dataplane {
    /// What this dataplane can program.
    fn capabilities(&self) -> Capabilities;
    /// Makes the kernel match `desired` (full sync).
    fn apply(&mut self, desired: &DesiredState) -> Result<ApplyReport, Error>;
    /// Applies an incremental change set, computed by [`diff()`] from the state applied last.
    fn apply_changes(&mut self, changes: &ChangeSet) -> Result<ApplyReport, Error>;
    /// Reads back what is programmed.
    fn observe(&self) -> Result<ObservedState, Error>;
    /// The connection-tracking view of service flows.
    fn flows(&self) -> Result<Vec<Flow>, Error>;
    /// Counters.
    fn stats(&self) -> Result<Stats, Error>;
    /// Removes everything this dataplane installed.
    fn reset(&mut self) -> Result<(), Error>;

    /// Moves the kernel from `previous` (the state this dataplane applied last, `None` when
    /// there is none) to `desired`: a [`diff()`] applied with
    /// [`apply_changes`](Dataplane::apply_changes), and a full [`apply`](Dataplane::apply)
    /// when there is no previous state or the backend answers [`Error::FullSyncRequired`]
    /// (after a failure, after a restart, or for a change it can only make with the whole
    /// state). Any other error is returned as is; keep `previous` then: after a kernel
    /// failure ([`Error::Kernel`]) the backend remembers it and the next `sync` is full, after
    /// a refusal nothing changed and the next `sync` starts from `previous` again.
    fn sync(
        &mut self,
        previous: Option<&DesiredState>,
        desired: &DesiredState,
    ) -> Result<ApplyReport, Error> {
        let Some(previous) = previous else {
            return self.apply(desired);
        };
        match self.apply_changes(&diff(previous, desired)) {
            Err(Error::FullSyncRequired) => self.apply(desired),
            other => other,
        }
    }

    /// Periodic work: garbage collection of expired connections and session-affinity
    /// entries, and whatever else the backend needs over time. `now` is the time on
    /// `CLOCK_MONOTONIC` (the clock BPF's `bpf_ktime_get_ns` reads); the facade's
    /// `monotonic_now()` returns it. Call it every
    /// [`maintenance_interval`](Dataplane::maintenance_interval); calling it more often is
    /// harmless. The default does nothing.
    fn maintain(&mut self, now: Duration) -> Result<MaintenanceReport, Error> {
        let _ = now;
        Ok(MaintenanceReport::default())
    }

    /// How often [`maintain`](Dataplane::maintain) should run; `None` when this dataplane
    /// needs no periodic work (the kernel's conntrack expires its own entries).
    fn maintenance_interval(&self) -> Option<Duration> {
        None
    }

    /// Starts reading [`FlowEvent`](crate::events::FlowEvent)s: drops and rejects always, new
    /// connections and policy verdicts as `options` ask: the kernel reports what any open
    /// reader asked for while that reader lives (a reader may so see more than it asked for;
    /// filter with [`EventFilter`](crate::events::EventFilter)). Each call opens another reader;
    /// the kernel buffer behind it may be single-consumer (the eBPF ring buffer: two readers
    /// split its events between them; an NFLOG group: a second reader is refused).
    ///
    /// # Errors
    /// [`Error::Unsupported`] when this dataplane has no event source (the default), or
    /// [`Error::Kernel`] when the source cannot be opened.
    fn events(&self, options: &EventOptions) -> Result<BoxEventSource, Error> {
        let _ = options;
        Err(Error::Unsupported {
            dataplane: self.capabilities().dataplane,
            feature: "flow events".to_owned(),
            object: "events()".to_owned(),
        })
    }
}

/// A dataplane that can move to another thread: what the facade's factory returns.
pub type BoxDataplane = Box<dyn Dataplane + Send>;

/// What a [`Dataplane::maintain`] call did.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MaintenanceReport {
    /// Connections expired.
    pub flows_expired: u64,
    /// Session-affinity entries expired.
    pub affinity_expired: u64,
    /// Connections still tracked after the run, when the backend counts them.
    pub flows_remaining: Option<u64>,
    /// Backend-specific counts by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub other: BTreeMap<String, u64>,
}

/// What a backend can do. A state that needs a missing capability is refused with
/// [`Error::Unsupported`], never silently ignored.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Capabilities {
    /// The dataplane's name, e.g. `ebpf`, `nftables`, `iptables`, `fake`.
    pub dataplane: String,
    /// Protocols the backend load-balances.
    pub protocols: BTreeSet<Protocol>,
    /// IPv6 services.
    pub ipv6: bool,
    /// Maglev backend selection.
    pub maglev: bool,
    /// ClientIP session affinity.
    pub session_affinity: bool,
    /// Direct server return for external traffic.
    pub dsr: bool,
    /// XDP fast path on the uplink.
    pub xdp: bool,
    /// Pod masquerade.
    pub masquerade: bool,
    /// Kubernetes NetworkPolicy enforcement.
    pub network_policy: bool,
    /// Weighted backends.
    pub weights: bool,
    /// Largest number of services (0: no fixed limit).
    pub max_services: u32,
    /// Largest number of backends over all services (0: no fixed limit).
    pub max_backends: u32,
    /// Cluster-wide ordered policy: cluster policies (AdminNetworkPolicy), the baseline and
    /// the peer nodes they select.
    #[serde(default)]
    pub cluster_policy: bool,
    /// Host endpoint policy: host endpoints and host policies (normal, pre-DNAT, untracked)
    /// with failsafe ports.
    #[serde(default)]
    pub host_policy: bool,
    /// L2 announcements: the node answers ARP/NDP for the LoadBalancer IPs and ExternalIPs of
    /// services with [`Service::l2_announce`](crate::Service::l2_announce).
    #[serde(default)]
    pub l2_announcements: bool,
}

impl Capabilities {
    /// Refuses `state` when it carries cluster policies, a baseline, host endpoints or host
    /// policies that these capabilities lack, naming the first such object: a backend calls
    /// it before it touches the kernel. Peer nodes and failsafe ports alone change nothing
    /// without the policies that use them and are accepted.
    ///
    /// ```
    /// use dataplane_core::{Capabilities, ClusterPolicy, DesiredState, Error, LabelSelector, Node};
    /// let state = DesiredState::new(Node::new("node-a", ["172.18.0.2".parse()?]))
    ///     .with_cluster_policy(ClusterPolicy::for_namespaces("deny", 5, LabelSelector::default()));
    /// let caps = Capabilities { dataplane: "mine".into(), ..Capabilities::default() };
    /// let err = caps.check_policy_tiers(&state).unwrap_err();
    /// assert!(matches!(err, Error::Unsupported { ref object, .. } if object == "cluster policy deny"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Unsupported`] naming the object and the feature.
    pub fn check_policy_tiers(&self, state: &DesiredState) -> Result<(), Error> {
        self.check_tier_objects(
            state.cluster_policies.iter().map(|p| p.name.as_str()),
            state.baseline_policy.is_some(),
            state.host_endpoints.iter().map(|e| e.name.as_str()),
            state.host_policies.iter().map(|p| p.name.as_str()),
        )
    }

    /// [`Capabilities::check_policy_tiers`] for the objects `changes` adds or changes (an
    /// `apply_changes`: removals are always accepted).
    ///
    /// # Errors
    /// [`Error::Unsupported`] naming the object and the feature.
    pub fn check_policy_tier_changes(&self, changes: &ChangeSet) -> Result<(), Error> {
        fn present<'a, T>(
            (name, change): (&'a String, &crate::diff::Change<T>),
        ) -> Option<&'a str> {
            change.current.is_some().then_some(name.as_str())
        }
        self.check_tier_objects(
            changes.cluster_policies.iter().filter_map(present),
            changes
                .baseline_policy
                .as_ref()
                .is_some_and(|c| c.current.is_some()),
            changes.host_endpoints.iter().filter_map(present),
            changes.host_policies.iter().filter_map(present),
        )
    }

    /// Refuses `state` when a service asks for [`Service::l2_announce`](crate::Service::l2_announce)
    /// and these capabilities lack [`Capabilities::l2_announcements`], naming the service.
    ///
    /// # Errors
    /// [`Error::Unsupported`] naming the service and the feature.
    pub fn check_l2_announcements(&self, state: &DesiredState) -> Result<(), Error> {
        self.check_l2_services(state.services.iter())
    }

    /// [`Capabilities::check_l2_announcements`] for the services `changes` adds or changes.
    ///
    /// # Errors
    /// [`Error::Unsupported`] naming the service and the feature.
    pub fn check_l2_announcement_changes(&self, changes: &ChangeSet) -> Result<(), Error> {
        self.check_l2_services(changes.services.values().filter_map(|c| c.current.as_ref()))
    }

    fn check_l2_services<'a>(
        &self,
        mut services: impl Iterator<Item = &'a crate::Service>,
    ) -> Result<(), Error> {
        if self.l2_announcements {
            return Ok(());
        }
        match services.find(|s| s.l2_announce) {
            Some(s) => Err(Error::Unsupported {
                dataplane: self.dataplane.clone(),
                feature: "L2 announcements".to_owned(),
                object: format!("service {}", s.name),
            }),
            None => Ok(()),
        }
    }

    fn check_tier_objects<'a>(
        &self,
        mut cluster_policies: impl Iterator<Item = &'a str>,
        baseline: bool,
        mut host_endpoints: impl Iterator<Item = &'a str>,
        mut host_policies: impl Iterator<Item = &'a str>,
    ) -> Result<(), Error> {
        let unsupported = |feature: &str, object: String| Error::Unsupported {
            dataplane: self.dataplane.clone(),
            feature: feature.to_owned(),
            object,
        };
        if !self.cluster_policy {
            const FEATURE: &str = "cluster-wide ordered policy";
            if let Some(name) = cluster_policies.next() {
                return Err(unsupported(FEATURE, format!("cluster policy {name}")));
            }
            if baseline {
                return Err(unsupported(FEATURE, "baseline policy".to_owned()));
            }
        }
        if !self.host_policy {
            const FEATURE: &str = "host endpoint policy";
            if let Some(name) = host_endpoints.next() {
                return Err(unsupported(FEATURE, format!("host endpoint {name}")));
            }
            if let Some(name) = host_policies.next() {
                return Err(unsupported(FEATURE, format!("host policy {name}")));
            }
        }
        Ok(())
    }
}

/// What an apply did.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyReport {
    /// Whether this was a full sync.
    pub full_sync: bool,
    /// Services of the desired state that this apply added or changed: those whose object
    /// differs from the one the last successful apply programmed (all of them on the first
    /// apply, none when a full sync finds every service as it was, none for a change of the
    /// node alone). The same on every dataplane ([`crate::counts`]).
    pub services_changed: usize,
    /// Services that were programmed before this apply and are gone now. The same on every
    /// dataplane.
    pub services_removed: usize,
    /// Backend-specific count of kernel objects written (map entries, rules, ...).
    pub objects_written: usize,
    /// Parts of the state this backend cannot program and left out; everything else was
    /// programmed. Empty when the whole state is in the kernel.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<Skipped>,
    /// Accepted settings worth a look (see [`crate::warnings`]), for the objects this apply
    /// looked at: all of them on a full sync, the changed ones on an incremental one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<Warning>,
}

/// A part of the desired state that a backend left unprogrammed because it lacks a capability
/// (an unsupported protocol, say). The rest of the state is programmed; an invalid state is
/// still refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Skipped {
    /// The object, as validation errors name it (`service default/web`).
    pub object: String,
    /// The field left out (`ports[1]`).
    pub field: String,
    /// What is missing, e.g. `SCTP`.
    pub feature: String,
    /// Why, in a few words.
    pub reason: String,
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {}: not programmed: {} ({})",
            self.object, self.field, self.feature, self.reason
        )
    }
}

/// A programmed service frontend, as read back from the kernel.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObservedFrontend {
    /// Frontend address and port.
    pub address: SocketAddr,
    /// Protocol.
    pub protocol: Protocol,
    /// Backends currently selectable for new connections.
    pub backends: BTreeSet<SocketAddr>,
}

/// What is programmed, read back from the kernel.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObservedState {
    /// Frontends and their backends.
    pub frontends: Vec<ObservedFrontend>,
}

/// One tracked connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Flow {
    /// Protocol.
    pub protocol: Protocol,
    /// Client address as it arrived.
    pub client: SocketAddr,
    /// Frontend the client addressed.
    pub frontend: SocketAddr,
    /// Backend chosen.
    pub backend: SocketAddr,
    /// Service, when known.
    pub service: Option<ObjectName>,
}

/// Counters.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    /// Packets translated to a backend.
    pub packets_translated: u64,
    /// Packets dropped by the dataplane.
    pub packets_dropped: u64,
    /// Packets rejected (RST / ICMP unreachable sent).
    pub packets_rejected: u64,
    /// Tracked connections.
    pub flows: u64,
    /// Packets dropped or rejected, by reason (the backends that can tell; the reasons add up
    /// to at most `packets_dropped + packets_rejected`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub drops: BTreeMap<DropReason, u64>,
    /// Backend-specific counters by name.
    pub other: std::collections::BTreeMap<String, u64>,
}
