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
- `hubble_dns_queries_total` from every DNS flow (rcode "", ips_returned "0") and
  `hubble_dns_responses_total` from DNS response flows.
- `cilium_policy_l7_total{rule=received|forwarded|denied}` from every L7 flow; the proxies
  count only `parse_errors` themselves (junk that never becomes a flow).
The proxies emit ONE record per exchange: a denied request as a DROPPED request flow, a
forwarded one only as its response flow, so a response also counts the request it answers.
`lost(source, n)` counts lost events in `hubble_lost_events_total` (and the ring's own
`l7gate_flow_ring_lost_total` when the source is the ring).
HTTP and DNS flows (one per request / query) take a fast path: the children a flow bumps are
computed once per distinct label-relevant key by running the general path with recorders,
then replayed (test_flow_metric_plans.py pins that both paths count the same). For a
`LazyFlow` the key is its `metric_key()`, read without building the flow (the plan for a new
key is built from that flow materialised; test_lazy_flows.py compares with eager flows).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from typing import Any

from metrics.fast import CounterChild, HistogramChild
from metrics.registry import (
    DNS_IPS_CAP,
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
from observe.flow import EventKind, Flow, FlowVerdict, LazyFlow


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


# L7 flows are one per request/query: what they bump depends only on the fields in
# `_http_key` / `_dns_key`, so the list of children is computed once per distinct key
# (method, status, direction, ... / qtypes, rcode, answer count, ...).
# Enum members enter the keys by id(): they are singletons that live as long as the process,
# and Enum.__hash__ is a Python-level call (two per flow otherwise).
# Methods and status codes are bounded by the label helpers (unknown ones fold into "other"),
# but the raw values in the key are not, so the plan cache is bounded; past it, the slow path.
PLAN_MAX = 4096

# (fast.py counter children bumped in place, other children's inc, a fast.py histogram child
# observed in place, another child's observe)
_FlowPlan = tuple[tuple[CounterChild, ...], tuple[Callable[[], None], ...],
                  HistogramChild | None, Callable[[float], None] | None]


def _http_key(flow: Flow) -> tuple[object, ...]:
    h = flow.http
    assert h is not None
    return (id(flow.kind), id(flow.verdict), flow.l7_type, flow.traffic_direction,
            flow.drop_reason_desc, h.method, h.protocol, h.code, flow.latency_ns > 0)


def _dns_key(flow: Flow) -> tuple[object, ...]:
    d = flow.dns
    assert d is not None
    return (id(flow.kind), id(flow.verdict), flow.l7_type, flow.traffic_direction,
            flow.drop_reason_desc, tuple(d.qtypes), d.rcode, min(len(d.ips), DNS_IPS_CAP + 1))


class _Recorder:
    """Stands in for a metric child while a plan is computed: records what would be bumped."""

    __slots__ = ("child", "plan")

    def __init__(self, child: Any, plan: _Plan) -> None:
        self.child = child
        self.plan = plan

    def inc(self, amount: float = 1) -> None:
        assert amount == 1
        if type(self.child) is CounterChild:
            self.plan.counters.append(self.child)
        else:
            self.plan.incs.append(self.child.inc)

    def observe(self, value: float) -> None:
        if type(self.child) is HistogramChild:
            self.plan.hist = self.child
        else:
            self.plan.observe = self.child.observe


class _Plan:
    __slots__ = ("counters", "hist", "incs", "observe")

    def __init__(self) -> None:
        self.counters: list[CounterChild] = []
        self.incs: list[Callable[[], None]] = []
        self.hist: HistogramChild | None = None
        self.observe: Callable[[float], None] | None = None


def _bump(counters: tuple[CounterChild, ...], incs: tuple[Callable[[], None], ...],
          n: int) -> None:
    """What replaying a plan's counters `n` times does (fast.py children: in place)."""
    for child in counters:
        child.value += n
    for inc in incs:
        for _ in range(n):
            inc()


class FlowMetrics:
    def __init__(self, metrics: AgentMetrics) -> None:
        self.m = metrics
        # labels() takes a lock and validates on every call; label sets are closed, so the
        # children are looked up once and kept (a flow costs a few dict hits, not locks)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._plans: dict[tuple[object, ...], _FlowPlan] = {}
        self._lost_plans: dict[str, tuple[Any, Any]] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def observe(self, flow: Flow) -> None:
        self.observe_many([flow])

    def observe_many(self, flows: list[Flow]) -> None:
        """`observe` each flow, in one call: the batch the agent publishes per event-loop
        iteration (agent/daemon.py `flush_l7`). Consecutive flows with equal keys (the usual
        batch: one kind of request answered the same way) share one plan lookup and bump
        its counters once by their number (fast.py children in place: same thread);
        histogram observations stay per flow and in order (the same float sums as one by
        one)."""
        plans = self._plans
        key: tuple[object, ...] | None = None
        counters: tuple[CounterChild, ...] = ()
        incs: tuple[Callable[[], None], ...] = ()
        hist: HistogramChild | None = None
        observe: Callable[[float], None] | None = None
        run = 0
        # the previous flow's `_mkey` and direction, while it was lazy (see LazyFlow)
        last_mkey: object = None
        last_direction = ""
        for flow in flows:
            if isinstance(flow, LazyFlow):
                mkey = flow._mkey
                direction = flow.traffic_direction
                if mkey is not None and mkey == last_mkey and direction == last_direction:
                    k = key  # the previous flow's metric_key(), without the call (~1.7k)
                else:
                    # the key straight from what the producer set: the flow is not built
                    # for metrics (the plan for a new key is built from it materialised)
                    k = flow.metric_key()
                    last_mkey, last_direction = mkey, direction
            else:
                last_mkey = None
                if flow.http is not None and flow.dns is None:
                    k = _http_key(flow)
                elif flow.dns is not None and flow.http is None:
                    k = _dns_key(flow)
                else:  # no plan: the general path, after what the run so far owes
                    if run:
                        _bump(counters, incs, run)
                    key, run = None, 0
                    self._observe(flow)
                    continue
            if k is not key and k != key:
                if run:
                    _bump(counters, incs, run)
                key, run = k, 0
                plan = plans.get(k)
                if plan is None:
                    plan = self._build_plan(flow, k)
                counters, incs, hist, observe = plan
            run += 1
            if hist is not None:
                value = flow.latency_ns / 1e9
                hist.counts[bisect_left(hist.bounds, value)] += 1
                hist.sum += value
            elif observe is not None:
                observe(flow.latency_ns / 1e9)
        if run:
            _bump(counters, incs, run)

    def _build_plan(self, flow: Flow, key: tuple[object, ...]) -> _FlowPlan:
        """Run the general path once with recorders instead of children (so the two paths
        cannot disagree), and keep what it bumped."""
        rec = _Plan()
        _PlanBuilder(self, rec)._observe(flow)
        plan = (tuple(rec.counters), tuple(rec.incs), rec.hist, rec.observe)
        if len(self._plans) < PLAN_MAX:
            self._plans[key] = plan
        return plan

    def _observe(self, flow: Flow) -> None:
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
        plan = self._lost_plans.get(source)
        if plan is None:
            src = source.lower()
            if src not in LOST_SOURCES:
                src = "observer_events_queue"
            ring = self.m.flow_ring_lost if src == "hubble_ring_buffer" else None
            plan = (self.m.lost_events.labels(src), ring)
            if len(self._lost_plans) < len(LOST_SOURCES) * 4:  # sources are a closed set
                self._lost_plans[source] = plan
        lost_child, ring_lost = plan
        lost_child.inc(count)
        if ring_lost is not None:
            ring_lost.inc(count)

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
            # the proxies emit one record per exchange: a forwarded request shows up only as
            # its response, so the response also counts the request it answers
            self._l7_rule(flow, "http")
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
        # one record per exchange (see _http): a response also stands for its query
        self._child(self.m.dns_queries, "", qtypes, "0").inc()
        self._l7_rule(flow, "dns")

    def _l7_rule(self, flow: Flow, proxy_type: str) -> None:
        self._child(self.m.policy_l7, "received", proxy_type).inc()
        if flow.verdict is FlowVerdict.FORWARDED:
            self._child(self.m.policy_l7, "forwarded", proxy_type).inc()
        elif flow.verdict is FlowVerdict.DROPPED:
            self._child(self.m.policy_l7, "denied", proxy_type).inc()


class _PlanBuilder(FlowMetrics):
    """The general path with recorders for children: no state is shared with the live
    instance but the children cache, so a flow pushed from another thread is unaffected."""

    def __init__(self, owner: FlowMetrics, plan: _Plan) -> None:
        self.m = owner.m
        self._children = owner._children
        self._plan = plan

    def _child(self, metric: Any, *labels: str) -> Any:
        return _Recorder(super()._child(metric, *labels), self._plan)
