"""Privileged datapath tests of the hard cases: atomic policy swaps, restarts that adopt
the pinned maps, and hostile packets from a pod (truncated, IP options, fragments, unknown
protocols, IPv6, spoofed sources) that must never bypass a deny nor break the datapath.
"""

from __future__ import annotations

import os
import socket
import warnings
from collections.abc import Callable
from typing import Any

import pytest

from policy.types import DropReason, L4Action, Proto
from tests.integration import datapath_helpers as H
from tests.integration.datapath_helpers import (
    ALL,
    EG,
    EP_PA,
    EP_PB,
    ID_PA,
    ID_PB,
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


def test_replace_all_changes_verdicts_for_new_flows_only(dp: Any, topo: H.Topology) -> None:
    pa, pb = topo.pods["pa"], topo.pods["pb"]
    allow = [(EP_PA, [entry(EG, ID_PB, Proto.TCP, (8100, 8101), rule="old")]),
             (EP_PB, [entry(IN, ID_PA, Proto.TCP, (8100, 8101), rule="old")])]
    set_policy(dp, *allow)
    gen_before = dp.maps.policy.generation()
    with H.server(pb.name, pb.ip, 8100), H.server(pb.name, pb.ip, 8101):
        old = H.connect(pa.name, pb.ip, 8100)
        assert old is not None
        with old:
            # the new policy allows only 8101 and no longer 8100
            set_policy(dp, (EP_PA, [entry(EG, ID_PB, Proto.TCP, (8101, 8101), rule="new")]),
                       (EP_PB, [entry(IN, ID_PA, Proto.TCP, (8101, 8101), rule="new")]))
            assert dp.maps.policy.generation() != gen_before
            assert H.roundtrip(old, b"still here") == b"still here"  # established survives
            assert H.try_connect(pa.name, pb.ip, 8100) is None  # new flow: denied
            fresh = H.connect(pa.name, pb.ip, 8101)
            assert fresh is not None
            fresh.close()
    rows = dp.maps.policy.items(all_generations=True)
    assert {r.rule_id for r in rows} == {"new"}  # the old generation is gone
    assert set(dp.maps.policy.rule_names().values()) == {"new"}


def test_enforcement_switches_with_the_policy(dp: Any, topo: H.Topology) -> None:
    pa, pb = topo.pods["pa"], topo.pods["pb"]
    pol = dp.maps.policy
    with H.server(pb.name, pb.ip, 8102):
        pol.replace_all({EP_PA: [], EP_PB: []}, enforcement={EP_PA: (True, False),
                                                             EP_PB: (False, True)})
        ok = H.connect(pa.name, pb.ip, 8102)  # nobody enforces this direction now
        assert ok is not None
        ok.close()
        pol.replace_all({EP_PA: [], EP_PB: []}, enforcement={EP_PA: (True, True),
                                                             EP_PB: (True, True)})
        assert H.try_connect(pa.name, pb.ip, 8102) is None


def test_restart_adopts_pinned_maps_and_keeps_connections(dp: Any, topo: H.Topology) -> None:
    from redirect.loader import Datapath

    pa, pb = topo.pods["pa"], topo.pods["pb"]
    set_policy(dp, (EP_PA, [entry(EG, ID_PB, Proto.TCP, (8110, 8110))]),
               (EP_PB, [entry(IN, ID_PA, Proto.TCP, (8110, 8110))]))
    before = (dp.maps.ipcache.items(), dp.maps.policy.items(), dp.maps.endpoints.items())
    with H.server(pb.name, pb.ip, 8110), H.server(pb.name, pb.ip, 8111):
        conn = H.connect(pa.name, pb.ip, 8110)
        assert conn is not None
        with conn:
            second = Datapath(topo.node1, pin_root=H.PIN_ROOT, http_proxy_port=H.HTTP_PORT,
                              dns_proxy_port=H.DNS_PORT, netns=topo.node1)
            try:
                second.load()
                after = (second.maps.ipcache.items(), second.maps.policy.items(),
                         second.maps.endpoints.items())
                assert after == before
                for short in ("pa", "pb"):  # the new agent replaces the filters
                    second.attach_endpoint(topo.pods[short].veth)
                second.attach_uplink("up0")
                assert H.roundtrip(conn, b"across the restart") == b"across the restart"
                assert H.try_connect(pa.name, pb.ip, 8111) is None  # still enforced
            finally:
                second.close()  # a clean stop: filters and pins stay
            assert H.roundtrip(conn, b"agent down") == b"agent down"
            assert H.try_connect(pa.name, pb.ip, 8111) is None
            for short in ("pa", "pb"):  # give the module's datapath its filters back
                dp.attach_endpoint(topo.pods[short].veth)
            dp.attach_uplink("up0")


def _scapy() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scapy warns about optional crypto backends
        from scapy.layers import inet, inet6, l2

    return l2, inet, inet6


def test_hostile_packets_never_bypass_a_deny(dp: Any, topo: H.Topology,
                                             events: Callable[..., list[Any]]) -> None:
    l2, inet, inet6 = _scapy()
    pa, pb = topo.pods["pa"], topo.pods["pb"]
    # pa may only reach pb on UDP 9000; everything below is denied or malformed
    set_policy(dp, (EP_PA, [entry(EG, ID_PB, Proto.UDP, (9000, 9000))]),
               (EP_PB, [entry(IN, ID_PA, Proto.ANY, ALL)]))
    eth = l2.Ether(src=topo.mac(pa.name, "eth0"), dst=topo.mac(pa.node_ns, pa.veth))
    ip = dict(src=pa.ip, dst=pb.ip)
    cases: list[tuple[bytes, DropReason]] = [
        # IP header claims TCP but only 2 bytes follow
        (bytes(eth / inet.IP(proto=6, **ip) / b"\x00\x50"),
         DropReason.CT_TRUNCATED_OR_INVALID_HEADER),
        # ihl = 4 (< 5): not a valid IPv4 header
        (bytes(eth)[:12] + b"\x08\x00" + bytes.fromhex("4400001c0000000040060000") +
         socket.inet_aton(pa.ip) + socket.inet_aton(pb.ip) + b"\x00" * 8,
         DropReason.CT_TRUNCATED_OR_INVALID_HEADER),
        # IP options (ihl 6): the ports are read after the options, 9001 is denied
        (bytes(eth / inet.IP(options=[inet.IPOption_RR()], **ip) / inet.UDP(dport=9001)),
         DropReason.POLICY_DENIED),
        # a later fragment of a datagram to the allowed port: no L4 header to decide on
        (bytes(eth / inet.IP(frag=185, proto=17, **ip) / (b"x" * 40)),
         DropReason.IP_FRAGMENTATION_NOT_SUPPORTED),
        # an L4 protocol policy cannot express (ANY = TCP/UDP/SCTP)
        (bytes(eth / inet.IP(proto=253, **ip) / (b"x" * 20)), DropReason.UNKNOWN_L4_PROTOCOL),
        # IPv6 from an enforced pod: fail closed
        (bytes(eth / inet6.IPv6(src="fd00::1", dst="fd00::2") / inet.UDP(dport=9000)),
         DropReason.UNSUPPORTED_L3_PROTOCOL),
        # a spoofed source address (another pod's) to an allowed port
        (bytes(eth / inet.IP(src=topo.pods["pc"].ip, dst=pb.ip) / inet.UDP(dport=9000)),
         DropReason.INVALID_SOURCE_IP),
    ]
    rx = H.make_socket(pb.name, socket.SOCK_DGRAM)
    with rx:
        rx.bind(("0.0.0.0", 9000))
        rx.settimeout(H.DROP_TIMEOUT_S)
        for frame, reason in cases:
            before = drops(dp, reason)
            H.send_frame(pa.name, "eth0", frame)
            seen = events(lambda e, r=reason: e.is_drop and e.reason is r)
            assert any(e.is_drop and e.reason is reason for e in seen), reason
            assert drops(dp, reason) > before, reason
        with pytest.raises(TimeoutError):
            rx.recvfrom(100)  # none of it reached the pod
        # the datapath still works: a well-formed allowed datagram arrives
        tx = H.make_socket(pa.name, socket.SOCK_DGRAM)
        with tx:
            tx.sendto(b"fine", (pb.ip, 9000))
            rx.settimeout(H.IO_TIMEOUT_S)
            assert rx.recvfrom(100)[0] == b"fine"


def test_arp_passes_on_enforced_endpoints(dp: Any, topo: H.Topology) -> None:
    pa, pb = topo.pods["pa"], topo.pods["pb"]
    set_policy(dp, (EP_PA, [entry(EG, ID_PB, Proto.ANY, ALL, L4Action.ALLOW)]),
               (EP_PB, [entry(IN, ID_PA, Proto.ANY, ALL)]))
    H.sh("ip", "-n", pa.name, "neigh", "flush", "all")
    ping = H.sh("ip", "netns", "exec", pa.name, "ping", "-c1", "-W2", pb.ip, check=False)
    assert ping.returncode == 0, ping.stdout + ping.stderr


def test_teardown_removes_everything_and_is_idempotent(dp: Any, topo: H.Topology) -> None:
    """Runs last in this module: the fixture's own teardown then runs a second time."""
    from redirect import routing, tc

    node = topo.node1
    assert tc.has_filter("lxca", "ingress", node) and tc.has_filter("lxca", "egress", node)
    assert routing.is_installed(node) and os.path.isdir(dp.pin_dir)
    dp.attach_endpoint("lxca")  # repeating an attach is harmless
    dp.install_routing()
    dp.teardown()
    dp.teardown()
    for dev, direction in (("lxca", "ingress"), ("lxca", "egress"), ("lxcb", "egress"),
                           ("up0", "ingress")):
        assert not tc.has_filter(dev, direction, node), (dev, direction)
    assert not routing.is_installed(node)
    assert not os.path.exists(dp.pin_dir)
    tc.detach("lxca", "ingress", node)  # detaching what is gone is success
    tc.detach("no-such-dev", "egress", node)
