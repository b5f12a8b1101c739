/* SPDX-License-Identifier: Apache-2.0 */
/*
 * icmp.h - ICMP and ICMPv6 errors about translated connections.
 *
 * An error quotes the packet that caused it. When that packet was translated by us, the error
 * must be translated too, or the sender cannot match it to its socket (no "port unreachable"
 * for UDP clients, no path-MTU discovery through a service). Two cases:
 *  - the quoted packet went towards a backend (client' -> backend): found by the reverse
 *    entry of the quoted tuple; the error goes back to the client, quoting client -> frontend;
 *  - the quoted packet was a translated reply (frontend -> client): found by the forward entry;
 *    the error goes to the backend, quoting backend -> client'.
 * The quoted IPv4 header checksum and the quoted L4 checksum (when quoted) are fixed, and the
 * ICMP checksum follows every byte we change. A quoted echo request is a masqueraded ping
 * (echo.h): its identifier plays the source port, the destination port is 0.
 */
#ifndef DP_ICMP_H
#define DP_ICMP_H

#include "common.h"
#include "parse.h"
#include "csum.h"
#include "echo.h"

#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12
#define ICMPV6_TIME_EXCEED 3
#define ICMPV6_PARAMPROB 4

/* The quoted packet: its IP header and up to 20 bytes of L4 header. */
struct quote4 {
	struct iphdr ip;
	__u8 l4[20];
};

struct quote6 {
	struct ipv6hdr ip;
	__u8 l4[20];
};

/* The fields a translation changes, for checksum differences. */
struct tuple4 {
	__u32 saddr;
	__u32 daddr;
	__be16 sport;
	__be16 dport;
};

struct tuple6 {
	__u32 saddr[4];
	__u32 daddr[4];
	__be16 sport;
	__be16 dport;
};

/* The new quoted tuple and outer addresses for the error; 0 when it is not about our flows. */
struct icmp_nat {
	__u32 isaddr[4];
	__u32 idaddr[4];
	__be16 isport;
	__be16 idport;
	__u32 osaddr[4];
	__u32 odaddr[4];
};

static __always_inline int icmp_lookup(struct icmp_nat *n, const struct pkt *outer,
				       const __u32 *isaddr, const __u32 *idaddr, __be16 isport,
				       __be16 idport, __u8 iproto)
{
	struct ct_key k;
	struct ct_entry *e;

	__builtin_memset(&k, 0, sizeof(k));
	addr_copy(k.saddr, idaddr);
	addr_copy(k.daddr, isaddr);
	k.sport = idport;
	k.dport = isport;
	k.proto = iproto;
	k.family = outer->family;
	addr_copy(n->isaddr, isaddr);
	addr_copy(n->idaddr, idaddr);
	n->isport = isport;
	n->idport = idport;
	addr_copy(n->osaddr, outer->saddr);
	addr_copy(n->odaddr, outer->daddr);
	e = bpf_map_lookup_elem(&dp_ct, &k);
	if (!e)
		return 0;
	if (ct_is_rev(e)) {
		/* About client' -> backend: make it client -> frontend, to the client. */
		if (addr_eq(outer->saddr, idaddr))
			addr_copy(n->osaddr, e->nat_addr);
		addr_copy(n->idaddr, e->nat_addr);
		n->idport = e->nat_port;
		if (e->flags & CT_F_SNAT) {
			addr_copy(n->isaddr, e->snat_addr);
			n->isport = e->snat_port;
			addr_copy(n->odaddr, e->snat_addr);
		}
		return 1;
	}
	if (!ct_is_fwd(e) || (e->flags & CT_F_MASQ))
		return 0;
	/* About frontend -> client (a translated reply): make it backend -> client', to the
	 * backend. */
	addr_copy(n->isaddr, e->nat_addr);
	n->isport = e->nat_port;
	addr_copy(n->odaddr, e->nat_addr);
	if (e->flags & CT_F_SNAT) {
		if (addr_eq(outer->saddr, idaddr))
			addr_copy(n->osaddr, e->snat_addr);
		addr_copy(n->idaddr, e->snat_addr);
		n->idport = e->snat_port;
	}
	return 1;
}

/* Fix the quoted L4 checksum at @off inside @l4 (when quoted and, for UDP, in use). */
static __always_inline void fix_inner_l4(__u8 *l4, __u32 quoted, __u8 proto, __s64 diff)
{
	__u16 *check;

	if (proto == IPPROTO_UDP) {
		check = (__u16 *)(l4 + 6);
		if (*check)
			*check = csum_update(*check, (__u32)diff) ?: 0xffff;
	} else if (proto == IPPROTO_TCP && quoted >= 20) {
		/* SCTP's CRC32c covers the whole quoted packet, of which an ICMP error holds 8
		 * bytes: left as it is, as netfilter's sctp_manip_pkt() does for them. */
		check = (__u16 *)(l4 + 16);
		*check = csum_update(*check, (__u32)diff);
	}
}

/*
 * The "ports" of a quoted L4 header: TCP/UDP ports, or a quoted echo request's identifier
 * and 0 (@echo_type: ICMP_ECHO or ICMPV6_ECHO_REQUEST). Returns 1 for an echo request, 0 for
 * TCP/UDP/SCTP, -1 for anything else.
 */
static __always_inline int quoted_ports(const __u8 *l4, __u8 proto, __u8 icmp_proto,
					__u8 echo_type, __be16 *sport, __be16 *dport)
{
	if (proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_SCTP) {
		*sport = *(__be16 *)&l4[0];
		*dport = *(__be16 *)&l4[2];
		return 0;
	}
	if (proto == icmp_proto && l4[0] == echo_type && l4[1] == 0) {
		*sport = *(__be16 *)&l4[ECHO_ID_OFF];
		*dport = 0;
		return 1;
	}
	return -1;
}

static __noinline int icmp4_error_nat(struct __sk_buff *skb, struct pkt *p)
{
	struct quote4 old, new;
	struct tuple4 ot, nt;
	struct icmp_nat n;
	__u32 q = p->l4_off + 8;
	__u32 quoted = 20;
	__u8 type;
	__u16 check;
	__s64 d;
	int echo;

	if (bpf_skb_load_bytes(skb, p->l4_off, &type, 1) < 0)
		return DP_PASS;
	if (type != ICMP_DEST_UNREACH && type != ICMP_TIME_EXCEEDED && type != ICMP_PARAMETERPROB)
		return DP_PASS;
	__builtin_memset(&old, 0, sizeof(old));
	if (bpf_skb_load_bytes(skb, q, &old, sizeof(old)) < 0) {
		quoted = 8;
		if (bpf_skb_load_bytes(skb, q, &old, sizeof(old.ip) + 8) < 0)
			return DP_PASS;
	}
	if (old.ip.ihl != 5)
		return DP_PASS;
	echo = quoted_ports(old.l4, old.ip.protocol, IPPROTO_ICMP, ICMP_ECHO, &ot.sport, &ot.dport);
	if (echo < 0)
		return DP_PASS;
	{
		__u32 is[4] = {old.ip.saddr, 0, 0, 0};
		__u32 id[4] = {old.ip.daddr, 0, 0, 0};

		if (!icmp_lookup(&n, p, is, id, ot.sport, ot.dport, old.ip.protocol))
			return DP_PASS;
	}
	new = old;
	new.ip.saddr = n.isaddr[0];
	new.ip.daddr = n.idaddr[0];
	new.ip.check = 0;
	new.ip.check = csum_buf(&new.ip, sizeof(new.ip), 0);
	ot.saddr = old.ip.saddr;
	ot.daddr = old.ip.daddr;
	nt.saddr = new.ip.saddr;
	nt.daddr = new.ip.daddr;
	nt.sport = n.isport;
	nt.dport = n.idport;
	if (echo) {
		/* ICMPv4 has no pseudo header: only the identifier changes the quoted checksum
		 * (the ports word of the tuples: identifier, 0). */
		*(__be16 *)&new.l4[ECHO_ID_OFF] = n.isport;
		d = bpf_csum_diff((__be32 *)&ot.sport, 4, (__be32 *)&nt.sport, 4, 0);
		*(__u16 *)&new.l4[2] = csum_update(*(__u16 *)&old.l4[2], (__u32)d);
	} else {
		*(__be16 *)&new.l4[0] = n.isport;
		*(__be16 *)&new.l4[2] = n.idport;
		d = bpf_csum_diff((__be32 *)&ot, sizeof(ot), (__be32 *)&nt, sizeof(nt), 0);
		fix_inner_l4(new.l4, quoted, old.ip.protocol, d);
	}

	/* ICMPv4 has no pseudo header: only the quoted bytes change its checksum. */
	if (quoted == 20)
		d = bpf_csum_diff((__be32 *)&old, sizeof(old), (__be32 *)&new, sizeof(new), 0);
	else
		d = bpf_csum_diff((__be32 *)&old, sizeof(old.ip) + 8, (__be32 *)&new,
				  sizeof(new.ip) + 8, 0);
	if (bpf_skb_load_bytes(skb, p->l4_off + 2, &check, 2) < 0)
		return DROP_INVALID;
	check = csum_update(check, (__u32)d);
	if (bpf_skb_store_bytes(skb, p->l4_off + 2, &check, 2, BPF_F_RECOMPUTE_CSUM) < 0)
		return DROP_INVALID;
	if (quoted == 20) {
		if (bpf_skb_store_bytes(skb, q, &new, sizeof(new), BPF_F_RECOMPUTE_CSUM) < 0)
			return DROP_INVALID;
	} else if (bpf_skb_store_bytes(skb, q, &new, sizeof(new.ip) + 8, BPF_F_RECOMPUTE_CSUM) < 0) {
		return DROP_INVALID;
	}
	/* Outer addresses: the IPv4 header checksum only (the two changes cancel out in a
	 * CHECKSUM_COMPLETE skb->csum, hence no BPF_F_RECOMPUTE_CSUM here). */
	if (n.osaddr[0] != p->saddr[0]) {
		if (bpf_l3_csum_replace(skb, p->l3_off + offsetof(struct iphdr, check), p->saddr[0],
					n.osaddr[0], 4) < 0 ||
		    bpf_skb_store_bytes(skb, p->l3_off + offsetof(struct iphdr, saddr), &n.osaddr[0],
					4, 0) < 0)
			return DROP_INVALID;
		p->saddr[0] = n.osaddr[0];
	}
	if (n.odaddr[0] != p->daddr[0]) {
		if (bpf_l3_csum_replace(skb, p->l3_off + offsetof(struct iphdr, check), p->daddr[0],
					n.odaddr[0], 4) < 0 ||
		    bpf_skb_store_bytes(skb, p->l3_off + offsetof(struct iphdr, daddr), &n.odaddr[0],
					4, 0) < 0)
			return DROP_INVALID;
		p->daddr[0] = n.odaddr[0];
	}
	stat_inc(STAT_REV_TRANSLATED);
	return DP_NAT;
}

static __noinline int icmp6_error_nat(struct __sk_buff *skb, struct pkt *p)
{
	struct quote6 old, new;
	struct tuple6 ot, nt;
	struct icmp_nat n;
	__u32 q = p->l4_off + 8;
	__u32 quoted = 20;
	__u8 type;
	__u16 check;
	__s64 d;
	int echo;

	if (bpf_skb_load_bytes(skb, p->l4_off, &type, 1) < 0)
		return DP_PASS;
	if (type != ICMPV6_DEST_UNREACH && type != ICMPV6_PKT_TOOBIG &&
	    type != ICMPV6_TIME_EXCEED && type != ICMPV6_PARAMPROB)
		return DP_PASS;
	__builtin_memset(&old, 0, sizeof(old));
	if (bpf_skb_load_bytes(skb, q, &old, sizeof(old)) < 0) {
		quoted = 8;
		if (bpf_skb_load_bytes(skb, q, &old, sizeof(old.ip) + 8) < 0)
			return DP_PASS;
	}
	echo = quoted_ports(old.l4, old.ip.nexthdr, IPPROTO_ICMPV6, ICMPV6_ECHO_REQUEST, &ot.sport,
			    &ot.dport);
	if (echo < 0)
		return DP_PASS;
	{
		__u32 is[4], id[4];

		__builtin_memcpy(is, &old.ip.saddr, 16);
		__builtin_memcpy(id, &old.ip.daddr, 16);
		if (!icmp_lookup(&n, p, is, id, ot.sport, ot.dport, old.ip.nexthdr))
			return DP_PASS;
	}
	new = old;
	__builtin_memcpy(&new.ip.saddr, n.isaddr, 16);
	__builtin_memcpy(&new.ip.daddr, n.idaddr, 16);
	__builtin_memcpy(ot.saddr, &old.ip.saddr, 16);
	__builtin_memcpy(ot.daddr, &old.ip.daddr, 16);
	addr_copy(nt.saddr, n.isaddr);
	addr_copy(nt.daddr, n.idaddr);
	nt.sport = n.isport;
	nt.dport = n.idport;
	/* The quoted L4 checksum covers a pseudo header with the addresses, ICMPv6's too. */
	d = bpf_csum_diff((__be32 *)&ot, sizeof(ot), (__be32 *)&nt, sizeof(nt), 0);
	if (echo) {
		*(__be16 *)&new.l4[ECHO_ID_OFF] = n.isport;
		*(__u16 *)&new.l4[2] = csum_update(*(__u16 *)&old.l4[2], (__u32)d);
	} else {
		*(__be16 *)&new.l4[0] = n.isport;
		*(__be16 *)&new.l4[2] = n.idport;
		fix_inner_l4(new.l4, quoted, old.ip.nexthdr, d);
	}

	if (quoted == 20)
		d = bpf_csum_diff((__be32 *)&old, sizeof(old), (__be32 *)&new, sizeof(new), 0);
	else
		d = bpf_csum_diff((__be32 *)&old, sizeof(old.ip) + 8, (__be32 *)&new,
				  sizeof(new.ip) + 8, 0);
	/* ICMPv6 covers a pseudo header with the outer addresses too. */
	/* saddr/daddr are adjacent in both structs: one 32-byte difference. */
	d = (__u32)d + (__u64)(__u32)bpf_csum_diff((__be32 *)p->saddr, 32, (__be32 *)n.osaddr, 32,
						   0);
	if (bpf_skb_load_bytes(skb, p->l4_off + 2, &check, 2) < 0)
		return DROP_INVALID;
	check = csum_update(check, d);
	if (bpf_skb_store_bytes(skb, p->l4_off + 2, &check, 2, BPF_F_RECOMPUTE_CSUM) < 0)
		return DROP_INVALID;
	if (quoted == 20) {
		if (bpf_skb_store_bytes(skb, q, &new, sizeof(new), BPF_F_RECOMPUTE_CSUM) < 0)
			return DROP_INVALID;
	} else if (bpf_skb_store_bytes(skb, q, &new, sizeof(new.ip) + 8, BPF_F_RECOMPUTE_CSUM) < 0) {
		return DROP_INVALID;
	}
	if (bpf_skb_store_bytes(skb, p->l3_off + offsetof(struct ipv6hdr, saddr), n.osaddr, 32,
				BPF_F_RECOMPUTE_CSUM) < 0)
		return DROP_INVALID;
	addr_copy(p->saddr, n.osaddr);
	addr_copy(p->daddr, n.odaddr);
	stat_inc(STAT_REV_TRANSLATED);
	return DP_NAT;
}

/**
 * icmp_error_nat() - translate an ICMP/ICMPv6 error about one of our connections.
 * Returns DP_NAT when translated, DP_PASS when it is not ours, or a DROP_* reason.
 * (Each family is its own subprogram: together they would not fit one 512-byte frame.)
 */
static __always_inline int icmp_error_nat(struct __sk_buff *skb, struct pkt *p)
{
	if (p->family == DP_AF_INET && p->proto == IPPROTO_ICMP)
		return icmp4_error_nat(skb, p);
	if (p->family == DP_AF_INET6 && p->proto == IPPROTO_ICMPV6)
		return icmp6_error_nat(skb, p);
	return DP_PASS;
}

#endif
