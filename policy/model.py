"""The compiled, immutable policy model the loader produces (pure; no I/O here).

`PolicyDoc` is one CNP/CCNP object; it holds `RuleSpec`s (the `spec` and each `specs[]`
entry), each holding `PeerRule`s. Everything is frozen and regexes are compiled once by the
loader (RE2, full match). Empty-field semantics, stated once here:
- `PeerRule.peer is None`: no L3 member (only `toPorts`) -> every peer incl. world (§3).
- `PeerMatch` with an empty `selectors`/`cidrs`/`entities` tuple selects nothing
  (`fromEndpoints: []`, or `ingress: [{}]`).
- `PeerRule.port_rules is None`: no `toPorts` -> every port and protocol, no L7.
- `PortRule.http is None and dns is None`: L4 only -> every request on those ports.
- `HttpRule` with no fields set matches every request.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass
from typing import Any

import re2

from policy.dnsname import RE2_OPTIONS, NameMatcher
from policy.selector import LabelView, Selector
from policy.types import Direction, HttpRequestView, L4Action, Proto

L4_PROTOS = (Proto.TCP, Proto.UDP, Proto.SCTP)  # what ANY stands for (policy-semantics §5)


@dataclass(frozen=True, slots=True)
class PortSpec:
    """An inclusive port range for one protocol (ANY = TCP, UDP and SCTP)."""

    proto: Proto
    lo: int
    hi: int
    action: L4Action = L4Action.ALLOW

    def covers(self, proto: Proto, port: int) -> bool:
        return (self.proto is Proto.ANY or self.proto is proto) and self.lo <= port <= self.hi


_REGEX_META = frozenset("\\.^$*+?()[]{}|")


class FullRegex:
    """An RE2 regex matched against the WHOLE value (Envoy safe_regex_match semantics).

    google-re2's `fullmatch` builds match objects in Python (~5 us); we only need a yes/no,
    so we call the compiled program directly, and compare literals (`GET`) as strings.
    Raises re2.error for a bad pattern.
    """

    __slots__ = ("_literal", "_program", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        compiled = re2.compile(source, options=RE2_OPTIONS)
        self._literal = source if _REGEX_META.isdisjoint(source) else None
        # the C++ program behind google-re2's Python wrapper
        self._program: Any = compiled._regexp

    def fullmatch(self, text: str) -> bool:
        if self._literal is not None:
            return text == self._literal
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError:
            return False
        spans = self._program.Match(_ANCHOR_BOTH, data, 0, len(data))
        return bool(spans[0][0] >= 0)

    def __repr__(self) -> str:
        return f"FullRegex({self.source!r})"


_ANCHOR_BOTH = re2._Anchor.ANCHOR_BOTH


@dataclass(frozen=True, slots=True)
class HeaderMatch:
    """`headerMatches` entry. value None = presence; mismatch "" = deny on mismatch."""

    name: str  # lower-cased
    value: str | None
    mismatch: str  # "", LOG, ADD, DELETE, REPLACE


@dataclass(frozen=True, slots=True)
class HttpRule:
    """One `rules.http[]` entry; all set fields must match (RE2 full match)."""

    method: FullRegex | None
    path: FullRegex | None
    host: FullRegex | None
    headers: tuple[tuple[str, str | None], ...]  # (lower-cased name, exact value or presence)
    header_matches: tuple[HeaderMatch, ...]
    text: str  # for trace output

    @property
    def header_names(self) -> frozenset[str]:
        """Every header name `matches` may read (no other header can change its answer)."""
        return frozenset([n for n, _ in self.headers] + [hm.name for hm in self.header_matches])

    def matches(self, meta: HttpRequestView) -> bool:
        if self.method is not None and not self.method.fullmatch(meta.method):
            return False
        if self.path is not None and not self.path.fullmatch(meta.path):
            return False
        if self.host is not None and not self.host.fullmatch(meta.host):
            return False
        for name, value in self.headers:
            if not _has_header(meta.headers, name, value):
                return False
        for hm in self.header_matches:
            # A set mismatch action (LOG/ADD/DELETE/REPLACE) never denies (Cilium
            # HeaderMatch::allowed); mutations are out of scope (README-decisions.md).
            if not hm.mismatch and not _has_header(meta.headers, hm.name, hm.value):
                return False
        return True


def _has_header(headers: tuple[tuple[str, str], ...], name: str, value: str | None) -> bool:
    for hname, hvalue in headers:
        if hname == name and (value is None or hvalue == value):
            return True
    return False


@dataclass(frozen=True, slots=True)
class PortRule:
    """One `toPorts` entry: ports (OR) plus at most one L7 kind."""

    ports: tuple[PortSpec, ...]
    http: tuple[HttpRule, ...] | None = None
    dns: NameMatcher | None = None

    def covers(self, proto: Proto, port: int) -> bool:
        return any(p.covers(proto, port) for p in self.ports)

    @property
    def has_l7(self) -> bool:
        return self.http is not None or self.dns is not None


class PeerKind(enum.Enum):
    SELECTORS = "endpoints"
    CIDRS = "cidr"
    ENTITIES = "entities"
    FQDNS = "fqdns"


@dataclass(frozen=True, slots=True)
class CidrRule:
    net: ipaddress.IPv4Network
    excepts: tuple[ipaddress.IPv4Network, ...] = ()


@dataclass(frozen=True, slots=True)
class PeerMatch:
    """The L3 member of a rule (exactly one kind)."""

    kind: PeerKind
    selectors: tuple[Selector, ...] = ()  # SELECTORS, and ENTITIES expanded to selectors
    cidrs: tuple[CidrRule, ...] = ()
    fqdns: NameMatcher | None = None
    text: str = ""

    def matches(self, view: LabelView, fqdns: frozenset[str]) -> bool:
        if self.kind is PeerKind.FQDNS:
            # toFQDNs IPs are world/CIDR identities, never pods (§8).
            if self.fqdns is None or view.values("reserved", "world") is None:
                return False
            return any(self.fqdns.matches(name) for name in fqdns)
        if self.kind is PeerKind.CIDRS:
            return any(_cidr_selects(c, view) for c in self.cidrs)
        return any(sel.matches(view) for sel in self.selectors)


def cidr_label(net: ipaddress.IPv4Network) -> str:
    return str(net)


def _cidr_selects(rule: CidrRule, view: LabelView) -> bool:
    """A CIDR identity carries `cidr:<P>` for every policy prefix P containing it (§9).

    Prefix /0 also selects the plain world identity (IPs outside every policy prefix).
    """
    if rule.net.prefixlen == 0:
        if view.values("reserved", "world") is None:
            return False
    elif view.values("cidr", cidr_label(rule.net)) is None:
        return False
    return not any(view.values("cidr", cidr_label(e)) is not None for e in rule.excepts)


@dataclass(frozen=True, slots=True)
class PeerRule:
    """One entry of ingress/ingressDeny/egress/egressDeny."""

    rule_id: str  # "ns/name:ingress[0]"
    direction: Direction
    is_deny: bool
    peer: PeerMatch | None
    port_rules: tuple[PortRule, ...] | None
    line: int

    def port_matches(self, proto: Proto, port: int) -> tuple[PortRule, ...] | None:
        """The port rules covering the flow; () = L4-wide allow (no toPorts); None = no."""
        if self.port_rules is None:
            return ()
        hits = tuple(pr for pr in self.port_rules if pr.covers(proto, port))
        return hits or None


@dataclass(frozen=True, slots=True)
class RuleSpec:
    """One `spec`/`specs[i]`: the endpoints it selects and its rules."""

    endpoint_selector: Selector  # namespace already injected for a CNP
    ingress: tuple[PeerRule, ...]
    ingress_deny: tuple[PeerRule, ...]
    egress: tuple[PeerRule, ...]
    egress_deny: tuple[PeerRule, ...]
    default_deny_ingress: bool  # enableDefaultDeny filled in (Cilium Sanitize)
    default_deny_egress: bool
    line: int

    def rules(self, direction: Direction, deny: bool) -> tuple[PeerRule, ...]:
        if direction is Direction.INGRESS:
            return self.ingress_deny if deny else self.ingress
        return self.egress_deny if deny else self.egress

    def enforces(self, direction: Direction) -> bool:
        if direction is Direction.INGRESS:
            return self.default_deny_ingress and bool(self.ingress or self.ingress_deny)
        return self.default_deny_egress and bool(self.egress or self.egress_deny)


@dataclass(frozen=True, slots=True)
class PolicyDoc:
    """One CiliumNetworkPolicy (namespace set) or CiliumClusterwideNetworkPolicy (None)."""

    kind: str
    name: str
    namespace: str | None
    specs: tuple[RuleSpec, ...]
    file: str
    line: int
    fingerprint: str  # hash of the file's text + position of the object (snapshot revision)

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace is not None else self.name
