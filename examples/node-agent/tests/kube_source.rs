//! The Kubernetes source against recorded API traffic.
//!
//! No API server can run here, so each test starts a fake one (`common::fake_api`): an
//! HTTP/1.1 server on 127.0.0.1 that answers the source's list and watch requests with recorded bodies from
//! `tests/kube_api/` (lists as kube-apiserver returns them — `{"kind":"ServiceList",
//! "metadata":{"resourceVersion":…},"items":[…]}`, items without `kind`/`apiVersion`; watches
//! as chunked newline-delimited events, one JSON object per line). Each test scripts the replies
//! per resource, records every request, and asserts both on the [`SourceEvent`]s the source
//! sends and on the requests it made (selectors, resource versions, relists).
//!
//! ```text
//!   kube_source::run ──kube::Client──▶ fake API server (127.0.0.1:port)
//!        │                  ├─ GET /api/v1/services?labelSelector=…&resourceVersion=0&…
//!        ▼                  │     ◀─ tests/kube_api/services.json
//!   mpsc<SourceEvent>       └─ GET /api/v1/services?watch=true&resourceVersion=1043&…
//!        ▲                        ◀─ tests/kube_api/services.watch-*.jsonl,
//!   test asserts                     then the stream is held open or closed
//! ```
//!
//! Nothing here is timed: every wait is for a condition, with a generous deadline that only
//! bounds a failing test.

mod common;

use std::{collections::BTreeMap, net::IpAddr, path::Path, time::Duration};

use common::fake_api::{FakeApi, Recorded, Reply};

use dataplane_agent::{kube_source, source::SourceEvent};
use dataplane_kube::{
    k8s_openapi::api::{
        core::v1::{Namespace, Node, Pod, Service},
        discovery::v1::EndpointSlice,
        networking::v1::NetworkPolicy,
    },
    Cluster, Kind, Object, ObjectKey, Settings, Translation,
};
use hyper::StatusCode;
use tokio::{sync::mpsc, task::JoinHandle};

/// Bounds a wait for something that should happen (the backoff before a retry is 0.8–1.6 s
/// after the first error): generous, so a slow machine does not fail a correct source.
const DEADLINE: Duration = Duration::from_secs(90);

const NODE: &str = "node-0";

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/kube_api")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The watch events of a recorded stream, one per line.
fn events(name: &str) -> Vec<String> {
    fixture(name).lines().map(str::to_owned).collect()
}

/// The recorded list of each kind.
fn list_fixture(kind: Kind) -> &'static str {
    match kind {
        Kind::Service => "services.json",
        Kind::EndpointSlice => "endpointslices.json",
        Kind::NetworkPolicy => "networkpolicies.json",
        Kind::Pod => "pods.json",
        Kind::Namespace => "namespaces.json",
        Kind::Node => "nodes.json",
        Kind::AdminNetworkPolicy => "adminnetworkpolicies.json",
        Kind::BaselineAdminNetworkPolicy => "baselineadminnetworkpolicies.json",
        Kind::HostEndpoint => "hostendpoints.json",
        Kind::GlobalNetworkPolicy => "globalnetworkpolicies.json",
        Kind::FelixConfiguration => "felixconfigurations.json",
    }
}

/// A fake API server that lists every kind from its recorded list and holds every watch
/// open.
fn recorded_api() -> FakeApi {
    let api = FakeApi::start();
    for kind in Kind::ALL {
        api.lists(kind, [Reply::Json(fixture(list_fixture(kind)))]);
    }
    api
}

/// The source under test, running until the test drops the receiver.
fn start_source(
    api: &FakeApi,
    proxy_name: Option<&'static str>,
) -> (mpsc::Receiver<SourceEvent>, JoinHandle<anyhow::Result<()>>) {
    let (tx, rx) = mpsc::channel(64);
    let client = api.client();
    let task = tokio::spawn(async move { kube_source::run(client, NODE, proxy_name, tx).await });
    (rx, task)
}

async fn next_event(rx: &mut mpsc::Receiver<SourceEvent>) -> SourceEvent {
    tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .expect("an event from the source")
        .expect("the source keeps running")
}

/// Receives events until `pick` takes one; returns what it took and the events before it.
async fn until<T>(
    rx: &mut mpsc::Receiver<SourceEvent>,
    what: &str,
    pick: impl Fn(SourceEvent) -> Result<T, SourceEvent>,
) -> (T, Vec<SourceEvent>) {
    let mut before = Vec::new();
    loop {
        let event = tokio::time::timeout(DEADLINE, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("waiting for {what}; saw {before:#?}"))
            .expect("the source keeps running");
        match pick(event) {
            Ok(picked) => return (picked, before),
            Err(other) => before.push(other),
        }
    }
}

/// The next `Listed` of `kind`: its objects, and the events before it.
async fn next_listed(
    rx: &mut mpsc::Receiver<SourceEvent>,
    kind: Kind,
) -> (Vec<Object>, Vec<SourceEvent>) {
    until(rx, &format!("a list of {kind}"), |event| match event {
        SourceEvent::Listed { kind: k, objects } if k == kind => Ok(objects),
        other => Err(other),
    })
    .await
}

/// The next `Error`: its kind and message, and the events before it.
async fn next_error(
    rx: &mut mpsc::Receiver<SourceEvent>,
) -> ((Option<Kind>, String), Vec<SourceEvent>) {
    until(rx, "an error", |event| match event {
        SourceEvent::Error { kind, message } => Ok((kind, message)),
        other => Err(other),
    })
    .await
}

/// The six initial `Listed` events, by kind; anything else first is a failure.
async fn initial_lists(rx: &mut mpsc::Receiver<SourceEvent>) -> BTreeMap<Kind, Vec<Object>> {
    let mut listed = BTreeMap::new();
    while listed.len() < Kind::ALL.len() {
        match next_event(rx).await {
            SourceEvent::Listed { kind, objects } => {
                assert!(
                    listed.insert(kind, objects).is_none(),
                    "{kind} listed twice before every kind listed once"
                );
            }
            other => panic!("before every kind listed: {other:?}"),
        }
    }
    listed
}

fn keys(objects: &[Object]) -> Vec<String> {
    let mut keys: Vec<String> = objects
        .iter()
        .map(|o| o.key().expect("listed objects have names").to_string())
        .collect();
    keys.sort();
    keys
}

fn key(kind: Kind, namespace: Option<&str>, name: &str) -> ObjectKey {
    ObjectKey {
        kind,
        namespace: namespace.map(Into::into),
        name: name.into(),
    }
}

/// The query every request of `kind` must carry: the selectors the source is documented to use.
fn assert_selectors(request: &Recorded, proxy_name: Option<&str>) {
    let (labels, fields) = match request.kind {
        Kind::Service => (
            Some(dataplane_kube::service_label_selector(proxy_name)),
            Some("spec.clusterIP!=None".to_owned()),
        ),
        Kind::EndpointSlice => (
            Some(dataplane_kube::endpoint_slice_label_selector(proxy_name)),
            None,
        ),
        Kind::Pod => (
            None,
            Some("status.phase!=Failed,status.phase!=Succeeded".to_owned()),
        ),
        Kind::Node
        | Kind::NetworkPolicy
        | Kind::Namespace
        | Kind::AdminNetworkPolicy
        | Kind::BaselineAdminNetworkPolicy
        | Kind::HostEndpoint
        | Kind::GlobalNetworkPolicy
        | Kind::FelixConfiguration => (None, None),
    };
    assert_eq!(
        request.param("labelSelector"),
        labels.as_deref(),
        "label selector of {request:?}"
    );
    assert_eq!(
        request.param("fieldSelector"),
        fields.as_deref(),
        "field selector of {request:?}"
    );
}

fn assert_params(request: &Recorded, expected: &[(&str, Option<&str>)]) {
    for (name, value) in expected {
        assert_eq!(request.param(name), *value, "{name} of {request:?}");
    }
}

#[tokio::test]
async fn initial_list_of_the_six_kinds() {
    let api = recorded_api();
    let (mut rx, _task) = start_source(&api, None);

    let listed = initial_lists(&mut rx).await;
    assert_eq!(
        keys(&listed[&Kind::Service]),
        ["Service default/kubernetes", "Service default/web"]
    );
    assert_eq!(
        keys(&listed[&Kind::EndpointSlice]),
        [
            "EndpointSlice default/kubernetes",
            "EndpointSlice default/web-7xk2p"
        ]
    );
    assert_eq!(
        keys(&listed[&Kind::NetworkPolicy]),
        ["NetworkPolicy default/allow-web"]
    );
    assert_eq!(
        keys(&listed[&Kind::Pod]),
        [
            "Pod default/client",
            "Pod default/web-0",
            "Pod kube-system/node-exporter-7kq2d"
        ]
    );
    assert_eq!(
        keys(&listed[&Kind::Namespace]),
        ["Namespace default", "Namespace kube-system"]
    );
    assert_eq!(keys(&listed[&Kind::Node]), ["Node node-0"]);

    // The objects arrive whole, without server-side apply's managedFields and kubectl's
    // last-applied copy; other annotations stay.
    let Some(Object::Service(web)) = listed[&Kind::Service]
        .iter()
        .find(|o| &*o.key().unwrap().name == "web")
    else {
        panic!("web is a Service");
    };
    let spec = web.spec.as_ref().expect("spec");
    assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.12.34"));
    assert_eq!(spec.ports.as_ref().unwrap()[0].port, 80);
    assert_eq!(web.metadata.managed_fields, None);
    let annotations = web.metadata.annotations.as_ref().expect("annotations");
    assert_eq!(
        annotations.keys().collect::<Vec<_>>(),
        ["example.com/owner"],
        "last-applied-configuration dropped, the rest kept"
    );
    let Object::Node(node) = &listed[&Kind::Node][0] else {
        panic!("a Node");
    };
    assert_eq!(
        node.spec.as_ref().unwrap().pod_cidrs.as_deref(),
        Some(&["10.244.0.0/24".to_owned()][..])
    );

    // One list per kind, from the watch cache (resourceVersion=0, as client-go's first list),
    // with the documented selectors; then a watch from the list's resourceVersion with
    // bookmarks.
    for kind in Kind::ALL {
        let lists = api.requests(kind, false);
        assert_eq!(lists.len(), 1, "{kind} listed once: {lists:?}");
        assert_selectors(&lists[0], None);
        assert_params(
            &lists[0],
            &[
                ("resourceVersion", Some("0")),
                ("resourceVersionMatch", Some("NotOlderThan")),
                ("limit", None),
            ],
        );

        let watches = api.wait_requests(kind, true, 1, DEADLINE).await;
        assert_selectors(&watches[0], None);
        assert_params(
            &watches[0],
            &[
                ("resourceVersion", Some("1043")),
                ("allowWatchBookmarks", Some("true")),
                ("sendInitialEvents", None),
            ],
        );
    }
}

#[tokio::test]
async fn a_proxy_name_selects_the_services_for_that_proxy() {
    let api = recorded_api();
    let (mut rx, _task) = start_source(&api, Some("dataplane"));
    initial_lists(&mut rx).await;
    for kind in [Kind::Service, Kind::EndpointSlice] {
        assert_selectors(&api.requests(kind, false)[0], Some("dataplane"));
        assert_selectors(
            &api.wait_requests(kind, true, 1, DEADLINE).await[0],
            Some("dataplane"),
        );
    }
    assert_ne!(
        dataplane_kube::service_label_selector(Some("dataplane")),
        dataplane_kube::service_label_selector(None),
        "the proxy name changes the selector"
    );
}

#[tokio::test]
async fn watch_events_become_applied_and_deleted() {
    let api = recorded_api();
    api.watches(
        Kind::Service,
        [Reply::Watch {
            events: events("services.watch-changes.jsonl"),
            hold: true,
        }],
    );
    api.watches(
        Kind::Pod,
        [Reply::Watch {
            events: events("pods.watch-finished.jsonl"),
            hold: true,
        }],
    );
    let (mut rx, _task) = start_source(&api, None);

    // Per kind, the list comes before the watch's events.
    let mut services = Vec::new();
    let mut pods = Vec::new();
    while services.len() < 4 || pods.len() < 2 {
        let event = next_event(&mut rx).await;
        match event.kind() {
            Some(Kind::Service) => services.push(event),
            Some(Kind::Pod) => pods.push(event),
            _ => {}
        }
    }
    assert!(
        matches!(&services[0], SourceEvent::Listed { objects, .. } if objects.len() == 2),
        "{:?}",
        services[0]
    );
    let port = |event: &SourceEvent| match event {
        SourceEvent::Applied(Object::Service(service)) => {
            assert_eq!(service.metadata.name.as_deref(), Some("api"));
            assert_eq!(service.metadata.managed_fields, None);
            service.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port
        }
        other => panic!("expected an applied Service, got {other:?}"),
    };
    assert_eq!(port(&services[1]), 9000, "ADDED");
    assert_eq!(port(&services[2]), 9090, "MODIFIED");
    assert_eq!(
        services[3],
        SourceEvent::Deleted(key(Kind::Service, Some("default"), "api")),
        "DELETED"
    );

    // A pod that finished leaves the field-selected watch as a deletion.
    assert!(
        matches!(&pods[0], SourceEvent::Listed { .. }),
        "{:?}",
        pods[0]
    );
    assert_eq!(
        pods[1],
        SourceEvent::Deleted(key(Kind::Pod, Some("default"), "client"))
    );
}

#[tokio::test]
async fn a_dropped_watch_resumes_from_the_last_bookmark() {
    let api = recorded_api();
    // The first watch sends an object (resourceVersion 1104) and a bookmark (1207), then the
    // connection ends; the next watch is held open.
    api.watches(
        Kind::EndpointSlice,
        [Reply::Watch {
            events: events("endpointslices.watch-bookmark.jsonl"),
            hold: false,
        }],
    );
    let (mut rx, _task) = start_source(&api, None);

    let (slice, before) = until(&mut rx, "the slice added on the watch", |e| match e {
        SourceEvent::Applied(Object::EndpointSlice(slice)) => Ok(slice),
        other => Err(other),
    })
    .await;
    assert!(
        before.iter().any(|e| matches!(
            e,
            SourceEvent::Listed { kind: Kind::EndpointSlice, objects } if objects.len() == 2
        )),
        "listed before the watch's events: {before:?}"
    );
    assert_eq!(slice.metadata.name.as_deref(), Some("api-q8w4n"));

    let watches = api
        .wait_requests(Kind::EndpointSlice, true, 2, DEADLINE)
        .await;
    assert_eq!(watches[0].param("resourceVersion"), Some("1043"));
    assert_eq!(
        watches[1].param("resourceVersion"),
        Some("1207"),
        "resumed from the bookmark, not from the last object (1104) or the list (1043)"
    );
    assert_selectors(&watches[1], None);
    assert_eq!(
        api.requests(Kind::EndpointSlice, false).len(),
        1,
        "a dropped watch is resumed, not relisted"
    );
}

#[tokio::test]
async fn a_410_gone_watch_relists() {
    let api = recorded_api();
    api.lists(
        Kind::Service,
        [
            Reply::Json(fixture("services.json")),
            Reply::Json(fixture("services-relist.json")),
        ],
    );
    api.watches(
        Kind::Service,
        [Reply::Watch {
            events: events("services.watch-gone.jsonl"),
            hold: true,
        }],
    );
    let (mut rx, _task) = start_source(&api, None);

    let (first, _) = next_listed(&mut rx, Kind::Service).await;
    assert_eq!(
        keys(&first),
        ["Service default/kubernetes", "Service default/web"]
    );

    let ((kind, message), _) = next_error(&mut rx).await;
    assert_eq!(kind, Some(Kind::Service));
    assert!(
        message.contains("too old resource version"),
        "the API server's message is kept: {message}"
    );

    let (relisted, _) = next_listed(&mut rx, Kind::Service).await;
    assert_eq!(
        keys(&relisted),
        ["Service default/kubernetes", "Service kube-system/kube-dns"],
        "the relist replaces the first list"
    );

    let lists = api.wait_requests(Kind::Service, false, 2, DEADLINE).await;
    assert_eq!(lists.len(), 2, "one relist: {lists:?}");
    assert_selectors(&lists[1], None);
    let watches = api.wait_requests(Kind::Service, true, 2, DEADLINE).await;
    assert_eq!(watches[0].param("resourceVersion"), Some("1043"));
    assert_eq!(
        watches[1].param("resourceVersion"),
        Some("1301"),
        "the new watch starts from the relist"
    );
}

#[tokio::test]
async fn a_server_error_is_reported_and_the_list_retried() {
    let api = recorded_api();
    api.lists(
        Kind::Namespace,
        [
            Reply::Status(
                StatusCode::INTERNAL_SERVER_ERROR,
                fixture("status-500.json"),
            ),
            Reply::Json(fixture("namespaces.json")),
        ],
    );
    let (mut rx, _task) = start_source(&api, None);

    let ((kind, message), before) = next_error(&mut rx).await;
    assert!(
        !before.iter().any(|e| e.kind() == Some(Kind::Namespace)),
        "nothing of Namespace before the error: {before:?}"
    );
    assert_eq!(kind, Some(Kind::Namespace));
    assert!(
        message.contains("etcdserver: request timed out"),
        "the API server's message is kept: {message}"
    );

    let (listed, _) = next_listed(&mut rx, Kind::Namespace).await;
    assert_eq!(
        keys(&listed),
        ["Namespace default", "Namespace kube-system"]
    );
    assert_eq!(api.requests(Kind::Namespace, false).len(), 2);
}

#[tokio::test]
async fn a_connection_error_on_a_watch_is_reported_and_the_watch_retried() {
    let api = recorded_api();
    api.watches(Kind::Node, [Reply::Hangup]);
    let (mut rx, _task) = start_source(&api, None);

    let ((kind, message), before) = next_error(&mut rx).await;
    assert!(
        before.iter().any(|e| matches!(
            e,
            SourceEvent::Listed {
                kind: Kind::Node,
                ..
            }
        )),
        "the Node listed before its watch failed: {before:?}"
    );
    assert_eq!(kind, Some(Kind::Node), "{message}");
    assert!(
        message.contains("connection closed"),
        "the transport's error is kept: {message}"
    );

    // After the backoff the watch is started again from the same resourceVersion: the list
    // is still good, nothing is relisted.
    let watches = api.wait_requests(Kind::Node, true, 2, DEADLINE).await;
    assert_eq!(watches[0].param("resourceVersion"), Some("1043"));
    assert_eq!(watches[1].param("resourceVersion"), Some("1043"));
    assert_selectors(&watches[1], None);
    assert_eq!(api.requests(Kind::Node, false).len(), 1);
}

#[tokio::test]
async fn the_source_stops_when_the_receiver_is_dropped() {
    let api = recorded_api();
    let (mut rx, task) = start_source(&api, None);
    initial_lists(&mut rx).await;
    // Every watch is now idle: the source must notice the closed channel without an event.
    drop(rx);
    let result = tokio::time::timeout(DEADLINE, task)
        .await
        .expect("the source returns")
        .expect("the source task does not panic");
    assert!(result.is_ok(), "{result:?}");
}

#[tokio::test]
async fn client_from_a_kubeconfig_file() {
    let api = recorded_api();
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = api.kubeconfig(dir.path(), Some("recorded-token"));
    let client = kube_source::client(Some(&path))
        .await
        .expect("client from kubeconfig");
    let (tx, mut rx) = mpsc::channel(64);
    let _task = kube_source::spawn(client, NODE.to_owned(), None, tx);
    initial_lists(&mut rx).await;
    assert_eq!(
        api.requests(Kind::Node, false)[0].authorization.as_deref(),
        Some("Bearer recorded-token"),
        "the kubeconfig's credentials are used"
    );

    let missing = dir.path().join("missing");
    let Err(error) = kube_source::client(Some(&missing)).await else {
        panic!("a client from a kubeconfig that does not exist");
    };
    assert!(
        format!("{error:#}").contains(&missing.display().to_string()),
        "the error names the file: {error:#}"
    );
}

/// The objects of a recorded list, parsed as they are (no slimming).
fn recorded_objects(kind: Kind) -> Vec<Object> {
    fn parse<K: serde::de::DeserializeOwned>(item: serde_json::Value) -> K {
        serde_json::from_value(item).expect("a recorded item")
    }
    let list: serde_json::Value =
        serde_json::from_str(&fixture(list_fixture(kind))).expect("a recorded list");
    let items = list["items"].as_array().expect("items").iter().cloned();
    items
        .map(|item| match kind {
            Kind::Service => Object::from(parse::<Service>(item)),
            Kind::EndpointSlice => Object::from(parse::<EndpointSlice>(item)),
            Kind::NetworkPolicy => Object::from(parse::<NetworkPolicy>(item)),
            Kind::Pod => Object::from(parse::<Pod>(item)),
            Kind::Namespace => Object::from(parse::<Namespace>(item)),
            Kind::Node => Object::from(parse::<Node>(item)),
            Kind::AdminNetworkPolicy => {
                Object::from(parse::<dataplane_kube::anp::AdminNetworkPolicy>(item))
            }
            Kind::BaselineAdminNetworkPolicy => Object::from(parse::<
                dataplane_kube::anp::BaselineAdminNetworkPolicy,
            >(item)),
            Kind::HostEndpoint => Object::from(parse::<dataplane_kube::calico::HostEndpoint>(item)),
            Kind::GlobalNetworkPolicy => {
                Object::from(parse::<dataplane_kube::calico::GlobalNetworkPolicy>(item))
            }
            Kind::FelixConfiguration => {
                Object::from(parse::<dataplane_kube::calico::FelixConfiguration>(item))
            }
        })
        .collect()
}

fn translate(lists: BTreeMap<Kind, Vec<Object>>) -> Translation {
    let template = dataplane::Node::new(NODE, [])
        .with_cluster_cidrs(["10.244.0.0/16".parse().unwrap()])
        .with_service_cidrs(["10.96.0.0/12".parse().unwrap()]);
    let mut cluster = Cluster::new(Settings::new(NODE, template));
    for (kind, objects) in lists {
        cluster
            .replace(kind, objects)
            .expect("the recorded objects");
    }
    // web-0 is this node's pod; its host-side interface as Calico would name it.
    let interfaces = |_: &dataplane::ObjectName, _: &[IpAddr]| Some("cali1a2b3c4d5e6".to_owned());
    cluster.translate(&interfaces).expect("a state")
}

#[tokio::test]
async fn slimmed_objects_translate_as_the_recorded_ones() {
    let api = recorded_api();
    let (mut rx, _task) = start_source(&api, None);
    let slimmed = initial_lists(&mut rx).await;
    let recorded: BTreeMap<Kind, Vec<Object>> = Kind::ALL
        .into_iter()
        .map(|kind| (kind, recorded_objects(kind)))
        .collect();

    // What the source dropped from the pods is most of them...
    let size = |objects: &[Object]| serde_json::to_string(&pods(objects)).unwrap().len();
    assert!(
        size(&slimmed[&Kind::Pod]) * 2 < size(&recorded[&Kind::Pod]),
        "slimmed pods {} bytes, recorded {}",
        size(&slimmed[&Kind::Pod]),
        size(&recorded[&Kind::Pod])
    );
    // ...and nothing the translation reads.
    let from_slimmed = translate(slimmed);
    let from_recorded = translate(recorded);
    assert_eq!(from_slimmed, from_recorded);

    // The comparison is worth something: the recorded objects make a state with a local
    // endpoint whose named port a policy uses, a peer pod, the policy and the service.
    let state = &from_recorded.state;
    let web = state
        .endpoints
        .iter()
        .find(|e| e.name.name == "web-0")
        .expect("web-0 is a local endpoint");
    assert!(!web.named_ports.is_empty(), "{web:?}");
    let client = state
        .pods
        .iter()
        .find(|p| p.name.name == "client")
        .expect("client is a peer pod");
    assert_eq!(client.ips.len(), 2, "dual-stack: {client:?}");
    let host_network = |name: &str| name.starts_with("node-exporter");
    assert!(
        !state.endpoints.iter().any(|e| host_network(&e.name.name))
            && !state.pods.iter().any(|p| host_network(&p.name.name)),
        "a host-network pod is neither an endpoint nor a peer: {state:#?}"
    );
    assert_eq!(state.policies.len(), 1, "{state:#?}");
    assert!(
        state.services.iter().any(|s| s.name.name == "web"),
        "{state:#?}"
    );
    // The policy tiers, read from dynamic objects as from the recorded ones: this node's
    // host endpoint only, and the failsafe ports of FelixConfiguration `default`.
    assert_eq!(state.cluster_policies.len(), 1, "{state:#?}");
    assert!(state.baseline_policy.is_some(), "{state:#?}");
    let endpoints: Vec<_> = state
        .host_endpoints
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(endpoints, ["node-0-eth0"]);
    assert_eq!(state.host_policies.len(), 1, "{state:#?}");
    assert_eq!(
        state.failsafe_ports.inbound,
        [
            dataplane::FailsafePort::tcp(22),
            dataplane::FailsafePort::tcp(6443)
        ]
    );
}

#[tokio::test]
async fn a_custom_resource_the_cluster_lacks_is_listed_empty() {
    let api = recorded_api();
    let not_found = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"the server could not find the requested resource","reason":"NotFound","details":{},"code":404}"#;
    api.lists(
        Kind::HostEndpoint,
        [Reply::Status(StatusCode::NOT_FOUND, not_found.to_owned())],
    );
    let (mut rx, _task) = start_source(&api, None);
    let listed = initial_lists(&mut rx).await;
    assert!(listed[&Kind::HostEndpoint].is_empty());
    assert_eq!(listed[&Kind::GlobalNetworkPolicy].len(), 1);
    // And that watch is not retried: one list, no watch.
    assert_eq!(api.requests(Kind::HostEndpoint, false).len(), 1);
    assert!(api.requests(Kind::HostEndpoint, true).is_empty());
}

#[tokio::test]
async fn a_custom_resource_with_a_rejected_field_is_an_error_naming_it() {
    let api = recorded_api();
    let list = fixture("globalnetworkpolicies.json").replace("has(host-endpoint)", "all()");
    api.lists(Kind::GlobalNetworkPolicy, [Reply::Json(list)]);
    let (mut rx, _task) = start_source(&api, None);
    let ((kind, message), _) = next_error(&mut rx).await;
    assert_eq!(kind, Some(Kind::GlobalNetworkPolicy));
    assert!(
        message.contains("GlobalNetworkPolicy block-flood: spec.selector:"),
        "{message}"
    );
}

fn pods(objects: &[Object]) -> Vec<&Pod> {
    objects
        .iter()
        .filter_map(|o| match o {
            Object::Pod(pod) => Some(&**pod),
            _ => None,
        })
        .collect()
}
