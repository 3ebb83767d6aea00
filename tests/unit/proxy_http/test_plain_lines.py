"""`fast.plain_request_wire` against `fast.plain_request`, the reference it must equal.

plain_request_wire checks a request head line by line and remembers, per connection, the
lines it already checked (the last request line and Host line, and field lines up to a byte
budget), so a line seen before is not matched again. Whatever the memo holds, it must give
exactly plain_request's answer: the same parts for a head plain_request accepts, None for
every other. So every test here runs sequences of heads through ONE memo, as a connection
does, and compares each answer with plain_request's; the sequences are built to put the
same line in another place (a field line where the request line or Host goes, a Host line
among the fields, a line with a stray CR or LF), which is where a memo could answer for the
wrong grammar. plain_request itself is held to the full path and to both codecs by
test_fastpaths.py and test_plain_codec_agreement.py.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.http import fast
from proxy.http.limits import MAX_HEADERS
from proxy.http.request import serialise

from .test_plain_codec_agreement import LINE_EDITS, REQUEST_LINES, near_misses, plain_heads

GOOD = b"GET /api/users HTTP/1.1\r\nHost: svc:8080\r\nAccept: */*\r\nX-Id: 1\r\n\r\n"


def lines_of(head: bytes) -> list[bytes]:
    return head[:-4].split(b"\r\n") if head.endswith(b"\r\n\r\n") else head.split(b"\r\n")


@st.composite
def shuffled(draw: st.DrawFn, pool: list[bytes]) -> bytes:
    """A head made of lines drawn from `pool` (lines of earlier heads, any place)."""
    picked = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=6))
    return b"\r\n".join(picked) + draw(st.sampled_from([b"\r\n\r\n"] * 4 + [b"\r\n", b""]))


@st.composite
def connections(draw: st.DrawFn) -> list[bytes]:
    """What one connection sends: plain heads, near misses, and heads remixed from the
    lines of both (so remembered lines come back in every place)."""
    sent = draw(st.lists(st.one_of(plain_heads().map(lambda h: h.wire()), near_misses()),
                         min_size=1, max_size=6))
    pool = sorted({ln for h in sent for ln in lines_of(h)} | set(REQUEST_LINES[:8])
                  | set(LINE_EDITS[:8]) | {b"Host: svc", b"GET / HTTP/1.1", b"X: y"})
    sent += draw(st.lists(shuffled(pool), max_size=8))
    return draw(st.permutations(sent))


def check(sequence: list[bytes], max_headers: int = MAX_HEADERS) -> fast.LineMemo:
    """plain_request_wire on one memo, as a connection sends: plain_request's answer for
    every head, and pieces that make up exactly what request.serialise writes for it (the
    session writes the Host line)."""
    memo = fast.LineMemo()
    for head in sequence:
        want = fast.plain_request(head, max_headers)
        got = fast.plain_request_wire(head, max_headers, memo)
        if want is None:
            assert got is None, head
        else:
            assert got is not None and got[:4] == want, head
            method, target, _, fields, first_wire, rest_wire = got
            host_line = b"host: " + fields[0][1].encode("latin-1") + b"\r\n"
            assert first_wire + host_line + rest_wire + b"\r\n" == serialise(
                method, target, fields), head
        assert memo.size == sum(map(len, memo.fields)) <= fast.LINE_MEMO_BYTES
        assert memo.names_size == sum(map(len, memo.names)) <= fast.NAME_MEMO_BYTES
    return memo


@settings(max_examples=600)
@given(connections(), st.sampled_from([MAX_HEADERS, MAX_HEADERS, 3, 1]))
def test_equals_plain_request_on_every_head_of_a_connection(sequence: list[bytes],
                                                            max_headers: int) -> None:
    check(sequence, max_headers)


def test_a_remembered_line_is_not_taken_in_another_place() -> None:
    # a fresh memo knows no line, not even one that holds an LF
    check([b"\n\r\nHost: h\r\n\r\n", b"GET / HTTP/1.1\r\n\n\r\n\r\n"])
    memo = check([GOOD])
    assert memo.first_line == b"GET /api/users HTTP/1.1" and memo.host_line == b"Host: svc:8080"
    assert set(memo.fields) == {b"Accept: */*", b"X-Id: 1"}
    check([GOOD,
           # a remembered field line where the request line or the Host line goes
           b"Accept: */*\r\nHost: svc:8080\r\n\r\n",
           b"GET /api/users HTTP/1.1\r\nAccept: */*\r\n\r\n",
           # the remembered Host line and request line among the fields
           b"GET /api/users HTTP/1.1\r\nHost: svc:8080\r\nHost: svc:8080\r\n\r\n",
           b"GET /api/users HTTP/1.1\r\nHost: svc:8080\r\nGET /api/users HTTP/1.1\r\n\r\n",
           # remembered lines around a bare LF, CR, an empty line, a missing end
           b"GET /api/users HTTP/1.1\r\nHost: svc:8080\nAccept: */*\r\n\r\n",
           b"GET /api/users HTTP/1.1\r\nHost: svc:8080\r\nAccept: */*\r\r\n\r\n",
           b"GET /api/users HTTP/1.1\r\nHost: svc:8080\r\n\r\nAccept: */*\r\n\r\n",
           b"GET /api/users HTTP/1.1\r\nHost: svc:8080\r\nAccept: */*\r\n",
           b"\r\nGET /api/users HTTP/1.1\r\nHost: svc:8080\r\n\r\n",
           GOOD])


def test_the_memo_is_bounded_and_starts_again() -> None:
    long_value = b"v" * (fast.LINE_MEMO_BYTES // 3)
    sequence = [b"GET / HTTP/1.1\r\nHost: h\r\nX-%d: " % i + long_value + b"\r\n\r\n"
                for i in range(8)]
    memo = check(sequence)
    assert 0 < len(memo.fields) <= 3
    # a line over the whole budget is checked but never kept; over LINE_MEMO_LINE, the
    # request line and Host line are not kept either
    huge = b"X: " + b"a" * fast.LINE_MEMO_BYTES
    target = b"/" + b"p" * fast.LINE_MEMO_LINE
    memo = check([b"GET " + target + b" HTTP/1.1\r\nHost: h\r\nX: y\r\n" + huge
                  + b"\r\n\r\n"] * 2)
    assert huge not in memo.fields and memo.first_line is None and memo.host_line == b"Host: h"
    assert b"X: y" in memo.fields  # a line that can never be kept does not empty the memo
    host = b"Host: " + b"h" * fast.LINE_MEMO_LINE
    memo = check([b"GET / HTTP/1.1\r\n" + host + b"\r\n\r\n"] * 2)
    assert memo.first_line == b"GET / HTTP/1.1" and memo.host_line is None


class _Refuse:
    def fullmatch(self, line: bytes) -> None:
        raise AssertionError(f"matched again: {line!r}")


def test_remembered_lines_are_not_matched_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """The point of the memo: a head whose lines are all remembered matches no pattern, and
    each answer has its own field list (the session rewrites its Host entry)."""
    memo = fast.LineMemo()
    first = fast.plain_request_wire(GOOD, MAX_HEADERS, memo)
    for name in ("_REQUEST_LINE_B", "_HOST_LINE_B", "_FIELD_LINE"):
        monkeypatch.setattr(fast, name, _Refuse())
    again = fast.plain_request_wire(GOOD, MAX_HEADERS, memo)
    assert first is not None and again is not None
    assert again == first and again[:4] == fast.plain_request(GOOD, MAX_HEADERS)
    assert again[3] is not first[3]


@given(st.lists(st.tuples(st.sampled_from([b"X-Id", b"x-id", b"Accept", b"X_Id", b"Host",
                                           b"Content-Length", b"Proxy-X", b"Te", b"A B"]),
                          st.binary(max_size=12)), min_size=1, max_size=12))
def test_a_known_name_with_a_new_value(pairs: list[tuple[bytes, bytes]]) -> None:
    """Lines whose name was checked before come back with other values, any bytes
    (control bytes, CR, LF, colons, OWS): the name memo answers as the grammar does."""
    heads = [b"GET / HTTP/1.1\r\nHost: h\r\n" + name + b":" + value + b"\r\n\r\n"
             for name, value in pairs]
    check(heads)


def test_a_new_value_of_a_known_name_is_not_matched(monkeypatch: pytest.MonkeyPatch) -> None:
    memo = fast.LineMemo()
    assert fast.plain_request_wire(GOOD, MAX_HEADERS, memo) is not None
    assert memo.names == {b"Accept": ("accept", b"accept: "), b"X-Id": ("x-id", b"x-id: ")}
    monkeypatch.setattr(fast, "_FIELD_LINE", _Refuse())
    other = GOOD.replace(b"X-Id: 1", b"X-Id: \t2 ")
    got = fast.plain_request_wire(other, MAX_HEADERS, memo)
    assert got is not None and got[3][-1] == ("x-id", "2") and got[5].endswith(b"x-id: 2\r\n")
    assert other.split(b"\r\n")[3] not in memo.fields  # a new value of a known name: not kept
    # a value that is not printable goes to the grammar: a control byte refuses the head
    with pytest.raises(AssertionError, match="matched again"):
        fast.plain_request_wire(GOOD.replace(b"X-Id: 1", b"X-Id: \x7f"), MAX_HEADERS, memo)
    monkeypatch.undo()
    assert fast.plain_request_wire(GOOD.replace(b"X-Id: 1", b"X-Id: \x7f"), MAX_HEADERS,
                                   memo) is None
    tab = fast.plain_request_wire(GOOD.replace(b"X-Id: 1", b"X-Id: a\tb"), MAX_HEADERS, memo)
    assert tab is not None and tab[3][-1] == ("x-id", "a\tb")


def test_the_name_memo_is_bounded() -> None:
    names = [b"X-%04d-" % i + b"n" * 200 for i in range(12)]
    memo = check([b"GET / HTTP/1.1\r\nHost: h\r\n" + n + b": v\r\n\r\n" for n in names])
    assert 0 < len(memo.names) <= fast.NAME_MEMO_BYTES // 200
    # a name over the whole budget is checked but never kept, and empties nothing
    huge = b"Y" * (fast.NAME_MEMO_BYTES + 1)
    memo = check([b"GET / HTTP/1.1\r\nHost: h\r\nX: 1\r\n" + huge + b": v\r\n\r\n"] * 2)
    assert memo.names == {b"X": ("x", b"x: ")}
