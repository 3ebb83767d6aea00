/* l7g_maps.h -- every map key/value and event layout of the datapath (ABI).
 *
 * Mirrored by ctypes structures in redirect/structs.py; the _Static_assert sizes below are
 * the same literals as the Python asserts, and tests/unit/test_bpf_layout.py parses them.
 * Changing a layout means bumping the map's _vN suffix (a pinned map with another layout
 * cannot be adopted by bcc's BPF_TABLE_PINNED). All maps except the ring buffer are pinned
 * under L7G_PIN_DIR (-D flag set by redirect/loader.py) so that they, and the policy they
 * hold, survive agent restarts.
 */
#pragma once

#ifndef L7G_PIN_DIR
#error "L7G_PIN_DIR (the bpffs directory of this node's maps) must be given with -D"
#endif
#ifndef L7G_CT_MAX
#define L7G_CT_MAX 65536 /* LRU: old flows are evicted first; Cilium's default is 512k */
#endif
#ifndef L7G_POLICY_MAX
#define L7G_POLICY_MAX 65536 /* both generations of every endpoint's entries, as prefixes */
#endif
#ifndef L7G_IPCACHE_MAX
#define L7G_IPCACHE_MAX 16384 /* pods + nodes + CIDR prefixes of the cluster */
#endif
#ifndef L7G_FQDN_MAX
#define L7G_FQDN_MAX 16384 /* (endpoint, IP) pairs learned from DNS answers */
#endif
#ifndef L7G_ENDPOINTS_MAX
#define L7G_ENDPOINTS_MAX 1024 /* pods per node; Kubernetes' default max-pods is 110 */
#endif
#ifndef L7G_NAMES_MAX
#define L7G_NAMES_MAX 16384 /* rule ids and FQDN names kept for `bpf ... list` */
#endif
#ifndef L7G_RINGBUF_PAGES
#define L7G_RINGBUF_PAGES 64 /* 256 KiB of events between two polls */
#endif
#if L7G_CT_MAX < 1024 || L7G_POLICY_MAX < 64
#error "l7g map sizes below 1024 CT / 64 policy entries are not a usable configuration"
#endif

#define L7G_FQDN_PORTS 4    /* port ranges per (endpoint, IP) in the FQDN allowlist */
#define L7G_NAME_BYTES 120  /* rule ids / names, NUL padded, truncated */
#define L7G_POLICY_FIXED_BITS 80 /* gen..pad of l7g_policy_key, before the port prefix */

/* l7g_config_v1[0]: node-wide settings written by the agent. */
struct l7g_config {
    __u8 policy_gen;     /* which generation of the policy map is live (0/1) */
    __u8 pad0;
    __u16 http_port;     /* TCP proxy port (host order); 0 = proxy not ready */
    __u16 dns_port;      /* UDP+TCP DNS proxy port (host order); 0 = not ready */
    __u16 pad1;
    __be32 proxy_addr;   /* listener address for the socket lookup; 0 = packet's daddr */
    __u32 pad2;
};
_Static_assert(sizeof(struct l7g_config) == 16, "l7g_config layout is ABI");

/* l7g_endpoints_v1: node-side veth ifindex -> the pod behind it. */
struct l7g_endpoint {
    __u16 endpoint_id;
    __u8 enforce[2];     /* per policy generation: L7G_EP_ENFORCE_{INGRESS,EGRESS} bits */
    __u32 identity;
    __be32 ip;
    __u32 pad;
};
_Static_assert(sizeof(struct l7g_endpoint) == 16, "l7g_endpoint layout is ABI");

/* l7g_ipcache_v1 (LPM trie): IPv4 prefix -> identity. */
struct l7g_ipcache_key {
    __u32 prefixlen;
    __be32 addr;
};
_Static_assert(sizeof(struct l7g_ipcache_key) == 8, "l7g_ipcache_key layout is ABI");

struct l7g_ipcache_val {
    __u32 identity;
    __u16 endpoint_id;   /* local endpoints only */
    __u8 flags;          /* L7G_IPC_* */
    __u8 pad;
};
_Static_assert(sizeof(struct l7g_ipcache_val) == 8, "l7g_ipcache_val layout is ABI");

/* l7g_policy_v1 (LPM trie): the port is the only prefix part; everything before it is
 * always fully specified (prefixlen = L7G_POLICY_FIXED_BITS + port prefix bits). */
struct l7g_policy_key {
    __u32 prefixlen;
    __u8 gen;
    __u8 direction;      /* L7G_DIR_* */
    __u16 endpoint_id;
    __u32 identity;      /* peer identity */
    __u8 proto;          /* IPPROTO_*, or L7G_PROTO_ANY */
    __u8 pad;
    __be16 dport;
};
_Static_assert(sizeof(struct l7g_policy_key) == 16, "l7g_policy_key layout is ABI");

struct l7g_policy_val {
    __u8 action;         /* L7G_ACT_* */
    __u8 flags;          /* L7G_POL_* */
    __u16 pad;
    __u32 rule_index;    /* key of l7g_rule_names_v1 (bit 31 = generation) */
};
_Static_assert(sizeof(struct l7g_policy_val) == 8, "l7g_policy_val layout is ABI");

/* l7g_fqdn_v1: (endpoint, IP from an allowed DNS answer) -> ports it may reach. */
struct l7g_fqdn_key {
    __u16 endpoint_id;
    __u16 pad;
    __be32 addr;
};
_Static_assert(sizeof(struct l7g_fqdn_key) == 8, "l7g_fqdn_key layout is ABI");

struct l7g_fqdn_port {
    __u8 proto;          /* IPPROTO_* or L7G_PROTO_ANY */
    __u8 action;         /* L7G_ACT_ALLOW or L7G_ACT_REDIRECT_* */
    __u16 pad;
    __u16 port_lo;       /* host order, inclusive */
    __u16 port_hi;
};
_Static_assert(sizeof(struct l7g_fqdn_port) == 8, "l7g_fqdn_port layout is ABI");

struct l7g_fqdn_val {
    __u64 expiry_ns;     /* CLOCK_BOOTTIME ns (bpf_ktime_get_boot_ns); 0 = never */
    __u32 name_id;       /* key of l7g_fqdn_names_v1 */
    __u8 nports;
    __u8 pad[3];
    struct l7g_fqdn_port ports[L7G_FQDN_PORTS];
};
_Static_assert(sizeof(struct l7g_fqdn_val) == 48, "l7g_fqdn_val layout is ABI");

/* l7g_ct_v1 (LRU): one entry per flow and per enforcing side. `direction` is the policy
 * direction that accepted the flow (EGRESS at from_endpoint, INGRESS at to_endpoint and
 * from_netdev); the tuple is the first packet's, replies match it reversed. */
struct l7g_ct_key {
    __be32 saddr;
    __be32 daddr;
    __be16 sport;        /* ICMP echo: identifier as sport (request) / dport (reply) */
    __be16 dport;
    __u8 proto;
    __u8 direction;
    __u16 pad;
};
_Static_assert(sizeof(struct l7g_ct_key) == 16, "l7g_ct_key layout is ABI");

struct l7g_ct_val {
    __u64 created_ns;    /* bpf_ktime_get_boot_ns */
    __u64 last_seen_ns;
    __u32 src_identity;
    __u32 dst_identity;
    __u32 rule_index;
    __u16 endpoint_id;
    __u8 flags;          /* L7G_CT_* */
    __u8 action;         /* L7G_ACT_* that decided (0 = not enforced, no entry) */
    __u64 packets;       /* approximate: updated without atomics */
};
_Static_assert(sizeof(struct l7g_ct_val) == 40, "l7g_ct_val layout is ABI");

/* l7g_rule_names_v1 / l7g_fqdn_names_v1: u32 -> NUL-padded string, for humans only. */
struct l7g_name {
    char name[L7G_NAME_BYTES];
};
_Static_assert(sizeof(struct l7g_name) == 120, "l7g_name layout is ABI");

/* l7g_events_v1 (ring buffer): drops and new-flow traces. */
struct l7g_event {
    __u64 time_ns;       /* bpf_ktime_get_boot_ns */
    __u32 ifindex;
    __u16 endpoint_id;
    __u8 type;           /* L7G_EVENT_* */
    __u8 direction;      /* L7G_DIR_* */
    __s32 code;          /* drop: L7G_DROP_* (negative); trace: L7G_VERDICT_* */
    __be32 saddr;
    __be32 daddr;
    __be16 sport;
    __be16 dport;
    __u8 proto;
    __u8 tcp_flags;
    __u8 hook;           /* L7G_HOOK_* */
    __u8 flags;          /* L7G_EVF_* */
    __u32 src_identity;
    __u32 dst_identity;
    __u32 rule_index;    /* policy rule index, or FQDN name id with L7G_EVF_FQDN_NAME */
    __u32 mark;
    __u32 pad;
};
_Static_assert(sizeof(struct l7g_event) == 56, "l7g_event layout is ABI");

#define L7G_PIN(name) L7G_PIN_DIR "/" #name

BPF_TABLE_PINNED7("array", __u32, struct l7g_config, l7g_config_v1, 1,
                  L7G_PIN(l7g_config_v1), 0);
BPF_TABLE_PINNED7("hash", __u32, struct l7g_endpoint, l7g_endpoints_v1, L7G_ENDPOINTS_MAX,
                  L7G_PIN(l7g_endpoints_v1), 0);
BPF_TABLE_PINNED7("lpm_trie", struct l7g_ipcache_key, struct l7g_ipcache_val, l7g_ipcache_v1,
                  L7G_IPCACHE_MAX, L7G_PIN(l7g_ipcache_v1), BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED7("lpm_trie", struct l7g_policy_key, struct l7g_policy_val, l7g_policy_v1,
                  L7G_POLICY_MAX, L7G_PIN(l7g_policy_v1), BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED7("hash", struct l7g_fqdn_key, struct l7g_fqdn_val, l7g_fqdn_v1,
                  L7G_FQDN_MAX, L7G_PIN(l7g_fqdn_v1), 0);
BPF_TABLE_PINNED7("lru_hash", struct l7g_ct_key, struct l7g_ct_val, l7g_ct_v1, L7G_CT_MAX,
                  L7G_PIN(l7g_ct_v1), 0);
BPF_TABLE_PINNED7("percpu_array", __u32, __u64, l7g_drops_v1, L7G_DROP_REASON_MAX,
                  L7G_PIN(l7g_drops_v1), 0);
BPF_TABLE_PINNED7("percpu_array", __u32, __u64, l7g_stats_v1, L7G_STAT_MAX,
                  L7G_PIN(l7g_stats_v1), 0);
BPF_TABLE_PINNED7("hash", __u32, struct l7g_name, l7g_rule_names_v1, L7G_NAMES_MAX,
                  L7G_PIN(l7g_rule_names_v1), 0);
BPF_TABLE_PINNED7("hash", __u32, struct l7g_name, l7g_fqdn_names_v1, L7G_NAMES_MAX,
                  L7G_PIN(l7g_fqdn_names_v1), 0);
/* Not pinned: each loader reads its own ring; the filters it attaches write to it. */
BPF_RINGBUF_OUTPUT(l7g_events_v1, L7G_RINGBUF_PAGES);
