"""The hostile HTTP corpus replayed through the real transparent proxy (root only).

tests/unit/proxy_http/hostile.yaml pins, for each case, what the client must get; there the
origin is a recording fake. Here every case goes from the frontend pod over a real TCP
connection to my-api:8080: the datapath redirects it to node2's proxy, which decides with
the README's policy (`GET /api/.*` from role=frontend). A case the proxy must reject may
never be answered by my-api's echo origin: that would mean the request reached it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.sandbox.api import Sandbox

pytestmark = pytest.mark.root
ROOT = Path(__file__).resolve().parents[2]
CORPUS = yaml.safe_load((ROOT / "tests/unit/proxy_http/hostile.yaml").read_text())["cases"]

# Runs inside the frontend pod: one connection per case, the first status line and whether
# the echo origin (which names itself "my-api" in a JSON body) answered anything.
CLIENT = r"""
import json, socket, sys
out = {}
for case in json.load(sys.stdin):
    s = socket.create_connection((sys.argv[1], 8080), timeout=5)
    s.settimeout(3)
    data = b""
    try:
        s.sendall(case["raw"].encode("latin-1"))
        while b"\r\n\r\n" not in data or (b"my-api" not in data and b"{" in data):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    finally:
        s.close()
    line = data.split(b"\r\n", 1)[0].decode("latin-1")
    status = int(line.split()[1]) if line.startswith("HTTP/1.") else 0
    out[case["name"]] = {"status": status, "origin": b'"server": "my-api"' in data}
print(json.dumps(out))
"""


def _raw(case: dict[str, Any]) -> str:
    if "raw_repeat" in case:
        r = case["raw_repeat"]
        return str(r["prefix"] + r["unit"] * r["count"] + r["suffix"])
    return str(case["raw"])


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict[str, Any]]]:
    d = tmp_path_factory.mktemp("policies")
    for f in ("my-api-l7.yaml", "frontend-egress.yaml"):
        shutil.copy(ROOT / "examples" / f, d / f)
    sb = Sandbox.up(policy_dir=d, wait_s=120)
    try:
        argv, env = sb.command("default/frontend",
                               [sys.executable, "-c", CLIENT, sb.pod_ip("default/my-api")])
        cases = [{"name": c["name"], "raw": _raw(c)} for c in CORPUS]
        done = subprocess.run(argv, env=env, input=json.dumps(cases), capture_output=True,
                              text=True, timeout=600, check=True)
        yield json.loads(done.stdout)
    finally:
        sb.down()


@pytest.mark.parametrize("case", CORPUS, ids=[c["name"] for c in CORPUS])
def test_case_through_the_real_proxy(results: dict[str, dict[str, Any]],
                                     case: dict[str, Any]) -> None:
    got = results[case["name"]]
    assert got["status"] == case["expect"], got
    if case["expect"] != 200:
        assert not got["origin"], "the origin answered a request the proxy had to stop"
