//! The L2 announcement table's runner (`conformance::l2`): a backend without
//! `Capabilities::l2_announcements` skips every case as one visible row, and a backend that
//! claims the capability but programs nothing fails on traffic (nobody answers the client's
//! ARP and neighbour solicitations), never on the table. The netfilter flavours pass it
//! (`dataplane-iptables/tests/l2_conformance.rs`). Needs root.

mod common;

use dataplane_core::{Capabilities, FakeDataplane};
use dataplane_testkit::conformance::l2::{l2_cases, run_l2, L2_LAB};
use dataplane_testkit::conformance::RowOutcome;
use dataplane_testkit::{require_root, Lab};

#[test]
fn l2_cases_are_skipped_visibly_without_the_capability() {
    if !require_root("l2_cases_are_skipped_visibly_without_the_capability") {
        return;
    }
    let lab = Lab::new(L2_LAB).expect("lab");
    let claims = Capabilities {
        dataplane: "no-l2".to_owned(),
        l2_announcements: false,
        ..FakeDataplane::default_capabilities()
    };
    let cases = l2_cases();
    let names: Vec<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    common::assert_skipped_without(
        &claims,
        "Capabilities::l2_announcements",
        &names,
        |factory| run_l2(&lab, &cases, factory),
    );
}

#[test]
fn a_backend_that_announces_nothing_fails_on_traffic() {
    if !require_root("a_backend_that_announces_nothing_fails_on_traffic") {
        return;
    }
    let lab = Lab::new(L2_LAB).expect("lab");
    // The fake claims L2 announcements (and everything else) and touches no kernel.
    let cases = l2_cases();
    let report = run_l2(&lab, &cases, &mut |_node| {
        Box::new(FakeDataplane::with_capabilities(
            FakeDataplane::default_capabilities(),
        ))
    });
    // Each case stops at its first step, which needs an address resolved.
    assert_eq!(report.rows.len(), cases.len(), "{report}");
    for row in &report.rows {
        let RowOutcome::Failed { table, traffic } = &row.outcome else {
            panic!("{} passed with nothing programmed: {report}", row.name)
        };
        assert!(table.is_empty(), "{report}");
        assert!(
            traffic
                .iter()
                .any(|t| t.contains("neighbour entry must be node-0's uplink MAC")),
            "{report}"
        );
    }
}
