//! `/metrics` (Prometheus text format, prometheus-client): kube-proxy's metrics under their
//! names, types, buckets and labels (pkg/proxy/metrics/metrics.go) so that existing dashboards
//! and alerts work, and the dataplane's own under `dataplane_`.
//!
//! `ip_family` (`IPv4`, `IPv6`): kube-proxy runs one proxier per family and labels what each
//! measures (since 1.33: the sync durations, the last sync and last queued timestamps, the
//! network programming latency, the no-local-endpoints gauges; not the change counters nor
//! the health answers). The agent programs both families in one sync: a sync is observed once
//! per family the node serves (the families of its cluster and service CIDRs and addresses),
//! and a network programming latency under its EndpointSlice's address type.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use dataplane::reference::{eligible_backends_with_policy, Eligible};
use dataplane::{DesiredState, IpFamily, Stats, TrafficPolicy};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, linear_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;
type FloatGauge = Gauge<f64, AtomicU64>;
/// Histograms by label set, all with the buckets of the constructor.
type Histograms = Family<Labels, Histogram, fn() -> Histogram>;

/// kube-proxy's `ip_family` label value (`v1.IPFamily`: `IPv4`, `IPv6`).
pub fn family_label(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "IPv4",
        IpFamily::V6 => "IPv6",
    }
}

fn ip_family(family: IpFamily) -> Labels {
    label("ip_family", family_label(family))
}

/// Every metric the agent exports. Cheap to update from the loop (atomics); `encode` is what
/// the HTTP handler serves.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// `kubeproxy_sync_proxy_rules_duration_seconds{ip_family}`: every sync, failed ones
    /// too (kube-proxy observes in a `defer`), from translation to the end of the kernel
    /// writes.
    pub sync_duration: Histograms,
    /// `kubeproxy_sync_full_proxy_rules_duration_seconds{ip_family}`.
    pub full_sync_duration: Histograms,
    /// `kubeproxy_sync_partial_proxy_rules_duration_seconds{ip_family}`.
    pub partial_sync_duration: Histograms,
    /// `kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family}`: the last successful
    /// sync.
    pub last_sync_timestamp: Family<Labels, FloatGauge>,
    /// `kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds{ip_family}`: the last
    /// change queued.
    pub last_queued_timestamp: Family<Labels, FloatGauge>,
    /// `kubeproxy_network_programming_duration_seconds{ip_family}`: from an EndpointSlice's
    /// `endpoints.kubernetes.io/last-change-trigger-time` to the end of the sync that
    /// programmed it.
    pub network_programming: Histograms,
    /// `kubeproxy_sync_proxy_rules_endpoint_changes_pending`.
    pub endpoint_changes_pending: Gauge,
    /// `kubeproxy_sync_proxy_rules_service_changes_pending`.
    pub service_changes_pending: Gauge,
    /// `kubeproxy_sync_proxy_rules_endpoint_changes_total`.
    pub endpoint_changes: Counter,
    /// `kubeproxy_sync_proxy_rules_service_changes_total`.
    pub service_changes: Counter,
    /// `kubeproxy_sync_proxy_rules_no_local_endpoints_total{traffic_policy,ip_family}`:
    /// service ports with a Local policy, endpoints of the family, and none of them on this
    /// node.
    pub no_local_endpoints: Family<Labels, Gauge>,
    /// `kubeproxy_proxy_healthz_total{code}`.
    pub healthz: Family<Labels, Counter>,
    /// `kubeproxy_proxy_livez_total{code}`.
    pub livez: Family<Labels, Counter>,
    /// `dataplane_services`, `dataplane_endpoints`, `dataplane_policies`: what the last
    /// successful sync programmed.
    pub services: Gauge,
    /// See `services`.
    pub endpoints: Gauge,
    /// See `services`.
    pub policies: Gauge,
    /// `dataplane_conntrack_entries`: connections the dataplane tracks (its own table for
    /// eBPF, the kernel's for netfilter).
    pub conntrack_entries: Gauge,
    /// `dataplane_map_fill_ratio{map}`: used / capacity of the tables with a fixed size.
    pub map_fill: Family<Labels, FloatGauge>,
    /// `dataplane_packets_total{counter}`: every counter the dataplane keeps.
    pub packets: Family<Labels, Counter>,
    /// `dataplane_drops_total{reason}`: packets dropped or rejected, by reason
    /// ([`Stats::drops`], the reasons' stable names: `no-backend`, `policy`, ...).
    pub drops: Family<Labels, Counter>,
    /// `dataplane_apply_errors_total`: failed syncs (translation or kernel).
    pub apply_errors: Counter,
    /// `dataplane_translation_warnings`: objects (or fields) left out of the state.
    pub translation_warnings: Gauge,
    /// `dataplane_source_errors_total`: files or watches that failed.
    pub source_errors: Counter,
    /// `dataplane_conntrack_expired_total`: connections expired by maintenance.
    pub conntrack_expired: Counter,
    /// `dataplane_flow_events_total`: flow events written by `--flow-log`.
    pub flow_events: Counter,
    /// `dataplane_flow_events_lost_total`: flow events the kernel buffer could not hold
    /// (the flow log's reader was too slow).
    pub flow_events_lost: Counter,
    /// The last value of each dataplane counter, to turn snapshots into increments.
    seen: Mutex<BTreeMap<String, u64>>,
    /// The families the node serves (what a sync is observed under), from the last state
    /// programmed; IPv4 until then.
    families: Mutex<Vec<IpFamily>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn sync_buckets() -> Histogram {
    // ExponentialBuckets(0.001, 2, 15), as kube-proxy.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

fn network_programming_buckets() -> Histogram {
    // kube-proxy merges a 0 bucket, 0.25 s, 0.5 s, 1..59 s, 60..115 s, 2..5 min.
    Histogram::new(
        std::iter::once(0.0)
            .chain(linear_buckets(0.25, 0.25, 2))
            .chain(linear_buckets(1.0, 1.0, 59))
            .chain(linear_buckets(60.0, 5.0, 12))
            .chain(linear_buckets(120.0, 30.0, 7)),
    )
}

fn label(key: &str, value: &str) -> Labels {
    vec![(key.to_owned(), value.to_owned())]
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

impl Metrics {
    /// Every metric registered, at zero.
    #[allow(clippy::too_many_lines)] // one registration per metric
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let sync: fn() -> Histogram = sync_buckets;
        let m = Self {
            registry: Registry::default(),
            sync_duration: Family::new_with_constructor(sync),
            full_sync_duration: Family::new_with_constructor(sync),
            partial_sync_duration: Family::new_with_constructor(sync),
            last_sync_timestamp: Family::default(),
            last_queued_timestamp: Family::default(),
            network_programming: Family::new_with_constructor(network_programming_buckets),
            endpoint_changes_pending: Gauge::default(),
            service_changes_pending: Gauge::default(),
            endpoint_changes: Counter::default(),
            service_changes: Counter::default(),
            no_local_endpoints: Family::default(),
            healthz: Family::default(),
            livez: Family::default(),
            services: Gauge::default(),
            endpoints: Gauge::default(),
            policies: Gauge::default(),
            conntrack_entries: Gauge::default(),
            map_fill: Family::default(),
            packets: Family::default(),
            drops: Family::default(),
            apply_errors: Counter::default(),
            translation_warnings: Gauge::default(),
            source_errors: Counter::default(),
            conntrack_expired: Counter::default(),
            flow_events: Counter::default(),
            flow_events_lost: Counter::default(),
            seen: Mutex::default(),
            families: Mutex::new(vec![IpFamily::V4]),
        };
        // Counters are registered without `_total`: the encoder appends it.
        let r = &mut registry;
        r.register(
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds",
            m.sync_duration.clone(),
        );
        r.register(
            "kubeproxy_sync_full_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for full resyncs",
            m.full_sync_duration.clone(),
        );
        r.register(
            "kubeproxy_sync_partial_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for partial resyncs",
            m.partial_sync_duration.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "The last time proxy rules were successfully synced",
            m.last_sync_timestamp.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
            "The last time a sync of proxy rules was queued",
            m.last_queued_timestamp.clone(),
        );
        r.register(
            "kubeproxy_network_programming_duration_seconds",
            "In Cluster Network Programming Latency in seconds",
            m.network_programming.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
            "Pending proxy rules Endpoint changes",
            m.endpoint_changes_pending.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_service_changes_pending",
            "Pending proxy rules Service changes",
            m.service_changes_pending.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_endpoint_changes",
            "Cumulative proxy rules Endpoint changes",
            m.endpoint_changes.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_service_changes",
            "Cumulative proxy rules Service changes",
            m.service_changes.clone(),
        );
        // A gauge named `_total` in kube-proxy: registered under its full name.
        r.register(
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
            "Number of services with a Local traffic policy and no endpoints",
            m.no_local_endpoints.clone(),
        );
        r.register(
            "kubeproxy_proxy_healthz",
            "Cumulative proxy healthz HTTP status",
            m.healthz.clone(),
        );
        r.register(
            "kubeproxy_proxy_livez",
            "Cumulative proxy livez HTTP status",
            m.livez.clone(),
        );
        r.register(
            "dataplane_services",
            "Services programmed by the last successful sync",
            m.services.clone(),
        );
        r.register(
            "dataplane_endpoints",
            "Local pods (policy endpoints) programmed by the last successful sync",
            m.endpoints.clone(),
        );
        r.register(
            "dataplane_policies",
            "NetworkPolicies programmed by the last successful sync",
            m.policies.clone(),
        );
        r.register(
            "dataplane_conntrack_entries",
            "Connections the dataplane tracks",
            m.conntrack_entries.clone(),
        );
        r.register(
            "dataplane_map_fill_ratio",
            "Used entries over capacity of the dataplane's fixed-size tables",
            m.map_fill.clone(),
        );
        r.register(
            "dataplane_packets",
            "The dataplane's packet counters by name",
            m.packets.clone(),
        );
        r.register(
            "dataplane_drops",
            "Packets dropped or refused by the dataplane, by reason",
            m.drops.clone(),
        );
        r.register(
            "dataplane_apply_errors",
            "Syncs that failed (translation or kernel)",
            m.apply_errors.clone(),
        );
        r.register(
            "dataplane_translation_warnings",
            "Objects or fields left out of the desired state",
            m.translation_warnings.clone(),
        );
        r.register(
            "dataplane_source_errors",
            "Errors of the object source (files that fail to parse, watch errors)",
            m.source_errors.clone(),
        );
        r.register(
            "dataplane_conntrack_expired",
            "Connections expired by the dataplane's maintenance",
            m.conntrack_expired.clone(),
        );
        r.register(
            "dataplane_flow_events",
            "Flow events written by --flow-log",
            m.flow_events.clone(),
        );
        r.register(
            "dataplane_flow_events_lost",
            "Flow events lost before --flow-log read them (the kernel buffer was full)",
            m.flow_events_lost.clone(),
        );
        Self { registry, ..m }
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    /// The families the node serves now.
    pub fn families(&self) -> Vec<IpFamily> {
        self.families
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The node serves `families` now (from the state about to be programmed).
    pub fn set_families(&self, families: &[IpFamily]) {
        families.clone_into(&mut self.families.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// A sync of kind `full` took `took`, successful or not (kube-proxy observes the
    /// durations in a `defer`, failed syncs included).
    pub fn sync_took(&self, full: bool, took: Duration) {
        let seconds = took.as_secs_f64();
        for family in self.families() {
            let labels = ip_family(family);
            self.sync_duration.get_or_create(&labels).observe(seconds);
            let kind = if full {
                &self.full_sync_duration
            } else {
                &self.partial_sync_duration
            };
            kind.get_or_create(&labels).observe(seconds);
        }
    }

    /// A sync of kind `full` took `took` and succeeded at `at`.
    pub fn synced(&self, full: bool, took: Duration, at: SystemTime) {
        self.sync_took(full, took);
        for family in self.families() {
            self.last_sync_timestamp
                .get_or_create(&ip_family(family))
                .set(unix_seconds(at));
        }
    }

    /// A change of `family` triggered at the time `latency` ago is programmed.
    pub fn network_programmed(&self, family: IpFamily, latency: Duration) {
        self.network_programming
            .get_or_create(&ip_family(family))
            .observe(latency.as_secs_f64());
    }

    /// The counts of the state a sync programmed, and kube-proxy's no-local-endpoints
    /// gauges.
    pub fn programmed(&self, p: &Programmed) {
        self.services.set(to_i64(p.services));
        self.endpoints.set(to_i64(p.endpoints));
        self.policies.set(to_i64(p.policies));
        self.set_families(&p.families);
        for (family, internal, external) in &p.no_local {
            for (policy, count) in [("internal", internal), ("external", external)] {
                let labels = vec![
                    ("traffic_policy".to_owned(), policy.to_owned()),
                    ("ip_family".to_owned(), family_label(*family).to_owned()),
                ];
                self.no_local_endpoints
                    .get_or_create(&labels)
                    .set(to_i64(*count));
            }
        }
    }

    /// The dataplane's counters now (they only grow, except across a reset, after which
    /// they count from zero again).
    pub fn stats(&self, stats: &Stats, conntrack_capacity: Option<u64>) {
        self.conntrack_entries.set(to_i64_u64(stats.flows));
        if let Some(capacity) = conntrack_capacity.filter(|c| *c > 0) {
            // Two entries per connection (one per direction).
            #[allow(clippy::cast_precision_loss)]
            let ratio = (stats.flows * 2) as f64 / capacity as f64;
            self.map_fill
                .get_or_create(&label("map", "conntrack"))
                .set(ratio);
        }
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let mut counters: BTreeMap<&str, u64> = stats
            .other
            .iter()
            .map(|(name, value)| (name.as_str(), *value))
            .collect();
        counters
            .entry("translated")
            .or_insert(stats.packets_translated);
        counters.entry("dropped").or_insert(stats.packets_dropped);
        counters.entry("rejected").or_insert(stats.packets_rejected);
        for (name, value) in counters {
            let last = seen.insert(name.to_owned(), value).unwrap_or(0);
            // A smaller value: the dataplane was reset and counts again from zero.
            let delta = if value >= last { value - last } else { value };
            if delta == 0 {
                continue;
            }
            self.packets
                .get_or_create(&label("counter", name))
                .inc_by(delta);
        }
        // Drops by reason, as the backends count them (`Stats::drops`): the same snapshot,
        // nothing more is read for them.
        for (reason, value) in &stats.drops {
            let name = reason.name();
            let last = seen.insert(format!("drop:{name}"), *value).unwrap_or(0);
            let delta = if *value >= last { value - last } else { *value };
            if delta > 0 {
                self.drops
                    .get_or_create(&label("reason", name))
                    .inc_by(delta);
            }
        }
    }

    /// Used / capacity of a table, from the capabilities (`max_services`, `max_backends`).
    pub fn table_fill(&self, map: &str, used: usize, capacity: u32) {
        if capacity > 0 {
            #[allow(clippy::cast_precision_loss)]
            let ratio = used as f64 / f64::from(capacity);
            self.map_fill.get_or_create(&label("map", map)).set(ratio);
        }
    }

    /// A change was queued at `at`.
    pub fn queued(&self, at: SystemTime) {
        for family in self.families() {
            self.last_queued_timestamp
                .get_or_create(&ip_family(family))
                .set(unix_seconds(at));
        }
    }

    /// Counts an answer of `/healthz` (`livez` false) or `/livez`.
    pub fn health_answer(&self, livez: bool, code: u16) {
        let family = if livez { &self.livez } else { &self.healthz };
        family
            .get_or_create(&label("code", &code.to_string()))
            .inc();
    }
}

/// The counts of a desired state that the metrics show once it is programmed (taken before
/// the state moves to the dataplane's thread).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Programmed {
    /// Services.
    pub services: usize,
    /// Local pods.
    pub endpoints: usize,
    /// Network policies.
    pub policies: usize,
    /// The families the node serves ([`families_of`]).
    pub families: Vec<IpFamily>,
    /// Per family: service ports with `internalTrafficPolicy: Local` and with
    /// `externalTrafficPolicy: Local` that have no local endpoint ([`no_local_endpoints`]).
    pub no_local: Vec<(IpFamily, usize, usize)>,
}

impl Programmed {
    /// The counts of `state`.
    pub fn of(state: &DesiredState) -> Self {
        let families = families_of(state);
        let no_local = families
            .iter()
            .map(|family| {
                let (internal, external) = no_local_endpoints(state, *family);
                (*family, internal, external)
            })
            .collect();
        Self {
            services: state.services.len(),
            endpoints: state.endpoints.len(),
            policies: state.policies.len(),
            families,
            no_local,
        }
    }
}

/// The families the node serves: those of its cluster and service CIDRs, pod CIDRs and
/// addresses (kube-proxy runs a proxier for each family the node has); IPv4 when none says.
pub fn families_of(state: &DesiredState) -> Vec<IpFamily> {
    let node = &state.node;
    let mut families: Vec<IpFamily> = node
        .cluster_cidrs
        .iter()
        .chain(&node.service_cidrs)
        .chain(&node.pod_cidrs)
        .map(|net| IpFamily::of(&net.ip()))
        .chain(node.addresses.iter().map(IpFamily::of))
        .collect();
    families.sort();
    families.dedup();
    if families.is_empty() {
        families.push(IpFamily::V4);
    }
    families
}

fn to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_i64_u64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// kube-proxy's `serviceNoLocalEndpointsTotalInternal` / `...External` of the proxier of
/// `family`: service ports whose internal (external) traffic policy is Local and that have
/// endpoints of the family, none of them usable on this node (kube-proxy counts in its loop
/// over service ports).
pub fn no_local_endpoints(state: &DesiredState, family: IpFamily) -> (usize, usize) {
    let no_local = |service: &dataplane::Service| {
        matches!(
            eligible_backends_with_policy(state, service, TrafficPolicy::Local, family),
            Eligible::NoLocal
        )
    };
    let mut internal = 0;
    let mut external = 0;
    for service in &state.services {
        let internal_local = service.internal_traffic_policy == TrafficPolicy::Local;
        // Only services that have external frontends are subject to their external policy.
        let external_local = service.external_traffic_policy == TrafficPolicy::Local
            && (service.ports.iter().any(|p| p.node_port.is_some())
                || !service.external_ips.is_empty()
                || !service.load_balancer_ips.is_empty());
        if !(internal_local || external_local) || !no_local(service) {
            continue;
        }
        let ports = service.ports.len();
        internal += if internal_local { ports } else { 0 };
        external += if external_local { ports } else { 0 };
    }
    (internal, external)
}

/// Serves `/metrics` on `addr` (`0.0.0.0`: on `[::]` too, see
/// [`crate::http::bind_server`]) until the returned task is aborted; the address bound (its
/// port when `addr`'s is 0).
pub fn serve_metrics(
    addr: std::net::SocketAddr,
    metrics: std::sync::Arc<Metrics>,
) -> std::io::Result<(tokio::task::JoinHandle<()>, std::net::SocketAddr)> {
    let listeners = crate::http::bind_server(addr)?;
    let bound = listeners[0].local_addr()?;
    let handler = crate::http::handler(move |path| match path {
        "/metrics" => (
            hyper::StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        _ => (
            hyper::StatusCode::NOT_FOUND,
            "text/plain",
            "404 page not found\n".to_owned(),
        ),
    });
    tracing::info!(address = %bound, listeners = listeners.len(), "serving /metrics");
    Ok((
        tokio::spawn(crate::http::serve_all(
            listeners,
            handler,
            crate::http::Limits::default(),
        )),
        bound,
    ))
}
