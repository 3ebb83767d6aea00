"""Drop and new-flow events from the datapath's ring buffer (l7g_events_v1).

`EventReader(datapath)` opens the loader's ring buffer with bcc. Two ways to read:
`poll(timeout_ms)` blocks up to the timeout and returns the decoded events; or, from an
asyncio loop, `loop.add_reader(reader.fileno(), on_ready)` with `on_ready` calling
`consume()` (never blocks). `parse_event(bytes)` is pure and unit-tested. Records that do
not parse are counted in `unparseable`; records the BPF side could not reserve are counted
in the l7g_stats_v1 map (`lost()`), since bcc's reader cannot see them.
"""

from __future__ import annotations

import ctypes
import enum
import ipaddress
import socket
import time
from dataclasses import dataclass
from typing import Any

from policy.errors import RedirectError
from policy.types import Direction, DropReason
from redirect import structs as S
from redirect.maps import DIR_OF_CODE, ip_of_be

EVENT_DROP = 1  # L7G_EVENT_DROP
EVENT_TRACE = 2  # L7G_EVENT_TRACE
EVF_FQDN_NAME = 0x01  # L7G_EVF_FQDN_NAME
EVENT_BYTES = ctypes.sizeof(S.Event)


class TraceVerdict(enum.IntEnum):
    """L7G_VERDICT_* (trace events)."""

    FORWARDED = 1
    REDIRECTED = 2


class Hook(enum.IntEnum):
    """L7G_HOOK_*: which program saw the packet."""

    FROM_ENDPOINT = 1
    TO_ENDPOINT = 2
    FROM_NETDEV = 3


@dataclass(frozen=True, slots=True)
class DatapathEvent:
    time_ns: int  # CLOCK_BOOTTIME
    is_drop: bool
    reason: DropReason | int | None  # drops only (positive Hubble number)
    verdict: TraceVerdict | None  # traces only
    hook: Hook | int
    direction: Direction  # the policy direction of the hook
    ifindex: int
    endpoint_id: int
    src: ipaddress.IPv4Address
    dst: ipaddress.IPv4Address
    sport: int
    dport: int
    proto: int
    tcp_flags: int
    src_identity: int
    dst_identity: int
    rule_index: int | None  # policy rule index (PolicyMap.rule_names())
    fqdn_name_id: int | None  # set when an FQDN allowlist entry decided
    mark: int


def boot_to_unix_ns(boot_ns: int, now_unix_ns: int | None = None,
                    now_boot_ns: int | None = None) -> int:
    """Wall-clock time of a CLOCK_BOOTTIME stamp (event `time_ns`, CT times, FQDN expiry)."""
    unix = time.time_ns() if now_unix_ns is None else now_unix_ns
    boot = time.clock_gettime_ns(time.CLOCK_BOOTTIME) if now_boot_ns is None else now_boot_ns
    return unix - boot + boot_ns


def parse_event(raw: bytes) -> DatapathEvent:
    """Decode one ring-buffer record; ValueError if it is not an l7g_event."""
    if len(raw) < EVENT_BYTES:
        raise ValueError(f"event of {len(raw)} bytes, expected {EVENT_BYTES}")
    e = S.Event.from_buffer_copy(raw[:EVENT_BYTES])
    if e.type not in (EVENT_DROP, EVENT_TRACE):
        raise ValueError(f"unknown event type {e.type}")
    is_drop = e.type == EVENT_DROP
    reason: DropReason | int | None = None
    verdict: TraceVerdict | None = None
    if is_drop:
        if e.code >= 0:
            raise ValueError(f"drop event with non-negative code {e.code}")
        try:
            reason = DropReason(-e.code)
        except ValueError:
            reason = -e.code
    else:
        verdict = TraceVerdict(e.code)  # ValueError for unknown verdicts
    try:
        hook: Hook | int = Hook(e.hook)
    except ValueError:
        hook = e.hook
    is_fqdn = bool(e.flags & EVF_FQDN_NAME)
    return DatapathEvent(
        time_ns=e.time_ns, is_drop=is_drop, reason=reason, verdict=verdict, hook=hook,
        direction=DIR_OF_CODE.get(e.direction, Direction.INGRESS), ifindex=e.ifindex,
        endpoint_id=e.endpoint_id, src=ip_of_be(e.saddr_be), dst=ip_of_be(e.daddr_be),
        sport=socket.ntohs(e.sport_be), dport=socket.ntohs(e.dport_be), proto=e.proto,
        tcp_flags=e.tcp_flags, src_identity=e.src_identity, dst_identity=e.dst_identity,
        rule_index=None if is_fqdn else e.rule_index,
        fqdn_name_id=e.rule_index if is_fqdn else None, mark=e.mark)


class EventReader:
    def __init__(self, datapath: Any) -> None:
        self._dp = datapath
        self._bpf = datapath.bpf
        self._pending: list[DatapathEvent] = []
        self.unparseable = 0
        self.received = 0
        try:
            self._bpf[b"l7g_events_v1"].open_ring_buffer(self._on_record)
        except Exception as exc:  # bcc raises bare Exception
            raise RedirectError(f"open ring buffer: {exc}") from exc

    def _on_record(self, _ctx: Any, data: Any, size: int) -> int:
        self.received += 1
        try:
            self._pending.append(parse_event(ctypes.string_at(data, size)))
        except ValueError:
            self.unparseable += 1
        return 0

    def poll(self, timeout_ms: int) -> list[DatapathEvent]:
        self._bpf.ring_buffer_poll(timeout_ms)
        # records whose wakeup was skipped (BPF_RB adaptive notification) are only
        # found by a consume: never leave them behind
        self._bpf.ring_buffer_consume()
        return self._take()

    def consume(self) -> list[DatapathEvent]:
        self._bpf.ring_buffer_consume()
        return self._take()

    def _take(self) -> list[DatapathEvent]:
        out, self._pending = self._pending, []
        return out

    def fileno(self) -> int:
        """An epoll fd that becomes readable when records are waiting."""
        from bcc.libbcc import lib  # bcc exports libbpf's ring_buffer__epoll_fd

        fn = lib.ring_buffer__epoll_fd
        fn.argtypes = [ctypes.c_void_p]
        fn.restype = ctypes.c_int
        fd = int(fn(self._bpf._ringbuf_manager))
        if fd < 0:
            raise RedirectError("ring buffer has no epoll fd")
        return fd

    def lost(self) -> int:
        return int(self._dp.maps.lost_events())
