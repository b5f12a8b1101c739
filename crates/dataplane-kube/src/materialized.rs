//! The translated state, kept as one `DesiredState` patched in place, and the changes made to
//! it since they were last taken.
//!
//! Each list is indexed by name (a removal takes the last element's place, as
//! `ChangeSet::apply_to_indexed` does), so a change costs in proportion to itself, and the
//! state can be lent out (`Cluster::state`) or diffed (`Cluster::translate_changes`) without
//! a copy of the whole. Only `Cluster::translate`, whose contract hands out an owned state,
//! pays one clone.
//!
//! The state is behind an `Arc` so that it can also be shared (`Cluster::shared_state`)
//! with whoever programs it, e.g. a dataplane's thread, without a copy: a change made while
//! someone else holds it copies it once (`Arc::make_mut`), never silently changing what they
//! hold.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::Arc;

use dataplane_core::{Change, ChangeSet, DesiredState, Node, ObjectName};

/// A list of the state with its index, and the previous value of each name changed since the
/// changes were last taken (`None`: it did not exist).
#[derive(Debug)]
struct Tracked<K, T> {
    index: HashMap<K, usize>,
    previous: BTreeMap<K, Option<T>>,
    /// Whether `put` records previous values (see [`Materialized::set_recording`]).
    recording: bool,
}

impl<K: Ord + Hash + Clone, T: Clone + PartialEq> Tracked<K, T> {
    fn new() -> Self {
        Self {
            index: HashMap::new(),
            previous: BTreeMap::new(),
            recording: true,
        }
    }

    /// Whether `key` is `value` (`None`: absent) in `list` already.
    fn holds(&self, list: &[T], key: &K, value: Option<&T>) -> bool {
        self.index.get(key).map(|&i| &list[i]) == value
    }

    /// Sets `key` to `value` (`None` removes it) in `list`.
    fn put(&mut self, list: &mut Vec<T>, key: &K, value: Option<T>, key_of: impl Fn(&T) -> &K) {
        let at = self.index.get(key).copied();
        let old = at.map(|i| &list[i]);
        if old == value.as_ref() {
            return;
        }
        if self.recording && !self.previous.contains_key(key) {
            self.previous.insert(key.clone(), old.cloned());
        }
        match (at, value) {
            (Some(i), Some(v)) => list[i] = v,
            (Some(i), None) => {
                list.swap_remove(i);
                self.index.remove(key);
                if let Some(moved) = list.get(i) {
                    self.index.insert(key_of(moved).clone(), i);
                }
            }
            (None, Some(v)) => {
                self.index.insert(key.clone(), list.len());
                list.push(v);
            }
            (None, None) => {}
        }
    }

    /// The changes since the last call: previous and current value of each name whose value
    /// differs (a change undone since vanishes).
    fn take(&mut self, list: &[T]) -> BTreeMap<K, Change<T>> {
        std::mem::take(&mut self.previous)
            .into_iter()
            .filter_map(|(key, previous)| {
                let current = self.index.get(&key).map(|&i| list[i].clone());
                (previous != current).then_some((key, Change { previous, current }))
            })
            .collect()
    }

    fn forget(&mut self) {
        self.previous.clear();
    }
}

/// The state and its indexes.
#[derive(Debug)]
pub(crate) struct Materialized {
    /// Changed only through [`Materialized::state_mut`].
    pub state: Arc<DesiredState>,
    /// The node before the changes not yet taken, if it changed.
    node_previous: Option<Node>,
    services: Tracked<ObjectName, dataplane_core::Service>,
    endpoints: Tracked<ObjectName, dataplane_core::Endpoint>,
    pods: Tracked<ObjectName, dataplane_core::PeerPod>,
    policies: Tracked<ObjectName, dataplane_core::Policy>,
    namespaces: Tracked<String, dataplane_core::Namespace>,
    nodes: Tracked<String, dataplane_core::PeerNode>,
    cluster_policies: Tracked<String, dataplane_core::ClusterPolicy>,
    host_endpoints: Tracked<String, dataplane_core::HostEndpoint>,
    host_policies: Tracked<String, dataplane_core::HostPolicy>,
    /// Whether the baseline changed since the changes were last taken, and what it was.
    baseline_changed: bool,
    baseline_previous: Option<dataplane_core::BaselinePolicy>,
    /// The failsafe ports before the changes not yet taken, if they changed.
    failsafe_previous: Option<dataplane_core::FailsafePorts>,
}

impl Materialized {
    pub(crate) fn new(node: Node) -> Self {
        Self {
            state: Arc::new(DesiredState::new(node)),
            node_previous: None,
            services: Tracked::new(),
            endpoints: Tracked::new(),
            pods: Tracked::new(),
            policies: Tracked::new(),
            namespaces: Tracked::new(),
            nodes: Tracked::new(),
            cluster_policies: Tracked::new(),
            host_endpoints: Tracked::new(),
            host_policies: Tracked::new(),
            baseline_changed: false,
            baseline_previous: None,
            failsafe_previous: None,
        }
    }

    /// The state to change: copied first if someone else holds it too.
    fn state_mut(&mut self) -> &mut DesiredState {
        Arc::make_mut(&mut self.state)
    }

    pub(crate) fn set_node(&mut self, node: Node) {
        if self.state.node != node {
            if self.node_previous.is_none() {
                self.node_previous = Some(self.state.node.clone());
            }
            self.state_mut().node = node;
        }
    }

    pub(crate) fn service(&self, name: &ObjectName) -> Option<&dataplane_core::Service> {
        self.services
            .index
            .get(name)
            .map(|&i| &self.state.services[i])
    }

    // Each `put_*` looks before it writes: `Arc::make_mut` copies the state while someone
    // else holds it, which a put that changes nothing must not cost.

    pub(crate) fn put_service(&mut self, name: &ObjectName, s: Option<dataplane_core::Service>) {
        if !self.services.holds(&self.state.services, name, s.as_ref()) {
            let list = &mut Arc::make_mut(&mut self.state).services;
            self.services.put(list, name, s, |s| &s.name);
        }
    }

    pub(crate) fn put_endpoint(&mut self, name: &ObjectName, e: Option<dataplane_core::Endpoint>) {
        if !self
            .endpoints
            .holds(&self.state.endpoints, name, e.as_ref())
        {
            let list = &mut Arc::make_mut(&mut self.state).endpoints;
            self.endpoints.put(list, name, e, |e| &e.name);
        }
    }

    pub(crate) fn put_pod(&mut self, name: &ObjectName, p: Option<dataplane_core::PeerPod>) {
        if !self.pods.holds(&self.state.pods, name, p.as_ref()) {
            let list = &mut Arc::make_mut(&mut self.state).pods;
            self.pods.put(list, name, p, |p| &p.name);
        }
    }

    pub(crate) fn put_policy(&mut self, name: &ObjectName, p: Option<dataplane_core::Policy>) {
        if !self.policies.holds(&self.state.policies, name, p.as_ref()) {
            let list = &mut Arc::make_mut(&mut self.state).policies;
            self.policies.put(list, name, p, |p| &p.name);
        }
    }

    pub(crate) fn put_namespace(&mut self, name: &str, n: Option<dataplane_core::Namespace>) {
        let name = name.to_owned();
        if !self
            .namespaces
            .holds(&self.state.namespaces, &name, n.as_ref())
        {
            let list = &mut Arc::make_mut(&mut self.state).namespaces;
            self.namespaces.put(list, &name, n, |n| &n.name);
        }
    }

    pub(crate) fn put_node(&mut self, name: &str, n: Option<dataplane_core::PeerNode>) {
        let name = name.to_owned();
        if !self.nodes.holds(&self.state.nodes, &name, n.as_ref()) {
            let list = &mut Arc::make_mut(&mut self.state).nodes;
            self.nodes.put(list, &name, n, |n| &n.name);
        }
    }

    /// Replaces the cluster-wide and host policy tiers with `tiers`.
    pub(crate) fn set_tiers(&mut self, tiers: crate::tiers::Tiers) {
        /// Sets one list to `new` (by name): `get` reads it, `get_mut` writes it.
        fn set_list<T: Clone + PartialEq>(
            tracked: &mut Tracked<String, T>,
            state: &mut Arc<DesiredState>,
            (get, get_mut): ListOf<T>,
            new: Vec<T>,
            name: fn(&T) -> &String,
        ) {
            let names: std::collections::BTreeSet<&String> = new.iter().map(name).collect();
            let gone: Vec<String> = tracked
                .index
                .keys()
                .filter(|k| !names.contains(k))
                .cloned()
                .collect();
            for k in gone {
                tracked.put(get_mut(Arc::make_mut(state)), &k, None, name);
            }
            for t in new {
                let k = name(&t).clone();
                if !tracked.holds(get(state), &k, Some(&t)) {
                    tracked.put(get_mut(Arc::make_mut(state)), &k, Some(t), name);
                }
            }
        }
        type ListOf<T> = (
            fn(&DesiredState) -> &Vec<T>,
            fn(&mut DesiredState) -> &mut Vec<T>,
        );
        set_list(
            &mut self.cluster_policies,
            &mut self.state,
            (|s| &s.cluster_policies, |s| &mut s.cluster_policies),
            tiers.cluster_policies,
            |p| &p.name,
        );
        set_list(
            &mut self.host_endpoints,
            &mut self.state,
            (|s| &s.host_endpoints, |s| &mut s.host_endpoints),
            tiers.host_endpoints,
            |e| &e.name,
        );
        set_list(
            &mut self.host_policies,
            &mut self.state,
            (|s| &s.host_policies, |s| &mut s.host_policies),
            tiers.host_policies,
            |p| &p.name,
        );
        if self.state.baseline_policy != tiers.baseline_policy {
            let old =
                std::mem::replace(&mut self.state_mut().baseline_policy, tiers.baseline_policy);
            if self.cluster_policies.recording && !self.baseline_changed {
                self.baseline_changed = true;
                self.baseline_previous = old;
            }
        }
        if self.state.failsafe_ports != tiers.failsafe_ports {
            let old = std::mem::replace(&mut self.state_mut().failsafe_ports, tiers.failsafe_ports);
            if self.cluster_policies.recording && self.failsafe_previous.is_none() {
                self.failsafe_previous = Some(old);
            }
        }
    }

    /// The changes since they were last taken (or forgotten).
    pub(crate) fn take_changes(&mut self) -> ChangeSet {
        let node = self
            .node_previous
            .take()
            .filter(|previous| *previous != self.state.node)
            .map(|previous| Change {
                previous: Some(previous),
                current: Some(self.state.node.clone()),
            });
        ChangeSet {
            node,
            services: self.services.take(&self.state.services),
            endpoints: self.endpoints.take(&self.state.endpoints),
            policies: self.policies.take(&self.state.policies),
            namespaces: self.namespaces.take(&self.state.namespaces),
            pods: self.pods.take(&self.state.pods),
            cluster_policies: self.cluster_policies.take(&self.state.cluster_policies),
            baseline_policy: std::mem::take(&mut self.baseline_changed)
                .then(|| self.baseline_previous.take())
                .filter(|previous| *previous != self.state.baseline_policy)
                .map(|previous| Change {
                    previous,
                    current: self.state.baseline_policy.clone(),
                }),
            nodes: self.nodes.take(&self.state.nodes),
            host_endpoints: self.host_endpoints.take(&self.state.host_endpoints),
            host_policies: self.host_policies.take(&self.state.host_policies),
            failsafe_ports: self
                .failsafe_previous
                .take()
                .filter(|previous| *previous != self.state.failsafe_ports)
                .map(|previous| Change {
                    previous: Some(previous),
                    current: Some(self.state.failsafe_ports.clone()),
                }),
        }
    }

    /// Whether changes are recorded for [`Materialized::take_changes`]. Off while a caller
    /// that takes the whole state brings it up to date (`Cluster::translate_in_place`): the
    /// record of a first sync would name every object and hold a slot for its previous value
    /// (~4 MiB at 10k services, at the moment the agent's memory peaks), all to be forgotten.
    /// Turning it off forgets what was recorded.
    pub(crate) fn set_recording(&mut self, on: bool) {
        if !on {
            self.forget_changes();
        }
        self.services.recording = on;
        self.endpoints.recording = on;
        self.pods.recording = on;
        self.policies.recording = on;
        self.namespaces.recording = on;
        self.nodes.recording = on;
        self.cluster_policies.recording = on;
        self.host_endpoints.recording = on;
        self.host_policies.recording = on;
    }

    /// Gives back the spare capacity of the state's lists when it is large (a list that grew
    /// by doubling holds up to twice what it needs: ~1 MiB of services at 10k). Only while
    /// no one else holds the state (never a copy for this).
    pub(crate) fn fit_lists(&mut self) {
        fn fit<T>(list: &mut Vec<T>) {
            if list.capacity() - list.len() > list.len() / 8 + 16 {
                list.shrink_to_fit();
            }
        }
        if let Some(state) = Arc::get_mut(&mut self.state) {
            fit(&mut state.services);
            fit(&mut state.endpoints);
            fit(&mut state.pods);
            fit(&mut state.policies);
            fit(&mut state.namespaces);
        }
    }

    /// Drops the record of changes (the caller took the whole state instead).
    pub(crate) fn forget_changes(&mut self) {
        self.node_previous = None;
        self.services.forget();
        self.endpoints.forget();
        self.pods.forget();
        self.policies.forget();
        self.namespaces.forget();
        self.nodes.forget();
        self.cluster_policies.forget();
        self.host_endpoints.forget();
        self.host_policies.forget();
        self.baseline_changed = false;
        self.baseline_previous = None;
        self.failsafe_previous = None;
    }

    /// A copy of the state with every list in name order.
    pub(crate) fn sorted_copy(&self) -> DesiredState {
        let mut state = DesiredState::clone(&self.state);
        state.services.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        state.endpoints.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        state.pods.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        state.policies.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        state
            .namespaces
            .sort_unstable_by(|a, b| a.name.cmp(&b.name));
        state.nodes.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        state
            .cluster_policies
            .sort_unstable_by(|a, b| a.name.cmp(&b.name));
        state
            .host_endpoints
            .sort_unstable_by(|a, b| a.name.cmp(&b.name));
        state
            .host_policies
            .sort_unstable_by(|a, b| a.name.cmp(&b.name));
        state
    }
}
