"""`l7gate status`: what the agent reports about itself, and the health verdict.

Healthy means: a policy is active, the datapath is loaded with its programs attached, both
proxies listen and the datapath knows their ports. `l7gate status` exits 1 otherwise (the
DaemonSet's liveness probe uses it).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.daemon import Agent


def build_status(agent: Agent, map_sizes: dict[str, int] | None = None) -> dict[str, Any]:
    """`map_sizes`: the datapath maps' entry counts when the caller walked them already
    (Agent.status_async does, off the event loop); else they are walked here."""
    st = agent.state
    problems: list[str] = []
    out: dict[str, Any] = {
        "node": agent.cfg.node_name,
        "uptime_s": round(time.time() - agent.started_at, 1),
        "policy": {
            "revision": st.snapshot.revision if st else None,
            "generation": agent.generation,
            "policies": len(st.snapshot.docs) if st else 0,
            "last_reload": agent.last_reload,
        },
        "endpoints": [{"endpoint": p.endpoint.ref, "id": p.endpoint.endpoint_id,
                       "ip": str(p.endpoint.ip), "interface": p.interface}
                      for p in (st.local if st else ())],
        "proxies": {},
        "flows": agent.ring.stats().to_json() | {"l7_batches": agent.l7_batches},
    }
    if st is None:
        problems.append("no policy loaded")
    if agent.http is not None:
        out["proxies"]["http"] = {"port": agent.http.port,
                                  "active_connections": agent.http.stats.active_connections,
                                  "requests": dict(agent.http.stats.requests)}
    else:
        problems.append("HTTP proxy not running")
    if agent.dns is not None:
        s = agent.dns.stats
        out["proxies"]["dns"] = {"port": agent.dns.address[1],
                                 "malformed": s.malformed_queries,
                                 "overload_refusals": s.overload_refusals}
    else:
        problems.append("DNS proxy not running")
    if agent.fqdn is not None:
        out["fqdn_cache"] = {"names": agent.fqdn.cache.name_count,
                             "ips": agent.fqdn.cache.ip_count,
                             "learned_total": agent.fqdn.learned_total,
                             "expired_total": agent.fqdn.expired_total,
                             "refreshes_coalesced_total": agent.fqdn.coalesced_total}
    if agent.gc_policy is not None:
        import gc
        out["gc"] = {"frozen_objects": gc.get_freeze_count(),
                     "full_passes": agent.gc_policy.full_passes,
                     "last_full_pause_ms": round(agent.gc_policy.last_full_pause_s * 1e3, 1),
                     # passes per generation since start (young passes stay short: gctune)
                     "collections": [g["collections"] for g in gc.get_stats()]}
    if agent.loop_lag is not None:
        out["event_loop"] = {"lag": agent.loop_lag.summary(),
                             "housekeeping_last_ms": round(agent.housekeeping_last_s * 1e3, 3),
                             "housekeeping_max_ms": round(agent.housekeeping_max_s * 1e3, 3)}
        if agent.busy_poll is not None:
            out["event_loop"]["busy_poll"] = agent.busy_poll.stats()
    out["datapath"] = _datapath(agent, problems, map_sizes)
    out["healthy"] = not problems
    out["problems"] = problems
    return out


def _datapath(agent: Agent, problems: list[str],
              map_sizes: dict[str, int] | None) -> dict[str, Any]:
    if not agent.cfg.enable_datapath:
        return {"enabled": False}
    dp = agent.datapath
    if dp is None:
        problems.append("datapath not loaded")
        return {"enabled": True, "loaded": False}
    maps = dp.maps
    cfg = maps.config()
    if not cfg.http_port or not cfg.dns_port:
        problems.append("datapath does not know the proxy ports")
    counters = maps.counters()
    return {
        "enabled": True, "loaded": True, "pin_dir": dp.pin_dir,
        "attached": list(agent.attached),
        "proxy_ports": {"http": cfg.http_port, "dns": cfg.dns_port},
        "maps": map_sizes if map_sizes is not None else maps.sizes(),
        "drops": {getattr(k, "name", str(k)): v for k, v in counters.drops.items()},
        "forwarded": counters.forwarded, "redirected": counters.redirected,
        "events_lost": counters.events_lost,
    }
