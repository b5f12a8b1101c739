//! The sync timing (kube-proxy's `BoundedFrequencyRunner` rules) over a fake clock: instants
//! are a base plus offsets, nothing sleeps.
#![allow(clippy::unchecked_time_subtraction)] // test instants are far from the clock's start

use std::time::{Duration, Instant};

use dataplane_agent::runner::{Periods, RunKind, Runner};

const MIN: Duration = Duration::from_secs(1);
const SYNC: Duration = Duration::from_secs(30);
const RETRY: Duration = Duration::from_secs(5);
const FULL: Duration = Duration::from_secs(90);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn runner() -> Runner {
    Runner::new(Periods {
        min_sync: MIN,
        sync: SYNC,
        full_sync: FULL,
        retry: RETRY,
    })
}

/// Runs what is due at `at` (if anything) for `took`, successfully: the kind that ran.
fn run_at(r: &mut Runner, at: Instant, took: Duration) -> Option<RunKind> {
    let kind = r.due(at)?;
    r.finished(kind, at, at + took, true);
    Some(kind)
}

#[test]
fn nothing_runs_before_a_request_and_the_first_run_is_full_and_immediate() {
    let t0 = Instant::now();
    let mut r = runner();
    assert_eq!(r.next_run(t0), None);
    assert_eq!(r.due(t0 + SYNC * 10), None, "never requested: never due");
    r.request();
    assert_eq!(r.next_run(t0), Some(t0));
    assert_eq!(run_at(&mut r, t0, ms(10)), Some(RunKind::Full));
    assert!(!r.pending());
}

#[test]
fn a_burst_coalesces_into_one_run_min_sync_after_the_last() {
    let t0 = Instant::now();
    let mut r = runner();
    r.request();
    run_at(&mut r, t0, ms(10)).unwrap();
    let end = t0 + ms(10);
    // Ten changes within 200 ms of the first run: none may run before end + MIN.
    for i in 0..10u64 {
        r.request();
        assert_eq!(r.due(end + ms(20 * i)), None, "change {i} ran too early");
    }
    assert_eq!(r.next_run(end + ms(200)), Some(end + MIN));
    assert_eq!(r.due(end + MIN - ms(1)), None);
    // One partial run takes them all.
    assert_eq!(run_at(&mut r, end + MIN, ms(5)), Some(RunKind::Partial));
    assert!(!r.pending());
}

#[test]
fn the_first_change_after_a_quiet_period_runs_at_once() {
    let t0 = Instant::now();
    let mut r = runner();
    r.request();
    run_at(&mut r, t0, ms(10)).unwrap();
    // Quiet for 3 s (longer than MIN): a change runs when it arrives.
    let later = t0 + Duration::from_secs(3);
    r.request();
    assert!(r.next_run(later).unwrap() <= later);
    assert_eq!(run_at(&mut r, later, ms(1)), Some(RunKind::Partial));
}

#[test]
fn without_changes_a_run_comes_every_sync_period_and_one_per_full_sync_period_is_full() {
    let t0 = Instant::now();
    let mut r = runner();
    r.request();
    run_at(&mut r, t0, ms(10)).unwrap();
    let mut end = t0 + ms(10);
    assert_eq!(r.next_run(end), Some(end + SYNC));
    assert_eq!(r.due(end + SYNC - ms(1)), None);
    // Partial until FULL has passed since the first (full) run started.
    let mut kinds = Vec::new();
    while end < t0 + FULL * 2 {
        let at = r.next_run(end).unwrap();
        assert_eq!(at, end + SYNC, "a run every SYNC");
        kinds.push((at - t0, run_at(&mut r, at, ms(10)).unwrap()));
        end = at + ms(10);
    }
    let fulls: Vec<Duration> = kinds
        .iter()
        .filter(|(_, k)| *k == RunKind::Full)
        .map(|(t, _)| *t)
        .collect();
    // The first run at or past FULL after the first full run started, then FULL after the
    // start of that one; the runs between are partial.
    assert_eq!(fulls.len(), 2, "{kinds:?}");
    assert!(fulls[0] >= FULL && fulls[0] < FULL + SYNC, "{kinds:?}");
    assert!(
        fulls[1] - fulls[0] >= FULL && fulls[1] - fulls[0] < FULL + SYNC,
        "{kinds:?}"
    );
    assert_eq!(kinds.len(), 6, "{kinds:?}");
}

#[test]
fn under_a_steady_stream_of_changes_one_run_per_full_sync_period_is_full() {
    let t0 = Instant::now();
    let mut r = runner();
    r.request();
    run_at(&mut r, t0, Duration::ZERO).unwrap();
    let mut now = t0;
    let mut kinds = Vec::new();
    // A change every 500 ms for 185 s: runs every MIN, partial except one per FULL.
    for _ in 0..370 {
        now += ms(500);
        r.request();
        if let Some(kind) = run_at(&mut r, now, Duration::ZERO) {
            kinds.push((now - t0, kind));
        }
    }
    let fulls: Vec<_> = kinds.iter().filter(|(_, k)| *k == RunKind::Full).collect();
    assert_eq!(
        fulls.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
        [FULL, FULL * 2],
        "{kinds:?}"
    );
    assert!(
        kinds.windows(2).all(|w| w[1].0 - w[0].0 >= MIN),
        "runs closer than MIN: {kinds:?}"
    );
    assert_eq!(kinds.len(), 185, "one run per second");
}

#[test]
fn a_failure_retries_after_the_retry_interval_with_a_full_run() {
    let t0 = Instant::now();
    let mut r = runner();
    r.request();
    run_at(&mut r, t0, Duration::ZERO).unwrap();
    let t1 = t0 + Duration::from_secs(2);
    r.request();
    assert_eq!(r.due(t1), Some(RunKind::Partial));
    r.finished(RunKind::Partial, t1, t1 + ms(100), false);
    let failed = t1 + ms(100);
    // No new change: the retry comes RETRY after the failed run ended, and is full.
    assert_eq!(r.next_run(failed), Some(failed + RETRY));
    assert_eq!(r.due(failed + RETRY - ms(1)), None);
    assert_eq!(r.due(failed + RETRY), Some(RunKind::Full));
    // It fails again: another retry, full again.
    r.finished(RunKind::Full, failed + RETRY, failed + RETRY, false);
    assert_eq!(r.due(failed + RETRY * 2), Some(RunKind::Full));
    r.finished(RunKind::Full, failed + RETRY * 2, failed + RETRY * 2, true);
    // Recovered: the next change is partial again.
    r.request();
    let t2 = failed + RETRY * 2 + MIN;
    assert_eq!(r.due(t2), Some(RunKind::Partial));
}

#[test]
fn a_new_change_after_a_failure_brings_the_full_retry_forward_to_min_sync() {
    let t0 = Instant::now();
    let mut r = runner();
    r.request();
    r.finished(RunKind::Full, t0, t0, false);
    assert_eq!(r.next_run(t0), Some(t0 + RETRY));
    r.request();
    assert_eq!(r.next_run(t0), Some(t0 + MIN));
    assert_eq!(r.due(t0 + MIN), Some(RunKind::Full));
}
