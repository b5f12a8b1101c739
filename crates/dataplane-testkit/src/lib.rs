#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod cgroup;
pub mod conformance;
pub mod lab;
pub mod netns;
pub mod packet;
pub mod traffic;

pub use cgroup::{CgroupError, CgroupScope};
pub use lab::{
    Family, Lab, LabError, LabExternal, LabNode, LabPod, LabSpec, OTHER_SERVER_PORT, POD_NAMESPACE,
    SERVER_PORT,
};
pub use netns::{NetNs, NetNsError};
pub use traffic::{
    measure, probe, probe_batch, probe_from, probe_refused_at_once, send_forged, serve, sink,
    BatchOutcome, BatchProbe, Measurement, ProbeOutcome, Server, Sink, TcpSession, TrafficError,
};

/// Whether the test may run privileged code: `true` as root. Otherwise it panics when the
/// environment says `CI=true` (a skip in CI is a failure), or prints
/// `SKIPPED <test_name>: needs root` and returns `false`.
pub fn require_root(test_name: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test_name}: needs root, and CI=true forbids skipping"
    );
    eprintln!("SKIPPED {test_name}: needs root");
    false
}
