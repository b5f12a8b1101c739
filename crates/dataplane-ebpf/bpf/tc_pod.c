// SPDX-License-Identifier: Apache-2.0
/*
 * tc_pod.c - the host side of every pod veth.
 *
 *   pod --veth--> [dp_from_pod] (TC ingress) --> node stack / redirect   services, egress policy
 *   pod <--veth-- [dp_to_pod]   (TC egress)  <-- node stack / redirect   ingress policy
 */
#include "lib/hook.h"

SEC("classifier")
int dp_from_pod(struct __sk_buff *skb)
{
	return dp_handle(skb, CTX_FROM_POD);
}

SEC("classifier")
int dp_to_pod(struct __sk_buff *skb)
{
	return dp_handle_to_pod(skb);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
