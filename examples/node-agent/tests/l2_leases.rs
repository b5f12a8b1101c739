//! Two agents' electors racing for one Service's Lease over HTTP, against the fake API
//! server (`common::fake_api`), which serves `coordination.k8s.io/v1` Leases as kube-apiserver does: `GET` (404 when
//! missing), `POST` (409 `AlreadyExists` when it exists), `PUT` (409 Conflict unless the body's
//! `metadata.resourceVersion` is the stored one), every write a new resourceVersion.
//!
//! ```text
//!   Announcer node-a ──kube::Api<Lease>──┐
//!                                        ├──▶ fake API server (127.0.0.1:port)
//!   Announcer node-b ──kube::Api<Lease>──┘     /apis/coordination.k8s.io/v1/namespaces/
//!        │ verdicts (held / not)                 kube-system/leases[/<name>]
//!        ▼
//!   the test: who holds, and when
//! ```
//!
//! Short leases (2 s, renew deadline 1 s, retry 200 ms) keep the tests short; the bounds
//! asserted are the algorithm's (a takeover not before the lease could have expired, and
//! within a lease duration and a few retry periods after the holder stopped), with slack for
//! a loaded machine only on the late side.

mod common;

use std::time::{Duration, Instant};

use common::fake_api::FakeApi;
use dataplane_agent::l2::{lease_name, Announcer, Elect, Verdict};
use dataplane_agent::lease::LeaseTiming;
use dataplane_kube::k8s_openapi::api::coordination::v1::Lease;
use dataplane_kube::{Kind, ObjectKey};
use hyper::Method;
use serde_json::json;
use tokio::sync::mpsc;

const NAMESPACE: &str = "kube-system";

/// Bounds a wait that should end (only a failing test reaches it).
const DEADLINE: Duration = Duration::from_secs(30);

fn timing() -> LeaseTiming {
    LeaseTiming {
        duration: Duration::from_secs(2),
        renew_deadline: Duration::from_secs(1),
        retry_period: Duration::from_millis(200),
    }
}

/// An announcer of node `node` over `api`, and its verdicts.
fn announcer(
    api: &FakeApi,
    node: &str,
) -> (
    Announcer<kube::Api<Lease>>,
    mpsc::UnboundedReceiver<Verdict>,
) {
    Announcer::new(
        dataplane_agent::l2::kube_leases(api.client(), NAMESPACE),
        node,
        timing(),
    )
}

fn web() -> ObjectKey {
    ObjectKey::namespaced(Kind::Service, "default", "web")
}

/// Who holds, from both electors' verdicts, checked at every verdict: never both.
struct Watch {
    rx: [mpsc::UnboundedReceiver<Verdict>; 2],
    held: [bool; 2],
}

impl Watch {
    /// The next verdict of either node (index, held).
    async fn next(&mut self) -> (usize, bool) {
        let [a, b] = &mut self.rx;
        let (i, v) = tokio::time::timeout(DEADLINE, async {
            tokio::select! {
                Some(v) = a.recv() => (0, v),
                Some(v) = b.recv() => (1, v),
            }
        })
        .await
        .expect("a verdict before the deadline");
        assert_eq!(v.service, web());
        self.held[i] = v.held;
        assert!(
            !(self.held[0] && self.held[1]),
            "two announcers: {:?}",
            self.held
        );
        (i, v.held)
    }

    /// Verdicts within `quiet` (none expected).
    async fn quiet(&mut self, quiet: Duration) -> Option<(usize, bool)> {
        tokio::time::timeout(quiet, self.next()).await.ok()
    }
}

const NODES: [&str; 2] = ["node-a", "node-b"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_of_two_holds_and_the_other_takes_over_when_it_stops() {
    let api = FakeApi::start();
    let (mut a, rx_a) = announcer(&api, NODES[0]);
    let (mut b, rx_b) = announcer(&api, NODES[1]);
    let candidates = [web()].into();
    // Both start at once: they race to create the lease.
    a.set_candidates(&candidates);
    b.set_candidates(&candidates);
    let mut watch = Watch {
        rx: [rx_a, rx_b],
        held: [false, false],
    };
    let (winner, held) = watch.next().await;
    assert!(held);
    let lease = lease_name(&web());
    assert_eq!(
        api.holder(NAMESPACE, &lease).as_deref(),
        Some(NODES[winner])
    );
    // Several lease durations: the holder renews, the other never gets it.
    assert_eq!(watch.quiet(timing().duration * 3).await, None);
    assert_eq!(
        api.holder(NAMESPACE, &lease).as_deref(),
        Some(NODES[winner])
    );
    {
        let writes = api.lease_writes();
        let lost: Vec<_> = writes
            .iter()
            .filter(|w| w.holder.as_deref() != Some(NODES[winner]) && w.status < 300)
            .collect();
        assert!(lost.is_empty(), "the loser wrote: {lost:?}");
        let renewals = writes
            .iter()
            .filter(|w| {
                w.method == Method::PUT
                    && w.holder.as_deref() == Some(NODES[winner])
                    && w.status == 200
            })
            .count();
        assert!(renewals >= 10, "renewed every retry period: {renewals}");
    }

    // The holder stops without releasing (it crashed): the other takes over once the lease
    // expires, not before.
    let (holder, other) = if winner == 0 { (a, b) } else { (b, a) };
    let stopped = Instant::now();
    Box::new(holder).shutdown(false).await;
    watch.held[winner] = false;
    let (i, held) = watch.next().await;
    let took = stopped.elapsed();
    assert_eq!((i, held), (1 - winner, true));
    assert_eq!(
        api.holder(NAMESPACE, &lease).as_deref(),
        Some(NODES[1 - winner])
    );
    // The other saw the last renewal at most a retry period before the stop, and waits a
    // lease duration from then.
    assert!(
        took + timing().retry_period * 2 >= timing().duration,
        "taken over after {took:?}, before the lease could expire"
    );
    assert!(
        took <= timing().duration + timing().retry_period * 3 + Duration::from_secs(2),
        "taken over only after {took:?}"
    );
    let spec = api.lease(NAMESPACE, &lease).expect("the lease")["spec"].clone();
    assert_eq!(spec["leaseTransitions"], json!(1));
    assert_eq!(spec["leaseDurationSeconds"], json!(2));
    Box::new(other).shutdown(true).await;
    assert_eq!(api.holder(NAMESPACE, &lease), None, "released at shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_lease_is_taken_over_within_a_retry_period_or_two() {
    let api = FakeApi::start();
    let (mut a, rx_a) = announcer(&api, NODES[0]);
    let (mut b, rx_b) = announcer(&api, NODES[1]);
    let candidates = [web()].into();
    a.set_candidates(&candidates);
    let mut watch = Watch {
        rx: [rx_a, rx_b],
        held: [false, false],
    };
    assert_eq!(watch.next().await, (0, true));
    b.set_candidates(&candidates);
    assert_eq!(watch.quiet(timing().retry_period * 3).await, None);
    // node-a no longer competes (its announcement withdrawn): it releases the lease.
    let released = Instant::now();
    a.set_candidates(&std::collections::BTreeSet::new());
    watch.held[0] = false;
    assert_eq!(watch.next().await, (1, true));
    assert!(
        released.elapsed() < timing().duration,
        "a release is no expiry: {:?}",
        released.elapsed()
    );
    assert_eq!(
        api.holder(NAMESPACE, &lease_name(&web())).as_deref(),
        Some(NODES[1])
    );
    Box::new(a).shutdown(true).await;
    Box::new(b).shutdown(false).await;
}

/// The API server stops answering: the holder stops announcing at its renew deadline (a
/// request that hangs is cut off there), well before the lease could expire for another
/// node; when the server answers again, the lease (still its own) is renewed at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_that_gets_no_answer_stops_at_its_renew_deadline() {
    let api = FakeApi::start();
    let (mut a, rx_a) = announcer(&api, NODES[0]);
    let (_, rx_b) = mpsc::unbounded_channel();
    a.set_candidates(&[web()].into());
    let mut watch = Watch {
        rx: [rx_a, rx_b],
        held: [false, false],
    };
    assert_eq!(watch.next().await, (0, true));
    assert_eq!(watch.quiet(timing().retry_period * 3).await, None);
    let hung = Instant::now();
    api.hang_leases(true);
    assert_eq!(watch.next().await, (0, false));
    let took = hung.elapsed();
    // The last renewal started at most a retry period before the hang.
    assert!(
        took + timing().retry_period >= timing().renew_deadline,
        "gave up after {took:?}, before its renew deadline"
    );
    assert!(
        took < timing().duration,
        "still announcing after {took:?}, when another node may take over"
    );
    api.hang_leases(false);
    assert_eq!(watch.next().await, (0, true), "renewed once answered");
    assert_eq!(
        api.holder(NAMESPACE, &lease_name(&web())).as_deref(),
        Some(NODES[0])
    );
    Box::new(a).shutdown(true).await;
}
