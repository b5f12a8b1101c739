//! The conformance table from `dataplane-testkit`, with real TCP and UDP traffic, against the
//! eBPF backend (one `EbpfDataplane` per lab node, each with its own pin directory).

mod common;

use dataplane_testkit::conformance::{run, standard_cases, STANDARD_LAB};
use dataplane_testkit::{require_root, Lab};

#[test]
fn conformance_table() {
    if !require_root("conformance_table") {
        return;
    }
    let lab = Lab::new(STANDARD_LAB).expect("lab");
    let (_cleanup, mut factory) = common::lab_dataplanes("dpe-conf", STANDARD_LAB.nodes);
    let report = run(&lab, &standard_cases(), &mut factory);
    report.assert_ok();
}
