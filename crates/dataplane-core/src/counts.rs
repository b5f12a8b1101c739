//! The service counts of an [`ApplyReport`](crate::ApplyReport), the same on every dataplane: a
//! service counts as changed when its object differs from the one the last successful apply
//! programmed (or there was none), as removed when that apply programmed it and the new state
//! has it no more. Objects are compared, not what a backend made of them: a full sync may hand
//! out table ids afresh, and a change of the node changes no service.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use crate::diff::ChangeSet;
use crate::model::{ObjectName, Service};

/// A hash of everything in `service`, stable within a process: what the counts compare.
pub fn service_fingerprint(service: &Service) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    service.hash(&mut h);
    h.finish()
}

/// The [`service_fingerprint`] of each programmed service, by name: what a backend keeps to
/// count a full sync's changes without a copy of the services (at 10k services a copy would be
/// most of the state).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceFingerprints(HashMap<ObjectName, u64>);

impl ServiceFingerprints {
    /// The fingerprints of `services` (of one name, the last counts, as in the backends'
    /// tables).
    pub fn of(services: &[Service]) -> Self {
        Self(
            services
                .iter()
                .map(|s| (s.name.clone(), service_fingerprint(s)))
                .collect(),
        )
    }

    /// The fingerprint of the service `name`, when it is programmed.
    pub fn get(&self, name: &ObjectName) -> Option<u64> {
        self.0.get(name).copied()
    }

    /// Services of `self` that are new or differ from `before`, and services of `before`
    /// that `self` has no more: a full sync's `(services_changed, services_removed)`.
    pub fn counts_since(&self, before: &ServiceFingerprints) -> (usize, usize) {
        let changed = self
            .0
            .iter()
            .filter(|(name, fp)| before.0.get(*name) != Some(*fp))
            .count();
        let removed = before.0.keys().filter(|n| !self.0.contains_key(*n)).count();
        (changed, removed)
    }

    /// Follows `changes` (after they were applied).
    pub fn record(&mut self, changes: &ChangeSet) {
        for (name, change) in &changes.services {
            match &change.current {
                Some(s) => self.0.insert(name.clone(), service_fingerprint(s)),
                None => self.0.remove(name),
            };
        }
    }

    /// Sets the fingerprint of `name` (`None`: not programmed).
    pub fn set(&mut self, name: ObjectName, fingerprint: Option<u64>) {
        match fingerprint {
            Some(fp) => self.0.insert(name, fp),
            None => self.0.remove(&name),
        };
    }
}

impl FromIterator<(ObjectName, u64)> for ServiceFingerprints {
    fn from_iter<I: IntoIterator<Item = (ObjectName, u64)>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

impl ChangeSet {
    /// Services this change set adds or changes, and services it removes: an incremental
    /// apply's `(services_changed, services_removed)`. An entry whose two sides are equal (a
    /// change set built by hand may hold one; [`diff`](crate::diff()) drops them) is neither.
    pub fn service_counts(&self) -> (usize, usize) {
        let changed = self
            .services
            .values()
            .filter(|c| c.current.is_some() && c.current != c.previous)
            .count();
        let removed = self
            .services
            .values()
            .filter(|c| c.current.is_none() && c.previous.is_some())
            .count();
        (changed, removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::Change;

    fn svc(name: &str, ip: &str) -> Service {
        let mut s = Service::new(ObjectName::new("default", name));
        s.cluster_ips = vec![ip.parse().unwrap()];
        s
    }

    #[test]
    fn full_sync_counts_compare_with_the_programmed_services() {
        let before = ServiceFingerprints::of(&[svc("a", "10.96.0.1"), svc("b", "10.96.0.2")]);
        assert_eq!(before.counts_since(&ServiceFingerprints::default()), (2, 0));
        assert_eq!(before.counts_since(&before), (0, 0));
        let now = ServiceFingerprints::of(&[svc("a", "10.96.0.1"), svc("c", "10.96.0.3")]);
        assert_eq!(now.counts_since(&before), (1, 1));
        let changed = ServiceFingerprints::of(&[svc("a", "10.96.0.9"), svc("b", "10.96.0.2")]);
        assert_eq!(changed.counts_since(&before), (1, 0));
    }

    #[test]
    fn change_counts_skip_no_op_entries_and_record_follows() {
        let a = svc("a", "10.96.0.1");
        let b = svc("b", "10.96.0.2");
        let c = svc("c", "10.96.0.3");
        let mut programmed = ServiceFingerprints::of(&[a.clone(), b.clone()]);
        let mut changes = ChangeSet::default();
        let change = |previous, current| Change { previous, current };
        changes
            .services
            .insert(a.name.clone(), change(Some(a.clone()), Some(a.clone())));
        changes
            .services
            .insert(b.name.clone(), change(Some(b), None));
        changes
            .services
            .insert(c.name.clone(), change(None, Some(c.clone())));
        assert_eq!(changes.service_counts(), (1, 1));
        programmed.record(&changes);
        assert_eq!(programmed, ServiceFingerprints::of(&[a, c]));
    }
}
