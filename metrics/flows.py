"""The single place where flows become metrics (no I/O here).

Contract: `FlowMetrics(metrics).observe(flow)` updates, from one `Flow`:
- `hubble_flows_processed_total{type,subtype,verdict}` for every flow (Hubble's flow handler:
  type L7/Drop/Trace/PolicyVerdict; subtype HTTP/DNS for L7, the observation point for traces).
- `hubble_drop_total{reason,protocol}` for DROPPED flows, except policy-verdict events (they
  repeat a drop the datapath already reported; counting both would double the drops).
- httpV2 `hubble_http_requests_total{method,protocol,status,reporter}` and
  `hubble_http_request_duration_seconds{method,reporter}` from HTTP *response* flows, and from
  DROPPED request flows that carry the status the proxy answered itself (the 403 of a denied
  request), so that dashboards see denials as 403s as they do with Cilium's Envoy.
- `hubble_dns_queries_total` from DNS request flows (rcode "", ips_returned "0") and
  `hubble_dns_responses_total` from DNS response flows.
- `cilium_policy_l7_total{rule=received|forwarded|denied}` from L7 *request* flows; the proxies
  count only `parse_errors` themselves (junk that never becomes a request flow).
`lost(source, n)` counts lost events in `hubble_lost_events_total` (and the ring's own
`l7gate_flow_ring_lost_total` when the source is the ring).
"""

from __future__ import annotations

from typing import Any

from metrics.registry import (
    LOST_SOURCES,
    AgentMetrics,
    drop_protocol_label,
    drop_reason_label,
    ips_returned_label,
    method_label,
    protocol_label,
    qtypes_label,
    rcode_label,
    status_label,
)
from observe.flow import EventKind, Flow, FlowVerdict


def flow_type_labels(flow: Flow) -> tuple[str, str]:
    """Hubble's (type, subtype) for flows_processed_total."""
    match flow.kind:
        case EventKind.L7:
            return "L7", "HTTP" if flow.http is not None else "DNS" if flow.dns else ""
        case EventKind.DROP:
            return "Drop", ""
        case EventKind.POLICY_VERDICT:
            return "PolicyVerdict", ""
        case EventKind.TRACE:
            if flow.verdict is FlowVerdict.REDIRECTED:
                return "Trace", "to-proxy"
            return "Trace", "to-endpoint" if flow.traffic_direction == "INGRESS" else "to-stack"
    return "Unknown", ""  # pragma: no cover - EventKind is closed


def _reporter(flow: Flow) -> str:
    # The proxy enforcing a pod's ingress sits at the server; for egress, at the client.
    return "client" if flow.traffic_direction == "EGRESS" else "server"


def _drop_protocol(flow: Flow) -> str:
    if flow.http is not None:
        return "HTTP"
    if flow.dns is not None:
        return "DNS"
    return drop_protocol_label(flow.protocol)


class FlowMetrics:
    def __init__(self, metrics: AgentMetrics) -> None:
        self.m = metrics
        # labels() takes a lock and validates on every call; label sets are closed, so the
        # children are looked up once and kept (a flow costs a few dict hits, not locks)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def observe(self, flow: Flow) -> None:
        typ, sub = flow_type_labels(flow)
        self._child(self.m.flows_processed, typ, sub, flow.verdict.value).inc()
        if flow.verdict is FlowVerdict.DROPPED and flow.kind is not EventKind.POLICY_VERDICT:
            reason = drop_reason_label(flow.drop_reason_desc or "UNKNOWN")
            self._child(self.m.drops, reason, _drop_protocol(flow)).inc()
        if flow.http is not None:
            self._http(flow)
        elif flow.dns is not None:
            self._dns(flow)

    def lost(self, source: str, count: int) -> None:
        if count <= 0:
            return
        src = source.lower()
        if src not in LOST_SOURCES:
            src = "observer_events_queue"
        self._child(self.m.lost_events, src).inc(count)
        if src == "hubble_ring_buffer":
            self.m.flow_ring_lost.inc(count)

    def _http(self, flow: Flow) -> None:
        h = flow.http
        assert h is not None
        method = method_label(h.method)
        if flow.l7_type == "RESPONSE":
            reporter = _reporter(flow)
            self._child(self.m.http_requests, method, protocol_label(h.protocol),
                                        status_label(h.code), reporter).inc()
            if flow.latency_ns > 0:
                self._child(self.m.http_duration, method, reporter).observe(flow.latency_ns / 1e9)
            return
        self._l7_rule(flow, "http")
        if flow.verdict is FlowVerdict.DROPPED and h.code:
            # the proxy answered (403) without an upstream: that answer is the response
            self._child(self.m.http_requests, method, protocol_label(h.protocol),
                                        status_label(h.code), _reporter(flow)).inc()

    def _dns(self, flow: Flow) -> None:
        d = flow.dns
        assert d is not None
        qtypes = qtypes_label(d.qtypes)
        if flow.l7_type == "RESPONSE":
            self._child(self.m.dns_responses, rcode_label(d.rcode), qtypes,
                                        ips_returned_label(len(d.ips))).inc()
        else:
            self._child(self.m.dns_queries, "", qtypes, "0").inc()
            self._l7_rule(flow, "dns")

    def _l7_rule(self, flow: Flow, proxy_type: str) -> None:
        self._child(self.m.policy_l7, "received", proxy_type).inc()
        if flow.verdict is FlowVerdict.FORWARDED:
            self._child(self.m.policy_l7, "forwarded", proxy_type).inc()
        elif flow.verdict is FlowVerdict.DROPPED:
            self._child(self.m.policy_l7, "denied", proxy_type).inc()
