"""HTTP protocol-core microbenchmark (make bench; never in make test). Asserts nothing on time.

Runs the sans-IO `HttpSession` on N keep-alive exchanges, no I/O, and prints µs per request
for each codec: a curl-like request (3 headers) answered by a haproxy-like response
(content-length, 64-byte body), the same request with a distinct X-Request-Id each time
(no two heads alike, as in traced traffic), a browser-like request (13 headers, ~750-byte
head as in perf-anchors.md B3), the same with a distinct X-Request-Id each time, and a denied
request (403 generated locally). Each exchange is one
client read and one upstream read, exactly as the server feeds them; every action is
consumed the way `_execute` would (so lazily built values are paid for). The figure is the
per-request user-space cost of the core alone; the loopback wrk bench adds the I/O.

Profile one case: `L7GATE_CORE_PROFILE=httptools:small .venv/bin/python -m pytest -q -s
-p no:cacheprovider -o addopts="" tests/bench/test_http_core_bench.py` (cProfile top 25).
"""

from __future__ import annotations

import cProfile
import os
import pstats
import time

import pytest

from observe.flow import Flow
from policy.types import Decision, DropReason, HttpRequestMeta, Verdict
from proxy.http.actions import (
    Action,
    ConnInfo,
    Emit,
    HttpProxyStats,
    SendClient,
    SendUpstream,
)
from proxy.http.codec import codec_factory
from proxy.http.limits import HttpLimits
from proxy.http.session import HttpSession

pytestmark = pytest.mark.bench

N_REQUESTS = int(os.environ.get("L7GATE_CORE_REQUESTS", "20000"))
REPEATS = 3  # best of 3: the machine is shared, the minimum is the least disturbed run
CONN = ConnInfo("10.0.1.5", 40000, "10.0.2.7", 8080)
ALLOW = Verdict(Decision.FORWARDED, "bench")
DENY = Verdict(Decision.DENIED, "bench-deny", DropReason.POLICY_DENIED)

SMALL = (b"GET /api/x HTTP/1.1\r\nHost: 10.0.2.7:8080\r\nUser-Agent: curl/8.5.0\r\n"
         b"Accept: */*\r\n\r\n")
BROWSER = (
    b"GET /api/v1/items?page=2&sort=name HTTP/1.1\r\nHost: shop.example.internal:8080\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n"
    b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
    b"Accept-Language: en-US,en;q=0.5\r\nAccept-Encoding: gzip, deflate, br\r\n"
    b"Referer: http://shop.example.internal:8080/api/v1/items?page=1\r\n"
    b"Cookie: session=3f9a1c2e7b6d4a5f8e0c1b2a3d4e5f60; theme=dark; lang=en\r\n"
    b"Cache-Control: no-cache\r\nPragma: no-cache\r\nDNT: 1\r\n"
    b"X-Request-Id: 7d3c9a2b-5e1f-4c8d-9b0a-1e2f3a4b5c6d\r\n"
    b"X-Forwarded-Proto: http\r\nSec-Fetch-Mode: navigate\r\n\r\n")
DENIED = b"GET /admin HTTP/1.1\r\nHost: 10.0.2.7:8080\r\nUser-Agent: curl/8.5.0\r\n\r\n"
RESPONSE = (b"HTTP/1.1 200 OK\r\ncontent-length: 64\r\ncontent-type: text/plain\r\n\r\n"
            + b"x" * 64)
# "small" again, but every head carries its own X-Request-Id (traced traffic): the session's
# per-connection memo of the last head (proxy/http/session_fast.py) never answers, so this
# column is the cost of a head seen for the first time; the others repeat one head.
VARYING = [SMALL[:-2] + b"X-Request-Id: %016x\r\n\r\n" % i for i in range(1024)]
# "browser" with its X-Request-Id changing (the other 13 lines repeat, as from one client):
# what the per-connection memo of checked lines (fast.plain_request_wire) is for.
BROWSER_VARYING = [BROWSER.replace(b"7d3c9a2b-5e1f-4c8d-9b0a-1e2f3a4b5c6d",
                                   b"7d3c9a2b-5e1f-4c8d-9b0a-%012x" % i) for i in range(1024)]
CASES: dict[str, list[bytes]] = {"small": [SMALL], "small-varying": VARYING,
                                 "browser": [BROWSER], "browser-varying": BROWSER_VARYING,
                                 "denied": [DENIED]}


def decide(conn: ConnInfo, meta: HttpRequestMeta) -> Verdict:
    return ALLOW if meta.method == "GET" and meta.path.startswith("/api/") else DENY


def consume(actions: list[Action], sink: list[Flow]) -> int:
    """What `_execute` does with each action, minus the syscalls."""
    n = 0
    for a in actions:
        if isinstance(a, (SendClient, SendUpstream)):
            n += len(a.data)
        elif isinstance(a, Emit):
            sink.append(a.flow)
    return n


def run_core(codec: str, requests: list[bytes], n: int) -> float:
    """µs per request over n keep-alive exchanges on one session (requests in turn)."""
    session = HttpSession(CONN, decide, codec=codec_factory(codec), limits=HttpLimits(),
                          stats=HttpProxyStats(), clock_ns=time.monotonic_ns,
                          wall_ns=time.time_ns)
    sink: list[Flow] = []
    forwarded = requests[0] is not DENIED
    count = len(requests)
    t0 = time.process_time()  # CPU time of this process: the shared box's load stays out
    for i in range(n):
        consume(session.feed_client(requests[i % count]), sink)
        if forwarded:
            consume(session.feed_upstream(RESPONSE), sink)
        if len(sink) > 1000:
            sink.clear()
    elapsed = time.process_time() - t0
    assert session.state.name == "HEAD", session.state  # every exchange completed
    return elapsed * 1e6 / n


def test_http_core_bench() -> None:
    prof = os.environ.get("L7GATE_CORE_PROFILE")
    if prof:
        codec, case = prof.split(":")
        p = cProfile.Profile()
        p.enable()
        run_core(codec, CASES[case], N_REQUESTS)
        p.disable()
        pstats.Stats(p).sort_stats("tottime").print_stats(25)
    print(f"\nHTTP core microbenchmark: {N_REQUESTS} keep-alive exchanges, best of {REPEATS}")
    print(f"{'codec':10s}" + "".join(f"{case:>16s} µs" for case in CASES))
    for codec in ("httptools", "h11"):
        n = N_REQUESTS if codec == "httptools" else max(1, N_REQUESTS // 4)
        row = [min(run_core(codec, req, n) for _ in range(REPEATS)) for req in CASES.values()]
        print(f"{codec:10s}" + "".join(f"{us:19.2f}" for us in row))
        assert all(us > 0 for us in row)
