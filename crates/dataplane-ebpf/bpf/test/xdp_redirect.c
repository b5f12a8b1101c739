// SPDX-License-Identifier: Apache-2.0
/*
 * xdp_redirect.c - bench fixture only (not loaded by the dataplane): an XDP program that
 * redirects every frame to the interface `target_ifindex` (set when it is loaded).
 *
 * The drop_flood bench runs it with BPF_PROG_TEST_RUN and BPF_F_TEST_XDP_LIVE_FRAMES as a
 * packet generator: each frame is redirected into the underlay side of node-0's veth uplink,
 * whose ndo_xdp_xmit (veth_xdp_xmit()) queues it on the peer's XDP ring, where the node's own
 * XDP program (dp_xdp_uplink, driver mode) receives it as from a NIC. No skb is built on the
 * way, unlike XDP_PASS (xdp_pass.c), which hands each frame to the stack as an skb.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

volatile const __u32 target_ifindex = 0;

SEC("xdp")
int xdp_redirect(struct xdp_md *ctx)
{
	return bpf_redirect(target_ifindex, 0);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
