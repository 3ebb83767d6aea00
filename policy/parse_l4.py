"""Validation of one ingress/egress(/Deny) rule: peers, ports and L7 (pure; no I/O here).

Cilium references: `pkg/policy/api/rule_validation.go` (Sanitize), `pkg/policy/api/l4.go`,
`http.go`, `entity.go`, `cidr.go`; policy-semantics.md §3-§9. Peer selectors get the
namespace injection of `policy.selector.inject_namespace`.
"""

from __future__ import annotations

import ipaddress

import re2

from policy.dnsname import DnsNameError, NameMatcher, build_matcher
from policy.model import (
    CidrRule,
    FullRegex,
    HeaderMatch,
    HttpRule,
    PeerKind,
    PeerMatch,
    PeerRule,
    PortRule,
    PortSpec,
)
from policy.parse import Ctx, parse_selector, unsupported
from policy.selector import Selector, equals, inject_namespace
from policy.types import Direction, Proto
from policy.yamlnode import YMap, YNode, YScalar

MAX_PORTS_PER_RULE = 40  # Cilium rule_validation.go maxPorts
MAX_PORT = 65535
CLUSTER_NAME = "default"  # the cluster name pods carry (types.POD_IDENTITY_DEFAULTS)
PROTOCOLS = {"TCP": Proto.TCP, "UDP": Proto.UDP, "SCTP": Proto.SCTP, "ANY": Proto.ANY}
MISMATCH_ACTIONS = ("LOG", "ADD", "DELETE", "REPLACE")
# Named ports: l7gate has no container-port table, so only these IANA names resolve.
NAMED_PORTS = {"http": 80, "https": 443, "dns": 53, "domain": 53, "dns-tcp": 53, "http-alt": 8080}

_RESERVED = ("host", "remote-node", "kube-apiserver", "health", "init", "ingress", "unmanaged")
_CLUSTER = (
    *(Selector((equals("reserved", n, ""),)) for n in _RESERVED),
    Selector((equals("k8s", "io.cilium.k8s.policy.cluster", CLUSTER_NAME),)),
)
ENTITIES: dict[str, tuple[Selector, ...]] = {
    "world": (Selector((equals("reserved", "world", ""),)),),
    "world-ipv4": (Selector((equals("reserved", "world", ""),)),),
    "world-ipv6": (),  # l7gate is IPv4-only: no IPv6 peer exists
    "cluster": _CLUSTER,
    "all": (Selector(()),),
    **{n: (Selector((equals("reserved", n, ""),)),) for n in _RESERVED},
}

_L3 = {
    Direction.INGRESS: ("fromEndpoints", "fromCIDR", "fromCIDRSet", "fromEntities"),
    Direction.EGRESS: ("toEndpoints", "toCIDR", "toCIDRSet", "toEntities", "toFQDNs"),
}
_UNSUPPORTED = {
    Direction.INGRESS: unsupported("fromRequires", "fromGroups", "fromNodes", "icmps",
                                   "authentication"),
    Direction.EGRESS: unsupported("toRequires", "toGroups", "toNodes", "toServices", "icmps",
                                  "authentication"),
}


def parse_peer_rule(
    node: YNode, ctx: Ctx, fld: str, direction: Direction, deny: bool, ns: str | None,
    rule_id: str,
) -> PeerRule | None:
    m = ctx.mapping(node, fld)
    if m is None:
        return None
    before = len(ctx.problems)
    members = _L3[direction]
    bad = dict(_UNSUPPORTED[direction])
    allowed = {*members, "toPorts"}
    if deny and direction is Direction.EGRESS:
        allowed.discard("toFQDNs")
        bad["toFQDNs"] = "toFQDNs is not supported in deny rules (Cilium deny.rst)"
    ctx.check_keys(m, allowed, fld, bad)
    present = [k for k in members if k in m.items and k in allowed]
    if len(present) > 1:
        ctx.error(m.line, fld, f"combining {present[0]} and {present[1]} is not supported")
    peer: PeerMatch | None = None
    port_rules = None
    if "toPorts" in m.items:
        port_rules = _to_ports(m.items["toPorts"], ctx, f"{fld}.toPorts", direction, deny)
        if not port_rules:
            port_rules = None  # `toPorts: []` is no L4 member, like an omitted one (Cilium)
    if present:
        peer = _peer(m, present[0], ctx, f"{fld}.{present[0]}", ns)
    elif port_rules is None:
        # neither L3 nor L4 (`{}`): selects nothing, still enables default deny (§3)
        peer = PeerMatch(PeerKind.SELECTORS, (), text="nothing (empty rule)")
    if any(not p.warning for p in ctx.problems[before:]):
        return None
    return PeerRule(rule_id, direction, deny, peer, port_rules, m.line)


def _peer(m: YMap, key: str, ctx: Ctx, fld: str, ns: str | None) -> PeerMatch | None:
    items = ctx.seq(m.items[key], fld)
    if items is None:
        if isinstance(m.items[key], YScalar) and m.items[key].value is None:  # type: ignore[union-attr]
            items = []  # `fromEndpoints:` (null) reads as an empty list: selects nothing
        else:
            return None
    if key.endswith("Endpoints"):
        sels = [parse_selector(n, ctx, f"{fld}[{i}]") for i, n in enumerate(items)]
        if any(s is None for s in sels):
            return None
        injected = tuple(inject_namespace(s, ns) for s in sels if s is not None)
        return PeerMatch(PeerKind.SELECTORS, injected,
                         text=" | ".join(s.describe() for s in injected) or "nothing")
    if key.endswith("Entities"):
        out: list[Selector] = []
        for i, n in enumerate(items):
            name = ctx.string(n, f"{fld}[{i}]")
            if name is None:
                return None
            if name not in ENTITIES:
                ctx.error(n.line, f"{fld}[{i}]",
                          f"unknown entity {name!r}; expected one of {', '.join(sorted(ENTITIES))}")
                return None
            out.extend(ENTITIES[name])
        return PeerMatch(PeerKind.ENTITIES, tuple(out), text="entities " + ",".join(
            str(n.value) for n in items if isinstance(n, YScalar)))
    if key.endswith("CIDR") or key.endswith("CIDRSet"):
        cidrs = _cidrs(items, ctx, fld, key.endswith("Set"))
        if cidrs is None:
            return None
        return PeerMatch(PeerKind.CIDRS, cidrs=cidrs,
                         text="cidr " + ",".join(str(c.net) for c in cidrs))
    matcher = _fqdns(items, ctx, fld)
    if matcher is None:
        return None
    return PeerMatch(PeerKind.FQDNS, fqdns=matcher, text="fqdns")


def _network(text: str, ctx: Ctx, line: int, fld: str) -> ipaddress.IPv4Network | bool | None:
    """The IPv4 prefix; False after an error; None for IPv6 (warned, never matches)."""
    try:
        net = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        ctx.error(line, fld, f"invalid CIDR {text!r}")
        return False
    if isinstance(net, ipaddress.IPv6Network):
        ctx.warn(line, fld, f"IPv6 prefix {text!r} ignored: l7gate is IPv4-only")
        return None
    return net


def _cidrs(items: list[YNode], ctx: Ctx, fld: str, is_set: bool) -> tuple[CidrRule, ...] | None:
    out: list[CidrRule] = []
    ok = True
    for i, n in enumerate(items):
        f = f"{fld}[{i}]"
        if not is_set:
            text = ctx.string(n, f)
            net = _network(text, ctx, n.line, f) if text is not None else False
            ok = ok and net is not False
            if isinstance(net, ipaddress.IPv4Network):
                out.append(CidrRule(net))
            continue
        m = ctx.mapping(n, f)
        if m is None:
            ok = False
            continue
        ctx.check_keys(m, {"cidr", "except"}, f, unsupported("cidrGroupRef", "cidrGroupSelector"))
        text = ctx.string(m.items.get("cidr"), f"{f}.cidr")
        if text is None:
            if "cidr" not in m.items:
                ctx.error(m.line, f"{f}.cidr", "required")
            ok = False
            continue
        net = _network(text, ctx, m.items["cidr"].line, f"{f}.cidr")
        excepts: list[ipaddress.IPv4Network] = []
        for j, e in enumerate(ctx.seq(m.items.get("except"), f"{f}.except") or ()):
            etext = ctx.string(e, f"{f}.except[{j}]")
            enet = _network(etext, ctx, e.line, f"{f}.except[{j}]") if etext else False
            if isinstance(enet, ipaddress.IPv4Network) and isinstance(net, ipaddress.IPv4Network):
                if not enet.subnet_of(net):
                    ctx.error(e.line, f"{f}.except[{j}]",
                              f"except {enet} is not contained in cidr {net}")
                    ok = False
                excepts.append(enet)
            ok = ok and enet is not False
        ok = ok and net is not False
        if isinstance(net, ipaddress.IPv4Network):
            out.append(CidrRule(net, tuple(excepts)))
    return tuple(out) if ok else None


def _fqdns(items: list[YNode], ctx: Ctx, fld: str) -> NameMatcher | None:
    names: list[str] = []
    patterns: list[str] = []
    ok = True
    for i, n in enumerate(items):
        f = f"{fld}[{i}]"
        m = ctx.mapping(n, f)
        if m is None:
            ok = False
            continue
        ctx.check_keys(m, {"matchName", "matchPattern"}, f)
        name = ctx.string(m.items.get("matchName"), f"{f}.matchName")
        pattern = ctx.string(m.items.get("matchPattern"), f"{f}.matchPattern")
        if (name is None) == (pattern is None):
            ctx.error(m.line, f, "exactly one of matchName and matchPattern is required")
            ok = False
            continue
        ok = _check_name(ctx, m, f, name, pattern) and ok
        names.extend([name] if name is not None else [])
        patterns.extend([pattern] if pattern is not None else [])
    return build_matcher(names, patterns) if ok else None


def _check_name(ctx: Ctx, m: YMap, f: str, name: str | None, pattern: str | None) -> bool:
    try:
        build_matcher([name] if name is not None else [], [pattern] if pattern is not None else [])
    except DnsNameError as exc:
        key = "matchName" if name is not None else "matchPattern"
        ctx.error(m.items[key].line, f"{f}.{key}", str(exc))
        return False
    return True


# --- ports and L7 -------------------------------------------------------------------------------


def _to_ports(
    node: YNode, ctx: Ctx, fld: str, direction: Direction, deny: bool
) -> tuple[PortRule, ...] | None:
    items = ctx.seq(node, fld)
    if items is None:
        return None if not (isinstance(node, YScalar) and node.value is None) else ()
    out: list[PortRule] = []
    for i, n in enumerate(items):
        pr = _port_rule(n, ctx, f"{fld}[{i}]", direction, deny)
        if pr is not None:
            out.append(pr)
    return tuple(out)


def _port_rule(
    node: YNode, ctx: Ctx, fld: str, direction: Direction, deny: bool
) -> PortRule | None:
    m = ctx.mapping(node, fld)
    if m is None:
        return None
    allowed = {"ports"} if deny else {"ports", "rules"}
    bad = unsupported("terminatingTLS", "originatingTLS", "serverNames", "listener")
    if deny:
        bad["rules"] = "L7 rules are not supported in deny rules (Cilium deny.rst)"
    ctx.check_keys(m, allowed, fld, bad)
    http: tuple[HttpRule, ...] | None = None
    dns: NameMatcher | None = None
    rules = ctx.mapping(m.items.get("rules"), f"{fld}.rules") if not deny else None
    kinds: list[str] = []
    if rules is not None:
        ctx.check_keys(rules, {"http", "dns"}, f"{fld}.rules",
                       unsupported("kafka", "l7proto", "l7"))
        kinds = [k for k in ("http", "dns", "kafka", "l7proto") if k in rules.items]
        if len(kinds) > 1:
            ctx.error(rules.line, f"{fld}.rules",
                      "multiple L7 protocol rule types specified in single rule")
        if "http" in rules.items:
            http = _http_rules(rules.items["http"], ctx, f"{fld}.rules.http")
        if "dns" in rules.items:
            if direction is Direction.INGRESS:
                ctx.error(rules.key_lines["dns"], f"{fld}.rules.dns",
                          "DNS rules are not allowed on ingress")
            dns = _dns_rules(rules.items["dns"], ctx, f"{fld}.rules.dns")
    ports_node = m.items.get("ports")
    raw_ports = ctx.seq(ports_node, f"{fld}.ports") or []
    if len(raw_ports) > MAX_PORTS_PER_RULE:
        ctx.error(m.line, f"{fld}.ports", f"too many ports, the max is {MAX_PORTS_PER_RULE}")
    if kinds and not raw_ports:
        ctx.error(m.line, f"{fld}.ports", "L7 rules need at least one port")
    ports: list[PortSpec] = []
    for i, pn in enumerate(raw_ports):
        spec = _port(pn, ctx, f"{fld}.ports[{i}]", kinds)
        if spec is not None:
            ports.append(spec)
    if not raw_ports and not kinds:
        # Cilium builds one L4 filter per listed port: none listed, nothing allowed.
        ctx.warn(m.line, f"{fld}.ports", "toPorts entry without ports matches nothing")
    return PortRule(tuple(ports), http, dns)


def _port(node: YNode, ctx: Ctx, fld: str, l7: list[str]) -> PortSpec | None:
    m = ctx.mapping(node, fld)
    if m is None:
        return None
    ctx.check_keys(m, {"port", "endPort", "protocol"}, fld)
    proto_text = ctx.string(m.items.get("protocol"), f"{fld}.protocol")
    proto = Proto.ANY
    if proto_text is not None and proto_text != "":
        if proto_text not in PROTOCOLS:
            ctx.error(m.items["protocol"].line, f"{fld}.protocol",
                      f"unknown protocol {proto_text!r}; expected TCP, UDP, SCTP or ANY")
            return None
        proto = PROTOCOLS[proto_text]
    elif "protocol" in m.items and proto_text is None:
        return None
    port_node = m.items.get("port")
    text = ctx.string(port_node, f"{fld}.port", allow_int=True) if port_node else "0"
    if text is None:
        return None
    text = text.strip()
    line = port_node.line if port_node is not None else m.line
    lo = _port_number(text, ctx, line, f"{fld}.port")
    if lo is None:
        return None
    hi = lo
    end = m.items.get("endPort")
    if end is not None and not (isinstance(end, YScalar) and end.value in (None, 0)):
        value = end.value if isinstance(end, YScalar) else None
        if not isinstance(value, int) or isinstance(value, bool):
            ctx.error(end.line, f"{fld}.endPort", "must be an integer")
            return None
        if not 0 <= value <= MAX_PORT:
            ctx.error(end.line, f"{fld}.endPort", f"port {value} out of range 0-{MAX_PORT}")
            return None
        if lo <= 0:
            ctx.error(end.line, f"{fld}.endPort", "endPort needs a non-zero numeric port")
            return None
        if value < lo:
            ctx.error(end.line, f"{fld}.endPort", f"endPort {value} is lower than port {lo}")
            return None
        hi = value
    if lo < 0:  # unresolvable named port: matches nothing
        return None
    if not _check_l7_port(ctx, m, fld, l7, proto, lo, hi):
        return None
    if "http" in l7 and proto is Proto.ANY:
        proto = Proto.TCP
    if lo == 0:
        return PortSpec(proto, 0, MAX_PORT)
    return PortSpec(proto, lo, hi)


def _check_l7_port(
    ctx: Ctx, m: YMap, fld: str, l7: list[str], proto: Proto, lo: int, hi: int
) -> bool:
    if not l7:
        return True
    if lo == 0:
        ctx.error(m.line, f"{fld}.port", "L7 rules can not be applied to port 0 (all ports)")
        return False
    if "dns" in l7:
        if hi != lo:
            ctx.error(m.line, f"{fld}.endPort", "DNS rules do not support port ranges")
            return False
        if proto is Proto.SCTP:
            ctx.error(m.line, f"{fld}.protocol", "DNS rules apply to TCP, UDP or ANY only")
            return False
        return True
    if proto is Proto.TCP:
        return True
    if proto is Proto.ANY and "protocol" not in m.items and "http" in l7:
        ctx.warn(m.line, f"{fld}.protocol",
                 "L7 rules can only apply to TCP; protocol is not set, accepted as TCP "
                 "(Cilium rejects this policy)")
        return True
    ctx.error(m.line, f"{fld}.protocol",
              f"L7 rules can only apply to TCP (not {proto.name}) except for DNS rules")
    return False


def _port_number(text: str, ctx: Ctx, line: int, fld: str) -> int | None:
    """Port number; -1 for a named port that does not resolve (warned)."""
    if text.isdigit():
        value = int(text)
        if value > MAX_PORT:
            ctx.error(line, fld, f"port {value} out of range 0-{MAX_PORT}")
            return None
        return value
    name = text.lower()
    valid = (0 < len(name) <= 15 and all(c.isalnum() or c == "-" for c in name)  # IANA_SVC_NAME
             and any(c.isalpha() for c in name) and not name.startswith("-")
             and not name.endswith("-") and "--" not in name and name.isascii())
    if not valid:
        ctx.error(line, fld, f"invalid port {text!r}: not a number 0-{MAX_PORT} nor a port name")
        return None
    if name in NAMED_PORTS:
        return NAMED_PORTS[name]
    ctx.warn(line, fld, f"named port {text!r} cannot be resolved (no container-port data); "
                        "this port entry matches nothing")
    return -1


def _compile(text: str, ctx: Ctx, line: int, fld: str) -> FullRegex | None:
    try:
        return FullRegex(text)
    except re2.error as exc:
        detail = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else exc
        ctx.error(line, fld, f"invalid regular expression {text!r}: {detail}")
        return None


def _http_rules(node: YNode, ctx: Ctx, fld: str) -> tuple[HttpRule, ...] | None:
    items = ctx.seq(node, fld)
    if items is None:
        return None if not (isinstance(node, YScalar) and node.value is None) else ()
    out: list[HttpRule] = []
    for i, n in enumerate(items):
        rule = _http_rule(n, ctx, f"{fld}[{i}]")
        if rule is not None:
            out.append(rule)
    return tuple(out)


def _http_rule(node: YNode, ctx: Ctx, fld: str) -> HttpRule | None:
    m = ctx.mapping(node, fld)
    if m is None:
        return None
    ctx.check_keys(m, {"method", "path", "host", "headers", "headerMatches"}, fld)
    regexes: dict[str, FullRegex | None] = {}
    ok = True
    for key in ("method", "path", "host"):
        text = ctx.string(m.items.get(key), f"{fld}.{key}")
        regexes[key] = None
        if key in m.items and text is None:
            ok = False
        elif text:  # "" = field not set (Go zero value)
            regexes[key] = _compile(text, ctx, m.items[key].line, f"{fld}.{key}")
            ok = ok and regexes[key] is not None
    headers: list[tuple[str, str | None]] = []
    for j, h in enumerate(ctx.seq(m.items.get("headers"), f"{fld}.headers") or ()):
        text = ctx.string(h, f"{fld}.headers[{j}]")
        if text is None:
            ok = False
            continue
        name, _, value = text.partition(" ")
        name = name.rstrip(":").lower()
        if ":" in name:
            ctx.warn(h.line, f"{fld}.headers[{j}]",
                     f"{text!r} has no space after ':'; like Cilium it is read as a header "
                     "literally named so, which never matches")
        headers.append((name, value.strip() if value.strip() else None))
    matches: list[HeaderMatch] = []
    for j, h in enumerate(ctx.seq(m.items.get("headerMatches"), f"{fld}.headerMatches") or ()):
        hm = _header_match(h, ctx, f"{fld}.headerMatches[{j}]")
        ok = ok and hm is not None
        if hm is not None:
            matches.append(hm)
    if not ok:
        return None
    text = ", ".join(f"{k}={plain_text(m, k)}" for k in ("method", "path", "host") if regexes[k])
    return HttpRule(regexes["method"], regexes["path"], regexes["host"], tuple(headers),
                    tuple(matches), text or "any request")


def plain_text(m: YMap, key: str) -> str:
    node = m.items.get(key)
    return str(node.value) if isinstance(node, YScalar) else ""


def _header_match(node: YNode, ctx: Ctx, fld: str) -> HeaderMatch | None:
    m = ctx.mapping(node, fld)
    if m is None:
        return None
    ctx.check_keys(m, {"name", "value", "mismatch"}, fld, {
        "secret": "secret references are not supported (l7gate has no secret store)"})
    name = ctx.string(m.items.get("name"), f"{fld}.name")
    value = ctx.string(m.items.get("value"), f"{fld}.value")
    mismatch = ctx.string(m.items.get("mismatch"), f"{fld}.mismatch") or ""
    if not name:
        ctx.error(m.line, f"{fld}.name", "required")
        return None
    if mismatch and mismatch not in MISMATCH_ACTIONS:
        ctx.error(m.items["mismatch"].line, f"{fld}.mismatch",
                  f"unknown mismatch action {mismatch!r}; expected LOG, ADD, DELETE or REPLACE")
        return None
    if "secret" in m.items:
        return None
    return HeaderMatch(name.lower(), value or None, mismatch)


def _dns_rules(node: YNode, ctx: Ctx, fld: str) -> NameMatcher | None:
    names: list[str] = []
    patterns: list[str] = []
    ok = True
    for i, n in enumerate(ctx.seq(node, fld) or ()):
        f = f"{fld}[{i}]"
        m = ctx.mapping(n, f)
        if m is None:
            ok = False
            continue
        ctx.check_keys(m, {"matchName", "matchPattern"}, f)
        name = ctx.string(m.items.get("matchName"), f"{f}.matchName") or None
        pattern = ctx.string(m.items.get("matchPattern"), f"{f}.matchPattern") or None
        if name is None and pattern is None:
            ctx.error(m.line, f, "matchName or matchPattern is required")
            ok = False
            continue
        # Both may be present in a rules.dns entry: either matching allows (PortRuleDNS doc).
        for nm, pt in ((name, None), (None, pattern)):
            if nm is not None or pt is not None:
                ok = _check_name(ctx, m, f, nm, pt) and ok
        names.extend([name] if name else [])
        patterns.extend([pattern] if pattern else [])
    return build_matcher(names, patterns) if ok else None
