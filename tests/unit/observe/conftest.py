"""Fixtures for observe/ tests: the recorded flows file and an API server on a loop thread."""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from observe.api import ApiServer
from observe.flow import Flow
from observe.ring import FlowRing

FLOWS_FILE = Path(__file__).with_name("flows.jsonl")
# Recorded from a real sandbox run (`l7gate demo --keep`, then `l7gate sandbox exec nodeN --
# l7gate observe -o json --all` on both nodes): what the datapath and proxies really emit.
SANDBOX_FLOWS_FILE = Path(__file__).with_name("flows_sandbox.jsonl")


@pytest.fixture(scope="session")
def raw_flows() -> list[dict[str, Any]]:
    """The hand-built story flows plus the recorded sandbox flows (`flow` members)."""
    out = []
    for path in (FLOWS_FILE, SANDBOX_FLOWS_FILE):
        found = 0
        for line in path.read_text().splitlines():
            if line.strip():
                obj = json.loads(line)
                if "flow" in obj:
                    out.append(obj["flow"])
                    found += 1
        assert found, f"{path} holds no flows"
    return out


@pytest.fixture()
def flows(raw_flows: list[dict[str, Any]]) -> list[Flow]:
    return [Flow.from_json(d) for d in raw_flows]


class LoopThread:
    """An asyncio loop running in a daemon thread; `call(coro)` runs a coroutine there."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coro: Any, timeout_s: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def stop(self) -> None:
        async def _cancel_rest() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.call(_cancel_rest())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture()
def short_tmp() -> Iterator[str]:
    # AF_UNIX paths are limited to 108 bytes; pytest's tmp_path can be longer.
    d = tempfile.mkdtemp(prefix="l7gobs-")
    try:
        yield d
    finally:
        for root, dirs, files in os.walk(d, topdown=False):
            for f in files:
                os.unlink(os.path.join(root, f))
            for sub in dirs:
                os.rmdir(os.path.join(root, sub))
        os.rmdir(d)


ServerFactory = Callable[..., tuple[ApiServer, str]]


@pytest.fixture()
def api_server(short_tmp: str) -> Iterator[ServerFactory]:
    """`api_server(ring, **kw)` starts an ApiServer on a socket in a temp dir."""
    lt = LoopThread()
    servers: list[ApiServer] = []

    def start(ring: FlowRing, **kw: Any) -> tuple[ApiServer, str]:
        path = os.path.join(short_tmp, f"api{len(servers)}.sock")
        server = ApiServer(ring, **kw)
        lt.call(server.start(path))
        servers.append(server)
        return server, path

    try:
        yield start
    finally:
        for s in servers:
            lt.call(s.close())
        lt.stop()


def wait_for(cond: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    """Poll `cond` (bounded): for events another thread makes happen, not for timing."""
    import time

    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


@pytest.fixture()
def wait() -> Callable[[Callable[[], bool], str], None]:
    return lambda cond, what: wait_for(cond, what)
