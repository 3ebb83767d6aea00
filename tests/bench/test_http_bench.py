"""HTTP proxy benchmark on loopback (make bench; never in make test). Asserts nothing on time.

Setups, all one worker/thread, same rule (`GET /api/.*`, 403 otherwise), keep-alive upstream:
direct (origin only), our proxy with httptools, our proxy with h11, haproxy (`nbthread 1`,
`http-reuse always`). The origin is a second haproxy answering a 64-byte body itself.
`wrk -t1` at c=1/16/64 for BENCH_SECONDS each; prints req/s, p50/p99 and ratios to haproxy
and to direct. Everything listens on 127.0.0.1 and every process is ours (kept Popen objects).
Every request head differs (varying_request.lua: an x-request-id each, as traced traffic
has), so the proxy's per-connection memo of a repeated head never answers for it.
Note: wrk, origin and proxy share this machine's cores, so absolute numbers are low; ratios
are the figure to compare with perf-anchors.md B1.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.bench
BENCH_SECONDS = int(os.environ.get("L7GATE_BENCH_SECONDS", "5"))
CONCURRENCY = (1, 16, 64)
BODY = "x" * 64
START_TIMEOUT_S = 10.0

PROXY_SCRIPT = """
import asyncio, sys
from policy.model import FullRegex
from policy.types import Decision, DropReason, Verdict
from proxy.http.server import HttpProxyServer, loop_factory
port, oport, codec = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
rule = FullRegex(r"/api/.*")  # the agent's RE2 matcher (re2.fullmatch costs ~6 us more)
ALLOW = Verdict(Decision.FORWARDED, "bench")
DENY = Verdict(Decision.DENIED, "bench-deny", DropReason.POLICY_DENIED)
def decide(conn, meta):
    return ALLOW if meta.method == "GET" and rule.fullmatch(meta.path) else DENY
async def main():
    p = HttpProxyServer(("127.0.0.1", port), decide, lambda f: None,
                        origdst=lambda s: ("127.0.0.1", oport), codec=codec)
    await p.start()
    await asyncio.Event().wait()
asyncio.Runner(loop_factory=loop_factory).run(main())
"""

ORIGIN_CFG = """
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
frontend origin
    bind 127.0.0.1:{oport}
    http-request return status 200 content-type text/plain string "{body}"
"""

HAPROXY_CFG = """
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
frontend px
    bind 127.0.0.1:{port}
    acl is_get method GET
    acl api path_reg ^/api/.*$
    http-request deny deny_status 403 unless is_get api
    default_backend origin
backend origin
    http-reuse always
    server o 127.0.0.1:{oport}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


@contextlib.contextmanager
def process(cmd: list[str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def to_ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    assert m is not None, text
    return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]


def cpu_s(pid: int) -> tuple[float, float]:
    """(utime, stime) of a process, from /proc (clock ticks -> seconds)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tck = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tck, int(fields[12]) / tck


VARYING_REQUEST = Path(__file__).resolve().parent / "varying_request.lua"
# req/s, p50 ms, p99 ms, proxy CPU us per request, of which user us per request
Cell = tuple[float, float, float, float, float]


def wrk(port: int, conns: int, pid: int | None = None) -> Cell:
    cpu0 = cpu_s(pid) if pid else (0.0, 0.0)
    out = subprocess.run(
        ["wrk", "-t1", "-s", str(VARYING_REQUEST), f"-c{conns}", f"-d{BENCH_SECONDS}s",
         "--latency", f"http://127.0.0.1:{port}/api/x"],
        check=True, capture_output=True, text=True, timeout=BENCH_SECONDS + 30).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = to_ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = to_ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    assert "Non-2xx" not in out, out  # every request must have been forwarded and answered
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    cpu1 = cpu_s(pid) if pid else (0.0, 0.0)
    user_us = (cpu1[0] - cpu0[0]) * 1e6 / total
    return rps, p50, p99, user_us + (cpu1[1] - cpu0[1]) * 1e6 / total, user_us


@pytest.mark.skipif(shutil.which("wrk") is None or shutil.which("haproxy") is None,
                    reason="needs wrk and haproxy (scripts/setup.sh installs them)")
def test_http_proxy_bench(tmp_path: Path) -> None:
    oport = free_port()
    (tmp_path / "origin.cfg").write_text(ORIGIN_CFG.format(oport=oport, body=BODY))
    results: dict[str, dict[int, Cell]] = {}
    with process(["haproxy", "-db", "-f", str(tmp_path / "origin.cfg")], oport):
        results["direct"] = {c: wrk(oport, c) for c in CONCURRENCY}
        for codec in ("httptools", "h11"):
            port = free_port()
            cmd = [sys.executable, "-c", PROXY_SCRIPT, str(port), str(oport), codec]
            with process(cmd, port) as proc:
                results[f"proxy({codec})"] = {c: wrk(port, c, proc.pid) for c in CONCURRENCY}
        port = free_port()
        (tmp_path / "haproxy.cfg").write_text(HAPROXY_CFG.format(port=port, oport=oport))
        with process(["haproxy", "-db", "-f", str(tmp_path / "haproxy.cfg")], port) as proc:
            results["haproxy"] = {c: wrk(port, c, proc.pid) for c in CONCURRENCY}
    print(f"\nHTTP proxy bench, loopback, wrk -t1, {BENCH_SECONDS}s per cell, 64-byte body")
    print("(ratios: req/s vs haproxy and vs direct; cpu = proxy process CPU us per request)")
    print(f"{'setup':17s}" + "".join(f"| c={c:<3d} req/s  p50/p99 ms    hap   dir  cpu "
                                      for c in CONCURRENCY))
    for name, cells in results.items():
        row = f"{name:17s}"
        for c in CONCURRENCY:
            rps, p50, p99, cpu, _ = cells[c]
            row += (f"| {rps:8,.0f} {p50:6.3f}/{p99:6.3f} {rps / results['haproxy'][c][0]:5.2f}"
                    f" {rps / results['direct'][c][0]:5.2f} {cpu:4.0f} ")
        print(row)
    print("proxy CPU us/request user+sys: " + "; ".join(
        f"{name} " + " ".join(f"c{c}={cells[c][4]:.0f}+{cells[c][3] - cells[c][4]:.0f}"
                              for c in CONCURRENCY)
        for name, cells in results.items() if name != "direct"))
    assert all(cells[c][0] > 0 for cells in results.values() for c in CONCURRENCY)
