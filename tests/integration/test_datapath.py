"""Privileged tests of the eBPF datapath with real namespaces, programs and packets.

One two-node topology (tests/integration/datapath_helpers.py) and one loaded `Datapath`
per module; each test installs its own policy with `replace_all` and uses its own ports so
that conntrack entries of other tests never decide its packets. Maps are filled by hand
from `DatapathEntry` lists (the policy engine is tested on its own).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest

from policy.types import DropReason, L4Action, Proto
from redirect import structs as S
from tests.integration import datapath_helpers as H
from tests.integration.datapath_helpers import (
    ALL,
    DNS_PORT,
    EG,
    EP_PA,
    EP_PB,
    HTTP_PORT,
    ID_PA,
    ID_PB,
    ID_PC,
    IN,
    drops,
    entry,
    set_policy,
)

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: netns, tc and BPF"),
]



# fixtures topo, dp, reader, events: tests/integration/conftest.py


# --- L3/L4 enforcement -------------------------------------------------------------------

def test_allowed_tcp_passes_and_reply_passes_default_deny(dp: Any, topo: H.Topology,
                                                           events: Callable[..., list]) -> None:
    pa, pb = topo.pods["pa"], topo.pods["pb"]
    # pa: egress allow pb:8080 only; its ingress is default deny (no entries).
    # pb: ingress allow pa:8080; its egress is default deny: the replies must still pass.
    set_policy(dp, (EP_PA, [entry(EG, ID_PB, Proto.TCP, (8080, 8080))]),
               (EP_PB, [entry(IN, ID_PA, Proto.TCP, (8080, 8080))]))
    with H.server(pb.name, pb.ip, 8080) as srv:
        s = H.connect(pa.name, pb.ip, 8080)
        assert s is not None, "allowed connection was dropped"
        with s:
            assert H.roundtrip(s, b"hello" * 100) == b"hello" * 100
        assert srv.wait_accepted()[0][1][0] == pa.ip
    seen = events(lambda e: not e.is_drop and e.dport == 8080 and e.hook.name == "TO_ENDPOINT")
    traces = [e for e in seen if not e.is_drop and e.dport == 8080]
    assert {e.hook.name for e in traces} >= {"FROM_ENDPOINT", "TO_ENDPOINT"}
    flows = [r for r in dp.maps.ct.items() if r.dport == 8080 and str(r.src) == pa.ip]
    assert {r.direction for r in flows} == {EG, IN}
    assert all(r.packets >= 2 for r in flows)


def test_denied_tcp_is_dropped_with_event(dp: Any, topo: H.Topology,
                                          events: Callable[..., list]) -> None:
    pa, pb = topo.pods["pa"], topo.pods["pb"]
    set_policy(dp, (EP_PA, [entry(EG, ID_PB, Proto.TCP, (8080, 8080))]),
               (EP_PB, [entry(IN, ID_PA, Proto.ANY, ALL)]))
    before = drops(dp, DropReason.POLICY_DENIED)
    with H.server(pb.name, pb.ip, 8081) as srv:
        assert H.try_connect(pa.name, pb.ip, 8081) is None
        assert srv.accepted == []
    seen = events(lambda e: e.is_drop and e.dport == 8081)
    drop = next(e for e in seen if e.is_drop and e.dport == 8081)
    assert drop.reason is DropReason.POLICY_DENIED
    assert (str(drop.src), str(drop.dst), drop.proto) == (pa.ip, pb.ip, 6)
    assert (drop.src_identity, drop.dst_identity, drop.endpoint_id) == (ID_PA, ID_PB, EP_PA)
    assert drop.direction is EG and drop.tcp_flags & 0x02
    assert drops(dp, DropReason.POLICY_DENIED) > before


def test_explicit_deny_and_ingress_side(dp: Any, topo: H.Topology,
                                        events: Callable[..., list]) -> None:
    pa, pb = topo.pods["pa"], topo.pods["pb"]
    set_policy(dp, (EP_PA, [entry(EG, ID_PB, Proto.ANY, ALL)]),
               (EP_PB, [entry(IN, ID_PA, Proto.TCP, (8082, 8082), L4Action.DENY, "deny-rule"),
                        entry(IN, ID_PA, Proto.TCP, (8083, 8090))]))
    with H.server(pb.name, pb.ip, 8082), H.server(pb.name, pb.ip, 8085):
        assert H.try_connect(pa.name, pb.ip, 8082) is None
        ok = H.connect(pa.name, pb.ip, 8085)
        assert ok is not None
        ok.close()
    seen = events(lambda e: e.is_drop and e.dport == 8082)
    drop = next(e for e in seen if e.is_drop and e.dport == 8082)
    assert drop.reason is DropReason.POLICY_DENY and drop.hook.name == "TO_ENDPOINT"
    assert dp.maps.policy.rule_names()[drop.rule_index] == "deny-rule"


def test_udp_allow_and_deny(dp: Any, topo: H.Topology) -> None:
    pa, pb = topo.pods["pa"], topo.pods["pb"]
    set_policy(dp, (EP_PA, [entry(EG, ID_PB, Proto.UDP, (5000, 5000))]),
               (EP_PB, [entry(IN, ID_PA, Proto.UDP, (5000, 5001))]))
    rx = H.make_socket(pb.name, socket.SOCK_DGRAM)
    rx2 = H.make_socket(pb.name, socket.SOCK_DGRAM)
    tx = H.make_socket(pa.name, socket.SOCK_DGRAM)
    with rx, rx2, tx:
        rx.bind((pb.ip, 5000))
        rx2.bind((pb.ip, 5001))
        tx.sendto(b"ping", (pb.ip, 5000))
        data, peer = rx.recvfrom(100)
        assert (data, peer[0]) == (b"ping", pa.ip)
        rx.sendto(b"pong", peer)  # the reply passes pa's default-deny ingress
        assert tx.recvfrom(100)[0] == b"pong"
        before = drops(dp, DropReason.POLICY_DENIED)
        tx.sendto(b"nope", (pb.ip, 5001))  # pa's egress has no entry for 5001
        rx2.settimeout(H.DROP_TIMEOUT_S)
        with pytest.raises(TimeoutError):
            rx2.recvfrom(100)
        assert drops(dp, DropReason.POLICY_DENIED) > before


def test_icmp_echo_needs_an_all_ports_rule(dp: Any, topo: H.Topology) -> None:
    pa, pb = topo.pods["pa"], topo.pods["pb"]
    ping = ["ip", "netns", "exec", pa.name, "ping", "-c1", "-W1", pb.ip]
    set_policy(dp, (EP_PA, [entry(EG, ID_PB, Proto.TCP, (80, 80))]),
               (EP_PB, [entry(IN, ID_PA, Proto.ANY, ALL)]))
    assert H.sh(*ping, check=False).returncode != 0
    set_policy(dp, (EP_PA, [entry(EG, ID_PB, Proto.ANY, ALL)]),
               (EP_PB, [entry(IN, ID_PA, Proto.ANY, ALL)]))
    assert H.sh(*ping, check=False).returncode == 0


# --- redirect to the proxy -------------------------------------------------------------------

def test_tcp_redirect_to_transparent_listener(dp: Any, topo: H.Topology,
                                              events: Callable[..., list]) -> None:
    from redirect.origdst import tcp_original_dst

    pa, pb = topo.pods["pa"], topo.pods["pb"]
    set_policy(dp, (EP_PA, [entry(EG, ID_PB, Proto.TCP, (8086, 8086), L4Action.REDIRECT_HTTP)]),
               (EP_PB, []))
    origdst: list[tuple[str, int]] = []

    def proxy(conn: socket.socket) -> None:
        origdst.append(tcp_original_dst(conn))
        data = conn.recv(100)
        conn.sendall(b"proxy:" + data)

    with H.server(topo.node1, "0.0.0.0", HTTP_PORT, transparent=True, on_conn=proxy) as px:
        s = H.connect(pa.name, pb.ip, 8086)
        assert s is not None
        with s:
            s.sendall(b"GET")
            assert s.recv(100) == b"proxy:GET"
            client_port = s.getsockname()[1]
        assert px.accepted[0] == ((pb.ip, 8086), (pa.ip, client_port))
    assert origdst == [(pb.ip, 8086)]
    seen = events(lambda e: e.dport == 8086)
    assert any(e.verdict is not None and e.verdict.name == "REDIRECTED" for e in seen)
    assert any("redirected" in r.flags for r in dp.maps.ct.items() if r.dport == 8086)


def test_udp_redirect_with_original_destination(dp: Any, topo: H.Topology) -> None:
    from redirect.origdst import ANCDATA_BYTES, make_transparent, udp_original_dst

    pa, pb = topo.pods["pa"], topo.pods["pb"]
    set_policy(dp, (EP_PA, [entry(EG, ID_PB, Proto.ANY, (53, 53), L4Action.REDIRECT_DNS)]),
               (EP_PB, []))
    lst = H.make_socket(topo.node1, socket.SOCK_DGRAM)
    reply = H.make_socket(topo.node1, socket.SOCK_DGRAM)
    client = H.make_socket(pa.name, socket.SOCK_DGRAM)
    with lst, reply, client:
        make_transparent(lst, recv_origdst=True)
        lst.bind(("0.0.0.0", DNS_PORT))
        client.sendto(b"query", (pb.ip, 53))
        data, anc, _flags, peer = lst.recvmsg(512, ANCDATA_BYTES)
        assert data == b"query" and peer[0] == pa.ip
        orig = udp_original_dst(anc)
        assert orig == (pb.ip, 53)
        # the answer leaves from the original destination, as the DNS proxy does
        make_transparent(reply)
        reply.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        reply.bind(orig)
        reply.sendto(b"answer", peer)
        data, src = client.recvfrom(100)
        assert (data, src) == (b"answer", (pb.ip, 53))
    # DNS over TCP goes to the same proxy port
    with H.server(topo.node1, "0.0.0.0", DNS_PORT, transparent=True) as px:
        s = H.connect(pa.name, pb.ip, 53)
        assert s is not None
        s.close()
        assert px.wait_accepted()[0][0] == (pb.ip, 53)


def test_redirect_without_listener_fails_closed(dp: Any, topo: H.Topology,
                                                events: Callable[..., list]) -> None:
    pa, pb = topo.pods["pa"], topo.pods["pb"]
    set_policy(dp, (EP_PA, [entry(EG, ID_PB, Proto.TCP, (8088, 8088), L4Action.REDIRECT_HTTP)]),
               (EP_PB, [entry(IN, ID_PA, Proto.ANY, ALL)]))
    before = drops(dp, DropReason.SOCKET_LOOKUP_FAILED)
    with H.server(pb.name, pb.ip, 8088) as srv:  # the real server must never see it
        assert H.try_connect(pa.name, pb.ip, 8088) is None
        assert srv.accepted == []
    assert drops(dp, DropReason.SOCKET_LOOKUP_FAILED) > before
    seen = events(lambda e: e.is_drop and e.dport == 8088)
    assert any(e.reason is DropReason.SOCKET_LOOKUP_FAILED for e in seen if e.is_drop)
    # proxy port 0 = the agent's proxy is not up: also dropped, with its own reason
    before = drops(dp, DropReason.PROXY_NOT_READY)
    dp.maps.set_proxy_ports(0, 0)
    try:
        with H.server(topo.node1, "0.0.0.0", HTTP_PORT, transparent=True) as px:
            assert H.try_connect(pa.name, pb.ip, 8088) is None
            assert px.accepted == []
    finally:
        dp.maps.set_proxy_ports(HTTP_PORT, DNS_PORT)
    assert drops(dp, DropReason.PROXY_NOT_READY) > before


def _relaying_proxy(node_ns: str, upstreams: list[socket.socket], mark: int, src_ip: str
                    ) -> Callable[[socket.socket], None]:
    """What the HTTP proxy does: connect upstream as the pod, marked, and relay once."""
    from redirect.origdst import make_transparent, tcp_original_dst

    def handle(conn: socket.socket) -> None:
        dst = tcp_original_dst(conn)
        up = H.make_socket(node_ns)  # the proxy lives in the node netns
        upstreams.append(up)
        make_transparent(up)
        up.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        up.bind((src_ip, 0))
        up.connect(dst)
        up.sendall(conn.recv(100))
        conn.sendall(up.recv(100))

    return handle


@pytest.mark.parametrize("dst_pod", ["pb", "pc"])  # local destination / other node
def test_proxy_upstream_is_not_redirected_and_replies_reach_it(
        dp: Any, topo: H.Topology, dst_pod: str) -> None:
    from redirect.marks import proxy_upstream_mark

    pa, dst = topo.pods["pa"], topo.pods[dst_pod]
    port = 8096 if dst_pod == "pb" else 8097
    peer_id = ID_PB if dst_pod == "pb" else ID_PC
    # pb's ingress entry for pa is a REDIRECT: an unmarked packet would be dropped there,
    # a marked one is accepted with the mark's identity (pa).
    set_policy(dp, (EP_PA, [entry(EG, peer_id, Proto.TCP, (port, port), L4Action.REDIRECT_HTTP)]),
               (EP_PB, [entry(IN, ID_PA, Proto.TCP, (port, port), L4Action.REDIRECT_HTTP)]))
    upstreams: list[socket.socket] = []
    handler = _relaying_proxy(topo.node1, upstreams, proxy_upstream_mark(ID_PA), pa.ip)
    try:
        with H.server(topo.node1, "0.0.0.0", HTTP_PORT, transparent=True,
                      on_conn=handler) as px, H.server(dst.name, dst.ip, port) as origin:
            s = H.connect(pa.name, dst.ip, port)
            assert s is not None
            with s:
                assert H.roundtrip(s, b"hello") == b"hello"
            assert len(px.accepted) == 1, "the proxy's own connection came back to it"
            assert [peer[0] for _local, peer in origin.accepted] == [pa.ip]
    finally:
        for up in upstreams:
            up.close()
    if dst_pod == "pb":
        proxied = [r for r in dp.maps.ct.items()
                   if r.dport == port and r.direction is IN and "from-proxy" in r.flags]
        assert proxied and proxied[0].src_identity == ID_PA


def test_ingress_redirect_from_other_node(dp: Any, topo: H.Topology) -> None:
    pb, pc = topo.pods["pb"], topo.pods["pc"]
    set_policy(dp, (EP_PB, [entry(IN, ID_PC, Proto.TCP, (8091, 8091), L4Action.REDIRECT_HTTP),
                            entry(IN, ID_PC, Proto.TCP, (8092, 8092))]))
    with H.server(topo.node1, "0.0.0.0", HTTP_PORT, transparent=True) as px, \
            H.server(pb.name, pb.ip, 8092) as origin:
        s = H.connect(pc.name, pb.ip, 8091)
        assert s is not None
        with s:
            assert H.roundtrip(s, b"x") == b"x"
        assert px.accepted[0][0] == (pb.ip, 8091) and px.accepted[0][1][0] == pc.ip
        plain = H.connect(pc.name, pb.ip, 8092)  # L4-only allow: straight to the pod
        assert plain is not None
        plain.close()
        assert origin.wait_accepted()[0][1][0] == pc.ip
        assert H.try_connect(pc.name, pb.ip, 8093) is None  # default deny at to_endpoint


def test_unmarked_traffic_cannot_skip_an_l7_ingress_rule(dp: Any, topo: H.Topology,
                                                         events: Callable[..., list]) -> None:
    """The node itself (identity host) reaches pb without passing a redirecting hook: an
    L7 (REDIRECT) ingress entry must then drop it rather than let it skip the proxy."""
    pb = topo.pods["pb"]
    set_policy(dp, (EP_PB, [entry(IN, 1, Proto.TCP, (8130, 8130), L4Action.REDIRECT_HTTP)]))
    with H.server(pb.name, pb.ip, 8130) as srv:
        assert H.try_connect(topo.node1, pb.ip, 8130) is None
        assert srv.accepted == []
    seen = events(lambda e: e.is_drop and e.dport == 8130)
    drop = next(e for e in seen if e.is_drop and e.dport == 8130)
    assert drop.reason is DropReason.POLICY_DENIED and drop.src_identity == 1


def _one_allowed_connection(dp: Any, topo: H.Topology, port: int) -> None:
    """pa -> pb:port allowed both ways, one connection opened and closed: two CT entries."""
    pa, pb = topo.pods["pa"], topo.pods["pb"]
    set_policy(dp, (EP_PA, [entry(EG, ID_PB, Proto.TCP, (port, port))]),
               (EP_PB, [entry(IN, ID_PA, Proto.TCP, (port, port))]))
    with H.server(pb.name, pb.ip, port):
        s = H.connect(pa.name, pb.ip, port)
        assert s is not None
        s.close()


def test_ct_expire_removes_idle_entries(dp: Any, topo: H.Topology) -> None:
    _one_allowed_connection(dp, topo, 8131)
    ct = dp.maps.ct
    mine = [r for r in ct.items() if r.dport == 8131]
    assert len(mine) == 2 and all(r.last_seen_ns >= r.created_ns for r in mine)
    assert ct.expire(idle_ns=3600 * 10**9) == 0  # everything here is seconds old
    far_future = max(r.last_seen_ns for r in mine) + 10**12
    assert ct.expire(idle_ns=10**9, now_ns=far_future) >= 2
    assert [r for r in ct.items() if r.dport == 8131] == []


def test_map_sizes_count_what_items_list(dp: Any, topo: H.Topology) -> None:
    """`sizes()` (what `l7gate status` shows, walked off the agent's loop) counts the keys
    alone: equal to the rows items() decodes, the policy map's live generation only; and
    BpfMap.count() follows entries added and removed."""
    _one_allowed_connection(dp, topo, 8132)
    m = dp.maps
    sizes = m.sizes()
    assert sizes == {"ipcache": len(m.ipcache.items()), "policy": len(m.policy.items()),
                     "fqdn": len(m.fqdn.items()), "ct": len(m.ct.items())}
    assert sizes["policy"] > 0 and sizes["ct"] >= 2
    # an entry of the other generation (a swap in progress) is not counted
    pol = m._m["l7g_policy_v1"]
    stale = S.PolicyKey(prefixlen=S.L7G_POLICY_FIXED_BITS + 16, gen=m.policy.generation() ^ 1,
                        direction=0, endpoint_id=EP_PA, identity=ID_PB, proto=6,
                        dport_be=socket.htons(9))
    pol.update(stale, S.PolicyVal())
    assert len(m.policy.items(all_generations=True)) == sizes["policy"] + 1
    assert m.sizes()["policy"] == sizes["policy"]
    assert pol.delete(stale)
    ct = m._m["l7g_ct_v1"]
    key = S.CtKey(saddr_be=0x0a0000fe, daddr_be=0x0a0000fd, sport_be=1, dport_be=2, proto=6)
    ct.update(key, S.CtVal(created_ns=1, last_seen_ns=1, packets=1))
    assert ct.count() == sizes["ct"] + 1
    assert ct.delete(key) and ct.count() == sizes["ct"]


# --- FQDN allowlist ----------------------------------------------------------------------------

def test_fqdn_allow_expiry_and_deny_precedence(dp: Any, topo: H.Topology,
                                              events: Callable[..., list]) -> None:
    from redirect.maps import FqdnPortRule

    pa = topo.pods["pa"]
    world = H.WORLD_IP
    set_policy(dp, (EP_PA, []))
    fq = dp.maps.fqdn  # type: ignore[attr-defined]
    rule = FqdnPortRule(Proto.TCP, 8094, 8095, L4Action.ALLOW)
    with H.server(topo.node2, world, 8094), H.server(topo.node2, world, 8095):
        assert H.try_connect(pa.name, world, 8094) is None  # not learned yet
        fq.set(EP_PA, world, [rule], 0, 7, name="api.example.com.")
        s = H.connect(pa.name, world, 8094)
        assert s is not None
        s.close()
        assert [(r.ip.compressed, r.name) for r in fq.items()] == [(world, "api.example.com.")]
        fq.set(EP_PA, world, [rule], time.clock_gettime_ns(time.CLOCK_BOOTTIME) - 1, 7)
        assert H.try_connect(pa.name, world, 8095) is None
        seen = events(lambda e: e.is_drop and e.dport == 8095)
        drop = next(e for e in seen if e.is_drop and e.dport == 8095)
        assert drop.reason is DropReason.FQDN_EXPIRED and drop.fqdn_name_id == 7
        # a policy-map DENY for world beats the allowlist
        fq.set(EP_PA, world, [rule], 0, 7)
        set_policy(dp, (EP_PA, [entry(EG, 2, Proto.TCP, (8095, 8095), L4Action.DENY)]))
        assert H.try_connect(pa.name, world, 8095) is None
        fq.delete(EP_PA, world)
    assert fq.items() == []


# --- events from asyncio, and the CLI over the pinned maps ------------------------------------

def test_event_reader_from_an_asyncio_loop(dp: Any, topo: H.Topology, reader: Any) -> None:
    import asyncio

    pa, pb = topo.pods["pa"], topo.pods["pb"]
    set_policy(dp, (EP_PA, []), (EP_PB, []))
    reader.poll(0)

    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        got: asyncio.Queue[Any] = asyncio.Queue()

        def ready() -> None:
            for e in reader.consume():
                got.put_nowait(e)

        loop.add_reader(reader.fileno(), ready)
        try:
            await loop.run_in_executor(None, H.try_connect, pa.name, pb.ip, 8120, 0.3)
            while True:
                e = await asyncio.wait_for(got.get(), H.IO_TIMEOUT_S)
                if e.is_drop and e.dport == 8120:
                    return [e]
        finally:
            loop.remove_reader(reader.fileno())

    [drop] = asyncio.run(main())
    assert drop.reason is DropReason.POLICY_DENIED
    assert reader.unparseable == 0 and reader.lost() == 0


def test_cli_lists_the_pinned_maps(dp: Any, topo: H.Topology,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from agent.cli import main

    tx = H.make_socket(topo.pods["pa"].name, socket.SOCK_DGRAM)
    with tx:  # one flow for `ct list`: pa's egress is not enforced for it
        dp.maps.policy.replace_all({}, enforcement={EP_PA: (True, False)})
        tx.sendto(b"ct", (topo.pods["pb"].ip, 8004))
        deadline = time.monotonic() + H.IO_TIMEOUT_S  # the veth hands it over asynchronously
        while time.monotonic() < deadline and not any(
                r.dport == 8004 for r in dp.maps.ct.items()):
            time.sleep(0.01)
        dp.maps.policy.replace_all(
            {EP_PA: [entry(EG, ID_PB, Proto.TCP, (8000, 8003), L4Action.REDIRECT_HTTP,
                           "default/web:egress[0]")]}, enforcement={EP_PA: (True, True)})
    base = ["--node", topo.node1, "--pin-root", H.PIN_ROOT, "-o", "json"]
    assert main(["bpf", "policy", "list", *base]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows == [{"generation": dp.maps.policy.generation(), "endpoint_id": EP_PA,
                     "direction": "egress", "peer_identity": ID_PB, "proto": "TCP",
                     "port": 8000, "port_prefix_bits": 14, "action": "REDIRECT_HTTP",
                     "rule_id": "default/web:egress[0]"}]
    assert main(["bpf", "ipcache", "list", *base]) == 0
    ipc = json.loads(capsys.readouterr().out)
    assert {"network": f"{topo.pods['pa'].ip}/32", "identity": ID_PA, "endpoint_id": EP_PA,
            "is_local_endpoint": True} in ipc
    assert main(["bpf", "ct", "list", *base]) == 0
    ct = json.loads(capsys.readouterr().out)
    assert any(r["dport"] == 8004 and r["direction"] == "egress" and r["proto"] == 17
               for r in ct)
    assert main(["bpf", "fqdn", "list", "--node", topo.node1, "--pin-root", H.PIN_ROOT]) == 0
    assert "(no entries)" in capsys.readouterr().out
    assert main(["bpf", "ct", "list", "--node", "nosuchnode", "--pin-root", H.PIN_ROOT]) == 1
