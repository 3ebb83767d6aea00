"""Request-target normalization, the way Envoy does it for Cilium (pure, no I/O).

Contract: `normalize_origin(target)` takes an origin-form target (`/path?query`) and returns
the canonical target that is both matched by the policy and forwarded upstream, or raises
`HttpReject(400)`. Steps, in Envoy's order (normalize_path, then merge_slashes, then the
escaped-slash action): fragments, `%00` and malformed escapes are rejected; percent-encoded
unreserved characters (RFC 3986 §2.3) are decoded once (so `%252e` stays `%252e`); other
escapes are kept with upper-case hex; `%2F`/`%5C` and a literal backslash follow the
configured action (default: reject); dot segments are removed (RFC 3986 §5.2.4); runs of `/`
are merged. The query is left as sent (Cilium matches path+query as one string).
"""

from __future__ import annotations

from proxy.http.limits import BackslashAction, EscapedSlashAction
from proxy.http.wire import HttpReject

_HEX = "0123456789abcdefABCDEF"
_UNRESERVED = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
)


def _decode_unreserved(path: str, escaped_slash: EscapedSlashAction) -> str:
    if "%" not in path:
        return path
    out: list[str] = []
    i, n = 0, len(path)
    while i < n:
        ch = path[i]
        if ch != "%":
            out.append(ch)
            i += 1
            continue
        hx = path[i + 1 : i + 3]
        if len(hx) != 2 or hx[0] not in _HEX or hx[1] not in _HEX:
            raise HttpReject(400, "bad percent-encoding in path")
        val = int(hx, 16)
        dec = chr(val)
        if val == 0:
            raise HttpReject(400, "%00 in path")
        if dec in _UNRESERVED:
            out.append(dec)
        elif dec in "/\\":
            if escaped_slash is EscapedSlashAction.REJECT:
                raise HttpReject(400, "escaped slash or backslash in path")
            out.append(dec)
        else:
            out.append("%" + hx.upper())
        i += 3
    return "".join(out)


def remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4 on an absolute path; keeps a trailing slash where the RFC does."""
    segments = path.split("/")[1:]
    out: list[str] = []
    for idx, seg in enumerate(segments):
        last = idx == len(segments) - 1
        if seg == ".":
            if last:
                out.append("")
        elif seg == "..":
            if out:
                out.pop()
            if last:
                out.append("")
        else:
            out.append(seg)
    return "/" + "/".join(out)


def _merge_slashes(path: str) -> str:
    while "//" in path:
        path = path.replace("//", "/")
    return path


def normalize_path(
    path: str,
    escaped_slash: EscapedSlashAction = EscapedSlashAction.REJECT,
    backslash: BackslashAction = BackslashAction.REJECT,
) -> str:
    if not path.startswith("/"):
        raise HttpReject(400, "origin-form target must start with /")
    path = _decode_unreserved(path, escaped_slash)
    if "\\" in path:
        if backslash is BackslashAction.REJECT:
            raise HttpReject(400, "backslash in path")
        path = path.replace("\\", "/")
    return _merge_slashes(remove_dot_segments(path))


def normalize_origin(
    target: str,
    escaped_slash: EscapedSlashAction = EscapedSlashAction.REJECT,
    backslash: BackslashAction = BackslashAction.REJECT,
) -> str:
    if "#" in target:
        raise HttpReject(400, "fragment in request target")  # Envoy: 400 since 1.19.1
    path, sep, query = target.partition("?")
    if (path[:1] == "/" and "%" not in path and "\\" not in path and "/." not in path
            and "//" not in path):
        return target  # already canonical: the common case costs four scans

    return normalize_path(path, escaped_slash, backslash) + sep + query
