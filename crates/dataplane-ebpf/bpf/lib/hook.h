/* SPDX-License-Identifier: Apache-2.0 */
/* hook.h - the body every entry program shares: reply, then forward, then verdict. */
#ifndef DP_HOOK_H
#define DP_HOOK_H

#include "common.h"
#include "csum.h"
#include "parse.h"
#include "lb.h"
#include "masq.h"
#include "reject.h"
#include "icmp.h"
#include "echo.h"
#include "policy.h"
#include "events.h"

/*
 * A redirect forwards the packet in the stack's stead, so it decrements the TTL (hop limit)
 * as the stack would. Returns -1, leaving the packet as it is, when the TTL would run out:
 * the stack then drops it and answers ICMP time exceeded.
 */
static __always_inline int forward_ttl(struct __sk_buff *skb, const struct pkt *p, int ctx)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;

	/* On the uplink's egress the stack has forwarded the packet already, or sent it
	 * itself; on lo's egress the host sent it. */
	if (ctx == CTX_TO_UPLINK || ctx == CTX_TO_LO)
		return 0;
	if (p->family == DP_AF_INET) {
		struct iphdr *ip = data + sizeof(struct ethhdr);

		if ((void *)(ip + 1) > end || ip->ttl <= 1)
			return -1;
		ipv4_dec_ttl(ip);
		return 0;
	}
	struct ipv6hdr *ip6 = data + sizeof(struct ethhdr);
	__u8 hop_limit;

	if ((void *)(ip6 + 1) > end || ip6->hop_limit <= 1)
		return -1;
	hop_limit = ip6->hop_limit - 1;
	/* No header checksum covers it: through the helper, which keeps a CHECKSUM_COMPLETE
	 * skb's csum right. */
	if (bpf_skb_store_bytes(skb, sizeof(struct ethhdr) + offsetof(struct ipv6hdr, hop_limit),
				&hop_limit, 1, BPF_F_RECOMPUTE_CSUM))
		return -1;
	return 0;
}

/* Redirects to `ifindex`, resolving the neighbour of next hop `nh_addr` (family `af`,
 * AF_INET or AF_INET6) there. */
static __always_inline long redirect_via(__u32 ifindex, __u8 af, const __u32 *nh_addr)
{
	struct bpf_redir_neigh nh;

	__builtin_memset(&nh, 0, sizeof(nh));
	nh.nh_family = af;
	if (af == AF_INET)
		nh.ipv4_nh = nh_addr[0];
	else
		__builtin_memcpy(nh.ipv6_nh, nh_addr, 16);
	return bpf_redirect_neigh(ifindex, &nh, sizeof(nh), 0);
}

/*
 * Redirects a packet translated on lo's egress to @ifindex. The skb still holds the local
 * route it was sent with, and a packet queued for a neighbour not yet resolved is sent along
 * its route later: over lo, to no one. Without a next hop the kernel looks the route up
 * itself and replaces it (one more lookup, for these connections only).
 */
static __always_inline long redirect_from_lo(__u32 ifindex)
{
	return bpf_redirect_neigh(ifindex, NULL, 0, 0);
}

/* The veth of the pod on this node that has @addr (dp_local), NULL when there is none. */
static __always_inline struct local_value *local_pod(const __u32 *addr, __u8 family)
{
	struct local_key lk;

	__builtin_memset(&lk, 0, sizeof(lk));
	__builtin_memcpy(lk.addr, addr, sizeof(lk.addr));
	lk.family = family;
	return bpf_map_lookup_elem(&dp_local, &lk);
}

/*
 * After translation, route the packet ourselves: a packet whose new source is a node address
 * would be dropped as a martian if handed back to the stack on an ingress hook. When the FIB
 * has no forwarding answer (local delivery, no route), the stack takes over.
 */
static __noinline int dp_route(struct __sk_buff *skb, const struct pkt *p, int ctx)
{
	struct bpf_fib_lookup fib;
	struct local_value *local;
	long ret;

	local = local_pod(p->daddr, p->family);
	if (local) {
		/* A pod on this node: to its veth, the destination itself is the next hop. */
		if (ctx == CTX_TO_LO)
			return redirect_from_lo(local->ifindex);
		if (forward_ttl(skb, p, ctx) < 0)
			return TC_ACT_OK;
		return redirect_via(local->ifindex, p->family == DP_AF_INET ? AF_INET : AF_INET6,
				    p->daddr);
	}

	__builtin_memset(&fib, 0, sizeof(fib));
	fib.ifindex = skb->ifindex;
	fib.l4_protocol = p->proto;
	fib.sport = p->sport;
	fib.dport = p->dport;
	if (p->family == DP_AF_INET) {
		fib.family = AF_INET;
		fib.ipv4_src = p->saddr[0];
		fib.ipv4_dst = p->daddr[0];
	} else {
		fib.family = AF_INET6;
		__builtin_memcpy(fib.ipv6_src, p->saddr, 16);
		__builtin_memcpy(fib.ipv6_dst, p->daddr, 16);
	}
	ret = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	if (ret != BPF_FIB_LKUP_RET_SUCCESS && ret != BPF_FIB_LKUP_RET_NO_NEIGH) {
		/* On lo the packet keeps the local route it was sent with: going on, it is
		 * delivered on this node, which is right only when the new destination is local
		 * too (a host-network backend). Anything else (no route, too big for the way out)
		 * would reach no one here. */
		if (ctx == CTX_TO_LO && ret != BPF_FIB_LKUP_RET_NOT_FWDED) {
			int why = ret == BPF_FIB_LKUP_RET_FRAG_NEEDED ? DROP_FRAG_TOO_BIG
								       : DROP_NO_ROUTE;

			stat_inc(STAT_DROPPED);
			ev_pkt(skb, p, EV_META(EV_KIND_DROP, EV_VERDICT_DROPPED, ev_reason_of(why),
					       PT_FROM_HOST, EV_DIR_ORIGINAL));
			return TC_ACT_SHOT;
		}
		return TC_ACT_OK;
	}
	if (ctx == CTX_TO_LO)
		return redirect_from_lo(fib.ifindex);
	if (forward_ttl(skb, p, ctx) < 0)
		return TC_ACT_OK;
	/* The lookup left the next hop in the destination fields (the gateway, or the
	 * destination itself on a link route; its family may differ, RFC 5549): pass it on, or
	 * the redirect looks the route up a second time. */
	return redirect_via(fib.ifindex, fib.family,
			    fib.family == AF_INET ? &fib.ipv4_dst : fib.ipv6_dst);
}

/*
 * Host routing (CFG_F_HOST_ROUTING): a TCP/UDP packet from a pod that needs no translation
 * and is for another pod on this node goes straight to that pod's veth, as a translated one
 * does, instead of through the node's IP forwarding and netfilter. Connections balanced at
 * the socket (sock.c) are such packets from their first SYN on. Left to the stack: packets
 * whose source is not the sending pod's own address (the stack's reverse-path filter decides
 * about those), and IPv4 fragments (the stack would wait in vain for a first fragment sent
 * past it to reassemble the rest).
 */
static __noinline int host_route(struct __sk_buff *skb, const struct pkt *p)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct local_value *local;
	struct dp_config *cfg;
	__u32 zero = 0;
	__u32 out;

	cfg = bpf_map_lookup_elem(&dp_config, &zero);
	if (!cfg || !(cfg->flags & CFG_F_HOST_ROUTING))
		return TC_ACT_OK;
	if (p->family == DP_AF_INET) {
		struct iphdr *ip = data + sizeof(struct ethhdr);

		if ((void *)(ip + 1) > end || (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET)))
			return TC_ACT_OK;
	}
	local = local_pod(p->daddr, p->family);
	if (!local || local->ifindex == skb->ifindex)
		return TC_ACT_OK;
	out = local->ifindex;
	local = local_pod(p->saddr, p->family);
	if (!local || local->ifindex != skb->ifindex)
		return TC_ACT_OK;
	if (forward_ttl(skb, p, CTX_FROM_POD) < 0)
		return TC_ACT_OK;
	stat_inc(STAT_HOST_ROUTED);
	return redirect_via(out, p->family == DP_AF_INET ? AF_INET : AF_INET6, p->daddr);
}

/*
 * A reply of a connection the host made to one of its own addresses (CT_F_LOOPBACK), now
 * from that address: up the stack through lo's ingress. Handed to the stack where it arrived
 * it would be dropped as a martian (IPv4: a local source on another interface); lo accepts it
 * with net.ipv4.conf.lo.accept_local, which user space sets when it attaches dp_to_lo (Cilium
 * sets it on cilium_host for its replies to the host). lo's address is all zeros: a packet
 * for another MAC would be PACKET_OTHERHOST there.
 */
static __noinline int to_lo(struct __sk_buff *skb)
{
	__u8 macs[2 * ETH_ALEN] = {};

	if (bpf_skb_store_bytes(skb, 0, macs, sizeof(macs), 0) < 0)
		return TC_ACT_SHOT;
	return bpf_redirect(LOOPBACK_IFINDEX, BPF_F_INGRESS);
}

/*
 * Anti-spoofing, with NetworkPolicy in the state (CFG_F_POLICY): a packet from a pod whose
 * source is not one of that pod's addresses would borrow another's rights (policy knows a
 * client by its address: a pod forging the node's address would pass as the node). Its own
 * addresses are those dp_local sends to this veth (with policies user space refuses a state
 * whose local addresses do not all fit in dp_local, so any other source is forged). An IPv6 link-local or
 * unspecified source is exempt only towards a link-local or multicast destination (neighbour
 * discovery, duplicate address detection, MLD with the gateway; the reference model's
 * is_spoofed): towards anything else it is dropped like any borrowed address, since
 * lb_forward would translate and redirect it (past the kernel, which refuses to forward
 * link-local sources) and policy knows no such client. Calico drops these with strict RPF on
 * workload interfaces, Cilium checks an endpoint's source addresses.
 */
static __noinline int pol_spoofed(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct local_value *local;
	struct dp_config *cfg;
	__u32 saddr[4] = {};
	__u32 zero = 0;
	__u8 family;

	cfg = bpf_map_lookup_elem(&dp_config, &zero);
	if (!cfg || !(cfg->flags & CFG_F_POLICY) || (void *)(eth + 1) > end)
		return 0;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);

		if ((void *)(ip + 1) > end)
			return 0;
		family = DP_AF_INET;
		saddr[0] = ip->saddr;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > end)
			return 0;
		family = DP_AF_INET6;
		__builtin_memcpy(saddr, &ip6->saddr, 16);
		if ((saddr[0] & bpf_htonl(0xffc00000)) == bpf_htonl(0xfe800000) ||
		    !(saddr[0] | saddr[1] | saddr[2] | saddr[3])) {
			__u32 d0 = ip6->daddr.in6_u.u6_addr32[0];

			return !((d0 & bpf_htonl(0xffc00000)) == bpf_htonl(0xfe800000) ||
				 (d0 & bpf_htonl(0xff000000)) == bpf_htonl(0xff000000));
		}
	} else {
		return 0;
	}
	/* User space refuses a state with policies whose local addresses dp_local cannot all
	 * hold, so an address it lacks is no pod's on this node: forged. */
	local = local_pod(saddr, family);
	return !local || local->ifindex != skb->ifindex;
}

/* The direction of a packet dropped with @ret: those verdicts judge a new connection's first
 * packet (from its client); of the others the datapath does not know. */
static __always_inline __u32 ev_dir_of(int ret)
{
	switch (ret) {
	case DP_REJECT:
	case DP_REJECT_PORT:
	case DROP_SRC_RANGE:
	case DROP_NO_LOCAL:
	case DROP_UNALLOCATED:
	case DROP_POLICY_DENIED:
		return EV_DIR_ORIGINAL;
	default:
		return EV_DIR_UNKNOWN;
	}
}


/*
 * The events dp_handle() owes for a packet: a policy verdict and a new connection (skb->cb's
 * EV_* bits), or its drop (counted in STAT_DROPPED too) or reject (@ret < 0), reported with the tuple as it arrived (@k, or
 * @p's when NULL: nothing was translated) and @p as it is now.
 */
static __noinline void ev_after(struct __sk_buff *skb, const struct pkt *p,
				const struct ct_key *k, int ret, int ctx)
{
	__u32 point = ev_point_of(ctx);
	__u32 owed = skb->cb[CB_EV];
	struct ct_key own;

	if (!k) {
		ct_key_from_pkt(&own, p);
		k = &own;
	}
	if (ret < 0) {
		/* Counted here rather than in dp_handle(), whose frame has no room for the key. */
		if (ret != DP_REJECT && ret != DP_REJECT_PORT && ret != DP_FRAG_NEEDED)
			stat_inc(STAT_DROPPED);
		ev_emit(skb, p, k, EV_META(EV_KIND_DROP, ev_verdict_of(ret, p), ev_reason_of(ret),
					   point, ev_dir_of(ret)));
		return;
	}
	if (owed & EV_ALLOWED)
		ev_emit(skb, p, k, EV_META(EV_KIND_POLICY,
					   ret == DP_NAT ? EV_VERDICT_TRANSLATED : EV_VERDICT_FORWARDED,
					   DR_NONE, point, EV_DIR_ORIGINAL));
	if (owed & EV_CREATED)
		ev_emit(skb, p, k, EV_META(EV_KIND_NEW_CONN, EV_VERDICT_TRANSLATED, DR_NONE, point,
					   EV_DIR_ORIGINAL));
}

/**
 * sctp_crc_fix() - the CRC32c of an SCTP packet whose ports word went from
 * skb->cb[CB_SCTP_PORTS] to what the packet holds now (csum.h sctp_crc_update()); and a
 * CHECKSUM_COMPLETE skb's csum for both changes (the ports' change of the packet's
 * one's-complement sum, which no L4 checksum offsets as TCP's and UDP's do, and the CRC's).
 */
static __noinline void sctp_crc_fix(struct __sk_buff *skb, const struct pkt *p)
{
	__u32 hdr[SCTP_HDR_LEN / 4];
	__u32 old = skb->cb[CB_SCTP_PORTS];
	__u32 crc;
	__s64 diff;

	if (bpf_skb_load_bytes(skb, p->l4_off, hdr, sizeof(hdr)) < 0 || hdr[0] == old)
		return;
	diff = bpf_csum_diff(&old, 4, hdr, 4, 0);
	if (diff >= 0)
		bpf_csum_update(skb, diff);
	crc = sctp_crc_update(hdr[SCTP_CRC_OFF / 4], old, hdr[0], p->sctp_len);
	if (crc != hdr[SCTP_CRC_OFF / 4])
		bpf_skb_store_bytes(skb, p->l4_off + SCTP_CRC_OFF, &crc, 4, BPF_F_RECOMPUTE_CSUM);
}

static __always_inline int dp_handle(struct __sk_buff *skb, int ctx)
{
	struct ct_key k; /* the packet's tuple as it arrived (TCP/UDP: l4) */
	struct pkt p;
	int l4 = 0;      /* a TCP/UDP packet, parsed into p */
	int ret;

	skb->cb[CB_SVC_ID] = 0;
	skb->cb[CB_BACKEND_ID] = 0;
	/* Events to report: EV_CREATED (lb_forward() or masquerade() wrote this connection's
	 * entries), EV_ALLOWED (NetworkPolicy judged and allowed a new connection, pol_check()
	 * > 0). In skb->cb, not a local: dp_from_pod's frame has no room for one more spilled
	 * value. */
	skb->cb[CB_EV] = 0;
	skb->cb[CB_SCTP_PORTS] = 0;
	/* Before anything else holds stack: dp_from_pod's deepest call chain is at the limit. */
	if (ctx == CTX_FROM_POD && pol_spoofed(skb)) {
		/* (counted in STAT_SPOOFED and STAT_DROPPED there) */
		ev_drop_skb(skb, DROP_SPOOFED, PT_FROM_POD);
		return TC_ACT_SHOT;
	}
	ret = parse_packet(skb, &p);
	if (ret == 0 && ctx == CTX_FROM_POD) {
		/* A denial is dropped and reported below with the others. */
		int verdict = pol_other(skb, &p, POL_DIR_EGRESS);

		if (verdict < 0)
			ret = verdict;
		else if (verdict > 0)
			skb->cb[CB_EV] = EV_ALLOWED;
	}
	if (ret == 0) {
		/* Non-first fragments and IPv6 with extension headers: policy judged them above,
		 * translation leaves them alone (DP_PASS, after the policy verdict's event), but
		 * for an IPv6 DSR request from the ingress node, learnt and stripped here. */
		if (ctx == CTX_FROM_UPLINK && p.opaque == PKT_EXT) {
			ret = dsr_accept6(skb, &p);
		} else if (!p.opaque && (p.proto == IPPROTO_ICMP || p.proto == IPPROTO_ICMPV6)) {
			ret = echo_parse(skb, &p);
			if (ret)
				ret = echo_nat(skb, &p, ctx, ret);
			else
				ret = icmp_error_nat(skb, &p);
		}
	} else if (ret > 0) {
		l4 = 1;
		ret = DP_PASS;
		if (ctx == CTX_FROM_UPLINK)
			ret = dsr_accept(skb, &p);
		ct_key_from_pkt(&k, &p);
		if (ret == DP_PASS) {
			/* One conntrack lookup for the packet's tuple serves every step below. */
			struct ct_entry *ct;

			ct = bpf_map_lookup_elem(&dp_ct, &k);
			ret = lb_reply(skb, &p, ct);
			if (ret == DP_NAT && ct && (ct->flags & CT_F_LOOPBACK))
				ret = DP_TO_LO;
			if (ret == DP_PASS) {
				if (!ct || !ct_is_fwd(ct) || ct_is_reopen(ct, &p))
					skb->cb[CB_EV] = EV_CREATED;
				ret = lb_forward(skb, &p, ctx, ct);
				if (ret != DP_NAT)
					skb->cb[CB_EV] = 0;
			}
			/* The pod's egress policy: its own tuple (k) is the connection's key, p now
			 * holds the backend chosen (or, for a reply, the client). A denied new
			 * connection's entries go before the packet is dropped (one denied later, at
			 * a server pod's ingress, keeps them until they expire: they approve
			 * nothing, dp_pol_ct does). (Checked here, not inside lb_forward() before it writes
			 * them: that call chain would outgrow the 512-byte stack.) */
			if (ctx == CTX_FROM_POD &&
			    (ret == DP_PASS || ret == DP_NAT || ret == DP_TO_LO)) {
				int verdict = pol_check(&k, p.daddr, p.dport, p.tcp_flags,
							POL_DIR_EGRESS);

				if (verdict < 0) {
					if (skb->cb[CB_EV] & EV_CREATED)
						pol_forget_ct(&k, &p);
					skb->cb[CB_EV] = 0;
					ret = verdict;
				} else if (verdict > 0) {
					skb->cb[CB_EV] |= EV_ALLOWED;
				}
			}
			if (ret == DP_PASS && ctx == CTX_TO_UPLINK)
				ret = masquerade(skb, &p, ct);
		}
		if (ret == DP_PASS && ctx == CTX_FROM_UPLINK)
			ret = track_inbound(&p);
	}
	/* One call for every event the packet owes, so that dp_from_pod's frame stays as it
	 * was (a spilled value more and its deepest call chain outgrows the stack). */
	if (skb->cb[CB_EV] || ret < 0)
		ev_after(skb, &p, l4 ? &k : NULL, ret, ctx);
	if (skb->cb[CB_SCTP_PORTS])
		sctp_crc_fix(skb, &p);
	switch (ret) {
	case DP_PASS:
		if (l4 && ctx == CTX_FROM_POD)
			return host_route(skb, &p);
		return TC_ACT_OK;
	case DP_NAT:
		return dp_route(skb, &p, ctx);
	case DP_TO_LO:
		return to_lo(skb);
	case DP_MASQ:
	case DP_DSR:
		return TC_ACT_OK;
	default:
		break;
	}
	/* The uplink's answers of our own (a reject, ICMP fragmentation needed) are not the
	 * packet: host policy's normal stage (tc_host.c) leaves them alone, as the reference
	 * model leaves a reject. */
	if (ctx != CTX_FROM_POD)
		skb->cb[CB_HOST] = 0;
	switch (ret) {
	case DP_REJECT:
	case DP_REJECT_PORT:
		if (ctx == CTX_FROM_POD && p.proto == IPPROTO_TCP && !(p.tcp_flags & TCPF_RST))
			pol_approve_rst(&p);
		return reject(skb, &p, ctx);
	case DP_FRAG_NEEDED:
		return frag_needed(skb, &p, ctx);
	default:
		/* (counted in STAT_DROPPED by ev_after()) */
		return TC_ACT_SHOT;
	}
}

static __always_inline int is_loopback_addr(const struct pkt *p, const __u32 *a)
{
	if (p->family == DP_AF_INET)
		return (a[0] & bpf_htonl(0xff000000)) == bpf_htonl(0x7f000000);
	return a[0] == 0 && a[1] == 0 && a[2] == 0 && a[3] == bpf_htonl(1);
}

/*
 * 127.0.0.0/8 and ::1 (most of what lo carries): never a service frontend, and a client bound
 * to one could not get its replies (IPv4 input routing drops a packet to a loopback address
 * from another device's or a redirect's path as a martian): left alone.
 */
static __always_inline int is_loopback(const struct pkt *p)
{
	return is_loopback_addr(p, p->daddr) || is_loopback_addr(p, p->saddr);
}

/*
 * Marks a connection lb_forward() has just created from lo (@p: its packet as translated, so
 * that its reply comes from p->daddr:dport to p->saddr:sport) with CT_F_LOOPBACK: its replies
 * are delivered through lo (to_lo); and reports it (events.h) when @report. lb_forward() itself serves every hook and sees the host
 * here as it sees it on the uplink's egress.
 */
static __noinline void lo_mark(struct __sk_buff *skb, const struct pkt *p, int report)
{
	struct ct_entry *e;
	struct ct_key k;

	ct_reply_key(&k, p, p->daddr, p->dport);
	e = bpf_map_lookup_elem(&dp_ct, &k);
	if (!e || !ct_is_rev(e))
		return;
	e->flags |= CT_F_LOOPBACK;
	ct_fwd_key_of_rev(&k, e, p);
	e = bpf_map_lookup_elem(&dp_ct, &k);
	if (e)
		e->flags |= CT_F_LOOPBACK;
	/* The new connection's event (@report: lb_forward() created it): k is its tuple as the
	 * host sent it. (Here, where the key is, rather than in dp_handle_lo(), whose frame has
	 * no room for another.) */
	if (report)
		ev_emit(skb, p, &k, EV_META(EV_KIND_NEW_CONN, EV_VERDICT_TRANSLATED, DR_NONE,
					    PT_FROM_HOST, EV_DIR_ORIGINAL));
}

/* The conntrack entry of @p's own tuple (a subprogram: the key stays off the caller's
 * stack, which lb_forward's deep call chain needs). */
static __noinline struct ct_entry *ct_lookup(const struct pkt *p)
{
	struct ct_key k;

	ct_key_from_pkt(&k, p);
	return bpf_map_lookup_elem(&dp_ct, &k);
}

/**
 * dp_handle_lo() - TC egress of lo: the host connecting to one of its own addresses at a
 * NodePort (or a LoadBalancer IP / ExternalIP configured on the node). Such packets never
 * leave through the uplink, where dp_to_uplink would translate them; kube-proxy catches them
 * in the nat OUTPUT chain (`fib daddr type local` / `--dst-type LOCAL` jumps to the
 * nodeports chain). Translated as dp_to_uplink translates the host's packets (cluster-wide
 * backends, masqueraded to the node address), then routed to the backend ourselves: on lo
 * the packet would be delivered locally. Everything else goes on untouched, loopback
 * addresses without a map lookup.
 */
static __always_inline int dp_handle_lo(struct __sk_buff *skb)
{
	struct ct_entry *ct;
	struct pkt p;
	int created;
	int ret;

	if (parse_packet(skb, &p) <= 0 || is_loopback(&p))
		return TC_ACT_OK;
	skb->cb[CB_SVC_ID] = 0;
	skb->cb[CB_BACKEND_ID] = 0;
	skb->cb[CB_SCTP_PORTS] = 0;
	ct = ct_lookup(&p);
	ret = lb_reply(skb, &p, ct);
	if (skb->cb[CB_SCTP_PORTS])
		sctp_crc_fix(skb, &p);
	if (ret == DP_NAT) {
		/* A host-network backend on this node answered. To the host: already on lo, on
		 * its way. To a pod (a connection from a pod masqueraded to this node): there. */
		if (ct && (ct->flags & CT_F_LOOPBACK))
			return TC_ACT_OK;
		return dp_route(skb, &p, CTX_TO_LO);
	}
	if (ret == DP_PASS) {
		/* 2: lb_forward() creates the connection; 1: it exists (another hook made it for
		 * this tuple) but is not marked CT_F_LOOPBACK yet. */
		if (!ct || !ct_is_fwd(ct) || ct_is_reopen(ct, &p))
			created = 2;
		else
			created = !(ct->flags & CT_F_LOOPBACK);
		ret = lb_forward(skb, &p, CTX_TO_UPLINK, ct);
		if (skb->cb[CB_SCTP_PORTS])
			sctp_crc_fix(skb, &p);
		if (ret == DP_NAT) {
			if (created)
				lo_mark(skb, &p, created == 2);
			return dp_route(skb, &p, CTX_TO_LO);
		}
	}
	switch (ret) {
	case DP_PASS:
	case DP_MASQ:
		return TC_ACT_OK;
	default:
		break;
	}
	/* (ICMP fragmentation needed is not answered here: dropped) */
	ev_pkt(skb, &p, EV_META(EV_KIND_DROP,
				ret == DP_FRAG_NEEDED ? EV_VERDICT_DROPPED : ev_verdict_of(ret, &p),
				ev_reason_of(ret), PT_FROM_HOST, ev_dir_of(ret)));
	switch (ret) {
	case DP_REJECT:
	case DP_REJECT_PORT:
		/* As from the uplink's egress: the error goes up the stack, here through lo. */
		return reject(skb, &p, CTX_TO_UPLINK);
	default:
		stat_inc(STAT_DROPPED);
		return TC_ACT_SHOT;
	}
}

#endif
