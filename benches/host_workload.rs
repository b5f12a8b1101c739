//! Untracked allow for a host workload (issue 22, "Benchmarks"; the Calico XDP article's
//! "extreme high-connection workloads" claim): a key-value server in node-0's own network
//! namespace (a host workload, as a memcached on the node would be) under a
//! connect/request/response/close (CRR) load from an external client, on every backend, in
//! two arms:
//! - **tracked**: a host endpoint on node-0's uplink and a normal host policy allowing the
//!   server's port (the connections go through the Linux conntrack table, or the eBPF
//!   backend's own);
//! - **untracked**: the same, plus a `doNotTrack` policy allowing the server's port in and
//!   its explicit return rule out (from the server's port): Calico's recipe, where the
//!   connections bypass conntrack altogether.
//!
//! ```text
//!   external-0 ── x0 ── br0 ── n0 ═veth═▶ node-0 eth0 [host endpoint] ──▶ server 172.18.0.10:8080
//!   CRR, 2 threads                                                        (4 threads, node's own netns)
//! ```
//! Each backend is programmed in turn on node-0 (`dataplane::open`, the same lab); a backend
//! whose `capabilities().host_policy` is false is reported "not measured" (no number).
//! Rounds alternate the two arms' order; each arm: apply its state, empty the Linux
//! conntrack table (`conntrack -F`), `WARM` of unmeasured load, `MEASURE` of CRR, then the
//! fill of the conntrack table (`nf_conntrack_count` in node-0's namespace) and the backend's
//! own flow count (`Stats::flows`: the eBPF backend's conntrack map). The untracked arm must
//! leave both where they were: a growth is printed as FAIL (a finding, not a panic).
//! Result: the median over the rounds of connections/s per arm, and untracked / tracked.
//!
//! Run as root: `cargo bench --features ebpf,nft --bench host_workload` (about a minute;
//! `HOST_WORKLOAD_ROUNDS` (default 5) and `HOST_WORKLOAD_SECS` (seconds of CRR per arm,
//! default 1) for longer runs). Prints Markdown rows and writes
//! `benches/results/host_workload.png`. All traffic stays inside the lab's namespaces.

#[path = "../crates/dataplane-ebpf/benches/common/mod.rs"]
#[allow(dead_code)] // the lab benches' helpers: this bench uses the CRR load
mod lab_common;

#[path = "common/host.rs"]
#[allow(dead_code)] // shared with untracked_deny
mod host;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use dataplane_core::{
    DesiredState, HostAction, HostEndpoint, HostPolicy, HostPort, HostRule, LabelSelector, Protocol,
};
use dataplane_testkit::{Family, Lab, LabSpec};

/// The host server's port (no failsafe port).
const PORT: u16 = 8080;
const WARM: Duration = Duration::from_millis(300);
const SERVER_THREADS: usize = 4;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Arm {
    Tracked,
    Untracked,
}

impl Arm {
    fn name(self) -> &'static str {
        match self {
            Arm::Tracked => "tracked (normal allow)",
            Arm::Untracked => "untracked (doNotTrack allow + return rule)",
        }
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Node-0's state with its uplink as a host endpoint and the arm's host policies.
fn state(lab: &Lab, arm: Arm) -> DesiredState {
    let selector = LabelSelector::default().with_label("role", "uplink");
    let mut state = lab.desired_state(0);
    state.host_endpoints =
        vec![
            HostEndpoint::new("node-0-eth0", lab.node(0).name.as_str(), "eth0")
                .with_label("role", "uplink"),
        ];
    let server = HostRule::new(HostAction::Allow)
        .protocol(Protocol::Tcp)
        .to_ports([HostPort::Number(PORT)]);
    // Ingress isolated by it: everything else but the failsafe ports is denied.
    state.host_policies =
        vec![HostPolicy::new("kv-allow", selector.clone()).with_ingress(server.clone())];
    if arm == Arm::Untracked {
        // Calico's recipe: the untracked allow and, since no conntrack entry lets the replies
        // out, their rule.
        state.host_policies.push(
            HostPolicy::new("kv-untracked", selector)
                .with_order(10)
                .untracked()
                .with_ingress(server)
                .with_egress(
                    HostRule::new(HostAction::Allow)
                        .protocol(Protocol::Tcp)
                        .from_ports([HostPort::Number(PORT)]),
                ),
        );
    }
    state
}

/// One arm's measurement.
#[derive(Default, Clone)]
struct Sample {
    rate: f64,
    failed: u64,
    /// Linux conntrack entries at the end (the table emptied before).
    conntrack: u64,
    /// The backend's own flows at the end minus at the start.
    flows_growth: i64,
}

fn measure(
    dp: &mut dataplane::BoxDataplane,
    lab: &Lab,
    arm: Arm,
    dst: SocketAddr,
    secs: Duration,
) -> Result<Sample, String> {
    dp.apply(&state(lab, arm)).map_err(|e| e.to_string())?;
    let node = &lab.node(0).netns;
    let client = &lab.external(0).netns;
    host::conntrack_flush(node);
    let flows = |dp: &dataplane::BoxDataplane| {
        dp.stats()
            .map_or(0, |s| s.other.get("ct_entries").copied().unwrap_or(s.flows))
    };
    lab_common::crr(client, dst, WARM);
    host::conntrack_flush(node);
    let before = flows(dp);
    let (rate, failed) = lab_common::crr(client, dst, secs);
    let after = flows(dp);
    Ok(Sample {
        rate,
        failed,
        conntrack: host::conntrack_count(node),
        flows_growth: i64::try_from(after).unwrap_or(i64::MAX)
            - i64::try_from(before).unwrap_or(i64::MAX),
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// A backend's result: per arm, the rounds' samples; or why it has none.
type Outcome = Result<[Vec<Sample>; 2], String>;

#[allow(clippy::too_many_lines)] // one scenario, in order
fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "host_workload: a benchmark; run it with `cargo bench --features ebpf,nft --bench host_workload`"
        );
        return;
    }
    if !dataplane_testkit::require_root("host_workload") {
        return;
    }
    let rounds: usize = env_or("HOST_WORKLOAD_ROUNDS", 5).max(1);
    let secs = Duration::from_secs_f64(env_or("HOST_WORKLOAD_SECS", 1.0));
    let started = host::now_utc();
    let machine = host::machine_state();
    lab_common::renice();
    let lab = Lab::new(LabSpec {
        nodes: 1,
        pods_per_node: 1,
        external_clients: 1,
        ipv6: false,
    })
    .expect("lab");
    let node_ip: IpAddr = lab.node(0).address(Family::V4).expect("node address");
    let dst = SocketAddr::new(node_ip, PORT);
    host::start_server(&lab.node(0).netns, dst, SERVER_THREADS);

    let mut outcomes: Vec<(&str, Outcome)> = Vec::new();
    for kind in host::BACKENDS {
        let outcome = (|| -> Outcome {
            let mut dp = host::open_backend(kind, lab.node(0).netns.path(), "workload", false)?;
            if !dp.capabilities().host_policy {
                let _ = dp.reset();
                return Err(host::NOT_MEASURED.to_owned());
            }
            let mut samples: [Vec<Sample>; 2] = [Vec::new(), Vec::new()];
            for round in 0..rounds {
                let order = if round % 2 == 0 {
                    [Arm::Tracked, Arm::Untracked]
                } else {
                    [Arm::Untracked, Arm::Tracked]
                };
                for arm in order {
                    let s = measure(&mut dp, &lab, arm, dst, secs).inspect_err(|_| {
                        let _ = dp.reset();
                    })?;
                    println!(
                        "{kind} round {round} {}: {:.0} conn/s, {} failed, conntrack {}, backend flows {:+}",
                        arm.name(),
                        s.rate,
                        s.failed,
                        s.conntrack,
                        s.flows_growth
                    );
                    samples[arm as usize].push(s);
                }
            }
            dp.reset().map_err(|e| e.to_string())?;
            Ok(samples)
        })();
        outcomes.push((kind, outcome));
    }

    println!("\nhost_workload, {started}, {machine}; {rounds} rounds of {secs:?} CRR per arm\n");
    println!("| backend | arm | conn/s (median) | failed | Linux conntrack entries at the end (max) | eBPF `dp_ct` growth (max) | untracked / tracked | check |");
    println!("|---|---|---:|---:|---:|---:|---:|---|");
    let mut series: Vec<(String, Vec<Option<f64>>)> = vec![
        (Arm::Tracked.name().to_owned(), Vec::new()),
        (Arm::Untracked.name().to_owned(), Vec::new()),
    ];
    for (kind, outcome) in &outcomes {
        match outcome {
            Err(why) => {
                println!("| {kind} | both | {why} | | | | | |");
                series[0].1.push(None);
                series[1].1.push(None);
            }
            Ok(samples) => {
                let rates: Vec<f64> = samples
                    .iter()
                    .map(|s| median(s.iter().map(|x| x.rate).collect()))
                    .collect();
                for arm in [Arm::Tracked, Arm::Untracked] {
                    let s = &samples[arm as usize];
                    let ct = s.iter().map(|x| x.conntrack).max().unwrap_or(0);
                    let flows = s.iter().map(|x| x.flows_growth).max().unwrap_or(0);
                    let failed: u64 = s.iter().map(|x| x.failed).sum();
                    let (speedup, check) = if arm == Arm::Untracked {
                        let ok = ct == 0 && flows <= 0;
                        // Each round's untracked / tracked (the two arms ran back to back).
                        let mut per_round: Vec<f64> = samples[1]
                            .iter()
                            .zip(&samples[0])
                            .map(|(u, t)| u.rate / t.rate)
                            .collect();
                        per_round.sort_by(f64::total_cmp);
                        (
                            format!(
                                "{:.2}x (rounds {:.2}-{:.2})",
                                rates[1] / rates[0],
                                per_round[0],
                                per_round[per_round.len() - 1]
                            ),
                            if ok {
                                "conntrack untouched".to_owned()
                            } else {
                                format!("**FAIL**: the untracked arm filled conntrack ({ct} Linux entries, backend flows {flows:+})")
                            },
                        )
                    } else {
                        (String::new(), String::new())
                    };
                    println!(
                        "| {kind} | {} | {:.0} | {failed} | {ct} | {flows:+} | {speedup} | {check} |",
                        arm.name(),
                        rates[arm as usize],
                    );
                    series[arm as usize].1.push(Some(rates[arm as usize]));
                }
            }
        }
    }
    let out =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/results/host_workload.png");
    let groups: Vec<String> = outcomes
        .iter()
        .map(|(k, o)| {
            if o.is_ok() {
                (*k).to_owned()
            } else {
                format!("{k} (not measured)")
            }
        })
        .collect();
    if let Err(e) = host::bar_plot(
        &out,
        "Host workload: CRR to a server in the node's namespace",
        "connections/s (median)",
        &groups,
        &series,
    ) {
        eprintln!("plot: {e}");
    } else {
        println!("\nplot: {}", out.display());
    }
}
