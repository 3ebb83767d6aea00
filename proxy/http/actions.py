"""Values exchanged between the sans-IO HTTP session and the asyncio layer (no I/O here).

`ConnInfo` names the two endpoints of one accepted client connection; the session turns
bytes into the actions below and the server executes them, one `_execute(action)` each.
`HttpProxyStats` is the small counter set the Prometheus collector reads at scrape time.
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


@dataclass(frozen=True, slots=True)
class SendClient:
    data: bytes


@dataclass(frozen=True, slots=True)
class SendUpstream:
    """Bytes for the original destination; the server attaches a pooled or new connection."""

    data: bytes


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


@dataclass(frozen=True, slots=True)
class Emit:
    flow: Flow


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
