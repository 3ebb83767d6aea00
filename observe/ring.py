"""The agent's bounded in-memory flow ring (no I/O here).

Contract:
- `push(flow)` stores a flow under the next sequence number (1, 2, ...) and tells subscribers.
  It reads only `kind`, `verdict` (and, when evicting, `time_ns`) of a flow, so a
  `LazyFlow` (observe/flow.py) stays unbuilt until a reader or subscriber looks at it.
- The ring holds at most `capacity` flows. A push into a full ring first evicts a batch of
  `evict_batch` flows (default: capacity // EVICT_BATCH_DIVISOR, at least 1), so a busy ring
  does its eviction bookkeeping once per batch, not once per push; once full it therefore
  holds between capacity - evict_batch + 1 and capacity flows. A batch takes the oldest
  *trace* flows (FORWARDED, REDIRECTED, ... L3/L4 events that are neither drops nor L7)
  first; drops and L7 flows are evicted only when no trace is left (then the oldest of
  them). So "which pod was dropped and why" survives a burst of forwarded traffic.
- Every eviction is counted as lost: one batch is recorded as one loss of N flows whose
  sequence numbers lie in [first_seq, last_seq] (the lowest and highest evicted; flows
  between them may still be held when a batch mixed traces and preferred flows) and whose
  flow times lie in [first_ns, last_ns]. Losses are coalesced into `LossSpan`s (a batch
  joins the newest span when it starts within LOSS_SPAN_JOIN_NS of that span's end), so an
  answer that spans evicted flows can say "N flows lost between T1 and T2", and
  `on_lost(source, N)` is called once per batch. Producers report losses before the ring
  (e.g. a BPF ringbuf that overflowed) with `record_lost()`.
- Readers: `after(seq)` (for follow), `last(n)`, `since(t_ns)`; each returns a `RingRead` with
  the flows (oldest first) and the losses inside the window it covers.
- Thread-safe (one lock): the BPF ringbuf reader may push from its own thread. Subscribers are
  called synchronously from whichever thread pushes and must not block.
- Time comes from the flows themselves and from an injected `clock` (epoch ns) for losses
  reported without a flow.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import repeat, starmap
from operator import attrgetter, is_, itemgetter

from observe.flow import EventKind, Flow, FlowVerdict

# Hubble's default ring is 4095 flows (--hubble-event-buffer-capacity); we keep the same
# order of magnitude: ~1-2 KiB per Flow object keeps this under ~20 MiB.
DEFAULT_CAPACITY = 8191
# A full ring evicts capacity // this many flows at once (128 of the agent's 8,192): one loss
# record and one on_lost call per batch instead of per push (callgrind: per-push eviction was
# the largest part of pushing an L7 flow), while keeping more than 98 % of the ring.
EVICT_BATCH_DIVISOR = 64
# Loss spans are coalesced; beyond this many spans the oldest are merged away (the totals
# stay exact, only the time resolution of very old losses is lost).
MAX_LOSS_SPANS = 1024
# An eviction joins the current span if it is within this many ns of it (1 s): answers then
# read "N lost between T1 and T2" rather than one line per evicted flow.
LOSS_SPAN_JOIN_NS = 1_000_000_000

# Hubble's LostEventSource names (observer.proto).
SOURCE_RING = "HUBBLE_RING_BUFFER"  # evicted from this ring
SOURCE_QUEUE = "OBSERVER_EVENTS_QUEUE"  # a slow reader's queue overflowed
SOURCE_PERF = "PERF_EVENT_RING_BUFFER"  # the BPF ringbuf overflowed before we saw it

Subscriber = Callable[[int, Flow], None]


_PREFERRED_KINDS = frozenset((EventKind.DROP, EventKind.L7, EventKind.POLICY_VERDICT))
# Enum members as globals for push(): a class attribute lookup costs ~700 instructions in
# CPython 3.11, a global ~20 (callgrind).
_DROPPED, _L7, _DROP, _POLICY_VERDICT = (FlowVerdict.DROPPED, EventKind.L7, EventKind.DROP,
                                         EventKind.POLICY_VERDICT)
_KIND = attrgetter("kind")
_FLOW = itemgetter(1)
_TIME_NS = attrgetter("time_ns")


def is_preferred(flow: Flow) -> bool:
    """Drops and L7 flows are what users ask about; they outlive traces in a full ring."""
    return (
        flow.verdict is FlowVerdict.DROPPED or flow.kind in _PREFERRED_KINDS
    )


@dataclass(slots=True)
class LossSpan:
    """`count` flows lost from `source`, with flow times in [first_ns, last_ns].

    `first_seq`/`last_seq` bound the ring sequence numbers the lost flows had (0 when the
    loss happened before the ring, e.g. in the BPF ringbuf: then only times are known).
    """

    source: str
    count: int
    first_ns: int
    last_ns: int
    first_seq: int = 0
    last_seq: int = 0

    def to_json(self) -> dict[str, object]:
        return {
            "source": self.source,
            "num_events_lost": self.count,
            "first": _rfc3339(self.first_ns),
            "last": _rfc3339(self.last_ns),
        }


def merge_losses(spans: Iterable[LossSpan]) -> LossSpan | None:
    """One span covering all `spans` (source of the first; None when there is nothing)."""
    out: LossSpan | None = None
    for s in spans:
        if out is None:
            out = LossSpan(s.source, s.count, s.first_ns, s.last_ns, s.first_seq, s.last_seq)
            continue
        out.count += s.count
        out.first_ns = min(out.first_ns, s.first_ns)
        out.last_ns = max(out.last_ns, s.last_ns)
        out.first_seq = min(out.first_seq, s.first_seq) if out.first_seq else s.first_seq
        out.last_seq = max(out.last_seq, s.last_seq)
    return out


@dataclass(slots=True)
class RingRead:
    """The answer to one read: flows oldest first with their sequence numbers, and losses."""

    flows: list[tuple[int, Flow]] = field(default_factory=list)
    lost: list[LossSpan] = field(default_factory=list)
    next_seq: int = 0  # pass to after() to continue where this read ended

    @property
    def lost_count(self) -> int:
        return sum(s.count for s in self.lost)


@dataclass(frozen=True, slots=True)
class RingStats:
    capacity: int
    size: int
    preferred: int
    traces: int
    seen_total: int
    lost_total: int

    def to_json(self) -> dict[str, int]:
        return {
            "capacity": self.capacity, "size": self.size, "preferred": self.preferred,
            "traces": self.traces, "seen_total": self.seen_total, "lost_total": self.lost_total,
        }


class FlowRing:
    """Bounded flow store with trace-first eviction and loss accounting (see module doc)."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY,
                 clock: Callable[[], int] = time.time_ns,
                 on_lost: Callable[[str, int], None] | None = None,
                 evict_batch: int | None = None) -> None:
        """`on_lost(source, count)` is told of every loss (wire it to FlowMetrics.lost)."""
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        if evict_batch is None:
            evict_batch = max(1, capacity // EVICT_BATCH_DIVISOR)
        if not 1 <= evict_batch <= capacity:
            raise ValueError("evict_batch must be in [1, capacity]")
        self.capacity = capacity
        self.evict_batch = evict_batch
        self._clock = clock
        self._lock = threading.Lock()
        self._preferred: deque[tuple[int, Flow]] = deque()
        self._traces: deque[tuple[int, Flow]] = deque()
        self._seq = 0
        self._evict_after = capacity  # a push with a higher seq finds the ring full
        self._losses: deque[LossSpan] = deque()
        self._lost_total = 0
        self._subscribers: tuple[Subscriber, ...] = ()
        self._on_lost = on_lost

    # --- producer side -----------------------------------------------------------------

    def push(self, flow: Flow) -> int:
        """Store `flow`; returns its sequence number. Never blocks for long."""
        # One push per request on the proxy's hot path: the preference test is inlined and
        # the subscriber list is an immutable tuple replaced on (un)subscribe, so nothing is
        # copied per push; the lock stays (the BPF reader may push from its own thread).
        kind = flow.kind  # identity tests: Enum.__hash__ (a set lookup) is a Python call
        preferred = (kind is _L7 or flow.verdict is _DROPPED or kind is _DROP
                     or kind is _POLICY_VERDICT)
        evicted = 0
        with self._lock:
            self._seq = seq = self._seq + 1
            if seq > self._evict_after:  # the ring is full: seq - 1 - evicted == capacity
                evicted = self._evict_batch()
                self._evict_after += evicted
            (self._preferred if preferred else self._traces).append((seq, flow))
            subscribers = self._subscribers
        if evicted and self._on_lost is not None:
            self._on_lost(SOURCE_RING, evicted)
        for sub in subscribers:
            sub(seq, flow)
        return seq

    def push_many(self, flows: list[Flow]) -> None:
        """`push` each of `flows` in order, under one lock: the same sequence numbers,
        evictions, losses and subscriber calls as pushing them one by one (the `on_lost`
        calls of the whole batch come before its subscriber calls).

        The agent's proxy sink (one call per event-loop iteration) gives only L7 flows; when
        every flow of the batch is L7 (preferred) and every eviction the batch causes can take
        older flows only, they go in with one `deque.extend` (callgrind, batches of 14
        lazy HTTP flows: ~2.5k instructions per flow instead of ~4.2k pushed one by one)."""
        n = len(flows)
        if not n:
            return
        losses: list[int] = []
        with self._lock:
            first = self._seq + 1
            last = self._seq + n
            held = len(self._preferred) + len(self._traces)
            excess = max(0, last - self._evict_after)  # pushes that find the ring full
            # each batch evicts `evict_batch`; they come from the flows held before this
            # call (never from this batch) when enough are held: then pushing one by one
            # would evict the same flows in the same batches
            # all L7 (what the proxies give), tested in C: no Python step per flow
            fast = (all(map(is_, map(_KIND, flows), repeat(_L7)))
                    and held >= -(-excess // self.evict_batch) * self.evict_batch)
            if fast:
                while last > self._evict_after:
                    evicted = self._evict_batch()
                    if not evicted:  # pragma: no cover - `held` guarantees victims
                        break
                    self._evict_after += evicted
                    losses.append(evicted)
                self._preferred.extend(zip(range(first, last + 1), flows, strict=True))
                self._seq = last
            else:
                for flow in flows:
                    kind = flow.kind
                    self._seq = seq = self._seq + 1
                    if seq > self._evict_after:
                        evicted = self._evict_batch()
                        self._evict_after += evicted
                        losses.append(evicted)
                    preferred = (kind is _L7 or flow.verdict is _DROPPED or kind is _DROP
                                 or kind is _POLICY_VERDICT)
                    (self._preferred if preferred else self._traces).append((seq, flow))
            subscribers = self._subscribers
        if self._on_lost is not None:
            for evicted in losses:
                if evicted:
                    self._on_lost(SOURCE_RING, evicted)
        if subscribers:
            for seq, flow in zip(range(first, last + 1), flows, strict=True):
                for sub in subscribers:
                    sub(seq, flow)

    def record_lost(self, count: int, source: str = SOURCE_PERF,
                    first_ns: int | None = None, last_ns: int | None = None) -> None:
        """Count flows lost before they reached the ring (e.g. BPF ringbuf overflow)."""
        if count <= 0:
            return
        now = self._clock()
        with self._lock:
            self._add_loss(source, count, first_ns or now, last_ns or now, 0)
        if self._on_lost is not None:
            self._on_lost(source, count)

    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        """Call `fn(seq, flow)` for every future push; returns the unsubscribe function."""
        with self._lock:
            self._subscribers = (*self._subscribers, fn)

        def unsubscribe() -> None:
            with self._lock:
                if fn in self._subscribers:
                    subs = list(self._subscribers)
                    subs.remove(fn)
                    self._subscribers = tuple(subs)

        return unsubscribe

    # --- reader side -------------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        return self._seq

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def after(self, seq: int, pred: Callable[[Flow], bool] | None = None,
              limit: int | None = None) -> RingRead:
        """Flows with sequence number > `seq` (oldest first), at most `limit`."""
        with self._lock:
            items = [x for x in self._ordered() if x[0] > seq]
            if limit is not None:
                items = items[:limit]
            hi = items[-1][0] if items else self._seq
            lost = self._losses_between(seq + 1, hi, 0, 2**63)
            return self._finish(items, pred, lost, hi)

    def last(self, n: int, pred: Callable[[Flow], bool] | None = None) -> RingRead:
        """The `n` newest flows matching `pred`, oldest first."""
        with self._lock:
            items = list(self._ordered())
            if pred is not None:
                items = [x for x in items if pred(x[1])]
            items = items[-n:] if n > 0 else []
            lo = items[0][0] if items else self._seq + 1
            lost = self._losses_between(lo, self._seq, 0, 2**63)
            return self._finish(items, None, lost, self._seq)

    def first(self, n: int, pred: Callable[[Flow], bool] | None = None) -> RingRead:
        """The `n` oldest flows still held that match `pred`."""
        with self._lock:
            items = [x for x in self._ordered() if pred is None or pred(x[1])][:max(n, 0)]
            hi = items[-1][0] if items else self._seq
            lost = self._losses_between(1, hi, 0, 2**63)
            return self._finish(items, None, lost, hi)

    def since(self, since_ns: int, until_ns: int | None = None,
              pred: Callable[[Flow], bool] | None = None) -> RingRead:
        """Flows with since_ns <= time < until_ns (until defaults to no bound), oldest first."""
        upper = until_ns if until_ns is not None else 2**63
        with self._lock:
            items = [x for x in self._ordered() if since_ns <= x[1].time_ns < upper]
            lost = self._losses_between(1, self._seq, since_ns, upper)
            return self._finish(items, pred, lost, self._seq)

    def losses(self) -> list[LossSpan]:
        with self._lock:
            return [LossSpan(s.source, s.count, s.first_ns, s.last_ns, s.first_seq, s.last_seq)
                    for s in self._losses]

    def stats(self) -> RingStats:
        with self._lock:
            return RingStats(self.capacity, len(self._preferred) + len(self._traces),
                             len(self._preferred), len(self._traces), self._seq,
                             self._lost_total)

    # --- internals (lock held) -----------------------------------------------------------

    def _ordered(self) -> Iterable[tuple[int, Flow]]:
        return heapq.merge(self._preferred, self._traces, key=lambda x: x[0])

    def _evict_batch(self) -> int:
        """Evict `evict_batch` flows, traces first; record them as one loss; return N."""
        # the pops and the time scan run in C (`starmap`, `map`) rather than as list
        # comprehensions (~16 interpreted bytecodes per evicted flow)
        want = self.evict_batch
        traces = self._traces
        take = min(want, len(traces))
        victims = list(starmap(traces.popleft, repeat((), take)))
        if take < want:
            pref = self._preferred
            victims += starmap(pref.popleft, repeat((), min(want - take, len(pref))))
        if not victims:
            return 0
        times = list(map(_TIME_NS, map(_FLOW, victims)))
        if take in (0, len(victims)):  # from one queue: seqs ascending
            lo_seq, hi_seq = victims[0][0], victims[-1][0]
        else:
            lo_seq, hi_seq = victims[take][0], victims[take - 1][0]
            lo_seq, hi_seq = min(lo_seq, victims[0][0]), max(hi_seq, victims[-1][0])
        self._add_loss(SOURCE_RING, len(victims), min(times), max(times), lo_seq, hi_seq)
        return len(victims)

    def _add_loss(self, source: str, count: int, first_ns: int, last_ns: int,
                  first_seq: int, last_seq: int = 0) -> None:
        """Record `count` lost flows (seq 0: lost before the ring, no sequence numbers)."""
        last_seq = last_seq or first_seq
        self._lost_total += count
        cur = self._losses[-1] if self._losses else None
        if (cur is not None and cur.source == source
                and first_ns - cur.last_ns <= LOSS_SPAN_JOIN_NS and first_ns >= cur.first_ns):
            cur.count += count
            cur.last_ns = max(cur.last_ns, last_ns)
            if first_seq:
                cur.first_seq = min(cur.first_seq, first_seq) if cur.first_seq else first_seq
                cur.last_seq = max(cur.last_seq, last_seq)
            return
        self._losses.append(LossSpan(source, count, first_ns, last_ns, first_seq, last_seq))
        if len(self._losses) > MAX_LOSS_SPANS:
            a = self._losses.popleft()
            b = self._losses.popleft()
            merged = merge_losses([a, b])
            assert merged is not None
            self._losses.appendleft(merged)

    def _losses_between(self, lo_seq: int, hi_seq: int, lo_ns: int, hi_ns: int) -> list[LossSpan]:
        """Spans overlapping the seq window [lo_seq, hi_seq] and the time window [lo_ns, hi_ns).

        Spans without sequence numbers (losses before the ring) are matched on time only.
        """
        out = []
        for s in self._losses:
            if s.last_ns < lo_ns or s.first_ns >= hi_ns:
                continue
            if s.first_seq and (s.last_seq < lo_seq or s.first_seq > hi_seq):
                continue
            out.append(LossSpan(s.source, s.count, s.first_ns, s.last_ns, s.first_seq,
                                s.last_seq))
        return out

    @staticmethod
    def _finish(items: list[tuple[int, Flow]], pred: Callable[[Flow], bool] | None,
                lost: list[LossSpan], next_seq: int) -> RingRead:
        if pred is not None:
            items = [x for x in items if pred(x[1])]
        return RingRead(items, lost, next_seq)


def _rfc3339(ns: int) -> str:
    t = time.gmtime(ns // 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{ns % 1_000_000_000:09d}Z"
