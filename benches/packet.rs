//! Per-packet cost of the eBPF TC service program (`dp_from_pod`, ClusterIP path) and of the
//! XDP program (`dp_xdp_uplink`, NodePort to remote backends) through `BPF_PROG_TEST_RUN`,
//! established and new flows, at 10 .. 100k services x 10 backends. Times are the kernel's
//! measurement of each program run (see `benches/common/packet.rs`).
//!
//! `sudo cargo bench --features ebpf --bench packet` (needs root; prints SKIPPED otherwise).

#[path = "common/packet.rs"]
mod packet;

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use packet::PacketLab;

const SERVICES: [usize; 4] = [10, 1_000, 10_000, 100_000];

fn bench_tc(c: &mut Criterion) {
    if !dataplane_testkit::require_root("bench packet") {
        return;
    }
    let mut lab = match PacketLab::new() {
        Ok(l) => l,
        Err(e) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "bench packet: {e}"
            );
            eprintln!("SKIPPED bench packet: {e}");
            return;
        }
    };
    let mut g = c.benchmark_group("tc_from_pod");
    // Each iteration is one test-run syscall, whose wall time is far longer than the program
    // time criterion is given: keep its time targets, which it measures in program time, small.
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(5))
        .measurement_time(Duration::from_millis(40));
    for n in SERVICES {
        let took = lab.program(n).expect("program the services");
        eprintln!("programmed {n} services x 10 in {took:?}");
        g.bench_function(BenchmarkId::new("established", n), |b| {
            b.iter_custom(|iters| lab.established(iters).expect("test run").total);
        });
        g.bench_function(BenchmarkId::new("new_flow", n), |b| {
            b.iter_custom(|iters| lab.new_flows(iters).expect("test run").total);
        });
        for program in packet::FLOOR_PROGRAMS {
            g.bench_function(BenchmarkId::new(program, n), |b| {
                b.iter_custom(|iters| lab.floor(program, iters).expect("test run").total);
            });
        }
        g.bench_function(BenchmarkId::new("xdp_established", n), |b| {
            b.iter_custom(|iters| lab.xdp_established(iters).expect("test run").total);
        });
        g.bench_function(BenchmarkId::new("xdp_new_flow", n), |b| {
            b.iter_custom(|iters| lab.xdp_new_flows(iters).expect("test run").total);
        });
    }
    g.finish();
}

criterion_group!(benches, bench_tc);
criterion_main!(benches);
