"""The README's story on a real sandbox: agents, BPF, proxies, observe (root only).

One sandbox for the module (building it and compiling BPF costs ~5 s). Tests that change
the policy directory restore it in a finalizer and reload, so the order does not matter.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.sandbox.api import Sandbox
from tests.unit.agent.conftest import FRONTEND_EGRESS_L7

pytestmark = pytest.mark.root

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ("my-api-l7.yaml", "frontend-egress.yaml")
DNS_TTL_S = 3  # short, so that FQDN expiry is observable; the agents add a 5 s grace
CURL = ["curl", "-s", "-m", "3", "-w", "\\n%{http_code}"]


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("policies")
    for f in EXAMPLES:
        shutil.copy(ROOT / "examples" / f, d / f)
    return d


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("flow-export")


@pytest.fixture(scope="module")
def sb(policy_dir: Path, export_dir: Path) -> Iterator[Sandbox]:
    box = Sandbox.up(policy_dir=policy_dir, wait_s=120, dns_ttl_s=DNS_TTL_S,
                     agent_args=("--flow-export-file", str(export_dir / "flows-{node}.jsonl")))
    try:
        yield box
    finally:
        box.down()


@pytest.fixture
def extra_policy(sb: Sandbox, policy_dir: Path) -> Iterator[Path]:
    """A policy file the test writes; removed (and the agents reloaded) afterwards."""
    path = policy_dir / "zz-test.yaml"
    yield path
    path.unlink(missing_ok=True)
    sb.reload()
    _wait_generation_stable(sb)


def _status(sb: Sandbox, node: str) -> dict:
    res = sb.exec(node, ["l7gate", "status", "-o", "json"])
    return json.loads(res.stdout)


def _wait_generation_stable(sb: Sandbox, timeout_s: float = 5.0) -> None:
    # SIGHUP is asynchronous: wait until both agents answer with a reload newer than the signal
    sent = time.time()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        times = [_status(sb, n)["policy"]["last_reload"].get("time", 0) for n in ("node1", "node2")]
        if all(t >= sent - 0.05 for t in times):
            return
        time.sleep(0.1)
    raise AssertionError("agents did not reload in time")


def reload(sb: Sandbox) -> None:
    sb.reload()
    _wait_generation_stable(sb)


def curl(sb: Sandbox, pod: str, url: str, *extra: str) -> tuple[int, str]:
    res = sb.exec(pod, [*CURL, *extra, url], timeout=20)
    body, _, code = res.stdout.rpartition("\n")
    return int(code or 0), body


def observe(sb: Sandbox, node: str, *args: str) -> list[dict]:
    res = sb.exec(node, ["l7gate", "observe", "-o", "json", "--last", "200", *args])
    assert res.returncode == 0, res.stderr
    return [json.loads(line)["flow"] for line in res.stdout.splitlines()
            if line.startswith('{"flow"')]


def wait_for(pred, timeout_s: float = 5.0, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def api_url(sb: Sandbox, path: str) -> str:
    return f"http://{sb.pod_ip('default/my-api')}:8080{path}"


# --- HTTP L7 ingress on my-api (node2), traffic from node1: cross-node ------------------------


def test_frontend_get_api_is_forwarded_with_headers_intact(sb: Sandbox) -> None:
    code, body = curl(sb, "default/frontend", api_url(sb, "/api/users?id=7"))
    assert code == 200
    echo = json.loads(body)
    assert echo["method"] == "GET" and echo["target"] == "/api/users?id=7"
    assert echo["server"] == "my-api"
    # the upstream connection carries the pod's own address (transparent), not the node's
    assert echo["client"].startswith(sb.pod_ip("default/frontend") + ":")


@pytest.mark.parametrize(("method", "path"), [("POST", "/api/users"), ("GET", "/admin"),
                                              ("DELETE", "/api/users/1")])
def test_frontend_other_requests_get_403(sb: Sandbox, method: str, path: str) -> None:
    code, body = curl(sb, "default/frontend", api_url(sb, path), "-X", method)
    assert (code, body.rstrip()) == (403, "Access denied")  # Cilium's body, CRLF-terminated
    flows = observe(sb, "node2", "--type", "l7", "--http-method", method)
    assert any(f["verdict"] == "DROPPED" and f["l7"]["http"]["url"].endswith(path)
               for f in flows)


def test_other_is_dropped_in_the_kernel_and_observe_says_why(sb: Sandbox) -> None:
    code, _ = curl(sb, "default/other", api_url(sb, "/api/users"), "-m", "1")
    assert code == 0  # never connected
    def drops() -> list[str]:
        res = sb.exec("node2", ["l7gate", "observe", "--verdict", "DROPPED", "--from-pod",
                                "default/other"])
        return [ln for ln in res.stdout.splitlines() if "default/my-api:8080" in ln]
    lines = wait_for(drops, 5, "the drop in observe")
    assert "default/other" in lines[-1] and "DROPPED (POLICY_DENIED)" in lines[-1]
    assert lines[-1].index("default/other") < lines[-1].index("default/my-api:8080")


def test_l7_flows_in_observe(sb: Sandbox) -> None:
    curl(sb, "default/frontend", api_url(sb, "/api/flows-check"))
    flows = observe(sb, "node2", "--type", "l7", "--protocol", "http")
    fwd = [f for f in flows if f["l7"]["http"]["url"].endswith("/api/flows-check")]
    assert fwd and fwd[-1]["verdict"] == "FORWARDED" and fwd[-1]["l7"]["http"]["code"] == 200
    assert fwd[-1]["source"]["pod_name"] == "frontend"
    assert fwd[-1]["destination"]["pod_name"] == "my-api"
    assert fwd[-1]["traffic_direction"] == "INGRESS"


# --- reload -------------------------------------------------------------------------------------

OTHER_ALLOWED = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: other-may-get, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: my-api}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: other}}]
      toPorts:
        - ports: [{port: "8080", protocol: TCP}]
          rules: {http: [{method: GET}]}
"""


def test_sighup_with_a_new_policy_changes_new_connections(sb: Sandbox, extra_policy: Path
                                                          ) -> None:
    assert curl(sb, "default/other", api_url(sb, "/x"), "-m", "1")[0] == 0
    extra_policy.write_text(OTHER_ALLOWED)
    reload(sb)
    assert curl(sb, "default/other", api_url(sb, "/x"))[0] == 200
    assert curl(sb, "default/other", api_url(sb, "/x"), "-X", "POST")[0] == 403


def test_sighup_with_a_broken_file_changes_nothing(sb: Sandbox, extra_policy: Path) -> None:
    before = _status(sb, "node2")["policy"]["revision"]
    extra_policy.write_text(OTHER_ALLOWED.replace("method: GET", "method: GET, bogus: 1"))
    reload(sb)
    st = _status(sb, "node2")
    assert st["policy"]["revision"] == before
    assert st["policy"]["last_reload"]["result"] == "failure"
    assert any(f"{extra_policy}:" in e and "bogus" in e
               for e in st["policy"]["last_reload"]["errors"])
    assert curl(sb, "default/other", api_url(sb, "/x"), "-m", "1")[0] == 0
    assert curl(sb, "default/frontend", api_url(sb, "/api/x"))[0] == 200


MY_API_EGRESS_DENY = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: my-api-no-egress, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: my-api}}
  egress: [{}]
"""


def test_replies_pass_the_destinations_default_deny_egress(sb: Sandbox, extra_policy: Path
                                                           ) -> None:
    extra_policy.write_text(MY_API_EGRESS_DENY)
    reload(sb)
    assert _status(sb, "node2")["policy"]["policies"] == 3
    assert curl(sb, "default/frontend", api_url(sb, "/api/reply"))[0] == 200
    # but my-api itself may not open connections any more
    res = sb.exec("default/my-api", ["curl", "-s", "-m", "1", "http://203.0.113.10:80/"])
    assert res.returncode != 0


# --- DNS + toFQDNs ------------------------------------------------------------------------------


def test_fqdn_allow_learned_from_dns_then_expired(sb: Sandbox) -> None:
    res = sb.exec("default/frontend", ["dig", "+short", "+time=2", "+tries=1",
                                       "api.stripe.com"])
    assert res.stdout.split() == [sb.external_ip("api.stripe.com")]
    # the first connection right after the answer passes (the map was written first)
    assert curl(sb, "default/frontend", "http://api.stripe.com:443/v1")[0] == 200
    rows = sb.exec("node1", ["l7gate", "fqdn", "cache", "list", "-o", "json"]).stdout
    assert "api.stripe.com." in rows
    # a port the selector does not allow stays closed
    assert curl(sb, "default/frontend", "http://api.stripe.com:80/", "-m", "1")[0] == 0
    # after TTL + grace with no open connection the IP is gone again
    def gone() -> bool:
        out = sb.exec("node1", ["l7gate", "fqdn", "cache", "list", "-o", "json"]).stdout
        return "api.stripe.com." not in out
    wait_for(gone, DNS_TTL_S + 5 + 8, "FQDN expiry")
    ip = sb.external_ip("api.stripe.com")  # by IP: curl must not resolve (and re-learn) it
    assert curl(sb, "default/frontend", f"http://{ip}:443/v1", "-m", "1")[0] == 0
    flows = wait_for(lambda: observe(sb, "node1", "--verdict", "DROPPED", "--to-ip", ip),
                     5, "the drop of the expired IP")
    assert flows[-1]["drop_reason_desc"] == "FQDN_EXPIRED"
    assert flows[-1]["destination_names"] == ["api.stripe.com."]


def test_evil_ip_without_dns_is_dropped_and_observed(sb: Sandbox) -> None:
    evil = sb.external_ip("evil.example.net")
    assert curl(sb, "default/frontend", f"http://{evil}:443/", "-m", "1")[0] == 0
    flows = wait_for(lambda: observe(sb, "node1", "--verdict", "DROPPED", "--to-ip", evil),
                     5, "evil drop")
    assert flows[-1]["drop_reason_desc"] == "POLICY_DENIED"
    assert flows[-1]["source"]["pod_name"] == "frontend"


def test_dns_flows_are_recorded(sb: Sandbox) -> None:
    sb.exec("default/frontend", ["dig", "+short", "x.internal.example.com"])
    flows = observe(sb, "node1", "--protocol", "dns", "--fqdn", "*.internal.example.com")
    assert any(f["l7"]["dns"]["query"] == "x.internal.example.com." for f in flows)


# --- restart --------------------------------------------------------------------------------------

HOLD_CONN = """
import socket, sys, time
s = socket.create_connection(("{ip}", 80), timeout=5)
def get():
    s.sendall(b"GET /hold HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
    data = s.recv(65536)
    return data.split(b"\\r\\n", 1)[0].decode()
print(get(), flush=True)
sys.stdin.readline()
print(get(), flush=True)
"""


def test_restart_keeps_open_connections_and_denies(sb: Sandbox) -> None:
    """SIGTERM then a new agent: an open L3/L4 connection survives; denied stays denied."""
    import subprocess
    ip = sb.external_ip("api.stripe.com")
    # frontend's learned allow for api.stripe.com:443; but a plain L3/L4 connection from
    # `other` (no egress policy) to an external server on 80 is what must survive
    argv, env = sb.command("default/other", ["python3", "-c", HOLD_CONN.format(ip=ip)])
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == "HTTP/1.1 200 OK"
        sb.restart("node1")
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "HTTP/1.1 200 OK"
    finally:
        proc.kill()
        proc.communicate()  # reaps it and closes its pipes
    evil = sb.external_ip("evil.example.net")
    assert curl(sb, "default/frontend", f"http://{evil}:443/", "-m", "1")[0] == 0
    st = _status(sb, "node1")
    assert st["healthy"]
    # the map sizes (walked in a thread, off the proxies' loop) and the loop's own lag
    maps = st["datapath"]["maps"]
    assert maps["ipcache"] > 0 and maps["policy"] > 0 and maps["ct"] > 0, maps
    assert st["event_loop"]["lag"]["samples"] > 0
    # busy polling as --busy-poll-us auto decides on this machine (CPUs, cgroup quota)
    from proxy.busypoll import default_max_us
    bp = st["event_loop"]["busy_poll"]
    assert bp["max_us"] == default_max_us()[0] and bp["enabled"] == (bp["max_us"] > 0), bp


def test_agent_down_means_redirected_traffic_fails_closed(sb: Sandbox) -> None:
    """No proxy listening: L7-redirected connections are dropped and counted, never passed."""
    import os
    import signal
    node2 = next(n for n in sb.status()["nodes"] if n["name"] == "node2")
    before = _status(sb, "node2")["datapath"]["drops"]
    os.kill(node2["agent_pid"], signal.SIGTERM)
    wait_for(lambda: sb.agent_state("node2") == "stopped", 10, "node2's agent to stop")
    try:
        code, _ = curl(sb, "default/frontend", api_url(sb, "/api/users"), "-m", "2")
        assert code == 0  # not forwarded without the proxy's verdict
    finally:
        sb.restart("node2")
    after = _status(sb, "node2")["datapath"]["drops"]
    closed = ("SOCKET_LOOKUP_FAILED", "PROXY_NOT_READY")
    assert sum(after.get(r, 0) for r in closed) > sum(before.get(r, 0) for r in closed)
    assert curl(sb, "default/frontend", api_url(sb, "/api/users"))[0] == 200


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_100mb_upload_and_download_stream_through_the_proxy(sb: Sandbox) -> None:
    """Bodies are streamed, not buffered: the proxy's memory does not grow by the body."""
    import hashlib
    size = 100 * 1024 * 1024
    agent_pid = next(n for n in sb.status()["nodes"] if n["name"] == "node2")["agent_pid"]
    rss_before = _rss_kib(agent_pid)
    res = sb.exec("default/frontend", [
        "sh", "-c", f"head -c {size} /dev/zero | curl -s -m 60 -X GET --data-binary @- "
        f"-H 'Content-Type: application/octet-stream' {api_url(sb, '/api/upload')}"],
        timeout=90)
    echo = json.loads(res.stdout)
    assert echo["body_bytes"] == size
    assert echo["body_sha256"] == hashlib.sha256(bytes(size)).hexdigest()
    res = sb.exec("default/frontend", [
        "curl", "-s", "-m", "60", "-o", "/dev/null", "-w", "%{http_code} %{size_download}",
        api_url(sb, f"/api/download?bytes={size}")], timeout=90)
    assert res.stdout.split() == ["200", str(size)]
    grown_kib = _rss_kib(agent_pid) - rss_before
    assert grown_kib < 32 * 1024, f"agent RSS grew by {grown_kib} KiB for a {size} B body"


def test_egress_l7_rules_towards_a_fqdn(sb: Sandbox, extra_policy: Path) -> None:
    """A pod's own egress HTTP rules, enforced by its node's proxy (node1), on a toFQDNs
    peer outside the cluster; the upstream leaves with the pod's address."""
    extra_policy.write_text(FRONTEND_EGRESS_L7)
    reload(sb)
    code, body = curl(sb, "default/frontend", "http://api.stripe.com/v1/charges")
    assert code == 200 and json.loads(body)["client"].startswith(
        sb.pod_ip("default/frontend") + ":")
    code, body = curl(sb, "default/frontend", "http://api.stripe.com/admin")
    assert (code, body.rstrip()) == (403, "Access denied")
    flows = observe(sb, "node1", "--type", "l7", "--protocol", "http", "--verdict", "DROPPED")
    assert any(f["l7"]["http"]["url"].endswith("/admin") and f["traffic_direction"] == "EGRESS"
               and f["source"]["pod_name"] == "frontend" for f in flows)


OTHER_DNS = (ROOT / "agent" / "demo_policies" / "other-dns.yaml").read_text()


def test_dns_query_outside_the_rules_is_refused_and_observed(sb: Sandbox, extra_policy: Path
                                                            ) -> None:
    extra_policy.write_text(OTHER_DNS)
    reload(sb)
    ok = sb.exec("default/other", ["dig", "+short", "+time=2", "+tries=1",
                                   "x.internal.example.com"])
    assert ok.stdout.split() == [sb.external_ip("x.internal.example.com")]
    for tcp in ([], ["+tcp"]):
        res = sb.exec("default/other", ["dig", *tcp, "+time=2", "+tries=1", "evil.example.net"])
        assert "status: REFUSED" in res.stdout, res.stdout
    flows = observe(sb, "node1", "--protocol", "dns", "--verdict", "DROPPED", "--from-pod",
                    "default/other")
    assert any(f["l7"]["dns"]["query"] == "evil.example.net." for f in flows)
    # a refused name teaches nothing
    cache = sb.exec("node1", ["l7gate", "fqdn", "cache", "list", "-o", "json"]).stdout
    assert "evil.example.net" not in cache


def test_flows_are_exported_as_json_lines(sb: Sandbox, export_dir: Path) -> None:
    curl(sb, "default/other", api_url(sb, "/api/export-check"), "-m", "1")
    path = export_dir / "flows-node2.jsonl"
    def exported() -> list[dict]:
        if not path.exists():
            return []
        rows = [json.loads(line)["flow"] for line in path.read_text().splitlines() if line]
        return [r for r in rows if r.get("source", {}).get("pod_name") == "other"
                and r["verdict"] == "DROPPED"]
    rows = wait_for(exported, 5, "the exported drop")
    assert rows[-1]["destination"]["pod_name"] == "my-api"
    assert rows[-1]["drop_reason_desc"] == "POLICY_DENIED"
