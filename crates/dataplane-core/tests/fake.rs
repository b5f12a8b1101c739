//! `FakeDataplane`: the contract every dataplane keeps (validation first, full sync after a
//! failure, uniform report counts, capabilities refused or left out), its observe view, the
//! reference model on what it programmed, and the test hooks (faults, call counts).

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use dataplane_core::fake::{FakeCalls, FakeDataplane, Fault, FAKE};
use dataplane_core::{
    diff, Backend, BackendSelection, BoxDataplane, Capabilities, ChangeSet, Dataplane,
    DesiredState, Endpoint, Entry, Error, ExternalMode, LabelSelector, Namespace, Node, ObjectName,
    ObservedFrontend, PeerPod, Policy, PolicyPeer, PolicyPort, PolicyRule, PolicyType, Protocol,
    Service, ServicePort, SourceSeen, TrafficPolicy, ValidationError, Verdict,
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn name(n: &str) -> ObjectName {
    ObjectName::new("default", n)
}

fn node() -> Node {
    Node::new("node-a", [ip("172.18.0.10")])
        .with_pod_cidrs(["10.244.1.0/24".parse().unwrap()])
        .with_cluster_cidrs(["10.244.0.0/16".parse().unwrap()])
        .with_service_cidrs(["10.96.0.0/12".parse().unwrap()])
}

/// `web`: ClusterIP 10.96.0.20:80 and NodePort 30080 -> two backends, one on this node.
fn web() -> Service {
    Service::cluster_ip(
        name("web"),
        ip("10.96.0.20"),
        [ServicePort::tcp(80, 8080).with_node_port(30080)],
    )
    .with_backend(Backend::new(ip("10.244.1.5")).on_node("node-a"))
    .with_backend(Backend::new(ip("10.244.2.7")).on_node("node-b"))
}

fn dns() -> Service {
    Service::cluster_ip(name("dns"), ip("10.96.0.10"), [ServicePort::udp(53, 5353)])
        .with_backend(Backend::new(ip("10.244.2.9")).on_node("node-b"))
}

fn state(services: impl IntoIterator<Item = Service>) -> DesiredState {
    let mut s = DesiredState::new(node());
    s.services.extend(services);
    s
}

fn tcp(from: &str, to: &str) -> dataplane_core::Packet {
    dataplane_core::Packet {
        protocol: Protocol::Tcp,
        source: sa(from),
        destination: sa(to),
    }
}

#[test]
fn incremental_applies_need_a_full_sync_first() {
    let mut fake = FakeDataplane::new();
    let s = state([web()]);
    let changes = diff(&state([]), &s);
    assert!(matches!(
        fake.apply_changes(&changes),
        Err(Error::FullSyncRequired)
    ));
    assert_eq!(fake.applied(), None);
    assert!(fake.observe().unwrap().frontends.is_empty());
    let report = fake.apply(&s).unwrap();
    assert!(report.full_sync);
    assert_eq!(fake.applied(), Some(s));
    assert_eq!(
        fake.calls(),
        FakeCalls {
            applies: 1,
            apply_changes: 1,
            full_syncs: 1,
            full_sync_required: 1,
            ..FakeCalls::default()
        }
    );
}

#[test]
fn report_counts_compare_with_what_was_programmed_before() {
    let mut fake = FakeDataplane::new();
    let one = state([web(), dns()]);
    let r = fake.apply(&one).unwrap();
    assert_eq!(
        (r.services_changed, r.services_removed),
        (2, 0),
        "all on the first"
    );
    assert!(r.objects_written > 0);
    let r = fake.apply(&one).unwrap();
    assert_eq!(
        (r.services_changed, r.services_removed),
        (0, 0),
        "a no-op full sync"
    );
    assert_eq!(r.objects_written, 0);

    // One changed, one removed, one added: the same counts full and incremental.
    let mut web2 = web();
    web2.backends.pop();
    let extra = Service::cluster_ip(name("extra"), ip("10.96.0.30"), [ServicePort::tcp(1, 1)]);
    let two = state([web2, extra]);
    let incremental = fake.apply_changes(&diff(&one, &two)).unwrap();
    assert!(!incremental.full_sync);
    assert_eq!(
        (incremental.services_changed, incremental.services_removed),
        (2, 1)
    );
    fake.apply(&one).unwrap();
    let full = fake.apply(&two).unwrap();
    assert!(full.full_sync);
    assert_eq!((full.services_changed, full.services_removed), (2, 1));
    assert_eq!(fake.applied(), Some(two));
}

#[test]
fn a_full_sync_after_a_change_of_the_node_counts_no_service() {
    let mut fake = FakeDataplane::new();
    let one = state([web(), dns()]);
    fake.apply(&one).unwrap();
    // A new node address adds NodePort frontends to web, but no service object changed:
    // every dataplane counts objects (`dataplane_core::counts`).
    let mut two = one.clone();
    two.node.addresses.push(ip("172.18.0.11"));
    assert!(matches!(
        fake.apply_changes(&diff(&one, &two)),
        Err(Error::FullSyncRequired)
    ));
    assert_eq!(fake.applied(), Some(one.clone()), "nothing changed");
    let r = fake.sync(Some(&one), &two).unwrap();
    assert!(r.full_sync);
    assert_eq!((r.services_changed, r.services_removed), (0, 0));
    assert!(r.objects_written > 0, "web's new NodePort frontends: {r:?}");
    // Nor does an MTU change.
    let mut three = two.clone();
    three.node.mtu = 9000;
    let r = fake.sync(Some(&two), &three).unwrap();
    assert_eq!((r.full_sync, r.services_changed), (true, 0));
}

#[test]
fn an_injected_fault_changes_nothing_and_the_next_sync_is_full() {
    let fake = FakeDataplane::new();
    let mut dp: BoxDataplane = Box::new(fake.clone());
    let one = state([web()]);
    dp.sync(None, &one).unwrap();
    let before = dp.observe().unwrap();
    let two = state([web(), dns()]);

    fake.fail_next_apply(Fault::Kernel("netlink: no buffer space".to_owned()));
    let err = dp.sync(Some(&one), &two).unwrap_err();
    let Error::Kernel {
        dataplane, source, ..
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(dataplane, FAKE);
    assert_eq!(source.to_string(), "netlink: no buffer space");
    assert_eq!(fake.applied(), Some(one.clone()));
    assert_eq!(
        dp.observe().unwrap(),
        before,
        "the failed apply changed nothing"
    );

    // The caller keeps `previous` and syncs again: `sync` gets FullSyncRequired and applies
    // in full.
    let r = dp.sync(Some(&one), &two).unwrap();
    assert!(r.full_sync);
    assert_eq!((r.services_changed, r.services_removed), (1, 0));
    assert_eq!(fake.applied(), Some(two.clone()));
    let calls = fake.calls();
    assert_eq!(
        (
            calls.full_syncs,
            calls.incremental_syncs,
            calls.full_sync_required,
            calls.failures
        ),
        (2, 0, 1, 1),
        "{calls:?}"
    );

    // Back to incremental once a full sync succeeded.
    let r = dp.sync(Some(&two), &one).unwrap();
    assert!(!r.full_sync);
    assert_eq!((r.services_changed, r.services_removed), (0, 1));
}

#[test]
fn faults_are_queued_and_a_capacity_fault_is_typed() {
    let mut fake = FakeDataplane::new();
    let s = state([web()]);
    fake.fail_next_apply(Fault::CapacityExceeded {
        what: "dp_svc".to_owned(),
        needed: 10,
        capacity: 5,
    });
    fake.fail_next_apply(Fault::Kernel("busy".to_owned()));
    assert!(matches!(
        fake.apply(&s),
        Err(Error::CapacityExceeded {
            needed: 10,
            capacity: 5,
            ..
        })
    ));
    assert!(matches!(fake.apply(&s), Err(Error::Kernel { .. })));
    fake.apply(&s).unwrap();
    // A refused apply does not consume a fault: it is for an apply the kernel would see.
    fake.fail_next_apply(Fault::Kernel("later".to_owned()));
    let mut bad = s.clone();
    bad.services[0].ports[0].port = 0;
    assert!(matches!(fake.apply(&bad), Err(Error::Invalid(_))));
    assert!(matches!(fake.apply(&s), Err(Error::Kernel { .. })));
    assert_eq!(fake.calls().failures, 4);
}

#[test]
fn an_invalid_state_is_refused_naming_object_and_field() {
    let mut fake = FakeDataplane::new();
    let one = state([web()]);
    fake.apply(&one).unwrap();
    let mut bad = state([web(), dns()]);
    bad.services[1].cluster_ips = vec![ip("10.96.0.20")];
    bad.services[1].ports[0] = ServicePort::tcp(80, 80);
    let err = fake.apply_changes(&diff(&one, &bad)).unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Invalid(ValidationError::DuplicateFrontend { object, .. })
                if object == "service default/dns"
        ),
        "{err:?}"
    );
    assert_eq!(fake.applied(), Some(one.clone()));
    // After a failed apply the next incremental one is refused (the trait's contract).
    assert!(matches!(
        fake.apply_changes(&diff(&one, &state([web(), dns()]))),
        Err(Error::FullSyncRequired)
    ));
    let err = fake.apply(&bad).unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err:?}");
}

#[test]
fn a_change_set_that_is_not_a_diff_from_the_applied_state_asks_for_a_full_sync() {
    let mut fake = FakeDataplane::new();
    let one = state([web()]);
    fake.apply(&one).unwrap();
    // Computed from a state the fake never had.
    let stale = diff(&state([dns()]), &state([]));
    assert!(matches!(
        fake.apply_changes(&stale),
        Err(Error::FullSyncRequired)
    ));
    let mut other = web();
    other.backends.clear();
    let wrong_previous = diff(&state([other]), &state([]));
    assert!(matches!(
        fake.apply_changes(&wrong_previous),
        Err(Error::FullSyncRequired)
    ));
    assert_eq!(fake.applied(), Some(one.clone()));
    // An empty change set is a diff from anything.
    let r = fake.apply_changes(&ChangeSet::default()).unwrap();
    assert_eq!(
        (r.full_sync, r.services_changed, r.objects_written),
        (false, 0, 0)
    );
}

/// Pods for the policy tests: `web-0` (10.244.1.5, label `app=web`) is a local endpoint,
/// `client` (10.244.1.6, `app=client`) another local one, `remote` (10.244.2.7, `app=web`) a
/// pod of node-b; the policy `web-from-client` isolates `app=web` pods for ingress and allows
/// TCP from `app=client` only.
fn policy_state() -> DesiredState {
    let mut s = state([web()]);
    s.endpoints = vec![
        Endpoint::new(name("web-0"), "vp0", [ip("10.244.1.5")]).with_label("app", "web"),
        Endpoint::new(name("client"), "vp1", [ip("10.244.1.6")]).with_label("app", "client"),
    ];
    s.pods = vec![PeerPod::new(name("remote"), [ip("10.244.2.7")])
        .with_label("app", "web")
        .on_node("node-b")];
    s.namespaces = vec![Namespace::new("default").with_label("team", "a")];
    s.policies = vec![web_from(LabelSelector {
        match_labels: [("app".to_owned(), "client".to_owned())].into(),
        ..LabelSelector::default()
    })];
    s
}

/// `web-from-client` with `from` as the pod selector of its only peer.
fn web_from(from: LabelSelector) -> Policy {
    Policy {
        name: name("web-from-client"),
        pod_selector: LabelSelector {
            match_labels: [("app".to_owned(), "web".to_owned())].into(),
            ..LabelSelector::default()
        },
        policy_types: vec![PolicyType::Ingress],
        ingress: vec![PolicyRule {
            peers: vec![PolicyPeer {
                pod_selector: Some(from),
                ..PolicyPeer::default()
            }],
            ports: vec![PolicyPort {
                protocol: Protocol::Tcp,
                port: None,
                end_port: None,
            }],
        }],
        egress: Vec::new(),
    }
}

fn from_pod(n: &str) -> Entry {
    Entry::FromPod(name(n))
}

#[test]
fn network_policy_is_enforced_on_service_and_pod_traffic() {
    assert!(FakeDataplane::default_capabilities().network_policy);
    let fake = FakeDataplane::new();
    let mut dp: BoxDataplane = Box::new(fake.clone());
    let s = policy_state();
    dp.apply(&s).unwrap();

    // Through the ClusterIP: the client may reach both backends (both `app=web`, TCP).
    let v = fake.evaluate(
        &tcp("10.244.1.6:40000", "10.96.0.20:80"),
        &from_pod("client"),
    );
    let Verdict::Forward { backends, .. } = v else {
        panic!("{v:?}")
    };
    assert_eq!(
        backends,
        [sa("10.244.1.5:8080"), sa("10.244.2.7:8080")].into()
    );
    // From a pod the policy does not allow, or from the backend pod itself to the other
    // one: dropped, counted as a drop; reaching itself through the service stays allowed.
    let v = fake.evaluate(
        &tcp("10.244.1.5:40000", "10.96.0.20:80"),
        &from_pod("web-0"),
    );
    let Verdict::Forward { backends, .. } = v else {
        panic!("{v:?}")
    };
    assert_eq!(backends, [sa("10.244.1.5:8080")].into(), "only itself");
    let dropped_before = dp.stats().unwrap().packets_dropped;
    let outside = tcp("172.18.0.99:40000", "10.96.0.20:80");
    assert_eq!(fake.evaluate(&outside, &Entry::FromUplink), Verdict::Drop);
    assert_eq!(dp.stats().unwrap().packets_dropped, dropped_before + 1);

    // Pod to pod, no service: checked on the pod addresses and the port.
    let direct = tcp("10.244.1.6:40001", "10.244.2.7:8080");
    assert!(matches!(
        fake.evaluate(&direct, &from_pod("client")),
        Verdict::Untouched { .. }
    ));
    let reverse = tcp("10.244.1.5:40001", "10.244.1.6:8080");
    assert!(
        matches!(
            fake.evaluate(&reverse, &from_pod("web-0")),
            Verdict::Untouched { .. }
        ),
        "the client is not isolated"
    );
    let mut udp = direct;
    udp.protocol = Protocol::Udp;
    assert_eq!(
        fake.evaluate(&udp, &from_pod("client")),
        Verdict::Drop,
        "TCP only"
    );
    // The node reaching its own pod: always allowed (kubelet probes).
    let kubelet = tcp("172.18.0.10:40002", "10.244.1.5:8080");
    assert!(matches!(
        fake.evaluate(&kubelet, &Entry::FromHost),
        Verdict::Untouched { .. }
    ));
}

#[test]
fn network_policy_changes_apply_incrementally() {
    let fake = FakeDataplane::new();
    let mut dp: BoxDataplane = Box::new(fake.clone());
    let s = policy_state();
    dp.apply(&s).unwrap();
    let direct = tcp("10.244.1.6:40000", "10.244.2.7:8080");
    assert!(matches!(
        fake.evaluate(&direct, &from_pod("client")),
        Verdict::Untouched { .. }
    ));

    // The client relabelled: denied. Then a namespace selector instead of the pod selector:
    // allowed again by the namespace's label, denied when the namespace is relabelled.
    let mut relabelled = s.clone();
    relabelled.endpoints[1]
        .labels
        .insert("app".to_owned(), "other".to_owned());
    let report = dp.apply_changes(&diff(&s, &relabelled)).unwrap();
    assert!(!report.full_sync);
    assert_eq!(fake.evaluate(&direct, &from_pod("client")), Verdict::Drop);

    let mut by_namespace = relabelled.clone();
    by_namespace.policies[0].ingress[0].peers[0] = PolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: [("team".to_owned(), "a".to_owned())].into(),
            ..LabelSelector::default()
        }),
        ..PolicyPeer::default()
    };
    dp.apply_changes(&diff(&relabelled, &by_namespace)).unwrap();
    assert!(matches!(
        fake.evaluate(&direct, &from_pod("client")),
        Verdict::Untouched { .. }
    ));
    let mut moved = by_namespace.clone();
    moved.namespaces[0]
        .labels
        .insert("team".to_owned(), "b".to_owned());
    dp.apply_changes(&diff(&by_namespace, &moved)).unwrap();
    assert_eq!(fake.evaluate(&direct, &from_pod("client")), Verdict::Drop);

    // A remote pod's change (relabelled out of `app=web`): no longer isolated.
    let mut remote = moved.clone();
    remote.pods[0]
        .labels
        .insert("app".to_owned(), "db".to_owned());
    dp.apply_changes(&diff(&moved, &remote)).unwrap();
    assert!(matches!(
        fake.evaluate(&direct, &from_pod("client")),
        Verdict::Untouched { .. }
    ));
    assert_eq!(fake.applied(), Some(remote.clone()));

    // The policy deleted: open again, incrementally.
    let mut open = remote.clone();
    open.policies.clear();
    dp.apply_changes(&diff(&remote, &open)).unwrap();
    assert_eq!(fake.calls().incremental_syncs, 5);

    // Change sets that are no diff from the applied state, for pods and namespaces too.
    let stale_pods = ChangeSet {
        pods: diff(&moved, &remote).pods,
        ..ChangeSet::default()
    };
    assert!(matches!(
        dp.apply_changes(&stale_pods),
        Err(Error::FullSyncRequired)
    ));
    let stale_namespaces = diff(&by_namespace, &moved);
    assert!(matches!(
        dp.apply_changes(&stale_namespaces),
        Err(Error::FullSyncRequired)
    ));
}

#[test]
fn network_policy_is_refused_without_the_capability() {
    let mut caps = FakeDataplane::default_capabilities();
    caps.network_policy = false;
    let mut fake = FakeDataplane::with_capabilities(caps);
    let s = policy_state();
    let err = fake.apply(&s).unwrap_err();
    let Error::Unsupported {
        dataplane,
        feature,
        object,
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(
        (dataplane.as_str(), feature.as_str(), object.as_str()),
        (FAKE, "network policy", "policy default/web-from-client")
    );
    // Incrementally too.
    let mut plain = s.clone();
    plain.policies.clear();
    fake.apply(&plain).unwrap();
    assert!(matches!(
        fake.apply_changes(&diff(&plain, &s)),
        Err(Error::Unsupported { .. })
    ));
}

/// The netfilter backends' capabilities: no DSR (served with SNAT); iptables: no Maglev.
fn iptables_like() -> Capabilities {
    Capabilities {
        dataplane: "iptables-like".to_owned(),
        maglev: false,
        dsr: false,
        xdp: false,
        ..FakeDataplane::default_capabilities()
    }
}

#[test]
fn what_the_capabilities_lack_is_left_out_and_reported() {
    let mut fake = FakeDataplane::with_capabilities(iptables_like());
    assert_eq!(fake.capabilities().dataplane, "iptables-like");
    let dsr = web()
        .with_external_mode(ExternalMode::Dsr)
        .with_backend_selection(BackendSelection::Maglev);
    let s = state([dsr]);
    let r = fake.apply(&s).unwrap();
    let skipped: Vec<(&str, &str)> = r
        .skipped
        .iter()
        .map(|k| (k.field.as_str(), k.feature.as_str()))
        .collect();
    assert_eq!(
        skipped,
        [
            ("backendSelection", "Maglev backend selection"),
            ("externalMode", "direct server return (DSR)")
        ]
    );
    assert!(r.skipped.iter().all(|k| k.object == "service default/web"));
    // Served with SNAT: a NodePort client from outside is masqueraded, not kept.
    let v = fake.evaluate(
        &tcp("198.51.100.1:40000", "172.18.0.10:30080"),
        &Entry::FromUplink,
    );
    assert!(
        matches!(v, Verdict::Forward { source: SourceSeen::Masqueraded(a), .. } if a == ip("172.18.0.10")),
        "{v:?}"
    );
    // With DSR the client keeps its address.
    let mut full = FakeDataplane::new();
    full.apply(&s).unwrap();
    let v = full.evaluate(
        &tcp("198.51.100.1:40000", "172.18.0.10:30080"),
        &Entry::FromUplink,
    );
    assert!(
        matches!(
            v,
            Verdict::Forward {
                source: SourceSeen::Client,
                ..
            }
        ),
        "{v:?}"
    );

    // A protocol it lacks: that port is left out (as the eBPF backend once did SCTP), the
    // rest programmed; incremental applies report the changed services only.
    let mut caps = FakeDataplane::default_capabilities();
    caps.protocols = [Protocol::Tcp, Protocol::Udp].into_iter().collect();
    let mut fake = FakeDataplane::with_capabilities(caps);
    let sig = Service::cluster_ip(
        name("sig"),
        ip("10.96.0.40"),
        [
            ServicePort::tcp(80, 80).named("http"),
            ServicePort::sctp(9, 9).named("sig"),
        ],
    )
    .with_backend(Backend::new(ip("10.244.1.8")));
    let one = state([web()]);
    fake.apply(&one).unwrap();
    let two = state([web(), sig]);
    let r = fake.apply_changes(&diff(&one, &two)).unwrap();
    assert_eq!(r.skipped.len(), 1, "{:?}", r.skipped);
    assert_eq!(
        (r.skipped[0].field.as_str(), r.skipped[0].feature.as_str()),
        ("ports[1]", "SCTP")
    );
    let frontends: BTreeSet<(SocketAddr, Protocol)> = fake
        .observe()
        .unwrap()
        .frontends
        .iter()
        .map(|f| (f.address, f.protocol))
        .collect();
    assert!(frontends.contains(&(sa("10.96.0.40:80"), Protocol::Tcp)));
    assert!(!frontends.contains(&(sa("10.96.0.40:9"), Protocol::Sctp)));
}

#[test]
fn capacity_limits_are_refused_before_anything_changes() {
    let mut caps = FakeDataplane::default_capabilities();
    caps.max_services = 1;
    let mut fake = FakeDataplane::with_capabilities(caps);
    fake.apply(&state([web()])).unwrap();
    let err = fake.apply(&state([web(), dns()])).unwrap_err();
    assert!(
        matches!(&err, Error::CapacityExceeded { what, needed: 2, capacity: 1 } if what == "services"),
        "{err:?}"
    );
    assert_eq!(fake.applied(), Some(state([web()])));

    let mut caps = FakeDataplane::default_capabilities();
    caps.max_backends = 2;
    let mut fake = FakeDataplane::with_capabilities(caps);
    fake.apply(&state([web()])).unwrap();
    let one = state([web()]);
    let err = fake
        .apply_changes(&diff(&one, &state([web(), dns()])))
        .unwrap_err();
    assert!(
        matches!(&err, Error::CapacityExceeded { what, needed: 3, capacity: 2 } if what == "backends"),
        "{err:?}"
    );
}

#[test]
fn observe_lists_each_frontend_with_the_backends_its_policy_selects() {
    let mut fake = FakeDataplane::new();
    let mut s = state([web()
        .with_load_balancer_ip(ip("192.0.2.10"))
        .with_external_traffic_policy(TrafficPolicy::Local)]);
    s.node.addresses.push(ip("172.18.0.11"));
    s.services.push(
        Service::cluster_ip(name("idle"), ip("10.96.0.50"), [ServicePort::tcp(80, 80)])
            .with_internal_traffic_policy(TrafficPolicy::Local)
            .with_backend(Backend::new(ip("10.244.2.3")).on_node("node-b")),
    );
    fake.apply(&s).unwrap();
    let both: BTreeSet<SocketAddr> = [sa("10.244.1.5:8080"), sa("10.244.2.7:8080")].into();
    let local: BTreeSet<SocketAddr> = [sa("10.244.1.5:8080")].into();
    let f = |a: &str, backends: &BTreeSet<SocketAddr>| ObservedFrontend {
        address: sa(a),
        protocol: Protocol::Tcp,
        backends: backends.clone(),
    };
    let mut want = vec![
        f("10.96.0.20:80", &both),
        f("192.0.2.10:80", &local),
        f("172.18.0.10:30080", &local),
        f("172.18.0.11:30080", &local),
        f("10.96.0.50:80", &BTreeSet::new()),
    ];
    want.sort();
    assert_eq!(fake.observe().unwrap().frontends, want);
}

#[test]
fn evaluate_tracks_flows_and_counts_verdicts() {
    let fake = FakeDataplane::new();
    let client = tcp("10.244.1.20:40000", "10.96.0.20:80");
    let pod = Entry::FromPod(name("client"));
    assert!(
        matches!(fake.evaluate(&client, &pod), Verdict::Untouched { .. }),
        "nothing applied: nothing translated"
    );
    assert_eq!(
        fake.stats().unwrap(),
        dataplane_core::Stats::default(),
        "nor counted"
    );
    let mut dp = fake.clone();
    dp.apply(&state([web()])).unwrap();
    let Verdict::Forward { backends, .. } = fake.evaluate(&client, &pod) else {
        panic!()
    };
    let flows = dp.flows().unwrap();
    assert_eq!(flows.len(), 1);
    assert!(backends.contains(&flows[0].backend));
    assert_eq!(flows[0].service, Some(name("web")));
    assert_eq!(
        (flows[0].client, flows[0].frontend),
        (client.source, client.destination)
    );
    // The same connection again: still one flow, same backend.
    fake.evaluate(&client, &pod);
    assert_eq!(dp.flows().unwrap(), flows);
    // Another port of the ClusterIP: rejected; an unallocated service address: dropped.
    fake.evaluate(&tcp("10.244.1.20:40001", "10.96.0.20:81"), &pod);
    fake.evaluate(&tcp("10.244.1.20:40002", "10.96.0.99:80"), &pod);
    // Leaving the cluster: untouched but for the masquerade.
    let out = fake.evaluate(&tcp("10.244.1.20:40003", "198.51.100.1:80"), &pod);
    assert_eq!(
        out,
        Verdict::Untouched {
            source: SourceSeen::Masqueraded(ip("172.18.0.10"))
        }
    );
    let stats = dp.stats().unwrap();
    assert_eq!(
        (
            stats.packets_translated,
            stats.packets_rejected,
            stats.packets_dropped,
            stats.flows
        ),
        (2, 1, 1, 1)
    );
    assert_eq!(stats.other.get("untouched"), Some(&1));
    // Many clients spread over both backends (the pick is by packet, not fixed).
    let picked: BTreeSet<SocketAddr> = (0..64)
        .filter_map(|i| {
            let p = tcp(&format!("10.244.1.21:{}", 30000 + i), "10.96.0.20:80");
            fake.evaluate(&p, &pod);
            dp.flows()
                .unwrap()
                .into_iter()
                .find(|f| f.client == p.source)
                .map(|f| f.backend)
        })
        .collect();
    assert_eq!(picked.len(), 2, "{picked:?}");

    dp.reset().unwrap();
    assert!(dp.flows().unwrap().is_empty());
    assert_eq!(dp.stats().unwrap(), dataplane_core::Stats::default());
    assert_eq!(fake.applied(), None);
    assert!(matches!(
        dp.apply_changes(&ChangeSet::default()),
        Err(Error::FullSyncRequired)
    ));
}

#[test]
fn warnings_cover_the_objects_an_apply_looked_at() {
    let mut fake = FakeDataplane::new();
    let outside = Service::cluster_ip(name("odd"), ip("10.200.0.1"), [ServicePort::tcp(1, 1)]);
    let one = state([web(), outside]);
    let r = fake.apply(&one).unwrap();
    assert_eq!(r.warnings.len(), 1);
    assert_eq!(r.warnings[0].object, "service default/odd");
    let mut two = one.clone();
    two.services[0].backends.pop();
    let r = fake.apply_changes(&diff(&one, &two)).unwrap();
    assert!(
        r.warnings.is_empty(),
        "odd did not change: {:?}",
        r.warnings
    );
}

#[test]
fn maintain_is_counted_and_can_fail() {
    let fake = FakeDataplane::new().with_maintenance_interval(Some(Duration::from_secs(5)));
    let mut dp: BoxDataplane = Box::new(fake.clone());
    assert_eq!(dp.maintenance_interval(), Some(Duration::from_secs(5)));
    assert_eq!(FakeDataplane::new().maintenance_interval(), None);
    let r = dp.maintain(Duration::from_secs(100)).unwrap();
    assert_eq!(r.flows_remaining, Some(0));
    fake.fail_next_maintain(Fault::Kernel("map busy".to_owned()));
    let err = dp.maintain(Duration::from_secs(105)).unwrap_err();
    assert!(matches!(&err, Error::Kernel { operation, .. } if operation == "maintenance"));
    dp.maintain(Duration::from_secs(110)).unwrap();
    let calls = fake.calls();
    assert_eq!(calls.maintains, 3);
    assert_eq!(calls.last_maintain, Some(Duration::from_secs(110)));
    assert_eq!(calls.full_syncs, 0, "maintenance is no sync");
}

#[test]
fn new_capabilities_make_the_next_apply_full() {
    let mut fake = FakeDataplane::new();
    let one = state([web()]);
    fake.apply(&one).unwrap();
    fake.set_capabilities(iptables_like());
    let two = state([web(), dns()]);
    let r = fake.sync(Some(&one), &two).unwrap();
    assert!(r.full_sync);
    assert_eq!(fake.capabilities().dataplane, "iptables-like");
}

#[test]
fn the_fake_is_send_and_sync_and_clones_share_it() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<FakeDataplane>();
    let fake = FakeDataplane::new();
    let handle = fake.clone();
    let s = state([web()]);
    std::thread::spawn(move || {
        let mut dp: BoxDataplane = Box::new(fake);
        dp.apply(&s).unwrap();
    })
    .join()
    .unwrap();
    assert_eq!(handle.calls().full_syncs, 1);
    assert!(handle.applied().is_some());
}

#[test]
fn a_fake_without_ipv6_masquerade_affinity_or_weights_leaves_them_out() {
    let caps = Capabilities {
        ipv6: false,
        masquerade: false,
        session_affinity: false,
        weights: false,
        ..FakeDataplane::default_capabilities()
    };
    let mut fake = FakeDataplane::with_capabilities(caps);
    let mut s = state([web()
        .with_cluster_ip(ip("fd00:96::20"))
        .with_backend(Backend::new(ip("fd00:244::5")).with_weight(3))
        .with_session_affinity(dataplane_core::SessionAffinity::client_ip())]);
    s.node.addresses.push(ip("fd00:18::10"));
    s.node.cluster_cidrs.push("fd00:244::/48".parse().unwrap());
    s.node.service_cidrs.push("fd00:96::/108".parse().unwrap());
    let r = fake.apply(&s).unwrap();
    let skipped: Vec<(&str, &str, &str)> = r
        .skipped
        .iter()
        .map(|k| (k.object.as_str(), k.field.as_str(), k.feature.as_str()))
        .collect();
    assert_eq!(
        skipped,
        [
            ("node", "addresses[1]", "IPv6"),
            ("node", "masquerade", "pod masquerade"),
            ("service default/web", "clusterIPs[1]", "IPv6"),
            ("service default/web", "ports[0].nodePort", "IPv6"),
            (
                "service default/web",
                "sessionAffinity",
                "ClientIP session affinity"
            ),
            ("service default/web", "backends", "backend weights"),
        ]
    );
    let observed = fake.observe().unwrap().frontends;
    assert!(observed.iter().all(|f| f.address.is_ipv4()), "{observed:?}");
    assert_eq!(
        observed.len(),
        2,
        "ClusterIP and one NodePort: {observed:?}"
    );
    // Pod traffic leaving the cluster keeps its address.
    let v = fake.evaluate(
        &tcp("10.244.1.20:40000", "198.51.100.1:80"),
        &Entry::FromPod(name("client")),
    );
    assert_eq!(
        v,
        Verdict::Untouched {
            source: SourceSeen::Client
        }
    );
}

#[test]
fn client_ip_affinity_sends_every_connection_of_a_client_to_one_backend() {
    let mut fake = FakeDataplane::new();
    let sticky = web().with_session_affinity(dataplane_core::SessionAffinity::client_ip());
    fake.apply(&state([sticky])).unwrap();
    let backend_of = |client: &str| {
        let p = tcp(client, "10.96.0.20:80");
        fake.evaluate(&p, &Entry::FromUplink);
        fake.flows()
            .unwrap()
            .into_iter()
            .find(|f| f.client == p.source)
            .unwrap()
            .backend
    };
    let per_client: BTreeSet<SocketAddr> = (0..32)
        .map(|i| backend_of(&format!("198.51.100.1:{}", 40000 + i)))
        .collect();
    assert_eq!(per_client.len(), 1, "{per_client:?}");
    let over_clients: BTreeSet<SocketAddr> = (1..=32)
        .map(|i| backend_of(&format!("198.51.100.{i}:40000")))
        .collect();
    assert_eq!(over_clients.len(), 2, "{over_clients:?}");
}

/// The counts compare the desired objects, as every dataplane does: a change to a port the
/// fake leaves out (a protocol it lacks) still changes the service.
#[test]
fn a_change_to_a_skipped_port_counts_as_a_changed_service() {
    let mut caps = FakeDataplane::default_capabilities();
    caps.protocols = [Protocol::Tcp, Protocol::Udp].into_iter().collect();
    let mut fake = FakeDataplane::with_capabilities(caps);
    let sig = |port: u16| {
        Service::cluster_ip(
            name("sig"),
            ip("10.96.0.40"),
            [
                ServicePort::tcp(80, 80).named("http"),
                ServicePort::sctp(port, port).named("sig"),
            ],
        )
        .with_backend(Backend::new(ip("10.244.1.8")))
    };
    let one = state([sig(9)]);
    fake.apply(&one).unwrap();
    let two = state([sig(10)]);
    let r = fake.apply(&two).unwrap();
    assert_eq!(
        (r.services_changed, r.services_removed),
        (1, 0),
        "full: {r:?}"
    );
    let r = fake.apply_changes(&diff(&two, &one)).unwrap();
    assert_eq!(
        (r.services_changed, r.services_removed),
        (1, 0),
        "incremental: {r:?}"
    );
}
