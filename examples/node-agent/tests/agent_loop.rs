//! The reconcile loop over an in-memory `FakeDataplane`: when it syncs, what it programs, full
//! syncs, and the health and metrics it serves over HTTP on 127.0.0.1.

mod agent_common;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_common::harness::{free_port, get, harness, list_all, object, objects, LOCALHOST};
use agent_common::{namespace, node, service, slice};
use dataplane::testing::Fault;
use dataplane_agent::health::serve_healthz;
use dataplane_agent::metrics::serve_metrics;
use dataplane_agent::runner::{Periods, RunKind};
use dataplane_agent::source::SourceEvent;
use dataplane_kube::{Kind, ObjectKey};

#[tokio::test]
async fn syncs_wait_for_every_kind_then_program_the_translated_state() {
    let mut h = harness(Duration::from_mins(1));
    list_all(&mut h, free_port());
    let outcome = h
        .reconciler
        .sync_if_due(Instant::now())
        .await
        .expect("the first sync is due once every kind listed");
    assert_eq!(outcome.kind, RunKind::Full);
    assert!(outcome.warnings.is_empty(), "{:?}", outcome.warnings);
    let report = outcome.report.expect("synced");
    assert!(report.full_sync);
    assert_eq!(outcome.counts.0, 1, "one service");
    let applied = h.fake.applied().expect("applied");
    assert_eq!(applied.node.name, "node-0");
    assert_eq!(applied.services[0].backends.len(), 1);
    // The local pod is an endpoint on the veth the resolver named.
    assert_eq!(applied.endpoints.len(), 1);
    assert_eq!(applied.endpoints[0].interface, "vp11");

    // A change: the next sync is partial and moves the backend.
    h.reconciler.handle(SourceEvent::Applied(object(&slice(
        "web-1",
        "web",
        &[("10.244.1.11", "node-1", "pod-1-1")],
    ))));
    let outcome = h.reconciler.sync(RunKind::Partial).await;
    assert!(!outcome.report.unwrap().full_sync);
    let applied = h.fake.applied().unwrap();
    assert_eq!(
        applied.services[0].backends[0].ip,
        "10.244.1.11".parse::<IpAddr>().unwrap()
    );
    let calls = h.fake.calls();
    assert_eq!((calls.full_syncs, calls.incremental_syncs), (1, 1));

    // A periodic full sync with no change applies the whole state again.
    let outcome = h.reconciler.sync(RunKind::Full).await;
    assert!(outcome.report.unwrap().full_sync);
    assert_eq!(h.fake.calls().full_syncs, 2);
}

/// A listing in parts (the manifest source streams the directory file by file): each part
/// is stored at once, nothing syncs before every kind's closing `Listed`, and a relist in
/// parts deletes exactly what neither a part nor the closing event named.
#[tokio::test]
async fn a_listing_in_parts_stores_each_part_and_deletes_what_it_did_not_name() {
    fn part(kind: Kind, yamls: &[String]) -> SourceEvent {
        let SourceEvent::Listed { objects, .. } = objects(kind, yamls) else {
            unreachable!()
        };
        SourceEvent::ListPart { kind, objects }
    }
    fn closing(kind: Kind) -> SourceEvent {
        SourceEvent::Listed {
            kind,
            objects: Vec::new(),
        }
    }
    fn names(h: &agent_common::harness::Harness) -> Vec<String> {
        let mut names: Vec<String> = h
            .fake
            .applied()
            .unwrap()
            .services
            .iter()
            .map(|s| s.name.to_string())
            .collect();
        names.sort();
        names
    }
    let mut h = harness(Duration::from_mins(1));
    let parts = [
        part(
            Kind::Node,
            &[node("node-0", "172.18.0.10", "10.244.0.0/24", None)],
        ),
        part(Kind::Namespace, &[namespace("default")]),
        part(Kind::Service, &[service("web", "10.96.0.10", 80, None)]),
        part(Kind::Service, &[service("api", "10.96.0.11", 80, None)]),
    ];
    for event in parts {
        h.reconciler.handle(event);
    }
    assert_eq!(
        h.reconciler.cluster().count(Kind::Service),
        2,
        "stored at once"
    );
    assert!(h.reconciler.next_sync(Instant::now()).is_none());
    for kind in Kind::ALL {
        assert!(
            h.reconciler.next_sync(Instant::now()).is_none(),
            "a sync before {kind} listed"
        );
        h.reconciler.handle(closing(kind));
    }
    assert!(h.reconciler.ready());
    h.reconciler.sync_if_due(Instant::now()).await.unwrap();
    assert_eq!(names(&h), ["default/api", "default/web"]);
    assert_eq!(
        h.reconciler.cluster().count(Kind::Node),
        1,
        "the closing event kept the part's node"
    );

    // A relist that names `db` in a part and `web` in its closing event: `api` is gone.
    h.reconciler.handle(part(
        Kind::Service,
        &[service("db", "10.96.0.12", 80, None)],
    ));
    h.reconciler.handle(SourceEvent::Listed {
        kind: Kind::Service,
        objects: vec![object(&service("web", "10.96.0.10", 80, None))],
    });
    h.reconciler.sync(RunKind::Partial).await.report.unwrap();
    assert_eq!(names(&h), ["default/db", "default/web"]);
    // A relist with no parts at all replaces as before.
    h.reconciler.handle(closing(Kind::Service));
    h.reconciler.sync(RunKind::Partial).await.report.unwrap();
    assert_eq!(names(&h), Vec::<String>::new());
}

/// Partial syncs hand the dataplane the store's changes only (`translate_changes` →
/// `AsyncDataplane::apply_changes`); what is programmed must stay the store's whole state,
/// through additions, removals and a failed sync's full retry.
#[tokio::test]
async fn partial_syncs_send_only_the_changes_and_program_the_stores_state() {
    fn names(state: &dataplane::DesiredState) -> Vec<String> {
        let mut names: Vec<String> = state.services.iter().map(|s| s.name.to_string()).collect();
        names.sort();
        names
    }
    fn added_service(name: &str, cluster_ip: &str) -> SourceEvent {
        SourceEvent::Applied(object(&service(name, cluster_ip, 80, None)))
    }
    let mut h = harness(Duration::from_mins(1));
    list_all(&mut h, free_port());
    h.reconciler.sync_if_due(Instant::now()).await.unwrap();

    h.reconciler.handle(added_service("api", "10.96.0.11"));
    let added = h.reconciler.sync(RunKind::Partial).await.report.unwrap();
    assert!(!added.full_sync);
    assert_eq!((added.services_changed, added.services_removed), (1, 0));
    assert_eq!(
        names(&h.fake.applied().unwrap()),
        ["default/api", "default/web"]
    );

    h.reconciler.handle(SourceEvent::Deleted(ObjectKey {
        kind: Kind::Service,
        namespace: Some("default".into()),
        name: "web".into(),
    }));
    h.fake.fail_next_apply(Fault::Kernel("injected".to_owned()));
    assert!(h.reconciler.sync(RunKind::Partial).await.report.is_none());
    // The failed sync's changes were taken from the store: even a partial sync now sends
    // the whole state, so that nothing is lost.
    let retry = h.reconciler.sync(RunKind::Partial).await.report.unwrap();
    assert!(retry.full_sync);
    assert_eq!(names(&h.fake.applied().unwrap()), ["default/api"]);

    h.reconciler.handle(added_service("web", "10.96.0.10"));
    let back = h.reconciler.sync(RunKind::Partial).await.report.unwrap();
    assert!(!back.full_sync);
    assert_eq!(back.services_changed, 1);
    let applied = h.fake.applied().unwrap();
    let store = h.reconciler.cluster().state().unwrap();
    assert_eq!(names(&applied), names(store));
    assert_eq!(h.fake.calls().incremental_syncs, 2);
}

#[tokio::test]
async fn a_failed_sync_is_retried_in_full() {
    let mut h = harness(Duration::from_mins(1));
    list_all(&mut h, free_port());
    h.reconciler.sync_if_due(Instant::now()).await.unwrap();
    h.reconciler.handle(SourceEvent::Deleted(ObjectKey {
        kind: Kind::EndpointSlice,
        namespace: Some("default".into()),
        name: "web-1".into(),
    }));
    h.fake.fail_next_apply(Fault::Kernel("injected".to_owned()));
    let failed = h.reconciler.sync(RunKind::Partial).await;
    assert!(failed.report.is_none());
    // Nothing is due before the retry interval (no new change)...
    let now = Instant::now();
    assert!(h.reconciler.sync_if_due(now).await.is_none());
    // ...and the retry is full.
    let retry = h
        .reconciler
        .sync_if_due(now + Periods::default().retry)
        .await
        .unwrap();
    assert_eq!(retry.kind, RunKind::Full);
    assert!(retry.report.unwrap().full_sync);
    assert!(h.fake.applied().unwrap().services[0].backends.is_empty());
    let text = h.metrics.encode();
    assert!(text.contains("dataplane_apply_errors_total 1"), "{text}");
}

#[tokio::test]
async fn health_check_ports_follow_local_endpoints_and_services() {
    let mut h = harness(Duration::from_mins(1));
    let hc = free_port();
    let hc_addr = SocketAddr::new(LOCALHOST, hc);
    list_all(&mut h, hc);
    assert!(get(hc_addr, "/").await.is_none(), "no server before a sync");
    h.reconciler.sync_if_due(Instant::now()).await.unwrap();
    assert_eq!(
        h.reconciler
            .health_ports()
            .values()
            .copied()
            .collect::<Vec<_>>(),
        [hc]
    );
    let (code, body) = get(hc_addr, "/").await.expect("the health port answers");
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body,
        r#"{"service":{"namespace":"default","name":"web"},"localEndpoints":1,"serviceProxyHealthy":true}"#
    );
    // The only endpoint moves to node-1: 503 with no local endpoints.
    h.reconciler.handle(SourceEvent::Applied(object(&slice(
        "web-1",
        "web",
        &[("10.244.1.11", "node-1", "pod-1-1")],
    ))));
    h.reconciler.sync(RunKind::Partial).await.report.unwrap();
    let (code, body) = get(hc_addr, "/anything").await.unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains(r#""localEndpoints":0"#), "{body}");
    // kube-proxy's gauge counts the port that has endpoints, none here.
    let text = h.metrics.encode();
    assert!(
        text.contains(
            r#"kubeproxy_sync_proxy_rules_no_local_endpoints_total{traffic_policy="external",ip_family="IPv4"} 1"#
        ),
        "{text}"
    );
    // The service goes: the port closes.
    h.reconciler.handle(SourceEvent::Deleted(ObjectKey {
        kind: Kind::Service,
        namespace: Some("default".into()),
        name: "web".into(),
    }));
    h.reconciler.sync(RunKind::Partial).await.report.unwrap();
    assert!(h.reconciler.health_ports().is_empty());
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        while get(hc_addr, "/").await.is_some() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(closed.is_ok(), "the health port still answers");
}

#[tokio::test]
async fn healthz_reports_pending_changes_and_a_draining_node() {
    // A zero timeout: any change waiting after the first sync makes the agent unhealthy.
    let mut h = harness(Duration::ZERO);
    let (server, addr) = serve_healthz(
        SocketAddr::new(LOCALHOST, 0),
        Arc::clone(&h.status),
        Arc::clone(&h.metrics),
    )
    .unwrap();
    let (code, body) = get(addr, "/healthz").await.unwrap();
    assert_eq!(code, 200, "healthy while starting: {body}");
    list_all(&mut h, free_port());
    h.reconciler.sync_if_due(Instant::now()).await.unwrap();
    let (code, body) = get(addr, "/healthz").await.unwrap();
    assert_eq!(code, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["nodeEligible"], true);
    assert!(
        json["lastUpdated"].as_str().unwrap().ends_with('Z'),
        "{body}"
    );
    let (code, body) = get(addr, "/livez").await.unwrap();
    assert_eq!(code, 200);
    assert!(!body.contains("nodeEligible"), "{body}");

    // A change that is not synced yet, older than the (zero) timeout.
    h.reconciler.handle(SourceEvent::Applied(object(&service(
        "api",
        "10.96.0.20",
        443,
        None,
    ))));
    assert_eq!(get(addr, "/healthz").await.unwrap().0, 503);
    assert_eq!(get(addr, "/livez").await.unwrap().0, 503);
    h.reconciler.sync(RunKind::Partial).await.report.unwrap();
    assert_eq!(get(addr, "/livez").await.unwrap().0, 200);

    // The node is tainted for deletion: /healthz says so, /livez does not care. (The taint
    // is a change too: synced first so that only the taint counts.)
    h.reconciler.handle(SourceEvent::Applied(object(&node(
        "node-0",
        "172.18.0.10",
        "10.244.0.0/24",
        Some("ToBeDeletedByClusterAutoscaler"),
    ))));
    h.reconciler.sync(RunKind::Partial).await.report.unwrap();
    let (code, body) = get(addr, "/healthz").await.unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains(r#""nodeEligible":false"#), "{body}");
    assert_eq!(get(addr, "/livez").await.unwrap().0, 200);
    assert_eq!(get(addr, "/other").await.unwrap().0, 404);
    server.abort();
    let text = h.metrics.encode();
    assert!(
        text.contains(r#"kubeproxy_proxy_healthz_total{code="503"}"#),
        "{text}"
    );
}

#[tokio::test]
async fn metrics_are_served_under_kube_proxy_names() {
    let mut h = harness(Duration::from_mins(1));
    let (server, addr) =
        serve_metrics(SocketAddr::new(LOCALHOST, 0), Arc::clone(&h.metrics)).unwrap();
    list_all(&mut h, free_port());
    h.reconciler.sync_if_due(Instant::now()).await.unwrap();
    // An endpoint change with a trigger time: programmed, it is measured.
    h.reconciler
        .handle(SourceEvent::Applied(object(&agent_common::slice_now(
            "web-1",
            "web",
            &[
                ("10.244.0.11", "node-0", "pod-0-1"),
                ("10.244.1.11", "node-1", "pod-1-1"),
            ],
        ))));
    let text = h.metrics.encode();
    assert!(
        text.contains("kubeproxy_sync_proxy_rules_endpoint_changes_pending 1"),
        "{text}"
    );
    h.reconciler.sync(RunKind::Partial).await.report.unwrap();
    h.reconciler.read_stats().await;
    let (code, text) = get(addr, "/metrics").await.unwrap();
    assert_eq!(code, 200);
    for expected in [
        r#"kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family="IPv4"} 2"#,
        r#"kubeproxy_sync_full_proxy_rules_duration_seconds_count{ip_family="IPv4"} 1"#,
        r#"kubeproxy_sync_partial_proxy_rules_duration_seconds_count{ip_family="IPv4"} 1"#,
        r#"kubeproxy_network_programming_duration_seconds_count{ip_family="IPv4"} 1"#,
        r#"kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family="IPv4"} "#,
        r#"kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds{ip_family="IPv4"} "#,
        "kubeproxy_sync_proxy_rules_endpoint_changes_pending 0",
        "kubeproxy_sync_proxy_rules_service_changes_pending 0",
        r#"kubeproxy_sync_proxy_rules_no_local_endpoints_total{traffic_policy="external",ip_family="IPv4"} 0"#,
        r#"kubeproxy_sync_proxy_rules_no_local_endpoints_total{traffic_policy="internal",ip_family="IPv4"} 0"#,
        "dataplane_services 1",
        "dataplane_endpoints 1",
        "dataplane_policies 0",
        "dataplane_conntrack_entries 0",
        "dataplane_translation_warnings 0",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
    assert!(text.contains("# TYPE kubeproxy_sync_proxy_rules_last_timestamp_seconds gauge"));
    assert!(text.contains("# TYPE kubeproxy_network_programming_duration_seconds histogram"));
    // Not IPv6: the node has none.
    assert!(!text.contains(r#"ip_family="IPv6""#), "{text}");
    server.abort();
}

#[tokio::test]
async fn translation_warnings_are_reported_and_counted() {
    let mut h = harness(Duration::from_mins(1));
    // 40000 is outside the NodePort range: the service is programmed without health check.
    list_all(&mut h, 40_000);
    let outcome = h.reconciler.sync_if_due(Instant::now()).await.unwrap();
    assert!(outcome.report.is_some());
    assert_eq!(outcome.warnings.len(), 1, "{:?}", outcome.warnings);
    assert!(
        outcome.warnings[0].contains("Service default/web")
            && outcome.warnings[0].contains("spec.healthCheckNodePort"),
        "{:?}",
        outcome.warnings
    );
    assert!(h.reconciler.health_ports().is_empty());
    assert!(h
        .metrics
        .encode()
        .contains("dataplane_translation_warnings 1"));
}

/// Waits (generously) until `done()`.
async fn eventually(what: &str, done: impl Fn() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_mins(1), "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn the_running_loop_follows_a_manifest_directory_until_shutdown() {
    let h = harness(Duration::from_mins(1));
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: String| std::fs::write(dir.path().join(name), text).unwrap();
    write(
        "cluster.yaml",
        agent_common::documents(&[
            node("node-0", "172.18.0.10", "10.244.0.0/24", None),
            namespace("default"),
        ]),
    );
    write(
        "web.yaml",
        agent_common::documents(&[
            service("web", "10.96.0.10", 80, None),
            slice("web-1", "web", &[("10.244.1.11", "node-1", "pod-1-1")]),
        ]),
    );
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let source = dataplane_agent::manifests::spawn(dir.path(), tx).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let fake = h.fake.clone();
    let running = tokio::spawn(h.reconciler.run(rx, async {
        let _ = stopped.await;
    }));
    let backends = move || {
        fake.applied().map(|s| {
            s.services
                .iter()
                .flat_map(|s| &s.backends)
                .map(|b| b.ip)
                .collect::<Vec<_>>()
        })
    };
    let b = backends.clone();
    eventually("the first sync", move || {
        b() == Some(vec!["10.244.1.11".parse::<IpAddr>().unwrap()])
    })
    .await;
    write(
        "web.yaml",
        agent_common::documents(&[
            service("web", "10.96.0.10", 80, None),
            slice("web-1", "web", &[("10.244.1.12", "node-1", "pod-1-2")]),
        ]),
    );
    let b = backends.clone();
    eventually("the edit is synced", move || {
        b() == Some(vec!["10.244.1.12".parse::<IpAddr>().unwrap()])
    })
    .await;
    std::fs::remove_file(dir.path().join("web.yaml")).unwrap();
    eventually("the deletion is synced", move || backends() == Some(vec![])).await;
    stop.send(()).unwrap();
    running.await.unwrap().expect("a shutdown is no error");
    drop(source);
    assert!(h
        .metrics
        .encode()
        .contains("kubeproxy_sync_proxy_rules_service_changes_total"));
}

#[tokio::test]
async fn a_deleted_or_missing_node_is_not_eligible_until_it_returns() {
    let mut h = harness(Duration::from_mins(1));
    let (server, addr) = serve_healthz(
        SocketAddr::new(LOCALHOST, 0),
        Arc::clone(&h.status),
        Arc::clone(&h.metrics),
    )
    .unwrap();
    list_all(&mut h, free_port());
    h.reconciler.sync_if_due(Instant::now()).await.unwrap();
    assert_eq!(get(addr, "/healthz").await.unwrap().0, 200);
    let node_0 = ObjectKey {
        kind: Kind::Node,
        namespace: None,
        name: "node-0".into(),
    };
    h.reconciler.handle(SourceEvent::Deleted(node_0));
    let (code, body) = get(addr, "/healthz").await.unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains(r#""nodeEligible":false"#), "{body}");
    assert_eq!(get(addr, "/livez").await.unwrap().0, 200, "still alive");
    // A relist without it: still missing.
    h.reconciler.handle(objects(
        Kind::Node,
        &[node("node-1", "172.18.0.11", "10.244.1.0/24", None)],
    ));
    assert_eq!(get(addr, "/healthz").await.unwrap().0, 503);
    // Back: eligible again, without a restart.
    h.reconciler.handle(SourceEvent::Applied(object(&node(
        "node-0",
        "172.18.0.10",
        "10.244.0.0/24",
        None,
    ))));
    assert_eq!(get(addr, "/healthz").await.unwrap().0, 200);
    server.abort();
}

#[tokio::test]
async fn a_first_node_list_without_the_local_node_is_not_eligible() {
    let mut h = harness(Duration::from_mins(1));
    assert!(h.status.node_eligible(), "eligible while starting");
    h.reconciler.handle(objects(
        Kind::Node,
        &[node("node-1", "172.18.0.11", "10.244.1.0/24", None)],
    ));
    assert!(!h.status.node_eligible());
}

#[tokio::test]
async fn a_health_port_fails_when_the_only_local_endpoints_are_terminating() {
    // kube-proxy: "health check signal should fail if there are only terminating endpoints
    // on a node"; the datapath still serves them (the terminating fallback).
    let mut h = harness(Duration::from_mins(1));
    let hc = free_port();
    let hc_addr = SocketAddr::new(LOCALHOST, hc);
    list_all(&mut h, hc);
    h.reconciler.sync_if_due(Instant::now()).await.unwrap();
    assert_eq!(get(hc_addr, "/").await.unwrap().0, 200);
    let terminating = slice("web-1", "web", &[("10.244.0.11", "node-0", "pod-0-1")]).replace(
        "ready: true\n    serving: true\n    terminating: false",
        "ready: false\n    serving: true\n    terminating: true",
    );
    assert!(terminating.contains("terminating: true"));
    h.reconciler
        .handle(SourceEvent::Applied(object(&terminating)));
    h.reconciler.sync(RunKind::Partial).await.report.unwrap();
    let (code, body) = get(hc_addr, "/").await.unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains(r#""localEndpoints":0"#), "{body}");
    let applied = h.fake.applied().unwrap();
    let web = applied
        .services
        .iter()
        .find(|s| s.name.name == "web")
        .unwrap();
    assert!(
        web.backends.iter().any(|b| b.terminating && b.serving),
        "the terminating endpoint stays in the datapath: {:?}",
        web.backends
    );
}

/// A `FakeDataplane` that panics in `apply` (a bug in a backend).
struct Panicking(dataplane::testing::FakeDataplane);

impl dataplane::Dataplane for Panicking {
    fn capabilities(&self) -> dataplane::Capabilities {
        self.0.capabilities()
    }
    fn apply(
        &mut self,
        _desired: &dataplane::DesiredState,
    ) -> Result<dataplane::ApplyReport, dataplane::Error> {
        panic!("a dataplane bug (this panic is the test's)")
    }
    fn apply_changes(
        &mut self,
        changes: &dataplane::ChangeSet,
    ) -> Result<dataplane::ApplyReport, dataplane::Error> {
        self.0.apply_changes(changes)
    }
    fn observe(&self) -> Result<dataplane::ObservedState, dataplane::Error> {
        self.0.observe()
    }
    fn flows(&self) -> Result<Vec<dataplane::Flow>, dataplane::Error> {
        self.0.flows()
    }
    fn stats(&self) -> Result<dataplane::Stats, dataplane::Error> {
        self.0.stats()
    }
    fn reset(&mut self) -> Result<(), dataplane::Error> {
        self.0.reset()
    }
}

#[tokio::test]
async fn a_dead_dataplane_thread_ends_the_loop_with_an_error() {
    let fake = dataplane::testing::FakeDataplane::new();
    let mut h = agent_common::harness::harness_over(
        Duration::from_mins(1),
        Box::new(Panicking(fake.clone())),
        fake,
    );
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    list_all(&mut h, free_port());
    // The source stays open and nobody asks for a shutdown: only the dead thread ends it.
    let running = tokio::spawn(h.reconciler.run(rx, std::future::pending()));
    let result = tokio::time::timeout(Duration::from_secs(20), running)
        .await
        .expect("the loop ends once the dataplane thread is dead")
        .unwrap();
    let error = result.expect_err("a dead dataplane is an error");
    assert!(error.to_string().contains("dataplane thread"), "{error:#}");
    drop(tx);
}

/// The network programming latency observations so far.
fn programmed_count(h: &agent_common::harness::Harness) -> u64 {
    let text = h.metrics.encode();
    let prefix = r#"kubeproxy_network_programming_duration_seconds_count{ip_family="IPv4"} "#;
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .map_or(0, |n| n.parse().unwrap())
}

fn web_slice(pod: &str, ip: &str, trigger: Option<&str>) -> SourceEvent {
    let endpoints = [(ip, "node-0", pod)];
    let yaml = match trigger {
        Some(t) => agent_common::slice_triggered("web-1", "web", &endpoints, t),
        None => agent_common::slice_now("web-1", "web", &endpoints),
    };
    SourceEvent::Applied(object(&yaml))
}

#[tokio::test]
async fn every_trigger_after_the_start_is_measured_and_relisted_away_ones_are_not() {
    let mut h = harness(Duration::from_mins(1));
    list_all(&mut h, free_port());
    h.reconciler.sync_if_due(Instant::now()).await.unwrap();
    assert_eq!(programmed_count(&h), 0, "the listing is no change");
    // Two changes of one slice before a sync: both measured (kube-proxy appends each).
    h.reconciler
        .handle(web_slice("pod-0-2", "10.244.0.12", None));
    h.reconciler
        .handle(web_slice("pod-0-3", "10.244.0.13", None));
    h.reconciler.sync(RunKind::Partial).await.report.unwrap();
    assert_eq!(programmed_count(&h), 2);
    // Triggered before the agent started: not measured (kube-proxy's trackerStartTime).
    h.reconciler.handle(web_slice(
        "pod-0-4",
        "10.244.0.14",
        Some("2020-01-01T00:00:00Z"),
    ));
    h.reconciler.sync(RunKind::Partial).await.report.unwrap();
    assert_eq!(programmed_count(&h), 2);
    // A change, then a relist without the slice: it is never programmed, not measured.
    h.reconciler
        .handle(web_slice("pod-0-5", "10.244.0.15", None));
    h.reconciler.handle(objects(Kind::EndpointSlice, &[]));
    h.reconciler.sync(RunKind::Partial).await.report.unwrap();
    assert_eq!(programmed_count(&h), 2);
}

#[tokio::test]
async fn a_failed_sync_is_timed_too() {
    let mut h = harness(Duration::from_mins(1));
    list_all(&mut h, free_port());
    h.fake.fail_next_apply(Fault::Kernel("refused".into()));
    assert!(h
        .reconciler
        .sync_if_due(Instant::now())
        .await
        .unwrap()
        .report
        .is_none());
    let text = h.metrics.encode();
    for expected in [
        r#"kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family="IPv4"} 1"#,
        r#"kubeproxy_sync_full_proxy_rules_duration_seconds_count{ip_family="IPv4"} 1"#,
        "dataplane_apply_errors_total 1",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
    assert!(
        !text.contains("kubeproxy_sync_proxy_rules_last_timestamp_seconds{"),
        "no successful sync yet: {text}"
    );
}

#[tokio::test]
async fn a_local_pod_without_an_interface_is_looked_for_again_soon() {
    use std::sync::atomic::{AtomicBool, Ordering};
    // The CNI has not added pod-0-1's route yet.
    let routed = Arc::new(AtomicBool::new(false));
    let r = Arc::clone(&routed);
    let interfaces = Arc::new(dataplane_agent::reconcile::FnInterfaces(
        move |_: &dataplane::ObjectName, ips: &[IpAddr]| {
            r.load(Ordering::SeqCst)
                .then(|| agent_common::harness::lab_veth(ips))
                .flatten()
        },
    ));
    let fake = dataplane::testing::FakeDataplane::new();
    let mut h = agent_common::harness::harness_full(
        Duration::from_mins(1),
        Box::new(fake.clone()),
        fake,
        interfaces,
    );
    list_all(&mut h, free_port());
    let outcome = h.reconciler.sync_if_due(Instant::now()).await.unwrap();
    assert_eq!(outcome.counts.1, 0, "no endpoint without an interface");
    // The next sync comes long before --sync-period (30 s), with no change to ask for it.
    let now = Instant::now();
    let next = h.reconciler.next_sync(now).unwrap();
    let sync_period = Periods::default().sync;
    assert!(next < now + sync_period / 2, "{:?}", next - now);
    // Still no route: the next look comes later (doubling), still before --sync-period.
    let outcome = h.reconciler.sync_if_due(next).await.expect("a sync is due");
    assert_eq!(outcome.counts.1, 0);
    let now = Instant::now();
    let later = h.reconciler.next_sync(now).unwrap();
    assert!(later - now > next.saturating_duration_since(now));
    assert!(later < now + sync_period / 2, "{:?}", later - now);
    let next = later;
    // The route appears; at that time a sync finds the pod.
    routed.store(true, Ordering::SeqCst);
    let outcome = h.reconciler.sync_if_due(next).await.expect("a sync is due");
    assert_eq!(outcome.counts.1, 1, "{outcome:?}");
    // Found: back to the periodic syncs.
    let now = Instant::now();
    assert!(h.reconciler.next_sync(now).unwrap() >= now + sync_period / 2);
}

#[tokio::test]
async fn a_burst_of_events_is_taken_in_bounded_turns() {
    use dataplane_agent::reconcile::MAX_BURST;
    let mut h = harness(Duration::from_mins(1));
    list_all(&mut h, free_port());
    let (tx, mut rx) = tokio::sync::mpsc::channel(MAX_BURST * 2);
    let event = || SourceEvent::Applied(object(&service("api", "10.96.0.20", 443, None)));
    for _ in 0..MAX_BURST + 10 {
        tx.try_send(event()).unwrap();
    }
    // The loop looks at its clock and shutdown between turns: a flood cannot starve them.
    let first = rx.try_recv().unwrap();
    assert_eq!(h.reconciler.take_burst(first, &mut rx), MAX_BURST);
    let first = rx.try_recv().unwrap();
    assert_eq!(h.reconciler.take_burst(first, &mut rx), 10);
    assert!(rx.try_recv().is_err());
}

/// A reading of the counters that took `t` is followed by the next no sooner than
/// `STATS_DUTY * t` later, and never sooner than `STATS_INTERVAL`: the dataplane's thread,
/// which a sync waits on, spends at most 1/`STATS_DUTY` of its time on counters.
#[test]
fn slow_counter_readings_are_spaced_by_how_long_they_took() {
    use dataplane_agent::reconcile::{stats_pause, STATS_DUTY, STATS_INTERVAL};
    assert_eq!(stats_pause(Duration::from_millis(2)), STATS_INTERVAL);
    assert_eq!(stats_pause(Duration::ZERO), STATS_INTERVAL);
    let nft = Duration::from_secs(3);
    assert_eq!(stats_pause(nft), nft * STATS_DUTY);
    assert!(stats_pause(nft) >= Duration::from_mins(2));
}
