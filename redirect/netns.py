"""Enter a network namespace for the calling thread (setns(2)), and come back.

pyroute2 sockets and BSD sockets stay bound to the netns they were created in, so code
that attaches tc filters or opens test sockets for another netns creates them inside
`netns(path)`. BPF programs are not bound to a netns (their socket lookups use the skb's).
Python 3.11 has no os.setns, hence ctypes.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
from collections.abc import Iterator

from policy.errors import RedirectError

CLONE_NEWNET = 0x40000000  # linux/sched.h
NETNS_RUN_DIR = "/run/netns"  # where `ip netns add` puts its bind mounts

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def netns_path(name_or_path: str) -> str:
    return name_or_path if "/" in name_or_path else os.path.join(NETNS_RUN_DIR, name_or_path)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise RedirectError(f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def netns(name_or_path: str | None) -> Iterator[None]:
    """Run the block with this thread in the given netns (None: stay where we are)."""
    if name_or_path is None:
        yield
        return
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(netns_path(name_or_path), os.O_RDONLY)
    except OSError as exc:
        os.close(own)
        raise RedirectError(f"netns {name_or_path}: {exc.strerror}") from exc
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(target)
        os.close(own)
