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
    /// Why this mode was not measured at this size (`DP_BENCH_IPTABLES_MAX`).
    #[serde(default)]
    pub skipped: Option<String>,
}

impl ScalingRow {
    /// Whether the mode is measured: it neither failed nor is skipped at this size.
    pub fn measurable(&self) -> bool {
        self.error.is_none() && self.skipped.is_none()
    }
}

/// Programming one number of services into a backend of the end-to-end lab.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProgramRow {
    pub backend: String,
    pub services: usize,
    pub apply_ms: Option<f64>,
    pub error: Option<String>,
    /// Why the backend was not programmed with this size (`DP_BENCH_IPTABLES_MAX`).
    #[serde(default)]
    pub skipped: Option<String>,
}

/// Memory of the `--rss-child` process (KiB) and how long its apply took.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Rss {
    pub vmhwm_kib: u64,
    pub vmrss_before_kib: u64,
    /// `VmRSS` with the backend open and the state built, before the sync (0: not measured).
    #[serde(default)]
    pub vmrss_state_kib: u64,
    /// `VmRSS` after the sync (0: not measured).
    #[serde(default)]
    pub vmrss_after_kib: u64,
    pub children_maxrss_kib: u64,
    pub apply_ms: f64,
}

/// A backend's control plane (see `control`).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ControlRow {
    pub backend: String,
    /// Services programmed (x 10 endpoints); rows of runs before this field are 10k.
    #[serde(default = "control_services_before")]
    pub services: usize,
    /// `services` x 10 applied to a backend that holds the node without services (its programs or
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
    /// When this row was measured (a `control` run of some backends keeps the others' rows).
    #[serde(default)]
    pub measured: Option<String>,
    /// Why this backend was not measured at this size (`DP_BENCH_IPTABLES_MAX`).
    #[serde(default)]
    pub skipped: Option<String>,
}

/// The control plane's size before it was a setting.
fn control_services_before() -> usize {
    crate::states::CONTROL_SERVICES
}

/// The "ebpf" node's `dp_from_pod` under one CRR measurement: runs and mean ns per run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InSitu {
    pub services: usize,
    pub runs: u64,
    pub ns_per_run: f64,
}

/// NetworkPolicy, end to end on one backend: CRR through a ClusterIP to pods selected by 1k
/// policies against the same without policies (see `policy`).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct PolicyCrrRow {
    pub backend: String,
    /// Connections/s per round without policies.
    pub crr_none: Vec<f64>,
    /// Connections/s per round with the policies.
    pub crr_policy: Vec<f64>,
    /// Per round: with policies / without.
    pub ratio: Vec<f64>,
    pub failed_connections: u64,
    pub error: Option<String>,
}

/// NetworkPolicy control plane of one backend: programming the policy state from empty and
/// one peer pod label change until enforced.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct PolicyControlRow {
    pub backend: String,
    /// Node setup before that: the node, its endpoints and the target service, no policies.
    pub setup_ms: Vec<f64>,
    /// The policies, peer pods and namespaces added to that (a full apply).
    pub apply_from_empty_ms: Vec<f64>,
    /// `apply_changes` of one peer pod's new labels.
    pub relabel_apply_us: Vec<f64>,
    /// From the `apply_changes` call until a probe from that pod is answered.
    pub relabel_reach_us: Vec<f64>,
    pub error: Option<String>,
}

/// The TC program's cost per new connection at one number of policies (see
/// `benches/common/packet.rs`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyPacketRow {
    pub policies: usize,
    pub program_ms: f64,
    /// `dp_from_pod`: service translation and the client's egress.
    pub new_flow_ns: f64,
    /// `dp_to_pod`: the server's ingress.
    #[serde(default)]
    pub to_pod_new_flow_ns: Option<f64>,
}

/// Everything the policy sections measured, with the run that measured them (a
/// `DP_BENCH_SECTIONS=policy` run measures only these and keeps the rest of `scaling.json`).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct PolicyResults {
    pub machine: Option<Machine>,
    pub settings: Option<Settings>,
    pub policies: usize,
    pub peers: usize,
    pub crr: Vec<PolicyCrrRow>,
    pub control: Vec<PolicyControlRow>,
    pub packet: Vec<PolicyPacketRow>,
    pub packet_error: Option<String>,
    /// Why the end-to-end part did not run at all (the lab could not be built).
    pub error: Option<String>,
    pub secs: f64,
}

/// When a section was last measured, and whether by a quick run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SectionRun {
    pub date: String,
    pub quick: bool,
}

/// Everything a run measured: `scaling.json`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Results {
    pub machine: Option<Machine>,
    pub settings: Option<Settings>,
    pub compute: Vec<ComputeRow>,
    pub packet: Vec<PacketRow>,
    pub packet_error: Option<String>,
    /// New flows the per-packet section ran to fill conntrack before its first size (0: not
    /// filled, as runs before 2026-12-07; see `benches/common/packet.rs`).
    #[serde(default)]
    pub packet_ct_fill: u64,
    pub scaling: Vec<ScalingRow>,
    pub programming: Vec<ProgramRow>,
    pub in_situ: Vec<InSitu>,
    pub control: Vec<ControlRow>,
    /// The NetworkPolicy sections.
    #[serde(default)]
    pub policy: Option<PolicyResults>,
    /// Section name (`settings::SECTIONS`) → the run that measured it; a section missing
    /// here was measured by the run of `machine.date`.
    #[serde(default)]
    pub section_runs: std::collections::BTreeMap<String, SectionRun>,
    /// Duration of the last run that measured the compute, packet and end-to-end sections.
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
