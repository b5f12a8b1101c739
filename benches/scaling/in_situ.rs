//! The kernel's own run-time statistics of the eBPF programs under the end-to-end load.

use std::collections::BTreeMap;
use std::time::Duration;

/// Run-time statistics of the eBPF `dp_from_pod` programs of the end-to-end dataplane under
/// real traffic (`BPF_ENABLE_STATS`, kept on while this value lives).
pub struct InSituStats {
    _enabled: Option<std::os::fd::OwnedFd>,
    ids: Vec<u32>,
}

impl InSituStats {
    /// Turns the statistics on; no program is adopted yet.
    pub fn start() -> InSituStats {
        InSituStats {
            _enabled: aya::sys::enable_stats(aya::sys::Stats::RunTime).ok(),
            ids: Vec::new(),
        }
    }

    fn programs() -> BTreeMap<u32, (u64, Duration)> {
        aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .filter(|p| p.name_as_str() == Some("dp_from_pod"))
            .map(|p| (p.id(), (p.run_count(), p.run_time())))
            .collect()
    }

    /// The ids of the `dp_from_pod` programs loaded now.
    pub fn ids() -> Vec<u32> {
        Self::programs().into_keys().collect()
    }

    /// Takes the `dp_from_pod` programs loaded since `before` as ours.
    pub fn adopt_new(&mut self, before: &[u32]) {
        self.ids = Self::ids()
            .into_iter()
            .filter(|id| !before.contains(id))
            .collect();
    }

    /// Runs and run time of the adopted programs so far: a mark for [`since`](Self::since).
    pub fn snapshot(&self) -> (u64, Duration) {
        Self::programs()
            .into_iter()
            .filter(|(id, _)| self.ids.contains(id))
            .fold((0, Duration::ZERO), |(c, t), (_, (c2, t2))| {
                (c + c2, t + t2)
            })
    }

    /// Runs and mean ns per run since `mark`.
    pub fn since(&self, mark: (u64, Duration)) -> Option<(u64, f64)> {
        let (c, t) = self.snapshot();
        let runs = c.checked_sub(mark.0).filter(|r| *r > 0)?;
        #[allow(clippy::cast_precision_loss)]
        let ns = (t.saturating_sub(mark.1)).as_secs_f64() * 1e9 / runs as f64;
        Some((runs, ns))
    }
}
