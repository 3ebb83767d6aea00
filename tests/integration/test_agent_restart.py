"""Agent restarts (a DaemonSet rolling update) on a real sandbox (root only).

A long DNS TTL here, so that what was learned before the restart is still valid after it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.sandbox.api import Sandbox

pytestmark = pytest.mark.root

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    d = tmp_path_factory.mktemp("policies")
    for f in ("my-api-l7.yaml", "frontend-egress.yaml"):
        shutil.copy(ROOT / "examples" / f, d / f)
    box = Sandbox.up(policy_dir=d, wait_s=120, dns_ttl_s=300)
    try:
        yield box
    finally:
        box.down()


def _curl_code(sb: Sandbox, url: str) -> int:
    res = sb.exec("default/frontend", ["curl", "-s", "-m", "2", "-o", "/dev/null", "-w",
                                       "%{http_code}", url], timeout=20)
    return int(res.stdout or 0)


def _cache(sb: Sandbox) -> list[dict]:
    out = sb.exec("node1", ["l7gate", "fqdn", "cache", "list", "-o", "json"]).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_restart_keeps_fqdn_allowlist_and_cache(sb: Sandbox) -> None:
    ip = sb.external_ip("api.stripe.com")
    res = sb.exec("default/frontend", ["dig", "+short", "+time=2", "+tries=1", "api.stripe.com"])
    assert res.stdout.split() == [ip]
    assert _curl_code(sb, f"http://{ip}:443/") == 200
    before = [(r["name"], r["ip"]) for r in _cache(sb)]
    assert ("api.stripe.com.", ip) in before
    state_file = Path("/run/l7gate/sandbox/node1/state/fqdn-cache.json")
    assert "api.stripe.com." in state_file.read_text()  # written through, atomically
    sb.restart("node1")
    # restored before the proxies listen; by IP, so nothing is learned again
    assert [(r["name"], r["ip"]) for r in _cache(sb)] == before
    assert _curl_code(sb, f"http://{ip}:443/") == 200
    evil = sb.external_ip("evil.example.net")
    assert _curl_code(sb, f"http://{evil}:443/") == 0


def test_bpf_maps_are_adopted_not_recreated(sb: Sandbox) -> None:
    def policy_rows() -> tuple[set[int], list[dict]]:
        out = sb.exec("node2", ["l7gate", "bpf", "policy", "list", "-o", "json"]).stdout
        rows = json.loads(out)
        gens = {r.pop("generation") for r in rows}
        return gens, sorted(rows, key=json.dumps)
    gens, rows = policy_rows()
    assert any(r["action"] == "REDIRECT_HTTP" for r in rows) and len(gens) == 1
    sb.restart("node2")
    gens_after, rows_after = policy_rows()
    assert rows_after == rows
    # the new agent wrote the other generation of the SAME map: a recreated map would have
    # started from generation 0 again and landed on the same number as before
    assert gens_after == {1 - gens.pop()}
    assert _curl_code(sb, f"http://{sb.pod_ip('default/my-api')}:8080/api/x") == 200
