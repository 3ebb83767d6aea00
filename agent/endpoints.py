"""The endpoints file: which nodes and pods exist in the cluster (no sockets, no BPF here).

The sandbox writes it; on Kubernetes a pod watch gives the same data. Every agent reads the
whole cluster (so that identities agree across nodes) and manages the pods of its own node:

    nodes:
      - {name: node1, ip: 192.0.2.11, pod_cidr: 10.244.1.0/24, uplink: eth0}
    pods:
      - {namespace: default, name: frontend, labels: {role: frontend},
         ip: 10.244.1.10, node: node1, interface: lxc1a2b3c}

Problems raise `ConfigError` with `FILE:LINE: message`; nothing is partially applied.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

import yaml

from policy.errors import ConfigError
from policy.types import Endpoint

NODE_FIELDS = {"name": True, "ip": True, "pod_cidr": False, "uplink": False}
POD_FIELDS = {"namespace": True, "name": True, "labels": False, "ip": True, "node": True,
              "interface": False}


@dataclass(frozen=True, slots=True)
class NodeEntry:
    name: str
    ip: ipaddress.IPv4Address
    pod_cidr: ipaddress.IPv4Network | None
    uplink: str


@dataclass(frozen=True, slots=True)
class PodEntry:
    endpoint: Endpoint
    interface: str  # node-side veth name in the node's netns


@dataclass(frozen=True, slots=True)
class ClusterEndpoints:
    nodes: tuple[NodeEntry, ...]
    pods: tuple[PodEntry, ...]

    def node(self, name: str) -> NodeEntry:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def local_pods(self, node: str) -> list[PodEntry]:
        return [p for p in self.pods if p.endpoint.node == node]

    @property
    def endpoints(self) -> list[Endpoint]:
        return [p.endpoint for p in self.pods]


class _Reader:
    def __init__(self, path: str) -> None:
        self.path = path
        self.errors: list[str] = []

    def err(self, node: yaml.Node | None, msg: str) -> None:
        line = node.start_mark.line + 1 if node is not None else 0
        self.errors.append(f"{self.path}:{line}: {msg}")

    def mapping(self, node: yaml.Node, what: str, fields: dict[str, bool]) -> dict[str, yaml.Node]:
        if not isinstance(node, yaml.MappingNode):
            self.err(node, f"{what}: expected a mapping")
            return {}
        out: dict[str, yaml.Node] = {}
        for k, v in node.value:
            key = k.value if isinstance(k, yaml.ScalarNode) else None
            if key not in fields:
                self.err(k, f"{what}: unknown field {key!r}")
            elif key in out:
                self.err(k, f"{what}: duplicate field {key!r}")
            else:
                out[key] = v
        for name, required in fields.items():
            if required and name not in out:
                self.err(node, f"{what}: missing field {name!r}")
        return out

    def scalar(self, node: yaml.Node | None, what: str) -> str | None:
        if node is None:
            return None
        if not isinstance(node, yaml.ScalarNode) or node.value == "":
            self.err(node, f"{what}: expected a non-empty string")
            return None
        return str(node.value)

    def ip(self, node: yaml.Node | None, what: str) -> ipaddress.IPv4Address | None:
        text = self.scalar(node, what)
        if text is None:
            return None
        try:
            return ipaddress.IPv4Address(text)
        except ValueError:
            self.err(node, f"{what}: invalid IPv4 address {text!r}")
            return None

    def labels(self, node: yaml.Node | None, what: str) -> tuple[tuple[str, str], ...]:
        if node is None:
            return ()
        if not isinstance(node, yaml.MappingNode):
            self.err(node, f"{what}: expected a mapping of label key to value")
            return ()
        out = []
        for k, v in node.value:
            if not isinstance(k, yaml.ScalarNode) or not isinstance(v, yaml.ScalarNode):
                self.err(k, f"{what}: label keys and values must be strings")
                continue
            out.append((str(k.value), str(v.value)))
        return tuple(sorted(out))


def load_endpoints(path: str | Path) -> ClusterEndpoints:
    """Read and validate the endpoints file; raise ConfigError naming every problem."""
    path = str(path)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{path}:0: cannot read: {exc.strerror}") from exc
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 0
        problem = getattr(exc, "problem", exc)
        raise ConfigError(f"{path}:{line}: YAML syntax error: {problem}") from exc
    r = _Reader(path)
    if root is None:
        raise ConfigError(f"{path}:1: empty endpoints file")
    top = r.mapping(root, "endpoints file", {"nodes": True, "pods": False})
    nodes = _nodes(r, top.get("nodes"))
    pods = _pods(r, top.get("pods"), {n.name for n in nodes})
    if r.errors:
        raise ConfigError("\n".join(r.errors))
    return ClusterEndpoints(nodes=tuple(nodes), pods=tuple(pods))


def _seq(r: _Reader, node: yaml.Node | None, what: str) -> list[yaml.Node]:
    if node is None or (isinstance(node, yaml.ScalarNode) and node.value in ("", "null", "~")):
        return []
    if not isinstance(node, yaml.SequenceNode):
        r.err(node, f"{what}: expected a list")
        return []
    return list(node.value)


def _nodes(r: _Reader, node: yaml.Node | None) -> list[NodeEntry]:
    out: list[NodeEntry] = []
    seen: set[str] = set()
    for i, item in enumerate(_seq(r, node, "nodes")):
        what = f"nodes[{i}]"
        f = r.mapping(item, what, NODE_FIELDS)
        name = r.scalar(f.get("name"), f"{what}.name")
        ip = r.ip(f.get("ip"), f"{what}.ip")
        cidr = None
        if "pod_cidr" in f:
            text = r.scalar(f["pod_cidr"], f"{what}.pod_cidr")
            try:
                cidr = ipaddress.IPv4Network(text) if text else None
            except ValueError:
                r.err(f["pod_cidr"], f"{what}.pod_cidr: invalid CIDR {text!r}")
        uplink = r.scalar(f.get("uplink"), f"{what}.uplink") or ""
        if name in seen:
            r.err(item, f"{what}.name: duplicate node {name!r}")
        if name and ip:
            seen.add(name)
            out.append(NodeEntry(name=name, ip=ip, pod_cidr=cidr, uplink=uplink))
    return out


def _pods(r: _Reader, node: yaml.Node | None, node_names: set[str]) -> list[PodEntry]:
    out: list[PodEntry] = []
    seen_ip: dict[ipaddress.IPv4Address, str] = {}
    seen_ref: set[str] = set()
    for i, item in enumerate(_seq(r, node, "pods")):
        what = f"pods[{i}]"
        f = r.mapping(item, what, POD_FIELDS)
        ns = r.scalar(f.get("namespace"), f"{what}.namespace")
        name = r.scalar(f.get("name"), f"{what}.name")
        ip = r.ip(f.get("ip"), f"{what}.ip")
        node_name = r.scalar(f.get("node"), f"{what}.node")
        labels = r.labels(f.get("labels"), f"{what}.labels")
        iface = r.scalar(f.get("interface"), f"{what}.interface") or ""
        if node_name is not None and node_name not in node_names:
            r.err(f.get("node"), f"{what}.node: unknown node {node_name!r}")
        if ip is not None and ip in seen_ip:
            r.err(f.get("ip"), f"{what}.ip: duplicate IP {ip} (also {seen_ip[ip]})")
        ref = f"{ns}/{name}"
        if ref in seen_ref:
            r.err(item, f"{what}: duplicate pod {ref}")
        if ns and name and ip and node_name:
            seen_ip[ip] = ref
            seen_ref.add(ref)
            out.append(PodEntry(Endpoint(namespace=ns, name=name, labels=labels, ip=ip,
                                         node=node_name), iface))
    # Endpoint ids: stable for an unchanged file, unique cluster-wide (1-based, sorted by ref).
    ordered = sorted(out, key=lambda p: (p.endpoint.namespace, p.endpoint.name))
    ids = {p.endpoint.ref: i + 1 for i, p in enumerate(ordered)}
    return [PodEntry(_with_id(p.endpoint, ids[p.endpoint.ref]), p.interface) for p in out]


def _with_id(ep: Endpoint, endpoint_id: int) -> Endpoint:
    return Endpoint(namespace=ep.namespace, name=ep.name, labels=ep.labels, ip=ep.ip,
                    node=ep.node, endpoint_id=endpoint_id)
