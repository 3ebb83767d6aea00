"""metrics/: declarations, flow->metric mapping, the BPF counters collector, the server.

Each test builds a fresh CollectorRegistry and asserts with get_sample_value.
"""

from __future__ import annotations

import collections
import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from metrics.collector import BpfCountersCollector, reason_name
from metrics.flows import FlowMetrics, flow_type_labels
from metrics.registry import (
    HTTP_METHODS,
    AgentMetrics,
    build_metrics,
    ips_returned_label,
    method_label,
    qtypes_label,
    status_label,
)
from metrics.server import parse_addr, start_metrics_server
from observe.flow import DnsInfo, EventKind, Flow, FlowVerdict, HttpInfo
from policy.errors import ConfigError

FLOWS_FILE = Path(__file__).parents[1] / "observe" / "flows.jsonl"


@pytest.fixture()
def reg() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture()
def m(reg: CollectorRegistry) -> AgentMetrics:
    return build_metrics(reg, bpf_map_names=["l7g_policy_v1"])


def recorded() -> list[Flow]:
    return [Flow.from_json(json.loads(x)) for x in FLOWS_FILE.read_text().splitlines() if x]


def test_preinitialised_series_exist_at_zero(reg: CollectorRegistry, m: AgentMetrics) -> None:
    g = reg.get_sample_value
    assert g("hubble_flows_processed_total", {"type": "Drop", "subtype": "",
                                              "verdict": "DROPPED"}) == 0
    assert g("hubble_drop_total", {"reason": "POLICY_DENIED", "protocol": "TCP"}) == 0
    assert g("hubble_http_requests_total", {"method": "GET", "protocol": "HTTP/1.1",
                                            "status": "200", "reporter": "server"}) == 0
    assert g("hubble_http_request_duration_seconds_count", {"method": "GET",
                                                            "reporter": "client"}) == 0
    assert g("hubble_dns_queries_total", {"rcode": "", "qtypes": "A", "ips_returned": "0"}) == 0
    for src in ("perf_event_ring_buffer", "observer_events_queue", "hubble_ring_buffer"):
        assert g("hubble_lost_events_total", {"source": src}) == 0
    for rule in ("received", "forwarded", "denied", "parse_errors"):
        assert g("cilium_policy_l7_total", {"rule": rule, "proxy_type": "dns"}) == 0
    assert g("cilium_proxy_upstream_reply_seconds_count",
             {"error": "allow", "protocol_l7": "http", "scope": "totalTime"}) == 0
    assert g("l7gate_policy_reloads_total", {"result": "failure"}) == 0
    assert g("l7gate_policy_reload_failures_total") == 0
    assert g("l7gate_policy_revision") == 0
    assert g("l7gate_fqdn_cache_entries") == 0
    assert g("l7gate_fqdn_ips_learned_total") == 0
    assert g("l7gate_fqdn_ips_expired_total") == 0
    assert g("l7gate_proxy_connections", {"protocol": "http"}) == 0
    assert g("l7gate_bpf_map_pressure", {"map_name": "l7g_policy_v1"}) == 0
    assert g("l7gate_flow_ring_lost_total") == 0


def test_label_helpers_are_closed() -> None:
    assert method_label("get") == "GET" and method_label("BREW") == "OTHER"
    assert set(method_label(x) for x in ("a", "PROPFIND", "")) == {"OTHER"}
    assert status_label(200) == "200" and status_label(418) == "4xx"
    assert status_label(0) == "other" and status_label(999) == "other"
    assert qtypes_label(["aaaa"]) == "AAAA" and qtypes_label(["TYPE65280"]) == "OTHER"
    assert qtypes_label([]) == "OTHER"
    assert ips_returned_label(3) == "3" and ips_returned_label(500) == "10+"
    assert "OTHER" in HTTP_METHODS and len(HTTP_METHODS) == 10


def test_recorded_flows_to_metrics(reg: CollectorRegistry, m: AgentMetrics) -> None:
    flows = recorded()
    fm = FlowMetrics(m)
    for f in flows:
        fm.observe(f)
    g = reg.get_sample_value
    total = sum(g("hubble_flows_processed_total", {"type": t, "subtype": s, "verdict": v}) or 0
                for t, s in {flow_type_labels(f) for f in flows}
                for v in {f.verdict.value for f in flows})
    assert total == len(flows)
    want_drops = sum(1 for f in flows if f.verdict is FlowVerdict.DROPPED
                     and f.kind is not EventKind.POLICY_VERDICT
                     and f.drop_reason_desc == "POLICY_DENIED" and f.http is None
                     and f.dns is None and f.protocol == "TCP")
    assert g("hubble_drop_total", {"reason": "POLICY_DENIED", "protocol": "TCP"}) == want_drops
    want_http: collections.Counter[tuple[str, str]] = collections.Counter(
        (f.http.method, str(f.http.code)) for f in flows
        if f.http is not None and f.l7_type == "RESPONSE")
    assert want_http
    for (method, code), n in want_http.items():
        assert sum(g("hubble_http_requests_total", {
            "method": method, "protocol": "HTTP/1.1", "status": code, "reporter": rep}) or 0
            for rep in ("client", "server")) == n


def _http_resp(code: int, method: str = "GET", latency_ms: int = 3,
               direction: str = "INGRESS") -> Flow:
    return Flow(time_ns=1, verdict=FlowVerdict.FORWARDED, kind=EventKind.L7,
                l7_type="RESPONSE", latency_ns=latency_ms * 1_000_000,
                traffic_direction=direction,
                http=HttpInfo(method=method, url="http://x/secret/path?id=9", code=code))


def test_http_v2_shape(reg: CollectorRegistry, m: AgentMetrics) -> None:
    fm = FlowMetrics(m)
    fm.observe(_http_resp(200))
    fm.observe(_http_resp(200))
    fm.observe(_http_resp(418, method="BREW", direction="EGRESS"))
    g = reg.get_sample_value
    assert g("hubble_http_requests_total", {"method": "GET", "protocol": "HTTP/1.1",
                                            "status": "200", "reporter": "server"}) == 2
    assert g("hubble_http_requests_total", {"method": "OTHER", "protocol": "HTTP/1.1",
                                            "status": "4xx", "reporter": "client"}) == 1
    assert g("hubble_http_request_duration_seconds_count",
             {"method": "GET", "reporter": "server"}) == 2
    assert g("hubble_http_request_duration_seconds_sum",
             {"method": "GET", "reporter": "server"}) == pytest.approx(0.006)
    # The proxies emit one record per exchange: the three responses stand for three
    # received+forwarded requests; a denied request (no code: not answered yet) is received
    # and denied, and is not an http_requests_total response.
    req = Flow(time_ns=1, verdict=FlowVerdict.DROPPED, kind=EventKind.L7, l7_type="REQUEST",
               http=HttpInfo(method="POST", url="/"), drop_reason_desc="POLICY_DENIED")
    fm.observe(req)
    assert g("cilium_policy_l7_total", {"rule": "received", "proxy_type": "http"}) == 4
    assert g("cilium_policy_l7_total", {"rule": "forwarded", "proxy_type": "http"}) == 3
    assert g("cilium_policy_l7_total", {"rule": "denied", "proxy_type": "http"}) == 1
    assert g("hubble_drop_total", {"reason": "POLICY_DENIED", "protocol": "HTTP"}) == 1


def test_no_path_qname_or_ip_becomes_a_label(reg: CollectorRegistry, m: AgentMetrics) -> None:
    fm = FlowMetrics(m)
    for f in recorded():
        fm.observe(f)
    fm.observe(_http_resp(200))
    text = "\n".join(
        f"{s.name}{s.labels}" for fam in reg.collect() for s in fam.samples)
    for bad in ("/secret", "api.stripe.com", "10.244.", "203.0.113", "evil"):
        assert bad not in text


def test_dns(reg: CollectorRegistry, m: AgentMetrics) -> None:
    """One record per exchange: a refused query is a DROPPED request, an answered one its
    response; each counts as one query."""
    fm = FlowMetrics(m)
    q = Flow(time_ns=1, verdict=FlowVerdict.DROPPED, kind=EventKind.L7, l7_type="REQUEST",
             dns=DnsInfo(query="evil.example.net.", qtypes=["A"], rcode=5),
             drop_reason_desc="POLICY_DENIED")
    r = Flow(time_ns=1, verdict=FlowVerdict.FORWARDED, kind=EventKind.L7, l7_type="RESPONSE",
             dns=DnsInfo(query="api.stripe.com.", qtypes=["A"], ips=["1.2.3.4", "5.6.7.8"]))
    nx = Flow(time_ns=1, verdict=FlowVerdict.FORWARDED, kind=EventKind.L7, l7_type="RESPONSE",
              dns=DnsInfo(query="nope.", qtypes=["AAAA"], rcode=3))
    for f in (q, r, nx):
        fm.observe(f)
    g = reg.get_sample_value
    assert g("hubble_dns_queries_total", {"rcode": "", "qtypes": "A", "ips_returned": "0"}) == 2
    assert g("hubble_dns_queries_total", {"rcode": "", "qtypes": "AAAA",
                                          "ips_returned": "0"}) == 1
    assert g("hubble_dns_responses_total", {"rcode": "No Error", "qtypes": "A",
                                            "ips_returned": "2"}) == 1
    assert g("hubble_dns_responses_total", {"rcode": "Non-Existent Domain", "qtypes": "AAAA",
                                            "ips_returned": "0"}) == 1
    assert g("cilium_policy_l7_total", {"rule": "received", "proxy_type": "dns"}) == 3
    assert g("cilium_policy_l7_total", {"rule": "forwarded", "proxy_type": "dns"}) == 2
    assert g("cilium_policy_l7_total", {"rule": "denied", "proxy_type": "dns"}) == 1
    assert g("hubble_flows_processed_total", {"type": "L7", "subtype": "DNS",
                                              "verdict": "FORWARDED"}) == 2


def test_policy_verdict_not_double_counted_as_drop(reg: CollectorRegistry,
                                                   m: AgentMetrics) -> None:
    fm = FlowMetrics(m)
    for kind in (EventKind.DROP, EventKind.POLICY_VERDICT):
        fm.observe(Flow(time_ns=1, verdict=FlowVerdict.DROPPED, kind=kind, protocol="TCP",
                        drop_reason_desc="POLICY_DENIED"))
    g = reg.get_sample_value
    assert g("hubble_drop_total", {"reason": "POLICY_DENIED", "protocol": "TCP"}) == 1
    assert g("hubble_flows_processed_total", {"type": "PolicyVerdict", "subtype": "",
                                              "verdict": "DROPPED"}) == 1
    fm.observe(Flow(time_ns=1, verdict=FlowVerdict.DROPPED, kind=EventKind.DROP,
                    protocol="GRE", drop_reason_desc="SOMETHING_NEW"))
    assert g("hubble_drop_total", {"reason": "UNKNOWN", "protocol": "Unknown"}) == 1


def test_trace_subtypes(reg: CollectorRegistry, m: AgentMetrics) -> None:
    fm = FlowMetrics(m)
    fm.observe(Flow(time_ns=1, verdict=FlowVerdict.REDIRECTED, kind=EventKind.TRACE))
    fm.observe(Flow(time_ns=1, verdict=FlowVerdict.FORWARDED, kind=EventKind.TRACE,
                    traffic_direction="EGRESS"))
    g = reg.get_sample_value
    assert g("hubble_flows_processed_total", {"type": "Trace", "subtype": "to-proxy",
                                              "verdict": "REDIRECTED"}) == 1
    assert g("hubble_flows_processed_total", {"type": "Trace", "subtype": "to-stack",
                                              "verdict": "FORWARDED"}) == 1


def test_lost_events(reg: CollectorRegistry, m: AgentMetrics) -> None:
    fm = FlowMetrics(m)
    fm.lost("HUBBLE_RING_BUFFER", 5)
    fm.lost("PERF_EVENT_RING_BUFFER", 2)
    fm.lost("weird", 1)
    fm.lost("HUBBLE_RING_BUFFER", 0)
    g = reg.get_sample_value
    assert g("hubble_lost_events_total", {"source": "hubble_ring_buffer"}) == 5
    assert g("hubble_lost_events_total", {"source": "perf_event_ring_buffer"}) == 2
    assert g("hubble_lost_events_total", {"source": "observer_events_queue"}) == 1
    assert g("l7gate_flow_ring_lost_total") == 5


def test_collector_reads_at_scrape_time(reg: CollectorRegistry) -> None:
    state: dict[str, Any] = {"drops": {133: 4, "POLICY_DENY": 1, -133: 2, 9999: 7},
                             "forwarded": 10}
    calls = []

    def reader() -> dict[str, Any]:
        calls.append(1)
        return state

    reg.register(BpfCountersCollector(reader))
    assert calls == []  # registering does not read the map
    g = reg.get_sample_value
    assert g("l7gate_datapath_drops_total", {"reason": "POLICY_DENIED"}) == 6
    assert g("l7gate_datapath_drops_total", {"reason": "POLICY_DENY"}) == 1
    assert g("l7gate_datapath_drops_total", {"reason": "UNKNOWN"}) == 7
    assert g("l7gate_datapath_forwarded_total") == 10
    state["forwarded"] = 11
    assert g("l7gate_datapath_forwarded_total") == 11


def test_collector_survives_a_failing_reader(reg: CollectorRegistry) -> None:
    def reader() -> dict[str, Any]:
        raise OSError("map gone")

    reg.register(BpfCountersCollector(reader))
    assert reg.get_sample_value("l7gate_datapath_forwarded_total") is None
    assert (reg.get_sample_value("l7gate_datapath_read_errors_total") or 0) >= 1


def test_reason_name() -> None:
    assert reason_name(181) == "POLICY_DENY"
    assert reason_name("-133") == "POLICY_DENIED"
    assert reason_name("policy_denied") == "POLICY_DENIED"
    assert reason_name("nope") == "UNKNOWN"


def test_server_serves_metrics_and_stops(reg: CollectorRegistry, m: AgentMetrics) -> None:
    m.policy_revision.set(7)
    srv = start_metrics_server("127.0.0.1:0", reg)
    try:
        assert srv.port > 0
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/metrics", timeout=10) as r:
            body = r.read().decode()
        assert "l7gate_policy_revision 7.0" in body
        assert "hubble_drop_total" in body
    finally:
        srv.stop()
        srv.stop()  # idempotent
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/metrics", timeout=2)


def test_parse_addr() -> None:
    assert parse_addr(":9965") == ("0.0.0.0", 9965)
    assert parse_addr("[::1]:0") == ("::1", 0)
    assert parse_addr("127.0.0.1:9962") == ("127.0.0.1", 9962)
    for bad in ("9965", "host:", "h:99999", "h:x"):
        with pytest.raises(ConfigError):
            parse_addr(bad)


def test_denied_request_answered_by_the_proxy_counts_as_its_403(
        reg: CollectorRegistry, m: AgentMetrics) -> None:
    fm = FlowMetrics(m)
    fm.observe(Flow(time_ns=1, verdict=FlowVerdict.DROPPED, kind=EventKind.L7,
                    l7_type="REQUEST", traffic_direction="INGRESS",
                    http=HttpInfo(method="PUT", url="/api/x", code=403),
                    drop_reason_desc="POLICY_DENIED"))
    g = reg.get_sample_value
    assert g("hubble_http_requests_total", {"method": "PUT", "protocol": "HTTP/1.1",
                                            "status": "403", "reporter": "server"}) == 1
    assert g("cilium_policy_l7_total", {"rule": "denied", "proxy_type": "http"}) == 1
