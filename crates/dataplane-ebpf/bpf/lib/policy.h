/* SPDX-License-Identifier: Apache-2.0 */
/*
 * policy.h - NetworkPolicy at the pods' veths.
 *
 *   pod --veth--> [dp_from_pod]  egress of the pod: after service translation, against the
 *                                backend chosen and its port, from the pod's own address
 *   pod <--veth-- [dp_to_pod]    ingress of the pod: TC egress of the host-side veth, which
 *                                the stack's forwarding and TC's redirects to the veth pass
 *                                (XDP never redirects into a veth: xdp_route(); nothing
 *                                here uses bpf_redirect_peer, which would skip it)
 *
 * A connection is checked on its first packet at each of this node's pods it touches; an
 * allowed one gets dp_pol_ct entries (its key and its reply's), and later packets that find
 * them pass without a policy lookup, also after a policy change (the lead's rule, as
 * netfilter's `ct state established,related accept`). The entries carry which side approved
 * the connection (POLCT_*), as Calico's conntrack legs carry `approved` per side
 * (felix/bpf-gpl/conntrack.h, calico_ct_lookup: a packet passes when the leg of this
 * endpoint approved it, else it goes to policy). A TCP SYN (no ACK) is checked again even
 * when it finds an entry: a SYN reusing a tuple starts a new connection. (Calico sends a SYN
 * to policy when the entry is closed both ways, tcp_recycled(), or not approved by this
 * side; we re-check every SYN, a retransmitted one included: the same answer, one more
 * lookup.)
 *
 * The fixed rules come first: the node and its pods may always talk (kubelet probes), a pod
 * may reach itself. Then the tables (see maps.h): Cilium's layout in spirit (ipcache:
 * address -> identity; policy map keyed by identity, direction, protocol and port with port
 * ranges as LPM prefixes, bpf/lib/policy.h), with Calico's ipsets as the identities: an
 * address carries the numbers of the peer sets it is in (felix/bpf/ipsets), and ipBlocks are a
 * per-endpoint LPM (Calico compiles CIDRs into its ipset LPM as well).
 *
 * Cluster policies and the baseline (the AdminNetworkPolicy model) wrap that: pol_decide()
 * asks the cluster tier first (Allow and Deny final, Pass or no match go on), NetworkPolicy
 * for an endpoint it isolates, the baseline for one it does not. The tiers are compiled in
 * user space into the same shape (dataplane_core::policy_tables::compile_tiers): per endpoint,
 * direction, peer number and port prefix the verdict of the first rule in evaluation order
 * that covers it (dp_pol_tiers), so a new connection costs the same lookups again, never a
 * loop over rules. Calico's eBPF dataplane instead generates one policy program per endpoint
 * that walks each tier's rules in order, a "pass" jumping to the tier's end label
 * (felix/bpf/polprog/pol_prog_builder.go, writeTiers): per-rule instructions, which cost more
 * the more rules select the pod; Cilium has no ordered tiers (a deny wins over any allow).
 */
#ifndef DP_POLICY_H
#define DP_POLICY_H

#include "common.h"
#include "parse.h"
#include "ct.h"
#include "echo.h"
#include "events.h"

/* ICMP types (linux/icmp.h and linux/icmpv6.h do not build for -target bpf). */
#define POL_ICMP_SOURCE_QUENCH 4
#define POL_ICMP_REDIRECT 5
#define POL_ICMP_TIME_EXCEEDED 11
#define POL_ICMP_PARAMETERPROB 12
#define POL_ICMPV6_ND_FIRST 133 /* router solicitation .. redirect (133-137) */
#define POL_ICMPV6_ND_LAST 137

/* What dp_to_pod pulls into the linear data when the headers are not all there: Ethernet,
 * the largest IPv4 header and a TCP header with options. */
#define PARSE_PULL_LEN (14 + 60 + 60)

/* pol_check()'s @how: the direction, and this bit for a packet whose key is no connection's
 * to track (one argument: a BPF subprogram takes at most five): a non-first fragment (no
 * ports), or a pod's egress packet behind IPv6 extension headers, which translation leaves
 * alone — its key is the one a translated connection on that tuple would be approved under
 * (judged against the backend), so its own approval, judged against the untranslated
 * destination, must not stand in for that check. */
#define POL_CHECK_UNTRACKED 0x80
/* ... and this bit on ingress for a packet the host itself sent (its skb was never received
 * on an interface: skb->ingress_ifindex is 0; dp_to_lo's redirects keep that): only such a
 * packet from a node address is the node. */
#define POL_CHECK_FROM_HOST 0x40

/* What pol_tables() looks up. */
struct pol_query {
	__u32 peer[4]; /* the peer's address (the client on ingress, the server on egress) */
	__u32 ep_id;   /* the local endpoint */
	__be16 port;   /* destination port */
	__u8 dir;      /* POL_DIR_* */
	__u8 proto;
	__u8 family;
	__u8 pad[3];
};

static __always_inline struct pol_addr *pol_addr_of(const __u32 *addr, __u8 family)
{
	struct local_key k;

	__builtin_memset(&k, 0, sizeof(k));
	addr_copy(k.addr, addr);
	k.family = family;
	return bpf_map_lookup_elem(&dp_pol_addr, &k);
}

/* Whether a rule of @q's endpoint and direction allows @peer (a peer number) on @q's
 * protocol and port: one LPM lookup answers every-protocol, every-port and port-range rules. */
static __always_inline int pol_rule_hit(const struct pol_query *q, __u32 peer)
{
	struct pol_rule_key k;

	__builtin_memset(&k, 0, sizeof(k));
	k.prefixlen = 96;
	k.ep_id = q->ep_id;
	k.peer = peer;
	k.dir = q->dir;
	k.proto = q->proto;
	k.port = q->port;
	return bpf_map_lookup_elem(&dp_pol_rules, &k) != NULL;
}

/* The group of @q's peer in dp_pol_blocks under direction @dir (the longest prefix of the
 * endpoint's ipBlocks, or with POL_DIR_TIERS of its cluster and baseline `networks`): 0 for
 * none (no prefix, or an except). */
static __always_inline __u32 pol_block_group(const struct pol_query *q, __u8 dir)
{
	struct pol_block_key bk;
	__u32 *group;

	__builtin_memset(&bk, 0, sizeof(bk));
	bk.ep_id = q->ep_id;
	bk.dir = dir;
	bk.family = q->family;
	if (q->family == DP_AF_INET) {
		bk.addr[2] = bpf_htonl(0xffff);
		bk.addr[3] = q->peer[0];
	} else {
		addr_copy(bk.addr, q->peer);
	}
	bk.prefixlen = 64 + 128;
	group = bpf_map_lookup_elem(&dp_pol_blocks, &bk);
	return group ? *group : 0;
}

/* The tables' answer for @q (@peer: the peer's dp_pol_addr entry, NULL when it has none):
 * "any", each set the peer is in, then the longest ipBlock prefix. */
static __noinline int pol_tables(const struct pol_query *q, const struct pol_addr *peer)
{
	__u32 group;

	if (pol_rule_hit(q, POL_PEER_ANY))
		return 1;
	if (peer) {
		__u32 n = peer->nsets;

		for (__u32 i = 0; i < POL_SETS_MAX; i++) {
			if (i >= n)
				break;
			if (pol_rule_hit(q, peer->sets[i]))
				return 1;
		}
	}
	group = pol_block_group(q, q->dir);
	return group && pol_rule_hit(q, group);
}

/* Folds @peer's dp_pol_tiers entry for @q (if any) into @best: per tier, the lowest order. */
static __always_inline void pol_tier_hit(const struct pol_query *q, __u32 peer,
					 struct pol_tier *best)
{
	struct pol_rule_key k;
	struct pol_tier *t;

	__builtin_memset(&k, 0, sizeof(k));
	k.prefixlen = 96;
	k.ep_id = q->ep_id;
	k.peer = peer;
	k.dir = q->dir;
	k.proto = q->proto;
	k.port = q->port;
	t = bpf_map_lookup_elem(&dp_pol_tiers, &k);
	if (!t)
		return;
	if (t->cluster != POL_TIER_NONE && t->cluster_order < best->cluster_order) {
		best->cluster_order = t->cluster_order;
		best->cluster = t->cluster;
	}
	if (t->baseline != POL_TIER_NONE && t->baseline_order < best->baseline_order) {
		best->baseline_order = t->baseline_order;
		best->baseline = t->baseline;
	}
}

/*
 * pol_tiers() - the cluster tier's and the baseline's answer for @q (@peer: the peer's
 * dp_pol_addr entry, NULL when it has none), into @best: per tier the action of the matching
 * rule of lowest order (the AdminNetworkPolicy's "first match by priority, then rule order";
 * dataplane_core::policy's cluster_tier and baseline_tier). The same lookups as
 * pol_tables(): each set the peer is in, then the longest `networks` prefix's group. A rule
 * is never "any peer" here (a cluster rule has at least one peer).
 */
static __noinline int pol_tiers(const struct pol_query *q, const struct pol_addr *peer,
				struct pol_tier *best)
{
	__u32 group;

	best->cluster_order = 0xffffffff;
	best->baseline_order = 0xffffffff;
	best->cluster = POL_TIER_NONE;
	best->baseline = POL_TIER_NONE;
	if (peer) {
		__u32 n = peer->nsets;

		for (__u32 i = 0; i < POL_SETS_MAX; i++) {
			if (i >= n)
				break;
			pol_tier_hit(q, peer->sets[i], best);
		}
	}
	group = pol_block_group(q, q->dir | POL_DIR_TIERS);
	if (group)
		pol_tier_hit(q, group, best);
	return 0;
}

/*
 * pol_decide() - the verdict of one direction for @q, the tiers in the reference's order
 * (dataplane_core::policy, Connection::decide): a cluster Allow or Deny is final; otherwise
 * (no match, Pass) NetworkPolicy decides for an endpoint it isolates (@flags: the endpoint's
 * POL_F_*), and for one it does not, a baseline Deny denies; anything else is allowed.
 * Returns 1 (allowed) or 0.
 */
static __noinline int pol_decide(const struct pol_query *q, const struct pol_addr *peer,
				 __u8 flags)
{
	__u8 iso = q->dir == POL_DIR_EGRESS ? POL_F_ISO_EGRESS : POL_F_ISO_INGRESS;
	__u8 tiers = q->dir == POL_DIR_EGRESS ? POL_F_TIERS_EGRESS : POL_F_TIERS_INGRESS;
	struct pol_tier best = {};

	if (flags & tiers) {
		pol_tiers(q, peer, &best);
		if (best.cluster == POL_TIER_ALLOW)
			return 1;
		if (best.cluster == POL_TIER_DENY)
			return 0;
	}
	if (flags & iso)
		return pol_tables(q, peer);
	return best.baseline != POL_TIER_DENY;
}

/* The key of the replies of the connection whose key is @k. */
static __always_inline void pol_reply_key(struct ct_key *r, const struct ct_key *k)
{
	__builtin_memset(r, 0, sizeof(*r));
	addr_copy(r->saddr, k->daddr);
	addr_copy(r->daddr, k->saddr);
	r->sport = k->dport;
	r->dport = k->sport;
	r->proto = k->proto;
	r->family = k->family;
}

static __always_inline __u8 pol_tcp_bits(__u8 proto, __u8 tcp_flags)
{
	__u8 bits = 0;

	/* SCTP: parse.h sctp_flags() gives its chunks TCP's flags. */
	if (proto != IPPROTO_TCP && proto != IPPROTO_SCTP)
		return 0;
	if (tcp_flags & TCPF_SYN)
		bits |= CT_TCP_SYN;
	if (tcp_flags & TCPF_FIN)
		bits |= CT_TCP_FIN_FWD;
	if (tcp_flags & TCPF_RST)
		bits |= CT_TCP_RST;
	if (proto == IPPROTO_SCTP && (tcp_flags & SCTPF_COOKIE_ACK))
		bits |= CT_SCTP_ESTAB;
	return bits;
}

/* A packet found entry @e: refresh it (at most once a second, as conntrack's replies do, see
 * CT_FWD_REFRESH_NS) and note new TCP state. */
static __always_inline void pol_ct_touch(struct pol_ct *e, __u8 proto, __u8 tcp_flags)
{
	__u8 bits = pol_tcp_bits(proto, tcp_flags) | CT_TCP_REPLY;
	__u64 now = bpf_ktime_get_ns();

	if (now - e->last_seen_ns > CT_FWD_REFRESH_NS)
		e->last_seen_ns = now;
	if ((e->tcp_state & bits) != bits)
		e->tcp_state |= bits;
}

/* Marks @k with @bit and its reply key with the matching reply bit, creating the entries
 * that are missing. The bits are ORed without an atomic: two CPUs racing on one new
 * connection can lose a bit, which costs that connection one more policy check. */
static __noinline int pol_track(const struct ct_key *k, __u32 bit, __u8 tcp_flags)
{
	struct pol_ct v = {};
	struct pol_ct *e;
	struct ct_key r;
	__u32 reply_bit = bit == POLCT_EGRESS ? POLCT_REPLY_EGRESS : POLCT_REPLY_INGRESS;

	v.last_seen_ns = bpf_ktime_get_ns();
	e = bpf_map_lookup_elem(&dp_pol_ct, k);
	if (e) {
		e->flags |= bit;
		e->last_seen_ns = v.last_seen_ns;
		e->tcp_state |= pol_tcp_bits(k->proto, tcp_flags);
	} else {
		v.flags = bit;
		v.tcp_state = pol_tcp_bits(k->proto, tcp_flags);
		if (bpf_map_update_elem(&dp_pol_ct, k, &v, BPF_ANY) < 0)
			goto full;
	}
	pol_reply_key(&r, k);
	e = bpf_map_lookup_elem(&dp_pol_ct, &r);
	if (e) {
		e->flags |= reply_bit;
		return 0;
	}
	v.flags = reply_bit;
	v.tcp_state = 0;
	if (bpf_map_update_elem(&dp_pol_ct, &r, &v, BPF_ANY) < 0)
		goto full;
	return 0;
full:
	/* Allowed all the same: the connection's next packets are checked again. */
	stat_inc(STAT_CT_FULL);
	return 0;
}

/*
 * The client of a connection that this node translated and masqueraded to one of its
 * addresses on its way to the pod (@k: the packet to the pod), from the connection's
 * reverse entry (keyed by the pod's reply; snat_addr is the client as it sent the packet):
 * copied to @client. Returns 0 when there is none (the node's own connection).
 */
static __noinline int pol_snat_client(const struct ct_key *k, __u32 *client)
{
	struct ct_entry *rev;
	struct ct_key r;

	pol_reply_key(&r, k);
	rev = bpf_map_lookup_elem(&dp_ct, &r);
	if (!rev || !ct_is_rev(rev) || !(rev->flags & CT_F_SNAT))
		return 0;
	addr_copy(client, rev->snat_addr);
	return 1;
}

/**
 * pol_check() - NetworkPolicy for a packet at a pod's veth.
 * @k: the packet's tuple as the pod sees it (its key in dp_pol_ct)
 * @peer: the peer's address: on egress the destination after service translation, on
 *        ingress the source
 * @port: the destination port after service translation (on ingress: k->dport)
 * @tcp_flags: the packet's TCP flags (0 for other protocols)
 * @how: POL_DIR_EGRESS (k->saddr is the local endpoint) or POL_DIR_INGRESS (k->daddr is),
 *       with POL_CHECK_UNTRACKED for a packet whose key is no connection's (see its define)
 *       and POL_CHECK_FROM_HOST for one the host sent
 *
 * Returns 1 (a new connection the endpoint's policy allowed: NetworkPolicy isolates it or a
 * cluster policy or the baseline selects it), 0 (allowed otherwise: an established one, no
 * local endpoint of this node involved, or one no policy isolates or selects) or
 * DROP_POLICY_DENIED (counted in STAT_POLICY_DENIED).
 */
static __noinline int pol_check(const struct ct_key *k, const __u32 *peer, __be16 port,
				__u8 tcp_flags, __u8 how)
{
	__u8 dir = how & ~(POL_CHECK_UNTRACKED | POL_CHECK_FROM_HOST);
	/* A key that is no connection's (POL_CHECK_UNTRACKED) neither takes nor leaves a
	 * dp_pol_ct shortcut: every such packet is judged by the tables (a non-first fragment
	 * with port 0, which only a rule without ports covers). */
	int noports = how & POL_CHECK_UNTRACKED;
	const __u32 *self = dir == POL_DIR_EGRESS ? k->saddr : k->daddr;
	__u32 ok = dir == POL_DIR_EGRESS ? (POLCT_EGRESS | POLCT_REPLY_INGRESS)
					 : (POLCT_INGRESS | POLCT_REPLY_EGRESS);
	/* The endpoint has a verdict of its own to look up: NetworkPolicy isolates it, or a
	 * cluster policy or the baseline selects it. */
	__u8 iso = dir == POL_DIR_EGRESS ? (POL_F_ISO_EGRESS | POL_F_TIERS_EGRESS)
					 : (POL_F_ISO_INGRESS | POL_F_TIERS_INGRESS);
	int syn = (k->proto == IPPROTO_TCP || k->proto == IPPROTO_SCTP) &&
		  (tcp_flags & (TCPF_SYN | TCPF_ACK)) == TCPF_SYN;
	struct pol_addr *me, *them;
	struct pol_query q;
	struct pol_ct *e;

	me = pol_addr_of(self, k->family);
	if (!me || !me->ep_id)
		return 0;
	e = bpf_map_lookup_elem(&dp_pol_ct, k);
	if (e && (e->flags & ok) && !syn && !noports) {
		pol_ct_touch(e, k->proto, tcp_flags);
		return 0;
	}
	if (me->flags & iso) {
		__builtin_memset(&q, 0, sizeof(q));
		addr_copy(q.peer, peer);
		them = pol_addr_of(q.peer, k->family);
		/* A node address may be a client this node masqueraded on its way here (a
		 * NodePort with SNAT, masquerade.allServices): policy is about the client.
		 * Otherwise it is the node only when the host sent the packet: one from the
		 * uplink or a veth with a node source is forged (our redirects skip the
		 * kernel's martian check, IPv6 has none) or a masqueraded client whose reverse
		 * entry is gone (LRU): neither may pass as the node. */
		if (dir == POL_DIR_INGRESS && them && (them->flags & POL_F_NODE)) {
			if (pol_snat_client(k, q.peer)) {
				them = pol_addr_of(q.peer, k->family);
			} else if (!(how & POL_CHECK_FROM_HOST)) {
				stat_inc(STAT_POLICY_DENIED);
				return DROP_POLICY_DENIED;
			}
		}
		/* Fixed rules: the node and its pods; a pod and itself. */
		if (!them || !((them->flags & POL_F_NODE) || them->ep_id == me->ep_id)) {
			q.ep_id = me->ep_id;
			q.port = port;
			q.dir = dir;
			q.proto = k->proto;
			q.family = k->family;
			if (!pol_decide(&q, them, me->flags)) {
				stat_inc(STAT_POLICY_DENIED);
				return DROP_POLICY_DENIED;
			}
		}
	}
	if (noports)
		return 0;
	pol_track(k, dir == POL_DIR_EGRESS ? POLCT_EGRESS : POLCT_INGRESS, tcp_flags);
	/* A verdict of the endpoint's policy (not the default of an endpoint no policy
	 * isolates): the caller reports it (events.h, CFG_F_EV_POLICY). */
	return (me->flags & iso) ? 1 : 0;
}

/*
 * Policy for a packet that is neither TCP nor UDP (@p from parse_packet()): ICMP/ICMPv6 echo
 * is tracked by its identifier (request: sport, reply: dport, as echo_parse() gives them),
 * anything else by its addresses and protocol (port 0). Behind IPv6 extension headers the
 * real protocol and ports are used (parse_packet() walks them); a non-first fragment has
 * none: pol_check() with POL_CHECK_UNTRACKED, as a pod's own egress packet behind extension
 * headers (see the define). ICMP errors and IPv6 neighbour
 * discovery pass: errors belong to a connection already allowed (they are not matched to it:
 * see the README's limits), and without neighbour discovery an isolated IPv6 pod could not
 * even reach its node.
 */
static __noinline int pol_other(struct __sk_buff *skb, struct pkt *p, __u8 dir)
{
	struct ct_key k;
	__u8 how = dir;
	__u8 type;

	if (dir == POL_DIR_INGRESS && skb->ingress_ifindex == 0)
		how |= POL_CHECK_FROM_HOST;

	if (!p->family)
		return 0;
	/* One pol_check() call site: each one costs the verifier the whole subprogram again. */
	if (p->opaque == PKT_NOPORTS || (p->opaque == PKT_EXT && dir == POL_DIR_EGRESS))
		how |= POL_CHECK_UNTRACKED;
	else if ((p->proto == IPPROTO_ICMP || p->proto == IPPROTO_ICMPV6) && !echo_parse(skb, p)) {
		if (bpf_skb_load_bytes(skb, p->l4_off, &type, 1) < 0)
			return 0;
		if (p->proto == IPPROTO_ICMP &&
		    (type == ICMP_DEST_UNREACH || type == POL_ICMP_SOURCE_QUENCH ||
		     type == POL_ICMP_REDIRECT || type == POL_ICMP_TIME_EXCEEDED ||
		     type == POL_ICMP_PARAMETERPROB))
			return 0;
		if (p->proto == IPPROTO_ICMPV6 &&
		    (type < 128 || (type >= POL_ICMPV6_ND_FIRST && type <= POL_ICMPV6_ND_LAST)))
			return 0;
	}
	ct_key_from_pkt(&k, p);
	return pol_check(&k, dir == POL_DIR_EGRESS ? p->daddr : p->saddr, p->dport, p->tcp_flags,
			 how);
}

/*
 * A pod's TCP packet that reject() answers with a RST (a service without backends): the RST
 * goes back to the pod through its veth's egress, where dp_to_pod would judge it as a new
 * connection from the service address and drop it at an ingress-isolated pod (which then
 * waits for its timeout instead of being refused). Its key is marked as the reply of an
 * approved connection (POLCT_REPLY_EGRESS) first; the pod's own key gets no approval, so its
 * next packets on that tuple are judged as before.
 */
static __noinline void pol_approve_rst(const struct pkt *p)
{
	struct pol_ct v = {};
	struct pol_addr *me;
	struct pol_ct *e;
	struct ct_key k, r;

	me = pol_addr_of(p->saddr, p->family);
	if (!me || !me->ep_id)
		return;
	ct_key_from_pkt(&k, p);
	pol_reply_key(&r, &k);
	e = bpf_map_lookup_elem(&dp_pol_ct, &r);
	if (e) {
		e->flags |= POLCT_REPLY_EGRESS;
		return;
	}
	v.last_seen_ns = bpf_ktime_get_ns();
	v.flags = POLCT_REPLY_EGRESS;
	if (bpf_map_update_elem(&dp_pol_ct, &r, &v, BPF_ANY) < 0)
		stat_inc(STAT_CT_FULL);
}

/*
 * Removes the dp_ct entries lb_forward() has just written for a connection that policy then
 * denied: @k its key as the client sent it, @p its packet as translated (the reverse entry is
 * keyed by its reply).
 */
static __noinline void pol_forget_ct(const struct ct_key *k, const struct pkt *p)
{
	struct ct_key r;

	bpf_map_delete_elem(&dp_ct, k);
	ct_reply_key(&r, p, p->daddr, p->dport);
	bpf_map_delete_elem(&dp_ct, &r);
}

/**
 * dp_handle_to_pod() - TC egress of a pod's host-side veth: the pod's ingress policy, on
 * the packet as the pod will receive it (every translation done).
 */
static __always_inline int dp_handle_to_pod(struct __sk_buff *skb)
{
	struct ct_key k;
	struct pkt p;
	int ret;

	/* The ids an event reports (events.h): none known here. */
	skb->cb[CB_SVC_ID] = 0;
	skb->cb[CB_BACKEND_ID] = 0;
	ret = parse_packet(skb, &p);
	if (ret < 0) {
		/* Headers beyond the skb's linear data (direct access sees only that): pull them
		 * in and parse again. What still does not parse is dropped, not passed unchecked
		 * to a pod that policy may isolate. */
		__u32 len = skb->len < PARSE_PULL_LEN ? skb->len : PARSE_PULL_LEN;

		if (bpf_skb_pull_data(skb, len) == 0)
			ret = parse_packet(skb, &p);
		if (ret < 0) {
			ev_drop_skb(skb, DROP_INVALID, PT_TO_POD);
			return TC_ACT_SHOT;
		}
	}
	if (ret == 0) {
		ret = pol_other(skb, &p, POL_DIR_INGRESS);
	} else {
		ct_key_from_pkt(&k, &p);
		ret = pol_check(&k, p.saddr, p.dport, p.tcp_flags,
				POL_DIR_INGRESS |
					(skb->ingress_ifindex == 0 ? POL_CHECK_FROM_HOST : 0));
	}
	if (ret < 0) {
		stat_inc(STAT_DROPPED);
		ev_pkt(skb, &p, EV_META(EV_KIND_DROP, EV_VERDICT_POLICY_DENIED, DR_POLICY, PT_TO_POD,
					EV_DIR_ORIGINAL));
		return TC_ACT_SHOT;
	}
	if (ret > 0)
		ev_pkt(skb, &p, EV_META(EV_KIND_POLICY, EV_VERDICT_FORWARDED, DR_NONE, PT_TO_POD,
					EV_DIR_ORIGINAL));
	return TC_ACT_OK;
}

#endif
