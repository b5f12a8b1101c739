/* SPDX-License-Identifier: Apache-2.0 */
/*
 * masq.h - pod masquerade: TCP/UDP connections from this node's pods leaving the cluster get
 * the node's address as their source on the uplink's egress (masquerade()), and connections
 * that came in from outside straight to a pod are remembered (track_inbound()) so that their
 * replies are left alone. Echo (ping) masquerade is in echo.h on top of masq_track(); the
 * replies of masqueraded flows are translated back by lb_reply() (lb.h), as they are reverse
 * entries like a service connection's.
 */
#ifndef DP_MASQ_H
#define DP_MASQ_H

#include "common.h"
#include "parse.h"
#include "nat.h"
#include "ct.h"
#include "svc.h"
#include "snat.h"

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
	ct_mark_used(rk);
	ct_mark_used(&fk);
	stat_inc(STAT_CT_CREATED);
	return 0;
}

/**
 * masquerade() - source-NAT a new connection from a local pod that leaves the cluster
 * (destination outside the cluster CIDRs, nonMasqueradeCidrs and node addresses; with
 * masquerade.all, anything but this node's pods and addresses), on the uplink's egress. Only
 * a TCP SYN or a UDP packet starts one: TCP packets without conntrack are left alone, so
 * connections that came in are never masqueraded on their way back.
 */
static __noinline int masquerade(struct __sk_buff *skb, struct pkt *p, struct ct_entry *ct)
{
	__u32 zero = 0;
	struct dp_config *cfg = bpf_map_lookup_elem(&dp_config, &zero);
	struct ct_entry *rev;
	struct ct_key rk;
	__u32 snat[4] = {};
	int ret;

	if (p->proto == IPPROTO_TCP && (p->tcp_flags & (TCPF_SYN | TCPF_ACK)) != TCPF_SYN)
		return DP_PASS;
	if (!masq_wanted(cfg, p))
		return DP_PASS;
	if (ct && (ct->flags & CT_F_INBOUND))
		return DP_PASS; /* a reply of a connection that came in */
	/* A service connection, translated on the pod's veth: its reply key holds the
	 * connection's reverse entry, and the service decided its source already. netfilter
	 * leaves DNATed connections to the service rules too (kube-proxy's pod masquerade and
	 * our nft/iptables backends match `ct status dnat` / `! --ctstate DNAT`). Masqueraded
	 * here a second time, the backend would see the node for a pod and its reply, translated
	 * back by the masquerade entry alone, would reach the pod from the backend's address. */
	ct_reply_key(&rk, p, p->daddr, p->dport);
	rev = bpf_map_lookup_elem(&dp_ct, &rk);
	if (rev && ct_is_rev(rev))
		return DP_PASS;
	ret = masq_track(p, snat, &rk);
	if (ret < 0)
		return ret;
	ret = nat_src(skb, p, snat, rk.dport);
	if (ret < 0)
		return ret;
	stat_inc(STAT_MASQUERADED);
	/* A new connection: dp_handle() reports it (events.h). */
	skb->cb[CB_EV] |= EV_CREATED;
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

#endif
