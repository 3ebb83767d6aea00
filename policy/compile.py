"""The compiled `PolicySnapshot` and its evaluation core (pure; no I/O, no clock).

A snapshot is built once from validated `PolicyDoc`s and never changes; the agent swaps a
whole snapshot on reload. It answers, for a local endpoint (its identity labels) and a
direction: is default deny active (§3), which rules select it, and for one peer and port
which deny/allow rules match (§4-§6). Caches keyed by label sets live inside the snapshot, so
repeated questions (every HTTP request) are dictionary lookups. Datapath expansion is in
`policy.datapath`, L7 decisions and trace in `policy.engine`.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from policy.dnsname import NameMatcher
from policy.errors import PolicyError
from policy.identity import IdentityTable
from policy.load import load_documents
from policy.model import L4_PROTOS, PeerKind, PeerRule, PolicyDoc, PortRule, PortSpec, RuleSpec
from policy.selector import ANY_SOURCE, LabelView
from policy.types import DatapathEntry, Direction, Endpoint, L4Action, Label, Proto

MAX_PORT = 65535
DEFAULT_DENY = "default-deny"
DEFAULT_ALLOW = "default-allow"
ALLOW_LOCALHOST = "allow-localhost"  # Cilium's default --allow-localhost: host -> pod allowed
MAX_CACHE_ENTRIES = 100_000  # bound per cache; cleared when full (snapshots are replaced anyway)


@dataclass(frozen=True, slots=True)
class FqdnRule:
    """An egress toFQDNs rule of one endpoint: names, ports (with action), and its id."""

    matcher: NameMatcher
    ports: tuple[PortSpec, ...]
    rule_id: str

    def port_ranges(self) -> frozenset[tuple[int, int, int]]:
        """(IP protocol, lo, hi) triples, the shape `policy.fqdn.FqdnSelector` takes."""
        return frozenset((int(p.proto), p.lo, p.hi) for p in self.ports)


@dataclass(frozen=True, slots=True)
class SideRules:
    """The rules of one local endpoint and direction."""

    enforced: bool
    deny: tuple[PeerRule, ...]
    allow: tuple[PeerRule, ...]


@dataclass(frozen=True, slots=True)
class FlowMatch:
    """Which rules match one flow (peer, proto, port) on one side."""

    enforced: bool
    deny: PeerRule | None
    allows: tuple[tuple[PeerRule, tuple[PortRule, ...]], ...]  # () = no toPorts (any port, no L7)
    peer_is_host: bool = False

    def l4(self) -> tuple[L4Action | None, str]:
        """The L3/L4 outcome: (action, rule id); (None, "default-deny") = dropped."""
        if self.deny is not None:
            return L4Action.DENY, self.deny.rule_id
        first_dns = None
        for rule, port_rules in self.allows:
            if any(pr.http is not None for pr in port_rules):
                return L4Action.REDIRECT_HTTP, rule.rule_id
            if first_dns is None and any(pr.dns is not None for pr in port_rules):
                first_dns = rule.rule_id
        if first_dns is not None:
            return L4Action.REDIRECT_DNS, first_dns
        if self.allows:
            return L4Action.ALLOW, self.allows[0][0].rule_id
        if self.peer_is_host and self.enforced:
            return L4Action.ALLOW, ALLOW_LOCALHOST
        if not self.enforced:
            return L4Action.ALLOW, DEFAULT_ALLOW
        return None, DEFAULT_DENY


def _view_has(view: LabelView, source: str, key: str) -> bool:
    return view.values(source, key) is not None


@dataclass(frozen=True)
class PolicySnapshot:
    """Immutable compiled policy. `revision` is a content hash of the source objects."""

    docs: tuple[PolicyDoc, ...]
    revision: str
    cidr_prefixes: tuple[ipaddress.IPv4Network, ...]
    _specs: tuple[RuleSpec, ...] = field(repr=False)
    _index: dict[tuple[str, str, str], tuple[int, ...]] = field(repr=False)
    _unindexed: tuple[int, ...] = field(repr=False)
    _caches: dict[str, dict[object, object]] = field(default_factory=dict, repr=False,
                                                      compare=False)

    # --- caches ---------------------------------------------------------------------------

    def cache(self, name: str) -> dict[object, object]:
        c = self._caches.get(name)
        if c is None:
            c = self._caches[name] = {}
        elif len(c) > MAX_CACHE_ENTRIES:
            c.clear()
        return c

    def view(self, labels: frozenset[Label]) -> LabelView:
        c = self.cache("view")
        v = c.get(labels)
        if v is None:
            v = c[labels] = LabelView(labels)
        return v  # type: ignore[return-value]

    # --- which specs select an endpoint ---------------------------------------------------

    def selecting_specs(self, labels: frozenset[Label]) -> tuple[RuleSpec, ...]:
        c = self.cache("specs")
        found = c.get(labels)
        if found is not None:
            return found  # type: ignore[return-value]
        view = self.view(labels)
        cand: set[int] = set(self._unindexed)
        for lbl in labels:
            cand.update(self._index.get((lbl.source, lbl.key, lbl.value), ()))
            cand.update(self._index.get((ANY_SOURCE, lbl.key, lbl.value), ()))
        out = tuple(self._specs[i] for i in sorted(cand)
                    if self._specs[i].endpoint_selector.matches(view))
        c[labels] = out
        return out

    def side_rules(self, labels: frozenset[Label], direction: Direction) -> SideRules:
        key = (labels, direction)
        c = self.cache("side")
        found = c.get(key)
        if found is None:
            specs = self.selecting_specs(labels)
            found = c[key] = SideRules(
                enforced=any(s.enforces(direction) for s in specs),
                deny=tuple(r for s in specs for r in s.rules(direction, True)),
                allow=tuple(r for s in specs for r in s.rules(direction, False)),
            )
        return found  # type: ignore[return-value]

    def is_enforced(self, endpoint: Endpoint, direction: Direction) -> bool:
        """True when default deny is active for this endpoint and direction (§3)."""
        return self.side_rules(endpoint.identity_labels(), direction).enforced

    def peer_rules(
        self, local: frozenset[Label], direction: Direction, peer: frozenset[Label],
        fqdns: frozenset[str] = frozenset(),
    ) -> tuple[SideRules, bool]:
        """The side's rules whose L3 member selects the peer; and whether the peer is host."""
        key = (local, direction, peer, fqdns)
        c = self.cache("peer")
        found = c.get(key)
        if found is None:
            side = self.side_rules(local, direction)
            view = self.view(peer)
            sel = SideRules(
                side.enforced,
                tuple(r for r in side.deny if r.peer is None or r.peer.matches(view, fqdns)),
                tuple(r for r in side.allow if r.peer is None or r.peer.matches(view, fqdns)),
            )
            is_host = direction is Direction.INGRESS and _view_has(view, "reserved", "host")
            found = c[key] = (sel, is_host)
        return found  # type: ignore[return-value]

    def match_flow(
        self, local: frozenset[Label], direction: Direction, peer: frozenset[Label],
        fqdns: frozenset[str], proto: Proto, port: int,
    ) -> FlowMatch:
        rules, is_host = self.peer_rules(local, direction, peer, fqdns)
        return match_ports(rules, is_host, proto, port)

    def fqdn_selectors(self, endpoint: Endpoint) -> list[FqdnRule]:
        """Egress toFQDNs allow rules of `endpoint` (policy order)."""
        side = self.side_rules(endpoint.identity_labels(), Direction.EGRESS)
        out = []
        for rule in side.allow:
            if rule.peer is None or rule.peer.kind is not PeerKind.FQDNS or rule.peer.fqdns is None:
                continue
            out.append(FqdnRule(rule.peer.fqdns, _rule_ports(rule), rule.rule_id))
        return out

    def datapath_entries(self, endpoint: Endpoint, direction: Direction,
                         identities: IdentityTable) -> list[DatapathEntry]:
        """Concrete policy-map entries (see `policy.datapath`)."""
        from policy.datapath import datapath_entries  # local: datapath imports this module

        return list(datapath_entries(self, endpoint, direction, identities))


def match_ports(rules: SideRules, is_host: bool, proto: Proto, port: int) -> FlowMatch:
    deny = next((r for r in rules.deny if r.port_matches(proto, port) is not None), None)
    allows = []
    for r in rules.allow:
        hits = r.port_matches(proto, port)
        if hits is not None:
            allows.append((r, hits))
    return FlowMatch(rules.enforced, deny, tuple(allows), is_host)


def _rule_ports(rule: PeerRule) -> tuple[PortSpec, ...]:
    if rule.port_rules is None:
        return (PortSpec(Proto.ANY, 0, MAX_PORT, L4Action.ALLOW),)
    out: list[PortSpec] = []
    for pr in rule.port_rules:
        action = (L4Action.REDIRECT_HTTP if pr.http is not None
                  else L4Action.REDIRECT_DNS if pr.dns is not None else L4Action.ALLOW)
        out.extend(PortSpec(p.proto, p.lo, p.hi, action) for p in pr.ports)
    return tuple(out)


def compile_policies(docs: Sequence[PolicyDoc]) -> PolicySnapshot:
    """Build the immutable snapshot (regexes were compiled by the loader)."""
    ordered = tuple(docs)
    digest = hashlib.sha256()
    for d in ordered:
        digest.update(d.fingerprint.encode())
        digest.update(b"\0")
    specs = tuple(s for d in ordered for s in d.specs)
    index: dict[tuple[str, str, str], list[int]] = {}
    unindexed = []
    prefixes: set[ipaddress.IPv4Network] = set()
    for i, spec in enumerate(specs):
        key = spec.endpoint_selector.index_key()
        if key is None:
            unindexed.append(i)
        else:
            index.setdefault(key, []).append(i)
        for direction in (Direction.INGRESS, Direction.EGRESS):
            for deny in (False, True):
                for rule in spec.rules(direction, deny):
                    if rule.peer is not None and rule.peer.kind is PeerKind.CIDRS:
                        for c in rule.peer.cidrs:
                            prefixes.add(c.net)
                            prefixes.update(c.excepts)
    return PolicySnapshot(
        docs=ordered, revision=digest.hexdigest()[:16],
        cidr_prefixes=tuple(sorted(prefixes, key=lambda n: (int(n.network_address), n.prefixlen))),
        _specs=specs, _index={k: tuple(v) for k, v in index.items()},
        _unindexed=tuple(unindexed),
    )


def compile_from_paths(paths: Sequence[str | Path], *, strict: bool = False) -> PolicySnapshot:
    """Load and compile; raises PolicyError naming every error of every file."""
    result = load_documents(paths, strict=strict)
    if result.errors:
        raise PolicyError(result.errors)
    return compile_policies(result.policies)


__all__ = ["L4_PROTOS", "FlowMatch", "FqdnRule", "PolicySnapshot", "compile_from_paths",
           "compile_policies"]
