//! Property tests of the store: after any sequence of applies, deletes and relists, the
//! incremental translation equals a fresh translation of the same objects (and the last
//! state with `translate_changes`' change sets applied equals it too), and every
//! translated state passes `dataplane_core::validate`, however bad the objects (drawn from
//! pools of good, clashing and malformed values).

use std::cell::Cell;
use std::collections::BTreeMap;
use std::net::IpAddr;

use dataplane_core::{DesiredState, ObjectName};
use dataplane_kube::k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use dataplane_kube::k8s_openapi::api::discovery::v1::EndpointSlice;
use dataplane_kube::k8s_openapi::api::networking::v1::NetworkPolicy;
use dataplane_kube::{
    Cluster, Kind, L2Announcements, Object, ObjectKey, Settings, ANNOTATION_L2_ANNOUNCE_NODE,
};
use proptest::prelude::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;

/// A tiny deterministic generator: objects are picked from pools by (index, variant).
struct Rng(u64);

impl Rng {
    fn new(kind: u8, idx: u8, variant: u8) -> Self {
        Self(u64::from(kind) << 16 | u64::from(idx) << 8 | u64::from(variant))
    }
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn pick<'a, T>(&mut self, pool: &'a [T]) -> &'a T {
        &pool[usize::try_from(self.next() % pool.len() as u64).unwrap()]
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn some<T: Clone>(&mut self, pool: &[T], max: usize) -> Vec<T> {
        let n = usize::try_from(self.next() % (max as u64 + 1)).unwrap();
        (0..n).map(|_| self.pick(pool).clone()).collect()
    }
}

const SERVICES: [&str; 4] = ["web", "api", "db", "x1"];
const NAMESPACES: [&str; 2] = ["a", "b"];
const POD_IPS: [&str; 8] = [
    "10.244.1.5",
    "10.244.1.6",
    "10.244.2.5",
    "10.244.2.6",
    "fd00:10:244:1::5",
    "10.244.2.5",
    "not-an-ip",
    "127.0.0.1",
];

fn service(idx: u8, variant: u8) -> Object {
    let mut r = Rng::new(0, idx, variant);
    let name = SERVICES[usize::from(idx) % 4];
    let ns = NAMESPACES[usize::from(idx / 4) % 2];
    let cluster_ips: Vec<&str> = match r.next() % 8 {
        0 => vec!["10.96.0.1"],
        1 => vec!["10.96.0.2"],
        2 => vec!["10.96.0.1", "fd00:10:96::1"],
        3 => vec!["None"],
        4 => vec!["10.96.0.999"],
        5 => vec!["172.18.0.2"],
        6 => vec!["10.244.1.9", "10.96.0.3"],
        _ => vec![],
    };
    let type_ = *r.pick(&[
        "ClusterIP",
        "NodePort",
        "LoadBalancer",
        "ExternalName",
        "Weird",
    ]);
    let port_pool = [
        json!({"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http", "nodePort": 30080}),
        json!({"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}),
        json!({"name": "web", "port": 8080, "protocol": "TCP", "targetPort": "web", "nodePort": 30081}),
        json!({"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53, "nodePort": 30080}),
        json!({"name": "bad", "port": 0, "protocol": "TCP"}),
        json!({"name": "", "port": 443, "protocol": "SCTP", "targetPort": 8443, "nodePort": 31000}),
        json!({"name": "web", "port": 81, "protocol": "HTTP"}),
    ];
    let ports = r.some(&port_pool, 3);
    let external_ips = r.some(&["198.51.100.1", "198.51.100.2", "fd00::1", "x"], 2);
    let ingress: Vec<Value> = r
        .some(&["192.0.2.1", "192.0.2.2", "198.51.100.1"], 2)
        .into_iter()
        .map(|ip| json!({"ip": ip, "ipMode": if ip.ends_with('2') { "Proxy" } else { "VIP" }}))
        .collect();
    let mut labels = serde_json::Map::new();
    if r.chance(10) {
        labels.insert(
            "service.kubernetes.io/service-proxy-name".into(),
            json!("other"),
        );
    }
    // Drawn apart, so that the other fields are drawn as before.
    let mut annotations = serde_json::Map::new();
    annotations.insert("rev".into(), json!(variant.to_string()));
    let announcer = *Rng::new(9, idx, variant).pick(&["node-a", "node-b", "Not A Node", ""]);
    if !announcer.is_empty() {
        annotations.insert(ANNOTATION_L2_ANNOUNCE_NODE.into(), json!(announcer));
    }
    let v = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "labels": labels,
            "annotations": annotations},
        "spec": {
            "type": type_,
            "clusterIPs": cluster_ips,
            "ports": ports,
            "externalIPs": external_ips,
            "externalTrafficPolicy": r.pick(&["Cluster", "Local"]),
            "internalTrafficPolicy": r.pick(&["Cluster", "Local"]),
            "healthCheckNodePort": r.pick(&[0, 30080, 31500, 32000]),
            "sessionAffinity": r.pick(&["None", "ClientIP"]),
            "loadBalancerSourceRanges": r.some(&["10.0.0.0/8", "10.0.0.1/8", "bad"], 2),
        },
        "status": {"loadBalancer": {"ingress": ingress}}
    });
    Object::from(serde_json::from_value::<Service>(v).unwrap())
}

fn slice(idx: u8, variant: u8) -> Object {
    let mut r = Rng::new(1, idx, variant);
    let ns = NAMESPACES[usize::from(idx / 4) % 2];
    let mut labels = serde_json::Map::new();
    if !r.chance(10) {
        labels.insert(
            "kubernetes.io/service-name".into(),
            json!(r.pick(&SERVICES)),
        );
    }
    let v4 = !r.chance(20);
    let endpoints: Vec<Value> = (0..r.next() % 4)
        .map(|_| {
            let ip = if v4 {
                *r.pick(&POD_IPS)
            } else {
                *r.pick(&["fd00:10:244:1::5", "fd00:10:244:2::5", "10.244.1.5"])
            };
            let cond = |r: &mut Rng| r.pick(&[json!(null), json!(true), json!(false)]).clone();
            json!({
                "addresses": [ip],
                "conditions": {"ready": cond(&mut r), "serving": cond(&mut r), "terminating": cond(&mut r)},
                "nodeName": r.pick(&["node-a", "node-b"]),
                "zone": r.pick(&["zone-a", "zone-b"]),
                "hints": if r.chance(50) { json!({"forZones": [{"name": r.pick(&["zone-a", "zone-b"])}]}) } else { json!(null) },
            })
        })
        .collect();
    let ports: Vec<Value> = r
        .some(
            &[
                json!({"name": "http", "port": 8080, "protocol": "TCP"}),
                json!({"name": "http", "port": 8081, "protocol": "TCP"}),
                json!({"name": "web", "port": 9090, "protocol": "TCP"}),
                json!({"name": "dns", "port": 53, "protocol": "UDP"}),
                json!({"name": "", "port": 8443, "protocol": "SCTP"}),
                json!({"port": 1}),
            ],
            3,
        )
        .into_iter()
        .collect();
    let v = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("slice-{idx}"), "namespace": ns, "labels": labels},
        "addressType": if v4 { "IPv4" } else { "IPv6" },
        "endpoints": endpoints,
        "ports": ports,
    });
    Object::from(serde_json::from_value::<EndpointSlice>(v).unwrap())
}

fn pod(idx: u8, variant: u8) -> Object {
    let mut r = Rng::new(2, idx, variant);
    let ns = NAMESPACES[usize::from(idx / 4) % 2];
    let v = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": format!("pod-{}", idx % 6), "namespace": ns,
            "labels": {"app": r.pick(&["web", "db"])},
            "deletionTimestamp": if r.chance(20) { json!("2026-12-06T11:00:00Z") } else { json!(null) },
        },
        "spec": {
            "nodeName": r.pick(&["node-a", "node-b", ""]),
            "hostNetwork": r.chance(10),
            "containers": [{"name": "c", "ports": r.some(&[
                json!({"name": "http", "containerPort": 8080}),
                json!({"name": "http", "containerPort": 8081}),
                json!({"name": "dns", "containerPort": 53, "protocol": "UDP"}),
                json!({"name": "bad", "containerPort": 0}),
            ], 2)}],
        },
        "status": {
            "phase": r.pick(&["Running", "Running", "Pending", "Succeeded"]),
            "podIPs": r.some(&POD_IPS, 2).into_iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>(),
        }
    });
    Object::from(serde_json::from_value::<Pod>(v).unwrap())
}

fn namespace(idx: u8, variant: u8) -> Object {
    let mut r = Rng::new(3, idx, variant);
    let v = json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": NAMESPACES[usize::from(idx) % 2],
            "labels": {"team": r.pick(&["x", "y"])}},
    });
    Object::from(serde_json::from_value::<Namespace>(v).unwrap())
}

fn policy(idx: u8, variant: u8) -> Object {
    let mut r = Rng::new(4, idx, variant);
    let peer = r
        .pick(&[
            json!({"podSelector": {"matchLabels": {"app": "web"}}}),
            json!({"namespaceSelector": {}}),
            json!({"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}),
            json!({"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}}),
            json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Bogus"}]}}),
        ])
        .clone();
    let port = r
        .pick(&[
            json!({"port": 80}),
            json!({"port": "http", "protocol": "TCP"}),
            json!({"port": 1000, "endPort": 2000}),
            json!({"port": "http", "endPort": 2000}),
        ])
        .clone();
    let v = json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": format!("np-{}", idx % 3), "namespace": NAMESPACES[usize::from(idx / 3) % 2]},
        "spec": {
            "podSelector": {},
            "ingress": [{"from": [peer], "ports": [port]}],
            "egress": if r.chance(50) { json!([{}]) } else { json!(null) },
        }
    });
    Object::from(serde_json::from_value::<NetworkPolicy>(v).unwrap())
}

fn node(idx: u8, variant: u8) -> Object {
    let mut r = Rng::new(5, idx, variant);
    let name = if idx.is_multiple_of(3) {
        "node-b"
    } else {
        "node-a"
    };
    let addresses: Vec<Value> = match r.next() % 4 {
        0 => vec![json!({"type": "InternalIP", "address": "172.18.0.2"})],
        1 => vec![
            json!({"type": "InternalIP", "address": "172.18.0.2"}),
            json!({"type": "ExternalIP", "address": "fc00::2"}),
        ],
        2 => vec![json!({"type": "InternalIP", "address": "172.18.0.3"})],
        _ => vec![json!({"type": "InternalIP", "address": "bad"})],
    };
    let v = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name,
            "labels": {"topology.kubernetes.io/zone": r.pick(&["zone-a", "zone-b", ""])},
            "annotations": {"heartbeat": variant.to_string()}},
        "spec": {"podCIDRs": r.pick(&[json!(["10.244.1.0/24"]), json!(["10.244.1.0/24", "fd00:10:244:1::/64"]), json!(["10.96.0.0/24"])])},
        "status": {"addresses": addresses},
    });
    Object::from(serde_json::from_value::<Node>(v).unwrap())
}

/// The object `kind` (in `Kind::ALL` order) number `idx` in its `variant`.
fn object(kind: u8, idx: u8, variant: u8) -> Object {
    match kind % 6 {
        0 => service(idx % 8, variant),
        1 => slice(idx % 8, variant),
        2 => policy(idx % 6, variant),
        3 => pod(idx % 12, variant),
        4 => namespace(idx, variant),
        _ => node(idx, variant),
    }
}

fn settings() -> Settings {
    let node = dataplane_core::Node::new("ignored", ["172.18.0.9".parse::<IpAddr>().unwrap()])
        .with_cluster_cidrs(["10.244.0.0/16".parse().unwrap()])
        .with_service_cidrs(["10.96.0.0/16".parse().unwrap()]);
    Settings::new("node-a", node)
}

#[derive(Debug, Clone)]
enum Op {
    Apply(u8, u8, u8),
    Delete(u8, u8),
    Relist(u8, Vec<(u8, u8)>),
    InterfacesAppear,
    /// `translate` (`false`) or `translate_changes` (`true`).
    Translate(bool),
    /// An election's verdict on a Service (`Cluster::set_l2_announced`).
    Elect(u8, bool),
}

const L2_MODES: [L2Announcements; 3] = [
    L2Announcements::Off,
    L2Announcements::Annotated,
    L2Announcements::Elected,
];

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (any::<u8>(), any::<u8>(), any::<u8>()).prop_map(|(k, i, v)| Op::Apply(k, i, v)),
        2 => (any::<u8>(), any::<u8>()).prop_map(|(k, i)| Op::Delete(k, i)),
        1 => (any::<u8>(), proptest::collection::vec((any::<u8>(), any::<u8>()), 0..4))
            .prop_map(|(k, l)| Op::Relist(k, l)),
        1 => Just(Op::InterfacesAppear),
        3 => any::<bool>().prop_map(Op::Translate),
        2 => (any::<u8>(), any::<bool>()).prop_map(|(i, e)| Op::Elect(i, e)),
    ]
}

fn resolver(appeared: &Cell<bool>) -> impl Fn(&ObjectName, &[IpAddr]) -> Option<String> + '_ {
    move |pod: &ObjectName, _: &[IpAddr]| {
        (appeared.get() || pod.name != "pod-0").then(|| format!("veth-{}", pod.name))
    }
}

/// The state with every list in name order, as `translate` hands it out (core's test
/// helper `normalised` is not reachable from another crate's tests).
fn sorted(mut state: DesiredState) -> DesiredState {
    state.services.sort_by(|a, b| a.name.cmp(&b.name));
    state.endpoints.sort_by(|a, b| a.name.cmp(&b.name));
    state.pods.sort_by(|a, b| a.name.cmp(&b.name));
    state.policies.sort_by(|a, b| a.name.cmp(&b.name));
    state.namespaces.sort_by(|a, b| a.name.cmp(&b.name));
    state
}

fn check(
    cluster: &mut Cluster,
    objects: &BTreeMap<ObjectKey, Object>,
    elected: &BTreeSet<ObjectKey>,
    appeared: &Cell<bool>,
    changes: bool,
    mirror: &mut Option<DesiredState>,
) -> Result<(), TestCaseError> {
    let resolve = resolver(appeared);
    let incremental = if changes {
        cluster.translate_changes(&resolve).map(|c| {
            // The first changes add everything: applied to an empty state of the same node.
            let mut state = mirror.take().unwrap_or_else(|| {
                DesiredState::new(c.changes.node.clone().and_then(|n| n.current).unwrap())
            });
            c.changes.apply_to(&mut state);
            (sorted(state), c.warnings)
        })
    } else {
        cluster.translate(&resolve).map(|t| (t.state, t.warnings))
    };
    let mut fresh = Cluster::new(settings());
    fresh.set_l2_announcements(cluster.l2_announcements());
    for key in elected {
        fresh.set_l2_announced(key, true);
    }
    for kind in Kind::ALL {
        let objects: Vec<Object> = objects
            .values()
            .filter(|o| o.kind() == kind)
            .cloned()
            .collect();
        fresh.replace(kind, objects).unwrap();
    }
    let full = fresh.translate(&resolve);
    match (incremental, full) {
        (Ok((state, warnings)), Ok(b)) => {
            dataplane_core::validate(&state)
                .map_err(|e| TestCaseError::fail(format!("invalid state: {e}")))?;
            prop_assert_eq!(&state, &b.state);
            prop_assert_eq!(warnings, b.warnings);
            prop_assert_eq!(&sorted(cluster.state().unwrap().clone()), &b.state);
            prop_assert_eq!(cluster.l2_candidates(), fresh.l2_candidates());
            *mirror = Some(state);
        }
        (Err(a), Err(b)) => prop_assert_eq!(a, b),
        (a, b) => prop_assert!(false, "incremental {a:?} but fresh {b:?}"),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn incremental_equals_fresh_and_always_validates(
        ops in proptest::collection::vec(op(), 1..40),
        l2 in 0..L2_MODES.len(),
    ) {
        let appeared = Cell::new(false);
        let mut mirror = None;
        let mut cluster = Cluster::new(settings());
        cluster.set_l2_announcements(L2_MODES[l2]);
        let mut elected = BTreeSet::new();
        // What the store holds, for the fresh store (the store keeps only what translations
        // read, and lends no objects).
        let mut objects: BTreeMap<ObjectKey, Object> = BTreeMap::new();
        // Every test starts with the local node, so that most translations produce a state.
        let first = node(1, 0);
        objects.insert(first.key().unwrap(), first.clone());
        cluster.apply(first).unwrap();
        for op in ops {
            match op {
                Op::Apply(k, i, v) => {
                    let o = object(k, i, v);
                    // `is_current` answers what `apply` then says.
                    let current = cluster.is_current(&o);
                    let changed = cluster.apply(o.clone()).unwrap();
                    prop_assert_eq!(current, !changed);
                    prop_assert!(cluster.is_current(&o));
                    objects.insert(o.key().unwrap(), o);
                }
                Op::Delete(k, i) => {
                    let key: ObjectKey = object(k, i, 0).key().unwrap();
                    cluster.delete(&key);
                    objects.remove(&key);
                    prop_assert!(!cluster.contains(&key));
                }
                Op::Relist(k, list) => {
                    let kind = Kind::ALL[usize::from(k % 6)];
                    let list: Vec<Object> = list.into_iter().map(|(i, v)| object(k, i, v)).collect();
                    objects.retain(|key, _| key.kind != kind);
                    for o in &list {
                        objects.insert(o.key().unwrap(), o.clone());
                    }
                    cluster.replace(kind, list).unwrap();
                }
                Op::InterfacesAppear => appeared.set(true),
                Op::Translate(changes) => check(&mut cluster, &objects, &elected, &appeared, changes, &mut mirror)?,
                Op::Elect(i, held) => {
                    let key = service(i, 0).key().unwrap();
                    let changed = cluster.set_l2_announced(&key, held);
                    let was = if held { elected.insert(key) } else { elected.remove(&key) };
                    prop_assert_eq!(changed, was);
                }
            }
        }
        check(&mut cluster, &objects, &elected, &appeared, true, &mut mirror)?;
    }
}

#[test]
fn counts_follow_applies_deletes_and_relists() {
    let mut cluster = Cluster::new(settings());
    assert!(cluster.apply(service(0, 1)).unwrap());
    assert!(!cluster.apply(service(0, 1)).unwrap());
    assert!(cluster.apply(service(0, 2)).unwrap());
    assert!(cluster.apply(service(1, 1)).unwrap());
    assert_eq!(cluster.count(Kind::Service), 2);
    assert!(cluster
        .replace(Kind::Service, vec![service(1, 1), service(2, 1)])
        .unwrap());
    assert_eq!(cluster.count(Kind::Service), 2);
    assert!(!cluster.contains(&service(0, 0).key().unwrap()));
    assert!(cluster.contains(&service(1, 0).key().unwrap()));
    assert!(!cluster
        .replace(Kind::Service, vec![service(1, 1), service(2, 1)])
        .unwrap());
    assert!(matches!(
        cluster.replace(Kind::Pod, vec![service(1, 1)]),
        Err(dataplane_kube::TranslateError::WrongKind { .. })
    ));
    assert!(cluster.delete(&service(1, 0).key().unwrap()));
    assert!(!cluster.delete(&service(1, 0).key().unwrap()));
    assert_eq!(cluster.count(Kind::Service), 1);
    assert_eq!(cluster.settings().node_name, "node-a");
}
