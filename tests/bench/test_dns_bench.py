"""DNS proxy benchmark (loopback only, bounded): dnsperf -> dnsmasq, direct vs through the proxy.

Run with `make bench` (or `.venv/bin/pytest -q -s -o addopts="" tests/bench/test_dns_bench.py`).
Prints qps, p50/p99 latency (from dnsperf -v per-query lines), proxy CPU µs/query and the
ratios against direct. No timing assertions (STYLE.md §8): it only checks that queries were
answered. The proxy runs in its own process with uvloop, a `matchPattern: "*"` DNS rule, a real
`FqdnCache` learning every answer, and a bounded in-memory flow sink; a second proxy process
runs with `gc.freeze()` and a raised gen-0 threshold to show what collector tuning buys, and a
third ("bare": constant verdict, no learning) gives the proxy's own CPU per query and per
datagram, without the policy code the agent plugs in.

Host stalls (why the fixed-rate runs are sliced and watched by a probe): on the benchmark VM the
whole guest slows down 15-50x for 15-90 ms windows, often in pairs ~70 ms apart, every 1-2.5 s:
200-230 ms of every 6 s (3-4 %) whether the VM is idle or one vCPU is kept busy, so it is not
our load. Shown with a register-only C loop (no syscalls): inside those windows it takes 5-6x
longer per unit on both vCPUs at the same moment (to within 40 µs), its thread CPU time grows as
fast as wall time (so it is not in-guest preemption), and perf samples inside the windows are
all in the loop's user code (no guest interrupt or softirq): the time is taken below the guest
and charged to whatever runs (/proc/stat shows no steal time). A server needing ~10 µs per query
(dnsmasq) keeps up through a window at 5,000 q/s (one query per 200 µs); one needing 50-80 µs
per query (our proxy at this rate, or a trivial responder with a 50 µs busy wait queried
directly: p99 4.7-5.9 ms against 0.3-0.4 ms without the wait) falls behind and answers the
60-200 queries of a window 5-20 ms late, 1-2 % of a run: the p99. 6 of 7 (bare proxy, gc off)
and 4 of 5 (default) clusters of slow proxy callbacks started inside a probe-detected window.
Which run is hit is chance (one run measured p99 0.33 ms for the default proxy, 4.1 ms for
gc-tuned and 8.9 ms for the bare proxy, which costs the least per query). So each fixed-rate
setup runs as SLICES dnsperf runs of SLICE_S s while a low-duty probe (hoststall.py, shared
with the sandbox bench) records host stalls; the table prints p99 over all slices (stalls
included: the raw figure) and over the slices no stall touched, and the added latency is taken
from the clean slices on both sides, so it measures the proxy, not the host. A control server
(REFERENCE_SCRIPT: REFERENCE_WORK_US of CPU per query, no proxy code) is measured the same way
in every run, so the raw-vs-clean gap of a same-cost server sits next to the proxy's.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hoststall import SLICE_S, SLICES, HostProbe, Stall, describe, timed_slices
from hoststall import (  # collected here: pytest only collects test_*.py modules
    test_stall_windows_finds_runs_of_slow_units as test_stall_windows_finds_runs_of_slow_units,
)

pytestmark = pytest.mark.bench

RUN_S = 5  # per max-rate dnsperf run (brief: 5 s)
REFERENCE_WORK_US = 50  # CPU per query of the control server: about what the proxy spends
OUTSTANDING = 64  # max-rate runs (perf-anchors B7)
FIXED_QPS = 5000  # latency target load (issue: p50 <= 0.2 ms, p99 <= 1 ms added)
NAMES = 1000  # distinct query names cycled by dnsperf
ROOT = Path(__file__).resolve().parents[2]

PROXY_SCRIPT = r"""
import asyncio, collections, gc, sys, time
from policy.dnsname import build_matcher
from policy.fqdn import ALL_PORTS, FqdnCache, FqdnSelector
from policy.types import Decision, Verdict
from proxy.dns.server import DnsProxyServer, loop_factory

upstream = ("127.0.0.1", int(sys.argv[1]))
MODE = set(sys.argv[2].split("+"))
GC_TUNED = "gc-tuned" in MODE  # freeze startup objects, fewer gen-0 passes
GC_FREEZE = "gc-freeze" in MODE  # gc.freeze() once a second: retained flows leave the GC
GC_OFF = "gc-off" in MODE  # reference point only: no cyclic collector at all
BARE = "bare" in MODE  # constant verdict, no learning: the proxy's own cost only
GC_LOG = "gc-log" in MODE  # print collector pauses (count, total, max per generation) at exit
pauses = collections.defaultdict(list)

def on_gc(phase, info):
    if phase == "start":
        on_gc.t0 = time.perf_counter()
    else:
        pauses[info["generation"]].append(time.perf_counter() - on_gc.t0)

if GC_LOG:
    gc.callbacks.append(on_gc)
rule = build_matcher([], ["*"])
allow = Verdict(Decision.FORWARDED, rule_id="bench/dns")
deny = Verdict(Decision.ERROR)
sel = [FqdnSelector(rule, ALL_PORTS, "bench/fqdn")]
cache = FqdnCache()
flows = collections.deque(maxlen=10000)

def decide(info, qname):
    return allow if rule.matches(qname) else deny

def learn(info, qname, ips):
    cache.learn(1, qname, ips, time.time(), sel, allow_private=True)
    return None

if BARE:
    def decide(info, qname):
        return allow

    def learn(info, qname, ips):
        return None

async def main():
    if GC_TUNED:
        gc.freeze()  # startup objects leave the collector's view
        gc.set_threshold(50_000, 50, 100)  # fewer gen-0 passes over per-query garbage
    if GC_OFF:
        gc.disable()
    loop = asyncio.get_running_loop()
    if GC_FREEZE:
        def refreeze():
            gc.freeze()
            loop.call_later(1.0, refreeze)
        refreeze()
    srv = DnsProxyServer(("127.0.0.1", 0), decide, learn, flows.append, transparent=False,
                         origdst=lambda addr: upstream)
    await srv.start()
    print(srv.address[1], flush=True)
    stop = asyncio.Event()
    loop.add_reader(sys.stdin.fileno(), stop.set)
    await stop.wait()
    await srv.close()
    if GC_LOG:
        for gen, p in sorted(pauses.items()):
            print(f"gc gen{gen}: {len(p)} pauses, total {sum(p) * 1e3:.1f} ms, "
                  f"max {max(p) * 1e3:.2f} ms, >1 ms: {sum(x > 1e-3 for x in p)}",
                  file=sys.stderr)

with asyncio.Runner(loop_factory=loop_factory()) as r:
    r.run(main())
"""


REFERENCE_SCRIPT = r"""
import selectors, socket, sys, time
# Control server (module docstring): answers each query with one A record after a fixed
# amount of CPU work, i.e. a server as costly per query as the proxy but with none of its
# code, queried directly. Work, not a wall-clock wait, so that host stalls slow it too.
work_s = float(sys.argv[1]) * 1e-6

def spin(n):
    x = 0
    for i in range(n):
        x += i
    return x

best = 1.0
for _ in range(5):  # calibrate: the loop count that costs work_s of thread CPU
    t = time.thread_time()
    spin(20000)
    best = min(best, time.thread_time() - t)
loops = max(1, int(20000 * work_s / best))
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("127.0.0.1", 0))
sock.setblocking(False)
print(sock.getsockname()[1], flush=True)
sel = selectors.DefaultSelector()
sel.register(sys.stdin, selectors.EVENT_READ, None)
sel.register(sock, selectors.EVENT_READ, sock)
answer = bytes.fromhex("c00c000100010000003c00045db8d822")  # -> 93.184.216.34, TTL 60
while True:
    for key, _ in sel.select():
        if key.data is None:
            sys.exit(0)
        while True:
            try:
                query, addr = sock.recvfrom(4096)
            except BlockingIOError:
                break
            spin(loops)
            reply = bytearray(query)  # dnsperf sends no OPT record: the answer goes last
            reply[2] |= 0x80
            reply[3] = 0x80
            reply[6:8] = b"\x00\x01"
            sock.sendto(bytes(reply) + answer, addr)
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    label: str
    qps: float
    p50_ms: float
    p99_ms: float
    completed: int
    lost: int
    cpu_us_per_q: float | None = None
    # Sliced fixed-rate runs only: the same figures over the slices no host stall touched.
    p50_clean_ms: float | None = None
    p99_clean_ms: float | None = None
    clean_slices: int = 0
    slices: int = 0
    stalls: list[Stall] = field(default_factory=list)


def _pct(lat: list[float], p: float) -> float:
    """Percentile of sorted latencies (s) in ms; 0 for none."""
    return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else 0.0


def _run_dnsperf(port: int, datafile: Path, seconds: float, qps: int | None,
                 tcp: bool) -> tuple[list[float], int, int, float]:
    """One dnsperf -v run: (latencies in s, completed, lost, qps)."""
    cmd = ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(datafile), "-l",
           str(seconds), "-q", str(OUTSTANDING), "-v", "-t", "2"]
    if qps is not None:
        cmd += ["-Q", str(qps)]
    if tcp:
        cmd += ["-m", "tcp"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30,
                         check=True).stdout
    # "> NOERROR name A 0.000123" per answered query; lost ones carry no latency.
    lat: list[float] = []
    odd: list[str] = []
    for line in out.splitlines():
        if line.startswith("> "):
            try:
                lat.append(float(line.split()[-1]))
            except ValueError:
                odd.append(line)
    if odd:
        print(f"\n{len(odd)} answers without latency, e.g. {odd[0]!r}")
    stats = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines())}
    return (lat, int(stats["Queries completed"].split()[0]), int(stats["Queries lost"].split()[0]),
            float(stats["Queries per second"]))


def _dnsperf(port: int, datafile: Path, label: str, *, qps: int | None, tcp: bool = False,
             cpu_pid: int | None = None) -> Run:
    cpu0 = _cpu_s(cpu_pid) if cpu_pid else 0.0
    lat, completed, lost, qps_val = _run_dnsperf(port, datafile, RUN_S, qps, tcp)
    cpu1 = _cpu_s(cpu_pid) if cpu_pid else 0.0
    lat.sort()
    cpu = (cpu1 - cpu0) * 1e6 / completed if cpu_pid and completed else None
    return Run(label, qps_val, _pct(lat, 0.50), _pct(lat, 0.99), completed, lost, cpu)


def _fixed_rate(port: int, datafile: Path, label: str, *, cpu_pid: int) -> Run:
    """FIXED_QPS as SLICES runs of SLICE_S s under the host-stall probe (module docstring)."""
    with HostProbe() as probe:
        cpu0 = _cpu_s(cpu_pid)
        spans = timed_slices(SLICES, lambda: _run_dnsperf(port, datafile, SLICE_S, FIXED_QPS,
                                                          False))
        cpu1 = _cpu_s(cpu_pid)
    completed = sum(s.value[1] for s in spans)
    lost = sum(s.value[2] for s in spans)
    every = sorted(x for s in spans for x in s.value[0])
    clean_spans = probe.clean(spans)
    clean = sorted(x for s in clean_spans for x in s.value[0])
    return Run(label, sum(s.value[3] for s in spans) / len(spans), _pct(every, 0.50),
               _pct(every, 0.99), completed, lost,
               (cpu1 - cpu0) * 1e6 / completed if completed else None,
               _pct(clean, 0.50) if clean else None, _pct(clean, 0.99) if clean else None,
               len(clean_spans), len(spans), probe.stalls)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[dict[str, object]]:
    for tool in ("dnsperf", "dnsmasq"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (Debian package {tool})")
    port = _free_port()
    dnsmasq = subprocess.Popen(
        # In --no-daemon (debug) mode dnsmasq serves TCP inline in its only process, so the
        # proxy's pooled (RFC 7766) upstream TCP connection stalls dnsmasq's UDP service until
        # dnsmasq's TCP timeout: the TCP run therefore comes last. (--keep-in-foreground
        # answered no UDP at all in this sandbox.)
        ["dnsmasq", "--no-daemon", "-C", "/dev/null", "--port", str(port), "--listen-address",
         "127.0.0.1", "--bind-interfaces", "--no-resolv", "--address=/#/93.184.216.34",
         "--pid-file=", "--cache-size=0", "--no-hosts"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proxies = [subprocess.Popen([sys.executable, "-c", PROXY_SCRIPT, str(port), mode], cwd=ROOT,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
               for mode in ("default", "gc-tuned", "bare")]
    proxies.append(subprocess.Popen([sys.executable, "-c", REFERENCE_SCRIPT,
                                     str(REFERENCE_WORK_US)],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
    try:
        ports = [int(p.stdout.readline()) for p in proxies if p.stdout is not None]
        datafile = tmp_path / "queries.txt"
        datafile.write_text("".join(f"host{i}.bench.example.com A\n" for i in range(NAMES)))
        time.sleep(0.3)
        yield {"direct": port, "proxy": ports[0], "pid": proxies[0].pid, "proxy_gc": ports[1],
               "pid_gc": proxies[1].pid, "proxy_bare": ports[2], "pid_bare": proxies[2].pid,
               "reference": ports[3], "pid_reference": proxies[3].pid,
               "data": datafile, "dnsmasq": dnsmasq.pid}
    finally:
        for p in proxies:
            if p.stdin is not None:
                p.stdin.close()  # the proxy stops when its stdin closes
        everyone: list[subprocess.Popen[str] | subprocess.Popen[bytes]] = [*proxies, dnsmasq]
        for proc in everyone:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for p in proxies:
            if p.stdout is not None:
                p.stdout.close()


def test_dns_proxy_throughput_and_latency(procs: dict[str, object]) -> None:
    data = procs["data"]
    assert isinstance(data, Path)
    direct, proxy = int(procs["direct"]), int(procs["proxy"])  # type: ignore[call-overload]
    pid = int(procs["pid"])  # type: ignore[call-overload]
    dm_pid = int(procs["dnsmasq"])  # type: ignore[call-overload]
    gc_port, gc_pid = int(procs["proxy_gc"]), int(procs["pid_gc"])  # type: ignore[call-overload]
    bare_port = int(procs["proxy_bare"])  # type: ignore[call-overload]
    bare_pid = int(procs["pid_bare"])  # type: ignore[call-overload]
    ref_port = int(procs["reference"])  # type: ignore[call-overload]
    ref_pid = int(procs["pid_reference"])  # type: ignore[call-overload]
    fixed = f"{FIXED_QPS} qps"
    runs = [
        _dnsperf(direct, data, "direct  max (64 out)", qps=None, cpu_pid=dm_pid),
        _dnsperf(proxy, data, "proxy   max (64 out)", qps=None, cpu_pid=pid),
        _fixed_rate(direct, data, f"direct  {fixed}", cpu_pid=dm_pid),
        _fixed_rate(proxy, data, f"proxy   {fixed}", cpu_pid=pid),
        _dnsperf(gc_port, data, "proxy+gc-tuned max (64 out)", qps=None, cpu_pid=gc_pid),
        _fixed_rate(gc_port, data, f"proxy+gc-tuned {fixed}", cpu_pid=gc_pid),
        _dnsperf(bare_port, data, "proxy-bare max (64 out)", qps=None, cpu_pid=bare_pid),
        _fixed_rate(bare_port, data, f"proxy-bare {fixed}", cpu_pid=bare_pid),
        _dnsperf(proxy, data, f"proxy   {fixed} TCP (1 run)", qps=FIXED_QPS, tcp=True,
                 cpu_pid=pid),
        _fixed_rate(ref_port, data, f"ref {REFERENCE_WORK_US}us/q {fixed}", cpu_pid=ref_pid),
    ]
    print()
    print(f"{'setup':28} {'qps':>9} {'p50 ms':>8} {'p99 ms':>8} {'lost':>6} {'cpu us/q':>9}"
          f"   clean slices: {'p50 ms':>7} {'p99 ms':>7}  host stalls (ms, slowdown)")
    for r in runs:
        cpu = f"{r.cpu_us_per_q:9.1f}" if r.cpu_us_per_q is not None else f"{'-':>9}"
        line = f"{r.label:28} {r.qps:9.0f} {r.p50_ms:8.3f} {r.p99_ms:8.3f} {r.lost:6d} {cpu}"
        if r.slices:
            c50 = f"{r.p50_clean_ms:7.3f}" if r.p50_clean_ms is not None else f"{'-':>7}"
            c99 = f"{r.p99_clean_ms:7.3f}" if r.p99_clean_ms is not None else f"{'-':>7}"
            line += f"   {r.clean_slices}/{r.slices} {c50} {c99}  {describe(r.stalls)}"
        print(line)
    d_max, p_max, d_fix, p_fix = runs[:4]
    print(f"max-rate qps ratio proxy/direct: {p_max.qps / d_max.qps:.2f}")
    bare_max = runs[6]
    if bare_max.cpu_us_per_q is not None:
        # Four datagrams per query (pod->proxy, proxy->server, server->proxy, proxy->pod).
        print(f"proxy-bare (constant verdict, no learning) at max rate: "
              f"{bare_max.cpu_us_per_q:.1f} us CPU/query = "
              f"{bare_max.cpu_us_per_q / 4:.1f} us CPU/datagram through the server")
    print(f"at {FIXED_QPS} qps added latency, all slices (host stalls included): "
          f"p50 +{p_fix.p50_ms - d_fix.p50_ms:.3f} ms, p99 +{p_fix.p99_ms - d_fix.p99_ms:.3f} ms")
    for r in runs[3], runs[5], runs[7]:
        if r.p99_clean_ms is not None and d_fix.p99_clean_ms is not None:
            assert r.p50_clean_ms is not None and d_fix.p50_clean_ms is not None
            print(f"at {FIXED_QPS} qps added latency, clean slices ({r.label.split()[0]}): "
                  f"p50 +{r.p50_clean_ms - d_fix.p50_clean_ms:.3f} ms, "
                  f"p99 +{r.p99_clean_ms - d_fix.p99_clean_ms:.3f} ms")
        else:
            print(f"{r.label.split()[0]}: no clean slice on one side: host stalls in every slice")
    ref = runs[-1]
    print(f"control: a plain server doing {REFERENCE_WORK_US} us of CPU per query, no proxy, "
          f"queried directly: p99 {ref.p99_ms:.3f} ms over all slices, "
          + (f"{ref.p99_clean_ms:.3f} ms over clean slices" if ref.p99_clean_ms is not None
             else "no clean slice")
          + " (module docstring: host stalls, not proxy code, make the difference)")
    assert all(r.completed > 0 for r in runs)


def test_dns_core_microbench() -> None:
    """Per-query CPU of the pure parts (no I/O): extractor, answer walker vs dnslib, a full
    allowed query cycle through DnsSession (= µs per allowed query through the core), and
    FqdnCache.learn. Thread CPU time, best of 9 runs (the machine is shared: the minimum is
    the stable figure)."""
    import statistics
    import timeit

    import dnslib

    from policy.dnsname import build_matcher
    from policy.fqdn import ALL_PORTS, FqdnCache, FqdnSelector
    from policy.types import Decision, Verdict
    from proxy.dns import wire
    from proxy.dns.session import DnsConnInfo, DnsSession, Learn, SendUpstream

    rec = dnslib.DNSRecord.question("host1.bench.example.com")
    query = bytes(rec.pack())
    reply = rec.reply()
    reply.add_answer(dnslib.RR("host1.bench.example.com", dnslib.QTYPE.A,
                               rdata=dnslib.A("93.184.216.34"), ttl=30))
    answer = bytes(reply.pack())
    q = wire.parse_query(query)
    allow = Verdict(Decision.FORWARDED, rule_id="bench/dns")
    sess = DnsSession(lambda i, n: allow, clock_ns=time.monotonic_ns, wall_ns=time.time_ns)
    info = DnsConnInfo("10.0.0.5", 40000, "10.0.0.10", 53, "UDP")
    sel = [FqdnSelector(build_matcher([], ["*"]), ALL_PORTS, "bench/fqdn")]
    cache = FqdnCache()

    def cycle() -> None:
        up = sess.feed_query(query, info)[0]
        assert isinstance(up, SendUpstream)
        acts = sess.feed_upstream(up.channel, up.data[:2] + answer[2:])
        assert isinstance(acts[0], Learn)
        sess.learn_done(acts[0].token)

    cases = {
        "parse_query (strict extractor)": lambda: wire.parse_query(query),
        "dnslib DNSRecord.parse(query)": lambda: dnslib.DNSRecord.parse(query),
        "analyze_answer (walker)": lambda: wire.analyze_answer(q, answer),
        "analyze_answer (dnslib)": lambda: wire.analyze_answer(q, answer, use_dnslib=True),
        "DnsSession allowed cycle (core/query)": cycle,
        "FqdnCache.learn": lambda: cache.learn(1, "host1.bench.example.com.",
                                               [("93.184.216.34", 30)], time.time(), sel,
                                               allow_private=False),
    }
    print()
    for label, fn in cases.items():
        timer = timeit.Timer(fn, timer=time.thread_time)
        runs = [timer.timeit(number=2000) / 2000 * 1e6 for _ in range(9)]
        print(f"{label:38} {min(runs):8.2f} us (median {statistics.median(runs):.2f})")
    assert sess.inflight == 0
