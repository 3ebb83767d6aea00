"""proxy/dns/server.py on 127.0.0.1 (no root): UDP, TCP (RFC 7766), TC, concurrency, pooling.

Ordering is asserted, never timing: a slow name's answer must arrive after fast ones sent
later; learning must be finished before the pod receives the answer.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import dnslib
import pytest

from observe.flow import Flow, FlowVerdict
from policy.dnsname import build_matcher
from policy.types import Decision, DropReason, Verdict
from proxy.dns import wire
from proxy.dns.server import DnsProxyServer, loop_factory
from proxy.dns.session import DnsConnInfo

from .dnsmsg import raw_query
from .fakeupstream import FakeUpstream

ALLOWED = build_matcher([], ["*.example.com", "*.test"])


def decide(info: DnsConnInfo, qname: str) -> Verdict:
    if ALLOWED.matches(qname):
        return Verdict(Decision.FORWARDED, rule_id="t/dns")
    return Verdict(Decision.DENIED, rule_id="t/deny", reason=DropReason.POLICY_DENIED)


class Harness:
    def __init__(self, **kw: Any) -> None:
        self.kw = kw
        self.flows: list[Flow] = []
        self.learned: list[tuple[str, list[tuple[str, int]]]] = []
        self.learn_hook: Callable[[], Awaitable[None] | None] | None = None

    def learn(self, info: DnsConnInfo, qname: str,
              ips: list[tuple[str, int]]) -> Awaitable[None] | None:
        self.learned.append((qname, ips))
        return self.learn_hook() if self.learn_hook else None

    async def __aenter__(self) -> Harness:
        self.up = FakeUpstream(slow_s=self.kw.pop("slow_s", 0.5))
        await self.up.start()
        self.proxy = DnsProxyServer(("127.0.0.1", 0), decide, self.learn, self.flows.append,
                                    transparent=False, origdst=lambda addr: self.up.addr,
                                    **self.kw)
        try:
            await self.proxy.start()
        except BaseException:
            await self.up.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.proxy.close()
        await self.up.close()


Run = Callable[[Awaitable[None]], None]
LOOPS = {"uvloop": loop_factory(), "asyncio": asyncio.new_event_loop}


@pytest.fixture(params=sorted(LOOPS))
def run(request: pytest.FixtureRequest) -> Callable[[Awaitable[None]], None]:
    """Every server test runs on uvloop (production) and on asyncio's own loop."""
    factory = LOOPS[request.param]

    def runner_fn(coro: Awaitable[None]) -> None:
        _run(coro, factory)
    return runner_fn


def _run(coro: Awaitable[None], factory: Callable[[], asyncio.AbstractEventLoop]) -> None:
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(coro)  # type: ignore[arg-type]


async def udp_ask(proxy: DnsProxyServer, data: bytes, timeout: float = 5.0) -> bytes:
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        s.connect(proxy.address)
        await loop.sock_sendall(s, data)
        return await asyncio.wait_for(loop.sock_recv(s, 65535), timeout)


def rcode(data: bytes) -> int:
    return data[3] & 0xF


def test_udp_allowed_learn_before_reply_bytes_relayed(run: Run) -> None:
    async def main() -> None:
        async with Harness() as h:
            loop = asyncio.get_running_loop()
            client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            client.setblocking(False)
            client.connect(h.proxy.address)
            seen_before_learn_done: list[bool] = []

            async def slow_learn() -> None:
                await asyncio.sleep(0.05)
                try:
                    client.recv(10)
                    seen_before_learn_done.append(True)
                except BlockingIOError:
                    seen_before_learn_done.append(False)

            h.learn_hook = slow_learn
            query = raw_query(b"WwW", b"ExAmple", b"com", qid=0xABCD, edns=True)
            await loop.sock_sendall(client, query)
            got = await asyncio.wait_for(loop.sock_recv(client, 65535), 5)
            client.close()
            assert seen_before_learn_done == [False]
            assert len(h.up.received) == 1 and h.up.received[0][1][2:] == query[2:]
            sent = h.up.sent[0]
            assert got == query[:2] + sent[2:]  # the upstream's bytes, only the ID restored
            assert h.learned == [("www.example.com.", [(ip, 30) for ip in
                                  [str(r.rdata) for r in dnslib.DNSRecord.parse(sent).rr]])]
            assert h.flows[-1].verdict is FlowVerdict.FORWARDED
            assert h.flows[-1].dns is not None and len(h.flows[-1].dns.ips) == 2
    run(main())


def test_udp_denied_refused_without_upstream_and_nxdomain_config(run: Run) -> None:
    async def main() -> None:
        async with Harness() as h:
            got = await udp_ask(h.proxy, raw_query(b"evil", b"net", qid=3))
            assert rcode(got) == wire.RCODE_REFUSED and got[:2] == b"\x00\x03"
            assert h.up.received == [] and h.flows[-1].verdict is FlowVerdict.DROPPED
        async with Harness(reject_rcode="nameError") as h:
            got = await udp_ask(h.proxy, raw_query(b"evil", b"net", qid=3))
            assert rcode(got) == wire.RCODE_NXDOMAIN and h.up.received == []
    run(main())


def test_malformed_formerr_and_nothing_forwarded(run: Run) -> None:
    async def main() -> None:
        async with Harness() as h:
            bad = raw_query(b"a.b", b"example", b"com")  # a label holding a dot byte
            got = await udp_ask(h.proxy, bad)
            assert rcode(got) == wire.RCODE_FORMERR and h.up.received == []
            assert h.proxy.stats.malformed_queries == 1
    run(main())


def test_tc_bit_passthrough_udp(run: Run) -> None:
    async def main() -> None:
        async with Harness() as h:
            got = await udp_ask(h.proxy, raw_query(b"tc", b"example", b"com", qid=9))
            assert got[2] & 0x02 and got[:2] == b"\x00\x09" and got[2:] == h.up.sent[0][2:]
    run(main())


def test_tcp_several_queries_one_connection_rfc7766(run: Run) -> None:
    async def main() -> None:
        async with Harness() as h:
            reader, writer = await asyncio.open_connection(*h.proxy.address)
            names = [b"slow", b"a", b"b", b"evil"]
            for i, n in enumerate(names):
                suffix = (b"net",) if n == b"evil" else (b"example", b"com")
                writer.write(wire.frame(raw_query(n, *suffix, qid=100 + i)))
            await writer.drain()
            answers: dict[int, bytes] = {}
            order: list[int] = []
            for _ in names:
                length = int.from_bytes(await asyncio.wait_for(reader.readexactly(2), 5), "big")
                msg = await reader.readexactly(length)
                answers[int.from_bytes(msg[:2], "big")] = msg
                order.append(int.from_bytes(msg[:2], "big"))
            writer.close()
            await writer.wait_closed()
            assert set(answers) == {100, 101, 102, 103}
            assert order[-1] == 100  # the slow answer did not hold back the others
            assert rcode(answers[103]) == wire.RCODE_REFUSED
            assert all(p == "TCP" for p, _d, _a in h.up.received)
            assert len({a for _p, _d, a in h.up.received}) == 1  # one pooled upstream connection
    run(main())


def test_slow_name_does_not_delay_others_and_one_upstream_socket(run: Run) -> None:
    async def main() -> None:
        async with Harness(slow_s=1.0) as h:
            slow = asyncio.create_task(udp_ask(h.proxy, raw_query(b"slow", b"example", b"com")))
            await asyncio.sleep(0)
            fast = [udp_ask(h.proxy, raw_query(b"n%d" % i, b"example", b"com", qid=i))
                    for i in range(200)]
            results = await asyncio.gather(*fast)
            assert not slow.done()  # 200 answers came back while the slow one is pending
            assert all(rcode(r) == 0 for r in results)
            assert [int.from_bytes(r[:2], "big") for r in results] == list(range(200))
            assert rcode(await slow) == 0
            assert h.proxy.upstream_socket_count == 1  # multiplexed, no socket per query
            assert len({a for _p, _d, a in h.up.received}) == 1
            # IDs are rewritten and unique among queries in flight: the slow query was in
            # flight throughout, so its ID is nobody else's. (Fast queries may reuse each
            # other's freed IDs: an ID is unique in flight, not for ever.)
            sent = [(b"\x04slow" in d, int.from_bytes(d[:2], "big")) for _p, d, _a in
                    h.up.received]
            assert len(sent) == 201
            slow_ids = [qid for is_slow, qid in sent if is_slow]
            assert len(slow_ids) == 1 and slow_ids[0] not in {q for s, q in sent if not s}
    run(main())


def test_upstream_timeout_servfail_and_overload_refused(run: Run) -> None:
    async def main() -> None:
        async with Harness(upstream_timeout_s=0.2, max_inflight=1) as h:
            hole = asyncio.create_task(udp_ask(h.proxy, raw_query(b"blackhole", b"test", qid=1)))
            await asyncio.sleep(0.02)
            over = await udp_ask(h.proxy, raw_query(b"x", b"example", b"com", qid=2))
            assert rcode(over) == wire.RCODE_REFUSED and h.proxy.stats.overload_refusals == 1
            got = await hole
            assert rcode(got) == wire.RCODE_SERVFAIL and got[:2] == b"\x00\x01"
            assert h.proxy.stats.upstream_errors["timeout"] == 1
    run(main())


def test_unreachable_upstream_answers_servfail_at_once(run: Run) -> None:
    """An ICMP port unreachable from the server fails the query now, not after the
    upstream timeout (30 s here; the test waits 5 s at most)."""
    async def main() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            closed = s.getsockname()  # nothing listens there once this socket is closed
        flows: list[Flow] = []
        proxy = DnsProxyServer(("127.0.0.1", 0), decide, lambda *_: None, flows.append,
                               transparent=False, origdst=lambda addr: closed,
                               upstream_timeout_s=30.0)
        await proxy.start()
        try:
            got = await udp_ask(proxy, raw_query(b"a", b"example", b"com", qid=9), timeout=5)
            assert rcode(got) == wire.RCODE_SERVFAIL and got[:2] == b"\x00\x09"
            assert proxy.stats.upstream_errors["icmp"] == 1
            assert proxy.stats.upstream_errors["timeout"] == 0
            # as for a timeout: the query was forwarded and its answer is our SERVFAIL
            assert [(f.verdict, f.dns.rcode if f.dns else None) for f in flows] == [
                (FlowVerdict.FORWARDED, wire.RCODE_SERVFAIL)]
        finally:
            await proxy.close()
    run(main())


def test_learn_max_delay_releases_answer(run: Run) -> None:
    async def main() -> None:
        async with Harness(learn_max_delay_s=0.05) as h:
            async def never_done() -> None:
                await asyncio.sleep(10)
            h.learn_hook = never_done
            got = await udp_ask(h.proxy, raw_query(b"a", b"example", b"com"))
            assert rcode(got) == 0 and h.proxy.stats.learn_timeouts == 1
    run(main())


def test_hostile_input_on_both_transports_never_crashes(run: Run) -> None:
    async def main() -> None:
        async with Harness() as h:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.connect(h.proxy.address)
                for junk in (b"", b"\x00", b"\xff" * 11, b"\x12\x34\x81\x00" + b"\x00" * 8,
                             b"\x00" * 5000):
                    s.send(junk)
            # A zero-length TCP frame closes that connection; the proxy keeps serving.
            reader, writer = await asyncio.open_connection(*h.proxy.address)
            writer.write(b"\x00\x00")
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
            await writer.wait_closed()
            # A spoofed "answer" sent to the proxy's listener is not a query: no reply, no crash.
            got = await udp_ask(h.proxy, raw_query(b"ok", b"example", b"com", qid=4))
            assert rcode(got) == 0 and got[:2] == b"\x00\x04"
            assert h.proxy.stats.malformed_queries >= 4 and len(h.up.received) == 1
    run(main())


def test_answer_from_wrong_source_is_ignored(run: Run) -> None:
    async def main() -> None:
        async with Harness(upstream_timeout_s=0.3) as h:
            task = asyncio.create_task(udp_ask(h.proxy, raw_query(b"blackhole", b"test", qid=8)))
            while not h.up.received:
                await asyncio.sleep(0.01)
            _p, fwd, proxy_addr = h.up.received[0]
            forged = fwd[:2] + b"\x81\x80" + fwd[4:6] + b"\x00\x01" + fwd[8:] + (
                b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\x06\x06\x06\x06")
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(forged, proxy_addr)  # right ID, wrong source port: kernel drops it
            got = await task
            assert rcode(got) == wire.RCODE_SERVFAIL and h.learned == []
    run(main())


def test_tcp_idle_connection_closed_by_tick_slow_drip_too(run: Run) -> None:
    async def main() -> None:
        async with Harness(tcp_idle_timeout_s=0.3) as h:
            reader, writer = await asyncio.open_connection(*h.proxy.address)
            writer.write(wire.frame(raw_query(b"a", b"example", b"com", qid=5)))
            length = int.from_bytes(await asyncio.wait_for(reader.readexactly(2), 5), "big")
            assert (await reader.readexactly(length))[:2] == b"\x00\x05"
            drip = wire.frame(raw_query(b"b", b"example", b"com"))
            closed = False
            for byte in drip[:-1]:  # bytes, never a whole message: not activity
                if reader.at_eof() or writer.is_closing():
                    closed = True
                    break
                try:
                    writer.write(bytes([byte]))
                    await writer.drain()
                except (ConnectionError, RuntimeError):  # uvloop: RuntimeError once closed
                    closed = True
                    break
                await asyncio.sleep(0.1)
            try:
                closed = closed or await asyncio.wait_for(reader.read(), 5) == b""
            except ConnectionError:
                closed = True
            assert closed  # the proxy hung up although bytes kept coming
            writer.close()
    run(main())


def test_upstream_udp_sockets_are_bounded_idle_ones_evicted(
        run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    from proxy.dns import server as server_mod
    monkeypatch.setattr(server_mod, "MAX_UPSTREAM_UDP_SOCKETS", 2)

    async def main() -> None:
        ups = [FakeUpstream() for _ in range(3)]
        for up in ups:
            await up.start()
        pick = {"i": 0}
        proxy = DnsProxyServer(("127.0.0.1", 0), decide, lambda *a: None, lambda f: None,
                               transparent=False, origdst=lambda addr: ups[pick["i"]].addr)
        await proxy.start()
        try:
            for round_ in range(2):
                for i in range(3):  # three servers, a pool of two: idle sockets make room
                    pick["i"] = i
                    out = await udp_ask(proxy, raw_query(b"r%d" % round_, b"example", b"com"))
                    assert rcode(out) == wire.RCODE_NOERROR
                    assert proxy.upstream_socket_count <= 2
            pick["i"] = 0  # a slow query keeps its socket busy ...
            slow = asyncio.ensure_future(udp_ask(proxy, raw_query(b"slow", b"example", b"com")))
            await asyncio.sleep(0.1)
            pick["i"] = 1
            assert rcode(await udp_ask(proxy, raw_query(b"x", b"example", b"com"))) == 0
            pick["i"] = 2  # ... so the idle one goes, and the slow answer still arrives
            assert rcode(await udp_ask(proxy, raw_query(b"y", b"example", b"com"))) == 0
            assert rcode(await slow) == wire.RCODE_NOERROR
        finally:
            await proxy.close()
            for up in ups:
                await up.close()
    run(main())


def test_udp_reads_kick_the_busy_poll(run: Run) -> None:
    """Every readiness event of the listener and of an upstream socket kicks the loop's
    busy poll (proxy/busypoll.py), so the loop polls between a query and its answer."""
    from proxy.busypoll import BusyPoll

    async def main() -> None:
        bp = BusyPoll(asyncio.get_running_loop(), 200)
        kicks: list[int] = []
        orig = bp.kick

        def kick() -> None:
            kicks.append(1)
            orig()
        bp.kick = kick  # type: ignore[method-assign]
        async with Harness(busy_poll=bp) as h:
            for i in range(5):
                got = await udp_ask(h.proxy, raw_query(b"a", b"example", b"com", qid=i + 1))
                assert rcode(got) == 0
        # per query: the query's event on the listener and the answer's on the upstream
        assert len(kicks) >= 10, (len(kicks), bp.stats())
    run(main())
