"""The test helpers have tests of their own (STYLE.md §8): raw builders agree with dnslib."""

from __future__ import annotations

import dnslib

from .dnsmsg import a_rdata, dnslib_answer, name, raw_query, reply, rr


def test_raw_query_is_what_dnslib_reads() -> None:
    rec = dnslib.DNSRecord.parse(raw_query(b"WwW", b"a", b"com", qid=7, qtype=28, edns=True))
    assert rec.header.id == 7 and rec.header.rd == 1 and rec.q.qtype == 28
    assert tuple(rec.q.qname.label) == (b"WwW", b"a", b"com") and len(rec.ar) == 1


def test_reply_echoes_question_and_carries_records() -> None:
    q = raw_query(b"a", b"com", qid=9)
    out = dnslib.DNSRecord.parse(reply(q, [rr(name(b"a", b"com"), 1, a_rdata("1.2.3.4"), 5)],
                                       rcode=0, tc=True))
    assert out.header.id == 9 and out.header.qr == 1 and out.header.tc == 1
    assert str(out.rr[0].rdata) == "1.2.3.4" and out.rr[0].ttl == 5
    assert reply(q, [], qid=1)[:2] == b"\x00\x01"


def test_dnslib_answer() -> None:
    out = dnslib.DNSRecord.parse(dnslib_answer("x.io", ["9.9.9.9"], qid=3, ttl=7))
    assert out.header.id == 3 and [str(r.rdata) for r in out.rr] == ["9.9.9.9"]
