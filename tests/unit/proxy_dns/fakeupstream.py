"""A tiny DNS server for proxy tests (127.0.0.1 only), built on dnslib.

Names: `slow.*` answers after `slow_s`; `tc.*` answers with TC=1 and no records;
`blackhole.*` never answers; anything else gets two A records from 93.184.0.0/16.
It records every query it receives (bytes, transport, client address) and the bytes it sent.
"""

from __future__ import annotations

import asyncio
import socket

import dnslib

from proxy.dns import wire


class FakeUpstream:
    def __init__(self, slow_s: float = 0.5) -> None:
        self.slow_s = slow_s
        self.received: list[tuple[str, bytes, tuple[str, int]]] = []
        self.sent: list[bytes] = []
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.base_events.Server | None = None
        self.port = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for _attempt in range(32):  # the UDP port may be taken for TCP by someone else
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                udp.bind(("127.0.0.1", 0))
                tcp.bind(("127.0.0.1", udp.getsockname()[1]))
                tcp.listen(64)
                break
            except OSError:
                udp.close()
                tcp.close()
        else:
            raise OSError("no port free for both UDP and TCP")
        self.port = udp.getsockname()[1]
        self._udp, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), sock=udp)
        self._tcp = await loop.create_server(lambda: _Tcp(self), sock=tcp)

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()

    @property
    def addr(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def answer(self, data: bytes) -> tuple[bytes | None, float]:
        q = dnslib.DNSRecord.parse(data)
        qname = str(q.q.qname).lower()
        r = q.reply()
        if qname.startswith("blackhole."):
            return None, 0.0
        if qname.startswith("tc."):
            r.header.tc = 1
            return bytes(r.pack()), 0.0
        h = sum(qname.encode()) % 250
        for i in (1, 2):
            r.add_answer(dnslib.RR(q.q.qname, dnslib.QTYPE.A, rdata=dnslib.A(f"93.184.{h}.{i}"),
                                   ttl=30))
        return bytes(r.pack()), (self.slow_s if qname.startswith("slow.") else 0.0)

    def schedule(self, delay: float, send: object, out: bytes) -> None:
        async def later() -> None:
            await asyncio.sleep(delay)
            self.sent.append(out)
            send(out)  # type: ignore[operator]
        task = asyncio.get_running_loop().create_task(later())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, up: FakeUpstream) -> None:
        self.up = up

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.up.received.append(("UDP", data, addr))
        out, delay = self.up.answer(data)
        if out is not None:
            self.up.schedule(delay, lambda b: self.t.sendto(b, addr), out)  # type: ignore[attr-defined]


class _Tcp(asyncio.Protocol):
    def __init__(self, up: FakeUpstream) -> None:
        self.up = up
        self.framer = wire.TcpFramer()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport
        self.peer = transport.get_extra_info("peername")

    def data_received(self, data: bytes) -> None:
        for msg in self.framer.feed(data):
            self.up.received.append(("TCP", msg, self.peer))
            out, delay = self.up.answer(msg)
            if out is not None:
                self.up.schedule(delay, lambda b: self.t.write(wire.frame(b)), out)  # type: ignore[attr-defined]
