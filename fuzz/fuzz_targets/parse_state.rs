//! Any bytes, as YAML and as JSON: parsing and validation return errors, never panic; a state
//! that validates survives a round trip unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for parsed in [
        dataplane_core::from_yaml(text),
        dataplane_core::from_json(text),
    ] {
        let Ok(state) = parsed else { continue };
        if dataplane_core::validate(&state).is_ok() {
            let json = dataplane_core::to_json(&state).expect("valid state serialises");
            let back = dataplane_core::from_json(&json).expect("own output parses");
            assert_eq!(back, state);
            let _ = dataplane_core::diff(&state, &back);
        }
    }
});
