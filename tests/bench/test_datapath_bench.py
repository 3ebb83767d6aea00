"""Datapath benchmark (run by `make bench`; prints figures, asserts no timing).

Figures: datapath compile+load time; `replace_all` time for a node-sized policy; and the
TCP connection rate (connect + 1 echo + close, pod to pod on one node) with the programs
attached relative to the same topology without them (ratio: 1.0 = no cost). The
connection loop is bounded in count.
"""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from policy.types import L4Action, Proto
from tests.integration import datapath_helpers as H
from tests.integration.datapath_helpers import EG, EP_PA, EP_PB, ID_PA, ID_PB, IN, entry

pytestmark = [
    pytest.mark.bench,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: netns, tc and BPF"),
]
N_CONNECTIONS = 400  # per measurement: enough for a stable rate, < 1 s each
N_POLICY_ENDPOINTS = 110  # Kubernetes' default max pods per node
N_ENTRIES_PER_ENDPOINT = 50


def _conn_rate(topo: H.Topology, port: int) -> float:
    pa, pb = topo.pods["pa"], topo.pods["pb"]
    with H.server(pb.name, pb.ip, port):
        start = time.perf_counter()
        for _ in range(N_CONNECTIONS):
            s = H.connect(pa.name, pb.ip, port)
            assert s is not None
            with s:
                H.roundtrip(s, b"x")
        return N_CONNECTIONS / (time.perf_counter() - start)


def test_datapath_figures() -> None:
    from redirect.loader import Datapath

    with H.topology() as topo:
        base = _conn_rate(topo, 7000)
        t0 = time.perf_counter()
        with H.datapath(topo) as dp:
            load_s = time.perf_counter() - t0
            big: dict[int, list[Any]] = {
                ep: [entry(IN, 5000 + i, Proto.TCP, (1000 + i, 1000 + 2 * i), rule=f"r{i}")
                     for i in range(N_ENTRIES_PER_ENDPOINT)]
                for ep in range(100, 100 + N_POLICY_ENDPOINTS)}
            t1 = time.perf_counter()
            dp.maps.policy.replace_all(big)
            swap_s = time.perf_counter() - t1
            n_keys = len(dp.maps.policy.items())
            dp.maps.policy.replace_all({
                EP_PA: [entry(EG, ID_PB, Proto.TCP, (7000, 7001))],
                EP_PB: [entry(IN, ID_PA, Proto.TCP, (7000, 7001), L4Action.ALLOW)]})
            with_bpf = _conn_rate(topo, 7001)
            t2 = time.perf_counter()
            Datapath(topo.node1, pin_root=H.PIN_ROOT, netns=topo.node1).load().close()
            adopt_s = time.perf_counter() - t2
    print(f"\ndatapath: compile+load+attach {load_s:.2f} s; re-load adopting pins {adopt_s:.2f} s")
    print(f"datapath: replace_all of {N_POLICY_ENDPOINTS}x{N_ENTRIES_PER_ENDPOINT} entries "
          f"({n_keys} LPM keys) {swap_s:.2f} s")
    print(f"datapath: TCP conn/s without {base:.0f}, with {with_bpf:.0f}, "
          f"ratio {with_bpf / base:.2f}")
