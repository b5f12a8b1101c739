//! Control-plane costs in core: diff, validation and Maglev at 10k services.
//!
//! `cargo bench --bench core`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use dataplane::implement::{diff, maglev_table, MaglevBackend, DEFAULT_MAGLEV_TABLE_SIZE};
use dataplane::testing::synthetic;
use dataplane::validate;

fn bench_diff(c: &mut Criterion) {
    let mut g = c.benchmark_group("diff");
    for n in [1_000usize, 10_000] {
        let old = synthetic::state(n, 10);
        let mut new = old.clone();
        // One endpoint change: the common incremental case.
        new.services[n / 2].backends.pop();
        g.bench_with_input(BenchmarkId::new("one_change", n), &n, |b, _| {
            b.iter(|| black_box(diff(black_box(&old), black_box(&new))));
        });
    }
    g.finish();
}

fn bench_validate(c: &mut Criterion) {
    let state = synthetic::state(10_000, 10);
    c.bench_function("validate/10k_services_x10", |b| {
        b.iter(|| validate(black_box(&state)).expect("synthetic state is valid"));
    });
}

fn bench_maglev(c: &mut Criterion) {
    let mut g = c.benchmark_group("maglev");
    for n in [10usize, 100, 1000] {
        let backends: Vec<MaglevBackend> = (0..n)
            .map(|i| MaglevBackend {
                key: format!("10.244.{}.{}:8080", i / 250, i % 250),
                weight: 1,
            })
            .collect();
        g.bench_with_input(BenchmarkId::new("table_16381", n), &n, |b, _| {
            b.iter(|| maglev_table(black_box(&backends), DEFAULT_MAGLEV_TABLE_SIZE));
        });
    }
    g.finish();
}

criterion_group!(benches, bench_diff, bench_validate, bench_maglev);
criterion_main!(benches);
