"""Identities (numbering, IP resolution, ipcache) and the policy-map entries of an endpoint."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from policy_helpers import cnp, pod, snapshot

from policy.compile import compile_from_paths
from policy.datapath import lookup
from policy.identity import NodeInfo, build_identities
from policy.types import (
    FIRST_CIDR_IDENTITY,
    DatapathEntry,
    Direction,
    L4Action,
    Proto,
    ReservedIdentity,
)

EXAMPLES = Path(__file__).parents[3] / "examples"
FRONTEND = pod("default", "frontend", {"role": "frontend"})
OTHER = pod("default", "other", {"app": "other"})
MY_API = pod("default", "my-api", {"app": "my-api"}, node="node2")
MY_API_2 = pod("default", "my-api-2", {"app": "my-api"}, node="node2")
KUBE_DNS = pod("kube-system", "kube-dns", {"k8s-app": "kube-dns"})
PODS = [FRONTEND, OTHER, MY_API, MY_API_2, KUBE_DNS]
CIDRS = cnp("c", "endpointSelector: {}\negress: [{toCIDR: [10.0.0.0/8, 10.1.0.0/16]}]\n")
NODES = [NodeInfo("node1", ipaddress.IPv4Address("192.168.0.1")),
         NodeInfo("node2", ipaddress.IPv4Address("192.168.0.2"))]


def test_identities_are_deterministic_and_shared_by_identical_label_sets() -> None:
    snap = snapshot(CIDRS)
    a = build_identities(snap, PODS, NODES, "node1")
    b = build_identities(snap, list(reversed(PODS)), NODES, "node1")
    assert {i.id: i.labels for i in a} == {i.id: i.labels for i in b}
    assert a.identity_for_ip(MY_API.ip) == a.identity_for_ip(MY_API_2.ip)
    assert a.identity_for_ip(MY_API.ip).id >= 256
    assert len({a.identity_for_ip(p.ip).id for p in PODS}) == 4


def test_ip_resolution_nodes_cidrs_world() -> None:
    snap = snapshot(CIDRS)
    table = build_identities(snap, PODS, NODES, "node1")
    ip = ipaddress.IPv4Address
    assert table.identity_for_ip(ip("192.168.0.1")).id == ReservedIdentity.HOST
    assert table.identity_for_ip(ip("192.168.0.2")).id == ReservedIdentity.REMOTE_NODE
    narrow = table.identity_for_ip(ip("10.1.2.3"))
    wide = table.identity_for_ip(ip("10.2.0.1"))
    assert narrow.id != wide.id and min(narrow.id, wide.id) >= FIRST_CIDR_IDENTITY
    assert {"cidr:10.0.0.0/8", "cidr:10.1.0.0/16", "reserved:world"} == set(narrow.label_strings())
    assert table.identity_for_ip(ip("8.8.8.8")).id == ReservedIdentity.WORLD
    entries = dict(table.ipcache_entries())
    assert entries[ipaddress.IPv4Network("10.1.0.0/16")] == narrow.id
    assert entries[ipaddress.IPv4Network(f"{FRONTEND.ip}/32")] >= 256
    assert table.by_id[int(ReservedIdentity.KUBE_APISERVER)].label_strings() == [
        "reserved:kube-apiserver", "reserved:remote-node"]


def test_example_datapath_entries() -> None:
    snap = compile_from_paths([EXAMPLES / "frontend-egress.yaml", EXAMPLES / "my-api-l7.yaml"])
    table = build_identities(snap, PODS, NODES, "node2")
    ident = {p.name: table.identity_for_ip(p.ip).id for p in PODS}
    assert snap.datapath_entries(MY_API, Direction.INGRESS, table) == [
        DatapathEntry(Direction.INGRESS, ReservedIdentity.HOST, Proto.ANY, 0, 65535,
                      L4Action.ALLOW, "allow-localhost"),
        DatapathEntry(Direction.INGRESS, ident["frontend"], Proto.TCP, 8080, 8080,
                      L4Action.REDIRECT_HTTP, "default/my-api-l7:ingress[0]"),
    ]
    assert sorted(snap.datapath_entries(FRONTEND, Direction.EGRESS, table),
                  key=lambda e: e.peer_identity) == [
        DatapathEntry(Direction.EGRESS, ident["my-api"], Proto.TCP, 8080, 8080,
                      L4Action.ALLOW, "default/frontend-egress:egress[2]"),
        DatapathEntry(Direction.EGRESS, ident["kube-dns"], Proto.ANY, 53, 53,
                      L4Action.REDIRECT_DNS, "default/frontend-egress:egress[0]"),
    ]
    assert snap.datapath_entries(OTHER, Direction.EGRESS, table) == []
    assert not snap.is_enforced(OTHER, Direction.EGRESS)


def test_deny_is_carved_out_of_allow_ranges_without_overlap() -> None:
    snap = snapshot(cnp("mix", """
endpointSelector: {matchLabels: {app: my-api}}
ingress:
  - fromEndpoints: [{}]
  - fromEndpoints: [{matchLabels: {role: frontend}}]
    toPorts:
      - ports: [{port: "8080", protocol: TCP}]
        rules: {http: [{method: GET}]}
ingressDeny:
  - fromEndpoints: [{matchLabels: {app: other}}]
    toPorts: [{ports: [{port: "1000", endPort: 2000, protocol: TCP}]}]
"""))
    table = build_identities(snap, PODS, NODES, "node2")
    entries = snap.datapath_entries(MY_API, Direction.INGRESS, table)
    other = table.identity_for_ip(OTHER.ip).id
    frontend = table.identity_for_ip(FRONTEND.ip).id
    got = [(e.proto, e.port_lo, e.port_hi, e.action) for e in entries if e.peer_identity == other]
    assert got == [
        (Proto.TCP, 0, 999, L4Action.ALLOW), (Proto.TCP, 1000, 2000, L4Action.DENY),
        (Proto.TCP, 2001, 65535, L4Action.ALLOW),
        (Proto.UDP, 0, 65535, L4Action.ALLOW), (Proto.SCTP, 0, 65535, L4Action.ALLOW),
    ]
    # §6: an L4 allow of the same peer on 8080 keeps the redirect (traffic is still proxied)
    e = lookup(entries, frontend, Proto.TCP, 8080)
    assert e is not None and e.action is L4Action.REDIRECT_HTTP
    e = lookup(entries, frontend, Proto.TCP, 8081)
    assert e is not None and (e.action, e.rule_id) == (L4Action.ALLOW, "default/mix:ingress[0]")
    assert lookup(entries, int(ReservedIdentity.WORLD), Proto.TCP, 80) is None
