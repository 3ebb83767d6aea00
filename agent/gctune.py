"""The agent's cyclic garbage collector policy: keep collector pauses out of the proxies' p99.

Contract: `start_up()` once, after start-up work and before serving: collect, freeze what
start-up built (policy snapshot, bcc, modules) out of the collector's view, set thresholds.
`GcPolicy.tick(now_s)` from the event loop about once a second, and `freeze_young(now_s)`
from the flow publisher (at most every YOUNG_FREEZE_INTERVAL_S): `gc.freeze()` moves what
survived since the last freeze (mostly flows held by the flow ring) into the permanent generation;
refcounting still frees them when the ring evicts them, the collector just never walks them
again. When the frozen objects have grown (at most every FULL_INTERVAL_S, at least every
FULL_MAX_INTERVAL_S) it unfreezes and runs one full collection, so garbage cycles that were
frozen meanwhile are reclaimed (the only cost of freezing).

Why (measured, tests/bench/test_dns_bench.py and the DNS engineer's gc measurements): a DNS
flow holds ~15 GC-tracked containers; a full pass costs 1.2-1.3 µs per retained flow, about
10-11 ms for the agent's 8,191-flow ring, and with the previous thresholds (50_000, 20, 100)
one young pass holding retained flows cost 5.2 ms. With a freeze every second and CPython's
default thresholds the live proxy at 5,000 q/s showed no gen-2 pass, gen-1 at most 1.25 ms
and gen-0 at most 0.73 ms (before: gen-2 pauses up to 18 ms).
"""

from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger(__name__)

THRESHOLDS = (700, 10, 10)  # CPython's defaults: small young passes (see the docstring)
FREEZE_INTERVAL_S = 1.0  # survivors leave the young generations this often
# ... and, while flows are published, this often (`GcPolicy.freeze_young`). Why: CPython's
# young count is allocations minus deallocations of *any* tracked object, so while the ring
# frees one old (frozen) flow for every new one, the count barely moves and the young
# generation fills with a second's worth of new flows before a pass walks them all. In one
# process at 64 connections (100k requests, the agent's callbacks, the collector on):
# freezing every 1 s gave young passes of up to 8.7-19.6 ms (p99 5.9-6.0 ms), every 0.1 s up
# to 2.6 ms, every 0.02 s up to 0.45 ms; collector time 0.66-0.77 -> 0.15 µs per request.
# gc.freeze() only splices lists: O(1).
YOUNG_FREEZE_INTERVAL_S = 0.02
# A full pass walks the whole heap: 50-60 ms with 1,000 policies x 1,000 endpoints compiled
# (~340k tracked objects). So it runs only when the frozen objects grew (frozen garbage
# cycles pile up there; flows that come and go do not grow it), at most every
# FULL_INTERVAL_S, and in any case every FULL_MAX_INTERVAL_S.
FULL_INTERVAL_S = 600.0
FULL_MAX_INTERVAL_S = 3600.0
FULL_GROWTH = 1.25  # frozen objects grew by a quarter ...
FULL_GROWTH_MIN = 20_000  # ... and by at least this many since the last full pass


def start_up() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)


class GcPolicy:
    def __init__(self, now_s: float, full_interval_s: float = FULL_INTERVAL_S,
                 full_max_interval_s: float = FULL_MAX_INTERVAL_S,
                 growth_min: int = FULL_GROWTH_MIN) -> None:
        self.full_interval_s = full_interval_s
        self.full_max_interval_s = full_max_interval_s
        self.growth_min = growth_min
        self.last_full = now_s
        self.baseline: int | None = None  # frozen objects after the first / last full tick
        self.full_passes = 0
        self.last_full_pause_s = 0.0
        self.next_young_freeze = 0.0

    def freeze_young(self, now_s: float) -> None:
        """Called by the agent's flow publisher (once per event-loop iteration that published
        flows): freeze the survivors when YOUNG_FREEZE_INTERVAL_S has passed since the last
        time. No timer: an idle agent is not woken for it."""
        if now_s >= self.next_young_freeze:
            self.next_young_freeze = now_s + YOUNG_FREEZE_INTERVAL_S
            gc.freeze()

    def full_pass_due(self, now_s: float) -> bool:
        since = now_s - self.last_full
        if since >= self.full_max_interval_s:
            return True
        if self.baseline is None or since < self.full_interval_s:
            return False
        return gc.get_freeze_count() > self.baseline * FULL_GROWTH + self.growth_min

    def tick(self, now_s: float) -> None:
        full = self.full_pass_due(now_s)
        if full:
            self.last_full = now_s
            started = time.perf_counter()
            gc.unfreeze()
            gc.collect()
            self.last_full_pause_s = time.perf_counter() - started
            self.full_passes += 1
            log.debug("full garbage collection: %.1f ms", self.last_full_pause_s * 1e3)
        gc.freeze()
        if full or self.baseline is None:
            self.baseline = gc.get_freeze_count()
