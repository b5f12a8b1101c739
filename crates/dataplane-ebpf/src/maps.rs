//! Rust mirror of `bpf/lib/maps.h`: map keys and values, `#[repr(C)]` with explicit padding,
//! and the family, scope, flag and counter constants.
//!
//! `tests/btf_layout.rs` checks both against the BTF of the compiled objects: the layouts'
//! sizes and field offsets, and each constant's value against its C enumerator (`maps.h`
//! declares the constants as enums for this), so a change on one side without the other fails
//! a test.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Address family value of IPv4 in map keys (`DP_AF_INET`).
pub const AF_INET: u8 = 4;
/// Address family value of IPv6 in map keys (`DP_AF_INET6`).
pub const AF_INET6: u8 = 6;

/// `SVC_SCOPE_INTERNAL`: ClusterIP frontends.
pub const SCOPE_INTERNAL: u8 = 0;
/// `SVC_SCOPE_EXTERNAL`: NodePort/LoadBalancer/ExternalIP frontends reached from the uplink.
pub const SCOPE_EXTERNAL: u8 = 1;
/// `SVC_SCOPE_EXTERNAL_INSIDE`: the same frontends reached from a pod or the host.
pub const SCOPE_EXTERNAL_INSIDE: u8 = 2;

/// `SVC_SCOPE_RETIRED_INTERNAL_OUTSIDE`: scope 3, once `SVC_SCOPE_INTERNAL_OUTSIDE` (ClusterIP
/// from outside with cluster-wide backends under internalTrafficPolicy Local), reserved: no
/// longer planned nor looked up, since that policy governs outside clients too. Entries an
/// older version left are removed by the first full sync (every `apply`); `observe()` ignores
/// them until then.
pub const SCOPE_RETIRED_INTERNAL_OUTSIDE: u8 = 3;

/// `SVC_F_MAGLEV`.
pub const SVC_F_MAGLEV: u16 = 1 << 0;
/// `SVC_F_AFFINITY`.
pub const SVC_F_AFFINITY: u16 = 1 << 1;
/// `SVC_F_NO_LOCAL`.
pub const SVC_F_NO_LOCAL: u16 = 1 << 2;
/// `SVC_F_SRC_RANGES`.
pub const SVC_F_SRC_RANGES: u16 = 1 << 3;
/// `SVC_F_SNAT`.
pub const SVC_F_SNAT: u16 = 1 << 4;
/// `SVC_F_WILDCARD`.
pub const SVC_F_WILDCARD: u16 = 1 << 5;
/// `SVC_F_DSR`: direct server return to backends on other nodes.
pub const SVC_F_DSR: u16 = 1 << 6;

/// `BE_F_LOCAL`.
pub const BE_F_LOCAL: u8 = 1 << 0;
/// `BE_F_TERMINATING`.
pub const BE_F_TERMINATING: u8 = 1 << 1;

/// `CT_F_SNAT`.
pub const CT_F_SNAT: u16 = 1 << 0;
/// `CT_F_HAIRPIN`.
pub const CT_F_HAIRPIN: u16 = 1 << 1;
/// `CT_F_EXTERNAL`.
pub const CT_F_EXTERNAL: u16 = 1 << 2;
/// `CT_F_MASQ`: pod masquerade, not a service connection.
pub const CT_F_MASQ: u16 = 1 << 3;
/// `CT_F_INBOUND`.
pub const CT_F_INBOUND: u16 = 1 << 4;
/// `CT_F_DSR`: a direct-server-return flow (replies bypass the ingress node).
pub const CT_F_DSR: u16 = 1 << 5;
/// `CT_F_REV`: a reverse entry (key: backend -> client or SNAT address). Conntrack has one
/// key space; an entry with neither `CT_F_REV` nor `CT_F_INBOUND` is a forward entry.
pub const CT_F_REV: u16 = 1 << 6;
/// `CT_F_LOOPBACK`: the host to one of its own addresses (`dp_to_lo`); replies go up
/// through lo.
pub const CT_F_LOOPBACK: u16 = 1 << 7;
/// `CT_TCP_SYN`.
pub const CT_TCP_SYN: u8 = 1 << 0;
/// `CT_TCP_REPLY`.
pub const CT_TCP_REPLY: u8 = 1 << 1;
/// `CT_TCP_FIN_FWD`.
pub const CT_TCP_FIN_FWD: u8 = 1 << 2;
/// `CT_TCP_FIN_REV`.
pub const CT_TCP_FIN_REV: u8 = 1 << 3;
/// `CT_TCP_RST`.
pub const CT_TCP_RST: u8 = 1 << 4;
/// `CT_SCTP_ESTAB`: an SCTP association's COOKIE-ACK was seen (SCTP's other chunks use the
/// `CT_TCP_*` bits: INIT SYN, SHUTDOWN and SHUTDOWN-ACK FIN, ABORT and SHUTDOWN-COMPLETE RST).
pub const CT_SCTP_ESTAB: u8 = 1 << 5;

/// `CFG_F_HAS_V4`.
pub const CFG_F_HAS_V4: u32 = 1 << 0;
/// `CFG_F_HAS_V6`.
pub const CFG_F_HAS_V6: u32 = 1 << 1;
/// `CFG_F_MASQUERADE`.
pub const CFG_F_MASQUERADE: u32 = 1 << 2;
/// `CFG_F_MASQ_ALL`: masquerade.all.
pub const CFG_F_MASQ_ALL: u32 = 1 << 3;
/// `CFG_F_HOST_ROUTING`: pod-to-pod packets on this node are redirected by the programs.
pub const CFG_F_HOST_ROUTING: u32 = 1 << 4;
/// `CFG_F_CLUSTER_V4`: the node has IPv4 cluster CIDRs.
pub const CFG_F_CLUSTER_V4: u32 = 1 << 5;
/// `CFG_F_CLUSTER_V6`: the node has IPv6 cluster CIDRs.
pub const CFG_F_CLUSTER_V6: u32 = 1 << 6;
/// `CFG_F_POLICY`: the state has network policies (pods' forged sources are dropped).
pub const CFG_F_POLICY: u32 = 1 << 7;
/// `CFG_F_EV_NEW_CONN`: the programs report every new connection in `dp_events`.
pub const CFG_F_EV_NEW_CONN: u32 = 1 << 8;
/// `CFG_F_EV_POLICY`: the programs report NetworkPolicy's allowed verdicts in `dp_events`.
pub const CFG_F_EV_POLICY: u32 = 1 << 9;

/// `CIDR_F_CLUSTER`: cluster CIDRs.
pub const CIDR_F_CLUSTER: u8 = 1 << 0;
/// `CIDR_F_POD`: this node's pod CIDRs.
pub const CIDR_F_POD: u8 = 1 << 1;
/// `CIDR_F_NO_MASQ`: nonMasqueradeCidrs.
pub const CIDR_F_NO_MASQ: u8 = 1 << 2;
/// `CIDR_F_NODE`: the node's addresses.
pub const CIDR_F_NODE: u8 = 1 << 3;
/// `CIDR_F_SERVICE`: node.serviceCIDRs (addresses no frontend has are dropped).
pub const CIDR_F_SERVICE: u8 = 1 << 4;

/// The counters of `dp_stats` by index (`enum dp_stat`): the name of `STAT_TRANSLATED`, then
/// `STAT_REV_TRANSLATED`, ...; their number is `STAT_MAX`.
pub const STAT_NAMES: [&str; 18] = [
    "translated",
    "reverse_translated",
    "dropped",
    "rejected",
    "ct_created",
    "ct_full",
    "snat_exhausted",
    "masqueraded",
    "dsr_forwarded",
    "dsr_replies",
    "frag_needed",
    "xdp_forwarded",
    "socket_translated",
    "host_routed",
    "unallocated_dropped",
    "policy_denied",
    "spoofed_dropped",
    "ct_lost",
];
/// Counters a `dp_stats` pinned by an older version has (it has fewer entries; the programs'
/// increments of the newer ones find no slot and are lost).
pub const STAT_ORIGINAL: usize = 12;
/// Size of `struct sock_rev_key` (socket-level load balancing; only the programs read the
/// map, so there is no Rust mirror of the struct).
pub const SOCK_REV_KEY_SIZE: usize = 32;
/// Size of `struct sock_rev_value`.
pub const SOCK_REV_VALUE_SIZE: usize = 24;

/// `STAT_TRANSLATED`.
pub const STAT_TRANSLATED: usize = 0;
/// `STAT_DROPPED`.
pub const STAT_DROPPED: usize = 2;
/// `STAT_REJECTED`.
pub const STAT_REJECTED: usize = 3;
/// `STAT_POLICY_DENIED`: packets of new connections NetworkPolicy does not allow.
pub const STAT_POLICY_DENIED: usize = 15;

/// `POL_F_ISO_INGRESS`: a local endpoint isolated for ingress.
pub const POL_F_ISO_INGRESS: u8 = 1 << 0;
/// `POL_F_ISO_EGRESS`: a local endpoint isolated for egress.
pub const POL_F_ISO_EGRESS: u8 = 1 << 1;
/// `POL_F_NODE`: one of the node's addresses.
pub const POL_F_NODE: u8 = 1 << 2;
/// `POL_F_TIERS_INGRESS`: a local endpoint with cluster or baseline entries for ingress.
pub const POL_F_TIERS_INGRESS: u8 = 1 << 3;
/// `POL_F_TIERS_EGRESS`: ... for egress.
pub const POL_F_TIERS_EGRESS: u8 = 1 << 4;
/// `POL_DIR_INGRESS`.
pub const POL_DIR_INGRESS: u8 = 0;
/// `POL_DIR_EGRESS`.
pub const POL_DIR_EGRESS: u8 = 1;
/// `POL_DIR_TIERS`: the bit of a `dp_pol_blocks` direction whose prefix is a cluster or
/// baseline `networks` prefix.
pub const POL_DIR_TIERS: u8 = 2;
/// `POL_TIER_NONE`: no entry of the tier matches.
pub const POL_TIER_NONE: u8 = 0;
/// `POL_TIER_ALLOW`.
pub const POL_TIER_ALLOW: u8 = 1;
/// `POL_TIER_DENY`.
pub const POL_TIER_DENY: u8 = 2;
/// `POL_TIER_PASS`: cluster tier only.
pub const POL_TIER_PASS: u8 = 3;
/// `POL_PEER_ANY`: the peer number of rules without peers.
pub const POL_PEER_ANY: u32 = 0;
/// `POL_PEER_BLOCK`: the bit of an ipBlock ports group's peer number.
pub const POL_PEER_BLOCK: u32 = 0x8000_0000;
/// `POL_SETS_MAX`: the most peer sets one address can be in (`PolAddr::sets`).
pub const POL_SETS_MAX: usize = 32;
/// `POLCT_EGRESS`.
pub const POLCT_EGRESS: u32 = 1 << 0;
/// `POLCT_INGRESS`.
pub const POLCT_INGRESS: u32 = 1 << 1;
/// `POLCT_REPLY_EGRESS`.
pub const POLCT_REPLY_EGRESS: u32 = 1 << 2;
/// `POLCT_REPLY_INGRESS`.
pub const POLCT_REPLY_INGRESS: u32 = 1 << 3;

/// A 16-bit value in network byte order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct Be16(u16);

impl Be16 {
    /// From a host-order value.
    pub const fn new(host: u16) -> Self {
        Self(host.to_be())
    }
    /// The host-order value.
    pub const fn get(self) -> u16 {
        u16::from_be(self.0)
    }
}

/// An IPv4 or IPv6 address as the datapath stores it: 16 bytes in network order, IPv4 in the
/// first four with the rest zero (`__u32 addr[4]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(C, align(4))]
pub struct Addr(pub [u8; 16]);

impl Addr {
    /// Encodes `ip`.
    pub fn new(ip: IpAddr) -> Self {
        let mut b = [0u8; 16];
        match ip {
            IpAddr::V4(v4) => b[..4].copy_from_slice(&v4.octets()),
            IpAddr::V6(v6) => b = v6.octets(),
        }
        Self(b)
    }
    /// Decodes with the given family (`AF_INET`/`AF_INET6`).
    pub fn ip(&self, family: u8) -> IpAddr {
        if family == AF_INET {
            IpAddr::V4(Ipv4Addr::new(self.0[0], self.0[1], self.0[2], self.0[3]))
        } else {
            IpAddr::V6(Ipv6Addr::from(self.0))
        }
    }
    /// IPv4 as `::ffff:a.b.c.d`, IPv6 as is: the LPM-trie form.
    pub fn mapped(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self(v4.to_ipv6_mapped().octets()),
            IpAddr::V6(v6) => Self(v6.octets()),
        }
    }
}

/// The datapath family value of `ip`.
pub fn family_of(ip: &IpAddr) -> u8 {
    if ip.is_ipv4() {
        AF_INET
    } else {
        AF_INET6
    }
}

/// `struct svc_key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(C)]
pub struct SvcKey {
    /// Frontend address.
    pub addr: Addr,
    /// Frontend port (0 for the ClusterIP wildcard).
    pub port: Be16,
    /// IP protocol (0 for the wildcard).
    pub proto: u8,
    /// `SCOPE_*`.
    pub scope: u8,
    /// `AF_*`.
    pub family: u8,
    /// Padding.
    pub pad: [u8; 3],
}

/// `struct svc_value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct SvcValue {
    /// Service-port id.
    pub id: u32,
    /// First slot.
    pub slot_base: u32,
    /// Number of slots.
    pub slot_count: u32,
    /// Affinity timeout in seconds.
    pub affinity_timeout: u32,
    /// `SVC_F_*`.
    pub flags: u16,
    /// Padding.
    pub pad: u16,
}

/// `SVC_INLINE_SLOTS`: the slots a `dp_svc` entry carries itself ([`SvcEntry::slots`]).
pub const SVC_INLINE_SLOTS: usize = 16;

/// `struct svc_entry`: `dp_svc`'s value, the frontend and the first slots of its range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct SvcEntry {
    /// The frontend.
    pub v: SvcValue,
    /// The first `min(v.slot_count, SVC_INLINE_SLOTS)` backend ids of its range (the
    /// datapath reads them instead of `dp_slots` when the whole range fits), then zeros.
    pub slots: [u32; SVC_INLINE_SLOTS],
}

impl SvcEntry {
    /// The entry of frontend `v` whose range holds `range` (`v.slot_count` ids).
    pub fn new(v: SvcValue, range: &[u32]) -> SvcEntry {
        let mut slots = [0; SVC_INLINE_SLOTS];
        for (s, id) in slots.iter_mut().zip(range) {
            *s = *id;
        }
        SvcEntry { v, slots }
    }
}

/// `struct backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct BackendValue {
    /// Backend address.
    pub addr: Addr,
    /// Backend (target) port.
    pub port: Be16,
    /// `AF_*`; 0 marks a free id.
    pub family: u8,
    /// `BE_F_*`.
    pub flags: u8,
}

/// `struct ct_key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(C)]
pub struct CtKey {
    /// Source address.
    pub saddr: Addr,
    /// Destination address.
    pub daddr: Addr,
    /// Source port.
    pub sport: Be16,
    /// Destination port.
    pub dport: Be16,
    /// IP protocol.
    pub proto: u8,
    /// `AF_*`.
    pub family: u8,
    /// Zero (the direction is in [`CtEntry::flags`]).
    pub pad0: u8,
    /// Padding.
    pub pad: u8,
}

/// `struct ct_entry`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct CtEntry {
    /// Forward: backend. Reverse: frontend.
    pub nat_addr: Addr,
    /// Forward: SNAT source. Reverse: original client.
    pub snat_addr: Addr,
    /// Port matching `nat_addr`.
    pub nat_port: Be16,
    /// Port matching `snat_addr`.
    pub snat_port: Be16,
    /// Backend id.
    pub backend_id: u32,
    /// Service-port id.
    pub svc_id: u32,
    /// `CT_F_*`.
    pub flags: u16,
    /// `CT_TCP_*`.
    pub tcp_state: u8,
    /// Padding.
    pub pad: u8,
    /// Creation time, `CLOCK_MONOTONIC` ns.
    pub created_ns: u64,
    /// Last packet, `CLOCK_MONOTONIC` ns.
    pub last_seen_ns: u64,
}

impl CtEntry {
    /// A forward entry (client -> frontend, as the client sent it).
    pub fn is_forward(&self) -> bool {
        self.flags & (CT_F_REV | CT_F_INBOUND) == 0
    }

    /// A reverse entry (backend -> client or SNAT address).
    pub fn is_reverse(&self) -> bool {
        self.flags & CT_F_REV != 0
    }
}

/// `struct affinity_key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct AffinityKey {
    /// Service-port id.
    pub svc_id: u32,
    /// `AF_*`.
    pub family: u8,
    /// Padding.
    pub pad: [u8; 3],
    /// Client address.
    pub addr: Addr,
}

/// `struct affinity_value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct AffinityValue {
    /// Last use, `CLOCK_MONOTONIC` ns.
    pub last_seen_ns: u64,
    /// Backend id.
    pub backend_id: u32,
    /// Index in the frontend entry's slot range the backend was picked from: the datapath
    /// keeps the affinity only while that slot still holds the backend.
    pub slot: u32,
}

/// `struct srcrange_key` (the data part after `prefixlen`; aya's `lpm_trie::Key` adds it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(C)]
pub struct SrcRangeData {
    /// Service-port id (always fully matched: its 32 bits count in the prefix length).
    pub svc_id: u32,
    /// Client prefix, IPv4 mapped.
    pub addr: Addr,
}

/// `struct srcrange_key` as a whole, for the layout check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct SrcRangeKey {
    /// Prefix length in bits (32 + address bits).
    pub prefixlen: u32,
    /// The data.
    pub data: SrcRangeData,
}

/// `struct cidr_key` as a whole, for the layout check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct CidrKey {
    /// Prefix length in bits of the mapped address.
    pub prefixlen: u32,
    /// Address, IPv4 mapped.
    pub addr: Addr,
}

/// `enum host_set`: host policy's rule sets (`HS_*`), per generation.
pub const HS_UNTRACKED_IN: u8 = 0;
/// `HS_UNTRACKED_OUT`.
pub const HS_UNTRACKED_OUT: u8 = 1;
/// `HS_PREDNAT_IN`.
pub const HS_PREDNAT_IN: u8 = 2;
/// `HS_NORMAL_IN`.
pub const HS_NORMAL_IN: u8 = 3;
/// `HS_NORMAL_OUT`.
pub const HS_NORMAL_OUT: u8 = 4;
/// `HS_SETS`: set slots per generation.
pub const HS_SETS: u32 = 8;
/// `HS_RULES`: rules per set (the bits of a mask).
pub const HS_RULES: u32 = 64;
/// `HS_GEN_RULES`: rule slots per generation.
pub const HS_GEN_RULES: u32 = HS_SETS * HS_RULES;
/// `HS_RULE_SLOTS`: `dp_host_rules` and `dp_host_drops` size (two generations).
pub const HS_RULE_SLOTS: u32 = 2 * HS_GEN_RULES;
/// `enum host_kind`: `HK_SRC_NET`.
pub const HK_SRC_NET: u8 = 0;
/// `HK_DST_NET`.
pub const HK_DST_NET: u8 = 1;
/// `HK_SRC_PORT`.
pub const HK_SRC_PORT: u8 = 2;
/// `HK_DST_PORT`.
pub const HK_DST_PORT: u8 = 3;
/// `HK_FAILSAFE`.
pub const HK_FAILSAFE: u8 = 4;
/// `enum host_action`: `HA_NONE`.
pub const HA_NONE: u32 = 0;
/// `HA_ALLOW`.
pub const HA_ALLOW: u32 = 1;
/// `HA_DENY`.
pub const HA_DENY: u32 = 2;
/// `HC_F_ON`: the uplink has a host endpoint (`host_cfg.flags`).
pub const HC_F_ON: u32 = 1 << 30;
/// `HC_F_NORMAL`: a normal policy selects it (connections are tracked in `dp_host_ct`).
pub const HC_F_NORMAL: u32 = 1 << 20;
/// `HC_F_DEF_IN`: a normal policy applies to ingress (default deny).
pub const HC_F_DEF_IN: u32 = 1 << 16;
/// `HC_F_DEF_IN_FWD`: one with `applyOnForward` does.
pub const HC_F_DEF_IN_FWD: u32 = 1 << 17;
/// `HC_F_DEF_OUT`: a normal policy applies to egress.
pub const HC_F_DEF_OUT: u32 = 1 << 18;
/// `HC_F_DEF_OUT_FWD`: one with `applyOnForward` does.
pub const HC_F_DEF_OUT_FWD: u32 = 1 << 19;
/// `HC_F_SRC_ONLY_IN`: every untracked ingress rule matches on source nets alone (no
/// protocol, ports or destination), so that the XDP program decides with the source lookup
/// alone.
pub const HC_F_SRC_ONLY_IN: u32 = 1 << 21;

/// `struct host_key` after `prefixlen` (the key of `dp_host_lpm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(C)]
pub struct HostData {
    /// Generation (0 or 1).
    pub gen: u8,
    /// `HK_*`.
    pub kind: u8,
    /// `HS_*` (failsafe: 0 inbound, 1 outbound).
    pub set: u8,
    /// `DP_AF_*` (nets) or `IPPROTO_*` (ports, failsafe).
    pub sub: u8,
    /// Nets: the address (IPv4 in the first 4 bytes); ports: the port in the first 2 bytes,
    /// network order.
    pub data: [u8; 16],
}

/// `struct host_key` as a whole, for the layout check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct HostKey {
    /// Prefix length in bits (24: gen, kind, set; 32 with sub; then the data's).
    pub prefixlen: u32,
    /// The data.
    pub data: HostData,
}

/// `struct host_cfg`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct HostCfg {
    /// Entry 0: the active generation.
    pub gen: u32,
    /// Entries 1 + gen: `HC_F_*` and `1 << HS_*` of the sets with rules.
    pub flags: u32,
    /// `HS_NORMAL_IN`'s rules of `applyOnForward` policies.
    pub fwd_in: u64,
    /// `HS_NORMAL_OUT`'s.
    pub fwd_out: u64,
}

/// `struct dp_config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct DpConfig {
    /// IPv4 masquerade address, network order bytes.
    pub node_v4: [u8; 4],
    /// IPv6 masquerade address.
    pub node_v6: [u8; 16],
    /// `CFG_F_*`.
    pub flags: u32,
    /// Underlay MTU (node.mtu).
    pub mtu: u32,
    /// The flow events' rate limits by `EV_KIND_*` (`[0]` unused), from
    /// [`EbpfConfig::events`](crate::EbpfConfig::events).
    pub ev_limits: [EvRate; EV_KIND_MAX as usize],
}

/// `struct ev_rate`: the rate limit of one kind of flow event, per CPU (and per reason for
/// drops); 0/0 is no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct EvRate {
    /// Events per second (at most `NSEC_PER_SEC`); 0: unlimited.
    pub rate: u32,
    /// Bucket size: the most events written at once.
    pub burst: u32,
}

/// `struct local_key`: a pod on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(C)]
pub struct LocalKey {
    /// The pod's address.
    pub addr: Addr,
    /// `AF_INET` or `AF_INET6` (the datapath's values).
    pub family: u8,
    /// Zero.
    pub pad: [u8; 3],
}

/// `struct local_value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct LocalValue {
    /// Index of the host side of the pod's interface.
    pub ifindex: u32,
}

/// `struct pol_addr`: what policy knows about an address (`dp_pol_addr`, keyed by
/// [`LocalKey`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct PolAddr {
    /// The local endpoint's number, 0 when the address is no local endpoint's.
    pub ep_id: u32,
    /// `POL_F_*`.
    pub flags: u8,
    /// How many of `sets` are valid.
    pub nsets: u8,
    /// Zero.
    pub pad: u16,
    /// The numbers of the peer sets the address is in.
    pub sets: [u32; POL_SETS_MAX],
}

impl Default for PolAddr {
    fn default() -> Self {
        Self {
            ep_id: 0,
            flags: 0,
            nsets: 0,
            pad: 0,
            sets: [0; POL_SETS_MAX],
        }
    }
}

/// `struct pol_rule_key` after `prefixlen` (aya's `lpm_trie::Key` adds it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(C)]
pub struct PolRuleData {
    /// The local endpoint's number.
    pub ep_id: u32,
    /// `POL_PEER_ANY`, a set number or `POL_PEER_BLOCK | n`.
    pub peer: u32,
    /// `POL_DIR_*`.
    pub dir: u8,
    /// IP protocol number.
    pub proto: u8,
    /// Destination port (the prefix covers a range of it).
    pub port: Be16,
}

/// `struct pol_rule_key` as a whole, for the layout check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct PolRuleKey {
    /// Prefix length in bits (72: every protocol, 80: every port, up to 96).
    pub prefixlen: u32,
    /// The data.
    pub data: PolRuleData,
}

/// `struct pol_block_key` after `prefixlen`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(C)]
pub struct PolBlockData {
    /// The local endpoint's number.
    pub ep_id: u32,
    /// `POL_DIR_*`.
    pub dir: u8,
    /// `DP_AF_*` of the prefix: an IPv6 prefix never matches an IPv4 peer.
    pub family: u8,
    /// Zero.
    pub pad: [u8; 2],
    /// The prefix, IPv4 mapped.
    pub addr: Addr,
}

/// `struct pol_block_key` as a whole, for the layout check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct PolBlockKey {
    /// Prefix length in bits (64 + the mapped prefix's length).
    pub prefixlen: u32,
    /// The data.
    pub data: PolBlockData,
}

/// `struct pol_tier`: per tier, the first rule in evaluation order of a `dp_pol_tiers`
/// prefix (keyed like `dp_pol_rules`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(C)]
pub struct PolTier {
    /// The cluster tier's order (`priority << 8 | rule index`), `u32::MAX` for none.
    pub cluster_order: u32,
    /// The baseline's order (rule index), `u32::MAX` for none.
    pub baseline_order: u32,
    /// `POL_TIER_*`.
    pub cluster: u8,
    /// `POL_TIER_NONE`, `POL_TIER_ALLOW` or `POL_TIER_DENY`.
    pub baseline: u8,
    /// Zero.
    pub pad: [u8; 2],
}

impl Default for PolTier {
    fn default() -> Self {
        Self {
            cluster_order: u32::MAX,
            baseline_order: u32::MAX,
            cluster: POL_TIER_NONE,
            baseline: POL_TIER_NONE,
            pad: [0; 2],
        }
    }
}

/// `struct pol_ct`: a connection seen at a pod's veth (`dp_pol_ct`, keyed by [`CtKey`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct PolCt {
    /// Last packet (`CLOCK_MONOTONIC` ns; refreshed at most once a second).
    pub last_seen_ns: u64,
    /// `POLCT_*`.
    pub flags: u32,
    /// `CT_TCP_*` seen on this key.
    pub tcp_state: u8,
    /// Zero.
    pub pad: [u8; 3],
}

/// `EV_KIND_DROP`: a packet dropped or rejected.
pub const EV_KIND_DROP: u8 = 1;
/// `EV_KIND_NEW_CONN`: a conntrack entry created.
pub const EV_KIND_NEW_CONN: u8 = 2;
/// `EV_KIND_POLICY`: NetworkPolicy allowed a new connection.
pub const EV_KIND_POLICY: u8 = 3;
/// `EV_KIND_MAX`: the kinds' token buckets in `dp_ev_limit` (the drops' per-reason ones
/// follow).
pub const EV_KIND_MAX: u32 = 4;

/// `EV_VERDICT_FORWARDED`.
pub const EV_VERDICT_FORWARDED: u8 = 1;
/// `EV_VERDICT_TRANSLATED`.
pub const EV_VERDICT_TRANSLATED: u8 = 2;
/// `EV_VERDICT_DROPPED`.
pub const EV_VERDICT_DROPPED: u8 = 3;
/// `EV_VERDICT_REJECTED`.
pub const EV_VERDICT_REJECTED: u8 = 4;
/// `EV_VERDICT_POLICY_DENIED`.
pub const EV_VERDICT_POLICY_DENIED: u8 = 5;

/// `DR_SLOTS`: `dp_drops` slots per observation point (reason codes at or above it count in
/// slot 0). The reason codes themselves are `dataplane_core::DropReason::code()`.
pub const DR_SLOTS: u32 = 16;

/// `PT_FROM_POD` .. `PT_FROM_HOST`: observation points, as (code, program, point) in code
/// order; `PT_MAX` is one more than the last.
pub const POINTS: [(u8, &str); 7] = [
    (1, "dp_from_pod"),
    (2, "dp_to_pod"),
    (3, "dp_from_uplink"),
    (4, "dp_to_uplink"),
    (5, "dp_xdp_uplink"),
    (6, "dp_sock"),
    (7, "dp_to_lo"),
];
/// `PT_MAX`.
pub const PT_MAX: u32 = 8;

/// `EV_DIR_ORIGINAL`.
pub const EV_DIR_ORIGINAL: u8 = 1;
/// `EV_DIR_REPLY`.
pub const EV_DIR_REPLY: u8 = 2;
/// `EV_F_TRANSLATED`: a flow event's `nat_*` fields hold the tuple after translation.
pub const EV_F_TRANSLATED: u8 = 1 << 0;

/// `EV_RING_BYTES`: `dp_events`' default size in bytes.
pub const EV_RING_BYTES: u32 = 1 << 20;
/// `EV_LIMIT_SLOTS`: `dp_ev_limit`'s size: a token bucket per event kind and, for drops, per
/// reason (index `EV_KIND_MAX` + the reason's `dp_drops` slot).
pub const EV_LIMIT_SLOTS: u32 = EV_KIND_MAX + DR_SLOTS;

/// `NAME_SERVICE`: a `dp_names` key naming a service-port id.
pub const NAME_SERVICE: u8 = 1;
/// `NAME_ENDPOINT`: a `dp_names` key naming a pod's address.
pub const NAME_ENDPOINT: u8 = 2;
/// `NAME_NODE`: the `dp_names` key of the node's name.
pub const NAME_NODE: u8 = 3;

/// `struct flow_event`: one record of the `dp_events` ring buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct FlowEventRecord {
    /// `CLOCK_MONOTONIC` ns.
    pub ktime_ns: u64,
    /// Events of this kind the CPU did not write since the last one (rate limit).
    pub suppressed: u64,
    /// The interface the program ran on.
    pub ifindex: u32,
    /// Service-port id (`SvcValue::id`), 0: none.
    pub svc_id: u32,
    /// `dp_backends` index of the backend chosen, 0: none.
    pub backend_id: u32,
    /// `EV_KIND_*`.
    pub kind: u8,
    /// `EV_VERDICT_*`.
    pub verdict: u8,
    /// `dataplane_core::DropReason::code()`, 0: none.
    pub reason: u8,
    /// `PT_*`.
    pub point: u8,
    /// `EV_DIR_*` (0: unknown).
    pub direction: u8,
    /// `AF_*`.
    pub family: u8,
    /// IP protocol.
    pub proto: u8,
    /// TCP flags byte.
    pub tcp_flags: u8,
    /// `EV_F_*`.
    pub flags: u8,
    /// Zero.
    pub pad: [u8; 3],
    /// Source as the packet arrived.
    pub saddr: Addr,
    /// Destination as the packet arrived.
    pub daddr: Addr,
    /// Source port as the packet arrived.
    pub sport: Be16,
    /// Destination port as the packet arrived.
    pub dport: Be16,
    /// Source port after translation.
    pub nat_sport: Be16,
    /// Destination port after translation.
    pub nat_dport: Be16,
    /// Source after translation.
    pub nat_saddr: Addr,
    /// Destination after translation.
    pub nat_daddr: Addr,
}

impl FlowEventRecord {
    /// The record at the start of `bytes` (a ring-buffer item), `None` when it is shorter.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let bytes = bytes.get(..std::mem::size_of::<Self>())?;
        // SAFETY: `bytes` holds size_of::<Self>() bytes, `Self` is `#[repr(C)]` plain data
        // for which every bit pattern is valid (see `pod!` below), and read_unaligned makes
        // no assumption about the ring buffer's alignment.
        Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Self>()) })
    }
}

/// `struct ev_limit`: one CPU's token bucket of one event kind (`dp_ev_limit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct EvLimit {
    /// `CLOCK_MONOTONIC` ns of the last top-up.
    pub last_topup: u64,
    /// Tokens left.
    pub tokens: u64,
    /// Events over the limit since the last one written.
    pub suppressed: u64,
    /// Events the ring buffer had no room for (a total, never reset).
    pub lost: u64,
}

/// `struct name_key`: what a `dp_names` entry names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(C)]
pub struct NameKey {
    /// `NAME_*`.
    pub kind: u8,
    /// `AF_*` for `NAME_ENDPOINT`, 0 otherwise.
    pub family: u8,
    /// Zero.
    pub pad: [u8; 2],
    /// Service-port id for `NAME_SERVICE`, 0 otherwise.
    pub id: u32,
    /// The pod's address for `NAME_ENDPOINT`, zero otherwise.
    pub addr: Addr,
}

impl NameKey {
    /// The key of service-port id `id`.
    pub fn service(id: u32) -> Self {
        Self {
            kind: NAME_SERVICE,
            id,
            ..Self::default()
        }
    }

    /// The key of the node's name.
    pub fn node() -> Self {
        Self {
            kind: NAME_NODE,
            ..Self::default()
        }
    }

    /// The key of a pod's address `ip`.
    pub fn endpoint(ip: IpAddr) -> Self {
        Self {
            kind: NAME_ENDPOINT,
            family: family_of(&ip),
            addr: Addr::new(ip),
            ..Self::default()
        }
    }
}

/// The most bytes of a name in `dp_names` (`name_value.name`).
pub const NAME_LEN: usize = 120;

/// `struct name_value`: `"namespace/name"`, NUL-padded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct NameValue {
    /// The name's bytes, NUL-padded.
    pub name: [u8; NAME_LEN],
}

impl NameValue {
    /// `namespace/name`; `None` when it is longer than [`NAME_LEN`] bytes (Kubernetes
    /// names can be: 63 bytes of namespace and 253 of name), which a cut would make another
    /// name.
    pub fn new(name: &dataplane_core::ObjectName) -> Option<Self> {
        Self::plain(&format!("{}/{}", name.namespace, name.name))
    }

    /// `name` as it is (the node's name); `None` when it is longer than [`NAME_LEN`] bytes.
    pub fn plain(name: &str) -> Option<Self> {
        let bytes = name.as_bytes();
        if bytes.len() > NAME_LEN {
            return None;
        }
        let mut out = [0u8; NAME_LEN];
        out[..bytes.len()].copy_from_slice(bytes);
        Some(Self { name: out })
    }

    /// The bytes up to the first NUL, `None` when they are not UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        let end = self.name.iter().position(|&b| b == 0).unwrap_or(NAME_LEN);
        std::str::from_utf8(&self.name[..end]).ok()
    }

    /// The name, `None` when it is not `namespace/name` in UTF-8.
    pub fn object_name(&self) -> Option<dataplane_core::ObjectName> {
        let (ns, name) = self.as_str()?.split_once('/')?;
        Some(dataplane_core::ObjectName::new(ns, name))
    }
}

/// `L2_ADDRS` (`enum l2_limit`): `dp_l2_addrs`' size.
pub const L2_ADDRS: u32 = 4096;

/// `struct l2_key`: an address the uplink answers ARP / neighbour solicitations for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(C)]
pub struct L2Key {
    /// The announced address.
    pub addr: Addr,
    /// The uplink's ifindex.
    pub ifindex: u32,
    /// `AF_INET` or `AF_INET6` (the datapath's values).
    pub family: u8,
    /// Zero.
    pub pad: [u8; 3],
}

/// `struct l2_value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct L2Value {
    /// ARP replies and neighbour advertisements sent for the address.
    pub responses: u64,
}

/// `struct l2_cfg`: `dp_l2_cfg[0]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct L2Cfg {
    /// The uplink's MAC.
    pub mac: [u8; 6],
    /// Zero.
    pub pad: [u8; 2],
    /// How old `liveness_ns` may be for the responder to answer (0: never).
    pub max_liveness_ns: u64,
    /// `CLOCK_MONOTONIC` of the last refresh, in ns.
    pub liveness_ns: u64,
}

macro_rules! pod {
    ($($t:ty),*) => {$(
        // SAFETY: `$t` is `#[repr(C)]`, made of integers and byte arrays only, with explicit
        // padding fields, so every bit pattern is a valid value and there are no hidden
        // uninitialised bytes.
        unsafe impl aya::Pod for $t {}
    )*};
}
pod!(
    Addr,
    SvcKey,
    SvcValue,
    SvcEntry,
    BackendValue,
    CtKey,
    CtEntry,
    AffinityKey,
    AffinityValue,
    SrcRangeData,
    DpConfig,
    EvRate,
    LocalKey,
    LocalValue,
    PolAddr,
    PolRuleData,
    PolBlockData,
    PolTier,
    PolCt,
    FlowEventRecord,
    EvLimit,
    NameKey,
    NameValue,
    HostData,
    HostCfg,
    L2Key,
    L2Value,
    L2Cfg
);

// Compile-time sizes; the BTF test checks offsets as well.
const _: () = assert!(std::mem::size_of::<SvcKey>() == 24);
const _: () = assert!(std::mem::size_of::<SvcValue>() == 20);
const _: () = assert!(std::mem::size_of::<SvcEntry>() == 20 + 4 * SVC_INLINE_SLOTS);
const _: () = assert!(std::mem::size_of::<BackendValue>() == 20);
const _: () = assert!(std::mem::size_of::<CtKey>() == 40);
const _: () = assert!(std::mem::size_of::<CtEntry>() == 64);
const _: () = assert!(std::mem::size_of::<AffinityKey>() == 24);
const _: () = assert!(std::mem::size_of::<AffinityValue>() == 16);
const _: () = assert!(std::mem::size_of::<SrcRangeKey>() == 24);
const _: () = assert!(std::mem::size_of::<CidrKey>() == 20);
const _: () = assert!(std::mem::size_of::<DpConfig>() == 60);
const _: () = assert!(std::mem::size_of::<EvRate>() == 8);
const _: () = assert!(std::mem::size_of::<LocalKey>() == 20);
const _: () = assert!(std::mem::size_of::<LocalValue>() == 4);
const _: () = assert!(std::mem::size_of::<PolAddr>() == 136);
const _: () = assert!(std::mem::size_of::<PolRuleKey>() == 16);
const _: () = assert!(std::mem::size_of::<PolBlockKey>() == 28);
const _: () = assert!(std::mem::size_of::<PolCt>() == 16);
const _: () = assert!(std::mem::size_of::<PolTier>() == 12);
const _: () = assert!(std::mem::size_of::<FlowEventRecord>() == 112);
const _: () = assert!(std::mem::size_of::<EvLimit>() == 32);
const _: () = assert!(std::mem::size_of::<NameKey>() == 24);
const _: () = assert!(std::mem::size_of::<NameValue>() == 120);
const _: () = assert!(std::mem::size_of::<HostKey>() == 24);
const _: () = assert!(std::mem::size_of::<HostCfg>() == 24);
const _: () = assert!(std::mem::size_of::<L2Key>() == 24);
const _: () = assert!(std::mem::size_of::<L2Value>() == 8);
const _: () = assert!(std::mem::size_of::<L2Cfg>() == 24);
