"""Compile the datapath with bcc, adopt or create its pinned maps, attach it with tc.

`Datapath(node, ...)` is the one owner of a node's BPF objects in the agent:
- `load()` compiles bpf/ (one text: codes, maps, shared code, the three programs; bcc
  rewrites map calls only in the main text, so the files are concatenated) with the
  configuration passed as -D flags, and adopts the maps pinned under
  `<pin_root>/<node>/` (BPF_TABLE_PINNED) with their contents, or creates them.
- `attach_endpoint(ifname)` (from_endpoint at tc ingress + to_endpoint at tc egress of the
  pod veth's node side), `attach_uplink(ifname)` (from_netdev at tc ingress),
  `install_routing()` (the tproxy fwmark rule and local route). All idempotent.
- `close()` (also `__exit__`) releases this process's handles only: filters, routing and
  pins stay, so policy keeps being enforced while the agent is down or restarting.
- `teardown()` removes the filters of this node, the routing and the pins (tests,
  `sandbox down`).
`netns` (a name under /run/netns or a path) is where devices and routing live; None means
the caller's netns (the agent runs inside its node's netns via nsenter). bcc is imported
only in `load()`.
"""

from __future__ import annotations

import os
import shutil
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from policy.errors import RedirectError, map_errors
from redirect import routing, tc
from redirect.bpfsys import BpfMap
from redirect.maps import MAP_NAMES, DatapathMaps
from redirect.netns import netns as enter_netns

BPF_DIR = Path(__file__).resolve().parent.parent / "bpf"  # installed as package data too
SOURCE_FILES = (
    "include/l7g_codes.h", "include/l7g_maps.h", "include/l7g_datapath.h",
    "from_endpoint.c", "to_endpoint.c", "from_netdev.c",
)
SYSTEM_INCLUDES = """#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/in.h>
"""
PROGRAMS = ("from_endpoint", "to_endpoint", "from_netdev")
FILTER_NAME_PREFIX = "l7g_"  # tc filter names: l7g_from_endpoint, ...
DEFAULT_PIN_ROOT = "/sys/fs/bpf/l7gate"
ERROR_TEXT_MAX = 400  # bcc errors can embed the whole source
BASE_CFLAGS = ("-Wno-pragma-once-outside-header",)  # the headers are concatenated


def pin_dir_of(node: str, pin_root: str = DEFAULT_PIN_ROOT) -> str:
    if not node or "/" in node or node.startswith("."):
        raise RedirectError(f"bad node name for a pin directory: {node!r}")
    return os.path.join(pin_root, node)


def build_cflags(pin_dir: str, extra: Sequence[str] = ()) -> list[str]:
    for flag in extra:
        if not flag.startswith("-D"):
            raise RedirectError(f"cflags_extra takes -D definitions only, not {flag!r}")
    return [*BASE_CFLAGS, f'-DL7G_PIN_DIR="{pin_dir}"', *extra]


def build_source() -> str:
    parts = [SYSTEM_INCLUDES]
    for rel in SOURCE_FILES:
        parts.append(f"/* ---- bpf/{rel} ---- */\n{(BPF_DIR / rel).read_text()}")
    return "\n".join(parts)


def dump_source(node: str = "NODE", pin_root: str = DEFAULT_PIN_ROOT,
                cflags_extra: Sequence[str] = ()) -> str:
    """The effective source and flags, as `l7gate bpf dump-source` prints them."""
    flags = build_cflags(pin_dir_of(node, pin_root), cflags_extra)
    return "/* cflags: " + " ".join(flags) + " */\n" + build_source()


class Datapath:
    def __init__(self, node: str, pin_root: str = DEFAULT_PIN_ROOT,
                 http_proxy_port: int = 15001, dns_proxy_port: int = 15053,
                 cflags_extra: Sequence[str] = (), netns: str | None = None) -> None:
        self.node = node
        self.pin_dir = pin_dir_of(node, pin_root)
        self.http_proxy_port = http_proxy_port
        self.dns_proxy_port = dns_proxy_port
        self.cflags = build_cflags(self.pin_dir, cflags_extra)
        self.netns = netns
        self._bpf: Any = None
        self._prog_fds: dict[str, int] = {}
        self._maps: DatapathMaps | None = None

    # --- lifecycle --------------------------------------------------------------------
    def load(self) -> Datapath:
        import bcc  # only here: everything else imports without bcc

        os.makedirs(self.pin_dir, exist_ok=True)
        try:
            self._bpf = bcc.BPF(text=build_source().encode(),
                                cflags=list(self.cflags))
            for name in PROGRAMS:
                self._prog_fds[name] = self._bpf.load_func(name.encode(),
                                                          bcc.BPF.SCHED_CLS).fd
        except Exception as exc:  # bcc raises bare Exception for compile/verifier errors
            self.close()
            raise RedirectError(
                f"loading the datapath for {self.node}: {str(exc)[:ERROR_TEXT_MAX]}") from exc
        self._maps = DatapathMaps(
            {n: BpfMap(self._bpf[n.encode()].map_fd, n) for n in MAP_NAMES})
        self._maps.set_proxy_ports(self.http_proxy_port, self.dns_proxy_port)
        return self

    def close(self) -> None:
        if self._bpf is not None:
            self._bpf.cleanup()
        self._bpf = None
        self._maps = None
        self._prog_fds = {}

    def __enter__(self) -> Datapath:
        return self.load()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: types.TracebackType | None) -> None:
        self.close()

    # --- accessors ----------------------------------------------------------------------
    @property
    def maps(self) -> DatapathMaps:
        if self._maps is None:
            raise RedirectError("datapath not loaded")
        return self._maps

    @property
    def bpf(self) -> Any:
        """The bcc object (events.EventReader opens the ring buffer through it)."""
        if self._bpf is None:
            raise RedirectError("datapath not loaded")
        return self._bpf

    def program_fd(self, name: str) -> int:
        if name not in self._prog_fds:
            raise RedirectError(f"program {name} not loaded")
        return self._prog_fds[name]

    def dump_source(self) -> str:
        return "/* cflags: " + " ".join(self.cflags) + " */\n" + build_source()

    # --- attach -------------------------------------------------------------------------
    def attach_endpoint(self, ifname: str) -> int:
        """Attach to a pod veth's node side; returns its ifindex (the endpoints map key)."""
        index = tc.attach(ifname, self.program_fd("from_endpoint"),
                          FILTER_NAME_PREFIX + "from_endpoint", "ingress", self.netns)
        tc.attach(ifname, self.program_fd("to_endpoint"),
                  FILTER_NAME_PREFIX + "to_endpoint", "egress", self.netns)
        return index

    def detach_endpoint(self, ifname: str) -> None:
        tc.detach(ifname, "ingress", self.netns)
        tc.detach(ifname, "egress", self.netns)

    def attach_uplink(self, ifname: str) -> int:
        return tc.attach(ifname, self.program_fd("from_netdev"),
                         FILTER_NAME_PREFIX + "from_netdev", "ingress", self.netns)

    def detach_uplink(self, ifname: str) -> None:
        tc.detach(ifname, "ingress", self.netns)

    def install_routing(self) -> None:
        routing.install(self.netns)

    def teardown(self) -> None:
        """Remove everything of this node: our tc filters, the routing, the pins."""
        self.close()
        teardown(self.node, pin_dir=self.pin_dir, netns=self.netns)


def _our_filtered_links(netns: str | None) -> list[tuple[str, tc.Direction]]:
    found: list[tuple[str, tc.Direction]] = []
    try:
        with enter_netns(netns):
            ipr = IPRoute()
    except RedirectError:
        return found
    try:
        with map_errors({NetlinkError: RedirectError}):
            for link in ipr.get_links():
                name = link.get_attr("IFLA_IFNAME")
                for direction in ("ingress", "egress"):
                    try:
                        filters = ipr.get_filters(index=link["index"],
                                                  parent=tc.PARENT[direction])
                    except NetlinkError:
                        continue
                    for f in filters:
                        opts = f.get_attr("TCA_OPTIONS")
                        fname = opts.get_attr("TCA_BPF_NAME") if opts else None
                        if fname and str(fname).startswith(FILTER_NAME_PREFIX):
                            found.append((name, direction))
                            break
    finally:
        ipr.close()
    return found


def teardown(node: str, pin_root: str = DEFAULT_PIN_ROOT, pin_dir: str | None = None,
             netns: str | None = None) -> None:
    """Idempotent removal of a node's datapath (filters named l7g_*, routing, pins)."""
    for ifname, direction in _our_filtered_links(netns):
        tc.detach(ifname, direction, netns)
    routing.remove(netns)
    path = pin_dir or pin_dir_of(node, pin_root)
    if os.path.isdir(path):
        shutil.rmtree(path)  # unlinking a pin drops the map once no program holds it
