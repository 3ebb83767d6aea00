"""Pluggable request codecs (`auto|h11|httptools`) behind one event interface (no I/O here).

Contract: a codec object belongs to one connection and parses one request message at a
time: the session calls `start()`, feeds it the head (after its own strict gate) and then
exactly the body bytes its own framer delimited; the codec answers with `CodecHead`,
`CodecBody` and `CodecEnd` events or raises `CodecError`. The session's full path cross-
checks the codec against its own parse (same method, target, version and field count, the
same fields where the codec reports them, same body size, end at the same byte), so neither
codec is trusted alone. Only public APIs of h11 and httptools are used.

The session's fast path (session_fast.py) does not feed the codec: the heads it takes are a
strict subset (fast.plain_request) on which both codecs read exactly what the grammar reads,
which tests/unit/proxy_http/test_plain_codec_agreement.py proves on generated heads. A codec
therefore only ever sees the messages the full path handles, each from a message start (h11:
a fresh connection per message; llhttp: the connection's parser, which a plain message,
never fed to it, cannot disturb).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import h11

from policy.errors import map_errors
from proxy.http.wire import HttpReject

try:  # httptools is a hard dependency, but keep h11-only operation possible
    import httptools

    HAS_HTTPTOOLS = True
except ImportError:  # pragma: no cover - exercised only where httptools is missing
    HAS_HTTPTOOLS = False


class CodecError(HttpReject):
    def __init__(self, reason: str) -> None:
        super().__init__(400, reason)


@dataclass(slots=True)  # not frozen: built per request, frozen init costs ~5x
class CodecHead:
    method: str
    target: str
    version: str  # "1.0" | "1.1"
    # lower-case name, value without surrounding OWS; None when the codec reports only
    # `n_headers` (httptools: see HttptoolsCodec)
    headers: list[tuple[str, str]] | None
    n_headers: int


@dataclass(slots=True)  # not frozen: built per request, frozen init costs ~5x
class CodecBody:
    size: int


@dataclass(frozen=True, slots=True)
class CodecEnd:
    pass


CODEC_END = CodecEnd()  # carries nothing: one shared value instead of one per request

CodecEvent = CodecHead | CodecBody | CodecEnd


def _canon(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    # h11 lower-cases Transfer-Encoding values; coding names are case-insensitive anyway.
    return [(k, v.lower() if k == "transfer-encoding" else v) for k, v in headers]


def codec_agrees(head: CodecHead, method: str, target: str, version: str,
                 headers: list[tuple[str, str]]) -> bool:
    """The codec and our gate must have read the same head (parser differential -> 400).
    A codec that reports only the field count (httptools) is checked on that count; its
    framing of the body is checked by the session."""
    return (head.method == method and head.target == target and head.version == version
            and head.n_headers == len(headers)
            and (head.headers is None or head.headers == headers
                 or _canon(head.headers) == _canon(headers)))


class RequestCodec(Protocol):
    name: str

    def start(self) -> None:
        """A new request message begins (after the previous one ended)."""

    def feed(self, data: bytes) -> list[CodecEvent]: ...

    def close(self) -> None:
        """The codec is done (connection closed, or replaced): drop whatever ties it in a
        reference cycle, so that refcounting alone frees it. The agent freezes long-lived
        objects out of the cyclic collector (agent/gctune.py); a cycle per connection would
        pile up until its periodic full pass. Idempotent; nothing is fed afterwards."""


class H11Codec:
    """h11 as a server for one request; `PAUSED` after the message is where we stop.

    h11 only starts a next cycle after a response went through it, which we never send
    through it, so every message gets a fresh `h11.Connection` (the reference path)."""

    name = "h11"

    def __init__(self, max_head_bytes: int) -> None:
        self._max = max_head_bytes + 1
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self._max)
        self._fresh = True

    def close(self) -> None:
        """No cycle to break: h11's Connection holds no reference back to us."""

    def start(self) -> None:
        if not self._fresh:
            self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self._max)
        self._fresh = False

    def feed(self, data: bytes) -> list[CodecEvent]:
        events: list[CodecEvent] = []
        with map_errors({h11.ProtocolError: CodecError}):
            self._conn.receive_data(data)
            while True:
                ev = self._conn.next_event()
                if ev is h11.NEED_DATA or ev is h11.PAUSED:
                    break
                if isinstance(ev, h11.Request):
                    headers = [(k.decode("ascii"), v.decode("latin-1")) for k, v in ev.headers]
                    events.append(CodecHead(ev.method.decode("ascii"), ev.target.decode("ascii"),
                                            ev.http_version.decode("ascii"), headers,
                                            len(headers)))
                elif isinstance(ev, h11.Data):
                    events.append(CodecBody(len(ev.data)))
                elif isinstance(ev, h11.EndOfMessage):
                    events.append(CODEC_END)
                else:
                    raise CodecError(f"unexpected h11 event {type(ev).__name__}")
        return events


# Methods llhttp parses itself and frames like GET (CONNECT keeps its own meaning); any other
# token is fed as GET (see below). PRI is deliberately absent (llhttp's HTTP/2 preface case).
_LLHTTP_NATIVE = frozenset({b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH",
                            b"CONNECT"})
class HttptoolsCodec:
    """llhttp through httptools' callback API; an upgrade pause counts as the message end.

    llhttp only knows a fixed list of method names and answers any other token (`get`,
    `FOO`) with an error, while RFC 9110 §9.1 allows any token (and policies decide on it).
    The session's gate has already checked the token grammar, so the head is fed with `GET`
    in place of the method (request framing does not depend on it except for CONNECT,
    which is kept) and the original method is reported. Methods llhttp knows and frames the
    same way are fed unchanged (saves a copy of every head).

    Per request it reports method, target, version and the *number* of header fields (an
    `on_header` that only counts: decoding and comparing every field costs more than the
    rest of the request, perf-anchors B6), and frames the body independently; the session
    checks all of those against its own parse. One parser serves the keep-alive connection
    (creating one costs as much as parsing a head); it is replaced after any message llhttp
    would not continue after (upgrade, close, error).
    """

    name = "httptools"

    def __init__(self, max_head_bytes: int) -> None:
        del max_head_bytes  # the session's gate enforces the head size before we see it
        self._events: list[CodecEvent] = []
        self._n = 0
        self._url = b""
        self._method: bytes | None = None
        self._reusable = True
        self._parser = httptools.HttpRequestParser(self)

    def start(self) -> None:
        if not self._reusable:
            self._parser = httptools.HttpRequestParser(self)
            self._reusable = True
        self._n = 0
        self._url = b""
        self._method = None

    # httptools callbacks -----------------------------------------------------------------
    def close(self) -> None:
        """llhttp's parser holds our bound callbacks and we hold the parser: break that
        cycle (see RequestCodec.close). A closed codec is never fed again; if it were,
        the AttributeError would cost that connection only (the server aborts it)."""
        with contextlib.suppress(AttributeError):
            del self._parser

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._n += 1

    def on_headers_complete(self) -> None:
        p = self._parser
        method = self._method if self._method is not None else p.get_method()
        self._events.append(CodecHead(method.decode("latin-1"), self._url.decode("latin-1"),
                                      p.get_http_version(), None, self._n))

    def on_body(self, body: bytes) -> None:
        self._events.append(CodecBody(len(body)))

    def on_message_complete(self) -> None:
        # should_keep_alive() is only meaningful inside a callback (perf-anchors pitfall 1)
        if not self._parser.should_keep_alive():
            self._reusable = False
        self._events.append(CODEC_END)

    def feed(self, data: bytes) -> list[CodecEvent]:
        if self._method is None:  # the head: always fed whole by the session
            method, sep, rest = data.partition(b" ")
            self._method = method
            if sep and method not in _LLHTTP_NATIVE:
                data = b"GET " + rest
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._reusable = False
            if int(exc.args[0]) != len(data):
                raise CodecError("bytes after an upgrade request head") from exc
        except httptools.HttpParserError as exc:
            self._reusable = False
            raise CodecError(f"httptools: {exc}") from exc
        events, self._events = self._events, []
        return events


CodecFactory = Callable[[int], RequestCodec]


def codec_factory(name: str) -> CodecFactory:
    """`auto` = httptools when installed (as uvicorn does), else h11."""
    if name == "auto":
        name = "httptools" if HAS_HTTPTOOLS else "h11"
    if name == "h11":
        return H11Codec
    if name == "httptools":
        if not HAS_HTTPTOOLS:
            raise ValueError("codec httptools requested but httptools is not installed")
        return HttptoolsCodec
    raise ValueError(f"unknown HTTP codec {name!r} (auto|h11|httptools)")
