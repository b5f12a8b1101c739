//! What a run measures and where it writes, from the command line and the environment.
//!
//! Command line: `--bench` (what `cargo bench` passes) runs the bench; `--report-only` rewrites
//! the report and plots from the last run's `scaling.json`; `--rss-child KIND SERVICES NETNS
//! BASE_JSON` is the child process of the peak-RSS measurement (see `rss`).
//!
//! Environment: `DP_BENCH_QUICK=1` (1 and 1k services, 2 rounds: a quick check),
//! `DP_BENCH_LARGE=1` (adds 50k and 100k services to the end-to-end sizes and to the control
//! plane's, for eBPF and nftables: see [`Settings::iptables_max`]),
//! `DP_BENCH_SERVICES=1,1000,5000,10000` (the end-to-end sizes),
//! `DP_BENCH_CONTROL_SERVICES=10000` (the control plane's sizes), `DP_BENCH_IPTABLES_MAX`
//! (default 10000: the largest size the iptables backend is programmed with), `DP_BENCH_ROUNDS`, `DP_BENCH_CRR_SECS`,
//! `DP_BENCH_RR_SECS`, `DP_BENCH_THREADS`, `DP_BENCH_CHANGES`, `DP_BENCH_FILL_SECS`,
//! `DP_BENCH_PACKET_FILL=0` (the per-packet section without its conntrack fill, see
//! `benches/common/packet.rs`),
//! `DP_BENCH_REPORT` (path of the markdown report; default `BENCHMARKS.md` at the repository
//! root), `DP_BENCH_SECTIONS` (a comma-separated subset of [`SECTIONS`], default all: the
//! sections not named keep their numbers from the last `scaling.json`, so that
//! `DP_BENCH_SECTIONS=policy` measures the NetworkPolicy sections alone and regenerates the
//! whole report), `DP_BENCH_BACKENDS` (a comma-separated subset of the control plane's
//! backends, [`CONTROL_BACKENDS`], default all: the `control` section measures only those and
//! keeps the other backends' rows, so that `DP_BENCH_SECTIONS=control
//! DP_BENCH_BACKENDS=iptables,iptables-nft` measures the iptables control plane alone).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::states::CONTROL_SERVICES;

/// What the command line asks for.
pub enum Invocation {
    /// The child of the peak-RSS measurement, with its arguments.
    RssChild(Vec<String>),
    /// Rewrite the report from the last run's results, measuring nothing.
    ReportOnly,
    /// Run without `--bench` (`cargo test --benches`): nothing to check.
    NotBench,
    /// Measure.
    Bench,
}

impl Invocation {
    /// From the process's arguments.
    pub fn from_args() -> Invocation {
        let args: Vec<String> = std::env::args().collect();
        if let Some(i) = args.iter().position(|a| a == "--rss-child") {
            Invocation::RssChild(args[i + 1..].to_vec())
        } else if args.iter().any(|a| a == "--report-only") {
            Invocation::ReportOnly
        } else if args.iter().any(|a| a == "--bench") {
            Invocation::Bench
        } else {
            Invocation::NotBench
        }
    }
}

/// Where the results go.
pub struct Paths {
    /// `benches/results`: `scaling.json` and the plots.
    pub out_dir: PathBuf,
    /// The markdown report (`DP_BENCH_REPORT`, default `BENCHMARKS.md`).
    pub report: PathBuf,
}

impl Paths {
    /// From `DP_BENCH_REPORT` and the repository root.
    pub fn from_env() -> Paths {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        Paths {
            out_dir: root.join("benches/results"),
            report: std::env::var("DP_BENCH_REPORT")
                .map_or_else(|_| root.join("BENCHMARKS.md"), PathBuf::from),
        }
    }

    /// The results of the last run (`scaling.json`).
    pub fn json(&self) -> PathBuf {
        self.out_dir.join("scaling.json")
    }
}

/// The run's settings, recorded in the results.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    /// The end-to-end sizes (services per node).
    pub services: Vec<usize>,
    /// The control plane's sizes (services from empty, one change among them, peak RSS).
    #[serde(default = "default_control_services")]
    pub control_services: Vec<usize>,
    /// The largest size the iptables backend is programmed with, end to end and in the
    /// control plane: beyond it its rows are skipped (10k x 10 already takes it 9 s from
    /// empty and 10 s as a full sync, growing faster than linearly, and the bench has a time
    /// budget). `usize::MAX`: no limit.
    #[serde(default = "default_iptables_max")]
    pub iptables_max: usize,
    /// `DP_BENCH_LARGE`: 50k and 100k services were added to the default sizes.
    #[serde(default)]
    pub large: bool,
    pub rounds: usize,
    pub crr_secs: f64,
    pub rr_secs: f64,
    pub threads: usize,
    pub changes: usize,
    pub packets: u64,
    pub quick: bool,
    /// Seconds of unmeasured CRR load per dataplane before the first size (see
    /// `end_to_end::fill_conntrack`).
    #[serde(default)]
    pub fill_secs: f64,
}

/// The control plane's size before it had a setting of its own.
fn default_control_services() -> Vec<usize> {
    vec![CONTROL_SERVICES]
}

/// The iptables limit of runs before it had a setting: none.
fn default_iptables_max() -> usize {
    usize::MAX
}

/// The sizes `DP_BENCH_LARGE` adds, end to end and to the control plane.
pub const LARGE_SERVICES: [usize; 2] = [50_000, 100_000];

/// Default of [`Settings::iptables_max`].
const IPTABLES_MAX: usize = 10_000;

/// A comma-separated list of sizes.
fn sizes(v: &str) -> Vec<usize> {
    v.split(',').filter_map(|s| s.trim().parse().ok()).collect()
}

impl Settings {
    /// Whether backend `kind` (a node kind or a control-plane backend) is programmed with
    /// `n` services (see [`Settings::iptables_max`]).
    pub fn measures(&self, kind: &str, n: usize) -> bool {
        !kind.starts_with("iptables") || n <= self.iptables_max
    }

    /// Why backend `kind` is not measured at `n` services ([`Settings::measures`]).
    pub fn skip_reason(&self, kind: &str, n: usize) -> Option<String> {
        (!self.measures(kind, n)).then(|| {
            format!(
                "not measured beyond {} services (DP_BENCH_IPTABLES_MAX: the bench's time budget)",
                self.iptables_max
            )
        })
    }

    /// The largest number of services any measurement programs (sizes the eBPF maps).
    pub fn max_services(&self) -> usize {
        self.services
            .iter()
            .chain(&self.control_services)
            .copied()
            .max()
            .unwrap_or(CONTROL_SERVICES)
    }

    /// From the `DP_BENCH_*` variables (see the module docs); `DP_BENCH_QUICK` changes the
    /// defaults.
    pub fn from_env() -> Settings {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let quick = var("DP_BENCH_QUICK").is_some_and(|v| v != "0");
        let num = |k: &str, d: f64| var(k).and_then(|v| v.parse().ok()).unwrap_or(d);
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let int = |k: &str, d: usize| num(k, d as f64) as usize;
        let large = var("DP_BENCH_LARGE").is_some_and(|v| v != "0");
        let services = var("DP_BENCH_SERVICES").map_or_else(
            || {
                let mut v = if quick {
                    vec![1, 1_000]
                } else {
                    vec![1, 1_000, 5_000, 10_000]
                };
                if large {
                    v.extend(LARGE_SERVICES);
                }
                v
            },
            |v| sizes(&v),
        );
        let control_services = var("DP_BENCH_CONTROL_SERVICES").map_or_else(
            || {
                let mut v = vec![CONTROL_SERVICES];
                if large {
                    v.extend(LARGE_SERVICES);
                }
                v
            },
            |v| sizes(&v),
        );
        Settings {
            services,
            control_services,
            iptables_max: int("DP_BENCH_IPTABLES_MAX", IPTABLES_MAX),
            large,
            rounds: int("DP_BENCH_ROUNDS", if quick { 2 } else { 8 }).max(1),
            crr_secs: num("DP_BENCH_CRR_SECS", if quick { 0.5 } else { 1.2 }),
            rr_secs: num("DP_BENCH_RR_SECS", if quick { 0.3 } else { 0.5 }),
            threads: int("DP_BENCH_THREADS", 2).max(1),
            changes: int("DP_BENCH_CHANGES", if quick { 3 } else { 10 }).max(1),
            packets: if quick { 5_000 } else { 20_000 },
            fill_secs: num("DP_BENCH_FILL_SECS", if quick { 3.0 } else { 12.0 }),
            quick,
        }
    }
}

/// The sections of a run, in the order they run: compute-only costs, per-packet cost,
/// end-to-end (CRR and RR), the control plane (on the end-to-end lab when both run, else on a
/// lab of its own), NetworkPolicy.
pub const SECTIONS: [&str; 5] = ["compute", "packet", "end-to-end", "control", "policy"];

/// The control plane's backends: the end-to-end nodes' (but "ebpf-socket", whose control
/// plane is "ebpf"'s) and "iptables-nft", the iptables backend with the `nf_tables` flavour of
/// the tools on the iptables node ("iptables" runs iptables-legacy, as end to end).
pub const CONTROL_BACKENDS: [&str; 4] = ["ebpf", "nftables", "iptables", "iptables-nft"];

/// The control-plane backends `DP_BENCH_BACKENDS` names (all of [`CONTROL_BACKENDS`] when it
/// is unset or empty).
pub fn backends_from_env() -> Result<Vec<&'static str>, String> {
    subset_from_env("DP_BENCH_BACKENDS", &CONTROL_BACKENDS, "backend")
}

/// The sections `DP_BENCH_SECTIONS` names (all of [`SECTIONS`] when it is unset or empty).
pub fn sections_from_env() -> Result<Vec<&'static str>, String> {
    subset_from_env("DP_BENCH_SECTIONS", &SECTIONS, "section")
}

/// The names of `known` that the comma-separated variable `var` lists, in `known`'s order
/// (all when it is unset or empty); an unknown name is an error naming `what` it should be.
fn subset_from_env(
    var: &str,
    known: &[&'static str],
    what: &str,
) -> Result<Vec<&'static str>, String> {
    let Some(v) = std::env::var(var).ok().filter(|v| !v.trim().is_empty()) else {
        return Ok(known.to_vec());
    };
    let mut wanted = Vec::new();
    for name in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some(k) = known.iter().find(|k| **k == name) else {
            return Err(format!(
                "{var}: unknown {what} {name:?} (known: {})",
                known.join(", ")
            ));
        };
        wanted.push(*k);
    }
    Ok(known
        .iter()
        .copied()
        .filter(|k| wanted.contains(k))
        .collect())
}
