"""L3 semantics: selectors, namespaces, default deny, deny rules, entities, CIDRs.

Cases come from Cilium's documentation (cited per table); the spec is
/work/shared/reference/policy-semantics.md §1-§4, §9.
"""

from __future__ import annotations

import pytest
from policy_helpers import Cluster, ccnp, cnp, pod, snapshot

from policy.types import Direction, L4Action, Proto

FRONTEND = pod("default", "frontend", {"role": "frontend"})
BACKEND = pod("default", "backend", {"role": "backend"})
OTHER = pod("default", "other", {"app": "other"})
PROD_FRONTEND = pod("prod", "prod-frontend", {"role": "frontend"})
KUBE_DNS = pod("kube-system", "kube-dns", {"k8s-app": "kube-dns"})
ALL_PODS = (FRONTEND, BACKEND, OTHER, PROD_FRONTEND, KUBE_DNS)


def cluster(*texts: str) -> Cluster:
    return Cluster(snapshot(*texts), *ALL_PODS)


# https://docs.cilium.io/en/latest/security/policy/language/#endpoints-based (l3-rule)
L3_RULE = cnp("l3-rule", """
endpointSelector: {matchLabels: {role: backend}}
ingress:
  - fromEndpoints: [{matchLabels: {role: frontend}}]
""")


@pytest.mark.parametrize(("src", "allowed"), [
    ("frontend", True),
    ("other", False),
    ("prod-frontend", False),  # implicit namespace of a namespaced policy (§2)
])
def test_endpoints_based_rule(src: str, allowed: bool) -> None:
    c = cluster(L3_RULE)
    assert c.allowed(c.peer(src), c.peer("backend"), 80) is allowed


def test_unselected_endpoint_is_default_allow_and_world_is_denied_to_selected() -> None:
    c = cluster(L3_RULE)
    assert c.allowed(c.peer("backend"), c.peer("frontend"), 80)  # no policy selects frontend
    assert not c.allowed(c.ip("1.2.3.4"), c.peer("backend"), 80)
    assert c.snap.is_enforced(BACKEND, Direction.INGRESS)
    assert not c.snap.is_enforced(BACKEND, Direction.EGRESS)


# https://docs.cilium.io/en/latest/security/policy/language/#ingress-default-deny
def test_empty_ingress_rule_selects_nothing_but_enables_default_deny() -> None:
    c = cluster(cnp("deny-all", "endpointSelector: {}\ningress: [{}]\n"))
    assert not c.allowed(c.peer("frontend"), c.peer("backend"), 80)
    assert c.allowed(c.peer("backend"), c.peer("prod-frontend"), 80)  # other namespace unselected


# layer3.rst "allow all ingress from the same namespace": fromEndpoints [{}] in a CNP.
@pytest.mark.parametrize(("src", "allowed"), [
    ("frontend", True), ("other", True), ("prod-frontend", False), ("world", False),
    ("host", True),  # allow-localhost: host -> local pod is always allowed (§3)
    ("remote-node", False),
])
def test_empty_from_endpoints_means_this_namespace(src: str, allowed: bool) -> None:
    c = cluster(cnp("same-ns", "endpointSelector: {}\ningress:\n  - fromEndpoints: [{}]\n"))
    peer = c.ip("1.2.3.4") if src == "world" else (
        c.entity(src) if src in ("host", "remote-node") else c.peer(src))
    assert c.allowed(peer, c.peer("backend"), 80) is allowed


# https://docs.cilium.io/en/latest/security/policy/kubernetes/#namespaces (cross namespace)
def test_explicit_namespace_label_opens_another_namespace() -> None:
    c = cluster(cnp("x-ns", """
endpointSelector: {matchLabels: {role: backend}}
ingress:
  - fromEndpoints:
      - matchLabels: {"k8s:io.kubernetes.pod.namespace": prod, role: frontend}
"""))
    assert c.allowed(c.peer("prod-frontend"), c.peer("backend"), 80)
    assert not c.allowed(c.peer("frontend"), c.peer("backend"), 80)


def test_namespace_exists_expression_means_any_namespace() -> None:
    # kubernetes.rst: namespace expressions open the selector to every namespace
    c = cluster(cnp("any-ns", """
endpointSelector: {matchLabels: {role: backend}}
ingress:
  - fromEndpoints:
      - matchLabels: {role: frontend}
        matchExpressions: [{key: io.kubernetes.pod.namespace, operator: Exists}]
"""))
    assert c.allowed(c.peer("prod-frontend"), c.peer("backend"), 80)
    assert c.allowed(c.peer("frontend"), c.peer("backend"), 80)


def test_endpoint_selector_namespace_is_forced_to_the_policy_namespace() -> None:
    c = cluster(cnp("illegal", """
endpointSelector: {matchLabels: {"k8s:io.kubernetes.pod.namespace": prod}}
ingress: [{}]
"""))
    assert c.snap.is_enforced(BACKEND, Direction.INGRESS)  # "removing illegal namespace match"
    assert not c.snap.is_enforced(PROD_FRONTEND, Direction.INGRESS)


def test_namespace_labels_in_a_cnp_follow_cilium_code_no_injection() -> None:
    # README-decisions.md conflict 2: code (no namespace added) over docs ("ignored").
    c = Cluster(snapshot(cnp("nslabels", """
endpointSelector: {matchLabels: {role: backend}}
ingress:
  - fromEndpoints:
      - matchLabels: {"io.cilium.k8s.namespace.labels.team": blue}
""")), BACKEND, pod("blue", "b", {"io.cilium.k8s.namespace.labels.team": "blue"}))
    assert c.allowed(c.peer("b"), c.peer("backend"), 80)


# kubernetes.rst "Match Expressions" and examples/policies/l3/match-expressions/*.yaml
@pytest.mark.parametrize(("expr", "src", "allowed"), [
    ("{key: role, operator: In, values: [frontend, backend]}", "frontend", True),
    ("{key: role, operator: In, values: [backend]}", "frontend", False),
    ("{key: role, operator: NotIn, values: [frontend]}", "frontend", False),
    ("{key: role, operator: NotIn, values: [frontend]}", "other", True),
    ("{key: app, operator: Exists}", "other", True),
    ("{key: app, operator: Exists}", "frontend", False),
    ("{key: app, operator: DoesNotExist}", "frontend", True),
    ("{key: 'k8s:app', operator: DoesNotExist}", "other", False),
])
def test_match_expressions(expr: str, src: str, allowed: bool) -> None:
    c = cluster(cnp("expr", f"""
endpointSelector: {{matchLabels: {{role: backend}}}}
ingress:
  - fromEndpoints: [{{matchExpressions: [{expr}]}}]
"""))
    assert c.allowed(c.peer(src), c.peer("backend"), 80) is allowed


def test_two_selectors_are_or_and_fields_inside_are_and() -> None:
    c = cluster(cnp("or", """
endpointSelector: {matchLabels: {role: backend}}
ingress:
  - fromEndpoints:
      - {matchLabels: {role: frontend}, matchExpressions: [{key: app, operator: Exists}]}
      - matchLabels: {app: other}
"""))
    assert not c.allowed(c.peer("frontend"), c.peer("backend"), 80)  # AND fails
    assert c.allowed(c.peer("other"), c.peer("backend"), 80)  # second selector


@pytest.mark.parametrize(("key", "allowed"), [("k8s:role", True), ("any:role", True),
                                              ("role", True), ("reserved:role", False)])
def test_label_source_prefixes(key: str, allowed: bool) -> None:
    # pkg/labels: no prefix = any:, k8s: only k8s-sourced labels (pod labels are k8s)
    c = cluster(cnp("src", f"""
endpointSelector: {{matchLabels: {{role: backend}}}}
ingress:
  - fromEndpoints: [{{matchLabels: {{"{key}": frontend}}}}]
"""))
    assert c.allowed(c.peer("frontend"), c.peer("backend"), 80) is allowed


def test_nil_versus_empty_from_endpoints() -> None:
    # l4_filter_test.go Case 1B/1C: omitted = no L3 constraint, [] = selects nothing
    c = cluster(cnp("empty", """
endpointSelector: {matchLabels: {role: backend}}
ingress:
  - fromEndpoints: []
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
  - toPorts: [{ports: [{port: "81", protocol: TCP}]}]
"""))
    assert not c.allowed(c.peer("frontend"), c.peer("backend"), 80)
    assert c.allowed(c.ip("1.2.3.4"), c.peer("backend"), 81)  # toPorts only: every peer


# CCNP: https://docs.cilium.io/en/latest/security/policy/language/ (clusterwide), issue #12844
def test_ccnp_selects_all_namespaces_and_empty_peer_is_all_pods_not_world() -> None:
    c = cluster(ccnp("cw", """
endpointSelector: {matchLabels: {role: frontend}}
ingress:
  - fromEndpoints: [{}]
"""))
    assert c.snap.is_enforced(PROD_FRONTEND, Direction.INGRESS)
    assert c.allowed(c.peer("kube-dns"), c.peer("prod-frontend"), 80)
    assert not c.allowed(c.ip("8.8.8.8"), c.peer("prod-frontend"), 80)


# https://docs.cilium.io/en/latest/security/policy/language/#entities-based
@pytest.mark.parametrize(("entity", "peer", "allowed"), [
    ("world", "ip:1.2.3.4", True), ("world", "pod:frontend", False),
    ("cluster", "pod:prod-frontend", True), ("cluster", "remote-node", True),
    ("cluster", "ip:1.2.3.4", False), ("host", "host", True), ("host", "remote-node", False),
    ("remote-node", "remote-node", True), ("remote-node", "kube-apiserver", True),
    ("kube-apiserver", "kube-apiserver", True), ("kube-apiserver", "remote-node", False),
    ("all", "ip:1.2.3.4", True), ("all", "pod:prod-frontend", True),
])
def test_to_entities(entity: str, peer: str, allowed: bool) -> None:
    c = cluster(cnp("ent", f"endpointSelector: {{matchLabels: {{role: backend}}}}\n"
                            f"egress:\n  - toEntities: [{entity}]\n"))
    kind, _, name = peer.partition(":")
    p = c.ip(name) if kind == "ip" else c.peer(name) if kind == "pod" else c.entity(kind)
    assert c.allowed(c.peer("backend"), p, 443) is allowed


# https://docs.cilium.io/en/latest/security/policy/language/#ip-cidr-based (cidr.yaml)
CIDR = cnp("cidr-rule", """
endpointSelector: {matchLabels: {role: backend}}
egress:
  - toCIDR: [20.1.1.1/32]
  - toCIDRSet:
      - cidr: 10.0.0.0/8
        except: [10.96.0.0/12]
""")


@pytest.mark.parametrize(("ip", "allowed"), [
    ("20.1.1.1", True), ("20.1.1.2", False), ("10.1.2.3", True), ("10.96.0.1", False),
    ("10.111.255.255", False), ("10.112.0.0", True), ("8.8.8.8", False),
])
def test_cidr_and_except(ip: str, allowed: bool) -> None:
    c = cluster(CIDR)
    assert c.allowed(c.peer("backend"), c.ip(ip), 443) is allowed


def test_cidr_never_matches_pods_even_inside_the_prefix() -> None:
    c = cluster(CIDR)  # the pods' IPs are in 10.1.0.0/16
    assert not c.allowed(c.peer("backend"), c.peer("frontend"), 443)


def test_wide_cidr_rule_selects_narrower_cidr_identity() -> None:
    c = cluster(CIDR, cnp("narrow", "endpointSelector: {matchLabels: {role: x}}\n"
                                    "egress: [{toCIDR: [10.5.0.0/16]}]\n"))
    ident = c.ip("10.5.1.1").identity
    assert "cidr:10.0.0.0/8" in ident.label_strings() and ident.id >= 1 << 24
    assert c.allowed(c.peer("backend"), c.ip("10.5.1.1"), 443)


# https://docs.cilium.io/en/latest/security/policy/language/#deny-policies
def test_deny_wins_over_allow_from_another_policy() -> None:
    allow_all = cnp("allow-all", "endpointSelector: {}\ningress: [{fromEntities: [all]}]\n")
    deny = cnp("deny-frontend", """
endpointSelector: {matchLabels: {role: backend}}
ingressDeny:
  - fromEndpoints: [{matchLabels: {role: frontend}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
""")
    c = cluster(allow_all, deny)
    assert c.l4("backend", Direction.INGRESS, c.peer("frontend"), 80) == (
        L4Action.DENY, "default/deny-frontend:ingressDeny[0]")
    assert c.allowed(c.peer("frontend"), c.peer("backend"), 81)
    out = c.trace(c.peer("frontend"), c.peer("backend"), 80)
    assert out["ingress"]["reason"] == "POLICY_DENY"


def test_deny_only_policy_enables_default_deny_and_except_does_not_allow() -> None:
    # cilium-cli client-egress-to-cidr-external-deny.yaml comment
    c = cluster(cnp("deny-only", """
endpointSelector: {matchLabels: {role: backend}}
egressDeny:
  - toCIDRSet: [{cidr: 0.0.0.0/0, except: [192.168.0.0/16]}]
"""))
    assert c.snap.is_enforced(BACKEND, Direction.EGRESS)
    assert c.l4("backend", Direction.EGRESS, c.ip("1.1.1.1"), 80)[0] is L4Action.DENY
    assert c.l4("backend", Direction.EGRESS, c.ip("192.168.1.1"), 80)[0] is None  # default deny


def test_enable_default_deny_false_keeps_default_allow() -> None:
    # intro.rst "enableDefaultDeny" (intercept-all-dns example)
    c = cluster(cnp("dns-visibility", """
endpointSelector: {}
enableDefaultDeny: {egress: false, ingress: false}
egress:
  - toEndpoints: [{matchLabels: {"k8s:io.kubernetes.pod.namespace": kube-system}}]
    toPorts:
      - ports: [{port: "53", protocol: ANY}]
        rules: {dns: [{matchPattern: "*.cluster.local"}]}
"""))
    assert not c.snap.is_enforced(FRONTEND, Direction.EGRESS)
    assert c.allowed(c.peer("frontend"), c.ip("1.2.3.4"), 443)
    assert c.l4("frontend", Direction.EGRESS, c.peer("kube-dns"), 53, Proto.UDP)[0] is \
        L4Action.REDIRECT_DNS
    # README-decisions.md conflict 1: current main appends allow-all L7 in default-allow mode
    assert c.dns("frontend", c.peer("kube-dns"), "example.com").is_allowed


def test_enable_default_deny_false_does_not_relax_when_another_policy_enforces() -> None:
    relaxed = cnp("relaxed", """
endpointSelector: {}
enableDefaultDeny: {egress: false}
egress:
  - toEndpoints: [{matchLabels: {"k8s:io.kubernetes.pod.namespace": kube-system}}]
    toPorts:
      - ports: [{port: "53", protocol: ANY}]
        rules: {dns: [{matchPattern: "*.cluster.local"}]}
""")
    strict = cnp("strict", "endpointSelector: {}\negress: [{toEntities: [world]}]\n")
    c = cluster(relaxed, strict)
    assert not c.dns("frontend", c.peer("kube-dns"), "example.com").is_allowed
    assert c.dns("frontend", c.peer("kube-dns"), "svc.cluster.local").is_allowed
    # `*` never crosses a dot
    assert not c.dns("frontend", c.peer("kube-dns"), "a.svc.cluster.local").is_allowed


def test_empty_to_ports_is_no_l4_member() -> None:
    # `toPorts: []` = L3 only; with no L3 member either, the rule selects nothing
    c = cluster(cnp("tp", """
endpointSelector: {matchLabels: {role: backend}}
ingress:
  - fromEndpoints: [{matchLabels: {role: frontend}}]
    toPorts: []
  - toPorts: []
"""))
    assert c.allowed(c.peer("frontend"), c.peer("backend"), 1234, Proto.UDP)
    assert not c.allowed(c.peer("other"), c.peer("backend"), 80)
