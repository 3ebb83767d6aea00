"""Build the per-request L7 `Flow` record cheaply (pure, no I/O).

Contract: `lazy_http_flow(...)` is what the session emits: a `LazyHttpFlow` (observe/flow.py's
`LazyFlow` contract) holding the same values, whose unset fields are filled from
`http_flow(...)` with those values the first time anything reads them (most flows are only
counted in metrics and evicted from the ring unread): two objects (the flow and one tuple)
instead of twelve (less for the collector), about half the instructions of `http_flow`
(callgrind). tests/unit/agent/test_lazy_flows.py compares it with `http_flow`.

`http_flow(...)` (the eager reference) returns a `Flow` equal to the one the keyword constructor
builds with the same values (every other field at its default, fresh containers each time, so a
consumer that mutates one flow never touches another). The generated dataclass `__init__` of a
24-field record with seven default factories costs ~2.5 µs more per request than assigning the
slots directly (measured on the project VM), and one flow is emitted per request. If `Flow` (or
`FlowEndpoint`) gains, loses or reorders a field, the direct path is switched off at import and
the keyword constructor is used (test_flows.py pins both).
"""

from __future__ import annotations

from dataclasses import fields
from typing import Protocol

from observe.flow import EventKind, Flow, FlowEndpoint, FlowVerdict, HttpInfo, LazyFlow

# The fields `_direct` assigns, in declaration order; compared with Flow's at import.
_KNOWN_FIELDS = (
    "time_ns", "verdict", "kind", "src_ip", "dst_ip", "protocol", "src_port", "dst_port",
    "tcp_flags", "source", "destination", "drop_reason_desc", "traffic_direction",
    "node_name", "is_reply", "l7_type", "latency_ns", "http", "dns", "source_names",
    "destination_names", "allowed_by", "denied_by", "summary",
)
_KNOWN_ENDPOINT_FIELDS = ("identity", "namespace", "pod_name", "labels", "ID")
DIRECT = (tuple(f.name for f in fields(Flow)) == _KNOWN_FIELDS
          and tuple(f.name for f in fields(FlowEndpoint)) == _KNOWN_ENDPOINT_FIELDS)
_new = object.__new__


def _endpoint() -> FlowEndpoint:
    e: FlowEndpoint = _new(FlowEndpoint)
    e.identity = 0
    e.namespace = ""
    e.pod_name = ""
    e.labels = []
    e.ID = 0
    return e


def _direct(time_ns: int, verdict: FlowVerdict, src_ip: str, dst_ip: str, src_port: int,
            dst_port: int, l7_type: str, latency_ns: int, drop_reason_desc: str,
            http: HttpInfo) -> Flow:
    f: Flow = _new(Flow)
    f.time_ns = time_ns
    f.verdict = verdict
    f.kind = EventKind.L7
    f.src_ip = src_ip
    f.dst_ip = dst_ip
    f.protocol = "TCP"
    f.src_port = src_port
    f.dst_port = dst_port
    f.tcp_flags = []
    f.source = _endpoint()
    f.destination = _endpoint()
    f.drop_reason_desc = drop_reason_desc
    f.traffic_direction = ""
    f.node_name = ""
    f.is_reply = None
    f.l7_type = l7_type
    f.latency_ns = latency_ns
    f.http = http
    f.dns = None
    f.source_names = []
    f.destination_names = []
    f.allowed_by = []
    f.denied_by = []
    f.summary = ""
    return f


def _keyword(time_ns: int, verdict: FlowVerdict, src_ip: str, dst_ip: str, src_port: int,
             dst_port: int, l7_type: str, latency_ns: int, drop_reason_desc: str,
             http: HttpInfo) -> Flow:
    return Flow(time_ns=time_ns, verdict=verdict, kind=EventKind.L7, src_ip=src_ip,
                dst_ip=dst_ip, protocol="TCP", src_port=src_port, dst_port=dst_port,
                l7_type=l7_type, latency_ns=latency_ns, drop_reason_desc=drop_reason_desc,
                http=http)


http_flow = _direct if DIRECT else _keyword


class LazyHttpFlow(LazyFlow):
    """One HTTP request/response flow, built on first read from `http_flow` (module doc)."""

    # (src_port, dst_port, url): read back only to build the flow; method, protocol and
    # code live in LazyFlow's `_mkey` ("http", verdict, l7_type, method, protocol, code,
    # latency > 0), which the metrics compare per flow
    __slots__ = ("_http",)
    _http: tuple[int, int, str]
    _mkey: tuple[str, FlowVerdict, str, str, str, int, bool]
    l7_protocol = "http"

    def _reference(self) -> Flow:
        sport, dport, url = self._http
        _, _, _, method, protocol, code, _ = self._mkey
        return http_flow(self.time_ns, self.verdict, self.src_ip, self.dst_ip, sport, dport,
                         self.l7_type, self.latency_ns, self.drop_reason_desc,
                         HttpInfo(method, url, protocol, code, []))

    def metric_key(self) -> tuple[object, ...]:
        # metrics/flows.py `_http_key` reads the same values (kind is always L7 here); the
        # verdict by its value string (Enum.__hash__ is a Python call)
        m = self._mkey
        return (LazyHttpFlow, self.verdict._value_, self.l7_type, self.traffic_direction,
                self.drop_reason_desc, m[3], m[4], m[5], self.latency_ns > 0)


# Enum members as globals: a member looked up on its class costs ~650 instructions in
# CPython 3.11, a global ~60 (callgrind).
_L7 = EventKind.L7
_DROPPED = FlowVerdict.DROPPED


def lazy_http_flow(time_ns: int, verdict: FlowVerdict, conn: _Conn, req: _Request, code: int,
                   l7_type: str, latency_ns: int) -> Flow:
    """The session's flow: equal to `http_flow(time_ns, verdict, conn.src_ip, conn.dst_ip,
    conn.src_port, conn.dst_port, l7_type, latency_ns, "POLICY_DENIED" if verdict is DROPPED
    else "", HttpInfo(req.method, req.url, req.protocol, code, []))`, built when read."""
    f: LazyHttpFlow = _new(LazyHttpFlow)
    f._done = False
    f.time_ns = time_ns
    f.verdict = verdict
    f.kind = _L7
    f.src_ip = conn.src_ip
    f.dst_ip = conn.dst_ip
    f.traffic_direction = ""
    f.l7_type = l7_type
    f.latency_ns = latency_ns
    f.drop_reason_desc = "POLICY_DENIED" if verdict is _DROPPED else ""
    f._http = (conn.src_port, conn.dst_port, req.url)
    # what metric_key() reads but the direction, fixed here (LazyFlow's `_mkey`)
    f._mkey = ("http", verdict, l7_type, req.method, req.protocol, code, latency_ns > 0)
    return f


class _Conn(Protocol):
    @property
    def src_ip(self) -> str: ...
    @property
    def dst_ip(self) -> str: ...
    @property
    def src_port(self) -> int: ...
    @property
    def dst_port(self) -> int: ...


class _Request(Protocol):
    @property
    def method(self) -> str: ...
    @property
    def url(self) -> str: ...
    @property
    def protocol(self) -> str: ...
