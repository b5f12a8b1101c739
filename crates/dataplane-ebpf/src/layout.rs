//! Layout versions of the pinned maps: what an adopted map's bytes mean.
//!
//! The kernel refuses nothing when a new version's programs adopt a pinned map whose key and
//! value have the sizes they expect: bytes written with another meaning would be read with
//! the new one (an earlier conntrack key kept its size when its direction byte became
//! always 0, so the reverse entries an older version wrote never matched again). So every
//! map has a layout record, kept by the kernel in one more pinned map, `dp_layout`, next to
//! the maps (kernel state, like the maps it describes: a marker file could outlive or miss
//! them): map name → (layout version, fingerprint).
//!
//! - The **fingerprint** is a hash of the map's key and value types as the compiled object's
//!   BTF describes them (names, sizes, offsets, member names, typedef names such as
//!   `__be32`, nested structs and arrays) and the map type: any change to a struct in
//!   `maps.h` changes it, with no one having to remember a bump.
//! - The **version** ([`VERSIONS`]) is bumped by hand when a map's bytes change meaning
//!   without a change of type (a flag's meaning, a field now always 0).
//! - On adoption ([`plan`], before anything is created or loaded): a map whose record is this
//!   version's is adopted. A map of [`Migration::Recreate`] (what the datapath writes and can
//!   write again: conntrack, affinity, counters, the events ring; and `dp_names`, which no
//!   program reads and every sync rewrites) with another record is unpinned and created
//!   anew, empty (its entries are lost: connections tracked by an older conntrack lose their
//!   translation). Any other mismatch, and a record newer than this version, is
//!   [`EbpfError::IncompatiblePins`] with nothing changed.
//! - A fixed-size [`Migration::Recreate`] map (the counters) pinned with another size than
//!   this version's (a counter was added) is created anew at this version's size.
//! - Pins from before layout records existed (maps but no `dp_layout`): the maps that user
//!   space writes are adopted when their sizes match (that version's layouts are version 1's),
//!   the [`Migration::Recreate`] ones are recreated (the conntrack meaning change above came
//!   without a record), then the records are written.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use aya::maps::{HashMap, Map, MapData, MapInfo};

use crate::error::EbpfError;
use crate::map_table::{self, Defined, MapSpec, MAPS};

/// The pin name of the map of layout records.
pub const LAYOUT_MAP: &str = "dp_layout";
/// `BPF_OBJ_NAME_LEN`: a record's key is the map's name, zero-padded.
const NAME_LEN: usize = 16;
/// Room for every map of [`MAPS`] and those later versions add.
const LAYOUT_ENTRIES: u32 = 64;
/// `BPF_MAP_TYPE_HASH`.
const BPF_MAP_TYPE_HASH: u32 = 1;

/// A record's key: the map's name, zero-padded.
type RecordKey = [u8; NAME_LEN];
/// A record's value: `[version, fingerprint]`.
type RecordValue = [u64; 2];

/// What a newer version does with a pinned map whose layout record is not its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Migration {
    /// Unpinned and created anew, empty: the datapath (or the next sync) fills it again.
    Recreate,
    /// Refused: it holds state only the old version can read.
    Refuse,
}

/// Per map: the layout version (bump it when the bytes change meaning without a change of
/// type) and what to do with another version's pin.
pub(crate) const VERSIONS: [(&str, u64, Migration); 28] = {
    use Migration::{Recreate, Refuse};
    [
        (map_table::SVC.name, 1, Refuse),
        (map_table::BACKENDS.name, 1, Refuse),
        (map_table::SLOTS.name, 1, Refuse),
        (map_table::CT.name, 1, Recreate),
        (map_table::AFFINITY.name, 1, Recreate),
        (map_table::SRC_RANGES.name, 1, Refuse),
        (map_table::CIDRS.name, 1, Refuse),
        (map_table::CONFIG.name, 1, Refuse),
        (map_table::LOCAL.name, 1, Refuse),
        (map_table::STATS.name, 1, Recreate),
        (map_table::SOCK_REV.name, 1, Recreate),
        (map_table::POL_ADDR.name, 1, Refuse),
        (map_table::POL_RULES.name, 1, Refuse),
        (map_table::POL_BLOCKS.name, 1, Refuse),
        (map_table::POL_TIERS.name, 1, Refuse),
        (map_table::POL_CT.name, 1, Recreate),
        (map_table::EVENTS.name, 1, Recreate),
        (map_table::DROPS.name, 1, Recreate),
        (map_table::EV_LIMIT.name, 1, Recreate),
        (map_table::NAMES.name, 1, Recreate),
        // Host policy: the next sync writes them again (a new map starts at generation 0,
        // empty: no host policy until then).
        (map_table::HOST_LPM.name, 1, Recreate),
        (map_table::HOST_RULES.name, 1, Recreate),
        (map_table::HOST_CFG.name, 1, Recreate),
        (map_table::HOST_DROPS.name, 1, Recreate),
        (map_table::HOST_CT.name, 1, Recreate),
        (map_table::HOST_SCRATCH.name, 1, Recreate),
        // L2 announcements: every sync writes the addresses again (a full one reconciles
        // the map with the state), every sync and maintain() the configuration; a new map
        // answers nothing until then (its counters start at 0).
        (map_table::L2_ADDRS_MAP.name, 1, Recreate),
        (map_table::L2_CFG.name, 1, Recreate),
    ]
};

/// The struct a map's entries carry beyond its key and value types: a ring buffer has
/// neither, its records are `struct flow_event`.
fn record_type(map: &str) -> Option<&'static str> {
    (map == map_table::EVENTS.name).then_some("flow_event")
}

/// A map's layout: its version and the fingerprint of its types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayoutRecord {
    /// The layout version (bumped by hand when the bytes change meaning).
    pub version: u64,
    /// The hash of the map's type and its key and value types in the object's BTF.
    pub fingerprint: u64,
}

impl std::fmt::Display for LayoutRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "layout version {} (fingerprint {:016x})",
            self.version, self.fingerprint
        )
    }
}

fn key_of(name: &str) -> RecordKey {
    let mut key = [0u8; NAME_LEN];
    let n = name.len().min(NAME_LEN);
    key[..n].copy_from_slice(&name.as_bytes()[..n]);
    key
}

fn migration(map: &str) -> Migration {
    VERSIONS
        .iter()
        .find(|(n, _, _)| *n == map)
        .map_or(Migration::Refuse, |(_, _, m)| *m)
}

/// This version's layout record of `map` (`None`: not a map of ours). Hidden: for the tests
/// that write old records into a pin directory.
#[doc(hidden)]
pub fn expected_layout(map: &str) -> Option<LayoutRecord> {
    expected().get(map).copied()
}

/// This version's records of every map, computed once from the embedded objects.
fn expected() -> &'static BTreeMap<&'static str, LayoutRecord> {
    static EXPECTED: OnceLock<BTreeMap<&'static str, LayoutRecord>> = OnceLock::new();
    EXPECTED.get_or_init(|| {
        let pod = Fingerprints::of(crate::objects::tc_pod_object());
        let sock = Fingerprints::of(crate::objects::sock_object());
        MAPS.iter()
            .map(|m| {
                let fps = if m.defined == Defined::Sock {
                    &sock
                } else {
                    &pod
                };
                let version = VERSIONS
                    .iter()
                    .find(|(n, _, _)| *n == m.name)
                    .map_or(0, |(_, v, _)| *v);
                let fingerprint = fps.map(m.name);
                (
                    m.name,
                    LayoutRecord {
                        version,
                        fingerprint,
                    },
                )
            })
            .collect()
    })
}

/// What adopting a pin directory does, decided before anything changes.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// Maps to unpin (their pin is another layout's), created anew by the load.
    recreate: Vec<&'static str>,
    /// Whether `dp_layout` exists.
    layout_pinned: bool,
}

fn incompatible(pin_dir: &Path, map: &str, found: String, expected: String) -> EbpfError {
    EbpfError::IncompatiblePins {
        map: map.to_owned(),
        pin_dir: pin_dir.to_owned(),
        found,
        expected,
        what_to_do: what_to_do(pin_dir),
    }
}

/// What the operator can do about pins another version left.
pub(crate) fn what_to_do(pin_dir: &Path) -> String {
    format!(
        "nothing was changed; run the version that pinned them, or remove them (this drops the \
         old datapath and the connections it tracks): `dataplane-agent --cleanup \
         --bpf-pin-dir {dir}`, `dataplane_ebpf::remove_pinned` in a program, or detach the \
         programs and `rm -r {dir}`",
        dir = pin_dir.display()
    )
}

/// Reads the layout records and the pinned maps of `pin_dir` and decides what to do with
/// each map of this version (the socket LB's maps only when `sock`); changes nothing.
pub(crate) fn plan(pin_dir: &Path, sock: bool) -> Result<Plan, EbpfError> {
    let layout_path = pin_dir.join(LAYOUT_MAP);
    let records = if layout_path.exists() {
        Some(read_records(&open_records(pin_dir)?)?)
    } else {
        None
    };
    let mut plan = Plan {
        layout_pinned: records.is_some(),
        ..Plan::default()
    };
    for map in MAPS.iter().filter(|m| sock || m.defined != Defined::Sock) {
        let path = map.pin_path(pin_dir);
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&path)
            .map_err(|e| EbpfError::map(map.name, "reading the pinned map's info", e))?;
        let sizes_match = info.key_size() as usize == map.key_size
            && info.value_size() as usize == map.value_size;
        let expected = expected()[map.name];
        let found = records.as_ref().and_then(|r| r.get(map.name).copied());
        // A fixed-size map of what the datapath writes whose size this version changed (a
        // counter added to dp_stats) is created anew at its new size: adopted, the new
        // counters would have no slot and read 0 for good.
        let resized = map.capacity.is_none() && info.max_entries() != map.default_size;
        let decision = if resized && migration(map.name) == Migration::Recreate {
            Decision::Recreate
        } else {
            decide(map, expected, records.is_some(), found, sizes_match)
        };
        match decision {
            Decision::Adopt => {}
            Decision::Recreate => plan.recreate.push(map.name),
            Decision::Refuse => {
                let found = match found {
                    Some(f) if sizes_match => f.to_string(),
                    Some(f) => format!(
                        "{f}, key/value sizes {}/{}",
                        info.key_size(),
                        info.value_size()
                    ),
                    None if records.is_some() => "no layout record".to_owned(),
                    None => format!(
                        "no layout record (pinned before layout versions), key/value sizes {}/{}",
                        info.key_size(),
                        info.value_size()
                    ),
                };
                let expected = format!(
                    "{expected}, key/value sizes {}/{}",
                    map.key_size, map.value_size
                );
                return Err(incompatible(pin_dir, map.name, found, expected));
            }
        }
    }
    Ok(plan)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    Adopt,
    Recreate,
    Refuse,
}

/// The rule of the module docs, for one pinned map.
fn decide(
    map: &MapSpec,
    expected: LayoutRecord,
    versioned: bool,
    found: Option<LayoutRecord>,
    sizes_match: bool,
) -> Decision {
    if found == Some(expected) && sizes_match {
        return Decision::Adopt;
    }
    // A newer version's layout: this version cannot know what changed, not even for a cache
    // (a downgrade is refused; the newer version left its own state).
    if found.is_some_and(|f| f.version > expected.version) {
        return Decision::Refuse;
    }
    if migration(map.name) == Migration::Recreate {
        return Decision::Recreate;
    }
    // Pinned by the last version before layout records: its layouts are version 1's where
    // the sizes say so.
    if !versioned && sizes_match && expected.version == 1 {
        return Decision::Adopt;
    }
    Decision::Refuse
}

impl Plan {
    /// Unpins the maps to recreate, then writes this version's records of every map of this
    /// load (creating and pinning `dp_layout` when it is missing). In this order a crash in
    /// between leaves a map missing (created by the next load), never an old map under a new
    /// record.
    pub(crate) fn apply(&self, pin_dir: &Path, sock: bool) -> Result<(), EbpfError> {
        for name in &self.recreate {
            tracing::warn!(
                map = name,
                "pinned by another layout version: its entries are dropped and the map created anew"
            );
            let path = pin_dir.join(name);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(EbpfError::Pin { path, source }),
            }
        }
        let mut map = if self.layout_pinned {
            open_records(pin_dir)?
        } else {
            create_records()?
        };
        for m in MAPS.iter().filter(|m| sock || m.defined != Defined::Sock) {
            let r = expected()[m.name];
            map.insert(key_of(m.name), [r.version, r.fingerprint], 0)
                .map_err(|e| EbpfError::map(LAYOUT_MAP, "writing a layout record", e))?;
        }
        if !self.layout_pinned {
            // Pinned once complete: a reader never sees a half-written record map.
            let path = pin_dir.join(LAYOUT_MAP);
            map.pin(&path).map_err(|e| EbpfError::Pin {
                path,
                source: std::io::Error::other(e),
            })?;
        }
        Ok(())
    }
}

fn create_records() -> Result<HashMap<MapData, RecordKey, RecordValue>, EbpfError> {
    let def = aya_obj::maps::bpf_map_def {
        map_type: BPF_MAP_TYPE_HASH,
        key_size: NAME_LEN as u32,
        value_size: std::mem::size_of::<RecordValue>() as u32,
        max_entries: LAYOUT_ENTRIES,
        ..Default::default()
    };
    let obj = aya_obj::Map::Legacy(aya_obj::maps::LegacyMap {
        def,
        inner_def: None,
        section_index: 0,
        section_kind: aya_obj::EbpfSectionKind::Maps,
        symbol_index: None,
        data: Vec::new(),
    });
    let data = MapData::create(obj, LAYOUT_MAP, None)
        .map_err(|e| EbpfError::map(LAYOUT_MAP, "creating", e))?;
    HashMap::try_from(Map::HashMap(data)).map_err(|e| EbpfError::map(LAYOUT_MAP, "opening", e))
}

fn open_records(pin_dir: &Path) -> Result<HashMap<MapData, RecordKey, RecordValue>, EbpfError> {
    let data = MapData::from_pin(pin_dir.join(LAYOUT_MAP))
        .map_err(|e| EbpfError::map(LAYOUT_MAP, "opening the pinned map", e))?;
    as_records(pin_dir, data)
}

/// `data` as a map of layout records: a map of another shape under our name is not ours to
/// read.
fn as_records(
    pin_dir: &Path,
    data: MapData,
) -> Result<HashMap<MapData, RecordKey, RecordValue>, EbpfError> {
    HashMap::try_from(Map::HashMap(data)).map_err(|e| {
        incompatible(
            pin_dir,
            LAYOUT_MAP,
            format!("a map that is not a layout record map ({e})"),
            format!(
                "a hash map of {NAME_LEN}-byte names to {}-byte records",
                std::mem::size_of::<RecordValue>()
            ),
        )
    })
}

/// The records of a `dp_layout`, by map name.
fn read_records(
    map: &HashMap<MapData, RecordKey, RecordValue>,
) -> Result<BTreeMap<String, LayoutRecord>, EbpfError> {
    let mut out = BTreeMap::new();
    for entry in map {
        let (key, [version, fingerprint]) =
            entry.map_err(|e| EbpfError::map(LAYOUT_MAP, "reading", e))?;
        let end = key.iter().position(|&b| b == 0).unwrap_or(NAME_LEN);
        out.insert(
            String::from_utf8_lossy(&key[..end]).into_owned(),
            LayoutRecord {
                version,
                fingerprint,
            },
        );
    }
    Ok(out)
}

/// The layout records of a pin directory, for a reader of another process's pins
/// (`LiveEbpf`), from its `dp_layout` opened read-only (`None`: not pinned, pins from before
/// layout records, read as before: the reader checks their sizes).
#[derive(Debug, Default)]
pub(crate) struct Records(Option<BTreeMap<String, LayoutRecord>>);

impl Records {
    pub(crate) fn read(pin_dir: &Path, layout: Option<MapData>) -> Result<Self, EbpfError> {
        layout
            .map(|data| read_records(&as_records(pin_dir, data)?))
            .transpose()
            .map(Self)
    }

    /// Refuses `map` when its record is not this version's (or missing, in a directory with
    /// records): no old bytes are shown with a new meaning.
    pub(crate) fn check(&self, pin_dir: &Path, map: &MapSpec) -> Result<(), EbpfError> {
        let Some(records) = &self.0 else {
            return Ok(());
        };
        let expected = expected()[map.name];
        match records.get(map.name) {
            Some(r) if *r == expected => Ok(()),
            found => Err(incompatible(
                pin_dir,
                map.name,
                found.map_or_else(|| "no layout record".to_owned(), ToString::to_string),
                expected.to_string(),
            )),
        }
    }
}

/// Type fingerprints of one object's maps, from its BTF.
struct Fingerprints {
    btf: Option<RawBtf>,
    /// map name -> (map type, key type id, value type id).
    maps: BTreeMap<String, (u32, u32, u32)>,
}

impl Fingerprints {
    fn of(object: &[u8]) -> Self {
        let Ok(obj) = aya_obj::Object::parse(object) else {
            return Self {
                btf: None,
                maps: BTreeMap::new(),
            };
        };
        let maps = obj
            .maps
            .iter()
            .filter_map(|(name, m)| match m {
                aya_obj::Map::Btf(b) => Some((
                    name.clone(),
                    (m.map_type(), b.def.btf_key_type_id, b.def.btf_value_type_id),
                )),
                aya_obj::Map::Legacy(_) => None,
            })
            .collect();
        Self {
            btf: obj.btf.map(|b| RawBtf::parse(&b.to_bytes())),
            maps,
        }
    }

    /// FNV-1a of the canonical description of `map`'s types (0 when the object lacks it,
    /// which the tests rule out).
    fn map(&self, map: &str) -> u64 {
        let (Some(btf), Some(&(map_type, key, value))) = (&self.btf, self.maps.get(map)) else {
            return 0;
        };
        let mut text = format!(
            "type {map_type} key {} value {}",
            btf.describe(key, 0),
            btf.describe(value, 0)
        );
        if let Some(record) = record_type(map).and_then(|n| btf.struct_by_name(n)) {
            text.push_str(" record ");
            text.push_str(&btf.describe(record, 0));
        }
        fnv1a(text.as_bytes())
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// One BTF type: kind, name, the size-or-type word, and its extra data (members, array,
/// enumerators) as little-endian words.
struct RawType {
    kind: u32,
    kind_flag: bool,
    name: String,
    size_or_type: u32,
    extra: Vec<u32>,
}

/// Just enough of a BTF parser to describe a map's key and value types.
struct RawBtf {
    /// Index = type id (0 is void).
    types: Vec<RawType>,
}

impl RawBtf {
    fn parse(btf: &[u8]) -> Self {
        let u32_at = |o: usize| {
            btf.get(o..o + 4)
                .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        let mut types = vec![RawType {
            kind: 0,
            kind_flag: false,
            name: "void".to_owned(),
            size_or_type: 0,
            extra: Vec::new(),
        }];
        if btf.len() < 24 || u16::from_le_bytes([btf[0], btf[1]]) != 0xeb9f {
            return Self { types };
        }
        let hdr_len = u32_at(4) as usize;
        let type_off = hdr_len + u32_at(8) as usize;
        let type_len = u32_at(12) as usize;
        let str_off = hdr_len + u32_at(16) as usize;
        let name = |off: u32| {
            let start = str_off + off as usize;
            let rest = btf.get(start..).unwrap_or_default();
            let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            String::from_utf8_lossy(&rest[..end]).into_owned()
        };
        let mut pos = type_off;
        let end = (type_off + type_len).min(btf.len());
        while pos + 12 <= end {
            let info = u32_at(pos + 4);
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let words = match kind {
                1 | 14 | 17 => 1,
                3 => 3,
                4 | 5 | 15 | 19 => vlen * 3,
                6 | 13 => vlen * 2,
                _ => 0,
            };
            let extra = (0..words).map(|i| u32_at(pos + 12 + i * 4)).collect();
            types.push(RawType {
                kind,
                kind_flag: info >> 31 == 1,
                name: name(u32_at(pos)),
                size_or_type: u32_at(pos + 8),
                extra,
            });
            pos += 12 + words * 4;
        }
        // Names of members and enumerators are string offsets: resolve them now.
        for t in &mut types {
            let step = match t.kind {
                4 | 5 | 19 => 3,
                6 => 2,
                _ => 0,
            };
            if step > 0 {
                let names: Vec<String> = t.extra.chunks(step).map(|c| name(c[0])).collect();
                t.name = format!("{}|{}", t.name, names.join(","));
            }
        }
        Self { types }
    }

    fn struct_by_name(&self, name: &str) -> Option<u32> {
        self.types
            .iter()
            .position(|t| t.kind == 4 && t.name.split('|').next() == Some(name))
            .and_then(|i| u32::try_from(i).ok())
    }

    /// A canonical text of type `id`, following members, arrays, typedefs and qualifiers.
    fn describe(&self, id: u32, depth: u32) -> String {
        let Some(t) = self.types.get(id as usize) else {
            return format!("?{id}");
        };
        if depth > 16 {
            return format!("{}...", t.name);
        }
        let inner = |id: u32| self.describe(id, depth + 1);
        match t.kind {
            0 => "void".to_owned(),
            // int: name, size, encoding and bits.
            1 => format!("int {} {} {:08x}", t.name, t.size_or_type, t.extra[0]),
            2 => format!("ptr {}", inner(t.size_or_type)),
            3 => format!("[{}] {}", t.extra[2], inner(t.extra[0])),
            4 | 5 => {
                let (label, names) = t.name.split_once('|').unwrap_or((&t.name, ""));
                let names: Vec<&str> = names.split(',').collect();
                let members: Vec<String> = t
                    .extra
                    .chunks(3)
                    .enumerate()
                    .map(|(i, m)| {
                        let offset = if t.kind_flag {
                            format!("{}:{}", m[2] & 0x00ff_ffff, m[2] >> 24)
                        } else {
                            m[2].to_string()
                        };
                        format!(
                            "{}@{offset} {}",
                            names.get(i).copied().unwrap_or(""),
                            inner(m[1])
                        )
                    })
                    .collect();
                let what = if t.kind == 4 { "struct" } else { "union" };
                format!(
                    "{what} {label} {} {{{}}}",
                    t.size_or_type,
                    members.join("; ")
                )
            }
            6 | 19 => format!("enum {} {}", t.name, t.size_or_type),
            8 => format!("typedef {} = {}", t.name, inner(t.size_or_type)),
            9 => format!("volatile {}", inner(t.size_or_type)),
            10 => format!("const {}", inner(t.size_or_type)),
            11 => format!("restrict {}", inner(t.size_or_type)),
            16 => format!("float {} {}", t.name, t.size_or_type),
            18 => format!("tag {} {}", t.name, inner(t.size_or_type)),
            k => format!("kind{k} {}", t.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_map_has_a_version_and_a_fingerprint() {
        for m in &MAPS {
            let r = expected_layout(m.name).expect("a record");
            assert!(r.version >= 1, "{}: version", m.name);
            assert_ne!(r.fingerprint, 0, "{}: a fingerprint from the BTF", m.name);
            assert!(m.name.len() < NAME_LEN, "{}: fits a record key", m.name);
        }
        assert_eq!(VERSIONS.len(), MAPS.len());
    }

    #[test]
    fn fingerprints_tell_layouts_apart() {
        let e = expected();
        // Same key and value types give the same fingerprint (dp_ct and dp_pol_ct share the
        // key, not the value); different types differ.
        assert_ne!(
            e[map_table::CT.name].fingerprint,
            e[map_table::POL_CT.name].fingerprint
        );
        assert_ne!(
            e[map_table::SVC.name].fingerprint,
            e[map_table::CT.name].fingerprint
        );
        // The same object parsed twice gives the same fingerprints.
        let again = Fingerprints::of(crate::objects::tc_pod_object());
        assert_eq!(
            again.map(map_table::CT.name),
            e[map_table::CT.name].fingerprint
        );
    }

    #[test]
    fn a_struct_change_changes_the_description() {
        let pod = Fingerprints::of(crate::objects::tc_pod_object());
        let btf = pod.btf.as_ref().expect("BTF");
        let (_, key, _) = pod.maps[map_table::CT.name];
        let text = btf.describe(key, 0);
        assert!(text.starts_with("struct ct_key 40"), "{text}");
        for field in ["saddr@", "daddr@", "sport@", "dport@", "proto@", "family@"] {
            assert!(text.contains(field), "{field} in {text}");
        }
    }

    fn rec(version: u64, fingerprint: u64) -> LayoutRecord {
        LayoutRecord {
            version,
            fingerprint,
        }
    }

    #[test]
    fn the_rule() {
        let e = rec(1, 7);
        let (ct, svc) = (&map_table::CT, &map_table::SVC);
        assert_eq!(decide(svc, e, true, Some(e), true), Decision::Adopt);
        assert_eq!(
            decide(svc, e, true, Some(rec(1, 8)), true),
            Decision::Refuse
        );
        assert_eq!(
            decide(svc, e, true, Some(rec(0, 7)), true),
            Decision::Refuse
        );
        assert_eq!(decide(svc, e, true, None, true), Decision::Refuse);
        assert_eq!(decide(svc, e, false, None, true), Decision::Adopt);
        assert_eq!(decide(svc, e, false, None, false), Decision::Refuse);
        assert_eq!(decide(svc, e, true, Some(e), false), Decision::Refuse);
        assert_eq!(
            decide(ct, e, true, Some(rec(1, 8)), true),
            Decision::Recreate
        );
        assert_eq!(
            decide(ct, e, true, Some(rec(0, 7)), false),
            Decision::Recreate
        );
        assert_eq!(decide(ct, e, false, None, true), Decision::Recreate);
        assert_eq!(decide(ct, e, true, Some(rec(2, 7)), true), Decision::Refuse);
    }
}
