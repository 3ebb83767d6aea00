"""How long pods' DNS goes unanswered while their node's agent restarts (make bench).

The users' top complaint about Cilium's DNS proxy. A pod sends one query every 20 ms (each
with a 200 ms timeout) to kube-dns through the DNS proxy while `sandbox restart node1` runs
(SIGTERM, then a new agent, as a DaemonSet rolling update does); the longest run of
unanswered queries is the outage. Printed, never asserted against a number.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from agent.sandbox.api import Sandbox

pytestmark = pytest.mark.root
ROOT = Path(__file__).resolve().parents[2]

PROBE = r"""
import json, socket, struct, sys, time
server, duration = sys.argv[1], float(sys.argv[2])
q = lambda i: struct.pack(">HHHHHH", i & 0xFFFF, 0x0100, 1, 0, 0, 0) + \
    b"\x03api\x06stripe\x03com\x00" + struct.pack(">HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.2)
out, i, end = [], 0, time.time() + duration
while time.time() < end:
    i += 1
    t = time.time()
    try:
        s.sendto(q(i), (server, 53))
        while True:
            data = s.recv(4096)
            if data[:2] == q(i)[:2]:
                break
        out.append((t, True, data[3] & 0x0F))
    except OSError:
        out.append((t, False, -1))
    time.sleep(max(0.0, 0.02 - (time.time() - t)))
print(json.dumps(out))
"""


def _outage(samples: list[list[float]]) -> tuple[float, int]:
    longest, start, lost = 0.0, None, 0
    for t, ok, _rcode in samples:
        if not ok:
            lost += 1
            start = t if start is None else start
        elif start is not None:
            longest = max(longest, t - start)
            start = None
    return longest, lost


@pytest.mark.parametrize("flags", [(), ("--dns-unload-on-shutdown",)],
                         ids=["fail-closed", "fail-open"])
def test_dns_outage_across_agent_restart(tmp_path: Path, flags: tuple[str, ...]) -> None:
    for f in ("my-api-l7.yaml", "frontend-egress.yaml"):
        shutil.copy(ROOT / "examples" / f, tmp_path / f)
    sb = Sandbox.up(policy_dir=tmp_path, wait_s=300, agent_args=flags)
    try:
        argv, env = sb.command("default/frontend", ["python3", "-c", PROBE,
                                                    sb.pod_ip("kube-system/kube-dns"), "8"])
        probe = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True)
        time.sleep(2.0)
        t0 = time.monotonic()
        sb.restart("node1")
        restart_s = time.monotonic() - t0
        out, _ = probe.communicate(timeout=60)
        samples = json.loads(out)
        outage_s, lost = _outage(samples)
        answered = sum(1 for s in samples if s[1])
        assert answered > 0 and len(samples) > 20, (answered, len(samples))
        line = (f"DNS across an agent restart ({'/'.join(flags) or 'default: fail closed'}): "
                f"restart command {restart_s:.2f} s, longest gap {outage_s * 1000:.0f} ms, "
                f"{lost}/{len(samples)} queries unanswered")
        print("\n" + line)
        out_file = os.environ.get("L7GATE_BENCH_OUT")
        if out_file:
            with open(out_file, "a") as f:
                f.write(json.dumps({"restart_dns": {"flags": list(flags),
                                                    "outage_ms": outage_s * 1000,
                                                    "lost": lost, "sent": len(samples)}}) + "\n")
    finally:
        sb.down()
