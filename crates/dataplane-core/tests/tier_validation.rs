//! The incremental validator on changes of cluster policies, the baseline, peer nodes, host
//! endpoints, host policies and failsafe ports: the error a full validation of the state
//! after the change gives (the first in the state's order; of two objects claiming one
//! priority or one node and interface, the later one named), from the changed objects and
//! the claims of those that stay. `Dataplane::apply_changes` of the fake refuses with it and
//! keeps the state it had, and applies a valid tier change incrementally.

mod strategies;
mod tier_edits;

use dataplane_core::{
    diff, synthetic, validate, ClusterPolicy, ClusterPolicySubject, Dataplane, DesiredState, Error,
    FakeDataplane, HostEndpoint, Incremental, LabelSelector, ValidationError, Validator,
};
use proptest::prelude::*;

/// What a full validation of `from` changed into `to` says (of the state `apply_to` builds,
/// whose order the incremental validator follows), and what the validator of `from` says.
fn judge(
    v: &Validator,
    from: &DesiredState,
    to: &DesiredState,
) -> (Result<(), ValidationError>, Result<(), ValidationError>) {
    let changes = diff(from, to);
    let mut applied = from.clone();
    changes.apply_to(&mut applied);
    let full = validate(&applied);
    let incremental = v.check(&from.node, &changes).map(|verdict| {
        assert_eq!(verdict, Incremental::Valid, "no change of the node");
    });
    (incremental, full)
}

fn all() -> ClusterPolicySubject {
    ClusterPolicySubject::Namespaces(LabelSelector::default())
}

/// Each kind of problem of synthetic's refused tier changes: the same error as a full
/// validation, naming the object and the field; through the fake's `apply_changes` too,
/// which keeps the state it had.
#[test]
fn each_refused_tier_change_names_object_and_field_as_a_full_validation() {
    let (base, cases) = synthetic::tier_invalid_changes(&synthetic::state(3, 1));
    validate(&base).expect("the tiered base is valid");
    let v = Validator::new(&base).expect("valid base");
    let mut fake = FakeDataplane::new();
    fake.apply(&base).expect("apply");
    assert_eq!(cases.len(), 7);
    for (bad, expected) in cases {
        let (incremental, full) = judge(&v, &base, &bad);
        assert_eq!(full.as_ref(), Err(&expected));
        assert_eq!(incremental, full, "{expected}");
        let object = expected.object().expect("names an object");
        assert!(
            expected.to_string().starts_with(&format!("{object}: ")),
            "{expected}"
        );
        let e = fake.apply_changes(&diff(&base, &bad)).unwrap_err();
        assert!(
            matches!(&e, Error::Invalid(got) if *got == expected),
            "{expected}: {e:?}"
        );
        assert_eq!(
            fake.applied().as_ref(),
            Some(&base),
            "{expected}: state changed"
        );
        // (after a failed apply the next is a full one: the trait's contract)
        fake.apply(&base).expect("apply");
    }
    // A valid tier change applies incrementally.
    let mut good = base.clone();
    good.cluster_policies[1].priority = 30;
    good.host_policies[0].ingress[0].source.nets =
        vec!["203.0.113.0/24".parse().expect("literal CIDR")];
    let report = fake
        .apply_changes(&diff(&base, &good))
        .expect("apply_changes");
    assert!(!report.full_sync, "{report:?}");
    assert_eq!(fake.applied().as_ref(), Some(&good));
}

/// A priority clash names the later policy in the state's order, whether the changed policy
/// is the earlier or the later one; priorities that move together do not clash; an added
/// policy is later than every one that stays, additions among themselves in name order.
#[test]
fn priority_clashes_name_the_later_policy_in_state_order() {
    let base = synthetic::state(1, 1)
        .with_cluster_policy(ClusterPolicy::new("b", 10, all()))
        .with_cluster_policy(ClusterPolicy::new("a", 20, all()));
    let mut v = Validator::new(&base).expect("valid base");
    let clash = |v: &Validator, from: &DesiredState, f: &dyn Fn(&mut DesiredState)| {
        let mut to = from.clone();
        f(&mut to);
        let (incremental, full) = judge(v, from, &to);
        assert_eq!(incremental, full);
        full.err().map(|e| e.to_string())
    };
    // `b` (first) takes `a`'s priority: `a` (second, unchanged) is named.
    assert_eq!(
        clash(&v, &base, &|s| s.cluster_policies[0].priority = 20).as_deref(),
        Some("cluster policy a: priority: 20 (also the priority of cluster policy b) appears more than once")
    );
    // `a` takes `b`'s: `a` is named.
    assert_eq!(
        clash(&v, &base, &|s| s.cluster_policies[1].priority = 10).as_deref(),
        Some("cluster policy a: priority: 10 (also the priority of cluster policy b) appears more than once")
    );
    // Swapped: no clash.
    assert_eq!(
        clash(&v, &base, &|s| {
            s.cluster_policies[0].priority = 20;
            s.cluster_policies[1].priority = 10;
        }),
        None
    );
    // Two additions at one priority: the second in name order is named (`0` before `c`).
    assert_eq!(
        clash(&v, &base, &|s| {
            s.cluster_policies.push(ClusterPolicy::new("c", 30, all()));
            s.cluster_policies.push(ClusterPolicy::new("0", 30, all()));
        })
        .as_deref(),
        Some("cluster policy c: priority: 30 (also the priority of cluster policy 0) appears more than once")
    );
    // An invalid policy before a clash in the state's order is what is reported.
    assert_eq!(
        clash(&v, &base, &|s| {
            s.cluster_policies[0].priority = 2000;
            s.cluster_policies.push(ClusterPolicy::new("c", 20, all()));
        })
        .as_deref(),
        Some("cluster policy b: priority: 2000 is out of range 0..=1000")
    );
    // Committed, the validator knows the new places and claims: `a` removed, `c` added at
    // 20, then `a` back at 20 is later than `c` and named.
    let mut next = base.clone();
    next.cluster_policies.remove(1);
    next.cluster_policies
        .push(ClusterPolicy::new("c", 20, all()));
    let changes = diff(&base, &next);
    assert_eq!(v.check(&base.node, &changes), Ok(Incremental::Valid));
    v.commit(&base.node, &changes);
    assert_eq!(
        clash(&v, &next, &|s| s.cluster_policies.push(ClusterPolicy::new("a", 20, all()))).as_deref(),
        Some("cluster policy a: priority: 20 (also the priority of cluster policy c) appears more than once")
    );
}

/// One host endpoint per node and interface: a clash with an unchanged endpoint, an
/// interface handed over in one change, a rename (a removal and an addition).
#[test]
fn host_endpoint_interfaces_stay_unique() {
    let base = synthetic::state(1, 1)
        .with_host_endpoint(HostEndpoint::new("one", "node-0", "eth0"))
        .with_host_endpoint(HostEndpoint::new("two", "node-0", "eth1"));
    let v = Validator::new(&base).expect("valid base");
    let check = |f: &dyn Fn(&mut DesiredState)| {
        let mut to = base.clone();
        f(&mut to);
        let (incremental, full) = judge(&v, &base, &to);
        assert_eq!(incremental, full);
        full.err().map(|e| e.to_string())
    };
    assert_eq!(
        check(&|s| s.host_endpoints[1].interface_name = "eth0".into()).as_deref(),
        Some("host endpoint two: interfaceName: eth0 on node node-0 (also host endpoint one) appears more than once")
    );
    assert_eq!(
        check(&|s| {
            s.host_endpoints[0].interface_name = "eth1".into();
            s.host_endpoints[1].interface_name = "eth2".into();
        }),
        None
    );
    assert_eq!(check(&|s| s.host_endpoints[0].name = "uno".into()), None);
    // Another node's eth0 is another interface.
    assert_eq!(check(&|s| s.host_endpoints[1].node = "node-1".into()), None);
}

/// A change set that files an object under another name than its own is refused, naming
/// the object (applied, it would hold the object twice or lose one).
#[test]
fn a_tier_object_filed_under_another_name_is_refused() {
    let base = synthetic::state(1, 1).with_cluster_policy(ClusterPolicy::new("a", 1, all()));
    let v = Validator::new(&base).expect("valid base");
    let mut to = base.clone();
    to.cluster_policies[0].priority = 2;
    let mut changes = diff(&base, &to);
    let change = changes.cluster_policies.remove("a").expect("a changed");
    changes.cluster_policies.insert("b".into(), change);
    let e = v.check(&base.node, &changes).unwrap_err();
    assert_eq!(
        e.to_string(),
        "cluster policy a: name: the change set files it under another name"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Steps of tier edits from a valid state: at every step the incremental validator's
    /// answer is exactly a full validation's of the state after the change; a valid step is
    /// committed and the next starts from it, a refused one is left out.
    #[test]
    fn incremental_tier_validation_is_full_validation(
        state in strategies::state(),
        steps in prop::collection::vec(tier_edits::edits(4), 1..4),
    ) {
        prop_assume!(validate(&state).is_ok());
        let mut v = Validator::new(&state).expect("valid state");
        let mut from = state;
        for edits in &steps {
            let mut to = from.clone();
            for e in edits {
                tier_edits::apply(&mut to, e);
            }
            let changes = diff(&from, &to);
            let mut applied = from.clone();
            changes.apply_to(&mut applied);
            let full = validate(&applied);
            let incremental = v.check(&from.node, &changes);
            prop_assert_eq!(
                incremental.clone().map(|_| ()),
                full.clone(),
                "edits {:?}", edits
            );
            if full.is_ok() {
                prop_assert_eq!(incremental, Ok(Incremental::Valid));
                v.commit(&from.node, &changes);
                from = applied;
            }
        }
        // What the validator holds after the steps is what one built from the state holds:
        // the way back to where it started is judged alike by both.
        let fresh = Validator::new(&from).expect("valid after the steps");
        let mut back = from.clone();
        for e in steps.iter().flatten() {
            tier_edits::apply(&mut back, e);
        }
        let changes = diff(&from, &back);
        prop_assert_eq!(
            v.check(&from.node, &changes),
            fresh.check(&from.node, &changes)
        );
    }
}
