//! Writes a [`Plan`] into the maps, diffing against what they hold, in an order that never
//! shows a half-written service to packets: backends, then the new slot range, then the
//! service entry that points at it, then removals and freeing of old ranges.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use aya::maps::lpm_trie::Key;
use dataplane_core::Error;

use crate::error::EbpfError;
use crate::loader::Maps;
use crate::maps::{
    Addr, BackendValue, Be16, DpConfig, SrcRangeData, SvcKey, SvcValue, SVC_F_AFFINITY,
};
use crate::plan::Plan;
use crate::Capacities;

/// First-fit allocator of slot ranges in `dp_slots` (index 0 is never used).
#[derive(Debug, Clone)]
pub(crate) struct SlotAlloc {
    free: BTreeMap<u32, u32>,
}

impl SlotAlloc {
    pub(crate) fn new(capacity: u32) -> Self {
        let mut free = BTreeMap::new();
        if capacity > 1 {
            free.insert(1, capacity - 1);
        }
        Self { free }
    }

    pub(crate) fn alloc(&mut self, n: u32) -> Option<u32> {
        if n == 0 {
            return Some(0);
        }
        let (&start, &len) = self.free.iter().find(|(_, &len)| len >= n)?;
        self.free.remove(&start);
        if len > n {
            self.free.insert(start + n, len - n);
        }
        Some(start)
    }

    /// Marks `[start, start+n)` used (when adopting existing maps).
    pub(crate) fn reserve(&mut self, start: u32, n: u32) -> bool {
        if n == 0 {
            return true;
        }
        let Some((&fs, &fl)) = self.free.range(..=start).next_back() else {
            return false;
        };
        if start + n > fs + fl {
            return false;
        }
        self.free.remove(&fs);
        if start > fs {
            self.free.insert(fs, start - fs);
        }
        if fs + fl > start + n {
            self.free.insert(start + n, fs + fl - start - n);
        }
        true
    }

    pub(crate) fn release(&mut self, start: u32, n: u32) {
        if n == 0 {
            return;
        }
        let mut start = start;
        let mut n = n;
        if let Some((&ps, &pl)) = self.free.range(..start).next_back() {
            if ps + pl == start {
                self.free.remove(&ps);
                start = ps;
                n += pl;
            }
        }
        if let Some(&nl) = self.free.get(&(start + n)) {
            self.free.remove(&(start + n));
            n += nl;
        }
        self.free.insert(start, n);
    }
}

/// Slot ranges are immutable once written and shared by every frontend whose slots are the
/// same (a ClusterIP and its NodePorts usually pick from the same backends; with Maglev that
/// saves a whole table per frontend).
#[derive(Debug, Clone, Default)]
pub(crate) struct Ranges {
    /// Slot contents -> (base, frontends using it).
    by_content: HashMap<Vec<u32>, (u32, usize)>,
    /// Ranges adopted from the maps whose contents duplicate a tracked one: base -> (len, users).
    odd: BTreeMap<u32, (u32, usize)>,
}

impl Ranges {
    fn shared(&self, slots: &[u32]) -> Option<u32> {
        self.by_content.get(slots).map(|(base, _)| *base)
    }

    fn hold(&mut self, slots: &[u32], base: u32) {
        if slots.is_empty() {
            return;
        }
        match self.by_content.get_mut(slots) {
            Some((b, n)) if *b == base => *n += 1,
            Some(_) => self.odd.entry(base).or_insert((slots.len() as u32, 0)).1 += 1,
            None => {
                self.by_content.insert(slots.to_vec(), (base, 1));
            }
        }
    }

    /// Lets go of one user; returns the range to free when it was the last.
    fn release(&mut self, slots: &[u32], base: u32) -> Option<(u32, u32)> {
        if slots.is_empty() {
            return None;
        }
        let len = slots.len() as u32;
        if let Some((b, n)) = self.by_content.get_mut(slots) {
            if *b == base {
                *n -= 1;
                if *n == 0 {
                    self.by_content.remove(slots);
                    return Some((base, len));
                }
                return None;
            }
        }
        if let Some((_, n)) = self.odd.get_mut(&base) {
            *n -= 1;
            if *n == 0 {
                self.odd.remove(&base);
                return Some((base, len));
            }
            return None;
        }
        Some((base, len))
    }
}

/// What the maps hold, as far as the writer is concerned.
#[derive(Debug, Clone)]
pub(crate) struct Current {
    pub frontends: BTreeMap<SvcKey, (SvcValue, Vec<u32>)>,
    pub backend_ids: BTreeMap<(Addr, u16, u8), u32>,
    /// `backend_ids` the other way round: the ids in use.
    pub used_ids: BTreeMap<u32, (Addr, u16, u8)>,
    /// Ids below `next_id` that are not in use, for allocation without a scan.
    pub free_ids: BTreeSet<u32>,
    /// One past the highest id ever handed out (id 0 is reserved).
    pub next_id: u32,
    /// Backend id -> number of frontends whose slots hold it.
    pub id_refs: BTreeMap<u32, usize>,
    pub src_ranges: BTreeSet<(SrcRangeData, u32)>,
    pub cidrs: BTreeMap<(Addr, u32), u8>,
    pub config: DpConfig,
    pub alloc: SlotAlloc,
    pub ranges: Ranges,
    pub generation: u32,
}

/// One batch write; `Ok(false)`: the kernel has none, write element by element.
fn batch<K: aya::Pod, V: aya::Pod>(
    fd: &crate::batch::BatchFd,
    map: &'static str,
    keys: &[K],
    values: &[V],
) -> Result<bool, Error> {
    fd.update(keys, values)
        .map_err(|e| {
            EbpfError::map(
                map,
                "writing",
                aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                    call: "bpf_map_update_batch",
                    io_error: e,
                }),
            )
        })
        .map_err(Error::from)
}

fn merr(map: &'static str, op: &'static str) -> impl FnOnce(aya::maps::MapError) -> EbpfError {
    move |e| EbpfError::map(map, op, e)
}

/// `count` elements of array map `map` from index `start` (fewer where the array ends): one
/// batch lookup per few thousand elements, element by element where the kernel has none.
fn read_array<V: aya::Pod>(
    fd: &crate::batch::BatchFd,
    array: &aya::maps::Array<aya::maps::MapData, V>,
    map: &'static str,
    start: u32,
    count: u32,
) -> Result<Vec<V>, EbpfError> {
    let batched = fd.lookup_array(start, count as usize).map_err(|e| {
        EbpfError::map(
            map,
            "reading",
            aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                call: "bpf_map_lookup_batch",
                io_error: e,
            }),
        )
    })?;
    if let Some(values) = batched {
        return Ok(values);
    }
    let end = start.saturating_add(count).min(array.len());
    (start..end)
        .map(|i| array.get(&i, 0).map_err(merr(map, "reading")))
        .collect()
}

impl Current {
    /// Reads the maps (adopting what an earlier process left pinned).
    pub(crate) fn read(maps: &Maps, caps: &Capacities) -> Result<Self, EbpfError> {
        let mut alloc = SlotAlloc::new(caps.backend_slots);
        let mut ranges = Ranges::default();
        let mut reserved = BTreeSet::new();
        let mut frontends = BTreeMap::new();
        let mut generation = 0;
        // Frontends with the same backends share a slot range: read each range once.
        let mut read_ranges: HashMap<(u32, u32), Vec<u32>> = HashMap::new();
        for item in &maps.svc {
            let (k, v) = item.map_err(merr("dp_svc", "reading"))?;
            let ids = if let Some(ids) = read_ranges.get(&(v.slot_base, v.slot_count)) {
                ids.clone()
            } else {
                let ids = read_array(
                    &maps.slots_batch,
                    &maps.slots,
                    "dp_slots",
                    v.slot_base,
                    v.slot_count,
                )?;
                if ids.len() != v.slot_count as usize {
                    return Err(EbpfError::map(
                        "dp_slots",
                        "reading",
                        aya::maps::MapError::OutOfBounds {
                            index: v.slot_base.saturating_add(v.slot_count),
                            max_entries: maps.slots.len(),
                        },
                    ));
                }
                read_ranges.insert((v.slot_base, v.slot_count), ids.clone());
                ids
            };
            if v.slot_count > 0
                && reserved.insert(v.slot_base)
                && !alloc.reserve(v.slot_base, v.slot_count)
            {
                tracing::warn!(
                    base = v.slot_base,
                    count = v.slot_count,
                    "overlapping slot range in pinned maps"
                );
            }
            ranges.hold(&ids, v.slot_base);
            generation = generation.max(v.rev);
            frontends.insert(k, (v, ids));
        }
        let mut backend_ids = BTreeMap::new();
        let all = read_array(
            &maps.backends_batch,
            &maps.backends,
            "dp_backends",
            0,
            maps.backends.len(),
        )?;
        for (id, value) in all.iter().enumerate() {
            if value.family != 0 {
                backend_ids.insert((value.addr, value.port.get(), value.family), id as u32);
            }
        }
        let mut src_ranges = BTreeSet::new();
        for key in maps.src_ranges.keys() {
            let key = key.map_err(merr("dp_srcrange", "reading"))?;
            src_ranges.insert((key.data(), key.prefix_len()));
        }
        let mut cidrs = BTreeMap::new();
        for item in &maps.cidrs {
            let (key, bits) = item.map_err(merr("dp_cidrs", "reading"))?;
            cidrs.insert((key.data(), key.prefix_len()), bits);
        }
        let config = maps
            .config
            .get(&0, 0)
            .map_err(merr("dp_config", "reading"))?;
        let mut id_refs = BTreeMap::new();
        for (_, ids) in frontends.values() {
            add_refs(&mut id_refs, ids, 1);
        }
        let used_ids: BTreeMap<u32, (Addr, u16, u8)> =
            backend_ids.iter().map(|(k, id)| (*id, *k)).collect();
        let next_id = used_ids.keys().next_back().map_or(1, |m| m + 1);
        let free_ids = (1..next_id).filter(|i| !used_ids.contains_key(i)).collect();
        Ok(Self {
            frontends,
            backend_ids,
            used_ids,
            free_ids,
            next_id,
            id_refs,
            src_ranges,
            cidrs,
            config,
            alloc,
            ranges,
            generation,
        })
    }
}

/// Counts of what one write did.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct WriteReport {
    pub objects_written: usize,
}

fn capacity(what: &str, needed: usize, capacity: u32) -> Result<(), Error> {
    if needed > capacity as usize {
        return Err(Error::CapacityExceeded {
            what: what.to_owned(),
            needed,
            capacity: capacity as usize,
        });
    }
    Ok(())
}

/// Adds `delta` (±1) to the reference count of each distinct id in `ids`.
fn add_refs(refs: &mut BTreeMap<u32, usize>, ids: &[u32], delta: isize) {
    let distinct: BTreeSet<u32> = ids.iter().copied().collect();
    for id in distinct {
        let n = refs.entry(id).or_insert(0);
        *n = n.saturating_add_signed(delta);
    }
}

struct Prepared {
    new_backends: Vec<((Addr, u16, u8), u32)>,
    /// Frontends to (re)write: key, value with its slot base, slot ids, whether the range is
    /// new (its slots must be written) or shared with an existing one.
    writes: Vec<(SvcKey, SvcValue, Vec<u32>, bool)>,
    removals: Vec<SvcKey>,
    alloc: SlotAlloc,
}

/// Ids for backends new to the maps: the free ones below the high-water mark in order, then
/// fresh ones above it.
struct FreshIds<'a> {
    free: std::collections::btree_set::Iter<'a, u32>,
    next: u32,
}

impl FreshIds<'_> {
    fn take(&mut self) -> u32 {
        self.free.next().copied().unwrap_or_else(|| {
            self.next += 1;
            self.next - 1
        })
    }
}

/// The backend ids of a frontend's slots, giving fresh ids to backends not in the maps yet.
fn slot_ids(
    cur: &Current,
    fp: &crate::plan::FrontendPlan,
    ids: &mut BTreeMap<(Addr, u16, u8), u32>,
    new_backends: &mut Vec<((Addr, u16, u8), u32)>,
    fresh: &mut FreshIds<'_>,
) -> Vec<u32> {
    let mut slots = Vec::with_capacity(fp.slots.len());
    for b in &fp.slots {
        let k = (b.addr, b.port, b.family);
        let id = if let Some(id) = cur.backend_ids.get(&k).or_else(|| ids.get(&k)) {
            *id
        } else {
            let id = fresh.take();
            ids.insert(k, id);
            new_backends.push((k, id));
            id
        };
        slots.push(id);
    }
    slots
}

/// Checks every capacity and allocates everything before a single map write. Only the
/// frontends in `dirty` are compared (all of them when `None`).
fn prepare(
    cur: &Current,
    plan: &Plan,
    caps: &Capacities,
    dirty: Option<&BTreeSet<SvcKey>>,
) -> Result<Prepared, Error> {
    // Distinct backends are checked below from what is allocated: no pass over every slot.
    capacity("service map (dp_svc)", plan.frontends.len(), caps.services)?;
    capacity(
        "source range map (dp_srcrange)",
        plan.src_ranges.len(),
        caps.source_ranges,
    )?;
    let considered: Vec<SvcKey> = match dirty {
        Some(d) => d.iter().copied().collect(),
        None => plan
            .frontends
            .keys()
            .chain(cur.frontends.keys())
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect(),
    };
    let mut ids: BTreeMap<(Addr, u16, u8), u32> = BTreeMap::new();
    let mut new_backends = Vec::new();
    let mut fresh = FreshIds {
        free: cur.free_ids.iter(),
        next: cur.next_id,
    };
    let mut alloc = cur.alloc.clone();
    let mut local: HashMap<Vec<u32>, u32> = HashMap::new();
    let mut writes = Vec::new();
    let mut removals = Vec::new();
    for key in &considered {
        let Some(fp) = plan.frontends.get(key) else {
            if cur.frontends.contains_key(key) {
                removals.push(*key);
            }
            continue;
        };
        let slots = slot_ids(cur, fp, &mut ids, &mut new_backends, &mut fresh);
        let value = SvcValue {
            id: fp.id,
            slot_base: 0,
            slot_count: slots.len() as u32,
            affinity_timeout: fp.affinity_timeout,
            flags: fp.flags,
            pad: 0,
            rev: cur.generation + 1,
        };
        if let Some((old, old_slots)) = cur.frontends.get(key) {
            if old.id == value.id
                && old.flags == value.flags
                && old.affinity_timeout == value.affinity_timeout
                && *old_slots == slots
            {
                continue;
            }
        }
        let (base, fresh) = if slots.is_empty() {
            (0, false)
        } else if let Some(base) = cur
            .ranges
            .shared(&slots)
            .or_else(|| local.get(&slots).copied())
        {
            (base, false)
        } else {
            let Some(base) = alloc.alloc(slots.len() as u32) else {
                let in_use: usize = cur
                    .frontends
                    .values()
                    .map(|(v, _)| v.slot_count as usize)
                    .sum();
                return Err(Error::CapacityExceeded {
                    what: "backend slot map (dp_slots)".to_owned(),
                    needed: plan.slots_needed().max(in_use + slots.len()),
                    capacity: caps.backend_slots as usize,
                });
            };
            local.insert(slots.clone(), base);
            (base, true)
        };
        writes.push((
            *key,
            SvcValue {
                slot_base: base,
                ..value
            },
            slots,
            fresh,
        ));
    }
    // Old backends stay until the services stop pointing at them.
    capacity(
        "backend map (dp_backends, id 0 reserved)",
        cur.backend_ids.len() + new_backends.len(),
        caps.backends.saturating_sub(1),
    )?;
    Ok(Prepared {
        new_backends,
        writes,
        removals,
        alloc,
    })
}

/// Makes the maps hold `plan`; with `dirty`, only those frontends may differ. Capacity errors
/// come before any write.
// One function on purpose: the order of the steps is what keeps packets safe.
#[allow(clippy::too_many_lines)]
pub(crate) fn write(
    maps: &mut Maps,
    cur: &mut Current,
    plan: &Plan,
    caps: &Capacities,
    dirty: Option<&BTreeSet<SvcKey>>,
) -> Result<WriteReport, Error> {
    let prep = prepare(cur, plan, caps, dirty)?;
    let mut n = 0usize;

    if cur.config != plan.config {
        maps.config
            .set(0, plan.config, 0)
            .map_err(merr("dp_config", "writing"))
            .map_err(Error::from)?;
        cur.config = plan.config;
        n += 1;
    }
    for (c, bits) in &plan.cidrs {
        if cur.cidrs.get(c) != Some(bits) {
            maps.cidrs
                .insert(&Key::new(c.1, c.0), bits, 0)
                .map_err(merr("dp_cidrs", "inserting"))
                .map_err(Error::from)?;
            cur.cidrs.insert(*c, *bits);
            n += 1;
        }
    }
    let stale: Vec<(Addr, u32)> = cur
        .cidrs
        .keys()
        .filter(|c| !plan.cidrs.contains_key(c))
        .copied()
        .collect();
    for c in stale {
        maps.cidrs
            .remove(&Key::new(c.1, c.0))
            .map_err(merr("dp_cidrs", "removing"))
            .map_err(Error::from)?;
        cur.cidrs.remove(&c);
        n += 1;
    }
    // 1. New backends.
    let (ids, values): (Vec<u32>, Vec<BackendValue>) = prep
        .new_backends
        .iter()
        .map(|((addr, port, family), id)| {
            let v = BackendValue {
                addr: *addr,
                port: Be16::new(*port),
                family: *family,
                flags: 0,
            };
            (*id, v)
        })
        .unzip();
    if !batch(&maps.backends_batch, "dp_backends", &ids, &values)? {
        for (id, v) in ids.iter().zip(&values) {
            maps.backends
                .set(*id, *v, 0)
                .map_err(merr("dp_backends", "writing"))
                .map_err(Error::from)?;
        }
    }
    for ((addr, port, family), id) in &prep.new_backends {
        cur.backend_ids.insert((*addr, *port, *family), *id);
        cur.used_ids.insert(*id, (*addr, *port, *family));
        cur.free_ids.remove(id);
        cur.next_id = cur.next_id.max(id + 1);
        n += 1;
    }
    // 2. Source ranges a new entry may need.
    let added: Vec<(SrcRangeData, u32)> = plan
        .src_ranges
        .difference(&cur.src_ranges)
        .copied()
        .collect();
    for r in added {
        maps.src_ranges
            .insert(&Key::new(r.1, r.0), 1, 0)
            .map_err(merr("dp_srcrange", "inserting"))
            .map_err(Error::from)?;
        cur.src_ranges.insert(r);
        n += 1;
    }
    // 3. Removed frontends go first: they free service-map room and nothing needs them.
    //    Their ranges are freed last, after every new range was taken as `prepare` planned.
    let mut affinity_ids = BTreeSet::new();
    let mut to_release: Vec<(Vec<u32>, u32)> = Vec::new();
    // Backend ids some frontend stopped pointing at: the only ones that may become unused.
    let mut dropped: BTreeSet<u32> = BTreeSet::new();
    cur.alloc = prep.alloc.clone();
    for key in &prep.removals {
        match maps.svc.remove(key) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(EbpfError::map("dp_svc", "removing", e).into()),
        }
        if let Some((old, old_ids)) = cur.frontends.remove(key) {
            add_refs(&mut cur.id_refs, &old_ids, -1);
            dropped.extend(old_ids.iter().copied());
            if old.flags & SVC_F_AFFINITY != 0 {
                affinity_ids.insert(old.id);
            }
            to_release.push((old_ids, old.slot_base));
        }
        n += 1;
    }
    // 4. Slots of every new range, then the entries that point at them.
    let (indexes, ids): (Vec<u32>, Vec<u32>) = prep
        .writes
        .iter()
        .filter(|w| w.3)
        .flat_map(|(_, value, slots, _)| {
            slots
                .iter()
                .enumerate()
                .map(move |(i, id)| (value.slot_base + i as u32, *id))
        })
        .unzip();
    if !batch(&maps.slots_batch, "dp_slots", &indexes, &ids)? {
        for (i, id) in indexes.iter().zip(&ids) {
            maps.slots
                .set(*i, id, 0)
                .map_err(merr("dp_slots", "writing"))
                .map_err(Error::from)?;
        }
    }
    n += indexes.len();
    let (keys, values): (Vec<SvcKey>, Vec<SvcValue>) =
        prep.writes.iter().map(|(k, v, _, _)| (*k, *v)).unzip();
    if !batch(&maps.svc_batch, "dp_svc", &keys, &values)? {
        for (key, value) in keys.iter().zip(&values) {
            maps.svc
                .insert(key, value, 0)
                .map_err(merr("dp_svc", "writing"))
                .map_err(Error::from)?;
        }
    }
    for (key, value, slots, _) in &prep.writes {
        cur.ranges.hold(slots, value.slot_base);
        add_refs(&mut cur.id_refs, slots, 1);
        if value.flags & SVC_F_AFFINITY != 0 {
            affinity_ids.insert(value.id);
        }
        if let Some((old, old_ids)) = cur.frontends.insert(*key, (*value, slots.clone())) {
            add_refs(&mut cur.id_refs, &old_ids, -1);
            dropped.extend(old_ids.iter().copied());
            if old.flags & SVC_F_AFFINITY != 0 {
                affinity_ids.insert(old.id);
            }
            to_release.push((old_ids, old.slot_base));
        }
        n += 1;
    }
    // 5. Old ranges nobody uses any more.
    for (ids, base) in to_release {
        if let Some((base, len)) = cur.ranges.release(&ids, base) {
            cur.alloc.release(base, len);
        }
    }
    let removed: Vec<(SrcRangeData, u32)> = cur
        .src_ranges
        .difference(&plan.src_ranges)
        .copied()
        .collect();
    for r in removed {
        maps.src_ranges
            .remove(&Key::new(r.1, r.0))
            .map_err(merr("dp_srcrange", "removing"))
            .map_err(Error::from)?;
        cur.src_ranges.remove(&r);
        n += 1;
    }
    // 6. Backends nobody points at any more: family 0 marks the id free. Established flows
    //    keep working: conntrack holds the backend address itself.
    //    A full sync looks at every id (adopted maps may hold ids nothing points at); an
    //    incremental one only at those a changed frontend let go of.
    let unused = |id: &u32| cur.id_refs.get(id).is_none_or(|n| *n == 0);
    let stale: Vec<((Addr, u16, u8), u32)> = if dirty.is_some() {
        dropped
            .iter()
            .filter(|id| unused(id))
            .filter_map(|id| cur.used_ids.get(id).map(|k| (*k, *id)))
            .collect()
    } else {
        cur.used_ids
            .iter()
            .filter(|(id, _)| unused(id))
            .map(|(id, k)| (*k, *id))
            .collect()
    };
    for (k, id) in stale {
        maps.backends
            .set(id, BackendValue::default(), 0)
            .map_err(merr("dp_backends", "clearing"))
            .map_err(Error::from)?;
        cur.backend_ids.remove(&k);
        cur.used_ids.remove(&id);
        cur.free_ids.insert(id);
        cur.id_refs.remove(&id);
        n += 1;
    }
    if !prep.writes.is_empty() || !prep.removals.is_empty() {
        cur.generation += 1;
    }
    if !affinity_ids.is_empty() {
        n += prune_affinity(maps, cur, &affinity_ids)?;
    }
    Ok(WriteReport { objects_written: n })
}

/// Drops affinity entries of the service ports in `ids` whose backend is no longer selectable.
fn prune_affinity(maps: &mut Maps, cur: &Current, ids: &BTreeSet<u32>) -> Result<usize, Error> {
    let mut allowed: BTreeMap<u32, BTreeSet<u32>> = BTreeMap::new();
    for (v, slots) in cur.frontends.values().filter(|(v, _)| ids.contains(&v.id)) {
        allowed
            .entry(v.id)
            .or_default()
            .extend(slots.iter().copied());
    }
    let mut stale = Vec::new();
    for item in &maps.affinity {
        let (k, v) = item
            .map_err(merr("dp_affinity", "reading"))
            .map_err(Error::from)?;
        if ids.contains(&k.svc_id)
            && !allowed
                .get(&k.svc_id)
                .is_some_and(|s| s.contains(&v.backend_id))
        {
            stale.push(k);
        }
    }
    for k in &stale {
        match maps.affinity.remove(k) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(EbpfError::map("dp_affinity", "removing", e).into()),
        }
    }
    Ok(stale.len())
}

#[cfg(test)]
mod tests {
    use super::SlotAlloc;

    #[test]
    fn slot_alloc_first_fit_merge_and_reserve() {
        let mut a = SlotAlloc::new(11);
        assert_eq!(a.alloc(4), Some(1));
        assert_eq!(a.alloc(4), Some(5));
        assert_eq!(a.alloc(3), None, "only 2 slots left");
        a.release(1, 4);
        assert_eq!(a.alloc(3), Some(1));
        a.release(1, 3);
        a.release(5, 4);
        assert_eq!(a.alloc(10), Some(1), "released ranges merge back into one");
        let mut b = SlotAlloc::new(11);
        assert!(b.reserve(3, 2));
        assert!(!b.reserve(4, 1), "already used");
        assert_eq!(b.alloc(2), Some(1));
        assert_eq!(b.alloc(6), Some(5));
    }
}
