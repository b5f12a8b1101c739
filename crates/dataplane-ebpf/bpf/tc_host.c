// SPDX-License-Identifier: Apache-2.0
/*
 * tc_host.c - the node's uplink.
 *
 *   outside --eth0--> [dp_from_uplink] (TC ingress)  the L2 responder (ARP requests and
 *                                                    neighbour solicitations for announced
 *                                                    addresses, answered back out of eth0),
 *                                                    then host policy (failsafe, untracked,
 *                                                    pre-DNAT), then NodePort/LB/ExternalIP/
 *                                                    ClusterIP, replies, then the normal
 *                                                    host policies
 *   host    --eth0--> [dp_to_uplink]   (TC egress)   host policy (failsafe, untracked) on the
 *                                                    node's own packets, then service traffic
 *                                                    the host itself sends, then the normal
 *                                                    host policies
 *   host    --lo-->   [dp_to_lo]       (TC egress)   the host to its own NodePorts (and LB
 *                                                    IPs / ExternalIPs configured on it)
 */
#include "lib/hook.h"
#include "lib/host_policy.h"
#include "lib/l2_responder.h"

/* A host policy verdict as a TC one; -1: dp_handle() goes on. */
static __always_inline int host_verdict(int host)
{
	switch (host) {
	case HOST_DROP:
		return TC_ACT_SHOT;
	case HOST_UNTRACKED:
		/* no conntrack entry, no translation: the stack as it is */
		return TC_ACT_OK;
	default:
		return -1;
	}
}

/* After dp_handle()'s verdict @v: the normal host policies on the translated packet, when
 * host_*_uplink() deferred it to them (its drop overrides a redirect dp_handle() asked for:
 * that takes effect only on TC_ACT_REDIRECT). A subprogram: inlined, the verdict kept across
 * host_after() grows dp_from_uplink's frame, whose deepest chain is at the stack limit. */
static __noinline int host_then(struct __sk_buff *skb, int v, int ingress)
{
	if (v != TC_ACT_SHOT && skb->cb[CB_HOST] != HOST_AFTER_NONE && host_after(skb, ingress))
		return TC_ACT_SHOT;
	return v;
}

SEC("classifier")
int dp_from_uplink(struct __sk_buff *skb)
{
	int v = l2_tc(skb);
	int host;

	if (v != L2_GO_ON)
		return v;
	/* With XDP attached, host_xdp() passes an untracked Allow to TC (XDP_PASS): judged again
	 * here, the same way, so both paths mark it. */
	host = host_from_uplink(skb);
	if (host == HOST_UNTRACKED)
		skb->mark |= DP_MARK_UNTRACKED;
	v = host_verdict(host);
	if (v >= 0)
		return v;
	return host_then(skb, dp_handle(skb, CTX_FROM_UPLINK), 1);
}

SEC("classifier")
int dp_to_uplink(struct __sk_buff *skb)
{
	int v;

	/* Let in untracked from the uplink and routed back out of it: untouched, as netfilter
	 * leaves an untracked packet (common.h, DP_MARK_UNTRACKED). */
	if (skb->mark & DP_MARK_UNTRACKED) {
		skb->mark &= ~DP_MARK_UNTRACKED;
		return TC_ACT_OK;
	}
	v = host_verdict(host_to_uplink(skb));

	if (v >= 0)
		return v;
	return host_then(skb, dp_handle(skb, CTX_TO_UPLINK), 0);
}

SEC("classifier")
int dp_to_lo(struct __sk_buff *skb)
{
	return dp_handle_lo(skb);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
