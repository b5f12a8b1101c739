//! Configuration of an [`EbpfDataplane`](crate::EbpfDataplane): where it pins, which
//! namespace it attaches in, map sizes, conntrack timeouts and the attachment modes.

use std::path::PathBuf;
use std::time::Duration;

use crate::map_table::{self, Capacity, MapSpec};

/// Map sizes. A state that does not fit is refused with [`Error::CapacityExceeded`] before
/// anything is written. Sizes apply when the maps are created; pinned maps keep their size.
///
/// [`Error::CapacityExceeded`]: dataplane_core::Error::CapacityExceeded
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capacities {
    /// Frontend entries (each ClusterIP/port, NodePort address/port, LB/External IP/port
    /// counts once, external ones twice, plus one per ClusterIP for unknown ports).
    pub services: u32,
    /// Distinct backends (address, port); id 0 is reserved.
    pub backends: u32,
    /// Backend slots: weighted copies for random selection, table entries for Maglev.
    pub backend_slots: u32,
    /// Conntrack entries (two per connection).
    pub conntrack: u32,
    /// Session-affinity entries.
    pub affinity: u32,
    /// loadBalancerSourceRanges entries.
    pub source_ranges: u32,
    /// Pod addresses on this node that the programs deliver to straight from their hook
    /// (`dp_local`); the pods beyond this are routed by the FIB.
    pub local: u32,
    /// Sockets balanced at `connect()` whose frontend is remembered for `getpeername()` and
    /// `recvmsg()` (socket-level load balancing only; an LRU: under more connects than this
    /// within a socket's life, an old socket's answers show the backend's address).
    pub socket_rev: u32,
    /// Maglev table size per frontend (prime).
    pub maglev_table_size: u32,
    /// NetworkPolicy: addresses policy knows (`dp_pol_addr`): the local endpoints' addresses,
    /// every address that is in a peer set, and the node's addresses.
    pub policy_addresses: u32,
    /// NetworkPolicy: rule entries (`dp_pol_rules`): per local endpoint and direction, one
    /// per (peer, protocol, port prefix); a port range takes up to 30 prefixes. A new process
    /// rewrites them all under new numbers before it removes the old ones: size it for twice
    /// the rules.
    pub policy_rules: u32,
    /// NetworkPolicy: ipBlock prefixes (`dp_pol_blocks`), per local endpoint and direction.
    pub policy_blocks: u32,
    /// NetworkPolicy's conntrack (`dp_pol_ct`): two entries per connection of a local pod.
    pub policy_conntrack: u32,
    /// NetworkPolicy: how many peer sets (distinct peer selectors of the policies) one
    /// address may be in, at most 32 (`POL_SETS_MAX`, the per-packet loop's bound). The
    /// per-connection cost grows with it.
    pub policy_sets_per_address: u32,
    /// Size in bytes of the flow-event ring buffer (`dp_events`): a power of two multiple of
    /// the page size (1 MiB by default, about 9000 events). A reader slower than the events
    /// loses the ones that find it full ([`EventSource::lost`]).
    ///
    /// [`EventSource::lost`]: dataplane_core::EventSource::lost
    pub events_ring_bytes: u32,
    /// Names the events resolve (`dp_names`): one per service port and per pod address
    /// (local endpoints and policy peers).
    pub names: u32,
}

impl Default for Capacities {
    fn default() -> Self {
        Self {
            services: map_table::SVC.default_size,
            backends: map_table::BACKENDS.default_size,
            backend_slots: map_table::SLOTS.default_size,
            conntrack: map_table::CT.default_size,
            affinity: map_table::AFFINITY.default_size,
            source_ranges: map_table::SRC_RANGES.default_size,
            local: map_table::LOCAL.default_size,
            socket_rev: map_table::SOCK_REV.default_size,
            maglev_table_size: dataplane_core::DEFAULT_MAGLEV_TABLE_SIZE,
            policy_addresses: map_table::POL_ADDR.default_size,
            policy_rules: map_table::POL_RULES.default_size,
            policy_blocks: map_table::POL_BLOCKS.default_size,
            policy_conntrack: map_table::POL_CT.default_size,
            policy_sets_per_address: crate::maps::POL_SETS_MAX as u32,
            events_ring_bytes: map_table::EVENTS.default_size,
            names: map_table::NAMES.default_size,
        }
    }
}

impl Capacities {
    fn field(&mut self, capacity: Capacity) -> &mut u32 {
        match capacity {
            Capacity::Services => &mut self.services,
            Capacity::Backends => &mut self.backends,
            Capacity::BackendSlots => &mut self.backend_slots,
            Capacity::Conntrack => &mut self.conntrack,
            Capacity::Affinity => &mut self.affinity,
            Capacity::SourceRanges => &mut self.source_ranges,
            Capacity::Local => &mut self.local,
            Capacity::SocketRev => &mut self.socket_rev,
            Capacity::PolicyAddresses => &mut self.policy_addresses,
            Capacity::PolicyRules => &mut self.policy_rules,
            Capacity::PolicyBlocks => &mut self.policy_blocks,
            Capacity::PolicyConntrack => &mut self.policy_conntrack,
            Capacity::EventsRing => &mut self.events_ring_bytes,
            Capacity::Names => &mut self.names,
        }
    }

    /// The size `map` is created with: its capacity, or the object's own size.
    pub(crate) fn size_of(&self, map: &MapSpec) -> u32 {
        let Some(c) = map.capacity else {
            return map.default_size;
        };
        match c {
            Capacity::Services => self.services,
            Capacity::Backends => self.backends,
            Capacity::BackendSlots => self.backend_slots,
            Capacity::Conntrack => self.conntrack,
            Capacity::Affinity => self.affinity,
            Capacity::SourceRanges => self.source_ranges,
            Capacity::Local => self.local,
            Capacity::SocketRev => self.socket_rev,
            Capacity::PolicyAddresses => self.policy_addresses,
            Capacity::PolicyRules => self.policy_rules,
            Capacity::PolicyBlocks => self.policy_blocks,
            Capacity::PolicyConntrack => self.policy_conntrack,
            Capacity::EventsRing => self.events_ring_bytes,
            Capacity::Names => self.names,
        }
    }

    /// Records the size a pinned `map` really has (maps keep the size they were created with).
    pub(crate) fn set_size(&mut self, map: &MapSpec, size: u32) {
        if let Some(c) = map.capacity {
            *self.field(c) = size;
        }
    }
}

/// Conntrack timeouts applied by [`Dataplane::maintain`] (see [`maintenance_interval`] for
/// how often it should run).
///
/// [`Dataplane::maintain`]: dataplane_core::Dataplane::maintain
/// [`maintenance_interval`]: crate::maintenance_interval
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CtTimeouts {
    /// TCP before a reply was seen.
    pub tcp_syn: Duration,
    /// TCP after a reply was seen.
    pub tcp_established: Duration,
    /// TCP after a RST or FIN in both directions.
    pub tcp_closing: Duration,
    /// UDP before a reply was seen.
    pub udp: Duration,
    /// UDP after a reply was seen.
    pub udp_stream: Duration,
}

impl Default for CtTimeouts {
    fn default() -> Self {
        Self {
            tcp_syn: Duration::from_mins(1),
            tcp_established: Duration::from_hours(6),
            tcp_closing: Duration::from_secs(10),
            udp: Duration::from_secs(30),
            udp_stream: Duration::from_mins(2),
        }
    }
}

/// Configuration of an [`EbpfDataplane`](crate::EbpfDataplane).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EbpfConfig {
    /// bpffs directory for pinned maps and links; a new dataplane on the same directory adopts
    /// them.
    pub pin_dir: PathBuf,
    /// Network namespace (`/run/netns/NAME`) whose interfaces to attach to; `None`: current.
    pub netns: Option<PathBuf>,
    /// Map sizes.
    pub capacities: Capacities,
    /// Conntrack timeouts.
    pub timeouts: CtTimeouts,
    /// Leave programs attached (pinned) when the dataplane is dropped, so traffic keeps
    /// flowing until a new process adopts them.
    pub keep_attachments_on_drop: bool,
    /// TCX, clsact, or TCX with clsact fallback.
    pub attach_mode: AttachMode,
    /// The XDP fast path on the uplink (`Off` by default): NodePort/LoadBalancer/ExternalIP
    /// packets for backends on other nodes are translated (DSR or SNAT) and sent back out at
    /// XDP; everything else passes to the TC programs untouched.
    pub xdp: XdpMode,
    /// Socket-level load balancing (`None`, off, by default): a cgroup v2 directory (for
    /// example the one holding the pods, or the hierarchy's root) whose processes get a
    /// service backend at `connect()` instead of having every packet translated. A connected
    /// socket (TCP, connected UDP) to a ClusterIP, or to a NodePort/LoadBalancer/ExternalIP
    /// frontend, is connected to a backend directly; `getpeername()` and `recvmsg()` still
    /// show the frontend. Such connections have no conntrack entry (they are not in
    /// [`Dataplane::flows`]) and keep their backend until they close, also when it stops
    /// being an endpoint. Unconnected UDP, ClientIP affinity, source ranges, SNAT and DSR
    /// services, and frontends without eligible backends stay with the TC programs.
    ///
    /// [`Dataplane::flows`]: dataplane_core::Dataplane::flows
    pub socket_lb_cgroup: Option<PathBuf>,
    /// Host routing (off by default): a TCP/UDP packet from a pod to another pod on this node
    /// that needs no translation is redirected to that pod's veth by `dp_from_pod`, as
    /// translated packets are, instead of going through the node's IP forwarding and
    /// netfilter (Cilium's BPF host routing does the same). Leave it off when something else
    /// filters pod-to-pod traffic in the node's netfilter. With socket-level load balancing
    /// it takes the service connections to local backends as well.
    pub host_routing: bool,
}

impl EbpfConfig {
    /// Defaults with `pin_dir`.
    pub fn new(pin_dir: impl Into<PathBuf>) -> Self {
        Self {
            pin_dir: pin_dir.into(),
            netns: None,
            capacities: Capacities::default(),
            timeouts: CtTimeouts::default(),
            keep_attachments_on_drop: false,
            attach_mode: AttachMode::Auto,
            xdp: XdpMode::Off,
            socket_lb_cgroup: None,
            host_routing: false,
        }
    }
}

/// How programs are attached to interfaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttachMode {
    /// TCX links (Linux >= 6.6), falling back to clsact filters when TCX is refused.
    #[default]
    Auto,
    /// TCX links only (pinned, so they survive a restart).
    Tcx,
    /// clsact filters over netlink only (for kernels without TCX). They cannot be pinned: a
    /// restarted process finds them through marker directories in the pin directory and
    /// replaces their program in place (same priority and handle).
    Clsact,
}

/// Whether and how the XDP fast path is attached to the uplink (Linux >= 5.9 for XDP links).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum XdpMode {
    /// No XDP program: TC handles everything (the default).
    #[default]
    Off,
    /// Driver (native) mode; attaching fails when the driver has no XDP support.
    Native,
    /// Generic (skb) mode: works on every interface, after the skb is built.
    Generic,
    /// Driver mode, falling back to generic mode when the driver refuses it.
    Auto,
}

impl XdpMode {
    /// Whether an XDP program is loaded and attached.
    pub fn is_on(self) -> bool {
        self != XdpMode::Off
    }
}
