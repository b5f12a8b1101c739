//! BENCHMARKS.md, `benches/results/scaling.json` and the PNG plots, from [`Results`].

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

use crate::nodes::BACKENDS;
use crate::results::{median, PacketRow, PolicyPacketRow, PolicyResults, Results, ScalingRow};

const PLOT_CRR: &str = "crr.png";
const PLOT_P99: &str = "p99.png";
const PLOT_NEW_FLOW: &str = "new_flow.png";
const COMMAND: &str = "sudo -E cargo bench --features ebpf,nft --bench scaling";

/// Writes everything; plots that cannot be drawn (no font) are reported and skipped.
pub fn write_all(results: &Results, out_dir: &Path, report: &Path) -> Result<(), String> {
    std::fs::create_dir_all(out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
    let json = serde_json::to_string_pretty(results).map_err(|e| e.to_string())?;
    let json_path = out_dir.join("scaling.json");
    std::fs::write(&json_path, json).map_err(|e| format!("{}: {e}", json_path.display()))?;
    let mut plots = Vec::new();
    for (file, title, y, pick) in [
        (
            PLOT_CRR,
            "TCP connect-request-response-close through a ClusterIP",
            "connections/s",
            (|r: &ScalingRow| median(&r.crr)) as fn(&ScalingRow) -> f64,
        ),
        (
            PLOT_P99,
            "Request-response p99 latency, persistent connections",
            "p99 latency (µs)",
            |r: &ScalingRow| median(&r.p99_us),
        ),
    ] {
        let path = out_dir.join(file);
        match plot(results, &path, title, y, pick) {
            Ok(()) => plots.push(file),
            Err(e) => eprintln!("plot {}: {e}", path.display()),
        }
    }
    let new_flow_plot = out_dir.join(PLOT_NEW_FLOW);
    let new_flow_plot = match plot_new_flow(results, &new_flow_plot) {
        Ok(()) => Some(PLOT_NEW_FLOW),
        Err(e) => {
            eprintln!("plot {}: {e}", new_flow_plot.display());
            None
        }
    };
    let base = report.parent().unwrap_or(Path::new("."));
    let rel = out_dir.strip_prefix(base).map_or_else(
        |_| out_dir.display().to_string(),
        |p| p.display().to_string(),
    );
    let notes = std::fs::read_to_string(out_dir.join("../notes.md")).ok();
    let md = markdown(results, &rel, &plots, new_flow_plot, notes.as_deref());
    std::fs::write(report, md).map_err(|e| format!("{}: {e}", report.display()))
}

fn row<'a>(results: &'a Results, n: usize, mode: &str, placement: &str) -> Option<&'a ScalingRow> {
    let find = |p: &str| {
        results
            .scaling
            .iter()
            .find(|r| r.services == n && r.mode == mode && r.placement == p)
    };
    // With one service the random target is the last one.
    find(placement).or_else(|| {
        (placement == "random" && n <= 1)
            .then(|| find("last"))
            .flatten()
    })
}

fn sizes(results: &Results) -> Vec<usize> {
    let mut v: Vec<usize> = results.scaling.iter().map(|r| r.services).collect();
    v.sort_unstable();
    v.dedup();
    v
}

fn fmt_num(v: f64, digits: usize) -> String {
    if v.is_finite() {
        format!("{v:.digits$}")
    } else {
        "–".to_owned()
    }
}

fn cell(r: Option<&ScalingRow>, f: impl Fn(&ScalingRow) -> f64, digits: usize) -> String {
    match r {
        None => "–".to_owned(),
        Some(r) if r.skipped.is_some() => "skipped".to_owned(),
        Some(r) if r.error.is_some() && f(r).is_nan() => "failed".to_owned(),
        Some(r) => fmt_num(f(r), digits),
    }
}

fn columns() -> Vec<(&'static str, &'static str, String)> {
    let mut v = Vec::new();
    for b in BACKENDS {
        for p in ["random", "last"] {
            v.push((b, p, format!("{b} ({p})")));
        }
    }
    v
}

fn verdict(ok: Option<bool>, miss: &str) -> String {
    match ok {
        Some(true) => "met".to_owned(),
        Some(false) => format!("**missed** ({miss})"),
        None => "not measured".to_owned(),
    }
}

/// `v`'s median and every value: "12 (11, 12, 14)".
fn median_and_runs(v: &[f64]) -> String {
    let runs: Vec<String> = v.iter().map(|x| fmt_num(*x, 0)).collect();
    format!("{} ({})", fmt_num(median(v), 0), runs.join(", "))
}

/// `v`'s median and maximum: "12 (max 14)".
fn median_and_max(v: &[f64]) -> String {
    format!(
        "{} (max {})",
        fmt_num(median(v), 0),
        fmt_num(v.iter().copied().fold(f64::NAN, f64::max), 0)
    )
}

/// "≥ target" check: verdict and by how much it misses.
fn at_least(measured: f64, target: f64) -> String {
    if !measured.is_finite() {
        return verdict(None, "");
    }
    verdict(
        Some(measured >= target),
        &format!("{:.1}% short", (1.0 - measured / target) * 100.0),
    )
}

/// "≤ target" check.
fn at_most(measured: f64, target: f64) -> String {
    if !measured.is_finite() {
        return verdict(None, "");
    }
    verdict(
        Some(measured <= target),
        &format!("{:.2}x the target", measured / target),
    )
}

/// The two eBPF end-to-end modes and their names in the report.
const EBPF_MODES: [(&str, &str); 2] = [
    ("ebpf", "eBPF (TC)"),
    ("ebpf-socket", "eBPF (socket LB + host routing)"),
];

fn ratio_median(results: &Results, n: usize, mode: &str, placement: &str) -> f64 {
    row(results, n, mode, placement).map_or(f64::NAN, |r| median(&r.crr_ratio))
}

/// The targets table: each target, what was measured and whether it is met.
fn targets(results: &Results, out: &mut String) {
    let _ = writeln!(out, "| Target | Measured | Verdict |\n|---|---|---|");
    end_to_end_targets(results, out);
    packet_targets(results, out);
    new_flow_goals(results, out);
    floor_targets(results, out);
    growth_targets(results, out);
    control_targets(results, out);
    if let Some(p) = &results.policy {
        policy_targets(p, out);
    }
}

/// The size the end-to-end targets are set at: the largest one measured up to 10k (CRR ≥ 0.95
/// of direct there, flat from the smallest one, the lead over iptables), or the largest one
/// when none is that small.
fn reference_size(results: &Results) -> usize {
    let ns = sizes(results);
    ns.iter()
        .copied()
        .filter(|&n| n <= crate::states::CONTROL_SERVICES)
        .max()
        .or_else(|| ns.last().copied())
        .unwrap_or(0)
}

/// Each eBPF mode's CRR at the reference size (10k), its flatness up to there and beyond
/// (to the largest size, `DP_BENCH_LARGE`), and its lead over iptables.
fn end_to_end_targets(results: &Results, out: &mut String) {
    let ref_n = reference_size(results);
    let max_n = sizes(results).into_iter().max().unwrap_or(0);
    let min_n = sizes(results).into_iter().min().unwrap_or(0);
    let mut line = |t: &str, m: String, v: String| {
        let _ = writeln!(out, "| {t} | {m} | {v} |");
    };
    for (mode, name) in EBPF_MODES {
        for p in ["random", "last"] {
            let r = ratio_median(results, ref_n, mode, p);
            line(
                &format!("{name} CRR at {ref_n} services ≥ 0.95 of direct (target {p})"),
                fmt_num(r, 3),
                at_least(r, 0.95),
            );
        }
        let mut spans = vec![(min_n, ref_n)];
        if max_n > ref_n {
            spans.push((ref_n, max_n));
        }
        for (from, to) in spans {
            for p in ["random", "last"] {
                let flat =
                    ratio_median(results, to, mode, p) / ratio_median(results, from, mode, p);
                line(
                    &format!("{name} CRR flat from {from} to {to} services ≥ 0.97 (target {p})"),
                    fmt_num(flat, 3),
                    at_least(flat, 0.97),
                );
            }
        }
        for (p, want) in [("random", 2.5), ("last", 3.0)] {
            let x =
                ratio_median(results, ref_n, mode, p) / ratio_median(results, ref_n, "iptables", p);
            line(
                &format!("{name} ≥ {want}x iptables CRR at {ref_n} services (target {p})"),
                format!("{}x", fmt_num(x, 2)),
                at_least(x, want),
            );
        }
    }
}

/// The TC program's worst per-packet costs.
fn packet_targets(results: &Results, out: &mut String) {
    let mut line = |t: &str, m: String, v: String| {
        let _ = writeln!(out, "| {t} | {m} | {v} |");
    };
    let est = results
        .packet
        .iter()
        .map(|r| r.established_ns)
        .fold(f64::NAN, f64::max);
    let new = results
        .packet
        .iter()
        .map(|r| r.new_flow_ns)
        .fold(f64::NAN, f64::max);
    line(
        "TC program ≤ 150 ns per established-flow packet (worst N)",
        format!("{} ns", fmt_num(est, 0)),
        at_most(est, 150.0),
    );
    line(
        "TC program ≤ 500 ns per new flow (worst N)",
        format!("{} ns", fmt_num(new, 0)),
        at_most(new, 500.0),
    );
}

/// Issue 24's new-flow goals, measured in one run: the TC new flow at most 4x the floor
/// fixture's conntrack hit and rewrite, and at most 25% growth from 10 to 100k services.
fn new_flow_goals(results: &Results, out: &mut String) {
    let mut line = |t: &str, m: String, v: String| {
        let _ = writeln!(out, "| {t} | {m} | {v} |");
    };
    let worst = results
        .packet
        .iter()
        .filter_map(|r| r.floor_ns.map(|f| (r.new_flow_ns / f[2], r.services)))
        .filter(|(x, _)| x.is_finite())
        .max_by(|a, b| a.0.total_cmp(&b.0));
    if let Some((worst, at)) = worst {
        line(
            "TC new flow ≤ 4x the floor fixture (parse + conntrack hit + rewrite), same run \
             (worst N)",
            format!("{}x (at {})", fmt_num(worst, 2), size_name(at)),
            at_most(worst, 4.0),
        );
    }
    let p = |n: usize| results.packet.iter().find(|r| r.services == n);
    if let (Some(a), Some(b)) = (p(10), p(100_000)) {
        let g = (b.new_flow_ns / a.new_flow_ns - 1.0) * 100.0;
        line(
            "TC new flow ≤ 25% growth from 10 to 100k services",
            format!(
                "{} -> {} ns: {}%",
                fmt_num(a.new_flow_ns, 0),
                fmt_num(b.new_flow_ns, 0),
                fmt_num(g, 1)
            ),
            at_most(g.max(0.0), 25.0),
        );
    }
}

/// What a test run costs here at least (no target: context for the per-packet ones).
fn floor_targets(results: &Results, out: &mut String) {
    let mut line = |t: &str, m: String, v: String| {
        let _ = writeln!(out, "| {t} | {m} | {v} |");
    };
    let p = |n: usize| results.packet.iter().find(|r| r.services == n);
    // The floor fixture: what a test run costs here at least (the same packets, the
    // program stopped after its conntrack lookup, or after its lookup and rewrite).
    let floor = |i: usize| {
        results
            .packet
            .iter()
            .filter_map(|r| r.floor_ns.map(|f| f[i]))
            .fold(f64::NAN, f64::max)
    };
    let (f_entry, f_ct, f_nat) = (floor(0), floor(1), floor(2));
    if f_ct.is_finite() {
        line(
            "Floor of this measurement here (no target): a test run that returns at once / \
             that parses the packet and looks it up in conntrack / that also rewrites its \
             destination (worst N)",
            format!(
                "{} / {} / {} ns",
                fmt_num(f_entry, 0),
                fmt_num(f_ct, 0),
                fmt_num(f_nat, 0)
            ),
            if f_ct > 150.0 {
                format!(
                    "the conntrack lookup alone is {:.2}x the 150 ns target",
                    f_ct / 150.0
                )
            } else {
                "the conntrack lookup alone is within the 150 ns target".to_owned()
            },
        );
    }
    let svc_at = |n: usize| p(n).and_then(|r| r.floor_ns).map(|f| f[3]);
    if let (Some(a), Some(b)) = (svc_at(10), svc_at(100_000)) {
        let g = b / a - 1.0;
        line(
            "Floor growth from 10 to 100k services (no target): the service and backend \
             lookup alone (service map, slot, backend)",
            format!(
                "{} -> {} ns: {}%",
                fmt_num(a, 0),
                fmt_num(b, 0),
                fmt_num(g * 100.0, 1)
            ),
            format!(
                "these lookups alone add {:.0} ns at 100k services: 5% growth would need a \
                 new flow of at least {:.0} ns at 10",
                b - a,
                (b - a) / 0.05
            ),
        );
    }
}

/// The TC program's growth from 10 to 100k services, and the XDP program's worst costs.
fn growth_targets(results: &Results, out: &mut String) {
    let mut line = |t: &str, m: String, v: String| {
        let _ = writeln!(out, "| {t} | {m} | {v} |");
    };
    let p = |n: usize| results.packet.iter().find(|r| r.services == n);
    for (what, f) in [
        (
            "established",
            (|r: &PacketRow| r.established_ns) as fn(&PacketRow) -> f64,
        ),
        ("new flow", |r: &PacketRow| r.new_flow_ns),
    ] {
        let g = match (p(10), p(100_000)) {
            (Some(a), Some(b)) => f(b) / f(a) - 1.0,
            _ => f64::NAN,
        };
        line(
            &format!("TC program ≤ 5% growth from 10 to 100k services ({what})"),
            format!("{}%", fmt_num(g * 100.0, 1)),
            at_most(g.max(0.0) * 100.0, 5.0),
        );
    }
    let worst = |f: fn(&PacketRow) -> Option<f64>| {
        results.packet.iter().filter_map(f).fold(f64::NAN, f64::max)
    };
    let (xe, xn) = (
        worst(|r| r.xdp_established_ns),
        worst(|r| r.xdp_new_flow_ns),
    );
    line(
        "XDP program (no target of its own): established / new flow per packet (worst N), \
         against the TC targets",
        format!("{} / {} ns", fmt_num(xe, 0), fmt_num(xn, 0)),
        format!("{}; {}", at_most(xe, 150.0), at_most(xn, 500.0)),
    );
}

/// A number of services as the targets name it: "10k", "100k", "500".
fn size_name(n: usize) -> String {
    if n >= 1_000 && n.is_multiple_of(1_000) {
        format!("{}k", n / 1_000)
    } else {
        n.to_string()
    }
}

/// The control-plane goals of backend `b` at `n` services: programming from empty (ms), one
/// endpoint change until reached (µs), peak RSS (MiB); `None`: no goal. Up to 10k services
/// the goals of issues 9 and 24; beyond, issue 24's 100k goals (eBPF and nftables only).
fn control_goals(b: &str, n: usize) -> (Option<f64>, Option<f64>, Option<f64>) {
    if n <= crate::states::CONTROL_SERVICES {
        match b {
            "ebpf" => (Some(100.0), Some(200.0), Some(32.0)),
            "nftables" => (Some(1_500.0), Some(20_000.0), Some(32.0)),
            _ => (Some(5_000.0), Some(1_000_000.0), Some(32.0)),
        }
    } else {
        match b {
            "ebpf" => (Some(1_000.0), Some(200.0), Some(128.0)),
            "nftables" => (Some(10_000.0), Some(20_000.0), None),
            _ => (None, None, None),
        }
    }
}

/// `measured` against an optional "≤ goal": the goal's text for the target's name, and the
/// verdict.
fn optional_at_most(measured: f64, goal: Option<f64>, unit: &str) -> (String, String) {
    match goal {
        Some(g) => (format!("≤ {g} {unit}"), at_most(measured, g)),
        None if measured.is_finite() => ("(no target)".to_owned(), "measured".to_owned()),
        None => ("(no target)".to_owned(), verdict(None, "")),
    }
}

/// Programming from empty, one endpoint change, peak RSS, per backend and size (the sizes a
/// run skipped are in the control-plane table, not here).
fn control_targets(results: &Results, out: &mut String) {
    let mut line = |t: &str, m: String, v: String| {
        let _ = writeln!(out, "| {t} | {m} | {v} |");
    };
    let rows: Vec<&crate::results::ControlRow> = results
        .control
        .iter()
        .filter(|c| c.skipped.is_none())
        .collect();
    for c in &rows {
        let (goal, _, _) = control_goals(&c.backend, c.services);
        let m = median(&c.apply_from_empty_ms);
        let (want, v) = optional_at_most(m, goal, "ms");
        line(
            &format!(
                "Programming {} x 10 from empty (node set up): {} {want}",
                size_name(c.services),
                c.backend
            ),
            format!("{} ms", fmt_num(m, 0)),
            v,
        );
    }
    for c in &rows {
        let (_, goal, _) = control_goals(&c.backend, c.services);
        let m = median(&c.change_reach_us);
        let (want, v) = optional_at_most(m, goal, "µs");
        line(
            &format!(
                "One endpoint change with {} present: {} {want} (until a probe reaches the new \
                 backend)",
                size_name(c.services),
                c.backend
            ),
            format!("{} µs", fmt_num(m, 0)),
            v,
        );
    }
    for c in &rows {
        let (_, _, goal) = control_goals(&c.backend, c.services);
        #[allow(clippy::cast_precision_loss)]
        let mib = c
            .rss
            .as_ref()
            .map_or(f64::NAN, |r| r.vmhwm_kib as f64 / 1024.0);
        let (want, v) = optional_at_most(mib, goal, "MiB");
        line(
            &format!(
                "Peak RSS of the process holding {} x 10 {want} ({})",
                size_name(c.services),
                c.backend
            ),
            format!("{} MiB", fmt_num(mib, 1)),
            v,
        );
    }
}

/// The NetworkPolicy targets (issue 18): CRR with 1k policies, per-packet flatness,
/// programming from empty, one label change.
fn policy_targets(p: &PolicyResults, out: &mut String) {
    let mut line = |t: &str, m: String, v: String| {
        let _ = writeln!(out, "| {t} | {m} | {v} |");
    };
    let n = p.policies;
    let crr = |b: &str| p.crr.iter().find(|r| r.backend == b);
    let ratio = crr("ebpf").map_or(f64::NAN, |r| median(&r.ratio));
    line(
        &format!(
            "NetworkPolicy: eBPF (TC) CRR through a ClusterIP to pods selected by {n} policies \
             ≥ 0.95 of no policy"
        ),
        fmt_num(ratio, 3),
        at_least(ratio, 0.95),
    );
    for (program, what, pick) in [
        (
            "dp_from_pod",
            "service translation and the client's egress",
            (|r: &PolicyPacketRow| r.new_flow_ns) as fn(&PolicyPacketRow) -> f64,
        ),
        (
            "dp_to_pod",
            "the server's ingress",
            |r: &PolicyPacketRow| r.to_pod_new_flow_ns.unwrap_or(f64::NAN),
        ),
    ] {
        let at = |k: usize| {
            p.packet
                .iter()
                .find(|r| r.policies == k)
                .map_or(f64::NAN, pick)
        };
        let (none, low, high) = (at(0), at(100), at(10_000));
        let growth = high / low - 1.0;
        line(
            &format!(
                "NetworkPolicy: {program} ({what}) per new connection flat from 100 to 10k \
                 policy entries (≤ 5% growth; 0 policies, nothing isolated, for reference)"
            ),
            format!(
                "0: {} / 100: {} / 10k: {} ns: {}%",
                fmt_num(none, 0),
                fmt_num(low, 0),
                fmt_num(high, 0),
                fmt_num(growth * 100.0, 1)
            ),
            if growth.is_finite() {
                at_most(growth.max(0.0) * 100.0, 5.0)
            } else {
                verdict(None, "")
            },
        );
    }
    let control = |b: &str| p.control.iter().find(|r| r.backend == b);
    for (b, want_ms) in [
        ("ebpf", Some(200.0)),
        ("nftables", Some(2000.0)),
        ("iptables", None),
    ] {
        let m = control(b).map_or(f64::NAN, |c| median(&c.apply_from_empty_ms));
        match want_ms {
            Some(want) => line(
                &format!(
                    "NetworkPolicy: programming {n} policies over {} peers from empty (node \
                     set up): {b} ≤ {want} ms",
                    p.peers
                ),
                format!("{} ms", fmt_num(m, 0)),
                at_most(m, want),
            ),
            None => line(
                &format!(
                    "NetworkPolicy: programming {n} policies over {} peers from empty (node \
                     set up): {b} (no target)",
                    p.peers
                ),
                format!("{} ms", fmt_num(m, 0)),
                if m.is_finite() {
                    "measured".to_owned()
                } else {
                    verdict(None, "")
                },
            ),
        }
    }
    for (b, want_us) in [("ebpf", 1_000.0), ("nftables", 20_000.0)] {
        let m = control(b).map_or(f64::NAN, |c| median(&c.relabel_reach_us));
        line(
            &format!(
                "NetworkPolicy: one pod label change with {n} policies present: {b} ≤ {want_us} \
                 µs (until a connection it allows is answered)"
            ),
            format!("{} µs", fmt_num(m, 0)),
            at_most(m, want_us),
        );
    }
}

/// The NetworkPolicy section: the run that measured it, the tables, the failures.
fn policy_section(o: &mut String, p: &PolicyResults) {
    let _ = writeln!(
        o,
        "\n## NetworkPolicy: {} policies over {} peer pods\n",
        p.policies, p.peers
    );
    if let Some(m) = &p.machine {
        let quick = p.settings.as_ref().is_some_and(|s| s.quick);
        let _ = writeln!(
            o,
            "Measured {}{} in {:.0} s.\n",
            m.date,
            if quick { " by a quick run" } else { "" },
            p.secs
        );
    }
    let _ = writeln!(
        o,
        "The policies are `synthetic::policies`: every one selects the target pods, isolates \
         them for ingress and egress and allows, both ways, one of 100 `(namespace team, pod \
         role)` groups of peer pods on one TCP port (100 distinct selectors, every policy a \
         distinct `(selector, port)` entry; every tenth also an ipBlock with an except). The \
         client pod is in the group that policy 0 admits on the servers' port.\n"
    );
    policy_packet(o, p);
    policy_end_to_end(o, p);
}

/// The NetworkPolicy per-packet table.
fn policy_packet(o: &mut String, p: &PolicyResults) {
    let _ = writeln!(
        o,
        "### Per packet: a new connection through the TC program\n"
    );
    if let Some(e) = &p.packet_error {
        let _ = writeln!(o, "Failed: {e}\n");
    }
    if !p.packet.is_empty() {
        let _ = writeln!(
            o,
            "SYNs of new connections (tuples never seen) from pod A to a ClusterIP whose \
             backend is pod B, both selected by N policies over 10k peer pods (A's egress and \
             B's ingress isolated, A and B admitting each other), through `dp_from_pod` (service \
             translation, A's egress) and then, as it left them, through `dp_to_pod` (B's \
             ingress); 0: the same services and pods without policies. Before each measurement \
             a SYN to a port no policy allows must be dropped by `dp_from_pod` and a SYN to B \
             from an address no policy admits by `dp_to_pod`: the lookups are on the measured \
             paths. The numbers are measured in turns (five rounds, alternating order), \
             kernel-measured time per packet.\n"
        );
        let _ = writeln!(
            o,
            "| policies | dp_from_pod per new connection (ns) | dp_to_pod per new connection (ns) | programmed in (ms) |\n|---:|---:|---:|---:|"
        );
        for r in &p.packet {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} |",
                r.policies,
                fmt_num(r.new_flow_ns, 0),
                r.to_pod_new_flow_ns
                    .map_or("–".to_owned(), |v| fmt_num(v, 0)),
                fmt_num(r.program_ms, 0)
            );
        }
        let _ = writeln!(o);
    }
}

/// The NetworkPolicy CRR and control-plane tables.
fn policy_end_to_end(o: &mut String, p: &PolicyResults) {
    let _ = writeln!(o, "### End to end and control plane\n");
    if let Some(e) = &p.error {
        let _ = writeln!(o, "Failed: {e}\n");
    }
    let _ = writeln!(
        o,
        "CRR: the client pod through the ClusterIP of the node's 10 backend pods, which the \
         policies select, against the same state without policies; each round applies both \
         states in turn (alternating order; after each apply 0.3 s of pause and 0.3 s of \
         unmeasured load) and divides the two rates; median of the rounds. \
         Before the rounds, a pod of another node that no policy admits must not be answered. \
         From empty: a fresh backend holding the node, its endpoints and the target service \
         (node setup) gets the policies, peer pods and namespaces in one apply. Label change: \
         that pod of another node (a peer pod) is relabelled into the group policy 0 admits \
         with `apply_changes`; the clock runs until a new connection from it to a backend pod \
         is answered; it is relabelled back and must be denied again before the next one.\n"
    );
    let _ = writeln!(
        o,
        "| backend | CRR without policies (conn/s) | CRR with policies (conn/s) | ratio | failed connections | note |\n|---|---:|---:|---:|---:|---|"
    );
    for r in &p.crr {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} |",
            r.backend,
            fmt_num(median(&r.crr_none), 0),
            fmt_num(median(&r.crr_policy), 0),
            fmt_num(median(&r.ratio), 3),
            r.failed_connections,
            r.error.as_deref().unwrap_or("")
        );
    }
    let _ = writeln!(
        o,
        "\n| backend | policies from empty (ms) | node setup (ms) | label change: apply (µs) | label change: until enforced (µs) | note |\n|---|---:|---:|---:|---:|---|"
    );
    for c in &p.control {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} |",
            c.backend,
            median_and_runs(&c.apply_from_empty_ms),
            fmt_num(median(&c.setup_ms), 0),
            fmt_num(median(&c.relabel_apply_us), 0),
            median_and_max(&c.relabel_reach_us),
            c.error.as_deref().unwrap_or("")
        );
    }
    let _ = writeln!(o);
}

/// The report: each section in the order the reader needs it.
fn markdown(
    results: &Results,
    plots_dir: &str,
    plots: &[&str],
    new_flow_plot: Option<&str>,
    notes: Option<&str>,
) -> String {
    let mut o = String::new();
    intro(&mut o, results, plots_dir);
    let _ = writeln!(o, "## Targets\n");
    targets(results, &mut o);
    let _ = writeln!(o);
    end_to_end(&mut o, results, plots_dir, plots);
    per_packet(&mut o, results, plots_dir, new_flow_plot);
    control_plane(&mut o, results);
    if let Some(p) = &results.policy {
        policy_section(&mut o, p);
    }
    compute_only(&mut o, results);
    method(&mut o, results);
    analysis(&mut o, notes);
    reproduce(&mut o);
    o
}

/// Title, machine, and whether this is a quick run.
fn intro(o: &mut String, results: &Results, plots_dir: &str) {
    let _ = writeln!(o, "# Benchmarks\n");
    let _ = writeln!(
        o,
        "Generated by `{COMMAND}` (see [Reproduce](#reproduce)); do not edit by hand. Raw \
         numbers: [`{plots_dir}/scaling.json`]({plots_dir}/scaling.json). Run time: {:.0} s.\n",
        results.total_secs
    );
    if let Some(m) = &results.machine {
        let _ = writeln!(o, "## Machine\n");
        let _ = writeln!(
            o,
            "| CPU | cores | memory | kernel | OS | rustc | date |\n|---|---|---|---|---|---|---|\n| {} | {} | {} | {} | {} | {} | {} |\n",
            m.cpu, m.cores, m.memory, m.kernel, m.os, m.rustc, m.date
        );
        let _ = writeln!(
            o,
            "Everything runs on this one machine: load generator, servers, the kernel's \
             datapath and the control plane share its {} cores, so absolute numbers are \
             small and ratios are what carries over to other machines.\n",
            m.cores
        );
    }
    if let Some(s) = &results.settings {
        if s.quick {
            let _ = writeln!(
                o,
                "> **Quick run** (`DP_BENCH_QUICK=1`): fewer sizes and rounds; not the \
                 published numbers.\n"
            );
        }
    }
    section_runs(o, results);
}

/// Which run measured which section, when they were not all measured by one run
/// (`DP_BENCH_SECTIONS`).
fn section_runs(o: &mut String, results: &Results) {
    let full = results
        .machine
        .as_ref()
        .map_or_else(|| "unknown".to_owned(), |m| m.date.clone());
    let quick = results.settings.as_ref().is_some_and(|s| s.quick);
    let runs: Vec<(&str, String, bool)> = crate::settings::SECTIONS
        .iter()
        .map(|section| {
            results.section_runs.get(*section).map_or_else(
                || ((*section), full.clone(), quick),
                |r| ((*section), r.date.clone(), r.quick),
            )
        })
        .collect();
    if runs
        .iter()
        .all(|(_, date, q)| *date == runs[0].1 && *q == runs[0].2)
    {
        return;
    }
    let _ = writeln!(
        o,
        "Not every section comes from the same run (`DP_BENCH_SECTIONS` measures some and \
         keeps the others' numbers):\n\n| section | measured | quick run |\n|---|---|---|"
    );
    for (section, date, q) in runs {
        let _ = writeln!(
            o,
            "| {section} | {date} | {} |",
            if q { "yes" } else { "no" }
        );
    }
    let _ = writeln!(o);
}

/// A table's header: `first`, then direct if `with_direct`, then every backend column.
fn table_header(o: &mut String, first: &str, with_direct: bool) {
    let mut h = format!("| {first} |");
    let mut sep = "|---:|".to_owned();
    if with_direct {
        h.push_str(" direct (limit) |");
        sep.push_str("---:|");
    }
    for (_, _, name) in &columns() {
        let _ = write!(h, " {name} |");
        sep.push_str("---:|");
    }
    let _ = writeln!(o, "{h}\n{sep}");
}

/// A table of one line per number of services and a `value` per column (direct first if
/// `with_direct`).
fn size_table(
    o: &mut String,
    results: &Results,
    with_direct: bool,
    value: impl Fn(Option<&ScalingRow>) -> String,
) {
    table_header(o, "services", with_direct);
    for n in sizes(results) {
        let mut l = format!("| {n} |");
        if with_direct {
            let _ = write!(l, " {} |", value(row(results, n, "direct", "-")));
        }
        for (b, p, _) in &columns() {
            let _ = write!(l, " {} |", value(row(results, n, b, p)));
        }
        let _ = writeln!(o, "{l}");
    }
}

/// The end-to-end section: ratio and absolute tables, plots, failures, the in-situ program
/// cost and the programming times.
fn end_to_end(o: &mut String, results: &Results, plots_dir: &str, plots: &[&str]) {
    let ns = sizes(results);
    let _ = writeln!(
        o,
        "## End to end: through a ClusterIP, 1 to {} services\n",
        ns.last().copied().unwrap_or(0)
    );
    let _ = writeln!(
        o,
        "Each node of the lab holds N services x 10 endpoints; the target service is placed \
         either at a random position in name order (`random`) or last (`last`, the worst case \
         for iptables' linear chain). `direct` connects to the pod IPs with no dataplane on \
         the node: the limit.\n"
    );
    let fill = results.settings.as_ref().map_or(0.0, |s| s.fill_secs);
    if fill > 0.0 {
        let _ = writeln!(
            o,
            "Before the first size each dataplane carries {fill:.0} s of unmeasured CRR load: \
             every size is measured with connection tracking (`dp_ct`, or the kernel's for \
             nftables and iptables) at a busy node's steady state, full and evicting, not the \
             first size with empty tables and the later ones with full ones.\n"
        );
    }
    let _ = writeln!(o, "### Connection rate (CRR) relative to direct\n");
    let _ = writeln!(
        o,
        "Median of per-round ratios (each round measures every mode once, in alternating order).\n"
    );
    size_table(o, results, false, |r| cell(r, |r| median(&r.crr_ratio), 3));
    let _ = writeln!(o, "\n### p99 request-response latency relative to direct\n");
    size_table(o, results, false, |r| cell(r, |r| median(&r.p99_ratio), 3));
    let _ = writeln!(o, "\n### Absolute: connections/s (median of rounds)\n");
    size_table(o, results, true, |r| cell(r, |r| median(&r.crr), 0));
    let _ = writeln!(
        o,
        "\n### Absolute: request-response latency p50 / p99 (µs, median of rounds)\n"
    );
    size_table(o, results, true, |r| match r {
        None => "–".to_owned(),
        Some(r) if r.skipped.is_some() => "skipped".to_owned(),
        Some(r) if r.p99_us.is_empty() && r.error.is_some() => "failed".to_owned(),
        Some(r) => format!(
            "{} / {}",
            fmt_num(median(&r.p50_us), 1),
            fmt_num(median(&r.p99_us), 1)
        ),
    });
    let _ = writeln!(o);
    for p in plots {
        let _ = writeln!(o, "![{p}]({plots_dir}/{p})\n");
    }
    failures(o, results);
    in_situ(o, results, &ns);
    programming(o, results, &ns);
}

/// The rows that failed, lost connections, and where the random targets were.
fn failures(o: &mut String, results: &Results) {
    let failures: Vec<&ScalingRow> = results
        .scaling
        .iter()
        .filter(|r| r.error.is_some())
        .collect();
    if !failures.is_empty() {
        let _ = writeln!(o, "Failed or partial rows:\n");
        for r in failures {
            let _ = writeln!(
                o,
                "- {} services, {} ({}): {}",
                r.services,
                r.mode,
                r.placement,
                r.error.as_deref().unwrap_or_default()
            );
        }
        let _ = writeln!(o);
    }
    let mut skipped: Vec<String> = Vec::new();
    for r in &results.scaling {
        if let Some(why) = &r.skipped {
            let text = format!("- {} at {} services: {why}", r.mode, r.services);
            if !skipped.contains(&text) {
                skipped.push(text);
            }
        }
    }
    if !skipped.is_empty() {
        let _ = writeln!(
            o,
            "Skipped (`skipped` in the tables):\n\n{}\n",
            skipped.join("\n")
        );
    }
    let lost: u64 = results.scaling.iter().map(|r| r.failed_connections).sum();
    let _ = writeln!(
        o,
        "Connections that failed during the measured runs (all modes): {lost}. Random target \
         ranks in name order: {}.\n",
        results
            .scaling
            .iter()
            .filter(|r| r.mode == "ebpf" && r.placement == "random")
            .map(|r| format!("{} of {}", r.rank.unwrap_or(0) + 1, r.services))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// What `dp_from_pod` cost per run under the end-to-end load.
fn in_situ(o: &mut String, results: &Results, ns: &[usize]) {
    if !results.in_situ.is_empty() {
        let _ = writeln!(o, "### eBPF program cost under that load\n");
        let _ = writeln!(
            o,
            "Kernel run-time statistics (`BPF_ENABLE_STATS`) of the end-to-end node's \
             `dp_from_pod` programs during the eBPF CRR runs: every packet from the client \
             and from the backends, warm caches. Median over runs.\n"
        );
        let _ = writeln!(
            o,
            "| services | ns per program run | runs |\n|---:|---:|---:|"
        );
        for &n in ns {
            let v: Vec<f64> = results
                .in_situ
                .iter()
                .filter(|s| s.services == n)
                .map(|s| s.ns_per_run)
                .collect();
            let runs: u64 = results
                .in_situ
                .iter()
                .filter(|s| s.services == n)
                .map(|s| s.runs)
                .sum();
            if !v.is_empty() {
                let _ = writeln!(o, "| {n} | {} | {runs} |", fmt_num(median(&v), 0));
            }
        }
        let _ = writeln!(o);
    }
}

/// The full applies of each size, per backend.
fn programming(o: &mut String, results: &Results, ns: &[usize]) {
    let _ = writeln!(o, "### Programming time during the scaling runs\n");
    let _ = writeln!(o, "Full sync from the previous size to this one (ms).\n");
    let _ = writeln!(
        o,
        "| services | {} |\n|---:|{}",
        BACKENDS.join(" | "),
        "---:|".repeat(BACKENDS.len())
    );
    for &n in ns {
        let mut l = format!("| {n} |");
        for b in BACKENDS {
            let c = results
                .programming
                .iter()
                .find(|p| p.services == n && p.backend == b);
            let _ = write!(
                l,
                " {} |",
                c.map_or_else(
                    || "–".to_owned(),
                    |c| match c.apply_ms {
                        Some(v) => fmt_num(v, 0),
                        None if c.skipped.is_some() => "skipped".to_owned(),
                        None => "failed".to_owned(),
                    }
                )
            );
        }
        let _ = writeln!(o, "{l}");
    }
    let _ = writeln!(o);
}

/// The per-packet section (`BPF_PROG_TEST_RUN`), with the new-flow plot when drawn.
fn per_packet(o: &mut String, results: &Results, plots_dir: &str, plot: Option<&str>) {
    let _ = writeln!(
        o,
        "## Per packet: the TC service program and the XDP program (BPF_PROG_TEST_RUN)\n"
    );
    if let Some(e) = &results.packet_error {
        let _ = writeln!(o, "Failed: {e}\n");
    }
    if !results.packet.is_empty() {
        let _ = writeln!(
            o,
            "`dp_from_pod` on TCP packets from a pod to ClusterIPs of random services of \
             `synthetic::state(N, 10)`. Each packet runs once (`repeat = 1`): a TC test run \
             repeats on the same buffer, which the first run has already translated, so \
             repeating would measure a different path. Consecutive packets belong to \
             different flows (4096 established flows round-robin; every new-flow SYN has a \
             tuple never seen). Kernel-measured time, mean over {} packets; each run comes \
             straight after a syscall, so caches are colder than under load (compare the \
             in-situ numbers above).\n",
            results.settings.as_ref().map_or(0, |s| s.packets)
        );
        let _ = writeln!(
            o,
            "Floor: the fixture `bpf/test/floor.c`, loaded on the same maps, runs the same \
             established packets in turns with `dp_from_pod` (five rounds each) and stops \
             early: `entry` returns at once (the test run itself), `+ conntrack` parses the \
             packet and looks it up in `dp_ct` (every TCP packet's first step), `+ rewrite` \
             also rewrites the destination to the entry's backend (the least a translation \
             does; no routing, counters or timestamps); `service` parses the packet, looks \
             up its ClusterIP frontend and chooses a backend (service map, slot, backend: \
             the lookups a new flow adds).\n"
        );
        if results.packet_ct_fill > 0 {
            let _ = writeln!(
                o,
                "Conntrack: before the first size the bench runs {} new-flow SYNs (as many as \
                 `dp_ct` has entries, two entries each), so that every size inserts into a \
                 full, evicting LRU map, a busy node's steady state (runs before 2026-12-07 \
                 did not: their first sizes inserted into an emptier map than the later \
                 ones).\n",
                results.packet_ct_fill
            );
        }
        let _ = writeln!(
            o,
            "XDP: `dp_xdp_uplink` on TCP packets from an external client to NodePorts of the \
             same services (backends all on other nodes, SNAT to the node address, `XDP_TX` \
             after a FIB lookup), new and established flows as above.\n"
        );
        let _ = writeln!(o, "| services | TC established (ns/packet) | TC new flow (ns/packet) | XDP established (ns/packet) | XDP new flow (ns/packet) | floor: entry / + conntrack / + rewrite (ns/packet) | floor: service (ns/packet) | programmed in (ms) |\n|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in &results.packet {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                r.services,
                fmt_num(r.established_ns, 0),
                fmt_num(r.new_flow_ns, 0),
                r.xdp_established_ns
                    .map_or("–".to_owned(), |v| fmt_num(v, 0)),
                r.xdp_new_flow_ns.map_or("–".to_owned(), |v| fmt_num(v, 0)),
                r.floor_ns.map_or("–".to_owned(), |f| format!(
                    "{} / {} / {}",
                    fmt_num(f[0], 0),
                    fmt_num(f[1], 0),
                    fmt_num(f[2], 0)
                )),
                r.floor_ns.map_or("–".to_owned(), |f| fmt_num(f[3], 0)),
                fmt_num(r.program_ms, 0)
            );
        }
        let _ = writeln!(o);
        if let Some(p) = plot {
            let _ = writeln!(o, "![{p}]({plots_dir}/{p})\n");
        }
    }
}

/// The control-plane section.
fn control_plane(o: &mut String, results: &Results) {
    let mut ns: Vec<usize> = results.control.iter().map(|c| c.services).collect();
    ns.sort_unstable();
    ns.dedup();
    let names: Vec<String> = ns.iter().map(|&n| size_name(n)).collect();
    let _ = writeln!(
        o,
        "## Control plane: {} services x 10 endpoints\n",
        names.join(", ")
    );
    let _ = writeln!(
        o,
        "Apply from empty: a fresh backend instance that holds the node without services \
         (node setup: its programs attached to the uplink and the 11 pod interfaces, or its \
         base rules installed; timed on its own) programs the whole state: N-1 services of \
         `synthetic::state` and the probe service (median of the runs listed; a backend that \
         takes over 5 s runs once). The peak-RSS child below does both in one apply. One \
         endpoint change: the probe service's only endpoint moves to another \
         pod through `apply_changes` with a one-service `ChangeSet`; the clock runs until a \
         new TCP connection from a client pod is answered by the new pod. Peak RSS: VmHWM of a \
         child process that, as an agent does, first creates the backend (the eBPF one loads \
         its programs), then parses the node's state, builds the N x 10 services and \
         programs them (kernel memory such as BPF maps and rules is not in it, pages of BPF \
         arrays it writes through a mapping are); helper processes \
         (`nft`, `iptables-restore`) are listed separately. The eBPF backend's \
         `Capacities::services` (frontend entries, `dp_svc`) is set by the bench to \
         `(2 N + 16384)` rounded up to a power of two, at least the default 65536: 65536 up to \
         24k services, 131072 at 50k, 262144 at 100k; the other capacities keep their \
         defaults (the eBPF crate's README, \"Capacities\"). A size beyond \
         `DP_BENCH_IPTABLES_MAX` (default 10000) is skipped for the iptables backend.\n"
    );
    let _ = writeln!(
        o,
        "| backend | services | apply from empty (ms) | node setup (ms) | endpoint change: apply (µs) | endpoint change: until reached (µs) | peak RSS (MiB) | RSS: at start / backend open and state built / after the sync (MiB) | helper process peak RSS (MiB) | note |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    );
    for c in &results.control {
        #[allow(clippy::cast_precision_loss)]
        let mib = |k: u64| fmt_num(k as f64 / 1024.0, 1);
        if c.skipped.is_some() {
            let _ = writeln!(
                o,
                "| {} | {} | skipped | | | | | | | {} |",
                c.backend,
                c.services,
                control_note(c, results)
            );
            continue;
        }
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            c.backend,
            c.services,
            median_and_runs(&c.apply_from_empty_ms),
            fmt_num(median(&c.setup_ms), 0),
            fmt_num(median(&c.change_apply_us), 0),
            median_and_max(&c.change_reach_us),
            c.rss
                .as_ref()
                .map_or_else(|| "–".to_owned(), |r| mib(r.vmhwm_kib)),
            c.rss
                .as_ref()
                .filter(|r| r.vmrss_state_kib > 0)
                .map_or_else(
                    || "–".to_owned(),
                    |r| format!(
                        "{} / {} / {}",
                        mib(r.vmrss_before_kib),
                        mib(r.vmrss_state_kib),
                        mib(r.vmrss_after_kib)
                    )
                ),
            c.rss.as_ref().map_or_else(
                || "–".to_owned(),
                |r| if r.children_maxrss_kib == 0 {
                    "none".to_owned()
                } else {
                    mib(r.children_maxrss_kib)
                }
            ),
            control_note(c, results)
        );
    }
}

/// A control row's note: its error, and when it was measured if not by the run at the top.
fn control_note(c: &crate::results::ControlRow, results: &Results) -> String {
    let top = results.machine.as_ref().map(|m| m.date.as_str());
    let mut note = c
        .error
        .clone()
        .or_else(|| c.skipped.clone())
        .unwrap_or_default();
    if let Some(date) = c.measured.as_deref().filter(|d| Some(*d) != top) {
        if !note.is_empty() {
            note.push_str("; ");
        }
        note.push_str("measured ");
        note.push_str(date);
    }
    note
}

/// The compute-only section.
fn compute_only(o: &mut String, results: &Results) {
    let _ = writeln!(o, "\n### Compute only (no kernel)\n");
    let _ = writeln!(o, "Median of 5 runs; `cargo bench --bench core` and `--features nft --bench render` measure these with criterion.\n");
    let _ = writeln!(o, "| work | ms |\n|---|---:|");
    for c in &results.compute {
        let _ = writeln!(o, "| {} | {} |", c.what, fmt_num(c.median_ms, 2));
    }
    let _ = writeln!(o);
}

/// How the end-to-end numbers were taken, with the run's settings.
fn method(o: &mut String, results: &Results) {
    if let Some(s) = &results.settings {
        let _ = writeln!(o, "## Method\n");
        let _ = writeln!(
            o,
            "- Lab (`dataplane-testkit`): one network namespace per node and pod; node 0 has \
             no dataplane (direct pod-IP connections: the limit), nodes 1-4 run eBPF (TC: \
             every packet translated by the TC programs), eBPF (socket LB: the same \
             dataplane with `socket_lb_cgroup` on a threaded cgroup v2 that the client pod's \
             threads join, so that the client's `connect()` gets the backend and the TC \
             programs see pod-to-pod packets, and `host_routing`, so that they redirect \
             those to the backend's veth as they do translated ones), nftables and \
             iptables; each node's targets \
             have ClusterIPs of their own. Each node has one client pod and 10 backend pods \
             running \
             a small blocking server (a few threads blocked in `accept()`, one answer line per \
             request line).\n\
             - Services: N-2 services of `synthetic::state` (10 endpoints each, at addresses \
             that only need to exist in the tables) plus the two targets whose 10 endpoints \
             are the node's backend pods. Sizes: {:?}{}.\n\
             - CRR: {} client threads, each connect / send one line / read the answer / close \
             (RST, no TIME_WAIT), for {:.1} s. RR: {} persistent connections, one request at \
             a time, for {:.1} s; p50 and p99 of all exchanges.\n\
             - {} rounds; odd rounds run the modes in reverse order (A B C, C B A, ...). Each \
             round's rate of a mode is divided by the same round's direct rate; the tables \
             show the median of those ratios, and the median of the absolute values.\n\
             - The iptables backend runs with `iptables-legacy` end to end \
             (`IptablesMode::Legacy`): `iptables-nft-restore` 1.8.9 loads 10k services x 10 in \
             one commit in over 5 minutes (quadratic in the chains it names). The control plane \
             also measures it with `iptables-nft` (`iptables-nft` row: a full sync in sections \
             of ~1000 chains); `DP_BENCH_SECTIONS=control DP_BENCH_BACKENDS=iptables,iptables-nft` \
             measures those rows alone and keeps the others.\n\
             - All traffic stays inside the lab's namespaces.\n",
            s.services,
            sizes_note(s),
            s.threads,
            s.crr_secs,
            crate::load::RR_CONNECTIONS,
            s.rr_secs,
            s.rounds
        );
    }
}

/// What the method says about the sizes beyond the default ones: the iptables limit and the
/// eBPF nodes' frontend capacity.
fn sizes_note(s: &crate::settings::Settings) -> String {
    let max = s.services.iter().copied().max().unwrap_or(0);
    let mut note = String::new();
    if s.large {
        note.push_str(" (`DP_BENCH_LARGE=1`: 50000 and 100000 added to the default sizes)");
    }
    if max > s.iptables_max {
        let _ = write!(
            note,
            "; the iptables node is programmed up to {} services and skipped beyond \
             (`DP_BENCH_IPTABLES_MAX`: it takes 10 s per full sync at 10k and grows faster \
             than linearly, the bench has a time budget)",
            s.iptables_max
        );
    }
    let entries = crate::nodes::ebpf_service_entries(s.max_services());
    if entries > 1 << 16 {
        let _ = write!(
            note,
            "; the eBPF nodes' `Capacities::services` is {entries} (the largest size's \
             frontend entries: 65536, the default, up to 24k services) at every size"
        );
    }
    note
}

/// `benches/notes.md`, as is.
fn analysis(o: &mut String, notes: Option<&str>) {
    if let Some(notes) = notes {
        let _ = writeln!(o, "## Analysis\n");
        let _ = writeln!(
            o,
            "Hand-written (`benches/notes.md`, included as is): where the time goes and what \
             misses a target. Check it against the numbers above after a re-run.\n"
        );
        let _ = writeln!(o, "{}\n", notes.trim());
    }
}

/// How to run it again.
fn reproduce(o: &mut String) {
    let _ = writeln!(o, "## Reproduce\n");
    let _ = writeln!(
        o,
        "As root (namespaces, BPF, netfilter), from the repository root:\n\n```sh\n{COMMAND}\n```\n\n\
         It writes this file, `benches/results/scaling.json` and the plots. `DP_BENCH_QUICK=1` \
         makes a quick check run (1 and 1k services); adding `-- --report-only` rewrites \
         this file and the plots from `scaling.json` without measuring (after editing \
         `benches/notes.md`); `DP_BENCH_SECTIONS=policy` (or any comma-separated subset of \
         `compute`, `packet`, `end-to-end`, `control`, `policy`) measures those sections only and keeps \
         the others' numbers from `scaling.json`; with `control`, `DP_BENCH_BACKENDS` (a \
         subset of `ebpf`, `nftables`, `iptables`, `iptables-nft`) measures those backends' \
         control-plane rows only and keeps the others'. `DP_BENCH_LARGE=1` adds 50k and 100k \
         services to the end-to-end sizes and to the control plane's (10k by default; \
         `DP_BENCH_SERVICES` and `DP_BENCH_CONTROL_SERVICES` set either list), for eBPF and \
         nftables: the iptables backend is skipped beyond `DP_BENCH_IPTABLES_MAX` (default \
         10000). The full run takes about 9 minutes on this machine (about 15 more with \
         `DP_BENCH_LARGE=1`). The \
         criterion benches: `cargo bench --bench core`, `cargo bench --features nft --bench \
         render`, `sudo cargo bench --features ebpf --bench packet`. The lab benches whose \
         results are in the notes above (each writes nothing but its plot; its section says \
         what it measures): `sudo -E cargo bench --features ebpf,nft --bench host_workload` \
         and `--bench untracked_deny` (host endpoint policy, issue 22), `sudo -E cargo bench \
         -p dataplane-ebpf --bench drop_flood` and `--bench events_crr`."
    );
}

fn plot(
    results: &Results,
    path: &Path,
    title: &str,
    y_label: &str,
    pick: fn(&ScalingRow) -> f64,
) -> Result<(), String> {
    let ns = sizes(results);
    if ns.is_empty() {
        return Err("no data".to_owned());
    }
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let root = BitMapBackend::new(path, (1400, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let root = root.titled(title, ("sans-serif", 24)).map_err(|x| e(&x))?;
    let panels = root.split_evenly((1, 2));
    #[allow(clippy::cast_precision_loss)]
    let x_max = *ns.last().unwrap_or(&1) as f64 * 1.5;
    let mut y_max: f64 = 0.0;
    for r in &results.scaling {
        let v = pick(r);
        if v.is_finite() {
            y_max = y_max.max(v);
        }
    }
    let y_max = if y_max > 0.0 { y_max * 1.15 } else { 1.0 };
    let series: [(&str, &str, RGBColor); 5] = [
        ("direct", "direct (limit)", RGBColor(90, 90, 90)),
        ("ebpf", "eBPF (TC)", RGBColor(31, 119, 180)),
        (
            "ebpf-socket",
            "eBPF (socket LB + host routing)",
            RGBColor(148, 103, 189),
        ),
        ("nftables", "nftables", RGBColor(44, 160, 44)),
        ("iptables", "iptables", RGBColor(214, 39, 40)),
    ];
    for (panel, placement) in panels.iter().zip(["random", "last"]) {
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("target service {placement}"), ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d((0.8f64..x_max).log_scale(), 0f64..y_max)
            .map_err(|x| e(&x))?;
        chart
            .configure_mesh()
            .x_desc("services (log scale)")
            .y_desc(y_label)
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| format!("{v:.0}"))
            .draw()
            .map_err(|x| e(&x))?;
        for (mode, label, color) in series {
            #[allow(clippy::cast_precision_loss)]
            let points: Vec<(f64, f64)> = ns
                .iter()
                .filter_map(|&n| {
                    let p = if mode == "direct" { "-" } else { placement };
                    row(results, n, mode, p).map(|r| (n as f64, pick(r)))
                })
                .filter(|(_, v)| v.is_finite())
                .collect();
            draw_line(&mut chart, &points, label, color, 3, true)?;
        }
        draw_legend(&mut chart, SeriesLabelPosition::LowerLeft)?;
    }
    root.present().map_err(|x| e(&x))?;
    Ok(())
}

/// A value of a per-packet row, for a plot line (none: not measured).
type PacketPick = fn(&PacketRow) -> Option<f64>;

/// New-flow cost against services, one line per arm: the TC and XDP programs' new flows, the
/// TC program's established packets, the floor fixture (parse, conntrack hit, rewrite) and its
/// service lookups (service map, slot, backend), with issue 24's goal of 4x the floor.
fn plot_new_flow(results: &Results, path: &Path) -> Result<(), String> {
    let rows = &results.packet;
    if rows.is_empty() {
        return Err("no per-packet data".to_owned());
    }
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let series: [(&str, RGBColor, PacketPick); 6] = [
        ("TC new flow (dp_from_pod)", RGBColor(31, 119, 180), |r| {
            Some(r.new_flow_ns)
        }),
        (
            "XDP new flow (dp_xdp_uplink)",
            RGBColor(255, 127, 14),
            |r| r.xdp_new_flow_ns,
        ),
        ("TC established", RGBColor(148, 103, 189), |r| {
            Some(r.established_ns)
        }),
        (
            "floor: parse + conntrack hit + rewrite",
            RGBColor(90, 90, 90),
            |r| r.floor_ns.map(|f| f[2]),
        ),
        (
            "floor: service lookups (service, slot, backend)",
            RGBColor(44, 160, 44),
            |r| r.floor_ns.map(|f| f[3]),
        ),
        ("goal: 4x the floor", RGBColor(214, 39, 40), |r| {
            r.floor_ns.map(|f| 4.0 * f[2])
        }),
    ];
    let y_max = rows
        .iter()
        .flat_map(|r| series.iter().filter_map(|(_, _, f)| f(r)))
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let y_max = if y_max > 0.0 { y_max * 1.15 } else { 1.0 };
    #[allow(clippy::cast_precision_loss)]
    let x_max = rows.iter().map(|r| r.services).max().unwrap_or(1) as f64 * 1.5;
    let root = BitMapBackend::new(path, (1000, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Per packet (BPF_PROG_TEST_RUN): new flow against services",
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((5f64..x_max).log_scale(), 0f64..y_max)
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .x_desc("services x 10 endpoints (log scale)")
        .y_desc("ns per packet")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(|x| e(&x))?;
    let goal_index = series.len() - 1;
    for (i, (label, color, pick)) in series.into_iter().enumerate() {
        #[allow(clippy::cast_precision_loss)]
        let points: Vec<(f64, f64)> = rows
            .iter()
            .filter_map(|r| pick(r).map(|v| (r.services as f64, v)))
            .filter(|(_, v)| v.is_finite())
            .collect();
        let goal = i == goal_index;
        draw_line(
            &mut chart,
            &points,
            label,
            color,
            if goal { 1 } else { 3 },
            !goal,
        )?;
    }
    draw_legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
    root.present().map_err(|x| e(&x))?;
    Ok(())
}

/// Draws a labelled line through `points` (none: nothing), of `width`, with a dot on each
/// point when `dots`.
fn draw_line<'a, DB, CT>(
    chart: &mut ChartContext<'a, DB, CT>,
    points: &[(f64, f64)],
    label: &str,
    color: RGBColor,
    width: u32,
    dots: bool,
) -> Result<(), String>
where
    DB: DrawingBackend + 'a,
    CT: CoordTranslate<From = (f64, f64)>,
{
    if points.is_empty() {
        return Ok(());
    }
    let style = ShapeStyle::from(&color).stroke_width(width);
    chart
        .draw_series(LineSeries::new(points.to_vec(), style))
        .map_err(|x| x.to_string())?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    if dots {
        chart
            .draw_series(
                points
                    .iter()
                    .map(|&(x, y)| Circle::new((x, y), 4, color.filled())),
            )
            .map_err(|x| x.to_string())?;
    }
    Ok(())
}

/// The legend of every labelled line, at `position`.
fn draw_legend<'a, DB, CT>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
) -> Result<(), String>
where
    DB: DrawingBackend + 'a,
    CT: CoordTranslate<From = (f64, f64)>,
{
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(position)
        .draw()
        .map_err(|x| x.to_string())
}
