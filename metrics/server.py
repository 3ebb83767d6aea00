"""Serves `/metrics` for one registry (prometheus_client's threaded HTTP server).

Contract: `start_metrics_server("HOST:PORT", registry) -> MetricsServer`; `":9965"` binds all
IPv4 addresses, `"[::1]:0"` works for IPv6, port 0 picks a free port (see `.port`).
`.stop()` shuts the server down and joins its thread; it is idempotent. The server runs in a
daemon thread so it never blocks the agent's event loop.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server

from policy.errors import ConfigError


def parse_addr(addr: str) -> tuple[str, int]:
    host, sep, port_s = addr.rpartition(":")
    if not sep or not port_s.isdigit() or int(port_s) > 65535:
        raise ConfigError(f"--metrics-addr: expected HOST:PORT, got {addr!r}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port_s)


@dataclass
class MetricsServer:
    host: str
    port: int
    _httpd: Any = field(repr=False)
    _thread: threading.Thread = field(repr=False)
    _stopped: bool = False

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def start_metrics_server(addr: str, registry: CollectorRegistry) -> MetricsServer:
    host, port = parse_addr(addr)
    try:
        httpd, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise ConfigError(f"--metrics-addr {addr}: cannot listen: {exc}") from exc
    return MetricsServer(host, int(httpd.server_address[1]), httpd, thread)
