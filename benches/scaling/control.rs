//! The control plane on the end-to-end lab, one backend node and one size at a time: peak RSS
//! of a process holding N services x 10, programming them from empty, and one endpoint change
//! until a client sees it (N: `Settings::control_services`, 10k by default).

use std::net::{IpAddr, SocketAddrV4};
use std::path::Path;
use std::time::{Duration, Instant};

use dataplane::{BoxDataplane, Change, ChangeSet, DesiredState};
use dataplane_testkit::Lab;

use crate::clock::{log, ms, timed, us};
use crate::load;
use crate::nodes::{client, open_dataplane, BenchLab, Node};
use crate::results::{median, ControlRow};
use crate::rss::rss_of_child;
use crate::settings::Settings;
use crate::states::{control_state, vip_probe};

/// Closes the end-to-end dataplanes and measures the control plane of each backend of
/// `backends` (see [`crate::settings::CONTROL_BACKENDS`]) at each size of
/// `settings.control_services` into `rows`, replacing their earlier rows and keeping the
/// others'. A size beyond `settings.iptables_max` gets a skipped row for the iptables
/// backends.
pub fn run(
    settings: &Settings,
    bench: &mut BenchLab,
    backends: &[&str],
    rows: &mut Vec<ControlRow>,
    start: Instant,
) {
    log(
        start,
        &format!(
            "control plane: {:?} services x 10",
            settings.control_services
        ),
    );
    rows.retain(|r| !backends.contains(&r.backend.as_str()));
    let base_dir = std::env::temp_dir();
    let date = crate::machine::Machine::this().date;
    for node in bench.nodes.iter_mut().skip(1) {
        if let Some(mut dp) = node.dp.take() {
            let _ = dp.reset();
        }
        // "ebpf-socket" has the same maps and planner as "ebpf": its control plane is that
        // one. The iptables node also measures the backend with the nf_tables tools.
        let kinds: Vec<&'static str> = match node.kind {
            "ebpf-socket" => Vec::new(),
            "iptables" => vec!["iptables", "iptables-nft"],
            other => vec![other],
        };
        for &kind in kinds.iter().filter(|k| backends.contains(k)) {
            for &n in &settings.control_services {
                let mut row = ControlRow {
                    backend: kind.to_owned(),
                    services: n,
                    measured: Some(date.clone()),
                    skipped: settings.skip_reason(kind, n),
                    ..ControlRow::default()
                };
                if let Some(skipped) = &row.skipped {
                    log(start, &format!("  {kind} at {n} services: {skipped}"));
                    rows.push(row);
                    continue;
                }
                let base = bench.lab.desired_state(node.index);
                let base_file =
                    base_dir.join(format!("dp-bench-{}-{kind}-{n}.json", std::process::id()));
                let r = measure(
                    settings, &bench.lab, node, kind, n, &base, &base_file, &mut row, start,
                );
                if let Err(e) = r {
                    eprintln!("  {kind} at {n} services: {e}");
                    row.error = Some(e);
                }
                let _ = std::fs::remove_file(&base_file);
                rows.push(row);
            }
        }
    }
    let place = |b: &str| {
        crate::settings::CONTROL_BACKENDS
            .iter()
            .position(|c| *c == b)
    };
    rows.sort_by_key(|r| (place(&r.backend), r.services));
}

/// The control plane of backend `kind` on `node` with `n` services, on the node state `base`
/// (written to `base_file` for the RSS child).
#[allow(clippy::too_many_arguments)]
fn measure(
    settings: &Settings,
    lab: &Lab,
    node: &Node,
    kind: &'static str,
    n: usize,
    base: &DesiredState,
    base_file: &Path,
    row: &mut ControlRow,
    start: Instant,
) -> Result<(), String> {
    let netns = lab.node(node.index).netns.path();
    peak_rss(kind, n, netns, base, base_file, row, start)?;
    let state = control_state(base, n, node.pods[0]);
    let mut dp = from_empty(settings, kind, n, netns, base, &state, row, start)?;
    endpoint_changes(settings, lab, node, kind, &mut dp, &state, row, start)?;
    dp.reset().map_err(|e| format!("reset: {e}"))?;
    Ok(())
}

/// Peak RSS of a fresh process that builds and programs `n` x 10; a child that fails is
/// reported and leaves `row.rss` empty.
fn peak_rss(
    kind: &str,
    n: usize,
    netns: &Path,
    base: &DesiredState,
    base_file: &Path,
    row: &mut ControlRow,
    start: Instant,
) -> Result<(), String> {
    let json = dataplane::to_json(base).map_err(|e| e.to_string())?;
    std::fs::write(base_file, json).map_err(|e| format!("write {}: {e}", base_file.display()))?;
    match rss_of_child(kind, n, netns, base_file) {
        Ok(r) => {
            log(
                start,
                &format!(
                    "  {kind} child, {n} services: VmHWM {} KiB, apply {:.0} ms",
                    r.vmhwm_kib, r.apply_ms
                ),
            );
            row.rss = Some(r);
        }
        Err(e) => eprintln!("  {kind} RSS child: {e}"),
    }
    Ok(())
}

/// A fresh dataplane programmed with the node alone (node setup), then with `state` (`n`
/// services from empty), up to three times (once in quick runs); returns the last one,
/// holding `state`.
#[allow(clippy::too_many_arguments)]
fn from_empty(
    settings: &Settings,
    kind: &str,
    n: usize,
    netns: &Path,
    base: &DesiredState,
    state: &DesiredState,
    row: &mut ControlRow,
    start: Instant,
) -> Result<BoxDataplane, String> {
    let repeats = if settings.quick { 1 } else { 3 };
    let mut dp: Option<BoxDataplane> = None;
    for k in 0..repeats {
        if let Some(mut old) = dp.take() {
            old.reset().map_err(|e| format!("reset: {e}"))?;
        }
        let mut fresh = open_dataplane(kind, netns, &format!("cp{k}"), None, n)?;
        // The node without services first: what the programs' attachments (or the base
        // rules) cost is node setup, not service programming, and is shown on its own.
        let (applied, setup) = timed(|| fresh.apply(base));
        applied.map_err(|e| format!("apply the node without services: {e}"))?;
        row.setup_ms.push(ms(setup));
        let (applied, took) = timed(|| fresh.apply(state));
        applied.map_err(|e| format!("apply {n} services from empty: {e}"))?;
        row.apply_from_empty_ms.push(ms(took));
        log(
            start,
            &format!("  {kind} node setup {setup:?}, then {n} services from empty: {took:?}"),
        );
        dp = Some(fresh);
        // A slow backend gets fewer repetitions: the bench has a time budget.
        if took > Duration::from_secs(5) {
            break;
        }
    }
    dp.ok_or_else(|| "no dataplane".to_owned())
}

/// Moves the probe service's one backend between two pods, `settings.changes` times (or for
/// 30 s): the time `apply_changes` takes and the time until the client's probe reaches the
/// new backend.
#[allow(clippy::too_many_arguments)]
fn endpoint_changes(
    settings: &Settings,
    lab: &Lab,
    node: &Node,
    kind: &str,
    dp: &mut BoxDataplane,
    state: &DesiredState,
    row: &mut ControlRow,
    start: Instant,
) -> Result<(), String> {
    let mut prober = load::Prober::new(client(lab, node.index), load::PROBE_BATCH)?;
    let dst = SocketAddrV4::new(vip_probe(), 80);
    // Before the clock starts, the probe service answers from its first backend.
    wait_for(&mut prober, dst, &node.names[0], Duration::from_secs(5))?;
    let mut current = state
        .services
        .last()
        .cloned()
        .ok_or("control state has no probe service")?;
    // "Reached" (the report's column and the goal's measure) ends when the probe that the
    // new backend answered has read its answer and closed; "accepted" when that probe's
    // connect() returned (the new backend's SYN-ACK), printed beside it only.
    let mut accepted_us = Vec::with_capacity(settings.changes);
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
        prober.refill()?;
        let t = Instant::now();
        dp.apply_changes(&changes)
            .map_err(|e| format!("apply one endpoint change: {e}"))?;
        let applied = t.elapsed();
        let want = &node.names[target % node.names.len()];
        let connected = wait_for(&mut prober, dst, want, Duration::from_secs(5))?;
        let reached = t.elapsed();
        row.change_apply_us.push(us(applied));
        row.change_reach_us.push(us(reached));
        accepted_us.push(us(connected - t));
        current = next;
        if budget.elapsed() > Duration::from_secs(30) {
            break;
        }
    }
    log(
        start,
        &format!(
            "  {kind} endpoint change: apply {:.0} µs, reached {:.0} µs, accepted by the new \
             backend {:.0} µs (medians of {})",
            median(&row.change_apply_us),
            median(&row.change_reach_us),
            median(&accepted_us),
            row.change_reach_us.len()
        ),
    );
    Ok(())
}

/// Probes `dst` until `want` answers; errors after `timeout`.
fn wait_for(
    prober: &mut load::Prober,
    dst: SocketAddrV4,
    want: &str,
    timeout: Duration,
) -> Result<Instant, String> {
    load::wait_for(prober, dst, want, timeout, load::IO_TIMEOUT)
}
