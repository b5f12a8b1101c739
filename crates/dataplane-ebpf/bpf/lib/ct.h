/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ct.h - our own connection tracking in an LRU hash (dp_ct).
 *
 * Each translated connection has a forward entry (client -> frontend, as the client sent it)
 * and a reverse entry (backend -> client or SNAT address, as the reply arrives). Expiry is
 * done by user space (Dataplane::maintain) from last_seen_ns and the TCP state bits; the LRU
 * only evicts under pressure.
 */
#ifndef DP_CT_H
#define DP_CT_H

#include "common.h"
#include "parse.h"

static __always_inline void ct_key_from_pkt(struct ct_key *k, const struct pkt *p)
{
	__builtin_memset(k, 0, sizeof(*k));
	addr_copy(k->saddr, p->saddr);
	addr_copy(k->daddr, p->daddr);
	k->sport = p->sport;
	k->dport = p->dport;
	k->proto = p->proto;
	k->family = p->family;
}

/* The key of a reply to @p sent by @from:@from_port (its destination, or the backend it was
 * translated to) back to its source. */
static __always_inline void ct_reply_key(struct ct_key *k, const struct pkt *p, const __u32 *from,
					 __be16 from_port)
{
	__builtin_memset(k, 0, sizeof(*k));
	addr_copy(k->saddr, from);
	addr_copy(k->daddr, p->saddr);
	k->sport = from_port;
	k->dport = p->sport;
	k->proto = p->proto;
	k->family = p->family;
}

/*
 * Marks the entry just written under @k as used, as its first lookup would. An LRU hash
 * update leaves the new node's reference bit clear (only a lookup sets it), and when full the
 * kernel evicts nodes without it first, a CPU short of free nodes even taking those another
 * CPU has just added (kernel/bpf/bpf_lru_list.c: __bpf_lru_list_shrink_inactive,
 * __local_list_pop_pending). With dp_ct full under a high rate of new connections the reverse
 * entry a SYN had just written was sometimes gone when its SYN-ACK came back: the SYN-ACK
 * reached the client untranslated, every retransmitted SYN found the forward entry alone, and
 * the connection stalled until the client gave up, counted nowhere (tests/ct_capacity.rs,
 * crr_through_a_full_conntrack_loses_no_connection). One lookup per entry a new connection
 * writes.
 */
static __always_inline void ct_mark_used(const struct ct_key *k)
{
	bpf_map_lookup_elem(&dp_ct, k);
}

/* A forward entry (client -> frontend); reverse and inbound-marker entries are not. */
static __always_inline int ct_is_fwd(const struct ct_entry *e)
{
	return !(e->flags & (CT_F_REV | CT_F_INBOUND));
}

static __always_inline int ct_is_rev(const struct ct_entry *e)
{
	return e->flags & CT_F_REV;
}

static __always_inline __u8 tcp_bits(const struct pkt *p, int reply)
{
	__u8 bits = 0;

	/* For UDP only "a reply was seen" matters (a longer timeout for streams). */
	if (p->proto != IPPROTO_TCP && p->proto != IPPROTO_SCTP)
		return reply ? CT_TCP_REPLY : 0;
	/* SCTP: an INIT-ACK (SYN|ACK) is not an opening; a COOKIE-ACK establishes. */
	if (p->proto == IPPROTO_SCTP) {
		if (p->tcp_flags & SCTPF_COOKIE_ACK)
			bits |= CT_SCTP_ESTAB;
		if ((p->tcp_flags & (TCPF_SYN | TCPF_ACK)) == TCPF_SYN)
			bits |= CT_TCP_SYN;
		if (p->tcp_flags & TCPF_RST)
			bits |= CT_TCP_RST;
		if (p->tcp_flags & TCPF_FIN)
			bits |= reply ? CT_TCP_FIN_REV : CT_TCP_FIN_FWD;
		return reply ? bits | CT_TCP_REPLY : bits;
	}
	if (p->tcp_flags & TCPF_SYN)
		bits |= CT_TCP_SYN;
	if (p->tcp_flags & TCPF_RST)
		bits |= CT_TCP_RST;
	if (p->tcp_flags & TCPF_FIN)
		bits |= reply ? CT_TCP_FIN_REV : CT_TCP_FIN_FWD;
	if (reply)
		bits |= CT_TCP_REPLY;
	return bits;
}

static __always_inline void ct_touch(struct ct_entry *e, const struct pkt *p, int reply)
{
	__u8 bits = tcp_bits(p, reply);

	e->last_seen_ns = bpf_ktime_get_ns();
	if (bits && (e->tcp_state & bits) != bits)
		e->tcp_state |= bits;
}

/* How often a reply refreshes its forward entry's last-seen time at most. */
#define CT_FWD_REFRESH_NS 1000000000ULL

/*
 * Touches the reverse entry of a reply and says whether the forward entry (the one garbage
 * collection reads) must be touched too: when the reply brings state bits the flow has not
 * seen yet, or when the last refresh is more than CT_FWD_REFRESH_NS old. Skipping the forward
 * entry on the other replies saves a second conntrack lookup (two cache misses in a big map)
 * per reply packet; the timeouts are seconds, so GC sees the idle time at most 1 s short.
 */
static __always_inline int ct_touch_reply(struct ct_entry *rev, const struct pkt *p)
{
	__u8 bits = tcp_bits(p, 1);
	__u64 now = bpf_ktime_get_ns();
	int fwd_too = (rev->tcp_state & bits) != bits ||
		      now - rev->last_seen_ns > CT_FWD_REFRESH_NS;

	if (fwd_too)
		rev->last_seen_ns = now;
	if ((rev->tcp_state & bits) != bits)
		rev->tcp_state |= bits;
	return fwd_too;
}

/* A new SYN (SCTP: INIT) on a flow that was closed (RST or FIN both ways; SCTP: ABORT or
 * SHUTDOWN-COMPLETE, or SHUTDOWN and SHUTDOWN-ACK) starts a new connection. */
static __always_inline int ct_is_reopen(const struct ct_entry *e, const struct pkt *p)
{
	if (p->proto != IPPROTO_TCP && p->proto != IPPROTO_SCTP)
		return 0;
	if ((p->tcp_flags & (TCPF_SYN | TCPF_ACK)) != TCPF_SYN)
		return 0;
	if (e->tcp_state & CT_TCP_RST)
		return 1;
	return (e->tcp_state & (CT_TCP_FIN_FWD | CT_TCP_FIN_REV)) ==
	       (CT_TCP_FIN_FWD | CT_TCP_FIN_REV);
}

/* Rebuild the forward key of a connection from its reverse entry. */
static __always_inline void ct_fwd_key_of_rev(struct ct_key *k, const struct ct_entry *rev,
					      const struct pkt *p)
{
	__builtin_memset(k, 0, sizeof(*k));
	addr_copy(k->saddr, rev->snat_addr);
	addr_copy(k->daddr, rev->nat_addr);
	k->sport = rev->snat_port;
	k->dport = rev->nat_port;
	k->proto = p->proto;
	k->family = p->family;
}

/* Whether a forward entry's connection is over (a reset, or FIN both ways). */
static __always_inline int ct_is_closed(const struct ct_entry *e)
{
	if (e->tcp_state & CT_TCP_RST)
		return 1;
	return (e->tcp_state & (CT_TCP_FIN_FWD | CT_TCP_FIN_REV)) ==
	       (CT_TCP_FIN_FWD | CT_TCP_FIN_REV);
}

/*
 * Whether reverse key @rk may be written for the connection whose forward key is @fk:
 * returns 1 when no entry holds it, 2 when the connection's own (earlier) reverse entry does
 * (a reopened connection: overwriting is right) or a connection that is over does (its
 * forward entry closed or gone: its replies are done, and a forward packet of it would find
 * no entry and get new ones), 0 when a live connection's entry, or an entry of another kind,
 * holds it: a clash. (Its own: the entry's forward key compared field by field. Another's
 * forward entry is looked up under a key built in @rk, which the caller rebuilds: a second key
 * on the stack would not fit the caller's budget.) Without the closed case a
 * client port reused towards a second frontend with the same backend (a CRR load over two
 * ClusterIPs) clashed with the first frontend's stale entries and took a random SNAT port,
 * which failed (SNAT_TRIES taken) once the client had used its whole port range: the SYN was
 * dropped (DROP_NO_SNAT) and the client waited a second for its retransmission.
 */
static __always_inline int ct_rev_key_free(struct ct_key *rk, const struct ct_key *fk,
					   const struct pkt *p)
{
	struct ct_entry *cur = bpf_map_lookup_elem(&dp_ct, rk);
	struct ct_entry *owner;
	__u32 diff = 0;

	if (!cur)
		return 1;
	if (!ct_is_rev(cur))
		return 0;
#pragma unroll
	for (int i = 0; i < 4; i++)
		diff |= (cur->snat_addr[i] ^ fk->saddr[i]) | (cur->nat_addr[i] ^ fk->daddr[i]);
	diff |= (cur->snat_port ^ fk->sport) | (cur->nat_port ^ fk->dport);
	if (!diff)
		return 2;
	ct_fwd_key_of_rev(rk, cur, p);
	owner = bpf_map_lookup_elem(&dp_ct, rk);
	if (!owner || !ct_is_fwd(owner) || ct_is_closed(owner))
		return 2;
	return 0;
}

#endif
