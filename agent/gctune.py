"""The agent's cyclic garbage collector policy: keep collector pauses out of the proxies' p99.

Contract: `start_up()` once, after start-up work and before serving: collect, freeze what
start-up built (policy snapshot, bcc, modules) out of the collector's view, set thresholds.
`GcPolicy.tick(now_s)` from the event loop about once a second: `gc.freeze()` moves what
survived the last second (mostly flows held by the flow ring) into the permanent generation;
refcounting still frees them when the ring evicts them, the collector just never walks them
again. Every FULL_INTERVAL_S it unfreezes and runs one full collection, so garbage cycles
that were frozen meanwhile are reclaimed (the only cost of freezing).

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
FULL_INTERVAL_S = 600.0  # frozen garbage cycles are reclaimed this often (one full pass)


def start_up() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)


class GcPolicy:
    def __init__(self, now_s: float, full_interval_s: float = FULL_INTERVAL_S) -> None:
        self.full_interval_s = full_interval_s
        self.last_full = now_s
        self.full_passes = 0
        self.last_full_pause_s = 0.0

    def tick(self, now_s: float) -> None:
        if now_s - self.last_full >= self.full_interval_s:
            self.last_full = now_s
            started = time.perf_counter()
            gc.unfreeze()
            gc.collect()
            self.last_full_pause_s = time.perf_counter() - started
            self.full_passes += 1
            log.debug("full garbage collection: %.1f ms", self.last_full_pause_s * 1e3)
        gc.freeze()
