/* SPDX-License-Identifier: Apache-2.0 */
/* csum.h - checksum helpers for rewritten and generated headers. */
#ifndef DP_CSUM_H
#define DP_CSUM_H

#include "common.h"

/*
 * The one checksum fold: a one's-complement sum accumulated in up to 64 bits (16- or 32-bit
 * words, partial sums from bpf_csum_diff) folded with end-around carries to 16 bits, then
 * complemented into a checksum field's value. Every complete fold of the same sum gives the
 * same 16 bits, so callers may accumulate in whatever width suits them.
 */
static __always_inline __u16 csum_fold(__u64 sum)
{
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

/*
 * One term of an incremental update: ~old + new for a 32-bit word the checksum covers (RFC
 * 1624, eqn. 3), added to @acc; csum_update() folds the total once at the end.
 */
static __always_inline __u64 csum_delta(__u64 acc, __u32 old, __u32 new)
{
	return acc + (__u32)~old + new;
}

/*
 * The checksum @check after changes whose one's-complement sum is @diff: ~(~check + diff)
 * (RFC 1624, eqn. 3). @diff is a sum of csum_delta() terms or a partial sum from
 * bpf_csum_diff().
 */
static __always_inline __u16 csum_update(__u16 check, __u64 diff)
{
	return csum_fold(diff + (__u16)~check);
}

/* Folded one's-complement sum of @len bytes at @buf (len a multiple of 4, on the stack). */
static __always_inline __u16 csum_buf(void *buf, __u32 len, __u32 seed)
{
	__s64 sum = bpf_csum_diff(NULL, 0, buf, len, seed);

	return csum_fold(sum < 0 ? 0 : (__u32)sum);
}

/*
 * The kernel's csum_replace4: the one's-complement checksum @check after a 4-byte field it
 * covers went from @from to @to (RFC 1624: ~(~HC + ~m + m')). Word order does not matter to a
 * one's-complement sum, so the values are taken as they lie in the packet.
 */
static __always_inline __u16 csum_replace4(__u16 check, __u32 from, __u32 to)
{
	return csum_update(check, csum_delta(0, from, to));
}

/*
 * SCTP's CRC32c (RFC 9260 appendix B: Castagnoli, reflected; the packet holds it in little
 * endian) after a rewrite of the ports, without reading the packet again. A CRC is affine over
 * GF(2): for two messages of one length, crc(M) ^ crc(M') = crc0(M ^ M'), the CRC without
 * its initial and final inversion; and M ^ M' is the 4-byte change of the ports word at the
 * start followed by len - 4 zero bytes, whose crc0 is that word times x^(8 * len) modulo the
 * polynomial (the word times x^32 after its own 4 bytes, then x^8 per byte after it). So the
 * new CRC is the old one XOR that product (zlib's crc32_combine() works the same way). The
 * power is made by square-and-multiply over the bits of len (at most 16: an IP payload's
 * length), each step a 32-round shift-and-add (zlib's multmodp()): bounded loops, at most 17
 * products of 32 rounds whatever the packet's length, instead of a CRC over the whole packet
 * (LoxiLB's way, loops as long as the packet).
 */
#define CRC32C_POLY 0x82f63b78ULL /* reflected: bit 31 - i holds the coefficient of x^i */
#define CRC32C_POLY_SX 0xffffffff82f63b78ULL /* the same under a 32-bit mask */

/*
 * a(x) * b(x) modulo the polynomial, both reflected (zlib's multmodp()), without a branch on
 * the data: a branch on a value the verifier knows exactly doubles the states it walks per
 * round (4 billion paths for 32 rounds), so each round adds b masked by a's bit and reduces b
 * by a mask of its low bit. The empty asm keeps clang from turning a mask back into a
 * select, which the BPF backend would emit as a branch.
 */
static __always_inline __u64 crc32c_mulmod(__u64 a, __u64 b)
{
	__u64 prod = 0;
	__u64 m;

	/* In 64-bit registers (the low 32 bits matter; a's high bits are shifted out of the
	 * way): no zero-extensions, and few enough live values that crc32c_ports_delta() needs
	 * no stack (its callers' chains are near the verifier's 512 bytes). */
	for (__u64 i = 0; i < 32; i++) {
		m = (a >> 31) & 1;
		asm volatile("" : "+r"(m));
		prod ^= b & -m;
		/* A 32-bit mask: the polynomial ANDed with it can then be an instruction's
		 * sign-extended 32-bit immediate, not a 64-bit constant held in a register. */
		m = -(b & 1) >> 32;
		asm volatile("" : "+r"(m));
		b = (b >> 1) ^ (m & CRC32C_POLY_SX);
		a <<= 1;
	}
	return prod;
}

/* x^(8 * 2^i) modulo the polynomial, reflected: one byte, two, four, ... 2^15. */
static __always_inline __u64 crc32c_x8_pow2(int i)
{
	switch (i) {
	case 0: return 0x00800000;
	case 1: return 0x00008000;
	case 2: return 0x82f63b78;
	case 3: return 0x6ea2d55c;
	case 4: return 0x18b8ea18;
	case 5: return 0x510ac59a;
	case 6: return 0xb82be955;
	case 7: return 0xb8fdb1e7;
	case 8: return 0x88e56f72;
	case 9: return 0x74c360a4;
	case 10: return 0xe4172b16;
	case 11: return 0x0d65762a;
	case 12: return 0x35d73a62;
	case 13: return 0x28461564;
	case 14: return 0xbf455269;
	default: return 0xe2ea32dc;
	}
}

/**
 * crc32c_ports_delta() - the XOR that updates a CRC32c after the first 4 bytes of a @len-byte
 * message changed by @delta (old ^ new, as the bytes lie in memory: little endian, as the CRC
 * is kept). Square-and-multiply over the bits of @len with the squares from
 * crc32c_x8_pow2(), the multiplications branch-free as in crc32c_mulmod() (a clear bit
 * multiplies by 1): one 32-round product per bit up to @len's highest, and one for @delta;
 * 12 for a 1500-byte packet. A global function: the verifier checks it once, not in
 * every caller.
 */
__attribute__((noinline)) __u32 crc32c_ports_delta(__u32 delta, __u32 len)
{
	__u64 pow = 0x80000000; /* x^0 */
	__u64 rest = len & 0xffff;
	__u64 m;

	/* Unrolled: the squares are immediates, and no loop counter takes a register. */
#pragma unroll
	for (int i = 0; i < 16; i++) {
		if (rest) {
			m = rest & 1;
			asm volatile("" : "+r"(m));
			/* Times x^(8 * 2^i) or times 1 (x^0): fewer values live across the
			 * product than selecting between two results. */
			m = (crc32c_x8_pow2(i) ^ 0x80000000) & -m;
			pow = crc32c_mulmod(m ^ 0x80000000, pow);
			rest >>= 1;
		}
	}
	return crc32c_mulmod(pow, delta);
}

/* The first 32-bit word of a TCP/UDP/SCTP header: both ports, in packet order. */
static __always_inline __u32 ports_word(__be16 sport, __be16 dport)
{
	__u32 w;

	((__be16 *)&w)[0] = sport;
	((__be16 *)&w)[1] = dport;
	return w;
}

/*
 * The CRC32c field @crc after the ports word went from @old to @new in an SCTP packet of
 * @len bytes. A field of 0 stays 0: a local SCTP stack sending over a device with
 * NETIF_F_SCTP_CRC (a veth has it) leaves the checksum 0 in a CHECKSUM_PARTIAL skb
 * (csum_not_inet) and it is computed over the packet as it is at transmit (net/sctp/output.c
 * sctp_packet_pack(); skb_crc32c_csum_help()), so after our rewrite; a program cannot read
 * ip_summed, and a packet from the wire whose real CRC is 0 (one in 2^32) leaves with a
 * wrong one. A wrong CRC stays wrong by the same error: the receiver drops it as it would
 * have (netfilter's sctp_manip_pkt(), net/netfilter/nf_nat_proto.c, recomputes it over the
 * whole packet instead when the skb is not CHECKSUM_PARTIAL, making a corrupt packet good).
 */
static __always_inline __u32 sctp_crc_update(__u32 crc, __u32 old, __u32 new, __u32 len)
{
	if (!crc || old == new)
		return crc;
	return crc ^ crc32c_ports_delta(old ^ new, len);
}

/*
 * Decrements the TTL of @ip and updates its checksum incrementally (the kernel's
 * ip_decrease_ttl). The header's one's-complement sum stays the same, so a CHECKSUM_COMPLETE
 * skb's csum stays right too.
 */
static __always_inline void ipv4_dec_ttl(struct iphdr *ip)
{
	__u32 check = (__u32)ip->check + (__u32)bpf_htons(0x0100);

	ip->check = (__u16)(check + (check >= 0xffff));
	ip->ttl--;
}

#endif
