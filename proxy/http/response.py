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


def _conn_tokens(head: ResponseHead) -> set[str]:
    toks: set[str] = set()
    for k, v in head.headers:
        if k == "connection":
            toks.update(t.strip(" \t").lower() for t in v.split(","))
    return toks


def response_framing(head: ResponseHead, request_method: str, *,
                     client_version: str) -> ResponseFraming:
    te = [v for k, v in head.headers if k == "transfer-encoding"]
    cl = [v for k, v in head.headers if k == "content-length"]
    toks = _conn_tokens(head)
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
                               False, reusable)
    if te:
        if len(te) != 1 or te[0].lower() != "chunked":
            raise BadUpstream("response Transfer-Encoding other than a single chunked")
        dec: LengthDecoder | ChunkedDecoder | None = ChunkedDecoder(
            MAX_CHUNK_LINE_BYTES, MAX_HEAD_BYTES)
    elif length is not None:
        return ResponseFraming(LengthDecoder(length), False, length, False, reusable)
    else:
        dec, reusable = None, False
    if client_version == "1.1":
        return ResponseFraming(dec, True, None, False, reusable)
    return ResponseFraming(dec, False, None, True, reusable)  # 1.0 client: close-delimited


def client_response_head(head: ResponseHead, framing: ResponseFraming | None, *, close: bool,
                         switch: bool) -> bytes:
    """`framing` None: an interim (1xx) or protocol-switch head, which carries no body."""
    drop = HOP_BY_HOP | _conn_tokens(head)
    lines = [b"HTTP/1.1 %d %b" % (head.status, head.reason)]
    lines += [b"%b: %b" % (k.encode("ascii"), v.encode("latin-1")) for k, v in head.headers
              if k not in drop and not k.startswith("proxy-")]
    if switch:
        upgrade = [v for k, v in head.headers if k == "upgrade"]
        if upgrade:
            lines += [b"connection: upgrade", b"upgrade: " + upgrade[0].encode("latin-1")]
    elif framing is not None:
        if framing.content_length is not None:
            lines.append(b"content-length: %d" % framing.content_length)
        elif framing.client_chunked:
            lines.append(b"transfer-encoding: chunked")
        if close:
            lines.append(b"connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"

