"""Codes shared with BPF (bpf/include/l7g_codes.h) match their Python mirrors, and the pure
helpers around them (marks, port prefixes, event decoding, UDP original destination)."""

from __future__ import annotations

import ipaddress
import itertools
import socket
import struct

from hypothesis import given
from hypothesis import strategies as st

from policy.types import Direction, DropReason, L4Action, Proto, ReservedIdentity
from redirect import events, maps, marks, origdst
from redirect import structs as S
from tests.unit import bpf_header as hdr

CODES = hdr.defines("l7g_codes.h")


def _prefixed(prefix: str) -> dict[str, int]:
    return {k.removeprefix(prefix): v for k, v in CODES.items() if k.startswith(prefix)}


def test_drop_reasons_match_both_ways() -> None:
    c = {k: v for k, v in _prefixed("L7G_DROP_").items() if k != "REASON_MAX"}
    assert c == {r.name: -r.value for r in DropReason}
    assert all(-v < CODES["L7G_DROP_REASON_MAX"] for v in c.values())


def test_actions_directions_protocols() -> None:
    acts = _prefixed("L7G_ACT_")
    assert acts.pop("NONE") == 0
    assert acts == {a.name: a.value for a in L4Action}
    assert _prefixed("L7G_DIR_") == {d.name: maps.DIR_CODE[d] for d in Direction}
    assert CODES["L7G_PROTO_ANY"] == Proto.ANY
    assert CODES["L7G_ID_HOST"] == ReservedIdentity.HOST
    assert CODES["L7G_ID_WORLD"] == ReservedIdentity.WORLD


def test_event_and_hook_codes() -> None:
    assert CODES["L7G_EVENT_DROP"] == events.EVENT_DROP
    assert CODES["L7G_EVENT_TRACE"] == events.EVENT_TRACE
    assert _prefixed("L7G_VERDICT_") == {v.name: v.value for v in events.TraceVerdict}
    assert _prefixed("L7G_HOOK_") == {h.name: h.value for h in events.Hook}
    assert CODES["L7G_EVF_FQDN_NAME"] == events.EVF_FQDN_NAME


def test_flags_and_stats() -> None:
    assert CODES["L7G_IPC_LOCAL_ENDPOINT"] == maps.IPC_LOCAL_ENDPOINT
    assert CODES["L7G_POL_ALL_PORTS"] == maps.POL_ALL_PORTS
    assert CODES["L7G_EP_ENFORCE_INGRESS"] == maps.ENFORCE_INGRESS
    assert CODES["L7G_EP_ENFORCE_EGRESS"] == maps.ENFORCE_EGRESS
    ct = {k.removeprefix("L7G_CT_").lower().replace("_", "-"): v
          for k, v in CODES.items() if k.startswith("L7G_CT_")}
    assert ct == {"redirected": 1, "from-proxy": 2, "dns-proxy": 4}
    assert {v: k for k, v in maps.CT_FLAGS.items()} == ct
    assert (CODES["L7G_STAT_FORWARDED"], CODES["L7G_STAT_REDIRECTED"],
            CODES["L7G_STAT_EVENTS_LOST"]) == (maps.STAT_FORWARDED, maps.STAT_REDIRECTED,
                                               maps.STAT_EVENTS_LOST)


def test_mark_constants() -> None:
    assert CODES["L7G_MARK_TPROXY"] == marks.TPROXY_MARK
    assert CODES["L7G_MARK_TPROXY_MASK"] == marks.TPROXY_MASK
    assert CODES["L7G_MARK_MAGIC_MASK"] == marks.MAGIC_MASK
    assert CODES["L7G_MARK_PROXY_UPSTREAM"] == marks.PROXY_UPSTREAM_MAGIC
    assert CODES["L7G_MARK_IDENTITY_SHIFT"] == marks.IDENTITY_SHIFT
    assert CODES["L7G_MARK_IDENTITY_LOW"] == marks.IDENTITY_LOW
    assert CODES["L7G_TPROXY_ROUTE_TABLE"] == marks.TPROXY_TABLE
    assert CODES["L7G_TPROXY_RULE_PRIORITY"] == marks.TPROXY_RULE_PRIORITY


@given(st.integers(0, marks.MAX_IDENTITY))
def test_mark_round_trip_and_never_the_tproxy_mark(identity: int) -> None:
    mark = marks.proxy_upstream_mark(identity)
    assert 0 <= mark < 1 << 32
    decoded = marks.decode_mark(mark)
    assert decoded.is_proxy_upstream and not decoded.is_tproxy
    assert decoded.identity == identity
    # the tproxy `ip rule` must never match the proxy's own packets
    assert mark & marks.TPROXY_MASK != marks.TPROXY_MARK


def test_mark_decode_of_other_marks() -> None:
    assert marks.decode_mark(marks.TPROXY_MARK).is_tproxy
    plain = marks.decode_mark(0)
    assert not plain.is_proxy_upstream and not plain.is_tproxy and plain.identity is None


def test_mark_rejects_identities_that_do_not_fit() -> None:
    for bad in (-1, marks.MAX_IDENTITY + 1):
        try:
            marks.proxy_upstream_mark(bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad} accepted")


@given(st.integers(0, 65535), st.integers(0, 65535))
def test_port_prefixes_cover_the_range_exactly(a: int, b: int) -> None:
    lo, hi = min(a, b), max(a, b)
    blocks = maps.port_range_prefixes(lo, hi)
    covered: list[tuple[int, int]] = []
    for port, bits in blocks:
        size = 1 << (16 - bits)
        assert port % size == 0, "a prefix block must be aligned"
        covered.append((port, port + size - 1))
    covered.sort()
    assert covered[0][0] == lo and covered[-1][1] == hi
    for (_, end), (start, _) in itertools.pairwise(covered):
        assert start == end + 1, "blocks neither overlap nor leave gaps"
    assert len(blocks) <= 30  # at most 2 blocks per bit level


def test_port_prefix_examples() -> None:
    assert maps.port_range_prefixes(0, 65535) == [(0, 0)]
    assert maps.port_range_prefixes(80, 80) == [(80, 16)]
    assert maps.port_range_prefixes(8080, 8083) == [(8080, 14)]
    assert maps.port_range_prefixes(1, 3) == [(1, 16), (2, 15)]


def test_policy_entry_encoding() -> None:
    from policy.types import DatapathEntry

    e = DatapathEntry(Direction.EGRESS, 1002, Proto.TCP, 0, 65535, L4Action.REDIRECT_HTTP, "r")
    [(key, val)] = list(maps.PolicyMap._encode(1, 7, e, 5))
    assert (key.prefixlen, key.gen, key.direction, key.endpoint_id, key.identity, key.proto) == (
        S.L7G_POLICY_FIXED_BITS, 1, 1, 7, 1002, 6)
    assert (val.action, val.flags, val.rule_index) == (3, maps.POL_ALL_PORTS, 5)


def _raw_event(**kw: int) -> bytes:
    ev = S.Event(time_ns=5, ifindex=3, endpoint_id=11, type=events.EVENT_DROP, direction=1,
                 code=-133, saddr_be=maps.ip_be("10.0.0.1"), daddr_be=maps.ip_be("10.0.0.2"),
                 sport_be=socket.htons(40000), dport_be=socket.htons(80), proto=6,
                 tcp_flags=2, hook=1, src_identity=1001, dst_identity=2, rule_index=9)
    for k, v in kw.items():
        setattr(ev, k, v)
    return bytes(ev)


def test_parse_event_drop() -> None:
    e = events.parse_event(_raw_event())
    assert e.is_drop and e.reason is DropReason.POLICY_DENIED and e.verdict is None
    assert (str(e.src), str(e.dst), e.sport, e.dport) == ("10.0.0.1", "10.0.0.2", 40000, 80)
    assert e.direction is Direction.EGRESS and e.hook is events.Hook.FROM_ENDPOINT
    assert (e.rule_index, e.fqdn_name_id) == (9, None)


def test_parse_event_trace_and_fqdn() -> None:
    e = events.parse_event(_raw_event(type=events.EVENT_TRACE, code=2, flags=1))
    assert not e.is_drop and e.verdict is events.TraceVerdict.REDIRECTED
    assert (e.rule_index, e.fqdn_name_id) == (None, 9)


def test_parse_event_rejects_junk() -> None:
    for raw in (b"", b"\x00" * 10, _raw_event(type=9), _raw_event(code=5),
                _raw_event(type=events.EVENT_TRACE, code=77)):
        try:
            events.parse_event(raw)
        except ValueError:
            continue
        raise AssertionError(f"accepted {raw!r}")


@given(st.binary(max_size=80))
def test_parse_event_never_crashes_otherwise(raw: bytes) -> None:
    try:
        events.parse_event(raw)
    except ValueError:
        pass


def test_udp_original_dst() -> None:
    sin = struct.pack("=H", socket.AF_INET) + struct.pack("!H", 53) + socket.inet_aton(
        "10.96.0.10") + b"\x00" * 8
    anc = [(socket.IPPROTO_IP, origdst.IP_ORIGDSTADDR, sin)]
    assert origdst.udp_original_dst(anc) == ("10.96.0.10", 53)
    assert origdst.udp_original_dst([]) is None
    assert origdst.udp_original_dst([(socket.IPPROTO_IP, origdst.IP_ORIGDSTADDR, b"\x02")]) is None
    assert origdst.IP_RECVORIGDSTADDR == 20


def test_ip_byte_order_helpers() -> None:
    for text in ("10.0.0.1", "192.168.77.2", "255.255.255.255", "0.0.0.0"):
        assert maps.ip_of_be(maps.ip_be(text)) == ipaddress.IPv4Address(text)
    assert maps.ip_be("1.2.3.4").to_bytes(4, "little") == bytes([1, 2, 3, 4])


def test_boot_to_unix_time() -> None:
    assert events.boot_to_unix_ns(5_000, now_unix_ns=1_000_000, now_boot_ns=10_000) == 995_000
    assert events.boot_to_unix_ns(10**9, now_unix_ns=5 * 10**9, now_boot_ns=2 * 10**9) == 4 * 10**9
