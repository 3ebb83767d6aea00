"""Benchmarks for observe/ and metrics/ (make bench). Prints rates; asserts nothing on time.

Reported as flows per second and as ratios to a bare `Flow.to_json()` + `json.dumps` (the
unavoidable cost of producing one JSON line), so numbers compare across machines.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from metrics.flows import FlowMetrics
from metrics.registry import build_metrics
from observe.cli import build_spec
from observe.filters import compile_spec
from observe.flow import Flow
from observe.printer import make_printer
from observe.ring import FlowRing

pytestmark = pytest.mark.bench
FLOWS = Path(__file__).parents[1] / "unit" / "observe" / "flows.jsonl"
N = 50_000


def _flows() -> list[Flow]:
    base = [Flow.from_json(json.loads(x)) for x in FLOWS.read_text().splitlines() if x]
    return [base[i % len(base)] for i in range(N)]


def _rate(fn: object, flows: list[Flow]) -> float:
    start = time.perf_counter()
    for f in flows:
        fn(f)  # type: ignore[operator]
    return len(flows) / (time.perf_counter() - start)


def test_bench_observe_paths() -> None:
    flows = _flows()
    base = _rate(lambda f: json.dumps({"flow": f.to_json()}), flows)
    ring = FlowRing(capacity=8191)
    push = _rate(ring.push, flows)
    pred = compile_spec(build_spec([("verdict", "DROPPED"), ("pod", "default/my-api"),
                                    ("http-path", "^/api/")]))
    filt = _rate(pred, flows)
    out = io.StringIO()
    compact = _rate(make_printer("compact", out, io.StringIO()).flow, flows)
    fm = FlowMetrics(build_metrics(CollectorRegistry()))
    metrics = _rate(fm.observe, flows)
    start = time.perf_counter()
    ring.last(20, pred)
    last_ms = (time.perf_counter() - start) * 1e3
    print(f"\nobserve bench over {N} flows (ratio = rate / json-line rate {base:,.0f}/s):")
    for name, r in (("ring.push", push), ("filter (3 flags)", filt), ("compact print", compact),
                    ("FlowMetrics.observe", metrics)):
        print(f"  {name:22s} {r:12,.0f} flows/s  ratio {r / base:6.2f}")
    print(f"  ring.last(20, filter) over a full 8191 ring: {last_ms:.1f} ms")
    # full: a push into a full ring evicts a batch (observe/ring.py), so it holds between
    # capacity - evict_batch + 1 and capacity flows
    assert ring.capacity - ring.evict_batch < ring.stats().size <= ring.capacity
