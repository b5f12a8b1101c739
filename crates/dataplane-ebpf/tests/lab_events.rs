//! Flow events with real traffic in the testkit lab, read through `Dataplane::events()`.
//!
//! ```text
//!   node-0: pod-0-0 (client), pod-0-1        node-1: pod-1-0, pod-1-1 (ingress: nothing)
//!   default/web      ClusterIP 10.96.0.10:80 -> pod-1-0          a new connection
//!   default/empty    ClusterIP 10.96.0.11:80, no backends         rejected, no-backend
//!   default/guarded  LB IP 198.51.100.1:80, sources 192.0.2.0/24  dropped, source-range
//!   pod-0-0 -> pod-1-1                                            denied by policy on node-1
//! ```
//!
//! Each probe must produce exactly its event (its kind, verdict, reason, point, service and
//! the pods on each side) on the node that decided. The probes that get no answer wait less
//! than TCP's first SYN retransmission (1 s), so one SYN is sent.

mod common;
mod events_common;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{answered, PinDirs};
use dataplane_core::{
    Backend, Dataplane, DesiredState, DropReason, EventKind, EventOptions, EventVerdict, FlowEvent,
    Namespace, ObjectName, ObservationPoint, PeerPod, Policy, Protocol, Service, ServicePort,
};
use dataplane_ebpf::{EbpfConfig, EbpfDataplane};
use dataplane_testkit::{probe, require_root, Family, Lab, LabSpec, ProbeOutcome, SERVER_PORT};
use events_common::the_one;

/// Shorter than TCP's first retransmission timeout: one SYN per refused or dropped probe.
const SHORT: Duration = Duration::from_millis(700);
const ANSWER: Duration = Duration::from_secs(5);

fn pin_dir(node: usize) -> PathBuf {
    PathBuf::from(format!(
        "/sys/fs/bpf/dpe-evlab-{}-n{node}",
        std::process::id()
    ))
}

/// `default/<name>`, as an event names a pod or service.
#[allow(clippy::unnecessary_wraps)] // compared with the events' Option fields
fn pod_name(name: &str) -> Option<ObjectName> {
    Some(ObjectName::new("default", name))
}

fn state(lab: &Lab, node: usize) -> DesiredState {
    let mut st = lab.desired_state(node);
    st.namespaces = vec![Namespace::new("default")];
    st.pods = lab
        .pods()
        .iter()
        .filter(|p| p.node != node)
        .map(|p| {
            let mut pod = PeerPod::new(ObjectName::new("default", &p.name), p.addresses.clone())
                .with_label("app", &p.name);
            pod.node_name = Some(lab.node(p.node).name.as_str().into());
            pod
        })
        .collect();
    let target = lab.pod_by_name("pod-1-0").expect("pod-1-0");
    let mut b = Backend::new(target.address(Family::V4).unwrap());
    b.node_name = Some(lab.node(target.node).name.as_str().into());
    let service = |name: &str, ip: &str, backends: Vec<Backend>| {
        let mut s = Service::new(ObjectName::new("default", name));
        s.cluster_ips = vec![ip.parse().unwrap()];
        s.ports = vec![ServicePort::new(Protocol::Tcp, 80, SERVER_PORT)];
        s.backends = backends;
        s
    };
    let mut guarded = service("guarded", "10.96.0.12", vec![b.clone()]);
    guarded.load_balancer_ips = vec!["198.51.100.1".parse().unwrap()];
    guarded.load_balancer_source_ranges = vec!["192.0.2.0/24".parse().unwrap()];
    st.services = vec![
        service("web", "10.96.0.10", vec![b]),
        service("empty", "10.96.0.11", Vec::new()),
        guarded,
    ];
    st.policies = vec![serde_json::from_value::<Policy>(serde_json::json!({
        "namespace": "default", "name": "closed",
        "podSelector": {"matchLabels": {"app": "pod-1-1"}},
        "policyTypes": ["Ingress"],
    }))
    .expect("policy")];
    st
}

/// Reads `events` until one matches `want` (or 20 s pass: a failure), then goes on reading
/// for a moment and returns every match (the caller checks there is exactly one).
fn matching(
    events: &mut dyn dataplane_core::EventSource,
    want: impl Fn(&FlowEvent) -> bool,
) -> Vec<FlowEvent> {
    let mut found = Vec::new();
    let mut buf = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut settle: Option<Instant> = None;
    loop {
        buf.clear();
        events.read(&mut buf, 1024).expect("read");
        found.extend(buf.drain(..).filter(|e| want(e)));
        if !found.is_empty() && settle.is_none() {
            settle = Some(Instant::now() + Duration::from_millis(500));
        }
        let now = Instant::now();
        if settle.is_some_and(|s| now >= s) || now >= deadline {
            return found;
        }
        events.wait(Duration::from_millis(50)).expect("wait");
    }
}

#[test]
#[allow(clippy::too_many_lines)] // one scene, read top to bottom
fn probes_produce_their_events() {
    if !require_root("probes_produce_their_events") {
        return;
    }
    let lab = Lab::new(LabSpec {
        nodes: 2,
        pods_per_node: 2,
        external_clients: 0,
        ipv6: false,
    })
    .expect("lab");
    let _pins = PinDirs((0..2).map(pin_dir).collect());
    let mut dps: Vec<EbpfDataplane> = (0..2)
        .map(|i| {
            let _ = std::fs::remove_dir_all(pin_dir(i));
            let mut c = EbpfConfig::new(pin_dir(i));
            c.netns = Some(lab.node(i).netns.path().to_owned());
            let mut dp = EbpfDataplane::new(c).expect("load");
            dp.apply(&state(&lab, i)).expect("apply");
            dp
        })
        .collect();
    let opts = EventOptions {
        new_connections: true,
        policy_verdicts: false,
    };
    let mut ev0 = dps[0].events(&opts).expect("events of node-0");
    let mut ev1 = dps[1].events(&opts).expect("events of node-1");
    let pod = |name: &str| lab.pod_by_name(name).expect("pod");
    let ip = |name: &str| pod(name).address(Family::V4).unwrap();
    let client = pod("pod-0-0");
    let to = |ip: IpAddr, port: u16| SocketAddr::new(ip, port);

    // No backend: refused, reported by node-0 where the client's packet entered.
    let empty = to("10.96.0.11".parse().unwrap(), 80);
    let out = probe(&client.netns, empty, Protocol::Tcp, SHORT).expect("probe");
    assert_eq!(out, ProbeOutcome::Refused);
    let got = matching(ev0.as_mut(), |e| e.original.destination == empty);
    let e = the_one(
        &got,
        EventKind::Drop,
        EventVerdict::Rejected,
        Some(DropReason::NoBackend),
    );
    assert_eq!(e.point, Some(ObservationPoint::FromPod));
    assert_eq!(e.service, pod_name("empty"));
    assert_eq!(e.source_endpoint, pod_name("pod-0-0"));
    assert_eq!(e.original.source.ip(), ip("pod-0-0"));
    assert_eq!(e.node, lab.node(0).name);
    assert_eq!(e.interface.as_deref(), Some(client.host_interface.as_str()));
    println!("{e}");

    // Outside the LB IP's source ranges: dropped.
    let lb = to("198.51.100.1".parse().unwrap(), 80);
    let out = probe(&client.netns, lb, Protocol::Tcp, SHORT).expect("probe");
    assert_eq!(out, ProbeOutcome::Timeout);
    let got = matching(ev0.as_mut(), |e| e.original.destination == lb);
    let e = the_one(
        &got,
        EventKind::Drop,
        EventVerdict::Dropped,
        Some(DropReason::SourceRange),
    );
    assert_eq!(e.service, pod_name("guarded"));
    assert_eq!(e.source_endpoint, pod_name("pod-0-0"));
    println!("{e}");

    // Denied by pod-1-1's policy, at node-1.
    let closed = to(ip("pod-1-1"), SERVER_PORT);
    let out = probe(&client.netns, closed, Protocol::Tcp, SHORT).expect("probe");
    assert_eq!(out, ProbeOutcome::Timeout);
    let got = matching(ev1.as_mut(), |e| e.original.destination == closed);
    let e = the_one(
        &got,
        EventKind::Drop,
        EventVerdict::PolicyDenied,
        Some(DropReason::Policy),
    );
    assert_eq!(e.point, Some(ObservationPoint::ToPod));
    assert_eq!(e.source_endpoint, pod_name("pod-0-0"));
    assert_eq!(e.destination_endpoint, pod_name("pod-1-1"));
    assert_eq!(e.node, lab.node(1).name);
    println!("{e}");

    // A normal connection through the ClusterIP: a new connection, translated to pod-1-0.
    let web = to("10.96.0.10".parse().unwrap(), 80);
    let (who, _) = answered(&probe(&client.netns, web, Protocol::Tcp, ANSWER).expect("probe"));
    assert_eq!(who, "pod-1-0");
    let got = matching(ev0.as_mut(), |e| {
        e.original.destination == web && e.kind == EventKind::NewConnection
    });
    let e = the_one(
        &got,
        EventKind::NewConnection,
        EventVerdict::Translated,
        None,
    );
    assert_eq!(e.service, pod_name("web"));
    let backend = to(ip("pod-1-0"), SERVER_PORT);
    assert_eq!(e.backend, Some(backend));
    let t = e.translated.expect("the translated tuple");
    assert_eq!((t.source, t.destination), (e.original.source, backend));
    assert_eq!(e.source_endpoint, pod_name("pod-0-0"));
    assert_eq!(e.destination_endpoint, pod_name("pod-1-0"));
    println!("{e}");

    // The counters agree.
    let s0 = dps[0].stats().expect("stats");
    assert_eq!(s0.drops.get(&DropReason::NoBackend), Some(&1));
    assert_eq!(s0.drops.get(&DropReason::SourceRange), Some(&1));
    let s1 = dps[1].stats().expect("stats");
    assert_eq!(s1.drops.get(&DropReason::Policy), Some(&1));
    assert_eq!((ev0.lost(), ev1.lost()), (0, 0));
    drop((ev0, ev1));
    for dp in &mut dps {
        dp.reset().expect("reset");
    }
}
