//! `dp_names`: who a service-port id or a pod address is, for the flow events (`events.rs`)
//! and the live inspector. No program reads it; user space makes it hold what the applied
//! state names at every sync, writing only what changed against a mirror read once at load:
//! a full sync compares every name, an incremental one only the changed services' (and the
//! pods' when endpoints or peer pods changed), so that its cost follows the change.
//!
//! The mirror keeps a name as the state's own [`ObjectName`] (two shared `Arc<str>`: no
//! copy of the text), not as the map's 120-byte value: at 10k services that is the
//! difference between ~0.9 and ~2.3 MiB, twice over while a full sync has the wanted names
//! next to the mirror. The ids of a changed service before the sync come from the planner
//! ([`Planner::released_ids`]), so no index by service is kept here either.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use dataplane_core::{ChangeSet, DesiredState, ObjectName};

use crate::batch::BatchFd;
use crate::error::{removed, EbpfError};
use crate::map_table;
use crate::maps::{NameKey, NameValue, NAME_ENDPOINT, NAME_LEN};
use crate::plan::Planner;

/// A hasher for the mirror's and a sync's name tables, keyed by [`NameKey`] (24 bytes of
/// ids and addresses the applied state gives, not chosen by a remote peer): a multiply per
/// word as in rustc's `FxHash`, then murmur3's finaliser; std's `SipHash` costs more per key,
/// and a 100k-service full sync hashes each of its 100k+ keys ~4 times (wanted, mirror
/// lookup, insert, gone).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct KeyHasher(u64);

impl KeyHasher {
    const SEED: u64 = 0xf135_7aea_2e62_a9c5;

    fn add(&mut self, word: u64) {
        self.0 = (self.0 ^ word).wrapping_mul(Self::SEED);
    }
}

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            self.add(u64::from_le_bytes(w.try_into().unwrap_or_default()));
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(last));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_u16(&mut self, i: u16) {
        self.add(u64::from(i));
    }

    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    fn finish(&self) -> u64 {
        // A multiply carries a bit only upwards: an IPv6 address that differs in its last
        // bytes (the top of the last word) differs in the top bits alone, and the table's
        // bucket index is the low bits (a rotation of them left 256 addresses to a bucket).
        // murmur3's finaliser mixes every bit into every other.
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

/// A map keyed by [`NameKey`] with [`KeyHasher`].
type KeyMap<V> = HashMap<NameKey, V, BuildHasherDefault<KeyHasher>>;

/// `dp_names` as aya opens it.
pub(crate) type BpfNames = aya::maps::HashMap<aya::maps::MapData, NameKey, NameValue>;

/// A name as the mirror and a sync hold it: what its `dp_names` value spells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Name {
    /// `namespace/name` of a service or pod (shared with the state).
    Object(ObjectName),
    /// Plain text: the node's name, or a name an earlier process left in the map.
    Text(Box<str>),
    /// A value read from the map that no name writes (bytes after its NUL, not UTF-8):
    /// equal to nothing, so it is written over or removed.
    Foreign,
}

impl Name {
    /// The name's length in bytes as `dp_names` holds it.
    fn len(&self) -> usize {
        match self {
            Name::Object(n) => n.namespace.as_str().len() + 1 + n.name.as_str().len(),
            Name::Text(t) => t.len(),
            Name::Foreign => 0,
        }
    }

    /// Whether both spell the same `dp_names` value.
    fn same(&self, other: &Name) -> bool {
        match (self, other) {
            (Name::Foreign, _) | (_, Name::Foreign) => false,
            (Name::Object(a), Name::Object(b)) => a == b,
            (Name::Text(a), Name::Text(b)) => a == b,
            (Name::Object(n), Name::Text(t)) | (Name::Text(t), Name::Object(n)) => {
                let (ns, name) = (n.namespace.as_str(), n.name.as_str());
                t.len() == ns.len() + 1 + name.len()
                    && t.starts_with(ns)
                    && t[ns.len()..].starts_with('/')
                    && t.ends_with(name)
            }
        }
    }

    /// The map's value; `None` when the name is longer than [`NAME_LEN`] bytes (or foreign).
    fn value(&self) -> Option<NameValue> {
        match self {
            Name::Object(n) => object_value(n),
            Name::Text(t) => NameValue::plain(t),
            Name::Foreign => None,
        }
    }

    /// The name `value` (read from the map) spells.
    fn read(value: &NameValue) -> Self {
        match value.as_str() {
            // Only what `NameValue::plain` writes back byte for byte (NUL-padded).
            Some(s) if NameValue::plain(s).as_ref() == Some(value) => Name::Text(s.into()),
            _ => Name::Foreign,
        }
    }
}

/// `namespace/name` as [`NameValue::new`] spells it, written straight into the value (a full
/// sync of 100k services spelled 100k temporary `String`s).
fn object_value(n: &ObjectName) -> Option<NameValue> {
    let (ns, name) = (n.namespace.as_str().as_bytes(), n.name.as_str().as_bytes());
    let len = ns.len() + 1 + name.len();
    if len > NAME_LEN {
        return None;
    }
    let mut v = NameValue {
        name: [0u8; NAME_LEN],
    };
    v.name[..ns.len()].copy_from_slice(ns);
    v.name[ns.len()] = b'/';
    v.name[ns.len() + 1..len].copy_from_slice(name);
    Some(v)
}

/// What `dp_names` holds, as the last sync left it.
#[derive(Debug, Default)]
pub(crate) struct Names {
    current: KeyMap<Name>,
}

/// Names to write, and how many were left out for being longer than a `dp_names` value
/// holds (a cut name would be another one: their events go without it).
#[derive(Debug, Default)]
pub(crate) struct Wanted {
    pub(crate) names: KeyMap<Name>,
    pub(crate) too_long: usize,
}

impl Wanted {
    fn add(&mut self, key: NameKey, name: Name) {
        if name.len() <= NAME_LEN {
            self.names.insert(key, name);
        } else {
            // (a local endpoint's long name must not leave a peer's short one behind)
            self.names.remove(&key);
            self.too_long += 1;
        }
    }
}

/// The names of the pods of `state`: every address of the peer pods and the local endpoints
/// (a local endpoint wins an address both claim).
fn pod_names(state: &DesiredState, extra: usize) -> Wanted {
    let mut want = Wanted {
        names: KeyMap::with_capacity_and_hasher(
            state.endpoints.len() * 2 + state.pods.len() * 2 + extra,
            BuildHasherDefault::default(),
        ),
        too_long: 0,
    };
    for pod in &state.pods {
        for ip in &pod.ips {
            want.add(NameKey::endpoint(*ip), Name::Object(pod.name.clone()));
        }
    }
    for e in &state.endpoints {
        for ip in &e.ips {
            want.add(NameKey::endpoint(*ip), Name::Object(e.name.clone()));
        }
    }
    want
}

/// The names `state` gives: each service-port id of `services` (how many, and each id with
/// its service), the node, and the pods ([`pod_names`]).
pub(crate) fn wanted<'a>(
    (count, services): (usize, impl Iterator<Item = (u32, &'a ObjectName)>),
    state: &DesiredState,
) -> Wanted {
    let mut want = pod_names(state, count + 1);
    want.add(NameKey::node(), Name::Text(state.node.name.as_str().into()));
    for (id, name) in services {
        want.add(NameKey::service(id), Name::Object(name.clone()));
    }
    want
}

impl Names {
    /// What the pinned map holds (an earlier process's names, removed when stale).
    pub(crate) fn read(map: &BpfNames) -> Result<Self, EbpfError> {
        let mut current = KeyMap::default();
        for entry in map {
            let (k, v) = entry.map_err(|e| EbpfError::map(map_table::NAMES.name, "reading", e))?;
            current.insert(k, Name::read(&v));
        }
        Ok(Self { current })
    }

    /// Makes `dp_names` hold the names of `planner`'s services and `state`'s pods and node.
    /// Returns the entries written or removed, and how many did not fit (the map is full:
    /// their events go without those names).
    pub(crate) fn sync_full(
        &mut self,
        map: &mut BpfNames,
        batch: &BatchFd,
        planner: &Planner,
        state: &DesiredState,
    ) -> Result<(usize, usize), EbpfError> {
        let want = wanted(planner.service_ids(), state);
        let gone: Vec<NameKey> = self
            .current
            .keys()
            .filter(|k| !want.names.contains_key(k))
            .copied()
            .collect();
        self.write(map, batch, gone, want)
    }

    /// [`Self::sync_full`] for an incremental sync of `changes`: the changed services' names,
    /// and the pods' when endpoints or peer pods changed (a node change is a full sync).
    /// `planner` has planned `changes`: the ids it released ([`Planner::released_ids`]) are
    /// the changed services' ids before.
    pub(crate) fn sync_changes(
        &mut self,
        map: &mut BpfNames,
        batch: &BatchFd,
        planner: &Planner,
        state: &DesiredState,
        changes: &ChangeSet,
    ) -> Result<(usize, usize), EbpfError> {
        let mut want = Wanted::default();
        for name in changes.services.keys() {
            for id in planner.ids_of(name) {
                want.add(NameKey::service(id), Name::Object(name.clone()));
            }
        }
        // An id one changed service released and another took is written, not removed.
        let mut gone: Vec<NameKey> = planner
            .released_ids()
            .iter()
            .map(|id| NameKey::service(*id))
            .filter(|k| !want.names.contains_key(k))
            .collect();
        if !changes.endpoints.is_empty() || !changes.pods.is_empty() {
            let pods = pod_names(state, 0);
            gone.extend(
                self.current
                    .keys()
                    .filter(|k| k.kind == NAME_ENDPOINT && !pods.names.contains_key(k))
                    .copied(),
            );
            want.names.extend(pods.names);
            want.too_long += pods.too_long;
        }
        self.write(map, batch, gone, want)
    }

    /// Removes `gone` (room for the new), then writes what of `want` differs from the map,
    /// [`NAMES_CHUNK`] names per `BPF_MAP_UPDATE_BATCH` call (a full sync of 100k services
    /// writes 100k names: one `bpf()` call each was a tenth of its time). Returns the entries
    /// written or removed, and the names left out (too long, or no room).
    fn write(
        &mut self,
        map: &mut BpfNames,
        batch: &BatchFd,
        gone: Vec<NameKey>,
        want: Wanted,
    ) -> Result<(usize, usize), EbpfError> {
        let mut written = 0;
        let gone: HashSet<NameKey, BuildHasherDefault<KeyHasher>> = gone.into_iter().collect();
        for k in gone {
            if self.current.remove(&k).is_some() {
                removed(map.remove(&k))
                    .map_err(|e| EbpfError::map(map_table::NAMES.name, "removing", e))?;
                written += 1;
            }
        }
        let mut unfit = want.too_long;
        // Grown once (a first sync adds every name; grown by doubling, the smaller tables
        // would be freed only after the peak).
        let new = want
            .names
            .keys()
            .filter(|k| !self.current.contains_key(k))
            .count();
        self.current.reserve(new);
        let mut chunk = Chunk::default();
        for (k, name) in want.names {
            if self.current.get(&k).is_some_and(|c| c.same(&name)) {
                continue;
            }
            // (`Wanted::add` let through only names that fit)
            let Some(v) = name.value() else {
                unfit += 1;
                continue;
            };
            chunk.push(k, v, name);
            if chunk.keys.len() == NAMES_CHUNK {
                self.flush(map, batch, &mut chunk, &mut written, &mut unfit)?;
            }
        }
        self.flush(map, batch, &mut chunk, &mut written, &mut unfit)?;
        Ok((written, unfit))
    }

    /// Writes `chunk` in one batch call; when the kernel refuses the batch (no batch
    /// updates, or the map is full part way), element by element, which tells the names
    /// that found no room (`E2BIG`) from the others. Empties `chunk`.
    fn flush(
        &mut self,
        map: &mut BpfNames,
        batch: &BatchFd,
        chunk: &mut Chunk,
        written: &mut usize,
        unfit: &mut usize,
    ) -> Result<(), EbpfError> {
        let Chunk {
            keys,
            values,
            names,
        } = chunk;
        if matches!(batch.update(keys, values), Ok(true)) {
            *written += keys.len();
            self.current.extend(keys.drain(..).zip(names.drain(..)));
            values.clear();
            return Ok(());
        }
        // A refused batch wrote its first elements (up to the failing one): writing them
        // again stores the same values.
        for ((k, v), name) in keys.drain(..).zip(values.drain(..)).zip(names.drain(..)) {
            match map.insert(k, v, 0) {
                Ok(()) => {
                    self.current.insert(k, name);
                    *written += 1;
                }
                Err(aya::maps::MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::E2BIG) =>
                {
                    *unfit += 1;
                }
                Err(e) => return Err(EbpfError::map(map_table::NAMES.name, "writing", e)),
            }
        }
        Ok(())
    }
}

/// Names per batch call: the chunk's values (120 bytes each) stay small next to the mirror.
const NAMES_CHUNK: usize = 1024;

/// Names waiting for one batch write.
#[derive(Default)]
struct Chunk {
    keys: Vec<NameKey>,
    values: Vec<NameValue>,
    names: Vec<Name>,
}

impl Chunk {
    fn push(&mut self, key: NameKey, value: NameValue, name: Name) {
        self.keys.push(key);
        self.values.push(value);
        self.names.push(name);
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
        let want = wanted((2, [(3, &web), (4, &web)].into_iter()), &state);
        assert_eq!(want.too_long, 0);
        let want = want.names;
        let name = |k: NameKey| {
            let v = want[&k].value().unwrap();
            v.as_str().unwrap().to_owned()
        };
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

    #[test]
    fn a_name_read_back_is_the_same_as_the_one_written() {
        let web = ObjectName::new("default", "web");
        let object = Name::Object(web.clone());
        let read = Name::read(&object.value().unwrap());
        assert_eq!(read, Name::Text("default/web".into()));
        assert!(read.same(&object) && object.same(&read));
        for other in [
            "default/wet",
            "default/we",
            "defaul/tweb",
            "default/web2",
            "x",
        ] {
            assert!(!object.same(&Name::Text(other.into())), "{other}");
        }
        assert!(!object.same(&Name::Object(ObjectName::new("defaul", "t/web"))));
        assert!(Name::Text("node-a".into()).same(&Name::Text("node-a".into())));
        // Bytes after the NUL: no name writes that, so it is equal to none (rewritten).
        let mut odd = NameValue::plain("default/web").unwrap();
        odd.name[NAME_LEN - 1] = b'x';
        assert_eq!(Name::read(&odd), Name::Foreign);
        assert!(!Name::read(&odd).same(&object));
        let long = ObjectName::new("ns", "n".repeat(NAME_LEN - 3));
        assert_eq!(Name::Object(long.clone()).len(), NAME_LEN);
        assert!(Name::Object(long).value().is_some());
        let longer = ObjectName::new("ns", "n".repeat(NAME_LEN - 2));
        let mut want = Wanted::default();
        want.add(NameKey::service(1), Name::Object(longer));
        assert_eq!((want.names.len(), want.too_long), (0, 1));
    }

    #[test]
    fn a_value_spelled_in_place_is_the_one_new_spells() {
        for (ns, name) in [
            ("default", "web"),
            ("", ""),
            ("kube-system", "kube-dns"),
            ("ns", &*"n".repeat(NAME_LEN - 3)),
            ("ns", &*"n".repeat(NAME_LEN - 2)),
            (&*"s".repeat(NAME_LEN), "x"),
        ] {
            let n = ObjectName::new(ns, name);
            assert_eq!(object_value(&n), NameValue::new(&n), "{ns}/{name}");
        }
    }

    #[test]
    fn keys_of_a_large_cluster_hash_apart() {
        use std::hash::BuildHasher;
        let build = BuildHasherDefault::<KeyHasher>::default();
        let mut keys: Vec<NameKey> = (0..100_000).map(NameKey::service).collect();
        for i in 0..65_536u32 {
            let [a, b] = (i as u16).to_be_bytes();
            keys.push(NameKey::endpoint(std::net::IpAddr::from([10, 244, a, b])));
            let v6 = std::net::Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, i as u16);
            keys.push(NameKey::endpoint(v6.into()));
        }
        keys.push(NameKey::node());
        let hashes: HashSet<u64> = keys.iter().map(|k| build.hash_one(k)).collect();
        assert_eq!(hashes.len(), keys.len(), "full 64-bit hashes collide");
        // The bucket index (low bits) of a table of 2^18 spreads them out: no bucket
        // holds more than a handful.
        let mut buckets = vec![0u32; 1 << 18];
        for h in &hashes {
            buckets[(*h as usize) & ((1 << 18) - 1)] += 1;
        }
        let fullest = buckets.iter().max().copied().unwrap_or(0);
        assert!(fullest <= 12, "a bucket of {fullest} keys");
    }
}
