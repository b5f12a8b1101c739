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
use dataplane_kube::{Cluster, Object, Settings};

#[path = "../tests/scale/mod.rs"]
mod scale;
use scale::{node, service, slice, SERVICES};

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
