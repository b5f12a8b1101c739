//! The Rust mirror of `bpf/lib/maps.h` matches the compiled objects' BTF: struct sizes and
//! every field offset. Needs no privileges.

use std::collections::BTreeMap;
use std::mem::{offset_of, size_of};

use dataplane_ebpf::maps::{
    AffinityKey, AffinityValue, BackendValue, CidrKey, CtEntry, CtKey, DpConfig, LocalKey,
    LocalValue, SrcRangeKey, SvcKey, SvcValue,
};

/// struct name -> (size, [(field, byte offset)]).
type Layouts = BTreeMap<String, (u32, Vec<(String, u32)>)>;

/// Struct layouts read from raw BTF.
fn btf_structs(btf: &[u8]) -> Layouts {
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
        pos += extra;
    }
    out
}

fn structs_of(object: &[u8]) -> Layouts {
    let obj = aya_obj::Object::parse(object).expect("object parses");
    let btf = obj.btf.expect("object carries BTF");
    btf_structs(&btf.to_bytes())
}

macro_rules! layout {
    ($t:ty, $c:literal, [$($f:ident => $cf:literal),* $(,)?]) => {
        ($c, size_of::<$t>() as u32, vec![$(($cf, offset_of!($t, $f) as u32)),*])
    };
}

#[test]
fn map_layouts_match_btf() {
    #[allow(clippy::type_complexity)]
    let expected: Vec<(&str, u32, Vec<(&str, u32)>)> = vec![
        layout!(SvcKey, "svc_key", [addr => "addr", port => "port", proto => "proto", scope => "scope", family => "family", pad => "pad"]),
        layout!(SvcValue, "svc_value", [id => "id", slot_base => "slot_base", slot_count => "slot_count", affinity_timeout => "affinity_timeout", flags => "flags", pad => "pad", rev => "rev"]),
        layout!(BackendValue, "backend", [addr => "addr", port => "port", family => "family", flags => "flags"]),
        layout!(CtKey, "ct_key", [saddr => "saddr", daddr => "daddr", sport => "sport", dport => "dport", proto => "proto", family => "family", pad0 => "pad0", pad => "pad"]),
        layout!(CtEntry, "ct_entry", [nat_addr => "nat_addr", snat_addr => "snat_addr", nat_port => "nat_port", snat_port => "snat_port", backend_id => "backend_id", svc_id => "svc_id", flags => "flags", tcp_state => "tcp_state", pad => "pad", created_ns => "created_ns", last_seen_ns => "last_seen_ns"]),
        layout!(AffinityKey, "affinity_key", [svc_id => "svc_id", family => "family", pad => "pad", addr => "addr"]),
        layout!(AffinityValue, "affinity_value", [last_seen_ns => "last_seen_ns", backend_id => "backend_id", pad => "pad"]),
        layout!(CidrKey, "cidr_key", [prefixlen => "prefixlen", addr => "addr"]),
        layout!(DpConfig, "dp_config", [node_v4 => "node_v4", node_v6 => "node_v6", flags => "flags", mtu => "mtu"]),
        layout!(LocalKey, "local_key", [addr => "addr", family => "family", pad => "pad"]),
        layout!(LocalValue, "local_value", [ifindex => "ifindex"]),
    ];
    for object in [
        dataplane_ebpf::tc_pod_object(),
        dataplane_ebpf::tc_host_object(),
        dataplane_ebpf::xdp_uplink_object(),
        dataplane_ebpf::sock_object(),
    ] {
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
