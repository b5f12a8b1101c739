//! The writer's view of `dp_backends`: which backend has which id, both ways.
//!
//! A `HashMap<(Addr, port, family), id>` next to the id-indexed list would hold every key
//! twice, and the keys are most of the memory. Here the list holds the keys and the index is
//! an open-addressing table of ids (4 bytes a slot, at most half full) that compares through
//! the list. The memory bench (`benches/`) has the figures.

use std::hash::{Hash, Hasher};

use crate::maps::Addr;

/// A backend as the maps key it: address, port, family.
pub(crate) type BackendKey = (Addr, u16, u8);

#[derive(Debug, Clone, Default)]
pub(crate) struct BackendTable {
    /// Index: id; `None` where the id is free. Id 0 is reserved (never `Some`).
    by_id: Vec<Option<BackendKey>>,
    /// Open addressing with linear probing: 0 is an empty slot, else an id in `by_id`.
    slots: Vec<u32>,
    len: usize,
}

fn hash(k: &BackendKey) -> usize {
    let mut h = std::hash::DefaultHasher::new();
    k.hash(&mut h);
    h.finish() as usize
}

impl BackendTable {
    /// Backends in use.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// One past the highest id that ever held a backend (at least 1: id 0 is reserved).
    pub(crate) fn id_bound(&self) -> u32 {
        self.by_id.len().max(1) as u32
    }

    /// The backend with `id`.
    pub(crate) fn key(&self, id: u32) -> Option<BackendKey> {
        self.by_id.get(id as usize).copied().flatten()
    }

    /// Ids in use, ascending.
    pub(crate) fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.by_id
            .iter()
            .enumerate()
            .filter(|(_, k)| k.is_some())
            .map(|(i, _)| i as u32)
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    /// The slot holding `k`, or the empty slot where it would go.
    fn find(&self, k: &BackendKey) -> (usize, bool) {
        let mask = self.mask();
        let mut i = hash(k) & mask;
        loop {
            match self.slots[i] {
                0 => return (i, false),
                id if self.key(id).as_ref() == Some(k) => return (i, true),
                _ => i = (i + 1) & mask,
            }
        }
    }

    /// The id of backend `k`.
    pub(crate) fn get(&self, k: &BackendKey) -> Option<u32> {
        if self.slots.is_empty() {
            return None;
        }
        let (i, found) = self.find(k);
        found.then(|| self.slots[i])
    }

    /// Records `k` under `id` (free, and `k` not present).
    pub(crate) fn insert(&mut self, k: BackendKey, id: u32) {
        debug_assert!(id != 0 && self.key(id).is_none() && self.get(&k).is_none());
        if (self.len + 1) * 2 > self.slots.len() {
            self.grow();
        }
        let i = id as usize;
        if self.by_id.len() <= i {
            self.by_id.resize(i + 1, None);
        }
        self.by_id[i] = Some(k);
        let (slot, _) = self.find(&k);
        self.slots[slot] = id;
        self.len += 1;
    }

    /// Frees `id`; returns the backend it held.
    pub(crate) fn remove(&mut self, id: u32) -> Option<BackendKey> {
        let k = self.key(id)?;
        let (mut gap, found) = self.find(&k);
        debug_assert!(found, "an id in by_id is in the index");
        // Backward-shift deletion: move later entries of the probe run into the hole unless
        // their home slot lies cyclically after it.
        let mask = self.mask();
        let mut j = gap;
        loop {
            j = (j + 1) & mask;
            let other = self.slots[j];
            if other == 0 {
                break;
            }
            let home = self.key(other).map_or(j, |ok| hash(&ok) & mask);
            let between = if gap <= j {
                gap < home && home <= j
            } else {
                gap < home || home <= j
            };
            if !between {
                self.slots[gap] = other;
                gap = j;
            }
        }
        self.slots[gap] = 0;
        self.by_id[id as usize] = None;
        self.len -= 1;
        Some(k)
    }

    /// Drops ids from `bound` up, which must all be free.
    pub(crate) fn truncate_ids(&mut self, bound: u32) {
        debug_assert!(self.by_id.iter().skip(bound as usize).all(Option::is_none));
        self.by_id.truncate(bound as usize);
    }

    /// Makes room for `n` backends in all, so that inserting up to them neither grows the
    /// index nor the id list.
    pub(crate) fn reserve(&mut self, n: usize) {
        // Ids start at 1 and are dense in a fresh table.
        self.by_id
            .reserve_exact((n + 1).saturating_sub(self.by_id.len()));
        let size = (n.saturating_mul(2) + 1).next_power_of_two().max(64);
        if size > self.slots.len() {
            self.rehash(size);
        }
    }

    fn grow(&mut self) {
        self.rehash((self.slots.len() * 2).max(64));
    }

    fn rehash(&mut self, size: usize) {
        self.slots = vec![0; size];
        let mask = size - 1;
        for (id, k) in self.by_id.iter().enumerate() {
            let Some(k) = k else { continue };
            let mut i = hash(k) & mask;
            while self.slots[i] != 0 {
                i = (i + 1) & mask;
            }
            self.slots[i] = id as u32;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::{BackendKey, BackendTable};
    use crate::maps::Addr;

    fn key(n: u8) -> BackendKey {
        (
            Addr([n, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            80,
            4,
        )
    }

    proptest! {
        /// Any sequence of inserts and removals leaves the table agreeing with a HashMap.
        #[test]
        fn agrees_with_a_map(ops in proptest::collection::vec((any::<bool>(), 0u8..200), 1..600)) {
            let mut t = BackendTable::default();
            let mut model: HashMap<BackendKey, u32> = HashMap::new();
            let mut next = 1u32;
            for (add, n) in ops {
                let k = key(n);
                if add && !model.contains_key(&k) {
                    t.insert(k, next);
                    model.insert(k, next);
                    next += 1;
                } else if let Some(id) = model.remove(&k) {
                    prop_assert_eq!(t.remove(id), Some(k));
                }
                prop_assert_eq!(t.len(), model.len());
            }
            for n in 0..200 {
                let k = key(n);
                prop_assert_eq!(t.get(&k), model.get(&k).copied());
            }
            for (k, id) in &model {
                prop_assert_eq!(t.key(*id), Some(*k));
            }
        }
    }
}
