//! The BPF objects the library embeds (a module of their own: the loader loads them and the
//! layout records (`layout.rs`) fingerprint their BTF; neither imports the other for them).

// `build.rs` points DATAPLANE_EBPF_OBJ_DIR at the committed `bpf/obj/` (or, with
// `DATAPLANE_BPF_REBUILD=1`, at fresh builds in OUT_DIR).
pub(crate) static TC_POD_OBJ: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("DATAPLANE_EBPF_OBJ_DIR"), "/tc_pod.o"));
pub(crate) static TC_HOST_OBJ: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("DATAPLANE_EBPF_OBJ_DIR"), "/tc_host.o"));
pub(crate) static XDP_UPLINK_OBJ: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("DATAPLANE_EBPF_OBJ_DIR"), "/xdp_uplink.o"));
pub(crate) static SOCK_OBJ: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("DATAPLANE_EBPF_OBJ_DIR"), "/sock.o"));
pub(crate) static FLOOR_OBJ: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("DATAPLANE_EBPF_OBJ_DIR"), "/floor.o"));

/// The compiled `tc_pod.o`, for layout checks and tooling.
pub fn tc_pod_object() -> &'static [u8] {
    TC_POD_OBJ
}

/// The compiled `tc_host.o`, for layout checks and tooling.
pub fn tc_host_object() -> &'static [u8] {
    TC_HOST_OBJ
}

/// The compiled `xdp_uplink.o`, for layout checks and tooling.
pub fn xdp_uplink_object() -> &'static [u8] {
    XDP_UPLINK_OBJ
}

/// The compiled `sock.o` (socket-level load balancing), for layout checks and tooling.
pub fn sock_object() -> &'static [u8] {
    SOCK_OBJ
}

/// The compiled bench fixture `bpf/test/floor.c`: TC programs that stop after the first
/// steps of `dp_from_pod` (`floor_entry`, `floor_ct`, `floor_ct_nat`, `floor_svc`), loaded by the
/// per-packet bench against a dataplane's pinned maps to measure what a test run costs at
/// least on a machine. Not part of the dataplane.
#[doc(hidden)]
pub fn floor_object() -> &'static [u8] {
    FLOOR_OBJ
}
