//! The L2 announcement conformance table from `dataplane-testkit` (issue 23): an external
//! client on the nodes' segment, with no route, resolves a LoadBalancer IP and an ExternalIP
//! inside the node subnet by ARP and neighbour discovery to the announcing node's MAC and
//! reaches the service through it (TCP, UDP, IPv4, IPv6); an unannounced address does not
//! resolve; a withdrawn one stops resolving; on failover the client's entry follows the new
//! announcer's gratuitous ARP / unsolicited NA without a flush. Both netfilter flavours, on
//! every lab node. A backend without `Capabilities::l2_announcements` skips every case as a
//! visible row. Needs root.

use std::path::PathBuf;

use dataplane_core::Dataplane;
use dataplane_iptables::{IptablesDataplane, NetfilterConfig, NftablesDataplane};
use dataplane_testkit::conformance::l2::{l2_cases, run_l2, L2_LAB};
use dataplane_testkit::{require_root, Lab, LabNode};

/// Runs the L2 table with a backend from `backend` (given the node's netns) per node.
fn l2_table(test: &str, backend: fn(Option<PathBuf>) -> Box<dyn Dataplane>) {
    if !require_root(test) {
        return;
    }
    let lab = Lab::new(L2_LAB).expect("lab");
    let report = run_l2(&lab, &l2_cases(), &mut |node: &LabNode| {
        backend(Some(node.netns.path().to_owned()))
    });
    report.assert_ok();
}

#[test]
fn l2_table_nftables() {
    l2_table("l2_table_nftables", |netns| {
        Box::new(NftablesDataplane::new(NetfilterConfig::nftables(netns)))
    });
}

#[test]
fn l2_table_iptables() {
    l2_table("l2_table_iptables", |netns| {
        Box::new(IptablesDataplane::new(NetfilterConfig::iptables(netns)))
    });
}
