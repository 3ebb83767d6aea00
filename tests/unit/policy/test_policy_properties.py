"""Hypothesis properties of the engine over random policies, pods and flows.

- deny always wins; adding an allow rule to an enforced direction never denies an allowed
  flow; a policy selecting nothing changes nothing;
- the loader/compiler never raises anything but PolicyError on random documents;
- datapath entries never overlap and agree with decide_l4 for every identity/port sampled.
Profiles come from tests/conftest.py (`fast` by default).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import yaml
from hypothesis import given
from hypothesis import strategies as st
from policy_helpers import Cluster, pod

from policy.compile import compile_policies
from policy.datapath import lookup
from policy.engine import decide_l4
from policy.errors import PolicyError
from policy.load import load_text
from policy.types import Direction, DropReason, HttpRequestMeta, L4Action, Peer, Proto

KEYS = ("app", "role")
VALUES = ("a", "b")
NAMESPACES = ("default", "prod")
PORTS = ("80", "443", "8080")
PODS = [pod(ns, f"{ns}-{a}-{r}", {"app": a, "role": r})
        for ns in NAMESPACES for a in VALUES for r in VALUES[:1]]
METHODS = ("GET", "POST")

labels_st = st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES), max_size=2)
selector_st = st.builds(lambda m: {"matchLabels": m}, labels_st)
port_st = st.builds(lambda p, proto: {"port": p, "protocol": proto},
                    st.sampled_from(PORTS), st.sampled_from(("TCP", "UDP", "ANY")))
http_st = st.lists(st.builds(lambda m: {"method": m}, st.sampled_from(METHODS)),
                   min_size=1, max_size=2)


@st.composite
def to_ports(draw: st.DrawFn, l7: bool) -> list[dict[str, Any]]:
    out = []
    for _ in range(draw(st.integers(1, 2))):
        ports = draw(st.lists(port_st, min_size=1, max_size=2))
        entry: dict[str, Any] = {"ports": ports}
        if l7 and draw(st.booleans()):
            entry = {"ports": [{"port": p["port"], "protocol": "TCP"} for p in ports],
                     "rules": {"http": draw(http_st)}}
        out.append(entry)
    return out


@st.composite
def rule_st(draw: st.DrawFn, direction: str, deny: bool = False) -> dict[str, Any]:
    peer_key = {"ingress": ("fromEndpoints", "fromEntities", "fromCIDR"),
                "egress": ("toEndpoints", "toEntities", "toCIDR")}[direction]
    rule: dict[str, Any] = {}
    kind = draw(st.sampled_from((None, *peer_key)))
    if kind is not None and kind.endswith("Endpoints"):
        rule[kind] = draw(st.lists(selector_st, min_size=1, max_size=2))
    elif kind is not None and kind.endswith("Entities"):
        rule[kind] = draw(st.lists(st.sampled_from(("world", "cluster", "host", "all")),
                                   min_size=1, max_size=2))
    elif kind is not None:
        rule[kind] = [draw(st.sampled_from(("0.0.0.0/0", "203.0.113.0/24", "10.0.0.0/8")))]
    if kind is None or draw(st.booleans()):
        rule["toPorts"] = draw(to_ports(l7=not deny))
    return rule


@st.composite
def policy_st(draw: st.DrawFn, name: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"endpointSelector": draw(selector_st)}
    for direction in ("ingress", "egress"):
        if draw(st.booleans()):
            spec[direction] = draw(st.lists(rule_st(direction), min_size=1, max_size=3))
        if draw(st.integers(0, 3)) == 0:
            spec[direction + "Deny"] = [draw(rule_st(direction, deny=True))]
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": name, "namespace": draw(st.sampled_from(NAMESPACES))},
            "spec": spec}


policies_st = st.lists(st.integers(0, 10**6), min_size=1, max_size=3).flatmap(
    lambda ids: st.tuples(*(policy_st(f"p{i}") for i in range(len(ids)))))


def cluster(policies: list[dict[str, Any]] | tuple[dict[str, Any], ...]) -> Cluster:
    result = load_text(yaml.safe_dump_all(policies), "gen.yaml")
    assert not result.errors, [str(p) for p in result.errors]
    return Cluster(compile_policies(result.policies), *PODS)


def peers(c: Cluster) -> list[Peer]:
    return [*(c.peer(p.name) for p in PODS), c.ip("203.0.113.9"), c.ip("8.8.8.8"),
            c.entity("host")]


def verdicts(c: Cluster, *, with_host: bool = True) -> list[str]:
    out = []
    everyone = peers(c) if with_host else peers(c)[:-1]
    for src, dst in itertools.product(everyone, everyone):
        if src.endpoint is None and dst.endpoint is None:
            continue
        for port, method in itertools.product((80, 8080), METHODS):
            meta = HttpRequestMeta(method, "/", "")
            out.append(c.trace(src, dst, port, Proto.TCP, meta)["verdict"])
    return out


@given(policies_st, st.sampled_from(PORTS))
def test_deny_always_wins(policies: tuple[dict[str, Any], ...], port: str) -> None:
    deny = {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": "deny", "namespace": "default"},
            "spec": {"endpointSelector": {},
                     "ingressDeny": [{"fromEntities": ["all"],
                                      "toPorts": [{"ports": [{"port": port}]}]}]}}
    c = cluster([*policies, deny])
    for ep in (p for p in PODS if p.namespace == "default"):
        for peer in peers(c):
            action, rule = decide_l4(c.snap, Direction.INGRESS, ep, peer, Proto.TCP, int(port))
            assert action is L4Action.DENY and ":ingressDeny[" in rule  # ours or another deny
            v = c.http(ep.name, Direction.INGRESS, peer, int(port), "GET")
            assert v.reason is DropReason.POLICY_DENY and v.rule_id == rule


@given(policies_st, st.data())
def test_adding_an_allow_rule_never_denies_an_allowed_flow(
        policies: tuple[dict[str, Any], ...], data: st.DataObject) -> None:
    # host is left out: allow-localhost is an implicit L4 allow that an L7 rule covering the
    # host on that port overrides, as in Cilium (README-decisions.md)
    before = verdicts(cluster(policies), with_host=False)
    grown = [dict(p, spec=dict(p["spec"])) for p in policies]
    target = data.draw(st.sampled_from(grown))
    direction = data.draw(st.sampled_from(("ingress", "egress")))
    spec = target["spec"]
    if not spec.get(direction) and not spec.get(direction + "Deny"):
        return  # adding the first rule would switch the endpoint to default deny (§3)
    spec[direction] = [*spec.get(direction, []), data.draw(rule_st(direction))]
    after = verdicts(cluster(grown), with_host=False)
    assert not any(b == "allowed" and a == "denied" for b, a in zip(before, after, strict=True))


@given(policies_st, policy_st("selects-nothing"))
def test_a_policy_that_selects_nothing_changes_nothing(
        policies: tuple[dict[str, Any], ...], extra: dict[str, Any]) -> None:
    extra["spec"]["endpointSelector"] = {"matchLabels": {"no-such-label": "x"}}
    assert verdicts(cluster(policies)) == verdicts(cluster([*policies, extra]))


@given(policies_st)
def test_datapath_entries_never_overlap_and_agree_with_decide_l4(
        policies: tuple[dict[str, Any], ...]) -> None:
    c = cluster(policies)
    for ep, direction in itertools.product(PODS, Direction):
        entries = c.snap.datapath_entries(ep, direction, c.table)
        by_key: dict[tuple[int, Proto], list[tuple[int, int]]] = {}
        for e in entries:
            protos = (Proto.TCP, Proto.UDP, Proto.SCTP) if e.proto is Proto.ANY else (e.proto,)
            for proto in protos:
                by_key.setdefault((e.peer_identity, proto), []).append((e.port_lo, e.port_hi))
        for ranges in by_key.values():
            ranges.sort()
            assert all(a[1] < b[0] for a, b in itertools.pairwise(ranges))
        enforced = c.snap.is_enforced(ep, direction)
        for ident in c.table:
            peer = Peer(ident)
            for port, proto in itertools.product((0, 79, 80, 81, 443, 8080, 65535),
                                                 (Proto.TCP, Proto.UDP)):
                action, rule = decide_l4(c.snap, direction, ep, peer, proto, port)
                entry = lookup(entries, ident.id, proto, port)
                if entry is None:
                    assert (action, rule) == ((None, "default-deny") if enforced
                                              else (L4Action.ALLOW, "default-allow"))
                else:
                    assert (entry.action, entry.rule_id) == (action, rule)


FIELD_NAMES = ("apiVersion", "kind", "metadata", "name", "namespace", "spec", "specs",
               "endpointSelector", "matchLabels", "matchExpressions", "key", "operator",
               "values", "ingress", "egress", "ingressDeny", "egressDeny", "fromEndpoints",
               "toEndpoints", "toPorts", "ports", "port", "endPort", "protocol", "rules",
               "http", "dns", "method", "path", "host", "headers", "headerMatches", "toFQDNs",
               "matchName", "matchPattern", "toCIDR", "toCIDRSet", "cidr", "except",
               "toEntities", "fromEntities", "enableDefaultDeny", "items", "mismatch")
scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 70000), st.text(max_size=8),
                    st.sampled_from(("cilium.io/v2", "CiliumNetworkPolicy", "List", "TCP",
                                     "In", "Exists", "80", "*", "(", "10.0.0.0/8", "world")))
documents: st.SearchStrategy[Any] = st.deferred(lambda: st.one_of(
    scalars, st.lists(documents, max_size=3),
    st.dictionaries(st.sampled_from(FIELD_NAMES), documents, max_size=4)))


@given(documents)
def test_loader_and_compiler_never_crash_on_random_documents(doc: Any) -> None:
    if isinstance(doc, dict) and doc.get("kind") is None:
        doc = {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", **doc}
    result = load_text(yaml.safe_dump(doc), "rand.yaml")
    try:
        snap = compile_policies(result.policies)
    except PolicyError:
        return
    for p in result.problems:
        assert p.line >= 1
    c = Cluster(snap, *PODS)
    assert verdicts(c)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def _replace(node: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    copy = dict(node) if isinstance(node, dict) else list(node)
    copy[path[0]] = _replace(node[path[0]], path[1:], value)  # type: ignore[index]
    return copy


EXAMPLE_DOCS = [d for f in ("frontend-egress.yaml", "my-api-l7.yaml")
                for d in yaml.safe_load_all(
                    (Path(__file__).parents[3] / "examples" / f).read_text())]


@given(st.sampled_from(EXAMPLE_DOCS), st.data(), documents)
def test_mutated_example_policies_never_crash(doc: dict[str, Any], data: st.DataObject,
                                              value: Any) -> None:
    path = data.draw(st.sampled_from(_paths(doc)))
    mutated = _replace(doc, path, value)
    result = load_text(yaml.safe_dump(mutated), "mut.yaml")
    assert all(p.line >= 1 for p in result.problems)
    assert not (result.policies and result.errors)
    compile_policies(result.policies)
