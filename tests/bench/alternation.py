"""Alternated passes of the sandbox HTTP bench: the order and the verdict (pure, no I/O).

Why: on this VM the reference speed drifts by up to a third within one run (haproxy at
c=64 ran 29.4k req/s before the agent sandboxes and 38.8k after in one `make bench`, 38.0k
and 24.2k in another). With one agent pass between one reference pass before and one after,
a codec's ratio depends on when in the drift it ran. So the bench alternates whole
sandboxes: references (direct, haproxy), agent, references, agent, ..., references. Each
agent pass is compared with the mean of the two reference passes around it (measured just
before and just after it), and a setup's verdict is the median of its per-pass ratios, with
how many of its passes met the targets on their own. Every pass is printed; nothing is
dropped.

Contract:
    agent_plan(codecs, rounds) -> [codec, ...]   the agent passes in order: the default codec
        (the first) `rounds` times, the others once each, between default passes
    pass_ratios(run, refs_before, refs_after) -> Ratios   one run against its neighbours
    summarize(label, at_high, at_one, targets) -> Summary  the median verdict of one setup
    ratio(a, b), verdict_word(ok)   a / b (nan when b is 0), "met" / "MISSED": every
        verdict the sandbox benches print uses these
`refs_*` map (setup, conns) -> a run; setups are DIRECT and HAPROXY.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import median
from typing import Protocol

DIRECT = "direct (no agent)"
HAPROXY = "haproxy"


class Measured(Protocol):
    """What a wrk run gives (sandbox_bench_helpers.WrkRun)."""

    @property
    def conns(self) -> int: ...
    @property
    def rps(self) -> float: ...
    @property
    def p50_ms(self) -> float: ...
    @property
    def p99_ms(self) -> float: ...


Refs = Mapping[tuple[str, int], Measured]


@dataclass(frozen=True)
class Targets:
    rps_vs_haproxy: float  # at the high connection count: at least this
    p99_vs_haproxy: float  # at the high connection count: at most this
    p50_added_ms: float  # at one connection, over direct: at most this


@dataclass(frozen=True)
class Ratios:
    """One run against the mean of the reference passes before and after it."""

    rps_vs_direct: float
    p50_added_ms: float  # run p50 - direct p50
    rps_vs_haproxy: float
    p99_vs_haproxy: float


@dataclass(frozen=True)
class Summary:
    label: str
    passes: int
    rps_vs_haproxy: list[float]  # per pass, in run order (high connection count)
    p99_vs_haproxy: list[float]
    p50_added_ms: list[float]  # per pass (one connection)
    throughput_met: int  # passes meeting both high-count targets (req/s and p99)
    latency_met: int  # passes meeting the one-connection target

    @property
    def median_rps(self) -> float:
        return median(self.rps_vs_haproxy)

    @property
    def median_p99(self) -> float:
        return median(self.p99_vs_haproxy)

    @property
    def median_p50_added(self) -> float:
        return median(self.p50_added_ms)


def agent_plan(codecs: Sequence[str], rounds: int) -> list[str]:
    """(auto, httptools, h11) x 3 -> [auto, httptools, auto, h11, auto]: the default codec's
    passes spread over the run, each other codec once, between two of them."""
    if not codecs:
        raise ValueError("no codec to bench")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, not {rounds}")
    default, others = codecs[0], list(codecs[1:])
    plan: list[str] = []
    for i in range(rounds):
        plan.append(default)
        if i < rounds - 1 and others:
            plan.append(others.pop(0))
    return plan + others


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def verdict_word(ok: bool) -> str:
    return "met" if ok else "MISSED"


def pass_ratios(run: Measured, before: Refs, after: Refs) -> Ratios:
    """`run`'s ratios against the mean of the direct and haproxy runs at its connection
    count in the reference passes around it (the same pass twice for a run inside one)."""
    key_d, key_h = (DIRECT, run.conns), (HAPROXY, run.conns)
    d_rps = (before[key_d].rps + after[key_d].rps) / 2
    d_p50 = (before[key_d].p50_ms + after[key_d].p50_ms) / 2
    h_rps = (before[key_h].rps + after[key_h].rps) / 2
    h_p99 = (before[key_h].p99_ms + after[key_h].p99_ms) / 2
    return Ratios(ratio(run.rps, d_rps), run.p50_ms - d_p50, ratio(run.rps, h_rps),
                  ratio(run.p99_ms, h_p99))


def summarize(label: str, at_high: Sequence[Ratios], at_one: Sequence[Ratios],
              targets: Targets) -> Summary:
    """The verdict of one setup over its passes: medians of the per-pass ratios (not ratios
    of medians: each pass is judged against its own neighbours) and the passes that met."""
    if not at_high or len(at_high) != len(at_one):
        raise ValueError(f"{label}: {len(at_high)} high-count and {len(at_one)} "
                         "one-connection passes")
    rps = [r.rps_vs_haproxy for r in at_high]
    p99 = [r.p99_vs_haproxy for r in at_high]
    added = [r.p50_added_ms for r in at_one]
    return Summary(label, len(at_high), rps, p99, added,
                   sum(1 for a, b in zip(rps, p99, strict=True)
                       if a >= targets.rps_vs_haproxy and b <= targets.p99_vs_haproxy),
                   sum(1 for a in added if a <= targets.p50_added_ms))


def verdict_line(s: Summary, targets: Targets, high: int) -> str:
    """One line per setup: medians against the targets, every pass's figure beside them."""
    met = verdict_word

    def each(xs: list[float], fmt: str) -> str:
        return ", ".join(format(x, fmt) for x in xs)

    rps_ok = s.median_rps >= targets.rps_vs_haproxy
    p99_ok = s.median_p99 <= targets.p99_vs_haproxy
    lat_ok = s.median_p50_added <= targets.p50_added_ms
    # medians with three decimals: 0.796 printed as 0.80 would read as met
    return (f"{s.label}: c={high} median over {s.passes} pass(es): req/s {s.median_rps:.3f} x "
            f"haproxy (target >= {targets.rps_vs_haproxy}: {met(rps_ok)}; passes "
            f"{each(s.rps_vs_haproxy, '.2f')}), p99 {s.median_p99:.3f} x haproxy (target <= "
            f"{targets.p99_vs_haproxy}: {met(p99_ok)}; passes {each(s.p99_vs_haproxy, '.2f')}"
            f"); both met in {s.throughput_met} of {s.passes}; c=1 p50 added "
            f"{s.median_p50_added:+.3f} ms (target <= {targets.p50_added_ms}: {met(lat_ok)}; "
            f"passes {each(s.p50_added_ms, '+.3f')}); met in {s.latency_met} of {s.passes}")
