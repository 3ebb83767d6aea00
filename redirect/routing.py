"""The tproxy routing of a node netns: `ip rule fwmark TPROXY_MARK/TPROXY_MASK lookup
TPROXY_TABLE` and `ip route add local 0.0.0.0/0 dev lo table TPROXY_TABLE`.

Without them a packet that BPF assigned to a proxy socket (bpf_sk_assign + skb->mark) is
routed towards its original destination instead of being delivered locally, and the SYN
is lost. install() and remove() are idempotent; pyroute2 errors become `RedirectError`.
"""

from __future__ import annotations

import errno

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from policy.errors import RedirectError, map_errors
from redirect.marks import TPROXY_MARK, TPROXY_MASK, TPROXY_RULE_PRIORITY, TPROXY_TABLE
from redirect.netns import netns as enter_netns

RTN_LOCAL = 2  # linux/rtnetlink.h
RT_SCOPE_HOST = 254  # a local route needs host scope (what `ip route add local` sets)
AF_INET = 2
_ABSENT = (errno.ENOENT, errno.ESRCH, errno.EADDRNOTAVAIL)


def _ipr(netns: str | None) -> IPRoute:
    with enter_netns(netns), map_errors({NetlinkError: RedirectError, OSError: RedirectError}):
        return IPRoute()


def install(netns: str | None = None) -> None:
    ipr = _ipr(netns)
    try:
        with map_errors({NetlinkError: RedirectError}):
            lo = ipr.link_lookup(ifname="lo")[0]
            ipr.link("set", index=lo, state="up")
            if not is_installed_with(ipr):
                ipr.rule("add", table=TPROXY_TABLE, priority=TPROXY_RULE_PRIORITY,
                         fwmark=TPROXY_MARK, fwmask=TPROXY_MASK)
            try:
                ipr.route("add", dst="0.0.0.0/0", type=RTN_LOCAL, scope=RT_SCOPE_HOST,
                          table=TPROXY_TABLE, oif=lo, family=AF_INET)
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:
                    raise
    finally:
        ipr.close()


def is_installed_with(ipr: IPRoute) -> bool:
    for rule in ipr.get_rules(family=2):
        if (rule.get_attr("FRA_PRIORITY") == TPROXY_RULE_PRIORITY
                and rule.get_attr("FRA_FWMARK") == TPROXY_MARK):
            return True
    return False


def is_installed(netns: str | None = None) -> bool:
    ipr = _ipr(netns)
    try:
        with map_errors({NetlinkError: RedirectError}):
            return is_installed_with(ipr)
    finally:
        ipr.close()


def remove(netns: str | None = None) -> None:
    try:
        ipr = _ipr(netns)
    except RedirectError:
        return  # namespace gone
    try:
        with map_errors({NetlinkError: RedirectError}):
            while is_installed_with(ipr):
                ipr.rule("del", table=TPROXY_TABLE, priority=TPROXY_RULE_PRIORITY,
                         fwmark=TPROXY_MARK, fwmask=TPROXY_MASK)
            try:
                lo = ipr.link_lookup(ifname="lo")[0]
                ipr.route("del", dst="0.0.0.0/0", type=RTN_LOCAL, scope=RT_SCOPE_HOST,
                          table=TPROXY_TABLE, oif=lo, family=AF_INET)
            except NetlinkError as exc:
                if exc.code not in _ABSENT:
                    raise
    finally:
        ipr.close()
