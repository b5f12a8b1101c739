//! The scale objects of `benches/translate.rs` and `tests/memory.rs`: 10 000 Services with
//! one EndpointSlice of 10 endpoints each, as an API server hands them out (with a
//! `resourceVersion`, a `uid` and a selector), on 100 nodes in 3 zones.

use dataplane_kube::k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use dataplane_kube::k8s_openapi::api::discovery::v1::{
    Endpoint, EndpointConditions, EndpointPort, EndpointSlice,
};
use dataplane_kube::k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use dataplane_kube::Object;

pub const SERVICES: usize = 10_000;
pub const ENDPOINTS: usize = 10;
pub const NODES: usize = 100;

fn meta(
    ns: &str,
    name: &str,
) -> dataplane_kube::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
    dataplane_kube::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(ns.to_owned()),
        resource_version: Some("123456".to_owned()),
        uid: Some("6f1c1f5e-1d2b-4c3a-9a8b-0c1d2e3f4a5b".to_owned()),
        ..Default::default()
    }
}

pub fn service(i: usize) -> Service {
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
            selector: Some([("app".to_owned(), format!("svc-{i}"))].into()),
            type_: Some("ClusterIP".into()),
            ..Default::default()
        }),
        status: None,
    }
}

/// Service `i`'s slice; `generation` moves one endpoint to another address.
pub fn slice(i: usize, generation: usize) -> EndpointSlice {
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

pub fn node() -> Object {
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
