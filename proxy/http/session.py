"""One client connection of the HTTP proxy as a sans-IO state machine (no I/O here).

Contract: `HttpSession.feed_client(bytes)` / `feed_upstream(bytes)` (`b""` = EOF),
`upstream_failed()` and `timeout()` return the list of actions the server must execute, in
order. Requests are handled one at a time (pipelined bytes wait in `_buf`): each head passes
the strict gate (wire.py), is parsed by the codec, cross-checked, normalized and decided
(request.py); an allowed request goes upstream re-serialised, a denied one gets 403 and the
connection stays usable when HTTP allows. Upstream responses are parsed with the same strict
grammar and re-framed for the client. Only a 101 (or a 2xx to CONNECT) for a request the
policy allowed switches the connection to a byte tunnel.

The dominant exchange (one plain bodiless request head per read, a Content-Length response
whose head arrives in one read) takes session_fast.py's `fast_request` / `fast_response`:
the same checks, decision and output as the full path (fast.py says which heads qualify:
a strict subset on which both codecs provably agree, so the codec is not fed those heads;
anything else, or any doubt, runs the full path with the codec), with a memo of the last
head of each direction. test_fastpaths.py and the whole-vs-byte-wise session tests
hold both paths to the same actions. States and the per-request record live in exchange.py.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from observe.flow import Flow, FlowVerdict
from policy.errors import ProtocolStateError
from policy.types import Decision, DropReason, HttpRequestView, Verdict
from proxy.http.actions import (
    Action,
    ConnInfo,
    Emit,
    HttpProxyStats,
    SendClient,
    SendUpstream,
)
from proxy.http.codec import CodecBody, CodecEnd, CodecEvent, CodecFactory, CodecHead
from proxy.http.exchange import (
    CLIENT_HEAD,
    CLOSE_CLIENT,
    RELEASE_BROKEN,
    RELEASE_REUSABLE,
    START_TUNNEL,
    UP_IDLE,
    ClientState,
    Exchange,
    UpstreamState,
)
from proxy.http.fast import LineMemo
from proxy.http.flows import lazy_http_flow
from proxy.http.limits import MAX_CHUNK_LINE_BYTES, HttpLimits
from proxy.http.request import BodyKind, prepare_request
from proxy.http.response import ResponseFraming, client_response_head, response_framing
from proxy.http.session_fast import RequestMemo, ResponseMemo, fast_request, fast_response
from proxy.http.wire import (
    LAST_CHUNK,
    REASONS,
    BadUpstream,
    ChunkedDecoder,
    HttpReject,
    LengthDecoder,
    check_request_head,
    encode_chunk,
    find_bare_lf_or_cr,
    parse_response_head,
    simple_response,
)

log = logging.getLogger(__name__)

Decide = Callable[[ConnInfo, HttpRequestView], Verdict]


def _to_client(out: list[Action], data: bytes) -> None:
    """Append, merging with a directly preceding SendClient: one write (one segment) for a
    response head and its body instead of two (the peer wakes up once)."""
    if out and isinstance(out[-1], SendClient):
        out[-1] = SendClient(out[-1].data + data)
    else:
        out.append(SendClient(data))


def _to_upstream(out: list[Action], data: bytes) -> None:
    if out and isinstance(out[-1], SendUpstream):
        out[-1] = SendUpstream(out[-1].data + data)
    else:
        out.append(SendUpstream(data))


class HttpSession:
    """Sans-IO core of one downstream connection (see the module docstring)."""

    def __init__(self, conn: ConnInfo, decide: Decide, *, codec: CodecFactory,
                 limits: HttpLimits, stats: HttpProxyStats,
                 clock_ns: Callable[[], int], wall_ns: Callable[[], int]) -> None:
        self.conn = conn
        self._decide = decide
        self._codec = codec(limits.max_head_bytes)  # one per connection, restarted per request
        self._limits = limits
        self._stats = stats
        self._clock_ns = clock_ns
        self._wall_ns = wall_ns
        self.state = ClientState.HEAD
        self.up_state = UpstreamState.IDLE
        self._buf = bytearray()
        # The same buffer, read-only by contract: the server tests `len(session.pending)`
        # after every step (a property call there costs more than the test itself).
        self.pending = self._buf
        self._scan = 0
        self._rbuf = bytearray()
        self._ex: Exchange | None = None
        self._close_after = False
        self._client_eof = False
        # The fast path's per-connection cache: the last Host value seen and its
        # validated lower-case form (clients repeat it on every request).
        self._host_raw: str | None = None
        self._host = ""
        self._host_wire = b""  # b"host: " + _host + CRLF, as serialise() writes it
        self._url = ""  # "http://" + _host + _url_target ("": none), the last plain URL
        self._url_target = ""
        # The fast paths' memo of the last plain head of each direction (session_fast.py).
        self._req_memo: RequestMemo | None = None
        self._resp_memo: ResponseMemo | None = None
        # ... and of the request lines already checked (fast.plain_request_wire)
        self._lines = LineMemo()

    # --- what the server looks at ---------------------------------------------------------
    def release(self) -> None:
        """The connection is gone: let refcounting free this session's objects (the codec
        breaks its parser cycle). Nothing is fed afterwards."""
        self._codec.close()

    @property
    def head_in_progress(self) -> bool:
        return self.state is ClientState.HEAD and bool(self._buf)

    @property
    def buffered_bytes(self) -> int:
        return len(self._buf)

    # --- events ---------------------------------------------------------------------------
    def feed_client(self, data: bytes) -> list[Action]:
        out: list[Action] = []
        if self.state is ClientState.CLOSED:
            return out
        if self.state is ClientState.TUNNEL:
            if data:
                return [SendUpstream(data)]
            return self._close(out)
        if not data:
            return self._on_client_eof(out)
        if self.state is ClientState.HEAD and not self._buf and data.endswith(b"\r\n\r\n"):
            fast = fast_request(self, data)
            if fast is not None:
                return [SendUpstream(fast)] if isinstance(fast, bytes) else fast
        self._buf += data
        self._pump_client(out)
        return out

    def feed_client_full(self, data: bytes) -> list[Action]:
        """`feed_client(data)` for a read `fast_request` declined (returned None, which
        changes nothing) in state HEAD with nothing buffered: the server's express lane
        (server.py) calls fast_request itself and this when it declines."""
        out: list[Action] = []
        self._buf += data
        self._pump_client(out)
        return out

    def feed_upstream(self, data: bytes) -> list[Action]:
        ex = self._ex
        if (self.up_state is UpstreamState.HEAD and ex is not None and data and not self._rbuf
                and self.state is not ClientState.CLOSED):
            fast = fast_response(self, ex, data)
            if fast is not None:
                if isinstance(fast, tuple):  # the exchange is over: what _exchange_done adds
                    return [Emit(fast[0]), SendClient(fast[1]),
                            RELEASE_REUSABLE if fast[2] else RELEASE_BROKEN]
                return fast
        return self.feed_upstream_full(data)

    def feed_upstream_full(self, data: bytes) -> list[Action]:
        """`feed_upstream(data)` for a read `fast_response` declined (None changes nothing)
        or that the fast path does not take (the server's express lane, server.py)."""
        out: list[Action] = []
        if self.state is ClientState.CLOSED:
            return out
        if self.up_state is UpstreamState.TUNNEL:
            if data:
                return [SendClient(data)]
            return self._close(out)
        ex = self._ex
        if ex is None or not ex.forward or self.up_state is UpstreamState.IDLE:
            if data:  # bytes nobody asked for: the connection cannot be trusted
                self._stats.upstream_errors += 1
            return [RELEASE_BROKEN]
        if not data:
            return self._on_upstream_eof(ex, out)
        self._rbuf += data
        try:
            self._pump_upstream(ex, out)
        except BadUpstream as exc:
            log.info("bad upstream response from %s:%d: %s",
                     self.conn.dst_ip, self.conn.dst_port, exc)
            self._upstream_broken(out, 502)
        return out

    def retry_on_fresh_upstream(self) -> list[Action] | None:
        """A *reused* pooled connection closed before any response byte (the origin's
        keep-alive timer raced our request, perf-anchors pitfall 3). For a bodiless
        idempotent request (RFC 9110 §9.2.2) send it once more, on a new connection; None
        when that is not safe, and the caller reports the loss with feed_upstream(b"")."""
        ex = self._ex
        if (ex is None or not ex.forward or ex.retried or not ex.req_done or ex.resp_started
                or self.up_state is not UpstreamState.HEAD or self._rbuf
                or ex.req.body is not BodyKind.NONE
                or ex.req.method not in ("GET", "HEAD", "OPTIONS")):
            return None
        ex.retried = True
        return [SendUpstream(ex.req.upstream_head)]

    def upstream_failed(self) -> list[Action]:
        """Connect failure/timeout or reset before the exchange completed."""
        out: list[Action] = []
        if self.state is not ClientState.CLOSED:
            self._upstream_broken(out, 503)
        return out

    def timeout(self) -> list[Action]:
        """The server's header or idle timer fired: 408 if a head was in progress, then close."""
        out: list[Action] = []
        if self.state is ClientState.CLOSED:
            return out
        self._stats.timeouts += 1
        if self.head_in_progress and self._ex is None:
            _to_client(out, simple_response(408, b"Request Timeout\r\n", close=True))
        return self._close(out)

    # --- client side ----------------------------------------------------------------------
    def _pump_client(self, out: list[Action]) -> None:
        try:
            while True:
                if self.state is ClientState.HEAD:
                    if not self._read_head(out):
                        return
                elif self.state is ClientState.BODY:
                    if not self._read_body(out):
                        return
                else:
                    return
        except HttpReject as exc:
            self._reject(exc, out)

    def _read_head(self, out: list[Action]) -> bool:
        buf = self._buf
        if buf.startswith(b"\r\n"):  # RFC 9112 §2.2: ignore empty lines before a request
            while buf.startswith(b"\r\n"):
                del buf[:2]
            self._scan = 0
        if not buf:
            return False
        scan = self._scan
        end = buf.find(b"\r\n\r\n", scan - 3 if scan > 3 else 0)
        if end == -1:
            if find_bare_lf_or_cr(buf, scan - 1 if scan > 1 else 0):
                raise HttpReject(400, "bare LF or CR in request head")
            if len(buf) > self._limits.max_head_bytes:
                raise HttpReject(431, "request head too large")
            self._scan = len(buf)
            return False
        end += 4
        if end == len(buf):  # the usual read: exactly one head, one copy
            head = bytes(buf)
            buf.clear()
        else:
            head = bytes(buf[:end])
            del buf[:end]
        self._scan = 0
        limits = self._limits
        gate = check_request_head(head, limits.max_head_bytes, limits.max_headers)
        codec = self._codec
        codec.start()
        events = codec.feed(head)
        if not events or not isinstance(events[0], CodecHead):
            raise HttpReject(400, f"{codec.name} did not parse the request head")
        req = prepare_request(gate, events[0], self.conn, limits)
        decoder: LengthDecoder | ChunkedDecoder
        if req.body is BodyKind.CHUNKED:
            decoder = ChunkedDecoder(MAX_CHUNK_LINE_BYTES, limits.max_head_bytes)
        else:
            decoder = LengthDecoder(req.length)
        ex = Exchange(req, codec, decoder, False, self._clock_ns())
        if len(events) > 1:
            self._codec_events(ex, events[1:])
        self._start_exchange(ex, out)
        return True

    def _codec_events(self, ex: Exchange, events: list[CodecEvent]) -> None:
        for ev in events:
            if isinstance(ev, CodecBody) and not ex.codec_end:
                ex.codec_body += ev.size
            elif isinstance(ev, CodecEnd) and not ex.codec_end:
                ex.codec_end = True
            else:
                raise HttpReject(400, f"{ex.codec.name} saw more than one message")

    def _verdict(self, req: HttpRequestView) -> Verdict:
        try:
            return self._decide(self.conn, req)
        except Exception:  # fail closed: a broken decide() must never let a request through
            return self._decide_failed()

    def _decide_failed(self) -> Verdict:
        log.exception("HTTP decide() failed; denying")
        self._stats.decide_errors += 1
        return Verdict(Decision.DENIED, rule_id="decide-error", reason=DropReason.POLICY_DENIED)

    def _start_exchange(self, ex: Exchange, out: list[Action]) -> None:
        self._apply_verdict(ex, self._verdict(ex.req), out)

    def _apply_verdict(self, ex: Exchange, verdict: Verdict, out: list[Action]) -> None:
        req = ex.req
        self._ex = ex
        if not req.keep_alive:
            self._close_after = True
        if verdict.is_allowed:
            self._stats.requests["forwarded"] += 1
            ex.forward = True
            _to_upstream(out, req.upstream_head)
            self.up_state = UpstreamState.HEAD
        else:
            self._stats.requests["denied"] += 1
            # A body we would have to guess about (Expect without 100, or a tunnel request)
            # is not drained: the connection closes after the 403.
            if req.expect_continue or req.upgrade is not None or req.is_connect:
                self._close_after = True
            out.append(Emit(self._flow(ex, FlowVerdict.DROPPED, 403, "REQUEST")))
            _to_client(out, simple_response(403, self._limits.denied_body,
                                            close=self._close_after))
            if self._close_after and not ex.decoder.done:
                self._close(out)
                return
        self.state = ClientState.BODY

    def _read_body(self, out: list[Action]) -> bool:
        ex = self._ex
        if ex is None:
            raise ProtocolStateError(f"body without exchange in state {self.state.name}")
        dec = ex.decoder
        if dec.done:  # no body (or the rest of it already read): the usual GET
            consumed = 0
        else:
            if not self._buf:
                return False
            if isinstance(dec, LengthDecoder):
                data, consumed = dec.feed(self._buf)
                pieces = [data]
            else:
                try:
                    pieces, consumed = dec.feed(self._buf)
                except ValueError as exc:
                    raise HttpReject(400, str(exc)) from exc
            raw = bytes(self._buf[:consumed])
            del self._buf[:consumed]
            if raw:
                self._codec_events(ex, ex.codec.feed(raw))
            size = sum(len(p) for p in pieces)
            ex.body_bytes += size
            if ex.forward and size:
                chunked = ex.req.body is BodyKind.CHUNKED
                data = (b"".join(encode_chunk(p) for p in pieces) if chunked
                        else b"".join(pieces))
                _to_upstream(out, data)
            if not dec.done:
                return consumed > 0
        if not ex.codec_end or ex.codec_body != ex.body_bytes:
            raise HttpReject(400, f"{ex.codec.name} frames the body differently")
        if ex.forward and ex.req.body is BodyKind.CHUNKED:
            _to_upstream(out, LAST_CHUNK)
        self._request_done(ex, out)
        return True

    def _request_done(self, ex: Exchange, out: list[Action]) -> None:
        ex.req_done = True
        if not ex.forward:
            self._ex = None
            if self._close_after:
                self._close(out)
            else:
                self.state = ClientState.HEAD
        elif ex.resp_done:
            self._exchange_done(ex, out)
        else:
            self.state = ClientState.WAIT

    def _on_client_eof(self, out: list[Action]) -> list[Action]:
        if self.state is ClientState.WAIT:
            self._client_eof = True  # half-close: still deliver the pending response
            return out
        return self._close(out)

    def _reject(self, exc: HttpReject, out: list[Action]) -> None:
        self._stats.parse_errors += 1
        log.debug("rejecting request from %s:%d: %s", self.conn.src_ip, self.conn.src_port, exc)
        ex = self._ex
        if ex is None or not ex.resp_started:
            body = REASONS.get(exc.status, b"Error") + b"\r\n"
            _to_client(out, simple_response(exc.status, body, close=True))
        self._close(out)

    def _close(self, out: list[Action]) -> list[Action]:
        """Terminal: abort any upstream exchange in flight, then close the client."""
        if self.up_state is not UpstreamState.IDLE or (self._ex is not None and self._ex.forward):
            out.append(RELEASE_BROKEN)
        self.up_state = UpstreamState.IDLE
        self.state = ClientState.CLOSED
        self._ex = None
        self._buf.clear()
        self._rbuf.clear()
        out.append(CLOSE_CLIENT)
        return out

    # --- upstream side --------------------------------------------------------------------
    def _pump_upstream(self, ex: Exchange, out: list[Action]) -> None:
        while self.up_state is UpstreamState.HEAD and self._read_response_head(ex, out):
            pass
        if self.up_state is UpstreamState.BODY:
            self._read_response_body(ex, out, eof=False)

    def _read_response_head(self, ex: Exchange, out: list[Action]) -> bool:
        rbuf = self._rbuf
        end = rbuf.find(b"\r\n\r\n")
        if end == -1:
            if len(rbuf) > self._limits.max_response_head_bytes:
                raise BadUpstream("response head too large")
            return False
        head = bytes(rbuf[: end + 4])
        del rbuf[: end + 4]
        rh = parse_response_head(head, self._limits.max_headers)
        switch = (rh.status == 101 and ex.req.upgrade is not None) or (
            ex.req.is_connect and 200 <= rh.status < 300)
        if rh.status == 101 and not switch:
            raise BadUpstream("101 without an upgrade the policy allowed")
        if switch:
            if not ex.req_done:
                raise BadUpstream("protocol switch before the request was complete")
            out.append(Emit(self._flow(ex, FlowVerdict.FORWARDED, rh.status, "RESPONSE")))
            _to_client(out, client_response_head(rh, None, close=False, switch=True))
            out.append(START_TUNNEL)
            self.state, self.up_state = ClientState.TUNNEL, UpstreamState.TUNNEL
            if self._rbuf:
                _to_client(out, bytes(self._rbuf))
            if self._buf:
                _to_upstream(out, bytes(self._buf))
            self._buf.clear()
            self._rbuf.clear()
            return False
        if rh.status < 200:  # 1xx interim: relay to 1.1 clients only (RFC 9110 §15.2)
            if ex.req.version == "1.1":
                _to_client(out, client_response_head(rh, None, close=False, switch=False))
            return True
        framing = response_framing(rh, ex.req.method, client_version=ex.req.version)
        if framing.close_client:
            self._close_after = True
        self._final_response(ex, out, rh.status, framing,
                             client_response_head(rh, framing, close=self._close_after,
                                                  switch=False))
        return False

    def _final_response(self, ex: Exchange, out: list[Action], status: int,
                        framing: ResponseFraming, client_head: bytes) -> None:
        ex.resp = framing
        ex.reusable = framing.upstream_reusable
        ex.resp_started = True
        out.append(Emit(self._flow(ex, FlowVerdict.FORWARDED, status, "RESPONSE")))
        _to_client(out, client_head)
        self.up_state = UpstreamState.BODY

    def _read_response_body(self, ex: Exchange, out: list[Action], *, eof: bool) -> None:
        fr = ex.resp
        if fr is None:
            raise ProtocolStateError(f"response body without head in state {self.up_state.name}")
        dec = fr.decoder
        rbuf = self._rbuf
        if isinstance(dec, LengthDecoder) and not fr.client_chunked:  # the usual response
            if rbuf:
                data, consumed = dec.feed(rbuf)
                if consumed == len(rbuf):
                    rbuf.clear()
                else:
                    del rbuf[:consumed]
                if data:
                    _to_client(out, data)
        else:
            if dec is None:  # close-delimited: everything until EOF
                pieces, consumed = [bytes(rbuf)], len(rbuf)
            elif isinstance(dec, LengthDecoder):
                data, consumed = dec.feed(rbuf)
                pieces = [data]
            else:
                try:
                    pieces, consumed = dec.feed(rbuf)
                except ValueError as exc:
                    raise BadUpstream(str(exc)) from exc
            del rbuf[:consumed]
            pieces = [p for p in pieces if p]
            if pieces:
                data = (b"".join(encode_chunk(p) for p in pieces) if fr.client_chunked
                        else b"".join(pieces))
                _to_client(out, data)
        if (dec is not None and dec.done) or (dec is None and eof):
            if fr.client_chunked:
                _to_client(out, LAST_CHUNK)
            if rbuf or dec is None:
                ex.reusable = False  # extra bytes after the response: do not trust this conn
            self._response_done(ex, out)

    def _response_done(self, ex: Exchange, out: list[Action]) -> None:
        if self.express_done(ex):  # the usual ending: release, wait for the next head
            out.append(RELEASE_REUSABLE if ex.reusable else RELEASE_BROKEN)
            return
        ex.resp_done = True
        self.up_state = UpstreamState.IDLE
        if ex.req_done:
            self._exchange_done(ex, out)
        else:  # the origin answered before the request body ended: do not guess, close
            self._close(out)

    def express_done(self, ex: Exchange) -> bool:
        """The response to `ex` has been read whole: when nothing else follows (the request
        is done, the client stays, no pipelined bytes wait), make the state changes of
        `_response_done` + `_exchange_done` without their actions and return True (the
        caller releases the upstream as they would); else change nothing, return False.
        `_response_done` takes this ending too; the express lane (server.py) calls it via
        fast_response without building the release action."""
        if not ex.req_done or self._close_after or self._client_eof or self._buf:
            return False
        ex.resp_done = True
        self.up_state = UP_IDLE  # (exchange.py's globals: an Enum lookup costs ~650)
        self._rbuf.clear()
        self._ex = None
        self.state = CLIENT_HEAD
        return True

    def _exchange_done(self, ex: Exchange, out: list[Action]) -> None:
        out.append(RELEASE_REUSABLE if ex.reusable else RELEASE_BROKEN)
        self._rbuf.clear()
        self._ex = None
        if self._close_after or self._client_eof:
            self.state = ClientState.CLOSED
            out.append(CLOSE_CLIENT)
            return
        self.state = ClientState.HEAD
        if self._buf:  # pipelined bytes wait for this moment; usually there are none
            self._pump_client(out)

    def _on_upstream_eof(self, ex: Exchange, out: list[Action]) -> list[Action]:
        if self.up_state is UpstreamState.BODY and ex.resp is not None and ex.resp.decoder is None:
            self._read_response_body(ex, out, eof=True)
            return out
        self._upstream_broken(out, 502)
        return out

    def _upstream_broken(self, out: list[Action], status: int) -> None:
        self._stats.upstream_errors += 1
        ex = self._ex
        if ex is not None and not ex.resp_started:
            self._stats.requests["error"] += 1
            out.append(Emit(self._flow(ex, FlowVerdict.ERROR, status, "RESPONSE")))
            _to_client(out, simple_response(status, REASONS[status] + b"\r\n", close=True))
        self._close(out)

    # --- flows ----------------------------------------------------------------------------
    def _flow(self, ex: Exchange, verdict: FlowVerdict, code: int, l7_type: str) -> Flow:
        latency = self._clock_ns() - ex.start_ns if l7_type == "RESPONSE" else 0
        # lazy: the Flow is built only if something reads it (proxy/http/flows.py)
        return lazy_http_flow(self._wall_ns(), verdict, self.conn, ex.req, code, l7_type,
                              latency)
