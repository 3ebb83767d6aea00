"""The agent's per-query DNS callbacks (decide_dns, upstream_mark, FqdnOwner.learn's TTL
bounds): the shortcuts they take give exactly what the general paths give."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.daemon import Agent, AgentConfig, read_cluster_state
from agent.fqdnowner import REFRESH_COALESCE_S, FqdnOwner
from policy.types import Proto
from proxy.dns.session import DnsConnInfo
from redirect.marks import proxy_upstream_mark

FRONTEND, OTHER, KUBE_DNS = "10.244.1.10", "10.244.1.11", "10.244.1.53"


@pytest.fixture
def agent(cfg: AgentConfig) -> Agent:
    cfg.node_name = "node1"
    a = Agent(cfg)
    a.state, _ = read_cluster_state(cfg, 1)
    return a


@pytest.mark.parametrize("src", [FRONTEND, OTHER, "10.244.2.10", "192.0.2.99"])
@pytest.mark.parametrize("proto", ["UDP", "TCP"])
@pytest.mark.parametrize("qname", ["api.stripe.com.", "API.Stripe.COM", "evil.example.net."])
def test_decide_dns_matches_the_state_decision(agent: Agent, src: str, proto: str,
                                               qname: str) -> None:
    st = agent.current()
    want = st.decide_dns(src, KUBE_DNS, 53, qname, Proto.TCP if proto == "TCP" else Proto.UDP)
    conn = DnsConnInfo(src, 40000, KUBE_DNS, 53, proto)
    assert agent.decide_dns(conn, qname) == want
    assert agent.decide_dns(conn, qname) == want  # the memo hit gives the same verdict
    fresh, _ = read_cluster_state(agent.cfg, 2)  # nothing memoized yet
    assert fresh.decide_dns_conn(conn, qname) == want


def test_decide_dns_without_proto_attribute_is_udp(agent: Agent) -> None:
    class Conn:
        src_ip, dst_ip, dst_port = FRONTEND, KUBE_DNS, 53

    got = agent.decide_dns(Conn(), "api.stripe.com.")
    assert got == agent.current().decide_dns(FRONTEND, KUBE_DNS, 53, "api.stripe.com.",
                                             Proto.UDP)
    assert got.is_allowed


def test_upstream_mark_is_the_sources_identity_and_memoized(agent: Agent) -> None:
    st = agent.current()
    conn = DnsConnInfo(FRONTEND, 40000, KUBE_DNS, 53, "UDP")
    want = proxy_upstream_mark(st.peer_str(FRONTEND).identity.id)
    assert agent.upstream_mark(conn) == want
    assert st.memo[("upstream_mark", FRONTEND)] == want
    assert agent.upstream_mark(conn) == want


def test_callbacks_without_state_raise(cfg: AgentConfig) -> None:
    a = Agent(cfg)
    conn = DnsConnInfo(FRONTEND, 40000, KUBE_DNS, 53, "UDP")
    with pytest.raises(RuntimeError):
        a.decide_dns(conn, "api.stripe.com.")
    with pytest.raises(RuntimeError):
        a.upstream_mark(conn)


def test_learn_ttl_bounds_use_the_minimum_ttl(cfg: AgentConfig, tmp_path: Path) -> None:
    """Coalescing compares against max(ttl, min_ttl_s) over the answer: with min_ttl_s=60 an
    answer of TTLs 5 and 10 is granted 60 s, so the same answer again is coalesced, and one
    with a TTL above what was granted is learned again."""
    cfg.node_name = "node1"
    st, _ = read_cluster_state(cfg, 1)
    t = [1_000.0]
    (tmp_path / "fq").mkdir()
    fo = FqdnOwner(None, str(tmp_path / "fq"), state=lambda: st, allow_private=True,
                   min_ttl_s=60, clock=lambda: t[0])
    answer = [("203.0.113.11", 5), ("203.0.113.12", 10)]
    name = "x.internal.example.com"
    assert fo.learn(FRONTEND, name, answer) == 2
    learned_at, ips, earliest, _removals = fo._recent[(st.local_endpoint_str(FRONTEND).endpoint_id,
                                                       name)]  # type: ignore[union-attr]
    assert ips == frozenset(ip for ip, _ in answer) and earliest == learned_at + 60
    t[0] += REFRESH_COALESCE_S / 2
    assert fo.learn(FRONTEND, name, list(reversed(answer))) == 0  # order does not matter
    assert fo.coalesced_total == 1
    fo.learn(FRONTEND, name, [("203.0.113.11", 5), ("203.0.113.12", 120)])
    assert fo.coalesced_total == 1  # a longer TTL than granted: learned again
    assert fo.learn(FRONTEND, name, []) == 0


@pytest.mark.parametrize(("ttl", "granted"), [(5, 60), (60, 60), (90, 90)])
def test_learn_single_address_ttl_bound(cfg: AgentConfig, tmp_path: Path, ttl: int,
                                        granted: int) -> None:
    """The one-address branch grants max(ttl, min_ttl_s), as the general one does."""
    cfg.node_name = "node1"
    st, _ = read_cluster_state(cfg, 1)
    (tmp_path / "fq").mkdir()
    fo = FqdnOwner(None, str(tmp_path / "fq"), state=lambda: st, allow_private=True,
                   min_ttl_s=60, clock=lambda: 1_000.0)
    assert fo.learn(FRONTEND, "api.stripe.com", [("203.0.113.10", ttl)]) == 1
    ep = st.local_endpoint_str(FRONTEND)
    assert ep is not None
    learned_at, ips, earliest, _ = fo._recent[(ep.endpoint_id, "api.stripe.com")]
    assert ips == frozenset({"203.0.113.10"}) and earliest == learned_at + granted
    assert fo.learn(FRONTEND, "api.stripe.com", [("203.0.113.10", ttl)]) == 0
    assert fo.coalesced_total == 1
