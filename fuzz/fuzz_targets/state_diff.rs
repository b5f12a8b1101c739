//! Pairs of desired states (valid ones from `dataplane_fuzz::gen`, some broken on purpose)
//! through validate → `diff` → `apply_to`: never a panic; when both states validate,
//! `apply_to(old, diff(old, new))` is `new` (up to order: `apply_to` keeps the order of what
//! stays and appends additions), so is the service-indexed `apply_to_indexed`, the diff is
//! empty exactly when the states are equal up to order, and the incremental validator reaches
//! the verdict a full validation of the new state does (for a change of the cluster-wide
//! policy objects alone, the very error).
#![no_main]

use arbitrary::Unstructured;
use dataplane_core::{diff, service_index, validate, Incremental, Validator};
use dataplane_fuzz::gen::{self, normalised};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(old) = gen::wild_state(&mut u) else {
        return;
    };
    let Ok(new) = gen::next_state(&mut u, &old) else {
        return;
    };
    let (old_ok, new_ok) = (validate(&old).is_ok(), validate(&new).is_ok());
    // Whatever the states: no panic.
    let changes = diff(&old, &new);
    let mut applied = old.clone();
    changes.apply_to(&mut applied);
    let mut indexed = old.clone();
    let mut index = service_index(&indexed);
    changes.apply_to_indexed(&mut indexed, &mut index);
    let _ = changes.len();
    if !(old_ok && new_ok) {
        if old_ok && names_unique(&new) {
            // A change set is keyed by name: a state with duplicate names is not something it
            // can carry, so only unique-name states are judged incrementally.
            let v = Validator::new(&old).expect("a valid state builds a validator");
            match v.check(&old.node, &changes) {
                Ok(Incremental::Valid) => panic!(
                    "incremental validation passed a state that full validation refuses: {:?}",
                    validate(&new)
                ),
                // A change of nothing but the cluster-wide policy objects: the very error a
                // full validation of the state `apply_to` builds gives (the first in its
                // order), not only the verdict.
                Err(e) if only_tiers(&changes) => assert_eq!(Err(e), validate(&applied)),
                _ => {}
            }
        }
        return;
    }
    // The index is kept up to date: every service at the position it says, and only those.
    assert_eq!(index.len(), indexed.services.len());
    for (name, &i) in &index {
        assert_eq!(&indexed.services[i].name, name, "service index out of date");
    }
    let want = normalised(new.clone());
    assert_eq!(
        normalised(applied),
        want,
        "apply_to(old, diff(old, new)) != new"
    );
    assert_eq!(
        normalised(indexed),
        want,
        "apply_to_indexed(old, diff(old, new)) != new"
    );
    assert_eq!(changes.is_empty(), normalised(old.clone()) == want);
    assert!(diff(&new, &new).is_empty());
    // The reverse diff takes new back to old.
    let mut back = new.clone();
    diff(&new, &old).apply_to(&mut back);
    assert_eq!(normalised(back), normalised(old.clone()));
    // Merged diffs compose: old -> new -> old is no change at all.
    let mut merged = diff(&old, &new);
    merged.merge(diff(&new, &old));
    assert!(merged.is_empty(), "old -> new -> old merged to {merged:?}");
    let mut v = Validator::new(&old).expect("a valid state builds a validator");
    match v.check(&old.node, &changes) {
        // The node only (the cluster-wide policy objects are checked incrementally too).
        Ok(Incremental::FullRequired) => assert!(changes.node.is_some()),
        Ok(Incremental::Valid) => {
            v.commit(&old.node, &changes);
            let back = diff(&new, &old);
            assert_eq!(
                v.check(&new.node, &back).map_err(|e| e.to_string()),
                Ok(Incremental::Valid)
            );
        }
        Err(e) => panic!("incremental validation refused a valid state: {e}"),
    }
});

/// Whether `changes` changes the cluster-wide policy objects only.
fn only_tiers(changes: &dataplane_core::ChangeSet) -> bool {
    changes.node.is_none()
        && changes.services.is_empty()
        && changes.endpoints.is_empty()
        && changes.policies.is_empty()
        && changes.namespaces.is_empty()
        && changes.pods.is_empty()
}

fn names_unique(s: &dataplane_core::DesiredState) -> bool {
    fn unique<'a>(names: impl Iterator<Item = &'a dataplane_core::ObjectName>) -> bool {
        let mut seen = std::collections::BTreeSet::new();
        names.into_iter().all(|n| seen.insert(n))
    }
    unique(s.services.iter().map(|x| &x.name))
        && unique(s.endpoints.iter().map(|x| &x.name))
        && unique(s.policies.iter().map(|x| &x.name))
        && unique(s.pods.iter().map(|x| &x.name))
        && unique_str(s.namespaces.iter().map(|n| n.name.as_str()))
        && unique_str(s.cluster_policies.iter().map(|n| n.name.as_str()))
        && unique_str(s.nodes.iter().map(|n| n.name.as_str()))
        && unique_str(s.host_endpoints.iter().map(|n| n.name.as_str()))
        && unique_str(s.host_policies.iter().map(|n| n.name.as_str()))
}

fn unique_str<'a>(names: impl Iterator<Item = &'a str>) -> bool {
    let mut seen = std::collections::BTreeSet::new();
    names.into_iter().all(|n| seen.insert(n))
}
