"""proxy/busypoll.py: the event loop's adaptive polling window (KVM halt-polling's rule),
the polling on a real uvloop, the HTTP proxy kicking it, and the agent's setting."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.cmd_agent import _config, busy_poll_us
from policy.errors import ConfigError
from proxy.busypoll import DEFAULT_MAX_US, GROW_START_US, BusyPoll, cpu_quota, default_max_us
from proxy.http.server import HttpProxyServer, loop_factory

from .harness import api_get_only
from .origin import Origin

US = 1e-6


class FakeLoop:
    """What BusyPoll uses of a loop: call_soon. Steps are run by the test."""

    def __init__(self) -> None:
        self.soon: list[Callable[[], None]] = []

    def call_soon(self, cb: Callable[[], None]) -> None:
        self.soon.append(cb)

    def step(self) -> None:
        callbacks, self.soon = self.soon, []
        for cb in callbacks:
            cb()


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t

    def advance_us(self, us: float) -> None:
        self.t += us * US


YIELDS: list[float] = []


def _poll(max_us: int = DEFAULT_MAX_US) -> tuple[BusyPoll, FakeLoop, Clock]:
    loop, clock = FakeLoop(), Clock()
    YIELDS.clear()
    return (BusyPoll(loop, max_us, clock=clock,  # type: ignore[arg-type]
                     yield_cpu=lambda: YIELDS.append(clock.t)), loop, clock)


def _idle_until_out(bp: BusyPoll, loop: FakeLoop, clock: Clock, step_us: float = 1) -> float:
    """Run poll steps without I/O until the window runs out; the time it polled (us)."""
    start = clock.t
    while bp.polling:
        clock.advance_us(step_us)
        loop.step()
    return (clock.t - start) / US


def test_first_kick_does_not_poll_and_a_short_gap_starts_at_grow_start() -> None:
    bp, loop, clock = _poll()
    bp.kick()  # nothing was seen before: no evidence that polling would pay
    assert not bp.polling and bp.window_s == 0 and loop.soon == []
    clock.advance_us(50)
    bp.kick()  # 50 us after the last activity: a poll of 50 us would have caught it
    assert bp.polling and bp.window_s == pytest.approx(GROW_START_US * US)
    assert loop.soon == [bp._step]


def _gaps(bp: BusyPoll, loop: FakeLoop, clock: Clock, gap_us: float, n: int) -> list[int]:
    """n rounds of: I/O `gap_us` after the previous I/O; the window (us) after each, and
    whether the I/O came while the loop polled ('hit') or after it slept."""
    out = []
    for _ in range(n):
        polled = 0.0
        while bp.polling and polled + 1 < gap_us:
            clock.advance_us(1)
            polled += 1
            loop.step()
        clock.advance_us(gap_us - polled)
        if bp.polling:
            bp.seen = True
            loop.step()
            out.append(-round(bp.window_s / US))  # negative: caught while polling
        else:
            bp.kick()
            out.append(round(bp.window_s / US))
    return out


def test_window_doubles_until_it_covers_the_gaps_capped_at_max() -> None:
    bp, loop, clock = _poll()
    bp.kick()
    # gaps of 150 us: the window doubles until it is longer than the gap, then I/O comes
    # while the loop polls (negative: a hit) and it stays there
    assert _gaps(bp, loop, clock, 150, 7) == [10, 20, 40, 80, 160, -160, -160]
    assert bp.hits == 2
    bp2, loop2, clock2 = _poll()
    bp2.kick()
    # gaps of 199 us: capped at max (200); 400 us gaps then halve it (polling is wasted)
    assert _gaps(bp2, loop2, clock2, 199, 7) == [10, 20, 40, 80, 160, 200, -200]
    assert _gaps(bp2, loop2, clock2, 400, 3) == [100, 50, 25]


def test_io_while_polling_extends_the_window_and_a_quiet_window_ends_it() -> None:
    bp, loop, clock = _poll()
    bp.window_s = 200 * US  # as grown by earlier short gaps
    bp.last_s = clock.t
    clock.advance_us(30)
    bp.kick()
    assert bp.polling
    for _ in range(5):  # I/O every 60 us: each poll step that saw it is a hit
        clock.advance_us(60)
        bp.seen = True  # what the protocols' inlined kick does while polling
        loop.step()
        assert bp.polling and loop.soon == [bp._step]
    assert bp.hits == 5 and bp.misses == 0
    assert YIELDS == []  # a poll that found I/O keeps the CPU
    polled = _idle_until_out(bp, loop, clock)
    assert 200 <= polled <= 201  # the window after the last I/O, then sleep
    assert not bp.polling and loop.soon == [] and bp.misses == 1
    assert bp.wasted_s == pytest.approx(polled * US)
    # every idle poll but the last (which ends the window) offered the CPU to waiting tasks
    assert len(YIELDS) == round(polled) - 1


def test_long_gaps_halve_the_window_down_to_zero() -> None:
    bp, loop, clock = _poll()
    bp.window_s = 200 * US
    windows = []
    for _ in range(6):
        clock.advance_us(5000)  # a slow origin: polling for it is wasted
        bp.kick()
        windows.append(round(bp.window_s / US))
        _idle_until_out(bp, loop, clock)
    assert windows == [100, 50, 25, 12, 0, 0]  # below GROW_START_US: off
    clock.advance_us(5000)
    bp.kick()
    assert not bp.polling and loop.soon == []  # no polling while gaps stay long
    clock.advance_us(40)
    bp.kick()  # short gaps are back: grow again
    assert bp.polling and bp.window_s == pytest.approx(GROW_START_US * US)


def test_zero_max_never_polls_and_negative_is_refused() -> None:
    bp, loop, clock = _poll(0)
    for _ in range(5):
        clock.advance_us(20)
        bp.kick()
    assert not bp.polling and loop.soon == [] and not bp.enabled
    assert bp.stats()["enabled"] is False
    with pytest.raises(ValueError, match=">= 0"):
        BusyPoll(FakeLoop(), -1)  # type: ignore[arg-type]


def test_stop_ends_polling_for_good() -> None:
    bp, loop, clock = _poll()
    bp.kick()
    clock.advance_us(20)
    bp.kick()
    assert bp.polling
    bp.stop()
    loop.step()  # the scheduled step finds polling off and ends the chain
    assert loop.soon == []
    clock.advance_us(20)
    bp.kick()  # and a kick changes nothing
    assert not bp.polling and loop.soon == []


def test_polls_on_a_real_loop_then_sleeps() -> None:
    """On uvloop: after a kick the loop keeps iterating (zero-timeout polls) for the window,
    then stops; the window here is 20 ms so that the iterations are countable."""
    async def main() -> tuple[int, int, int]:
        loop = asyncio.get_running_loop()
        bp = BusyPoll(loop, 20_000)
        bp.window_s = 0.02
        bp.last_s = bp.clock()
        steps = 0
        orig = bp._step

        def counted() -> None:
            nonlocal steps
            steps += 1
            orig()
        bp._step = counted  # type: ignore[method-assign]
        bp.kick()
        await asyncio.sleep(0.1)  # the window ends inside this sleep
        during = steps
        await asyncio.sleep(0.1)  # asleep: no more poll steps
        return during, steps, bp.misses

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        during, after, misses = runner.run(main())
    # 20 ms of polling: hundreds of loop iterations (each an epoll with a zero timeout)
    assert during > 100
    assert after == during and misses == 1


def test_the_http_proxy_kicks_on_client_and_upstream_reads() -> None:
    async def main() -> BusyPoll:
        loop = asyncio.get_running_loop()
        bp = BusyPoll(loop, DEFAULT_MAX_US)
        kicks: list[str] = []
        orig = bp.kick

        def kick() -> None:
            kicks.append("kick")
            orig()
        bp.kick = kick  # type: ignore[method-assign]
        origin = Origin()
        port = await origin.start()
        proxy = HttpProxyServer(("127.0.0.1", 0), api_get_only, lambda f: None,
                                origdst=lambda s: ("127.0.0.1", port), busy_poll=bp)
        await proxy.start()
        try:
            r, w = await asyncio.open_connection("127.0.0.1", proxy.port)
            for _ in range(20):
                w.write(b"GET /api/x HTTP/1.1\r\nhost: a\r\n\r\n")
                head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                await r.readexactly(length)
            w.close()
        finally:
            await proxy.close()
            await origin.close()
        bp.kicks = len(kicks)  # type: ignore[attr-defined]
        return bp

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        bp = runner.run(main())
    # 20 requests = 40 reads (client and upstream); each is a kick or, while the loop was
    # polling, a `seen` that the next poll step counted as a hit
    kicks: int = bp.kicks  # type: ignore[attr-defined]
    assert kicks >= 1 and kicks + bp.hits >= 40, (kicks, bp.stats())


def test_prometheus_shows_the_window_and_the_time_polled_for_nothing() -> None:
    from types import SimpleNamespace

    from prometheus_client import CollectorRegistry, generate_latest

    from agent.metricsrv import AgentStateCollector
    bp, _loop, _clock = _poll()
    bp.window_s, bp.wasted_s = 80 * US, 0.25
    reg = CollectorRegistry()
    agent = SimpleNamespace(http=None, fqdn=None, state=None, busy_poll=bp)
    reg.register(AgentStateCollector(agent))  # type: ignore[arg-type]
    text = generate_latest(reg).decode()
    assert f"l7gate_event_loop_busy_poll_window_seconds {80 * US!r}" in text
    assert "l7gate_event_loop_busy_poll_wasted_seconds_total 0.25" in text
    bp.stop()  # off: the window reads 0
    assert "l7gate_event_loop_busy_poll_window_seconds 0.0" in generate_latest(reg).decode()


def test_default_is_off_on_one_cpu_or_under_a_cpu_quota() -> None:
    quota = (Path("/sys/fs/cgroup/cpu.max"), "50000")
    assert default_max_us(2, lambda: None)[0] == DEFAULT_MAX_US
    us, why = default_max_us(1, lambda: None)
    assert us == 0 and "1 CPU" in why
    us, why = default_max_us(8, lambda: quota)
    assert us == 0 and "cpu.max: 50000" in why


def test_the_quota_is_looked_up_from_our_own_cgroup_upwards(tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"
    root = tmp_path / "fs"
    svc = root / "system.slice" / "l7gate.service"
    svc.mkdir(parents=True)
    (root / "cpu.max").write_text("max 100000\n")
    (svc / "cpu.max").write_text("max 100000\n")
    proc.write_text("0::/system.slice/l7gate.service\n")
    assert cpu_quota(proc, root) is None  # "max" all the way up
    (root / "system.slice" / "cpu.max").write_text("150000 100000\n")  # a parent's quota
    assert cpu_quota(proc, root) == (root / "system.slice" / "cpu.max", "150000")
    proc.write_text("0::/\n")  # a container's own namespace: the root is ours
    (root / "cpu.max").write_text("200000 100000\n")
    assert cpu_quota(proc, root) == (root / "cpu.max", "200000")
    # cgroup v1: the cpu controller's hierarchy, cfs_quota_us -1 meaning none
    v1 = root / "cpu" / "kubepods" / "pod1"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    proc.write_text("4:memory:/kubepods/pod1\n3:cpu,cpuacct:/kubepods/pod1\n0::/\n")
    (root / "cpu.max").unlink()
    assert cpu_quota(proc, root) is None
    (v1 / "cpu.cfs_quota_us").write_text("50000\n")
    assert cpu_quota(proc, root) == (v1 / "cpu.cfs_quota_us", "50000")
    assert cpu_quota(tmp_path / "absent", root) is None  # no /proc/self/cgroup


def test_setting_parses_auto_and_bounded_microseconds(tmp_path: Path) -> None:
    assert busy_poll_us("auto") == "auto" and busy_poll_us("0") == 0
    assert busy_poll_us(250) == 250
    for bad in ("-1", "10001", "fast", "1.5"):
        with pytest.raises(ValueError, match="busy_poll_us"):
            busy_poll_us(bad)
    cfg = tmp_path / "agent.yaml"
    cfg.write_text("node_name: n\nendpoints: e\npolicy_dir: p\nbusy_poll_us: lots\n")
    args = argparse.Namespace(config=str(cfg))
    with pytest.raises(ConfigError, match=f"{cfg}:0: busy_poll_us"):
        _config(args)
    cfg.write_text("node_name: n\nendpoints: e\npolicy_dir: p\nbusy-poll-us: 0\n")
    assert _config(args).busy_poll_us == 0
