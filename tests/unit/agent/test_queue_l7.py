"""The agent's batched proxy sink: `queue_l7` + `flush_l7` publish exactly what `emit_l7`
publishes per flow (ring, seqs, metrics), L7_FLUSH_DELAY_S after the first flow of a batch,
flush before anything that would change how a queued flow is bound (a reload, a DNS
answer), and before any reader looks (the API, a metrics scrape from its own thread)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client import generate_latest

from agent import daemon
from agent.daemon import L7_FLUSH_DELAY_S, Agent, AgentConfig
from observe.flow import Flow, FlowVerdict
from proxy.http.flows import lazy_http_flow

SRC = SimpleNamespace(src_ip="10.244.1.10", dst_ip="10.244.2.10", src_port=40000, dst_port=8080)


def _flows(n: int) -> list[Flow]:
    out = []
    for i in range(n):
        req = SimpleNamespace(method="GET" if i % 3 else "POST", url=f"http://my-api/api/{i}",
                              protocol="HTTP/1.1")
        verdict = FlowVerdict.DROPPED if i % 3 == 0 else FlowVerdict.FORWARDED
        code = 403 if verdict is FlowVerdict.DROPPED else 200
        l7_type, latency = ("REQUEST", 0) if code == 403 else ("RESPONSE", i)
        out.append(lazy_http_flow(1000 + i, verdict, SRC, req, code,  # type: ignore[arg-type]
                                  l7_type, latency))
    return out


def _agent(cfg: AgentConfig) -> Agent:
    agent = Agent(cfg)
    agent.prepare()
    return agent


def _observable(agent: Agent) -> tuple[object, ...]:
    """What readers see: flows as JSON with their seqs, and the metrics without times."""
    flows = [(seq, f.to_json()) for seq, f in agent.ring.after(0).flows]
    text = [ln for ln in generate_latest(agent.registry).splitlines()
            if b"_created" not in ln and b"process_" not in ln and b"python_" not in ln]
    return flows, text


def test_batches_publish_what_emit_publishes(cfg: AgentConfig) -> None:
    one, batched = _agent(cfg), _agent(cfg)
    for f in _flows(40):
        one.emit_l7(f)

    async def run() -> None:
        batched.bind_loop(asyncio.get_running_loop())
        flows = _flows(40)
        for f in flows[:25]:
            batched.queue_l7(f)
        assert batched.ring.last_seq == 0  # nothing published inside the iteration ...
        await asyncio.sleep(0)
        assert batched.ring.last_seq == 0  # ... nor at its end: the batch waits its delay
        # timers run in deadline order: the flush (due first) before this sleep ends
        await asyncio.sleep(L7_FLUSH_DELAY_S * 5)
        assert batched.ring.last_seq == 25 and batched._l7_pending == []
        for f in flows[25:]:
            batched.queue_l7(f)
        await asyncio.sleep(L7_FLUSH_DELAY_S * 5)

    asyncio.run(run())
    assert batched.ring.last_seq == 40
    assert batched.l7_batches == 2 and batched.status()["flows"]["l7_batches"] == 2
    assert _observable(batched) == _observable(one)


def test_without_a_loop_queue_publishes_at_once(cfg: AgentConfig) -> None:
    agent = _agent(cfg)
    agent.queue_l7(_flows(1)[0])
    assert agent.ring.last_seq == 1 and agent._l7_pending == []


def test_reload_and_dns_answers_flush_first(cfg: AgentConfig, tmp_path: Path) -> None:
    agent = _agent(cfg)
    old = agent.state
    idle = asyncio.new_event_loop()  # a loop that never runs the flush
    agent.bind_loop(idle)
    agent.queue_l7(_flows(1)[0])
    assert agent.ring.last_seq == 0
    assert agent.reload()  # same files, new state object
    assert agent.state is not old and agent.ring.last_seq == 1
    (_, flow), = agent.ring.after(0).flows
    assert flow._bound[1] is old.memo[("endpoint_json", "10.244.1.10", 0)]  # type: ignore[attr-defined]
    agent.queue_l7(_flows(2)[1])
    agent.learn_dns(SimpleNamespace(src_ip="10.244.1.10"), "example.com", [])
    assert agent.ring.last_seq == 2 and agent._l7_pending == []
    idle.close()


def test_the_http_server_queues_as_queue_l7(cfg: AgentConfig) -> None:
    """The HTTP proxy given `l7_queue()` appends to the agent's queue itself: flows from it
    and from queue_l7 (the DNS proxy's sink) in one iteration are one batch, in order, and
    readers see what emit_l7 one by one gives."""
    from proxy.http.server import HttpProxyServer
    one, batched = _agent(cfg), _agent(cfg)
    flows_one, flows = _flows(30), _flows(30)
    for f in flows_one:
        one.emit_l7(f)
    wakes: list[int] = []
    wake = batched.wake_l7

    def counting_wake() -> None:
        wakes.append(len(batched._l7_pending))
        wake()
    batched.wake_l7 = counting_wake  # type: ignore[method-assign]  # before l7_queue() hands it
    server = HttpProxyServer(("127.0.0.1", 0), batched.decide_http, batched.queue_l7,
                             flow_queue=batched.l7_queue())

    async def run() -> None:
        batched.bind_loop(asyncio.get_running_loop())
        for i, f in enumerate(flows[:20]):
            (server.emit_flow if i % 3 else batched.queue_l7)(f)
        assert batched.ring.last_seq == 0 and len(batched._l7_pending) == 20
        await asyncio.sleep(L7_FLUSH_DELAY_S * 5)
        assert batched.ring.last_seq == 20 and batched._l7_pending == []
        for f in flows[20:]:
            server.emit_flow(f)
        await asyncio.sleep(L7_FLUSH_DELAY_S * 5)

    asyncio.run(run())
    assert wakes == [1, 1]  # one wake per batch, when the first flow joined
    assert batched.l7_queue()[0] is batched._l7_pending  # the list the server holds
    assert _observable(batched) == _observable(one)


def test_readers_see_every_queued_flow(cfg: AgentConfig, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch still waiting for its delay is published before the API answers (any op) and
    before a scrape from the metrics server's own thread collects anything."""
    from observe.api import ApiServer
    monkeypatch.setattr(daemon, "L7_FLUSH_DELAY_S", 60.0)  # only a reader can flush here
    agent = _agent(cfg)
    sock = str(tmp_path / "api.sock")

    async def ask(op: str) -> bytes:
        reader, writer = await asyncio.open_unix_connection(sock)
        writer.write(b'{"op": "%s"}\n' % op.encode())
        line = await reader.readline()
        writer.close()
        return line

    async def run() -> None:
        agent.bind_loop(asyncio.get_running_loop())
        api = ApiServer(agent.ring, status_provider=lambda: {"seq": agent.ring.last_seq},
                        before_read=agent.flush_l7)
        await api.start(sock)
        agent.queue_l7(_flows(1)[0])
        assert agent.ring.last_seq == 0
        assert b'"seq":1' in await ask("status")  # flushed before the status was built
        # a scrape from another thread while the loop runs: it asks the loop and waits
        flows = _flows(3)
        agent.queue_l7(flows[1])
        agent.queue_l7(flows[2])
        assert agent.ring.last_seq == 1
        text = await asyncio.get_running_loop().run_in_executor(
            None, generate_latest, agent.registry)
        assert agent.ring.last_seq == 3
        assert threading.current_thread() is threading.main_thread()
        await api.close()
        return text

    text = asyncio.run(run())
    # the scrape counted both flows queued just before it (two GETs answered 200)
    assert (b'hubble_http_requests_total{method="GET",protocol="HTTP/1.1",reporter="server",'
            b'status="200"} 2.0') in text
