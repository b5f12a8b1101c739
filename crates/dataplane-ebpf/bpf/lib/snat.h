/* SPDX-License-Identifier: Apache-2.0 */
/*
 * snat.h - source NAT to the node's address: the address of the packet's family and a source
 * port free towards the peer. Shared by service translation (lb.h, xdp.h) and pod masquerade
 * (masq.h).
 */
#ifndef DP_SNAT_H
#define DP_SNAT_H

#include "common.h"
#include "parse.h"
#include "ct.h"

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

#endif
