/* from_netdev.c -- tc INGRESS on the node's uplink: packets from other nodes.
 *
 * Steers (1) replies to the proxy's own transparent upstream sockets back to them, and
 * (2) new flows to a local pod whose INGRESS entry for the source identity is a REDIRECT
 * into the proxy (fail closed: dropped if no proxy socket). Everything else passes; L3/L4
 * ingress enforcement happens at to_endpoint. Packets carrying the proxy's mark are never
 * redirected. Non-IPv4 passes (the uplink also carries the node's own traffic).
 * Maps: l7g_config_v1, l7g_ipcache_v1, l7g_policy_v1, l7g_ct_v1, l7g_drops_v1,
 * l7g_stats_v1, l7g_events_v1. Returns TC_ACT_OK or TC_ACT_SHOT.
 */
int from_netdev(struct __sk_buff *skb)
{
    struct l7g_pkt p = {};
    struct l7g_ctx c = {.ifindex = skb->ifindex, .hook = L7G_HOOK_FROM_NETDEV,
                        .direction = L7G_DIR_INGRESS};
    if (l7g_parse(skb, &p) != 0 || p.is_later_fragment)
        return TC_ACT_OK;
    if (l7g_is_proxy_mark(skb->mark))
        return TC_ACT_OK;
    if (l7g_steer_established(skb, &p)) {
        l7g_count(L7G_STAT_REDIRECTED);
        return TC_ACT_OK;
    }
    struct l7g_ipcache_val dst = {};
    c.dst_identity = l7g_identity_of(p.daddr, &dst);
    if (!(dst.flags & L7G_IPC_LOCAL_ENDPOINT) || !p.has_ports)
        return TC_ACT_OK;
    c.endpoint_id = dst.endpoint_id;
    int found = l7g_ct_find(&p, L7G_DIR_INGRESS, L7G_DIR_EGRESS);
    if (found) {
        if (!((found - 1) & L7G_CT_REDIRECTED))
            return TC_ACT_OK;
        __u8 act = ((found - 1) & L7G_CT_DNS_PROXY) ? L7G_ACT_REDIRECT_DNS
                                                     : L7G_ACT_REDIRECT_HTTP;
        int rc = l7g_to_proxy(skb, &p, act);
        if (rc < 0)
            return l7g_drop(skb, &p, &c, rc);
        l7g_count(L7G_STAT_REDIRECTED);
        return TC_ACT_OK;
    }
    struct l7g_config *cfg = l7g_config();
    __u8 gen = cfg ? (cfg->policy_gen & 1) : 0;
    struct l7g_ipcache_val src = {};
    c.src_identity = l7g_identity_of(p.saddr, &src);
    __u8 action = l7g_policy_lookup(gen, L7G_DIR_INGRESS, c.endpoint_id, c.src_identity, &p,
                                    &c.rule_index);
    if (!l7g_is_redirect(action))
        return TC_ACT_OK;
    int rc = l7g_to_proxy(skb, &p, action);
    if (rc < 0)
        return l7g_drop(skb, &p, &c, rc);
    rc = l7g_ct_create(&p, &c, L7G_CT_REDIRECTED |
                       (action == L7G_ACT_REDIRECT_DNS ? L7G_CT_DNS_PROXY : 0), action);
    if (rc < 0)
        return l7g_drop(skb, &p, &c, rc);
    l7g_count(L7G_STAT_REDIRECTED);
    l7g_emit(skb, &p, &c, L7G_EVENT_TRACE, L7G_VERDICT_REDIRECTED);
    return TC_ACT_OK;
}
