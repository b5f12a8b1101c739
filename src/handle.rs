//! [`AsyncDataplane`]: a dataplane on a thread of its own, driven with futures (feature
//! `tokio`).
//!
//! Programming the kernel blocks for as long as the kernel takes (seconds for a full apply of
//! a large state), which must not happen on an async runtime's threads. The handle owns the
//! dataplane on a dedicated std thread and talks to it through a queue under a mutex (held
//! only to push or pop a request, never during kernel work) and tokio's `oneshot` replies,
//! which need no runtime on the sending side. The thread sleeps on a condition variable until
//! a request arrives or maintenance is due.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[cfg(doc)]
use dataplane_core::Dataplane;
use dataplane_core::{
    ApplyReport, BoxDataplane, Capabilities, ChangeSet, DesiredState, Error, Flow,
    MaintenanceReport, ObservedState, Stats,
};
use tokio::sync::{oneshot, watch};

/// The shortest time between two maintenance runs of the handle's thread.
const MIN_MAINTENANCE_INTERVAL: Duration = Duration::from_millis(1);

/// Why a call on an [`AsyncDataplane`] failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum AsyncError {
    /// The dataplane answered with this error. Shared: every waiter of a coalesced
    /// [`sync`](AsyncDataplane::sync) gets the same one.
    #[error(transparent)]
    Dataplane(Arc<Error>),
    /// The dataplane's thread is gone: the dataplane panicked (the panic was printed where
    /// panics go). Every later call answers this too.
    #[error("the dataplane thread has stopped (the dataplane panicked)")]
    Stopped,
}

impl AsyncError {
    /// The dataplane's error, to match on its kind (`Error::Invalid`,
    /// `Error::CapacityExceeded`, ...); `None` for [`AsyncError::Stopped`].
    pub fn dataplane_error(&self) -> Option<&Error> {
        match self {
            AsyncError::Dataplane(e) => Some(e),
            AsyncError::Stopped => None,
        }
    }
}

impl From<Error> for AsyncError {
    fn from(e: Error) -> Self {
        AsyncError::Dataplane(Arc::new(e))
    }
}

/// The result of the latest [`maintain`](Dataplane::maintain) run, as
/// [`AsyncDataplane::maintenance`] publishes it (`None` before the first run).
pub type MaintenanceResult = Option<Result<MaintenanceReport, AsyncError>>;

type Reply<T> = oneshot::Sender<Result<T, AsyncError>>;

/// What the thread owns.
struct Worker {
    dataplane: BoxDataplane,
    /// The state synced last, handed to [`Dataplane::sync`] as `previous`.
    previous: Option<DesiredState>,
}

type Job = Box<dyn FnOnce(&mut Worker) + Send>;

enum Request {
    /// The newest desired state of a run of queued syncs, and everyone waiting for them.
    Sync {
        desired: Box<DesiredState>,
        waiters: Vec<Reply<ApplyReport>>,
    },
    /// Anything else, run in order. `mutates`: a later sync may not be merged into an
    /// earlier one across it (a reset between two syncs must stay between them).
    Call { job: Job, mutates: bool },
}

#[derive(Default)]
struct Queue {
    requests: VecDeque<Request>,
    /// The handle is gone or shutting down: finish what is queued, then end.
    closing: bool,
    /// The thread has ended: answer new requests with `Stopped` at once.
    stopped: bool,
}

#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Nothing panics while holding the lock (the dataplane runs without it), so a
        // poisoned lock still holds a consistent queue.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A dataplane owned by a thread of its own, driven from async code without blocking it.
///
/// - [`sync`](Self::sync) hands over a desired state; the thread keeps the state it synced
///   last and calls [`Dataplane::sync`] with it, so each sync is incremental unless the
///   dataplane needs a full one. **Coalescing:** when several states are queued before the
///   thread gets to them (it is busy with an earlier apply), only the newest is applied, once,
///   and every waiter of the states it replaced gets that apply's result. A state is queued
///   when `sync` is called, not when its future is first polled.
/// - [`apply_changes`](Self::apply_changes) applies a [`ChangeSet`] relative to the state
///   the thread holds, and keeps that state up to date for the next `sync`'s diff.
/// - [`apply`](Self::apply) and [`apply_changes_shared`](Self::apply_changes_shared) take
///   the state shared (`Arc`) instead of owned, and keep no copy of it: for a caller that
///   keeps the state itself, so that it is held once.
/// - [`observe`](Self::observe), [`stats`](Self::stats), [`flows`](Self::flows),
///   [`capabilities`](Self::capabilities) and [`reset`](Self::reset) run on the thread in
///   the order they were asked, after any sync asked before them.
/// - **Maintenance:** the thread calls [`Dataplane::maintain`] every
///   [`Dataplane::maintenance_interval`] (when it is `Some`), between requests, and
///   publishes each result on [`maintenance`](Self::maintenance).
/// - **Shutdown:** [`shutdown`](Self::shutdown) lets the thread answer what is queued, drop
///   the dataplane and end, and resolves then. Dropping the handle does the same without
///   waiting. Dropping a dataplane leaves the kernel programmed (call
///   [`reset`](Self::reset) first to remove everything).
///
/// The handle is `Send + Sync`: share it between tasks in an `Arc`. The futures are `Send`
/// and `'static`, and need no particular runtime.
pub struct AsyncDataplane {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    ended: Option<oneshot::Receiver<()>>,
    maintenance: watch::Receiver<MaintenanceResult>,
}

impl fmt::Debug for AsyncDataplane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let q = self.shared.lock();
        f.debug_struct("AsyncDataplane")
            .field("queued", &q.requests.len())
            .field("closing", &q.closing)
            .field("stopped", &q.stopped)
            .finish_non_exhaustive()
    }
}

impl AsyncDataplane {
    /// Moves `dataplane` to a new thread (named `dataplane`). Fails only when the operating
    /// system cannot start a thread.
    pub fn new(dataplane: BoxDataplane) -> std::io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let (ended_tx, ended) = oneshot::channel();
        let (maintenance_tx, maintenance) = watch::channel(None);
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("dataplane".to_owned())
            .spawn(move || {
                // Declared first, dropped last: after the dataplane, also when it panics.
                let _exit = Exit {
                    shared: &thread_shared,
                    _ended: ended_tx,
                };
                let mut worker = Worker {
                    dataplane,
                    previous: None,
                };
                run(&mut worker, &thread_shared, &maintenance_tx);
            })?;
        Ok(Self {
            shared,
            thread: Some(thread),
            ended: Some(ended),
            maintenance,
        })
    }

    /// Moves the dataplane to `desired` (see the coalescing rule above). On an error the
    /// thread keeps the state synced before; after a kernel failure the dataplane makes the
    /// next sync full, after a refusal nothing changed.
    pub fn sync(
        &self,
        desired: DesiredState,
    ) -> impl Future<Output = Result<ApplyReport, AsyncError>> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        {
            let mut q = self.shared.lock();
            if !q.stopped {
                merge_sync(&mut q.requests, desired, tx);
                self.shared.wake.notify_one();
            }
            // Stopped: `tx` is dropped here and the future answers `Stopped`.
        }
        answer(rx)
    }

    /// Applies `changes` to the state synced last, without handing over (or diffing) a
    /// whole state: for a caller that knows what changed (`dataplane_kube`'s
    /// `Cluster::translate_changes`), in proportion to the change instead of to the state.
    ///
    /// `changes` must be relative to the state the thread holds: the state of the last
    /// successful [`sync`](Self::sync) or `apply_changes` asked before this one. On the thread:
    /// [`Dataplane::apply_changes`]; when the dataplane answers
    /// [`Error::FullSyncRequired`], the whole state (the held one with `changes` applied) is
    /// [applied](Dataplane::apply), as [`Dataplane::sync`] does. On success the held state
    /// becomes the held one with `changes` applied ([`ChangeSet::apply_to`]), so that a later
    /// `sync` diffs against what is programmed; on an error it stays as it was (the same rule
    /// as `sync`'s).
    ///
    /// Answers [`Error::FullSyncRequired`] (changing nothing) when no state is held: before
    /// the first successful sync and after a [`reset`](Self::reset) there is nothing to
    /// apply the changes to, so sync the whole state. Never coalesced: a sync asked after it
    /// is not merged into one asked before it.
    pub fn apply_changes(
        &self,
        changes: ChangeSet,
    ) -> impl Future<Output = Result<ApplyReport, AsyncError>> + Send + 'static {
        self.call(true, move |w| {
            let Some(previous) = w.previous.as_mut() else {
                return Err(AsyncError::from(Error::FullSyncRequired));
            };
            match w.dataplane.apply_changes(&changes) {
                Ok(report) => {
                    changes.apply_to(previous);
                    Ok(report)
                }
                Err(Error::FullSyncRequired) => {
                    let mut desired = previous.clone();
                    changes.apply_to(&mut desired);
                    let report = w.dataplane.apply(&desired)?;
                    *previous = desired;
                    Ok(report)
                }
                Err(e) => Err(e.into()),
            }
        })
    }

    /// Applies the whole of `desired` ([`Dataplane::apply`]), shared with the caller rather
    /// than copied, and **keeps no state**: the thread drops its reference before answering
    /// (so the caller's `Arc` is its only one again, and `Arc::make_mut` on it copies
    /// nothing) and forgets the state it held, so that a later [`sync`](Self::sync) is a full
    /// apply and a later [`apply_changes`](Self::apply_changes) answers
    /// [`Error::FullSyncRequired`]; follow it with [`apply_changes_shared`](Self::apply_changes_shared).
    /// For a caller that keeps the state itself (the node agent's store), so that a big
    /// state is held once, not twice. Never coalesced.
    pub fn apply(
        &self,
        desired: Arc<DesiredState>,
    ) -> impl Future<Output = Result<ApplyReport, AsyncError>> + Send + 'static {
        self.call(true, move |w| {
            w.previous = None;
            let result = w.dataplane.apply(&desired).map_err(AsyncError::from);
            drop(desired);
            result
        })
    }

    /// Applies `changes` ([`Dataplane::apply_changes`]) relative to what the dataplane
    /// programmed last; when the dataplane answers [`Error::FullSyncRequired`], applies the
    /// whole of `desired`, which must be the state with `changes` applied (the caller's, shared,
    /// not copied). Like [`apply`](Self::apply) it keeps no state: the reference to `desired`
    /// is dropped before answering, and the held state is forgotten. Never coalesced.
    pub fn apply_changes_shared(
        &self,
        changes: ChangeSet,
        desired: Arc<DesiredState>,
    ) -> impl Future<Output = Result<ApplyReport, AsyncError>> + Send + 'static {
        self.call(true, move |w| {
            w.previous = None;
            let result = match w.dataplane.apply_changes(&changes) {
                Err(Error::FullSyncRequired) => w.dataplane.apply(&desired),
                other => other,
            }
            .map_err(AsyncError::from);
            drop((changes, desired));
            result
        })
    }

    /// What is programmed, read back from the kernel ([`Dataplane::observe`]).
    pub fn observe(
        &self,
    ) -> impl Future<Output = Result<ObservedState, AsyncError>> + Send + 'static {
        self.call(false, |w| w.dataplane.observe().map_err(AsyncError::from))
    }

    /// The counters ([`Dataplane::stats`]).
    pub fn stats(&self) -> impl Future<Output = Result<Stats, AsyncError>> + Send + 'static {
        self.call(false, |w| w.dataplane.stats().map_err(AsyncError::from))
    }

    /// The tracked service connections ([`Dataplane::flows`]).
    pub fn flows(&self) -> impl Future<Output = Result<Vec<Flow>, AsyncError>> + Send + 'static {
        self.call(false, |w| w.dataplane.flows().map_err(AsyncError::from))
    }

    /// What the dataplane can program ([`Dataplane::capabilities`]).
    pub fn capabilities(
        &self,
    ) -> impl Future<Output = Result<Capabilities, AsyncError>> + Send + 'static {
        self.call(false, |w| Ok(w.dataplane.capabilities()))
    }

    /// Removes everything the dataplane installed ([`Dataplane::reset`]); the next sync is
    /// a full apply.
    pub fn reset(&self) -> impl Future<Output = Result<(), AsyncError>> + Send + 'static {
        self.call(true, |w| {
            w.previous = None;
            w.dataplane.reset().map_err(AsyncError::from)
        })
    }

    /// The result of the latest maintenance run, updated after each run (`changed()` or
    /// `wait_for` on the receiver wait for the next). Stays `None` for a dataplane that
    /// needs no maintenance.
    pub fn maintenance(&self) -> watch::Receiver<MaintenanceResult> {
        self.maintenance.clone()
    }

    /// Ends the thread: what is queued is still answered, then the dataplane is dropped on
    /// its thread, and the future resolves once the thread has ended. It answers
    /// [`AsyncError::Stopped`] when the thread had ended by a panic. The thread is told to
    /// end when this is called, not when the future is polled.
    pub fn shutdown(mut self) -> impl Future<Output = Result<(), AsyncError>> + Send + 'static {
        self.close();
        let ended = self.ended.take();
        let thread = self.thread.take();
        async move {
            if let Some(ended) = ended {
                // Resolves (with an error: the sender is dropped, never used) when the
                // thread's last value is dropped, just before it returns.
                let _ = ended.await;
            }
            match thread.map(JoinHandle::join) {
                Some(Err(_panic)) => Err(AsyncError::Stopped),
                _ => Ok(()),
            }
        }
    }

    fn call<T: Send + 'static>(
        &self,
        mutates: bool,
        f: impl FnOnce(&mut Worker) -> Result<T, AsyncError> + Send + 'static,
    ) -> impl Future<Output = Result<T, AsyncError>> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        {
            let mut q = self.shared.lock();
            if !q.stopped {
                q.requests.push_back(Request::Call {
                    job: Box::new(move |w| {
                        // The caller may have stopped waiting: nobody to tell then.
                        let _ = tx.send(f(w));
                    }),
                    mutates,
                });
                self.shared.wake.notify_one();
            }
        }
        answer(rx)
    }

    fn close(&self) {
        self.shared.lock().closing = true;
        self.shared.wake.notify_one();
    }
}

impl Drop for AsyncDataplane {
    /// Tells the thread to end once the queue is empty, without waiting for it (waiting
    /// would block an async runtime for as long as a queued apply takes).
    fn drop(&mut self) {
        self.close();
    }
}

/// Queues a sync: merged into the last queued sync unless a mutating call was asked after
/// it, else appended.
fn merge_sync(requests: &mut VecDeque<Request>, desired: DesiredState, reply: Reply<ApplyReport>) {
    for request in requests.iter_mut().rev() {
        match request {
            Request::Sync {
                desired: queued,
                waiters,
            } => {
                **queued = desired;
                waiters.push(reply);
                return;
            }
            Request::Call { mutates: true, .. } => break,
            Request::Call { mutates: false, .. } => {}
        }
    }
    requests.push_back(Request::Sync {
        desired: Box::new(desired),
        waiters: vec![reply],
    });
}

async fn answer<T>(rx: oneshot::Receiver<Result<T, AsyncError>>) -> Result<T, AsyncError> {
    // A dropped sender means the thread is gone (it panicked) before answering.
    rx.await.unwrap_or(Err(AsyncError::Stopped))
}

/// Marks the queue stopped when the thread ends, however it ends, and drops what is still
/// queued so that its waiters get `Stopped` instead of waiting forever.
struct Exit<'a> {
    shared: &'a Shared,
    _ended: oneshot::Sender<()>,
}

impl Drop for Exit<'_> {
    fn drop(&mut self) {
        let mut q = self.shared.lock();
        q.stopped = true;
        q.requests.clear();
    }
}

enum Work {
    Maintain,
    Request(Request),
}

fn run(worker: &mut Worker, shared: &Shared, maintenance: &watch::Sender<MaintenanceResult>) {
    let mut next_maintenance = None;
    let mut maintained_last = false;
    loop {
        // The interval may change with the state (a dataplane may need maintenance only
        // once something is programmed): ask after every piece of work.
        match worker.dataplane.maintenance_interval() {
            None => next_maintenance = None,
            Some(interval) => {
                // At least a millisecond apart: a zero interval would be a busy loop. An
                // interval that shrank (the eBPF dataplane's, once it announces L2 addresses
                // whose liveness maintain() keeps) brings the next run forward.
                let interval = interval.max(MIN_MAINTENANCE_INTERVAL);
                let at = Instant::now() + interval;
                next_maintenance = Some(next_maintenance.map_or(at, |next: Instant| next.min(at)));
            }
        }
        let work = {
            let mut q = shared.lock();
            loop {
                let now = Instant::now();
                // Maintenance first when due, so that a steady stream of syncs cannot
                // starve it; but not twice in a row while a request waits, so that a short
                // interval cannot starve the requests either.
                let due = next_maintenance.is_some_and(|at| now >= at);
                if due && (!maintained_last || q.requests.is_empty()) {
                    break Work::Maintain;
                }
                if let Some(request) = q.requests.pop_front() {
                    break Work::Request(request);
                }
                if q.closing {
                    return;
                }
                q = match next_maintenance {
                    Some(at) => {
                        shared
                            .wake
                            .wait_timeout(q, at - now)
                            .unwrap_or_else(PoisonError::into_inner)
                            .0
                    }
                    None => shared.wake.wait(q).unwrap_or_else(PoisonError::into_inner),
                };
            }
        };
        maintained_last = matches!(work, Work::Maintain);
        match work {
            Work::Maintain => {
                let result = worker
                    .dataplane
                    .maintain(crate::monotonic_now())
                    .map_err(AsyncError::from);
                if let Err(e) = &result {
                    // Also for an embedder that does not watch `maintenance()`: expired
                    // connections that stay keep their old translation.
                    tracing::warn!(error = %e, "dataplane maintenance failed");
                }
                maintenance.send_replace(Some(result));
                next_maintenance = None;
            }
            Work::Request(Request::Sync { desired, waiters }) => {
                let result = worker
                    .dataplane
                    .sync(worker.previous.as_ref(), &desired)
                    .map_err(AsyncError::from);
                if result.is_ok() {
                    worker.previous = Some(*desired);
                }
                for waiter in waiters {
                    let _ = waiter.send(result.clone());
                }
            }
            Work::Request(Request::Call { job, .. }) => job(worker),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::mpsc;
    use std::thread::ThreadId;

    use dataplane_core::{synthetic, ChangeSet, Dataplane, ObservedFrontend, Protocol};

    use super::*;

    /// A dataplane that records what it is asked to do. Its first `apply` can wait at a gate
    /// (after saying it got there), so that a test can queue requests behind it.
    #[derive(Default)]
    struct Double {
        log: Arc<Mutex<Vec<String>>>,
        entered: Option<mpsc::Sender<()>>,
        gate: Option<mpsc::Receiver<()>>,
        programmed: Option<DesiredState>,
        /// Most services it holds; more is `CapacityExceeded`.
        capacity: Option<usize>,
        interval: Option<Duration>,
        /// The interval it asks for once it has applied a state.
        interval_after_apply: Option<Duration>,
        maintained: u64,
        panic_on_apply: bool,
        _dropped: Option<DropSignal>,
    }

    impl Double {
        fn record(&self, what: String) {
            self.log.lock().unwrap().push(what);
        }

        fn check_capacity(&self, services: usize) -> Result<(), Error> {
            match self.capacity {
                Some(capacity) if services > capacity => {
                    self.record(format!("refused {services}"));
                    Err(Error::CapacityExceeded {
                        what: "services".to_owned(),
                        needed: services,
                        capacity,
                    })
                }
                _ => Ok(()),
            }
        }
    }

    impl Dataplane for Double {
        fn capabilities(&self) -> Capabilities {
            Capabilities {
                dataplane: "double".to_owned(),
                ..Capabilities::default()
            }
        }

        fn apply(&mut self, desired: &DesiredState) -> Result<ApplyReport, Error> {
            if let Some(entered) = self.entered.take() {
                entered.send(()).unwrap();
            }
            if let Some(gate) = self.gate.take() {
                gate.recv().unwrap();
            }
            assert!(!self.panic_on_apply, "the double was told to panic");
            self.check_capacity(desired.services.len())?;
            self.record(format!("apply {}", desired.services.len()));
            self.programmed = Some(desired.clone());
            if self.interval_after_apply.is_some() {
                self.interval = self.interval_after_apply;
            }
            Ok(ApplyReport {
                full_sync: true,
                services_changed: desired.services.len(),
                ..ApplyReport::default()
            })
        }

        fn apply_changes(&mut self, changes: &ChangeSet) -> Result<ApplyReport, Error> {
            let Some(mut state) = self.programmed.clone() else {
                return Err(Error::FullSyncRequired);
            };
            let mut report = ApplyReport::default();
            for (name, change) in &changes.services {
                state.services.retain(|s| &s.name != name);
                match &change.current {
                    Some(s) => {
                        state.services.push(s.clone());
                        report.services_changed += 1;
                    }
                    None => report.services_removed += 1,
                }
            }
            self.check_capacity(state.services.len())?;
            self.record(format!("changes {}", changes.services.len()));
            self.programmed = Some(state);
            Ok(report)
        }

        fn observe(&self) -> Result<ObservedState, Error> {
            let services = self.programmed.iter().flat_map(|s| &s.services);
            Ok(ObservedState {
                frontends: services
                    .map(|s| ObservedFrontend {
                        address: SocketAddr::new(s.cluster_ips[0], s.ports[0].port),
                        protocol: Protocol::Tcp,
                        backends: std::collections::BTreeSet::new(),
                    })
                    .collect(),
            })
        }

        fn flows(&self) -> Result<Vec<Flow>, Error> {
            Ok(Vec::new())
        }

        fn stats(&self) -> Result<Stats, Error> {
            Ok(Stats {
                packets_translated: 7,
                ..Stats::default()
            })
        }

        fn reset(&mut self) -> Result<(), Error> {
            self.record("reset".to_owned());
            self.programmed = None;
            Ok(())
        }

        fn maintain(&mut self, _now: Duration) -> Result<MaintenanceReport, Error> {
            self.maintained += 1;
            Ok(MaintenanceReport {
                flows_expired: self.maintained,
                ..MaintenanceReport::default()
            })
        }

        fn maintenance_interval(&self) -> Option<Duration> {
            self.interval
        }
    }

    /// Removes a test's pin directory however the test ends (a dropped eBPF dataplane
    /// detaches its programs but keeps its pins).
    struct RemoveDir(std::path::PathBuf);

    impl Drop for RemoveDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Says on which thread it was dropped (with the double that holds it).
    struct DropSignal(mpsc::Sender<ThreadId>);

    impl Drop for DropSignal {
        fn drop(&mut self) {
            let _ = self.0.send(std::thread::current().id());
        }
    }

    /// A double whose first apply waits at the returned gate once it has said so on the
    /// returned receiver.
    fn gated(double: Double) -> (Double, mpsc::Receiver<()>, mpsc::Sender<()>) {
        let (entered_tx, entered) = mpsc::channel();
        let (gate, gate_rx) = mpsc::channel();
        let double = Double {
            entered: Some(entered_tx),
            gate: Some(gate_rx),
            ..double
        };
        (double, entered, gate)
    }

    fn state(services: usize) -> DesiredState {
        synthetic::state(services, 1)
    }

    /// The names of `state`'s services, sorted.
    fn names(state: &DesiredState) -> Vec<String> {
        let mut names: Vec<String> = state.services.iter().map(|s| s.name.to_string()).collect();
        names.sort();
        names
    }

    fn log_of(log: &Log) -> Vec<String> {
        log.lock().unwrap().clone()
    }

    type Log = Arc<Mutex<Vec<String>>>;

    /// A handle whose thread is inside its first apply (of `state(1)`, answered by the
    /// returned future), held at the returned gate: whatever is asked now queues up.
    fn held_in_first_apply() -> (
        AsyncDataplane,
        Log,
        impl Future<Output = Result<ApplyReport, AsyncError>>,
        mpsc::Sender<()>,
    ) {
        let log = Log::default();
        let (double, entered, gate) = gated(Double {
            log: Arc::clone(&log),
            ..Double::default()
        });
        let dp = AsyncDataplane::new(Box::new(double)).unwrap();
        let first = dp.sync(state(1));
        entered.recv().unwrap();
        (dp, log, first, gate)
    }

    #[tokio::test]
    async fn queued_syncs_coalesce_into_the_newest_and_every_waiter_gets_its_result() {
        // The thread is inside the first apply, held at the gate: these two queue up.
        let (dp, log, first, gate) = held_in_first_apply();
        let second = dp.sync(state(2));
        let third = dp.sync(state(3));
        gate.send(()).unwrap();
        let first = first.await.unwrap();
        let second = second.await.unwrap();
        let third = third.await.unwrap();
        // Two applies: the first in full, then the newest incrementally from it (two
        // services added); the state with two services was never applied.
        assert_eq!(log_of(&log), ["apply 1", "changes 2"]);
        assert!(first.full_sync);
        assert_eq!(first.services_changed, 1);
        assert!(!third.full_sync);
        assert_eq!(third.services_changed, 2);
        assert_eq!(
            second, third,
            "a coalesced waiter gets the apply that served it"
        );
        assert_eq!(dp.observe().await.unwrap().frontends.len(), 3);
        dp.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn a_reset_between_queued_syncs_keeps_them_apart() {
        let (dp, log, first, gate) = held_in_first_apply();
        let second = dp.sync(state(2));
        let reset = dp.reset();
        let third = dp.sync(state(3));
        let fourth = dp.sync(state(4));
        gate.send(()).unwrap();
        first.await.unwrap();
        assert_eq!(second.await.unwrap().services_changed, 1);
        reset.await.unwrap();
        let third = third.await.unwrap();
        assert_eq!(fourth.await.unwrap(), third);
        // After the reset nothing is programmed: the next sync is full.
        assert!(third.full_sync);
        assert_eq!(log_of(&log), ["apply 1", "changes 1", "reset", "apply 4"]);
        dp.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn errors_reach_the_caller_and_the_previous_state_is_kept() {
        let log = Arc::default();
        let dp = AsyncDataplane::new(Box::new(Double {
            log: Arc::clone(&log),
            capacity: Some(2),
            ..Double::default()
        }))
        .unwrap();
        dp.sync(state(1)).await.unwrap();
        let err = dp.sync(state(3)).await.unwrap_err();
        assert!(
            matches!(
                err.dataplane_error(),
                Some(Error::CapacityExceeded {
                    needed: 3,
                    capacity: 2,
                    ..
                })
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "services is full: 3 entries needed, capacity 2"
        );
        // The failed state did not become `previous`: the next sync diffs from the one
        // programmed (one service added, not one removed from three).
        let report = dp.sync(state(2)).await.unwrap();
        assert_eq!((report.services_changed, report.services_removed), (1, 0));
        assert_eq!(log_of(&log), ["apply 1", "refused 3", "changes 1"]);
        dp.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn read_only_calls_answer_from_the_dataplane() {
        let dp = AsyncDataplane::new(Box::new(Double::default())).unwrap();
        assert_eq!(dp.capabilities().await.unwrap().dataplane, "double");
        assert!(dp.observe().await.unwrap().frontends.is_empty());
        dp.sync(state(2)).await.unwrap();
        let observed = dp.observe().await.unwrap();
        assert_eq!(observed.frontends.len(), 2);
        assert_eq!(dp.stats().await.unwrap().packets_translated, 7);
        assert!(dp.flows().await.unwrap().is_empty());
        dp.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn maintenance_runs_on_the_dataplanes_interval_and_is_published() {
        let dp = AsyncDataplane::new(Box::new(Double {
            interval: Some(Duration::from_millis(1)),
            ..Double::default()
        }))
        .unwrap();
        let mut runs = dp.maintenance();
        // Runs repeat: the third one reports three expiries (the double counts its runs).
        let latest = runs
            .wait_for(|r| matches!(r, Some(Ok(report)) if report.flows_expired >= 3))
            .await
            .unwrap()
            .clone();
        assert!(latest.unwrap().unwrap().flows_expired >= 3);
        // Syncs are still served between maintenance runs.
        dp.sync(state(1)).await.unwrap();
        dp.shutdown().await.unwrap();
    }

    /// An interval that shrinks after a sync takes effect at once, not after the longer one
    /// the thread was waiting out.
    #[tokio::test]
    async fn a_shorter_interval_brings_maintenance_forward() {
        let dp = AsyncDataplane::new(Box::new(Double {
            interval: Some(Duration::from_hours(1)),
            interval_after_apply: Some(Duration::from_millis(1)),
            ..Double::default()
        }))
        .unwrap();
        let runs = dp.maintenance();
        dp.sync(state(1)).await.unwrap();
        // Waited for by polling (this crate's tokio has no timer): an hour without the fix.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while runs.borrow().is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            runs.borrow().is_some(),
            "maintenance ran on the interval the dataplane asked for after the sync"
        );
        dp.shutdown().await.unwrap();
    }

    /// A dataplane that asks for maintenance all the time still gets its syncs served
    /// (maintenance never runs twice in a row while a request waits).
    #[tokio::test]
    async fn a_zero_maintenance_interval_does_not_starve_syncs() {
        let dp = AsyncDataplane::new(Box::new(Double {
            interval: Some(Duration::ZERO),
            ..Double::default()
        }))
        .unwrap();
        for n in 1..=5 {
            dp.sync(state(n)).await.unwrap();
        }
        dp.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn shutdown_answers_what_is_queued_and_drops_the_dataplane_on_its_thread() {
        let (dropped_tx, dropped) = mpsc::channel();
        let (double, entered, gate) = gated(Double {
            _dropped: Some(DropSignal(dropped_tx)),
            ..Double::default()
        });
        let dp = AsyncDataplane::new(Box::new(double)).unwrap();
        let first = dp.sync(state(1));
        entered.recv().unwrap();
        let queued = dp.capabilities();
        let shutdown = dp.shutdown();
        gate.send(()).unwrap();
        first.await.unwrap();
        assert_eq!(queued.await.unwrap().dataplane, "double");
        shutdown.await.unwrap();
        // By the time shutdown resolves, the dataplane has been dropped, on its own thread.
        let on = dropped
            .try_recv()
            .expect("dropped before shutdown resolved");
        assert_ne!(on, std::thread::current().id());
    }

    #[tokio::test]
    async fn dropping_the_handle_ends_the_thread() {
        let (dropped_tx, dropped) = mpsc::channel();
        let dp = AsyncDataplane::new(Box::new(Double {
            _dropped: Some(DropSignal(dropped_tx)),
            ..Double::default()
        }))
        .unwrap();
        let pending = dp.sync(state(1));
        drop(dp);
        // What was queued is still answered, then the thread drops the dataplane.
        assert!(pending.await.unwrap().full_sync);
        let on = dropped.recv().expect("the thread drops the dataplane");
        assert_ne!(on, std::thread::current().id());
    }

    #[tokio::test]
    async fn a_panicking_dataplane_answers_stopped_instead_of_hanging() {
        let dp = AsyncDataplane::new(Box::new(Double {
            panic_on_apply: true,
            ..Double::default()
        }))
        .unwrap();
        let err = dp.sync(state(1)).await.unwrap_err();
        assert!(matches!(err, AsyncError::Stopped), "{err:?}");
        assert!(matches!(dp.capabilities().await, Err(AsyncError::Stopped)));
        assert!(matches!(dp.shutdown().await, Err(AsyncError::Stopped)));
    }

    /// The handle driving a real dataplane (the one `auto` picks) on a lab node: traffic
    /// to a ClusterIP follows a backend change synced through it. Root.
    #[cfg(any(feature = "ebpf", feature = "nft"))]
    #[tokio::test]
    async fn traffic_follows_a_backend_change_synced_through_the_handle() {
        use dataplane_core::{Backend, ObjectName, Service, ServicePort};
        use dataplane_testkit::{probe, Lab, LabSpec, ProbeOutcome, SERVER_PORT};

        let name = "traffic_follows_a_backend_change_synced_through_the_handle";
        if !dataplane_testkit::require_root(name) {
            return;
        }
        // pod 0 is the client, pods 1 and 2 the backends.
        let lab = Lab::new(LabSpec {
            nodes: 1,
            pods_per_node: 3,
            external_clients: 0,
            ipv6: false,
        })
        .unwrap();
        #[allow(unused_variables)] // the pin directory is used with the `ebpf` feature only
        let pins = RemoveDir(format!("/sys/fs/bpf/dp-handle-test-{}", std::process::id()).into());
        #[allow(unused_mut)] // the pin directory exists with the `ebpf` feature only
        let mut options = crate::Options::in_netns(lab.node(0).netns.path());
        #[cfg(feature = "ebpf")]
        {
            options.ebpf.pin_dir.clone_from(&pins.0);
        }
        let opened = crate::open(crate::Selection::Auto, &options).unwrap();
        let kind = opened.kind;
        let dp = AsyncDataplane::new(opened.dataplane).unwrap();
        let with_backend = |pod: usize| {
            let mut web = Service::new(ObjectName::new("default", "web"));
            web.cluster_ips = vec!["10.96.0.10".parse().unwrap()];
            web.ports = vec![ServicePort {
                name: "http".to_owned(),
                protocol: Protocol::Tcp,
                port: 80,
                target_port: SERVER_PORT,
                node_port: None,
            }];
            web.backends = vec![Backend::new(lab.pod(pod).addresses[0])];
            let mut state = lab.desired_state(0);
            state.services.push(web);
            state
        };
        let answered_by = || {
            let frontend = "10.96.0.10:80".parse().unwrap();
            match probe(
                &lab.pod(0).netns,
                frontend,
                Protocol::Tcp,
                Duration::from_secs(2),
            ) {
                Ok(ProbeOutcome::Answered { backend, .. }) => backend,
                other => panic!("{kind}: the ClusterIP did not answer: {other:?}"),
            }
        };

        let first = dp.sync(with_backend(1)).await.unwrap();
        assert!(first.full_sync, "{kind}: {first:?}");
        assert_eq!(answered_by(), lab.pod(1).name, "{kind}");
        let second = dp.sync(with_backend(2)).await.unwrap();
        assert!(!second.full_sync, "{kind}: {second:?}");
        assert_eq!(answered_by(), lab.pod(2).name, "{kind}");
        let observed = dp.observe().await.unwrap();
        assert!(
            observed
                .frontends
                .iter()
                .any(|f| f.backends.contains(&std::net::SocketAddr::new(
                    lab.pod(2).addresses[0],
                    SERVER_PORT
                ))),
            "{kind}: {observed:?}"
        );
        dp.reset().await.unwrap();
        dp.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn apply_changes_programs_the_changes_and_keeps_the_held_state_for_later_syncs() {
        use dataplane_core::{diff, fake::Fault, FakeDataplane};
        let fake = FakeDataplane::new();
        let dp = AsyncDataplane::new(Box::new(fake.clone())).unwrap();
        // Nothing held yet: nothing to apply the changes to.
        let refused = dp.apply_changes(diff(&state(1), &state(2))).await;
        assert!(matches!(
            refused.unwrap_err().dataplane_error(),
            Some(Error::FullSyncRequired)
        ));
        assert_eq!(fake.calls().apply_changes + fake.calls().applies, 0);

        dp.sync(state(2)).await.unwrap();
        let report = dp.apply_changes(diff(&state(2), &state(3))).await.unwrap();
        assert!(!report.full_sync);
        assert_eq!(report.services_changed, 1);
        assert_eq!(names(&fake.applied().unwrap()), names(&state(3)));

        // A kernel failure: the held state stays state(3), and the dataplane asks for the
        // whole state next, which the handle builds from the held one and the changes.
        fake.fail_next_apply(Fault::Kernel("injected".into()));
        let failed = dp.apply_changes(diff(&state(3), &state(4))).await;
        assert!(matches!(
            failed.unwrap_err().dataplane_error(),
            Some(Error::Kernel { .. })
        ));
        let report = dp.apply_changes(diff(&state(3), &state(4))).await.unwrap();
        assert!(report.full_sync);
        assert_eq!(fake.calls().full_sync_required, 1);
        assert_eq!(names(&fake.applied().unwrap()), names(&state(4)));

        // The held state is what is programmed: a sync of it changes nothing, a sync of
        // another state changes only the difference.
        let same = dp.sync(state(4)).await.unwrap();
        assert!(!same.full_sync);
        assert_eq!((same.services_changed, same.services_removed), (0, 0));
        let fewer = dp.sync(state(1)).await.unwrap();
        assert_eq!((fewer.services_changed, fewer.services_removed), (0, 3));
        dp.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn shared_applies_keep_no_state_and_hand_the_state_back_before_answering() {
        use dataplane_core::{diff, fake::Fault, FakeDataplane};
        let fake = FakeDataplane::new();
        let dp = AsyncDataplane::new(Box::new(fake.clone())).unwrap();
        let mut held = Arc::new(state(2));
        let report = dp.apply(Arc::clone(&held)).await.unwrap();
        assert!(report.full_sync);
        assert_eq!(names(&fake.applied().unwrap()), names(&state(2)));
        // The thread's reference is gone once the future answered: the caller may change
        // its state in place (no copy).
        assert_eq!(Arc::strong_count(&held), 1);
        assert!(Arc::get_mut(&mut held).is_some());

        // Changes go to the dataplane as changes...
        let next = Arc::new(state(3));
        let report = dp
            .apply_changes_shared(diff(&state(2), &state(3)), Arc::clone(&next))
            .await
            .unwrap();
        assert!(!report.full_sync);
        assert_eq!(report.services_changed, 1);
        assert_eq!(names(&fake.applied().unwrap()), names(&state(3)));
        assert_eq!(Arc::strong_count(&next), 1);

        // ...and when it asks for the whole state (after a kernel failure), the shared one
        // is applied.
        fake.fail_next_apply(Fault::Kernel("injected".into()));
        let failed = dp
            .apply_changes_shared(diff(&state(3), &state(4)), Arc::new(state(4)))
            .await;
        assert!(matches!(
            failed.unwrap_err().dataplane_error(),
            Some(Error::Kernel { .. })
        ));
        let last = Arc::new(state(4));
        let report = dp
            .apply_changes_shared(diff(&state(3), &state(4)), Arc::clone(&last))
            .await
            .unwrap();
        assert!(report.full_sync);
        assert_eq!(names(&fake.applied().unwrap()), names(&state(4)));
        assert_eq!(Arc::strong_count(&last), 1);

        // The handle holds no state: it has none to apply plain changes to.
        let refused = dp.apply_changes(diff(&state(4), &state(5))).await;
        assert!(matches!(
            refused.unwrap_err().dataplane_error(),
            Some(Error::FullSyncRequired)
        ));
        dp.shutdown().await.unwrap();
    }
}
