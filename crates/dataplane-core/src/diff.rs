//! Change tracking: what differs between two desired states.
//!
//! Like kube-proxy's change trackers, a change keeps `{previous, current}` per object and no-op
//! changes vanish: an object that is equal in both states produces no entry.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{
    BaselinePolicy, ClusterPolicy, DesiredState, Endpoint, FailsafePorts, HostEndpoint, HostPolicy,
    Namespace, Node, ObjectName, PeerNode, PeerPod, Policy, Service,
};

/// One object's change: `previous: None` is an addition, `current: None` a removal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change<T> {
    /// The object before, if it existed.
    pub previous: Option<T>,
    /// The object after, if it still exists.
    pub current: Option<T>,
}

/// Everything that differs between two states, keyed by object name.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ChangeSet {
    /// The node, if any of its settings changed.
    pub node: Option<Change<Node>>,
    /// Changed services.
    #[serde(with = "by_name")]
    pub services: BTreeMap<ObjectName, Change<Service>>,
    /// Changed endpoints.
    #[serde(with = "by_name")]
    pub endpoints: BTreeMap<ObjectName, Change<Endpoint>>,
    /// Changed policies.
    #[serde(with = "by_name")]
    pub policies: BTreeMap<ObjectName, Change<Policy>>,
    /// Changed namespaces (their labels), keyed by namespace name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub namespaces: BTreeMap<String, Change<Namespace>>,
    /// Changed peer pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty", with = "by_name")]
    pub pods: BTreeMap<ObjectName, Change<PeerPod>>,
    /// Changed cluster policies, keyed by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub cluster_policies: BTreeMap<String, Change<ClusterPolicy>>,
    /// The baseline policy, if it was added, changed or removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_policy: Option<Change<BaselinePolicy>>,
    /// Changed peer nodes, keyed by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub nodes: BTreeMap<String, Change<PeerNode>>,
    /// Changed host endpoints, keyed by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub host_endpoints: BTreeMap<String, Change<HostEndpoint>>,
    /// Changed host policies, keyed by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub host_policies: BTreeMap<String, Change<HostPolicy>>,
    /// The failsafe ports, if they changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failsafe_ports: Option<Change<FailsafePorts>>,
}

impl ChangeSet {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.node.is_none()
            && self.services.is_empty()
            && self.endpoints.is_empty()
            && self.policies.is_empty()
            && self.namespaces.is_empty()
            && self.pods.is_empty()
            && !self.has_tier_changes()
    }

    /// Whether cluster policies, the baseline, peer nodes, host endpoints, host policies or
    /// failsafe ports changed.
    pub fn has_tier_changes(&self) -> bool {
        !self.cluster_policies.is_empty()
            || self.baseline_policy.is_some()
            || !self.nodes.is_empty()
            || !self.host_endpoints.is_empty()
            || !self.host_policies.is_empty()
            || self.failsafe_ports.is_some()
    }

    /// Number of changed objects.
    pub fn len(&self) -> usize {
        usize::from(self.node.is_some())
            + self.services.len()
            + self.endpoints.len()
            + self.policies.len()
            + self.namespaces.len()
            + self.pods.len()
            + self.cluster_policies.len()
            + usize::from(self.baseline_policy.is_some())
            + self.nodes.len()
            + self.host_endpoints.len()
            + self.host_policies.len()
            + usize::from(self.failsafe_ports.is_some())
    }

    /// Applies the changes to `state`, turning the diff's old state into its new one.
    ///
    /// Order of objects in `state` is kept for those that stay; additions go to the end in
    /// name order.
    pub fn apply_to(&self, state: &mut DesiredState) {
        if let Some(Change {
            current: Some(node),
            ..
        }) = &self.node
        {
            state.node = node.clone();
        }
        patch(&mut state.services, &self.services, |s| &s.name);
        patch(&mut state.endpoints, &self.endpoints, |e| &e.name);
        patch(&mut state.policies, &self.policies, |p| &p.name);
        patch(&mut state.namespaces, &self.namespaces, |n| &n.name);
        patch(&mut state.pods, &self.pods, |p| &p.name);
        self.apply_tiers_to(state);
    }

    /// [`ChangeSet::apply_to`] in proportion to the change for services: `index` maps each
    /// service name of `state` to its position ([`service_index`] builds it) and is kept up to
    /// date. Unlike `apply_to`, the order of services is not kept (a removed service's place
    /// is taken by the last one).
    pub fn apply_to_indexed(&self, state: &mut DesiredState, index: &mut ServiceIndex) {
        for (name, change) in &self.services {
            match (index.get(name).copied(), &change.current) {
                (Some(i), Some(s)) => state.services[i] = s.clone(),
                (Some(i), None) => {
                    state.services.swap_remove(i);
                    index.remove(name);
                    if let Some(moved) = state.services.get(i) {
                        index.insert(moved.name.clone(), i);
                    }
                }
                (None, Some(s)) => {
                    index.insert(name.clone(), state.services.len());
                    state.services.push(s.clone());
                }
                (None, None) => {}
            }
        }
        if let Some(Change {
            current: Some(node),
            ..
        }) = &self.node
        {
            state.node = node.clone();
        }
        patch(&mut state.endpoints, &self.endpoints, |e| &e.name);
        patch(&mut state.policies, &self.policies, |p| &p.name);
        patch(&mut state.namespaces, &self.namespaces, |n| &n.name);
        patch(&mut state.pods, &self.pods, |p| &p.name);
        self.apply_tiers_to(state);
    }

    /// The cluster policies, baseline, peer nodes, host endpoints, host policies and
    /// failsafe ports of [`ChangeSet::apply_to`].
    fn apply_tiers_to(&self, state: &mut DesiredState) {
        patch(&mut state.cluster_policies, &self.cluster_policies, |p| {
            &p.name
        });
        if let Some(change) = &self.baseline_policy {
            state.baseline_policy.clone_from(&change.current);
        }
        patch(&mut state.nodes, &self.nodes, |n| &n.name);
        patch(&mut state.host_endpoints, &self.host_endpoints, |e| &e.name);
        patch(&mut state.host_policies, &self.host_policies, |p| &p.name);
        if let Some(Change {
            current: Some(ports),
            ..
        }) = &self.failsafe_ports
        {
            state.failsafe_ports = ports.clone();
        }
    }

    /// Merges `later` (a diff from this set's new state onwards) into this set, so that the
    /// result goes from this set's old state to `later`'s new state. Changes that cancel out
    /// vanish.
    pub fn merge(&mut self, later: ChangeSet) {
        merge_one(&mut self.node, later.node);
        merge_map(&mut self.services, later.services);
        merge_map(&mut self.endpoints, later.endpoints);
        merge_map(&mut self.policies, later.policies);
        merge_map(&mut self.namespaces, later.namespaces);
        merge_map(&mut self.pods, later.pods);
        merge_map(&mut self.cluster_policies, later.cluster_policies);
        merge_one(&mut self.baseline_policy, later.baseline_policy);
        merge_map(&mut self.nodes, later.nodes);
        merge_map(&mut self.host_endpoints, later.host_endpoints);
        merge_map(&mut self.host_policies, later.host_policies);
        merge_one(&mut self.failsafe_ports, later.failsafe_ports);
    }
}

fn merge_one<T: PartialEq>(slot: &mut Option<Change<T>>, later: Option<Change<T>>) {
    let Some(later) = later else { return };
    let merged = match slot.take() {
        Some(earlier) => Change {
            previous: earlier.previous,
            current: later.current,
        },
        None => later,
    };
    if merged.previous != merged.current {
        *slot = Some(merged);
    }
}

fn merge_map<K: Ord, T: PartialEq>(
    map: &mut BTreeMap<K, Change<T>>,
    later: BTreeMap<K, Change<T>>,
) {
    for (name, change) in later {
        let mut slot = map.remove(&name);
        merge_one(&mut slot, Some(change));
        if let Some(merged) = slot {
            map.insert(name, merged);
        }
    }
}

fn patch<K: Ord, T: Clone>(
    items: &mut Vec<T>,
    changes: &BTreeMap<K, Change<T>>,
    key: impl Fn(&T) -> &K,
) {
    if changes.is_empty() {
        return;
    }
    items.retain(|item| !changes.contains_key(key(item)) || changes[key(item)].current.is_some());
    // Only names the change set carries matter: a change is O(items) compares, no clones.
    let mut seen = std::collections::BTreeSet::new();
    for item in items.iter_mut() {
        if let Some((name, change)) = changes.get_key_value(key(item)) {
            if let Some(current) = &change.current {
                *item = current.clone();
            }
            seen.insert(name);
        }
    }
    for (name, change) in changes {
        if let (false, Some(current)) = (seen.contains(name), &change.current) {
            items.push(current.clone());
        }
    }
}

/// Service name -> position in [`DesiredState::services`].
pub type ServiceIndex = std::collections::HashMap<ObjectName, usize>;

/// The [`ServiceIndex`] of `state`.
pub fn service_index(state: &DesiredState) -> ServiceIndex {
    state
        .services
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.clone(), i))
        .collect()
}

/// Computes the changes that turn `old` into `new`.
///
/// Objects are matched by namespaced name; objects equal in both states produce no change.
/// Names are assumed unique (validation guarantees it); with duplicates the last one wins.
pub fn diff(old: &DesiredState, new: &DesiredState) -> ChangeSet {
    ChangeSet {
        node: (old.node != new.node).then(|| Change {
            previous: Some(old.node.clone()),
            current: Some(new.node.clone()),
        }),
        services: diff_named(&old.services, &new.services, |s| &s.name),
        endpoints: diff_named(&old.endpoints, &new.endpoints, |e| &e.name),
        policies: diff_named(&old.policies, &new.policies, |p| &p.name),
        namespaces: diff_named(&old.namespaces, &new.namespaces, |n| &n.name),
        pods: diff_named(&old.pods, &new.pods, |p| &p.name),
        cluster_policies: diff_named(&old.cluster_policies, &new.cluster_policies, |p| &p.name),
        baseline_policy: (old.baseline_policy != new.baseline_policy).then(|| Change {
            previous: old.baseline_policy.clone(),
            current: new.baseline_policy.clone(),
        }),
        nodes: diff_named(&old.nodes, &new.nodes, |n| &n.name),
        host_endpoints: diff_named(&old.host_endpoints, &new.host_endpoints, |e| &e.name),
        host_policies: diff_named(&old.host_policies, &new.host_policies, |p| &p.name),
        failsafe_ports: (old.failsafe_ports != new.failsafe_ports).then(|| Change {
            previous: Some(old.failsafe_ports.clone()),
            current: Some(new.failsafe_ports.clone()),
        }),
    }
}

fn diff_named<K: Ord + Clone, T: Clone + PartialEq>(
    old: &[T],
    new: &[T],
    key: impl Fn(&T) -> &K,
) -> BTreeMap<K, Change<T>> {
    let old: BTreeMap<&K, &T> = old.iter().map(|o| (key(o), o)).collect();
    let new: BTreeMap<&K, &T> = new.iter().map(|o| (key(o), o)).collect();
    let mut out = BTreeMap::new();
    for (name, before) in &old {
        match new.get(name) {
            Some(after) if after == before => {}
            after => {
                out.insert(
                    (*name).clone(),
                    Change {
                        previous: Some((*before).clone()),
                        current: after.map(|a| (*a).clone()),
                    },
                );
            }
        }
    }
    for (name, after) in &new {
        if !old.contains_key(name) {
            out.insert(
                (*name).clone(),
                Change {
                    previous: None,
                    current: Some((*after).clone()),
                },
            );
        }
    }
    out
}

/// Serialises maps keyed by [`ObjectName`] with `namespace/name` string keys, as JSON needs.
mod by_name {
    use std::collections::BTreeMap;

    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::model::ObjectName;

    pub fn serialize<S: Serializer, V: Serialize>(
        map: &BTreeMap<ObjectName, V>,
        ser: S,
    ) -> Result<S::Ok, S::Error> {
        ser.collect_map(map.iter().map(|(k, v)| (k.to_string(), v)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>, V: Deserialize<'de>>(
        de: D,
    ) -> Result<BTreeMap<ObjectName, V>, D::Error> {
        let raw = BTreeMap::<String, V>::deserialize(de)?;
        raw.into_iter()
            .map(|(k, v)| match k.split_once('/') {
                Some((ns, name)) => Ok((ObjectName::new(ns, name), v)),
                None => Err(D::Error::custom(format!(
                    "object name {k:?} is not namespace/name"
                ))),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic;

    #[test]
    fn change_sets_serialise_with_string_keys() {
        let a = synthetic::state(2, 1);
        let mut b = a.clone();
        b.services[1].backends.clear();
        let cs = diff(&a, &b);
        let json = serde_json::to_string(&cs).unwrap();
        assert!(json.contains("\"bench/svc-1\""), "{json}");
        let back: ChangeSet = serde_json::from_str(&json).unwrap();
        assert_eq!(back, cs);
    }
}
