"""Agent API server + sync client over a real Unix socket in a temp dir (no root)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
from typing import Any

import pytest

from observe.api import ApiError, socket_path
from observe.client import AgentUnreachable, request, stream_flows
from observe.flow import EventKind, Flow, FlowVerdict
from observe.ring import FlowRing


def _ring_with(flows: list[Flow], capacity: int = 1000) -> FlowRing:
    ring = FlowRing(capacity=capacity)
    for f in flows:
        ring.push(f)
    return ring


def _drop_spec() -> dict[str, Any]:
    return {"allow": [{"verdict": ["DROPPED"]}], "deny": []}


def test_flows_last_default_and_filter(api_server: Any, flows: list[Flow]) -> None:
    ring = _ring_with(flows * 3)
    _, path = api_server(ring)
    got = list(stream_flows(path, {}))
    assert [Flow.from_json(o["flow"]) for o in got] == (flows * 3)[-20:]
    drops = [Flow.from_json(o["flow"]) for o in stream_flows(path, {"filter": _drop_spec(),
                                                                     "last": 1000})]
    assert drops == [f for f in flows * 3 if f.verdict is FlowVerdict.DROPPED]
    assert drops


def test_flows_first_all_since_until(api_server: Any, flows: list[Flow]) -> None:
    _, path = api_server(_ring_with(flows))
    first = [o["flow"] for o in stream_flows(path, {"first": 2})]
    assert [Flow.from_json(f) for f in first] == flows[:2]
    assert len(list(stream_flows(path, {"all": True}))) == len(flows)
    mid = flows[len(flows) // 2].time_ns
    since = [Flow.from_json(o["flow"]) for o in stream_flows(path, {"since": mid})]
    assert since == [f for f in flows if f.time_ns >= mid]
    until = [Flow.from_json(o["flow"]) for o in stream_flows(path, {"since": 0, "until": mid})]
    assert until == [f for f in flows if f.time_ns < mid]


def test_lost_events_reported_in_answer(api_server: Any, flows: list[Flow]) -> None:
    ring = _ring_with(flows, capacity=5)  # most of them evicted
    _, path = api_server(ring)
    objs = list(stream_flows(path, {"all": True}))
    lost = [o["lost_events"] for o in objs if "lost_events" in o]
    got = [o for o in objs if "flow" in o]
    assert len(got) == 5
    assert sum(x["num_events_lost"] for x in lost) == len(flows) - 5
    assert all(x["source"] == "HUBBLE_RING_BUFFER" for x in lost)


def test_status_and_custom_handlers(api_server: Any) -> None:
    async def fqdn_cache(req: dict[str, Any]) -> dict[str, Any]:
        return {"entries": [{"name": "api.stripe.com.", "ips": ["203.0.113.10"]}],
                "echo": req.get("x")}

    def boom(req: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("kaput")

    _, path = api_server(FlowRing(10), status_provider=lambda: {"state": "running"},
                         handlers={"fqdn_cache": fqdn_cache, "boom": boom})
    assert request(path, "status") == {"state": "running"}
    assert request(path, "fqdn_cache", x=1)["echo"] == 1
    with pytest.raises(ApiError, match="kaput"):
        request(path, "boom")
    with pytest.raises(ApiError, match="unknown op"):
        request(path, "nope")
    with pytest.raises(ApiError, match="unknown filter field"):
        list(stream_flows(path, {"filter": {"allow": [{"bogus": [1]}]}}))


def test_an_awaitable_status_is_awaited_and_before_read_runs_first(api_server: Any) -> None:
    """The agent's status walks its maps in a thread (a coroutine here), and publishes its
    queued flows before any op (`before_read`)."""
    calls: list[str] = []

    async def status() -> dict[str, Any]:
        calls.append("status")
        await asyncio.sleep(0)
        return {"walked": True}

    _, path = api_server(FlowRing(10), status_provider=status,
                         before_read=lambda: calls.append("before_read"))
    assert request(path, "status") == {"walked": True}
    assert calls == ["before_read", "status"]


def test_bad_json_gets_error_and_connection_stays_usable(api_server: Any) -> None:
    _, path = api_server(FlowRing(10), status_provider=lambda: {"ok": 1})
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(b"{not json\n[1,2]\n" + json.dumps({"op": "status"}).encode() + b"\n")
        f = s.makefile("rb")
        replies = [json.loads(f.readline()) for _ in range(3)]
    assert replies[0]["ok"] is False and "bad request" in replies[0]["error"]
    assert replies[1]["ok"] is False
    assert replies[2] == {"ok": True, "data": {"ok": 1}}


def test_overlong_request_line_is_refused(api_server: Any) -> None:
    _, path = api_server(FlowRing(10))
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(path)
        try:
            s.sendall(b"x" * (2 << 20))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may already have hung up
        data = s.makefile("rb").readline()
    assert b"too long" in data


def test_follow_streams_new_flows_then_stops_on_disconnect(
        api_server: Any, flows: list[Flow], wait: Any) -> None:
    ring = _ring_with(flows[:3])
    _, path = api_server(ring)
    got: list[dict[str, Any]] = []
    want = sum(1 for f in flows if f.verdict is FlowVerdict.DROPPED)

    def consume() -> None:
        gen = stream_flows(path, {"filter": _drop_spec(), "follow": True})
        for obj in gen:
            got.append(obj)
            if len(got) == want:
                break
        gen.close()

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    wait(lambda: ring.subscriber_count == 1, "the follower to subscribe")
    for f in flows:  # pushed from this (non-loop) thread
        ring.push(f)
    t.join(20)
    assert not t.is_alive()
    assert [Flow.from_json(o["flow"]) for o in got] == [
        f for f in flows if f.verdict is FlowVerdict.DROPPED]
    wait(lambda: ring.subscriber_count == 0, "the server to unsubscribe the closed follower")


def test_slow_follower_never_blocks_the_agent(api_server: Any, wait: Any) -> None:
    ring = FlowRing(capacity=100)
    server, path = api_server(ring, client_queue_flows=8, status_provider=lambda: {"up": 1})
    big = Flow(time_ns=1, verdict=FlowVerdict.FORWARDED, kind=EventKind.TRACE,
               summary="x" * 2000)
    n = 3000  # ~6 MB of lines: far beyond socket buffers + transport buffer + queue
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(path)
        s.sendall(json.dumps({"op": "flows", "follow": True}).encode() + b"\n")
        wait(lambda: ring.subscriber_count == 1, "the follower to subscribe")
        # If push() ever waited for the reader, this loop would hang (the client reads nothing).
        for i in range(n):
            ring.push(Flow(time_ns=i + 1, verdict=big.verdict, kind=big.kind,
                           summary=big.summary))
        wait(lambda: server.lost_to_slow_clients > 0, "the slow client's queue to overflow")
        # The agent still answers others while the follower does not read.
        assert request(path, "status") == {"up": 1}
        f = s.makefile("rb")
        seen = lost = 0
        while seen + lost < n:
            obj = json.loads(f.readline())
            if "flow" in obj:
                seen += 1
            else:
                lost += obj["lost_events"]["num_events_lost"]
                assert obj["lost_events"]["source"] == "OBSERVER_EVENTS_QUEUE"
    assert lost == server.lost_to_slow_clients > 0
    assert seen + lost == n


def test_unreachable_socket_names_the_path(short_tmp: str) -> None:
    path = os.path.join(short_tmp, "nobody.sock")
    with pytest.raises(AgentUnreachable, match=path):
        request(path, "status")
    with pytest.raises(AgentUnreachable, match=path):
        list(stream_flows(path, {}))


def test_socket_path_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("L7GATE_API_SOCKET", raising=False)
    assert socket_path(None) == "/run/l7gate/api.sock"
    monkeypatch.setenv("L7GATE_API_SOCKET", "/tmp/x.sock")
    assert socket_path(None) == "/tmp/x.sock"
    assert socket_path("/y.sock") == "/y.sock"


def test_stale_socket_file_is_replaced_and_removed_on_close(api_server: Any,
                                                            short_tmp: str) -> None:
    path = os.path.join(short_tmp, "api0.sock")
    with open(path, "w"):
        pass
    _, got = api_server(FlowRing(1), status_provider=lambda: {})
    assert got == path
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o660)
    assert request(path, "status") == {}
