/* SPDX-License-Identifier: Apache-2.0 */
/*
 * host_policy.h - host endpoint policy on the uplink (the reference semantics:
 * dataplane_core::host_policy). For each packet crossing the uplink's host endpoint:
 *
 *   1. failsafe ports (HK_FAILSAFE): inbound to one of the node's addresses, or outbound
 *      from one, on a failsafe (protocol, destination port): no host policy looks at it;
 *   2. untracked (doNotTrack) rules on the packet as it arrives, before our conntrack and
 *      service translation: Deny drops, Allow lets it through untouched (no conntrack entry,
 *      no NAT: its replies are packets of their own, judged by their own rules);
 *   3. preDNAT ingress rules on the original destination (a NodePort before translation),
 *      for packets that are not replies of a connection our conntrack knows: Deny drops,
 *      Allow goes on;
 *   then dp_handle() (service translation, NetworkPolicy) as without host policy.
 *
 * Where it runs: host_xdp() first in dp_xdp_uplink (stage 2's ingress denies at XDP: a
 * flood from a blocked prefix costs no skb), host_from_uplink() first in dp_from_uplink (all
 * of 1-3 inbound: alone when XDP is not attached, again after XDP otherwise, which decides
 * the same way), host_to_uplink() first in dp_to_uplink (1-2 for the node's own packets).
 *
 * Matching is map lookups, no loop over rules (Calico's BPF dataplane instead generates a
 * policy program per endpoint, felix/bpf/polprog, jumped to from tc.c; Cilium's policy is a
 * hash lookup by identity and port, bpf/lib/policy.h): each rule of a set is a bit, and the
 * four LPM lookups of host_first() (source net, destination net, source port, destination
 * port) each give the mask of the rules that part allows; the lowest bit of their AND is the
 * first matching rule (Calico's first-match rule order). Failsafes as Calico's BPF
 * dataplane checks them (felix/bpf-gpl/failsafe.h: a hash of (protocol, port, direction)
 * looked up before policy), here an exact entry of the same trie.
 */
#ifndef DP_HOST_POLICY_H
#define DP_HOST_POLICY_H

#include "common.h"
#include "parse.h"
#include "ct.h"
#include "svc.h"
#include "events.h"

#define HOST_GO_ON 0    /* nothing decided: the rest of the program */
#define HOST_UNTRACKED 1 /* an untracked Allow: leave the packet alone */
#define HOST_DROP 2     /* a Deny: dropped (counted and reported already) */

/* What host policy looks at: protocol, addresses, ports (0 where there are none). */
struct host_pkt {
	__u32 saddr[4];
	__u32 daddr[4];
	__be16 sport;
	__be16 dport;
	__u8 family;
	__u8 proto;
	__u8 tcp_flags;
	__u8 pad;
};

/* The active generation's flags (HC_F_*, 1 << HS_*) in *flags; returns the generation. */
static __always_inline __u32 host_gen(__u32 *flags)
{
	struct host_cfg *c;
	__u32 idx = 0;
	__u32 gen;

	*flags = 0;
	c = bpf_map_lookup_elem(&dp_host_cfg, &idx);
	if (!c)
		return 0;
	gen = c->gen & 1;
	idx = 1 + gen;
	c = bpf_map_lookup_elem(&dp_host_cfg, &idx);
	if (c)
		*flags = c->flags;
	return gen;
}

static __always_inline __u64 host_lookup(struct host_key *k, __u8 kind, __u8 sub, __u32 bits)
{
	__u64 *m;

	k->kind = kind;
	k->sub = sub;
	k->prefixlen = 32 + bits;
	m = bpf_map_lookup_elem(&dp_host_lpm, k);
	return m ? *m : 0;
}

/* The index of the lowest bit set in @m (not 0). */
static __always_inline int host_lowest(__u64 m)
{
	int n = 0;

	if (!(m & 0xffffffffULL)) {
		n += 32;
		m >>= 32;
	}
	if (!(m & 0xffff)) {
		n += 16;
		m >>= 16;
	}
	if (!(m & 0xff)) {
		n += 8;
		m >>= 8;
	}
	if (!(m & 0xf)) {
		n += 4;
		m >>= 4;
	}
	if (!(m & 0x3)) {
		n += 2;
		m >>= 2;
	}
	if (!(m & 0x1))
		n += 1;
	return n;
}

/*
 * The dp_host_rules index of the first rule of @set (generation @gen) that @hp matches, or
 * -1. Four lookups, each narrowing the mask; a miss ends it.
 */
static __noinline int host_first(const struct host_pkt *hp, __u32 gen, __u32 set)
{
	__u32 addr_bits = hp->family == DP_AF_INET ? 32 : 128;
	struct host_key k;
	__u64 m;

	k.gen = gen;
	k.set = set;
	addr_copy(k.data, hp->saddr);
	m = host_lookup(&k, HK_SRC_NET, hp->family, addr_bits);
	if (!m)
		return -1;
	addr_copy(k.data, hp->daddr);
	m &= host_lookup(&k, HK_DST_NET, hp->family, addr_bits);
	if (!m)
		return -1;
	k.data[0] = hp->sport;
	k.data[1] = 0;
	k.data[2] = 0;
	k.data[3] = 0;
	m &= host_lookup(&k, HK_SRC_PORT, hp->proto, 16);
	if (!m)
		return -1;
	k.data[0] = hp->dport;
	m &= host_lookup(&k, HK_DST_PORT, hp->proto, 16);
	if (!m)
		return -1;
	return (gen * HS_GEN_RULES + set * HS_RULES + host_lowest(m)) & (HS_RULE_SLOTS - 1);
}

/* Whether @hp's (protocol, destination port) is a failsafe of direction @dir (0 in, 1 out). */
static __always_inline int host_failsafe(const struct host_pkt *hp, __u32 gen, __u8 dir)
{
	struct host_key k;

	__builtin_memset(&k, 0, sizeof(k));
	k.gen = gen;
	k.set = dir;
	k.data[0] = hp->dport;
	return host_lookup(&k, HK_FAILSAFE, hp->proto, 16) != 0;
}

/* The action of rule @idx (a host_first() result). */
static __always_inline __u32 host_action(int idx)
{
	__u32 i = idx;
	__u32 *a = bpf_map_lookup_elem(&dp_host_rules, &i);

	return a ? *a : HA_NONE;
}

/* Counts a drop by rule @idx (dp_host_drops, dp_stats, dp_drops) and reports it at @point. */
static __always_inline void host_count_drop(const struct host_pkt *hp, int idx, __u32 ifindex,
					    __u32 point)
{
	struct flow_event *e;
	__u32 i = idx;
	__u64 *n = bpf_map_lookup_elem(&dp_host_drops, &i);

	if (n)
		*n += 1;
	stat_inc(STAT_DROPPED);
	e = ev_reserve(ifindex, 0, 0,
		       EV_META(EV_KIND_DROP, EV_VERDICT_POLICY_DENIED, DR_POLICY, point,
			       EV_DIR_UNKNOWN),
		       hp->family, hp->proto, hp->tcp_flags, hp->saddr, hp->daddr, hp->sport,
		       hp->dport);
	if (e)
		ev_submit(e);
}

/*
 * Stage 2 (and 1) of one direction: HOST_DROP, HOST_UNTRACKED or HOST_GO_ON.
 * @to_host: the packet is for (inbound) / from (outbound) one of the node's addresses.
 */
static __always_inline int host_untracked(const struct host_pkt *hp, __u32 gen, __u32 flags,
					  __u32 set, __u32 ifindex, __u32 point)
{
	int idx;

	if (!(flags & (1 << set)))
		return HOST_GO_ON;
	idx = host_first(hp, gen, set);
	if (idx < 0)
		return HOST_GO_ON;
	if (host_action(idx) == HA_DENY) {
		host_count_drop(hp, idx, ifindex, point);
		return HOST_DROP;
	}
	return HOST_UNTRACKED;
}

/* @hp from a parsed skb packet (@ret: parse_packet()'s result). */
static __always_inline void host_pkt_of(struct host_pkt *hp, const struct pkt *p, int ret)
{
	addr_copy(hp->saddr, p->saddr);
	addr_copy(hp->daddr, p->daddr);
	hp->family = p->family;
	hp->proto = p->proto;
	hp->pad = 0;
	if (ret > 0 || p->opaque == PKT_EXT) {
		hp->sport = p->sport;
		hp->dport = p->dport;
		hp->tcp_flags = p->tcp_flags;
	} else {
		hp->sport = 0;
		hp->dport = 0;
		hp->tcp_flags = 0;
	}
}

/*
 * Whether @hp (inbound) is a reply, or a later packet, of a connection our conntrack knows:
 * those passed pre-DNAT policy with their first packet (Calico accepts established traffic
 * before its pre-DNAT chains).
 */
static __always_inline int host_known(const struct pkt *p)
{
	struct ct_key k;

	ct_key_from_pkt(&k, p);
	return bpf_map_lookup_elem(&dp_ct, &k) != NULL;
}

/**
 * host_from_uplink() - host policy for a packet arriving on the uplink (TC ingress), before
 * conntrack and translation. Returns HOST_DROP, HOST_UNTRACKED or HOST_GO_ON.
 */
static __noinline int host_from_uplink(struct __sk_buff *skb)
{
	struct host_pkt hp;
	struct pkt p;
	__u32 flags;
	__u32 gen;
	int ret;
	int idx;

	gen = host_gen(&flags);
	if (!(flags & HC_F_ON))
		return HOST_GO_ON;
	ret = parse_packet(skb, &p);
	if (ret < 0 || !p.family)
		return HOST_GO_ON;
	host_pkt_of(&hp, &p, ret);
	if ((cidr_bits(&p, p.daddr) & CIDR_F_NODE) && host_failsafe(&hp, gen, 0))
		return HOST_GO_ON;
	ret = host_untracked(&hp, gen, flags, HS_UNTRACKED_IN, skb->ifindex, PT_FROM_UPLINK);
	if (ret != HOST_GO_ON)
		return ret;
	if (!(flags & (1 << HS_PREDNAT_IN)) || host_known(&p))
		return HOST_GO_ON;
	idx = host_first(&hp, gen, HS_PREDNAT_IN);
	if (idx >= 0 && host_action(idx) == HA_DENY) {
		host_count_drop(&hp, idx, skb->ifindex, PT_FROM_UPLINK);
		return HOST_DROP;
	}
	return HOST_GO_ON;
}

/**
 * host_to_uplink() - host policy for a packet leaving by the uplink (TC egress): the node's
 * own packets (from one of its addresses; forwarded ones meet no untracked policy), before
 * masquerade and translation. Returns HOST_DROP, HOST_UNTRACKED or HOST_GO_ON.
 */
static __noinline int host_to_uplink(struct __sk_buff *skb)
{
	struct host_pkt hp;
	struct pkt p;
	__u32 flags;
	__u32 gen;
	int ret;

	gen = host_gen(&flags);
	if (!(flags & HC_F_ON) || !(flags & (1 << HS_UNTRACKED_OUT)))
		return HOST_GO_ON;
	ret = parse_packet(skb, &p);
	if (ret < 0 || !p.family || !(cidr_bits(&p, p.saddr) & CIDR_F_NODE) ||
	    is_local(&p, p.daddr))
		return HOST_GO_ON;
	host_pkt_of(&hp, &p, ret);
	if (host_failsafe(&hp, gen, 1))
		return HOST_GO_ON;
	return host_untracked(&hp, gen, flags, HS_UNTRACKED_OUT, skb->ifindex, PT_TO_UPLINK);
}

#endif
