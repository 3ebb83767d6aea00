"""Upstream response framing and the head we send to the client (pure, no I/O).

Contract: `response_framing(head, request_method, client_version)` applies RFC 9112 §6.3 to
an upstream response (no body for HEAD/204/304; exactly one valid Content-Length or a single
`chunked`, else close-delimited; CL together with TE is refused as `BadUpstream`) and says how
the client gets it (same length, re-chunked for 1.1 clients, close-delimited for 1.0).
`client_response_head` re-serialises the head without hop-by-hop fields (RFC 9110 §7.6.1).
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.http.limits import MAX_CHUNK_LINE_BYTES, MAX_HEAD_BYTES
from proxy.http.request import HOP_BY_HOP
from proxy.http.wire import (
    BadUpstream,
    ChunkedDecoder,
    LengthDecoder,
    ResponseHead,
    parse_content_length,
)


@dataclass(slots=True)
class ResponseFraming:
    decoder: LengthDecoder | ChunkedDecoder | None  # None = until the origin closes
    client_chunked: bool  # we re-chunk the body for the client
    content_length: int | None  # value we send to the client, if any
    close_client: bool  # the client connection must close after this response
    upstream_reusable: bool
    conn_tokens: frozenset[str] = frozenset()  # the origin's Connection options (dropped)


_NO_TOKENS: frozenset[str] = frozenset()
_FRAMING_FIELDS = frozenset({"connection", "transfer-encoding", "content-length"})


def _conn_tokens(head: ResponseHead) -> frozenset[str]:
    toks: set[str] = set()
    for k, v in head.headers:
        if k == "connection":
            toks.update(t.strip(" \t").lower() for t in v.split(","))
    return frozenset(toks)


def response_framing(head: ResponseHead, request_method: str, *,
                     client_version: str) -> ResponseFraming:
    te: list[str] = []
    cl: list[str] = []
    toks = _NO_TOKENS
    for k, v in head.headers:  # one pass over the fields that frame or bind the hop
        if k in _FRAMING_FIELDS:
            if k == "content-length":
                cl.append(v)
            elif k == "transfer-encoding":
                te.append(v)
            else:
                toks = toks.union(t.strip(" \t").lower() for t in v.split(","))
    reusable = head.minor == 1 and "close" not in toks
    length: int | None = None
    if cl:
        try:
            length = parse_content_length(cl)
        except ValueError as exc:
            raise BadUpstream(f"response {exc}") from exc
    if te and cl:
        raise BadUpstream("response with both Content-Length and Transfer-Encoding")
    if request_method == "HEAD" or head.status in (204, 304):
        # No body whatever the fields say; CL of a HEAD/304 answer describes the GET's body.
        return ResponseFraming(LengthDecoder(0), False, length if head.status != 204 else None,
                               False, reusable, toks)
    if te:
        if len(te) != 1 or te[0].lower() != "chunked":
            raise BadUpstream("response Transfer-Encoding other than a single chunked")
        dec: LengthDecoder | ChunkedDecoder | None = ChunkedDecoder(
            MAX_CHUNK_LINE_BYTES, MAX_HEAD_BYTES)
    elif length is not None:
        return ResponseFraming(LengthDecoder(length), False, length, False, reusable, toks)
    else:
        dec, reusable = None, False
    if client_version == "1.1":
        return ResponseFraming(dec, True, None, False, reusable, toks)
    return ResponseFraming(dec, False, None, True, reusable, toks)  # 1.0 client: close-delimited


def client_response_head(head: ResponseHead, framing: ResponseFraming | None, *, close: bool,
                         switch: bool) -> bytes:
    """`framing` None: an interim (1xx) or protocol-switch head, which carries no body.
    Built as one str join over the validated fields (latin-1 round-trips every byte)."""
    toks = framing.conn_tokens if framing is not None else _conn_tokens(head)
    drop = HOP_BY_HOP.union(toks) if toks else HOP_BY_HOP
    lines = [f"HTTP/1.1 {head.status} {head.reason}"]
    lines += [": ".join(kv) for kv in head.headers
              if kv[0] not in drop and not kv[0].startswith("proxy-")]
    if switch:
        upgrade = [v for k, v in head.headers if k == "upgrade"]
        if upgrade:
            lines += ["connection: upgrade", "upgrade: " + upgrade[0]]
    elif framing is not None:
        if framing.content_length is not None:
            lines.append(f"content-length: {framing.content_length}")
        elif framing.client_chunked:
            lines.append("transfer-encoding: chunked")
        if close:
            lines.append("connection: close")
    lines.append("\r\n")
    return "\r\n".join(lines).encode("latin-1")
