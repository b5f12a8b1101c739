//! Durations as the results record them, and the progress log on stderr.

use std::time::{Duration, Instant};

use crate::results::median;

/// Prints `what` with the seconds since the run's `start`.
pub fn log(start: Instant, what: &str) {
    eprintln!("[{:>6.1}s] {what}", start.elapsed().as_secs_f64());
}

/// `d` in milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `d` in microseconds.
pub fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// `f`'s result and how long it took.
pub fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let r = f();
    (r, t.elapsed())
}

/// Median of `runs` runs of `f`, in milliseconds.
pub fn time_median(runs: usize, mut f: impl FnMut()) -> f64 {
    let mut v = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        f();
        v.push(ms(t.elapsed()));
    }
    median(&v)
}
