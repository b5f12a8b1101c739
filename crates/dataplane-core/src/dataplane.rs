//! The [`Dataplane`] trait: one declarative, idempotent surface that every backend implements.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::diff::ChangeSet;
use crate::model::{DesiredState, ObjectName, Protocol};
use crate::validate::ValidationError;

/// A node networking backend.
///
/// `apply` is a full sync; `apply_changes` applies a [`ChangeSet`] computed by
/// [`crate::diff()`]. Both validate first: a rejected apply changes nothing in the kernel.
/// After any failed apply the next `apply_changes` must behave like a full sync (backends
/// remember this and return [`Error::FullSyncRequired`] or fall back on their own). A backend
/// that keeps no copy of the state may also answer a change that needs all of it (a change of
/// the node) with [`Error::FullSyncRequired`]; it then changes nothing.
pub trait Dataplane {
    /// What this backend can program.
    fn capabilities(&self) -> Capabilities;
    /// Makes the kernel match `desired` (full sync).
    fn apply(&mut self, desired: &DesiredState) -> Result<ApplyReport, Error>;
    /// Applies an incremental change set.
    fn apply_changes(&mut self, changes: &ChangeSet) -> Result<ApplyReport, Error>;
    /// Reads back what is programmed.
    fn observe(&self) -> Result<ObservedState, Error>;
    /// The connection-tracking view of service flows.
    fn flows(&self) -> Result<Vec<Flow>, Error>;
    /// Counters.
    fn stats(&self) -> Result<Stats, Error>;
    /// Removes everything this backend installed.
    fn reset(&mut self) -> Result<(), Error>;
}

/// What a backend can do. A state that needs a missing capability is refused with
/// [`Error::Unsupported`], never silently ignored.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Capabilities {
    /// Backend name, e.g. `ebpf`, `nftables`, `iptables`.
    pub backend: String,
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
}

/// What an apply did.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyReport {
    /// Whether this was a full sync.
    pub full_sync: bool,
    /// Services added or changed.
    pub services_changed: usize,
    /// Services removed.
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

/// An accepted setting that is probably not what the caller meant, or that scopes less than
/// it looks, naming object and field like a [`ValidationError`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Warning {
    /// The object (`service default/web`).
    pub object: String,
    /// The field (`clusterIPs[0]`).
    pub field: String,
    /// What is worth a look.
    pub message: String,
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}: {}", self.object, self.field, self.message)
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
    /// Backend-specific counters by name.
    pub other: std::collections::BTreeMap<String, u64>,
}

/// Errors of a [`Dataplane`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The desired state is invalid; nothing was changed.
    #[error("invalid desired state: {0}")]
    Invalid(#[from] ValidationError),
    /// The state needs something the backend cannot do; nothing was changed.
    #[error("{backend} backend does not support {feature} (needed by {object})")]
    Unsupported {
        /// Backend name.
        backend: String,
        /// The missing capability.
        feature: String,
        /// The object that needs it.
        object: String,
    },
    /// A capacity would be exceeded; nothing was changed.
    #[error("{what} is full: {needed} entries needed, capacity {capacity}")]
    CapacityExceeded {
        /// Which table.
        what: String,
        /// Entries the state needs.
        needed: usize,
        /// Configured capacity.
        capacity: usize,
    },
    /// `apply_changes` was called before a successful full `apply`, after a failure, or with a
    /// change the backend can only make with the whole state (it changed nothing): call
    /// `apply` with the new state.
    #[error("a full sync is required before incremental changes")]
    FullSyncRequired,
    /// The kernel (or a tool the backend drives) refused an operation.
    #[error("{backend}: {operation} failed")]
    Kernel {
        /// Backend name.
        backend: String,
        /// What was being done.
        operation: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

/// A client address as a backend saw it.
pub type PeerAddr = (IpAddr, u16);
