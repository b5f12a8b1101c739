//! Runs `examples/scheduler.rs` as a test: a toy scheduler places workloads on a two-node lab
//! (eBPF on node-0, nftables on node-1), moves one, and fails unless traffic follows it.

#[path = "../examples/scheduler.rs"]
#[allow(dead_code)] // the example's `main`
mod scheduler;

#[test]
fn traffic_follows_a_moved_workload() {
    if !dataplane_testkit::require_root("traffic_follows_a_moved_workload") {
        return;
    }
    if let Err(e) = scheduler::run() {
        panic!("the scheduler example failed: {e}");
    }
}
