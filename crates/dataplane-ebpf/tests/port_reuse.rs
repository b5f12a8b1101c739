//! Conntrack clashes on a reused client port (testkit's `run_port_reuse`, the same rows every
//! backend runs) against the eBPF backend: a new connection whose translated tuple is taken by
//! a live one gets another source port instead of overwriting its conntrack entries.

mod common;

use std::path::PathBuf;

use common::PinDirs;
use dataplane_core::Dataplane;
use dataplane_ebpf::{EbpfConfig, EbpfDataplane};
use dataplane_testkit::conformance::{run_port_reuse, STANDARD_LAB};
use dataplane_testkit::{require_root, Lab};

#[test]
fn port_reuse() {
    if !require_root("port_reuse") {
        return;
    }
    let lab = Lab::new(STANDARD_LAB).expect("lab");
    let pid = std::process::id();
    let dirs: Vec<PathBuf> = (0..STANDARD_LAB.nodes)
        .map(|i| PathBuf::from(format!("/sys/fs/bpf/dpe-reuse-{pid}-n{i}")))
        .collect();
    let _cleanup = PinDirs(dirs.clone());
    let report = run_port_reuse(&lab, &mut |node| {
        let dir = dirs[node.index].clone();
        let _ = std::fs::remove_dir_all(&dir);
        let mut config = EbpfConfig::new(dir);
        config.netns = Some(node.netns.path().to_owned());
        Box::new(EbpfDataplane::new(config).expect("eBPF dataplane loads")) as Box<dyn Dataplane>
    });
    eprintln!("{report}");
    report.assert_ok();
}
