"""`l7gate observe`: Hubble's `observe` flags against the local agent or an exported file.

Contract (ARCHITECTURE.md "Command-line contract", binding): the flags below keep Hubble's
names and meanings; `-o json` prints one `{"flow": {...}}` per line. Exit 0 on success; exit 1
with one line on stderr naming the socket when the agent cannot be reached, or naming the
flag when a filter value is bad. `--input-file FILE|-` replays exported JSON lines through
the same filters and printers without an agent.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TextIO

from observe.api import ApiError, socket_path
from observe.filters import FLAG_FIELDS, PROTOCOLS, SpecBuilder, compile_spec
from observe.flow import Flow, parse_time_ns
from observe.printer import FORMATS, Printer, make_printer
from policy.errors import L7gateError

DEFAULT_LAST = 20  # Hubble's FlowPrintCount

_SHORT = {"namespace": "-n", "label": "-l", "type": "-t"}
_HELP = {
    "verdict": "FORWARDED, DROPPED, REDIRECTED, AUDIT, ERROR or TRACED",
    "drop-reason-desc": "drop reason name, e.g. POLICY_DENIED",
    "type": "event type: trace, drop, l7, policy-verdict",
    "pod": "[ns/]pod-name-prefix, source or destination (ns defaults to default)",
    "namespace": "namespace, source or destination",
    "label": "label selector k=v[,k2=v2] (k8s:k=v, reserved:world), either side",
    "ip": "IP or CIDR, either side",
    "protocol": "one of " + ", ".join(PROTOCOLS),
    "port": "L4 port, either side",
    "http-method": "HTTP method",
    "http-path": "HTTP path regex (RE2, unanchored)",
    "http-url": "HTTP URL regex (RE2, unanchored)",
    "http-header": "HTTP header KEY:VALUE (exact value)",
    "tcp-flags": "TCP flags that must be set, e.g. syn or syn,ack",
    "http-status": "HTTP status code (404) or prefix (5+)",
    "fqdn": "DNS name pattern (*.example.com), either side",
    "node-name": "node name pattern",
    "identity": "numeric security identity, either side",
    "traffic-direction": "ingress or egress",
}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 1_000_000_000,
            "m": 60_000_000_000, "h": 3_600_000_000_000}


class _FilterAction(argparse.Action):
    """Records each filter flag in command-line order (needed for `--not`)."""

    def __call__(self, parser: argparse.ArgumentParser, ns: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        items = list(getattr(ns, "filter_items", None) or [])
        items.append((self.dest.replace("_", "-"), str(values)))
        ns.filter_items = items


class _NotAction(argparse.Action):
    def __init__(self, option_strings: list[str], dest: str, **kw: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, **kw)

    def __call__(self, parser: argparse.ArgumentParser, ns: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        items = list(getattr(ns, "filter_items", None) or [])
        items.append(("not", ""))
        ns.filter_items = items


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "observe", help="show flows (drops, L7 verdicts) like `hubble observe`",
        description="Show flows recorded by the local l7gate agent, with Hubble's filters.")
    filt = p.add_argument_group("filters (same flag repeated = OR, different flags = AND)")
    filt.add_argument("--not", action=_NotAction, dest="not_", help="negate the next filter")
    for flag in FLAG_FIELDS:
        names = [f"--{flag}"] + ([_SHORT[flag]] if flag in _SHORT else [])
        base = flag.removeprefix("from-").removeprefix("to-")
        side = "source" if flag.startswith("from-") else "destination" \
            if flag.startswith("to-") else ""
        help_ = _HELP.get(flag) or f"{_HELP.get(base, base)} ({side})".replace(
            ", either side", "").replace(", source or destination", "")
        filt.add_argument(*names, action=_FilterAction, dest=flag.replace("-", "_"),
                          metavar=flag.split("-")[-1].upper(), help=help_)
    win = p.add_argument_group("which flows")
    win.add_argument("--last", type=int, metavar="N",
                     help=f"the N newest flows (default {DEFAULT_LAST} unless --since/-f)")
    win.add_argument("--first", type=int, metavar="N", help="the N oldest flows held")
    win.add_argument("--all", action="store_true", help="every flow the agent holds")
    win.add_argument("--since", metavar="TIME", help="duration ago (5m, 30s, 1h) or RFC 3339")
    win.add_argument("--until", metavar="TIME", help="duration ago or RFC 3339")
    win.add_argument("-f", "--follow", action="store_true", help="keep printing new flows")
    out = p.add_argument_group("output")
    out.add_argument("-o", "--output", choices=FORMATS, default="compact")
    out.add_argument("--print-node-name", action="store_true")
    src = p.add_argument_group("source")
    src.add_argument("--input-file", metavar="FILE",
                     help="read exported JSON flows from FILE (- for stdin) instead of the agent")
    src.add_argument("--api-socket", metavar="PATH",
                     help="agent API socket (default $L7GATE_API_SOCKET or "
                          "/run/l7gate/api.sock)")
    p.set_defaults(func=run, filter_items=[])


def parse_time(text: str, now_ns: int) -> int:
    """`5m`, `1h30m`, `250ms` (that long before now) or an RFC 3339 time -> epoch ns."""
    text = text.strip()
    pos, total = 0, 0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += int(float(m.group(1)) * _UNIT_NS[m.group(2)])
        pos = m.end()
    if text and pos == len(text):
        return now_ns - total
    try:
        return parse_time_ns(text)
    except ValueError:
        pass
    try:  # RFC 3339 without zone, or a date: read as UTC
        t = _dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not a duration (5m, 30s) or RFC 3339 time: {text!r}") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=_dt.UTC)
    return int(t.timestamp() * 1e9)


def build_spec(items: Iterable[tuple[str, str]]) -> dict[str, Any]:
    b = SpecBuilder()
    for flag, value in items:
        if flag == "not":
            b.negate_next()
        else:
            b.add(flag, value)
    return b.spec()


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        spec = build_spec(args.filter_items or [])
        compile_spec(spec)  # fail before connecting
        now = time.time_ns()
        since = parse_time(args.since, now) if args.since else None
        until = parse_time(args.until, now) if args.until else None
    except (L7gateError, ValueError) as exc:
        err.write(f"l7gate observe: {exc}\n")
        return 1
    printer = make_printer(args.output, out, err, color=_isatty(out),
                           node_name=args.print_node_name, follow=args.follow)
    try:
        if args.input_file:
            _replay(args, spec, since, until, printer)
        else:
            _from_agent(args, spec, since, until, printer)
    except (ApiError, L7gateError, OSError, ValueError, KeyError) as exc:
        printer.close()
        err.write(f"l7gate observe: {exc}\n")
        return 1
    except KeyboardInterrupt:
        pass
    printer.close()
    return 0


def _isatty(out: TextIO) -> bool:
    try:
        return out.isatty()
    except (AttributeError, ValueError):
        return False


def _from_agent(args: argparse.Namespace, spec: dict[str, Any], since: int | None,
                until: int | None, printer: Printer) -> None:
    from observe.client import stream_flows  # imported late: keep `l7gate --help` light

    req: dict[str, Any] = {"filter": spec, "follow": args.follow}
    if since is not None:
        req["since"] = since
    if until is not None:
        req["until"] = until
    if args.all:
        req["all"] = True
    elif args.first is not None:
        req["first"] = args.first
    elif args.last is not None:
        req["last"] = args.last
    elif since is None and not args.follow:
        req["last"] = DEFAULT_LAST
    _print_stream(stream_flows(socket_path(args.api_socket), req), printer)


def _print_stream(objs: Iterable[dict[str, Any]], printer: Printer) -> None:
    for obj in objs:
        if "flow" in obj:
            printer.flow(Flow.from_json(obj["flow"]))
        elif "lost_events" in obj:
            printer.lost(obj["lost_events"])


def _replay(args: argparse.Namespace, spec: dict[str, Any], since: int | None,
            until: int | None, printer: Printer) -> None:
    pred = compile_spec(spec)
    stream: TextIO
    if args.input_file == "-":
        stream = sys.stdin
        objs = list(_read_lines(stream))
    else:
        with open(args.input_file, encoding="utf-8") as stream:
            objs = list(_read_lines(stream))
    window: Callable[[Flow], bool] = lambda f: (  # noqa: E731
        (since is None or f.time_ns >= since) and (until is None or f.time_ns < until))
    picked: list[dict[str, Any]] = []
    for obj in objs:
        if "lost_events" in obj:
            picked.append(obj)
            continue
        flow = Flow.from_json(obj)
        if window(flow) and pred(flow):
            picked.append({"flow": flow.to_json()})
    flows_idx = [i for i, o in enumerate(picked) if "flow" in o]
    keep: set[int] = set(flows_idx)
    if not args.all:
        if args.first is not None:
            keep = set(flows_idx[: max(args.first, 0)])
        elif args.last is not None:
            keep = set(flows_idx[-args.last:]) if args.last > 0 else set()
    _print_stream((o for i, o in enumerate(picked) if "flow" not in o or i in keep), printer)


def _read_lines(stream: TextIO) -> Iterator[dict[str, Any]]:
    for n, line in enumerate(stream, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise ValueError(f"input line {n}: not JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise ValueError(f"input line {n}: not a JSON object")
        if "node_status" in obj:
            continue
        yield obj
