//! Change tracking: `diff()` keeps `{previous, current}` per changed object and nothing for
//! unchanged ones; `ChangeSet::apply_to` replays a diff; `ChangeSet::merge` composes two.

mod strategies;

use dataplane_core::{
    diff, from_yaml, to_yaml, Backend, Change, ChangeSet, DesiredState, ObjectName, Service,
};
use proptest::prelude::*;
use strategies::normalised;

const FULL: &str = include_str!("data/full.yaml");

/// services: default/web, default/api; endpoints: default/web-0, default/api-0;
/// policies: default/web-ingress.
fn base() -> DesiredState {
    from_yaml(FULL).expect("tests/data/full.yaml parses")
}

fn name(namespace: &str, name: &str) -> ObjectName {
    ObjectName::new(namespace, name)
}

fn new_service(ns: &str, n: &str) -> Service {
    let mut s = base().services[1].clone();
    s.name = name(ns, n);
    s
}

/// Applies `changes` to a copy of `state`.
fn applied(changes: &ChangeSet, state: &DesiredState) -> DesiredState {
    let mut out = state.clone();
    changes.apply_to(&mut out);
    out
}

fn service_names(state: &DesiredState) -> Vec<String> {
    state.services.iter().map(|s| s.name.to_string()).collect()
}

#[test]
fn identical_states_have_no_changes() {
    let a = base();
    let changes = diff(&a, &a.clone());
    assert!(changes.is_empty(), "{changes:#?}");
    assert_eq!(changes.len(), 0);
    assert_eq!(changes, ChangeSet::default());
}

#[test]
fn reordering_objects_is_no_change() {
    let a = base();
    let mut b = a.clone();
    b.services.reverse();
    b.endpoints.reverse();
    assert!(diff(&a, &b).is_empty());
}

#[test]
fn added_service() {
    let a = base();
    let mut b = a.clone();
    let added = new_service("default", "added");
    b.services.push(added.clone());
    let changes = diff(&a, &b);
    assert_eq!(changes.len(), 1);
    assert!(changes.node.is_none() && changes.endpoints.is_empty() && changes.policies.is_empty());
    assert_eq!(
        changes.services.get(&name("default", "added")),
        Some(&Change {
            previous: None,
            current: Some(added),
        })
    );
    assert_eq!(applied(&changes, &a), b);
}

#[test]
fn removed_service() {
    let a = base();
    let mut b = a.clone();
    let removed = b.services.remove(0);
    let changes = diff(&a, &b);
    assert_eq!(changes.len(), 1);
    assert_eq!(
        changes.services.get(&name("default", "web")),
        Some(&Change {
            previous: Some(removed),
            current: None,
        })
    );
    assert_eq!(applied(&changes, &a), b);
}

#[test]
fn changed_service_keeps_previous_and_current() {
    let a = base();
    let mut b = a.clone();
    b.services[1]
        .backends
        .push(Backend::new("10.244.2.9".parse().unwrap()));
    let changes = diff(&a, &b);
    assert_eq!(changes.len(), 1, "{changes:#?}");
    let change = &changes.services[&name("default", "api")];
    assert_eq!(change.previous.as_ref(), Some(&a.services[1]));
    assert_eq!(change.current.as_ref(), Some(&b.services[1]));
    assert_eq!(applied(&changes, &a), b);
}

#[test]
fn a_backends_own_port_is_a_change_of_its_service() {
    let a = base();
    let mut b = a.clone();
    b.services[1].backends[0].port = Some(9090);
    let changes = diff(&a, &b);
    assert_eq!(changes.len(), 1, "{changes:#?}");
    let change = &changes.services[&name("default", "api")];
    assert_eq!(change.current.as_ref(), Some(&b.services[1]));
    assert_eq!(applied(&changes, &a), b);
    // Back to the service port's number: a change again, and the two merge into nothing.
    let mut changes = diff(&a, &b);
    changes.merge(diff(&b, &a));
    assert!(changes.is_empty(), "{changes:#?}");
}

#[test]
fn a_rewrite_to_the_same_value_vanishes() {
    let a = base();
    // Rebuilt from its own YAML: another value, equal: no change.
    let b = from_yaml(&to_yaml(&a).expect("to_yaml")).expect("from_yaml");
    assert!(diff(&a, &b).is_empty());
    // A change and its undo merge into nothing.
    let mut c = a.clone();
    c.services[0].ports[0].target_port = 9999;
    let mut changes = diff(&a, &c);
    assert_eq!(changes.len(), 1);
    changes.merge(diff(&c, &a));
    assert!(changes.is_empty(), "{changes:#?}");
}

#[test]
fn node_change() {
    let a = base();
    let mut b = a.clone();
    b.node.mtu = 1400;
    b.node.masquerade.all = true;
    let changes = diff(&a, &b);
    assert_eq!(changes.len(), 1);
    assert!(changes.services.is_empty());
    assert_eq!(
        changes.node,
        Some(Change {
            previous: Some(a.node.clone()),
            current: Some(b.node.clone()),
        })
    );
    assert_eq!(applied(&changes, &a), b);
}

#[test]
fn endpoint_and_policy_changes() {
    let a = base();
    let mut b = a.clone();
    b.endpoints[0].labels.insert("version".into(), "2".into());
    b.endpoints.remove(1);
    b.policies[0].egress.clear();
    let changes = diff(&a, &b);
    assert_eq!(changes.len(), 3, "{changes:#?}");
    assert!(changes.services.is_empty() && changes.node.is_none());
    assert!(changes.endpoints[&name("default", "web-0")]
        .current
        .is_some());
    assert!(changes.endpoints[&name("default", "api-0")]
        .current
        .is_none());
    assert_eq!(
        changes.policies[&name("default", "web-ingress")]
            .current
            .as_ref(),
        Some(&b.policies[0])
    );
    assert_eq!(applied(&changes, &a), b);
}

#[test]
fn namespace_and_peer_pod_changes() {
    use dataplane_core::{Namespace, PeerPod};
    let ip = |s: &str| s.parse::<std::net::IpAddr>().expect("test address");
    let mut a = base();
    a.namespaces.clear();
    a.pods.clear();
    let a = a
        .with_namespace(Namespace::new("x").with_label("team", "a"))
        .with_namespace(Namespace::new("y"))
        .with_pod(PeerPod::new(name("x", "b"), [ip("10.244.9.2")]).with_label("pod", "b"))
        .with_pod(PeerPod::new(name("y", "c"), [ip("10.244.9.3")]));
    let mut b = a.clone();
    // Relabelling a namespace is one change, whatever the number of pods in it.
    b.namespaces[0].labels.insert("team".into(), "b".into());
    b.namespaces.remove(1);
    b.pods[0].labels.insert("pod".into(), "b2".into());
    b.pods
        .push(PeerPod::new(name("z", "a"), [ip("10.244.9.4")]));
    let changes = diff(&a, &b);
    assert_eq!(changes.len(), 4, "{changes:#?}");
    assert_eq!(
        changes.namespaces["x"].current.as_ref(),
        Some(&b.namespaces[0])
    );
    assert!(changes.namespaces["y"].current.is_none());
    assert_eq!(
        changes.pods[&name("x", "b")].previous.as_ref(),
        Some(&a.pods[0])
    );
    assert!(changes.pods[&name("z", "a")].previous.is_none());
    assert_eq!(applied(&changes, &a), b);
    // Round trip through JSON (pods keyed `namespace/name`, namespaces by name).
    let json = serde_json::to_string(&changes).expect("serialise");
    assert!(json.contains("\"x/b\"") && json.contains("\"y\""), "{json}");
    let back: ChangeSet = serde_json::from_str(&json).expect("deserialise");
    assert_eq!(back, changes);
    // A later relabel back cancels out in a merge.
    let mut merged = changes.clone();
    merged.merge(diff(&b, &a));
    assert!(merged.is_empty(), "{merged:#?}");
}

#[test]
fn apply_keeps_order_of_kept_objects_and_appends_additions_by_name() {
    let a = base(); // web, api
    let mut b = a.clone();
    b.services.remove(0);
    b.services.insert(0, new_service("default", "zeta"));
    b.services.push(new_service("default", "alpha"));
    b.services[1].ports[0].port = 8080; // api changes in place
    let out = applied(&diff(&a, &b), &a);
    assert_eq!(
        service_names(&out),
        ["default/api", "default/alpha", "default/zeta"]
    );
    assert_eq!(normalised(out), normalised(b));
}

#[test]
fn apply_leaves_objects_the_diff_does_not_name() {
    let a = base();
    let mut b = a.clone();
    b.services[0].ports[0].port = 8081;
    let changes = diff(&a, &b);
    let mut other = a.clone();
    other.services.push(new_service("other", "bystander"));
    changes.apply_to(&mut other);
    assert_eq!(
        service_names(&other),
        ["default/web", "default/api", "other/bystander"]
    );
    assert_eq!(other.services[0], b.services[0]);
}

#[test]
fn merge_of_add_then_remove_vanishes_and_add_then_change_is_an_add() {
    let a = base();
    let mut b = a.clone();
    b.services.push(new_service("default", "temp"));
    let mut c = b.clone();
    c.services.pop();
    let mut changes = diff(&a, &b);
    changes.merge(diff(&b, &c));
    assert!(changes.is_empty(), "{changes:#?}");

    let mut c = b.clone();
    c.services[2].ports[0].target_port = 1234;
    let mut changes = diff(&a, &b);
    changes.merge(diff(&b, &c));
    assert_eq!(
        changes.services.get(&name("default", "temp")),
        Some(&Change {
            previous: None,
            current: Some(c.services[2].clone()),
        })
    );
    assert_eq!(changes.len(), 1);
}

#[test]
fn merge_of_remove_then_readd_is_a_change_or_nothing() {
    let a = base();
    let mut b = a.clone();
    let web = b.services.remove(0);
    // Same object back: nothing.
    let mut c = b.clone();
    c.services.push(web.clone());
    let mut changes = diff(&a, &b);
    changes.merge(diff(&b, &c));
    assert!(changes.is_empty(), "{changes:#?}");
    // Another version back: a change from the old to the new one.
    let mut other_version = web.clone();
    other_version.backends.clear();
    let mut c = b.clone();
    c.services.push(other_version.clone());
    let mut changes = diff(&a, &b);
    changes.merge(diff(&b, &c));
    assert_eq!(
        changes.services.get(&name("default", "web")),
        Some(&Change {
            previous: Some(web),
            current: Some(other_version),
        })
    );
}

#[test]
fn change_set_serialises() {
    let a = base();
    let mut b = a.clone();
    b.node.mtu = 1400;
    b.services.remove(1);
    let changes = diff(&a, &b);
    let json = serde_json::to_string(&changes).expect("serialise");
    let back: ChangeSet = serde_json::from_str(&json).expect("deserialise");
    assert_eq!(back, changes);
}

/// A pair of states: `b` is `a` reordered, `a` with one small change, or unrelated.
fn pair() -> impl Strategy<Value = (DesiredState, DesiredState)> {
    (strategies::state(), strategies::state(), 0u8..4).prop_map(|(a, other, how)| {
        let mut b = a.clone();
        match how {
            0 => {
                b.services.reverse();
                b.policies.reverse();
                b.namespaces.reverse();
                b.pods.reverse();
                b.cluster_policies.reverse();
                b.nodes.reverse();
                b.host_endpoints.reverse();
                b.host_policies.reverse();
            }
            1 => {
                if let Some(s) = b.services.first_mut() {
                    s.ports[0].target_port = s.ports[0].target_port.checked_add(1).unwrap_or(1);
                    // A backend moving to its own port (a rolling update of a named port).
                    if s.ports.len() == 1 {
                        if let Some(be) = s.backends.first_mut() {
                            be.port = Some(be.port.map_or(1, |p| p.checked_add(1).unwrap_or(1)));
                        }
                    }
                } else {
                    b.node.mtu += 1;
                }
            }
            2 => {
                if let Some(e) = b.endpoints.pop() {
                    b.endpoints.insert(0, e);
                }
                b.node.masquerade.enabled = !b.node.masquerade.enabled;
            }
            _ => b = other,
        }
        (a, b)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn diff_with_itself_is_empty(a in strategies::state()) {
        prop_assert!(diff(&a, &a).is_empty());
    }

    #[test]
    fn apply_turns_old_into_new((a, b) in pair()) {
        let changes = diff(&a, &b);
        let out = applied(&changes, &a);
        prop_assert_eq!(normalised(out), normalised(b));
    }

    #[test]
    fn indexed_apply_turns_old_into_new_and_keeps_the_index((a, b) in pair()) {
        let changes = diff(&a, &b);
        let mut out = a.clone();
        let mut index = dataplane_core::service_index(&out);
        changes.apply_to_indexed(&mut out, &mut index);
        prop_assert_eq!(&index, &dataplane_core::service_index(&out));
        prop_assert_eq!(normalised(out), normalised(b));
    }

    #[test]
    fn merged_diffs_go_from_first_to_last((a, b) in pair(), c in strategies::state()) {
        let mut changes = diff(&a, &b);
        changes.merge(diff(&b, &c));
        prop_assert_eq!(normalised(applied(&changes, &a)), normalised(c.clone()));
        // The merge is exactly the direct diff.
        prop_assert_eq!(changes, diff(&a, &c));
    }

    #[test]
    fn diff_is_empty_iff_equal_up_to_order((a, b) in pair()) {
        let changes = diff(&a, &b);
        prop_assert_eq!(
            changes.is_empty(),
            normalised(a.clone()) == normalised(b.clone()),
            "{:#?}", changes
        );
        prop_assert_eq!(
            changes.len(),
            usize::from(changes.node.is_some())
                + changes.services.len()
                + changes.endpoints.len()
                + changes.policies.len()
                + changes.namespaces.len()
                + changes.pods.len()
                + changes.cluster_policies.len()
                + usize::from(changes.baseline_policy.is_some())
                + changes.nodes.len()
                + changes.host_endpoints.len()
                + changes.host_policies.len()
                + usize::from(changes.failsafe_ports.is_some())
        );
    }

    #[test]
    fn diff_names_exactly_the_differing_objects((a, b) in pair()) {
        let changes = diff(&a, &b);
        let differing = |old: &[Service], new: &[Service]| -> Vec<ObjectName> {
            let mut names: Vec<ObjectName> = old.iter().chain(new).map(|s| s.name.clone()).collect();
            names.sort();
            names.dedup();
            names.retain(|n| {
                old.iter().find(|s| &s.name == n) != new.iter().find(|s| &s.name == n)
            });
            names
        };
        let expected = differing(&a.services, &b.services);
        prop_assert_eq!(changes.services.keys().cloned().collect::<Vec<_>>(), expected);
        prop_assert_eq!(changes.node.is_some(), a.node != b.node);
        for change in changes.services.values() {
            prop_assert!(change.previous.is_some() || change.current.is_some());
            prop_assert_ne!(&change.previous, &change.current);
        }
    }
}
