"""Starting the agent's HTTP and DNS proxies in transparent mode (the asyncio edge).

The proxies know nothing of policy, BPF or flows: the agent hands them its decide / learn /
emit callbacks and the SO_MARK function that tells the datapath "this came from the proxy,
on behalf of this identity". The listeners bind 0.0.0.0 with IP_TRANSPARENT on the ports
the datapath redirects to; the agent publishes the ports to BPF only after both listen.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from proxy import compiled
from proxy.dns.server import DnsProxyServer
from proxy.dns.session import Stage
from proxy.http.server import HttpProxyServer

if TYPE_CHECKING:
    from agent.daemon import Agent

LISTEN_ADDR = "0.0.0.0"  # the datapath assigns redirected sockets; nothing else reaches it
log = logging.getLogger(__name__)


async def start_http_proxy(agent: Agent) -> HttpProxyServer:
    cfg = agent.cfg
    transparent = cfg.enable_datapath
    server = HttpProxyServer(
        (LISTEN_ADDR, cfg.http_proxy_port), agent.decide_http, agent.queue_l7,
        transparent=transparent,
        upstream_mark=agent.upstream_mark if transparent else None,
        bind_source_transparently=transparent,
        codec=cfg.http_codec,
        context=lambda _peer, _dst: agent.current(),  # a connection keeps its snapshot
        decide_for=agent.http_decide_for,
        flow_queue=agent.l7_queue(),  # what agent.queue_l7 does, done by the server itself
        busy_poll=agent.busy_poll,
    )
    await server.start()
    done = compiled.loaded()
    if done:
        log.info("http proxy: compiled hot path (mypyc): %s", ", ".join(done))
    else:
        log.info("http proxy: pure Python (compiled hot path not used: %s)", compiled.STATUS)
    return server


async def start_dns_proxy(agent: Agent) -> tuple[DnsProxyServer, int]:
    cfg = agent.cfg
    transparent = cfg.enable_datapath
    server = DnsProxyServer(
        (LISTEN_ADDR, cfg.dns_proxy_port), agent.decide_dns, agent.learn_dns, agent.queue_l7,
        transparent=transparent,
        upstream_mark=agent.upstream_mark if transparent else None,
        reject_rcode=cfg.dns_reject,
        busy_poll=agent.busy_poll,
        **_stage_kwargs(agent),
    )
    await server.start()
    return server, server.address[1]


def _stage_kwargs(agent: Agent) -> dict[str, Any]:
    """The DNS proxy's stage histograms: each stage's histogram child handed over directly
    (the session calls its `observe`, no wrapper: ~1.9k instructions less per observation,
    four per query, callgrind). Metrics are set up in `Agent.prepare`, before the proxies
    start; without them (tests), the lazy wrapper below looks the children up once they exist."""
    if agent.metrics is None:
        return {"on_stage": _stage_observer(agent)}
    family = agent.metrics.upstream_reply
    return {"stage_observers": {
        stage: family.labels(error="allow", protocol_l7="dns",
                             scope=_SCOPES.get(stage.value, "totalTime")).observe
        for stage in Stage}}


def _stage_observer(agent: Agent) -> Any:
    # one histogram child per stage, looked up once; keyed by the member's id because
    # Enum.__hash__ is a Python-level call (four per DNS query otherwise)
    children: dict[int, Any] = {}

    def observe(stage: Any, seconds: float) -> None:
        child = children.get(id(stage))
        if child is None:
            if agent.metrics is None:
                return
            child = children[id(stage)] = agent.metrics.upstream_reply.labels(
                error="allow", protocol_l7="dns", scope=_SCOPES.get(stage.value, "totalTime"))
        child.observe(seconds)
    return observe


_SCOPES = {"policy": "policyCheckTime", "upstream": "upstreamTime", "datapath": "dataplaneTime",
           "total": "totalTime", "processing": "processingTime"}
