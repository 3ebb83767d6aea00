"""`l7gate policy validate|trace`: the policy engine from the command line (no agent needed).

validate: exit 0 when every file is valid, else exit 1 with one `FILE:LINE: message` line per
error on stdout; warnings go to stderr as `FILE:LINE: warning: ...` and do not change the exit
code, except under `--strict`, where they are errors.
trace: loads the policies, builds the identities of the two ends and prints one JSON object
(`verdict`, `egress`, `ingress`, ...); exit 0 for either verdict, 2 for unusable input.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
from pathlib import Path
from typing import Any

from policy.compile import compile_policies
from policy.engine import trace
from policy.identity import RESERVED_BY_NAME, build_identities, reserved_identity
from policy.load import load_documents, policy_files
from policy.types import Endpoint, HttpRequestMeta, Peer, Proto

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_UNUSABLE = 2
# Placeholder addresses for the traced pods: never a real peer, so `--src-ip`/`--dst-ip` of
# any real address can not collide with them.
_SRC_POD_IP = ipaddress.IPv4Address("0.0.0.1")
_DST_POD_IP = ipaddress.IPv4Address("0.0.0.2")


class UsageError(Exception):
    """Unusable trace input (exit 2)."""


def register(subparsers: Any) -> None:
    policy = subparsers.add_parser("policy", help="validate policies or trace a flow offline")
    sub = policy.add_subparsers(dest="policy_command", metavar="SUBCOMMAND")
    sub.required = True

    val = sub.add_parser("validate", help="check CiliumNetworkPolicy files")
    val.add_argument("files", nargs="+", metavar="FILE", help="policy file or directory")
    val.add_argument("--strict", action="store_true", help="treat warnings as errors")
    val.set_defaults(func=cmd_validate)

    tr = sub.add_parser("trace", help="decide one flow against policy files")
    tr.add_argument("--policy", nargs="+", action="extend", required=True, metavar="FILE")
    tr.add_argument("--src-namespace")
    tr.add_argument("--src-labels")
    tr.add_argument("--src-ip")
    tr.add_argument("--src-entity")
    tr.add_argument("--dst-namespace")
    tr.add_argument("--dst-labels")
    tr.add_argument("--dst-ip")
    tr.add_argument("--dst-fqdn", action="append", default=[])
    tr.add_argument("--dst-entity")
    tr.add_argument("--dport", type=int, required=True)
    tr.add_argument("--protocol", choices=("TCP", "UDP"), default="TCP")
    tr.add_argument("--http-method")
    tr.add_argument("--http-path")
    tr.add_argument("--http-host")
    tr.add_argument("--http-header", action="append", default=[])
    tr.add_argument("--dns-query")
    tr.add_argument("--strict", action="store_true", help="treat policy warnings as errors")
    tr.set_defaults(func=cmd_trace)


def expand(paths: list[str]) -> list[Path]:
    """Files as given; a directory stands for its *.yaml/*.yml/*.json files (sorted)."""
    out: list[Path] = []
    for p in map(Path, paths):
        out.extend(policy_files(p) if p.is_dir() else [p])
    return out


def cmd_validate(args: argparse.Namespace) -> int:
    result = load_documents(expand(args.files), strict=args.strict)
    for problem in result.warnings:
        print(problem, file=sys.stderr)
    for problem in result.errors:
        print(problem)
    if result.errors:
        return EXIT_INVALID
    print(f"ok: {len(result.policies)} policies in {len(args.files)} file(s)", file=sys.stderr)
    return EXIT_OK


def parse_labels(text: str | None) -> tuple[tuple[str, str], ...]:
    if not text:
        return ()
    out = []
    for item in text.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep or not key:
            raise UsageError(f"bad label {item!r}: expected key=value")
        out.append((key.strip(), value.strip()))
    return tuple(out)


def _ip(text: str, flag: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(text)
    except ValueError as exc:
        raise UsageError(f"{flag}: {text!r} is not an IPv4 address") from exc


def _one_of(args: argparse.Namespace, side: str) -> str:
    pod = any(getattr(args, f"{side}_{k}") is not None for k in ("namespace", "labels"))
    kinds = [k for k, on in (("pod", pod), ("ip", getattr(args, f"{side}_ip") is not None),
                             ("entity", getattr(args, f"{side}_entity") is not None)) if on]
    if len(kinds) != 1:
        raise UsageError(f"give exactly one of --{side}-namespace/--{side}-labels, --{side}-ip, "
                         f"--{side}-entity")
    return kinds[0]


def _endpoint(args: argparse.Namespace, side: str) -> Endpoint:
    ns = getattr(args, f"{side}_namespace") or "default"
    labels = parse_labels(getattr(args, f"{side}_labels"))
    ip = _SRC_POD_IP if side == "src" else _DST_POD_IP
    return Endpoint(ns, f"trace-{side}", labels, ip, node="trace")


def _http(args: argparse.Namespace) -> HttpRequestMeta | None:
    if not any((args.http_method, args.http_path, args.http_host, args.http_header)):
        return None
    headers = []
    for h in args.http_header:
        name, sep, value = h.partition(":")
        if not sep or not name.strip():
            raise UsageError(f"--http-header {h!r}: expected 'Name: value'")
        headers.append((name.strip().lower(), value.strip()))
    return HttpRequestMeta(args.http_method or "GET", args.http_path or "/",
                           args.http_host or "", tuple(headers))


def build_trace(args: argparse.Namespace) -> dict[str, Any]:
    """Resolve the CLI arguments to peers and run the trace; raises UsageError."""
    if not 0 < args.dport <= 65535:
        raise UsageError(f"--dport {args.dport} out of range 1-65535")
    src_kind, dst_kind = _one_of(args, "src"), _one_of(args, "dst")
    if args.dst_fqdn and dst_kind != "ip":
        raise UsageError("--dst-fqdn needs --dst-ip")
    result = load_documents(expand(args.policy), strict=args.strict)
    for problem in result.warnings:
        print(problem, file=sys.stderr)
    if result.errors:
        raise UsageError("\n".join(str(p) for p in result.errors))
    snapshot = compile_policies(result.policies)
    pods = [_endpoint(args, s) for s, k in (("src", src_kind), ("dst", dst_kind)) if k == "pod"]
    table = build_identities(snapshot, pods, [], local_node="trace")

    def peer(side: str, kind: str) -> Peer:
        if kind == "pod":
            ep = next(p for p in pods if p.name == f"trace-{side}")
            return Peer(table.identity_for_endpoint(ep), None, ep)
        if kind == "entity":
            name = getattr(args, f"{side}_entity")
            if name not in RESERVED_BY_NAME:
                raise UsageError(f"--{side}-entity {name!r}: expected one of "
                                 f"{', '.join(sorted(RESERVED_BY_NAME))}")
            return Peer(reserved_identity(RESERVED_BY_NAME[name]))
        ip = _ip(getattr(args, f"{side}_ip"), f"--{side}-ip")
        fqdns = frozenset(_fqdn(n) for n in args.dst_fqdn) if side == "dst" else frozenset()
        return Peer(table.identity_for_ip(ip), ip, None, fqdns)

    src, dst = peer("src", src_kind), peer("dst", dst_kind)
    proto = Proto.TCP if args.protocol == "TCP" else Proto.UDP
    return trace(snapshot, src, dst, args.dport, proto, _http(args), args.dns_query)


def _fqdn(name: str) -> str:
    from policy.dnsname import DnsNameError, validate_match_name

    try:
        return validate_match_name(name)
    except DnsNameError as exc:
        raise UsageError(f"--dst-fqdn: {exc}") from exc


def cmd_trace(args: argparse.Namespace) -> int:
    try:
        out = build_trace(args)
    except UsageError as exc:
        print(f"l7gate policy trace: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    print(json.dumps(out, indent=2))
    return EXIT_OK
