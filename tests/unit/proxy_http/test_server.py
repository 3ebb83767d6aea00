"""The asyncio server on 127.0.0.1 (port 0, no root) against a small recording origin.

Non-transparent mode with an injected `origdst` pointing at the origin. Each scenario runs
on uvloop through `asyncio.Runner(loop_factory=...)` with an overall time bound.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from types import SimpleNamespace

import pytest

from observe.flow import Flow
from proxy.http.limits import HttpLimits
from proxy.http.server import HttpProxyServer, _Client, _Upstream, loop_factory

from .harness import CODECS, api_get_only
from .origin import Origin

SCENARIO_TIMEOUT_S = 60.0
Scenario = Callable[[HttpProxyServer, Origin, list[Flow]], Awaitable[None]]


EXPRESS = {"on": True}  # set per test by the `express` fixture below


@pytest.fixture(autouse=True, params=[True, False], ids=["express", "no-express"])
def express(request: pytest.FixtureRequest) -> Iterator[bool]:
    """Every scenario runs with the server's express lane and without it (server.py's
    module doc): the lane must change nothing a client, an origin or a flow reader sees."""
    EXPRESS["on"] = request.param
    yield request.param
    EXPRESS["on"] = True


def run_scenario(scenario: Scenario, codec: str = "auto", **limits: object) -> None:
    async def main() -> None:
        origin = Origin()
        port = await origin.start()
        flows: list[Flow] = []
        proxy = HttpProxyServer(("127.0.0.1", 0), api_get_only, flows.append,
                                origdst=lambda s: ("127.0.0.1", port), codec=codec,
                                limits=HttpLimits(**limits),  # type: ignore[arg-type]
                                sweep_interval_s=0.05, express=EXPRESS["on"])
        await proxy.start()
        try:
            await asyncio.wait_for(scenario(proxy, origin, flows), SCENARIO_TIMEOUT_S)
        finally:
            await proxy.close()
            await origin.close()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())


async def read_response(r: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await r.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    fields = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
    if "content-length" in fields:
        body = await r.readexactly(int(fields["content-length"]))
    elif fields.get("transfer-encoding") == "chunked":
        body = b""
        while size := int((await r.readuntil(b"\r\n"))[:-2], 16):
            body += await r.readexactly(size)
            await r.readexactly(2)
        await r.readexactly(2)
    else:
        body = b""
    return status, fields, body


async def until(cond: Callable[[], object]) -> None:
    """Wait, bounded (2 s), until `cond()` holds; the caller asserts it afterwards."""
    for _ in range(200):
        if cond():
            return
        await asyncio.sleep(0.01)


async def connect(proxy: HttpProxyServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", proxy.port)


GET = b"GET %b HTTP/1.1\r\nHost: svc\r\n\r\n"


@pytest.mark.parametrize("codec", CODECS)
def test_allowed_denied_and_pool_reuse(codec: str) -> None:
    async def real(proxy: HttpProxyServer, origin: Origin, flows: list[Flow]) -> None:
        r, w = await connect(proxy)
        w.write(GET % b"/api/a" + GET % b"/admin" + GET % b"/api/b")
        got = [await read_response(r) for _ in range(3)]
        assert [(s, b) for s, _, b in got] == [(200, b"GET /api/a 0"),
                                              (403, b"Access denied\r\n"),
                                              (200, b"GET /api/b 0")]
        # the connection stayed parked on this client between its requests
        assert origin.connections == 1 and proxy.stats.upstream_reuses == 1
        [client] = proxy.clients
        assert client.up is not None and client.up.parked and not proxy._pool
        w.close()
        await until(lambda: proxy._pool)  # the proxy saw the client go
        r2, w2 = await connect(proxy)  # a second client from the same source IP
        w2.write(GET % b"/api/c")
        assert (await read_response(r2))[2] == b"GET /api/c 0"
        assert origin.connections == 1  # the first client's connection, from the pool
        assert proxy.stats.upstream_reuses == 2
        assert [(f.verdict.value, f.http.code if f.http else 0) for f in flows] == [
            ("FORWARDED", 200), ("DROPPED", 403), ("FORWARDED", 200), ("FORWARDED", 200)]
        assert flows[1].drop_reason_desc == "POLICY_DENIED" and flows[1].l7_type == "REQUEST"
        assert flows[0].latency_ns > 0 and flows[0].http is not None
        assert flows[0].http.url == "http://svc/api/a"
        w2.close()

    run_scenario(real, codec)


def test_origin_closed_pooled_connection_is_not_reused() -> None:
    async def scenario(proxy: HttpProxyServer, origin: Origin, flows: list[Flow]) -> None:
        r, w = await connect(proxy)
        w.write(GET % b"/api/close-after")
        assert (await read_response(r))[0] == 200
        [client] = proxy.clients
        await until(lambda: client.up is None)  # the proxy saw the origin's FIN
        assert client.up is None and not proxy._pool  # dropped, neither parked nor pooled
        w.write(GET % b"/api/again")
        assert (await read_response(r))[2] == b"GET /api/again 0"
        assert origin.connections == 2
        w.close()

    run_scenario(scenario)


def test_parked_connection_idles_out_like_a_pooled_one() -> None:
    async def scenario(proxy: HttpProxyServer, origin: Origin, flows: list[Flow]) -> None:
        r, w = await connect(proxy)
        w.write(GET % b"/api/a")
        assert (await read_response(r))[0] == 200
        [client] = proxy.clients
        up = client.up
        assert up is not None and up.parked
        await until(lambda: client.up is None)  # the sweeper runs every 0.05 s
        assert client.up is None and not up.alive and not proxy.clients.isdisjoint({client})
        w.write(GET % b"/api/b")  # the client stays; its next request opens a new one
        assert (await read_response(r))[2] == b"GET /api/b 0"
        assert origin.connections == 2
        w.close()

    run_scenario(scenario, upstream_idle_timeout_s=0.1)


def test_bytes_on_a_parked_connection_close_it() -> None:
    async def scenario(proxy: HttpProxyServer, origin: Origin, flows: list[Flow]) -> None:
        r, w = await connect(proxy)
        w.write(GET % b"/api/then-junk")  # answered, then junk nobody asked for
        assert (await read_response(r))[0] == 200
        [client] = proxy.clients
        await until(lambda: client.up is None)
        assert client.up is None and not proxy._pool and proxy.stats.upstream_errors == 1
        w.write(GET % b"/api/b")
        # the junk never reached the client: this read would start with it
        assert (await read_response(r))[:3:2] == (200, b"GET /api/b 0")
        assert origin.connections == 2
        w.close()

    run_scenario(scenario)


def test_a_dead_upstream_is_never_pooled_or_parked() -> None:
    """Released as reusable after it died (its transport gone or closed under us): neither
    kept on the client nor put in the pool."""
    proxy = HttpProxyServer(("127.0.0.1", 0), api_get_only, lambda _flow: None)
    client = _Client(proxy)
    up = _Upstream(proxy, ("10.0.1.5", "10.0.2.7", 80, 0))  # never connected: no transport
    client.up, up.owner = up, client
    client._release_upstream(True)
    assert client.up is None and up.owner is None and not up.parked and not proxy._pool


def test_a_parked_connection_keeps_its_idle_clock_in_the_pool() -> None:
    """The client goes away between requests: its parked connection is pooled and idles out
    counted from when it was parked, not from when it entered the pool."""
    proxy = HttpProxyServer(("127.0.0.1", 0), api_get_only, lambda _flow: None)
    client = _Client(proxy)
    up = _Upstream(proxy, ("10.0.1.5", "10.0.2.7", 80, 0))
    up.transport = SimpleNamespace(resume_reading=lambda: None)  # type: ignore[assignment]
    up.alive = True
    client.up, up.owner = up, client
    proxy.now = 5.0
    client._release_upstream(True)  # parked at 5.0
    assert client.up is up and up.parked and up.idle_since == 5.0
    proxy.now = 50.0
    client._release_upstream(False)  # the client closes between requests
    assert proxy._pool[up.key] == [up] and up.idle_since == 5.0 and not up.parked


def test_request_on_a_stale_pooled_connection_is_retried_once() -> None:
    async def scenario(proxy: HttpProxyServer, origin: Origin, flows: list[Flow]) -> None:
        r, w = await connect(proxy)
        w.write(GET % b"/api/a")
        assert (await read_response(r))[0] == 200
        w.write(GET % b"/api/stale")  # goes out on the pooled connection, which dies
        assert (await read_response(r))[2] == b"GET /api/stale 0"
        assert origin.connections == 2 and proxy.stats.upstream_errors == 0
        w.close()

    run_scenario(scenario)


@pytest.mark.parametrize("codec", CODECS)
def test_10mb_upload_and_download_stream_with_bounded_buffers(codec: str) -> None:
    size = 10 * 1024 * 1024

    async def scenario(proxy: HttpProxyServer, origin: Origin, flows: list[Flow]) -> None:
        peak = 0
        stop = asyncio.Event()

        async def sample() -> None:
            nonlocal peak
            while not stop.is_set():
                for c in list(proxy.clients):
                    total = c.session.buffered_bytes if c.session else 0
                    total += sum(len(p) for p in c.pending)
                    if c.transport is not None:
                        total += c.transport.get_write_buffer_size()
                    if c.up is not None and c.up.transport is not None:
                        total += c.up.transport.get_write_buffer_size()
                    peak = max(peak, total)
                await asyncio.sleep(0.001)

        sampler = asyncio.ensure_future(sample())
        origin.read_delay_s = 0.001  # a slow origin forces back-pressure on the upload
        r, w = await connect(proxy)
        w.write(b"GET /api/up HTTP/1.1\r\nHost: svc\r\nContent-Length: %d\r\n\r\n" % size)
        block = b"u" * 65536
        for _ in range(size // len(block)):
            w.write(block)
            await w.drain()
        status, _, body = await read_response(r)
        assert (status, body) == (200, b"GET /api/up %d" % size)
        origin.read_delay_s = 0.0
        w.write(GET % b"/api/big/%d" % size)
        head = await r.readuntil(b"\r\n\r\n")
        assert b"content-length: %d" % size in head
        got = 0
        while got < size:  # a slow reader forces back-pressure on the download
            got += len(await r.read(65536))
            if got % (1024 * 1024) < 65536:
                await asyncio.sleep(0.005)
        assert got == size
        stop.set()
        await sampler
        assert 0 < peak < 2 * 1024 * 1024, peak  # never the whole 10 MB in memory
        print(f"peak proxy buffering for 10 MB each way: {peak} bytes")
        w.close()

    run_scenario(scenario, codec)


def test_expect_100_continue() -> None:
    async def scenario(proxy: HttpProxyServer, origin: Origin, flows: list[Flow]) -> None:
        r, w = await connect(proxy)
        w.write(b"GET /api/e HTTP/1.1\r\nHost: svc\r\nExpect: 100-continue\r\n"
                b"Content-Length: 4\r\n\r\n")
        assert await r.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        w.write(b"body")
        assert (await read_response(r))[2] == b"GET /api/e 4"
        w.close()

    run_scenario(scenario)


def test_junk_client_gets_400_and_others_are_served() -> None:
    async def scenario(proxy: HttpProxyServer, origin: Origin, flows: list[Flow]) -> None:
        good_r, good_w = await connect(proxy)
        bad_r, bad_w = await connect(proxy)
        bad_w.write(b"\x16\x03\x01\x02\x00junk\r\n\r\n")
        status, fields, _ = await read_response(bad_r)
        assert status == 400 and fields["connection"] == "close"
        assert await bad_r.read() == b""  # closed by the proxy
        good_w.write(GET % b"/api/ok")
        assert (await read_response(good_r))[2] == b"GET /api/ok 0"
        assert proxy.stats.parse_errors == 1
        good_w.close()
        bad_w.close()

    run_scenario(scenario)


def test_header_timeout_answers_408_and_closes() -> None:
    async def scenario(proxy: HttpProxyServer, origin: Origin, flows: list[Flow]) -> None:
        r, w = await connect(proxy)
        w.write(b"GET /api/slow HTTP/1.1\r\nHost: sv")
        status, _, _ = await read_response(r)
        assert status == 408
        assert await r.read() == b""
        assert proxy.stats.timeouts == 1 and origin.heads == []
        w.close()

    run_scenario(scenario, header_timeout_s=0.3)


def test_connection_cap_and_upstream_failure() -> None:
    async def scenario(proxy: HttpProxyServer, origin: Origin, flows: list[Flow]) -> None:
        r1, w1 = await connect(proxy)
        w1.write(GET % b"/api/one")
        assert (await read_response(r1))[0] == 200
        r2, w2 = await connect(proxy)
        with contextlib.suppress(ConnectionError):
            assert await r2.read() == b""  # over the cap: closed at once
        assert proxy.stats.rejected_connections == 1
        w1.close()
        w2.close()

    run_scenario(scenario, max_connections=1)


def test_unreachable_origin_gets_503() -> None:
    async def main() -> None:
        probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        dead_port = int(probe.sockets[0].getsockname()[1])
        probe.close()
        await probe.wait_closed()  # nothing listens there any more: connect is refused
        proxy = HttpProxyServer(("127.0.0.1", 0), api_get_only, lambda f: None,
                                origdst=lambda s: ("127.0.0.1", dead_port))
        await proxy.start()
        try:
            r, w = await connect(proxy)
            w.write(GET % b"/api/x")
            status, fields, _ = await asyncio.wait_for(read_response(r), SCENARIO_TIMEOUT_S)
            assert status == 503 and fields["connection"] == "close"
            assert proxy.stats.upstream_errors == 1
            w.close()
        finally:
            await proxy.close()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())


def test_pool_key_separates_source_identities() -> None:
    from proxy.http.actions import ConnInfo

    proxy = HttpProxyServer(("127.0.0.1", 0), api_get_only, lambda f: None,
                            upstream_mark=lambda c: 0x100 if c.context == "a" else 0x200)
    a = ConnInfo("10.0.1.5", 1000, "10.0.2.7", 80, context="a")
    assert proxy.pool_key(a) == ("10.0.1.5", "10.0.2.7", 80, 0x100)
    assert proxy.pool_key(ConnInfo("10.0.1.5", 2000, "10.0.2.7", 80, context="a")) == \
        proxy.pool_key(a)  # same pod and identity: may share
    assert proxy.pool_key(ConnInfo("10.0.1.6", 1000, "10.0.2.7", 80, context="a")) != \
        proxy.pool_key(a)  # another pod
    assert proxy.pool_key(ConnInfo("10.0.1.5", 1000, "10.0.2.7", 80, context="b")) != \
        proxy.pool_key(a)  # another identity (mark)


def test_client_that_never_reads_its_403s_is_paused() -> None:
    async def scenario(proxy: HttpProxyServer, origin: Origin, flows: list[Flow]) -> None:
        _, w = await connect(proxy)
        denied = b"GET /admin HTTP/1.1\r\nHost: svc\r\n\r\n" * 2000  # ~70 KB of requests
        sent = 0
        for _ in range(200):  # bounded: 14 MB at most if the proxy never pushed back
            w.write(denied)
            sent += len(denied)
            try:
                await asyncio.wait_for(w.drain(), 0.5)
            except TimeoutError:
                break  # the proxy stopped reading us: back-pressure works
        client = next(iter(proxy.clients))
        assert "client-buffer" in client.pause_reasons
        assert client.transport is not None
        assert client.transport.get_write_buffer_size() < 4 * 1024 * 1024
        assert sent < 200 * len(denied)
        w.close()

    run_scenario(scenario)


@pytest.mark.parametrize("codec", CODECS)
def test_closed_connections_are_freed_by_refcounting_alone(
        codec: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent freezes long-lived objects out of the cyclic collector (agent/gctune.py),
    so a connection's objects must not sit in a reference cycle once it is closed (the
    llhttp parser holds its codec's callbacks): every codec is gone without gc.collect()."""
    import gc
    import weakref

    from proxy.http import server as server_module

    made: list[weakref.ref[object]] = []
    real_factory = server_module.codec_factory

    def recording_factory(name: str) -> Callable[[int], object]:
        make = real_factory(name)

        def wrapped(max_head_bytes: int) -> object:
            c = make(max_head_bytes)
            made.append(weakref.ref(c))
            return c
        return wrapped

    monkeypatch.setattr(server_module, "codec_factory", recording_factory)

    async def scenario(proxy: HttpProxyServer, origin: Origin, flows: list[Flow]) -> None:
        for path in (b"/api/a", b"/admin", b"/api/b"):  # allowed, denied (403), allowed
            r, w = await connect(proxy)
            w.write(GET % path)
            await w.drain()
            await read_response(r)
            w.close()
            await w.wait_closed()
        for _ in range(200):  # the proxy sees the close on its next loop turns
            if not proxy.clients:
                break
            await asyncio.sleep(0.01)
        del r, w
        await asyncio.sleep(0.05)  # uvloop drops a closed transport's protocol a turn later
        flows.clear()
        assert len(made) >= 3 and not proxy.clients
        assert [ref() for ref in made] == [None] * len(made)

    gc.disable()
    try:
        run_scenario(scenario, codec)
    finally:
        gc.enable()


# One connection's reads, in order: plain heads (the express lane), a repeated head (the
# memo), a denied one, heads the fast path declines (a Connection field, a body, an
# absolute-form target, a non-canonical path), pipelined heads in one read, a head split
# over two reads, HTTP/1.0 (closes), each answered before the next read.
TRANSCRIPT_READS = [
    [b"GET /api/a HTTP/1.1\r\nHost: svc\r\nx-request-id: 1\r\n\r\n"],
    [b"GET /api/a HTTP/1.1\r\nHost: svc\r\nx-request-id: 1\r\n\r\n"],
    [b"GET /admin HTTP/1.1\r\nHost: svc\r\n\r\n"],
    [b"GET /api/b HTTP/1.1\r\nHost: svc\r\nConnection: keep-alive\r\n\r\n"],
    [b"POST /api/c HTTP/1.1\r\nHost: svc\r\nContent-Length: 3\r\n\r\nabc"],
    [b"GET http://svc/api/d HTTP/1.1\r\nHost: svc\r\n\r\n"],
    [b"GET /api/./e%7e HTTP/1.1\r\nHost: svc\r\n\r\n"],
    [b"GET /api/f HTTP/1.1\r\nHost: svc\r\n\r\nGET /api/g HTTP/1.1\r\nHost: svc\r\n\r\n"],
    [b"GET /api/h HTTP/1.1\r\nHo", b"st: svc\r\n\r\n"],
    [b"GET /api/i HTTP/1.0\r\nHost: svc\r\n\r\n"],
]


def _transcript(express: bool) -> tuple[object, ...]:
    got: list[bytes] = []
    out: list[object] = []

    async def scenario(proxy: HttpProxyServer, origin: Origin, flows: list[Flow]) -> None:
        r, w = await connect(proxy)
        for reads in TRANSCRIPT_READS:
            for data in reads:
                w.write(data)
                await w.drain()
                await asyncio.sleep(0.01)  # each read arrives on its own
            n = b"".join(reads).count(b" HTTP/1.")
            for _ in range(n):
                status, fields, body = await read_response(r)
                got.append(b"%d %b %b" % (status, fields.get("connection", "").encode(), body))
        assert await r.read() == b""  # HTTP/1.0: the proxy closed
        w.close()
        out.extend([list(origin.heads), origin.connections,
                    [(f.verdict.value, f.l7_type, f.http.code if f.http else 0,
                      f.http.url if f.http else "") for f in flows],
                    dict(proxy.stats.requests), proxy.stats.parse_errors])

    EXPRESS["on"] = express
    run_scenario(scenario)
    return got, out


def test_express_lane_changes_nothing_observable() -> None:
    """The same reads with the express lane on and off: the same responses, the same heads
    at the origin, the same flows and counters."""
    on, off = _transcript(True), _transcript(False)
    assert on == off
    responses = on[0]
    assert len(responses) == 11 and responses[2].startswith(b"403 ")
    assert responses[-1] == b"200 close GET /api/i 0"


def test_a_failing_flow_sink_does_not_break_the_data_path(caplog: pytest.LogCaptureFixture) -> None:
    """Forwarded (express lane: one flow per exchange) and denied requests are answered
    as usual when the agent's flow sink raises; each failure is logged."""
    async def scenario(proxy: HttpProxyServer, origin: Origin, flows: list[Flow]) -> None:
        def broken(flow: Flow) -> None:
            flows.append(flow)
            raise RuntimeError("sink down")
        proxy.emit = broken
        r, w = await connect(proxy)
        for path in (b"/api/a", b"/admin", b"/api/b"):
            w.write(GET % path)
            status, _, body = await read_response(r)
            assert (status, body) == ((200, b"GET " + path + b" 0") if path != b"/admin"
                                      else (403, b"Access denied\r\n"))
        assert [f.verdict.value for f in flows] == ["FORWARDED", "DROPPED", "FORWARDED"]
        assert caplog.text.count("flow emit callback failed") == 3
        w.close()

    run_scenario(scenario)
