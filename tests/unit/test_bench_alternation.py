"""tests/bench/alternation.py: the order of the HTTP bench's passes and its median verdict."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.bench.alternation import (
    DIRECT,
    HAPROXY,
    Ratios,
    Targets,
    agent_plan,
    pass_ratios,
    summarize,
    verdict_line,
)

TARGETS = Targets(rps_vs_haproxy=0.8, p99_vs_haproxy=1.5, p50_added_ms=0.1)


@dataclass
class Run:
    conns: int
    rps: float
    p50_ms: float
    p99_ms: float


def refs(conns: int, direct_rps: float, direct_p50: float, hap_rps: float,
         hap_p99: float) -> dict[tuple[str, int], Run]:
    return {(DIRECT, conns): Run(conns, direct_rps, direct_p50, 9.9),
            (HAPROXY, conns): Run(conns, hap_rps, 9.9, hap_p99)}


@pytest.mark.parametrize(("codecs", "rounds", "plan"), [
    (("auto", "httptools", "h11"), 3, ["auto", "httptools", "auto", "h11", "auto"]),
    (("auto", "httptools", "h11"), 1, ["auto", "httptools", "h11"]),
    (("auto", "httptools", "h11"), 2, ["auto", "httptools", "auto", "h11"]),
    (("auto",), 3, ["auto", "auto", "auto"]),
    (("h11", "auto"), 4, ["h11", "auto", "h11", "h11", "h11"]),
])
def test_agent_plan(codecs: tuple[str, ...], rounds: int, plan: list[str]) -> None:
    assert agent_plan(codecs, rounds) == plan


@pytest.mark.parametrize(("codecs", "rounds"), [((), 3), (("auto",), 0)])
def test_agent_plan_refuses_nothing_to_run(codecs: tuple[str, ...], rounds: int) -> None:
    with pytest.raises(ValueError):
        agent_plan(codecs, rounds)


@given(st.lists(st.text(min_size=1, max_size=5), min_size=1, max_size=6, unique=True),
       st.integers(min_value=1, max_value=8))
def test_agent_plan_runs_the_default_rounds_times_and_every_other_once(
        codecs: list[str], rounds: int) -> None:
    plan = agent_plan(codecs, rounds)
    assert plan[0] == codecs[0]
    assert plan.count(codecs[0]) == rounds
    assert sorted(c for c in plan if c != codecs[0]) == sorted(codecs[1:])
    # while default passes remain, no two other codecs run back to back
    last_default = max(i for i, c in enumerate(plan) if c == codecs[0])
    assert all(plan[i] == codecs[0] or plan[i + 1] == codecs[0] for i in range(last_default))


def test_an_agent_pass_is_judged_against_the_mean_of_its_neighbours() -> None:
    before = refs(64, direct_rps=50_000, direct_p50=1.0, hap_rps=40_000, hap_p99=8.0)
    after = refs(64, direct_rps=30_000, direct_p50=2.0, hap_rps=20_000, hap_p99=12.0)
    r = pass_ratios(Run(64, rps=24_000, p50_ms=2.0, p99_ms=15.0), before, after)
    assert r == Ratios(rps_vs_direct=24_000 / 40_000, p50_added_ms=2.0 - 1.5,
                       rps_vs_haproxy=24_000 / 30_000, p99_vs_haproxy=15.0 / 10.0)


def test_a_reference_pass_run_against_itself_is_one() -> None:
    mine = refs(16, direct_rps=50_000, direct_p50=0.3, hap_rps=40_000, hap_p99=2.0)
    r = pass_ratios(mine[(HAPROXY, 16)], mine, mine)
    assert r.rps_vs_haproxy == 1.0 and r.p99_vs_haproxy == 1.0


def test_pass_ratios_reads_the_run_s_own_connection_count() -> None:
    both = {**refs(1, 20_000, 0.05, 14_000, 0.4), **refs(64, 50_000, 1.0, 40_000, 8.0)}
    r = pass_ratios(Run(1, rps=10_000, p50_ms=0.09, p99_ms=0.8), both, both)
    assert r.rps_vs_haproxy == pytest.approx(10_000 / 14_000)
    assert r.p50_added_ms == pytest.approx(0.04)


def ratios(rps: float, p99: float, added: float = 0.0) -> Ratios:
    return Ratios(1.0, added, rps, p99)


def test_summary_takes_medians_of_passes_and_counts_the_passes_that_met() -> None:
    high = [ratios(0.70, 1.2), ratios(0.85, 1.4), ratios(0.90, 1.6)]
    one = [ratios(1, 1, 0.04), ratios(1, 1, 0.2), ratios(1, 1, 0.05)]
    s = summarize("l7gate (auto)", high, one, TARGETS)
    assert (s.median_rps, s.median_p99, s.median_p50_added) == (0.85, 1.4, 0.05)
    assert s.throughput_met == 1  # only the second meets both req/s and p99
    assert s.latency_met == 2
    line = verdict_line(s, TARGETS, 64)
    assert "req/s 0.850 x haproxy (target >= 0.8: met; passes 0.70, 0.85, 0.90)" in line
    assert "p99 1.400 x haproxy (target <= 1.5: met" in line
    assert "both met in 1 of 3" in line and "+0.050 ms (target <= 0.1: met" in line
    assert line.endswith("; met in 2 of 3")  # the one-connection passes that met


def test_a_median_below_target_is_missed_even_if_one_pass_met() -> None:
    s = summarize("x", [ratios(0.9, 1.0), ratios(0.7, 1.0), ratios(0.6, 1.0)],
                  [ratios(1, 1, 0.2)] * 3, TARGETS)
    line = verdict_line(s, TARGETS, 64)
    assert "req/s 0.700 x haproxy (target >= 0.8: MISSED" in line
    assert "+0.200 ms (target <= 0.1: MISSED" in line
    assert s.throughput_met == 1


def test_a_median_just_under_target_does_not_print_as_the_target() -> None:
    s = summarize("x", [ratios(0.796, 1.0)], [ratios(1, 1, 0.0)], TARGETS)
    assert "req/s 0.796 x haproxy (target >= 0.8: MISSED" in verdict_line(s, TARGETS, 64)


def test_summary_refuses_unpaired_passes() -> None:
    with pytest.raises(ValueError):
        summarize("x", [ratios(1, 1)], [], TARGETS)
    with pytest.raises(ValueError):
        summarize("x", [], [], TARGETS)
