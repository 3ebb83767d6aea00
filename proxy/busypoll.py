"""Adaptive busy polling: the event loop keeps polling (epoll with a zero timeout) for a
short, self-tuning window after I/O instead of going to sleep at once.

Why: on a virtual machine every sleep of the loop costs a halt of the vCPU and every wake
an inter-processor interrupt through the hypervisor. At one connection a proxied request
is four such wake-ups (client -> proxy -> origin -> proxy -> client), and the proxy's two
are on the critical path. Measured in the sandbox on these machines (2 vCPUs, nested
virtualisation, the guest's own halt polling off: `haltpoll.guest_halt_poll_ns=0` on the
kernel command line), wrk -c1 through the agent, 4 alternated pairs in one sandbox:
sleeping 2,125-3,423 req/s, p50 0.272-0.392 ms; polling 4,084-5,235 req/s, p50
0.174-0.224 ms (direct, no proxy: ~0.19 ms); DNS at 5,000 q/s, p50 0.392-0.447 ->
0.275-0.308 ms. haproxy has the same switch (`busy-polling`, off by default, "especially
... when running inside virtual machines"); the kernel's guest halt polling and KVM's
`halt_poll_ns` do it below us with the same self-tuning window, which this copies.

Contract: `BusyPoll(loop, max_us)`; the HTTP proxy's protocols call `kick()` on every read
(inlined: two attribute operations while polling), the DNS proxy on every readiness
event. After a kick the loop polls until `window` passes with no kick, then sleeps as
usual. The window adapts like KVM's halt polling (virt/kvm/kvm_main.c,
`grow_halt_poll_ns` / `shrink_halt_poll_ns`): when the loop slept
and the next kick came within `max_us` of the last activity (polling longer would have
caught it), the window doubles (from GROW_START_US) up to `max_us`; when it came later
(polling would have been wasted), the window halves, and below GROW_START_US it is 0
(no polling until short gaps come back). So under sparse traffic or a slow origin the
loop polls little or not at all, and under load it never sleeps anyway: the poll costs
one callback per loop iteration there. A poll that finds nothing calls `sched_yield`, so a
task waiting for this CPU (on a small node: the origin or the client) runs first. At c=64
in the sandbox, alternated pairs against sleeping gave req/s +6, +4, -7, +11 % without the
yield and +4, +8, +21, -9 % with it: no difference above the noise either way, so the yield
stays for what it guarantees. `max_us` 0 disables it (kick does nothing). `stats()` gives
the window, the hits (poll steps that found I/O), the misses (windows that ran out) and
the seconds polled in windows that ran out (pure cost).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

DEFAULT_MAX_US: Final = 200  # KVM's default halt_poll_ns (200,000 ns on x86)
GROW_START_US: Final = 10  # KVM's halt_poll_ns_grow_start (10,000 ns)
CGROUP_ROOT = Path("/sys/fs/cgroup")  # cgroup v2's mount
PROC_SELF_CGROUP = Path("/proc/self/cgroup")


class BusyPoll:
    def __init__(self, loop: asyncio.AbstractEventLoop, max_us: int = DEFAULT_MAX_US,
                 clock: Callable[[], float] = time.perf_counter,
                 yield_cpu: Callable[[], None] = os.sched_yield) -> None:
        if max_us < 0:
            raise ValueError(f"busy poll max_us must be >= 0, got {max_us}")
        self.loop = loop
        self.max_s = max_us / 1e6
        self.grow_start_s = min(GROW_START_US / 1e6, self.max_s)
        self.window_s = 0.0  # grows from the first short gap
        self.enabled = max_us > 0
        self.clock = clock
        self.yield_cpu = yield_cpu
        # read by the protocols (kick): True while the loop polls
        self.polling = False
        self.seen = False  # a kick since the last poll step
        self.last_s = 0.0  # when activity was last seen
        self.deadline_s = 0.0
        self.hits = 0
        self.misses = 0
        self.wasted_s = 0.0

    def kick(self) -> None:
        """I/O happened on the loop: keep polling, or start (the loop had slept)."""
        if self.polling:
            self.seen = True
        elif self.enabled:
            self._woke()

    def _woke(self) -> None:
        now = self.clock()
        gap = now - self.last_s
        if gap <= self.max_s:  # a longer window would have caught it
            if self.window_s < self.max_s:
                self.window_s = min(self.max_s, max(self.grow_start_s, self.window_s * 2))
        elif self.window_s > 0.0:  # polling for it would have been wasted
            self.window_s /= 2
            if self.window_s < self.grow_start_s:
                self.window_s = 0.0
        self.last_s = now
        if self.window_s > 0.0:
            self.polling = True
            self.deadline_s = now + self.window_s
            self.loop.call_soon(self._step)

    def _step(self) -> None:
        """One poll: runs once per loop iteration while polling."""
        if not self.polling:  # stop() ran
            return
        now = self.clock()
        if self.seen:
            self.seen = False
            self.hits += 1
            self.last_s = now
            self.deadline_s = now + self.window_s
        elif now >= self.deadline_s:
            self.polling = False
            self.misses += 1
            self.wasted_s += now - self.last_s
            return
        else:  # an idle poll: let a task waiting for this CPU (the origin, the client) run
            self.yield_cpu()
        self.loop.call_soon(self._step)

    def stop(self) -> None:
        """No more polling: the scheduled poll step ends it, later kicks do nothing."""
        self.enabled = False
        self.polling = False

    def stats(self) -> dict[str, float | int | bool]:
        return {"enabled": self.enabled, "max_us": round(self.max_s * 1e6),
                "window_us": round(self.window_s * 1e6, 1), "hits": self.hits,
                "misses": self.misses, "wasted_seconds": round(self.wasted_s, 6)}


def cpu_quota(proc_cgroup: Path = PROC_SELF_CGROUP,
              root: Path = CGROUP_ROOT) -> tuple[Path, str] | None:
    """The first CPU quota on the way from our own cgroup up to its hierarchy's root, as
    (file, quota); None when there is none. cgroup v2 ("0::/PATH" in /proc/self/cgroup):
    ROOT/PATH/cpu.max other than "max"; v1 (a line whose controllers include cpu):
    ROOT/cpu/PATH/cpu.cfs_quota_us other than -1. In a container with its own cgroup
    namespace PATH is "/" and the root's file is the container's; on a host it is the
    service's cgroup, whose parents may hold the quota."""
    try:
        lines = proc_cgroup.read_text(encoding="ascii").splitlines()
    except OSError:
        return None
    for line in lines:
        _hid, controllers, rel = line.split(":", 2)
        if controllers == "":
            top, name, unlimited = root, "cpu.max", "max"
        elif "cpu" in controllers.split(","):
            top, name, unlimited = root / "cpu", "cpu.cfs_quota_us", "-1"
        else:
            continue
        d = top / rel.strip().lstrip("/")
        while True:
            try:
                quota = (d / name).read_text(encoding="ascii").split()[0]
            except (OSError, IndexError):
                quota = unlimited
            if quota != unlimited:
                return d / name, quota
            if d == top or top not in d.parents:
                break
            d = d.parent
    return None


def default_max_us(cpus: int | None = None,
                   find_quota: Callable[[], tuple[Path, str] | None] = cpu_quota,
                   ) -> tuple[int, str]:
    """The window for `--busy-poll-us auto`, with why. Off (0) where polling takes CPU that
    others need: a single CPU (the origin or the client could not run while we poll) or a
    CPU quota on our cgroup (polling would spend it and get the agent throttled)."""
    if cpus is None:
        cpus = len(os.sched_getaffinity(0))
    if cpus < 2:
        return 0, f"{cpus} CPU available to the agent"
    found = find_quota()
    if found is not None:
        return 0, f"the agent's cgroup has a CPU quota ({found[0]}: {found[1]})"
    return DEFAULT_MAX_US, f"{DEFAULT_MAX_US} us ({cpus} CPUs, no CPU quota)"
