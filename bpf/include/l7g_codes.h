/* l7g_codes.h -- every number the datapath shares with Python (ABI).
 *
 * Mirrored by policy/types.py (DropReason, L4Action, Direction) and redirect/marks.py,
 * redirect/events.py; tests/unit/test_bpf_codes.py parses this file and compares.
 * Never renumber: retire a code as L7G_UNUSED_<n>.
 */
#pragma once

/* --- drop reasons: negative Hubble flow.proto DropReason values (Cilium's DROP_*) ------- */
#define L7G_DROP_INVALID_SOURCE_IP              -132
#define L7G_DROP_POLICY_DENIED                  -133
#define L7G_DROP_INVALID_PACKET_DROPPED         -134
#define L7G_DROP_CT_TRUNCATED_OR_INVALID_HEADER -135
#define L7G_DROP_UNSUPPORTED_L3_PROTOCOL        -139
#define L7G_DROP_UNKNOWN_L4_PROTOCOL            -142
#define L7G_DROP_CT_MAP_INSERTION_FAILED        -155
#define L7G_DROP_IP_FRAGMENTATION_NOT_SUPPORTED -157
#define L7G_DROP_SOCKET_LOOKUP_FAILED           -178
#define L7G_DROP_SOCKET_ASSIGN_FAILED           -179
#define L7G_DROP_POLICY_DENY                    -181
#define L7G_DROP_NO_ENDPOINT                    -240
#define L7G_DROP_FQDN_EXPIRED                   -241
#define L7G_DROP_PROXY_NOT_READY                -242
/* counters are indexed by -reason; keep every reason below this */
#define L7G_DROP_REASON_MAX 256

/* --- policy-map actions (policy.types.L4Action) ------------------------------------------ */
#define L7G_ACT_NONE          0 /* no entry matched */
#define L7G_ACT_ALLOW         1
#define L7G_ACT_DENY          2
#define L7G_ACT_REDIRECT_HTTP 3
#define L7G_ACT_REDIRECT_DNS  4

/* --- policy directions (policy.types.Direction; key field of policy and CT maps) --------- */
#define L7G_DIR_INGRESS 0
#define L7G_DIR_EGRESS  1

/* --- wildcard protocol (policy.types.Proto.ANY = TCP, UDP and SCTP) ----------------------- */
#define L7G_PROTO_ANY 0

/* --- event types and trace verdicts (redirect/events.py) --------------------------------- */
#define L7G_EVENT_DROP  1
#define L7G_EVENT_TRACE 2
#define L7G_VERDICT_FORWARDED  1
#define L7G_VERDICT_REDIRECTED 2

/* --- hooks (attach points; event field `hook`) -------------------------------------------- */
#define L7G_HOOK_FROM_ENDPOINT 1
#define L7G_HOOK_TO_ENDPOINT   2
#define L7G_HOOK_FROM_NETDEV   3

/* --- skb marks (redirect/marks.py) -------------------------------------------------------
 * Low byte = magic, so that the tproxy ip rule (fwmark 0xa0/0xff) never matches a packet
 * that the proxy sends upstream (low byte 0xb0 / 0xb1): otherwise the proxy's own
 * traffic would be routed to the local table.
 *   tproxy:          0x000000a0                    set by BPF before bpf_sk_assign
 *   proxy upstream:  (identity & 0xffffff) << 8 | 0xb0 | (identity >> 24 & 1)
 *                    set by the proxy with SO_MARK; bit 0 carries identity bit 24
 *                    (CIDR identities are 1<<24 | n, policy.types.FIRST_CIDR_IDENTITY).
 */
#define L7G_MARK_MAGIC_MASK      0xfe
#define L7G_MARK_TPROXY          0xa0
#define L7G_MARK_TPROXY_MASK     0xff
#define L7G_MARK_PROXY_UPSTREAM  0xb0
#define L7G_MARK_IDENTITY_SHIFT  8
#define L7G_MARK_IDENTITY_LOW    0xffffff
#define L7G_TPROXY_ROUTE_TABLE   2004 /* ip rule fwmark 0xa0/0xff lookup 2004 */
#define L7G_TPROXY_RULE_PRIORITY 90   /* before the main table (32766) */

/* --- flags ------------------------------------------------------------------------------- */
#define L7G_IPC_LOCAL_ENDPOINT 0x01 /* ipcache: the prefix is a pod of this node */
#define L7G_POL_ALL_PORTS      0x01 /* policy value: the entry covers every port */
#define L7G_CT_REDIRECTED      0x01 /* ct: follow-up packets go to the proxy */
#define L7G_CT_FROM_PROXY      0x02 /* ct: opened by the proxy (mark identity) */
#define L7G_CT_DNS_PROXY       0x04 /* ct: redirected to the DNS proxy port */
#define L7G_EP_ENFORCE_INGRESS 0x01 /* endpoint: enforce[gen] bits */
#define L7G_EP_ENFORCE_EGRESS  0x02
#define L7G_EVF_FQDN_NAME      0x01 /* event: rule_index is an FQDN name id */

/* --- stats slots (l7g_stats_v1, per-CPU) ------------------------------------------------- */
#define L7G_STAT_FORWARDED   0
#define L7G_STAT_REDIRECTED  1
#define L7G_STAT_EVENTS_LOST 2
#define L7G_STAT_MAX         4

/* --- reserved identities (policy.types.ReservedIdentity) --------------------------------- */
#define L7G_ID_HOST        1
#define L7G_ID_WORLD       2
#define L7G_ID_FIRST_CIDR  (1 << 24)
