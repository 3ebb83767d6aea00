"""`observe` output formats: compact (default), json/jsonpb, table, dict (no sockets here).

Contract:
- `make_printer(fmt, out, err, ...)` returns a `Printer`; call `flow(Flow)` per flow,
  `lost(LossSpan-like dict)` per lost-events notice, `close()` at the end.
- compact: `TIME: SRC -> DST TYPE VERDICT (DETAIL)`, SRC/DST are `ns/pod:port` when the pod is
  known, else the DNS names, else the IP. Drops read `... -> default/my-api:8080 drop DROPPED
  (POLICY_DENIED)`; L7 lines read `http-request DROPPED (HTTP/1.1 POST http://...)`. Replies
  (`is_reply` true) print `<-` with the sides flipped, as Hubble does. Identities `(ID:n)` only
  for policy-verdict events (as Hubble).
- json: one `{"flow": {...}}` per line (Flow.to_json), lost events as `{"lost_events": {...}}`
  lines on stdout; never coloured.
- table: TIMESTAMP SOURCE DESTINATION TYPE VERDICT SUMMARY (NODE after TIMESTAMP with
  --print-node-name); buffered and aligned at close, flushed per row in follow mode.
- dict: KEY: VALUE blocks separated by a dashed line.
- Lost-event notices go to `err` in compact/table/dict: "N flows lost between T1 and T2".
- Colour (verdicts) only when `color` is true; the CLI passes `out.isatty()`.
Time is printed in UTC (Hubble prints local time; agents and CI run in UTC).
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Mapping
from typing import Any, TextIO

from observe.flow import EventKind, Flow, FlowVerdict

FORMATS = ("compact", "json", "jsonpb", "table", "dict")
# Table columns wider than this are not padded further (a long summary must not push every
# row off the screen; Go's tabwriter in Hubble has no cap but Hubble summaries are short).
MAX_COLUMN_WIDTH = 60
# In follow mode table rows cannot be aligned after the fact; pad to these minimum widths.
FOLLOW_WIDTHS = (19, 28, 28, 14, 10)

_COLORS = {
    FlowVerdict.FORWARDED: "\x1b[32m", FlowVerdict.REDIRECTED: "\x1b[36m",
    FlowVerdict.DROPPED: "\x1b[31m", FlowVerdict.ERROR: "\x1b[31m",
    FlowVerdict.AUDIT: "\x1b[33m", FlowVerdict.TRACED: "\x1b[33m",
}
_RESET = "\x1b[0m"


def fmt_time(ns: int) -> str:
    """Go's time.StampMilli (`Jan _2 15:04:05.000`), as Hubble's compact output."""
    t = _dt.datetime.fromtimestamp(ns // 1_000_000_000, tz=_dt.UTC)
    return f"{t:%b} {t.day:>2} {t:%H:%M:%S}.{(ns // 1_000_000) % 1000:03d}"


def endpoint_str(flow: Flow, is_src: bool) -> str:
    ep = flow.source if is_src else flow.destination
    names = flow.source_names if is_src else flow.destination_names
    ip = flow.src_ip if is_src else flow.dst_ip
    port = flow.src_port if is_src else flow.dst_port
    if ep.pod_name:
        host = f"{ep.namespace}/{ep.pod_name}" if ep.namespace else ep.pod_name
    elif names:
        host = ",".join(n.rstrip(".") for n in names)
    elif ip:
        host = ip
    else:
        host = "reserved:world" if ep.identity == 2 else "<unknown>"
    if port and flow.protocol in ("TCP", "UDP"):
        host = f"{host}:{port}"
    if flow.kind is EventKind.POLICY_VERDICT and ep.identity:
        host = f"{host} (ID:{ep.identity})"
    return host


def type_str(flow: Flow) -> str:
    """The TYPE column: `http-request`, `dns-response proxy`, `drop`, `to-proxy`, ..."""
    if flow.http is not None:
        return "http-response" if flow.l7_type == "RESPONSE" else "http-request"
    if flow.dns is not None:
        kind = "dns-response" if flow.l7_type == "RESPONSE" else "dns-request"
        return f"{kind} {flow.dns.observation_source or 'proxy'}"
    if flow.kind is EventKind.L7:
        return "l7"
    if flow.kind is EventKind.DROP:
        return "drop"
    if flow.kind is EventKind.POLICY_VERDICT:
        return "policy-verdict"
    if flow.verdict is FlowVerdict.REDIRECTED:
        return "to-proxy"
    return "trace"


def summary_str(flow: Flow) -> str:
    """The text inside the parentheses (Hubble's per-type summary)."""
    if flow.http is not None:
        h = flow.http
        if flow.l7_type == "RESPONSE":
            ms = f" {flow.latency_ns // 1_000_000}ms" if flow.latency_ns else ""
            return f"{h.protocol} {h.code}{ms} ({h.method} {h.url})"
        return f"{h.protocol} {h.method} {h.url}"
    if flow.dns is not None:
        d = flow.dns
        qtypes = ",".join(d.qtypes)
        if flow.l7_type != "RESPONSE":
            return f"DNS Query {d.query} {qtypes}".rstrip()
        answer = f"RCode: {_RCODES.get(d.rcode, str(d.rcode))}" if d.rcode else \
            '"' + ",".join(d.ips + d.cnames) + '"'
        return f"DNS Answer {answer} TTL: {d.ttl} (Proxy {d.query} {qtypes})"
    if flow.drop_reason_desc:
        return flow.drop_reason_desc
    if flow.tcp_flags:
        return "TCP Flags: " + ", ".join(flow.tcp_flags)
    return flow.summary or flow.protocol


_RCODES = {1: "Format Error", 2: "Server Failure", 3: "Non-Existent Domain",
           4: "Not Implemented", 5: "Refused"}


def lost_text(lost: Mapping[str, Any]) -> str:
    n = lost.get("num_events_lost", 0)
    src = lost.get("source", "")
    first, last = lost.get("first"), lost.get("last")
    when = ""
    if first and last:
        when = f" between {first} and {last}"
    return f"EVENTS LOST: {n} flows lost{when} ({src})"


class Printer:
    """Base: subclasses implement `flow`; `lost` goes to stderr, `close` flushes."""

    def __init__(self, out: TextIO, err: TextIO, *, color: bool = False,
                 node_name: bool = False, follow: bool = False) -> None:
        self.out, self.err = out, err
        self.color, self.node_name, self.follow = color, node_name, follow

    def flow(self, flow: Flow) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def lost(self, lost: Mapping[str, Any]) -> None:
        self.err.write(lost_text(lost) + "\n")
        self.err.flush()

    def close(self) -> None:
        self.out.flush()

    def _verdict(self, verdict: FlowVerdict) -> str:
        if not self.color:
            return verdict.value
        return f"{_COLORS.get(verdict, '')}{verdict.value}{_RESET}"


class CompactPrinter(Printer):
    def flow(self, flow: Flow) -> None:
        src, dst = endpoint_str(flow, True), endpoint_str(flow, False)
        arrow = "->"
        if flow.is_reply:
            src, dst, arrow = dst, src, "<-"
        node = f" [{flow.node_name}]" if self.node_name else ""
        line = (f"{fmt_time(flow.time_ns)}{node}: {src} {arrow} {dst} {type_str(flow)} "
                f"{self._verdict(flow.verdict)} ({summary_str(flow)})")
        self.out.write(line + "\n")
        if self.follow:
            self.out.flush()


class JsonPrinter(Printer):
    def flow(self, flow: Flow) -> None:
        self.out.write(json.dumps({"flow": flow.to_json()}, separators=(",", ":")) + "\n")
        if self.follow:
            self.out.flush()

    def lost(self, lost: Mapping[str, Any]) -> None:
        self.out.write(json.dumps({"lost_events": dict(lost)}, separators=(",", ":")) + "\n")
        self.out.flush()


class TablePrinter(Printer):
    def __init__(self, out: TextIO, err: TextIO, **kw: Any) -> None:
        super().__init__(out, err, **kw)
        head = ["TIMESTAMP", "SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY"]
        if self.node_name:
            head.insert(1, "NODE")
        self._rows: list[list[str]] = [head]
        self._verdict_col = head.index("VERDICT")
        if self.follow:
            self._emit(self._rows.pop(), list(_follow_widths(self.node_name)))

    def flow(self, flow: Flow) -> None:
        row = [fmt_time(flow.time_ns), endpoint_str(flow, True), endpoint_str(flow, False),
               type_str(flow), flow.verdict.value, summary_str(flow)]
        if self.node_name:
            row.insert(1, flow.node_name)
        if self.follow:
            self._emit(row, list(_follow_widths(self.node_name)))
        else:
            self._rows.append(row)

    def close(self) -> None:
        if not self.follow and len(self._rows) > 1:
            widths = [min(MAX_COLUMN_WIDTH, max(len(r[i]) for r in self._rows))
                      for i in range(len(self._rows[0]) - 1)]
            for row in self._rows:
                self._emit(row, widths)
        self._rows = self._rows[:1]
        super().close()

    def _emit(self, row: list[str], widths: list[int]) -> None:
        cells = []
        for i, cell in enumerate(row):
            pad = widths[i] - len(cell) if i < len(widths) else 0
            text = cell
            if i == self._verdict_col and self.color and cell in FlowVerdict.__members__:
                text = self._verdict(FlowVerdict(cell))
            cells.append(text + " " * max(pad, 0))
        self.out.write("   ".join(cells).rstrip() + "\n")
        if self.follow:
            self.out.flush()


def _follow_widths(node: bool) -> tuple[int, ...]:
    return (FOLLOW_WIDTHS[0], 10, *FOLLOW_WIDTHS[1:]) if node else FOLLOW_WIDTHS


class DictPrinter(Printer):
    def __init__(self, out: TextIO, err: TextIO, **kw: Any) -> None:
        super().__init__(out, err, **kw)
        self._count = 0

    def flow(self, flow: Flow) -> None:
        pairs = [("TIMESTAMP", fmt_time(flow.time_ns))]
        if self.node_name:
            pairs.append(("NODE", flow.node_name))
        pairs += [("SOURCE", endpoint_str(flow, True)),
                  ("DESTINATION", endpoint_str(flow, False)),
                  ("TYPE", type_str(flow)), ("VERDICT", self._verdict(flow.verdict)),
                  ("SUMMARY", summary_str(flow))]
        width = max(len(k) for k, _ in pairs)
        if self._count:
            self.out.write("------------\n")
        self._count += 1
        for k, v in pairs:
            self.out.write(f"{k:>{width}}: {v}\n")
        if self.follow:
            self.out.flush()


def make_printer(fmt: str, out: TextIO, err: TextIO, *, color: bool = False,
                 node_name: bool = False, follow: bool = False) -> Printer:
    kw: dict[str, Any] = {"node_name": node_name, "follow": follow}
    match fmt:
        case "compact":
            return CompactPrinter(out, err, color=color, **kw)
        case "json" | "jsonpb":
            return JsonPrinter(out, err, color=False, **kw)
        case "table":
            return TablePrinter(out, err, color=color, **kw)
        case "dict":
            return DictPrinter(out, err, color=color, **kw)
    raise ValueError(f"unknown output format {fmt!r}; one of {', '.join(FORMATS)}")
