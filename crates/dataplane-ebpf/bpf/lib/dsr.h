/* SPDX-License-Identifier: Apache-2.0 */
/*
 * dsr.h - direct server return (IPv4) with the frontend carried in an IP option.
 *
 *   client --> ingress node: DNAT to the backend, source kept, + option {frontend} --+
 *                                                                                   |
 *   client <-- backend node: source rewritten to the frontend <-- pod <-- strip <---+
 *
 * The ingress node (dsr_forward) keeps a forward conntrack entry only: replies never come
 * back to it. The backend's node (dsr_accept) learns a reverse entry {backend -> client:
 * answer from frontend} from the option, strips it, and lb_reply() on the pod's veth turns
 * the reply's source into the frontend and routes it straight to the client.
 *
 * MTU: the option costs DSR_OPT_LEN bytes. A request that would no longer fit the underlay
 * MTU (dp_config.mtu) is answered with ICMP fragmentation needed (MTU - DSR_OPT_LEN) so that
 * the client's path MTU discovery shrinks its segments. GSO packets are not checked: the
 * kernel lowers their segment size by the option's length when the room is added.
 */
#ifndef DP_DSR_H
#define DP_DSR_H

#include "common.h"
#include "parse.h"
#include "nat.h"
#include "ct.h"

#define IPV4_BASE_LEN 20
#define IPV4_CHECK_OFF 10

/* The first 32-bit word of the IPv4 header (version/ihl, tos, tot_len) grown by @delta bytes
 * of options; the header checksum is fixed for it and for @opt_sum (the options' sum). */
static __always_inline int ip4_resize_hdr(struct __sk_buff *skb, const struct pkt *p, int delta,
					  __s64 opt_sum)
{
	__u32 off = p->l3_off;
	__be32 old, new;
	__u8 *b = (__u8 *)&new;
	__u16 tot;

	if (bpf_skb_load_bytes(skb, off, &old, 4) < 0)
		return DROP_INVALID;
	new = old;
	b[0] = (b[0] & 0xf0) | ((b[0] & 0x0f) + delta / 4);
	tot = bpf_ntohs(*(__be16 *)&b[2]) + delta;
	*(__be16 *)&b[2] = bpf_htons(tot);
	if (bpf_skb_store_bytes(skb, off, &new, 4, 0) < 0)
		return DROP_INVALID;
	if (bpf_l3_csum_replace(skb, off + IPV4_CHECK_OFF, old, new, 4) < 0)
		return DROP_INVALID;
	if (opt_sum && bpf_l3_csum_replace(skb, off + IPV4_CHECK_OFF, 0, opt_sum, 0) < 0)
		return DROP_INVALID;
	return 0;
}

/**
 * dsr_forward() - send a request to @be_addr:@be_port on another node, source kept, with the
 * frontend (the packet's destination) in a DSR option.
 * Returns DP_NAT (route it), DP_FRAG_NEEDED or a DROP_* reason.
 */
static __noinline int dsr_forward(struct __sk_buff *skb, struct pkt *p, const __u32 *be_addr,
				  __be16 be_port)
{
	__u32 zero = 0;
	struct dp_config *cfg = bpf_map_lookup_elem(&dp_config, &zero);
	struct dsr_opt opt;
	__s64 sum;
	int ret;

	if (p->family != DP_AF_INET)
		return DROP_INVALID;
	if (p->l4_off - p->l3_off + DSR_OPT_LEN > 60)
		return DROP_INVALID; /* no room left for another option */
	if (cfg && cfg->mtu && !skb->gso_size && skb->len - p->l3_off + DSR_OPT_LEN > cfg->mtu)
		return DP_FRAG_NEEDED;
	opt.type = DSR_OPT_TYPE;
	opt.len = DSR_OPT_LEN;
	opt.port = p->dport;
	opt.addr = p->daddr[0];

	ret = nat_dst(skb, p, be_addr, be_port);
	if (ret < 0)
		return ret;
	if (bpf_skb_adjust_room(skb, DSR_OPT_LEN, BPF_ADJ_ROOM_NET, 0) < 0)
		return DROP_INVALID;
	if (bpf_skb_store_bytes(skb, p->l3_off + IPV4_BASE_LEN, &opt, sizeof(opt), 0) < 0)
		return DROP_INVALID;
	sum = bpf_csum_diff(NULL, 0, (__be32 *)&opt, sizeof(opt), 0);
	if (sum < 0)
		return DROP_INVALID;
	ret = ip4_resize_hdr(skb, p, DSR_OPT_LEN, sum);
	if (ret < 0)
		return ret;
	p->l4_off += DSR_OPT_LEN;
	p->csum_off += DSR_OPT_LEN;
	stat_inc(STAT_DSR_FORWARDED);
	return DP_NAT;
}

/**
 * dsr_accept() - on a backend's node: when a request carries the DSR option, remember that
 * replies of this flow must come from the frontend, then strip the option.
 * Returns DP_PASS when there is no option, DP_DSR when it was taken, or a DROP_* reason.
 */
static __noinline int dsr_accept(struct __sk_buff *skb, struct pkt *p)
{
	struct dsr_opt opt;
	struct ct_key k;
	struct ct_entry e = {};
	struct ct_entry *cur;
	__s64 sum;

	if (p->family != DP_AF_INET || p->l4_off - p->l3_off < IPV4_BASE_LEN + DSR_OPT_LEN)
		return DP_PASS;
	if (bpf_skb_load_bytes(skb, p->l3_off + IPV4_BASE_LEN, &opt, sizeof(opt)) < 0)
		return DP_PASS;
	if (opt.type != DSR_OPT_TYPE || opt.len != DSR_OPT_LEN)
		return DP_PASS;

	ct_reply_key(&k, p, p->daddr, p->dport);
	cur = bpf_map_lookup_elem(&dp_ct, &k);
	if (cur && ct_is_rev(cur) && cur->nat_addr[0] == opt.addr && cur->nat_port == opt.port &&
	    !ct_is_reopen(cur, p)) {
		ct_touch(cur, p, 0);
	} else {
		e.created_ns = bpf_ktime_get_ns();
		e.last_seen_ns = e.created_ns;
		e.flags = CT_F_DSR | CT_F_REV;
		e.tcp_state = tcp_bits(p, 0);
		e.nat_addr[0] = opt.addr;
		e.nat_port = opt.port;
		addr_copy(e.snat_addr, p->saddr);
		e.snat_port = p->sport;
		if (bpf_map_update_elem(&dp_ct, &k, &e, BPF_ANY) < 0) {
			stat_inc(STAT_CT_FULL);
			return DROP_CT_FULL;
		}
		stat_inc(STAT_CT_CREATED);
	}

	if (bpf_skb_adjust_room(skb, -DSR_OPT_LEN, BPF_ADJ_ROOM_NET, 0) < 0)
		return DROP_INVALID;
	sum = bpf_csum_diff((__be32 *)&opt, sizeof(opt), NULL, 0, 0);
	if (sum < 0)
		return DROP_INVALID;
	return ip4_resize_hdr(skb, p, -DSR_OPT_LEN, sum) < 0 ? DROP_INVALID : DP_DSR;
}

#endif
