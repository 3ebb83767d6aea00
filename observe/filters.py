"""Hubble's `observe` filter vocabulary: CLI flags -> JSON filter spec -> predicate over Flow.

No I/O here. Contract (Hubble semantics, cilium/cilium hubble/cmd/observe/flows_filter.go):
- Repeating a flag ORs its values; different flags AND.
- `--not` negates the next filter flag only; all negated flags go into a deny filter, and a
  flow that matches the deny filter is hidden.
- Either-side flags (`--pod`, `--ip`, `--label`, `--fqdn`, `--identity`, `--port`,
  `--namespace`) match the source OR the destination: the filter splits into a "left"
  (source side) and "right" (destination side) alternative, as Hubble's filterTracker does.

The spec is JSON-safe so the CLI can send it to the agent:
    {"allow": [FILTER, ...], "deny": [FILTER, ...]}
a flow passes if it matches any allow FILTER (or allow is empty) and no deny FILTER. A FILTER
is `{field: [value, ...]}`; it matches if every field matches, a field if any value does.
Fields are listed in `FIELDS`. `compile_spec(spec)` validates and returns the predicate;
bad values raise `FilterError` (a `ConfigError`) naming the flag.
"""

from __future__ import annotations

import copy
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import re2

from observe.flow import EventKind, Flow, FlowEndpoint, FlowVerdict
from policy.errors import ConfigError

Predicate = Callable[[Flow], bool]
Filter = dict[str, list[Any]]


class FilterError(ConfigError):
    """A filter value that cannot be understood (bad CIDR, bad regex, unknown verdict)."""


# flag name (argparse dest, without the leading dashes) -> (side, spec field suffix)
# side: "either" splits into left/right, "from"/"to" pin one side, "" is side-less.
FLAG_FIELDS: dict[str, tuple[str, str]] = {
    "pod": ("either", "pod"), "from-pod": ("from", "pod"), "to-pod": ("to", "pod"),
    "namespace": ("either", "pod"), "from-namespace": ("from", "pod"),
    "to-namespace": ("to", "pod"),
    "label": ("either", "label"), "from-label": ("from", "label"), "to-label": ("to", "label"),
    "ip": ("either", "ip"), "from-ip": ("from", "ip"), "to-ip": ("to", "ip"),
    "port": ("either", "port"), "from-port": ("from", "port"), "to-port": ("to", "port"),
    "fqdn": ("either", "fqdn"), "from-fqdn": ("from", "fqdn"), "to-fqdn": ("to", "fqdn"),
    "identity": ("either", "identity"), "from-identity": ("from", "identity"),
    "to-identity": ("to", "identity"),
    "verdict": ("", "verdict"), "drop-reason-desc": ("", "drop_reason_desc"),
    "type": ("", "event_type"), "protocol": ("", "protocol"),
    "http-method": ("", "http_method"), "http-path": ("", "http_path"),
    "http-url": ("", "http_url"), "http-header": ("", "http_header"),
    "tcp-flags": ("", "tcp_flags"),
    "http-status": ("", "http_status_code"), "node-name": ("", "node_name"),
    "traffic-direction": ("", "traffic_direction"),
}

SIDED = ("pod", "label", "ip", "port", "fqdn", "identity")
FIELDS = frozenset(
    [f"source_{s}" for s in SIDED] + [f"destination_{s}" for s in SIDED]
    + ["verdict", "drop_reason_desc", "event_type", "protocol", "http_method", "http_path",
       "http_url", "http_header", "tcp_flags", "http_status_code", "node_name",
       "traffic_direction"]
)
PROTOCOLS = ("tcp", "udp", "icmp", "icmpv4", "icmpv6", "http", "dns")
DEFAULT_NAMESPACE = "default"  # Hubble: `--pod name` means default/name


# --- building a spec from CLI flags ------------------------------------------------------


@dataclass
class _Tracker:
    """Hubble's filterTracker: result is `left OR right` (right exists once an either-flag
    was used)."""

    left: Filter
    right: Filter | None = None

    def add(self, fld: str, value: Any) -> None:
        self.left.setdefault(fld, []).append(value)
        if self.right is not None:
            self.right.setdefault(fld, []).append(value)

    def add_either(self, suffix: str, value: Any) -> None:
        if self.right is None:
            self.right = copy.deepcopy(self.left)
        self.left.setdefault(f"source_{suffix}", []).append(value)
        self.right.setdefault(f"destination_{suffix}", []).append(value)

    def filters(self) -> list[Filter]:
        return [f for f in (self.left, self.right) if f]


class SpecBuilder:
    """Collects flags in command-line order, honouring `--not` for the next flag."""

    def __init__(self) -> None:
        self._allow = _Tracker({})
        self._deny = _Tracker({})
        self._negate_next = False

    def negate_next(self) -> None:
        self._negate_next = True

    def add(self, flag: str, raw: str) -> None:
        if flag not in FLAG_FIELDS:
            raise FilterError(f"unknown filter flag --{flag}")
        side, suffix = FLAG_FIELDS[flag]
        value = normalize_value(flag, raw)
        tracker = self._deny if self._negate_next else self._allow
        self._negate_next = False
        if side == "either":
            tracker.add_either(suffix, value)
        elif side == "from":
            tracker.add(f"source_{suffix}", value)
        elif side == "to":
            tracker.add(f"destination_{suffix}", value)
        else:
            tracker.add(suffix, value)

    def spec(self) -> dict[str, list[Filter]]:
        if self._negate_next:
            raise FilterError("--not must be followed by a filter flag")
        return {"allow": self._allow.filters(), "deny": self._deny.filters()}


def normalize_value(flag: str, raw: str) -> Any:
    """Turn one flag value into its spec form; raises FilterError for nonsense."""
    raw = raw.strip()
    if flag.endswith("namespace"):
        return f"{raw}/"
    if flag.endswith("pod"):
        return raw if "/" in raw else f"{DEFAULT_NAMESPACE}/{raw}"
    if flag.endswith("port") or flag.endswith("identity"):
        try:
            num = int(raw)
        except ValueError:
            raise FilterError(f"--{flag}: not a number: {raw!r}") from None
        if num < 0:
            raise FilterError(f"--{flag}: negative: {raw!r}")
        return num
    if flag == "verdict":
        return raw.upper()
    if flag in ("protocol", "traffic-direction", "type"):
        return raw.lower()
    if flag == "http-method":
        return raw.upper()
    if flag == "drop-reason-desc":
        return raw.upper()
    return raw


# --- compiling a spec ----------------------------------------------------------------------


def compile_spec(spec: dict[str, Any] | None) -> Predicate:
    """Validate `spec` and return the predicate it describes (see module doc)."""
    spec = spec or {}
    unknown = set(spec) - {"allow", "deny"}
    if unknown:
        raise FilterError(f"unknown filter spec keys: {sorted(unknown)}")
    allow = [_compile_filter(f) for f in spec.get("allow", [])]
    deny = [_compile_filter(f) for f in spec.get("deny", [])]

    def pred(flow: Flow) -> bool:
        if allow and not any(p(flow) for p in allow):
            return False
        return not any(p(flow) for p in deny)

    return pred


def _compile_filter(f: Filter) -> Predicate:
    if not isinstance(f, dict):
        raise FilterError(f"a filter must be an object, got {type(f).__name__}")
    parts: list[Predicate] = []
    for fld, values in f.items():
        if fld not in FIELDS:
            raise FilterError(f"unknown filter field {fld!r}")
        if not isinstance(values, list) or not values:
            raise FilterError(f"filter field {fld!r} needs a non-empty list")
        parts.append(_compile_field(fld, values))
    return lambda flow: all(p(flow) for p in parts)


def _any(tests: list[Predicate]) -> Predicate:
    return lambda flow: any(t(flow) for t in tests)


def _compile_field(fld: str, values: list[Any]) -> Predicate:
    side, _, what = fld.partition("_")
    if side in ("source", "destination") and what in SIDED:
        is_src = side == "source"
        return _any([_sided_matcher(what, is_src, v) for v in values])
    return _any([_plain_matcher(fld, v) for v in values])


def _sided_matcher(what: str, is_src: bool, value: Any) -> Predicate:
    def ep(flow: Flow) -> FlowEndpoint:
        return flow.source if is_src else flow.destination

    if what == "pod":
        ns, _, prefix = str(value).partition("/")
        return lambda fl: ep(fl).namespace == ns and ep(fl).pod_name.startswith(prefix)
    if what == "label":
        sel = _label_selector(str(value))
        return lambda fl: sel(ep(fl).labels)
    if what == "ip":
        net = _ip_network(str(value))
        return lambda fl: _ip_in(fl.src_ip if is_src else fl.dst_ip, net)
    if what == "port":
        port = _int(value, "port")
        return lambda fl: (fl.src_port if is_src else fl.dst_port) == port
    if what == "identity":
        ident = _int(value, "identity")
        return lambda fl: ep(fl).identity == ident
    if what == "fqdn":
        rx = fqdn_regex(str(value))
        return lambda fl: any(rx.fullmatch(_norm_name(n)) for n in _names(fl, is_src))
    raise FilterError(f"unknown field {what!r}")  # pragma: no cover - FIELDS guards it


def _plain_matcher(fld: str, value: Any) -> Predicate:
    text = str(value)
    match fld:
        case "verdict":
            try:
                verdict = FlowVerdict(text.upper())
            except ValueError:
                raise FilterError(f"--verdict: unknown verdict {text!r}; one of "
                                  + ", ".join(v.value for v in FlowVerdict)) from None
            return lambda fl: fl.verdict is verdict
        case "drop_reason_desc":
            return lambda fl: fl.drop_reason_desc.upper() == text.upper()
        case "event_type":
            name = text.lower().partition(":")[0]
            try:
                kind = EventKind(name)
            except ValueError:
                raise FilterError(f"--type: unknown event type {text!r}; one of "
                                  + ", ".join(k.value for k in EventKind)) from None
            return lambda fl: fl.kind is kind
        case "protocol":
            return _protocol_matcher(text.lower())
        case "http_method":
            return lambda fl: fl.http is not None and fl.http.method.upper() == text.upper()
        case "http_path":
            try:
                rx = re2.compile(text)
            except re2.error as exc:
                raise FilterError(f"--http-path: bad regex {text!r}: {exc}") from None
            return lambda fl: fl.http is not None and rx.search(url_path(fl.http.url)) is not None
        case "http_url":
            try:
                rx_url = re2.compile(text)
            except re2.error as exc:
                raise FilterError(f"--http-url: bad regex {text!r}: {exc}") from None
            return lambda fl: fl.http is not None and rx_url.search(fl.http.url) is not None
        case "http_header":
            return _header_matcher(text)
        case "tcp_flags":
            return _tcp_flags_matcher(text)
        case "http_status_code":
            return _status_matcher(text)
        case "node_name":
            rx = _glob_regex(text, r"[^/]*", flags=0)
            return lambda fl: rx.fullmatch(fl.node_name) is not None
        case "traffic_direction":
            want = text.upper()
            if want not in ("INGRESS", "EGRESS"):
                raise FilterError(f"--traffic-direction: ingress or egress, not {text!r}")
            return lambda fl: fl.traffic_direction.upper() == want
    raise FilterError(f"unknown filter field {fld!r}")  # pragma: no cover


def _protocol_matcher(proto: str) -> Predicate:
    if proto not in PROTOCOLS:
        raise FilterError(f"--protocol: unknown protocol {proto!r}; one of {', '.join(PROTOCOLS)}")
    if proto == "http":
        return lambda fl: fl.http is not None
    if proto == "dns":
        return lambda fl: fl.dns is not None
    if proto == "icmp":
        return lambda fl: fl.protocol.upper().startswith("ICMP")
    return lambda fl: fl.protocol.lower() == proto


TCP_FLAG_NAMES = ("SYN", "ACK", "FIN", "RST", "PSH", "URG", "ECE", "CWR", "NS")


def _tcp_flags_matcher(text: str) -> Predicate:
    """Hubble's --tcp-flags: `syn` or `syn,ack`: every listed flag is set on the flow."""
    want = {f.strip().upper() for f in text.split(",") if f.strip()}
    bad = sorted(want - set(TCP_FLAG_NAMES))
    if not want or bad:
        raise FilterError(f"--tcp-flags: one or more of {', '.join(TCP_FLAG_NAMES)} "
                          f"(comma-separated), not {text!r}")
    return lambda fl: want.issubset({f.upper() for f in fl.tcp_flags})


def _header_matcher(text: str) -> Predicate:
    """Hubble's --http-header KEY:VALUE: a header of the flow with that name (any case)
    and exactly that value."""
    key, sep, value = text.partition(":")
    if not sep or not key.strip():
        raise FilterError(f"--http-header: KEY:VALUE, not {text!r}")
    k, v = key.strip().lower(), value.strip()
    return lambda fl: fl.http is not None and any(
        hk.lower() == k and hv == v for hk, hv in fl.http.headers)


def _status_matcher(text: str) -> Predicate:
    """`404` exact, `4+` / `50+` any code starting with the digits (Hubble's prefix form)."""
    prefix = text[:-1] if text.endswith("+") else text
    if not prefix.isdigit() or len(prefix) > 3 or (not text.endswith("+") and len(prefix) != 3):
        raise FilterError(f"--http-status: a code like 404 or a prefix like 5+, not {text!r}")
    if text.endswith("+"):
        return lambda fl: fl.http is not None and fl.http.code > 0 and str(
            fl.http.code).startswith(prefix)
    code = int(prefix)
    return lambda fl: fl.http is not None and fl.http.code == code


# --- helpers ---------------------------------------------------------------------------------


def url_path(url: str) -> str:
    """The path of an absolute or origin-form URL (`http://h:80/a?b` -> `/a`)."""
    rest = url
    if "://" in rest:
        rest = rest.split("://", 1)[1]
        slash = rest.find("/")
        rest = rest[slash:] if slash >= 0 else "/"
    return rest.split("?", 1)[0].split("#", 1)[0]


def _int(value: Any, what: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise FilterError(f"{what}: not a number: {value!r}") from None


def _ip_network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise FilterError(f"--ip: not an IP or CIDR: {text!r}") from None


def _ip_in(ip: str, net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    if not ip:
        return False
    try:
        return ipaddress.ip_address(ip) in net
    except ValueError:
        return False


def _norm_name(name: str) -> str:
    return name.lower().rstrip(".")


def _names(fl: Flow, is_src: bool) -> list[str]:
    """DNS names for one side: source_names/destination_names, and for DNS flows the query
    (a DNS query names what the client is after, so it counts as a destination name)."""
    names = list(fl.source_names if is_src else fl.destination_names)
    if not is_src and fl.dns is not None and fl.dns.query:
        names.append(fl.dns.query)
    return names


def _glob_regex(pattern: str, star: str, flags: int) -> Any:
    parts = [re2.escape(p) for p in pattern.split("*")]
    try:
        return re2.compile(star.join(parts), flags)
    except re2.error as exc:  # pragma: no cover - escaped input always compiles
        raise FilterError(f"bad pattern {pattern!r}: {exc}") from None


def fqdn_regex(pattern: str) -> Any:
    """A Hubble FQDN pattern: `*` matches DNS name characters only, case-insensitive,
    trailing dot optional."""
    pat = _norm_name(pattern)
    if not pat or not all(c.isalnum() or c in "-_.*" for c in pat):
        raise FilterError(f"--fqdn: not a DNS name pattern: {pattern!r}")
    return _glob_regex(pat, r"[-a-z0-9_]*", flags=0)


def _label_selector(text: str) -> Callable[[list[str]], bool]:
    """`k=v,k2!=v2,k3,!k4` (AND); each key may carry a source prefix (`k8s:`, `reserved:`)."""
    terms = [t.strip() for t in text.split(",") if t.strip()]
    if not terms:
        raise FilterError(f"--label: empty selector {text!r}")
    checks = [_label_term(t) for t in terms]
    return lambda labels: all(c([_split_label(lbl) for lbl in labels]) for c in checks)


def _label_term(term: str) -> Callable[[list[tuple[str, str, str]]], bool]:
    negate = term.startswith("!")
    if negate:
        term = term[1:]
    op = "!=" if "!=" in term else "=" if "=" in term else ""
    key, _, value = term.partition(op) if op else (term, "", "")
    want_src, _, want_key = key.rpartition(":") if ":" in key else ("", "", key)
    if not want_key:
        raise FilterError(f"--label: bad term {term!r}")

    def key_ok(src: str, k: str) -> bool:
        return k == want_key and (not want_src or want_src in (src, "any"))

    if op == "=":
        return lambda ls: any(key_ok(s, k) and v == value for s, k, v in ls) != negate
    if op == "!=":
        return lambda ls: not any(key_ok(s, k) and v == value for s, k, v in ls)
    return lambda ls: any(key_ok(s, k) for s, k, _ in ls) != negate


def _split_label(label: str) -> tuple[str, str, str]:
    """`k8s:app=x` -> (k8s, app, x); `app=x` -> ("", app, x); `reserved:world` -> (reserved,
    world, "")."""
    kv, _, value = label.partition("=")
    src, _, key = kv.partition(":") if ":" in kv else ("", "", kv)
    return src, key, value
