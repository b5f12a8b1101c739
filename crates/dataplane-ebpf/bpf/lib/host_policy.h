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
 *      Allow skips the normal policies;
 *   then dp_handle() (service translation, NetworkPolicy) as without host policy, then
 *   4. normal rules on the translated packet (host_after()), for the first packet of a
 *      connection: inbound, the ingress rules (of applyOnForward policies only when it is
 *      not for one of the node's addresses) and, when it leaves the node again, the egress
 *      rules of applyOnForward policies; outbound, the egress rules (applyOnForward ones only
 *      for packets the node forwards, with the source before any SNAT of ours: a pod's
 *      address and port, from the reverse dp_ct entry). First match decides; no match
 *      drops when a policy of those applies to the direction (default deny). A connection
 *      let through (by any stage but an untracked Allow) goes into dp_host_ct with its
 *      tuples both ways, before and after translation: its later packets and its replies
 *      skip stages 3 and 4.
 *
 * Where it runs: host_xdp() first in dp_xdp_uplink (stage 2's ingress denies at XDP: a
 * flood from a blocked prefix costs no skb), host_from_uplink() first in dp_from_uplink (all
 * of 1-3 inbound: alone when XDP is not attached, again after XDP otherwise, which decides
 * the same way), host_to_uplink() first in dp_to_uplink (1-2 for the node's own packets),
 * host_after() after dp_handle() in both (4, and the connection's dp_host_ct entries).
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

/* skb->cb[CB_HOST] (common.h): what host_after() owes the packet (dp_handle() clears it for
 * its own answers: rejects, fragmentation needed) */
#define HOST_AFTER_NONE 0  /* nothing: no host policy, or a known connection */
#define HOST_AFTER_TRACK 1 /* allowed early (failsafe, pre-DNAT Allow): track it */
#define HOST_AFTER_JUDGE 2 /* the normal policies judge it after translation */

/* The normal stage drops with no rule: default deny (host_count_drop() counts no rule) */
#define HOST_DEFAULT_DENY HS_RULE_SLOTS

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

/* The active generation's configuration (NULL: none). */
static __always_inline struct host_cfg *host_cfg_of(__u32 gen)
{
	__u32 idx = 1 + (gen & 1);

	return bpf_map_lookup_elem(&dp_host_cfg, &idx);
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

/* The dp_host_rules index of the lowest rule in @m (not 0), a mask of @set's rules. */
static __always_inline int host_rule_index(__u32 gen, __u32 set, __u64 m)
{
	return (gen * HS_GEN_RULES + set * HS_RULES + host_lowest(m)) & (HS_RULE_SLOTS - 1);
}

/* The mask of @set's rules whose source nets hold @hp's source; fills @k but for its data. */
static __always_inline __u64 host_src_mask(struct host_key *k, const struct host_pkt *hp,
					   __u32 gen, __u32 set)
{
	k->gen = gen;
	k->set = set;
	addr_copy(k->data, hp->saddr);
	return host_lookup(k, HK_SRC_NET, hp->family, hp->family == DP_AF_INET ? 32 : 128);
}

/*
 * The dp_host_rules index of the first rule of @set (generation @gen) among @only that @hp
 * matches, or -1. Four lookups, each narrowing the mask; a miss ends it (the source first:
 * a packet from a source no rule names costs one lookup).
 */
static __noinline int host_first(const struct host_pkt *hp, __u32 gen, __u32 set, __u64 only)
{
	__u32 addr_bits = hp->family == DP_AF_INET ? 32 : 128;
	struct host_key k;
	__u64 m;

	m = host_src_mask(&k, hp, gen, set);
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
	m &= only;
	if (!m)
		return -1;
	return host_rule_index(gen, set, m);
}

/*
 * host_first() for a set whose rules match on source nets alone (HC_F_SRC_ONLY_IN, for
 * HS_UNTRACKED_IN): every rule of it is in the catch-all prefix of the other three parts,
 * whose lookups would each give the whole set, so the source lookup's mask is the answer.
 * One lookup (XDP: a flood from a blocked prefix is decided by it).
 */
static __always_inline int host_first_src(const struct host_pkt *hp, __u32 gen, __u32 set)
{
	struct host_key k;
	__u64 m = host_src_mask(&k, hp, gen, set);

	return m ? host_rule_index(gen, set, m) : -1;
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
	__u64 *n = idx < HOST_DEFAULT_DENY ? bpf_map_lookup_elem(&dp_host_drops, &i) : NULL;

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
	idx = host_first(hp, gen, set, ~0ULL);
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
	return bpf_map_lookup_elem(&dp_ct, &k) || bpf_map_lookup_elem(&dp_host_ct, &k);
}

/*
 * Whether the normal stage owes @p a verdict: HOST_AFTER_NONE when dp_host_ct knows its
 * connection (refreshed), else @after with the tuple saved for host_after() (@own: sent by
 * the node itself).
 */
static __always_inline __u32 host_defer(const struct pkt *p, __u32 flags, __u32 after,
					__u32 own)
{
	struct host_scratch *s;
	__u64 *seen;
	__u32 zero = 0;

	if (!(flags & HC_F_NORMAL))
		return HOST_AFTER_NONE;
	s = bpf_map_lookup_elem(&dp_host_scratch, &zero);
	if (!s)
		return HOST_AFTER_NONE;
	ct_key_from_pkt(&s->arrived, p);
	seen = bpf_map_lookup_elem(&dp_host_ct, &s->arrived);
	if (seen) {
		*seen = bpf_ktime_get_ns();
		return HOST_AFTER_NONE;
	}
	s->own = own;
	/* A TCP packet without SYN belongs to a connection that was there before the normal
	 * policies came: picked up as established and tracked, as netfilter's conntrack does by
	 * default (nf_conntrack_tcp_loose), so that sessions outlive a policy change. A SYN
	 * (a new connection) and a SYN-ACK (an answer to one, e.g. to a SYN an untracked Allow
	 * let in: it needs a rule of its own) are judged. */
	if (after == HOST_AFTER_JUDGE && p->proto == IPPROTO_TCP && !(p->tcp_flags & TCPF_SYN))
		return HOST_AFTER_TRACK;
	return after;
}

/* Tracks a connection: @k and its reverse into dp_host_ct. */
static __always_inline void host_ct_put(struct ct_key *k)
{
	__u64 now = bpf_ktime_get_ns();
	__u32 a[4];
	__be16 port;

	bpf_map_update_elem(&dp_host_ct, k, &now, BPF_ANY);
	addr_copy(a, k->saddr);
	addr_copy(k->saddr, k->daddr);
	addr_copy(k->daddr, a);
	port = k->sport;
	k->sport = k->dport;
	k->dport = port;
	bpf_map_update_elem(&dp_host_ct, k, &now, BPF_ANY);
}

/*
 * One leg of the normal stage: 0 when @set's rules (only those of applyOnForward policies
 * when @fwd) let @hp through, else what dropped it (1 + its rule, or 1 + HOST_DEFAULT_DENY).
 */
static __always_inline int host_leg(const struct host_pkt *hp, __u32 gen,
				    const struct host_cfg *c, __u32 set, int fwd)
{
	__u32 def = set == HS_NORMAL_IN ? (fwd ? HC_F_DEF_IN_FWD : HC_F_DEF_IN)
				       : (fwd ? HC_F_DEF_OUT_FWD : HC_F_DEF_OUT);
	__u64 only = ~0ULL;
	int idx;

	/* No policy applies: open (no rule can match either). */
	if (!(c->flags & def))
		return 0;
	if (fwd)
		only = set == HS_NORMAL_IN ? c->fwd_in : c->fwd_out;
	idx = host_first(hp, gen, set, only);
	if (idx < 0)
		return 1 + HOST_DEFAULT_DENY;
	return host_action(idx) == HA_ALLOW ? 0 : 1 + idx;
}

/* The dp_ct entry under the key of a reply to @p (as it leaves, translated or not): the
 * connection's reverse entry when this datapath source-NATed it, its forward entry when @p is
 * a reply it reverse-translated. NULL: none. */
static __always_inline struct ct_entry *host_reply_entry(const struct pkt *p)
{
	struct ct_key k;

	ct_reply_key(&k, p, p->daddr, p->dport);
	return bpf_map_lookup_elem(&dp_ct, &k);
}

/*
 * A forwarded TCP/UDP packet @p leaving with a node address as its source because this
 * datapath source-NATed its connection on the way through (a pod's service connection
 * dp_from_pod translated with SNAT, or a pod's connection masquerade() translated): @hp gets
 * the source the reverse entry keeps, the pod's address and port, which netfilter's FORWARD
 * chain (where Calico's applyOnForward policies run) judges, before SNAT in POSTROUTING.
 */
static __always_inline void host_orig_source(struct host_pkt *hp, const struct pkt *p)
{
	struct ct_entry *e;

	if (!(cidr_bits(p, p->saddr) & CIDR_F_NODE))
		return;
	e = host_reply_entry(p);
	if (!e || !ct_is_rev(e) || (cidr_bits(p, e->snat_addr) & CIDR_F_NODE))
		return;
	addr_copy(hp->saddr, e->snat_addr);
	hp->sport = e->snat_port;
}

/**
 * host_after() - the normal stage, on the packet as dp_handle() left it (translated), for a
 * packet host_from_uplink() (@ingress) or host_to_uplink() deferred (skb->cb[CB_HOST]);
 * then the connection's dp_host_ct entries. Returns 1 when the packet is to be dropped
 * (counted and reported), else 0.
 */
static __noinline int host_after(struct __sk_buff *skb, int ingress)
{
	struct host_scratch *s;
	struct host_cfg *c;
	struct host_pkt hp;
	struct ct_key k;
	struct pkt p;
	__u32 zero = 0;
	__u32 flags;
	__u32 gen;
	int drop = 0;
	int ret;

	s = bpf_map_lookup_elem(&dp_host_scratch, &zero);
	gen = host_gen(&flags);
	c = host_cfg_of(gen);
	if (!s || !c)
		return 0;
	ret = parse_packet(skb, &p);
	if (ret < 0 || !p.family)
		return 0;
	host_pkt_of(&hp, &p, ret);
	if (skb->cb[CB_HOST] == HOST_AFTER_JUDGE) {
		int local = is_local(&p, p.daddr);

		/* The client as it sent the packet, the destination as translated (a source NAT
		 * came with the DNAT in lb_forward(); netfilter's FORWARD chain, where Calico's
		 * policies run, sees the packet after DNAT and before SNAT). */
		addr_copy(hp.saddr, s->arrived.saddr);
		hp.sport = s->arrived.sport;
		if (ingress) {
			drop = host_leg(&hp, gen, c, HS_NORMAL_IN,
					!(cidr_bits(&p, p.daddr) & CIDR_F_NODE));
			if (!drop && !local)
				drop = host_leg(&hp, gen, c, HS_NORMAL_OUT, 1);
		} else if (!local) {
			if (!s->own && ret > 0)
				host_orig_source(&hp, &p);
			drop = host_leg(&hp, gen, c, HS_NORMAL_OUT, !s->own);
		}
		if (drop) {
			host_count_drop(&hp, drop - 1, skb->ifindex,
					ingress ? PT_FROM_UPLINK : PT_TO_UPLINK);
			return 1;
		}
	}
	host_ct_put(&s->arrived);
	ct_key_from_pkt(&k, &p);
	host_ct_put(&k);
	return 0;
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

	skb->cb[CB_HOST] = HOST_AFTER_NONE;
	gen = host_gen(&flags);
	if (!(flags & HC_F_ON))
		return HOST_GO_ON;
	ret = parse_packet(skb, &p);
	if (ret < 0 || !p.family)
		return HOST_GO_ON;
	host_pkt_of(&hp, &p, ret);
	if ((cidr_bits(&p, p.daddr) & CIDR_F_NODE) && host_failsafe(&hp, gen, 0)) {
		skb->cb[CB_HOST] = host_defer(&p, flags, HOST_AFTER_TRACK, 0);
		return HOST_GO_ON;
	}
	ret = host_untracked(&hp, gen, flags, HS_UNTRACKED_IN, skb->ifindex, PT_FROM_UPLINK);
	if (ret != HOST_GO_ON)
		return ret;
	if ((flags & (1 << HS_PREDNAT_IN)) && !host_known(&p)) {
		idx = host_first(&hp, gen, HS_PREDNAT_IN, ~0ULL);
		if (idx >= 0 && host_action(idx) == HA_DENY) {
			host_count_drop(&hp, idx, skb->ifindex, PT_FROM_UPLINK);
			return HOST_DROP;
		}
		if (idx >= 0) {
			skb->cb[CB_HOST] = host_defer(&p, flags, HOST_AFTER_TRACK, 0);
			return HOST_GO_ON;
		}
	}
	skb->cb[CB_HOST] = host_defer(&p, flags, HOST_AFTER_JUDGE, 0);
	return HOST_GO_ON;
}

#define HOST_XLATED_NONE 0 /* not translated by this datapath */
#define HOST_XLATED_FWD 1  /* translated on its way through the node: forwarded */
#define HOST_XLATED_OWN 2  /* the node's own connection, translated (a service it dialled) */

/*
 * How @p, leaving with a node address as its source, was translated by this datapath:
 * HOST_XLATED_FWD for a service connection from elsewhere, source NAT to the node address
 * (its reply's tuple is a reverse conntrack entry whose original client is not the node),
 * or the reply of one, reverse-translated to come from the frontend on the node (a
 * NodePort's local backend answering: its reply's tuple is the connection's forward entry)
 * — forwarded, not the node's own: netfilter's raw and filter output hooks never see it.
 * HOST_XLATED_OWN for the node's own connection to a service frontend (the reverse entry's
 * original client is a node address: netfilter's nat output translates it, filter output
 * judges it as the node's own). HOST_XLATED_NONE otherwise.
 */
static __always_inline int host_translated(const struct pkt *p)
{
	struct ct_entry *e = host_reply_entry(p);

	if (!e)
		return HOST_XLATED_NONE;
	if (ct_is_fwd(e))
		return HOST_XLATED_FWD;
	if (!ct_is_rev(e))
		return HOST_XLATED_NONE;
	return (cidr_bits(p, e->snat_addr) & CIDR_F_NODE) ? HOST_XLATED_OWN : HOST_XLATED_FWD;
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
	__u32 own;
	__u32 gen;
	int xlated;
	int ret;

	skb->cb[CB_HOST] = HOST_AFTER_NONE;
	gen = host_gen(&flags);
	if (!(flags & HC_F_ON) || !(flags & ((1 << HS_UNTRACKED_OUT) | HC_F_NORMAL)))
		return HOST_GO_ON;
	ret = parse_packet(skb, &p);
	if (ret < 0 || !p.family || is_local(&p, p.daddr))
		return HOST_GO_ON;
	xlated = (cidr_bits(&p, p.saddr) & CIDR_F_NODE) ? host_translated(&p) : HOST_XLATED_FWD;
	own = xlated != HOST_XLATED_FWD;
	/* Failsafe ports and untracked rules judge the node's own packets as they leave it,
	 * before any translation: a connection this datapath translated already met them
	 * (a frontend on the node's own address goes by lo, where they do not apply). */
	if (xlated == HOST_XLATED_NONE) {
		host_pkt_of(&hp, &p, ret);
		if (host_failsafe(&hp, gen, 1)) {
			skb->cb[CB_HOST] = host_defer(&p, flags, HOST_AFTER_TRACK, 1);
			return HOST_GO_ON;
		}
		ret = host_untracked(&hp, gen, flags, HS_UNTRACKED_OUT, skb->ifindex,
				     PT_TO_UPLINK);
		if (ret != HOST_GO_ON)
			return ret;
	}
	skb->cb[CB_HOST] = host_defer(&p, flags, HOST_AFTER_JUDGE, !!own);
	return HOST_GO_ON;
}

#endif
