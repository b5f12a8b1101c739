// SPDX-License-Identifier: Apache-2.0
/*
 * flood_loop.c - bench fixture only (not loaded by the dataplane): the drop flood bench's
 * packet generator, which makes frames without building an skb for each.
 *
 *   seed (one frame, AF_PACKET) --> fl_a ==veth== fl_b [flood_fanout] --broadcast--> n0 ==veth==> node-0 eth0
 *                                     ^                        |                       (dp_xdp_uplink)
 *                                     +-- [flood_bounce] <-----+ (a copy back out of fl_b)
 *                                          XDP_TX
 *
 * A frame that arrives on fl_b is sent, by a devmap broadcast (bpf_redirect_map with
 * BPF_F_BROADCAST over flood_ports: n0 and fl_b itself), both into n0, whose peer is node-0's
 * uplink (veth_xdp_xmit() puts it on that XDP ring: the node's XDP program sees an XDP frame,
 * as from a NIC), and back out of fl_b to fl_a, whose program returns it (XDP_TX) to fl_b:
 * the frame circulates between the two veths' NAPI polls, and every turn delivers
 * flood_budget[2] copies to the node (user space puts n0 in that many slots of flood_ports:
 * the broadcast does not skip a device it has seen, so each slot is one more clone, sent in
 * the same bulk transmit; a turn's own cost, two XDP runs and a veth hop, is shared by them).
 * A turn takes that many tokens from flood_budget[0]; with too few left the frame is dropped
 * and its loop ends. User space tops the budget up every few milliseconds (the pacing) and
 * sends a few seed frames whenever the loops have died out.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP);
	__uint(max_entries, 17);
	__type(key, __u32);
	__type(value, __u32);
} flood_ports SEC(".maps");

/* [0]: frames still to send; [1]: frames sent to the node; [2]: copies to the node a turn. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 3);
	__type(key, __u32);
	__type(value, __u64);
} flood_budget SEC(".maps");

SEC("xdp")
int flood_fanout(struct xdp_md *ctx)
{
	__u32 zero = 0, one = 1, two = 2;
	__u64 *budget = bpf_map_lookup_elem(&flood_budget, &zero);
	__u64 *sent = bpf_map_lookup_elem(&flood_budget, &one);
	__u64 *copies = bpf_map_lookup_elem(&flood_budget, &two);

	__u64 n;

	if (!budget || !sent || !copies)
		return XDP_DROP;
	n = *copies;
	/* Signed: an overdraft taken back below is negative, never a huge budget, meanwhile. */
	if (n == 0 || (__s64)*budget < (__s64)n)
		return XDP_DROP;
	/* Turns of other CPUs may have taken tokens since the check: give back an overdraft. */
	if ((__s64)__sync_fetch_and_sub(budget, n) < (__s64)n) {
		__sync_fetch_and_add(budget, n);
		return XDP_DROP;
	}
	__sync_fetch_and_add(sent, n);
	return bpf_redirect_map(&flood_ports, 0, BPF_F_BROADCAST);
}

SEC("xdp")
int flood_bounce(struct xdp_md *ctx)
{
	return XDP_TX;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
