"""Minimal bpf(2) map access through ctypes: open pinned maps, look up, update, delete, walk.

Used by every map accessor (redirect/maps.py) for both the agent (fds from the bcc object)
and `l7gate bpf ... list` (fds from pinned paths, no compiler needed). No bcc here; errors
become `RedirectError` carrying the errno text. x86_64 and arm64 syscall numbers only.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import platform
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from policy.errors import RedirectError

_SYS_BPF = {"x86_64": 321, "aarch64": 280}  # asm/unistd_64.h, asm-generic/unistd.h
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_MAP_GET_NEXT_KEY = 4
BPF_OBJ_GET = 7
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_ANY = 0
MAP_WALK_LIMIT = 1 << 22  # hard stop for a map walk; bigger than any l7g map's max_entries

# what a key or value buffer may be: a struct, an array (per-CPU values) or a scalar
if TYPE_CHECKING:
    CBuf = ctypes.Structure | ctypes.Array[Any] | ctypes._SimpleCData[Any]
    CKey = ctypes.Structure | ctypes._SimpleCData[Any]
else:  # ctypes' classes are not subscriptable at run time
    CBuf = CKey = Any

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class _MapElemAttr(ctypes.Structure):
    _fields_ = [
        ("map_fd", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
        ("key", ctypes.c_uint64),
        ("value", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    ]


class _ObjAttr(ctypes.Structure):
    _fields_ = [
        ("pathname", ctypes.c_uint64),
        ("bpf_fd", ctypes.c_uint32),
        ("file_flags", ctypes.c_uint32),
    ]


class _InfoAttr(ctypes.Structure):
    _fields_ = [("bpf_fd", ctypes.c_uint32), ("info_len", ctypes.c_uint32),
                ("info", ctypes.c_uint64)]


class MapInfo(ctypes.Structure):
    """Head of struct bpf_map_info (linux/bpf.h)."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * 16),
    ]


def _bpf(cmd: int, attr: ctypes.Structure) -> int:
    nr = _SYS_BPF.get(platform.machine())
    if nr is None:
        raise RedirectError(f"bpf(2): unsupported machine {platform.machine()}")
    rc: int = _libc.syscall(nr, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return rc


def possible_cpus() -> int:
    """Number of possible CPUs: the per-CPU value count of percpu maps."""
    with open("/sys/devices/system/cpu/possible", encoding="ascii") as f:
        text = f.read().strip()
    count = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        count += int(hi or lo) - int(lo) + 1
    return count


class BpfMap:
    """One map by fd. Keys and values are ctypes structures of the map's exact sizes."""

    def __init__(self, fd: int, name: str, owns_fd: bool = False) -> None:
        self.fd = fd
        self.name = name
        self._owns_fd = owns_fd
        self.info = self._info()

    @classmethod
    def open_pinned(cls, path: str) -> BpfMap:
        raw = path.encode()
        buf = ctypes.create_string_buffer(raw)
        attr = _ObjAttr(pathname=ctypes.addressof(buf))
        try:
            fd = _bpf(BPF_OBJ_GET, attr)
        except OSError as exc:
            raise RedirectError(f"open pinned map {path}: {exc.strerror}") from exc
        return cls(fd, os.path.basename(path), owns_fd=True)

    def _info(self) -> MapInfo:
        info = MapInfo()
        attr = _InfoAttr(bpf_fd=self.fd, info_len=ctypes.sizeof(info),
                         info=ctypes.addressof(info))
        try:
            _bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
        except OSError as exc:
            raise RedirectError(f"map {self.name}: info: {exc.strerror}") from exc
        return info

    def close(self) -> None:
        if self._owns_fd and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _call(self, cmd: int, attr: ctypes.Structure, what: str) -> bool:
        """One map syscall; False when the kernel answers ENOENT (no such key, no next key),
        RedirectError for any other failure."""
        try:
            _bpf(cmd, attr)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return False
            raise RedirectError(f"map {self.name}: {what}: {exc.strerror}") from exc
        return True

    def lookup(self, key: CKey, value: CBuf) -> bool:
        """Fill `value`; False if the key is absent."""
        attr = _MapElemAttr(map_fd=self.fd, key=ctypes.addressof(key),
                            value=ctypes.addressof(value))
        return self._call(BPF_MAP_LOOKUP_ELEM, attr, "lookup")

    def update(self, key: CKey, value: CBuf) -> None:
        attr = _MapElemAttr(map_fd=self.fd, key=ctypes.addressof(key),
                            value=ctypes.addressof(value), flags=BPF_ANY)
        try:
            _bpf(BPF_MAP_UPDATE_ELEM, attr)
        except OSError as exc:
            raise RedirectError(f"map {self.name}: update: {exc.strerror}") from exc

    def delete(self, key: CKey) -> bool:
        """Remove `key`; False if it was not there (not an error: removal is idempotent)."""
        attr = _MapElemAttr(map_fd=self.fd, key=ctypes.addressof(key))
        return self._call(BPF_MAP_DELETE_ELEM, attr, "delete")

    def count(self) -> int:
        """How many keys a walk finds (raw key buffers: nothing decoded or looked up)."""
        size = int(self.info.key_size)
        bufs = (ctypes.create_string_buffer(size), ctypes.create_string_buffer(size))
        attr = _MapElemAttr(map_fd=self.fd, key=0, value=ctypes.addressof(bufs[0]))
        for n in range(MAP_WALK_LIMIT):
            if not self._call(BPF_MAP_GET_NEXT_KEY, attr, "next key"):
                return n
            # the key just found is the next call's start; the other buffer takes the next
            attr.key, attr.value = attr.value, ctypes.addressof(bufs[(n + 1) % 2])
        return MAP_WALK_LIMIT

    def keys(self, key_type: type[Any]) -> Iterator[Any]:
        """Walk the keys (a snapshot-free walk: concurrent changes may skip or repeat)."""
        prev: CKey | None = None
        for _ in range(MAP_WALK_LIMIT):
            nxt = key_type()
            attr = _MapElemAttr(map_fd=self.fd,
                                key=0 if prev is None else ctypes.addressof(prev),
                                value=ctypes.addressof(nxt))
            if not self._call(BPF_MAP_GET_NEXT_KEY, attr, "next key"):
                return
            yield nxt
            prev = nxt
