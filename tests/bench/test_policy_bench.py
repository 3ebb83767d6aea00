"""Policy engine benchmark (run by `make bench`; prints figures, asserts no timing).

Targets from the issue: compiling 1,000 policies over 1,000 endpoints in under 2 s, and one
L7 HTTP decision in under 10 us (the README example, after the first, cached, decision).
The figures are printed with their ratio to the target.
"""

from __future__ import annotations

import ipaddress
import time
from pathlib import Path

import pytest

from policy.compile import compile_policies
from policy.engine import decide_dns, decide_http
from policy.identity import NodeInfo, build_identities
from policy.load import load_documents, load_text
from policy.types import Direction, Endpoint, HttpRequestMeta, Peer

pytestmark = pytest.mark.bench

N_POLICIES = 1000
N_ENDPOINTS = 1000
N_DECISIONS = 20_000
COMPILE_TARGET_S = 2.0
HTTP_TARGET_US = 10.0
EXAMPLES = Path(__file__).parents[2] / "examples"


def _policy(i: int) -> str:
    ns = f"ns{i % 10}"
    return f"""apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: p{i}, namespace: {ns}}}
spec:
  endpointSelector:
    matchLabels: {{app: app{i}}}
  ingress:
    - fromEndpoints:
        - matchLabels: {{app: app{(i + 1) % N_POLICIES}}}
        - matchExpressions: [{{key: tier, operator: In, values: [web, api]}}]
      toPorts:
        - ports: [{{port: "8080", protocol: TCP}}, {{port: "9000", endPort: 9100, protocol: TCP}}]
          rules:
            http:
              - {{method: GET, path: "/api/v{i % 3}/.*"}}
              - {{method: POST, path: /submit, headers: ["X-Token"]}}
  egress:
    - toEndpoints: [{{matchLabels: {{"k8s:io.kubernetes.pod.namespace": kube-system}}}}]
      toPorts:
        - ports: [{{port: "53", protocol: ANY}}]
          rules: {{dns: [{{matchPattern: "*.svc.cluster.local"}}]}}
    - toFQDNs: [{{matchName: "svc{i}.example.com"}}]
      toPorts: [{{ports: [{{port: "443", protocol: TCP}}]}}]
    - toCIDRSet: [{{cidr: 10.{i % 250}.0.0/16, except: [10.{i % 250}.1.0/24]}}]
  egressDeny:
    - toEntities: [world]
      toPorts: [{{ports: [{{port: "25", protocol: TCP}}]}}]
"""


def _endpoints() -> list[Endpoint]:
    base = int(ipaddress.IPv4Address("10.200.0.0"))
    return [Endpoint(f"ns{i % 10}", f"pod{i}",
                     (("app", f"app{i % N_POLICIES}"), ("tier", ("web", "db")[i % 2])),
                     ipaddress.IPv4Address(base + i), f"node{i % 5}")
            for i in range(N_ENDPOINTS)]


def test_compile_1000_policies_over_1000_endpoints() -> None:
    text = "---\n".join(_policy(i) for i in range(N_POLICIES))
    endpoints = _endpoints()
    nodes = [NodeInfo(f"node{i}", ipaddress.IPv4Address(f"192.168.0.{i + 1}")) for i in range(5)]
    t0 = time.perf_counter()
    result = load_text(text, "bench.yaml")
    t1 = time.perf_counter()
    snap = compile_policies(result.policies)
    t2 = time.perf_counter()
    table = build_identities(snap, endpoints, nodes, "node0")
    enforced = sum(snap.is_enforced(ep, d) for ep in endpoints for d in Direction)
    fqdn = sum(len(snap.fqdn_selectors(ep)) for ep in endpoints)
    t3 = time.perf_counter()
    local = [ep for ep in endpoints if ep.node == "node0"][:20]
    entries = sum(len(snap.datapath_entries(ep, d, table)) for ep in local for d in Direction)
    t4 = time.perf_counter()
    assert not result.errors and len(result.policies) == N_POLICIES
    assert enforced == 2 * N_ENDPOINTS and fqdn == N_ENDPOINTS and entries > 0
    total = t3 - t0
    print(f"\npolicy compile: {N_POLICIES} policies, {N_ENDPOINTS} endpoints, {len(table)} "
          f"identities: parse+validate {t1 - t0:.3f} s, compile {t2 - t1:.3f} s, identities+"
          f"per-endpoint selection {t3 - t2:.3f} s; total {total:.3f} s "
          f"(target {COMPILE_TARGET_S} s, ratio {total / COMPILE_TARGET_S:.2f})")
    print(f"datapath entries for {len(local)} local endpoints x 2 directions over "
          f"{len(table)} identities: {entries} entries in {t4 - t3:.3f} s "
          f"({(t4 - t3) / (2 * len(local)) * 1e3:.1f} ms per endpoint-direction)")


def _per_call_us(fn: object, n: int) -> float:
    call = fn  # type: ignore[assignment]
    t0 = time.perf_counter()
    for _ in range(n):
        call()  # type: ignore[operator]
    return (time.perf_counter() - t0) / n * 1e6


def test_l7_http_and_dns_decision_latency() -> None:
    result = load_documents([EXAMPLES / "frontend-egress.yaml", EXAMPLES / "my-api-l7.yaml"])
    snap = compile_policies(result.policies)
    ip = ipaddress.IPv4Address
    frontend = Endpoint("default", "frontend", (("role", "frontend"),), ip("10.0.1.2"), "node1")
    my_api = Endpoint("default", "my-api", (("app", "my-api"),), ip("10.0.2.2"), "node2")
    dns = Endpoint("kube-system", "kube-dns", (("k8s-app", "kube-dns"),), ip("10.0.1.4"), "node1")
    table = build_identities(snap, [frontend, my_api, dns], [], "node2")
    src = Peer(table.identity_for_endpoint(frontend), frontend.ip, frontend)
    server = Peer(table.identity_for_endpoint(dns), dns.ip, dns)
    allow = HttpRequestMeta("GET", "/api/users", "my-api:8080", (("accept", "*/*"),))
    deny = HttpRequestMeta("POST", "/api/users", "my-api:8080", (("accept", "*/*"),))
    assert decide_http(snap, Direction.INGRESS, my_api, src, 8080, allow).is_allowed
    assert not decide_http(snap, Direction.INGRESS, my_api, src, 8080, deny).is_allowed
    us_allow = _per_call_us(lambda: decide_http(snap, Direction.INGRESS, my_api, src, 8080,
                                                allow), N_DECISIONS)
    us_deny = _per_call_us(lambda: decide_http(snap, Direction.INGRESS, my_api, src, 8080,
                                               deny), N_DECISIONS)
    us_dns = _per_call_us(lambda: decide_dns(snap, frontend, server, 53, "api.stripe.com"),
                          N_DECISIONS)
    print(f"\nL7 HTTP decision (README example, cached plan): allowed {us_allow:.2f} us, "
          f"denied {us_deny:.2f} us (target {HTTP_TARGET_US} us, ratio "
          f"{max(us_allow, us_deny) / HTTP_TARGET_US:.2f}); DNS decision {us_dns:.2f} us")
