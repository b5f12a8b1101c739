//! `LiveEbpf`: a read-only view of what a running `EbpfDataplane` pinned, opened by another
//! handle on the same pin directory while the owner keeps it (as `dpctl status` beside the
//! agent).
//!
//! ```text
//!   node-0: pod-0-0 (client), pod-0-1 (isolated for egress)    node-1: pod-1-0, pod-1-1
//!   web   10.96.0.10:80/TCP, NodePort 30080   -> pod-1-0, pod-1-1
//!   api   10.96.0.11:81/TCP, 10.96.0.11:53/UDP -> pod-0-1, pod-1-0 (other target ports)
//!   empty 10.96.0.12:80/TCP                    -> (none)
//! ```
//! Every expected count and fill level is derived from the applied state; the inspection
//! must leave every pinned map and link exactly as it found them.

mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::pins::{quiet_snapshot, snapshot};
use common::PinDirs;
use dataplane_core::policy_tables::compile;
use dataplane_core::{
    Backend, Dataplane, DesiredState, DropReason, EventOptions, Inspect, Namespace, ObjectName,
    PeerPod, Policy, Protocol, Service, ServicePort,
};
use dataplane_ebpf::{EbpfConfig, EbpfDataplane, EbpfError, LiveEbpf, XdpMode};
use dataplane_testkit::{
    probe, require_root, Family, Lab, LabSpec, ProbeOutcome, TcpSession, SERVER_PORT,
};

fn pin_dir(node: usize) -> PathBuf {
    PathBuf::from(format!(
        "/sys/fs/bpf/dpe-live-{}-n{node}",
        std::process::id()
    ))
}

fn service(lab: &Lab, name: &str, vip: &str, ports: Vec<ServicePort>, pods: &[&str]) -> Service {
    let mut svc = Service::new(ObjectName::new("default", name));
    svc.cluster_ips = vec![vip.parse().unwrap()];
    svc.ports = ports;
    svc.backends = pods
        .iter()
        .map(|p| {
            let pod = lab.pod_by_name(p).expect("pod");
            let mut b = Backend::new(pod.address(Family::V4).unwrap());
            b.node_name = Some(lab.node(pod.node).name.as_str().into());
            b
        })
        .collect();
    svc
}

fn port(name: &str, protocol: Protocol, port: u16, target: u16) -> ServicePort {
    ServicePort {
        name: name.to_owned(),
        ..ServicePort::new(protocol, port, target)
    }
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
    let mut web_port = port("http", Protocol::Tcp, 80, SERVER_PORT);
    web_port.node_port = Some(30080);
    st.services = vec![
        service(
            lab,
            "web",
            "10.96.0.10",
            vec![web_port],
            &["pod-1-0", "pod-1-1"],
        ),
        service(
            lab,
            "api",
            "10.96.0.11",
            vec![
                port("grpc", Protocol::Tcp, 81, 8081),
                port("dns", Protocol::Udp, 53, 8053),
            ],
            &["pod-0-1", "pod-1-0"],
        ),
        service(
            lab,
            "empty",
            "10.96.0.12",
            vec![port("http", Protocol::Tcp, 80, SERVER_PORT)],
            &[],
        ),
    ];
    let policy: Policy = serde_json::from_value(serde_json::json!({
        "namespace": "default", "name": "no-egress",
        "podSelector": {"matchLabels": {"app": "pod-0-1"}}, "policyTypes": ["Egress"],
    }))
    .expect("policy JSON");
    st.policies = vec![policy];
    st
}

/// An empty cgroup v2 directory (no process in it: the socket hooks attached there
/// translate nothing), removed on drop.
struct EmptyCgroup(PathBuf);

impl EmptyCgroup {
    fn new() -> Self {
        let root = dataplane_testkit::cgroup::cgroup2_root().expect("cgroup v2");
        let dir = root.join(format!("dpe-live-{}", std::process::id()));
        let _ = std::fs::remove_dir(&dir);
        std::fs::create_dir(&dir).expect("create the cgroup");
        Self(dir)
    }
}

impl Drop for EmptyCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Small maps: the raw dumps below read every element of the arrays. Node 0 has every kind
/// of attachment: TC, XDP (generic) on the uplink, the socket hooks on `cgroup`.
fn config(lab: &Lab, node: usize, cgroup: &Path) -> EbpfConfig {
    let mut c = EbpfConfig::new(pin_dir(node));
    c.netns = Some(lab.node(node).netns.path().to_owned());
    if node == 0 {
        c.xdp = XdpMode::Generic;
        c.socket_lb_cgroup = Some(cgroup.to_owned());
    }
    common::pins::small_capacities(&mut c.capacities);
    c
}

/// What `state` programs, counted from the state as the planner lays it out (one entry per
/// ClusterIP and port, two per external frontend, one wildcard per ClusterIP; a backend id
/// per address and target port; one slot range per distinct backend list).
struct Expected {
    frontends: u64,
    svc_entries: u64,
    backends_per_service: u64,
    backend_ids: u64,
    slots: u64,
}

fn expected(st: &DesiredState) -> Expected {
    let mut frontends = 0;
    let mut svc_entries = 0;
    let mut backends_per_service = 0;
    let mut ids = BTreeSet::new();
    let mut ranges: BTreeSet<Vec<SocketAddr>> = BTreeSet::new();
    for s in &st.services {
        let mut of_service = BTreeSet::new();
        for p in &s.ports {
            let external = s.external_ips.len()
                + s.load_balancer_ips.len()
                + p.node_port.map_or(0, |_| st.node.addresses.len());
            frontends += s.cluster_ips.len() + external;
            svc_entries += s.cluster_ips.len() + 2 * external;
            let list: Vec<SocketAddr> = s
                .backends
                .iter()
                .map(|b| SocketAddr::new(b.ip, p.target_port))
                .collect();
            of_service.extend(list.iter().copied());
            ids.extend(list.iter().copied());
            if !list.is_empty() {
                ranges.insert(list);
            }
        }
        if !s.ports.is_empty() {
            svc_entries += s.cluster_ips.len();
        }
        backends_per_service += of_service.len();
    }
    Expected {
        frontends: frontends as u64,
        svc_entries: svc_entries as u64,
        backends_per_service: backends_per_service as u64,
        backend_ids: ids.len() as u64,
        slots: ranges.iter().map(|r| r.len() as u64).sum(),
    }
}

#[test]
#[allow(clippy::too_many_lines)] // one scene, read top to bottom
fn inspects_a_running_dataplane_and_changes_nothing() {
    if !require_root("inspects_a_running_dataplane_and_changes_nothing") {
        return;
    }
    let lab = Lab::new(LabSpec {
        nodes: 2,
        pods_per_node: 2,
        external_clients: 0,
        ipv6: false,
    })
    .expect("lab");
    let cgroup = EmptyCgroup::new();
    let _pins = PinDirs((0..2).map(pin_dir).collect());
    let desired: Vec<DesiredState> = (0..2).map(|i| state(&lab, i)).collect();
    let mut dps: Vec<EbpfDataplane> = (0..2)
        .map(|i| {
            let _ = std::fs::remove_dir_all(pin_dir(i));
            let mut dp = EbpfDataplane::new(config(&lab, i, &cgroup.0)).expect("load");
            dp.apply(&desired[i]).expect("apply");
            dp
        })
        .collect();
    let st = &desired[0];
    let client = lab.pod_by_name("pod-0-0").expect("pod-0-0");
    let vip = SocketAddr::new("10.96.0.10".parse().unwrap(), 80);
    let mut session = TcpSession::open(&client.netns, vip).expect("connect to web");
    session.request().expect("web answers");

    let live = LiveEbpf::open(&pin_dir(0), Some(lab.node(0).netns.path())).expect("open");
    // An event reader opened before the drop it must see: a SYN to the service without
    // backends, answered with a RST by node 0 (counted in dp_drops as no-backend).
    let mut reader = live
        .events(&EventOptions::default())
        .expect("the owner's ring buffer opens");
    let empty = SocketAddr::new("10.96.0.12".parse().unwrap(), 80);
    let refused = probe(&client.netns, empty, Protocol::Tcp, Duration::from_secs(2))
        .expect("probe the empty service");
    assert_eq!(refused, ProbeOutcome::Refused, "no backend: rejected");
    let before = quiet_snapshot(&pin_dir(0));

    // Services: what the owner observes, with kinds and names.
    let services = live.services().expect("services");
    let observed = dps[0].observe().expect("observe");
    assert_eq!(
        services
            .iter()
            .map(|f| (f.address, f.protocol, f.backends.clone()))
            .collect::<Vec<_>>(),
        observed
            .frontends
            .iter()
            .map(|f| (
                f.address,
                f.protocol,
                f.backends.iter().copied().collect::<Vec<_>>()
            ))
            .collect::<Vec<_>>(),
        "services() is what the owner's observe() reads"
    );
    let node_ip = st.node.addresses[0];
    for f in &services {
        let want = if f.address.ip() == node_ip {
            "NodePort"
        } else {
            "ClusterIP"
        };
        assert_eq!(f.kind.as_deref(), Some(want), "kind of {}", f.address);
        let owner = st
            .services
            .iter()
            .find(|s| {
                s.cluster_ips.contains(&f.address.ip())
                    || (f.address.ip() == node_ip
                        && s.ports
                            .iter()
                            .any(|p| p.node_port == Some(f.address.port())))
            })
            .map(|s| s.name.clone());
        assert!(owner.is_some(), "{} is one of the state's", f.address);
        assert_eq!(f.service, owner, "name of {}", f.address);
    }

    // Conntrack: the session through the ClusterIP, as the owner's flows() has it.
    let flows = live.conntrack().expect("conntrack");
    let client_ip: IpAddr = client.address(Family::V4).unwrap();
    assert!(
        flows
            .iter()
            .any(|f| f.frontend == vip && f.client.ip() == client_ip),
        "conntrack shows the session: {flows:?}"
    );
    assert_eq!(
        flows,
        dps[0].flows().expect("flows"),
        "conntrack() is the owner's flows(), names included"
    );
    assert!(flows
        .iter()
        .any(|f| f.service == Some(ObjectName::new("default", "web"))));

    // Status: counts and fill levels as programmed.
    let status = live.status().expect("status");
    let want = expected(st);
    assert_eq!(status.dataplane, "ebpf");
    assert_eq!(status.services, st.services.len() as u64, "services");
    assert_eq!(status.frontends, want.frontends, "frontends");
    assert_eq!(
        status.frontends,
        services.len() as u64,
        "one per listed frontend"
    );
    assert_eq!(status.backends, want.backends_per_service, "backends");
    assert_eq!(status.endpoints, st.endpoints.len() as u64, "endpoints");
    let compiled = compile(st);
    let isolated: usize = compiled
        .endpoints
        .values()
        .map(|t| usize::from(t.ingress.isolated) + usize::from(t.egress.isolated))
        .sum();
    assert!(isolated > 0, "the state isolates a local endpoint");
    assert_eq!(status.policies, isolated as u64, "policies");
    assert_eq!(
        status.conntrack_entries,
        dps[0].stats().expect("stats").flows,
        "conntrack entries"
    );
    let table = |name: &str| {
        status
            .tables
            .iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("table {name} in {:?}", status.tables))
            .clone()
    };
    let caps = &config(&lab, 0, &cgroup.0).capacities;
    let local_addresses: usize = st.endpoints.iter().map(|e| e.ips.len()).sum();
    for (name, entries, capacity) in [
        ("dp_svc", want.svc_entries, caps.services),
        ("dp_backends", want.backend_ids, caps.backends),
        ("dp_slots", want.slots, caps.backend_slots),
        ("dp_local", local_addresses as u64, caps.local),
    ] {
        let t = table(name);
        assert_eq!(
            (t.entries, t.capacity),
            (entries, u64::from(capacity)),
            "{name}: entries and capacity"
        );
    }
    for (name, capacity) in [
        ("dp_ct", caps.conntrack),
        ("dp_affinity", caps.affinity),
        ("dp_srcrange", caps.source_ranges),
        ("dp_pol_addr", caps.policy_addresses),
        ("dp_pol_rules", caps.policy_rules),
        ("dp_pol_blocks", caps.policy_blocks),
        ("dp_pol_ct", caps.policy_conntrack),
        ("dp_sock_rev", caps.socket_rev),
    ] {
        assert_eq!(
            table(name).capacity,
            u64::from(capacity),
            "{name}: capacity"
        );
    }
    // A connection has a forward and a reverse entry.
    assert!(table("dp_ct").entries >= 2 * status.conntrack_entries);
    assert!(table("dp_pol_addr").entries >= st.endpoints.len() as u64);
    let owner_stats = dps[0].stats().expect("stats");
    assert_eq!(status.stats.other, owner_stats.other, "counters");
    assert_eq!(status.stats.drops, owner_stats.drops, "drops by reason");
    assert!(
        status.stats.drops.get(&DropReason::NoBackend) >= Some(&1),
        "the refused probe is counted: {:?}",
        status.stats.drops
    );
    assert!(
        status.stats.packets_translated > 0,
        "the session was translated"
    );

    // Attachments: every hook the owner attached, on its interface.
    let mut hooks: Vec<(String, String, Option<String>)> = status
        .attachments
        .iter()
        .map(|a| (a.program.clone(), a.hook.clone(), a.target.clone()))
        .collect();
    hooks.sort();
    let cgroup_id = format!(
        "cgroup id {}",
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&cgroup.0).expect("cgroup"))
    );
    let mut wanted = vec![
        ("dp_xdp_uplink", "xdp", st.node.interfaces.uplink.clone()),
        ("dp_sock_connect4", "cgroup-connect4", cgroup_id.clone()),
        ("dp_sock_connect6", "cgroup-connect6", cgroup_id.clone()),
        (
            "dp_sock_getpeername4",
            "cgroup-getpeername4",
            cgroup_id.clone(),
        ),
        (
            "dp_sock_getpeername6",
            "cgroup-getpeername6",
            cgroup_id.clone(),
        ),
        ("dp_sock_recvmsg4", "cgroup-recvmsg4", cgroup_id.clone()),
        ("dp_sock_recvmsg6", "cgroup-recvmsg6", cgroup_id.clone()),
        (
            "dp_from_uplink",
            "tc-ingress",
            st.node.interfaces.uplink.clone(),
        ),
        (
            "dp_to_uplink",
            "tc-egress",
            st.node.interfaces.uplink.clone(),
        ),
        ("dp_to_lo", "tc-egress", "lo".to_owned()),
    ];
    for e in &st.endpoints {
        wanted.push(("dp_from_pod", "tc-ingress", e.interface.clone()));
        wanted.push(("dp_to_pod", "tc-egress", e.interface.clone()));
    }
    let mut wanted: Vec<(String, String, Option<String>)> = wanted
        .into_iter()
        .map(|(p, h, t)| (p.to_owned(), h.to_owned(), Some(t)))
        .collect();
    wanted.sort();
    assert_eq!(hooks, wanted, "attachments");

    // Events: the reader opened before the probe has its drop, named. (Reading moves the
    // ring buffer's consumer position, which no map dump shows: the snapshots below are
    // about everything else.)
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut events = Vec::new();
    while !events.iter().any(|e: &dataplane_core::FlowEvent| {
        e.reason == Some(DropReason::NoBackend) && e.original.destination == empty
    }) {
        assert!(Instant::now() < deadline, "no no-backend event: {events:?}");
        reader.wait(Duration::from_millis(200)).expect("wait");
        reader.read(&mut events, 1024).expect("read");
    }
    let event = events
        .iter()
        .find(|e| e.reason == Some(DropReason::NoBackend))
        .expect("the event");
    assert_eq!(
        event.service,
        Some(ObjectName::new("default", "empty")),
        "{event}"
    );
    assert_eq!(event.original.source.ip(), client_ip, "{event}");
    drop(reader);

    // Nothing changed: the maps, links and markers are as they were.
    assert!(
        before["dp_svc"].len() > 100 && before["dp_ct"].len() > 100,
        "the snapshot holds the maps' contents: {before:?}"
    );
    assert_eq!(
        before
            .iter()
            .filter(|(k, v)| k.starts_with("links/") && v.starts_with("Ok("))
            .count(),
        status.attachments.len(),
        "the snapshot holds every link: {before:?}"
    );
    drop(live);
    let after = snapshot(&pin_dir(0));
    assert_eq!(before, after, "the inspection changed nothing pinned");

    let (again, _) = session.request().expect("the session still works");
    assert!(again.starts_with("pod-1-"), "answered by a web backend");

    // A pod's veth deleted under the owner: its links stay pinned, attached to nothing,
    // and are no longer attachments.
    let gone = &lab.pod_by_name("pod-0-1").expect("pod-0-1").host_interface;
    lab.node(0)
        .netns
        .ip_batch(&[format!("link del {gone}")])
        .expect("delete the veth");
    let pins = std::fs::read_dir(pin_dir(0).join("links"))
        .expect("links")
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .ends_with(&format!("@{gone}"))
        })
        .count();
    assert_eq!(pins, 2, "the links of {gone} are still pinned");
    let live = LiveEbpf::open(&pin_dir(0), Some(lab.node(0).netns.path())).expect("open");
    let attached = live.status().expect("status").attachments;
    assert!(
        attached.iter().all(|a| a.target.as_ref() != Some(gone)),
        "{gone} is gone: {attached:?}"
    );
    assert_eq!(attached.len(), status.attachments.len() - 2, "{attached:?}");
    for dp in &mut dps {
        dp.reset().expect("reset");
    }
}

#[test]
fn nothing_programmed_is_a_typed_error() {
    let missing = PathBuf::from(format!("/tmp/dpe-live-{}-missing", std::process::id()));
    let empty = PathBuf::from(format!("/tmp/dpe-live-{}-empty", std::process::id()));
    std::fs::create_dir_all(&empty).expect("empty directory");
    let _dirs = PinDirs(vec![empty.clone()]);
    for dir in [&missing, &empty] {
        match LiveEbpf::open(dir, None) {
            Err(EbpfError::Pin { path, source }) => {
                assert_eq!(&path, dir);
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
                assert_eq!(
                    source.to_string(),
                    format!("nothing is programmed: no pinned maps in {}", dir.display())
                );
            }
            other => panic!("{}: expected the typed error, got {other:?}", dir.display()),
        }
    }
}

/// `count` ClusterIP services `svc-<i>` at `10.96.1.<i>:80`, each with the backends
/// `10.244.<generation>.<j>` (j < 3): every generation has its own backends.
fn churn_state(count: u8, generation: u8) -> DesiredState {
    let mut st = DesiredState::new(common::node_a());
    st.services = (1..=count)
        .map(|i| {
            let mut s = Service::new(ObjectName::new("default", format!("svc-{i}")));
            s.cluster_ips = vec![format!("10.96.1.{i}").parse().unwrap()];
            s.ports = vec![port("http", Protocol::Tcp, 80, SERVER_PORT)];
            s.backends = (1..=3)
                .map(|j| common::backend(&format!("10.244.{generation}.{j}"), "node-b"))
                .collect();
            s
        })
        .collect();
    st
}

/// The owner keeps writing (a service set and its backends replaced, services added and
/// removed) while an inspector reads: every read succeeds, and shows only frontends and
/// backends some applied state had; once the owner stops, what it shows is the last state.
#[test]
fn reads_beside_a_writer() {
    if !require_root("reads_beside_a_writer") {
        return;
    }
    let n = common::TestNode::new("live");
    let mut dp = n.dataplane();
    let generations: Vec<DesiredState> = (0..6u8)
        .map(|g| churn_state(10 + 5 * (g % 2), 10 + g))
        .collect();
    dp.apply(&generations[0]).expect("apply");
    let live = LiveEbpf::open(&n.pin_dir, Some(&n.netns_path())).expect("open");
    let known_frontends: BTreeSet<SocketAddr> = generations
        .iter()
        .flat_map(|st| &st.services)
        .map(|s| SocketAddr::new(s.cluster_ips[0], 80))
        .collect();
    let known_backends: BTreeSet<SocketAddr> = generations
        .iter()
        .flat_map(|st| &st.services)
        .flat_map(|s| &s.backends)
        .map(|b| SocketAddr::new(b.ip, SERVER_PORT))
        .collect();
    let done = std::sync::atomic::AtomicBool::new(false);
    let reads = std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            for round in 0..60 {
                let st = &generations[round % generations.len()];
                dp.apply(st).expect("apply while inspected");
            }
            done.store(true, std::sync::atomic::Ordering::Release);
        });
        let mut reads = 0;
        while !done.load(std::sync::atomic::Ordering::Acquire) || reads == 0 {
            let status = live.status().expect("status while the owner writes");
            assert!(status.services >= 10 && status.services <= 15 + 15);
            for f in live.services().expect("services while the owner writes") {
                assert!(known_frontends.contains(&f.address), "{f:?}");
                assert!(
                    f.backends.iter().all(|b| known_backends.contains(b)),
                    "{f:?}"
                );
            }
            reads += 1;
        }
        writer.join().expect("writer");
        reads
    });
    assert!(reads > 0);
    let last = dp.observe().expect("observe");
    let shown: Vec<_> = live
        .services()
        .expect("services")
        .into_iter()
        .map(|f| (f.address, f.protocol, f.backends))
        .collect();
    let observed: Vec<_> = last
        .frontends
        .iter()
        .map(|f| {
            (
                f.address,
                f.protocol,
                f.backends.iter().copied().collect::<Vec<_>>(),
            )
        })
        .collect();
    assert_eq!(shown, observed, "after the writes: the last state");
    dp.reset().expect("reset");
}
