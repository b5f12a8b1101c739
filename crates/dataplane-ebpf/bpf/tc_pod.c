// SPDX-License-Identifier: Apache-2.0
/*
 * tc_pod.c - from-pod: TC ingress on the host side of every pod veth (packets leaving a pod).
 *
 *   pod --veth--> [dp_from_pod] --> node stack / redirect
 */
#include "lib/hook.h"

SEC("classifier")
int dp_from_pod(struct __sk_buff *skb)
{
	return dp_handle(skb, CTX_FROM_POD);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
