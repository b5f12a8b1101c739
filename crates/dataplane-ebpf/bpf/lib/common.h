/* SPDX-License-Identifier: Apache-2.0 */
/* common.h - includes, verdicts and small helpers shared by every program. */
#ifndef DP_COMMON_H
#define DP_COMMON_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "maps.h"

/* Separate BPF subprograms keep each stack frame under the 512-byte limit. */
#ifndef __noinline
#define __noinline __attribute__((noinline))
#endif

/* linux/icmp.h pulls in libc headers that do not build for -target bpf. */
#define ICMP_DEST_UNREACH 3
#define ICMP_PORT_UNREACH 3
#define ICMP_FRAG_NEEDED 4
#define ICMPV6_DEST_UNREACH 1
#define ICMPV6_PORT_UNREACH 4
#define ICMPV6_PKT_TOOBIG 2

/* IPv4 fragment bits of iphdr.frag_off (host order). */
#define IP_MF 0x2000
#define IP_OFFSET 0x1fff

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif

/* Negative reasons used inside the datapath; entry programs map them to TC verdicts. */
#define DP_PASS 0       /* not ours: let the packet continue untouched */
#define DP_NAT 1        /* translated: route it (redirect after a FIB lookup) */
#define DP_MASQ 2       /* source-NATed on the way out: let it continue as routed */
#ifndef EEXIST
#define EEXIST 17 /* what bpf_map_update_elem() returns for BPF_NOEXIST on a taken key */
#endif

#define DROP_SRC_RANGE -1 /* the client is outside the frontend's loadBalancerSourceRanges */
#define DROP_INVALID -2 /* malformed packet */
#define DROP_NO_SNAT -3 /* no node address of the family, or no free SNAT port */
#define DROP_CT_FULL -4 /* conntrack entry could not be written */
#define DP_REJECT -5    /* no backend: answer with a TCP RST or ICMP unreachable */
#define DP_FRAG_NEEDED -6 /* DSR request too big once grown: answer ICMP fragmentation needed */
#define DP_DSR 3        /* DSR request taken on a backend's node: let the stack deliver it */
#define DROP_UNALLOCATED -7 /* to an address in the service CIDRs that no service has */
#define DP_TO_LO 4      /* reply of a CT_F_LOOPBACK connection: deliver it through lo */
#define DROP_POLICY_DENIED -8 /* NetworkPolicy: a new connection no rule allows (policy.h) */
#define DROP_NO_LOCAL -9 /* traffic policy Local and no local backend */
#define DROP_NO_ROUTE -10 /* dp_to_lo: the FIB does not forward the translated packet */
#define DROP_FRAG_TOO_BIG -11 /* dp_to_lo: ... because it does not fit the way out */
#define DROP_SPOOFED -12 /* from a pod, with a source that is not its own */
#define DP_REJECT_PORT -13 /* a ClusterIP's port no service has: answered as DP_REJECT */

/* skb->cb words the packet's frontend and backend are left in for the flow event (events.h):
 * lb_forward() sets them, dp_handle() clears them first. (Cilium keeps such per-packet
 * metadata in skb->cb too.) */
#define CB_SVC_ID 0
#define CB_BACKEND_ID 1
#define CB_EV 2 /* dp_handle(): the events it owes: */
#define EV_CREATED 1 /* lb_forward() or masquerade() wrote a new connection's entries */
#define EV_ALLOWED 2 /* NetworkPolicy judged and allowed a new connection */
#define CB_SCTP_PORTS 3 /* nat.h: an SCTP packet's ports word before its rewrites (0: none) */
#define CB_HOST 4 /* host_policy.h: what its normal stage owes the packet after dp_handle() */

/*
 * skb->mark bit: an untracked (doNotTrack) Allow let this packet in from the uplink
 * (dp_from_uplink); dp_to_uplink passes a packet carrying it untouched when the node routes
 * it back out of the uplink (no service translation, no host egress stages) and clears it.
 * The mark stays on the skb while the node forwards it in its own namespace (a veth into a
 * pod's namespace scrubs it). Netfilter and Calico do the same with conntrack state: filter
 * accepts `--ctstate UNTRACKED` and NAT never sees such packets (felix rules/static.go).
 * 0x80 because no user of the node's marks we know uses it: kube-proxy marks 0x4000
 * (masquerade) and 0x8000 (drop), Calico 0xffff0000 by default (IptablesMarkMask), Cilium
 * 0x0f00 (MARK_MAGIC_HOST_MASK) and its identity in the upper 16 bits, Istio 0x539.
 */
#define DP_MARK_UNTRACKED 0x80

/* Where the program runs. */
#define CTX_FROM_POD 0
#define CTX_FROM_UPLINK 1
#define CTX_TO_UPLINK 2
#define CTX_TO_LO 3 /* TC egress of lo: the host to one of its own addresses */

/* The loopback device has this index in every network namespace. */
#define LOOPBACK_IFINDEX 1

static __always_inline void stat_inc(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&dp_stats, &idx);

	if (v)
		*v += 1;
}

static __always_inline int addr_eq(const __u32 *a, const __u32 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3];
}

static __always_inline void addr_copy(__u32 *dst, const __u32 *src)
{
	dst[0] = src[0];
	dst[1] = src[1];
	dst[2] = src[2];
	dst[3] = src[3];
}

#endif
