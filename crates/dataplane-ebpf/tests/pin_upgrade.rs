//! Upgrades over old pins, on the real kernel in a throw-away pin directory: pins of this
//! version are adopted; a map whose layout record (`dp_layout`) says another version or
//! another type fingerprint is refused with `EbpfError::IncompatiblePins` and nothing in the
//! directory changes, unless it is a map the datapath fills again (conntrack), which is
//! created anew; pins from before layout records are adopted when their sizes match (the
//! conntrack recreated) and refused otherwise; `remove_pinned` clears what cannot be loaded.
//! Also: the pin directory and its subdirectories are 0700, every pin 0600.
//!
//! ```text
//!   netns dpe-<pid>-<tag>: eth0 (veth, the uplink)     /sys/fs/bpf/dpe-test-<pid>-<tag>/
//!                                                          dp_svc, dp_ct, ..., dp_layout, links/
//! ```

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use aya::maps::{HashMap, Map, MapData, MapInfo};
use dataplane_core::{Dataplane, DesiredState, ObjectName, Protocol, Service, ServicePort};
use dataplane_ebpf::maps::{CtEntry, CtKey};
use dataplane_ebpf::{EbpfDataplane, EbpfError, LAYOUT_MAP};

use common::{backend, node_a, require_root, TestNode};

fn state() -> DesiredState {
    let mut web = Service::new(ObjectName::new("default", "web"));
    web.cluster_ips = vec!["10.96.0.10".parse().unwrap()];
    web.ports = vec![ServicePort {
        name: "http".to_owned(),
        protocol: Protocol::Tcp,
        port: 80,
        target_port: 8080,
        node_port: None,
    }];
    web.backends = vec![backend("10.244.1.20", "node-b")];
    let mut st = DesiredState::new(node_a());
    st.services = vec![web];
    st
}

/// A node whose pin directory holds this version's pins of [`state`] (links detached).
fn programmed(tag: &str) -> TestNode {
    let node = TestNode::new(tag);
    let mut dp = node.dataplane();
    dp.apply(&state()).expect("apply");
    drop(dp);
    node
}

fn layout_map(pin_dir: &Path) -> HashMap<MapData, [u8; 16], [u64; 2]> {
    let data = MapData::from_pin(pin_dir.join(LAYOUT_MAP)).expect("dp_layout pinned");
    HashMap::try_from(Map::HashMap(data)).expect("a hash map of records")
}

fn key(name: &str) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..name.len()].copy_from_slice(name.as_bytes());
    k
}

fn record(pin_dir: &Path, map: &str) -> Option<[u64; 2]> {
    layout_map(pin_dir).get(&key(map), 0).ok()
}

fn set_record(pin_dir: &Path, map: &str, version: u64, fingerprint: u64) {
    layout_map(pin_dir)
        .insert(key(map), [version, fingerprint], 0)
        .expect("record written");
}

fn expected(map: &str) -> [u64; 2] {
    let r = dataplane_ebpf::expected_layout(map).expect("a map of ours");
    [r.version, r.fingerprint]
}

fn map_id(pin_dir: &Path, map: &str) -> u32 {
    MapInfo::from_pin(pin_dir.join(map)).expect("pinned").id()
}

/// (path -> (mode, map id), layout records).
type Snapshot = (
    BTreeMap<String, (u32, Option<u32>)>,
    Vec<([u8; 16], [u64; 2])>,
);

/// Everything under the pin directory: path -> (mode, map id for map pins), and the layout
/// records.
fn snapshot(pin_dir: &Path) -> Snapshot {
    let mut out = BTreeMap::new();
    let mut stack = vec![pin_dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("readable").flatten() {
            let meta = e.metadata().expect("metadata");
            let path = e.path();
            let id = meta
                .is_file()
                .then(|| MapInfo::from_pin(&path).ok().map(|i| i.id()))
                .flatten();
            out.insert(
                path.strip_prefix(pin_dir).unwrap().display().to_string(),
                (meta.permissions().mode(), id),
            );
            if meta.is_dir() {
                stack.push(path);
            }
        }
    }
    let mut records: Vec<_> = if pin_dir.join(LAYOUT_MAP).exists() {
        layout_map(pin_dir)
            .iter()
            .map(|r| r.expect("record"))
            .collect()
    } else {
        Vec::new()
    };
    records.sort_unstable();
    (out, records)
}

fn ct_entries(pin_dir: &Path) -> usize {
    let data = MapData::from_pin(pin_dir.join("dp_ct")).expect("dp_ct pinned");
    let ct: HashMap<MapData, CtKey, CtEntry> = HashMap::try_from(Map::LruHashMap(data)).unwrap();
    ct.keys().count()
}

fn add_ct_entry(pin_dir: &Path) {
    let data = MapData::from_pin(pin_dir.join("dp_ct")).expect("dp_ct pinned");
    let mut ct: HashMap<MapData, CtKey, CtEntry> =
        HashMap::try_from(Map::LruHashMap(data)).unwrap();
    let k = CtKey {
        proto: 6,
        family: 2,
        ..CtKey::default()
    };
    ct.insert(k, CtEntry::default(), 0).expect("entry written");
}

/// Asserts that opening a dataplane on `node` is refused for `map`, and that the directory
/// is as it was.
fn assert_refused(node: &TestNode, map: &str, found: &str) {
    let before = snapshot(&node.pin_dir);
    match EbpfDataplane::new(node.config()) {
        Err(EbpfError::IncompatiblePins {
            map: m,
            found: f,
            what_to_do,
            ..
        }) => {
            assert_eq!(m, map, "the refused map");
            assert!(f.contains(found), "found {f:?} mentions {found:?}");
            assert!(
                what_to_do.contains("--cleanup") && what_to_do.contains("remove_pinned"),
                "{what_to_do}"
            );
        }
        Err(e) => panic!("wanted IncompatiblePins for {map}, got {e:?}"),
        Ok(_) => panic!("pins with another layout of {map} were adopted"),
    }
    assert_eq!(before, snapshot(&node.pin_dir), "a refusal changes nothing");
}

#[test]
fn current_pins_are_adopted() {
    if !require_root("pin_upgrade") {
        return;
    }
    let node = programmed("up-cur");
    let dir = &node.pin_dir;
    for m in dataplane_ebpf::map_table::map_table() {
        if dir.join(m.name).exists() {
            assert_eq!(record(dir, m.name), Some(expected(m.name)), "{}", m.name);
        }
    }
    add_ct_entry(dir);
    let (svc, ct) = (map_id(dir, "dp_svc"), map_id(dir, "dp_ct"));
    let dp = node.dataplane();
    assert_eq!(
        dp.observe().unwrap().frontends.len(),
        1,
        "the service is read back"
    );
    assert_eq!((map_id(dir, "dp_svc"), map_id(dir, "dp_ct")), (svc, ct));
    assert_eq!(ct_entries(dir), 1, "conntrack kept");
}

#[test]
fn another_layout_of_a_state_map_is_refused_and_nothing_changes() {
    if !require_root("pin_upgrade") {
        return;
    }
    let node = programmed("up-ref");
    let dir = &node.pin_dir;
    let [version, fingerprint] = expected("dp_svc");
    // A newer version's.
    set_record(dir, "dp_svc", version + 1, fingerprint);
    assert_refused(&node, "dp_svc", &format!("layout version {}", version + 1));
    // This version's number with other types (a struct changed, the bump forgotten).
    set_record(dir, "dp_svc", version, fingerprint ^ 1);
    assert_refused(&node, "dp_svc", &format!("{:016x}", fingerprint ^ 1));
    // An older version's.
    set_record(dir, "dp_svc", version - 1, fingerprint);
    assert_refused(&node, "dp_svc", &format!("layout version {}", version - 1));
    // A newer conntrack is not this version's to drop either.
    set_record(dir, "dp_svc", version, fingerprint);
    let [ct_version, ct_fp] = expected("dp_ct");
    set_record(dir, "dp_ct", ct_version + 1, ct_fp);
    assert_refused(
        &node,
        "dp_ct",
        &format!("layout version {}", ct_version + 1),
    );
    // Put back, it is adopted.
    set_record(dir, "dp_ct", ct_version, ct_fp);
    let dp = node.dataplane();
    assert_eq!(dp.observe().unwrap().frontends.len(), 1);
}

#[test]
fn an_older_conntrack_is_created_anew() {
    if !require_root("pin_upgrade") {
        return;
    }
    let node = programmed("up-mig");
    let dir = &node.pin_dir;
    add_ct_entry(dir);
    let (svc, ct) = (map_id(dir, "dp_svc"), map_id(dir, "dp_ct"));
    let [version, fingerprint] = expected("dp_ct");
    set_record(dir, "dp_ct", version - 1, fingerprint ^ 0xff);
    let mut dp = node.dataplane();
    assert_ne!(map_id(dir, "dp_ct"), ct, "a new conntrack map");
    assert_eq!(ct_entries(dir), 0, "the old entries are not read");
    assert_eq!(
        record(dir, "dp_ct"),
        Some(expected("dp_ct")),
        "record updated"
    );
    assert_eq!(map_id(dir, "dp_svc"), svc, "the services are adopted");
    assert_eq!(dp.observe().unwrap().frontends.len(), 1);
    // The programs use the new map: a sync and a maintenance pass work on it.
    dp.apply(&state()).expect("apply");
    dp.maintain(dataplane_ebpf::monotonic_now())
        .expect("maintain");
}

/// A `dp_stats` pinned by the version before the last counter (`ct_lost`, 17 counters, the
/// same layout record) is created anew with every counter: adopted, `ct_lost` would have no
/// slot and read 0 for good.
#[test]
fn counters_pinned_with_fewer_entries_are_created_anew() {
    if !require_root("pin_upgrade") {
        return;
    }
    let node = programmed("up-stats");
    let dir = &node.pin_dir;
    let path = dir.join("dp_stats");
    std::fs::remove_file(&path).expect("unpin dp_stats");
    let older = dataplane_ebpf::maps::STAT_NAMES.len() - 1;
    let out = std::process::Command::new("bpftool")
        .args(["map", "create"])
        .arg(&path)
        .args(["type", "percpu_array", "key", "4", "value", "8", "entries"])
        .arg(older.to_string())
        .args(["name", "dp_stats"])
        .output()
        .expect("run bpftool");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let old = map_id(dir, "dp_stats");
    let mut dp = node.dataplane();
    assert_ne!(map_id(dir, "dp_stats"), old, "a new dp_stats");
    let info = MapInfo::from_pin(&path).expect("pinned");
    assert_eq!(
        info.max_entries() as usize,
        dataplane_ebpf::maps::STAT_NAMES.len()
    );
    assert_eq!(record(dir, "dp_stats"), Some(expected("dp_stats")));
    dp.apply(&state()).expect("apply");
    assert_eq!(dp.stats().expect("stats").other.get("ct_lost"), Some(&0));
}

#[test]
fn pins_from_before_layout_records() {
    if !require_root("pin_upgrade") {
        return;
    }
    let node = programmed("up-old");
    let dir = &node.pin_dir;
    add_ct_entry(dir);
    let (svc, ct) = (map_id(dir, "dp_svc"), map_id(dir, "dp_ct"));
    std::fs::remove_file(dir.join(LAYOUT_MAP)).expect("unpin dp_layout");
    let dp = node.dataplane();
    assert_eq!(map_id(dir, "dp_svc"), svc, "same sizes: adopted");
    assert_eq!(dp.observe().unwrap().frontends.len(), 1);
    assert_ne!(map_id(dir, "dp_ct"), ct, "conntrack created anew");
    assert_eq!(ct_entries(dir), 0);
    for m in dataplane_ebpf::map_table::map_table() {
        if dir.join(m.name).exists() {
            assert_eq!(record(dir, m.name), Some(expected(m.name)), "{}", m.name);
        }
    }
    drop(dp);

    // An older dp_svc (24-byte values, before `svc_value.rev` went) without records: refused.
    std::fs::remove_file(dir.join(LAYOUT_MAP)).expect("unpin dp_layout");
    std::fs::remove_file(dir.join("dp_svc")).expect("unpin dp_svc");
    let def = aya_obj::maps::bpf_map_def {
        map_type: 1,
        key_size: u32::try_from(dataplane_ebpf::map_table::map_table()[0].key_size).unwrap(),
        value_size: 24,
        max_entries: 16,
        ..Default::default()
    };
    let old = MapData::create(
        aya_obj::Map::Legacy(aya_obj::maps::LegacyMap {
            def,
            inner_def: None,
            section_index: 0,
            section_kind: aya_obj::EbpfSectionKind::Maps,
            symbol_index: None,
            data: Vec::new(),
        }),
        "dp_svc",
        None,
    )
    .expect("map created");
    old.pin(dir.join("dp_svc")).expect("pinned");
    assert_refused(
        &node,
        "dp_svc",
        "pinned before layout versions), key/value sizes ",
    );
    assert!(!dir.join(LAYOUT_MAP).exists(), "no record written");

    // What the error says to do works: remove_pinned, then a fresh start.
    dataplane_ebpf::remove_pinned(dir, Some(&node.netns_path())).expect("removed");
    assert!(!dir.exists());
    let dp = node.dataplane();
    assert!(dp.observe().unwrap().frontends.is_empty());
}

#[test]
fn remove_pinned_detaches_what_a_kept_dataplane_left() {
    if !require_root("pin_upgrade") {
        return;
    }
    let node = TestNode::new("up-rm");
    let mut config = node.config();
    config.keep_attachments_on_drop = true;
    let mut dp = EbpfDataplane::new(config).expect("loads");
    dp.apply(&state()).expect("apply");
    drop(dp);
    assert_eq!(
        common::tcx_programs(&node, "eth0", true),
        vec!["dp_to_uplink"]
    );
    // Another holder of a link (a process still running the old version, here this test):
    // without BPF_LINK_DETACH the link would stay attached as long as it holds it.
    let held =
        aya::programs::links::PinnedLink::from_pin(node.pin_dir.join("links/to-uplink@eth0"))
            .expect("link pinned");
    dataplane_ebpf::remove_pinned(&node.pin_dir, Some(&node.netns_path())).expect("removed");
    assert!(!node.pin_dir.exists());
    // Detached when remove_pinned returns, not when the kernel gets to free the links.
    assert!(common::tcx_programs(&node, "eth0", true).is_empty());
    assert!(common::tcx_programs(&node, "eth0", false).is_empty());
    drop(held);
}

/// `reset()` and a drop without keeping detach the links before they return, even while
/// something else holds a link (the kernel would otherwise free it, and detach it, only with
/// its last reference, and then in a work item: a program still attached right after
/// `reset()` on a loaded machine).
#[test]
fn reset_and_drop_detach_at_once() {
    if !require_root("pin_upgrade") {
        return;
    }
    let node = TestNode::new("up-det");
    let hold_link = |node: &TestNode| {
        aya::programs::links::PinnedLink::from_pin(node.pin_dir.join("links/to-uplink@eth0"))
            .expect("link pinned")
    };
    let attached = |node: &TestNode| {
        [
            common::tcx_programs(node, "eth0", true),
            common::tcx_programs(node, "eth0", false),
        ]
    };
    let mut dp = node.dataplane();
    dp.apply(&state()).expect("apply");
    let held = hold_link(&node);
    dp.reset().expect("reset");
    assert_eq!(
        attached(&node),
        [Vec::<String>::new(), Vec::new()],
        "reset detaches"
    );
    drop(held);

    let mut dp = node.dataplane();
    dp.apply(&state()).expect("apply");
    let held = hold_link(&node);
    drop(dp);
    assert_eq!(
        attached(&node),
        [Vec::<String>::new(), Vec::new()],
        "drop detaches"
    );
    drop(held);
}

#[test]
fn the_pin_directory_is_root_only() {
    if !require_root("pin_upgrade") {
        return;
    }
    let node = TestNode::new("up-mode");
    // An earlier version made it 0755.
    std::fs::create_dir_all(&node.pin_dir).unwrap();
    std::fs::set_permissions(&node.pin_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut dp = node.dataplane();
    dp.apply(&state()).expect("apply");
    let (entries, _) = snapshot(&node.pin_dir);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&node.pin_dir), 0o700, "the pin directory");
    assert!(entries.contains_key("links") && entries.contains_key("dp_events"));
    for (path, (m, _)) in &entries {
        let m = m & 0o7777;
        if node.pin_dir.join(path).is_dir() {
            assert_eq!(m, 0o700, "{path}");
        } else {
            assert_eq!(m, 0o600, "{path}: pins are root's only");
        }
    }
}

#[test]
fn remove_pinned_detaches_clsact_filters() {
    if !require_root("pin_upgrade") {
        return;
    }
    let node = TestNode::new("up-nl");
    let mut config = node.config();
    config.attach_mode = dataplane_ebpf::AttachMode::Clsact;
    config.keep_attachments_on_drop = true;
    let mut dp = EbpfDataplane::new(config).expect("loads");
    dp.apply(&state()).expect("apply");
    drop(dp);
    assert_eq!(
        common::clsact_filters(&node, "eth0", false, "dp_from_uplink"),
        1,
        "kept after drop"
    );
    dataplane_ebpf::remove_pinned(&node.pin_dir, Some(&node.netns_path())).expect("removed");
    assert!(!node.pin_dir.exists());
    assert_eq!(
        common::clsact_filters(&node, "eth0", false, "dp_from_uplink"),
        0
    );
    assert_eq!(
        common::clsact_filters(&node, "eth0", true, "dp_to_uplink"),
        0
    );
}
