//! Looking at a live node: what a dataplane has programmed, read from the kernel by a process
//! that does not own it (`dpctl status` beside a running agent).
//!
//! An [`Inspect`] implementation opens the kernel state a backend left (the eBPF backend's
//! pinned maps and links, the nftables table, the iptables chains) **read-only**: it never
//! loads, attaches, writes or flushes anything, so it is safe beside the agent that owns the
//! state. Each backend crate provides one (`dataplane_ebpf::LiveEbpf`,
//! `dataplane_iptables::LiveNetfilter`); the facade's `dataplane::inspect` picks it.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::dataplane::{Error, Flow, Stats};
use crate::events::{BoxEventSource, EventOptions};
use crate::model::{ObjectName, Protocol};

/// Reads what a dataplane programmed, without changing it.
pub trait Inspect {
    /// The backend, the hooks its programs or rules sit on, what is programmed, table fill
    /// levels, connection tracking and counters (drops by reason).
    ///
    /// # Errors
    /// [`Error::Kernel`] when the state cannot be read.
    fn status(&self) -> Result<NodeStatus, Error>;

    /// Every frontend with its backends, as programmed, with the service's name when the
    /// backend recorded it.
    ///
    /// # Errors
    /// [`Error::Kernel`] when the state cannot be read.
    fn services(&self) -> Result<Vec<LiveFrontend>, Error>;

    /// The tracked connections through service frontends.
    ///
    /// # Errors
    /// [`Error::Kernel`] when the state cannot be read.
    fn conntrack(&self) -> Result<Vec<Flow>, Error>;

    /// Opens a reader of the flow events the running dataplane emits. `options` are what this
    /// reader would like; an inspector never changes the running dataplane's settings, so it
    /// gets what the owner enabled (drops and rejects always).
    ///
    /// # Errors
    /// [`Error::Unsupported`] without an event source, [`Error::Kernel`] when it cannot open.
    fn events(&self, options: &EventOptions) -> Result<BoxEventSource, Error>;
}

/// What `dpctl status` shows.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    /// The backend's name (`ebpf`, `nftables`, `iptables`).
    pub dataplane: String,
    /// Where its programs or rules are hooked in.
    pub attachments: Vec<Attachment>,
    /// Services programmed (distinct service names, or service ids when names are unknown).
    pub services: u64,
    /// Frontends programmed (address, port, protocol).
    pub frontends: u64,
    /// Backends programmed, over all frontends (each counted once per service).
    pub backends: u64,
    /// Local endpoints (pods) the dataplane knows.
    pub endpoints: u64,
    /// NetworkPolicy rule sets programmed (per endpoint and direction, as the backend stores
    /// them).
    pub policies: u64,
    /// Fill level of each table with a capacity (eBPF maps; empty for netfilter).
    pub tables: Vec<TableFill>,
    /// Tracked connections (the backend's own conntrack, or the kernel's for ours).
    pub conntrack_entries: u64,
    /// Counters, with drops by reason where the backend counts them.
    pub stats: Stats,
}

/// One program or rule set hooked into the kernel.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    /// What is attached (a BPF program's name, a netfilter chain).
    pub program: String,
    /// The hook (`tc-ingress`, `tc-egress`, `xdp`, `cgroup-connect4`, `prerouting`...).
    pub hook: String,
    /// The interface or cgroup, when the hook has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// The fill level of one table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TableFill {
    /// The table (a BPF map's name).
    pub name: String,
    /// Entries in use.
    pub entries: u64,
    /// Capacity.
    pub capacity: u64,
}

impl TableFill {
    /// `entries` in % of `capacity` (0 for an empty capacity).
    #[allow(clippy::cast_precision_loss)] // a percentage for people: precision is ample
    pub fn percent(&self) -> f64 {
        if self.capacity == 0 {
            0.0
        } else {
            self.entries as f64 * 100.0 / self.capacity as f64
        }
    }
}

/// One programmed frontend and its backends, as read back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LiveFrontend {
    /// The service, when the backend recorded its name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ObjectName>,
    /// The frontend kind as the backend knows it (`ClusterIP`, `NodePort`, `LoadBalancer`,
    /// `ExternalIP`), when it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Frontend address and port (port 0: every port, the ClusterIP wildcard).
    pub address: SocketAddr,
    /// Protocol.
    pub protocol: Protocol,
    /// Backends new connections may use.
    pub backends: Vec<SocketAddr>,
}
