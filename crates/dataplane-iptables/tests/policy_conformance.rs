//! The NetworkPolicy conformance table from `dataplane-testkit` (the Kubernetes e2e suite's
//! reachability matrices, namespaces x, y, z with pods a, b, c over two nodes), with real TCP
//! and UDP traffic, against both netfilter flavours on every lab node. Needs root.

use std::path::PathBuf;

use dataplane_core::Dataplane;
use dataplane_iptables::{IptablesDataplane, NetfilterConfig, NftablesDataplane};
use dataplane_testkit::conformance::policy::{policy_cases, run_policy, POLICY_LAB};
use dataplane_testkit::{require_root, Lab, LabNode};

/// Runs the policy table with a backend from `backend` (given the node's netns) per node.
fn policy_table(test: &str, backend: fn(Option<PathBuf>) -> Box<dyn Dataplane>) {
    if !require_root(test) {
        return;
    }
    let lab = Lab::new(POLICY_LAB).expect("lab");
    let report = run_policy(&lab, &policy_cases(), &mut |node: &LabNode| {
        backend(Some(node.netns.path().to_owned()))
    });
    report.assert_ok();
}

#[test]
fn policy_table_nftables() {
    policy_table("policy_table_nftables", |netns| {
        Box::new(NftablesDataplane::new(NetfilterConfig::nftables(netns)))
    });
}

#[test]
fn policy_table_iptables() {
    policy_table("policy_table_iptables", |netns| {
        Box::new(IptablesDataplane::new(NetfilterConfig::iptables(netns)))
    });
}
