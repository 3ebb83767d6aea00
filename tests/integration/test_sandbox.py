"""`l7gate sandbox` for real, as root: namespaces, veths, dnsmasq, echo origins.

Agents are not started here (`--no-agent`; the lead runs the agent path): agent management
(start, wait for the API socket, reload, restart, down) is exercised with a stand-in agent
script that behaves like one (creates its socket, counts SIGHUPs, exits on SIGTERM).
Every test cleans up through `down`, also after a failure.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.sandbox import api
from agent.sandbox.api import Sandbox
from agent.sandbox.state import (
    ETC_NETNS_DIR,
    STATE_DIR,
    SandboxError,
    leftover_etc_netns,
    leftover_netns,
)

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox needs root (netns, veth)"),
]

L7GATE = [str(Path(sys.executable).parent / "l7gate")]
WAIT_FOR_OTHER_SANDBOX_S = 120.0  # another test run may hold the machine's one sandbox
CMD_TIMEOUT_S = 30.0
PODS = ["default/frontend", "default/other", "default/my-api", "kube-system/kube-dns"]
EXTERNAL = {"api.stripe.com": "203.0.113.10", "x.internal.example.com": "203.0.113.11",
            "evil.example.net": "203.0.113.12"}


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*L7GATE, "sandbox", *args], capture_output=True, text=True,
                          input=stdin, timeout=CMD_TIMEOUT_S, check=False)


def root_netns_snapshot() -> tuple[set[str], list[str]]:
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True,
                           check=True).stdout
    names = {line.split(":")[1].strip().split("@")[0] for line in links.splitlines()}
    routes = subprocess.run(["ip", "route", "show", "table", "all"], capture_output=True,
                            text=True, check=True).stdout.splitlines()
    return names, routes


def assert_all_gone(pids: list[int]) -> None:
    assert leftover_netns() == []
    assert leftover_etc_netns() == []
    assert not (STATE_DIR / "state.json").exists()
    for pid in pids:
        assert not _alive(pid), f"pid {pid} survived down"


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    before = root_netns_snapshot()
    sb = Sandbox.up(agents=False, wait_s=WAIT_FOR_OTHER_SANDBOX_S)
    try:
        sb.root_before = before  # type: ignore[attr-defined]
        yield sb
    finally:
        api.down()


def test_root_netns_gains_no_interface_or_route(sandbox: Sandbox) -> None:
    links_before, routes_before = sandbox.root_before  # type: ignore[attr-defined]
    links_after, routes_after = root_netns_snapshot()
    assert links_after - links_before == set()
    ours = ("10.244.", "192.0.2.", "203.0.113.")
    assert [r for r in routes_after if r not in routes_before and any(p in r for p in ours)
            ] == []
    for node in ("node1", "node2"):  # no way out of the sandbox: no default route
        out = sandbox.exec(node, ["ip", "route", "show", "default"]).stdout
        assert out.strip() == ""


def test_every_pod_reaches_every_pod_and_external_ip(sandbox: Sandbox) -> None:
    targets = [sandbox.pod_ip(p) for p in PODS] + list(EXTERNAL.values())
    failures = []
    for pod in PODS:
        for ip in targets:
            if ip == sandbox.pod_ip(pod):
                continue
            res = sandbox.exec(pod, ["ping", "-c", "1", "-W", "3", ip])
            if res.returncode != 0:
                failures.append(f"{pod} -> {ip}: {res.stdout}{res.stderr}")
    assert failures == []


def test_every_pod_curls_my_api_and_external_origins_by_name(sandbox: Sandbox) -> None:
    for pod in PODS:
        res = sandbox.exec(pod, ["curl", "-sS", "-m", "5",
                                 "http://my-api.default.svc.cluster.local:8080/hi"])
        assert res.returncode == 0, res.stderr
        doc = json.loads(res.stdout)
        assert doc["server"] == "my-api" and doc["target"] == "/hi"
        assert doc["client"].split(":")[0] == sandbox.pod_ip(pod)  # no NAT anywhere
        for name, ip in EXTERNAL.items():
            for port in (80, 443):
                res = sandbox.exec(pod, ["curl", "-sS", "-m", "5", f"http://{name}:{port}/x"])
                assert res.returncode == 0, f"{pod} -> {name}:{port}: {res.stderr}"
                doc = json.loads(res.stdout)
                assert (doc["server"], doc["local"]) == (name, f"{ip}:{port}")
    # The README's line, through the CLI.
    res = cli("exec", "default/frontend", "--", "curl", "-sS", "-m", "5",
              "http://api.stripe.com/x")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["server"] == "api.stripe.com"


@pytest.mark.parametrize("transport", ["+notcp", "+tcp"])
def test_dig_resolves_through_kube_dns(sandbox: Sandbox, transport: str) -> None:
    dns_ip = sandbox.pod_ip("kube-system/kube-dns")
    res = sandbox.exec("default/other", ["dig", transport, "+noall", "+answer", "+comments",
                                          "api.stripe.com", "A"])
    assert res.returncode == 0, res.stderr
    assert f"SERVER: {dns_ip}#53" in sandbox.exec(
        "default/other", ["dig", transport, "api.stripe.com"]).stdout  # via resolv.conf
    answer = [line.split() for line in res.stdout.splitlines()
              if line and not line.startswith(";")]
    assert answer == [["api.stripe.com.", "30", "IN", "A", "203.0.113.10"]]
    pod = sandbox.exec("default/frontend", ["dig", transport, "+short",
                                            "my-api.default.svc.cluster.local"])
    assert pod.stdout.split() == [sandbox.pod_ip("default/my-api")]
    missing = sandbox.exec("default/frontend", ["dig", transport, "nothing.example.org"])
    assert "status: NXDOMAIN" in missing.stdout


def test_status_json_shape(sandbox: Sandbox) -> None:
    res = cli("status", "-o", "json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert [(n["name"], n["ip"], n["agent"]) for n in doc["nodes"]] == [
        ("node1", "192.0.2.11", "disabled"), ("node2", "192.0.2.12", "disabled")]
    pods = {f"{p['namespace']}/{p['name']}": p for p in doc["pods"]}
    assert sorted(pods) == sorted(PODS)
    for p in doc["pods"]:
        assert {"namespace", "name", "labels", "ip", "node"} <= set(p)
    assert pods["default/frontend"]["labels"]["role"] == "frontend"
    assert pods["default/frontend"]["labels"]["io.kubernetes.pod.namespace"] == "default"
    assert (pods["default/my-api"]["ip"], pods["default/my-api"]["node"]) == (
        "10.244.2.10", "node2")
    assert {e["name"]: e["ip"] for e in doc["external"]} == EXTERNAL
    text = cli("status")
    assert text.returncode == 0 and "default/frontend" in text.stdout
    assert "api.stripe.com" in text.stdout


def test_exec_exit_codes_stdin_and_node_environment(sandbox: Sandbox) -> None:
    assert cli("exec", "default/frontend", "--", "sh", "-c", "exit 7").returncode == 7
    assert cli("exec", "external", "--", "true").returncode == 0
    echoed = cli("exec", "default/my-api", "--", "cat", stdin="through stdin\n")
    assert (echoed.returncode, echoed.stdout) == (0, "through stdin\n")
    bad = cli("exec", "default/nope", "--", "true")
    assert bad.returncode == 2 and "unknown target" in bad.stderr
    node = cli("exec", "node1", "--", "sh", "-c",
               'echo "$L7GATE_NODE $L7GATE_API_SOCKET"; ip -o -4 addr show dev eth0')
    assert node.returncode == 0, node.stderr
    first, addr = node.stdout.splitlines()[:2]
    assert first == f"node1 {STATE_DIR / 'node1' / 'api.sock'}"
    assert "192.0.2.11/24" in addr
    found = cli("exec", "node2", "--", "sh", "-c", "command -v l7gate")
    assert found.stdout.strip() == L7GATE[0]  # the venv's l7gate, venv active or not
    endpoints = (STATE_DIR / "endpoints.yaml").read_text()
    assert "uplink: eth0" in endpoints and "interface: lxc" in endpoints


def test_second_up_is_refused(sandbox: Sandbox) -> None:
    res = cli("up", "--no-agent")
    assert res.returncode == 1 and "already up" in res.stderr


def test_bad_topology_builds_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("nodes:\n  - name: n1\npods:\n  - {namespace: d, name: p, node: n9}\n")
    res = cli("up", str(bad), "--no-agent")
    assert res.returncode == 1
    assert f"{bad}:4: " in res.stderr and "unknown node 'n9'" in res.stderr


# -- runs after the module fixture's sandbox is gone (pytest keeps file order) -----------
def test_down_then_crashed_run_is_cleaned(sandbox: Sandbox) -> None:
    pids = [p.pid for p in sandbox.state.procs]
    assert pids and all(_alive(p) for p in pids)
    res = cli("down")
    assert res.returncode == 0, res.stderr
    assert_all_gone(pids)
    assert cli("down").returncode == 0  # idempotent
    # A crashed run: servers killed hard, state.json gone, namespaces left behind.
    res = cli("up", "--no-agent")
    assert res.returncode == 0, res.stderr
    state = json.loads((STATE_DIR / "state.json").read_text())
    pids = [p["pid"] for p in state["procs"]]
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    (STATE_DIR / "state.json").unlink()
    assert leftover_netns() != [] and leftover_etc_netns() != []
    refused = cli("up", "--no-agent")
    assert refused.returncode == 1 and "crashed sandbox" in refused.stderr
    res = cli("down")
    assert res.returncode == 0, res.stderr
    assert_all_gone(pids)
    assert not any(p.name.startswith("l7gsb-") for p in ETC_NETNS_DIR.glob("*"))


FAKE_AGENT = textwrap.dedent("""
    import argparse, os, signal, socket, sys, time
    p = argparse.ArgumentParser()
    for flag in ("--node-name", "--endpoints", "--policy-dir", "--api-socket",
                 "--state-dir", "--metrics-addr"):
        p.add_argument(flag, required=True)
    args, _ = p.parse_known_args(sys.argv[2:])  # argv[1] == "agent"; other flags: ignored
    hups = os.path.join(args.state_dir, "sighups")
    signal.signal(signal.SIGHUP, lambda *_: open(hups, "a").write("hup\\n"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(args.api_socket)
    print("fake agent", args.node_name, args.metrics_addr, flush=True)
    while True:
        time.sleep(3600)
""")


def test_agent_management_with_a_stand_in_agent(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    script = tmp_path / "fake_agent.py"
    script.write_text(FAKE_AGENT)
    monkeypatch.setattr(api, "_l7gate_argv", lambda: [sys.executable, str(script)])
    policies = tmp_path / "policies"
    with api.running(policy_dir=policies, agents=True, wait_s=WAIT_FOR_OTHER_SANDBOX_S,
                     dns_ttl_s=5) as sb:
        ttl = sb.exec("default/frontend", ["dig", "+noall", "+answer", "evil.example.net"])
        assert ttl.stdout.split()[1] == "5"  # the TTL override reached dnsmasq
        status = sb.status()
        assert [n["agent"] for n in status["nodes"]] == ["running", "running"]
        assert status["policy_dir"] == str(policies)
        log = (STATE_DIR / "node2" / "agent.log").read_text()
        assert "fake agent node2 192.0.2.12:9965" in log  # started inside with its flags
        first = sb.state.proc("agent:node1")
        assert first is not None
        assert sb.reload() == ["node1", "node2"]
        hups = STATE_DIR / "node1" / "state" / "sighups"
        deadline = time.monotonic() + CMD_TIMEOUT_S
        # the stand-in's handler creates the file before its write lands: wait for content
        while not (hups.exists() and hups.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert hups.read_text() == "hup\n"
        sb.restart("node1")
        second = sb.state.proc("agent:node1")
        assert second is not None and second.pid != first.pid and not _alive(first.pid)
        assert Sandbox.attach().agent_state("node1") == "running"
        os.kill(second.pid, signal.SIGKILL)
        deadline = time.monotonic() + CMD_TIMEOUT_S
        while _alive(second.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sb.agent_state("node1") == "stopped"
        pids = [p.pid for p in sb.state.procs]
    assert_all_gone(pids)


def test_agent_that_dies_at_start_fails_up_and_leaves_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = tmp_path / "broken_agent.py"
    script.write_text("import sys\nprint('cannot load BPF: broken on purpose')\nsys.exit(3)\n")
    monkeypatch.setattr(api, "_l7gate_argv", lambda: [sys.executable, str(script)])
    with pytest.raises(SandboxError, match="broken on purpose"):
        Sandbox.up(agents=True, wait_s=WAIT_FOR_OTHER_SANDBOX_S)
    assert_all_gone([])
