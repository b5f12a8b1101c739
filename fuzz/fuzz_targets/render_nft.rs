//! Desired states (mostly valid, some broken) through the nftables renderer: no panic, the
//! same text twice and whatever the order of the lists, every valid state rendered (or a
//! named refusal), balanced braces. With `DP_FUZZ_EXPORT=DIR` each rendering is written to
//! DIR for `scripts/fuzz`'s `nft -c -f` replay of the corpus.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| dataplane_fuzz::render::fuzz_one(data, dataplane_fuzz::render::nft));
