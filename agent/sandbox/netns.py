"""Build and remove the sandbox's network namespaces with iproute2.

Contract: `build(topology, state)` creates, for a validated topology, one netns per node,
per pod, plus `external` and `underlay` (a bridge joining nodes and external), wires
veths, addresses, routes and sysctls, and writes each pod's /etc/netns resolv.conf. It
records every name in `state` *before* creating it, so `remove(state)` (also called after
a failed build) undoes exactly what exists. Nothing is ever linked to the root netns: every
`ip link add` runs with `-n <sandbox netns>` and puts its peer in another sandbox netns.

Addressing (see topology.py): pods own a /32 on `eth0` and route `default via <gw>`, where
the gateway (`.1` of the node's pod CIDR) is a /32 held by every node-side veth of that
node; the node routes each pod's /32 to its veth, other nodes' pod CIDRs and the external
CIDR over the underlay. No default route exists anywhere: an address outside the sandbox
is unreachable by construction.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from agent.sandbox.state import (
    ETC_NETNS_DIR,
    PREFIX_PATTERN,
    SandboxError,
    State,
    leftover_etc_netns,
)
from agent.sandbox.topology import Topology

IP = "ip"
IP_TIMEOUT_S = 20.0  # one iproute2 call; generous for a machine busy with other tests
UPLINK = "eth0"  # node and external side of their underlay veth (reported to agents)
BRIDGE = "br0"
IFNAMSIZ = 15  # Linux interface name limit (IFNAMSIZ - 1)

# Node and pod namespaces: forwarding on, reverse-path filtering off (pods' replies and the
# agent's tproxy traffic arrive on interfaces the strict check would reject), no IPv6 (the
# sandbox is IPv4-only; router solicitations would only add noise to flow logs).
ROUTER_SYSCTLS = ("net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0",
                  "net.ipv4.conf.default.rp_filter=0", "net.ipv6.conf.all.disable_ipv6=1",
                  "net.ipv6.conf.default.disable_ipv6=1")
HOST_SYSCTLS = ("net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")


def ip(*args: str, netns: str | None = None) -> None:
    argv = [IP, *(["-n", netns] if netns else []), *args]
    _run(argv)


def _run(argv: Sequence[str]) -> None:
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=IP_TIMEOUT_S,
                             check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SandboxError(f"{' '.join(argv)}: {exc}") from exc
    if res.returncode != 0:
        raise SandboxError(f"{' '.join(argv)}: {res.stderr.strip() or 'failed'}")


def sysctl(netns: str, settings: Sequence[str]) -> None:
    _run(["ip", "netns", "exec", netns, "sysctl", "-q", "-w", *settings])


def veth_name(base: str, key: str) -> str:
    """A stable, unique-per-netns interface name <= 15 chars (`lxc` + hash, as Cilium)."""
    digest = hashlib.sha256(key.encode()).hexdigest()
    return (base + digest)[:IFNAMSIZ - 1]


def netns_names(topology: Topology, prefix: str) -> dict[str, str]:
    """Role -> netns name. Pod names use `_` between namespace and name: Kubernetes names
    never contain it, so they cannot collide with each other or with node names."""
    names = {"underlay": f"{prefix}-underlay", "external": f"{prefix}-external"}
    names.update({f"node:{n.name}": f"{prefix}-{n.name}" for n in topology.nodes})
    names.update({f"pod:{p.ref}": f"{prefix}-{p.namespace}_{p.name}" for p in topology.pods})
    return names


def build(topology: Topology, state: State) -> None:
    state.netns = netns_names(topology, state.prefix)
    state.uplink = UPLINK
    state.save()
    for role, name in state.netns.items():
        ip("netns", "add", name)
        sysctl(name, ROUTER_SYSCTLS if role.startswith("node:") else HOST_SYSCTLS)
        ip("link", "set", "lo", "up", netns=name)
    _underlay(topology, state)
    _external(topology, state)
    for node in topology.nodes:
        _node_routes(topology, state, node.name)
    for pod in topology.pods:
        _pod(topology, state, pod.ref)
    _resolv_confs(topology, state)


def _underlay(topology: Topology, state: State) -> None:
    ul = state.netns["underlay"]
    ip("link", "add", BRIDGE, "type", "bridge", netns=ul)
    ip("link", "set", BRIDGE, "up", netns=ul)
    members = [(f"node:{n.name}", n.ip) for n in topology.nodes]
    members.append(("external", topology.external_ip))
    prefix_len = topology.underlay.prefixlen
    for role, addr in members:
        port = veth_name("ul", role)
        peer_ns = state.netns[role]
        ip("link", "add", port, "type", "veth", "peer", "name", UPLINK, "netns", peer_ns,
           netns=ul)
        ip("link", "set", port, "master", BRIDGE, "up", netns=ul)
        ip("addr", "add", f"{addr}/{prefix_len}", "dev", UPLINK, netns=peer_ns)
        ip("link", "set", UPLINK, "up", netns=peer_ns)


def _external(topology: Topology, state: State) -> None:
    ext = state.netns["external"]
    for server in topology.external:
        ip("addr", "add", f"{server.ip}/32", "dev", "lo", netns=ext)
    for node in topology.nodes:  # replies to pods go back through their node
        ip("route", "add", str(node.pod_cidr), "via", str(node.ip), netns=ext)


def _node_routes(topology: Topology, state: State, name: str) -> None:
    ns = state.netns[f"node:{name}"]
    for other in topology.nodes:
        if other.name != name:
            ip("route", "add", str(other.pod_cidr), "via", str(other.ip), netns=ns)
    ip("route", "add", str(topology.external_cidr), "via", str(topology.external_ip),
       netns=ns)


def _pod(topology: Topology, state: State, ref: str) -> None:
    pod = topology.pod(ref)
    node = topology.node(pod.node)
    node_ns, pod_ns = state.netns[f"node:{node.name}"], state.netns[f"pod:{ref}"]
    lxc = veth_name("lxc", ref)
    state.interfaces[ref] = lxc
    gw = str(node.gateway)
    ip("link", "add", lxc, "type", "veth", "peer", "name", "eth0", "netns", pod_ns,
       netns=node_ns)
    ip("addr", "add", f"{gw}/32", "dev", lxc, netns=node_ns)
    ip("link", "set", lxc, "up", netns=node_ns)
    ip("route", "add", f"{pod.ip}/32", "dev", lxc, netns=node_ns)
    ip("addr", "add", f"{pod.ip}/32", "dev", "eth0", netns=pod_ns)
    ip("link", "set", "eth0", "up", netns=pod_ns)
    ip("route", "add", gw, "dev", "eth0", "scope", "link", netns=pod_ns)
    ip("route", "add", "default", "via", gw, "dev", "eth0", netns=pod_ns)


def resolv_conf(topology: Topology, namespace: str) -> str:
    dns = topology.dns_pod
    if dns is None:
        return ""
    # The Kubernetes search list, but the resolver's default ndots:1, so that external
    # names are asked as-is first (fewer queries through the DNS proxy, simpler flows).
    return (f"nameserver {dns.ip}\n"
            f"search {namespace}.svc.cluster.local svc.cluster.local cluster.local\n")


def _resolv_confs(topology: Topology, state: State) -> None:
    for pod in topology.pods:
        text = resolv_conf(topology, pod.namespace)
        if not text:
            continue
        target = ETC_NETNS_DIR / state.netns[f"pod:{pod.ref}"]
        state.etc_netns.append(str(target))
        state.save()
        target.mkdir(parents=True, exist_ok=True)
        (target / "resolv.conf").write_text(text, encoding="utf-8")
    ext = ETC_NETNS_DIR / state.netns["external"]
    if topology.dns_pod is not None:
        state.etc_netns.append(str(ext))
        state.save()
        ext.mkdir(parents=True, exist_ok=True)
        (ext / "resolv.conf").write_text(resolv_conf(topology, "default"), encoding="utf-8")


def remove(state: State | None, extra_netns: Sequence[str]) -> list[str]:
    """Delete the recorded and leftover netns and /etc/netns dirs. Returns problems."""
    problems: list[str] = []
    names = list(state.netns.values()) if state is not None else []
    names += [n for n in extra_netns if n not in names]
    for name in names:
        if not (Path("/run/netns") / name).exists():
            continue
        try:
            ip("netns", "delete", name)
        except SandboxError as exc:
            problems.append(str(exc))
    dirs = list(state.etc_netns) if state is not None else []
    dirs += [d for d in leftover_etc_netns() if d not in dirs]
    for d in dirs:
        path = Path(d)
        if path.parent != ETC_NETNS_DIR or not PREFIX_PATTERN.fullmatch(path.name):
            problems.append(f"refusing to remove {path}: not a sandbox dir in {ETC_NETNS_DIR}")
            continue
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(path)
    return problems
