"""Bench-only: the HTTP proxy end to end in one process, for instruction counts (no root).

Why: sandbox rates drift by up to 2x within minutes on this VM, so a change of a few µs per
request cannot be seen there reliably. This loop runs the whole per-request path (the real
`HttpProxyServer` on uvloop with the agent's own callbacks: decide_http, queue_l7 with the
ring and metrics, upstream_mark, and the README policies) between an in-process client and
origin over loopback TCP, and callgrind counts the instructions: deterministic, so two
versions compare exactly. Kernel time is not counted (callgrind sees user space only).

Addresses: node2's pods live on 127.0.2.0/24 and node1's on 127.0.1.0/24 in this process's
endpoints file, so the client binds the frontend's address 127.0.1.10 and the origin
listens on my-api's 127.0.2.10:8080; everything stays on the loopback device.

Modes: `l7gate` (the product's server and agent callbacks, with the compiled hot path of
proxy/compiled.py when it is built), `l7gate-pure` (the same from the Python sources: the
process re-runs itself with L7GATE_PURE=1), `floor` (tests/bench/pyfloor.py's
forwarder, the least Python per request), `direct` (client to origin: what the loop itself
costs). Every request carries its own x-request-id, as in the sandbox benches.

Run:
  python -m tests.bench.inproc_http run MODE [REQUESTS] [CONNS]   # CPU µs/request (noisy)
  python -m tests.bench.inproc_http instr MODE                     # instructions/request
  python -m tests.bench.inproc_http ops MODE                       # bytecodes/request
`instr` runs `run` under valgrind's callgrind at 1,280 and 6,400 requests (64 connections)
and prints the difference per request, so start-up cancels out; the cyclic GC is disabled
in both (the agent freezes survivors every 20 ms while it publishes flows, and every
second, gctune.py; here a run is too short to model that).
The agent publishes flows in batches that wait 1 ms (agent/daemon.py L7_FLUSH_DELAY_S), so
batch sizes follow the clock: `run` prints them (31.5 flows natively at 64 connections; 9.5
under callgrind, ~30x slower; 24-32 in the sandbox at c=64), so `instr` counts ~2k more per
request for publishing than the agent spends there (a batch costs ~28k instructions
whatever its size).
"""

from __future__ import annotations

import asyncio
import gc
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.unit.agent.conftest import ENDPOINTS as _README_CLUSTER
from tests.unit.agent.conftest import ROOT

SRC, DST, ORIGIN_PORT, PROXY_PORT = "127.0.1.10", "127.0.2.10", 8080, 15001
# The README cluster of the agent tests, moved onto loopback addresses (module doc).
ENDPOINTS = _README_CLUSTER.replace("10.244.", "127.0.")
BODY = (b'{"server":"my-api","method":"GET","target":"/api/users","headers":[["host",'
        b'"127.0.2.10:8080"],["x-request-id","000000000000abcd"]],"body_bytes":0}')
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)


class _Origin(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(RESPONSE * data.count(b"\r\n\r\n"))


class _Client(asyncio.Protocol):
    """One keep-alive connection sending `count` requests, one at a time."""

    def __init__(self, count: int, done: asyncio.Future[int]) -> None:
        self.count, self.done, self.sent, self.buf = count, done, 0, b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport
        self._send()

    def _send(self) -> None:
        self.sent += 1
        self.transport.write(b"GET /api/users HTTP/1.1\r\nHost: 127.0.2.10:8080\r\n"
                             b"x-request-id: %016x\r\n\r\n" % (id(self) * 100_000 + self.sent))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) < len(RESPONSE):
            return
        if not self.buf.startswith(b"HTTP/1.1 200 "):
            raise RuntimeError(f"unexpected response {self.buf[:80]!r}")
        self.buf = b""
        if self.sent < self.count:
            self._send()
        else:
            self.transport.close()
            self.done.set_result(self.sent)


async def _proxy(mode: str) -> tuple[Any, Any]:
    loop = asyncio.get_running_loop()
    if mode == "floor":
        from tests.bench import pyfloor
        server = await loop.create_server(lambda: pyfloor._Client((DST, ORIGIN_PORT)), DST,
                                          PROXY_PORT)
        return server, None
    from agent.daemon import Agent, AgentConfig
    from proxy.http.server import HttpProxyServer
    tmp = Path(tempfile.mkdtemp(prefix="l7gate-inproc-"))
    (tmp / "endpoints.yaml").write_text(ENDPOINTS)
    (tmp / "policies").mkdir()
    for name in ("my-api-l7.yaml", "frontend-egress.yaml"):
        (tmp / "policies" / name).write_text((ROOT / "examples" / name).read_text())
    agent = Agent(AgentConfig(node_name="node2", endpoints=str(tmp / "endpoints.yaml"),
                              policy_dir=str(tmp / "policies"), state_dir=str(tmp / "state"),
                              enable_datapath=False))
    agent.prepare()
    # what Agent.run() does before the proxies start (older versions: a per-iteration flush)
    if hasattr(agent, "bind_loop"):
        agent.bind_loop(loop)
    else:
        agent._call_soon = loop.call_soon
    # (getattr, hasattr: the same loop also measures versions from before the batched sink,
    # the per-connection decide and the server-side flow queue; as agent/proxies.py wires it)
    sink = getattr(agent, "queue_l7", agent.emit_l7)
    server = HttpProxyServer((DST, PROXY_PORT), agent.decide_http, sink,
                             upstream_mark=agent.upstream_mark,
                             origdst=lambda _sock: (DST, ORIGIN_PORT),
                             context=lambda _peer, _dst: agent.current(),
                             **({"decide_for": agent.http_decide_for}
                                if hasattr(agent, "http_decide_for") else {}),
                             **({"flow_queue": agent.l7_queue()}
                                if hasattr(agent, "l7_queue") else {}))
    await server.start()
    return server, agent


def _compiled_note(mode: str) -> str:
    if not mode.startswith("l7gate"):
        return ""
    from proxy import compiled
    done = compiled.loaded()
    return f"; compiled: {', '.join(done)}" if done else f"; pure Python ({compiled.STATUS})"


async def run(mode: str, requests: int, conns: int) -> None:
    loop = asyncio.get_running_loop()
    origin = await loop.create_server(_Origin, DST, ORIGIN_PORT)
    proxy, agent = (None, None) if mode == "direct" else await _proxy(mode)
    target = (DST, ORIGIN_PORT if mode == "direct" else PROXY_PORT)
    gc.collect()
    gc.disable()
    started = time.process_time()
    done = []
    for _ in range(conns):
        fut: asyncio.Future[int] = loop.create_future()
        sock = socket.socket()
        sock.bind((SRC, 0))
        sock.setblocking(False)
        await loop.sock_connect(sock, target)
        await loop.create_connection(lambda f=fut: _Client(requests // conns, f), sock=sock)
        done.append(fut)
    total = sum(await asyncio.gather(*done))
    cpu = time.process_time() - started
    await asyncio.sleep(0)  # the agent's flow batch (older versions) ...
    if agent is not None and hasattr(agent, "flush_for_reader"):
        agent.flush_for_reader()  # ... or what a reader sees (a batch waits L7_FLUSH_DELAY_S)
    if agent is not None and agent.ring.last_seq != total:
        raise RuntimeError(f"{agent.ring.last_seq} flows for {total} requests")
    batches = getattr(agent, "l7_batches", 0) if agent is not None else 0
    per_batch = f"; {total / batches:.1f} flows per published batch" if batches else ""
    print(f"{mode}: {total} requests, {cpu / total * 1e6:.1f} µs CPU/request (client and "
          f"origin included){_compiled_note(mode)}{per_batch}")
    if proxy is not None:
        await proxy.close() if hasattr(proxy, "listen") else proxy.close()
    origin.close()


def _env(mode: str) -> dict[str, str]:
    """The child's environment: `l7gate-pure` asks for the sources (no re-exec under
    valgrind, which would not follow it)."""
    return {**os.environ, "L7GATE_PURE": "1"} if mode == "l7gate-pure" else dict(os.environ)


def instructions(mode: str, low: int = 1280, high: int = 6400) -> int:
    """Instructions per request: callgrind totals at two request counts, differenced."""
    totals = []
    for n in (low, high):
        out = subprocess.run(
            ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
             "-m", "tests.bench.inproc_http", "run", mode, str(n), "64"],
            cwd=ROOT, capture_output=True, text=True, check=True, env=_env(mode)).stderr
        m = re.search(r"Collected : (\d+)", out)
        if m is None:
            raise RuntimeError(f"no callgrind total in: {out[-500:]}")
        totals.append(int(m.group(1)))
    return (totals[1] - totals[0]) // (high - low)


def count_bytecodes(mode: str, requests: int) -> int:
    """Python bytecodes executed outside this module (the proxy side: server, session,
    agent, metrics, ring; not this file's client and origin) during `run`, start-up
    included. sys.settrace with per-opcode events: slow, but exact."""
    import uvloop
    counts = [0]
    here = __file__

    def local(frame: Any, event: str, arg: Any) -> Any:
        if event == "opcode":
            counts[0] += 1
        return local

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        if frame.f_code.co_filename == here:
            return None
        frame.f_trace_opcodes = True
        return local

    sys.settrace(tracer)
    try:
        uvloop.run(run(mode, requests, 64))
    finally:
        sys.settrace(None)
    return counts[0]


def bytecodes(mode: str, low: int = 1280, high: int = 6400) -> int:
    """Proxy-side bytecodes per request: counts at two request counts, differenced (in
    fresh processes, so start-up cancels out). Why beside instructions: the eval loop's
    instructions cost more time than a C routine's (perf in the sandbox, before the hot path
    was compiled: l7gate spent ~20 % of its CPU in _PyEval_EvalFrameDefault, the floor ~11 %,
    at equal instructions). Compiled code (proxy/compiled.py) runs no bytecode: with it,
    this counts what is still interpreted."""
    totals = []
    for n in (low, high):
        out = subprocess.run([sys.executable, "-m", "tests.bench.inproc_http", "_ops", mode,
                              str(n)], cwd=ROOT, capture_output=True, text=True,
                             check=True, env=_env(mode)).stdout
        totals.append(int(out.split()[-1]))
    return (totals[1] - totals[0]) // (high - low)


def main(argv: list[str]) -> int:
    if "l7gate-pure" in argv and os.environ.get("L7GATE_PURE") != "1":  # before any import
        os.execve(sys.executable, [sys.executable, "-m", "tests.bench.inproc_http", *argv],
                  {**os.environ, "L7GATE_PURE": "1"})
    if len(argv) >= 2 and argv[0] == "run":
        requests = int(argv[2]) if len(argv) > 2 else 20_000
        conns = int(argv[3]) if len(argv) > 3 else 64
        import uvloop
        uvloop.run(run(argv[1], requests, conns))
        return 0
    if len(argv) == 2 and argv[0] == "instr":
        print(f"{argv[1]}: {instructions(argv[1])} instructions/request")
        return 0
    if len(argv) == 2 and argv[0] == "ops":
        print(f"{argv[1]}: {bytecodes(argv[1])} proxy-side bytecodes/request")
        return 0
    if len(argv) == 3 and argv[0] == "_ops":
        print(count_bytecodes(argv[1], int(argv[2])))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main(sys.argv[1:]))
