//! Translation at scale: 10 000 Services with one EndpointSlice of 10 endpoints each.
//!
//! - `full`: the first translation of the whole store (what a start or a relist costs);
//! - `one_slice_change`: one EndpointSlice changed, then `translate` (what one manifest or
//!   watch event costs; the agent's budget from a change to traffic is 50 ms);
//! - `no_change`: `translate` with nothing changed: the cost of handing out the state (one
//!   clone of it), which every `translate` pays;
//! - `one_slice_change_as_changes`: as `one_slice_change`, with `translate_changes` (the
//!   change set, no copy of the state).

use std::hint::black_box;
use std::net::IpAddr;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use dataplane_core::ObjectName;
use dataplane_kube::k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use dataplane_kube::k8s_openapi::api::discovery::v1::{
    Endpoint, EndpointConditions, EndpointPort, EndpointSlice,
};
use dataplane_kube::k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use dataplane_kube::{Cluster, Object, Settings};

const SERVICES: usize = 10_000;
const ENDPOINTS: usize = 10;
const NODES: usize = 100;

fn meta(
    ns: &str,
    name: &str,
) -> dataplane_kube::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
    dataplane_kube::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(ns.to_owned()),
        ..Default::default()
    }
}

fn service(i: usize) -> Service {
    let ip = format!("10.96.{}.{}", i / 250, i % 250 + 1);
    Service {
        metadata: meta(&format!("ns-{}", i % 100), &format!("svc-{i}")),
        spec: Some(ServiceSpec {
            cluster_ip: Some(ip.clone()),
            cluster_ips: Some(vec![ip]),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                protocol: Some("TCP".into()),
                target_port: Some(IntOrString::String("http".into())),
                ..Default::default()
            }]),
            type_: Some("ClusterIP".into()),
            ..Default::default()
        }),
        status: None,
    }
}

/// Service `i`'s slice; `generation` moves one endpoint to another address.
fn slice(i: usize, generation: usize) -> EndpointSlice {
    let mut m = meta(&format!("ns-{}", i % 100), &format!("svc-{i}-abcde"));
    m.labels = Some([("kubernetes.io/service-name".to_owned(), format!("svc-{i}"))].into());
    let endpoints = (0..ENDPOINTS)
        .map(|e| {
            let n = i * ENDPOINTS + e + generation * 7;
            Endpoint {
                addresses: vec![format!(
                    "10.{}.{}.{}",
                    128 + n / 65536 % 64,
                    n / 256 % 256,
                    n % 256
                )],
                conditions: Some(EndpointConditions {
                    ready: Some(true),
                    serving: Some(true),
                    terminating: Some(false),
                }),
                node_name: Some(format!("node-{}", n % NODES)),
                zone: Some(format!("zone-{}", n % 3)),
                ..Default::default()
            }
        })
        .collect();
    EndpointSlice {
        address_type: "IPv4".into(),
        endpoints,
        metadata: m,
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(8080),
            protocol: Some("TCP".into()),
            app_protocol: None,
        }]),
    }
}

fn node() -> Object {
    let v = serde_json::json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "node-0", "labels": {"topology.kubernetes.io/zone": "zone-0"}},
        "spec": {"podCIDRs": ["10.0.0.0/24"]},
        "status": {"addresses": [{"type": "InternalIP", "address": "172.18.0.2"}]},
    });
    Object::from(
        serde_json::from_value::<dataplane_kube::k8s_openapi::api::core::v1::Node>(v).unwrap(),
    )
}

fn loaded() -> Cluster {
    let template = dataplane_core::Node::new("node-0", [])
        .with_cluster_cidrs(["10.0.0.0/16".parse().unwrap()])
        .with_service_cidrs(["10.96.0.0/16".parse().unwrap()]);
    let mut cluster = Cluster::new(Settings::new("node-0", template));
    cluster.apply(node()).unwrap();
    for i in 0..SERVICES {
        cluster.apply(Object::from(service(i))).unwrap();
        cluster.apply(Object::from(slice(i, 0))).unwrap();
    }
    cluster
}

fn no_interfaces(_: &ObjectName, _: &[IpAddr]) -> Option<String> {
    None
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("translate_10k_services_x10_endpoints");
    group.sample_size(10);
    group.bench_function("full", |b| {
        b.iter_batched(
            loaded,
            |mut cluster| {
                let t = cluster.translate(&no_interfaces).unwrap();
                assert_eq!(t.state.services.len(), SERVICES);
                // Returned, so that dropping the store is not timed.
                (cluster, t)
            },
            BatchSize::PerIteration,
        );
    });

    let mut cluster = loaded();
    let t = cluster.translate(&no_interfaces).unwrap();
    dataplane_core::validate(&t.state).unwrap();
    let mut generation = 0;
    group.bench_function("one_slice_change", |b| {
        b.iter(|| {
            generation += 1;
            let changed = cluster
                .apply(Object::from(slice(SERVICES / 2, generation % 2 + 1)))
                .unwrap();
            assert!(changed);
            black_box(cluster.translate(&no_interfaces).unwrap())
        });
    });
    group.bench_function("no_change", |b| {
        b.iter(|| black_box(cluster.translate(&no_interfaces).unwrap()));
    });
    group.bench_function("one_slice_change_as_changes", |b| {
        b.iter(|| {
            generation += 1;
            cluster
                .apply(Object::from(slice(SERVICES / 2, generation % 2 + 1)))
                .unwrap();
            let c = cluster.translate_changes(&no_interfaces).unwrap();
            assert_eq!(c.changes.services.len(), 1);
            black_box(c)
        });
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
