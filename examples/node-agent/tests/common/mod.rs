//! Helpers of the lab end-to-end tests: the agent as a real process per lab node
//! ([`agent`]), the manifest directories it reads ([`manifests`]) or the fake API server it
//! talks to ([`fake_api`], which the tests of the API source and the Lease elections use
//! too), HTTP and Prometheus scraping from inside a lab namespace ([`http`], [`prom`]), and
//! waiting for conditions.
//!
//! ```text
//!   test process (root namespace)               lab (dataplane_testkit::Lab)
//!   ├─ tempdir/node-0/*.yaml ──read by──▶ nsenter --net=/run/netns/<lab>-n0 -- dataplane-agent
//!   ├─ tempdir/node-1/*.yaml ──read by──▶ nsenter --net=/run/netns/<lab>-n1 -- dataplane-agent
//!   └─ probes, health and metrics requests: from threads that entered a lab namespace only
//! ```
//!
//! Every test binary compiles this module and uses part of it.
#![allow(dead_code)]

pub mod agent;
pub mod fake_api;
pub mod http;
pub mod manifests;
pub mod neighbours;
pub mod prom;

use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use dataplane::Protocol;
use dataplane_testkit::{NetNs, ProbeOutcome};

/// How long any condition may take to come true. Generous: the machine is shared, and a
/// deadline only bounds a failing test, it never decides a passing one.
pub const DEADLINE: Duration = Duration::from_mins(1);
/// Timeout of one probe: long enough for an answer on a loaded machine; a drop costs this.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// `#[test]` functions `<name>_<backend>` that run `name(Backend::...)` as root (skipped,
/// or failed under `CI=true`, without root), one per backend listed. Not every test binary
/// uses it.
#[allow(unused_macros)]
macro_rules! per_backend {
    ($body:ident: $($test:ident => $backend:ident),+ $(,)?) => {
        $(
            #[test]
            fn $test() {
                if ::dataplane_testkit::require_root(stringify!($test)) {
                    $body(crate::common::agent::Backend::$backend);
                }
            }
        )+
    };
}
#[allow(unused_imports)]
pub(crate) use per_backend;

/// One lab test at a time per test binary: each runs two agents and a lab, and a test that
/// allows zero failed connections should not share two cores with three others.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Calls `check` every 100 ms until it returns `Ok`, and returns that; panics with the last
/// error once [`DEADLINE`] has passed.
pub fn wait_until<T>(what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match check() {
            Ok(value) => return value,
            Err(last) => {
                assert!(
                    Instant::now() < deadline,
                    "timed out after {DEADLINE:?} waiting for {what}; last: {last}"
                );
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One TCP request from inside `netns` to `dst` (see [`dataplane_testkit::probe`]).
pub fn probe_tcp(netns: &NetNs, dst: SocketAddr) -> ProbeOutcome {
    dataplane_testkit::probe(netns, dst, Protocol::Tcp, PROBE_TIMEOUT)
        .unwrap_or_else(|e| panic!("probe {dst} from {}: {e}", netns.name()))
}

/// Waits until `times` probes in a row from `netns` to `dst` end as `accept` says, and
/// returns the last outcome.
pub fn wait_for_outcome(
    what: &str,
    netns: &NetNs,
    dst: SocketAddr,
    times: usize,
    accept: impl Fn(&ProbeOutcome) -> bool,
) -> ProbeOutcome {
    wait_until(what, || {
        let mut last = None;
        for i in 0..times {
            let outcome = probe_tcp(netns, dst);
            if !accept(&outcome) {
                return Err(format!("probe {i} of {times} to {dst}: {outcome:?}"));
            }
            last = Some(outcome);
        }
        last.ok_or_else(|| "no probe".to_owned())
    })
}

/// Waits until `times` UDP probes in a row from `netns` to `dst` (each from a fresh source
/// port) are answered by `backend`.
pub fn wait_for_udp_backend(netns: &NetNs, dst: SocketAddr, backend: &str, times: usize) {
    wait_until(&format!("UDP {dst} answered by {backend}"), || {
        for i in 0..times {
            let outcome = dataplane_testkit::probe(netns, dst, Protocol::Udp, PROBE_TIMEOUT)
                .map_err(|e| e.to_string())?;
            if outcome.backend() != Some(backend) {
                return Err(format!("probe {i} of {times}: {outcome:?}"));
            }
        }
        Ok(())
    });
}

/// Waits until `times` probes in a row from `netns` to `dst` are answered by `backend`.
pub fn wait_for_backend(netns: &NetNs, dst: SocketAddr, backend: &str, times: usize) {
    wait_for_outcome(
        &format!("{dst} answered by {backend} from {}", netns.name()),
        netns,
        dst,
        times,
        |o| o.backend() == Some(backend),
    );
}

/// What a probe should get, as the reference model says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Answered by one of these pods.
    Answered(std::collections::BTreeSet<String>),
    /// Rejected (TCP RST or ICMP unreachable).
    Refused,
    /// Silently dropped: the probe times out.
    Dropped,
}

impl Expect {
    /// Whether `outcome` is what this expects.
    pub fn accepts(&self, outcome: &ProbeOutcome) -> bool {
        match self {
            Expect::Answered(pods) => outcome.backend().is_some_and(|b| pods.contains(b)),
            // ICMP port unreachable gives ECONNREFUSED, ICMP admin-prohibited EHOSTUNREACH:
            // both are rejections.
            Expect::Refused => matches!(outcome, ProbeOutcome::Refused | ProbeOutcome::Unreachable),
            Expect::Dropped => *outcome == ProbeOutcome::Timeout,
        }
    }
}

/// What the reference model expects of a TCP probe to `dst` that enters node `node`'s
/// dataplane at `entry` from `source`, with `services` (and the lab's pods) on that node.
/// Panics on verdicts a probe cannot tell apart (`Untouched`).
pub fn model_expects(
    lab: &dataplane_testkit::Lab,
    node: usize,
    services: Vec<dataplane::Service>,
    entry: &dataplane::reference::Entry,
    source: std::net::IpAddr,
    dst: SocketAddr,
) -> Expect {
    use dataplane::reference::{evaluate, Packet, Verdict};
    let mut state = lab.desired_state(node);
    state.services = services;
    let packet = Packet {
        protocol: Protocol::Tcp,
        source: SocketAddr::new(source, 40_000),
        destination: dst,
    };
    match evaluate(&state, &packet, entry) {
        Verdict::Forward { backends, .. } => Expect::Answered(
            backends
                .iter()
                .map(|b| {
                    lab.pods()
                        .iter()
                        .find(|p| p.addresses.contains(&b.ip()))
                        .map_or_else(|| panic!("backend {b} is no lab pod"), |p| p.name.clone())
                })
                .collect(),
        ),
        Verdict::Reject => Expect::Refused,
        Verdict::Drop => Expect::Dropped,
        other @ Verdict::Untouched { .. } => {
            panic!("the model passes {packet:?} untouched ({other:?}): no outcome to expect")
        }
    }
}

/// A model service in namespace `default` with one TCP port `http` → the lab servers, for
/// [`model_expects`]; `backends`: lab pod indices.
pub fn model_service(
    lab: &dataplane_testkit::Lab,
    def: &manifests::ServiceDef<'_>,
    backends: &[usize],
) -> dataplane::Service {
    let mut s = dataplane::Service::new(dataplane::ObjectName::new(
        dataplane_testkit::POD_NAMESPACE,
        def.name,
    ));
    s.cluster_ips = std::iter::once(def.cluster_ip)
        .chain(def.cluster_ip_v6)
        .map(|ip| ip.parse().expect("a ClusterIP"))
        .collect();
    s.load_balancer_ips = def
        .load_balancer_ips
        .iter()
        .map(|ip| ip.parse().expect("an address"))
        .collect();
    let mut ports = vec![("http", Protocol::Tcp)];
    if def.udp {
        ports.push(("dns", Protocol::Udp));
    }
    s.ports = ports
        .into_iter()
        .map(|(name, protocol)| dataplane::ServicePort {
            name: name.to_owned(),
            protocol,
            port: def.port,
            target_port: dataplane_testkit::SERVER_PORT,
            node_port: def.node_port,
        })
        .collect();
    if def.local {
        s.external_traffic_policy = dataplane::TrafficPolicy::Local;
    }
    s.health_check_node_port = def.health_check_node_port;
    let mut families = vec![dataplane_testkit::Family::V4];
    if def.cluster_ip_v6.is_some() {
        families.push(dataplane_testkit::Family::V6);
    }
    s.backends = families
        .iter()
        .flat_map(|&family| {
            backends
                .iter()
                .map(move |&p| lab.backend(p, family).expect("a lab pod of that family"))
        })
        .collect();
    s
}

/// A lab of two nodes with two pods each and `external_clients` clients, `cluster.yaml`
/// (Nodes, Namespace, Pods) in every node's manifest directory, and an agent per node with
/// `backend`, synced once. Bind the three in this order (`let (lab, dirs, agents) = ...`):
/// locals drop in reverse, so the agents are stopped and cleaned up while the lab's
/// namespaces still exist.
pub fn start_lab(
    backend: agent::Backend,
    external_clients: usize,
) -> (
    dataplane_testkit::Lab,
    manifests::ManifestDirs,
    agent::Agents,
) {
    start_lab_with(backend, external_clients, false)
}

/// [`start_lab`], dual-stack when `ipv6` (the agents get both families' CIDRs).
pub fn start_lab_with(
    backend: agent::Backend,
    external_clients: usize,
    ipv6: bool,
) -> (
    dataplane_testkit::Lab,
    manifests::ManifestDirs,
    agent::Agents,
) {
    let lab = dataplane_testkit::Lab::new(dataplane_testkit::LabSpec {
        nodes: 2,
        pods_per_node: 2,
        external_clients,
        ipv6,
    })
    .expect("lab");
    let dirs = manifests::ManifestDirs::new(lab.nodes().len());
    dirs.write("cluster.yaml", &manifests::cluster(&lab));
    let mut agents = agent::Agents::start(&lab, backend, &dirs, &[]);
    agents.wait_all_synced();
    (lab, dirs, agents)
}
