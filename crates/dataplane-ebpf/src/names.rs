//! `dp_names`: who a service-port id or a pod address is, for the flow events (`events.rs`)
//! and the live inspector. No program reads it; user space makes it hold what the applied
//! state names at every sync, writing only what changed against a mirror read once at load:
//! a full sync compares every name, an incremental one only the changed services' (and the
//! pods' when endpoints or peer pods changed), so that its cost follows the change.

use std::collections::{HashMap, HashSet};

use dataplane_core::{ChangeSet, DesiredState, ObjectName};

use crate::error::{removed, EbpfError};
use crate::map_table;
use crate::maps::{NameKey, NameValue, NAME_ENDPOINT};
use crate::plan::Planner;

/// `dp_names` as aya opens it.
pub(crate) type BpfNames = aya::maps::HashMap<aya::maps::MapData, NameKey, NameValue>;

/// What `dp_names` holds, as the last sync left it.
#[derive(Debug, Default)]
pub(crate) struct Names {
    current: HashMap<NameKey, NameValue>,
    /// The ids each service's names are under (filled by a full sync).
    by_service: HashMap<ObjectName, Vec<u32>>,
}

/// Names to write, and how many were left out for being longer than a `dp_names` value
/// holds (a cut name would be another one: their events go without it).
#[derive(Debug, Default)]
pub(crate) struct Wanted {
    pub(crate) names: HashMap<NameKey, NameValue>,
    pub(crate) too_long: usize,
}

impl Wanted {
    fn add(&mut self, key: NameKey, value: Option<NameValue>) {
        if let Some(v) = value {
            self.names.insert(key, v);
        } else {
            // (a local endpoint's long name must not leave a peer's short one behind)
            self.names.remove(&key);
            self.too_long += 1;
        }
    }
}

/// The names of the pods of `state`: every address of the peer pods and the local endpoints
/// (a local endpoint wins an address both claim).
fn pod_names(state: &DesiredState) -> Wanted {
    let mut want = Wanted {
        names: HashMap::with_capacity(state.endpoints.len() * 2 + state.pods.len() * 2),
        too_long: 0,
    };
    for pod in &state.pods {
        for ip in &pod.ips {
            want.add(NameKey::endpoint(*ip), NameValue::new(&pod.name));
        }
    }
    for e in &state.endpoints {
        for ip in &e.ips {
            want.add(NameKey::endpoint(*ip), NameValue::new(&e.name));
        }
    }
    want
}

/// The names `state` gives: each service-port id of `services` (id -> service), the node,
/// and the pods ([`pod_names`]).
pub(crate) fn wanted(services: &HashMap<u32, &ObjectName>, state: &DesiredState) -> Wanted {
    let mut want = pod_names(state);
    want.add(NameKey::node(), NameValue::plain(&state.node.name));
    for (id, name) in services {
        want.add(NameKey::service(*id), NameValue::new(name));
    }
    want
}

impl Names {
    /// What the pinned map holds (an earlier process's names, removed when stale).
    pub(crate) fn read(map: &BpfNames) -> Result<Self, EbpfError> {
        let mut current = HashMap::new();
        for entry in map {
            let (k, v) = entry.map_err(|e| EbpfError::map(map_table::NAMES.name, "reading", e))?;
            current.insert(k, v);
        }
        Ok(Self {
            current,
            by_service: HashMap::new(),
        })
    }

    /// Makes `dp_names` hold the names of `planner`'s services and `state`'s pods and node.
    /// Returns the entries written or removed, and how many did not fit (the map is full:
    /// their events go without those names).
    pub(crate) fn sync_full(
        &mut self,
        map: &mut BpfNames,
        planner: &Planner,
        state: &DesiredState,
    ) -> Result<(usize, usize), EbpfError> {
        let services = planner.names();
        self.by_service.clear();
        for (id, name) in &services {
            self.by_service
                .entry((*name).clone())
                .or_default()
                .push(*id);
        }
        let want = wanted(&services, state);
        let gone: Vec<NameKey> = self
            .current
            .keys()
            .filter(|k| !want.names.contains_key(k))
            .copied()
            .collect();
        self.write(map, gone, want)
    }

    /// [`Self::sync_full`] for an incremental sync of `changes`: the changed services' names,
    /// and the pods' when endpoints or peer pods changed (a node change is a full sync).
    pub(crate) fn sync_changes(
        &mut self,
        map: &mut BpfNames,
        planner: &Planner,
        state: &DesiredState,
        changes: &ChangeSet,
    ) -> Result<(usize, usize), EbpfError> {
        let mut want = Wanted::default();
        let mut gone = Vec::new();
        for name in changes.services.keys() {
            let ids = planner.ids_of(name);
            let value = NameValue::new(name);
            for id in &ids {
                want.add(NameKey::service(*id), value);
            }
            let old = if ids.is_empty() {
                self.by_service.remove(name)
            } else {
                self.by_service.insert(name.clone(), ids)
            };
            gone.extend(old.unwrap_or_default().into_iter().map(NameKey::service));
        }
        // An id one changed service released and another took is written, not removed.
        gone.retain(|k| !want.names.contains_key(k));
        if !changes.endpoints.is_empty() || !changes.pods.is_empty() {
            let pods = pod_names(state);
            gone.extend(
                self.current
                    .keys()
                    .filter(|k| k.kind == NAME_ENDPOINT && !pods.names.contains_key(k))
                    .copied(),
            );
            want.names.extend(pods.names);
            want.too_long += pods.too_long;
        }
        self.write(map, gone, want)
    }

    /// Removes `gone` (room for the new), then writes what of `want` differs from the map.
    /// Returns the entries written or removed, and the names left out (too long, or no room).
    fn write(
        &mut self,
        map: &mut BpfNames,
        gone: Vec<NameKey>,
        want: Wanted,
    ) -> Result<(usize, usize), EbpfError> {
        let mut written = 0;
        let gone: HashSet<NameKey> = gone.into_iter().collect();
        for k in gone {
            if self.current.remove(&k).is_some() {
                removed(map.remove(&k))
                    .map_err(|e| EbpfError::map(map_table::NAMES.name, "removing", e))?;
                written += 1;
            }
        }
        let mut unfit = want.too_long;
        for (k, v) in want.names {
            if self.current.get(&k) == Some(&v) {
                continue;
            }
            match map.insert(k, v, 0) {
                Ok(()) => {
                    self.current.insert(k, v);
                    written += 1;
                }
                Err(aya::maps::MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::E2BIG) =>
                {
                    unfit += 1;
                }
                Err(e) => return Err(EbpfError::map(map_table::NAMES.name, "writing", e)),
            }
        }
        Ok((written, unfit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataplane_core::{Endpoint, PeerPod};

    #[test]
    fn wanted_names_services_pods_and_the_node() {
        let mut state = DesiredState::new(crate::plan::tests::node());
        let shared: std::net::IpAddr = "10.0.0.9".parse().unwrap();
        state.endpoints.push(Endpoint::new(
            ObjectName::new("default", "client"),
            "veth0",
            ["10.0.0.5".parse().unwrap(), shared],
        ));
        state.pods.push(PeerPod::new(
            ObjectName::new("other", "server"),
            ["10.1.0.7".parse().unwrap(), shared],
        ));
        let web = ObjectName::new("default", "web");
        let services: HashMap<u32, &ObjectName> = [(3, &web), (4, &web)].into();
        let want = wanted(&services, &state);
        assert_eq!(want.too_long, 0);
        let want = want.names;
        let name = |k: NameKey| want[&k].as_str().unwrap().to_owned();
        assert_eq!(name(NameKey::node()), "node-a");
        assert_eq!(name(NameKey::service(3)), "default/web");
        assert_eq!(name(NameKey::service(4)), "default/web");
        assert_eq!(
            name(NameKey::endpoint("10.0.0.5".parse().unwrap())),
            "default/client"
        );
        assert_eq!(
            name(NameKey::endpoint("10.1.0.7".parse().unwrap())),
            "other/server"
        );
        // An address both claim is the local endpoint's.
        assert_eq!(name(NameKey::endpoint(shared)), "default/client");
        assert_eq!(want.len(), 6);
    }
}
