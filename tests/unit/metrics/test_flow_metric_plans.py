"""FlowMetrics' per-key plans for HTTP and DNS flows bump exactly what the general path bumps.

The fast path (a cached list of children per method/status/direction/...) is computed by
running the general path once with recorders, so the two must agree for every flow shape:
each flow is observed twice here (once through `observe`, twice from a warm plan) on one
registry and once per repetition through the general `_observe` on another, and every
sample of both registries must match.
"""

from __future__ import annotations

import itertools
from types import SimpleNamespace

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from metrics.flows import FlowMetrics
from metrics.registry import build_metrics
from observe.flow import DnsInfo, EventKind, Flow, FlowVerdict, HttpInfo
from proxy.http.flows import lazy_http_flow


def _samples(reg: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in reg.collect():
        for s in fam.samples:
            if s.name.endswith("_created"):
                continue
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _http_flows() -> list[Flow]:
    flows = []
    shapes = itertools.product(
        (FlowVerdict.FORWARDED, FlowVerdict.DROPPED, FlowVerdict.ERROR),
        ("REQUEST", "RESPONSE"), ("INGRESS", "EGRESS"), ("GET", "POST", "BREW"),
        (200, 403, 502, 0), (0, 1_500_000))
    for verdict, l7_type, direction, method, code, latency in shapes:
        flows.append(Flow(
            time_ns=1, verdict=verdict, kind=EventKind.L7, l7_type=l7_type,
            traffic_direction=direction, latency_ns=latency,
            drop_reason_desc="POLICY_DENIED" if verdict is FlowVerdict.DROPPED else "",
            http=HttpInfo(method, "/x", "HTTP/1.1", code, [])))
    return flows


def _fast_and_general(flows: list[Flow]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Observe `flows` twice through plans and through the general path on two registries;
    both must hold the same samples (returned)."""
    fast_reg, slow_reg = CollectorRegistry(), CollectorRegistry()
    fast, slow = FlowMetrics(build_metrics(fast_reg)), FlowMetrics(build_metrics(slow_reg))
    for _ in range(2):  # first round builds the plans, second uses them
        for f in flows:
            fast.observe(f)
            slow._observe(f)
    a, b = _samples(fast_reg), _samples(slow_reg)
    assert a == b
    return a


def test_http_plans_match_the_general_path() -> None:
    a = _fast_and_general(_http_flows())
    assert a[("hubble_http_requests_total", (("method", "GET"), ("protocol", "HTTP/1.1"),
                                             ("reporter", "client"), ("status", "200")))] > 0


def _dns_flows() -> list[Flow]:
    flows = []
    shapes = itertools.product(
        (FlowVerdict.FORWARDED, FlowVerdict.DROPPED, FlowVerdict.ERROR),
        ("REQUEST", "RESPONSE"), (["A"], ["AAAA"], ["TXT", "A"], []), (0, 3, 5),
        (0, 1, 10, 11), ("", "POLICY_DENIED", "INVALID_PACKET_DROPPED"))
    for verdict, l7_type, qtypes, rcode, n_ips, reason in shapes:
        flows.append(Flow(
            time_ns=1, verdict=verdict, kind=EventKind.L7, l7_type=l7_type,
            traffic_direction="EGRESS", latency_ns=90_000, drop_reason_desc=reason,
            dns=DnsInfo(query="a.example.", qtypes=list(qtypes), rcode=rcode,
                        ips=[f"192.0.2.{i}" for i in range(n_ips)])))
    return flows


def test_dns_plans_match_the_general_path() -> None:
    a = _fast_and_general(_dns_flows())
    assert a[("hubble_dns_responses_total", (("ips_returned", "10+"), ("qtypes", "A"),
                                             ("rcode", "No Error")))] > 0
    assert a[("hubble_drop_total", (("protocol", "DNS"), ("reason", "POLICY_DENIED")))] > 0


def test_non_http_flows_and_losses_still_counted() -> None:
    reg = CollectorRegistry()
    fm = FlowMetrics(build_metrics(reg))
    dns = Flow(time_ns=1, verdict=FlowVerdict.FORWARDED, kind=EventKind.L7, l7_type="REQUEST",
               dns=DnsInfo(query="a.example.", qtypes=["A"]))
    fm.observe(dns)
    fm.lost("HUBBLE_RING_BUFFER", 2)
    fm.lost("HUBBLE_RING_BUFFER", 1)
    fm.lost("nonsense", 1)
    assert reg.get_sample_value("hubble_dns_queries_total",
                                {"rcode": "", "qtypes": "A", "ips_returned": "0"}) == 1
    assert reg.get_sample_value("hubble_lost_events_total",
                                {"source": "hubble_ring_buffer"}) == 3
    assert reg.get_sample_value("hubble_lost_events_total",
                                {"source": "observer_events_queue"}) == 1


@given(picks=st.lists(st.tuples(st.integers(0, 5), st.integers(1, 4), st.integers(0, 3),
                                st.sampled_from(["", "INGRESS", "EGRESS"])), max_size=30))
def test_observe_many_in_runs_is_observe_one_by_one(
        picks: list[tuple[int, int, int, str]]) -> None:
    """Runs of equal keys (shared plan lookup, counters bumped once per run), mixed with
    other keys, eager flows, histogram values and directions bound after creation (equal
    `_mkey`s, other directions: another key): the same samples as one by one."""
    conn = SimpleNamespace(src_ip="10.0.0.1", dst_ip="10.0.0.2", src_port=1, dst_port=80)
    shapes = [(FlowVerdict.FORWARDED, 200, "RESPONSE"), (FlowVerdict.FORWARDED, 404, "RESPONSE"),
              (FlowVerdict.DROPPED, 403, "REQUEST"), (FlowVerdict.ERROR, 502, "RESPONSE"),
              (FlowVerdict.FORWARDED, 200, "RESPONSE"), (FlowVerdict.FORWARDED, 500, "RESPONSE")]
    regs = CollectorRegistry(), CollectorRegistry()
    one, many = FlowMetrics(build_metrics(regs[0])), FlowMetrics(build_metrics(regs[1]))
    batch: list[Flow] = []
    for shape, repeat, latency, direction in picks:
        verdict, code, l7_type = shapes[shape]
        req = SimpleNamespace(method="GET" if shape != 4 else "PUT", url="http://a/x",
                              protocol="HTTP/1.1")
        for i in range(repeat):
            lat = 0 if l7_type == "REQUEST" else latency * 1_000_003 + i * 7
            flow = lazy_http_flow(1, verdict, conn, req, code, l7_type, lat)  # type: ignore[arg-type]
            flow.traffic_direction = direction  # as the agent's binder sets it
            batch.append(flow)
        if latency == 3:  # an eager flow inside the batch ends the run
            batch.append(Flow(time_ns=1, verdict=FlowVerdict.FORWARDED, kind=EventKind.L7,
                              l7_type="RESPONSE", latency_ns=5,
                              http=HttpInfo("GET", "/x", "HTTP/1.1", 200, [])))
    for f in batch:
        one.observe(f)
    many.observe_many(batch)
    assert _samples(regs[1]) == _samples(regs[0])
