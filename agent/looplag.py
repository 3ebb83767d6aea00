"""How late the agent's event loop runs a timer: the wait any packet, request or query meets.

The agent serves every proxy, the BPF event reader, the API and housekeeping from one
event loop, so anything that holds the loop (a long callback, a collector pass, a map walk,
the host taking the vCPU away) delays every connection at once. Envoy reports the same as
`server.dispatcher.poll_delay_us`; a Node.js service as its event-loop delay.

Contract: `LoopLag(loop, hist=None, interval_s)`; `start()` arms a timer every `interval_s`;
each run records its lag = perf_counter() at the run - the time it was due (clamped at 0)
into `hist`, a metrics/fast.py histogram child over BOUNDS_S (the agent passes its
`l7gate_event_loop_lag_seconds` child, so the metric and the status read the same counts;
without one the monitor keeps its own), and a running max. Lags of STALL_S or more also go
to `stalls`: the last MAX_STALLS as (time.time() when it ended, lag_s), so that a stall can
be put next to what else happened then. `stop()` disarms it. `summary()` is what
`l7gate status` shows.

Resolution: uvloop's timers run on libuv's millisecond clock, cached at the start of a loop
iteration, so one lag has up to ~1 ms of error either way; the buckets below 1 ms say
"not late", the ones above tell stalls. Cost: one timer callback per interval (100 per
second at the default 10 ms: about 0.05 % of a CPU).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from typing import Any

from metrics.fast import HistogramChild
from metrics.registry import LOOP_LAG_BUCKETS

INTERVAL_S = 0.01
BOUNDS_S = LOOP_LAG_BUCKETS
STALL_S = 0.01  # a lag this long is kept in `stalls`: 10 ms is ~5x the p50 of a busy proxy
MAX_STALLS = 32


class LoopLag:
    def __init__(self, loop: asyncio.AbstractEventLoop, hist: HistogramChild | None = None,
                 interval_s: float = INTERVAL_S) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        if hist is None:
            hist = HistogramChild((*BOUNDS_S, math.inf))
        if hist.bounds != (*BOUNDS_S, math.inf):
            raise ValueError(f"a loop-lag histogram has the bounds {BOUNDS_S}, not {hist.bounds}")
        self.loop = loop
        self.interval_s = interval_s
        self.hist = hist
        self.max_s = 0.0
        self.stalls: deque[tuple[float, float]] = deque(maxlen=MAX_STALLS)
        self._due = 0.0
        self._handle: asyncio.TimerHandle | None = None

    @property
    def counts(self) -> list[int]:
        """Per bucket of BOUNDS_S, not cumulative; the last: over BOUNDS_S[-1]."""
        return self.hist.counts

    @property
    def samples(self) -> int:
        return sum(self.hist.counts)

    def start(self) -> None:
        if self._handle is None:
            self._arm()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _arm(self) -> None:
        self._due = time.perf_counter() + self.interval_s
        self._handle = self.loop.call_later(self.interval_s, self._tick)

    def _tick(self) -> None:
        self.record(max(0.0, time.perf_counter() - self._due))
        self._arm()

    def record(self, lag_s: float) -> None:
        self.hist.observe(lag_s)
        if lag_s > self.max_s:
            self.max_s = lag_s
        if lag_s >= STALL_S:
            self.stalls.append((time.time(), lag_s))

    def quantile_bound_s(self, q: float) -> float | None:
        """The upper bound of the bucket holding quantile `q` (None: no samples; inf: over
        the last bound)."""
        samples = self.samples
        if not samples:
            return None
        seen = 0
        for bound, count in zip(self.hist.bounds, self.counts, strict=True):
            seen += count
            if seen >= q * samples:
                return bound
        return math.inf  # pragma: no cover - the counts sum to `samples`

    def summary(self) -> dict[str, Any]:
        def ms(v: float | None) -> float | str | None:
            if v == math.inf:
                return f">{BOUNDS_S[-1] * 1e3:g}"
            return None if v is None else round(v * 1e3, 3)
        samples = self.samples
        return {
            "interval_ms": self.interval_s * 1e3,
            "samples": samples,
            "mean_ms": ms(self.hist.sum / samples) if samples else None,
            "p99_under_ms": ms(self.quantile_bound_s(0.99)),
            "max_ms": ms(self.max_s),
            "buckets": {f"le_{b * 1e3:g}ms": c
                        for b, c in zip(BOUNDS_S, self.counts, strict=False)}
                       | {"over": self.counts[-1]},
            "stalls": [{"at": round(at, 3), "ms": ms(lag)} for at, lag in self.stalls],
        }
