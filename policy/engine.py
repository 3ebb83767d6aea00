"""Decisions the datapath, the proxies and `policy trace` ask for (pure; no clock, no logging).

- `decide_l4`: the L3/L4 outcome of a new flow on one side (deny > allow > default).
- `decide_http`: one request on a redirected port. The proxy handles one direction per
  redirect (egress of the local source pod or ingress of the local destination pod).
  Allowed iff no deny rule matches and some allowing rule for that peer/port either has no
  L7 rules (wildcard L7, §6) or has an HTTP rule matching the request. The per
  (endpoint, direction, port, peer) union of rules is built once per snapshot (cached);
  `l7_plan` returns that plan and `decide_http_plan(plan, meta)` decides on it, reading only
  the request's method, path, host and the headers named in `plan.http_headers`.
- `decide_dns`: one query to a DNS server on a redirected port, same logic with names.
- `trace`: both sides of a flow, L3/L4/L7, as a JSON-ready dict.
When a direction is not enforced (every rule selecting the endpoint there has
`enableDefaultDeny: false`), restrictive L7 rules do not deny (current Cilium main appends
an allow-all L7 rule; README-decisions.md conflict 1).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from policy.compile import ALLOW_LOCALHOST, DEFAULT_ALLOW, DEFAULT_DENY, FlowMatch, PolicySnapshot
from policy.dnsname import NameMatcher, is_valid_name, normalize_name
from policy.model import HttpRule
from policy.types import (
    Decision,
    Direction,
    DropReason,
    Endpoint,
    HttpRequestMeta,
    HttpRequestView,
    L4Action,
    Peer,
    Proto,
    Verdict,
)

ALLOWED = Decision.FORWARDED
MALFORMED_QNAME = "malformed-qname"


def _deny_verdict(fm: FlowMatch) -> Verdict | None:
    if fm.deny is not None:
        return Verdict(Decision.DENIED, fm.deny.rule_id, DropReason.POLICY_DENY)
    if not fm.allows and not fm.peer_is_host and fm.enforced:
        return Verdict(Decision.DENIED, DEFAULT_DENY, DropReason.POLICY_DENIED)
    return None


def _flow(snapshot: PolicySnapshot, direction: Direction, local: Endpoint, peer: Peer,
          proto: Proto, dport: int) -> FlowMatch:
    return snapshot.match_flow(local.identity_labels(), direction, peer.identity.labels,
                               peer.fqdns, proto, dport)


def decide_l4(snapshot: PolicySnapshot, direction: Direction, local: Endpoint, peer: Peer,
              proto: Proto, dport: int) -> tuple[L4Action | None, str]:
    """(action, rule id); action None = dropped by default deny."""
    return _flow(snapshot, direction, local, peer, proto, dport).l4()


@dataclass(frozen=True, slots=True)
class L7Plan:
    """Precomputed answer for one (endpoint, direction, port, peer)."""

    fixed: Verdict | None  # deny, or allow-any: no per-request work
    http: tuple[tuple[str, tuple[HttpRule, ...]], ...] = ()
    dns: tuple[tuple[str, NameMatcher], ...] = ()
    # The header names any of `http`'s rules looks at: with method, path and host, the
    # only parts of a request `decide_http_plan` reads (callers key verdict memos on them).
    http_headers: frozenset[str] = frozenset()


def _plan(fm: FlowMatch) -> L7Plan:
    denied = _deny_verdict(fm)
    if denied is not None:
        return L7Plan(denied)
    if not fm.allows:  # host (allow-localhost) or a direction without default deny
        which = ALLOW_LOCALHOST if fm.peer_is_host and fm.enforced else DEFAULT_ALLOW
        return L7Plan(Verdict(ALLOWED, which))
    for rule, port_rules in fm.allows:
        if not port_rules or any(not pr.has_l7 for pr in port_rules):
            return L7Plan(Verdict(ALLOWED, rule.rule_id))  # wildcard L7 for this peer (§6)
    if not fm.enforced:
        return L7Plan(Verdict(ALLOWED, DEFAULT_ALLOW))  # conflict 1: follow current main
    http = tuple((r.rule_id, tuple(h for pr in prs if pr.http for h in pr.http))
                 for r, prs in fm.allows if any(pr.http is not None for pr in prs))
    dns = tuple((r.rule_id, pr.dns) for r, prs in fm.allows for pr in prs if pr.dns is not None)
    headers = frozenset(name for _, rules in http for rule in rules for name in rule.header_names)
    return L7Plan(None, http, dns, headers)


def l7_plan(snapshot: PolicySnapshot, direction: Direction, local: Endpoint, peer: Peer,
            proto: Proto, dport: int) -> L7Plan:
    """The L7 plan of one (endpoint, direction, peer, proto, port), cached per snapshot."""
    # the identity of `local` is a function of its namespace and labels (cheap to hash)
    key = (local.namespace, local.labels, direction, dport, proto, peer.identity.labels,
           peer.fqdns)
    cache = snapshot.cache("l7plan")
    plan = cache.get(key)
    if plan is None:
        plan = cache[key] = _plan(_flow(snapshot, direction, local, peer, proto, dport))
    return plan  # type: ignore[return-value]


def decide_http(snapshot: PolicySnapshot, direction: Direction, local: Endpoint, peer: Peer,
                dport: int, meta: HttpRequestView) -> Verdict:
    return decide_http_plan(l7_plan(snapshot, direction, local, peer, Proto.TCP, dport), meta)


def decide_http_plan(plan: L7Plan, meta: HttpRequestView) -> Verdict:
    """`decide_http` once the plan is known (the proxy keeps plans per connection pair).
    Reads meta's method, path, host and only the headers named in `plan.http_headers`."""
    if plan.fixed is not None:
        return plan.fixed
    for rule_id, rules in plan.http:
        if not rules:
            return Verdict(ALLOWED, rule_id)  # `http: []`: no constraint
        for rule in rules:
            if rule.matches(meta):
                return Verdict(ALLOWED, rule_id)
    deciding = plan.http[0][0] if plan.http else DEFAULT_DENY
    return Verdict(Decision.DENIED, deciding, DropReason.POLICY_DENIED)


def decide_dns(snapshot: PolicySnapshot, local: Endpoint, server: Peer, dport: int, qname: str,
               proto: Proto = Proto.UDP) -> Verdict:
    """One DNS query of `local` (egress) to `server`; qname is normalized here."""
    plan = l7_plan(snapshot, Direction.EGRESS, local, server, proto, dport)
    if plan.fixed is not None:
        return plan.fixed
    name = normalize_name(qname)
    if not is_valid_name(name):
        # README-decisions.md conflict 6: Cilium's `*` regex would let `*.a.io` match the
        # malformed `.a.io.`; no such name comes off the wire, so we refuse it outright.
        return Verdict(Decision.DENIED, MALFORMED_QNAME, DropReason.POLICY_DENIED)
    for rule_id, matcher in plan.dns:
        if matcher.matches(name):
            return Verdict(ALLOWED, rule_id)
    deciding = plan.dns[0][0] if plan.dns else DEFAULT_DENY
    return Verdict(Decision.DENIED, deciding, DropReason.POLICY_DENIED)


# --- trace ----------------------------------------------------------------------------------


def _peer_json(peer: Peer) -> dict[str, Any]:
    out: dict[str, Any] = {"identity": peer.identity.id, "labels": peer.identity.label_strings()}
    if peer.endpoint is not None:
        out["pod"] = peer.endpoint.ref
    if peer.ip is not None:
        out["ip"] = str(peer.ip)
    if peer.fqdns:
        out["fqdns"] = sorted(peer.fqdns)
    return out


def _side(snapshot: PolicySnapshot, direction: Direction, local: Endpoint | None, peer: Peer,
          dport: int, proto: Proto, http: HttpRequestMeta | None, dns_query: str | None
          ) -> dict[str, Any]:
    if local is None:
        what = "source" if direction is Direction.EGRESS else "destination"
        return {"enforced": False, "verdict": "allowed", "rule": None, "rule_ref": None,
                "l4": None, "l7": None,
                "note": f"the {what} is not a pod: no {direction.value} policy applies"}
    fm = _flow(snapshot, direction, local, peer, proto, dport)
    action, rule_id = fm.l4()
    side: dict[str, Any] = {
        "endpoint": local.ref, "enforced": fm.enforced,
        "verdict": "denied" if action in (None, L4Action.DENY) else "allowed",
        "rule": rule_id, "l4": action.name if action is not None else "DROP", "l7": None,
    }
    if action is None or action is L4Action.DENY:
        side["reason"] = (DropReason.POLICY_DENY if action else DropReason.POLICY_DENIED).name
        side["matched_allow_rules"] = [r.rule_id for r, _ in fm.allows]
        side["rule_ref"] = rule_ref(rule_id)
        return side
    side["matched_allow_rules"] = [r.rule_id for r, _ in fm.allows]
    side["l7"] = _l7(snapshot, direction, local, peer, dport, proto, action, http, dns_query)
    l7 = side["l7"]
    if l7 is not None and l7.get("verdict") == "denied":
        side.update(verdict="denied", rule=l7["rule"], reason=l7["reason"])
    elif l7 is not None and l7.get("verdict") == "allowed":
        side["rule"] = l7["rule"]
    side["rule_ref"] = rule_ref(side["rule"])
    return side


_RULE_ID = re.compile(r"(?:(?P<ns>[^/:]+)/)?(?P<name>[^:]+):(?:specs\[(?P<spec>\d+)\]\.)?"
                      r"(?P<section>ingress|egress|ingressDeny|egressDeny)\[(?P<index>\d+)\]")


def rule_ref(rule_id: str | None) -> dict[str, Any] | None:
    """`default/p:specs[1].egress[2]` -> namespace, policy, spec, section, index (None if the
    decision was not made by a policy rule, e.g. `default-deny`)."""
    m = _RULE_ID.fullmatch(rule_id or "")
    if m is None:
        return None
    return {"namespace": m["ns"], "policy": m["name"],
            "spec": int(m["spec"]) if m["spec"] else None, "section": m["section"],
            "index": int(m["index"])}


def _l7(snapshot: PolicySnapshot, direction: Direction, local: Endpoint, peer: Peer,
        dport: int, proto: Proto, action: L4Action, http: HttpRequestMeta | None,
        dns_query: str | None) -> dict[str, Any] | None:
    if action is L4Action.REDIRECT_HTTP:
        if http is None or proto is not Proto.TCP:
            return {"type": "http", "evaluated": False,
                    "note": "port is proxied: give --http-method/--http-path to decide a request"}
        v = decide_http(snapshot, direction, local, peer, dport, http)
        return _verdict_json("http", v)
    if action is L4Action.REDIRECT_DNS:
        if dns_query is None:
            return {"type": "dns", "evaluated": False,
                    "note": "port is proxied by the DNS proxy: give --dns-query to decide a query"}
        v = decide_dns(snapshot, local, peer, dport, dns_query, proto)
        return _verdict_json("dns", v)
    if http is not None or dns_query is not None:
        return {"type": "none", "evaluated": False,
                "note": "not proxied: no L7 rule applies to this peer and port, L4 decides"}
    return None


def _verdict_json(kind: str, v: Verdict) -> dict[str, Any]:
    return {"type": kind, "evaluated": True,
            "verdict": "allowed" if v.is_allowed else "denied", "rule": v.rule_id,
            "reason": v.reason.name if v.reason is not None else None}


def trace(snapshot: PolicySnapshot, src: Peer, dst: Peer, dport: int, proto: Proto,
          http: HttpRequestMeta | None, dns_query: str | None) -> dict[str, Any]:
    """Both ends of a flow: the source pod's egress, then the destination pod's ingress."""
    egress = _side(snapshot, Direction.EGRESS, src.endpoint, dst, dport, proto, http, dns_query)
    ingress = _side(snapshot, Direction.INGRESS, dst.endpoint, src, dport, proto, http,
                    None)
    if egress["verdict"] == "denied":
        verdict, decided = "denied", {"direction": "egress", "rule": egress["rule"]}
    elif ingress["verdict"] == "denied":
        verdict, decided = "denied", {"direction": "ingress", "rule": ingress["rule"]}
    else:
        verdict, decided = "allowed", {"rules": [r for r in (egress["rule"], ingress["rule"])
                                                 if r is not None]}
    return {
        "verdict": verdict, "decided_by": decided,
        "source": _peer_json(src), "destination": _peer_json(dst),
        "dport": dport, "protocol": proto.name,
        "egress": egress, "ingress": ingress, "revision": snapshot.revision,
    }
