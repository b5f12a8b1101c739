//! The one table of the BPF maps: per map its name, key and value sizes (the layouts of
//! `bpf/lib/maps.h`, mirrored in [`crate::maps`]), its default size and how it is sized and
//! pinned. The loader (sizes, pins), `check_pinned` (layouts of adopted maps), [`Capacities`]
//! (defaults) and the BTF layout test read it; no other place names a map.
//!
//! [`Capacities`]: crate::Capacities

use std::mem::size_of;
use std::path::{Path, PathBuf};

use crate::maps::{
    Addr, AffinityKey, AffinityValue, BackendValue, CtEntry, CtKey, DpConfig, EvLimit, HostCfg,
    HostKey, L2Cfg, L2Key, L2Value, LocalKey, LocalValue, NameKey, NameValue, PolAddr, PolBlockKey,
    PolCt, PolRuleKey, PolTier, SrcRangeData, SvcEntry, SvcKey, DR_SLOTS, EV_LIMIT_SLOTS,
    EV_RING_BYTES, HS_RULE_SLOTS, L2_ADDRS, PT_MAX, SOCK_REV_KEY_SIZE, SOCK_REV_VALUE_SIZE,
    STAT_NAMES,
};

/// The [`Capacities`](crate::Capacities) field that sizes a map.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capacity {
    /// `Capacities::services`.
    Services,
    /// `Capacities::backends`.
    Backends,
    /// `Capacities::backend_slots`.
    BackendSlots,
    /// `Capacities::conntrack`.
    Conntrack,
    /// `Capacities::affinity`.
    Affinity,
    /// `Capacities::source_ranges`.
    SourceRanges,
    /// `Capacities::local`.
    Local,
    /// `Capacities::socket_rev`.
    SocketRev,
    /// `Capacities::policy_addresses`.
    PolicyAddresses,
    /// `Capacities::policy_rules`.
    PolicyRules,
    /// `Capacities::policy_blocks`.
    PolicyBlocks,
    /// `Capacities::policy_conntrack`.
    PolicyConntrack,
    /// `Capacities::events_ring_bytes` (bytes, not entries).
    EventsRing,
    /// `Capacities::names`.
    Names,
    /// `Capacities::host_prefixes`.
    HostPrefixes,
}

/// Which compiled object defines a map.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Defined {
    /// `bpf/lib/maps.h`, shared by every object (`tc_pod.o`, `tc_host.o`, `xdp_uplink.o`,
    /// `sock.o`).
    Shared,
    /// `bpf/sock.c` only: created when socket-level load balancing is on.
    Sock,
}

/// One BPF map.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapSpec {
    /// The map's name in the objects, and its pin name.
    pub name: &'static str,
    /// Size of its key in bytes.
    pub key_size: usize,
    /// Size of its value in bytes (per CPU for a per-CPU map).
    pub value_size: usize,
    /// `max_entries` when nothing else is configured.
    pub default_size: u32,
    /// The capacity that sizes it when the map is created; `None`: the object's own size.
    pub capacity: Option<Capacity>,
    /// Where it is defined.
    pub defined: Defined,
}

impl MapSpec {
    /// Where the map is pinned (`LIBBPF_PIN_BY_NAME` under the pin directory): every map is,
    /// so that a new process adopts what the last one left.
    pub fn pin_path(&self, pin_dir: &Path) -> PathBuf {
        pin_dir.join(self.name)
    }
}

const fn spec(
    name: &'static str,
    key_size: usize,
    value_size: usize,
    default_size: u32,
    capacity: Option<Capacity>,
) -> MapSpec {
    MapSpec {
        name,
        key_size,
        value_size,
        default_size,
        capacity,
        defined: Defined::Shared,
    }
}

/// Frontends: (address, port, protocol, scope) -> service entry and its first slots.
pub(crate) const SVC: MapSpec = spec(
    "dp_svc",
    size_of::<SvcKey>(),
    size_of::<SvcEntry>(),
    65_536,
    Some(Capacity::Services),
);
/// Backend id -> (address, port).
pub(crate) const BACKENDS: MapSpec = spec(
    "dp_backends",
    4,
    size_of::<BackendValue>(),
    65_536,
    Some(Capacity::Backends),
);
/// Slot -> backend id.
pub(crate) const SLOTS: MapSpec = spec("dp_slots", 4, 4, 1 << 21, Some(Capacity::BackendSlots));
/// Conntrack.
pub(crate) const CT: MapSpec = spec(
    "dp_ct",
    size_of::<CtKey>(),
    size_of::<CtEntry>(),
    262_144,
    Some(Capacity::Conntrack),
);
/// Session affinity.
pub(crate) const AFFINITY: MapSpec = spec(
    "dp_affinity",
    size_of::<AffinityKey>(),
    size_of::<AffinityValue>(),
    65_536,
    Some(Capacity::Affinity),
);
/// loadBalancerSourceRanges (LPM trie: a 4-byte prefix length before the data).
pub(crate) const SRC_RANGES: MapSpec = spec(
    "dp_srcrange",
    4 + size_of::<SrcRangeData>(),
    1,
    4_096,
    Some(Capacity::SourceRanges),
);
/// The node's CIDRs (LPM trie).
pub(crate) const CIDRS: MapSpec = spec("dp_cidrs", 4 + size_of::<Addr>(), 1, 256, None);
/// The node's settings (one entry).
pub(crate) const CONFIG: MapSpec = spec("dp_config", 4, size_of::<DpConfig>(), 1, None);
/// Pod address on this node -> its veth's ifindex.
pub(crate) const LOCAL: MapSpec = spec(
    "dp_local",
    size_of::<LocalKey>(),
    size_of::<LocalValue>(),
    4_096,
    Some(Capacity::Local),
);
/// Per-CPU counters.
pub(crate) const STATS: MapSpec = spec("dp_stats", 4, 8, STAT_NAMES.len() as u32, None);
/// Socket cookie + backend -> frontend (socket-level load balancing only).
pub(crate) const SOCK_REV: MapSpec = MapSpec {
    defined: Defined::Sock,
    ..spec(
        "dp_sock_rev",
        SOCK_REV_KEY_SIZE,
        SOCK_REV_VALUE_SIZE,
        262_144,
        Some(Capacity::SocketRev),
    )
};

/// NetworkPolicy: address -> local endpoint number, flags and peer-set numbers.
pub(crate) const POL_ADDR: MapSpec = spec(
    "dp_pol_addr",
    size_of::<LocalKey>(),
    size_of::<PolAddr>(),
    65_536,
    Some(Capacity::PolicyAddresses),
);
/// NetworkPolicy: (endpoint, peer, direction, protocol, port prefix) -> allowed (LPM trie).
pub(crate) const POL_RULES: MapSpec = spec(
    "dp_pol_rules",
    size_of::<PolRuleKey>(),
    1,
    65_536,
    Some(Capacity::PolicyRules),
);
/// NetworkPolicy: (endpoint, direction, ipBlock prefix) -> ports group (LPM trie).
pub(crate) const POL_BLOCKS: MapSpec = spec(
    "dp_pol_blocks",
    size_of::<PolBlockKey>(),
    4,
    16_384,
    Some(Capacity::PolicyBlocks),
);
/// Cluster policies and the baseline: (endpoint, peer, direction, protocol, port prefix) ->
/// the first rule of each tier (LPM trie). Sized like `dp_pol_rules` (one capacity,
/// `Capacities::policy_rules`, for each of the two maps).
pub(crate) const POL_TIERS: MapSpec = spec(
    "dp_pol_tiers",
    size_of::<PolRuleKey>(),
    size_of::<PolTier>(),
    65_536,
    Some(Capacity::PolicyRules),
);
/// NetworkPolicy's conntrack: connections seen at the pods' veths.
pub(crate) const POL_CT: MapSpec = spec(
    "dp_pol_ct",
    size_of::<CtKey>(),
    size_of::<PolCt>(),
    262_144,
    Some(Capacity::PolicyConntrack),
);

/// Flow events: the ring buffer the programs write (`struct flow_event` records); its size is
/// in bytes.
pub(crate) const EVENTS: MapSpec =
    spec("dp_events", 0, 0, EV_RING_BYTES, Some(Capacity::EventsRing));
/// Per-CPU drop counters by observation point and reason.
pub(crate) const DROPS: MapSpec = spec("dp_drops", 4, 8, PT_MAX * DR_SLOTS, None);
/// Per-CPU token buckets of the flow events, one per event kind and drop reason.
pub(crate) const EV_LIMIT: MapSpec =
    spec("dp_ev_limit", 4, size_of::<EvLimit>(), EV_LIMIT_SLOTS, None);
/// Names of service-port ids and pod addresses, for the events (user space only).
pub(crate) const NAMES: MapSpec = spec(
    "dp_names",
    size_of::<NameKey>(),
    size_of::<NameValue>(),
    131_072,
    Some(Capacity::Names),
);

/// Host endpoint policy: (generation, kind, set, family or protocol, prefix) -> rule mask
/// (LPM trie; `host_policy.rs`).
pub(crate) const HOST_LPM: MapSpec = spec(
    "dp_host_lpm",
    size_of::<HostKey>(),
    8,
    262_144,
    Some(Capacity::HostPrefixes),
);
/// Host endpoint policy: rule slot -> action.
pub(crate) const HOST_RULES: MapSpec = spec("dp_host_rules", 4, 4, HS_RULE_SLOTS, None);
/// Host endpoint policy: the active generation and its flags.
pub(crate) const HOST_CFG: MapSpec = spec("dp_host_cfg", 4, size_of::<HostCfg>(), 3, None);
/// Host endpoint policy: the connections its normal stage let through, both ways.
pub(crate) const HOST_CT: MapSpec = spec("dp_host_ct", size_of::<CtKey>(), 8, 262_144, None);
/// Host endpoint policy: per-CPU scratch between its first stages and the normal one.
pub(crate) const HOST_SCRATCH: MapSpec =
    spec("dp_host_scratch", 4, size_of::<CtKey>() + 8, 1, None);
/// Host endpoint policy: per-CPU drops by rule slot.
pub(crate) const HOST_DROPS: MapSpec = spec("dp_host_drops", 4, 8, HS_RULE_SLOTS, None);

/// L2 announcements: (address, uplink ifindex) -> answers sent (`l2.rs`).
pub(crate) const L2_ADDRS_MAP: MapSpec = spec(
    "dp_l2_addrs",
    size_of::<L2Key>(),
    size_of::<L2Value>(),
    L2_ADDRS,
    None,
);
/// L2 announcements: the uplink's MAC and the responder's liveness (one entry).
pub(crate) const L2_CFG: MapSpec = spec("dp_l2_cfg", 4, size_of::<L2Cfg>(), 1, None);

/// Every map.
pub(crate) const MAPS: [MapSpec; 28] = [
    SVC,
    BACKENDS,
    SLOTS,
    CT,
    AFFINITY,
    SRC_RANGES,
    CIDRS,
    CONFIG,
    LOCAL,
    STATS,
    SOCK_REV,
    POL_ADDR,
    POL_RULES,
    POL_BLOCKS,
    POL_TIERS,
    POL_CT,
    EVENTS,
    DROPS,
    EV_LIMIT,
    NAMES,
    HOST_LPM,
    HOST_RULES,
    HOST_CFG,
    HOST_DROPS,
    HOST_CT,
    HOST_SCRATCH,
    L2_ADDRS_MAP,
    L2_CFG,
];

/// Every map, for the BTF layout test (a separate crate): not part of the embedder's API.
#[doc(hidden)]
pub fn map_table() -> &'static [MapSpec] {
    &MAPS
}

#[cfg(test)]
mod tests {
    use super::MAPS;

    #[test]
    fn names_are_distinct() {
        let mut names: Vec<&str> = MAPS.iter().map(|m| m.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), MAPS.len());
    }
}
