"""The Flow record: one value behind logs, metrics, `observe` and tests (no I/O here).

Field names follow Hubble's flow.proto JSON (`time`, `verdict`, `drop_reason_desc`, `source`,
`destination`, `IP`, `l4`, `l7`, `traffic_direction`, `node_name`, `Summary`, ...) so that
users' jq filters written for `hubble observe -o json` keep working. `to_json()` gives the
dict under `{"flow": ...}`; `Flow.from_json()` reads it back (for `--input-file`).

`LazyFlow` is a `Flow` whose fields are derived on first read: the proxies emit one per
request / query and most are never read (the ring evicts them unseen; metrics need only a
few fields). Its contract is in its docstring.
"""

from __future__ import annotations

import datetime as _dt
import enum
import re
from dataclasses import dataclass, field, fields
from typing import Any


class FlowVerdict(enum.Enum):
    FORWARDED = "FORWARDED"
    DROPPED = "DROPPED"
    REDIRECTED = "REDIRECTED"
    AUDIT = "AUDIT"
    ERROR = "ERROR"
    TRACED = "TRACED"


class FlowType(enum.Enum):
    L3_L4 = "L3_L4"
    L7 = "L7"


class EventKind(enum.Enum):
    """Hubble's `-t/--type` vocabulary (event_type.type)."""

    DROP = "drop"
    TRACE = "trace"
    L7 = "l7"
    POLICY_VERDICT = "policy-verdict"


@dataclass(slots=True)
class FlowEndpoint:
    """Hubble's Endpoint: identity, namespace, pod name and `k=v` label strings."""

    identity: int = 0
    namespace: str = ""
    pod_name: str = ""
    labels: list[str] = field(default_factory=list)
    ID: int = 0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"identity": self.identity}
        if self.ID:
            out["ID"] = self.ID
        if self.namespace:
            out["namespace"] = self.namespace
        if self.pod_name:
            out["pod_name"] = self.pod_name
        if self.labels:
            out["labels"] = list(self.labels)
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> FlowEndpoint:
        return cls(
            identity=int(d.get("identity", 0)),
            namespace=d.get("namespace", ""),
            pod_name=d.get("pod_name", ""),
            labels=list(d.get("labels", [])),
            ID=int(d.get("ID", 0)),
        )


@dataclass(slots=True)
class HttpInfo:
    method: str = ""
    url: str = ""
    protocol: str = "HTTP/1.1"
    code: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method, "url": self.url, "protocol": self.protocol}
        if self.code:
            out["code"] = self.code
        if self.headers:
            out["headers"] = [{"key": k, "value": v} for k, v in self.headers]
        return out


@dataclass(slots=True)
class DnsInfo:
    query: str = ""
    ips: list[str] = field(default_factory=list)
    ttl: int = 0
    cnames: list[str] = field(default_factory=list)
    rcode: int = 0
    qtypes: list[str] = field(default_factory=list)
    rrtypes: list[str] = field(default_factory=list)
    observation_source: str = "proxy"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"query": self.query, "rcode": self.rcode,
                               "observation_source": self.observation_source}
        for name in ("ips", "cnames", "qtypes", "rrtypes"):
            val = getattr(self, name)
            if val:
                out[name] = list(val)
        if self.ttl:
            out["ttl"] = self.ttl
        return out


@dataclass(slots=True)
class Flow:
    """One observed event. `time_ns` is wall-clock nanoseconds since the epoch."""

    time_ns: int
    verdict: FlowVerdict
    kind: EventKind
    src_ip: str = ""
    dst_ip: str = ""
    protocol: str = ""  # "TCP" | "UDP" | "ICMPv4" | ""
    src_port: int = 0
    dst_port: int = 0
    tcp_flags: list[str] = field(default_factory=list)  # e.g. ["SYN"]
    source: FlowEndpoint = field(default_factory=FlowEndpoint)
    destination: FlowEndpoint = field(default_factory=FlowEndpoint)
    drop_reason_desc: str = ""  # DropReason name, set iff verdict is DROPPED
    traffic_direction: str = ""  # "INGRESS" | "EGRESS"
    node_name: str = ""
    is_reply: bool | None = None
    l7_type: str = ""  # "REQUEST" | "RESPONSE" for L7 flows
    latency_ns: int = 0
    http: HttpInfo | None = None
    dns: DnsInfo | None = None
    source_names: list[str] = field(default_factory=list)
    destination_names: list[str] = field(default_factory=list)
    allowed_by: list[str] = field(default_factory=list)  # "ns/name" policy refs
    denied_by: list[str] = field(default_factory=list)
    summary: str = ""

    @property
    def type(self) -> FlowType:
        return FlowType.L7 if self.kind is EventKind.L7 else FlowType.L3_L4

    def to_json(self) -> dict[str, Any]:
        ts = _dt.datetime.fromtimestamp(self.time_ns / 1e9, tz=_dt.UTC)
        out: dict[str, Any] = {
            "time": ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{self.time_ns % 1_000_000_000:09d}Z",
            "verdict": self.verdict.value,
            "Type": self.type.value,
            "event_type": {"type": self.kind.value},
            "node_name": self.node_name,
            "source": self.source.to_json(),
            "destination": self.destination.to_json(),
            "Summary": self.summary,
        }
        if self.src_ip or self.dst_ip:
            out["IP"] = {"source": self.src_ip, "destination": self.dst_ip, "ipVersion": "IPv4"}
        if self.protocol in ("TCP", "UDP"):
            l4: dict[str, Any] = {"source_port": self.src_port, "destination_port": self.dst_port}
            if self.protocol == "TCP" and self.tcp_flags:
                l4["flags"] = {f: True for f in self.tcp_flags}
            out["l4"] = {self.protocol: l4}
        elif self.protocol.startswith("ICMP"):
            out["l4"] = {self.protocol: {}}
        if self.drop_reason_desc:
            out["drop_reason_desc"] = self.drop_reason_desc
        if self.traffic_direction:
            out["traffic_direction"] = self.traffic_direction
        if self.is_reply is not None:
            out["is_reply"] = self.is_reply
        if self.http is not None or self.dns is not None:
            l7: dict[str, Any] = {"type": self.l7_type or "REQUEST"}
            if self.latency_ns:
                l7["latency_ns"] = str(self.latency_ns)
            if self.http is not None:
                l7["http"] = self.http.to_json()
            if self.dns is not None:
                l7["dns"] = self.dns.to_json()
            out["l7"] = l7
        if self.source_names:
            out["source_names"] = list(self.source_names)
        if self.destination_names:
            out["destination_names"] = list(self.destination_names)
        pre = "egress" if self.traffic_direction == "EGRESS" else "ingress"
        key_allowed, key_denied = f"{pre}_allowed_by", f"{pre}_denied_by"
        if self.allowed_by:
            out[key_allowed] = [_policy_ref(p) for p in self.allowed_by]
        if self.denied_by:
            out[key_denied] = [_policy_ref(p) for p in self.denied_by]
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Flow:
        """Inverse of to_json (accepts the `{"flow": ...}` wrapper too)."""
        d = d.get("flow", d)
        time_ns = parse_time_ns(d["time"])
        ip = d.get("IP", {})
        protocol, sport, dport, flags = "", 0, 0, []
        for proto, l4 in d.get("l4", {}).items():
            protocol = proto
            sport, dport = int(l4.get("source_port", 0)), int(l4.get("destination_port", 0))
            flags = sorted(l4.get("flags", {}))
        l7 = d.get("l7") or {}
        http = dns = None
        if "http" in l7:
            h = l7["http"]
            http = HttpInfo(method=h.get("method", ""), url=h.get("url", ""),
                            protocol=h.get("protocol", ""), code=int(h.get("code", 0)),
                            headers=[(x["key"], x["value"]) for x in h.get("headers", [])])
        if "dns" in l7:
            x = l7["dns"]
            dns = DnsInfo(query=x.get("query", ""), ips=list(x.get("ips", [])),
                          ttl=int(x.get("ttl", 0)),
                          cnames=list(x.get("cnames", [])), rcode=int(x.get("rcode", 0)),
                          qtypes=list(x.get("qtypes", [])), rrtypes=list(x.get("rrtypes", [])),
                          observation_source=x.get("observation_source", "proxy"))
        direction = d.get("traffic_direction", "")
        pre = "egress" if direction == "EGRESS" else "ingress"
        return cls(
            time_ns=time_ns,
            verdict=FlowVerdict(d["verdict"]),
            kind=event_kind(d.get("event_type", {}).get("type", "trace")),
            src_ip=ip.get("source", ""), dst_ip=ip.get("destination", ""),
            protocol=protocol, src_port=sport, dst_port=dport, tcp_flags=flags,
            source=FlowEndpoint.from_json(d.get("source", {})),
            destination=FlowEndpoint.from_json(d.get("destination", {})),
            drop_reason_desc=d.get("drop_reason_desc", ""),
            traffic_direction=direction, node_name=d.get("node_name", ""),
            is_reply=d.get("is_reply"), l7_type=l7.get("type", ""),
            latency_ns=int(l7.get("latency_ns", 0)), http=http, dns=dns,
            source_names=list(d.get("source_names", [])),
            destination_names=list(d.get("destination_names", [])),
            allowed_by=[_policy_unref(p) for p in d.get(f"{pre}_allowed_by", [])],
            denied_by=[_policy_unref(p) for p in d.get(f"{pre}_denied_by", [])],
            summary=d.get("Summary", ""),
        )


# Flow's slots as (name, member descriptor): `LazyFlow` tests and fills them directly, under
# its own properties.
_FLOW_SLOTS: tuple[tuple[str, Any], ...] = tuple(
    (f.name, Flow.__dict__[f.name]) for f in fields(Flow))

# The fields every LazyFlow producer sets directly (plain slots: the ring, `since`, the
# emitter and the metrics read them per flow at slot speed). Every other field of a LazyFlow
# is a property that materialises the flow on first read.
LAZY_EAGER_FIELDS = ("time_ns", "verdict", "kind", "src_ip", "dst_ip", "traffic_direction",
                     "l7_type", "latency_ns", "drop_reason_desc")


class LazyFlow(Flow):
    """A `Flow` whose other fields are built on first read (one per proxied request/query).

    Contract:
    - A producer creates it without `__init__` (`object.__new__`), sets `_done = False` and
      the LAZY_EAGER_FIELDS, keeps the rest of what it knows in its own slots, and implements
      `_reference()`: the Flow its eager builder gives for the same values (that builder
      stays the reference; the lazy class never re-implements it). It sets no other field.
    - The emitter may bind, before anything read the flow, `_bound = (node_name, source,
      destination)` and `_names` (destination_names) as it would have set them on an eager
      flow, and update the eager fields (traffic_direction). Anything time-dependent is
      captured then, at emit, never at read (agent/flows.py `bind_l7`).
    - Any other field may be assigned at any time (the DNS session sets `denied_by` after
      `_flow`); assigned values are kept, as on an eager Flow.
    - The first read of a field that is still unset (attribute access, `to_json`, `==`,
      `repr`, filters, printers, the exporter) materialises the flow ONCE: `_reference()` is
      built, `_bound`/`_names` applied to it, and every unset field copied from it; `_done`
      then reads True. From then on it is a plain Flow in all but its class; equality
      compares field values with any Flow.
    - `metric_key()` (without materialising): a hashable value such that two flows with
      equal keys bump exactly the same metric children (metrics/flows.py replays one plan per
      key); it contains the class, and reads only eager fields and the producer's slots.
    - `_mkey`: None, or what the producer knew of `metric_key()` at creation, such that two
      flows with equal non-None `_mkey`s and equal `traffic_direction`s have equal
      `metric_key()`s (the only field metric_key() reads that the emitter binds later is the
      direction; a producer that sets `_mkey` never changes the others). The metrics then
      call metric_key() once per run of such flows, not once per flow.
    Materialising from two threads at once computes equal values twice (harmless: each field
    is one atomic store, and the reference depends only on what was captured).
    Why not `__getattr__`: a type with one loses CPython 3.11's specialised attribute loads
    for every attribute, eager ones included (~2x the cost of the whole emit path).
    """

    __slots__ = ("_bound", "_done", "_mkey", "_names")
    _bound: tuple[str, FlowEndpoint, FlowEndpoint]
    _done: bool
    _mkey: object
    _names: list[str]
    l7_protocol = ""  # "http" | "dns": which of `http` / `dns` `_reference()` fills

    def _reference(self) -> Flow:
        raise NotImplementedError

    def metric_key(self) -> tuple[object, ...]:
        raise NotImplementedError

    def materialise(self) -> Flow:
        """Fill every unset field (see the class doc); returns self."""
        if self._done:
            return self
        ref = self._reference()
        bound = _get_or_none(self, _BOUND)
        if bound is not None:
            ref.node_name, ref.source, ref.destination = bound
        names = _get_or_none(self, _NAMES)
        if names is not None:
            ref.destination_names = names
        for _name, slot in _FLOW_SLOTS:
            try:
                slot.__get__(self, Flow)
            except AttributeError:
                slot.__set__(self, slot.__get__(ref, Flow))
        self._done = True
        return self

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Flow):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name, _ in _FLOW_SLOTS)

    __hash__ = None  # type: ignore[assignment]  # mutable, like Flow


_BOUND: Any = LazyFlow.__dict__["_bound"]
_NAMES: Any = LazyFlow.__dict__["_names"]


def _get_or_none(obj: object, slot: Any) -> Any:
    try:
        return slot.__get__(obj, type(obj))
    except AttributeError:
        return None


def _lazy_field(slot: Any) -> property:
    def get(self: LazyFlow) -> Any:
        try:
            return slot.__get__(self, Flow)
        except AttributeError:
            self.materialise()
            return slot.__get__(self, Flow)

    def put(self: LazyFlow, value: Any) -> None:
        slot.__set__(self, value)

    return property(get, put)


for _name, _slot in _FLOW_SLOTS:
    if _name not in LAZY_EAGER_FIELDS:
        setattr(LazyFlow, _name, _lazy_field(_slot))


# Cilium's monitor message types (pkg/monitor/api/types.go), as real Hubble exports carry them.
_MONITOR_TYPES = {1: EventKind.DROP, 4: EventKind.TRACE, 5: EventKind.POLICY_VERDICT,
                  129: EventKind.L7}


def event_kind(value: str | int) -> EventKind:
    """`event_type.type` as we write it ("drop") or as Hubble exports it (1, 4, 5, 129)."""
    if isinstance(value, int) or str(value).isdigit():
        try:
            return _MONITOR_TYPES[int(value)]
        except KeyError:
            raise ValueError(f"unsupported event type {value!r}") from None
    return EventKind(value)


_RFC3339 = re.compile(
    r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})$"
)


def parse_time_ns(text: str) -> int:
    """RFC 3339 time (any fraction length, `Z` or offset, as protojson writes) -> epoch ns."""
    m = _RFC3339.match(text.strip())
    if m is None:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    base, frac, zone = m.groups()
    zone = "+00:00" if zone == "Z" else zone
    secs = int(_dt.datetime.fromisoformat(base + zone).timestamp())
    return secs * 1_000_000_000 + int((frac or "").ljust(9, "0"))


def _policy_ref(ref: str) -> dict[str, str]:
    ns, _, name = ref.rpartition("/")
    out = {"name": name, "kind": "CiliumNetworkPolicy" if ns else "CiliumClusterwideNetworkPolicy"}
    if ns:
        out["namespace"] = ns
    return out


def _policy_unref(p: dict[str, str]) -> str:
    return f"{p['namespace']}/{p['name']}" if p.get("namespace") else p["name"]
