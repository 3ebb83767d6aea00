"""HTTP echo origin for the sandbox, the tests and the benchmarks.

Contract: every well-formed HTTP/1.x request gets `200` with a JSON body
`{"server", "method", "target", "headers": [[name, value], ...], "body_bytes",
"body_sha256", "client", "local"}` describing what arrived (the body itself is never
echoed back, only its length and SHA-256). `GET <any path ending in /download>?bytes=N`
instead streams N bytes with chunked encoding (for large-download tests). Keep-alive,
pipelining, chunked and Content-Length request bodies, `Expect: 100-continue` and
`Connection: close` are honoured; a malformed request gets `400` and the connection is closed.

It is the origin in benchmarks, so the hot path is an asyncio `Protocol` fed straight by
httptools' C parser (no streams, no per-request tasks); responses for one connection are
written in request order. Run: `python -m agent.sandbox.echo --listen IP:PORT[=NAME] ...`;
it prints `listening NAME IP:PORT` per socket once bound (port 0 allowed).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import json
import signal
import sys
from collections.abc import Sequence
from typing import cast
from urllib.parse import parse_qs, urlsplit

import httptools

LISTEN_BACKLOG = 1024  # benchmarks open hundreds of connections at once (wrk -c)
DOWNLOAD_CHUNK_BYTES = 64 * 1024  # one socket buffer's worth per write
MAX_DOWNLOAD_BYTES = 1 << 40  # a bound on ?bytes=N, far above any test
MAX_HEADERS = 256  # more is hostile; answer 431 like common servers
MAX_TARGET_BYTES = 64 * 1024

_CHUNK = b"x" * DOWNLOAD_CHUNK_BYTES
_CHUNK_FRAME = f"{DOWNLOAD_CHUNK_BYTES:x}\r\n".encode() + _CHUNK + b"\r\n"
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_CLOSE = object()  # queue marker: close after what precedes it


def _simple(status: bytes, text: bytes) -> bytes:
    return (b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain\r\nContent-Length: "
            + str(len(text)).encode() + b"\r\nConnection: close\r\n\r\n" + text)


_BAD_REQUEST = _simple(b"400 Bad Request", b"bad request\n")
_TOO_MANY_HEADERS = _simple(b"431 Request Header Fields Too Large", b"too many headers\n")


class EchoProtocol(asyncio.Protocol):
    """One client connection. httptools calls the `on_*` methods from `feed_data`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.client = ""
        self.local = ""
        self._target = bytearray()
        self._headers: list[tuple[bytes, bytes]] = []
        self._hasher = hashlib.sha256()
        self._body_bytes = 0
        # Responses waiting behind a streaming download (pipelining keeps order).
        self._queue: collections.deque[bytes | int | object] = collections.deque()
        self._writer: asyncio.Task[None] | None = None
        self._can_write = asyncio.Event()
        self._can_write.set()
        self._closed = False

    # -- asyncio side -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports quack like asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.client = _fmt(transport.get_extra_info("peername"))
        self.local = _fmt(transport.get_extra_info("sockname"))

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._send(_BAD_REQUEST)
            self._send(_CLOSE)
        except httptools.HttpParserError:
            self._send(_BAD_REQUEST)
            self._send(_CLOSE)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._can_write.set()
        if self._writer is not None:
            self._writer.cancel()

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    # -- httptools callbacks ------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._target.clear()
        self._headers = []
        self._hasher = hashlib.sha256()
        self._body_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._target += url
        if len(self._target) > MAX_TARGET_BYTES:
            raise httptools.HttpParserError("target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        if len(self._headers) > MAX_HEADERS:
            self._send(_TOO_MANY_HEADERS)
            self._send(_CLOSE)
            raise httptools.HttpParserError("too many headers")

    def on_headers_complete(self) -> None:
        for name, value in self._headers:
            if name.lower() == b"expect" and value.lower() == b"100-continue":
                self._send(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        self._hasher.update(body)
        self._body_bytes += len(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        keep_alive = self.parser.should_keep_alive()
        target = bytes(self._target)
        # any path ending in /download (e.g. /api/download?bytes=N, which the README's
        # policy allows) streams; everything else is echoed
        if method == b"GET" and target.partition(b"?")[0].endswith(b"/download"):
            size = _download_size(target)
            if size is not None:
                self._send(_download_head(keep_alive))
                self._send(size)
                if not keep_alive:
                    self._send(_CLOSE)
                return
        body = json.dumps({
            "server": self.name,
            "method": method.decode("latin-1"),
            "target": target.decode("latin-1"),
            "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in self._headers],
            "body_bytes": self._body_bytes,
            "body_sha256": self._hasher.hexdigest(),
            "client": self.client,
            "local": self.local,
        }).encode()
        head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                + str(len(body)).encode()
                + (b"\r\n\r\n" if keep_alive else b"\r\nConnection: close\r\n\r\n"))
        self._send(head if method == b"HEAD" else head + body)
        if not keep_alive:
            self._send(_CLOSE)

    # -- ordered output -----------------------------------------------------------------
    def _send(self, item: bytes | int | object) -> None:
        """Write now if nothing is queued, else keep request order behind a download."""
        if self._closed or self.transport is None:
            return
        if self._writer is None and isinstance(item, bytes):
            self.transport.write(item)
        elif self._writer is None and item is _CLOSE:
            self._closed = True
            self.transport.close()
        else:
            self._queue.append(item)
            if self._writer is None:
                self.transport.pause_reading()  # no more requests until the stream ends
                self._writer = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        transport = self.transport
        assert transport is not None
        while self._queue and not self._closed:
            item = self._queue.popleft()
            if isinstance(item, int):
                await self._stream(transport, item)
            elif isinstance(item, bytes):
                transport.write(item)
            else:
                self._closed = True
                transport.close()
                return
        self._writer = None
        if not self._closed:
            transport.resume_reading()

    async def _stream(self, transport: asyncio.Transport, size: int) -> None:
        while size >= DOWNLOAD_CHUNK_BYTES and not self._closed:
            await self._can_write.wait()
            transport.write(_CHUNK_FRAME)
            size -= DOWNLOAD_CHUNK_BYTES
        if size and not self._closed:
            transport.write(f"{size:x}\r\n".encode() + _CHUNK[:size] + b"\r\n")
        transport.write(b"0\r\n\r\n")


def _download_size(target: bytes) -> int | None:
    values = parse_qs(urlsplit(target.decode("latin-1")).query).get("bytes", [])
    if len(values) != 1 or not values[0].isdigit():
        return None
    size = int(values[0])
    return size if size <= MAX_DOWNLOAD_BYTES else None


def _download_head(keep_alive: bool) -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
            b"Transfer-Encoding: chunked\r\n"
            + (b"\r\n" if keep_alive else b"Connection: close\r\n\r\n"))


def _fmt(addr: object) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        return f"{addr[0]}:{addr[1]}"
    return ""


def parse_listen(spec: str, default_name: str) -> tuple[str, int, str]:
    """`IP:PORT[=NAME]` -> (ip, port, name)."""
    addr, _, name = spec.partition("=")
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"bad --listen {spec!r}: want IP:PORT[=NAME]")
    return host, int(port), name or default_name


async def start(listens: Sequence[tuple[str, int, str]]) -> list[asyncio.Server]:
    """Bind every listener; returns the servers (their sockets give the real ports)."""
    loop = asyncio.get_running_loop()
    servers: list[asyncio.Server] = []
    for host, port, name in listens:
        servers.append(await loop.create_server(
            lambda name=name: EchoProtocol(name),  # type: ignore[misc]
            host, port, backlog=LISTEN_BACKLOG, reuse_address=True))
    return servers


async def _serve(listens: Sequence[tuple[str, int, str]]) -> None:
    servers = await start(listens)
    for server, (_, _, name) in zip(servers, listens, strict=True):
        for sock in server.sockets:
            print(f"listening {name} {_fmt(sock.getsockname())}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for server in servers:
        server.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.sandbox.echo",
                                     description="HTTP echo origin")
    parser.add_argument("--listen", action="append", required=True,
                        metavar="IP:PORT[=NAME]", help="may be repeated")
    parser.add_argument("--name", default="echo", help="server name for listeners without one")
    args = parser.parse_args(argv)
    try:
        listens = [parse_listen(s, args.name) for s in args.listen]
    except ValueError as exc:
        parser.error(str(exc))
    try:
        import uvloop
        uvloop.run(_serve(listens))
    except OSError as exc:
        print(f"echo: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
