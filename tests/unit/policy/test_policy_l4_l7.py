"""L4 ports and L7 (HTTP, DNS, toFQDNs) semantics, including the wildcard-L7 merge.

Cases from https://docs.cilium.io/en/latest/security/policy/language/ (layer4, layer7,
DNS based), Cilium's gettingstarted/demo.rst (Star Wars demo) and `pkg/policy/l4_filter_test.go`;
spec: /work/shared/reference/policy-semantics.md §5-§8.
"""

from __future__ import annotations

import pytest
from policy_helpers import Cluster, cnp, pod, snapshot

from policy.types import Decision, Direction, DropReason, L4Action, Proto

ING = Direction.INGRESS
EGR = Direction.EGRESS
CLIENT = pod("default", "client", {"app": "client"})
OTHER = pod("default", "other", {"app": "other"})
SERVER = pod("default", "server", {"app": "server"})
KUBE_DNS = pod("kube-system", "kube-dns", {"k8s-app": "kube-dns"})


def cluster(*texts: str) -> Cluster:
    return Cluster(snapshot(*texts), CLIENT, OTHER, SERVER, KUBE_DNS)


# https://docs.cilium.io/en/latest/security/policy/language/#layer-4-examples (l4.yaml,
# port ranges, protocol ANY)
PORTS = cnp("l4", """
endpointSelector: {matchLabels: {app: server}}
ingress:
  - toPorts:
      - ports: [{port: "80", protocol: TCP}]
  - toPorts:
      - ports: [{port: "8000", endPort: 8010, protocol: TCP}]
  - toPorts:
      - ports: [{port: "5353"}]
  - toPorts:
      - ports: [{port: https, protocol: TCP}]
""")


@pytest.mark.parametrize(("port", "proto", "allowed"), [
    (80, Proto.TCP, True), (80, Proto.UDP, False), (81, Proto.TCP, False),
    (8000, Proto.TCP, True), (8005, Proto.TCP, True), (8010, Proto.TCP, True),
    (8011, Proto.TCP, False), (7999, Proto.TCP, False),
    (5353, Proto.UDP, True), (5353, Proto.TCP, True), (5353, Proto.SCTP, True),  # omitted = ANY
    (443, Proto.TCP, True),  # named port (IANA "https")
])
def test_ports_ranges_and_protocols(port: int, proto: Proto, allowed: bool) -> None:
    c = cluster(PORTS)
    action, _ = c.l4("server", ING, c.peer("client"), port, proto)
    assert (action is L4Action.ALLOW) is allowed


def test_port_zero_means_all_ports() -> None:
    c = cluster(cnp("all", "endpointSelector: {matchLabels: {app: server}}\n"
                           "ingress: [{toPorts: [{ports: [{port: '0', protocol: UDP}]}]}]\n"))
    assert c.l4("server", ING, c.peer("client"), 65535, Proto.UDP)[0] is L4Action.ALLOW
    assert c.l4("server", ING, c.peer("client"), 1, Proto.TCP)[0] is None


# Star Wars demo (gettingstarted/demo.rst, sw_l3_l4_l7_policy.yaml)
DEATHSTAR = cnp("rule1", """
description: "L7 policy to restrict access to specific HTTP call"
endpointSelector: {matchLabels: {app: server}}
ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
      - ports: [{port: "80", protocol: TCP}]
        rules:
          http:
            - method: "POST"
              path: "/v1/request-landing"
""")


@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("POST", "/v1/request-landing", True),
    ("PUT", "/v1/exhaust-port", False),
    ("post", "/v1/request-landing", False),  # case-sensitive
    ("POST", "/v1/request-landing/x", False),  # whole value must match
    ("POST", "/v1/request-landing?x=1", False),  # :path includes the query (§7)
    ("POST", "/x/v1/request-landing", False),
])
def test_http_method_and_path_full_match(method: str, path: str, allowed: bool) -> None:
    c = cluster(DEATHSTAR)
    v = c.http("server", ING, c.peer("client"), 80, method, path)
    assert v.is_allowed is allowed
    assert v.rule_id == "default/rule1:ingress[0]"
    if not allowed:
        assert v.reason is DropReason.POLICY_DENIED


def test_http_redirect_only_for_the_selected_peer() -> None:
    c = cluster(DEATHSTAR)
    assert c.l4("server", ING, c.peer("client"), 80) == (L4Action.REDIRECT_HTTP,
                                                         "default/rule1:ingress[0]")
    assert c.l4("server", ING, c.peer("other"), 80) == (None, "default-deny")
    v = c.http("server", ING, c.peer("other"), 80, "POST", "/v1/request-landing")
    assert v.decision is Decision.DENIED and v.rule_id == "default-deny"


HTTP_FIELDS = cnp("http-fields", r"""
endpointSelector: {matchLabels: {app: server}}
ingress:
  - toPorts:
      - ports: [{port: "80", protocol: TCP}]
        rules:
          http:
            - {method: GET, path: "/v1/.*"}
            - path: /public$
            - {method: PUT, headers: ["X-My-Header: true"]}
            - {method: DELETE, headers: ["X-Token"]}
            - host: api\.example\.com
            - host: foo.bar.com
            - method: PATCH
              headerMatches: [{name: X-Log, value: "yes", mismatch: LOG}]
            - method: OPTIONS
              headerMatches: [{name: X-Must, value: "yes"}]
""")


@pytest.mark.parametrize(("method", "path", "host", "headers", "allowed"), [
    ("GET", "/v1/", "", (), True),  # demo.rst: "/v1/.*" allows anything under /v1/
    ("GET", "/v1", "", (), False),
    ("POST", "/public", "", (), True),  # `$` is redundant
    ("PUT", "/", "", (("x-my-header", "true"),), True),
    ("PUT", "/", "", (("x-my-header", "True"),), False),  # exact, case-sensitive value
    ("PUT", "/", "", (), False),
    ("DELETE", "/", "", (("x-token", "anything"),), True),  # presence only
    ("DELETE", "/", "", (), False),
    ("HEAD", "/", "api.example.com", (), True),
    ("HEAD", "/", "api.example.com:8080", (), False),  # Host with port: full value (decision 4)
    ("HEAD", "/", "apiXexample.com", (), False),  # escaped dots
    ("HEAD", "/", "fooXbar.com", (), True),  # http.go: unescaped `.` matches any character
    ("PATCH", "/", "", (), True),  # mismatch LOG never denies
    ("OPTIONS", "/", "", (("x-must", "yes"),), True),
    ("OPTIONS", "/", "", (("x-must", "no"),), False),  # empty mismatch: deny
    ("OPTIONS", "/", "", (), False),
])
def test_http_rule_fields(method: str, path: str, host: str,
                          headers: tuple[tuple[str, str], ...], allowed: bool) -> None:
    c = cluster(HTTP_FIELDS)
    assert c.http("server", ING, c.peer("client"), 80, method, path, host, headers
                  ).is_allowed is allowed


def test_header_without_space_never_matches_and_warns() -> None:
    from policy_helpers import load
    text = cnp("nospace", """
endpointSelector: {matchLabels: {app: server}}
ingress:
  - toPorts:
      - ports: [{port: "80", protocol: TCP}]
        rules: {http: [{headers: ["X-A:b"]}]}
""")
    assert [w.line for w in load(text).warnings] == [11]  # README-decisions.md conflict 5
    c = cluster(text)
    assert not c.http("server", ING, c.peer("client"), 80, headers=(("x-a", "b"),)).is_allowed


# layer7.rst: "If a layer 4 rule is specified ... the layer 7 portions of the latter rule
# will have no effect"; l4_filter_test.go Case 2/7 (wildcard L7), policy-semantics.md §6.
MERGE = cnp("merge", """
endpointSelector: {matchLabels: {app: server}}
ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
      - ports: [{port: "80", protocol: TCP}]
        rules: {http: [{method: GET}]}
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
      - ports: [{port: "80", protocol: TCP}]
  - fromEndpoints: [{matchLabels: {app: other}}]
    toPorts:
      - ports: [{port: "80", protocol: TCP}]
        rules: {http: [{method: GET}]}
  - fromEntities: [world]
    toPorts:
      - ports: [{port: "80", protocol: TCP}]
""")


def test_l4_rule_on_the_same_port_makes_l7_wildcard_but_still_proxied() -> None:
    c = cluster(MERGE)
    assert c.l4("server", ING, c.peer("client"), 80)[0] is L4Action.REDIRECT_HTTP
    v = c.http("server", ING, c.peer("client"), 80, "DELETE", "/x")
    assert v.is_allowed and v.rule_id == "default/merge:ingress[1]"


def test_l4_only_rule_for_one_peer_does_not_relax_l7_for_another() -> None:
    c = cluster(MERGE)
    assert c.http("server", ING, c.peer("other"), 80, "GET").is_allowed
    assert not c.http("server", ING, c.peer("other"), 80, "DELETE").is_allowed
    assert c.l4("server", ING, c.ip("1.2.3.4"), 80)[0] is L4Action.ALLOW  # world: L4 only


def test_two_l7_rules_union() -> None:
    c = cluster(cnp("u", """
endpointSelector: {matchLabels: {app: server}}
ingress:
  - toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{method: GET}]}}]
  - toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{method: PUT}]}}]
"""))
    assert c.http("server", ING, c.peer("client"), 80, "GET").is_allowed
    assert c.http("server", ING, c.peer("client"), 80, "PUT").is_allowed
    assert not c.http("server", ING, c.peer("client"), 80, "POST").is_allowed


# layer7.rst DNS policy (dns-visibility / toFQDNs examples); matchpattern.go
DNS = cnp("fqdn", """
endpointSelector: {matchLabels: {app: client}}
egress:
  - toEndpoints:
      - matchLabels: {"k8s:io.kubernetes.pod.namespace": kube-system, "k8s:k8s-app": kube-dns}
    toPorts:
      - ports: [{port: "53", protocol: ANY}]
        rules:
          dns:
            - matchName: "cilium.io"
            - matchPattern: "*.cilium.io"
            - matchPattern: "**.example.org"
            - matchPattern: "api.**.example.net"
  - toFQDNs:
      - matchName: "cilium.io"
      - matchPattern: "*.cilium.io"
    toPorts:
      - ports: [{port: "443", protocol: TCP}]
""")


@pytest.mark.parametrize(("qname", "allowed"), [
    ("cilium.io", True), ("CILIUM.IO.", True), ("sub.cilium.io", True),
    ("a.b.cilium.io", False), ("subcilium.io", False), ("app.example.org", True),
    ("a.b.example.org", True), ("example.org", False), ("evil.com", False),
    # README-decisions.md conflict 3: mid-pattern `**` is `*` (merged Cilium code)
    ("api.x.example.net", True), ("api..example.net", False), ("api.a.b.example.net", False),
    # conflict 6: `*` may match the empty label in Cilium's regex; malformed names are refused
    (".cilium.io", False),
])
def test_dns_rules(qname: str, allowed: bool) -> None:
    c = cluster(DNS)
    v = c.dns("client", c.peer("kube-dns"), qname)
    assert v.is_allowed is allowed
    malformed = ".." in qname or qname.startswith(".")
    assert v.rule_id == ("malformed-qname" if malformed else "default/fqdn:egress[0]")


def test_dns_server_must_be_selected_by_the_rule() -> None:
    c = cluster(DNS)
    v = c.dns("client", c.peer("server"), "cilium.io")
    assert not v.is_allowed and v.rule_id == "default-deny"
    assert c.l4("client", EGR, c.peer("kube-dns"), 53, Proto.UDP)[0] is L4Action.REDIRECT_DNS


@pytest.mark.parametrize(("fqdn", "port", "allowed"), [
    ("cilium.io", 443, True), ("docs.cilium.io", 443, True), ("cilium.io", 80, False),
    ("evil.example.net", 443, False), (None, 443, False),
])
def test_to_fqdns(fqdn: str | None, port: int, allowed: bool) -> None:
    c = cluster(DNS)
    peer = c.ip("104.198.14.52", *([fqdn] if fqdn else []))
    assert c.allowed(c.peer("client"), peer, port) is allowed


def test_to_fqdns_never_matches_a_pod() -> None:
    c = cluster(DNS)
    from policy.types import Peer
    p = c.peer("server")
    pod_with_name = Peer(p.identity, p.ip, p.endpoint, frozenset({"cilium.io."}))
    assert not c.allowed(c.peer("client"), pod_with_name, 443)


def test_fqdn_selectors_for_the_proxy() -> None:
    c = cluster(DNS, cnp("fq-http", """
endpointSelector: {matchLabels: {app: client}}
egress:
  - toFQDNs: [{matchName: api.example.com}]
    toPorts:
      - ports: [{port: "80", protocol: TCP}]
        rules: {http: [{method: GET}]}
"""))
    rules = c.snap.fqdn_selectors(CLIENT)
    assert [(r.rule_id, [(p.proto, p.lo, p.action) for p in r.ports]) for r in rules] == [
        ("default/fqdn:egress[1]", [(Proto.TCP, 443, L4Action.ALLOW)]),
        ("default/fq-http:egress[0]", [(Proto.TCP, 80, L4Action.REDIRECT_HTTP)]),
    ]
    assert rules[0].matcher.matches("www.cilium.io.")
    assert rules[0].port_ranges() == frozenset({(6, 443, 443)})
    assert c.snap.fqdn_selectors(SERVER) == []
