"""agent/gctune.py: survivors are frozen every tick; frozen garbage cycles are reclaimed by
the periodic full pass; nothing reachable is ever freed."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from agent import gctune


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


@pytest.fixture(autouse=True)
def _restore_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)
    gc.collect()


def test_tick_freezes_survivors_and_refcounting_still_frees_them() -> None:
    policy = gctune.GcPolicy(now_s=0.0, full_interval_s=600.0)
    kept = [_Node() for _ in range(100)]
    frozen_before = gc.get_freeze_count()
    policy.tick(1.0)
    assert gc.get_freeze_count() >= frozen_before + 100
    probe = weakref.ref(kept[0])
    del kept  # acyclic: freed by refcount although frozen
    assert probe() is None
    assert policy.full_passes == 0


def test_full_pass_reclaims_frozen_cycles_and_keeps_live_objects() -> None:
    policy = gctune.GcPolicy(now_s=0.0, full_interval_s=5.0, full_max_interval_s=10.0)
    a, b = _Node(), _Node()
    a.other, b.other = b, a  # a garbage cycle once the names go
    cycle = weakref.ref(a)
    live = _Node()
    live.other = live  # a cycle that stays reachable
    del a, b
    policy.tick(1.0)  # frozen: the collector no longer sees the cycle
    gc.collect()
    assert cycle() is not None
    policy.tick(11.0)  # full pass: unfreeze, collect, freeze again
    assert cycle() is None
    assert live.other is live
    assert policy.full_passes == 1 and policy.last_full_pause_s >= 0


def test_start_up_sets_small_young_generations() -> None:
    gctune.start_up()
    assert gc.get_threshold() == gctune.THRESHOLDS
    assert gc.get_freeze_count() > 0


def test_full_pass_only_when_frozen_objects_grew_or_at_the_max_interval() -> None:
    policy = gctune.GcPolicy(now_s=0.0, full_interval_s=10.0, full_max_interval_s=100.0,
                             growth_min=1_000)
    policy.tick(1.0)
    policy.tick(20.0)  # past the interval, nothing grew: no walk over the whole heap
    assert policy.full_passes == 0
    assert policy.baseline is not None
    kept = [[i] for i in range(int(policy.baseline * 0.3) + 2_000)]  # frozen at next tick
    policy.tick(21.0)
    policy.tick(22.0)  # grown by over a quarter (+ growth_min) and past the interval
    assert policy.full_passes == 1
    policy.tick(23.0)  # the baseline moved with it: no second pass
    assert policy.full_passes == 1
    del kept
    policy.tick(122.1)  # the max interval passed: a full pass whatever the growth
    assert policy.full_passes == 2


def test_freeze_young_freezes_at_most_once_per_interval() -> None:
    policy = gctune.GcPolicy(now_s=0.0)
    step = gctune.YOUNG_FREEZE_INTERVAL_S
    policy.freeze_young(10.0)  # the first call freezes
    first = [_Node() for _ in range(100)]
    frozen = gc.get_freeze_count()
    policy.freeze_young(10.0 + step / 2)  # too soon: nothing moves
    assert gc.get_freeze_count() == frozen
    policy.freeze_young(10.0 + step)  # due: the survivors leave the young generation
    assert gc.get_freeze_count() >= frozen + 100
    probe = weakref.ref(first[0])
    del first  # still freed by refcount
    assert probe() is None
