//! The L2 announcement conformance table from `dataplane-testkit` (issue 23) on the eBPF
//! backend: an external client on the nodes' segment, with no route, resolves a LoadBalancer
//! IP and an ExternalIP inside the node subnet by ARP and neighbour discovery to the
//! announcing node's MAC and reaches the service through it (TCP, UDP, IPv4, IPv6); an
//! unannounced address does not resolve; a withdrawn one stops resolving; on failover the
//! client's entry follows the new announcer's gratuitous ARP / unsolicited NA without a flush.
//! The same table `dataplane-iptables/tests/l2_conformance.rs` runs on netfilter. Every node
//! runs the default configuration (TC responder, `EbpfConfig::l2_liveness` 3 s): the runner
//! syncs every node at each step, which refreshes the liveness; the lapse itself is
//! `tests/l2_announce.rs`'. Needs root.

mod common;

use dataplane_testkit::conformance::l2::{l2_cases, run_l2, L2_LAB};
use dataplane_testkit::{require_root, Lab};

#[test]
fn l2_table_ebpf() {
    if !require_root("l2_table_ebpf") {
        return;
    }
    let lab = Lab::new(L2_LAB).expect("lab");
    let (_cleanup, mut factory) = common::lab_dataplanes("dpe-l2conf", L2_LAB.nodes);
    let report = run_l2(&lab, &l2_cases(), &mut factory);
    report.assert_ok();
}
