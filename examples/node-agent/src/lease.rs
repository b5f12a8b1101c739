//! One `coordination.k8s.io/v1` Lease per Service: who announces it ([`Election`]), over a
//! [`LeaseApi`] (the API server through kube-rs, or a fake in tests).
//!
//! The algorithm is client-go's leader election (`tools/leaderelection/leaderelection.go`,
//! `tryAcquireOrRenew`), the one Cilium's `pkg/l2announcer` runs per Service, written for one
//! step at a time over a clock passed in (smoltcp's `poll(timestamp)`), so that a test drives
//! it without sleeping:
//!
//! ```text
//!  GET lease ──404──▶ POST {holder: me, renewTime: now}      ──201─▶ held     ──409─▶ lost
//!     │
//!     ├─ held by another, and its record changed less than leaseDurationSeconds ago
//!     │  (on this node's clock, since this node saw it change) ─────────────▶ not ours
//!     └─ ours, or expired, or released (no holder)
//!           ▶ PUT {holder: me, renewTime: now, resourceVersion: as read}  ──200─▶ held
//!                                                                          ──409─▶ lost
//! ```
//!
//! - **Expiry** is judged as client-go judges it (`observedTime`): a lease held by another
//!   node expires when its record has not changed for `leaseDurationSeconds` since *this*
//!   node saw it change, measured on this node's monotonic clock. The holder's `renewTime` is
//!   written for humans and not compared with this node's wall clock: a clock ahead by more
//!   than the lease duration would take a live lease, and two nodes would announce. The cost:
//!   an agent that starts next to a lease left long ago waits one lease duration before it
//!   takes it.
//! - **Optimistic concurrency**: a PUT carries the `resourceVersion` read; the API server
//!   answers 409 Conflict when another node wrote in between, and 409 `AlreadyExists` to a
//!   second POST. Either means another node won: this node gives the lease up at once.
//! - **Renewal**: the holder renews every retry period with a PUT of the record it wrote last
//!   (client-go's fast path; on a 409 the next step reads the lease again). It holds the lease
//!   only until `renewDeadline` after the start of its last successful renewal
//!   ([`Election::holds`]): a holder that cannot renew (the API server is unreachable, a
//!   request hangs) stops announcing at the deadline, `leaseDuration - renewDeadline` before
//!   another node may take over, so that two nodes never announce at once — better silent
//!   than two announcers.
//! - **Release** ([`Election::release`]): client-go's `ReleaseOnCancel`: the holder writes the
//!   lease without a holder and with a duration of 1 s, so that another node takes over at its
//!   next step instead of a lease duration later. Cilium does not release (its leases
//!   expire); the agent releases, but only after its datapath stopped announcing (see
//!   [`crate::l2`]).

use std::future::Future;
use std::time::{Duration, Instant, SystemTime};

use dataplane_kube::k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff,
};
use kube::api::PostParams;

/// The timing of the leases (client-go's `LeaderElectionConfig`, Cilium's
/// `--l2-announcements-lease-duration`, `-renew-deadline`, `-retry-period`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    /// How long a lease holds without renewal (`leaseDurationSeconds`): whole seconds.
    pub duration: Duration,
    /// How long the holder keeps announcing after the start of its last successful renewal.
    pub renew_deadline: Duration,
    /// How often a node tries to acquire or renew.
    pub retry_period: Duration,
}

impl Default for LeaseTiming {
    /// Cilium's and client-go's usual 15 s / 5 s / 2 s.
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(5),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// client-go's `JitterFactor`: the renew deadline must leave room for a jittered retry.
pub const JITTER_FACTOR: f64 = 1.2;

impl LeaseTiming {
    /// Refuses a timing that cannot work, with client-go's rules (`NewLeaderElector`): the
    /// duration longer than the renew deadline (else another node takes the lease while the
    /// holder still announces), the renew deadline longer than `JITTER_FACTOR` retry periods
    /// (else the holder gives up between two tries), a positive retry period; and a duration
    /// of whole seconds (`leaseDurationSeconds` is an integer), at most a day.
    ///
    /// # Errors
    /// The rule broken, naming the flags.
    pub fn validate(&self) -> Result<(), String> {
        let secs = |d: Duration| format!("{}s", d.as_secs_f64());
        if self.retry_period.is_zero() {
            return Err("--l2-lease-retry-period must be greater than 0".to_owned());
        }
        if self.duration.subsec_nanos() != 0 || self.duration.is_zero() {
            return Err(format!(
                "--l2-lease-duration {}: must be a whole number of seconds, at least 1 \
                 (leaseDurationSeconds)",
                secs(self.duration)
            ));
        }
        if self.duration > Duration::from_hours(24) {
            return Err(format!(
                "--l2-lease-duration {}: at most 24h",
                secs(self.duration)
            ));
        }
        if self.renew_deadline >= self.duration {
            return Err(format!(
                "--l2-lease-renew-deadline {} must be shorter than --l2-lease-duration {}: \
                 another node may take a lease once it expires, and its holder must have \
                 stopped announcing by then",
                secs(self.renew_deadline),
                secs(self.duration)
            ));
        }
        if self.renew_deadline.as_secs_f64() <= JITTER_FACTOR * self.retry_period.as_secs_f64() {
            return Err(format!(
                "--l2-lease-renew-deadline {} must be longer than {JITTER_FACTOR} x \
                 --l2-lease-retry-period {}: the holder must get to renew before its deadline",
                secs(self.renew_deadline),
                secs(self.retry_period)
            ));
        }
        Ok(())
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.duration.as_secs()).unwrap_or(i32::MAX)
    }
}

/// Why a Lease request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    /// 409: another writer came first (Conflict on an update, `AlreadyExists` on a create).
    #[error("lease {name}: conflict: another node wrote it first")]
    Conflict {
        /// The lease.
        name: String,
    },
    /// Anything else (the API server unreachable, forbidden, a timeout).
    #[error("lease {name}: {message}")]
    Failed {
        /// The lease.
        name: String,
        /// What went wrong.
        message: String,
    },
}

/// The Lease requests an [`Election`] makes, in one namespace.
pub trait LeaseApi: Send + Sync {
    /// The lease `name`, or `None` when there is none (404).
    fn get(&self, name: &str) -> impl Future<Output = Result<Option<Lease>, LeaseError>> + Send;
    /// Creates `lease`; [`LeaseError::Conflict`] when it exists.
    fn create(&self, lease: &Lease) -> impl Future<Output = Result<Lease, LeaseError>> + Send;
    /// Replaces `lease` if its `metadata.resourceVersion` is current, else
    /// [`LeaseError::Conflict`].
    fn replace(&self, lease: &Lease) -> impl Future<Output = Result<Lease, LeaseError>> + Send;
}

fn kube_error(name: &str, e: kube::Error) -> LeaseError {
    match e {
        kube::Error::Api(status) if status.code == 409 => LeaseError::Conflict {
            name: name.to_owned(),
        },
        e => LeaseError::Failed {
            name: name.to_owned(),
            message: crate::error_chain(&e),
        },
    }
}

impl LeaseApi for kube::Api<Lease> {
    async fn get(&self, name: &str) -> Result<Option<Lease>, LeaseError> {
        self.get_opt(name).await.map_err(|e| kube_error(name, e))
    }

    async fn create(&self, lease: &Lease) -> Result<Lease, LeaseError> {
        let name = lease.metadata.name.as_deref().unwrap_or_default();
        kube::Api::create(self, &PostParams::default(), lease)
            .await
            .map_err(|e| kube_error(name, e))
    }

    async fn replace(&self, lease: &Lease) -> Result<Lease, LeaseError> {
        let name = lease.metadata.name.as_deref().unwrap_or_default();
        kube::Api::replace(self, name, &PostParams::default(), lease)
            .await
            .map_err(|e| kube_error(name, e))
    }
}

/// The record last seen, and when this node saw it change.
#[derive(Debug, Clone)]
struct Observed {
    lease: Lease,
    at: Instant,
}

/// The election of one lease (one Service) as seen by this node (`identity`, its node name).
/// Each [`Election::step`] is one `tryAcquireOrRenew`; the caller runs it every retry period.
#[derive(Debug, Clone)]
pub struct Election {
    name: String,
    identity: String,
    timing: LeaseTiming,
    observed: Option<Observed>,
    /// While this node holds the lease: when its last successful write started.
    renewed: Option<Instant>,
}

/// What one step found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// This node holds the lease (acquired or renewed).
    Held,
    /// Another node holds it, and it has not expired.
    HeldBy(String),
    /// Another node wrote first (409): this node does not hold it.
    Lost,
}

impl Election {
    /// The election of lease `name` for node `identity`.
    pub fn new(name: impl Into<String>, identity: impl Into<String>, timing: LeaseTiming) -> Self {
        Self {
            name: name.into(),
            identity: identity.into(),
            timing,
            observed: None,
            renewed: None,
        }
    }

    /// The lease's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The leases' timing.
    pub fn timing(&self) -> LeaseTiming {
        self.timing
    }

    /// Whether this node holds the lease at `now`: it acquired or renewed it, lost no
    /// conflict since, and `now` is before the renew deadline of its last renewal.
    pub fn holds(&self, now: Instant) -> bool {
        self.renewed
            .is_some_and(|at| now < at + self.timing.renew_deadline)
    }

    /// When the lease stops being held unless renewed (`None`: not held).
    pub fn deadline(&self) -> Option<Instant> {
        self.renewed.map(|at| at + self.timing.renew_deadline)
    }

    /// One try to acquire or renew at `now` (`wall`: the time written into the lease).
    ///
    /// # Errors
    /// A request failed other than by a conflict: nothing is known; a holder keeps the lease
    /// until its renew deadline ([`Election::holds`]).
    pub async fn step(
        &mut self,
        api: &impl LeaseApi,
        now: Instant,
        wall: SystemTime,
    ) -> Result<Step, LeaseError> {
        // The holder's fast path: renew what it wrote last, without reading it first.
        if self.holds(now) {
            if let Some(observed) = &self.observed {
                let renewal = self.record(Some(&observed.lease), wall);
                match api.replace(&renewal).await {
                    Ok(written) => return Ok(self.won(written, now)),
                    // Someone wrote in between: read what they wrote.
                    Err(LeaseError::Conflict { .. }) => self.observed = None,
                    Err(e) => return Err(e),
                }
            }
        }
        let Some(current) = api.get(&self.name).await? else {
            return match api.create(&self.record(None, wall)).await {
                Ok(written) => Ok(self.won(written, now)),
                Err(LeaseError::Conflict { .. }) => Ok(self.lost()),
                Err(e) => Err(e),
            };
        };
        let changed = self
            .observed
            .as_ref()
            .is_none_or(|o| o.lease.spec != current.spec);
        if changed {
            self.observed = Some(Observed {
                lease: current.clone(),
                at: now,
            });
        }
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        if !holder.is_empty() && holder != self.identity {
            let seconds = u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0);
            let seen = self.observed.as_ref().map_or(now, |o| o.at);
            if now < seen + Duration::from_secs(seconds) {
                // Valid and another's: whatever this node believed, it does not hold it.
                self.renewed = None;
                return Ok(Step::HeldBy(holder));
            }
        }
        match api.replace(&self.record(Some(&current), wall)).await {
            Ok(written) => Ok(self.won(written, now)),
            Err(LeaseError::Conflict { .. }) => Ok(self.lost()),
            Err(e) => Err(e),
        }
    }

    /// Gives the lease up if this node holds it (client-go's `release`): no holder, a
    /// duration of 1 s, so that the next node's step takes it. `Ok(false)` when it did not
    /// hold it or another node wrote first.
    ///
    /// # Errors
    /// The request failed (the lease then expires by itself).
    pub async fn release(
        &mut self,
        api: &impl LeaseApi,
        wall: SystemTime,
    ) -> Result<bool, LeaseError> {
        let held = self.renewed.take().is_some();
        let Some(observed) = self.observed.take().filter(|_| held) else {
            return Ok(false);
        };
        let mut lease = self.record(Some(&observed.lease), wall);
        if let Some(spec) = &mut lease.spec {
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
        }
        match api.replace(&lease).await {
            Ok(_) => Ok(true),
            Err(LeaseError::Conflict { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn won(&mut self, written: Lease, now: Instant) -> Step {
        self.observed = Some(Observed {
            lease: written,
            at: now,
        });
        self.renewed = Some(now);
        Step::Held
    }

    fn lost(&mut self) -> Step {
        self.renewed = None;
        self.observed = None;
        Step::Lost
    }

    /// The lease as this node writes it: held by it, renewed at `wall`, over `previous`
    /// (its resourceVersion, and its acquire time and transitions when this node held it
    /// already).
    fn record(&self, previous: Option<&Lease>, wall: SystemTime) -> Lease {
        let time = Some(MicroTime(
            jiff::Timestamp::try_from(wall).unwrap_or(jiff::Timestamp::UNIX_EPOCH),
        ));
        let old = previous.and_then(|l| l.spec.clone()).unwrap_or_default();
        let ours = old.holder_identity.as_deref() == Some(self.identity.as_str());
        let transitions = old.lease_transitions.unwrap_or(0);
        Lease {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: previous.and_then(|l| l.metadata.namespace.clone()),
                resource_version: previous.and_then(|l| l.metadata.resource_version.clone()),
                labels: previous.and_then(|l| l.metadata.labels.clone()),
                annotations: previous.and_then(|l| l.metadata.annotations.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.identity.clone()),
                lease_duration_seconds: Some(self.timing.duration_seconds()),
                acquire_time: if ours { old.acquire_time } else { time.clone() },
                renew_time: time,
                lease_transitions: Some(if ours || previous.is_none() {
                    transitions
                } else {
                    transitions.saturating_add(1)
                }),
                ..LeaseSpec::default()
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    //! The election on a fake clock (instants passed in) over an in-memory Lease store with
    //! the API server's resourceVersion checks and injected failures.

    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    /// Leases in memory, checked like the API server: a create of an existing name and a
    /// replace with another resourceVersion are 409.
    #[derive(Default)]
    struct Store {
        leases: Mutex<BTreeMap<String, Lease>>,
        version: Mutex<u64>,
        /// The next requests fail with this (an unreachable API server).
        down: Mutex<bool>,
    }

    impl Store {
        fn fail_if_down(&self, name: &str) -> Result<(), LeaseError> {
            if *self.down.lock().unwrap() {
                return Err(LeaseError::Failed {
                    name: name.to_owned(),
                    message: "connection refused".to_owned(),
                });
            }
            Ok(())
        }

        fn next_version(&self) -> String {
            let mut v = self.version.lock().unwrap();
            *v += 1;
            v.to_string()
        }

        fn holder(&self, name: &str) -> Option<String> {
            self.leases
                .lock()
                .unwrap()
                .get(name)?
                .spec
                .clone()?
                .holder_identity
        }
    }

    impl LeaseApi for Store {
        async fn get(&self, name: &str) -> Result<Option<Lease>, LeaseError> {
            self.fail_if_down(name)?;
            Ok(self.leases.lock().unwrap().get(name).cloned())
        }

        async fn create(&self, lease: &Lease) -> Result<Lease, LeaseError> {
            let name = lease.metadata.name.clone().unwrap();
            self.fail_if_down(&name)?;
            let mut leases = self.leases.lock().unwrap();
            if leases.contains_key(&name) {
                return Err(LeaseError::Conflict { name });
            }
            let mut stored = lease.clone();
            stored.metadata.resource_version = Some(self.next_version());
            leases.insert(name, stored.clone());
            Ok(stored)
        }

        async fn replace(&self, lease: &Lease) -> Result<Lease, LeaseError> {
            let name = lease.metadata.name.clone().unwrap();
            self.fail_if_down(&name)?;
            let mut leases = self.leases.lock().unwrap();
            let current = leases
                .get(&name)
                .map(|l| l.metadata.resource_version.clone());
            if current != Some(lease.metadata.resource_version.clone()) {
                return Err(LeaseError::Conflict { name });
            }
            let mut stored = lease.clone();
            stored.metadata.resource_version = Some(self.next_version());
            leases.insert(name, stored.clone());
            Ok(stored)
        }
    }

    const LEASE: &str = "dataplane-l2announce-default-web";

    fn timing() -> LeaseTiming {
        LeaseTiming::default()
    }

    fn block<T>(f: impl Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// A store, the start of the fake clock, and node-a's and node-b's elections of one lease.
    fn two() -> (Store, Instant, Election, Election) {
        (
            Store::default(),
            Instant::now(),
            Election::new(LEASE, "node-a", timing()),
            Election::new(LEASE, "node-b", timing()),
        )
    }

    fn wall(t0: Instant, now: Instant) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_hours(500_000) + (now - t0)
    }

    #[test]
    fn acquire_renew_and_a_second_node_stays_out() {
        let (store, t0, mut a, mut b) = two();
        block(async {
            // Created by the first.
            assert_eq!(a.step(&store, t0, wall(t0, t0)).await, Ok(Step::Held));
            assert!(a.holds(t0));
            assert_eq!(store.holder(LEASE).as_deref(), Some("node-a"));
            let spec = store.leases.lock().unwrap()[LEASE].spec.clone().unwrap();
            assert_eq!(spec.lease_duration_seconds, Some(15));
            assert_eq!(spec.lease_transitions, Some(0));
            // The second sees it held.
            assert_eq!(
                b.step(&store, t0, wall(t0, t0)).await,
                Ok(Step::HeldBy("node-a".into()))
            );
            assert!(!b.holds(t0));
            // Renewals every retry period keep it, and the record changes each time, so
            // the second never sees it expire.
            let mut now = t0;
            for _ in 0..20 {
                now += timing().retry_period;
                assert_eq!(a.step(&store, now, wall(t0, now)).await, Ok(Step::Held));
                assert!(matches!(
                    b.step(&store, now, wall(t0, now)).await,
                    Ok(Step::HeldBy(_))
                ));
            }
            assert!(a.holds(now) && !b.holds(now));
            let spec = store.leases.lock().unwrap()[LEASE].spec.clone().unwrap();
            assert_eq!(
                spec.lease_transitions,
                Some(0),
                "renewals are no transition"
            );
            assert_ne!(spec.acquire_time, spec.renew_time);
        });
    }

    #[test]
    fn an_expired_lease_is_taken_over_and_not_before() {
        let (store, t0, mut a, mut b) = two();
        block(async {
            a.step(&store, t0, wall(t0, t0)).await.unwrap();
            // node-a stops renewing (it died). node-b saw the record at t0 + 1 s.
            let seen = t0 + Duration::from_secs(1);
            assert!(matches!(
                b.step(&store, seen, wall(t0, seen)).await,
                Ok(Step::HeldBy(_))
            ));
            // Just before a lease duration since it saw it: still node-a's.
            let before = seen + Duration::from_millis(14_999);
            assert!(matches!(
                b.step(&store, before, wall(t0, before)).await,
                Ok(Step::HeldBy(_))
            ));
            // At the lease duration: taken over.
            let after = seen + timing().duration;
            assert_eq!(b.step(&store, after, wall(t0, after)).await, Ok(Step::Held));
            assert_eq!(store.holder(LEASE).as_deref(), Some("node-b"));
            let spec = store.leases.lock().unwrap()[LEASE].spec.clone().unwrap();
            assert_eq!(spec.lease_transitions, Some(1));
            assert_eq!(spec.acquire_time, spec.renew_time, "acquired now");
            // node-a comes back: it had stopped holding at its renew deadline long ago, and
            // finds node-b's lease.
            assert!(!a.holds(after));
            assert_eq!(
                a.step(&store, after, wall(t0, after)).await,
                Ok(Step::HeldBy("node-b".into()))
            );
        });
    }

    /// A store whose reads answer an old snapshot: what another node wrote after this
    /// node's read (the race between a read and a write, which steps one after the other
    /// cannot make).
    struct Stale<'a> {
        store: &'a Store,
        snapshot: Option<Lease>,
    }

    impl LeaseApi for Stale<'_> {
        async fn get(&self, _: &str) -> Result<Option<Lease>, LeaseError> {
            Ok(self.snapshot.clone())
        }

        async fn create(&self, lease: &Lease) -> Result<Lease, LeaseError> {
            self.store.create(lease).await
        }

        async fn replace(&self, lease: &Lease) -> Result<Lease, LeaseError> {
            self.store.replace(lease).await
        }
    }

    #[test]
    fn a_conflict_loses_at_once() {
        let (store, t0, mut a, mut b) = two();
        let mut c = Election::new(LEASE, "node-c", timing());
        block(async {
            // Two creates race: node-a read "none" too, but node-b created it first.
            assert_eq!(b.step(&store, t0, wall(t0, t0)).await, Ok(Step::Held));
            let stale = Stale {
                store: &store,
                snapshot: None,
            };
            assert_eq!(a.step(&stale, t0, wall(t0, t0)).await, Ok(Step::Lost));
            assert!(!a.holds(t0));
            assert_eq!(store.holder(LEASE).as_deref(), Some("node-b"));

            // node-b stops renewing; node-a and node-c both see it expire and race to take
            // it over from the same resourceVersion: one wins, the other's 409 loses.
            let seen = store.leases.lock().unwrap()[LEASE].clone();
            let snapshot = Stale {
                store: &store,
                snapshot: Some(seen),
            };
            a.step(&snapshot, t0, wall(t0, t0)).await.unwrap();
            c.step(&snapshot, t0, wall(t0, t0)).await.unwrap();
            let expired = t0 + timing().duration;
            assert_eq!(
                a.step(&snapshot, expired, wall(t0, expired)).await,
                Ok(Step::Held)
            );
            assert_eq!(
                c.step(&snapshot, expired, wall(t0, expired)).await,
                Ok(Step::Lost)
            );
            assert!(a.holds(expired) && !c.holds(expired));
            assert_eq!(store.holder(LEASE).as_deref(), Some("node-a"));

            // node-c overwrites it anyway (say its clock let it): node-a's next renewal
            // conflicts, it reads node-c's record and gives up at once, well before its
            // renew deadline.
            let mut theirs = store.leases.lock().unwrap()[LEASE].clone();
            theirs.spec.as_mut().unwrap().holder_identity = Some("node-c".to_owned());
            store.replace(&theirs).await.unwrap();
            let now = expired + timing().retry_period;
            assert_eq!(
                a.step(&store, now, wall(t0, now)).await,
                Ok(Step::HeldBy("node-c".into()))
            );
            assert!(!a.holds(now));
        });
    }

    #[test]
    fn a_holder_that_cannot_renew_stops_at_the_renew_deadline() {
        let store = Store::default();
        let t0 = Instant::now();
        let mut a = Election::new(LEASE, "node-a", timing());
        block(async {
            a.step(&store, t0, wall(t0, t0)).await.unwrap();
            *store.down.lock().unwrap() = true;
            let mut now = t0;
            while now < t0 + timing().renew_deadline {
                assert!(a.holds(now), "held until the deadline");
                now += timing().retry_period;
                assert!(a.step(&store, now, wall(t0, now)).await.is_err());
            }
            // Past the deadline: not held, whatever the API server says later.
            assert!(!a.holds(t0 + timing().renew_deadline));
            assert_eq!(a.deadline(), Some(t0 + timing().renew_deadline));
            // The deadline comes well before another node may take over.
            assert!(timing().renew_deadline < timing().duration);
            // The API server is back: node-a still holds the record, renews and holds again.
            *store.down.lock().unwrap() = false;
            assert_eq!(a.step(&store, now, wall(t0, now)).await, Ok(Step::Held));
            assert!(a.holds(now));
        });
    }

    #[test]
    fn a_release_lets_the_next_node_take_over_at_once() {
        let (store, t0, mut a, mut b) = two();
        block(async {
            a.step(&store, t0, wall(t0, t0)).await.unwrap();
            assert!(matches!(
                b.step(&store, t0, wall(t0, t0)).await,
                Ok(Step::HeldBy(_))
            ));
            assert_eq!(a.release(&store, wall(t0, t0)).await, Ok(true));
            assert!(!a.holds(t0));
            assert_eq!(store.holder(LEASE), None);
            let now = t0 + timing().retry_period;
            assert_eq!(b.step(&store, now, wall(t0, now)).await, Ok(Step::Held));
            // Releasing what it does not hold writes nothing.
            assert_eq!(a.release(&store, wall(t0, now)).await, Ok(false));
            assert_eq!(store.holder(LEASE).as_deref(), Some("node-b"));
        });
    }

    #[test]
    fn timing_rules() {
        assert_eq!(LeaseTiming::default().validate(), Ok(()));
        let t = |d: u64, r: u64, p: u64| LeaseTiming {
            duration: Duration::from_millis(d),
            renew_deadline: Duration::from_millis(r),
            retry_period: Duration::from_millis(p),
        };
        let e = t(5000, 5000, 2000).validate().unwrap_err();
        assert!(
            e.contains("--l2-lease-renew-deadline") && e.contains("shorter"),
            "{e}"
        );
        let e = t(15000, 2000, 2000).validate().unwrap_err();
        assert!(e.contains("--l2-lease-retry-period"), "{e}");
        let e = t(1500, 1000, 200).validate().unwrap_err();
        assert!(e.contains("whole number of seconds"), "{e}");
        assert!(t(15000, 5000, 0).validate().is_err());
        assert_eq!(t(2000, 1000, 200).validate(), Ok(()));
    }
}
