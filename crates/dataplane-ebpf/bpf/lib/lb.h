/* SPDX-License-Identifier: Apache-2.0 */
/*
 * lb.h - the per-packet service logic shared by every packet hook (translation, reverse NAT,
 * masquerade); service lookup, backend selection and affinity are in svc.h.
 *
 * Which backends are eligible (ready, terminating fallback, traffic policy Local) is decided in
 * user space: each frontend entry points at a range of dp_slots holding only eligible backends,
 * repeated by weight (random) or laid out as a Maglev table. Here we only index into it.
 */
#ifndef DP_LB_H
#define DP_LB_H

#include "common.h"
#include "parse.h"
#include "csum.h"
#include "nat.h"
#include "ct.h"
#include "dsr.h"
#include "svc.h"

#define SNAT_PORT_MIN 32768
#define SNAT_PORT_RANGE 28232 /* up to 60999 */
#define SNAT_TRIES 8

/*
 * Whether @port on @addr is a frontend of this node (a NodePort, or an external IP that is a
 * node address), as seen from outside or from a pod. A SNAT port must not be one: the reply
 * key {peer:pp -> addr:port} would be the very tuple of a new connection from peer:pp to
 * that frontend, which dp_ct would then take for a reply of the SNATed one.
 */
static __always_inline int is_frontend_port(const struct pkt *p, const __u32 *addr, __be16 port)
{
	struct svc_key k;

	__builtin_memset(&k, 0, sizeof(k));
	addr_copy(k.addr, addr);
	k.port = port;
	k.proto = p->proto;
	k.scope = SVC_SCOPE_EXTERNAL;
	k.family = p->family;
	if (bpf_map_lookup_elem(&dp_svc, &k))
		return 1;
	k.scope = SVC_SCOPE_EXTERNAL_INSIDE;
	return bpf_map_lookup_elem(&dp_svc, &k) != NULL;
}

/*
 * Pick a source port on @snat for the reply key backend -> snat; prefer the client's port. A
 * port is free when no conntrack entry holds the reply key (the one key space also holds the
 * forward keys of connections to this node's frontends) and it is not a frontend port of
 * @snat. Returns 0 with @rk set; the caller writes the reverse entry with BPF_NOEXIST, as
 * another CPU may pick the same port at the same time. (A subprogram: its lookup keys would
 * not fit lb_forward()'s stack frame.)
 */
static __noinline int snat_pick_port(const struct pkt *p, const struct backend *be,
				     const __u32 *snat, struct ct_key *rk)
{
	ct_reply_key(rk, p, be->addr, be->port);
	addr_copy(rk->daddr, snat);
#pragma unroll
	for (int i = 0; i < SNAT_TRIES; i++) {
		if (!bpf_map_lookup_elem(&dp_ct, rk) && !is_frontend_port(p, snat, rk->dport))
			return 0;
		rk->dport = bpf_htons(SNAT_PORT_MIN + bpf_get_prandom_u32() % SNAT_PORT_RANGE);
	}
	stat_inc(STAT_SNAT_EXHAUSTED);
	return DROP_NO_SNAT;
}

/*
 * The reverse key of a new connection that keeps the client's address (@fk its forward key):
 * backend -> client:port, the client's own port unless another connection's entry holds that
 * key. Two connections from one client port to two frontends (ports 80 and 81 of a service)
 * that pick the same backend translate to the same tuple; the second would overwrite the
 * first's reverse entry and hit its socket on the backend with a SYN. Like netfilter's
 * get_unique_tuple(), the second gets another source port (random in the SNAT range, kept in
 * the entries as CT_F_SNAT with the client's own address). Returns 1 (client port, key free),
 * 2 (client port, this connection's own earlier reverse entry: a reopen), 3 (remapped: a
 * free port in @rk->dport), or DROP_NO_SNAT.
 */
static __noinline int rev_key_pick(const struct pkt *p, const struct backend *be,
				   const struct ct_key *fk, struct ct_key *rk)
{
	int free;

	ct_reply_key(rk, p, be->addr, be->port);
	free = ct_rev_key_free(rk, fk);
	if (free)
		return free;
#pragma unroll
	for (int i = 0; i < SNAT_TRIES; i++) {
		rk->dport = bpf_htons(SNAT_PORT_MIN + bpf_get_prandom_u32() % SNAT_PORT_RANGE);
		if (!bpf_map_lookup_elem(&dp_ct, rk))
			return 3;
	}
	stat_inc(STAT_SNAT_EXHAUSTED);
	return DROP_NO_SNAT;
}

static __always_inline int node_addr(const struct pkt *p, __u32 *out)
{
	__u32 zero = 0;
	struct dp_config *cfg = bpf_map_lookup_elem(&dp_config, &zero);

	__builtin_memset(out, 0, 16);
	if (!cfg)
		return DROP_NO_SNAT;
	if (p->family == DP_AF_INET) {
		if (!(cfg->flags & CFG_F_HAS_V4))
			return DROP_NO_SNAT;
		out[0] = cfg->node_v4;
		return 0;
	}
	if (!(cfg->flags & CFG_F_HAS_V6))
		return DROP_NO_SNAT;
	addr_copy(out, cfg->node_v6);
	return 0;
}

/*
 * Reverse NAT of a reply; @rev is the packet's conntrack entry (NULL when it has none).
 * Returns DP_NAT when the packet was translated, DP_PASS when it is not a reply.
 */
static __noinline int lb_reply(struct __sk_buff *skb, struct pkt *p, struct ct_entry *rev)
{
	struct ct_key fk;
	struct ct_entry *fwd;
	__u32 client[4];
	__be16 client_port;
	int ret;

	if (!rev || !ct_is_rev(rev))
		return DP_PASS;
	if (ct_touch_reply(rev, p)) {
		ct_fwd_key_of_rev(&fk, rev, p);
		fwd = bpf_map_lookup_elem(&dp_ct, &fk);
		if (fwd && ct_is_fwd(fwd))
			ct_touch(fwd, p, 1);
	}
	addr_copy(client, rev->snat_addr);
	client_port = rev->snat_port;
	if (rev->flags & CT_F_SNAT) {
		ret = nat_dst(skb, p, client, client_port);
		if (ret < 0)
			return ret;
	}
	ret = nat_src(skb, p, rev->nat_addr, rev->nat_port);
	if (ret < 0)
		return ret;
	stat_inc((rev->flags & CT_F_DSR) ? STAT_DSR_REPLIES : STAT_REV_TRANSLATED);
	return DP_NAT;
}

/*
 * Whether a packet from @p's source starts a connection that must be masqueraded: from one of
 * this node's pods to outside the cluster (masquerade.all: to anything but this node's pods
 * and addresses).
 */
static __always_inline int masq_wanted(const struct dp_config *cfg, const struct pkt *p)
{
	if (!cfg || !(cfg->flags & CFG_F_MASQUERADE))
		return 0;
	if (!(cidr_bits(p, p->saddr) & CIDR_F_POD))
		return 0;
	return !(cidr_bits(p, p->daddr) & ((cfg->flags & CFG_F_MASQ_ALL)
						   ? (CIDR_F_POD | CIDR_F_NODE)
						   : (CIDR_F_CLUSTER | CIDR_F_NO_MASQ | CIDR_F_NODE)));
}

/*
 * The conntrack of a new masqueraded flow (TCP/UDP, or echo with the identifier as the port
 * and 0 as the peer's): picks the node address into @snat and a source port free towards the
 * peer into @rk->dport, and writes the forward and reverse entries.
 */
static __noinline int masq_track(const struct pkt *p, __u32 *snat, struct ct_key *rk)
{
	struct ct_entry fe = {}, re = {};
	struct backend peer;
	struct ct_key fk;
	int ret;

	ret = node_addr(p, snat);
	if (ret < 0)
		return ret;
	__builtin_memset(&peer, 0, sizeof(peer));
	addr_copy(peer.addr, p->daddr);
	peer.port = p->dport;
	peer.family = p->family;
	ret = snat_pick_port(p, &peer, snat, rk);
	if (ret < 0)
		return ret;

	fe.created_ns = bpf_ktime_get_ns();
	fe.last_seen_ns = fe.created_ns;
	fe.flags = CT_F_SNAT | CT_F_MASQ;
	fe.tcp_state = tcp_bits(p, 0);
	re = fe;
	re.flags |= CT_F_REV;
	addr_copy(fe.nat_addr, p->daddr);
	fe.nat_port = p->dport;
	addr_copy(fe.snat_addr, snat);
	fe.snat_port = rk->dport;
	addr_copy(re.nat_addr, p->daddr);
	re.nat_port = p->dport;
	addr_copy(re.snat_addr, p->saddr);
	re.snat_port = p->sport;
	ct_key_from_pkt(&fk, p);
	/* BPF_NOEXIST: another CPU may have taken the port since snat_pick_port() looked. */
	ret = bpf_map_update_elem(&dp_ct, rk, &re, BPF_NOEXIST);
	if (ret == -EEXIST) {
		stat_inc(STAT_SNAT_EXHAUSTED);
		return DROP_NO_SNAT;
	}
	if (ret < 0 || bpf_map_update_elem(&dp_ct, &fk, &fe, BPF_ANY) < 0) {
		stat_inc(STAT_CT_FULL);
		return DROP_CT_FULL;
	}
	stat_inc(STAT_CT_CREATED);
	return 0;
}

/**
 * masquerade() - source-NAT a new connection from a local pod that leaves the cluster
 * (destination outside the cluster CIDRs, nonMasqueradeCidrs and node addresses; with
 * masquerade.all, anything but this node's pods and addresses), on the uplink's egress. Only a TCP SYN or a UDP packet starts one: TCP packets without conntrack
 * are left alone, so connections that came in are never masqueraded on their way back.
 */
static __noinline int masquerade(struct __sk_buff *skb, struct pkt *p, struct ct_entry *ct)
{
	__u32 zero = 0;
	struct dp_config *cfg = bpf_map_lookup_elem(&dp_config, &zero);
	struct ct_key rk;
	__u32 snat[4] = {};
	int ret;

	if (p->proto == IPPROTO_TCP && (p->tcp_flags & (TCPF_SYN | TCPF_ACK)) != TCPF_SYN)
		return DP_PASS;
	if (!masq_wanted(cfg, p))
		return DP_PASS;
	if (ct && (ct->flags & CT_F_INBOUND))
		return DP_PASS; /* a reply of a connection that came in */
	ret = masq_track(p, snat, &rk);
	if (ret < 0)
		return ret;
	ret = nat_src(skb, p, snat, rk.dport);
	if (ret < 0)
		return ret;
	stat_inc(STAT_MASQUERADED);
	return DP_MASQ;
}

/**
 * track_inbound() - remember a connection from outside the cluster to a local pod (not a
 * service), so that masquerade() leaves its replies alone, as netfilter conntrack would.
 */
static __noinline int track_inbound(struct pkt *p)
{
	__u32 zero = 0;
	struct dp_config *cfg = bpf_map_lookup_elem(&dp_config, &zero);
	struct ct_key k;
	struct ct_entry e = {};
	struct ct_entry *cur;

	if (!cfg || !(cfg->flags & CFG_F_MASQUERADE))
		return DP_PASS;
	if (!(cidr_bits(p, p->daddr) & CIDR_F_POD))
		return DP_PASS;
	if (cidr_bits(p, p->saddr) & (CIDR_F_CLUSTER | CIDR_F_NO_MASQ | CIDR_F_NODE))
		return DP_PASS;
	ct_reply_key(&k, p, p->daddr, p->dport);
	cur = bpf_map_lookup_elem(&dp_ct, &k);
	if (cur) {
		/* (a tuple another kind of entry holds is left to it) */
		if (cur->flags & CT_F_INBOUND)
			ct_touch(cur, p, 0);
		return DP_PASS;
	}
	e.created_ns = bpf_ktime_get_ns();
	e.last_seen_ns = e.created_ns;
	e.flags = CT_F_INBOUND;
	e.tcp_state = tcp_bits(p, 0);
	addr_copy(e.nat_addr, p->saddr);
	e.nat_port = p->sport;
	addr_copy(e.snat_addr, p->daddr);
	e.snat_port = p->dport;
	if (bpf_map_update_elem(&dp_ct, &k, &e, BPF_ANY) < 0)
		stat_inc(STAT_CT_FULL);
	return DP_PASS;
}

/*
 * A packet whose destination and port no frontend has: a ClusterIP without this port is
 * rejected, any other address of the service CIDRs dropped, as kube-proxy's nftables mode
 * does (pkg/proxy/nftables/proxier.go, clusterIPsCheckChain: "drop traffic to unallocated
 * ClusterIPs") rather than let it follow a default route out. Its own subprogram: its keys
 * would push lb_forward's frame over the stack limit.
 */
static __noinline int lb_no_frontend(const struct pkt *p)
{
	struct svc_value *svc = svc_lookup(p, SVC_SCOPE_INTERNAL, 1);

	if (svc && (svc->flags & SVC_F_WILDCARD))
		return DP_REJECT;
	if (cidr_bits(p, p->daddr) & CIDR_F_SERVICE) {
		stat_inc(STAT_UNALLOCATED);
		return DROP_UNALLOCATED;
	}
	return DP_PASS;
}

/*
 * Whether @p's source is outside the cluster CIDRs of its family. False when the node has no
 * cluster CIDR of that family: kube-proxy then has no local detector and masquerades no
 * ClusterIP client for it.
 */
static __always_inline int outside_cluster(const struct pkt *p)
{
	__u32 zero = 0;
	struct dp_config *cfg = bpf_map_lookup_elem(&dp_config, &zero);
	__u32 want = p->family == DP_AF_INET ? CFG_F_CLUSTER_V4 : CFG_F_CLUSTER_V6;

	if (!cfg || !(cfg->flags & want))
		return 0;
	return !(cidr_bits(p, p->saddr) & CIDR_F_CLUSTER);
}

/**
 * lb_forward() - translate a packet from a client to a service frontend; @ct is the packet's
 * conntrack entry (NULL when it has none).
 * Returns DP_NAT (translated), DP_PASS (not a service), DP_REJECT or a DROP_* reason.
 */
static __noinline int lb_forward(struct __sk_buff *skb, struct pkt *p, int ctx,
				 struct ct_entry *ct)
{
	struct ct_key fk, rk;
	struct ct_entry *fwd;
	struct ct_entry fe = {}, re = {};
	struct svc_value *svc = NULL;
	struct backend *be;
	__u32 snat[4] = {};
	__u32 client[4];
	__be16 client_port;
	__u32 backend_id = 0;
	__u64 rev_flags = BPF_ANY;
	__u8 scope;
	int do_snat = 0;
	int dsr = 0;
	int ret;

	ct_key_from_pkt(&fk, p);
	fwd = (ct && ct_is_fwd(ct)) ? ct : NULL;
	if (fwd && !ct_is_reopen(fwd, p)) {
		/* Masquerade happens on the uplink's egress only: rewritten earlier (on the pod's
		 * veth) the stack would drop a packet with a local source as a martian. */
		if ((fwd->flags & CT_F_MASQ) && ctx != CTX_TO_UPLINK)
			return DP_PASS;
		ct_touch(fwd, p, 0);
		if (fwd->flags & CT_F_DSR)
			return dsr_forward(skb, p, fwd->nat_addr, fwd->nat_port);
		if (fwd->flags & CT_F_SNAT) {
			ret = nat_src(skb, p, fwd->snat_addr, fwd->snat_port);
			if (ret < 0)
				return ret;
		}
		if (fwd->flags & CT_F_MASQ)
			return DP_MASQ;
		ret = nat_dst(skb, p, fwd->nat_addr, fwd->nat_port);
		if (ret < 0)
			return ret;
		stat_inc(STAT_TRANSLATED);
		return DP_NAT;
	}

	if (ctx == CTX_FROM_UPLINK) {
		scope = SVC_SCOPE_EXTERNAL;
		svc = svc_lookup(p, SVC_SCOPE_EXTERNAL, 0);
		if (!svc) {
			/* A ClusterIP from outside: internalTrafficPolicy applies as for pods. */
			scope = SVC_SCOPE_INTERNAL;
			svc = svc_lookup(p, SVC_SCOPE_INTERNAL, 0);
		}
	} else {
		scope = SVC_SCOPE_INTERNAL;
		svc = svc_lookup(p, SVC_SCOPE_INTERNAL, 0);
		if (!svc) {
			scope = SVC_SCOPE_EXTERNAL_INSIDE;
			svc = svc_lookup(p, SVC_SCOPE_EXTERNAL_INSIDE, 0);
		}
	}
	if (!svc)
		return lb_no_frontend(p);
	if ((svc->flags & SVC_F_SRC_RANGES) && !src_allowed(svc, p))
		return DROP_POLICY;
	if (svc->slot_count == 0)
		return (svc->flags & SVC_F_NO_LOCAL) ? DROP_POLICY : DP_REJECT;

	be = select_backend(svc, p, &backend_id);
	if (!be || be->family != p->family)
		return DP_REJECT;

	/* DSR: only backends on other nodes; a local one is answered through this node. */
	if ((svc->flags & SVC_F_DSR) && p->family == DP_AF_INET && !is_local(p, be->addr))
		dsr = 1;
	else if (svc->flags & SVC_F_SNAT)
		do_snat = 1; /* every client of this entry (user space decided) */
	else if (scope == SVC_SCOPE_INTERNAL && outside_cluster(p))
		do_snat = 1; /* ClusterIP from no pod (the node, outside): kube-proxy's
			      * `! -s clusterCIDR -j KUBE-MARK-MASQ` */
	else if (scope == SVC_SCOPE_EXTERNAL_INSIDE && ctx == CTX_TO_UPLINK)
		do_snat = 1; /* the node itself reaching an external frontend */
	else if (ctx == CTX_FROM_POD && addr_eq(be->addr, p->saddr))
		do_snat = 1; /* hairpin: the pod would drop a reply from itself */

	addr_copy(client, p->saddr);
	client_port = p->sport;
	if (do_snat) {
		ret = node_addr(p, snat);
		if (ret < 0)
			return ret;
		ret = snat_pick_port(p, be, snat, &rk);
		if (ret < 0)
			return ret;
		rev_flags = BPF_NOEXIST;
	} else if (dsr) {
		ct_reply_key(&rk, p, be->addr, be->port);
	} else {
		ret = rev_key_pick(p, be, &fk, &rk);
		if (ret < 0)
			return ret;
		if (ret == 3) {
			/* The client's port clashes: the client keeps its address, not its port. */
			do_snat = 1;
			addr_copy(snat, client);
		}
		rev_flags = ret == 2 ? BPF_ANY : BPF_NOEXIST;
	}

	fe.created_ns = bpf_ktime_get_ns();
	fe.last_seen_ns = fe.created_ns;
	fe.backend_id = backend_id;
	fe.svc_id = svc->id;
	fe.flags = (do_snat ? CT_F_SNAT : 0) | (dsr ? CT_F_DSR : 0) |
		   (ctx == CTX_FROM_UPLINK ? CT_F_EXTERNAL : 0);
	if (ctx == CTX_FROM_POD && addr_eq(be->addr, p->saddr))
		fe.flags |= CT_F_HAIRPIN;
	fe.tcp_state = tcp_bits(p, 0);
	re = fe;
	re.flags |= CT_F_REV;
	addr_copy(fe.nat_addr, be->addr);
	fe.nat_port = be->port;
	addr_copy(fe.snat_addr, snat);
	fe.snat_port = rk.dport;
	addr_copy(re.nat_addr, p->daddr);
	re.nat_port = p->dport;
	addr_copy(re.snat_addr, client);
	re.snat_port = client_port;

	/* A DSR flow's replies never come back here: no reverse entry. A reverse key found free
	 * is claimed with BPF_NOEXIST: when another CPU took it meanwhile (a new connection
	 * with the same tuple, or this one's packet racing), this packet is dropped, not the
	 * other connection's entry overwritten; the client's retransmission finds the entries. */
	if (!dsr) {
		ret = bpf_map_update_elem(&dp_ct, &rk, &re, rev_flags);
		if (ret == -EEXIST) {
			stat_inc(STAT_SNAT_EXHAUSTED);
			return DROP_NO_SNAT;
		}
		if (ret < 0) {
			stat_inc(STAT_CT_FULL);
			return DROP_CT_FULL;
		}
	}
	if (bpf_map_update_elem(&dp_ct, &fk, &fe, BPF_ANY) < 0) {
		stat_inc(STAT_CT_FULL);
		return DROP_CT_FULL;
	}
	stat_inc(STAT_CT_CREATED);
	if (dsr)
		return dsr_forward(skb, p, be->addr, be->port);

	if (do_snat) {
		ret = nat_src(skb, p, snat, rk.dport);
		if (ret < 0)
			return ret;
	}
	ret = nat_dst(skb, p, be->addr, be->port);
	if (ret < 0)
		return ret;
	stat_inc(STAT_TRANSLATED);
	return DP_NAT;
}

#endif
