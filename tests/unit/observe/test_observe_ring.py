"""FlowRing: trace-first eviction, loss accounting, readers by seq/last/since."""

from __future__ import annotations

import threading

import pytest

from observe.flow import EventKind, Flow, FlowVerdict
from observe.ring import (
    LOSS_SPAN_JOIN_NS,
    MAX_LOSS_SPANS,
    SOURCE_PERF,
    SOURCE_RING,
    FlowRing,
    is_preferred,
    merge_losses,
)

S = 1_000_000_000


def trace(t: int) -> Flow:
    return Flow(time_ns=t, verdict=FlowVerdict.FORWARDED, kind=EventKind.TRACE)


def drop(t: int) -> Flow:
    return Flow(time_ns=t, verdict=FlowVerdict.DROPPED, kind=EventKind.DROP,
                drop_reason_desc="POLICY_DENIED")


def l7(t: int) -> Flow:
    return Flow(time_ns=t, verdict=FlowVerdict.FORWARDED, kind=EventKind.L7)


class FakeClock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def test_preference() -> None:
    assert is_preferred(drop(1)) and is_preferred(l7(1))
    assert not is_preferred(trace(1))
    assert not is_preferred(Flow(time_ns=1, verdict=FlowVerdict.REDIRECTED,
                                 kind=EventKind.TRACE))


def test_sequence_numbers_and_after() -> None:
    ring = FlowRing(capacity=10)
    seqs = [ring.push(trace(i * S)) for i in range(1, 6)]
    assert seqs == [1, 2, 3, 4, 5]
    read = ring.after(2)
    assert [s for s, _ in read.flows] == [3, 4, 5]
    assert read.next_seq == 5 and read.lost == []
    assert ring.after(5).flows == []
    assert [s for s, _ in ring.after(0, limit=2).flows] == [1, 2]
    assert ring.after(0, limit=2).next_seq == 2


def test_drops_survive_a_burst_of_traces() -> None:
    ring = FlowRing(capacity=4)
    ring.push(drop(1 * S))
    ring.push(l7(2 * S))
    for i in range(100):
        ring.push(trace((3 + i) * S))
    kept = ring.last(10).flows
    assert [f.kind for _, f in kept][:2] == [EventKind.DROP, EventKind.L7]
    assert len(kept) == 4
    stats = ring.stats()
    assert (stats.size, stats.preferred, stats.traces, stats.seen_total, stats.lost_total) == (
        4, 2, 2, 102, 98)


def test_preferred_flows_evicted_only_when_no_trace_left() -> None:
    ring = FlowRing(capacity=3)
    for i in range(5):
        ring.push(drop(i * S))
    assert [f.time_ns for _, f in ring.last(10).flows] == [2 * S, 3 * S, 4 * S]
    assert ring.stats().lost_total == 2


def test_loss_between_times_is_reported_for_a_window() -> None:
    ring = FlowRing(capacity=3)
    ring.push(drop(10 * S))  # seq 1, kept
    ring.push(trace(11 * S))  # seq 2, evicted later
    ring.push(trace(12 * S))  # seq 3, evicted later
    ring.push(drop(13 * S))  # seq 4 evicts seq 2
    ring.push(drop(14 * S))  # seq 5 evicts seq 3
    read = ring.last(10)
    assert [s for s, _ in read.flows] == [1, 4, 5]
    assert read.lost_count == 2
    span = merge_losses(read.lost)
    assert span is not None
    assert (span.source, span.first_ns, span.last_ns) == (SOURCE_RING, 11 * S, 12 * S)
    j = span.to_json()
    assert j["num_events_lost"] == 2
    assert j["first"] == "1970-01-01T00:00:11.000000000Z"
    # A window that ends before the losses does not mention them.
    early = ring.since(0, 11 * S)
    assert [s for s, _ in early.flows] == [1] and early.lost == []
    # A window after them neither.
    late = ring.since(13 * S)
    assert [s for s, _ in late.flows] == [4, 5] and late.lost == []
    # Follow from seq 1: the evicted seqs 2 and 3 lie in between.
    assert ring.after(1).lost_count == 2
    assert ring.after(4).lost_count == 0


def test_losses_far_apart_are_separate_spans() -> None:
    ring = FlowRing(capacity=1)
    ring.push(trace(0))
    ring.push(trace(1))  # evicts t=0
    ring.push(trace(10 * LOSS_SPAN_JOIN_NS))  # evicts t=1 (joins the first span)
    ring.push(trace(10 * LOSS_SPAN_JOIN_NS + 1))  # evicts t=10 s: a new span
    spans = ring.losses()
    assert [(s.count, s.first_ns, s.last_ns) for s in spans] == [
        (2, 0, 1), (1, 10 * LOSS_SPAN_JOIN_NS, 10 * LOSS_SPAN_JOIN_NS)]


def test_loss_spans_are_bounded_but_totals_exact() -> None:
    ring = FlowRing(capacity=1)
    n = MAX_LOSS_SPANS + 50
    for i in range(n + 1):
        ring.push(trace(i * 10 * LOSS_SPAN_JOIN_NS))
    spans = ring.losses()
    assert len(spans) == MAX_LOSS_SPANS
    assert sum(s.count for s in spans) == n == ring.stats().lost_total


def test_record_lost_uses_injected_clock() -> None:
    clock = FakeClock(50 * S)
    ring = FlowRing(capacity=5, clock=clock)
    ring.record_lost(7)
    ring.record_lost(0)
    ring.push(drop(51 * S))
    read = ring.since(49 * S)
    assert read.lost_count == 7
    assert read.lost[0].source == SOURCE_PERF and read.lost[0].first_ns == 50 * S
    assert ring.since(51 * S).lost == []


def test_last_with_predicate_and_first() -> None:
    ring = FlowRing(capacity=10)
    for i in range(6):
        ring.push(drop(i * S) if i % 2 else trace(i * S))
    only_drops = ring.last(2, lambda f: f.verdict is FlowVerdict.DROPPED)
    assert [f.time_ns for _, f in only_drops.flows] == [3 * S, 5 * S]
    assert [f.time_ns for _, f in ring.first(2).flows] == [0, S]
    assert ring.last(0).flows == []


def test_subscribers_see_pushes_until_unsubscribed() -> None:
    ring = FlowRing(capacity=2)
    seen: list[int] = []
    unsub = ring.subscribe(lambda seq, f: seen.append(seq))
    ring.push(trace(1))
    assert ring.subscriber_count == 1
    unsub()
    unsub()  # harmless twice
    ring.push(trace(2))
    assert seen == [1] and ring.subscriber_count == 0


def test_concurrent_pushes_keep_counts_exact() -> None:
    ring = FlowRing(capacity=100)

    def worker(base: int) -> None:
        for i in range(1000):
            ring.push(drop(base + i) if i % 10 == 0 else trace(base + i))

    threads = [threading.Thread(target=worker, args=(k * 10_000,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    st = ring.stats()
    assert st.seen_total == 4000 and st.size == 100 and st.lost_total == 3900
    assert st.traces <= 1  # 400 drops arrived; only the newest trace can remain


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError):
        FlowRing(capacity=0)


def test_on_lost_feeds_metrics() -> None:
    from prometheus_client import CollectorRegistry

    from metrics.flows import FlowMetrics
    from metrics.registry import build_metrics

    reg = CollectorRegistry()
    fm = FlowMetrics(build_metrics(reg))
    ring = FlowRing(capacity=2, clock=FakeClock(5), on_lost=fm.lost)
    for i in range(5):
        ring.push(trace(i))
    ring.record_lost(3)
    g = reg.get_sample_value
    assert g("hubble_lost_events_total", {"source": "hubble_ring_buffer"}) == 3
    assert g("hubble_lost_events_total", {"source": "perf_event_ring_buffer"}) == 3
    assert g("l7gate_flow_ring_lost_total") == 3 == ring.stats().lost_total - 3


def test_push_classifies_every_kind_and_verdict_like_is_preferred() -> None:
    """push() inlines the preference test (identity checks): it must agree with
    is_preferred for every kind x verdict."""
    flows = [Flow(time_ns=1, verdict=v, kind=k) for k in EventKind for v in FlowVerdict]
    ring = FlowRing(capacity=len(flows))
    for f in flows:
        ring.push(f)
    st = ring.stats()
    assert st.preferred == sum(map(is_preferred, flows)) > 0
    assert st.traces == len(flows) - st.preferred > 0
