"""HTTP/1.1 wire grammar the core enforces itself, whatever the codec (pure, no I/O).

Contract: `check_request_head` is the strict gate every request head passes before a codec
sees it (CRLF only, no obs-fold, no NUL/CTL, token method, visible-ASCII target, HTTP/1.0 or
1.1, our size and count caps). `parse_response_head` parses upstream heads with the same
grammar. `ChunkedDecoder` / `LengthDecoder` delimit bodies; what they return is what we
re-frame and forward, so the upstream and the client never see a framing we did not parse.
Rejections raise `HttpReject(status)` (client junk) or `BadUpstream` (origin junk).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from policy.errors import RemoteProtocolError, UpstreamError

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/([0-9])\.([0-9])")
_HEADER_LINE = re.compile(rb"(" + _TOKEN + rb"):([\t\x20-\x7e\x80-\xff]*)")
# The whole field section at once (one C-level match instead of one per line); each field
# is `token ":" field-content CRLF`, so a line starting with SP/HTAB (obs-fold) cannot match.
_HEADER_BLOCK = re.compile(rb"(?:" + _TOKEN + rb":[\t\x20-\x7e\x80-\xff]*\r\n)*")
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: ([\t\x20-\x7e\x80-\xff]*))?")
_CHUNK_LINE = re.compile(
    rb"([0-9A-Fa-f]{1,16})((?:;" + _TOKEN + rb"(?:=(?:" + _TOKEN
    + rb'|"[\t\x20\x21\x23-\x5b\x5d-\x7e]*"))?)*)'
)
MAX_BODY_LENGTH = (1 << 62) - 1  # far above anything real; keeps int parsing bounded


class HttpReject(RemoteProtocolError):
    """The client sent something we refuse: answer `status`, then close."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


class BadUpstream(UpstreamError):
    """The origin sent a response we cannot frame safely: close both sides (502 if possible)."""


def _check_line_endings(head: bytes) -> None:
    crlf = head.count(b"\r\n")
    if head.count(b"\n") != crlf:
        raise HttpReject(400, "bare LF in head")
    if head.count(b"\r") != crlf:
        raise HttpReject(400, "bare CR in head")


def find_bare_lf_or_cr(buf: bytes | bytearray, start: int) -> bool:
    """True if buf[start:] has an LF not after CR, or a CR followed by anything but LF."""
    i = buf.find(b"\n", start)
    while i != -1:
        if i == 0 or buf[i - 1] != 0x0D:
            return True
        i = buf.find(b"\n", i + 1)
    i = buf.find(b"\r", start)
    while i != -1:
        if i + 1 < len(buf) and buf[i + 1] != 0x0A:
            return True
        i = buf.find(b"\r", i + 1)
    return False


@dataclass(slots=True)  # not frozen: built per request, frozen init costs ~5x
class GateResult:
    method: str
    target: str
    version: str  # "1.0" | "1.1"
    headers: list[tuple[str, str]]  # lower-case name, value without surrounding OWS
    # True when no field name has an underscore and none is framing, Connection/Expect/
    # Upgrade or hop-by-hop (only Host needs handling): request.py's short path.
    plain: bool = False


# The fast path matches a whole head in one C-level pass on its latin-1 text (latin-1 maps
# every byte to the code point of the same value, so these classes are the byte classes
# above): request line, then field lines of `token ":" field-content CRLF`, then CRLF. A bare
# CR or LF, obs-fold, NUL/CTL or a bad token cannot match; such heads go through the
# step-by-step checks below only to name the exact status (400/431/505).
_TOKEN_S = _TOKEN.decode("ascii")
_FIELD_LINE_S = _TOKEN_S + r":[\t\x20-\x7e\x80-\xff]*\r\n"
_REQUEST_HEAD_S = re.compile(
    r"(" + _TOKEN_S + r") ([\x21-\x7e]+) HTTP/([0-9]\.[0-9])\r\n((?:" + _FIELD_LINE_S
    + r")*)\r\n")
_STATUS_HEAD_S = re.compile(
    r"HTTP/1\.([01]) ([0-9]{3})(?: ([\t\x20-\x7e\x80-\xff]*))?\r\n((?:" + _FIELD_LINE_S
    + r")*)\r\n")
# Splits a field section the patterns above already validated: no colon in a token, no CR
# inside a line. No lazy quantifier: OWS is stripped in Python, so a value of many spaces
# costs linear time, never a regex backtrack.
_FIELD_S = re.compile(r"([^:]+):([^\r]*)\r\n")
# Any field line whose name has an underscore or is one request.py must act on besides Host
# (framing, Connection, Expect, Upgrade, RFC 9110 §7.6.1 hop-by-hop, proxy-*): one C-level
# scan of the validated block instead of a Python test per field. Keep in sync with
# request.HOP_BY_HOP and request._SPECIAL (tests/unit/proxy_http/test_session.py pins it).
_NOT_PLAIN_S = re.compile(
    r"^(?:[^:\r\n]*_|(?:transfer-encoding|content-length|connection|expect|upgrade|keep-alive"
    r"|te|trailer|http2-settings):|proxy-)", re.IGNORECASE | re.MULTILINE)


def _fields(block: str) -> list[tuple[str, str]]:
    """(lower-case name, value without surrounding OWS) for a validated field section."""
    return [(name.lower(), value.strip(" \t")) for name, value in _FIELD_S.findall(block)]


def _block_problem(block: bytes) -> str:
    for line in block.split(b"\r\n")[:-1]:
        if line[:1] in (b" ", b"\t"):
            return "obs-fold in header"  # RFC 9112 §5.2: we reject
    return "malformed header field"


def _request_head_problem(head: bytes, max_headers: int) -> HttpReject:
    """The precise rejection for a head the fast pattern refused (rare: junk only)."""
    try:
        _check_line_endings(head)
    except HttpReject as exc:
        return exc
    first_end = head.find(b"\r\n")
    block = head[first_end + 2 : -2]  # every field line with its CRLF
    if block.count(b"\r\n") > max_headers:
        return HttpReject(431, "too many header fields")
    m = _REQUEST_LINE.fullmatch(head, 0, first_end)
    if m is None:
        return HttpReject(400, "malformed request line")
    if (int(m.group(3)), int(m.group(4))) not in ((1, 0), (1, 1)):
        return HttpReject(505, "HTTP version not supported")
    if _HEADER_BLOCK.fullmatch(block) is None:
        return HttpReject(400, _block_problem(block))
    return HttpReject(400, "malformed request head")  # unreachable: both grammars agree


def check_request_head(head: bytes, max_head_bytes: int, max_headers: int) -> GateResult:
    """Validate a complete request head (ending in CRLFCRLF) or raise HttpReject.

    One pass validates and splits: the result's fields are the ones the codec is checked
    against and the ones we re-serialise."""
    if len(head) > max_head_bytes:
        raise HttpReject(431, "request head too large")
    m = _REQUEST_HEAD_S.fullmatch(head.decode("latin-1"))
    if m is None:
        raise _request_head_problem(head, max_headers)
    method, target, version, block = m.groups()
    fields = _fields(block)  # bounded by max_head_bytes; counted before anything else
    if len(fields) > max_headers:
        raise HttpReject(431, "too many header fields")
    if version != "1.1" and version != "1.0":
        raise HttpReject(505, "HTTP version not supported")
    return GateResult(method, target, version, fields, _NOT_PLAIN_S.search(block) is None)


@dataclass(slots=True)  # not frozen: built per request, frozen init costs ~5x
class ResponseHead:
    minor: int
    status: int
    reason: str  # latin-1 text of the reason phrase, as sent
    headers: list[tuple[str, str]]  # lower-case name, stripped value


def _response_head_problem(head: bytes, max_headers: int) -> BadUpstream:
    try:
        _check_line_endings(head)
    except HttpReject as exc:
        return BadUpstream(exc.reason)
    first_end = head.find(b"\r\n")
    if _STATUS_LINE.fullmatch(head, 0, first_end) is None:
        return BadUpstream("malformed status line")
    block = head[first_end + 2 : -2]
    if block.count(b"\r\n") > max_headers:
        return BadUpstream("too many response header fields")
    return BadUpstream("response " + _block_problem(block))


def parse_response_head(head: bytes, max_headers: int) -> ResponseHead:
    m = _STATUS_HEAD_S.fullmatch(head.decode("latin-1"))
    if m is None:
        raise _response_head_problem(head, max_headers)
    minor, status, reason, block = m.groups()
    if block.count("\r\n") > max_headers:
        raise BadUpstream("too many response header fields")
    return ResponseHead(int(minor), int(status), reason or "", _fields(block))


def parse_content_length(values: list[str]) -> int:
    """RFC 9110 §8.6, strictly: exactly one field, digits only (no +, hex, list, empty)."""
    if len(values) != 1:
        raise ValueError("duplicate content-length")
    val = values[0]
    if not val or len(val) > 18 or not val.isascii() or not val.isdigit():
        raise ValueError("invalid content-length")
    return int(val)


class LengthDecoder:
    """Content-Length body: exactly `remaining` bytes."""

    __slots__ = ("done", "remaining")

    def __init__(self, length: int) -> None:
        self.remaining = length
        self.done = length == 0  # an attribute, not a property: read on every body step

    def feed(self, buf: bytes | bytearray) -> tuple[bytes, int]:
        """Returns (body bytes, bytes consumed from buf)."""
        n = self.remaining if self.remaining < len(buf) else len(buf)
        self.remaining -= n
        self.done = self.remaining == 0
        return bytes(buf[:n]), n


class ChunkedDecoder:
    """RFC 9112 §7.1 chunked body, strict: CRLF only, hex size <= 16 digits, token extensions,
    trailer fields validated and dropped. Raises ValueError on anything else."""

    __slots__ = ("_chunk_left", "_state", "_trailer_bytes", "done", "max_line", "max_trailer")

    def __init__(self, max_line: int, max_trailer: int) -> None:
        self._state = "size"  # size | data | data_crlf | trailer | done
        self._chunk_left = 0
        self._trailer_bytes = 0
        self.done = False  # mirrors _state == "done"
        self.max_line = max_line
        self.max_trailer = max_trailer

    def _line(self, buf: bytes | bytearray, pos: int, cap: int) -> int:
        """Index of the CRLF ending the line at pos, or -1 if incomplete."""
        end = buf.find(b"\r\n", pos, pos + cap + 2)
        if end == -1:
            window = bytes(buf[pos : pos + cap + 2])
            if b"\n" in window or b"\r" in window.rstrip(b"\r") or len(window) > cap + 1:
                raise ValueError("bad or overlong chunk line")
            return -1
        if b"\n" in buf[pos:end] or b"\r" in buf[pos:end]:
            raise ValueError("bare CR/LF in chunk line")
        return end

    def feed(self, buf: bytes | bytearray) -> tuple[list[bytes], int]:
        """Returns (decoded data pieces, bytes consumed from buf)."""
        out: list[bytes] = []
        pos, n = 0, len(buf)
        while pos < n and self._state != "done":
            if self._state == "size":
                end = self._line(buf, pos, self.max_line)
                if end == -1:
                    break
                m = _CHUNK_LINE.fullmatch(buf, pos, end)
                if m is None:
                    raise ValueError("malformed chunk size line")
                self._chunk_left = int(m.group(1), 16)
                pos = end + 2
                self._state = "data" if self._chunk_left else "trailer"
            elif self._state == "data":
                take = min(self._chunk_left, n - pos)
                out.append(bytes(buf[pos : pos + take]))
                pos += take
                self._chunk_left -= take
                if self._chunk_left == 0:
                    self._state = "data_crlf"
            elif self._state == "data_crlf":
                if n - pos < 2:
                    if buf[pos : pos + 1] != b"\r":
                        raise ValueError("chunk data not followed by CRLF")
                    break
                if buf[pos : pos + 2] != b"\r\n":
                    raise ValueError("chunk data not followed by CRLF")
                pos += 2
                self._state = "size"
            else:  # trailer section: header lines until an empty line
                end = self._line(buf, pos, self.max_line)
                if end == -1:
                    break
                line = bytes(buf[pos:end])
                self._trailer_bytes += end + 2 - pos
                if self._trailer_bytes > self.max_trailer:
                    raise ValueError("trailer section too large")
                if line and _HEADER_LINE.fullmatch(line) is None:
                    raise ValueError("malformed trailer field")
                pos = end + 2
                if not line:
                    self._state = "done"
                    self.done = True
        return out, pos


def encode_chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data) if data else b""


LAST_CHUNK = b"0\r\n\r\n"

REASONS = {
    100: b"Continue", 101: b"Switching Protocols", 200: b"OK", 400: b"Bad Request",
    403: b"Forbidden", 404: b"Not Found", 408: b"Request Timeout", 413: b"Content Too Large",
    431: b"Request Header Fields Too Large", 500: b"Internal Server Error",
    501: b"Not Implemented", 502: b"Bad Gateway", 503: b"Service Unavailable",
    504: b"Gateway Timeout", 505: b"HTTP Version Not Supported",
}


def simple_response(status: int, body: bytes, *, close: bool) -> bytes:
    """A response we generate ourselves (403 deny, 400/431/502 errors)."""
    head = [
        b"HTTP/1.1 %d %b" % (status, REASONS.get(status, b"Error")),
        b"content-length: %d" % len(body),
        b"content-type: text/plain",
    ]
    if close:
        head.append(b"connection: close")
    return b"\r\n".join(head) + b"\r\n\r\n" + body
