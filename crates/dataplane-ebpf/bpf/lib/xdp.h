/* SPDX-License-Identifier: Apache-2.0 */
/*
 * xdp.h - the NodePort/LoadBalancer/ExternalIP fast path at XDP on the uplink.
 *
 *   outside --eth0--> [dp_xdp_uplink] --XDP_TX--> other node (DSR or SNAT)
 *                           |     `--XDP_DROP: outside the frontend's source ranges
 *                           +--XDP_PASS (untouched)--> [dp_from_uplink] (TC) --> ...
 *
 * Only IPv4 (no options, no fragment) and IPv6 (no extension header) TCP/UDP/SCTP to an external
 * frontend whose backend is on another node is handled, in the modes lb_forward() uses for
 * it: DSR (as in lb_forward(): destination rewritten, source kept, the frontend in an IPv4
 * option or an IPv6 destination-options header, byte-identical to dsr_forward()) and SNAT
 * (DNAT + source NAT to the node address of the packet's family). One drop is made here
 * too: the first packet of a connection to an external frontend whose
 * loadBalancerSourceRanges leave its source out
 * (xdp_drop_src_range(): the decision, counters and event of lb_forward()'s DROP_SRC_RANGE, at
 * the `xdp` observation point), so that a flood of them costs no skb. Everything else -
 * replies, ClusterIPs, local backends, rejects, IPv4 options and fragments, IPv6 extension
 * headers (an IPv6 DSR request reaching its backend's node among them: TC learns and strips
 * it), packets that would outgrow the MTU, routes the FIB cannot answer - goes to TC
 * untouched, which handles it exactly as without XDP (and makes the source-range drop itself
 * when XDP is not attached).
 *
 * Conntrack entries are the ones lb_forward() writes (same pinned dp_ct, same keys and
 * entries for both families), so TC's reverse NAT of SNAT replies, flows() and maintain()
 * work unchanged, and flows XDP started continue in TC (and the other way round) when XDP is
 * detached or passes a packet.
 *
 * The packet is changed with direct packet access and incremental checksums (RFC 1624): the
 * IPv4 header checksum, and the TCP/UDP checksum for the ports and the pseudo header's
 * addresses (IPv6: all 16 bytes of each; IPv6 has no header checksum, so its hop limit is
 * decremented as it is); SCTP's CRC32c for the ports only (csum.h sctp_crc_update()). XDP has no CHECKSUM_PARTIAL state, so the L4 checksum must be
 * complete, as it is from a NIC. The FIB lookup for the new destination comes before any
 * write: a packet we cannot route is passed with no trace.
 */
#ifndef DP_XDP_H
#define DP_XDP_H

#include "common.h"
#include "csum.h"
#include "ct.h"
#include "svc.h"
#include "snat.h"
/* dsr.h for the IPv4 header constants and the DSR headers: its TC stages take an skb and are
 * not used here. */
#pragma clang diagnostic push
#pragma clang diagnostic ignored "-Wunused-function"
#include "dsr.h"
/* events.h for ev_reserve(); its TC helpers are not used here either. */
#include "events.h"
/* host_policy.h for host_first(), host_first_src() and the counters; its TC stages are not
 * used here. */
#include "host_policy.h"
#pragma clang diagnostic pop

#define XDP_L4_OFF4 (sizeof(struct ethhdr) + IPV4_BASE_LEN)
#define XDP_L4_OFF6 (sizeof(struct ethhdr) + sizeof(struct ipv6hdr))

/* How one packet is to be rewritten and where it goes. */
struct xdp_xlate {
	__u32 saddr[4]; /* new source (the client's own with DSR); IPv4 in word 0 */
	__u32 daddr[4]; /* new destination: the backend */
	__be16 sport;
	__be16 dport;
	__u32 fe_addr[4]; /* DSR: the frontend carried in the option (IPv4: word 0) */
	__be16 fe_port;
	__u8 dsr;
	__u8 pad;
	__u32 ifindex; /* egress interface from the FIB */
	__u8 smac[ETH_ALEN];
	__u8 dmac[ETH_ALEN];
};

/* The ports (and TCP flags and sequence number; SCTP's first chunk) of @p, whose TCP, UDP or
 * SCTP header is at @l4_off; @l3_len: the IP payload's length (SCTP's CRC32c update needs
 * it: the frame may be longer, padded). */
static __always_inline int xdp_parse_l4(struct pkt *p, void *data, void *end, __u32 l4_off,
					__u32 l3_len)
{
	void *l4 = data + l4_off;

	p->l4_off = l4_off;
	if (p->proto == IPPROTO_TCP) {
		struct tcphdr *th = l4;

		if ((void *)(th + 1) > end)
			return 0;
		p->sport = th->source;
		p->dport = th->dest;
		p->tcp_flags = ((__u8 *)th)[13];
		p->seq = bpf_ntohl(th->seq);
		p->csum_off = l4_off + offsetof(struct tcphdr, check);
		return 1;
	}
	if (p->proto == IPPROTO_UDP) {
		struct udphdr *uh = l4;

		if ((void *)(uh + 1) > end)
			return 0;
		p->sport = uh->source;
		p->dport = uh->dest;
		p->csum_off = l4_off + offsetof(struct udphdr, check);
		return 1;
	}
	if (p->proto == IPPROTO_SCTP) {
		__u8 *sh = l4;

		if ((void *)(sh + SCTP_MIN_LEN) > end)
			return 0;
		p->sport = *(__be16 *)&sh[0];
		p->dport = *(__be16 *)&sh[2];
		p->tcp_flags = sctp_flags(sh[SCTP_HDR_LEN]);
		p->sctp_len = l3_len;
		return 1;
	}
	return 0;
}

/**
 * xdp_parse() - fill @p from a TCP/UDP/SCTP packet over IPv4 without options or fragmentation, or
 * over IPv6 without extension headers.
 * Returns 1 for such a packet, 0 for anything else (passed to TC as it is).
 */
static __always_inline int xdp_parse(struct xdp_md *ctx, struct pkt *p)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;

	__builtin_memset(p, 0, sizeof(*p));
	if ((void *)(eth + 1) > end)
		return 0;
	p->l3_off = sizeof(*eth);
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);

		if ((void *)(ip + 1) > end)
			return 0;
		if (ip->version != 4 || ip->ihl != 5 ||
		    (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET)))
			return 0;
		/* Forwarded here it would need a TTL to decrement: the stack answers time
		 * exceeded. */
		if (ip->ttl <= 1)
			return 0;
		p->family = DP_AF_INET;
		p->proto = ip->protocol;
		p->saddr[0] = ip->saddr;
		p->daddr[0] = ip->daddr;
		return xdp_parse_l4(p, data, end, XDP_L4_OFF4,
				    bpf_ntohs(ip->tot_len) - IPV4_BASE_LEN);
	}
	if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > end)
			return 0;
		/* As for IPv4's TTL: the stack answers ICMPv6 time exceeded. */
		if (ip6->version != 6 || ip6->hop_limit <= 1)
			return 0;
		p->family = DP_AF_INET6;
		/* An extension header (fragment, routing, ..., the DSR destination options a
		 * backend's node receives) is no TCP/UDP here: xdp_parse_l4() leaves it to TC,
		 * whose translation leaves such packets alone too (parse_packet()'s PKT_EXT) but
		 * for the DSR header, which dsr_accept6() learns and strips. */
		p->proto = ip6->nexthdr;
		__builtin_memcpy(p->saddr, &ip6->saddr, 16);
		__builtin_memcpy(p->daddr, &ip6->daddr, 16);
		return xdp_parse_l4(p, data, end, XDP_L4_OFF6, bpf_ntohs(ip6->payload_len));
	}
	return 0;
}


/*
 * Whether a new flow to a backend of @svc on another node goes with DSR: lb_forward()'s rule,
 * for both families (the rest of the path - entries, events, routing - is family-blind).
 */
static __always_inline int xdp_dsr(const struct svc_value *svc)
{
	return svc->flags & SVC_F_DSR;
}

/*
 * Whether a DSR request of @p still fits the underlay MTU once its header is added
 * (dsr_too_big()); when it does not, TC answers ICMP fragmentation needed / Packet Too Big.
 * (A subprogram: inlined, it grows xdp_new_flow()'s frame past its call chain's room.)
 */
static __noinline int xdp_dsr_fits(struct xdp_md *ctx, const struct pkt *p)
{
	__u32 len = ctx->data_end - ctx->data;

	return !dsr_too_big(len - sizeof(struct ethhdr), p->family);
}

/**
 * xdp_route() - FIB lookup (as a forwarding decision on the ingress interface) for the packet
 * as it will leave. Fills the egress interface and MAC addresses of @x.
 * Returns 0 when the packet can be sent on, -1 otherwise (no route, local delivery, no
 * neighbour entry yet, forwarding disabled, too big for the route's MTU, a way out other
 * than the uplink it came in on).
 */
static __noinline int xdp_route(struct xdp_md *ctx, const struct pkt *p, struct xdp_xlate *x)
{
	struct bpf_fib_lookup fib;
	__u32 len = ctx->data_end - ctx->data;
	long ret;

	__builtin_memset(&fib, 0, sizeof(fib));
	fib.l4_protocol = p->proto;
	fib.sport = x->sport;
	fib.dport = x->dport;
	/* (checked against the route's MTU for both families: a packet over it goes to TC, as
	 * without XDP) */
	fib.tot_len = len - sizeof(struct ethhdr) + (x->dsr ? dsr_overhead(p->family) : 0);
	if (p->family == DP_AF_INET) {
		fib.family = AF_INET;
		fib.ipv4_src = x->saddr[0];
		fib.ipv4_dst = x->daddr[0];
	} else {
		fib.family = AF_INET6;
		__builtin_memcpy(fib.ipv6_src, x->saddr, 16);
		__builtin_memcpy(fib.ipv6_dst, x->daddr, 16);
	}
	fib.ifindex = ctx->ingress_ifindex;
	ret = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
	if (ret != BPF_FIB_LKUP_RET_SUCCESS)
		return -1;
	/* Back out of the uplink only (other nodes, DSR): an XDP redirect into a pod's veth
	 * would reach the pod past dp_to_pod and its ingress policy (a connection policy
	 * denied there keeps its dp_ct entries); another way out is TC's. */
	if (fib.ifindex != ctx->ingress_ifindex)
		return -1;
	x->ifindex = fib.ifindex;
	__builtin_memcpy(x->smac, fib.smac, ETH_ALEN);
	__builtin_memcpy(x->dmac, fib.dmac, ETH_ALEN);
	return 0;
}

/*
 * @acc plus the one's-complement change of an address of @words 32-bit words (1: IPv4, 4:
 * IPv6) from @old to @new.
 */
static __always_inline __u64 xdp_addr_delta(__u64 acc, const __u32 *old, const __u32 *new,
					    int words)
{
#pragma unroll
	for (int i = 0; i < words; i++)
		acc = csum_delta(acc, old[i], new[i]);
	return acc;
}

/*
 * The TCP/UDP/SCTP header at @l4 for @x: the ports, and the checksum for them and for @acc,
 * the change of the pseudo header's addresses (the same words for both families, 1 or 4 per
 * address; SCTP's CRC32c covers no addresses, only the ports change it). Returns 0, or -1 when the header is not all in the packet.
 */
static __always_inline int xdp_l4_rewrite(const struct pkt *p, const struct xdp_xlate *x,
					  void *l4, void *end, __u64 acc)
{
	__u16 *l4_check;
	__u16 check;

	if (l4 + sizeof(struct udphdr) > end)
		return -1;
	acc = csum_delta(acc, ports_word(p->sport, p->dport), ports_word(x->sport, x->dport));
	((__be16 *)l4)[0] = x->sport;
	((__be16 *)l4)[1] = x->dport;
	if (p->proto == IPPROTO_SCTP) {
		/* No pseudo header: the addresses leave the CRC32c alone (csum.h). */
		__u32 *crc = l4 + SCTP_CRC_OFF;

		if ((void *)(crc + 1) > end)
			return -1;
		*crc = sctp_crc_update(*crc, ports_word(p->sport, p->dport),
				       ports_word(x->sport, x->dport), p->sctp_len);
	} else if (p->proto == IPPROTO_TCP) {
		if (l4 + sizeof(struct tcphdr) > end)
			return -1;
		l4_check = l4 + offsetof(struct tcphdr, check);
		*l4_check = csum_update(*l4_check, acc);
	} else {
		l4_check = l4 + offsetof(struct udphdr, check);
		/* 0: the sender computed no checksum (IPv6 forbids that, but TC's
		 * BPF_F_MARK_MANGLED_0 leaves it too: the receiver judges it as it would have);
		 * a computed 0 is sent as 0xffff. */
		if (*l4_check) {
			check = csum_update(*l4_check, acc);
			*l4_check = check ? check : 0xffff;
		}
	}
	return 0;
}

static __always_inline void xdp_set_macs(struct ethhdr *eth, const struct xdp_xlate *x)
{
	__builtin_memcpy(eth->h_dest, x->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, x->smac, ETH_ALEN);
}

/**
 * xdp_rewrite4() - apply @x to an IPv4 packet: addresses, ports, checksums, the DSR option
 * (inserted after the 20-byte IPv4 header: ihl 7, tot_len + 8) and the Ethernet addresses.
 * Returns 0, or -1 when the head could not be grown (the packet is then unchanged).
 */
static __noinline int xdp_rewrite4(struct xdp_md *ctx, const struct pkt *p,
				   const struct xdp_xlate *x)
{
	void *data, *end;
	struct ethhdr *eth;
	struct iphdr *ip;
	struct iphdr hdr;
	struct dsr_opt opt;
	__u32 old_w0, new_w0;
	void *l4;
	__u32 l4_off = XDP_L4_OFF4;
	__u64 acc;

	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	ip = data + sizeof(struct ethhdr);
	if ((void *)(ip + 1) > end)
		return -1;
	hdr = *ip;
	/* Forwarded: one hop, as the stack counts it (xdp_parse passed TTLs that run out). */
	ipv4_dec_ttl(&hdr);

	/* IPv4 header: addresses, and for DSR ihl/tot_len and the option's words. */
	acc = csum_delta(0, hdr.saddr, x->saddr[0]);
	acc = csum_delta(acc, hdr.daddr, x->daddr[0]);
	hdr.saddr = x->saddr[0];
	hdr.daddr = x->daddr[0];
	if (x->dsr) {
		old_w0 = *(__u32 *)&hdr;
		hdr.ihl = (IPV4_BASE_LEN + DSR_OPT_LEN) / 4;
		hdr.tot_len = bpf_htons(bpf_ntohs(hdr.tot_len) + DSR_OPT_LEN);
		new_w0 = *(__u32 *)&hdr;
		opt.type = DSR_OPT_TYPE;
		opt.len = DSR_OPT_LEN;
		opt.port = x->fe_port;
		opt.addr = x->fe_addr[0];
		acc = csum_delta(acc, old_w0, new_w0);
		acc = csum_delta(acc, 0, ((__u32 *)&opt)[0]);
		acc = csum_delta(acc, 0, ((__u32 *)&opt)[1]);
	}
	hdr.check = csum_update(hdr.check, acc);

	if (x->dsr) {
		/* Grow at the head and write the headers in their new places: the L4 header
		 * does not move. */
		if (bpf_xdp_adjust_head(ctx, -(int)DSR_OPT_LEN))
			return -1;
		l4_off += DSR_OPT_LEN;
		data = (void *)(long)ctx->data;
		end = (void *)(long)ctx->data_end;
	}
	eth = data;
	ip = data + sizeof(struct ethhdr);
	l4 = data + l4_off;
	if ((void *)(ip + 1) > end || l4 + sizeof(struct udphdr) > end)
		return -1;
	*ip = hdr;
	if (x->dsr) {
		if ((void *)(ip + 1) + sizeof(opt) > end)
			return -1;
		__builtin_memcpy(ip + 1, &opt, sizeof(opt));
	}
	xdp_set_macs(eth, x);
	eth->h_proto = bpf_htons(ETH_P_IP);

	acc = xdp_addr_delta(0, p->saddr, x->saddr, 1);
	acc = xdp_addr_delta(acc, p->daddr, x->daddr, 1);
	return xdp_l4_rewrite(p, x, l4, end, acc);
}

/**
 * xdp_rewrite6() - apply @x to an IPv6 packet: addresses, hop limit, ports, the L4 checksum
 * (its pseudo header's addresses, all four words of each; IPv6 has no header checksum) and
 * the Ethernet addresses; with DSR after xdp_dsr_grow6() put the destination-options header
 * in (the L4 header 24 bytes further from the start; its checksum's pseudo header keeps its
 * upper-layer length). The result is the bytes TC's lb_forward() and dp_route() make of the
 * same packet (nat_src()/nat_dst(), dsr_forward6() and forward_ttl()), with the MACs of the
 * FIB's answer.
 * Returns 0, or -1 when the headers are not all in the packet.
 */
static __noinline int xdp_rewrite6(struct xdp_md *ctx, const struct pkt *p,
				   const struct xdp_xlate *x)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct ipv6hdr *ip6 = data + sizeof(struct ethhdr);
	__u64 acc;

	if ((void *)(ip6 + 1) > end)
		return -1;
	acc = xdp_addr_delta(0, p->saddr, x->saddr, 4);
	acc = xdp_addr_delta(acc, p->daddr, x->daddr, 4);
	if (xdp_l4_rewrite(p, x, data + XDP_L4_OFF6 + (x->dsr ? DSR_OPT6_LEN : 0), end, acc) < 0)
		return -1;
	/* Forwarded: one hop (xdp_parse passed hop limits that run out). */
	ip6->hop_limit--;
	__builtin_memcpy(&ip6->saddr, x->saddr, 16);
	__builtin_memcpy(&ip6->daddr, x->daddr, 16);
	xdp_set_macs(eth, x);
	return 0;
}

/*
 * For xdp_rewrite6() with DSR: grows the packet at the head by the destination-options header
 * and writes it {x->fe_addr, x->fe_port} after the fixed header (next header 60, payload
 * length + 24); the fixed header's first 8 bytes move with it, the rest of it and the MACs
 * are xdp_rewrite6()'s to write, and the L4 header does not move. A subprogram of its own
 * (and nothing bigger than a word through the stack): xdp_rewrite6()'s frame is the last of
 * xdp_new_flow()'s call chain, at the 512-byte limit.
 * Returns 0, or -1 when the head could not be grown (the packet is then unchanged).
 */
static __noinline int xdp_dsr_grow6(struct xdp_md *ctx, const struct xdp_xlate *x)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ipv6hdr *ip6 = data + sizeof(struct ethhdr);
	__u64 w;
	__u8 *b = (__u8 *)&w;
	__u8 *opt;

	if ((void *)(ip6 + 1) > end)
		return -1;
	w = *(__u64 *)ip6;
	if (bpf_xdp_adjust_head(ctx, -(int)DSR_OPT6_LEN))
		return -1;
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	ip6 = data + sizeof(struct ethhdr);
	opt = (void *)(ip6 + 1);
	if ((void *)(opt + DSR_OPT6_LEN) > end)
		return -1;
	opt[0] = b[6]; /* the old next header */
	opt[1] = (DSR_OPT6_LEN - 8) / 8;
	opt[2] = DSR_OPT6_TYPE;
	opt[3] = DSR_OPT6_LEN - 4;
	*(__be16 *)&opt[4] = x->fe_port;
	opt[6] = 0;
	opt[7] = 0;
	__builtin_memcpy(opt + offsetof(struct dsr_opt6, addr), x->fe_addr, 16);
	*(__be16 *)&b[4] = bpf_htons(bpf_ntohs(*(__be16 *)&b[4]) + DSR_OPT6_LEN);
	b[6] = IPPROTO_DSTOPTS;
	*(__u64 *)ip6 = w;
	((struct ethhdr *)data)->h_proto = bpf_htons(ETH_P_IPV6);
	return 0;
}

/* xdp_rewrite4() or xdp_rewrite6(), by @p's family. */
static __always_inline int xdp_rewrite(struct xdp_md *ctx, const struct pkt *p,
				       const struct xdp_xlate *x)
{
	if (p->family == DP_AF_INET)
		return xdp_rewrite4(ctx, p, x);
	if (x->dsr && xdp_dsr_grow6(ctx, x) < 0)
		return -1;
	return xdp_rewrite6(ctx, p, x);
}

static __always_inline int xdp_send(struct xdp_md *ctx, const struct xdp_xlate *x)
{
	stat_inc(STAT_XDP_FORWARDED);
	if (x->dsr)
		stat_inc(STAT_DSR_FORWARDED);
	else
		stat_inc(STAT_TRANSLATED);
	if (x->ifindex == ctx->ingress_ifindex)
		return XDP_TX;
	return bpf_redirect(x->ifindex, 0);
}

/* Whether a forward entry is one XDP continues: DSR, or SNAT of a flow from the uplink. */
static __always_inline int xdp_takes_entry(const struct ct_entry *e)
{
	if (e->flags & (CT_F_MASQ | CT_F_HAIRPIN | CT_F_INBOUND))
		return 0;
	if (e->flags & CT_F_DSR)
		return 1;
	return (e->flags & (CT_F_SNAT | CT_F_EXTERNAL)) == (CT_F_SNAT | CT_F_EXTERNAL);
}

/**
 * xdp_established() - a packet of a flow with a forward entry: the same translation as
 * lb_forward()'s established path, when the entry is DSR or external SNAT to another node.
 */
static __noinline int xdp_established(struct xdp_md *ctx, struct pkt *p, struct ct_entry *fwd)
{
	struct xdp_xlate x;

	if (!xdp_takes_entry(fwd) || is_local(p, fwd->nat_addr))
		return XDP_PASS;
	__builtin_memset(&x, 0, sizeof(x));
	addr_copy(x.daddr, fwd->nat_addr);
	x.dport = fwd->nat_port;
	if (fwd->flags & CT_F_DSR) {
		if (!xdp_dsr_fits(ctx, p))
			return XDP_PASS;
		x.dsr = 1;
		addr_copy(x.saddr, p->saddr);
		x.sport = p->sport;
		addr_copy(x.fe_addr, p->daddr);
		x.fe_port = p->dport;
	} else {
		addr_copy(x.saddr, fwd->snat_addr);
		x.sport = fwd->snat_port;
	}
	if (xdp_route(ctx, p, &x) < 0)
		return XDP_PASS;
	ct_touch(fwd, p, 0);
	if (xdp_rewrite(ctx, p, &x) < 0)
		return XDP_PASS;
	return xdp_send(ctx, &x);
}

/*
 * The conntrack entries lb_forward() writes for a new external flow: the forward entry, and
 * for a non-DSR flow the reverse one (@rk: backend -> client, or -> the SNAT address).
 * Returns 0, or -1 when an entry could not be written (TC then tries and counts it).
 */
static __always_inline int xdp_ct_create(const struct pkt *p, const struct svc_value *svc,
					 const struct backend *be, __u32 backend_id,
					 int do_snat, int dsr, const __u32 *snat,
					 struct ct_key *rk)
{
	struct ct_key fk;
	struct ct_entry e = {};

	e.created_ns = bpf_ktime_get_ns();
	e.last_seen_ns = e.created_ns;
	e.backend_id = backend_id;
	e.svc_id = svc->id;
	e.flags = (do_snat ? CT_F_SNAT : 0) | (dsr ? CT_F_DSR : 0) | CT_F_EXTERNAL;
	e.tcp_state = tcp_bits(p, 0);
	if (!dsr) {
		/* reverse: nat = frontend, snat = the original client */
		addr_copy(e.nat_addr, p->daddr);
		e.nat_port = p->dport;
		addr_copy(e.snat_addr, p->saddr);
		e.snat_port = p->sport;
		e.flags |= CT_F_REV;
		/* Found free by the caller; another CPU may have taken it since (lb_forward's
		 * rule): then nothing is written and TC decides. */
		if (bpf_map_update_elem(&dp_ct, rk, &e, BPF_NOEXIST) < 0)
			return -1;
		ct_mark_used(rk);
		e.flags &= ~CT_F_REV;
	}
	addr_copy(e.nat_addr, be->addr);
	e.nat_port = be->port;
	addr_copy(e.snat_addr, snat);
	e.snat_port = rk->dport;
	ct_key_from_pkt(&fk, p);
	if (bpf_map_update_elem(&dp_ct, &fk, &e, BPF_ANY) < 0)
		return -1;
	ct_mark_used(&fk);
	stat_inc(STAT_CT_CREATED);
	return 0;
}

/*
 * Reports the new connection of @p (as it arrived) that XDP has just written the entries of,
 * to backend @be (@ids: the frontend's id, and the backend's in bits 32-63); @rk is its
 * reverse key, whose destination is the source the packet leaves with (the SNAT address and
 * port, or the client's own). TC sees only its later packets (established: no event). The
 * record is written in place: xdp_new_flow()'s frame leaves no room for a translated copy of
 * the packet.
 */
static __noinline void ev_xdp_new(struct xdp_md *ctx, const struct pkt *p,
				  const struct backend *be, __u64 ids, const struct ct_key *rk)
{
	struct flow_event *e;

	e = ev_reserve(ctx->ingress_ifindex, (__u32)ids, (__u32)(ids >> 32),
		       EV_META(EV_KIND_NEW_CONN, EV_VERDICT_TRANSLATED, DR_NONE, PT_XDP,
			       EV_DIR_ORIGINAL),
		       p->family, p->proto, p->tcp_flags, p->saddr, p->daddr, p->sport, p->dport);
	if (!e)
		return;
	e->flags = EV_F_TRANSLATED;
	addr_copy(e->nat_saddr, rk->daddr);
	e->nat_sport = rk->dport;
	addr_copy(e->nat_daddr, be->addr);
	e->nat_dport = be->port;
	ev_submit(e); /* batched wake-ups, as every new-connection record */
}

/*
 * Drops @p, the first packet of a connection (no live forward entry) to the external frontend
 * @svc_id whose loadBalancerSourceRanges leave its source out: lb_forward()'s DROP_SRC_RANGE,
 * with what dp_from_uplink counts and reports for it (STAT_CT_LOST first for a TCP packet
 * without SYN, as lb_forward() counts it; STAT_DROPPED; dp_drops and the rate-limited drop
 * event, here at PT_XDP). Like TC, only a new connection is judged: an established one keeps
 * going when the ranges change (kube-proxy's nftables mode jumps to its firewall-check chain
 * on `ct state new` only, pkg/proxy/nftables/proxier.go nftablesJumpChains). Cilium makes
 * this drop at XDP too (bpf/lib/nodeport.h, nodeport_lb4(): lb4_src_range_ok() ->
 * DROP_NOT_IN_SRC_RANGE, built into bpf_xdp.c with NodePort acceleration), though for every
 * packet to the frontend, before its conntrack lookup.
 */
static __noinline int xdp_drop_src_range(struct xdp_md *ctx, const struct pkt *p, __u32 svc_id)
{
	struct flow_event *e;

	if (p->proto == IPPROTO_TCP && !(p->tcp_flags & TCPF_SYN))
		stat_inc(STAT_CT_LOST);
	stat_inc(STAT_DROPPED);
	e = ev_reserve(ctx->ingress_ifindex, svc_id, 0,
		       EV_META(EV_KIND_DROP, EV_VERDICT_DROPPED, DR_SOURCE_RANGE, PT_XDP,
			       EV_DIR_ORIGINAL),
		       p->family, p->proto, p->tcp_flags, p->saddr, p->daddr, p->sport, p->dport);
	if (e)
		ev_submit(e);
	return XDP_DROP;
}

/**
 * xdp_new_flow() - a packet without a (live) forward entry: lb_forward()'s decisions for an
 * external frontend. A flow to a remote backend is translated and sent on; a flow to a local
 * backend gets its conntrack entries (so that TC keeps the backend chosen here) and is passed.
 */
static __noinline int xdp_new_flow(struct xdp_md *ctx, struct pkt *p)
{
	struct xdp_xlate x;
	struct svc_value *svc;
	struct backend *be;
	struct ct_key rk;
	__u32 snat[4] = {};
	__u32 backend_id = 0;
	__u64 ids;
	int do_snat = 0;
	int dsr = 0;
	int local;

	svc = svc_lookup(p, SVC_SCOPE_EXTERNAL, 0);
	if (!svc)
		return XDP_PASS;
	/* Before the backends, as in lb_forward(): a frontend without any drops outsiders too. */
	if ((svc->flags & SVC_F_SRC_RANGES) && !src_allowed(svc, p))
		return xdp_drop_src_range(ctx, p, svc->id);
	if (svc->slot_count == 0)
		return XDP_PASS;
	/* A connection that lost its entry: TC's lb_forward() counts it (STAT_CT_LOST). */
	if (p->proto == IPPROTO_TCP && !(p->tcp_flags & TCPF_SYN))
		return XDP_PASS;
	be = select_backend(svc, p, &backend_id);
	if (!be || be->family != p->family)
		return XDP_PASS;
	local = is_local(p, be->addr);
	if (xdp_dsr(svc) && !local)
		dsr = 1;
	else if (svc->flags & SVC_F_SNAT)
		do_snat = 1;
	else if (!local)
		return XDP_PASS; /* plain DNAT to another node: not a fast-path mode */

	if (do_snat) {
		if (node_addr(p, snat) < 0 || snat_pick_port(p, be, snat, &rk) < 0)
			return XDP_PASS;
	} else {
		ct_reply_key(&rk, p, be->addr, be->port);
		/* The client's tuple to a local backend is taken (by another connection from the
		 * same client port, or by this one's earlier life): TC's lb_forward() remaps the
		 * port or reopens the entry. */
		if (!dsr && bpf_map_lookup_elem(&dp_ct, &rk))
			return XDP_PASS;
	}
	ids = ((__u64)backend_id << 32) | svc->id;
	if (local) {
		/* Random selection would pick again in TC (and favour remote backends). */
		if (xdp_ct_create(p, svc, be, backend_id, do_snat, 0, snat, &rk) == 0)
			ev_xdp_new(ctx, p, be, ids, &rk);
		return XDP_PASS;
	}

	__builtin_memset(&x, 0, sizeof(x));
	addr_copy(x.daddr, be->addr);
	x.dport = be->port;
	x.dsr = dsr;
	if (dsr) {
		addr_copy(x.saddr, p->saddr);
		x.sport = p->sport;
		addr_copy(x.fe_addr, p->daddr);
		x.fe_port = p->dport;
		if (!xdp_dsr_fits(ctx, p))
			return XDP_PASS;
	} else {
		addr_copy(x.saddr, snat);
		x.sport = rk.dport;
	}
	if (xdp_route(ctx, p, &x) < 0)
		return XDP_PASS;
	if (xdp_ct_create(p, svc, be, backend_id, do_snat, dsr, snat, &rk) < 0)
		return XDP_PASS;
	ev_xdp_new(ctx, p, be, ids, &rk);
	if (xdp_rewrite(ctx, p, &x) < 0)
		return XDP_PASS;
	return xdp_send(ctx, &x);
}

/*
 * The ports (and TCP flags) of @hp, whose TCP/UDP/SCTP header is at @l4_off of the packet
 * from @data to @end; nothing for another protocol. Returns 0, or -1 when the header is cut
 * short (TC finds what there is). (@data and @end are the caller's: loaded
 * from the context again here, clang may merge the loads into a shift of data_end, which
 * the verifier refuses.)
 */
static __always_inline int host_xdp_ports(struct host_pkt *hp, void *data, void *end,
					  __u32 l4_off)
{
	__u8 *l4;

	if (hp->proto != IPPROTO_TCP && hp->proto != IPPROTO_UDP && hp->proto != IPPROTO_SCTP)
		return 0;
	l4_off &= 0xff;
	l4 = data + l4_off;
	if ((void *)(l4 + 14) > end) {
		if (hp->proto == IPPROTO_TCP || (void *)(l4 + 4) > end)
			return -1;
	} else if (hp->proto == IPPROTO_TCP) {
		hp->tcp_flags = l4[13];
	}
	hp->sport = *(__be16 *)&l4[0];
	hp->dport = *(__be16 *)&l4[2];
	return 0;
}

/*
 * Whether @hp is for one of the node's addresses on an inbound failsafe port. The port's
 * lookup first: a flood is nearly never on a failsafe port, and then costs one lookup.
 */
static __always_inline int host_xdp_failsafe(const struct host_pkt *hp, __u32 gen)
{
	struct pkt p;

	p.family = hp->family;
	return host_failsafe(hp, gen, 0) && (cidr_bits(&p, hp->daddr) & CIDR_F_NODE);
}

/**
 * host_xdp() - host policy's untracked ingress rules at XDP, before anything else: a packet
 * whose first matching untracked rule is a Deny is dropped here (counted per rule in
 * dp_host_drops and at the `xdp` point with reason Policy), unless it is for one of the
 * node's addresses on an inbound failsafe port. Returns XDP_DROP; XDP_PASS when TC must
 * decide (an untracked Allow, which must get no conntrack entry from the fast path; pre-DNAT
 * or normal rules in force, which TC applies; an IPv6 extension header or IPv4 fragment, or a
 * cut-short TCP/UDP header, whose ports TC finds); HOST_GO_ON when host policy has nothing to
 * say. Its own frame: the fast path's chain below is at the stack limit.
 *
 * The verdict comes first and the failsafe check after it, only for a packet the rules would
 * drop or leave to TC (a failsafe packet is the rest of the program's, whatever the rules
 * say): a packet no rule matches, the bulk of traffic, pays no failsafe lookup. When every
 * untracked ingress rule matches on source nets alone (HC_F_SRC_ONLY_IN, user space's
 * verdict on the rules: a blocklist) the source lookup decides alone (host_first_src()), and
 * the ports are read only for a packet it matched; otherwise host_first()'s four lookups,
 * the source first. So a flood from a blocked prefix costs two lookups (its source, the
 * failsafe port) and a packet from elsewhere one. Counters are per-CPU (no atomic add).
 *
 * Calico's XDP program (felix/bpf-gpl/xdp.c) does the same with its untracked policy
 * program: failsafes first (failsafe.h), then the policy; it tells TC through the XDP
 * metadata (metadata.h) that a packet was allowed, where TC here simply judges the packet
 * again with the same maps (same verdict, one more lookup). Cilium's XDP prefilter
 * (bpf/bpf_xdp.c, check_v4(): the source looked up in CIDR4_LMAP_NAME, an LPM trie of
 * denied prefixes, and dropped on a hit) is the same one-lookup drop by source, with no
 * rules or failsafes beside it.
 */
static __noinline int host_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct host_pkt hp;
	__u32 l4_off;
	__u32 flags;
	__u32 later;
	__u32 gen;
	int verdict;
	int idx = -1;

	gen = host_gen(&flags);
	if (!(flags & HC_F_ON) ||
	    !(flags & ((1 << HS_UNTRACKED_IN) | (1 << HS_PREDNAT_IN) | HC_F_NORMAL)))
		return HOST_GO_ON;
	if ((void *)(eth + 1) > end)
		return HOST_GO_ON;
	__builtin_memset(&hp, 0, sizeof(hp));
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);

		if ((void *)(ip + 1) > end || ip->ihl < 5)
			return XDP_PASS;
		hp.family = DP_AF_INET;
		hp.proto = ip->protocol;
		hp.saddr[0] = ip->saddr;
		hp.daddr[0] = ip->daddr;
		if (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET))
			return XDP_PASS;
		l4_off = sizeof(*eth) + ip->ihl * 4;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > end || ipv6_is_ext(ip6->nexthdr))
			return XDP_PASS;
		hp.family = DP_AF_INET6;
		hp.proto = ip6->nexthdr;
		__builtin_memcpy(hp.saddr, &ip6->saddr, 16);
		__builtin_memcpy(hp.daddr, &ip6->daddr, 16);
		l4_off = sizeof(*eth) + sizeof(*ip6);
	} else {
		return HOST_GO_ON;
	}
	/* What a packet no untracked rule matches gets: pre-DNAT and normal policies are TC's
	 * (and the connections they track). */
	later = (flags & ((1 << HS_PREDNAT_IN) | HC_F_NORMAL)) ? XDP_PASS : HOST_GO_ON;
	if ((flags & (HC_F_SRC_ONLY_IN | (1 << HS_UNTRACKED_IN))) ==
	    (HC_F_SRC_ONLY_IN | (1 << HS_UNTRACKED_IN))) {
		idx = host_first_src(&hp, gen, HS_UNTRACKED_IN);
		/* (a cut-short header so left alone is passed by xdp_parse(), as here) */
		if (idx < 0 && later == HOST_GO_ON)
			return HOST_GO_ON;
		if (host_xdp_ports(&hp, data, end, l4_off) < 0)
			return XDP_PASS;
	} else {
		if (host_xdp_ports(&hp, data, end, l4_off) < 0)
			return XDP_PASS;
		if (flags & (1 << HS_UNTRACKED_IN))
			idx = host_first(&hp, gen, HS_UNTRACKED_IN, ~0ULL);
	}
	if (idx < 0)
		verdict = later;
	else if (host_action(idx) != HA_DENY)
		verdict = XDP_PASS;
	else
		verdict = XDP_DROP;
	if (verdict == HOST_GO_ON || host_xdp_failsafe(&hp, gen))
		return HOST_GO_ON;
	if (verdict == XDP_DROP)
		host_count_drop(&hp, idx, ctx->ingress_ifindex, PT_XDP);
	return verdict;
}

static __always_inline int xdp_uplink(struct xdp_md *ctx)
{
	struct pkt p;
	struct ct_key k;
	struct ct_entry *fwd;
	int host = host_xdp(ctx);

	/* Host policy's untracked denies before anything else. */
	if (host != HOST_GO_ON)
		return host;
	if (!xdp_parse(ctx, &p))
		return XDP_PASS;
	ct_key_from_pkt(&k, &p);
	fwd = bpf_map_lookup_elem(&dp_ct, &k);
	/* Replies (reverse entries) and inbound markers are TC's. */
	if (fwd && !ct_is_fwd(fwd))
		return XDP_PASS;
	if (fwd && !ct_is_reopen(fwd, &p))
		return xdp_established(ctx, &p, fwd);
	return xdp_new_flow(ctx, &p);
}

#endif
