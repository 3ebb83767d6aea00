"""Lazy L7 flows (observe/flow.py LazyFlow) against the eager reference path.

Eager: the proxy's builder (`http_flow` / `dns_flow`), the session's mutations, then
`enrich_l7` at emit. Lazy: `lazy_http_flow` / `_lazy_dns_flow`, the same mutations, then
`bind_l7` at emit, built only when read. Both must give the same Flow (to_json and ==) and
the same metrics, for generated inputs, on both nodes' states.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from agent.daemon import AgentConfig, read_cluster_state
from agent.flows import bind_l7, emit_l7_flow, emit_l7_flows, enrich_l7
from agent.state import ClusterState
from metrics.flows import FlowMetrics
from metrics.registry import build_metrics
from observe.flow import Flow, FlowVerdict, HttpInfo, LazyFlow
from proxy.dns import wire
from proxy.dns.session import DnsConnInfo, LazyDnsFlow, _lazy_dns_flow, dns_flow
from proxy.http.flows import LazyHttpFlow, http_flow, lazy_http_flow
from tests.unit.agent.conftest import ENDPOINTS, ROOT

IPS = ["10.244.1.10", "10.244.1.11", "10.244.1.53", "10.244.2.10", "203.0.113.10", "10.9.9.9"]
VERDICTS = [FlowVerdict.FORWARDED, FlowVerdict.DROPPED, FlowVerdict.ERROR]


@pytest.fixture(scope="module")
def states(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ClusterState]:
    tmp: Path = tmp_path_factory.mktemp("lazy")
    (tmp / "endpoints.yaml").write_text(ENDPOINTS)
    (tmp / "policies").mkdir()
    for f in ("my-api-l7.yaml", "frontend-egress.yaml"):
        (tmp / "policies" / f).write_text((ROOT / "examples" / f).read_text())
    out = {}
    for node in ("node1", "node2"):
        cfg = AgentConfig(node_name=node, endpoints=str(tmp / "endpoints.yaml"),
                          policy_dir=str(tmp / "policies"), state_dir=str(tmp / "s"),
                          enable_datapath=False)
        out[node] = read_cluster_state(cfg, 1)[0]
    return out


def _names(endpoint_id: int, ip: str) -> list[str]:
    """Stands for the FQDN cache: some IPs have names (a fresh list per call, as the cache)."""
    return ["api.stripe.com."] if ip.startswith("203.") else []


http_inputs = st.fixed_dictionaries({
    "time_ns": st.integers(0, 2**62), "verdict": st.sampled_from(VERDICTS),
    "src": st.sampled_from(IPS), "dst": st.sampled_from(IPS),
    "sport": st.integers(1, 65535), "dport": st.integers(1, 65535),
    "l7_type": st.sampled_from(["REQUEST", "RESPONSE"]), "latency": st.integers(0, 10**10),
    "method": st.sampled_from(["GET", "POST", "BREW", ""]),
    "url": st.text(max_size=20), "protocol": st.sampled_from(["HTTP/1.0", "HTTP/1.1"]),
    "code": st.sampled_from([0, 200, 403, 502, 503, 999]),
})


def _http_pair(d: dict[str, object]) -> tuple[Flow, Flow]:
    conn = SimpleNamespace(src_ip=d["src"], dst_ip=d["dst"], src_port=d["sport"],
                           dst_port=d["dport"])
    req = SimpleNamespace(method=d["method"], url=d["url"], protocol=d["protocol"])
    verdict = d["verdict"]
    eager = http_flow(d["time_ns"], verdict, d["src"], d["dst"], d["sport"],  # type: ignore[arg-type]
                      d["dport"], d["l7_type"], d["latency"],  # type: ignore[arg-type]
                      "POLICY_DENIED" if verdict is FlowVerdict.DROPPED else "",
                      HttpInfo(d["method"], d["url"], d["protocol"], d["code"], []))  # type: ignore[arg-type]
    lazy = lazy_http_flow(d["time_ns"], verdict, conn, req, d["code"],  # type: ignore[arg-type]
                          d["l7_type"], d["latency"])  # type: ignore[arg-type]
    return eager, lazy


@given(d=http_inputs, node=st.sampled_from(["node1", "node2"]))
def test_lazy_http_flow_equals_eager(states: dict[str, ClusterState], d: dict[str, object],
                                     node: str) -> None:
    eager, lazy = _http_pair(d)
    assert isinstance(lazy, LazyHttpFlow) and not lazy._done
    enrich_l7(eager, states[node], _names)
    emit_l7_flow(lazy, states[node], _names)
    assert not lazy._done  # binding built nothing
    assert lazy.to_json() == eager.to_json()
    assert lazy._done and lazy == eager and eager == lazy


def _answer(ips: list[str], cnames: list[str], rrtypes: list[str], ttl: int,
            rcode: int) -> wire.Answer:
    return wire.Answer(7, rcode, False, [(ip, ttl) for ip in ips], cnames, ttl, rrtypes)


dns_inputs = st.fixed_dictionaries({
    "time_ns": st.integers(0, 2**62), "verdict": st.sampled_from(VERDICTS),
    "src": st.sampled_from(IPS), "dst": st.sampled_from(IPS), "sport": st.integers(1, 65535),
    "proto": st.sampled_from(["UDP", "TCP"]), "qname": st.sampled_from(
        ["api.stripe.com.", "x.internal.example.com.", "", "."]),
    "qtype": st.sampled_from([None, 1, 28, 5, 255, 65000]), "rcode": st.integers(0, 15),
    "latency": st.integers(0, 10**9), "is_reply": st.booleans(),
    "answer": st.none() | st.tuples(
        st.lists(st.sampled_from(IPS), max_size=4), st.lists(st.text(max_size=8), max_size=2),
        st.lists(st.sampled_from(["A", "AAAA", "CNAME"]), max_size=3), st.integers(0, 3600)),
    "rule_id": st.sampled_from([None, "", "default/frontend-egress:egress[0]", "cluster-rule"]),
    # what DnsSession does to the flow after _flow (drops, explicit deny rules)
    "drop_reason": st.sampled_from([None, "POLICY_DENY", "INVALID_PACKET_DROPPED"]),
    "denied_by": st.sampled_from([None, ["default/no-evil"]]),
})


def _dns_pair(d: dict[str, object]) -> tuple[Flow, Flow]:
    info = DnsConnInfo(d["src"], d["sport"], d["dst"], 53, d["proto"])  # type: ignore[arg-type]
    qtype = d["qtype"]
    query = None if qtype is None else wire.Query(7, 0x100, (), d["qname"], qtype, 1, 12)  # type: ignore[arg-type]
    a = d["answer"]
    answer = None if a is None else _answer(*a, rcode=d["rcode"])  # type: ignore[misc, arg-type]
    args = (info, d["qname"], query, d["rcode"], d["verdict"], d["latency"], d["is_reply"],
            answer, d["rule_id"])
    eager = dns_flow(d["time_ns"], *args)  # type: ignore[arg-type]
    lazy = _lazy_dns_flow(d["time_ns"], *args)  # type: ignore[arg-type]
    for f in (eager, lazy):
        if d["drop_reason"] is not None:
            f.drop_reason_desc = d["drop_reason"]  # type: ignore[assignment]
        if d["denied_by"] is not None:
            f.denied_by = list(d["denied_by"])  # type: ignore[call-overload]
    return eager, lazy


@given(d=dns_inputs, node=st.sampled_from(["node1", "node2"]))
def test_lazy_dns_flow_equals_eager(states: dict[str, ClusterState], d: dict[str, object],
                                    node: str) -> None:
    eager, lazy = _dns_pair(d)
    assert isinstance(lazy, LazyDnsFlow) and not lazy._done
    enrich_l7(eager, states[node], _names)
    bind_l7(lazy, states[node], _names)  # type: ignore[arg-type]
    assert lazy.to_json() == eager.to_json()
    assert lazy == eager


@given(flows=st.lists(st.one_of(http_inputs.map(lambda d: ("http", d)),
                                dns_inputs.map(lambda d: ("dns", d))), max_size=12))
def test_metrics_from_lazy_flows_equal_eager(states: dict[str, ClusterState],
                                             flows: list[tuple[str, dict[str, object]]]) -> None:
    regs = CollectorRegistry(), CollectorRegistry()
    eager_m, lazy_m = FlowMetrics(build_metrics(regs[0])), FlowMetrics(build_metrics(regs[1]))
    lazies = []
    for kind, d in flows:
        eager, lazy = _http_pair(d) if kind == "http" else _dns_pair(d)
        eager_m.observe(enrich_l7(eager, states["node2"], _names))
        lazy_m.observe(emit_l7_flow(lazy, states["node2"], _names))
        lazies.append(lazy)
    # the same plans serve later flows with the same key: observe the batch again, in one
    # observe_many call (the agent's batched sink) on the lazy side
    unread = [lazy for lazy in lazies if isinstance(lazy, LazyFlow) and not lazy._done]
    lazy_m.observe_many(unread)
    for lazy in unread:
        eager_m.observe(Flow(**{n: getattr(lazy, n) for n in Flow.__dataclass_fields__}))

    def strip(text: bytes) -> list[bytes]:
        return [ln for ln in text.splitlines() if b"_created" not in ln]

    assert strip(generate_latest(regs[1])) == strip(generate_latest(regs[0]))


def test_materialised_once_and_kept(states: dict[str, ClusterState]) -> None:
    conn = SimpleNamespace(src_ip="10.244.1.10", dst_ip="203.0.113.10", src_port=1, dst_port=443)
    req = SimpleNamespace(method="GET", url="http://api.stripe.com/v1", protocol="HTTP/1.1")
    f = lazy_http_flow(5, FlowVerdict.FORWARDED, conn, req, 200, "RESPONSE", 10)  # type: ignore[arg-type]
    emit_l7_flow(f, states["node1"], _names)
    assert not f._done
    http = f.http
    assert f._done and http is f.http and f.http is not None and f.http.code == 200
    assert f.destination_names == ["api.stripe.com."]  # looked up at emit (bind)
    f.summary = "x"
    assert f.summary == "x" and f.to_json()["Summary"] == "x"


def test_unbound_lazy_flow_is_the_proxy_flow() -> None:
    """Read before any emit (session tests do): the proxy's own flow, not enriched."""
    conn = SimpleNamespace(src_ip="10.0.0.1", dst_ip="10.0.0.2", src_port=1, dst_port=80)
    req = SimpleNamespace(method="POST", url="http://h/a", protocol="HTTP/1.1")
    f = lazy_http_flow(9, FlowVerdict.DROPPED, conn, req, 403, "REQUEST", 0)  # type: ignore[arg-type]
    ref = http_flow(9, FlowVerdict.DROPPED, "10.0.0.1", "10.0.0.2", 1, 80, "REQUEST", 0,
                    "POLICY_DENIED", HttpInfo("POST", "http://h/a", "HTTP/1.1", 403, []))
    assert f == ref and f.node_name == "" and f.source.labels == []
    assert f.source is not f.destination  # fresh containers, as the eager builder gives


def test_emit_enriches_a_lazy_flow_read_before_emit(states: dict[str, ClusterState]) -> None:
    conn = SimpleNamespace(src_ip="10.244.1.10", dst_ip="10.244.2.10", src_port=1, dst_port=8080)
    req = SimpleNamespace(method="GET", url="http://h/api", protocol="HTTP/1.1")
    f = lazy_http_flow(9, FlowVerdict.FORWARDED, conn, req, 200, "RESPONSE", 7)  # type: ignore[arg-type]
    assert f.http is not None  # materialised unbound
    emit_l7_flow(f, states["node2"], _names)
    assert f.node_name == "node2" and f.destination.pod_name == "my-api"
    assert f.traffic_direction == "INGRESS"


# address pairs a batch draws from: few, so that HTTP and DNS flows of one pair follow
# each other (a local destination: HTTP is INGRESS there, DNS always EGRESS)
PAIRS = [("10.244.1.10", "10.244.2.10"), ("10.244.2.10", "203.0.113.10"),
         ("10.244.1.10", "10.244.1.53")]


@given(flows=st.lists(st.tuples(st.one_of(http_inputs.map(lambda d: ("http", d)),
                                          dns_inputs.map(lambda d: ("dns", d))),
                                st.integers(1, 3), st.booleans(), st.sampled_from(PAIRS)),
                      max_size=10),
       node=st.sampled_from(["node1", "node2"]))
def test_emit_l7_flows_is_emit_l7_flow_each(
        states: dict[str, ClusterState],
        flows: list[tuple[tuple[str, dict[str, object]], int, bool, tuple[str, str]]],
        node: str) -> None:
    """The batch binder (runs of one address pair and protocol share a lookup) against the
    one-flow binder: runs of repeated inputs, HTTP and DNS on the same pair, eager flows."""
    one, batch = [], []
    for (kind, d), repeat, eager, (src, dst) in flows:
        d = {**d, "src": src, "dst": dst}
        for _ in range(repeat):
            pair_a = _http_pair(d) if kind == "http" else _dns_pair(d)
            pair_b = _http_pair(d) if kind == "http" else _dns_pair(d)
            one.append(pair_a[0] if eager else pair_a[1])
            batch.append(pair_b[0] if eager else pair_b[1])
    for f in one:
        emit_l7_flow(f, states[node], _names)
    emit_l7_flows(batch, states[node], _names)
    assert [f.to_json() for f in batch] == [f.to_json() for f in one]
    lists = [f.destination_names for f in batch]  # each flow has its own list
    assert len({id(x) for x in lists}) == len(lists)


def test_a_run_of_one_pair_looks_its_names_up_once(states: dict[str, ClusterState]) -> None:
    """A local pod's egress flows to one address (api.stripe.com's) in one batch: one names
    lookup, and every flow carries the names in a list of its own."""
    calls: list[tuple[int, str]] = []

    def counted(endpoint_id: int, ip: str) -> list[str]:
        calls.append((endpoint_id, ip))
        return _names(endpoint_id, ip)

    conn = SimpleNamespace(src_ip="10.244.2.10", dst_ip="203.0.113.10", src_port=1,
                           dst_port=443)
    req = SimpleNamespace(method="GET", url="http://api.stripe.com/v1", protocol="HTTP/1.1")
    batch = [lazy_http_flow(i, FlowVerdict.FORWARDED, conn, req, 200, "RESPONSE", 7)  # type: ignore[arg-type]
             for i in range(5)]
    emit_l7_flows(batch, states["node2"], counted)
    assert len(calls) == 1
    assert [f.destination_names for f in batch] == [["api.stripe.com."]] * 5
    assert len({id(f.destination_names) for f in batch}) == 5
