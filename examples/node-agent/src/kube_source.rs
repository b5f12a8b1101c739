//! The Kubernetes API server as a source: one kube-rs [`watcher()`] per kind, their events
//! turned into [`SourceEvent`]s on the agent's channel.
//!
//! ```text
//!  Services        label: dataplane_kube::service_label_selector ─┐
//!                  field: spec.clusterIP!=None                    │
//!  EndpointSlices  label: dataplane_kube::endpoint_slice_label_…  │
//!  NetworkPolicies all                                            ├─▶ watchers ─▶ SourceEvent
//!  Pods            field: status.phase!=Failed,…!=Succeeded       │   (Listed, Applied, Deleted,
//!                                                                 │   Error) ─▶ mpsc
//!  Namespaces      all                                            │
//!  Nodes           all (this node; the others as `nodes` peers)   │
//!  AdminNetworkPolicies, BaselineAdminNetworkPolicies,            │
//!  HostEndpoints, GlobalNetworkPolicies, FelixConfigurations      │
//!                  all, as dynamic objects (custom resources) ────┘
//! ```
//!
//! What each watch asks for, and why:
//! - Services and EndpointSlices are filtered on the server as kube-proxy filters them
//!   (`cmd/kube-proxy/app/server.go`, `ProxyServer.Run`:
//!   `!service.kubernetes.io/service-proxy-name` and `spec.clusterIP!=None` on Services,
//!   `!service.kubernetes.io/headless` on EndpointSlices). The label selectors come from
//!   [`dataplane_kube::service_label_selector`] and
//!   [`dataplane_kube::endpoint_slice_label_selector`], so that the translation and the watch
//!   agree on which objects are ours.
//! - Nodes are watched whole: the agent's own (addresses, podCIDRs, the draining taint), and
//!   the others for AdminNetworkPolicy `nodes` peers (the store keeps only their names,
//!   labels and addresses, so their status heartbeats are no change).
//! - The policy tier kinds (AdminNetworkPolicy and BaselineAdminNetworkPolicy of
//!   `policy.networking.k8s.io/v1alpha1`; Calico's HostEndpoint, GlobalNetworkPolicy and
//!   `FelixConfiguration` of `projectcalico.org/v3`) are custom resources: they are watched as
//!   dynamic objects and read into `dataplane_kube`'s types; one that does not read is an
//!   error naming it (and the store keeps its previous version). A cluster without the
//!   definition answers 404: that kind is then listed as empty (so that the agent syncs) and
//!   that watch ends (an agent restart picks up a definition installed later).
//! - Pods are watched cluster-wide, because NetworkPolicy peers are selected across namespaces
//!   and nodes, but without finished pods (`status.phase!=Failed,status.phase!=Succeeded`):
//!   a finished pod has released its address, which may already belong to another pod, and
//!   Calico drops such pods from policy for the same reason (libcalico-go
//!   `lib/backend/k8s/conversion`, `IsFinished`). Filtering on the server keeps completed Jobs
//!   out of the agent's memory; a pod that finishes leaves the watch as a `DELETED` event.
//! - Namespaces and network policies are watched whole.
//!
//! List semantic: the first list is served from the API server's watch cache
//! (`resourceVersion=0`), as client-go's reflector does for its first list
//! (`tools/cache/reflector.go`, `relistResourceVersion`: "for performance reasons, initial list
//! performed by reflector uses "0" as resource version to allow it to be served from the watch
//! cache"), so a DaemonSet of agents starting together does not make a read from etcd of every
//! Pod per node. kube-rs sends `resourceVersion=0` only on an unpaginated list (with a `limit` it
//! falls back to a read from etcd), so the watches ask for no pages: the watch cache answers a
//! `resourceVersion=0` list whole anyway. client-go switches to a consistent read for the relist
//! after a 410; kube-rs applies one semantic to every list, so a relist may be served from a
//! cache slightly behind, and the watch that follows from its resourceVersion brings it up to
//! date. Bookmarks are on (kube-rs' default), so a watch that drops resumes from the last
//! bookmark's `resourceVersion` instead of relisting; a watch that has fallen out of the server's
//! window (`410 Gone`/`Expired`) relists, and the relist is sent as a new
//! [`SourceEvent::Listed`]. Streaming lists (`sendInitialEvents`) are not used: they need the
//! `WatchList` feature on the server, and the plain list works everywhere.
//!
//! Each watch holds its own HTTP/1.1 connection (kube-rs' client speaks no HTTP/2), so an
//! agent keeps six connections to the API server where client-go multiplexes its informers
//! over one HTTP/2 connection.
//!
//! Objects are kept slim: `managedFields` and kubectl's last-applied copy go from every
//! object, and Pods keep only what the translation reads of them (metadata, `hostNetwork`,
//! `nodeName`, the containers' names and ports, `phase`, `podIP(s)`): a cluster's Pods are
//! most of what the agent watches, and the rest of a Pod is most of its size.
//!
//! Errors: every watcher error becomes a [`SourceEvent::Error`] naming the kind, and the watch
//! is retried after kube-rs'
//! [`default_backoff`](kube::runtime::WatchStreamExt::default_backoff), which is client-go's
//! reflector backoff: exponential from 800 ms, doubling, capped at 30 s, with jitter, starting
//! over once 120 s have passed since the last error. (The kube client itself retries only 429,
//! 503 and 504 answers, three times, before the watcher sees them.)

use std::{fmt::Debug, path::Path};

use anyhow::Context as _;
use dataplane_kube::{
    k8s_openapi::api::{
        core::v1::{Container, Namespace, Node, Pod, PodSpec, PodStatus, Service},
        discovery::v1::EndpointSlice,
        networking::v1::NetworkPolicy,
    },
    Kind, Object, ObjectKey,
};
use futures::{
    stream::{self, BoxStream},
    StreamExt as _,
};
use kube::{
    api::{ApiResource, DynamicObject, GroupVersionKind},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{watcher, WatchStreamExt as _},
    Api, Client, Resource,
};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use crate::source::SourceEvent;

/// Field selector of the Pod watch: every pod that may hold an address (see the module docs).
pub const POD_FIELD_SELECTOR: &str = "status.phase!=Failed,status.phase!=Succeeded";

/// Field selector of the Service watch: headless Services (`clusterIP: None`) have nothing to
/// proxy, and kube-proxy leaves them out on the server the same way (kubernetes/kubernetes
/// #126769, kube-proxy 1.32). API servers support this selector since 1.31 (#123905); an older
/// one rejects the Service watch with 400, which [`run`] reports as an error on every retry.
pub const SERVICE_FIELD_SELECTOR: &str = "spec.clusterIP!=None";

/// The annotation `kubectl apply` leaves on every object it applied: a full copy of the
/// object that nothing here reads.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// A client for the API server: from the kubeconfig file at `kubeconfig` (its current context)
/// when given, else the in-cluster configuration (the service account's token and CA, and
/// `KUBERNETES_SERVICE_HOST`/`_PORT`), as kube-proxy does when it has no `--kubeconfig`. A
/// `~/.kube/config` is deliberately not looked for: an agent in a pod must not pick up a
/// developer's credentials by accident.
///
/// # Errors
/// The kubeconfig cannot be read or has no usable context, the in-cluster environment is
/// missing, or the client cannot be built from the configuration.
pub async fn client(kubeconfig: Option<&Path>) -> anyhow::Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("loading kubeconfig {}", path.display()))?
        }
        None => kube::Config::incluster().context(
            "no --kubeconfig given and no in-cluster configuration \
             (service account token, KUBERNETES_SERVICE_HOST)",
        )?,
    };
    Client::try_from(config).context("building the Kubernetes client")
}

/// The watch configuration of each kind (selectors as described in the module docs).
///
/// `node_name` selects the Node; `proxy_name` is the `service.kubernetes.io/service-proxy-name`
/// this agent answers to.
#[must_use]
pub fn watch_config(kind: Kind, node_name: &str, proxy_name: Option<&str>) -> watcher::Config {
    let mut config = watcher::Config::default().any_semantic();
    // Without a limit: see "List semantic" in the module docs.
    config.page_size = None;
    match kind {
        Kind::Service => config
            .labels(&dataplane_kube::service_label_selector(proxy_name))
            .fields(SERVICE_FIELD_SELECTOR),
        Kind::EndpointSlice => {
            config.labels(&dataplane_kube::endpoint_slice_label_selector(proxy_name))
        }
        Kind::Pod => config.fields(POD_FIELD_SELECTOR),
        Kind::Node
        | Kind::NetworkPolicy
        | Kind::Namespace
        | Kind::AdminNetworkPolicy
        | Kind::BaselineAdminNetworkPolicy
        | Kind::HostEndpoint
        | Kind::GlobalNetworkPolicy
        | Kind::FelixConfiguration => {
            let _ = node_name;
            config
        }
    }
}

/// Watches every kind through `client` and sends what they see on `tx` until the receiver
/// is dropped (then returns `Ok`).
///
/// For each kind the first event is a [`SourceEvent::Listed`] with every object of the kind
/// (the watcher's per-object list events gathered into one), then [`SourceEvent::Applied`]
/// and [`SourceEvent::Deleted`] as the watch reports them, and a new `Listed` whenever the
/// watch had to relist. Errors never end the source: each is sent as a [`SourceEvent::Error`]
/// and the watch retries after a backoff.
///
/// # Errors
/// None today: the result leaves room for setup failures without changing the signature.
pub async fn run(
    client: Client,
    node_name: &str,
    proxy_name: Option<&str>,
    tx: mpsc::Sender<SourceEvent>,
) -> anyhow::Result<()> {
    let config = |kind| watch_config(kind, node_name, proxy_name);
    let mut events = stream::select_all([
        watch::<Service>(
            Api::all(client.clone()),
            config(Kind::Service),
            Kind::Service,
        ),
        watch::<EndpointSlice>(
            Api::all(client.clone()),
            config(Kind::EndpointSlice),
            Kind::EndpointSlice,
        ),
        watch::<NetworkPolicy>(
            Api::all(client.clone()),
            config(Kind::NetworkPolicy),
            Kind::NetworkPolicy,
        ),
        watch::<Pod>(Api::all(client.clone()), config(Kind::Pod), Kind::Pod),
        watch::<Namespace>(
            Api::all(client.clone()),
            config(Kind::Namespace),
            Kind::Namespace,
        ),
        watch::<Node>(Api::all(client.clone()), config(Kind::Node), Kind::Node),
        watch_policy_tier(&client, Kind::AdminNetworkPolicy),
        watch_policy_tier(&client, Kind::BaselineAdminNetworkPolicy),
        watch_policy_tier(&client, Kind::HostEndpoint),
        watch_policy_tier(&client, Kind::GlobalNetworkPolicy),
        watch_policy_tier(&client, Kind::FelixConfiguration),
    ]);
    loop {
        // Waiting on `closed` as well lets the source stop while every watch is idle, instead
        // of on the next event (which may be minutes away).
        let event = tokio::select! {
            () = tx.closed() => return Ok(()),
            event = events.next() => event,
        };
        // The watchers retry forever, so their merged stream never ends.
        let Some(event) = event else { return Ok(()) };
        if tx.send(event).await.is_err() {
            return Ok(());
        }
    }
}

/// [`run`] on its own task, for callers that hold owned names (the agent's command line): the
/// task ends when the receiver of `tx` is dropped.
pub fn spawn(
    client: Client,
    node_name: String,
    proxy_name: Option<String>,
    tx: mpsc::Sender<SourceEvent>,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    tokio::spawn(async move { run(client, &node_name, proxy_name.as_deref(), tx).await })
}

/// One kind's watch as a stream of source events.
///
/// The watcher reports a list as `Init`, `InitApply` per object, `InitDone`; the objects are
/// gathered between `Init` and `InitDone` and sent as one `Listed`, which is what the store's
/// `replace` wants. A list that fails halfway starts over with a new `Init`, which drops the
/// partial buffer.
fn watch<K>(api: Api<K>, config: watcher::Config, kind: Kind) -> BoxStream<'static, SourceEvent>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    Object: From<K>,
{
    let mut listing: Option<Vec<Object>> = None;
    watcher(api, config)
        .default_backoff()
        .filter_map(move |event| {
            let event = match event {
                Ok(watcher::Event::Init) => {
                    listing = Some(Vec::new());
                    None
                }
                Ok(watcher::Event::InitApply(object)) => {
                    listing.get_or_insert_with(Vec::new).push(slim(object));
                    None
                }
                Ok(watcher::Event::InitDone) => Some(SourceEvent::Listed {
                    kind,
                    objects: listing.take().unwrap_or_default(),
                }),
                Ok(watcher::Event::Apply(object)) => Some(SourceEvent::Applied(slim(object))),
                Ok(watcher::Event::Delete(object)) => Some(match Object::from(object).key() {
                    Ok(key) => SourceEvent::Deleted(key),
                    Err(error) => SourceEvent::Error {
                        kind: Some(kind),
                        message: format!("watch of {kind}: deleted object ignored: {error}"),
                    },
                }),
                Err(error) => Some(SourceEvent::Error {
                    kind: Some(kind),
                    message: format!("watch of {kind}: {}", error_chain(&error)),
                }),
            };
            std::future::ready(event)
        })
        .boxed()
}

/// The watch of a policy tier kind (a custom resource) as dynamic objects, read into
/// `dataplane_kube`'s types. A 404 (the definition is not installed) is sent as an empty
/// listing as well as an error, so that the agent does not wait for a kind the cluster
/// does not have.
fn watch_policy_tier(client: &Client, kind: Kind) -> BoxStream<'static, SourceEvent> {
    let (group, version) = kind
        .api_version()
        .split_once('/')
        .unwrap_or(("", kind.api_version()));
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(group, version, kind.name()),
        kind.plural(),
    );
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    let config = watch_config(kind, "", None);
    let read = move |object: DynamicObject| -> Result<Object, String> {
        let name = object.metadata.name.clone().unwrap_or_default();
        let mut value = serde_json::to_value(&object).map_err(|e| e.to_string())?;
        // A list's items come without them.
        if let Some(map) = value.as_object_mut() {
            map.insert("apiVersion".into(), kind.api_version().into());
            map.insert("kind".into(), kind.name().into());
        }
        if let Some(meta) = value.get_mut("metadata").and_then(|m| m.as_object_mut()) {
            meta.remove("managedFields");
            if let Some(a) = meta.get_mut("annotations").and_then(|a| a.as_object_mut()) {
                a.remove(LAST_APPLIED);
            }
        }
        dataplane_kube::parse_value(&value)
            .map_err(|e| format!("watch of {kind}: {kind} {name}: {e}"))
    };
    let mut listing: Option<Vec<Object>> = None;
    // `None` ends the watch (the kind is not served).
    watcher(api, config)
        .default_backoff()
        .flat_map(move |event| {
            let events: Vec<Option<SourceEvent>> = match event {
                Ok(watcher::Event::Init) => {
                    listing = Some(Vec::new());
                    vec![]
                }
                Ok(watcher::Event::InitApply(object)) => match read(object) {
                    Ok(o) => {
                        listing.get_or_insert_with(Vec::new).push(o);
                        vec![]
                    }
                    Err(message) => vec![Some(SourceEvent::Error {
                        kind: Some(kind),
                        message,
                    })],
                },
                Ok(watcher::Event::InitDone) => vec![Some(SourceEvent::Listed {
                    kind,
                    objects: listing.take().unwrap_or_default(),
                })],
                Ok(watcher::Event::Apply(object)) => vec![Some(match read(object) {
                    Ok(o) => SourceEvent::Applied(o),
                    Err(message) => SourceEvent::Error {
                        kind: Some(kind),
                        message,
                    },
                })],
                Ok(watcher::Event::Delete(object)) => {
                    vec![Some(match object.metadata.name {
                        Some(name) => SourceEvent::Deleted(ObjectKey::cluster(kind, name)),
                        None => SourceEvent::Error {
                            kind: Some(kind),
                            message: format!("watch of {kind}: deleted object without a name"),
                        },
                    })]
                }
                Err(error) => {
                    let missing = matches!(
                        &error,
                        watcher::Error::InitialListFailed(kube::Error::Api(status))
                            if status.code == 404
                    );
                    if missing {
                        // Listed as empty, and not watched again: a cluster without the
                        // definition would otherwise be asked for it every 30 s by every
                        // agent. A definition installed later needs an agent restart.
                        tracing::info!(%kind, "not served by this cluster: taken as empty");
                        vec![
                            Some(SourceEvent::Listed {
                                kind,
                                objects: Vec::new(),
                            }),
                            None,
                        ]
                    } else {
                        vec![Some(SourceEvent::Error {
                            kind: Some(kind),
                            message: format!("watch of {kind}: {}", error_chain(&error)),
                        })]
                    }
                }
            };
            stream::iter(events)
        })
        .take_while(|event| std::future::ready(event.is_some()))
        .filter_map(std::future::ready)
        .boxed()
}

/// The object as the store keeps it: without what the translation never reads and that can
/// outweigh the rest. From every object, `metadata.managedFields` (server-side apply's
/// bookkeeping) and kubectl's last-applied copy, as kube-rs suggests with
/// [`watcher::Event::modify`]; from Pods, everything but what [`dataplane_kube`] reads of
/// them (see [`slim_pod`]). The agent's memory then grows with what it uses: the Pods of a
/// cluster are most of what it watches, and a Pod's containers (images, commands,
/// environment, probes, volume mounts) and container statuses are most of a Pod. Cilium keeps
/// "slim" copies of the Kubernetes types for the same reason (`pkg/k8s/slim`).
fn slim<K: Resource>(mut object: K) -> Object
where
    Object: From<K>,
{
    let metadata = object.meta_mut();
    metadata.managed_fields = None;
    if let Some(annotations) = &mut metadata.annotations {
        annotations.remove(LAST_APPLIED);
    }
    match Object::from(object) {
        Object::Pod(pod) => Object::Pod(Box::new(slim_pod(*pod))),
        other => other,
    }
}

/// A Pod reduced to what the translation reads (dataplane-kube's `pod.rs`): the metadata
/// (name, namespace, labels, deletionTimestamp), `spec.hostNetwork`, `spec.nodeName`, the
/// containers' names and ports (NetworkPolicy named ports) and, of init containers, the same
/// plus `restartPolicy` (sidecars' ports are the pod's too), `status.phase`, `status.podIP`
/// and `status.podIPs`. A field the translation starts to read must be kept here: the test
/// `slimmed_objects_translate_as_the_recorded_ones` compares the translation of slimmed and
/// recorded objects.
fn slim_pod(pod: Pod) -> Pod {
    let Pod {
        metadata,
        spec,
        status,
    } = pod;
    Pod {
        metadata,
        spec: spec.map(|spec| PodSpec {
            host_network: spec.host_network,
            node_name: spec.node_name,
            containers: spec.containers.into_iter().map(slim_container).collect(),
            init_containers: spec
                .init_containers
                .map(|containers| containers.into_iter().map(slim_container).collect()),
            ..PodSpec::default()
        }),
        status: status.map(|status| PodStatus {
            phase: status.phase,
            pod_ip: status.pod_ip,
            pod_ips: status.pod_ips,
            ..PodStatus::default()
        }),
    }
}

fn slim_container(container: Container) -> Container {
    Container {
        name: container.name,
        ports: container.ports,
        restart_policy: container.restart_policy,
        ..Container::default()
    }
}

/// An error and its causes on one line, because the event carries a string and the causes say
/// what went wrong. Unlike `dataplane::error_chain` it skips a cause whose text the message
/// already holds: kube-rs' errors print their source inside their own message (`failed to
/// perform initial object list: {source}`).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        // kube-rs' errors repeat their source in their own message; skip what is already said.
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}
