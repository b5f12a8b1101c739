//! Writes a plan ([`Planner`]) into the maps, diffing against what they hold, in an order that never
//! shows a half-written service to packets: backends, then the new slot range, then the
//! service entry that points at it, then removals and freeing of old ranges.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use aya::maps::lpm_trie::Key;
use dataplane_core::{DesiredState, Error};

use crate::backends::BackendTable;
use crate::config::Capacities;
use crate::error::EbpfError;
use crate::loader::Maps;
use crate::map_table;
use crate::maps::{
    Addr, AffinityKey, BackendValue, Be16, CtKey, DpConfig, EvRate, LocalKey, LocalValue,
    SrcRangeData, SvcEntry, SvcKey, SvcValue, CFG_F_HOST_ROUTING, EV_KIND_MAX, SVC_F_AFFINITY,
};
use crate::mmap::MmapArray;
use crate::plan::{self, BackendRef, FrontendPlan, Frontends, PlanSink, Planner, Slots};

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

/// One slot range in `dp_slots`.
#[derive(Debug, Clone)]
struct Range {
    ids: Arc<[u32]>,
    /// Frontends pointing at it.
    users: u32,
}

/// Slot ranges are immutable once written and shared by every frontend whose slots are the
/// same (a ClusterIP and its NodePorts usually pick from the same backends; with Maglev that
/// saves a whole table per frontend). Each range's content is held once.
#[derive(Debug, Clone, Default)]
pub(crate) struct Ranges {
    /// (base, length) -> content and users.
    by_place: HashMap<(u32, u32), Range>,
    /// Content -> the base new frontends with it share. Ranges adopted from the maps whose
    /// content duplicates another's are only in `by_place`.
    by_content: HashMap<Arc<[u32]>, u32>,
}

impl Ranges {
    fn shared(&self, slots: &[u32]) -> Option<u32> {
        self.by_content.get(slots).copied()
    }

    fn get(&self, base: u32, len: u32) -> &[u32] {
        if len == 0 {
            return &[];
        }
        self.by_place.get(&(base, len)).map_or(&[], |r| &r.ids)
    }
}

/// What the maps hold, as far as the writer is concerned.
#[derive(Debug, Clone)]
pub(crate) struct Current {
    pub frontends: HashMap<SvcKey, SvcValue>,
    ranges: Ranges,
    /// Backends by id and by key.
    backends: BackendTable,
    /// Ids below `backends.id_bound()` that are not in use, for allocation without a scan.
    free_ids: BTreeSet<u32>,
    /// Index: backend id -> number of slot ranges that hold it.
    id_refs: Vec<u32>,
    pub src_ranges: BTreeSet<(SrcRangeData, u32)>,
    pub cidrs: BTreeMap<(Addr, u32), u8>,
    pub config: DpConfig,
    pub alloc: SlotAlloc,
}

/// Service entries per `BPF_MAP_UPDATE_BATCH` call.
const SVC_CHUNK: usize = 4096;

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

fn out_of_bounds(map: &'static str, index: u32, max_entries: u32) -> EbpfError {
    EbpfError::map(
        map,
        "writing",
        aya::maps::MapError::OutOfBounds { index, max_entries },
    )
}

fn mmap_error(map: &'static str, op: &'static str, e: std::io::Error) -> EbpfError {
    EbpfError::map(
        map,
        op,
        aya::maps::MapError::SyscallError(aya::sys::SyscallError {
            call: "mmap",
            io_error: e,
        }),
    )
}

/// An array map as the writer uses it: through its shared mapping when it has one, with
/// batch calls otherwise, element by element where the kernel has neither.
struct ArrayIo<'a, V: aya::Pod> {
    name: &'static str,
    mmap: Option<&'a mut MmapArray<V>>,
    batch: &'a crate::batch::BatchFd,
    array: &'a mut aya::maps::Array<aya::maps::MapData, V>,
}

impl<'a> ArrayIo<'a, BackendValue> {
    fn backends(maps: &'a mut Maps) -> Self {
        ArrayIo {
            name: map_table::BACKENDS.name,
            mmap: maps.backends_mmap.as_mut(),
            batch: &maps.backends_batch,
            array: &mut maps.backends,
        }
    }
}

impl<'a> ArrayIo<'a, u32> {
    fn slots(maps: &'a mut Maps) -> Self {
        ArrayIo {
            name: map_table::SLOTS.name,
            mmap: maps.slots_mmap.as_mut(),
            batch: &maps.slots_batch,
            array: &mut maps.slots,
        }
    }
}

impl<V: aya::Pod> ArrayIo<'_, V> {
    /// Writes each `(index, value)`; returns how many.
    fn write(&mut self, items: impl Iterator<Item = (u32, V)>) -> Result<usize, Error> {
        if let Some(m) = self.mmap.as_deref_mut() {
            // Every mapped chunk counts towards the process's RSS. A bulk write in index
            // order (a full sync: ids and slot ranges are handed out ascending) unmaps each
            // chunk it has left, so that one chunk of the array is resident at a time, not
            // all it wrote. Small writes (a change: fewer than an
            // eighth of a chunk) keep their chunks mapped for the next one, and so does a
            // write out of order.
            let bulk = (m.chunk_elements() / 8).max(1);
            let mut n = 0;
            let mut at: Option<usize> = None;
            let mut ascending = true;
            for (i, v) in items {
                let c = m.chunk_of(i);
                match at {
                    Some(p) if c < p => ascending = false,
                    Some(p) if c > p && ascending && n >= bulk => m.unmap_chunk(p),
                    _ => {}
                }
                at = Some(c);
                let stored = m
                    .set(i, v)
                    .map_err(|e| mmap_error(self.name, "writing", e))?;
                if !stored {
                    return Err(out_of_bounds(self.name, i, m.len()).into());
                }
                n += 1;
            }
            MmapArray::<V>::publish();
            if let (Some(p), true) = (at, ascending && n >= bulk) {
                m.unmap_chunk(p);
            }
            return Ok(n);
        }
        let (indexes, values): (Vec<u32>, Vec<V>) = items.unzip();
        if !batch(self.batch, self.name, &indexes, &values)? {
            for (i, v) in indexes.iter().zip(&values) {
                self.array
                    .set(*i, *v, 0)
                    .map_err(merr(self.name, "writing"))?;
            }
        }
        Ok(indexes.len())
    }
}

/// `count` elements of array map `map` from index `start` (fewer where the array ends): from
/// the mapping, else one batch lookup per few thousand elements, else element by element.
fn read_array<V: aya::Pod>(
    mapped: Option<&MmapArray<V>>,
    fd: &crate::batch::BatchFd,
    array: &aya::maps::Array<aya::maps::MapData, V>,
    map: &'static str,
    start: u32,
    count: u32,
) -> Result<Vec<V>, EbpfError> {
    if let Some(m) = mapped {
        return m
            .read(start, count)
            .map_err(|e| mmap_error(map, "reading", e));
    }
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

/// The distinct ids of a slot range.
fn distinct(ids: &[u32]) -> Vec<u32> {
    let mut d = ids.to_vec();
    d.sort_unstable();
    d.dedup();
    d
}

impl Current {
    /// Reads the maps (adopting what an earlier process left pinned).
    pub(crate) fn read(maps: &Maps, caps: &Capacities) -> Result<Self, EbpfError> {
        let all = read_array(
            maps.backends_mmap.as_ref(),
            &maps.backends_batch,
            &maps.backends,
            map_table::BACKENDS.name,
            0,
            maps.backends.len(),
        )?;
        let mut backends = BackendTable::default();
        for (id, value) in all.iter().enumerate() {
            let k = (value.addr, value.port.get(), value.family);
            // A key twice (maps an earlier version left inconsistent): the first id keeps it,
            // the other is unused and freed by the next full sync.
            if value.family != 0 && id != 0 && backends.get(&k).is_none() {
                backends.insert(k, id as u32);
            }
        }
        let free_ids = (1..backends.id_bound())
            .filter(|i| backends.key(*i).is_none())
            .collect();
        let mut cur = Self {
            frontends: HashMap::new(),
            ranges: Ranges::default(),
            id_refs: vec![0; backends.id_bound() as usize],
            backends,
            free_ids,
            src_ranges: BTreeSet::new(),
            cidrs: BTreeMap::new(),
            config: DpConfig::default(),
            alloc: SlotAlloc::new(caps.backend_slots),
        };
        for item in &maps.svc {
            let (k, SvcEntry { v, .. }) = item.map_err(merr(map_table::SVC.name, "reading"))?;
            if v.slot_count > 0 {
                if let Some(r) = cur.ranges.by_place.get_mut(&(v.slot_base, v.slot_count)) {
                    r.users += 1;
                } else {
                    // Frontends with the same backends share a range: read each once.
                    let ids = read_array(
                        maps.slots_mmap.as_ref(),
                        &maps.slots_batch,
                        &maps.slots,
                        map_table::SLOTS.name,
                        v.slot_base,
                        v.slot_count,
                    )?;
                    if ids.len() != v.slot_count as usize {
                        return Err(EbpfError::map(
                            map_table::SLOTS.name,
                            "reading",
                            aya::maps::MapError::OutOfBounds {
                                index: v.slot_base.saturating_add(v.slot_count),
                                max_entries: maps.slots.len(),
                            },
                        ));
                    }
                    if !cur.alloc.reserve(v.slot_base, v.slot_count) {
                        tracing::warn!(
                            base = v.slot_base,
                            count = v.slot_count,
                            "overlapping slot range in pinned maps"
                        );
                    }
                    cur.add_range(&ids.into(), v.slot_base, 0);
                }
            }
            cur.frontends.insert(k, v);
        }
        for key in maps.src_ranges.keys() {
            let key = key.map_err(merr(map_table::SRC_RANGES.name, "reading"))?;
            cur.src_ranges.insert((key.data(), key.prefix_len()));
        }
        for item in &maps.cidrs {
            let (key, bits) = item.map_err(merr(map_table::CIDRS.name, "reading"))?;
            cur.cidrs.insert((key.data(), key.prefix_len()), bits);
        }
        cur.config = maps
            .config
            .get(&0, 0)
            .map_err(merr(map_table::CONFIG.name, "reading"))?;
        Ok(cur)
    }

    /// The backend ids `v`'s slots point at.
    pub(crate) fn slots_of(&self, v: &SvcValue) -> &[u32] {
        self.ranges.get(v.slot_base, v.slot_count)
    }

    /// Records a range at `base` with `users` frontends (a new one counts its ids as held).
    fn add_range(&mut self, ids: &Arc<[u32]>, base: u32, users: u32) {
        self.add_range_with(ids, base, users.max(1));
    }

    /// [`Current::add_range`] with exactly `users` (0: the writes that point at it follow).
    fn add_range_with(&mut self, ids: &Arc<[u32]>, base: u32, users: u32) {
        let len = ids.len() as u32;
        for id in distinct(ids) {
            if let Some(n) = self.id_refs.get_mut(id as usize) {
                *n += 1;
            }
        }
        self.ranges.by_place.insert(
            (base, len),
            Range {
                ids: Arc::clone(ids),
                users,
            },
        );
        self.ranges
            .by_content
            .entry(Arc::clone(ids))
            .or_insert(base);
    }

    /// One more frontend points at the range (`base`, `len`), which the maps hold (or this
    /// write added).
    fn hold(&mut self, base: u32, len: u32) {
        if len == 0 {
            return;
        }
        let r = self.ranges.by_place.get_mut(&(base, len));
        debug_assert!(
            r.is_some(),
            "a write points at range ({base}, {len}) nobody holds"
        );
        if let Some(r) = r {
            r.users += 1;
        }
    }

    /// One frontend less points at the range (`base`, `len`). When it was the last, the
    /// range is returned to be freed and ids nobody holds any more go to `dropped`.
    fn release(&mut self, base: u32, len: u32, dropped: &mut Vec<u32>) -> Option<(u32, u32)> {
        if len == 0 {
            return None;
        }
        let Some(r) = self.ranges.by_place.get_mut(&(base, len)) else {
            return Some((base, len));
        };
        r.users -= 1;
        if r.users > 0 {
            return None;
        }
        let ids = Arc::clone(&r.ids);
        self.ranges.by_place.remove(&(base, len));
        if self.ranges.by_content.get(&ids[..]) == Some(&base) {
            self.ranges.by_content.remove(&ids[..]);
        }
        for id in distinct(&ids) {
            if let Some(n) = self.id_refs.get_mut(id as usize) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    dropped.push(id);
                }
            }
        }
        Some((base, len))
    }

    /// Takes backends `prepare` entered out again (their write was refused or failed), and
    /// the id bound back to `bound`.
    fn forget(&mut self, new_backends: &[u32], bound: u32) {
        for id in new_backends {
            self.backends.remove(*id);
        }
        self.backends.truncate_ids(bound);
    }

    /// Slots in use by the ranges the maps hold.
    fn slots_in_use(&self) -> usize {
        self.ranges
            .by_place
            .keys()
            .map(|(_, len)| *len as usize)
            .sum()
    }

    fn unused(&self, id: u32) -> bool {
        self.id_refs.get(id as usize).is_none_or(|n| *n == 0)
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

pub(crate) struct Prepared {
    /// Whether it is an update (not a full plan).
    incremental: bool,
    /// Ids of the backends `prepare` entered (their keys are in the table).
    new_backends: Vec<u32>,
    /// `backends.id_bound()` before: where a failed write takes it back to.
    id_bound: u32,
    /// The frontends to (re)write, with their slot bases. A map, not a list: after a full
    /// sync into empty maps it becomes the writer's mirror as it is, instead of being copied
    /// into one (both whole were the peak of such a sync).
    writes: HashMap<SvcKey, SvcValue>,
    /// The new ranges (their slots must be written): base and content, by base.
    fresh: Vec<(u32, Arc<[u32]>)>,
    removals: Vec<SvcKey>,
    alloc: SlotAlloc,
}

/// The backend ids of the range (`base`, `len`) a write points at: a new one (`fresh`, by
/// base) or one the maps hold.
fn range_ids<'a>(
    fresh: &'a [(u32, Arc<[u32]>)],
    ranges: &'a Ranges,
    base: u32,
    len: u32,
) -> &'a [u32] {
    if len == 0 {
        return &[];
    }
    match fresh.binary_search_by_key(&base, |(b, _)| *b) {
        Ok(i) => &fresh[i].1,
        Err(_) => ranges.get(base, len),
    }
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

/// Translates planned slots into backend ids, giving fresh ids to backends not in the maps
/// yet (entered into `backends` right away, and listed in `new_backends` to be written,
/// or taken out again if the write is refused). Each of the plan's backends is looked up
/// once; consecutive frontends sharing their slots (one service's) are translated once.
struct Translator<'a> {
    backends: &'a mut BackendTable,
    new_backends: &'a mut Vec<u32>,
    fresh: FreshIds<'a>,
    /// Plan index (into [`Frontends::backends`]) -> backend id, 0 while not looked up yet.
    ids: Vec<u32>,
    last: Option<(Slots, Arc<[u32]>)>,
}

impl Translator<'_> {
    /// `planned`: the plan's backends (so far: a plan made chunk by chunk adds to them).
    fn id(&mut self, planned: &[BackendRef], i: u32) -> u32 {
        let i = i as usize;
        if self.ids.len() < planned.len() {
            self.ids.resize(planned.len(), 0);
        }
        if self.ids[i] == 0 {
            let b = planned[i];
            let k = (b.addr, b.port, b.family);
            self.ids[i] = self.backends.get(&k).unwrap_or_else(|| {
                let id = self.fresh.take();
                self.backends.insert(k, id);
                self.new_backends.push(id);
                id
            });
        }
        self.ids[i]
    }

    fn slot_ids(&mut self, planned: &[BackendRef], slots: &Slots) -> Arc<[u32]> {
        if let Some((from, to)) = &self.last {
            if Arc::ptr_eq(from, slots) {
                return Arc::clone(to);
            }
        }
        let out: Arc<[u32]> = slots.iter().map(|i| self.id(planned, *i)).collect();
        self.last = Some((Arc::clone(slots), Arc::clone(&out)));
        out
    }
}

/// The entries of the maps to remove: for a full plan those it did not plan (`seen`, `None`
/// when the maps held no entries), for an update those it says are gone.
fn removals(cur: &Current, gone: Option<&[SvcKey]>, seen: Option<&HashSet<SvcKey>>) -> Vec<SvcKey> {
    match gone {
        None => cur
            .frontends
            .keys()
            .filter(|k| seen.is_some_and(|s| !s.contains(k)))
            .copied()
            .collect(),
        Some(gone) => gone
            .iter()
            .filter(|k| cur.frontends.contains_key(k))
            .copied()
            .collect(),
    }
}

/// What a write programs: an update planned already, or a full plan of a state, made chunk
/// by chunk while the write is prepared (the plan is never whole).
pub(crate) enum ToWrite<'a> {
    Update(Frontends),
    Full {
        state: &'a DesiredState,
        maglev_size: u32,
    },
}

/// Checks every capacity and allocates everything before a single map write. The backends
/// new to the maps are entered in `cur.backends` (and taken out again on an error). For
/// [`ToWrite::Full`] it plans: `planner` becomes the new plan (and is left as it was on an
/// error of planning).
pub(crate) fn prepare(
    cur: &mut Current,
    planner: &mut Planner,
    what: ToWrite<'_>,
    caps: &Capacities,
) -> Result<Prepared, Error> {
    let mut new_backends = Vec::new();
    let backends_bound = match &what {
        ToWrite::Full { state, .. } if cur.frontends.is_empty() => {
            Some(plan::full_bounds(state).backends)
        }
        _ => None,
    };
    if let Some(bound) = backends_bound {
        // A full plan into new maps: the backend table and the list of new backends are
        // sized once (more than the map holds is refused later anyway).
        let n = bound.min(caps.backends as usize);
        cur.backends.reserve(n);
        new_backends.reserve(n);
    }
    let bound = cur.backends.id_bound();
    let prepared = prepare_in(cur, planner, what, caps, &mut new_backends);
    match prepared {
        Ok(mut p) => {
            p.new_backends = new_backends;
            p.id_bound = bound;
            Ok(p)
        }
        Err(e) => {
            cur.forget(&new_backends, bound);
            Err(e)
        }
    }
}

impl Prepared {
    /// Gives up a prepared write that will not be made: the backends [`prepare`] entered
    /// leave `cur` again (nothing was written).
    pub(crate) fn abandon(self, cur: &mut Current) {
        cur.forget(&self.new_backends, self.id_bound);
    }
}

/// Where slots go: nowhere when there are none, into a range the maps or this write already
/// have with the same content, else a fresh range (`true`: its slots must be written).
/// `None`: no room.
fn place(
    ranges: &Ranges,
    local: &mut HashMap<Arc<[u32]>, u32>,
    alloc: &mut SlotAlloc,
    slots: &Arc<[u32]>,
) -> Option<(u32, bool)> {
    if slots.is_empty() {
        return Some((0, false));
    }
    if let Some(base) = ranges
        .shared(slots)
        .or_else(|| local.get(&slots[..]).copied())
    {
        return Some((base, false));
    }
    let base = alloc.alloc(slots.len() as u32)?;
    local.insert(Arc::clone(slots), base);
    Some((base, true))
}

/// The translation of a plan as it comes (frontend by frontend, each freed once taken).
struct Preparer<'a> {
    cur_frontends: &'a HashMap<SvcKey, SvcValue>,
    ranges: &'a Ranges,
    tr: Translator<'a>,
    alloc: SlotAlloc,
    local: HashMap<Arc<[u32]>, u32>,
    writes: HashMap<SvcKey, SvcValue>,
    fresh_ranges: Vec<(u32, Arc<[u32]>)>,
    /// Every key planned, for a full plan over maps that hold entries: the others go. The
    /// plan holds each key once (a ClusterIP's wildcard too, see `Planner::add_service`).
    seen: Option<HashSet<SvcKey>>,
    /// Whether the plan is a full one into empty maps (it writes nearly every entry).
    fresh_maps: bool,
    /// Whether the plan is a full one.
    full: bool,
    added: usize,
    /// Slots of new ranges that did not fit, for the capacity error.
    short: usize,
}

impl Preparer<'_> {
    fn take(&mut self, key: SvcKey, fp: &FrontendPlan, planned: &[BackendRef]) {
        if let Some(seen) = &mut self.seen {
            let first = seen.insert(key);
            debug_assert!(first, "the plan holds {key:?} twice");
        }
        let slots = self.tr.slot_ids(planned, &fp.slots);
        let value = SvcValue {
            id: fp.id,
            slot_base: 0,
            slot_count: slots.len() as u32,
            affinity_timeout: fp.affinity_timeout,
            flags: fp.flags,
            pad: 0,
        };
        match self.cur_frontends.get(&key) {
            Some(old)
                if old.id == value.id
                    && old.flags == value.flags
                    && old.affinity_timeout == value.affinity_timeout
                    && self.ranges.get(old.slot_base, old.slot_count) == &slots[..] =>
            {
                return;
            }
            Some(_) => {}
            None => self.added += 1,
        }
        let (base, fresh) = place(self.ranges, &mut self.local, &mut self.alloc, &slots)
            .unwrap_or_else(|| {
                self.short += slots.len();
                self.local.insert(Arc::clone(&slots), 0);
                (0, false)
            });
        if fresh {
            self.fresh_ranges.push((base, slots));
        }
        self.writes.insert(
            key,
            SvcValue {
                slot_base: base,
                ..value
            },
        );
    }
}

impl PlanSink for Preparer<'_> {
    fn expect(&mut self, bounds: plan::FullBounds) {
        if self.fresh_maps {
            self.writes.reserve(bounds.frontends);
        } else if self.full {
            self.seen = Some(HashSet::with_capacity(bounds.frontends));
        }
    }

    // By value: each planned slot list is freed once translated (the plan's slots are the
    // biggest part of it), so the plan and its translation are not both whole at the peak.
    fn take(&mut self, chunk: Vec<(SvcKey, FrontendPlan)>, backends: &[BackendRef]) {
        for (key, fp) in chunk {
            Preparer::take(self, key, &fp, backends);
        }
    }
}

fn prepare_in(
    cur: &mut Current,
    planner: &mut Planner,
    what: ToWrite<'_>,
    caps: &Capacities,
    new_backends: &mut Vec<u32>,
) -> Result<Prepared, Error> {
    let known_backends = cur.backends.len();
    let Current {
        frontends: cur_frontends,
        ranges,
        backends,
        free_ids,
        alloc: cur_alloc,
        ..
    } = cur;
    let next = backends.id_bound();
    let full = matches!(what, ToWrite::Full { .. });
    let mut p = Preparer {
        fresh_maps: full && cur_frontends.is_empty(),
        full,
        cur_frontends,
        ranges,
        tr: Translator {
            backends,
            new_backends,
            fresh: FreshIds {
                free: free_ids.iter(),
                next,
            },
            ids: Vec::new(),
            last: None,
        },
        alloc: cur_alloc.clone(),
        local: HashMap::new(),
        writes: HashMap::new(),
        fresh_ranges: Vec::new(),
        seen: None,
        added: 0,
        short: 0,
    };
    let gone = match what {
        ToWrite::Update(frontends) => {
            let Frontends {
                planned,
                gone,
                backends: planned_backends,
                ..
            } = frontends;
            for (key, fp) in planned {
                p.take(key, &fp, &planned_backends);
            }
            gone
        }
        ToWrite::Full { state, maglev_size } => {
            let (new, _) = Planner::full_chunked(state, maglev_size, &mut p)?;
            *planner = new;
            None
        }
    };
    capacity(
        &format!("source range map ({})", map_table::SRC_RANGES.name),
        planner.src_ranges.len(),
        caps.source_ranges,
    )?;
    let Preparer {
        alloc,
        local,
        writes,
        mut fresh_ranges,
        seen,
        added,
        short,
        tr,
        ..
    } = p;
    // Ranges are handed out first fit: mostly ascending already.
    fresh_ranges.sort_unstable_by_key(|(base, _)| *base);
    let new_count = tr.new_backends.len();
    drop(tr);
    if short > 0 {
        return Err(slots_exceeded(cur, &local, caps));
    }
    let removals = removals(cur, gone.as_deref(), seen.as_ref());
    let entries = cur.frontends.len() + added - removals.len();
    check_entries(caps, entries, known_backends + new_count)?;
    Ok(Prepared {
        new_backends: Vec::new(),
        id_bound: 0,
        incremental: gone.is_some(),
        writes,
        fresh: fresh_ranges,
        removals,
        alloc,
    })
}

/// The error of a write whose new ranges (`local`, content -> base) do not fit.
fn slots_exceeded(cur: &Current, local: &HashMap<Arc<[u32]>, u32>, caps: &Capacities) -> Error {
    let new: usize = local.keys().map(|s| s.len()).sum();
    Error::CapacityExceeded {
        what: format!("backend slot map ({})", map_table::SLOTS.name),
        needed: cur.slots_in_use() + new,
        capacity: caps.backend_slots as usize,
    }
}

/// The service entries and backends a write leaves (old backends stay until the services
/// stop pointing at them) against the maps' sizes.
fn check_entries(caps: &Capacities, entries: usize, backends: usize) -> Result<(), Error> {
    capacity(
        &format!("service map ({})", map_table::SVC.name),
        entries,
        caps.services,
    )?;
    capacity(
        &format!("backend map ({}, id 0 reserved)", map_table::BACKENDS.name),
        backends,
        caps.backends.saturating_sub(1),
    )
}

/// Makes the maps hold what `planner` and `prep` (see [`prepare`], which checked the
/// capacities before any write) say.
// One function on purpose: the order of the steps is what keeps packets safe.
#[allow(clippy::too_many_lines)]
pub(crate) fn write(
    maps: &mut Maps,
    cur: &mut Current,
    planner: &Planner,
    prep: Prepared,
) -> Result<WriteReport, Error> {
    let incremental = prep.incremental;
    let mut n = 0usize;
    let node = &planner.node;

    if cur.config != node.config {
        maps.config
            .set(0, node.config, 0)
            .map_err(merr(map_table::CONFIG.name, "writing"))
            .map_err(Error::from)?;
        cur.config = node.config;
        n += 1;
    }
    for (c, bits) in &node.cidrs {
        if cur.cidrs.get(c) != Some(bits) {
            maps.cidrs
                .insert(&Key::new(c.1, c.0), bits, 0)
                .map_err(merr(map_table::CIDRS.name, "inserting"))
                .map_err(Error::from)?;
            cur.cidrs.insert(*c, *bits);
            n += 1;
        }
    }
    let stale: Vec<(Addr, u32)> = cur
        .cidrs
        .keys()
        .filter(|c| !node.cidrs.contains_key(c))
        .copied()
        .collect();
    for c in stale {
        maps.cidrs
            .remove(&Key::new(c.1, c.0))
            .map_err(merr(map_table::CIDRS.name, "removing"))
            .map_err(Error::from)?;
        cur.cidrs.remove(&c);
        n += 1;
    }
    // 1. New backends.
    let table = &cur.backends;
    let values = prep.new_backends.iter().filter_map(|id| {
        let (addr, port, family) = table.key(*id)?;
        let v = BackendValue {
            addr,
            port: Be16::new(port),
            family,
            flags: 0,
        };
        Some((*id, v))
    });
    if let Err(e) = ArrayIo::backends(maps).write(values) {
        cur.forget(&prep.new_backends, prep.id_bound);
        return Err(e);
    }
    cur.id_refs.resize(cur.backends.id_bound() as usize, 0);
    for id in &prep.new_backends {
        cur.free_ids.remove(id);
        n += 1;
    }
    // 2. Source ranges a new entry may need.
    let added: Vec<(SrcRangeData, u32)> = planner
        .src_ranges
        .difference(&cur.src_ranges)
        .copied()
        .collect();
    for r in added {
        maps.src_ranges
            .insert(&Key::new(r.1, r.0), 1, 0)
            .map_err(merr(map_table::SRC_RANGES.name, "inserting"))
            .map_err(Error::from)?;
        cur.src_ranges.insert(r);
        n += 1;
    }
    // 3. Removed frontends go first: they free service-map room and nothing needs them.
    //    Their ranges are freed last, after every new range was taken as `prepare` planned.
    let mut affinity_ids = BTreeSet::new();
    let mut to_release: Vec<(u32, u32)> = Vec::new();
    cur.alloc = prep.alloc;
    for key in &prep.removals {
        crate::error::removed(maps.svc.remove(key))
            .map_err(|e| Error::from(EbpfError::map(map_table::SVC.name, "removing", e)))?;
        if let Some(old) = cur.frontends.remove(key) {
            if old.flags & SVC_F_AFFINITY != 0 {
                affinity_ids.insert(old.id);
            }
            to_release.push((old.slot_base, old.slot_count));
        }
        n += 1;
    }
    // 4. Slots of every new range, then the entries that point at them.
    let slots = prep.fresh.iter().flat_map(|(base, ids)| {
        ids.iter()
            .enumerate()
            .map(move |(i, id)| (base + i as u32, *id))
    });
    n += ArrayIo::slots(maps).write(slots)?;
    // In chunks: each entry is complete on its own (its slots and backends are written), and
    // the key and value arrays stay small.
    let mut entries = prep.writes.iter();
    let mut keys = Vec::with_capacity(SVC_CHUNK.min(prep.writes.len()));
    let mut values = Vec::with_capacity(keys.capacity());
    loop {
        keys.clear();
        values.clear();
        for (key, v) in entries.by_ref().take(SVC_CHUNK) {
            keys.push(*key);
            values.push(SvcEntry::new(
                *v,
                range_ids(&prep.fresh, &cur.ranges, v.slot_base, v.slot_count),
            ));
        }
        if keys.is_empty() {
            break;
        }
        if !batch(&maps.svc_batch, map_table::SVC.name, &keys, &values)? {
            for (key, value) in keys.iter().zip(&values) {
                maps.svc
                    .insert(key, value, 0)
                    .map_err(merr(map_table::SVC.name, "writing"))
                    .map_err(Error::from)?;
            }
        }
    }
    drop((keys, values));
    // A full sync sizes the tables once: grown by doubling, they leave their smaller copies
    // behind as free heap. (An update's writes mostly replace entries: no reserve.)
    if !incremental {
        let fresh_ranges = prep.fresh.len();
        cur.ranges.by_place.reserve(fresh_ranges);
        cur.ranges.by_content.reserve(fresh_ranges);
    }
    for (base, ids) in prep.fresh {
        cur.add_range_with(&ids, base, 0);
    }
    for value in prep.writes.values() {
        cur.hold(value.slot_base, value.slot_count);
        if value.flags & SVC_F_AFFINITY != 0 {
            affinity_ids.insert(value.id);
        }
        n += 1;
    }
    if cur.frontends.is_empty() {
        // Nothing to replace: the writes are the mirror.
        cur.frontends = prep.writes;
    } else {
        if !incremental {
            cur.frontends.reserve(prep.writes.len());
        }
        for (key, value) in prep.writes {
            if let Some(old) = cur.frontends.insert(key, value) {
                if old.flags & SVC_F_AFFINITY != 0 {
                    affinity_ids.insert(old.id);
                }
                to_release.push((old.slot_base, old.slot_count));
            }
        }
    }
    // 5. Old ranges nobody uses any more; the backend ids only they held.
    let mut dropped = Vec::new();
    for (base, len) in to_release {
        if let Some((base, len)) = cur.release(base, len, &mut dropped) {
            cur.alloc.release(base, len);
        }
    }
    let removed: Vec<(SrcRangeData, u32)> = cur
        .src_ranges
        .difference(&planner.src_ranges)
        .copied()
        .collect();
    for r in removed {
        maps.src_ranges
            .remove(&Key::new(r.1, r.0))
            .map_err(merr(map_table::SRC_RANGES.name, "removing"))
            .map_err(Error::from)?;
        cur.src_ranges.remove(&r);
        n += 1;
    }
    // 6. Backends nobody points at any more: family 0 marks the id free. Established flows
    //    keep working: conntrack holds the backend address itself.
    //    A full sync looks at every id (adopted maps may hold ids nothing points at); an
    //    incremental one only at those a released range held.
    let stale: Vec<u32> = if incremental {
        dropped
            .into_iter()
            .filter(|id| cur.unused(*id) && cur.backends.key(*id).is_some())
            .collect()
    } else {
        cur.backends.ids().filter(|id| cur.unused(*id)).collect()
    };
    ArrayIo::backends(maps).write(stale.iter().map(|id| (*id, BackendValue::default())))?;
    for id in stale {
        cur.backends.remove(id);
        cur.free_ids.insert(id);
        n += 1;
    }
    if !affinity_ids.is_empty() {
        n += prune_affinity(maps, cur, &affinity_ids)?;
    }
    Ok(WriteReport { objects_written: n })
}

/// Drops affinity entries of the service ports in `ids` whose backend is no longer selectable.
fn prune_affinity(maps: &mut Maps, cur: &Current, ids: &BTreeSet<u32>) -> Result<usize, Error> {
    let mut allowed: BTreeMap<u32, BTreeSet<u32>> = BTreeMap::new();
    for v in cur.frontends.values().filter(|v| ids.contains(&v.id)) {
        allowed
            .entry(v.id)
            .or_default()
            .extend(cur.slots_of(v).iter().copied());
    }
    let mut stale = Vec::new();
    for item in &maps.affinity {
        let (k, v) = item
            .map_err(merr(map_table::AFFINITY.name, "reading"))
            .map_err(Error::from)?;
        if ids.contains(&k.svc_id)
            && !allowed
                .get(&k.svc_id)
                .is_some_and(|s| s.contains(&v.backend_id))
        {
            stale.push(k);
        }
    }
    remove_affinity(maps, &stale)?;
    Ok(stale.len())
}

/// Sets `dp_config`'s host-routing flag to `on`: the process's setting, not the state's (a
/// `dp_config` pinned by an earlier process must not keep its setting until the first
/// apply). Returns the entries written.
pub(crate) fn set_host_routing(
    maps: &mut Maps,
    cur: &mut Current,
    on: bool,
) -> Result<usize, EbpfError> {
    let flags = if on {
        cur.config.flags | CFG_F_HOST_ROUTING
    } else {
        cur.config.flags & !CFG_F_HOST_ROUTING
    };
    if flags == cur.config.flags {
        return Ok(0);
    }
    let config = DpConfig {
        flags,
        ..cur.config
    };
    maps.config
        .set(0, config, 0)
        .map_err(merr(map_table::CONFIG.name, "writing"))?;
    cur.config = config;
    Ok(1)
}

/// Sets `dp_config`'s flow-event rate limits (`ev_limits`) to `limits`: the process's
/// setting, not the state's, written when the programs load and when it changes. Read from the
/// map and written back with only the limits changed, as the events' readers set their flags
/// (`CFG_F_EV_*`) through the pin (the caller holds their lock). Returns the entries written.
pub(crate) fn set_event_limits(
    maps: &mut Maps,
    cur: &mut Current,
    limits: [EvRate; EV_KIND_MAX as usize],
) -> Result<usize, EbpfError> {
    let mut config = maps
        .config
        .get(&0, 0)
        .map_err(merr(map_table::CONFIG.name, "reading"))?;
    cur.config.flags = config.flags;
    if config.ev_limits == limits {
        cur.config.ev_limits = limits;
        return Ok(0);
    }
    config.ev_limits = limits;
    maps.config
        .set(0, config, 0)
        .map_err(merr(map_table::CONFIG.name, "writing"))?;
    cur.config = config;
    Ok(1)
}

/// Makes `dp_local` hold `want` (pod address -> the index of its interface): stale entries
/// go, then new and changed ones are written. Returns the entries written or removed.
///
/// `written` is what the map held after the last call (`None`: unknown, read back from the
/// map, one `bpf()` call per key and one per value): reading the map on every sync was ~32
/// µs of an endpoint change that alters nothing in it. It is taken for the call and put back
/// only when every write succeeded, so that after a failure the next call reads the map again.
pub(crate) fn sync_local(
    maps: &mut Maps,
    want: &BTreeMap<LocalKey, u32>,
    written: &mut Option<BTreeMap<LocalKey, u32>>,
) -> Result<usize, EbpfError> {
    let have = match written.take() {
        Some(have) => have,
        None => maps
            .local
            .iter()
            .map(|r| r.map(|(k, v)| (k, v.ifindex)))
            .collect::<Result<_, _>>()
            .map_err(merr(map_table::LOCAL.name, "reading"))?,
    };
    let mut n = 0;
    for k in have.keys().filter(|k| !want.contains_key(k)) {
        crate::error::removed(maps.local.remove(k))
            .map_err(merr(map_table::LOCAL.name, "removing"))?;
        n += 1;
    }
    for (k, ifindex) in want {
        if have.get(k) != Some(ifindex) {
            maps.local
                .insert(k, LocalValue { ifindex: *ifindex }, 0)
                .map_err(merr(map_table::LOCAL.name, "writing"))?;
            n += 1;
        }
    }
    *written = Some(want.clone());
    Ok(n)
}

/// Deletes conntrack entries (GC): a key already gone counts as deleted.
pub(crate) fn remove_ct<'a>(
    maps: &mut Maps,
    keys: impl IntoIterator<Item = &'a CtKey>,
) -> Result<(), EbpfError> {
    for k in keys {
        crate::error::removed(maps.ct.remove(k)).map_err(merr(map_table::CT.name, "removing"))?;
    }
    Ok(())
}

/// Deletes session-affinity entries (GC, pruning): a key already gone counts as deleted.
pub(crate) fn remove_affinity(maps: &mut Maps, keys: &[AffinityKey]) -> Result<(), EbpfError> {
    for k in keys {
        crate::error::removed(maps.affinity.remove(k))
            .map_err(merr(map_table::AFFINITY.name, "removing"))?;
    }
    Ok(())
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
