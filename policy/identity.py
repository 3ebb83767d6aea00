"""Numeric security identities for pods, nodes, reserved entities and policy CIDRs (pure).

Deterministic: two agents reading the same endpoints file and the same policies compute the
same numbers. Reserved identities use Cilium's numbers (`ReservedIdentity`). Pod label sets
are sorted canonically and numbered from 256 (pods with identical label sets share one
identity, as in Cilium). Every prefix named by a policy (toCIDR, CIDRSet cidr and except)
gets an identity from 1<<24 whose labels are `cidr:<P>` for itself and for every policy
prefix containing it, plus `reserved:world`; so a `/8` rule selects the `/16` identity
(Cilium's CIDR label expansion). No I/O here.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from policy.errors import ConfigError
from policy.model import cidr_label
from policy.types import (
    FIRST_CIDR_IDENTITY,
    FIRST_POD_IDENTITY,
    Endpoint,
    Identity,
    Label,
    ReservedIdentity,
)

if TYPE_CHECKING:
    from policy.compile import PolicySnapshot

MAX_POD_IDENTITIES = FIRST_CIDR_IDENTITY - FIRST_POD_IDENTITY  # cluster-local id space


def _reserved(*names: str) -> frozenset[Label]:
    return frozenset(Label("reserved", n) for n in names)


RESERVED_LABELS: dict[ReservedIdentity, frozenset[Label]] = {
    ReservedIdentity.HOST: _reserved("host"),
    ReservedIdentity.WORLD: _reserved("world"),
    ReservedIdentity.UNMANAGED: _reserved("unmanaged"),
    ReservedIdentity.HEALTH: _reserved("health"),
    ReservedIdentity.INIT: _reserved("init"),
    ReservedIdentity.REMOTE_NODE: _reserved("remote-node"),
    # Cilium: the kube-apiserver identity carries both labels (numericidentity.go)
    ReservedIdentity.KUBE_APISERVER: _reserved("kube-apiserver", "remote-node"),
    ReservedIdentity.INGRESS: _reserved("ingress"),
}
RESERVED_BY_NAME: dict[str, ReservedIdentity] = {
    "host": ReservedIdentity.HOST,
    "world": ReservedIdentity.WORLD,
    "unmanaged": ReservedIdentity.UNMANAGED,
    "health": ReservedIdentity.HEALTH,
    "init": ReservedIdentity.INIT,
    "remote-node": ReservedIdentity.REMOTE_NODE,
    "kube-apiserver": ReservedIdentity.KUBE_APISERVER,
    "ingress": ReservedIdentity.INGRESS,
}


def reserved_identity(which: ReservedIdentity) -> Identity:
    return Identity(int(which), RESERVED_LABELS[which])


@dataclass(frozen=True, slots=True)
class NodeInfo:
    name: str
    ip: ipaddress.IPv4Address


class IdentityTable:
    """Every identity the agent knows, and IP -> identity resolution."""

    def __init__(
        self,
        identities: Iterable[Identity],
        pods_by_ip: dict[ipaddress.IPv4Address, Identity],
        nodes_by_ip: dict[ipaddress.IPv4Address, Identity],
        cidrs: Sequence[tuple[ipaddress.IPv4Network, Identity]],
    ) -> None:
        self.by_id: dict[int, Identity] = {i.id: i for i in identities}
        self._pods_by_ip = pods_by_ip
        self._nodes_by_ip = nodes_by_ip
        # longest prefix first, so the first containing prefix is the most specific
        self._cidrs = sorted(cidrs, key=lambda c: (-c[0].prefixlen, int(c[0].network_address)))
        self._by_labels = {i.labels: i for i in self.by_id.values()}

    def identity_for_ip(self, ip: ipaddress.IPv4Address) -> Identity:
        """Pods, then node IPs (host/remote-node), then the longest CIDR prefix, else world."""
        found = self._pods_by_ip.get(ip) or self._nodes_by_ip.get(ip)
        if found is not None:
            return found
        for net, ident in self._cidrs:
            if ip in net:
                return ident
        return self.by_id[int(ReservedIdentity.WORLD)]

    def identity_for_endpoint(self, ep: Endpoint) -> Identity:
        labels = ep.identity_labels()
        found = self._by_labels.get(labels)
        if found is None:
            raise KeyError(f"endpoint {ep.ref} is not in the identity table")
        return found

    def ipcache_entries(self) -> list[tuple[ipaddress.IPv4Network, int]]:
        out = [(ipaddress.IPv4Network(ip), i.id) for ip, i in self._pods_by_ip.items()]
        out += [(ipaddress.IPv4Network(ip), i.id) for ip, i in self._nodes_by_ip.items()]
        out += [(net, i.id) for net, i in self._cidrs]
        return sorted(out, key=lambda e: (int(e[0].network_address), e[0].prefixlen))

    def __iter__(self) -> Iterator[Identity]:
        return iter(sorted(self.by_id.values(), key=lambda i: i.id))

    def __len__(self) -> int:
        return len(self.by_id)


def cidr_identities(
    prefixes: Iterable[ipaddress.IPv4Network],
) -> list[tuple[ipaddress.IPv4Network, Identity]]:
    """One identity per distinct policy prefix, labelled with every containing prefix."""
    nets = sorted(set(prefixes), key=lambda n: (int(n.network_address), n.prefixlen))
    nets = [n for n in nets if n.prefixlen > 0]  # /0 is the world identity itself
    out = []
    for index, net in enumerate(nets):
        labels = {Label("cidr", cidr_label(o)) for o in nets if net.subnet_of(o)}
        labels |= RESERVED_LABELS[ReservedIdentity.WORLD]
        out.append((net, Identity(FIRST_CIDR_IDENTITY + index, frozenset(labels))))
    return out


def build_identities(
    snapshot: PolicySnapshot,
    endpoints: Sequence[Endpoint],
    nodes: Sequence[NodeInfo],
    local_node: str,
) -> IdentityTable:
    """Identities for `endpoints`, `nodes` and the prefixes of `snapshot` (a PolicySnapshot)."""
    prefixes = snapshot.cidr_prefixes
    idents = [reserved_identity(r) for r in RESERVED_LABELS]
    label_sets = sorted({ep.identity_labels() for ep in endpoints}, key=_canonical)
    if len(label_sets) > MAX_POD_IDENTITIES:
        raise ConfigError(f"more than {MAX_POD_IDENTITIES} distinct pod label sets")
    pod_ids = {labels: Identity(FIRST_POD_IDENTITY + i, labels)
               for i, labels in enumerate(label_sets)}
    idents += pod_ids.values()
    pods_by_ip = {ep.ip: pod_ids[ep.identity_labels()] for ep in endpoints}
    host = reserved_identity(ReservedIdentity.HOST)
    remote = reserved_identity(ReservedIdentity.REMOTE_NODE)
    nodes_by_ip = {n.ip: (host if n.name == local_node else remote) for n in nodes}
    cidrs = cidr_identities(prefixes)
    idents += [i for _, i in cidrs]
    return IdentityTable(idents, pods_by_ip, nodes_by_ip, cidrs)


def _canonical(labels: frozenset[Label]) -> tuple[str, ...]:
    return tuple(sorted(str(lbl) for lbl in labels))


IdentityAllocator = build_identities  # the name the design card uses
