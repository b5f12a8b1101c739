//! The Rust mirror of `bpf/lib/maps.h` matches the compiled objects' BTF: struct sizes and
//! every field offset, and the value of every constant (the family, scope, flag and counter
//! enums; `maps.h` declares them as enums so that BTF carries them). Needs no privileges.

use std::collections::{BTreeMap, BTreeSet};
use std::mem::{offset_of, size_of};

use dataplane_core::DropReason;

use dataplane_ebpf::maps::{
    AffinityKey, AffinityValue, BackendValue, CidrKey, CtEntry, CtKey, DpConfig, EvLimit, EvRate,
    FlowEventRecord, HostCfg, HostData, HostKey, L2Cfg, L2Key, L2Value, LocalKey, LocalValue,
    NameKey, NameValue, PolAddr, PolBlockData, PolBlockKey, PolCt, PolRuleData, PolRuleKey,
    PolTier, SrcRangeKey, SvcEntry, SvcKey, SvcValue,
};

/// struct name -> (size, [(field, byte offset)]).
type Layouts = BTreeMap<String, (u32, Vec<(String, u32)>)>;

/// enum name -> [(enumerator, value)], in declaration order.
type Enums = BTreeMap<String, Vec<(String, u64)>>;

/// Struct layouts and enums read from raw BTF.
fn btf_types(btf: &[u8]) -> (Layouts, Enums) {
    let u32_at = |o: usize| u32::from_le_bytes(btf[o..o + 4].try_into().unwrap());
    assert_eq!(u16::from_le_bytes([btf[0], btf[1]]), 0xeb9f, "BTF magic");
    let hdr_len = u32_at(4) as usize;
    let type_off = hdr_len + u32_at(8) as usize;
    let type_len = u32_at(12) as usize;
    let str_off = hdr_len + u32_at(16) as usize;
    let name = |off: u32| {
        let start = str_off + off as usize;
        let end = btf[start..].iter().position(|&b| b == 0).unwrap() + start;
        String::from_utf8_lossy(&btf[start..end]).into_owned()
    };
    let mut out = BTreeMap::new();
    let mut enums = BTreeMap::new();
    let mut pos = type_off;
    while pos < type_off + type_len {
        let name_off = u32_at(pos);
        let info = u32_at(pos + 4);
        let size = u32_at(pos + 8);
        let vlen = (info & 0xffff) as usize;
        let kind = (info >> 24) & 0x1f;
        let kind_flag = info >> 31 == 1;
        pos += 12;
        let extra = match kind {
            1 | 14 | 17 => 4,
            3 => 12,
            4 | 5 | 15 | 19 => vlen * 12,
            6 | 13 => vlen * 8,
            _ => 0,
        };
        if kind == 4 && name_off != 0 {
            let fields = (0..vlen)
                .map(|i| {
                    let m = pos + i * 12;
                    let bits = u32_at(m + 8);
                    let bits = if kind_flag { bits & 0x00ff_ffff } else { bits };
                    (name(u32_at(m)), bits / 8)
                })
                .collect();
            out.insert(name(name_off), (size, fields));
        }
        // BTF_KIND_ENUM: {name, 32-bit value}; BTF_KIND_ENUM64: {name, low 32, high 32}.
        // Our enums have no negative values.
        if (kind == 6 || kind == 19) && name_off != 0 {
            let entry = if kind == 6 { 8 } else { 12 };
            let values = (0..vlen)
                .map(|i| {
                    let m = pos + i * entry;
                    let low = u64::from(u32_at(m + 4));
                    let high = if kind == 19 {
                        u64::from(u32_at(m + 8))
                    } else {
                        0
                    };
                    (name(u32_at(m)), high << 32 | low)
                })
                .collect();
            enums.insert(name(name_off), values);
        }
        pos += extra;
    }
    (out, enums)
}

fn types_of(object: &[u8]) -> (Layouts, Enums) {
    let obj = aya_obj::Object::parse(object).expect("object parses");
    let btf = obj.btf.expect("object carries BTF");
    btf_types(&btf.to_bytes())
}

fn structs_of(object: &[u8]) -> Layouts {
    types_of(object).0
}

/// The objects the library embeds (each includes `maps.h`).
fn objects() -> [&'static [u8]; 4] {
    [
        dataplane_ebpf::tc_pod_object(),
        dataplane_ebpf::tc_host_object(),
        dataplane_ebpf::xdp_uplink_object(),
        dataplane_ebpf::sock_object(),
    ]
}

macro_rules! layout {
    ($t:ty, $c:literal, [$($f:ident => $cf:literal),* $(,)?]) => {
        ($c, size_of::<$t>() as u32, vec![$(($cf, offset_of!($t, $f) as u32)),*])
    };
}

#[test]
#[allow(clippy::too_many_lines)] // one table: every mirrored struct, then the split LPM keys
fn map_layouts_match_btf() {
    #[allow(clippy::type_complexity)]
    let expected: Vec<(&str, u32, Vec<(&str, u32)>)> = vec![
        layout!(SvcKey, "svc_key", [addr => "addr", port => "port", proto => "proto", scope => "scope", family => "family", pad => "pad"]),
        layout!(SvcValue, "svc_value", [id => "id", slot_base => "slot_base", slot_count => "slot_count", affinity_timeout => "affinity_timeout", flags => "flags", pad => "pad"]),
        layout!(SvcEntry, "svc_entry", [v => "v", slots => "slots"]),
        layout!(BackendValue, "backend", [addr => "addr", port => "port", family => "family", flags => "flags"]),
        layout!(CtKey, "ct_key", [saddr => "saddr", daddr => "daddr", sport => "sport", dport => "dport", proto => "proto", family => "family", pad0 => "pad0", pad => "pad"]),
        layout!(CtEntry, "ct_entry", [nat_addr => "nat_addr", snat_addr => "snat_addr", nat_port => "nat_port", snat_port => "snat_port", backend_id => "backend_id", svc_id => "svc_id", flags => "flags", tcp_state => "tcp_state", pad => "pad", created_ns => "created_ns", last_seen_ns => "last_seen_ns"]),
        layout!(AffinityKey, "affinity_key", [svc_id => "svc_id", family => "family", pad => "pad", addr => "addr"]),
        layout!(AffinityValue, "affinity_value", [last_seen_ns => "last_seen_ns", backend_id => "backend_id", slot => "slot"]),
        layout!(CidrKey, "cidr_key", [prefixlen => "prefixlen", addr => "addr"]),
        layout!(DpConfig, "dp_config", [node_v4 => "node_v4", node_v6 => "node_v6", flags => "flags", mtu => "mtu", ev_limits => "ev_limits"]),
        layout!(EvRate, "ev_rate", [rate => "rate", burst => "burst"]),
        layout!(LocalKey, "local_key", [addr => "addr", family => "family", pad => "pad"]),
        layout!(LocalValue, "local_value", [ifindex => "ifindex"]),
        layout!(PolAddr, "pol_addr", [ep_id => "ep_id", flags => "flags", nsets => "nsets", pad => "pad", sets => "sets"]),
        layout!(PolCt, "pol_ct", [last_seen_ns => "last_seen_ns", flags => "flags", tcp_state => "tcp_state", pad => "pad"]),
        layout!(PolTier, "pol_tier", [cluster_order => "cluster_order", baseline_order => "baseline_order", cluster => "cluster", baseline => "baseline", pad => "pad"]),
        layout!(FlowEventRecord, "flow_event", [ktime_ns => "ktime_ns", suppressed => "suppressed", ifindex => "ifindex", svc_id => "svc_id", backend_id => "backend_id", kind => "kind", verdict => "verdict", reason => "reason", point => "point", direction => "direction", family => "family", proto => "proto", tcp_flags => "tcp_flags", flags => "flags", pad => "pad", saddr => "saddr", daddr => "daddr", sport => "sport", dport => "dport", nat_sport => "nat_sport", nat_dport => "nat_dport", nat_saddr => "nat_saddr", nat_daddr => "nat_daddr"]),
        layout!(EvLimit, "ev_limit", [last_topup => "last_topup", tokens => "tokens", suppressed => "suppressed", lost => "lost"]),
        layout!(NameKey, "name_key", [kind => "kind", family => "family", pad => "pad", id => "id", addr => "addr"]),
        layout!(NameValue, "name_value", [name => "name"]),
        layout!(HostCfg, "host_cfg", [gen => "gen", flags => "flags", fwd_in => "fwd_in", fwd_out => "fwd_out"]),
        layout!(L2Key, "l2_key", [addr => "addr", ifindex => "ifindex", family => "family", pad => "pad"]),
        layout!(L2Value, "l2_value", [responses => "responses"]),
        layout!(L2Cfg, "l2_cfg", [mac => "mac", pad => "pad", max_liveness_ns => "max_liveness_ns", liveness_ns => "liveness_ns"]),
    ];
    for object in objects() {
        let btf = structs_of(object);
        for (name, size, fields) in &expected {
            let (btf_size, btf_fields) = btf
                .get(*name)
                .unwrap_or_else(|| panic!("struct {name} missing from BTF"));
            assert_eq!(size, btf_size, "size of struct {name}");
            let btf_fields: Vec<(&str, u32)> =
                btf_fields.iter().map(|(n, o)| (n.as_str(), *o)).collect();
            assert_eq!(
                fields, &btf_fields,
                "fields (name, offset) of struct {name}"
            );
        }
        // srcrange_key: the Rust side splits it into prefixlen + data (aya's LPM Key).
        let (size, fields) = &btf["srcrange_key"];
        assert_eq!(*size, size_of::<SrcRangeKey>() as u32);
        let data = offset_of!(SrcRangeKey, data) as u32;
        assert_eq!(
            fields,
            &vec![
                (
                    "prefixlen".to_owned(),
                    offset_of!(SrcRangeKey, prefixlen) as u32
                ),
                ("svc_id".to_owned(), data),
                ("addr".to_owned(), data + 4),
            ]
        );
    }
    // The policy LPM keys, split the same way.
    for object in objects() {
        let btf = structs_of(object);
        let (size, fields) = &btf["pol_rule_key"];
        assert_eq!(*size, size_of::<PolRuleKey>() as u32);
        let data = offset_of!(PolRuleKey, data) as u32;
        let d = |f: usize| data + f as u32;
        assert_eq!(
            fields,
            &vec![
                (
                    "prefixlen".to_owned(),
                    offset_of!(PolRuleKey, prefixlen) as u32
                ),
                ("ep_id".to_owned(), d(offset_of!(PolRuleData, ep_id))),
                ("peer".to_owned(), d(offset_of!(PolRuleData, peer))),
                ("dir".to_owned(), d(offset_of!(PolRuleData, dir))),
                ("proto".to_owned(), d(offset_of!(PolRuleData, proto))),
                ("port".to_owned(), d(offset_of!(PolRuleData, port))),
            ]
        );
        let (size, fields) = &btf["pol_block_key"];
        assert_eq!(*size, size_of::<PolBlockKey>() as u32);
        let data = offset_of!(PolBlockKey, data) as u32;
        let d = |f: usize| data + f as u32;
        assert_eq!(
            fields,
            &vec![
                (
                    "prefixlen".to_owned(),
                    offset_of!(PolBlockKey, prefixlen) as u32
                ),
                ("ep_id".to_owned(), d(offset_of!(PolBlockData, ep_id))),
                ("dir".to_owned(), d(offset_of!(PolBlockData, dir))),
                ("family".to_owned(), d(offset_of!(PolBlockData, family))),
                ("pad".to_owned(), d(offset_of!(PolBlockData, pad))),
                ("addr".to_owned(), d(offset_of!(PolBlockData, addr))),
            ]
        );
    }
    let sock = structs_of(dataplane_ebpf::sock_object());
    assert_eq!(
        sock["sock_rev_key"].0 as usize,
        dataplane_ebpf::maps::SOCK_REV_KEY_SIZE
    );
    assert_eq!(
        sock["sock_rev_value"].0 as usize,
        dataplane_ebpf::maps::SOCK_REV_VALUE_SIZE
    );
}

/// The host policy LPM key, split like the others into prefixlen + data (aya's LPM Key).
#[test]
fn host_key_layout_matches_btf() {
    for object in objects() {
        let btf = structs_of(object);
        let (size, fields) = &btf["host_key"];
        assert_eq!(*size, size_of::<HostKey>() as u32);
        let data = offset_of!(HostKey, data) as u32;
        let d = |f: usize| data + f as u32;
        assert_eq!(
            fields,
            &vec![
                (
                    "prefixlen".to_owned(),
                    offset_of!(HostKey, prefixlen) as u32
                ),
                ("gen".to_owned(), d(offset_of!(HostData, gen))),
                ("kind".to_owned(), d(offset_of!(HostData, kind))),
                ("set".to_owned(), d(offset_of!(HostData, set))),
                ("sub".to_owned(), d(offset_of!(HostData, sub))),
                ("data".to_owned(), d(offset_of!(HostData, data))),
            ]
        );
    }
}

/// The index of a counter in `STAT_NAMES`.
fn stat(name: &str) -> u64 {
    let index = dataplane_ebpf::maps::STAT_NAMES
        .iter()
        .position(|n| *n == name)
        .unwrap_or_else(|| panic!("STAT_NAMES has no {name:?}"));
    index as u64
}

/// The code of the observation point of `program` in `POINTS`.
fn point(program: &str) -> u8 {
    dataplane_ebpf::maps::POINTS
        .iter()
        .find(|(_, p)| *p == program)
        .unwrap_or_else(|| panic!("POINTS has no {program:?}"))
        .0
}

/// Every constant of `src/maps.rs` that mirrors a `maps.h` enumerator, as (C enum, C
/// enumerator, the Rust value). An enumerator may appear more than once (a counter's index in
/// `STAT_NAMES` and its own constant).
#[allow(clippy::too_many_lines)] // one table: every mirrored enum
fn mirrored_constants() -> Vec<(&'static str, &'static str, u64)> {
    use dataplane_ebpf::maps as m;
    macro_rules! mirror {
        ($($enum:literal { $($c:literal => $rust:expr),* $(,)? })*) => {
            vec![$($(($enum, $c, u64::try_from($rust).expect("fits in u64"))),*),*]
        };
    }
    mirror! {
        "dp_family" { "DP_AF_INET" => m::AF_INET, "DP_AF_INET6" => m::AF_INET6 }
        "svc_scope" {
            "SVC_SCOPE_INTERNAL" => m::SCOPE_INTERNAL,
            "SVC_SCOPE_EXTERNAL" => m::SCOPE_EXTERNAL,
            "SVC_SCOPE_EXTERNAL_INSIDE" => m::SCOPE_EXTERNAL_INSIDE,
            "SVC_SCOPE_RETIRED_INTERNAL_OUTSIDE" => m::SCOPE_RETIRED_INTERNAL_OUTSIDE,
        }
        "svc_flag" {
            "SVC_F_MAGLEV" => m::SVC_F_MAGLEV,
            "SVC_F_AFFINITY" => m::SVC_F_AFFINITY,
            "SVC_F_NO_LOCAL" => m::SVC_F_NO_LOCAL,
            "SVC_F_SRC_RANGES" => m::SVC_F_SRC_RANGES,
            "SVC_F_SNAT" => m::SVC_F_SNAT,
            "SVC_F_WILDCARD" => m::SVC_F_WILDCARD,
            "SVC_F_DSR" => m::SVC_F_DSR,
        }
        "backend_flag" { "BE_F_LOCAL" => m::BE_F_LOCAL, "BE_F_TERMINATING" => m::BE_F_TERMINATING }
        "ct_flag" {
            "CT_F_SNAT" => m::CT_F_SNAT,
            "CT_F_HAIRPIN" => m::CT_F_HAIRPIN,
            "CT_F_EXTERNAL" => m::CT_F_EXTERNAL,
            "CT_F_MASQ" => m::CT_F_MASQ,
            "CT_F_INBOUND" => m::CT_F_INBOUND,
            "CT_F_DSR" => m::CT_F_DSR,
            "CT_F_REV" => m::CT_F_REV,
            "CT_F_LOOPBACK" => m::CT_F_LOOPBACK,
        }
        "ct_tcp_state" {
            "CT_TCP_SYN" => m::CT_TCP_SYN,
            "CT_TCP_REPLY" => m::CT_TCP_REPLY,
            "CT_TCP_FIN_FWD" => m::CT_TCP_FIN_FWD,
            "CT_TCP_FIN_REV" => m::CT_TCP_FIN_REV,
            "CT_TCP_RST" => m::CT_TCP_RST,
            "CT_SCTP_ESTAB" => m::CT_SCTP_ESTAB,
        }
        "config_flag" {
            "CFG_F_HAS_V4" => m::CFG_F_HAS_V4,
            "CFG_F_HAS_V6" => m::CFG_F_HAS_V6,
            "CFG_F_MASQUERADE" => m::CFG_F_MASQUERADE,
            "CFG_F_MASQ_ALL" => m::CFG_F_MASQ_ALL,
            "CFG_F_HOST_ROUTING" => m::CFG_F_HOST_ROUTING,
            "CFG_F_CLUSTER_V4" => m::CFG_F_CLUSTER_V4,
            "CFG_F_CLUSTER_V6" => m::CFG_F_CLUSTER_V6,
            "CFG_F_POLICY" => m::CFG_F_POLICY,
            "CFG_F_EV_NEW_CONN" => m::CFG_F_EV_NEW_CONN,
            "CFG_F_EV_POLICY" => m::CFG_F_EV_POLICY,
        }
        "cidr_flag" {
            "CIDR_F_CLUSTER" => m::CIDR_F_CLUSTER,
            "CIDR_F_POD" => m::CIDR_F_POD,
            "CIDR_F_NO_MASQ" => m::CIDR_F_NO_MASQ,
            "CIDR_F_NODE" => m::CIDR_F_NODE,
            "CIDR_F_SERVICE" => m::CIDR_F_SERVICE,
        }
        "dp_stat" {
            "STAT_TRANSLATED" => stat("translated"),
            "STAT_REV_TRANSLATED" => stat("reverse_translated"),
            "STAT_DROPPED" => stat("dropped"),
            "STAT_REJECTED" => stat("rejected"),
            "STAT_CT_CREATED" => stat("ct_created"),
            "STAT_CT_FULL" => stat("ct_full"),
            "STAT_SNAT_EXHAUSTED" => stat("snat_exhausted"),
            "STAT_MASQUERADED" => stat("masqueraded"),
            "STAT_DSR_FORWARDED" => stat("dsr_forwarded"),
            "STAT_DSR_REPLIES" => stat("dsr_replies"),
            "STAT_FRAG_NEEDED" => stat("frag_needed"),
            "STAT_XDP_FORWARDED" => stat("xdp_forwarded"),
            "STAT_SOCK_TRANSLATED" => stat("socket_translated"),
            "STAT_HOST_ROUTED" => stat("host_routed"),
            "STAT_UNALLOCATED" => stat("unallocated_dropped"),
            "STAT_POLICY_DENIED" => stat("policy_denied"),
            "STAT_POLICY_DENIED" => m::STAT_POLICY_DENIED,
            "STAT_SPOOFED" => stat("spoofed_dropped"),
            "STAT_CT_LOST" => stat("ct_lost"),
            "STAT_MAX" => m::STAT_NAMES.len(),
            "STAT_TRANSLATED" => m::STAT_TRANSLATED,
            "STAT_DROPPED" => m::STAT_DROPPED,
            "STAT_REJECTED" => m::STAT_REJECTED,
        }
        "pol_flag" {
            "POL_F_ISO_INGRESS" => m::POL_F_ISO_INGRESS,
            "POL_F_ISO_EGRESS" => m::POL_F_ISO_EGRESS,
            "POL_F_NODE" => m::POL_F_NODE,
            "POL_F_TIERS_INGRESS" => m::POL_F_TIERS_INGRESS,
            "POL_F_TIERS_EGRESS" => m::POL_F_TIERS_EGRESS,
        }
        "pol_dir" {
            "POL_DIR_INGRESS" => m::POL_DIR_INGRESS,
            "POL_DIR_EGRESS" => m::POL_DIR_EGRESS,
            "POL_DIR_TIERS" => m::POL_DIR_TIERS,
        }
        "pol_tier_action" {
            "POL_TIER_NONE" => m::POL_TIER_NONE,
            "POL_TIER_ALLOW" => m::POL_TIER_ALLOW,
            "POL_TIER_DENY" => m::POL_TIER_DENY,
            "POL_TIER_PASS" => m::POL_TIER_PASS,
        }
        "pol_peer" { "POL_PEER_ANY" => m::POL_PEER_ANY, "POL_PEER_BLOCK" => m::POL_PEER_BLOCK }
        "pol_limit" { "POL_SETS_MAX" => m::POL_SETS_MAX }
        "svc_limit" { "SVC_INLINE_SLOTS" => m::SVC_INLINE_SLOTS }
        "pol_ct_flag" {
            "POLCT_EGRESS" => m::POLCT_EGRESS,
            "POLCT_INGRESS" => m::POLCT_INGRESS,
            "POLCT_REPLY_EGRESS" => m::POLCT_REPLY_EGRESS,
            "POLCT_REPLY_INGRESS" => m::POLCT_REPLY_INGRESS,
        }
        "ev_kind" {
            "EV_KIND_DROP" => m::EV_KIND_DROP,
            "EV_KIND_NEW_CONN" => m::EV_KIND_NEW_CONN,
            "EV_KIND_POLICY" => m::EV_KIND_POLICY,
            "EV_KIND_MAX" => m::EV_KIND_MAX,
        }
        "ev_verdict" {
            "EV_VERDICT_FORWARDED" => m::EV_VERDICT_FORWARDED,
            "EV_VERDICT_TRANSLATED" => m::EV_VERDICT_TRANSLATED,
            "EV_VERDICT_DROPPED" => m::EV_VERDICT_DROPPED,
            "EV_VERDICT_REJECTED" => m::EV_VERDICT_REJECTED,
            "EV_VERDICT_POLICY_DENIED" => m::EV_VERDICT_POLICY_DENIED,
        }
        "drop_reason" {
            "DR_NONE" => 0u8,
            "DR_NO_BACKEND" => DropReason::NoBackend.code(),
            "DR_SOURCE_RANGE" => DropReason::SourceRange.code(),
            "DR_POLICY" => DropReason::Policy.code(),
            "DR_CONNTRACK_FULL" => DropReason::ConntrackFull.code(),
            "DR_MAP_FULL" => DropReason::MapFull.code(),
            "DR_SNAT_EXHAUSTED" => DropReason::SnatExhausted.code(),
            "DR_INVALID" => DropReason::InvalidPacket.code(),
            "DR_MTU" => DropReason::Mtu.code(),
            "DR_UNSUPPORTED_PROTOCOL" => DropReason::UnsupportedProtocol.code(),
            "DR_UNALLOCATED" => DropReason::Unallocated.code(),
            "DR_SPOOFED" => DropReason::Spoofed.code(),
            "DR_FRAGMENT" => DropReason::Fragment.code(),
            "DR_SLOTS" => m::DR_SLOTS,
            "DR_UNKNOWN" => DropReason::Unknown.code(),
        }
        "ev_point" {
            "PT_FROM_POD" => point("dp_from_pod"),
            "PT_TO_POD" => point("dp_to_pod"),
            "PT_FROM_UPLINK" => point("dp_from_uplink"),
            "PT_TO_UPLINK" => point("dp_to_uplink"),
            "PT_XDP" => point("dp_xdp_uplink"),
            "PT_SOCKET" => point("dp_sock"),
            "PT_FROM_HOST" => point("dp_to_lo"),
            "PT_MAX" => m::PT_MAX,
        }
        "ev_direction" {
            "EV_DIR_UNKNOWN" => 0u8,
            "EV_DIR_ORIGINAL" => m::EV_DIR_ORIGINAL,
            "EV_DIR_REPLY" => m::EV_DIR_REPLY,
        }
        "ev_flag" { "EV_F_TRANSLATED" => m::EV_F_TRANSLATED }
        "ev_limit_const" {
            "EV_RING_BYTES" => m::EV_RING_BYTES,
            "EV_LIMIT_SLOTS" => m::EV_LIMIT_SLOTS,
        }
        "name_kind" {
            "NAME_SERVICE" => m::NAME_SERVICE,
            "NAME_ENDPOINT" => m::NAME_ENDPOINT,
            "NAME_NODE" => m::NAME_NODE,
        }
        "host_set" {
            "HS_UNTRACKED_IN" => m::HS_UNTRACKED_IN,
            "HS_UNTRACKED_OUT" => m::HS_UNTRACKED_OUT,
            "HS_PREDNAT_IN" => m::HS_PREDNAT_IN,
            "HS_NORMAL_IN" => m::HS_NORMAL_IN,
            "HS_NORMAL_OUT" => m::HS_NORMAL_OUT,
            "HS_SETS" => m::HS_SETS,
            "HS_RULES" => m::HS_RULES,
            "HS_GEN_RULES" => m::HS_GEN_RULES,
            "HS_RULE_SLOTS" => m::HS_RULE_SLOTS,
        }
        "host_kind" {
            "HK_SRC_NET" => m::HK_SRC_NET,
            "HK_DST_NET" => m::HK_DST_NET,
            "HK_SRC_PORT" => m::HK_SRC_PORT,
            "HK_DST_PORT" => m::HK_DST_PORT,
            "HK_FAILSAFE" => m::HK_FAILSAFE,
        }
        "host_action" {
            "HA_NONE" => m::HA_NONE,
            "HA_ALLOW" => m::HA_ALLOW,
            "HA_DENY" => m::HA_DENY,
        }
        "host_cfg_flag" {
            "HC_F_ON" => m::HC_F_ON,
            "HC_F_NORMAL" => m::HC_F_NORMAL,
            "HC_F_DEF_IN" => m::HC_F_DEF_IN,
            "HC_F_DEF_IN_FWD" => m::HC_F_DEF_IN_FWD,
            "HC_F_DEF_OUT" => m::HC_F_DEF_OUT,
            "HC_F_DEF_OUT_FWD" => m::HC_F_DEF_OUT_FWD,
            "HC_F_SRC_ONLY_IN" => m::HC_F_SRC_ONLY_IN,
        }
        "l2_limit" { "L2_ADDRS" => m::L2_ADDRS }
    }
}

/// Each mirrored constant equals its enumerator in every object's BTF, and every enumerator
/// of the mirrored enums has a mirror (a constant added in C fails here until Rust has it).
#[test]
fn constants_match_btf() {
    let mirrored = mirrored_constants();
    let names: BTreeSet<&str> = mirrored.iter().map(|(e, _, _)| *e).collect();
    for object in objects() {
        let (_, enums) = types_of(object);
        for name in &names {
            let btf = enums
                .get(*name)
                .unwrap_or_else(|| panic!("enum {name} missing from BTF"));
            let btf: BTreeMap<&str, u64> = btf.iter().map(|(n, v)| (n.as_str(), *v)).collect();
            let mut unmirrored: BTreeSet<&str> = btf.keys().copied().collect();
            for (_, c, rust) in mirrored.iter().filter(|(e, _, _)| e == name) {
                let value = btf
                    .get(c)
                    .unwrap_or_else(|| panic!("enum {name} has no {c} in BTF"));
                assert_eq!(*rust, *value, "the Rust mirror of {c} (enum {name})");
                unmirrored.remove(c);
            }
            assert!(
                unmirrored.is_empty(),
                "enum {name}: {unmirrored:?} have no Rust mirror in src/maps.rs"
            );
        }
    }
}
