"""proxy/dns/wire.py: strict extractor, answer analysis, builders, framing; hostile input."""

from __future__ import annotations

import functools
import ipaddress
import struct
from collections.abc import Callable
from typing import Any

import dnslib
import pytest
from hypothesis import given
from hypothesis import strategies as st

from policy.errors import RemoteProtocolError
from proxy.dns import wire

from .dnsmsg import a_rdata, dnslib_answer, header, name, opt, question, raw_query, reply, rr

LABEL_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"
labels_st = st.lists(st.text(LABEL_CHARS, min_size=1, max_size=20), min_size=0, max_size=6)


# --- extractor: valid queries, differential against dnslib ------------------------------------

@given(labels=labels_st, qtype=st.sampled_from([1, 28, 5, 33, 255, 65]), qid=st.integers(0, 65535),
       edns=st.booleans())
def test_extractor_agrees_with_dnslib(labels: list[str], qtype: int, qid: int, edns: bool) -> None:
    data = raw_query(*(lbl.encode() for lbl in labels), qid=qid, qtype=qtype, edns=edns)
    q = wire.parse_query(data)
    ref = dnslib.DNSRecord.parse(data)
    assert q.id == ref.header.id == qid
    assert q.qname_labels == tuple(ref.q.qname.label)
    assert q.qname == (str(ref.q.qname).lower() if labels else ".")
    assert q.qtype == ref.q.qtype and q.qclass == ref.q.qclass
    assert q.has_edns == edns
    assert data[12:q.question_end_offset] == question(*(lbl.encode() for lbl in labels),
                                                       qtype=qtype)


def test_extractor_on_dnslib_built_query_with_mixed_case() -> None:
    rec = dnslib.DNSRecord.question("ApI.StRiPe.CoM", "AAAA")
    q = wire.parse_query(bytes(rec.pack()))
    assert q.qname == "api.stripe.com."
    assert q.qname_labels == (b"ApI", b"StRiPe", b"CoM")
    assert q.qtype == 28


def test_root_query() -> None:
    q = wire.parse_query(header() + b"\x00" + struct.pack("!HH", 2, 1))
    assert q.qname == "." and q.qname_labels == ()


# --- extractor: hostile input -------------------------------------------------------------------

GOOD = raw_query(b"example", b"com")

HOSTILE_QUERIES = {
    "empty": b"",
    "truncated header": GOOD[:11],
    "truncated question": GOOD[:-1],
    "truncated label": GOOD[:16],
    "qdcount 0": header(qd=0),
    "qdcount 2": header(qd=2) + question(b"a", b"com") + question(b"b", b"com"),
    "label with a dot byte": header() + question(b"my-api.example", b"com"),
    "label with space": header() + question(b"a b", b"com"),
    "label with NUL": header() + question(b"a\x00b", b"com"),
    "label > 63": header() + question(b"a" * 64, b"com"),
    "name > 255": header() + question(*([b"a" * 63] * 4)),
    "compression pointer in question": header() + b"\x01a\xc0\x0c" + struct.pack("!HH", 1, 1),
    "compression loop": header() + b"\xc0\x0c" + struct.pack("!HH", 1, 1),
    "extended label type": header() + b"\x41a" + b"\x00" + struct.pack("!HH", 1, 1),
    "two OPT records": header(ar=2) + question(b"a", b"com") + opt() + opt(),
    "OPT with a non-root owner": header(ar=1) + question(b"a") + b"\x01x" + opt()[1:],
    "OPT in the answer section": header(an=1) + question(b"a") + opt(),
    "QR=1": header(flags=0x8100) + question(b"a", b"com"),
    "trailing garbage": GOOD + b"\x00",
    "arcount beyond message": header(ar=1) + question(b"a", b"com"),
    "rdlength beyond message": header(ar=1) + question(b"a") + b"\x00"
    + struct.pack("!HHIH", 41, 512, 0, 9),
    "too many records": header(ar=40) + question(b"a") + opt() * 40,
    "oversized": header() + question(b"a") + b"\x00" * 5000,
}


@pytest.mark.parametrize("data", HOSTILE_QUERIES.values(), ids=HOSTILE_QUERIES.keys())
def test_hostile_queries_raise_remote_protocol_error(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        wire.parse_query(data)


def test_name_of_exactly_255_wire_bytes_is_accepted() -> None:
    labels = [b"a" * 63] * 3 + [b"b" * 61]  # 3*64 + 62 + 1 root byte = 255
    assert wire.parse_query(header() + question(*labels)).qname.startswith("aaa")


def test_non_query_opcode_is_unsupported_and_gets_notimp() -> None:
    data = header(flags=0x2800) + question(b"a", b"com")  # opcode 5 = UPDATE
    with pytest.raises(wire.UnsupportedOpcode):
        wire.parse_query(data)
    out = wire.notimp(data)
    assert out is not None and out[:2] == data[:2] and out[3] & 0xF == wire.RCODE_NOTIMP


def test_formerr_echoes_id_and_never_answers_an_answer() -> None:
    out = wire.formerr(header(qid=7, qd=2))
    assert out is not None and struct.unpack("!HHHHHH", out) == (7, 0x8101, 0, 0, 0, 0)
    assert wire.formerr(header(flags=0x8000)) is None
    assert wire.formerr(b"\x00" * 5) is None


@given(st.binary(max_size=300))
def test_fuzz_parse_query_only_raises_remote_protocol_error(data: bytes) -> None:
    try:
        q = wire.parse_query(data)
    except RemoteProtocolError:
        return
    assert all(lbl.translate(None, wire._LABEL_OK) == b"" for lbl in q.qname_labels)


@given(st.integers(0, len(GOOD) + 8), st.binary(min_size=1, max_size=4))
def test_fuzz_mutated_query(pos: int, patch: bytes) -> None:
    data = GOOD[:pos] + patch + GOOD[pos + len(patch):]
    try:
        wire.parse_query(data)
    except RemoteProtocolError:
        pass


# --- builders -----------------------------------------------------------------------------------

@pytest.mark.parametrize("builder,rcode",
                         [(wire.refused, 5), (wire.nxdomain, 3), (wire.servfail, 2)])
def test_error_replies_echo_id_and_question_bytes(builder, rcode) -> None:  # type: ignore[no-untyped-def]
    data = raw_query(b"ApI", b"sTrIpE", b"com", qid=0xBEEF, edns=True)
    q = wire.parse_query(data)
    out = builder(q, data)
    assert out[:2] == b"\xbe\xef"
    assert out[12:] == data[12:q.question_end_offset]  # 0x20 case kept byte for byte
    ref = dnslib.DNSRecord.parse(out)
    assert ref.header.rcode == rcode and ref.header.qr == 1 and ref.header.rd == 1
    assert tuple(ref.q.qname.label) == (b"ApI", b"sTrIpE", b"com")


# --- answers ---
# Every answer test runs against both parsers: the hand-rolled walker and dnslib.

Analyze = Callable[..., wire.Answer]
PARSERS = {"fast": False, "dnslib": True}


@pytest.fixture(params=sorted(PARSERS))
def analyze(request: pytest.FixtureRequest) -> Analyze:
    return functools.partial(wire.analyze_answer, use_dnslib=PARSERS[request.param])


def _q(*labels: bytes, qid: int = 0x1234) -> tuple[wire.Query, bytes]:
    data = raw_query(*labels, qid=qid)
    return wire.parse_query(data), data


def test_answer_a_records(analyze: Analyze) -> None:
    q, _data = _q(b"api", b"example", b"com")
    ans = analyze(q, dnslib_answer("api.example.com", ["1.2.3.4", "5.6.7.8"], ttl=30))
    assert ans.ips == [("1.2.3.4", 30), ("5.6.7.8", 30)] and ans.min_ttl == 30 and ans.rcode == 0


def test_answer_case_insensitive_question_and_owner(analyze: Analyze) -> None:
    q, data = _q(b"ApI", b"Example", b"COM")
    owner = name(b"API", b"EXAMPLE", b"com")
    ans = analyze(q, reply(data, [rr(owner, 1, a_rdata("9.9.9.9"))]))
    assert ans.ips == [("9.9.9.9", 60)]


def test_cname_chain_followed_with_min_ttl(analyze: Analyze) -> None:
    q, data = _q(b"www", b"a", b"com")
    recs = [
        rr(name(b"www", b"a", b"com"), 5, name(b"edge", b"cdn", b"net"), ttl=300),
        rr(name(b"edge", b"cdn", b"net"), 5, name(b"x", b"cdn", b"net"), ttl=20),
        rr(name(b"x", b"cdn", b"net"), 1, a_rdata("10.0.0.1"), ttl=100),
        rr(name(b"www", b"a", b"com"), 28, bytes(15) + b"\x01", ttl=10),
    ]
    ans = analyze(q, reply(data, recs))
    assert ans.cnames == ["edge.cdn.net.", "x.cdn.net."]
    assert ans.ips == [("10.0.0.1", 20), ("::1", 10)] and ans.min_ttl == 10


def test_cname_chain_to_unrelated_owner_learns_nothing(analyze: Analyze) -> None:
    q, data = _q(b"www", b"a", b"com")
    recs = [rr(name(b"www", b"a", b"com"), 5, name(b"edge", b"cdn", b"net")),
            rr(name(b"evil", b"example", b"net"), 1, a_rdata("6.6.6.6"))]
    ans = analyze(q, reply(data, recs))
    assert ans.ips == [] and ans.ignored_records == 1


def test_answer_for_another_name_learns_nothing(analyze: Analyze) -> None:
    q, data = _q(b"www", b"a", b"com")
    wrong = [rr(name(b"www", b"b", b"com"), 1, a_rdata("6.6.6.6"))]
    ans = analyze(q, reply(data, wrong))
    assert ans.ips == [] and ans.ignored_records == 1


def test_label_with_dot_owner_is_not_the_qname(analyze: Analyze) -> None:
    q, data = _q(b"my-api", b"example", b"com")
    owner = name(b"my-api.example", b"com")  # renders as my-api.example.com. in dnslib str()
    ans = analyze(q, reply(data, [rr(owner, 1, a_rdata("6.6.6.6"))]))
    assert ans.ips == [] and ans.ignored_records == 1


def test_cname_loop_and_long_chain_are_bounded(analyze: Analyze) -> None:
    q, data = _q(b"a0")
    loop = [rr(name(b"a0"), 5, name(b"a1")), rr(name(b"a1"), 5, name(b"a0")),
            rr(name(b"a1"), 1, a_rdata("1.1.1.1"))]
    assert analyze(q, reply(data, loop)).ips == [("1.1.1.1", 60)]
    n = wire.MAX_CNAME_CHAIN + 5
    chain = [rr(name(b"a%d" % i), 5, name(b"a%d" % (i + 1))) for i in range(n)]
    chain.append(rr(name(b"a%d" % n), 1, a_rdata("2.2.2.2")))
    ans = analyze(q, reply(data, chain))
    assert ans.ips == [] and len(ans.cnames) == wire.MAX_CNAME_CHAIN


def test_wrong_id_and_wrong_question_are_rejected(analyze: Analyze) -> None:
    q, data = _q(b"a", b"com")
    good = reply(data, [rr(name(b"a", b"com"), 1, a_rdata("1.1.1.1"))])
    with pytest.raises(RemoteProtocolError):
        analyze(q, good, expected_id=0x9999)
    _, other = _q(b"b", b"com")
    with pytest.raises(RemoteProtocolError):
        analyze(q, reply(other, [rr(name(b"b", b"com"), 1, a_rdata("1.1.1.1"))]))
    with pytest.raises(RemoteProtocolError):
        analyze(q, data)  # QR=0


def test_pointer_chain_of_1000_hops_is_an_error_not_a_crash(analyze: Analyze) -> None:
    q, data = _q(b"a")
    # A name at offset 12 ... then 1000 pointers, each to the previous one.
    body = bytearray(reply(data, []))
    first = len(body)
    body += b"\x01a\x00"
    prev = first
    ptrs = bytearray()
    for _ in range(1000):
        here = len(body) + len(ptrs)
        ptrs += struct.pack("!H", 0xC000 | prev)
        prev = here
    body += ptrs
    body += rr(struct.pack("!H", 0xC000 | prev), 1, a_rdata("1.1.1.1"))
    body[6:8] = struct.pack("!H", 1)
    with pytest.raises(RemoteProtocolError):
        analyze(q, bytes(body))


def test_compression_loop_in_answer(analyze: Analyze) -> None:
    q, data = _q(b"a")
    base = reply(data, [])
    loop_at = len(base)
    body = (base + struct.pack("!H", 0xC000 | loop_at) + struct.pack("!HHIH", 1, 1, 60, 4)
            + b"\x01\x01\x01\x01")
    body = body[:6] + struct.pack("!H", 1) + body[8:]
    with pytest.raises(RemoteProtocolError):
        analyze(q, body)


def test_huge_answer_is_capped(analyze: Analyze) -> None:
    q, data = _q(b"big")
    recs = [rr(name(b"big"), 1, struct.pack("!I", 0x0B000000 + i), ttl=5) for i in range(1500)]
    ans = analyze(q, reply(data, recs))
    assert len(ans.ips) == wire.MAX_ANSWER_IPS and ans.ips_capped


def test_tc_and_error_rcode_without_question(analyze: Analyze) -> None:
    q, data = _q(b"a")
    ans = analyze(q, reply(data, [], tc=True))
    assert ans.tc and ans.ips == []
    bare = header(qid=0x1234, flags=0x8005, qd=0)
    assert analyze(q, bare).rcode == 5


@given(st.binary(max_size=400))
def test_fuzz_analyze_answer_only_raises_remote_protocol_error(tail: bytes) -> None:
    q, data = _q(b"a", b"com")
    for blob in (tail, reply(data, []) [:12] + tail, reply(data, [])[:6] + b"\x00\x05" + tail):
        results = []
        for use_dnslib in (False, True):
            try:
                results.append(wire.analyze_answer(q, blob, use_dnslib=use_dnslib))
            except RemoteProtocolError:
                continue
        assert all(isinstance(ip, str) for r in results for ip, _ in r.ips)


@given(st.integers(0, 200), st.binary(min_size=1, max_size=6))
def test_fuzz_mutated_answer(pos: int, patch: bytes) -> None:
    q, data = _q(b"www", b"a", b"com")
    good = reply(data, [rr(name(b"www", b"a", b"com"), 5, name(b"x", b"net")),
                        rr(b"\xc0\x29", 1, a_rdata("1.2.3.4"))])
    blob = good[:pos] + patch + good[pos + len(patch):]
    results = {}
    for use_dnslib in (False, True):
        try:
            results[use_dnslib] = wire.analyze_answer(q, blob, use_dnslib=use_dnslib)
        except RemoteProtocolError:
            pass
    if len(results) == 2:  # where both accept, they must agree on what is learned
        assert results[False].ips == results[True].ips
        assert results[False].cnames == results[True].cnames


# --- TCP framing --------------------------------------------------------------------------------

def test_framer_whole_and_byte_at_a_time(analyze: Analyze) -> None:
    msgs = [raw_query(b"a"), raw_query(b"bb", b"com"), b"x" * 300]
    stream = b"".join(wire.frame(m) for m in msgs)
    assert wire.TcpFramer().feed(stream) == msgs
    framer = wire.TcpFramer()
    got: list[bytes] = []
    for i in range(len(stream)):
        got += framer.feed(stream[i:i + 1])
    assert got == msgs and framer.pending_bytes == 0


def test_framer_rejects_zero_length(analyze: Analyze) -> None:
    with pytest.raises(RemoteProtocolError):
        wire.TcpFramer().feed(b"\x00\x00")


@given(chain=st.lists(st.sampled_from(["a.x", "b.y.z", "c.q", "www.a.com"]), max_size=5),
       ips=st.lists(st.ip_addresses(), max_size=6), ttls=st.lists(st.integers(0, 2**32 - 1),
                                                                   min_size=12, max_size=12),
       stray=st.booleans())
def test_differential_fast_vs_dnslib_on_valid_answers(chain: list[str], ips: list[Any],
                                                      ttls: list[int], stray: bool) -> None:
    qrec = dnslib.DNSRecord.question("WwW.a.CoM")
    q = wire.parse_query(bytes(qrec.pack()))
    r = qrec.reply()
    owner = "WwW.a.CoM"
    for i, target in enumerate(chain):
        r.add_answer(dnslib.RR(owner, dnslib.QTYPE.CNAME, rdata=dnslib.CNAME(target), ttl=ttls[i]))
        owner = target
    for i, ip in enumerate(ips):
        kind = (dnslib.QTYPE.A, dnslib.A) if ip.version == 4 else (dnslib.QTYPE.AAAA, dnslib.AAAA)
        rname = "stray.example" if stray and i == 0 else owner
        r.add_answer(dnslib.RR(rname, kind[0], rdata=kind[1](str(ip)), ttl=ttls[6 + i]))
    data = bytes(r.pack())  # dnslib compresses names: pointers are exercised
    fast = wire.analyze_answer(q, data)
    ref = wire.analyze_answer(q, data, use_dnslib=True)
    assert (fast.ips, fast.cnames, fast.min_ttl, fast.ignored_records, fast.rrtypes) == (
        ref.ips, ref.cnames, ref.min_ttl, ref.ignored_records, ref.rrtypes)


def test_forward_pointer_and_pointer_hop_cap() -> None:
    q, data = _q(b"a")
    base = reply(data, [])
    fwd = base + struct.pack("!H", 0xC000 | (len(base) + 2)) + b"\x01a\x00"
    fwd = fwd[:6] + b"\x00\x01" + fwd[8:]
    for use_dnslib in (False, True):
        with pytest.raises(RemoteProtocolError):
            wire.analyze_answer(q, fwd, use_dnslib=use_dnslib)


def test_answer_question_with_other_case_takes_the_slow_path(analyze: Analyze) -> None:
    q, _data = _q(b"WwW", b"a", b"com")
    other_case = raw_query(b"www", b"A", b"COM")
    ans = analyze(q, reply(other_case, [rr(b"\xc0\x0c", 1, a_rdata("93.1.1.1"))]))
    assert ans.ips == [("93.1.1.1", 60)]
    wrong_type = raw_query(b"WwW", b"a", b"com", qtype=28)
    with pytest.raises(RemoteProtocolError):
        analyze(q, reply(wrong_type, [rr(b"\xc0\x0c", 1, a_rdata("93.1.1.1"))]))


def _general_path(q: wire.Query, data: bytes) -> wire.Answer:
    """The record-list walker + chain harvest, bypassing the one-pass shortcut."""
    qid, flags, qdcount, ancount = struct.unpack_from("!HHHH", data)
    qname, _qtype, records = wire._records_fast(q, data, qdcount, ancount, 0)
    answer = wire.Answer(qid, 0, bool(flags & 0x0200))
    wire._harvest(qname, records, answer)
    return answer


_POOL = ["93.1.1.1", "93.1.1.2", "2001:db8::1", "2001:db8::2"]


@given(recs=st.lists(st.tuples(st.sampled_from(["ip", "txt"]), st.integers(0, 3),
                               st.integers(0, 2**32 - 1)), max_size=8))
def test_one_pass_answer_equals_general_walker(recs: list[tuple[str, int, int]]) -> None:
    data = raw_query(b"WwW", b"a", b"com", qid=7)
    q = wire.parse_query(data)
    raw = []
    for kind, index, ttl in recs:
        ip = _POOL[index]
        if kind == "txt":
            raw.append(rr(b"\xc0\x0c", 16, b"\x03abc", ttl=ttl))
        elif ":" in ip:
            raw.append(rr(b"\xc0\x0c", 28, ipaddress.IPv6Address(ip).packed, ttl=ttl))
        else:
            raw.append(rr(b"\xc0\x0c", 1, a_rdata(ip), ttl=ttl))
    blob = reply(data, raw)
    direct = wire._answer_direct(q, blob, 7, False, len(raw))
    assert direct is not None
    assert direct == _general_path(q, blob) == wire.analyze_answer(q, blob)


def test_one_pass_answer_declines_other_shapes_and_cap() -> None:
    data = raw_query(b"www", b"a", b"com", qid=7)
    q = wire.parse_query(data)
    cname = reply(data, [rr(b"\xc0\x0c", 5, name(b"x", b"net"))])
    full_owner = reply(data, [rr(name(b"www", b"a", b"com"), 1, a_rdata("93.1.1.1"))])
    bad_len = reply(data, [rr(b"\xc0\x0c", 1, b"\x01\x02\x03")])
    truncated = reply(data, [rr(b"\xc0\x0c", 1, a_rdata("9.9.9.9"))])[:-1]
    for blob in (cname, full_owner, bad_len, truncated):
        assert wire._answer_direct(q, blob, 7, False, 1) is None
    many = [rr(b"\xc0\x0c", 1, bytes((10, i >> 8, i & 255, 1)))
            for i in range(wire.MAX_ANSWER_IPS + 3)]
    blob = reply(data, many)
    direct = wire._answer_direct(q, blob, 7, False, len(many))
    assert direct is not None and direct.ips_capped and len(direct.ips) == wire.MAX_ANSWER_IPS
    assert direct == _general_path(q, blob)
