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
//! Environment: `DP_BENCH_QUICK=1` (1 and 1k services, 2 rounds: a quick check),
//! `DP_BENCH_SERVICES=1,1000,5000,10000`, `DP_BENCH_ROUNDS`, `DP_BENCH_CRR_SECS`,
//! `DP_BENCH_RR_SECS`, `DP_BENCH_THREADS`, `DP_BENCH_CHANGES`, `DP_BENCH_REPORT` (path of the
//! markdown report; default `BENCHMARKS.md` at the repository root).

#[path = "../common/packet.rs"]
mod packet;

mod load;
mod report;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use dataplane::netfilter::{NetfilterConfig, NftablesDataplane};
use dataplane::testing::synthetic;
use dataplane::{
    open, Backend, BoxDataplane, Change, ChangeSet, DataplaneKind, DesiredState, ObjectName,
    Options, Protocol, Selection, Service, ServicePort,
};
use dataplane_testkit::{Lab, LabSpec};
use serde::{Deserialize, Serialize};

/// The backends under test, each on its own node (node 0 has none: the direct limit).
pub const BACKENDS: [&str; 4] = ["ebpf", "ebpf-socket", "nftables", "iptables"];
/// Backend pods per node (the client is one more).
const BACKEND_PODS: usize = 10;
/// Services of the control-plane bench.
const CONTROL_SERVICES: usize = 10_000;
/// Service sizes of the per-packet section.
const PACKET_SERVICES: [usize; 4] = [10, 1_000, 10_000, 100_000];

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    pub services: Vec<usize>,
    pub rounds: usize,
    pub crr_secs: f64,
    pub rr_secs: f64,
    pub threads: usize,
    pub changes: usize,
    pub packets: u64,
    pub quick: bool,
    /// Seconds of unmeasured CRR load per dataplane before the first size (see
    /// `fill_conntrack`).
    #[serde(default)]
    pub fill_secs: f64,
}

impl Settings {
    fn from_env() -> Settings {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let quick = var("DP_BENCH_QUICK").is_some_and(|v| v != "0");
        let num = |k: &str, d: f64| var(k).and_then(|v| v.parse().ok()).unwrap_or(d);
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let int = |k: &str, d: usize| num(k, d as f64) as usize;
        let services = var("DP_BENCH_SERVICES").map_or_else(
            || {
                if quick {
                    vec![1, 1_000]
                } else {
                    vec![1, 1_000, 5_000, 10_000]
                }
            },
            |v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect(),
        );
        Settings {
            services,
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

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory: String,
    pub kernel: String,
    pub os: String,
    pub rustc: String,
    pub date: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ComputeRow {
    pub what: String,
    pub median_ms: f64,
}

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

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProgramRow {
    pub backend: String,
    pub services: usize,
    pub apply_ms: Option<f64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Rss {
    pub vmhwm_kib: u64,
    pub vmrss_before_kib: u64,
    pub children_maxrss_kib: u64,
    pub apply_ms: f64,
}

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

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InSitu {
    pub services: usize,
    pub runs: u64,
    pub ns_per_run: f64,
}

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

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--rss-child") {
        std::process::exit(rss_child(&args[i + 1..]));
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out_dir = root.join("benches/results");
    let report_path =
        std::env::var("DP_BENCH_REPORT").map_or_else(|_| root.join("BENCHMARKS.md"), PathBuf::from);
    // `--report-only`: rewrite the report and plots from the last run's scaling.json (after
    // editing benches/notes.md, say), measuring nothing.
    if args.iter().any(|a| a == "--report-only") {
        let json_path = out_dir.join("scaling.json");
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
        if let Err(e) = report::write_all(&results, &out_dir, &report_path) {
            eprintln!("writing the report failed: {e}");
            std::process::exit(1);
        }
        return;
    }
    // `cargo test --benches` runs bench binaries without `--bench`: nothing to check here.
    if !args.iter().any(|a| a == "--bench") {
        println!(
            "scaling: a benchmark; run it with `cargo bench --features ebpf,nft --bench scaling`"
        );
        return;
    }
    if !dataplane_testkit::require_root("bench scaling") {
        return;
    }
    let settings = Settings::from_env();
    let start = Instant::now();
    let mut results = Results {
        machine: Some(machine()),
        settings: Some(settings.clone()),
        ..Results::default()
    };
    log(start, "compute-only costs");
    results.compute = compute_costs();
    log(start, "per-packet cost (BPF_PROG_TEST_RUN)");
    match packet_costs(&settings, start) {
        Ok(rows) => results.packet = rows,
        Err(e) => {
            eprintln!("per-packet section failed: {e}");
            results.packet_error = Some(e);
        }
    }
    if let Err(e) = end_to_end(&settings, &mut results, start) {
        eprintln!("end-to-end section failed: {e}");
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "bench scaling: {e}"
        );
    }
    results.total_secs = start.elapsed().as_secs_f64();
    if let Err(e) = report::write_all(&results, &out_dir, &report_path) {
        eprintln!("writing the report failed: {e}");
        std::process::exit(1);
    }
    log(start, &format!("done: {}", report_path.display()));
}

fn log(start: Instant, what: &str) {
    eprintln!("[{:>6.1}s] {what}", start.elapsed().as_secs_f64());
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
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

fn read_to_string(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn command_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(
            || "unknown".to_owned(),
            |o| String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        )
}

fn machine() -> Machine {
    let cpuinfo = read_to_string("/proc/cpuinfo");
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or_else(|| "unknown".to_owned(), |s| s.trim().to_owned());
    let meminfo = read_to_string("/proc/meminfo");
    let memory = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kib| kib.parse::<f64>().ok())
        .map_or_else(
            || "unknown".to_owned(),
            |kib| format!("{:.1} GiB", kib / 1024.0 / 1024.0),
        );
    let os = read_to_string("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map_or_else(|| "unknown".to_owned(), |s| s.trim_matches('"').to_owned());
    Machine {
        cpu,
        cores: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        memory,
        kernel: read_to_string("/proc/sys/kernel/osrelease")
            .trim()
            .to_owned(),
        os,
        rustc: command_line("rustc", &["-V"]),
        date: command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
    }
}

fn time_median(runs: usize, mut f: impl FnMut()) -> f64 {
    let mut v = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        f();
        v.push(ms(t.elapsed()));
    }
    median(&v)
}

/// Pure control-plane work at 10k services x 10 (no kernel): what an agent computes before
/// it programs anything. The criterion benches `core` and `render` measure the same with
/// statistics; these medians of 5 runs put them next to the kernel numbers.
fn compute_costs() -> Vec<ComputeRow> {
    let state = synthetic::state(CONTROL_SERVICES, 10);
    let mut changed = state.clone();
    changed.services[CONTROL_SERVICES / 2].backends.pop();
    let nft = NftablesDataplane::new(NetfilterConfig::nftables(None));
    let mut rows = vec![
        ComputeRow {
            what: "validate 10k services x 10".to_owned(),
            median_ms: time_median(5, || {
                dataplane::validate(&state).expect("valid");
            }),
        },
        ComputeRow {
            what: "diff two 10k-service states (one endpoint changed)".to_owned(),
            median_ms: time_median(5, || {
                std::hint::black_box(dataplane::implement::diff(&state, &changed));
            }),
        },
        ComputeRow {
            what: "clone a 10k-service state".to_owned(),
            median_ms: time_median(5, || {
                std::hint::black_box(state.clone());
            }),
        },
        ComputeRow {
            what: "render the nftables full sync of 10k services x 10".to_owned(),
            median_ms: time_median(5, || {
                std::hint::black_box(nft.render(&state).expect("renders"));
            }),
        },
    ];
    rows.extend(iptables_compute(&state));
    let backends: Vec<dataplane::implement::MaglevBackend> = (0..100)
        .map(|i| dataplane::implement::MaglevBackend {
            key: format!("10.244.0.{i}:8080"),
            weight: 1,
        })
        .collect();
    rows.push(ComputeRow {
        what: "Maglev table (16381 entries) for 100 backends".to_owned(),
        median_ms: time_median(5, || {
            std::hint::black_box(
                dataplane::implement::maglev_table(
                    &backends,
                    dataplane::implement::DEFAULT_MAGLEV_TABLE_SIZE,
                )
                .expect("table"),
            );
        }),
    });
    rows
}

fn iptables_compute(state: &DesiredState) -> Vec<ComputeRow> {
    use dataplane::netfilter::iptables::render;
    use dataplane::netfilter::plan::{plan, Family};
    vec![ComputeRow {
        what: "render the iptables-restore input of 10k services x 10".to_owned(),
        median_ms: time_median(5, || {
            let rs = render::compile(&plan(state), Family::V4, "DP");
            std::hint::black_box(render::render_sync(None, &rs, &render::Existing::default()));
        }),
    }]
}

fn packet_costs(settings: &Settings, start: Instant) -> Result<Vec<PacketRow>, String> {
    let mut lab = packet::PacketLab::new()?;
    let mut rows = Vec::new();
    for n in PACKET_SERVICES {
        let took = lab.program(n)?;
        // Warm-up: fill conntrack a little, fault in the code paths.
        lab.new_flows(1_000)?;
        lab.established(1_000)?;
        for program in packet::FLOOR_PROGRAMS {
            lab.floor(program, 1_000)?;
        }
        // The established packets and the floor fixture on the same packets, in turns, so
        // that both see the machine alike.
        let mut established = packet::Sample::default();
        let mut floor = [packet::Sample::default(); 4];
        let chunk = (settings.packets / 5).max(1);
        for _ in 0..5 {
            established.add(lab.established(chunk)?);
            for (f, program) in floor.iter_mut().zip(packet::FLOOR_PROGRAMS) {
                f.add(lab.floor(program, chunk)?);
            }
        }
        let new_flow = lab.new_flows(settings.packets)?;
        lab.xdp_new_flows(1_000)?;
        lab.xdp_established(1_000)?;
        let xdp_established = lab.xdp_established(settings.packets)?;
        let xdp_new_flow = lab.xdp_new_flows(settings.packets)?;
        let row = PacketRow {
            services: n,
            program_ms: ms(took),
            established_ns: established.ns_per_packet(),
            new_flow_ns: new_flow.ns_per_packet(),
            xdp_established_ns: Some(xdp_established.ns_per_packet()),
            xdp_new_flow_ns: Some(xdp_new_flow.ns_per_packet()),
            floor_ns: Some(floor.map(|f| f.ns_per_packet())),
        };
        log(
            start,
            &format!(
                "  {n} services: TC established {:.0} ns, new flow {:.0} ns; XDP established \
                 {:.0} ns, new flow {:.0} ns; floor {:.0} / {:.0} / {:.0} ns, service \
                 {:.0} ns (programmed in {:.0} ms)",
                row.established_ns,
                row.new_flow_ns,
                xdp_established.ns_per_packet(),
                xdp_new_flow.ns_per_packet(),
                floor[0].ns_per_packet(),
                floor[1].ns_per_packet(),
                floor[2].ns_per_packet(),
                floor[3].ns_per_packet(),
                row.program_ms
            ),
        );
        rows.push(row);
    }
    Ok(rows)
}

// ---------------------------------------------------------------------------------------
// End to end

/// Unmeasured CRR load through each dataplane (once, before the first size), so that every
/// size is measured at the steady state of a busy node: under this load connection tracking
/// (our `dp_ct`, the kernel's for nftables and iptables) fills within seconds and then
/// evicts or expires as it inserts. Without it the first size ran with empty tables and the
/// later ones with full ones, which the "flat" ratios took for the number of services.
fn fill_conntrack(
    settings: &Settings,
    start: Instant,
    modes: &[Mode],
    rows: &[ScalingRow],
    targets: &dyn Fn(&Mode) -> Vec<SocketAddr>,
    lab: &Lab,
) {
    if settings.fill_secs <= 0.0 {
        return;
    }
    log(
        start,
        &format!(
            "filling connection tracking: {:.0} s of CRR per dataplane",
            settings.fill_secs
        ),
    );
    let fill = Duration::from_secs_f64(settings.fill_secs);
    for (m, row) in modes.iter().zip(rows) {
        if m.kind == "direct" || m.placement == "random" || row.error.is_some() {
            continue;
        }
        let client = &lab.pods_on(m.node).next().expect("client pod").netns;
        if let Err(e) = load::crr(client, &targets(m), fill, settings.threads) {
            eprintln!("  {}: filling connection tracking: {e}", m.kind);
        }
    }
}

fn ebpf_pin_dir(tag: &str) -> PathBuf {
    PathBuf::from(format!("/sys/fs/bpf/dp-bench-{}-{tag}", std::process::id()))
}

/// The dataplane of bench mode `kind` in `netns`, opened by the library with the bench's
/// settings; "ebpf-socket" is the eBPF dataplane with its socket hooks on `cgroup`.
fn make_backend(
    kind: &str,
    netns: &Path,
    pin_tag: &str,
    cgroup: Option<&Path>,
) -> Result<BoxDataplane, String> {
    let mut options = Options::in_netns(netns);
    let dataplane = match kind {
        "ebpf" | "ebpf-socket" => {
            options.ebpf.pin_dir = ebpf_pin_dir(&format!("{kind}-{pin_tag}"));
            if kind == "ebpf-socket" {
                let cgroup = cgroup.ok_or("socket LB needs the bench's cgroup")?;
                options.ebpf.socket_lb_cgroup = Some(cgroup.to_owned());
                // Its connections are pod-to-pod from the first packet: routed like the
                // translated ones, straight to the backend's veth.
                options.ebpf.host_routing = true;
            }
            // 10k ClusterIPs take two entries each, the synthetic NodePorts two more.
            options.ebpf.capacities.services = 1 << 16;
            DataplaneKind::Ebpf
        }
        "nftables" => DataplaneKind::Nftables,
        "iptables" => {
            // iptables-legacy: iptables-nft-restore needed more than 5 minutes for a 320k-line
            // input of 10k services x 10 on this machine (user-space translation), legacy
            // 6 s. kube-proxy's iptables mode runs on either.
            let c = &mut options.iptables;
            c.iptables_restore = PathBuf::from("iptables-legacy-restore");
            c.ip6tables_restore = PathBuf::from("ip6tables-legacy-restore");
            c.iptables = PathBuf::from("iptables-legacy");
            c.ip6tables = PathBuf::from("ip6tables-legacy");
            DataplaneKind::Iptables
        }
        other => return Err(format!("unknown backend {other}")),
    };
    open(Selection::Only(dataplane), &options)
        .map(|opened| opened.dataplane)
        .map_err(|e| {
            let mut text = format!("open {kind}: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                text = format!("{text}: {cause}");
                source = cause.source();
            }
            text
        })
}

fn vip(i: usize) -> Ipv4Addr {
    match synthetic::cluster_ip(i) {
        IpAddr::V4(a) => a,
        IpAddr::V6(_) => unreachable!("synthetic ClusterIPs are IPv4"),
    }
}

/// ClusterIPs of lab node `node`'s target services, far above the synthetic ones and
/// different on every node (see the module docs).
fn vip_last(node: usize) -> Ipv4Addr {
    vip(500_000 + 2 * node)
}
fn vip_random(node: usize) -> Ipv4Addr {
    vip(500_001 + 2 * node)
}
fn vip_probe() -> Ipv4Addr {
    vip(499_990)
}

fn target_service(
    namespace: &str,
    name: &str,
    cluster_ip: Ipv4Addr,
    pods: &[Ipv4Addr],
    node: &str,
) -> Service {
    let mut s = Service::new(ObjectName::new(namespace, name));
    s.cluster_ips = vec![IpAddr::V4(cluster_ip)];
    s.ports = vec![ServicePort {
        name: String::new(),
        protocol: Protocol::Tcp,
        port: 80,
        target_port: load::PORT,
        node_port: None,
    }];
    s.backends = pods
        .iter()
        .map(|ip| {
            let mut b = Backend::new(IpAddr::V4(*ip));
            b.node_name = Some(node.into());
            b
        })
        .collect();
    s
}

/// splitmix64 step: deterministic placement of the random target.
fn splitmix(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// N services on `node`: N-2 synthetic ones, the random target at a random index (name
/// `bench/svc-<r>-target`, next to `svc-<r>` in name order) and the last target
/// (`zzz-bench/target-last`, last in both list and name order). N = 1: only the last one.
/// Returns the state and the name-order rank of the random target.
fn scaling_state(
    base: &DesiredState,
    index: usize,
    pods: &[Ipv4Addr],
    n: usize,
) -> (DesiredState, usize) {
    let node = base.node.name.clone();
    let mut st = base.clone();
    let last = target_service("zzz-bench", "target-last", vip_last(index), pods, &node);
    if n <= 1 {
        st.services = vec![last];
        return (st, 0);
    }
    let synth = n - 2;
    let r = (splitmix(n as u64) % (synth.max(1) as u64)) as usize;
    let mut services: Vec<Service> = (0..synth).map(|i| synthetic::service(i, 10)).collect();
    let random = target_service(
        "bench",
        &format!("svc-{r}-target"),
        vip_random(index),
        pods,
        &node,
    );
    let rank = services.iter().filter(|s| s.name < random.name).count();
    services.insert(r.min(services.len()), random);
    services.push(last);
    st.services = services;
    (st, rank)
}

/// A measured mode: direct (no dataplane) or a backend with a target placement.
#[derive(Debug, Clone)]
struct Mode {
    kind: &'static str,
    placement: &'static str,
    node: usize,
}

struct Node {
    kind: &'static str,
    index: usize,
    dp: Option<BoxDataplane>,
    error: Option<String>,
    pods: Vec<Ipv4Addr>,
    names: Vec<String>,
}

fn pod_ipv4(lab: &Lab, pod: &dataplane_testkit::LabPod) -> Ipv4Addr {
    let _ = lab;
    match pod.address(dataplane_testkit::Family::V4) {
        Some(IpAddr::V4(a)) => a,
        _ => unreachable!("the lab is IPv4"),
    }
}

#[allow(clippy::too_many_lines)]
fn end_to_end(settings: &Settings, results: &mut Results, start: Instant) -> Result<(), String> {
    log(
        start,
        &format!("lab: {} nodes x 11 pods", 1 + BACKENDS.len()),
    );
    let lab = Lab::new(LabSpec {
        nodes: 1 + BACKENDS.len(),
        pods_per_node: 1 + BACKEND_PODS,
        external_clients: 0,
        ipv6: false,
    })
    .map_err(|e| format!("lab: {e}"))?;
    // This process's own cgroup; the socket LB node's client pod gets a threaded child of it,
    // where that node attaches its hooks (before any thread enters the pod).
    let mut cgroup =
        dataplane_testkit::CgroupScope::enter(&format!("dp-bench-{}", std::process::id()))
            .map_err(|e| format!("bench cgroup: {e}"))?;
    let socket_node = 1 + BACKENDS
        .iter()
        .position(|b| *b == "ebpf-socket")
        .ok_or("no socket LB node")?;
    let socket_client = &lab
        .pods_on(socket_node)
        .next()
        .ok_or("no client pod")?
        .netns;
    let socket_cgroup = cgroup
        .threaded_child("socket-lb-client", [socket_client])
        .map_err(|e| format!("socket LB client cgroup: {e}"))?;
    let mut servers = Vec::new();
    let mut nodes = Vec::new();
    for i in 0..=BACKENDS.len() {
        let pods: Vec<&dataplane_testkit::LabPod> = lab.pods_on(i).collect();
        let client = pods[0];
        client
            .netns
            .sysctl(&[("net/ipv4/ip_local_port_range", "1024 65535")])
            .map_err(|e| format!("sysctl: {e}"))?;
        for p in &pods[1..] {
            servers.push(load::Server::start(&p.netns, &p.name)?);
        }
        nodes.push(Node {
            kind: if i == 0 { "direct" } else { BACKENDS[i - 1] },
            index: i,
            dp: None,
            error: None,
            pods: pods[1..].iter().map(|p| pod_ipv4(&lab, p)).collect(),
            names: pods[1..].iter().map(|p| p.name.clone()).collect(),
        });
    }
    let in_situ = InSituStats::start();
    for node in nodes.iter_mut().skip(1) {
        let before = InSituStats::ids();
        match make_backend(
            node.kind,
            lab.node(node.index).netns.path(),
            "e2e",
            Some(&socket_cgroup),
        ) {
            Ok(dp) => node.dp = Some(dp),
            Err(e) => node.error = Some(e),
        }
        if node.kind == "ebpf" {
            in_situ.adopt_new(&before);
        }
    }
    let client_of = |i: usize| &lab.pods_on(i).next().expect("client pod").netns;

    for &n in &settings.services {
        log(start, &format!("{n} services: programming"));
        let mut rank = 0;
        for node in nodes.iter_mut().skip(1) {
            let base = lab.desired_state(node.index);
            let (state, r) = scaling_state(&base, node.index, &node.pods, n);
            rank = r;
            let Some(dp) = node.dp.as_mut() else {
                results.programming.push(ProgramRow {
                    backend: node.kind.to_owned(),
                    services: n,
                    apply_ms: None,
                    error: node.error.clone(),
                });
                continue;
            };
            let t = Instant::now();
            let r = dp.apply(&state);
            let took = t.elapsed();
            log(
                start,
                &format!("  {} applied {n} services in {took:?}", node.kind),
            );
            let error = r.err().map(|e| format!("apply {n} services: {e}"));
            if let Some(e) = &error {
                eprintln!("  {}: {e}", node.kind);
            }
            results.programming.push(ProgramRow {
                backend: node.kind.to_owned(),
                services: n,
                apply_ms: error.is_none().then(|| ms(took)),
                error: error.clone(),
            });
            node.error = error;
        }
        let mut modes = vec![Mode {
            kind: "direct",
            placement: "-",
            node: 0,
        }];
        for (i, kind) in BACKENDS.iter().enumerate() {
            modes.push(Mode {
                kind,
                placement: "last",
                node: i + 1,
            });
            if n > 1 {
                modes.push(Mode {
                    kind,
                    placement: "random",
                    node: i + 1,
                });
            }
        }
        let targets = |m: &Mode| -> Vec<SocketAddr> {
            match m.placement {
                "-" => nodes[0]
                    .pods
                    .iter()
                    .map(|ip| SocketAddr::V4(SocketAddrV4::new(*ip, load::PORT)))
                    .collect(),
                "last" => vec![SocketAddr::V4(SocketAddrV4::new(vip_last(m.node), 80))],
                _ => vec![SocketAddr::V4(SocketAddrV4::new(vip_random(m.node), 80))],
            }
        };
        let mut rows: Vec<ScalingRow> = modes
            .iter()
            .map(|m| ScalingRow {
                services: n,
                mode: m.kind.to_owned(),
                placement: m.placement.to_owned(),
                rank: match m.placement {
                    "random" => Some(rank),
                    "last" => Some(n.saturating_sub(1)),
                    _ => None,
                },
                crr: Vec::new(),
                crr_ratio: Vec::new(),
                p50_us: Vec::new(),
                p99_us: Vec::new(),
                p99_ratio: Vec::new(),
                failed_connections: 0,
                backends_seen: 0,
                error: nodes[m.node].error.clone(),
            })
            .collect();
        // Warm-up and check: every mode must answer through its path.
        let socket_balanced = |node: &Node| {
            node.dp
                .as_ref()
                .and_then(|d| d.stats().ok())
                .and_then(|s| s.other.get("socket_translated").copied())
                .unwrap_or(0)
        };
        for (m, row) in modes.iter().zip(rows.iter_mut()) {
            if row.error.is_some() {
                continue;
            }
            let balanced_before = socket_balanced(&nodes[m.node]);
            match load::crr(
                client_of(m.node),
                &targets(m),
                Duration::from_millis(200),
                1,
            ) {
                Ok(c) if c.ok > 0 => row.backends_seen = c.backends.len(),
                Ok(c) => {
                    row.error = Some(format!(
                        "no connection answered ({})",
                        c.first_error.unwrap_or_default()
                    ));
                }
                Err(e) => row.error = Some(e),
            }
            // The socket LB mode must really be balanced at connect(), not by TC.
            if m.kind == "ebpf-socket"
                && row.error.is_none()
                && socket_balanced(&nodes[m.node]) == balanced_before
            {
                row.error = Some("the socket hooks balanced no connect()".to_owned());
            }
        }
        if Some(&n) == settings.services.first() {
            fill_conntrack(settings, start, &modes, &rows, &targets, &lab);
        }
        log(start, &format!("{n} services: {} rounds", settings.rounds));
        let crr_time = Duration::from_secs_f64(settings.crr_secs);
        let rr_time = Duration::from_secs_f64(settings.rr_secs);
        for round in 0..settings.rounds {
            let mut order: Vec<usize> = (0..modes.len()).collect();
            if round % 2 == 1 {
                order.reverse();
            }
            let mut crr_of = vec![f64::NAN; modes.len()];
            let mut p99_of = vec![f64::NAN; modes.len()];
            for &i in &order {
                let m = &modes[i];
                let row = &mut rows[i];
                if row.error.is_some() {
                    continue;
                }
                let mark = (m.kind == "ebpf").then(|| in_situ.snapshot());
                match load::crr(client_of(m.node), &targets(m), crr_time, settings.threads) {
                    Ok(c) => {
                        row.failed_connections += c.failed;
                        row.backends_seen = row.backends_seen.max(c.backends.len());
                        if c.ok == 0 {
                            row.error = c.first_error.or(Some("no answer".to_owned()));
                            continue;
                        }
                        crr_of[i] = c.rate();
                        row.crr.push(c.rate());
                    }
                    Err(e) => {
                        row.error = Some(e);
                        continue;
                    }
                }
                if let Some(mark) = mark {
                    if let Some((runs, ns)) = in_situ.since(mark) {
                        results.in_situ.push(InSitu {
                            services: n,
                            runs,
                            ns_per_run: ns,
                        });
                    }
                }
                match load::rr(client_of(m.node), &targets(m), rr_time) {
                    Ok(r) if r.error.is_none() => {
                        p99_of[i] = us(r.p99);
                        row.p50_us.push(us(r.p50));
                        row.p99_us.push(us(r.p99));
                    }
                    Ok(r) => row.error = r.error,
                    Err(e) => row.error = Some(e),
                }
            }
            for (i, row) in rows.iter_mut().enumerate() {
                if crr_of[i].is_finite() && crr_of[0].is_finite() {
                    row.crr_ratio.push(crr_of[i] / crr_of[0]);
                }
                if p99_of[i].is_finite() && p99_of[0].is_finite() {
                    row.p99_ratio.push(p99_of[i] / p99_of[0]);
                }
            }
        }
        for row in &rows {
            log(
                start,
                &format!(
                    "  {:>11} {:>6}: {:>8.0} conn/s (x{:.3} of direct), p99 {:>6.1} µs{}",
                    row.mode,
                    row.placement,
                    median(&row.crr),
                    median(&row.crr_ratio),
                    median(&row.p99_us),
                    row.error
                        .as_ref()
                        .map(|e| format!(" FAILED: {e}"))
                        .unwrap_or_default()
                ),
            );
        }
        results.scaling.extend(rows);
    }

    log(start, "control plane: 10k services x 10");
    let base_dir = std::env::temp_dir();
    for node in nodes.iter_mut().skip(1) {
        let mut row = ControlRow {
            backend: node.kind.to_owned(),
            ..ControlRow::default()
        };
        if let Some(mut dp) = node.dp.take() {
            let _ = dp.reset();
        }
        // The same maps and planner as "ebpf": its control plane is that one.
        if node.kind == "ebpf-socket" {
            continue;
        }
        let base = lab.desired_state(node.index);
        let base_file = base_dir.join(format!(
            "dp-bench-{}-{}.json",
            std::process::id(),
            node.kind
        ));
        let r = control_plane(settings, &lab, node, &base, &base_file, &mut row, start);
        if let Err(e) = r {
            eprintln!("  {}: {e}", node.kind);
            row.error = Some(e);
        }
        let _ = std::fs::remove_file(&base_file);
        results.control.push(row);
    }
    drop(servers);
    drop(cgroup);
    Ok(())
}

fn control_state(base: &DesiredState, probe_backend: Ipv4Addr) -> DesiredState {
    let mut st = base.clone();
    let node = st.node.name.clone();
    // Sized once: growing by the last push would double the vector (2 MiB at 10k).
    st.services = Vec::with_capacity(CONTROL_SERVICES);
    st.services
        .extend((0..CONTROL_SERVICES - 1).map(|i| synthetic::service(i, 10)));
    st.services.push(target_service(
        "zzz-bench",
        "probe",
        vip_probe(),
        &[probe_backend],
        &node,
    ));
    st
}

fn control_plane(
    settings: &Settings,
    lab: &Lab,
    node: &Node,
    base: &DesiredState,
    base_file: &Path,
    row: &mut ControlRow,
    start: Instant,
) -> Result<(), String> {
    let netns = lab.node(node.index).netns.path();
    // Peak RSS of a fresh process that builds and programs 10k x 10.
    let json = dataplane::to_json(base).map_err(|e| e.to_string())?;
    std::fs::write(base_file, json).map_err(|e| format!("write {}: {e}", base_file.display()))?;
    match rss_of_child(node.kind, netns, base_file) {
        Ok(r) => {
            log(
                start,
                &format!(
                    "  {} child: VmHWM {} KiB, apply {:.0} ms",
                    node.kind, r.vmhwm_kib, r.apply_ms
                ),
            );
            row.rss = Some(r);
        }
        Err(e) => eprintln!("  {} RSS child: {e}", node.kind),
    }

    let state = control_state(base, node.pods[0]);
    let repeats = if settings.quick { 1 } else { 3 };
    let mut dp = None;
    for k in 0..repeats {
        if let Some(mut old) = dp.take() {
            let _: &mut BoxDataplane = &mut old;
            old.reset().map_err(|e| format!("reset: {e}"))?;
        }
        let mut fresh = make_backend(node.kind, netns, &format!("cp{k}"), None)?;
        // The node without services first: what the programs' attachments (or the base
        // rules) cost is node setup, not service programming, and is shown on its own.
        let t = Instant::now();
        fresh
            .apply(base)
            .map_err(|e| format!("apply the node without services: {e}"))?;
        let setup = t.elapsed();
        row.setup_ms.push(ms(setup));
        let t = Instant::now();
        fresh
            .apply(&state)
            .map_err(|e| format!("apply 10k services from empty: {e}"))?;
        let took = t.elapsed();
        row.apply_from_empty_ms.push(ms(took));
        log(
            start,
            &format!(
                "  {} node setup {setup:?}, then from empty: {took:?}",
                node.kind
            ),
        );
        dp = Some(fresh);
        // A slow backend gets fewer repetitions: the bench has a time budget.
        if took > Duration::from_secs(5) {
            break;
        }
    }
    let mut dp = dp.ok_or("no dataplane")?;
    let client = &lab.pods_on(node.index).next().expect("client pod").netns;
    let mut prober = load::Prober::new(client, 4_000 + 500 * settings.changes)?;
    let dst = SocketAddrV4::new(vip_probe(), 80);
    // Before the clock starts, the probe service answers from its first backend.
    let first = wait_for(&mut prober, dst, &node.names[0], Duration::from_secs(5))?;
    let _ = first;
    let mut current = state
        .services
        .last()
        .cloned()
        .ok_or("control state has no probe service")?;
    let budget = Instant::now();
    for k in 0..settings.changes {
        let target = 1 + k % 2;
        let mut next = current.clone();
        next.backends[0].ip = IpAddr::V4(node.pods[target % node.pods.len()]);
        let mut changes = ChangeSet::default();
        changes.services.insert(
            next.name.clone(),
            Change {
                previous: Some(current.clone()),
                current: Some(next.clone()),
            },
        );
        let t = Instant::now();
        dp.apply_changes(&changes)
            .map_err(|e| format!("apply one endpoint change: {e}"))?;
        let applied = t.elapsed();
        let want = &node.names[target % node.names.len()];
        wait_for(&mut prober, dst, want, Duration::from_secs(5))?;
        let reached = t.elapsed();
        row.change_apply_us.push(us(applied));
        row.change_reach_us.push(us(reached));
        current = next;
        if budget.elapsed() > Duration::from_secs(30) {
            break;
        }
    }
    log(
        start,
        &format!(
            "  {} endpoint change: apply {:.0} µs, reached {:.0} µs (medians of {})",
            node.kind,
            median(&row.change_apply_us),
            median(&row.change_reach_us),
            row.change_reach_us.len()
        ),
    );
    dp.reset().map_err(|e| format!("reset: {e}"))?;
    Ok(())
}

/// Probes `dst` until `want` answers; errors after `timeout`.
fn wait_for(
    prober: &mut load::Prober,
    dst: SocketAddrV4,
    want: &str,
    timeout: Duration,
) -> Result<usize, String> {
    let t = Instant::now();
    let mut tries = 0;
    let mut last = String::new();
    while t.elapsed() < timeout {
        if prober.remaining() == 0 {
            return Err("prober ran out of sockets".to_owned());
        }
        tries += 1;
        match prober.probe(dst) {
            Ok(name) if name == want => return Ok(tries),
            Ok(name) => last = format!("answered by {name}"),
            Err(e) => last = e,
        }
    }
    Err(format!(
        "{want} never answered on {dst} within {timeout:?} (last: {last})"
    ))
}

fn status_kib(field: &str) -> u64 {
    read_to_string("/proc/self/status")
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn rss_of_child(kind: &str, netns: &Path, base_file: &Path) -> Result<Rss, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = Command::new(exe)
        .arg("--rss-child")
        .arg(kind)
        .arg(netns)
        .arg(base_file)
        .output()
        .map_err(|e| format!("spawn RSS child: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RSS "))
        .ok_or_else(|| {
            format!(
                "RSS child failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })?;
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
    let get = |k: &str| v.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
    Ok(Rss {
        vmhwm_kib: get("vmhwm_kib"),
        vmrss_before_kib: get("vmrss_before_kib"),
        children_maxrss_kib: get("children_maxrss_kib"),
        apply_ms: v
            .get("apply_ms")
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(0.0),
    })
}

/// `--rss-child KIND NETNS BASE_JSON`: build the control-plane state, program it into NETNS
/// with a fresh backend, print peak RSS, remove everything.
fn rss_child(args: &[String]) -> i32 {
    let [kind, netns, base_file, ..] = args else {
        eprintln!("usage: --rss-child KIND NETNS BASE_JSON");
        return 2;
    };
    let before = status_kib("VmRSS:");
    let run = || -> Result<serde_json::Value, String> {
        // As an agent does: the backend first (at start-up; the eBPF one loads its programs,
        // which peaks while aya parses the kernel's BTF), then the state it is handed.
        let mut dp = make_backend(kind, Path::new(netns), "rss", None)?;
        let text = std::fs::read_to_string(base_file).map_err(|e| e.to_string())?;
        let base = dataplane::from_json(&text).map_err(|e| e.to_string())?;
        drop(text);
        let state = control_state(&base, Ipv4Addr::new(10, 244, 255, 1));
        drop(base);
        let t = Instant::now();
        let applied = dp.sync(None, &state);
        let took = t.elapsed();
        let hwm = status_kib("VmHWM:");
        let children = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
            .map_or(0, |u| u.max_rss());
        let _ = dp.reset();
        applied.map_err(|e| format!("apply: {e}"))?;
        Ok(serde_json::json!({
            "vmhwm_kib": hwm,
            "vmrss_before_kib": before,
            "children_maxrss_kib": children,
            "apply_ms": ms(took),
        }))
    };
    match run() {
        Ok(v) => {
            println!("RSS {v}");
            0
        }
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

/// Run-time statistics of the eBPF `dp_from_pod` programs of the end-to-end dataplane under
/// real traffic (`BPF_ENABLE_STATS`, kept on while this value lives).
struct InSituStats {
    _enabled: Option<std::os::fd::OwnedFd>,
    ids: std::cell::RefCell<Vec<u32>>,
}

impl InSituStats {
    fn start() -> InSituStats {
        InSituStats {
            _enabled: aya::sys::enable_stats(aya::sys::Stats::RunTime).ok(),
            ids: std::cell::RefCell::new(Vec::new()),
        }
    }

    fn programs() -> BTreeMap<u32, (u64, Duration)> {
        aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .filter(|p| p.name_as_str() == Some("dp_from_pod"))
            .map(|p| (p.id(), (p.run_count(), p.run_time())))
            .collect()
    }

    fn ids() -> Vec<u32> {
        Self::programs().into_keys().collect()
    }

    /// Takes the `dp_from_pod` programs loaded since `before` as ours.
    fn adopt_new(&self, before: &[u32]) {
        *self.ids.borrow_mut() = Self::ids()
            .into_iter()
            .filter(|id| !before.contains(id))
            .collect();
    }

    fn snapshot(&self) -> (u64, Duration) {
        let ids = self.ids.borrow();
        Self::programs()
            .into_iter()
            .filter(|(id, _)| ids.contains(id))
            .fold((0, Duration::ZERO), |(c, t), (_, (c2, t2))| {
                (c + c2, t + t2)
            })
    }

    /// Runs and mean ns per run since `mark`.
    fn since(&self, mark: (u64, Duration)) -> Option<(u64, f64)> {
        let (c, t) = self.snapshot();
        let runs = c.checked_sub(mark.0).filter(|r| *r > 0)?;
        #[allow(clippy::cast_precision_loss)]
        let ns = (t.saturating_sub(mark.1)).as_secs_f64() * 1e9 / runs as f64;
        Some((runs, ns))
    }
}
