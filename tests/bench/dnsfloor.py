"""Bench-only: the least Python a DNS proxy can run per query (a reference, not a product).

Why it exists: issue 5's p99 target at 5,000 q/s is missed over all slices (host stalls:
hoststall.py) and met over clean ones. Whether any Python proxy could ride those stalls
is a measured question: this forwarder does the per-query work the issue makes mandatory
with no layering, so its CPU per query and its p99 under the same probe are a floor for a
Python design:
- the query's single question is extracted strictly (`proxy.dns.wire.parse_query`, the
  proxy's own extractor) and matched against the policy pattern (a `*` matchPattern),
- the query goes upstream on one connected UDP socket with an ID of ours (multiplexed by
  ID, as the product does), and the answer goes back byte-for-byte with the pod's ID,
- the answer is checked against the query and its A/AAAA addresses harvested
  (`analyze_answer`), memoised by the bytes after the ID as the product memoises it,
- every query leaves one flow record (a tuple in a bounded ring) and a counter bump.
What it leaves out, on purpose: transparency (it listens on an address of its own), the BPF
map write of learned IPs, TCP, timeouts, every error path (a malformed message is dropped).
Never use it outside benchmarks.

Run: `python -m tests.bench.dnsfloor LISTEN_IP PORT UPSTREAM_IP UPSTREAM_PORT`; prints
`listening` once bound.
"""

from __future__ import annotations

import asyncio
import collections
import sys
import time
from typing import Any, cast

import uvloop

from policy.errors import RemoteProtocolError
from proxy.dns.wire import Query, analyze_answer, parse_query

RING_CAPACITY = 8191  # the agent's flow ring
ANSWER_MEMO_MAX = 256  # as the product's answer memo
RING: collections.deque[tuple[object, ...]] = collections.deque(maxlen=RING_CAPACITY)
COUNTS: collections.Counter[tuple[object, ...]] = collections.Counter()


class _Upstream(asyncio.DatagramProtocol):
    def __init__(self, front: _Front) -> None:
        self.front = front

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.front.answer(data)


class _Front(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.upstream: asyncio.DatagramTransport | None = None
        self.pending: dict[int, tuple[Query, Any, int]] = {}
        self.next_id = 0
        self.memo: dict[bytes, list[tuple[str, int]]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            query = parse_query(data)
        except RemoteProtocolError:
            return
        if not query.qname:  # matchPattern "*": every name; nothing else is decided here
            return
        self.next_id = our_id = (self.next_id + 1) & 0xFFFF
        self.pending[our_id] = (query, addr, time.monotonic_ns())
        assert self.upstream is not None
        self.upstream.sendto(our_id.to_bytes(2, "big") + data[2:])

    def answer(self, data: bytes) -> None:
        if len(data) < 12:
            return
        our_id = int.from_bytes(data[:2], "big")
        got = self.pending.pop(our_id, None)
        if got is None:
            return
        query, addr, started = got
        key = data[2:]
        ips = self.memo.get(key)
        if ips is None:
            try:
                ips = analyze_answer(query, data, expected_id=our_id).ips
            except RemoteProtocolError:
                return
            if len(self.memo) >= ANSWER_MEMO_MAX:
                self.memo.clear()
            self.memo[key] = ips
        assert self.transport is not None
        self.transport.sendto(query.id.to_bytes(2, "big") + key, addr)
        RING.append((time.time_ns(), "FORWARDED", addr, query.qname, query.qtype, ips,
                     time.monotonic_ns() - started))
        COUNTS[("FORWARDED", data[3] & 0x0F)] += 1


async def _main(listen: str, port: int, upstream: tuple[str, int]) -> None:
    loop = asyncio.get_running_loop()
    front = _Front()
    await loop.create_datagram_endpoint(lambda: front, local_addr=(listen, port))
    up, _ = await loop.create_datagram_endpoint(lambda: _Upstream(front), remote_addr=upstream)
    front.upstream = cast(asyncio.DatagramTransport, up)
    print("listening", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(_main(sys.argv[1], int(sys.argv[2]), (sys.argv[3], int(sys.argv[4]))))
