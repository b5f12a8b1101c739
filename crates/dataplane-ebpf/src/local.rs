//! The pods of this node as `dp_local` holds them: each address -> the index of the pod's
//! interface, resolved in the node's namespace. The writer (`writer::sync_local`) makes the
//! map hold what [`wanted`] answers.

use std::collections::{BTreeMap, HashMap};

use crate::maps::{family_of, Addr, LocalKey};

/// The index of interface `name` in the calling thread's namespace, 0 when there is none.
pub(crate) fn ifindex_of(name: &str) -> u32 {
    lookup_ifindex(name).ok().flatten().unwrap_or(0)
}

/// The index of interface `name` in the calling thread's namespace: `Ok(None)` when there is
/// no such interface (`ENODEV`, or a name no interface can have), `Err` when the lookup
/// itself failed (out of file descriptors, say), which says nothing about the interface.
pub(crate) fn lookup_ifindex(name: &str) -> std::io::Result<Option<u32>> {
    let Ok(c) = std::ffi::CString::new(name) else {
        return Ok(None);
    };
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ENODEV | libc::ENXIO) => Ok(None),
                _ => Err(e),
            }
        }
        i => Ok(Some(i)),
    }
}

/// Interface indexes looked up once per sync, in one namespace: a lookup opens and closes a
/// socket (`if_nametoindex`), 5-15 µs on the 2-CPU bench VM, and a sync looked each pod's
/// interface up three times (its two hooks and `dp_local`), ~40 lookups per endpoint change
/// on the scaling bench's node. Failed lookups are not kept (the next one tries again).
/// Valid for one sync only: interfaces come and go between syncs.
#[derive(Debug, Default)]
pub(crate) struct Ifindexes(HashMap<String, Option<u32>>);

impl Ifindexes {
    /// [`lookup_ifindex`], once per name.
    pub(crate) fn lookup(&mut self, name: &str) -> std::io::Result<Option<u32>> {
        if let Some(found) = self.0.get(name) {
            return Ok(*found);
        }
        let found = lookup_ifindex(name)?;
        self.0.insert(name.to_owned(), found);
        Ok(found)
    }
}

/// The `dp_local` entries of `endpoints`, at most `max` (the map's size; the rest are left
/// to the FIB): an interface that is not there yet is left to the FIB too. Resolved at every
/// sync that looks at endpoints, so that a recreated interface is found under its new index.
pub(crate) fn wanted(
    endpoints: &[dataplane_core::Endpoint],
    max: u32,
    ifindexes: &mut Ifindexes,
) -> BTreeMap<LocalKey, u32> {
    let mut want: BTreeMap<LocalKey, u32> = BTreeMap::new();
    for e in endpoints {
        let ifindex = ifindexes.lookup(&e.interface).ok().flatten().unwrap_or(0);
        if ifindex == 0 {
            tracing::debug!(endpoint = %e.name, interface = %e.interface, "no such interface yet");
            continue;
        }
        for ip in &e.ips {
            let key = LocalKey {
                addr: Addr::new(*ip),
                family: family_of(ip),
                pad: [0; 3],
            };
            want.insert(key, ifindex);
        }
    }
    let max = max as usize;
    if want.len() > max {
        tracing::warn!(
            pods = want.len(),
            kept = max,
            "more pod addresses than dp_local holds: the rest are routed by the FIB"
        );
        want = want.into_iter().take(max).collect();
    }
    want
}
