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
- `tick()`: SERVFAIL for every query whose upstream did not answer in time.
- `channel_closed(channel)`: SERVFAIL for the queries pending on a broken TCP channel.
Every query ends in exactly one `Emit(Flow)`.
"""

from __future__ import annotations

import collections
import enum
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from observe.flow import DnsInfo, EventKind, Flow, FlowVerdict
from policy.errors import L7gateError, RemoteProtocolError
from policy.types import Decision, DropReason, Verdict
from proxy.dns import wire

MAX_PER_CHANNEL = 1024  # in-flight IDs per upstream socket: keeps a blind spoofer's odds <= 1/64
DEFAULT_MAX_INFLIGHT = 10_000  # whole proxy; beyond this the pod gets REFUSED (explicit overload)
DEFAULT_MAX_INFLIGHT_PER_CLIENT = 1000  # one pod IP; 10% of the proxy so ten noisy pods fit
DEFAULT_UPSTREAM_TIMEOUT_S = 2.0  # Cilium's dnsproxy uses 2 s for the upstream exchange
_QTYPE_NAMES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT",
                28: "AAAA", 33: "SRV", 64: "SVCB", 65: "HTTPS", 255: "ANY"}


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


@dataclass(slots=True)
class _Pending:
    client: object
    info: DnsConnInfo
    query: wire.Query
    data: bytes
    started_ns: int
    policy_ns: int
    rule_id: str | None
    channel: Channel
    upstream_id: int
    forwarded_ns: int = 0
    answered_ns: int = 0
    reply: bytes = b""
    answer: wire.Answer | None = None


class DnsSession:
    """All in-flight queries of one proxy instance (sans-IO; see the module docstring)."""

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
        self._per_client: collections.Counter[str] = collections.Counter()  # src IP -> pending
        self._on_stage = on_stage
        self._rng = rng or random.Random()  # seeded from os.urandom
        self._pending: dict[tuple[Channel, int], _Pending] = {}
        self._by_channel: dict[Channel, set[int]] = {}
        self._deadlines: collections.deque[tuple[int, Channel, int]] = collections.deque()
        self._learning: dict[int, _Pending] = {}
        self._next_token = 0
        self.stats = DnsProxyStats()

    @property
    def inflight(self) -> int:
        return len(self._pending) + len(self._learning)

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
        if (self.inflight >= self._max_inflight
                or self._per_client[info.src_ip] >= self._max_per_client):
            self.stats.overload_refusals += 1
            reply = wire.refused(query, data)
            return self._finish_local(client, info, query, reply, start, None, FlowVerdict.ERROR)
        try:
            verdict = self._decide(info, query.qname)
        except L7gateError:
            verdict = Verdict(Decision.ERROR)
        decided = self._clock()
        self._stage(Stage.POLICY, decided - start)
        if verdict.decision is Decision.DENIED:
            reply = wire.error_reply(query, data, self._reject)
            return self._finish_local(client, info, query, reply, start, verdict,
                                      FlowVerdict.DROPPED)
        if verdict.decision is not Decision.FORWARDED:
            reply = wire.servfail(query, data)
            return self._finish_local(client, info, query, reply, start, verdict, FlowVerdict.ERROR)
        return self._forward(data, info, client, query, start, decided, verdict.rule_id)

    def _forward(self, data: bytes, info: DnsConnInfo, client: object, query: wire.Query,
                 start: int, decided: int, rule_id: str | None) -> list[Action]:
        mark = self._mark(info) if self._mark is not None else 0
        channel, upstream_id = self._allocate(info, mark)
        pending = _Pending(client, info, query, data, start, decided - start, rule_id, channel,
                           upstream_id, forwarded_ns=decided)
        self._pending[(channel, upstream_id)] = pending
        self._per_client[info.src_ip] += 1
        self._by_channel.setdefault(channel, set()).add(upstream_id)
        self._deadlines.append((decided + self._timeout_ns, channel, upstream_id))
        return [SendUpstream(channel, wire.with_id(data, upstream_id))]

    def _allocate(self, info: DnsConnInfo, mark: int) -> tuple[Channel, int]:
        index = 0
        while True:
            channel = Channel(info.dst_ip, info.dst_port, info.proto, mark, index)
            used = self._by_channel.get(channel)
            if used is None or len(used) < MAX_PER_CHANNEL:
                break
            index += 1
        while True:  # random IDs (RFC 5452 §9.2); occupancy <= 1/64 so this ends quickly
            upstream_id = self._rng.getrandbits(16)
            if used is None or upstream_id not in used:
                return channel, upstream_id

    def _malformed(self, data: bytes, info: DnsConnInfo, client: object, reply: bytes | None,
                   rcode: int) -> list[Action]:
        self.stats.queries[("malformed", rcode)] += 1
        flow = self._flow(info, "", None, rcode, FlowVerdict.DROPPED, 0, is_reply=False)
        flow.drop_reason_desc = DropReason.INVALID_PACKET_DROPPED.name
        out: list[Action] = [Emit(flow)]
        out.insert(0, SendClient(client, info, reply) if reply is not None else Drop("malformed"))
        return out

    def _finish_local(self, client: object, info: DnsConnInfo, query: wire.Query, reply: bytes,
                      start: int, verdict: Verdict | None, fv: FlowVerdict) -> list[Action]:
        rcode = reply[3] & 0xF
        self.stats.queries[(fv.value.lower(), rcode)] += 1
        latency = self._clock() - start
        self._stage(Stage.TOTAL, latency)
        flow = self._flow(info, query.qname, query, rcode, fv, latency, is_reply=False)
        if verdict is not None and verdict.reason is not None:
            flow.drop_reason_desc = verdict.reason.name
            ref = _policy_ref(verdict.rule_id)
            if ref and verdict.reason is DropReason.POLICY_DENY:  # only explicit deny rules
                flow.denied_by = [ref]
        return [SendClient(client, info, reply), Emit(flow)]

    # --- upstream side ----------------------------------------------------------------------

    def feed_upstream(self, channel: Channel, data: bytes) -> list[Action]:
        upstream_id = wire.message_id(data)
        pending = self._pending.get((channel, upstream_id)) if upstream_id is not None else None
        if pending is None:
            self.stats.unmatched_answers += 1
            return [Drop("unmatched answer")]
        try:
            answer = wire.analyze_answer(pending.query, data, expected_id=upstream_id)
        except RemoteProtocolError:
            self.stats.bad_answers += 1
            return [Drop("bad answer")]
        self._unlink(pending)
        pending.answered_ns = self._clock()
        self._stage(Stage.UPSTREAM, pending.answered_ns - pending.forwarded_ns)
        pending.reply = wire.with_id(data, pending.query.id)
        pending.answer = answer
        self.stats.ignored_records += answer.ignored_records
        self.stats.capped_answers += answer.ips_capped
        if answer.rcode == wire.RCODE_NOERROR and answer.ips:
            self._next_token += 1
            self._learning[self._next_token] = pending  # still counts for its client
            return [Learn(self._next_token, pending.info, pending.query.qname, list(answer.ips))]
        self._client_done(pending.info.src_ip)
        return self._release(pending)

    def _client_done(self, src_ip: str) -> None:
        left = self._per_client[src_ip] - 1
        if left > 0:
            self._per_client[src_ip] = left
        else:
            del self._per_client[src_ip]

    def learn_done(
        self, token: int, *, timed_out: bool = False, failed: bool = False
    ) -> list[Action]:
        """The datapath update for `token` finished (or hit the max delay): release the answer."""
        pending = self._learning.pop(token)
        self._client_done(pending.info.src_ip)
        self.stats.learn_timeouts += timed_out
        self.stats.learn_errors += failed
        self._stage(Stage.DATAPATH, self._clock() - pending.answered_ns)
        return self._release(pending)

    def _release(self, pending: _Pending) -> list[Action]:
        answer = pending.answer
        assert answer is not None
        self.stats.queries[("forwarded", answer.rcode)] += 1
        latency = self._clock() - pending.started_ns
        self._stage(Stage.TOTAL, latency)
        flow = self._flow(pending.info, pending.query.qname, pending.query, answer.rcode,
                          FlowVerdict.FORWARDED, latency, is_reply=True, answer=answer)
        ref = _policy_ref(pending.rule_id)
        if ref:
            flow.allowed_by = [ref]
        return [SendClient(pending.client, pending.info, pending.reply), Emit(flow)]

    def _unlink(self, pending: _Pending) -> None:
        del self._pending[(pending.channel, pending.upstream_id)]
        ids = self._by_channel[pending.channel]
        ids.discard(pending.upstream_id)
        if not ids:
            del self._by_channel[pending.channel]

    def _servfail(self, pending: _Pending, kind: str) -> list[Action]:
        self._unlink(pending)
        self._client_done(pending.info.src_ip)
        self.stats.upstream_errors[kind] += 1
        reply = wire.servfail(pending.query, pending.data)
        pending.answer = wire.Answer(pending.query.id, wire.RCODE_SERVFAIL, False)
        pending.reply = reply
        return self._release(pending)

    def tick(self) -> list[Action]:
        """Answer SERVFAIL for queries whose upstream timed out (deadlines are FIFO)."""
        now = self._clock()
        out: list[Action] = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _deadline, channel, upstream_id = self._deadlines.popleft()
            pending = self._pending.get((channel, upstream_id))
            if pending is not None and pending.forwarded_ns + self._timeout_ns <= now:
                out += self._servfail(pending, "timeout")
        return out

    def channel_closed(self, channel: Channel) -> list[Action]:
        """A TCP upstream connection broke (or could not be opened): fail its queries now."""
        out: list[Action] = []
        for upstream_id in list(self._by_channel.get(channel, ())):
            out += self._servfail(self._pending[(channel, upstream_id)], "connection")
        return out

    def upstream_send_failed(self, channel: Channel, data: bytes) -> list[Action]:
        """Sending the forwarded query failed (e.g. ECONNREFUSED): SERVFAIL at once."""
        upstream_id = wire.message_id(data)
        pending = self._pending.get((channel, upstream_id)) if upstream_id is not None else None
        return self._servfail(pending, "send") if pending is not None else []

    # --- helpers ----------------------------------------------------------------------------

    def _stage(self, stage: Stage, elapsed_ns: int) -> None:
        if self._on_stage is not None:
            self._on_stage(stage, elapsed_ns / 1e9)

    def _flow(self, info: DnsConnInfo, qname: str, query: wire.Query | None, rcode: int,
              verdict: FlowVerdict, latency_ns: int, *, is_reply: bool,
              answer: wire.Answer | None = None) -> Flow:
        dns = DnsInfo(query=qname, rcode=rcode)
        if query is not None:
            dns.qtypes = [_QTYPE_NAMES.get(query.qtype, str(query.qtype))]
        if answer is not None:
            dns.ips = [ip for ip, _ttl in answer.ips]
            dns.ttl = answer.min_ttl
            dns.cnames = list(answer.cnames)
            dns.rrtypes = sorted(set(answer.rrtypes))
        src, dst = (info.dst_ip, info.dst_port), (info.src_ip, info.src_port)
        if not is_reply:
            src, dst = dst, src
        kind = "Answer" if is_reply else "Query"
        return Flow(
            time_ns=self._wall(), verdict=verdict, kind=EventKind.L7,
            src_ip=src[0], src_port=src[1], dst_ip=dst[0], dst_port=dst[1],
            protocol=info.proto, traffic_direction="EGRESS", is_reply=is_reply,
            l7_type="RESPONSE" if is_reply else "REQUEST", latency_ns=latency_ns, dns=dns,
            summary=f"DNS {kind} {qname!r} rcode={rcode}"
            + (f" ips={','.join(dns.ips)} TTL={dns.ttl}" if dns.ips else ""),
        )
