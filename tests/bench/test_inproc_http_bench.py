"""The HTTP proxy end to end in one process (make bench; tests/bench/inproc_http.py).

Prints CPU µs per request for the loop alone (`direct`), the least-Python floor and l7gate
(the product's server with the agent's callbacks and the README policies; `l7gate` with
the compiled hot path of proxy/compiled.py, `l7gate-pure` from the sources), and, when
valgrind is installed (scripts/setup.sh installs it), the instructions per request under
callgrind, which do not drift with the machine the way sandbox rates do, and the Python
bytecodes the proxy side executes per request (the eval loop's share of the time grows with
them faster than the instruction count shows). Asserts that every
run completed: each request answered 200 by the origin and, for l7gate, one flow per
request in the agent's ring (inproc_http.run raises otherwise). Asserts nothing on time.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.bench.inproc_http import ROOT, _env, bytecodes, instructions

pytestmark = pytest.mark.bench
MODES = ("direct", "floor", "l7gate-pure", "l7gate")


def test_inproc_http_loop() -> None:
    print("\n### HTTP end to end in one process (64 connections, distinct x-request-id)")
    for mode in MODES:
        out = subprocess.run([sys.executable, "-m", "tests.bench.inproc_http", "run", mode,
                              "6400", "64"], cwd=ROOT, capture_output=True, text=True,
                             timeout=300, env=_env(mode))
        assert out.returncode == 0, out.stderr[-2000:]
        print(out.stdout.strip())
    ops = {mode: bytecodes(mode) for mode in MODES[1:]}
    print("proxy-side Python bytecodes/request: "
          + ", ".join(f"{mode} {n:,}" for mode, n in ops.items()))
    assert all(n > 0 for n in ops.values())
    if shutil.which("valgrind") is None:
        print("valgrind not installed: no instruction counts")
        return
    counts = {mode: instructions(mode) for mode in MODES}
    print("| path | instructions/request (callgrind) | without the loop itself |")
    print("|---|---|---|")
    for mode in MODES:
        print(f"| {mode} | {counts[mode]:,} | {counts[mode] - counts['direct']:,} |")
    assert counts["direct"] > 0
