//! Configuration of an [`EbpfDataplane`](crate::EbpfDataplane): where it pins, which
//! namespace it attaches in, map sizes, conntrack timeouts, the attachment modes and the flow
//! events' rate limits.

use std::path::PathBuf;
use std::time::Duration;

use crate::map_table::{self, Capacity, MapSpec};
use crate::maps::{EvRate, EV_KIND_DROP, EV_KIND_MAX, EV_KIND_NEW_CONN, EV_KIND_POLICY};

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
    /// the rules. Also the size of `dp_pol_tiers`, the cluster policies' and baseline's
    /// entries (per endpoint, direction and peer, one per port prefix of their rules).
    pub policy_rules: u32,
    /// NetworkPolicy: ipBlock prefixes (`dp_pol_blocks`), per local endpoint and direction;
    /// the cluster policies' and baseline's `networks` prefixes count here too.
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
    /// Host endpoint policy: prefixes (`dp_host_lpm`): per rule set, each distinct source
    /// and destination net, port prefix and failsafe port. A changed host policy is written
    /// under a new generation before the old one is removed: size it for twice the
    /// prefixes (the default holds two generations of 100,000 source prefixes and more).
    pub host_prefixes: u32,
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
            host_prefixes: map_table::HOST_LPM.default_size,
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
            Capacity::HostPrefixes => &mut self.host_prefixes,
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
            Capacity::HostPrefixes => self.host_prefixes,
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
    /// SCTP before its association is established: INIT, INIT-ACK, COOKIE-ECHO seen
    /// (netfilter's `COOKIE_WAIT` and `COOKIE_ECHOED`, `nf_conntrack_proto_sctp.c`).
    pub sctp_init: Duration,
    /// SCTP after a COOKIE-ACK (netfilter's `ESTABLISHED`; SCTP's heartbeats, every 30 s by
    /// default, keep an idle association's entries alive).
    pub sctp_established: Duration,
    /// SCTP after a SHUTDOWN or SHUTDOWN-ACK (netfilter's `SHUTDOWN_SENT`, `SHUTDOWN_RECD`,
    /// `SHUTDOWN_ACK_SENT`).
    pub sctp_shutdown: Duration,
    /// SCTP after an ABORT or SHUTDOWN-COMPLETE (netfilter's `CLOSED`).
    pub sctp_closed: Duration,
}

impl Default for CtTimeouts {
    fn default() -> Self {
        Self {
            tcp_syn: Duration::from_mins(1),
            tcp_established: Duration::from_hours(6),
            tcp_closing: Duration::from_secs(10),
            udp: Duration::from_secs(30),
            udp_stream: Duration::from_mins(2),
            // nf_conntrack_proto_sctp's sctp_timeouts[].
            sctp_init: Duration::from_secs(3),
            sctp_established: Duration::from_secs(210),
            sctp_shutdown: Duration::from_secs(3),
            sctp_closed: Duration::from_secs(10),
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
    /// The flow events' rate limits (checked by [`EventLimits::validate`] when the programs
    /// load; change them on a running dataplane with
    /// [`EbpfDataplane::set_event_limits`](crate::EbpfDataplane::set_event_limits)).
    pub events: EventLimits,
    /// L2 announcements: how long after the last refresh of its liveness the node still
    /// answers ARP and neighbour solicitations for announced addresses (Cilium's
    /// `l2_announcements_max_liveness`). Every sync and every
    /// [`Dataplane::maintain`](dataplane_core::Dataplane::maintain) refreshes it, and while
    /// addresses are announced
    /// [`Dataplane::maintenance_interval`](dataplane_core::Dataplane::maintenance_interval)
    /// is at most a third of it, so an embedder that runs `maintain()` on that interval keeps
    /// it fresh; a node whose embedder stopped (hung, crashed with the programs left
    /// attached) goes quiet after it. Default [`DEFAULT_L2_LIVENESS`].
    pub l2_liveness: Duration,
}

/// The default [`EbpfConfig::l2_liveness`]: 3 s, the value Cilium's own datapath test of the
/// responder uses (`l2_announcements_max_liveness`). It bounds how long a node whose agent
/// died keeps answering, and should stay well inside the lease the announcing node holds
/// (Cilium's defaults: a 15 s lease, a 5 s renew deadline, 2 s retries), so that a dead
/// agent's node is quiet before another node can take the lease over and clients that ask
/// meanwhile do not get two answers. A shorter window has `maintain()` run more often (a
/// third of the window; the calls between conntrack passes only refresh the liveness) and
/// makes a scheduling hiccup of the embedder more likely to silence the node for a moment; a
/// longer one keeps a dead agent's node answering longer.
pub const DEFAULT_L2_LIVENESS: Duration = Duration::from_secs(3);

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
            events: EventLimits::default(),
            l2_liveness: DEFAULT_L2_LIVENESS,
        }
    }
}

/// The rate limit of one kind of flow event: a token bucket of `burst` events refilled at
/// `rate` events per second, **per CPU** (the programs' buckets are per CPU: no atomics, no
/// contention), and for drops also per drop reason (a flood of one reason does not hide the
/// rare drops of another). An event over the limit is not written; the next one written
/// carries the count of those it stands for (`FlowEvent::suppressed`). The packets are never
/// affected. `0` for both is no limit, as in Cilium's
/// `--bpf-events-default-rate-limit`/`--bpf-events-default-burst-limit`: then the ring
/// buffer's size is the limit, and the events that find it full are counted as lost
/// ([`EventSource::lost`]).
///
/// [`EventSource::lost`]: dataplane_core::EventSource::lost
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventLimit {
    /// Events per second (at most 10^9, one per nanosecond); 0 (with a burst of 0): no limit.
    pub rate: u32,
    /// The most events written at once, after a quiet time (the bucket's size).
    pub burst: u32,
}

impl EventLimit {
    /// No limit.
    pub const UNLIMITED: Self = Self { rate: 0, burst: 0 };

    /// At most `burst` at once, refilled at `rate` per second.
    pub const fn per_second(rate: u32, burst: u32) -> Self {
        Self { rate, burst }
    }

    /// Whether this is no limit.
    pub const fn is_unlimited(self) -> bool {
        self.rate == 0 && self.burst == 0
    }

    /// The highest rate: one event per nanosecond (the programs refill one token every
    /// `10^9 / rate` ns).
    pub const MAX_RATE: u32 = 1_000_000_000;

    fn validate(self, field: &'static str) -> Result<(), EventLimitError> {
        match (self.rate, self.burst) {
            (0, 0) => Ok(()),
            (0, burst) => Err(EventLimitError::NoRate { field, burst }),
            (rate, 0) => Err(EventLimitError::NoBurst { field, rate }),
            (rate, _) if rate > Self::MAX_RATE => Err(EventLimitError::RateTooHigh { field, rate }),
            _ => Ok(()),
        }
    }

    fn rate(self) -> EvRate {
        EvRate {
            rate: self.rate,
            burst: self.burst,
        }
    }
}

/// The flow events' rate limits, per kind ([`EventLimit`]: per CPU, drops also per reason).
///
/// Defaults, with Cilium as the reference (its `--bpf-events-default-rate-limit` and
/// `--bpf-events-default-burst-limit`, one bucket for all of its events, default to 0: no
/// limit; it writes a trace only when a connection starts, at its default monitor
/// aggregation, and every drop):
/// - **drops: 1000 per second, burst 1000**, per CPU and reason. Unlike Cilium: a drop
///   costs the sender nothing and a flood of them (the 1 Mpps at the uplink) would
///   otherwise fill the ring at the flood's rate, cost the datapath a ring-buffer write per
///   dropped packet and the reader a decode per event, for records that all say the same;
///   every drop is still counted in the per-CPU drop counters (`Stats::drops`), limited or not.
/// - **new connections and policy verdicts: no limit**, as in Cilium: they are written only
///   when a reader asks for them ([`EventOptions`]), once per connection (never on the
///   established fast path), and a reader that asks wants each one; under more than the ring
///   holds, the ring's overflow is the limit and is counted as lost.
///
/// [`EventOptions`]: dataplane_core::EventOptions
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventLimits {
    /// Drop and reject events.
    pub drops: EventLimit,
    /// New-connection events (when a reader asks for them).
    pub new_connections: EventLimit,
    /// Policy-verdict events (when a reader asks for them).
    pub policy_verdicts: EventLimit,
}

impl Default for EventLimits {
    fn default() -> Self {
        Self {
            drops: EventLimit::per_second(1000, 1000),
            new_connections: EventLimit::UNLIMITED,
            policy_verdicts: EventLimit::UNLIMITED,
        }
    }
}

impl EventLimits {
    /// No limit on any kind.
    pub const UNLIMITED: Self = Self {
        drops: EventLimit::UNLIMITED,
        new_connections: EventLimit::UNLIMITED,
        policy_verdicts: EventLimit::UNLIMITED,
    };

    /// Checks each limit: a rate needs a burst and a burst a rate (0/0 is no limit), and a
    /// rate is at most [`EventLimit::MAX_RATE`].
    ///
    /// # Errors
    /// [`EventLimitError`] naming the first wrong field.
    pub fn validate(&self) -> Result<(), EventLimitError> {
        self.drops.validate("events.drops")?;
        self.new_connections.validate("events.new_connections")?;
        self.policy_verdicts.validate("events.policy_verdicts")
    }

    /// `dp_config.ev_limits`: the limits by `EV_KIND_*`.
    pub(crate) fn rates(&self) -> [EvRate; EV_KIND_MAX as usize] {
        let mut out = [EvRate::default(); EV_KIND_MAX as usize];
        out[usize::from(EV_KIND_DROP)] = self.drops.rate();
        out[usize::from(EV_KIND_NEW_CONN)] = self.new_connections.rate();
        out[usize::from(EV_KIND_POLICY)] = self.policy_verdicts.rate();
        out
    }
}

/// An [`EventLimits`] field that the programs cannot apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EventLimitError {
    /// A rate without a burst would write nothing: a burst of at least 1 is needed.
    #[error(
        "EbpfConfig.{field}: a rate of {rate}/s needs a burst of at least 1 (0/0 is no limit)"
    )]
    NoBurst {
        /// The field (`events.drops`, ...).
        field: &'static str,
        /// Its rate.
        rate: u32,
    },
    /// A burst without a rate would never refill.
    #[error(
        "EbpfConfig.{field}: a burst of {burst} needs a rate of at least 1/s (0/0 is no limit)"
    )]
    NoRate {
        /// The field.
        field: &'static str,
        /// Its burst.
        burst: u32,
    },
    /// More than one event per nanosecond.
    #[error("EbpfConfig.{field}: a rate of {rate}/s is above the highest, 1000000000/s")]
    RateTooHigh {
        /// The field.
        field: &'static str,
        /// Its rate.
        rate: u32,
    },
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

#[cfg(test)]
mod tests {
    use super::{EventLimit, EventLimitError, EventLimits};

    #[test]
    fn event_limits_are_checked_per_field() {
        assert_eq!(EventLimits::default().validate(), Ok(()));
        assert_eq!(EventLimits::UNLIMITED.validate(), Ok(()));
        let mut l = EventLimits {
            new_connections: EventLimit::per_second(10, 0),
            ..EventLimits::default()
        };
        assert_eq!(
            l.validate(),
            Err(EventLimitError::NoBurst {
                field: "events.new_connections",
                rate: 10
            })
        );
        l.new_connections = EventLimit::UNLIMITED;
        l.drops = EventLimit::per_second(0, 5);
        let err = l.validate().unwrap_err();
        assert_eq!(
            err,
            EventLimitError::NoRate {
                field: "events.drops",
                burst: 5
            }
        );
        assert!(err.to_string().contains("EbpfConfig.events.drops"), "{err}");
        l.drops = EventLimit::UNLIMITED;
        l.policy_verdicts = EventLimit::per_second(EventLimit::MAX_RATE + 1, 1);
        assert!(matches!(
            l.validate(),
            Err(EventLimitError::RateTooHigh {
                field: "events.policy_verdicts",
                ..
            })
        ));
        l.policy_verdicts = EventLimit::per_second(EventLimit::MAX_RATE, 1);
        assert_eq!(l.validate(), Ok(()));
    }

    #[test]
    fn rates_are_indexed_by_event_kind() {
        let l = EventLimits {
            drops: EventLimit::per_second(1, 2),
            new_connections: EventLimit::per_second(3, 4),
            policy_verdicts: EventLimit::UNLIMITED,
        };
        let r = l.rates();
        assert_eq!((r[0].rate, r[0].burst), (0, 0), "index 0 is no kind");
        assert_eq!((r[1].rate, r[1].burst), (1, 2));
        assert_eq!((r[2].rate, r[2].burst), (3, 4));
        assert_eq!((r[3].rate, r[3].burst), (0, 0));
    }
}
