"""`l7gate agent`, `l7gate status`, `l7gate fqdn cache list` and `l7gate demo`.

`agent` runs one node's agent in the foreground (the DaemonSet's container command).
`status` and `fqdn cache list` ask a running agent over its API socket (`--api-socket`,
else `$L7GATE_API_SOCKET`, else /run/l7gate/api.sock). `demo` tells the README's story.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from typing import Any

import yaml

from policy.errors import ConfigError, L7gateError, PolicyError

CONFIG_KEYS = {"node_name", "endpoints", "policy_dir", "api_socket", "state_dir", "metrics_addr",
               "pin_root", "http_proxy_port", "dns_proxy_port", "flow_export_file",
               "flow_export_max_size_mb", "dns_reject", "fqdn_min_ttl_s",
               "fqdn_max_ips_per_name", "fqdn_grace_s", "fqdn_allow_private", "http_codec",
               "ring_capacity", "dns_unload_on_shutdown", "busy_poll_us"}


def busy_poll_us(text: object) -> int | str:
    """--busy-poll-us: "auto" or a window in microseconds, 0 (off) to 10,000."""
    if text == "auto":
        return "auto"
    try:
        value = int(str(text), 10)
    except ValueError:
        value = -1
    if not 0 <= value <= 10_000:
        raise ValueError(f"busy_poll_us: expected auto or 0-10000 microseconds, got {text!r}")
    return value


def _busy_poll_arg(text: str) -> int | str:
    try:
        return busy_poll_us(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("agent", help="run the node agent (foreground)")
    p.add_argument("--config", help="YAML file with any of the options below (flags win)")
    p.add_argument("--node-name", default=os.environ.get("L7GATE_NODE") or os.environ.get(
        "NODE_NAME"), help="this node's name in the endpoints file ($L7GATE_NODE, $NODE_NAME)")
    p.add_argument("--policy-dir", help="directory of CiliumNetworkPolicy YAML files")
    p.add_argument("--endpoints", help="endpoints file (nodes and pods of the cluster)")
    p.add_argument("--metrics-addr", help="HOST:PORT for Prometheus /metrics")
    p.add_argument("--api-socket", help="Unix socket of the local API")
    p.add_argument("--state-dir", help="where the FQDN cache and the last good policy live")
    p.add_argument("--pin-root", help="bpffs directory for pinned maps (default "
                                      "/sys/fs/bpf/l7gate; the node name is appended)")
    p.add_argument("--http-proxy-port", type=int)
    p.add_argument("--dns-proxy-port", type=int)
    p.add_argument("--http-codec", choices=("auto", "httptools", "h11"))
    p.add_argument("--busy-poll-us", type=_busy_poll_arg,
                   help="after I/O the event loop keeps polling this long (self-tuning, "
                        "0 = off) instead of sleeping: lower latency on VMs for CPU; "
                        "auto (default): 200 with 2+ CPUs and no cgroup CPU quota, else 0")
    p.add_argument("--flow-export-file", help="write every flow as JSON lines here (rotated; "
                                              "{node} in the path becomes the node name)")
    p.add_argument("--flow-export-max-size-mb", type=int)
    p.add_argument("--dns-reject", choices=("refused", "nameError"),
                   help="answer to a denied DNS query (Cilium: refused)")
    p.add_argument("--fqdn-min-ttl", dest="fqdn_min_ttl_s", type=int)
    p.add_argument("--fqdn-max-ips-per-name", type=int)
    p.add_argument("--fqdn-grace", dest="fqdn_grace_s", type=float)
    p.add_argument("--fqdn-allow-private-ips", dest="fqdn_allow_private", action="store_true",
                   default=None, help="let DNS answers teach private/reserved addresses")
    p.add_argument("--dns-unload-on-shutdown", action="store_true", default=None,
                   help="fail open: on SIGTERM let DNS of proxied pods bypass the proxy until "
                        "the next start (default: fail closed, their DNS fails meanwhile)")
    p.add_argument("--log-level", default="INFO")
    p.set_defaults(func=run_agent)

    s = sub.add_parser("status", help="health of the local agent (exit 1 when unhealthy)")
    s.add_argument("--api-socket")
    s.add_argument("-o", "--output", choices=("text", "json"), default="text")
    s.set_defaults(func=run_status)

    f = sub.add_parser("fqdn", help="the DNS-learned allowlist")
    fsub = f.add_subparsers(dest="fqdn_cmd", required=True)
    fc = fsub.add_parser("cache", help="the FQDN cache")
    fcsub = fc.add_subparsers(dest="cache_cmd", required=True)
    fl = fcsub.add_parser("list", help="names, IPs and expiries learned from DNS answers")
    fl.add_argument("--endpoint", help="NS/POD or endpoint id")
    fl.add_argument("--name", help="DNS name")
    fl.add_argument("--api-socket")
    fl.add_argument("-o", "--output", choices=("table", "json"), default="table")
    fl.set_defaults(func=run_fqdn_list)

    d = sub.add_parser("demo", help="the README's story end to end (needs root)")
    d.add_argument("--keep", action="store_true", help="leave the sandbox up afterwards")
    d.set_defaults(func=run_demo)


def _config(args: argparse.Namespace) -> Any:
    from agent.daemon import AgentConfig
    values: dict[str, Any] = {}
    if args.config:
        try:
            with open(args.config) as fh:
                loaded = yaml.safe_load(fh) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{args.config}:0: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{args.config}:1: expected a mapping of options")
        for key, val in loaded.items():
            k = str(key).replace("-", "_")
            if k not in CONFIG_KEYS:
                raise ConfigError(f"{args.config}:0: unknown option {key!r}")
            values[k] = val
        if "busy_poll_us" in values:
            try:
                values["busy_poll_us"] = busy_poll_us(values["busy_poll_us"])
            except ValueError as exc:
                raise ConfigError(f"{args.config}:0: {exc}") from exc
    for key in CONFIG_KEYS:
        val = getattr(args, key, None)
        if val is not None:
            values[key] = val
    missing = [k for k in ("node_name", "endpoints", "policy_dir") if not values.get(k)]
    if missing:
        raise ConfigError("missing option(s): " + ", ".join("--" + m.replace("_", "-")
                                                           for m in missing))
    return AgentConfig(**values)


def run_agent(args: argparse.Namespace) -> int:
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    from agent import gctune
    from agent.daemon import Agent
    try:
        cfg = _config(args)
        agent = Agent(cfg)
        agent.prepare()
        gctune.start_up()
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            return runner.run(agent.run())
    except (PolicyError, ConfigError) as exc:
        print(str(exc), file=sys.stderr)
        return 1
    except L7gateError as exc:
        print(f"l7gate agent: {exc}", file=sys.stderr)
        return 1


def _loop_factory() -> Any:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _request(args: argparse.Namespace, op: str, **kw: Any) -> dict[str, Any] | None:
    from observe.api import socket_path
    from observe.client import request
    path = socket_path(args.api_socket)
    try:
        return request(path, op, **kw)
    except L7gateError as exc:
        print(f"l7gate: cannot reach the agent at {path}: {exc}", file=sys.stderr)
        return None


def run_status(args: argparse.Namespace) -> int:
    resp = _request(args, "status")
    if resp is None:
        return 1
    st = resp.get("status", resp)
    if args.output == "json":
        print(json.dumps(st, indent=2, sort_keys=True))
    else:
        print(format_status(st))
    return 0 if st.get("healthy") else 1


def format_status(st: dict[str, Any]) -> str:
    pol = st.get("policy", {})
    dp = st.get("datapath", {})
    lines = [
        f"Node:          {st.get('node')}",
        "Health:        " + ("OK" if st.get("healthy")
                               else "UNHEALTHY: " + "; ".join(st.get("problems", []))),
        f"Policy:        revision {pol.get('revision')} (generation {pol.get('generation')}, "
        f"{pol.get('policies')} policies), last reload: {pol.get('last_reload', {}).get('result')}",
        f"Endpoints:     {', '.join(e['endpoint'] for e in st.get('endpoints', [])) or '-'}",
    ]
    for name, p in st.get("proxies", {}).items():
        lines.append(f"Proxy {name:<8} port {p.get('port')}")
    if dp.get("loaded"):
        lines.append(f"Datapath:      attached to {', '.join(dp.get('attached', []))}; "
                     f"maps {dp.get('maps')}")
        lines.append(f"               forwarded {dp.get('forwarded')}, redirected "
                     f"{dp.get('redirected')}, drops {dp.get('drops')}, events lost "
                     f"{dp.get('events_lost')}")
    fl = st.get("flows", {})
    lines.append(f"Flows:         {fl}")
    if "fqdn_cache" in st:
        lines.append(f"FQDN cache:    {st['fqdn_cache']}")
    if "gc" in st:
        lines.append(f"GC:            {st['gc']}")
    ev = st.get("event_loop")
    if ev:
        lag = ev.get("lag", {})
        stalls = lag.get("stalls", [])
        last = (f"; last stall {stalls[-1]['ms']} ms at "
                f"{time.strftime('%H:%M:%S', time.localtime(stalls[-1]['at']))}"
                if stalls else "")
        lines.append(f"Event loop:    lag p99 <= {lag.get('p99_under_ms')} ms, max "
                     f"{lag.get('max_ms')} ms over {lag.get('samples')} ticks, "
                     f"{len(stalls)} stall(s) >= 10 ms kept{last}; housekeeping max "
                     f"{ev.get('housekeeping_max_ms')} ms")
        bp = ev.get("busy_poll")
        if bp:
            lines.append("Busy polling:  " + (
                f"window {bp['window_us']} of {bp['max_us']} us, {bp['hits']} polls with I/O, "
                f"{bp['misses']} windows ran out ({bp['wasted_seconds']} s polled for nothing)"
                if bp["enabled"] else "off"))
    return "\n".join(lines)


def run_fqdn_list(args: argparse.Namespace) -> int:
    resp = _request(args, "fqdn_cache", endpoint=args.endpoint, name=args.name)
    if resp is None:
        return 1
    rows = resp.get("entries", [])
    if args.output == "json":
        for r in rows:
            print(json.dumps(r, sort_keys=True))
        return 0
    print(f"{'ENDPOINT':<22} {'NAME':<28} {'IP':<16} {'TTL':>6}  PORTS")
    for r in rows:
        print(f"{r['endpoint']:<22} {r['name']:<28} {r['ip']:<16} {r['ttl_remaining_s']:>6}  "
              f"{','.join(r['ports'])}")
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from agent.demo import run
    return run(keep=args.keep)
