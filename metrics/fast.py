"""Lock-free labelled counters and histograms for the per-flow metrics (no I/O here).

Contract: `FastCounter(name, doc, labelnames, registry=r)` and
`FastHistogram(name, doc, labelnames, buckets=..., registry=r)` offer the part of
prometheus_client's `Counter`/`Histogram` the agent uses on its hot path: `.labels(*values)`
returns a child (the same object for the same values) with `inc(amount=1)` /
`observe(value)`; the registry collects them at scrape time as ordinary counter / histogram
families (same names, labels, `_total`, `_bucket{le=...}`, `_sum`, `_count`, `_created`).

Why not prometheus_client's own: every `inc()` there takes a `threading.Lock` and every
`observe()` walks the buckets taking one lock per touched value; a DNS query bumped five
counters and four histograms that way (measured with tests/bench/test_bench_observe.py:
see the README's performance table). Here a bump is an attribute add and a histogram
observation one `bisect`.

Children are plain records: metrics/flows.py replays per-flow plans by bumping
`CounterChild.value` and `HistogramChild.counts[...]`/`.sum` in place, exactly as `inc(1)` /
`observe(v)` would (no Python call per child); a change to what those methods do must be
mirrored there (test_flow_metric_plans.py compares the two).

Threading: every bump comes from the agent's event-loop thread. The scrape runs on the
metrics server's thread and reads snapshots (`list(dict.values())`, a child's fields), each
atomic under the GIL: a scrape concurrent with a bump sees it or not, never a torn value.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

_le: Callable[[float], str] = floatToGoString  # how prometheus_client spells a bound ("+Inf")

# prometheus_client's Histogram.DEFAULT_BUCKETS (the agent's histograms used them before).
DEFAULT_BUCKETS = (.005, .01, .025, .05, .075, .1, .25, .5, .75, 1.0, 2.5, 5.0, 7.5, 10.0,
                   math.inf)


class CounterChild:
    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("counters can only be incremented by non-negative amounts")
        self.value += amount


class HistogramChild:
    __slots__ = ("bounds", "counts", "created", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)  # per bucket, not cumulative; the last is +Inf
        self.sum = 0.0
        self.created = time.time()

    def observe(self, value: float) -> None:
        # prometheus: a value lands in the first bucket whose upper bound is >= value
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


class _Family(Collector):
    """Children by label values, and the registration both kinds share."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str],
                 registry: CollectorRegistry | None) -> None:
        if name.endswith("_total"):
            name = name[:-len("_total")]  # as prometheus_client: the family name has no suffix
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], Any] = {}
        if registry is not None:
            registry.register(self)

    def _new_child(self) -> Any:
        raise NotImplementedError

    def labels(self, *values: str, **by_name: str) -> Any:
        if by_name:
            if values or set(by_name) != set(self.labelnames):
                raise ValueError(f"{self.name}: expected labels {self.labelnames}, "
                                 f"got {values} {by_name}")
            values = tuple(by_name[n] for n in self.labelnames)
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name}: expected labels {self.labelnames}, got {values}")
            key = tuple(str(v) for v in values)
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = self._new_child()
        return child

    def _items(self) -> list[tuple[tuple[str, ...], Any]]:
        return list(self._children.items())

    def describe(self) -> list[Metric]:
        return [self._family()]

    def _family(self) -> Metric:
        raise NotImplementedError


class FastCounter(_Family):
    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (), *,
                 registry: CollectorRegistry | None = None) -> None:
        super().__init__(name, documentation, labelnames, registry)
        if not self.labelnames:
            self.labels()  # a label-less counter is exposed (as 0) from the start

    def _new_child(self) -> CounterChild:
        return CounterChild()

    def inc(self, amount: float = 1) -> None:
        """For a counter without labels, as prometheus_client's `Counter.inc`."""
        self.labels().inc(amount)

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[Metric]:
        fam = self._family()
        for values, child in self._items():
            fam.add_metric(list(values), child.value, created=child.created)
        yield fam


class FastHistogram(_Family):
    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], *,
                 buckets: Sequence[float] = DEFAULT_BUCKETS,
                 registry: CollectorRegistry | None = None) -> None:
        bounds = tuple(float(b) for b in buckets)
        if not bounds or bounds[-1] != math.inf:
            bounds = (*bounds, math.inf)
        if list(bounds) != sorted(bounds):
            raise ValueError(f"{name}: buckets must be sorted")
        self.bounds = bounds
        super().__init__(name, documentation, labelnames, registry)

    def _new_child(self) -> HistogramChild:
        return HistogramChild(self.bounds)

    def _family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[Metric]:
        fam = self._family()
        les = [_le(b) for b in self.bounds]
        for values, child in self._items():
            counts, total = list(child.counts), child.sum
            running, buckets = 0, []
            for le, n in zip(les, counts, strict=True):
                running += n
                buckets.append((le, float(running)))
            fam.add_metric(list(values), buckets, total)
            # HistogramMetricFamily has no `created` argument: add the sample like Histogram
            fam.add_sample(self.name + "_created", dict(zip(self.labelnames, values,
                                                            strict=True)), child.created)
        yield fam
