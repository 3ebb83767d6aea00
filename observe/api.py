"""The agent's local API: an asyncio Unix-socket server speaking newline-delimited JSON.

Contract (one JSON object per line each way):
- Request `{"op": NAME, ...args}`. Several requests may follow on one connection.
- Plain ops reply with one line: `{"ok": true, "data": {...}}` or
  `{"ok": false, "error": "message"}`. Bad JSON, unknown ops and handler failures get an error
  reply; the connection stays usable.
- `{"op": "flows", "filter": SPEC, "last": N | "first": N | "all": true, "since": NS,
  "until": NS, "follow": BOOL}` streams `{"flow": {...}}` and `{"lost_events": {...}}` lines,
  then `{"end": true}` unless following. Following streams new flows until the client
  disconnects. SPEC is the filter spec of `observe.filters`.
- `{"op": "status"}` replies with whatever `status_provider()` returns (or, when that is
  awaitable, what it resolves to).
- `handlers` add more ops; a handler takes the request dict and returns a dict (or an
  awaitable of one).
- `before_read()`, when given, runs before every op (the agent publishes the flows it still
  holds in a batch, so that a read never misses one already answered).
A slow or stuck follower never blocks the agent: the ring calls us synchronously, we put the
flow in a bounded per-client queue, and when that queue is full the flow is dropped for that
client and counted; the client then gets a `lost_events` line (OBSERVER_EVENTS_QUEUE).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from observe.filters import compile_spec
from observe.flow import Flow
from observe.ring import SOURCE_QUEUE, FlowRing, LossSpan, RingRead, merge_losses
from policy.errors import L7gateError

log = logging.getLogger(__name__)

DEFAULT_SOCKET = "/run/l7gate/api.sock"
SOCKET_ENV = "L7GATE_API_SOCKET"
# Per-follower backlog; about two seconds of a busy node's flows (Hubble's observer queue is
# 128 by default but we prefer to lose less for interactive use).
CLIENT_QUEUE_FLOWS = 4096
# A request line longer than this is an error: requests are small (filters, a few numbers).
MAX_REQUEST_BYTES = 1 << 20
DEFAULT_LAST = 20  # Hubble's FlowPrintCount

Handler = Callable[[dict[str, Any]], "Awaitable[dict[str, Any]] | dict[str, Any]"]


class ApiError(L7gateError):
    """The agent API answered with an error, or could not be reached."""


def socket_path(arg: str | None = None) -> str:
    """`--api-socket` if given, else $L7GATE_API_SOCKET, else the default."""
    return arg or os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


class ApiServer:
    """Serves the ring, status and extra handlers on a Unix socket (see module doc)."""

    def __init__(self, ring: FlowRing, *,
                 status_provider: Callable[[], dict[str, Any]
                                           | Awaitable[dict[str, Any]]] | None = None,
                 handlers: dict[str, Handler] | None = None,
                 client_queue_flows: int = CLIENT_QUEUE_FLOWS,
                 before_read: Callable[[], None] | None = None) -> None:
        self.ring = ring
        self.before_read = before_read
        self.status_provider = status_provider
        self.handlers: dict[str, Handler] = dict(handlers or {})
        self.client_queue_flows = client_queue_flows
        self.lost_to_slow_clients = 0
        self._server: asyncio.AbstractServer | None = None
        self._path = ""

    async def start(self, path: str) -> None:
        """Listen on `path` (parent made 0o750, stale socket replaced, socket 0o660)."""
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, mode=0o750, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        self._server = await asyncio.start_unix_server(
            self._serve, path=path, limit=MAX_REQUEST_BYTES)
        os.chmod(path, 0o660)
        self._path = path

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
        if self._path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    raw = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    writer.write(_line({"ok": False, "error": "request line too long"}))
                    break
                if not raw:
                    break
                keep_going = await self._dispatch(raw, reader, writer)
                await writer.drain()
                if not keep_going:
                    break
        except (ConnectionError, BrokenPipeError):
            pass  # the client went away; nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _dispatch(self, raw: bytes, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> bool:
        try:
            req = json.loads(raw)
            if not isinstance(req, dict) or not isinstance(req.get("op"), str):
                raise ValueError("a request is an object with a string 'op'")
        except ValueError as exc:
            writer.write(_line({"ok": False, "error": f"bad request: {exc}"}))
            return True
        op = req["op"]
        try:
            if self.before_read is not None:
                self.before_read()
            if op == "flows":
                await self._flows(req, reader, writer)
                return not req.get("follow")
            if op == "status":
                status = self.status_provider() if self.status_provider else {}
                data = await status if inspect.isawaitable(status) else status
            elif op in self.handlers:
                result = self.handlers[op](req)
                data = await result if inspect.isawaitable(result) else result
            else:
                raise ApiError(f"unknown op {op!r}")
        except (ConnectionError, BrokenPipeError):
            raise
        except Exception as exc:  # report to the client, keep serving; logged for the agent
            log.warning("api op %s failed: %s", op, exc)
            writer.write(_line({"ok": False, "error": f"{type(exc).__name__}: {exc}"}))
            return True
        writer.write(_line({"ok": True, "data": data}))
        return True

    async def _flows(self, req: dict[str, Any], reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        pred = compile_spec(req.get("filter"))
        follow = bool(req.get("follow"))
        queue: asyncio.Queue[tuple[int, Flow]] = asyncio.Queue(self.client_queue_flows)
        dropped: list[LossSpan] = []
        unsubscribe = None
        if follow:
            unsubscribe = self.ring.subscribe(self._enqueue_fn(queue, dropped))
        try:
            # Reading history and subscribing happen without an await in between: no flow can
            # fall between them on the loop thread.
            history = self._history(req, pred)
            for span in history.lost:
                writer.write(_line({"lost_events": span.to_json()}))
            for _, flow in history.flows:
                writer.write(_line({"flow": flow.to_json()}))
            await writer.drain()
            if not follow:
                writer.write(_line({"end": True}))
                return
            await self._follow(queue, dropped, pred, history.next_seq, reader, writer)
        finally:
            if unsubscribe is not None:
                unsubscribe()

    def _history(self, req: dict[str, Any], pred: Callable[[Flow], bool]) -> RingRead:
        since, until = req.get("since"), req.get("until")
        if since is not None or until is not None:
            read = self.ring.since(int(since or 0), None if until is None else int(until), pred)
            if req.get("first") is not None:
                read.flows = read.flows[: int(req["first"])]
            elif req.get("last") is not None:
                read.flows = read.flows[-int(req["last"]):] if int(req["last"]) > 0 else []
            read.next_seq = self.ring.last_seq
            return read
        if req.get("all"):
            return self.ring.since(0, None, pred)
        if req.get("first") is not None:
            read = self.ring.first(int(req["first"]), pred)
            read.next_seq = self.ring.last_seq
            return read
        default_last = 0 if req.get("follow") else DEFAULT_LAST
        return self.ring.last(int(req.get("last", default_last)), pred)

    def _enqueue_fn(self, queue: asyncio.Queue[tuple[int, Flow]],
                    dropped: list[LossSpan]) -> Callable[[int, Flow], None]:
        loop = asyncio.get_running_loop()
        loop_thread = threading.get_ident()

        def put(seq: int, flow: Flow) -> None:
            try:
                queue.put_nowait((seq, flow))
            except asyncio.QueueFull:
                self.lost_to_slow_clients += 1
                dropped.append(LossSpan(SOURCE_QUEUE, 1, flow.time_ns, flow.time_ns, seq, seq))

        def enqueue(seq: int, flow: Flow) -> None:
            if threading.get_ident() == loop_thread:
                put(seq, flow)
            else:  # pushed from the ringbuf reader thread
                loop.call_soon_threadsafe(put, seq, flow)

        return enqueue

    async def _follow(self, queue: asyncio.Queue[tuple[int, Flow]], dropped: list[LossSpan],
                      pred: Callable[[Flow], bool], after_seq: int,
                      reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        eof = asyncio.ensure_future(reader.read(1))  # any byte or EOF ends the follow
        try:
            while not eof.done():
                get = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({get, eof}, return_when=asyncio.FIRST_COMPLETED)
                if get not in done:
                    get.cancel()
                    break
                seq, flow = get.result()
                if dropped:
                    span = merge_losses(dropped)
                    dropped.clear()
                    if span is not None:
                        writer.write(_line({"lost_events": span.to_json()}))
                if seq > after_seq and pred(flow):
                    writer.write(_line({"flow": flow.to_json()}))
                await writer.drain()
        finally:
            eof.cancel()
