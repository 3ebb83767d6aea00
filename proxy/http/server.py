"""The asyncio side of the transparent HTTP proxy: it only moves bytes (session.py decides).

Contract: `HttpProxyServer.start()` listens (IP_TRANSPARENT in transparent mode), wraps each
accepted connection in one `HttpSession` and executes its actions through exactly one
`_execute`. Upstream connections go to the connection's original destination, come from a
keep-alive pool keyed by (source IP, destination IP, port, mark) so two downstream identities
never share one, carry SO_MARK and, when asked, the pod's source address. After a reusable
response the connection stays *parked* on its client (attached, idle) and takes that
client's next request directly; it goes to the pool when the client closes between
requests, and is closed after the pool's idle timeout like a pooled one. Why: a pool round
trip per request (release, pool_put, pool_get) was ~70 bytecodes and two Python calls
(tests/bench/inproc_http.py `ops`: 1,220 -> 1,150 per request; `instr`: 91.4k -> 88.6k);
the bench floor keeps one upstream per client the same way. So two clients of one
identity that are open at the same time hold two upstream connections. Back-pressure uses
the transports' high/low water marks; header, idle, pool-idle and connect timeouts and a
connection cap are enforced here. One bad client never takes the server down.

Express lane: the dominant exchange (an idle connection reads one plain request head; the
upstream answers it in one read and nothing follows) does not go through action objects.
`data_received` calls the session's fast path itself (`fast_request`, `fast_response`: the
same functions, checks and state changes `feed_client` / `feed_upstream` run first) and
executes its result directly: the head to the upstream; the flow, the client's bytes and
the release of the upstream. Anything else (a declined head, a denial, a partial response,
pipelined bytes, a closing client) returns actions or None and goes through `_execute` as
before. Why: the actions, their list and the dispatch loop cost ~16k instructions per
request (callgrind, an in-process end-to-end loop at 64 connections, client and origin
included; tests/bench/inproc_http.py measures the lane and the agent's batched flow sink
together: 127.1k -> 108.8k). test_server.py runs every scenario with the lane on and off,
and compares a transcript of both (responses, heads at the origin, flows, counters).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

from observe.flow import Flow
from proxy.busypoll import BusyPoll
from proxy.http.actions import (
    Action,
    Close,
    ConnInfo,
    Emit,
    HttpProxyStats,
    ReleaseUpstream,
    SendClient,
    SendUpstream,
    Side,
    StartTunnel,
)
from proxy.http.codec import codec_factory
from proxy.http.exchange import CLIENT_CLOSED, CLIENT_HEAD, UP_HEAD, Exchange
from proxy.http.limits import HttpLimits
from proxy.http.session import Decide, HttpSession
from proxy.http.session_fast import fast_request, fast_response
from redirect.origdst import IP_TRANSPARENT, tcp_original_dst

log = logging.getLogger(__name__)

IP_BIND_ADDRESS_NO_PORT = 24  # linux/in.h: pick the source port at connect(), not bind()
SWEEP_INTERVAL_S = 1.0  # timer granularity for header/idle timeouts (cheaper than per-read timers)
PoolKey = tuple[str, str, int, int]
_A = TypeVar("_A")


def _given(actions: list[Action]) -> list[Action]:
    return actions


def _call(step: Callable[[], list[Action]]) -> list[Action]:
    return step()


def loop_factory() -> asyncio.AbstractEventLoop:
    """uvloop when importable (perf-anchors B5: +9 % HTTP), else the stock loop.
    Pass to `asyncio.Runner(loop_factory=...)`; never install a global policy."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def _kick(bp: BusyPoll | None) -> None:
    """Every read of both sides: BusyPoll.kick, with its per-iteration case (the loop is
    polling: one flag) done here without a Python-level call (compiled: a C function)."""
    if bp is not None:
        if bp.polling:
            bp.seen = True
        else:
            bp.kick()


class _Upstream(asyncio.Protocol):
    """One upstream TCP connection; owned by one client connection or idle in the pool."""

    def __init__(self, server: HttpProxyServer, key: PoolKey) -> None:
        self.server = server
        self.key = key
        self.owner: _Client | None = None
        self.transport: asyncio.Transport | None = None
        self.alive = False
        self.idle_since = 0.0
        self.reused = False  # taken from the pool (or parked) for the current owner
        self.got_data = False  # received a byte since it was attached (or parked)
        self.parked = False  # idle, still attached to its owner (_Client._release_upstream)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.alive = True
        lim = self.server.limits
        self.transport.set_write_buffer_limits(lim.high_water_bytes, lim.low_water_bytes)

    def data_received(self, data: bytes) -> None:
        self.got_data = True
        _kick(self.server.busy_poll)
        if self.owner is not None:
            self.owner.on_upstream_data(self, data)
        else:  # an idle pooled connection must stay silent
            self.close()

    def eof_received(self) -> bool:
        if self.owner is not None:
            self.owner.on_upstream_data(self, b"")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        self.server.pool_discard(self)
        if self.owner is not None:
            self.owner.on_upstream_data(self, b"")

    def pause_writing(self) -> None:
        if self.owner is not None:
            self.owner.pause_client("upstream-buffer")

    def resume_writing(self) -> None:
        if self.owner is not None:
            self.owner.resume_client("upstream-buffer")

    def close(self) -> None:
        self.alive = False
        if self.transport is not None:
            self.transport.close()


class _Client(asyncio.Protocol):
    """One downstream connection: feeds its session and executes the actions."""

    def __init__(self, server: HttpProxyServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.session: HttpSession | None = None
        self.up: _Upstream | None = None
        self.connecting: asyncio.Task[None] | None = None
        self.pending: list[bytes] = []
        self.pause_reasons: set[str] = set()
        self.last_activity = 0.0
        self.head_since: float | None = None
        self.closed = False
        self.tunnel = False
        self.pool_key: PoolKey | None = None  # computed once: upstream_mark may be costly

    # --- asyncio callbacks ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport = transport
        srv = self.server
        if len(srv.clients) >= srv.limits.max_connections:
            srv.stats.rejected_connections += 1
            self.closed = True
            transport.abort()
            return
        try:
            peer = transport.get_extra_info("peername")
            dst = srv.origdst(transport.get_extra_info("socket"))
        except OSError as exc:
            log.warning("cannot read connection addresses: %s", exc)
            self.closed = True
            transport.abort()
            return
        conn = ConnInfo(str(peer[0]), int(peer[1]), dst[0], dst[1], srv.context_for(peer, dst))
        self.session = srv.new_session(conn)
        srv.clients.add(self)
        srv.stats.accepted_connections += 1
        srv.stats.active_connections = len(srv.clients)
        self.last_activity = srv.loop_time()
        transport.set_write_buffer_limits(srv.limits.high_water_bytes, srv.limits.low_water_bytes)

    def data_received(self, data: bytes) -> None:
        srv = self.server
        self.last_activity = srv.now  # the sweeper's clock: no call per read
        _kick(srv.busy_poll)
        session = self.session
        if session is None:
            return
        if (session.state is CLIENT_HEAD and not session.pending and data.endswith(b"\r\n\r\n")
                and self.server.express and not self.closed):
            self._express_request(session, data)
        else:
            self._execute(session.feed_client, data)

    def _express_request(self, session: HttpSession, data: bytes) -> None:
        """feed_client's fast path without actions: what `_execute(session.feed_client,
        data)` does when the session is idle (state HEAD, nothing buffered) and `data` ends a
        head, with the fast path's result executed directly (module doc: express lane)."""
        try:
            fast = fast_request(session, data)
            if type(fast) is bytes:
                self._send_upstream(fast)
            elif fast is None:
                self._execute(session.feed_client_full, data)
                return
            else:
                self._execute(_given, fast)  # type: ignore[arg-type]
                return
        except Exception:  # as in _execute: a bug must cost one connection, never the server
            self._failed()
            return
        self.head_since = None  # _execute's ending with nothing buffered
        if self.pause_reasons:
            self.resume_client("pipeline")

    def eof_received(self) -> bool:
        if self.session is not None:
            self._execute(self.session.feed_client, b"")
        return True  # keep the write side open: a pending response may still go out

    def connection_lost(self, exc: Exception | None) -> None:
        if self.session is not None and not self.closed:
            self._execute(self.session.feed_client, b"")
        self._teardown()

    def pause_writing(self) -> None:
        # The client does not read: stop reading the origin (its response) and the client
        # itself (pipelined requests would queue locally generated 403s without bound).
        if self.up is not None and self.up.transport is not None:
            self.up.transport.pause_reading()
        self.pause_client("client-buffer")

    def resume_writing(self) -> None:
        if self.up is not None and self.up.transport is not None and self.up.alive:
            self.up.transport.resume_reading()
        self.resume_client("client-buffer")

    # --- called by the upstream side / the sweeper ----------------------------------------
    def on_upstream_data(self, up: _Upstream, data: bytes) -> None:
        if up is not self.up:
            return
        self.last_activity = self.server.now
        session = self.session
        if not data:
            self.up = None  # gone: the session decides what that means
            up.owner = None
            if up.reused and not up.got_data and session is not None:
                retry = session.retry_on_fresh_upstream()
                if retry is not None:
                    self._execute(_given, retry)
                    return
        elif (session is not None and session.up_state is UP_HEAD and not session._rbuf
              and session.state is not CLIENT_CLOSED and self.server.express and not self.closed):
            ex = session._ex
            if ex is not None:
                self._express_response(session, ex, data)
                return
        if session is not None:
            self._execute(session.feed_upstream, data)

    def _express_response(self, session: HttpSession, ex: Exchange, data: bytes) -> None:
        """feed_upstream's fast path without actions: `_execute(session.feed_upstream,
        data)` for a response head read while the session waits for it, the whole exchange's
        ending (Emit, SendClient, ReleaseUpstream) executed directly when fast_response says
        nothing else follows (module doc: express lane)."""
        try:
            fast = fast_response(session, ex, data)
            if type(fast) is tuple:
                flow, out, reusable = fast
                self.server.emit_flow(flow)
                if self.transport is not None:
                    self.transport.write(out)
                self._release_upstream(reusable and not self.tunnel)
            elif fast is None:
                self._execute(session.feed_upstream_full, data)
                return
            else:
                self._execute(_given, fast)  # type: ignore[arg-type]
                return
        except Exception:  # as in _execute
            self._failed()
            return
        self.head_since = None  # _execute's ending with nothing buffered
        if self.pause_reasons:
            self.resume_client("pipeline")

    def _failed(self) -> None:
        """A bug while handling this connection: log it, count it, close only this one."""
        log.exception("HTTP proxy connection failed; closing it")
        self.server.stats.upstream_errors += 1
        self._abort()

    def on_timeout(self) -> None:
        if self.session is not None:
            self._execute(_call, self.session.timeout)

    def pause_client(self, reason: str) -> None:
        if not self.pause_reasons and self.transport is not None and not self.closed:
            self.transport.pause_reading()
        self.pause_reasons.add(reason)

    def resume_client(self, reason: str) -> None:
        if reason in self.pause_reasons:
            self.pause_reasons.discard(reason)
            if not self.pause_reasons and self.transport is not None and not self.closed:
                self.transport.resume_reading()

    # --- the one dispatch -----------------------------------------------------------------
    def _execute(self, step: Callable[[_A], list[Action]], arg: _A) -> None:
        """Run one session step (`step(arg)`, a bound session method: no closure per read)
        and execute its actions in order: the only place actions take effect.

        Dispatch on the exact type, the four actions of a forwarded request first
        (SendClient, SendUpstream, Emit, ReleaseUpstream), inline in this loop: a `match`
        on class patterns runs an isinstance per failed case (~1.3 µs more per request),
        and a method call per action or per step costs ~1,500 instructions each (callgrind
        on tests/bench/test_http_core_bench.py's loop). The action classes are frozen
        slotted dataclasses nobody subclasses."""
        session = self.session
        if session is None or self.closed:
            return
        try:
            for action in step(arg):
                kind = type(action)
                if kind is SendClient:
                    if self.transport is not None and not self.closed:
                        self.transport.write(action.data)  # type: ignore[union-attr]
                elif kind is SendUpstream:
                    self._send_upstream(action.data)  # type: ignore[union-attr]
                elif kind is Emit:
                    self.server.emit_flow(action.flow)  # type: ignore[union-attr]
                elif kind is ReleaseUpstream:
                    self._release_upstream(
                        action.reusable and not self.tunnel)  # type: ignore[union-attr]
                elif kind is Close:
                    self._release_upstream(False)
                    if action.side is Side.CLIENT:  # type: ignore[union-attr]
                        self.closed = True
                        if self.transport is not None:
                            self.transport.close()
                        self._teardown()
                elif kind is StartTunnel:
                    self.tunnel = True
                else:
                    raise RuntimeError(f"unexpected action {action!r}")
        except Exception:  # a bug must cost one connection, never the server
            self._failed()
            return
        if self.closed:
            return
        buffered = len(session.pending)
        if not buffered:  # the usual case: nothing waits in the session
            self.head_since = None
            if self.pause_reasons:
                self.resume_client("pipeline")
            return
        self.head_since = (self.head_since or self.server.loop_time()) \
            if session.head_in_progress else None
        if buffered > self.server.limits.max_pipeline_bytes:
            self.pause_client("pipeline")
        elif self.pause_reasons:
            self.resume_client("pipeline")

    # --- upstream attachment --------------------------------------------------------------
    def _send_upstream(self, data: bytes) -> None:
        up = self.up
        if up is not None and up.transport is not None and up.alive:
            if up.parked:  # the next request on this client's parked connection
                up.parked = False
                self.server.stats.upstream_reuses += 1
            up.transport.write(data)
            return
        if self.connecting is None and not self.pending and self.session is not None:
            # the usual next request: an idle pooled connection takes it at once
            if self.pool_key is None:
                self.pool_key = self.server.pool_key(self.session.conn)
            up = self.server.pool_get(self.pool_key)
            if up is not None and up.transport is not None:
                up.reused = True
                self.up = up
                up.owner = self
                up.got_data = False
                up.transport.write(data)
                return
            if up is not None:  # pragma: no cover - a pooled connection always has one
                up.close()
        self.pending.append(data)
        if self.connecting is None and self.session is not None:
            if self.pool_key is None:
                self.pool_key = self.server.pool_key(self.session.conn)
            pooled = self.server.pool_get(self.pool_key)
            if pooled is not None:
                pooled.reused = True
                self._attach(pooled)
                return
            self.pause_client("connecting")
            self.connecting = asyncio.ensure_future(
                self._connect(self.session.conn, self.pool_key))

    async def _connect(self, conn: ConnInfo, key: PoolKey) -> None:
        try:
            up = await self.server.open_upstream(conn, key)
        except (TimeoutError, OSError) as exc:
            log.info("upstream %s:%d unreachable: %s", conn.dst_ip, conn.dst_port, exc)
            self.connecting = None
            self.pending.clear()
            if self.session is not None:
                self._execute(_call, self.session.upstream_failed)
            return
        self.connecting = None
        if self.closed:
            up.close()
            return
        up.reused = False
        self._attach(up)
        self.resume_client("connecting")

    def _attach(self, up: _Upstream) -> None:
        self.up = up
        up.owner = self
        up.got_data = False
        pending = self.pending
        if up.transport is not None:
            up.transport.write(pending[0] if len(pending) == 1 else b"".join(pending))
        pending.clear()

    def _release_upstream(self, reusable: bool) -> None:
        """The exchange on `self.up` is over. Reusable: park it (it stays attached, idle,
        for this client's next request: no pool round trip per request, module doc). Not
        reusable: close it, unless it is parked and clean (the client is going away between
        requests): then it goes to the pool for the next connection with the same key."""
        if self.connecting is not None:
            self.connecting.cancel()
            self.connecting = None
            self.pending.clear()
        up = self.up
        if up is None:
            return
        if up.transport is not None and up.alive:
            up.transport.resume_reading()  # the pool (or the parked wait) must see a FIN
            if reusable:
                up.parked = up.reused = True
                up.got_data = False
                up.idle_since = self.server.now
                if self.pause_reasons:
                    self.resume_client("upstream-buffer")
                return
            reusable = up.parked and not up.got_data
        else:  # closed under us: never pooled
            reusable = False
        self.up = None
        up.owner = None
        up.parked = False
        if reusable:
            self.server.pool_put(up)
        else:
            up.close()
        if self.pause_reasons:
            self.resume_client("upstream-buffer")

    def _abort(self) -> None:
        self.closed = True
        self._release_upstream(False)
        if self.transport is not None:
            self.transport.abort()
        self._teardown()

    def _teardown(self) -> None:
        self.closed = True
        self._release_upstream(False)
        if self.session is not None:
            self.session.release()  # no reference cycle outlives the connection
        srv = self.server
        srv.clients.discard(self)
        srv.stats.active_connections = len(srv.clients)


class HttpProxyServer:
    """Listener + upstream pool + timers; see the module docstring."""

    def __init__(self, listen: tuple[str, int], decide: Decide, emit: Callable[[Flow], None], *,
                 transparent: bool = False,
                 upstream_mark: Callable[[ConnInfo], int] | None = None,
                 bind_source_transparently: bool = False,
                 origdst: Callable[[socket.socket], tuple[str, int]] | None = None,
                 codec: str = "auto", limits: HttpLimits | None = None,
                 stats: HttpProxyStats | None = None,
                 context: Callable[[tuple[str, int], tuple[str, int]], object] | None = None,
                 sweep_interval_s: float = SWEEP_INTERVAL_S, express: bool = True,
                 decide_for: Callable[[ConnInfo], Decide] | None = None,
                 flow_queue: tuple[list[Flow], Callable[[], None]] | None = None,
                 busy_poll: BusyPoll | None = None) -> None:
        self.listen = listen
        # kicked on every read so the loop polls a little before sleeping (busypoll.py)
        self.busy_poll = busy_poll
        self.decide = decide
        self.emit = emit
        # (pending, wake): when given, a flow is appended to `pending` here and `wake()`
        # is called when it was empty, which is what `emit` would do (agent/daemon.py
        # queue_l7), without a Python-level call per request (~1k instructions)
        self._flow_pending: list[Flow] | None = None
        self._flow_wake: Callable[[], None] | None = None
        if flow_queue is not None:
            self._flow_pending, self._flow_wake = flow_queue
        self.transparent = transparent
        self.upstream_mark = upstream_mark
        self.bind_source_transparently = bind_source_transparently
        self.origdst = origdst or tcp_original_dst
        self.codec = codec_factory(codec)
        self.limits = limits or HttpLimits()
        self.stats = stats or HttpProxyStats()
        self._context = context
        self.sweep_interval_s = sweep_interval_s
        self.express = express  # the express lane (module doc); False only to compare in tests
        # asked once per accepted connection for the decide its session calls (instead of
        # `decide`): the caller may resolve per-connection lookups once (agent/daemon.py)
        self.decide_for = decide_for
        self.clients: set[_Client] = set()
        self._pool: dict[PoolKey, list[_Upstream]] = {}
        self._server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listen_sock: socket.socket | None = None
        # Loop time as of the last sweep: activity stamps use it instead of a clock call
        # per read (timeouts are checked at sweep granularity anyway, see _sweep).
        self.now = 0.0

    # --- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.transparent:
                sock.setsockopt(socket.IPPROTO_IP, IP_TRANSPARENT, 1)
            sock.bind(self.listen)
            sock.listen(1024)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._listen_sock = sock
        self.now = self._loop.time()
        self._server = await self._loop.create_server(lambda: _Client(self), sock=sock)
        self._sweeper = asyncio.ensure_future(self._sweep())

    @property
    def port(self) -> int:
        if self._listen_sock is None:
            raise RuntimeError("server not started")
        return int(self._listen_sock.getsockname()[1])

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._server is not None:
            self._server.close()
        for client in list(self.clients):
            client._abort()
        for conns in self._pool.values():
            for up in conns:
                up.close()
        self._pool.clear()
        if self._server is not None:
            await self._server.wait_closed()

    # --- helpers used by the protocols ----------------------------------------------------
    def loop_time(self) -> float:
        return self._loop.time() if self._loop is not None else time.monotonic()

    def context_for(self, peer: Any, dst: tuple[str, int]) -> object:
        return self._context((str(peer[0]), int(peer[1])), dst) if self._context else None

    def new_session(self, conn: ConnInfo) -> HttpSession:
        decide = self.decide if self.decide_for is None else self.decide_for(conn)
        return HttpSession(conn, decide, codec=self.codec, limits=self.limits,
                           stats=self.stats, clock_ns=time.monotonic_ns, wall_ns=time.time_ns)

    def emit_flow(self, flow: Flow) -> None:
        try:
            pending = self._flow_pending
            if pending is None:
                self.emit(flow)
            else:
                pending.append(flow)
                if len(pending) == 1 and self._flow_wake is not None:
                    self._flow_wake()
        except Exception:  # the flow sink must not break the data path
            log.exception("flow emit callback failed")

    def pool_key(self, conn: ConnInfo) -> PoolKey:
        """Never share an upstream connection between two source identities: the key holds
        the pod IP and the SO_MARK (which carries the identity)."""
        mark = self.upstream_mark(conn) if self.upstream_mark else 0
        return (conn.src_ip, conn.dst_ip, conn.dst_port, mark)

    def pool_get(self, key: PoolKey) -> _Upstream | None:
        conns = self._pool.get(key)
        while conns:
            up = conns.pop()
            if up.alive:
                self.stats.upstream_reuses += 1
                return up
        return None

    def pool_put(self, up: _Upstream) -> None:
        conns = self._pool.get(up.key)
        if conns is None:
            conns = self._pool[up.key] = []
        elif len(conns) >= self.limits.pool_max_idle_per_key:
            up.close()
            return
        conns.append(up)  # idle since it was parked (`idle_since`): the clock runs on

    def pool_discard(self, up: _Upstream) -> None:
        conns = self._pool.get(up.key)
        if conns and up in conns:
            conns.remove(up)
            if not conns:
                del self._pool[up.key]

    async def open_upstream(self, conn: ConnInfo, key: PoolKey) -> _Upstream:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            if self.upstream_mark is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, key[3])
            if self.bind_source_transparently:
                sock.setsockopt(socket.IPPROTO_IP, IP_TRANSPARENT, 1)
                sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((conn.src_ip, 0))
            await asyncio.wait_for(loop.sock_connect(sock, (conn.dst_ip, conn.dst_port)),
                                   self.limits.connect_timeout_s)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            _, proto = await loop.create_connection(lambda: _Upstream(self, key), sock=sock)
        except BaseException:
            sock.close()
            raise
        self.stats.upstream_connects += 1
        return proto

    async def _sweep(self) -> None:
        lim = self.limits
        while True:
            await asyncio.sleep(self.sweep_interval_s)
            now = self.now = self.loop_time()
            # Activity stamps lag the true time by less than one interval: allow for it so
            # that no connection is closed before its idle timeout.
            idle_limit = lim.client_idle_timeout_s + self.sweep_interval_s
            up_idle_limit = lim.upstream_idle_timeout_s + self.sweep_interval_s
            for client in list(self.clients):
                head_late = client.head_since is not None and \
                    now - client.head_since > lim.header_timeout_s
                idle = now - client.last_activity > idle_limit
                if (head_late or idle) and not client.closed:
                    client.on_timeout()
                up = client.up
                if up is not None and up.parked and now - up.idle_since > up_idle_limit:
                    client.up = None  # a parked connection idles out as a pooled one does
                    up.owner = None
                    up.close()
            for conns in list(self._pool.values()):
                for up in list(conns):
                    if now - up.idle_since > up_idle_limit:
                        up.close()
                        self.pool_discard(up)
