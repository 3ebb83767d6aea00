"""Expand a snapshot into concrete policy-map entries for one endpoint and direction (pure).

For every identity of the table and every L4 protocol, the port space is cut at each rule
boundary; each piece is decided with the same `FlowMatch.l4()` that `decide_l4` uses, so the
map and the engine cannot disagree. Adjacent pieces with the same outcome are merged, so
entries never overlap. Outcomes that are the direction's default (no entry: default allow
when not enforced, default deny when enforced) are not emitted; explicit denies are, so the
datapath can report POLICY_DENY. When TCP, UDP and SCTP come out identical the three are
folded into one `Proto.ANY` entry. toFQDNs rules are not expanded here (their IPs are
learned at run time; see `PolicySnapshot.fqdn_selectors`).
"""

from __future__ import annotations

from collections.abc import Iterator

from policy.compile import DEFAULT_ALLOW, DEFAULT_DENY, PolicySnapshot, match_ports
from policy.identity import IdentityTable
from policy.model import L4_PROTOS, PeerRule
from policy.types import DatapathEntry, Direction, Endpoint, L4Action, Label, Proto

MAX_PORT = 65535

Piece = tuple[int, int, L4Action, str]


def _cuts(rules: tuple[PeerRule, ...], proto: Proto) -> list[int]:
    """Sorted starts of the port pieces for `proto` (0 always included)."""
    starts = {0}
    for rule in rules:
        if rule.port_rules is None:
            continue
        for pr in rule.port_rules:
            for p in pr.ports:
                if p.proto is Proto.ANY or p.proto is proto:
                    starts.add(p.lo)
                    if p.hi < MAX_PORT:
                        starts.add(p.hi + 1)
    return sorted(starts)


def pieces(snapshot: PolicySnapshot, local: frozenset[Label], direction: Direction,
           peer: frozenset[Label], proto: Proto) -> list[Piece]:
    rules, is_host = snapshot.peer_rules(local, direction, peer)
    if not rules.deny and not rules.allow and not (is_host and rules.enforced):
        return []  # only the direction's default applies: no entry
    starts = _cuts(rules.deny + rules.allow, proto)
    out: list[Piece] = []
    for i, lo in enumerate(starts):
        hi = starts[i + 1] - 1 if i + 1 < len(starts) else MAX_PORT
        action, rule_id = match_ports(rules, is_host, proto, lo).l4()
        if action is None or rule_id in (DEFAULT_ALLOW, DEFAULT_DENY):
            continue
        if out and out[-1][1] == lo - 1 and out[-1][2] is action and out[-1][3] == rule_id:
            out[-1] = (out[-1][0], hi, action, rule_id)
        else:
            out.append((lo, hi, action, rule_id))
    return out


def datapath_entries(
    snapshot: PolicySnapshot, endpoint: Endpoint, direction: Direction, identities: IdentityTable
) -> Iterator[DatapathEntry]:
    local = endpoint.identity_labels()
    for ident in identities:
        per_proto = {p: pieces(snapshot, local, direction, ident.labels, p) for p in L4_PROTOS}
        if per_proto[Proto.TCP] == per_proto[Proto.UDP] == per_proto[Proto.SCTP]:
            per_proto = {Proto.ANY: per_proto[Proto.TCP]}
        for proto, items in per_proto.items():
            for lo, hi, action, rule_id in items:
                yield DatapathEntry(direction, ident.id, proto, lo, hi, action, rule_id)


def lookup(entries: list[DatapathEntry], identity: int, proto: Proto, port: int
           ) -> DatapathEntry | None:
    """The entry covering (identity, proto, port): what the BPF lookup does (for tests)."""
    for e in entries:
        if e.peer_identity == identity and (e.proto is Proto.ANY or e.proto is proto) \
                and e.port_lo <= port <= e.port_hi:
            return e
    return None
