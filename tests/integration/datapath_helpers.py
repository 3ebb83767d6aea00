"""Test helpers for the datapath integration tests: a two-node netns topology, sockets
created inside a netns, an echo server thread, and raw frames.

Topology (names carry the `l7gt-<pid>-dp` prefix, addresses never leave the namespaces):
  node1 netns: lxca <-> pod pa (10.77.1.10), lxcb <-> pod pb (10.77.1.11),
               up0 192.168.77.1/24 <-> node2's up0 192.168.77.2/24
  node2 netns: lxcc <-> pod pc (10.77.2.10)
Pods use a /32 address and a default route through their eth0; the node side answers ARP
by proxy_arp and routes the /32s. `Topology.destroy()` removes every netns it created.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from policy.types import DatapathEntry, Direction, DropReason, L4Action, Proto
from redirect.netns import netns

PREFIX = f"l7gt-{os.getpid()}-dp"
IO_TIMEOUT_S = 2.0  # bound on every socket wait in the tests (machine may be busy)
WORLD_IP = "192.168.88.1"
SERVER_IDLE_S = 30.0  # a served connection may idle this long (e.g. across a re-load)
DROP_TIMEOUT_S = 0.8  # how long a connect waits before we call it dropped


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=check, capture_output=True, text=True,
                          timeout=30)


@dataclass
class Pod:
    name: str  # netns name
    ip: str
    node_ns: str
    veth: str  # node-side name


@dataclass
class Topology:
    node1: str = f"{PREFIX}-n1"
    node2: str = f"{PREFIX}-n2"
    pods: dict[str, Pod] = field(default_factory=dict)
    created: list[str] = field(default_factory=list)

    def _ns(self, name: str) -> None:
        sh("ip", "netns", "add", name)
        self.created.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        sh("ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0",
           "net.ipv4.conf.default.rp_filter=0")

    def build(self) -> Topology:
        for n in (self.node1, self.node2):
            self._ns(n)
            sh("ip", "netns", "exec", n, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        sh("ip", "link", "add", "up0", "netns", self.node1, "type", "veth", "peer", "name",
           "up0", "netns", self.node2)
        for n, mine, peer_net in ((self.node1, "192.168.77.1/24", "10.77.2.0/24"),
                                  (self.node2, "192.168.77.2/24", "10.77.1.0/24")):
            sh("ip", "-n", n, "addr", "add", mine, "dev", "up0")
            sh("ip", "-n", n, "link", "set", "up0", "up")
            via = "192.168.77.2" if n == self.node1 else "192.168.77.1"
            sh("ip", "-n", n, "route", "add", peer_net, "via", via)
        # a "world" address outside every pod and node network, for FQDN tests
        sh("ip", "-n", self.node2, "addr", "add", f"{WORLD_IP}/32", "dev", "lo")
        sh("ip", "-n", self.node1, "route", "add", f"{WORLD_IP}/32", "via", "192.168.77.2")
        self.add_pod("pa", "10.77.1.10", self.node1, "lxca")
        self.add_pod("pb", "10.77.1.11", self.node1, "lxcb")
        self.add_pod("pc", "10.77.2.10", self.node2, "lxcc")
        return self

    def add_pod(self, short: str, ip: str, node_ns: str, veth: str) -> Pod:
        name = f"{PREFIX}-{short}"
        self._ns(name)
        sh("ip", "link", "add", veth, "netns", node_ns, "type", "veth", "peer", "name", "eth0",
           "netns", name)
        sh("ip", "-n", name, "addr", "add", f"{ip}/32", "dev", "eth0")
        sh("ip", "-n", name, "link", "set", "eth0", "up")
        sh("ip", "-n", name, "route", "add", "default", "dev", "eth0", "scope", "link")
        sh("ip", "-n", node_ns, "link", "set", veth, "up")
        sh("ip", "netns", "exec", node_ns, "sysctl", "-qw",
           f"net.ipv4.conf.{veth}.proxy_arp=1",
           f"net.ipv4.neigh.{veth}.proxy_delay=0")  # default: up to 0.8 s per ARP
        sh("ip", "-n", node_ns, "route", "add", f"{ip}/32", "dev", veth)
        pod = Pod(name, ip, node_ns, veth)
        self.pods[short] = pod
        return pod

    def ifindex(self, pod: Pod) -> int:
        out = json.loads(sh("ip", "-n", pod.node_ns, "-j", "link", "show", pod.veth).stdout)
        return int(out[0]["ifindex"])

    def mac(self, ns: str, dev: str) -> str:
        out = json.loads(sh("ip", "-n", ns, "-j", "link", "show", dev).stdout)
        return str(out[0]["address"])

    def destroy(self) -> None:
        for name in reversed(self.created):
            sh("ip", "netns", "del", name, check=False)
        self.created.clear()


def stale_namespaces() -> list[str]:
    """Namespaces left by a crashed run of *this* process id (never others')."""
    out = sh("ip", "netns", "list", check=False).stdout.split()
    return [n for n in out if n.startswith(PREFIX)]


def make_socket(ns: str | None, kind: int = socket.SOCK_STREAM) -> socket.socket:
    with netns(ns):
        s = socket.socket(socket.AF_INET, kind)
    s.settimeout(IO_TIMEOUT_S)
    return s


def try_connect(ns: str, ip: str, port: int, timeout_s: float = DROP_TIMEOUT_S
                ) -> socket.socket | None:
    """A connected socket, or None if the SYN got no answer within the timeout."""
    s = make_socket(ns)
    s.settimeout(timeout_s)
    try:
        s.connect((ip, port))
    except (TimeoutError, ConnectionRefusedError, OSError):
        s.close()
        return None
    s.settimeout(IO_TIMEOUT_S)
    return s


def connect(ns: str, ip: str, port: int) -> socket.socket | None:
    """For connections expected to succeed: a generous timeout (the machine may be busy)."""
    return try_connect(ns, ip, port, IO_TIMEOUT_S)


def roundtrip(s: socket.socket, payload: bytes) -> bytes:
    s.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = s.recv(4096)
        if not chunk:
            break
        got += chunk
    return got


class Server:
    """TCP echo server in a netns on a thread; records peer and local addresses."""

    def __init__(self, ns: str | None, ip: str, port: int, transparent: bool = False,
                 on_conn: Callable[[socket.socket], None] | None = None) -> None:
        self.sock = make_socket(ns)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if transparent:
            from redirect.origdst import make_transparent

            make_transparent(self.sock)
        self.sock.bind((ip, port))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.accepted: list[tuple[tuple[str, int], tuple[str, int]]] = []  # (local, peer)
        self.on_conn = on_conn
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def wait_accepted(self, count: int = 1, timeout_s: float = IO_TIMEOUT_S
                      ) -> list[tuple[tuple[str, int], tuple[str, int]]]:
        """The accepted list once it holds `count` entries (or the timeout passed)."""
        deadline = time.monotonic() + timeout_s
        while len(self.accepted) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return list(self.accepted)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            conn.settimeout(SERVER_IDLE_S)
            self._conns.append(conn)
            self.accepted.append((conn.getsockname(), peer))
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            if self.on_conn is not None:
                self.on_conn(conn)
                return
            while True:
                data = conn.recv(4096)
                if not data:
                    return
                conn.sendall(data)
        except OSError:
            return

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        for c in self._conns:
            c.close()
        self.sock.close()


@contextlib.contextmanager
def server(ns: str | None, ip: str, port: int, **kw: object) -> Iterator[Server]:
    srv = Server(ns, ip, port, **kw)  # type: ignore[arg-type]
    try:
        yield srv
    finally:
        srv.close()


def send_frame(ns: str, dev: str, frame: bytes) -> None:
    """Send one raw Ethernet frame out of `dev` in `ns` (AF_PACKET)."""
    with netns(ns):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    try:
        s.bind((dev, 0))
        s.send(frame)
    finally:
        s.close()


# --- datapath fixtures shared by the test_datapath*.py modules ---------------------------

ID_PA, ID_PB, ID_PC = 1001, 1002, 2001  # pod identities (>= 256, like Cilium's)
EP_PA, EP_PB = 11, 12
HTTP_PORT, DNS_PORT = 15001, 15053
PIN_ROOT = f"/sys/fs/bpf/l7gt-{os.getpid()}"
ALL = (0, 65535)
EVENT_WAIT_S = 3.0
EG, IN = Direction.EGRESS, Direction.INGRESS


def entry(direction: Direction, peer: int, proto: Proto, ports: tuple[int, int],
          action: L4Action = L4Action.ALLOW, rule: str = "test") -> DatapathEntry:
    return DatapathEntry(direction, peer, proto, ports[0], ports[1], action, rule)


def set_policy(dp: Any, *pairs: tuple[int, list[DatapathEntry]]) -> None:
    dp.maps.policy.replace_all(dict(pairs))


def drops(dp: Any, reason: DropReason) -> int:
    return int(dp.maps.counters().drops.get(reason, 0))


@contextlib.contextmanager
def topology() -> Iterator[Topology]:
    for stale in stale_namespaces():
        sh("ip", "netns", "del", stale, check=False)
    t = Topology()
    try:
        t.build()
        yield t
    finally:
        t.destroy()


def fill_base_maps(dp: Any, topo: Topology) -> None:
    from redirect.maps import EndpointConfig

    m = dp.maps
    pa, pb, pc = topo.pods["pa"], topo.pods["pb"], topo.pods["pc"]
    m.ipcache.set(f"{pa.ip}/32", ID_PA, EP_PA, is_local_endpoint=True)
    m.ipcache.set(f"{pb.ip}/32", ID_PB, EP_PB, is_local_endpoint=True)
    m.ipcache.set(f"{pc.ip}/32", ID_PC)
    m.ipcache.set("192.168.77.1/32", 1)  # host
    m.ipcache.set("192.168.77.2/32", 6)  # remote-node
    for pod, ep, ident in ((pa, EP_PA, ID_PA), (pb, EP_PB, ID_PB)):
        m.endpoints.set(topo.ifindex(pod),
                        EndpointConfig(ep, ident, ipaddress.IPv4Address(pod.ip), True, True))


@contextlib.contextmanager
def datapath(topo: Topology, pin_root: str = PIN_ROOT) -> Iterator[Any]:
    """A loaded, attached Datapath for node1; torn down (filters, routing, pins) after."""
    from redirect.loader import Datapath

    d = Datapath(topo.node1, pin_root=pin_root, http_proxy_port=HTTP_PORT,
                 dns_proxy_port=DNS_PORT, netns=topo.node1)
    try:
        d.load()
        fill_base_maps(d, topo)
        for short in ("pa", "pb"):
            d.attach_endpoint(topo.pods[short].veth)
        d.attach_uplink("up0")
        d.install_routing()
        yield d
    finally:
        d.teardown()
        shutil.rmtree(pin_root, ignore_errors=True)


def event_waiter(reader: Any) -> Callable[..., list[Any]]:
    """Drop pending events; return wait(pred, timeout_s) -> events seen until pred held."""
    reader.poll(0)

    def wait(pred: Callable[[Any], bool], timeout_s: float = EVENT_WAIT_S) -> list[Any]:
        seen: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            seen += reader.poll(100)
            if any(pred(e) for e in seen):
                break
        return seen

    return wait
