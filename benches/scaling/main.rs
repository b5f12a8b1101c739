//! End-to-end scaling bench: the numbers behind BENCHMARKS.md.
//!
//! `sudo cargo bench --features ebpf,nft --bench scaling` (root: namespaces, BPF, netfilter)
//! writes `BENCHMARKS.md`, `benches/results/scaling.json` and the PNG plots.
//!
//! ```text
//!   lab (one network namespace each, nothing leaves them)
//!   node-0  no dataplane     client pod-0-0 ──▶ pod-0-1..10 by pod IP      (the limit)
//!   node-1  eBPF (TC)        client pod-1-0 ──▶ ClusterIP ──▶ pod-1-1..10
//!   node-2  eBPF (socket LB) client pod-2-0 ──▶ ClusterIP ──▶ pod-2-1..10
//!   node-3  nftables         client pod-3-0 ──▶ ClusterIP ──▶ pod-3-1..10
//!   node-4  iptables         client pod-4-0 ──▶ ClusterIP ──▶ pod-4-1..10
//! ```
//! Every node holds the same N services x 10 endpoints; the two target services (one at a
//! random place in name order, one last) point at the node's 10 backend pods, the others at
//! synthetic addresses that only need to exist in the tables. "eBPF (TC)" translates every
//! packet in the TC programs; "eBPF (socket LB)" is the same dataplane with
//! `socket_lb_cgroup` on, which gives the client's sockets their backend at `connect()`, and
//! `host_routing`, which sends the resulting pod-to-pod packets straight to the backend's veth
//! as the TC path does with translated ones. The
//! clients are threads of this process: the hooks are attached to a threaded cgroup that only
//! the threads of that node's client pod join (`CgroupScope::threaded_child`), and each node's
//! targets have ClusterIPs of their own besides. Each node is programmed once
//! per N; measurements then rotate over the nodes (A B C .. C B A ..), and each round's
//! rate is divided by the same round's direct rate: the report shows medians of those
//! per-round ratios.
//!
//! Sections: per-packet cost (BPF_PROG_TEST_RUN), end-to-end CRR and RR latency, control
//! plane (program 10k x 10 from empty, one endpoint change, peak RSS of a process holding
//! 10k x 10, measured in a child process `--rss-child`), compute-only costs.
//!
//! Settings, from the environment: see `settings` (`DP_BENCH_QUICK=1` is the quick check).
//!
//! Modules: `settings` (command line, environment), `machine` (what ran it), `results` (the
//! rows of `scaling.json`), `clock` (durations, progress log), `compute` and `per_packet`
//! (the sections without a lab), `nodes` (the end-to-end lab and its dataplanes, opened with
//! `dataplane::open`), `states` (the states programmed), `end_to_end` (the CRR and RR
//! rounds), `control` and `rss` (the control plane), `in_situ` (the programs' run-time
//! statistics), `load` (servers and load generators), `report` (markdown and plots).

#[path = "../common/packet.rs"]
mod packet;

mod clock;
mod compute;
mod control;
mod end_to_end;
mod in_situ;
mod load;
mod machine;
mod nodes;
mod per_packet;
mod report;
mod results;
mod rss;
mod settings;
mod states;

use std::time::Instant;

use clock::log;
use machine::Machine;
use results::Results;
use settings::{Invocation, Paths, Settings};

fn main() {
    let paths = Paths::from_env();
    match Invocation::from_args() {
        Invocation::RssChild(args) => std::process::exit(rss::rss_child(&args)),
        Invocation::ReportOnly => report_only(&paths),
        Invocation::NotBench => println!(
            "scaling: a benchmark; run it with `cargo bench --features ebpf,nft --bench scaling`"
        ),
        Invocation::Bench => {
            if dataplane_testkit::require_root("bench scaling") {
                bench(&paths);
            }
        }
    }
}

/// Rewrites the report and plots from the last run's `scaling.json` (after editing
/// benches/notes.md, say), measuring nothing.
fn report_only(paths: &Paths) {
    let json_path = paths.json();
    let results: Results = match std::fs::read_to_string(&json_path)
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{}: {e}", json_path.display());
            std::process::exit(1);
        }
    };
    if let Err(e) = report::write_all(&results, &paths.out_dir, &paths.report) {
        eprintln!("writing the report failed: {e}");
        std::process::exit(1);
    }
}

/// Every section in turn, then the results and the report. A failed section is recorded in
/// the results and the others go on; in CI a failed end-to-end section fails the run.
fn bench(paths: &Paths) {
    let settings = Settings::from_env();
    let start = Instant::now();
    let mut results = Results {
        machine: Some(Machine::this()),
        settings: Some(settings.clone()),
        ..Results::default()
    };
    log(start, "compute-only costs");
    results.compute = compute::compute_costs();
    log(start, "per-packet cost (BPF_PROG_TEST_RUN)");
    match per_packet::packet_costs(&settings, start) {
        Ok(rows) => results.packet = rows,
        Err(e) => {
            eprintln!("per-packet section failed: {e}");
            results.packet_error = Some(e);
        }
    }
    if let Err(e) = end_to_end::run(&settings, &mut results, start) {
        eprintln!("end-to-end section failed: {e}");
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "bench scaling: {e}"
        );
    }
    results.total_secs = start.elapsed().as_secs_f64();
    if let Err(e) = report::write_all(&results, &paths.out_dir, &paths.report) {
        eprintln!("writing the report failed: {e}");
        std::process::exit(1);
    }
    log(start, &format!("done: {}", paths.report.display()));
}
