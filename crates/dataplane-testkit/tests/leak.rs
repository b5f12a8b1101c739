//! A lab leaves nothing behind: no namespace, no link in the root namespace, after a normal
//! drop and after a panic.

use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::Command;
use std::sync::Mutex;

use dataplane_testkit::{require_root, Lab, LabSpec};

fn ip_netns_list() -> BTreeSet<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        // `ip netns list` prints "name (id: N)" for namespaces with an id.
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

fn root_links() -> BTreeSet<String> {
    let out = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split(':').nth(1).map(|n| n.trim().to_owned()))
        .collect()
}

/// Links that appeared in the root namespace and carry a name the lab gives its interfaces
/// (other programs on the machine may add links of their own meanwhile).
fn lab_links(now: &BTreeSet<String>, before: &BTreeSet<String>) -> Vec<String> {
    let lab_name = |n: &str| {
        let n = n.split('@').next().unwrap_or(n);
        n == "br0"
            || ["n", "x", "vp"].iter().any(|p| {
                n.strip_prefix(p).is_some_and(|rest| {
                    !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit())
                })
            })
    };
    now.difference(before)
        .filter(|n| lab_name(n))
        .cloned()
        .collect()
}

fn spec() -> LabSpec {
    LabSpec {
        nodes: 2,
        pods_per_node: 2,
        external_clients: 1,
        ipv6: true,
    }
}

fn names(lab: &Lab) -> Vec<String> {
    lab.namespaces()
        .iter()
        .map(|n| n.name().to_owned())
        .collect()
}

#[test]
fn drop_removes_every_namespace() {
    if !require_root("drop_removes_every_namespace") {
        return;
    }
    let links_before = root_links();
    let lab = Lab::new(spec()).unwrap();
    let ours = names(&lab);
    // underlay + 2 nodes + 4 pods + 1 external client
    assert_eq!(ours.len(), 8, "{ours:?}");
    let listed = ip_netns_list();
    for name in &ours {
        assert!(listed.contains(name), "{name} missing from `ip netns list`");
        assert!(name.starts_with(lab.prefix()));
    }
    // Nothing was created in the root namespace.
    assert_eq!(
        lab_links(&root_links(), &links_before),
        Vec::<String>::new()
    );
    drop(lab);
    let listed = ip_netns_list();
    for name in &ours {
        assert!(!listed.contains(name), "{name} leaked");
    }
    let leaked = lab_links(&root_links(), &links_before);
    assert!(
        leaked.is_empty(),
        "links leaked into the root namespace: {leaked:?}"
    );
}

#[test]
fn panic_removes_every_namespace() {
    if !require_root("panic_removes_every_namespace") {
        return;
    }
    let links_before = root_links();
    let seen = Mutex::new(Vec::new());
    let result = catch_unwind(AssertUnwindSafe(|| {
        let lab = Lab::new(spec()).unwrap();
        seen.lock().unwrap().extend(names(&lab));
        panic!("a test failing while it holds a lab");
    }));
    assert!(result.is_err());
    let ours = seen.into_inner().unwrap();
    assert_eq!(ours.len(), 8);
    let listed = ip_netns_list();
    for name in &ours {
        assert!(!listed.contains(name), "{name} leaked after a panic");
    }
    let leaked = lab_links(&root_links(), &links_before);
    assert!(
        leaked.is_empty(),
        "links leaked into the root namespace: {leaked:?}"
    );
}

#[test]
fn labs_in_parallel_do_not_collide() {
    if !require_root("labs_in_parallel_do_not_collide") {
        return;
    }
    let labs: Vec<Lab> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3).map(|_| s.spawn(|| Lab::new(spec()))).collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap().unwrap())
            .collect()
    });
    let all: BTreeSet<String> = labs.iter().flat_map(names).collect();
    assert_eq!(all.len(), 3 * 8, "names must be unique across labs");
    drop(labs);
    let listed = ip_netns_list();
    assert!(all.iter().all(|n| !listed.contains(n)));
}
