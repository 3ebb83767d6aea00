"""Proof that the fast path needs no codec cross-check: on every head `fast.plain_request`
accepts, llhttp (httptools) and h11 both read exactly what it read.

session_fast.fast_request parses a plain head with fast.py's strict grammar only and
forwards a head re-serialised from that parse; the codec is not fed (the full path, which
runs whenever plain_request says None, still feeds it). That is only sound if neither codec
would have read a plain head differently, so here, for heads generated from the plain
grammar's own character classes (every method, canonical target incl. queries, Host value,
field name and value it admits, obs-text, tabs, OWS, up to the field limit, HTTP/1.0 and
1.1) and for hostile near-misses of them:

- plain_request accepts every generated head and returns exactly its parts;
- llhttp, fed as HttptoolsCodec feeds it (the whole head in one `feed_data`, a native
  method unchanged), on a fresh parser and on one that has just parsed a keep-alive
  message, and h11 (`h11.Connection(h11.SERVER)` as H11Codec builds it) each read exactly
  one complete bodiless message with the same method, target, HTTP version, field names
  (lower-case) and values (without surrounding OWS) in the same order, keep-alive exactly
  for HTTP/1.1, and llhttp is left at a message start;
- on the near-miss space, every head either codec rejects or reads differently is refused
  by plain_request (it is never the more lenient one).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import h11
import httptools
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from proxy.http import fast
from proxy.http.limits import MAX_HEAD_BYTES, MAX_HEADERS

from .harness import CODECS, allow_all, make, run

# Parsed = (method, target, version, fields, keep-alive); a str says why a codec refused.
Parsed = tuple[str, str, str, list[tuple[str, str]], bool]
# A message llhttp must take right after the head when it stays at a message start.
NEXT = b"GET /next HTTP/1.1\r\nHost: n\r\n\r\n"


def _alphabet(cls: str) -> str:
    """The characters (latin-1) a character class of fast.py's grammar admits."""
    pattern = re.compile(cls)
    return "".join(chr(c) for c in range(256) if pattern.fullmatch(chr(c)))


SEG_START = _alphabet(fast._SEG_START)
SEG_REST = _alphabet(fast._SEG_REST[:-1])  # without the trailing '*'
QUERY = _alphabet(r"[\x21\x22\x24-\x7e]")  # fast._CANONICAL_TARGET_S's query class
VALUE = _alphabet(fast._VALUE_S[:-1])
TOKEN = _alphabet(fast._TOKEN_NO_UNDERSCORE_S[:-1])
METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"]
# Names the grammar refuses (request.py acts on them): the generator leaves them out.
SPECIAL = {"transfer-encoding", "content-length", "connection", "expect", "upgrade",
           "keep-alive", "te", "trailer", "http2-settings", "host"}
# Real names, and names one step from a name llhttp or h11 treat specially (a prefix, an
# extension): the codecs must read them as ordinary fields, as the grammar does.
NAMES = ["User-Agent", "Accept", "Accept-Encoding", "X-Request-Id", "Cookie", "Referer",
         "Authorization", "Content-Type", "Content-Encoding", "Cache-Control", "Pragma",
         "Upgrade-Insecure-Requests", "Sec-WebSocket-Key", "Sec-Fetch-Mode", "DNT",
         "Content-Lengthx", "Content-Lengt", "Content-", "Connectionx", "Connectio",
         "Transfer-Encodings", "Transfer-Encodin", "Upgradex", "Upgrad", "Keep-Alivex",
         "Expectx", "Hostx", "Hos", "H", "TEx", "T", "Te-x", "Trailers", "Trai", "Proxy",
         "Proxyx", "HTTP2-Settingsx", "X-Forwarded-For", "Forwarded", "Via", "Max-Forwards",
         "Range", "If-None-Match", "Origin", "Sec-WebSocket-Version"]
# Strategies are built once (building one per draw costs more than the draw).
OWS = st.sampled_from(["", "", " ", "\t", " \t ", "\t\t"])  # VALUE has them inside too
CASE_FLIPS = st.integers(0, (1 << 26) - 1)  # bit i swaps the case of character i
SEGMENTS = st.lists(st.tuples(st.sampled_from(SEG_START), st.text(SEG_REST, max_size=8)),
                    max_size=5)
QUERIES = st.one_of(st.none(), st.text(QUERY, max_size=24))
RAW_NAMES = st.one_of(st.sampled_from(NAMES), st.text(TOKEN, min_size=1, max_size=12))
VALUE_CORES = st.one_of(st.text(VALUE, max_size=30),
                        st.sampled_from(["*/*", "curl/8.5.0", "a=b; c=d", "\x80\xff", "a\tb",
                                         "a \t b", "", "\xa0", "\x85"]))
HOSTS = st.one_of(st.sampled_from(["svc", "10.0.2.7:8080", "Svc.NS.svc.cluster.local:80",
                                   "[::1]:8", "", "h"]),
                  st.text(VALUE, max_size=20))


def random_case(draw: st.DrawFn, name: str) -> str:
    flips = draw(CASE_FLIPS)
    return "".join(c.swapcase() if flips >> i & 1 else c for i, c in enumerate(name))


@st.composite
def targets(draw: st.DrawFn) -> str:
    segs = draw(SEGMENTS)
    path = "/" + "/".join(a + b for a, b in segs)
    if draw(st.booleans()) and segs:
        path += "/"
    query = draw(QUERIES)
    return path if query is None else path + "?" + query


@st.composite
def names(draw: st.DrawFn) -> str:
    name = random_case(draw, draw(RAW_NAMES))
    if name.lower() in SPECIAL or name.lower().startswith("proxy-"):
        name = "X-" + name  # outside the grammar: refused by plain_request by design
    return name


@st.composite
def values(draw: st.DrawFn) -> str:
    """A field value as sent: OWS, field-content (incl. tabs, obs-text), OWS."""
    return draw(OWS) + draw(VALUE_CORES) + draw(OWS)


FIELDS = st.lists(st.tuples(names(), values()), max_size=8)
METHOD_S = st.sampled_from(METHODS)
VERSIONS = st.sampled_from(["1.1", "1.1", "1.0"])
PAD = st.integers(0, 15)


@dataclass
class Head:
    method: str
    target: str
    version: str
    host: str  # as sent, OWS included
    fields: list[tuple[str, str]] = field(default_factory=list)  # as sent
    host_name: str = "Host"

    def wire(self) -> bytes:
        lines = [f"{self.method} {self.target} HTTP/{self.version}",
                 f"{self.host_name}:{self.host}", *(f"{n}:{v}" for n, v in self.fields)]
        return ("".join(ln + "\r\n" for ln in lines) + "\r\n").encode("latin-1")

    def expected(self) -> tuple[str, str, str, list[tuple[str, str]]]:
        fields = [("host", self.host.strip(" \t"))]
        fields += [(n.lower(), v.strip(" \t")) for n, v in self.fields]
        return self.method, self.target, self.version, fields


@st.composite
def plain_heads(draw: st.DrawFn) -> Head:
    head = Head(draw(METHOD_S), draw(targets()), draw(VERSIONS),
                draw(OWS) + draw(HOSTS) + draw(OWS), draw(FIELDS), random_case(draw, "Host"))
    if draw(PAD) == 7:  # up to the field limit (Host counts)
        room = MAX_HEADERS - 1 - len(head.fields)
        pad = draw(st.sampled_from([room, room, 0, room // 2]))
        head.fields += [(f"X-Pad-{i}", f" v{i}\x80") for i in range(pad)]
    return head


# --- what each codec reads ---------------------------------------------------------------


class _Reader:
    """httptools protocol recording everything llhttp reports: the callbacks in order, and
    what the head and the message end said."""

    def __init__(self, parser_box: list[httptools.HttpRequestParser]) -> None:
        self.box = parser_box
        self.events: list[str] = []
        self.url = b""
        self.fields: list[tuple[bytes, bytes]] = []
        self.method = b""
        self.version = ""
        self.keep_alive = False

    def on_message_begin(self) -> None:
        self.events.append("begin")
        self.url, self.fields = b"", []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name, value))

    def on_headers_complete(self) -> None:
        self.events.append("head")
        self.method = self.box[0].get_method()
        self.version = self.box[0].get_http_version()

    def on_body(self, body: bytes) -> None:
        self.events.append("body")

    def on_message_complete(self) -> None:
        self.events.append("end")
        # should_keep_alive() is only meaningful inside a callback
        self.keep_alive = self.box[0].should_keep_alive()


def llhttp_read(head: bytes, *, after_message: bool) -> Parsed | str:
    """llhttp's reading of `head` fed whole (as HttptoolsCodec does), on a fresh parser or
    one that has just parsed a keep-alive message; a str when it is not exactly one complete
    bodiless message that leaves the parser at a message start (HTTP/1.1)."""
    box: list[httptools.HttpRequestParser] = []
    reader = _Reader(box)
    box.append(httptools.HttpRequestParser(reader))
    if after_message:
        box[0].feed_data(NEXT)
        reader.events.clear()
    try:
        box[0].feed_data(head)
    except httptools.HttpParserUpgrade:
        return "upgrade"
    except httptools.HttpParserError as exc:
        return f"error: {exc}"
    if reader.events != ["begin", "head", "end"]:
        return f"events {reader.events!r}"
    got: Parsed = (reader.method.decode("latin-1"), reader.url.decode("latin-1"),
                   reader.version,
                   [(n.decode("latin-1").lower(), v.decode("latin-1").strip(" \t"))
                    for n, v in reader.fields], reader.keep_alive)
    if reader.keep_alive:  # the parser must take the next message from its start
        reader.events.clear()
        try:
            box[0].feed_data(NEXT)
        except httptools.HttpParserError as exc:
            return f"not at a message start: {exc}"
        if reader.events != ["begin", "head", "end"] or reader.url != b"/next":
            return f"not at a message start: {reader.events!r}"
    return got


def h11_read(head: bytes) -> Parsed | str:
    """h11's reading of `head`, as H11Codec builds its connection; a str unless it is
    exactly one Request and its EndOfMessage, and then nothing (PAUSED when keep-alive,
    NEED_DATA when the client must close) and no byte left over."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES + 1)
    try:
        conn.receive_data(head)
        events = [conn.next_event() for _ in range(3)]
    except h11.RemoteProtocolError as exc:
        return f"error: {exc}"
    req, end, paused = events
    if not (isinstance(req, h11.Request) and isinstance(end, h11.EndOfMessage)
            and not end.headers and paused in (h11.PAUSED, h11.NEED_DATA)):
        return f"events {events!r}"
    if conn.trailing_data[0]:  # bytes after the message, kept for the next one
        return f"bytes after the message: {conn.trailing_data[0]!r}"
    return (req.method.decode("latin-1"), req.target.decode("latin-1"),
            req.http_version.decode("latin-1"),
            [(n.decode("latin-1"), v.decode("latin-1")) for n, v in req.headers],
            conn.their_state is h11.DONE)  # MUST_CLOSE when it is not keep-alive


def codec_readings(head: bytes) -> dict[str, Parsed | str]:
    return {"llhttp": llhttp_read(head, after_message=False),
            "llhttp-reused": llhttp_read(head, after_message=True),
            "h11": h11_read(head)}


def assert_codecs_agree(head: bytes) -> None:
    """If the fast path would take `head`, every codec reads it exactly as plain_request."""
    plain = fast.plain_request(head, MAX_HEADERS)
    if plain is None or len(head) > MAX_HEAD_BYTES:  # fast_request's own conditions
        return
    method, target, version, fields = plain
    want = (method, target, version, fields, version == "1.1")
    for codec, got in codec_readings(head).items():
        assert got == want, (codec, head, got)


# --- the proof ---------------------------------------------------------------------------


@settings(max_examples=2000)
@given(plain_heads())
def test_codecs_read_every_plain_head_as_plain_request_does(head: Head) -> None:
    data = head.wire()
    assert fast.plain_request(data, MAX_HEADERS) == head.expected()  # the grammar, all of it
    event(f"fields: {'limit' if len(head.fields) == MAX_HEADERS - 1 else 'some'}")
    assert_codecs_agree(data)


# Near-misses: one to three edits of a plain head, each a way heads go wrong or smuggle.
HOSTILE_BYTES = b"\x00\x01\x08\t\n\x0b\x0c\r\x1f \"#%/.?:;\\_@,()<>[]{}\x7f\x80\xa0\xff"
LINE_EDITS = [
    b"Content-Length: 0", b"Content-Length: 5", b"content-length:0", b"Transfer-Encoding: chunked",
    b"Transfer-Encoding: identity", b"Connection: close", b"Connection: keep-alive",
    b"Connection: upgrade", b"Upgrade: websocket", b"Upgrade: h2c", b"Expect: 100-continue",
    b"TE: trailers", b"Trailer: x", b"Keep-Alive: 5", b"HTTP2-Settings: x", b"Host: evil",
    b"host:", b"Proxy-Connection: keep-alive", b"Proxy-Authorization: x", b"X_Y: 1",
    b" folded", b"\tfolded", b"X : y", b"X:y\x00", b": novalue", b"X", b"X;: y", b"",
    b"Content-Length : 0", b"Transfer-Encoding : chunked", b"Transfer-Encoding:\x0bchunked",
]
REQUEST_LINES = [
    b"get / HTTP/1.1", b"FOO / HTTP/1.1", b"CONNECT h:443 HTTP/1.1", b"PRI * HTTP/2.0",
    b"GET  / HTTP/1.1", b"GET / HTTP/1.1 ", b"GET /\tHTTP/1.1", b"GET / http/1.1",
    b"GET / HTTP/1.2", b"GET / HTTP/2.0", b"GET / HTTP/0.9", b"GET / HTTP/1.10",
    b"GET /", b"GET * HTTP/1.1", b"GET http://h/ HTTP/1.1", b"GET h:80 HTTP/1.1",
    b"GET /a#f HTTP/1.1", b"GET /a/../b HTTP/1.1", b"GET //a HTTP/1.1", b"GET /%2e HTTP/1.1",
    b"GET /a b HTTP/1.1", b"GET /a\x80 HTTP/1.1", b"GET /?a#b HTTP/1.1", b"GET ? HTTP/1.1",
    b" GET / HTTP/1.1", b"GET / HTTP/1.1\x00",
]


EDIT_COUNT = st.integers(1, 3)
EDIT_KINDS = st.sampled_from(["insert", "delete", "replace", "line", "request", "eol", "swap",
                              "dup", "tail"])
HOSTILE = st.sampled_from([bytes([b]) for b in HOSTILE_BYTES])
LINE_EDIT_S = st.sampled_from(LINE_EDITS)
REQUEST_LINE_S = st.sampled_from(REQUEST_LINES)
BAD_EOLS = st.sampled_from([b"\n", b"\r", b"\r\r\n"])
TAILS = st.sampled_from([b"x", b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", b"\r\n", b"X: y\r\n\r\n"])


@st.composite
def near_misses(draw: st.DrawFn) -> bytes:
    head = draw(plain_heads())
    head.fields = head.fields[:4]
    data = bytearray(head.wire())
    for _ in range(draw(EDIT_COUNT)):
        lines = bytes(data[:-4]).split(b"\r\n")
        kind = draw(EDIT_KINDS)
        if kind in ("insert", "replace", "delete") and data:
            at = draw(st.integers(0, len(data) - 1))
            byte = draw(HOSTILE)
            if kind == "insert":
                data[at:at] = byte
            elif kind == "replace":
                data[at : at + 1] = byte
            else:
                del data[at]
            continue
        if kind == "line":
            lines.insert(draw(st.integers(1, len(lines))), draw(LINE_EDIT_S))
        elif kind == "request":
            lines[0] = draw(REQUEST_LINE_S)
        elif kind == "swap" and len(lines) > 2:
            i = draw(st.integers(1, len(lines) - 2))
            lines[i], lines[i + 1] = lines[i + 1], lines[i]
        elif kind == "dup" and len(lines) > 1:
            i = draw(st.integers(1, len(lines) - 1))
            lines.insert(i, lines[i])
        elif kind == "eol":
            i = draw(st.integers(0, len(lines) - 1))
            lines[i] += draw(BAD_EOLS)
        if kind == "tail":
            tail = draw(TAILS)
            data = bytearray(bytes(data) + tail)
        else:
            data = bytearray(b"\r\n".join(lines) + b"\r\n\r\n")
    return bytes(data)


@settings(max_examples=1500)
@given(near_misses())
def test_plain_request_is_never_more_lenient_than_a_codec(data: bytes) -> None:
    readings = codec_readings(data)
    plain = fast.plain_request(data, MAX_HEADERS)
    refused = sorted(k for k, v in readings.items() if isinstance(v, str))
    event(f"plain {'accepts' if plain else 'refuses'}; codecs refusing: {refused}")
    if refused:
        assert plain is None, (data, readings)
    assert_codecs_agree(data)


# The near-miss space reaches both codecs' rejections: each of these is refused by plain
# and by at least one codec (so the property above is not vacuous on them).
CODEC_REFUSED = [
    b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x00b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX : y\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n folded\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\nX: y\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n",  # a body follows
    b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    b"GET / HTTP/1.2\r\nHost: h\r\n\r\n",
    b"get / HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /a b HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX: \x7f\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nHost: h\r\n\r\n",
    b"GET / HTTP/1.1\r\n: novalue\r\nHost: h\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\n\r\nx",
]


@pytest.mark.parametrize("head", CODEC_REFUSED)
def test_heads_a_codec_refuses_are_refused_by_plain(head: bytes) -> None:
    readings = codec_readings(head)
    assert any(isinstance(v, str) for v in readings.values()), readings
    assert fast.plain_request(head, MAX_HEADERS) is None


def test_the_field_limit_is_the_same_for_all() -> None:
    fields = [f"X-{i}: {i}" for i in range(MAX_HEADERS - 1)]
    head = ("GET / HTTP/1.1\r\nHost: h\r\n" + "".join(f + "\r\n" for f in fields)
            + "\r\n").encode()
    assert fast.plain_request(head, MAX_HEADERS) is not None
    assert_codecs_agree(head)
    over = head[:-2] + b"X-Over: 1\r\n\r\n"
    assert fast.plain_request(over, MAX_HEADERS) is None  # the full path answers 431


# --- the session no longer feeds the codec a plain head ----------------------------------


@pytest.mark.parametrize("codec", CODECS)
def test_the_codec_is_fed_no_plain_head(codec: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Plain heads take fast_request without the codec; a head it refuses takes the full
    path, which feeds the codec (so its cross-check still runs there)."""
    h = make(codec, decide=allow_all)
    seen: list[bytes] = []
    cls = type(h.session._codec)
    original = cls.feed

    def counting(self: object, data: bytes) -> object:
        seen.append(data)
        return original(self, data)  # type: ignore[arg-type]

    monkeypatch.setattr(cls, "feed", counting)
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    plain = [b"GET /a HTTP/1.1\r\nHost: h\r\nX-Request-Id: %d\r\n\r\n" % i for i in range(3)]
    other = b"GET /a HTTP/1.1\r\nUser-Agent: u\r\nHost: h\r\n\r\n"  # Host not first
    assert all(fast.plain_request(p, MAX_HEADERS) for p in plain)
    got = run(h, [("client", plain[0]), ("upstream", ok), ("client", plain[1]),
                  ("upstream", ok), ("client", other), ("upstream", ok),
                  ("client", plain[2]), ("upstream", ok)])
    assert seen == [other]
    assert [x[0] for x in got].count("upstream") == 4
