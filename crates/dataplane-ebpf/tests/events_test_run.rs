//! Flow events and drop counters per packet, with BPF_PROG_TEST_RUN against live maps: the
//! bytes the programs write into `dp_events`, what `Dataplane::events()` makes of them, the
//! `dp_drops` counters behind `Stats::drops`, and the per-CPU rate limit.
//!
//! ```text
//!   node-a 172.18.0.2, uplink eth0
//!     x/a 10.244.0.5  --lxc0--  (ingress isolated: only pods pod=b on TCP 80)
//!     x/b 10.244.0.6  --lxc1--
//!   elsewhere: y/c 10.244.1.7; outside 192.0.2.0/24, 203.0.113.0/24
//!   x/empty  ClusterIP 10.96.0.15:80, no backends            -> RST, no-backend
//!   x/lb     LB IP 198.51.100.1:80, sources 192.0.2.0/24      -> others dropped, source-range
//!   x/to-c   ClusterIP 10.96.0.11:80 -> y/c 10.244.1.7:80     -> a new connection
//! ```

mod common;
mod events_common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use aya::maps::ring_buf::RingBuf;
use aya::maps::{HashMap as BpfHashMap, Map, MapData, PerCpuArray};
use common::{eth, require_root, TestNode, TCP_SYN};
use dataplane_core::{
    diff, Backend, Dataplane, DesiredState, Direction, DropReason, Endpoint, EventKind,
    EventOptions, EventSource, EventVerdict, FlowEvent, L4Protocol, Namespace, ObjectName,
    ObservationPoint, PeerPod, Policy, Protocol, Service, ServicePort, TcpFlags, Tuple,
};
use dataplane_ebpf::maps::{
    EvLimit, FlowEventRecord, NameKey, NameValue, AF_INET, EV_KIND_DROP, EV_KIND_MAX,
    EV_KIND_NEW_CONN, EV_VERDICT_REJECTED,
};
use dataplane_ebpf::{EbpfDataplane, EventLimit, EventLimits, Hook, RunOn, XdpMode};
use events_common::the_one;

const SHOT: u32 = 2;
const TCP_RST: u8 = 0x04;
/// Drops in one burst: more than a bucket holds (`EventLimits::default()`'s drops: 1000).
const BURST: u32 = 1500;

fn policy(json: serde_json::Value) -> Policy {
    serde_json::from_value(json).expect("policy JSON")
}

fn svc(name: &str, ip: &str, backends: &[&str]) -> Service {
    let mut s = Service::new(ObjectName::new("x", name));
    s.cluster_ips = vec![ip.parse().unwrap()];
    s.ports = vec![ServicePort::new(Protocol::Tcp, 80, 80)];
    s.backends = backends
        .iter()
        .map(|b| Backend::new(b.parse().unwrap()))
        .collect();
    s
}

fn scene() -> DesiredState {
    let mut st = DesiredState::new(common::node_a());
    st.namespaces = vec![Namespace::new("x"), Namespace::new("y")];
    st.endpoints = vec![
        Endpoint::new(
            ObjectName::new("x", "a"),
            "lxc0",
            ["10.244.0.5".parse().unwrap()],
        )
        .with_label("pod", "a"),
        Endpoint::new(
            ObjectName::new("x", "b"),
            "lxc1",
            ["10.244.0.6".parse().unwrap()],
        )
        .with_label("pod", "b"),
    ];
    st.pods = vec![
        PeerPod::new(ObjectName::new("y", "c"), ["10.244.1.7".parse().unwrap()]).on_node("node-b"),
    ];
    let mut lb = svc("lb", "10.96.0.12", &["10.244.1.7"]);
    lb.load_balancer_ips = vec!["198.51.100.1".parse().unwrap()];
    lb.load_balancer_source_ranges = vec!["192.0.2.0/24".parse().unwrap()];
    st.services = vec![
        svc("empty", "10.96.0.15", &[]),
        lb,
        svc("to-c", "10.96.0.11", &["10.244.1.7"]),
    ];
    st.policies = vec![policy(serde_json::json!({
        "namespace": "x", "name": "a-from-b",
        "podSelector": {"matchLabels": {"pod": "a"}},
        "policyTypes": ["Ingress"],
        "ingress": [{"peers": [{"podSelector": {"matchLabels": {"pod": "b"}}}],
                     "ports": [{"protocol": "TCP", "port": 80}]}],
    }))];
    st
}

/// A node with the pods' host-side veths lxc0 and lxc1.
fn node(tag: &str) -> TestNode {
    let n = TestNode::new(tag);
    for (host, peer) in [("lxc0", "lxc0p"), ("lxc1", "lxc1p")] {
        for args in [
            vec![
                "-n", &n.name, "link", "add", host, "type", "veth", "peer", "name", peer,
            ],
            vec!["-n", &n.name, "link", "set", host, "up"],
        ] {
            let out = std::process::Command::new("ip")
                .args(&args)
                .output()
                .expect("ip");
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    n
}

/// Keeps this thread (and the threads it spawns, which run the test runs in the node's
/// namespace) on one CPU: the rate limit is per CPU.
fn pin_to_one_cpu() {
    use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
    use nix::unistd::Pid;
    let allowed = sched_getaffinity(Pid::from_raw(0)).expect("affinity");
    let cpu = (0..CpuSet::count())
        .find(|&c| allowed.is_set(c).unwrap_or(false))
        .expect("an allowed CPU");
    let mut one = CpuSet::new();
    one.set(cpu).expect("a CPU number");
    sched_setaffinity(Pid::from_raw(0), &one).expect("pinned");
}

fn run_on(dp: &mut EbpfDataplane, hook: Hook, packet: &[u8], on: &str, repeat: u32) -> u32 {
    let on = RunOn {
        interface: Some(on.to_owned()),
        ingress: None,
        mark: None,
    };
    dp.run_packet_on(hook, packet, repeat, &on)
        .expect("test run")
        .verdict
}

fn read_all(events: &mut dyn EventSource) -> Vec<FlowEvent> {
    let mut out = Vec::new();
    while events.read(&mut out, 4096).expect("read events") > 0 {}
    out
}

/// The one event waiting in `events`, checked to be of `kind` with `verdict` and `reason`.
fn only(
    events: &mut dyn EventSource,
    kind: EventKind,
    verdict: EventVerdict,
    reason: Option<DropReason>,
) -> FlowEvent {
    the_one(&read_all(events), kind, verdict, reason).clone()
}

/// The one event waiting in `events`, checked to be a translated new connection.
fn the_new_connection(events: &mut dyn EventSource) -> FlowEvent {
    only(
        events,
        EventKind::NewConnection,
        EventVerdict::Translated,
        None,
    )
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// `dp_names` of node `n`, from its pin.
fn pinned_names(n: &TestNode) -> BpfHashMap<MapData, NameKey, NameValue> {
    BpfHashMap::try_from(Map::HashMap(
        MapData::from_pin(n.pin_dir.join("dp_names")).expect("dp_names pinned"),
    ))
    .expect("a hash map")
}

/// Pod or service `name` of namespace x, as an event names it.
#[allow(clippy::unnecessary_wraps)] // compared with the events' Option fields
fn x(name: &str) -> Option<ObjectName> {
    Some(ObjectName::new("x", name))
}

#[test]
#[allow(clippy::too_many_lines)] // one scene, one load: the cases read best in order
fn drops_new_connections_and_policy_verdicts() {
    if !require_root("drops_new_connections_and_policy_verdicts") {
        return;
    }
    pin_to_one_cpu();
    let n = node("evt");
    let mut dp = n.dataplane();
    dp.apply(&scene()).expect("apply");

    // The raw record of a reject: TCP SYN from x/a to a ClusterIP without backends.
    let mut ring = RingBuf::try_from(Map::RingBuf(
        MapData::from_pin(n.pin_dir.join("dp_events")).expect("dp_events pinned"),
    ))
    .expect("a ring buffer");
    let names = pinned_names(&n);
    let empty_syn = eth()
        .ip("10.244.0.5", "10.96.0.15")
        .tcp(40000, 80, TCP_SYN)
        .build();
    let rejected = dp.run_packet(Hook::FromPod, &empty_syn, 1).expect("run");
    assert_eq!(rejected.verdict, 7, "the RST is redirected back to the pod");
    let record = {
        let item = ring.next().expect("one record");
        FlowEventRecord::from_bytes(&item).expect("a whole record")
    };
    assert!(ring.next().is_none(), "exactly one record");
    drop(ring);
    assert_eq!(record.kind, EV_KIND_DROP);
    assert_eq!(record.verdict, EV_VERDICT_REJECTED);
    assert_eq!(record.reason, DropReason::NoBackend.code());
    assert_eq!(record.point, 1, "PT_FROM_POD");
    assert_eq!(record.direction, 1, "EV_DIR_ORIGINAL");
    assert_eq!((record.family, record.proto), (AF_INET, 6));
    assert_eq!(record.tcp_flags, TCP_SYN);
    assert_eq!(record.flags, 0, "not translated");
    assert_eq!(record.pad, [0; 3]);
    assert_eq!(
        record.saddr.ip(AF_INET),
        "10.244.0.5".parse::<std::net::IpAddr>().unwrap()
    );
    assert_eq!(
        record.daddr.ip(AF_INET),
        "10.96.0.15".parse::<std::net::IpAddr>().unwrap()
    );
    assert_eq!((record.sport.get(), record.dport.get()), (40000, 80));
    assert_eq!(record.backend_id, 0);
    assert_eq!(record.suppressed, 0);
    assert_ne!(record.svc_id, 0, "the frontend's service-port id");
    assert_eq!(
        names
            .get(&NameKey::service(record.svc_id), 0)
            .expect("the id is named")
            .object_name(),
        x("empty")
    );
    assert!(record.ktime_ns > 0);

    // From here on through the dataplane's reader, new connections off.
    let mut events = dp.events(&EventOptions::default()).expect("events");
    assert!(events.readiness_fd().is_some());
    assert!(read_all(events.as_mut()).is_empty());

    // Source range: dropped at the uplink.
    let outsider = eth()
        .ip("203.0.113.9", "198.51.100.1")
        .tcp(41000, 80, TCP_SYN)
        .build();
    assert_eq!(
        run_on(&mut dp, Hook::FromUplink, &outsider, "eth0", 1),
        SHOT
    );
    let e = &only(
        events.as_mut(),
        EventKind::Drop,
        EventVerdict::Dropped,
        Some(DropReason::SourceRange),
    );
    assert_eq!(e.point, Some(ObservationPoint::FromUplink));
    assert_eq!(e.interface.as_deref(), Some("eth0"));
    assert_eq!(e.node, "node-a");
    assert_eq!(e.service, x("lb"));
    assert_eq!(
        e.original,
        Tuple::new(addr("203.0.113.9:41000"), addr("198.51.100.1:80"))
    );
    assert_eq!(e.translated, None);
    assert_eq!(e.protocol, L4Protocol::Tcp);
    assert_eq!(e.tcp_flags, Some(TcpFlags(TCP_SYN)));
    assert_eq!(
        (e.source_endpoint.clone(), e.destination_endpoint.clone()),
        (None, None)
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let age = i128::try_from(now).unwrap() - i128::from(e.time.0);
    assert!(
        (0..60_000_000_000).contains(&age),
        "wall-clock time, {age} ns ago"
    );

    // NetworkPolicy: x/a admits only pod=b; a client outside is denied at a's veth.
    let denied = eth()
        .ip("192.0.2.9", "10.244.0.5")
        .tcp(42000, 80, TCP_SYN)
        .build();
    let on = RunOn {
        interface: Some("lxc0".to_owned()),
        ingress: Some("eth0".to_owned()),
        mark: None,
    };
    let run = dp.run_packet_on(Hook::ToPod, &denied, 1, &on).expect("run");
    assert_eq!(run.verdict, SHOT);
    let e = &only(
        events.as_mut(),
        EventKind::Drop,
        EventVerdict::PolicyDenied,
        Some(DropReason::Policy),
    );
    assert_eq!(e.point, Some(ObservationPoint::ToPod));
    assert_eq!(e.interface.as_deref(), Some("lxc0"));
    assert_eq!(e.direction, Some(Direction::Original));
    assert_eq!(e.destination_endpoint, x("a"));
    assert_eq!(e.source_endpoint, None);

    // A new connection, with the flag off: no event; on: one, with the translation.
    let to_c = |sport| {
        eth()
            .ip("10.244.0.6", "10.96.0.11")
            .tcp(sport, 80, TCP_SYN)
            .build()
    };
    assert_eq!(
        dp.run_packet(Hook::FromPod, &to_c(43000), 1)
            .expect("run")
            .verdict,
        0
    );
    assert!(
        read_all(events.as_mut()).is_empty(),
        "new connections are off"
    );
    let mut events = dp
        .events(&EventOptions {
            new_connections: true,
            policy_verdicts: true,
        })
        .expect("events");
    dp.run_packet(Hook::FromPod, &to_c(43001), 1).expect("run");
    let e = &the_new_connection(events.as_mut());
    assert_eq!(e.point, Some(ObservationPoint::FromPod));
    assert_eq!(e.interface.as_deref(), Some("lxc1"));
    assert_eq!(e.service, x("to-c"));
    assert_eq!(e.backend, Some(addr("10.244.1.7:80")));
    assert_eq!(
        e.original,
        Tuple::new(addr("10.244.0.6:43001"), addr("10.96.0.11:80"))
    );
    assert_eq!(
        e.translated,
        Some(Tuple::new(addr("10.244.0.6:43001"), addr("10.244.1.7:80")))
    );
    assert_eq!(e.source_endpoint, x("b"));
    assert_eq!(e.destination_endpoint, Some(ObjectName::new("y", "c")));
    // An established packet of it: nothing.
    let ack = eth()
        .ip("10.244.0.6", "10.96.0.11")
        .tcp(43001, 80, common::TCP_ACK)
        .build();
    dp.run_packet(Hook::FromPod, &ack, 1).expect("run");
    assert!(
        read_all(events.as_mut()).is_empty(),
        "established: no event"
    );

    // A policy verdict: b reaches a on TCP 80 (a's policy allows it).
    let allowed = eth()
        .ip("10.244.0.6", "10.244.0.5")
        .tcp(44000, 80, TCP_SYN)
        .build();
    let on = RunOn {
        interface: Some("lxc0".to_owned()),
        ingress: Some("lxc1".to_owned()),
        mark: None,
    };
    assert_eq!(
        dp.run_packet_on(Hook::ToPod, &allowed, 1, &on)
            .expect("run")
            .verdict,
        0
    );
    let e = &only(
        events.as_mut(),
        EventKind::PolicyVerdict,
        EventVerdict::Forwarded,
        None,
    );
    assert_eq!(e.point, Some(ObservationPoint::ToPod));
    assert_eq!(
        (e.source_endpoint.clone(), e.destination_endpoint.clone()),
        (x("b"), x("a"))
    );

    // Pod masquerade: a new connection leaving the cluster, its source translated.
    let out = eth()
        .ip("10.244.0.6", "192.0.2.50")
        .udp(45000, 53)
        .payload(b"q")
        .build();
    run_on(&mut dp, Hook::ToUplink, &out, "eth0", 1);
    let e = &the_new_connection(events.as_mut());
    assert_eq!(e.point, Some(ObservationPoint::ToUplink));
    assert_eq!(e.protocol, L4Protocol::Udp);
    assert_eq!(
        e.translated.map(|t| t.source),
        Some(addr("172.18.0.2:45000")),
        "masqueraded to the node"
    );
    assert_eq!((e.service.clone(), e.backend), (None, None));
    assert_eq!(e.source_endpoint, x("b"));

    // An apply keeps the event flags the reader asked for.
    dp.apply(&scene()).expect("apply again");
    dp.run_packet(Hook::FromPod, &to_c(43002), 1).expect("run");
    the_new_connection(events.as_mut());

    // The counters: every drop and reject by reason, and per program.
    let stats = dp.stats().expect("stats");
    assert_eq!(stats.drops.get(&DropReason::NoBackend), Some(&1));
    assert_eq!(stats.drops.get(&DropReason::SourceRange), Some(&1));
    assert_eq!(stats.drops.get(&DropReason::Policy), Some(&1));
    assert_eq!(stats.drops.len(), 3, "{:?}", stats.drops);
    assert_eq!(stats.other["drops.dp_from_pod.no-backend"], 1);
    assert_eq!(stats.other["drops.dp_from_uplink.source-range"], 1);
    assert_eq!(stats.other["drops.dp_to_pod.policy"], 1);
    assert_eq!(events.lost(), 0);

    // An incremental sync names what it changed: a new service is named, a peer pod that
    // went is no longer.
    let mut next = scene();
    next.services.push(svc("late", "10.96.0.16", &[]));
    next.pods.clear();
    dp.apply_changes(&diff(&scene(), &next))
        .expect("apply changes");
    let late = eth()
        .ip("10.244.0.5", "10.96.0.16")
        .tcp(40100, 80, TCP_SYN)
        .build();
    dp.run_packet(Hook::FromPod, &late, 1).expect("run");
    let e = &only(
        events.as_mut(),
        EventKind::Drop,
        EventVerdict::Rejected,
        Some(DropReason::NoBackend),
    );
    assert_eq!(e.service, x("late"));
    assert!(
        names
            .get(&NameKey::endpoint("10.244.1.7".parse().unwrap()), 0)
            .is_err(),
        "the removed peer pod's name is gone"
    );
    assert!(names
        .get(&NameKey::endpoint("10.244.0.5".parse().unwrap()), 0)
        .is_ok());
    // ... and a service that went is no longer.
    let named_late = |names: &BpfHashMap<MapData, NameKey, NameValue>| {
        names
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, v)| v.object_name() == x("late"))
            .count()
    };
    assert_eq!(named_late(&names), 1, "one port, one id");
    dp.apply_changes(&diff(&next, &scene()))
        .expect("apply changes");
    assert_eq!(
        named_late(&names),
        0,
        "the removed service's id is no longer named"
    );

    // A TCP RST to a frontend without backends is not answered (RFC 9293): dropped.
    let rst = eth()
        .ip("10.244.0.5", "10.96.0.15")
        .tcp(40200, 80, TCP_RST)
        .build();
    assert_eq!(
        dp.run_packet(Hook::FromPod, &rst, 1).expect("run").verdict,
        SHOT
    );
    let e = &only(
        events.as_mut(),
        EventKind::Drop,
        EventVerdict::Dropped,
        Some(DropReason::NoBackend),
    );
    assert_eq!(e.tcp_flags, Some(TcpFlags(TCP_RST)));

    // A ClusterIP's port that no service has: rejected, the address:port unallocated.
    let unserved = eth()
        .ip("10.244.0.5", "10.96.0.11")
        .tcp(40300, 9999, TCP_SYN)
        .build();
    dp.run_packet(Hook::FromPod, &unserved, 1).expect("run");
    let e = &only(
        events.as_mut(),
        EventKind::Drop,
        EventVerdict::Rejected,
        Some(DropReason::Unallocated),
    );
    assert_eq!(e.service, None, "no service has the port");

    // The rate limit: a burst beyond the bucket writes fewer events; the next one written
    // carries the count of those it stands for.
    assert_eq!(
        run_on(&mut dp, Hook::FromUplink, &outsider, "eth0", BURST),
        SHOT
    );
    let written = read_all(events.as_mut());
    assert!(!written.is_empty());
    assert!(
        written.len() < BURST as usize,
        "{} events for {BURST} drops",
        written.len()
    );
    assert!(written
        .iter()
        .all(|e| e.reason == Some(DropReason::SourceRange)));
    let mut runs = u64::from(BURST);
    let mut later = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while later.is_empty() {
        assert!(Instant::now() < deadline, "no event after the burst");
        std::thread::sleep(Duration::from_millis(5));
        run_on(&mut dp, Hook::FromUplink, &outsider, "eth0", 1);
        runs += 1;
        later = read_all(events.as_mut());
    }
    let carried: u64 = written.iter().chain(&later).map(|e| e.suppressed).sum();
    assert!(later.iter().any(|e| e.suppressed > 0), "{later:#?}");
    assert_eq!(
        (written.len() + later.len()) as u64 + carried,
        runs,
        "every drop is written or counted in a later event's `suppressed`"
    );
    let stats = dp.stats().expect("stats");
    assert_eq!(stats.drops[&DropReason::SourceRange], 1 + runs);
    assert_eq!(events.lost(), 0);

    // The reader that asked for new connections goes: so do they (the first reader, which
    // asked for nothing, is still open).
    drop(events);
    let mut quiet = dp.events(&EventOptions::default()).expect("events");
    dp.run_packet(Hook::FromPod, &to_c(43004), 1).expect("run");
    assert!(read_all(quiet.as_mut()).is_empty(), "no reader wants them");
    // ... and a sync does not bring them back.
    dp.apply(&scene()).expect("apply");
    dp.run_packet(Hook::FromPod, &to_c(43005), 1).expect("run");
    assert!(
        read_all(quiet.as_mut()).is_empty(),
        "still none after a sync"
    );
    // A reader beside the owner (dpctl flows) changes nothing.
    let pinned = dataplane_ebpf::open_pinned_events(&n.pin_dir, Some(&n.netns_path()))
        .expect("open the pinned events");
    dp.run_packet(Hook::FromPod, &to_c(43006), 1).expect("run");
    drop(pinned);
    assert!(read_all(quiet.as_mut()).is_empty());
}

/// What the programs' bucket `slot` of `dp_ev_limit` (pinned in `pin_dir`) holds back now:
/// its `suppressed` count summed over the CPUs.
fn suppressed_in(pin_dir: &std::path::Path, slot: u32) -> u64 {
    let limits: PerCpuArray<MapData, EvLimit> = PerCpuArray::try_from(Map::PerCpuArray(
        MapData::from_pin(pin_dir.join("dp_ev_limit")).expect("dp_ev_limit pinned"),
    ))
    .expect("a per-CPU array");
    limits
        .get(&slot, 0)
        .expect("a bucket")
        .iter()
        .map(|l| l.suppressed)
        .sum()
}

/// Runs `f` and returns what it returns with the whole seconds it took: what a rate of 1/s
/// may have refilled meanwhile (0 unless the machine stalled the test for a second).
fn timed<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let start = Instant::now();
    let out = f();
    (
        out,
        usize::try_from(start.elapsed().as_secs()).unwrap_or(usize::MAX),
    )
}

/// `EbpfConfig::events` is what the programs apply, per kind: a burst of B then nothing, at a
/// rate (1/s) that refills nothing within the test (the bound allows for a stalled second);
/// every event over the limit counted in its bucket and carried by the next one written. A
/// change on the running dataplane applies from the next event and outlives a sync; a limit
/// the programs cannot apply is refused, naming its field.
#[test]
#[allow(clippy::too_many_lines)] // one dataplane, its limits changed step by step
fn configured_limits_apply_and_change_live() {
    if !require_root("configured_limits_apply_and_change_live") {
        return;
    }
    pin_to_one_cpu();
    let n = node("evlim");
    let mut config = n.config();
    config.events = EventLimits {
        drops: EventLimit::per_second(1, 10),
        new_connections: EventLimit::per_second(1, 3),
        policy_verdicts: EventLimit::UNLIMITED,
    };
    let mut dp = EbpfDataplane::new(config).expect("load");
    dp.apply(&scene()).expect("apply");
    let mut events = dp
        .events(&EventOptions {
            new_connections: true,
            policy_verdicts: false,
        })
        .expect("events");
    let pin_dir = n.pin_dir.clone();
    let source_range_slot = EV_KIND_MAX + u32::from(DropReason::SourceRange.code());
    let no_backend_slot = EV_KIND_MAX + u32::from(DropReason::NoBackend.code());
    let outsider = eth()
        .ip("203.0.113.9", "198.51.100.1")
        .tcp(41000, 80, TCP_SYN)
        .build();
    let of_reason = |events: &[FlowEvent], reason| {
        events
            .iter()
            .filter(|e| e.kind == EventKind::Drop && e.reason == Some(reason))
            .cloned()
            .collect::<Vec<_>>()
    };

    // Drops: 30 with a burst of 10.
    let (verdict, slack) = timed(|| run_on(&mut dp, Hook::FromUplink, &outsider, "eth0", 30));
    assert_eq!(verdict, SHOT);
    let first = of_reason(&read_all(events.as_mut()), DropReason::SourceRange);
    assert!(
        (10..=10 + slack).contains(&first.len()),
        "{} events of 30 drops with a burst of 10 ({slack} s)",
        first.len()
    );
    let held_back = 30 - first.len() as u64;
    assert_eq!(suppressed_in(&pin_dir, source_range_slot), held_back);

    // New connections: 8 with a burst of 3.
    let to_c = |sport| {
        eth()
            .ip("10.244.0.6", "10.96.0.11")
            .tcp(sport, 80, TCP_SYN)
            .build()
    };
    let ((), slack) = timed(|| {
        for port in 44000..44008 {
            dp.run_packet(Hook::FromPod, &to_c(port), 1).expect("run");
        }
    });
    let new: Vec<FlowEvent> = read_all(events.as_mut())
        .into_iter()
        .filter(|e| e.kind == EventKind::NewConnection)
        .collect();
    assert!(
        (3..=3 + slack).contains(&new.len()),
        "{} events of 8 new connections with a burst of 3 ({slack} s)",
        new.len()
    );
    assert_eq!(
        suppressed_in(&pin_dir, EV_KIND_NEW_CONN.into()),
        8 - new.len() as u64
    );

    // Live: drops unlimited. Every drop is written; the first carries those held back.
    dp.set_event_limits(EventLimits {
        drops: EventLimit::UNLIMITED,
        ..dp.config().events
    })
    .expect("new limits");
    assert_eq!(
        run_on(&mut dp, Hook::FromUplink, &outsider, "eth0", 20),
        SHOT
    );
    let all = of_reason(&read_all(events.as_mut()), DropReason::SourceRange);
    assert_eq!(all.len(), 20, "no limit");
    assert_eq!(all[0].suppressed, held_back);
    assert!(all[1..].iter().all(|e| e.suppressed == 0));
    assert_eq!(suppressed_in(&pin_dir, source_range_slot), 0);
    // ... and a sync keeps the new limits.
    dp.apply(&scene()).expect("apply");
    assert_eq!(
        run_on(&mut dp, Hook::FromUplink, &outsider, "eth0", 20),
        SHOT
    );
    assert_eq!(
        of_reason(&read_all(events.as_mut()), DropReason::SourceRange).len(),
        20,
        "still no limit after a sync"
    );

    // Live: a burst of 25, in a bucket not used yet (rejects: no backend).
    dp.set_event_limits(EventLimits {
        drops: EventLimit::per_second(1, 25),
        ..dp.config().events
    })
    .expect("new limits");
    let empty_syn = eth()
        .ip("10.244.0.5", "10.96.0.15")
        .tcp(40000, 80, TCP_SYN)
        .build();
    let ((), slack) = timed(|| {
        // One run each: a reject rewrites the packet it answers.
        for _ in 0..40 {
            dp.run_packet(Hook::FromPod, &empty_syn, 1).expect("run");
        }
    });
    let rejected = of_reason(&read_all(events.as_mut()), DropReason::NoBackend);
    assert!(
        (25..=25 + slack).contains(&rejected.len()),
        "{} events of 40 rejects with a burst of 25 ({slack} s)",
        rejected.len()
    );
    assert_eq!(
        suppressed_in(&pin_dir, no_backend_slot),
        40 - rejected.len() as u64
    );
    let stats = dp.stats().expect("stats");
    assert_eq!(
        stats.drops[&DropReason::SourceRange],
        70,
        "every drop counted"
    );
    assert_eq!(stats.drops[&DropReason::NoBackend], 40);
    assert_eq!(events.lost(), 0);

    // A limit the programs cannot apply: refused, naming the field; nothing changes.
    let err = dp
        .set_event_limits(EventLimits {
            new_connections: EventLimit::per_second(5, 0),
            ..dp.config().events
        })
        .expect_err("a rate without a burst");
    let chain = dataplane_core::error_chain(&dataplane_core::Error::from(err));
    assert!(chain.contains("events.new_connections"), "{chain}");
    assert_eq!(dp.config().events.drops, EventLimit::per_second(1, 25));
    let mut bad = n.config();
    bad.pin_dir = n.pin_dir.with_extension("bad");
    bad.events.drops = EventLimit::per_second(0, 10);
    let err = EbpfDataplane::new(bad.clone()).expect_err("refused");
    let chain = dataplane_core::error_chain(&dataplane_core::Error::from(err));
    assert!(chain.contains("events.drops"), "{chain}");
    assert!(!bad.pin_dir.join("dp_svc").exists(), "nothing pinned");
}

/// A policy verdict on a packet without ports (GRE from an egress-isolated pod, which
/// translation leaves alone) is reported like one on TCP or UDP.
#[test]
fn a_policy_verdict_without_ports() {
    if !require_root("a_policy_verdict_without_ports") {
        return;
    }
    let n = node("evicmp");
    let mut dp = n.dataplane();
    let mut st = scene();
    st.policies = vec![policy(serde_json::json!({
        "namespace": "x", "name": "b-out",
        "podSelector": {"matchLabels": {"pod": "b"}},
        "policyTypes": ["Egress"],
        "egress": [{"peers": [{"ipBlock": {"cidr": "192.0.2.0/24"}}]}],
    }))];
    dp.apply(&st).expect("apply");
    let mut events = dp
        .events(&EventOptions {
            new_connections: false,
            policy_verdicts: true,
        })
        .expect("events");
    // A UDP datagram made GRE: IPv4 protocol 47 (no program checks the header checksum).
    let mut gre = eth()
        .ip("10.244.0.6", "192.0.2.9")
        .udp(1, 2)
        .payload(b"gre payload")
        .build();
    gre[14 + 9] = 47;
    dp.run_packet(Hook::FromPod, &gre, 1).expect("run");
    let e = only(
        events.as_mut(),
        EventKind::PolicyVerdict,
        EventVerdict::Forwarded,
        None,
    );
    assert_eq!(e.protocol, L4Protocol::Other(47));
    assert_eq!(e.source_endpoint, x("b"));
    assert_eq!(e.point, Some(ObservationPoint::FromPod));
}

/// The XDP fast path creates the connections it sends on itself (TC sees only their later,
/// established packets): it reports them, at the `xdp` observation point.
#[test]
fn xdp_reports_its_new_connections() {
    if !require_root("xdp_reports_its_new_connections") {
        return;
    }
    let n = TestNode::new("evxdp");
    n.route_via_neighbour(
        "02:00:00:00:00:02",
        "10.244.1.0/24",
        "172.18.0.3",
        "02:00:00:00:00:03",
    );
    let mut config = n.config();
    config.xdp = XdpMode::Native;
    let mut dp = EbpfDataplane::new(config).expect("loads with XDP");
    let mut st = DesiredState::new(common::node_a());
    let mut np = svc("np", "10.96.0.31", &["10.244.1.20"]);
    np.ports = vec![ServicePort {
        node_port: Some(30080),
        ..ServicePort::new(Protocol::Tcp, 80, 8080)
    }];
    st.services = vec![np];
    dp.apply(&st).expect("apply");
    let mut events = dp
        .events(&EventOptions {
            new_connections: true,
            policy_verdicts: false,
        })
        .expect("events");
    let syn = eth()
        .ip("192.0.2.7", "172.18.0.2")
        .tcp(45010, 30080, TCP_SYN)
        .build();
    let run = dp.run_packet(Hook::Xdp, &syn, 1).expect("run");
    assert_eq!(run.verdict, 3, "XDP_TX: forwarded by the fast path");
    let e = the_new_connection(events.as_mut());
    assert_eq!(e.point, Some(ObservationPoint::Xdp));
    assert_eq!(e.interface.as_deref(), Some("eth0"));
    assert_eq!(e.service, x("np"));
    assert_eq!(e.backend, Some(addr("10.244.1.20:8080")));
    assert_eq!(
        e.original,
        Tuple::new(addr("192.0.2.7:45010"), addr("172.18.0.2:30080"))
    );
    let t = e.translated.expect("translated");
    assert_eq!(t.destination, addr("10.244.1.20:8080"));
    assert_eq!(t.source.ip(), addr("172.18.0.2:0").ip(), "SNAT to the node");
    // The flow's next packet is established: no event, at XDP or TC.
    let ack = eth()
        .ip("192.0.2.7", "172.18.0.2")
        .tcp(45010, 30080, common::TCP_ACK)
        .build();
    dp.run_packet(Hook::Xdp, &ack, 1).expect("run");
    assert!(read_all(events.as_mut()).is_empty());
}

/// A reader too slow for the programs loses events, counted; the packets are not affected.
#[test]
fn a_full_ring_counts_lost_events() {
    if !require_root("a_full_ring_counts_lost_events") {
        return;
    }
    pin_to_one_cpu();
    let n = node("evlost");
    let mut config = n.config();
    config.capacities.events_ring_bytes = 4096; // one page: 34 records of 120 bytes
    let mut dp = EbpfDataplane::new(config).expect("load");
    dp.apply(&scene()).expect("apply");
    let mut events = dp.events(&EventOptions::default()).expect("events");
    let outsider = eth()
        .ip("203.0.113.9", "198.51.100.1")
        .tcp(41000, 80, TCP_SYN)
        .build();
    let drops: u32 = 200; // within the bucket: none suppressed
    assert_eq!(
        run_on(&mut dp, Hook::FromUplink, &outsider, "eth0", drops),
        SHOT
    );
    let written = read_all(events.as_mut());
    assert!(!written.is_empty());
    assert!(events.lost() > 0, "the ring was full");
    assert_eq!(written.len() as u64 + events.lost(), u64::from(drops));
    assert_eq!(
        dp.stats().expect("stats").drops[&DropReason::SourceRange],
        u64::from(drops),
        "every drop counted, written or not"
    );
}

#[test]
fn a_ring_size_that_is_no_power_of_two_pages_is_refused() {
    if !require_root("a_ring_size_that_is_no_power_of_two_pages_is_refused") {
        return;
    }
    let n = TestNode::new("evring");
    let mut config = n.config();
    config.capacities.events_ring_bytes = 3 * 4096;
    let err = EbpfDataplane::new(config).expect_err("refused");
    let chain = dataplane_core::error_chain(&dataplane_core::Error::from(err));
    assert!(chain.contains("events_ring_bytes"), "{chain}");
    assert!(!n.pin_dir.join("dp_svc").exists(), "nothing pinned");
}

/// `dp_names` is written in batches: with more names than `Capacities::names` holds, the
/// batch that meets the full map goes element by element, so the names that fit are written
/// (each the right one) and the others are counted in a warning, as before the batches.
#[test]
fn names_beyond_the_capacity_are_left_out_with_a_warning() {
    if !require_root("names_beyond_the_capacity_are_left_out_with_a_warning") {
        return;
    }
    let n = node("nmf");
    let mut config = n.config();
    config.capacities.names = 4;
    let mut dp = EbpfDataplane::new(config).expect("load");
    // 3 service ports, 3 pod addresses and the node: 7 names for 4 entries.
    let report = dp.apply(&scene()).expect("apply");
    let warning = report
        .warnings
        .iter()
        .find(|w| w.field == "dp_names")
        .expect("a dp_names warning");
    assert!(
        warning.message.starts_with("3 names "),
        "{}",
        warning.message
    );
    let names = pinned_names(&n);
    let held: Vec<(NameKey, NameValue)> = names.iter().map(|e| e.expect("read")).collect();
    assert_eq!(held.len(), 4, "the map is full");
    let pods = [
        ("10.244.0.5", ObjectName::new("x", "a")),
        ("10.244.0.6", ObjectName::new("x", "b")),
        ("10.244.1.7", ObjectName::new("y", "c")),
    ];
    let services = [x("empty"), x("lb"), x("to-c")];
    for (key, value) in &held {
        if *key == NameKey::node() {
            assert_eq!(value.as_str(), Some("node-a"));
        } else if let Some((_, pod)) = pods
            .iter()
            .find(|(ip, _)| *key == NameKey::endpoint(ip.parse().unwrap()))
        {
            assert_eq!(value.object_name().as_ref(), Some(pod));
        } else {
            assert!(
                services.contains(&value.object_name()),
                "{:?}",
                value.as_str()
            );
        }
    }
    dp.reset().expect("reset");
}
