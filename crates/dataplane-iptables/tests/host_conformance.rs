//! The host endpoint policy conformance table from `dataplane-testkit` (Calico-style host
//! endpoints: untracked deny of blocked prefixes, deny-all with failsafe ports, pre-DNAT on a
//! NodePort, an untracked allow and its return rule, `applyOnForward`, host egress), with
//! real TCP and UDP traffic in both families, against both netfilter flavours on every lab
//! node; the untracked flows must leave no entry in the node's conntrack table. A backend
//! without `Capabilities::host_policy` skips every case as a visible row. Needs root.

use std::path::PathBuf;

use dataplane_core::Dataplane;
use dataplane_iptables::{IptablesDataplane, NetfilterConfig, NftablesDataplane};
use dataplane_testkit::conformance::host::{host_cases, run_host, HOST_LAB};
use dataplane_testkit::{require_root, Lab, LabNode};

/// Runs the host table with a backend from `backend` (given the node's netns) per node.
fn host_table(test: &str, backend: fn(Option<PathBuf>) -> Box<dyn Dataplane>) {
    if !require_root(test) {
        return;
    }
    let lab = Lab::new(HOST_LAB).expect("lab");
    let report = run_host(&lab, &host_cases(), &mut |node: &LabNode| {
        backend(Some(node.netns.path().to_owned()))
    });
    report.assert_ok();
}

#[test]
fn host_table_nftables() {
    host_table("host_table_nftables", |netns| {
        Box::new(NftablesDataplane::new(NetfilterConfig::nftables(netns)))
    });
}

#[test]
fn host_table_iptables() {
    host_table("host_table_iptables", |netns| {
        Box::new(IptablesDataplane::new(NetfilterConfig::iptables(netns)))
    });
}
