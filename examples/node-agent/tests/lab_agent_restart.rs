//! eBPF: the agent is killed with SIGKILL on both nodes and restarted while a long TCP
//! connection and a connect-request-response (CRR) load run through a ClusterIP, and nothing
//! breaks: the pinned programs and maps keep serving with no agent at all, the restarted
//! agents adopt them, and a change made after the restart reaches the traffic.
//!
//! ```text
//!   pod-0-1 ══ one TCP connection, requests and bulk uploads ══▶ 10.96.0.10:80 ─┐
//!   pod-0-0 ── a new connection per request (CRR), zero failures ─▶ 10.96.0.10:80 ─┴▶ pod-1-0
//!   node-0, node-1: dataplane-agent --backend ebpf   ── SIGKILL ── (none) ── restart
//! ```

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use common::agent::Backend;
use common::manifests::{self, ServiceDef};
use dataplane::Protocol;
use dataplane_testkit::{require_root, Lab, NetNs, TcpSession};

/// A ClusterIP service: 10.96.0.10:80.
const WEB: ServiceDef<'static> = ServiceDef {
    kind: manifests::ServiceType::ClusterIp,
    node_port: None,
    ..manifests::WEB
};

/// How long one CRR exchange or one request on the long connection may take before it
/// counts as a failure. Generous: it bounds a hang, it does not measure anything.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of each bulk upload on the long connection.
const UPLOAD: usize = 256 * 1024;

fn web_file(lab: &Lab, pods: &[usize]) -> String {
    manifests::service_file(lab, &WEB, Some(pods))
}

/// What the traffic threads saw.
#[derive(Default)]
struct Seen {
    /// CRR answers per backend.
    crr_backends: Mutex<BTreeMap<String, usize>>,
    /// CRR exchanges that got no answer, by outcome.
    crr_failures: Mutex<BTreeMap<String, usize>>,
    crr_answered: AtomicUsize,
    /// Requests answered on the long connection.
    long_answered: AtomicUsize,
    /// Why the long connection failed, if it did.
    long_error: Mutex<Option<String>>,
    stop: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Seen {
    /// Waits until both loads have made `n` more exchanges than at the call (the long
    /// connection's request count counts uploads as one), failing early if the long
    /// connection broke.
    fn wait_progress(&self, what: &str, n: usize) {
        let crr = self.crr_answered.load(Ordering::Relaxed);
        let long = self.long_answered.load(Ordering::Relaxed);
        common::wait_until(&format!("traffic {what}"), || {
            let broken = lock(&self.long_error).clone();
            if let Some(e) = broken {
                panic!("the long connection broke {what}: {e}");
            }
            let c = self.crr_answered.load(Ordering::Relaxed) - crr;
            let l = self.long_answered.load(Ordering::Relaxed) - long;
            if c >= n && l >= n {
                Ok(())
            } else {
                Err(format!("{c} CRR and {l} long-connection answers so far"))
            }
        });
    }
}

/// Stops the traffic threads when dropped (also when the test panics, so they do not
/// outlive the lab).
struct StopOnDrop(Arc<Seen>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::Relaxed);
    }
}

/// Connect-request-response from `netns` to `vip` until told to stop.
fn crr_load(netns: NetNs, vip: SocketAddr, seen: Arc<Seen>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        while !seen.stop.load(Ordering::Relaxed) {
            let m = dataplane_testkit::measure(&netns, vip, Protocol::Tcp, 10, EXCHANGE_TIMEOUT)
                .expect("CRR batch");
            for (backend, n) in m.backends {
                *lock(&seen.crr_backends).entry(backend).or_default() += n;
            }
            for (outcome, n) in m.failures {
                *lock(&seen.crr_failures).entry(outcome).or_default() += n;
            }
            seen.crr_answered
                .fetch_add(m.latencies.len(), Ordering::Relaxed);
        }
    })
}

/// One connection from `netns` to `vip`: a request line and its answer in a loop, and every
/// 20th round a bulk upload whose every line is answered; each answer must name the same
/// backend and the same client address as the first. Returns that backend.
fn long_connection(netns: NetNs, vip: SocketAddr, seen: Arc<Seen>) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut session = TcpSession::open_with_timeout(&netns, vip, EXCHANGE_TIMEOUT)
            .expect("the long connection opens");
        let first = session.request().expect("first request");
        let mut round = 0_usize;
        while !seen.stop.load(Ordering::Relaxed) {
            round += 1;
            let answer = if round.is_multiple_of(20) {
                session.upload(UPLOAD)
            } else {
                session.request()
            };
            let error = match answer {
                Ok(a) if a == first => None,
                Ok(a) => Some(format!(
                    "round {round}: answered by {a:?}, first by {first:?}"
                )),
                Err(e) => Some(format!("round {round}: {e}")),
            };
            if let Some(e) = error {
                *lock(&seen.long_error) = Some(e);
                break;
            }
            seen.long_answered.fetch_add(1, Ordering::Relaxed);
        }
        first.0
    })
}

#[test]
fn sigkill_and_restart_break_no_connection_ebpf() {
    if !require_root("sigkill_and_restart_break_no_connection_ebpf") {
        return;
    }
    let _serial = common::serial();
    let (lab, dirs, mut agents) = common::start_lab(Backend::Ebpf, 0);
    let vip = SocketAddr::new(WEB.cluster_ip.parse().expect("ClusterIP"), WEB.port);
    dirs.write("web.yaml", &web_file(&lab, &[2]));
    common::wait_for_backend(&lab.pod(0).netns, vip, "pod-1-0", 3);
    common::wait_for_backend(&lab.pod(1).netns, vip, "pod-1-0", 3);

    let seen = Arc::new(Seen::default());
    let _stop = StopOnDrop(Arc::clone(&seen));
    let crr = crr_load(lab.pod(0).netns.clone(), vip, Arc::clone(&seen));
    let long = long_connection(lab.pod(1).netns.clone(), vip, Arc::clone(&seen));
    seen.wait_progress("before the kill", 50);

    for node in 0..2 {
        let pid = agents.pid(node);
        agents.kill(node);
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "agent {pid} is gone"
        );
    }
    seen.wait_progress("with no agent running", 200);

    for node in 0..2 {
        agents.start_node(node);
    }
    agents.wait_all_synced();
    seen.wait_progress("after the restart", 200);

    // The restarted agents program changes: a second endpoint gets CRR traffic.
    dirs.write("web.yaml", &web_file(&lab, &[2, 3]));
    common::wait_until("CRR answers from pod-1-1", || {
        // One guard for the check and the message: a second lock in the same expression
        // would wait for the first forever.
        let backends = lock(&seen.crr_backends).clone();
        if backends.get("pod-1-1").is_some_and(|&n| n > 0) {
            Ok(())
        } else {
            Err(format!("backends so far: {backends:?}"))
        }
    });
    seen.wait_progress("after the change", 50);

    seen.stop.store(true, Ordering::Relaxed);
    crr.join().expect("CRR thread");
    let backend = long.join().expect("long-connection thread");
    assert_eq!(
        *lock(&seen.long_error),
        None,
        "the long connection kept working"
    );
    assert_eq!(backend, "pod-1-0");
    let failures = lock(&seen.crr_failures).clone();
    assert!(
        failures.is_empty(),
        "CRR exchanges failed: {failures:?} (answered: {}, by backend: {:?})",
        seen.crr_answered.load(Ordering::Relaxed),
        lock(&seen.crr_backends)
    );
    agents.assert_running(0);
    agents.assert_running(1);
}
