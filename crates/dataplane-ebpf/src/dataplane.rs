//! [`EbpfDataplane`]: the [`Dataplane`] over the loaded programs and pinned maps. What it
//! holds between calls is nothing (after `reset`), or the [`Loaded`] objects with the
//! writer's mirror of the maps and, after a successful sync, what the next incremental one
//! needs ([`Synced`]): no combination that cannot happen can be represented.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use dataplane_core::{
    ApplyReport, BoxEventSource, Capabilities, ChangeSet, Dataplane, DesiredState, Error,
    EventOptions, Flow, HealthCheck, Incremental, MaintenanceReport, ObjectName, ObservedFrontend,
    ObservedState, Protocol, Stats, Validator, Warning,
};

use crate::config::EbpfConfig;
use crate::ct::ct_entries;
use crate::error::EbpfError;
use crate::events::{EventAsk, EventAsks};
use crate::host_policy::{HostRuleDrops, HostState};
use crate::l2::L2State;
use crate::loader::{self, Hook, Objects};
use crate::maintain::{gc, maintenance_interval, GcSchedule};
use crate::map_table;
use crate::maps::{
    self, LocalKey, SCOPE_EXTERNAL_INSIDE, SCOPE_RETIRED_INTERNAL_OUTSIDE, STAT_DROPPED,
    STAT_NAMES, STAT_REJECTED, STAT_TRANSLATED, SVC_F_WILDCARD,
};
use crate::names::Names;
use crate::plan::{self, BACKEND};
use crate::policy::{self, PolicyState};
use crate::support::{ensure_bpffs, BPFFS};
use crate::writer::{self, Current};
use crate::{local, loopback, netns};

/// The loaded programs and their maps (adopted or created), with the writer's mirror of
/// the maps.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub(crate) objects: Objects,
    pub(crate) current: Current,
    /// What the NetworkPolicy maps hold, with the last sync's numbering.
    pub(crate) policy: PolicyState,
    /// What `dp_names` holds.
    pub(crate) names: Names,
    /// What the host endpoint policy maps hold.
    pub(crate) host: HostState,
    /// What the L2 announcement maps hold.
    pub(crate) l2: L2State,
    /// When `maintain()` last walked the conntrack table.
    pub(crate) gc_schedule: GcSchedule,
    pub(crate) synced: Synced,
    /// The syncs' interface lookups, through a socket kept open in the node's namespace.
    pub(crate) ifindexes: local::Ifindexes,
    /// What `dp_local` holds after the last sync that wrote it (`None`: unknown, read from
    /// the map by the next one; so after a failed write, a load, and for every full sync).
    pub(crate) local: Option<BTreeMap<LocalKey, u32>>,
    /// Whether lo's `accept_local` was turned on by a sync since the objects were loaded:
    /// reading the sysctl was ~24 µs of every endpoint change. Full syncs check it again.
    pub(crate) accept_local_on: bool,
}

/// Whether the maps hold what the last sync planned.
#[derive(Debug)]
pub(crate) enum Synced {
    /// No sync yet, or the last one failed (the maps are unknown to any planner: the next
    /// sync is full). `programmed_before`: the fingerprints of the services the last
    /// successful sync programmed, which the next sync's counts compare with.
    No {
        programmed_before: Option<plan::Fingerprints>,
    },
    /// The last sync succeeded.
    Yes(Box<Applied>),
}

/// What a successful sync leaves for the next incremental one.
#[derive(Debug)]
pub(crate) struct Applied {
    /// The applied state without its services: no copy of those is kept (at 10k services
    /// that is most of the state). The planner keeps what each service holds in the maps,
    /// `health` what its health check answers.
    pub(crate) rest: DesiredState,
    /// What the applied state's objects claim, for change sets validated in proportion to
    /// their size.
    pub(crate) validator: Validator,
    pub(crate) planner: plan::Planner,
}

impl Synced {
    const NEVER: Synced = Synced::No {
        programmed_before: None,
    };
}

/// The eBPF [`Dataplane`].
#[derive(Debug)]
pub struct EbpfDataplane {
    pub(crate) config: EbpfConfig,
    /// `None`: nothing loaded, after `reset` (the next sync loads the programs again).
    loaded: Option<Box<Loaded>>,
    /// Health checks of the applied services that have one.
    health: BTreeMap<ObjectName, HealthCheck>,
    /// What the open [`Dataplane::events`] readers asked for: the programs write the events
    /// any of them wants (`CFG_F_EV_*` in `dp_config`, which every sync keeps), until it is
    /// dropped. Locked while a sync writes `dp_config`, so that a reader dropped meanwhile
    /// does not see its flag written back.
    event_asks: Arc<Mutex<EventAsks>>,
}

impl EbpfDataplane {
    /// Loads the programs, creating or adopting the maps and links pinned in
    /// `config.pin_dir`. Adopted links get the new programs right away; call
    /// [`Dataplane::apply`] next to reconcile the maps with the desired state. Mounts bpffs
    /// at `/sys/fs/bpf` first when the pin directory is under it and nothing is mounted there.
    pub fn new(config: EbpfConfig) -> Result<Self, EbpfError> {
        if config.pin_dir.starts_with(BPFFS) {
            ensure_bpffs(Path::new(BPFFS))?;
        }
        let mut dp = Self {
            config,
            loaded: None,
            health: BTreeMap::new(),
            event_asks: Arc::default(),
        };
        dp.loaded_mut()?;
        Ok(dp)
    }

    /// Loads the objects, adopting what the pin directory holds.
    fn load(&self) -> Result<Loaded, EbpfError> {
        self.config.events.validate().map_err(invalid_events)?;
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
        let policy = PolicyState::read(&objects.maps)?;
        let names = Names::read(&objects.names)?;
        let host = HostState::read(&objects.host_maps)?;
        let l2 = L2State::read(&objects.l2_maps, self.config.l2_liveness)?;
        // Reading the arrays mapped each chunk that holds entries: kept mapped, they would
        // stay resident for the life of the process.
        objects.maps.unmap_arrays();
        writer::set_host_routing(&mut objects.maps, &mut current, self.config.host_routing)?;
        writer::set_event_limits(&mut objects.maps, &mut current, self.config.events.rates())?;
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
                let mut ifindexes = local::Ifindexes::default();
                for (ifname, hook) in pinned {
                    let attached =
                        objs.attach(&pin_dir, &ifname, hook, mode, xdp_mode, &mut ifindexes);
                    if let Err(e) = attached {
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
        Ok(Loaded {
            objects,
            current,
            policy,
            names,
            host,
            l2,
            gc_schedule: GcSchedule::default(),
            synced: Synced::NEVER,
            ifindexes: local::Ifindexes::default(),
            local: None,
            accept_local_on: false,
        })
    }

    /// Packets each host policy rule dropped (untracked and pre-DNAT denies, at XDP and in
    /// TC), for the rules of the applied state; empty before the first successful apply.
    ///
    /// # Errors
    /// [`EbpfError::Map`] when the counters cannot be read.
    pub fn host_rule_drops(&self) -> Result<Vec<HostRuleDrops>, EbpfError> {
        match self.loaded() {
            Some(l) => l.host.drops(&l.objects.host_maps),
            None => Ok(Vec::new()),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &EbpfConfig {
        &self.config
    }

    /// Changes the flow events' rate limits ([`EbpfConfig::events`]) of the running programs,
    /// and of every later sync: each kind's next event is measured against its new limit
    /// (a lowered burst takes away the tokens above it; a raised one fills as the rate
    /// allows). Nothing else changes.
    ///
    /// # Errors
    /// [`EbpfError::Load`] with an [`EventLimitError`](crate::EventLimitError) as its source
    /// when a limit is wrong (nothing changes then); [`EbpfError::Map`] when writing fails.
    pub fn set_event_limits(&mut self, limits: crate::EventLimits) -> Result<(), EbpfError> {
        limits.validate().map_err(invalid_events)?;
        if let Some(loaded) = self.loaded.as_deref_mut() {
            // Serialised with the readers' flag writes, which go through the same entry.
            let asks = Arc::clone(&self.event_asks);
            let _held = asks.lock().unwrap_or_else(PoisonError::into_inner);
            writer::set_event_limits(
                &mut loaded.objects.maps,
                &mut loaded.current,
                limits.rates(),
            )?;
        }
        self.config.events = limits;
        Ok(())
    }

    /// The loaded objects, loading them first when nothing is loaded (after `reset`).
    pub(crate) fn loaded_mut(&mut self) -> Result<&mut Loaded, EbpfError> {
        let loaded = match self.loaded.take() {
            Some(loaded) => loaded,
            None => Box::new(self.load()?),
        };
        Ok(self.loaded.insert(loaded))
    }

    /// The loaded objects; `None` after `reset` until the next sync.
    fn loaded(&self) -> Option<&Loaded> {
        self.loaded.as_deref()
    }

    /// What the last sync left, taken out: whatever happens next, the maps are unknown to it
    /// until a sync puts its own back (with [`Self::set_synced`]).
    fn take_synced(&mut self) -> Synced {
        self.loaded.as_mut().map_or(Synced::NEVER, |loaded| {
            std::mem::replace(&mut loaded.synced, Synced::NEVER)
        })
    }

    /// Records what a sync left. Without loaded objects (the load failed) no sync reached
    /// the kernel since `reset`, so there is nothing to keep.
    fn set_synced(&mut self, synced: Synced) {
        if let Some(loaded) = self.loaded.as_mut() {
            loaded.synced = synced;
        }
    }

    /// The applied state (without its services) of the last successful sync.
    pub(crate) fn applied(&self) -> Option<&DesiredState> {
        match self.loaded().map(|l| &l.synced) {
            Some(Synced::Yes(applied)) => Some(&applied.rest),
            _ => None,
        }
    }

    /// Programs `desired` (`None`: `rest`), which the caller has validated (and checked as
    /// supported) with `validator`, and keeps `rest` (`desired` without its services) as the
    /// applied state. With `changes` (what differs from the applied state; not the node) and
    /// the last sync's `planner` it is an incremental sync that plans only the services they
    /// touch.
    ///
    /// `services_changed`/`services_removed` compare with the services of the last
    /// successful sync: when this one fails, their fingerprints stay in
    /// `Synced::No::programmed_before` for the next one (the planner itself is dropped: the
    /// maps are unknown to it).
    fn sync(
        &mut self,
        desired: Option<&DesiredState>,
        rest: DesiredState,
        validator: Validator,
        changes: Option<(&ChangeSet, plan::Planner)>,
    ) -> Result<ApplyReport, Error> {
        let to_plan = desired.unwrap_or(&rest);
        let maglev = self.config.capacities.maglev_table_size;
        // After `reset` nothing is loaded: this sync loads the objects itself (maps, pins,
        // socket hooks), and a refused state must take them away again.
        let was_loaded = self.loaded.is_some();
        // Taken: if anything below fails the maps are unknown to the planner and the next
        // sync plans afresh.
        let previous = self.take_synced();
        // On failure: the fingerprints the next sync's counts compare with.
        let (result, before) = if let Some((changes, mut planner)) = changes {
            let written = planner
                .update_in_place(to_plan, changes, maglev)
                .and_then(|f| {
                    let what = writer::ToWrite::Update(f);
                    self.write_planned(desired, &rest, Some(changes), &mut planner, what)
                });
            match written {
                Ok(report) => (Ok((planner, changes.service_counts(), report)), None),
                Err(e) => (Err(e), Some(planner.fingerprints_before(changes))),
            }
        } else {
            // Only the fingerprints of the previous plan are needed (for the counts): the
            // plan goes before the new one is written.
            let before = match previous {
                Synced::Yes(applied) => Some(applied.planner.into_fingerprints()),
                Synced::No { programmed_before } => programmed_before,
            };
            // Planned inside the write, a chunk at a time (the plan is never whole), still
            // before anything is written.
            let mut planner = plan::Planner::default();
            let what = writer::ToWrite::Full {
                state: to_plan,
                maglev_size: maglev,
            };
            let result = self
                .write_planned(desired, &rest, None, &mut planner, what)
                .map(|report| {
                    let counts = planner.changed_since(before.as_ref());
                    (planner, counts, report)
                });
            (result, before)
        };
        match result {
            Ok((planner, counts, mut report)) => {
                (report.services_changed, report.services_removed) = counts;
                self.set_synced(Synced::Yes(Box::new(Applied {
                    rest,
                    validator,
                    planner,
                })));
                Ok(report)
            }
            Err(e) => {
                let refused = matches!(
                    e,
                    Error::CapacityExceeded { .. } | Error::Invalid(_) | Error::Unsupported { .. }
                );
                if refused && !was_loaded {
                    // A refused state leaves the kernel as it was: without our objects.
                    if let Err(undo) = <Self as Dataplane>::reset(self) {
                        tracing::warn!(error = %undo, "removing the objects a refused sync loaded");
                    }
                    return Err(e);
                }
                self.set_synced(Synced::No {
                    programmed_before: before,
                });
                Err(e)
            }
        }
    }

    /// The part of [`Self::sync`] after planning: writes `planner`'s maps, attachments and
    /// health checks. The report's service counts are left for the caller.
    // One function on purpose: the order of the steps is what keeps a refused state off
    // the kernel (every check before the first write) and packets safe.
    #[allow(clippy::too_many_lines)]
    fn write_planned(
        &mut self,
        desired: Option<&DesiredState>,
        rest: &DesiredState,
        changes: Option<&ChangeSet>,
        planner: &mut plan::Planner,
        what: writer::ToWrite<'_>,
    ) -> Result<ApplyReport, Error> {
        let desired = desired.unwrap_or(rest);
        let asks = Arc::clone(&self.event_asks);
        let asks = asks.lock().unwrap_or_else(PoisonError::into_inner);
        let flags = (
            self.config.host_routing,
            desired.has_pod_policy(),
            asks.flags(),
            self.config.events.rates(),
        );
        // For an update now (the planner is the plan), for a full sync after it is planned.
        planner.set_flags(flags.0, flags.1, flags.2, flags.3);
        let pin_dir = self.config.pin_dir.clone();
        let netns = self.config.netns.clone();
        let mode = self.config.attach_mode;
        let xdp_mode = self.config.xdp;
        let sets_per_address = self.config.capacities.policy_sets_per_address;
        let Loaded {
            objects,
            current,
            policy,
            names: names_written,
            host,
            l2: l2_state,
            ifindexes: ifx,
            local: local_written_before,
            accept_local_on,
            ..
        } = self.loaded_mut()?;
        let caps = objects.capacities.clone();
        // NetworkPolicy is planned (and checked against the capacities) before anything is
        // written: a refused state leaves the kernel as it was.
        let limits = policy::Limits {
            addresses: caps.policy_addresses,
            rules: caps.policy_rules,
            blocks: caps.policy_blocks,
            sets_per_address,
        };
        check_local_fits(rest, caps.local)?;
        // The interfaces the new state attaches to, before anything is written: a state whose
        // uplink is missing is refused with the maps as they were. Each interface is looked
        // up once in this sync (checks, attachments, dp_local), through the socket kept in
        // the node's namespace: no namespace entry for lookups.
        let wanted = ifx.wanted_attachments(rest, xdp_mode, changes);
        ifx.start_sync(netns.as_deref())?;
        objects.check_interfaces(&wanted, ifx)?;
        let mut policy_plan = match changes {
            None => policy.plan_full(rest, limits)?,
            Some(c) => policy.plan_changes(rest, c, limits)?,
        };
        // Host endpoint policy, compiled and checked before anything is written too.
        let host_tables = host.plan(rest, &objects.host_maps, caps.host_prefixes)?;
        // L2 announcements (l2.rs): addresses and the uplink's MAC, checked before writing.
        let l2_plan = l2_state.plan(desired, changes, &rest.node, netns.as_deref())?;
        // Make before break, so that no moment is fail-open. The last policy going: isolation
        // goes before the anti-spoofing flag (CFG_F_POLICY, in dp_config) does. Otherwise
        // dp_config (the flag on) first, then the new rules and addresses (a new pod's
        // isolation) before its programs are attached, and what is stale (a removed pod's
        // entries) after its programs are detached.
        //
        // A full sync plans here, into `planner` (the flags are the node-wide settings), a
        // chunk at a time: every check of the services' plan (a Maglev table, the map
        // capacities) refuses the state before the first write below.
        let prep = writer::prepare(current, planner, what, &caps)?;
        planner.set_flags(flags.0, flags.1, flags.2, flags.3);
        let policy_written = policy_plan.writes();
        let clearing = !rest.has_pod_policy();
        if clearing {
            if let Err(e) = policy.write(&mut objects.maps, std::mem::take(&mut policy_plan)) {
                prep.abandon(current);
                return Err(e.into());
            }
        }
        let report = writer::write(&mut objects.maps, current, planner, prep)?;
        // Host policy after the services' write, the last step that can refuse the state
        // (a refused state leaves the maps as they were).
        let host_written = host.write(&mut objects.host_maps, host_tables)?;
        drop(asks);
        if !clearing {
            policy.write_new(&mut objects.maps, &policy_plan)?;
        }
        // The events' names: after the services and policy.
        let (names_count, names_warning) =
            sync_names(names_written, objects, planner, rest, changes)?;

        // Attachments follow the uplink and the endpoints' interfaces, checked on every sync
        // (one ifindex lookup per interface): a pod's veth deleted and recreated under the
        // same name changes no endpoint, but has lost its programs and its ifindex in dp_local.
        // The node's namespace is entered (once) only when there is something to attach or
        // detach, or lo's accept_local to check (a full sync, the first after a load).
        let check_lo = changes.is_none() || !*accept_local_on;
        if check_lo || objects.attachments_pending(&wanted, ifx) {
            netns::in_netns(netns.as_deref(), || {
                for (ifname, hook) in wanted.iter() {
                    objects.attach(&pin_dir, ifname, *hook, mode, xdp_mode, ifx)?;
                }
                if check_lo {
                    loopback::enable(&pin_dir)?;
                }
                objects.detach_unwanted(&wanted)
            })?;
            *accept_local_on = true;
        }
        let pods = local::wanted(&rest.endpoints, caps.local, ifx);
        if changes.is_none() {
            // A full sync reads what the map holds (it may have been written by an earlier
            // process, or changed behind our back).
            *local_written_before = None;
        }
        let local_written = writer::sync_local(&mut objects.maps, &pods, local_written_before)?;

        if !clearing {
            policy.write_stale(&mut objects.maps, policy_plan)?;
        }
        let (l2_written, l2_warning) =
            l2_state.write(&mut objects.l2_maps, l2_plan, netns.as_deref())?;

        self.update_health(desired, rest, changes);
        let mut warnings = notes(desired, &rest.node, changes);
        warnings.extend(names_warning);
        warnings.extend(l2_warning);
        Ok(ApplyReport {
            full_sync: changes.is_none(),
            services_changed: 0,
            services_removed: 0,
            objects_written: report.objects_written
                + local_written
                + policy_written
                + names_count
                + host_written
                + l2_written,
            skipped: Vec::new(),
            warnings,
        })
    }

    /// Health checks: all of them after a full sync (`changes` is `None`), the changed
    /// services' otherwise.
    fn update_health(
        &mut self,
        desired: &DesiredState,
        rest: &DesiredState,
        changes: Option<&ChangeSet>,
    ) {
        let Some(changes) = changes else {
            self.health = dataplane_core::health_checks(desired)
                .into_iter()
                .map(|h| (h.service.clone(), h))
                .collect();
            return;
        };
        for (name, change) in &changes.services {
            self.health.remove(name);
            let check = change
                .current
                .as_ref()
                .and_then(|s| dataplane_core::health_check(rest, s));
            if let Some(h) = check {
                self.health.insert(name.clone(), h);
            }
        }
    }

    /// What each `healthCheckNodePort` must answer on this node: the local endpoints of every
    /// `externalTrafficPolicy: Local` service in the applied state (an agent's health server
    /// answers 200 when there is one, 503 otherwise). Empty before the first apply.
    pub fn health_checks(&self) -> Vec<HealthCheck> {
        self.health.values().cloned().collect()
    }

    fn detach_all(&mut self, keep: bool) -> Result<(), EbpfError> {
        let Some(objects) = self.loaded.as_mut().map(|l| &mut l.objects) else {
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

/// Whether any of `services` has a UDP or SCTP port.
fn has_datagram_port<'a>(mut services: impl Iterator<Item = &'a dataplane_core::Service>) -> bool {
    services.any(|s| {
        s.ports
            .iter()
            .any(|p| crate::ct::datagram(p.protocol.number()))
    })
}

impl EbpfDataplane {
    /// After a successful sync that touched a UDP or SCTP service: deletes the conntrack
    /// entries of datagram flows whose frontend or backend the maps no longer hold
    /// ([`crate::ct::remove_stale_datagram_flows`], kube-proxy's `CleanStaleEntries`). A
    /// failure is a warning of `report` (field `conntrack`), never the sync's error: the maps
    /// are written, and the stale flows then only expire as before.
    fn clean_stale_flows(&mut self, report: &mut ApplyReport) {
        let Some(Loaded {
            objects, current, ..
        }) = self.loaded.as_deref_mut()
        else {
            return;
        };
        match crate::ct::remove_stale_datagram_flows(&mut objects.maps, current) {
            Ok(r) => {
                if r.removed > 0 {
                    tracing::debug!(
                        scanned = r.scanned,
                        removed = r.removed,
                        "stale datagram flows removed from dp_ct"
                    );
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "stale datagram flows not removed from dp_ct");
                report.warnings.push(dataplane_core::Warning {
                    object: format!("{BACKEND} dataplane"),
                    field: "conntrack".to_owned(),
                    message: format!(
                        "stale UDP/SCTP conntrack entries of removed backends were not \
                         deleted (clients that keep their source port may reach them until \
                         the entries expire): {e}"
                    ),
                });
            }
        }
    }
}

/// The loopback interface, where `dp_to_lo` runs.
const LOOPBACK: &str = "lo";

/// The warnings about the services a sync planned: all of `desired`'s on a full sync, the
/// changed ones of `changes` otherwise.
fn notes(
    desired: &DesiredState,
    node: &dataplane_core::Node,
    changes: Option<&ChangeSet>,
) -> Vec<dataplane_core::Warning> {
    match changes {
        None => dataplane_core::warnings(desired),
        Some(changes) => changes
            .services
            .values()
            .filter_map(|c| c.current.as_ref())
            .flat_map(|s| dataplane_core::service_warnings(node, s))
            .collect(),
    }
}

impl Dataplane for EbpfDataplane {
    fn capabilities(&self) -> Capabilities {
        let caps = self
            .loaded()
            .map_or(&self.config.capacities, |l| &l.objects.capacities);
        Capabilities {
            dataplane: BACKEND.to_owned(),
            protocols: [Protocol::Tcp, Protocol::Udp, Protocol::Sctp]
                .into_iter()
                .collect(),
            ipv6: true,
            maglev: true,
            session_affinity: true,
            dsr: true,
            xdp: self.config.xdp.is_on(),
            masquerade: true,
            network_policy: true,
            weights: true,
            max_services: caps.services,
            max_backends: caps.backends.saturating_sub(1),
            // Cluster policies and the baseline: TC policy (policy.rs, bpf/lib/policy.h).
            cluster_policy: true,
            // Failsafe ports, untracked, pre-DNAT and normal host policies (host_policy.rs).
            host_policy: true,
            // ARP / neighbour solicitations answered at XDP or in TC (l2.rs,
            // bpf/lib/l2_responder.h).
            l2_announcements: true,
        }
    }

    fn apply(&mut self, desired: &DesiredState) -> Result<ApplyReport, Error> {
        let validator = Validator::new(desired)?;
        self.capabilities().check_policy_tiers(desired)?;
        self.capabilities().check_l2_announcements(desired)?;
        let rest = DesiredState {
            endpoints: desired.endpoints.clone(),
            policies: desired.policies.clone(),
            namespaces: desired.namespaces.clone(),
            pods: desired.pods.clone(),
            host_endpoints: desired.host_endpoints.clone(),
            host_policies: desired.host_policies.clone(),
            failsafe_ports: desired.failsafe_ports.clone(),
            cluster_policies: desired.cluster_policies.clone(),
            baseline_policy: desired.baseline_policy.clone(),
            nodes: desired.nodes.clone(),
            ..DesiredState::new(desired.node.clone())
        };
        // Datagram frontends before or after: stale flows to clean (see `clean_stale_flows`).
        let datagram_before = self.loaded().is_some_and(|l| {
            l.current
                .frontends
                .keys()
                .any(|k| crate::ct::datagram(k.proto))
        });
        let mut report = self.sync(Some(desired), rest, validator, None)?;
        if datagram_before || has_datagram_port(desired.services.iter()) {
            self.clean_stale_flows(&mut report);
        }
        Ok(report)
    }

    /// Validates and plans in proportion to the change: only the changed objects are checked
    /// (against what the others claim) and only the changed services' map entries are
    /// written. A change of the node (which every service is planned against) needs the whole
    /// state, of which this backend keeps no copy: it returns [`Error::FullSyncRequired`]
    /// and changes nothing; call [`Dataplane::apply`] with the new state. Cluster policies,
    /// the baseline and peer nodes are kept (with the pods, endpoints and policies) and
    /// change incrementally: the policy maps' difference is written. So do host endpoints,
    /// host policies and failsafe ports: their tables are compiled again (a node has few)
    /// and, when they differ, written as the next generation (make-before-break, as a full
    /// sync does).
    fn apply_changes(&mut self, changes: &ChangeSet) -> Result<ApplyReport, Error> {
        self.capabilities().check_policy_tier_changes(changes)?;
        self.capabilities().check_l2_announcement_changes(changes)?;
        let Some(Synced::Yes(applied)) = self.loaded().map(|l| &l.synced) else {
            return Err(Error::FullSyncRequired);
        };
        // Core's validator checks every kind of object the change touches (cluster policies,
        // host endpoints and policies included) against those that stay.
        if applied.validator.check(&applied.rest.node, changes)? == Incremental::FullRequired {
            return Err(Error::FullSyncRequired);
        }
        // The planner derives a changed service's old entries from `previous`: a change set
        // that is not a diff from the applied state is refused before anything is touched.
        if !applied.planner.agrees_with(changes) {
            return Err(Error::FullSyncRequired);
        }
        let Synced::Yes(applied) = self.take_synced() else {
            return Err(Error::FullSyncRequired);
        };
        let Applied {
            rest: mut next,
            mut validator,
            planner,
        } = *applied;
        // The changed services are planned from the change set; the applied state keeps none.
        if !policy::services_only(changes) {
            ChangeSet {
                node: None,
                services: BTreeMap::new(),
                endpoints: changes.endpoints.clone(),
                policies: changes.policies.clone(),
                namespaces: changes.namespaces.clone(),
                pods: changes.pods.clone(),
                host_endpoints: changes.host_endpoints.clone(),
                host_policies: changes.host_policies.clone(),
                failsafe_ports: changes.failsafe_ports.clone(),
                cluster_policies: changes.cluster_policies.clone(),
                baseline_policy: changes.baseline_policy.clone(),
                nodes: changes.nodes.clone(),
            }
            .apply_to(&mut next);
        }
        validator.commit(&next.node, changes);
        // On failure nothing is left applied: the next sync is a full one.
        let mut report = self.sync(None, next, validator, Some((changes, planner)))?;
        let touched = changes
            .services
            .values()
            .flat_map(|c| c.previous.iter().chain(&c.current));
        if has_datagram_port(touched) {
            self.clean_stale_flows(&mut report);
        }
        Ok(report)
    }

    /// After [`Dataplane::reset`] (nothing loaded until the next apply): nothing programmed.
    fn observe(&self) -> Result<ObservedState, Error> {
        let Some(loaded) = self.loaded() else {
            return Ok(ObservedState::default());
        };
        let maps = &loaded.objects.maps;
        let current = Current::read(maps, &loaded.objects.capacities)?;
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

    /// After [`Dataplane::reset`]: no flow.
    fn flows(&self) -> Result<Vec<Flow>, Error> {
        let Some(loaded) = self.loaded() else {
            return Ok(Vec::new());
        };
        let maps = &loaded.objects.maps;
        let names = match &loaded.synced {
            Synced::Yes(applied) => applied.planner.names(),
            Synced::No { .. } => HashMap::new(),
        };
        Ok(crate::live::flows(ct_entries(maps)?, |id| {
            names.get(&id).map(|n| (*n).clone())
        }))
    }

    /// After [`Dataplane::reset`]: all zero (the counters went with the maps).
    fn stats(&self) -> Result<Stats, Error> {
        let Some(loaded) = self.loaded() else {
            return Ok(Stats::default());
        };
        let maps = &loaded.objects.maps;
        let mut totals = [0u64; STAT_NAMES.len()];
        for (i, total) in totals.iter_mut().enumerate() {
            let values = match maps.stats.get(&(i as u32), 0) {
                Ok(v) => v,
                // A counter added after the map was pinned.
                Err(aya::maps::MapError::OutOfBounds { .. }) if i >= maps::STAT_ORIGINAL => {
                    continue
                }
                Err(e) => return Err(EbpfError::map(map_table::STATS.name, "reading", e).into()),
            };
            *total = values.iter().sum();
        }
        let ct = ct_entries(maps)?;
        let flows = ct.iter().filter(|(_, v)| v.is_forward()).count() as u64;
        // (masquerade entries are counted too: they are connections the datapath tracks)
        let other = STAT_NAMES
            .iter()
            .zip(totals)
            .map(|(n, v)| ((*n).to_owned(), v))
            .collect();
        let mut other: BTreeMap<String, u64> = other;
        crate::ct::fill_counters(&mut other, ct.len(), loaded.objects.capacities.conntrack);
        let drops = crate::events::drop_counters(&loaded.objects.drops, &mut other)?;
        crate::l2::counters(&loaded.objects.l2_maps.addrs, &mut other)?;
        Ok(Stats {
            packets_translated: totals[STAT_TRANSLATED],
            packets_dropped: totals[STAT_DROPPED],
            packets_rejected: totals[STAT_REJECTED],
            flows,
            drops,
            other,
        })
    }

    /// Expires conntrack and session-affinity entries idle longer than their timeouts at
    /// `now` ([`CtTimeouts`](crate::CtTimeouts), and each service's affinity timeout): this
    /// backend tracks connections in its own maps, which nothing else expires (the LRU evicts
    /// only under pressure). `other` holds `orphans`, the reverse entries whose forward entry
    /// was gone, and `reverse_lost`, the live connections whose reverse entry was gone (their
    /// forward entry goes too, so that their next packet sets both up again). After [`Dataplane::reset`]: nothing tracked, nothing to expire.
    ///
    /// First it refreshes the L2 responder's liveness
    /// ([`EbpfConfig::l2_liveness`](crate::EbpfConfig::l2_liveness)), and after a lapse sends
    /// the gratuitous announcements again (a failure to send is logged). The conntrack pass
    /// follows only when the conntrack interval
    /// ([`maintenance_interval`](crate::maintenance_interval) of the timeouts) has passed
    /// since the last one at `now`: while addresses are announced `maintain()` is called
    /// more often than that (see [`Dataplane::maintenance_interval`]), and a call in between
    /// refreshes the liveness only, reporting nothing (`flows_remaining` `None`).
    fn maintain(&mut self, now: Duration) -> Result<MaintenanceReport, Error> {
        let timeouts = self.config.timeouts;
        let netns = self.config.netns.clone();
        let Some(loaded) = self.loaded.as_deref_mut() else {
            return Ok(MaintenanceReport {
                flows_remaining: Some(0),
                ..MaintenanceReport::default()
            });
        };
        // The L2 responder's liveness first (cheap): the node keeps answering for its
        // announced addresses as long as this runs (l2.rs). After a lapse, announced again.
        if let Some(w) = loaded
            .l2
            .keep_alive(&mut loaded.objects.l2_maps, netns.as_deref())?
        {
            tracing::warn!(field = %w.field, message = %w.message, "L2 announcements");
        }
        if !loaded.gc_schedule.due(now, maintenance_interval(&timeouts)) {
            return Ok(MaintenanceReport::default());
        }
        let gc = gc(&mut loaded.objects.maps, &loaded.current, &timeouts, now)?;
        loaded.gc_schedule.ran(now);
        Ok(MaintenanceReport {
            flows_expired: gc.expired as u64,
            affinity_expired: gc.affinity_expired as u64,
            flows_remaining: Some(gc.remaining as u64),
            other: [
                ("orphans".to_owned(), gc.orphans as u64),
                ("reverse_lost".to_owned(), gc.reverse_lost as u64),
                ("policy_flows_expired".to_owned(), gc.policy_expired as u64),
            ]
            .into(),
        })
    }

    /// Half the shortest configured conntrack timeout, between
    /// [`MIN_MAINTENANCE_INTERVAL`](crate::MIN_MAINTENANCE_INTERVAL) and
    /// [`MAX_MAINTENANCE_INTERVAL`](crate::MAX_MAINTENANCE_INTERVAL); see
    /// [`maintenance_interval`] for why.
    ///
    /// While addresses are L2-announced: at most a third of
    /// [`EbpfConfig::l2_liveness`](crate::EbpfConfig::l2_liveness), so that `maintain()`
    /// refreshes the responder's liveness before it lapses even when one run is late (the
    /// conntrack pass still runs on its own interval: `maintain()` skips it in between).
    fn maintenance_interval(&self) -> Option<Duration> {
        let gc = maintenance_interval(&self.config.timeouts);
        Some(match self.loaded() {
            Some(l) if l.l2.announces() => gc.min(self.config.l2_liveness / 3),
            _ => gc,
        })
    }

    /// Opens a reader of the node's ring buffer ([`EbpfEvents`]) and has the programs write
    /// the events `options` asks for besides drops, as long as the reader lives: the
    /// programs write what any open reader asked for (`dp_config`'s `CFG_F_EV_*`, kept by
    /// every sync), and stop when the last reader that asked is dropped. After
    /// [`Dataplane::reset`] nothing is pinned: an error until the next apply.
    ///
    /// [`EbpfEvents`]: crate::EbpfEvents
    fn events(&self, options: &EventOptions) -> Result<BoxEventSource, Error> {
        let node = self.applied().map(|s| s.node.name.clone());
        let events = match node {
            Some(node) => crate::events::EbpfEvents::open_for(
                &self.config.pin_dir,
                self.config.netns.as_deref(),
                node,
            )?,
            None => crate::events::open_pinned_events(
                &self.config.pin_dir,
                self.config.netns.as_deref(),
            )?,
        };
        let ask = EventAsk::new(&self.event_asks, &self.config.pin_dir, *options)?;
        Ok(Box::new(events.with_ask(ask)))
    }

    fn reset(&mut self) -> Result<(), Error> {
        // Whatever fails below, the kernel no longer holds what the last sync left (detaching
        // starts by taking the attachments out): the next sync must be full.
        self.set_synced(Synced::NEVER);
        let netns = self.config.netns.clone();
        netns::in_netns(netns.as_deref(), || self.detach_all(false))?;
        // Without loaded objects (a failed load, an earlier reset) detach_all did nothing, but
        // a marker of an earlier process may still say that we turned lo's accept_local on:
        // turn it off before the marker goes with the directory.
        let pin_dir = self.config.pin_dir.clone();
        netns::in_netns(netns.as_deref(), || loopback::restore(&pin_dir))?;
        self.loaded = None;
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

/// Makes `dp_names` hold the names of `planner`'s services and `rest`'s pods and node (only
/// what `changes` touched, when there are changes). Returns the entries written, and a
/// warning when some did not fit.
fn sync_names(
    names: &mut Names,
    objects: &mut Objects,
    planner: &plan::Planner,
    rest: &DesiredState,
    changes: Option<&ChangeSet>,
) -> Result<(usize, Option<Warning>), EbpfError> {
    let (written, unfit) = match changes {
        None => names.sync_full(&mut objects.names, &objects.names_batch, planner, rest)?,
        Some(changes) => names.sync_changes(
            &mut objects.names,
            &objects.names_batch,
            planner,
            rest,
            changes,
        )?,
    };
    let warning = (unfit > 0).then(|| Warning {
        object: "node".to_owned(),
        field: "dp_names".to_owned(),
        message: format!(
            "{unfit} names (services, pods) were not written, being longer than 120 bytes \
             or finding Capacities::names full: their flow events go without them"
        ),
    });
    Ok((written, warning))
}

/// Anti-spoofing knows a pod's addresses by `dp_local` (a source it does not send to the
/// veth is dropped as forged): with policies every local address must fit, or it would be
/// left for any veth to borrow.
fn check_local_fits(state: &DesiredState, capacity: u32) -> Result<(), Error> {
    if state.policies.is_empty() {
        return Ok(());
    }
    let addresses: BTreeSet<_> = state.endpoints.iter().flat_map(|e| &e.ips).collect();
    if addresses.len() > capacity as usize {
        return Err(Error::CapacityExceeded {
            what: "local pod addresses (Capacities::local; with NetworkPolicy every one must be \
                   in dp_local for anti-spoofing)"
                .to_owned(),
            needed: addresses.len(),
            capacity: capacity as usize,
        });
    }
    Ok(())
}

/// The error of [`EbpfConfig::events`] that the programs cannot apply.
fn invalid_events(e: crate::EventLimitError) -> EbpfError {
    EbpfError::Load {
        object: "EbpfConfig::events".to_owned(),
        source: Box::new(e),
    }
}
