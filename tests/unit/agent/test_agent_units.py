"""The agent's pure parts: endpoints file, cluster state, flow enrichment, status verdict."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from agent.daemon import Agent, AgentConfig, read_cluster_state
from agent.endpoints import load_endpoints
from agent.flows import flow_from_event, policy_of_rule, tcp_flag_names
from agent.state import NO_REDIRECT_RULE
from policy.errors import ConfigError, PolicyError
from policy.types import Direction, DropReason, HttpRequestMeta, L4Action, Proto
from redirect.events import DatapathEvent, Hook
from tests.unit.agent.conftest import ENDPOINTS  # noqa: F401  (kept importable)

A = ipaddress.IPv4Address

@pytest.mark.parametrize(("body", "needle"), [
    ("nodes: [{name: n1, ip: 1.2.3}]", ":1: nodes[0].ip: invalid IPv4 address"),
    ("nodes: [{name: n1}]", ":1: nodes[0]: missing field 'ip'"),
    ("nodes: [{name: n1, ip: 192.0.2.1}]\npods:\n  - {namespace: a, name: b, ip: 10.0.0.1, "
     "node: n9}", ":3: pods[0].node: unknown node 'n9'"),
    ("nodes: [{name: n1, ip: 192.0.2.1, pod_cidr: 10.0.0.0/33}]", "invalid CIDR"),
    ("nodes: [{name: n1, ip: 192.0.2.1}]\npods:\n  - {namespace: a, name: b, ip: 10.0.0.1, "
     "node: n1}\n  - {namespace: a, name: c, ip: 10.0.0.1, node: n1}", ":4: pods[1].ip: duplicate"),
    ("nodes: [{name: n1, ip: 192.0.2.1, colour: red}]", "unknown field 'colour'"),
    ("nodes: [", "YAML syntax error"),
])
def test_endpoints_file_errors_name_file_and_line(tmp_path: Path, body: str, needle: str) -> None:
    path = tmp_path / "ep.yaml"
    path.write_text(body)
    with pytest.raises(ConfigError) as info:
        load_endpoints(path)
    assert str(path) in str(info.value) and needle in str(info.value)


def test_endpoint_ids_are_stable_and_unique(cfg: AgentConfig) -> None:
    a = load_endpoints(cfg.endpoints)
    b = load_endpoints(cfg.endpoints)
    ids = [p.endpoint.endpoint_id for p in a.pods]
    assert ids == [p.endpoint.endpoint_id for p in b.pods]
    assert sorted(ids) == [1, 2, 3, 4]


def test_state_decides_the_readme_example(cfg: AgentConfig) -> None:
    st, warnings = read_cluster_state(cfg, 1)
    assert any("my-api-l7.yaml:" in w for w in warnings)  # HTTP rule on a port without protocol
    frontend, other, my_api = A("10.244.1.10"), A("10.244.1.11"), A("10.244.2.10")
    v, d = st.decide_http(frontend, my_api, 8080, HttpRequestMeta("GET", "/api/users", "x"))
    assert v.is_allowed and d is Direction.INGRESS
    v, _ = st.decide_http(frontend, my_api, 8080, HttpRequestMeta("POST", "/api/users", "x"))
    assert v.reason is DropReason.POLICY_DENIED and v.rule_id == "default/my-api-l7:ingress[0]"
    # `other` never reaches the proxy (dropped in the kernel); if it did, the proxy denies
    v, _ = st.decide_http(other, my_api, 9999, HttpRequestMeta("GET", "/api/users", "x"))
    assert not v.is_allowed and v.rule_id in (NO_REDIRECT_RULE, "default-deny")
    entries = st.policy_entries()[st.local[0].endpoint.endpoint_id]
    assert any(e.action is L4Action.REDIRECT_HTTP and e.port_lo == 8080 for e in entries)
    assert st.enforcement() == {st.local[0].endpoint.endpoint_id: (True, False)}


def test_state_dns_decision_on_node1(cfg: AgentConfig) -> None:
    cfg.node_name = "node1"
    st, _ = read_cluster_state(cfg, 1)
    v = st.decide_dns(A("10.244.1.10"), A("10.244.1.53"), 53, "API.Stripe.com")
    assert v.is_allowed and v.rule_id == "default/frontend-egress:egress[0]"
    # a pod on another node cannot be decided here: fail closed
    assert not st.decide_dns(A("10.244.2.10"), A("10.244.1.53"), 53, "x.com").is_allowed


def test_dns_verdict_memo_agrees_and_stays_bounded(cfg: AgentConfig) -> None:
    """Memoized verdicts equal fresh ones, and a pod spraying names cannot grow the memo
    past its bound."""
    from agent.state import DNS_VERDICT_CACHE_MAX
    cfg.node_name = "node1"
    st, _ = read_cluster_state(cfg, 1)
    fresh, _ = read_cluster_state(cfg, 1)
    for name in ("api.stripe.com", "x.internal.example.com", "evil.example.net", "a..b"):
        first = st.decide_dns("10.244.1.10", "10.244.1.53", 53, name)
        assert st.decide_dns("10.244.1.10", "10.244.1.53", 53, name) == first
        assert fresh.decide_dns("10.244.1.10", "10.244.1.53", 53, name) == first
    for i in range(DNS_VERDICT_CACHE_MAX + 10):
        st.decide_dns("10.244.1.10", "10.244.1.53", 53, f"n{i}.spray.example.")
        assert len(st._dns_verdicts) <= DNS_VERDICT_CACHE_MAX


def test_broken_policy_on_reload_keeps_the_old_state(cfg: AgentConfig) -> None:
    agent = Agent(cfg)
    agent.state = agent._initial_state()
    before = agent.state
    (Path(cfg.policy_dir) / "bad.yaml").write_text(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: x}\n"
        "spec:\n  endpointSelector: {}\n  ingress:\n    - toPorts: [{ports: [{port: '99999'}]}]\n")
    assert agent.reload() is False
    assert agent.state is before
    assert agent.last_reload["result"] == "failure"
    assert any("bad.yaml:7" in e for e in agent.last_reload["errors"])
    (Path(cfg.policy_dir) / "bad.yaml").unlink()
    assert agent.reload() is True and agent.state is not before and agent.generation == 2


def test_sighup_reload_compiles_in_a_thread_and_swaps_on_the_loop(
        cfg: AgentConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    """The running agent's reload (reload_async) reads and compiles off the event loop, so
    the proxies keep serving; the swap happens on the loop; a broken file fails as reload()
    does, naming file and line, and keeps the old state."""
    import asyncio
    import threading

    from agent import daemon
    agent = Agent(cfg)
    agent.state = agent._initial_state()
    before = agent.state
    threads: list[threading.Thread] = []
    real = daemon.read_cluster_state

    def spying(*args: object) -> object:
        threads.append(threading.current_thread())
        return real(*args)  # type: ignore[arg-type]
    monkeypatch.setattr(daemon, "read_cluster_state", spying)

    async def run() -> tuple[bool, bool, threading.Thread]:
        ok = await agent.reload_async()
        swapped_here = agent.state is not before
        (Path(cfg.policy_dir) / "bad.yaml").write_text("kind: [")
        failed = await agent.reload_async()
        return ok and swapped_here, failed, threading.current_thread()

    ok, failed, loop_thread = asyncio.run(run())
    assert ok and failed is False and agent.generation == 2
    assert len(threads) == 2 and all(t is not loop_thread for t in threads)
    assert agent.last_reload["result"] == "failure"
    assert any("bad.yaml:1" in e for e in agent.last_reload["errors"])


def test_start_with_broken_policy_uses_the_last_good_copy(cfg: AgentConfig) -> None:
    Agent(cfg)._initial_state()  # keeps a copy of the good policy in the state dir
    (Path(cfg.policy_dir) / "my-api-l7.yaml").write_text("kind: [")
    agent = Agent(cfg)
    st = agent._initial_state()
    assert agent.last_reload["result"] == "failure"
    assert len(st.snapshot.docs) == 2
    fresh = AgentConfig(**{**cfg.__dict__, "state_dir": cfg.state_dir + "-empty"})
    with pytest.raises(PolicyError):
        Agent(fresh)._initial_state()


def test_status_is_unhealthy_without_proxies_and_healthy_with_them(cfg: AgentConfig) -> None:
    agent = Agent(cfg)
    agent.state = agent._initial_state()
    st = agent.status()
    assert not st["healthy"] and "HTTP proxy not running" in st["problems"]

    class _Stats:
        active_connections = 0
        requests: dict[str, int] = {}
        malformed_queries = overload_refusals = 0

    class _Proxy:
        port = 15001
        address = ("0.0.0.0", 15053)
        stats = _Stats()

    agent.http = agent.dns = _Proxy()
    st = agent.status()
    assert st["healthy"], st["problems"]
    assert st["endpoints"][0]["endpoint"] == "default/my-api"


def test_status_counts_collector_passes_per_generation(cfg: AgentConfig) -> None:
    import gc

    from agent.gctune import GcPolicy
    agent = Agent(cfg)
    agent.state = agent._initial_state()
    agent.gc_policy = GcPolicy(0.0)
    before = agent.status()["gc"]["collections"]
    gc.collect(0)
    after = agent.status()["gc"]["collections"]
    assert len(before) == len(after) == 3 and after[0] == before[0] + 1, (before, after)


def test_datapath_event_becomes_a_hubble_flow(cfg: AgentConfig) -> None:
    st, _ = read_cluster_state(cfg, 1)
    ev = DatapathEvent(time_ns=0, is_drop=True, reason=DropReason.POLICY_DENIED, verdict=None,
                       hook=Hook.TO_ENDPOINT, direction=Direction.INGRESS, ifindex=5,
                       endpoint_id=st.local[0].endpoint.endpoint_id, src=A("10.244.1.11"),
                       dst=A("10.244.2.10"), sport=40000, dport=8080, proto=int(Proto.TCP),
                       tcp_flags=0x02, src_identity=st.identities.identity_for_ip(
                           A("10.244.1.11")).id, dst_identity=0, rule_index=None,
                       fqdn_name_id=None, mark=0)
    flow = flow_from_event(ev, st, {}, lambda _e, _i: [], {})
    j = flow.to_json()
    assert j["verdict"] == "DROPPED" and j["drop_reason_desc"] == "POLICY_DENIED"
    assert j["source"]["pod_name"] == "other" and j["destination"]["pod_name"] == "my-api"
    assert j["l4"]["TCP"] == {"source_port": 40000, "destination_port": 8080,
                              "flags": {"SYN": True}}
    assert j["traffic_direction"] == "INGRESS" and j["node_name"] == "node2"


def test_small_helpers() -> None:
    assert policy_of_rule("default/my-api-l7:ingress[0]") == "default/my-api-l7"
    assert policy_of_rule("ccnp-name:egress[1]") == "ccnp-name"
    assert policy_of_rule("allow-localhost") == ""
    assert tcp_flag_names(0x12) == ["SYN", "ACK"]


def test_drop_towards_an_ip_whose_name_expired_says_so(cfg: AgentConfig) -> None:
    cfg.node_name = "node1"
    st, _ = read_cluster_state(cfg, 1)
    frontend = next(p.endpoint for p in st.local if p.endpoint.name == "frontend")
    ev = DatapathEvent(time_ns=0, is_drop=True, reason=DropReason.POLICY_DENIED, verdict=None,
                       hook=Hook.FROM_ENDPOINT, direction=Direction.EGRESS, ifindex=5,
                       endpoint_id=frontend.endpoint_id, src=frontend.ip,
                       dst=A("203.0.113.10"), sport=40000, dport=443, proto=int(Proto.TCP),
                       tcp_flags=0x02, src_identity=0, dst_identity=2, rule_index=None,
                       fqdn_name_id=None, mark=0)
    flow = flow_from_event(ev, st, {}, lambda _e, _i: [], {},
                           lambda _e, _i: ["api.stripe.com."])
    assert flow.drop_reason_desc == "FQDN_EXPIRED"
    assert flow.destination_names == ["api.stripe.com."]
    assert "api.stripe.com. expired" in flow.summary
    # still allowed by a live name, or never learned: a plain POLICY_DENIED
    plain = flow_from_event(ev, st, {}, lambda _e, _i: [], {}, lambda _e, _i: [])
    assert plain.drop_reason_desc == "POLICY_DENIED" and plain.destination_names == []


def test_fqdn_expiry_reads_a_conntrack_dump_made_in_a_thread(tmp_path: Path) -> None:
    """A name past its TTL while a connection still uses its IP: the expiry check asks
    conntrack every second. The dump is made in a thread before the check (not on the
    loop), only when an IP is due, and the check reads that snapshot."""
    import asyncio
    import ipaddress
    import threading
    import time as _time
    from types import SimpleNamespace

    from agent.fqdnowner import FqdnOwner
    from tests.unit.agent.conftest import FRONTEND_EGRESS_L7, agent_config
    agent = Agent(agent_config(tmp_path, "node1", frontend_stripe_l7=FRONTEND_EGRESS_L7))
    agent.prepare()  # node1: frontend is local there, with a toFQDNs rule
    now_s = [1000.0]
    agent.fqdn = FqdnOwner(None, str(tmp_path / "fq"), state=agent.current,
                           allow_private=True, grace_s=0.0, clock=lambda: now_s[0],
                           in_use=agent._in_use)
    agent.fqdn.learn("10.244.1.10", "api.stripe.com", [("203.0.113.10", 60)])
    ep = agent.current().local_endpoint_str("10.244.1.10")
    assert ep is not None
    dumps: list[threading.Thread] = []

    class _Ct:
        def items(self) -> list[SimpleNamespace]:
            dumps.append(threading.current_thread())
            return [SimpleNamespace(endpoint_id=ep.endpoint_id,
                                    src=ipaddress.IPv4Address("10.244.1.10"),
                                    dst=ipaddress.IPv4Address("203.0.113.10"),
                                    last_seen_ns=_time.clock_gettime_ns(_time.CLOCK_BOOTTIME))]
    agent.datapath = SimpleNamespace(maps=SimpleNamespace(ct=_Ct()))

    async def round_() -> threading.Thread:
        await agent._refresh_active_flows()
        assert agent.fqdn is not None
        agent.fqdn.gc()
        return threading.current_thread()

    loop_thread = asyncio.run(round_())
    assert dumps == []  # nothing due yet: no dump at all
    now_s[0] += 61  # past the TTL: the check will ask whether the connection lives
    loop_thread = asyncio.run(round_())
    assert len(dumps) == 1 and dumps[0] is not loop_thread  # dumped once, in a thread
    assert agent.fqdn.cache.ip_count == 1  # in use: kept (the gc read the snapshot)
