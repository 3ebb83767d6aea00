"""The `l7gate` command line: one argparse tree, each command group owned by its module.

The names, flags and outputs are a contract with users' scripts (ARCHITECTURE.md,
"Command-line contract"): extend them, never break them. Each group module exposes
`register(subparsers)`, which adds its parsers and sets `func` to a callable taking the
parsed namespace and returning the exit code. Importing a group must stay cheap: no bcc,
no sockets at import time.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Modules that contribute command groups, in help order.
GROUPS = (
    "agent.cmd_agent",     # agent, status, fqdn, demo
    "agent.cmd_policy",    # policy validate|trace
    "observe.cli",         # observe
    "agent.cmd_bpf",       # bpf ... list, bpf dump-source
    "agent.sandbox.cli",   # sandbox up|status|exec|reload|restart|down
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="l7gate", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in GROUPS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue  # group not built yet in this checkout
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    rc = args.func(args)
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
