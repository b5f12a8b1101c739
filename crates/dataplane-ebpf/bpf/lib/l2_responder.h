/* SPDX-License-Identifier: Apache-2.0 */
/*
 * l2_responder.h - L2 announcements: the uplink answers ARP requests and IPv6 neighbour
 * solicitations for the addresses in dp_l2_addrs (a service's LoadBalancer IPs and
 * ExternalIPs with l2Announce) with its own MAC, so that a client on the same segment
 * reaches them without a route (Cilium's L2 announcements, MetalLB's and kube-vip's L2 mode).
 *
 *   client --ARP who-has / NS--> eth0 [dp_xdp_uplink]  --XDP_TX: is-at / NA-->  client
 *                                      | not ours, or stale liveness: on, untouched
 *                                      v
 *                                     [dp_from_uplink] --redirect to eth0: is-at / NA--> client
 *                                      (when XDP is not attached; with XDP it finds the
 *                                       same maps, so it passes what XDP passed)
 *
 * The request is turned into the answer in place, as Cilium's arp_respond() (bpf/lib/arp.h)
 * and handle_l2_announcement() (bpf_host.c) do for ARP, and the same way for neighbour
 * solicitations (Cilium answers them only for the node's own router address, icmp6.h's
 * icmp6_send_ndisc_adv()): the frame is read into the stack, rewritten there and stored
 * back, so one code path serves XDP and TC, whose only differences are the loads and stores,
 * resizing (bpf_xdp_adjust_tail / bpf_skb_change_tail) and the verdict (XDP_TX / a redirect
 * to the interface it came from, Cilium's ctx_redirect()).
 *
 * What the answers hold follows the Linux code that answers for its own addresses:
 * - ARP (net/ipv4/arp.c, arp_process() and arp_send_dst()): a reply to the sender's
 *   hardware address; a probe (sender address 0.0.0.0, RFC 5227 duplicate address
 *   detection) is answered to its sender with target address 0, which the in-place swap
 *   gives. Announcements (sender address = target address, RFC 5227 §3: what another node
 *   taking the address over sends) are not questions: not answered.
 * - Neighbour advertisement (net/ipv6/ndisc.c, ndisc_recv_ns() and ndisc_send_na(); RFC 4861
 *   §7.2.4): Solicited and Override, the target link-layer address option, hop limit 255, to
 *   the solicitor's address and its source link-layer address (the option, else the frame's
 *   source); for a duplicate address detection solicitation (source ::) to the all-nodes
 *   group ff02::1 with Solicited clear, as the RFC requires. The answer is 86 bytes: the same
 *   length as a solicitation with its source link-layer option (rewritten in place);
 *   a solicitation without it (78 bytes) grows, one with more options (a DAD nonce, RFC
 *   7527) shrinks.
 *
 * Both hooks call their responder before anything else as a subprogram of its own: its
 * 88-byte frame buffer is never on the stack together with the service path's frames
 * (xdp_new_flow()'s chain is at the 512-byte limit).
 */
#ifndef DP_L2_RESPONDER_H
#define DP_L2_RESPONDER_H

#include "common.h"
#include "csum.h"

/* The responder did not answer: the hook goes on with the packet. */
#define L2_GO_ON -1

#define L2_ARP_LEN 42 /* Ethernet + ARP for IPv4 over Ethernet */
#define L2_NS_MIN 78  /* Ethernet + IPv6 + a solicitation without options */
#define L2_NA_LEN 86  /* Ethernet + IPv6 + an advertisement + its target link-layer option */
/*
 * The stack copy of the frame starts L2_HEAD bytes into an 8-byte aligned buffer: the
 * verifier wants every stack access aligned to its size, and so the IPv6 addresses and the
 * ICMPv6 header (frame offsets 22, 38, 54, 62) are 8-byte aligned, as they are in a packet
 * that starts 2 bytes into a word (NET_IP_ALIGN).
 */
#define L2_HEAD 2
#define L2_BUF 96 /* L2_HEAD + L2_NA_LEN rounded up to 8 bytes */

#define L2_ARPOP_REQUEST 1
#define L2_ARPOP_REPLY 2
#define L2_ND_NS 135
#define L2_ND_NA 136
#define L2_ND_OPT_SLLA 1
#define L2_ND_OPT_TLLA 2
#define L2_NA_F_SOLICITED 0x40
#define L2_NA_F_OVERRIDE 0x20

/* Offsets in the frame. */
#define L2_ETH_PROTO 12
#define L2_ARP_HRD 14
#define L2_ARP_PRO 16
#define L2_ARP_HLN 18
#define L2_ARP_PLN 19
#define L2_ARP_OP 20
#define L2_ARP_SHA 22
#define L2_ARP_SIP 28
#define L2_ARP_THA 32
#define L2_ARP_TIP 38
#define L2_IP6_PLEN 18
#define L2_IP6_NH 20
#define L2_IP6_HLIM 21
#define L2_IP6_SRC 22
#define L2_IP6_DST 38
#define L2_ICMP6 54
#define L2_ND_TARGET 62
#define L2_ND_OPT 78

/*
 * A cheap first look at @data..@end (the head of the frame): an ARP frame, or an ICMPv6
 * neighbour solicitation with no extension header. Every packet on the uplink pays this;
 * only these pay for the rest.
 */
static __always_inline int l2_candidate(void *data, void *end)
{
	__u8 *p = data;
	__be16 proto;

	if ((void *)(p + L2_ICMP6 + 1) > end)
		return (void *)(p + L2_ETH_PROTO + 2) <= end &&
		       *(__be16 *)(p + L2_ETH_PROTO) == bpf_htons(ETH_P_ARP);
	proto = *(__be16 *)(p + L2_ETH_PROTO);
	if (proto == bpf_htons(ETH_P_ARP))
		return 1;
	return proto == bpf_htons(ETH_P_IPV6) && p[L2_IP6_NH] == IPPROTO_ICMPV6 &&
	       p[L2_ICMP6] == L2_ND_NS;
}

/*
 * The configuration when the responder may answer: the agent refreshed the liveness within
 * the window (Cilium: `ktime_get_ns() - agent_liveness > l2_announcements_max_liveness` means
 * the map's contents can no longer be trusted, and the node stops answering); else NULL.
 */
static __always_inline struct l2_cfg *l2_live(void)
{
	__u32 zero = 0;
	struct l2_cfg *c = bpf_map_lookup_elem(&dp_l2_cfg, &zero);

	if (!c || !c->max_liveness_ns)
		return NULL;
	if (bpf_ktime_get_ns() - c->liveness_ns > c->max_liveness_ns)
		return NULL;
	return c;
}

static __always_inline struct l2_value *l2_lookup(__u8 family, const __u8 *addr, __u32 ifindex)
{
	struct l2_key k;

	__builtin_memset(&k, 0, sizeof(k));
	k.family = family;
	k.ifindex = ifindex;
	if (family == DP_AF_INET)
		__builtin_memcpy(k.addr, addr, 4);
	else
		__builtin_memcpy(k.addr, addr, 16);
	return bpf_map_lookup_elem(&dp_l2_addrs, &k);
}

static __always_inline int l2_mac_is(const __u8 *a, const __u8 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3] && a[4] == b[4] &&
	       a[5] == b[5];
}

static __always_inline int l2_mac_bcast(const __u8 *a)
{
	return (a[0] & a[1] & a[2] & a[3] & a[4] & a[5]) == 0xff;
}

/* ARP request for an announced address -> the reply, in @f. Returns its length or 0. */
static __always_inline int l2_arp(__u8 *f, __u32 ifindex, const __u8 *mac, struct l2_value **st)
{
	__u8 sip[4];

	if (*(__be16 *)(f + L2_ARP_HRD) != bpf_htons(1) ||
	    *(__be16 *)(f + L2_ARP_PRO) != bpf_htons(ETH_P_IP) || f[L2_ARP_HLN] != 6 ||
	    f[L2_ARP_PLN] != 4 || *(__be16 *)(f + L2_ARP_OP) != bpf_htons(L2_ARPOP_REQUEST))
		return 0;
	/* broadcast, or unicast to us (a neighbour confirming its entry); not someone else's */
	if (!l2_mac_bcast(f) && !l2_mac_is(f, mac))
		return 0;
	if (f[L2_ARP_SIP] == f[L2_ARP_TIP] && f[L2_ARP_SIP + 1] == f[L2_ARP_TIP + 1] &&
	    f[L2_ARP_SIP + 2] == f[L2_ARP_TIP + 2] && f[L2_ARP_SIP + 3] == f[L2_ARP_TIP + 3])
		return 0;
	*st = l2_lookup(DP_AF_INET, f + L2_ARP_TIP, ifindex);
	if (!*st)
		return 0;
	__builtin_memcpy(sip, f + L2_ARP_SIP, 4);
	/* target := the sender, to whom the reply goes; sender := us with the address */
	__builtin_memcpy(f + L2_ARP_THA, f + L2_ARP_SHA, 6);
	__builtin_memcpy(f, f + L2_ARP_SHA, 6);
	__builtin_memcpy(f + L2_ARP_SIP, f + L2_ARP_TIP, 4);
	__builtin_memcpy(f + L2_ARP_TIP, sip, 4);
	__builtin_memcpy(f + L2_ARP_SHA, mac, 6);
	__builtin_memcpy(f + 6, mac, 6);
	*(__be16 *)(f + L2_ARP_OP) = bpf_htons(L2_ARPOP_REPLY);
	return L2_ARP_LEN;
}

/* Neighbour solicitation for an announced address (@len: the frame's length) -> the
 * advertisement, in @f. Returns its length (L2_NA_LEN) or 0. */
static __always_inline int l2_ns(__u8 *f, __u32 len, __u32 ifindex, const __u8 *mac,
				 struct l2_value **st)
{
	__u16 plen = bpf_ntohs(*(__be16 *)(f + L2_IP6_PLEN));
	__u8 dst_mac[6];
	__u64 sum;
	int dad;

	/* RFC 4861 §7.1.1: hop limit 255, code 0, at least 24 bytes; no multicast target */
	if (len < L2_NS_MIN || (f[14] >> 4) != 6 || f[L2_IP6_HLIM] != 255 || f[L2_ICMP6 + 1] ||
	    plen < 24 || len < 54 + (__u32)plen || f[L2_ND_TARGET] == 0xff)
		return 0;
	/* to the target's solicited-node group ff02::1:ffXX:XXXX (a resolution) or to the
	 * target itself (a unicast reachability check) */
	if (f[L2_IP6_DST] == 0xff) {
		if (*(__u32 *)(f + L2_IP6_DST) != bpf_htonl(0xff020000) ||
		    *(__u32 *)(f + L2_IP6_DST + 4) || *(__u32 *)(f + L2_IP6_DST + 8) != bpf_htonl(1) ||
		    f[L2_IP6_DST + 12] != 0xff || f[L2_IP6_DST + 13] != f[L2_ND_TARGET + 13] ||
		    f[L2_IP6_DST + 14] != f[L2_ND_TARGET + 14] ||
		    f[L2_IP6_DST + 15] != f[L2_ND_TARGET + 15])
			return 0;
	} else if (!addr_eq((__u32 *)(f + L2_IP6_DST), (__u32 *)(f + L2_ND_TARGET))) {
		return 0;
	} else if (!l2_mac_is(f, mac)) {
		return 0;
	}
	*st = l2_lookup(DP_AF_INET6, f + L2_ND_TARGET, ifindex);
	if (!*st)
		return 0;
	dad = !(*(__u32 *)(f + L2_IP6_SRC) | *(__u32 *)(f + L2_IP6_SRC + 4) |
		*(__u32 *)(f + L2_IP6_SRC + 8) | *(__u32 *)(f + L2_IP6_SRC + 12));
	if (dad) {
		/* ff02::1 at 33:33:00:00:00:01 */
		__builtin_memset(f + L2_IP6_DST, 0, 16);
		f[L2_IP6_DST] = 0xff;
		f[L2_IP6_DST + 1] = 0x02;
		f[L2_IP6_DST + 15] = 1;
		dst_mac[0] = 0x33;
		dst_mac[1] = 0x33;
		dst_mac[2] = 0;
		dst_mac[3] = 0;
		dst_mac[4] = 0;
		dst_mac[5] = 1;
	} else {
		/* the source link-layer option when it comes first (as Linux sends it), else the
		 * frame's source */
		if (plen >= 32 && f[L2_ND_OPT] == L2_ND_OPT_SLLA && f[L2_ND_OPT + 1] == 1)
			__builtin_memcpy(dst_mac, f + L2_ND_OPT + 2, 6);
		else
			__builtin_memcpy(dst_mac, f + 6, 6);
		__builtin_memcpy(f + L2_IP6_DST, f + L2_IP6_SRC, 16);
	}
	__builtin_memcpy(f, dst_mac, 6);
	__builtin_memcpy(f + 6, mac, 6);
	/* version 6, traffic class and flow label 0 */
	*(__be32 *)(f + 14) = bpf_htonl(0x60000000);
	*(__be16 *)(f + L2_IP6_PLEN) = bpf_htons(32);
	f[L2_IP6_NH] = IPPROTO_ICMPV6;
	f[L2_IP6_HLIM] = 255;
	__builtin_memcpy(f + L2_IP6_SRC, f + L2_ND_TARGET, 16);
	f[L2_ICMP6] = L2_ND_NA;
	f[L2_ICMP6 + 1] = 0;
	*(__u16 *)(f + L2_ICMP6 + 2) = 0;
	*(__u32 *)(f + L2_ICMP6 + 4) = 0;
	f[L2_ICMP6 + 4] = dad ? L2_NA_F_OVERRIDE : L2_NA_F_SOLICITED | L2_NA_F_OVERRIDE;
	f[L2_ND_OPT] = L2_ND_OPT_TLLA;
	f[L2_ND_OPT + 1] = 1;
	__builtin_memcpy(f + L2_ND_OPT + 2, mac, 6);
	/* pseudo header (source, destination, length 32, next header 58) and the message, as
	 * the words lie in memory (csum.h) */
	sum = (__u32)bpf_csum_diff(NULL, 0, (__be32 *)(f + L2_IP6_SRC), 32, 0);
	sum += (__u32)bpf_csum_diff(NULL, 0, (__be32 *)(f + L2_ICMP6), 32, 0);
	sum += bpf_htonl(32) + bpf_htonl(IPPROTO_ICMPV6);
	*(__u16 *)(f + L2_ICMP6 + 2) = csum_fold(sum);
	return L2_NA_LEN;
}

/*
 * The answer to the frame in @f (its first min(@len, L2_NA_LEN) bytes, zero beyond), which
 * arrived on @ifindex: @f rewritten, its length returned and *@st set to the address's entry;
 * 0 when the frame is not a question about an announced address.
 */
static __always_inline int l2_answer(__u8 *f, __u32 len, __u32 ifindex, const __u8 *mac,
				     struct l2_value **st)
{
	__be16 proto = *(__be16 *)(f + L2_ETH_PROTO);

	if (proto == bpf_htons(ETH_P_ARP))
		return len >= L2_ARP_LEN ? l2_arp(f, ifindex, mac, st) : 0;
	if (proto == bpf_htons(ETH_P_IPV6) && f[L2_IP6_NH] == IPPROTO_ICMPV6 &&
	    f[L2_ICMP6] == L2_ND_NS)
		return l2_ns(f, len, ifindex, mac, st);
	return 0;
}

/*
 * What both hooks do first: the responder config when the frame (@data..@end) may be a
 * question and the responder is live, else NULL (the cheap tests first: every packet on the
 * uplink pays them).
 */
static __always_inline struct l2_cfg *l2_begin(void *data, void *end)
{
	return l2_candidate(data, end) ? l2_live() : NULL;
}

/* How many bytes of a @len-byte frame the stack copy takes; 0: too short for a question. */
static __always_inline __u32 l2_copy_len(__u32 len)
{
	if (len < L2_ARP_LEN)
		return 0;
	return len > L2_NA_LEN ? L2_NA_LEN : len;
}

/*
 * The hook's own operations, for @ctx an xdp_md when @xdp, else an __sk_buff. @xdp is a
 * constant at every call (l2_xdp() and l2_tc()): once inlined, only the hook's own branch is
 * left, and the verifier sees no access of the other program type's context.
 */
static __always_inline __u32 l2_ctx_len(void *ctx, const int xdp)
{
	return xdp ? bpf_xdp_get_buff_len(ctx) : ((struct __sk_buff *)ctx)->len;
}

static __always_inline __u32 l2_ctx_ifindex(void *ctx, const int xdp)
{
	return xdp ? ((struct xdp_md *)ctx)->ingress_ifindex :
		     ((struct __sk_buff *)ctx)->ingress_ifindex;
}

static __always_inline long l2_ctx_load(void *ctx, const int xdp, void *to, __u32 n)
{
	return xdp ? bpf_xdp_load_bytes(ctx, 0, to, n) : bpf_skb_load_bytes(ctx, 0, to, n);
}

/* The frame resized from @len to L2_NA_LEN bytes. */
static __always_inline long l2_ctx_resize(void *ctx, const int xdp, __u32 len)
{
	return xdp ? bpf_xdp_adjust_tail(ctx, (int)L2_NA_LEN - (int)len) :
		     bpf_skb_change_tail(ctx, L2_NA_LEN, 0);
}

/* BPF_F_RECOMPUTE_CSUM in TC: a CHECKSUM_COMPLETE skb's csum follows the new bytes, which
 * the receiving end checks the advertisement's checksum with */
static __always_inline long l2_ctx_store(void *ctx, const int xdp, const void *from, __u32 n)
{
	return xdp ? bpf_xdp_store_bytes(ctx, 0, (void *)from, n) :
		     bpf_skb_store_bytes(ctx, 0, from, n, BPF_F_RECOMPUTE_CSUM);
}

/* What l2_respond() did. */
#define L2_ANSWERED 1
#define L2_BROKEN -2 /* resized, then not stored: the frame is no longer the request */

/*
 * The responder in either hook (@ctx and @xdp as for l2_ctx_len(); the frame @data..@end):
 * L2_ANSWERED with the answer in place of the question and counted, L2_BROKEN, or L2_GO_ON
 * (the packet untouched).
 */
static __always_inline int l2_respond(void *ctx, const int xdp, void *data, void *end)
{
	struct l2_value *st = NULL;
	struct l2_cfg *cfg;
	__u8 buf[L2_BUF] __attribute__((aligned(8)));
	__u8 *f = buf + L2_HEAD;
	__u32 len, n;
	int out;

	cfg = l2_begin(data, end);
	if (!cfg)
		return L2_GO_ON;
	len = l2_ctx_len(ctx, xdp);
	n = l2_copy_len(len);
	if (!n)
		return L2_GO_ON;
	__builtin_memset(buf, 0, sizeof(buf));
	if (l2_ctx_load(ctx, xdp, f, n))
		return L2_GO_ON;
	out = l2_answer(f, len, l2_ctx_ifindex(ctx, xdp), cfg->mac, &st);
	if (!out || !st)
		return L2_GO_ON;
	if (out == L2_NA_LEN && len != L2_NA_LEN && l2_ctx_resize(ctx, xdp, len))
		return L2_GO_ON;
	if (out == L2_NA_LEN) {
		if (l2_ctx_store(ctx, xdp, f, L2_NA_LEN))
			return L2_BROKEN;
	} else if (l2_ctx_store(ctx, xdp, f, L2_ARP_LEN)) {
		return L2_GO_ON;
	}
	__sync_fetch_and_add(&st->responses, 1);
	return L2_ANSWERED;
}

/**
 * l2_xdp() - the responder at XDP: XDP_TX with the answer, or L2_GO_ON (the packet
 * untouched).
 */
/* Each entry object calls one of l2_xdp() and l2_tc(): `unused` keeps -Wunused-function quiet
 * about the other. */
static __noinline __attribute__((unused)) int l2_xdp(struct xdp_md *ctx)
{
	int r = l2_respond(ctx, 1, (void *)(long)ctx->data, (void *)(long)ctx->data_end);

	if (r == L2_ANSWERED)
		return XDP_TX;
	return r == L2_BROKEN ? XDP_DROP : L2_GO_ON;
}

/**
 * l2_tc() - the responder in TC on the uplink's ingress: the answer redirected to the
 * interface the request came in on (TC_ACT_REDIRECT), or L2_GO_ON (the packet untouched).
 */
static __noinline __attribute__((unused)) int l2_tc(struct __sk_buff *skb)
{
	int r = l2_respond(skb, 0, (void *)(long)skb->data, (void *)(long)skb->data_end);

	if (r == L2_ANSWERED)
		return bpf_redirect(skb->ifindex, 0);
	return r == L2_BROKEN ? TC_ACT_SHOT : L2_GO_ON;
}

#endif
