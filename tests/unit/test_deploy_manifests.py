"""The deployment artefacts agree with the agent's code (pure: files only, no cluster).

`deploy/kubernetes/*.yaml` is parsed with PyYAML and checked for the facts that break a
node silently when they drift: the scrape annotations and the metrics port the agent
listens on, the liveness command, the host mounts bcc and the pinned maps need, the
privileges, and a config file the agent's own loader accepts. The Helm chart cannot be
rendered here (no helm binary in CI); its values are checked against the same facts.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.cli import build_parser
from agent.cmd_agent import CONFIG_KEYS, _config, run_status
from agent.daemon import AgentConfig
from agent.endpoints import load_endpoints
from agent.sandbox.api import AGENT_STOP_TIMEOUT_S, METRICS_PORT
from metrics.server import parse_addr

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
MANIFESTS = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
CHART = DEPLOY / "helm" / "l7gate"
# Host paths the agent cannot work without (ARCHITECTURE.md, "Mechanisms verified"):
# bcc compiles against the node kernel's headers; pinned maps live in bpffs.
HOST_MOUNTS = ("/sys/fs/bpf", "/lib/modules", "/usr/src")
PRIVILEGES = {"BPF", "NET_ADMIN", "SYS_ADMIN", "NET_RAW"}
# Set in config by the chart's template itself, so values.yaml must not carry them.
CHART_FIXED_KEYS = {"policy_dir", "endpoints", "api_socket", "state_dir", "pin_root",
                    "metrics_addr"}


def _docs() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in MANIFESTS:
        out += [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    return out


def _one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in _docs() if d["kind"] == kind
             and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _pod() -> dict[str, Any]:
    return dict(_one("DaemonSet")["spec"]["template"])


def _agent() -> dict[str, Any]:
    (container,) = _pod()["spec"]["containers"]
    return dict(container)


def _config_text() -> str:
    return str(_one("ConfigMap", "l7gate-config")["data"]["config.yaml"])


def _config_doc() -> dict[str, Any]:
    return dict(yaml.safe_load(_config_text()))


def _mounts() -> dict[str, dict[str, Any]]:
    """mountPath -> the volume behind it."""
    volumes = {v["name"]: v for v in _pod()["spec"]["volumes"]}
    return {m["mountPath"]: volumes[m["name"]] for m in _agent()["volumeMounts"]}


def _mount_of(path: str) -> tuple[str, dict[str, Any]]:
    """The longest mountPath that contains `path`."""
    best = max((m for m in _mounts() if path == m or path.startswith(m.rstrip("/") + "/")),
               key=len, default=None)
    assert best is not None, f"{path} is not on any volume mount"
    return best, _mounts()[best]


def test_manifests_exist_and_name_the_kinds_a_node_agent_needs() -> None:
    assert MANIFESTS, "deploy/kubernetes/*.yaml missing"
    kinds = {d["kind"] for d in _docs()}
    assert {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap",
            "DaemonSet"} <= kinds
    binding = _one("ClusterRoleBinding")
    assert binding["roleRef"]["name"] == _one("ClusterRole")["metadata"]["name"]
    sa = _one("ServiceAccount")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                    "namespace": sa["metadata"]["namespace"]}]
    assert _pod()["spec"]["serviceAccountName"] == sa["metadata"]["name"]
    # read-only: the agent must never be able to change the cluster
    for rule in _one("ClusterRole")["rules"]:
        assert set(rule["verbs"]) <= {"get", "list", "watch"}, rule


def test_scrape_annotations_match_the_agents_metrics_server() -> None:
    ann = _pod()["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true"
    assert ann["prometheus.io/port"] == str(METRICS_PORT)
    assert ann["prometheus.io/path"] == "/metrics"
    host, port = parse_addr(_config_doc()["metrics_addr"])
    assert port == METRICS_PORT and host == "0.0.0.0"  # every node address (hostNetwork)
    assert {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"} in \
        _agent()["ports"]


def test_probes_run_l7gate_status_which_exits_1_when_unhealthy() -> None:
    agent = _agent()
    for probe in ("livenessProbe", "startupProbe", "readinessProbe"):
        assert agent[probe]["exec"]["command"] == ["l7gate", "status"], probe
    args = build_parser().parse_args(["status"])
    assert args.func is run_status
    # bcc compiles at start; the startup probe must allow for it (Sandbox: up to 180 s)
    startup = agent["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 180


def test_status_finds_the_agent_socket_the_config_names() -> None:
    env = {e["name"]: e for e in _agent()["env"]}
    assert env["L7GATE_API_SOCKET"]["value"] == _config_doc()["api_socket"]
    mount, vol = _mount_of(_config_doc()["api_socket"])
    assert "hostPath" in vol and vol["hostPath"]["path"] == mount


def test_node_name_comes_from_the_downward_api(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {e["name"]: e for e in _agent()["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    monkeypatch.delenv("L7GATE_NODE", raising=False)
    monkeypatch.setenv("NODE_NAME", "worker-7")
    args = build_parser().parse_args(["agent"])
    assert args.node_name == "worker-7"


@pytest.mark.parametrize("path", HOST_MOUNTS)
def test_host_paths_are_mounted_at_the_same_place(path: str) -> None:
    vol = _mounts()[path]
    assert vol["hostPath"]["path"] == path
    assert vol["hostPath"].get("type") == "Directory"  # must exist on the node: fail loudly


def test_state_and_pins_live_on_host_paths_that_survive_restarts() -> None:
    cfg = _config_doc()
    for key in ("state_dir", "pin_root"):
        mount, vol = _mount_of(cfg[key])
        assert "hostPath" in vol, f"{key} {cfg[key]} is not on a hostPath"
        assert vol["hostPath"]["path"] == mount
    assert _mount_of(cfg["pin_root"])[0] == "/sys/fs/bpf"


def test_policies_and_endpoints_come_from_configmaps_in_the_manifest() -> None:
    cfg = _config_doc()
    names = {d["metadata"]["name"] for d in _docs() if d["kind"] == "ConfigMap"}
    for path in (cfg["policy_dir"], posixpath.dirname(cfg["endpoints"])):
        _, vol = _mount_of(path)
        assert vol["configMap"]["name"] in names
    endpoints_cm = _mount_of(cfg["endpoints"])[1]["configMap"]["name"]
    assert posixpath.basename(cfg["endpoints"]) in _one("ConfigMap", endpoints_cm)["data"]


def test_privileges_and_host_network() -> None:
    spec = _pod()["spec"]
    assert spec["hostNetwork"] is True
    sc = _agent()["securityContext"]
    caps = set(sc.get("capabilities", {}).get("add", []))
    assert sc.get("privileged") is True or PRIVILEGES <= caps, sc


def test_rolling_update_one_node_at_a_time() -> None:
    ds = _one("DaemonSet")
    strategy = ds["spec"]["updateStrategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] == 1
    # hostNetwork ports cannot be shared by a surge pod
    assert strategy["rollingUpdate"].get("maxSurge", 0) == 0
    assert _pod()["spec"]["terminationGracePeriodSeconds"] >= AGENT_STOP_TIMEOUT_S


def test_config_file_is_accepted_by_the_agents_loader(tmp_path: Path) -> None:
    cfg = _config_doc()
    assert set(cfg) <= CONFIG_KEYS, set(cfg) - CONFIG_KEYS
    container_args = _agent()["args"]
    assert container_args[0] == "--config"
    _, vol = _mount_of(container_args[1])
    assert posixpath.basename(container_args[1]) in \
        _one("ConfigMap", vol["configMap"]["name"])["data"]
    path = tmp_path / "config.yaml"
    path.write_text(_config_text(), encoding="utf-8")
    args = build_parser().parse_args(["agent", "--config", str(path), "--node-name", "n1"])
    built = _config(args)
    assert isinstance(built, AgentConfig)
    assert (built.node_name, built.state_dir, built.metrics_addr) == (
        "n1", cfg["state_dir"], cfg["metrics_addr"])


def test_example_endpoints_file_parses(tmp_path: Path) -> None:
    path = tmp_path / "endpoints.yaml"
    path.write_text(_one("ConfigMap", "l7gate-endpoints")["data"]["endpoints.yaml"],
                    encoding="utf-8")
    cluster = load_endpoints(path)
    assert cluster.nodes and cluster.pods


def test_dockerfile_runs_the_agent_with_the_manifests_config() -> None:
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^FROM debian:12", text, re.M)
    assert "python3-bpfcc" in text and "--system-site-packages" in text
    assert 'ENTRYPOINT ["l7gate", "agent"]' in text
    assert f'CMD ["--config", "{_agent()["args"][1]}"]' in text
    assert "COPY bpf " in text  # redirect/loader.py reads ../bpf next to the packages


def test_helm_values_agree_with_the_agent() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    assert chart["apiVersion"] == "v2" and chart["name"] == "l7gate"
    values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    assert values["metrics"]["port"] == METRICS_PORT
    assert set(values["agent"]) <= CONFIG_KEYS - CHART_FIXED_KEYS
    assert values["hostPaths"]["state"] == _config_doc()["state_dir"]
    plain = _config_doc()
    for key, val in values["agent"].items():
        assert plain[key] == val, key  # the plain manifest and the chart's defaults agree


def test_helm_templates_fix_the_same_paths_as_the_manifest() -> None:
    template = (CHART / "templates" / "configmap.yaml").read_text(encoding="utf-8")
    for key in CHART_FIXED_KEYS - {"metrics_addr"}:
        assert f"{key}: {_config_doc()[key]}\n" in template, key
    assert 'metrics_addr: ":{{ .Values.metrics.port }}"' in template
    ds = (CHART / "templates" / "daemonset.yaml").read_text(encoding="utf-8")
    assert 'exec: {command: ["l7gate", "status"]}' in ds
    assert "prometheus.io/port: {{ .Values.metrics.port | quote }}" in ds
    for path in HOST_MOUNTS:
        assert f"hostPath: {{path: {path}, type: Directory}}" in ds, path
