// SPDX-License-Identifier: Apache-2.0
/*
 * floor.c - bench fixture only (not loaded by the dataplane): the first steps every TCP packet
 * takes through dp_from_pod, cut short, to measure what BPF_PROG_TEST_RUN cannot go below on
 * a machine. Loaded against the dataplane's pinned maps, so dp_ct is the real one.
 *
 *   floor_entry   the test run itself: return at once;
 *   floor_ct      parse the packet and look it up in dp_ct (TC_ACT_OK on a hit, SHOT on a miss);
 *   floor_ct_nat  the same, then rewrite the destination to the entry's backend (nat.h), the
 *                 least a translation does; no routing, no counters, no timestamps;
 *   floor_svc     parse the packet, look up its ClusterIP frontend and choose a backend (svc.h:
 *                 service map, slot, backend), what a new flow adds; how it grows with the
 *                 number of services is what bigger maps cost.
 */
#include "../lib/common.h"
#include "../lib/parse.h"
#include "../lib/ct.h"
#include "../lib/nat.h"
#include "../lib/svc.h"

SEC("classifier")
int floor_entry(struct __sk_buff *skb)
{
	return TC_ACT_OK;
}

/* Out of line: inlined into a short program, clang merges the TCP and UDP port loads of
 * parse_packet() past their bounds checks, which the verifier refuses. */
static __noinline int floor_parse(struct __sk_buff *skb, struct pkt *p)
{
	return parse_packet(skb, p);
}

static __always_inline struct ct_entry *floor_lookup(struct __sk_buff *skb, struct pkt *p)
{
	struct ct_key k;

	if (floor_parse(skb, p) <= 0)
		return NULL;
	ct_key_from_pkt(&k, p);
	return bpf_map_lookup_elem(&dp_ct, &k);
}

SEC("classifier")
int floor_ct(struct __sk_buff *skb)
{
	struct pkt p;

	return floor_lookup(skb, &p) ? TC_ACT_OK : TC_ACT_SHOT;
}

SEC("classifier")
int floor_ct_nat(struct __sk_buff *skb)
{
	struct ct_entry *e;
	struct pkt p;

	e = floor_lookup(skb, &p);
	if (!e || nat_dst(skb, &p, e->nat_addr, e->nat_port) < 0)
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}

SEC("classifier")
int floor_svc(struct __sk_buff *skb)
{
	struct svc_value *svc;
	__u32 backend_id = 0;
	struct pkt p;

	if (floor_parse(skb, &p) <= 0)
		return TC_ACT_SHOT;
	svc = svc_lookup(&p, SVC_SCOPE_INTERNAL, 0);
	if (!svc || !select_backend(svc, &p, &backend_id))
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
