"""Prometheus wiring for the agent: the declared families plus scrape-time collectors.

Flows become metrics in one place (`metrics.flows.FlowMetrics`, fed by `Agent.publish`).
Values that live elsewhere (BPF counters, proxy connection counts, the FQDN cache size,
map fill levels) are read when Prometheus scrapes, never copied on the hot path.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from metrics.collector import BpfCountersCollector
from metrics.flows import FlowMetrics
from metrics.registry import build_metrics
from metrics.server import start_metrics_server

if TYPE_CHECKING:
    from agent.daemon import Agent


class AgentStateCollector(Collector):
    """Gauges read from the running agent at scrape time."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        a = self.agent
        conns = GaugeMetricFamily("l7gate_proxy_active_connections",
                                  "Client connections open on the proxy", labels=["protocol"])
        if a.http is not None:
            conns.add_metric(["http"], a.http.stats.active_connections)
        yield conns
        if a.fqdn is not None:
            yield GaugeMetricFamily("l7gate_fqdn_cache_ips", "IPs in the FQDN cache",
                                    value=a.fqdn.cache.ip_count)
        yield GaugeMetricFamily("l7gate_endpoints", "Endpoints managed by this agent",
                                value=len(a.state.local) if a.state else 0)
        bp = a.busy_poll
        if bp is not None:  # proxy/busypoll.py: what --busy-poll-us does and costs
            yield GaugeMetricFamily("l7gate_event_loop_busy_poll_window_seconds",
                                    "How long the event loop polls after I/O before it "
                                    "sleeps (self-tuning; 0: it sleeps at once)",
                                    value=bp.window_s if bp.enabled else 0.0)
            yield CounterMetricFamily("l7gate_event_loop_busy_poll_wasted_seconds",
                                      "Seconds the event loop polled in windows that ended "
                                      "with no I/O", value=bp.wasted_s)


class ScrapeBarrier(Collector):
    """Registered first, so collected first: a scrape starts by having the agent publish the
    proxy flows it still holds in a batch (`Agent.flush_for_reader`), so it counts every
    request answered before it began. Yields no metric."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        self.agent.flush_for_reader()
        return iter(())


def _bpf_reader(agent: Agent) -> Any:
    def read() -> dict[str, Any]:
        if agent.datapath is None:
            return {}
        c = agent.datapath.maps.counters()
        return {"drops": {getattr(k, "name", str(k)): v for k, v in c.drops.items()},
                "forwarded": c.forwarded}
    return read


def setup_metrics(agent: Agent) -> None:
    registry = CollectorRegistry()
    registry.register(ScrapeBarrier(agent))  # first: the registry collects in this order
    agent.metrics = build_metrics(registry)
    agent.flow_metrics = FlowMetrics(agent.metrics)
    agent.metrics.policy_reloads.labels(result="success").inc()
    agent.metrics.policy_revision.set(agent.generation)
    registry.register(BpfCountersCollector(_bpf_reader(agent)))
    registry.register(AgentStateCollector(agent))
    if agent.cfg.metrics_addr:
        agent.metrics_server = start_metrics_server(agent.cfg.metrics_addr, registry)
    agent.registry = registry
