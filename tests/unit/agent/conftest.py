"""The README cluster as an endpoints file and an agent config (no datapath) for agent tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.daemon import AgentConfig

ROOT = Path(__file__).resolve().parents[3]

ENDPOINTS = """\
nodes:
  - {name: node1, ip: 192.0.2.11, pod_cidr: 10.244.1.0/24, uplink: eth0}
  - {name: node2, ip: 192.0.2.12, pod_cidr: 10.244.2.0/24, uplink: eth0}
pods:
  - {namespace: default, name: frontend, labels: {role: frontend}, ip: 10.244.1.10, node: node1,
     interface: lxc1}
  - {namespace: default, name: other, labels: {app: other}, ip: 10.244.1.11, node: node1,
     interface: lxc2}
  - {namespace: kube-system, name: kube-dns, labels: {k8s-app: kube-dns}, ip: 10.244.1.53,
     node: node1, interface: lxc3}
  - {namespace: default, name: my-api, labels: {app: my-api}, ip: 10.244.2.10, node: node2,
     interface: lxc4}
"""


@pytest.fixture
def cfg(tmp_path: Path) -> AgentConfig:
    """node2's agent with the two reference policies, datapath disabled."""
    ep = tmp_path / "endpoints.yaml"
    ep.write_text(ENDPOINTS)
    pol = tmp_path / "policies"
    pol.mkdir()
    for f in ("my-api-l7.yaml", "frontend-egress.yaml"):
        (pol / f).write_text((ROOT / "examples" / f).read_text())
    return AgentConfig(node_name="node2", endpoints=str(ep), policy_dir=str(pol),
                       state_dir=str(tmp_path / "state"), enable_datapath=False)
