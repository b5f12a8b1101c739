//! The project's standard conformance table (dataplane-testkit), the one every backend runs,
//! against both netfilter flavours on every lab node. Needs root.

use dataplane_core::Dataplane;
use dataplane_iptables::{IptablesDataplane, NetfilterConfig, NftablesDataplane};
use dataplane_testkit::{conformance, require_root, Lab, LabNode};

#[test]
fn standard_table_nftables() {
    if !require_root("standard_table_nftables") {
        return;
    }
    let lab = Lab::new(conformance::STANDARD_LAB).expect("lab");
    let report = conformance::run(
        &lab,
        &conformance::standard_cases(),
        &mut |node: &LabNode| -> Box<dyn Dataplane> {
            Box::new(NftablesDataplane::new(NetfilterConfig::nftables(Some(
                node.netns.path().to_owned(),
            ))))
        },
    );
    eprintln!("{report}");
    report.assert_ok();
}

#[test]
fn standard_table_iptables() {
    if !require_root("standard_table_iptables") {
        return;
    }
    let lab = Lab::new(conformance::STANDARD_LAB).expect("lab");
    let report = conformance::run(
        &lab,
        &conformance::standard_cases(),
        &mut |node: &LabNode| -> Box<dyn Dataplane> {
            Box::new(IptablesDataplane::new(NetfilterConfig::iptables(Some(
                node.netns.path().to_owned(),
            ))))
        },
    );
    eprintln!("{report}");
    report.assert_ok();
}
