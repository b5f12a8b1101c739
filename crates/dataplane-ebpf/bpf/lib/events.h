/* SPDX-License-Identifier: Apache-2.0 */
/*
 * events.h - flow events and drop counters (maps.h: struct flow_event, dp_events, dp_drops,
 * dp_ev_limit).
 *
 * Every drop and reject is counted in dp_drops (per CPU, by observation point and reason,
 * always) and reported in the dp_events ring buffer; a new connection and a policy verdict
 * that allowed one are reported when dp_config asks (CFG_F_EV_NEW_CONN, CFG_F_EV_POLICY).
 * Nothing is emitted on the established fast path: these are called only where a packet is
 * dropped or a connection is created, which is what Cilium's monitor aggregation keeps at its
 * "medium" level and up (drops always, traces only when a connection starts; pkg/monitor,
 * bpf/lib/trace.h's update_trace_metrics/send_trace_notify with the ct's report flags).
 *
 * A flood must starve neither the datapath nor the reader: each event kind has a per-CPU
 * token bucket (struct ev_limit, after Cilium's bpf/lib/ratelimit.h, which also limits its
 * events map with one, RATELIMIT_USAGE_EVENTS_MAP), whose rate and size user space sets in
 * dp_config.ev_limits (EbpfConfig::events; by default drops are limited and the optional
 * kinds are not). An event over the limit is counted in `suppressed` and the next one
 * written carries that count. bpf_ringbuf_reserve() never blocks: when the ring is full the
 * event is counted in `lost` and the packet goes on.
 */
#ifndef DP_EVENTS_H
#define DP_EVENTS_H

#include "common.h"
#include "parse.h"
#include "ct.h"

#ifndef NSEC_PER_SEC
#define NSEC_PER_SEC 1000000000ULL
#endif

/* The meta argument of ev_emit(): kind, verdict, reason, point and direction in one
 * register (a BPF function takes at most five arguments). */
#define EV_META(kind, verdict, reason, point, dir)                                            \
	((__u64)(kind) | ((__u64)(verdict) << 8) | ((__u64)(reason) << 16) |                  \
	 ((__u64)(point) << 24) | ((__u64)(dir) << 32))

/* The observation point of a dp_handle() context. */
static __always_inline __u32 ev_point_of(int ctx)
{
	switch (ctx) {
	case CTX_FROM_POD:
		return PT_FROM_POD;
	case CTX_FROM_UPLINK:
		return PT_FROM_UPLINK;
	case CTX_TO_UPLINK:
		return PT_TO_UPLINK;
	default:
		return PT_FROM_HOST;
	}
}

/* The reason (DR_*) of a DROP_* or DP_* verdict of the datapath. */
static __always_inline __u32 ev_reason_of(int ret)
{
	switch (ret) {
	case DP_REJECT:
	case DROP_NO_LOCAL:
		return DR_NO_BACKEND;
	case DP_REJECT_PORT:
		/* kube-proxy rejects a ClusterIP's unserved ports; the netfilter backends' events
		 * call the address:port unallocated, and so do these */
		return DR_UNALLOCATED;
	case DROP_SRC_RANGE:
		return DR_SOURCE_RANGE;
	case DROP_POLICY_DENIED:
		return DR_POLICY;
	case DROP_CT_FULL:
		return DR_CONNTRACK_FULL;
	case DROP_NO_SNAT:
		return DR_SNAT_EXHAUSTED;
	case DROP_INVALID:
		return DR_INVALID;
	case DP_FRAG_NEEDED:
	case DROP_FRAG_TOO_BIG:
		return DR_MTU;
	case DROP_UNALLOCATED:
		return DR_UNALLOCATED;
	case DROP_SPOOFED:
		return DR_SPOOFED;
	default:
		return DR_UNKNOWN;
	}
}

/* The verdict (EV_VERDICT_*) of a drop of @p: a reject answers (but never a TCP RST, which
 * reject() drops, RFC 9293 3.10.7.1), a denial is policy's. */
static __always_inline __u32 ev_verdict_of(int ret, const struct pkt *p)
{
	int reject = ret == DP_REJECT || ret == DP_REJECT_PORT;

	if (reject && p->proto == IPPROTO_TCP && (p->tcp_flags & TCPF_RST))
		return EV_VERDICT_DROPPED;
	if (reject || ret == DP_FRAG_NEEDED)
		return EV_VERDICT_REJECTED;
	if (ret == DROP_POLICY_DENIED)
		return EV_VERDICT_POLICY_DENIED;
	return EV_VERDICT_DROPPED;
}

/*
 * Takes a token of bucket @slot (dp_ev_limit's index) on this CPU, under @lim (the bucket's
 * kind's rate and burst in dp_config; NULL or a rate of 0: no limit). Returns the bucket,
 * NULL when the event is over the limit (counted as suppressed) or the map is missing.
 *
 * The refill is Cilium's ratelimit_check_and_take() with one token per NSEC_PER_SEC / rate
 * ns (so that a rate of 1000/s refills every millisecond, not 1000 at once every second), and
 * the remainder of an interval kept, as there. Unlike there, a full bucket gains nothing
 * while it waits: its clock restarts when it is found full, so that a burst right after a
 * quiet time writes exactly @burst events. A limit lowered at run time takes effect at the
 * next event (the tokens beyond the new burst go).
 */
static __always_inline struct ev_limit *ev_take(__u32 slot, const struct ev_rate *lim)
{
	struct ev_limit *l = bpf_map_lookup_elem(&dp_ev_limit, &slot);
	__u64 now, per, n, burst;

	if (!l)
		return NULL;
	if (!lim || !lim->rate)
		return l;
	burst = lim->burst;
	/* rate <= NSEC_PER_SEC (user space checks): per >= 1; the guard is for the verifier's
	 * and a hand-written map's sake (BPF's division by zero gives 0) */
	per = NSEC_PER_SEC / lim->rate;
	if (!per)
		per = 1;
	now = bpf_ktime_get_ns();
	if (l->tokens >= burst) {
		l->tokens = burst;
		l->last_topup = now;
	} else {
		n = (now - l->last_topup) / per;
		if (n >= burst - l->tokens) {
			/* (also a bucket never used: its last_topup is 0) */
			l->tokens = burst;
			l->last_topup = now;
		} else if (n) {
			l->tokens += n;
			l->last_topup += n * per;
		}
	}
	if (!l->tokens) {
		l->suppressed++;
		return NULL;
	}
	l->tokens--;
	return l;
}

/*
 * Counts one event seen on interface @ifindex (a drop in dp_drops) and, when it is wanted
 * and within the limit, reserves its record with everything but the translation filled in:
 * @svc_id and @backend_id (0 when none), @meta (EV_META), the tuple as the packet arrived.
 * Returns the record for the caller to finish and submit, or NULL.
 */
static __always_inline struct flow_event *
ev_reserve(__u32 ifindex, __u32 svc_id, __u32 backend_id, __u64 meta, __u8 family, __u8 proto,
	   __u8 tcp_flags, const __u32 *saddr, const __u32 *daddr, __be16 sport, __be16 dport)
{
	__u32 kind = meta & 0xff;
	__u32 reason = (meta >> 16) & 0xff;
	__u32 point = (meta >> 24) & 0xff;
	__u32 slot = reason < DR_SLOTS ? reason : 0;
	__u32 zero = 0;
	struct dp_config *cfg = bpf_map_lookup_elem(&dp_config, &zero);
	const struct ev_rate *lim = NULL;
	struct flow_event *e;
	struct ev_limit *l;

	if (kind == EV_KIND_DROP) {
		__u32 idx = (point & (PT_MAX - 1)) * DR_SLOTS + slot;
		__u64 *count = bpf_map_lookup_elem(&dp_drops, &idx);

		if (count)
			*count += 1;
		/* a bucket per reason */
		slot += EV_KIND_MAX;
	} else {
		__u32 want = kind == EV_KIND_NEW_CONN ? CFG_F_EV_NEW_CONN : CFG_F_EV_POLICY;

		if (!cfg || !(cfg->flags & want))
			return NULL;
		slot = kind;
	}
	/* (a dp_config not written yet holds zeros: no limit until user space sets one, which
	 * it does when it loads the programs) */
	/* kind is an EV_KIND_* below EV_KIND_MAX, a power of two: the mask keeps the index in
	 * bounds for the verifier, which loses a comparison's bound on the copy indexed here */
	if (cfg)
		lim = &cfg->ev_limits[kind & (EV_KIND_MAX - 1)];
	l = ev_take(slot, lim);
	if (!l)
		return NULL;
	e = bpf_ringbuf_reserve(&dp_events, sizeof(*e), 0);
	if (!e) {
		l->lost++;
		return NULL;
	}
	e->ktime_ns = bpf_ktime_get_ns();
	e->suppressed = l->suppressed;
	l->suppressed = 0;
	e->ifindex = ifindex;
	e->svc_id = svc_id;
	e->backend_id = backend_id;
	e->kind = kind;
	e->verdict = (meta >> 8) & 0xff;
	e->reason = reason;
	e->point = point;
	e->direction = (meta >> 32) & 0xff;
	e->family = family;
	e->proto = proto;
	e->tcp_flags = proto == IPPROTO_TCP ? tcp_flags : 0;
	e->flags = 0;
	e->pad[0] = 0;
	e->pad[1] = 0;
	e->pad[2] = 0;
	addr_copy(e->saddr, saddr);
	addr_copy(e->daddr, daddr);
	e->sport = sport;
	e->dport = dport;
	__builtin_memset(e->nat_saddr, 0, sizeof(e->nat_saddr));
	__builtin_memset(e->nat_daddr, 0, sizeof(e->nat_daddr));
	e->nat_sport = 0;
	e->nat_dport = 0;
	return e;
}

/*
 * Submits record @e. A drop keeps the kernel's default (flags 0: the reader is woken when it
 * has caught up, so a drop shows at once on a quiet node; drops are rate-limited). A new
 * connection or a policy verdict, one per connection, wakes the reader only once a
 * sixteenth of the ring is waiting: with the default, a reader that keeps up is woken at
 * every record, at tens of thousands of connections a second a context switch per
 * connection, which cost more than everything else the events do (BENCHMARKS.md, "Flow
 * events"). The kernel's Documentation/bpf/ringbuf.rst offers BPF_RB_NO_WAKEUP /
 * BPF_RB_FORCE_WAKEUP for this batching of notifications. What stays below the threshold is
 * read when the reader's wait times out (EventSource::wait: every 100 ms for dataplane's
 * EventStream, 200 ms for dpctl flows): the most such an event waits on a quiet node; a
 * drop behind them waits as long.
 */
static __always_inline void ev_submit(struct flow_event *e)
{
	__u64 flags = 0;

	if (e->kind != EV_KIND_DROP)
		flags = bpf_ringbuf_query(&dp_events, BPF_RB_AVAIL_DATA) <
				bpf_ringbuf_query(&dp_events, BPF_RB_RING_SIZE) / 16
			? BPF_RB_NO_WAKEUP
			: BPF_RB_FORCE_WAKEUP;
	bpf_ringbuf_submit(e, flags);
}

/**
 * ev_emit() - count and report one event of a TC program.
 * @skb: the packet's context (its ifindex; skb->cb holds the frontend and backend ids)
 * @p: the packet as it is now (after any translation)
 * @orig: the packet's tuple as it arrived (equal to @p's when nothing was translated)
 * @meta: EV_META(kind, verdict, reason, point, direction)
 *
 * A global function: the verifier checks it once, on its own, instead of along every path of
 * its callers (which are at the verifier's limits already). Returns 0.
 */
__attribute__((noinline)) int ev_emit(struct __sk_buff *skb, const struct pkt *p,
				      const struct ct_key *orig, __u64 meta)
{
	struct flow_event *e;

	if (!skb || !p || !orig)
		return 0;
	e = ev_reserve(skb->ifindex, skb->cb[CB_SVC_ID], skb->cb[CB_BACKEND_ID], meta,
		       orig->family, orig->proto, p->tcp_flags, orig->saddr, orig->daddr,
		       orig->sport, orig->dport);
	if (!e)
		return 0;
	if (!addr_eq(p->saddr, orig->saddr) || !addr_eq(p->daddr, orig->daddr) ||
	    p->sport != orig->sport || p->dport != orig->dport) {
		e->flags = EV_F_TRANSLATED;
		addr_copy(e->nat_saddr, p->saddr);
		addr_copy(e->nat_daddr, p->daddr);
		e->nat_sport = p->sport;
		e->nat_dport = p->dport;
	}
	ev_submit(e);
	return 0;
}

/* ev_emit() for @p, untranslated (its key is built here: a subprogram, so that the key stays
 * off the caller's stack). */
static __noinline void ev_pkt(struct __sk_buff *skb, const struct pkt *p, __u64 meta)
{
	struct ct_key k;

	ct_key_from_pkt(&k, p);
	ev_emit(skb, p, &k, meta);
}

/* A drop (DROP_* @ret) of a packet not parsed yet, at @point; counted in dp_stats too
 * (STAT_SPOOFED for a spoofed one, and STAT_DROPPED). */
static __noinline void ev_drop_skb(struct __sk_buff *skb, int ret, __u32 point)
{
	struct pkt p;

	if (ret == DROP_SPOOFED)
		stat_inc(STAT_SPOOFED);
	stat_inc(STAT_DROPPED);

	/* A header that does not parse leaves p's tuple zero: the event says what is known. */
	parse_packet(skb, &p);
	ev_pkt(skb, &p, EV_META(EV_KIND_DROP, EV_VERDICT_DROPPED, ev_reason_of(ret), point,
				EV_DIR_UNKNOWN));
}

#endif
