"""DNS wire format for the proxy: strict query extractor, bounded answer analysis, builders.

Contract (no I/O here, no asyncio, no sockets):
- `parse_query(data)` is the hot path. It walks the raw message without building a model and
  accepts only a well-formed standard query: QR=0, opcode QUERY, exactly one question
  (RFC 9619), no compression pointer in the question, labels of at most 63 bytes made only of
  `[A-Za-z0-9_-]` (this closes dnslib's label-with-a-dot confusion, security-reliability.md
  §1.3), a name of at most 255 bytes on the wire, every further record inside the message,
  at most one OPT record (RFC 6891 §6.1.1), no trailing bytes. Anything else raises
  `RemoteProtocolError` (`UnsupportedOpcode` for a well-formed non-QUERY opcode -> NOTIMP).
- `analyze_answer(query, data)` uses dnslib's full model (behind `map_errors`; every dnslib
  exception, `RecursionError` from long pointer chains included, becomes
  `RemoteProtocolError`). It checks the ID, QR and the question against the query
  (case-insensitively, on label tuples) and harvests only A/AAAA records whose owner lies on
  the qname -> CNAME chain (at most `MAX_CNAME_CHAIN` hops, at most `MAX_ANSWER_IPS` IPs).
- Builders (`refused`, `nxdomain`, `servfail`, `formerr`, `notimp`) echo the ID and the
  question bytes exactly as the client sent them (0x20 case preserved).
- `TcpFramer` splits an RFC 7766 §8 length-prefixed byte stream into messages.
The proxy forwards the bytes it received; nothing here re-encodes an allowed message.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass, field
from typing import NamedTuple

import dnslib

from policy.errors import L7gateError, RemoteProtocolError, map_errors

HEADER_BYTES = 12  # RFC 1035 §4.1.1
MAX_LABEL_BYTES = 63  # RFC 1035 §2.3.4
MAX_NAME_WIRE_BYTES = 255  # RFC 1035 §2.3.4, length octets and the root byte included
MAX_QUERY_BYTES = 4096  # a query carries one question + OPT (+ TSIG/cookie/padding); 4 KiB is ample
MAX_MESSAGE_BYTES = 65535  # RFC 7766 §8: the TCP length prefix is 16 bits
MAX_QUERY_RECORDS = 16  # records after the question in a query (OPT, TSIG, ...): more is abuse
MAX_POINTER_HOPS = 16  # compression hops followed/skipped per name (security-reliability §1.3)
MAX_CNAME_CHAIN = 16  # CNAME hops followed from the qname (security-reliability §1.3)
MAX_ANSWER_IPS = 1000  # Cilium --tofqdns-endpoint-max-ip-per-hostname default (pkg/defaults)

QTYPE_A = 1
QTYPE_CNAME = 5
QTYPE_OPT = 41
QTYPE_AAAA = 28

OPCODE_QUERY = 0
RCODE_NOERROR = 0
RCODE_FORMERR = 1
RCODE_SERVFAIL = 2
RCODE_NXDOMAIN = 3
RCODE_NOTIMP = 4
RCODE_REFUSED = 5

_QR = 0x8000
_TC = 0x0200
_OPCODE_MASK = 0x7800
_RD_CD = 0x0100 | 0x0010  # RD and CD are copied into crafted answers (RFC 1035 §4.1.1, RFC 4035)
# Bytes allowed in a question label; everything else is refused (security-reliability §1.3).
_LABEL_OK = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"
_LABEL_OK_DOT = _LABEL_OK + b"."
_HDR = struct.Struct("!HHHHHH")
_HH = struct.Struct("!HH")
_MIN_QUERY_BYTES = HEADER_BYTES + 5  # header, root name byte, QTYPE, QCLASS
_RR_FIXED = struct.Struct("!HHIH")  # type, class, ttl, rdlength


class UnsupportedOpcode(RemoteProtocolError):
    """A well-formed message with an opcode other than QUERY: answer NOTIMP (as miekg/dns)."""


class Query(NamedTuple):
    """A parsed query. `question_end_offset` bounds the question bytes (`data[12:end]`).

    A NamedTuple: built once per query on the hot path (a frozen dataclass costs ~6x more)."""

    id: int
    flags: int
    qname_labels: tuple[bytes, ...]  # as sent (case preserved)
    qname: str  # lower-case, fully qualified ("." for the root)
    qtype: int
    qclass: int
    question_end_offset: int
    has_edns: bool = False
    question_wire: bytes = b""  # data[12:question_end_offset], as sent
    qname_key: tuple[bytes, ...] = ()  # lower-case labels, to compare with answers


@dataclass(slots=True)
class Answer:
    """What the proxy needs from an upstream answer (after ID and question were checked)."""

    id: int
    rcode: int
    tc: bool
    ips: list[tuple[str, int]] = field(default_factory=list)  # (ip, ttl) on the qname chain
    cnames: list[str] = field(default_factory=list)  # chain targets, lower-case, in order
    min_ttl: int = 0
    rrtypes: list[str] = field(default_factory=list)
    ignored_records: int = 0  # A/AAAA whose owner is not on the qname chain (never learned)
    ips_capped: bool = False  # more than MAX_ANSWER_IPS addresses were offered


def _skip_name(data: bytes, off: int) -> int:
    """Skip a (possibly compressed) name outside the question; return the offset after it."""
    end = len(data)
    wire = 0
    while True:
        if off >= end:
            raise RemoteProtocolError("truncated name")
        length = data[off]
        if length == 0:
            return off + 1
        if length & 0xC0 == 0xC0:
            if off + 2 > end:
                raise RemoteProtocolError("truncated compression pointer")
            return off + 2  # the pointer ends the name; its target is not followed here
        if length > MAX_LABEL_BYTES:
            raise RemoteProtocolError(f"bad label length byte {length:#x}")
        wire += length + 1
        if wire >= MAX_NAME_WIRE_BYTES:
            raise RemoteProtocolError("name longer than 255 bytes")
        off += length + 1


def parse_query(data: bytes) -> Query:
    """Strictly extract the single question of a query (see the module contract).

    Hot path (perf-anchors B6): the name is walked by its length bytes only, then the labels
    are validated, lower-cased and split with one C call each instead of per-label Python.
    """
    size = len(data)
    if size < HEADER_BYTES:
        raise RemoteProtocolError("truncated header")
    if size > MAX_QUERY_BYTES:
        raise RemoteProtocolError(f"query of {size} bytes exceeds {MAX_QUERY_BYTES}")
    qid, flags, qdcount, ancount, nscount, arcount = _HDR.unpack_from(data)
    if flags & _QR:
        raise RemoteProtocolError("QR=1 in a query")
    if flags & _OPCODE_MASK:
        raise UnsupportedOpcode(f"opcode {(flags & _OPCODE_MASK) >> 11} not supported")
    if qdcount != 1:
        raise RemoteProtocolError(f"QDCOUNT={qdcount}, exactly one question is required")
    if size < _MIN_QUERY_BYTES:
        raise RemoteProtocolError("truncated question")
    labels: list[bytes] = []
    off = HEADER_BYTES
    length = data[off]
    while length:
        if length > MAX_LABEL_BYTES:  # pointers (0xC0) and extended label types included
            raise RemoteProtocolError(f"bad label length byte {length:#x} in question")
        end = off + 1 + length
        if end >= size:  # the label and the next length byte must be inside the message
            raise RemoteProtocolError("truncated question name")
        if end - HEADER_BYTES >= MAX_NAME_WIRE_BYTES:  # + root byte: more than 255
            raise RemoteProtocolError("question name longer than 255 bytes")
        labels.append(data[off + 1 : end])
        off = end
        length = data[off]
    off += 1
    question_end = off + 4
    if question_end > size:
        raise RemoteProtocolError("truncated question")
    qtype, qclass = _HH.unpack_from(data, off)
    if ancount or nscount or arcount:
        has_edns = _walk_records(data, question_end, ancount, nscount, arcount)
    elif question_end != size:
        raise RemoteProtocolError(f"{size - question_end} trailing bytes after the question")
    else:
        has_edns = False
    if labels:
        joined = b".".join(labels)
        # Every byte must be a label byte or one of the len(labels)-1 separators: a label
        # holding a '.' (dnslib's confusion) or anything outside [A-Za-z0-9_-] is refused.
        if joined.translate(None, _LABEL_OK_DOT) or joined.count(b".") != len(labels) - 1:
            raise RemoteProtocolError("label holds bytes outside [A-Za-z0-9_-]")
        lowered = joined.lower()
        qname = lowered.decode("ascii") + "."
        key = tuple(lowered.split(b"."))
    else:
        qname, key = ".", ()
    # tuple.__new__: the C constructor of the NamedTuple (its generated __new__ is Python).
    return tuple.__new__(Query, (qid, flags, tuple(labels), qname, qtype, qclass, question_end,
                                 has_edns, data[HEADER_BYTES:question_end], key))


def _walk_records(data: bytes, off: int, ancount: int, nscount: int, arcount: int) -> bool:
    """Check that every record after the question lies inside the message; count OPTs."""
    total = ancount + nscount + arcount
    if total > MAX_QUERY_RECORDS:
        raise RemoteProtocolError(f"{total} records in a query")
    opts = 0
    size = len(data)
    for index in range(total):
        owner = off
        off = _skip_name(data, off)
        if off + _RR_FIXED.size > size:
            raise RemoteProtocolError("truncated resource record")
        rtype, _cls, _ttl, rdlen = _RR_FIXED.unpack_from(data, off)
        off += _RR_FIXED.size + rdlen
        if off > size:
            raise RemoteProtocolError("truncated rdata")
        if rtype == QTYPE_OPT:
            # RFC 6891 §6.1.1: OPT only in the additional section, owner is the root, once.
            if index < ancount + nscount or data[owner] != 0:
                raise RemoteProtocolError("misplaced OPT record")
            opts += 1
            if opts > 1:
                raise RemoteProtocolError("more than one OPT record")
    if off != size:
        raise RemoteProtocolError(f"{size - off} trailing bytes after the last record")
    return opts == 1


def with_id(data: bytes, new_id: int) -> bytes:
    """The same message with another ID (ID rewriting towards upstream and back)."""
    return new_id.to_bytes(2, "big") + data[2:]


def message_id(data: bytes) -> int | None:
    """The ID of a message, or None when it is shorter than a header."""
    return int.from_bytes(data[:2], "big") if len(data) >= HEADER_BYTES else None


# --- crafted answers ------------------------------------------------------------------------


def error_reply(query: Query, data: bytes, rcode: int) -> bytes:
    """An answer with `rcode` that echoes the ID and the question bytes exactly."""
    flags = _QR | (query.flags & (_OPCODE_MASK | _RD_CD)) | rcode
    return _HDR.pack(query.id, flags, 1, 0, 0, 0) + data[HEADER_BYTES : query.question_end_offset]


def refused(query: Query, data: bytes) -> bytes:
    return error_reply(query, data, RCODE_REFUSED)


def nxdomain(query: Query, data: bytes) -> bytes:
    return error_reply(query, data, RCODE_NXDOMAIN)


def servfail(query: Query, data: bytes) -> bytes:
    return error_reply(query, data, RCODE_SERVFAIL)


def header_only_reply(data: bytes, rcode: int) -> bytes | None:
    """FORMERR/NOTIMP for a message we could not parse: ID echoed, no question (RFC 1035
    §4.1.1 lets the question be omitted). None when there is no header to answer to."""
    if len(data) < HEADER_BYTES:
        return None
    qid, flags = struct.unpack_from("!HH", data)
    if flags & _QR:
        return None  # never answer an answer: that is how reflection loops start
    return _HDR.pack(qid, _QR | (flags & (_OPCODE_MASK | _RD_CD)) | rcode, 0, 0, 0, 0)


def formerr(data: bytes) -> bytes | None:
    return header_only_reply(data, RCODE_FORMERR)


def notimp(data: bytes) -> bytes | None:
    return header_only_reply(data, RCODE_NOTIMP)


# --- answers ---------------------------------------------------------------------------------

# One answer-section record as both parsers report it: owner (lower-case labels), type, TTL,
# and the value the proxy needs: the CNAME target (lower-case labels), the IP, or None.
_Record = tuple[tuple[bytes, ...], int, int, "tuple[bytes, ...] | str | None"]
_MAX_TTL = 2**31 - 1  # RFC 2181 §8: a TTL with the top bit set is treated as zero
_PTR_QNAME = b"\xc0\x0c"  # compression pointer to offset 12, where the question name starts


def analyze_answer(query: Query, data: bytes, *, expected_id: int | None = None,
                   use_dnslib: bool = False) -> Answer:
    """Check an upstream answer against `query` and harvest the IPs it teaches.

    The default parser is a bounded hand-rolled walker of the header, question and answer
    section (the hot path: dnslib's full decode costs ~4x the whole proxy budget, see
    perf-anchors B6/B7); `use_dnslib=True` runs the same checks on dnslib's model. Both are
    held to the same hostile-input and differential tests.
    """
    size = len(data)
    if size < HEADER_BYTES:
        raise RemoteProtocolError("truncated answer header")
    if size > MAX_MESSAGE_BYTES:
        raise RemoteProtocolError("answer larger than 65535 bytes")
    want_id = query.id if expected_id is None else expected_id
    qid, flags, qdcount, ancount, _ns, _ar = _HDR.unpack_from(data)
    if qid != want_id:
        raise RemoteProtocolError(f"answer ID {qid} does not match query ID {want_id}")
    if not flags & _QR:
        raise RemoteProtocolError("QR=0 in an answer")
    rcode = flags & 0xF
    tc = bool(flags & _TC)
    if qdcount == 0 and rcode != RCODE_NOERROR and ancount == 0:
        # Some servers omit the question in error answers; nothing can be learned from them.
        return Answer(qid, rcode, tc)
    if not use_dnslib and rcode == RCODE_NOERROR and qdcount == 1:
        direct = _answer_direct(query, data, qid, tc, ancount)
        if direct is not None:
            return direct
    if use_dnslib:
        with map_errors(_DNSLIB_ERRORS):
            qname, qtype, records = _records_dnslib(data, rcode)
    else:
        qname, qtype, records = _records_fast(query, data, qdcount, ancount, rcode)
    if qname != query.qname_key or qtype != query.qtype:
        raise RemoteProtocolError("answer question does not match the query")
    answer = Answer(qid, rcode, tc)
    if rcode == RCODE_NOERROR:
        _harvest(qname, records, answer)
    return answer


def _answer_direct(query: Query, data: bytes, qid: int, tc: bool, ancount: int) -> Answer | None:
    """The common answer shape in one pass, without the record list and chain tables: the
    question echoed byte for byte and every answer record owned by a pointer to it, no CNAME.

    Gives exactly what `_records_fast` + `_harvest` give for such an answer; returns None (and
    the general walker takes over from scratch, raising where it must) on any other shape or
    on anything malformed, so no error path lives here.
    """
    question = query.question_wire
    if not question or not data.startswith(question, HEADER_BYTES):
        return None
    off = HEADER_BYTES + len(question)
    size = len(data)
    answer = Answer(qid, RCODE_NOERROR, tc)
    ips, rrtypes = answer.ips, answer.rrtypes
    seen: set[str] = set()
    min_ttl = -1
    for _ in range(ancount):
        if not data.startswith(_PTR_QNAME, off) or off + 12 > size:
            return None
        rtype, _cls, ttl, rdlen = _RR_FIXED.unpack_from(data, off + 2)
        off += 12
        end = off + rdlen
        if end > size:
            return None
        if rtype == QTYPE_A:
            if rdlen != 4:
                return None
            ip = socket.inet_ntoa(data[off:end])
            rrtypes.append("A")
        elif rtype == QTYPE_AAAA:
            if rdlen != 16:
                return None
            ip = str(ipaddress.IPv6Address(data[off:end]))
            rrtypes.append("AAAA")
        elif rtype == QTYPE_CNAME:
            return None
        else:
            rrtypes.append(_RRTYPE_NAMES.get(rtype) or str(rtype))
            off = end
            continue
        off = end
        if ip in seen:
            continue
        if len(ips) >= MAX_ANSWER_IPS:
            answer.ips_capped = True
            continue
        seen.add(ip)
        if ttl > _MAX_TTL:
            ttl = 0
        ips.append((ip, ttl))
        if min_ttl < 0 or ttl < min_ttl:
            min_ttl = ttl
    answer.min_ttl = max(min_ttl, 0)
    return answer


def _read_name(data: bytes, off: int) -> tuple[tuple[bytes, ...], int]:
    """Decode a possibly compressed name: (lower-case labels, offset after it in place).

    Pointers must point backwards (as dnslib requires), at most MAX_POINTER_HOPS of them,
    and the decoded name is capped at 255 wire bytes: loops and long chains cannot run away.
    """
    labels: list[bytes] = []
    end_off = -1
    hops = 0
    wire = 1
    size = len(data)
    while True:
        if off >= size:
            raise RemoteProtocolError("truncated name")
        length = data[off]
        if length == 0:
            return tuple(labels), (off + 1 if end_off < 0 else end_off)
        if length & 0xC0 == 0xC0:
            if off + 2 > size:
                raise RemoteProtocolError("truncated compression pointer")
            target = ((length & 0x3F) << 8) | data[off + 1]
            if target >= off:
                raise RemoteProtocolError("forward or self compression pointer")
            hops += 1
            if hops > MAX_POINTER_HOPS:
                raise RemoteProtocolError("too many compression pointers")
            if end_off < 0:
                end_off = off + 2
            off = target
            continue
        if length > MAX_LABEL_BYTES:
            raise RemoteProtocolError(f"bad label length byte {length:#x}")
        wire += length + 1
        if wire > MAX_NAME_WIRE_BYTES:
            raise RemoteProtocolError("name longer than 255 bytes")
        if off + 1 + length > size:
            raise RemoteProtocolError("truncated label")
        labels.append(data[off + 1 : off + 1 + length].lower())
        off += length + 1


def _records_fast(
    query: Query, data: bytes, qdcount: int, ancount: int, rcode: int
) -> tuple[tuple[bytes, ...], int, list[_Record]]:
    if qdcount != 1:
        raise RemoteProtocolError(f"answer carries {qdcount} questions")
    question = query.question_wire
    if question and data.startswith(question, HEADER_BYTES):
        # Fast path: the server echoed the question byte for byte (case included).
        qname, qtype, off = query.qname_key, query.qtype, HEADER_BYTES + len(question)
    else:
        qname, off = _read_name(data, HEADER_BYTES)
        if off + 4 > len(data):
            raise RemoteProtocolError("truncated question")
        qtype = int.from_bytes(data[off : off + 2], "big")
        off += 4
    records: list[_Record] = []
    if rcode != RCODE_NOERROR:
        return qname, qtype, records
    size = len(data)
    for _ in range(ancount):
        if data.startswith(_PTR_QNAME, off) and question:
            owner, off = qname, off + 2  # the usual owner: a pointer to the question's name
        else:
            owner, off = _read_name(data, off)
        if off + _RR_FIXED.size > size:
            raise RemoteProtocolError("truncated resource record")
        rtype, _cls, ttl, rdlen = _RR_FIXED.unpack_from(data, off)
        off += _RR_FIXED.size
        if off + rdlen > size:
            raise RemoteProtocolError("truncated rdata")
        value: tuple[bytes, ...] | str | None = None
        if rtype == QTYPE_A:
            if rdlen != 4:
                raise RemoteProtocolError("bad A record length")
            value = socket.inet_ntoa(data[off : off + 4])
        elif rtype == QTYPE_AAAA:
            if rdlen != 16:
                raise RemoteProtocolError("bad AAAA record length")
            value = str(ipaddress.IPv6Address(data[off : off + 16]))
        elif rtype == QTYPE_CNAME:
            value, name_end = _read_name(data, off)
            if name_end != off + rdlen:
                raise RemoteProtocolError("CNAME rdata length mismatch")
        records.append((owner, rtype, ttl if ttl <= _MAX_TTL else 0, value))
        off += rdlen
    return qname, qtype, records


# Every exception dnslib can raise on hostile bytes, plus the interpreter's recursion guard
# (a >=1000-hop pointer chain, verified in security-reliability §1.3).
_DNSLIB_ERRORS: dict[type[Exception], type[L7gateError]] = {
    dnslib.DNSError: RemoteProtocolError,
    dnslib.BufferError: RemoteProtocolError,
    RecursionError: RemoteProtocolError,
    struct.error: RemoteProtocolError,
    ValueError: RemoteProtocolError,
    IndexError: RemoteProtocolError,
    KeyError: RemoteProtocolError,
    TypeError: RemoteProtocolError,
    UnicodeError: RemoteProtocolError,
    AttributeError: RemoteProtocolError,
}


def _lower(labels: tuple[bytes, ...]) -> tuple[bytes, ...]:
    return tuple(label.lower() for label in labels)


def _records_dnslib(data: bytes, rcode: int) -> tuple[tuple[bytes, ...], int, list[_Record]]:
    record = dnslib.DNSRecord.parse(data)
    if len(record.questions) != 1:
        raise RemoteProtocolError(f"answer carries {len(record.questions)} questions")
    question = record.questions[0]
    records: list[_Record] = []
    if rcode != RCODE_NOERROR:
        return _lower(tuple(question.qname.label)), question.qtype, records
    for rr in record.rr:
        value: tuple[bytes, ...] | str | None = None
        if rr.rtype in (QTYPE_A, QTYPE_AAAA):
            raw = bytes(rr.rdata.data)
            if len(raw) != (4 if rr.rtype == QTYPE_A else 16):
                raise RemoteProtocolError("bad address length")
            value = str(ipaddress.ip_address(raw))
        elif rr.rtype == QTYPE_CNAME:
            value = _lower(tuple(rr.rdata.label.label))
        ttl = rr.ttl if rr.ttl <= _MAX_TTL else 0
        records.append((_lower(tuple(rr.rname.label)), rr.rtype, ttl, value))
    return _lower(tuple(question.qname.label)), question.qtype, records


def _label_str(labels: tuple[bytes, ...]) -> str:
    # Only used for reporting names; bytes outside ASCII are escaped, never interpreted.
    return ".".join(lbl.decode("ascii", "backslashreplace") for lbl in labels) + "."


def _harvest(qname: tuple[bytes, ...], records: list[_Record], answer: Answer) -> None:
    """Follow the CNAME chain from the qname and keep the A/AAAA records on it.

    ttl_to[owner] = minimum TTL along the chain (Cilium ExtractMsgDetails collapses the chain
    onto the qname with the lowest TTL).
    """
    ttl_to: dict[tuple[bytes, ...], int] = {qname: _MAX_TTL}
    cname_of: dict[tuple[bytes, ...], tuple[tuple[bytes, ...], int]] | None = None
    for owner, rtype, ttl, value in records:
        if rtype == QTYPE_CNAME and isinstance(value, tuple):
            if cname_of is None:
                cname_of = {}
            cname_of.setdefault(owner, (value, ttl))
    if cname_of is not None:  # most answers carry no CNAME: skip the chain walk
        current = qname
        for _hop in range(MAX_CNAME_CHAIN):
            nxt = cname_of.get(current)
            if nxt is None or nxt[0] in ttl_to:
                break  # end of chain, or a CNAME loop
            ttl_to[nxt[0]] = min(ttl_to[current], nxt[1])
            answer.cnames.append(_label_str(nxt[0]))
            current = nxt[0]
    seen: set[str] = set()
    min_ttl = -1
    ips, rrtypes = answer.ips, answer.rrtypes
    for owner, rtype, ttl, value in records:
        rrtypes.append(_RRTYPE_NAMES.get(rtype) or str(rtype))
        if not isinstance(value, str):
            continue
        chain_ttl = ttl_to.get(owner)
        if chain_ttl is None:
            answer.ignored_records += 1  # an address for a name the query did not ask
            continue
        if value in seen:
            continue
        if len(ips) >= MAX_ANSWER_IPS:
            answer.ips_capped = True
            continue
        seen.add(value)
        if chain_ttl < ttl:
            ttl = chain_ttl
        ips.append((value, ttl))
        if min_ttl < 0 or ttl < min_ttl:
            min_ttl = ttl
    answer.min_ttl = max(min_ttl, 0)


_RRTYPE_NAMES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT",
                 28: "AAAA", 33: "SRV", 39: "DNAME", 46: "RRSIG", 64: "SVCB", 65: "HTTPS"}


class TcpFramer:
    """RFC 7766 §8 framing: 2-byte big-endian length, then the message. Feed any chunking.

    A zero length is a protocol error; the buffer never holds more than one message plus
    its prefix, so a slow-drip or oversized peer cannot grow memory past 64 KiB.
    """

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, chunk: bytes) -> list[bytes]:
        self._buf += chunk
        out: list[bytes] = []
        while len(self._buf) >= 2:
            length = int.from_bytes(self._buf[:2], "big")
            if length == 0:
                raise RemoteProtocolError("zero-length DNS message on TCP")
            if len(self._buf) < 2 + length:
                break
            out.append(bytes(self._buf[2 : 2 + length]))
            del self._buf[: 2 + length]
        return out

    @property
    def pending_bytes(self) -> int:
        return len(self._buf)


def frame(message: bytes) -> bytes:
    """Prefix a message with its RFC 7766 length."""
    if len(message) > MAX_MESSAGE_BYTES:
        raise RemoteProtocolError("message larger than 65535 bytes")
    return len(message).to_bytes(2, "big") + message
