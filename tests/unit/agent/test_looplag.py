"""agent/looplag.py: the event loop's lag, as `l7gate status` and the metrics report it."""

from __future__ import annotations

import asyncio
import math
import time

import pytest

from agent.daemon import Agent, AgentConfig
from agent.looplag import BOUNDS_S, MAX_STALLS, STALL_S, LoopLag
from metrics.fast import FastHistogram, HistogramChild


def _lag(hist: HistogramChild | None = None) -> LoopLag:
    loop = asyncio.new_event_loop()
    loop.close()  # record() and summary() need no running loop
    return LoopLag(loop, hist)


def test_lags_land_in_prometheus_buckets_and_stalls_are_kept() -> None:
    hist = HistogramChild((*BOUNDS_S, math.inf))  # the agent passes its metric's child
    lag = _lag(hist)
    values = (0.0, 0.0004, 0.001, 0.0011, 0.003, 0.012, 0.3, 5.0)
    for v in values:
        lag.record(v)
    seen = hist.counts  # the metric and the monitor count in one place
    # a value lands in the first bucket whose bound is >= it (prometheus' rule)
    by_bound = dict(zip((*BOUNDS_S, float("inf")), lag.counts, strict=True))
    assert by_bound[0.001] == 3 and by_bound[0.0025] == 1 and by_bound[0.005] == 1
    assert by_bound[0.025] == 1 and by_bound[0.5] == 1 and by_bound[float("inf")] == 1
    assert lag.samples == 8 and lag.max_s == 5.0 and seen[-1] == 1 and sum(seen) == 8
    assert hist.sum == sum(values)
    assert [ms for _, ms in lag.stalls] == [0.012, 0.3, 5.0]  # STALL_S and over only
    s = lag.summary()
    assert s["max_ms"] == 5000.0 and s["samples"] == 8
    assert s["p99_under_ms"] == ">2500"  # the 99th percentile is the 5 s one: off the scale
    assert s["buckets"]["le_1ms"] == 3 and s["buckets"]["over"] == 1
    assert [x["ms"] for x in s["stalls"]] == [12.0, 300.0, 5000.0]


def test_quantile_bound_and_stall_memory_are_bounded() -> None:
    lag = _lag()
    assert lag.quantile_bound_s(0.99) is None and lag.summary()["mean_ms"] is None
    for _ in range(99):
        lag.record(0.0002)
    lag.record(0.04)
    assert lag.quantile_bound_s(0.5) == 0.001 and lag.quantile_bound_s(0.99) == 0.001
    assert lag.quantile_bound_s(1.0) == 0.05
    for _ in range(MAX_STALLS + 5):
        lag.record(STALL_S)
    assert len(lag.stalls) == MAX_STALLS


def test_a_blocked_loop_is_seen_late_by_at_least_the_block() -> None:
    """The timer cannot run while a callback holds the loop: a 60 ms block shows as a lag
    of at least 60 ms minus the interval (no upper bound is asserted: the host may add)."""
    async def run() -> LoopLag:
        lag = LoopLag(asyncio.get_running_loop(), interval_s=0.01)
        lag.start()
        lag.start()  # idempotent: still one timer
        await asyncio.sleep(0.03)
        time.sleep(0.06)  # hold the loop
        await asyncio.sleep(0.03)
        lag.stop()
        samples = lag.samples
        await asyncio.sleep(0.03)
        assert lag.samples == samples  # stopped: no more ticks
        return lag

    lag = asyncio.run(run())
    assert lag.max_s >= 0.05, lag.summary()
    assert lag.stalls and lag.stalls[-1][1] >= 0.05
    assert lag.samples >= 3


def test_interval_must_be_positive() -> None:
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(ValueError, match="interval_s"):
            LoopLag(loop, interval_s=0)
        with pytest.raises(ValueError, match="bounds"):
            LoopLag(loop, HistogramChild((0.5, math.inf)))
    finally:
        loop.close()


def test_status_and_metrics_report_the_lag(cfg: AgentConfig) -> None:
    from prometheus_client import generate_latest
    agent = Agent(cfg)
    agent.prepare()
    assert "event_loop" not in agent.status()  # run() starts the monitor
    hist: FastHistogram = agent.metrics.loop_lag
    agent.loop_lag = _lag(hist.labels())
    agent.loop_lag.record(0.02)
    agent.housekeeping_last_s, agent.housekeeping_max_s = 0.0012, 0.004
    ev = agent.status()["event_loop"]
    assert ev["lag"]["max_ms"] == 20.0 and ev["lag"]["buckets"]["le_25ms"] == 1
    assert ev["housekeeping_last_ms"] == 1.2 and ev["housekeeping_max_ms"] == 4.0
    text = generate_latest(agent.registry).decode()
    assert 'l7gate_event_loop_lag_seconds_bucket{le="0.025"} 1.0' in text
    assert 'l7gate_event_loop_lag_seconds_bucket{le="0.01"} 0.0' in text


def test_status_text_shows_the_loop_lag() -> None:
    """`l7gate status` (text) carries one line on the loop: what users read first when every
    connection slowed at once."""
    from agent.cmd_agent import format_status
    lag = _lag()
    for v in (0.0002,) * 98 + (0.004, 0.0312):
        lag.record(v)
    text = format_status({"node": "node2", "healthy": True,
                          "event_loop": {"lag": lag.summary(), "housekeeping_last_ms": 0.3,
                                         "housekeeping_max_ms": 5.2}})
    line = next(ln for ln in text.splitlines() if ln.startswith("Event loop:"))
    assert "lag p99 <= 5.0 ms" in line and "max 31.2 ms over 100 ticks" in line
    assert "1 stall(s) >= 10 ms kept; last stall 31.2 ms at " in line
    assert line.endswith("housekeeping max 5.2 ms")
    assert "Event loop:" not in format_status({"node": "n", "healthy": True})
