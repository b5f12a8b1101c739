/* SPDX-License-Identifier: Apache-2.0 */
/* parse.h - Ethernet/IPv4/IPv6 + TCP/UDP/SCTP parsing into a flat struct pkt. */
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
	__u8 tcp_flags; /* TCP: the header's flags; SCTP: sctp_flags() of the first chunk */
	__u8 opaque; /* PKT_* when parse_packet() returned 0 for a packet of known addresses */
	__u32 l3_off;
	__u32 l4_off;
	__u32 csum_off; /* offset of the L4 checksum field, 0 when there is none to fix */
	union {
		__u32 seq;      /* TCP sequence number (host order) */
		__u32 sctp_len; /* SCTP: the SCTP packet's length (common header + chunks), which
				 * the CRC32c update after a port rewrite needs (nat.h) */
	};
};

/* pkt.opaque: a packet translation leaves alone, though policy still judges it. */
#define PKT_EXT 1     /* IPv6 with extension headers: proto and ports are the real ones */
#define PKT_NOPORTS 2 /* a non-first fragment (or an IPv6 header chain longer than we walk):
		       * proto is the real one (the last header seen) but the ports are unknown */

/* The IPv6 extension headers parse_packet() walks at most (Cilium's IPV6_MAX_HEADERS). */
#define IPV6_EXT_MAX 4
#define NEXTHDR_AUTH 51

#define TCPF_FIN 0x01
#define TCPF_SYN 0x02
#define TCPF_RST 0x04
#define TCPF_ACK 0x10

/* SCTP chunk types (RFC 9260 section 3.2) that move conntrack state. */
#define SCTP_CID_INIT 1
#define SCTP_CID_INIT_ACK 2
#define SCTP_CID_ABORT 6
#define SCTP_CID_SHUTDOWN 7
#define SCTP_CID_SHUTDOWN_ACK 8
#define SCTP_CID_COOKIE_ECHO 10
#define SCTP_CID_COOKIE_ACK 11
#define SCTP_CID_SHUTDOWN_COMPLETE 14
/* The common header (ports, verification tag, CRC32c) and the first chunk's type, flags and
 * length: what parse_packet() reads of an SCTP packet. */
#define SCTP_HDR_LEN 12
#define SCTP_MIN_LEN 16
#define SCTP_CRC_OFF 8
/* pkt.tcp_flags of an SCTP packet: its first chunk's type in TCP's terms, so that the
 * conntrack state (ct.h tcp_bits()) follows nf_conntrack_proto_sctp's: INIT opens (SYN),
 * INIT-ACK answers (SYN|ACK), SHUTDOWN and SHUTDOWN-ACK close one way (FIN), ABORT and
 * SHUTDOWN-COMPLETE end the association (RST), COOKIE-ACK establishes it (SCTPF_COOKIE_ACK, a
 * bit TCP's flags byte has as URG, which no code reads for SCTP). Only the first chunk: INIT,
 * INIT-ACK and SHUTDOWN-COMPLETE travel alone and COOKIE-ECHO and COOKIE-ACK come first in
 * their packets (RFC 9260 sections 6.10 and 5.1; netfilter's do_basic_checks() refuses
 * anything else); an ABORT or SHUTDOWN bundled after DATA is seen by the next packet's or
 * the idle timeout. */
#define SCTPF_COOKIE_ACK 0x20

static __always_inline __u8 sctp_flags(__u8 chunk)
{
	switch (chunk) {
	case SCTP_CID_INIT:
		return TCPF_SYN;
	case SCTP_CID_INIT_ACK:
		return TCPF_SYN | TCPF_ACK;
	case SCTP_CID_ABORT:
	case SCTP_CID_SHUTDOWN_COMPLETE:
		return TCPF_RST;
	case SCTP_CID_SHUTDOWN:
		return TCPF_FIN;
	case SCTP_CID_SHUTDOWN_ACK:
		return TCPF_FIN | TCPF_ACK;
	case SCTP_CID_COOKIE_ACK:
		return TCPF_ACK | SCTPF_COOKIE_ACK;
	default:
		return TCPF_ACK;
	}
}

/*
 * Walks the IPv6 extension headers from @off, where a header of type @nh starts (as Cilium's
 * ipv6_hdrlen(), bpf/lib/ipv6.h: hop-by-hop, routing, fragment, destination options,
 * authentication), at most IPV6_EXT_MAX of them. Returns the upper layer's offset in bits
 * 0-15, its protocol in bits 16-23 and PKT_NOPORTS in bits 24-31 for a non-first fragment or
 * a chain longer than that; a negative DROP_* for a truncated header. A global function: the
 * verifier checks it once, on its own, instead of along every path through its callers.
 */
__attribute__((noinline)) int ipv6_ext_walk(struct __sk_buff *skb, __u32 off, __u32 nh)
{
	__u8 hdr[4];

	for (int i = 0; i < IPV6_EXT_MAX; i++) {
		if (nh != IPPROTO_HOPOPTS && nh != IPPROTO_ROUTING && nh != IPPROTO_FRAGMENT &&
		    nh != IPPROTO_DSTOPTS && nh != NEXTHDR_AUTH)
			return (nh << 16) | off;
		if (off > 0xffff || bpf_skb_load_bytes(skb, off, hdr, sizeof(hdr)) < 0)
			return DROP_INVALID;
		if (nh == IPPROTO_FRAGMENT) {
			/* The offset (13 bits) is in the upper bits of bytes 2-3. */
			if (((hdr[2] << 8) | hdr[3]) & 0xfff8)
				return (PKT_NOPORTS << 24) | (hdr[0] << 16) | off;
			off += 8;
		} else if (nh == NEXTHDR_AUTH) {
			off += (hdr[1] + 2) << 2;
		} else {
			off += (hdr[1] + 1) << 3;
		}
		nh = hdr[0];
	}
	if (off > 0xffff)
		return DROP_INVALID;
	if (nh == IPPROTO_HOPOPTS || nh == IPPROTO_ROUTING || nh == IPPROTO_FRAGMENT ||
	    nh == IPPROTO_DSTOPTS || nh == NEXTHDR_AUTH)
		return (PKT_NOPORTS << 24) | (nh << 16) | off;
	return (nh << 16) | off;
}

/* Whether @nh is an IPv6 extension header ipv6_ext_walk() walks. */
static __always_inline int ipv6_is_ext(__u8 nh)
{
	return nh == IPPROTO_HOPOPTS || nh == IPPROTO_ROUTING || nh == IPPROTO_FRAGMENT ||
	       nh == IPPROTO_DSTOPTS || nh == NEXTHDR_AUTH;
}

/* The ports (and TCP flags, SCTP chunk and length) of a packet whose upper layer starts at
 * p->l4_off behind extension headers. Returns 0, or DROP_INVALID for a truncated header. */
static __noinline int ext_ports(struct __sk_buff *skb, struct pkt *p)
{
	__u8 hdr[14];
	__be16 plen;

	if (p->proto != IPPROTO_TCP && p->proto != IPPROTO_UDP && p->proto != IPPROTO_SCTP)
		return 0;
	if (bpf_skb_load_bytes(skb, p->l4_off, hdr, p->proto == IPPROTO_UDP ? 4 : 14) < 0)
		return DROP_INVALID;
	p->sport = *(__be16 *)&hdr[0];
	p->dport = *(__be16 *)&hdr[2];
	if (p->proto == IPPROTO_TCP)
		p->tcp_flags = hdr[13];
	if (p->proto == IPPROTO_SCTP) {
		if (bpf_skb_load_bytes(skb, p->l3_off + offsetof(struct ipv6hdr, payload_len), &plen,
				       2) < 0)
			return DROP_INVALID;
		p->tcp_flags = sctp_flags(hdr[SCTP_HDR_LEN]);
		p->sctp_len = bpf_ntohs(plen) - (p->l4_off - p->l3_off - sizeof(struct ipv6hdr));
	}
	return 0;
}

/**
 * parse_packet() - fill @p from the packet.
 * Returns 1 for a TCP, UDP or SCTP packet we may translate, 0 for anything else (left untouched;
 * p->opaque says why when the addresses are known but translation must not touch it),
 * a negative DROP_* for a truncated header.
 */
static __always_inline int parse_packet(struct __sk_buff *skb, struct pkt *p)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	__u32 l4_off;
	__u32 l3_len;
	int ret;

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
		p->family = DP_AF_INET;
		p->proto = ip->protocol;
		p->saddr[0] = ip->saddr;
		p->daddr[0] = ip->daddr;
		l4_off = sizeof(*eth) + ip->ihl * 4;
		l3_len = bpf_ntohs(ip->tot_len) - ip->ihl * 4;
		/* Non-first fragments carry no ports: not ours to translate; policy judges them
		 * by their addresses and protocol only. */
		if (ip->frag_off & bpf_htons(IP_OFFSET)) {
			p->opaque = PKT_NOPORTS;
			return 0;
		}
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > end)
			return DROP_INVALID;
		p->family = DP_AF_INET6;
		p->proto = ip6->nexthdr;
		__builtin_memcpy(p->saddr, &ip6->saddr, 16);
		__builtin_memcpy(p->daddr, &ip6->daddr, 16);
		l4_off = sizeof(*eth) + sizeof(*ip6);
		l3_len = bpf_ntohs(ip6->payload_len);
		if (ipv6_is_ext(p->proto)) {
			/* Behind extension headers: the real protocol and ports for policy
			 * (pol_other); translation leaves such packets alone, as before. */
			ret = ipv6_ext_walk(skb, l4_off, p->proto);
			if (ret < 0)
				return ret;
			p->proto = ret >> 16;
			p->opaque = ret >> 24 ? PKT_NOPORTS : PKT_EXT;
			p->l4_off = ret & 0xffff;
			if (p->opaque == PKT_EXT)
				return ext_ports(skb, p);
			return 0;
		}
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
	if (p->proto == IPPROTO_SCTP) {
		__u8 *sh = data + l4_off;

		if ((void *)(sh + SCTP_MIN_LEN) > end)
			return DROP_INVALID;
		p->sport = *(__be16 *)&sh[0];
		p->dport = *(__be16 *)&sh[2];
		p->tcp_flags = sctp_flags(sh[SCTP_HDR_LEN]);
		/* From the IP header, not the frame: a short frame may carry Ethernet padding.
		 * No csum_off: an address change leaves the CRC32c alone (it covers the SCTP
		 * packet only); a port change updates it (nat.h sctp_nat_ports()). */
		p->sctp_len = l3_len;
		return 1;
	}
	return 0;
}

#endif
