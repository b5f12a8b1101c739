//! The demo lab's cluster as Kubernetes manifests: what the node agents read from their
//! `--manifests` directory, written as `kubectl get -o yaml` prints objects (k8s-openapi types
//! serialised to YAML, `apiVersion` and `kind` included, multi-document files).
//!
//! The directory is the demo's stand-in for the API server, so it holds what a cluster would
//! hold for this lab: the Nodes (`InternalIP`, `podCIDRs`), the `default` Namespace with its
//! `kubernetes.io/metadata.name` label, a Pod per lab pod (nodeName, podIPs, labels and named
//! container ports), and Services with their EndpointSlices. The Services have no selector
//! and their slices are labelled `endpointslice.kubernetes.io/managed-by: dpctl-demo`: that is
//! how Kubernetes documents Services whose endpoints someone other than the EndpointSlice
//! controller manages, and it is what the demo does when it "scales" a backend away.
//!
//! Files are replaced by rename, never rewritten in place: a watcher never reads half a file
//! (the same reason kubelet swaps a symlink to update a mounted `ConfigMap`).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::Context;
use dataplane_testkit::{Lab, LabPod, POD_NAMESPACE, SERVER_PORT};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, LoadBalancerIngress, LoadBalancerStatus, Namespace, Node,
    NodeAddress, NodeSpec, NodeStatus, ObjectReference, Pod, PodCondition, PodIP, PodSpec,
    PodStatus, Service, ServicePort, ServiceSpec, ServiceStatus,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;

/// ClusterIP of `web`.
pub const CLUSTER_IP: &str = "10.96.0.10";
/// `web`'s LoadBalancer address (`status.loadBalancer.ingress`).
pub const LB_IP: &str = "172.18.200.10";
/// `web`'s `externalIPs` entry.
pub const EXTERNAL_IP: &str = "172.18.201.10";
/// `web`'s NodePort (TCP and UDP).
pub const NODE_PORT: u16 = 30080;
/// ClusterIP of `local`.
pub const LOCAL_IP: &str = "10.96.0.11";
/// `local`'s NodePort (`externalTrafficPolicy: Local`).
pub const LOCAL_NODE_PORT: u16 = 30081;
/// `local`'s `healthCheckNodePort`.
pub const HEALTH_NODE_PORT: u16 = 30090;
/// ClusterIP of the policy section's `api` service (one backend: pod-1-0).
pub const API_IP: &str = "10.96.0.13";
/// The policy the demo adds: pod-1-0 accepts only pod-0-0, on TCP [`SERVER_PORT`].
pub const POLICY: &str = "api-from-pod-0-0";
/// The AdminNetworkPolicy the demo adds: a Deny of [`POLICY_CLIENT`] to [`API_POD`] on TCP
/// [`SERVER_PORT`], which beats the NetworkPolicy [`POLICY`]'s Allow of the same traffic.
pub const ADMIN_POLICY: &str = "api-deny-pod-0-0";
/// Its rule.
pub const ADMIN_RULE: &str = "deny-pod-0-0";
/// The Calico HostEndpoint of node-0's uplink.
pub const HOST_ENDPOINT: &str = "node-0-uplink";
/// The untracked (`doNotTrack`) GlobalNetworkPolicy: denies [`BLOCKED_CIDR`].
pub const UNTRACKED_POLICY: &str = "drop-blocked";
/// The pre-DNAT GlobalNetworkPolicy: denies the external client's own address on `web`'s
/// NodePort ([`NODE_PORT`]) before DNAT.
pub const PRE_DNAT_POLICY: &str = "guard-web-nodeport";
/// The blocked range (inside the lab's underlay /16, where the external client gets its
/// second address [`BLOCKED_SOURCE`]).
pub const BLOCKED_CIDR: &str = "172.18.250.0/24";
/// The external client's second address, inside [`BLOCKED_CIDR`].
pub const BLOCKED_SOURCE: &str = "172.18.250.7";
/// The field manager the demo's EndpointSlices name.
const MANAGED_BY: &str = "dpctl-demo";

/// `web`'s backends before the edit: pod-0-0 on node-0, pod-1-0 and pod-1-1 on node-1.
pub const WEB_PODS: [&str; 3] = ["pod-0-0", "pod-1-0", "pod-1-1"];
/// The backend the edit scales `web` away from.
pub const SCALED_AWAY: &str = "pod-1-1";
/// `local`'s only backend (node-0).
pub const LOCAL_POD: &str = "pod-0-1";
/// `api`'s only backend (node-1), the pod the policy isolates.
pub const API_POD: &str = "pod-1-0";
/// The one client the policy lets in.
pub const POLICY_CLIENT: &str = "pod-0-0";

/// One manifest file: a name in the directory and its objects, each a YAML document.
#[derive(Debug, Clone)]
pub struct File {
    /// The file name (`web.yaml`).
    pub name: &'static str,
    /// The documents, already YAML.
    pub documents: Vec<String>,
}

impl File {
    /// The file's text: the documents separated by `---`.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for doc in &self.documents {
            out.push_str("---\n");
            out.push_str(doc);
            if !doc.ends_with('\n') {
                out.push('\n');
            }
        }
        out
    }
}

/// `object` as one YAML document.
fn yaml<T: Serialize>(object: &T, what: &str) -> anyhow::Result<String> {
    serde_saphyr::to_string(object).with_context(|| format!("writing {what} as YAML"))
}

/// Writes `file` into `dir`: first beside `dir` (in its parent, the same filesystem), then
/// renamed into place, so a watcher of `dir` sees the whole new file or the old one.
pub fn write(dir: &Path, file: &File) -> anyhow::Result<PathBuf> {
    let staging = dir
        .parent()
        .context("the manifest directory has a parent")?
        .join(format!(".{}.new", file.name));
    std::fs::write(&staging, file.text())
        .with_context(|| format!("writing {}", staging.display()))?;
    let target = dir.join(file.name);
    std::fs::rename(&staging, &target)
        .with_context(|| format!("moving {} into place", target.display()))?;
    Ok(target)
}

fn meta(namespace: Option<&str>, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: namespace.map(str::to_owned),
        ..ObjectMeta::default()
    }
}

fn labels<const N: usize>(pairs: [(&str, &str); N]) -> BTreeMap<String, String> {
    pairs
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// RFC 3339 in UTC, as the API server prints timestamps and annotations.
fn rfc3339(at: SystemTime) -> String {
    let secs = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    k8s_openapi::jiff::Timestamp::from_second(secs)
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)
        .to_string()
}

fn family(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

/// `nodes.yaml`: a Node per lab node, with its underlay addresses as `InternalIP` and its pod
/// CIDRs, Ready.
pub fn nodes(lab: &Lab) -> anyhow::Result<File> {
    let mut documents = Vec::new();
    for n in lab.nodes() {
        let cidrs: Vec<String> = n.pod_cidrs.iter().map(ToString::to_string).collect();
        let mut addresses: Vec<NodeAddress> = n
            .addresses
            .iter()
            .map(|a| NodeAddress {
                address: a.to_string(),
                type_: "InternalIP".to_owned(),
            })
            .collect();
        addresses.push(NodeAddress {
            address: n.name.clone(),
            type_: "Hostname".to_owned(),
        });
        let node = Node {
            metadata: ObjectMeta {
                labels: Some(labels([
                    ("kubernetes.io/hostname", n.name.as_str()),
                    ("kubernetes.io/os", "linux"),
                ])),
                ..meta(None, &n.name)
            },
            spec: Some(NodeSpec {
                pod_cidr: cidrs.first().cloned(),
                pod_cidrs: Some(cidrs),
                ..NodeSpec::default()
            }),
            status: Some(NodeStatus {
                addresses: Some(addresses),
                ..NodeStatus::default()
            }),
        };
        documents.push(yaml(&node, &format!("Node {}", n.name))?);
    }
    Ok(File {
        name: "nodes.yaml",
        documents,
    })
}

/// `namespace.yaml`: the lab pods' namespace, with the label the API server sets on every
/// namespace (what `namespaceSelector`s match).
pub fn namespace() -> anyhow::Result<File> {
    let ns = Namespace {
        metadata: ObjectMeta {
            labels: Some(labels([("kubernetes.io/metadata.name", POD_NAMESPACE)])),
            ..meta(None, POD_NAMESPACE)
        },
        ..Namespace::default()
    };
    Ok(File {
        name: "namespace.yaml",
        documents: vec![yaml(&ns, "Namespace default")?],
    })
}

fn pod(lab: &Lab, p: &LabPod) -> Pod {
    let node = lab.node(p.node);
    let port = |name: &str, protocol: &str| ContainerPort {
        name: Some(name.to_owned()),
        container_port: i32::from(SERVER_PORT),
        protocol: Some(protocol.to_owned()),
        ..ContainerPort::default()
    };
    Pod {
        metadata: ObjectMeta {
            // The label the testkit gives every lab pod: what the policy selects.
            labels: Some(labels([("app", p.name.as_str())])),
            ..meta(Some(POD_NAMESPACE), &p.name)
        },
        spec: Some(PodSpec {
            node_name: Some(node.name.clone()),
            containers: vec![Container {
                name: "server".to_owned(),
                image: Some("dataplane-testkit/echo".to_owned()),
                ports: Some(vec![port("http", "TCP"), port("dns", "UDP")]),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".to_owned()),
            host_ip: Some(node.addresses[0].to_string()),
            pod_ip: Some(p.addresses[0].to_string()),
            pod_ips: Some(
                p.addresses
                    .iter()
                    .map(|a| PodIP { ip: a.to_string() })
                    .collect(),
            ),
            conditions: Some(vec![PodCondition {
                type_: "Ready".to_owned(),
                status: "True".to_owned(),
                ..PodCondition::default()
            }]),
            ..PodStatus::default()
        }),
    }
}

/// `pods.yaml`: every lab pod, Running and Ready on its node.
pub fn pods(lab: &Lab) -> anyhow::Result<File> {
    let documents = lab
        .pods()
        .iter()
        .map(|p| yaml(&pod(lab, p), &format!("Pod default/{}", p.name)))
        .collect::<anyhow::Result<_>>()?;
    Ok(File {
        name: "pods.yaml",
        documents,
    })
}

/// A service port: `name`/`protocol` `port` to the pods' [`SERVER_PORT`] (by its container
/// port name, as Deployments usually say it), with `node_port` if given.
fn service_port(name: &str, protocol: &str, port: u16, node_port: Option<u16>) -> ServicePort {
    ServicePort {
        name: Some(name.to_owned()),
        protocol: Some(protocol.to_owned()),
        port: i32::from(port),
        target_port: Some(IntOrString::String(name.to_owned())),
        node_port: node_port.map(i32::from),
        ..ServicePort::default()
    }
}

/// The EndpointSlice of service `service` over the lab pods `pods` (by name), with the slice
/// ports `ports` (`(name, protocol)`, all on [`SERVER_PORT`]).
fn slice(
    lab: &Lab,
    service: &str,
    pods: &[&str],
    ports: &[(&str, &str)],
    changed: SystemTime,
) -> anyhow::Result<EndpointSlice> {
    let mut endpoints = Vec::new();
    let mut address_type = "IPv4";
    for name in pods {
        let p = lab
            .pod_by_name(name)
            .with_context(|| format!("the lab has {name}"))?;
        address_type = family(p.addresses[0]);
        endpoints.push(Endpoint {
            addresses: vec![p.addresses[0].to_string()],
            conditions: Some(EndpointConditions {
                ready: Some(true),
                serving: Some(true),
                terminating: Some(false),
            }),
            node_name: Some(lab.node(p.node).name.clone()),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".to_owned()),
                namespace: Some(POD_NAMESPACE.to_owned()),
                name: Some(p.name.clone()),
                ..ObjectReference::default()
            }),
            ..Endpoint::default()
        });
    }
    Ok(EndpointSlice {
        metadata: ObjectMeta {
            labels: Some(labels([
                ("kubernetes.io/service-name", service),
                ("endpointslice.kubernetes.io/managed-by", MANAGED_BY),
            ])),
            // kube-proxy's network-programming latency starts here.
            annotations: Some(labels([(
                "endpoints.kubernetes.io/last-change-trigger-time",
                rfc3339(changed).as_str(),
            )])),
            ..meta(Some(POD_NAMESPACE), &format!("{service}-demo"))
        },
        address_type: address_type.to_owned(),
        endpoints,
        ports: Some(
            ports
                .iter()
                .map(|(name, protocol)| EndpointPort {
                    name: Some((*name).to_owned()),
                    protocol: Some((*protocol).to_owned()),
                    port: Some(i32::from(SERVER_PORT)),
                    ..EndpointPort::default()
                })
                .collect(),
        ),
    })
}

/// A Service's status with no load-balancer address (`loadBalancer: {}`, as the API server
/// prints it when none was assigned).
fn no_load_balancer() -> ServiceStatus {
    ServiceStatus {
        load_balancer: Some(LoadBalancerStatus::default()),
        ..ServiceStatus::default()
    }
}

/// Service `name` (single-stack IPv4) of `type_` at `cluster_ip` with `ports`, no
/// load-balancer address assigned.
fn service(name: &str, type_: &str, cluster_ip: &str, ports: Vec<ServicePort>) -> Service {
    Service {
        metadata: meta(Some(POD_NAMESPACE), name),
        spec: Some(ServiceSpec {
            type_: Some(type_.to_owned()),
            cluster_ip: Some(cluster_ip.to_owned()),
            cluster_ips: Some(vec![cluster_ip.to_owned()]),
            ip_families: Some(vec!["IPv4".to_owned()]),
            ip_family_policy: Some("SingleStack".to_owned()),
            ports: Some(ports),
            ..ServiceSpec::default()
        }),
        status: Some(no_load_balancer()),
    }
}

/// The file `name` with a Service and its EndpointSlice.
fn service_file(
    name: &'static str,
    service: &Service,
    slice: &EndpointSlice,
) -> anyhow::Result<File> {
    let key = |m: &ObjectMeta| {
        format!(
            "{}/{}",
            m.namespace.as_deref().unwrap_or_default(),
            m.name.as_deref().unwrap_or_default()
        )
    };
    Ok(File {
        name,
        documents: vec![
            yaml(service, &format!("Service {}", key(&service.metadata)))?,
            yaml(slice, &format!("EndpointSlice {}", key(&slice.metadata)))?,
        ],
    })
}

/// `web.yaml`: Service `web` (type LoadBalancer with an assigned ingress IP, an externalIP,
/// TCP 80 and UDP 53 on one NodePort, `externalTrafficPolicy: Cluster`) and its EndpointSlice
/// over `backends` (pod names).
pub fn web(lab: &Lab, backends: &[&str], changed: SystemTime) -> anyhow::Result<File> {
    let mut web = service(
        "web",
        "LoadBalancer",
        CLUSTER_IP,
        vec![
            service_port("http", "TCP", 80, Some(NODE_PORT)),
            service_port("dns", "UDP", 53, Some(NODE_PORT)),
        ],
    );
    if let Some(spec) = web.spec.as_mut() {
        spec.external_ips = Some(vec![EXTERNAL_IP.to_owned()]);
        spec.external_traffic_policy = Some("Cluster".to_owned());
    }
    web.status = Some(ServiceStatus {
        load_balancer: Some(LoadBalancerStatus {
            ingress: Some(vec![LoadBalancerIngress {
                ip: Some(LB_IP.to_owned()),
                ip_mode: Some("VIP".to_owned()),
                ..LoadBalancerIngress::default()
            }]),
        }),
        ..ServiceStatus::default()
    });
    let ports = [("http", "TCP"), ("dns", "UDP")];
    service_file(
        "web.yaml",
        &web,
        &slice(lab, "web", backends, &ports, changed)?,
    )
}

/// `local.yaml`: Service `local`, `externalTrafficPolicy: Local` with a `healthCheckNodePort`
/// (type LoadBalancer, as Kubernetes allocates that port only there; no ingress IP is assigned,
/// as when no load-balancer controller runs), one backend on node-0.
pub fn local(lab: &Lab, changed: SystemTime) -> anyhow::Result<File> {
    let mut local = service(
        "local",
        "LoadBalancer",
        LOCAL_IP,
        vec![service_port("http", "TCP", 80, Some(LOCAL_NODE_PORT))],
    );
    if let Some(spec) = local.spec.as_mut() {
        spec.external_traffic_policy = Some("Local".to_owned());
        spec.health_check_node_port = Some(i32::from(HEALTH_NODE_PORT));
    }
    let ports = [("http", "TCP")];
    service_file(
        "local.yaml",
        &local,
        &slice(lab, "local", &[LOCAL_POD], &ports, changed)?,
    )
}

/// `api.yaml`: the policy section's ClusterIP service `api`, one backend (pod-1-0).
pub fn api(lab: &Lab, changed: SystemTime) -> anyhow::Result<File> {
    let api = service(
        "api",
        "ClusterIP",
        API_IP,
        vec![service_port("http", "TCP", 80, None)],
    );
    let ports = [("http", "TCP")];
    service_file(
        "api.yaml",
        &api,
        &slice(lab, "api", &[API_POD], &ports, changed)?,
    )
}

/// `policy.yaml`: NetworkPolicy [`POLICY`]: the pod `app=pod-1-0` accepts only `app=pod-0-0`
/// (same namespace), on TCP [`SERVER_PORT`] (the port after DNAT, as Kubernetes checks service
/// traffic).
pub fn policy() -> anyhow::Result<File> {
    let select = |pod: &str| LabelSelector {
        match_labels: Some(labels([("app", pod)])),
        ..LabelSelector::default()
    };
    let policy = NetworkPolicy {
        metadata: meta(Some(POD_NAMESPACE), POLICY),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(select(API_POD)),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![NetworkPolicyPeer {
                    pod_selector: Some(select(POLICY_CLIENT)),
                    ..NetworkPolicyPeer::default()
                }]),
                ports: Some(vec![NetworkPolicyPort {
                    protocol: Some("TCP".to_owned()),
                    port: Some(IntOrString::Int(i32::from(SERVER_PORT))),
                    ..NetworkPolicyPort::default()
                }]),
            }]),
            ..NetworkPolicySpec::default()
        }),
    };
    Ok(File {
        name: "policy.yaml",
        documents: vec![yaml(&policy, &format!("NetworkPolicy default/{POLICY}"))?],
    })
}

/// The AdminNetworkPolicy [`ADMIN_POLICY`] (`policy.networking.k8s.io/v1alpha1`).
pub fn admin_policy() -> anyhow::Result<File> {
    let pods = |app: &str| {
        serde_json::json!({
            "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": POD_NAMESPACE } },
            "podSelector": { "matchLabels": { "app": app } },
        })
    };
    let anp = serde_json::json!({
        "apiVersion": "policy.networking.k8s.io/v1alpha1",
        "kind": "AdminNetworkPolicy",
        "metadata": { "name": ADMIN_POLICY },
        "spec": {
            "priority": 10,
            "subject": { "pods": pods(API_POD) },
            "ingress": [{
                "name": ADMIN_RULE,
                "action": "Deny",
                "from": [{ "pods": pods(POLICY_CLIENT) }],
                "ports": [{ "portNumber": { "protocol": "TCP", "port": SERVER_PORT } }],
            }],
        },
    });
    Ok(File {
        name: "admin-policy.yaml",
        documents: vec![yaml(&anp, &format!("AdminNetworkPolicy {ADMIN_POLICY}"))?],
    })
}

/// Calico host endpoint policy for node-0's uplink: the HostEndpoint [`HOST_ENDPOINT`], the
/// untracked [`UNTRACKED_POLICY`] and the pre-DNAT [`PRE_DNAT_POLICY`]
/// (`projectcalico.org/v3`). Neither kind has a default deny, so the node's other traffic
/// (the agents' health ports, the other rows) is untouched.
pub fn host_policy(lab: &Lab) -> anyhow::Result<File> {
    let node = lab.node(0);
    let client = lab.external(0).addresses[0];
    let endpoint = serde_json::json!({
        "apiVersion": "projectcalico.org/v3",
        "kind": "HostEndpoint",
        "metadata": { "name": HOST_ENDPOINT, "labels": { "host-endpoint": "uplink" } },
        "spec": {
            "node": node.name,
            "interfaceName": node.uplink,
            "expectedIPs": [node.addresses[0].to_string()],
        },
    });
    let untracked = serde_json::json!({
        "apiVersion": "projectcalico.org/v3",
        "kind": "GlobalNetworkPolicy",
        "metadata": { "name": UNTRACKED_POLICY },
        "spec": {
            "order": 10,
            "selector": "host-endpoint == 'uplink'",
            "doNotTrack": true,
            "applyOnForward": true,
            "types": ["Ingress"],
            "ingress": [{ "action": "Deny", "source": { "nets": [BLOCKED_CIDR] } }],
        },
    });
    let pre_dnat = serde_json::json!({
        "apiVersion": "projectcalico.org/v3",
        "kind": "GlobalNetworkPolicy",
        "metadata": { "name": PRE_DNAT_POLICY },
        "spec": {
            "order": 20,
            "selector": "has(host-endpoint)",
            "preDNAT": true,
            "applyOnForward": true,
            "types": ["Ingress"],
            "ingress": [{
                "action": "Deny",
                "protocol": "TCP",
                "source": { "nets": [format!("{client}/32")] },
                "destination": { "ports": [NODE_PORT] },
            }],
        },
    });
    Ok(File {
        name: "host-policy.yaml",
        documents: vec![
            yaml(&endpoint, &format!("HostEndpoint {HOST_ENDPOINT}"))?,
            yaml(
                &untracked,
                &format!("GlobalNetworkPolicy {UNTRACKED_POLICY}"),
            )?,
            yaml(&pre_dnat, &format!("GlobalNetworkPolicy {PRE_DNAT_POLICY}"))?,
        ],
    })
}

/// The files of the demo's starting cluster.
pub fn initial(lab: &Lab, now: SystemTime) -> anyhow::Result<Vec<File>> {
    Ok(vec![
        nodes(lab)?,
        namespace()?,
        pods(lab)?,
        web(lab, &WEB_PODS, now)?,
        local(lab, now)?,
        api(lab, now)?,
    ])
}
