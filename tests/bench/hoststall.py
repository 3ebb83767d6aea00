"""Host-stall probe shared by the DNS benchmarks (test_dns_bench.py on loopback,
test_sandbox_bench.py in the sandbox): fixed-rate latency measured apart from host stalls.

Why (evidence in test_dns_bench.py's module docstring): on the benchmark VM the whole guest
slows down 15-50x for 15-90 ms windows every 1-2.5 s, below the guest (it hits both vCPUs at
once, every network namespace alike, and shows as neither steal nor interrupt time). A server
costing ~50 µs per query falls behind in such a window at 5,000 q/s, so a fixed-rate p99 over
a few seconds is a lottery. The benches therefore split each fixed-rate setup into SLICES runs
of SLICE_S s while a low-duty probe (HOST_PROBE_SCRIPT, in its own process in the root
namespace) records the stalls, and report figures over all slices (raw) and over the slices
no stall touched (clean).

Contract:
    with HostProbe() as probe:          # starts the probe, lets it collect calm samples
        spans = timed_slices(n, fn)     # [TimedSlice(start, end, fn())], monotonic times
    probe.stalls                        # list[Stall], known once the block has ended
    probe.cpu_wait_pct                  # in-guest CPU contention over the block (or None)
    probe.clean(spans)                  # the spans no stall (+ STALL_DRAIN_S) overlapped
    stall_windows(samples)              # pure classifier of probe samples -> list[Stall]
    describe(stalls)                    # "31/18x 22/9x" (ms/slowdown) or "none", for tables
The probe only sees stalls below the guest. In-guest contention (more runnable tasks than
vCPUs: other engineers' jobs run unlocked) delays queries too and is not a stall, so HostProbe
also reports the share of its block's wall time during which some task waited for a CPU
(/proc/pressure/cpu "some"; our own client and server count too): read a clean-slice p99
together with it. The probe only watches: nothing here asserts on timing.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Generic, TypeVar

SLICES = 16  # fixed-rate runs per setup (8 s, 40,000 queries at 5,000 q/s in all)
SLICE_S = 0.5  # host stalls come every 1-2.5 s (module docstring): 40-70 % of slices are clean
PROBE_PERIOD_S = 0.002  # host-stall probe: one ~20 µs unit of work every 2 ms (~1 % of a CPU)
PROBE_WARMUP_S = 0.2  # the probe's median needs some calm samples first
PROBE_EXIT_S = 30.0  # the probe prints and exits as soon as its stdin closes; bounds a hang
STALL_FACTOR = 4.0  # a probe unit taking > 4x its median thread CPU time is stalled ...
STALL_MIN_UNITS = 3  # ... and 3 such units in a row (>= 4 ms) make a stall window
STALL_DRAIN_S = 0.05  # a slice starting this soon after a stall may still drain its backlog
PSI_CPU = Path("/proc/pressure/cpu")  # kernel pressure-stall information (CONFIG_PSI)

HOST_PROBE_SCRIPT = r"""
import selectors, sys, time
# Host-stall probe (see the module docstring): a fixed unit of pure Python work every
# PERIOD seconds; prints "monotonic_start thread_cpu_s" per unit when stdin closes.
# Thread CPU time only grows while the guest thinks this thread runs, so in-guest preemption
# does not inflate it; time taken below the guest does.
period = float(sys.argv[1])
tt, mono = time.thread_time, time.monotonic
sel = selectors.DefaultSelector()
sel.register(sys.stdin, selectors.EVENT_READ)
samples = []

def unit():
    x = 0
    for i in range(400):
        x += i
    return x

while not sel.select(period):
    t = mono()
    c = tt()
    unit()
    samples.append(f"{t:.6f} {tt() - c:.9f}")
print("\n".join(samples), flush=True)
"""

T = TypeVar("T")


@dataclass
class Stall:
    start: float  # time.monotonic()
    end: float
    slowdown: float  # worst probe unit / median unit


@dataclass
class TimedSlice(Generic[T]):
    start: float  # time.monotonic() before the slice's run
    end: float  # ... and after it
    value: T


def stall_windows(samples: list[tuple[float, float]]) -> list[Stall]:
    """Host stalls in probe samples (monotonic start, thread CPU s): runs of at least
    STALL_MIN_UNITS units slower than STALL_FACTOR x the median (a unit slower than half
    that factor in between does not end a run)."""
    if not samples:
        return []
    median = sorted(c for _, c in samples)[len(samples) // 2]
    out: list[Stall] = []
    i = 0
    while i < len(samples):
        if samples[i][1] <= STALL_FACTOR * median:
            i += 1
            continue
        j = i
        while j < len(samples) and samples[j][1] > STALL_FACTOR * median / 2:
            j += 1
        if j - i >= STALL_MIN_UNITS:
            worst = max(c for _, c in samples[i:j])
            out.append(Stall(samples[i][0], samples[j - 1][0] + samples[j - 1][1],
                             worst / median if median > 0 else 0.0))
        i = j
    return out


def test_stall_windows_finds_runs_of_slow_units() -> None:
    """The probe's classifier (pure): isolated slow units are noise, runs are stalls.
    (Collected through test_dns_bench.py, which imports it: pytest only collects test_*.py.)"""
    fast = [(i * 0.002, 20e-6) for i in range(100)]
    samples = list(fast)
    samples[10] = (samples[10][0], 200e-6)  # one slow unit: not a stall
    for k in range(40, 46):
        samples[k] = (samples[k][0], 400e-6 if k != 43 else 50e-6)  # 43: slow-ish, joins
    found = stall_windows(samples)
    assert len(found) == 1
    assert found[0].start == samples[40][0] and found[0].slowdown == 20.0
    assert stall_windows(fast) == [] and stall_windows([]) == []


def describe(stalls: list[Stall]) -> str:
    """Stalls as `duration ms/slowdown` cells, e.g. "31/18x 22/9x"; "none" without any."""
    return " ".join(f"{(x.end - x.start) * 1e3:.0f}/{x.slowdown:.0f}x" for x in stalls) or "none"


def timed_slices(n: int, run: Callable[[], T]) -> list[TimedSlice[T]]:
    """`run()` n times in a row, each with its monotonic start and end."""
    spans: list[TimedSlice[T]] = []
    for _ in range(n):
        t0 = time.monotonic()
        value = run()
        spans.append(TimedSlice(t0, time.monotonic(), value))
    return spans


def cpu_some_us() -> int | None:
    """Total µs during which some runnable task waited for a CPU, since boot (PSI); None
    where the kernel has no PSI."""
    try:
        some = PSI_CPU.read_text(encoding="ascii").splitlines()[0].split()
    except OSError:
        return None
    return int(dict(f.split("=") for f in some[1:])["total"])


class HostProbe:
    """The probe process for the duration of a `with` block (stopped and reaped on exit,
    also after an error); once the block has ended, `stalls` holds the stall windows it saw
    and `cpu_wait_pct` the in-guest CPU contention (module docstring)."""

    def __init__(self) -> None:
        self.stalls: list[Stall] = []
        self.cpu_wait_pct: float | None = None
        self._proc: subprocess.Popen[str] | None = None
        self._psi0: tuple[float, int | None] = (0.0, None)

    def __enter__(self) -> HostProbe:
        self._proc = subprocess.Popen(
            [sys.executable, "-c", HOST_PROBE_SCRIPT, str(PROBE_PERIOD_S)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        time.sleep(PROBE_WARMUP_S)
        self._psi0 = (time.monotonic(), cpu_some_us())
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        t0, some0 = self._psi0
        some1 = cpu_some_us()
        if some0 is not None and some1 is not None:
            self.cpu_wait_pct = (some1 - some0) / 1e4 / max(time.monotonic() - t0, 1e-9)
        try:
            out, _ = proc.communicate(timeout=PROBE_EXIT_S)  # closing stdin stops it
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
        samples = [(float(t), float(c)) for t, c in (line.split() for line in out.splitlines())]
        self.stalls = stall_windows(samples)

    def touched(self, start: float, end: float) -> bool:
        """Whether a stall (or the backlog it leaves, STALL_DRAIN_S) overlaps [start, end]."""
        return any(st.start <= end and st.end + STALL_DRAIN_S >= start for st in self.stalls)

    def clean(self, spans: list[TimedSlice[T]]) -> list[TimedSlice[T]]:
        """The spans no host stall touched."""
        return [s for s in spans if not self.touched(s.start, s.end)]
