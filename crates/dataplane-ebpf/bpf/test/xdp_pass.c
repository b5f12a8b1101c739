// SPDX-License-Identifier: Apache-2.0
/*
 * xdp_pass.c - test fixture only (not loaded by the dataplane): an XDP program that passes
 * everything. The lab attaches it to the underlay side of a node's veth uplink because a veth
 * delivers frames another veth sends with XDP_TX only when it runs an XDP program itself
 * (veth_xdp_flush() kicks the peer's NAPI only then).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
