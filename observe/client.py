"""Synchronous client of the agent API (for the CLI): plain sockets, no asyncio.

Contract:
- `request(socket_path, op, **args) -> dict` sends one request and returns the reply's
  `data`; raises `ApiError` for an error reply and `AgentUnreachable` (an `ApiError`) when the
  socket cannot be reached, naming the socket path.
- `stream_flows(socket_path, spec) -> Iterator[dict]` sends a `flows` request (`spec` holds
  its arguments: filter, last/first/all, since/until, follow) and yields each `{"flow": ...}`
  or `{"lost_events": ...}` object until `{"end": true}` or, when following, until the caller
  stops iterating (closing the generator closes the socket, which ends the follow).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Generator, Iterator
from typing import Any

from observe.api import ApiError

# How long a plain request may take; streams (follow) have no timeout once connected.
REQUEST_TIMEOUT_S = 10.0
RECV_BYTES = 65536


class AgentUnreachable(ApiError):
    """No agent answers on the socket."""


def _connect(path: str, timeout_s: float | None) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(REQUEST_TIMEOUT_S)
    try:
        sock.connect(path)
    except (FileNotFoundError, ConnectionRefusedError, PermissionError, TimeoutError,
            OSError) as exc:
        sock.close()
        raise AgentUnreachable(
            f"cannot reach the l7gate agent at {path}: {exc.strerror or exc}") from exc
    sock.settimeout(timeout_s)
    return sock


def _lines(sock: socket.socket) -> Iterator[dict[str, Any]]:
    buf = b""
    while True:
        chunk = sock.recv(RECV_BYTES)
        if not chunk:
            if buf.strip():
                raise ApiError("agent closed the connection mid-line")
            return
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if line.strip():
                obj = json.loads(line)
                if not isinstance(obj, dict):
                    raise ApiError(f"agent sent a non-object line: {line[:80]!r}")
                yield obj


def request(socket_path: str, op: str, **args: Any) -> dict[str, Any]:
    with _connect(socket_path, REQUEST_TIMEOUT_S) as sock:
        sock.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
        try:
            for reply in _lines(sock):
                if reply.get("ok"):
                    data = reply.get("data", {})
                    return data if isinstance(data, dict) else {"value": data}
                raise ApiError(str(reply.get("error", "unknown error")))
        except TimeoutError:
            raise ApiError(f"agent at {socket_path} did not answer {op!r} in time") from None
    raise ApiError(f"agent at {socket_path} closed the connection without answering {op!r}")


def stream_flows(socket_path: str,
                 spec: dict[str, Any]) -> Generator[dict[str, Any], None, None]:
    follow = bool(spec.get("follow"))
    sock = _connect(socket_path, None if follow else REQUEST_TIMEOUT_S)
    try:
        sock.sendall(json.dumps({"op": "flows", **spec}).encode() + b"\n")
        for obj in _lines(sock):
            if obj.get("end"):
                return
            if obj.get("ok") is False:
                raise ApiError(str(obj.get("error", "unknown error")))
            yield obj
        if not follow:
            raise ApiError(f"agent at {socket_path} closed the flow stream early")
    except TimeoutError:
        raise ApiError(f"agent at {socket_path} did not answer in time") from None
    finally:
        sock.close()
