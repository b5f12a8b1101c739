//! The project's standard conformance table (dataplane-testkit), the one every backend runs,
//! against both netfilter flavours on every lab node. Needs root.

use std::path::PathBuf;

use dataplane_core::Dataplane;
use dataplane_iptables::{IptablesDataplane, IptablesMode, NetfilterConfig, NftablesDataplane};
use dataplane_testkit::{conformance, require_root, Lab, LabNode};

/// Runs the standard table with a backend from `backend` (given the node's netns) per node.
fn standard_table(test: &str, backend: fn(Option<PathBuf>) -> Box<dyn Dataplane>) {
    if !require_root(test) {
        return;
    }
    let lab = Lab::new(conformance::STANDARD_LAB).expect("lab");
    let report = conformance::run(
        &lab,
        &conformance::standard_cases(),
        &mut |node: &LabNode| backend(Some(node.netns.path().to_owned())),
    );
    eprintln!("{report}");
    report.assert_ok();
}

#[test]
fn standard_table_nftables() {
    standard_table("standard_table_nftables", |netns| {
        Box::new(NftablesDataplane::new(NetfilterConfig::nftables(netns)))
    });
}

#[test]
fn standard_table_iptables() {
    standard_table("standard_table_iptables", |netns| {
        Box::new(IptablesDataplane::new(NetfilterConfig::iptables(netns)))
    });
}

/// The iptables flavour on `x_tables` (`iptables-legacy`): the table above runs on
/// `nf_tables`, which the mode detection picks in an empty namespace.
#[test]
fn standard_table_iptables_legacy() {
    standard_table("standard_table_iptables_legacy", |netns| {
        let mut config = NetfilterConfig::iptables(netns);
        config.iptables_mode = IptablesMode::Legacy;
        Box::new(IptablesDataplane::new(config))
    });
}

/// The iptables flavour without the hairpin ipset: this node's backends keep a chain each
/// that marks the hairpin (`NetfilterConfig::hairpin_ipset`).
#[test]
fn standard_table_iptables_without_hairpin_set() {
    standard_table("standard_table_iptables_without_hairpin_set", |netns| {
        let mut config = NetfilterConfig::iptables(netns);
        config.hairpin_ipset = false;
        Box::new(IptablesDataplane::new(config))
    });
}

/// The nftables flavour with `shared_pick_chains`: the simple service ports pick through the
/// shared chains (`pick-v4-<slots>` and the `service-slots` maps), the others keep theirs.
#[test]
fn standard_table_nftables_shared_pick_chains() {
    standard_table("standard_table_nftables_shared_pick_chains", |netns| {
        let mut config = NetfilterConfig::nftables(netns);
        config.shared_pick_chains = true;
        Box::new(NftablesDataplane::new(config))
    });
}
