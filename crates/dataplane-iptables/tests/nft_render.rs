//! Golden tests of the pure nftables renderer.

mod common;

use dataplane_core::{diff, Backend, DesiredState};
use dataplane_iptables::nft::render::{
    compile, compile_patch, compile_state, render_full, render_patch, NftRuleset,
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
        .flat_map(|s| s.ids.values().copied())
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
    let rules = &web.chains["svc-v4-default/web/tcp/80"];
    assert!(rules.iter().any(|r| r.contains("jhash ip saddr . ip daddr . meta l4proto . th sport . th dport mod 4093 seed 0x64706c62")), "{rules:?}");
    // Two groups (tcp, udp ports), each a full table that matches core's Maglev table.
    let elements: Vec<_> = web
        .elements
        .iter()
        .filter(|e| e.set == "backends-v4")
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
    let first_group: Vec<_> = {
        let mut v: Vec<_> = elements.iter().collect();
        v.sort_by_key(|e| u32::from_str_radix(e.key.trim_start_matches("0x"), 16).unwrap());
        v.into_iter()
            .take(MAGLEV_SLOTS as usize)
            .map(|e| e.value.clone().unwrap())
            .collect()
    };
    let expected: Vec<String> = table
        .iter()
        .map(|i| backends[*i as usize].key.replace(':', " . "))
        .collect();
    assert_eq!(first_group, expected);
}
