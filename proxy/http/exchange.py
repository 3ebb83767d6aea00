"""The HTTP session's states and per-request record, shared by session.py and its fast
paths (session_fast.py); values only, no I/O.

Contract: `ClientState` / `UpstreamState` are the two halves of one connection's state
machine (session.py changes them); `Exchange` is one request/response pair in flight. The
shared action instances below carry no per-request value.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from proxy.http.actions import Close, ReleaseUpstream, Side, StartTunnel
from proxy.http.codec import RequestCodec
from proxy.http.request import PreparedRequest
from proxy.http.response import ResponseFraming
from proxy.http.wire import ChunkedDecoder, LengthDecoder

# Actions that carry no per-request value: one shared (frozen) instance each.
RELEASE_REUSABLE = ReleaseUpstream(reusable=True)
RELEASE_BROKEN = ReleaseUpstream(reusable=False)
CLOSE_CLIENT = Close(Side.CLIENT)
START_TUNNEL = StartTunnel()


class ClientState(enum.Enum):
    HEAD = "head"  # waiting for (or reading) a request head
    BODY = "body"  # reading a request body (forwarding it, or draining a denied one)
    WAIT = "wait"  # request complete; its response is pending, later bytes are buffered
    TUNNEL = "tunnel"  # protocol switched: bytes are spliced
    CLOSED = "closed"  # terminal


class UpstreamState(enum.Enum):
    IDLE = "idle"
    HEAD = "head"
    BODY = "body"
    TUNNEL = "tunnel"


# The states the per-request path reads or sets, as module values: a member looked up on its
# Enum class costs ~650 instructions in CPython 3.11, a global ~60 (callgrind); importers
# bind them as their own globals.
CLIENT_HEAD, CLIENT_WAIT, CLIENT_CLOSED = ClientState.HEAD, ClientState.WAIT, ClientState.CLOSED
UP_IDLE, UP_HEAD = UpstreamState.IDLE, UpstreamState.HEAD

NO_BODY = LengthDecoder(0)  # done from the start: never fed, shared by bodiless requests


@dataclass(slots=True)
class Exchange:
    req: PreparedRequest
    codec: RequestCodec
    decoder: LengthDecoder | ChunkedDecoder
    forward: bool
    start_ns: int
    codec_body: int = 0
    codec_end: bool = False
    body_bytes: int = 0
    req_done: bool = False
    resp_done: bool = False
    resp_started: bool = False  # part of a final response went to the client
    resp: ResponseFraming | None = None
    reusable: bool = True
    retried: bool = False

    # Written out, as PreparedRequest's (request.py): C when compiled. The defaults above
    # stay the dataclass's record of them; this sets the same.
    def __init__(self, req: PreparedRequest, codec: RequestCodec,
                 decoder: LengthDecoder | ChunkedDecoder, forward: bool, start_ns: int) -> None:
        self.req = req
        self.codec = codec
        self.decoder = decoder
        self.forward = forward
        self.start_ns = start_ns
        self.codec_body = 0
        self.codec_end = False
        self.body_bytes = 0
        self.req_done = False
        self.resp_done = False
        self.resp_started = False
        self.resp = None
        self.reusable = True
        self.retried = False
