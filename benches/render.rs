//! Netfilter rendering cost: the text an nftables / iptables backend hands to the kernel for a
//! full sync of 1k and 10k services x 10 endpoints, made by the backend's own path
//! (`NftablesDataplane::render`, `IptablesDataplane::render`: validation, planning a service
//! at a time, compiling and writing; no kernel).
//!
//! `cargo bench --features nft --bench render`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use dataplane::netfilter::{IptablesDataplane, NetfilterConfig, NftablesDataplane};
use dataplane::testing::synthetic;
use dataplane::IpFamily;

const SIZES: [usize; 2] = [1_000, 10_000];

fn bench_nft(c: &mut Criterion) {
    let mut g = c.benchmark_group("render_nft");
    g.sample_size(10);
    let dp = NftablesDataplane::new(NetfilterConfig::nftables(None));
    for n in SIZES {
        let state = synthetic::state(n, 10);
        let text = dp.render(&state).expect("synthetic state renders");
        eprintln!("nft full sync of {n} services x 10: {} bytes", text.len());
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::new("full_sync_x10", n), &state, |b, s| {
            b.iter(|| dp.render(black_box(s)).expect("renders"));
        });
    }
    g.finish();
}

fn bench_iptables(c: &mut Criterion) {
    let mut g = c.benchmark_group("render_iptables");
    g.sample_size(10);
    let dp = IptablesDataplane::new(NetfilterConfig::iptables(None));
    for n in SIZES {
        let state = synthetic::state(n, 10);
        let text = dp
            .render(&state, IpFamily::V4)
            .expect("synthetic state renders");
        eprintln!(
            "iptables-restore input for {n} services x 10: {} bytes, {} lines",
            text.len(),
            text.lines().count()
        );
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::new("full_sync_x10", n), &state, |b, s| {
            b.iter(|| dp.render(black_box(s), IpFamily::V4).expect("renders"));
        });
    }
    g.finish();
}

criterion_group!(benches, bench_nft, bench_iptables);
criterion_main!(benches);
