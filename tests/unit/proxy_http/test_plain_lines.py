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

from .test_plain_codec_agreement import LINE_EDITS, REQUEST_LINES, Head, near_misses, plain_heads

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


# Values for one field line of an accepted head: anything, the hostile bytes by name (line
# ends, an injected field, control and C1 bytes, NBSP and the soft hyphen, which are not
# printable, OWS), and printable latin-1 text (the template's own path).
_VALUES = st.one_of(
    st.binary(max_size=16),
    st.sampled_from([b"", b" ", b"\t", b" a ", b"a\t", b"a\r\nX-Injected: 1", b"a\r\n", b"\n",
                     b"\r", b"\x00", b"\x7f", b"\xa0", b"\xad", b"\x85", b"a:b", b"\xff",
                     b"\r\n\r\nGET /admin HTTP/1.1\r\nHost: h"]),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0xff), max_size=24)
    .map(lambda t: t.encode("latin-1")))


@settings(max_examples=400)
@given(plain_heads(), st.data(), st.sampled_from([MAX_HEADERS, MAX_HEADERS, 3, 1]))
def test_heads_that_differ_in_one_field_value(head: Head, data: st.DataObject,
                                              max_headers: int) -> None:
    """A connection that sends one head again and again with one field's value changed (a
    request id), the other lines byte for byte the same, now and then with another line
    edited or bytes added: the template built from such a head answers as plain_request
    does for every value, and never for a head that differs elsewhere."""
    lines = lines_of(head.wire())
    if len(lines) < 3:
        return

    def edit(where: int, value: bytes) -> bytes:
        """The head with line `where` given `value` (a field line) or an `x` added (the
        request line or Host line)."""
        line = lines[where]
        edited = line[:line.find(b":") + 1] + value if where >= 2 else line + b"x"
        return b"\r\n".join([*lines[:where], edited, *lines[where + 1:]]) + b"\r\n\r\n"

    k = data.draw(st.integers(2, len(lines) - 1))
    sequence = [head.wire()] + [edit(k, v) for v in data.draw(st.lists(_VALUES, min_size=2,
                                                                       max_size=10))]
    others = data.draw(st.lists(st.tuples(st.integers(0, len(lines) - 1), _VALUES,
                                          st.sampled_from([b"", b"", b"X", b"\r\n"])),
                                max_size=4))
    for where, value, extra in others:
        sequence.insert(data.draw(st.integers(1, len(sequence))), edit(where, value) + extra)
    check(sequence, max_headers)


def test_the_template_answers_without_the_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    """Once a head with one new field line was accepted, a head that differs from it only in
    that line's value is answered from the template: not split into lines, no memo or
    pattern consulted; a value that is not printable, or a head that only looks like the
    template (its start and end overlap), goes back to the lines."""
    memo = fast.LineMemo()
    for i in range(2):
        assert fast.plain_request_wire(GOOD.replace(b"X-Id: 1", b"X-Id: %d" % i),
                                       MAX_HEADERS, memo) is not None
    assert memo.near == b"GET /api/users HTTP/1.1\r\nHost: svc:8080\r\nAccept: */*\r\nX-Id:"
    assert memo.near_suffix == b"\r\n\r\n"
    for name in ("_REQUEST_LINE_B", "_HOST_LINE_B", "_FIELD_LINE"):
        monkeypatch.setattr(fast, name, _Refuse())
    memo.fields.clear()
    memo.names.clear()
    memo.first_line = memo.host_line = None
    head = GOOD.replace(b"X-Id: 1", b"X-Id:  7f3a-\xe9 ")
    got = fast.plain_request_wire(head, MAX_HEADERS, memo)
    assert got is not None and got[:4] == fast.plain_request(head, MAX_HEADERS)
    assert got[3][-1] == ("x-id", "7f3a-\xe9") and got[5] == b"accept: */*\r\nx-id: 7f3a-\xe9\r\n"
    with pytest.raises(AssertionError, match="matched again"):  # a tab: the lines decide
        fast.plain_request_wire(GOOD.replace(b"X-Id: 1", b"X-Id: a\tb"), MAX_HEADERS, memo)
    monkeypatch.undo()
    # the start and end of the template overlap in a shorter head
    # (the first head makes "X: 2" a remembered line, the second the template)
    memo = check([b"GET / HTTP/1.1\r\nHost: h\r\nX: 2\r\n\r\n",
                  b"GET / HTTP/1.1\r\nHost: h\r\nX: 0\r\nX: 2\r\n\r\n",
                  b"GET / HTTP/1.1\r\nHost: h\r\nX: 2\r\n\r\n"])
    assert memo.near == b"GET / HTTP/1.1\r\nHost: h\r\nX:"
    assert memo.near_suffix == b"\r\nX: 2\r\n\r\n"


def test_no_template_while_the_request_line_or_host_changes() -> None:
    """A target (or Host) that changes on every request, with a request id: each head has a
    new request line (or Host line) besides the new id, so no template is cut (it could
    never match the next head)."""
    memo = check([b"GET /api/users/%d HTTP/1.1\r\nHost: svc\r\nA: b\r\nX-Id: %d\r\n\r\n" % (i, i)
                  for i in range(4)])
    assert memo.near is None
    memo = check([b"GET / HTTP/1.1\r\nHost: svc%d\r\nA: b\r\nX-Id: %d\r\n\r\n" % (i, i)
                  for i in range(4)])
    assert memo.near is None
    memo = check([b"GET / HTTP/1.1\r\nHost: svc\r\nA: b\r\nX-Id: %d\r\n\r\n" % i
                  for i in range(3)])
    assert memo.near == b"GET / HTTP/1.1\r\nHost: svc\r\nA: b\r\nX-Id:"
    # nor from a head over the template's size bound (its lines are still remembered)
    big = b"A: " + b"b" * fast.NEAR_MAX_HEAD_BYTES
    memo = check([b"GET / HTTP/1.1\r\nHost: svc\r\n%s\r\nX-Id: %d\r\n\r\n" % (big, i)
                  for i in range(3)])
    assert memo.near is None and big in memo.fields
