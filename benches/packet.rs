//! Per-packet cost of the eBPF TC service program (`dp_from_pod`, ClusterIP path) and of the
//! XDP program (`dp_xdp_uplink`, NodePort to remote backends) through `BPF_PROG_TEST_RUN`,
//! established and new flows, at 10 .. 100k services x 10 backends, and of a new connection
//! between two pods selected by 0 / 100 / 10k network policies (`tc_from_pod_policy`). Times
//! are the kernel's measurement of each program run (see `benches/common/packet.rs`).
//!
//! `sudo cargo bench --features ebpf --bench packet` (needs root; prints SKIPPED otherwise).

#[path = "common/packet.rs"]
mod packet;

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use packet::PacketLab;

const SERVICES: [usize; 4] = [10, 1_000, 10_000, 100_000];
const POLICIES: [usize; 3] = [0, 100, 10_000];

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
    bench_policy(c, &mut lab);
}

/// New connections through `dp_from_pod` with 0 / 100 / 10k policies selecting both pods.
/// A backend that refuses policies skips the group (printed), as a missing root does.
fn bench_policy(c: &mut Criterion, lab: &mut PacketLab) {
    let mut g = c.benchmark_group("tc_from_pod_policy");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(5))
        .measurement_time(Duration::from_millis(40));
    for n in POLICIES {
        let took = match lab.program_policies(n) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("SKIPPED tc_from_pod_policy/{n}: {e}");
                continue;
            }
        };
        eprintln!("programmed {n} policies over 10k peers in {took:?}");
        let (egress, ingress) = lab.policy_denied().expect("test run");
        assert!(
            n == 0 || (egress && ingress),
            "with {n} policies a SYN no policy allows passed: no policy lookup on the path"
        );
        g.bench_function(BenchmarkId::new("new_flow_from_pod", n), |b| {
            b.iter_custom(|iters| lab.policy_new_flows(iters).expect("test run").0.total);
        });
        g.bench_function(BenchmarkId::new("new_flow_to_pod", n), |b| {
            b.iter_custom(|iters| lab.policy_new_flows(iters).expect("test run").1.total);
        });
    }
    g.finish();
}

criterion_group!(benches, bench_tc);
criterion_main!(benches);
