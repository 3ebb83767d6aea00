"""Straight-line parsing for the dominant exchange (pure, no I/O).

Contract: `plain_request(head, max_headers)` accepts only a request head that the full path
(`wire.check_request_head` + `request.prepare_request`) would accept through its `plain`
short path, and only when it is origin-form with a canonical target, a method llhttp frames
natively (not CONNECT), HTTP/1.x, Host as the first field and no other field that request.py
acts on; it returns what that path computes from it, or None, and then the caller runs the
full path (which also names the precise error). `plain_response(head, max_headers)` does the
same for an upstream response head with a final status other than 204/304 whose only
framing or hop-by-hop field is one Content-Length: it returns (minor, status, reason,
end-to-end fields, length) as `wire.parse_response_head` + `response.response_framing` see
them, or None. Neither ever accepts what the full path refuses; test_fastpaths.py compares
both with the full path on generated heads. `plain_request_wire(head, max_headers, memo)`
is plain_request with a per-connection memo of the lines already checked (below), plus the
upstream head in remembered pieces; its first four parts equal plain_request on every head
(test_plain_lines.py), and the session calls it.
The session forwards a plain request without feeding the codec, so plain_request alone
decides what takes that path: on every head it accepts, llhttp and h11 read the same single
bodiless message (test_plain_codec_agreement.py), and it is never more lenient than either.

How: one `findall` over the head both validates and splits it. Each alternative of the
pattern matches one whole line in the strict grammar (wire.py's classes): the first line
(anchored at the start) or a field line (anchored at a line start). Every match ends with
CRLF and contains no other LF, so when the number of matches equals the number of LFs minus
the final empty line, no LF is left outside a match; as every match starts at the string
start or right after an LF, no byte is left outside one either: the head is exactly the
first line, field lines and CRLF. That needs the head to end in CRLFCRLF (else bytes after
the last LF are outside every match), which plain_request checks itself. A field the fast
path does not handle (hop-by-hop or framing names, `proxy-*`, underscores in request
names, a second Host) matches no alternative, so the count differs and the full path runs.
Why: one C-level scan instead of a match, a split and per-field tests
(tests/bench/test_http_core_bench.py).
"""

from __future__ import annotations

import re
from operator import itemgetter

# Visible ASCII without '#'; in the path (before the first '?') no '%', no '\', and no '//'
# or '/.': every segment but a final empty one starts with a character other than '/' and
# '.'. normalize.normalize_origin returns exactly such a target unchanged; any other target
# takes the full path, which normalizes or rejects it.
_SEG_START = r"[\x21\x22\x24\x26-\x2d\x30-\x3e\x40-\x5b\x5d-\x7e]"
_SEG_REST = r"[\x21\x22\x24\x26-\x2e\x30-\x3e\x40-\x5b\x5d-\x7e]*"
_CANONICAL_TARGET_S = (r"/(?:" + _SEG_START + _SEG_REST + r"(?:/" + _SEG_START + _SEG_REST
                       + r")*/?)?(?:\?[\x21\x22\x24-\x7e]*)?")
_VALUE_S = r"[\t\x20-\x7e\x80-\xff]*"  # field-content, as in wire._FIELD_LINE_S
_TOKEN_S = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"  # wire._TOKEN
_TOKEN_NO_UNDERSCORE_S = r"[!#$%&'*+\-.^`|~0-9A-Za-z]+"  # request names: '_' is a 400


def _caseless(word: str) -> str:
    """`word` matched ASCII-case-insensitively with one character class per letter: a
    branch whose alternatives start with a class is skipped on its first character
    without entering the alternative, which `(?i:...)` literals are not."""
    return "".join(f"[{c.upper()}{c}]" if c.isalpha() else re.escape(c) for c in word)


# The field names request.py acts on (wire._NOT_PLAIN_S's set) and Host, each with its
# colon, and the `proxy-` prefix, as a tree on their first letters: checked at the start of
# every field line. Same set as `(?i:transfer-encoding|...|host):|(?i:proxy-)`, which cost
# ~1.5k more instructions per small head and ~8k per browser head (callgrind, 4 resp. 13
# fields); the latin-1 text holds no non-ASCII letter that (?i:) would fold onto these.
_NOT_PLAIN_NAME_S = "|".join([
    _caseless("con") + "(?:" + _caseless("tent-length") + "|" + _caseless("nection") + "):",
    _caseless("t") + "(?:" + _caseless("ra") + "(?:" + _caseless("nsfer-encoding") + "|"
    + _caseless("iler") + ")|" + _caseless("e") + "):",
    _caseless("h") + "(?:" + _caseless("ost") + "|" + _caseless("ttp2-settings") + "):",
    _caseless("expect:"), _caseless("upgrade:"), _caseless("keep-alive:"),
    _caseless("proxy-")])
# Request: request line with Host as the first field (one match), then field lines whose
# name is none of the above. Groups: method, target, minor, Host value, name, value.
_PLAIN_REQUEST_S = re.compile(
    r"\A(GET|HEAD|POST|PUT|DELETE|OPTIONS|PATCH) (" + _CANONICAL_TARGET_S
    + r") HTTP/1\.([01])\r\n" + _caseless("host:") + "(" + _VALUE_S + r")\r\n"
    r"|^(?!" + _NOT_PLAIN_NAME_S + ")(" + _TOKEN_NO_UNDERSCORE_S + r"):(" + _VALUE_S
    + r")\r\n", re.MULTILINE)
# Response: status line (200-599), a Content-Length line (digits only, at most 18 as
# wire.parse_content_length wants), or a field line whose name is not hop-by-hop
# (request.HOP_BY_HOP, proxy-*). Groups: minor, status, reason, length, name, value.
_PLAIN_RESPONSE_S = re.compile(
    r"\AHTTP/1\.([01]) ([2-5][0-9][0-9])(?: (" + _VALUE_S + r"))?\r\n"
    r"|^(?i:content-length):[\t ]*([0-9]{1,18})[\t ]*\r\n"
    r"|^(?!(?i:connection|keep-alive|proxy-connection|te|trailer|transfer-encoding|upgrade"
    r"|http2-settings|content-length|host):|(?i:proxy-))(" + _TOKEN_S + r"):(" + _VALUE_S
    + r")\r\n", re.MULTILINE)
_LENGTH = itemgetter(3)
_OWS = " \t"
_VERSION = {"0": "1.0", "1": "1.1"}

PlainRequest = tuple[str, str, str, list[tuple[str, str]]]
PlainResponse = tuple[int, str, str, str, int]


def plain_request(head: bytes, max_headers: int) -> PlainRequest | None:
    """(method, target, version, fields) or None. `fields` are (lower-case name, value
    without surrounding OWS) with Host first, its value as sent (not yet lower-cased or
    checked); the target is canonical: the one the full path decides on and forwards.
    None for anything else, including bytes after the head's CRLFCRLF."""
    text = head.decode("latin-1")
    lines = _PLAIN_REQUEST_S.findall(text)
    # the first match holds two lines (request line and Host); the last line is empty
    if (not text.endswith("\r\n\r\n") or not lines or len(lines) != text.count("\n") - 2
            or not lines[0][0] or len(lines) > max_headers):
        return None
    method, target, minor, host, _, _ = lines[0]
    fields = [(name.lower(), value.strip(" \t")) for _, _, _, _, name, value in lines]
    fields[0] = ("host", host.strip(" \t"))
    return method, target, _VERSION[minor], fields


def plain_response(head: bytes, max_headers: int) -> PlainResponse | None:
    """(minor, status, reason, end-to-end field lines, length) or None. The field lines are
    what response.client_response_head writes for the fields it keeps: `name: value` CRLF
    each, lower-case name, value without surrounding OWS, in arrival order."""
    text = head.decode("latin-1")
    lines = _PLAIN_RESPONSE_S.findall(text)
    n = len(lines)
    if not n or n != text.count("\n") - 1 or not lines[0][1] or n - 1 > max_headers:
        return None
    minor, status, reason, _, _, _ = lines[0]
    if status == "204" or status == "304":  # bodiless whatever the fields say
        return None
    fields = [f"{name.lower()}: {value.strip(_OWS)}\r\n" for _, _, _, _, name, value in lines
              if name]
    if n - len(fields) != 2:  # the status line and exactly one Content-Length
        return None
    return int(minor), status, reason, "".join(fields), int("".join(map(_LENGTH, lines)))


# --- plain_request, line by line with a per-connection memo ------------------------------
# The same grammar as _PLAIN_REQUEST_S, one line at a time (bytes; the str classes above
# hold only ASCII and \x80-\xff, which mean the same bytes here): the request line, the Host
# line, and any other field line.
_REQUEST_LINE_B = re.compile(
    (r"(GET|HEAD|POST|PUT|DELETE|OPTIONS|PATCH) (" + _CANONICAL_TARGET_S
     + r") HTTP/1\.([01])").encode("latin-1"))
_HOST_LINE_B = re.compile((_caseless("host:") + "(" + _VALUE_S + ")").encode("latin-1"))
_FIELD_LINE = re.compile(  # on the line decoded: its groups come out as str
    "(?!" + _NOT_PLAIN_NAME_S + ")(" + _TOKEN_NO_UNDERSCORE_S + "):(" + _VALUE_S + ")")
_VERSION_B = {b"0": "1.0", b"1": "1.1"}
# What one connection's memo may hold: field lines of at most LINE_MEMO_BYTES bytes in all,
# and the last request line and Host line if each is at most LINE_MEMO_LINE bytes (with the
# decoded values and serialised lines ~4x that: 10,000 connections, the cap, keep at most
# ~200 MB). When a new
# field line does not fit, the field lines start again: a line seen once (a request id)
# leaves soon, the lines every request repeats come back at once.
LINE_MEMO_BYTES = 4096
LINE_MEMO_LINE = 1024


# The template (LineMemo.near) is cut only from heads of at most this many bytes: it holds the
# head, its decoded fields and its upstream pieces (~3-4x that), so 10,000 connections (the
# cap) keep at most ~80 MB for it. Ordinary heads are far smaller (perf-anchors.md B3).
NEAR_MAX_HEAD_BYTES = 2048


# Names of field lines that passed _FIELD_LINE (raw bytes before the first colon -> the
# lower-cased name and b"name: "), per connection, up to NAME_MEMO_BYTES bytes of names.
NAME_MEMO_BYTES = 1024


class LineMemo:
    """One connection's lines already checked by plain_request's grammar: the last request
    line and Host line with what was read from them, field lines (line bytes -> ((name,
    value), the line as serialise() writes it)), and the names of field lines checked
    (raw name -> lower-cased name and how serialise() starts its line)."""

    __slots__ = ("fields", "first", "first_line", "first_wire", "host", "host_line", "names",
                 "names_size", "near", "near_fields", "near_name_wire", "near_pieces",
                 "near_suffix", "near_wire", "size")

    def __init__(self) -> None:
        self.first_line: bytes | None = None
        self.host_line: bytes | None = None
        self.first: tuple[str, str, str] = ("", "", "")
        self.first_wire = b""
        self.host = ""
        self.fields: dict[bytes, tuple[tuple[str, str], bytes]] = {}
        self.size = 0  # bytes of the field lines held
        self.names: dict[bytes, tuple[str, bytes]] = {}  # raw -> (name, b"name: ")
        self.names_size = 0  # bytes of the names held
        # The template (plain_request_wire): the head accepted last whose request line and
        # Host line were remembered and which had exactly one field line no memo knew, cut
        # around that line's value. `near` is the head up to and including the line's colon
        # (None: no template), `near_suffix` the rest from the CRLF ending the line;
        # `near_pieces` (line count, index of the field, method, target, version);
        # `near_fields` the answer's fields; `near_name_wire` how the field's line starts
        # upstream; `near_wire` the upstream pieces: the request line, the field lines
        # before and after it.
        self.near: bytes | None = None
        self.near_suffix = b""
        self.near_pieces: tuple[int, int, str, str, str] = (0, 0, "", "", "")
        self.near_fields: list[tuple[str, str]] = []
        self.near_name_wire = b""
        self.near_wire: tuple[bytes, bytes, bytes] = (b"", b"", b"")


# (method, target, version, fields, request line as serialise() writes it, the field lines
# after Host as serialise() writes them)
PlainRequestWire = tuple[str, str, str, list[tuple[str, str]], bytes, bytes]


def plain_request_wire(head: bytes, max_headers: int,
                       memo: LineMemo) -> PlainRequestWire | None:
    """`plain_request(head, max_headers)` and the upstream head in two pieces, or None.

    Equal to plain_request on every head whatever `memo` holds: a line found in `memo` (one
    connection's, initially empty) passed the same grammar, in the same place (request line,
    Host line, other field line), when it was put there, so only new lines are matched. A new
    field line whose name was checked before (same bytes up to its first colon) has only its
    value checked (`_new_field_line`: a printable value in C, any other by the grammar): the
    grammar's name part (token, not one of the names the fast path leaves to the full path,
    no underscore) depends on those bytes alone, and its value part is one character class.
    The pieces: for the answer (method, target, version, fields),
    `serialise(method, target, fields)` equals
    `first_wire + b"host: " + host + b"\r\n" + rest_wire + b"\r\n"` with fields[0] ==
    ("host", host) (the session lower-cases Host and writes that line itself), built from
    per-line pieces remembered with the lines.
    Why: requests on one connection repeat most of their lines (Host, User-Agent, Accept,
    cookies; the target often) while one or two change (an id), so the session's whole-head
    memo misses; Python's regex engine costs tens of instructions per byte. Per request with
    a distinct id (callgrind; tests/unit/proxy_http/test_plain_lines.py holds it to
    plain_request): the bench's three-line head 18.6k -> 14.2k instructions, a browser's
    14-line head of 571 bytes 82.6k -> 29.5k; the HTTP proxy end to end in one process
    (tests/bench/inproc_http.py) 100.8k -> 95.9k with the line memo. The name memo and the
    remembered pieces (no regex for a request id's new value, no `serialise` call): the same
    loop, once the flow ring is full (requests 9,600-16,000), 59.5k -> 53.75k per request,
    where a head repeated byte for byte (the session's whole-head memo) costs 39.1k. A new
    field line is matched decoded (its groups come out as str).
    The template: a head accepted with its request line and Host line remembered and exactly
    one field line that no memo knew (a request id among repeated lines), of at most
    NEAR_MAX_HEAD_BYTES, is kept cut around that line's value (`LineMemo.near`). A head
    that is the template's start, then printable latin-1 (no CR, LF or other control byte:
    inside the value class), then the template's end, with the two not overlapping, is
    that head with this one value changed: the same lines in the same places, each passing
    the grammar as it did. So its answer is the template's with the value replaced, found
    without splitting the head or looking any line up; any other head takes the lines.
    Same loop, requests 9,600-16,000: 51.5k -> 46.1k instructions per request."""
    near = memo.near
    if near is not None and head.startswith(near):
        suffix = memo.near_suffix
        end = len(head) - len(suffix)
        n, index, method, target, version = memo.near_pieces
        if end >= len(near) and head.endswith(suffix) and n - 1 <= max_headers:
            raw = head[len(near):end]
            text = raw.decode("latin-1")
            if text.isprintable():  # else the lines below decide
                fields = memo.near_fields.copy()
                fields[index] = (fields[index][0], text.strip(" \t"))
                first_wire, before, after = memo.near_wire
                return method, target, version, fields, first_wire, b"".join(
                    (before, memo.near_name_wire, raw.strip(b" \t"), b"\r\n", after))
    if head[-4:] != b"\r\n\r\n":
        return None
    lines = head[:-4].split(b"\r\n")
    n = len(lines)
    if n < 2 or n - 1 > max_headers:
        return None
    # the index of the one field line no memo knew; -2 if several, or if the request line
    # or Host line was new too (a target that changes per request: a template cut around
    # the field would never match the next head)
    fresh = -1
    line = lines[0]
    if line == memo.first_line:
        first = memo.first
        first_wire = memo.first_wire
    else:
        fresh = -2
        m = _REQUEST_LINE_B.fullmatch(line)
        if m is None:
            return None
        method_b, target_b, minor = m.groups()
        first = (method_b.decode("ascii"), target_b.decode("ascii"), _VERSION_B[minor])
        first_wire = b"".join((method_b, b" ", target_b, b" HTTP/1.1\r\n"))
        if len(line) <= LINE_MEMO_LINE:
            memo.first_line, memo.first, memo.first_wire = line, first, first_wire
    line = lines[1]
    if line == memo.host_line:
        host = memo.host
    else:
        fresh = -2
        m = _HOST_LINE_B.fullmatch(line)
        if m is None:
            return None
        host = m.group(1).decode("latin-1").strip(" \t")
        if len(line) <= LINE_MEMO_LINE:
            memo.host_line, memo.host = line, host
    fields = [("host", host)]
    if n == 2:
        return first[0], first[1], first[2], fields, first_wire, b""
    wires: list[bytes] = []
    get = memo.fields.get
    for line in lines[2:]:
        known = get(line)
        if known is None:
            known = _new_field_line(line, memo)
            if known is None:
                return None
            fresh = len(fields) if fresh == -1 else -2
        fields.append(known[0])
        wires.append(known[1])
    if fresh > 0 and len(head) <= NEAR_MAX_HEAD_BYTES:
        _set_near(head, lines, fresh, first, first_wire, fields, wires, memo)
    return first[0], first[1], first[2], fields, first_wire, b"".join(wires)


def _set_near(head: bytes, lines: list[bytes], index: int, first: tuple[str, str, str],
              first_wire: bytes, fields: list[tuple[str, str]], wires: list[bytes],
              memo: LineMemo) -> None:
    """Make the accepted `head` the template, cut around the value of its field
    `fields[index]` (the line `lines[index + 1]`); the only caller's head is plain."""
    start = sum(map(len, lines[:index + 1])) + 2 * (index + 1)  # where the line starts
    line = lines[index + 1]
    colon = line.find(b":")
    memo.near = head[:start + colon + 1]
    memo.near_suffix = head[start + len(line):]
    memo.near_pieces = (len(lines), index, first[0], first[1], first[2])
    memo.near_fields = fields.copy()
    memo.near_name_wire = (fields[index][0] + ": ").encode("latin-1")
    memo.near_wire = (first_wire, b"".join(wires[:index - 1]), b"".join(wires[index:]))


def _new_field_line(line: bytes, memo: LineMemo) -> tuple[tuple[str, str], bytes] | None:
    """A field line not in `memo.fields`, checked, or None if the grammar refuses it.

    A line whose name is in `memo.names` (checked before) needs only its value checked: a
    printable value (`str.isprintable` on latin-1 text: SP-~ and \\xa1-\\xff but the
    soft hyphen, all inside the value class) is one; any other value (HTAB, C1 bytes, a
    control byte) is matched by _FIELD_LINE. Such a line (a known name with a new value:
    a request id) is not remembered: it would only push the repeated lines out. A line
    matched by _FIELD_LINE is remembered, and its name, within the byte budgets."""
    colon = line.find(b":")
    raw_name = line[:colon] if colon > 0 else b""
    known_name = memo.names.get(raw_name) if raw_name else None
    if known_name is not None:
        value_b = line[colon + 1:].strip(b" \t")
        value = value_b.decode("latin-1")
        if value.isprintable():
            return (known_name[0], value), b"".join((known_name[1], value_b, b"\r\n"))
    fm = _FIELD_LINE.fullmatch(line.decode("latin-1"))
    if fm is None:
        return None
    raw, value = fm.groups()
    name = raw.lower()
    value = value.strip(" \t")
    if known_name is None:  # (a known name here: its value was not printable)
        names_size = memo.names_size + colon
        if names_size > NAME_MEMO_BYTES and colon <= NAME_MEMO_BYTES:
            memo.names.clear()
            names_size = colon
        if names_size <= NAME_MEMO_BYTES:
            memo.names[raw_name] = (name, (name + ": ").encode("latin-1"))
            memo.names_size = names_size
    known = ((name, value), "".join((name, ": ", value, "\r\n")).encode("latin-1"))
    # remembered inline: when the line does not fit, the field lines start again; a line
    # over the whole budget is not kept
    size = memo.size + len(line)
    if size > LINE_MEMO_BYTES and len(line) <= LINE_MEMO_BYTES:
        memo.fields.clear()
        size = len(line)
    if size <= LINE_MEMO_BYTES:
        memo.fields[line] = known
        memo.size = size
    return known
