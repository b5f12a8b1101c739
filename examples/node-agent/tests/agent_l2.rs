//! L2 announcements in the reconcile loop, over an in-memory `FakeDataplane` and a scripted
//! election: the candidates it hands the election (an address to announce, selected by
//! `--l2-service-selector`, `externalTrafficPolicy: Local` only with a ready local
//! endpoint), a won lease as a one-service partial sync, a Service that stops being a
//! candidate withdrawn before its lease is released, and the withdrawal at shutdown.
//!
//! ```text
//!   SourceEvent ─▶ Reconciler ──sync──▶ FakeDataplane (applied state: l2_announce)
//!                     │  ▲
//!   set_candidates ◀──┘  └── l2_verdict(Verdict { service, held })   (the test plays the
//!   shutdown(release)                                                  election)
//! ```

mod agent_common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_common::harness::{harness, list_cluster, object, Harness};
use agent_common::slice;
use dataplane_agent::l2::{Elect, Verdict};
use dataplane_agent::reconcile::L2Election;
use dataplane_agent::runner::RunKind;
use dataplane_agent::source::SourceEvent;
use dataplane_kube::{Kind, ObjectKey};
use futures::future::BoxFuture;

/// What the loop asked of the election.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Asked {
    Candidates(Vec<String>),
    Shutdown { release: bool },
}

#[derive(Clone, Default)]
struct Script(Arc<Mutex<Vec<Asked>>>);

impl Script {
    fn last_candidates(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find_map(|a| match a {
                Asked::Candidates(c) => Some(c.clone()),
                Asked::Shutdown { .. } => None,
            })
            .expect("candidates were set")
    }

    fn asked(&self) -> Vec<Asked> {
        self.0.lock().unwrap().clone()
    }
}

impl Elect for Script {
    fn set_candidates(&mut self, services: &BTreeSet<ObjectKey>) {
        self.0.lock().unwrap().push(Asked::Candidates(
            services.iter().map(|k| k.name.to_string()).collect(),
        ));
    }

    fn shutdown(self: Box<Self>, release: bool) -> BoxFuture<'static, ()> {
        self.0.lock().unwrap().push(Asked::Shutdown { release });
        Box::pin(async {})
    }
}

/// A LoadBalancer Service with ingress IP `lb` (none: no status), externalTrafficPolicy
/// `policy`, `labels` (YAML flow map entries).
fn lb_service(
    name: &str,
    cluster_ip: &str,
    lb: Option<&str>,
    policy: &str,
    labels: &str,
) -> String {
    let status = lb.map_or_else(String::new, |ip| {
        format!("status:\n  loadBalancer:\n    ingress:\n    - ip: {ip}\n      ipMode: VIP\n")
    });
    let health = if policy == "Local" {
        "  healthCheckNodePort: 32100\n"
    } else {
        ""
    };
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\n  labels: {{{labels}}}\nspec:\n  type: LoadBalancer\n  clusterIP: {cluster_ip}\n  clusterIPs: [{cluster_ip}]\n  externalTrafficPolicy: {policy}\n{health}  ports:\n  - name: http\n    port: 80\n    protocol: TCP\n    targetPort: 8080\n{status}"
    )
}

fn inner_service() -> String {
    "apiVersion: v1\nkind: Service\nmetadata: {name: inner, namespace: default}\nspec:\n  clusterIP: 10.96.0.14\n  clusterIPs: [10.96.0.14]\n  ports: [{name: http, port: 80, targetPort: 8080}]\n".to_owned()
}

fn key(name: &str) -> ObjectKey {
    ObjectKey::namespaced(Kind::Service, "default", name)
}

/// A loop with the scripted election and `--l2-service-selector l2!=no`, every kind listed:
/// `web` (Cluster policy), `local` (Local, its endpoint on node-1), `inner` (no address to
/// announce), `skipped` (labelled `l2: "no"`).
fn listed() -> (Harness, Script) {
    let h = harness(Duration::from_mins(1));
    let (_tx, verdicts) = tokio::sync::mpsc::unbounded_channel();
    let script = Script::default();
    let mut h = Harness {
        reconciler: h.reconciler.with_l2_election(L2Election {
            elect: Box::new(script.clone()),
            verdicts,
            selector: Some("l2!=no".parse().unwrap()),
        }),
        ..h
    };
    list_cluster(
        &mut h,
        &[
            lb_service("web", "10.96.0.10", Some("172.18.0.200"), "Cluster", ""),
            lb_service("local", "10.96.0.11", Some("172.18.0.210"), "Local", ""),
            inner_service(),
            lb_service(
                "skipped",
                "10.96.0.13",
                Some("172.18.0.230"),
                "Cluster",
                "l2: \"no\"",
            ),
        ],
        &[
            slice("web-1", "web", &[("10.244.0.11", "node-0", "pod-0-1")]),
            slice("local-1", "local", &[("10.244.1.11", "node-1", "pod-1-1")]),
        ],
    );
    assert!(h.reconciler.ready());
    (h, script)
}

fn announced(h: &Harness) -> Vec<String> {
    let mut names: Vec<String> = h
        .fake
        .applied()
        .unwrap()
        .services
        .iter()
        .filter(|s| s.l2_announce)
        .map(|s| s.name.name.to_string())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn only_candidates_compete_and_a_won_lease_is_a_one_service_sync() {
    let (mut h, script) = listed();
    let outcome = h.reconciler.sync(RunKind::Full).await;
    assert!(outcome.report.is_some(), "{outcome:?}");
    // `local` has no ready endpoint here, `inner` nothing to announce, `skipped` is not
    // selected.
    assert_eq!(script.last_candidates(), ["web"]);
    assert!(announced(&h).is_empty());

    // The election gives web to this node: one service changes in a partial sync.
    h.reconciler.l2_verdict(Verdict {
        service: key("web"),
        held: true,
    });
    let outcome = h.reconciler.sync(RunKind::Partial).await;
    let report = outcome.report.expect("synced");
    assert!(!report.full_sync);
    assert_eq!(report.services_changed, 1, "{report:?}");
    assert_eq!(announced(&h), ["web"]);
    assert_eq!(
        dataplane_core::l2::announced_addresses(&h.fake.applied().unwrap()),
        ["172.18.0.200".parse().unwrap()].into()
    );

    // A win for a Service that is no candidate is not taken.
    h.reconciler.l2_verdict(Verdict {
        service: key("skipped"),
        held: true,
    });
    assert!(h
        .reconciler
        .cluster()
        .l2_announced()
        .iter()
        .all(|k| *k.name != *"skipped"));

    // A local endpoint appears: `local` becomes a candidate on this node.
    h.reconciler.handle(SourceEvent::Applied(object(&slice(
        "local-1",
        "local",
        &[("10.244.0.11", "node-0", "pod-0-1")],
    ))));
    h.reconciler.sync(RunKind::Partial).await.report.unwrap();
    assert_eq!(script.last_candidates(), ["local", "web"]);

    // Lost: withdrawn in one partial sync.
    h.reconciler.l2_verdict(Verdict {
        service: key("web"),
        held: false,
    });
    let report = h.reconciler.sync(RunKind::Partial).await.report.unwrap();
    assert_eq!(report.services_changed, 1);
    assert!(announced(&h).is_empty());
}

#[tokio::test]
async fn a_service_that_stops_being_a_candidate_is_withdrawn_before_its_lease_goes() {
    let (mut h, script) = listed();
    h.reconciler.handle(SourceEvent::Applied(object(&slice(
        "local-1",
        "local",
        &[("10.244.0.11", "node-0", "pod-0-1")],
    ))));
    h.reconciler.sync(RunKind::Full).await.report.unwrap();
    assert_eq!(script.last_candidates(), ["local", "web"]);
    h.reconciler.l2_verdict(Verdict {
        service: key("local"),
        held: true,
    });
    h.reconciler.sync(RunKind::Partial).await.report.unwrap();
    assert_eq!(announced(&h), ["local"]);

    // The local endpoint moves away: after this sync the datapath still announces `local`
    // (programmed with it), so its election goes on (the lease stays held)...
    h.reconciler.handle(SourceEvent::Applied(object(&slice(
        "local-1",
        "local",
        &[("10.244.1.11", "node-1", "pod-1-1")],
    ))));
    h.reconciler.sync(RunKind::Partial).await.report.unwrap();
    assert_eq!(announced(&h), ["local"]);
    assert_eq!(
        script.last_candidates(),
        ["local", "web"],
        "kept until withdrawn"
    );
    // ...and the next sync, due at once, withdraws it; only then is its election stopped
    // (and its lease released).
    let outcome = h
        .reconciler
        .sync_if_due(std::time::Instant::now() + Duration::from_secs(2))
        .await
        .expect("the withdrawal is due");
    assert_eq!(outcome.report.unwrap().services_changed, 1);
    assert!(announced(&h).is_empty());
    assert_eq!(script.last_candidates(), ["web"]);
}

#[tokio::test]
async fn shutdown_withdraws_the_announcements_then_releases_the_leases() {
    let (mut h, script) = listed();
    h.reconciler.sync(RunKind::Full).await.report.unwrap();
    h.reconciler.l2_verdict(Verdict {
        service: key("web"),
        held: true,
    });
    h.reconciler.sync(RunKind::Partial).await.report.unwrap();
    assert_eq!(announced(&h), ["web"]);
    let syncs = h.fake.calls().incremental_syncs + h.fake.calls().full_syncs;

    let (_tx, rx) = tokio::sync::mpsc::channel(1);
    let Harness {
        reconciler, fake, ..
    } = h;
    reconciler
        .run(rx, std::future::ready(()))
        .await
        .expect("a clean stop");
    let applied = fake.applied().unwrap();
    assert!(
        applied.services.iter().all(|s| !s.l2_announce),
        "withdrawn before the agent stops"
    );
    assert_eq!(
        fake.calls().incremental_syncs + fake.calls().full_syncs,
        syncs + 1
    );
    assert_eq!(
        script.asked().last(),
        Some(&Asked::Shutdown { release: true })
    );
}
