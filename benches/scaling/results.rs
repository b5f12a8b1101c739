//! What a run measured: the rows of `benches/results/scaling.json`, written after a run and
//! read back by `--report-only`. Field names are that file's format.

use serde::{Deserialize, Serialize};

use crate::machine::Machine;
use crate::settings::Settings;

/// A compute-only cost: median of 5 runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ComputeRow {
    pub what: String,
    pub median_ms: f64,
}

/// Per-packet costs at one number of services (kernel-measured ns per packet).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PacketRow {
    pub services: usize,
    pub program_ms: f64,
    pub established_ns: f64,
    pub new_flow_ns: f64,
    /// The XDP program on NodePort packets to remote backends.
    #[serde(default)]
    pub xdp_established_ns: Option<f64>,
    #[serde(default)]
    pub xdp_new_flow_ns: Option<f64>,
    /// The floor fixture on the established packets, per program of
    /// `packet::FLOOR_PROGRAMS` (test run only, + conntrack lookup, + rewrite; service and
    /// backend lookup).
    #[serde(default)]
    pub floor_ns: Option<[f64; 4]>,
}

/// One end-to-end mode at one number of services: per-round values, medians in the report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScalingRow {
    pub services: usize,
    /// `direct`, `ebpf`, `nftables`, `iptables`.
    pub mode: String,
    /// `-` (direct), `random`, `last`.
    pub placement: String,
    /// Position of the target among the services in name order (0-based).
    pub rank: Option<usize>,
    pub crr: Vec<f64>,
    pub crr_ratio: Vec<f64>,
    pub p50_us: Vec<f64>,
    pub p99_us: Vec<f64>,
    pub p99_ratio: Vec<f64>,
    pub failed_connections: u64,
    pub backends_seen: usize,
    pub error: Option<String>,
}

/// Programming one number of services into a backend of the end-to-end lab.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProgramRow {
    pub backend: String,
    pub services: usize,
    pub apply_ms: Option<f64>,
    pub error: Option<String>,
}

/// Memory of the `--rss-child` process (KiB) and how long its apply took.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Rss {
    pub vmhwm_kib: u64,
    pub vmrss_before_kib: u64,
    pub children_maxrss_kib: u64,
    pub apply_ms: f64,
}

/// A backend's control plane (see `control`).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ControlRow {
    pub backend: String,
    /// 10k x 10 applied to a backend that holds the node without services (its programs or
    /// base rules installed).
    pub apply_from_empty_ms: Vec<f64>,
    /// Node setup before that: the first apply, of the node and its endpoints without
    /// services (attaching to the uplink and the pods' interfaces).
    #[serde(default)]
    pub setup_ms: Vec<f64>,
    pub change_apply_us: Vec<f64>,
    pub change_reach_us: Vec<f64>,
    pub rss: Option<Rss>,
    pub error: Option<String>,
}

/// The "ebpf" node's `dp_from_pod` under one CRR measurement: runs and mean ns per run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InSitu {
    pub services: usize,
    pub runs: u64,
    pub ns_per_run: f64,
}

/// Everything a run measured: `scaling.json`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Results {
    pub machine: Option<Machine>,
    pub settings: Option<Settings>,
    pub compute: Vec<ComputeRow>,
    pub packet: Vec<PacketRow>,
    pub packet_error: Option<String>,
    pub scaling: Vec<ScalingRow>,
    pub programming: Vec<ProgramRow>,
    pub in_situ: Vec<InSitu>,
    pub control: Vec<ControlRow>,
    pub total_secs: f64,
}

/// Median of `v` (mean of the middle two for even lengths); NaN when empty.
pub fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        f64::midpoint(s[m - 1], s[m])
    }
}
