//! The manifest directory the agent reads: the lab's Node, the Namespace, the lab's Pods, and
//! `services` Services x `endpoints` endpoints (their EndpointSlices), written as
//! `kubectl get -o yaml` prints them (uids, resource versions, owner references, the
//! endpoint slice controller's labels and annotation), 100 Services and their slices per file.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use dataplane_testkit::Lab;

/// The probe service's ClusterIP and port (in the service CIDR, apart from the others).
pub const PROBE_VIP: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 10);
/// The probe service's port.
pub const PROBE_PORT: u16 = 80;
/// The probe service's name.
pub const PROBE: &str = "probe";
/// Services per file (the probe's file holds the probe and this many minus one others).
pub const PER_FILE: usize = 100;

/// What the directory holds and where.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The file that holds the probe service and its slice (and `PER_FILE - 1` others).
    pub probe_file: PathBuf,
    /// Manifest files written.
    pub files: usize,
    /// Bytes written.
    pub bytes: u64,
}

/// A deterministic uid for object `n` of kind `k` (as the API server gives every object).
fn uid(k: u32, n: usize) -> String {
    format!("{k:08x}-0000-4000-8000-{n:012x}")
}

fn node_doc(name: &str, address: &str, pod_cidr: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Node
metadata:
  labels:
    kubernetes.io/hostname: {name}
    kubernetes.io/os: linux
    topology.kubernetes.io/zone: zone-a
  name: {name}
  resourceVersion: "1"
  uid: {uid}
spec:
  podCIDR: {pod_cidr}
  podCIDRs:
  - {pod_cidr}
status:
  addresses:
  - address: {address}
    type: InternalIP
  - address: {name}
    type: Hostname
"#,
        uid = uid(1, 0)
    )
}

fn namespace_doc() -> String {
    "apiVersion: v1
kind: Namespace
metadata:
  labels:
    kubernetes.io/metadata.name: default
  name: default
spec:
  finalizers:
  - kubernetes
status:
  phase: Active
"
    .to_owned()
}

fn pod_doc(n: usize, name: &str, node: &str, ip: &str) -> String {
    format!(
        r"apiVersion: v1
kind: Pod
metadata:
  labels:
    app: {name}
  name: {name}
  namespace: default
  resourceVersion: '{n}'
  uid: {uid}
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
",
        uid = uid(2, n)
    )
}

fn service_doc(n: usize, name: &str, cluster_ip: Ipv4Addr) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  creationTimestamp: "2026-01-01T00:00:00Z"
  labels:
    app: {name}
  name: {name}
  namespace: default
  resourceVersion: "{n}"
  uid: {uid}
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
    port: {PROBE_PORT}
    protocol: TCP
    targetPort: 8080
  selector:
    app: {name}
  sessionAffinity: None
  type: ClusterIP
status:
  loadBalancer: {{}}
"#,
        uid = uid(3, n)
    )
}

/// An endpoint of a slice: address, node, pod.
struct Endpoint {
    ip: String,
    node: String,
    pod: String,
}

/// `trigger`: the `last-change-trigger-time` annotation (RFC 3339), which the agent's
/// `kubeproxy_network_programming_duration_seconds` measures from.
fn slice_doc(
    n: usize,
    service: &str,
    endpoints: &[Endpoint],
    trigger: &str,
    version: u64,
) -> String {
    let mut out = String::from("addressType: IPv4\napiVersion: discovery.k8s.io/v1\nendpoints:\n");
    for (j, e) in endpoints.iter().enumerate() {
        write!(
            out,
            r"- addresses:
  - {ip}
  conditions:
    ready: true
    serving: true
    terminating: false
  nodeName: {node}
  targetRef:
    kind: Pod
    name: {pod}
    namespace: default
    uid: {uid}
",
            ip = e.ip,
            node = e.node,
            pod = e.pod,
            uid = uid(4, n * 16 + j),
        )
        .expect("writing to a String");
    }
    write!(
        out,
        r#"kind: EndpointSlice
metadata:
  annotations:
    endpoints.kubernetes.io/last-change-trigger-time: "{trigger}"
  creationTimestamp: "2026-01-01T00:00:00Z"
  generateName: {service}-
  generation: {version}
  labels:
    endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io
    kubernetes.io/service-name: {service}
  name: {service}-abcde
  namespace: default
  ownerReferences:
  - apiVersion: v1
    blockOwnerDeletion: true
    controller: true
    kind: Service
    name: {service}
    uid: {owner}
  resourceVersion: "{version}"
  uid: {uid}
ports:
- name: http
  port: 8080
  protocol: TCP
"#,
        owner = uid(3, n),
        uid = uid(5, n),
    )
    .expect("writing to a String");
    out
}

/// Synthetic service `i` (1..): its ClusterIP (10.96.0.0/12 from 10.96.1.0 on).
fn synthetic_vip(i: usize) -> Ipv4Addr {
    let offset = u32::try_from(256 + i).expect("fewer than 4 billion services");
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + offset)
}

/// Synthetic endpoint `j` of service `i`: an address on another node's pod CIDR
/// (10.244.1.0 - 10.244.254.249, not backed by a pod; addresses repeat after 63 500, as pods
/// back several services).
fn synthetic_endpoint(i: usize, j: usize, per_service: usize) -> Endpoint {
    let k = (i * per_service + j) % (254 * 250);
    let (octet3, octet4) = (1 + k / 250, 1 + k % 250);
    Endpoint {
        ip: format!("10.244.{octet3}.{octet4}"),
        node: format!("node-{octet3}"),
        pod: format!("backend-{octet3}-{octet4}"),
    }
}

/// RFC 3339 UTC with microseconds, of `t`.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (y, m, dd) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_micros()
    )
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 to (year, month, day).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Days since 1970-01-01 of a civil date (the inverse of [`civil_from_days`]).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The probe's documents: its Service and its slice to lab pod `pod` (`version` and
/// `trigger` change with every edit), then the other services of its file.
pub struct ProbeFile {
    /// The other services' documents of the probe's file, written after the probe's.
    pub rest: String,
}

impl ProbeFile {
    /// The file's text with the probe's slice pointing at `(ip, pod)` on `node`.
    pub fn text(&self, ip: &str, node: &str, pod: &str, version: u64, trigger: &str) -> String {
        let endpoint = Endpoint {
            ip: ip.to_owned(),
            node: node.to_owned(),
            pod: pod.to_owned(),
        };
        let mut out = service_doc(0, PROBE, PROBE_VIP);
        out.push_str("---\n");
        out.push_str(&slice_doc(0, PROBE, &[endpoint], trigger, version));
        out.push_str(&self.rest);
        out
    }
}

/// Writes the directory for node 0 of `lab`: `cluster.yaml` (Node, Namespace, Pods) and
/// `services-NNN.yaml` with `PER_FILE` Services and their slices each; the probe's slice
/// points at lab pod `first_backend`. Returns the layout and the probe file's template.
pub fn write(
    dir: &Path,
    lab: &Lab,
    services: usize,
    endpoints: usize,
    first_backend: usize,
) -> std::io::Result<(Layout, ProbeFile)> {
    let node0 = lab.node(0);
    let mut cluster = vec![
        node_doc(
            &node0.name,
            &node0.addresses[0].to_string(),
            &node0.pod_cidrs[0].to_string(),
        ),
        namespace_doc(),
    ];
    for (n, p) in lab.pods().iter().enumerate() {
        cluster.push(pod_doc(
            n + 1,
            &p.name,
            &lab.node(p.node).name,
            &p.addresses[0].to_string(),
        ));
    }
    let mut bytes = 0;
    let text = cluster.join("---\n");
    bytes += text.len() as u64;
    std::fs::write(dir.join("cluster.yaml"), text)?;
    let files = services.div_ceil(PER_FILE);
    let mut probe = None;
    for f in 0..files {
        let mut text = String::new();
        for i in (f * PER_FILE).max(1)..((f + 1) * PER_FILE).min(services) {
            let name = format!("svc-{i:05}");
            let eps: Vec<Endpoint> = (0..endpoints)
                .map(|j| synthetic_endpoint(i, j, endpoints))
                .collect();
            text.push_str("---\n");
            text.push_str(&service_doc(i, &name, synthetic_vip(i)));
            text.push_str("---\n");
            text.push_str(&slice_doc(i, &name, &eps, "2026-01-01T00:00:00Z", 1));
        }
        let path = dir.join(format!("services-{f:03}.yaml"));
        if f == 0 {
            let template = ProbeFile { rest: text };
            let pod = lab.pod(first_backend);
            let text = template.text(
                &pod.addresses[0].to_string(),
                &lab.node(pod.node).name,
                &pod.name,
                1,
                "2026-01-01T00:00:00Z",
            );
            bytes += text.len() as u64;
            std::fs::write(&path, text)?;
            probe = Some((path, template));
        } else {
            bytes += text.len() as u64;
            std::fs::write(&path, text)?;
        }
    }
    let (probe_file, template) = probe.expect("at least one file");
    Ok((
        Layout {
            probe_file,
            files: files + 1,
            bytes,
        },
        template,
    ))
}
