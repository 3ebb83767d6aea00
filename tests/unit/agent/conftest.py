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


def agent_config(tmp_path: Path, node: str = "node2", **extra_policies: str) -> AgentConfig:
    """`node`'s agent config on the README cluster with the two reference policies (and
    `extra_policies`, file stem -> YAML), datapath disabled."""
    ep = tmp_path / "endpoints.yaml"
    ep.write_text(ENDPOINTS)
    pol = tmp_path / "policies"
    pol.mkdir()
    for f in ("my-api-l7.yaml", "frontend-egress.yaml"):
        (pol / f).write_text((ROOT / "examples" / f).read_text())
    for stem, text in extra_policies.items():
        (pol / f"{stem}.yaml").write_text(text)
    return AgentConfig(node_name=node, endpoints=str(ep), policy_dir=str(pol),
                       state_dir=str(tmp_path / "state"), enable_datapath=False)


@pytest.fixture
def cfg(tmp_path: Path) -> AgentConfig:
    """node2's agent with the two reference policies, datapath disabled."""
    return agent_config(tmp_path)


@pytest.fixture
def cfg_agent(cfg: AgentConfig) -> object:
    """node2's agent, prepared (state, metrics), no datapath and no FQDN owner."""
    from agent.daemon import Agent
    agent = Agent(cfg)
    agent.prepare()
    return agent


# frontend may GET /v1/.* from api.stripe.com on port 80: an L7 rule whose peer is a name
# (the integration test that learns a name and then decides on it uses the same policy)
FRONTEND_EGRESS_L7 = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: frontend-stripe-l7, namespace: default}
spec:
  endpointSelector: {matchLabels: {role: frontend}}
  egress:
    - toFQDNs: [{matchName: api.stripe.com}]
      toPorts:
        - ports: [{port: "80", protocol: TCP}]
          rules: {http: [{method: GET, path: "/v1/.*"}]}
"""


@pytest.fixture
def fqdn_agent(tmp_path: Path) -> object:
    """node1's agent (frontend is local there) with FRONTEND_EGRESS_L7 too and a real
    FQDN owner (no maps) that has learned api.stripe.com -> 203.0.113.10 for frontend."""
    from agent.daemon import Agent
    from agent.fqdnowner import FqdnOwner
    agent = Agent(agent_config(tmp_path, "node1", frontend_stripe_l7=FRONTEND_EGRESS_L7))
    agent.prepare()
    agent.fqdn = FqdnOwner(None, str(tmp_path / "state"), state=agent.current,
                           allow_private=True)  # 203.0.113.0/24 is a documentation block
    agent.fqdn.learn("10.244.1.10", "api.stripe.com", [("203.0.113.10", 300)])
    endpoint = agent.current().local_endpoint_str("10.244.1.10")
    assert endpoint is not None
    assert agent.fqdn.cache.lookup_names(endpoint.endpoint_id, "203.0.113.10")
    return agent
