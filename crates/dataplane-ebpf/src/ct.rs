//! Conntrack key math and reads: which keys the two entries of one connection have, and the
//! whole table as one list. Used by [`crate::maintain`] (GC) and the dataplane's `flows`
//! and `stats`; and the stale datagram flows a sync deletes ([`remove_stale_datagram_flows`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use dataplane_core::Protocol;

use crate::batch::BatchFd;
use crate::error::EbpfError;
use crate::loader::Maps;
use crate::map_table;
use crate::maps::{
    Addr, Be16, CtEntry, CtKey, SvcKey, CT_F_MASQ, CT_F_SNAT, SCOPE_EXTERNAL,
    SCOPE_EXTERNAL_INSIDE, SCOPE_INTERNAL,
};
use crate::writer::Current;

/// Whether conntrack cleanup is about IP protocol `proto`: a connectionless one, whose
/// entries the client's packets keep alive (a TCP connection ends, and the next one gets an
/// entry of its own).
pub(crate) fn datagram(proto: u8) -> bool {
    proto == Protocol::Udp.number() || proto == Protocol::Sctp.number()
}

/// What one [`remove_stale_datagram_flows`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct StaleReport {
    /// Entries read.
    pub scanned: usize,
    /// Connections removed (forward entries; their reverse entries went with them).
    pub removed: usize,
}

/// Deletes the `dp_ct` entries of UDP and SCTP flows that the maps no longer serve as they
/// were translated: the frontend is gone (service or port removed), or the backend the flow
/// was sent to is no longer in the frontend's backend slots (endpoint removed). A client that
/// keeps its source port would otherwise keep its entry, and the removed backend, forever:
/// the datapath never re-selects a backend for a flow that has an entry, and every packet
/// refreshes it. kube-proxy deletes the kernel conntrack entries of the same flows after
/// every sync (`pkg/proxy/conntrack/cleanup.go`, `CleanStaleEntries`); the netfilter
/// backends here do the same. The flows of a frontend that had no backends need nothing
/// here: the datapath rejects them without an entry.
///
/// `current` is the writer's mirror of `dp_svc` after the sync. Cost: one batched read of
/// the table (as a `maintain` pass) plus a hash lookup per datagram forward entry; the caller
/// runs it only after a sync that touched a service with a UDP or SCTP port.
pub(crate) fn remove_stale_datagram_flows(
    maps: &mut Maps,
    current: &Current,
) -> Result<StaleReport, EbpfError> {
    let by_key: BTreeMap<CtKey, CtEntry> = ct_entries(maps)?.into_iter().collect();
    let mut report = StaleReport {
        scanned: by_key.len(),
        removed: 0,
    };
    // Frontend (address, port, protocol, family) → the backends of its slots, in every scope
    // (a flow's entry does not say which scope translated it).
    let mut served: HashMap<Frontend, BTreeSet<(Addr, Be16)>> = HashMap::new();
    let mut remove = BTreeSet::new();
    for (k, v) in &by_key {
        // Forward entries of service translations (pod masquerade is not one).
        if !v.is_forward() || v.flags & CT_F_MASQ != 0 || !datagram(k.proto) {
            continue;
        }
        let frontend = (k.daddr, k.dport, k.proto, k.family);
        let backends = match served.entry(frontend) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(backends_of(maps, current, frontend)?)
            }
        };
        if backends.contains(&(v.nat_addr, v.nat_port)) {
            continue;
        }
        remove.insert(*k);
        // Its reverse entry only if that key still holds this connection's (see `gc`).
        let rk = reverse_key(k, v);
        if by_key.get(&rk).is_some_and(|r| pair(k, v, &rk, r)) {
            remove.insert(rk);
        }
        report.removed += 1;
    }
    crate::writer::remove_ct(maps, &remove)?;
    Ok(report)
}

/// A frontend as a conntrack key names it: address, port, protocol, family.
type Frontend = (Addr, Be16, u8, u8);

/// The backends (address, port) in the slots of frontend `(addr, port, proto, family)` in any
/// scope; empty when there is no such frontend.
fn backends_of(
    maps: &Maps,
    current: &Current,
    (addr, port, proto, family): Frontend,
) -> Result<BTreeSet<(Addr, Be16)>, EbpfError> {
    let mut out = BTreeSet::new();
    for scope in [SCOPE_INTERNAL, SCOPE_EXTERNAL, SCOPE_EXTERNAL_INSIDE] {
        let key = SvcKey {
            addr,
            port,
            proto,
            scope,
            family,
            pad: [0; 3],
        };
        let Some(v) = current.frontends.get(&key) else {
            continue;
        };
        for id in current.slots_of(v) {
            let b = maps
                .backends
                .get(id, 0)
                .map_err(|e| EbpfError::map(map_table::BACKENDS.name, "reading", e))?;
            if b.family != 0 {
                out.insert((b.addr, b.port));
            }
        }
    }
    Ok(out)
}

/// Every conntrack entry: batched reads, or a walk where the kernel has none.
pub(crate) fn ct_entries(maps: &Maps) -> Result<Vec<(CtKey, CtEntry)>, EbpfError> {
    all_entries(&maps.ct_batch, &maps.ct, map_table::CT.name)
}

/// Every entry of hash map `map` (named `name`): with batch reads (`batch` on the same
/// map), else one key at a time (kernels without batch support for the map type).
pub(crate) fn all_entries<K: aya::Pod, V: aya::Pod>(
    batch: &BatchFd,
    map: &aya::maps::HashMap<aya::maps::MapData, K, V>,
    name: &'static str,
) -> Result<Vec<(K, V)>, EbpfError> {
    let read_err = |e: std::io::Error| {
        EbpfError::map(
            name,
            "reading",
            aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                call: "bpf_map_lookup_batch",
                io_error: e,
            }),
        )
    };
    if let Some(all) = batch.lookup_all().map_err(read_err)? {
        return Ok(all);
    }
    let mut entries = Vec::new();
    for item in map {
        match item {
            Ok(kv) => entries.push(kv),
            // An entry evicted between next_key and lookup.
            Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(EbpfError::map(name, "reading", e)),
        }
    }
    Ok(entries)
}

/// Whether forward entry `fv` (at `fk`) and reverse entry `rv` (at `rk`) are the two halves of
/// one connection: each names the other's key.
pub(crate) fn pair(fk: &CtKey, fv: &CtEntry, rk: &CtKey, rv: &CtEntry) -> bool {
    fv.is_forward() && rv.is_reverse() && reverse_key(fk, fv) == *rk && forward_key(rk, rv) == *fk
}

pub(crate) fn reverse_key(k: &CtKey, v: &CtEntry) -> CtKey {
    CtKey {
        saddr: v.nat_addr,
        daddr: if v.flags & CT_F_SNAT != 0 {
            v.snat_addr
        } else {
            k.saddr
        },
        sport: v.nat_port,
        dport: if v.flags & CT_F_SNAT != 0 {
            v.snat_port
        } else {
            k.sport
        },
        proto: k.proto,
        family: k.family,
        pad0: 0,
        pad: 0,
    }
}

pub(crate) fn forward_key(k: &CtKey, v: &CtEntry) -> CtKey {
    CtKey {
        saddr: v.snat_addr,
        daddr: v.nat_addr,
        sport: v.snat_port,
        dport: v.nat_port,
        proto: k.proto,
        family: k.family,
        pad0: 0,
        pad: 0,
    }
}

/// `dp_ct`'s fill level into a `Stats::other`: `ct_entries` (forward and reverse) and
/// `ct_capacity`. An LRU: full, it evicts the least recently used connections, whose next TCP
/// packet counts in `ct_lost`. Taken from the walk that counts `flows` anyway.
pub(crate) fn fill_counters(
    other: &mut std::collections::BTreeMap<String, u64>,
    entries: usize,
    capacity: u32,
) {
    other.insert("ct_entries".to_owned(), entries as u64);
    other.insert("ct_capacity".to_owned(), u64::from(capacity));
}
