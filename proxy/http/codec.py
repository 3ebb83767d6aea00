"""Pluggable request codecs (`auto|h11|httptools`) behind one event interface (no I/O here).

Contract: a codec object parses exactly one request message. The session feeds it the head
(after its own strict gate) and then exactly the body bytes its own framer delimited; the
codec answers with `CodecHead`, `CodecBody` and `CodecEnd` events or raises `CodecError`.
The session cross-checks the codec against its own parse (same head, same body size, end at
the same byte), so neither codec is trusted alone. Only public APIs of h11 and httptools are
used.
"""

from __future__ import annotations

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
    headers: list[tuple[str, str]]  # lower-case name, value without surrounding OWS


@dataclass(slots=True)  # not frozen: built per request, frozen init costs ~5x
class CodecBody:
    size: int


@dataclass(slots=True)  # not frozen: built per request, frozen init costs ~5x
class CodecEnd:
    pass


CodecEvent = CodecHead | CodecBody | CodecEnd


class RequestCodec(Protocol):
    name: str

    def feed(self, data: bytes) -> list[CodecEvent]: ...


class H11Codec:
    """h11 as a server for one request; `PAUSED` after the message is where we stop."""

    name = "h11"

    def __init__(self, max_head_bytes: int) -> None:
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=max_head_bytes + 1)

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
                                            ev.http_version.decode("ascii"), headers))
                elif isinstance(ev, h11.Data):
                    events.append(CodecBody(len(ev.data)))
                elif isinstance(ev, h11.EndOfMessage):
                    events.append(CodecEnd())
                else:
                    raise CodecError(f"unexpected h11 event {type(ev).__name__}")
        return events


class HttptoolsCodec:
    """llhttp through httptools' callback API; an upgrade pause counts as the message end.

    llhttp only knows a fixed list of method names and answers any other token (`get`,
    `FOO`) with an error, while RFC 9110 §9.1 allows any token (and policies decide on it).
    The session's gate has already checked the token grammar, so the head is fed with `GET`
    in place of the method (request framing does not depend on it except for CONNECT,
    which is kept) and the original method is reported.
    """

    name = "httptools"

    def __init__(self, max_head_bytes: int) -> None:
        del max_head_bytes  # the session's gate enforces the head size before we see it
        self._events: list[CodecEvent] = []
        self._headers: list[tuple[str, str]] = []
        self._url = b""
        self._method: bytes | None = None
        self._parser = httptools.HttpRequestParser(self)

    # httptools callbacks -----------------------------------------------------------------
    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append(
            (name.decode("latin-1").lower(), value.strip(b" \t").decode("latin-1"))
        )

    def on_headers_complete(self) -> None:
        p = self._parser
        method = self._method if self._method is not None else p.get_method()
        self._events.append(CodecHead(method.decode("latin-1"),
                                      self._url.decode("latin-1"),
                                      p.get_http_version(), self._headers))

    def on_body(self, body: bytes) -> None:
        self._events.append(CodecBody(len(body)))

    def on_message_complete(self) -> None:
        self._events.append(CodecEnd())

    def feed(self, data: bytes) -> list[CodecEvent]:
        if self._method is None:  # the head: always fed whole by the session
            method, sep, rest = data.partition(b" ")
            self._method = method
            if sep and method != b"CONNECT":
                data = b"GET " + rest
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            if int(exc.args[0]) != len(data):
                raise CodecError("bytes after an upgrade request head") from exc
        except httptools.HttpParserError as exc:
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
