//! Golden tests of the pure nftables renderer.

mod common;

use dataplane_core::{diff, Backend, DesiredState};
use std::net::SocketAddr;

use dataplane_iptables::nft::render::{
    compile, compile_patch, compile_state, render_full, render_patch, Element, NftRuleset,
};
use dataplane_iptables::plan::{changed_hairpin, changed_ports, node_plan, plan};

/// The partial-sync text from `old` (compiled as `rs`) to `new`, as the backend renders it.
fn delta(rs: &NftRuleset, old: &DesiredState, new: &DesiredState) -> (String, NftRuleset) {
    let changes = diff(old, new);
    let patch = compile_patch(
        rs,
        &node_plan(&new.node),
        changed_ports(new, &changes)
            .iter()
            .map(|(n, p)| (n, p.as_deref())),
        &changed_hairpin(&new.node, &changes),
    )
    .unwrap();
    let text = render_patch(rs, &patch);
    let mut after = rs.clone();
    after.apply_patch(patch);
    (text, after)
}

#[test]
fn full_ruleset_golden() {
    let state = common::showcase();
    let rs = compile(&plan(&state), "dataplane").unwrap();
    insta::assert_snapshot!(render_full(&rs));
}

/// The full sync compiles service by service (dropping each plan): the same ruleset as
/// compiling the whole plan, slot-group ids included, whatever the order of the services.
#[test]
fn compiling_service_by_service_gives_the_same_ruleset() {
    let mut state = common::showcase();
    state.services.reverse();
    assert_eq!(
        compile_state(&state, "dataplane").unwrap(),
        compile(&plan(&state), "dataplane").unwrap()
    );
    let mut big = dataplane_core::synthetic::state(300, 4);
    big.services.reverse();
    assert_eq!(
        compile_state(&big, "dataplane").unwrap(),
        compile(&plan(&big), "dataplane").unwrap()
    );
}

#[test]
fn endpoint_change_touches_only_that_service() {
    let old = common::showcase();
    let mut new = old.clone();
    new.services[0]
        .backends
        .push(Backend::new(common::ip("10.244.2.10")));
    let rs = compile(&plan(&old), "dataplane").unwrap();
    let (text, after) = delta(&rs, &old, &new);
    assert!(!text.contains("shop") && !text.contains("sticky"), "{text}");
    insta::assert_snapshot!(text);
    // The patched ruleset equals a fresh compile of the new state.
    let fresh = compile(&plan(&new), "dataplane").unwrap();
    assert_eq!(render_full(&after), render_full(&fresh));
}

#[test]
fn unchanged_state_renders_an_empty_delta() {
    let state = common::showcase();
    let rs = compile(&plan(&state), "dataplane").unwrap();
    assert_eq!(delta(&rs, &state, &state).0, "");
}

#[test]
fn removed_service_is_deleted_and_its_ids_freed() {
    let old = common::showcase();
    let mut new = old.clone();
    let removed = new.services.remove(0);
    let rs = compile(&plan(&old), "dataplane").unwrap();
    let (text, after) = delta(&rs, &old, &new);
    assert!(text.contains(&format!(
        "delete chain inet dataplane svc-v4-{}/tcp/80",
        removed.name
    )));
    assert!(after.taken.len() < rs.taken.len());
    insta::assert_snapshot!(text);
}

#[test]
fn added_service_takes_a_free_group_id() {
    let old = common::showcase();
    let mut new = old.clone();
    let mut extra = new.services[0].clone();
    extra.name.name = "web2".to_owned();
    extra.cluster_ips = vec![common::ip("10.96.0.99")];
    new.services.push(extra);
    let rs = compile(&plan(&old), "dataplane").unwrap();
    let (text, after) = delta(&rs, &old, &new);
    assert!(
        text.contains("add chain inet dataplane svc-v4-default/web2/tcp/80"),
        "{text}"
    );
    let ids: Vec<u32> = after
        .services
        .values()
        .flat_map(|s| s.ids.iter().map(|(_, id)| *id))
        .collect();
    let unique: std::collections::BTreeSet<u32> = ids.iter().copied().collect();
    assert_eq!(ids.len(), unique.len(), "group ids collide: {ids:?}");
}

#[test]
fn maglev_uses_a_fixed_hash_and_core_table() {
    use dataplane_core::{maglev_table, BackendSelection, MaglevBackend};
    use dataplane_iptables::nft::render::MAGLEV_SLOTS;
    let mut state = common::showcase();
    state.services[0].backend_selection = BackendSelection::Maglev;
    let rs = compile(&plan(&state), "dataplane").unwrap();
    let web = &rs.services[&state.services[0].name];
    let rules = web.chain("svc-v4-default/web/tcp/80").unwrap();
    assert!(rules.iter().any(|r| r.contains("jhash ip saddr . ip daddr . meta l4proto . th sport . th dport mod 4093 seed 0x64706c62")), "{rules:?}");
    // Two groups (tcp, udp ports), each a full table that matches core's Maglev table.
    let elements: Vec<(u32, SocketAddr)> = web
        .elements
        .iter()
        .filter_map(|e| match e {
            Element::Backend { slot, to } => Some((*slot, *to)),
            _ => None,
        })
        .collect();
    assert_eq!(elements.len(), 2 * MAGLEV_SLOTS as usize);
    let backends: Vec<MaglevBackend> = ["10.244.0.10:8080", "10.244.1.10:8080"]
        .iter()
        .map(|k| MaglevBackend {
            key: (*k).to_owned(),
            weight: 1,
        })
        .collect();
    let table = maglev_table(&backends, MAGLEV_SLOTS).unwrap();
    let first_group: Vec<SocketAddr> = {
        let mut v = elements.clone();
        v.sort_by_key(|(slot, _)| *slot);
        v.into_iter()
            .take(MAGLEV_SLOTS as usize)
            .map(|(_, to)| to)
            .collect()
    };
    let expected: Vec<SocketAddr> = table
        .iter()
        .map(|i| backends[*i as usize].key.parse().unwrap())
        .collect();
    assert_eq!(first_group, expected);
}

/// Elements are kept in binary form; their nft text is what the transactions used to carry.
#[test]
fn elements_write_their_nft_syntax() {
    use dataplane_core::Protocol;
    use std::sync::Arc;
    let text = |e: &Element| {
        let mut s = e.key();
        e.write_value(&mut s).unwrap();
        (e.set(), s)
    };
    let backend = Element::Backend {
        slot: 0x1002,
        to: "10.244.1.5:8080".parse().unwrap(),
    };
    assert_eq!(
        text(&backend),
        ("backends-v4", "0x00001002 : 10.244.1.5 . 8080".to_owned())
    );
    let v6 = Element::Backend {
        slot: 7,
        to: "[fd00::5]:80".parse().unwrap(),
    };
    assert_eq!(
        text(&v6),
        ("backends-v6", "0x00000007 : fd00::5 . 80".to_owned())
    );
    let frontend = Element::Frontend {
        addr: common::ip("10.96.0.10"),
        protocol: Protocol::Udp,
        port: 53,
        chain: Arc::from("svc-v4-default/dns/udp/53"),
    };
    assert_eq!(
        text(&frontend),
        (
            "service-ips-v4",
            "10.96.0.10 . udp . 53 : goto svc-v4-default/dns/udp/53".to_owned()
        )
    );
    assert_eq!(
        text(&Element::ClusterIp(common::ip("fd00:96::1"))),
        ("cluster-ips-v6", "fd00:96::1".to_owned())
    );
    assert_eq!(
        text(&Element::Hairpin(common::ip("10.244.0.3"))),
        ("hairpin-v4", "10.244.0.3 . 10.244.0.3".to_owned())
    );
}

proptest::proptest! {
    /// The merge over sorted element lists agrees with set difference.
    #[test]
    fn sorted_difference_is_set_difference(
        a in proptest::collection::btree_set(0u16..200, 0..60),
        b in proptest::collection::btree_set(0u16..200, 0..60),
    ) {
        use dataplane_iptables::nft::render::sorted_difference;
        let av: Vec<u16> = a.iter().copied().collect();
        let bv: Vec<u16> = b.iter().copied().collect();
        let got: Vec<u16> = sorted_difference(&av, &bv).copied().collect();
        let want: Vec<u16> = a.difference(&b).copied().collect();
        proptest::prop_assert_eq!(got, want);
    }
}
