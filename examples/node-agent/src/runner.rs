//! When to sync: kube-proxy's `BoundedFrequencyRunner`
//! (`pkg/util/async/bounded_frequency_runner.go`) as a pure state machine over a clock the caller passes in, so
//! that its timing is tested without sleeping.
//!
//! The rules (kube-proxy's, with one burst run):
//! - a change requests a run; runs are at least `min_sync` apart (from the end of one to the
//!   start of the next), so a burst of changes coalesces into one run, and the first change
//!   after a quiet period runs at once;
//! - a run happens at least every `sync` even without changes; it is *partial* (the changes
//!   since the last run, often none), and a run is *full* (the whole state applied again,
//!   repairing whatever changed behind our back) once `full_sync` has passed since the last
//!   full one, whether periodic or asked for by a change. kube-proxy's nftables and iptables
//!   proxiers do the same: `doFullSync := proxier.needFullSync ||
//!   (time.Since(proxier.lastFullSync) > proxyutil.FullSyncPeriod)` in `syncProxyRules`
//!   (`pkg/proxy/nftables/proxier.go`), `FullSyncPeriod` being an hour, while their
//!   `--sync-period` runs are partial. A full run of 10k services costs the nftables
//!   backend's `nft` process ~300 MiB and the eBPF backend a plan of every service
//!   (BENCHMARKS.md): every 30 s was most of the agent's work on a quiet node;
//! - after a failed run the next one comes `retry` later at the latest (sooner when a change
//!   allows it), and it is full.
//!
//! Departure from kube-proxy: its runner calls one function and lets the proxier decide
//! what is full; here the runner decides, because it holds the clock.

use std::time::{Duration, Instant};

/// kube-proxy's `proxyutil.FullSyncPeriod`: how long at most between two full runs.
pub const FULL_SYNC_PERIOD: Duration = Duration::from_hours(1);

/// The periods of the loop (`--min-sync-period`, `--sync-period`, `--retry-interval`,
/// `--full-sync-period`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Periods {
    /// The shortest time between the end of a run and the start of the next.
    pub min_sync: Duration,
    /// The longest time between two runs.
    pub sync: Duration,
    /// The longest time between two full runs (at least `sync` apart in effect: a run comes
    /// only that often without changes).
    pub full_sync: Duration,
    /// After a failure, the longest time until the next (full) run.
    pub retry: Duration,
}

impl Default for Periods {
    /// kube-proxy's defaults for the iptables proxier's flags: 1 s, 30 s, and a 5 s retry;
    /// a full run every hour ([`FULL_SYNC_PERIOD`]).
    fn default() -> Self {
        Self {
            min_sync: Duration::from_secs(1),
            sync: Duration::from_secs(30),
            full_sync: FULL_SYNC_PERIOD,
            retry: Duration::from_secs(5),
        }
    }
}

/// What kind of run is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunKind {
    /// Apply the changes since the last run.
    Partial,
    /// Apply the whole state (the first run, a periodic resync, a retry after a failure).
    Full,
}

/// The runner's state. Call [`request`](Self::request) on every change,
/// [`next_run`](Self::next_run) to know when to wake up, [`due`](Self::due) when woken, and
/// [`finished`](Self::finished) after each run.
#[derive(Debug, Clone)]
pub struct Runner {
    periods: Periods,
    /// When the last run ended (`None`: never ran).
    last_run: Option<Instant>,
    /// When the last successful full run started.
    last_full: Option<Instant>,
    /// Changes requested a run that has not happened yet.
    pending: bool,
    /// A failed run asked for a retry at this time.
    retry_at: Option<Instant>,
    /// The next run must be full (the last one failed).
    full_next: bool,
}

impl Runner {
    /// A runner that has never run: its first run is due as soon as it is requested, and is
    /// full.
    pub fn new(periods: Periods) -> Self {
        Self {
            periods,
            last_run: None,
            last_full: None,
            pending: false,
            retry_at: None,
            full_next: true,
        }
    }

    /// The periods.
    pub fn periods(&self) -> Periods {
        self.periods
    }

    /// A change happened: run as soon as `min_sync` allows.
    pub fn request(&mut self) {
        self.pending = true;
    }

    /// Whether a change is waiting for a run.
    pub fn pending(&self) -> bool {
        self.pending
    }

    /// When the next run is due, seen at `now`: `now` or earlier when one is due already;
    /// `None` when nothing will be due until a request (never ran, nothing requested).
    pub fn next_run(&self, now: Instant) -> Option<Instant> {
        let Some(last) = self.last_run else {
            // Before the first run only a request starts one, at once.
            return self.pending.then_some(now);
        };
        let mut at = last + self.periods.sync;
        if self.pending {
            at = at.min(last + self.periods.min_sync);
        }
        if let Some(retry) = self.retry_at {
            // A retry may come sooner than min_sync allows only if it was asked that short;
            // it never comes before the end of the failed run.
            at = at.min(retry);
        }
        Some(at)
    }

    /// The run due at `now`, if any.
    pub fn due(&self, now: Instant) -> Option<RunKind> {
        let at = self.next_run(now)?;
        if now < at {
            return None;
        }
        let periodic_full = self
            .last_full
            .is_none_or(|full| now.saturating_duration_since(full) >= self.periods.full_sync);
        if self.full_next || periodic_full {
            Some(RunKind::Full)
        } else {
            Some(RunKind::Partial)
        }
    }

    /// A run of `kind` that started at `started` ended at `ended`, successfully or not.
    /// Changes requested during the run (after `started`) must be requested again by the
    /// caller after this call: they were not part of the run.
    pub fn finished(&mut self, kind: RunKind, started: Instant, ended: Instant, ok: bool) {
        self.last_run = Some(ended);
        if ok {
            self.pending = false;
            self.retry_at = None;
            self.full_next = false;
            if kind == RunKind::Full {
                self.last_full = Some(started);
            }
        } else {
            // kube-proxy's proxier calls RetryAfter and forces its next sync to be full; the
            // failed changes wait for that retry (the full run carries them), only new
            // changes may bring it forward to `min_sync` after this run.
            self.pending = false;
            self.retry_at = Some(ended + self.periods.retry);
            self.full_next = true;
        }
    }
}
