//! The reconcile loop: source events into the store (`dataplane_kube::Cluster`), and
//! syncs of the translated state into the dataplane when the [`Runner`] says so.
//!
//! ```text
//!  SourceEvent ─▶ Cluster (store) ──translate──▶ ChangeSet ──AsyncDataplane::apply_changes_shared──▶ kernel
//!                    │                               ├─▶ health_checks ─▶ ServiceHealth ports
//!                    └─ node_draining ─▶ Status      └─▶ Metrics, one log line per sync
//! ```
//!
//! - No sync until every kind has been listed once (a half-listed cluster would remove
//!   services that are only not listed yet).
//! - The translated state is held once, by the store: each sync shares it
//!   (`Cluster::shared_state`, an `Arc`) with the dataplane's thread for the time of the
//!   apply, and the thread keeps no copy ([`AsyncDataplane::apply`],
//!   [`AsyncDataplane::apply_changes_shared`]). Health checks and counts come from it too.
//! - A *partial* sync hands the store's changes since the last sync
//!   (`Cluster::translate_changes`, in proportion to the change) to
//!   [`AsyncDataplane::apply_changes_shared`]: the dataplane applies them, or the whole
//!   state when it answers `FullSyncRequired`. Only after a successful sync: otherwise the
//!   sync is full.
//! - A *full* sync (the first, the periodic one, a retry) brings the store's state up to
//!   date (`Cluster::translate_in_place`) and makes the dataplane apply the whole of it
//!   ([`AsyncDataplane::apply`]: no diff against what it holds, which is what repairs a
//!   datapath changed behind the agent's back).
//! - Conntrack maintenance is the handle's: [`AsyncDataplane`] runs `maintain` on the
//!   dataplane's own interval between requests; the loop only reads the results into the
//!   metrics. Its counters are read on their own schedule ([`STATS_INTERVAL`], longer when a
//!   reading is slow: [`stats_pause`]; put off while changes wait for a sync) without the loop
//!   waiting for them: the reading is awaited alongside the events, one at a time.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use dataplane::{
    error_chain, health_checks, ApplyReport, AsyncDataplane, AsyncError, BoxDataplane,
    Capabilities, IpFamily, Stats,
};
use dataplane_kube::{
    last_change_trigger_time, Cluster, InterfaceResolver, Kind, Object, ObjectKey,
    TranslationWarning,
};
use futures::FutureExt;
use tokio::sync::mpsc;

use crate::health::{ServiceHealth, Status};
use crate::l2::{Elect, ServiceSelector, Verdict};
use crate::metrics::{Metrics, Programmed};
use crate::runner::{Periods, RunKind, Runner};
use crate::source::SourceEvent;

/// How often the dataplane's counters are read into the metrics, at most.
pub const STATS_INTERVAL: Duration = Duration::from_secs(10);

/// The dataplane's thread spends at most 1/`STATS_DUTY` of its time reading counters: a
/// reading that took `t` is followed by the next one no sooner than `STATS_DUTY * t` later
/// (see [`stats_pause`]). A reading runs on the dataplane's thread, and a sync that comes
/// meanwhile waits for it: nftables' `stats` lists the whole table as JSON, ~3 s at 10k
/// services (BENCHMARKS.md), which at a fixed 10 s delayed about one change in four by
/// seconds. eBPF's reading takes milliseconds and keeps the 10 s.
pub const STATS_DUTY: u32 = 50;

/// How long a reading is put off while changes wait for a sync (a sync coming behind a
/// reading would wait for it), at most [`STATS_MAX_DEFERRALS`] times in a row.
pub const STATS_DEFER: Duration = Duration::from_secs(1);

/// See [`STATS_DEFER`]: past this, the counters are read even with changes waiting (a sync
/// that keeps failing must not stop the readings).
pub const STATS_MAX_DEFERRALS: u32 = 10;

/// The pause after a reading of the counters that took `took`: [`STATS_INTERVAL`], or
/// [`STATS_DUTY`] times the reading when that is longer.
pub fn stats_pause(took: Duration) -> Duration {
    took.saturating_mul(STATS_DUTY).max(STATS_INTERVAL)
}

/// The most source events taken in one go before the loop looks at its clock, its shutdown
/// signal and its dataplane again: a source that floods (a relist of a big cluster is one event
/// per kind, but a storm of watch events is not) must not starve syncs and shutdown.
pub const MAX_BURST: usize = 1024;

/// How soon a sync comes again while a local pod has no host-side interface yet (the CNI
/// adds its route moments after the pod runs): sooner than `--sync-period`, which would leave
/// the pod without its policies and as no endpoint for that long. At least `--min-sync-period`;
/// doubled at each sync that still finds no interface, up to `--sync-period`.
pub const INTERFACE_RETRY: Duration = Duration::from_secs(1);

/// A resolver of pod interfaces whose cache the loop empties before each sync.
pub trait Interfaces: InterfaceResolver + Send + Sync {
    /// Forgets cached answers.
    fn refresh(&self) {}
}

impl Interfaces for crate::interfaces::RouteResolver {
    fn refresh(&self) {
        crate::interfaces::RouteResolver::refresh(self);
    }
}

/// Interfaces from a function (tests, embedders with their own knowledge of the veths).
pub struct FnInterfaces<F>(pub F);

impl<F> std::fmt::Debug for FnInterfaces<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FnInterfaces")
    }
}

impl<F> InterfaceResolver for FnInterfaces<F>
where
    F: Fn(&dataplane::ObjectName, &[std::net::IpAddr]) -> Option<String>,
{
    fn interface(&self, pod: &dataplane::ObjectName, ips: &[std::net::IpAddr]) -> Option<String> {
        (self.0)(pod, ips)
    }
}

impl<F> Interfaces for FnInterfaces<F> where
    F: Fn(&dataplane::ObjectName, &[std::net::IpAddr]) -> Option<String> + Send + Sync
{
}

/// What a sync did, for the log line and for tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncOutcome {
    /// Full or partial, as the runner asked.
    pub kind: RunKind,
    /// The dataplane's report (`None`: the sync failed).
    pub report: Option<ApplyReport>,
    /// Services, endpoints (local pods) and policies in the state.
    pub counts: (usize, usize, usize),
    /// The translation's warnings (every current one, logged only when new).
    pub warnings: Vec<String>,
}

/// Where the loop reports: health, metrics, health-check ports.
#[derive(Debug)]
pub struct Outputs {
    /// What `/healthz`, `/livez` and the health-check ports answer from.
    pub status: Arc<Status>,
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// The health-check NodePort servers.
    pub service_health: ServiceHealth,
    /// Entries of the dataplane's conntrack table when it has a fixed size (eBPF), for the
    /// fill-level metric.
    pub conntrack_capacity: Option<u64>,
}

/// The loop's parts. Build with [`Reconciler::new`], then [`Reconciler::run`].
pub struct Reconciler {
    cluster: Cluster,
    listed: BTreeSet<Kind>,
    /// Keys named by the `ListPart`s of a listing in progress, by kind (its `Listed` deletes
    /// the stored objects it did not name).
    listing: BTreeMap<Kind, BTreeSet<ObjectKey>>,
    runner: Runner,
    dataplane: AsyncDataplane,
    interfaces: Arc<dyn Interfaces>,
    status: Arc<Status>,
    metrics: Arc<Metrics>,
    service_health: ServiceHealth,
    /// Objects changed since the last successful sync (after the first one).
    pending: BTreeSet<ObjectKey>,
    /// Changes before the first successful sync, counted only: their keys are not kept
    /// (every object is new to the first sync, which is full anyway; at 10k services the
    /// keys were 2.6 MiB at the first sync's peak).
    unsynced: usize,
    /// A sync has succeeded.
    synced_once: bool,
    /// Trigger times of the EndpointSlice changes since the last successful sync, each
    /// change's (kube-proxy's `lastChangeTriggerTimes`), with the slice's family.
    triggers: BTreeMap<ObjectKey, Vec<(IpFamily, SystemTime)>>,
    /// When the loop was made, to the second (the annotation's precision: a change in the
    /// second the agent started counts): older trigger times are not measured (kube-proxy's
    /// `trackerStartTime`: a restarted agent would otherwise report the age of every slice
    /// that changed while it was down, or long before).
    started: SystemTime,
    /// Warnings logged already, by object: logged again only when they change or their
    /// object does (the store keeps no resourceVersion to tell versions apart).
    warned: HashMap<ObjectKey, HashSet<String>>,
    /// The dataplane's notes of the programmed state, logged already.
    noted: HashSet<String>,
    conntrack_capacity: Option<u64>,
    capabilities: Option<Capabilities>,
    last_outcome: Option<SyncOutcome>,
    /// The dataplane's thread is gone (it panicked): nothing will be programmed any more.
    dataplane_stopped: bool,
    /// Local pods left out of the last translation for want of an interface: a sync is
    /// requested at this time to look for them again.
    interface_retry_at: Option<Instant>,
    /// The last translation left local pods out for want of an interface.
    pods_waiting: bool,
    /// Syncs in a row that left pods out for want of an interface.
    interface_retries: u32,
    /// The dataplane's thread holds the store's state as of its last translation (the last
    /// sync succeeded): a partial sync may send the changes since then only.
    in_step: bool,
    /// L2 announcements by election ([`Reconciler::with_l2_election`]).
    l2: Option<L2Run>,
    /// Its verdicts, taken by [`Reconciler::run`].
    l2_verdicts: Option<mpsc::UnboundedReceiver<Verdict>>,
}

/// L2 announcements by election: the per-Service Lease elections ([`crate::l2`]) and
/// the Services that may be announced.
pub struct L2Election {
    /// The elections (the [`crate::l2::Announcer`] over the API server).
    pub elect: Box<dyn Elect>,
    /// Their verdicts.
    pub verdicts: mpsc::UnboundedReceiver<Verdict>,
    /// `--l2-service-selector` (`None`: every Service).
    pub selector: Option<ServiceSelector>,
}

impl std::fmt::Debug for L2Election {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("L2Election")
            .field("selector", &self.selector)
            .finish_non_exhaustive()
    }
}

struct L2Run {
    elect: Box<dyn Elect>,
    selector: Option<ServiceSelector>,
    /// Services the selector leaves out (from the source's objects: the store keeps no
    /// labels but the proxy's).
    excluded: BTreeSet<ObjectKey>,
    /// The candidates as of the last sync: a verdict for another Service is not taken.
    wanted: BTreeSet<ObjectKey>,
}

impl L2Run {
    /// Notes whether the Services of `event` are selected.
    fn observe(&mut self, event: &SourceEvent) {
        let Some(selector) = &self.selector else {
            return;
        };
        let objects: &[Object] = match event {
            SourceEvent::ListPart { objects, .. } | SourceEvent::Listed { objects, .. } => objects,
            SourceEvent::Applied(object) => std::slice::from_ref(object),
            SourceEvent::Deleted(key) => {
                self.excluded.remove(key);
                return;
            }
            SourceEvent::Error { .. } => return,
        };
        for object in objects {
            let (Object::Service(svc), Ok(key)) = (object, object.key()) else {
                continue;
            };
            if selector.matches(svc.metadata.labels.as_ref()) {
                self.excluded.remove(&key);
            } else {
                self.excluded.insert(key);
            }
        }
    }
}

impl std::fmt::Debug for Reconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconciler")
            .field("listed", &self.listed)
            .field("runner", &self.runner)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl Reconciler {
    /// A loop over `cluster` (the store, with its settings) programming `dataplane` (moved
    /// to a thread of its own), reporting to `outputs`.
    pub fn new(
        cluster: Cluster,
        dataplane: BoxDataplane,
        interfaces: Arc<dyn Interfaces>,
        periods: Periods,
        outputs: Outputs,
    ) -> std::io::Result<Self> {
        let Outputs {
            status,
            metrics,
            service_health,
            conntrack_capacity,
        } = outputs;
        Ok(Self {
            cluster,
            listed: BTreeSet::new(),
            listing: BTreeMap::new(),
            runner: Runner::new(periods),
            dataplane: AsyncDataplane::new(dataplane)?,
            interfaces,
            status,
            metrics,
            service_health,
            pending: BTreeSet::new(),
            unsynced: 0,
            synced_once: false,
            triggers: BTreeMap::new(),
            started: whole_second(SystemTime::now()),
            warned: HashMap::new(),
            noted: HashSet::new(),
            conntrack_capacity,
            capabilities: None,
            last_outcome: None,
            dataplane_stopped: false,
            interface_retry_at: None,
            pods_waiting: false,
            interface_retries: 0,
            in_step: false,
            l2: None,
            l2_verdicts: None,
        })
    }

    /// This loop with L2 announcements by election: the store translates with
    /// `L2Announcements::Elected`; after each sync the candidates (the store's, selected) go
    /// to `l2.elect`, and its verdicts to the store (see [`Reconciler::l2_verdict`]).
    #[must_use]
    pub fn with_l2_election(mut self, l2: L2Election) -> Self {
        self.cluster
            .set_l2_announcements(dataplane_kube::L2Announcements::Elected);
        self.l2 = Some(L2Run {
            elect: l2.elect,
            selector: l2.selector,
            excluded: BTreeSet::new(),
            wanted: BTreeSet::new(),
        });
        self.l2_verdicts = Some(l2.verdicts);
        self
    }

    /// Takes an election's verdict: a Service this node won is announced from the next sync
    /// on, one it lost is not (the store re-translates that one Service). A win for a
    /// Service that is no candidate (any more) is not taken: its election is being stopped.
    pub fn l2_verdict(&mut self, verdict: Verdict) {
        let Some(l2) = &self.l2 else {
            return;
        };
        if verdict.held && !l2.wanted.contains(&verdict.service) {
            return;
        }
        if self
            .cluster
            .set_l2_announced(&verdict.service, verdict.held)
        {
            self.changed(Instant::now(), vec![verdict.service], Kind::Service);
        }
    }

    /// After a successful sync: the candidates to the elections. A Service announced (as
    /// just programmed) that is no candidate any more is withdrawn first: it stays in the
    /// elections (its lease held) until the sync that withdraws it, then its lease is
    /// released, so that the next announcer never overlaps this one.
    fn l2_synced(&mut self) {
        let Some(l2) = &mut self.l2 else {
            return;
        };
        let programmed = self.cluster.l2_announced().clone();
        let mut wanted = self.cluster.l2_candidates();
        wanted.retain(|k| !l2.excluded.contains(k));
        let withdraw: Vec<ObjectKey> = programmed.difference(&wanted).cloned().collect();
        let mut compete = wanted.clone();
        compete.extend(programmed);
        l2.elect.set_candidates(&compete);
        l2.wanted = wanted;
        if !withdraw.is_empty() {
            for key in &withdraw {
                self.cluster.set_l2_announced(key, false);
            }
            self.changed(Instant::now(), withdraw, Kind::Service);
        }
    }

    /// At shutdown: with `graceful`, every announcement withdrawn by a sync and, when that
    /// sync succeeded, the leases released; else the elections stopped and the leases left
    /// to expire (the datapath, which stays in place, may still announce).
    async fn l2_shutdown(&mut self, graceful: bool) {
        let Some(l2) = self.l2.take() else {
            return;
        };
        let held: Vec<ObjectKey> = self.cluster.l2_announced().iter().cloned().collect();
        let mut release = graceful && !self.dataplane_stopped;
        if release && !held.is_empty() {
            for key in &held {
                self.cluster.set_l2_announced(key, false);
            }
            let outcome = self.sync(RunKind::Partial).await;
            release = outcome.report.is_some();
            if release {
                tracing::info!(
                    services = held.len(),
                    "L2 announcements withdrawn: releasing the leases"
                );
            } else {
                tracing::warn!("L2 announcements not withdrawn: the leases are left to expire");
            }
        }
        l2.elect.shutdown(release).await;
    }

    /// The store.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Whether every kind has been listed (syncs may run).
    pub fn ready(&self) -> bool {
        self.listed.len() == Kind::ALL.len()
    }

    /// The last sync's outcome.
    pub fn last_outcome(&self) -> Option<&SyncOutcome> {
        self.last_outcome.as_ref()
    }

    /// The health-check ports served now.
    pub fn health_ports(&self) -> BTreeMap<dataplane::ObjectName, u16> {
        self.service_health.ports()
    }

    /// Takes in one source event.
    pub fn handle(&mut self, event: SourceEvent) {
        let node_event = match &event {
            SourceEvent::Listed { kind, .. } | SourceEvent::ListPart { kind, .. } => {
                *kind == Kind::Node
            }
            SourceEvent::Applied(object) => object.kind() == Kind::Node,
            SourceEvent::Deleted(key) => key.kind == Kind::Node,
            SourceEvent::Error { .. } => false,
        };
        let listed_services = matches!(
            &event,
            SourceEvent::Listed {
                kind: Kind::Service,
                ..
            }
        );
        if let Some(l2) = &mut self.l2 {
            l2.observe(&event);
        }
        self.take(event);
        if listed_services {
            if let Some(l2) = &mut self.l2 {
                // A relist deleted the Services it did not name.
                let cluster = &self.cluster;
                l2.excluded.retain(|k| cluster.contains(k));
            }
        }
        if node_event {
            self.status.set_node_eligible(self.node_eligible());
        }
    }

    /// Whether this node may take load-balancer traffic: eligible while the Nodes are not
    /// listed yet (kube-proxy's start), then only while the local Node exists and is neither
    /// being deleted nor tainted for deletion.
    ///
    /// A deleted Node is not eligible, and the agent stays up: kube-proxy exits when its Node
    /// is deleted (`pkg/proxy/node.go`, `OnNodeDelete`) and its DaemonSet restarts it to wait
    /// for the Node, but the agent keeps serving what it programmed (the pods of a deleted
    /// Node are going anyway, and a manifest directory's Node may come back with the next
    /// save), says so on `/healthz` (503, `nodeEligible: false`), retries its syncs (they fail
    /// with "node not found") and takes the Node back when it returns, without a restart or
    /// a crash loop's back-off. `/livez` stays 200: the agent is alive.
    fn node_eligible(&self) -> bool {
        if !self.listed.contains(&Kind::Node) {
            return true;
        }
        let key = ObjectKey::cluster(Kind::Node, self.cluster.settings().node_name.as_str());
        self.cluster.contains(&key) && !self.cluster.node_draining()
    }

    fn take(&mut self, event: SourceEvent) {
        let now = Instant::now();
        match event {
            SourceEvent::ListPart { kind, objects } => self.take_part(now, kind, objects),
            SourceEvent::Listed { kind, objects } => {
                let first = !self.listed.contains(&kind);
                let mut changed_keys = Vec::new();
                for object in &objects {
                    if let Ok(key) = object.key() {
                        if !self.cluster.is_current(object) {
                            if !first {
                                self.note_trigger(&key, object);
                            }
                            changed_keys.push(key);
                        }
                    }
                }
                let mut listed = self.listing.remove(&kind).unwrap_or_default();
                let parts = !listed.is_empty();
                listed.extend(objects.iter().filter_map(|o| o.key().ok()));
                // Slices gone in the relist: their changes will never be programmed.
                self.triggers
                    .retain(|key, _| key.kind != kind || listed.contains(key));
                let result = if parts {
                    // The parts' objects are stored already: delete what the listing did not
                    // name, then store this event's objects.
                    let gone: Vec<ObjectKey> = self
                        .cluster
                        .keys(kind)
                        .filter(|k| !listed.contains(*k))
                        .cloned()
                        .collect();
                    let mut changed = false;
                    for key in gone {
                        changed |= self.cluster.delete(&key);
                    }
                    objects.into_iter().try_fold(changed, |changed, o| {
                        self.cluster.apply(o).map(|c| changed | c)
                    })
                } else {
                    self.cluster.replace(kind, objects)
                };
                match result {
                    Ok(changed) => {
                        if changed {
                            // Deleted ones count too, but are not named by the list.
                            self.changed(now, changed_keys, kind);
                        }
                    }
                    Err(e) => self.source_error(Some(kind), &error_chain(&e)),
                }
                if first {
                    self.listed.insert(kind);
                    tracing::debug!(%kind, count = self.cluster.count(kind), "listed");
                    if self.ready() {
                        // What parsing the listing left free (the objects were trimmed on the
                        // way into the store) goes back before the first sync's peak.
                        let rss = crate::heap::trim();
                        tracing::info!(
                            rss_kib = rss.map(|(_, after)| after),
                            rss_before_trim_kib = rss.map(|(before, _)| before),
                            "every kind listed: first sync"
                        );
                        self.runner.request();
                    }
                }
            }
            SourceEvent::Applied(object) => {
                let kind = object.kind();
                let key = match object.key() {
                    Ok(key) => key,
                    Err(e) => return self.source_error(Some(kind), &error_chain(&e)),
                };
                if !self.cluster.is_current(&object) {
                    self.note_trigger(&key, &object);
                }
                match self.cluster.apply(object) {
                    Ok(true) => self.changed(now, vec![key], kind),
                    Ok(false) => {}
                    Err(e) => self.source_error(Some(kind), &format!("{key}: {}", error_chain(&e))),
                }
            }
            SourceEvent::Deleted(key) => {
                let kind = key.kind;
                self.triggers.remove(&key);
                if self.cluster.delete(&key) {
                    self.changed(now, vec![key], kind);
                }
            }
            SourceEvent::Error { kind, message } => self.source_error(kind, &message),
        }
    }

    /// A part of a listing: its objects stored at once (trimmed, the full objects dropped
    /// here), their keys kept for the listing's closing `Listed`.
    fn take_part(&mut self, now: Instant, kind: Kind, objects: Vec<Object>) {
        let first = !self.listed.contains(&kind);
        let mut changed_keys = Vec::new();
        for object in objects {
            let key = match object.key() {
                Ok(key) if key.kind == kind => key,
                Ok(key) => {
                    self.source_error(
                        Some(kind),
                        &format!("{key} in a listing of {kind}: left out"),
                    );
                    continue;
                }
                Err(e) => {
                    self.source_error(Some(kind), &error_chain(&e));
                    continue;
                }
            };
            if !first && !self.cluster.is_current(&object) {
                self.note_trigger(&key, &object);
            }
            self.listing.entry(kind).or_default().insert(key.clone());
            match self.cluster.apply(object) {
                Ok(true) => changed_keys.push(key),
                Ok(false) => {}
                Err(e) => {
                    self.source_error(Some(kind), &format!("{key}: {}", error_chain(&e)));
                }
            }
        }
        if !changed_keys.is_empty() {
            self.changed(now, changed_keys, kind);
        }
    }

    fn note_trigger(&mut self, key: &ObjectKey, object: &Object) {
        let Object::EndpointSlice(slice) = object else {
            return;
        };
        let family = match slice.address_type.as_str() {
            "IPv4" => IpFamily::V4,
            "IPv6" => IpFamily::V6,
            // FQDN slices are not programmed (kube-proxy ignores them too).
            _ => return,
        };
        if let Some(at) = last_change_trigger_time(slice).filter(|at| *at >= self.started) {
            // Every change is measured, as kube-proxy appends each trigger time.
            self.triggers
                .entry(key.clone())
                .or_default()
                .push((family, at));
        }
    }

    fn source_error(&self, kind: Option<Kind>, message: &str) {
        self.metrics.source_errors.inc();
        if let Some(kind) = kind {
            tracing::warn!(%kind, "{message}");
        } else {
            tracing::warn!("{message}");
        }
    }

    fn changed(&mut self, now: Instant, keys: Vec<ObjectKey>, kind: Kind) {
        let changes = keys.len() as u64;
        match kind {
            Kind::Service => {
                self.metrics.service_changes.inc_by(changes);
            }
            Kind::EndpointSlice => {
                self.metrics.endpoint_changes.inc_by(changes);
            }
            _ => {}
        }
        for key in keys {
            let kind = key.kind;
            // A new version: its warnings are news again.
            self.warned.remove(&key);
            let new = if self.synced_once {
                self.pending.insert(key)
            } else {
                self.unsynced += 1;
                true
            };
            if new {
                match kind {
                    Kind::Service => self.metrics.service_changes_pending.inc(),
                    Kind::EndpointSlice => self.metrics.endpoint_changes_pending.inc(),
                    _ => 0,
                };
            }
        }
        self.metrics.queued(SystemTime::now());
        if self.ready() {
            self.status.queued(now);
        }
        self.runner.request();
    }

    /// When the next sync is due (`None`: not before an event).
    pub fn next_sync(&self, now: Instant) -> Option<Instant> {
        if !self.ready() {
            return None;
        }
        match (self.runner.next_run(now), self.interface_retry_at) {
            (Some(run), Some(retry)) => Some(run.min(retry)),
            (run, retry) => run.or(retry),
        }
    }

    /// Runs the sync due at `now`, if one is.
    pub async fn sync_if_due(&mut self, now: Instant) -> Option<SyncOutcome> {
        if !self.ready() {
            return None;
        }
        if self.interface_retry_at.is_some_and(|at| at <= now) {
            // Look for the pods' interfaces again (the store translates them anew).
            self.interface_retry_at = None;
            self.runner.request();
        }
        let kind = self.runner.due(now)?;
        Some(self.sync(kind).await)
    }

    /// One sync of `kind`: translate, program, then health ports, metrics and the log line.
    pub async fn sync(&mut self, kind: RunKind) -> SyncOutcome {
        self.pods_waiting = false;
        let outcome = self.sync_once(kind).await;
        // From the end of the sync (the runner counts `min_sync` from there too), doubling
        // while the pods stay without an interface, up to `--sync-period` (a pod that never
        // gets a route must not cost a sync and a log line every second).
        self.interface_retries = if self.pods_waiting {
            self.interface_retries.saturating_add(1)
        } else {
            0
        };
        self.interface_retry_at = self.pods_waiting.then(|| {
            let periods = self.runner.periods();
            let backoff = INTERFACE_RETRY
                .saturating_mul(1 << (self.interface_retries - 1).min(16))
                .min(periods.sync);
            Instant::now() + backoff.max(periods.min_sync)
        });
        outcome
    }

    async fn sync_once(&mut self, kind: RunKind) -> SyncOutcome {
        let started = Instant::now();
        self.interfaces.refresh();
        // A partial sync hands over only the store's changes since the last translation,
        // which the dataplane's thread holds the state before of: only while the two are in
        // step (the last sync succeeded), else the whole state goes.
        let partial = kind == RunKind::Partial && self.in_step;
        self.in_step = false;
        let translated = if partial {
            self.cluster
                .translate_changes(&*self.interfaces)
                .map(|c| (c.warnings, Some(c.changes)))
        } else {
            self.cluster
                .translate_in_place(&*self.interfaces)
                .map(|warnings| (warnings, None))
        };
        let (translation_warnings, changeset) = match translated {
            Ok(t) => t,
            Err(e) => return self.translate_failed(kind, started, &error_chain(&e)),
        };
        self.log_warnings(&translation_warnings);
        // The translation's word for a local pod without a host-side interface (it retries
        // them at every translation; only a sync has to come).
        let waiting = translation_warnings
            .iter()
            .any(|w| w.object.kind == Kind::Pod && w.field == "status.podIPs");
        self.pods_waiting = waiting;
        self.metrics
            .translation_warnings
            .set(i64::try_from(translation_warnings.len()).unwrap_or(i64::MAX));
        let warnings: Vec<String> = translation_warnings
            .iter()
            .map(ToString::to_string)
            .collect();
        // Shared by the store, not copied: a copy of 10k services is ~25 ms (BENCHMARKS.md)
        // and 8 MiB. The dataplane's thread drops it before answering and keeps no copy, so
        // the store holds the only one again when it next changes it (in place).
        let Some(state) = self.cluster.shared_state() else {
            return self.translate_failed(kind, started, "the store has no state to program");
        };
        let counts = (
            state.services.len(),
            state.endpoints.len(),
            state.policies.len(),
        );
        let checks = health_checks(&state);
        let programmed = Programmed::of(&state);
        let backends: usize = state.services.iter().map(|s| s.backends.len()).sum();
        // A full sync applies the whole state (`Dataplane::apply`: no diff against what the
        // dataplane holds, which is what repairs a datapath changed behind our back); a
        // partial one the changes, in proportion to the change, the whole state applied only
        // when the dataplane asks for it (`FullSyncRequired`).
        let request = match changeset {
            Some(changeset) => self
                .dataplane
                .apply_changes_shared(changeset, state)
                .boxed(),
            None => self.dataplane.apply(state).boxed(),
        };
        self.metrics.set_families(&programmed.families);
        let changes = self.pending.len() + self.unsynced;
        let result = request.await;
        let ended = Instant::now();
        let took = ended - started;
        match result {
            Ok(report) => {
                self.in_step = true;
                let mut outcome = self
                    .synced(
                        kind, started, ended, report, &checks, programmed, backends, changes,
                    )
                    .await;
                outcome.warnings = warnings;
                self.last_outcome = Some(outcome.clone());
                outcome
            }
            Err(e) => {
                if matches!(e, AsyncError::Stopped) {
                    self.dataplane_stopped = true;
                }
                self.runner.finished(kind, started, ended, false);
                self.metrics.apply_errors.inc();
                self.metrics.sync_took(kind == RunKind::Full, took);
                tracing::error!(
                    full = kind == RunKind::Full,
                    services = counts.0,
                    endpoints = counts.1,
                    policies = counts.2,
                    changes,
                    duration_ms = took.as_secs_f64() * 1000.0,
                    retry_in = ?self.runner.periods().retry,
                    error = %error_chain(&e),
                    "sync failed: the next one is full"
                );
                let outcome = SyncOutcome {
                    kind,
                    report: None,
                    counts,
                    warnings,
                };
                self.last_outcome = Some(outcome.clone());
                outcome
            }
        }
    }

    /// A sync that found no state to program: counted, logged, retried in full.
    fn translate_failed(&mut self, kind: RunKind, started: Instant, error: &str) -> SyncOutcome {
        self.metrics.apply_errors.inc();
        tracing::error!(error, "cannot translate the cluster: retrying");
        let ended = Instant::now();
        self.metrics
            .sync_took(kind == RunKind::Full, ended - started);
        self.runner.finished(kind, started, ended, false);
        let outcome = SyncOutcome {
            kind,
            report: None,
            counts: (0, 0, 0),
            warnings: Vec::new(),
        };
        self.last_outcome = Some(outcome.clone());
        outcome
    }

    /// The rest of a successful sync: health ports, metrics, the log line.
    #[allow(clippy::too_many_arguments)]
    async fn synced(
        &mut self,
        kind: RunKind,
        started: Instant,
        ended: Instant,
        report: ApplyReport,
        checks: &[dataplane::HealthCheck],
        programmed: Programmed,
        backends: usize,
        changes: usize,
    ) -> SyncOutcome {
        let took = ended - started;
        let counts = (
            programmed.services,
            programmed.endpoints,
            programmed.policies,
        );
        let wall = SystemTime::now();
        self.runner.finished(kind, started, ended, true);
        self.status.updated(wall);
        self.service_health.sync(checks);
        self.metrics.synced(report.full_sync, took, wall);
        self.metrics.programmed(&programmed);
        for (family, at) in std::mem::take(&mut self.triggers).into_values().flatten() {
            if let Ok(latency) = wall.duration_since(at) {
                self.metrics.network_programmed(family, latency);
            }
        }
        self.pending.clear();
        self.unsynced = 0;
        self.synced_once = true;
        self.metrics.service_changes_pending.set(0);
        self.metrics.endpoint_changes_pending.set(0);
        let skipped: Vec<String> = report.skipped.iter().map(ToString::to_string).collect();
        let warnings: Vec<String> = report.warnings.iter().map(ToString::to_string).collect();
        self.log_dataplane_notes(report.full_sync, &skipped, &warnings);
        if report.full_sync {
            // The full sync's transient copies of the state are freed: their pages go back
            // to the system rather than staying in the allocator until the next one.
            if let Some((before, after)) = crate::heap::trim() {
                tracing::debug!(
                    rss_before_kib = before,
                    rss_after_kib = after,
                    "free heap returned to the system"
                );
            }
        }
        tracing::info!(
            full = report.full_sync,
            services = counts.0,
            endpoints = counts.1,
            policies = counts.2,
            changes,
            services_changed = report.services_changed,
            services_removed = report.services_removed,
            objects_written = report.objects_written,
            duration_ms = took.as_secs_f64() * 1000.0,
            "synced"
        );
        if self.capabilities.is_none() {
            self.capabilities = self.dataplane.capabilities().await.ok();
        }
        if let Some(caps) = &self.capabilities {
            self.metrics
                .table_fill("services", counts.0, caps.max_services);
            self.metrics
                .table_fill("backends", backends, caps.max_backends);
        }
        self.l2_synced();
        SyncOutcome {
            kind,
            report: Some(report),
            counts,
            warnings: Vec::new(),
        }
    }

    /// Logs the warnings that are new since the last sync: once per object version, not
    /// every sync (an object that changes and still has the warning is logged again; a
    /// version is what the store tells apart, not a new resourceVersion alone).
    fn log_warnings(&mut self, warnings: &[TranslationWarning]) {
        let mut now: HashMap<ObjectKey, HashSet<String>> = HashMap::new();
        for w in warnings {
            let text = w.to_string();
            // Forgotten when the object changed (see `changed`): logged again then.
            let logged = self
                .warned
                .get(&w.object)
                .is_some_and(|texts| texts.contains(&text));
            if !logged {
                tracing::warn!(object = %w.object, field = %w.field, "{}", w.message);
            }
            now.entry(w.object.clone()).or_default().insert(text);
        }
        self.warned = now;
    }

    /// Logs the dataplane's notes (what it skipped or serves in a lesser way) that are new.
    /// A full sync reports every note of the state: the set is rebuilt from it, so that a
    /// note that went away and comes back is logged again and the set holds only what is
    /// true now (it grew forever before); a partial sync reports the changed services' notes
    /// only, which are added.
    fn log_dataplane_notes(&mut self, full: bool, skipped: &[String], warnings: &[String]) {
        let mut now = if full {
            HashSet::with_capacity(skipped.len() + warnings.len())
        } else {
            std::mem::take(&mut self.noted)
        };
        for note in skipped.iter().chain(warnings) {
            if !self.noted.contains(note) && !now.contains(note) {
                tracing::warn!("{note}");
            }
            now.insert(note.clone());
        }
        self.noted = now;
    }

    /// Takes in `first` and what else is queued on `events` already, [`MAX_BURST`] events at
    /// most (the rest waits for the next turn of the loop); returns how many it took.
    pub fn take_burst(
        &mut self,
        first: SourceEvent,
        events: &mut mpsc::Receiver<SourceEvent>,
    ) -> usize {
        self.handle(first);
        let mut taken = 1;
        while taken < MAX_BURST {
            let Ok(event) = events.try_recv() else {
                break;
            };
            self.handle(event);
            taken += 1;
        }
        taken
    }

    /// Reads the dataplane's counters into the metrics.
    pub async fn read_stats(&self) {
        let result = self.dataplane.stats().await;
        self.record_stats(result);
    }

    /// Puts a reading of the counters into the metrics.
    fn record_stats(&self, result: Result<Stats, AsyncError>) {
        match result {
            Ok(stats) => self.metrics.stats(&stats, self.conntrack_capacity),
            Err(e) => tracing::debug!(error = %e, "reading the dataplane's counters"),
        }
    }

    /// Whether the dataplane's thread is gone (a sync answered [`AsyncError::Stopped`]).
    pub fn dataplane_stopped(&self) -> bool {
        self.dataplane_stopped
    }

    /// Runs until `shutdown` resolves or the source ends, then stops the dataplane's thread
    /// without touching the kernel (the datapath stays in place). `Err` when the source
    /// ended first, or when the dataplane's thread died (a panic: a sync answered
    /// [`AsyncError::Stopped`], or its maintenance channel closed): nothing could be programmed
    /// any more, so the agent exits non-zero and its DaemonSet restarts it, which adopts the
    /// datapath in place (a loop that kept running would only retry failing syncs forever,
    /// its health going bad without anything restarting it).
    pub async fn run(
        mut self,
        mut events: mpsc::Receiver<SourceEvent>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        tokio::pin!(shutdown);
        let mut maintenance = self.dataplane.maintenance();
        // The reading of the counters in flight, awaited alongside the events and never in
        // the way of them: nftables' `stats` lists the whole table and reads
        // /proc/net/nf_conntrack, seconds at 10k services (BENCHMARKS.md), and the loop must
        // keep taking events meanwhile. One at a time, on its own schedule only (not after
        // each sync), spaced by how long the last one took (`stats_pause`), and put off while
        // changes wait for a sync: the dataplane's thread does one thing at a time, and a
        // sync behind a reading waits for it.
        let mut stats_reading: Option<(StatsReading, Instant)> = None;
        let mut next_stats = Instant::now() + STATS_INTERVAL;
        let mut deferrals = 0;
        let mut verdicts = self.l2_verdicts.take();
        let result = loop {
            let next = self.next_sync(Instant::now());
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = &mut shutdown => break Ok(()),
                Some(verdict) = async {
                    match verdicts.as_mut() {
                        Some(v) => v.recv().await,
                        None => std::future::pending().await,
                    }
                } => self.l2_verdict(verdict),
                event = events.recv() => {
                    let Some(event) = event else {
                        break Err(anyhow::anyhow!("the object source stopped"));
                    };
                    self.take_burst(event, &mut events);
                }
                () = sleep => {
                    // Counters are read on their own timer only: the eBPF dataplane counts
                    // its connections by walking its conntrack table, which a sync must not
                    // wait for.
                    self.sync_if_due(Instant::now()).await;
                    if self.dataplane_stopped {
                        break Err(anyhow::anyhow!(
                            "the dataplane thread has stopped (the dataplane panicked): exiting \
                             so that the agent is restarted"
                        ));
                    }
                }
                () = tokio::time::sleep_until(next_stats.into()), if stats_reading.is_none() => {
                    let now = Instant::now();
                    if (!self.pending.is_empty() || self.unsynced > 0)
                        && deferrals < STATS_MAX_DEFERRALS
                    {
                        deferrals += 1;
                        next_stats = now + STATS_DEFER;
                    } else {
                        deferrals = 0;
                        stats_reading = Some((Box::pin(self.dataplane.stats()), now));
                    }
                }
                result = async {
                    match stats_reading.as_mut() {
                        Some((reading, _)) => reading.await,
                        None => std::future::pending().await,
                    }
                } => {
                    let took = stats_reading.take().map_or(Duration::ZERO, |(_, at)| at.elapsed());
                    let pause = stats_pause(took);
                    if pause > STATS_INTERVAL {
                        tracing::debug!(took_ms = took.as_millis(), next_in_s = pause.as_secs(), "the dataplane's counters are slow to read: read less often");
                    }
                    next_stats = Instant::now() + pause;
                    self.record_stats(result);
                    if took > STATS_INTERVAL / 100 {
                        // A slow reading parsed a big listing (nftables: the whole table as
                        // JSON, hundreds of MiB at 10k services), freed by now.
                        crate::heap::trim();
                    }
                }
                changed = maintenance.changed() => {
                    if changed.is_err() {
                        // Closed: the dataplane thread ended, which it does only by a panic
                        // while the handle lives.
                        break Err(anyhow::anyhow!(
                            "the dataplane thread has stopped (its maintenance channel closed): \
                             exiting so that the agent is restarted"
                        ));
                    }
                    let latest = maintenance.borrow_and_update().clone();
                    if let Some(Ok(report)) = latest {
                        self.metrics.conntrack_expired.inc_by(report.flows_expired);
                    }
                }
            }
        };
        self.l2_shutdown(result.is_ok()).await;
        tracing::info!("stopping: the datapath stays in place");
        // Drops the dataplane on its thread: eBPF programs stay attached (their links are
        // pinned and kept), nftables/iptables rules stay; the next agent adopts them.
        if let Err(e) = self.dataplane.shutdown().await {
            tracing::warn!(error = %e, "stopping the dataplane thread");
        }
        result
    }
}

/// A reading of the dataplane's counters that [`Reconciler::run`] awaits between events.
type StatsReading =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Stats, AsyncError>> + Send>>;

/// `t` without its fraction of a second.
fn whole_second(t: SystemTime) -> SystemTime {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(t, |d| {
        SystemTime::UNIX_EPOCH + Duration::from_secs(d.as_secs())
    })
}
