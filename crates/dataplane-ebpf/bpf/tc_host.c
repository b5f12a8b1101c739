// SPDX-License-Identifier: Apache-2.0
/*
 * tc_host.c - the node's uplink.
 *
 *   outside --eth0--> [dp_from_uplink] (TC ingress)  NodePort/LB/ExternalIP/ClusterIP, replies
 *   host    --eth0--> [dp_to_uplink]   (TC egress)   service traffic the host itself sends
 *   host    --lo-->   [dp_to_lo]       (TC egress)   the host to its own NodePorts (and LB
 *                                                    IPs / ExternalIPs configured on it)
 */
#include "lib/hook.h"

SEC("classifier")
int dp_from_uplink(struct __sk_buff *skb)
{
	return dp_handle(skb, CTX_FROM_UPLINK);
}

SEC("classifier")
int dp_to_uplink(struct __sk_buff *skb)
{
	return dp_handle(skb, CTX_TO_UPLINK);
}

SEC("classifier")
int dp_to_lo(struct __sk_buff *skb)
{
	return dp_handle_lo(skb);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
