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

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::policy::{labels, policy};
use dataplane_core::{
    BoxEventSource, Dataplane, DesiredState, DropReason, EventKind, EventOptions, EventSource,
    EventVerdict, FlowEvent, Inspect, ObjectName, ObservationPoint, PolicyType, Protocol, Service,
};
use dataplane_iptables::{LiveNetfilter, NetfilterConfig, NetfilterError};
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
    node: String,
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
        node: e.node.clone(),
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

/// How long a source stays quiet after the first matching event before the reading stops:
/// a duplicate of the probe's event (the same packet logged twice) would arrive with it,
/// well inside this. A retransmission is a packet of its own (see
/// [`refused_probe_events`]).
const SETTLE: Duration = Duration::from_secs(2);

/// Reads `events` until one from `source` of `kind` arrives (generous deadline), then for
/// [`SETTLE`] more: every event of the probe, duplicates kept (so "exactly one" can fail).
fn events_from(events: &mut dyn EventSource, source: SocketAddr, kind: EventKind) -> Vec<Seen> {
    events_from_for(events, source, kind, Duration::from_secs(20))
}

/// [`events_from`] with its deadline for the first event `wait`.
fn events_from_for(
    events: &mut dyn EventSource,
    source: SocketAddr,
    kind: EventKind,
    wait: Duration,
) -> Vec<Seen> {
    let deadline = Instant::now() + wait;
    let mut settled: Option<Instant> = None;
    let mut out = Vec::new();
    let mut buf = Vec::new();
    while Instant::now() < settled.unwrap_or(deadline) {
        events.wait(Duration::from_millis(200)).unwrap();
        buf.clear();
        events.read(&mut buf, 64).unwrap();
        out.extend(
            buf.iter()
                .filter(|e| e.original.source == source && e.kind == kind)
                .map(seen),
        );
        if !out.is_empty() && settled.is_none() {
            settled = Some(Instant::now() + SETTLE);
        }
    }
    out
}

/// The drops `dp` counted for `reason` (every packet, logged or not).
fn dropped(dp: &dyn Dataplane, reason: DropReason) -> u64 {
    dp.stats()
        .expect("stats")
        .drops
        .get(&reason)
        .copied()
        .unwrap_or(0)
}

/// A refused probe (see [`refused_probe`]) and its drop events, with how many packets the
/// backend counted as dropped for `reason` meanwhile: one event each. A probe that is
/// dropped silently (no reset) may send its SYN twice: the kernel retransmits it after the
/// initial RTO of one second, the probe's own timeout, and on a loaded machine the probe
/// may close after that. The retransmission is a packet of its own, dropped, counted and
/// logged like the first; the same packet logged twice (or once not at all) is still a
/// mismatch between the events and the counter.
fn refused_probe_events(
    lab: &Lab,
    dp: &dyn Dataplane,
    events: &mut dyn EventSource,
    from: SocketAddr,
    to: SocketAddr,
    reason: DropReason,
) -> (Vec<Seen>, usize) {
    let before = dropped(dp, reason);
    refused_probe(lab, from, to);
    // Read until [`SETTLE`] after the first event: the probe's socket is closed already, so
    // every packet it sent was dropped (and counted) by then.
    let mut got = events_from(events, from, EventKind::Drop);
    let packets = usize::try_from(dropped(dp, reason) - before).expect("count");
    assert!(packets > 0, "no drop counted for {reason}");
    // A retransmission's event may come a second after the first one's (NFLOG flushes a
    // group's queue once a second): read until every counted packet has one (generous
    // deadline), then [`SETTLE`] more for a duplicate of it.
    if got.len() < packets {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut buf = Vec::new();
        while got.len() < packets && Instant::now() < deadline {
            events.wait(Duration::from_millis(200)).unwrap();
            buf.clear();
            events.read(&mut buf, 64).unwrap();
            got.extend(
                buf.iter()
                    .filter(|e| e.original.source == from && e.kind == EventKind::Drop)
                    .map(seen),
            );
        }
        if got.len() == packets {
            got.extend(events_from_for(events, from, EventKind::Drop, SETTLE));
        }
    }
    (got, packets)
}

/// A TCP probe from `from` (pod-0-1) to `to` that must not be answered.
fn refused_probe(lab: &Lab, from: SocketAddr, to: SocketAddr) {
    let outcome = probe_from(
        &lab.pod(1).netns,
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
}

/// Datagrams of the flood in [`check_flood`]: at the rules' 20 a second (burst 20), logging
/// them all would take 50 seconds.
const FLOOD: u64 = 1000;

/// A flood of UDP datagrams to a ClusterIP port that is not served (rejected, unallocated):
/// the log rules' limit holds most back, the counters count every one, and what was logged
/// plus what was held back is what was counted. Every count is table-wide (drops of every
/// reason, held back by every log rule, every drop event read), so another drop in the
/// window (a retransmission of an earlier probe) is on both sides.
fn check_flood(lab: &Lab, dp: &dyn Dataplane, events: &mut dyn EventSource) {
    let counts = |dp: &dyn Dataplane| {
        let s = dp.stats().expect("stats");
        (
            s.drops.get(&DropReason::Unallocated).copied().unwrap_or(0),
            s.drops.values().sum::<u64>(),
            s.other.get("events_suppressed").copied().unwrap_or(0),
        )
    };
    // What earlier probes left unread is not the flood's.
    let mut buf = Vec::new();
    while events.read(&mut buf, 256).unwrap() > 0 {
        buf.clear();
    }
    let (unallocated_before, counted_before, held_before) = counts(dp);
    let client = lab.pod(1);
    let from = SocketAddr::new(client.address(Family::V4).unwrap(), 41006);
    let to: SocketAddr = EMPTY.parse().unwrap();
    client
        .netns
        .run(|| {
            let socket = std::net::UdpSocket::bind(from).expect("bind");
            for _ in 0..FLOOD {
                // Refusals (ICMP) of earlier datagrams may surface as errors: not ours to count.
                let _ = socket.send_to(b"flood", to);
            }
        })
        .expect("netns");
    // Every datagram counted (the kernel may still be passing the last ones on).
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut unallocated, mut counted, mut held) = counts(dp);
    while unallocated - unallocated_before < FLOOD && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        (unallocated, counted, held) = counts(dp);
    }
    assert_eq!(unallocated - unallocated_before, FLOOD);
    assert!(held > held_before, "the limit held nothing back");
    // The rest was logged: read until all of it arrived (the counts read again each
    // round: a drop after the flood is counted and logged or held back too).
    let (mut logged, mut flood_logged) = (0u64, 0u64);
    while logged + (held - held_before) < counted - counted_before && Instant::now() < deadline {
        events.wait(Duration::from_millis(200)).unwrap();
        buf.clear();
        events.read(&mut buf, 256).unwrap();
        for e in buf.iter().filter(|e| e.kind == EventKind::Drop) {
            logged += 1;
            if e.original.source != from {
                continue;
            }
            assert_eq!(
                (e.verdict, e.reason, e.protocol),
                (
                    EventVerdict::Rejected,
                    Some(DropReason::Unallocated),
                    dataplane_core::L4Protocol::Udp
                ),
                "{e}"
            );
            flood_logged += 1;
        }
        (_, counted, held) = counts(dp);
    }
    let held = held - held_before;
    assert_eq!(
        logged + held,
        counted - counted_before,
        "logged {logged}, held back {held}"
    );
    assert!(flood_logged > 0, "nothing of the flood logged");
    assert_eq!(events.lost(), 0);
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
    let destination = lab.pods().iter().find(|p| p.addresses.contains(&to.ip()));
    let destination_endpoint = destination.map(|p| p.endpoint().name);
    // An ingress policy denies at the server's side: reported there (as the eBPF backend
    // does, on the server's veth); the others where the client's packet came in.
    let (point, interface) = match (reason, destination) {
        (DropReason::Policy, Some(server)) => {
            (ObservationPoint::ToPod, server.host_interface.clone())
        }
        _ => (ObservationPoint::FromPod, pod.host_interface.clone()),
    };
    Seen {
        node: lab.desired_state(0).node.name,
        kind: EventKind::Drop,
        verdict,
        reason: Some(reason),
        service: service.map(|s| ObjectName::new("default", s)),
        source: client,
        destination: to,
        backend: None,
        source_endpoint: Some(pod.endpoint().name),
        destination_endpoint,
        point: Some(point),
        interface: Some(interface),
    }
}

/// Runs the probes against a backend `make` builds for the lab node's namespace, then the
/// inspector beside it, then the drop counters of a backend that logs nothing.
fn check_flavour(make: impl Fn(NetfilterConfig) -> Box<dyn Dataplane>, config: &NetfilterConfig) {
    let lab = lab();
    let mut config = config.clone();
    config.netns = Some(lab.node(0).netns.path().to_owned());
    let mut dp = make(config.clone());
    // Nothing programmed yet: a typed error naming what was looked for.
    let err = LiveNetfilter::open(&config).unwrap_err();
    assert!(
        matches!(err, NetfilterError::NothingProgrammed { .. }),
        "{err}"
    );
    assert!(err.to_string().contains(&config.name), "{err}");
    let events = check_events(&lab, dp.as_mut());
    check_inspector(&lab, dp.as_ref(), &config, events);
    dp.reset().expect("reset");
    check_unlogged(&lab, &make, &config);
}

/// With `nflog_rate` 0 nothing is logged, and the drops are counted by reason all the same
/// (tagged on the rules that drop, not read from the log rules); nothing is "held back".
fn check_unlogged(
    lab: &Lab,
    make: &impl Fn(NetfilterConfig) -> Box<dyn Dataplane>,
    config: &NetfilterConfig,
) {
    let mut config = config.clone();
    config.nflog_rate = 0;
    let mut dp = make(config);
    dp.apply(&state(lab)).expect("apply");
    let before = dp.stats().expect("stats");
    assert!(
        !before.other.contains_key("events_suppressed"),
        "{before:?}"
    );
    let from = SocketAddr::new(lab.pod(1).address(Family::V4).unwrap(), 41007);
    let count = |dp: &dyn Dataplane| {
        dp.stats()
            .expect("stats")
            .drops
            .get(&DropReason::NoBackend)
            .copied()
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    refused_probe(lab, from, EMPTY.parse().unwrap());
    while count(dp.as_ref()) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let after = dp.stats().expect("stats");
    assert!(
        after
            .drops
            .get(&DropReason::NoBackend)
            .copied()
            .unwrap_or(0)
            > 0,
        "{after:?}"
    );
    assert!(!after.other.contains_key("events_suppressed"), "{after:?}");
    dp.reset().expect("reset");
}

/// The ruleset as the tools print it, counters left out (they count traffic, not rules;
/// the inspector's own probe moves them) and whitespace normalised.
fn ruleset(lab: &Lab, flavour: &str) -> String {
    let path = lab.node(0).netns.path().to_owned();
    let tools: &[&[&str]] = if flavour == "nftables" {
        &[&["nft", "list", "ruleset"]]
    } else {
        &[&["iptables-save"], &["ip6tables-save"]]
    };
    let mut out = String::new();
    for tool in tools {
        let o = std::process::Command::new("nsenter")
            .arg(format!("--net={}", path.display()))
            .args(*tool)
            .output()
            .expect("nsenter");
        assert!(
            o.status.success(),
            "{tool:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        out.push_str(&String::from_utf8_lossy(&o.stdout));
    }
    out.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            // `[packets:bytes]` (iptables) and `packets N bytes N` (nft).
            let words: Vec<&str> = l.split_whitespace().collect();
            let mut kept = Vec::new();
            let mut i = 0;
            while i < words.len() {
                if (words[i] == "packets" || words[i] == "bytes")
                    && words.get(i + 1).is_some_and(|n| n.parse::<u64>().is_ok())
                {
                    i += 2;
                    continue;
                }
                if words[i].starts_with('[') && words[i].ends_with(']') && words[i].contains(':') {
                    i += 1;
                    continue;
                }
                kept.push(words[i]);
                i += 1;
            }
            kept.join(" ") + "\n"
        })
        .collect()
}

/// The frontends of `state` with the service and the backends new connections may use
/// (every service here is Cluster-wide and its backends ready).
fn expected_frontends(
    state: &DesiredState,
) -> BTreeMap<(SocketAddr, Protocol), (ObjectName, BTreeSet<SocketAddr>)> {
    let mut out = BTreeMap::new();
    for s in &state.services {
        for p in &s.ports {
            let backends: BTreeSet<SocketAddr> = s
                .backends
                .iter()
                .map(|b| SocketAddr::new(b.ip, p.target_port))
                .collect();
            for ip in s
                .cluster_ips
                .iter()
                .chain(&s.external_ips)
                .chain(&s.load_balancer_ips)
            {
                out.insert(
                    (SocketAddr::new(*ip, p.port), p.protocol),
                    (s.name.clone(), backends.clone()),
                );
            }
        }
    }
    out
}

/// The inspector's status against the desired state (`want`: its frontends).
fn check_status(
    live: &LiveNetfilter,
    dp: &dyn Dataplane,
    desired: &DesiredState,
    want: &BTreeMap<(SocketAddr, Protocol), (ObjectName, BTreeSet<SocketAddr>)>,
) {
    let flavour = dp.capabilities().dataplane;
    let status = live.status().expect("status");
    let names: BTreeSet<&ObjectName> = want.values().map(|(n, _)| n).collect();
    let mut backends: BTreeMap<&ObjectName, BTreeSet<SocketAddr>> = BTreeMap::new();
    for (n, b) in want.values() {
        backends.entry(n).or_default().extend(b);
    }
    let isolated: usize = dataplane_core::compile(desired)
        .endpoints
        .values()
        .map(|t| usize::from(t.ingress.isolated) + usize::from(t.egress.isolated))
        .sum();
    let interfaces: BTreeSet<&str> = desired
        .endpoints
        .iter()
        .map(|e| e.interface.as_str())
        .collect();
    assert_eq!(status.dataplane, flavour);
    assert_eq!(status.services, names.len() as u64);
    assert_eq!(status.frontends, want.len() as u64);
    assert_eq!(
        status.backends,
        backends.values().map(|b| b.len() as u64).sum::<u64>()
    );
    assert_eq!(status.endpoints, interfaces.len() as u64);
    assert_eq!(status.policies, isolated as u64);
    assert!(status.tables.is_empty());
    assert!(
        status
            .attachments
            .iter()
            .any(|a| a.hook.to_lowercase().contains("prerouting")),
        "{:?}",
        status.attachments
    );
    assert_eq!(status.stats.drops, dp.stats().expect("stats").drops);
}

/// `LiveNetfilter` beside the backend: status and services as programmed (computed from the
/// desired state), the same drop counters, an event of its own reader, and the ruleset
/// unchanged by all of it.
fn check_inspector(
    lab: &Lab,
    dp: &dyn Dataplane,
    config: &NetfilterConfig,
    events: BoxEventSource,
) {
    let desired = state(lab);
    let flavour = dp.capabilities().dataplane;
    let before = ruleset(lab, &flavour);
    let live = LiveNetfilter::open(config).expect("open");
    assert_eq!(live.dataplane(), flavour);
    // The dataplane's own reader holds the NFLOG group: a second reader is told so.
    let Err(busy) = live.events(&EventOptions::default()) else {
        panic!("a second reader of the group")
    };
    let source = std::error::Error::source(&busy).and_then(|e| e.downcast_ref::<NetfilterError>());
    assert!(
        matches!(source, Some(NetfilterError::NflogGroupBusy { group, .. }) if *group == config.nflog_group),
        "{busy}: {source:?}"
    );
    drop(events);

    let want = expected_frontends(&desired);
    let services = live.services().expect("services");
    let got: BTreeMap<_, _> = services
        .iter()
        .map(|f| {
            (
                (f.address, f.protocol),
                (
                    f.service.clone().expect("named"),
                    f.backends.iter().copied().collect::<BTreeSet<_>>(),
                ),
            )
        })
        .collect();
    assert_eq!(got, want);
    let kinds: BTreeMap<SocketAddr, Option<String>> = services
        .iter()
        .map(|f| (f.address, f.kind.clone()))
        .collect();
    assert_eq!(kinds[&EMPTY.parse().unwrap()].as_deref(), Some("ClusterIP"));
    assert_eq!(
        kinds[&FENCED_LB.parse().unwrap()].as_deref(),
        Some("LoadBalancer")
    );

    check_status(&live, dp, &desired, &want);
    // The connection to default/open may still be tracked: every tracked flow is to a
    // frontend of ours.
    for f in live.conntrack().expect("conntrack") {
        assert!(want.contains_key(&(f.frontend, f.protocol)), "{f:?}");
    }

    // Its own reader, now that the group is free: a probe to the service without
    // endpoints, named from the ruleset.
    let mut events = live.events(&EventOptions::default()).expect("events");
    let client = lab.pod(1);
    let from = SocketAddr::new(client.address(Family::V4).unwrap(), 41005);
    let to: SocketAddr = EMPTY.parse().unwrap();
    let (got, packets) =
        refused_probe_events(lab, dp, events.as_mut(), from, to, DropReason::NoBackend);
    let mut want = drop_of(
        lab,
        from,
        to,
        EventVerdict::Rejected,
        DropReason::NoBackend,
        Some("empty"),
    );
    // The ruleset names isolated pods only (nftables' dispatch maps): the client is not
    // one. Its interface is a pod interface of the policy layer in both flavours.
    want.source_endpoint = None;
    // Not the dataplane's process: the host's name (the lab's namespaces share it).
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .clone_into(&mut want.node);
    assert_eq!(got, vec![want; packets]);
    drop(events);
    assert_eq!(
        ruleset(lab, &flavour),
        before,
        "inspection changed the ruleset"
    );
}

fn check_events(lab: &Lab, dp: &mut dyn Dataplane) -> BoxEventSource {
    let desired = state(lab);
    // Opened before the first apply, as the node agent opens its flow log: the reader names
    // what the apply programs (node, services, pods, interfaces), not what was there when it
    // opened (nothing).
    let mut events = dp
        .events(&EventOptions {
            new_connections: true,
            policy_verdicts: false,
        })
        .expect("events");
    dp.apply(&desired).expect("apply");
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
        let (got, packets) = refused_probe_events(lab, &*dp, events.as_mut(), from, to, reason);
        let want = drop_of(lab, from, to, verdict, reason, service);
        assert_eq!(got, vec![want; packets], "probe to {to}");
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
        node: desired.node.name.clone(),
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
    assert_eq!(got, [want]);
    check_flood(lab, dp, events.as_mut());
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
    events
}

mod nftables {
    use super::*;
    use dataplane_iptables::NftablesDataplane;

    #[test]
    fn drops_rejects_and_connections_are_events() {
        if !require_root("nftables::drops_rejects_and_connections_are_events") {
            return;
        }
        check_flavour(
            |config| Box::new(NftablesDataplane::new(config)),
            &NetfilterConfig::nftables(None),
        );
    }
}

mod iptables {
    use super::*;
    use dataplane_iptables::IptablesDataplane;

    #[test]
    fn drops_rejects_and_connections_are_events() {
        if !require_root("iptables::drops_rejects_and_connections_are_events") {
            return;
        }
        check_flavour(
            |config| Box::new(IptablesDataplane::new(config)),
            &NetfilterConfig::iptables(None),
        );
    }
}
