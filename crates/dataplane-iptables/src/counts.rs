//! The service counts of an [`ApplyReport`](dataplane_core::ApplyReport), the same on every
//! dataplane: a service counts as changed when its object differs from the one the last
//! successful apply programmed (or there was none), as removed when that apply programmed it
//! and the new state has it no more. The rulesets are not compared: a full sync hands out
//! slot-group ids afresh, so a service that did not change can still get other ids.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use dataplane_core::{ChangeSet, ObjectName, Service};

/// A hash of each programmed service, by name (no copy of the services: at 10k services that
/// would be most of the state).
pub(crate) type Fingerprints = HashMap<ObjectName, u64>;

/// A hash of everything in `service`, stable within a process.
fn fingerprint(service: &Service) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    service.hash(&mut h);
    h.finish()
}

/// The fingerprints of `services` (of one name, the last counts, as in the rulesets).
pub(crate) fn fingerprints(services: &[Service]) -> Fingerprints {
    services
        .iter()
        .map(|s| (s.name.clone(), fingerprint(s)))
        .collect()
}

/// Services of `now` that are new or differ from `before`, and services of `before` that
/// `now` has no more.
pub(crate) fn full_sync_counts(before: &Fingerprints, now: &Fingerprints) -> (usize, usize) {
    let changed = now
        .iter()
        .filter(|(name, fp)| before.get(*name) != Some(*fp))
        .count();
    let removed = before
        .keys()
        .filter(|name| !now.contains_key(*name))
        .count();
    (changed, removed)
}

/// Services `changes` adds or changes, and services it removes; an entry whose two sides are
/// equal (a change set built by hand may hold one; `diff` drops them) is neither.
pub(crate) fn change_counts(changes: &ChangeSet) -> (usize, usize) {
    let added_or_changed = changes
        .services
        .values()
        .filter(|c| c.current.is_some() && c.current != c.previous)
        .count();
    let gone = changes
        .services
        .values()
        .filter(|c| c.current.is_none() && c.previous.is_some())
        .count();
    (added_or_changed, gone)
}

/// `fingerprints` after `changes` was applied.
pub(crate) fn record(fingerprints: &mut Fingerprints, changes: &ChangeSet) {
    for (name, change) in &changes.services {
        match &change.current {
            Some(s) => fingerprints.insert(name.clone(), fingerprint(s)),
            None => fingerprints.remove(name),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataplane_core::Change;

    fn svc(name: &str, ip: &str) -> Service {
        let mut s = Service::new(ObjectName::new("default", name));
        s.cluster_ips = vec![ip.parse().unwrap()];
        s
    }

    #[test]
    fn full_sync_counts_compare_with_the_programmed_services() {
        let before = fingerprints(&[svc("a", "10.96.0.1"), svc("b", "10.96.0.2")]);
        assert_eq!(full_sync_counts(&Fingerprints::new(), &before), (2, 0));
        assert_eq!(full_sync_counts(&before, &before), (0, 0));
        let now = fingerprints(&[svc("a", "10.96.0.1"), svc("c", "10.96.0.3")]);
        assert_eq!(full_sync_counts(&before, &now), (1, 1));
        let changed = fingerprints(&[svc("a", "10.96.0.9"), svc("b", "10.96.0.2")]);
        assert_eq!(full_sync_counts(&before, &changed), (1, 0));
    }

    #[test]
    fn change_counts_skip_no_op_entries_and_record_follows() {
        let a = svc("a", "10.96.0.1");
        let b = svc("b", "10.96.0.2");
        let mut programmed = fingerprints(&[a.clone(), b.clone()]);
        let mut changes = ChangeSet::default();
        changes.services.insert(
            a.name.clone(),
            Change {
                previous: Some(a.clone()),
                current: Some(a.clone()),
            },
        );
        changes.services.insert(
            b.name.clone(),
            Change {
                previous: Some(b),
                current: None,
            },
        );
        assert_eq!(change_counts(&changes), (0, 1));
        record(&mut programmed, &changes);
        assert_eq!(programmed, fingerprints(&[a]));
    }
}
