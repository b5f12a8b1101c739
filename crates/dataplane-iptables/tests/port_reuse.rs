//! Conntrack clashes on a reused client port (testkit's `run_port_reuse`) against both
//! netfilter flavours: netfilter's NAT clash handling gives the new connection another source
//! port, so a long connection survives short ones from its port. Needs root.

use dataplane_core::Dataplane;
use dataplane_iptables::{IptablesDataplane, NetfilterConfig, NftablesDataplane};
use dataplane_testkit::{conformance, require_root, Lab, LabNode};

#[test]
fn port_reuse_nftables() {
    if !require_root("port_reuse_nftables") {
        return;
    }
    let lab = Lab::new(conformance::STANDARD_LAB).expect("lab");
    let report = conformance::run_port_reuse(&lab, &mut |node: &LabNode| -> Box<dyn Dataplane> {
        Box::new(NftablesDataplane::new(NetfilterConfig::nftables(Some(
            node.netns.path().to_owned(),
        ))))
    });
    eprintln!("{report}");
    report.assert_ok();
}

#[test]
fn port_reuse_iptables() {
    if !require_root("port_reuse_iptables") {
        return;
    }
    let lab = Lab::new(conformance::STANDARD_LAB).expect("lab");
    let report = conformance::run_port_reuse(&lab, &mut |node: &LabNode| -> Box<dyn Dataplane> {
        Box::new(IptablesDataplane::new(NetfilterConfig::iptables(Some(
            node.netns.path().to_owned(),
        ))))
    });
    eprintln!("{report}");
    report.assert_ok();
}
