// SPDX-License-Identifier: Apache-2.0
/*
 * tc_host.c - the node's uplink.
 *
 *   outside --eth0--> [dp_from_uplink] (TC ingress)  NodePort/LB/ExternalIP/ClusterIP, replies
 *   host    --eth0--> [dp_to_uplink]   (TC egress)   service traffic the host itself sends
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

char LICENSE[] SEC("license") = "Dual BSD/GPL";
