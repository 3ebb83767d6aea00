"""Attach/detach one BPF program as a tc clsact direct-action filter (pyroute2).

`TcAttach(ifname, fd, name, direction)` is a context manager; `attach()`/`detach()` are also
callable on their own and idempotent: attach atomically replaces a stale filter of ours at
the same priority (NLM_F_REPLACE, so a restarting agent never leaves the device without a
filter), detach treats "no such device/filter" as success. One filter per device and
direction (fixed priority FILTER_PRIO, handle FILTER_HANDLE). `netns` names the namespace
holding the device (None: the caller's). pyroute2 errors become `RedirectError`.
"""

from __future__ import annotations

import errno
import types
from typing import Literal

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from policy.errors import RedirectError, map_errors
from redirect.netns import netns as enter_netns

PARENT = {"ingress": 0xFFFFFFF2, "egress": 0xFFFFFFF3}  # TC_H_MIN_INGRESS / _EGRESS of clsact
FILTER_PRIO = 1  # our filter runs first; one per device and direction
FILTER_HANDLE = 1
ETH_P_ALL = 0x0003  # linux/if_ether.h: the filter sees every EtherType
_GONE = (errno.ENOENT, errno.ENODEV, errno.EINVAL)  # "not there" answers on removal
Direction = Literal["ingress", "egress"]


def _ifindex(ipr: IPRoute, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return int(found[0]) if found else None


def _delete_filter(ipr: IPRoute, index: int, direction: Direction) -> None:
    try:
        ipr.tc("del-filter", "bpf", index, FILTER_HANDLE, parent=PARENT[direction],
               prio=FILTER_PRIO, protocol=ETH_P_ALL)
    except NetlinkError as exc:
        if exc.code not in _GONE:
            raise


def attach(ifname: str, fd: int, name: str, direction: Direction,
           netns: str | None = None) -> int:
    """Attach program `fd` on `ifname`; returns the device's ifindex."""
    with enter_netns(netns), map_errors({NetlinkError: RedirectError, OSError: RedirectError}):
        ipr = IPRoute()
    try:
        with map_errors({NetlinkError: RedirectError}):
            index = _ifindex(ipr, ifname)
            if index is None:
                raise RedirectError(f"tc attach {name}: no device {ifname}")
            try:
                ipr.tc("add", "clsact", index)
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:
                    raise
            # replace, not delete + add: no window without enforcement on a restart
            ipr.tc("replace-filter", "bpf", index, FILTER_HANDLE, fd=fd, name=name,
                   parent=PARENT[direction], prio=FILTER_PRIO, protocol=ETH_P_ALL,
                   classid=1, direct_action=True)
            return index
    finally:
        ipr.close()


def detach(ifname: str, direction: Direction, netns: str | None = None) -> None:
    """Remove our filter (not the clsact qdisc: others may use it). Missing = success."""
    try:
        with enter_netns(netns):
            ipr = IPRoute()
    except RedirectError:
        return  # the namespace is gone, and the device with it
    try:
        with map_errors({NetlinkError: RedirectError}):
            index = _ifindex(ipr, ifname)
            if index is not None:
                _delete_filter(ipr, index, direction)
    finally:
        ipr.close()


def has_filter(ifname: str, direction: Direction, netns: str | None = None) -> bool:
    with enter_netns(netns):
        ipr = IPRoute()
    try:
        with map_errors({NetlinkError: RedirectError}):
            index = _ifindex(ipr, ifname)
            if index is None:
                return False
            try:
                filters = ipr.get_filters(index=index, parent=PARENT[direction])
            except NetlinkError as exc:
                if exc.code in _GONE:
                    return False
                raise
            return any(f.get_attr("TCA_KIND") == "bpf" for f in filters)
    finally:
        ipr.close()


class TcAttach:
    """`with TcAttach("lxc1", fd, "from_endpoint", "ingress"):` -- removed on exit."""

    def __init__(self, ifname: str, fd: int, name: str, direction: Direction,
                 netns: str | None = None) -> None:
        self.ifname, self.fd, self.name, self.direction, self.netns = (
            ifname, fd, name, direction, netns)
        self.ifindex: int | None = None

    def __enter__(self) -> TcAttach:
        self.ifindex = attach(self.ifname, self.fd, self.name, self.direction, self.netns)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: types.TracebackType | None) -> None:
        detach(self.ifname, self.direction, self.netns)
