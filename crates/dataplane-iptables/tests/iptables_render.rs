//! Golden tests of the pure iptables renderer.

mod common;

use dataplane_core::Backend;
use dataplane_iptables::iptables::render::{
    compile, compile_state, parse_existing, render_reset, render_sync, sync_is_empty, write_sync,
    Existing,
};
use dataplane_iptables::plan::{plan, Family};

#[test]
fn full_sync_golden_v4_and_v6() {
    let state = common::showcase();
    let p = plan(&state);
    let v4 = compile(&p, Family::V4, "DP");
    let v6 = compile(&p, Family::V6, "DP");
    let existing = Existing::default();
    insta::assert_snapshot!("v4", render_sync(None, &v4, &existing));
    insta::assert_snapshot!("v6", render_sync(None, &v6, &existing));
}

#[test]
fn partial_sync_rewrites_only_changed_chains() {
    let old = common::showcase();
    let mut new = old.clone();
    new.services[0]
        .backends
        .push(Backend::new(common::ip("10.244.2.10")));
    let before = compile(&plan(&old), Family::V4, "DP");
    let after = compile(&plan(&new), Family::V4, "DP");
    // Everything of `before` is in the kernel, hooks included.
    let mut existing = Existing {
        nat_chains: before.nat.keys().cloned().collect(),
        filter_chains: before.filter.keys().cloned().collect(),
        ..Existing::default()
    };
    for (t, c, _) in dataplane_iptables::iptables::render::hooks("DP") {
        existing.hooks.insert((t.to_owned(), c.to_owned()));
    }
    let text = render_sync(Some(&before), &after, &existing);
    assert!(
        !text.contains("shop") && !text.contains("*filter"),
        "{text}"
    );
    insta::assert_snapshot!(text);
    // Nothing changed: nothing to do, and the backend knows without rendering.
    assert!(!sync_is_empty(Some(&before), &after, &existing));
    assert_eq!(render_sync(Some(&before), &before, &existing), "");
    assert!(sync_is_empty(Some(&before), &before, &existing));
}

/// The full sync compiles service by service (no whole plan): the same rulesets as compiling
/// the plan, whatever the order of the services.
#[test]
fn compiling_service_by_service_gives_the_same_rulesets() {
    for (mut state, what) in [
        (common::showcase(), "showcase"),
        (dataplane_core::synthetic::state(300, 4), "synthetic"),
    ] {
        state.services.reverse();
        let p = plan(&state);
        let [v4, v6] = compile_state(&state, "DP");
        assert_eq!(v4, compile(&p, Family::V4, "DP"), "{what} v4");
        assert_eq!(v6, compile(&p, Family::V6, "DP"), "{what} v6");
    }
}

/// The test hook's refused rule ends the first table written, whichever it is.
#[test]
fn the_fault_rule_goes_into_the_first_table_written() {
    let state = common::showcase();
    let rs = compile(&plan(&state), Family::V4, "DP");
    let mut text = String::new();
    write_sync(
        None,
        &rs,
        &Existing::default(),
        Some("-A DP-SERVICES -j X"),
        &mut text,
    )
    .unwrap();
    let nat = text.split("COMMIT\n").next().unwrap();
    assert!(
        nat.starts_with("*nat\n") && nat.ends_with("-A DP-SERVICES -j X\n"),
        "{nat}"
    );
    assert_eq!(text.matches("-j X").count(), 1, "{text}");
    assert_eq!(
        text.replace("-A DP-SERVICES -j X\n", ""),
        render_sync(None, &rs, &Existing::default())
    );
}

#[test]
fn reset_removes_exactly_our_chains_and_hooks() {
    let save = "*nat\n:PREROUTING ACCEPT [0:0]\n:DP-SERVICES - [0:0]\n:DP-SVC-ABC - [0:0]\n:OTHER - [0:0]\n-A PREROUTING -j DP-SERVICES\n-A PREROUTING -j OTHER\nCOMMIT\n";
    let text = render_reset("DP", &parse_existing(save, "DP"));
    insta::assert_snapshot!(text);
    assert!(!text.contains("OTHER"));
}
