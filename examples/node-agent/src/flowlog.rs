//! `--flow-log PATH|-`: the dataplane's flow events ([`Dataplane::events`]: drops and
//! rejects, and with `--flow-log-new-connections` every new connection) written as JSON lines
//! ([`FlowEvent::to_json_line`], dataplane-core's versioned event schema), to a file (appended
//! to) or to standard output (`-`; the agent's logs go to standard error).
//!
//! The events are read on a thread of their own, never the reconcile loop's or the dataplane's:
//! a slow disk or pipe delays only the log, and events that the kernel buffer cannot hold
//! meanwhile are counted as lost (`dataplane_flow_events_lost_total`), as Hubble counts the
//! events its ring buffer drops (`hubble_lost_events_total`) rather than slowing the datapath.
//!
//! A dataplane without an event source answers `Unsupported`: the agent says so once and runs
//! on without a flow log.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use dataplane::{Dataplane, Error};
use dataplane_core::events::{BoxEventSource, EventOptions, FlowEvent};

use crate::metrics::Metrics;

/// How long one wait for events lasts: how soon the thread sees that it is to stop.
pub const POLL: Duration = Duration::from_millis(200);
/// The most events taken from the source in one read.
pub const BATCH: usize = 1024;

/// Where the flow log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Standard output (`-`).
    Stdout,
    /// A file, appended to (created when missing).
    File(PathBuf),
}

impl std::str::FromStr for Output {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "" => Err("an empty path (use - for standard output)".to_owned()),
            "-" => Ok(Output::Stdout),
            path => Ok(Output::File(PathBuf::from(path))),
        }
    }
}

impl Output {
    /// Opens the output for writing.
    ///
    /// # Errors
    /// The file cannot be opened for appending.
    pub fn open(&self) -> std::io::Result<Box<dyn Write + Send>> {
        Ok(match self {
            Output::Stdout => Box::new(std::io::LineWriter::new(std::io::stdout())),
            Output::File(path) => Box::new(std::io::BufWriter::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            )),
        })
    }
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Output::Stdout => f.write_str("standard output"),
            Output::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// A running flow log: its thread. Dropping it stops the thread (within [`POLL`]).
#[derive(Debug)]
pub struct FlowLog {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FlowLog {
    /// Stops the thread and waits for it (the events read so far are written).
    pub fn stop(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for FlowLog {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Opens `dataplane`'s event source with `options` and writes its events to `output` on a
/// thread of its own. `Ok(None)` when the dataplane has no event source (`Unsupported`) or
/// it cannot be opened now (a single-consumer source another reader holds), logged once as
/// a warning.
///
/// # Errors
/// The output cannot be opened, or the thread cannot start.
pub fn start(
    dataplane: &dyn Dataplane,
    options: &EventOptions,
    output: &Output,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Option<FlowLog>> {
    let source = match dataplane.events(options) {
        Ok(source) => source,
        Err(e @ Error::Unsupported { .. }) => {
            tracing::warn!(error = %e, "--flow-log: this dataplane reports no flow events (yet); running without a flow log");
            return Ok(None);
        }
        // Never fatal: a restarting agent must not crash-loop because another reader holds a
        // single-consumer source (an NFLOG group bound by `dpctl flows`). Services matter
        // more than the log; the warning says why it is missing.
        Err(e) => {
            tracing::warn!(error = %dataplane::error_chain(&e), "--flow-log: the flow events cannot be opened (another reader, such as `dpctl flows`, may hold them); running without a flow log");
            return Ok(None);
        }
    };
    let out = output
        .open()
        .map_err(|e| anyhow::anyhow!("--flow-log: opening {output}: {e}"))?;
    tracing::info!(output = %output, new_connections = options.new_connections, "writing flow events");
    Ok(Some(spawn(source, out, metrics)?))
}

/// Writes the events of `source` to `out` as JSON lines on a thread of its own until the
/// returned [`FlowLog`] is stopped or the source fails (logged).
///
/// # Errors
/// The thread cannot start.
pub fn spawn(
    source: BoxEventSource,
    out: Box<dyn Write + Send>,
    metrics: Arc<Metrics>,
) -> std::io::Result<FlowLog> {
    let stop = Arc::new(AtomicBool::new(false));
    let thread = std::thread::Builder::new()
        .name("flow-log".to_owned())
        .spawn({
            let stop = Arc::clone(&stop);
            move || run(source, out, &metrics, &stop)
        })?;
    Ok(FlowLog {
        stop,
        thread: Some(thread),
    })
}

fn run(
    mut source: BoxEventSource,
    mut out: Box<dyn Write + Send>,
    metrics: &Metrics,
    stop: &AtomicBool,
) {
    let mut events: Vec<FlowEvent> = Vec::with_capacity(BATCH);
    let mut lost = 0;
    let mut write_failed = false;
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        events.clear();
        let read = source
            .wait(POLL)
            .and_then(|()| source.read(&mut events, BATCH));
        if let Err(e) = read {
            tracing::warn!(error = %dataplane::error_chain(&e), "--flow-log: the flow event source failed: no more flow events");
            break;
        }
        let mut written = 0_u64;
        for event in &events {
            let line = event.to_json_line();
            match writeln!(out, "{line}") {
                Ok(()) => written += 1,
                Err(e) => {
                    // Logged once per run of failures (a full disk must not flood the log).
                    if !write_failed {
                        tracing::warn!(error = %e, "--flow-log: writing flow events failed; they are dropped until a write succeeds");
                    }
                    write_failed = true;
                }
            }
        }
        if !events.is_empty() && out.flush().is_ok() && written > 0 {
            write_failed = false;
        }
        metrics.flow_events.inc_by(written);
        let now_lost = source.lost();
        metrics
            .flow_events_lost
            .inc_by(now_lost.saturating_sub(lost));
        lost = lost.max(now_lost);
        // The stop is looked at before the read, so the events waiting then are written.
        if stopping {
            break;
        }
    }
    let _ = out.flush();
}
