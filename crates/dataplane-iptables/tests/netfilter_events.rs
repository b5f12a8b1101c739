//! Flow events of both netfilter flavours in the testkit lab, with real traffic: NFLOG drops
//! and rejects (no backend, source range, NetworkPolicy) with their reason, service and
//! pods; conntrack events of a translated connection; and the read-only inspector
//! (`LiveNetfilter`) beside the backend. Needs root.
//!
//! ```text
//!   node-0 (backend under test)
//!     ├── pod-0-0  server, isolated by a default-deny ingress policy
//!     ├── pod-0-1  the client of every probe (fixed source ports)
//!     └── pod-0-2  server, the backend of default/open
//!   default/empty   ClusterIP 10.96.0.40:80, no endpoints          → rejected, no-backend
//!   default/fenced  LoadBalancer 192.0.2.50:80, source 203.0.113.0/24 → dropped, source-range
//!   default/open    ClusterIP 10.96.0.20:80 → pod-0-2               → translated
//!   pod-0-1 → pod-0-0:SERVER_PORT                                   → policy-denied, policy
//! ```

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::policy::{labels, policy};
use dataplane_core::{
    Dataplane, DesiredState, DropReason, EventKind, EventOptions, EventSource, EventVerdict,
    FlowEvent, ObjectName, ObservationPoint, PolicyType, Protocol, Service,
};
use dataplane_testkit::{probe_from, require_root, Family, Lab, LabSpec, SERVER_PORT};

const EMPTY: &str = "10.96.0.40:80";
const FENCED_LB: &str = "192.0.2.50:80";
const OPEN: &str = "10.96.0.20:80";

fn lab() -> Lab {
    Lab::new(LabSpec {
        nodes: 1,
        pods_per_node: 3,
        external_clients: 0,
        ipv6: false,
    })
    .expect("lab")
}

fn service(name: &str, cluster_ip: &str) -> Service {
    let mut s = Service::new(ObjectName::new("default", name));
    let ip: SocketAddr = cluster_ip.parse().unwrap();
    s.cluster_ips = vec![ip.ip()];
    s.ports = vec![common::port(Protocol::Tcp, ip.port(), SERVER_PORT, None)];
    s
}

/// The node's pods, the three services and a default-deny ingress policy on pod-0-0.
fn state(lab: &Lab) -> DesiredState {
    let mut state = lab.desired_state(0);
    state.services.push(service("empty", EMPTY));
    let mut fenced = service("fenced", "10.96.0.50:80");
    fenced.load_balancer_ips = vec![FENCED_LB.parse::<SocketAddr>().unwrap().ip()];
    fenced.load_balancer_source_ranges = vec!["203.0.113.0/24".parse().unwrap()];
    fenced.backends = vec![lab.backend(2, Family::V4).unwrap()];
    state.services.push(fenced);
    let mut open = service("open", OPEN);
    open.backends = vec![lab.backend(2, Family::V4).unwrap()];
    state.services.push(open);
    state.policies.push(policy(
        "default",
        "deny-in",
        labels(&[("app", "pod-0-0")]),
        &[PolicyType::Ingress],
    ));
    state
}

/// What an event is checked on (time and TCP flags left out: the kernel decides those).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Seen {
    kind: EventKind,
    verdict: EventVerdict,
    reason: Option<DropReason>,
    service: Option<ObjectName>,
    source: SocketAddr,
    destination: SocketAddr,
    backend: Option<SocketAddr>,
    source_endpoint: Option<ObjectName>,
    destination_endpoint: Option<ObjectName>,
    point: Option<ObservationPoint>,
    interface: Option<String>,
}

fn seen(e: &FlowEvent) -> Seen {
    Seen {
        kind: e.kind,
        verdict: e.verdict,
        reason: e.reason,
        service: e.service.clone(),
        source: e.original.source,
        destination: e.original.destination,
        backend: e.backend,
        source_endpoint: e.source_endpoint.clone(),
        destination_endpoint: e.destination_endpoint.clone(),
        point: e.point,
        interface: e.interface.clone(),
    }
}

/// Reads `events` until one from `source` arrives (generous deadline), then what else the
/// source holds: every event of the probe, each once.
fn events_from(
    events: &mut dyn EventSource,
    source: SocketAddr,
    kind: EventKind,
) -> BTreeSet<Seen> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut out = BTreeSet::new();
    let mut buf = Vec::new();
    while Instant::now() < deadline {
        events.wait(Duration::from_millis(200)).unwrap();
        buf.clear();
        events.read(&mut buf, 64).unwrap();
        out.extend(
            buf.iter()
                .filter(|e| e.original.source == source && e.kind == kind)
                .map(seen),
        );
        if !out.is_empty() && buf.is_empty() {
            break;
        }
    }
    out
}

/// The expected drop of a probe from `client` (pod-0-1) to `to`.
fn drop_of(
    lab: &Lab,
    client: SocketAddr,
    to: SocketAddr,
    verdict: EventVerdict,
    reason: DropReason,
    service: Option<&str>,
) -> Seen {
    let pod = lab.pod(1);
    let destination_endpoint = lab
        .pods()
        .iter()
        .find(|p| p.addresses.contains(&to.ip()))
        .map(|p| p.endpoint().name);
    Seen {
        kind: EventKind::Drop,
        verdict,
        reason: Some(reason),
        service: service.map(|s| ObjectName::new("default", s)),
        source: client,
        destination: to,
        backend: None,
        source_endpoint: Some(pod.endpoint().name),
        destination_endpoint,
        point: Some(ObservationPoint::FromPod),
        interface: Some(pod.host_interface.clone()),
    }
}

/// Runs the probes against a backend `make` builds for the lab node's namespace.
fn check_flavour(make: impl Fn(PathBuf) -> Box<dyn Dataplane>) {
    let lab = lab();
    let mut dp = make(lab.node(0).netns.path().to_owned());
    check_events(&lab, dp.as_mut());
}

fn check_events(lab: &Lab, dp: &mut dyn Dataplane) {
    let desired = state(lab);
    dp.apply(&desired).expect("apply");
    let mut events = dp
        .events(&EventOptions {
            new_connections: true,
            policy_verdicts: false,
        })
        .expect("events");
    assert!(events.readiness_fd().is_some());
    let client = lab.pod(1);
    let client_ip = client.address(Family::V4).unwrap();
    let cases = [
        (
            41001,
            EMPTY.parse().unwrap(),
            EventVerdict::Rejected,
            DropReason::NoBackend,
            Some("empty"),
        ),
        (
            41002,
            FENCED_LB.parse().unwrap(),
            EventVerdict::Dropped,
            DropReason::SourceRange,
            Some("fenced"),
        ),
        (
            41003,
            SocketAddr::new(lab.pod(0).address(Family::V4).unwrap(), SERVER_PORT),
            EventVerdict::PolicyDenied,
            DropReason::Policy,
            None,
        ),
    ];
    for (port, to, verdict, reason, service) in cases {
        let from = SocketAddr::new(client_ip, port);
        let outcome = probe_from(
            &client.netns,
            Some(from),
            to,
            Protocol::Tcp,
            Duration::from_secs(1),
        )
        .expect("probe");
        assert!(
            !matches!(outcome, dataplane_testkit::ProbeOutcome::Answered { .. }),
            "{to}: {outcome:?}"
        );
        let got = events_from(events.as_mut(), from, EventKind::Drop);
        let want = drop_of(lab, from, to, verdict, reason, service);
        assert_eq!(got, BTreeSet::from([want]), "probe to {to}");
    }
    // A connection to default/open: a new connection, translated to pod-0-2.
    let from = SocketAddr::new(client_ip, 41004);
    let outcome = probe_from(
        &client.netns,
        Some(from),
        OPEN.parse().unwrap(),
        Protocol::Tcp,
        Duration::from_secs(5),
    )
    .expect("probe");
    assert!(
        matches!(outcome, dataplane_testkit::ProbeOutcome::Answered { ref backend, .. } if backend == "pod-0-2"),
        "{outcome:?}"
    );
    let got = events_from(events.as_mut(), from, EventKind::NewConnection);
    let backend = SocketAddr::new(lab.pod(2).address(Family::V4).unwrap(), SERVER_PORT);
    let want = Seen {
        kind: EventKind::NewConnection,
        verdict: EventVerdict::Translated,
        reason: None,
        service: Some(ObjectName::new("default", "open")),
        source: from,
        destination: OPEN.parse().unwrap(),
        backend: Some(backend),
        source_endpoint: Some(client.endpoint().name),
        destination_endpoint: Some(lab.pod(2).endpoint().name),
        point: None,
        interface: None,
    };
    assert_eq!(got, BTreeSet::from([want]));
    // The drops are counted by reason.
    let stats = dp.stats().expect("stats");
    for reason in [
        DropReason::NoBackend,
        DropReason::SourceRange,
        DropReason::Policy,
    ] {
        assert!(
            stats.drops.get(&reason).copied().unwrap_or(0) > 0,
            "{reason}: {stats:?}"
        );
    }
    assert_eq!(events.lost(), 0);
    drop(events);
    dp.reset().expect("reset");
}

mod nftables {
    use super::*;
    use dataplane_iptables::{NetfilterConfig, NftablesDataplane};

    #[test]
    fn drops_rejects_and_connections_are_events() {
        if !require_root("nftables::drops_rejects_and_connections_are_events") {
            return;
        }
        check_flavour(|netns| {
            Box::new(NftablesDataplane::new(NetfilterConfig::nftables(Some(
                netns,
            ))))
        });
    }
}

mod iptables {
    use super::*;
    use dataplane_iptables::{IptablesDataplane, NetfilterConfig};

    #[test]
    fn drops_rejects_and_connections_are_events() {
        if !require_root("iptables::drops_rejects_and_connections_are_events") {
            return;
        }
        check_flavour(|netns| {
            Box::new(IptablesDataplane::new(NetfilterConfig::iptables(Some(
                netns,
            ))))
        });
    }
}
