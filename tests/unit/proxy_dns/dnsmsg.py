"""Test helpers: build DNS messages byte by byte (raw) or with dnslib (valid ones)."""

from __future__ import annotations

import struct

import dnslib


def header(qid: int = 0x1234, flags: int = 0x0100, qd: int = 1, an: int = 0, ns: int = 0,
           ar: int = 0) -> bytes:
    return struct.pack("!HHHHHH", qid, flags, qd, an, ns, ar)


def name(*labels: bytes) -> bytes:
    return b"".join(bytes([len(lbl)]) + lbl for lbl in labels) + b"\x00"


def question(*labels: bytes, qtype: int = 1, qclass: int = 1) -> bytes:
    return name(*labels) + struct.pack("!HH", qtype, qclass)


def opt(udp_size: int = 1232) -> bytes:
    return b"\x00" + struct.pack("!HHIH", 41, udp_size, 0, 0)


def raw_query(*labels: bytes, qid: int = 0x1234, qtype: int = 1, edns: bool = False) -> bytes:
    return header(qid=qid, ar=int(edns)) + question(*labels, qtype=qtype) + (opt() if edns else b"")


def rr(owner: bytes, rtype: int, rdata: bytes, ttl: int = 60) -> bytes:
    return owner + struct.pack("!HHIH", rtype, 1, ttl, len(rdata)) + rdata


def a_rdata(ip: str) -> bytes:
    return bytes(int(x) for x in ip.split("."))


def reply(query: bytes, records: list[bytes], *, rcode: int = 0, tc: bool = False,
          qid: int | None = None) -> bytes:
    """An answer to `query` (whose question is echoed byte for byte) with raw records."""
    qid0, flags = struct.unpack_from("!HH", query)
    end = 12
    while query[end] != 0:
        end += query[end] + 1
    end += 5
    out_flags = 0x8000 | (flags & 0x0100) | 0x0080 | rcode | (0x0200 if tc else 0)
    hdr = header(qid=qid0 if qid is None else qid, flags=out_flags, an=len(records))
    return hdr + query[12:end] + b"".join(records)


def dnslib_answer(qname: str, ips: list[str], qid: int = 0x1234, ttl: int = 60) -> bytes:
    q = dnslib.DNSRecord.question(qname)
    q.header.id = qid
    r = q.reply()
    for ip in ips:
        r.add_answer(dnslib.RR(qname, dnslib.QTYPE.A, rdata=dnslib.A(ip), ttl=ttl))
    return bytes(r.pack())
