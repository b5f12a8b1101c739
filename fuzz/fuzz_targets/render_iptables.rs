//! Desired states (mostly valid, some broken) through the iptables renderer (both families): no panic, the
//! same text twice and whatever the order of the lists, every valid state rendered (or a
//! named refusal), sections that COMMIT, rules only in declared or built-in chains. With `DP_FUZZ_EXPORT=DIR` each rendering is written to
//! DIR for `scripts/fuzz`'s `iptables-restore --test` replay (with the ipsets the rules name) of the corpus.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| dataplane_fuzz::render::fuzz_one(
    data,
    dataplane_fuzz::render::iptables
));
