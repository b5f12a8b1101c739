//! `CgroupScope`: threads the testkit starts in an assigned namespace join its threaded cgroup,
//! and stop joining it once the scope is gone. Its own binary: the scope moves this process.

use dataplane_testkit::{require_root, CgroupScope, Lab, LabSpec};

/// The cgroup v2 path of the calling thread (`/proc/thread-self/cgroup`, line `0::PATH`).
fn own_cgroup() -> String {
    let text = std::fs::read_to_string("/proc/thread-self/cgroup").expect("read own cgroup");
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a cgroup v2 line")
        .to_owned()
}

#[test]
fn threads_in_an_assigned_namespace_join_the_threaded_child() {
    if !require_root("threads_in_an_assigned_namespace_join_the_threaded_child") {
        return;
    }
    let lab = Lab::new(LabSpec {
        nodes: 1,
        pods_per_node: 2,
        external_clients: 0,
        ipv6: false,
    })
    .expect("lab");
    let before = own_cgroup();
    let pid = std::process::id();
    let mut scope = CgroupScope::enter(&format!("dptk-cgroup-test-{pid}")).expect("own cgroup v2");
    let scope_name = format!("dptk-cgroup-test-{pid}");
    assert!(own_cgroup().ends_with(&scope_name), "{}", own_cgroup());
    let child = scope
        .threaded_child("pod-0", [&lab.pod(0).netns])
        .expect("threaded child");
    assert!(child.starts_with(scope.path()));

    let in_pod0 = lab.pod(0).netns.run(own_cgroup).expect("run in pod 0");
    assert!(
        in_pod0.ends_with(&format!("{scope_name}/pod-0")),
        "a thread entering pod 0 is in the threaded child: {in_pod0}"
    );
    // A clone of the handle carries the assignment too.
    let clone = lab.pod(0).netns.clone();
    assert_eq!(clone.thread_cgroup(), Some(child.clone()));
    let in_pod1 = lab.pod(1).netns.run(own_cgroup).expect("run in pod 1");
    assert!(
        in_pod1.ends_with(&scope_name),
        "a thread entering an unassigned pod stays in the scope: {in_pod1}"
    );

    drop(scope);
    assert_eq!(
        lab.pod(0).netns.thread_cgroup(),
        None,
        "the assignment ends"
    );
    assert_eq!(own_cgroup(), before, "back where the process was");
    let after = lab.pod(0).netns.run(own_cgroup).expect("run in pod 0");
    assert_eq!(after, before);
}
