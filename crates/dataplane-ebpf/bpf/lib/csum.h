/* SPDX-License-Identifier: Apache-2.0 */
/* csum.h - checksum helpers for rewritten and generated headers. */
#ifndef DP_CSUM_H
#define DP_CSUM_H

#include "common.h"

static __always_inline __u16 csum_fold(__u32 csum)
{
	csum = (csum & 0xffff) + (csum >> 16);
	csum = (csum & 0xffff) + (csum >> 16);
	return (__u16)~csum;
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
	__u32 sum = (__u16)~check;

	sum += (~from & 0xffff) + (~from >> 16) + (to & 0xffff) + (to >> 16);
	return csum_fold(sum);
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
