//! The conformance runner itself, with no real dataplane (core's `FakeDataplane`, which
//! programs no kernel, claiming what each test says): routing-only rows pass through plain
//! routing, the standard table agrees with core's reference model, and the runner catches both
//! a wrong row and a backend that does not do what it claims.

use std::sync::{Arc, Mutex};

use dataplane_core::{Capabilities, Dataplane, FakeDataplane, IpFamily, Protocol, Service};
use dataplane_testkit::conformance::policy::{policy_cases, run_policy, PolicyCase, POLICY_LAB};
use dataplane_testkit::conformance::{
    self, standard_cases, Case, Client, Destination, Expect, RowOutcome, Seen, STANDARD_LAB,
};
use dataplane_testkit::{require_root, Lab, LabNode};

/// What a "null" dataplane claims: nothing (an honest no-op). A fake programs no kernel, so
/// whatever it claims, traffic sees plain routing.
fn null_caps() -> Capabilities {
    Capabilities {
        dataplane: "null".to_owned(),
        ..Capabilities::default()
    }
}

/// The fakes a factory made, kept to read their call counts.
type Made = Arc<Mutex<Vec<FakeDataplane>>>;

/// A factory of fakes that claim `claims`, keeping a handle to each in `made`.
fn factory(claims: Capabilities, made: &Made) -> impl FnMut(&LabNode) -> Box<dyn Dataplane> {
    let made = Arc::clone(made);
    move |_node| {
        let fake = FakeDataplane::with_capabilities(claims.clone());
        made.lock().unwrap().push(fake.clone());
        Box::new(fake)
    }
}

/// Applies (all full syncs, all accepted: the rows' states are valid) over every fake made.
fn applies(made: &Made) -> usize {
    made.lock()
        .unwrap()
        .iter()
        .map(|f| {
            let calls = f.calls();
            assert_eq!(
                (calls.full_syncs, calls.failures, calls.apply_changes),
                (calls.applies, 0, 0),
                "the runner applies each row's state in full: {calls:?}"
            );
            calls.applies
        })
        .sum()
}

fn no_services(_lab: &Lab) -> Vec<Service> {
    Vec::new()
}

/// Plain routing between the lab's boxes in TCP, UDP and SCTP (raw-socket probes and
/// servers) and both families.
fn routing_rows() -> Vec<Case> {
    let mut cases = Vec::new();
    for protocol in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
        for family in [IpFamily::V4, IpFamily::V6] {
            let tag = format!("{protocol} {family:?}");
            let row = |name: &str, client, pod| {
                Case::new(
                    &format!("{name} {tag}"),
                    no_services,
                    client,
                    Destination::PodIp(pod),
                )
                .protocol(protocol)
                .family(family)
                .expect(Expect::Backends(vec![pod]))
                .seen(Seen::Client)
            };
            cases.push(row("pod to pod same node", Client::Pod(0), 1));
            cases.push(row("pod to pod other node", Client::Pod(0), 3));
            cases.push(row("host to remote pod", Client::Host(1), 0));
            cases.push(row("external to pod", Client::External(1), 2));
            cases.push(
                Case::new(
                    &format!("host to outside {tag}"),
                    no_services,
                    Client::Host(1),
                    Destination::External(0),
                )
                .protocol(protocol)
                .family(family)
                .expect(Expect::Direct)
                .seen(Seen::Client),
            );
        }
    }
    cases
}

#[test]
fn routing_rows_pass_with_a_null_dataplane() {
    if !require_root("routing_rows_pass_with_a_null_dataplane") {
        return;
    }
    let lab = Lab::new(STANDARD_LAB).unwrap();
    let made = Made::default();
    let cases = routing_rows();
    let report = conformance::run(&lab, &cases, &mut factory(null_caps(), &made));
    report.assert_ok();
    assert_eq!(report.passed().count(), cases.len(), "{report}");
    assert_eq!(made.lock().unwrap().len(), 2, "one dataplane per node");
    assert_eq!(applies(&made), 2 * cases.len());
    for row in &report.rows {
        let RowOutcome::Passed { probes, answered } = &row.outcome else {
            unreachable!()
        };
        assert_eq!(*probes, 2);
        assert_eq!(answered.values().sum::<usize>(), 2, "{}", row.name);
    }
}

#[test]
fn standard_table_agrees_with_the_reference_model() {
    if !require_root("standard_table_agrees_with_the_reference_model") {
        return;
    }
    let lab = Lab::new(STANDARD_LAB).unwrap();
    let made = Made::default();
    let cases = standard_cases();
    // The null fake claims nothing: every service row is skipped for traffic, but each is
    // still checked against the reference model, and a disagreement would fail it.
    let report = conformance::run(&lab, &cases, &mut factory(null_caps(), &made));
    report.assert_ok();
    // Only the plain-routing rows need nothing of a backend.
    let routing: Vec<&str> = report.passed().map(|r| r.name.as_str()).collect();
    assert_eq!(
        routing,
        [
            "pod to pod is not masqueraded tcp",
            "pod to pod is not masqueraded udp",
            "pod to pod is not masqueraded ipv6 tcp",
            "pod to pod is not masqueraded ipv6 udp"
        ],
        "{report}"
    );
    assert_eq!(report.skipped().count(), cases.len() - 4, "{report}");
    assert_eq!(applies(&made), 2 * 4);
    for row in report.skipped() {
        let RowOutcome::Skipped { reason } = &row.outcome else {
            unreachable!()
        };
        assert!(reason.contains("lacks"), "{}: {reason}", row.name);
    }
}

#[test]
fn a_wrong_row_is_a_table_failure() {
    if !require_root("a_wrong_row_is_a_table_failure") {
        return;
    }
    let lab = Lab::new(STANDARD_LAB).unwrap();
    let made = Made::default();
    let mut wrong_source = routing_rows().remove(1);
    wrong_source.name = "claims masquerade on plain routing".to_owned();
    wrong_source.source_seen = Seen::IngressNode;
    // A ClusterIP row that forgets one of the service's backends.
    let mut wrong_set = standard_cases()
        .into_iter()
        .find(|c| c.name == "clusterip several backends tcp")
        .unwrap();
    wrong_set.expect = Expect::Backends(vec![1, 2]);
    let cases = vec![wrong_source, wrong_set];
    let report = conformance::run(&lab, &cases, &mut factory(null_caps(), &made));
    assert_eq!(report.failed().count(), 2, "{report}");
    let RowOutcome::Failed { table, traffic } = &report.rows[0].outcome else {
        unreachable!()
    };
    assert!(!table.is_empty(), "the model disagrees with the row");
    assert!(
        traffic.iter().any(|t| t.contains("saw source")),
        "real traffic disagrees too: {traffic:?}"
    );
    let RowOutcome::Failed { table, traffic } = &report.rows[1].outcome else {
        unreachable!()
    };
    assert!(table[0].contains("expects backends"), "{table:?}");
    assert!(traffic[0].starts_with("not run"), "{traffic:?}");
    let panic = std::panic::catch_unwind(|| report.assert_ok()).unwrap_err();
    let message = panic.downcast_ref::<String>().unwrap();
    assert!(message.contains("FAIL  claims masquerade"), "{message}");
}

#[test]
fn a_backend_that_does_not_deliver_fails_its_rows() {
    if !require_root("a_backend_that_does_not_deliver_fails_its_rows") {
        return;
    }
    let lab = Lab::new(STANDARD_LAB).unwrap();
    let made = Made::default();
    // Claims TCP, UDP and SCTP load balancing but programs nothing.
    let mut claims = null_caps();
    claims.dataplane = "liar".to_owned();
    claims.protocols = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp]
        .into_iter()
        .collect();
    let cases: Vec<Case> = standard_cases()
        .into_iter()
        .filter(|c| {
            [
                "clusterip other node tcp",
                "clusterip other node udp",
                "no backends tcp",
                "matrix: pod on another node to clusterip ipv4 sctp",
            ]
            .contains(&c.name.as_str())
        })
        .collect();
    assert_eq!(cases.len(), 4);
    let options = conformance::RunOptions {
        timeout: std::time::Duration::from_millis(500),
        ..conformance::RunOptions::default()
    };
    let report = conformance::run_with(&lab, &cases, &mut factory(claims, &made), &options);
    assert_eq!(report.failed().count(), 4, "{report}");
    // Each node's fake accepted every row's state: the rows fail on traffic alone.
    assert_eq!(applies(&made), 2 * 4);
    for row in report.failed() {
        let RowOutcome::Failed { table, traffic } = &row.outcome else {
            unreachable!()
        };
        assert!(
            table.is_empty(),
            "{}: the rows are right: {table:?}",
            row.name
        );
        assert!(!traffic.is_empty(), "{}", row.name);
    }
}

/// The policy table's cluster-policy case against a backend without the capability: one
/// visible skipped row that names what is missing, nothing applied for it, no failure.
#[test]
fn cluster_policy_cases_are_skipped_visibly_without_the_capability() {
    if !require_root("cluster_policy_cases_are_skipped_visibly_without_the_capability") {
        return;
    }
    let lab = Lab::new(POLICY_LAB).unwrap();
    let made = Made::default();
    let claims = Capabilities {
        dataplane: "no-tiers".to_owned(),
        cluster_policy: false,
        ..FakeDataplane::default_capabilities()
    };
    let cases: Vec<_> = policy_cases()
        .into_iter()
        .filter(PolicyCase::needs_cluster_policy)
        .collect();
    assert_eq!(cases.len(), 1);
    let report = run_policy(&lab, &cases, &mut factory(claims, &made));
    report.assert_ok();
    assert_eq!(report.rows.len(), 1, "{report}");
    let RowOutcome::Skipped { reason } = &report.rows[0].outcome else {
        panic!("not skipped: {report}")
    };
    assert!(
        reason.contains("lacks cluster-wide ordered policy"),
        "{reason}"
    );
    // Only the no-policy warm-up state was applied, on each node.
    assert_eq!(applies(&made), POLICY_LAB.nodes);
}

/// The policy table's SCTP cases against a backend without SCTP: a visible skipped "SCTP
/// cells" row per case, and the cases' steps still run, with TCP and UDP cells only (the fake
/// enforces no policy, so the steps fail on traffic: no wrong cell is an SCTP one).
#[test]
fn sctp_cells_are_left_out_visibly_without_sctp() {
    if !require_root("sctp_cells_are_left_out_visibly_without_sctp") {
        return;
    }
    let lab = Lab::new(POLICY_LAB).unwrap();
    let made = Made::default();
    let mut claims = Capabilities {
        dataplane: "no-sctp".to_owned(),
        ..FakeDataplane::default_capabilities()
    };
    claims.protocols = [Protocol::Tcp, Protocol::Udp].into_iter().collect();
    let cases: Vec<PolicyCase> = policy_cases().into_iter().filter(|c| c.sctp).collect();
    assert_eq!(cases.len(), 3);
    let report = run_policy(&lab, &cases, &mut factory(claims, &made));
    let skipped: Vec<&str> = report
        .rows
        .iter()
        .filter(|r| matches!(&r.outcome, RowOutcome::Skipped { reason } if reason.contains("lacks SCTP")))
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(
        skipped,
        cases
            .iter()
            .map(|c| format!("{} SCTP cells", c.name))
            .collect::<Vec<_>>(),
        "{report}"
    );
    let sctp = format!(" {}/", Protocol::Sctp);
    assert_eq!(report.failed().count(), 3, "{report}");
    for row in report.failed() {
        let RowOutcome::Failed { table, traffic } = &row.outcome else {
            unreachable!()
        };
        assert!(table.is_empty(), "{}: {table:?}", row.name);
        assert!(!traffic.is_empty(), "{}", row.name);
        assert!(
            traffic.iter().all(|t| !t.contains(&sctp)),
            "{}: an SCTP cell was probed: {traffic:?}",
            row.name
        );
        assert!(
            traffic
                .iter()
                .any(|t| t.contains(&format!(" {}/", Protocol::Tcp))),
            "{}: {traffic:?}",
            row.name
        );
    }
}
