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


def _replay(capacity: int, evict: int, batches: list[list[tuple[int, int]]],
            many: bool) -> tuple[object, ...]:
    """Push `batches` (lists of (kind index, time)) one flow at a time or with push_many;
    return everything a reader, a subscriber and on_lost can observe."""
    kinds = [EventKind.L7, EventKind.TRACE, EventKind.DROP]
    lost: list[tuple[str, int]] = []
    seen: list[tuple[int, int]] = []
    ring = FlowRing(capacity=capacity, evict_batch=evict,
                    on_lost=lambda s, n: lost.append((s, n)))
    ring.subscribe(lambda seq, f: seen.append((seq, f.time_ns)))
    for batch in batches:
        flows = [Flow(time_ns=t, verdict=FlowVerdict.FORWARDED, kind=kinds[k])
                 for k, t in batch]
        if many:
            ring.push_many(flows)
        else:
            for f in flows:
                ring.push(f)
    read = ring.after(0)
    return ([(seq, f.time_ns, f.kind) for seq, f in read.flows],
            [(s.count, s.first_seq, s.last_seq, s.first_ns, s.last_ns) for s in ring.losses()],
            ring.stats(), sorted(lost), seen, ring.last_seq)


@given(batches=st.lists(st.lists(st.tuples(st.integers(0, 2), st.integers(1, 10**6)),
                                 max_size=60), max_size=12),
       capacity=st.integers(1, 50), evict=st.integers(1, 50))
def test_push_many_is_pushing_one_by_one(batches: list[list[tuple[int, int]]], capacity: int,
                                          evict: int) -> None:
    """Whatever the mix of kinds, batch sizes and ring sizes (so both the one-extend path
    and the per-flow path run): the same flows, seqs, losses, stats, callbacks."""
    evict = min(evict, capacity)
    assert _replay(capacity, evict, batches, True) == _replay(capacity, evict, batches, False)


def test_push_many_takes_the_extend_path_on_a_full_ring_of_l7_flows() -> None:
    """The agent's case: L7 batches into a full ring; evictions take older flows only."""
    calls: list[tuple[str, int]] = []
    ring = FlowRing(capacity=16, evict_batch=4, on_lost=lambda s, n: calls.append((s, n)))
    ring.push_many([_flow(i * S, preferred=True) for i in range(1, 17)])
    assert calls == [] and ring.stats().size == 16
    ring.push_many([_flow(i * S, preferred=True) for i in range(17, 23)])  # 6 over: 2 batches
    assert calls == [(SOURCE_RING, 4), (SOURCE_RING, 4)]
    assert [seq for seq, _ in ring.last(100).flows] == list(range(9, 23))
    assert ring.push_many([]) is None and ring.last_seq == 22
