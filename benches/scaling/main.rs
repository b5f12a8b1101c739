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
//! 10k x 10, measured in a child process `--rss-child`; with `DP_BENCH_LARGE=1` also 50k and
//! 100k, end to end too), compute-only costs, NetworkPolicy
//! (`policy`: per-packet cost with 0 / 100 / 10k policies, CRR to pods selected by 1k
//! policies, programming them over 10k peers, one label change until enforced).
//!
//! Settings, from the environment: see `settings` (`DP_BENCH_QUICK=1` is the quick check,
//! `DP_BENCH_SECTIONS=policy` measures only the NetworkPolicy sections and keeps the others'
//! numbers from the last run's `scaling.json`; `DP_BENCH_SECTIONS=control
//! DP_BENCH_BACKENDS=iptables,iptables-nft` measures the control plane of those backends only
//! and keeps the other backends' rows).
//!
//! Modules: `settings` (command line, environment), `machine` (what ran it), `results` (the
//! rows of `scaling.json`), `clock` (durations, progress log), `compute` and `per_packet`
//! (the sections without a lab), `nodes` (the end-to-end lab and its dataplanes, opened with
//! `dataplane::open`), `states` (the states programmed), `end_to_end` (the CRR and RR
//! rounds), `control` and `rss` (the control plane), `in_situ` (the programs' run-time
//! statistics), `load` (servers and load generators), `policy` (the NetworkPolicy
//! sections), `report` (markdown and plots).

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
mod policy;
mod report;
mod results;
mod rss;
mod settings;
mod states;

use std::time::Instant;

use clock::log;
use machine::Machine;
use results::{Results, SectionRun};
use settings::{Invocation, Paths, Settings, SECTIONS};

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

/// The last run's `scaling.json`.
fn read_results(paths: &Paths) -> Result<Results, String> {
    let json_path = paths.json();
    std::fs::read_to_string(&json_path)
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
        .map_err(|e| format!("{}: {e}", json_path.display()))
}

/// Rewrites the report and plots from the last run's `scaling.json` (after editing
/// benches/notes.md, say), measuring nothing.
fn report_only(paths: &Paths) {
    let results = match read_results(paths) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = report::write_all(&results, &paths.out_dir, &paths.report) {
        eprintln!("writing the report failed: {e}");
        std::process::exit(1);
    }
}

/// The sections of `DP_BENCH_SECTIONS` in turn, then the results and the report. A failed
/// section is recorded in the results and the others go on; in CI a failed end-to-end
/// section fails the run. A run of some sections only starts from the last run's results
/// and replaces the sections it measures.
fn bench(paths: &Paths) {
    let settings = Settings::from_env();
    let sections = match settings::sections_from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let start = Instant::now();
    let machine = Machine::this();
    let all = sections.len() == SECTIONS.len();
    let mut results = if all {
        Results::default()
    } else {
        read_results(paths).unwrap_or_else(|e| {
            eprintln!(
                "no earlier results to keep ({e}): the report shows only this run's sections"
            );
            Results::default()
        })
    };
    // The machine and settings at the top describe the end-to-end run (the report's
    // method); a run without it keeps those of the run that measured it.
    if sections.contains(&"end-to-end") || results.machine.is_none() {
        // The sections this run keeps and that name no run of their own were measured by the
        // run at the top: name it before it is replaced.
        if let Some(old) = &results.machine {
            let quick = results.settings.as_ref().is_some_and(|s| s.quick);
            for section in SECTIONS.iter().filter(|s| !sections.contains(s)) {
                results
                    .section_runs
                    .entry((*section).to_owned())
                    .or_insert_with(|| SectionRun {
                        date: old.date.clone(),
                        quick,
                    });
            }
        }
        results.machine = Some(machine.clone());
        results.settings = Some(settings.clone());
    }
    let run = SectionRun {
        date: machine.date.clone(),
        quick: settings.quick,
    };
    for section in &sections {
        results
            .section_runs
            .insert((*section).to_owned(), run.clone());
    }
    if sections.contains(&"compute") {
        log(start, "compute-only costs");
        results.compute = compute::compute_costs();
    }
    if sections.contains(&"packet") {
        log(start, "per-packet cost (BPF_PROG_TEST_RUN)");
        per_packet::run(&settings, start, &mut results);
    }
    let backends = match settings::backends_from_env() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let control = sections.contains(&"control").then_some(&backends[..]);
    if sections.contains(&"end-to-end") {
        results.scaling.clear();
        results.programming.clear();
        results.in_situ.clear();
        // The control plane runs on the end-to-end lab.
        if let Err(e) = end_to_end::run(&settings, &mut results, control, start) {
            eprintln!("end-to-end section failed: {e}");
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "bench scaling: {e}"
            );
        }
    } else if let Some(backends) = control {
        // On a lab of its own: only the nodes of the backends measured (their dataplanes are
        // opened afresh by the measurement).
        match nodes::BenchLab::set_up(start, &|_| false, settings.max_services()) {
            Ok(mut bench) => {
                control::run(&settings, &mut bench, backends, &mut results.control, start);
            }
            Err(e) => eprintln!("control section failed: {e}"),
        }
    }
    if sections.contains(&"policy") {
        results.policy = Some(policy::run(&settings, machine, start));
    }
    if all || sections.contains(&"end-to-end") {
        results.total_secs = start.elapsed().as_secs_f64();
    }
    if let Err(e) = report::write_all(&results, &paths.out_dir, &paths.report) {
        eprintln!("writing the report failed: {e}");
        std::process::exit(1);
    }
    log(start, &format!("done: {}", paths.report.display()));
}
