"""Turn one parsed request head into the request we decide on and forward (pure, no I/O).

Contract: `prepare_request(gate, head, conn, limits)` checks the head's semantics (framing,
Host, target form, hop-by-hop fields), normalizes the target, and returns a
`PreparedRequest` whose method, path, host and headers are exactly what the policy sees (it
is the policy's `HttpRequestView`) and whose `upstream_head` is exactly what the origin
receives: a fresh serialisation (RFC 9110 §7.6.1 hop-by-hop fields removed, one Host, one
framing header), never the client's bytes. Raises `HttpReject`.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from proxy.http.actions import ConnInfo
from proxy.http.codec import CodecHead, codec_agrees
from proxy.http.limits import HttpLimits
from proxy.http.normalize import normalize_origin
from proxy.http.wire import GateResult, HttpReject, parse_content_length

# RFC 3986 host (reg-name or IP literal) with an optional port; no userinfo, no spaces.
_HOST = r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]+)"
AUTHORITY = re.compile(_HOST + r"(?::[0-9]{1,5})?")
_AUTHORITY_WITH_PORT = re.compile(_HOST + r":[0-9]{1,5}")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")

# RFC 9110 §7.6.1 plus the ones every proxy strips; the framing fields are re-created by us.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
    "upgrade", "http2-settings", "content-length", "host",
})


class BodyKind(enum.Enum):
    NONE = "none"
    LENGTH = "length"
    CHUNKED = "chunked"


@dataclass(slots=True)  # not frozen: built per request, frozen init costs ~5x
class PreparedRequest:
    method: str
    version: str  # client's version, "1.0" | "1.1"
    protocol: str  # "HTTP/1.0" | "HTTP/1.1", for flow records
    # what the policy decides on (policy.types.HttpRequestView, HttpRequestMeta's fields): the
    # normalized target, the Host value forwarded, the fields forwarded (Host first)
    path: str
    host: str
    headers: tuple[tuple[str, str], ...]
    url: str  # http://host/path, for flow records
    upstream_head: bytes
    body: BodyKind
    length: int  # for BodyKind.LENGTH
    keep_alive: bool  # client connection may carry another request afterwards
    expect_continue: bool
    upgrade: str | None  # Upgrade value forwarded (allowed upgrade), None otherwise
    is_connect: bool

    # Written out (dataclass keeps an __init__ the class defines; eq and repr stay
    # generated): compiled (proxy/compiled.py), this is C, where the generated one would
    # stay interpreted (~41 bytecodes per request).
    def __init__(self, method: str, version: str, protocol: str, path: str, host: str,
                 headers: tuple[tuple[str, str], ...], url: str, upstream_head: bytes,
                 body: BodyKind, length: int, keep_alive: bool, expect_continue: bool,
                 upgrade: str | None, is_connect: bool) -> None:
        self.method = method
        self.version = version
        self.protocol = protocol
        self.path = path
        self.host = host
        self.headers = headers
        self.url = url
        self.upstream_head = upstream_head
        self.body = body
        self.length = length
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue
        self.upgrade = upgrade
        self.is_connect = is_connect


def _tokens(values: list[str]) -> list[str]:
    out = []
    for val in values:
        for part in val.split(","):
            tok = part.strip(" \t").lower()
            if tok:
                if not _TOKEN.fullmatch(tok):
                    raise HttpReject(400, "invalid token in field value")
                out.append(tok)
    return out


def _check_agreement(gate: GateResult, head: CodecHead) -> None:
    if not codec_agrees(head, gate.method, gate.target, gate.version, gate.headers):
        raise HttpReject(400, "codec disagrees with the strict gate on the request head")


def _resolve_target(method: str, target: str, host_hdr: str | None, conn: ConnInfo,
                    limits: HttpLimits) -> tuple[str, str]:
    """Returns (host for policy and upstream, normalized target)."""
    if method == "CONNECT":
        if not _AUTHORITY_WITH_PORT.fullmatch(target):
            raise HttpReject(400, "CONNECT needs an authority-form target")
        return target.lower(), target.lower()
    if target == "*":
        if method != "OPTIONS":
            raise HttpReject(400, "asterisk-form only with OPTIONS")
        host = host_hdr if host_hdr is not None else f"{conn.dst_ip}:{conn.dst_port}"
        return host, "*"
    if target.startswith("/"):
        host = host_hdr if host_hdr is not None else f"{conn.dst_ip}:{conn.dst_port}"
        return host, normalize_origin(target, limits.escaped_slash, limits.backslash)
    scheme, sep, rest = target.partition("://")
    if not sep or scheme.lower() != "http":
        raise HttpReject(400, "unsupported request target")
    cut = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i != -1),
              default=len(rest))
    authority, path = rest[:cut], rest[cut:]
    if "@" in authority:
        raise HttpReject(400, "userinfo in absolute-form target")
    if not AUTHORITY.fullmatch(authority):
        raise HttpReject(400, "invalid authority in absolute-form target")
    if not path.startswith("/"):
        path = "/" + path
    # RFC 9112 §3.2.2: the target's authority wins over Host; we send only that one.
    return authority.lower(), normalize_origin(path, limits.escaped_slash, limits.backslash)


def _framing(special: dict[str, list[str]], version: str,
             is_connect: bool) -> tuple[BodyKind, int]:
    te = special.get("transfer-encoding")
    cl = special.get("content-length")
    if te and cl:
        raise HttpReject(400, "both Content-Length and Transfer-Encoding")  # RFC 9112 §6.1
    if te:
        if version == "1.0":
            raise HttpReject(400, "Transfer-Encoding in an HTTP/1.0 request")
        if len(te) != 1 or te[0].lower() != "chunked":
            raise HttpReject(400, "Transfer-Encoding other than a single chunked")
        kind, length = BodyKind.CHUNKED, 0
    elif cl:
        try:
            length = parse_content_length(cl)
        except ValueError as exc:
            raise HttpReject(400, str(exc)) from exc
        kind = BodyKind.LENGTH
    else:
        kind, length = BodyKind.NONE, 0
    if is_connect and (kind is BodyKind.CHUNKED or length):
        raise HttpReject(400, "CONNECT with a body")
    return kind, length


_SPECIAL = frozenset({"host", "transfer-encoding", "content-length", "connection", "expect",
                      "upgrade"})


PROTOCOL = {"1.0": "HTTP/1.0", "1.1": "HTTP/1.1"}

def serialise(method: str, target: str, fwd: list[tuple[str, str]]) -> bytes:
    # One C-level join over the validated pieces (no per-field Python formatting).
    return "".join((method, " ", target, " HTTP/1.1\r\n", "\r\n".join(map(": ".join, fwd)),
                    "\r\n\r\n")).encode("latin-1")


def _prepare_plain(gate: GateResult, conn: ConnInfo, limits: HttpLimits) -> PreparedRequest:
    """The gate saw no field but Host that needs handling (`GateResult.plain`): no body,
    no Connection options, nothing hop-by-hop to drop. Same checks and output as the full
    path below for such heads."""
    headers, method, version = gate.headers, gate.method, gate.version
    hosts = [v for k, v in headers if k == "host"]
    if len(hosts) > 1:
        raise HttpReject(400, "more than one Host")
    if not hosts and version == "1.1":
        raise HttpReject(400, "missing Host in HTTP/1.1")  # RFC 9112 §3.2
    host_hdr = hosts[0].lower() if hosts else None
    if host_hdr is not None and not AUTHORITY.fullmatch(host_hdr):
        raise HttpReject(400, "invalid Host")
    host, target = _resolve_target(method, gate.target, host_hdr, conn, limits)
    fwd = [("host", host)]
    fwd += [kv for kv in headers if kv[0] != "host"]
    url = "".join(("http://", host, target)) if target[0] == "/" else "http://" + host
    return PreparedRequest(method, version, PROTOCOL[version], target, host, tuple(fwd), url,
                           serialise(method, target, fwd), BodyKind.NONE, 0,
                           version == "1.1", False, None, method == "CONNECT")


def prepare_request(gate: GateResult, head: CodecHead, conn: ConnInfo,
                    limits: HttpLimits) -> PreparedRequest:
    _check_agreement(gate, head)
    if gate.plain:
        return _prepare_plain(gate, conn, limits)
    headers, method, version = gate.headers, gate.method, gate.version
    special: dict[str, list[str]] = {}
    for name, value in headers:  # one pass: the fields whose meaning we enforce
        if "_" in name:
            raise HttpReject(400, "underscore in header name")  # Envoy edge guide
        if name in _SPECIAL:
            if name in special:
                special[name].append(value)
            else:
                special[name] = [value]
    hosts = special.get("host", ())
    if len(hosts) > 1:
        raise HttpReject(400, "more than one Host")
    if not hosts and version == "1.1":
        raise HttpReject(400, "missing Host in HTTP/1.1")  # RFC 9112 §3.2
    host_hdr = hosts[0].lower() if hosts else None
    if host_hdr is not None and not AUTHORITY.fullmatch(host_hdr):
        raise HttpReject(400, "invalid Host")
    is_connect = method == "CONNECT"
    host, target = _resolve_target(method, gate.target, host_hdr, conn, limits)
    if len(special) == len(hosts):  # only Host (the common case): no framing, no tokens
        kind, length, conn_tokens, expect = BodyKind.NONE, 0, [], []
    else:
        kind, length = _framing(special, version, is_connect)
        conn_tokens = _tokens(special.get("connection", []))
        expect = [v.lower() for v in special.get("expect", [])]
    keep_alive = version == "1.1" and "close" not in conn_tokens
    if expect and (version == "1.1") and expect != ["100-continue"]:
        raise HttpReject(400, "unsupported Expect")
    expect_continue = version == "1.1" and bool(expect)
    upgrade = None
    if version == "1.1" and "upgrade" in conn_tokens and not is_connect:
        # h2c would hide every later request from the policy: never offer it upstream.
        protos = [p for p in _tokens(special.get("upgrade", [])) if not p.startswith("h2c")]
        upgrade = ", ".join(protos) or None
    fwd: list[tuple[str, str]] = [("host", host)]
    if len(headers) > len(hosts) or conn_tokens:
        drop = HOP_BY_HOP.union(conn_tokens) if conn_tokens else HOP_BY_HOP
        if not expect_continue:
            drop = drop | {"expect"}  # RFC 9110 §10.1.1: a 1.0 request's Expect is ignored
        fwd += [(k, v) for k, v in headers if k not in drop and not k.startswith("proxy-")]
    if kind is BodyKind.LENGTH:
        fwd.append(("content-length", str(length)))
    elif kind is BodyKind.CHUNKED:
        fwd.append(("transfer-encoding", "chunked"))
    if upgrade is not None:
        fwd += [("connection", "upgrade"), ("upgrade", upgrade)]
    upstream_head = serialise(method, target, fwd)
    url = "".join(("http://", host, target)) if target[0] == "/" else "http://" + host
    return PreparedRequest(method, version, PROTOCOL[version], target, host, tuple(fwd), url,
                           upstream_head, kind, length, keep_alive, expect_continue, upgrade,
                           is_connect)
