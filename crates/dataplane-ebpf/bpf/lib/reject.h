/* SPDX-License-Identifier: Apache-2.0 */
/*
 * reject.h - answer a packet for a service without backends: a TCP segment with a TCP RST,
 * a UDP datagram with ICMP port unreachable (ICMPv6 port unreachable); either way the client
 * sees ECONNREFUSED. The packet is rewritten in place and sent back out of the interface it
 * came from (or up the stack when it came from the host).
 *
 * Why a RST for TCP: the first SYN of a connect() is sent, rejected here and answered while
 * connect() still holds the client's socket (the whole round trip runs in the softirq that
 * the SYN's own transmission raised). Linux queues a TCP segment for a socket its owner holds
 * (the backlog, processed when connect() releases it), but an ICMP error that finds the
 * socket held is only recorded as a soft error (TcpExtLockDroppedIcmps), so the connection
 * failed only when the SYN retransmitted 1 s later drew a second error. Over IPv6 every
 * rejected connect() waited that second; tests/reject6.rs measures it.
 */
#ifndef DP_REJECT_H
#define DP_REJECT_H

#include "common.h"
#include "parse.h"
#include "csum.h"
#include "dsr.h"

struct icmp4_reply {
	struct iphdr ip;
	__u8 type;
	__u8 code;
	__u16 check;
	__u32 unused;
	struct iphdr oip;
	__u8 ol4[20];
};

struct icmp6_reply {
	struct ipv6hdr ip;
	__u8 type;
	__u8 code;
	__u16 check;
	__u32 unused;
	struct ipv6hdr oip;
	__u8 ol4[20];
};

struct icmp6_pseudo {
	__u32 saddr[4];
	__u32 daddr[4];
	__be32 len;
	__be32 nexthdr;
};

static __always_inline int reject_finish(struct __sk_buff *skb, int ctx, __u32 stat)
{
	struct ethhdr eth;
	__u8 tmp[ETH_ALEN];

	if (bpf_skb_load_bytes(skb, 0, &eth, sizeof(eth)) < 0)
		return TC_ACT_SHOT;
	__builtin_memcpy(tmp, eth.h_dest, ETH_ALEN);
	__builtin_memcpy(eth.h_dest, eth.h_source, ETH_ALEN);
	__builtin_memcpy(eth.h_source, tmp, ETH_ALEN);
	if (bpf_skb_store_bytes(skb, 0, &eth, sizeof(eth), 0) < 0)
		return TC_ACT_SHOT;
	stat_inc(stat);
	/* From the host (egress): deliver the error up the host stack instead. */
	return bpf_redirect(skb->ifindex, ctx == CTX_TO_UPLINK ? BPF_F_INGRESS : 0);
}

/* Quoted L4 bytes: the UDP header, or the whole (option-less part of the) TCP header. */
#define QUOTE_UDP 8
#define QUOTE_TCP 20

/*
 * @code: ICMP_PORT_UNREACH, or ICMP_FRAG_NEEDED with @mtu, the next-hop MTU the client must
 * use (DSR's overhead taken off the underlay MTU).
 */
static __always_inline int reject_v4(struct __sk_buff *skb, const struct pkt *p, int ctx,
				     __u8 code, __u32 mtu)
{
	struct icmp4_reply r;
	int tcp = p->proto == IPPROTO_TCP;
	__u32 room = sizeof(struct iphdr) + 8;
	__u32 len;

	__builtin_memset(&r, 0, sizeof(r));
	if (bpf_skb_load_bytes(skb, p->l3_off, &r.oip, sizeof(r.oip)) < 0)
		return TC_ACT_SHOT;
	if (r.oip.ihl != 5)
		return TC_ACT_SHOT;
	if (tcp) {
		if (bpf_skb_load_bytes(skb, p->l4_off, r.ol4, QUOTE_TCP) < 0)
			return TC_ACT_SHOT;
	} else if (bpf_skb_load_bytes(skb, p->l4_off, r.ol4, QUOTE_UDP) < 0) {
		return TC_ACT_SHOT;
	}
	len = sizeof(r) - (tcp ? 0 : QUOTE_TCP - QUOTE_UDP);
	if (bpf_skb_change_tail(skb, p->l3_off + len - room, 0) < 0)
		return TC_ACT_SHOT;
	if (bpf_skb_adjust_room(skb, room, BPF_ADJ_ROOM_MAC, 0) < 0)
		return TC_ACT_SHOT;

	r.ip.version = 4;
	r.ip.ihl = 5;
	r.ip.tot_len = bpf_htons(len);
	r.ip.ttl = 64;
	r.ip.protocol = IPPROTO_ICMP;
	r.ip.saddr = p->daddr[0];
	r.ip.daddr = p->saddr[0];
	r.ip.check = csum_buf(&r.ip, sizeof(r.ip), 0);
	r.type = ICMP_DEST_UNREACH;
	r.code = code;
	r.unused = bpf_htonl(mtu);
	if (tcp) {
		r.check = csum_buf(&r.type, sizeof(r) - sizeof(r.ip), 0);
		if (bpf_skb_store_bytes(skb, p->l3_off, &r, sizeof(r), BPF_F_INVALIDATE_HASH) < 0)
			return TC_ACT_SHOT;
	} else {
		r.check = csum_buf(&r.type, sizeof(r) - sizeof(r.ip) - (QUOTE_TCP - QUOTE_UDP), 0);
		if (bpf_skb_store_bytes(skb, p->l3_off, &r, sizeof(r) - (QUOTE_TCP - QUOTE_UDP),
					BPF_F_INVALIDATE_HASH) < 0)
			return TC_ACT_SHOT;
	}
	return reject_finish(skb, ctx, code == ICMP_FRAG_NEEDED ? STAT_FRAG_NEEDED : STAT_REJECTED);
}

/*
 * @type, @code: ICMPV6_DEST_UNREACH / ICMPV6_PORT_UNREACH, or ICMPV6_PKT_TOOBIG / 0 with
 * @mtu, the MTU the client must use (DSR's overhead taken off the underlay MTU).
 */
static __always_inline int reject_v6(struct __sk_buff *skb, const struct pkt *p, int ctx,
				     __u8 type, __u8 code, __u32 mtu)
{
	struct icmp6_reply r;
	struct icmp6_pseudo ph;
	int tcp = p->proto == IPPROTO_TCP;
	__u32 room = sizeof(struct ipv6hdr) + 8;
	__u32 len, sum;
	__s64 s;

	__builtin_memset(&r, 0, sizeof(r));
	if (bpf_skb_load_bytes(skb, p->l3_off, &r.oip, sizeof(r.oip)) < 0)
		return TC_ACT_SHOT;
	if (tcp) {
		if (bpf_skb_load_bytes(skb, p->l4_off, r.ol4, QUOTE_TCP) < 0)
			return TC_ACT_SHOT;
	} else if (bpf_skb_load_bytes(skb, p->l4_off, r.ol4, QUOTE_UDP) < 0) {
		return TC_ACT_SHOT;
	}
	len = sizeof(r) - (tcp ? 0 : QUOTE_TCP - QUOTE_UDP);
	if (bpf_skb_change_tail(skb, p->l3_off + len - room, 0) < 0)
		return TC_ACT_SHOT;
	if (bpf_skb_adjust_room(skb, room, BPF_ADJ_ROOM_MAC, 0) < 0)
		return TC_ACT_SHOT;

	r.ip.version = 6;
	r.ip.payload_len = bpf_htons(len - sizeof(r.ip));
	r.ip.nexthdr = IPPROTO_ICMPV6;
	r.ip.hop_limit = 64;
	__builtin_memcpy(&r.ip.saddr, p->daddr, 16);
	__builtin_memcpy(&r.ip.daddr, p->saddr, 16);
	r.type = type;
	r.code = code;
	r.unused = bpf_htonl(mtu);

	addr_copy(ph.saddr, p->daddr);
	addr_copy(ph.daddr, p->saddr);
	ph.len = bpf_htonl(len - sizeof(r.ip));
	ph.nexthdr = bpf_htonl(IPPROTO_ICMPV6);
	s = bpf_csum_diff(NULL, 0, (__be32 *)&ph, sizeof(ph), 0);
	sum = s < 0 ? 0 : (__u32)s;
	if (tcp) {
		r.check = csum_buf(&r.type, sizeof(r) - sizeof(r.ip), sum);
		if (bpf_skb_store_bytes(skb, p->l3_off, &r, sizeof(r), BPF_F_INVALIDATE_HASH) < 0)
			return TC_ACT_SHOT;
	} else {
		r.check = csum_buf(&r.type, sizeof(r) - sizeof(r.ip) - (QUOTE_TCP - QUOTE_UDP), sum);
		if (bpf_skb_store_bytes(skb, p->l3_off, &r, sizeof(r) - (QUOTE_TCP - QUOTE_UDP),
					BPF_F_INVALIDATE_HASH) < 0)
			return TC_ACT_SHOT;
	}
	return reject_finish(skb, ctx, type == ICMPV6_PKT_TOOBIG ? STAT_FRAG_NEEDED : STAT_REJECTED);
}

struct tcp4_rst {
	struct iphdr ip;
	struct tcphdr tcp;
};

struct tcp6_rst {
	struct ipv6hdr ip;
	struct tcphdr tcp;
};

struct tcp4_pseudo {
	__u32 saddr;
	__u32 daddr;
	__u8 zero;
	__u8 proto;
	__be16 len;
};

/*
 * The RST answering @in (RFC 9293 3.10.7.1): from its destination port to its source port;
 * with the segment's acknowledgment number as sequence number when it had one, otherwise
 * sequence 0 and an ACK of everything it occupied (@seg_len: payload + SYN + FIN).
 */
static __always_inline void tcp_rst_of(struct tcphdr *out, const struct tcphdr *in,
				       __u32 seg_len)
{
	__builtin_memset(out, 0, sizeof(*out));
	out->source = in->dest;
	out->dest = in->source;
	out->doff = sizeof(*out) / 4;
	out->rst = 1;
	if (in->ack) {
		out->seq = in->ack_seq;
	} else {
		out->ack = 1;
		out->ack_seq = bpf_htonl(bpf_ntohl(in->seq) + seg_len + in->syn + in->fin);
	}
}

/*
 * Answer a TCP segment with a RST in place: the skb is cut to the IP header plus a bare TCP
 * header (20 bytes: a CHECKSUM_PARTIAL skb may not be cut before its checksum field, at byte
 * 16), and both headers are rewritten. The checksum is complete. An skb that stays
 * CHECKSUM_PARTIAL (sent by a pod or the host, so its checksum starts at this TCP header) goes
 * only to the local receiver that sent it, which takes a partial checksum as verified.
 */
static __always_inline int reject_tcp_v4(struct __sk_buff *skb, const struct pkt *p, int ctx)
{
	struct tcp4_pseudo ph;
	struct tcp4_rst r;
	struct iphdr ip;
	struct tcphdr th;
	__u32 seg_len;
	__s64 sum;

	if (bpf_skb_load_bytes(skb, p->l3_off, &ip, sizeof(ip)) < 0 || ip.ihl != 5)
		return TC_ACT_SHOT;
	if (bpf_skb_load_bytes(skb, p->l4_off, &th, sizeof(th)) < 0)
		return TC_ACT_SHOT;
	seg_len = bpf_ntohs(ip.tot_len) - sizeof(ip) - th.doff * 4;
	if (bpf_skb_change_tail(skb, p->l3_off + sizeof(r), 0) < 0)
		return TC_ACT_SHOT;

	__builtin_memset(&r.ip, 0, sizeof(r.ip));
	r.ip.version = 4;
	r.ip.ihl = 5;
	r.ip.tot_len = bpf_htons(sizeof(r));
	r.ip.ttl = 64;
	r.ip.protocol = IPPROTO_TCP;
	r.ip.saddr = p->daddr[0];
	r.ip.daddr = p->saddr[0];
	r.ip.check = csum_buf(&r.ip, sizeof(r.ip), 0);
	tcp_rst_of(&r.tcp, &th, seg_len);
	ph.saddr = r.ip.saddr;
	ph.daddr = r.ip.daddr;
	ph.zero = 0;
	ph.proto = IPPROTO_TCP;
	ph.len = bpf_htons(sizeof(r.tcp));
	sum = bpf_csum_diff(NULL, 0, (__be32 *)&ph, sizeof(ph), 0);
	r.tcp.check = csum_buf(&r.tcp, sizeof(r.tcp), sum < 0 ? 0 : (__u32)sum);
	if (bpf_skb_store_bytes(skb, p->l3_off, &r, sizeof(r), BPF_F_INVALIDATE_HASH) < 0)
		return TC_ACT_SHOT;
	return reject_finish(skb, ctx, STAT_REJECTED);
}

static __always_inline int reject_tcp_v6(struct __sk_buff *skb, const struct pkt *p, int ctx)
{
	struct icmp6_pseudo ph;
	struct tcp6_rst r;
	struct ipv6hdr ip;
	struct tcphdr th;
	__u32 seg_len;
	__s64 sum;

	if (bpf_skb_load_bytes(skb, p->l3_off, &ip, sizeof(ip)) < 0)
		return TC_ACT_SHOT;
	if (bpf_skb_load_bytes(skb, p->l4_off, &th, sizeof(th)) < 0)
		return TC_ACT_SHOT;
	seg_len = bpf_ntohs(ip.payload_len) - th.doff * 4;
	if (bpf_skb_change_tail(skb, p->l3_off + sizeof(r), 0) < 0)
		return TC_ACT_SHOT;

	__builtin_memset(&r.ip, 0, sizeof(r.ip));
	r.ip.version = 6;
	r.ip.payload_len = bpf_htons(sizeof(r.tcp));
	r.ip.nexthdr = IPPROTO_TCP;
	r.ip.hop_limit = 64;
	__builtin_memcpy(&r.ip.saddr, p->daddr, 16);
	__builtin_memcpy(&r.ip.daddr, p->saddr, 16);
	tcp_rst_of(&r.tcp, &th, seg_len);
	addr_copy(ph.saddr, p->daddr);
	addr_copy(ph.daddr, p->saddr);
	ph.len = bpf_htonl(sizeof(r.tcp));
	ph.nexthdr = bpf_htonl(IPPROTO_TCP);
	sum = bpf_csum_diff(NULL, 0, (__be32 *)&ph, sizeof(ph), 0);
	r.tcp.check = csum_buf(&r.tcp, sizeof(r.tcp), sum < 0 ? 0 : (__u32)sum);
	if (bpf_skb_store_bytes(skb, p->l3_off, &r, sizeof(r), BPF_F_INVALIDATE_HASH) < 0)
		return TC_ACT_SHOT;
	return reject_finish(skb, ctx, STAT_REJECTED);
}

static __noinline int reject(struct __sk_buff *skb, const struct pkt *p, int ctx)
{
	/* RFC 9293 3.10.7.1: a segment carrying RST is never answered with one (nor with an ICMP
	 * error): it is dropped. */
	if (p->proto == IPPROTO_TCP && (p->tcp_flags & TCPF_RST)) {
		stat_inc(STAT_DROPPED);
		return TC_ACT_SHOT;
	}
	if (p->proto == IPPROTO_TCP)
		return p->family == DP_AF_INET ? reject_tcp_v4(skb, p, ctx)
					       : reject_tcp_v6(skb, p, ctx);
	return p->family == DP_AF_INET ? reject_v4(skb, p, ctx, ICMP_PORT_UNREACH, 0)
				       : reject_v6(skb, p, ctx, ICMPV6_DEST_UNREACH,
						   ICMPV6_PORT_UNREACH, 0);
}

/* The underlay MTU less DSR's overhead for @family (0: no MTU configured). */
static __always_inline __u32 dsr_mtu(__u8 family)
{
	__u32 zero = 0;
	struct dp_config *cfg = bpf_map_lookup_elem(&dp_config, &zero);

	return cfg ? cfg->mtu - dsr_overhead(family) : 0;
}

static __noinline int frag_needed4(struct __sk_buff *skb, const struct pkt *p, int ctx)
{
	return reject_v4(skb, p, ctx, ICMP_FRAG_NEEDED, dsr_mtu(DP_AF_INET));
}

static __noinline int frag_needed6(struct __sk_buff *skb, const struct pkt *p, int ctx)
{
	return reject_v6(skb, p, ctx, ICMPV6_PKT_TOOBIG, 0, dsr_mtu(DP_AF_INET6));
}

/*
 * ICMP fragmentation needed (IPv6: Packet Too Big) for a DSR request that does not fit once
 * its header is added, with the MTU that leaves. (One subprogram per family: both in one
 * frame would not fit dp_from_pod's 512-byte stack.)
 */
static __always_inline int frag_needed(struct __sk_buff *skb, const struct pkt *p, int ctx)
{
	if (p->family == DP_AF_INET)
		return frag_needed4(skb, p, ctx);
	return frag_needed6(skb, p, ctx);
}

#endif
