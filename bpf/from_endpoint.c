/* from_endpoint.c -- tc INGRESS on a pod veth's node side: packets leaving the pod.
 *
 * Enforces the pod's EGRESS policy (policy map generation from l7g_config_v1, then the
 * toFQDNs allowlist for world/CIDR peers), steers L7 ports (its own egress redirects, and
 * the ingress redirects of a destination pod on this node) into the proxy with
 * bpf_sk_assign, and steers replies addressed to the proxy's transparent sockets back to
 * them. Maps: l7g_config_v1, l7g_endpoints_v1 (key skb->ifindex), l7g_ipcache_v1,
 * l7g_policy_v1, l7g_fqdn_v1, l7g_ct_v1, l7g_drops_v1, l7g_stats_v1, l7g_events_v1.
 * Returns TC_ACT_OK (pass, possibly assigned to a proxy socket) or TC_ACT_SHOT (dropped,
 * counted under -reason in l7g_drops_v1 and reported on l7g_events_v1).
 */
int from_endpoint(struct __sk_buff *skb)
{
    struct l7g_pkt p = {};
    struct l7g_ctx c = {.ifindex = skb->ifindex, .hook = L7G_HOOK_FROM_ENDPOINT,
                        .direction = L7G_DIR_EGRESS};
    struct l7g_endpoint *ep = l7g_endpoints_v1.lookup(&c.ifindex);
    struct l7g_config *cfg = l7g_config();
    __u8 gen = cfg ? (cfg->policy_gen & 1) : 0;
    int enforced = ep && (ep->enforce[gen] & L7G_EP_ENFORCE_EGRESS);
    if (ep) {
        c.endpoint_id = ep->endpoint_id;
        c.src_identity = ep->identity;
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
    if (p.saddr != ep->ip)
        return l7g_drop(skb, &p, &c, L7G_DROP_INVALID_SOURCE_IP);
    if (p.is_later_fragment) {
        if (enforced)
            return l7g_drop(skb, &p, &c, L7G_DROP_IP_FRAGMENTATION_NOT_SUPPORTED);
        l7g_count(L7G_STAT_FORWARDED);
        return TC_ACT_OK;
    }
    if (l7g_steer_established(skb, &p)) {
        l7g_count(L7G_STAT_REDIRECTED);
        return TC_ACT_OK;
    }
    int found = l7g_ct_find(&p, L7G_DIR_EGRESS, L7G_DIR_INGRESS);
    if (found) {
        if ((found - 1) & L7G_CT_REDIRECTED) {
            /* the proxy's connection is gone (or not yet accepted): listener, or drop */
            __u8 act = ((found - 1) & L7G_CT_DNS_PROXY) ? L7G_ACT_REDIRECT_DNS
                                                         : L7G_ACT_REDIRECT_HTTP;
            rc = l7g_to_proxy(skb, &p, act);
            if (rc < 0)
                return l7g_drop(skb, &p, &c, rc);
            l7g_count(L7G_STAT_REDIRECTED);
            return TC_ACT_OK;
        }
        l7g_count(L7G_STAT_FORWARDED);
        return TC_ACT_OK;
    }

    /* a new flow: the pod's egress policy */
    struct l7g_ipcache_val peer = {};
    c.dst_identity = l7g_identity_of(p.daddr, &peer);
    int action = l7g_policy_lookup(gen, L7G_DIR_EGRESS, c.endpoint_id, c.dst_identity, &p,
                                   &c.rule_index);
    if (action == L7G_ACT_NONE &&
        (c.dst_identity == L7G_ID_WORLD || c.dst_identity >= L7G_ID_FIRST_CIDR)) {
        action = l7g_fqdn_lookup(c.endpoint_id, &p, &c);
        if (action < 0)
            return l7g_drop(skb, &p, &c, action);
    }
    if (action == L7G_ACT_DENY)
        return l7g_drop(skb, &p, &c, L7G_DROP_POLICY_DENY);
    if (action == L7G_ACT_NONE && enforced)
        return l7g_drop(skb, &p, &c, l7g_default_deny_reason(&p));
    if (!l7g_is_redirect(action) && (peer.flags & L7G_IPC_LOCAL_ENDPOINT)) {
        /* a pod of this node with an L7 ingress rule: only here can we reach the proxy
         * (bpf_sk_assign works at tc ingress only); L3/L4 is still checked at to_endpoint */
        __u32 in_rule = 0;
        __u8 in_act = l7g_policy_lookup(gen, L7G_DIR_INGRESS, peer.endpoint_id,
                                        c.src_identity, &p, &in_rule);
        if (l7g_is_redirect(in_act)) {
            action = in_act;
            c.rule_index = in_rule;
        }
    }
    __u8 ct_flags = 0;
    if (l7g_is_redirect(action) && p.has_ports) {
        rc = l7g_to_proxy(skb, &p, action);
        if (rc < 0)
            return l7g_drop(skb, &p, &c, rc);
        ct_flags = L7G_CT_REDIRECTED |
                   (action == L7G_ACT_REDIRECT_DNS ? L7G_CT_DNS_PROXY : 0);
    }
    rc = l7g_ct_create(&p, &c, ct_flags, action);
    if (rc < 0)
        return l7g_drop(skb, &p, &c, rc);
    if (ct_flags) {
        l7g_count(L7G_STAT_REDIRECTED);
        l7g_emit(skb, &p, &c, L7G_EVENT_TRACE, L7G_VERDICT_REDIRECTED);
    } else {
        l7g_count(L7G_STAT_FORWARDED);
        l7g_emit(skb, &p, &c, L7G_EVENT_TRACE, L7G_VERDICT_FORWARDED);
    }
    return TC_ACT_OK;
}
