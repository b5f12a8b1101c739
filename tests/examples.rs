//! The examples, run as tests so that they keep working.

#[allow(dead_code)] // the example's `main` is not called here
#[path = "../examples/embed.rs"]
mod embed;

use std::net::SocketAddr;

/// `examples/embed.rs` (root: it creates a network namespace and programs a dataplane in it).
#[test]
fn embed_programs_syncs_incrementally_and_resets() {
    if !dataplane_testkit::require_root("embed_programs_syncs_incrementally_and_resets") {
        // Without root the example still builds and validates its state, and says why it
        // stops there.
        let outcome = embed::run().expect("the example runs without root");
        assert!(
            matches!(&outcome, embed::Outcome::Skipped(why) if why.contains("root")),
            "{outcome:?}"
        );
        return;
    }
    let outcome = embed::run().expect("the example runs");
    if cfg!(not(any(feature = "ebpf", feature = "nft"))) {
        // No dataplane compiled in: `auto` says so, and the example stops there.
        assert!(
            matches!(&outcome, embed::Outcome::Skipped(why) if why.contains("not compiled in")),
            "{outcome:?}"
        );
        return;
    }
    let embed::Outcome::Programmed {
        kind,
        first,
        observed_first,
        second,
        observed_second,
        netns,
    } = outcome
    else {
        panic!("a dataplane is compiled in and we are root, yet: {outcome:?}");
    };
    let frontend: SocketAddr = "10.96.0.10:80".parse().unwrap();
    let backends = |observed: &[dataplane::ObservedFrontend]| -> Vec<String> {
        let f = observed
            .iter()
            .find(|f| f.address == frontend)
            .unwrap_or_else(|| panic!("{kind}: no frontend {frontend} in {observed:?}"));
        f.backends.iter().map(ToString::to_string).collect()
    };
    assert!(first.full_sync, "{kind}: {first:?}");
    assert_eq!(first.services_changed, 1, "{kind}: {first:?}");
    assert_eq!(backends(&observed_first), ["10.244.0.11:8080"]);
    assert!(
        !second.full_sync,
        "{kind}: the change is incremental: {second:?}"
    );
    assert_eq!(second.services_changed, 1, "{kind}: {second:?}");
    assert_eq!(
        backends(&observed_second),
        ["10.244.0.11:8080", "10.244.0.12:8080"]
    );
    assert!(
        !dataplane_testkit::netns::list_netns().contains(&netns),
        "the example left its namespace {netns} behind"
    );
}
