"""Limits and normalization options of the HTTP proxy (pure values, no I/O).

Every number names its precedent (security-reliability.md §3 table, Envoy, Cilium, nginx).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

MAX_HEAD_BYTES = 60 * 1024  # Envoy max_request_headers_kb default (60 KiB) -> 431
MAX_HEADERS = 100  # Envoy max_headers_count default -> 431
MAX_RESPONSE_HEAD_BYTES = 64 * 1024  # upstream heads; beyond this the origin is broken -> 502
MAX_CHUNK_LINE_BYTES = 4096  # chunk-size line incl. extensions; llhttp/h11 cap similar
MAX_PIPELINE_BYTES = 256 * 1024  # client bytes buffered while a response is pending
HIGH_WATER_BYTES = 64 * 1024  # per-connection buffer with backpressure (reference table)
LOW_WATER_BYTES = 16 * 1024
HEADER_TIMEOUT_S = 10.0  # request_headers_timeout suggested in security-reliability.md
CLIENT_IDLE_TIMEOUT_S = 300.0  # Cilium http-stream-idle-timeout 300 s
UPSTREAM_IDLE_TIMEOUT_S = 60.0  # Cilium proxy-idle-timeout-seconds 60
CONNECT_TIMEOUT_S = 2.0  # Cilium proxy-connect-timeout 2 s
MAX_CONNECTIONS = 10000  # Envoy edge guide listener connection_limit
# Idle upstream connections kept per (src, dst, port, mark). It must cover one pod's
# concurrent connections to one destination: at 32, a 64-connection client (wrk -c64, all
# from one source) saw ~5 % of its requests closed into TIME_WAIT and reconnected, which
# added ~60 µs CPU each and the latency tail (tests/bench/test_http_bench.py). nginx's
# upstream `keepalive` and haproxy's unlimited idle pool bound it per worker similarly;
# the 60 s idle timeout below still reclaims them.
POOL_MAX_IDLE_PER_KEY = 256


class EscapedSlashAction(enum.Enum):
    """What to do with %2F / %5C in the path (Envoy path_with_escaped_slashes_action)."""

    REJECT = "reject"  # 400 (edge guide; our default)
    UNESCAPE = "unescape"  # decode to / and \ and normalize again (Cilium redirects instead)


class BackslashAction(enum.Enum):
    REJECT = "reject"  # 400 (default)
    CONVERT = "convert"  # '\' -> '/' as Envoy does


@dataclass(frozen=True, slots=True)
class HttpLimits:
    max_head_bytes: int = MAX_HEAD_BYTES
    max_headers: int = MAX_HEADERS
    max_response_head_bytes: int = MAX_RESPONSE_HEAD_BYTES
    max_pipeline_bytes: int = MAX_PIPELINE_BYTES
    high_water_bytes: int = HIGH_WATER_BYTES
    low_water_bytes: int = LOW_WATER_BYTES
    header_timeout_s: float = HEADER_TIMEOUT_S
    client_idle_timeout_s: float = CLIENT_IDLE_TIMEOUT_S
    upstream_idle_timeout_s: float = UPSTREAM_IDLE_TIMEOUT_S
    connect_timeout_s: float = CONNECT_TIMEOUT_S
    max_connections: int = MAX_CONNECTIONS
    pool_max_idle_per_key: int = POOL_MAX_IDLE_PER_KEY
    escaped_slash: EscapedSlashAction = EscapedSlashAction.REJECT
    backslash: BackslashAction = BackslashAction.REJECT
    denied_body: bytes = b"Access denied\r\n"  # Cilium's default 403 body
