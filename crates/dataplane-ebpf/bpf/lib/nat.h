/* SPDX-License-Identifier: Apache-2.0 */
/* nat.h - address and port rewrites with incremental checksum fixes. */
#ifndef DP_NAT_H
#define DP_NAT_H

#include "common.h"
#include "parse.h"
#include "csum.h"

/*
 * Replace the address at @addr_off (4 or 16 bytes) and fix the L4 checksum (pseudo header)
 * and, for IPv4, the header checksum. BPF_F_PSEUDO_HDR keeps CHECKSUM_PARTIAL skbs from
 * veths correct; BPF_F_MARK_MANGLED_0 keeps a zero UDP checksum meaning "none".
 */
static __always_inline int nat_addr(struct __sk_buff *skb, const struct pkt *p, __u32 addr_off,
				    const __u32 *old, const __u32 *new)
{
	__u64 l4_flags = BPF_F_PSEUDO_HDR;

	if (p->proto == IPPROTO_UDP)
		l4_flags |= BPF_F_MARK_MANGLED_0;
	if (p->family == DP_AF_INET) {
		if (p->csum_off &&
		    bpf_l4_csum_replace(skb, p->csum_off, old[0], new[0], l4_flags | 4) < 0)
			return DROP_INVALID;
		if (bpf_l3_csum_replace(skb, p->l3_off + offsetof(struct iphdr, check), old[0],
					new[0], 4) < 0)
			return DROP_INVALID;
		if (bpf_skb_store_bytes(skb, addr_off, new, 4, 0) < 0)
			return DROP_INVALID;
		return 0;
	}
	if (p->csum_off) {
		__s64 diff = bpf_csum_diff((__be32 *)old, 16, (__be32 *)new, 16, 0);

		if (diff < 0)
			return DROP_INVALID;
		if (bpf_l4_csum_replace(skb, p->csum_off, 0, diff, l4_flags) < 0)
			return DROP_INVALID;
	}
	if (bpf_skb_store_bytes(skb, addr_off, new, 16, 0) < 0)
		return DROP_INVALID;
	return 0;
}

/*
 * An SCTP packet's port rewrites leave its CRC32c to sctp_crc_fix() (hook.h): they note the
 * ports word as it came in (skb->cb[CB_SCTP_PORTS], once per packet; dp_handle() and
 * dp_handle_lo() clear it), and the fix runs once after the translation, whatever was
 * rewritten. Not here: computing the CRC's change is a call, and below lb_forward() (400
 * bytes of stack) the verifier's 512-byte limit for a call chain leaves no room for one more
 * frame (each counts at least 32 bytes).
 */
static __always_inline void sctp_note_ports(struct __sk_buff *skb, const struct pkt *p)
{
	if (p->proto == IPPROTO_SCTP && !skb->cb[CB_SCTP_PORTS])
		skb->cb[CB_SCTP_PORTS] = ports_word(p->sport, p->dport);
}

static __always_inline int nat_port(struct __sk_buff *skb, const struct pkt *p, __u32 port_off,
				    __be16 old, __be16 new)
{
	__u64 l4_flags = 2;

	if (old == new)
		return 0;
	sctp_note_ports(skb, p);
	if (p->proto == IPPROTO_UDP)
		l4_flags |= BPF_F_MARK_MANGLED_0;
	if (p->csum_off && bpf_l4_csum_replace(skb, p->csum_off, old, new, l4_flags) < 0)
		return DROP_INVALID;
	if (bpf_skb_store_bytes(skb, port_off, &new, 2, 0) < 0)
		return DROP_INVALID;
	return 0;
}

static __always_inline __u32 saddr_off(const struct pkt *p)
{
	return p->family == DP_AF_INET ? p->l3_off + offsetof(struct iphdr, saddr)
				       : p->l3_off + offsetof(struct ipv6hdr, saddr);
}

static __always_inline __u32 daddr_off(const struct pkt *p)
{
	return p->family == DP_AF_INET ? p->l3_off + offsetof(struct iphdr, daddr)
				       : p->l3_off + offsetof(struct ipv6hdr, daddr);
}

/*
 * Rewrite an IPv4 TCP/UDP/SCTP packet's destination (@dst) or source to @addr:@port. The L4
 * checksum goes through the helper: only it knows whether the skb's checksum is partial (a
 * veth's usually is), which changes how the pseudo-header part is updated. The addresses, the
 * header checksum and the port are written directly into the packet: two helper calls (each
 * making the skb writable and checking the offset again) per rewrite instead of five.
 */
static __always_inline int nat4(struct __sk_buff *skb, struct pkt *p, int dst, __u32 addr,
				__be16 port)
{
	__u32 old_addr = dst ? p->daddr[0] : p->saddr[0];
	__be16 old_port = dst ? p->dport : p->sport;
	__u64 l4_flags = p->proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
	__u32 l4_off = p->l4_off;
	struct iphdr *ip;
	__be16 *ports;
	void *data;
	void *end;

	if (old_addr == addr && old_port == port)
		return 0;
	if (p->csum_off) {
		if (old_addr != addr &&
		    bpf_l4_csum_replace(skb, p->csum_off, old_addr, addr,
					l4_flags | BPF_F_PSEUDO_HDR | 4) < 0)
			return DROP_INVALID;
		if (old_port != port &&
		    bpf_l4_csum_replace(skb, p->csum_off, old_port, port, l4_flags | 2) < 0)
			return DROP_INVALID;
	}
	if (old_port != port)
		sctp_note_ports(skb, p);
	/* The helpers moved the packet: look again. */
	data = (void *)(long)skb->data;
	end = (void *)(long)skb->data_end;
	ip = data + sizeof(struct ethhdr);
	if ((void *)(ip + 1) > end || l4_off > sizeof(struct ethhdr) + 60)
		return DROP_INVALID;
	ports = data + l4_off;
	if ((void *)(ports + 2) > end)
		return DROP_INVALID;
	if (old_addr != addr) {
		ip->check = csum_replace4(ip->check, old_addr, addr);
		if (dst)
			ip->daddr = addr;
		else
			ip->saddr = addr;
	}
	if (dst) {
		ports[1] = port;
		p->daddr[0] = addr;
		p->dport = port;
	} else {
		ports[0] = port;
		p->saddr[0] = addr;
		p->sport = port;
	}
	return 0;
}

/* Rewrite the destination to @addr:@port. */
static __always_inline int nat_dst(struct __sk_buff *skb, struct pkt *p, const __u32 *addr,
				   __be16 port)
{
	int ret;

	if (p->family == DP_AF_INET)
		return nat4(skb, p, 1, addr[0], port);
	if (!addr_eq(p->daddr, addr)) {
		ret = nat_addr(skb, p, daddr_off(p), p->daddr, addr);
		if (ret < 0)
			return ret;
		addr_copy(p->daddr, addr);
	}
	ret = nat_port(skb, p, p->l4_off + 2, p->dport, port);
	if (ret < 0)
		return ret;
	p->dport = port;
	return 0;
}

/* Rewrite the source to @addr:@port. */
static __always_inline int nat_src(struct __sk_buff *skb, struct pkt *p, const __u32 *addr,
				   __be16 port)
{
	int ret;

	if (p->family == DP_AF_INET)
		return nat4(skb, p, 0, addr[0], port);
	if (!addr_eq(p->saddr, addr)) {
		ret = nat_addr(skb, p, saddr_off(p), p->saddr, addr);
		if (ret < 0)
			return ret;
		addr_copy(p->saddr, addr);
	}
	ret = nat_port(skb, p, p->l4_off, p->sport, port);
	if (ret < 0)
		return ret;
	p->sport = port;
	return 0;
}

#endif
