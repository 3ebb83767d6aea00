"""The sandbox topology: schema, loader with `FILE:LINE` errors, and the endpoints file.

Contract: `load_topology(path)` returns a frozen, fully validated `Topology` (every address
decided) or raises `ConfigError("FILE:LINE: message")`; nothing is built before it returns.
`render_endpoints(topology, uplink, interfaces)` gives the endpoints YAML every node agent
reads. No I/O apart from reading the file.

Schema (all keys shown; only `nodes` is required; unknown keys are errors):

    nodes:                        # one netns per node; its agent runs inside
      - name: node1               # DNS label, not "underlay"/"external"
        ip: 192.0.2.11            # optional; default: underlay .11, .12, ... in order
        pod_cidr: 10.244.1.0/24   # optional; default: 10.244.<index+1>.0/24
    pods:
      - namespace: default        # DNS label
        name: frontend            # DNS label
        node: node1               # must name a node above
        labels: {role: frontend}  # optional, string values; the Kubernetes labels
                                  # io.kubernetes.pod.namespace, io.cilium.k8s.policy.* are added
        ip: 10.244.1.10           # optional; inside the node's pod_cidr; default: next free
                                  # host from .10 upward
        server: http-echo         # optional: http-echo (echo origin) | dns (dnsmasq, kube-dns)
        ports: [8080]             # optional; default 8080 for http-echo, 53 for dns
    external:                     # HTTP echo origins in the `external` netns
      - name: api.stripe.com      # DNS name, resolvable through the dns pod
        ip: 203.0.113.10          # inside network.external_cidr
        ports: [80, 443]          # optional; default [80, 443]
    dns:
      ttl: 30                     # seconds, answers' TTL (dnsmasq --local-ttl); default 30
      records:                    # optional extra A records
        - {name: db.example.org, ip: 203.0.113.20}
    network:
      underlay: 192.0.2.0/24      # node <-> node <-> external link (a bridge in its own netns)
      external_ip: 192.0.2.100    # the external netns' underlay address
      external_cidr: 203.0.113.0/24  # routed from every node to external_ip

At most one pod may be `server: dns`; every pod's resolv.conf names it. Every address
(node, pod, external, dns record, external_ip) must be unique.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import yaml

from agent.sandbox.yamlpos import YMap, YNode, YScalar, YSeq, fail, parse
from policy.errors import ConfigError

DEFAULT_TOPOLOGY = Path(__file__).with_name("default-topology.yaml")

SERVER_KINDS = ("http-echo", "dns")
DEFAULT_PORTS = {"http-echo": (8080,), "dns": (53,)}
DEFAULT_EXTERNAL_PORTS = (80, 443)
DEFAULT_DNS_TTL_S = 30  # short enough that toFQDNs expiry is observable in a demo
DEFAULT_UNDERLAY = "192.0.2.0/24"  # RFC 5737 TEST-NET-1: never routed on the internet
DEFAULT_EXTERNAL_IP = "192.0.2.100"
DEFAULT_EXTERNAL_CIDR = "203.0.113.0/24"  # RFC 5737 TEST-NET-3
FIRST_NODE_HOST = 11  # node1 = .11, node2 = .12 (the README's addressing)
FIRST_POD_HOST = 10  # .1 is the node-side gateway; pods start at .10
RESERVED_NODE_NAMES = frozenset({"underlay", "external"})  # netns suffixes we use ourselves
MAX_NODES = 200  # underlay .11 upward inside a /24
MAX_LABEL_LEN = 63  # RFC 1123 label
MAX_DNS_NAME_LEN = 253  # RFC 1035 §2.3.4 (text form)

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_NAME = re.compile(r"([A-Za-z0-9_]([-A-Za-z0-9_]*[A-Za-z0-9])?\.)*"
                       r"[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?")
_LABEL_KEY = re.compile(r"([a-z0-9.-]+/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    ip: IPv4Address
    pod_cidr: IPv4Network

    @property
    def gateway(self) -> IPv4Address:
        """The pods' next hop: held by every node-side veth of this node (/32)."""
        return self.pod_cidr.network_address + 1


@dataclass(frozen=True, slots=True)
class Pod:
    namespace: str
    name: str
    node: str
    ip: IPv4Address
    labels: Mapping[str, str]
    server: str | None = None
    ports: tuple[int, ...] = ()

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def dns_name(self) -> str:
        return f"{self.name}.{self.namespace}.svc.cluster.local"


@dataclass(frozen=True, slots=True)
class External:
    name: str
    ip: IPv4Address
    ports: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Topology:
    source: str
    nodes: tuple[Node, ...]
    pods: tuple[Pod, ...]
    external: tuple[External, ...]
    dns_ttl_s: int
    dns_records: tuple[tuple[str, IPv4Address], ...]
    underlay: IPv4Network
    external_ip: IPv4Address
    external_cidr: IPv4Network

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def pod(self, ref: str) -> Pod:
        for p in self.pods:
            if p.ref == ref:
                return p
        raise KeyError(ref)

    @property
    def dns_pod(self) -> Pod | None:
        return next((p for p in self.pods if p.server == "dns"), None)

    def all_dns_records(self) -> list[tuple[str, IPv4Address]]:
        """Every A record kube-dns serves: external servers, pods, extra records."""
        out = [(e.name, e.ip) for e in self.external]
        out += [(p.dns_name, p.ip) for p in self.pods]
        return out + list(self.dns_records)


def load_topology(path: str | Path | None = None) -> Topology:
    """Read and validate a topology file (the default one when `path` is None)."""
    file = Path(path) if path is not None else DEFAULT_TOPOLOGY
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file}:0: cannot read topology: {exc}") from exc
    return parse_topology(text, str(file))


def parse_topology(text: str, file: str) -> Topology:
    root = parse(text, file)
    if root is None:
        raise fail(file, 1, "empty topology: `nodes` is required")
    return _Loader(file).topology(root)


class _Loader:
    """Walks the positioned YAML tree; every check raises at the offending line."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.used: dict[IPv4Address, int] = {}  # address -> line that claimed it
        self.has_dns = False

    def err(self, node: YNode, message: str) -> ConfigError:
        return fail(self.file, node.line, message)

    def mapping(self, node: YNode, what: str, allowed: set[str], required: set[str]) -> YMap:
        if not isinstance(node, YMap):
            raise self.err(node, f"{what} must be a mapping")
        for key in node.items:
            if key not in allowed:
                line = node.key_lines[key]
                raise fail(self.file, line, f"{what}: unknown field {key!r} "
                                            f"(allowed: {', '.join(sorted(allowed))})")
        for key in sorted(required - node.items.keys()):
            raise self.err(node, f"{what}: missing field {key!r}")
        return node

    def seq(self, node: YNode | None, what: str) -> list[YNode]:
        if node is None:
            return []
        if isinstance(node, YScalar) and node.value is None:
            return []
        if not isinstance(node, YSeq):
            raise self.err(node, f"{what} must be a list")
        return node.items

    def scalar(self, node: YNode, what: str, kind: type) -> Any:
        if not isinstance(node, YScalar) or not isinstance(node.value, kind) \
                or (isinstance(node.value, bool) and kind is not bool):
            raise self.err(node, f"{what} must be a {kind.__name__}")
        return node.value

    def name(self, node: YNode, what: str, pattern: re.Pattern[str], max_len: int) -> str:
        value: str = self.scalar(node, what, str)
        if len(value) > max_len or not pattern.fullmatch(value):
            raise self.err(node, f"{what} {value!r} is not a valid name")
        return value

    def address(self, node: YNode, what: str, inside: IPv4Network | None = None) -> IPv4Address:
        raw = self.scalar(node, what, str)
        try:
            ip = IPv4Address(raw)
        except ValueError as exc:
            raise self.err(node, f"{what}: bad IPv4 address {raw!r}") from exc
        if inside is not None and ip not in inside:
            raise self.err(node, f"{what} {ip} is not inside {inside}")
        if ip in self.used:
            raise self.err(node, f"{what}: duplicate IP {ip} (already used at line "
                                 f"{self.used[ip]})")
        self.used[ip] = node.line
        return ip

    def network(self, node: YNode, what: str) -> IPv4Network:
        raw = self.scalar(node, what, str)
        try:
            return IPv4Network(raw, strict=True)
        except ValueError as exc:
            raise self.err(node, f"{what}: bad CIDR {raw!r}: {exc}") from exc

    def ports(self, node: YNode, what: str) -> tuple[int, ...]:
        out: list[int] = []
        for item in self.seq(node, what):
            port = self.scalar(item, f"{what} entry", int)
            if not 1 <= port <= 65535:
                raise self.err(item, f"{what}: port {port} out of range 1..65535")
            if port in out:
                raise self.err(item, f"{what}: duplicate port {port}")
            out.append(port)
        if not out:
            raise self.err(node, f"{what} must not be empty")
        return tuple(out)

    def topology(self, root: YNode) -> Topology:
        top = self.mapping(root, "topology", {"nodes", "pods", "external", "dns", "network"},
                           {"nodes"})
        net = self.network_section(top.items.get("network"))
        underlay, external_ip, external_cidr = net
        nodes = self.nodes(top.items["nodes"], underlay)
        pods = self.pods(top.items.get("pods"), nodes)
        external = self.externals(top.items.get("external"), external_cidr)
        ttl, records = self.dns(top.items.get("dns"))
        return Topology(source=self.file, nodes=nodes, pods=pods, external=external,
                        dns_ttl_s=ttl, dns_records=records, underlay=underlay,
                        external_ip=external_ip, external_cidr=external_cidr)

    def network_section(self, node: YNode | None
                        ) -> tuple[IPv4Network, IPv4Address, IPv4Network]:
        items: dict[str, YNode] = {}
        if node is not None:
            items = self.mapping(node, "network", {"underlay", "external_ip", "external_cidr"},
                                 set()).items
        d = YScalar  # defaults carry the section's line for messages
        line = node.line if node is not None else 1
        underlay = self.network(items.get("underlay", d(DEFAULT_UNDERLAY, line)),
                                "network.underlay")
        ext_cidr = self.network(items.get("external_cidr", d(DEFAULT_EXTERNAL_CIDR, line)),
                                "network.external_cidr")
        if underlay.overlaps(ext_cidr):
            raise fail(self.file, line, f"network: external_cidr {ext_cidr} overlaps "
                                        f"underlay {underlay}")
        ext_ip = self.address(items.get("external_ip", d(DEFAULT_EXTERNAL_IP, line)),
                              "network.external_ip", underlay)
        return underlay, ext_ip, ext_cidr

    def nodes(self, node: YNode, underlay: IPv4Network) -> tuple[Node, ...]:
        entries = self.seq(node, "nodes")
        if not entries:
            raise self.err(node, "nodes: at least one node is required")
        if len(entries) > MAX_NODES:
            raise self.err(node, f"nodes: at most {MAX_NODES} nodes")
        out: list[Node] = []
        for index, entry in enumerate(entries):
            m = self.mapping(entry, f"nodes[{index}]", {"name", "ip", "pod_cidr"}, {"name"})
            name = self.name(m.items["name"], "node name", _DNS_LABEL, MAX_LABEL_LEN)
            if name in RESERVED_NODE_NAMES or any(n.name == name for n in out):
                raise self.err(m.items["name"], f"node name {name!r} is reserved or duplicate")
            default_ip = YScalar(str(underlay.network_address + FIRST_NODE_HOST + index),
                                 m.line)
            ip = self.address(m.items.get("ip", default_ip), f"node {name} ip", underlay)
            cidr_node = m.items.get("pod_cidr", YScalar(f"10.244.{index + 1}.0/24", m.line))
            cidr = self.network(cidr_node, f"node {name} pod_cidr")
            if cidr.num_addresses < 16:
                raise self.err(cidr_node, f"node {name} pod_cidr {cidr} is smaller than /28")
            for other in out:
                if cidr.overlaps(other.pod_cidr):
                    raise self.err(cidr_node, f"node {name} pod_cidr {cidr} overlaps node "
                                              f"{other.name}'s {other.pod_cidr}")
            if cidr.overlaps(underlay):
                raise self.err(cidr_node, f"node {name} pod_cidr overlaps the underlay")
            gateway = cidr.network_address + 1
            if gateway in self.used:
                raise self.err(cidr_node, f"node {name}: gateway {gateway} is already used")
            self.used[gateway] = cidr_node.line
            out.append(Node(name=name, ip=ip, pod_cidr=cidr))
        return tuple(out)

    def pods(self, node: YNode | None, nodes: tuple[Node, ...]) -> tuple[Pod, ...]:
        by_name = {n.name: n for n in nodes}
        fields = {"namespace", "name", "node", "labels", "ip", "server", "ports"}
        parsed: list[tuple[YMap, str, str, Node]] = []
        for index, entry in enumerate(self.seq(node, "pods")):
            m = self.mapping(entry, f"pods[{index}]", fields, {"namespace", "name", "node"})
            ns = self.name(m.items["namespace"], "pod namespace", _DNS_LABEL, MAX_LABEL_LEN)
            name = self.name(m.items["name"], "pod name", _DNS_LABEL, MAX_LABEL_LEN)
            node_name = self.scalar(m.items["node"], "pod node", str)
            if node_name not in by_name:
                raise self.err(m.items["node"], f"pod {ns}/{name}: unknown node {node_name!r}")
            if any(p[1] == ns and p[2] == name for p in parsed):
                raise self.err(m, f"duplicate pod {ns}/{name}")
            parsed.append((m, ns, name, by_name[node_name]))
        # Explicit IPs first, so that automatic ones never take an address named later.
        explicit = {id(m): self.address(m.items["ip"], f"pod {ns}/{name} ip", n.pod_cidr)
                    for m, ns, name, n in parsed if "ip" in m.items}
        out = [self.pod(m, ns, name, n, explicit.get(id(m))) for m, ns, name, n in parsed]
        return tuple(out)

    def pod(self, m: YMap, ns: str, name: str, node: Node, ip: IPv4Address | None) -> Pod:
        if ip is None:
            ip = self.next_free(node, m)
        server: str | None = None
        if "server" in m.items:
            server = self.scalar(m.items["server"], "pod server", str)
            if server not in SERVER_KINDS:
                raise self.err(m.items["server"], f"pod {ns}/{name}: unknown server "
                                                  f"{server!r} (one of {', '.join(SERVER_KINDS)})")
            if server == "dns" and self.has_dns:
                raise self.err(m.items["server"], "at most one pod may be `server: dns` "
                                                  "(every resolv.conf names it)")
            self.has_dns = self.has_dns or server == "dns"
        ports: tuple[int, ...] = DEFAULT_PORTS.get(server or "", ())
        if "ports" in m.items:
            if server is None:
                raise self.err(m.items["ports"], f"pod {ns}/{name}: ports need a server")
            ports = self.ports(m.items["ports"], f"pod {ns}/{name} ports")
        labels = self.labels(m.items.get("labels"), f"pod {ns}/{name} labels")
        # What a Kubernetes pod carries in Cilium's view; the namespace label always
        # tells the truth, the other two may be overridden by the topology.
        labels.setdefault("io.cilium.k8s.policy.serviceaccount", "default")
        labels.setdefault("io.cilium.k8s.policy.cluster", "default")
        labels["io.kubernetes.pod.namespace"] = ns
        return Pod(namespace=ns, name=name, node=node.name, ip=ip, labels=labels,
                   server=server, ports=ports)

    def next_free(self, node: Node, m: YMap) -> IPv4Address:
        for host in node.pod_cidr.hosts():
            if int(host) - int(node.pod_cidr.network_address) < FIRST_POD_HOST:
                continue
            if host not in self.used:
                self.used[host] = m.line
                return host
        raise self.err(m, f"node {node.name}: pod_cidr {node.pod_cidr} has no free address")

    def labels(self, node: YNode | None, what: str) -> dict[str, str]:
        if node is None:
            return {}
        if not isinstance(node, YMap):
            raise self.err(node, f"{what} must be a mapping")
        out: dict[str, str] = {}
        for key, value in node.items.items():
            if len(key) > MAX_DNS_NAME_LEN or not _LABEL_KEY.fullmatch(key):
                raise fail(self.file, node.key_lines[key], f"{what}: bad label key {key!r}")
            if not isinstance(value, YScalar) or isinstance(value.value, (dict, list)) \
                    or value.value is None:
                raise self.err(value, f"{what}: value of {key!r} must be a scalar")
            raw = value.value
            out[key] = str(raw).lower() if isinstance(raw, bool) else str(raw)
        return out

    def externals(self, node: YNode | None, cidr: IPv4Network) -> tuple[External, ...]:
        out: list[External] = []
        for index, entry in enumerate(self.seq(node, "external")):
            m = self.mapping(entry, f"external[{index}]", {"name", "ip", "ports"},
                             {"name", "ip"})
            name = self.name(m.items["name"], "external name", _DNS_NAME, MAX_DNS_NAME_LEN)
            name = name.lower()
            if any(e.name == name for e in out):
                raise self.err(m.items["name"], f"duplicate external name {name!r}")
            ip = self.address(m.items["ip"], f"external {name} ip", cidr)
            ports: tuple[int, ...] = DEFAULT_EXTERNAL_PORTS
            if "ports" in m.items:
                ports = self.ports(m.items["ports"], f"external {name} ports")
            out.append(External(name=name, ip=ip, ports=ports))
        return tuple(out)

    def dns(self, node: YNode | None) -> tuple[int, tuple[tuple[str, IPv4Address], ...]]:
        if node is None:
            return DEFAULT_DNS_TTL_S, ()
        m = self.mapping(node, "dns", {"ttl", "records"}, set())
        ttl = DEFAULT_DNS_TTL_S
        if "ttl" in m.items:
            ttl = self.scalar(m.items["ttl"], "dns.ttl", int)
            if not 0 <= ttl <= 2**31 - 1:  # RFC 2181 §8
                raise self.err(m.items["ttl"], f"dns.ttl {ttl} out of range")
        records: list[tuple[str, IPv4Address]] = []
        for index, entry in enumerate(self.seq(m.items.get("records"), "dns.records")):
            r = self.mapping(entry, f"dns.records[{index}]", {"name", "ip"}, {"name", "ip"})
            name = self.name(r.items["name"], "dns record name", _DNS_NAME, MAX_DNS_NAME_LEN)
            records.append((name.lower(), self.address(r.items["ip"], f"dns record {name} ip")))
        return ttl, tuple(records)


def render_endpoints(topology: Topology, uplink: str, interfaces: Mapping[str, str]) -> str:
    """The cluster-wide endpoints file for node agents (shape fixed with the agent).

    `interfaces` maps a pod ref `ns/name` to its node-side veth name.
    """
    nodes = [{"name": n.name, "ip": str(n.ip), "pod_cidr": str(n.pod_cidr), "uplink": uplink}
             for n in topology.nodes]
    pods = [{"namespace": p.namespace, "name": p.name, "labels": dict(p.labels),
             "ip": str(p.ip), "node": p.node, "interface": interfaces[p.ref]}
            for p in topology.pods]
    lines = ["# Written by `l7gate sandbox up`; read by every node agent (agent/endpoints.py)."]
    for key, items in (("nodes", nodes), ("pods", pods)):
        lines.append(f"{key}:")
        # One flow mapping per entry and line: easy to read and to grep.
        lines += ["  - " + yaml.safe_dump(item, sort_keys=False, default_flow_style=True,
                                          width=2**16).strip() for item in items]
    return "\n".join(lines) + "\n"
