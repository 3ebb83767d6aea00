"""End-to-end benchmarks on the sandbox cluster (make bench; never in make test; root only).

What it measures (all traffic stays inside the sandbox's network namespaces):
1. L3/L4 datapath: frontend -> my-api:8080 with a policy pair that allows it WITHOUT http
   rules (the kernel enforces: policy map + conntrack; nothing proxied), against the same pods
   in a sandbox without agents (no BPF at all). wrk -t1 -c16 (req/s, p50/p99) and iperf3
   (Gbit/s); ratio with/without agent (issue target >= 0.9).
2. HTTP L7 proxy: wrk -t1 at c=1/16/64 to /api/users: (a) direct, no agent; (c) haproxy as a
   plain forwarder (`nbthread 1`, `http-reuse always`) in node2's netns, same sandbox,
   interleaved with (a); (b) through node2's agent with the reference policies. The
   machine's speed drifts by up to a third within one run, so whole sandboxes alternate
   (alternation.py): a reference pass (a)+(c), an agent pass, a reference pass, ..., a
   reference pass. Each agent pass is judged against the mean of the reference passes just
   before and after it, and a setup's verdict is the median of its passes' ratios (every
   pass is printed). The agent passes are the default codec L7GATE_BENCH_HTTP_ROUNDS times
   (default 5) and each other `--http-codec` once, between them (L7GATE_BENCH_CODECS, default
   `auto,httptools,h11`, the first being the default; `auto` is httptools when installed).
   Proxy CPU µs/request = Δ(utime+stime) of node2's agent (all its threads) or of haproxy /
   requests. Issue targets: c=64 req/s >= 0.8 x haproxy, p99 <= 1.5 x haproxy;
   c=1 p50 added over direct <= 0.1 ms. Every setup gets the same workload: wrk with
   varying_request.lua, so each request head carries its own x-request-id (traced traffic)
   and the proxy's per-connection memo of a repeated head never answers. Beside haproxy
   runs a reference row, "python floor":
   tests/bench/pyfloor.py, the issue's mandatory per-request work (strict head grammar,
   policy regex, re-serialised heads, a flow record) with no layering, i.e. the least a
   Python design can spend per request; the gap between it and l7gate is ours to close.
   That row runs agent-less, beside haproxy; a second one, "python floor in the datapath",
   runs the same floor as node2's HTTP proxy inside a real agent (pyfloor.py `agent`: the
   product's transparent listener, bpf_sk_assign redirect, SO_MARK and pod-source upstream,
   tc programs on every hop), after l7gate's runs in the last agent sandbox: what the
   least Python costs where the product runs.
3. DNS proxy: dnsperf in frontend against kube-dns (dnsmasq), max rate (-c 1 -q 64) and
   fixed 5,000 q/s, without agents vs through node1's DNS proxy (reference policies,
   matchPattern "*"); p50/p99 from `dnsperf -v` per-query lines. Issue targets: >= 20,000 q/s;
   at 5,000 q/s p50 added <= 0.2 ms, p99 (read as added, like p50) <= 1 ms.
   This VM loses 15-90 ms windows every 1-2.5 s below the guest (hoststall.py; evidence in
   test_dns_bench.py), and a server costing ~50 µs/query falls behind in each, so a fixed-rate
   p99 is a lottery. The 5,000 q/s runs therefore run as hoststall.SLICES dnsperf runs of
   hoststall.SLICE_S s under the host-stall probe (root namespace: the stalls hit the whole
   VM); the table gives p50/p99 over all slices (raw) and over the slices no stall touched
   (clean), "added" from clean slices on both sides with the raw difference next to it, and
   proxy CPU µs/query over all slices, with the in-guest CPU contention over the slices
   ("CPU wait %", /proc/pressure/cpu "some": other engineers' unlocked jobs raise it, and the
   probe does not count it as a stall) and each slice's p99. The control server (same CPU per
   query, no proxy code) is measured in the loopback bench (test_dns_bench.py) only.
   Beside the direct runs, in the same agent-less sandbox, a reference row "python DNS
   floor": tests/bench/dnsfloor.py on node1 (strict question extractor, ID-multiplexed
   upstream socket, answer check and IP harvest memoised like the product's, a flow tuple
   per query; no transparency, no map write), i.e. the least a Python DNS proxy spends per
   query, under the same loads and probe.

Each sandbox configuration needs its own `Sandbox.up` (agents compile BPF at start: 15-60 s
on a busy 2-core box), so runs are interleaved inside one sandbox (direct vs haproxy) and
whole sandboxes alternate (L3/L4: ABBAAB; HTTP: references between agent passes).
Results are printed as Markdown tables and merged into $L7GATE_BENCH_OUT (JSON) if set.
Tests assert only that measurements happened (requests counted, no errors, the policy is
in the path), never anything about timing (STYLE.md). Every sandbox and every process started
here is brought down in a finalizer.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from statistics import median
from typing import Any

import pytest
from alternation import (
    DIRECT,
    HAPROXY,
    Targets,
    agent_plan,
    pass_ratios,
    ratio,
    summarize,
    verdict_line,
    verdict_word,
)
from hoststall import SLICE_S, SLICES, describe
from sandbox_bench_helpers import (
    DnsRun,
    IperfRun,
    WrkRun,
    cpu_cell,
    dnsperf,
    dnsperf_sliced,
    iperf3,
    stop_popen,
    table,
    to_jsonable,
    wait_listening,
    write_json,
    wrk,
)

from agent.sandbox.api import Sandbox, _reap_child
from agent.sandbox.state import STATE_DIR, stop

pytestmark = [pytest.mark.bench, pytest.mark.root]

ROOT = Path(__file__).resolve().parents[2]
REFERENCE_POLICIES = ("my-api-l7.yaml", "frontend-egress.yaml")
RUN_S = int(os.environ.get("L7GATE_BENCH_SECONDS", "5"))  # brief: each wrk/dnsperf run 5 s
CONCURRENCY = (1, 16, 64)  # issue: wrk at 1, 16 and 64 connections
L4_CONNS = 16  # issue (L3/L4): wrk -t1 -c16
L4_ROUNDS = int(os.environ.get("L7GATE_BENCH_L4_ROUNDS", "3"))  # sandboxes per setup (ABBAAB):
#   an agent start costs ~15-60 s, so 3 keeps the whole file near the brief's ~6 minutes
CODECS = tuple(c for c in os.environ.get("L7GATE_BENCH_CODECS", "auto,httptools,h11").split(",")
               if c)
WAIT_S = 600.0  # one sandbox per machine: wait for other engineers' test runs to finish
TEST_TIMEOUT_S = 900  # several agent starts (bcc compiles ~1 min each) plus the runs
# HTTP: passes of the default codec (the first of CODECS), alternated with reference passes
# (alternation.py). Single passes scatter widely here (l7gate 0.65-0.97x haproxy, p99
# 0.47-3.02x, over 21 passes in five runs); the median of 5 is one that two bad passes
# cannot move
HTTP_ROUNDS = int(os.environ.get("L7GATE_BENCH_HTTP_ROUNDS", "5"))
HTTP_TEST_TIMEOUT_S = 2400  # 7 agent and 8 agent-less sandboxes at the defaults: ~7 minutes
CLIENT = "default/frontend"
API = "default/my-api"
DNS_POD = "kube-system/kube-dns"
API_PORT = 8080
HAPROXY_PORT = 18080  # on node2's underlay address; nothing else listens there
FLOOR_PORT = 18090  # the bench-only Python floor forwarder (tests/bench/pyfloor.py), same place
FLOOR_LABEL = "python floor (bench-only)"
FLOOR_DP_LABEL = "python floor in the datapath (bench-only)"
DNS_FLOOR_PORT = 5353  # tests/bench/dnsfloor.py on node1's underlay address (agent-less sandbox)
DNS_FLOOR_LABEL = "python DNS floor (bench-only)"
AGENT_SWAP_TIMEOUT_S = 180.0  # the floor agent compiles BPF like any agent (15-60 s, busy box)
REPO = Path(__file__).resolve().parents[2]
# every request head differs (x-request-id), as traced traffic does: see the script
VARYING_REQUEST = Path(__file__).resolve().parent / "varying_request.lua"
DNS_OUTSTANDING = 64  # brief: dnsperf -c 1 -q 64
DNS_FIXED_QPS = 5000  # issue: latency target at 5,000 queries/s
DNS_NAMES = ("api.stripe.com", "x.internal.example.com")

# Issue targets, printed as met/missed (never asserted: the machine is shared).
TARGET_L4_RATIO = 0.9
TARGET_HTTP_RPS_VS_HAPROXY = 0.8
TARGET_HTTP_P99_VS_HAPROXY = 1.5
TARGET_HTTP_P50_ADDED_MS = 0.1
HTTP_TARGETS = Targets(TARGET_HTTP_RPS_VS_HAPROXY, TARGET_HTTP_P99_VS_HAPROXY,
                       TARGET_HTTP_P50_ADDED_MS)
TARGET_DNS_QPS = 20000
TARGET_DNS_P50_ADDED_MS = 0.2
TARGET_DNS_P99_ADDED_MS = 1.0

HAPROXY_CFG = """\
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    http-reuse always
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend bench
    bind {bind}
    default_backend my_api
backend my_api
    server my_api {origin}
"""

# L3/L4 only: frontend may reach my-api on 8080 (wrk) and 5201 (iperf3), with no `rules`,
# so the datapath enforces in the kernel and redirects nothing to a proxy.
L4_POLICY = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: bench-my-api-l4
  namespace: default
spec:
  endpointSelector:
    matchLabels: {app: my-api}
  ingress:
    - fromEndpoints:
        - matchLabels: {role: frontend}
      toPorts:
        - ports: [{port: "8080", protocol: TCP}, {port: "5201", protocol: TCP}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: bench-frontend-l4
  namespace: default
spec:
  endpointSelector:
    matchLabels: {role: frontend}
  egress:
    - toEndpoints:
        - matchLabels: {app: my-api}
      toPorts:
        - ports: [{port: "8080", protocol: TCP}, {port: "5201", protocol: TCP}]
"""


class Slot:
    """At most one sandbox at a time (one per machine); `close` downs it (finalizer)."""

    def __init__(self) -> None:
        self.sb: Sandbox | None = None

    def up(self, **kwargs: Any) -> Sandbox:
        self.close()
        self.sb = Sandbox.up(wait_s=WAIT_S, **kwargs)
        return self.sb

    def close(self) -> None:
        sb, self.sb = self.sb, None
        if sb is not None:
            problems = sb.down()
            if problems:
                print(f"sandbox down reported: {problems}")


@pytest.fixture
def slot() -> Iterator[Slot]:
    if os.geteuid() != 0:
        pytest.skip("the sandbox needs root (network namespaces, BPF)")
    missing = [t for t in ("wrk", "dnsperf", "haproxy", "iperf3", "ss")
               if shutil.which(t) is None and not Path("/usr/sbin", t).exists()]
    if missing:
        pytest.skip(f"missing tools: {', '.join(missing)} (run scripts/setup.sh)")
    s = Slot()
    try:
        yield s
    finally:
        s.close()


def _reference_policies(tmp_path: Path) -> Path:
    d = tmp_path / "reference-policies"
    d.mkdir()
    for name in REFERENCE_POLICIES:
        shutil.copy(ROOT / "examples" / name, d / name)
    return d


def _agent_pid(sb: Sandbox, node: str) -> int:
    row = next(n for n in sb.status()["nodes"] if n["name"] == node)
    assert row["agent"] == "running" and row["agent_pid"], row
    return int(row["agent_pid"])


def _http_code(sb: Sandbox, pod: str, url: str) -> int:
    res = sb.exec(pod, ["curl", "-s", "-o", "/dev/null", "-m", "3", "-w", "%{http_code}", url],
                  timeout=20)
    return int(res.stdout or 0)


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _added(a: float | None, b: float | None) -> str:
    """`a - b` in ms as a table cell; `-` when a side has no figure (no clean slice)."""
    d = _diff(a, b)
    return "-" if d is None else f"{d:+.3f}"


def _added_verdict(added: float | None, target: float, what: str) -> str:
    if added is None:
        return f"{what} n/a (a side had no slice clear of host stalls)"
    return f"{what} {added:+.3f} ms (target <= {target}: {verdict_word(added <= target)})"


# -- 1. L3/L4 datapath ---------------------------------------------------------------------
@pytest.mark.timeout(TEST_TIMEOUT_S)
def test_l34_datapath_vs_no_agent(slot: Slot, tmp_path: Path) -> None:
    pol = tmp_path / "l4-policies"
    pol.mkdir()
    (pol / "bench-l4.yaml").write_text(L4_POLICY, encoding="utf-8")
    setups: dict[str, dict[str, Any]] = {"no agent": {"agents": False},
                                         "agents, L3/L4 policy": {"policy_dir": pol}}
    # ABBA...: each setup needs its own sandbox, so alternate whole sandboxes to spread the
    # shared machine's drift over both setups
    order = [label for r in range(L4_ROUNDS)
             for label in (list(setups) if r % 2 == 0 else list(setups)[::-1])]
    runs: list[tuple[str, WrkRun, IperfRun]] = []
    for label in order:
        sb = slot.up(**setups[label])
        url = f"http://{sb.pod_ip(API)}:{API_PORT}/"
        pids = {}
        if label != "no agent":
            # the policy is in the path: frontend allowed, app=other dropped by the kernel
            assert _http_code(sb, CLIENT, url) == 200
            assert _http_code(sb, "default/other", url) == 0
            pids = {"node1": _agent_pid(sb, "node1"), "node2": _agent_pid(sb, "node2")}
        w = wrk(sb, CLIENT, url, L4_CONNS, RUN_S, label, pids)
        runs.append((label, w, iperf3(sb, CLIENT, API, RUN_S, label)))
        slot.close()

    med: dict[str, dict[str, float]] = {}
    for label in setups:
        mine = [(w, i) for lbl, w, i in runs if lbl == label]
        med[label] = {"rps": median(w.rps for w, _ in mine),
                      "p50": median(w.p50_ms for w, _ in mine),
                      "p99": median(w.p99_ms for w, _ in mine),
                      "gbit": median(i.gbit_s for _, i in mine)}
    rows: list[list[object]] = [
        [f"{lbl} (run {n + 1})", f"{w.rps:,.0f}", f"{w.p50_ms:.3f}", f"{w.p99_ms:.3f}",
         f"{i.gbit_s:.2f}", i.retransmits,
         f"{cpu_cell(w.cpu_us_per_req, 'node1')} / {cpu_cell(w.cpu_us_per_req, 'node2')}"]
        for n, (lbl, w, i) in enumerate(runs)]
    rows += [[f"{lbl}: median", f"{m['rps']:,.0f}", f"{m['p50']:.3f}", f"{m['p99']:.3f}",
              f"{m['gbit']:.2f}", "", ""] for lbl, m in med.items()]
    m0, m1 = med["no agent"], med["agents, L3/L4 policy"]
    rps_ratio, tput_ratio = ratio(m1["rps"], m0["rps"]), ratio(m1["gbit"], m0["gbit"])
    rows.append(["ratio agents/no agent (medians)", f"{rps_ratio:.3f}",
                 f"{ratio(m1['p50'], m0['p50']):.2f}", f"{ratio(m1['p99'], m0['p99']):.2f}",
                 f"{tput_ratio:.3f}", "", ""])
    print()
    print(table(f"L3/L4 datapath: frontend -> my-api:{API_PORT} (wrk -t1 -c{L4_CONNS} "
                f"-d{RUN_S}s; iperf3 -t {RUN_S}; {L4_ROUNDS} rounds, sandboxes alternated)",
                ["setup", "req/s", "p50 ms", "p99 ms", "iperf3 Gbit/s", "retransmits",
                 "agent CPU µs/req node1 / node2 (user+sys)"], rows))
    print(f"target >= {TARGET_L4_RATIO}: req/s ratio {rps_ratio:.3f} "
          f"({verdict_word(rps_ratio >= TARGET_L4_RATIO)}), throughput ratio {tput_ratio:.3f} "
          f"({verdict_word(tput_ratio >= TARGET_L4_RATIO)})")
    write_json("sandbox_l34_datapath", {
        "wrk": [w for _, w, _ in runs], "iperf3": [i for _, _, i in runs], "medians": med,
        "ratio_rps": rps_ratio, "ratio_gbit_s": tput_ratio})
    for _, w, i in runs:
        assert w.requests > 0 and w.errors == 0, w
        assert i.bytes > 0, i


# -- 2. HTTP L7 proxy ----------------------------------------------------------------------
def _haproxy(sb: Sandbox, tmp_path: Path) -> subprocess.Popen[bytes]:
    bind = f"{sb.node_ip('node2')}:{HAPROXY_PORT}"
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(HAPROXY_CFG.format(bind=bind, origin=f"{sb.pod_ip(API)}:{API_PORT}"),
                   encoding="utf-8")
    cmd, env = sb.command("node2", ["haproxy", "-f", str(cfg), "-db"])
    log = open(tmp_path / "haproxy.log", "wb")  # closed below; Popen keeps its own fd
    try:
        # nsenter execs haproxy, so this Popen's pid is haproxy's (for CPU accounting)
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    finally:
        log.close()
    return proc


def _start_python(sb: Sandbox, node: str, args: list[str], log: Path,
                  ready: Callable[[], bool] | None = None,
                  timeout_s: float = 30.0,
                  extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """`python -m ARGS` from the repo inside `node`'s netns, output to `log`; when `ready` is
    given, wait (bounded) until it holds, stopping the process if it never does."""
    cmd, env = sb.command(node, [sys.executable, "-m", *args])
    env["PYTHONPATH"] = str(REPO)
    env.update(extra_env or {})
    fh = open(log, "wb")  # closed below; Popen keeps its own fd
    try:
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=REPO, start_new_session=True)
    finally:
        fh.close()
    deadline = time.monotonic() + timeout_s
    while ready is not None and not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_popen(proc)
            raise AssertionError(f"{args[0]} did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.1)
    return proc


def _proxy_build(node: str) -> str:
    """How `node`'s agent runs its HTTP proxy, from the line agent/proxies.py logs at start:
    "compiled", or why not (e.g. "pure Python (compiled hot path not used: stale: fast.py
    changed since the build ...)")."""
    for line in (STATE_DIR / node / "agent.log").read_text(errors="replace").splitlines():
        if "http proxy: compiled hot path" in line:
            return "compiled"
        if "http proxy: pure Python" in line:
            return line.split("http proxy: ", 1)[1]
    return "unknown (no start line in the agent log)"


def _require_compiled(node: str) -> None:
    """l7gate's figures are those of the compiled hot path (make setup builds it): a build
    left stale by an edit makes the agent fall back to the sources, which
    must not pass for a measurement of the product (stop 15: a run discarded for that had
    46-55 µs CPU per request against 36-42 compiled). L7GATE_PURE=1 measures the sources
    on purpose."""
    build = _proxy_build(node)
    if os.environ.get("L7GATE_PURE") != "1" and build != "compiled":
        pytest.fail(f"{node}'s HTTP proxy is not running the compiled hot path: {build}; "
                    "rebuild it (make setup, or scripts/build_compiled.py)")


def _pyfloor(sb: Sandbox, tmp_path: Path) -> subprocess.Popen[bytes]:
    """tests/bench/pyfloor.py beside haproxy: what the least Python per request costs."""
    return _start_python(sb, "node2", ["tests.bench.pyfloor", sb.node_ip("node2"),
                                       str(FLOOR_PORT), sb.pod_ip(API), str(API_PORT)],
                         tmp_path / "pyfloor.log")


def _dnsfloor(sb: Sandbox, tmp_path: Path) -> subprocess.Popen[bytes]:
    """tests/bench/dnsfloor.py on node1 (beside kube-dns' node), forwarding to kube-dns."""
    log = tmp_path / "dnsfloor.log"
    return _start_python(sb, "node1", ["tests.bench.dnsfloor", sb.node_ip("node1"),
                                       str(DNS_FLOOR_PORT), sb.pod_ip(DNS_POD), "53"],
                         log, ready=lambda: b"listening" in log.read_bytes())


def _floor_agent(sb: Sandbox, node: str, tmp_path: Path) -> subprocess.Popen[bytes]:
    """Replace `node`'s agent by the same agent whose HTTP connections the floor serves
    (pyfloor.py `agent`): same flags, datapath, policies; returns once its API socket is up."""
    proc = sb.state.proc(f"agent:{node}")
    assert proc is not None and proc.is_alive(), proc
    argv = [a.decode() for a in Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")[:-1]]
    args = argv[argv.index("agent"):]
    sock = Path(args[args.index("--api-socket") + 1])
    stop([proc], 10.0)
    _reap_child(proc.pid)
    sock.unlink(missing_ok=True)  # the new agent creates it when ready
    # pure-Python proxy.http: the floor swaps the server's client class, which compiled
    # code (proxy/compiled.py) would not look up (pyfloor.py refuses to run otherwise)
    return _start_python(sb, node, ["tests.bench.pyfloor", *args], tmp_path / "floor-agent.log",
                         ready=sock.exists, timeout_s=AGENT_SWAP_TIMEOUT_S,
                         extra_env={"L7GATE_PURE": "1"})


@pytest.mark.timeout(HTTP_TEST_TIMEOUT_S)
def test_http_proxy_direct_haproxy_l7gate(slot: Slot, tmp_path: Path) -> None:
    path = "/api/users"
    plan = agent_plan(CODECS, HTTP_ROUNDS)
    # (pass number, run): reference pass k is number 2k, the agent pass after it 2k + 1
    results: list[tuple[int, WrkRun]] = []
    refs: list[dict[tuple[str, int], WrkRun]] = []

    def references(with_floor: bool) -> None:
        """(a) direct and (c) haproxy in one agent-less sandbox, interleaved per connection
        count; the agent-less floor beside them in the first pass only."""
        number = 2 * len(refs)
        mine: dict[tuple[str, int], WrkRun] = {}
        sb = slot.up(agents=False)
        hap = _haproxy(sb, tmp_path)
        floor = _pyfloor(sb, tmp_path) if with_floor else None
        try:
            wait_listening(sb, "node2", HAPROXY_PORT, hap)
            direct_url = f"http://{sb.pod_ip(API)}:{API_PORT}{path}"
            hap_url = f"http://{sb.node_ip('node2')}:{HAPROXY_PORT}{path}"
            floor_url = f"http://{sb.node_ip('node2')}:{FLOOR_PORT}"
            assert _http_code(sb, CLIENT, hap_url) == 200
            if floor is not None:
                wait_listening(sb, "node2", FLOOR_PORT, floor)
                assert _http_code(sb, CLIENT, floor_url + path) == 200
                assert _http_code(sb, CLIENT, floor_url + "/private") == 403
            for conns in CONCURRENCY:
                for run in (
                        wrk(sb, CLIENT, direct_url, conns, RUN_S, DIRECT,
                            script=VARYING_REQUEST),
                        wrk(sb, CLIENT, hap_url, conns, RUN_S, HAPROXY, {"proxy": hap.pid},
                            script=VARYING_REQUEST)):
                    mine[(run.label, conns)] = run
                    results.append((number, run))
                if floor is not None:
                    results.append((number, wrk(sb, CLIENT, floor_url + path, conns, RUN_S,
                                                FLOOR_LABEL, {"proxy": floor.pid},
                                                script=VARYING_REQUEST)))
        finally:
            if floor is not None:
                stop_popen(floor)
            stop_popen(hap)
            slot.close()
        refs.append(mine)

    references(with_floor=True)
    policies = _reference_policies(tmp_path)
    for i, codec in enumerate(plan):
        # (b) l7gate's HTTP proxy on node2 in a sandbox of its own, between two references
        number = 2 * i + 1
        sb = slot.up(policy_dir=policies, agent_args=["--http-codec", codec])
        url = f"http://{sb.pod_ip(API)}:{API_PORT}"
        # the L7 rule is enforced, so these requests really cross the proxy
        assert _http_code(sb, CLIENT, url + path) == 200
        assert _http_code(sb, CLIENT, url + "/private") == 403
        _require_compiled("node2")
        pids = {"proxy": _agent_pid(sb, "node2"), "node1 agent": _agent_pid(sb, "node1")}
        for conns in CONCURRENCY:
            results.append((number, wrk(sb, CLIENT, url + path, conns, RUN_S,
                                        f"l7gate ({codec})", pids, script=VARYING_REQUEST)))
        if i == len(plan) - 1:
            # the floor where the product runs: same sandbox, node2's agent swapped
            floor_agent = _floor_agent(sb, "node2", tmp_path)
            try:
                assert _http_code(sb, CLIENT, url + path) == 200
                assert _http_code(sb, CLIENT, url + "/private") == 403
                for conns in CONCURRENCY:
                    results.append((number, wrk(sb, CLIENT, url + path, conns, RUN_S,
                                                FLOOR_DP_LABEL, {"proxy": floor_agent.pid},
                                                script=VARYING_REQUEST)))
            finally:
                stop_popen(floor_agent)
        slot.close()
        references(with_floor=False)

    def around(number: int) -> tuple[dict[tuple[str, int], WrkRun], ...]:
        """The reference passes around pass `number` (its own, twice, for a reference)."""
        return (refs[number // 2], refs[number // 2]) if number % 2 == 0 else \
            (refs[number // 2], refs[number // 2 + 1])

    ratios = [(number, run, pass_ratios(run, *around(number))) for number, run in results]
    rows = [[number, run.label, run.conns, f"{run.rps:,.0f}", f"{run.p50_ms:.3f}",
             f"{run.p99_ms:.3f}", cpu_cell(run.cpu_us_per_req, "proxy"),
             f"{r.rps_vs_direct:.2f}", f"{r.p50_added_ms:+.3f}", f"{r.rps_vs_haproxy:.2f}",
             f"{r.p99_vs_haproxy:.2f}"] for number, run, r in ratios]
    rows.sort(key=lambda row: (row[2], row[0]))  # by connections, then in run order
    print()
    print(table(f"HTTP: frontend -> my-api {path} (wrk -t1 -d{RUN_S}s, a distinct x-request-id "
                "per request; proxy CPU = node2 agent, haproxy or the floor; passes alternate "
                "agent-less references (even) and agent sandboxes (odd); an agent pass's ratios "
                "are against the mean of the reference passes just before and after it, a "
                "reference pass's against itself)",
                ["pass", "setup", "conns", "req/s", "p50 ms", "p99 ms",
                 "proxy CPU µs/req (user+sys)", "req/s vs direct", "p50 added ms",
                 "req/s vs haproxy", "p99 vs haproxy"], rows))
    high = max(CONCURRENCY)
    for conns in CONCURRENCY:
        print(f"c={conns} references by pass: direct " + ", ".join(
            f"{r[(DIRECT, conns)].rps:,.0f}" for r in refs) + " req/s; haproxy " + ", ".join(
            f"{r[(HAPROXY, conns)].rps:,.0f}" for r in refs) + " req/s")
    summaries = []
    for label in [FLOOR_LABEL, FLOOR_DP_LABEL, *(f"l7gate ({c})" for c in CODECS)]:
        mine = [(run, r) for _, run, r in ratios if run.label == label]
        summaries.append(summarize(label, [r for run, r in mine if run.conns == high],
                                   [r for run, r in mine if run.conns == 1], HTTP_TARGETS))
        print(verdict_line(summaries[-1], HTTP_TARGETS, high))
    write_json("sandbox_http_proxy", {
        "runs": [{"pass": number, **to_jsonable(run), "ratios": to_jsonable(r)}
                 for number, run, r in ratios],
        "plan": plan, "summaries": [{**to_jsonable(s), "median_rps_vs_haproxy": s.median_rps,
                                     "median_p99_vs_haproxy": s.median_p99,
                                     "median_p50_added_ms": s.median_p50_added}
                                    for s in summaries], "path": path,
        "seconds": RUN_S})
    for _, run in results:
        assert run.requests > 0 and run.errors == 0, run


# -- 3. DNS proxy --------------------------------------------------------------------------
@pytest.mark.timeout(TEST_TIMEOUT_S)
def test_dns_proxy_vs_no_agent(slot: Slot, tmp_path: Path) -> None:
    datafile = tmp_path / "queries.txt"
    datafile.write_text("".join(f"{name} A\n" for name in DNS_NAMES), encoding="utf-8")
    policies = _reference_policies(tmp_path)
    runs: list[DnsRun] = []
    for label, kwargs in (("no agent", {"agents": False}),
                          ("l7gate DNS proxy", {"policy_dir": policies})):
        sb = slot.up(**kwargs)
        server = sb.pod_ip(DNS_POD)
        dns_proc = sb.state.proc("dns")
        assert dns_proc is not None
        pids = {"dnsmasq": dns_proc.pid}
        if label != "no agent":
            pids["proxy"] = _agent_pid(sb, "node1")  # frontend and kube-dns are on node1
        runs.append(dnsperf(sb, CLIENT, server, datafile, RUN_S, label,
                            outstanding=DNS_OUTSTANDING, cpu_pids=pids))
        runs.append(dnsperf_sliced(sb, CLIENT, server, datafile, label,
                                   outstanding=DNS_OUTSTANDING, qps=DNS_FIXED_QPS,
                                   cpu_pids=pids))
        if label == "no agent":  # the Python floor, same sandbox, right after direct
            floor = _dnsfloor(sb, tmp_path)
            try:
                fpids = {"proxy": floor.pid, "dnsmasq": dns_proc.pid}
                at = sb.node_ip("node1")
                runs.append(dnsperf(sb, CLIENT, at, datafile, RUN_S, DNS_FLOOR_LABEL,
                                    outstanding=DNS_OUTSTANDING, cpu_pids=fpids,
                                    port=DNS_FLOOR_PORT))
                runs.append(dnsperf_sliced(sb, CLIENT, at, datafile, DNS_FLOOR_LABEL,
                                           outstanding=DNS_OUTSTANDING, qps=DNS_FIXED_QPS,
                                           cpu_pids=fpids, port=DNS_FLOOR_PORT))
            finally:
                stop_popen(floor)
        slot.close()

    base = {r.load: r for r in runs if r.label == "no agent"}
    rows = [[r.label, r.load, f"{r.qps:,.0f}", f"{r.p50_ms:.3f}", f"{r.p99_ms:.3f}",
             f"{r.clean_slices}/{r.slices}" if r.slices else "-", _ms(r.p50_clean_ms),
             _ms(r.p99_clean_ms), f"{r.completed:,}", r.lost,
             cpu_cell(r.cpu_us_per_q, "proxy"), cpu_cell(r.cpu_us_per_q, "dnsmasq"),
             f"{ratio(r.qps, base[r.load].qps):.2f}",
             _added(r.p50_clean_ms, base[r.load].p50_clean_ms),
             _added(r.p50_ms, base[r.load].p50_ms),
             _added(r.p99_clean_ms, base[r.load].p99_clean_ms),
             _added(r.p99_ms, base[r.load].p99_ms),
             describe(r.stalls) if r.slices else "-",
             "-" if r.cpu_wait_pct is None else f"{r.cpu_wait_pct:.0f}"]
            for r in runs]
    print()
    print(table(f"DNS: frontend -> kube-dns {DNS_NAMES} (dnsperf -c 1, -v per-query latencies; "
                f"max rate -l {RUN_S}; {DNS_FIXED_QPS}/s as {SLICES} runs of {SLICE_S:g} s "
                "under the host-stall probe)",
                ["setup", "load", "q/s", "p50 ms (all slices)", "p99 ms (all slices)",
                 "clean slices", "p50 ms (clean)", "p99 ms (clean)", "completed", "lost",
                 "proxy CPU µs/q (user+sys)", "dnsmasq CPU µs/q (user+sys)", "q/s vs direct",
                 "p50 added ms (clean)", "p50 added ms (raw)", "p99 added ms (clean)",
                 "p99 added ms (raw)", "host stalls ms/slowdown",
                 "CPU wait % (PSI some)"], rows))
    for r in runs:
        if r.slices:  # where the p99 comes from: one bad slice or all of them
            print(f"{r.label}, per-slice p99 ms (* = a host stall touched it): " + " ".join(
                f"{p:.2f}{'' if ok else '*'}" for p, ok in zip(r.slice_p99_ms, r.slice_clean,
                                                              strict=True)))
    summaries: dict[str, dict[str, float | None]] = {}
    for who in (DNS_FLOOR_LABEL, "l7gate DNS proxy"):
        prox = {r.load: r for r in runs if r.label == who}
        fixed = next(load for load in prox if load.startswith(f"{DNS_FIXED_QPS}/s"))
        mx, fx, fx0 = prox[f"max, {DNS_OUTSTANDING} outstanding"], prox[fixed], base[fixed]
        added = {"p50_raw": fx.p50_ms - fx0.p50_ms, "p99_raw": fx.p99_ms - fx0.p99_ms,
                 "p50_clean": _diff(fx.p50_clean_ms, fx0.p50_clean_ms),
                 "p99_clean": _diff(fx.p99_clean_ms, fx0.p99_clean_ms)}
        summaries[who] = added
        print(f"{who}: max {mx.qps:,.0f} q/s (target >= {TARGET_DNS_QPS:,}: "
              f"{verdict_word(mx.qps >= TARGET_DNS_QPS)}); at {DNS_FIXED_QPS:,}/s p50 added: "
              f"{_added_verdict(added['p50_clean'], TARGET_DNS_P50_ADDED_MS, 'clean slices')}, "
              f"{_added_verdict(added['p50_raw'], TARGET_DNS_P50_ADDED_MS, 'all slices (raw)')}"
              f"; p99 added: "
              f"{_added_verdict(added['p99_clean'], TARGET_DNS_P99_ADDED_MS, 'clean slices')} "
              f"(p99 {_ms(fx.p99_clean_ms)} ms), "
              f"{_added_verdict(added['p99_raw'], TARGET_DNS_P99_ADDED_MS, 'all slices (raw)')} "
              f"(p99 {fx.p99_ms:.3f} ms); clean slices {fx0.clean_slices}/{fx0.slices} no "
              f"agent, {fx.clean_slices}/{fx.slices} {who}")
    write_json("sandbox_dns_proxy", {"runs": runs, "names": list(DNS_NAMES),
                                     "seconds": RUN_S, "slices": SLICES, "slice_s": SLICE_S,
                                     "fixed_added_ms": summaries["l7gate DNS proxy"],
                                     "fixed_added_ms_by_setup": summaries})
    for r in runs:
        assert r.completed > 0, r
    # the DNS proxy was in the path: node1's agent worked for those queries (and the floor
    # for its own)
    assert all(r.cpu_us_per_q["proxy"] > 0 for r in runs if r.label != "no agent"), runs
