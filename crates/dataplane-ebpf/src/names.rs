//! `dp_names`: who a service-port id or a pod address is, for the flow events (`events.rs`)
//! and the live inspector. No program reads it; user space makes it hold [`wanted`] at every
//! sync, writing only what changed against a mirror read once at load.

use std::collections::HashMap;

use dataplane_core::{DesiredState, ObjectName};

use crate::error::{removed, EbpfError};
use crate::map_table;
use crate::maps::{NameKey, NameValue};

/// `dp_names` as aya opens it.
pub(crate) type BpfNames = aya::maps::HashMap<aya::maps::MapData, NameKey, NameValue>;

/// What `dp_names` holds, as the last sync left it.
#[derive(Debug, Default)]
pub(crate) struct Names {
    current: HashMap<NameKey, NameValue>,
}

/// The names `state` gives: each service-port id of `services` (id -> service), the node,
/// and every address of the local endpoints and the peer pods.
pub(crate) fn wanted(
    services: &HashMap<u32, &ObjectName>,
    state: &DesiredState,
) -> HashMap<NameKey, NameValue> {
    let mut want = HashMap::with_capacity(
        services.len() + 1 + state.endpoints.len() * 2 + state.pods.len() * 2,
    );
    want.insert(NameKey::node(), NameValue::plain(&state.node.name));
    for (id, name) in services {
        want.insert(NameKey::service(*id), NameValue::new(name));
    }
    // Peer pods first: a local endpoint's own entry wins for an address both claim.
    for pod in &state.pods {
        for ip in &pod.ips {
            want.insert(NameKey::endpoint(*ip), NameValue::new(&pod.name));
        }
    }
    for e in &state.endpoints {
        for ip in &e.ips {
            want.insert(NameKey::endpoint(*ip), NameValue::new(&e.name));
        }
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
        Ok(Self { current })
    }

    /// Makes `dp_names` hold `want`: stale entries go first (room for the new), then new and
    /// changed ones. Returns the entries written or removed, and how many did not fit (the
    /// map is full: their events go without those names).
    pub(crate) fn sync(
        &mut self,
        map: &mut BpfNames,
        want: HashMap<NameKey, NameValue>,
    ) -> Result<(usize, usize), EbpfError> {
        let stale: Vec<NameKey> = self
            .current
            .keys()
            .filter(|k| !want.contains_key(k))
            .copied()
            .collect();
        let mut written = 0;
        for k in stale {
            removed(map.remove(&k))
                .map_err(|e| EbpfError::map(map_table::NAMES.name, "removing", e))?;
            self.current.remove(&k);
            written += 1;
        }
        let mut unfit = 0;
        for (k, v) in want {
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
