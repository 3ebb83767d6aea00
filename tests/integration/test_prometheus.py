"""A real Prometheus server scrapes the sandbox's agents (root only).

Contract: builds the default sandbox with the shipped examples, starts Debian's
`/usr/bin/prometheus` inside the sandbox's `external` netns (listening on that netns'
127.0.0.1, so nothing binds in the machine's root netns) with one scrape target per node
(`<node ip>:METRICS_PORT`, the address the sandbox gives each agent's `--metrics-addr`),
drives known traffic, and asks Prometheus' HTTP API (from inside the same netns) for the
series dashboards rely on. Everything it starts is stopped by its own Popen; temporary
directories are removed; the sandbox goes `down()` in a finalizer, also after a failure.

This is the end-to-end check that the agent's exposition format, metric names, labels and
listen address work with a real scraper, which a unit test of the registry cannot show.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.sandbox.api import METRICS_PORT, Sandbox

PROMETHEUS = Path("/usr/bin/prometheus")  # Debian package `prometheus` (scripts/setup.sh)

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not PROMETHEUS.exists(),
                       reason="needs /usr/bin/prometheus (Debian `prometheus`; run "
                              "scripts/setup.sh)"),
]

ROOT = Path(__file__).resolve().parents[2]
PROM_NETNS = "external"  # the sandbox's world netns: routes to every node's underlay IP
PROM_LISTEN = "127.0.0.1:9090"  # loopback of PROM_NETNS only; Prometheus' default port
SCRAPE_INTERVAL = "1s"  # so that series appear within a few seconds of the traffic
PROM_READY_TIMEOUT_S = 30.0  # TSDB open + first rule/scrape manager start: ~1-2 s when idle;
#                              slack for a 2-core machine shared with other test runs
SERIES_TIMEOUT_S = 30.0  # a handful of 1 s scrapes, with the same slack
POLL_S = 0.5
PROM_STOP_TIMEOUT_S = 10.0  # Prometheus flushes its head block on SIGTERM
CURL = ["curl", "-s", "-m", "3", "-w", "\\n%{http_code}"]


@pytest.fixture(scope="module")
def sb() -> Iterator[Sandbox]:
    policies = Path(tempfile.mkdtemp(prefix="l7gt-prom-policies-"))
    try:
        for f in sorted((ROOT / "examples").glob("*.yaml")):
            shutil.copy(f, policies / f.name)
        box = Sandbox.up(policy_dir=policies, wait_s=120)
        try:
            yield box
        finally:
            box.down()
    finally:
        shutil.rmtree(policies, ignore_errors=True)


def scrape_config(sb: Sandbox) -> dict[str, Any]:
    """One static target per node, labelled `node` so queries can pick a node."""
    targets = [{"targets": [f"{n['ip']}:{METRICS_PORT}"], "labels": {"node": n["name"]}}
               for n in sb.status()["nodes"]]
    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "scrape_timeout": SCRAPE_INTERVAL,
                   "evaluation_interval": SCRAPE_INTERVAL},
        "scrape_configs": [{"job_name": "l7gate", "metrics_path": "/metrics",
                            "static_configs": targets}],
    }


@pytest.fixture(scope="module")
def prometheus(sb: Sandbox) -> Iterator[Callable[[str], list[dict[str, Any]]]]:
    """Start Prometheus in the sandbox; yields `query(promql) -> result vector`."""
    work = Path(tempfile.mkdtemp(prefix="l7gt-prom-"))
    cfg = work / "prometheus.yml"
    cfg.write_text(yaml.safe_dump(scrape_config(sb)), encoding="utf-8")
    argv = [str(PROMETHEUS), f"--config.file={cfg}", f"--storage.tsdb.path={work / 'data'}",
            f"--web.listen-address={PROM_LISTEN}", "--log.level=warn"]
    cmd, env = sb.command(PROM_NETNS, argv)
    proc: subprocess.Popen[bytes] | None = None
    try:
        with open(work / "prometheus.log", "wb") as log:
            proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        wait_ready(sb, proc, work / "prometheus.log")
        yield lambda promql: prom_query(sb, promql)
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()  # only the process this fixture started
            try:
                proc.wait(timeout=PROM_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=PROM_STOP_TIMEOUT_S)
        shutil.rmtree(work, ignore_errors=True)


def prom_get(sb: Sandbox, path: str, *curl_args: str) -> tuple[int, str]:
    res = sb.exec(PROM_NETNS, [*CURL, *curl_args, f"http://{PROM_LISTEN}{path}"], timeout=20)
    body, _, code = res.stdout.rpartition("\n")
    return int(code or 0), body


def wait_ready(sb: Sandbox, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + PROM_READY_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"prometheus exited with {proc.returncode}:\n"
                                 f"{log.read_text(errors='replace')[-2000:]}")
        if prom_get(sb, "/-/ready")[0] == 200:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"prometheus not ready after {PROM_READY_TIMEOUT_S:.0f}s:\n"
                                 f"{log.read_text(errors='replace')[-2000:]}")
        time.sleep(POLL_S)


def prom_query(sb: Sandbox, promql: str) -> list[dict[str, Any]]:
    """Instant query through /api/v1/query; the result vector (asserts the API said ok)."""
    code, body = prom_get(sb, "/api/v1/query", "--get", "--data-urlencode", f"query={promql}")
    assert code == 200, f"{promql}: HTTP {code}: {body[:500]}"
    doc = json.loads(body)
    assert doc["status"] == "success" and doc["data"]["resultType"] == "vector", doc
    return list(doc["data"]["result"])


def by_node(vector: list[dict[str, Any]]) -> dict[str, float]:
    return {s["metric"].get("node", "?"): float(s["value"][1]) for s in vector}


def wait_values(query: Callable[[str], list[dict[str, Any]]], promql: str,
                ok: Callable[[dict[str, float]], bool]) -> dict[str, float]:
    """Poll `promql` (grouped by node) until `ok` holds; bounded by SERIES_TIMEOUT_S."""
    deadline = time.monotonic() + SERIES_TIMEOUT_S
    while True:
        values = by_node(query(promql))
        if ok(values):
            return values
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {promql}; last values {values}")
        time.sleep(POLL_S)


def curl(sb: Sandbox, pod: str, url: str, *extra: str) -> int:
    res = sb.exec(pod, [*CURL, *extra, url], timeout=20)
    return int(res.stdout.rpartition("\n")[2] or 0)


def test_prometheus_scrapes_every_agent(
        sb: Sandbox, prometheus: Callable[[str], list[dict[str, Any]]]) -> None:
    query = prometheus
    nodes = {n["name"] for n in sb.status()["nodes"]}
    assert nodes == {"node1", "node2"}
    up = wait_values(query, 'up{job="l7gate"}', lambda v: set(v) == nodes and
                     all(x == 1 for x in v.values()))
    assert up == {"node1": 1.0, "node2": 1.0}
    targets = {s["metric"]["instance"] for s in query('up{job="l7gate"}')}
    assert targets == {f"{sb.node_ip(n)}:{METRICS_PORT}" for n in nodes}


def test_traffic_becomes_hubble_series(
        sb: Sandbox, prometheus: Callable[[str], list[dict[str, Any]]]) -> None:
    query = prometheus
    api = f"http://{sb.pod_ip('default/my-api')}:8080"
    assert curl(sb, "default/frontend", f"{api}/api/users") == 200
    assert curl(sb, "default/frontend", f"{api}/api/users", "-X", "POST") == 403
    assert curl(sb, "default/other", f"{api}/api/users", "-m", "1") == 0  # dropped in the kernel

    def node2_positive(v: dict[str, float]) -> bool:
        return v.get("node2", 0.0) > 0

    wait_values(query, 'sum by (node) (hubble_drop_total{reason="POLICY_DENIED"})',
                node2_positive)
    wait_values(query, 'sum by (node) (hubble_flows_processed_total{verdict="DROPPED"})',
                node2_positive)
    wait_values(query, "sum by (node) (hubble_flows_processed_total)", node2_positive)
    wait_values(query, 'sum by (node) (hubble_http_requests_total{status="200"})',
                node2_positive)
    # the event loop's busy polling (--busy-poll-us auto) reports what it costs
    wasted = wait_values(query, "sum by (node) (l7gate_event_loop_busy_poll_wasted_seconds_total)",
                         lambda v: set(v) == {"node1", "node2"})
    assert all(x >= 0 for x in wasted.values()), wasted
    # The POST was denied: no 200 may be reported for it.
    post_200 = by_node(query('sum by (node) (hubble_http_requests_total'
                             '{method="POST",status="200"})'))
    assert post_200.get("node2", 0.0) == 0, post_200


def test_denied_request_counts_as_403(
        sb: Sandbox, prometheus: Callable[[str], list[dict[str, Any]]]) -> None:
    query = prometheus
    api = f"http://{sb.pod_ip('default/my-api')}:8080"
    ok_q = 'sum by (node) (hubble_http_requests_total{method="GET",status="200"})'
    denied_q = 'sum by (node) (hubble_http_requests_total{method="PUT",status="403"})'
    ok_before = wait_values(query, ok_q, lambda v: "node2" in v)["node2"]
    denied_before = by_node(query(denied_q)).get("node2", 0.0)
    # The denied PUT goes first, the allowed GET second, over the same node2 proxy: once
    # Prometheus has a scrape with the GET counted, the PUT's flow was published before it.
    assert curl(sb, "default/frontend", f"{api}/api/users", "-X", "PUT") == 403
    assert curl(sb, "default/frontend", f"{api}/api/users") == 200
    wait_values(query, ok_q, lambda v: v.get("node2", 0.0) > ok_before)
    denied_after = by_node(query(denied_q)).get("node2", 0.0)
    assert denied_after > denied_before, (denied_before, denied_after)


def test_sighup_reload_is_counted(
        sb: Sandbox, prometheus: Callable[[str], list[dict[str, Any]]]) -> None:
    query = prometheus
    promql = 'sum by (node) (l7gate_policy_reloads_total{result="success"})'
    nodes = {"node1", "node2"}
    before = wait_values(query, promql, lambda v: set(v) == nodes)
    assert sorted(sb.reload()) == sorted(nodes)
    after = wait_values(query, promql,
                        lambda v: all(v.get(n, 0.0) > before[n] for n in nodes))
    assert all(after[n] >= before[n] + 1 for n in nodes), (before, after)
    failures = by_node(query("sum by (node) (l7gate_policy_reload_failures_total)"))
    assert failures == {"node1": 0.0, "node2": 0.0}
    revs = by_node(query("l7gate_policy_revision"))  # the generation the reload set
    assert set(revs) == nodes and all(revs[n] >= 1 for n in nodes), revs
