//! The NetworkPolicy conformance table from `dataplane-testkit` (the Kubernetes e2e suite's
//! reachability matrices, namespaces x, y, z with pods a, b, c over two nodes), with real TCP
//! and UDP traffic, against the eBPF backend (one `EbpfDataplane` per lab node, each with its
//! own pin directory).

mod common;

use dataplane_testkit::conformance::policy::{policy_cases, run_policy, POLICY_LAB};
use dataplane_testkit::{require_root, Lab};

#[test]
fn policy_conformance_table() {
    if !require_root("policy_conformance_table") {
        return;
    }
    let lab = Lab::new(POLICY_LAB).expect("lab");
    let (_cleanup, mut factory) = common::lab_dataplanes("dpe-pol", POLICY_LAB.nodes);
    run_policy(&lab, &policy_cases(), &mut factory).assert_ok();
}
