/* SPDX-License-Identifier: Apache-2.0 */
/*
 * dsr.h - direct server return with the frontend carried in an IPv4 option or in an IPv6
 * destination-options header.
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
 * MTU: the option costs DSR_OPT_LEN bytes (IPv6: DSR_OPT6_LEN). A request that would no
 * longer fit the underlay MTU (dp_config.mtu) is answered with ICMP fragmentation needed
 * (IPv6: Packet Too Big) for the MTU less that cost, so that the client's path MTU discovery
 * shrinks its segments. GSO packets are not checked: the kernel lowers their segment size by
 * the header's length when the room is added.
 */
#ifndef DP_DSR_H
#define DP_DSR_H

#include "common.h"
#include "parse.h"
#include "nat.h"
#include "ct.h"

#define IPV4_BASE_LEN 20
#define IPV4_CHECK_OFF 10
#define IPV6_BASE_LEN 40

/*
 * DSR wire format (IPv6): the ingress node keeps the client's source address, rewrites the
 * destination to the backend and inserts this Destination Options header (next header 60)
 * right after the 40-byte fixed header, holding one option of ours with the frontend. 24
 * bytes (the header's length is a multiple of 8): the MTU cost. Option type 0x1e: RFC 4727's
 * experimental type with action bits 00 ("skip over this option" for a node that does not
 * know it) and the change bit 0 (the data does not change en route); the option data is 20
 * bytes {frontend port, 2 zero bytes, frontend address}, so the address is 8-byte aligned in
 * the header. Cilium's IPv6 DSR uses the same kind of header (bpf/lib/nodeport.h,
 * dsr_set_ext6() and struct dsr_opt_v6 in bpf/lib/common.h: type 0x1b, address then port).
 * The L4 checksum needs nothing more than the destination's rewrite: its pseudo header takes
 * the final destination (the backend, there is no routing header) and the upper-layer length,
 * which the extension header does not change.
 * A wire format, no map layout: it is not in maps.h.
 */
#define DSR_OPT6_TYPE 0x1e
#define DSR_OPT6_LEN 24
struct dsr_opt6 {
	__u8 nexthdr; /* the header that follows: the request's TCP or UDP */
	__u8 hdrlen;  /* 8-byte units after the first 8: (DSR_OPT6_LEN - 8) / 8 */
	__u8 type;    /* DSR_OPT6_TYPE */
	__u8 len;     /* option data: DSR_OPT6_LEN - 4 */
	__be16 port;  /* frontend port */
	__u16 pad;    /* 0 */
	__u32 addr[4]; /* frontend address */
};

/* What DSR's header costs a packet of @family: the MTU it leaves is the underlay's less this. */
static __always_inline __u32 dsr_overhead(__u8 family)
{
	return family == DP_AF_INET ? DSR_OPT_LEN : DSR_OPT6_LEN;
}

/* Whether a request of @len bytes from its L3 header on, of @family, outgrows the underlay MTU
 * once DSR's header is added (no MTU configured: never). */
static __always_inline int dsr_too_big(__u32 len, __u8 family)
{
	__u32 zero = 0;
	struct dp_config *cfg = bpf_map_lookup_elem(&dp_config, &zero);

	return cfg && cfg->mtu && len + dsr_overhead(family) > cfg->mtu;
}

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

/* dsr_forward() for IPv4: the DSR option after the 20-byte header. */
static __noinline int dsr_forward4(struct __sk_buff *skb, struct pkt *p, const __u32 *be_addr,
				   __be16 be_port)
{
	struct dsr_opt opt;
	__s64 sum;
	int ret;

	if (p->l4_off - p->l3_off + DSR_OPT_LEN > 60)
		return DROP_INVALID; /* no room left for another option */
	if (!skb->gso_size && dsr_too_big(skb->len - p->l3_off, DP_AF_INET))
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
	if (p->csum_off) /* SCTP has none */
		p->csum_off += DSR_OPT_LEN;
	stat_inc(STAT_DSR_FORWARDED);
	return DP_NAT;
}

/*
 * The second 32-bit word of the IPv6 header (payload length, next header, hop limit) with
 * @delta bytes more payload and next header @nexthdr. (No header checksum to fix.)
 */
static __always_inline int ip6_resize_hdr(struct __sk_buff *skb, const struct pkt *p, int delta,
					  __u8 nexthdr)
{
	__u8 w[4];

	if (bpf_skb_load_bytes(skb, p->l3_off + 4, w, sizeof(w)) < 0)
		return DROP_INVALID;
	*(__be16 *)&w[0] = bpf_htons(bpf_ntohs(*(__be16 *)&w[0]) + delta);
	w[2] = nexthdr;
	if (bpf_skb_store_bytes(skb, p->l3_off + 4, w, sizeof(w), 0) < 0)
		return DROP_INVALID;
	return 0;
}

/*
 * dsr_forward() for IPv6: the destination-options header after the 40-byte fixed header.
 * Written before the destination's rewrite, the frontend straight from @p (no copy of the
 * header on the stack: this frame is the last of dp_from_pod's deepest call chain).
 */
static __noinline int dsr_forward6(struct __sk_buff *skb, struct pkt *p, const __u32 *be_addr,
				   __be16 be_port)
{
	__u8 head[offsetof(struct dsr_opt6, addr)];
	int ret;

	/* (parse_packet() translates no IPv6 packet with extension headers) */
	if (p->l4_off - p->l3_off != IPV6_BASE_LEN)
		return DROP_INVALID;
	if (!skb->gso_size && dsr_too_big(skb->len - p->l3_off, DP_AF_INET6))
		return DP_FRAG_NEEDED;
	head[0] = p->proto;
	head[1] = (DSR_OPT6_LEN - 8) / 8;
	head[2] = DSR_OPT6_TYPE;
	head[3] = DSR_OPT6_LEN - 4;
	*(__be16 *)&head[4] = p->dport;
	head[6] = 0;
	head[7] = 0;

	if (bpf_skb_adjust_room(skb, DSR_OPT6_LEN, BPF_ADJ_ROOM_NET, 0) < 0)
		return DROP_INVALID;
	if (bpf_skb_store_bytes(skb, p->l3_off + IPV6_BASE_LEN, head, sizeof(head), 0) < 0 ||
	    bpf_skb_store_bytes(skb, p->l3_off + IPV6_BASE_LEN + sizeof(head), p->daddr, 16, 0) < 0)
		return DROP_INVALID;
	ret = ip6_resize_hdr(skb, p, DSR_OPT6_LEN, IPPROTO_DSTOPTS);
	if (ret < 0)
		return ret;
	p->l4_off += DSR_OPT6_LEN;
	if (p->csum_off) /* SCTP has none */
		p->csum_off += DSR_OPT6_LEN;
	ret = nat_dst(skb, p, be_addr, be_port);
	if (ret < 0)
		return ret;
	stat_inc(STAT_DSR_FORWARDED);
	return DP_NAT;
}

/**
 * dsr_forward() - send a request to @be_addr:@be_port on another node, source kept, with the
 * frontend (the packet's destination) in a DSR option (IPv4) or destination-options header
 * (IPv6).
 * Returns DP_NAT (route it), DP_FRAG_NEEDED or a DROP_* reason.
 */
static __always_inline int dsr_forward(struct __sk_buff *skb, struct pkt *p,
				       const __u32 *be_addr, __be16 be_port)
{
	if (p->family == DP_AF_INET)
		return dsr_forward4(skb, p, be_addr, be_port);
	return dsr_forward6(skb, p, be_addr, be_port);
}

/*
 * On a backend's node: the reverse entry of @p's flow {backend -> client: answer from
 * @fe_addr:@fe_port}, learnt from its DSR header (kept when it says the same already).
 * Returns 0 or DROP_CT_FULL.
 */
static __always_inline int dsr_learn(const struct pkt *p, const __u32 *fe_addr, __be16 fe_port)
{
	struct ct_key k;
	struct ct_entry e = {};
	struct ct_entry *cur;

	ct_reply_key(&k, p, p->daddr, p->dport);
	cur = bpf_map_lookup_elem(&dp_ct, &k);
	if (cur && ct_is_rev(cur) && addr_eq(cur->nat_addr, fe_addr) && cur->nat_port == fe_port &&
	    !ct_is_reopen(cur, p)) {
		ct_touch(cur, p, 0);
		return 0;
	}
	e.created_ns = bpf_ktime_get_ns();
	e.last_seen_ns = e.created_ns;
	e.flags = CT_F_DSR | CT_F_REV;
	e.tcp_state = tcp_bits(p, 0);
	addr_copy(e.nat_addr, fe_addr);
	e.nat_port = fe_port;
	addr_copy(e.snat_addr, p->saddr);
	e.snat_port = p->sport;
	if (bpf_map_update_elem(&dp_ct, &k, &e, BPF_ANY) < 0) {
		stat_inc(STAT_CT_FULL);
		return DROP_CT_FULL;
	}
	stat_inc(STAT_CT_CREATED);
	return 0;
}

/**
 * dsr_accept() - on a backend's node: when a request carries the DSR option, remember that
 * replies of this flow must come from the frontend, then strip the option.
 * Returns DP_PASS when there is no option, DP_DSR when it was taken, or a DROP_* reason.
 */
static __noinline int dsr_accept(struct __sk_buff *skb, struct pkt *p)
{
	struct dsr_opt opt;
	__u32 fe[4] = {};
	__s64 sum;

	if (p->family != DP_AF_INET || p->l4_off - p->l3_off < IPV4_BASE_LEN + DSR_OPT_LEN)
		return DP_PASS;
	if (bpf_skb_load_bytes(skb, p->l3_off + IPV4_BASE_LEN, &opt, sizeof(opt)) < 0)
		return DP_PASS;
	if (opt.type != DSR_OPT_TYPE || opt.len != DSR_OPT_LEN)
		return DP_PASS;

	fe[0] = opt.addr;
	if (dsr_learn(p, fe, opt.port) < 0)
		return DROP_CT_FULL;

	if (bpf_skb_adjust_room(skb, -DSR_OPT_LEN, BPF_ADJ_ROOM_NET, 0) < 0)
		return DROP_INVALID;
	sum = bpf_csum_diff((__be32 *)&opt, sizeof(opt), NULL, 0, 0);
	if (sum < 0)
		return DROP_INVALID;
	return ip4_resize_hdr(skb, p, -DSR_OPT_LEN, sum) < 0 ? DROP_INVALID : DP_DSR;
}

/**
 * dsr_accept6() - dsr_accept() for IPv6: @p was parsed behind extension headers (PKT_EXT);
 * when the only one is our DSR destination-options header, the flow is learnt and the header
 * stripped (payload length and next header restored): the pod sees the client's packet as
 * it was sent, to its own address.
 * Returns DP_PASS when there is no such header, DP_DSR when it was taken, or a DROP_* reason.
 */
static __noinline int dsr_accept6(struct __sk_buff *skb, struct pkt *p)
{
	struct dsr_opt6 opt;
	__u8 nexthdr;
	int ret;

	if (p->family != DP_AF_INET6 || p->opaque != PKT_EXT ||
	    p->l4_off - p->l3_off != IPV6_BASE_LEN + DSR_OPT6_LEN ||
	    (p->proto != IPPROTO_TCP && p->proto != IPPROTO_UDP && p->proto != IPPROTO_SCTP))
		return DP_PASS;
	if (bpf_skb_load_bytes(skb, p->l3_off + offsetof(struct ipv6hdr, nexthdr), &nexthdr, 1) < 0 ||
	    nexthdr != IPPROTO_DSTOPTS)
		return DP_PASS;
	if (bpf_skb_load_bytes(skb, p->l3_off + IPV6_BASE_LEN, &opt, sizeof(opt)) < 0)
		return DP_PASS;
	if (opt.hdrlen != (DSR_OPT6_LEN - 8) / 8 || opt.type != DSR_OPT6_TYPE ||
	    opt.len != DSR_OPT6_LEN - 4 || opt.nexthdr != p->proto)
		return DP_PASS;

	ret = dsr_learn(p, opt.addr, opt.port);
	if (ret < 0)
		return ret;
	if (bpf_skb_adjust_room(skb, -DSR_OPT6_LEN, BPF_ADJ_ROOM_NET, 0) < 0)
		return DROP_INVALID;
	if (ip6_resize_hdr(skb, p, -DSR_OPT6_LEN, opt.nexthdr) < 0)
		return DROP_INVALID;
	p->l4_off -= DSR_OPT6_LEN;
	return DP_DSR;
}

#endif
