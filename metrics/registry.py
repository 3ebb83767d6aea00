"""Every Prometheus metric of the agent, declared in one place (no I/O here).

Contract: `build_metrics(registry)` registers all families on `registry` and returns them in a
frozen `AgentMetrics`. Names and labels follow Hubble (`hubble_*`, httpV2 shape) and the
Cilium agent (`cilium_*`) where users' dashboards know them; our own use `l7gate_`.
Label values come only from the closed sets below (`*_label()` helpers map anything else to
OTHER/UNKNOWN); paths, DNS names and IPs are never labels. Known combinations are created with
`.labels(...)` at build time so dashboards see zeros instead of missing series.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge

from metrics.fast import FastCounter, FastHistogram
from policy.types import DropReason

# the event-loop lag's buckets (agent/looplag.py): from "not late" (uvloop's timers tick in
# milliseconds) to a stall any client would notice
LOOP_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

# --- closed label sets ---------------------------------------------------------------------

HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
                "OTHER")
HTTP_PROTOCOLS = ("HTTP/1.0", "HTTP/1.1", "HTTP/2", "OTHER")
# Codes kept as their own label value; everything else becomes its class ("2xx" ... "5xx")
# or "other". Pre-initialised for every method/reporter: ~300 zero series.
HTTP_STATUS_CODES = (200, 201, 204, 301, 302, 304, 400, 401, 403, 404, 405, 408, 429, 500,
                     502, 503, 504)
HTTP_STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx", "other")
REPORTERS = ("client", "server")  # Hubble: egress-side proxy = client, ingress-side = server
FLOW_TYPES = {  # Hubble's flow handler: type -> the subtypes it uses
    "L7": ("HTTP", "DNS"),
    "Drop": ("",),
    "Trace": ("to-proxy", "to-endpoint", "to-stack"),
    "PolicyVerdict": ("",),
}
VERDICTS = ("FORWARDED", "DROPPED", "REDIRECTED", "AUDIT", "ERROR", "TRACED")
DROP_REASONS = (*(r.name for r in DropReason), "UNKNOWN")
DROP_PROTOCOLS = ("TCP", "UDP", "ICMPv4", "ICMPv6", "SCTP", "HTTP", "DNS", "Unknown")
DNS_QTYPES = ("A", "AAAA", "CNAME", "MX", "TXT", "SRV", "PTR", "NS", "SOA", "ANY", "HTTPS",
              "SVCB", "OTHER")
# Hubble's rcode label strings (dns handler); "" for queries.
DNS_RCODES = {0: "No Error", 1: "Format Error", 2: "Server Failure", 3: "Non-Existent Domain",
              4: "Not Implemented", 5: "Refused"}
DNS_RCODE_OTHER = "Other"
# ips_returned is a count; capped so the label set stays closed.
DNS_IPS_CAP = 10
LOST_SOURCES = ("perf_event_ring_buffer", "observer_events_queue", "hubble_ring_buffer")
L7_RULES = ("received", "forwarded", "denied", "parse_errors")
PROXY_TYPES = ("http", "dns")
UPSTREAM_ERRORS = ("allow", "denied", "timeout", "proxyErr")
UPSTREAM_SCOPES = ("totalTime", "upstreamTime", "processingTime", "policyCheckTime",
                   "dataplaneTime")
RELOAD_RESULTS = ("success", "failure")


def method_label(method: str) -> str:
    m = method.upper()
    return m if m in HTTP_METHODS else "OTHER"


def protocol_label(protocol: str) -> str:
    p = protocol.upper()
    if p == "HTTP/2.0":
        p = "HTTP/2"
    return p if p in HTTP_PROTOCOLS else "OTHER"


def status_label(code: int) -> str:
    if code in HTTP_STATUS_CODES:
        return str(code)
    if 100 <= code <= 599:
        return f"{code // 100}xx"
    return "other"


def qtypes_label(qtypes: Iterable[str]) -> str:
    """The first query type (one question per query in practice), from the closed set."""
    for q in qtypes:
        q = q.upper()
        return q if q in DNS_QTYPES else "OTHER"
    return "OTHER"


def rcode_label(rcode: int) -> str:
    return DNS_RCODES.get(rcode, DNS_RCODE_OTHER)


def ips_returned_label(n: int) -> str:
    return str(n) if n < DNS_IPS_CAP else f"{DNS_IPS_CAP}+"


def drop_reason_label(reason: str) -> str:
    r = reason.upper()
    return r if r in DROP_REASONS else "UNKNOWN"


def drop_protocol_label(protocol: str) -> str:
    for p in DROP_PROTOCOLS:
        if p.upper() == protocol.upper():
            return p
    return "Unknown"


@dataclass(frozen=True)
class AgentMetrics:
    # Hubble-compatible
    flows_processed: FastCounter  # hubble_flows_processed_total{type,subtype,verdict}
    drops: FastCounter  # hubble_drop_total{reason,protocol}
    http_requests: FastCounter  # hubble_http_requests_total{method,protocol,status,reporter}
    http_duration: FastHistogram  # hubble_http_request_duration_seconds{method,reporter}
    dns_queries: FastCounter  # hubble_dns_queries_total{rcode,qtypes,ips_returned}
    dns_responses: FastCounter  # hubble_dns_responses_total{rcode,qtypes,ips_returned}
    lost_events: FastCounter  # hubble_lost_events_total{source}
    # Cilium-like
    policy_l7: FastCounter  # cilium_policy_l7_total{rule,proxy_type}
    upstream_reply: FastHistogram  # cilium_proxy_upstream_reply_seconds{error,protocol_l7,scope}
    # l7gate
    policy_reloads: Counter  # l7gate_policy_reloads_total{result}
    policy_reload_failures: Counter  # l7gate_policy_reload_failures_total
    policy_revision: Gauge  # l7gate_policy_revision
    fqdn_cache_entries: Gauge  # l7gate_fqdn_cache_entries
    fqdn_ips_learned: Counter  # l7gate_fqdn_ips_learned_total
    fqdn_ips_expired: Counter  # l7gate_fqdn_ips_expired_total
    proxy_connections: Gauge  # l7gate_proxy_connections{protocol}
    bpf_map_pressure: Gauge  # l7gate_bpf_map_pressure{map_name} (0..1)
    flow_ring_lost: FastCounter  # l7gate_flow_ring_lost_total
    flow_export_lost: Counter  # l7gate_flow_export_lost_total
    loop_lag: FastHistogram  # l7gate_event_loop_lag_seconds (agent/looplag.py)


def build_metrics(registry: CollectorRegistry,
                  bpf_map_names: Iterable[str] = ()) -> AgentMetrics:
    """Declare every metric on `registry`; `bpf_map_names` pre-creates the pressure series."""
    r = registry
    m = AgentMetrics(
        flows_processed=FastCounter("hubble_flows_processed_total", "Flows processed",
                                ["type", "subtype", "verdict"], registry=r),
        drops=FastCounter("hubble_drop_total", "Number of drops", ["reason", "protocol"],
                      registry=r),
        http_requests=FastCounter("hubble_http_requests_total", "Count of HTTP requests",
                              ["method", "protocol", "status", "reporter"], registry=r),
        http_duration=FastHistogram("hubble_http_request_duration_seconds",
                                "Quantiles of HTTP request duration in seconds",
                                ["method", "reporter"], registry=r),
        dns_queries=FastCounter("hubble_dns_queries_total", "Number of DNS queries observed",
                            ["rcode", "qtypes", "ips_returned"], registry=r),
        dns_responses=FastCounter("hubble_dns_responses_total", "Number of DNS responses observed",
                              ["rcode", "qtypes", "ips_returned"], registry=r),
        lost_events=FastCounter("hubble_lost_events_total", "Number of lost events", ["source"],
                            registry=r),
        policy_l7=FastCounter("cilium_policy_l7_total", "Number of total proxy requests handled",
                          ["rule", "proxy_type"], registry=r),
        upstream_reply=FastHistogram("cilium_proxy_upstream_reply_seconds",
                                 "Seconds waited to get a reply from an upstream server",
                                 ["error", "protocol_l7", "scope"], registry=r),
        policy_reloads=Counter("l7gate_policy_reloads_total", "Policy reloads by result",
                               ["result"], registry=r),
        policy_reload_failures=Counter("l7gate_policy_reload_failures_total",
                                       "Policy reloads that failed (old policy kept)",
                                       registry=r),
        policy_revision=Gauge("l7gate_policy_revision", "Revision of the active policy",
                              registry=r),
        fqdn_cache_entries=Gauge("l7gate_fqdn_cache_entries", "Live (name, IP) FQDN entries",
                                 registry=r),
        fqdn_ips_learned=Counter("l7gate_fqdn_ips_learned_total",
                                 "IPs learned from allowed DNS answers", registry=r),
        fqdn_ips_expired=Counter("l7gate_fqdn_ips_expired_total",
                                 "FQDN IPs removed after their TTL", registry=r),
        proxy_connections=Gauge("l7gate_proxy_connections", "Open proxy connections",
                                ["protocol"], registry=r),
        bpf_map_pressure=Gauge("l7gate_bpf_map_pressure", "BPF map fill ratio (0..1)",
                               ["map_name"], registry=r),
        flow_ring_lost=FastCounter("l7gate_flow_ring_lost_total",
                               "Flows evicted from or lost before the flow ring", registry=r),
        flow_export_lost=Counter("l7gate_flow_export_lost_total",
                                 "Flows the JSON exporter could not write", registry=r),
        loop_lag=FastHistogram("l7gate_event_loop_lag_seconds",
                               "How late the agent's event loop ran a timer due every 10 ms",
                               [], buckets=LOOP_LAG_BUCKETS, registry=r),
    )
    _preinit(m, bpf_map_names)
    return m


def _preinit(m: AgentMetrics, bpf_map_names: Iterable[str]) -> None:
    for typ, subtypes in FLOW_TYPES.items():
        for sub in subtypes:
            for verdict in VERDICTS:
                m.flows_processed.labels(typ, sub, verdict)
    m.drops.labels("POLICY_DENIED", "TCP")
    m.drops.labels("POLICY_DENY", "TCP")
    for method in HTTP_METHODS:
        for reporter in REPORTERS:
            m.http_duration.labels(method, reporter)
            for code in HTTP_STATUS_CODES:
                m.http_requests.labels(method, "HTTP/1.1", str(code), reporter)
    for q in ("A", "AAAA"):
        m.dns_queries.labels("", q, "0")
        m.dns_responses.labels("No Error", q, "1")
    for src in LOST_SOURCES:
        m.lost_events.labels(src)
    for rule in L7_RULES:
        for pt in PROXY_TYPES:
            m.policy_l7.labels(rule, pt)
    for err in UPSTREAM_ERRORS:
        for pt in PROXY_TYPES:
            m.upstream_reply.labels(err, pt, "totalTime")
    for result in RELOAD_RESULTS:
        m.policy_reloads.labels(result)
    for pt in PROXY_TYPES:
        m.proxy_connections.labels(pt)
    for name in bpf_map_names:
        m.bpf_map_pressure.labels(name)
