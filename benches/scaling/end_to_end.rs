//! End-to-end CRR and RR through each dataplane at each number of services, against the
//! direct path (see the crate docs for the layout), then the control plane on the same lab.

use std::net::{SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use crate::clock::{log, ms, timed, us};
use crate::control;
use crate::load;
use crate::nodes::{client, BenchLab, BACKENDS};
use crate::results::{median, InSitu, ProgramRow, Results, ScalingRow};
use crate::settings::Settings;
use crate::states::{scaling_state, vip_last, vip_random};

/// A measured mode: direct (no dataplane) or a backend with a target placement.
#[derive(Debug, Clone)]
struct Mode {
    /// "direct" or one of [`BACKENDS`].
    kind: &'static str,
    /// "-" (direct), "last" or "random".
    placement: &'static str,
    /// The lab node it runs on.
    node: usize,
}

/// Sets up the lab, measures every size of `settings`, then (`control`: the backends to
/// measure, if any) the control plane on the same lab; a dataplane that fails is reported in
/// its rows and the others go on.
pub fn run(
    settings: &Settings,
    results: &mut Results,
    control: Option<&[&str]>,
    start: Instant,
) -> Result<(), String> {
    let mut bench = BenchLab::set_up(start, &|_| true, settings.max_services())?;
    for &n in &settings.services {
        let rank = program(settings, &mut bench, n, &mut results.programming, start);
        let modes = modes(n);
        let mut rows = rows(settings, &bench, &modes, n, rank);
        check_paths(&bench, &modes, &mut rows);
        if Some(&n) == settings.services.first() {
            fill_conntrack(settings, start, &bench, &modes, &rows);
        }
        log(start, &format!("{n} services: {} rounds", settings.rounds));
        for round in 0..settings.rounds {
            measure_round(settings, &bench, &modes, &mut rows, round, results);
        }
        for row in &rows {
            log_row(start, row);
        }
        results.scaling.extend(rows);
    }
    if let Some(backends) = control {
        control::run(settings, &mut bench, backends, &mut results.control, start);
    } else {
        // Nothing else uses the dataplanes: remove what they hold outside the lab's
        // namespaces (the eBPF pins; they outlived end-to-end runs without `control`).
        for node in &mut bench.nodes {
            if let Some(mut dp) = node.dp.take() {
                let _ = dp.reset();
            }
        }
    }
    Ok(())
}

/// Programs `n` services into every node's dataplane (a full apply), recording the time, but
/// those that `settings` skips at this size; returns the name-order rank of the random target.
fn program(
    settings: &Settings,
    bench: &mut BenchLab,
    n: usize,
    programming: &mut Vec<ProgramRow>,
    start: Instant,
) -> usize {
    log(start, &format!("{n} services: programming"));
    let mut rank = 0;
    for node in bench.nodes.iter_mut().skip(1) {
        let base = bench.lab.desired_state(node.index);
        let (state, r) = scaling_state(&base, node.index, &node.pods, n);
        rank = r;
        if let Some(skipped) = settings.skip_reason(node.kind, n) {
            log(start, &format!("  {}: {skipped}", node.kind));
            programming.push(ProgramRow {
                backend: node.kind.to_owned(),
                services: n,
                apply_ms: None,
                error: None,
                skipped: Some(skipped),
            });
            continue;
        }
        let Some(dp) = node.dp.as_mut() else {
            programming.push(ProgramRow {
                backend: node.kind.to_owned(),
                services: n,
                apply_ms: None,
                error: node.error.clone(),
                skipped: None,
            });
            continue;
        };
        let (r, took) = timed(|| dp.apply(&state));
        log(
            start,
            &format!("  {} applied {n} services in {took:?}", node.kind),
        );
        let error = r.err().map(|e| format!("apply {n} services: {e}"));
        if let Some(e) = &error {
            eprintln!("  {}: {e}", node.kind);
        }
        programming.push(ProgramRow {
            backend: node.kind.to_owned(),
            services: n,
            apply_ms: error.is_none().then(|| ms(took)),
            error: error.clone(),
            skipped: None,
        });
        node.error = error;
    }
    rank
}

/// Direct, then each backend with its last target and (beyond one service) its random one.
fn modes(n: usize) -> Vec<Mode> {
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
    modes
}

/// The addresses a mode's client connects to: the backend pods themselves for direct, the
/// target's ClusterIP otherwise.
fn targets(bench: &BenchLab, m: &Mode) -> Vec<SocketAddr> {
    match m.placement {
        "-" => bench.nodes[0]
            .pods
            .iter()
            .map(|ip| SocketAddr::V4(SocketAddrV4::new(*ip, load::PORT)))
            .collect(),
        "last" => vec![SocketAddr::V4(SocketAddrV4::new(vip_last(m.node), 80))],
        _ => vec![SocketAddr::V4(SocketAddrV4::new(vip_random(m.node), 80))],
    }
}

/// Empty rows of `n` services, one per mode, carrying the node's error if it has one, or why
/// `settings` skips it at this size.
fn rows(
    settings: &Settings,
    bench: &BenchLab,
    modes: &[Mode],
    n: usize,
    rank: usize,
) -> Vec<ScalingRow> {
    modes
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
            error: bench.nodes[m.node].error.clone(),
            skipped: settings.skip_reason(m.kind, n),
        })
        .collect()
}

/// Warm-up and check: every mode must answer through its path, and the socket LB mode must
/// really be balanced at `connect()`, not by TC. A mode that fails gets its row's error.
fn check_paths(bench: &BenchLab, modes: &[Mode], rows: &mut [ScalingRow]) {
    for (m, row) in modes.iter().zip(rows.iter_mut()) {
        if !row.measurable() {
            continue;
        }
        let balanced_before = bench.nodes[m.node].socket_balanced();
        match load::crr(
            client(&bench.lab, m.node),
            &targets(bench, m),
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
        if m.kind == "ebpf-socket"
            && row.error.is_none()
            && bench.nodes[m.node].socket_balanced() == balanced_before
        {
            row.error = Some("the socket hooks balanced no connect()".to_owned());
        }
    }
}

/// Unmeasured CRR load through each dataplane (once, before the first size), so that every
/// size is measured at the steady state of a busy node: under this load connection tracking
/// (our `dp_ct`, the kernel's for nftables and iptables) fills within seconds and then
/// evicts or expires as it inserts. Without it the first size ran with empty tables and the
/// later ones with full ones, which the "flat" ratios took for the number of services.
fn fill_conntrack(
    settings: &Settings,
    start: Instant,
    bench: &BenchLab,
    modes: &[Mode],
    rows: &[ScalingRow],
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
        if m.kind == "direct" || m.placement == "random" || !row.measurable() {
            continue;
        }
        let client = client(&bench.lab, m.node);
        if let Err(e) = load::crr(client, &targets(bench, m), fill, settings.threads) {
            eprintln!("  {}: filling connection tracking: {e}", m.kind);
        }
    }
}

/// One round: every mode in turn (in reverse order on odd rounds), then each mode's rate and
/// p99 divided by the same round's direct ones.
fn measure_round(
    settings: &Settings,
    bench: &BenchLab,
    modes: &[Mode],
    rows: &mut [ScalingRow],
    round: usize,
    results: &mut Results,
) {
    let mut order: Vec<usize> = (0..modes.len()).collect();
    if round % 2 == 1 {
        order.reverse();
    }
    let mut crr_of = vec![f64::NAN; modes.len()];
    let mut p99_of = vec![f64::NAN; modes.len()];
    for &i in &order {
        if !rows[i].measurable() {
            continue;
        }
        (crr_of[i], p99_of[i]) = measure_mode(settings, bench, &modes[i], &mut rows[i], results);
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

/// CRR, then RR, of one mode, recorded in its row (and, for "ebpf", the program's in-situ
/// cost under the CRR load); returns the CRR rate and the p99 in µs, NaN where it failed.
fn measure_mode(
    settings: &Settings,
    bench: &BenchLab,
    m: &Mode,
    row: &mut ScalingRow,
    results: &mut Results,
) -> (f64, f64) {
    let client = client(&bench.lab, m.node);
    let targets = targets(bench, m);
    let mark = (m.kind == "ebpf").then(|| bench.in_situ.snapshot());
    let crr_time = Duration::from_secs_f64(settings.crr_secs);
    let rate = match load::crr(client, &targets, crr_time, settings.threads) {
        Ok(c) => {
            row.failed_connections += c.failed;
            row.backends_seen = row.backends_seen.max(c.backends.len());
            if c.ok == 0 {
                row.error = c.first_error.or(Some("no answer".to_owned()));
                return (f64::NAN, f64::NAN);
            }
            row.crr.push(c.rate());
            c.rate()
        }
        Err(e) => {
            row.error = Some(e);
            return (f64::NAN, f64::NAN);
        }
    };
    if let Some((runs, ns)) = mark.and_then(|mark| bench.in_situ.since(mark)) {
        results.in_situ.push(InSitu {
            services: row.services,
            runs,
            ns_per_run: ns,
        });
    }
    let rr_time = Duration::from_secs_f64(settings.rr_secs);
    match load::rr(client, &targets, rr_time) {
        Ok(r) if r.error.is_none() => {
            row.p50_us.push(us(r.p50));
            row.p99_us.push(us(r.p99));
            (rate, us(r.p99))
        }
        Ok(r) => {
            row.error = r.error;
            (rate, f64::NAN)
        }
        Err(e) => {
            row.error = Some(e);
            (rate, f64::NAN)
        }
    }
}

/// The medians of a mode at one size, on the progress log.
fn log_row(start: Instant, row: &ScalingRow) {
    if row.skipped.is_some() {
        return;
    }
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
