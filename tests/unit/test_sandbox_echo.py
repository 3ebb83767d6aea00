"""The sandbox's HTTP echo origin on 127.0.0.1, port 0 (no root).

Responses are parsed with h11 (an independent parser from the server's httptools), one
h11 client connection per request so that pipelined responses can be read back in order.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import h11
import pytest

from agent.sandbox.echo import DOWNLOAD_CHUNK_BYTES, parse_listen, start

Reply = tuple[int, dict[str, str], bytes]
IO_TIMEOUT_S = 10.0  # bound on every socket read in these tests


def run(body: Callable[[str, int], Awaitable[None]]) -> None:
    async def main() -> None:
        servers = await start([("127.0.0.1", 0, "unit")])
        host, port = servers[0].sockets[0].getsockname()[:2]
        try:
            await asyncio.wait_for(body(host, port), IO_TIMEOUT_S * 3)
        finally:
            for s in servers:
                s.close()
                await s.wait_closed()

    asyncio.run(main())


def request(method: str, target: str, headers: list[tuple[str, str]] | None = None,
            body: bytes = b"") -> tuple[h11.Request, bytes]:
    hdrs = [("Host", "echo.test"), *(headers or [])]
    if body and not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in hdrs):
        hdrs.append(("Content-Length", str(len(body))))
    req = h11.Request(method=method, target=target, headers=hdrs)
    conn = h11.Connection(h11.CLIENT)
    wire = conn.send(req) or b""
    if body:
        wire += conn.send(h11.Data(data=body)) or b""
    wire += conn.send(h11.EndOfMessage()) or b""
    return req, wire


async def read_replies(reader: asyncio.StreamReader, reqs: list[h11.Request]) -> list[Reply]:
    """Read one response per request, in order, from one connection."""
    leftover = b""
    out: list[Reply] = []
    for req in reqs:
        conn = h11.Connection(h11.CLIENT)
        # Response framing depends only on the method; a bodiless copy of the request
        # puts this h11 client in the state of waiting for that response.
        conn.send(h11.Request(method=req.method, target=req.target, headers=[("Host", "x")]))
        conn.send(h11.EndOfMessage())
        if leftover:  # b"" would mean EOF to h11
            conn.receive_data(leftover)
        status, headers, body = 0, {}, bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await asyncio.wait_for(reader.read(65536), IO_TIMEOUT_S))
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
                headers = {k.decode().lower(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise AssertionError("connection closed before the response ended")
        leftover = conn.trailing_data[0]
        out.append((status, headers, bytes(body)))
    return out


def echoed(reply: Reply) -> dict[str, Any]:
    status, headers, body = reply
    assert status == 200
    assert headers["content-type"] == "application/json"
    doc: dict[str, Any] = json.loads(body)
    return doc


async def at_eof(reader: asyncio.StreamReader) -> bool:
    return await asyncio.wait_for(reader.read(1), IO_TIMEOUT_S) == b""


def test_keep_alive_and_echo_fields() -> None:
    async def body(host: str, port: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        r1, w1 = request("GET", "/a?b=c", [("X-Test", "1"), ("X-Test", "2")])
        r2, w2 = request("POST", "/second", body=b"hello")
        writer.write(w1)
        first = echoed((await read_replies(reader, [r1]))[0])
        writer.write(w2)  # same connection: keep-alive
        second = echoed((await read_replies(reader, [r2]))[0])
        assert first["server"] == "unit" and first["method"] == "GET"
        assert first["target"] == "/a?b=c"
        assert ["X-Test", "1"] in first["headers"] and ["X-Test", "2"] in first["headers"]
        assert first["body_bytes"] == 0
        assert first["body_sha256"] == hashlib.sha256(b"").hexdigest()
        assert first["local"] == f"{host}:{port}"
        assert first["client"] == second["client"]  # the same TCP connection
        assert second["method"] == "POST" and second["body_bytes"] == 5
        assert second["body_sha256"] == hashlib.sha256(b"hello").hexdigest()
        assert "hello" not in json.dumps(second)  # the body is never echoed
        writer.close()

    run(body)


def test_chunked_body_fed_one_byte_at_a_time() -> None:
    payload = bytes(range(256)) * 40

    async def body(host: str, port: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        req, wire = request("PUT", "/up", [("Transfer-Encoding", "chunked")], payload)
        assert b"\r\n0\r\n\r\n" in wire  # h11 really framed it as chunks
        for i in range(len(wire)):
            writer.write(wire[i:i + 1])
            if i % 512 == 0:
                await writer.drain()
        doc = echoed((await read_replies(reader, [req]))[0])
        assert doc["body_bytes"] == len(payload)
        assert doc["body_sha256"] == hashlib.sha256(payload).hexdigest()
        writer.close()

    run(body)


def test_pipelining_keeps_order_around_a_download() -> None:
    size = 3 * DOWNLOAD_CHUNK_BYTES + 7  # not a whole number of chunks

    async def body(host: str, port: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        reqs = [request("GET", "/one"), request("GET", f"/download?bytes={size}"),
                request("POST", "/three", body=b"xyz")]
        writer.write(b"".join(w for _, w in reqs))  # all at once: pipelined
        replies = await read_replies(reader, [r for r, _ in reqs])
        assert echoed(replies[0])["target"] == "/one"
        status, headers, data = replies[1]
        assert status == 200 and headers["transfer-encoding"] == "chunked"
        assert len(data) == size
        assert echoed(replies[2])["target"] == "/three"
        writer.close()

    run(body)


def test_large_download_streams_all_bytes() -> None:
    size = 8 * 1024 * 1024 + 1

    async def body(host: str, port: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        req, wire = request("GET", f"/download?bytes={size}")
        writer.write(wire)
        status, _, data = (await read_replies(reader, [req]))[0]
        assert status == 200 and len(data) == size
        writer.close()

    run(body)


def test_connection_close_is_honoured() -> None:
    async def body(host: str, port: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        req, wire = request("GET", "/bye", [("Connection", "close")])
        writer.write(wire)
        status, headers, _ = (await read_replies(reader, [req]))[0]
        assert status == 200 and headers["connection"] == "close"
        assert await at_eof(reader)
        writer.close()

    run(body)


def test_http10_without_keep_alive_closes() -> None:
    async def body(host: str, port: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET /old HTTP/1.0\r\nHost: x\r\n\r\n")
        data = await asyncio.wait_for(reader.read(), IO_TIMEOUT_S)  # until EOF
        head, _, rest = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and b"Connection: close" in head
        assert json.loads(rest)["target"] == "/old"
        writer.close()

    run(body)


def test_expect_100_continue() -> None:
    async def body(host: str, port: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IO_TIMEOUT_S)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"abc")
        req = h11.Request(method="POST", target="/e",
                          headers=[("Host", "x"), ("Content-Length", "3")])
        assert echoed((await read_replies(reader, [req]))[0])["body_bytes"] == 3
        writer.close()

    run(body)


@pytest.mark.parametrize("junk", [b"NOT HTTP AT ALL\r\n\r\n",
                                  b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"])
def test_malformed_request_gets_400_and_close(junk: bytes) -> None:
    async def body(host: str, port: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(junk)
        data = await asyncio.wait_for(reader.read(), IO_TIMEOUT_S)
        assert data.startswith(b"HTTP/1.1 400 ")
        writer.close()

    run(body)


def test_parse_listen() -> None:
    assert parse_listen("10.0.0.1:80=api.stripe.com", "d") == ("10.0.0.1", 80, "api.stripe.com")
    assert parse_listen("127.0.0.1:0", "dflt") == ("127.0.0.1", 0, "dflt")
    for bad in ("10.0.0.1", ":80", "10.0.0.1:http", "1.2.3.4:70000"):
        with pytest.raises(ValueError, match="want IP:PORT"):
            parse_listen(bad, "d")


def test_command_line_server_starts_answers_and_stops() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "agent.sandbox.echo",
                             "--listen", "127.0.0.1:0=cli-echo"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        assert line[:2] == ["listening", "cli-echo"], line
        host, port = line[2].rsplit(":", 1)

        async def ask() -> dict[str, Any]:
            reader, writer = await asyncio.open_connection(host, int(port))
            req, wire = request("GET", "/cli")
            writer.write(wire)
            reply = (await read_replies(reader, [req]))[0]
            writer.close()
            return echoed(reply)

        assert asyncio.run(ask())["server"] == "cli-echo"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=IO_TIMEOUT_S) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=IO_TIMEOUT_S)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
