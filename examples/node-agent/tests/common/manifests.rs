//! The manifest directories the agents read (one per node: each agent watches its own, the
//! test writes the same cluster objects into every one), and the objects, written as
//! `kubectl get -o yaml` prints them.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use dataplane_testkit::{Family, Lab, LabPod, POD_NAMESPACE, SERVER_PORT};

/// Prefix of the manifest directories, followed by the test process's PID.
const DIR_PREFIX: &str = "dp-e2e-";

/// Removes the manifest directories (and agent logs) of test processes that no longer exist:
/// a run killed with SIGKILL cannot drop its `TempDir`.
fn sweep_stale_dirs() {
    let Ok(dir) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in dir.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(DIR_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// `<tempdir>/node-<i>/` for each node, plus a staging directory: a file is written there
/// and renamed into place, so an agent never reads half a file.
#[derive(Debug)]
pub struct ManifestDirs {
    root: tempfile::TempDir,
    nodes: usize,
}

impl ManifestDirs {
    /// Empty directories for `nodes` nodes.
    pub fn new(nodes: usize) -> Self {
        sweep_stale_dirs();
        let root = tempfile::Builder::new()
            .prefix(&format!("{DIR_PREFIX}{}-", std::process::id()))
            .tempdir()
            .expect("temporary directory");
        for i in 0..nodes {
            std::fs::create_dir(root.path().join(format!("node-{i}"))).expect("node directory");
        }
        std::fs::create_dir(root.path().join("staging")).expect("staging directory");
        Self { root, nodes }
    }

    /// The root (agents' logs go here too).
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// The directory node `i`'s agent reads.
    pub fn dir(&self, node: usize) -> PathBuf {
        self.root.path().join(format!("node-{node}"))
    }

    /// Writes (or replaces) `file` with `yaml` in every node's directory.
    pub fn write(&self, file: &str, yaml: &str) {
        for i in 0..self.nodes {
            let staged = self.root.path().join("staging").join(file);
            std::fs::write(&staged, yaml).expect("write a manifest");
            std::fs::rename(&staged, self.dir(i).join(file)).expect("move a manifest in");
        }
    }

    /// Deletes `file` from every node's directory.
    pub fn remove(&self, file: &str) {
        for i in 0..self.nodes {
            std::fs::remove_file(self.dir(i).join(file)).expect("remove a manifest");
        }
    }
}

/// `item(x)` for each of `items`, one per line.
fn yaml_list<T>(items: &[T], item: impl Fn(&T) -> String) -> String {
    items.iter().map(item).collect::<Vec<String>>().join("\n")
}

/// A deterministic object UID.
fn uid(kind: u8, index: usize) -> String {
    format!(
        "6c1b{kind:02x}00-0000-4000-8000-{:012x}",
        index & 0xffff_ffff_ffff
    )
}

/// A deterministic number for a name (FNV-1a), for UIDs of named objects.
fn name_hash(name: &str) -> usize {
    name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    }) as usize
}

/// The lab's cluster as Kubernetes sees it: a Node per lab node (`InternalIP`, `podCIDRs`), the
/// `default` Namespace, and a running Pod per lab pod (nodeName, podIPs, label
/// `app=<pod name>` like [`LabPod::endpoint`]).
pub fn cluster(lab: &Lab) -> String {
    let mut out = String::new();
    for node in lab.nodes() {
        let cidrs: Vec<String> = node.pod_cidrs.iter().map(ToString::to_string).collect();
        let _ = write!(
            out,
            "---
apiVersion: v1
kind: Node
metadata:
  creationTimestamp: \"2026-01-01T00:00:00Z\"
  labels:
    kubernetes.io/arch: amd64
    kubernetes.io/hostname: {name}
    kubernetes.io/os: linux
  name: {name}
  resourceVersion: \"{rv}\"
  uid: {uid}
spec:
  podCIDR: {cidr}
  podCIDRs:
{cidrs}
status:
  addresses:
{addresses}
  - address: {name}
    type: Hostname
  conditions:
  - lastHeartbeatTime: \"2026-01-01T00:00:00Z\"
    lastTransitionTime: \"2026-01-01T00:00:00Z\"
    message: kubelet is posting ready status
    reason: KubeletReady
    status: \"True\"
    type: Ready
",
            name = node.name,
            rv = 100 + node.index,
            uid = uid(1, node.index),
            cidr = cidrs[0],
            cidrs = yaml_list(&cidrs, |c| format!("  - {c}")),
            addresses = yaml_list(&node.addresses, |a| format!(
                "  - address: {a}\n    type: InternalIP"
            )),
        );
    }
    let _ = write!(
        out,
        "---
apiVersion: v1
kind: Namespace
metadata:
  creationTimestamp: \"2026-01-01T00:00:00Z\"
  labels:
    kubernetes.io/metadata.name: {POD_NAMESPACE}
  name: {POD_NAMESPACE}
  resourceVersion: \"10\"
  uid: {uid}
spec:
  finalizers:
  - kubernetes
status:
  phase: Active
",
        uid = uid(2, 0)
    );
    for pod in lab.pods() {
        out.push_str(&pod_yaml(lab, pod));
    }
    out
}

fn pod_yaml(lab: &Lab, pod: &LabPod) -> String {
    let node = lab.node(pod.node);
    format!(
        "---
apiVersion: v1
kind: Pod
metadata:
  creationTimestamp: \"2026-01-01T00:00:00Z\"
  labels:
    app: {name}
  name: {name}
  namespace: {POD_NAMESPACE}
  resourceVersion: \"{rv}\"
  uid: {uid}
spec:
  containers:
  - args:
    - netexec
    - --http-port={SERVER_PORT}
    image: registry.k8s.io/e2e-test-images/agnhost:2.53
    imagePullPolicy: IfNotPresent
    name: server
    ports:
    - containerPort: {SERVER_PORT}
      name: http
      protocol: TCP
  dnsPolicy: ClusterFirst
  nodeName: {node}
  restartPolicy: Always
status:
  conditions:
  - lastProbeTime: null
    lastTransitionTime: \"2026-01-01T00:00:00Z\"
    status: \"True\"
    type: Ready
  hostIP: {host_ip}
  hostIPs:
  - ip: {host_ip}
  phase: Running
  podIP: {ip}
  podIPs:
{ips}
",
        name = pod.name,
        rv = 1000 + pod.index,
        uid = uid(3, pod.index),
        node = node.name,
        host_ip = node.addresses[0],
        ip = pod.addresses[0],
        ips = yaml_list(&pod.addresses, |a| format!("  - ip: {a}")),
    )
}

/// How a Service is exposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceType {
    /// ClusterIP only.
    ClusterIp,
    /// ClusterIP and a NodePort.
    NodePort,
    /// ClusterIP, a NodePort and a load-balancer address in its status.
    LoadBalancer,
}

/// A TCP Service with one port `http`: `port` → the lab servers' [`SERVER_PORT`].
#[derive(Debug, Clone, Copy)]
pub struct ServiceDef<'a> {
    /// Name in namespace `default`.
    pub name: &'a str,
    /// Its ClusterIP.
    pub cluster_ip: &'a str,
    /// Its IPv6 ClusterIP: a dual-stack service (`RequireDualStack`, IPv4 first).
    pub cluster_ip_v6: Option<&'a str>,
    /// The service port.
    pub port: u16,
    /// Its type.
    pub kind: ServiceType,
    /// The NodePort (NodePort and LoadBalancer services).
    pub node_port: Option<u16>,
    /// `externalTrafficPolicy: Local`.
    pub local: bool,
    /// `healthCheckNodePort` (LoadBalancer services with `externalTrafficPolicy: Local`).
    pub health_check_node_port: Option<u16>,
    /// The load balancer's addresses in `status.loadBalancer.ingress` (one per family).
    pub load_balancer_ips: &'a [&'a str],
    /// Also a UDP port `dns`: the same port (and NodePort) number → the servers' UDP
    /// [`SERVER_PORT`].
    pub udp: bool,
}

impl<'a> ServiceDef<'a> {
    /// A ClusterIP service.
    pub fn cluster_ip(name: &'a str, cluster_ip: &'a str, port: u16) -> Self {
        Self {
            name,
            cluster_ip,
            cluster_ip_v6: None,
            port,
            kind: ServiceType::ClusterIp,
            node_port: None,
            local: false,
            health_check_node_port: None,
            load_balancer_ips: &[],
            udp: false,
        }
    }
}

/// The Service object.
pub fn service(def: &ServiceDef<'_>) -> String {
    let kind = match def.kind {
        ServiceType::ClusterIp => "ClusterIP",
        ServiceType::NodePort => "NodePort",
        ServiceType::LoadBalancer => "LoadBalancer",
    };
    let mut spec = String::new();
    if def.kind == ServiceType::LoadBalancer {
        spec.push_str("  allocateLoadBalancerNodePorts: true\n");
    }
    let _ = write!(
        spec,
        "  clusterIP: {ip}\n  clusterIPs:\n  - {ip}\n",
        ip = def.cluster_ip
    );
    if let Some(ip) = def.cluster_ip_v6 {
        let _ = writeln!(spec, "  - {ip}");
    }
    if def.kind != ServiceType::ClusterIp {
        let policy = if def.local { "Local" } else { "Cluster" };
        let _ = writeln!(spec, "  externalTrafficPolicy: {policy}");
    }
    if let Some(port) = def.health_check_node_port {
        let _ = writeln!(spec, "  healthCheckNodePort: {port}");
    }
    spec.push_str(if def.cluster_ip_v6.is_some() {
        "  internalTrafficPolicy: Cluster\n  ipFamilies:\n  - IPv4\n  - IPv6\n  \
         ipFamilyPolicy: RequireDualStack\n"
    } else {
        "  internalTrafficPolicy: Cluster\n  ipFamilies:\n  - IPv4\n  ipFamilyPolicy: SingleStack\n"
    });
    spec.push_str("  ports:\n");
    let mut ports = vec![("http", "TCP")];
    if def.udp {
        ports.push(("dns", "UDP"));
    }
    for (name, protocol) in ports {
        let _ = writeln!(spec, "  - name: {name}");
        if let Some(port) = def.node_port {
            let _ = writeln!(spec, "    nodePort: {port}");
        }
        let _ = write!(
            spec,
            "    port: {port}\n    protocol: {protocol}\n    targetPort: {name}\n",
            port = def.port,
        );
    }
    let _ = write!(
        spec,
        "  selector:\n    app: {name}\n  sessionAffinity: None\n  type: {kind}\n",
        name = def.name,
    );
    let status = if def.load_balancer_ips.is_empty() {
        "  loadBalancer: {}\n".to_owned()
    } else {
        let mut status = "  loadBalancer:\n    ingress:\n".to_owned();
        for ip in def.load_balancer_ips {
            let _ = write!(status, "    - ip: {ip}\n      ipMode: VIP\n");
        }
        status
    };
    format!(
        "---
apiVersion: v1
kind: Service
metadata:
  creationTimestamp: \"2026-01-01T00:00:00Z\"
  name: {name}
  namespace: {POD_NAMESPACE}
  resourceVersion: \"2000\"
  uid: {uid}
spec:
{spec}status:
{status}",
        name = def.name,
        uid = uid(4, name_hash(def.name)),
    )
}

/// The EndpointSlice of service `service` (one per service here: `<service>-e2e`) with the
/// lab pods `pods` (lab-wide indices) as ready endpoints on their nodes, port `http` =
/// [`SERVER_PORT`]; with `trigger`, the `endpoints.kubernetes.io/last-change-trigger-time`
/// annotation the EndpointSlice controller sets (whole seconds, RFC 3339, as it writes it).
pub fn endpoint_slice(
    lab: &Lab,
    service: &str,
    pods: &[usize],
    trigger: Option<SystemTime>,
) -> String {
    endpoint_slice_of(lab, service, pods, trigger, Family::V4, false)
}

/// [`endpoint_slice`] of address family `family` (the EndpointSlice controller writes one
/// slice per family: `<service>-e2e` for IPv4, `<service>-e2e-v6` for IPv6), with the UDP
/// port `dns` too when `udp`.
pub fn endpoint_slice_of(
    lab: &Lab,
    service: &str,
    pods: &[usize],
    trigger: Option<SystemTime>,
    family: Family,
    udp: bool,
) -> String {
    let (address_type, suffix) = match family {
        Family::V4 => ("IPv4", ""),
        Family::V6 => ("IPv6", "-v6"),
    };
    let annotations = trigger.map_or_else(String::new, |t| {
        format!(
            "  annotations:\n    endpoints.kubernetes.io/last-change-trigger-time: \"{}\"\n",
            rfc3339(t)
        )
    });
    let endpoints = if pods.is_empty() {
        "endpoints: []\n".to_owned()
    } else {
        let mut e = "endpoints:\n".to_owned();
        for &p in pods {
            let pod = lab.pod(p);
            let _ = write!(
                e,
                "- addresses:
  - {ip}
  conditions:
    ready: true
    serving: true
    terminating: false
  nodeName: {node}
  targetRef:
    kind: Pod
    name: {name}
    namespace: {POD_NAMESPACE}
    uid: {uid}
",
                ip = pod
                    .address(family)
                    .unwrap_or_else(|| panic!("{} has no {family:?} address", pod.name)),
                node = lab.node(pod.node).name,
                name = pod.name,
                uid = uid(3, pod.index),
            );
        }
        e
    };
    format!(
        "---
addressType: {address_type}
apiVersion: discovery.k8s.io/v1
{endpoints}kind: EndpointSlice
metadata:
{annotations}  creationTimestamp: \"2026-01-01T00:00:00Z\"
  generateName: {service}-
  generation: 1
  labels:
    endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io
    kubernetes.io/service-name: {service}
  name: {service}-e2e{suffix}
  namespace: {POD_NAMESPACE}
  resourceVersion: \"3000\"
  uid: {uid}
ports:
- name: http
  port: {SERVER_PORT}
  protocol: TCP
{udp}",
        uid = uid(5, name_hash(service).wrapping_add(suffix.len())),
        udp = if udp {
            format!("- name: dns\n  port: {SERVER_PORT}\n  protocol: UDP\n")
        } else {
            String::new()
        },
    )
}

/// `t` in RFC 3339 with whole seconds (`2026-12-06T11:40:00Z`).
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let secs = i64::try_from(secs).expect("in range");
    k8s_openapi::jiff::Timestamp::from_second(secs)
        .expect("a valid time")
        .to_string()
}

/// The tests' NodePort service: ClusterIP 10.96.0.10:80, NodePort 30080, TCP and UDP.
pub const WEB: ServiceDef<'static> = ServiceDef {
    name: "web",
    cluster_ip: "10.96.0.10",
    cluster_ip_v6: None,
    port: 80,
    kind: ServiceType::NodePort,
    node_port: Some(30080),
    local: false,
    health_check_node_port: None,
    load_balancer_ips: &[],
    udp: true,
};

/// The tests' `externalTrafficPolicy: Local` LoadBalancer service: ClusterIP 10.96.0.11:80,
/// NodePort 30081, health check node port 32000.
pub const LOCAL: ServiceDef<'static> = ServiceDef {
    name: "local",
    cluster_ip: "10.96.0.11",
    cluster_ip_v6: None,
    port: 80,
    kind: ServiceType::LoadBalancer,
    node_port: Some(30081),
    local: true,
    health_check_node_port: Some(32000),
    load_balancer_ips: &["172.18.200.11"],
    udp: false,
};

/// A service file: the Service, and its EndpointSlice with the lab pods `endpoints` when
/// given (without a trigger time).
pub fn service_file(lab: &Lab, def: &ServiceDef<'_>, endpoints: Option<&[usize]>) -> String {
    let mut text = service(def);
    if let Some(pods) = endpoints {
        text.push_str(&endpoint_slice_of(
            lab,
            def.name,
            pods,
            None,
            Family::V4,
            def.udp,
        ));
    }
    text
}
