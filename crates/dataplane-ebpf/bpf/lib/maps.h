/* SPDX-License-Identifier: Apache-2.0 */
/*
 * maps.h - the single source of truth for map keys, values, map definitions and the constants
 * stored in them.
 *
 * The Rust mirror lives in src/maps.rs; tests/btf_layout.rs checks sizes and field offsets of
 * every struct below, and the value of every enumerator, against the BTF of the compiled
 * objects. Keep explicit padding fields so that no byte of a key is undefined (hash keys are
 * compared bytewise).
 *
 * Addresses are stored as four big-endian 32-bit words; an IPv4 address lives in addr[0]
 * with addr[1..3] zero, and `family` tells which.
 */
#ifndef DP_MAPS_H
#define DP_MAPS_H

#include <linux/types.h>
#include <bpf/bpf_helpers.h>

/*
 * The constants below are enums, not #defines, so that the objects' BTF carries them and
 * tests/btf_layout.rs checks the Rust mirror (src/maps.rs) against it. An enum is in BTF only
 * when a type the code emits uses it: struct dp_consts at the end of this file does.
 */

/* Address families in map keys and values (not the kernel's AF_*). */
enum dp_family {
	DP_AF_INET = 4,
	DP_AF_INET6 = 6,
};

/* Service key scopes: which traffic a frontend entry serves. */
enum svc_scope {
	SVC_SCOPE_INTERNAL = 0,        /* ClusterIP (from pods, host, or outside) */
	SVC_SCOPE_EXTERNAL = 1,        /* NodePort/LB/ExternalIP from outside (uplink) */
	SVC_SCOPE_EXTERNAL_INSIDE = 2, /* NodePort/LB/ExternalIP from a pod or the host */
	/* Was SVC_SCOPE_INTERNAL_OUTSIDE (ClusterIP from outside with cluster-wide backends
	 * under internalTrafficPolicy Local); internalTrafficPolicy now governs outside clients
	 * too, so no program looks it up and a full sync removes entries an older version left.
	 * Reserved: do not reuse. */
	SVC_SCOPE_RETIRED_INTERNAL_OUTSIDE = 3,
};

/* Service flags (svc_value.flags). */
enum svc_flag {
	SVC_F_MAGLEV = 1 << 0,     /* slots are a Maglev table: index by flow hash */
	SVC_F_AFFINITY = 1 << 1,   /* ClientIP session affinity */
	SVC_F_NO_LOCAL = 1 << 2,   /* no slots because policy Local has no local backend: drop */
	SVC_F_SRC_RANGES = 1 << 3, /* client must match dp_srcrange */
	SVC_F_SNAT = 1 << 4,       /* masquerade every client of the entry to the node address */
	SVC_F_WILDCARD = 1 << 5,   /* port 0 entry of a ClusterIP: unknown port, reject */
	SVC_F_DSR = 1 << 6,        /* direct server return to backends on other nodes */
};

/* Backend flags (backend.flags; informational: eligibility is decided in user space). */
enum backend_flag {
	BE_F_LOCAL = 1 << 0,
	BE_F_TERMINATING = 1 << 1,
};

/*
 * Conntrack has one key space: a packet's own tuple finds its entry with one lookup, whatever
 * its direction; the kind of entry is in its flags (no CT_F_REV/CT_F_INBOUND: forward entry,
 * client -> frontend as the client sent it).
 */

/* Conntrack flags (ct_entry.flags). */
enum ct_flag {
	CT_F_SNAT = 1 << 0,     /* source was masqueraded */
	CT_F_HAIRPIN = 1 << 1,  /* client and backend are the same pod */
	CT_F_EXTERNAL = 1 << 2, /* created from the uplink */
	CT_F_MASQ = 1 << 3,     /* pod masquerade, not a service connection */
	CT_F_INBOUND = 1 << 4,  /* key: a local pod -> an outside peer; marks replies of a
				 * connection that came in, which must not be masqueraded */
	CT_F_DSR = 1 << 5,      /* direct server return: on the ingress node a forward entry
				 * whose replies never come back; on the backend node a reverse
				 * entry learnt from the DSR option */
	CT_F_REV = 1 << 6,      /* reverse entry: key backend -> client (or SNAT address) */
	CT_F_LOOPBACK = 1 << 7, /* the host to one of its own addresses (dp_to_lo): replies,
				 * whose new source is a local address, go up through lo */
};

/* State bits seen on a flow (ct_entry.tcp_state, kept in the forward entry); UDP uses
 * CT_TCP_REPLY only. SCTP uses them as parse.h sctp_flags() maps its chunks (INIT: SYN;
 * SHUTDOWN, SHUTDOWN-ACK: FIN of their direction; ABORT, SHUTDOWN-COMPLETE: RST) and
 * CT_SCTP_ESTAB for a COOKIE-ACK. */
enum ct_tcp_state {
	CT_TCP_SYN = 1 << 0,
	CT_TCP_REPLY = 1 << 1,
	CT_TCP_FIN_FWD = 1 << 2,
	CT_TCP_FIN_REV = 1 << 3,
	CT_TCP_RST = 1 << 4,
	CT_SCTP_ESTAB = 1 << 5,
};

/* dp_config flags. */
enum config_flag {
	CFG_F_HAS_V4 = 1 << 0,
	CFG_F_HAS_V6 = 1 << 1,
	CFG_F_MASQUERADE = 1 << 2,   /* masquerade new pod connections leaving the cluster */
	CFG_F_MASQ_ALL = 1 << 3,     /* masquerade.all: every destination outside this node's pods */
	CFG_F_HOST_ROUTING = 1 << 4, /* pod -> pod on this node: redirect, skip the stack */
	CFG_F_CLUSTER_V4 = 1 << 5,   /* the node has IPv4 cluster CIDRs (else no ClusterIP client
				      * is masqueraded for being outside them: no local detector) */
	CFG_F_CLUSTER_V6 = 1 << 6,   /* the same for IPv6 */
	CFG_F_POLICY = 1 << 7,       /* the state has NetworkPolicies: pods' forged sources are
				      * dropped (policy knows a client by its address) */
	CFG_F_EV_NEW_CONN = 1 << 8,  /* flow events: report every new connection (events.h) */
	CFG_F_EV_POLICY = 1 << 9,    /* flow events: report NetworkPolicy's allowed verdicts */
};

/*
 * DSR wire format (IPv4): the ingress node keeps the client's source address, rewrites the
 * destination to the backend and inserts this IP option right after the 20-byte header so
 * that the backend's node can answer from the service frontend. 8 bytes: the MTU cost.
 * Type 0x9b: copied on fragmentation, class 0, number 27 (unassigned; Cilium uses 0x9a).
 */
#define DSR_OPT_TYPE 0x9b
#define DSR_OPT_LEN 8
struct dsr_opt {
	__u8 type;
	__u8 len;
	__be16 port; /* frontend port */
	__be32 addr; /* frontend address */
};

/* dp_cidrs value bits; user space ORs into each prefix the bits of every prefix containing it,
 * so the longest match carries all of them. */
enum cidr_flag {
	CIDR_F_CLUSTER = 1 << 0, /* cluster (pod) CIDRs */
	CIDR_F_POD = 1 << 1,     /* this node's pod CIDRs */
	CIDR_F_NO_MASQ = 1 << 2, /* nonMasqueradeCidrs */
	CIDR_F_NODE = 1 << 3,    /* this node's addresses (/32, /128) */
	CIDR_F_SERVICE = 1 << 4, /* node.serviceCIDRs: an address no frontend has is dropped */
};

/* Indexes into dp_stats. */
enum dp_stat {
	STAT_TRANSLATED = 0,
	STAT_REV_TRANSLATED = 1,
	STAT_DROPPED = 2,
	STAT_REJECTED = 3,
	STAT_CT_CREATED = 4,
	STAT_CT_FULL = 5,
	STAT_SNAT_EXHAUSTED = 6,
	STAT_MASQUERADED = 7,
	STAT_DSR_FORWARDED = 8,    /* requests sent to another node with the DSR option */
	STAT_DSR_REPLIES = 9,      /* replies answered from the frontend on a backend's node */
	STAT_FRAG_NEEDED = 10,     /* ICMP fragmentation needed sent for the DSR overhead */
	STAT_XDP_FORWARDED = 11,   /* service packets forwarded by the XDP fast path */
	STAT_SOCK_TRANSLATED = 12, /* connect() calls to a frontend given a backend (sock.c) */
	STAT_HOST_ROUTED = 13,     /* untranslated packets from a pod redirected to a local pod */
	STAT_UNALLOCATED = 14,     /* dropped: to a service-CIDR address that is no frontend */
	STAT_POLICY_DENIED = 15,   /* dropped: a new connection NetworkPolicy does not allow */
	STAT_SPOOFED = 16,         /* dropped: from a pod, with a source that is not its own */
	STAT_CT_LOST = 17,         /* a TCP packet without SYN to a frontend, no dp_ct entry:
				    * its connection's entry was evicted or expired */
	STAT_MAX = 18,             /* the number of counters (dp_stats' size) */
};

struct svc_key {
	__u32 addr[4]; /* frontend address, network order */
	__be16 port;   /* frontend port, 0 for the ClusterIP wildcard */
	__u8 proto;    /* IPPROTO_*, 0 for the wildcard */
	__u8 scope;    /* SVC_SCOPE_* */
	__u8 family;   /* DP_AF_* */
	__u8 pad[3];
};

struct svc_value {
	__u32 id;               /* service-port id: affinity and source-range key */
	__u32 slot_base;        /* first index in dp_slots */
	__u32 slot_count;       /* number of slots (weighted backends or Maglev table size) */
	__u32 affinity_timeout; /* seconds */
	__u16 flags;            /* SVC_F_* */
	__u16 pad;
};

/* The slots a frontend entry carries itself (svc_entry.slots). */
enum svc_limit {
	SVC_INLINE_SLOTS = 16,
};

/*
 * dp_svc's value: the frontend, and the first slots of its range side by side with it (as
 * Katran keeps a VIP's metadata and its ring together). A range of at most SVC_INLINE_SLOTS
 * slots (most services: one slot per endpoint) is read from here, so a new connection costs
 * the service lookup and the backend's, no dp_slots lookup (a cache and TLB miss in a big
 * array). dp_slots still holds every range (user space's mirror, the socket hooks' and
 * observe()'s reads, bigger ranges and Maglev tables); slots[i] equals
 * dp_slots[v.slot_base + i] for i < min(v.slot_count, SVC_INLINE_SLOTS), the rest 0. The
 * entry is replaced whole by an update, so a packet never sees slots of another range.
 */
struct svc_entry {
	struct svc_value v; /* first: a struct svc_value * to an entry points at its head */
	__u32 slots[SVC_INLINE_SLOTS];
};

struct backend {
	__u32 addr[4];
	__be16 port;
	__u8 family;
	__u8 flags; /* BE_F_* */
};

struct ct_key {
	__u32 saddr[4];
	__u32 daddr[4];
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 family;
	__u8 pad0; /* 0 (the direction is in ct_entry.flags) */
	__u8 pad;
};

/*
 * Forward entry (key: client -> frontend): nat = backend (new destination), snat = new source
 * when CT_F_SNAT. Reverse entry (key: backend -> client or SNAT address): nat = frontend (new
 * source), snat = the original client (new destination when CT_F_SNAT; always filled so that
 * the forward key can be rebuilt).
 */
struct ct_entry {
	__u32 nat_addr[4];
	__u32 snat_addr[4];
	__be16 nat_port;
	__be16 snat_port;
	__u32 backend_id;
	__u32 svc_id;
	__u16 flags;    /* CT_F_* */
	__u8 tcp_state; /* CT_TCP_* */
	__u8 pad;
	__u64 created_ns;
	__u64 last_seen_ns;
};

struct affinity_key {
	__u32 svc_id;
	__u8 family;
	__u8 pad[3];
	__u32 addr[4];
};

struct affinity_value {
	__u64 last_seen_ns;
	__u32 backend_id;
	__u32 slot; /* index in the entry's slot range it was picked from (svc.h) */
};

/* LPM key: prefixlen counts the 32 bits of svc_id plus the address bits (IPv4 as ::ffff:a.b.c.d). */
struct srcrange_key {
	__u32 prefixlen;
	__u32 svc_id;
	__u32 addr[4];
};

/* LPM key of dp_cidrs (IPv4 as ::ffff:a.b.c.d); the value is CIDR_F_* bits. */
struct cidr_key {
	__u32 prefixlen;
	__u32 addr[4];
};

/* flow_event.kind (the flow events are further below, with dp_events). */
enum ev_kind {
	EV_KIND_DROP = 1,     /* a packet dropped or rejected (always) */
	EV_KIND_NEW_CONN = 2, /* a conntrack entry created (CFG_F_EV_NEW_CONN) */
	EV_KIND_POLICY = 3,   /* NetworkPolicy allowed a new connection (CFG_F_EV_POLICY) */
	EV_KIND_MAX = 4,      /* the kinds' token buckets in dp_ev_limit (drops: see below);
			       * a power of two (events.h masks with it) */
};

/*
 * The rate limit of one kind of flow event (dp_config.ev_limits, written by user space from
 * EbpfConfig::events; events.h applies it to the dp_ev_limit buckets): at most @burst events
 * at once, refilled at @rate events per second, per CPU (and, for drops, per reason). 0/0: no
 * limit (Cilium's --bpf-events-default-{rate,burst}-limit mean the same by 0).
 */
struct ev_rate {
	__u32 rate;  /* events per second, at most NSEC_PER_SEC; 0: unlimited */
	__u32 burst; /* bucket size */
};

struct dp_config {
	__u32 node_v4;    /* masquerade address, network order */
	__u32 node_v6[4];
	__u32 flags;      /* CFG_F_* */
	__u32 mtu;        /* underlay MTU: a DSR request that no longer fits gets ICMP frag needed */
	struct ev_rate ev_limits[EV_KIND_MAX]; /* by EV_KIND_* ([0] unused) */
};

/* Default sizes: the same as Capacities::default() (src/lib.rs), from which user space sets
 * max_entries at load time; the maps without a capacity there (dp_cidrs, dp_local, dp_config,
 * dp_stats) keep these. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct svc_key);
	__type(value, struct svc_entry);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dp_svc SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct backend);
	__uint(max_entries, 65536);
	/* user space writes backends and slots through a shared mapping */
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dp_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 2097152);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dp_slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct_key);
	__type(value, struct ct_entry);
	__uint(max_entries, 262144);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dp_ct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct affinity_key);
	__type(value, struct affinity_value);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dp_affinity SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct srcrange_key);
	__type(value, __u8);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dp_srcrange SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct cidr_key);
	__type(value, __u8);
	__uint(max_entries, 256);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dp_cidrs SEC(".maps");

/* Pods on this node: address -> the host side of the pod's veth. A translated packet for one
 * goes straight there, without a FIB lookup; user space writes it from the endpoints. */
struct local_key {
	__u32 addr[4]; /* network order, IPv4 in addr[0] */
	__u8 family;   /* DP_AF_* */
	__u8 pad[3];
};

struct local_value {
	__u32 ifindex;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct local_key);
	__type(value, struct local_value);
	__uint(max_entries, 4096);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dp_local SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct dp_config);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dp_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, STAT_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dp_stats SEC(".maps");

/*
 * Socket-level load balancing (sock.c): which frontend a socket connected to a backend asked
 * for, so that getpeername() and recvmsg() show the frontend. Keyed by the socket cookie
 * (never reused), so an entry of a closed socket is only dead weight until the LRU evicts it.
 * Only the programs read it; user space never does (no Rust mirror).
 */
struct sock_rev_key {
	__u64 cookie;
	__u32 addr[4]; /* backend address, network order, IPv4 in addr[0] */
	__be16 port;   /* backend port */
	__u8 family;   /* DP_AF_* */
	__u8 pad[5];
};

struct sock_rev_value {
	__u32 addr[4]; /* frontend address */
	__be16 port;   /* frontend port */
	__u16 pad;
	__u32 svc_id;
};


#ifdef DP_SOCK_MAPS
/* Only sock.c defines DP_SOCK_MAPS: this map is created (and pinned) only when socket-level
 * load balancing is on, which is when that object is loaded. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct sock_rev_key);
	__type(value, struct sock_rev_value);
	__uint(max_entries, 262144);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dp_sock_rev SEC(".maps");
#endif

/*
 * NetworkPolicy (policy.h). User space programs these from dataplane_core's compiler
 * (policy_tables::compile): peer sets are numbered in user space, and a new connection costs
 * one dp_pol_addr lookup for the local endpoint, one for the peer, one dp_pol_rules probe per
 * set the peer is in (at most POL_SETS_MAX) plus one for "any", and one dp_pol_blocks lookup
 * (then one more dp_pol_rules probe): independent of the number of policies.
 */

/* pol_addr.flags. */
enum pol_flag {
	POL_F_ISO_INGRESS = 1 << 0, /* a local endpoint a policy isolates for ingress */
	POL_F_ISO_EGRESS = 1 << 1,  /* ... for egress */
	POL_F_NODE = 1 << 2,        /* one of this node's addresses: always allowed with its pods */
	POL_F_TIERS_INGRESS = 1 << 3, /* a local endpoint with cluster or baseline entries for
				       * ingress (dp_pol_tiers) */
	POL_F_TIERS_EGRESS = 1 << 4,  /* ... for egress */
};

/* Directions in policy keys. */
enum pol_dir {
	POL_DIR_INGRESS = 0,
	POL_DIR_EGRESS = 1,
	/* In dp_pol_blocks' dir, with a POL_DIR_*: the prefix is a cluster or baseline
	 * `networks` prefix, its group's entries are in dp_pol_tiers. */
	POL_DIR_TIERS = 2,
};

/* Peer numbers in pol_rule_key.peer: POL_PEER_ANY (a rule without peers), a set number
 * (1 .. POL_PEER_BLOCK - 1, from user space, stable while the set exists), or
 * POL_PEER_BLOCK | n: the n-th allowed-ports group of the endpoint direction's ipBlocks
 * (dp_pol_blocks' value). */
enum pol_peer {
	POL_PEER_ANY = 0,
	POL_PEER_BLOCK = 0x80000000,
};

/* The most sets one address can be a member of (pol_addr.sets); the configured limit
 * (Capacities::policy_sets_per_address) is at most this. */
enum pol_limit {
	POL_SETS_MAX = 32,
};

/* dp_pol_ct flags: which checks the connection passed at this node's pod veths. The key is
 * the tuple as the pod sees it (before DNAT on its way out, after all translation on its way
 * in), so the two hooks of a pod find the same entries. */
enum pol_ct_flag {
	POLCT_EGRESS = 1 << 0,        /* key: a connection the source pod's egress allowed */
	POLCT_INGRESS = 1 << 1,       /* key: a connection the destination pod's ingress allowed */
	POLCT_REPLY_EGRESS = 1 << 2,  /* key: replies of a POLCT_EGRESS connection (may enter) */
	POLCT_REPLY_INGRESS = 1 << 3, /* key: replies of a POLCT_INGRESS connection (may leave) */
};

/* dp_pol_addr value (key: struct local_key): what policy knows about an address. */
struct pol_addr {
	__u32 ep_id;  /* the local endpoint's number; 0: not a local endpoint */
	__u8 flags;   /* POL_F_* */
	__u8 nsets;   /* sets[0 .. nsets) are valid */
	__u16 pad;
	__u32 sets[POL_SETS_MAX]; /* the numbers of the peer sets the address is a member of */
};

/*
 * dp_pol_rules key (LPM trie): (endpoint, peer, direction, protocol, port). Cilium's
 * port-range LPM (bpf/lib/policy.h): a rule of one peer for every protocol ends after `dir`
 * (72 bits), for every port of a protocol after `proto` (80 bits), a port range is one or more
 * prefixes of the port's bits (up to 96 bits). One lookup answers all of them: any match is
 * an allow.
 */
struct pol_rule_key {
	__u32 prefixlen;
	__u32 ep_id;
	__u32 peer;  /* POL_PEER_ANY, a set number, or POL_PEER_BLOCK | n */
	__u8 dir;    /* POL_DIR_* */
	__u8 proto;  /* IPPROTO_* */
	__be16 port; /* destination port (ICMP: 0) */
};

/* dp_pol_blocks key (LPM trie): (endpoint, direction, family, address prefix; IPv4 as
 * ::ffff:a.b.c.d), prefixlen = 64 + address bits. The family is in the fixed part: an IPv6
 * prefix (::/0 included) must never match an IPv4 peer, whose mapped form it may cover. The
 * value is the prefix's allowed-ports group (POL_PEER_BLOCK | n), or 0 when nothing is
 * allowed (an except). */
struct pol_block_key {
	__u32 prefixlen;
	__u32 ep_id;
	__u8 dir;
	__u8 family; /* DP_AF_* */
	__u8 pad[2];
	__u32 addr[4];
};

/* pol_tier.cluster and .baseline: what the entry of lowest order that matched does. */
enum pol_tier_action {
	POL_TIER_NONE = 0, /* no entry of this tier matches */
	POL_TIER_ALLOW = 1,
	POL_TIER_DENY = 2,
	POL_TIER_PASS = 3, /* cluster tier only: NetworkPolicy decides, then the baseline */
};

/*
 * dp_pol_tiers value (key: struct pol_rule_key, as dp_pol_rules; peers are set numbers, or
 * POL_PEER_BLOCK | n for the groups of dp_pol_blocks' POL_DIR_TIERS prefixes). For the
 * prefix of one peer, protocol and ports: per tier, the entry of lowest order among the
 * rules that cover the whole prefix (user space resolves overlapping port ranges so, as the
 * longest match is the only one an LPM lookup returns). A new connection takes, per tier,
 * the lowest order over the lookups of every peer number of the peer.
 */
struct pol_tier {
	__u32 cluster_order;  /* cluster tier: priority << 8 | rule index */
	__u32 baseline_order; /* baseline: rule index */
	__u8 cluster;         /* POL_TIER_* */
	__u8 baseline;        /* POL_TIER_NONE, _ALLOW or _DENY */
	__u8 pad[2];
};

/* dp_pol_ct value. */
struct pol_ct {
	__u64 last_seen_ns;
	__u32 flags;    /* POLCT_* */
	__u8 tcp_state; /* CT_TCP_* seen on this key: SYN, REPLY (a packet after the first),
			 * FIN_FWD (a FIN in this key's direction), RST */
	__u8 pad[3];
};

/* Addresses policy knows: local endpoints, members of the peer sets, node addresses. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct local_key);
	__type(value, struct pol_addr);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dp_pol_addr SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct pol_rule_key);
	__type(value, __u8);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dp_pol_rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct pol_block_key);
	__type(value, __u32);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dp_pol_blocks SEC(".maps");

/* Cluster policies and the baseline (policy.h, pol_tiers()). */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct pol_rule_key);
	__type(value, struct pol_tier);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dp_pol_tiers SEC(".maps");

/* Connections that crossed a local endpoint's veth (all of them, isolated or not, so that a
 * policy added later leaves established connections alone): the policy verdict's
 * conntrack. Separate from dp_ct, which holds translated connections only. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct_key);
	__type(value, struct pol_ct);
	__uint(max_entries, 262144);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dp_pol_ct SEC(".maps");

/*
 * Flow events (events.h): a record in the dp_events ring buffer for every drop and reject,
 * and, when dp_config asks (CFG_F_EV_*), for every new connection and every policy verdict
 * that allowed one. dataplane_core::FlowEvent is what user space makes of it (src/events.rs).
 */

/* flow_event.kind: above, with dp_config, whose ev_limits it indexes. */

/* flow_event.verdict. */
enum ev_verdict {
	EV_VERDICT_FORWARDED = 1,
	EV_VERDICT_TRANSLATED = 2,
	EV_VERDICT_DROPPED = 3,
	EV_VERDICT_REJECTED = 4,
	EV_VERDICT_POLICY_DENIED = 5,
};

/* flow_event.reason and dp_drops' second index: dataplane_core::DropReason::code(), stable
 * numbers (0: none). */
enum drop_reason {
	DR_NONE = 0,
	DR_NO_BACKEND = 1,
	DR_SOURCE_RANGE = 2,
	DR_POLICY = 3,
	DR_CONNTRACK_FULL = 4,
	DR_MAP_FULL = 5,
	DR_SNAT_EXHAUSTED = 6,
	DR_INVALID = 7,
	DR_MTU = 8,
	DR_UNSUPPORTED_PROTOCOL = 9,
	DR_UNALLOCATED = 10,
	DR_SPOOFED = 11,
	DR_FRAGMENT = 12,
	DR_SLOTS = 16,     /* dp_drops slots per observation point; a reason >= this counts in
			    * slot 0 */
	DR_UNKNOWN = 255,
};

/* flow_event.point and dp_drops' first index: where the packet was seen
 * (dataplane_core::ObservationPoint). */
enum ev_point {
	PT_FROM_POD = 1,    /* dp_from_pod: TC ingress of a pod's host-side veth */
	PT_TO_POD = 2,      /* dp_to_pod: its TC egress */
	PT_FROM_UPLINK = 3, /* dp_from_uplink */
	PT_TO_UPLINK = 4,   /* dp_to_uplink */
	PT_XDP = 5,         /* dp_xdp_uplink */
	PT_SOCKET = 6,      /* sock.c */
	PT_FROM_HOST = 7,   /* dp_to_lo: the host to its own addresses */
	PT_MAX = 8,
};

/* flow_event.direction. */
enum ev_direction {
	EV_DIR_UNKNOWN = 0,
	EV_DIR_ORIGINAL = 1, /* from the client that opened the connection */
	EV_DIR_REPLY = 2,
};

/* flow_event.flags. */
enum ev_flag {
	EV_F_TRANSLATED = 1 << 0, /* the nat_* fields hold the tuple after translation */
};

/*
 * The per-CPU token buckets of the events (dp_ev_limit), after Cilium's bpf/lib/ratelimit.h
 * (a bucket of at most bucket_size tokens, tokens_per_topup added every topup_interval_ns),
 * with the rate and the bucket size of each kind in dp_config.ev_limits: per CPU, so no
 * atomics and no contention; one per event kind (index EV_KIND_*) and, for drops, one per
 * reason (index EV_KIND_MAX + the reason's dp_drops slot), so that a flood of one reason does
 * not hide the rare drops of another. Over the limit an event is not written but counted in
 * `suppressed`, which the next written event of its bucket carries; `lost` counts events the
 * ring buffer had no room for.
 */
enum ev_limit_const {
	EV_RING_BYTES = 1 << 20, /* dp_events' default size (Capacities::events_ring_bytes) */
	EV_LIMIT_SLOTS = EV_KIND_MAX + DR_SLOTS, /* dp_ev_limit's size */
};

struct ev_limit {
	__u64 last_topup; /* CLOCK_MONOTONIC ns of the last top-up */
	__u64 tokens;
	__u64 suppressed; /* over the limit since the last written event */
	__u64 lost;       /* ring buffer full (never reset: user space reads the total) */
};

/* One record of dp_events. Addresses as in every key (network order, IPv4 in [0]). */
struct flow_event {
	__u64 ktime_ns;   /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u64 suppressed; /* events of this kind not written on this CPU since the last one */
	__u32 ifindex;    /* the interface the program ran on */
	__u32 svc_id;     /* svc_value.id of the frontend addressed, 0: none */
	__u32 backend_id; /* dp_backends index of the backend chosen, 0: none */
	__u8 kind;        /* EV_KIND_* */
	__u8 verdict;     /* EV_VERDICT_* */
	__u8 reason;      /* DR_* (0 unless a drop) */
	__u8 point;       /* PT_* */
	__u8 direction;   /* EV_DIR_* */
	__u8 family;      /* DP_AF_* */
	__u8 proto;       /* IPPROTO_* */
	__u8 tcp_flags;   /* the packet's TCP flags byte (TCP only) */
	__u8 flags;       /* EV_F_* */
	__u8 pad[3];
	__u32 saddr[4];   /* the tuple as the packet arrived */
	__u32 daddr[4];
	__be16 sport;
	__be16 dport;
	__be16 nat_sport; /* after translation (EV_F_TRANSLATED) */
	__be16 nat_dport;
	__u32 nat_saddr[4];
	__u32 nat_daddr[4];
};

/*
 * dp_names (user space only: no program reads it): who an id or an address is, for the
 * events' service and endpoint names. Written by user space on every sync; read by the event
 * decoder and the live inspector.
 */
enum name_kind {
	NAME_SERVICE = 1,  /* id: svc_value.id -> "namespace/name" of the service */
	NAME_ENDPOINT = 2, /* family + addr: a pod's address -> "namespace/pod" */
	NAME_NODE = 3,     /* the one key with nothing else set -> the node's name */
};

struct name_key {
	__u8 kind;   /* NAME_* */
	__u8 family; /* DP_AF_* (NAME_ENDPOINT), 0 otherwise */
	__u8 pad[2];
	__u32 id;    /* NAME_SERVICE */
	__u32 addr[4];
};

struct name_value {
	char name[120]; /* NUL-padded "namespace/name" */
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, EV_RING_BYTES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dp_events SEC(".maps");

/* Drops and rejects by observation point and reason: index point * DR_SLOTS + reason. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, PT_MAX * DR_SLOTS);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dp_drops SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct ev_limit);
	__uint(max_entries, EV_LIMIT_SLOTS);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dp_ev_limit SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct name_key);
	__type(value, struct name_value);
	__uint(max_entries, 131072);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dp_names SEC(".maps");

/*
 * Host endpoint policy (host_policy.h; written by src/host_policy.rs): the policies selecting
 * the uplink's host endpoint, compiled per stage and direction into a "set" of at most
 * HS_RULES rules numbered in evaluation order (policy order, then rule order). Each part of a
 * rule (source net, destination net, source port, destination port) is an LPM lookup in
 * dp_host_lpm that yields the mask of the set's rules that part allows; the first matching
 * rule is the lowest bit of the AND of the four masks. Everything a set holds is written
 * under one generation (gen), the next sync's under the other, and dp_host_cfg[0].gen flips
 * between them once the new one is complete (make before break).
 */
enum host_set {
	HS_UNTRACKED_IN = 0,  /* doNotTrack ingress */
	HS_UNTRACKED_OUT = 1, /* doNotTrack egress (the node's own packets) */
	HS_PREDNAT_IN = 2,    /* preDNAT ingress */
	HS_NORMAL_IN = 3,     /* normal ingress (after translation) */
	HS_NORMAL_OUT = 4,    /* normal egress (after translation) */
	HS_SETS = 8,          /* set slots per generation */
	HS_RULES = 64,        /* rules per set: the bits of a mask */
	HS_GEN_RULES = 512,   /* HS_SETS * HS_RULES: rule slots per generation */
	HS_RULE_SLOTS = 1024, /* dp_host_rules' and dp_host_drops' size: two generations */
};

/* host_key.kind */
enum host_kind {
	HK_SRC_NET = 0,  /* sub: DP_AF_*; data: the address (IPv4 in data[0]) */
	HK_DST_NET = 1,
	HK_SRC_PORT = 2, /* sub: IPPROTO_*; data[0]: the port (network order) */
	HK_DST_PORT = 3,
	HK_FAILSAFE = 4, /* set: 0 inbound, 1 outbound; sub: IPPROTO_*; data[0]: port */
};

/* dp_host_rules values */
enum host_action {
	HA_NONE = 0,
	HA_ALLOW = 1,
	HA_DENY = 2,
};

/* host_cfg.flags (entry 1 + gen); entry 0 holds only the active gen */
enum host_cfg_flag {
	HC_F_ON = 1 << 30,          /* the uplink has a host endpoint */
	HC_F_NORMAL = 1 << 20,      /* a normal policy selects it: connections are tracked */
	HC_F_DEF_IN = 1 << 16,      /* a normal policy applies to ingress: default deny */
	HC_F_DEF_IN_FWD = 1 << 17,  /* ... one with applyOnForward (forwarded traffic) */
	HC_F_DEF_OUT = 1 << 18,     /* a normal policy applies to egress */
	HC_F_DEF_OUT_FWD = 1 << 19, /* ... one with applyOnForward */
	/* every rule of HS_UNTRACKED_IN matches on source nets alone (no protocol, ports or
	 * destination): the source lookup's mask is the whole answer, and host_xdp() makes
	 * only that one (host_first_src()) */
	HC_F_SRC_ONLY_IN = 1 << 21,
	/* bit 1 << HS_*: the set has rules */
};

/* LPM key of dp_host_lpm: prefixlen counts gen, kind and set (24 bits), then sub (8) and
 * the data's bits. A prefix of 24 bits is every family / protocol; 32, every address / port
 * of one. The value is the mask of the set's rules (user space ORs into each prefix the
 * masks of the prefixes containing it); for HK_FAILSAFE, nonzero. */
struct host_key {
	__u32 prefixlen;
	__u8 gen;
	__u8 kind; /* HK_* */
	__u8 set;  /* HS_* */
	__u8 sub;
	__u32 data[4];
};

struct host_cfg {
	__u32 gen;     /* entry 0: the active generation (0 or 1) */
	__u32 flags;   /* entries 1 and 2 (1 + gen): HC_F_*, 1 << HS_* */
	__u64 fwd_in;  /* HS_NORMAL_IN's rules of applyOnForward policies (forwarded traffic) */
	__u64 fwd_out; /* HS_NORMAL_OUT's */
};

/* What host policy's first stages left for the normal stage after translation (per CPU:
 * the same program run reads it back). */
struct host_scratch {
	struct ct_key arrived; /* the packet's tuple before translation */
	__u32 own;             /* egress: sent by the node itself (its source a node address) */
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct host_key);
	__type(value, __u64);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dp_host_lpm SEC(".maps");

/* gen * HS_GEN_RULES + set * HS_RULES + rule -> HA_* */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, HS_RULE_SLOTS);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dp_host_rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct host_cfg);
	__uint(max_entries, 3);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dp_host_cfg SEC(".maps");

/* Connections host policy let through (normal stage): each one's tuples both ways, before
 * and after translation -> last seen (ns). Their later packets and replies skip the normal
 * policies (Calico's conntrack accepts established traffic before them). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct_key);
	__type(value, __u64);
	__uint(max_entries, 262144);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dp_host_ct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct host_scratch);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dp_host_scratch SEC(".maps");

/* Packets each rule dropped, per CPU, indexed as dp_host_rules. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, HS_RULE_SLOTS);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dp_host_drops SEC(".maps");

/*
 * L2 announcements (l2_responder.h; written by src/l2.rs): the LoadBalancer IPs and
 * ExternalIPs this node answers ARP requests and neighbour solicitations for on its uplink,
 * keyed by address and the uplink's ifindex as Cilium's cilium_l2_responder_v4/_v6
 * (bpf/lib/l2_responder.h) are, in one map for both families (the family in the key, as in
 * every key here). The value counts the answers sent (atomically: one entry, every CPU).
 */
enum l2_limit {
	L2_ADDRS = 4096, /* dp_l2_addrs' size (Cilium's L2_RESPONDER_MAP*_SIZE) */
};

struct l2_key {
	__u32 addr[4]; /* network order, IPv4 in addr[0] */
	__u32 ifindex; /* the uplink */
	__u8 family;   /* DP_AF_* */
	__u8 pad[3];
};

struct l2_value {
	__u64 responses; /* ARP replies and neighbour advertisements sent */
};

/*
 * dp_l2_cfg[0], written by user space: the uplink's MAC, and the liveness the responder
 * needs to answer at all (Cilium's agent liveness and l2_announcements_max_liveness):
 * bpf_ktime_get_ns() - liveness_ns must be at most max_liveness_ns. A node whose agent
 * stopped refreshing it goes quiet, so that the node another election picks is the only one
 * answering.
 */
struct l2_cfg {
	__u8 mac[6];
	__u8 pad[2];
	__u64 max_liveness_ns; /* 0: never answer */
	__u64 liveness_ns;     /* CLOCK_MONOTONIC (bpf_ktime_get_ns) of the last refresh */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct l2_key);
	__type(value, struct l2_value);
	__uint(max_entries, L2_ADDRS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dp_l2_addrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct l2_cfg);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dp_l2_cfg SEC(".maps");

/*
 * BTF holds an enum only when a type the object emits uses it. This struct names every
 * constant enum above and dp_consts_btf() takes it, so that each object's BTF carries them
 * for tests/btf_layout.rs. Nothing calls the function; `used` keeps it.
 */
struct dp_consts {
	enum dp_family family;
	enum svc_scope scope;
	enum svc_flag svc_flag;
	enum backend_flag backend_flag;
	enum ct_flag ct_flag;
	enum ct_tcp_state ct_tcp_state;
	enum config_flag config_flag;
	enum cidr_flag cidr_flag;
	enum dp_stat stat;
	enum pol_flag pol_flag;
	enum pol_dir pol_dir;
	enum pol_peer pol_peer;
	enum pol_limit pol_limit;
	enum pol_ct_flag pol_ct_flag;
	enum pol_tier_action pol_tier_action;
	enum ev_kind ev_kind;
	enum ev_verdict ev_verdict;
	enum drop_reason drop_reason;
	enum ev_point ev_point;
	enum ev_direction ev_direction;
	enum ev_flag ev_flag;
	enum ev_limit_const ev_limit_const;
	enum name_kind name_kind;
	enum svc_limit svc_limit;
	enum host_set host_set;
	enum host_kind host_kind;
	enum host_action host_action;
	enum host_cfg_flag host_cfg_flag;
	enum l2_limit l2_limit;
	/* and the event record, which only user space reads */
	struct flow_event flow_event; /* by value: a pointer would carry only its name */
};

static __attribute__((used, noinline)) int dp_consts_btf(struct dp_consts *c)
{
	return 0;
}

#endif
