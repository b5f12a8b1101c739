//! The reconcile loop over an in-memory `FakeDataplane`, for the loop tests.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dataplane::testing::FakeDataplane;
use dataplane::Node;
use dataplane_agent::health::{ServiceHealth, Status};
use dataplane_agent::metrics::Metrics;
use dataplane_agent::reconcile::{FnInterfaces, Interfaces, Outputs, Reconciler};
use dataplane_agent::runner::Periods;
use dataplane_agent::source::SourceEvent;
use dataplane_kube::{parse_manifests, Cluster, Kind, Object, Settings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{namespace, node, pod, service, slice};

/// The address the test servers listen on.
pub const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// One object from its YAML.
pub fn object(yaml: &str) -> Object {
    let mut parsed = parse_manifests(yaml, "test.yaml").unwrap();
    assert_eq!(parsed.objects.len(), 1, "{yaml}");
    parsed.objects.remove(0)
}

pub fn objects(kind: Kind, yamls: &[String]) -> SourceEvent {
    SourceEvent::Listed {
        kind,
        objects: yamls.iter().map(|y| object(y)).collect(),
    }
}

/// A NodePort (health check ports are NodePorts) nobody listens on now on 127.0.0.1, a
/// different one per test of this binary.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let start = 31_000 + (std::process::id() % 1000) as u16;
    loop {
        let port = start + NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(port <= 32_767, "no free NodePort");
        if std::net::TcpListener::bind((LOCALHOST, port)).is_ok() {
            return port;
        }
    }
}

/// `GET path` on `addr`: status and body, `None` when nothing listens.
pub async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    Some((status, body))
}

/// A loop over a `FakeDataplane` (`fake` is another handle to it) with its outputs.
pub struct Harness {
    pub reconciler: Reconciler,
    pub fake: FakeDataplane,
    pub status: Arc<Status>,
    pub metrics: Arc<Metrics>,
}

pub fn harness(health_timeout: Duration) -> Harness {
    let fake = FakeDataplane::new();
    harness_over(health_timeout, Box::new(fake.clone()), fake)
}

/// Pods' veths by address, as the lab names them (`vp` and the last octet).
pub fn lab_veth(ips: &[IpAddr]) -> Option<String> {
    ips.first()
        .map(|ip| format!("vp{}", ip.to_string().rsplit('.').next().unwrap()))
}

/// A loop over `dataplane`, a wrapper of `fake`.
pub fn harness_over(
    health_timeout: Duration,
    dataplane: dataplane::BoxDataplane,
    fake: FakeDataplane,
) -> Harness {
    let interfaces = Arc::new(FnInterfaces(|_: &dataplane::ObjectName, ips: &[IpAddr]| {
        lab_veth(ips)
    }));
    harness_full(health_timeout, dataplane, fake, interfaces)
}

/// A loop over `dataplane` (a wrapper of `fake`) that finds pod interfaces with
/// `interfaces`.
pub fn harness_full(
    health_timeout: Duration,
    dataplane: dataplane::BoxDataplane,
    fake: FakeDataplane,
    interfaces: Arc<dyn Interfaces>,
) -> Harness {
    let settings = Settings {
        node_name: "node-0".to_owned(),
        node: Node::new("node-0", [])
            .with_cluster_cidrs(["10.244.0.0/16".parse().unwrap()])
            .with_service_cidrs(["10.96.0.0/12".parse().unwrap()]),
        proxy_name: None,
    };
    let status = Arc::new(Status::new(health_timeout));
    let metrics = Arc::new(Metrics::new());
    let reconciler = Reconciler::new(
        Cluster::new(settings),
        dataplane,
        interfaces,
        Periods::default(),
        Outputs {
            status: Arc::clone(&status),
            metrics: Arc::clone(&metrics),
            service_health: ServiceHealth::on(Arc::clone(&status), vec![LOCALHOST]),
            conntrack_capacity: Some(1000),
        },
    )
    .unwrap();
    Harness {
        reconciler,
        fake,
        status,
        metrics,
    }
}

/// Lists every kind: node-0 (optionally tainted), pods 0-1 (local) and 1-1 (remote), the
/// Local service `web` with health port `hc` and a local endpoint.
pub fn list_all(h: &mut Harness, hc: u16) {
    list_cluster(
        h,
        &[service("web", "10.96.0.10", 80, Some(hc))],
        &[slice(
            "web-1",
            "web",
            &[("10.244.0.11", "node-0", "pod-0-1")],
        )],
    );
}

/// Lists every kind: nodes 0 and 1, pods 0-1 (local) and 1-1 (remote), `services` and
/// `slices`, no policies.
pub fn list_cluster(h: &mut Harness, services: &[String], slices: &[String]) {
    for event in [
        objects(
            Kind::Node,
            &[
                node("node-0", "172.18.0.10", "10.244.0.0/24", None),
                node("node-1", "172.18.0.11", "10.244.1.0/24", None),
            ],
        ),
        objects(Kind::Namespace, &[namespace("default")]),
        objects(
            Kind::Pod,
            &[
                pod("pod-0-1", "node-0", "10.244.0.11"),
                pod("pod-1-1", "node-1", "10.244.1.11"),
            ],
        ),
        objects(Kind::Service, services),
        objects(Kind::EndpointSlice, slices),
    ]
    .into_iter()
    // The policy tier kinds (custom resources): none in this cluster.
    .chain(Kind::POLICY_TIERS.map(|kind| objects(kind, &[])))
    {
        h.reconciler.handle(event);
        assert!(!h.reconciler.ready(), "ready before every kind listed");
        assert!(
            h.reconciler.next_sync(Instant::now()).is_none(),
            "a sync before every kind listed"
        );
    }
    h.reconciler.handle(objects(Kind::NetworkPolicy, &[]));
    assert!(h.reconciler.ready());
}
