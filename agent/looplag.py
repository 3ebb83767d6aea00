"""How late the agent's event loop runs a timer: the wait any packet, request or query meets.

The agent serves every proxy, the BPF event reader, the API and housekeeping from one
event loop, so anything that holds the loop (a long callback, a collector pass, a map walk,
the host taking the vCPU away) delays every connection at once. Envoy reports the same as
`server.dispatcher.poll_delay_us`; a Node.js service as its event-loop delay.

Contract: `LoopLag(loop, interval_s, observe=None)`; `start()` arms a timer every
`interval_s`; each run records its lag = perf_counter() at the run - the time it was due
(clamped at 0), into bucket counts over BOUNDS_S, a running max, the count and sum, and
`observe(lag_s)` when given (the agent's Prometheus histogram). Lags of STALL_S or more also
go to `stalls`: the last MAX_STALLS as (time.time() when it ended, lag_s), so that a stall
can be put next to what else happened then. `stop()` disarms it. `summary()` is what
`l7gate status` shows.

Resolution: uvloop's timers run on libuv's millisecond clock, cached at the start of a loop
iteration, so one lag has up to ~1 ms of error either way; the buckets below 1 ms say
"not late", the ones above tell stalls. Cost: one timer callback per interval (100 per
second at the default 10 ms: about 0.05 % of a CPU).
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable
from typing import Any

from metrics.registry import LOOP_LAG_BUCKETS

INTERVAL_S = 0.01
BOUNDS_S = LOOP_LAG_BUCKETS
STALL_S = 0.01  # a lag this long is kept in `stalls`: 10 ms is ~5x the p50 of a busy proxy
MAX_STALLS = 32


class LoopLag:
    def __init__(self, loop: asyncio.AbstractEventLoop, interval_s: float = INTERVAL_S,
                 observe: Callable[[float], None] | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.loop = loop
        self.interval_s = interval_s
        self.observe = observe
        self.clock = clock
        self.counts = [0] * (len(BOUNDS_S) + 1)  # the last one: over BOUNDS_S[-1]
        self.samples = 0
        self.sum_s = 0.0
        self.max_s = 0.0
        self.stalls: deque[tuple[float, float]] = deque(maxlen=MAX_STALLS)
        self._due = 0.0
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        if self._handle is None:
            self._arm()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _arm(self) -> None:
        self._due = self.clock() + self.interval_s
        self._handle = self.loop.call_later(self.interval_s, self._tick)

    def _tick(self) -> None:
        self.record(max(0.0, self.clock() - self._due))
        self._arm()

    def record(self, lag_s: float) -> None:
        self.counts[bisect_left(BOUNDS_S, lag_s)] += 1
        self.samples += 1
        self.sum_s += lag_s
        if lag_s > self.max_s:
            self.max_s = lag_s
        if lag_s >= STALL_S:
            self.stalls.append((time.time(), lag_s))
        if self.observe is not None:
            self.observe(lag_s)

    def quantile_bound_s(self, q: float) -> float | None:
        """The upper bound of the bucket holding quantile `q` (None: no samples; inf: over
        the last bound)."""
        if not self.samples:
            return None
        rank = q * self.samples
        seen = 0
        for bound, count in zip((*BOUNDS_S, float("inf")), self.counts, strict=True):
            seen += count
            if seen >= rank:
                return bound
        return float("inf")  # pragma: no cover - the counts sum to `samples`

    def summary(self) -> dict[str, Any]:
        def ms(v: float | None) -> float | str | None:
            if v is None or v == float("inf"):
                return None if v is None else f">{BOUNDS_S[-1] * 1e3:g}"
            return round(v * 1e3, 3)
        return {
            "interval_ms": self.interval_s * 1e3,
            "samples": self.samples,
            "mean_ms": ms(self.sum_s / self.samples) if self.samples else None,
            "p99_under_ms": ms(self.quantile_bound_s(0.99)),
            "max_ms": ms(self.max_s),
            "buckets": {f"le_{b * 1e3:g}ms": c
                        for b, c in zip(BOUNDS_S, self.counts, strict=False)}
                       | {"over": self.counts[-1]},
            "stalls": [{"at": round(at, 3), "ms": ms(lag)} for at, lag in self.stalls],
        }
