"""The agent's view of the world, built whole and swapped whole (no I/O, no BPF here).

A `ClusterState` bundles one compiled policy snapshot with one endpoints file for one node:
the identity table, the local endpoints, and everything the datapath and the proxies ask
(policy-map entries per endpoint, enforcement, FQDN selectors, peers by IP). A reload
builds a new one; if that fails the old one stays (STYLE.md §3). The proxies call the
`decide_*` methods, which evaluate the snapshot of the state current at that moment.
HTTP decisions are memoized per state on exact keys (HttpDecider per connection pair, then
the verdict per request part the rules read), so a memo hit is what evaluation would give.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.endpoints import ClusterEndpoints, PodEntry
from policy.compile import FqdnRule, PolicySnapshot
from policy.engine import L7Plan, decide_dns, decide_http_plan, decide_l4, l7_plan
from policy.identity import IdentityTable, NodeInfo, build_identities
from policy.types import (
    DatapathEntry,
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

NO_REDIRECT_RULE = "no-l7-redirect"  # traffic reached a proxy that no rule redirects: deny
PLAN_CACHE_MAX = 65536  # distinct (src, dst, port, names) tuples remembered per state
DNS_VERDICT_CACHE_MAX = 16384  # (pod, server, port, proto, name) verdicts per state; names are
# attacker-chosen (up to 255 chars), so this stays a few MB when a pod sprays random names
HttpPlan = tuple[tuple[Direction, Endpoint, Peer], ...]
HTTP_VERDICT_CACHE_MAX = 16384  # (connection pair, request) verdicts per state
# Requests whose method, path, host and rule-read header values exceed this many characters
# are decided without the memo: they are attacker-chosen, and this keeps a full memo at a
# few MB (16384 x ~0.5 KB); the usual request is far shorter (the README's `/api/users`).
HTTP_VERDICT_KEY_MAX = 512


class HttpDecider:
    """How the requests of one (source, destination, port, destination names) are decided:
    the local sides of `http_plan` with their L7 plans (engine.l7_plan), in order; `fixed`
    when no request can change the answer (no side redirects, or the plans' fixed verdicts
    settle it); `headers`, the only header names any side's rules read."""

    __slots__ = ("fixed", "headers", "sides")

    def __init__(self, sides: tuple[tuple[Direction, L7Plan], ...],
                 fixed: tuple[Verdict, Direction] | None) -> None:
        self.sides = sides
        self.headers = frozenset().union(*(plan.http_headers for _, plan in sides))
        if fixed is None:
            for _, plan in sides:
                if plan.fixed is None:
                    break  # this side's rules look at the request
                if not plan.fixed.is_allowed:
                    fixed = self.decide(_ANY_REQUEST)  # denied here whatever the request
                    break
            else:
                fixed = self.decide(_ANY_REQUEST)  # every side allows any request
        self.fixed = fixed

    def decide(self, meta: HttpRequestView) -> tuple[Verdict, Direction]:
        """Every side must allow; the first that denies decides (egress before ingress)."""
        verdict, direction = None, Direction.EGRESS
        for direction, plan in self.sides:
            verdict = decide_http_plan(plan, meta)
            if not verdict.is_allowed:
                return verdict, direction
        if verdict is None:
            raise ValueError("an HttpDecider without sides needs its fixed verdict")
        return verdict, direction


_ANY_REQUEST = HttpRequestMeta("GET", "/", "")  # for plans that read no part of a request
_PROTO_TCP, _PROTO_UDP = Proto.TCP, Proto.UDP  # hoisted: enum attribute lookups are slow


@dataclass(frozen=True)
class ClusterState:
    node: str
    snapshot: PolicySnapshot
    cluster: ClusterEndpoints
    identities: IdentityTable
    local: tuple[PodEntry, ...]
    pods_by_ip: dict[ipaddress.IPv4Address, Endpoint] = field(repr=False)
    generation: int = 0
    # Per-state memos of how a connection's requests are decided (HttpDecider) and of the
    # verdicts for (decider, method, path, host, headers the rules read): exact keys of
    # everything decide_http_plan reads, so a hit is the answer a fresh evaluation gives.
    _http_deciders: dict[tuple[str, str, int, frozenset[str]], HttpDecider] = field(
        default_factory=dict, repr=False, compare=False)
    _http_verdicts: dict[tuple[object, ...], tuple[Verdict, Direction]] = field(
        default_factory=dict, repr=False, compare=False)
    # Per-state memo of which sides of a connection the proxy must decide, and for whom;
    # the state is immutable, so entries never go stale (a reload builds a new state).
    _plans: dict[tuple[str, str, int, frozenset[str]], HttpPlan] = field(
        default_factory=dict, repr=False, compare=False)
    _by_str: dict[str, Endpoint | None] = field(default_factory=dict, repr=False,
                                                compare=False)
    memo: dict[object, object] = field(default_factory=dict, repr=False, compare=False)
    # DNS verdicts by (pod, server, port, protocol, name as asked): pods ask the same few
    # names over and over, and a decision (plan lookup, name normalization and validation,
    # pattern match) costs more than the rest of the proxy's policy stage.
    _dns_verdicts: dict[tuple[str, str, int, Proto, str], Verdict] = field(
        default_factory=dict, repr=False, compare=False)

    # --- construction ---------------------------------------------------------------------

    @classmethod
    def build(cls, node: str, snapshot: PolicySnapshot, cluster: ClusterEndpoints,
              generation: int = 0) -> ClusterState:
        nodes = [NodeInfo(n.name, n.ip) for n in cluster.nodes]
        identities = build_identities(snapshot, cluster.endpoints, nodes, node)
        return cls(node=node, snapshot=snapshot, cluster=cluster, identities=identities,
                   local=tuple(cluster.local_pods(node)),
                   pods_by_ip={p.endpoint.ip: p.endpoint for p in cluster.pods},
                   generation=generation)

    # --- what the datapath needs --------------------------------------------------------------

    def policy_entries(self) -> dict[int, list[DatapathEntry]]:
        """Policy-map entries per local endpoint (computed once per state: the expansion over
        every identity is the costly part of a reload)."""
        found = self.memo.get("policy_entries")
        if isinstance(found, dict):
            return found
        out: dict[int, list[DatapathEntry]] = {}
        for pod in self.local:
            ep = pod.endpoint
            out[ep.endpoint_id] = [
                *self.snapshot.datapath_entries(ep, Direction.INGRESS, self.identities),
                *self.snapshot.datapath_entries(ep, Direction.EGRESS, self.identities),
            ]
        self.memo["policy_entries"] = out
        return out

    def enforcement(self) -> dict[int, tuple[bool, bool]]:
        return {p.endpoint.endpoint_id: (self.snapshot.is_enforced(p.endpoint, Direction.INGRESS),
                                         self.snapshot.is_enforced(p.endpoint, Direction.EGRESS))
                for p in self.local}

    def fqdn_selectors(self, endpoint_id: int) -> list[FqdnRule]:
        """The endpoint's toFQDNs rules (memoized: asked on every DNS answer)."""
        key = ("fqdn_selectors", endpoint_id)
        found = self.memo.get(key)
        if isinstance(found, list):
            return found
        ep = self.local_endpoint_by_id(endpoint_id)
        rules = [] if ep is None else self.snapshot.fqdn_selectors(ep)
        self.memo[key] = rules
        return rules

    # --- lookups ------------------------------------------------------------------------------

    def local_endpoint(self, ip: ipaddress.IPv4Address) -> Endpoint | None:
        ep = self.pods_by_ip.get(ip)
        return ep if ep is not None and ep.node == self.node else None

    def local_endpoint_by_id(self, endpoint_id: int) -> Endpoint | None:
        for p in self.local:
            if p.endpoint.endpoint_id == endpoint_id:
                return p.endpoint
        return None

    def endpoint_by_ip(self, ip: ipaddress.IPv4Address) -> Endpoint | None:
        return self.pods_by_ip.get(ip)

    def peer(self, ip: ipaddress.IPv4Address, fqdns: frozenset[str] = frozenset()) -> Peer:
        return Peer(identity=self.identities.identity_for_ip(ip), ip=ip,
                    endpoint=self.pods_by_ip.get(ip), fqdns=fqdns)

    # --- decisions the proxies ask for ----------------------------------------------------------

    def local_endpoint_str(self, ip: str) -> Endpoint | None:
        """`local_endpoint` for a string address, memoized (the proxies' hot path)."""
        try:
            return self._by_str[ip]
        except KeyError:
            ep = self.local_endpoint(ipaddress.IPv4Address(ip))
            if len(self._by_str) < PLAN_CACHE_MAX:
                self._by_str[ip] = ep
            return ep

    def http_plan(self, src_ip: str, dst_ip: str, dport: int,
                  dst_fqdns: frozenset[str] = frozenset()) -> HttpPlan:
        """The local sides whose policy redirects this connection to the HTTP proxy.

        Egress of a local source first, then ingress of a local destination; both must
        allow. Memoized per state.
        """
        key = (src_ip, dst_ip, dport, dst_fqdns)
        plan = self._plans.get(key)
        if plan is not None:
            return plan
        sides: list[tuple[Direction, Endpoint, Peer]] = []
        src_ep, dst_ep = self.local_endpoint_str(src_ip), self.local_endpoint_str(dst_ip)
        src, dst = ipaddress.IPv4Address(src_ip), ipaddress.IPv4Address(dst_ip)
        if src_ep is not None:
            peer = self.peer(dst, dst_fqdns)
            action, _ = decide_l4(self.snapshot, Direction.EGRESS, src_ep, peer, Proto.TCP, dport)
            if action is L4Action.REDIRECT_HTTP:
                sides.append((Direction.EGRESS, src_ep, peer))
        if dst_ep is not None:
            peer = self.peer(src)
            action, _ = decide_l4(self.snapshot, Direction.INGRESS, dst_ep, peer, Proto.TCP, dport)
            if action is L4Action.REDIRECT_HTTP:
                sides.append((Direction.INGRESS, dst_ep, peer))
        plan = tuple(sides)
        if len(self._plans) >= PLAN_CACHE_MAX:
            self._plans.clear()
        self._plans[key] = plan
        return plan

    def decide_http(self, src_ip: ipaddress.IPv4Address | str,
                    dst_ip: ipaddress.IPv4Address | str, dport: int, meta: HttpRequestView,
                    dst_fqdns: frozenset[str] = frozenset()) -> tuple[Verdict, Direction]:
        """Decide one request for every local side whose policy redirects it to the proxy.

        Traffic that no local rule redirects is denied: the proxy never forwards what it
        was not asked to judge (fail closed).
        """
        return self.decide_with(self.http_decider(str(src_ip), str(dst_ip), dport, dst_fqdns),
                                meta)

    def decide_with(self, decider: HttpDecider,
                    meta: HttpRequestView) -> tuple[Verdict, Direction]:
        """`decide_http`'s answer for a request once its decider is known (the agent keeps
        one per proxy connection whose decider cannot change: Agent.http_decide_for)."""
        if decider.fixed is not None:
            return decider.fixed
        if decider.headers:
            seen = tuple([kv for kv in meta.headers if kv[0] in decider.headers])
            key: tuple[object, ...] = (decider, meta.method, meta.path, meta.host, seen)
            size = sum(len(v) for _, v in seen)
        else:  # verdict_fn looks this key up itself
            key, size = (decider, meta.method, meta.path, meta.host), 0
        found = self._http_verdicts.get(key)
        if found is not None:
            return found
        found = decider.decide(meta)
        if size + len(meta.method) + len(meta.path) + len(meta.host) <= HTTP_VERDICT_KEY_MAX:
            if len(self._http_verdicts) >= HTTP_VERDICT_CACHE_MAX:
                self._http_verdicts.clear()
            self._http_verdicts[key] = found
        return found

    def verdict_fn(self, decider: HttpDecider) -> Callable[[Any, HttpRequestView], Verdict]:
        """`decide_with(decider, meta)[0]` as the HTTP proxy calls it, `(conn, meta)`, for a
        connection whose decider is fixed (Agent.http_decide_for): a fixed verdict is
        returned directly; when no rule reads a header, decide_with's memo is looked up
        here with decide_with's own key and dict (which it only ever clears in place), and
        decide_with runs only on a miss. Why: one Python call and its checks less per
        request (~1k instructions, callgrind, tests/bench/inproc_http.py)."""
        decide_with = self.decide_with
        if decider.fixed is not None:
            fixed = decider.fixed[0]

            def decide_fixed(_conn: Any, meta: HttpRequestView) -> Verdict:
                return fixed
            return decide_fixed
        if decider.headers:
            def decide(_conn: Any, meta: HttpRequestView) -> Verdict:
                return decide_with(decider, meta)[0]
            return decide
        verdicts = self._http_verdicts

        def decide_plain(_conn: Any, meta: HttpRequestView) -> Verdict:
            found = verdicts.get((decider, meta.method, meta.path, meta.host))  # decide_with's
            if found is None:
                found = decide_with(decider, meta)
            return found[0]
        return decide_plain

    def http_decider(self, src_ip: str, dst_ip: str, dport: int,
                     dst_fqdns: frozenset[str] = frozenset()) -> HttpDecider:
        """`http_plan` with each side's L7 plan resolved, memoized per state."""
        key = (src_ip, dst_ip, dport, dst_fqdns)
        decider = self._http_deciders.get(key)
        if decider is not None:
            return decider
        plan = self.http_plan(src_ip, dst_ip, dport, dst_fqdns)
        if plan:
            decider = HttpDecider(tuple(
                (direction, l7_plan(self.snapshot, direction, local, peer, Proto.TCP, dport))
                for direction, local, peer in plan), None)
        else:
            src_local = self.local_endpoint_str(src_ip) is not None
            decider = HttpDecider((), (
                Verdict(Decision.DENIED, NO_REDIRECT_RULE, DropReason.POLICY_DENIED),
                Direction.EGRESS if src_local else Direction.INGRESS))
        if len(self._http_deciders) >= PLAN_CACHE_MAX:
            self._http_deciders.clear()
        self._http_deciders[key] = decider
        return decider

    def decide_dns(self, src_ip: ipaddress.IPv4Address | str,
                   server_ip: ipaddress.IPv4Address | str, dport: int, qname: str,
                   proto: Proto = Proto.UDP) -> Verdict:
        key = (str(src_ip), str(server_ip), dport, proto, qname)
        verdict = self._dns_verdicts.get(key)
        return verdict if verdict is not None else self._decide_dns_miss(key)

    def decide_dns_conn(self, conn: Any, qname: str) -> Verdict:
        """`decide_dns` for the DNS proxy's connection tuple (`src_ip`, `dst_ip`, `dst_port`,
        `proto` "UDP" | "TCP"), whose addresses are already strings: the memo key is built
        with no conversion (once per query; the str() calls and the enum lookup cost about
        as much as the hit itself)."""
        proto = _PROTO_TCP if getattr(conn, "proto", "UDP") == "TCP" else _PROTO_UDP
        key = (conn.src_ip, conn.dst_ip, conn.dst_port, proto, qname)
        verdict = self._dns_verdicts.get(key)
        return verdict if verdict is not None else self._decide_dns_miss(key)

    def _decide_dns_miss(self, key: tuple[str, str, int, Proto, str]) -> Verdict:
        """Decide and remember (memo key: src, server, port, proto, qname)."""
        src_ip, server_ip, dport, proto, qname = key
        src_ep = self.local_endpoint_str(src_ip)
        if src_ep is None:
            verdict = Verdict(Decision.DENIED, NO_REDIRECT_RULE, DropReason.POLICY_DENIED)
        else:
            verdict = decide_dns(self.snapshot, src_ep, self.peer_str(server_ip), dport, qname,
                                 proto)
        if len(self._dns_verdicts) >= DNS_VERDICT_CACHE_MAX:
            self._dns_verdicts.clear()
        self._dns_verdicts[key] = verdict
        return verdict

    def peer_str(self, ip: str) -> Peer:
        """`peer` (without DNS names) for a string address, memoized."""
        key = ("peer", ip)
        found = self.memo.get(key)
        if isinstance(found, Peer):
            return found
        peer = self.peer(ipaddress.IPv4Address(ip))
        if len(self.memo) < PLAN_CACHE_MAX:
            self.memo[key] = peer
        return peer
