"""`l7gate bpf ...`: read a node's pinned datapath maps directly (no agent needed).

    l7gate bpf {ipcache,policy,ct,fqdn,endpoints,counters} list [--node NODE]
               [--pin-root DIR] [-o table|json]
    l7gate bpf dump-source [--node NODE] [--pin-root DIR]

The node defaults to $L7GATE_NODE, else the only directory under the pin root. `-o json`
prints one JSON array of row objects. Exit 0 on success, 1 when the maps cannot be read
(no pins, not root), 2 for unusable input. Importing this module stays cheap (no bcc).
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import ipaddress
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from policy.errors import L7gateError, RedirectError

DEFAULT_PIN_ROOT = "/sys/fs/bpf/l7gate"  # redirect.loader.DEFAULT_PIN_ROOT (not imported: cheap)
TABLES = ("ipcache", "policy", "ct", "fqdn", "endpoints", "counters")


def register(sub: Any) -> None:
    bpf = sub.add_parser("bpf", help="inspect the node's BPF maps (pinned; no agent needed)")
    bpf_sub = bpf.add_subparsers(dest="bpf_command", metavar="TABLE")
    bpf_sub.required = True
    for table in TABLES:
        p = bpf_sub.add_parser(table, help=f"the {table} map")
        verbs = p.add_subparsers(dest="verb", metavar="VERB")
        verbs.required = True
        lst = verbs.add_parser("list", help=f"list the {table} entries")
        _common(lst)
        lst.add_argument("-o", "--output", choices=("table", "json"), default="table")
        if table == "policy":
            lst.add_argument("--all-generations", action="store_true",
                             help="also show entries of the idle generation (mid-swap)")
        lst.set_defaults(func=_list, table=table)
    dump = bpf_sub.add_parser("dump-source", help="print the effective BPF source and cflags")
    _common(dump)
    dump.set_defaults(func=_dump_source)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--node", default=None,
                   help="node name (default: $L7GATE_NODE or the only pinned node)")
    p.add_argument("--pin-root", default=os.environ.get("L7GATE_PIN_ROOT", DEFAULT_PIN_ROOT),
                   help="bpffs directory of all nodes ($L7GATE_PIN_ROOT; `sandbox exec` sets it)")


def resolve_node(node: str | None, pin_root: str) -> str:
    if node:
        return node
    env = os.environ.get("L7GATE_NODE")
    if env:
        return env
    try:
        found = sorted(d for d in os.listdir(pin_root)
                       if os.path.isdir(os.path.join(pin_root, d)))
    except OSError as exc:
        raise RedirectError(f"{pin_root}: {exc.strerror}") from exc
    if len(found) != 1:
        raise RedirectError(
            f"{len(found)} nodes pinned under {pin_root} ({', '.join(found) or 'none'}): "
            "pass --node or set L7GATE_NODE")
    return found[0]


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.name if isinstance(value.value, int) else value.value
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv4Network):
        return str(value)
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(_jsonable(k)): _jsonable(v) for k, v in value.items()}
    return value


def _rows(maps: Any, table: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    readers: dict[str, Callable[[], Any]] = {
        "ipcache": maps.ipcache.items,
        "policy": lambda: maps.policy.items(all_generations=args.all_generations),
        "ct": maps.ct.items,
        "fqdn": maps.fqdn.items,
        "endpoints": lambda: [{"ifindex": k, **_jsonable(v)}
                              for k, v in maps.endpoints.items().items()],
        "counters": lambda: [_jsonable(maps.counters())],
    }
    rows = _jsonable(readers[table]())
    assert isinstance(rows, list)
    return rows


def _print_table(rows: Sequence[dict[str, Any]], out: Any) -> None:
    if not rows:
        print("(no entries)", file=out)
        return
    cols = list(rows[0])
    cells = [[_cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(cols, widths, strict=True)), file=out)
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip(),
              file=out)


def _cell(value: Any) -> str:
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"))
    return "" if value is None else str(value)


def _list(args: argparse.Namespace) -> int:
    from redirect.loader import pin_dir_of
    from redirect.maps import DatapathMaps

    try:
        node = resolve_node(args.node, args.pin_root)
        maps = DatapathMaps.open_pinned(pin_dir_of(node, args.pin_root))
        try:
            rows = _rows(maps, args.table, args)
        finally:
            maps.close()
    except L7gateError as exc:
        print(f"l7gate bpf: {exc}", file=sys.stderr)
        return 1
    if args.output == "json":
        print(json.dumps(rows, indent=None))
    else:
        _print_table(rows, sys.stdout)
    return 0


def _dump_source(args: argparse.Namespace) -> int:
    from redirect.loader import dump_source

    node = args.node or os.environ.get("L7GATE_NODE") or "NODE"
    try:
        sys.stdout.write(dump_source(node, args.pin_root))
    except L7gateError as exc:
        print(f"l7gate bpf: {exc}", file=sys.stderr)
        return 2
    return 0
