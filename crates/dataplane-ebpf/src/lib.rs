//! eBPF backend of the `dataplane` crate: Kubernetes Services in TC programs written in C
//! (`bpf/`), loaded with aya, with our own conntrack in pinned maps so that connections
//! survive an agent restart.
//!
//! ```text
//!            pod netns                     node netns                       other nodes
//!   [pod] --veth--> (host side) --TC ingress: dp_from_pod-->  stack/redirect --> eth0
//!                                 eth0 --XDP: dp_xdp_uplink (optional, EbpfConfig::xdp)
//!                                                        eth0 --TC ingress: dp_from_uplink
//!                                   host stack --> eth0 --TC egress:  dp_to_uplink
//!                                   host stack --> lo   --TC egress:  dp_to_lo (own NodePorts)
//! ```
//!
//! Needs Linux >= 6.6 for TCX (older kernels fall back to clsact filters, which cannot be
//! pinned), BTF, bpffs, and root (`CAP_BPF` + `CAP_NET_ADMIN`).
//!
//! ```no_run
//! use dataplane_core::Dataplane;
//! use dataplane_ebpf::{EbpfConfig, EbpfDataplane};
//! # fn state() -> dataplane_core::DesiredState { unimplemented!() }
//! let mut dp = EbpfDataplane::new(EbpfConfig::new("/sys/fs/bpf/dataplane"))?;
//! dp.apply(&state())?;
//! for flow in dp.flows()? {
//!     println!("{} -> {} -> {}", flow.client, flow.frontend, flow.backend);
//! }
//! # Ok::<(), dataplane_core::Error>(())
//! ```
#![warn(missing_docs)]
#![allow(unsafe_code)] // aya::Pod impls for the map mirror only; each has a SAFETY comment.

mod backends;
mod batch;
mod error;
mod loader;
mod loopback;
// The Rust mirror of `bpf/lib/maps.h`: public for the BTF layout test and the tests that
// write conntrack entries themselves, not part of the embedder's API (hidden).
#[doc(hidden)]
pub mod maps;
mod mmap;
mod netns;
mod plan;
mod writer;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aya::programs::{TestRun, TestRunOptions};
use dataplane_core::{
    ApplyReport, Capabilities, ChangeSet, Dataplane, DesiredState, Error, Flow, HealthCheck,
    Incremental, MaintenanceReport, ObjectName, ObservedFrontend, ObservedState, Protocol, Stats,
    Validator,
};

pub use error::EbpfError;
pub use loader::{AttachMode, XdpMode};
// Public for the tests and benches (which are separate crates), not for embedders: hidden
// from the docs and outside the API this crate keeps stable. The compiled objects and the
// program names are for the BTF layout and socket tests; `Hook` names the program that
// `EbpfDataplane::run_packet` runs.
#[doc(hidden)]
pub use loader::{
    floor_object, sock_object, tc_host_object, tc_pod_object, xdp_uplink_object, Hook,
    SOCK_PROGRAMS,
};

use crate::loader::{Maps, Objects};
use crate::maps::{
    CtEntry, CtKey, LocalKey, LocalValue, CT_F_DSR, CT_F_MASQ, CT_F_SNAT, CT_TCP_FIN_FWD,
    CT_TCP_FIN_REV, CT_TCP_REPLY, CT_TCP_RST, SCOPE_EXTERNAL_INSIDE,
    SCOPE_RETIRED_INTERNAL_OUTSIDE, STAT_DROPPED, STAT_NAMES, STAT_REJECTED, STAT_TRANSLATED,
    SVC_F_WILDCARD,
};
use crate::plan::BACKEND;
use crate::writer::Current;

/// Map sizes. A state that does not fit is refused with [`Error::CapacityExceeded`] before
/// anything is written. Sizes apply when the maps are created; pinned maps keep their size.
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
    /// Sockets balanced at `connect()` whose frontend is remembered for `getpeername()` and
    /// `recvmsg()` (socket-level load balancing only; an LRU: under more connects than this
    /// within a socket's life, an old socket's answers show the backend's address).
    pub socket_rev: u32,
    /// Maglev table size per frontend (prime).
    pub maglev_table_size: u32,
}

impl Default for Capacities {
    fn default() -> Self {
        Self {
            services: 65_536,
            backends: 65_536,
            backend_slots: 1 << 21,
            conntrack: 262_144,
            affinity: 65_536,
            source_ranges: 4_096,
            socket_rev: 262_144,
            maglev_table_size: dataplane_core::DEFAULT_MAGLEV_TABLE_SIZE,
        }
    }
}

/// Conntrack timeouts applied by [`Dataplane::maintain`] (see [`maintenance_interval`] for
/// how often it should run).
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

/// Configuration of an [`EbpfDataplane`].
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

/// The shortest interval [`Dataplane::maintenance_interval`] answers: a timeout of a second
/// or less is not worth a scan of the conntrack table more often than this.
pub const MIN_MAINTENANCE_INTERVAL: Duration = Duration::from_secs(1);

/// The longest interval [`Dataplane::maintenance_interval`] answers: Cilium's conntrack GC
/// starts at this interval (`ConntrackGCStartingInterval`) before it adapts.
pub const MAX_MAINTENANCE_INTERVAL: Duration = Duration::from_mins(5);

/// How often [`Dataplane::maintain`] should run with conntrack `timeouts`: half the shortest
/// timeout, clamped to [`MIN_MAINTENANCE_INTERVAL`]..=[`MAX_MAINTENANCE_INTERVAL`].
///
/// An entry idle for its timeout `t` is removed by the first pass after that, so it lives at
/// most `t` plus one interval: with half the shortest timeout, 1.5 × `t` for the shortest
/// one and less for the others. The defaults give 5 s (half of `tcp_closing`, 10 s).
/// Cilium's conntrack GC (`pkg/maps/ctmap/gc`, `calculateIntervalWithConfig`) adapts its
/// interval to the share of entries each pass deletes instead (from 5 min, between 10 s and
/// 12 h for LRU maps): for it a late pass mostly costs memory. Ours (`dp_ct`) is LRU too, but
/// the datapath never looks at a conntrack entry's age: a flow keeps its translation (its
/// backend) until a pass removes the entry, so the timeouts hold only as closely as the passes
/// follow them, and the interval follows the timeouts rather than the table's churn. A pass
/// reads the table in batches: its cost follows the tracked connections, not the map's size.
/// Session-affinity timeouts do not count: the datapath checks an affinity entry's age itself
/// (a pass only frees the memory of expired ones).
pub fn maintenance_interval(timeouts: &CtTimeouts) -> Duration {
    let shortest = [
        timeouts.tcp_syn,
        timeouts.tcp_established,
        timeouts.tcp_closing,
        timeouts.udp,
        timeouts.udp_stream,
    ]
    .into_iter()
    .min()
    .unwrap_or(MAX_MAINTENANCE_INTERVAL);
    (shortest / 2).clamp(MIN_MAINTENANCE_INTERVAL, MAX_MAINTENANCE_INTERVAL)
}

/// What one [`EbpfDataplane::gc`] pass removed ([`Dataplane::maintain`] reports it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct GcReport {
    /// Connections expired (forward entries; their reverse entries go with them).
    pub expired: usize,
    /// Reverse entries whose forward entry was gone.
    pub orphans: usize,
    /// Session-affinity entries expired.
    pub affinity_expired: usize,
    /// Connections still tracked.
    pub remaining: usize,
}

/// Result of running one packet through a program with `BPF_PROG_TEST_RUN`. For tests and
/// benches only (hidden, like [`EbpfDataplane::run_packet`]).
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketRun {
    /// TC verdict (`TC_ACT_OK` 0, `TC_ACT_SHOT` 2, `TC_ACT_REDIRECT` 7), or for
    /// [`Hook::Xdp`] the XDP one (`XDP_PASS` 2, `XDP_TX` 3, `XDP_REDIRECT` 4).
    pub verdict: u32,
    /// The packet as the program left it.
    pub output: Vec<u8>,
    /// Kernel-measured run time.
    pub duration: Duration,
}

/// Checks that this system can run the eBPF backend: root, kernel BTF and bpffs.
pub fn is_supported() -> Result<(), EbpfError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(EbpfError::NotSupported {
            reason: "needs root (CAP_BPF and CAP_NET_ADMIN)".to_owned(),
        });
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Err(EbpfError::NotSupported {
            reason: "kernel has no BTF (/sys/kernel/btf/vmlinux missing)".to_owned(),
        });
    }
    ensure_bpffs(Path::new("/sys/fs/bpf"))
}

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Mounts bpffs at `dir` when nothing is mounted there yet.
fn ensure_bpffs(dir: &Path) -> Result<(), EbpfError> {
    let is_bpffs =
        |p: &Path| nix::sys::statfs::statfs(p).is_ok_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC);
    if is_bpffs(dir) {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|source| EbpfError::Pin {
        path: dir.to_owned(),
        source,
    })?;
    nix::mount::mount(
        Some("bpffs"),
        dir,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| EbpfError::Pin {
        path: dir.to_owned(),
        source: e.into(),
    })
}

/// The current `CLOCK_MONOTONIC` time, the clock `bpf_ktime_get_ns` uses.
pub fn monotonic_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC) cannot fail");
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

/// The eBPF [`Dataplane`].
#[derive(Debug)]
pub struct EbpfDataplane {
    config: EbpfConfig,
    objects: Option<Objects>,
    current: Option<Current>,
    /// The applied state without its services: no copy of those is kept (at 10k services
    /// that is most of the state). The planner keeps what each service holds in the maps,
    /// `health` what its health check answers.
    applied: Option<DesiredState>,
    /// What the applied state's objects claim, for change sets validated in proportion to
    /// their size.
    validator: Option<Validator>,
    planner: Option<plan::Planner>,
    /// After a failed sync (no planner): the fingerprints of the services the last successful
    /// one programmed, which the next sync's counts compare with.
    programmed_before: Option<plan::Fingerprints>,
    /// Health checks of the applied services that have one.
    health: BTreeMap<ObjectName, HealthCheck>,
}

impl EbpfDataplane {
    /// Loads the programs, creating or adopting the maps and links pinned in
    /// `config.pin_dir`. Adopted links get the new programs right away; call
    /// [`Dataplane::apply`] next to reconcile the maps with the desired state.
    pub fn new(config: EbpfConfig) -> Result<Self, EbpfError> {
        if config.pin_dir.starts_with("/sys/fs/bpf") {
            ensure_bpffs(Path::new("/sys/fs/bpf"))?;
        }
        let mut dp = Self {
            config,
            objects: None,
            current: None,
            applied: None,
            validator: None,
            planner: None,
            programmed_before: None,
            health: BTreeMap::new(),
        };
        dp.load()?;
        Ok(dp)
    }

    fn load(&mut self) -> Result<(), EbpfError> {
        let xdp = self.config.xdp.is_on();
        let sock = self.config.socket_lb_cgroup.clone();
        let mut objects = loader::load(
            &self.config.pin_dir,
            &self.config.capacities,
            xdp,
            sock.is_some(),
        )?;
        if objects.capacities != self.config.capacities {
            tracing::info!(
                configured = ?self.config.capacities,
                pinned = ?objects.capacities,
                "pinned maps keep their sizes; reset() to resize"
            );
        }
        let mut current = Current::read(&objects.maps, &objects.capacities)?;
        // Reading the arrays mapped each chunk that holds entries (~3 MiB at 10k x 10): kept
        // mapped, they would stay resident for the life of the process.
        objects.maps.unmap_arrays();
        // Host routing is this process's setting, not the state's: a dp_config pinned by an
        // earlier process must not keep its setting until the first apply.
        let flags = if self.config.host_routing {
            current.config.flags | maps::CFG_F_HOST_ROUTING
        } else {
            current.config.flags & !maps::CFG_F_HOST_ROUTING
        };
        if flags != current.config.flags {
            let mut config = current.config;
            config.flags = flags;
            objects
                .maps
                .config
                .set(0, config, 0)
                .map_err(|e| EbpfError::map("dp_config", "writing", e))?;
            current.config = config;
        }
        let mut pinned = Objects::pinned_links(&self.config.pin_dir);
        if !xdp {
            // An XDP link an earlier process left is no longer wanted: without its pin nothing
            // holds it and the kernel detaches it.
            for (ifname, _) in pinned.iter().filter(|(_, h)| *h == Hook::Xdp) {
                Objects::remove_pinned_xdp(&self.config.pin_dir, ifname)?;
            }
            pinned.retain(|(_, h)| *h != Hook::Xdp);
        }
        if !pinned.is_empty() {
            let pin_dir = self.config.pin_dir.clone();
            let mode = self.config.attach_mode;
            let xdp_mode = self.config.xdp;
            let objs = &mut objects;
            netns::in_netns(self.config.netns.as_deref(), move || {
                for (ifname, hook) in pinned {
                    if let Err(e) = objs.attach(&pin_dir, &ifname, hook, mode, xdp_mode) {
                        tracing::warn!(interface = %ifname, error = %e, "could not adopt pinned link");
                    }
                }
                Ok(())
            })?;
        }
        // Last: nothing after it can fail and leave the socket hooks attached with no owner
        // (attach_sock detaches what it attached when it fails itself).
        match &sock {
            Some(cgroup) => objects.attach_sock(&self.config.pin_dir, cgroup)?,
            None => loader::remove_pinned_sock(&self.config.pin_dir)?,
        }
        self.objects = Some(objects);
        self.current = Some(current);
        Ok(())
    }

    /// The configuration.
    pub fn config(&self) -> &EbpfConfig {
        &self.config
    }

    fn parts(&mut self) -> Result<(&mut Objects, &mut Current), Error> {
        if self.objects.is_none() {
            self.load()?;
        }
        match (self.objects.as_mut(), self.current.as_mut()) {
            (Some(o), Some(c)) => Ok((o, c)),
            _ => unreachable!("load() sets both"),
        }
    }

    fn maps(&self) -> Result<&Maps, Error> {
        self.objects.as_ref().map(|o| &o.maps).ok_or_else(|| {
            EbpfError::NotSupported {
                reason: "the dataplane was reset; apply a state first".to_owned(),
            }
            .into()
        })
    }

    /// Interfaces and hooks `state` needs.
    fn wanted_attachments(state: &DesiredState, xdp: XdpMode) -> BTreeSet<(String, Hook)> {
        let mut out = BTreeSet::new();
        let uplink = state.node.interfaces.uplink.clone();
        if xdp.is_on() {
            out.insert((uplink.clone(), Hook::Xdp));
        }
        out.insert((uplink.clone(), Hook::FromUplink));
        out.insert((uplink, Hook::ToUplink));
        out.insert((LOOPBACK.to_owned(), Hook::ToLo));
        for e in &state.endpoints {
            out.insert((e.interface.clone(), Hook::FromPod));
        }
        out
    }

    /// Programs `desired` (`None`: `rest`), which the caller has validated (and checked as
    /// supported), and keeps `rest` (`desired` without its services) as the applied state.
    /// With `changes` (what differs from the applied state; not the node) it is an
    /// incremental sync that plans only the services they touch.
    ///
    /// `services_changed`/`services_removed` compare with the services of the last
    /// successful sync: when this one fails, their fingerprints stay in `programmed_before`
    /// for the next one (the planner itself is dropped: the maps are unknown to it).
    fn sync(
        &mut self,
        desired: Option<&DesiredState>,
        rest: DesiredState,
        changes: Option<&ChangeSet>,
    ) -> Result<ApplyReport, Error> {
        let to_plan = desired.unwrap_or(&rest);
        let maglev = self.config.capacities.maglev_table_size;
        // Taken: if anything below fails the maps are unknown to the planner and the next
        // sync plans afresh.
        let previous = self.planner.take();
        let before_failure = self.programmed_before.take();
        match (changes, previous) {
            (Some(changes), Some(mut planner)) => {
                let result =
                    planner
                        .update_in_place(to_plan, changes, maglev)
                        .and_then(|frontends| {
                            self.write_planned(
                                desired,
                                rest,
                                changes.into(),
                                &mut planner,
                                frontends,
                            )
                        });
                match result {
                    Ok(mut report) => {
                        (report.services_changed, report.services_removed) =
                            changes.service_counts();
                        self.planner = Some(planner);
                        Ok(report)
                    }
                    Err(e) => {
                        self.programmed_before = Some(planner.fingerprints_before(changes));
                        Err(e)
                    }
                }
            }
            (_, previous) => {
                // Only the fingerprints of the previous plan are needed (for the counts): the
                // plan goes before the new one is written.
                let before = previous
                    .map(plan::Planner::into_fingerprints)
                    .or(before_failure);
                let result = plan::Planner::full(to_plan, maglev).and_then(|(mut planner, f)| {
                    let counts = planner.changed_since(before.as_ref());
                    let report = self.write_planned(desired, rest, changes, &mut planner, f)?;
                    Ok((planner, counts, report))
                });
                match result {
                    Ok((planner, counts, mut report)) => {
                        (report.services_changed, report.services_removed) = counts;
                        self.planner = Some(planner);
                        Ok(report)
                    }
                    Err(e) => {
                        self.programmed_before = before;
                        Err(e)
                    }
                }
            }
        }
    }

    /// The part of [`Self::sync`] after planning: writes `planner`'s maps, attachments and
    /// health checks. The report's service counts are left for the caller.
    fn write_planned(
        &mut self,
        desired: Option<&DesiredState>,
        rest: DesiredState,
        changes: Option<&ChangeSet>,
        planner: &mut plan::Planner,
        frontends: plan::Frontends,
    ) -> Result<ApplyReport, Error> {
        let desired = desired.unwrap_or(&rest);
        planner.set_host_routing(self.config.host_routing);
        let full_sync = changes.is_none();
        let pin_dir = self.config.pin_dir.clone();
        let netns = self.config.netns.clone();
        let mode = self.config.attach_mode;
        let xdp_mode = self.config.xdp;
        self.applied = None;
        let (objects, current) = self.parts()?;
        let caps = objects.capacities.clone();
        let report = writer::write(&mut objects.maps, current, planner, frontends, &caps)?;

        // Attachments follow the uplink and the endpoints' interfaces: a change of services
        // alone leaves them as they are (and skips entering the namespace).
        let reattach = changes.is_none_or(|c| c.node.is_some() || !c.endpoints.is_empty());
        let mut local_written = 0;
        if reattach {
            let wanted = Self::wanted_attachments(&rest, xdp_mode);
            local_written = netns::in_netns(netns.as_deref(), || {
                for (ifname, hook) in &wanted {
                    objects.attach(&pin_dir, ifname, *hook, mode, xdp_mode)?;
                }
                loopback::enable(&pin_dir)?;
                let stale: Vec<(String, Hook)> = objects
                    .attachments
                    .keys()
                    .filter(|k| !wanted.contains(k))
                    .cloned()
                    .collect();
                for k in stale {
                    if let Some(a) = objects.attachments.remove(&k) {
                        a.detach()?;
                    }
                }
                sync_local(&mut objects.maps, &rest.endpoints)
            })?;
        }

        // Health checks: all of them after a full sync, the changed services' otherwise.
        match changes {
            None => {
                self.health = dataplane_core::health_checks(desired)
                    .into_iter()
                    .map(|h| (h.service.clone(), h))
                    .collect();
            }
            Some(changes) => {
                for (name, change) in &changes.services {
                    self.health.remove(name);
                    let check = change
                        .current
                        .as_ref()
                        .and_then(|s| dataplane_core::health_check(&rest, s));
                    if let Some(h) = check {
                        self.health.insert(name.clone(), h);
                    }
                }
            }
        }
        let (warnings, skipped) = notes(desired, &rest.node, changes);
        self.applied = Some(rest);
        Ok(ApplyReport {
            full_sync,
            services_changed: 0,
            services_removed: 0,
            objects_written: report.objects_written + local_written,
            skipped,
            warnings,
        })
    }

    /// What each `healthCheckNodePort` must answer on this node: the local endpoints of every
    /// `externalTrafficPolicy: Local` service in the applied state (an agent's health server
    /// answers 200 when there is one, 503 otherwise). Empty before the first apply.
    pub fn health_checks(&self) -> Vec<HealthCheck> {
        self.health.values().cloned().collect()
    }

    /// Expires conntrack and affinity entries idle longer than their timeouts at `now`
    /// (`CLOCK_MONOTONIC`, see [`monotonic_now`]): the work of [`Dataplane::maintain`].
    pub(crate) fn gc(&mut self, now: Duration) -> Result<GcReport, Error> {
        let timeouts = self.config.timeouts;
        let affinity_timeouts: BTreeMap<u32, u32> = self
            .current
            .as_ref()
            .map(|c| {
                c.frontends
                    .values()
                    .map(|v| (v.id, v.affinity_timeout))
                    .collect()
            })
            .unwrap_or_default();
        let objects = self.objects.as_mut().ok_or(Error::FullSyncRequired)?;
        let maps = &mut objects.maps;
        let now_ns = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX);
        // One copy of the table (a map: the pairing below looks keys up).
        let by_key: BTreeMap<CtKey, CtEntry> = ct_entries(maps)?.into_iter().collect();
        let mut report = GcReport::default();
        // A set: one key is never deleted twice in a pass.
        let mut remove = BTreeSet::new();
        let mut orphans = Vec::new();
        for (k, v) in &by_key {
            // DSR entries stand alone: the ingress node's forward entry never sees a reply,
            // the backend node's reverse entry has no forward partner.
            let dsr = v.flags & CT_F_DSR != 0;
            if !v.is_reverse() || dsr {
                let closed_both = v.tcp_state & (CT_TCP_FIN_FWD | CT_TCP_FIN_REV)
                    == CT_TCP_FIN_FWD | CT_TCP_FIN_REV;
                // One side of a DSR flow sees only the client's FIN.
                let closed = closed_both || (dsr && v.tcp_state & CT_TCP_FIN_FWD != 0);
                let timeout = if k.proto == Protocol::Tcp.number() {
                    if v.tcp_state & CT_TCP_RST != 0 || closed {
                        timeouts.tcp_closing
                    } else if v.tcp_state & CT_TCP_REPLY != 0 || dsr {
                        timeouts.tcp_established
                    } else {
                        timeouts.tcp_syn
                    }
                } else if v.tcp_state & CT_TCP_REPLY != 0 || dsr {
                    timeouts.udp_stream
                } else {
                    timeouts.udp
                };
                let idle = now_ns.saturating_sub(v.last_seen_ns);
                if u128::from(idle) > timeout.as_nanos() {
                    remove.insert(*k);
                    // Its reverse key only if that entry is still this connection's: the
                    // key may now hold another connection's reverse entry (or another kind
                    // of entry), which must stay; or nothing (evicted).
                    let rk = reverse_key(k, v);
                    if v.is_forward() && !dsr && by_key.get(&rk).is_some_and(|r| pair(k, v, &rk, r))
                    {
                        remove.insert(rk);
                    }
                    report.expired += 1;
                } else {
                    report.remaining += 1;
                }
            } else {
                let fk = forward_key(k, v);
                if !by_key.get(&fk).is_some_and(|f| pair(&fk, f, k, v)) {
                    orphans.push((*k, *v, fk));
                }
            }
        }
        for (k, v, fk) in orphans {
            // The dump is not atomic: a new connection's reverse entry is written just before
            // its forward entry, which the dump may have passed already. Look again.
            let partner = match maps.ct.get(&fk, 0) {
                Ok(f) => Some(f),
                Err(aya::maps::MapError::KeyNotFound) => None,
                Err(e) => return Err(EbpfError::map("dp_ct", "reading", e).into()),
            };
            if !partner.is_some_and(|f| pair(&fk, &f, &k, &v)) && remove.insert(k) {
                report.orphans += 1;
            }
        }
        for k in &remove {
            error::removed(maps.ct.remove(k))
                .map_err(|e| EbpfError::map("dp_ct", "removing", e))?;
        }
        let mut stale = Vec::new();
        for item in &maps.affinity {
            let Ok((k, v)) = item else { continue };
            let timeout = u64::from(affinity_timeouts.get(&k.svc_id).copied().unwrap_or(0));
            if now_ns.saturating_sub(v.last_seen_ns) > timeout * 1_000_000_000 {
                stale.push(k);
            }
        }
        for k in &stale {
            error::removed(maps.affinity.remove(k))
                .map_err(|e| EbpfError::map("dp_affinity", "removing", e))?;
        }
        report.affinity_expired = stale.len();
        Ok(report)
    }

    /// Runs `packet` (an Ethernet frame) through `hook`'s program with `BPF_PROG_TEST_RUN`,
    /// against the live maps. For tests and per-packet benchmarks, which are other crates
    /// (so it is public), not for embedders (so it is hidden from the docs).
    /// Runs inside the configured network namespace, so FIB lookups see the node's routes.
    /// [`Hook::Xdp`] (loaded only when [`EbpfConfig::xdp`] is on) runs as if the packet had
    /// arrived on the applied state's uplink.
    #[doc(hidden)]
    pub fn run_packet(
        &mut self,
        hook: Hook,
        packet: &[u8],
        repeat: u32,
    ) -> Result<PacketRun, Error> {
        let netns = self.config.netns.clone();
        let uplink = self
            .applied
            .as_ref()
            .map(|s| s.node.interfaces.uplink.clone());
        let (objects, _) = self.parts()?;
        let mut out = vec![0u8; packet.len() + 256];
        let err = |e: aya::programs::ProgramError| EbpfError::Load {
            object: format!("test run of {}", hook.program()),
            source: Box::new(e),
        };
        let result = if hook == Hook::Xdp {
            let prog = objects.xdp_program_mut()?;
            netns::in_netns(netns.as_deref(), || {
                // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
                // egress_ifindex. Without an ingress interface the kernel uses loopback.
                let ifindex = uplink.as_deref().map_or(0, ifindex_of);
                let len = u32::try_from(packet.len()).unwrap_or(u32::MAX);
                let ctx: Vec<u8> = [0, len, 0, ifindex, 0, 0]
                    .iter()
                    .flat_map(|w: &u32| w.to_ne_bytes())
                    .collect();
                prog.test_run(TestRunOptions {
                    data_in: Some(packet),
                    data_out: Some(&mut out),
                    ctx_in: (ifindex != 0).then_some(ctx.as_slice()),
                    repeat: repeat.max(1),
                    ..TestRunOptions::default()
                })
                .map_err(err)
            })?
        } else {
            let prog = objects.program_mut(hook)?;
            netns::in_netns(netns.as_deref(), || {
                prog.test_run(TestRunOptions {
                    data_in: Some(packet),
                    data_out: Some(&mut out),
                    repeat: repeat.max(1),
                    ..TestRunOptions::default()
                })
                .map_err(err)
            })?
        };
        out.truncate(result.data_size_out as usize);
        Ok(PacketRun {
            verdict: result.return_value,
            output: out,
            duration: result.duration,
        })
    }

    fn detach_all(&mut self, keep: bool) -> Result<(), EbpfError> {
        let Some(objects) = self.objects.as_mut() else {
            return Ok(());
        };
        let attachments = std::mem::take(&mut objects.attachments);
        let sock = std::mem::take(&mut objects.sock_links);
        let mut first_err = None;
        let to_lo = attachments.contains_key(&(LOOPBACK.to_owned(), Hook::ToLo));
        for a in attachments.into_values().chain(sock) {
            if keep {
                a.keep();
            } else if let Err(e) = a.detach() {
                first_err.get_or_insert(e);
            }
        }
        if to_lo && !keep {
            if let Err(e) = loopback::restore(&self.config.pin_dir) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// The loopback interface, where `dp_to_lo` runs.
const LOOPBACK: &str = "lo";

/// The index of interface `name` in the calling thread's namespace, 0 when there is none.
fn ifindex_of(name: &str) -> u32 {
    let Ok(c) = std::ffi::CString::new(name) else {
        return 0;
    };
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    unsafe { libc::if_nametoindex(c.as_ptr()) }
}

/// Every conntrack entry: batched reads, or a walk where the kernel has none.
fn ct_entries(maps: &Maps) -> Result<Vec<(CtKey, CtEntry)>, EbpfError> {
    let read_err = |e: std::io::Error| {
        EbpfError::map(
            "dp_ct",
            "reading",
            aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                call: "bpf_map_lookup_batch",
                io_error: e,
            }),
        )
    };
    if let Some(all) = maps.ct_batch.lookup_all().map_err(read_err)? {
        return Ok(all);
    }
    let mut entries = Vec::new();
    for item in &maps.ct {
        match item {
            Ok(kv) => entries.push(kv),
            // An entry evicted between next_key and lookup.
            Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(EbpfError::map("dp_ct", "reading", e)),
        }
    }
    Ok(entries)
}

/// Entries `dp_local` holds at most (its size in `maps.h`).
const LOCAL_MAX: usize = 4096;

/// Makes `dp_local` hold the pods of `endpoints`: each address -> the index of the pod's
/// interface, resolved in the calling thread's namespace (an interface that is not there yet
/// is left to the FIB). Resolved again at every sync that looks at endpoints, so that a
/// recreated interface is found under its new index. Returns the entries written or removed.
fn sync_local(maps: &mut Maps, endpoints: &[dataplane_core::Endpoint]) -> Result<usize, EbpfError> {
    let mut want: BTreeMap<LocalKey, u32> = BTreeMap::new();
    for e in endpoints {
        let ifindex = ifindex_of(&e.interface);
        if ifindex == 0 {
            tracing::debug!(endpoint = %e.name, interface = %e.interface, "no such interface yet");
            continue;
        }
        for ip in &e.ips {
            let key = LocalKey {
                addr: crate::maps::Addr::new(*ip),
                family: crate::maps::family_of(ip),
                pad: [0; 3],
            };
            want.insert(key, ifindex);
        }
    }
    if want.len() > LOCAL_MAX {
        tracing::warn!(
            pods = want.len(),
            kept = LOCAL_MAX,
            "more pod addresses than dp_local holds: the rest are routed by the FIB"
        );
        want = want.into_iter().take(LOCAL_MAX).collect();
    }
    let have: BTreeMap<LocalKey, u32> = maps
        .local
        .iter()
        .filter_map(Result::ok)
        .map(|(k, v)| (k, v.ifindex))
        .collect();
    let mut n = 0;
    for k in have.keys().filter(|k| !want.contains_key(k)) {
        error::removed(maps.local.remove(k))
            .map_err(|e| EbpfError::map("dp_local", "removing", e))?;
        n += 1;
    }
    for (k, ifindex) in &want {
        if have.get(k) != Some(ifindex) {
            maps.local
                .insert(k, LocalValue { ifindex: *ifindex }, 0)
                .map_err(|e| EbpfError::map("dp_local", "writing", e))?;
            n += 1;
        }
    }
    Ok(n)
}

/// Whether forward entry `fv` (at `fk`) and reverse entry `rv` (at `rk`) are the two halves of
/// one connection: each names the other's key.
fn pair(fk: &CtKey, fv: &CtEntry, rk: &CtKey, rv: &CtEntry) -> bool {
    fv.is_forward() && rv.is_reverse() && reverse_key(fk, fv) == *rk && forward_key(rk, rv) == *fk
}

fn reverse_key(k: &CtKey, v: &CtEntry) -> CtKey {
    CtKey {
        saddr: v.nat_addr,
        daddr: if v.flags & CT_F_SNAT != 0 {
            v.snat_addr
        } else {
            k.saddr
        },
        sport: v.nat_port,
        dport: if v.flags & CT_F_SNAT != 0 {
            v.snat_port
        } else {
            k.sport
        },
        proto: k.proto,
        family: k.family,
        pad0: 0,
        pad: 0,
    }
}

fn forward_key(k: &CtKey, v: &CtEntry) -> CtKey {
    CtKey {
        saddr: v.snat_addr,
        daddr: v.nat_addr,
        sport: v.snat_port,
        dport: v.nat_port,
        proto: k.proto,
        family: k.family,
        pad0: 0,
        pad: 0,
    }
}

/// The warnings about, and the parts left out of, the services a sync planned: all of
/// `desired`'s on a full sync, the changed ones of `changes` otherwise. One missing feature
/// costs that part of a service, not the node: each skip is logged as a warning too.
fn notes(
    desired: &DesiredState,
    node: &dataplane_core::Node,
    changes: Option<&ChangeSet>,
) -> (Vec<dataplane_core::Warning>, Vec<dataplane_core::Skipped>) {
    let looked_at: Vec<&dataplane_core::Service> = match changes {
        None => desired.services.iter().collect(),
        Some(changes) => changes
            .services
            .values()
            .filter_map(|c| c.current.as_ref())
            .collect(),
    };
    let warnings = match changes {
        None => dataplane_core::warnings(desired),
        Some(_) => looked_at
            .iter()
            .flat_map(|s| dataplane_core::service_warnings(node, s))
            .collect(),
    };
    let skipped: Vec<dataplane_core::Skipped> = looked_at
        .iter()
        .flat_map(|s| plan::skipped(node, s))
        .collect();
    for s in &skipped {
        tracing::warn!(
            object = %s.object,
            field = %s.field,
            feature = %s.feature,
            reason = %s.reason,
            "not programmed by the eBPF backend"
        );
    }
    (warnings, skipped)
}

impl Dataplane for EbpfDataplane {
    fn capabilities(&self) -> Capabilities {
        let caps = self
            .objects
            .as_ref()
            .map_or(&self.config.capacities, |o| &o.capacities);
        Capabilities {
            dataplane: BACKEND.to_owned(),
            protocols: [Protocol::Tcp, Protocol::Udp].into_iter().collect(),
            ipv6: true,
            maglev: true,
            session_affinity: true,
            dsr: true,
            xdp: self.config.xdp.is_on(),
            masquerade: true,
            network_policy: false,
            weights: true,
            max_services: caps.services,
            max_backends: caps.backends.saturating_sub(1),
        }
    }

    fn apply(&mut self, desired: &DesiredState) -> Result<ApplyReport, Error> {
        let validator = Validator::new(desired)?;
        plan::check_supported(desired)?;
        let rest = DesiredState {
            endpoints: desired.endpoints.clone(),
            policies: desired.policies.clone(),
            ..DesiredState::new(desired.node.clone())
        };
        self.validator = None;
        let report = self.sync(Some(desired), rest, None)?;
        self.validator = Some(validator);
        Ok(report)
    }

    /// Validates and plans in proportion to the change: only the changed objects are checked
    /// (against what the others claim) and only the changed services' map entries are
    /// written. A change of the node (which every service is planned against) needs the whole
    /// state, of which this backend keeps no copy: it returns [`Error::FullSyncRequired`]
    /// and changes nothing; call [`Dataplane::apply`] with the new state.
    fn apply_changes(&mut self, changes: &ChangeSet) -> Result<ApplyReport, Error> {
        let (Some(applied), Some(validator)) = (&self.applied, &self.validator) else {
            return Err(Error::FullSyncRequired);
        };
        if validator.check(&applied.node, changes)? == Incremental::FullRequired {
            return Err(Error::FullSyncRequired);
        }
        // The planner derives a changed service's old entries from `previous`: a change set
        // that is not a diff from the applied state is refused before anything is touched.
        if self
            .planner
            .as_ref()
            .is_some_and(|p| !p.agrees_with(changes))
        {
            return Err(Error::FullSyncRequired);
        }
        plan::check_changes_supported(changes)?;
        let mut next = self.applied.take().ok_or(Error::FullSyncRequired)?;
        let mut validator = self.validator.take().ok_or(Error::FullSyncRequired)?;
        // The changed services are planned from the change set; the applied state keeps none.
        if !changes.endpoints.is_empty() || !changes.policies.is_empty() {
            ChangeSet {
                node: None,
                services: BTreeMap::new(),
                endpoints: changes.endpoints.clone(),
                policies: changes.policies.clone(),
            }
            .apply_to(&mut next);
        }
        validator.commit(&next.node, changes);
        // On failure applied and validator stay None: the next sync is a full one.
        let report = self.sync(None, next, Some(changes))?;
        self.validator = Some(validator);
        Ok(report)
    }

    fn observe(&self) -> Result<ObservedState, Error> {
        let maps = self.maps()?;
        let caps = self
            .objects
            .as_ref()
            .map_or_else(|| self.config.capacities.clone(), |o| o.capacities.clone());
        let current = Current::read(maps, &caps)?;
        let by_id: BTreeMap<u32, SocketAddr> = maps
            .backends
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.ok().filter(|v| v.family != 0).map(|v| (i as u32, v)))
            .map(|(i, v)| (i, SocketAddr::new(v.addr.ip(v.family), v.port.get())))
            .collect();
        let mut frontends = Vec::new();
        for (k, v) in &current.frontends {
            if k.scope == SCOPE_EXTERNAL_INSIDE
                || k.scope == SCOPE_RETIRED_INTERNAL_OUTSIDE
                || v.flags & SVC_F_WILDCARD != 0
            {
                continue;
            }
            let Some(protocol) = Protocol::from_number(k.proto) else {
                continue;
            };
            frontends.push(ObservedFrontend {
                address: SocketAddr::new(k.addr.ip(k.family), k.port.get()),
                protocol,
                backends: current
                    .slots_of(v)
                    .iter()
                    .filter_map(|id| by_id.get(id).copied())
                    .collect(),
            });
        }
        frontends.sort();
        frontends.dedup();
        Ok(ObservedState { frontends })
    }

    fn flows(&self) -> Result<Vec<Flow>, Error> {
        let maps = self.maps()?;
        let names = self
            .planner
            .as_ref()
            .map(plan::Planner::names)
            .unwrap_or_default();
        let mut out = Vec::new();
        for (k, v) in ct_entries(maps)? {
            let Some(protocol) = Protocol::from_number(k.proto) else {
                continue;
            };
            let at = |a: &crate::maps::Addr, port: crate::maps::Be16| {
                SocketAddr::new(a.ip(k.family), port.get())
            };
            if v.is_reverse() && v.flags & CT_F_DSR != 0 {
                // A DSR flow on the backend's node: only the reverse entry learnt from the
                // option exists (the service is the ingress node's business).
                out.push(Flow {
                    protocol,
                    client: at(&k.daddr, k.dport),
                    frontend: at(&v.nat_addr, v.nat_port),
                    backend: at(&k.saddr, k.sport),
                    service: None,
                });
                continue;
            }
            if !v.is_forward() || v.flags & CT_F_MASQ != 0 {
                continue;
            }
            out.push(Flow {
                protocol,
                client: at(&k.saddr, k.sport),
                frontend: at(&k.daddr, k.dport),
                backend: at(&v.nat_addr, v.nat_port),
                service: names.get(&v.svc_id).map(|n| (*n).clone()),
            });
        }
        out.sort_by_key(|f| (f.frontend, f.client));
        Ok(out)
    }

    fn stats(&self) -> Result<Stats, Error> {
        let maps = self.maps()?;
        let mut totals = [0u64; STAT_NAMES.len()];
        for (i, total) in totals.iter_mut().enumerate() {
            let values = match maps.stats.get(&(i as u32), 0) {
                Ok(v) => v,
                // A counter added after the map was pinned.
                Err(aya::maps::MapError::OutOfBounds { .. }) if i >= maps::STAT_ORIGINAL => {
                    continue
                }
                Err(e) => return Err(EbpfError::map("dp_stats", "reading", e).into()),
            };
            *total = values.iter().sum();
        }
        let flows = ct_entries(maps)?
            .iter()
            .filter(|(_, v)| v.is_forward())
            .count() as u64;
        // (masquerade entries are counted too: they are connections the datapath tracks)
        let other = STAT_NAMES
            .iter()
            .zip(totals)
            .map(|(n, v)| ((*n).to_owned(), v))
            .collect();
        Ok(Stats {
            packets_translated: totals[STAT_TRANSLATED],
            packets_dropped: totals[STAT_DROPPED],
            packets_rejected: totals[STAT_REJECTED],
            flows,
            other,
        })
    }

    /// Expires conntrack and session-affinity entries idle longer than their timeouts at
    /// `now` ([`CtTimeouts`], and each service's affinity timeout): this backend tracks
    /// connections in its own maps, which nothing else expires (the LRU evicts only under
    /// pressure). `other` holds `orphans`, the reverse entries whose forward entry
    /// was gone.
    fn maintain(&mut self, now: Duration) -> Result<MaintenanceReport, Error> {
        if self.objects.is_none() {
            // Reset: no map, nothing tracked.
            return Ok(MaintenanceReport {
                flows_remaining: Some(0),
                ..MaintenanceReport::default()
            });
        }
        let gc = self.gc(now)?;
        Ok(MaintenanceReport {
            flows_expired: gc.expired as u64,
            affinity_expired: gc.affinity_expired as u64,
            flows_remaining: Some(gc.remaining as u64),
            other: [("orphans".to_owned(), gc.orphans as u64)].into(),
        })
    }

    /// Half the shortest configured conntrack timeout, between [`MIN_MAINTENANCE_INTERVAL`]
    /// and [`MAX_MAINTENANCE_INTERVAL`]; see [`maintenance_interval`] for why.
    fn maintenance_interval(&self) -> Option<Duration> {
        Some(maintenance_interval(&self.config.timeouts))
    }

    fn reset(&mut self) -> Result<(), Error> {
        let netns = self.config.netns.clone();
        netns::in_netns(netns.as_deref(), || self.detach_all(false))?;
        // Without loaded objects (a failed load, an earlier reset) detach_all did nothing, but
        // a marker of an earlier process may still say that we turned lo's accept_local on:
        // turn it off before the marker goes with the directory.
        let pin_dir = self.config.pin_dir.clone();
        netns::in_netns(netns.as_deref(), || loopback::restore(&pin_dir))?;
        self.objects = None;
        self.current = None;
        self.applied = None;
        self.validator = None;
        self.planner = None;
        self.programmed_before = None;
        self.health.clear();
        let dir = &self.config.pin_dir;
        match std::fs::remove_dir_all(dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(EbpfError::Pin {
                path: dir.clone(),
                source,
            }
            .into()),
        }
    }
}

impl Drop for EbpfDataplane {
    fn drop(&mut self) {
        let keep = self.config.keep_attachments_on_drop;
        let netns = self.config.netns.clone();
        if let Err(e) = netns::in_netns(netns.as_deref(), || self.detach_all(keep)) {
            tracing::warn!(error = %e, "detaching programs on drop");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maintenance_interval_is_half_the_shortest_timeout_within_bounds() {
        let defaults = CtTimeouts::default();
        assert_eq!(
            maintenance_interval(&defaults),
            Duration::from_secs(5),
            "half of tcp_closing (10 s)"
        );
        let tiny = CtTimeouts {
            tcp_closing: Duration::from_millis(300),
            ..defaults
        };
        assert_eq!(maintenance_interval(&tiny), MIN_MAINTENANCE_INTERVAL);
        let long = CtTimeouts {
            tcp_syn: Duration::from_hours(1),
            tcp_established: Duration::from_hours(24),
            tcp_closing: Duration::from_hours(1),
            udp: Duration::from_hours(1),
            udp_stream: Duration::from_hours(1),
        };
        assert_eq!(maintenance_interval(&long), MAX_MAINTENANCE_INTERVAL);
        let udp_short = CtTimeouts {
            udp: Duration::from_secs(7),
            ..long
        };
        assert_eq!(
            maintenance_interval(&udp_short),
            Duration::from_millis(3500)
        );
    }
}
