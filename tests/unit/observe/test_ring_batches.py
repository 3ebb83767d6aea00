"""FlowRing batch eviction: one loss record and one on_lost call per batch, traces first."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from observe.flow import EventKind, Flow, FlowVerdict
from observe.ring import EVICT_BATCH_DIVISOR, SOURCE_RING, FlowRing

S = 1_000_000_000


def _flow(t: int, preferred: bool) -> Flow:
    if preferred:
        return Flow(time_ns=t, verdict=FlowVerdict.FORWARDED, kind=EventKind.L7)
    return Flow(time_ns=t, verdict=FlowVerdict.FORWARDED, kind=EventKind.TRACE)


def test_default_batch_is_a_64th_of_the_capacity() -> None:
    assert FlowRing(capacity=8192).evict_batch == 8192 // EVICT_BATCH_DIVISOR == 128
    assert FlowRing(capacity=10).evict_batch == 1
    with pytest.raises(ValueError):
        FlowRing(capacity=4, evict_batch=5)


def test_full_ring_evicts_a_batch_with_one_loss_and_one_callback() -> None:
    calls: list[tuple[str, int]] = []
    ring = FlowRing(capacity=8, evict_batch=4, on_lost=lambda s, n: calls.append((s, n)))
    for i in range(1, 9):
        ring.push(_flow(i * S, preferred=False))
    assert calls == [] and ring.stats().size == 8
    ring.push(_flow(9 * S, preferred=False))  # full: seqs 1-4 go at once
    assert calls == [(SOURCE_RING, 4)]
    assert [seq for seq, _ in ring.last(100).flows] == [5, 6, 7, 8, 9]
    (span,) = ring.losses()
    assert (span.count, span.first_seq, span.last_seq) == (4, 1, 4)
    assert (span.first_ns, span.last_ns) == (1 * S, 4 * S)
    for i in range(10, 13):  # room for three more without evicting
        ring.push(_flow(i * S, preferred=False))
    assert calls == [(SOURCE_RING, 4)]
    read = ring.after(0)
    assert read.lost_count == 4 and read.flows[0][0] == 5  # readers see the loss notice


def test_batch_takes_traces_first_then_oldest_preferred() -> None:
    ring = FlowRing(capacity=4, evict_batch=3)
    for i, pref in enumerate([True, False, True, True], start=1):
        ring.push(_flow(i * S, pref))
    ring.push(_flow(5 * S, preferred=True))  # evicts trace seq 2, then preferred seqs 1, 3
    assert [seq for seq, _ in ring.last(10).flows] == [4, 5]
    (span,) = ring.losses()
    assert (span.count, span.first_seq, span.last_seq) == (3, 1, 3)
    assert (span.first_ns, span.last_ns) == (1 * S, 3 * S)


@given(kinds=st.lists(st.booleans(), min_size=1, max_size=200),
       capacity=st.integers(1, 40), batch=st.integers(1, 40))
def test_counts_and_bounds_hold(kinds: list[bool], capacity: int, batch: int) -> None:
    batch = min(batch, capacity)
    lost: list[int] = []
    ring = FlowRing(capacity=capacity, evict_batch=batch, on_lost=lambda _s, n: lost.append(n))
    for i, pref in enumerate(kinds):
        ring.push(_flow(i, pref))
        assert ring.stats().size <= capacity
    stats = ring.stats()
    assert stats.size + sum(lost) == len(kinds) == stats.seen_total
    assert stats.lost_total == sum(lost) == sum(s.count for s in ring.losses())
    if len(kinds) > capacity:
        assert stats.size >= capacity - batch + 1
    # no preferred flow is evicted while an older-or-newer trace was still held
    held = {seq for seq, _ in ring.last(10**6).flows}
    evicted_pref = [i + 1 for i, p in enumerate(kinds) if p and i + 1 not in held]
    if evicted_pref:
        newest_pushed_before = max(evicted_pref)
        assert all(kinds[s - 1] for s in held if s < newest_pushed_before)
