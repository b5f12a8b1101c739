//! Two agents' electors racing for one Service's Lease over HTTP, against a fake API server
//! that serves `coordination.k8s.io/v1` Leases as kube-apiserver does: `GET` (404 when
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

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dataplane_agent::l2::{lease_name, Announcer, Elect, Verdict};
use dataplane_agent::lease::LeaseTiming;
use dataplane_kube::{Kind, ObjectKey};
use http_body_util::{BodyExt, Full};
use hyper::{
    body::{Bytes, Incoming},
    server::conn::http1,
    service::service_fn,
    Method, Request, Response, StatusCode,
};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const PREFIX: &str = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases";

/// Bounds a wait that should end (only a failing test reaches it).
const DEADLINE: Duration = Duration::from_secs(30);

fn timing() -> LeaseTiming {
    LeaseTiming {
        duration: Duration::from_secs(2),
        renew_deadline: Duration::from_secs(1),
        retry_period: Duration::from_millis(200),
    }
}

#[derive(Default)]
struct Leases {
    /// The server takes requests but does not answer them (an overloaded or partitioned API
    /// server).
    hang: bool,
    stored: BTreeMap<String, Value>,
    version: u64,
    /// Every write answered: method, lease, holder written, status.
    writes: Vec<(Method, String, Option<String>, u16)>,
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<Full<Bytes>> {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16(),
    });
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn ok(code: StatusCode, lease: &Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(lease.to_string())))
        .unwrap()
}

fn holder(lease: &Value) -> Option<String> {
    lease["spec"]["holderIdentity"].as_str().map(str::to_owned)
}

/// The API server's answer to one Lease request.
fn answer(
    leases: &Mutex<Leases>,
    method: &Method,
    path: &str,
    body: &[u8],
) -> Response<Full<Bytes>> {
    let mut leases = leases.lock().unwrap();
    let name = path
        .strip_prefix(PREFIX)
        .unwrap_or("")
        .trim_start_matches('/');
    let mut written: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let response = match *method {
        Method::GET => match leases.stored.get(name) {
            Some(lease) => return ok(StatusCode::OK, lease),
            None => {
                return status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("leases.coordination.k8s.io {name:?} not found"),
                )
            }
        },
        Method::POST => {
            let name = written["metadata"]["name"]
                .as_str()
                .unwrap_or("")
                .to_owned();
            if leases.stored.contains_key(&name) {
                status(
                    StatusCode::CONFLICT,
                    "AlreadyExists",
                    &format!("leases.coordination.k8s.io {name:?} already exists"),
                )
            } else {
                leases.version += 1;
                written["metadata"]["resourceVersion"] = json!(leases.version.to_string());
                written["metadata"]["namespace"] = json!("kube-system");
                written["kind"] = json!("Lease");
                written["apiVersion"] = json!("coordination.k8s.io/v1");
                leases.stored.insert(name, written.clone());
                ok(StatusCode::CREATED, &written)
            }
        }
        Method::PUT => match leases.stored.get(name) {
            None => status(StatusCode::NOT_FOUND, "NotFound", "not found"),
            Some(current)
                if current["metadata"]["resourceVersion"]
                    != written["metadata"]["resourceVersion"] =>
            {
                status(
                    StatusCode::CONFLICT,
                    "Conflict",
                    "Operation cannot be fulfilled on leases.coordination.k8s.io: the object \
                     has been modified; please apply your changes to the latest version and \
                     try again",
                )
            }
            Some(_) => {
                leases.version += 1;
                written["metadata"]["resourceVersion"] = json!(leases.version.to_string());
                written["kind"] = json!("Lease");
                written["apiVersion"] = json!("coordination.k8s.io/v1");
                leases.stored.insert(name.to_owned(), written.clone());
                ok(StatusCode::OK, &written)
            }
        },
        _ => status(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", "no"),
    };
    let entry = (
        method.clone(),
        name.to_owned(),
        holder(&written),
        response.status().as_u16(),
    );
    leases.writes.push(entry);
    response
}

struct FakeApi {
    addr: SocketAddr,
    leases: Arc<Mutex<Leases>>,
}

impl FakeApi {
    async fn start() -> Self {
        let leases = Arc::new(Mutex::new(Leases::default()));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::clone(&leases);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let leases = Arc::clone(&shared);
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let leases = Arc::clone(&leases);
                        async move {
                            while leases.lock().unwrap().hang {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                            let method = request.method().clone();
                            let path = request.uri().path().to_owned();
                            let body = request
                                .into_body()
                                .collect()
                                .await
                                .map(http_body_util::Collected::to_bytes);
                            let body = body.unwrap_or_default();
                            Ok::<_, Infallible>(answer(&leases, &method, &path, &body))
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, leases }
    }

    fn announcer(
        &self,
        node: &str,
    ) -> (
        Announcer<kube::Api<Lease>>,
        mpsc::UnboundedReceiver<Verdict>,
    ) {
        let url = format!("http://{}", self.addr).parse().unwrap();
        let client = kube::Client::try_from(kube::Config::new(url)).unwrap();
        Announcer::new(
            dataplane_agent::l2::kube_leases(client, "kube-system"),
            node,
            timing(),
        )
    }

    fn holder(&self, name: &str) -> Option<String> {
        self.leases
            .lock()
            .unwrap()
            .stored
            .get(name)
            .and_then(holder)
    }
}

use dataplane_kube::k8s_openapi::api::coordination::v1::Lease;

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
    let api = FakeApi::start().await;
    let (mut a, rx_a) = api.announcer(NODES[0]);
    let (mut b, rx_b) = api.announcer(NODES[1]);
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
    assert_eq!(api.holder(&lease).as_deref(), Some(NODES[winner]));
    // Several lease durations: the holder renews, the other never gets it.
    assert_eq!(watch.quiet(timing().duration * 3).await, None);
    assert_eq!(api.holder(&lease).as_deref(), Some(NODES[winner]));
    {
        let leases = api.leases.lock().unwrap();
        let lost: Vec<_> = leases
            .writes
            .iter()
            .filter(|(_, _, who, code)| who.as_deref() != Some(NODES[winner]) && *code < 300)
            .collect();
        assert!(lost.is_empty(), "the loser wrote: {lost:?}");
        let renewals = leases
            .writes
            .iter()
            .filter(|(m, _, who, code)| {
                *m == Method::PUT && who.as_deref() == Some(NODES[winner]) && *code == 200
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
    assert_eq!(api.holder(&lease).as_deref(), Some(NODES[1 - winner]));
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
    let spec = api.leases.lock().unwrap().stored[&lease]["spec"].clone();
    assert_eq!(spec["leaseTransitions"], json!(1));
    assert_eq!(spec["leaseDurationSeconds"], json!(2));
    Box::new(other).shutdown(true).await;
    assert_eq!(api.holder(&lease), None, "released at shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_lease_is_taken_over_within_a_retry_period_or_two() {
    let api = FakeApi::start().await;
    let (mut a, rx_a) = api.announcer(NODES[0]);
    let (mut b, rx_b) = api.announcer(NODES[1]);
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
    assert_eq!(api.holder(&lease_name(&web())).as_deref(), Some(NODES[1]));
    Box::new(a).shutdown(true).await;
    Box::new(b).shutdown(false).await;
}

/// The API server stops answering: the holder stops announcing at its renew deadline (a
/// request that hangs is cut off there), well before the lease could expire for another
/// node; when the server answers again, the lease (still its own) is renewed at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_that_gets_no_answer_stops_at_its_renew_deadline() {
    let api = FakeApi::start().await;
    let (mut a, rx_a) = api.announcer(NODES[0]);
    let (_, rx_b) = mpsc::unbounded_channel();
    a.set_candidates(&[web()].into());
    let mut watch = Watch {
        rx: [rx_a, rx_b],
        held: [false, false],
    };
    assert_eq!(watch.next().await, (0, true));
    assert_eq!(watch.quiet(timing().retry_period * 3).await, None);
    let hung = Instant::now();
    api.leases.lock().unwrap().hang = true;
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
    api.leases.lock().unwrap().hang = false;
    assert_eq!(watch.next().await, (0, true), "renewed once answered");
    assert_eq!(api.holder(&lease_name(&web())).as_deref(), Some(NODES[0]));
    Box::new(a).shutdown(true).await;
}
