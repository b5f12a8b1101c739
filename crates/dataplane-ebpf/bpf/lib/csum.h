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
