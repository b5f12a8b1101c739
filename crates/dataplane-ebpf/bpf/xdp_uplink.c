// SPDX-License-Identifier: Apache-2.0
/*
 * xdp_uplink.c - the NodePort/LoadBalancer/ExternalIP fast path on the node's uplink.
 *
 *   outside --eth0--> [dp_xdp_uplink] (XDP)  --XDP_TX/redirect--> backend's node (DSR, SNAT)
 *                           |     `--XDP_DROP: a new connection from outside the frontend's
 *                           |        loadBalancerSourceRanges (counted, reported at `xdp`)
 *                           | XDP_PASS, untouched
 *                           v
 *                     [dp_from_uplink] (TC ingress, tc_host.c)
 *
 * First of all, the L2 responder (l2_responder.h): ARP requests and neighbour solicitations
 * for announced LoadBalancer IPs / ExternalIPs are answered with XDP_TX.
 */
#include "lib/xdp.h"
#include "lib/l2_responder.h"

SEC("xdp")
int dp_xdp_uplink(struct xdp_md *ctx)
{
	int v = l2_xdp(ctx);

	if (v != L2_GO_ON)
		return v;
	return xdp_uplink(ctx);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
