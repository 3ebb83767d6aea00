"""Bench-only: the least Python an L7 forwarder can run per request (a reference, not a product).

Why it exists: issue 4 asks for >= 0.8x haproxy's requests/s at 64 connections, and the
question "is that reachable in Python at all on this 2-vCPU machine?" needs a measured
answer, not an opinion. This forwarder does the per-request work the issue makes mandatory,
with no layering around it, so its CPU per request is a floor for any Python design:
- the request head is validated with the proxy's own strict grammar (`proxy.http.fast`),
- the path passes the normaliser's fast check (anything needing normalisation is refused),
- the decision is a policy regex match (the agent's `FullRegex`) and a method compare,
- the request head sent upstream and the response head sent back are re-serialised from
  what was parsed, never the peer's bytes,
- every request leaves one flow record (a tuple in a bounded ring) and a counter bump.
What it leaves out, on purpose: transparent interception, SO_MARK, pooling beyond one
upstream connection per client connection (what haproxy's `http-reuse always` amounts to
with wrk), bodies on requests, pipelining, timeouts, every error path (a request outside
the subset closes the connection; nothing is forwarded). Never use it outside benchmarks.

Run: `python -m tests.bench.pyfloor LISTEN_IP PORT ORIGIN_IP ORIGIN_PORT`; prints
`listening` once bound.

In the datapath: `python -m tests.bench.pyfloor agent AGENT_ARGS...` runs a real `l7gate agent`
(same flags: BPF datapath, policies, DNS proxy, flows of the kernel) whose HTTP proxy
connections are served by `TransparentClient` below instead of the product's protocol: the
listener, IP_TRANSPARENT, the redirect by `bpf_sk_assign`, SO_MARK with the source identity
and the pod source address on the upstream socket are the product's, the per-request work is
the floor's. It answers "what does the least Python cost where the product really runs",
i.e. with transparent sockets, marks and the tc programs in the path, which the plain floor
beside haproxy (an agent-less sandbox) does not pay. Done by replacing the protocol class the
HTTP server instantiates (`proxy.http.server._Client`), in this process only, which needs
the interpreted server module (`L7GATE_PURE=1`; the compiled one binds its class early).
"""

from __future__ import annotations

import asyncio
import collections
import socket
import sys
import time
import types
from typing import Any, cast

import uvloop

from policy.model import FullRegex
from proxy.http.fast import plain_request, plain_response
from redirect.origdst import IP_TRANSPARENT

MAX_HEADERS = 100  # the proxy's default limit is of the same order
RING_CAPACITY = 8191  # the agent's flow ring (observe/ring.py DEFAULT_CAPACITY)
RULE = FullRegex(r"/api/.*")  # the README policy: GET /api/.*
DENIED = (b"HTTP/1.1 403 Forbidden\r\ncontent-length: 15\r\ncontent-type: text/plain\r\n\r\n"
          b"Access denied\r\n")
RING: collections.deque[tuple[object, ...]] = collections.deque(maxlen=RING_CAPACITY)
COUNTS: collections.Counter[tuple[object, ...]] = collections.Counter()


class _Upstream(asyncio.Protocol):
    def __init__(self, client: _Client) -> None:
        self.client = client
        self.buf = b""
        self.body_left = 0

    def data_received(self, data: bytes) -> None:
        client = self.client
        if self.body_left:
            n = min(self.body_left, len(data))
            self.body_left -= n
            client.transport.write(data[:n])
            data = data[n:]
            if not data:
                return
        buf = self.buf + data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            self.buf = buf
            return
        parsed = plain_response(buf[:end + 4], MAX_HEADERS)
        if parsed is None:
            client.transport.close()
            return
        _minor, status, reason, fields, length = parsed
        body = buf[end + 4:end + 4 + length]
        self.body_left = length - len(body)
        self.buf = b""
        client.transport.write(
            f"HTTP/1.1 {status} {reason}\r\n{fields}content-length: {length}\r\n\r\n"
            .encode("latin-1") + body)
        method, target = client.current
        RING.append((time.time_ns(), "FORWARDED", client.peer, method, target, status))
        COUNTS[("FORWARDED", method, status[0])] += 1


class _Client(asyncio.Protocol):
    def __init__(self, origin: tuple[str, int]) -> None:
        self.origin = origin
        self.buf = b""
        self.upstream: asyncio.BaseTransport | None = None
        self.pending: list[bytes] = []
        self.current = ("", "")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.peer = transport.get_extra_info("peername")
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        up, _ = await loop.create_connection(lambda: _Upstream(self), *self.origin)
        self.upstream = up
        for head in self.pending:
            up.write(head)  # type: ignore[attr-defined]
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            self.buf = buf
            return
        self.buf = buf[end + 4:]
        parsed = plain_request(buf[:end + 4], MAX_HEADERS)
        if parsed is None or "%" in parsed[1] or "/." in parsed[1] or "\\" in parsed[1]:
            self.transport.close()  # outside the subset: never forwarded
            return
        method, target, _version, fields = parsed
        if method != "GET" or not RULE.fullmatch(target):
            self.transport.write(DENIED)
            RING.append((time.time_ns(), "DROPPED", self.peer, method, target, "403"))
            COUNTS[("DROPPED", method, "4")] += 1
            return
        head = "".join([method, " ", target, " HTTP/1.1\r\n",
                        *[f"{name}: {value}\r\n" for name, value in fields], "\r\n"])
        self.current = (method, target)
        if self.upstream is None:
            self.pending.append(head.encode("latin-1"))
        else:
            self.upstream.write(head.encode("latin-1"))  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None:
            self.upstream.close()


IP_BIND_ADDRESS_NO_PORT = 24  # linux/in.h


class TransparentClient(_Client):
    """The floor's client protocol behind the product's transparent listener: the original
    destination is the accepted socket's local address, and the upstream socket carries what
    the product's carries (SO_MARK with the source identity, the pod's source address)."""

    def __init__(self, server: Any) -> None:
        super().__init__(("", 0))
        self.server = server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.peer = transport.get_extra_info("peername")
        self.origin = transport.get_extra_info("sockname")
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            mark = self.server.upstream_mark(types.SimpleNamespace(src_ip=self.peer[0]))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
            sock.setsockopt(socket.IPPROTO_IP, IP_TRANSPARENT, 1)
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((self.peer[0], 0))
            await loop.sock_connect(sock, self.origin)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            up, _ = await loop.create_connection(lambda: _Upstream(self), sock=sock)
        except BaseException:
            sock.close()
            self.transport.close()
            raise
        self.upstream = up
        for head in self.pending:
            up.write(head)  # type: ignore[attr-defined]
        self.pending.clear()


def _agent_main(args: list[str]) -> int:
    import proxy.http.server as http_server
    from agent.cli import main
    if not str(http_server.__file__).endswith(".py"):  # compiled: `_Client` is bound early
        raise SystemExit("pyfloor agent needs the pure-Python proxy.http: set L7GATE_PURE=1")
    http_server._Client = TransparentClient  # type: ignore[misc,assignment]
    return main(args)


async def _main(listen: str, port: int, origin: tuple[str, int]) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Client(origin), listen, port, backlog=1024)
    print("listening", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    if sys.argv[1:2] == ["agent"]:
        sys.exit(_agent_main(sys.argv[1:]))
    uvloop.run(_main(sys.argv[1], int(sys.argv[2]), (sys.argv[3], int(sys.argv[4]))))
