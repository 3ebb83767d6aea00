"""asyncio edge of the DNS proxy: sockets in, `DnsSession` actions out (STYLE.md §1).

Contract: this module only moves bytes and executes the core's actions in `_execute`; every
decision lives in `proxy/dns/session.py`. IPv4 only (the sandbox and the datapath are IPv4).
- Pod side, UDP: one listener read with `recvmsg`; in transparent mode it is IP_TRANSPARENT +
  IP_RECVORIGDSTADDR and the original destination comes from the ancillary data
  (`redirect/origdst.py`); replies leave from an IP_TRANSPARENT socket bound to that original
  server address (cached per address), so the pod sees the server it asked.
- Pod side, TCP (RFC 7766): IP_TRANSPARENT listener, original destination = getsockname();
  several queries per connection, answered in completion order, each length-prefixed; idle
  connections (no whole message for `tcp_idle_timeout_s`) are closed by the periodic tick.
- UDP sockets are drained per readiness event up to an adaptive budget (`_ReadBudget`): one
  datagram per event at moderate rates (no EAGAIN exception per event), up to UDP_BATCH
  under load. Hot-path costs are measured by tests/bench/test_dns_bench.py.
- Upstream: pooled sockets per `Channel` (server, transport, SO_MARK, index), multiplexed by
  rewritten DNS ID; UDP sockets are connected (the kernel drops datagrams from other
  sources), TCP connections are opened on demand and kept.
- `learn` (called by the session itself, inline learning) is awaited when it returns an
  awaitable, before an answer with IPs is released, bounded by `learn_max_delay_s`
  (Cilium `--tofqdns-proxy-response-max-delay`, 100 ms); on timeout the answer goes anyway
  and `stats.learn_timeouts` counts it (the update itself keeps running, shielded).
Non-transparent mode (unprivileged tests, benchmarks) listens on a normal socket and asks the
injected `origdst(client_addr)` where the query was meant to go.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import cast

from observe.flow import Flow
from policy.errors import RemoteProtocolError
from policy.types import Verdict
from proxy.busypoll import BusyPoll
from proxy.dns import wire
from proxy.dns.session import (
    DEFAULT_MAX_INFLIGHT,
    DEFAULT_MAX_INFLIGHT_PER_CLIENT,
    DEFAULT_UPSTREAM_TIMEOUT_S,
    Action,
    Channel,
    DnsConnInfo,
    DnsProxyStats,
    DnsSession,
    Drop,
    Emit,
    Learn,
    SendClient,
    SendUpstream,
    Stage,
)
from redirect import origdst as _origdst

log = logging.getLogger(__name__)

Decide = Callable[[DnsConnInfo, str], Verdict]
LearnFn = Callable[[DnsConnInfo, str, list[tuple[str, int]]], Awaitable[None] | None]
EmitFn = Callable[[Flow], None]
OrigDst = Callable[[tuple[str, int]], tuple[str, int]]

LEARN_MAX_DELAY_S = 0.1  # Cilium --tofqdns-proxy-response-max-delay default
TICK_S = 0.05  # timeout resolution for SERVFAIL on silent upstreams
UDP_BATCH = 64  # datagrams read per readiness event before yielding to other sockets
READ_BUDGET_STREAK = 4  # single-datagram events in a row that are taken as load (_ReadBudget)
UPSTREAM_RECV_BYTES = 65535  # largest UDP payload
TCP_IDLE_TIMEOUT_S = 10.0  # RFC 7766 §6.2.3: close idle connections after seconds, not minutes
MAX_TCP_CLIENTS = 1024  # concurrent pod TCP connections; more are closed at once
MAX_REPLY_SOCKETS = 256  # cached transparent reply sockets (one per DNS server address)
MAX_UPSTREAM_UDP_SOCKETS = 1024  # pooled upstream UDP sockets (one per server/mark/slot);
# past this, idle ones are closed first, so a pod spraying server addresses cannot exhaust fds
MAX_DST_CACHE = 256  # memoized original-destination sockaddrs (DNS servers pods address)
_QUERY_RECV_BYTES = wire.MAX_QUERY_BYTES + 1  # one byte more so oversized queries are seen
BIND_ATTEMPTS = 32  # port-0 retries when the UDP port is taken for TCP
SO_MARK = getattr(socket, "SO_MARK", 36)
_new = tuple.__new__  # the C NamedTuple constructor (see proxy/dns/session.py)
_IPPROTO_IP, _ORIGDSTADDR = socket.IPPROTO_IP, _origdst.IP_ORIGDSTADDR


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop when importable (1.86x for UDP, perf-anchors B7), else asyncio's default.
    For `asyncio.Runner(loop_factory=...)`; never installs a global policy."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


class _ReadBudget:
    """How many datagrams one readiness event reads before yielding (adaptive).

    Reading until EAGAIN costs a raised BlockingIOError per event (~1-2 µs, with strerror
    and a traceback); at moderate rates every event carries one datagram, so that exception
    would be paid twice per query. The listener fds are level-triggered, so reading fewer
    than are queued loses nothing: the loop reports the fd again at once. The budget stays at
    one while events come one datagram each, and doubles (up to UDP_BATCH) once
    READ_BUDGET_STREAK events in a row used it all, i.e. under load.
    """

    __slots__ = ("n", "streak")

    def __init__(self) -> None:
        self.n = 1
        self.streak = 0

    def drained(self) -> None:
        self.n = 1
        self.streak = 0

    def used_up(self) -> None:
        if self.n > 1:
            self.n = min(self.n * 2, UDP_BATCH)
            return
        self.streak += 1
        if self.streak >= READ_BUDGET_STREAK:
            self.n = 2
            self.streak = 0


class DnsProxyServer:
    """A UDP+TCP DNS proxy on `listen`; see the module docstring."""

    def __init__(
        self,
        listen: tuple[str, int],
        decide: Decide,
        learn: LearnFn,
        emit: EmitFn,
        *,
        transparent: bool,
        upstream_mark: Callable[[DnsConnInfo], int] | None = None,
        origdst: OrigDst | None = None,
        reject_rcode: str = "refused",
        upstream_timeout_s: float = DEFAULT_UPSTREAM_TIMEOUT_S,
        max_inflight: int = DEFAULT_MAX_INFLIGHT,
        max_inflight_per_client: int = DEFAULT_MAX_INFLIGHT_PER_CLIENT,
        learn_max_delay_s: float = LEARN_MAX_DELAY_S,
        on_stage: Callable[[Stage, float], None] | None = None,
        stage_observers: Mapping[Stage, Callable[[float], None]] | None = None,
        tcp_idle_timeout_s: float = TCP_IDLE_TIMEOUT_S,
        busy_poll: BusyPoll | None = None,
    ) -> None:
        if not transparent and origdst is None:
            raise ValueError("non-transparent mode needs origdst(client_addr)")
        self._listen = listen
        self._emit = emit
        self._transparent = transparent
        self._origdst = origdst
        self._learn_max_delay_s = learn_max_delay_s
        self._tcp_idle_timeout_s = tcp_idle_timeout_s
        self.session = DnsSession(
            decide, clock_ns=time.monotonic_ns, wall_ns=time.time_ns,
            upstream_mark=upstream_mark, reject_rcode=reject_rcode,
            upstream_timeout_s=upstream_timeout_s, max_inflight=max_inflight,
            max_inflight_per_client=max_inflight_per_client, on_stage=on_stage,
            stage_observers=stage_observers, learn=learn)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._udp: socket.socket | None = None
        self._bound: tuple[str, int] = ("", 0)
        self._tcp_server: asyncio.base_events.Server | None = None
        self._tcp_clients: set[_TcpClient] = set()
        self._reply_socks: dict[tuple[str, int], socket.socket] = {}
        self._up_udp: dict[Channel, socket.socket] = {}
        self._up_tcp: dict[Channel, _TcpUpstream] = {}
        self._tick: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Future[None]] = set()
        self._dst_cache: dict[bytes, tuple[str, int]] = {}
        self._listen_budget = _ReadBudget()
        self.busy_poll = busy_poll  # kicked on every readiness event (proxy/busypoll.py)
        self.emit_errors = 0
        self.send_errors = 0

    @property
    def stats(self) -> DnsProxyStats:
        return self.session.stats

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port); UDP and TCP share the port."""
        assert self._udp is not None
        host, port = self._udp.getsockname()[:2]
        return str(host), int(port)

    @property
    def upstream_socket_count(self) -> int:
        return len(self._up_udp) + len(self._up_tcp)

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        udp, tcp = self._bind_pair()
        self._udp = udp
        self._bound = self.address
        self._loop.add_reader(udp.fileno(), self._on_udp_readable)
        self._tcp_server = await self._loop.create_server(lambda: _TcpClient(self), sock=tcp)
        self._tick = self._loop.call_later(TICK_S, self._on_tick)

    def _bind_pair(self) -> tuple[socket.socket, socket.socket]:
        """UDP and TCP sockets on the same port. With port 0 the UDP port is picked first and
        the pair is retried if that port is busy for TCP (bounded: BIND_ATTEMPTS)."""
        for attempt in range(BIND_ATTEMPTS):
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                for sock in (udp, tcp):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    sock.setblocking(False)
                    if self._transparent:
                        _origdst.make_transparent(sock, recv_origdst=sock is udp)
                udp.bind(self._listen)
                tcp.bind((self._listen[0], udp.getsockname()[1]))
                tcp.listen(128)
                return udp, tcp
            except OSError:
                udp.close()
                tcp.close()
                if self._listen[1] != 0 or attempt == BIND_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    async def close(self) -> None:
        if self._tick is not None:
            self._tick.cancel()
        if self._udp is not None and self._loop is not None:
            self._loop.remove_reader(self._udp.fileno())
            self._udp.close()
        if self._tcp_server is not None:
            self._tcp_server.close()
        for client in list(self._tcp_clients):
            client.close()
        for sock in [*self._reply_socks.values(), *self._up_udp.values()]:
            if self._loop is not None:
                self._loop.remove_reader(sock.fileno())
            sock.close()
        for up in list(self._up_tcp.values()):
            up.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._tcp_server is not None:
            await self._tcp_server.wait_closed()
        self._reply_socks.clear()
        self._up_udp.clear()

    # --- executing actions ------------------------------------------------------------------

    def _execute(self, actions: list[Action]) -> None:
        # Exact-type tests (`is`, no call), most frequent first: ten isinstance() calls per
        # query before. The action types are final NamedTuples; anything else is a bug.
        for action in actions:
            kind = type(action)
            if kind is Emit:
                try:
                    self._emit(action.flow)  # type: ignore[union-attr]
                except Exception:  # the sink is someone else's code: log, count, go on
                    self.emit_errors += 1
                    log.exception("DNS flow sink failed")
            elif kind is SendClient:
                self._send_client(action.client, action.info,  # type: ignore[union-attr]
                                  action.data)  # type: ignore[union-attr]
            elif kind is SendUpstream:
                self._send_upstream(action.channel, action.data)  # type: ignore[union-attr]
            elif kind is Learn:
                self._start_learn(action)  # type: ignore[arg-type]
            elif kind is not Drop:
                raise RuntimeError(f"unexpected action {action!r}")

    def _send_client(self, client: object, info: DnsConnInfo, data: bytes) -> None:
        if info.proto == "TCP":
            if isinstance(client, _TcpClient):
                client.send(data)
            return
        if self._transparent:
            # info[2:4] is (dst_ip, dst_port), the reply socket's key; the cached hit inline
            sock = self._reply_socks.get(info[2:4]) or self._reply_socket(info)
        else:
            sock = self._udp
        if sock is None:
            return
        try:
            sock.sendto(data, info[:2])  # (src_ip, src_port)
        except OSError as exc:  # EAGAIN under overload, unreachable pod: UDP may drop
            self.send_errors += 1
            log.debug("reply to %s:%d failed: %s", info.src_ip, info.src_port, exc)

    def _reply_socket(self, info: DnsConnInfo) -> socket.socket | None:
        key = (info.dst_ip, info.dst_port)
        sock = self._reply_socks.get(key)
        if sock is not None:
            return sock
        if len(self._reply_socks) >= MAX_REPLY_SOCKETS:
            self._reply_socks.pop(next(iter(self._reply_socks))).close()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            _origdst.make_transparent(sock)
            sock.setblocking(False)
            sock.bind(key)
        except OSError as exc:
            sock.close()
            self.send_errors += 1
            log.warning("cannot bind reply socket to %s:%d: %s", key[0], key[1], exc)
            return None
        self._reply_socks[key] = sock
        return sock

    def _send_upstream(self, channel: Channel, data: bytes) -> None:
        sock = self._up_udp.get(channel)
        if sock is None:
            if channel.proto == "TCP":
                up = self._up_tcp.get(channel)
                if up is None:
                    up = self._up_tcp[channel] = _TcpUpstream(self, channel)
                up.send(data)
                return
            try:
                sock = self._open_udp_upstream(channel)
            except OSError as exc:
                log.debug("upstream socket to %s failed: %s", channel, exc)
                self._execute(self.session.upstream_send_failed(channel, data))
                return
        try:
            sock.send(data)
        except OSError as exc:
            log.debug("upstream send to %s failed: %s", channel, exc)
            self._execute(self.session.upstream_send_failed(channel, data))

    def _open_udp_upstream(self, channel: Channel) -> socket.socket:
        assert self._loop is not None
        if len(self._up_udp) >= MAX_UPSTREAM_UDP_SOCKETS:
            self._evict_idle_upstreams()
            if len(self._up_udp) >= MAX_UPSTREAM_UDP_SOCKETS:
                raise OSError("every pooled upstream UDP socket has queries in flight")
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            if channel.mark:
                sock.setsockopt(socket.SOL_SOCKET, SO_MARK, channel.mark)
            sock.connect((channel.server_ip, channel.server_port))
        except OSError:
            sock.close()
            raise
        self._up_udp[channel] = sock
        self._loop.add_reader(sock.fileno(), self._on_upstream_readable, channel, sock,
                              _ReadBudget())
        return sock

    def _evict_idle_upstreams(self) -> None:
        """Close the oldest upstream UDP sockets without queries in flight (a quarter of the
        pool at most, so the scan runs rarely); busy ones keep their pending answers."""
        assert self._loop is not None
        budget = max(1, MAX_UPSTREAM_UDP_SOCKETS // 4)
        for channel in list(self._up_udp):
            if budget == 0:
                break
            if self.session.channel_busy(channel):
                continue
            sock = self._up_udp.pop(channel)
            self._loop.remove_reader(sock.fileno())
            sock.close()
            budget -= 1

    def _start_learn(self, action: Learn) -> None:
        """The session ran `learn` itself (this server always hands it one) and got an
        awaitable: release the answer when it completes or after learn_max_delay_s."""
        pending = action.waiting
        if pending is None:  # pragma: no cover - only a session without `learn` returns this
            raise RuntimeError(f"Learn without an awaitable: {action!r}")
        assert self._loop is not None
        task = self._loop.create_task(self._await_learn(action.token, pending))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _await_learn(self, token: int, pending: Awaitable[None]) -> None:
        timed_out = failed = False
        # The map update keeps running after the max delay (shield): the answer is released
        # late-but-unlearned only for this reply; the entry still lands for the next connection.
        work = asyncio.ensure_future(pending)
        self._tasks.add(work)
        work.add_done_callback(self._tasks.discard)
        try:
            await asyncio.wait_for(asyncio.shield(work), self._learn_max_delay_s)
        except TimeoutError:
            timed_out = True
        except Exception:
            failed = True
            log.exception("learning failed")
        self._execute(self.session.learn_done(token, timed_out=timed_out, failed=failed))

    # --- readers ----------------------------------------------------------------------------

    def _on_udp_readable(self) -> None:
        """Drain the listener (bounded by UDP_BATCH): one readiness event, many datagrams."""
        if self.busy_poll is not None:
            self.busy_poll.kick()
        sock = self._udp
        assert sock is not None
        feed = self.session.feed_query
        execute = self._execute
        budget = self._listen_budget
        if self._transparent:
            recvmsg = sock.recvmsg
            dst_cache, bound = self._dst_cache, self._bound
            for _ in range(budget.n):
                try:
                    data, anc, _flags, src = recvmsg(_QUERY_RECV_BYTES, _origdst.ANCDATA_BYTES)
                except (BlockingIOError, InterruptedError):
                    budget.drained()
                    return
                except OSError as exc:
                    log.debug("UDP listener recv: %s", exc)
                    return
                # The memoized original destination inline (the only cmsg the listener asks
                # for); anything else goes through _udp_original_dst, which checks it all.
                cmsg = anc[0] if len(anc) == 1 else None
                dst = (dst_cache.get(cmsg[2]) if cmsg is not None and cmsg[0] == _IPPROTO_IP
                       and cmsg[1] == _ORIGDSTADDR else None)
                if dst is None:
                    dst = self._udp_original_dst(anc)
                if dst is None or dst == bound:
                    # No original destination, or the pod addressed the proxy itself
                    # (forwarding would loop): fail closed.
                    self.session.stats.malformed_queries += 1
                    continue
                execute(feed(data, _new(DnsConnInfo, (src[0], src[1], dst[0], dst[1], "UDP"))))
        else:
            recvfrom = sock.recvfrom
            origdst = self._origdst
            assert origdst is not None
            for _ in range(budget.n):
                try:
                    data, src = recvfrom(_QUERY_RECV_BYTES)  # one allocation, shrunk in place
                except (BlockingIOError, InterruptedError):
                    budget.drained()
                    return
                except OSError as exc:
                    log.debug("UDP listener recv: %s", exc)
                    return
                dst = origdst(src)
                execute(feed(data, _new(DnsConnInfo, (src[0], src[1], dst[0], dst[1], "UDP"))))
        budget.used_up()

    def _udp_original_dst(self, anc: list[tuple[int, int, bytes]]) -> tuple[str, int] | None:
        """`redirect.origdst.udp_original_dst`, memoized on the raw sockaddr bytes: pods ask a
        handful of servers, and decoding the address costs more than the rest of the read."""
        for level, ctype, raw in anc:
            if level == socket.IPPROTO_IP and ctype == _origdst.IP_ORIGDSTADDR:
                cached = self._dst_cache.get(raw)
                if cached is None:
                    cached = _origdst.udp_original_dst(anc)
                    if cached is None:
                        return None
                    if len(self._dst_cache) >= MAX_DST_CACHE:
                        self._dst_cache.clear()
                    self._dst_cache[raw] = cached
                return cached
        return None

    def _on_upstream_readable(self, channel: Channel, sock: socket.socket,
                              budget: _ReadBudget) -> None:
        if self.busy_poll is not None:
            self.busy_poll.kick()
        feed = self.session.feed_upstream
        execute = self._execute
        recv = sock.recv
        for _ in range(budget.n):
            try:
                data = recv(UPSTREAM_RECV_BYTES)  # one allocation, shrunk in place
            except (BlockingIOError, InterruptedError):
                budget.drained()
                return
            except OSError as exc:
                # An ICMP error (port or host unreachable) on a connected socket: the server
                # is not there. The queries waiting on this socket fail now (SERVFAIL, so the
                # pod's resolver moves on) instead of after the upstream timeout.
                log.debug("upstream %s recv: %s", channel, exc)
                failed = self.session.channel_closed(channel, "icmp")
                if not failed:  # nothing was waiting: still count the event
                    self.session.stats.upstream_errors["icmp"] += 1
                execute(failed)
                return
            execute(feed(channel, data))
        budget.used_up()

    def _on_tick(self) -> None:
        assert self._loop is not None
        self._tick = self._loop.call_later(TICK_S, self._on_tick)
        self._execute(self.session.tick())
        if self._tcp_clients:
            idle_before = self._loop.time() - self._tcp_idle_timeout_s
            for client in [c for c in self._tcp_clients if c.last_active <= idle_before]:
                client.close()

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _tcp_info(self, transport: asyncio.Transport) -> DnsConnInfo | None:
        peer = transport.get_extra_info("peername")
        if peer is None:
            return None
        if self._transparent:
            dst = transport.get_extra_info("sockname")
            if (dst[0], dst[1]) == self._bound:
                return None  # addressed to the proxy itself: forwarding would loop
        else:
            assert self._origdst is not None
            dst = self._origdst((peer[0], peer[1]))
        return DnsConnInfo(peer[0], peer[1], dst[0], dst[1], "TCP")


class _TcpClient(asyncio.Protocol):
    """One pod TCP connection (RFC 7766): framed queries in, framed answers out.

    Idle connections are closed by the server's periodic tick (`last_active`, loop time),
    not by a timer re-armed on every message (two TimerHandles per query otherwise)."""

    def __init__(self, server: DnsProxyServer) -> None:
        self._server = server
        self._framer = wire.TcpFramer()
        self._transport: asyncio.Transport | None = None
        self._info: DnsConnInfo | None = None
        self.last_active = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        if len(self._server._tcp_clients) >= MAX_TCP_CLIENTS:
            self._server.session.stats.overload_refusals += 1
            self._transport.close()
            return
        self._info = self._server._tcp_info(self._transport)
        if self._info is None:
            self._transport.close()
            return
        self._server._tcp_clients.add(self)
        self.last_active = self._server._now()

    def data_received(self, data: bytes) -> None:
        if self._info is None:
            return
        try:
            messages = self._framer.feed(data)
        except RemoteProtocolError:
            self._server.session.stats.malformed_queries += 1
            self.close()
            return
        if messages:  # only whole messages count as activity: a slow drip still times out
            self.last_active = self._server._now()
        for msg in messages:
            self._server._execute(self._server.session.feed_query(msg, self._info, self))

    def send(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(wire.frame(data))
            self.last_active = self._server._now()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._server._tcp_clients.discard(self)


class _TcpUpstream(asyncio.Protocol):
    """One pooled TCP connection to an upstream server; queries are multiplexed by ID."""

    def __init__(self, server: DnsProxyServer, channel: Channel) -> None:
        self._server = server
        self._channel = channel
        self._framer = wire.TcpFramer()
        self._transport: asyncio.Transport | None = None
        self._queued: list[bytes] = []
        self._closed = False
        loop = asyncio.get_running_loop()
        task = loop.create_task(self._connect())
        server._tasks.add(task)
        task.add_done_callback(server._tasks.discard)

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            if self._channel.mark:
                sock.setsockopt(socket.SOL_SOCKET, SO_MARK, self._channel.mark)
            await loop.sock_connect(sock, (self._channel.server_ip, self._channel.server_port))
            await loop.create_connection(lambda: self, sock=sock)
        except OSError as exc:
            sock.close()
            log.debug("TCP upstream %s: %s", self._channel, exc)
            self.connection_lost(exc)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        for data in self._queued:
            self._transport.write(wire.frame(data))
        self._queued.clear()

    def send(self, data: bytes) -> None:
        if self._transport is None:
            self._queued.append(data)
        else:
            self._transport.write(wire.frame(data))

    def data_received(self, data: bytes) -> None:
        try:
            messages = self._framer.feed(data)
        except RemoteProtocolError:
            self._server.session.stats.bad_answers += 1
            self.close()
            return
        for msg in messages:
            self._server._execute(self._server.session.feed_upstream(self._channel, msg))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        else:
            self.connection_lost(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._closed:
            return
        self._closed = True
        if self._server._up_tcp.get(self._channel) is self:
            del self._server._up_tcp[self._channel]
        self._server._execute(self._server.session.channel_closed(self._channel))
