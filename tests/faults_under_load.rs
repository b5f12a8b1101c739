//! Faults under load (issue 21, item 4), on a two-node testkit lab with real traffic through
//! a ClusterIP, every dataplane opened through the facade (`dataplane::open`):
//!
//! - **the dataplane object dropped and re-created** ([`RESTARTS`] times on both nodes, eBPF,
//!   `DP_FAULTS_RESTARTS=N` for more,
//!   `keep_attachments_on_drop`: each new object adopts the pins and re-applies the state) while
//!   a connect-request-response (CRR) load and [`STREAMS`] long-lived TCP connections run: no
//!   CRR exchange fails, no stream breaks or changes backend, and a backend added by the last
//!   instance gets traffic;
//! - **endpoint churn**: half the backends replaced every [`CHURN_PERIOD`] for [`CHURN_TICKS`]
//!   ticks under a CRR load and [`STREAMS`] long-lived connections, on eBPF, nftables and
//!   iptables: no exchange fails, no stream breaks or changes backend (also one whose backend
//!   was removed), and once the last set is programmed new connections reach only it.
//!
//! ```text
//!   pod-0-0 ── CRR (a new connection per request) ──▶ 10.96.0.10:80 ─┐
//!   pod-0-1 ══ 10 long connections ════════════════▶ 10.96.0.10:80 ─┴▶ pods on node-1
//!   node-0, node-1: one dataplane each (the facade), dropped and re-opened or churned
//! ```
//!
//! What a removed endpoint may see, following kube-proxy: it never deletes a TCP connection's
//! conntrack entry when an endpoint goes (`pkg/proxy/conntrack/cleanup.go` clears UDP/SCTP
//! flows of stale endpoints only), so an established connection keeps its (removed) backend,
//! and a new connection gets a backend from the rules programmed when its SYN passes. The
//! removed pods here keep serving (as a terminating pod does for its grace period), so *no*
//! exchange may fail: a connection whose SYN chose a backend just before it was removed must
//! complete through its conntrack entry. Failures are counted by outcome (refused,
//! unreachable, timeout) and reported with the answers per backend.
//!
//! Sizes are modest so that each test runs in well under a minute on a loaded 2-core CI
//! machine; nothing asserts on timing (every wait has a generous deadline).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dataplane::{
    open, BoxDataplane, DataplaneKind, DesiredState, IpFamily, ObjectName, Options, Protocol,
    Selection, Service, ServicePort,
};
use dataplane_testkit::{require_root, Lab, LabSpec, NetNs, TcpSession, SERVER_PORT};

/// Drop-and-re-create cycles of both nodes' dataplanes in CI. The issue asks for 100, but
/// opening an eBPF dataplane loads every program through the verifier again: 1.2-2 s on the
/// 2-core development VM under this load, so a cycle of both nodes takes ~3 s and 100 cycles
/// took 324-367 s (they passed). 8 cycles (16 objects re-created) keep the test under a
/// minute on a loaded CI machine; `DP_FAULTS_RESTARTS=100` runs the issue's count.
const RESTARTS: usize = 8;
/// Long-lived TCP connections through the ClusterIP during the restarts.
const STREAMS: usize = 10;
/// Endpoint churn: one replacement per period, this many times (10 s).
const CHURN_PERIOD: Duration = Duration::from_millis(100);
const CHURN_TICKS: usize = 100;
/// How long one exchange may take before it counts as a failure: bounds a hang, measures
/// nothing.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long any wait may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(90);
const VIP: &str = "10.96.0.10";

/// The tests share two cores: one lab with load at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn vip() -> SocketAddr {
    SocketAddr::new(VIP.parse().expect("VIP"), 80)
}

/// Polls `check` until it returns `Ok`, failing the test after [`DEADLINE`].
fn wait_until<T>(what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match check() {
            Ok(value) => return value,
            Err(last) => assert!(
                Instant::now() < deadline,
                "timed out after {DEADLINE:?} waiting for {what}; last: {last}"
            ),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Node `node`'s state: its pods as endpoints and the `web` ClusterIP with the lab pods
/// `backends` (global pod indices).
fn state(lab: &Lab, node: usize, backends: &[usize]) -> DesiredState {
    let mut state = lab.desired_state(node);
    let mut web = Service::new(ObjectName::new("default", "web"));
    web.cluster_ips = vec![VIP.parse().expect("VIP")];
    web.ports = vec![ServicePort {
        name: "http".to_owned(),
        protocol: Protocol::Tcp,
        port: 80,
        target_port: SERVER_PORT,
        node_port: None,
    }];
    web.backends = backends
        .iter()
        .map(|&p| lab.backend(p, IpFamily::V4).expect("lab backend"))
        .collect();
    state.services = vec![web];
    state
}

/// Names of the lab pods `pods` (what their servers answer with).
fn names(lab: &Lab, pods: &[usize]) -> BTreeSet<String> {
    pods.iter().map(|&p| lab.pod(p).name.clone()).collect()
}

/// The dataplanes of a lab's nodes, opened through the facade. Dropping it resets every
/// node (re-opening an eBPF node whose object was dropped with its pins kept), and removes
/// the pin directories: also when a test panics, before the lab's namespaces go.
struct Nodes {
    kind: DataplaneKind,
    options: Vec<Options>,
    dataplanes: Vec<Option<BoxDataplane>>,
}

impl Nodes {
    fn open(lab: &Lab, kind: DataplaneKind, test: &str, keep_attachments: bool) -> Nodes {
        let options: Vec<Options> = (0..lab.nodes().len())
            .map(|i| {
                let mut options = Options::in_netns(lab.node(i).netns.path());
                options.ebpf.pin_dir = PathBuf::from(format!(
                    "/sys/fs/bpf/dp-faults-{}-{test}-n{i}",
                    std::process::id()
                ));
                options.ebpf.keep_attachments_on_drop = keep_attachments;
                options
            })
            .collect();
        let mut nodes = Nodes {
            kind,
            dataplanes: Vec::new(),
            options,
        };
        for i in 0..nodes.options.len() {
            let dp = nodes.open_one(i);
            nodes.dataplanes.push(Some(dp));
        }
        nodes
    }

    fn open_one(&self, node: usize) -> BoxDataplane {
        open(Selection::Only(self.kind), &self.options[node])
            .unwrap_or_else(|e| {
                panic!(
                    "opening {} on node-{node}: {}",
                    self.kind,
                    dataplane::error_chain(&e)
                )
            })
            .dataplane
    }

    fn dataplane(&mut self, node: usize) -> &mut BoxDataplane {
        self.dataplanes[node].as_mut().expect("node is open")
    }

    /// Applies node `node`'s state: a full apply (what a restarted process does first).
    fn apply(&mut self, node: usize, state: &DesiredState) {
        let kind = self.kind;
        if let Err(e) = self.dataplane(node).apply(state) {
            panic!(
                "{kind} apply on node-{node}: {}",
                dataplane::error_chain(&e)
            );
        }
    }

    /// Drops node `node`'s dataplane object and opens a new one, which adopts what the old one
    /// left (with `keep_attachments_on_drop`: pinned maps and links), and applies `state`.
    fn recreate(&mut self, node: usize, state: &DesiredState) {
        drop(self.dataplanes[node].take());
        let dp = self.open_one(node);
        self.dataplanes[node] = Some(dp);
        self.apply(node, state);
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for (node, options) in self.options.iter().enumerate() {
            let dp = match self.dataplanes[node].take() {
                Some(dp) => Some(dp),
                None => open(Selection::Only(self.kind), options)
                    .ok()
                    .map(|o| o.dataplane),
            };
            if let Some(mut dp) = dp {
                if let Err(e) = dp.reset() {
                    eprintln!("warning: reset of node-{node}: {e}");
                }
            }
            let _ = std::fs::remove_dir_all(&options.ebpf.pin_dir);
        }
    }
}

/// What the traffic threads saw.
#[derive(Default)]
struct Seen {
    /// CRR answers per backend.
    crr_backends: Mutex<BTreeMap<String, usize>>,
    /// CRR exchanges that got no answer, by outcome.
    crr_failures: Mutex<BTreeMap<String, usize>>,
    crr_answered: AtomicUsize,
    /// Rounds over all long connections (one request on each).
    stream_rounds: AtomicUsize,
    /// Why a long connection failed, if one did.
    stream_error: Mutex<Option<String>>,
    stop: AtomicBool,
}

impl Seen {
    /// Waits until the CRR load has `crr` more answers and the streams `rounds` more rounds
    /// than at the call; fails at once when a stream broke.
    fn wait_progress(&self, what: &str, crr: usize, rounds: usize) {
        let crr0 = self.crr_answered.load(Ordering::Relaxed);
        let rounds0 = self.stream_rounds.load(Ordering::Relaxed);
        wait_until(&format!("traffic {what}"), || {
            if let Some(e) = lock(&self.stream_error).clone() {
                panic!("a long connection broke {what}: {e}");
            }
            let c = self.crr_answered.load(Ordering::Relaxed) - crr0;
            let r = self.stream_rounds.load(Ordering::Relaxed) - rounds0;
            if c >= crr && r >= rounds {
                Ok(())
            } else {
                Err(format!("{c} CRR answers and {r} stream rounds so far"))
            }
        });
    }

    fn failures(&self) -> BTreeMap<String, usize> {
        lock(&self.crr_failures).clone()
    }

    fn backends(&self) -> BTreeMap<String, usize> {
        lock(&self.crr_backends).clone()
    }
}

/// Stops the traffic threads when dropped (also when the test panics, so that they do not
/// outlive the lab).
struct StopOnDrop(Arc<Seen>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::Relaxed);
    }
}

/// Connect-request-response from `netns` to the VIP until told to stop, in batches of 10
/// (`measure` closes with RST: a long load never runs out of ports).
fn crr_load(netns: NetNs, seen: Arc<Seen>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        while !seen.stop.load(Ordering::Relaxed) {
            let m = dataplane_testkit::measure(&netns, vip(), Protocol::Tcp, 10, EXCHANGE_TIMEOUT)
                .expect("CRR batch");
            for (backend, n) in m.backends {
                *lock(&seen.crr_backends).entry(backend).or_default() += n;
            }
            for (outcome, n) in m.failures {
                *lock(&seen.crr_failures).entry(outcome).or_default() += n;
            }
            seen.crr_answered
                .fetch_add(m.latencies.len(), Ordering::Relaxed);
        }
    })
}

/// [`STREAMS`] connections from `netns` to the VIP, asked in turn until told to stop; every
/// answer must come from the backend that answered a connection first. Returns those
/// backends.
fn streams(netns: NetNs, seen: Arc<Seen>) -> JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let opened: Result<Vec<(TcpSession, String)>, String> = (0..STREAMS)
            .map(|i| {
                let mut s = TcpSession::open_with_timeout(&netns, vip(), EXCHANGE_TIMEOUT)
                    .map_err(|e| format!("stream {i} opens: {e}"))?;
                let (first, _) = s
                    .request()
                    .map_err(|e| format!("stream {i}: first request: {e}"))?;
                Ok((s, first))
            })
            .collect();
        // A failure is reported where the test waits for progress, not as a thread panic
        // that would surface only as a timeout.
        let mut sessions = match opened {
            Ok(sessions) => sessions,
            Err(e) => {
                *lock(&seen.stream_error) = Some(e);
                return Vec::new();
            }
        };
        let mut round = 0_usize;
        'run: while !seen.stop.load(Ordering::Relaxed) {
            round += 1;
            for (i, (session, first)) in sessions.iter_mut().enumerate() {
                let error = match session.request() {
                    Ok((backend, _)) if backend == *first => None,
                    Ok((backend, _)) => Some(format!(
                        "stream {i}, round {round}: answered by {backend}, first by {first}"
                    )),
                    Err(e) => Some(format!("stream {i}, round {round}: {e}")),
                };
                if let Some(e) = error {
                    *lock(&seen.stream_error) = Some(e);
                    break 'run;
                }
            }
            seen.stream_rounds.fetch_add(1, Ordering::Relaxed);
        }
        sessions.into_iter().map(|(_, first)| first).collect()
    })
}

/// Waits until CRR probes from `netns` have been answered by every one of `expected` (and
/// by nothing else): the state is programmed.
fn wait_serving(netns: &NetNs, expected: &BTreeSet<String>) {
    let mut seen = BTreeSet::new();
    wait_until("every backend answering", || {
        let m = dataplane_testkit::measure(netns, vip(), Protocol::Tcp, 20, EXCHANGE_TIMEOUT)
            .map_err(|e| e.to_string())?;
        seen.extend(m.backends.into_keys());
        assert!(
            seen.is_subset(expected),
            "answers from {seen:?}, expected only {expected:?}"
        );
        if seen == *expected {
            Ok(())
        } else {
            Err(format!(
                "answered so far: {seen:?}; failures: {:?}",
                m.failures
            ))
        }
    });
}

#[test]
fn ebpf_dataplane_recreated_under_load_breaks_nothing() {
    if !require_root("ebpf_dataplane_recreated_under_load_breaks_nothing") {
        return;
    }
    let _serial = lock(&SERIAL);
    let lab = Lab::new(LabSpec {
        nodes: 2,
        pods_per_node: 3,
        external_clients: 0,
        ipv6: false,
    })
    .expect("lab");
    let remote: Vec<usize> = lab.pods_on(1).map(|p| p.index).collect();
    let backends = &remote[..2];
    let mut nodes = Nodes::open(&lab, DataplaneKind::Ebpf, "restart", true);
    let states: Vec<DesiredState> = (0..2).map(|n| state(&lab, n, backends)).collect();
    for (node, s) in states.iter().enumerate() {
        nodes.apply(node, s);
    }
    wait_serving(&lab.pod(0).netns, &names(&lab, backends));

    let seen = Arc::new(Seen::default());
    let _stop = StopOnDrop(Arc::clone(&seen));
    let crr = crr_load(lab.pod(0).netns.clone(), Arc::clone(&seen));
    let long = streams(lab.pod(1).netns.clone(), Arc::clone(&seen));
    seen.wait_progress("before the first restart", 50, 5);

    let started = Instant::now();
    let restarts = restarts();
    for cycle in 0..restarts {
        for (node, s) in states.iter().enumerate() {
            nodes.recreate(node, s);
        }
        // Traffic interleaves with the restarts (on a loaded machine the loop could
        // otherwise outrun the traffic threads and show nothing).
        seen.wait_progress(&format!("after restart {cycle}"), 1, 1);
    }
    let restarts_took = started.elapsed();

    // The last instances program a change: a third backend gets CRR traffic.
    let grown = &remote[..3];
    for node in 0..2 {
        nodes.apply(node, &state(&lab, node, grown));
    }
    let added = lab.pod(remote[2]).name.clone();
    wait_until(&format!("CRR answers from {added}"), || {
        let backends = seen.backends();
        if backends.get(&added).is_some_and(|&n| n > 0) {
            Ok(())
        } else {
            Err(format!("backends so far: {backends:?}"))
        }
    });
    seen.wait_progress("after the change", 20, 2);

    seen.stop.store(true, Ordering::Relaxed);
    crr.join().expect("CRR thread");
    let stream_backends = long.join().expect("stream thread");
    println!(
        "{restarts} restarts of both nodes in {restarts_took:?}: {} CRR answers {:?}, {} \
         rounds over {STREAMS} streams (backends {stream_backends:?}), failures {:?}",
        seen.crr_answered.load(Ordering::Relaxed),
        seen.backends(),
        seen.stream_rounds.load(Ordering::Relaxed),
        seen.failures()
    );
    assert_eq!(
        *lock(&seen.stream_error),
        None,
        "every long connection kept working with its backend"
    );
    let allowed = names(&lab, backends);
    for backend in &stream_backends {
        assert!(
            allowed.contains(backend),
            "stream backend {backend} is a service backend"
        );
    }
    assert!(
        seen.failures().is_empty(),
        "CRR exchanges failed: {:?} (answered {}, by backend {:?})",
        seen.failures(),
        seen.crr_answered.load(Ordering::Relaxed),
        seen.backends()
    );
    drop(nodes);
}

/// [`RESTARTS`], or `DP_FAULTS_RESTARTS` when set.
fn restarts() -> usize {
    match std::env::var("DP_FAULTS_RESTARTS") {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|e| panic!("DP_FAULTS_RESTARTS={v:?}: {e}")),
        Err(_) => RESTARTS,
    }
}

/// Replaces half the backends every [`CHURN_PERIOD`] under a CRR load on both nodes of
/// `kind`: two survivors stay, the other half alternates between two pairs of pods (which
/// keep serving when removed).
fn churn(kind: DataplaneKind, test: &str) {
    let _serial = lock(&SERIAL);
    let lab = Lab::new(LabSpec {
        nodes: 2,
        pods_per_node: 6,
        external_clients: 0,
        ipv6: false,
    })
    .expect("lab");
    let remote: Vec<usize> = lab.pods_on(1).map(|p| p.index).collect();
    let (survivors, pools) = (&remote[..2], [&remote[2..4], &remote[4..6]]);
    let set = |tick: usize| -> Vec<usize> {
        let mut set = survivors.to_vec();
        set.extend_from_slice(pools[tick % 2]);
        set
    };
    let mut nodes = Nodes::open(&lab, kind, test, false);
    let mut programmed: Vec<DesiredState> = (0..2).map(|n| state(&lab, n, &set(0))).collect();
    for (node, s) in programmed.iter().enumerate() {
        nodes.apply(node, s);
    }
    let client = &lab.pod(0).netns;
    wait_serving(client, &names(&lab, &set(0)));

    let seen = Arc::new(Seen::default());
    let _stop = StopOnDrop(Arc::clone(&seen));
    let crr = crr_load(client.clone(), Arc::clone(&seen));
    // Established connections, to survivors and to pods about to be removed alike, are
    // never broken by an endpoint change (kube-proxy leaves TCP conntrack entries alone).
    let long = streams(lab.pod(1).netns.clone(), Arc::clone(&seen));
    seen.wait_progress("before the churn", 50, 5);

    for tick in 1..=CHURN_TICKS {
        for (node, previous) in programmed.iter_mut().enumerate() {
            let desired = state(&lab, node, &set(tick));
            // Incremental, as an agent does on an endpoint change.
            if let Err(e) = nodes.dataplane(node).sync(Some(previous), &desired) {
                panic!("{kind} sync on node-{node}: {}", dataplane::error_chain(&e));
            }
            *previous = desired;
        }
        std::thread::sleep(CHURN_PERIOD);
        seen.wait_progress(&format!("after churn tick {tick}"), 1, 1);
    }
    seen.stop.store(true, Ordering::Relaxed);
    crr.join().expect("CRR thread");
    let stream_backends = long.join().expect("stream thread");
    let during = seen.backends();
    println!(
        "{kind}: {CHURN_TICKS} replacements: {} CRR answers {during:?}, failures {:?}; {} \
         rounds over {STREAMS} streams (backends {stream_backends:?})",
        seen.crr_answered.load(Ordering::Relaxed),
        seen.failures(),
        seen.stream_rounds.load(Ordering::Relaxed),
    );
    assert_eq!(
        *lock(&seen.stream_error),
        None,
        "{kind}: every long connection kept working with its backend"
    );
    assert!(
        seen.failures().is_empty(),
        "{kind}: CRR exchanges failed during the churn: {:?} (answered {}, by backend {during:?})",
        seen.failures(),
        seen.crr_answered.load(Ordering::Relaxed),
    );
    // Every pod took part: the churned ones got connections while they were backends.
    for name in names(&lab, &remote) {
        assert!(
            during.get(&name).is_some_and(|&n| n > 0),
            "{kind}: {name} got no connection during the churn: {during:?}"
        );
    }
    // The last set is programmed: new connections reach it and nothing removed.
    let last = names(&lab, &set(CHURN_TICKS));
    let after = dataplane_testkit::measure(client, vip(), Protocol::Tcp, 200, EXCHANGE_TIMEOUT)
        .expect("CRR after the churn");
    assert!(
        after.failures.is_empty(),
        "{kind}: failures after the churn: {:?}",
        after.failures
    );
    let answered: BTreeSet<String> = after.backends.keys().cloned().collect();
    assert!(
        answered.is_subset(&last),
        "{kind}: after the churn new connections reached {answered:?}, the backends are {last:?}"
    );
    drop(nodes);
}

#[test]
fn endpoint_churn_under_load_ebpf() {
    if !require_root("endpoint_churn_under_load_ebpf") {
        return;
    }
    churn(DataplaneKind::Ebpf, "churn");
}

#[test]
fn endpoint_churn_under_load_nftables() {
    if !require_root("endpoint_churn_under_load_nftables") {
        return;
    }
    churn(DataplaneKind::Nftables, "churn-nft");
}

#[test]
fn endpoint_churn_under_load_iptables() {
    if !require_root("endpoint_churn_under_load_iptables") {
        return;
    }
    churn(DataplaneKind::Iptables, "churn-ipt");
}
