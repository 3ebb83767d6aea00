"""A small recording HTTP/1.1 origin for the server tests (127.0.0.1, port 0).

Answers each request with `200` and a body naming the request (`<method> <target> <n>`
where n is the body size it read), or a large body when the target starts with `/big/N`.
Sends `100 Continue` itself when asked. Records connections and request heads. A target of
`/close-after` makes it close the connection right after answering (keep-alive advertised),
as an origin whose keepalive timeout fires would; `/api/stale` arriving on a reused
connection makes it close without answering (the race a pooled connection can lose);
`/api/then-junk` is answered, then followed by bytes nobody asked for.
"""

from __future__ import annotations

import asyncio
import contextlib


class Origin:
    def __init__(self) -> None:
        self.connections = 0
        self.heads: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.read_delay_s = 0.0

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.connections += 1
        served = 0
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await r.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ")
                served += 1
                if target == "/api/stale" and served > 1:
                    break  # close without answering, as if our keep-alive timer had fired
                parts = (ln.partition(":") for ln in lines[1:] if ln)
                fields = {k.lower(): v.strip() for k, _, v in parts}
                if fields.get("expect") == "100-continue":
                    w.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                n = await self._read_body(r, fields)
                if target.startswith("/api/big/"):
                    size = int(target.rsplit("/", 1)[1])
                    w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
                    block = b"x" * 65536
                    sent = 0
                    while sent < size:
                        w.write(block[: size - sent])
                        sent += min(len(block), size - sent)
                        await w.drain()
                else:
                    body = f"{method} {target} {n}".encode()
                    w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))
                await w.drain()
                if target == "/api/close-after":
                    w.close()
                    return
                if target == "/api/then-junk":  # after the proxy parked the connection
                    await asyncio.sleep(0.05)
                    w.write(b"junk")
                    await w.drain()
        w.close()

    async def _read_body(self, r: asyncio.StreamReader, fields: dict[str, str]) -> int:
        n = 0
        if "content-length" in fields:
            left = int(fields["content-length"])
            while left:
                chunk = await r.read(min(left, 65536))
                if not chunk:
                    raise asyncio.IncompleteReadError(b"", left)
                left -= len(chunk)
                n += len(chunk)
                if self.read_delay_s:
                    await asyncio.sleep(self.read_delay_s)
        elif fields.get("transfer-encoding") == "chunked":
            while True:
                size = int((await r.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
                if size == 0:
                    await r.readuntil(b"\r\n")
                    return n
                n += len(await r.readexactly(size))
                await r.readexactly(2)
        return n
