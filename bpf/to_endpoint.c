/* to_endpoint.c -- tc EGRESS on a pod veth's node side: packets entering the pod.
 *
 * Enforces the pod's INGRESS policy for local and cross-node sources. The source identity
 * is the proxy mark's (SO_MARK of the proxy's upstream sockets, see l7g_codes.h) when
 * present, else the ipcache's. A proxied connection is accepted when the entry is ALLOW or
 * REDIRECT (the proxy already decided L7); an unmarked packet that meets a REDIRECT entry
 * bypassed the proxy and is dropped. Conntrack lets established flows and replies through.
 * Maps: l7g_config_v1, l7g_endpoints_v1 (key skb->ifindex), l7g_ipcache_v1, l7g_policy_v1,
 * l7g_ct_v1, l7g_drops_v1, l7g_stats_v1, l7g_events_v1.
 * Returns TC_ACT_OK or TC_ACT_SHOT (counted and reported like from_endpoint).
 */
int to_endpoint(struct __sk_buff *skb)
{
    struct l7g_pkt p = {};
    struct l7g_ctx c = {.ifindex = skb->ifindex, .hook = L7G_HOOK_TO_ENDPOINT,
                        .direction = L7G_DIR_INGRESS};
    struct l7g_endpoint *ep = l7g_endpoints_v1.lookup(&c.ifindex);
    struct l7g_config *cfg = l7g_config();
    __u8 gen = cfg ? (cfg->policy_gen & 1) : 0;
    int enforced = ep && (ep->enforce[gen] & L7G_EP_ENFORCE_INGRESS);
    if (ep) {
        c.endpoint_id = ep->endpoint_id;
        c.dst_identity = ep->identity;
    }
    int rc = l7g_parse(skb, &p);
    if (rc == L7G_PARSE_ARP)
        return TC_ACT_OK;
    if (rc == L7G_PARSE_OTHER_L3)
        return enforced ? l7g_drop(skb, &p, &c, L7G_DROP_UNSUPPORTED_L3_PROTOCOL) : TC_ACT_OK;
    if (rc < 0)
        return enforced ? l7g_drop(skb, &p, &c, rc) : TC_ACT_OK;
    if (!ep)
        return l7g_drop(skb, &p, &c, L7G_DROP_NO_ENDPOINT);
    __u32 mark = skb->mark;
    int from_proxy = l7g_is_proxy_mark(mark);
    struct l7g_ipcache_val peer = {};
    c.src_identity = from_proxy ? l7g_mark_identity(mark) : l7g_identity_of(p.saddr, &peer);
    if (p.is_later_fragment) {
        if (enforced)
            return l7g_drop(skb, &p, &c, L7G_DROP_IP_FRAGMENTATION_NOT_SUPPORTED);
        l7g_count(L7G_STAT_FORWARDED);
        return TC_ACT_OK;
    }
    if (l7g_ct_find(&p, L7G_DIR_INGRESS, L7G_DIR_EGRESS)) {
        l7g_count(L7G_STAT_FORWARDED);
        return TC_ACT_OK;
    }

    /* a new flow: the pod's ingress policy */
    int action = l7g_policy_lookup(gen, L7G_DIR_INGRESS, c.endpoint_id, c.src_identity, &p,
                                   &c.rule_index);
    if (action == L7G_ACT_DENY)
        return l7g_drop(skb, &p, &c, L7G_DROP_POLICY_DENY);
    if (action == L7G_ACT_NONE && enforced)
        return l7g_drop(skb, &p, &c, l7g_default_deny_reason(&p));
    if (l7g_is_redirect(action) && !from_proxy)
        return l7g_drop(skb, &p, &c, L7G_DROP_POLICY_DENIED);
    rc = l7g_ct_create(&p, &c, from_proxy ? L7G_CT_FROM_PROXY : 0, action);
    if (rc < 0)
        return l7g_drop(skb, &p, &c, rc);
    l7g_count(L7G_STAT_FORWARDED);
    l7g_emit(skb, &p, &c, L7G_EVENT_TRACE, L7G_VERDICT_FORWARDED);
    return TC_ACT_OK;
}
