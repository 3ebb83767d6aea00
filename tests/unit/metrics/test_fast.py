"""metrics/fast.py must expose exactly what prometheus_client's Counter/Histogram would.

The same random sequence of bumps goes to a FastCounter/FastHistogram on one registry and to a
prometheus_client Counter/Histogram on another; the text expositions must be equal line for
line once `_created` timestamps (wall clock at creation) are masked.
"""

from __future__ import annotations

import math
import re
import threading
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from metrics.fast import DEFAULT_BUCKETS, FastCounter, FastHistogram

LABELS = st.tuples(st.sampled_from(["GET", "POST", "OTHER"]), st.sampled_from(["client", "server"]))
_CREATED = re.compile(r"^(\S+_created\{[^}]*\}) \S+$", re.M)


def _text(reg: CollectorRegistry) -> str:
    return _CREATED.sub(r"\1 <t>", generate_latest(reg).decode())


VALUES = st.one_of(st.sampled_from([*DEFAULT_BUCKETS[:-1], 0.0, 1e-9, 1e6]),
                   st.floats(min_value=0, max_value=50, allow_nan=False))


def _same_exposition(fast: Any, ref: Any, bumps: list[tuple[tuple[str, str], float]],
                     method: str) -> None:
    """Apply the same bumps to our family and to prometheus_client's, then compare."""
    for labels, v in bumps:
        getattr(fast.labels(*labels), method)(v)
        getattr(ref.labels(*labels), method)(v)
    # children created but never bumped show as zeros in both
    fast.labels("GET", "server")
    ref.labels("GET", "server")
    assert sorted(_text(fast.registry).splitlines()) == sorted(_text(ref.registry).splitlines())


class _On:
    """A family and the registry it was registered on."""

    def __init__(self, family: Any, registry: CollectorRegistry) -> None:
        self.family, self.registry = family, registry

    def labels(self, *values: str) -> Any:
        return self.family.labels(*values)


def _pair(fast_cls: Any, ref_cls: Any, name: str) -> tuple[_On, _On]:
    fast_reg, ref_reg = CollectorRegistry(), CollectorRegistry()
    return (_On(fast_cls(name, "Doc", ["method", "reporter"], registry=fast_reg), fast_reg),
            _On(ref_cls(name, "Doc", ["method", "reporter"], registry=ref_reg), ref_reg))


@given(st.lists(st.tuples(LABELS, st.integers(min_value=0, max_value=5)), max_size=40))
def test_counter_exposition_matches_prometheus_client(
        bumps: list[tuple[tuple[str, str], float]]) -> None:
    _same_exposition(*_pair(FastCounter, Counter, "x_requests_total"), bumps, "inc")


@given(st.lists(st.tuples(LABELS, VALUES), max_size=40))
def test_histogram_exposition_matches_prometheus_client(
        obs: list[tuple[tuple[str, str], float]]) -> None:
    _same_exposition(*_pair(FastHistogram, Histogram, "x_seconds"), obs, "observe")


def test_registry_lookup_and_same_child() -> None:
    reg = CollectorRegistry()
    c = FastCounter("y_total", "Y", ["a"], registry=reg)
    assert c.labels("1") is c.labels("1") is c.labels(a="1")
    c.labels("1").inc()
    c.labels("1").inc(2.5)
    assert reg.get_sample_value("y_total", {"a": "1"}) == 3.5
    h = FastHistogram("z_seconds", "Z", ["a"], buckets=(0.1, 1.0), registry=reg)
    h.labels("q").observe(0.1)
    h.labels("q").observe(0.5)
    h.labels("q").observe(7)
    assert reg.get_sample_value("z_seconds_bucket", {"a": "q", "le": "0.1"}) == 1
    assert reg.get_sample_value("z_seconds_bucket", {"a": "q", "le": "1.0"}) == 2
    assert reg.get_sample_value("z_seconds_bucket", {"a": "q", "le": "+Inf"}) == 3
    assert reg.get_sample_value("z_seconds_count", {"a": "q"}) == 3
    assert reg.get_sample_value("z_seconds_sum", {"a": "q"}) == pytest.approx(7.6)
    n = FastCounter("n_total", "N", registry=reg)  # no labels: exposed as 0 at once
    assert reg.get_sample_value("n_total") == 0
    n.inc(2)
    assert reg.get_sample_value("n_total") == 2


def test_bad_use_is_refused() -> None:
    reg = CollectorRegistry()
    c = FastCounter("w_total", "W", ["a", "b"], registry=reg)
    with pytest.raises(ValueError):
        c.labels("only-one")
    with pytest.raises(ValueError):
        c.labels(a="1")  # b missing
    with pytest.raises(ValueError):
        c.labels("1", "2").inc(-1)
    with pytest.raises(ValueError):
        FastHistogram("v_seconds", "V", [], buckets=(1.0, 0.5))
    with pytest.raises(ValueError):  # the name is taken on this registry
        FastCounter("w_total", "W again", ["a"], registry=reg)
    assert math.inf == FastHistogram("u_seconds", "U", []).bounds[-1]


def test_scrape_while_bumping_from_another_thread() -> None:
    """The scrape thread reads while the loop thread bumps: no exception, totals consistent."""
    reg = CollectorRegistry()
    c = FastCounter("t_total", "T", ["i"], registry=reg)
    h = FastHistogram("t_seconds", "T", ["i"], registry=reg)
    stop = threading.Event()
    errors: list[BaseException] = []

    def scrape() -> None:
        try:
            while not stop.is_set():
                generate_latest(reg)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    t = threading.Thread(target=scrape)
    t.start()
    try:
        for i in range(20_000):
            c.labels(str(i % 50)).inc()
            h.labels(str(i % 50)).observe(i / 1e4)
    finally:
        stop.set()
        t.join(10)
    assert not errors
    assert sum(reg.get_sample_value("t_total", {"i": str(i)}) or 0 for i in range(50)) == 20_000
    assert sum(reg.get_sample_value("t_seconds_count", {"i": str(i)}) or 0
               for i in range(50)) == 20_000
