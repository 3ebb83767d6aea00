"""Helpers of tests/bench/test_sandbox_bench.py: run wrk/iperf3/dnsperf inside the sandbox
and parse what they print; CPU accounting; table printing; JSON output.

Contract:
    wrk(sb, pod, url, conns, seconds, cpu_pids) -> WrkRun     (wrk -t1 --latency inside `pod`)
    dnsperf(sb, pod, server, datafile, seconds, qps=None, cpu_pids) -> DnsRun  (dnsperf -v)
    dnsperf_sliced(sb, pod, server, datafile, label, outstanding=, qps=, cpu_pids) -> DnsRun
        fixed rate as hoststall.SLICES short runs under the host-stall probe; raw and
        clean-slice (no host stall) p50/p99
    iperf3(sb, client, server_pod, seconds) -> IperfRun
    cpu_user_sys(pid) -> (user_s, sys_s)     of a live process (all threads), /proc/PID/stat
    cpu_cell(cpu, name) -> "total (user+sys)" µs per item, for tables
    table(title, header, rows) -> str        a Markdown table (what goes into the notes)
    write_json(key, doc)                     merges {key: doc} into $L7GATE_BENCH_OUT, if set
Parsers (`parse_wrk`, `parse_dnsperf`) are pure so that a changed tool output fails loudly
(KeyError/ValueError) instead of producing zeros. Nothing here asserts on timing.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hoststall import SLICE_S, SLICES, HostProbe, Stall, timed_slices

from agent.sandbox.api import Sandbox

TOOL_SLACK_S = 30  # a wrk/dnsperf/iperf3 run ends by itself; this bounds a hung one
SERVER_READY_TIMEOUT_S = 10.0  # iperf3 -s / haproxy bind within a fraction of a second
POLL_S = 0.05
DNSPERF_TIMEOUT_S = 2  # a query unanswered for 2 s counts as lost (dnsperf -t)

_UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3}
_WRK_PCT = re.compile(r"^\s*(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", re.M)


@dataclass
class WrkRun:
    label: str
    conns: int
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int  # socket errors (connect/read/write/timeout) + non-2xx/3xx responses
    cpu_us_per_req: dict[str, float] = field(default_factory=dict)


@dataclass
class DnsRun:
    label: str
    load: str
    qps: float
    p50_ms: float
    p99_ms: float
    completed: int
    lost: int
    cpu_us_per_q: dict[str, float] = field(default_factory=dict)
    # Sliced fixed-rate runs only (dnsperf_sliced): the same figures over the slices no host
    # stall touched, how many those were, and the stalls the probe saw.
    p50_clean_ms: float | None = None
    p99_clean_ms: float | None = None
    clean_slices: int = 0
    slices: int = 0
    stalls: list[Stall] = field(default_factory=list)
    slice_p99_ms: list[float] = field(default_factory=list)  # per slice, in run order
    slice_clean: list[bool] = field(default_factory=list)  # ... and whether no stall touched it
    cpu_wait_pct: float | None = None  # in-guest CPU contention over the slices (hoststall)


@dataclass
class IperfRun:
    label: str
    gbit_s: float
    bytes: int
    retransmits: int


def cpu_user_sys(pid: int) -> tuple[float, float]:
    """(utime, stime) of `pid` (all its threads) in seconds, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def cpu_s(pid: int) -> float:
    """utime+stime of `pid` (all its threads) in seconds."""
    return sum(cpu_user_sys(pid))


def _cpu_all(pids: dict[str, int]) -> dict[str, tuple[float, float]]:
    return {name: cpu_user_sys(pid) for name, pid in pids.items()}


def _per_item_us(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]],
                 items: int) -> dict[str, float]:
    """µs per request/query for each process: NAME (user+sys), `NAME user`, `NAME sys`."""
    out: dict[str, float] = {}
    if items <= 0:
        return out
    for name, (u0, s0) in before.items():
        u1, s1 = after[name]
        out[name] = (u1 - u0 + s1 - s0) * 1e6 / items
        out[f"{name} user"] = (u1 - u0) * 1e6 / items
        out[f"{name} sys"] = (s1 - s0) * 1e6 / items
    return out


def cpu_cell(cpu: dict[str, float], name: str) -> str:
    """`total (user+sys)` for a table cell, or `-` when that process was not measured."""
    if name not in cpu:
        return "-"
    return f"{cpu[name]:.1f} ({cpu[name + ' user']:.0f}+{cpu[name + ' sys']:.0f})"


def parse_wrk(out: str) -> tuple[int, float, float, float, int]:
    """(requests, req/s, p50 ms, p99 ms, errors) from `wrk --latency` output."""
    pct = {m.group(1): float(m.group(2)) * _UNIT_MS[m.group(3)]
           for m in _WRK_PCT.finditer(out)}
    req = re.search(r"^\s*(\d+) requests in", out, re.M)
    rps = re.search(r"^Requests/sec:\s*([\d.]+)", out, re.M)
    if req is None or rps is None or "50" not in pct or "99" not in pct:
        raise ValueError(f"unexpected wrk output:\n{out}")
    errors = 0
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if sock:
        errors += sum(int(g) for g in sock.groups())
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        errors += int(non2xx.group(1))
    return int(req.group(1)), float(rps.group(1)), pct["50"], pct["99"], errors


def wrk(sb: Sandbox, pod: str, url: str, conns: int, seconds: int, label: str,
        cpu_pids: dict[str, int] | None = None, script: Path | None = None) -> WrkRun:
    """One wrk run inside `pod`; `script` is a wrk Lua script (e.g. VARYING_REQUEST)."""
    pids = cpu_pids or {}
    argv = ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency", url]
    if script is not None:
        argv[1:1] = ["-s", str(script)]
    before = _cpu_all(pids)
    res = sb.exec(pod, argv, timeout=seconds + TOOL_SLACK_S)
    after = _cpu_all(pids)
    if res.returncode != 0:
        raise RuntimeError(f"wrk failed ({res.returncode}): {res.stderr}{res.stdout}")
    n, rps, p50, p99, errors = parse_wrk(res.stdout)
    return WrkRun(label, conns, n, rps, p50, p99, errors, _per_item_us(before, after, n))


def parse_dnsperf(out: str) -> tuple[float, int, int, list[float]]:
    """(queries/s, completed, lost, sorted per-query latencies in ms) from `dnsperf -v`."""
    lat = sorted(float(line.split()[-1]) * 1e3 for line in out.splitlines()
                 if line.startswith("> "))
    stats = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines())}
    completed = int(stats["Queries completed"].split()[0])
    lost = int(stats["Queries lost"].split()[0])
    return float(stats["Queries per second"]), completed, lost, lat


def percentile(sorted_values: Sequence[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(p * len(sorted_values)))]


def _dnsperf_once(sb: Sandbox, pod: str, server: str, datafile: Path, seconds: float,
                  outstanding: int, qps: int | None,
                  port: int = 53) -> tuple[float, int, int, list[float]]:
    """One `dnsperf -v` run inside `pod`: (queries/s, completed, lost, sorted latencies ms)."""
    argv = ["dnsperf", "-s", server, "-p", str(port), "-d", str(datafile), "-l", str(seconds),
            "-c", "1", "-q", str(outstanding), "-t", str(DNSPERF_TIMEOUT_S), "-v"]
    if qps is not None:
        argv += ["-Q", str(qps)]
    res = sb.exec(pod, argv, timeout=seconds + TOOL_SLACK_S)
    if res.returncode != 0:
        raise RuntimeError(f"dnsperf failed ({res.returncode}): {res.stderr[-2000:]}")
    return parse_dnsperf(res.stdout)


def dnsperf(sb: Sandbox, pod: str, server: str, datafile: Path, seconds: int, label: str,
            *, outstanding: int, qps: int | None = None,
            cpu_pids: dict[str, int] | None = None, port: int = 53) -> DnsRun:
    pids = cpu_pids or {}
    before = _cpu_all(pids)
    qps_val, completed, lost, lat = _dnsperf_once(sb, pod, server, datafile, seconds,
                                                  outstanding, qps, port)
    after = _cpu_all(pids)
    cpu = _per_item_us(before, after, completed)
    load = f"{qps}/s fixed" if qps is not None else f"max, {outstanding} outstanding"
    return DnsRun(label, load, qps_val, percentile(lat, 0.50), percentile(lat, 0.99),
                  completed, lost, cpu)


def dnsperf_sliced(sb: Sandbox, pod: str, server: str, datafile: Path, label: str,
                   *, outstanding: int, qps: int,
                   cpu_pids: dict[str, int] | None = None, port: int = 53) -> DnsRun:
    """`qps` as hoststall.SLICES dnsperf runs of hoststall.SLICE_S s under the host-stall probe
    (in the root namespace: host stalls hit the whole VM). p50/p99 over all slices (raw) and
    over the clean slices; q/s is the mean of the slices'; CPU µs/query over all slices."""
    pids = cpu_pids or {}
    with HostProbe() as probe:
        before = _cpu_all(pids)
        spans = timed_slices(SLICES, lambda: _dnsperf_once(sb, pod, server, datafile, SLICE_S,
                                                           outstanding, qps, port))
        after = _cpu_all(pids)
    completed = sum(s.value[1] for s in spans)
    every = sorted(x for s in spans for x in s.value[3])
    clean_spans = probe.clean(spans)
    clean = sorted(x for s in clean_spans for x in s.value[3])
    return DnsRun(label, f"{qps}/s fixed, {SLICES}x{SLICE_S:g} s",
                  sum(s.value[0] for s in spans) / len(spans),
                  percentile(every, 0.50), percentile(every, 0.99), completed,
                  sum(s.value[2] for s in spans), _per_item_us(before, after, completed),
                  percentile(clean, 0.50) if clean else None,
                  percentile(clean, 0.99) if clean else None,
                  len(clean_spans), len(spans), probe.stalls,
                  [percentile(s.value[3], 0.99) for s in spans],
                  [not probe.touched(s.start, s.end) for s in spans], probe.cpu_wait_pct)


def wait_listening(sb: Sandbox, target: str, port: int, proc: subprocess.Popen[Any]) -> None:
    """Wait until something in `target` listens on TCP `port` (ss inside that netns)."""
    deadline = time.monotonic() + SERVER_READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server in {target} exited with {proc.returncode}")
        res = sb.exec(target, ["ss", "-Htln", f"sport = :{port}"], timeout=10)
        if res.stdout.strip():
            return
        time.sleep(POLL_S)
    raise RuntimeError(f"nothing listens on {target}:{port} after {SERVER_READY_TIMEOUT_S}s")


def stop_popen(proc: subprocess.Popen[Any]) -> None:
    """Terminate a process this test started (by its Popen), kill it after a bound."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


def iperf3(sb: Sandbox, client: str, server_pod: str, seconds: int, label: str) -> IperfRun:
    """One bounded iperf3 TCP run client -> server pod (the server serves exactly one test)."""
    ip = sb.pod_ip(server_pod)
    cmd, env = sb.command(server_pod, ["iperf3", "-s", "-1", "-B", ip, "-p", "5201"])
    srv = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    try:
        wait_listening(sb, server_pod, 5201, srv)
        res = sb.exec(client, ["iperf3", "-c", ip, "-p", "5201", "-t", str(seconds), "-J"],
                      timeout=seconds + TOOL_SLACK_S)
        if res.returncode != 0:
            raise RuntimeError(f"iperf3 failed ({res.returncode}): {res.stdout[-2000:]}")
        end = json.loads(res.stdout)["end"]
        return IperfRun(label, end["sum_received"]["bits_per_second"] / 1e9,
                        int(end["sum_received"]["bytes"]),
                        int(end["sum_sent"].get("retransmits", 0)))
    finally:
        stop_popen(srv)


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(v: object) -> str:
        if isinstance(v, float):
            return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}" if v == v else "-"
        return str(v)
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |",
             "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def to_jsonable(obj: Any) -> Any:
    if isinstance(obj, list):
        return [to_jsonable(o) for o in obj]
    if hasattr(obj, "__dataclass_fields__"):
        return asdict(obj)
    return obj


def write_json(key: str, doc: dict[str, Any]) -> None:
    """Merge {key: doc} into the JSON object at $L7GATE_BENCH_OUT (if the variable is set)."""
    path = os.environ.get("L7GATE_BENCH_OUT")
    if not path:
        return
    out = Path(path)
    current: dict[str, Any] = {}
    if out.exists():
        with contextlib.suppress(ValueError):
            loaded = json.loads(out.read_text(encoding="utf-8"))
            if isinstance(loaded, dict):
                current = loaded
    current[key] = {k: to_jsonable(v) for k, v in doc.items()}
    out.write_text(json.dumps(current, indent=2) + "\n", encoding="utf-8")
