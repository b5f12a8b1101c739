/* SPDX-License-Identifier: Apache-2.0 */
/*
 * echo.h - masquerade of ICMP/ICMPv6 echo (ping) from pods leaving the cluster.
 *
 * The echo identifier plays the part of the source port: the request's forward entry is
 * keyed {pod -> peer, sport = id, dport = 0}, the reply's reverse entry {peer -> node,
 * sport = 0, dport = id'} where id' is an identifier free towards that peer (the pod's own
 * when possible). Entries carry CT_F_MASQ | CT_F_SNAT like TCP/UDP masquerade, so maintain() and
 * the orphan check treat them alike. ICMPv4 has no pseudo header: changing an address does
 * not touch its checksum; ICMPv6's does.
 */
#ifndef DP_ECHO_H
#define DP_ECHO_H

#include "common.h"
#include "parse.h"
#include "nat.h"
#include "ct.h"
#include "masq.h"

#define ICMP_ECHOREPLY 0
#define ICMP_ECHO 8
#define ICMPV6_ECHO_REQUEST 128
#define ICMPV6_ECHO_REPLY 129
#define ECHO_ID_OFF 4
#define ECHO_REQUEST 1
#define ECHO_REPLY 2

/* Fills @p's ports from an echo header: ECHO_REQUEST, ECHO_REPLY, or 0 when not an echo. */
static __always_inline int echo_parse(struct __sk_buff *skb, struct pkt *p)
{
	__u8 hdr[8];
	__u8 req, rep;

	if (p->proto == IPPROTO_ICMP && p->family == DP_AF_INET) {
		req = ICMP_ECHO;
		rep = ICMP_ECHOREPLY;
	} else if (p->proto == IPPROTO_ICMPV6 && p->family == DP_AF_INET6) {
		req = ICMPV6_ECHO_REQUEST;
		rep = ICMPV6_ECHO_REPLY;
	} else {
		return 0;
	}
	if (bpf_skb_load_bytes(skb, p->l4_off, hdr, sizeof(hdr)) < 0 || hdr[1] != 0)
		return 0;
	if (hdr[0] != req && hdr[0] != rep)
		return 0;
	p->csum_off = p->l4_off + 2;
	if (hdr[0] == req) {
		p->sport = *(__be16 *)&hdr[ECHO_ID_OFF];
		p->dport = 0;
		return ECHO_REQUEST;
	}
	p->sport = 0;
	p->dport = *(__be16 *)&hdr[ECHO_ID_OFF];
	return ECHO_REPLY;
}

/* Rewrite the address at @off and the echo identifier (from @old_id to @new_id). */
static __always_inline int echo_rewrite(struct __sk_buff *skb, struct pkt *p, __u32 off,
					const __u32 *old, const __u32 *new, __be16 old_id,
					__be16 new_id)
{
	__u32 csum_off = p->csum_off;
	int ret;

	if (p->family == DP_AF_INET)
		p->csum_off = 0; /* no pseudo header in ICMPv4 */
	ret = addr_eq(old, new) ? 0 : nat_addr(skb, p, off, old, new);
	p->csum_off = csum_off;
	if (ret < 0)
		return ret;
	if (old_id == new_id)
		return 0;
	if (bpf_l4_csum_replace(skb, csum_off, old_id, new_id, 2) < 0)
		return DROP_INVALID;
	if (bpf_skb_store_bytes(skb, p->l4_off + ECHO_ID_OFF, &new_id, 2, 0) < 0)
		return DROP_INVALID;
	return 0;
}

/**
 * echo_masquerade() - on the uplink's egress: a pod's echo request leaving the cluster gets
 * the node address and an identifier free towards its peer.
 */
static __noinline int echo_masquerade(struct __sk_buff *skb, struct pkt *p)
{
	__u32 zero = 0;
	struct dp_config *cfg = bpf_map_lookup_elem(&dp_config, &zero);
	struct ct_key fk, rk;
	struct ct_entry *cur;
	__u32 snat[4] = {};
	int ret;

	if (!masq_wanted(cfg, p))
		return DP_PASS;
	ct_key_from_pkt(&fk, p);
	cur = bpf_map_lookup_elem(&dp_ct, &fk);
	if (cur && ct_is_fwd(cur) && (cur->flags & CT_F_MASQ)) {
		ct_touch(cur, p, 0);
		ret = echo_rewrite(skb, p, saddr_off(p), p->saddr, cur->snat_addr, p->sport,
				   cur->snat_port);
		return ret < 0 ? ret : DP_MASQ;
	}
	ret = masq_track(p, snat, &rk);
	if (ret < 0)
		return ret;
	ret = echo_rewrite(skb, p, saddr_off(p), p->saddr, snat, p->sport, rk.dport);
	if (ret < 0)
		return ret;
	stat_inc(STAT_MASQUERADED);
	return DP_MASQ;
}

/**
 * echo_reply_nat() - on the uplink's ingress: the reply to a masqueraded echo goes back to
 * the pod with its own identifier.
 */
static __noinline int echo_reply_nat(struct __sk_buff *skb, struct pkt *p)
{
	struct ct_key k;
	struct ct_entry *rev;
	int ret;

	ct_key_from_pkt(&k, p);
	rev = bpf_map_lookup_elem(&dp_ct, &k);
	if (!rev || !ct_is_rev(rev) || !(rev->flags & CT_F_MASQ))
		return DP_PASS;
	ct_touch(rev, p, 1);
	ret = echo_rewrite(skb, p, daddr_off(p), p->daddr, rev->snat_addr, p->dport,
			   rev->snat_port);
	if (ret < 0)
		return ret;
	addr_copy(p->daddr, rev->snat_addr);
	p->dport = rev->snat_port;
	stat_inc(STAT_REV_TRANSLATED);
	return DP_NAT;
}

/* An echo of @kind (echo_parse()): requests masqueraded on the way out, replies restored. */
static __always_inline int echo_nat(struct __sk_buff *skb, struct pkt *p, int ctx, int kind)
{
	if (kind == ECHO_REQUEST && ctx == CTX_TO_UPLINK)
		return echo_masquerade(skb, p);
	if (kind == ECHO_REPLY && ctx == CTX_FROM_UPLINK)
		return echo_reply_nat(skb, p);
	return DP_PASS;
}

#endif
