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
 */
#include "lib/xdp.h"

SEC("xdp")
int dp_xdp_uplink(struct xdp_md *ctx)
{
	return xdp_uplink(ctx);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
