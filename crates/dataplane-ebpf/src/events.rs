//! Flow events: the reader of the `dp_events` ring buffer the programs write
//! (`bpf/lib/events.h`), decoding each `struct flow_event` into a core [`FlowEvent`].
//!
//! ```text
//!   programs ── bpf_ringbuf_reserve/submit ──▶ dp_events (pinned ring buffer)
//!                                                  │  epoll-able map fd
//!   EbpfEvents::read ◀── aya RingBuf ◀─────────────┘
//!        │ names: dp_names (service ids, pod addresses, the node)
//!        │ interface: ifindex in the node's netns (cached)
//!        ▼
//!   FlowEvent (wall-clock time = ktime + the CLOCK_MONOTONIC→CLOCK_REALTIME offset, taken
//!   at each read)
//! ```
//!
//! The ring buffer is one per node: two readers split its events between them. A full ring
//! drops events in the programs (never the packets), counted per CPU in `dp_ev_limit` and
//! reported by [`EventSource::lost`].

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use aya::maps::ring_buf::RingBuf;
use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData, PerCpuArray};
use dataplane_core::{
    Direction, DropReason, Error, EventKind, EventOptions, EventSource, EventVerdict, FlowEvent,
    L4Protocol, ObjectName, ObservationPoint, TcpFlags, Timestamp, Tuple,
};

use crate::error::EbpfError;
use crate::map_table::{self, MapSpec};
use crate::maps::{
    DpConfig, EvLimit, FlowEventRecord, NameKey, NameValue, AF_INET, AF_INET6, CFG_F_EV_NEW_CONN,
    CFG_F_EV_POLICY, DR_SLOTS, EV_DIR_ORIGINAL, EV_DIR_REPLY, EV_F_TRANSLATED, EV_KIND_DROP,
    EV_KIND_NEW_CONN, EV_KIND_POLICY, EV_LIMIT_SLOTS, EV_VERDICT_DROPPED, EV_VERDICT_FORWARDED,
    EV_VERDICT_POLICY_DENIED, EV_VERDICT_REJECTED, EV_VERDICT_TRANSLATED, POINTS,
};
use crate::netns;

/// The most interface names [`EbpfEvents`] keeps.
const INTERFACE_CACHE: usize = 1024;

/// A reader of the eBPF flow events ([`EventSource`]): from [`Dataplane::events`] or
/// [`open_pinned_events`]. Reading changes nothing in the kernel but the ring buffer's read
/// position. Needs Linux >= 5.8 (BPF ring buffer).
///
/// [`Dataplane::events`]: dataplane_core::Dataplane::events
pub struct EbpfEvents {
    ring: RingBuf<MapData>,
    names: BpfHashMap<MapData, NameKey, NameValue>,
    limits: PerCpuArray<MapData, EvLimit>,
    node: String,
    netns: Option<PathBuf>,
    /// Interface names by index, resolved once each in the node's namespace (at most
    /// [`INTERFACE_CACHE`]; pods' interfaces come and go).
    interfaces: HashMap<u32, Option<String>>,
    /// `CLOCK_REALTIME` - `CLOCK_MONOTONIC` at the last read, in ns: the programs stamp
    /// monotonic time, and the wall clock may be stepped meanwhile.
    clock_offset: i128,
    /// The programs' lost count (summed over CPUs and kinds) at open.
    lost_at_open: u64,
    /// Names looked up during the current [`EventSource::read`] call (emptied at its start):
    /// a batch of events names the same few services and pods over and over, and each
    /// lookup is a `bpf()` syscall. Never older than the batch, so a name changed by a sync
    /// shows from the next read on.
    batch_names: HashMap<NameKey, Option<NameValue>>,
    /// What this reader asked the programs to write (readers of [`Dataplane::events`]; none
    /// for [`open_pinned_events`]): withdrawn when it is dropped.
    ///
    /// [`Dataplane::events`]: dataplane_core::Dataplane::events
    _ask: Option<EventAsk>,
}

impl std::fmt::Debug for EbpfEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EbpfEvents")
            .field("node", &self.node)
            .field("netns", &self.netns)
            .finish_non_exhaustive()
    }
}

fn open_pinned(pin_dir: &Path, spec: &MapSpec) -> Result<MapData, EbpfError> {
    MapData::from_pin(spec.pin_path(pin_dir))
        .map_err(|e| EbpfError::map(spec.name, "opening the pinned map", e))
}

/// Opens the flow events of the dataplane pinned in `pin_dir` (its `dp_events`, `dp_names`
/// and `dp_ev_limit`) without changing anything: which events the programs
/// write stays as their owner set it (drops and rejects always). `netns` is the namespace
/// the programs are attached in, where interface indexes are resolved. For a read-only
/// inspector beside a running agent, and `dpctl flows`.
///
/// # Errors
/// [`EbpfError::Map`] when a map is not pinned there (nothing programmed, or a version
/// without events).
pub fn open_pinned_events(pin_dir: &Path, netns: Option<&Path>) -> Result<EbpfEvents, EbpfError> {
    let names: BpfHashMap<MapData, NameKey, NameValue> =
        BpfHashMap::try_from(Map::HashMap(open_pinned(pin_dir, &map_table::NAMES)?))
            .map_err(|e| EbpfError::map(map_table::NAMES.name, "opening", e))?;
    let node = names
        .get(&NameKey::node(), 0)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .filter(|n| !n.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .unwrap_or_default();
    EbpfEvents::open(pin_dir, netns, names, node)
}

impl EbpfEvents {
    fn open(
        pin_dir: &Path,
        netns: Option<&Path>,
        names: BpfHashMap<MapData, NameKey, NameValue>,
        node: String,
    ) -> Result<Self, EbpfError> {
        let ring = RingBuf::try_from(Map::RingBuf(open_pinned(pin_dir, &map_table::EVENTS)?))
            .map_err(|e| EbpfError::map(map_table::EVENTS.name, "opening", e))?;
        let limits = PerCpuArray::try_from(Map::PerCpuArray(open_pinned(
            pin_dir,
            &map_table::EV_LIMIT,
        )?))
        .map_err(|e| EbpfError::map(map_table::EV_LIMIT.name, "opening", e))?;
        let mut events = Self {
            ring,
            names,
            limits,
            node,
            netns: netns.map(Path::to_owned),
            interfaces: HashMap::new(),
            clock_offset: clock_offset(),
            lost_at_open: 0,
            batch_names: HashMap::new(),
            _ask: None,
        };
        events.lost_at_open = events.lost_total();
        Ok(events)
    }

    /// Opens the events of a dataplane whose node is `node` (for [`Dataplane::events`]).
    ///
    /// [`Dataplane::events`]: dataplane_core::Dataplane::events
    pub(crate) fn open_for(
        pin_dir: &Path,
        netns: Option<&Path>,
        node: String,
    ) -> Result<Self, EbpfError> {
        let names = BpfHashMap::try_from(Map::HashMap(open_pinned(pin_dir, &map_table::NAMES)?))
            .map_err(|e| EbpfError::map(map_table::NAMES.name, "opening", e))?;
        Self::open(pin_dir, netns, names, node)
    }

    /// This reader, holding `ask` for as long as it lives.
    pub(crate) fn with_ask(self, ask: EventAsk) -> Self {
        Self {
            _ask: Some(ask),
            ..self
        }
    }

    /// The node name the events carry.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Events the programs could not write since this reader opened (the ring was full),
    /// summed over the CPUs.
    fn lost_total(&self) -> u64 {
        (0..EV_LIMIT_SLOTS)
            .filter_map(|slot| self.limits.get(&slot, 0).ok())
            .map(|values| values.iter().map(|l| l.lost).sum::<u64>())
            .sum()
    }

    fn name(&mut self, key: &NameKey) -> Option<NameValue> {
        if let Some(v) = self.batch_names.get(key) {
            return *v;
        }
        let v = self.names.get(key, 0).ok();
        self.batch_names.insert(*key, v);
        v
    }

    fn endpoint(&mut self, ip: IpAddr) -> Option<ObjectName> {
        if ip.is_unspecified() {
            return None;
        }
        self.name(&NameKey::endpoint(ip))?.object_name()
    }

    fn interface(&mut self, ifindex: u32) -> Option<String> {
        if ifindex == 0 {
            return None;
        }
        if let Some(name) = self.interfaces.get(&ifindex) {
            return name.clone();
        }
        if self.interfaces.len() >= INTERFACE_CACHE {
            // Indexes of deleted interfaces are reused: start over rather than grow.
            self.interfaces.clear();
        }
        let name = netns::in_netns(self.netns.as_deref(), || Ok(interface_name(ifindex)))
            .ok()
            .flatten();
        self.interfaces.insert(ifindex, name.clone());
        name
    }

    /// The core event of record `r`; `None` for a kind this version does not know.
    fn decode(&mut self, r: &FlowEventRecord) -> Option<FlowEvent> {
        let kind = match r.kind {
            EV_KIND_DROP => EventKind::Drop,
            EV_KIND_NEW_CONN => EventKind::NewConnection,
            EV_KIND_POLICY => EventKind::PolicyVerdict,
            _ => return None,
        };
        let verdict = match r.verdict {
            EV_VERDICT_FORWARDED => EventVerdict::Forwarded,
            EV_VERDICT_TRANSLATED => EventVerdict::Translated,
            EV_VERDICT_REJECTED => EventVerdict::Rejected,
            EV_VERDICT_POLICY_DENIED => EventVerdict::PolicyDenied,
            EV_VERDICT_DROPPED => EventVerdict::Dropped,
            _ => return None,
        };
        let ip = |a: &crate::maps::Addr| match r.family {
            AF_INET | AF_INET6 => a.ip(r.family),
            // (a packet whose header did not parse: its addresses are unknown)
            _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        };
        let original = Tuple::new(
            SocketAddr::new(ip(&r.saddr), r.sport.get()),
            SocketAddr::new(ip(&r.daddr), r.dport.get()),
        );
        let translated = (r.flags & EV_F_TRANSLATED != 0).then(|| {
            Tuple::new(
                SocketAddr::new(ip(&r.nat_saddr), r.nat_sport.get()),
                SocketAddr::new(ip(&r.nat_daddr), r.nat_dport.get()),
            )
        });
        let time = i128::from(r.ktime_ns) + self.clock_offset;
        let protocol = L4Protocol::from_number(r.proto);
        let mut event = FlowEvent::new(
            Timestamp(u64::try_from(time.max(0)).unwrap_or(u64::MAX)),
            self.node.clone(),
            kind,
            verdict,
            protocol,
            original,
        );
        event.reason = DropReason::from_code(r.reason);
        event.point = point(r.point);
        event.direction = match r.direction {
            EV_DIR_ORIGINAL => Some(Direction::Original),
            EV_DIR_REPLY => Some(Direction::Reply),
            _ => None,
        };
        event.interface = self.interface(r.ifindex);
        event.translated = translated;
        if r.svc_id != 0 {
            event.service = self
                .name(&NameKey::service(r.svc_id))
                .and_then(|v| v.object_name());
        }
        // The backend as the packet was translated to (an id looked up now may name another
        // backend since).
        if r.backend_id != 0 {
            event.backend = translated.map(|t| t.destination);
        }
        if protocol == L4Protocol::Tcp {
            event.tcp_flags = Some(TcpFlags(r.tcp_flags));
        }
        event.source_endpoint = self.endpoint(original.source.ip());
        let destination = translated.map_or(original.destination, |t| t.destination);
        event.destination_endpoint = self.endpoint(destination.ip());
        event.suppressed = r.suppressed;
        Some(event)
    }
}

/// The observation point of a `PT_*` code (`maps.h`).
fn point(code: u8) -> Option<ObservationPoint> {
    Some(match code {
        1 => ObservationPoint::FromPod,
        2 => ObservationPoint::ToPod,
        3 => ObservationPoint::FromUplink,
        4 => ObservationPoint::ToUplink,
        5 => ObservationPoint::Xdp,
        6 => ObservationPoint::Socket,
        7 => ObservationPoint::FromHost,
        _ => return None,
    })
}

/// The name of interface `ifindex` in the calling thread's namespace.
fn interface_name(ifindex: u32) -> Option<String> {
    let mut buf = [0u8; libc::IF_NAMESIZE];
    // SAFETY: `buf` has IF_NAMESIZE writable bytes, what if_indextoname writes at most.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr().cast()) };
    if p.is_null() {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8(buf[..end].to_vec()).ok()
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; both clocks exist on Linux.
    unsafe { libc::clock_gettime(clock, &raw mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

/// `CLOCK_REALTIME` - `CLOCK_MONOTONIC` now, in ns (what `bpf_ktime_get_ns` is behind the wall
/// clock).
fn clock_offset() -> i128 {
    let mono = clock_ns(libc::CLOCK_MONOTONIC);
    let real = clock_ns(libc::CLOCK_REALTIME);
    let mono2 = clock_ns(libc::CLOCK_MONOTONIC);
    real - i128::midpoint(mono, mono2)
}

/// How many open readers of one dataplane asked for each optional kind of event.
#[derive(Debug, Default)]
pub(crate) struct EventAsks {
    new_connections: u32,
    policy_verdicts: u32,
}

impl EventAsks {
    /// `dp_config`'s `CFG_F_EV_*`: the kinds some reader wants.
    pub(crate) fn flags(&self) -> u32 {
        (if self.new_connections > 0 {
            CFG_F_EV_NEW_CONN
        } else {
            0
        }) | (if self.policy_verdicts > 0 {
            CFG_F_EV_POLICY
        } else {
            0
        })
    }

    fn count(&mut self, options: EventOptions, add: bool) {
        let step = |n: &mut u32, on: bool| {
            if on {
                *n = if add { *n + 1 } else { n.saturating_sub(1) };
            }
        };
        step(&mut self.new_connections, options.new_connections);
        step(&mut self.policy_verdicts, options.policy_verdicts);
    }
}

/// One reader's ask ([`EventAsks`]): counted while it lives, and `dp_config` rewritten when
/// it comes and goes.
#[derive(Debug)]
pub(crate) struct EventAsk {
    asks: Arc<Mutex<EventAsks>>,
    pin_dir: PathBuf,
    options: EventOptions,
}

impl EventAsk {
    /// Counts `options` in `asks` and writes the flags it makes into the dataplane's pinned
    /// `dp_config` (in `pin_dir`).
    pub(crate) fn new(
        asks: &Arc<Mutex<EventAsks>>,
        pin_dir: &Path,
        options: EventOptions,
    ) -> Result<Self, EbpfError> {
        let mut held = asks.lock().unwrap_or_else(PoisonError::into_inner);
        held.count(options, true);
        if let Err(e) = set_event_flags(pin_dir, held.flags()) {
            held.count(options, false);
            return Err(e);
        }
        Ok(Self {
            asks: Arc::clone(asks),
            pin_dir: pin_dir.to_owned(),
            options,
        })
    }
}

impl Drop for EventAsk {
    fn drop(&mut self) {
        let mut held = self.asks.lock().unwrap_or_else(PoisonError::into_inner);
        held.count(self.options, false);
        if let Err(e) = set_event_flags(&self.pin_dir, held.flags()) {
            // (after reset() nothing is pinned: the next sync writes the flags anyway)
            tracing::debug!(error = %e, "withdrawing a flow-event reader's ask");
        }
    }
}

/// Sets `flags` (`CFG_F_EV_*`) in the pinned `dp_config`, leaving its other fields as they
/// are: through the pin, as [`Dataplane::events`] holds only `&self` (and a reader's drop
/// nothing of the dataplane). The writer's mirror does not know; the next sync writes the
/// same flags, from the same [`EventAsks`].
///
/// [`Dataplane::events`]: dataplane_core::Dataplane::events
fn set_event_flags(pin_dir: &Path, flags: u32) -> Result<(), EbpfError> {
    let spec = &map_table::CONFIG;
    let data = MapData::from_pin(spec.pin_path(pin_dir))
        .map_err(|e| EbpfError::map(spec.name, "opening the pinned map", e))?;
    let mut config: Array<MapData, DpConfig> =
        Array::try_from(Map::Array(data)).map_err(|e| EbpfError::map(spec.name, "opening", e))?;
    let mut value = config
        .get(&0, 0)
        .map_err(|e| EbpfError::map(spec.name, "reading", e))?;
    let all = CFG_F_EV_NEW_CONN | CFG_F_EV_POLICY;
    let wanted = (value.flags & !all) | flags;
    if wanted != value.flags {
        value.flags = wanted;
        config
            .set(0, value, 0)
            .map_err(|e| EbpfError::map(spec.name, "writing", e))?;
    }
    Ok(())
}

/// `dp_drops` (`drops`, opened from its pin or the loaded objects) summed over the CPUs: by
/// reason, and per program and reason into `other` (`drops.<program>.<reason>`, the counters
/// that are not zero). For `Stats::drops` of the dataplane and of the live inspector.
pub(crate) fn drop_counters(
    drops: &PerCpuArray<MapData, u64>,
    other: &mut BTreeMap<String, u64>,
) -> Result<BTreeMap<DropReason, u64>, EbpfError> {
    let mut by_reason = BTreeMap::new();
    for (point, program) in POINTS {
        for slot in 0..DR_SLOTS {
            let index = u32::from(point) * DR_SLOTS + slot;
            let total: u64 = drops
                .get(&index, 0)
                .map_err(|e| EbpfError::map(map_table::DROPS.name, "reading", e))?
                .iter()
                .sum();
            if total == 0 {
                continue;
            }
            // Slot 0 holds the reasons the programs know no number of.
            let reason = u8::try_from(slot)
                .ok()
                .and_then(DropReason::from_code)
                .unwrap_or(DropReason::Unknown);
            *by_reason.entry(reason).or_insert(0) += total;
            *other
                .entry(format!("drops.{program}.{}", reason.name()))
                .or_insert(0) += total;
        }
    }
    Ok(by_reason)
}

impl EventSource for EbpfEvents {
    fn read(&mut self, out: &mut Vec<FlowEvent>, max: usize) -> Result<usize, Error> {
        self.clock_offset = clock_offset();
        self.batch_names.clear();
        let mut added = 0;
        while added < max {
            // Copied out, so that the item (which borrows the ring) is released first.
            let record = match self.ring.next() {
                Some(item) => FlowEventRecord::from_bytes(&item),
                None => break,
            };
            if let Some(event) = record.and_then(|r| self.decode(&r)) {
                out.push(event);
                added += 1;
            }
        }
        Ok(added)
    }

    fn wait(&mut self, timeout: Duration) -> Result<(), Error> {
        let mut fds = [libc::pollfd {
            fd: self.ring.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: `fds` is a valid array of one pollfd for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, ms) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(EbpfError::Map {
                    map: map_table::EVENTS.name,
                    operation: "waiting for events".to_owned(),
                    source: Box::new(e),
                }
                .into());
            }
        }
        Ok(())
    }

    fn readiness_fd(&self) -> Option<RawFd> {
        Some(self.ring.as_raw_fd())
    }

    fn lost(&self) -> u64 {
        self.lost_total().saturating_sub(self.lost_at_open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_follow_the_c_codes() {
        for (code, program) in crate::maps::POINTS {
            let p = point(code).expect("a known point");
            let expected = match program {
                "dp_from_pod" => ObservationPoint::FromPod,
                "dp_to_pod" => ObservationPoint::ToPod,
                "dp_from_uplink" => ObservationPoint::FromUplink,
                "dp_to_uplink" => ObservationPoint::ToUplink,
                "dp_xdp_uplink" => ObservationPoint::Xdp,
                "dp_sock" => ObservationPoint::Socket,
                _ => ObservationPoint::FromHost,
            };
            assert_eq!(p, expected, "{program}");
        }
        assert_eq!(point(0), None);
    }

    #[test]
    fn clock_offset_is_the_wall_clock() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let now = i128::try_from(now).unwrap();
        let estimate = clock_ns(libc::CLOCK_MONOTONIC) + clock_offset();
        assert!(
            (now - estimate).abs() < 1_000_000_000,
            "{now} vs {estimate}"
        );
    }

    #[test]
    fn names_round_trip_and_are_never_cut() {
        let n = ObjectName::new("default", "web");
        assert_eq!(NameValue::new(&n).unwrap().object_name(), Some(n));
        // 120 bytes exactly fit (no NUL needed); one more does not.
        let fits = ObjectName::new("ns", "a".repeat(crate::maps::NAME_LEN - 3));
        assert_eq!(NameValue::new(&fits).unwrap().object_name(), Some(fits));
        let long = ObjectName::new("ns", "é".repeat(60));
        assert_eq!(NameValue::new(&long), None);
    }
}
