//! The host endpoint policy conformance table from `dataplane-testkit` (Calico-style host
//! endpoints: untracked deny of blocked prefixes, deny-all with failsafe ports, pre-DNAT on a
//! NodePort, an untracked allow and its return rule, `applyOnForward`, host egress), with
//! real TCP and UDP traffic in both families, against the eBPF backend (one `EbpfDataplane`
//! per lab node, each with its own pin directory). A backend without
//! `Capabilities::host_policy` skips every case as a visible row.

mod common;

use dataplane_testkit::conformance::host::{host_cases, run_host, HOST_LAB};
use dataplane_testkit::{require_root, Lab};

#[test]
fn host_conformance_table() {
    if !require_root("host_conformance_table") {
        return;
    }
    let lab = Lab::new(HOST_LAB).expect("lab");
    let (_cleanup, mut factory) = common::lab_dataplanes("dpe-host", HOST_LAB.nodes);
    run_host(&lab, &host_cases(), &mut factory).assert_ok();
}
