/* SPDX-License-Identifier: Apache-2.0 */
/*
 * lb.h - the per-packet service logic shared by every packet hook (translation, reverse NAT);
 * service lookup, backend selection and affinity are in svc.h, the SNAT address and port in
 * snat.h, pod masquerade in masq.h.
 *
 * Which backends are eligible (ready, terminating fallback, traffic policy Local) is decided in
 * user space: each frontend entry points at a range of dp_slots holding only eligible backends,
 * repeated by weight (random) or laid out as a Maglev table. Here we only index into it.
 */
#ifndef DP_LB_H
#define DP_LB_H

#include "common.h"
#include "parse.h"
#include "nat.h"
#include "ct.h"
#include "dsr.h"
#include "svc.h"
#include "snat.h"

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
	free = ct_rev_key_free(rk, fk, p);
	ct_reply_key(rk, p, be->addr, be->port); /* ct_rev_key_free may have used it */
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
		return DP_REJECT_PORT;
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
 * Returns DP_NAT (translated), DP_PASS (not a service), DP_REJECT (no backend),
 * DP_REJECT_PORT (a ClusterIP's port no service has) or a DROP_* reason.
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
	skb->cb[CB_SVC_ID] = svc->id;
	/* A TCP packet of a connection whose entries the LRU evicted (dp_ct full) or GC expired:
	 * it gets a backend afresh, as Katran and Cilium do for a packet that misses their
	 * conntrack, counted. The same backend where the choice is deterministic (Maglev, one
	 * backend) continues the connection; another one answers RST, which goes back through
	 * the new entries: the client sees a reset, never another backend's stream. */
	if (p->proto == IPPROTO_TCP && !(p->tcp_flags & TCPF_SYN))
		stat_inc(STAT_CT_LOST);
	if ((svc->flags & SVC_F_SRC_RANGES) && !src_allowed(svc, p))
		return DROP_SRC_RANGE;
	if (svc->slot_count == 0)
		return (svc->flags & SVC_F_NO_LOCAL) ? DROP_NO_LOCAL : DP_REJECT;

	be = select_backend(svc, p, &backend_id);
	if (!be || be->family != p->family)
		return DP_REJECT;
	skb->cb[CB_BACKEND_ID] = backend_id;

	/* DSR: only backends on other nodes; a local one is answered through this node. */
	if ((svc->flags & SVC_F_DSR) && !is_local(p, be->addr))
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
		ct_mark_used(&rk);
	}
	if (bpf_map_update_elem(&dp_ct, &fk, &fe, BPF_ANY) < 0) {
		stat_inc(STAT_CT_FULL);
		return DROP_CT_FULL;
	}
	ct_mark_used(&fk);
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
