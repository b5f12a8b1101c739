//! The NetworkPolicy conformance table from `dataplane-testkit` (the Kubernetes e2e suite's
//! reachability matrices, namespaces x, y, z with pods a, b, c over two nodes), with real TCP
//! and UDP traffic, against the eBPF backend (one `EbpfDataplane` per lab node, each with its
//! own pin directory).

mod common;

use std::path::PathBuf;

use common::PinDirs;
use dataplane_core::Dataplane;
use dataplane_ebpf::{EbpfConfig, EbpfDataplane};
use dataplane_testkit::conformance::policy::{policy_cases, run_policy, POLICY_LAB};
use dataplane_testkit::{require_root, Lab};

#[test]
fn policy_conformance_table() {
    if !require_root("policy_conformance_table") {
        return;
    }
    let lab = Lab::new(POLICY_LAB).expect("lab");
    let pid = std::process::id();
    let dirs: Vec<PathBuf> = (0..POLICY_LAB.nodes)
        .map(|i| PathBuf::from(format!("/sys/fs/bpf/dpe-pol-{pid}-n{i}")))
        .collect();
    let _cleanup = PinDirs(dirs.clone());
    let report = run_policy(&lab, &policy_cases(), &mut |node| {
        let dir = dirs[node.index].clone();
        let _ = std::fs::remove_dir_all(&dir);
        let mut config = EbpfConfig::new(dir);
        config.netns = Some(node.netns.path().to_owned());
        Box::new(EbpfDataplane::new(config).expect("eBPF dataplane loads")) as Box<dyn Dataplane>
    });
    report.assert_ok();
}
