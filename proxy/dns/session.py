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
  and no `learn` callback the core returns `Learn(token, ...)`; the server runs it (bounded)
  and calls `learn_done(token, timed_out)`, which releases the upstream's bytes (only the ID
  changed). With a `learn` callback the core calls it itself, before releasing anything: if
  it returns None (a synchronous datapath update, the agent's case) the answer is released
  in the same call (one Learn action and its round trip less per query); if it raises, the
  answer is released too and `learn_errors` counts it; if it returns an awaitable, the core
  returns `Learn(..., waiting=awaitable)` for the server to await, as above.
- `tick()`: SERVFAIL for every query whose upstream did not answer in time (the ID tables
  are scanned oldest-first; no per-query timer or deadline queue exists).
- `channel_closed(channel)`: SERVFAIL for the queries pending on a broken TCP channel.
Every query ends in exactly one `Emit(Flow)`.

Memos: a query whose bytes after the ID equal those of a query that passed
`wire.parse_query` before reuses that result with its own ID (the parse is a pure function
of those bytes; failures are never memoized, so every malformed query is parsed and counted);
an answer whose bytes after the ID equal those of an answer that passed
`wire.analyze_answer` for the same question bytes reuses that `Answer` (its ID already
matched the pending query it was looked up by). Memoized `Answer`s are shared: read-only.
Both memos are bounded (MEMO_MAX_BYTES, MEMO_MAX_ENTRIES, ANSWER_MEMO_MAX_ENTRIES).
Stage latencies go to one callable per stage (`stage_observers`, or `on_stage(stage, s)`).
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import functools
import logging
import operator
import random
import struct
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from observe.flow import DnsInfo, EventKind, Flow, FlowEndpoint, FlowVerdict, LazyFlow
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
    # Set when the session already called its `learn` callback and it returned an awaitable:
    # the server awaits this (bounded) instead of calling learn again.
    waiting: Awaitable[None] | None = None


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


log = logging.getLogger(__name__)
_NS_PER_S = 1e9
# Enum members hoisted to module globals: `Decision.FORWARDED` is a metaclass attribute
# lookup of ~700 instructions in CPython 3.11 (callgrind), a global ~20; several per query.
_FORWARDED = Decision.FORWARDED
_DENIED = Decision.DENIED
_FV_FORWARDED = FlowVerdict.FORWARDED
_FV_DROPPED = FlowVerdict.DROPPED
_FV_ERROR = FlowVerdict.ERROR
_NEW_QUERY = wire.Query
# Memo of validated messages by their bytes after the ID (module docstring, "Memos"): pods
# ask the same few names over and over, and the strict extractor (~18k instructions) and the
# answer walker (~20k) were together a quarter of a forwarded query's cost (callgrind). Entries
# are bounded in size and number, each memo is cleared when full, so a pod spraying names only
# turns hits into misses (a miss costs about what no memo costs, measured with every message
# new). Worst case: 4096 x 512 B = 2 MiB of queries, 256 x 512 B of answers.
MEMO_MAX_BYTES = 512  # larger messages (rare: big EDNS options, many records) are not memoized
MEMO_MAX_ENTRIES = 4096  # queries: their memo values are tuples of atoms the GC stops tracking
# Answers: a memoized Answer holds four GC-tracked containers that young collections walk;
# with every answer new, 4096 entries cost ~11k instructions per query in collections, 1024
# ~4k, 256 nothing measurable. Upstream caches age TTLs every second, so an answer's bytes
# repeat within about a second: a node's hot names in one second fit in 256.
ANSWER_MEMO_MAX_ENTRIES = 256
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
        stage_observers: Mapping[Stage, Callable[[float], None]] | None = None,
        learn: Callable[[DnsConnInfo, str, list[tuple[str, int]]], Awaitable[None] | None]
        | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if reject_rcode not in ("refused", "nameError"):
            raise ValueError(f"reject_rcode must be 'refused' or 'nameError', not {reject_rcode!r}")
        self._decide = decide
        self._learn = learn
        self._clock = clock_ns
        self._wall = wall_ns
        self._mark = upstream_mark
        self._reject = wire.RCODE_NXDOMAIN if reject_rcode == "nameError" else wire.RCODE_REFUSED
        self._timeout_ns = int(upstream_timeout_s * 1e9)
        self._max_inflight = max_inflight
        self._max_per_client = max_inflight_per_client
        self._per_client: dict[str, int] = {}  # src IP -> queries pending or learning
        # One callable per stage, resolved here: `stage_observers` (a histogram child's
        # `observe` per stage, called directly) or `on_stage` bound to each stage. Calling
        # on_stage(Stage.X, s) through a dispatching wrapper cost ~3.9k instructions per
        # observation against ~2k for the bare observe (callgrind), four per query.
        if stage_observers is None and on_stage is not None:
            stage_observers = {stage: functools.partial(on_stage, stage) for stage in Stage}
        get = (stage_observers or {}).get
        self._obs_policy = get(Stage.POLICY)
        self._obs_upstream = get(Stage.UPSTREAM)
        self._obs_datapath = get(Stage.DATAPATH)
        self._obs_total = get(Stage.TOTAL)
        self._queries: dict[bytes, tuple[object, ...]] = {}  # message[2:] -> Query[1:]
        self._answers: dict[bytes, tuple[bytes, wire.Answer]] = {}  # answer[2:] -> (question, A)
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
        memo_key = data[2:]
        rest = self._queries.get(memo_key)
        if rest is not None:  # these very bytes (but the ID) passed parse_query before
            query: wire.Query = _new(_NEW_QUERY, ((data[0] << 8) | data[1], *rest))
        else:
            try:
                query = wire.parse_query(data)
            except wire.UnsupportedOpcode:
                self.stats.notimp_queries += 1
                return self._malformed(data, info, client, wire.notimp(data), wire.RCODE_NOTIMP)
            except RemoteProtocolError:
                self.stats.malformed_queries += 1
                return self._malformed(data, info, client, wire.formerr(data),
                                       wire.RCODE_FORMERR)
            if len(memo_key) <= MEMO_MAX_BYTES:
                if len(self._queries) >= MEMO_MAX_ENTRIES:
                    self._queries.clear()
                self._queries[memo_key] = query[1:]
        src_ip = info.src_ip
        per_client = self._per_client.get(src_ip, 0)
        if self._inflight >= self._max_inflight or per_client >= self._max_per_client:
            self.stats.overload_refusals += 1
            reply = wire.refused(query, data)
            return self._finish_local(client, info, query, reply, start, None, _FV_ERROR)
        try:
            verdict = self._decide(info, query.qname)
        except L7gateError:
            verdict = Verdict(Decision.ERROR)
        decided = self._clock()
        if self._obs_policy is not None:
            self._obs_policy((decided - start) / _NS_PER_S)
        decision = verdict.decision
        if decision is not _FORWARDED:
            if decision is _DENIED:
                reply = wire.error_reply(query, data, self._reject)
                return self._finish_local(client, info, query, reply, start, verdict,
                                          _FV_DROPPED)
            reply = wire.servfail(query, data)
            return self._finish_local(client, info, query, reply, start, verdict, _FV_ERROR)
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
        return [_new(SendUpstream, (channel, _ID.pack(upstream_id) + memo_key))]  # key: data[2:]

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
        if self._obs_total is not None:
            self._obs_total(latency / _NS_PER_S)
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
        memo_key = data[2:]
        memo = self._answers.get(memo_key)
        if memo is not None and memo[0] == query.question_wire:
            # The same bytes (but the ID, which found `pending`, so it matches) passed
            # analyze_answer for the same question before: the same, read-only, Answer.
            answer = memo[1]
        else:
            try:
                answer = wire.analyze_answer(query, data, expected_id=upstream_id)
            except RemoteProtocolError:
                self.stats.bad_answers += 1
                return [Drop("bad answer")]
            if len(memo_key) <= MEMO_MAX_BYTES:
                if len(self._answers) >= ANSWER_MEMO_MAX_ENTRIES:
                    self._answers.clear()
                self._answers[memo_key] = (query.question_wire, answer)
        del table[upstream_id]
        if not table:
            del self._tables[channel]
        pending.answered_ns = now = self._clock()
        if self._obs_upstream is not None:
            self._obs_upstream((now - pending.forwarded_ns) / _NS_PER_S)
        pending.reply = pending.data[:2] + memo_key  # the client's ID bytes, then the answer's
        pending.answer = answer
        if answer.ignored_records:
            self.stats.ignored_records += answer.ignored_records
        if answer.ips_capped:
            self.stats.capped_answers += 1
        if answer.ips and answer.rcode == wire.RCODE_NOERROR:
            ips = list(answer.ips)
            waiting = None
            learn = self._learn
            if learn is not None:
                # Inline learning (module docstring): a synchronous datapath update is done
                # when learn returns None, and the answer is released in this same call.
                try:
                    waiting = learn(pending.info, query.qname, ips)
                except Exception:  # the datapath writer is someone else's code: fail open
                    log.exception("learning %s failed", query.qname)
                    self.stats.learn_errors += 1
                if waiting is None:
                    now = self._clock()
                    if self._obs_datapath is not None:
                        self._obs_datapath((now - pending.answered_ns) / _NS_PER_S)
                    return self._release(pending, now)
            self._next_token = token = self._next_token + 1
            self._learning[token] = pending  # still counts for its client and in flight
            return [_new(Learn, (token, pending.info, query.qname, ips, waiting))]
        return self._release(pending, now)

    def learn_done(
        self, token: int, *, timed_out: bool = False, failed: bool = False
    ) -> list[Action]:
        """The datapath update for `token` finished (or hit the max delay): release the answer."""
        pending = self._learning.pop(token)
        if timed_out:
            self.stats.learn_timeouts += 1
        if failed:
            self.stats.learn_errors += 1
        now = self._clock()
        if self._obs_datapath is not None:
            self._obs_datapath((now - pending.answered_ns) / _NS_PER_S)
        return self._release(pending, now)

    def _release(self, pending: _Pending, now: int) -> list[Action]:
        """The query leaves the proxy (`now`: the caller's clock reading, one per event):
        per-client and in-flight accounting, one Flow."""
        answer = pending.answer
        assert answer is not None
        info = pending.info
        self._inflight -= 1
        src_ip = info.src_ip
        left = self._per_client[src_ip] - 1
        if left > 0:
            self._per_client[src_ip] = left
        else:
            del self._per_client[src_ip]
        rcode = answer.rcode
        self.stats.queries[("forwarded", rcode)] += 1
        latency = now - pending.started_ns
        if self._obs_total is not None:
            self._obs_total(latency / _NS_PER_S)
        query = pending.query
        flow = self._flow(info, query.qname, query, rcode, _FV_FORWARDED, latency, True,
                          answer, pending.rule_id)
        return [_new(SendClient, (pending.client, info, pending.reply)), _new(Emit, (flow,))]

    def _servfail(self, pending: _Pending, kind: str) -> list[Action]:
        table = self._tables.get(pending.channel)
        if table is not None and table.get(pending.upstream_id) is pending:
            del table[pending.upstream_id]
            if not table:
                del self._tables[pending.channel]
        self.stats.upstream_errors[kind] += 1
        pending.reply = wire.servfail(pending.query, pending.data)
        pending.answer = wire.Answer(pending.query.id, wire.RCODE_SERVFAIL, False)
        return self._release(pending, self._clock())

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
        """One Hubble-style L7 flow: `dns_flow(...)` of these values, built when first read
        (`LazyDnsFlow`; most flows are only counted and evicted from the ring unread)."""
        return _lazy_dns_flow(self._wall(), info, qname, query, rcode, verdict, latency_ns,
                              is_reply, answer, rule_id)


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


# --- the flow `DnsSession._flow` emits -----------------------------------------------------

def dns_flow(time_ns: int, info: DnsConnInfo, qname: str, query: wire.Query | None, rcode: int,
             verdict: FlowVerdict, latency_ns: int, is_reply: bool,
             answer: wire.Answer | None, rule_id: str | None) -> Flow:
    """The eager reference: one Hubble-style L7 flow, every list field built here (one
    allocation each). `LazyDnsFlow` materialises to exactly this."""
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
        return Flow(time_ns, verdict, EventKind.L7, src_ip, dst_ip, info.proto,
                    src_port, dst_port, [], FlowEndpoint(0, "", "", [], 0),
                    FlowEndpoint(0, "", "", [], 0), "", "EGRESS", "", is_reply,
                    "RESPONSE" if is_reply else "REQUEST", latency_ns, None, dns, [], [],
                    [ref] if ref else [], [], summary)
    return Flow(time_ns=time_ns, verdict=verdict, kind=EventKind.L7, src_ip=src_ip,
                dst_ip=dst_ip, protocol=info.proto, src_port=src_port, dst_port=dst_port,
                traffic_direction="EGRESS", is_reply=is_reply,
                l7_type="RESPONSE" if is_reply else "REQUEST", latency_ns=latency_ns,
                dns=dns, allowed_by=[ref] if ref else [], summary=summary)


class LazyDnsFlow(LazyFlow):
    """`dns_flow(...)` of the values it captured, built on first read (observe/flow.py's
    LazyFlow contract). Holds the query and the `Answer` by reference: both are read-only
    once the query is released (memoised Answers are shared, see the module doc)."""

    # (info, qname, query, rcode, is_reply, answer, rule_id): dns_flow's arguments
    __slots__ = ("_dns",)
    _dns: tuple[DnsConnInfo, str, wire.Query | None, int, bool, wire.Answer | None, str | None]
    l7_protocol = "dns"

    def _reference(self) -> Flow:
        info, qname, query, rcode, is_reply, answer, rule_id = self._dns
        return dns_flow(self.time_ns, info, qname, query, rcode, self.verdict, self.latency_ns,
                        is_reply, answer, rule_id)

    def metric_key(self) -> tuple[object, ...]:
        # what metrics/flows.py `_dns_key` reads: qtypes come from the query type, the
        # number of IPs from the answer (the verdict by its value: Enum.__hash__ is a call)
        _info, _qname, query, rcode, _is_reply, answer, _rule = self._dns
        return (LazyDnsFlow, self.verdict._value_, self.l7_type, self.traffic_direction,
                self.drop_reason_desc, query.qtype if query is not None else None, rcode,
                len(answer.ips) if answer is not None else 0)


_L7 = EventKind.L7


def _lazy_dns_flow(time_ns: int, info: DnsConnInfo, qname: str, query: wire.Query | None,
                   rcode: int, verdict: FlowVerdict, latency_ns: int, is_reply: bool,
                   answer: wire.Answer | None, rule_id: str | None) -> Flow:
    f: LazyDnsFlow = _new_object(LazyDnsFlow)
    f._done = False
    f.time_ns = time_ns
    f.verdict = verdict
    f.kind = _L7
    if is_reply:
        f.src_ip, f.dst_ip = info.dst_ip, info.src_ip
        f.l7_type = "RESPONSE"
    else:
        f.src_ip, f.dst_ip = info.src_ip, info.dst_ip
        f.l7_type = "REQUEST"
    f.traffic_direction = "EGRESS"
    f.latency_ns = latency_ns
    f.drop_reason_desc = ""
    f._dns = (info, qname, query, rcode, is_reply, answer, rule_id)
    f._mkey = None  # the metrics call metric_key() for every DNS flow
    return f


_new_object = object.__new__
