"""`l7gate sandbox up|status|exec|reload|restart|down` (ARCHITECTURE.md, CLI contract).

Exit codes: 0 success; 1 failure with a message on stderr (bad topology as `FILE:LINE:
message`, a sandbox already up, a start failure with the log tail); 2 unusable arguments
(argparse, unknown exec target). `exec` becomes the command (exec(2)), so its exit code,
stdin, stdout and signals are the command's own. Imports of the sandbox machinery are
deferred so that `l7gate --help` stays cheap.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

USAGE_EXIT = 2


def register(subparsers: Any) -> None:
    sandbox = subparsers.add_parser(
        "sandbox", help="a Kubernetes-like cluster on this machine, out of network namespaces",
        description="Build, inspect and remove the local sandbox cluster (one per machine).")
    sub = sandbox.add_subparsers(dest="sandbox_command", metavar="SUBCOMMAND")
    sub.required = True

    up = sub.add_parser("up", help="build the sandbox and start one agent per node")
    up.add_argument("topology", nargs="?", metavar="TOPOLOGY.yaml",
                    help="topology file (default: the README's example cluster)")
    up.add_argument("--policy-dir", metavar="DIR", help="policies for the agents")
    up.add_argument("--no-agent", action="store_true", help="build the network only")
    up.set_defaults(func=_up)

    status = sub.add_parser("status", help="nodes, pods, external servers, agent state")
    status.add_argument("-o", "--output", choices=("table", "json"), default="table")
    status.set_defaults(func=_status)

    ex = sub.add_parser("exec", help="run a command in NODE, NS/POD or external",
                        usage="l7gate sandbox exec NODE|NS/POD|external -- CMD...")
    ex.add_argument("target", metavar="NODE|NS/POD|external")
    ex.add_argument("cmd", nargs=argparse.REMAINDER, metavar="CMD")
    ex.set_defaults(func=_exec)

    sub.add_parser("reload", help="SIGHUP every agent (re-read policies)").set_defaults(
        func=_reload)
    restart = sub.add_parser("restart", help="restart one node's agent (SIGTERM, start)")
    restart.add_argument("node", metavar="NODE")
    restart.set_defaults(func=_restart)
    sub.add_parser("down", help="remove the sandbox (also a crashed run's leftovers)"
                   ).set_defaults(func=_down)


def _fail(message: str) -> int:
    print(f"l7gate sandbox: {message}", file=sys.stderr)
    return 1


def _up(args: argparse.Namespace) -> int:
    from agent.sandbox.api import Sandbox, missing_pod_tools
    from policy.errors import L7gateError

    try:
        sb = Sandbox.up(args.topology, args.policy_dir, agents=not args.no_agent)
    except L7gateError as exc:
        return _fail(str(exc))
    missing = missing_pod_tools()
    if missing:
        print(f"l7gate sandbox: warning: pods lack {', '.join(missing)} "
              "(run scripts/setup.sh)", file=sys.stderr)
    print(f"sandbox {sb.state.prefix} is up")
    print(render_table(sb.status()))
    return 0


def _status(args: argparse.Namespace) -> int:
    from agent.sandbox.api import Sandbox
    from policy.errors import L7gateError

    try:
        doc = Sandbox.attach().status()
    except L7gateError as exc:
        return _fail(str(exc))
    print(json.dumps(doc, indent=2) if args.output == "json" else render_table(doc))
    return 0


def _exec(args: argparse.Namespace) -> int:
    from agent.sandbox.api import Sandbox
    from agent.sandbox.state import SandboxError
    from policy.errors import L7gateError

    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        print("l7gate sandbox exec: no command given (… exec TARGET -- CMD...)",
              file=sys.stderr)
        return USAGE_EXIT
    try:
        sb = Sandbox.attach()
    except L7gateError as exc:
        return _fail(str(exc))
    try:
        argv, env = sb.command(args.target, cmd)
    except SandboxError as exc:
        print(f"l7gate sandbox exec: {exc}", file=sys.stderr)
        return USAGE_EXIT
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as exc:
        return _fail(f"cannot run {argv[0]}: {exc}")


def _reload(args: argparse.Namespace) -> int:
    from agent.sandbox.api import Sandbox
    from policy.errors import L7gateError

    try:
        sb = Sandbox.attach()
    except L7gateError as exc:
        return _fail(str(exc))
    if not sb.state.agents:
        return _fail("the sandbox runs without agents (--no-agent)")
    nodes = sb.reload()
    print(f"sent SIGHUP to the agents of: {', '.join(nodes) or '(none running)'}")
    return 0 if nodes else 1


def _restart(args: argparse.Namespace) -> int:
    from agent.sandbox.api import Sandbox
    from policy.errors import L7gateError

    try:
        Sandbox.attach().restart(args.node)
    except L7gateError as exc:
        return _fail(str(exc))
    print(f"agent of {args.node} restarted")
    return 0


def _down(args: argparse.Namespace) -> int:
    from agent.sandbox.api import down

    problems = down()
    for problem in problems:
        print(f"l7gate sandbox down: {problem}", file=sys.stderr)
    print("sandbox is down" if not problems else "sandbox removed with problems")
    return 1 if problems else 0


def render_table(doc: dict[str, Any]) -> str:
    """Readable text for `status`: three aligned tables."""
    out = [f"sandbox {doc.get('prefix', '')}  (state: {doc.get('state_dir', '')})", ""]
    out += _table(["NODE", "IP", "POD CIDR", "AGENT", "NETNS"],
                  [[n["name"], n["ip"], n.get("pod_cidr", ""), n["agent"], n.get("netns", "")]
                   for n in doc["nodes"]])
    out.append("")
    out += _table(["POD", "IP", "NODE", "SERVER", "LABELS"],
                  [[f"{p['namespace']}/{p['name']}", p["ip"], p["node"],
                    _server(p), ",".join(f"{k}={v}" for k, v in p["labels"].items()
                                         if not k.startswith("io."))]
                   for p in doc["pods"]])
    out.append("")
    out += _table(["EXTERNAL", "IP", "PORTS"],
                  [[e["name"], e["ip"], ",".join(str(x) for x in e.get("ports", []))]
                   for e in doc["external"]])
    return "\n".join(out)


def _server(pod: dict[str, Any]) -> str:
    if not pod.get("server"):
        return "-"
    return f"{pod['server']}:{','.join(str(p) for p in pod.get('ports', []))}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    return ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
            for row in [header, *rows]]
