/* SPDX-License-Identifier: Apache-2.0 */
/* parse.h - Ethernet/IPv4/IPv6 + TCP/UDP parsing into a flat struct pkt. */
#ifndef DP_PARSE_H
#define DP_PARSE_H

#include "common.h"

struct pkt {
	__u32 saddr[4];
	__u32 daddr[4];
	__be16 sport;
	__be16 dport;
	__u8 family; /* DP_AF_* */
	__u8 proto;
	__u8 tcp_flags;
	__u8 pad;
	__u32 l3_off;
	__u32 l4_off;
	__u32 csum_off; /* offset of the L4 checksum field, 0 when there is none to fix */
	__u32 seq;      /* TCP sequence number (host order) */
};

#define TCPF_FIN 0x01
#define TCPF_SYN 0x02
#define TCPF_RST 0x04
#define TCPF_ACK 0x10

/**
 * parse_packet() - fill @p from the packet.
 * Returns 1 for a TCP or UDP packet we may translate, 0 for anything else (left untouched),
 * a negative DROP_* for a truncated header.
 */
static __always_inline int parse_packet(struct __sk_buff *skb, struct pkt *p)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	__u32 l4_off;

	__builtin_memset(p, 0, sizeof(*p));
	if ((void *)(eth + 1) > end)
		return 0;
	p->l3_off = sizeof(*eth);
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);

		if ((void *)(ip + 1) > end)
			return DROP_INVALID;
		if (ip->ihl < 5)
			return DROP_INVALID;
		/* Non-first fragments carry no ports: not ours. */
		if (ip->frag_off & bpf_htons(0x1fff))
			return 0;
		p->family = DP_AF_INET;
		p->proto = ip->protocol;
		p->saddr[0] = ip->saddr;
		p->daddr[0] = ip->daddr;
		l4_off = sizeof(*eth) + ip->ihl * 4;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > end)
			return DROP_INVALID;
		/* Extension headers are not walked: such packets are left alone. */
		p->family = DP_AF_INET6;
		p->proto = ip6->nexthdr;
		__builtin_memcpy(p->saddr, &ip6->saddr, 16);
		__builtin_memcpy(p->daddr, &ip6->daddr, 16);
		l4_off = sizeof(*eth) + sizeof(*ip6);
	} else {
		return 0;
	}
	p->l4_off = l4_off;

	if (p->proto == IPPROTO_TCP) {
		struct tcphdr *th = data + l4_off;

		if ((void *)(th + 1) > end)
			return DROP_INVALID;
		p->sport = th->source;
		p->dport = th->dest;
		p->tcp_flags = ((__u8 *)th)[13];
		p->seq = bpf_ntohl(th->seq);
		p->csum_off = l4_off + offsetof(struct tcphdr, check);
		return 1;
	}
	if (p->proto == IPPROTO_UDP) {
		struct udphdr *uh = data + l4_off;

		if ((void *)(uh + 1) > end)
			return DROP_INVALID;
		p->sport = uh->source;
		p->dport = uh->dest;
		p->csum_off = l4_off + offsetof(struct udphdr, check);
		return 1;
	}
	return 0;
}

#endif
