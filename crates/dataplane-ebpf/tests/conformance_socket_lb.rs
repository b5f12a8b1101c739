//! The conformance table against the eBPF backend with socket-level load balancing and host
//! routing on: every
//! node's pods (threads of this process inside their namespaces) are in a threaded cgroup of
//! their own, where that node's dataplane attaches its socket hooks, as a node's dataplane
//! would attach to the cgroup of its pods. External clients stay outside, as they are. The
//! table's expectations are the same as without socket LB: what the hooks do not take over
//! the TC programs still do. One check differs on purpose: a pod reaching itself through a
//! service (hairpin) is connected to itself inside its own namespace and sees its own address,
//! where the reference model (kube-proxy, the TC path) masquerades it to the node's: that
//! masquerade exists only because their packet leaves the pod and comes back over its veth.
//! The hairpin rows still check that the pod reaches itself, not the source it sees
//! (`tests/socket_lb.rs` checks that one).
//!
//! Its own binary: the hooks see the sockets of this process's threads.

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use common::PinDirs;
use dataplane_core::{
    ApplyReport, Capabilities, ChangeSet, Dataplane, DesiredState, Error, Flow, ObservedState,
    Stats,
};
use dataplane_ebpf::{EbpfConfig, EbpfDataplane};
use dataplane_testkit::conformance::{run, standard_cases, Seen, STANDARD_LAB};
use dataplane_testkit::{require_root, CgroupScope, Lab};

/// The eBPF dataplane, adding its `socket_translated` counter to `connects` when the run
/// resets it (the reset removes the counters).
struct Counted {
    inner: EbpfDataplane,
    connects: Arc<AtomicU64>,
}

impl Dataplane for Counted {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn apply(&mut self, desired: &DesiredState) -> Result<ApplyReport, Error> {
        self.inner.apply(desired)
    }
    fn apply_changes(&mut self, changes: &ChangeSet) -> Result<ApplyReport, Error> {
        self.inner.apply_changes(changes)
    }
    fn observe(&self) -> Result<ObservedState, Error> {
        self.inner.observe()
    }
    fn flows(&self) -> Result<Vec<Flow>, Error> {
        self.inner.flows()
    }
    fn stats(&self) -> Result<Stats, Error> {
        self.inner.stats()
    }
    fn reset(&mut self) -> Result<(), Error> {
        let n = self.inner.stats()?.other["socket_translated"];
        self.connects.fetch_add(n, Ordering::Relaxed);
        self.inner.reset()
    }
}

#[test]
fn conformance_table_with_socket_lb() {
    if !require_root("conformance_table_with_socket_lb") {
        return;
    }
    let lab = Lab::new(STANDARD_LAB).expect("lab");
    let pid = std::process::id();
    let mut scope = CgroupScope::enter(&format!("dpe-conf-sock-{pid}")).expect("own cgroup v2");
    let cgroups: Vec<PathBuf> = (0..STANDARD_LAB.nodes)
        .map(|i| {
            let pods = lab.pods_on(i).map(|p| &p.netns);
            scope
                .threaded_child(&format!("node-{i}"), pods)
                .expect("threaded cgroup for the node's pods")
        })
        .collect();
    let dirs: Vec<PathBuf> = (0..STANDARD_LAB.nodes)
        .map(|i| PathBuf::from(format!("/sys/fs/bpf/dpe-conf-sock-{pid}-n{i}")))
        .collect();
    let _cleanup = PinDirs(dirs.clone());
    let mut cases = standard_cases();
    let hairpin: Vec<&mut _> = cases
        .iter_mut()
        // ("hairpin ..." and the rows of a pod reaching its own externalTrafficPolicy: Local
        // service, which the socket hook balances too: the pod keeps its address there)
        .filter(|c| c.name.contains("hairpin"))
        .collect();
    assert!(!hairpin.is_empty(), "the table has hairpin rows");
    for case in hairpin {
        assert_eq!(case.source_seen, Seen::IngressNode);
        case.source_seen = Seen::Any;
    }
    let connects = Arc::new(AtomicU64::new(0));
    let report = run(&lab, &cases, &mut |node| {
        let dir = dirs[node.index].clone();
        let _ = std::fs::remove_dir_all(&dir);
        let mut config = EbpfConfig::new(dir);
        config.netns = Some(node.netns.path().to_owned());
        config.socket_lb_cgroup = Some(cgroups[node.index].clone());
        config.host_routing = true;
        Box::new(Counted {
            inner: EbpfDataplane::new(config).expect("eBPF dataplane loads"),
            connects: Arc::clone(&connects),
        }) as Box<dyn Dataplane>
    });
    report.assert_ok();
    // The rows ran through the socket hooks, not only through TC.
    let connects = connects.load(Ordering::Relaxed);
    assert!(connects > 20, "connects balanced at the socket: {connects}");
    eprintln!("conformance with socket LB: {connects} connects balanced at the socket");
    drop(scope);
}
