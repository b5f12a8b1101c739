//! Conntrack key math and reads: which keys the two entries of one connection have, and the
//! whole table as one list. Used by [`crate::maintain`] (GC) and the dataplane's `flows`
//! and `stats`.

use crate::batch::BatchFd;
use crate::error::EbpfError;
use crate::loader::Maps;
use crate::map_table;
use crate::maps::{CtEntry, CtKey, CT_F_SNAT};

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
