// SPDX-License-Identifier: Apache-2.0
/*
 * sock.c - socket-level load balancing: cgroup v2 sock_addr hooks on the cgroup of the pods.
 *
 *   connect(ClusterIP:port)  --[dp_sock_connect4/6]-->  connect(backend:port)
 *   getpeername() / recvmsg() of that socket  --[dp_sock_getpeername4/6, recvmsg4/6]--> ClusterIP
 *
 * A connected socket (TCP, or connected UDP) to a service frontend is given a backend once, at
 * connect(): its packets then carry the backend's address from the start, and the TC programs
 * see a pod-to-pod flow (no conntrack entry, no rewrite per packet). Everything this path does
 * not handle is left untouched for the TC path, which handles every case: unconnected UDP
 * (sendmsg), ClientIP affinity, source ranges, SNAT/DSR services, frontends without eligible
 * backends (reject or drop), the ClusterIP wildcard (reject).
 *
 * The frontend lookup is the TC path's for traffic from a pod (ClusterIP, then
 * NodePort/LoadBalancer/ExternalIP as seen from inside), and the backend comes from the same
 * slots (eligible backends by weight, or the Maglev table), picked at random.
 */
#define DP_SOCK_MAPS /* dp_sock_rev (maps.h) */
#include "lib/svc.h"

/* The socket's address in @ctx as our address layout; @mapped: an IPv4-mapped IPv6 address
 * (a dual-stack socket reaching an IPv4 service). */
static __always_inline void sock_addr_read(struct bpf_sock_addr *ctx, int v6, __u32 *addr,
					   __u8 *family, int *mapped)
{
	*mapped = 0;
	if (!v6) {
		addr[0] = ctx->user_ip4;
		addr[1] = 0;
		addr[2] = 0;
		addr[3] = 0;
		*family = DP_AF_INET;
		return;
	}
	addr[0] = ctx->user_ip6[0];
	addr[1] = ctx->user_ip6[1];
	addr[2] = ctx->user_ip6[2];
	addr[3] = ctx->user_ip6[3];
	if (addr[0] == 0 && addr[1] == 0 && addr[2] == bpf_htonl(0xffff)) {
		addr[0] = addr[3];
		addr[2] = 0;
		addr[3] = 0;
		*family = DP_AF_INET;
		*mapped = 1;
		return;
	}
	*family = DP_AF_INET6;
}

static __always_inline void sock_addr_write(struct bpf_sock_addr *ctx, int v6, int mapped,
					    const __u32 *addr, __be16 port)
{
	if (!v6) {
		ctx->user_ip4 = addr[0];
	} else if (mapped) {
		ctx->user_ip6[3] = addr[0];
	} else {
		ctx->user_ip6[0] = addr[0];
		ctx->user_ip6[1] = addr[1];
		ctx->user_ip6[2] = addr[2];
		ctx->user_ip6[3] = addr[3];
	}
	ctx->user_port = (__u32)port;
}

/* Service flags this path leaves to the TC programs (they need the client's address, which an
 * unbound socket does not have yet, or a translation of the source). */
#define SOCK_SKIP_FLAGS                                                                      \
	(SVC_F_AFFINITY | SVC_F_NO_LOCAL | SVC_F_SRC_RANGES | SVC_F_SNAT | SVC_F_WILDCARD |  \
	 SVC_F_DSR)

static __always_inline int sock_connect(struct bpf_sock_addr *ctx, int v6)
{
	struct sock_rev_key rk;
	struct sock_rev_value rv;
	struct svc_value *svc;
	struct backend *be;
	struct pkt p;
	__u32 backend_id = 0;
	__u32 proto = ctx->protocol;
	int mapped;

	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return 1;
	__builtin_memset(&p, 0, sizeof(p));
	sock_addr_read(ctx, v6, p.daddr, &p.family, &mapped);
	p.dport = (__be16)ctx->user_port;
	p.proto = proto;

	svc = svc_lookup(&p, SVC_SCOPE_INTERNAL, 0);
	if (!svc)
		svc = svc_lookup(&p, SVC_SCOPE_EXTERNAL_INSIDE, 0);
	if (!svc || (svc->flags & SOCK_SKIP_FLAGS) || svc->slot_count == 0)
		return 1;
	be = backend_at(svc, bpf_get_prandom_u32() % svc->slot_count, &backend_id);
	if (!be || be->family != p.family)
		return 1;

	__builtin_memset(&rk, 0, sizeof(rk));
	rk.cookie = bpf_get_socket_cookie(ctx);
	addr_copy(rk.addr, be->addr);
	rk.port = be->port;
	rk.family = p.family;
	__builtin_memset(&rv, 0, sizeof(rv));
	addr_copy(rv.addr, p.daddr);
	rv.port = p.dport;
	rv.svc_id = svc->id;
	/* Without the entry getpeername() would show the backend: still connected, so go on. */
	bpf_map_update_elem(&dp_sock_rev, &rk, &rv, BPF_ANY);

	sock_addr_write(ctx, v6, mapped, be->addr, be->port);
	stat_inc(STAT_SOCK_TRANSLATED);
	return 1;
}

/* getpeername() / recvmsg(): the backend a socket was connected to shows as its frontend. */
static __always_inline int sock_reverse(struct bpf_sock_addr *ctx, int v6)
{
	struct sock_rev_key rk;
	struct sock_rev_value *rv;
	int mapped;

	__builtin_memset(&rk, 0, sizeof(rk));
	sock_addr_read(ctx, v6, rk.addr, &rk.family, &mapped);
	rk.port = (__be16)ctx->user_port;
	rk.cookie = bpf_get_socket_cookie(ctx);
	rv = bpf_map_lookup_elem(&dp_sock_rev, &rk);
	if (rv)
		sock_addr_write(ctx, v6, mapped, rv->addr, rv->port);
	return 1;
}

SEC("cgroup/connect4")
int dp_sock_connect4(struct bpf_sock_addr *ctx)
{
	return sock_connect(ctx, 0);
}

SEC("cgroup/connect6")
int dp_sock_connect6(struct bpf_sock_addr *ctx)
{
	return sock_connect(ctx, 1);
}

SEC("cgroup/getpeername4")
int dp_sock_getpeername4(struct bpf_sock_addr *ctx)
{
	return sock_reverse(ctx, 0);
}

SEC("cgroup/getpeername6")
int dp_sock_getpeername6(struct bpf_sock_addr *ctx)
{
	return sock_reverse(ctx, 1);
}

SEC("cgroup/recvmsg4")
int dp_sock_recvmsg4(struct bpf_sock_addr *ctx)
{
	return sock_reverse(ctx, 0);
}

SEC("cgroup/recvmsg6")
int dp_sock_recvmsg6(struct bpf_sock_addr *ctx)
{
	return sock_reverse(ctx, 1);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
