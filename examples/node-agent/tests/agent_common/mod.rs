//! Kubernetes manifests for the agent's tests, written as `kubectl get -o yaml` prints them.
#![allow(dead_code)] // each test binary uses some of these

use std::fmt::Write as _;

pub mod harness;

/// A Node with its internal address and pod CIDR; `taint`: a taint key to add.
pub fn node(name: &str, address: &str, pod_cidr: &str, taint: Option<&str>) -> String {
    let taints = taint.map_or_else(String::new, |key| {
        format!("  taints:\n  - effect: NoSchedule\n    key: {key}\n    value: \"1700000000\"\n")
    });
    format!(
        r#"apiVersion: v1
kind: Node
metadata:
  labels:
    kubernetes.io/hostname: {name}
    topology.kubernetes.io/zone: zone-a
  name: {name}
  resourceVersion: "1"
spec:
  podCIDR: {pod_cidr}
  podCIDRs:
  - {pod_cidr}
{taints}status:
  addresses:
  - address: {address}
    type: InternalIP
  - address: {name}
    type: Hostname
"#
    )
}

/// The `default` Namespace.
pub fn namespace(name: &str) -> String {
    format!(
        r"apiVersion: v1
kind: Namespace
metadata:
  labels:
    kubernetes.io/metadata.name: {name}
  name: {name}
spec:
  finalizers:
  - kubernetes
status:
  phase: Active
"
    )
}

/// A running pod on `node` with address `ip`.
pub fn pod(name: &str, node: &str, ip: &str) -> String {
    format!(
        r"apiVersion: v1
kind: Pod
metadata:
  labels:
    app: {name}
  name: {name}
  namespace: default
spec:
  containers:
  - image: registry.k8s.io/e2e-test-images/agnhost:2.45
    name: server
    ports:
    - containerPort: 8080
      name: http
      protocol: TCP
  nodeName: {node}
status:
  phase: Running
  podIP: {ip}
  podIPs:
  - ip: {ip}
"
    )
}

/// A ClusterIP Service `name` on `cluster_ip:port` to target port 8080; `local_health`:
/// type LoadBalancer with `externalTrafficPolicy: Local` and this `healthCheckNodePort`.
pub fn service(name: &str, cluster_ip: &str, port: u16, local_health: Option<u16>) -> String {
    let mut out = format!(
        r"apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: default
spec:
  clusterIP: {cluster_ip}
  clusterIPs:
  - {cluster_ip}
  internalTrafficPolicy: Cluster
  ipFamilies:
  - IPv4
  ipFamilyPolicy: SingleStack
  ports:
  - name: http
"
    );
    if local_health.is_some() {
        out.push_str("    nodePort: 30080\n");
    }
    write!(
        out,
        "    port: {port}\n    protocol: TCP\n    targetPort: 8080\n  selector:\n    app: {name}\n  sessionAffinity: None\n"
    )
    .unwrap();
    match local_health {
        Some(hc) => write!(
            out,
            "  externalTrafficPolicy: Local\n  healthCheckNodePort: {hc}\n  type: LoadBalancer\n"
        )
        .unwrap(),
        None => out.push_str("  type: ClusterIP\n"),
    }
    out
}

/// An EndpointSlice of Service `service` with ready endpoints `(ip, node, pod)`.
pub fn slice(name: &str, service: &str, endpoints: &[(&str, &str, &str)]) -> String {
    // A fixed trigger time, long before any test (the same slice is the same text): not
    // measured by the loop, which measures only triggers after its start.
    slice_triggered(name, service, endpoints, "2026-01-01T00:00:00Z")
}

/// [`slice`] triggered now (the loop measures its network programming latency).
pub fn slice_now(name: &str, service: &str, endpoints: &[(&str, &str, &str)]) -> String {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    slice_triggered(name, service, endpoints, &now)
}

/// [`slice`] with the trigger time `trigger` (RFC 3339).
pub fn slice_triggered(
    name: &str,
    service: &str,
    endpoints: &[(&str, &str, &str)],
    trigger: &str,
) -> String {
    let mut out = format!(
        r#"addressType: IPv4
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  annotations:
    endpoints.kubernetes.io/last-change-trigger-time: "{trigger}"
  labels:
    endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io
    kubernetes.io/service-name: {service}
  name: {name}
  namespace: default
"#
    );
    if endpoints.is_empty() {
        out.push_str("endpoints: []\n");
    } else {
        out.push_str("endpoints:\n");
        for (ip, node, pod) in endpoints {
            write!(
                out,
                "- addresses:\n  - {ip}\n  conditions:\n    ready: true\n    serving: true\n    terminating: false\n  nodeName: {node}\n  targetRef:\n    kind: Pod\n    name: {pod}\n    namespace: default\n"
            )
            .unwrap();
        }
    }
    out.push_str("ports:\n- name: http\n  port: 8080\n  protocol: TCP\n");
    out
}

/// Documents joined into one multi-document file.
pub fn documents(docs: &[String]) -> String {
    docs.join("---\n")
}
