"""Sandbox topology: schema validation with FILE:LINE errors, defaults, endpoints file.

Pure: no root, no sockets, no namespaces (the netns builder's naming helpers are pure).
"""

from __future__ import annotations

import textwrap
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
import yaml

from agent.sandbox.netns import IFNAMSIZ, netns_names, resolv_conf, veth_name
from agent.sandbox.topology import (
    DEFAULT_TOPOLOGY,
    Topology,
    load_topology,
    parse_topology,
    render_endpoints,
)
from policy.errors import ConfigError

K8S_LABELS = {"io.cilium.k8s.policy.serviceaccount": "default",
              "io.cilium.k8s.policy.cluster": "default"}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "topo.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


# -- the default topology: names and addresses others rely on ---------------------------
def test_default_topology_is_the_readme_cluster() -> None:
    t = load_topology()
    assert t.source == str(DEFAULT_TOPOLOGY)
    assert [(n.name, str(n.ip), str(n.pod_cidr)) for n in t.nodes] == [
        ("node1", "192.0.2.11", "10.244.1.0/24"), ("node2", "192.0.2.12", "10.244.2.0/24")]
    pods = {p.ref: p for p in t.pods}
    assert set(pods) == {"default/frontend", "default/other", "default/my-api",
                         "kube-system/kube-dns"}
    assert pods["default/frontend"].labels == {"role": "frontend", **K8S_LABELS,
                                               "io.kubernetes.pod.namespace": "default"}
    assert pods["default/frontend"].node == "node1"
    assert pods["default/other"].labels["app"] == "other"
    assert (pods["default/my-api"].node, pods["default/my-api"].server,
            pods["default/my-api"].ports) == ("node2", "http-echo", (8080,))
    dns = t.dns_pod
    assert dns is not None and dns.ref == "kube-system/kube-dns" and dns.node == "node1"
    assert dns.labels["k8s-app"] == "kube-dns" and dns.ports == (53,)
    assert dns.labels["io.kubernetes.pod.namespace"] == "kube-system"
    assert {(e.name, str(e.ip), e.ports) for e in t.external} == {
        ("api.stripe.com", "203.0.113.10", (80, 443)),
        ("x.internal.example.com", "203.0.113.11", (80, 443)),
        ("evil.example.net", "203.0.113.12", (80, 443))}
    assert t.external_ip == IPv4Address("192.0.2.100")
    assert t.external_cidr == IPv4Network("203.0.113.0/24")
    records = dict(t.all_dns_records())
    assert records["api.stripe.com"] == IPv4Address("203.0.113.10")
    assert records["my-api.default.svc.cluster.local"] == pods["default/my-api"].ip
    assert records["kube-dns.kube-system.svc.cluster.local"] == dns.ip


def test_defaults_fill_addresses_in_order(tmp_path: Path) -> None:
    t = load_topology(write(tmp_path, """
        nodes: [{name: a}, {name: b}]
        pods:
          - {namespace: ns, name: p1, node: a, ip: 10.244.1.10}
          - {namespace: ns, name: p2, node: a}
          - {namespace: ns, name: p3, node: b, server: http-echo}
          - {namespace: ns, name: dns, node: b, server: dns, labels: {flag: yes, n: 5}}
    """))
    assert [str(n.ip) for n in t.nodes] == ["192.0.2.11", "192.0.2.12"]
    assert [str(n.gateway) for n in t.nodes] == ["10.244.1.1", "10.244.2.1"]
    # p1 claimed .10 explicitly, so the automatic address of p2 skips it.
    assert [str(p.ip) for p in t.pods] == ["10.244.1.10", "10.244.1.11", "10.244.2.10",
                                           "10.244.2.11"]
    assert t.pod("ns/p3").ports == (8080,) and t.pod("ns/dns").ports == (53,)
    assert t.pod("ns/dns").labels["flag"] == "true" and t.pod("ns/dns").labels["n"] == "5"
    assert t.dns_ttl_s == 30 and t.external == ()


def test_dns_section(tmp_path: Path) -> None:
    t = load_topology(write(tmp_path, """
        nodes: [{name: a}]
        dns:
          ttl: 2
          records: [{name: DB.Example.org, ip: 203.0.113.50}]
    """))
    assert t.dns_ttl_s == 2
    assert t.dns_records == (("db.example.org", IPv4Address("203.0.113.50")),)


BAD_CASES = [
    # (text, line, message fragment)
    ("nodes: [{name: a}\n", 2, "YAML syntax error"),
    ("nodes:\n  - name: a\n    bad: : x\n", 3, "YAML syntax error"),
    ("", 1, "empty topology"),
    ("- a\n- b\n", 1, "topology must be a mapping"),
    ("pods: []\n", 1, "missing field 'nodes'"),
    ("nodes: []\n", 1, "at least one node"),
    ("nodes: [{name: a}]\nextra: 1\n", 2, "unknown field 'extra'"),
    ("nodes:\n  - name: a\n  - name: a\n", 3, "reserved or duplicate"),
    ("nodes:\n  - name: Bad_Name\n", 2, "not a valid name"),
    ("nodes:\n  - name: external\n", 2, "reserved"),
    ("nodes:\n  - {name: a}\n  - {name: b, pod_cidr: 10.244.1.0/25}\n", 3, "overlaps"),
    ("nodes:\n  - name: a\n    pod_cidr: 10.244.1.0/33\n", 3, "bad CIDR"),
    ("nodes:\n  - name: a\n    pod_cidr: 10.244.1.1/24\n", 3, "bad CIDR"),
    ("nodes:\n  - name: a\n    ip: 192.0.2.300\n", 3, "bad IPv4 address"),
    ("nodes:\n  - name: a\n    ip: 10.0.0.1\n", 3, "not inside 192.0.2.0/24"),
    ("nodes:\n  - name: a\n    ip: 192.0.2.100\n", 3, "duplicate IP 192.0.2.100"),
    ("nodes:\n  - name: a\n    name: b\n", 3, "duplicate key 'name'"),
    ("nodes: [{name: a}]\npods:\n  - namespace: d\n    name: p\n", 3, "missing field 'node'"),
    ("nodes: [{name: a}]\npods:\n  - namespace: d\n    name: p\n    node: zz\n", 5,
     "unknown node 'zz'"),
    ("nodes: [{name: a}]\npods:\n  - {namespace: d, name: p, node: a, ip: 10.244.2.5}\n", 3,
     "not inside 10.244.1.0/24"),
    ("nodes: [{name: a}]\npods:\n  - {namespace: d, name: p, node: a, ip: 10.244.1.20}\n"
     "  - {namespace: d, name: q, node: a, ip: 10.244.1.20}\n", 4, "duplicate IP 10.244.1.20"),
    ("nodes: [{name: a}]\npods:\n  - {namespace: d, name: p, node: a, ip: 10.244.1.1}\n", 3,
     "duplicate IP 10.244.1.1"),
    ("nodes: [{name: a}]\npods:\n  - {namespace: d, name: p, node: a}\n"
     "  - {namespace: d, name: p, node: a}\n", 4, "duplicate pod d/p"),
    ("nodes: [{name: a}]\npods:\n  - {namespace: d, name: p, node: a, server: nginx}\n", 3,
     "unknown server 'nginx'"),
    ("nodes: [{name: a}]\npods:\n  - {namespace: d, name: p, node: a, server: dns}\n"
     "  - {namespace: d, name: q, node: a, server: dns}\n", 4, "at most one pod"),
    ("nodes: [{name: a}]\npods:\n  - {namespace: d, name: p, node: a,\n"
     "     server: http-echo, ports: [0]}\n", 4, "out of range"),
    ("nodes: [{name: a}]\npods:\n  - {namespace: d, name: p, node: a, ports: [80]}\n", 3,
     "ports need a server"),
    ("nodes: [{name: a}]\npods:\n  - {namespace: d, name: p, node: a, labels: [x]}\n", 3,
     "labels must be a mapping"),
    ("nodes: [{name: a}]\npods:\n  - namespace: d\n    name: p\n    node: a\n    labels:\n"
     "      'bad key!': x\n", 7, "bad label key"),
    ("nodes: [{name: a}]\nexternal:\n  - {name: x.example, ip: 198.51.100.1}\n", 3,
     "not inside 203.0.113.0/24"),
    ("nodes: [{name: a}]\nexternal:\n  - {name: x.example, ip: 203.0.113.1}\n"
     "  - {name: y.example, ip: 203.0.113.1}\n", 4, "duplicate IP 203.0.113.1"),
    ("nodes: [{name: a}]\nexternal:\n  - {name: 'bad name', ip: 203.0.113.1}\n", 3,
     "not a valid name"),
    ("nodes: [{name: a}]\ndns:\n  ttl: true\n", 3, "dns.ttl must be a int"),
    ("nodes: [{name: a}]\ndns:\n  ttl: -1\n", 3, "out of range"),
    ("nodes: [{name: a}]\nnetwork:\n  underlay: 10.244.0.0/16\n  external_ip: 10.244.9.9\n",
     1, "pod_cidr overlaps the underlay"),
    ("nodes: [{name: a}]\nnetwork:\n  external_cidr: 192.0.2.0/25\n", 3, "overlaps"),
    ("nodes: [{name: a}]\npods:\n  - {namespace: d, name: p, node: a, labels: {on: x}}\n", 3,
     "mapping key must be a string"),
]


@pytest.mark.parametrize(("text", "line", "fragment"), BAD_CASES)
def test_bad_topology_names_file_and_line(tmp_path: Path, text: str, line: int,
                                          fragment: str) -> None:
    path = tmp_path / "topo.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_topology(path)
    message = str(info.value)
    assert message.startswith(f"{path}:{line}: "), message
    assert fragment in message


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.yaml:0: cannot read topology"):
        load_topology(tmp_path / "missing.yaml")


def test_merge_keys_work_like_safe_load() -> None:
    t = parse_topology(textwrap.dedent("""
        nodes: [{name: a}]
        pods:
          - &p {namespace: d, name: p, node: a}
          - {<<: *p, name: q}
    """), "inline.yaml")
    assert [p.ref for p in t.pods] == ["d/p", "d/q"]


# -- endpoints file, names ---------------------------------------------------------------
def _default_with_ifaces() -> tuple[Topology, dict[str, str]]:
    t = load_topology()
    return t, {p.ref: veth_name("lxc", p.ref) for p in t.pods}


def test_endpoints_file_shape() -> None:
    t, ifaces = _default_with_ifaces()
    doc = yaml.safe_load(render_endpoints(t, "eth0", ifaces))
    assert set(doc) == {"nodes", "pods"}
    assert doc["nodes"][0] == {"name": "node1", "ip": "192.0.2.11",
                               "pod_cidr": "10.244.1.0/24", "uplink": "eth0"}
    frontend = next(p for p in doc["pods"] if p["name"] == "frontend")
    assert frontend == {"namespace": "default", "name": "frontend",
                        "labels": {"role": "frontend", **K8S_LABELS,
                                   "io.kubernetes.pod.namespace": "default"},
                        "ip": "10.244.1.10", "node": "node1",
                        "interface": ifaces["default/frontend"]}
    assert [(p["namespace"], p["name"], p["node"]) for p in doc["pods"]] == [
        (p.namespace, p.name, p.node) for p in t.pods]


def test_interface_and_netns_names_are_unique_and_short() -> None:
    t, ifaces = _default_with_ifaces()
    assert len(set(ifaces.values())) == len(ifaces)
    assert all(len(i) <= IFNAMSIZ and i.startswith("lxc") for i in ifaces.values())
    names = netns_names(t, "l7gsb-abcdef")
    assert len(set(names.values())) == len(names)
    assert names["node:node1"] == "l7gsb-abcdef-node1"
    assert names["pod:default/frontend"] == "l7gsb-abcdef-default_frontend"
    assert all(n.startswith("l7gsb-abcdef-") for n in names.values())


def test_resolv_conf_names_kube_dns() -> None:
    t = load_topology()
    text = resolv_conf(t, "default")
    assert text.splitlines()[0] == "nameserver 10.244.1.53"
    assert "search default.svc.cluster.local svc.cluster.local cluster.local" in text


def test_endpoints_file_is_accepted_by_the_agents_reader(tmp_path: Path) -> None:
    endpoints = pytest.importorskip("agent.endpoints")
    t, ifaces = _default_with_ifaces()
    path = tmp_path / "endpoints.yaml"
    path.write_text(render_endpoints(t, "eth0", ifaces), encoding="utf-8")
    cluster = endpoints.load_endpoints(path)
    assert [(n.name, str(n.ip), n.uplink) for n in cluster.nodes] == [
        ("node1", "192.0.2.11", "eth0"), ("node2", "192.0.2.12", "eth0")]
    local = {p.endpoint.name: p.interface for p in cluster.local_pods("node1")}
    assert local == {"frontend": ifaces["default/frontend"], "other": ifaces["default/other"],
                     "kube-dns": ifaces["kube-system/kube-dns"]}
