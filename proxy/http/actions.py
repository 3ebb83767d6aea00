"""Values exchanged between the sans-IO HTTP session and the asyncio layer (no I/O here).

`ConnInfo` names the two endpoints of one accepted client connection; the session turns
bytes into the actions below and the server executes them in one `_execute(actions)`.
`HttpProxyStats` is the small counter set the Prometheus collector reads at scrape time.

The per-request actions (SendClient, SendUpstream, Emit) stay frozen dataclasses but set
their one field through the slot descriptor instead of the generated frozen `__init__`
(which goes through `object.__setattr__`): ~1,200 fewer instructions per action, three
actions per forwarded request (callgrind, tests/bench/test_http_core_bench.py's loop).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from observe.flow import Flow


@dataclass(frozen=True, slots=True)
class ConnInfo:
    """One downstream connection: the pod (src) and the original destination (dst)."""

    src_ip: str
    src_port: int
    dst_ip: str
    dst_port: int
    context: object = None  # opaque, attached by the agent (endpoint, identity, snapshot ...)


class Side(enum.Enum):
    CLIENT = "client"
    UPSTREAM = "upstream"


@dataclass(frozen=True, slots=True, init=False)
class SendClient:
    data: bytes

    def __init__(self, data: bytes) -> None:
        _set_send_client(self, data)


@dataclass(frozen=True, slots=True, init=False)
class SendUpstream:
    """Bytes for the original destination; the server attaches a pooled or new connection."""

    data: bytes

    def __init__(self, data: bytes) -> None:
        _set_send_upstream(self, data)


@dataclass(frozen=True, slots=True)
class ReleaseUpstream:
    """The exchange on the upstream connection is over; pool it when `reusable`."""

    reusable: bool


@dataclass(frozen=True, slots=True)
class Close:
    """Close one side (the client side after flushing what was queued)."""

    side: Side


@dataclass(frozen=True, slots=True)
class StartTunnel:
    """Protocol switched (101 / CONNECT 2xx): from now on bytes are spliced both ways."""


@dataclass(frozen=True, slots=True, init=False)
class Emit:
    flow: Flow

    def __init__(self, flow: Flow) -> None:
        _set_emit(self, flow)


_set_send_client = SendClient.__dict__["data"].__set__
_set_send_upstream = SendUpstream.__dict__["data"].__set__
_set_emit = Emit.__dict__["flow"].__set__


Action = SendClient | SendUpstream | ReleaseUpstream | Close | StartTunnel | Emit


@dataclass(slots=True)
class HttpProxyStats:
    """Counters read by the metrics collector at scrape time (closed label sets only)."""

    active_connections: int = 0
    accepted_connections: int = 0
    rejected_connections: int = 0  # over the connection cap
    parse_errors: int = 0  # client sent junk (400/431/505)
    upstream_errors: int = 0  # connect failure/timeout, bad upstream framing, reset
    upstream_connects: int = 0
    upstream_reuses: int = 0
    timeouts: int = 0
    decide_errors: int = 0  # the injected decide() raised (answered 403, fail closed)
    requests: dict[str, int] = field(
        default_factory=lambda: {"forwarded": 0, "denied": 0, "error": 0}
    )
