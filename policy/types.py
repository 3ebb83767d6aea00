"""Value types shared by the policy engine and everything that asks it (no I/O here).

These are the contracts between layers: the agent builds `Endpoint`s and `Peer`s, the engine
answers with `Verdict`s and `DatapathEntry`s, the proxies pass `HttpRequestMeta`, and the BPF
side mirrors `DropReason`/`L4Action` codes (bpf/include/l7g_codes.h; a unit test compares).
Numbers here are ABI: never renumber, retire as UNUSED_n.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field
from typing import Protocol


class Direction(enum.Enum):
    INGRESS = "ingress"
    EGRESS = "egress"


class Proto(enum.IntEnum):
    """IP protocol numbers; ANY (0) is the policy wildcard (TCP, UDP and SCTP)."""

    ANY = 0
    ICMP = 1
    TCP = 6
    UDP = 17
    SCTP = 132


class L4Action(enum.IntEnum):
    """What the datapath does with a new flow that matches a policy-map entry."""

    ALLOW = 1
    DENY = 2
    REDIRECT_HTTP = 3  # allowed at L3/L4, requests are decided by the HTTP proxy
    REDIRECT_DNS = 4  # allowed at L3/L4, queries are decided by the DNS proxy


class DropReason(enum.IntEnum):
    """Drop reasons; values and names follow Hubble's flow.proto DropReason where one exists.

    The BPF programs return/emit the negative value (`-133`), like Cilium's DROP_* codes.
    Values >= 240 are l7gate's own.
    """

    INVALID_SOURCE_IP = 132  # packet from a pod veth with another source address (spoofing)
    POLICY_DENIED = 133  # no rule allows it (default deny)
    INVALID_PACKET_DROPPED = 134
    CT_TRUNCATED_OR_INVALID_HEADER = 135
    UNSUPPORTED_L3_PROTOCOL = 139
    UNKNOWN_L4_PROTOCOL = 142
    CT_MAP_INSERTION_FAILED = 155
    IP_FRAGMENTATION_NOT_SUPPORTED = 157
    SOCKET_LOOKUP_FAILED = 178  # redirect to a proxy port with no listener (fail closed)
    SOCKET_ASSIGN_FAILED = 179
    POLICY_DENY = 181  # an explicit ingressDeny/egressDeny rule matched
    NO_ENDPOINT = 240  # l7gate: packet from a pod veth whose endpoint is not configured
    FQDN_EXPIRED = 241  # l7gate: peer IP was allowed for a toFQDNs name whose TTL has run out
    PROXY_NOT_READY = 242  # l7gate: L7 redirect while the agent's proxy is down


class Decision(enum.Enum):
    FORWARDED = "forwarded"
    DENIED = "denied"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class Verdict:
    """The engine's answer. `rule_id` names what decided ("ns/name:egress[2]", "default-deny")."""

    decision: Decision
    rule_id: str | None = None
    reason: DropReason | None = None

    def __post_init__(self) -> None:
        if (self.decision is Decision.DENIED) != (self.reason is not None):
            raise ValueError("reason is required for, and only for, DENIED")

    @property
    def is_allowed(self) -> bool:
        return self.decision is Decision.FORWARDED


# --- identities ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, order=True)
class Label:
    """One identity label, `source:key=value` (sources: k8s, reserved, cidr, fqdn, any)."""

    source: str
    key: str
    value: str = ""

    def __str__(self) -> str:
        if self.value:
            return f"{self.source}:{self.key}={self.value}"
        return f"{self.source}:{self.key}"


class ReservedIdentity(enum.IntEnum):
    """Cilium's reserved numeric identities (pkg/identity/numericidentity.go)."""

    UNKNOWN = 0
    HOST = 1
    WORLD = 2
    UNMANAGED = 3
    HEALTH = 4
    INIT = 5
    REMOTE_NODE = 6
    KUBE_APISERVER = 7
    INGRESS = 8


FIRST_POD_IDENTITY = 256  # Cilium: cluster-local identities start here
FIRST_CIDR_IDENTITY = 1 << 24  # Cilium: node-local (CIDR) identities carry this bit


@dataclass(frozen=True, slots=True)
class Identity:
    """A numeric security identity and the label set it stands for."""

    id: int
    labels: frozenset[Label]

    def label_strings(self) -> list[str]:
        return sorted(str(lbl) for lbl in self.labels)


POD_IDENTITY_DEFAULTS = {
    "io.cilium.k8s.policy.serviceaccount": "default",
    "io.cilium.k8s.policy.cluster": "default",
}
NAMESPACE_LABEL = "io.kubernetes.pod.namespace"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A pod managed by an agent (from the endpoints file or the Kubernetes API).

    `labels` are the pod's own labels; `identity_labels()` adds what every pod identity
    carries (namespace, service account, cluster) unless the pod's labels already set them.
    """

    namespace: str
    name: str
    labels: tuple[tuple[str, str], ...]
    ip: ipaddress.IPv4Address
    node: str
    endpoint_id: int = 0  # small per-node number used as BPF map key (0 = unassigned)

    def identity_labels(self) -> frozenset[Label]:
        own = dict(self.labels)
        full = {NAMESPACE_LABEL: self.namespace, **POD_IDENTITY_DEFAULTS}
        full.update(own)
        return frozenset(Label("k8s", k, v) for k, v in full.items())

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class Peer:
    """The other end of a flow as policy sees it.

    A pod (`endpoint` set), a reserved entity (host, remote-node, ...) or an outside IP
    (world, possibly covered by CIDR identities). `fqdns` are the names this IP was learned
    for through an allowed, proxied DNS answer (lower-case, with the trailing dot).
    """

    identity: Identity
    ip: ipaddress.IPv4Address | None = None
    endpoint: Endpoint | None = None
    fqdns: frozenset[str] = field(default_factory=frozenset)


# --- what the engine hands to the datapath and the proxies -----------------------------------


@dataclass(frozen=True, slots=True)
class DatapathEntry:
    """One resolved policy-map entry for an endpoint and direction.

    `peer_identity` is a concrete numeric identity (never a wildcard: the engine expands
    selectors over the known identities). Entries of one endpoint/direction/identity/proto
    never overlap in port range; deny precedence is already applied. `port_lo == 0 and
    port_hi == 65535` with proto ANY covers all ports and protocols.
    """

    direction: Direction
    peer_identity: int
    proto: Proto
    port_lo: int
    port_hi: int
    action: L4Action
    rule_id: str  # what produced it, for `bpf policy list` and drop attribution


@dataclass(frozen=True, slots=True)
class HttpRequestMeta:
    """What the HTTP rules look at, after normalization (the same bytes go upstream).

    `path` is the normalized request target in origin form, query included (Cilium matches
    the whole :path). `host` is the Host / :authority value as sent (port included if any).
    `headers` are (lower-cased name, value) pairs in arrival order.
    """

    method: str
    path: str
    host: str
    headers: tuple[tuple[str, str], ...] = ()


class HttpRequestView(Protocol):
    """What the HTTP rules read of a request, with HttpRequestMeta's meaning: an
    HttpRequestMeta, or the HTTP proxy's prepared request (proxy/http/request.py), which
    carries the same four fields for what it forwards, so the proxy decides on the request
    itself without building a second object per request."""

    @property
    def method(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def host(self) -> str: ...
    @property
    def headers(self) -> tuple[tuple[str, str], ...]: ...
