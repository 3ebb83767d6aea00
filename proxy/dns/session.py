"""Sans-IO core of the DNS proxy: queries and answers in, actions out (STYLE.md §1/§2).

No asyncio, no sockets, no clock of its own (`clock_ns`/`wall_ns` are injected). The asyncio
server (`proxy/dns/server.py`) executes the actions in order and reports back:
- `feed_query(data, info, client)`: a pod's query. Malformed -> FORMERR (or nothing when there
  is no header), other opcodes -> NOTIMP, never forwarded. Over `max_inflight` (whole proxy)
  or `max_inflight_per_client` (one pod IP, so a flood of slow names cannot starve the other
  pods) -> REFUSED and a
  counter (overload is answered, never a silent timeout). Denied -> REFUSED (or NXDOMAIN)
  without contacting upstream. Allowed -> `SendUpstream` on a pooled channel towards the
  original destination with a fresh random ID (RFC 5452 §9.2); the client's ID is restored
  on the way back.
- `feed_upstream(channel, data)`: an answer. It must match a pending (channel, ID) and pass
  `analyze_answer` (ID, question, bounded CNAME chain); anything else is counted and ignored
  (the genuine answer may still come, else the timeout answers SERVFAIL). With IPs to learn
  the core returns `Learn(token, ...)`; the server awaits it (bounded) and calls
  `learn_done(token, timed_out)`, which releases the upstream's bytes (only the ID changed).
- `tick()`: SERVFAIL for every query whose upstream did not answer in time (the ID tables
  are scanned oldest-first; no per-query timer or deadline queue exists).
- `channel_closed(channel)`: SERVFAIL for the queries pending on a broken TCP channel.
Every query ends in exactly one `Emit(Flow)`.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import functools
import operator
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from observe.flow import DnsInfo, EventKind, Flow, FlowEndpoint, FlowVerdict
from policy.errors import L7gateError, RemoteProtocolError
from policy.types import Decision, DropReason, Verdict
from proxy.dns import wire

MAX_PER_CHANNEL = 1024  # in-flight IDs per upstream socket: keeps a blind spoofer's odds <= 1/64
DEFAULT_MAX_INFLIGHT = 10_000  # whole proxy; beyond this the pod gets REFUSED (explicit overload)
DEFAULT_MAX_INFLIGHT_PER_CLIENT = 1000  # one pod IP; 10% of the proxy so ten noisy pods fit
DEFAULT_UPSTREAM_TIMEOUT_S = 2.0  # Cilium's dnsproxy uses 2 s for the upstream exchange
_QTYPE_NAMES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT",
                28: "AAAA", 33: "SRV", 64: "SVCB", 65: "HTTPS", 255: "ANY"}


@functools.lru_cache(maxsize=4096)  # a handful of rule ids, one call per query
def _policy_ref(rule_id: str | None) -> str:
    """"ns/name:egress[2]" -> "ns/name" (Hubble's *_allowed_by lists policies, not rules);
    "" for ids that name no policy ("default-deny")."""
    if not rule_id or "/" not in rule_id:
        return ""
    return rule_id.split(":", 1)[0]


class Stage(enum.Enum):
    """Latency stages exported by the metrics collector (closed label set)."""

    POLICY = "policy"
    UPSTREAM = "upstream"
    DATAPATH = "datapath"
    TOTAL = "total"


class DnsConnInfo(NamedTuple):
    """Who asked whom. `dst_*` is the original destination: the DNS server the pod chose."""

    src_ip: str
    src_port: int
    dst_ip: str
    dst_port: int
    proto: str  # "UDP" | "TCP"


class Channel(NamedTuple):
    """One pooled upstream socket: server, transport, SO_MARK and its index in the pool.

    A NamedTuple rather than a dataclass: it keys the pending-query table, and tuple hashing
    is done in C (a frozen dataclass hashes in Python on every lookup).
    """

    server_ip: str
    server_port: int
    proto: str
    mark: int
    slot: int = 0


# Values the core hands out on every query are NamedTuples, not frozen dataclasses: they
# are built several times per query and a frozen dataclass costs ~1.6 µs to construct
# against ~0.25 µs (measured here), a sizeable share of the per-query budget.


class SendClient(NamedTuple):
    client: object  # the TCP connection handle; unused for UDP (info gives the addresses)
    info: DnsConnInfo
    data: bytes


class SendUpstream(NamedTuple):
    channel: Channel
    data: bytes


class Learn(NamedTuple):
    token: int
    info: DnsConnInfo
    qname: str
    ips: list[tuple[str, int]]


class Emit(NamedTuple):
    flow: Flow


class Drop(NamedTuple):
    reason: str


Action = SendClient | SendUpstream | Learn | Emit | Drop


@dataclass(slots=True)
class DnsProxyStats:
    """Counters for the metrics collector (labels are closed sets: verdict, rcode, kind)."""

    queries: collections.Counter[tuple[str, int]] = field(default_factory=collections.Counter)
    malformed_queries: int = 0
    notimp_queries: int = 0
    overload_refusals: int = 0
    upstream_errors: collections.Counter[str] = field(default_factory=collections.Counter)
    bad_answers: int = 0  # malformed, wrong question, wrong ID
    unmatched_answers: int = 0  # no pending query with that channel and ID
    ignored_records: int = 0  # A/AAAA for names the query did not ask
    capped_answers: int = 0
    learn_timeouts: int = 0
    learn_errors: int = 0


class _Pending:
    """One forwarded query, from `_forward` until its answer (or SERVFAIL) is released.

    A plain slots class with a positional __init__: built once per allowed query."""

    __slots__ = ("answer", "answered_ns", "channel", "client", "data", "forwarded_ns", "info",
                 "query", "reply", "rule_id", "started_ns", "upstream_id")

    def __init__(self, client: object, info: DnsConnInfo, query: wire.Query, data: bytes,
                 started_ns: int, rule_id: str | None, channel: Channel, upstream_id: int,
                 forwarded_ns: int) -> None:
        self.client = client
        self.info = info
        self.query = query
        self.data = data
        self.started_ns = started_ns
        self.rule_id = rule_id
        self.channel = channel
        self.upstream_id = upstream_id
        self.forwarded_ns = forwarded_ns
        self.answered_ns = 0
        self.reply = b""
        self.answer: wire.Answer | None = None


_NS_PER_S = 1e9
# NamedTuple constructors are generated Python functions; on the per-query path the action
# tuples are built with the C constructor instead (same objects, ~0.2 µs less each).
_new = tuple.__new__
_first = operator.itemgetter(0)
_ID = struct.Struct("!H")
MAX_CHANNEL_KEYS = 4096  # cached (server, port, proto, mark) -> Channel; cleared when full


class DnsSession:
    """All in-flight queries of one proxy instance (sans-IO; see the module docstring).

    Per-query state lives in one `_Pending` reached through its channel's ID table
    (`_tables[channel][upstream_id]`), and nowhere else once it is answered.
    """

    def __init__(
        self,
        decide: Callable[[DnsConnInfo, str], Verdict],
        *,
        clock_ns: Callable[[], int],
        wall_ns: Callable[[], int],
        upstream_mark: Callable[[DnsConnInfo], int] | None = None,
        reject_rcode: str = "refused",
        upstream_timeout_s: float = DEFAULT_UPSTREAM_TIMEOUT_S,
        max_inflight: int = DEFAULT_MAX_INFLIGHT,
        max_inflight_per_client: int = DEFAULT_MAX_INFLIGHT_PER_CLIENT,
        on_stage: Callable[[Stage, float], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if reject_rcode not in ("refused", "nameError"):
            raise ValueError(f"reject_rcode must be 'refused' or 'nameError', not {reject_rcode!r}")
        self._decide = decide
        self._clock = clock_ns
        self._wall = wall_ns
        self._mark = upstream_mark
        self._reject = wire.RCODE_NXDOMAIN if reject_rcode == "nameError" else wire.RCODE_REFUSED
        self._timeout_ns = int(upstream_timeout_s * 1e9)
        self._max_inflight = max_inflight
        self._max_per_client = max_inflight_per_client
        self._per_client: dict[str, int] = {}  # src IP -> queries pending or learning
        self._on_stage = on_stage
        self._rng = rng or random.Random()  # seeded from os.urandom
        self._getrandbits = self._rng.getrandbits
        self._channels: dict[tuple[str, int, str, int], Channel] = {}  # slot-0 channels
        self._tables: dict[Channel, dict[int, _Pending]] = {}  # channel -> upstream ID -> query
        self._inflight = 0  # pending + learning
        self._learning: dict[int, _Pending] = {}
        self._next_token = 0
        self.stats = DnsProxyStats()

    @property
    def inflight(self) -> int:
        return self._inflight

    def channel_busy(self, channel: Channel) -> bool:
        """True while a forwarded query waits for an answer on `channel` (its socket must stay)."""
        return channel in self._tables

    # --- pod side ---------------------------------------------------------------------------

    def feed_query(self, data: bytes, info: DnsConnInfo, client: object = None) -> list[Action]:
        start = self._clock()
        try:
            query = wire.parse_query(data)
        except wire.UnsupportedOpcode:
            self.stats.notimp_queries += 1
            return self._malformed(data, info, client, wire.notimp(data), wire.RCODE_NOTIMP)
        except RemoteProtocolError:
            self.stats.malformed_queries += 1
            return self._malformed(data, info, client, wire.formerr(data), wire.RCODE_FORMERR)
        src_ip = info.src_ip
        per_client = self._per_client.get(src_ip, 0)
        if self._inflight >= self._max_inflight or per_client >= self._max_per_client:
            self.stats.overload_refusals += 1
            reply = wire.refused(query, data)
            return self._finish_local(client, info, query, reply, start, None, FlowVerdict.ERROR)
        try:
            verdict = self._decide(info, query.qname)
        except L7gateError:
            verdict = Verdict(Decision.ERROR)
        decided = self._clock()
        if self._on_stage is not None:
            self._on_stage(Stage.POLICY, (decided - start) / _NS_PER_S)
        decision = verdict.decision
        if decision is not Decision.FORWARDED:
            if decision is Decision.DENIED:
                reply = wire.error_reply(query, data, self._reject)
                return self._finish_local(client, info, query, reply, start, verdict,
                                          FlowVerdict.DROPPED)
            reply = wire.servfail(query, data)
            return self._finish_local(client, info, query, reply, start, verdict, FlowVerdict.ERROR)
        # Forward: a pooled channel towards the original destination, a fresh random ID.
        mark = self._mark(info) if self._mark is not None else 0
        key = (info.dst_ip, info.dst_port, info.proto, mark)
        channel = self._channels.get(key)
        if channel is None:
            if len(self._channels) >= MAX_CHANNEL_KEYS:
                self._channels.clear()  # a pod spraying server addresses cannot grow it
            channel = self._channels[key] = Channel(*key)
        table = self._tables.get(channel)
        if table is None:
            table = self._tables[channel] = {}
        elif len(table) >= MAX_PER_CHANNEL:
            channel, table = self._spill(key)
        getrandbits = self._getrandbits
        upstream_id = getrandbits(16)  # RFC 5452 §9.2; occupancy <= 1/64 so retries are rare
        while upstream_id in table:
            upstream_id = getrandbits(16)
        pending = _Pending(client, info, query, data, start, verdict.rule_id, channel,
                           upstream_id, decided)
        table[upstream_id] = pending
        self._inflight += 1
        self._per_client[src_ip] = per_client + 1
        return [_new(SendUpstream, (channel, _ID.pack(upstream_id) + data[2:]))]

    def _spill(self, key: tuple[str, int, str, int]) -> tuple[Channel, dict[int, _Pending]]:
        """Slot 0 is full (MAX_PER_CHANNEL in flight): the first slot with room, or a new one."""
        index = 1
        while True:
            channel = Channel(*key, index)
            table = self._tables.get(channel)
            if table is None:
                table = self._tables[channel] = {}
                return channel, table
            if len(table) < MAX_PER_CHANNEL:
                return channel, table
            index += 1

    def _malformed(self, data: bytes, info: DnsConnInfo, client: object, reply: bytes | None,
                   rcode: int) -> list[Action]:
        self.stats.queries[("malformed", rcode)] += 1
        flow = self._flow(info, "", None, rcode, FlowVerdict.DROPPED, 0, False, None, None)
        flow.drop_reason_desc = DropReason.INVALID_PACKET_DROPPED.name
        first: Action = SendClient(client, info, reply) if reply is not None else Drop("malformed")
        return [first, Emit(flow)]

    def _finish_local(self, client: object, info: DnsConnInfo, query: wire.Query, reply: bytes,
                      start: int, verdict: Verdict | None, fv: FlowVerdict) -> list[Action]:
        rcode = reply[3] & 0xF
        self.stats.queries[(fv.value.lower(), rcode)] += 1
        latency = self._clock() - start
        if self._on_stage is not None:
            self._on_stage(Stage.TOTAL, latency / _NS_PER_S)
        flow = self._flow(info, query.qname, query, rcode, fv, latency, False, None, None)
        if verdict is not None and verdict.reason is not None:
            flow.drop_reason_desc = verdict.reason.name
            ref = _policy_ref(verdict.rule_id)
            if ref and verdict.reason is DropReason.POLICY_DENY:  # only explicit deny rules
                flow.denied_by = [ref]
        return [SendClient(client, info, reply), Emit(flow)]

    # --- upstream side ----------------------------------------------------------------------

    def feed_upstream(self, channel: Channel, data: bytes) -> list[Action]:
        table = self._tables.get(channel)
        if table is None or len(data) < wire.HEADER_BYTES:
            self.stats.unmatched_answers += 1
            return [Drop("unmatched answer")]
        upstream_id = (data[0] << 8) | data[1]
        pending = table.get(upstream_id)
        if pending is None:
            self.stats.unmatched_answers += 1
            return [Drop("unmatched answer")]
        query = pending.query
        try:
            answer = wire.analyze_answer(query, data, expected_id=upstream_id)
        except RemoteProtocolError:
            self.stats.bad_answers += 1
            return [Drop("bad answer")]
        del table[upstream_id]
        if not table:
            del self._tables[channel]
        pending.answered_ns = now = self._clock()
        if self._on_stage is not None:
            self._on_stage(Stage.UPSTREAM, (now - pending.forwarded_ns) / _NS_PER_S)
        pending.reply = _ID.pack(query.id) + data[2:]
        pending.answer = answer
        if answer.ignored_records:
            self.stats.ignored_records += answer.ignored_records
        if answer.ips_capped:
            self.stats.capped_answers += 1
        if answer.ips and answer.rcode == wire.RCODE_NOERROR:
            self._next_token = token = self._next_token + 1
            self._learning[token] = pending  # still counts for its client and in flight
            return [_new(Learn, (token, pending.info, query.qname, list(answer.ips)))]
        return self._release(pending)

    def learn_done(
        self, token: int, *, timed_out: bool = False, failed: bool = False
    ) -> list[Action]:
        """The datapath update for `token` finished (or hit the max delay): release the answer."""
        pending = self._learning.pop(token)
        if timed_out:
            self.stats.learn_timeouts += 1
        if failed:
            self.stats.learn_errors += 1
        if self._on_stage is not None:
            self._on_stage(Stage.DATAPATH, (self._clock() - pending.answered_ns) / _NS_PER_S)
        return self._release(pending)

    def _release(self, pending: _Pending) -> list[Action]:
        """The query leaves the proxy: per-client and in-flight accounting, one Flow."""
        answer = pending.answer
        assert answer is not None
        info = pending.info
        self._client_done(info.src_ip)
        rcode = answer.rcode
        self.stats.queries[("forwarded", rcode)] += 1
        latency = self._clock() - pending.started_ns
        if self._on_stage is not None:
            self._on_stage(Stage.TOTAL, latency / _NS_PER_S)
        query = pending.query
        flow = self._flow(info, query.qname, query, rcode, FlowVerdict.FORWARDED, latency, True,
                          answer, pending.rule_id)
        return [_new(SendClient, (pending.client, info, pending.reply)), _new(Emit, (flow,))]

    def _client_done(self, src_ip: str) -> None:
        self._inflight -= 1
        left = self._per_client[src_ip] - 1
        if left > 0:
            self._per_client[src_ip] = left
        else:
            del self._per_client[src_ip]

    def _servfail(self, pending: _Pending, kind: str) -> list[Action]:
        table = self._tables.get(pending.channel)
        if table is not None and table.get(pending.upstream_id) is pending:
            del table[pending.upstream_id]
            if not table:
                del self._tables[pending.channel]
        self.stats.upstream_errors[kind] += 1
        pending.reply = wire.servfail(pending.query, pending.data)
        pending.answer = wire.Answer(pending.query.id, wire.RCODE_SERVFAIL, False)
        return self._release(pending)

    def tick(self) -> list[Action]:
        """Answer SERVFAIL for queries whose upstream timed out.

        No deadline queue: every query gets the same timeout and a channel's ID table is a
        dict in insertion order, so its oldest entries come first and the scan stops at the
        first one still in time. (A queue would keep every answered query alive until its
        deadline: tens of thousands of objects for the garbage collector to walk.)
        """
        now = self._clock()
        cutoff = now - self._timeout_ns
        out: list[Action] = []
        for table in list(self._tables.values()):
            expired = []
            for pending in table.values():
                if pending.forwarded_ns > cutoff:
                    break
                expired.append(pending)
            for pending in expired:
                out += self._servfail(pending, "timeout")
        return out

    def channel_closed(self, channel: Channel, kind: str = "connection") -> list[Action]:
        """A TCP upstream connection broke (or could not be opened), or a UDP upstream
        socket reported an ICMP error (kind "icmp": nothing listens there): every query
        waiting on `channel` gets SERVFAIL now, not after the upstream timeout."""
        out: list[Action] = []
        for pending in list(self._tables.get(channel, {}).values()):
            out += self._servfail(pending, kind)
        return out

    def upstream_send_failed(self, channel: Channel, data: bytes) -> list[Action]:
        """Sending the forwarded query failed (e.g. ECONNREFUSED): SERVFAIL at once."""
        table = self._tables.get(channel)
        if table is None or len(data) < wire.HEADER_BYTES:
            return []
        pending = table.get((data[0] << 8) | data[1])
        return self._servfail(pending, "send") if pending is not None else []

    # --- helpers ----------------------------------------------------------------------------

    def _flow(self, info: DnsConnInfo, qname: str, query: wire.Query | None, rcode: int,
              verdict: FlowVerdict, latency_ns: int, is_reply: bool,
              answer: wire.Answer | None, rule_id: str | None) -> Flow:
        """One Hubble-style L7 flow; every list field is built here (one allocation each)."""
        qtypes = [_QTYPE_NAMES.get(query.qtype) or str(query.qtype)] if query is not None else []
        if answer is not None:
            ips = list(map(_first, answer.ips))
            rrtypes = answer.rrtypes
            rrtypes = sorted(set(rrtypes)) if len(rrtypes) > 1 else list(rrtypes)
            if _POSITIONAL:
                dns = DnsInfo(qname, ips, answer.min_ttl, list(answer.cnames), rcode, qtypes,
                              rrtypes)
            else:
                dns = DnsInfo(query=qname, ips=ips, ttl=answer.min_ttl,
                              cnames=list(answer.cnames), rcode=rcode, qtypes=qtypes,
                              rrtypes=rrtypes)
            if ips:
                summary = (f"DNS Answer {qname!r} rcode={rcode} ips={','.join(ips)} "
                           f"TTL={answer.min_ttl}")
            else:
                summary = f"DNS Answer {qname!r} rcode={rcode}"
        else:
            dns = DnsInfo(query=qname, rcode=rcode, qtypes=qtypes)
            summary = (f"DNS Answer {qname!r} rcode={rcode}" if is_reply
                       else f"DNS Query {qname!r} rcode={rcode}")
        ref = _policy_ref(rule_id) if rule_id else ""
        if is_reply:
            src_ip, src_port, dst_ip, dst_port = (info.dst_ip, info.dst_port, info.src_ip,
                                                  info.src_port)
        else:
            src_ip, src_port, dst_ip, dst_port, _proto = info
        if _POSITIONAL:  # half the cost of 24 keywords (see _POSITIONAL)
            return Flow(self._wall(), verdict, EventKind.L7, src_ip, dst_ip, info.proto,
                        src_port, dst_port, [], FlowEndpoint(0, "", "", [], 0),
                        FlowEndpoint(0, "", "", [], 0), "", "EGRESS", "", is_reply,
                        "RESPONSE" if is_reply else "REQUEST", latency_ns, None, dns, [], [],
                        [ref] if ref else [], [], summary)
        return Flow(time_ns=self._wall(), verdict=verdict, kind=EventKind.L7, src_ip=src_ip,
                    dst_ip=dst_ip, protocol=info.proto, src_port=src_port, dst_port=dst_port,
                    traffic_direction="EGRESS", is_reply=is_reply,
                    l7_type="RESPONSE" if is_reply else "REQUEST", latency_ns=latency_ns,
                    dns=dns, allowed_by=[ref] if ref else [], summary=summary)


def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


# `_flow` builds Flow/FlowEndpoint/DnsInfo positionally only while their leading fields are
# exactly these (fields added later must have defaults, as observe/flow.py's contract says);
# otherwise it falls back to keywords (tests/unit/proxy_dns pins both paths to be equal).
_FLOW_FIELDS = ("time_ns", "verdict", "kind", "src_ip", "dst_ip", "protocol", "src_port",
                "dst_port", "tcp_flags", "source", "destination", "drop_reason_desc",
                "traffic_direction", "node_name", "is_reply", "l7_type", "latency_ns", "http",
                "dns", "source_names", "destination_names", "allowed_by", "denied_by", "summary")
_DNS_FIELDS = ("query", "ips", "ttl", "cnames", "rcode", "qtypes", "rrtypes")
_ENDPOINT_FIELDS = ("identity", "namespace", "pod_name", "labels", "ID")
_POSITIONAL = (_field_names(Flow)[:len(_FLOW_FIELDS)] == _FLOW_FIELDS
               and _field_names(DnsInfo)[:len(_DNS_FIELDS)] == _DNS_FIELDS
               and _field_names(FlowEndpoint)[:len(_ENDPOINT_FIELDS)] == _ENDPOINT_FIELDS)
