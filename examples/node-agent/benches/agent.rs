//! The node agent end to end, as a real process on a lab node: from a manifest change on disk
//! to traffic reaching the new backend with 10 000 services present, the first sync, and the
//! agent's memory with 10 000 services x 10 endpoints. Writes `BENCHMARKS.md` (next to this
//! package's `Cargo.toml`) and `benches/results.json`.
//!
//! Run as root: `sudo -E cargo bench -p dataplane-agent --bench agent`.
//!
//! Environment (for quick runs; the report says when a run was not the full one):
//! - `DP_AGENT_BENCH_BACKENDS` (default `ebpf,nft`; `iptables` too if asked),
//! - `DP_AGENT_BENCH_SERVICES` (default 10000), `DP_AGENT_BENCH_ENDPOINTS` (default 10),
//! - `DP_AGENT_BENCH_CHANGES` (changes per write method, default 30), `DP_AGENT_BENCH_WRITES`
//!   (`rename,in-place`, the default, or one of them),
//! - `DP_AGENT_BENCH_MIN_SYNC` (the agent's `--min-sync-period` in ms, default 1000: the
//!   agent's default) and `DP_AGENT_BENCH_GAP` (ms between two changes, default 1200),
//! - `DP_AGENT_BENCH_REPORT_ONLY=1`: rewrite the report from `benches/results.json`,
//! - `DP_AGENT_BENCH_AGENT_ENV`: `NAME=value` pairs, separated by spaces, set for the agent
//!   only (not its `--cleanup` run): a heap profile with heaptrack's preload library, see
//!   `BENCHMARKS.md` ("Where the memory goes").

// The root package's bench records the machine the same way.
#[path = "../../../benches/scaling/machine.rs"]
mod machine;
#[path = "agent/manifests.rs"]
mod manifests;
#[path = "agent/measure.rs"]
mod measure;
#[path = "agent/process.rs"]
mod process;
#[path = "agent/report.rs"]
mod report;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// What a run measures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    pub backends: Vec<String>,
    pub services: usize,
    pub endpoints: usize,
    pub changes: usize,
    /// The write methods measured.
    #[serde(default = "both_writes")]
    pub writes: Vec<measure::Write>,
    #[serde(with = "millis")]
    pub min_sync: Duration,
    #[serde(with = "millis")]
    pub gap: Duration,
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    #[allow(clippy::trivially_copy_pass_by_ref)] // serde's signature
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

fn both_writes() -> Vec<measure::Write> {
    vec![measure::Write::Rename, measure::Write::InPlace]
}

/// The defaults: what the targets are about.
pub const FULL: Settings = Settings {
    backends: Vec::new(),
    services: 10_000,
    endpoints: 10,
    changes: 30,
    writes: Vec::new(),
    min_sync: Duration::from_secs(1),
    gap: Duration::from_millis(1200),
};

impl Settings {
    fn from_env() -> Result<Settings, String> {
        fn number(name: &str, default: u64) -> Result<u64, String> {
            std::env::var(name).map_or(Ok(default), |v| {
                v.parse().map_err(|e| format!("{name}={v}: {e}"))
            })
        }
        let backends = std::env::var("DP_AGENT_BENCH_BACKENDS")
            .unwrap_or_else(|_| "ebpf,nft".to_owned())
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        let usize_of = |v: u64| usize::try_from(v).map_err(|e| e.to_string());
        Ok(Settings {
            backends,
            services: usize_of(number("DP_AGENT_BENCH_SERVICES", 10_000)?)?.max(1),
            endpoints: usize_of(number("DP_AGENT_BENCH_ENDPOINTS", 10)?)?,
            changes: usize_of(number("DP_AGENT_BENCH_CHANGES", 30)?)?.max(1),
            writes: match std::env::var("DP_AGENT_BENCH_WRITES").as_deref() {
                Err(_) | Ok("") => both_writes(),
                Ok(list) => list
                    .split(',')
                    .map(|w| match w.trim() {
                        "rename" => Ok(measure::Write::Rename),
                        "in-place" => Ok(measure::Write::InPlace),
                        other => Err(format!("DP_AGENT_BENCH_WRITES: {other}?")),
                    })
                    .collect::<Result<_, _>>()?,
            },
            min_sync: Duration::from_millis(number("DP_AGENT_BENCH_MIN_SYNC", 1000)?),
            gap: Duration::from_millis(number("DP_AGENT_BENCH_GAP", 1200)?),
        })
    }

    /// Whether this run measured what the targets are about.
    pub fn is_full(&self) -> bool {
        self.services == FULL.services
            && self.endpoints == FULL.endpoints
            && self.changes >= 20
            && self.writes.len() == 2
            && self.min_sync == FULL.min_sync
    }
}

/// Everything a run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    pub machine: machine::Machine,
    /// `/proc/loadavg`'s 1-minute load at the start: other work on the machine.
    #[serde(default)]
    pub load: String,
    pub settings: Settings,
    pub seconds: f64,
    pub runs: Vec<measure::BackendRun>,
}

fn package_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is understood.
    if std::env::args().skip(1).any(|a| a == "--list") {
        return;
    }
    let json = package_dir().join("benches/results.json");
    let markdown = package_dir().join("BENCHMARKS.md");
    if std::env::var("DP_AGENT_BENCH_REPORT_ONLY").as_deref() == Ok("1") {
        let text = std::fs::read_to_string(&json).expect("benches/results.json");
        let mut results: Results =
            serde_json::from_str(&text).expect("benches/results.json parses");
        if results.load.is_empty() {
            // Written before the load moved out of `machine`.
            let raw: serde_json::Value = serde_json::from_str(&text).expect("JSON");
            if let Some(load) = raw.pointer("/machine/load").and_then(|v| v.as_str()) {
                load.clone_into(&mut results.load);
            }
        }
        write_report(&results, &json, &markdown);
        return;
    }
    if !dataplane_testkit::require_root("agent bench") {
        return;
    }
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("agent bench: {e}");
            std::process::exit(2);
        }
    };
    let machine = machine::Machine::this();
    let load = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .unwrap_or("unknown")
        .to_owned();
    let start = Instant::now();
    let mut runs = Vec::new();
    for backend in &settings.backends {
        match measure::run(backend, &settings) {
            Ok(run) => runs.push(run),
            Err(e) => {
                eprintln!("agent bench: {backend}: {e}");
                std::process::exit(1);
            }
        }
    }
    let results = Results {
        machine,
        load,
        settings,
        seconds: start.elapsed().as_secs_f64(),
        runs,
    };
    let text = serde_json::to_string_pretty(&results).expect("results serialize");
    write_file(&json, &(text + "\n"));
    write_report(&results, &json, &markdown);
}

fn write_report(results: &Results, json: &Path, markdown: &Path) {
    let text = report::markdown(results, json);
    write_file(markdown, &text);
    eprintln!("{text}");
}

/// Writes `path`, owned by the user who ran `sudo` (the files are in their checkout).
fn write_file(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let id = |name| std::env::var(name).ok().and_then(|v| v.parse::<u32>().ok());
    if let (Some(uid), Some(gid)) = (id("SUDO_UID"), id("SUDO_GID")) {
        let _ = nix::unistd::chown(
            path,
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
        );
    }
}
