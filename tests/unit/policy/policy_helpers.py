"""Helpers for the policy-engine tests: build snapshots from YAML text, pods and peers.

`Cluster` is a tiny model of the README's cluster: pods with labels, outside IPs and
reserved entities, all resolved through the real `build_identities` of a snapshot.
"""

from __future__ import annotations

import ipaddress
import textwrap
from typing import Any

from policy.compile import PolicySnapshot, compile_policies
from policy.engine import decide_dns, decide_http, decide_l4, trace
from policy.errors import PolicyProblem
from policy.identity import RESERVED_BY_NAME, IdentityTable, build_identities, reserved_identity
from policy.load import LoadResult, load_text
from policy.types import Direction, Endpoint, HttpRequestMeta, L4Action, Peer, Proto, Verdict


def load(text: str, *, strict: bool = False, file: str = "p.yaml") -> LoadResult:
    return load_text(textwrap.dedent(text), file, strict=strict)


def errors(text: str, *, strict: bool = False) -> list[PolicyProblem]:
    return load(text, strict=strict).errors


def snapshot(*texts: str) -> PolicySnapshot:
    docs = []
    for i, text in enumerate(texts):
        result = load(text, file=f"p{i}.yaml")
        assert not result.errors, [str(p) for p in result.errors]
        docs.extend(result.policies)
    return compile_policies(docs)


def cnp(name: str, body: str, namespace: str = "default",
        kind: str = "CiliumNetworkPolicy") -> str:
    """A whole CNP object around an indented `spec:` body (given at column 0)."""
    ns = f"\n  namespace: {namespace}" if namespace and kind == "CiliumNetworkPolicy" else ""
    spec = textwrap.indent(textwrap.dedent(body).strip("\n"), "  ")
    return (f"apiVersion: cilium.io/v2\nkind: {kind}\nmetadata:\n  name: {name}{ns}\n"
            f"spec:\n{spec}\n")


def ccnp(name: str, body: str) -> str:
    return cnp(name, body, namespace="", kind="CiliumClusterwideNetworkPolicy")


_ip_counter = [10 << 24 | 1 << 16]


def pod(namespace: str, name: str, labels: dict[str, str] | None = None,
        node: str = "node1") -> Endpoint:
    _ip_counter[0] += 1
    return Endpoint(namespace, name, tuple(sorted((labels or {}).items())),
                    ipaddress.IPv4Address(_ip_counter[0]), node)


class Cluster:
    """Pods + a snapshot -> peers with real identities."""

    def __init__(self, snap: PolicySnapshot, *pods: Endpoint) -> None:
        self.snap = snap
        self.pods = {p.name: p for p in pods}
        self.table: IdentityTable = build_identities(snap, list(pods), [], "node1")

    def peer(self, name: str) -> Peer:
        ep = self.pods[name]
        return Peer(self.table.identity_for_endpoint(ep), ep.ip, ep)

    def ip(self, text: str, *fqdns: str) -> Peer:
        addr = ipaddress.IPv4Address(text)
        names = frozenset(n if n.endswith(".") else n + "." for n in fqdns)
        return Peer(self.table.identity_for_ip(addr), addr, None, names)

    def entity(self, name: str) -> Peer:
        return Peer(reserved_identity(RESERVED_BY_NAME[name]))

    def l4(self, local: str, direction: Direction, peer: Peer, port: int,
           proto: Proto = Proto.TCP) -> tuple[L4Action | None, str]:
        return decide_l4(self.snap, direction, self.pods[local], peer, proto, port)

    def http(self, local: str, direction: Direction, peer: Peer, port: int, method: str = "GET",
             path: str = "/", host: str = "", headers: tuple[tuple[str, str], ...] = ()
             ) -> Verdict:
        meta = HttpRequestMeta(method, path, host, headers)
        return decide_http(self.snap, direction, self.pods[local], peer, port, meta)

    def dns(self, local: str, server: Peer, qname: str, port: int = 53) -> Verdict:
        return decide_dns(self.snap, self.pods[local], server, port, qname)

    def trace(self, src: Peer, dst: Peer, port: int, proto: Proto = Proto.TCP,
              http: HttpRequestMeta | None = None, dns: str | None = None) -> dict[str, Any]:
        return trace(self.snap, src, dst, port, proto, http, dns)

    def allowed(self, src: Peer, dst: Peer, port: int, proto: Proto = Proto.TCP,
                http: HttpRequestMeta | None = None, dns: str | None = None) -> bool:
        verdict = self.trace(src, dst, port, proto, http, dns)["verdict"]
        assert verdict in ("allowed", "denied")
        return bool(verdict == "allowed")
