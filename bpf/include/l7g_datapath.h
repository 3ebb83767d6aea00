/* l7g_datapath.h -- code shared by the three tc programs: parsing, identity, policy,
 * conntrack, proxy redirect, events and counters.
 *
 * bcc rewrites map method calls (`m.lookup(&k)`) only in the main source, so the loader
 * (redirect/loader.py) concatenates codes, maps, this file and the programs into one text;
 * nothing here may rely on being compiled on its own. Every function is always_inline.
 */
#pragma once

#define L7G_HTONS(x) ((__be16)__builtin_bswap16((__u16)(x)))
#define L7G_NTOHS(x) ((__u16)__builtin_bswap16((__u16)(x)))
#define L7G_ETH_HLEN 14
#define L7G_TCP_SYN 0x02
#define L7G_TCP_ACK 0x10
#define L7G_ICMP_ECHO_REPLY 0
#define L7G_ICMP_ECHO_REQUEST 8

/* parse results besides 0 (IPv4 parsed) and a negative drop reason */
#define L7G_PARSE_ARP 1
#define L7G_PARSE_OTHER_L3 2

struct l7g_pkt {
    __be32 saddr;
    __be32 daddr;
    __be16 sport;
    __be16 dport;
    __u8 proto;
    __u8 tcp_flags;
    __u8 is_later_fragment; /* fragment offset != 0: no L4 header in this packet */
    __u8 has_ports;         /* TCP, UDP, SCTP */
};

static __always_inline int l7g_parse(struct __sk_buff *skb, struct l7g_pkt *p)
{
    struct ethhdr eth;
    struct iphdr ip;
    if (bpf_skb_load_bytes(skb, 0, &eth, sizeof(eth)) < 0)
        return L7G_DROP_CT_TRUNCATED_OR_INVALID_HEADER;
    if (eth.h_proto == L7G_HTONS(ETH_P_ARP))
        return L7G_PARSE_ARP;
    if (eth.h_proto != L7G_HTONS(ETH_P_IP))
        return L7G_PARSE_OTHER_L3;
    if (bpf_skb_load_bytes(skb, L7G_ETH_HLEN, &ip, sizeof(ip)) < 0)
        return L7G_DROP_CT_TRUNCATED_OR_INVALID_HEADER;
    if (ip.version != 4 || ip.ihl < 5)
        return L7G_DROP_CT_TRUNCATED_OR_INVALID_HEADER;
    __u32 ihl_bytes = ip.ihl * 4;
    if (L7G_NTOHS(ip.tot_len) < ihl_bytes || skb->len < L7G_ETH_HLEN + ihl_bytes)
        return L7G_DROP_CT_TRUNCATED_OR_INVALID_HEADER;
    p->saddr = ip.saddr;
    p->daddr = ip.daddr;
    p->proto = ip.protocol;
    p->sport = 0;
    p->dport = 0;
    p->tcp_flags = 0;
    p->has_ports = 0;
    p->is_later_fragment = (L7G_NTOHS(ip.frag_off) & 0x1fff) != 0;
    if (p->is_later_fragment)
        return 0;
    /* ihl > 5: options are skipped, never parsed; L4 starts after them (RFC 791 §3.1) */
    __u32 l4 = L7G_ETH_HLEN + ihl_bytes;
    if (ip.protocol == IPPROTO_TCP) {
        __u8 th[14];
        if (bpf_skb_load_bytes(skb, l4, th, sizeof(th)) < 0)
            return L7G_DROP_CT_TRUNCATED_OR_INVALID_HEADER;
        __builtin_memcpy(&p->sport, &th[0], 2);
        __builtin_memcpy(&p->dport, &th[2], 2);
        p->tcp_flags = th[13];
        p->has_ports = 1;
    } else if (ip.protocol == IPPROTO_UDP || ip.protocol == IPPROTO_SCTP) {
        __u8 uh[8];
        if (bpf_skb_load_bytes(skb, l4, uh, sizeof(uh)) < 0)
            return L7G_DROP_CT_TRUNCATED_OR_INVALID_HEADER;
        __builtin_memcpy(&p->sport, &uh[0], 2);
        __builtin_memcpy(&p->dport, &uh[2], 2);
        p->has_ports = 1;
    } else if (ip.protocol == IPPROTO_ICMP) {
        __u8 ih[8];
        if (bpf_skb_load_bytes(skb, l4, ih, sizeof(ih)) < 0)
            return L7G_DROP_CT_TRUNCATED_OR_INVALID_HEADER;
        /* echo: the identifier plays the port, request sport / reply dport, so that a
         * reply's reversed tuple finds the request's CT entry */
        if (ih[0] == L7G_ICMP_ECHO_REQUEST)
            __builtin_memcpy(&p->sport, &ih[4], 2);
        else if (ih[0] == L7G_ICMP_ECHO_REPLY)
            __builtin_memcpy(&p->dport, &ih[4], 2);
    }
    return 0;
}

static __always_inline struct l7g_config *l7g_config(void)
{
    __u32 zero = 0;
    return l7g_config_v1.lookup(&zero);
}

static __always_inline void l7g_count_drop(int reason)
{
    __u32 idx = (__u32)(-reason);
    if (idx >= L7G_DROP_REASON_MAX)
        idx = 0;
    __u64 *c = l7g_drops_v1.lookup(&idx);
    if (c)
        *c += 1;
}

static __always_inline void l7g_count(__u32 slot)
{
    __u64 *c = l7g_stats_v1.lookup(&slot);
    if (c)
        *c += 1;
}

struct l7g_ctx {
    __u32 ifindex;
    __u16 endpoint_id;
    __u8 hook;
    __u8 direction;
    __u32 src_identity;
    __u32 dst_identity;
    __u32 rule_index;
    __u8 ev_flags;
};

static __always_inline void l7g_emit(struct __sk_buff *skb, struct l7g_pkt *p,
                                     struct l7g_ctx *c, __u8 type, int code)
{
    struct l7g_event *e = l7g_events_v1.ringbuf_reserve(sizeof(struct l7g_event));
    if (!e) {
        /* bcc's ring buffer reader cannot see losses: count them ourselves */
        l7g_count(L7G_STAT_EVENTS_LOST);
        return;
    }
    e->time_ns = bpf_ktime_get_boot_ns();
    e->ifindex = c->ifindex;
    e->endpoint_id = c->endpoint_id;
    e->type = type;
    e->direction = c->direction;
    e->code = code;
    e->saddr = p->saddr;
    e->daddr = p->daddr;
    e->sport = p->sport;
    e->dport = p->dport;
    e->proto = p->proto;
    e->tcp_flags = p->tcp_flags;
    e->hook = c->hook;
    e->flags = c->ev_flags;
    e->src_identity = c->src_identity;
    e->dst_identity = c->dst_identity;
    e->rule_index = c->rule_index;
    e->mark = skb->mark;
    e->pad = 0;
    l7g_events_v1.ringbuf_submit(e, 0);
}

static __always_inline int l7g_drop(struct __sk_buff *skb, struct l7g_pkt *p,
                                    struct l7g_ctx *c, int reason)
{
    l7g_count_drop(reason);
    l7g_emit(skb, p, c, L7G_EVENT_DROP, reason);
    return TC_ACT_SHOT;
}

static __always_inline __u32 l7g_identity_of(__be32 addr, struct l7g_ipcache_val *out)
{
    struct l7g_ipcache_key k = {.prefixlen = 32, .addr = addr};
    struct l7g_ipcache_val *v = l7g_ipcache_v1.lookup(&k);
    if (!v) {
        out->identity = L7G_ID_WORLD;
        out->endpoint_id = 0;
        out->flags = 0;
        return L7G_ID_WORLD;
    }
    *out = *v;
    return v->identity;
}

/* mark set by the proxy on its upstream sockets (SO_MARK); 0 when not from the proxy */
static __always_inline int l7g_is_proxy_mark(__u32 mark)
{
    return (mark & L7G_MARK_MAGIC_MASK) == L7G_MARK_PROXY_UPSTREAM;
}

static __always_inline __u32 l7g_mark_identity(__u32 mark)
{
    return ((mark >> L7G_MARK_IDENTITY_SHIFT) & L7G_MARK_IDENTITY_LOW) | ((mark & 1) << 24);
}

/* Policy-map lookup for one endpoint and direction: exact proto, then ANY. Ports count
 * only for TCP/UDP/SCTP; ICMP (and other protocols) match only entries covering every
 * port, i.e. rules without an L4 restriction. Returns L7G_ACT_* (NONE if no entry). */
static __always_inline __u8 l7g_policy_lookup(__u8 gen, __u8 dir, __u16 ep, __u32 peer,
                                              struct l7g_pkt *p, __u32 *rule)
{
    struct l7g_policy_key k = {};
    k.prefixlen = L7G_POLICY_FIXED_BITS + 16;
    k.gen = gen;
    k.direction = dir;
    k.endpoint_id = ep;
    k.identity = peer;
    k.proto = p->proto;
    k.dport = p->has_ports ? p->dport : 0;
    struct l7g_policy_val *v = l7g_policy_v1.lookup(&k);
    if (v && (p->has_ports || (v->flags & L7G_POL_ALL_PORTS))) {
        *rule = v->rule_index;
        return v->action;
    }
    if (p->has_ports || p->proto == IPPROTO_ICMP) {
        k.proto = L7G_PROTO_ANY;
        v = l7g_policy_v1.lookup(&k);
        if (v && (p->has_ports || (v->flags & L7G_POL_ALL_PORTS))) {
            *rule = v->rule_index;
            return v->action;
        }
    }
    return L7G_ACT_NONE;
}

/* toFQDNs allowlist, egress only, for world/CIDR peers without a policy-map entry.
 * Returns L7G_ACT_* or L7G_DROP_FQDN_EXPIRED (name id in c->rule_index). */
static __always_inline int l7g_fqdn_lookup(__u16 ep, struct l7g_pkt *p, struct l7g_ctx *c)
{
    struct l7g_fqdn_key k = {.endpoint_id = ep, .pad = 0, .addr = p->daddr};
    struct l7g_fqdn_val *v = l7g_fqdn_v1.lookup(&k);
    if (!v || !p->has_ports)
        return L7G_ACT_NONE;
    __u16 dport = L7G_NTOHS(p->dport);
    int hit = L7G_ACT_NONE;
#pragma unroll
    for (int i = 0; i < L7G_FQDN_PORTS; i++) {
        if (i >= v->nports)
            break;
        struct l7g_fqdn_port *fp = &v->ports[i];
        if (fp->proto != L7G_PROTO_ANY && fp->proto != p->proto)
            continue;
        if (dport < fp->port_lo || dport > fp->port_hi)
            continue;
        hit = fp->action;
        break;
    }
    if (hit == L7G_ACT_NONE)
        return L7G_ACT_NONE;
    c->rule_index = v->name_id;
    c->ev_flags |= L7G_EVF_FQDN_NAME;
    if (v->expiry_ns && bpf_ktime_get_boot_ns() > v->expiry_ns)
        return L7G_DROP_FQDN_EXPIRED;
    return hit;
}

static __always_inline void l7g_ct_key_of(struct l7g_pkt *p, __u8 dir, int reversed,
                                          struct l7g_ct_key *k)
{
    k->saddr = reversed ? p->daddr : p->saddr;
    k->daddr = reversed ? p->saddr : p->daddr;
    k->sport = reversed ? p->dport : p->sport;
    k->dport = reversed ? p->sport : p->dport;
    k->proto = p->proto;
    k->direction = dir;
    k->pad = 0;
}

/* Existing flow seen from `dir`'s side: its own packets (forward) or the replies to a flow
 * accepted by the opposite side (`reply_dir`). Returns 0 (unknown), the forward entry's
 * flags + 1, or 1 for a reply (a reply is never redirected because of its flow's flags). */
static __always_inline int l7g_ct_find(struct l7g_pkt *p, __u8 dir, __u8 reply_dir)
{
    struct l7g_ct_key k = {};
    int reply = 0;
    l7g_ct_key_of(p, dir, 0, &k);
    struct l7g_ct_val *v = l7g_ct_v1.lookup(&k);
    if (!v) {
        l7g_ct_key_of(p, reply_dir, 1, &k);
        v = l7g_ct_v1.lookup(&k);
        reply = 1;
    }
    if (!v)
        return 0;
    v->last_seen_ns = bpf_ktime_get_boot_ns();
    v->packets += 1;
    return reply ? 1 : (int)v->flags + 1;
}

static __always_inline int l7g_ct_create(struct l7g_pkt *p, struct l7g_ctx *c, __u8 flags,
                                         __u8 action)
{
    struct l7g_ct_key k = {};
    l7g_ct_key_of(p, c->direction, 0, &k);
    __u64 now = bpf_ktime_get_boot_ns();
    struct l7g_ct_val v = {
        .created_ns = now,
        .last_seen_ns = now,
        .src_identity = c->src_identity,
        .dst_identity = c->dst_identity,
        .rule_index = c->rule_index,
        .endpoint_id = c->endpoint_id,
        .flags = flags,
        .action = action,
        .packets = 1,
    };
    if (l7g_ct_v1.update(&k, &v) < 0)
        return L7G_DROP_CT_MAP_INSERTION_FAILED;
    return 0;
}

/* Steer a packet to an established socket of this netns that owns its exact tuple: the
 * proxy's accepted connections and its transparent upstream sockets (replies addressed to
 * the pod IP they are bound to). Returns 1 if assigned, 0 if no such socket. */
static __always_inline int l7g_steer_established(struct __sk_buff *skb, struct l7g_pkt *p)
{
    struct bpf_sock_tuple t = {};
    t.ipv4.saddr = p->saddr;
    t.ipv4.daddr = p->daddr;
    t.ipv4.sport = p->sport;
    t.ipv4.dport = p->dport;
    struct bpf_sock *sk;
    if (p->proto == IPPROTO_TCP) {
        sk = bpf_skc_lookup_tcp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
        if (!sk)
            return 0;
        if (sk->state == BPF_TCP_LISTEN) {
            /* a node listener on this port: not ours to steer, policy decides */
            bpf_sk_release(sk);
            return 0;
        }
    } else if (p->proto == IPPROTO_UDP) {
        sk = bpf_sk_lookup_udp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
        if (!sk)
            return 0;
        /* only connected sockets bound to this exact address (the proxy's upstream
         * sockets), never a wildcard-bound node service that happens to share the port */
        if (sk->src_ip4 != p->daddr || sk->dst_ip4 != p->saddr || sk->dst_port != p->sport) {
            bpf_sk_release(sk);
            return 0;
        }
    } else {
        return 0;
    }
    long err = bpf_sk_assign(skb, sk, 0);
    bpf_sk_release(sk);
    if (err < 0)
        return 0;
    skb->mark = L7G_MARK_TPROXY;
    return 1;
}

/* Hand a new (or redirected) flow's packet to the proxy listener for `action`.
 * Returns 0 or a negative drop reason (fail closed: never pass it on). */
static __always_inline int l7g_to_proxy(struct __sk_buff *skb, struct l7g_pkt *p, __u8 action)
{
    struct l7g_config *cfg = l7g_config();
    if (!cfg)
        return L7G_DROP_PROXY_NOT_READY;
    __u16 port = action == L7G_ACT_REDIRECT_DNS ? cfg->dns_port : cfg->http_port;
    if (port == 0)
        return L7G_DROP_PROXY_NOT_READY;
    struct bpf_sock_tuple t = {};
    t.ipv4.saddr = p->saddr;
    t.ipv4.sport = p->sport;
    t.ipv4.daddr = cfg->proxy_addr ? cfg->proxy_addr : p->daddr;
    t.ipv4.dport = L7G_HTONS(port);
    struct bpf_sock *sk;
    if (p->proto == IPPROTO_TCP)
        sk = bpf_skc_lookup_tcp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
    else if (p->proto == IPPROTO_UDP && action == L7G_ACT_REDIRECT_DNS)
        sk = bpf_sk_lookup_udp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
    else
        return L7G_DROP_SOCKET_LOOKUP_FAILED; /* L7 redirect of a protocol we cannot proxy */
    if (!sk)
        return L7G_DROP_SOCKET_LOOKUP_FAILED;
    long err = bpf_sk_assign(skb, sk, 0);
    bpf_sk_release(sk);
    if (err < 0)
        return L7G_DROP_SOCKET_ASSIGN_FAILED;
    skb->mark = L7G_MARK_TPROXY;
    return 0;
}

static __always_inline int l7g_is_redirect(__u8 action)
{
    return action == L7G_ACT_REDIRECT_HTTP || action == L7G_ACT_REDIRECT_DNS;
}

/* What to do with an unmatched packet on an enforced side. */
static __always_inline int l7g_default_deny_reason(struct l7g_pkt *p)
{
    if (p->has_ports || p->proto == IPPROTO_ICMP)
        return L7G_DROP_POLICY_DENIED;
    return L7G_DROP_UNKNOWN_L4_PROTOCOL;
}
