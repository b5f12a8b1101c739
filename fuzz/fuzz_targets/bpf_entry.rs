//! Frames from fuzzer bytes into every eBPF entry program (dp_from_pod and dp_to_pod of
//! tc_pod, dp_from_uplink, dp_to_uplink and dp_to_lo of tc_host, dp_xdp_uplink) with
//! BPF_PROG_TEST_RUN, against a fixed state with every kind of service: no failed test run
//! (but the kernel's own refusal of a malformed frame), a verdict from the hook's set, and a
//! well-formed frame never comes out malformed (IP and L4 lengths and checksums). Needs root.
#![no_main]

use arbitrary::Unstructured;
use dataplane_fuzz::bpf;
use libfuzzer_sys::fuzz_target;

fuzz_target!(
    // The namespace and the dataplane are set up before the first input: loading and
    // verifying the programs on a loaded machine can take longer than libFuzzer's timeout
    // for one input.
    init: bpf::with_harness(|_| {}),
    |data: &[u8]| {
        let mut u = Unstructured::new(data);
        let Ok((frame, src)) = bpf::frame(&mut u) else {
            return;
        };
        bpf::with_harness(|h| h.run(&frame, src));
    }
);
