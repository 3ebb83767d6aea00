"""The datapath tests' helpers work on their own: the topology connects pods within and
across nodes without any BPF, the echo server records peers, and cleanup removes every
namespace. Failures here point at the harness, not at the datapath."""

from __future__ import annotations

import os
import socket

import pytest

from tests.integration import datapath_helpers as H

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network namespaces"),
]


def test_topology_without_bpf_connects_everything_and_cleans_up() -> None:
    with H.topology() as topo:
        pa, pb, pc = topo.pods["pa"], topo.pods["pb"], topo.pods["pc"]
        with H.server(pb.name, pb.ip, 7100) as srv, H.server(topo.node2, H.WORLD_IP, 7101):
            for src, dst_ip, port in ((pa, pb.ip, 7100), (pc, pb.ip, 7100),
                                      (pa, H.WORLD_IP, 7101)):
                s = H.connect(src.name, dst_ip, port)
                assert s is not None, (src.name, dst_ip)
                with s:
                    assert H.roundtrip(s, b"ping") == b"ping"
            peers = {peer[0] for _local, peer in srv.wait_accepted(2)}
            assert peers == {pa.ip, pc.ip}
        assert H.try_connect(pa.name, pb.ip, 7102) is None  # nothing listens: refused
        assert topo.ifindex(pa) > 0 and len(topo.mac(pa.name, "eth0")) == 17
        created = list(topo.created)
    listed = H.sh("ip", "netns", "list").stdout
    assert not any(name in listed for name in created)


def test_make_socket_lives_in_the_namespace() -> None:
    with H.topology() as topo:
        s = H.make_socket(topo.pods["pa"].name, socket.SOCK_DGRAM)
        with s:
            s.bind(("10.77.1.10", 0))  # only pa's netns has this address
        with pytest.raises(OSError):
            t = H.make_socket(None, socket.SOCK_DGRAM)
            with t:
                t.bind(("10.77.1.10", 0))
